//! WASM plugins on wasmer or wasmtime (Keel WASM ABI, `include/keel/keel_wasm.h`).
//!
//! The node picks the engine ([`WasmConfig::engine`], wasmer by default); a manifest may ask
//! for the other one (`"wasm_engine"`) where the node allows it. Both run the same ABI, the
//! same host functions ([`imports`]), the same call path ([`plugin`]) and the same watchdog;
//! [`wr`] and [`wt`] are the engine-specific parts (docs/wasm.md compares them).
//!
//! A [`WasmRuntime`] is created once per host. It owns the node's WASM settings
//! ([`WasmConfig`]: default limits and their ceilings, pool size, metering), the
//! compiled-module cache and the deadline watchdog thread. [`WasmRuntime::instantiate`]
//! turns a verified artifact into a running plugin generation:
//!
//! 1. look the compiled module up in the cache (authenticated with HMAC-SHA256 under the
//!    node's key before the engine deserializes it), or compile exactly the verified bytes
//!    (wasmer: Cranelift plus the `Metering` middleware and the stop checks; wasmtime:
//!    Cranelift with fuel and epoch interruption), and cache the result;
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

/// The Keel WASM ABI's exports (`keel_wasm.h`), by name and signature, once for both engine
/// backends. `keel_exports!(struct F)` declares a backend's `Fns` with `F<Params, Results>`
/// its engine's typed-function type; `keel_exports!(build exports)` fills one from the
/// backend's own `get!($name)` / `get!(opt $present, $name)` lookup macro, which must be in
/// scope where it is invoked (`exports`: the plugin's `OptionalExports`).
macro_rules! keel_exports {
    (struct $F:ident) => {
        struct Fns {
            abi_version: $F<(), i32>,
            functions: $F<(), i64>,
            alloc: $F<i32, i32>,
            call: $F<(i32, i32, i32), i64>,
            free: Option<$F<(i32, i32), ()>>,
            init: Option<$F<(i32, i32), i64>>,
            save_state: Option<$F<(), i64>>,
            restore_state: Option<$F<(i32, i32), i64>>,
            restore_state_versioned: Option<$F<(i32, i32, i32, i32), i64>>,
            health: Option<$F<(), i32>>,
            initialize: Option<$F<(), ()>>,
        }
    };
    (build $o:expr) => {{
        let o = $o;
        Fns {
            abi_version: get!("keel_abi_version"),
            functions: get!("keel_functions"),
            alloc: get!("keel_alloc"),
            call: get!("keel_call"),
            free: get!(opt o.free, "keel_free"),
            init: get!(opt o.init, "keel_init"),
            save_state: get!(opt o.save_state, "keel_save_state"),
            restore_state: get!(opt o.restore_state, "keel_restore_state"),
            restore_state_versioned: get!(opt o.restore_state_versioned, "keel_restore_state_versioned"),
            health: get!(opt o.health, "keel_health"),
            initialize: get!(opt o.initialize, "_initialize"),
        }
    }};
}

pub mod cache;
pub mod engine;
pub mod imports;
pub mod interrupt;
pub mod plugin;
pub mod pool;
pub mod tier;
pub mod tunables;
pub mod watchdog;
pub mod wr;
pub mod wt;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use wasmer::{ExternType, Module, Pages, Type};

use crate::artifact::Artifact;
use crate::error::Result;
use crate::manifest::{InstanceMode, Limits};
use crate::runtime::{Instance, LoadContext, LogLevel};
use crate::{bail, err};

pub use cache::{CacheConfig, ModuleCache};
pub use plugin::{EffectiveLimits, WasmPlugin};
pub use tier::{TierUp, TierWatch};
pub use tunables::MemoryMode;

use cache::Lookup;
use plugin::{Code, OptionalExports, PluginShared};

/// The engine that compiles and runs a WASM plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum WasmEngine {
    /// wasmer 7.4.2 (Cranelift): the default.
    #[default]
    Wasmer,
    /// wasmtime 48 (Cranelift): fuel, epoch interruption, bounded memory reservations.
    Wasmtime,
}

