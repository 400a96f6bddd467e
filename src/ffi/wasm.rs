//! C ABI: node-wide settings of the WASM runtime.

use std::ffi::c_char;
use std::path::PathBuf;
use std::time::Duration;

use super::host::{current, keel_host, keel_plugin};
use super::{arg_str, borrow, boundary, Out};
use crate::error::keel_status;
use crate::runtime::wasm::{
    CacheConfig, MemoryMode, WasmCompiler, WasmConfig, WasmEngine, WasmLimits, WasmPlugin, WasmTier,
};

/// Limits of one WASM call or instance.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct keel_wasm_limits {
    /// Memory cap per instance, MiB (1..=4096).
    pub memory_mb: u64,
    /// Instruction budget per call (about one point per WebAssembly operator).
    pub fuel_per_call: u64,
    /// Wall-clock deadline per call, milliseconds.
    pub timeout_ms: u64,
    /// Largest output one call may return, bytes.
    pub max_output_bytes: u64,
}

/// Node-wide settings of the WASM runtime. Start from `keel_wasm_config_default` and change
/// fields; the struct is plain data owned by the caller.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct keel_wasm_config {
    /// What a plugin gets when its manifest's `limits` do not say.
    pub defaults: keel_wasm_limits,
    /// The most a manifest can ask for (larger requests are clamped to these).
    pub ceilings: keel_wasm_limits,
    /// Idle instances a pooled plugin keeps ready.
    pub pool_size: u32,
    /// Compile with instruction metering (fuel). Off, only the deadline bounds a call.
    pub metering: bool,
    /// How often the watchdog checks deadlines, microseconds (>= 100).
    pub watchdog_tick_us: u32,
    /// Directory of the compiled-module cache, or NULL for no cache. Borrowed by
    /// `keel_host_set_wasm_config` for the call only (the path is copied).
    pub cache_dir: *const c_char,
    /// Node-local secret authenticating cache entries (HMAC-SHA256) before they are
    /// deserialized. Keep it readable by the node only; must not be all zeros when
    /// `cache_dir` is set.
    pub cache_key: [u8; 32],
}

fn limits_to_c(l: &WasmLimits) -> keel_wasm_limits {
    keel_wasm_limits {
        memory_mb: l.memory_mb,
        fuel_per_call: l.fuel_per_call,
        timeout_ms: l.timeout_ms,
        max_output_bytes: l.max_output_bytes,
    }
}

fn limits_from_c(l: &keel_wasm_limits) -> WasmLimits {
    WasmLimits {
        memory_mb: l.memory_mb,
        fuel_per_call: l.fuel_per_call,
        timeout_ms: l.timeout_ms,
        max_output_bytes: l.max_output_bytes,
    }
}

/// Fill `*out` with Keel's default WASM settings (no module cache). Thread-safe.
///
/// Errors: `KEEL_ERR_NULL_POINTER`.
#[no_mangle]
pub extern "C" fn keel_wasm_config_default(out: *mut keel_wasm_config) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract for `out`.
        let out = unsafe { Out::new(out, "out") }?;
        let d = WasmConfig::default();
        let c = keel_wasm_config {
            defaults: limits_to_c(&d.defaults),
            ceilings: limits_to_c(&d.ceilings),
            pool_size: d.pool_size.min(u32::MAX as usize) as u32,
            metering: d.metering,
            watchdog_tick_us: d.watchdog_tick.as_micros().min(u32::MAX as u128) as u32,
            cache_dir: std::ptr::null(),
            cache_key: [0; 32],
        };
        out.set(c);
        Ok(())
    })
}

