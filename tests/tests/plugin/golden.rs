//! Golden tests in the spirit of pg_regress: each `sql/tests/<name>.sql` runs
//! in a fresh database with two walcast slots; the changes read through SQL
//! (`pg_logical_slot_get_changes`) must equal `sql/expected/<name>.out`
//! (with lsn, xid and ts normalised), and the changes read through the
//! streaming protocol (`pg_recvlogical`) must equal those read through SQL.
//!
//! The first line of a script starting `-- options:` lists the plugin options
//! as `name=value` words. Set `WALCAST_BLESS=1` to write the expected files
//! from the actual output (then review the diff).

use std::fs;
use std::process::Command;
use walcast_tests::{cluster, json, normalize, repo_root, TestDb};

fn options_of(script: &str) -> Vec<(String, String)> {
    script
        .lines()
        .find_map(|l| l.strip_prefix("-- options:"))
        .map(|rest| {
            rest.split_whitespace()
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, "on"));
                    (k.to_owned(), v.to_owned())
                })
                .collect()
        })
        .unwrap_or_default()
}

fn run_golden(name: &str) {
    let root = repo_root();
    let script_path = root.join("sql/tests").join(format!("{name}.sql"));
    let expected_path = root.join("sql/expected").join(format!("{name}.out"));
    let script = fs::read_to_string(&script_path).expect("reading the golden script");
    let opts = options_of(&script);
    let opts: Vec<(&str, &str)> = opts.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();

    let mut db = TestDb::new(&format!("golden_{name}"));
    let slot_sql = db.slot("sql");
    let slot_stream = db.slot("stream");
    let c = cluster();
    let out = Command::new(c.bin("psql"))
        .args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            &c.conninfo(&db.name),
            "-f",
        ])
        .arg(&script_path)
        .output()
        .expect("running psql");
    assert!(
        out.status.success(),
        "{name}.sql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let endpos = db.current_lsn();

    let via_sql: Vec<String> = db.changes(&slot_sql, &opts);
    for line in &via_sql {
        json(line);
    }
    let actual: Vec<String> = via_sql.iter().map(|l| normalize(l)).collect();
    let actual_text = actual.join("\n") + "\n";
    if std::env::var_os("WALCAST_BLESS").is_some() {
        fs::write(&expected_path, &actual_text).expect("writing the expected file");
    }
    let expected = fs::read_to_string(&expected_path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with WALCAST_BLESS=1 to create it)",
            expected_path.display()
        )
    });
    if expected != actual_text {
        let dir = root.join("target/golden-actual");
        let _ = fs::create_dir_all(&dir);
        let _ = fs::write(dir.join(format!("{name}.out")), &actual_text);
        let diff = Command::new("diff")
            .args(["-u"])
            .arg(&expected_path)
            .arg(dir.join(format!("{name}.out")))
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        panic!(
            "golden output of {name} differs from {}:\n{diff}",
            expected_path.display()
        );
    }

    let via_stream = db.recvlogical(&slot_stream, &opts, &endpos);
    assert_eq!(
        via_stream, via_sql,
        "{name}: the streaming protocol and SQL disagree"
    );
}

macro_rules! golden {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                run_golden(stringify!($name));
            }
        )*

        #[test]
        fn every_golden_script_is_run() {
            let listed = [$(stringify!($name)),*];
            let dir = repo_root().join("sql/tests");
            for entry in fs::read_dir(&dir).expect("listing sql/tests") {
                let path = entry.expect("reading sql/tests").path();
                if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
                    assert!(listed.contains(&stem), "sql/tests/{stem}.sql is not listed in tests/tests/plugin/golden.rs");
                }
            }
        }
    };
}

golden!(basic, identity, types, truncate, messages, ddl, filters, quoting, partitions);
