//! Keeps one change in every N per table (the first, the N+1st, ...):
//! a steady sample of a busy stream. It reads only the table, so it is
//! exported `header_only`: the proxy does not copy the JSON into it.
//!
//! Config (JSON): `{"n": 10}` (default 10).

use std::collections::HashMap;
use std::sync::Mutex;
use walcast_filter::{Decision, Event, Object};

struct State {
    n: u64,
    seen: HashMap<String, u64>,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

fn init(config: &[u8]) -> bool {
    let n = match Object::new(config) {
        Some(o) => match o.get("n") {
            Some(v) => match v.as_i64() {
                Some(n) if n >= 1 => n as u64,
                _ => return false,
            },
            None => 10,
        },
        None if config.iter().all(u8::is_ascii_whitespace) => 10,
        None => return false,
    };
    match STATE.lock() {
        Ok(mut s) => {
            *s = Some(State {
                n,
                seen: HashMap::new(),
            });
            true
        }
        Err(_) => false,
    }
}

fn filter(e: &Event) -> Decision {
    let Ok(mut guard) = STATE.lock() else {
        return Decision::Drop;
    };
    let state = guard.get_or_insert_with(|| State {
        n: 10,
        seen: HashMap::new(),
    });
    let key = format!("{}.{}", e.schema(), e.table());
    let count = state.seen.entry(key).or_insert(0);
    let keep = *count % state.n == 0;
    *count += 1;
    if keep {
        Decision::Keep
    } else {
        Decision::Drop
    }
}

walcast_filter::export!(filter, init = init, header_only);
