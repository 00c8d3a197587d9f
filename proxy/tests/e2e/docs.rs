//! The documentation says what the code does: JSON examples parse, the
//! query examples and error positions of docs/query.md are what the parser
//! says, every flag and metric is documented and every documented one exists.

use std::collections::BTreeSet;
use std::process::Command;
use walcast_proxy::live::hub::Hub;
use walcast_proxy::metrics::Metrics;
use walcast_proxy::query;
use walcast_tests::repo_root;

fn read(path: &str) -> String {
    std::fs::read_to_string(repo_root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The fenced blocks of a markdown text with the given info string.
fn blocks<'a>(md: &'a str, lang: &str) -> Vec<&'a str> {
    let fence = format!("```{lang}\n");
    let mut out = Vec::new();
    let mut rest = md;
    while let Some(start) = rest.find(&fence) {
        let body = &rest[start + fence.len()..];
        let Some(end) = body.find("```") else { break };
        out.push(&body[..end]);
        rest = &body[end + 3..];
    }
    out
}

/// The rows of the markdown table that follows `heading_text`, as cells.
fn table_after(md: &str, marker: &str) -> Vec<Vec<String>> {
    let at = md.find(marker).unwrap_or_else(|| panic!("no {marker:?}"));
    md[at..]
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .map(|l| {
            l.trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().to_owned())
                .collect()
        })
        .collect()
}

fn unquote(cell: &str) -> &str {
    cell.trim().trim_start_matches('`').trim_end_matches('`')
}

#[test]
fn json_examples_parse() {
    let docs = [
        "docs/format.md",
        "docs/proxy.md",
        "docs/streams.md",
        "docs/query.md",
        "filters/README.md",
        "examples/README.md",
    ];
    let mut checked = 0;
    for path in docs {
        let md = read(path);
        for block in blocks(&md, "json") {
            if serde_json::from_str::<serde_json::Value>(block).is_ok() {
                checked += 1;
                continue;
            }
            for line in block.lines().filter(|l| !l.trim().is_empty()) {
                if let Err(e) = serde_json::from_str::<serde_json::Value>(line) {
                    panic!("{path}: a JSON example does not parse ({e}):\n{line}");
                }
                checked += 1;
            }
        }
    }
    assert!(checked > 20, "only {checked} JSON examples found");
}

#[test]
fn query_examples_and_errors_are_what_the_parser_says() {
    let md = read("docs/query.md");
    let examples = table_after(&md, "## Examples");
    assert!(examples.len() >= 10);
    for row in &examples {
        let q = unquote(&row[0]);
        if let Err(e) = query::parse(q) {
            panic!(
                "docs/query.md example {q:?} does not parse: {e} at {}",
                e.position
            );
        }
    }
    let errors = table_after(&md, "| query | position | because |");
    assert!(errors.len() >= 5);
    let mut wrong = Vec::new();
    for row in &errors {
        let q = unquote(&row[0]);
        let position: usize = row[1].parse().expect("position");
        match query::parse(q) {
            Ok(_) => wrong.push(format!("{q:?} parses")),
            Err(e) if e.position != position => wrong.push(format!(
                "{q:?} fails at {} ({}), not {position}",
                e.position, e.message
            )),
            Err(_) => {}
        }
    }
    assert!(
        wrong.is_empty(),
        "docs/query.md errors table:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn every_flag_is_documented_and_every_documented_flag_exists() {
    let help = Command::new(env!("CARGO_BIN_EXE_walcast-proxy"))
        .arg("--help")
        .output()
        .expect("walcast-proxy --help");
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let flags = |text: &str| -> BTreeSet<String> {
        text.split(|c: char| c.is_whitespace() || c == '`' || c == ',' || c == '|')
            .filter(|w| {
                w.starts_with("--")
                    && w.len() > 2
                    && w[2..].starts_with(|c: char| c.is_ascii_lowercase())
            })
            .map(|w| {
                w.trim_end_matches(['.', ')', ';'])
                    .split('=')
                    .next()
                    .unwrap_or("")
                    .to_owned()
            })
            .collect()
    };
    let mut in_help = flags(&help);
    in_help.remove("--help");
    in_help.remove("--version");
    let md = read("docs/proxy.md");
    let table: BTreeSet<String> = table_after(&md, "| flag | variable | default | meaning |")
        .iter()
        .map(|r| unquote(&r[0]).to_owned())
        .collect();
    assert_same(
        &in_help,
        &table,
        "flags not in docs/proxy.md",
        "documented flags walcast-proxy does not have",
    );
    // Each variable named in the table is the flag's environment variable,
    // and each default the table gives is the one --help shows.
    let defaults = help_defaults(&help);
    let mut checked = 0;
    for row in table_after(&md, "| flag | variable | default | meaning |") {
        let var = unquote(&row[1]);
        assert!(
            help.contains(&format!("env: {var}")),
            "{var} is not in --help"
        );
        if let Some(default) = defaults.get(unquote(&row[0])) {
            assert!(
                row[2].contains(&format!("`{default}`")),
                "docs/proxy.md gives {} the default {}, --help says {default}",
                row[0],
                row[2]
            );
            checked += 1;
        }
    }
    // Every flag --help gives a default for was compared (a --help whose
    // defaults this reading missed fails here instead of checking nothing).
    assert!(
        defaults.len() > 20,
        "defaults read from --help: {defaults:?}"
    );
    assert_eq!(checked, defaults.len(), "defaults: {defaults:?}");
    let doctor = Command::new(env!("CARGO_BIN_EXE_walcast-proxy"))
        .args(["doctor", "--help"])
        .output()
        .expect("walcast-proxy doctor --help");
    assert!(doctor.status.success());
}

/// Each flag of `--help` that has a default, with it.
fn help_defaults(help: &str) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    let mut flag: Option<String> = None;
    for line in help.lines() {
        let t = line.trim_start();
        if t.starts_with("--") || t.starts_with('-') && t.contains(", --") {
            flag = t
                .split_whitespace()
                .find(|w| w.starts_with("--"))
                .map(|w| w.trim_end_matches(',').to_owned());
        }
        if let (Some(f), Some(at)) = (&flag, line.find("[default: ")) {
            let rest = &line[at + "[default: ".len()..];
            if let Some(end) = rest.find(']') {
                out.insert(f.clone(), rest[..end].to_owned());
            }
        }
    }
    out
}