/// Configure the host's WASM runtime: limits for plugins whose manifests do not set them,
/// ceilings on what manifests may ask for, pooling, metering, and the compiled-module cache.
///
/// Must be called before the first WASM plugin is loaded (the runtime starts then);
/// afterwards it fails with `KEEL_ERR_INVALID_ARGUMENT` and nothing changes. Settings no
/// runtime can honour (zero limits, memory over 4096 MiB, pool size 0, a watchdog tick under
/// 100 µs, an all-zero cache key with a cache dir) give `KEEL_ERR_INVALID_ARGUMENT`.
/// `config` and the string it points to are borrowed for the call. Thread-safe.
///
/// Errors: `KEEL_ERR_NULL_POINTER`, `KEEL_ERR_INVALID_UTF8` (`cache_dir`),
/// `KEEL_ERR_INVALID_ARGUMENT` (a setting no runtime can honour, or the runtime already runs).
#[no_mangle]
pub extern "C" fn keel_host_set_wasm_config(host: *const keel_host, config: *const keel_wasm_config) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract for every pointer argument; `keel_wasm_config` is plain
        // data (repr(C)) borrowed for the call.
        let (h, c) = unsafe { (borrow(host, "host")?, config.as_ref()) };
        let c = c.ok_or_else(|| crate::err!(KEEL_ERR_NULL_POINTER, "config is NULL"))?;
        let cache = if c.cache_dir.is_null() {
            None
        } else {
            // SAFETY: caller contract (NUL-terminated, valid for the call).
            let dir = unsafe { arg_str(c.cache_dir, "config->cache_dir") }?;
            Some(CacheConfig {
                dir: PathBuf::from(dir),
                key: c.cache_key,
            })
        };
        // The memory mode, the engine and the compiler have their own setters
        // (keel_host_set_wasm_memory_mode, _engine, _compiler): kept as they are.
        h.update_wasm_config(|cur| {
            *cur = WasmConfig {
                defaults: limits_from_c(&c.defaults),
                ceilings: limits_from_c(&c.ceilings),
                pool_size: c.pool_size as usize,
                metering: c.metering,
                watchdog_tick: Duration::from_micros(u64::from(c.watchdog_tick_us)),
                cache,
                memory: cur.memory,
                engine: cur.engine,
                manifest_engine: cur.manifest_engine,
                compiler: cur.compiler,
            }
        })
    })
}

/// How WASM instance memories use the address space (`mode` of
/// `keel_host_set_wasm_memory_mode`; see docs/wasm.md for the reservation and the per-call
/// cost of each).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum keel_wasm_memory_mode {
    /// The default. Each instance reserves its memory cap + 64 KiB of address space; the
    /// compiled code checks bounds explicitly; memories grow in place.
    KEEL_WASM_MEMORY_CAPPED = 0,
    /// Each instance reserves 8 GiB on wasmer (its static memories), 4 GiB + a 32 MiB guard
    /// on wasmtime; no bounds checks in the code.
    KEEL_WASM_MEMORY_STATIC = 1,
    /// Each instance reserves its current memory size + 64 KiB; bounds checks as CAPPED;
    /// growing maps a larger region and copies the memory.
    KEEL_WASM_MEMORY_DYNAMIC = 2,
}

impl keel_wasm_memory_mode {
    fn from_raw(v: u32) -> Option<keel_wasm_memory_mode> {
        use keel_wasm_memory_mode::*;
        [
            KEEL_WASM_MEMORY_CAPPED,
            KEEL_WASM_MEMORY_STATIC,
            KEEL_WASM_MEMORY_DYNAMIC,
        ]
        .into_iter()
        .find(|m| *m as u32 == v)
    }
}

impl From<keel_wasm_memory_mode> for MemoryMode {
    fn from(m: keel_wasm_memory_mode) -> MemoryMode {
        match m {
            keel_wasm_memory_mode::KEEL_WASM_MEMORY_CAPPED => MemoryMode::Capped,
            keel_wasm_memory_mode::KEEL_WASM_MEMORY_STATIC => MemoryMode::Static,
            keel_wasm_memory_mode::KEEL_WASM_MEMORY_DYNAMIC => MemoryMode::Dynamic,
        }
    }
}

impl From<MemoryMode> for keel_wasm_memory_mode {
    fn from(m: MemoryMode) -> keel_wasm_memory_mode {
        match m {
            MemoryMode::Capped => keel_wasm_memory_mode::KEEL_WASM_MEMORY_CAPPED,
            MemoryMode::Static => keel_wasm_memory_mode::KEEL_WASM_MEMORY_STATIC,
            MemoryMode::Dynamic => keel_wasm_memory_mode::KEEL_WASM_MEMORY_DYNAMIC,
        }
    }
}

/// Choose how WASM instance memories use the address space: `mode` is a
/// `keel_wasm_memory_mode` value (`KEEL_WASM_MEMORY_CAPPED`, the default, lets a host load
/// thousands of WASM plugins; `KEEL_WASM_MEMORY_STATIC` reserves 8 GiB per instance on wasmer,
/// 4 GiB + 32 MiB on wasmtime).
/// `keel_host_set_wasm_config` keeps the mode set here.
///
/// Must be called before the first WASM plugin is loaded; afterwards it fails with
/// `KEEL_ERR_INVALID_ARGUMENT` and nothing changes. Thread-safe.
///
/// Errors: `KEEL_ERR_NULL_POINTER`, `KEEL_ERR_INVALID_ARGUMENT` (not a
/// `keel_wasm_memory_mode` value, or the runtime already runs).
#[no_mangle]
pub extern "C" fn keel_host_set_wasm_memory_mode(host: *const keel_host, mode: u32) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract for `host`.
        let h = unsafe { borrow(host, "host") }?;
        let Some(m) = keel_wasm_memory_mode::from_raw(mode) else {
            crate::bail!(
                KEEL_ERR_INVALID_ARGUMENT,
                "{mode} is not a keel_wasm_memory_mode (0 capped, 1 static, 2 dynamic)"
            );
        };
        h.set_wasm_memory_mode(m.into())
    })
}

