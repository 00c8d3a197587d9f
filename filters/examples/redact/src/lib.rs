//! Redacts personal data: the values of the named columns (default
//! `email` and `phone`) in `columns` and `identity` become a mask; the
//! rest of the change is delivered unchanged. A transform filter.
//!
//! Config (JSON, optional): `{"columns": ["email", "phone"], "mask": "***"}`.

use std::sync::Mutex;
use walcast_filter::{Decision, Event, Object, Value};

struct Config {
    columns: Vec<String>,
    /// The mask as a JSON string literal, quotes included.
    mask: Vec<u8>,
}

static CONFIG: Mutex<Option<Config>> = Mutex::new(None);

fn json_string(s: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() + 2);
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            c if (c as u32) < 0x20 => {
                out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes())
            }
            c => {
                let mut b = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
            }
        }
    }
    out.push(b'"');
    out
}

fn default_config() -> Config {
    Config {
        columns: vec!["email".into(), "phone".into()],
        mask: json_string("***"),
    }
}

fn init(config: &[u8]) -> bool {
    let mut c = default_config();
    if !config.iter().all(u8::is_ascii_whitespace) {
        let Some(o) = Object::new(config) else {
            return false;
        };
        if let Some(v) = o.get("columns") {
            let Value::Array(items) = v else {
                return false;
            };
            // An array of strings: read it as the members of an object-like list.
            let list: Vec<String> = parse_string_array(items);
            if list.is_empty() {
                return false;
            }
            c.columns = list;
        }
        if let Some(m) = o.get("mask").and_then(|v| v.as_str()) {
            c.mask = json_string(&m.chars().collect::<String>());
        }
    }
    match CONFIG.lock() {
        Ok(mut g) => {
            *g = Some(c);
            true
        }
        Err(_) => false,
    }
}

/// `["a","b"]` -> `["a", "b"]` (strings only).
fn parse_string_array(raw: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'"' {
            let mut j = i + 1;
            while j < raw.len() && raw[j] != b'"' {
                j += if raw[j] == b'\\' { 2 } else { 1 };
            }
            let s = walcast_filter::Str {
                raw: &raw[i + 1..j.min(raw.len())],
            };
            out.push(s.chars().collect());
            i = j + 1;
        } else {
            i += 1;
        }
    }
    out
}

/// Copies `json`, replacing the values of the configured columns inside
/// the object at `part` (a byte range of `json`).
fn redact(json: &[u8], parts: &[Object], c: &Config, out: &mut Vec<u8>) -> bool {
    let mut spans: Vec<(usize, usize)> = Vec::new();
    for part in parts {
        let base = part.raw.as_ptr() as usize - json.as_ptr() as usize;
        for m in part.members() {
            if !m.value.is_null() && c.columns.iter().any(|col| m.key.eq_str(col)) {
                spans.push((base + m.span.0, base + m.span.1));
            }
        }
    }
    if spans.is_empty() {
        return false;
    }
    spans.sort_unstable();
    let mut at = 0;
    for (s, e) in spans {
        out.extend_from_slice(&json[at..s]);
        out.extend_from_slice(&c.mask);
        at = e;
    }
    out.extend_from_slice(&json[at..]);
    true
}

fn filter(e: &Event) -> Decision {
    let Ok(mut guard) = CONFIG.lock() else {
        return Decision::Drop;
    };
    let c = guard.get_or_insert_with(default_config);
    let parts: Vec<Object> = [e.columns(), e.identity()].into_iter().flatten().collect();
    let mut out = Vec::with_capacity(e.json().len());
    if redact(e.json(), &parts, c, &mut out) {
        Decision::Replace(out)
    } else {
        Decision::Keep
    }
}

walcast_filter::export!(filter, init = init);
