//! Uploaded filter modules: one wasmtime `Engine` (Cranelift, pooling
//! allocator, fuel), modules compiled once per sha256 on a blocking thread
//! behind a semaphore, checked against ABI v1, cached in memory (LRU) and
//! optionally on disk (artifacts this proxy compiled itself).

use super::{FilterError, ABI_MARKER, HEADER_ONLY_MARKER, IMPORT_MODULE};
use crate::filter::ErrorCode;
use crate::metrics::Metrics;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OnceCell, Semaphore};
use wasmtime::{
    Caller, Config, Engine, Extern, ExternType, InstanceAllocationStrategy, InstancePre, Linker,
    Module, PoolingAllocationConfig, StoreLimits, ValType,
};

/// Limits every filter runs under (defaults in `config.rs`).
#[derive(Debug, Clone)]
pub struct FilterLimits {
    pub max_module_bytes: usize,
    pub max_memory_bytes: usize,
    pub fuel_per_event: u64,
    pub fuel_per_byte: u64,
    pub init_fuel: u64,
    /// Time one subscription's filter may run per second.
    pub time_per_second: std::time::Duration,
    /// Fuel one subscription's filter may use per second; 0: no cap.
    pub fuel_per_second: u64,
    pub max_output_bytes: usize,
    pub max_errors: u32,
    pub max_instances: u32,
    pub max_stack_bytes: usize,
}

impl Default for FilterLimits {
    fn default() -> Self {
        FilterLimits {
            max_module_bytes: 1 << 20,
            max_memory_bytes: 16 << 20,
            fuel_per_event: 200_000,
            fuel_per_byte: 64,
            init_fuel: 10_000_000,
            time_per_second: std::time::Duration::from_millis(50),
            fuel_per_second: 0,
            max_output_bytes: 1 << 20,
            max_errors: 10,
            max_instances: 1024,
            max_stack_bytes: 512 << 10,
        }
    }
}

/// Why an upload was refused.
#[derive(Debug, Clone)]
pub struct UploadError {
    pub code: UploadCode,
    pub message: String,
}

/// The kinds of refused uploads, each with its code in answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadCode {
    /// `MODULE_TOO_LARGE`: over `--filter-max-module-size`.
    ModuleTooLarge,
    /// `INVALID_MODULE`: not a module that compiles, or an empty body.
    InvalidModule,
    /// `IMPORT_NOT_ALLOWED`: it imports something the host does not give.
    ImportNotAllowed,
    /// `MISSING_EXPORT`: an export the ABI needs is missing or of the wrong type.
    MissingExport,
    /// `ABI_UNSUPPORTED`: a version of the filter ABI this proxy does not speak.
    AbiUnsupported,
    /// `COMPILE_TIMEOUT`: the compiler stopped before it finished.
    CompileTimeout,
}

impl UploadCode {
    /// The code as answers carry it.
    pub fn as_str(self) -> &'static str {
        match self {
            UploadCode::ModuleTooLarge => "MODULE_TOO_LARGE",
            UploadCode::InvalidModule => "INVALID_MODULE",
            UploadCode::ImportNotAllowed => "IMPORT_NOT_ALLOWED",
            UploadCode::MissingExport => "MISSING_EXPORT",
            UploadCode::AbiUnsupported => "ABI_UNSUPPORTED",
            UploadCode::CompileTimeout => "COMPILE_TIMEOUT",
        }
    }
}

impl UploadError {
    fn new(code: UploadCode, message: impl Into<String>) -> UploadError {
        UploadError {
            code,
            message: message.into(),
        }
    }
}

/// What a store of a filter holds besides the instance.
pub struct Host {
    pub limits: StoreLimits,
    /// The output set by `set_output` during the current call.
    pub output: Option<Vec<u8>>,
    /// Why `set_output` refused, if it did.
    pub output_error: Option<FilterError>,
    pub max_output: usize,
}

/// A compiled, checked module.
pub struct FilterModule {
    /// `sha256:<hex>` of the uploaded bytes.
    pub id: String,
    pub pre: InstancePre<Host>,
    /// Exported names, sorted.
    pub exports: Vec<String>,
    pub has_init: bool,
    /// It exports `walcast_filter_batch`: events go in batches.
    pub has_batch: bool,
    /// Records carry the JSON (the module does not export the
    /// `walcast_header_only` marker).
    pub json: bool,
}

type Slot = Arc<OnceCell<Result<Arc<FilterModule>, UploadError>>>;

#[derive(Default)]
struct Cache {
    entries: HashMap<String, (Slot, u64)>,
    tick: u64,
}

/// Modules kept in memory at most (least recently used go first; running
/// subscriptions keep theirs).
const CACHE_ENTRIES: usize = 128;
/// How long an upload waits for the compiler.
const COMPILE_WAIT: Duration = Duration::from_secs(30);

