//! Keeps the rows of one table whose numeric column is at least a
//! threshold; drops everything else.
//!
//! Config (JSON): `{"table": "orders", "column": "total", "min": 100}`.
//! Inserts and updates are judged on their new row, deletes on their
//! identity; a row without the column (or with null) is dropped.

use std::sync::Mutex;
use walcast_filter::{Decision, Event, Object};

struct Config {
    table: String,
    column: String,
    min: f64,
}

static CONFIG: Mutex<Option<Config>> = Mutex::new(None);

fn init(config: &[u8]) -> bool {
    let Some(o) = Object::new(config) else {
        return false;
    };
    let text = |k: &str| {
        o.get(k)
            .and_then(|v| v.as_str())
            .map(|s| s.chars().collect::<String>())
    };
    let (Some(table), Some(column), Some(min)) = (
        text("table"),
        text("column"),
        o.get("min").and_then(|v| v.as_f64()),
    ) else {
        return false;
    };
    match CONFIG.lock() {
        Ok(mut c) => {
            *c = Some(Config { table, column, min });
            true
        }
        Err(_) => false,
    }
}

fn filter(e: &Event) -> Decision {
    let Ok(guard) = CONFIG.lock() else {
        return Decision::Drop;
    };
    let Some(c) = guard.as_ref() else {
        return Decision::Drop;
    };
    if !e.is_table(&c.table) {
        return Decision::Drop;
    }
    match e
        .row()
        .and_then(|r| r.get(&c.column))
        .and_then(|v| v.as_f64())
    {
        Some(v) if v >= c.min => Decision::Keep,
        _ => Decision::Drop,
    }
}

walcast_filter::export!(filter, init = init);