impl WasmEngine {
    /// The name used in configuration, manifests and messages (`wasmer`, `wasmtime`).
    pub fn as_str(self) -> &'static str {
        match self {
            WasmEngine::Wasmer => "wasmer",
            WasmEngine::Wasmtime => "wasmtime",
        }
    }

    /// The engine called `name` (see [`WasmEngine::as_str`]).
    pub fn parse(name: &str) -> Option<WasmEngine> {
        [WasmEngine::Wasmer, WasmEngine::Wasmtime]
            .into_iter()
            .find(|e| e.as_str() == name)
    }

    /// The default engine of a node that sets none: wasmer, unless the environment variable
    /// `KEEL_WASM_ENGINE` names another engine (how CI runs the WASM suites on wasmtime;
    /// any other value is ignored).
    pub fn node_default() -> WasmEngine {
        std::env::var("KEEL_WASM_ENGINE")
            .ok()
            .and_then(|v| WasmEngine::parse(v.trim()))
            .unwrap_or_default()
    }
}

/// The node's policy for compiling WASM plugins on wasmer (docs/wasm.md, "Compilers and
/// tiering"). Plugins on wasmtime always use Cranelift.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum WasmCompiler {
    /// Cranelift, optimised for speed: the fastest code, the slowest compile.
    #[default]
    Cranelift,
    /// Singlepass: compiles in about linear time; its code runs slower.
    Singlepass,
    /// Singlepass at load (fast first call), then Cranelift compiled in the background and
    /// switched to ([`WasmPlugin::tier`], [`WasmPlugin::wait_for_tier_up`]); a compiled-module
    /// cache hit of Cranelift code skips the first tier.
    Tiered,
}

impl WasmCompiler {
    /// The name used in configuration and messages (`cranelift`, `singlepass`, `tiered`).
    pub fn as_str(self) -> &'static str {
        match self {
            WasmCompiler::Cranelift => "cranelift",
            WasmCompiler::Singlepass => "singlepass",
            WasmCompiler::Tiered => "tiered",
        }
    }

    /// The policy called `name` (see [`WasmCompiler::as_str`]).
    pub fn parse(name: &str) -> Option<WasmCompiler> {
        [WasmCompiler::Cranelift, WasmCompiler::Singlepass, WasmCompiler::Tiered]
            .into_iter()
            .find(|c| c.as_str() == name)
    }

    /// The policy of a node that sets none: Cranelift, unless the environment variable
    /// `KEEL_WASM_COMPILER` names another policy (how the WASM suites run on Singlepass;
    /// any other value is ignored).
    pub fn node_default() -> WasmCompiler {
        std::env::var("KEEL_WASM_COMPILER")
            .ok()
            .and_then(|v| WasmCompiler::parse(v.trim()))
            .unwrap_or_default()
    }
}

/// The compiler that made a plugin's running code (its tier).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WasmTier {
    /// wasmer's Singlepass (the first tier of [`WasmCompiler::Tiered`]).
    Singlepass,
    /// Cranelift (wasmer's, or wasmtime's).
    Cranelift,
}

impl WasmTier {
    /// `singlepass` or `cranelift`.
    pub fn as_str(self) -> &'static str {
        match self {
            WasmTier::Singlepass => "singlepass",
            WasmTier::Cranelift => "cranelift",
        }
    }
}

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
    /// The engine of this node's WASM plugins ([`WasmEngine::node_default`]: wasmer).
    pub engine: WasmEngine,
    /// Whether a manifest may pick the other engine (`"wasm_engine"`); when false, a manifest
    /// that asks for an engine other than [`WasmConfig::engine`] is refused with
    /// `KEEL_ERR_MANIFEST_INVALID`.
    pub manifest_engine: bool,
    /// How plugins on wasmer are compiled ([`WasmCompiler::node_default`]: Cranelift).
    /// Plugins on wasmtime (the node's engine, or a manifest's choice) compile with
    /// Cranelift whatever this says.
    pub compiler: WasmCompiler,
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
            engine: WasmEngine::node_default(),
            manifest_engine: false,
            compiler: WasmCompiler::node_default(),
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
    /// Entries found but refused (tag mismatch, truncation, the engine refused them); each was
    /// removed and the module recompiled.
    pub rejected: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    hits: AtomicU64,
    pub(crate) compiles: AtomicU64,
    rejected: AtomicU64,
}