/// The host's WASM memory mode (a `keel_wasm_memory_mode` value) into `*out`: the one in
/// force, or the one the runtime will start with. Thread-safe.
///
/// Errors: `KEEL_ERR_NULL_POINTER`.
#[no_mangle]
pub extern "C" fn keel_host_wasm_memory_mode(host: *const keel_host, out: *mut u32) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract for every pointer argument.
        let (h, out) = unsafe { (borrow(host, "host")?, Out::new(out, "out")?) };
        out.set(keel_wasm_memory_mode::from(h.wasm_config().memory) as u32);
        Ok(())
    })
}

/// Counters of the compiled-module cache.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct keel_wasm_cache_stats {
    /// Modules deserialized from an authenticated cache entry.
    pub hits: u64,
    /// Modules compiled (no usable entry, or no cache).
    pub compiles: u64,
    /// Entries refused (authentication failed, truncated, refused by the engine); each was
    /// removed and its module recompiled.
    pub rejected: u64,
}

/// The compiled-module cache counters of the host's WASM runtime (all zero before the first
/// WASM load). Thread-safe.
///
/// Errors: `KEEL_ERR_NULL_POINTER`.
#[no_mangle]
pub extern "C" fn keel_host_wasm_cache_stats(host: *const keel_host, out: *mut keel_wasm_cache_stats) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract for every pointer argument.
        let (h, out) = unsafe { (borrow(host, "host")?, Out::new(out, "out")?) };
        let s = h.wasm_runtime().map(|rt| rt.cache_stats()).unwrap_or_default();
        out.set(keel_wasm_cache_stats {
            hits: s.hits,
            compiles: s.compiles,
            rejected: s.rejected,
        });
        Ok(())
    })
}

/// The engine that compiles and runs WASM plugins (`engine` of `keel_host_set_wasm_engine`;
/// see docs/wasm.md for when to choose which).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum keel_wasm_engine {
    /// The default: wasmer 7.4.2 (Cranelift).
    KEEL_WASM_ENGINE_WASMER = 0,
    /// wasmtime 48 (Cranelift): lower per-call cost, epoch interruption.
    KEEL_WASM_ENGINE_WASMTIME = 1,
}

impl From<keel_wasm_engine> for WasmEngine {
    fn from(e: keel_wasm_engine) -> WasmEngine {
        match e {
            keel_wasm_engine::KEEL_WASM_ENGINE_WASMER => WasmEngine::Wasmer,
            keel_wasm_engine::KEEL_WASM_ENGINE_WASMTIME => WasmEngine::Wasmtime,
        }
    }
}

impl From<WasmEngine> for keel_wasm_engine {
    fn from(e: WasmEngine) -> keel_wasm_engine {
        match e {
            WasmEngine::Wasmer => keel_wasm_engine::KEEL_WASM_ENGINE_WASMER,
            WasmEngine::Wasmtime => keel_wasm_engine::KEEL_WASM_ENGINE_WASMTIME,
        }
    }
}

/// Choose the engine of the host's WASM plugins: `engine` is a `keel_wasm_engine` value
/// (`KEEL_WASM_ENGINE_WASMER`, the default, or `KEEL_WASM_ENGINE_WASMTIME`). With
/// `manifest_may_choose` true, a plugin's manifest may ask for the other engine
/// (`"wasm_engine": "wasmer" | "wasmtime"`); with false, a manifest naming an engine other
/// than `engine` is refused at load with `KEEL_ERR_MANIFEST_INVALID`.
/// `keel_host_set_wasm_config` keeps the engine set here.
///
/// Must be called before the first WASM plugin is loaded; afterwards it fails with
/// `KEEL_ERR_INVALID_ARGUMENT` and nothing changes. Thread-safe.
///
/// Errors: `KEEL_ERR_NULL_POINTER`, `KEEL_ERR_INVALID_ARGUMENT` (not a `keel_wasm_engine`
/// value, or the runtime already runs).
#[no_mangle]
pub extern "C" fn keel_host_set_wasm_engine(
    host: *const keel_host,
    engine: u32,
    manifest_may_choose: bool,
) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract for `host`.
        let h = unsafe { borrow(host, "host") }?;
        let e = match engine {
            0 => keel_wasm_engine::KEEL_WASM_ENGINE_WASMER,
            1 => keel_wasm_engine::KEEL_WASM_ENGINE_WASMTIME,
            _ => crate::bail!(
                KEEL_ERR_INVALID_ARGUMENT,
                "{engine} is not a keel_wasm_engine (0 wasmer, 1 wasmtime)"
            ),
        };
        h.update_wasm_config(|c| {
            c.engine = e.into();
            c.manifest_engine = manifest_may_choose;
        })
    })
}

