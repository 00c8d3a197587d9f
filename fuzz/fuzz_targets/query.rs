//! The query syntax: parse arbitrary text, then match the query against
//! rows built from its own columns and operands.
//!
//! Invariants: nothing panics; a parse error's position is a character
//! boundary inside the input (or its end); the hub, which finds a query
//! through its `eq` index and leaves costly matches to the cursor, delivers
//! a change exactly when the query matches it; matching within a work
//! budget gives the same answer or none.
#![no_main]

use arbitrary::{Arbitrary, Result, Unstructured};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Map, Value};
use walcast_format::{Lsn, Position};
use walcast_proxy::change::Change;
use walcast_proxy::live::hub::{Hub, PublishScratch, HUB_MATCH_COST};
use walcast_proxy::query::{self, Operand, Query, RowAction, RowView};

/// The input: the query's text, then (after a NUL byte) the bytes the rows
/// are built from, so that seeds can be written by hand.
fn split(data: &[u8]) -> (String, Vec<(u8, Vec<u8>)>) {
    let (text, rest) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let mut u = Unstructured::new(rest);
    let mut rows = Vec::new();
    for _ in 0..4 {
        let (Ok(kind), Ok(seed)) = (u8::arbitrary(&mut u), Vec::<u8>::arbitrary(&mut u)) else {
            break;
        };
        rows.push((kind, seed));
    }
    (String::from_utf8_lossy(text).into_owned(), rows)
}

/// A value built from the query's operands (so that filters have a chance
/// to hold), or an arbitrary one.
fn value(u: &mut Unstructured<'_>, operands: &[String]) -> Result<Value> {
    let pick = |u: &mut Unstructured<'_>| -> Result<String> {
        if operands.is_empty() {
            String::arbitrary(u)
        } else {
            Ok(u.choose(operands)?.clone())
        }
    };
    Ok(match u.int_in_range(0..=9)? {
        0 => Value::Null,
        1 => Value::Bool(bool::arbitrary(u)?),
        2 => json!(i64::arbitrary(u)?),
        3 => json!(u64::arbitrary(u)?),
        4 => serde_json::Number::from_f64(f64::arbitrary(u)?)
            .map(Value::Number)
            .unwrap_or(Value::Null),
        5 => Value::String(String::arbitrary(u)?),
        6 => {
            // The operand as a JSON value when it is one (a number, a bool,
            // an array, an object), else as a string.
            let s = pick(u)?;
            serde_json::from_str(&s).unwrap_or(Value::String(s))
        }
        7 => {
            let mut s = pick(u)?;
            if bool::arbitrary(u)? {
                s = s.to_uppercase();
            }
            Value::String(s)
        }
        8 => json!([pick(u)?]),
        _ => Value::String(pick(u)?),
    })
}

fn row(u: &mut Unstructured<'_>, q: &Query) -> Result<Map<String, Value>> {
    let mut columns: Vec<String> = q.filters.iter().map(|f| f.column.clone()).collect();
    columns.push("other".into());
    let operands: Vec<String> = q
        .filters
        .iter()
        .flat_map(|f| match &f.operand {
            Operand::Value(v) => vec![v.clone()],
            Operand::List(items) => items.clone(),
            _ => Vec::new(),
        })
        .collect();
    let mut m = Map::new();
    for _ in 0..u.int_in_range(0..=columns.len())? {
        let c = u.choose(&columns)?.clone();
        m.insert(c, value(u, &operands)?);
    }
    Ok(m)
}

fn check(q: &Query, rows: &[(u8, Vec<u8>)]) {
    let hub = Hub::new(1 << 20);
    hub.stream_starts_at(Position::default());
    // Only the per-call slice bounds the cursor's own matching here.
    hub.set_match_budget(std::time::Duration::from_secs(3600));
    let Ok(mut cursor) = hub.subscribe(Some(q.clone()), None) else {
        panic!("subscribe refused");
    };
    let mut scratch = PublishScratch::default();
    let mut got = Vec::new();
    let schema = q.table.schema.clone().unwrap_or_else(|| "public".into());
    for (n, (kind, seed)) in rows.iter().enumerate() {
        let mut u = Unstructured::new(seed);
        let Ok(row) = row(&mut u, q) else { return };
        let (code, action, part) = match kind % 3 {
            0 => ("I", RowAction::Insert, "columns"),
            1 => ("U", RowAction::Update, "columns"),
            _ => ("D", RowAction::Delete, "identity"),
        };
        let table = if kind & 0x80 == 0 {
            q.table.name.as_str()
        } else {
            "elsewhere"
        };
        let mut raw = json!({
            "action": code,
            "lsn": "0/1",
            "pos": Position::new(Lsn(n as u64 + 1), 0).to_string(),
            "schema": schema,
            "table": table,
        });
        raw[part] = Value::Object(row.clone());
        let Ok(change) = Change::parse(Bytes::from(raw.to_string()), Lsn(1)) else {
            panic!("a change the proxy wrote itself does not parse: {raw}");
        };
        let want = q.matches(&RowView {
            action,
            schema: &schema,
            table,
            truncated: &[],
            row: Some(&row),
        });
        assert_eq!(want, change.matched_by(q), "{q:?} on {raw}");
        // Within a work budget: the same answer, or undecided.
        for budget in [0, 64, HUB_MATCH_COST] {
            let within = change.matched_within(q, budget);
            assert!(
                within.is_none_or(|m| m == want),
                "{q:?} on {raw} within {budget}"
            );
        }
        hub.publish(vec![change], &mut scratch);
        got.clear();
        loop {
            if let Err(e) = cursor.fill(16, &mut got) {
                panic!("fill: {e:?}");
            }
            if cursor.throttle().is_none() {
                break;
            }
        }
        assert_eq!(
            got.len(),
            usize::from(want),
            "the hub and {q:?} disagree on {raw}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let (text, rows) = split(data);
    let input = (text, rows);
    match query::parse(&input.0) {
        Err(e) => {
            assert!(
                e.position <= input.0.len() && input.0.is_char_boundary(e.position),
                "error position {} outside {:?}: {e}",
                e.position,
                input.0
            );
            assert!(!e.message.is_empty());
        }
        Ok(q) => {
            // Parsing is deterministic (groups are shared by parsed form).
            if let Ok(again) = query::parse(&input.0) {
                assert_eq!(format!("{q:?}"), format!("{again:?}"));
            }
            check(&q, &input.1);
        }
    }
});
