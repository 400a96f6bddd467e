//! WASM plugins on wasmer (Keel WASM ABI, `include/keel/keel_wasm.h`).
//!
//! A [`WasmRuntime`] is created once per host. It owns the node's WASM settings
//! ([`WasmConfig`]: default limits and their ceilings, pool size, metering), the
//! compiled-module cache and the deadline watchdog thread. [`WasmRuntime::instantiate`]
//! turns a verified artifact into a running plugin generation:
//!
//! 1. look the compiled module up in the cache (authenticated with HMAC-SHA256 under the
//!    node's key before wasmer deserializes it), or compile exactly the verified bytes with
//!    Cranelift plus wasmer's `Metering` middleware, and cache the result;
//! 2. check the module before any of its code runs: no start function, imports only from
//!    module `"keel"` and only what the granted capabilities provide
//!    (`KEEL_ERR_IMPORT_NOT_GRANTED` names the first offender), the required exports with the
//!    right signatures, one memory no larger than the cap at its start;
//! 3. create the first instance (`keel_init`), read the function list, and keep instances
//!    in a lock-free pool (`instances: pooled`) or one behind the plugin's own lock
//!    (`instances: serial`).
//!
//! Every entry into the guest refills the fuel (deterministic, `KEEL_ERR_CPU_BUDGET`), arms
//! the wall-clock deadline (`KEEL_ERR_DEADLINE`) and notes whether memory growth hit the cap
//! (`KEEL_ERR_MEMORY_LIMIT`). An instance that trapped, ran out of budget, was interrupted or
//! broke the ABI is discarded; the next call gets a fresh one.

pub mod cache;
pub mod engine;
pub mod imports;
pub mod interrupt;
pub mod plugin;
pub mod pool;
pub mod tunables;
pub mod watchdog;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use wasmer::{Engine, ExternType, Module, Pages, Type};

use crate::artifact::Artifact;
use crate::error::Result;
use crate::manifest::{InstanceMode, Limits};
use crate::runtime::{Instance, LoadContext, LogLevel};
use crate::{bail, err};

pub use cache::{CacheConfig, ModuleCache};
pub use plugin::{EffectiveLimits, WasmPlugin};
pub use tunables::MemoryMode;

use cache::Lookup;
use plugin::{OptionalExports, PluginShared};

/// Limits of WASM plugins: used both for the node's defaults (what a manifest that says
/// nothing gets) and for its ceilings (the most a manifest can ask for).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WasmLimits {
    /// Memory cap per instance, MiB (wasm32 allows at most 4096).
    pub memory_mb: u64,
    /// Fuel per call (about one point per WebAssembly operator).
    pub fuel_per_call: u64,
    /// Wall-clock deadline per call.
    pub timeout_ms: u64,
    /// Largest output a call may return.
    pub max_output_bytes: u64,
}

impl WasmLimits {
    /// The limits a plugin runs under: what its manifest asks for (or the default), never
    /// above the ceiling.
    pub fn resolve(manifest: Option<&Limits>, defaults: &WasmLimits, ceilings: &WasmLimits) -> EffectiveLimits {
        let pick = |asked: Option<u64>, default: u64, ceiling: u64| asked.unwrap_or(default).min(ceiling);
        let m = manifest.cloned().unwrap_or_default();
        let memory_mb = pick(m.memory_mb, defaults.memory_mb, ceilings.memory_mb).min(4096);
        EffectiveLimits {
            memory_pages: (memory_mb * 16) as u32,
            fuel_per_call: pick(m.fuel_per_call, defaults.fuel_per_call, ceilings.fuel_per_call).min(i64::MAX as u64),
            timeout: Duration::from_millis(pick(m.timeout_ms, defaults.timeout_ms, ceilings.timeout_ms)),
            max_output_bytes: pick(m.max_output_bytes, defaults.max_output_bytes, ceilings.max_output_bytes)
                .min(i32::MAX as u64) as usize,
        }
    }
}

/// Node-wide settings of the WASM runtime.
#[derive(Debug, Clone)]
pub struct WasmConfig {
    pub defaults: WasmLimits,
    pub ceilings: WasmLimits,
    /// Most idle instances a pooled plugin keeps (more run concurrently if needed; the
    /// extra ones are dropped when they finish).
    pub pool_size: usize,
    /// Compile with instruction metering (fuel). Off, only the deadline bounds a call.
    pub metering: bool,
    /// How often the watchdog looks at running calls: deadlines fire up to one tick late.
    pub watchdog_tick: Duration,
    /// Compiled-module cache; `None` compiles every load.
    pub cache: Option<CacheConfig>,
    /// How instance memories use the address space (see [`MemoryMode`] and docs/wasm.md).
    /// Default [`MemoryMode::Capped`]: the plugin's memory cap + 64 KiB reserved per instance.
    pub memory: MemoryMode,
}

