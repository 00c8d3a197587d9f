//! The option list of `START_REPLICATION` / `pg_logical_slot_get_changes`
//! (a `List` of `DefElem`) turned into [`Options`]; bad input is an ERROR
//! that names the option.

use pgrx::pg_sys;
use pgrx::prelude::*;
use std::ffi::CStr;
use walcast_format::Options;

/// Parses the plugin options or raises an ERROR naming the offending option.
///
/// # Safety
/// `list` must be NULL or a valid `List` of `DefElem` nodes.
pub unsafe fn parse(list: *mut pg_sys::List) -> Options {
    let mut pairs: Vec<(String, Option<String>)> = Vec::new();
    if !list.is_null() {
        // SAFETY: the caller guarantees a valid List; PG13+ lists are arrays of cells.
        let (len, cells) = unsafe { ((*list).length as usize, (*list).elements) };
        for i in 0..len {
            // SAFETY: i < length, and every cell of this list points to a DefElem.
            let elem = unsafe { (*cells.add(i)).ptr_value as *mut pg_sys::DefElem };
            // SAFETY: defname is a NUL-terminated string owned by the node.
            let name = unsafe { CStr::from_ptr((*elem).defname) }
                .to_string_lossy()
                .into_owned();
            // SAFETY: arg is NULL or a String node (the grammar only produces strings here).
            let value = unsafe { def_string((*elem).arg) };
            pairs.push((name, value));
        }
    }
    match Options::parse(pairs.iter().map(|(n, v)| (n.as_str(), v.as_deref()))) {
        Ok(o) => o,
        Err(e) => {
            ereport!(
                PgLogLevel::ERROR,
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("walcast: {e}")
            );
            unreachable!("ereport(ERROR) does not return")
        }
    }
}

unsafe fn def_string(arg: *mut pg_sys::Node) -> Option<String> {
    if arg.is_null() {
        return None;
    }
    // SAFETY: option values are String nodes (T_String) in PostgreSQL 15+.
    let sval = unsafe { (*(arg as *mut pg_sys::String)).sval };
    // SAFETY: sval is NUL-terminated.
    (!sval.is_null()).then(|| {
        unsafe { CStr::from_ptr(sval) }
            .to_string_lossy()
            .into_owned()
    })
}
