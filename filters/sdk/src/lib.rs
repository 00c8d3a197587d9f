//! Write walcast-proxy WASM filters in safe Rust.
//!
//! ```no_run
//! use walcast_filter::{Action, Event, Decision};
//!
//! fn filter(e: &Event) -> Decision {
//!     match (e.action(), e.table()) {
//!         (Action::Insert, "orders") => Decision::Keep,
//!         _ => Decision::Drop,
//!     }
//! }
//! walcast_filter::export!(filter);
//! ```
//!
//! Build with `cargo build --target wasm32-unknown-unknown --release`
//! (`crate-type = ["cdylib"]`, `panic = "abort"`) and upload the `.wasm`
//! with `POST /v1/filters`. The ABI the macro implements is described in
//! `filters/README.md`; this crate is `no_std` (it uses `alloc` for
//! [`Decision::Replace`]), needs no WASI and imports only
//! `walcast_v1::set_output`.

#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod json;

use alloc::vec::Vec;
pub use json::{Object, Str, Value};

/// The ABI version this crate implements.
pub const ABI_VERSION: u32 = walcast_abi::filter::ABI_VERSION;

use walcast_abi::filter::{offset, ABSENT, HEADER_LEN as HEADER, RECORD_VERSION};

/// A change's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Insert,
    Update,
    Delete,
    Truncate,
    Message,
    Ddl,
    /// A row read by a snapshot inside the stream (`R`), shaped like an insert.
    Read,
    Other(u8),
}

impl Action {
    fn from_code(c: u8) -> Action {
        use walcast_abi::Action as A;
        match A::from_record_code(c) {
            Some(A::Insert) => Action::Insert,
            Some(A::Update) => Action::Update,
            Some(A::Delete) => Action::Delete,
            Some(A::Truncate) => Action::Truncate,
            Some(A::Message) => Action::Message,
            Some(A::Ddl) => Action::Ddl,
            Some(A::Read) => Action::Read,
            _ => Action::Other(c),
        }
    }
}

/// The earlier name of [`Decision`].
#[deprecated(note = "renamed to Decision")]
pub type Verdict = Decision;

/// What to do with an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Not for this client.
    Drop,
    /// Deliver the plugin's JSON unchanged.
    Keep,
    /// Deliver these bytes instead (UTF-8 text, usually JSON).
    Replace(Vec<u8>),
}

/// One change as the proxy hands it over: a binary header (action, schema,
/// table, xid, lsn) in front of the plugin's JSON, which is only looked at
/// when asked for.
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    record: &'a [u8],
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_le_bytes)
        .unwrap_or(0)
}

impl<'a> Event<'a> {
    /// Reads a record; `None` when it is not a version 1 record.
    pub fn parse(record: &'a [u8]) -> Option<Event<'a>> {
        if record.len() < HEADER || record[offset::VERSION] != RECORD_VERSION {
            return None;
        }
        let e = Event { record };
        let end = HEADER + e.schema_len() + e.table_len();
        let json_end =
            (u32_at(record, offset::JSON_OFFSET) as usize)
                .checked_add(u32_at(record, offset::JSON_LEN) as usize)?;
        // Only this record (in a batch, others follow it).
        let record = record.get(..end.max(json_end))?;
        Some(Event { record })
    }

    /// The record's length.
    fn len(&self) -> usize {
        self.record.len()
    }

    fn schema_len(&self) -> usize {
        u32_at(self.record, offset::SCHEMA_LEN) as usize
    }

    fn table_len(&self) -> usize {
        u32_at(self.record, offset::TABLE_LEN) as usize
    }

    /// Insert, update, delete, truncate, message or DDL.
    pub fn action(&self) -> Action {
        Action::from_code(self.record[offset::ACTION])
    }

    /// The table's schema (`""` for a truncate, a message or DDL).
    pub fn schema(&self) -> &'a str {
        let s = HEADER;
        core::str::from_utf8(&self.record[s..s + self.schema_len()]).unwrap_or("")
    }