/// The filter registry.
pub struct Filters {
    pub engine: Engine,
    pub limits: FilterLimits,
    linker: Linker<Host>,
    cache: Mutex<Cache>,
    compiling: Arc<Semaphore>,
    disk: Option<PathBuf>,
    metrics: Arc<Metrics>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn is_i32s(types: impl Iterator<Item = ValType>, n: usize) -> bool {
    let v: Vec<ValType> = types.collect();
    v.len() == n && v.iter().all(|t| matches!(t, ValType::I32))
}

/// One engine for every filter: Cranelift, fuel, a pool of `max_instances`
/// instances whose memories each reserve `reservation` bytes of address
/// space (plus a guard) and grow up to the memory limit.
fn engine(limits: &FilterLimits, reservation: u64, guard: u64) -> wasmtime::Result<Engine> {
    let mut pool = PoolingAllocationConfig::default();
    pool.total_core_instances(limits.max_instances)
        .total_memories(limits.max_instances)
        .total_tables(limits.max_instances)
        .max_memories_per_module(1)
        .max_tables_per_module(1)
        .max_memory_size(limits.max_memory_bytes);
    let mut cfg = Config::new();
    cfg.consume_fuel(true)
        .max_wasm_stack(limits.max_stack_bytes)
        .memory_reservation(reservation)
        .memory_guard_size(guard)
        .memory_reservation_for_growth(0)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&cfg)
}

/// Why the WASM filter host cannot start.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("cannot start the WASM engine: {0:#}")]
    Engine(wasmtime::Error),
    #[error("cannot define the host's import set_output: {0:#}")]
    Linker(wasmtime::Error),
    /// `--filter-cache-dir` cannot be used: why.
    #[error("{0}")]
    CacheDir(String),
}

