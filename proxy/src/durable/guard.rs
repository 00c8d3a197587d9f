//! Keeping slots from hurting the database: the lag guard watches how much
//! WAL each durable stream slot holds back (reported on `/healthz` and
//! `/metrics`, optionally dropped past `--max-slot-lag`), and the heartbeat
//! writes a small non-transactional message into an idle database so that
//! connected slots keep advancing instead of pinning WAL.

use super::streams::Streams;
use crate::change::HEARTBEAT_PREFIX;
use crate::metrics::{now_ms, Metrics};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Refreshes the per-slot lag every `lag_check_interval` until shutdown.
pub async fn run_lag_guard(streams: Arc<Streams>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(streams.cfg.lag_check_interval);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        if let Err(e) = check_once(&streams).await {
            tracing::warn!(error = %e, "could not check the durable streams' lag");
        }
    }
}

/// Why the durable streams' lag could not be looked at: the streams
/// could not be listed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", .0.message)]
pub struct LagCheckError(pub crate::refusal::Refusal);

/// One look at every durable stream slot.
pub async fn check_once(streams: &Streams) -> Result<(), LagCheckError> {
    let list = streams.list().await.map_err(LagCheckError)?;
    let mut lags = BTreeMap::new();
    for s in &list {
        let lag = s.lag_bytes.unwrap_or(0).max(0) as u64;
        let over = streams.cfg.max_lag.is_some_and(|m| lag > m);
        lags.insert(s.slot.clone(), (lag, over));
        if !over {
            continue;
        }
        let limit = streams.cfg.max_lag.unwrap_or(0);
        let in_use = s.active || streams.has_consumer(&s.slot) || streams.snapshot_held(&s.slot);
        if streams.cfg.drop_lagging && !in_use {
            let reason = format!(
                "it held back {lag} bytes of WAL, over --max-slot-lag {limit}, with no consumer connected and no snapshot being read"
            );
            tracing::warn!(slot = %s.slot, "dropping durable stream: {reason}");
            match streams.delete(&s.slot, &reason).await {
                Ok(()) => {
                    lags.remove(&s.slot);
                    streams
                        .metrics
                        .streams_dropped_for_lag
                        .fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::warn!(slot = %s.slot, error = %e.message, "could not drop the lagging stream")
                }
            }
        } else {
            tracing::warn!(slot = %s.slot, lag, limit, "durable stream holds back more WAL than --max-slot-lag");
        }
    }
    {
        let mut m = crate::locks::lock(&streams.metrics.stream_lag);
        *m = lags;
    }
    Ok(())
}

/// Writes a heartbeat whenever no change arrived for `interval`.
pub async fn run_heartbeat(
    streams: Arc<Streams>,
    metrics: Arc<Metrics>,
    interval: std::time::Duration,
    shutdown: CancellationToken,
) {
    metrics.activity();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.cancelled() => return,
        }
        let idle_ms = now_ms().saturating_sub(metrics.last_activity_ms.load(Ordering::Relaxed));
        if idle_ms < interval.as_millis() as u64 {
            continue;
        }
        let result = match streams.pool.writes().get().await {
            Ok(c) => c
                .execute(
                    "SELECT pg_catalog.pg_logical_emit_message(false, $1, pg_catalog.now()::text)",
                    &[&HEARTBEAT_PREFIX],
                )
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match result {
            Ok(_) => {
                metrics.heartbeats.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => tracing::warn!(error = %e, "could not write a heartbeat"),
        }
    }
}