    /// The table's name (`""` for a truncate, a message or DDL).
    pub fn table(&self) -> &'a str {
        let s = HEADER + self.schema_len();
        core::str::from_utf8(&self.record[s..s + self.table_len()]).unwrap_or("")
    }

    /// Whether the change is of table `name` (any schema); cheaper than
    /// comparing [`Event::table`], which checks the bytes are UTF-8.
    pub fn is_table(&self, name: &str) -> bool {
        let s = HEADER + self.schema_len();
        json::bytes_eq(&self.record[s..s + self.table_len()], name.as_bytes())
    }

    /// The transaction id, when the plugin wrote one.
    pub fn xid(&self) -> Option<u32> {
        Some(u32_at(self.record, offset::XID)).filter(|x| *x != 0)
    }

    /// The change's LSN as a number (`X/Y` is `X << 32 | Y`).
    pub fn lsn(&self) -> u64 {
        self.record
            .get(offset::LSN..offset::LSN + 8)
            .and_then(|s| s.try_into().ok())
            .map(u64::from_le_bytes)
            .unwrap_or(0)
    }

    /// The plugin's JSON object for this change, as bytes.
    pub fn json(&self) -> &'a [u8] {
        let (o, l) = (
            u32_at(self.record, offset::JSON_OFFSET) as usize,
            u32_at(self.record, offset::JSON_LEN) as usize,
        );
        &self.record[o..o + l]
    }

    /// The whole JSON object, for keys other than `columns` and `identity`.
    pub fn object(&self) -> Option<Object<'a>> {
        Object::new(self.json())
    }

    fn part(&self, at: usize) -> Option<Object<'a>> {
        let (o, l) = (u32_at(self.record, at), u32_at(self.record, at + 4));
        if o == ABSENT {
            return None;
        }
        let json = self.json();
        Object::new(json.get(o as usize..o as usize + l as usize)?)
    }

    /// `columns` (inserts, updates): the new row.
    pub fn columns(&self) -> Option<Object<'a>> {
        self.part(offset::COLUMNS_OFFSET)
    }

    /// `identity` (updates, deletes): the old key or row.
    pub fn identity(&self) -> Option<Object<'a>> {
        self.part(offset::IDENTITY_OFFSET)
    }

    /// The row a filter usually looks at: `columns`, or `identity` for a delete.
    pub fn row(&self) -> Option<Object<'a>> {
        if self.action() == Action::Delete {
            self.identity()
        } else {
            self.columns()
        }
    }
}

#[doc(hidden)]
pub mod abi {
    //! What [`export!`](crate::export) expands to call. Not for direct use.
    use super::{Decision, Event};
    use alloc::vec::Vec;
    use core::cell::UnsafeCell;

    #[cfg(target_arch = "wasm32")]
    #[link(wasm_import_module = "walcast_v1")]
    extern "C" {
        #[link_name = "set_output"]
        fn host_set_output(ptr: u32, len: u32) -> i32;
    }

    /// Outside WebAssembly (unit tests of filters) there is no host.
    #[cfg(not(target_arch = "wasm32"))]
    unsafe fn host_set_output(_ptr: u32, _len: u32) -> i32 {
        -1
    }

    /// The input buffer the host writes each record into.
    struct Buffer(UnsafeCell<Vec<u8>>);

    // SAFETY: WebAssembly guests built for wasm32-unknown-unknown are
    // single-threaded; the buffer is only touched from the exported calls,
    // which never run concurrently or re-entrantly.
    unsafe impl Sync for Buffer {}

    static INPUT: Buffer = Buffer(UnsafeCell::new(Vec::new()));

    /// `walcast_alloc`: a buffer of at least `len` bytes. The host writes
    /// events into it until it asks again, so it only ever grows.
    pub fn alloc(len: u32) -> u32 {
        // SAFETY: single-threaded guest (see `Buffer`); no other reference
        // to the buffer is alive during this call.
        let buf = unsafe { &mut *INPUT.0.get() };
        let len = len as usize;
        if buf.len() < len {
            if buf.try_reserve(len - buf.len()).is_err() {
                return 0;
            }
            buf.resize(len, 0);
        }
        buf.as_mut_ptr() as usize as u32
    }

