//! One subscription's filter: its own `Store` (memory limit, fuel per
//! event), the config given to `walcast_init`, a fuel budget per second,
//! and the error policy: an event the filter fails on is dropped and the
//! client gets a `filter_error` frame; the instance is replaced by a fresh
//! one; after `max_errors` failures in a row the filter is detached.
//!
//! A module that exports `walcast_filter_batch` takes up to
//! [`BATCH_EVENTS`] changes per call (`run_batch`): one entry into the
//! sandbox and one fuel reset per batch instead of per change. The
//! decisions and failures a client sees are those of one call per change.

use super::modules::{output_bytes, FilterModule, Filters, Host};
use super::record::{record_len, write_record};
use super::{ErrorCode, FilterError};
use crate::change::Change;
use std::borrow::Borrow;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::{Engine, Memory, Store, StoreLimitsBuilder, Trap, TypedFunc};

/// What the filter decided for one change.
#[derive(Debug)]
pub enum Decision {
    Drop,
    Keep,
    /// Deliver these bytes (UTF-8 checked) instead of the change.
    Replace(Vec<u8>),
    /// The filter failed on this change (dropped); it goes on with a fresh instance.
    Failed(Box<FilterError>),
    /// The filter failed too often in a row and is detached.
    Detached(Box<FilterError>),
}

struct Live {
    store: Store<Host>,
    memory: Memory,
    alloc: TypedFunc<u32, u32>,
    filter: TypedFunc<(u32, u32), i32>,
    batch: Option<TypedFunc<(u32, u32, u32), i32>>,
    /// The event buffer `walcast_alloc` gave: address and size. Events are
    /// written there while they fit (the ABI lets the host reuse it until
    /// it calls `walcast_alloc` again).
    input: Option<(u32, u32)>,
}

/// A filter bound to one subscription.
pub struct FilterInstance {
    module: Arc<FilterModule>,
    engine: Engine,
    limits: super::FilterLimits,
    config: Vec<u8>,
    live: Option<Live>,
    consecutive_errors: u32,
    /// The current one-second window and what the filter used in it: fuel,
    /// and time spent in its calls.
    window: Instant,
    used_in_window: u64,
    time_in_window: Duration,
    /// Fuel used in all, for metrics and benchmarks.
    pub fuel_used: u64,
    /// Fuel per change of the last [`FilterInstance::run_batch`] or
    /// [`FilterInstance::run`].
    recent_fuel_per_event: u64,
}

/// Fuel per change above which a filter counts as costly (some 10 µs or
/// more per change): its batches run off the async workers.
const COSTLY_FUEL_PER_EVENT: u64 = 20_000;

fn classify(e: &wasmtime::Error) -> FilterError {
    let text = format!("{e:#}");
    let code = match e.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => ErrorCode::OutOfFuel,
        Some(Trap::StackOverflow) => ErrorCode::StackOverflow,
        _ if text.contains("growing memory") || text.contains("memory minimum size") => {
            ErrorCode::MemoryLimit
        }
        _ => ErrorCode::Trap,
    };
    let message = match code {
        ErrorCode::OutOfFuel => "the filter used all the fuel allowed for one event".to_owned(),
        ErrorCode::StackOverflow => "the filter exhausted its call stack".to_owned(),
        ErrorCode::MemoryLimit => "the filter tried to grow its memory past the limit".to_owned(),
        _ => text,
    };
    FilterError::new(code, message)
}

impl FilterInstance {
    /// Instantiates `module` for a subscription with `config` (given to
    /// `walcast_init` when the module exports it).
    pub fn new(
        filters: &Filters,
        module: Arc<FilterModule>,
        config: Vec<u8>,
    ) -> Result<FilterInstance, FilterError> {
        let mut f = FilterInstance {
            module,
            engine: filters.engine.clone(),
            limits: filters.limits.clone(),
            config,
            live: None,
            consecutive_errors: 0,
            window: Instant::now(),
            used_in_window: 0,
            time_in_window: Duration::ZERO,
            fuel_used: 0,
            recent_fuel_per_event: 0,
        };
        f.instantiate()?;
        Ok(f)
    }

    /// The module's id.
    pub fn id(&self) -> &str {
        &self.module.id
    }

