//! The plugin's JSON writers and the position formats both halves share.
//!
//! Invariants: a string written by `write_str` parses (serde_json) back to
//! the same string; text `is_json_number` accepts parses as a JSON number,
//! and `write_number_text` always writes one JSON value; an LSN or a
//! position that parses prints as text that parses to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;
use walcast_format::json::{is_json_number, write_number_text, write_str};
use walcast_format::{Lsn, Position};

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let mut out = Vec::new();
        write_str(&mut out, data);
        match serde_json::from_slice::<String>(&out) {
            Ok(back) => assert_eq!(back, s),
            Err(e) => panic!(
                "{:?} written as {:?}: {e}",
                s,
                String::from_utf8_lossy(&out)
            ),
        }
        if let Ok(lsn) = s.parse::<Lsn>() {
            assert_eq!(lsn.to_string().parse::<Lsn>().ok(), Some(lsn));
        }
        if let Ok(pos) = s.parse::<Position>() {
            assert_eq!(pos.to_string().parse::<Position>().ok(), Some(pos));
            assert_eq!(pos.to_string().len(), 25);
        }
    }
    // Checked as JSON syntax (RawValue): a number too large for an f64,
    // such as PostgreSQL's numeric can print, is still a JSON number.
    if is_json_number(data) {
        match serde_json::from_slice::<&RawValue>(data) {
            Ok(v) => assert!(!v.get().starts_with('"'), "{v}"),
            Err(e) => panic!("{:?} is no JSON number: {e}", String::from_utf8_lossy(data)),
        }
    }
    if std::str::from_utf8(data).is_ok() {
        let mut out = Vec::new();
        write_number_text(&mut out, data);
        if let Err(e) = serde_json::from_slice::<&RawValue>(&out) {
            panic!("{:?}: {e}", String::from_utf8_lossy(&out));
        }
    }
});