impl Default for WasmConfig {
    fn default() -> Self {
        WasmConfig {
            defaults: WasmLimits {
                memory_mb: 64,
                fuel_per_call: 1_000_000_000,
                timeout_ms: 1_000,
                max_output_bytes: 16 << 20,
            },
            ceilings: WasmLimits {
                memory_mb: 4096,
                fuel_per_call: 1_000_000_000_000,
                timeout_ms: 60_000,
                max_output_bytes: 1 << 30,
            },
            pool_size: std::thread::available_parallelism().map(|n| n.get() * 2).unwrap_or(8),
            metering: true,
            watchdog_tick: Duration::from_millis(1),
            cache: None,
            memory: MemoryMode::default(),
        }
    }
}

impl WasmConfig {
    /// Refuse settings no runtime can honour: zero limits, a memory cap beyond wasm32's
    /// 4 GiB, a zero pool, a watchdog tick under 100 µs, or an all-zero cache key (anyone
    /// could forge cache entries).
    pub fn validate(&self) -> Result<()> {
        for (what, l) in [("defaults", &self.defaults), ("ceilings", &self.ceilings)] {
            if l.memory_mb == 0 || l.memory_mb > 4096 {
                bail!(
                    KEEL_ERR_INVALID_ARGUMENT,
                    "{what}.memory_mb must be 1..=4096, not {}",
                    l.memory_mb
                );
            }
            if l.fuel_per_call == 0 || l.timeout_ms == 0 || l.max_output_bytes == 0 {
                bail!(
                    KEEL_ERR_INVALID_ARGUMENT,
                    "{what}: fuel_per_call, timeout_ms and max_output_bytes must be > 0"
                );
            }
        }
        if self.pool_size == 0 {
            bail!(KEEL_ERR_INVALID_ARGUMENT, "pool_size must be > 0");
        }
        if self.watchdog_tick < Duration::from_micros(100) {
            bail!(KEEL_ERR_INVALID_ARGUMENT, "watchdog_tick must be at least 100 µs");
        }
        if let Some(c) = &self.cache {
            if c.key == [0u8; 32] {
                bail!(
                    KEEL_ERR_INVALID_ARGUMENT,
                    "the module cache key must be a node-local secret, not all zeros"
                );
            }
        }
        Ok(())
    }
}

/// Compiled-module cache counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Modules deserialized from an authenticated entry.
    pub hits: u64,
    /// Modules compiled (no usable entry, or no cache).
    pub compiles: u64,
    /// Entries found but refused (tag mismatch, truncation, wasmer refused them); each was
    /// removed and the module recompiled.
    pub rejected: u64,
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    compiles: AtomicU64,
    rejected: AtomicU64,
}

/// The WASM runtime of one host.
pub struct WasmRuntime {
    config: WasmConfig,
    cache: Option<ModuleCache>,
    dog: Arc<watchdog::Watchdog>,
    counters: Counters,
    /// Serialises cache writes of the same entry by concurrent loads (never taken by calls).
    cache_lock: Mutex<()>,
}

impl std::fmt::Debug for WasmRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmRuntime").field("config", &self.config).finish()
    }
}

/// (name, required, params, results) of every export the ABI knows.
const EXPORTS: &[(&str, bool, &[Type], &[Type])] = &[
    ("keel_abi_version", true, &[], &[Type::I32]),
    ("keel_functions", true, &[], &[Type::I64]),
    ("keel_alloc", true, &[Type::I32], &[Type::I32]),
    ("keel_call", true, &[Type::I32, Type::I32, Type::I32], &[Type::I64]),
    ("keel_free", false, &[Type::I32, Type::I32], &[]),
    ("keel_init", false, &[Type::I32, Type::I32], &[Type::I64]),
    ("keel_save_state", false, &[], &[Type::I64]),
    ("keel_restore_state", false, &[Type::I32, Type::I32], &[Type::I64]),
    (
        "keel_restore_state_versioned",
        false,
        &[Type::I32, Type::I32, Type::I32, Type::I32],
        &[Type::I64],
    ),
    ("keel_health", false, &[], &[Type::I32]),
    ("_initialize", false, &[], &[]),
];