    fn instantiate(&mut self) -> Result<(), FilterError> {
        self.live = None;
        let host = Host {
            limits: StoreLimitsBuilder::new()
                .memory_size(self.limits.max_memory_bytes)
                .instances(1)
                .memories(1)
                .tables(1)
                .trap_on_grow_failure(true)
                .build(),
            output: None,
            output_error: None,
            max_output: self.limits.max_output_bytes,
        };
        let mut store = Store::new(&self.engine, host);
        store.limiter(|h| &mut h.limits);
        store
            .set_fuel(self.limits.init_fuel)
            .map_err(|e| FilterError::new(ErrorCode::Instantiate, format!("{e:#}")))?;
        let instance = self.module.pre.instantiate(&mut store).map_err(|e| {
            let mut err = classify(&e);
            if err.code == ErrorCode::Trap {
                err = FilterError::new(
                    ErrorCode::Instantiate,
                    format!("cannot instantiate the filter: {e:#}"),
                );
            }
            err
        })?;
        let missing =
            |what: &str| FilterError::new(ErrorCode::Instantiate, format!("{what} is missing"));
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| missing("memory"))?;
        let alloc = instance
            .get_typed_func::<u32, u32>(&mut store, "walcast_alloc")
            .map_err(|_| missing("walcast_alloc"))?;
        let filter = instance
            .get_typed_func::<(u32, u32), i32>(&mut store, "walcast_filter")
            .map_err(|_| missing("walcast_filter"))?;
        let batch = match self.module.has_batch {
            true => Some(
                instance
                    .get_typed_func::<(u32, u32, u32), i32>(&mut store, "walcast_filter_batch")
                    .map_err(|_| missing("walcast_filter_batch"))?,
            ),
            false => None,
        };
        let mut live = Live {
            store,
            memory,
            alloc,
            filter,
            batch,
            input: None,
        };
        if self.module.has_init {
            let init = instance
                .get_typed_func::<(u32, u32), i32>(&mut live.store, "walcast_init")
                .map_err(|_| missing("walcast_init"))?;
            let (ptr, len) = place(&mut live, &self.config)?;
            let rc = init
                .call(&mut live.store, (ptr, len))
                .map_err(|e| classify(&e))?;
            if rc != 0 {
                return Err(FilterError::new(
                    ErrorCode::InitFailed,
                    format!("walcast_init returned {rc} for the given config"),
                ));
            }
        }
        self.live = Some(live);
        Ok(())
    }

    /// Whether the filter used its budget for the current second: its
    /// time (`--filter-budget-ms`) or, when set, its fuel
    /// (`--filter-fuel-per-second`).
    fn over_budget(&self) -> bool {
        self.time_in_window >= self.limits.time_per_second
            || (self.limits.fuel_per_second > 0
                && self.used_in_window >= self.limits.fuel_per_second)
    }

    /// How long to wait before the next event: the subscription used its
    /// filter budget for this second.
    pub fn budget_wait(&mut self) -> Option<Duration> {
        // Under budget: no need to read the clock (this runs per batch).
        if !self.over_budget() {
            return None;
        }
        let elapsed = self.window.elapsed();
        if elapsed >= Duration::from_secs(1) {
            self.window = Instant::now();
            self.used_in_window = 0;
            self.time_in_window = Duration::ZERO;
            return None;
        }
        Some(Duration::from_secs(1) - elapsed)
    }

    /// Runs `f` (off the async workers when the filter is costly, see
    /// [`FilterInstance::costly`]); `f` returns its result and the number of
    /// changes it judged, for the fuel per change. With `clock`, its time
    /// counts against the budget per second.
    fn timed<T>(&mut self, clock: bool, f: impl FnOnce(&mut Self) -> (T, usize)) -> T {
        let (start, fuel) = (clock.then(Instant::now), self.fuel_used);
        let (out, events) = if self.costly() {
            crate::blocking::off_workers(|| f(self))
        } else {
            f(self)
        };
        if let Some(start) = start {
            self.time_in_window += start.elapsed();
        }
        self.recent_fuel_per_event = self.fuel_used.saturating_sub(fuel) / (events as u64).max(1);
        out
    }

    fn judge(&mut self, change: &Change) -> Decision {
        match self.call(change) {
            Ok(v) => {
                self.consecutive_errors = 0;
                v
            }
            Err(err) => self.failed(err),
        }
    }

    /// Counts a failure: the filter goes on in a fresh instance, or is
    /// detached after `max_errors` failures in a row.
    fn failed(&mut self, err: FilterError) -> Decision {
        self.consecutive_errors += 1;
        if self.consecutive_errors >= self.limits.max_errors {
            self.live = None;
            return Decision::Detached(Box::new(FilterError::new(
                err.code,
                format!(
                    "filter detached after {} failures in a row; the last: {}",
                    self.consecutive_errors, err.message
                ),
            )));
        }
        // A fresh instance: whatever state the failure left is gone.
        if let Err(e) = self.instantiate() {
            return Decision::Detached(Box::new(FilterError::new(
                e.code,
                format!("filter detached: it cannot be restarted: {}", e.message),
            )));
        }
        Decision::Failed(Box::new(err))
    }

    /// Runs the filter on `changes` in order, appending one decision per
    /// change to `decisions` (cleared first); after a `Detached` decision the
    /// rest are not judged. Batches go through `walcast_filter_batch` when
    /// the module exports it, each change through `walcast_filter`
    /// otherwise; either way the decisions are those of one call per change.
    /// With `clocked`, the run's time counts against the budget per second
    /// (live sessions); a durable stream's filter slows only its own stream,
    /// and reading the clock twice would double the cost of a cheap filter
    /// on one change.
    pub fn run_batch<C: Borrow<Change>>(
        &mut self,
        changes: &[C],
        decisions: &mut Vec<Decision>,
        clocked: bool,
    ) {
        self.timed(clocked, |f| {
            f.judge_batch(changes, decisions);
            ((), decisions.len())
        });
    }

    /// Whether the last batch or call used more than [`COSTLY_FUEL_PER_EVENT`] per change.
    pub fn costly(&self) -> bool {
        self.recent_fuel_per_event > COSTLY_FUEL_PER_EVENT
    }

    fn judge_batch<C: Borrow<Change>>(&mut self, changes: &[C], decisions: &mut Vec<Decision>) {
        decisions.clear();
        let mut rest = changes;
        while let Some(first) = rest.first() {
            let plan = self.plan(rest);
            if plan.count <= 1 {
                if !self.run_alone(first.borrow(), decisions) {
                    return;
                }
                rest = &rest[1..];
                continue;
            }
            let (judged, alone) = self.call_batch(&rest[..plan.count], &plan, decisions);
            if decisions
                .last()
                .is_some_and(|v| matches!(v, Decision::Detached(_)))
            {
                return;
            }
            // What the batch call could not judge (it trapped, or the guest
            // stopped early) goes one change at a time, exactly as without
            // batches.
            for change in &rest[judged..judged + alone] {
                if !self.run_alone(change.borrow(), decisions) {
                    return;
                }
            }
            rest = &rest[judged + alone..];
        }
    }

    /// The next batch from `changes`: up to `BATCH_EVENTS` of them and
    /// `BATCH_BYTES` of records (the first always); one when the module
    /// has no batch entry.
    fn plan<C: Borrow<Change>>(&self, changes: &[C]) -> Plan {
        let most = if self.module.has_batch {
            BATCH_EVENTS
        } else {
            1
        };
        let (mut records, mut fuel, mut count) = (0, 0u64, 0);
        for c in changes.iter().take(most) {
            let len = record_len(c.borrow(), self.module.json);
            let end = align8(records) + len;
            if count > 0 && end > BATCH_BYTES {
                break;
            }
            (records, count) = (end, count + 1);
            fuel = fuel.saturating_add(self.event_fuel(len));
        }
        Plan {
            count,
            cells: align8(records),
            fuel,
        }
    }

    /// Runs one change through `walcast_filter`; `false` once the filter
    /// is detached.
    fn run_alone(&mut self, change: &Change, decisions: &mut Vec<Decision>) -> bool {
        let v = self.judge(change);
        let detached = matches!(v, Decision::Detached(_));
        decisions.push(v);
        !detached
    }

    /// One `walcast_filter_batch` call over `changes` (at least two).
    /// Returns how many changes it judged (their decisions appended) and how
    /// many after those the caller must run one at a time. A trap judges
    /// none and leaves them all to run alone: the call's decisions are
    /// discarded with its instance, and each change runs again in a fresh
    /// one, so the failing change is reported as without batches. A change
    /// the filter fails on ends the call's decisions: the changes after it
    /// go on in a fresh instance, as without batches.
    fn call_batch<C: Borrow<Change>>(
        &mut self,
        changes: &[C],
        plan: &Plan,
        decisions: &mut Vec<Decision>,
    ) -> (usize, usize) {
        if self.live.is_none() {
            if let Err(e) = self.instantiate() {
                decisions.push(self.failed(e));
                return (1, 0);
            }
        }
        let (cells, fuel, count) = (plan.cells, plan.fuel, changes.len());
        let Some(live) = self.live.as_mut() else {
            return (0, count);
        };
        let Some(batch) = live.batch.clone() else {
            return (0, count);
        };
        let placed = ensure_buffer(live, cells + CELL_LEN * count).and_then(|(ptr, _)| {
            write_batch(live, changes, self.module.json, ptr, cells).map(|()| ptr)
        });
        let ptr = match placed {
            Ok(ptr) => ptr,
            Err(e) => {
                decisions.push(self.failed(e));
                return (1, 0);
            }
        };
        let result = live
            .store
            .set_fuel(fuel)
            .and_then(|()| batch.call(&mut live.store, (ptr, count as u32, ptr + cells as u32)));
        let left = live.store.get_fuel().unwrap_or(0);
        // set_output has no part in batches: the output is in the cells.
        let host = live.store.data_mut();
        host.output = None;
        host.output_error = None;
        self.account(fuel.saturating_sub(left));
        let returned = match result {
            Ok(n) => n,
            Err(_) => {
                // Whatever the instance did in this call goes with it.
                self.live = None;
                return (0, count);
            }
        };
        let judged = match usize::try_from(returned) {
            Ok(n) if n <= count => n,
            _ => {
                let err = FilterError::new(
                    ErrorCode::BadReturn,
                    format!("walcast_filter_batch returned {returned} for {count} events; expected the number of decisions it wrote, 0 to {count}"),
                );
                decisions.push(self.failed(err));
                return (1, 0);
            }
        };
        let mut failure = None;
        if let Some(live) = self.live.as_ref() {
            let data = live.memory.data(&live.store);
            let at = ptr as usize + cells;
            let max = self.limits.max_output_bytes;
            for j in 0..judged {
                let cell = at + CELL_LEN * j;
                // Drop and keep, by far the most common, go straight in.
                let code = data.get(cell..cell + 4).and_then(|b| b.try_into().ok());
                match code.map(i32::from_le_bytes) {
                    Some(0) => decisions.push(Decision::Drop),
                    Some(1) => decisions.push(Decision::Keep),
                    _ => match read_cell(data, cell, max) {
                        Ok(v) => decisions.push(v),
                        Err(e) => {
                            failure = Some((j, e));
                            break;
                        }
                    },
                }
            }
        }
        match failure {
            Some((j, err)) => {
                decisions.push(self.failed(err));
                (j + 1, 0)
            }
            None => {
                if judged > 0 {
                    self.consecutive_errors = 0;
                }
                (judged, count - judged)
            }
        }
    }

    /// The fuel one event of `len` record bytes may use.
    fn event_fuel(&self, len: usize) -> u64 {
        self.limits
            .fuel_per_event
            .saturating_add(self.limits.fuel_per_byte.saturating_mul(len as u64))
    }

    fn account(&mut self, used: u64) {
        self.used_in_window = self.used_in_window.saturating_add(used);
        self.fuel_used = self.fuel_used.saturating_add(used);
    }

    fn call(&mut self, change: &Change) -> Result<Decision, FilterError> {
        if self.live.is_none() {
            self.instantiate()?;
        }
        let len = record_len(change, self.module.json);
        let fuel = self.event_fuel(len);
        let Some(live) = self.live.as_mut() else {
            return Err(FilterError::new(ErrorCode::Instantiate, "no instance"));
        };
        live.store
            .set_fuel(fuel)
            .map_err(|e| FilterError::new(ErrorCode::Trap, format!("{e:#}")))?;
        let result = place_event(live, change, self.module.json, len).and_then(|ptr| {
            live.filter
                .call(&mut live.store, (ptr, len as u32))
                .map_err(|e| classify(&e))
        });
        let left = live.store.get_fuel().unwrap_or(0);
        // What `set_output` left is taken whatever the result, so that the
        // next event starts without it.
        let host = live.store.data_mut();
        let (output, output_error) = (host.output.take(), host.output_error.take());
        self.account(fuel.saturating_sub(left));
        decode(result?, "walcast_filter", || match (output, output_error) {
            (_, Some(e)) => Err(e),
            (Some(out), None) => Ok(out),
            (None, None) => Err(FilterError::new(
                ErrorCode::BadOutput,
                "walcast_filter returned 2 (replace) without calling set_output",
            )),
        })
    }
}