    fn input(ptr: u32, len: u32) -> &'static [u8] {
        // SAFETY: single-threaded guest; the host wrote `len` bytes at `ptr`,
        // the buffer `alloc` returned, which stays alive until the next alloc.
        let buf = unsafe { &*INPUT.0.get() };
        if buf.as_ptr() as usize as u32 == ptr && buf.len() >= len as usize {
            &buf[..len as usize]
        } else {
            &[]
        }
    }

    /// `walcast_filter`: runs `f` on the record and reports its decision.
    pub fn filter(ptr: u32, len: u32, f: fn(&Event) -> Decision) -> i32 {
        let Some(event) = Event::parse(input(ptr, len)) else {
            return -1;
        };
        match f(&event) {
            Decision::Drop => 0,
            Decision::Keep => 1,
            Decision::Replace(out) => {
                // SAFETY: the host reads `out.len()` bytes at `out`'s address
                // during the call; `out` lives until after it returns.
                let rc = unsafe { host_set_output(out.as_ptr() as usize as u32, out.len() as u32) };
                if rc == 0 {
                    2
                } else {
                    -2
                }
            }
        }
    }

    /// The replacements of the current batch, kept alive until the host
    /// has read them (it does before its next call).
    struct Outputs(UnsafeCell<Vec<Vec<u8>>>);

    // SAFETY: as for `Buffer`: single-threaded, never re-entered.
    unsafe impl Sync for Outputs {}

    static OUTPUTS: Outputs = Outputs(UnsafeCell::new(Vec::new()));

    /// Size of a decision cell: i32 code, u32 output address, u32 length.
    const CELL: usize = 12;

    /// `walcast_filter_batch`: runs `f` on `count` records at 8-byte
    /// aligned offsets from `ptr`, writing each decision to its cell at
    /// `out`. Returns how many decisions it wrote (the host runs the rest
    /// one at a time).
    pub fn filter_batch(ptr: u32, count: u32, out: u32, f: fn(&Event) -> Decision) -> i32 {
        // SAFETY: single-threaded guest (see `Buffer`); the host wrote the
        // records and left the cells in the buffer `alloc` returned, and
        // no other reference to it is alive during this call.
        let buf = unsafe { &mut *INPUT.0.get() };
        // SAFETY: as above; the host reads the outputs before any other
        // call into the module.
        let outputs = unsafe { &mut *OUTPUTS.0.get() };
        outputs.clear();
        let base = buf.as_ptr() as usize as u32;
        let cells_at = out.wrapping_sub(base) as usize;
        let count = count as usize;
        if ptr != base || cells_at > buf.len() || buf.len() - cells_at < count * CELL {
            return 0;
        }
        let (records, cells) = buf.split_at_mut(cells_at);
        let mut at = 0;
        for (i, cell) in cells.chunks_exact_mut(CELL).take(count).enumerate() {
            let Some(event) = records.get(at..).and_then(Event::parse) else {
                // Not a record: the host runs it alone, where it fails.
                return i as i32;
            };
            let (code, output) = match f(&event) {
                Decision::Drop => (0i32, (0, 0)),
                Decision::Keep => (1, (0, 0)),
                Decision::Replace(bytes) => {
                    let o = (bytes.as_ptr() as usize as u32, bytes.len() as u32);
                    outputs.push(bytes);
                    (2, o)
                }
            };
            cell[..4].copy_from_slice(&code.to_le_bytes());
            cell[4..8].copy_from_slice(&output.0.to_le_bytes());
            cell[8..].copy_from_slice(&output.1.to_le_bytes());
            at = (at + event.len() + 7) & !7;
        }
        count as i32
    }

    /// The input buffer and the batch outputs, for unit tests.
    #[cfg(test)]
    pub(crate) fn with_buffers(f: impl FnOnce(&mut [u8], &[Vec<u8>])) {
        // SAFETY: tests touching the buffers call this between the ABI
        // functions, never during one; only one test uses them.
        let (input, outputs) = unsafe { (&mut *INPUT.0.get(), &*OUTPUTS.0.get()) };
        f(input, outputs)
    }

    /// `walcast_init`: runs `f` on the subscription's config.
    pub fn init(ptr: u32, len: u32, f: fn(&[u8]) -> bool) -> i32 {
        if f(input(ptr, len)) {
            0
        } else {
            -1
        }
    }
}

