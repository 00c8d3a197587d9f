//! One websocket client's loop: receive its subscription, read the change
//! log through its cursor and forward what it gets as text frames (the
//! plugin's bytes unchanged), ping the client, and close with a code and
//! reason when it falls out of the log, stops reading (liveness.rs), the
//! stream stops or the server shuts down.

use crate::auth;
use crate::backfill::{self, Event};
use crate::delivery::{self, Outcome, Pipeline};
use crate::filter::{FilterInstance, Filters, BATCH_EVENTS};
use crate::frames::{self, Frame};
use crate::live::cursor::{Cursor, Stop};
use crate::live::hub::{Hub, SubscribeError};
use crate::live::subscription;
use crate::live::view::{Step, View};
use crate::liveness::{Dead, Due, Liveness, Watch};
use crate::log::Entry;
use crate::metrics::{CloseReason, Gauge, Metrics};
use crate::query;
use crate::refusal::Refusal;
use crate::ws::{close, Opened, Ws};
use futures_util::{SinkExt, StreamExt};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use walcast_core::requests::{Subscription, SubscriptionError};

/// Frames written before each flush when a client has a backlog.
const MAX_BATCH: usize = 512;

async fn error_frame(ws: &mut Ws, err: &query::QueryError) {
    let frame = Frame::Error(frames::Error {
        position: Some(err.position),
        ..frames::Error::new(&err.message)
    });
    let _ = ws.send(Message::Text(frame.text().into())).await;
}

/// Reads the client's first text frame, its subscription
/// (`walcast_core::requests::Subscription::from_frame`).
async fn first_frame(ws: &mut Ws, ctx: &Context) -> Result<Subscription, String> {
    let within = ctx.liveness.handshake_timeout;
    let Ok(msg) = tokio::time::timeout(within, ws.next()).await else {
        ctx.metrics
            .connections
            .timed_out_handshake
            .fetch_add(1, Ordering::Relaxed);
        return Err(format!(
            "no subscription within {} s: send {{\"subscribe\":{{\"query\":\"...\"}}}} first",
            within.as_secs_f64()
        ));
    };
    let text = match msg {
        Some(Ok(Message::Text(t))) => t,
        _ => return Err("expected a text frame {\"subscribe\":{\"query\":\"...\"}}".into()),
    };
    match Subscription::from_frame(text.as_str()) {
        Ok(sub) => Ok(sub),
        Err(SubscriptionError::Query(e)) => {
            error_frame(ws, &e).await;
            Err(format!("invalid query: {e}"))
        }
        Err(e) => Err(e.to_string()),
    }
}

/// How a session starts: subscribed before the upgrade was answered (URL
/// parameters), or waiting for the client's first frame.
pub enum Start {
    Ready(Box<Cursor>, Option<Box<FilterInstance>>),
    FirstFrame,
}

/// What every session shares.
#[derive(Clone)]
pub struct Context {
    pub hub: Hub,
    pub filters: Arc<Filters>,
    pub metrics: Arc<Metrics>,
    pub liveness: Liveness,
    pub shutdown: CancellationToken,
    /// For first-frame queries: does the table exist, may the client have it.
    pub catalog: crate::catalog::Catalog,
    pub tables: Option<Arc<Vec<walcast_format::TablePattern>>>,
    /// Backfills' turns, rate and settings.
    pub backfills: Arc<backfill::driver::Shared>,
    /// Rows one client's view may hold (`--view-max-rows`).
    pub view_max_rows: usize,
}

impl Context {
    /// What a subscription is admitted against.
    pub fn admission(&self) -> subscription::Admission<'_> {
        subscription::Admission {
            catalog: &self.catalog,
            tables: self.tables.as_deref().map(|t| t.as_slice()),
            filters: &self.filters,
        }
    }
}

/// The error as a frame, then a close (1008) with its message.
async fn error_close(ws: &mut Ws, e: Refusal) {
    let _ = ws.send(Message::Text(e.body().to_string().into())).await;
    close(ws, CloseCode::Policy, &e.message).await;
}

/// The error frame and close of a subscription the hub refused.
async fn refused(ws: &mut Ws, err: SubscribeError) {
    match err {
        SubscribeError::Gone { oldest, reason } => {
            let _ = ws
                .send(Message::Text(
                    frames::position_gone(oldest, reason.as_deref()).into(),
                ))
                .await;
            close(ws, CloseCode::Policy, "position no longer held: re-sync").await;
        }
        SubscribeError::NotReady => {
            error_close(ws, Refusal::unavailable(NOT_READY).code("NOT_READY")).await
        }
        SubscribeError::Closed(reason) => close(ws, CloseCode::Error, &reason).await,
    }
}

