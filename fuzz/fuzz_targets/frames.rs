//! What clients send: a websocket's first frame (`{"subscribe":...}`), a
//! durable stream's ACK frames, token refresh frames, bearer tokens (JWTs
//! and their `walcast` claim), and the bodies of `POST /v1/init` and
//! `POST /v1/snapshot/data`.
//!
//! Invariants: nothing panics; what is accepted keeps the rules the docs
//! give (an ACK lies between the last ACK and what was sent; a page's
//! limit is within the cap, its offset not negative, `after` alone; only
//! the static token or a JWT signed with the secret is accepted; a claim's
//! row filter as SQL binds exactly the parameters it names).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use walcast_core::auth::{jwt, refresh_frame, rules, Auth, Rules};
use walcast_core::marks::{Mark, Visibility};
use walcast_core::requests::{
    parse_create, parse_request, AckOutcome, Acks, Subscription, SubscriptionError,
};
use walcast_format::Lsn;

/// The secret of the seed tokens (fuzz/corpus/frames/jwt-*).
const SECRET: &str = "walcast-fuzz-secret-0123456789abcdef";
const STATIC: &str = "fuzz-static-token";

fn auth() -> &'static Auth {
    static AUTH: OnceLock<Auth> = OnceLock::new();
    AUTH.get_or_init(|| {
        let keys = jwt::KeySources {
            secret: Some(SECRET.into()),
            ..jwt::KeySources::default()
        };
        let verifier = jwt::Verifier::new(&keys).ok().flatten();
        Auth::new(vec![STATIC.into()], Vec::new(), verifier)
    })
}

fn tokens(text: &str) {
    let _ = refresh_frame(text);
    for candidate in [
        Some(text),
        refresh_frame(text).and_then(Result::ok).as_deref(),
    ] {
        let Some(token) = candidate else { continue };
        if let Ok(grant) = auth().check(Some(token)) {
            // Only the static token or a verified JWT (three parts) passes.
            assert!(token == STATIC || token.matches('.').count() == 2);
            if let Some(rules) = &grant.rules {
                claim_sql(rules);
            }
        }
    }
    if let Ok(claim) = serde_json::from_str::<rules::Claim>(text) {
        if let Ok(rules) = Rules::from_claim(claim) {
            claim_sql(&rules);
        }
    }
}

/// The row filter's SQL names each bind parameter it appends.
fn claim_sql(rules: &Rules) {
    let mut params = Vec::new();
    let sql = rules.sql_condition(|c| (!c.is_empty()).then(|| "text".to_owned()), &mut params);
    match sql {
        None => assert!(params.is_empty() && rules.row_filter.is_empty()),
        Some(sql) => {
            for n in 1..=params.len() {
                assert!(sql.contains(&format!("${n}::")), "{sql} lacks ${n}");
            }
            assert!(!sql.contains(&format!("${}::", params.len() + 1)));
        }
    }
}

/// A subscription, in either form, keeps the rules every one keeps.
fn subscription(parsed: Result<Subscription, SubscriptionError>, len: usize) {
    match parsed {
        Ok(sub) => {
            assert!(!sub.choice.is_empty());
            assert!(!sub.snapshot || sub.choice.query.is_some());
        }
        Err(SubscriptionError::Query(e)) => assert!(e.position <= len),
        Err(SubscriptionError::Invalid(reason)) => assert!(!reason.is_empty()),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    tokens(text);
    subscription(Subscription::from_frame(text), text.len());
    // The same text as a URL's query string (`a=b&c=d`, undecoded).
    let params = text
        .split('&')
        .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    match Subscription::from_url(&params) {
        Ok(None) => assert!(!params.contains_key("query") && !params.contains_key("filter")),
        Ok(Some(sub)) => subscription(Ok(sub), text.len()),
        Err(e) => subscription(Err(e), text.len()),
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
    // Watermark contents and snapshots come from the database.
    if let Some(m) = Mark::parse(text) {
        assert_eq!(Mark::parse(&m.content()), Some(m));
    }
    if let Some(v) = Visibility::parse(text) {
        assert!(v.xip.len() <= text.len());
    }
});
