//! `walcast-proxy doctor`: checks that a database can be streamed
//! (wal_level, privileges, free slots and senders, the plugin installed and
//! allowed, the extension, failover readiness) and says what to fix.

mod failover;

use crate::replication::ReplicationClient;
use crate::sql::SqlPool;
use std::time::Duration;
use tokio_postgres::{Client, Row};

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// Works, but worth changing.
    Warn,
    /// Streaming will not work until this is fixed.
    Fix,
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Check {
    pub status: Status,
    pub item: String,
    pub detail: String,
}

fn check(status: Status, item: &str, detail: impl Into<String>) -> Check {
    Check {
        status,
        item: item.to_owned(),
        detail: detail.into(),
    }
}

/// `Ok` with `ok` when `good`, otherwise `bad` with `advice`.
fn judge(
    good: bool,
    bad: Status,
    item: &str,
    ok: impl Into<String>,
    advice: impl Into<String>,
) -> Check {
    if good {
        check(Status::Ok, item, ok)
    } else {
        check(bad, item, advice)
    }
}

/// Runs every check against `config`.
pub async fn run(config: &crate::database::Database) -> Vec<Check> {
    let pool = SqlPool::new(config.clone(), 1);
    let client = match pool.get().await {
        Ok(c) => c,
        Err(e) => {
            return vec![check(
                Status::Fix,
                "connection",
                format!(
                    "{e}; check the URL (host, port, user, password, database) and pg_hba.conf"
                ),
            )]
        }
    };
    let mut out = server(&client).await;
    out.push(wal_level(&client).await);
    out.push(privilege(&client).await);
    out.extend(capacity(&client).await);
    out.extend(plugin_allowed(&client).await);
    out.push(plugin_check(config).await);
    out.push(extension(&client).await);
    out.push(keep_size(&client).await);
    out.extend(slots(&client).await);
    out.extend(failover::checks(&client, config).await);
    out
}

/// One row of `sql`, or the server's message.
async fn one(client: &Client, sql: &str) -> Result<Row, String> {
    client.query_one(sql, &[]).await.map_err(|e| {
        e.as_db_error()
            .map(|d| d.message().to_owned())
            .unwrap_or_else(|| e.to_string())
    })
}

