//! The plugin's output as the proxy reads it: `Change::parse` on arbitrary
//! bytes, then everything the proxy does with a parsed change (its row,
//! matching, the WASM filter's input record).
//!
//! Invariants: nothing panics; a filter record is exactly `record_len`
//! bytes and carries the change's JSON at the offsets its header gives.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use walcast_core::change::{split_qualified, Change};
use walcast_core::query;
use walcast_core::record::{record_len, write_record, HEADER_LEN};
use walcast_format::Lsn;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let (schema, table) = split_qualified(text);
        assert!(schema.len() + table.len() <= text.len());
    }
    let Ok(change) = Change::parse(Bytes::copy_from_slice(data), Lsn(7)) else {
        return;
    };
    assert_eq!(change.raw(), data);
    let _ = change.row();
    for q in [
        "*:t",
        "*:t:a.eq.1",
        "insert,delete:public.t:a.like.\"%x_%\":b.is.null",
    ] {
        if let Ok(q) = query::parse(q) {
            assert_eq!(change.matched_by(&q), change.matched_by_without_caching(&q));
        }
    }
    let _ = change.is_heartbeat();
    for with_json in [false, true] {
        let len = record_len(&change, with_json);
        let mut out = vec![0u8; len + 8];
        assert_eq!(write_record(&change, with_json, &mut out), Some(len));
        assert!(
            write_record(&change, with_json, &mut out[..len.saturating_sub(1)]).is_none()
                || len == 0
        );
        let word = |at: usize| u32::from_le_bytes([out[at], out[at + 1], out[at + 2], out[at + 3]]);
        let json_at = word(24) as usize;
        assert!(json_at >= HEADER_LEN);
        if with_json {
            assert_eq!(&out[json_at..len], data);
            // `columns` and `identity` ranges lie inside the JSON.
            for at in [32, 40] {
                let (o, l) = (word(at), word(at + 4));
                if o != u32::MAX {
                    assert!((o as usize + l as usize) <= data.len());
                }
            }
        }
    }
});
