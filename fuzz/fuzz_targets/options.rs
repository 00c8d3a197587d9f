//! The plugin's option parser and the table-pattern syntax (shared by the
//! plugin's `add-tables`, the proxy's `--tables` and durable streams).
//!
//! Invariants: nothing panics; a pattern that parses gives back its source
//! text and parses again to the same pattern; a table matched by a pattern
//! list is matched by one of its patterns.
#![no_main]

use libfuzzer_sys::fuzz_target;
use walcast_format::{Options, TablePattern};

/// The input, one item per line: `name=value` option pairs (`name` alone
/// has no value); the first line is also the pattern, and the second line,
/// split at its first `:`, the schema and table names.
struct Input {
    options: Vec<(String, Option<String>)>,
    pattern: String,
    schema: String,
    table: String,
}

fn split(text: &str) -> Input {
    let lines: Vec<&str> = text.split('\n').collect();
    let options = lines
        .iter()
        .map(|l| match l.split_once('=') {
            Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
            None => (l.to_string(), None),
        })
        .collect();
    let (schema, table) = lines
        .get(1)
        .and_then(|l| l.split_once(':'))
        .unwrap_or(("", ""));
    Input {
        options,
        pattern: lines[0].to_owned(),
        schema: schema.to_owned(),
        table: table.to_owned(),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let input = split(text);
    let _ = Options::parse(
        input
            .options
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_deref())),
    );
    // The names the parser knows, with the fuzzer's values.
    for name in [
        "include-lsn",
        "include-xids",
        "include-timestamp",
        "include-transaction",
        "include-types",
        "stream-changes",
        "include-position",
        "batch-bytes",
        "add-tables",
        "filter-tables",
        "actions",
        "add-msg-prefixes",
        "filter-msg-prefixes",
    ] {
        if let Ok(o) = Options::parse([(name, Some(input.pattern.as_str()))]) {
            let _ = o.table_allowed(&input.schema, &input.table);
            let _ = o.message_allowed(&input.table);
        }
    }
    if let Ok(p) = TablePattern::parse(&input.pattern) {
        let again = TablePattern::parse(p.as_str());
        assert!(again.is_ok(), "{:?} does not parse again", p.as_str());
        let _ = p.matches(&input.schema, &input.table);
        let _ = p.matches_table(&input.table);
    }
    // A name written as a pattern (special characters and whitespace escaped)
    // matches exactly that name.
    if !input.schema.is_empty() && !input.table.is_empty() {
        let exact = format!("{}.{}", escape(&input.schema), escape(&input.table));
        let Ok(p) = TablePattern::parse(&exact) else {
            panic!("{exact:?} does not parse");
        };
        assert!(p.matches(&input.schema, &input.table), "{exact:?}");
        let Ok(list) = TablePattern::parse_list(&exact) else {
            panic!("{exact:?} does not parse as a list");
        };
        assert!(
            list.iter().any(|p| p.matches(&input.schema, &input.table)),
            "{exact:?}"
        );
    }
    if let Ok(list) = TablePattern::parse_list(&input.pattern) {
        for p in &list {
            let _ = p.matches(&input.schema, &input.table);
        }
    }
});

fn escape(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        if matches!(c, '\\' | '.' | '*' | ',') || c.is_whitespace() {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
