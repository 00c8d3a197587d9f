//! Helpers shared by walcast's end-to-end tests: one private cluster per test
//! binary, a fresh database per test, and the two ways of reading a slot —
//! SQL (`pg_logical_slot_get_changes`) and the streaming replication protocol
//! (`pg_recvlogical`).

use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use walcast_cluster::Cluster;

/// The cluster of this test binary, started on first use. A test that needs
/// PostgreSQL fails (never skips) when it cannot start, or when it is not
/// the major `WALCAST_PG_MAJOR` names (set by `scripts/test.sh` for each
/// major it tests, so a misconfigured run cannot test another major).
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let c = match Cluster::start() {
            Ok(c) => c,
            Err(e) => panic!("cannot start a private PostgreSQL cluster: {e:#}"),
        };
        if let Ok(want) = std::env::var("WALCAST_PG_MAJOR") {
            let num = c
                .psql("postgres", "SHOW server_version_num")
                .unwrap_or_else(|e| panic!("reading the server version: {e:#}"));
            let major = num.trim().parse::<u32>().map(|n| n / 10_000).ok();
            assert_eq!(
                major.map(|m| m.to_string()),
                Some(want.clone()),
                "WALCAST_PG_MAJOR is {want} but the cluster runs server_version_num {}",
                num.trim()
            );
        }
        c
    })
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A fresh database with the walcast extension, for one test.
pub struct TestDb {
    pub name: String,
    pub client: postgres::Client,
}

impl TestDb {
    /// Creates `<prefix>_<n>` in the shared cluster.
    pub fn new(prefix: &str) -> TestDb {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!("{prefix}_{}", N.fetch_add(1, Ordering::Relaxed));
        let c = cluster();
        c.create_database(&name)
            .unwrap_or_else(|e| panic!("creating database {name}: {e:#}"));
        let client = postgres::Client::connect(&c.conninfo(&name), postgres::NoTls)
            .unwrap_or_else(|e| panic!("connecting to {name}: {e}"));
        TestDb { name, client }
    }

    /// Runs SQL statements (simple query protocol).
    pub fn exec(&mut self, sql: &str) {
        if let Err(e) = self.client.batch_execute(sql) {
            panic!("SQL failed: {sql}\n{e:?}");
        }
    }

    /// Creates a walcast slot named `<database>_<suffix>` (slot names are
    /// cluster-wide) and returns its name.
    pub fn slot(&mut self, suffix: &str) -> String {
        let name = format!("{}_{suffix}", self.name);
        self.exec(&format!(
            "SELECT pg_create_logical_replication_slot('{name}', 'walcast')"
        ));
        name
    }

    /// Consumes the slot's pending changes through SQL.
    pub fn changes(&mut self, slot: &str, options: &[(&str, &str)]) -> Vec<String> {
        self.try_changes(slot, options)
            .unwrap_or_else(|e| panic!("pg_logical_slot_get_changes: {e:?}"))
    }

    /// Like [`TestDb::changes`], returning the error instead of failing.
    pub fn try_changes(
        &mut self,
        slot: &str,
        options: &[(&str, &str)],
    ) -> Result<Vec<String>, postgres::Error> {
        let mut sql = format!("SELECT data FROM pg_logical_slot_get_changes('{slot}', NULL, NULL");
        let mut params: Vec<&(dyn postgres::types::ToSql + Sync)> = Vec::new();
        for (k, v) in options {
            params.push(k);
            params.push(v);
        }
        for i in 0..options.len() {
            sql.push_str(&format!(", ${}::text, ${}::text", 2 * i + 1, 2 * i + 2));
        }
        sql.push(')');
        let rows = self.client.query(sql.as_str(), &params)?;
        Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
    }

    /// The server's current WAL insert position.
    pub fn current_lsn(&mut self) -> String {
        let row = self
            .client
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .expect("pg_current_wal_lsn");
        row.get(0)
    }

