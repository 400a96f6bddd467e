//! The wasmtime engine ([`Instance`]: the call path's [`Backend`] on wasmtime 48).
//!
//! The same Keel WASM ABI and the same guarantees as on wasmer, by wasmtime's own means:
//!
//! - **fuel**: wasmtime's fuel (`Config::consume_fuel`), set before every entry; running out
//!   traps with `Trap::OutOfFuel` (`KEEL_ERR_CPU_BUDGET`). wasmtime charges 1 per operator
//!   except a few free ones (`nop`, `drop`, `block`, `loop`, `end`, `else`); wasmer's Keel cost
//!   function charges 1, 4 for calls, 64 for bulk memory and 1024 for `memory.grow`. The same
//!   budget therefore buys a similar but not identical amount of work (docs/wasm.md).
//! - **deadlines and cancellation**: epoch interruption. Every store has an epoch deadline of
//!   "the next epoch" and a callback that traps (`Trap::Interrupt`) only if the instance's own
//!   stop flag is raised, and otherwise extends the deadline by one epoch. The watchdog
//!   raises a flag through the same [`StopFlag`] as on wasmer, which also bumps the engine's
//!   epoch so that running guests look at their flags at their next function entry or loop
//!   back-edge. No signal is sent; host code is never interrupted.
//! - **memory cap**: a `ResourceLimiter` per store refuses growth past the plugin's cap (the
//!   guest sees -1) and counts the refusal like wasmer's tunables do; the engine's memory
//!   reservation follows the node's [`MemoryMode`] (Capped: exactly the cap + 64 KiB guard per
//!   instance, so thousands of plugins fit in the address space).
//! - **host functions**: the handlers of [`super::imports`], through a `Linker` built once
//!   per plugin generation (and an `InstancePre`: instantiation does no name resolution).

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::AtomicI32;
use std::sync::Arc;

use parking_lot::Mutex;
use wasmtime::{
    Caller, Config, Engine, InstancePre, Linker, Memory, Module, OptLevel, ResourceLimiter, Store, Trap, TypedFunc,
    UpdateDeadline,
};

use super::imports::{self, keel_host_fns, HostEnv, HostTrap, Mem, UsedImports, HOST_FUNCTIONS, IMPORT_MODULE};
use super::interrupt::StopFlag;
use super::plugin::{instantiate_error, Backend, Entry, PluginShared, TrapInfo};
use super::tunables::{self, MemoryMode, DYNAMIC_GUARD_BYTES, MAX_TABLE_ELEMENTS};
use crate::err;
use crate::error::Result;

/// wasmtime's version, part of the compiled-module cache key.
pub const VERSION: &str = "48.0.0";

/// Guard after a Static memory's 4 GiB reservation (wasmtime's 64-bit default).
pub const STATIC_GUARD_BYTES: u64 = 32 << 20;

/// What the compiled code depends on besides the module's bytes (engine settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EngineSettings {
    pub metering: bool,
    pub mode: MemoryMode,
    /// Bytes reserved per memory (Capped: the plugin's cap).
    pub reservation: u64,
}

impl EngineSettings {
    /// The settings for a plugin whose memory cap is `cap_pages`.
    pub fn new(metering: bool, mode: MemoryMode, cap_pages: u32) -> EngineSettings {
        let reservation = match mode {
            MemoryMode::Static => 1 << 32,
            MemoryMode::Capped => cap_pages as u64 * 65536,
            MemoryMode::Dynamic => 0,
        };
        EngineSettings {
            metering,
            mode,
            reservation,
        }
    }

    fn guard(&self) -> u64 {
        match self.mode {
            MemoryMode::Static => STATIC_GUARD_BYTES,
            MemoryMode::Capped | MemoryMode::Dynamic => DYNAMIC_GUARD_BYTES,
        }
    }

    fn config(&self) -> Config {
        let mut c = Config::new();
        c.cranelift_opt_level(OptLevel::Speed)
            .consume_fuel(self.metering)
            .epoch_interruption(true)
            .memory_reservation(self.reservation)
            .memory_guard_size(self.guard())
            .memory_reservation_for_growth(0)
            // Static and Capped memories never move: their base is fixed for the instance's
            // life, as the call path's `fixed_base` assumes; Dynamic ones move when they grow.
            .memory_may_move(self.mode == MemoryMode::Dynamic)
            // Data segments are copied at instantiation (as on wasmer), not mapped from a
            // per-module memfd: a fleet of thousands of plugins must not hold a file
            // descriptor and extra mappings per module.
            .memory_init_cow(false)
            // A trap's message is enough; a backtrace would cost every trap a stack walk.
            .wasm_backtrace_max_frames(None);
        c
    }

