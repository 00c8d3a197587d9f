//! The WASM filter host: uploaded bytes through the size limit, validation,
//! the ABI check, instantiation and calls with fuel and memory limits.
//! Half the inputs are raw bytes; the other half are valid modules that
//! `wasm-smith` builds with exactly the ABI's imports and exports, so that
//! arbitrary code runs inside the filter's calls.
//!
//! Invariants: nothing panics; every call ends (fuel); a failing filter
//! gives an error verdict, never a crash; memory past the limit is refused
//! (libFuzzer's `-rss_limit_mb` catches growth).
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};
use walcast_format::Lsn;
use walcast_proxy::change::Change;
use walcast_proxy::filter::{FilterInstance, FilterLimits, Filters, Verdict};
use walcast_proxy::metrics::Metrics;

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
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_time().build() {
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
    config.max_memories = 1;
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
    let module = wasm_smith::Module::new(config, u)?;
    Ok(module.to_bytes())
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut u = Unstructured::new(rest);
    let bytes = if mode & 1 == 0 {
        rest.to_vec()
    } else {
        match generated(&mut u) {
            Ok(b) => b,
            Err(_) => return,
        }
    };
    let host = host();
    let module = match host.runtime.block_on(host.filters.upload(bytes)) {
        Ok(m) => m,
        Err(e) => {
            assert!(!e.code.is_empty() && !e.message.is_empty());
            return;
        }
    };
    let config: Vec<u8> = u.arbitrary().unwrap_or_default();
    let mut f = match FilterInstance::new(&host.filters, module, config) {
        Ok(f) => f,
        Err(e) => {
            assert!(!e.message.is_empty());
            return;
        }
    };
    let mut detached = false;
    for c in &host.changes {
        if let Verdict::Detached(_) = f.run(c) {
            detached = true;
            break;
        }
    }
    if !detached {
        let mut verdicts = Vec::new();
        f.run_batch(&host.changes, &mut verdicts);
        assert!(!verdicts.is_empty() && verdicts.len() <= host.changes.len());
        let ended = matches!(verdicts.last(), Some(Verdict::Detached(_)));
        assert!(verdicts.len() == host.changes.len() || ended);
    }
});
