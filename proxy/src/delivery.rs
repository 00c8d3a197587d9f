//! What a client receives, one rule for both paths: which changes a
//! subscription selects (its query and the user's row rules), and what its
//! WASM filter makes of each selected change.
//!
//! ```text
//! change -> selects()         query + the user's rules (the live hub applies
//!                             the query part through its index, see live/hub.rs)
//!        -> Pipeline::judge   the client's filter, if any, on a batch: send,
//!                             skip, an error frame, or detach the filter and close
//! ```
//!
//! `--tables` is applied before either, by the plugin (`add-tables`); a
//! durable stream on an edge checks it again in `durable/consumer.rs`.

use crate::auth::Rules;
use crate::change::Change;
use crate::filter::{Decision, ErrorCode, FilterInstance, Filters};
use crate::frames::{Frame, Typed};
use crate::metrics::Metrics;
use crate::query::Query;
use crate::refusal::{Kind, Refusal};
use std::borrow::Borrow;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// Whether a subscription gets `change` before its filter runs: a row
/// change when its query (if any) matches and the user's rules (if they
/// limit reads) admit it; a message or DDL only when neither narrows the
/// subscription, as they are not rows a query or a rule could judge.
/// Transaction boundaries and the proxy's own messages are the caller's.
pub fn selects(query: Option<&Query>, limits: Option<&Rules>, change: &Change) -> bool {
    if change.row_action().is_none() {
        return query.is_none() && limits.is_none_or(|l| !l.limits_reads());
    }
    limits.is_none_or(|l| l.admits(change)) && query.is_none_or(|q| change.matched_by(q))
}

/// What a change becomes for one client.
pub enum Outcome {
    Send(Utf8Bytes),
    Skip,
    /// A filter error frame, then go on.
    Report(String),
    /// A filter error frame, then close 1008 with the reason.
    Detach(String, String),
}

/// One subscription's run of its WASM filter, the same for a live session
/// and a durable consumer: the pause its budget owes, its decisions on a
/// batch of selected changes in order (one `walcast_filter_batch` call
/// where the module has it), and what each change becomes. Without a
/// filter every change is sent as it is.
pub struct Pipeline {
    filter: Option<FilterInstance>,
    /// Whether the filter's time counts against its budget per second: a
    /// live session's filter shares the proxy with every client; a durable
    /// stream's slows only its own stream.
    clocked: bool,
    /// Reused from batch to batch; empty until a filter runs.
    decisions: Vec<Decision>,
    metrics: Arc<Metrics>,
}

impl Pipeline {
    /// For a live session.
    pub fn live(filter: Option<FilterInstance>, metrics: Arc<Metrics>) -> Pipeline {
        Pipeline {
            filter,
            clocked: true,
            decisions: Vec::new(),
            metrics,
        }
    }

    /// For a durable stream's consumer.
    pub fn durable(filter: Option<FilterInstance>, metrics: Arc<Metrics>) -> Pipeline {
        Pipeline {
            clocked: false,
            ..Pipeline::live(filter, metrics)
        }
    }

    /// The pause the filter owes before its next batch when it used its
    /// time or fuel for the second, counted in
    /// `walcast_filter_budget_waits_total`; `None`: go on.
    #[inline]
    pub fn pause(&mut self) -> Option<std::time::Duration> {
        let wait = self.filter.as_mut()?.budget_wait()?;
        let metrics = &self.metrics;
        metrics.filter_budget_waits.fetch_add(1, Ordering::Relaxed);
        Some(wait)
    }

    /// What each of `changes` (selected for the client, in order) becomes
    /// through the filter; `None` without a filter: every change is sent as
    /// it is (the caller writes its text, which costs no more than that).
    /// After a detach the batch ends: the changes after it get nothing.
    #[inline]
    pub fn judge<'a, C: Borrow<Change>>(&'a mut self, changes: &'a [C]) -> Option<Outcomes<'a, C>> {
        let f = self.filter.as_mut()?;
        f.run_batch(changes, &mut self.decisions, self.clocked);
        Some(Outcomes {
            judged: self.decisions.drain(..).zip(changes.iter()),
            metrics: &self.metrics,
        })
    }
}

