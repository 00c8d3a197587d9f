//! Checks driven by bytes that need the proxy's machinery (the hub, the
//! WASM engine): run coverage-guided by the fuzz targets `hub` and `filter`
//! (`fuzz/`, `./scripts/fuzz.sh`), and from seeded bytes by this crate's
//! tests, so that every test run exercises them.
//!
//! Built with the `fuzzing` feature, and in tests.

use crate::change::Change;
use crate::filter::{Decision, FilterInstance, FilterLimits, Filters};
use crate::live::hub::{Hub, PublishScratch, HUB_MATCH_COST};
use crate::metrics::Metrics;
use crate::query;
use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use std::sync::{Arc, OnceLock};
use walcast_format::{Lsn, Position};

/// A query's text, a NUL byte, then bytes that build rows from the query's
/// own columns and operands (`walcast_core::fuzzing`). The hub (its `eq`
/// index, and matches it defers to the cursor) hands a client exactly the
/// changes its query matches, and marks as unmatched exactly the updates
/// and deletes of its table that may take a row out of a view.
pub fn hub(data: &[u8]) {
    let (text, rows) = walcast_core::fuzzing::split(data);
    let Ok(q) = query::parse(&text) else { return };
    let cases = walcast_core::fuzzing::cases(&q, &rows, &[0, 64, HUB_MATCH_COST]);
    let hub = Hub::new(1 << 20);
    hub.stream_starts_at(Position::default());
    // Only the per-call slice bounds the cursor's own matching here.
    hub.set_match_budget(std::time::Duration::from_secs(3600));
    let Ok(mut cursor) = hub.subscribe(Some(q.clone()), None) else {
        panic!("subscribe refused");
    };
    let mut scratch = PublishScratch::default();
    let mut got = Vec::new();
    for case in cases {
        let raw = case.raw;
        hub.publish(vec![case.change], &mut scratch);
        got.clear();
        loop {
            if let Err(e) = cursor.fill(16, &mut got) {
                panic!("fill: {e:?}");
            }
            if cursor.paused_until().is_none() {
                break;
            }
        }
        let matched = got.iter().filter(|e| !e.unmatched).count();
        assert_eq!(
            matched,
            usize::from(case.matches),
            "the hub and {q:?} disagree on {raw}"
        );
        let leaves =
            !case.matches && q.may_leave(case.action) && q.matches_table(&case.schema, &case.table);
        assert_eq!(
            got.len() - matched,
            usize::from(leaves),
            "unmatched entries of {q:?} on {raw}"
        );
    }
}

/// Limits smaller than the defaults, so that fuzzing reaches them quickly.
fn limits() -> FilterLimits {
    FilterLimits {
        max_module_bytes: 256 << 10,
        max_memory_bytes: 4 << 20,
        fuel_per_event: 100_000,
        fuel_per_byte: 16,
        init_fuel: 1_000_000,
        time_per_second: std::time::Duration::MAX,
        fuel_per_second: 0,
        max_output_bytes: 64 << 10,
        max_errors: 3,
        max_instances: 8,
        max_stack_bytes: 256 << 10,
    }
}

struct Host {
    filters: Arc<Filters>,
    runtime: tokio::runtime::Runtime,
    changes: Vec<Change>,
}

fn host() -> &'static Host {
    static HOST: OnceLock<Host> = OnceLock::new();
    HOST.get_or_init(|| {
        let filters = match Filters::new(limits(), None, Arc::new(Metrics::default())) {
            Ok(f) => Arc::new(f),
            Err(e) => panic!("cannot start the filter engine: {e}"),
        };
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(r) => r,
            Err(e) => panic!("no runtime: {e}"),
        };
        let changes = [
            r#"{"action":"I","lsn":"0/16B3800","schema":"public","table":"users","columns":{"id":1,"name":"Ann","age":31}}"#,
            r#"{"action":"U","lsn":"0/16B3900","schema":"public","table":"users","columns":{"id":1,"name":"Ann\u0000\"x","age":null},"identity":{"id":1}}"#,
            r#"{"action":"D","lsn":"0/16B3A00","schema":"s\u00e9","table":"t","identity":{"id":[1,2,{"k":"v"}]}}"#,
            r#"{"action":"T","lsn":"0/16B3B00","tables":["public.users","\"a.b\".c"]}"#,
        ]
        .iter()
        .filter_map(|raw| Change::parse(Bytes::from_static(raw.as_bytes()), Lsn(1)).ok())
        .collect();
        Host {
            filters,
            runtime,
            changes,
        }
    })
}

/// The imports a filter may use.
const IMPORTS: &str =
    r#"(module (import "walcast_v1" "set_output" (func (param i32 i32) (result i32))))"#;

/// The exports of ABI v1, with the optional ones.
const EXPORTS: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "walcast_abi_v1"))
  (func (export "walcast_alloc") (param i32) (result i32) i32.const 0)
  (func (export "walcast_filter") (param i32 i32) (result i32) i32.const 0)
  (func (export "walcast_init") (param i32 i32) (result i32) i32.const 0)
  (func (export "walcast_filter_batch") (param i32 i32 i32) (result i32) i32.const 0))"#;