/// A decision code (returned by `walcast_filter`, or in a batch's cell) as
/// a decision; `output` gives the replacement for code 2.
fn decode(
    code: i32,
    what: &str,
    output: impl FnOnce() -> Result<Vec<u8>, FilterError>,
) -> Result<Decision, FilterError> {
    match code {
        0 => Ok(Decision::Drop),
        1 => Ok(Decision::Keep),
        2 => output().map(Decision::Replace),
        n if n < 0 => Err(FilterError::new(
            ErrorCode::GuestError,
            format!("{what} reported error {n}"),
        )),
        n => Err(FilterError::new(
            ErrorCode::BadReturn,
            format!("{what} returned {n}; expected 0 (drop), 1 (keep) or 2 (replace)"),
        )),
    }
}

/// Most changes in one `walcast_filter_batch` call.
pub const BATCH_EVENTS: usize = 64;
/// Most record bytes in one batch (a larger change goes alone).
const BATCH_BYTES: usize = 16 << 10;
/// A decision cell: i32 code, u32 output address, u32 output length.
const CELL_LEN: usize = 12;

fn align8(n: usize) -> usize {
    (n + 7) & !7
}

/// A batch: how many changes, where its decision cells start (after the
/// records), the fuel it may use (its changes' together).
struct Plan {
    count: usize,
    cells: usize,
    fuel: u64,
}