/// The host's WASM engine (a `keel_wasm_engine` value) into `*engine`, and whether manifests
/// may choose the other one into `*manifest_may_choose` (either pointer may be NULL when not
/// wanted, not both): the settings in force, or those the runtime will start with.
/// Thread-safe.
///
/// Errors: `KEEL_ERR_NULL_POINTER` (both pointers NULL, or `host`).
#[no_mangle]
pub extern "C" fn keel_host_wasm_engine(
    host: *const keel_host,
    engine: *mut u32,
    manifest_may_choose: *mut bool,
) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract for `host`.
        let h = unsafe { borrow(host, "host") }?;
        if engine.is_null() && manifest_may_choose.is_null() {
            crate::bail!(KEEL_ERR_NULL_POINTER, "engine and manifest_may_choose are both NULL");
        }
        let c = h.wasm_config();
        if !engine.is_null() {
            // SAFETY: caller contract: a non-NULL `engine` is valid for a u32 write.
            unsafe { Out::new(engine, "engine") }?.set(keel_wasm_engine::from(c.engine) as u32);
        }
        if !manifest_may_choose.is_null() {
            // SAFETY: caller contract: a non-NULL `manifest_may_choose` is valid for a write.
            unsafe { Out::new(manifest_may_choose, "manifest_may_choose") }?.set(c.manifest_engine);
        }
        Ok(())
    })
}

/// How the host compiles plugins on wasmer (`compiler` of `keel_host_set_wasm_compiler`;
/// docs/wasm.md, "Compilers and tiering").
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum keel_wasm_compiler {
    /// The default: Cranelift (optimised for speed). Fastest code, slowest compile.
    KEEL_WASM_COMPILER_CRANELIFT = 0,
    /// Singlepass: compiles in about linear time (fast loads); its code runs slower.
    KEEL_WASM_COMPILER_SINGLEPASS = 1,
    /// Singlepass at load, then Cranelift compiled in the background and switched to.
    KEEL_WASM_COMPILER_TIERED = 2,
}

impl From<keel_wasm_compiler> for WasmCompiler {
    fn from(c: keel_wasm_compiler) -> WasmCompiler {
        match c {
            keel_wasm_compiler::KEEL_WASM_COMPILER_CRANELIFT => WasmCompiler::Cranelift,
            keel_wasm_compiler::KEEL_WASM_COMPILER_SINGLEPASS => WasmCompiler::Singlepass,
            keel_wasm_compiler::KEEL_WASM_COMPILER_TIERED => WasmCompiler::Tiered,
        }
    }
}

impl From<WasmCompiler> for keel_wasm_compiler {
    fn from(c: WasmCompiler) -> keel_wasm_compiler {
        match c {
            WasmCompiler::Cranelift => keel_wasm_compiler::KEEL_WASM_COMPILER_CRANELIFT,
            WasmCompiler::Singlepass => keel_wasm_compiler::KEEL_WASM_COMPILER_SINGLEPASS,
            WasmCompiler::Tiered => keel_wasm_compiler::KEEL_WASM_COMPILER_TIERED,
        }
    }
}

/// The compiler that made a WASM plugin's running code (`keel_plugin_wasm_tier`).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum keel_wasm_tier {
    /// Cranelift (wasmer's or wasmtime's).
    KEEL_WASM_TIER_CRANELIFT = 0,
    /// wasmer's Singlepass (a `singlepass` node, or a `tiered` plugin before its tier-up).
    KEEL_WASM_TIER_SINGLEPASS = 1,
}