impl WasmRuntime {
    pub fn new(config: WasmConfig) -> Result<WasmRuntime> {
        let cache = config.cache.clone().map(ModuleCache::open).transpose()?;
        let dog = watchdog::Watchdog::start(config.watchdog_tick)
            .map_err(|e| err!(KEEL_ERR_INTERNAL, "starting the WASM watchdog thread failed: {e}"))?;
        Ok(WasmRuntime {
            config,
            cache,
            dog: Arc::new(dog),
            counters: Counters::default(),
            cache_lock: Mutex::new(()),
        })
    }

    pub fn config(&self) -> &WasmConfig {
        &self.config
    }

    pub fn cache_stats(&self) -> CacheStats {
        CacheStats {
            hits: self.counters.hits.load(Ordering::Relaxed),
            compiles: self.counters.compiles.load(Ordering::Relaxed),
            rejected: self.counters.rejected.load(Ordering::Relaxed),
        }
    }

    /// Instances the watchdog currently watches (every live instance of every plugin).
    pub fn live_instances(&self) -> usize {
        self.dog.watched()
    }

    /// Load a verified WASM artifact as a plugin generation.
    pub fn instantiate(&self, artifact: &Artifact, ctx: &LoadContext<'_>) -> Result<Box<dyn Instance>> {
        Ok(Box::new(self.load(artifact, ctx)?))
    }

    /// [`WasmRuntime::instantiate`] returning the concrete type.
    pub fn load(&self, artifact: &Artifact, ctx: &LoadContext<'_>) -> Result<WasmPlugin> {
        let m = ctx.manifest;
        let name = m.name.as_str();
        let Some(bytes) = artifact.bytes() else {
            bail!(
                KEEL_ERR_INTERNAL,
                "plugin '{name}': a WASM artifact must be held in memory, not as a sealed file"
            );
        };
        let limits = WasmLimits::resolve(m.limits.as_ref(), &self.config.defaults, &self.config.ceilings);
        let (engine, module) = self.module(name, artifact.sha256(), bytes, Pages(limits.memory_pages), ctx)?;
        let memory_mode = self.config.memory;
        let (used_imports, exports) = check_module(name, &module, ctx, &limits)?;
        let pooled = m.instances.unwrap_or_default() == InstanceMode::Pooled;
        let shared = PluginShared {
            name: Arc::from(name),
            engine,
            module,
            used_imports,
            services: ctx.services.clone(),
            metrics: ctx
                .granted
                .has("metrics:write")
                .then(|| ctx.services.metrics.set_for(name)),
            generation: ctx.generation,
            config_json: m.config_json().into_bytes(),
            limits,
            metering: self.config.metering,
            exports,
            dog: self.dog.clone(),
            pooled,
            restored: Mutex::new(ctx.restored_state.map(Arc::from)),
            restored_version: Mutex::new(ctx.restored_state_version.map(Arc::from)),
            epoch: AtomicU64::new(0),
            memory_bytes: AtomicU64::new(0),
            fixed_base: memory_mode.fixed_base(),
        };
        WasmPlugin::start(shared, self.config.pool_size)
    }

    /// The compiled module: from the cache when an authenticated entry exists, else compiled
    /// (and cached).
    fn module(
        &self,
        name: &str,
        sha256: &[u8; 32],
        bytes: &[u8],
        cap: Pages,
        ctx: &LoadContext<'_>,
    ) -> Result<(Engine, Module)> {
        let mode = self.config.memory;
        let key = engine::engine_key(cap, self.config.metering, mode);
        if let Some(cache) = &self.cache {
            match cache.load(sha256, &key) {
                Lookup::Hit(serialized) => {
                    let engine = engine::headless(cap, mode);
                    // SAFETY: the bytes carry a valid HMAC under this node's key over this
                    // module's digest and engine key: this node wrote them from
                    // `Module::serialize` of the same module and engine configuration.
                    match unsafe { Module::deserialize(&engine, serialized) } {
                        Ok(module) => {
                            self.counters.hits.fetch_add(1, Ordering::Relaxed);
                            return Ok((engine, module));
                        }
                        Err(e) => {
                            cache.discard(sha256, &key);
                            self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                            ctx.services.log(
                                name,
                                LogLevel::Warn,
                                &format!("compiled-module cache entry refused by wasmer ({e}); recompiling"),
                            );
                        }
                    }
                }
                Lookup::Rejected(why) => {
                    self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                    ctx.services.log(
                        name,
                        LogLevel::Warn,
                        &format!("compiled-module cache entry rejected and removed ({why}); recompiling"),
                    );
                }
                Lookup::Miss => {}
            }
        }
        let engine = engine::compiling(cap, self.config.metering, mode);
        let module = Module::from_binary(&engine, bytes).map_err(|e| {
            err!(
                KEEL_ERR_WASM_COMPILE,
                "plugin '{name}': the module does not compile: {e}"
            )
        })?;
        self.counters.compiles.fetch_add(1, Ordering::Relaxed);
        if let Some(cache) = &self.cache {
            let stored = module
                .serialize()
                .map_err(|e| err!(KEEL_ERR_INTERNAL, "serializing: {e}"))
                .and_then(|b| {
                    let _g = self.cache_lock.lock();
                    cache.store(sha256, &key, &b)
                });
            if let Err(e) = stored {
                ctx.services.log(
                    name,
                    LogLevel::Warn,
                    &format!("could not write the compiled-module cache: {e}"),
                );
            }
        }
        Ok((engine, module))
    }
}