    /// The compiled-module cache key of code compiled with these settings.
    pub fn cache_key(&self) -> String {
        format!(
            "keel-wasm/1 wasmtime/{VERSION} cranelift/opt-speed fuel/{} epochs memory/{}-reserve-{}-guard-{} cow-off target/{}",
            if self.metering { "wasmtime" } else { "off" },
            self.mode.as_str(),
            self.reservation,
            self.guard(),
            std::env::consts::ARCH,
        )
    }
}

/// The wasmtime engines of one runtime, one per distinct [`EngineSettings`] (made on first
/// use: an engine owns the epoch counter its stores are interrupted through).
#[derive(Default)]
pub struct Engines {
    map: Mutex<HashMap<EngineSettings, Engine>>,
}

impl Engines {
    pub fn get(&self, s: EngineSettings) -> Result<Engine> {
        let mut map = self.map.lock();
        if let Some(e) = map.get(&s) {
            return Ok(e.clone());
        }
        let e = Engine::new(&s.config())
            .map_err(|e| err!(KEEL_ERR_INTERNAL, "creating the wasmtime engine failed: {e}"))?;
        map.insert(s, e.clone());
        Ok(e)
    }
}

/// What a wasmtime store holds: the engine-agnostic host state, the instance's memory and
/// the memory cap.
pub struct WtData {
    host: HostEnv,
    memory: Option<Memory>,
    limits: CapLimiter,
}

/// Refuses memory growth past the cap (the guest's `memory.grow` returns -1), counting each
/// refusal where the call path looks for it ([`tunables::grow_refusals`]).
///
/// Every change of the memory's size (or, for moving memories, its base) goes through it, so
/// it also records that the call path's copy of (base, size) must be read again
/// ([`Instance`]'s `view`).
struct CapLimiter {
    cap_bytes: usize,
    changed: Cell<bool>,
}

impl ResourceLimiter for CapLimiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        self.changed.set(true);
        if desired > self.cap_bytes {
            tunables::note_refusal();
            return Ok(false);
        }
        Ok(true)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.changed.set(true);
        // Growth within the cap that the engine could not map: the guest sees -1 as well.
        tunables::note_refusal();
        Ok(())
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS as usize)
    }
}

/// A plugin generation's code on wasmtime: its engine, module, and the instantiation
/// pre-linked with exactly the host functions its imports use.
pub struct Code {
    pub engine: Engine,
    pub module: Module,
    pre: InstancePre<WtData>,
}

/// The handlers' arguments in a wasmtime host function: the host state and the memory.
fn wt_parts<'a>(caller: &'a mut Caller<'_, WtData>) -> Result<(&'a mut HostEnv, Mem), HostTrap> {
    let Some(memory) = caller.data().memory else {
        return Err(HostTrap {
            status: crate::error::keel_status::KEEL_ERR_PLUGIN_ABI_VIOLATION,
            message: "host function called before the instance was set up".into(),
        });
    };
    let (base, len) = (memory.data_ptr(&*caller), memory.data_size(&*caller) as u64);
    // SAFETY: the instance's own memory while its guest is suspended in this host function
    // (wasmtime calls host functions synchronously on the guest's thread; memories are not
    // shared and cannot grow until the guest runs again).
    let mem = unsafe { Mem::new(base, len) };
    Ok((&mut caller.data_mut().host, mem))
}

macro_rules! wasmtime_fn {
    ($($name:literal => $h:ident($($a:ident: $t:ty),*) -> $r:ty;)*) => {
        /// Define Keel host function `name` in `linker`; false if there is no such function.
        fn define_keel_fn(linker: &mut Linker<WtData>, name: &str) -> wasmtime::Result<bool> {
            match name {
                $($name => {
                    linker.func_wrap(
                        IMPORT_MODULE,
                        $name,
                        |mut caller: Caller<'_, WtData>, $($a: $t),*| -> wasmtime::Result<$r> {
                            let (data, mem) = wt_parts(&mut caller)?;
                            Ok(imports::$h(data, &mem, $($a),*)?)
                        },
                    )?;
                })*
                _ => return Ok(false),
            }
            Ok(true)
        }
    };
}
keel_host_fns!(wasmtime_fn);