/// Asserts that the code and the docs name the same things.
fn assert_same(code: &BTreeSet<String>, docs: &BTreeSet<String>, missing: &str, unknown: &str) {
    let not_documented: Vec<_> = code.difference(docs).collect();
    assert!(not_documented.is_empty(), "{missing}: {not_documented:?}");
    let not_in_code: Vec<_> = docs.difference(code).collect();
    assert!(not_in_code.is_empty(), "{unknown}: {not_in_code:?}");
}

#[test]
fn every_metric_is_documented_and_every_documented_metric_exists() {
    let rendered = Metrics::default().render(&Hub::new(1 << 20).report());
    let names = |text: &str| -> BTreeSet<String> {
        text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("walcast_") && w.len() > 8)
            .map(str::to_owned)
            .collect()
    };
    let exported: BTreeSet<String> = rendered
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    let md = read("docs/proxy.md");
    let line = md
        .lines()
        .find(|l| l.starts_with("| `GET /metrics`"))
        .expect("metrics row");
    let documented = names(line);
    assert_same(
        &exported,
        &documented,
        "metrics not in docs/proxy.md",
        "documented metrics that do not exist",
    );
    // The metrics named in operations.md exist too.
    let ops_md = read("docs/operations.md");
    let monitor = ops_md
        .split("## What to monitor")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("a monitoring section");
    let ops = names(monitor);
    assert!(ops.len() >= 8, "{ops:?}");
    let unknown: Vec<_> = ops.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "docs/operations.md names unknown metrics: {unknown:?}"
    );
}

/// The source files a text names (`live/hub.rs`, `proxy/src/change.rs`,
/// `core/src/query/eval.rs`), relative to `proxy/src` or `core/src`.
fn source_files(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '/' || c == '.'))
        .filter(|t| t.ends_with(".rs") && t.len() > 3)
        .map(|t| {
            t.trim_start_matches("proxy/src/")
                .trim_start_matches("core/src/")
                .to_owned()
        })
        .collect()
}

#[test]
fn the_architecture_names_files_that_exist() {
    // The proxy's sources and the core crate's.
    let roots = [repo_root().join("proxy/src"), repo_root().join("core/src")];
    let mut dirs = roots.to_vec();
    for root in &roots {
        let subdirs = std::fs::read_dir(root)
            .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir());
        dirs.extend(subdirs);
    }
    // A bare name (`hub.rs`) may be in a directory the text speaks of.
    let exists = |f: &str| dirs.iter().any(|d| d.join(f).is_file());
    let doc_of = |path: &str| -> String {
        read(path)
            .lines()
            .filter(|l| l.starts_with("//!"))
            .map(|l| format!("{l}\n"))
            .collect()
    };
    for (doc, text) in [
        ("docs/architecture.md", read("docs/architecture.md")),
        ("proxy/src/lib.rs", doc_of("proxy/src/lib.rs")),
        ("core/src/lib.rs", doc_of("core/src/lib.rs")),
        ("proxy/src/live/mod.rs", read("proxy/src/live/mod.rs")),
        ("proxy/src/http/mod.rs", read("proxy/src/http/mod.rs")),
        ("proxy/src/durable/mod.rs", read("proxy/src/durable/mod.rs")),
    ] {
        let named = source_files(&text);
        assert!(named.len() >= 4, "{doc} names only {named:?}");
        let missing: Vec<_> = named.iter().filter(|f| !exists(f)).collect();
        assert!(
            missing.is_empty(),
            "{doc} names files that do not exist: {missing:?}"
        );
    }
}

