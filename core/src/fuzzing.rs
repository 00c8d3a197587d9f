//! Inputs built from bytes, for the fuzz targets (`fuzz/`) and the seeded
//! tests that replay them: a query's text with rows made from its own
//! columns and operands, so that filters have a chance to hold.
//!
//! Built only with the `fuzzing` feature.

use crate::change::Change;
use crate::query::{Operand, Query, RowAction, RowView};
use arbitrary::{Arbitrary, Result, Unstructured};
use bytes::Bytes;
use serde_json::{json, Map, Value};
use walcast_format::{Lsn, Position};

/// The input: the query's text, then (after a NUL byte) the bytes the rows
/// are built from, so that seeds can be written by hand.
pub fn split(data: &[u8]) -> (String, Vec<(u8, Vec<u8>)>) {
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

/// One change built for a query, and what matching it must give.
pub struct Case {
    pub change: Change,
    pub action: RowAction,
    pub schema: String,
    /// The query's table, or another one.
    pub table: String,
    /// Whether the query matches it, by [`Query::matches`].
    pub matches: bool,
    /// The change as JSON, for messages.
    pub raw: String,
}

/// The changes `rows` build for `q` (an insert, update or delete of its
/// table or of another), each checked: matching through [`Change`] (its
/// cached row) gives what [`Query::matches`] gives, and matching within
/// each of `budgets` gives the same answer or none. Panics otherwise.
pub fn cases(q: &Query, rows: &[(u8, Vec<u8>)], budgets: &[usize]) -> Vec<Case> {
    let schema = q.table.schema.clone().unwrap_or_else(|| "public".into());
    let mut out = Vec::new();
    for (n, (kind, seed)) in rows.iter().enumerate() {
        let mut u = Unstructured::new(seed);
        let Ok(row) = row(&mut u, q) else { break };
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
        let raw = raw.to_string();
        let Ok(change) = Change::parse(Bytes::from(raw.clone()), Lsn(1)) else {
            panic!("a change the proxy wrote itself does not parse: {raw}");
        };
        let matches = q.matches(&RowView {
            action,
            schema: &schema,
            table,
            truncated: &[],
            row: Some(&row),
        });
        assert_eq!(matches, change.matched_by(q), "{q:?} on {raw}");
        for &budget in budgets {
            let within = change.matched_within(q, budget);
            assert!(
                within.is_none_or(|m| m == matches),
                "{q:?} on {raw} within {budget}"
            );
        }
        out.push(Case {
            change,
            action,
            schema: schema.clone(),
            table: table.to_owned(),
            matches,
            raw,
        });
    }
    out
}
