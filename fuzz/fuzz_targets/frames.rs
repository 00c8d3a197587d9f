//! What clients send: a websocket's first frame (`{"subscribe":...}`), a
//! durable stream's ACK frames, and the bodies of `POST /v1/init` and
//! `POST /v1/snapshot/data`.
//!
//! Invariants: nothing panics; what is accepted keeps the rules the docs
//! give (an ACK lies between the last ACK and what was sent; a page's
//! limit is within the cap, its offset not negative, `after` alone).
#![no_main]

use libfuzzer_sys::fuzz_target;
use walcast_format::Lsn;
use walcast_proxy::session::{parse_first_frame, FirstFrameError};
use walcast_proxy::streams::consumer::{AckOutcome, Acks};
use walcast_proxy::streams::http::parse_create;
use walcast_proxy::streams::snapshot::parse_request;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_first_frame(text) {
        Ok(first) => assert!(first.query.is_some() || first.filter.is_some()),
        Err(FirstFrameError::Query(e)) => assert!(e.position <= text.len()),
        Err(FirstFrameError::Invalid(reason)) => assert!(!reason.is_empty()),
    }
    for (last, sent) in [(0, 0), (0x100, 0x200), (0x16B3800, u64::MAX)] {
        let (last, sent) = (Lsn(last), Lsn(sent));
        let acks = Acks { last, sent };
        match acks.judge(text) {
            AckOutcome::Accepted { lsn, .. } => assert!(last <= lsn && lsn <= sent),
            AckOutcome::Warning(m) | AckOutcome::Error(m) => assert!(!m.is_empty()),
            AckOutcome::Unchanged => {}
        }
    }
    for cap in [1, 1000] {
        if let Ok(req) = parse_request(text.as_bytes(), cap) {
            assert!(req.limit.is_none_or(|l| l >= 1 && l as u64 <= cap));
            assert!(req.offset.is_none_or(|o| o >= 0));
            assert!(
                req.after.is_none() || (req.offset.unwrap_or(0) == 0 && req.order_by.is_none())
            );
        }
    }
    let _ = parse_create(text.as_bytes());
});