    /// Reads the slot through the streaming protocol with `pg_recvlogical`
    /// until `endpos`, returning one line per change.
    pub fn recvlogical(&self, slot: &str, options: &[(&str, &str)], endpos: &str) -> Vec<String> {
        recvlogical(&self.name, slot, options, endpos)
            .unwrap_or_else(|e| panic!("pg_recvlogical: {e:#}"))
    }
}

/// A `pg_recvlogical --start` command for `slot` in `db` writing to stdout,
/// stopping at `endpos` when one is given.
pub fn recvlogical_command(
    db: &str,
    slot: &str,
    options: &[(&str, &str)],
    endpos: Option<&str>,
) -> Command {
    let c = cluster();
    let mut cmd = Command::new(c.bin("pg_recvlogical"));
    cmd.args([
        "-d",
        &c.conninfo(db),
        "-S",
        slot,
        "--start",
        "--no-loop",
        "-f",
        "-",
        "-F",
        "0",
    ]);
    if let Some(endpos) = endpos {
        cmd.arg(format!("--endpos={endpos}"));
    }
    for (k, v) in options {
        cmd.arg("-o").arg(format!("{k}={v}"));
    }
    cmd
}

/// Runs `pg_recvlogical --start` on `slot` until `endpos`.
pub fn recvlogical(
    db: &str,
    slot: &str,
    options: &[(&str, &str)],
    endpos: &str,
) -> Result<Vec<String>> {
    let mut cmd = recvlogical_command(db, slot, options, Some(endpos));
    let out = cmd.output().context("running pg_recvlogical")?;
    if !out.status.success() {
        bail!(
            "pg_recvlogical failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8(out.stdout).context("pg_recvlogical output is not UTF-8")?;
    Ok(text.lines().map(str::to_owned).collect())
}

/// Replaces run-dependent values of the top-level keys `lsn`, `end_lsn`,
/// `xid`, `top_xid` and `ts` with placeholders so output can be compared with
/// expected files. Nested objects (`columns`, `identity`) are left alone.
pub fn normalize(line: &str) -> String {
    const KEYS: [(&str, &str); 5] = [
        ("lsn", "\"LSN\""),
        ("end_lsn", "\"LSN\""),
        ("ts", "\"TS\""),
        ("xid", "XID"),
        ("top_xid", "XID"),
    ];
    let b = line.as_bytes();
    let mut out = String::with_capacity(line.len());
    let (mut i, mut depth) = (0usize, 0i32);
    while i < b.len() {
        match b[i] {
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth -= 1,
            b'"' => {
                let end = string_end(b, i);
                let s = &line[i..end];
                out.push_str(s);
                i = end;
                if depth == 1 && b.get(i) == Some(&b':') {
                    if let Some((_, placeholder)) =
                        KEYS.iter().find(|(k, _)| s[1..s.len() - 1] == **k)
                    {
                        out.push(':');
                        i += 1;
                        let vend = if b.get(i) == Some(&b'"') {
                            string_end(b, i)
                        } else {
                            i + line[i..].find([',', '}']).unwrap_or(line.len() - i)
                        };
                        if &line[i..vend] == "null" {
                            out.push_str("null");
                        } else {
                            out.push_str(placeholder);
                        }
                        i = vend;
                    }
                }
                continue;
            }
            _ => {}
        }
        out.push(b[i] as char);
        i += 1;
    }
    out
}

/// The index just past the JSON string starting at `start` (a `"`).
fn string_end(b: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    b.len()
}

/// Parses a line of plugin output as JSON, failing the test when it is not.
pub fn json(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn normalize_replaces_only_keys() {
        assert_eq!(
            normalize(
                r#"{"action":"C","xid":740,"lsn":"0/16B3748","ts":"2026-01-01T00:00:00.000000+00:00","end_lsn":"1/2"}"#
            ),
            r#"{"action":"C","xid":XID,"lsn":"LSN","ts":"TS","end_lsn":"LSN"}"#
        );
        let s = r#"{"action":"I","ts":null,"columns":{"ts":"2026","t":"\"lsn\":\"x","xid":5}}"#;
        assert_eq!(normalize(s), s);
        assert_eq!(normalize(r#"{"a":"é","xid":7}"#), r#"{"a":"é","xid":XID}"#);
    }
}