/// Choose how the host compiles WASM plugins on wasmer: `compiler` is a `keel_wasm_compiler`
/// value (`KEEL_WASM_COMPILER_CRANELIFT`, the default; `KEEL_WASM_COMPILER_SINGLEPASS`;
/// `KEEL_WASM_COMPILER_TIERED`: Singlepass at load, then Cranelift in the background). The
/// compiler is part of the compiled-module cache key. `keel_host_set_wasm_config` keeps the
/// compiler set here.
///
/// Must be called before the first WASM plugin is loaded; afterwards it fails with
/// `KEEL_ERR_INVALID_ARGUMENT` and nothing changes. Thread-safe.
///
/// Errors: `KEEL_ERR_NULL_POINTER`, `KEEL_ERR_INVALID_ARGUMENT` (not a `keel_wasm_compiler`
/// value, or the runtime already runs), `KEEL_ERR_UNSUPPORTED` (Singlepass or tiered on a
/// host whose engine is wasmtime, which compiles with Cranelift only; a host that sets the
/// wasmtime engine afterwards keeps the policy for the plugins a manifest puts on wasmer).
#[no_mangle]
pub extern "C" fn keel_host_set_wasm_compiler(host: *const keel_host, compiler: u32) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract for `host`.
        let h = unsafe { borrow(host, "host") }?;
        let c = match compiler {
            0 => keel_wasm_compiler::KEEL_WASM_COMPILER_CRANELIFT,
            1 => keel_wasm_compiler::KEEL_WASM_COMPILER_SINGLEPASS,
            2 => keel_wasm_compiler::KEEL_WASM_COMPILER_TIERED,
            _ => crate::bail!(
                KEEL_ERR_INVALID_ARGUMENT,
                "{compiler} is not a keel_wasm_compiler (0 cranelift, 1 singlepass, 2 tiered)"
            ),
        };
        let compiler: WasmCompiler = c.into();
        if compiler != WasmCompiler::Cranelift && h.wasm_config().engine == WasmEngine::Wasmtime {
            crate::bail!(
                KEEL_ERR_UNSUPPORTED,
                "the WASM compiler '{}' is wasmer's; this host runs WASM plugins on wasmtime, which compiles with Cranelift only (keel_host_set_wasm_engine first, or KEEL_WASM_COMPILER_CRANELIFT)",
                compiler.as_str()
            );
        }
        h.update_wasm_config(|cfg| cfg.compiler = compiler)
    })
}

/// The host's WASM compiler policy (a `keel_wasm_compiler` value) into `*compiler`: the one in
/// force, or the one the runtime will start with. Thread-safe.
///
/// Errors: `KEEL_ERR_NULL_POINTER`.
#[no_mangle]
pub extern "C" fn keel_host_wasm_compiler(host: *const keel_host, compiler: *mut u32) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract for every pointer argument.
        let (h, out) = unsafe { (borrow(host, "host")?, Out::new(compiler, "compiler")?) };
        out.set(keel_wasm_compiler::from(h.wasm_config().compiler) as u32);
        Ok(())
    })
}

/// The compiler that made the code of the current generation of WASM plugin `plugin` (a
/// `keel_wasm_tier` value) into `*tier`: `KEEL_WASM_TIER_SINGLEPASS` on a `singlepass` host,
/// and on a `tiered` host until the plugin's tier-up switched it to Cranelift; else
/// `KEEL_WASM_TIER_CRANELIFT`. Thread-safe.
///
/// Errors: `KEEL_ERR_NULL_POINTER`, `KEEL_ERR_PLUGIN_UNLOADED`, `KEEL_ERR_UNSUPPORTED` (not a
/// WASM plugin).
#[no_mangle]
pub extern "C" fn keel_plugin_wasm_tier(plugin: *const keel_plugin, tier: *mut u32) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract for every pointer argument.
        let (slot, out) = unsafe { (borrow(plugin, "plugin")?, Out::new(tier, "tier")?) };
        let generation = current(slot)?;
        let wasm = generation
            .instance
            .as_any()
            .and_then(|a| a.downcast_ref::<WasmPlugin>())
            .ok_or_else(|| {
                crate::err!(
                    KEEL_ERR_UNSUPPORTED,
                    "plugin '{}' is not a WASM plugin (runtime {:?}): it has no compiler tier",
                    slot.name(),
                    generation.manifest.runtime
                )
            })?;
        out.set(match wasm.tier() {
            WasmTier::Cranelift => keel_wasm_tier::KEEL_WASM_TIER_CRANELIFT,
            WasmTier::Singlepass => keel_wasm_tier::KEEL_WASM_TIER_SINGLEPASS,
        } as u32);
        Ok(())
    })
}