impl Filters {
    /// The engine and linker for `limits`; `disk` caches compiled artifacts.
    pub fn new(
        limits: FilterLimits,
        disk: Option<PathBuf>,
        metrics: Arc<Metrics>,
    ) -> Result<Filters, HostError> {
        // A 4 GiB reservation per memory (address space, not memory: the
        // limit stays `max_memory_bytes`) lets compiled filters access their
        // memory without a bounds check per load, about 12% faster JSON
        // scanning. Where the address space is limited (ulimit -v), slots
        // of the memory limit itself are used instead.
        let engine = match engine(&limits, 1 << 32, 32 << 20) {
            Ok(engine) => engine,
            Err(e) => {
                tracing::warn!(error = %e, "cannot reserve 4 GiB of address space per filter memory; filters run with bounds checks");
                engine(&limits, limits.max_memory_bytes as u64, 64 << 10)
                    .map_err(HostError::Engine)?
            }
        };
        let mut linker = Linker::new(&engine);
        linker
            .func_wrap(
                IMPORT_MODULE,
                "set_output",
                |mut caller: Caller<'_, Host>, ptr: u32, len: u32| -> i32 {
                    set_output(&mut caller, ptr, len)
                },
            )
            .map_err(HostError::Linker)?;
        if let Some(dir) = &disk {
            create_private_dir(dir).map_err(HostError::CacheDir)?;
        }
        Ok(Filters {
            engine,
            limits,
            linker,
            cache: Mutex::new(Cache::default()),
            compiling: Arc::new(Semaphore::new(1)),
            disk,
            metrics,
        })
    }

    /// The module `id` (`sha256:<hex>`) if it was uploaded.
    pub fn get(&self, id: &str) -> Option<Arc<FilterModule>> {
        let mut cache = crate::locks::lock(&self.cache);
        cache.tick += 1;
        let tick = cache.tick;
        let (entry, used) = cache.entries.get_mut(id)?;
        *used = tick;
        match entry.get() {
            Some(Ok(m)) => Some(m.clone()),
            _ => None,
        }
    }

    /// Uploads `bytes`: compiled once however many upload it at the same time.
    pub async fn upload(
        self: &Arc<Self>,
        bytes: Vec<u8>,
    ) -> Result<Arc<FilterModule>, UploadError> {
        if bytes.len() > self.limits.max_module_bytes {
            return Err(UploadError::new(
                UploadCode::ModuleTooLarge,
                format!(
                    "the module is {} bytes; the limit is {}",
                    bytes.len(),
                    self.limits.max_module_bytes
                ),
            ));
        }
        let id = format!("sha256:{}", hex(&Sha256::digest(&bytes)));
        let entry = {
            let mut cache = crate::locks::lock(&self.cache);
            cache.tick += 1;
            let tick = cache.tick;
            if !cache.entries.contains_key(&id) && cache.entries.len() >= CACHE_ENTRIES {
                let oldest = cache
                    .entries
                    .iter()
                    .filter(|(_, (s, _))| s.initialized())
                    .min_by_key(|(_, (_, t))| *t)
                    .map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    cache.entries.remove(&k);
                }
            }
            let entry = cache
                .entries
                .entry(id.clone())
                .or_insert_with(|| (Arc::new(OnceCell::new()), tick));
            entry.1 = tick;
            entry.0.clone()
        };
        let this = self.clone();
        entry
            .get_or_init(|| async move { this.compile(id, bytes).await })
            .await
            .clone()
    }

    async fn compile(
        self: Arc<Self>,
        id: String,
        bytes: Vec<u8>,
    ) -> Result<Arc<FilterModule>, UploadError> {
        let permit = tokio::time::timeout(COMPILE_WAIT, self.compiling.clone().acquire_owned())
            .await
            .map_err(|_| {
                UploadError::new(
                    UploadCode::CompileTimeout,
                    "the compiler is busy with other uploads; try again",
                )
            })?
            .map_err(|_| UploadError::new(UploadCode::CompileTimeout, "the compiler stopped"))?;
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            this.compile_blocking(id, &bytes)
        })
        .await
        .map_err(|e| {
            UploadError::new(
                UploadCode::InvalidModule,
                format!("compilation failed: {e}"),
            )
        })?
    }

    fn artifact_path(&self, id: &str) -> Option<PathBuf> {
        let hexid = id.strip_prefix("sha256:")?;
        Some(self.disk.as_ref()?.join(format!("{hexid}.cwasm")))
    }

    fn compile_blocking(&self, id: String, bytes: &[u8]) -> Result<Arc<FilterModule>, UploadError> {
        if let Some(path) = self.artifact_path(&id) {
            if path.exists() {
                // SAFETY: artifacts in this directory are written only by
                // this proxy (`store_artifact`: a 0700 directory of its own,
                // files renamed into place once complete); wasmtime checks
                // that an artifact matches this engine's version and settings.
                match unsafe { Module::deserialize_file(&self.engine, &path) } {
                    Ok(module) => return self.check(id, module),
                    Err(e) => {
                        crate::limited!(warn, path = %path.display(), error = %e, "ignoring an unusable cached filter artifact");
                        let _ = std::fs::remove_file(&path);
                    }
                }
            }
        }
        self.metrics.filter_compiles.fetch_add(1, Ordering::Relaxed);
        let module = Module::new(&self.engine, bytes).map_err(|e| {
            UploadError::new(
                UploadCode::InvalidModule,
                format!("not a valid WebAssembly module: {e:#}"),
            )
        })?;
        let checked = self.check(id.clone(), module.clone())?;
        if let Some(path) = self.artifact_path(&id) {
            if let Err(e) = store_artifact(&module, &path) {
                crate::limited!(warn, path = %path.display(), error = %e, "could not cache the compiled filter");
            }
        }
        Ok(checked)
    }

    /// Checks a module against ABI v1 and prepares its instantiation.
    fn check(&self, id: String, module: Module) -> Result<Arc<FilterModule>, UploadError> {
        for import in module.imports() {
            let ok = import.module() == IMPORT_MODULE
                && import.name() == "set_output"
                && matches!(import.ty(), ExternType::Func(f)
                    if is_i32s(f.params(), 2) && is_i32s(f.results(), 1));
            if !ok {
                return Err(UploadError::new(
                    UploadCode::ImportNotAllowed,
                    format!(
                        "the module imports {}::{} ({}); a filter may only import {IMPORT_MODULE}::set_output(i32, i32) -> i32 (no WASI)",
                        import.module(),
                        import.name(),
                        describe(&import.ty())
                    ),
                ));
            }
        }
        let mut exports: Vec<String> = module.exports().map(|e| e.name().to_owned()).collect();
        exports.sort();
        let export = |name: &str| module.get_export(name);
        if export(ABI_MARKER).is_none() {
            let other = exports.iter().find(|e| e.starts_with("walcast_abi_v"));
            return Err(UploadError::new(
                UploadCode::AbiUnsupported,
                match other {
                    Some(o) => {
                        format!("the module is built for {o}; this proxy speaks {ABI_MARKER}")
                    }
                    None => format!("the module has no {ABI_MARKER} export (the ABI marker)"),
                },
            ));
        }
        if !matches!(export("memory"), Some(ExternType::Memory(_))) {
            return Err(UploadError::new(
                UploadCode::MissingExport,
                "the module must export its linear memory as \"memory\"",
            ));
        }
        let func = |name: &str, params: usize, required: bool| -> Result<bool, UploadError> {
            match export(name) {
                Some(ExternType::Func(f)) if is_i32s(f.params(), params) && is_i32s(f.results(), 1) => Ok(true),
                Some(other) => Err(UploadError::new(
                    UploadCode::MissingExport,
                    format!(
                        "{name} has the wrong type ({}); expected a function of {params} i32 returning i32",
                        describe(&other)
                    ),
                )),
                None if required => Err(UploadError::new(
                    UploadCode::MissingExport,
                    format!("the module does not export {name}"),
                )),
                None => Ok(false),
            }
        };
        func("walcast_alloc", 1, true)?;
        func("walcast_filter", 2, true)?;
        let has_init = func("walcast_init", 2, false)?;
        let has_batch = func("walcast_filter_batch", 3, false)?;
        let header_only = match export(HEADER_ONLY_MARKER) {
            None => false,
            Some(ExternType::Func(_)) => true,
            Some(other) => {
                return Err(UploadError::new(
                    UploadCode::MissingExport,
                    format!(
                    "{HEADER_ONLY_MARKER} must be a function (a marker, never called), not a {}",
                    describe(&other)
                ),
                ))
            }
        };
        let pre = self.linker.instantiate_pre(&module).map_err(|e| {
            UploadError::new(
                UploadCode::InvalidModule,
                format!("cannot link the module: {e:#}"),
            )
        })?;
        Ok(Arc::new(FilterModule {
            id,
            pre,
            exports,
            has_init,
            has_batch,
            json: !header_only,
        }))
    }
}