/// Why a subscription cannot start before the stream has.
pub const NOT_READY: &str = "the change stream has not started yet; retry in a moment";

/// How a session ended.
enum End {
    /// The client left, or its connection failed.
    Gone,
    /// Close with this code and reason.
    Close(CloseCode, String),
    /// The client took nothing for the stall timeout while a write waited.
    Stalled,
    /// The client neither answered a ping nor read for a ping interval.
    Silent,
    /// The client's token expired and no new one came.
    Expired,
}

impl From<Dead> for End {
    fn from(d: Dead) -> End {
        match d {
            Dead::Gone => End::Gone,
            Dead::Stalled => End::Stalled,
            Dead::Silent => End::Silent,
        }
    }
}

/// Runs a websocket write while the client keeps taking bytes (liveness.rs).
async fn within<F>(watch: &Watch, write: F) -> Result<(), End>
where
    F: std::future::Future<Output = Result<(), tokio_tungstenite::tungstenite::Error>>,
{
    watch.write(write).await.map_err(End::from)
}

/// Serves one client until it leaves, is disconnected or the server stops.
///
/// With [`Start::Ready`] the cursor was made before the upgrade was
/// answered (query in the URL), so no change committed after the client saw
/// the upgrade is missed; otherwise the client's first frame names the
/// query, the filter and where to resume.
pub(crate) async fn run(
    open: Opened,
    start: Start,
    ctx: Context,
    mut access: auth::Access,
    plan: Option<backfill::driver::Plan>,
) {
    // The slot is held until the session ends; the handshake until the
    // subscription is made.
    let Opened {
        mut ws,
        socket,
        places: _places,
        handshake,
    } = open;
    let (cursor, filter, plan) = match start {
        Start::Ready(c, f) => (*c, f.map(|f| *f), plan),
        Start::FirstFrame => match Box::pin(subscribe_first(&mut ws, &ctx, &access)).await {
            Some(subscribed) => subscribed,
            None => return,
        },
    };
    drop(handshake);
    let view = match Box::pin(view_for(&cursor, &ctx)).await {
        Ok(v) => v,
        Err(reason) => {
            Box::pin(close(&mut ws, CloseCode::Error, &reason)).await;
            return;
        }
    };
    // The backfill starts after the cursor: its rows land after what the
    // cursor reads. It ends with the session (the task is aborted).
    let events = plan.map(|plan| {
        backfill::driver::spawn(
            ctx.hub.windows(),
            ctx.catalog.pool().clone(),
            ctx.backfills.clone(),
            plan,
            ctx.metrics.clone(),
        )
    });
    let _client = Gauge::up(&ctx.metrics.clients);
    // The helpers above and below are boxed: a waiting client's task holds
    // only the state of the loop it is in (10,000 idle clients: docs/benchmarks.md).
    let mut watch = Watch::new(ctx.liveness, socket);
    let end = serve(
        &mut ws,
        cursor,
        Decide {
            pipeline: Pipeline::live(filter, ctx.metrics.clone()),
            view,
        },
        &ctx,
        &mut access,
        events,
        &mut watch,
    )
    .await;
    Box::pin(finish(&mut ws, end, &watch, &ctx.metrics)).await;
}

/// A subscription from the client's first frame, admitted
/// (`subscription.rs`) and subscribed. `None` when it was refused (the
/// client has the error and the close).
async fn subscribe_first(
    ws: &mut Ws,
    ctx: &Context,
    access: &auth::Access,
) -> Option<(
    Cursor,
    Option<FilterInstance>,
    Option<backfill::driver::Plan>,
)> {
    let sub = match first_frame(ws, ctx).await {
        Ok(sub) => sub,
        Err(reason) => {
            close(ws, CloseCode::Policy, &reason).await;
            return None;
        }
    };
    let admitted = match subscription::admit(ctx.admission(), access.grant(), sub).await {
        Ok(s) => s,
        Err(e) => {
            error_close(ws, e).await;
            return None;
        }
    };
    match ctx.hub.subscribe(admitted.query, admitted.after) {
        Ok(c) => Some((c, admitted.filter, admitted.plan)),
        Err(e) => {
            refused(ws, e).await;
            None
        }
    }
}