/// Exports the ABI for a filter function `fn(&Event) -> Decision`, and
/// optionally an init function `fn(&[u8]) -> bool` that receives the
/// subscription's config (return `false` to refuse it). A filter that
/// reads only the action, schema, table, xid and LSN adds `header_only`:
/// its events then come without their JSON (`json()` is empty), which
/// saves copying every change into the module.
///
/// ```text
/// walcast_filter::export!(filter);
/// walcast_filter::export!(filter, init = init);
/// walcast_filter::export!(filter, header_only);
/// walcast_filter::export!(filter, init = init, header_only);
/// ```
#[macro_export]
macro_rules! export {
    ($filter:path) => {
        $crate::export!(@common $filter);
    };
    ($filter:path, header_only) => {
        $crate::export!(@common $filter);
        $crate::export!(@header_only);
    };
    ($filter:path, init = $init:path) => {
        $crate::export!(@common $filter);
        $crate::export!(@init $init);
    };
    ($filter:path, init = $init:path, header_only) => {
        $crate::export!(@common $filter);
        $crate::export!(@init $init);
        $crate::export!(@header_only);
    };
    (@init $init:path) => {
        #[no_mangle]
        pub extern "C" fn walcast_init(ptr: u32, len: u32) -> i32 {
            $crate::abi::init(ptr, len, $init)
        }
    };
    (@header_only) => {
        #[no_mangle]
        pub extern "C" fn walcast_header_only() {}
    };
    (@common $filter:path) => {
        #[no_mangle]
        pub extern "C" fn walcast_abi_v1() {}
        #[no_mangle]
        pub extern "C" fn walcast_alloc(len: u32) -> u32 {
            $crate::abi::alloc(len)
        }
        #[no_mangle]
        pub extern "C" fn walcast_filter(ptr: u32, len: u32) -> i32 {
            $crate::abi::filter(ptr, len, $filter)
        }
        #[no_mangle]
        pub extern "C" fn walcast_filter_batch(ptr: u32, count: u32, out: u32) -> i32 {
            $crate::abi::filter_batch(ptr, count, out, $filter)
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record as the proxy writes it (core/src/record.rs), byte by byte.
    fn record(
        action: u8,
        schema: &str,
        table: &str,
        json: &str,
        cols: Option<(u32, u32)>,
    ) -> Vec<u8> {
        let mut r = Vec::new();
        r.push(1);
        r.push(action);
        r.extend_from_slice(&[0, 0]);
        r.extend_from_slice(&(schema.len() as u32).to_le_bytes());
        r.extend_from_slice(&(table.len() as u32).to_le_bytes());
        r.extend_from_slice(&7u32.to_le_bytes());
        r.extend_from_slice(&0x1_0000_0010u64.to_le_bytes());
        r.extend_from_slice(&((HEADER + schema.len() + table.len()) as u32).to_le_bytes());
        r.extend_from_slice(&(json.len() as u32).to_le_bytes());
        let (co, cl) = cols.unwrap_or((u32::MAX, 0));
        for v in [co, cl, u32::MAX, 0] {
            r.extend_from_slice(&v.to_le_bytes());
        }
        r.extend_from_slice(schema.as_bytes());
        r.extend_from_slice(table.as_bytes());
        r.extend_from_slice(json.as_bytes());
        r
    }

    #[test]
    fn reads_the_header_and_the_row() {
        let json =
            r#"{"action":"I","schema":"public","table":"orders","columns":{"id":1,"total":250.5}}"#;
        let at = json.find(r#"{"id""#).expect("columns") as u32;
        let r = record(
            1,
            "public",
            "orders",
            json,
            Some((at, (json.len() - 1) as u32 - at)),
        );
        let e = Event::parse(&r).expect("event");
        assert_eq!(e.action(), Action::Insert);
        assert_eq!(e.schema(), "public");
        assert_eq!(e.table(), "orders");
        assert!(e.is_table("orders") && !e.is_table("order"));
        assert_eq!(e.xid(), Some(7));
        assert_eq!(e.lsn(), 0x1_0000_0010);
        assert_eq!(e.json(), json.as_bytes());
        let row = e.row().expect("row");
        assert_eq!(row.get("total").and_then(|v| v.as_f64()), Some(250.5));
        assert!(e.identity().is_none());
        assert_eq!(
            e.object()
                .and_then(|o| o.get("action"))
                .and_then(|v| v.as_str())
                .and_then(|s| s.as_plain()),
            Some("I")
        );
    }

    #[test]
    fn every_action_byte_the_proxy_writes_has_its_name() {
        let named = [
            (1, Action::Insert),
            (2, Action::Update),
            (3, Action::Delete),
            (4, Action::Truncate),
            (5, Action::Message),
            (6, Action::Ddl),
            (7, Action::Read),
            (0, Action::Other(0)),
            (9, Action::Other(9)),
        ];
        for (code, action) in named {
            let r = record(code, "s", "t", "{}", None);
            let e = Event::parse(&r).expect("a record");
            assert_eq!(e.action(), action, "byte {code}");
        }
    }

    #[test]
    fn rejects_short_or_foreign_records() {
        assert!(Event::parse(&[1, 2, 3]).is_none());
        let mut r = record(1, "s", "t", "{}", None);
        r[0] = 2;
        assert!(Event::parse(&r).is_none());
        let mut r = record(1, "s", "t", "{}", None);
        r[4] = 200;
        assert!(Event::parse(&r).is_none());
    }

    fn keep_orders_upper_tables(e: &Event) -> Decision {
        match e.table() {
            "orders" => Decision::Keep,
            "skip" => Decision::Drop,
            t => Decision::Replace(t.to_uppercase().into_bytes()),
        }
    }

    #[test]
    fn a_batch_writes_one_decision_cell_per_record() {
        // Records at 8-byte aligned offsets, then the slots, as the host
        // lays out a batch (proxy/src/filter/instance.rs).
        let records = [
            record(1, "public", "orders", r#"{"a":1}"#, None),
            record(1, "public", "skip", r#"{"a":22}"#, None),
            record(1, "public", "other", "{}", None),
        ];
        let mut layout = Vec::new();
        for r in &records {
            layout.resize((layout.len() + 7) & !7, 0);
            layout.extend_from_slice(r);
        }
        layout.resize((layout.len() + 7) & !7, 0);
        let cells_at = layout.len();
        let ptr = abi::alloc((cells_at + 12 * 3) as u32);
        abi::with_buffers(|input, _| input[..cells_at].copy_from_slice(&layout));
        let out = ptr + cells_at as u32;
        assert_eq!(abi::filter_batch(ptr, 3, out, keep_orders_upper_tables), 3);
        abi::with_buffers(|input, outputs| {
            let word = |k: usize| u32_at(&input[cells_at..], 4 * k);
            assert_eq!(word(0), 1);
            assert_eq!(word(3), 0);
            assert_eq!(word(6), 2);
            assert_eq!(outputs, &[b"OTHER".to_vec()]);
            // Addresses are 32-bit in WebAssembly (truncated in this test).
            assert_eq!(word(7), outputs[0].as_ptr() as usize as u32);
            assert_eq!(word(8), 5);
        });
        // A slot area outside the buffer: nothing judged, the host runs
        // the records one at a time.
        assert_eq!(
            abi::filter_batch(ptr, 3, out + 4096, keep_orders_upper_tables),
            0
        );
        // A broken second record: the first is judged, the rest left.
        let second = (records[0].len() + 7) & !7;
        abi::with_buffers(|input, _| input[second] = 9);
        assert_eq!(abi::filter_batch(ptr, 3, out, keep_orders_upper_tables), 1);
    }
}