fn describe(t: &ExternType) -> String {
    match t {
        ExternType::Func(f) => {
            let p: Vec<String> = f.params().map(|v| v.to_string()).collect();
            let r: Vec<String> = f.results().map(|v| v.to_string()).collect();
            format!("func({}) -> ({})", p.join(", "), r.join(", "))
        }
        ExternType::Memory(_) => "memory".into(),
        ExternType::Table(_) => "table".into(),
        ExternType::Global(_) => "global".into(),
        _ => "other".into(),
    }
}

/// The `walcast_v1::set_output(ptr, len) -> i32` import: 0 accepted,
/// -1 out of bounds, -2 over the output cap, -3 not UTF-8.
fn set_output(caller: &mut Caller<'_, Host>, ptr: u32, len: u32) -> i32 {
    let Some(Extern::Memory(mem)) = caller.get_export("memory") else {
        return -1;
    };
    let (data, host) = mem.data_and_store_mut(caller);
    match output_bytes(data, ptr, len, host.max_output, "set_output") {
        Ok(bytes) => {
            host.output = Some(bytes.to_vec());
            host.output_error = None;
            0
        }
        Err(e) => {
            let rc = match e.code {
                ErrorCode::OutputTooLarge => -2,
                ErrorCode::NotUtf8 => -3,
                _ => -1,
            };
            host.output_error = Some(e);
            rc
        }
    }
}

/// The output a filter gives at `ptr`, `len` (by `set_output` or in a
/// batch's decision cell; `what` names which in errors): inside the memory,
/// at most `max` bytes, UTF-8.
pub(crate) fn output_bytes<'a>(
    data: &'a [u8],
    ptr: u32,
    len: u32,
    max: usize,
    what: &str,
) -> Result<&'a [u8], FilterError> {
    let (start, end) = (ptr as usize, ptr as usize + len as usize);
    let Some(bytes) = data.get(start..end) else {
        return Err(FilterError::new(
            ErrorCode::BadOutput,
            format!("{what}({ptr}, {len}) is outside the module's memory"),
        ));
    };
    if bytes.len() > max {
        return Err(FilterError::new(
            ErrorCode::OutputTooLarge,
            format!("{what} of {} bytes; the limit is {max}", bytes.len()),
        ));
    }
    if std::str::from_utf8(bytes).is_err() {
        return Err(FilterError::new(
            ErrorCode::NotUtf8,
            format!("{what} was given bytes that are not UTF-8 (frames are text)"),
        ));
    }
    Ok(bytes)
}

fn create_private_dir(dir: &PathBuf) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create the filter cache {}: {e}", dir.display()))?;
    let meta = std::fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // /proc/self belongs to this process's effective user.
    let me = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .map_err(|e| format!("cannot tell the current user: {e}"))?;
    if meta.uid() != me || meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "the filter cache {} must belong to this user and be private (mode 0700): compiled artifacts are trusted",
            dir.display()
        ));
    }
    Ok(())
}

fn store_artifact(module: &Module, path: &std::path::Path) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let bytes = module.serialize().map_err(|e| format!("{e:#}"))?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| e.to_string())?;
    f.write_all(&bytes).map_err(|e| e.to_string())?;
    f.sync_all().map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, path).map_err(|e| e.to_string())
}