/// Closes the websocket as `end` says, counting why the server closed it.
async fn finish(ws: &mut Ws, end: End, watch: &Watch, metrics: &Metrics) {
    match end {
        End::Gone => {}
        End::Close(code, reason) => close(ws, code, &reason).await,
        End::Expired => {
            metrics.count_close(CloseReason::TokenExpired);
            close(ws, CloseCode::Policy, "token expired").await;
        }
        End::Stalled => {
            metrics.count_close(CloseReason::Stalled);
            let reason = format!("{}; reconnect with after", watch.stalled_reason());
            close(ws, CloseCode::Again, &reason).await;
        }
        End::Silent => {
            metrics.count_close(CloseReason::PingTimeout);
            close(ws, CloseCode::Away, &watch.silent_reason()).await;
        }
    }
}

/// The view of a subscription whose group lists unmatched changes (a query
/// with row filters, see `view.rs`): the table's key from the catalog.
/// `None` for other subscriptions, and for a table whose rows have no key
/// (docs/proxy.md#live-views says what such a client misses).
async fn view_for(cursor: &Cursor, ctx: &Context) -> Result<Option<View>, String> {
    let Some(q) = &cursor.group().query else {
        return Ok(None);
    };
    use crate::query::RowAction;
    if !(q.may_leave(RowAction::Update) || q.may_leave(RowAction::Delete)) {
        return Ok(None);
    }
    let key = ctx
        .catalog
        .replica_key(q.table.schema.as_deref(), &q.table.name)
        .await
        .map_err(|e| format!("cannot read the table's key for the live view: {e}"))?;
    Ok(key.map(|k| View::new(k, ctx.view_max_rows, ctx.metrics.view_rows.clone())))
}

/// Waits for a backfill's next event; never, without a backfill.
async fn next_event(events: &mut Option<backfill::driver::Handle>) -> Option<Event> {
    match events {
        Some(h) => h.events.recv().await,
        None => std::future::pending().await,
    }
}

/// What a session decides its frames with: the client's filter (through
/// the delivery pipeline) and view.
struct Decide {
    pipeline: Pipeline,
    view: Option<View>,
}

impl Decide {
    fn judge<'a>(&'a mut self, metrics: &'a Metrics) -> Judge<'a> {
        Judge {
            pipeline: &mut self.pipeline,
            view: self.view.as_mut(),
            metrics,
        }
    }
}

/// Where the burst may be written up to.
enum Placement {
    /// All of it, or up to the place of a backfill chunk not read yet.
    Upto(usize),
    /// Its first entries, then the chunk read for this place.
    Chunk(usize),
}

/// A backfill's chunk goes where its high watermark is: after the entries
/// before it, before the ones after it. Until its rows are here, nothing
/// after it is sent.
fn placement(
    events: Option<&backfill::driver::Handle>,
    pending: Option<&backfill::Ready>,
    burst: &[Entry],
    cursor: &Cursor,
) -> Placement {
    let Some(place) = events.and_then(|h| h.places.next()) else {
        return Placement::Upto(burst.len());
    };
    let cut = burst.partition_point(|e| e.pos < place.pos);
    let due = cut < burst.len() || cursor.next_seq() >= place.seq;
    match pending {
        Some(ready) if due => {
            debug_assert_eq!(ready.chunk, place.chunk);
            Placement::Chunk(cut)
        }
        _ => Placement::Upto(cut),
    }
}

