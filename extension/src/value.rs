//! One column value -> exactly the bytes `to_json(value)` returns.
//!
//! `to_json` looks through domains to the base type, writes the six numeric
//! types bare (quoted when not a JSON number: `NaN`, `Infinity`), booleans bare,
//! dates and timestamps in ISO 8601, json verbatim, jsonb in its output form,
//! arrays and composites as JSON arrays and objects, user types through a cast
//! to json when one exists, and everything else as its output function's text
//! in a JSON string. walcast makes the same choices once per column and writes
//! the common cases directly: numbers, booleans, text, json/jsonb, uuid,
//! dates and timestamps, bytea, arrays (element by element, any number of
//! dimensions), enums and other types through their output function.
//! Composites and user types with a cast to json call `to_json` itself through
//! an `FmgrInfo` whose expression carries the column type.

use pgrx::pg_sys;
use std::ffi::CStr;
use walcast_format::json;

extern "C" {
    // The `bytea_output` GUC (utils/varlena.c); not in pgrx's generated bindings.
    static bytea_output: std::ffi::c_int;
}

// Output functions called directly (pgrx wraps its bindings as Rust functions,
// which cannot be passed where PostgreSQL expects a PGFunction).
extern "C-unwind" {
    fn float4out(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum;
    fn numeric_out(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum;
    fn jsonb_out(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum;
}
/// `BYTEA_OUTPUT_HEX` in `ByteaOutputType`.
const BYTEA_OUTPUT_HEX: std::ffi::c_int = 1;

/// An `FmgrInfo` at a stable address that PostgreSQL may write to (`fn_extra`).
pub struct Fmgr(Box<std::cell::UnsafeCell<pg_sys::FmgrInfo>>);

impl Fmgr {
    fn new() -> Self {
        Fmgr(Box::default())
    }
    fn ptr(&self) -> *mut pg_sys::FmgrInfo {
        self.0.get()
    }
}

/// How a column's values are written.
pub enum ValueKind {
    Bool,
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Numeric,
    /// text, varchar, bpchar: the varlena bytes, escaped.
    Text,
    /// name: a fixed-size NUL-terminated string, escaped.
    Name,
    /// json: the stored text verbatim.
    Json,
    Jsonb,
    Uuid,
    /// date, timestamp, timestamptz (JsonEncodeDateTime with the base type oid).
    DateTime(pg_sys::Oid),
    Bytea(Fmgr),
    /// Another built-in scalar type: output function text, escaped.
    OutputText(Fmgr),
    /// Arrays: each element written by its own kind, nested per dimension.
    Array(Box<ArrayInfo>),
    /// Composites and user-defined types with a cast to json: `to_json` itself.
    ToJson(Fmgr),
}

/// How to take an array of one element type apart and write its elements.
pub struct ArrayInfo {
    elemtype: pg_sys::Oid,
    elmlen: i16,
    elmbyval: bool,
    elmalign: std::ffi::c_char,
    elem: ValueKind,
}

impl ValueKind {
    /// Chooses the writer for a column of type `typid`. Lookups that need
    /// memory beyond the call (FmgrInfo, expression nodes) go to `mcxt`.
    ///
    /// # Safety
    /// Must run inside a transaction with catalog access (decoding callbacks do).
    pub unsafe fn classify(
        typid: pg_sys::Oid,
        typmod: i32,
        collation: pg_sys::Oid,
        mcxt: pg_sys::MemoryContext,
    ) -> Self {
        // SAFETY: catalog lookup inside a decoding callback.
        let base = unsafe { pg_sys::getBaseType(typid) };
        match base {
            pg_sys::BOOLOID => return ValueKind::Bool,
            pg_sys::INT2OID => return ValueKind::Int2,
            pg_sys::INT4OID => return ValueKind::Int4,
            pg_sys::INT8OID => return ValueKind::Int8,
            pg_sys::FLOAT4OID => return ValueKind::Float4,
            pg_sys::FLOAT8OID => return ValueKind::Float8,
            pg_sys::NUMERICOID => return ValueKind::Numeric,
            pg_sys::TEXTOID | pg_sys::VARCHAROID | pg_sys::BPCHAROID => return ValueKind::Text,
            pg_sys::NAMEOID => return ValueKind::Name,
            pg_sys::JSONOID => return ValueKind::Json,
            pg_sys::JSONBOID => return ValueKind::Jsonb,
            pg_sys::UUIDOID => return ValueKind::Uuid,
            pg_sys::DATEOID | pg_sys::TIMESTAMPOID | pg_sys::TIMESTAMPTZOID => {
                return ValueKind::DateTime(base)
            }
            _ => {}
        }
        // SAFETY: catalog lookups inside a decoding callback.
        let elemtype = unsafe { pg_sys::get_element_type(base) };
        if elemtype != pg_sys::InvalidOid {
            let (mut elmlen, mut elmbyval, mut elmalign) = (0i16, false, 0 as std::ffi::c_char);
            // SAFETY: valid out-pointers; catalog lookup.
            unsafe {
                pg_sys::get_typlenbyvalalign(elemtype, &mut elmlen, &mut elmbyval, &mut elmalign)
            };
            // SAFETY: classifying the element type, same contract as this call.
            let elem = unsafe { Self::classify(elemtype, -1, collation, mcxt) };
            return ValueKind::Array(Box::new(ArrayInfo {
                elemtype,
                elmlen,
                elmbyval,
                elmalign,
                elem,
            }));
        }
        // SAFETY: as above.
        let is_row = unsafe { pg_sys::type_is_rowtype(base) };
        // SAFETY: as above; to_json uses a cast to json of a non-built-in type when there is one.
        let has_json_cast =
            base.to_u32() >= pg_sys::FirstNormalObjectId && unsafe { has_cast_to_json(base) };
        if is_row || has_json_cast {
            // SAFETY: builds a to_json FmgrInfo in mcxt; see to_json_fmgr.
            return ValueKind::ToJson(unsafe { to_json_fmgr(typid, typmod, collation, mcxt) });
        }
        // SAFETY: catalog lookup of the output function, FmgrInfo allocated in mcxt.
        let out = unsafe { output_fmgr(base, mcxt) };
        if base == pg_sys::BYTEAOID {
            ValueKind::Bytea(out)
        } else {
            ValueKind::OutputText(out)
        }
    }
}

/// Whether `typid` has a function cast to json, which `to_json` would use.
unsafe fn has_cast_to_json(typid: pg_sys::Oid) -> bool {
    let mut func = pg_sys::InvalidOid;
    // SAFETY: catalog lookup with a valid out-pointer.
    let path = unsafe {
        pg_sys::find_coercion_pathway(
            pg_sys::JSONOID,
            typid,
            pg_sys::CoercionContext::COERCION_EXPLICIT,
            &mut func,
        )
    };
    path == pg_sys::CoercionPathType::COERCION_PATH_FUNC && func != pg_sys::InvalidOid
}

unsafe fn output_fmgr(typid: pg_sys::Oid, mcxt: pg_sys::MemoryContext) -> Fmgr {
    let mut func = pg_sys::InvalidOid;
    let mut varlena = false;
    // SAFETY: valid out-pointers; catalog access is available in callbacks.
    unsafe { pg_sys::getTypeOutputInfo(typid, &mut func, &mut varlena) };
    let finfo = Fmgr::new();
    // SAFETY: finfo is a valid FmgrInfo that lives as long as the column metadata.
    unsafe { pg_sys::fmgr_info_cxt(func, finfo.ptr(), mcxt) };
    finfo
}

/// An FmgrInfo for `to_json(anyelement)` whose `fn_expr` says the argument is
/// of `typid`: `to_json` reads its argument type from there.
unsafe fn to_json_fmgr(
    typid: pg_sys::Oid,
    typmod: i32,
    collation: pg_sys::Oid,
    mcxt: pg_sys::MemoryContext,
) -> Fmgr {
    let finfo = Fmgr::new();
    // SAFETY: nodes are allocated in mcxt, which outlives the FmgrInfo (both
    // belong to one relation's metadata); to_json is a built-in function.
    unsafe {
        let old = pg_sys::MemoryContextSwitchTo(mcxt);
        let arg = pg_sys::makeNullConst(typid, typmod, collation);
        let args = pg_sys::lappend(std::ptr::null_mut(), arg.cast());
        let expr = pg_sys::makeFuncExpr(
            pg_sys::Oid::from(pg_sys::F_TO_JSON),
            pg_sys::JSONOID,
            args,
            pg_sys::InvalidOid,
            pg_sys::InvalidOid,
            pg_sys::CoercionForm::COERCE_EXPLICIT_CALL,
        );
        pg_sys::fmgr_info_cxt(pg_sys::Oid::from(pg_sys::F_TO_JSON), finfo.ptr(), mcxt);
        (*finfo.ptr()).fn_expr = expr.cast();
        pg_sys::MemoryContextSwitchTo(old);
    }
    finfo
}

/// The payload of a varlena datum, detoasted (inline-compressed or
/// indirect values are expanded into the current memory context).
///
/// # Safety
/// `datum` must be a non-null varlena that is not an on-disk TOAST pointer.
unsafe fn varlena_bytes<'a>(datum: pg_sys::Datum) -> &'a [u8] {
    // SAFETY: per the contract above; the detoasted copy lives in the
    // per-change memory context, which outlives the returned slice's use.
    unsafe {
        let v = pg_sys::pg_detoast_datum_packed(datum.cast_mut_ptr());
        let len = pgrx::varlena::varsize_any_exhdr(v);
        let data = pgrx::varlena::vardata_any(v) as *const u8;
        std::slice::from_raw_parts(data, len)
    }
}

/// True when a varlena datum is an on-disk TOAST pointer: in decoding this is
/// an UPDATE's unchanged TOASTed column, whose value is not in the WAL.
///
/// # Safety
/// `datum` must point to a varlena.
pub unsafe fn is_unchanged_toast(datum: pg_sys::Datum) -> bool {
    let p = datum.cast_mut_ptr::<pg_sys::varlena>();
    // SAFETY: reading the varlena header bytes of a valid varlena.
    unsafe {
        pgrx::varlena::varatt_is_1b_e(p)
            && u32::from(pgrx::varlena::vartag_1b_e(p)) == pg_sys::vartag_external::VARTAG_ONDISK
    }
}

fn push_cstr(out: &mut Vec<u8>, s: *const std::ffi::c_char, number: bool) {
    // SAFETY: output functions return NUL-terminated strings.
    let bytes = unsafe { CStr::from_ptr(s) }.to_bytes();
    if number {
        json::write_number_text(out, bytes);
    } else {
        json::write_str(out, bytes);
    }
}

/// Appends the JSON of one non-null value.
///
/// # Safety
/// `datum` must be a valid, non-null value of the type `kind` was classified
/// for, and not an unchanged TOAST pointer. Allocations go to the current
/// memory context (the per-change context, reset after each change).
pub unsafe fn write(out: &mut Vec<u8>, kind: &ValueKind, datum: pg_sys::Datum) {
    let collation = pg_sys::InvalidOid;
    match kind {
        ValueKind::Bool => out.extend_from_slice(if datum.value() != 0 {
            b"true"
        } else {
            b"false"
        }),
        ValueKind::Int2 => json::write_i64(out, i64::from(datum.value() as i16)),
        ValueKind::Int4 => json::write_i64(out, i64::from(datum.value() as i32)),
        ValueKind::Int8 => json::write_i64(out, datum.value() as i64),
        ValueKind::Float8 => {
            let v = f64::from_bits(datum.value() as u64);
            // SAFETY: float8out_internal formats a double honouring extra_float_digits.
            push_cstr(out, unsafe { pg_sys::float8out_internal(v) }, true)
        }
        ValueKind::Float4 => {
            // SAFETY: float4out takes a float4 datum and returns a cstring datum.
            let s = unsafe { pg_sys::DirectFunctionCall1Coll(Some(float4out), collation, datum) };
            push_cstr(out, s.cast_mut_ptr(), true)
        }
        ValueKind::Numeric => {
            // SAFETY: numeric_out takes a numeric datum and returns a cstring datum.
            let s = unsafe { pg_sys::DirectFunctionCall1Coll(Some(numeric_out), collation, datum) };
            push_cstr(out, s.cast_mut_ptr(), true)
        }
        // SAFETY: text-like types are varlenas (caller excluded TOAST pointers).
        ValueKind::Text => json::write_str(out, unsafe { varlena_bytes(datum) }),
        ValueKind::Name => push_cstr(out, datum.cast_mut_ptr(), false),
        // SAFETY: json is a varlena holding valid JSON text.
        ValueKind::Json => out.extend_from_slice(unsafe { varlena_bytes(datum) }),
        ValueKind::Jsonb => {
            // SAFETY: jsonb_out takes a jsonb datum and returns a cstring datum.
            let s = unsafe { pg_sys::DirectFunctionCall1Coll(Some(jsonb_out), collation, datum) };
            // SAFETY: a NUL-terminated string from jsonb_out.
            out.extend_from_slice(unsafe { CStr::from_ptr(s.cast_mut_ptr()) }.to_bytes());
        }
        ValueKind::Uuid => {
            // SAFETY: a uuid datum points to 16 bytes (pg_uuid_t).
            let bytes = unsafe { &*(datum.cast_mut_ptr::<[u8; 16]>()) };
            json::write_uuid(out, bytes);
        }
        ValueKind::DateTime(typid) => {
            let mut buf = [0 as std::ffi::c_char; pg_sys::MAXDATELEN as usize + 1];
            // SAFETY: buf has MAXDATELEN + 1 bytes as JsonEncodeDateTime requires;
            // a NULL tzp means the session time zone, as to_json uses.
            unsafe {
                pg_sys::JsonEncodeDateTime(buf.as_mut_ptr(), datum, *typid, std::ptr::null())
            };
            out.push(b'"');
            // SAFETY: JsonEncodeDateTime NUL-terminates buf.
            out.extend_from_slice(unsafe { CStr::from_ptr(buf.as_ptr()) }.to_bytes());
            out.push(b'"');
        }
        ValueKind::Bytea(finfo) => {
            // SAFETY: reading an int GUC variable of this backend.
            if unsafe { bytea_output } == BYTEA_OUTPUT_HEX {
                // SAFETY: bytea is a varlena (TOAST pointers excluded by the caller).
                json::write_bytea_hex(out, unsafe { varlena_bytes(datum) });
            } else {
                // SAFETY: finfo is bytea's output function.
                let s = unsafe { pg_sys::OutputFunctionCall(finfo.ptr(), datum) };
                push_cstr(out, s, false);
            }
        }
        ValueKind::OutputText(finfo) => {
            // SAFETY: finfo is the output function of this column's base type.
            let s = unsafe { pg_sys::OutputFunctionCall(finfo.ptr(), datum) };
            push_cstr(out, s, false);
        }
        // SAFETY: datum is an array of the classified element type.
        ValueKind::Array(info) => unsafe { write_array(out, info, datum) },
        ValueKind::ToJson(finfo) => {
            // SAFETY: finfo is to_json with fn_expr describing the argument type.
            let text = unsafe { pg_sys::FunctionCall1Coll(finfo.ptr(), collation, datum) };
            // SAFETY: to_json returns a text varlena (json).
            out.extend_from_slice(unsafe { varlena_bytes(text) });
        }
    }
}

/// Appends an array as `to_json` does: nested JSON arrays per dimension,
/// `null` for NULL elements, `[]` when empty; lower bounds are ignored.
///
/// # Safety
/// `datum` must be a non-null array whose element type is `info.elemtype`.
unsafe fn write_array(out: &mut Vec<u8>, info: &ArrayInfo, datum: pg_sys::Datum) {
    // SAFETY: detoasting an array value (compressed or indirect) into the
    // per-change memory context; the header and dims follow the ArrayType layout.
    unsafe {
        let arr = pg_sys::pg_detoast_datum(datum.cast_mut_ptr()) as *mut pg_sys::ArrayType;
        let ndim = usize::try_from((*arr).ndim).unwrap_or(0);
        let dims_ptr =
            (arr as *const u8).add(std::mem::size_of::<pg_sys::ArrayType>()) as *const i32;
        let dims = std::slice::from_raw_parts(dims_ptr, ndim);
        if ndim == 0 || dims.iter().any(|&d| d <= 0) {
            out.extend_from_slice(b"[]");
            return;
        }
        let mut elems: *mut pg_sys::Datum = std::ptr::null_mut();
        let mut nulls: *mut bool = std::ptr::null_mut();
        let mut n: std::ffi::c_int = 0;
        pg_sys::deconstruct_array(
            arr,
            info.elemtype,
            info.elmlen.into(),
            info.elmbyval,
            info.elmalign,
            &mut elems,
            &mut nulls,
            &mut n,
        );
        let n = usize::try_from(n).unwrap_or(0);
        let elems = std::slice::from_raw_parts(elems, n);
        let nulls = std::slice::from_raw_parts(nulls, n);
        let mut next = 0usize;
        write_dim(out, info, dims, elems, nulls, &mut next);
    }
}

/// One dimension of an array; the innermost writes elements.
///
/// # Safety
/// `elems` and `nulls` come from `deconstruct_array` of an array with `dims`.
unsafe fn write_dim(
    out: &mut Vec<u8>,
    info: &ArrayInfo,
    dims: &[i32],
    elems: &[pg_sys::Datum],
    nulls: &[bool],
    next: &mut usize,
) {
    out.push(b'[');
    for i in 0..dims[0] {
        if i > 0 {
            out.push(b',');
        }
        if dims.len() > 1 {
            // SAFETY: same arrays, one dimension down.
            unsafe { write_dim(out, info, &dims[1..], elems, nulls, next) };
        } else {
            match (elems.get(*next), nulls.get(*next)) {
                (Some(_), Some(true)) | (None, _) | (_, None) => out.extend_from_slice(b"null"),
                // SAFETY: a non-null element of the array's element type.
                (Some(&d), Some(false)) => unsafe { write(out, &info.elem, d) },
            }
            *next += 1;
        }
    }
    out.push(b']');
}