/// Who is connected to what, the server's version and the encoding.
async fn server(client: &Client) -> Vec<Check> {
    let r = match one(
        client,
        "SELECT current_setting('server_version_num')::int, current_setting('server_version'), \
             current_user::text, current_database()::text, pg_encoding_to_char(encoding)::text \
             FROM pg_database WHERE datname = current_database()",
    )
    .await
    {
        Ok(r) => r,
        Err(e) => return vec![check(Status::Fix, "connection", e)],
    };
    let (num, version, user, db, enc): (i32, String, String, String, String) =
        (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
    let too_old = format!("{version}: walcast needs PostgreSQL 13 or later");
    let not_utf8 = format!("{enc}: walcast streams UTF8 databases only (JSON is UTF-8)");
    vec![
        check(
            Status::Ok,
            "connection",
            format!("{user}@{db}, PostgreSQL {version}"),
        ),
        judge(
            num >= 130000,
            Status::Fix,
            "server version",
            version,
            too_old,
        ),
        judge(
            enc == "UTF8",
            Status::Fix,
            "database encoding",
            enc,
            not_utf8,
        ),
    ]
}

async fn wal_level(client: &Client) -> Check {
    match one(client, "SELECT current_setting('wal_level')").await {
        Ok(r) => {
            let v: String = r.get(0);
            let advice =
                format!("{v}: run ALTER SYSTEM SET wal_level = logical; and restart PostgreSQL");
            judge(v == "logical", Status::Fix, "wal_level", v, advice)
        }
        Err(e) => check(Status::Fix, "wal_level", e),
    }
}

async fn privilege(client: &Client) -> Check {
    match one(client, "SELECT rolsuper OR rolreplication FROM pg_roles WHERE rolname = current_user").await {
        Ok(r) if r.get::<_, bool>(0) => check(Status::Ok, "replication privilege", "yes"),
        Ok(_) => check(
            Status::Fix,
            "replication privilege",
            "this role cannot stream: run ALTER ROLE <role> REPLICATION; as a superuser (and allow it a replication line in pg_hba.conf)",
        ),
        Err(e) => check(Status::Fix, "replication privilege", e),
    }
}

/// Free replication slots and WAL senders.
async fn capacity(client: &Client) -> Vec<Check> {
    let r = match one(
        client,
        "SELECT current_setting('max_replication_slots')::int, \
             (SELECT count(*)::int FROM pg_replication_slots), \
             current_setting('max_wal_senders')::int, \
             (SELECT count(*)::int FROM pg_stat_replication)",
    )
    .await
    {
        Ok(r) => r,
        Err(e) => return vec![check(Status::Fix, "replication slots", e)],
    };
    let (slots, used, senders, busy): (i32, i32, i32, i32) =
        (r.get(0), r.get(1), r.get(2), r.get(3));
    vec![
        judge(
            used < slots,
            Status::Fix,
            "replication slots",
            format!("{} of {slots} free", slots - used),
            format!(
                "all {slots} in use: drop unused slots or raise max_replication_slots (restart)"
            ),
        ),
        judge(
            busy < senders,
            Status::Fix,
            "WAL senders",
            format!("{} of {senders} free", senders - busy),
            format!("all {senders} busy: raise max_wal_senders (restart)"),
        ),
    ]
}

/// `output_plugin_libraries`, on servers that have it.
async fn plugin_allowed(client: &Client) -> Option<Check> {
    let r = one(
        client,
        "SELECT setting FROM pg_settings WHERE name = 'output_plugin_libraries' \
                      UNION ALL SELECT NULL LIMIT 1",
    )
    .await
    .ok()?;
    let v = r.get::<_, Option<String>>(0)?;
    let allowed = v
        .split(',')
        .any(|p| p.trim().trim_matches('"') == "walcast");
    let advice = format!("{v}: walcast is not allowed; run ALTER SYSTEM SET output_plugin_libraries = 'pgoutput', 'test_decoding', 'walcast'; then restart");
    Some(judge(
        allowed,
        Status::Fix,
        "output_plugin_libraries",
        v,
        advice,
    ))
}

async fn extension(client: &Client) -> Check {
    match one(client, "SELECT count(*)::int FROM pg_extension WHERE extname = 'walcast'").await {
        Ok(r) if r.get::<_, i32>(0) == 1 => check(Status::Ok, "extension", "walcast is installed in this database"),
        Ok(_) => check(
            Status::Warn,
            "extension",
            "not installed in this database: streaming works, but DDL capture, walcast.doctor() and per-stream table lists need CREATE EXTENSION walcast",
        ),
        Err(e) => check(Status::Warn, "extension", e),
    }
}

async fn keep_size(client: &Client) -> Check {
    match one(client, "SELECT current_setting('max_slot_wal_keep_size')").await {
        Ok(r) => {
            let v: String = r.get(0);
            judge(
                v != "-1",
                Status::Warn,
                "max_slot_wal_keep_size",
                v,
                "unlimited: a slot nobody reads keeps all WAL; consider ALTER SYSTEM SET max_slot_wal_keep_size = '10GB'",
            )
        }
        Err(e) => check(Status::Warn, "max_slot_wal_keep_size", e),
    }
}

/// Each walcast slot: one nobody reads that holds much WAL is worth a look.
async fn slots(client: &Client) -> Vec<Check> {
    let Ok(rows) = client
        .query(
            "WITH here AS (SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() \
             ELSE pg_current_wal_lsn() END AS lsn) \
             SELECT slot_name::text, active, \
             pg_size_pretty(pg_wal_lsn_diff(here.lsn, restart_lsn)), \
             pg_wal_lsn_diff(here.lsn, restart_lsn) > 1073741824 \
             FROM pg_replication_slots, here WHERE plugin = 'walcast' AND restart_lsn IS NOT NULL \
             ORDER BY slot_name",
            &[],
        )
        .await
    else {
        return Vec::new();
    };
    rows.iter()
        .map(|r| {
            let (name, active, behind, far): (String, bool, String, bool) =
                (r.get(0), r.get(1), r.get(2), r.get(3));
            let state = if active { "active" } else { "inactive" };
            judge(
                active || !far,
                Status::Warn,
                &format!("slot {name}"),
                format!("{state}, {behind} behind"),
                format!("inactive and holding {behind} of WAL: resume its consumer or drop it"),
            )
        })
        .collect()
}

/// Creates (and drops, by disconnecting) a temporary walcast slot: proves
/// the plugin is installed and allowed and the role may use it.
async fn plugin_check(config: &crate::database::Database) -> Check {
    let name = format!("walcast_doctor_{}", std::process::id());
    let attempt = async {
        let mut c = ReplicationClient::connect(config).await?;
        c.create_slot(&name, true, false, false).await
    };
    match tokio::time::timeout(Duration::from_secs(15), attempt).await {
        Ok(Ok(_)) => check(Status::Ok, "walcast plugin", "a temporary walcast slot was created and dropped"),
        Ok(Err(e)) => check(Status::Fix, "walcast plugin", format!("cannot create a walcast slot: {e}")),
        Err(_) => check(
            Status::Warn,
            "walcast plugin",
            "creating a test slot took over 15 s: PostgreSQL waits for running transactions to end before a slot is ready",
        ),
    }
}

/// The descriptor limit, raised as `serve` raises it, against the
/// connections it must serve (`--max-connections`, or what the limit leaves
/// room for) and `--max-clients`.
pub fn descriptors_check(max_connections: Option<usize>, max_clients: usize) -> Check {
    let item = "descriptor limit";
    let limit = match crate::descriptors::raise() {
        Ok(l) => l,
        Err(e) => return check(Status::Warn, item, format!("cannot read it: {e}")),
    };
    let room = crate::descriptors::connections_for(limit.soft);
    let max_connections = max_connections.unwrap_or(room);
    if let Some(why) = crate::descriptors::too_low(&limit, max_connections, max_clients) {
        return check(Status::Warn, item, why);
    }
    if max_connections > room {
        return check(
            Status::Warn,
            item,
            format!(
                "{} open files leave room for {room} connections, fewer than --max-connections ({max_connections}): raise the limit",
                limit.soft
            ),
        );
    }
    check(
        Status::Ok,
        item,
        format!(
            "{} open files (hard limit {}): room for {room} connections, --max-clients is {max_clients}",
            limit.soft, limit.hard
        ),
    )
}

/// The report as text, and whether nothing needs fixing.
pub fn render(checks: &[Check]) -> (String, bool) {
    let mut s = String::new();
    for c in checks {
        let tag = match c.status {
            Status::Ok => "ok  ",
            Status::Warn => "warn",
            Status::Fix => "FIX ",
        };
        s.push_str(&format!("{tag}  {}: {}\n", c.item, c.detail));
    }
    let fixes = checks.iter().filter(|c| c.status == Status::Fix).count();
    if fixes == 0 {
        s.push_str("walcast can stream this database.\n");
    } else {
        s.push_str(&format!(
            "{fixes} problem(s) to fix before walcast can stream this database.\n"
        ));
    }
    (s, fixes == 0)
}