/// Writes the records of a batch at 8-byte aligned offsets from `ptr`
/// (its decision cells follow at `ptr + cells`).
fn write_batch<C: Borrow<Change>>(
    live: &mut Live,
    changes: &[C],
    json: bool,
    ptr: u32,
    cells: usize,
) -> Result<(), FilterError> {
    let cap = cells + CELL_LEN * changes.len();
    let data = live.memory.data_mut(&mut live.store);
    let buffer = data
        .get_mut(ptr as usize..ptr as usize + cap)
        .ok_or_else(|| out_of_bounds(ptr, cap as u32))?;
    let mut at = 0;
    for c in changes {
        at = align8(at);
        let out = buffer
            .get_mut(at..)
            .ok_or_else(|| out_of_bounds(ptr, cap as u32))?;
        at += write_record(c.borrow(), json, out).ok_or_else(|| out_of_bounds(ptr, cap as u32))?;
    }
    Ok(())
}

/// The decision in the cell at `at`.
fn read_cell(data: &[u8], at: usize, max_output: usize) -> Result<Decision, FilterError> {
    let word = |k: usize| {
        data.get(at + 4 * k..at + 4 * k + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
            .unwrap_or(0)
    };
    let (code, ptr, len) = (word(0) as i32, word(1), word(2));
    decode(code, "walcast_filter_batch", || {
        output_bytes(data, ptr, len, max_output, "a batch decision's output").map(<[u8]>::to_vec)
    })
}

/// The event buffer, at least `len` bytes: the one `walcast_alloc` gave,
/// or a larger one asked for.
fn ensure_buffer(live: &mut Live, len: usize) -> Result<(u32, u32), FilterError> {
    if let Some((ptr, cap)) = live.input {
        if len <= cap as usize {
            return Ok((ptr, cap));
        }
    }
    // Room to spare, so that slightly larger events do not ask again.
    let want = u32::try_from(len.next_power_of_two().max(1024))
        .map_err(|_| FilterError::new(ErrorCode::BadAlloc, "event too large for a 32-bit guest"))?;
    let ptr = call_alloc(live, want)?;
    live.input = Some((ptr, want));
    Ok((ptr, want))
}

/// Writes the record of `change` (`len` bytes) into the guest's event
/// buffer, asking for a larger one first when it does not fit.
fn place_event(
    live: &mut Live,
    change: &Change,
    json: bool,
    len: usize,
) -> Result<u32, FilterError> {
    let (ptr, cap) = ensure_buffer(live, len)?;
    let data = live.memory.data_mut(&mut live.store);
    let buffer = data
        .get_mut(ptr as usize..ptr as usize + cap as usize)
        .ok_or_else(|| out_of_bounds(ptr, cap))?;
    write_record(change, json, buffer).ok_or_else(|| out_of_bounds(ptr, cap))?;
    Ok(ptr)
}

fn out_of_bounds(ptr: u32, len: u32) -> FilterError {
    FilterError::new(
        ErrorCode::BadAlloc,
        format!(
            "walcast_alloc returned {ptr}, and {len} bytes there are outside the module's memory"
        ),
    )
}

/// Calls `walcast_alloc(len)` and checks the buffer lies in the memory.
fn call_alloc(live: &mut Live, len: u32) -> Result<u32, FilterError> {
    let ptr = live
        .alloc
        .call(&mut live.store, len)
        .map_err(|e| classify(&e))?;
    if ptr == 0 && len > 0 {
        return Err(FilterError::new(
            ErrorCode::BadAlloc,
            format!("walcast_alloc refused {len} bytes"),
        ));
    }
    if ptr as usize + len as usize > live.memory.data_size(&live.store) {
        return Err(out_of_bounds(ptr, len));
    }
    Ok(ptr)
}

/// Asks the guest for a buffer and copies `bytes` into it (the config).
/// The event buffer is asked for again afterwards.
fn place(live: &mut Live, bytes: &[u8]) -> Result<(u32, u32), FilterError> {
    let len = u32::try_from(bytes.len()).map_err(|_| {
        FilterError::new(ErrorCode::BadAlloc, "config too large for a 32-bit guest")
    })?;
    let ptr = call_alloc(live, len)?;
    live.input = None;
    live.memory
        .write(&mut live.store, ptr as usize, bytes)
        .map_err(|_| out_of_bounds(ptr, len))?;
    Ok((ptr, len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::FilterLimits;
    use crate::metrics::Metrics;
    use bytes::Bytes;
    use walcast_format::Lsn;

    /// Keeps every event after a loop that burns some fuel.
    const BUSY: &str = r#"(module
      (memory (export "memory") 1)
      (func (export "walcast_abi_v1"))
      (func (export "walcast_alloc") (param i32) (result i32) (i32.const 1024))
      (func (export "walcast_filter") (param i32 i32) (result i32)
        (local $n i32)
        (local.set $n (i32.const 100))
        (loop $l (local.set $n (i32.sub (local.get $n) (i32.const 1))) (br_if $l (local.get $n)))
        (i32.const 1)))"#;

    /// Runs `BUSY` under `limits` until its budget for the second is used;
    /// checks the wait and that the next second gives the budget back.
    /// Returns the number of events run and the fuel and time they used.
    fn run_until_throttled(limits: FilterLimits, most: u32) -> (u32, u64, Duration) {
        let mut f = instance(BUSY, limits);
        let change = Change::parse(
            Bytes::from_static(
                br#"{"action":"I","schema":"public","table":"t","columns":{"id":1}}"#,
            ),
            Lsn(0),
        )
        .expect("a change");
        let (mut runs, mut decisions) = (0, Vec::new());
        while f.budget_wait().is_none() {
            f.run_batch(std::slice::from_ref(&change), &mut decisions, true);
            assert!(matches!(decisions[..], [Decision::Keep]));
            runs += 1;
            assert!(runs < most, "never throttled");
        }
        let wait = f.budget_wait().expect("still throttled");
        assert!(wait <= Duration::from_secs(1));
        let (fuel, time) = (f.used_in_window, f.time_in_window);
        // A second later the budget is back.
        f.window -= Duration::from_secs(2);
        assert!(f.budget_wait().is_none());
        assert_eq!((f.used_in_window, f.time_in_window), (0, Duration::ZERO));
        (runs, fuel, time)
    }

    #[test]
    fn the_fuel_budget_per_second_throttles() {
        let limits = FilterLimits {
            fuel_per_second: 10_000,
            max_instances: 2,
            ..FilterLimits::default()
        };
        let (runs, fuel, _) = run_until_throttled(limits, 1000);
        // About 300 fuel per event: the budget lasts a few dozen events.
        assert!(runs > 5, "throttled after {runs} events");
        assert!(fuel >= 10_000);
    }

    #[test]
    fn the_time_budget_per_second_throttles() {
        let limits = FilterLimits {
            time_per_second: Duration::from_micros(300),
            max_instances: 2,
            ..FilterLimits::default()
        };
        assert_eq!(limits.fuel_per_second, 0, "no fuel cap by default");
        let (_, _, time) = run_until_throttled(limits, 1_000_000);
        assert!(time >= Duration::from_micros(300));
    }

    /// Judges by action, one way per call and another per batch, so that a
    /// test can tell which path gave each decision: insert keep; update
    /// replace ("u1" alone, "U!" in a batch); delete trap; truncate guest
    /// error -7. In a batch, a message stops it early (the rest go alone,
    /// where a message is kept) and DDL makes it return 999.
    fn batcher() -> String {
        format!("{BATCHER_START}{})", batch_entry(BATCHER_RECORD))
    }

    /// `batcher()`'s module without its batch entry and closing paren.
    const BATCHER_START: &str = r#"(module
      (import "walcast_v1" "set_output" (func $set_output (param i32 i32) (result i32)))
      (memory (export "memory") 2)
      (data (i32.const 16) "U!")
      (data (i32.const 24) "u1")
      (func (export "walcast_abi_v1"))
      (func (export "walcast_alloc") (param i32) (result i32) (i32.const 1024))
      (func (export "walcast_filter") (param $ptr i32) (param $len i32) (result i32)
        (local $a i32)
        (local.set $a (i32.load8_u offset=1 (local.get $ptr)))
        (if (i32.eq (local.get $a) (i32.const 2))
          (then (drop (call $set_output (i32.const 24) (i32.const 2))) (return (i32.const 2))))
        (if (i32.eq (local.get $a) (i32.const 3)) (then unreachable))
        (if (i32.eq (local.get $a) (i32.const 4)) (then (return (i32.const -7))))
        (i32.const 1))
    "#;

    /// `batcher()`'s judgement of one record in a batch.
    const BATCHER_RECORD: &str = r#"(local.set $a (i32.load8_u offset=1 (local.get $ptr)))
          (if (i32.eq (local.get $a) (i32.const 5)) (then (return (local.get $i))))
          (if (i32.eq (local.get $a) (i32.const 6)) (then (return (i32.const 999))))
          (if (i32.eq (local.get $a) (i32.const 3)) (then unreachable))
          (local.set $code (i32.const 1))
          (if (i32.eq (local.get $a) (i32.const 2))
            (then (local.set $code (i32.const 2))
                  (i32.store offset=4 (local.get $out) (i32.const 16))
                  (i32.store offset=8 (local.get $out) (i32.const 2))))
          (if (i32.eq (local.get $a) (i32.const 4)) (then (local.set $code (i32.const -7))))
          (i32.store (local.get $out) (local.get $code))"#;

    /// A `walcast_filter_batch` export that runs `body` on each record
    /// (at `$ptr`, its cell at `$out`; locals `$a` and `$code` are free),
    /// then steps to the next record and cell.
    fn batch_entry(body: &str) -> String {
        format!(
            r#"(func (export "walcast_filter_batch") (param $ptr i32) (param $count i32) (param $out i32) (result i32)
        (local $i i32) (local $a i32) (local $code i32)
        (block $done (loop $next
          (br_if $done (i32.ge_u (local.get $i) (local.get $count)))
          {body}
          (local.set $ptr (i32.add (local.get $ptr)
            (i32.and (i32.add (i32.add (i32.load offset=24 (local.get $ptr))
                                       (i32.load offset=28 (local.get $ptr)))
                              (i32.const 7))
                     (i32.const -8))))
          (local.set $out (i32.add (local.get $out) (i32.const 12)))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br $next)))
        (local.get $count))"#
        )
    }

    fn instance(wat: &str, limits: FilterLimits) -> FilterInstance {
        let filters = Arc::new(
            Filters::new(limits, None, Arc::new(Metrics::default())).expect("the engine starts"),
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let module = rt
            .block_on(filters.upload(wat.as_bytes().to_vec()))
            .expect("the module uploads");
        FilterInstance::new(&filters, module, Vec::new()).expect("an instance")
    }

    fn change(action: &str, i: u32) -> Change {
        let json = format!(
            r#"{{"action":"{action}","schema":"public","table":"t{i}","columns":{{"id":{i}}}}}"#
        );
        Change::parse(Bytes::from(json), Lsn(0)).expect("a change")
    }

    /// The decisions of `actions` through `run_batch`, as short strings.
    fn batch(f: &mut FilterInstance, actions: &[&str]) -> Vec<String> {
        let changes: Vec<Change> = actions
            .iter()
            .enumerate()
            .map(|(i, a)| change(a, i as u32))
            .collect();
        let mut decisions = Vec::new();
        f.run_batch(&changes, &mut decisions, true);
        decisions
            .into_iter()
            .map(|v| match v {
                Decision::Drop => "drop".to_owned(),
                Decision::Keep => "keep".to_owned(),
                Decision::Replace(out) => String::from_utf8_lossy(&out).into_owned(),
                Decision::Failed(e) => format!("failed {}", e.code.as_str()),
                Decision::Detached(e) => format!("detached {}", e.code.as_str()),
            })
            .collect()
    }

    #[test]
    fn verdicts_are_small() {
        // Batches push one per change: three words, not five.
        assert_eq!(std::mem::size_of::<Decision>(), 24);
    }

    #[test]
    fn batches_give_the_verdicts_of_one_call_per_change() {
        let mut f = instance(&batcher(), FilterLimits::default());
        // All judged in one batch call.
        assert_eq!(
            batch(&mut f, &["I", "U", "I", "U"]),
            ["keep", "U!", "keep", "U!"]
        );
        // One change: one call.
        assert_eq!(batch(&mut f, &["U"]), ["u1"]);
        // A trap: the batch's decisions are discarded and each change runs
        // alone, in a fresh instance; the trapping one fails as it would.
        assert_eq!(
            batch(&mut f, &["U", "D", "U", "I"]),
            ["u1", "failed TRAP", "u1", "keep"]
        );
        // A guest error: the decisions before it stand; the changes after it
        // go on in a fresh instance (a batch again).
        assert_eq!(
            batch(&mut f, &["I", "T", "U", "U"]),
            ["keep", "failed GUEST_ERROR", "U!", "U!"]
        );
        // Stopping early: the rest goes one change at a time.
        assert_eq!(batch(&mut f, &["U", "M", "U"]), ["U!", "keep", "u1"]);
        // A return past the count: the first change fails, the rest go on.
        assert_eq!(
            batch(&mut f, &["DDL", "I", "U"]),
            ["failed BAD_RETURN", "keep", "U!"]
        );
    }

    #[test]
    fn the_wat_example_keeps_inserts_alone_and_in_batches() {
        let wat = include_str!("../../../filters/examples/wat/inserts_only.wat");
        let mut f = instance(wat, FilterLimits::default());
        let actions = ["I", "U", "D", "I", "T", "I"];
        let want = ["keep", "drop", "drop", "keep", "drop", "keep"];
        assert_eq!(batch(&mut f, &actions), want);
        for (a, w) in actions.iter().zip(want) {
            assert_eq!(batch(&mut f, &[a]), [w]);
        }
        // Through its batch entry: 5 fuel a call each, more in a batch.
        let before = f.fuel_used;
        batch(&mut f, &actions);
        assert!(f.fuel_used - before > 6 * 5, "the batch loop ran");
    }

    #[test]
    fn a_batch_stops_at_the_detaching_failure() {
        let limits = FilterLimits {
            max_errors: 2,
            ..FilterLimits::default()
        };
        let mut f = instance(&batcher(), limits);
        assert_eq!(
            batch(&mut f, &["T", "T", "I", "I"]),
            ["failed GUEST_ERROR", "detached GUEST_ERROR"]
        );
    }

    #[test]
    fn header_only_filters_get_records_without_the_json() {
        // Keeps a change when its record has no JSON, alone and in batches.
        let wat = r#"(module
          (memory (export "memory") 1)
          (func (export "walcast_abi_v1"))
          (func (export "walcast_header_only"))
          (func (export "walcast_alloc") (param i32) (result i32) (i32.const 1024))
          (func $judge (param $ptr i32) (result i32)
            (i32.and (i32.eqz (i32.load offset=28 (local.get $ptr)))
                     (i32.eq (i32.load offset=32 (local.get $ptr)) (i32.const -1))))
          (func (export "walcast_filter") (param $ptr i32) (param $len i32) (result i32)
            (i32.and (call $judge (local.get $ptr))
                     ;; the record ends after the schema and table
                     (i32.eq (local.get $len) (i32.add (i32.const 48)
                       (i32.add (i32.load offset=4 (local.get $ptr)) (i32.load offset=8 (local.get $ptr)))))))
          "#
        .to_owned()
            + &batch_entry("(i32.store (local.get $out) (call $judge (local.get $ptr)))")
            + ")";
        let mut f = instance(&wat, FilterLimits::default());
        assert_eq!(batch(&mut f, &["I"]), ["keep"]);
        assert_eq!(batch(&mut f, &["I", "U", "D"]), ["keep", "keep", "keep"]);
        // The same module without the marker sees the JSON: all dropped.
        let mut g = instance(
            &wat.replace(r#"(func (export "walcast_header_only"))"#, ""),
            FilterLimits::default(),
        );
        assert_eq!(batch(&mut g, &["I", "U"]), ["drop", "drop"]);
        assert_eq!(batch(&mut g, &["I"]), ["drop"]);
    }
}