/// A valid module that `wasm-smith` builds with exactly the ABI's imports
/// and exports, so that arbitrary code runs inside the filter's calls.
fn generated(u: &mut Unstructured<'_>) -> arbitrary::Result<Vec<u8>> {
    static SHAPES: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    let (imports, exports) =
        SHAPES.get_or_init(
            || match (wat::parse_str(IMPORTS), wat::parse_str(EXPORTS)) {
                (Ok(i), Ok(e)) => (i, e),
                (i, e) => panic!("shape modules: {:?} {:?}", i.err(), e.err()),
            },
        );
    let mut config = wasm_smith::Config::arbitrary(u)?;
    config.available_imports = Some(imports.clone());
    config.exports = Some(exports.clone());
    // The exported memory is the module's one memory: wasm-smith adds it
    // after the ones it makes up, which would be a second.
    config.max_memories = 0;
    config.max_tables = 1;
    config.max_memory32_bytes = 8 << 20;
    config.memory64_enabled = false;
    config.gc_enabled = false;
    config.exceptions_enabled = false;
    config.threads_enabled = false;
    config.shared_everything_threads_enabled = false;
    config.wide_arithmetic_enabled = false;
    config.custom_page_sizes_enabled = false;
    config.custom_descriptors_enabled = false;
    config.allow_invalid_funcs = false;
    config.compact_imports_enabled = false;
    // What the engine is built without (no `gc` feature of wasmtime).
    config.reference_types_enabled = false;
    let module = wasm_smith::Module::new(config, u)?;
    Ok(module.to_bytes())
}

/// The WASM filter host: a first byte whose low bit is clear makes the rest
/// an uploaded module as it is; set, the rest builds a valid module with
/// `wasm-smith`. Through the size limit, validation, the ABI check,
/// instantiation with fuel and a 4 MB memory limit, single and batch calls
/// on four changes: an error, never a crash; every call ends (fuel).
/// Returns how far the module got.
pub fn filter(data: &[u8]) -> Reached {
    let Some((&mode, rest)) = data.split_first() else {
        return Reached::NoModule;
    };
    let mut u = Unstructured::new(rest);
    let bytes = if mode & 1 == 0 {
        rest.to_vec()
    } else {
        match generated(&mut u) {
            Ok(b) => b,
            Err(_) => return Reached::NoModule,
        }
    };
    let host = host();
    let module = match host.runtime.block_on(host.filters.upload(bytes)) {
        Ok(m) => m,
        Err(e) => {
            assert!(!e.message.is_empty());
            return Reached::Refused(e.code.as_str());
        }
    };
    let config: Vec<u8> = u.arbitrary().unwrap_or_default();
    let mut f = match FilterInstance::new(&host.filters, module, config) {
        Ok(f) => f,
        Err(e) => {
            assert!(!e.message.is_empty());
            return Reached::Uploaded;
        }
    };
    // One change at a time and untimed, as a durable consumer runs it; then
    // in one batch, as a live session does.
    let mut decisions = Vec::new();
    for c in &host.changes {
        f.run_batch(std::slice::from_ref(c), &mut decisions, false);
        if let Some(Decision::Detached(_)) = decisions.last() {
            return Reached::Ran;
        }
    }
    f.run_batch(&host.changes, &mut decisions, true);
    assert!(!decisions.is_empty() && decisions.len() <= host.changes.len());
    let ended = matches!(decisions.last(), Some(Decision::Detached(_)));
    assert!(decisions.len() == host.changes.len() || ended);
    Reached::Ran
}

/// How far [`filter`]'s module got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reached {
    /// No module: no input, or bytes `wasm-smith` could not build one from.
    NoModule,
    /// Refused at upload, with its code.
    Refused(&'static str),
    /// Uploaded, but it could not be instantiated or its `walcast_init` failed.
    Uploaded,
    /// Called on the changes.
    Ran,
}

#[cfg(test)]
mod tests {
    /// Bytes from a seed (splitmix64): the same seed, the same input.
    fn bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut s = seed;
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
        }
        out.truncate(len);
        out
    }

    /// The first seed, from `WALCAST_SEED` to replay a failure.
    fn first_seed() -> u64 {
        std::env::var("WALCAST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1)
    }

    #[test]
    fn seeded_rows_reach_exactly_the_clients_whose_query_matches_them() {
        let queries = [
            "*:t:a.eq.5",
            "insert,update:t:a.eq.5.0:b.neq.x",
            "*:s.t:c.like.\"ab%\"",
            "*:t:c.ilike.AB_",
            "update,delete:t:a.in.(1,2,\"3\")",
            "*:t:a.gt.1:a.lte.9",
            "*:t:b.is.null",
            "*:t:b.is.true",
            "*:t",
            "delete:t:a.eq.x",
        ];
        let first = first_seed();
        for (i, q) in queries.iter().enumerate() {
            for n in 0..200u64 {
                let seed = first + n;
                let mut input = q.as_bytes().to_vec();
                input.push(0);
                input.extend(bytes(seed * 31 + i as u64, 96));
                let run = std::panic::catch_unwind(|| super::hub(&input));
                assert!(run.is_ok(), "query {q}, WALCAST_SEED={seed}");
            }
        }
    }

    #[test]
    fn generated_filters_end_in_a_verdict_or_an_error() {
        let first = first_seed();
        let mut ran = 0;
        for n in 0..80u64 {
            let seed = first + n;
            let mut input = bytes(seed, 2048);
            // Every other input a wasm-smith module, the others raw bytes.
            input[0] = (n % 2) as u8 | 0x10 | input[0] & !1;
            if n % 2 == 0 {
                // Raw bytes behind a valid header now and then, so that
                // validation, not only the magic number, refuses them.
                input.splice(1..1, *b"\0asm\x01\0\0\0");
            }
            let run = std::panic::catch_unwind(|| super::filter(&input));
            match run {
                Ok(super::Reached::Ran) => ran += 1,
                // A module wasm-smith builds for the ABI is one the engine
                // accepts: the generator matches the engine's features.
                Ok(super::Reached::Refused(code)) if n % 2 == 1 => {
                    panic!("a generated module was refused ({code}): WALCAST_SEED={seed}")
                }
                Ok(_) => {}
                Err(_) => panic!("WALCAST_SEED={seed}"),
            }
        }
        assert!(ran > 0, "no generated module ran: the generator is broken");
    }
}
