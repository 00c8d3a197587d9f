//! Failover readiness (docs/operations.md#failover): slots recorded in
//! `walcast.streams` that this server lacks; on PostgreSQL 17 and newer the
//! walcast slots' `failover` flag and `synchronized_standby_slots`; for each
//! standby the URL names, the settings that make it synchronize slots.

use super::{check, judge, one, Check, Status};
use crate::database::Database;
use crate::sql::SqlPool;
use tokio_postgres::Client;

/// The first major version with failover slots (and slot synchronization).
const FAILOVER_SLOTS_SINCE: i32 = crate::replication::FAILOVER_SLOTS_SINCE as i32;

/// The checks: lost records always; the rest when the URL names several
/// servers or the server has failover slots.
pub async fn checks(client: &Client, config: &Database) -> Vec<Check> {
    let mut out = lost_records(client).await;
    let Ok(r) = one(
        client,
        "SELECT current_setting('server_version_num')::int / 10000, pg_is_in_recovery()",
    )
    .await
    else {
        return out;
    };
    let (major, standby): (i32, bool) = (r.get(0), r.get(1));
    let hosts = config.each_host();
    if hosts.len() < 2 && major < FAILOVER_SLOTS_SINCE {
        return out;
    }
    if standby {
        out.push(check(
            Status::Warn,
            "failover",
            "the server the URL led to is a standby: to decode on the primary, add target_session_attrs=read-write to the URL; to decode on this standby (PostgreSQL 16+), give --primary-url for what must be written on the primary (docs/operations.md#decoding-on-a-standby)",
        ));
    }
    if major < FAILOVER_SLOTS_SINCE {
        out.push(check(
            Status::Warn,
            "failover",
            format!("PostgreSQL {major} has no failover slots: after a failover to a standby the slots are lost, and walcast-proxy reports it and stops (docs/operations.md#failover); PostgreSQL 17 and newer can keep them"),
        ));
    } else if !standby {
        out.push(failover_flags(client).await);
        out.push(standby_slots(client).await);
    }
    if hosts.len() > 1 && major >= FAILOVER_SLOTS_SINCE {
        for (name, db) in hosts {
            if let Some(c) = standby_check(&name, db).await {
                out.push(c);
            }
        }
    }
    out
}

/// Each slot `walcast.streams` records that is not on this server.
async fn lost_records(client: &Client) -> Vec<Check> {
    let Ok(rows) = client
        .query(
            "SELECT s.slot_name::text FROM walcast.streams s WHERE NOT EXISTS \
             (SELECT FROM pg_catalog.pg_replication_slots r WHERE r.slot_name = s.slot_name) \
             ORDER BY 1",
            &[],
        )
        .await
    else {
        // No extension, or not readable: the extension check says so.
        return Vec::new();
    };
    rows.iter()
        .map(|r| {
            let name: String = r.get(0);
            check(
                Status::Warn,
                &format!("slot {name}"),
                "recorded in walcast.streams but not on this server: lost (a failover to a server without it, or dropped outside walcast); walcast does not make it again on its own: start walcast-proxy with --recreate-lost-slot if it is the proxy's, DELETE /v1/streams/<name> if it is a durable stream",
            )
        })
        .collect()
}

/// Whether every walcast slot is a failover slot.
async fn failover_flags(client: &Client) -> Check {
    let item = "failover slots";
    match one(
        client,
        "SELECT count(*)::int, string_agg(slot_name::text, ', ' ORDER BY slot_name) \
         FILTER (WHERE NOT failover) FROM pg_catalog.pg_replication_slots \
         WHERE plugin = 'walcast' AND NOT temporary",
    )
    .await
    {
        Ok(r) => {
            let (n, plain): (i32, Option<String>) = (r.get(0), r.get(1));
            match plain {
                Some(list) => check(
                    Status::Warn,
                    item,
                    format!("not failover slots: {list}; walcast-proxy makes its slots failover slots when it starts (--failover-slots true), or ALTER_REPLICATION_SLOT name (FAILOVER true) on a replication connection"),
                ),
                None => check(Status::Ok, item, format!("{n} walcast slot(s), every one a failover slot")),
            }
        }
        Err(e) => check(Status::Warn, item, e),
    }
}

