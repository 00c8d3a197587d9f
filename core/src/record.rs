//! The input record a filter receives for each change (ABI v1, all
//! integers little-endian):
//!
//! | offset | type | field |
//! |---|---|---|
//! | 0 | u8 | record version (1) |
//! | 1 | u8 | action: 1 I, 2 U, 3 D, 4 T, 5 M, 6 DDL, 7 R (a backfill's read event), 0 other |
//! | 2 | u16 | reserved (0) |
//! | 4 | u32 | schema length |
//! | 8 | u32 | table length |
//! | 12 | u32 | xid (0 when none) |
//! | 16 | u64 | lsn |
//! | 24 | u32 | JSON offset (from the record start) |
//! | 28 | u32 | JSON length |
//! | 32 | u32 | `columns` offset inside the JSON (`u32::MAX`: none) |
//! | 36 | u32 | `columns` length |
//! | 40 | u32 | `identity` offset inside the JSON (`u32::MAX`: none) |
//! | 44 | u32 | `identity` length |
//! | 48 | | schema bytes, table bytes, JSON bytes |
//!
//! A module that exports the `walcast_header_only` marker gets records
//! without the JSON (length 0, no `columns` or `identity`).

use crate::change::Change;
use walcast_abi::filter::offset;
pub use walcast_abi::filter::{ABSENT, HEADER_LEN, RECORD_VERSION};

/// The record's length for `change`, with or without its JSON.
pub fn record_len(change: &Change, with_json: bool) -> usize {
    let json = if with_json { change.raw().len() } else { 0 };
    head(change).len() + json
}

/// The header, schema and table: the same for every subscription, so
/// built once per change and copied from there.
fn head(change: &Change) -> &[u8] {
    change.filter_head(build_head)
}

fn build_head(change: &Change) -> Box<[u8]> {
    let (schema, table) = (change.schema.as_bytes(), change.table.as_bytes());
    let json_offset = HEADER_LEN + schema.len() + table.len();
    let range = |r: Option<(usize, usize)>| match r {
        Some((s, e)) => (s as u32, (e - s) as u32),
        None => (ABSENT, 0),
    };
    let (co, cl) = range(change.columns_range());
    let (io, il) = range(change.identity_range());
    let mut head = vec![0u8; json_offset];
    head[offset::VERSION] = RECORD_VERSION;
    head[offset::ACTION] = change.action.record_code();
    let words = [
        (offset::SCHEMA_LEN, schema.len() as u32),
        (offset::TABLE_LEN, table.len() as u32),
        (offset::XID, change.xid.unwrap_or(0)),
        (offset::JSON_OFFSET, json_offset as u32),
        (offset::JSON_LEN, change.raw().len() as u32),
        (offset::COLUMNS_OFFSET, co),
        (offset::COLUMNS_LEN, cl),
        (offset::IDENTITY_OFFSET, io),
        (offset::IDENTITY_LEN, il),
    ];
    for (at, v) in words {
        head[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }
    head[offset::LSN..offset::LSN + 8].copy_from_slice(&change.lsn.0.to_le_bytes());
    head[HEADER_LEN..HEADER_LEN + schema.len()].copy_from_slice(schema);
    head[HEADER_LEN + schema.len()..].copy_from_slice(table);
    head.into_boxed_slice()
}

/// Header bytes from the JSON's length on, of a record without the JSON:
/// length 0, no `columns`, no `identity`.
const NO_JSON: [u8; HEADER_LEN - offset::JSON_LEN] = {
    let mut b = [0u8; 20];
    let mut i = 4;
    while i < 8 {
        b[i] = 0xFF;
        b[i + 8] = 0xFF;
        i += 1;
    }
    b
};

/// Writes the record for `change` into `out`, which must be at least
/// `record_len(change, with_json)` bytes (the guest's buffer, written in
/// place). Returns the record's length, or `None` when `out` is too small.
pub fn write_record(change: &Change, with_json: bool, out: &mut [u8]) -> Option<usize> {
    let head = head(change);
    let json: &[u8] = if with_json { change.raw() } else { &[] };
    let len = head.len() + json.len();
    let (h, rest) = out.get_mut(..len)?.split_at_mut(head.len());
    h.copy_from_slice(head);
    if with_json {
        rest.copy_from_slice(json);
    } else {
        h[offset::JSON_LEN..HEADER_LEN].copy_from_slice(&NO_JSON);
    }
    Some(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use walcast_format::Lsn;

    #[test]
    fn layout() {
        let raw = Bytes::from_static(
            br#"{"action":"I","lsn":"0/10","xid":7,"schema":"public","table":"t","columns":{"id":1}}"#,
        );
        let c = Change::parse(raw.clone(), Lsn(0)).expect("parse");
        let mut out = vec![0xAA; record_len(&c, true) + 10];
        assert_eq!(write_record(&c, true, &mut out), Some(record_len(&c, true)));
        assert_eq!(write_record(&c, true, &mut [0u8; 20]), None);
        let u32_at = |o: usize| u32::from_le_bytes([out[o], out[o + 1], out[o + 2], out[o + 3]]);
        assert_eq!(out[0], 1);
        assert_eq!(out[1], 1);
        assert_eq!(u32_at(4), 6);
        assert_eq!(u32_at(8), 1);
        assert_eq!(u32_at(12), 7);
        assert_eq!(
            u64::from_le_bytes(out[16..24].try_into().expect("8 bytes")),
            0x10
        );
        let jo = u32_at(24) as usize;
        assert_eq!(&out[48..54], b"public");
        assert_eq!(&out[54..55], b"t");
        assert_eq!(&out[jo..jo + u32_at(28) as usize], &raw[..]);
        let co = jo + u32_at(32) as usize;
        assert_eq!(&out[co..co + u32_at(36) as usize], br#"{"id":1}"#);
        assert_eq!(u32_at(40), u32::MAX);

        // Without the JSON: the same header, JSON length 0, no row.
        let mut short = vec![0xAA; 64];
        assert_eq!(write_record(&c, false, &mut short), Some(55));
        assert_eq!(record_len(&c, false), 55);
        assert_eq!(short[..24], out[..24]);
        assert_eq!((u32_at_in(&short, 24), u32_at_in(&short, 28)), (55, 0));
        assert_eq!(
            (u32_at_in(&short, 32), u32_at_in(&short, 36)),
            (u32::MAX, 0)
        );
        assert_eq!(&short[48..55], b"publict");
    }

    fn u32_at_in(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
    }
}