/// Everything that can be checked before instantiation (no guest code has run yet).
fn check_module(
    name: &str,
    module: &Module,
    ctx: &LoadContext<'_>,
    limits: &EffectiveLimits,
) -> Result<(imports::UsedImports, OptionalExports)> {
    let info = module.info();
    if info.start_function.is_some() {
        bail!(
            KEEL_ERR_WASM_INSTANTIATE,
            "plugin '{name}': the module has a start function; Keel runs guest code only through the keel_* exports"
        );
    }
    let used = imports::check_imports(module, ctx.granted, &ctx.services.host_fns)
        .map_err(|e| e.context(format!("plugin '{name}'")))?;

    let mut found = [false; EXPORTS.len()];
    let mut memory_export = None;
    for ex in module.exports() {
        match ex.ty() {
            ExternType::Memory(ty) if ex.name() == "memory" => memory_export = Some(*ty),
            ExternType::Function(fty) => {
                if let Some(i) = EXPORTS.iter().position(|(n, ..)| *n == ex.name()) {
                    let (n, _, params, results) = EXPORTS[i];
                    if fty.params() != params || fty.results() != results {
                        bail!(
                            KEEL_ERR_WASM_INSTANTIATE,
                            "plugin '{name}': export '{n}' has type {fty}, the Keel WASM ABI needs {}",
                            wasmer::FunctionType::new(params, results)
                        );
                    }
                    found[i] = true;
                }
            }
            _ => {}
        }
    }
    for (i, (n, required, ..)) in EXPORTS.iter().enumerate() {
        if *required && !found[i] {
            bail!(
                KEEL_ERR_WASM_INSTANTIATE,
                "plugin '{name}': the module does not export '{n}' (see keel_wasm.h)"
            );
        }
    }
    let Some(mem) = memory_export else {
        bail!(
            KEEL_ERR_WASM_INSTANTIATE,
            "plugin '{name}': the module does not export its memory as 'memory'"
        );
    };
    if info.memories.len() != 1 {
        bail!(
            KEEL_ERR_WASM_INSTANTIATE,
            "plugin '{name}': the module must have exactly one memory"
        );
    }
    if mem.shared {
        bail!(
            KEEL_ERR_WASM_INSTANTIATE,
            "plugin '{name}': shared memories are not supported"
        );
    }
    if mem.minimum.0 > limits.memory_pages {
        bail!(
            KEEL_ERR_MEMORY_LIMIT,
            "plugin '{name}': the module's memory starts at {} pages ({} KiB), above the plugin's cap of {} MiB",
            mem.minimum.0,
            mem.minimum.0 as u64 * 64,
            limits.memory_pages / 16
        );
    }
    let has = |n: &str| {
        EXPORTS
            .iter()
            .position(|(x, ..)| *x == n)
            .map(|i| found[i])
            .unwrap_or(false)
    };
    Ok((
        used,
        OptionalExports {
            free: has("keel_free"),
            init: has("keel_init"),
            save_state: has("keel_save_state"),
            restore_state: has("keel_restore_state"),
            restore_state_versioned: has("keel_restore_state_versioned"),
            health: has("keel_health"),
            initialize: has("_initialize"),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_use_defaults_and_clamp_to_ceilings() {
        let c = WasmConfig::default();
        let l = WasmLimits::resolve(None, &c.defaults, &c.ceilings);
        assert_eq!(l.memory_pages, 64 * 16);
        assert_eq!(l.timeout, Duration::from_millis(1000));
        let asked = Limits {
            memory_mb: Some(100_000),
            fuel_per_call: Some(5),
            timeout_ms: Some(3_600_000),
            max_output_bytes: None,
        };
        let l = WasmLimits::resolve(Some(&asked), &c.defaults, &c.ceilings);
        assert_eq!(l.memory_pages, 4096 * 16);
        assert_eq!(l.fuel_per_call, 5);
        assert_eq!(l.timeout, Duration::from_millis(60_000));
        assert_eq!(l.max_output_bytes, 16 << 20);
    }
}