/// `synchronized_standby_slots` on the primary.
async fn standby_slots(client: &Client) -> Check {
    let item = "synchronized_standby_slots";
    match one(
        client,
        "SELECT current_setting('synchronized_standby_slots'), \
         (SELECT string_agg(slot_name::text, ',' ORDER BY slot_name) \
          FROM pg_catalog.pg_replication_slots WHERE slot_type = 'physical')",
    )
    .await
    {
        Ok(r) => {
            let (value, physical): (String, Option<String>) = (r.get(0), r.get(1));
            let slots = physical.unwrap_or_else(|| "<the standby's physical slot>".to_owned());
            judge(
                !value.is_empty(),
                Status::Warn,
                item,
                value,
                format!("empty: a client may get a change no standby has yet, and after a failover to that standby the change never happened. ALTER SYSTEM SET synchronized_standby_slots = '{slots}'; SELECT pg_reload_conf()"),
            )
        }
        Err(e) => check(Status::Warn, item, e),
    }
}

/// One server of the URL: nothing when it is a primary (checked above);
/// for a standby, the settings it needs to synchronize slots.
async fn standby_check(name: &str, db: Database) -> Option<Check> {
    let item = format!("standby {name}");
    let pool = SqlPool::new(db, 1);
    let client = match pool.get().await {
        Ok(c) => c,
        Err(e) => return Some(check(Status::Warn, &item, format!("cannot connect: {e}"))),
    };
    let r = match one(
        &client,
        "SELECT pg_is_in_recovery(), current_setting('sync_replication_slots'), \
         current_setting('hot_standby_feedback'), current_setting('primary_slot_name'), \
         (SELECT string_agg(slot_name::text, ', ' ORDER BY slot_name) \
          FROM pg_catalog.pg_replication_slots WHERE synced)",
    )
    .await
    {
        Ok(r) => r,
        Err(e) => return Some(check(Status::Warn, &item, e)),
    };
    let (in_recovery, sync, feedback, slot, synced): (
        bool,
        String,
        String,
        String,
        Option<String>,
    ) = (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
    if !in_recovery {
        return None;
    }
    let mut fixes = Vec::new();
    if sync != "on" {
        fixes.push("ALTER SYSTEM SET sync_replication_slots = on".to_owned());
    }
    if feedback != "on" {
        fixes.push("ALTER SYSTEM SET hot_standby_feedback = on".to_owned());
    }
    if slot.is_empty() {
        fixes.push(
            "ALTER SYSTEM SET primary_slot_name = '<its physical slot on the primary>'".to_owned(),
        );
    }
    // Readable by superusers and pg_read_all_settings only.
    match one(
        &client,
        "SELECT current_setting('primary_conninfo') ~ 'dbname='",
    )
    .await
    {
        Ok(r) if !r.get::<_, bool>(0) => {
            fixes.push("add dbname=<the database> to primary_conninfo".to_owned())
        }
        Ok(_) => {}
        Err(e) => fixes.push(format!(
            "check that primary_conninfo names a database (dbname=...): {e}"
        )),
    }
    Some(if fixes.is_empty() {
        check(
            Status::Ok,
            &item,
            format!(
                "synchronizes slots (sync_replication_slots, hot_standby_feedback, primary_slot_name {slot}); synchronized now: {}",
                synced.as_deref().unwrap_or("none")
            ),
        )
    } else {
        check(
            Status::Warn,
            &item,
            format!(
                "does not synchronize slots, so they are lost if it is promoted: {}; then SELECT pg_reload_conf()",
                fixes.join("; ")
            ),
        )
    })
}
