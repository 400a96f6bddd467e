//! The wasmer engine's instances ([`Instance`]: the call path's [`Backend`] on wasmer).
//!
//! Fuel is wasmer's `Metering` middleware (two globals per instance); deadlines and
//! cancellation are the stop checks of [`super::interrupt`]; the memory cap is the engine's
//! tunables ([`super::tunables`]).

use std::ptr::NonNull;
use std::sync::Arc;

use wasmer::sys::vm::{TrapCode, VMMemoryDefinition};
use wasmer::{
    Engine, FunctionEnv, Global, Instance as WasmerInstance, Memory, Module, RuntimeError, Store, TypedFunction, Value,
};

use super::imports::{self, HostEnv, HostTrap, WasmerEnv};
use super::interrupt::StopFlag;
use super::plugin::{instantiate_error, Backend, Entry, PluginShared, TrapInfo};
use crate::error::Result;

/// A plugin generation's code on wasmer: its engine (tunables, metering), module, and the
/// compiler that made it.
pub struct Code {
    pub engine: Engine,
    pub module: Module,
    pub tier: super::WasmTier,
}

keel_exports!(struct TypedFunction);

/// One wasmer instance: its own store, memory, exports and metering globals.
pub struct Instance {
    store: Store,
    fns: Fns,
    /// The linear memory's definition (base, current length) where the instance's compiled
    /// code reads it: [`Backend::memory`] reads two words instead of building a
    /// `MemoryView` (two store look-ups and two dynamic calls) per call.
    memory_def: NonNull<VMMemoryDefinition>,
    meter: Option<(Global, Global)>,
    _memory: Memory,
    _instance: WasmerInstance,
}

// SAFETY: wasmer 7 made `Store` !Send only by dropping the `Send` bound of the store's
// `on_called` handler (wasmerio/wasmer#7001); wasmer 6's Store was Send. Keel never installs
// an `on_called` handler (its host functions return values or errors, never OnCalledAction).
// With the `sys` backend the rest of the store is heap memory the store owns, with no thread
// affinity while no call is running: the store context, interrupt registration and trap
// state are thread-local only for the duration of a call and removed when it returns.
// An instance is used by one thread at a time (taken out of the pool, or under the plugin's
// mutex) and never while a call on it is in progress on another thread, so moving it between
// calls is sound. `Sync` is not implemented: an instance is never shared.
unsafe impl Send for Instance {}

