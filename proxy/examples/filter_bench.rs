//! Nanoseconds per event per subscription of WASM filters in the proxy's
//! runtime: the example filters (built by scripts/build-filters.sh), insert
//! events of about 350 bytes going through 100 subscriptions' own
//! instances (as the proxy runs them), fuel metering on; EVENTS counts
//! filter runs (default 1M). Each subscription takes its events in bursts,
//! as a session drains its queue: 64 at a time, then 1 at a time.
//!
//!   cargo run --release -p walcast-proxy --example filter_bench [-- EVENTS [CASE [SCHEDULE]]]

use bytes::Bytes;
use std::sync::Arc;
use std::time::Instant;
use walcast_format::Lsn;
use walcast_proxy::change::Change;
use walcast_proxy::filter::{Decision, FilterInstance, FilterLimits, Filters};
use walcast_proxy::metrics::Metrics;

/// Subscriptions each event goes through.
const SUBSCRIPTIONS: usize = 100;

/// Schedules: (subscriptions, changes each takes from its queue at a time,
/// in batches). 100 x 64 in batches as under load (a session drains its
/// queue in bursts and gives the filter up to 64 changes per call); the
/// same one call per change (the filters without `walcast_filter_batch`);
/// 100 x 1 as the worst case (every call switches to another instance,
/// with cold caches); 1 subscription alone, one call per change.
const SCHEDULES: [(usize, usize, bool); 4] = [
    (SUBSCRIPTIONS, 64, true),
    (SUBSCRIPTIONS, 64, false),
    (SUBSCRIPTIONS, 1, false),
    (1, 1000, false),
];

fn event(i: u64) -> Change {
    let json = format!(
        r#"{{"action":"I","lsn":"0/{:X}","xid":{},"ts":"2026-11-22T10:00:00.000001+00:00","schema":"public","table":"orders","columns":{{"id":{i},"customer":"customer-{}","email":"user{}@example.com","phone":"+1 555 {:04}","total":{}.25,"status":"paid","note":"{}","created_at":"2026-11-22T10:00:00+00:00"}}}}"#,
        0x1000 + i * 64,
        700 + i / 10,
        i % 977,
        i % 1000,
        i % 10000,
        i % 500,
        "x".repeat(60)
    );
    match Change::parse(Bytes::from(json), Lsn(0)) {
        Ok(c) => c,
        Err(e) => panic!("bad event: {e}"),
    }
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let wasm = |name: &str| {
        let p = root.join(format!(
            "filters/target/wasm32-unknown-unknown/release/walcast_filter_{name}.wasm"
        ));
        std::fs::read(&p)
            .unwrap_or_else(|e| panic!("{}: {e} (run ./scripts/build-filters.sh)", p.display()))
    };
    let header_only = match std::fs::read(root.join("filters/examples/wat/inserts_only.wat")) {
        Ok(b) => b,
        Err(e) => panic!("inserts_only.wat: {e}"),
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "header only (inserts_only.wat: action byte)",
            header_only,
            "",
        ),
        (
            "JSON scanning (threshold: one column of the row)",
            wasm("threshold"),
            r#"{"table":"orders","column":"total","min":250}"#,
        ),
        (
            "transform (redact: rewrite email and phone)",
            wasm("redact"),
            r#"{"columns":["email","phone"]}"#,
        ),
    ];
    let events: Vec<Change> = (0..1000).map(event).collect();
    let avg_len = events.iter().map(|e| e.raw().len()).sum::<usize>() / events.len();
    println!(
        "{n} filter runs per case: events of {avg_len} bytes of JSON on average, each through {SUBSCRIPTIONS} subscriptions' own instances"
    );
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => panic!("runtime: {e}"),
    };
    let filters = match Filters::new(FilterLimits::default(), None, Arc::new(Metrics::default())) {
        Ok(f) => Arc::new(f),
        Err(e) => panic!("{e}"),
    };
    // An optional second argument picks the cases whose name contains it,
    // a third the schedules ("batches", "one call", "100 x 1", ...).
    let only = std::env::args().nth(2).unwrap_or_default();
    let schedule = std::env::args().nth(3).unwrap_or_default();
    for (name, bytes, config) in cases.into_iter().filter(|c| c.0.contains(&only)) {
        let module = match rt.block_on(filters.upload(bytes)) {
            Ok(m) => m,
            Err(e) => panic!("{name}: {} {}", e.code.as_str(), e.message),
        };
        // As in the proxy: every event meets every subscription's own instance.
        let mut subs: Vec<FilterInstance> = (0..SUBSCRIPTIONS)
            .map(|_| {
                match FilterInstance::new(&filters, module.clone(), config.as_bytes().to_vec()) {
                    Ok(f) => f,
                    Err(e) => panic!("{name}: {e}"),
                }
            })
            .collect();
        let (mut verdicts, mut one) = (Vec::new(), Vec::new());
        for (count, burst, batched) in SCHEDULES {
            let how = if batched { "batches" } else { "one call each" };
            if !format!("{count} x {burst} ({how})").contains(&schedule) {
                continue;
            }
            let subs = &mut subs[..count];
            let (mut kept, mut failed) = (0u64, 0u64);
            let rounds = (n / (count as u64 * burst as u64)).max(1);
            let start = Instant::now();
            for r in 0..rounds {
                // As a session does with its queue: each subscription runs
                // its filter over the burst of changes waiting for it.
                let first = (r as usize * burst) % (events.len() - burst).max(1);
                let queue = &events[first..first + burst];
                for f in subs.iter_mut() {
                    if batched {
                        f.run_batch(queue, &mut verdicts, true);
                    } else {
                        // One change at a time, untimed, as a durable
                        // consumer runs its filter.
                        verdicts.clear();
                        for change in queue {
                            f.run_batch(std::slice::from_ref(change), &mut one, false);
                            verdicts.append(&mut one);
                        }
                    }
                    for v in verdicts.drain(..) {
                        match v {
                            Decision::Keep | Decision::Replace(_) => kept += 1,
                            Decision::Drop => {}
                            Decision::Failed(_) | Decision::Detached(_) => failed += 1,
                        }
                    }
                }
            }
            let runs = rounds * (count * burst) as u64;
            let ns = start.elapsed().as_nanos() as f64 / runs as f64;
            let fuel: u64 = subs.iter().map(|f| f.fuel_used).sum();
            println!(
                "{name}, {count} x {burst} ({how}): {ns:.0} ns/event/subscription ({kept} of {runs} delivered, {failed} failed, {:.0} fuel/event)",
                fuel as f64 / runs as f64
            );
            for f in subs.iter_mut() {
                f.fuel_used = 0;
            }
        }
    }
}
