//! Walking a heap tuple's columns into a JSON object.

use crate::relation::RelInfo;
use crate::value;
use pgrx::pg_sys;

/// Reusable buffers for one deformed tuple.
#[derive(Default)]
pub struct Deformed {
    values: Vec<pg_sys::Datum>,
    nulls: Vec<bool>,
}

impl Deformed {
    /// Splits `tuple` into per-column datums.
    ///
    /// # Safety
    /// `tuple` must be a valid heap tuple of a relation described by `desc`.
    pub unsafe fn fill(&mut self, tuple: pg_sys::HeapTuple, desc: pg_sys::TupleDesc) {
        // SAFETY: desc is a valid tuple descriptor.
        let natts = unsafe { (*desc).natts } as usize;
        self.values.clear();
        self.values.resize(natts, pg_sys::Datum::from(0));
        self.nulls.clear();
        self.nulls.resize(natts, true);
        // SAFETY: both arrays have natts elements as heap_deform_tuple requires.
        unsafe {
            pg_sys::heap_deform_tuple(
                tuple,
                desc,
                self.values.as_mut_ptr(),
                self.nulls.as_mut_ptr(),
            )
        };
    }
}

/// Which columns to write.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Which {
    All,
    IdentityKey,
}

/// Appends `{"col":value,...}`. Columns holding an unchanged TOAST pointer are
/// left out and their indexes pushed to `unchanged`.
///
/// # Safety
/// `row` must have been filled from a tuple of the relation `rel` describes.
pub unsafe fn write_object(
    out: &mut Vec<u8>,
    rel: &RelInfo,
    row: &Deformed,
    which: Which,
    unchanged: &mut Vec<usize>,
) {
    out.push(b'{');
    let mut first = true;
    for (i, col) in rel.columns.iter().enumerate() {
        if col.dropped || (which == Which::IdentityKey && !col.identity) {
            continue;
        }
        let (Some(&datum), Some(&null)) = (row.values.get(i), row.nulls.get(i)) else {
            // A tuple shorter than the descriptor cannot come from heap_deform_tuple.
            continue;
        };
        // SAFETY: non-null varlena datums from a deformed tuple point to varlenas.
        if !null && col.varlena && unsafe { value::is_unchanged_toast(datum) } {
            unchanged.push(i);
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        out.extend_from_slice(&col.key);
        if null {
            out.extend_from_slice(b"null");
        } else {
            // SAFETY: datum is a non-null value of the column's type.
            unsafe { value::write(out, &col.kind, datum) };
        }
    }
    out.push(b'}');
}