/// The letters of a TypeScript union of string literals (`"I" | "U"`).
fn ts_letters(union: &str) -> BTreeSet<String> {
    union
        .split('|')
        .map(|s| s.trim().trim_matches('"').to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

#[test]
fn the_typescript_client_speaks_the_action_letters_of_walcast_abi() {
    use walcast_abi::Action;
    let live = read("clients/js/src/live.ts");
    let union = live
        .lines()
        .find_map(|l| l.strip_prefix("export type Action ="))
        .expect("live.ts declares export type Action")
        .trim_end_matches(';');
    let transaction = [
        Action::Begin,
        Action::Commit,
        Action::StreamStart,
        Action::StreamStop,
        Action::StreamCommit,
        Action::StreamAbort,
    ];
    // A change a client holds is every action but a transaction's frames.
    let changes: BTreeSet<String> = Action::ALL
        .into_iter()
        .filter(|a| !transaction.contains(a))
        .map(|a| a.letter().to_owned())
        .collect();
    assert_eq!(ts_letters(union), changes, "live.ts's Action");
    let durable = read("clients/js/src/durable.ts");
    let union = durable
        .lines()
        .find_map(|l| l.trim().strip_prefix("action?:"))
        .expect("durable.ts types a frame's action")
        .trim_end_matches(';');
    for letter in ts_letters(union) {
        assert!(
            Action::from_letter(&letter).is_some(),
            "durable.ts names an action walcast-abi does not: {letter:?}"
        );
    }
}

/// The proxy's sources outside tests: (path, text before `#[cfg(test)]`).
fn proxy_sources() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut dirs = vec![repo_root().join("proxy/src")];
    while let Some(dir) = dirs.pop() {
        for e in std::fs::read_dir(&dir).expect("proxy/src") {
            let path = e.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&path).expect("source");
                // Tests are not the product: neither a file's test module
                // nor fuzzing.rs (built only for tests and fuzz targets).
                if path.ends_with("fuzzing.rs") {
                    continue;
                }
                let text = text.split("#[cfg(test)]").next().unwrap_or("").to_owned();
                out.push((path.display().to_string(), text));
            }
        }
    }
    out
}

#[test]
fn the_pieces_the_architecture_names_are_written_once() {
    // docs/architecture.md, "What a client receives": one place each.
    let sources = proxy_sources();
    let places = |needle: &str| -> Vec<String> {
        sources
            .iter()
            .filter(|(_, text)| text.contains(needle))
            .map(|(path, text)| format!("{path} ({})", text.matches(needle).count()))
            .collect()
    };
    for (needle, home) in [
        // A plugin message becomes changes in replication::reader::changes.
        (
            "unparseable_messages.fetch_add",
            "replication/reader.rs (1)",
        ),
        // A filter over its budget pauses through delivery::budget_pause.
        ("filter_budget_waits.fetch_add", "delivery.rs (1)"),
        (".budget_wait()", "delivery.rs (1)"),
        // A filter's decision becomes an outcome (and its error frame) in
        // delivery::outcome.
        ("Typed::FilterError {", "delivery.rs (1)"),
        // Live sessions and durable consumers run filters through
        // delivery::Pipeline.
        (".run_batch(", "delivery.rs (1)"),
        // A subscription is read by walcast-core's Subscription (URL and
        // first frame) and a client's choice admitted by delivery::admit.
        ("Subscription::from_url(", "http/live.rs (1)"),
        ("Subscription::from_frame(", "live/session.rs (1)"),
        ("Choice::from_url(", "http/selection.rs (1)"),
        ("auth::admit_query(", "delivery.rs (1)"),
    ] {
        let found = places(needle);
        assert!(
            found.len() == 1 && found[0].ends_with(home),
            "{needle} is written in {found:?}, the architecture says {home}"
        );
    }
    // Every frame the proxy writes itself is a frames::Frame: no JSON
    // object with a frame's keys is built anywhere else.
    for (path, text) in &sources {
        if path.ends_with("frames.rs") {
            continue;
        }
        for built in text.split("json!({").skip(1) {
            let head: String = built.chars().take(40).collect();
            for key in ["\"error\"", "\"warning\"", "\"ack\"", "\"type\""] {
                assert!(
                    !head.trim_start().starts_with(key),
                    "{path} builds a frame by hand: json!({{{head}"
                );
            }
        }
    }
}