impl Instance {
    /// Instantiate the plugin's module (no guest code runs: Keel refuses start functions).
    pub fn new(shared: &Arc<PluginShared>, code: &Code) -> Result<(Instance, StopFlag)> {
        let name = &*shared.name;
        let mut store = Store::new(code.engine.clone());
        let env = FunctionEnv::new(
            &mut store,
            WasmerEnv {
                memory: None,
                host: HostEnv {
                    plugin: shared.name.clone(),
                    services: shared.services.clone(),
                    metrics: shared.metrics.clone(),
                    generation: shared.generation,
                    scratch_in: Vec::new(),
                },
            },
        );
        let imports = imports::imports(&mut store, &env, &shared.used_imports)?;
        let instance =
            WasmerInstance::new(&mut store, &code.module, &imports).map_err(|e| instantiate_error(name, e))?;
        let ex = &instance.exports;
        macro_rules! get {
            ($n:literal) => {
                ex.get_typed_function(&store, $n)
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
        let memory = ex.get_memory("memory").map_err(|e| instantiate_error(name, e))?.clone();
        let meter = if shared.metering {
            let left = ex
                .get_global("wasmer_metering_remaining_points")
                .map_err(|e| instantiate_error(name, e))?;
            let exhausted = ex
                .get_global("wasmer_metering_points_exhausted")
                .map_err(|e| instantiate_error(name, e))?;
            Some((left.clone(), exhausted.clone()))
        } else {
            None
        };
        env.as_mut(&mut store).memory = Some(memory.clone());
        let memory_def = memory_definition(&mut store, &memory)
            .ok_or_else(|| instantiate_error(name, "the memory's definition does not match its view"))?;
        let stop = StopFlag::of(&mut store, &instance)
            .ok_or_else(|| instantiate_error(name, "the compiled module has no stop flag"))?;
        Ok((
            Instance {
                store,
                fns,
                memory_def,
                meter,
                _memory: memory,
                _instance: instance,
            },
            stop,
        ))
    }
}

/// Where `memory`'s definition lives: in the owning instance's VM context for a memory the
/// module defines (Keel refuses imported memories), updated in place when the memory grows
/// and valid for as long as the instance (kept alive with the store by [`Instance`]).
fn memory_definition(store: &mut Store, memory: &Memory) -> Option<NonNull<VMMemoryDefinition>> {
    use wasmer::sys::vm::LinearMemory;
    use wasmer::AsStoreMut;
    // `unwrap_sys` cannot fail: `sys` is the only backend Keel builds wasmer with.
    let wasmer::sys::vm::VMExtern::Memory(handle) = wasmer::Extern::Memory(memory.clone()).to_vm_extern().unwrap_sys()
    else {
        return None;
    };
    let def = handle.get(store.objects_mut().as_sys()).vmmemory();
    // The definition must describe the memory wasmer's own view sees.
    let view = memory.view(store);
    // SAFETY: `vmmemory` returns the live definition of a memory of this store; no guest
    // code runs during instantiation.
    let d = unsafe { def.as_ref() };
    (d.base == view.data_ptr() && d.current_length as u64 == view.data_size()).then_some(def)
}

#[cold]
fn missing(entry: Entry) -> RuntimeError {
    RuntimeError::new(format!("the module has no export '{}'", entry.export()))
}

impl Backend for Instance {
    type Err = RuntimeError;

    #[inline]
    fn set_fuel(&mut self, fuel: u64) -> bool {
        match &self.meter {
            Some((left, _)) => left.set(&mut self.store, Value::I64(fuel as i64)).is_ok(),
            None => false,
        }
    }

    #[inline]
    fn memory(&self) -> (*mut u8, u64) {
        // SAFETY: `memory_def` points into this instance's VM context (see
        // `memory_definition`), alive while `self` is; only the engine writes it, while
        // guest code runs (memory.grow), and no guest code runs on this instance while the
        // thread that has it (`&self`) is here: plain reads cannot race.
        let d = unsafe { self.memory_def.as_ref() };
        (d.base, d.current_length as u64)
    }

    #[inline(always)]
    fn invoke(&mut self, entry: Entry) -> Result<i64, RuntimeError> {
        let (s, f) = (&mut self.store, &self.fns);
        match entry {
            Entry::Call(a, b, c) => f.call.call(s, a, b, c),
            Entry::AbiVersion => f.abi_version.call(s).map(i64::from),
            Entry::Functions => f.functions.call(s),
            Entry::Alloc(n) => f.alloc.call(s, n).map(i64::from),
            Entry::Free(a, b) => match &f.free {
                Some(x) => x.call(s, a, b).map(|_| 0),
                None => Err(missing(entry)),
            },
            Entry::Init(a, b) => match &f.init {
                Some(x) => x.call(s, a, b),
                None => Err(missing(entry)),
            },
            Entry::SaveState => match &f.save_state {
                Some(x) => x.call(s),
                None => Err(missing(entry)),
            },
            Entry::RestoreState(a, b) => match &f.restore_state {
                Some(x) => x.call(s, a, b),
                None => Err(missing(entry)),
            },
            Entry::RestoreStateVersioned(a, b, c, d) => match &f.restore_state_versioned {
                Some(x) => x.call(s, a, b, c, d),
                None => Err(missing(entry)),
            },
            Entry::Health => match &f.health {
                Some(x) => x.call(s).map(i64::from),
                None => Err(missing(entry)),
            },
            Entry::Initialize => match &f.initialize {
                Some(x) => x.call(s).map(|_| 0),
                None => Err(missing(entry)),
            },
        }
    }

    #[cold]
    fn trap_info(&mut self, e: RuntimeError) -> TrapInfo {
        let host = e.downcast_ref::<HostTrap>().cloned();
        let unreachable = e.clone().to_trap() == Some(TrapCode::UnreachableCodeReached);
        // Metering traps with `unreachable` too, after raising its "exhausted" global.
        let out_of_fuel = unreachable
            && self
                .meter
                .as_ref()
                .is_some_and(|(_, exhausted)| exhausted.get(&mut self.store) == Value::I32(1));
        TrapInfo {
            host,
            stop_trap: unreachable,
            out_of_fuel,
            message: e.message(),
        }
    }
}