async fn serve(
    ws: &mut Ws,
    mut cursor: Cursor,
    decide: Decide,
    ctx: &Context,
    access: &mut auth::Access,
    mut events: Option<backfill::driver::Handle>,
    watch: &mut Watch,
) -> End {
    let mut decide = decide;
    let metrics = &ctx.metrics;
    let shutdown = ctx.shutdown.clone();
    // Grown by the bursts that come, not reserved up front: idle clients
    // cost nothing.
    let mut burst: Vec<Entry> = Vec::new();
    // A backfill's chunk waiting for its place in the stream.
    let mut pending: Option<backfill::Ready> = None;
    let group = cursor.group();
    // A subscription without a query reads every change: the user's rules
    // decide what its filter (or the client) sees. A query was narrowed by
    // them already.
    let limits = match group.query {
        None => access.grant().read_limits().cloned(),
        Some(_) => None,
    };
    loop {
        // Cancel safe: dropping it only stops waiting.
        let notified = group.notify.notified();
        tokio::pin!(notified);
        if burst.is_empty() {
            // Armed before reading, so a batch published meanwhile wakes it.
            notified.as_mut().enable();
            if let Err(e) = fill(&mut cursor, &mut burst, ctx) {
                return e;
            }
            if let Some(rules) = &limits {
                burst.retain(|e| delivery::selects(None, Some(rules), &e.change));
            }
        }
        let writable = match placement(events.as_ref(), pending.as_ref(), &burst, &cursor) {
            Placement::Upto(n) => n,
            Placement::Chunk(cut) => {
                if let Some(ready) = pending.take() {
                    let judge = decide.judge(metrics);
                    let write = Box::pin(write_chunk(ws, &burst[..cut], &ready, judge, watch));
                    if let Err(e) = write.await {
                        return e;
                    }
                    burst.drain(..cut);
                    if let Some(h) = &events {
                        h.places.sent();
                    }
                }
                continue;
            }
        };
        let have = writable > 0;
        let expiry = access.deadline();
        // The cursor used its matching time: new changes cannot help until then.
        let paused = if have { None } else { cursor.paused_until() };
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                return End::Close(CloseCode::Away, "server shutting down".into());
            }
            msg = ws.next() => {
                if let Err(e) = Box::pin(heard(ws, msg, access, watch)).await {
                    return e;
                }
            }
            _ = tokio::time::sleep_until(expiry.unwrap_or_else(tokio::time::Instant::now)), if expiry.is_some() => {
                return End::Expired;
            }
            _ = watch.tick() => {
                if let Err(e) = Box::pin(tick(ws, watch)).await {
                    return e;
                }
            }
            _ = std::future::ready(()), if have => {
                // Boxed: an idle client's task does not carry the writer's state.
                let judge = decide.judge(metrics);
                let write = Box::pin(write_burst(ws, &burst[..writable], judge, watch));
                if let Err(e) = write.await {
                    return e;
                }
                burst.drain(..writable);
            }
            event = next_event(&mut events), if pending.is_none() && events.is_some() => match event {
                Some(Event::Ready(ready)) => pending = Some(ready),
                Some(Event::Failed(reason)) => {
                    return End::Close(CloseCode::Error, format!("snapshot failed: {reason}"));
                }
                None => events = None,
            },
            _ = tokio::time::sleep_until(paused.unwrap_or_else(std::time::Instant::now).into()), if paused.is_some() => {}
            _ = &mut notified, if !have && paused.is_none() => {}
        }
    }
}

/// The next changes from the cursor, or why the client must go.
fn fill(cursor: &mut Cursor, burst: &mut Vec<Entry>, ctx: &Context) -> Result<(), End> {
    let metrics = &ctx.metrics;
    match cursor.fill(MAX_BATCH, burst) {
        Ok(()) => Ok(()),
        Err(Stop::FellBehind { behind_changes }) => {
            metrics.count_close(CloseReason::FellBehind);
            Err(End::Close(
                CloseCode::Again,
                fell_behind(&ctx.hub, behind_changes),
            ))
        }
        Err(Stop::Closed(reason)) => Err(End::Close(CloseCode::Error, reason)),
        Err(Stop::Lost(reason)) => {
            metrics.count_close(CloseReason::StreamGap);
            Err(End::Close(CloseCode::Again, reason))
        }
    }
}

/// A frame from the client: a token refresh answered, any frame (a pong
/// above all) taken as a sign of life.
async fn heard(
    ws: &mut Ws,
    msg: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    access: &mut auth::Access,
    watch: &mut Watch,
) -> Result<(), End> {
    let text = match msg {
        None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return Err(End::Gone),
        Some(Ok(Message::Text(t))) => t,
        Some(Ok(_)) => {
            watch.heard();
            return Ok(());
        }
    };
    watch.heard();
    match access.on_frame(text.as_str()) {
        None => Ok(()),
        Some(Ok(reply)) => within(watch, ws.send(Message::Text(reply.into()))).await,
        Some(Err(reason)) => Err(End::Close(CloseCode::Policy, reason.to_string())),
    }
}

/// The liveness clock: a ping when one is due, or the end of a client that
/// shows no sign of life.
async fn tick(ws: &mut Ws, watch: &mut Watch) -> Result<(), End> {
    match watch.on_tick() {
        Ok(Due::Ping) => within(watch, ws.send(Message::Ping(Default::default()))).await,
        Ok(Due::Wait) => Ok(()),
        Err(d) => Err(d.into()),
    }
}