fn linker(engine: &Engine, used: &UsedImports) -> Result<Linker<WtData>> {
    let mut linker = Linker::new(engine);
    let fail = |e: wasmtime::Error| err!(KEEL_ERR_INTERNAL, "defining host functions for wasmtime: {e}");
    for f in &used.defined {
        let bound = f.clone();
        linker
            .func_wrap(
                f.namespace(),
                f.name(),
                move |mut caller: Caller<'_, WtData>, ip: i32, il: i32, op: i32, cap: i32| -> wasmtime::Result<i64> {
                    let (data, mem) = wt_parts(&mut caller)?;
                    Ok(imports::h_defined(&bound, data, &mem, ip, il, op, cap)?)
                },
            )
            .map_err(fail)?;
    }
    for (i, f) in HOST_FUNCTIONS.iter().enumerate() {
        if used.keel & (1 << i) != 0 && !define_keel_fn(&mut linker, f.name).map_err(fail)? {
            return Err(err!(
                KEEL_ERR_INTERNAL,
                "host function '{}' has no implementation",
                f.name
            ));
        }
    }
    Ok(linker)
}

impl Code {
    /// Link `module` with the host functions it was checked to use.
    pub fn new(name: &str, engine: Engine, module: Module, used: &UsedImports) -> Result<Code> {
        let pre = linker(&engine, used)?
            .instantiate_pre(&module)
            .map_err(|e| instantiate_error(name, e))?;
        Ok(Code { engine, module, pre })
    }
}

keel_exports!(struct TypedFunc);

/// One wasmtime instance: its own store, memory and exports.
pub struct Instance {
    store: Store<WtData>,
    fns: Fns,
    memory: Memory,
    /// The memory's (base, size) as last read from wasmtime; read again only after the
    /// store's limiter saw a growth (each read is a chain of look-ups through the store).
    /// The base is kept as an address (the instance stays `Send`; it is only turned back into
    /// the pointer wasmtime gave).
    view: Cell<(usize, u64)>,
}

impl Instance {
    /// Instantiate the plugin's module (no guest code runs: Keel refuses start functions).
    pub fn new(shared: &Arc<PluginShared>, code: &Code) -> Result<(Instance, StopFlag)> {
        let name = &*shared.name;
        let mut store = Store::new(
            &code.engine,
            WtData {
                host: HostEnv {
                    plugin: shared.name.clone(),
                    services: shared.services.clone(),
                    metrics: shared.metrics.clone(),
                    generation: shared.generation,
                    scratch_in: Vec::new(),
                },
                memory: None,
                limits: CapLimiter {
                    cap_bytes: shared.limits.memory_pages as usize * 65536,
                    changed: Cell::new(false),
                },
            },
        );
        store.limiter(|d| &mut d.limits);
        let flag = Arc::new(AtomicI32::new(0));
        let seen = flag.clone();
        store.epoch_deadline_callback(move |_| {
            if seen.load(std::sync::atomic::Ordering::Acquire) != 0 {
                return Ok(UpdateDeadline::Interrupt);
            }
            Ok(UpdateDeadline::Continue(1))
        });
        store.set_epoch_deadline(1);
        if shared.metering {
            // Instantiation runs no guest code (Keel refuses start functions), but wasmtime
            // charges the initialisation of data segments to the store's fuel (its cost is
            // bounded by the module's size, as on wasmer, which charges nothing for it). Every
            // entry into the guest sets the call's budget before any guest code runs.
            store
                .set_fuel(i64::MAX as u64)
                .map_err(|e| instantiate_error(name, format!("setting the fuel: {e}")))?;
        }
        let instance = code
            .pre
            .instantiate(&mut store)
            .map_err(|e| instantiate_error(name, e))?;
        macro_rules! get {
            ($n:literal) => {
                instance
                    .get_typed_func(&mut store, $n)
                    .map_err(|e| instantiate_error(name, format!("export {}: {e}", $n)))?
            };
            (opt $flag:expr, $n:literal) => {
                if $flag {
                    Some(get!($n))
                } else {
                    None
                }
            };
        }
        let fns = keel_exports!(build shared.exports);
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| instantiate_error(name, "no memory export 'memory'"))?;
        store.data_mut().memory = Some(memory);
        let stop = StopFlag::epoch(flag, code.engine.clone());
        let view = Cell::new((memory.data_ptr(&store) as usize, memory.data_size(&store) as u64));
        store.data().limits.changed.set(false);
        Ok((
            Instance {
                store,
                fns,
                memory,
                view,
            },
            stop,
        ))
    }
}

