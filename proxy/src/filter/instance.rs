//! One subscription's filter: its own `Store` (memory limit, fuel per
//! event), the config given to `walcast_init`, a fuel budget per second,
//! and the error policy: an event the filter fails on is dropped and the
//! client gets a `filter_error` frame; the instance is replaced by a fresh
//! one; after `max_errors` failures in a row the filter is detached.

use super::record::{record_len, write_record};
use super::registry::{FilterModule, Filters, Host};
use super::{ErrorCode, FilterError};
use crate::change::Change;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::{Engine, Memory, Store, StoreLimitsBuilder, Trap, TypedFunc};

/// What the filter decided for one change.
#[derive(Debug)]
pub enum Verdict {
    Drop,
    Keep,
    /// Deliver these bytes (UTF-8 checked) instead of the change.
    Replace(Vec<u8>),
    /// The filter failed on this change (dropped); it goes on with a fresh instance.
    Failed(FilterError),
    /// The filter failed too often in a row and is detached.
    Detached(FilterError),
}

struct Live {
    store: Store<Host>,
    memory: Memory,
    alloc: TypedFunc<u32, u32>,
    filter: TypedFunc<(u32, u32), i32>,
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
    window: Instant,
    used_in_window: u64,
    /// Fuel used in all, for metrics and benchmarks.
    pub fuel_used: u64,
}

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
            fuel_used: 0,
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
        let mut live = Live {
            store,
            memory,
            alloc,
            filter,
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

    /// How long to wait before the next event: the subscription used its
    /// fuel budget for this second.
    pub fn throttle(&mut self) -> Option<Duration> {
        // Under budget: no need to read the clock (this runs per change).
        if self.used_in_window < self.limits.fuel_per_second {
            return None;
        }
        let elapsed = self.window.elapsed();
        if elapsed >= Duration::from_secs(1) {
            self.window = Instant::now();
            self.used_in_window = 0;
            return None;
        }
        (self.used_in_window >= self.limits.fuel_per_second)
            .then(|| Duration::from_secs(1) - elapsed)
    }

    /// Runs the filter on one change.
    pub fn run(&mut self, change: &Change) -> Verdict {
        match self.call(change) {
            Ok(v) => {
                self.consecutive_errors = 0;
                v
            }
            Err(err) => {
                self.consecutive_errors += 1;
                if self.consecutive_errors >= self.limits.max_errors {
                    self.live = None;
                    return Verdict::Detached(FilterError::new(
                        err.code,
                        format!(
                            "filter detached after {} failures in a row; the last: {}",
                            self.consecutive_errors, err.message
                        ),
                    ));
                }
                // A fresh instance: whatever state the failure left is gone.
                if let Err(e) = self.instantiate() {
                    return Verdict::Detached(FilterError::new(
                        e.code,
                        format!("filter detached: it cannot be restarted: {}", e.message),
                    ));
                }
                Verdict::Failed(err)
            }
        }
    }

    fn call(&mut self, change: &Change) -> Result<Verdict, FilterError> {
        if self.live.is_none() {
            self.instantiate()?;
        }
        let Some(live) = self.live.as_mut() else {
            return Err(FilterError::new(ErrorCode::Instantiate, "no instance"));
        };
        let len = record_len(change);
        let fuel = self
            .limits
            .fuel_per_event
            .saturating_add(self.limits.fuel_per_byte.saturating_mul(len as u64));
        live.store
            .set_fuel(fuel)
            .map_err(|e| FilterError::new(ErrorCode::Trap, format!("{e:#}")))?;
        let result = place_event(live, change, len).and_then(|ptr| {
            live.filter
                .call(&mut live.store, (ptr, len as u32))
                .map_err(|e| classify(&e))
        });
        let left = live.store.get_fuel().unwrap_or(0);
        let used = fuel.saturating_sub(left);
        self.used_in_window = self.used_in_window.saturating_add(used);
        self.fuel_used = self.fuel_used.saturating_add(used);
        // What `set_output` left is taken whatever the result, so that the
        // next event starts without it.
        let host = live.store.data_mut();
        let (output, output_error) = (host.output.take(), host.output_error.take());
        match result? {
            0 => Ok(Verdict::Drop),
            1 => Ok(Verdict::Keep),
            2 => match (output, output_error) {
                (_, Some(e)) => Err(e),
                (Some(out), None) => Ok(Verdict::Replace(out)),
                (None, None) => Err(FilterError::new(
                    ErrorCode::BadOutput,
                    "walcast_filter returned 2 (replace) without calling set_output",
                )),
            },
            n if n < 0 => Err(FilterError::new(
                ErrorCode::GuestError,
                format!("walcast_filter reported error {n}"),
            )),
            n => Err(FilterError::new(
                ErrorCode::BadReturn,
                format!("walcast_filter returned {n}; expected 0 (drop), 1 (keep) or 2 (replace)"),
            )),
        }
    }
}

/// Writes the record of `change` (`len` bytes) into the guest's event
/// buffer, asking for a larger one first when it does not fit.
fn place_event(live: &mut Live, change: &Change, len: usize) -> Result<u32, FilterError> {
    let fits = live.input.is_some_and(|(_, cap)| len <= cap as usize);
    if !fits {
        // Room to spare, so that slightly larger events do not ask again.
        let want = u32::try_from(len.next_power_of_two().max(1024)).map_err(|_| {
            FilterError::new(ErrorCode::BadAlloc, "event too large for a 32-bit guest")
        })?;
        let ptr = call_alloc(live, want)?;
        live.input = Some((ptr, want));
    }
    let Some((ptr, cap)) = live.input else {
        return Err(FilterError::new(ErrorCode::BadAlloc, "no event buffer"));
    };
    let data = live.memory.data_mut(&mut live.store);
    let buffer = data
        .get_mut(ptr as usize..ptr as usize + cap as usize)
        .ok_or_else(|| out_of_bounds(ptr, cap))?;
    write_record(change, buffer).ok_or_else(|| out_of_bounds(ptr, cap))?;
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

    #[test]
    fn the_fuel_budget_per_second_throttles() {
        let limits = FilterLimits {
            fuel_per_second: 10_000,
            max_instances: 2,
            ..FilterLimits::default()
        };
        let filters = Arc::new(
            Filters::new(limits, None, Arc::new(Metrics::default())).expect("the engine starts"),
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let module = rt
            .block_on(filters.upload(BUSY.as_bytes().to_vec()))
            .expect("the module uploads");
        let mut f = FilterInstance::new(&filters, module, Vec::new()).expect("an instance");
        let change = Change::parse(
            Bytes::from_static(
                br#"{"action":"I","schema":"public","table":"t","columns":{"id":1}}"#,
            ),
            Lsn(0),
        )
        .expect("a change");
        let mut runs = 0;
        while f.throttle().is_none() {
            assert!(matches!(f.run(&change), Verdict::Keep));
            runs += 1;
            assert!(runs < 1000, "never throttled");
        }
        // About 300 fuel per event: the budget lasts a few dozen events.
        assert!(runs > 5, "throttled after {runs} events");
        let wait = f.throttle().expect("still throttled");
        assert!(wait <= Duration::from_secs(1));
        // A second later the budget is back.
        f.window -= Duration::from_secs(2);
        assert!(f.throttle().is_none());
        assert_eq!(f.used_in_window, 0);
    }
}