/// The WASM runtime of one host.
pub struct WasmRuntime {
    config: WasmConfig,
    /// Shared with the tier-up threads of tiered plugins (they store Cranelift code).
    cache: Option<Arc<ModuleCache>>,
    dog: Arc<watchdog::Watchdog>,
    counters: Arc<Counters>,
    /// Serialises cache writes of the same entry by concurrent loads and tier-ups (never
    /// taken by calls).
    cache_lock: Arc<Mutex<()>>,
    /// The wasmtime engines made so far (one per distinct setting).
    wasmtime: wt::Engines,
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
        let cache = config.cache.clone().map(ModuleCache::open).transpose()?.map(Arc::new);
        let dog = watchdog::Watchdog::start(config.watchdog_tick)
            .map_err(|e| err!(KEEL_ERR_INTERNAL, "starting the WASM watchdog thread failed: {e}"))?;
        Ok(WasmRuntime {
            config,
            cache,
            dog: Arc::new(dog),
            counters: Arc::default(),
            cache_lock: Arc::default(),
            wasmtime: wt::Engines::default(),
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
        let engine = self.engine_for(name, m.wasm_engine.as_deref())?;
        let memory_mode = self.config.memory;
        let mut tier_up = None;
        let (code, used_imports, exports, fixed_base) = match engine {
            WasmEngine::Wasmer => {
                let cap = Pages(limits.memory_pages);
                let code = match self.config.compiler {
                    WasmCompiler::Cranelift => {
                        self.wasmer_module(name, artifact.sha256(), bytes, cap, WasmTier::Cranelift, ctx)?
                    }
                    WasmCompiler::Singlepass => {
                        self.wasmer_module(name, artifact.sha256(), bytes, cap, WasmTier::Singlepass, ctx)?
                    }
                    WasmCompiler::Tiered => match self.cached_wasmer(name, artifact.sha256(), cap, ctx) {
                        // Cranelift code from the cache (an earlier tier-up or load wrote it).
                        Some(code) => code,
                        None => {
                            // Singlepass now (not cached: the tier-up writes the Cranelift
                            // code under this module's entry), Cranelift in the background.
                            let code = self.compile_wasmer(name, bytes, cap, WasmTier::Singlepass)?;
                            self.counters.compiles.fetch_add(1, Ordering::Relaxed);
                            tier_up = Some(tier::Job {
                                name: Arc::from(name),
                                bytes: bytes.clone(),
                                sha256: *artifact.sha256(),
                                cap,
                                metering: self.config.metering,
                                mode: memory_mode,
                                cache: self.cache.clone(),
                                cache_lock: self.cache_lock.clone(),
                                counters: self.counters.clone(),
                            });
                            code
                        }
                    },
                };
                let (used, exports) = check_module(name, &Shape::of_wasmer(&code.module), ctx, &limits)?;
                (Code::Wasmer(code), used, exports, memory_mode.fixed_base())
            }
            WasmEngine::Wasmtime => {
                let settings = wt::EngineSettings::new(self.config.metering, memory_mode, limits.memory_pages);
                let (engine, module) = self.wasmtime_module(name, artifact.sha256(), bytes, settings, ctx)?;
                let shape = Shape::of_wasmtime(&module, bytes).map_err(|e| e.context(format!("plugin '{name}'")))?;
                let (used, exports) = check_module(name, &shape, ctx, &limits)?;
                let code = wt::Code::new(name, engine, module, &used)?;
                (Code::Wasmtime(code), used, exports, memory_mode.fixed_base())
            }
        };
        let pooled = m.instances.unwrap_or_default() == InstanceMode::Pooled;
        let shared = PluginShared {
            name: Arc::from(name),
            code: ArcSwap::from_pointee(code),
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
            fixed_base,
        };
        let mut plugin = WasmPlugin::start(shared, self.config.pool_size)?;
        if let Some(job) = tier_up {
            // Only once the first tier has started (keel_init passed): a module that fails to
            // load never costs a Cranelift compile.
            plugin.start_tier_up(job)?;
        }
        Ok(plugin)
    }

    /// The engine of plugin `name`, whose manifest asks for `asked` (or nothing).
    fn engine_for(&self, name: &str, asked: Option<&str>) -> Result<WasmEngine> {
        let node = self.config.engine;
        let Some(asked) = asked else { return Ok(node) };
        let Some(engine) = WasmEngine::parse(asked) else {
            bail!(
                KEEL_ERR_MANIFEST_INVALID,
                "plugin '{name}': wasm_engine '{asked}' is not an engine (wasmer, wasmtime)"
            );
        };
        if engine != node && !self.config.manifest_engine {
            bail!(
                KEEL_ERR_MANIFEST_INVALID,
                "plugin '{name}': its manifest asks for wasm_engine '{asked}', but this node runs WASM plugins on {} and does not let manifests choose (keel_host_set_wasm_engine)",
                node.as_str()
            );
        }
        Ok(engine)
    }

    /// A compiled module: from the cache when an authenticated entry exists (and the engine
    /// accepts it), else compiled (and cached). `key` names everything the code depends on.
    #[allow(clippy::too_many_arguments)]
    fn cached<T>(
        &self,
        name: &str,
        sha256: &[u8; 32],
        key: &str,
        engine_name: &str,
        ctx: &LoadContext<'_>,
        deserialize: impl FnOnce(&[u8]) -> std::result::Result<T, String>,
        compile: impl FnOnce() -> Result<T>,
        serialize: impl FnOnce(&T) -> std::result::Result<Vec<u8>, String>,
    ) -> Result<T> {
        if let Some(cache) = &self.cache {
            match cache.load(sha256, key) {
                Lookup::Hit(serialized) => match deserialize(serialized.as_ref()) {
                    Ok(module) => {
                        self.counters.hits.fetch_add(1, Ordering::Relaxed);
                        return Ok(module);
                    }
                    Err(e) => {
                        cache.discard(sha256, key);
                        self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                        ctx.services.log(
                            name,
                            LogLevel::Warn,
                            &format!("compiled-module cache entry refused by {engine_name} ({e}); recompiling"),
                        );
                    }
                },
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
        let module = compile()?;
        self.counters.compiles.fetch_add(1, Ordering::Relaxed);
        if let Some(cache) = &self.cache {
            let stored = serialize(&module)
                .map_err(|e| err!(KEEL_ERR_INTERNAL, "serializing: {e}"))
                .and_then(|b| {
                    let _g = self.cache_lock.lock();
                    cache.store(sha256, key, &b)
                });
            if let Err(e) = stored {
                ctx.services.log(
                    name,
                    LogLevel::Warn,
                    &format!("could not write the compiled-module cache: {e}"),
                );
            }
        }
        Ok(module)
    }

    /// The module compiled by wasmer with `tier`'s compiler (an engine of its own per
    /// plugin: see `engine`), from the cache when it holds that compiler's code.
    fn wasmer_module(
        &self,
        name: &str,
        sha256: &[u8; 32],
        bytes: &[u8],
        cap: Pages,
        tier: WasmTier,
        ctx: &LoadContext<'_>,
    ) -> Result<wr::Code> {
        let mode = self.config.memory;
        let key = engine::engine_key(tier, cap, self.config.metering, mode);
        self.cached(
            name,
            sha256,
            &key,
            "wasmer",
            ctx,
            |serialized| Self::deserialize_wasmer(serialized, cap, mode, tier),
            || self.compile_wasmer(name, bytes, cap, tier),
            |code| code.module.serialize().map(|b| b.to_vec()).map_err(|e| e.to_string()),
        )
    }

    /// Cranelift code of this module from the cache, if it holds an entry that authenticates
    /// and deserializes (a tiered load: a miss compiles Singlepass and tiers up).
    fn cached_wasmer(&self, name: &str, sha256: &[u8; 32], cap: Pages, ctx: &LoadContext<'_>) -> Option<wr::Code> {
        let cache = self.cache.as_ref()?;
        let (mode, tier) = (self.config.memory, WasmTier::Cranelift);
        let key = engine::engine_key(tier, cap, self.config.metering, mode);
        match cache.load(sha256, &key) {
            Lookup::Hit(serialized) => match Self::deserialize_wasmer(serialized.as_ref(), cap, mode, tier) {
                Ok(code) => {
                    self.counters.hits.fetch_add(1, Ordering::Relaxed);
                    Some(code)
                }
                Err(e) => {
                    cache.discard(sha256, &key);
                    self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                    ctx.services.log(
                        name,
                        LogLevel::Warn,
                        &format!("compiled-module cache entry refused by wasmer ({e}); compiling"),
                    );
                    None
                }
            },
            Lookup::Rejected(why) => {
                self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                ctx.services.log(
                    name,
                    LogLevel::Warn,
                    &format!("compiled-module cache entry rejected and removed ({why}); compiling"),
                );
                None
            }
            Lookup::Miss => None,
        }
    }

    fn deserialize_wasmer(
        serialized: &[u8],
        cap: Pages,
        mode: MemoryMode,
        tier: WasmTier,
    ) -> std::result::Result<wr::Code, String> {
        let engine = engine::headless(cap, mode);
        // SAFETY: the bytes carry a valid HMAC under this node's key over this module's
        // digest and engine key (which names the compiler): this node wrote them from
        // `Module::serialize` of the same module and engine configuration.
        let module = unsafe { Module::deserialize(&engine, serialized) }.map_err(|e| e.to_string())?;
        Ok(wr::Code { engine, module, tier })
    }

    fn compile_wasmer(&self, name: &str, bytes: &[u8], cap: Pages, tier: WasmTier) -> Result<wr::Code> {
        let engine = engine::compiling(tier, cap, self.config.metering, self.config.memory);
        let module = Module::from_binary(&engine, bytes).map_err(|e| {
            err!(
                KEEL_ERR_WASM_COMPILE,
                "plugin '{name}': the module does not compile: {e}"
            )
        })?;
        Ok(wr::Code { engine, module, tier })
    }

    /// The module compiled by wasmtime (engines shared by plugins with the same settings).
    fn wasmtime_module(
        &self,
        name: &str,
        sha256: &[u8; 32],
        bytes: &[u8],
        settings: wt::EngineSettings,
        ctx: &LoadContext<'_>,
    ) -> Result<(wasmtime::Engine, wasmtime::Module)> {
        let engine = self.wasmtime.get(settings)?;
        let module = self.cached(
            name,
            sha256,
            &settings.cache_key(),
            "wasmtime",
            ctx,
            |serialized| {
                // SAFETY: as for wasmer above: authenticated bytes this node wrote from
                // `Module::serialize` of the same module under the same engine settings (the
                // key names them); wasmtime checks its own version and settings again.
                unsafe { wasmtime::Module::deserialize(&engine, serialized) }.map_err(|e| e.to_string())
            },
            || {
                wasmtime::Module::from_binary(&engine, bytes).map_err(|e| {
                    err!(
                        KEEL_ERR_WASM_COMPILE,
                        "plugin '{name}': the module does not compile: {e:#}"
                    )
                })
            },
            |module| module.serialize().map_err(|e| e.to_string()),
        )?;
        Ok((engine, module))
    }
}

/// What the load-time checks look at, as either engine describes the module.
pub struct Shape {
    imports: Vec<imports::Import>,
    /// Function exports and their signatures.
    functions: Vec<(String, wasmer::FunctionType)>,
    /// The memory exported as "memory": (minimum pages, shared).
    memory_export: Option<(u64, bool)>,
    memories: usize,
    start: bool,
}

impl Shape {
    fn of_wasmer(module: &Module) -> Shape {
        let info = module.info();
        let mut functions = Vec::new();
        let mut memory_export = None;
        for ex in module.exports() {
            match ex.ty() {
                ExternType::Memory(ty) if ex.name() == "memory" => {
                    memory_export = Some((ty.minimum.0 as u64, ty.shared))
                }
                ExternType::Function(fty) => functions.push((ex.name().to_string(), fty.clone())),
                _ => {}
            }
        }
        Shape {
            imports: imports::Import::of_wasmer(module),
            functions,
            memory_export,
            memories: info.memories.len(),
            start: info.start_function.is_some(),
        }
    }

    /// wasmtime's description, plus what it does not describe (the start function and the
    /// number of memories) read from the module's bytes.
    fn of_wasmtime(module: &wasmtime::Module, bytes: &[u8]) -> Result<Shape> {
        use wasmer::wasmparser::{Parser, Payload, TypeRef};
        let ty = |v: &wasmtime::ValType| match v {
            wasmtime::ValType::I32 => Type::I32,
            wasmtime::ValType::I64 => Type::I64,
            wasmtime::ValType::F32 => Type::F32,
            wasmtime::ValType::F64 => Type::F64,
            wasmtime::ValType::V128 => Type::V128,
            wasmtime::ValType::Ref(r) if r.heap_type().is_func() => Type::FuncRef,
            wasmtime::ValType::Ref(_) => Type::ExternRef,
        };
        let fty = |f: &wasmtime::FuncType| {
            let p: Vec<Type> = f.params().map(|v| ty(&v)).collect();
            let r: Vec<Type> = f.results().map(|v| ty(&v)).collect();
            wasmer::FunctionType::new(p, r)
        };
        let imports = module
            .imports()
            .map(|imp| imports::Import {
                module: imp.module().to_string(),
                name: imp.name().to_string(),
                func: match imp.ty() {
                    wasmtime::ExternType::Func(f) => Some(fty(&f)),
                    _ => None,
                },
                kind: format!("{:?}", imp.ty()),
            })
            .collect();
        let mut functions = Vec::new();
        let mut memory_export = None;
        for ex in module.exports() {
            // Reserved on both engines (wasmer's stop checks export them), so that a module
            // loads on one engine exactly when it loads on the other.
            if [interrupt::STOP_GLOBAL, interrupt::BEAT_GLOBAL].contains(&ex.name()) {
                bail!(
                    KEEL_ERR_WASM_COMPILE,
                    "the module already exports `{}`, a name Keel reserves",
                    ex.name()
                );
            }
            match ex.ty() {
                wasmtime::ExternType::Memory(m) if ex.name() == "memory" => {
                    memory_export = Some((m.minimum(), m.is_shared()))
                }
                wasmtime::ExternType::Func(f) => functions.push((ex.name().to_string(), fty(&f))),
                _ => {}
            }
        }
        let (mut memories, mut start) = (0usize, false);
        let bad =
            |e: wasmer::wasmparser::BinaryReaderError| err!(KEEL_ERR_WASM_COMPILE, "the module does not parse: {e}");
        for payload in Parser::new(0).parse_all(bytes) {
            match payload.map_err(bad)? {
                Payload::StartSection { .. } => start = true,
                Payload::MemorySection(r) => memories += r.count() as usize,
                Payload::ImportSection(r) => {
                    for imp in r.into_imports() {
                        if matches!(imp.map_err(bad)?.ty, TypeRef::Memory(_)) {
                            memories += 1;
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(Shape {
            imports,
            functions,
            memory_export,
            memories,
            start,
        })
    }
}

/// Everything that can be checked before instantiation (no guest code has run yet).
fn check_module(
    name: &str,
    shape: &Shape,
    ctx: &LoadContext<'_>,
    limits: &EffectiveLimits,
) -> Result<(imports::UsedImports, OptionalExports)> {
    if shape.start {
        bail!(
            KEEL_ERR_WASM_INSTANTIATE,
            "plugin '{name}': the module has a start function; Keel runs guest code only through the keel_* exports"
        );
    }
    let used = imports::check_imports(&shape.imports, ctx.granted, &ctx.services.host_fns)
        .map_err(|e| e.context(format!("plugin '{name}'")))?;

    let mut found = [false; EXPORTS.len()];
    for (ex, fty) in &shape.functions {
        if let Some(i) = EXPORTS.iter().position(|(n, ..)| n == ex) {
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
    for (i, (n, required, ..)) in EXPORTS.iter().enumerate() {
        if *required && !found[i] {
            bail!(
                KEEL_ERR_WASM_INSTANTIATE,
                "plugin '{name}': the module does not export '{n}' (see keel_wasm.h)"
            );
        }
    }
    let Some((mem_minimum, mem_shared)) = shape.memory_export else {
        bail!(
            KEEL_ERR_WASM_INSTANTIATE,
            "plugin '{name}': the module does not export its memory as 'memory'"
        );
    };
    if shape.memories != 1 {
        bail!(
            KEEL_ERR_WASM_INSTANTIATE,
            "plugin '{name}': the module must have exactly one memory"
        );
    }
    if mem_shared {
        bail!(
            KEEL_ERR_WASM_INSTANTIATE,
            "plugin '{name}': shared memories are not supported"
        );
    }
    if mem_minimum > limits.memory_pages as u64 {
        bail!(
            KEEL_ERR_MEMORY_LIMIT,
            "plugin '{name}': the module's memory starts at {} pages ({} KiB), above the plugin's cap of {} MiB",
            mem_minimum,
            mem_minimum * 64,
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