#[cold]
fn missing(entry: Entry) -> wasmtime::Error {
    wasmtime::Error::msg(format!("the module has no export '{}'", entry.export()))
}

impl Backend for Instance {
    type Err = wasmtime::Error;

    #[inline]
    fn set_fuel(&mut self, fuel: u64) -> bool {
        self.store.set_fuel(fuel).is_ok()
    }

    #[inline]
    fn memory(&self) -> (*mut u8, u64) {
        let changed = &self.store.data().limits.changed;
        if changed.get() {
            changed.set(false);
            self.view.set((
                self.memory.data_ptr(&self.store) as usize,
                self.memory.data_size(&self.store) as u64,
            ));
        }
        let (base, size) = self.view.get();
        (base as *mut u8, size)
    }

    #[inline(always)]
    fn invoke(&mut self, entry: Entry) -> Result<i64, wasmtime::Error> {
        let (s, f) = (&mut self.store, &self.fns);
        match entry {
            Entry::Call(a, b, c) => f.call.call(s, (a, b, c)),
            Entry::AbiVersion => f.abi_version.call(s, ()).map(i64::from),
            Entry::Functions => f.functions.call(s, ()),
            Entry::Alloc(n) => f.alloc.call(s, n).map(i64::from),
            Entry::Free(a, b) => match &f.free {
                Some(x) => x.call(s, (a, b)).map(|_| 0),
                None => Err(missing(entry)),
            },
            Entry::Init(a, b) => match &f.init {
                Some(x) => x.call(s, (a, b)),
                None => Err(missing(entry)),
            },
            Entry::SaveState => match &f.save_state {
                Some(x) => x.call(s, ()),
                None => Err(missing(entry)),
            },
            Entry::RestoreState(a, b) => match &f.restore_state {
                Some(x) => x.call(s, (a, b)),
                None => Err(missing(entry)),
            },
            Entry::RestoreStateVersioned(a, b, c, d) => match &f.restore_state_versioned {
                Some(x) => x.call(s, (a, b, c, d)),
                None => Err(missing(entry)),
            },
            Entry::Health => match &f.health {
                Some(x) => x.call(s, ()).map(i64::from),
                None => Err(missing(entry)),
            },
            Entry::Initialize => match &f.initialize {
                Some(x) => x.call(s, ()).map(|_| 0),
                None => Err(missing(entry)),
            },
        }
    }

    #[cold]
    fn trap_info(&mut self, e: wasmtime::Error) -> TrapInfo {
        let host = e.downcast_ref::<HostTrap>().cloned();
        let trap = e.downcast_ref::<Trap>().copied();
        TrapInfo {
            host,
            stop_trap: trap == Some(Trap::Interrupt),
            out_of_fuel: trap == Some(Trap::OutOfFuel),
            message: match trap {
                Some(t) => t.to_string(),
                None => format!("{e:#}"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_key_names_the_engine_and_every_setting_code_depends_on() {
        let a = EngineSettings::new(true, MemoryMode::Capped, 16);
        assert_eq!(a.reservation, 16 * 65536);
        let key = a.cache_key();
        assert!(
            key.contains("wasmtime/48.0.0") && key.contains("reserve-1048576"),
            "{key}"
        );
        for other in [
            EngineSettings::new(false, MemoryMode::Capped, 16),
            EngineSettings::new(true, MemoryMode::Capped, 17),
            EngineSettings::new(true, MemoryMode::Static, 16),
            EngineSettings::new(true, MemoryMode::Dynamic, 16),
        ] {
            assert_ne!(key, other.cache_key(), "{other:?}");
        }
        // Static code (no bounds checks) does not depend on the cap.
        assert_eq!(
            EngineSettings::new(true, MemoryMode::Static, 1).cache_key(),
            EngineSettings::new(true, MemoryMode::Static, 4096).cache_key()
        );
        // Never the key of a wasmer engine.
        assert!(!key.contains("wasmer"));
    }

    #[test]
    fn one_engine_per_setting_shared_by_plugins() {
        let engines = Engines::default();
        let s = EngineSettings::new(true, MemoryMode::Capped, 16);
        let (a, b) = (engines.get(s).unwrap(), engines.get(s).unwrap());
        assert!(Engine::same(&a, &b));
        let c = engines.get(EngineSettings::new(true, MemoryMode::Capped, 32)).unwrap();
        assert!(!Engine::same(&a, &c));
    }
}