/// What a batch's changes become through the filter, in order
/// ([`Pipeline::judge`]).
pub struct Outcomes<'a, C> {
    judged: std::iter::Zip<std::vec::Drain<'a, Decision>, std::slice::Iter<'a, C>>,
    metrics: &'a Metrics,
}

impl<C: Borrow<Change>> Iterator for Outcomes<'_, C> {
    type Item = Outcome;

    #[inline]
    fn next(&mut self) -> Option<Outcome> {
        let (decision, change) = self.judged.next()?;
        Some(outcome(change.borrow(), decision, self.metrics))
    }
}

/// What the filter's decision on `change` makes of it.
fn outcome(change: &Change, decision: Decision, metrics: &Metrics) -> Outcome {
    metrics.filter_events.fetch_add(1, Ordering::Relaxed);
    let frame = |code: &str, message: &str| {
        Frame::Typed(Typed::FilterError {
            code,
            message,
            lsn: change.lsn.to_string(),
            pos: change.pos.map(|p| p.to_string()),
        })
        .text()
    };
    match decision {
        Decision::Drop => Outcome::Skip,
        Decision::Keep => Outcome::Send(change.text.clone()),
        Decision::Replace(out) => match String::from_utf8(out) {
            Ok(s) => Outcome::Send(s.into()),
            Err(_) => Outcome::Skip,
        },
        Decision::Failed(e) => {
            metrics.filter_errors.fetch_add(1, Ordering::Relaxed);
            Outcome::Report(frame(e.code.as_str(), &e.message))
        }
        Decision::Detached(e) => {
            metrics.filter_errors.fetch_add(1, Ordering::Relaxed);
            metrics.filters_detached.fetch_add(1, Ordering::Relaxed);
            Outcome::Detach(frame(e.code.as_str(), &e.message), e.message)
        }
    }
}

/// A client's choice as it may have it: its query's table exists and
/// `--tables` and the user's rules allow it (the query narrowed by the
/// rules, `auth::admit_query`), and its filter is instantiated. Live
/// subscriptions (URL or first frame) and durable streams' connections are
/// admitted here.
pub async fn admit(
    catalog: &crate::catalog::Catalog,
    tables: Option<&[walcast_format::TablePattern]>,
    grant: &crate::auth::Grant,
    filters: &Filters,
    choice: walcast_core::requests::Choice,
) -> Result<Admitted, Refusal> {
    let query = match choice.query {
        None => None,
        Some(q) => Some(
            crate::auth::admit_query(catalog, tables, grant, q)
                .await
                .map_err(|e| crate::auth::refusal(&e))?,
        ),
    };
    let filter = choice
        .filter
        .map(|f| open_filter(filters, &f.id, f.config))
        .transpose()?;
    Ok(Admitted { query, filter })
}

/// An admitted choice.
pub struct Admitted {
    pub query: Option<Query>,
    pub filter: Option<FilterInstance>,
}

/// Opens a filter for a subscription; the error (404 `FILTER_NOT_FOUND`,
/// 503 `INSTANTIATE_FAILED`, else 400 with the filter's code) when the id
/// is unknown or the module cannot start with this config.
fn open_filter(filters: &Filters, id: &str, config: Vec<u8>) -> Result<FilterInstance, Refusal> {
    let module = filters.get(id).ok_or_else(|| {
        Refusal::new(
            Kind::NotFound,
            format!("no filter {id:?} on this proxy: upload it with POST /v1/filters"),
        )
        .code("FILTER_NOT_FOUND")
    })?;
    FilterInstance::new(filters, module, config).map_err(|e| {
        let status = match e.code {
            ErrorCode::Instantiate => Kind::Unavailable,
            _ => Kind::Invalid,
        };
        Refusal::new(status, e.message).code(e.code.as_str())
    })
}