/// The close reason of a client that fell out of the log.
fn fell_behind(hub: &Hub, behind_changes: u64) -> String {
    let st = hub.log().stats();
    format!(
        "fell behind: {behind_changes} changes behind, the buffer holds {} changes ({:.1} of {:.1} MB); reconnect with after",
        st.changes,
        st.bytes as f64 / 1048576.0,
        st.max_bytes as f64 / 1048576.0,
    )
}

/// What decides each entry's frame: the client's filter (on what its
/// query matched) and its view (on what it did not).
struct Judge<'a> {
    pipeline: &'a mut Pipeline,
    view: Option<&'a mut View>,
    metrics: &'a Metrics,
}

impl Judge<'_> {
    fn reborrow(&mut self) -> Judge<'_> {
        Judge {
            pipeline: self.pipeline,
            view: self.view.as_deref_mut(),
            metrics: self.metrics,
        }
    }
}

/// Writes the entries before a backfill's chunk, the chunk's rows (through
/// the client's filter) and its progress frame.
async fn write_chunk(
    ws: &mut Ws,
    before: &[Entry],
    ready: &backfill::Ready,
    mut judge: Judge<'_>,
    watch: &Watch,
) -> Result<(), End> {
    if !before.is_empty() {
        write_burst(ws, before, judge.reborrow(), watch).await?;
    }
    let metrics = judge.metrics;
    write_burst(ws, &ready.rows, judge, watch).await?;
    within(watch, ws.send(Message::Text(ready.frame.clone().into()))).await?;
    metrics.frames_out.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Writes a burst (filtered when the client has a filter), then flushes once.
async fn write_burst(
    ws: &mut Ws,
    burst: &[Entry],
    judge: Judge<'_>,
    watch: &Watch,
) -> Result<(), End> {
    let Judge {
        pipeline,
        mut view,
        metrics,
    } = judge;
    let mut sent = 0u64;
    let mut matched: Vec<Entry> = Vec::new();
    for chunk in burst.chunks(BATCH_EVENTS) {
        if let Some(wait) = pipeline.pause() {
            within(watch, ws.flush()).await?;
            tokio::time::sleep(wait).await;
        }
        // The filter judges what the query matched (`None`: no filter).
        let mut judged = if chunk.iter().any(|e| e.unmatched) {
            matched.clear();
            matched.extend(chunk.iter().filter(|e| !e.unmatched).cloned());
            pipeline.judge(&matched)
        } else {
            pipeline.judge(chunk)
        };
        for entry in chunk {
            let change = &*entry.change;
            if entry.unmatched {
                // A row the client may hold, deleted or gone from its
                // query: its view decides (the filter never sees it).
                let text = match view.as_deref_mut().map(|v| v.unmatched(change)) {
                    None | Some(Step::Skip) => continue,
                    Some(Step::Send) => change.text.clone(),
                    Some(Step::Leave(frame)) => frame.into(),
                };
                within(watch, ws.feed(Message::Text(text))).await?;
                sent += 1;
                continue;
            }
            let outcome = match judged.as_mut() {
                None => Outcome::Send(change.text.clone()),
                Some(j) => match j.next() {
                    Some(o) => o,
                    // The filter was detached: nothing after it is sent.
                    None => break,
                },
            };
            let text = match outcome {
                Outcome::Send(text) => {
                    if let Some(v) = view.as_deref_mut() {
                        if let Err(full) = v.sent(change) {
                            metrics.count_close(CloseReason::ViewFull);
                            return Err(End::Close(CloseCode::Policy, full.to_string()));
                        }
                    }
                    text
                }
                Outcome::Skip => continue,
                Outcome::Report(frame) => frame.into(),
                Outcome::Detach(frame, reason) => {
                    within(watch, ws.send(Message::Text(frame.into()))).await?;
                    return Err(End::Close(CloseCode::Policy, reason));
                }
            };
            within(watch, ws.feed(Message::Text(text))).await?;
            sent += 1;
        }
    }
    // Counted before the flush that lets the client see them, so that a
    // client never sees a frame /metrics does not count yet.
    metrics.frames_out.fetch_add(sent, Ordering::Relaxed);
    within(watch, ws.flush()).await?;
    Ok(())
}
