//! Interrupting a running guest without signals.
//!
//! Every module Keel compiles gets a *stop check* from the [`StopChecks`] middleware: at
//! the entry of every function and at the head of every loop,
//!
//! ```text
//! global.get $keel_stop   ;; added by the middleware, exported as STOP_GLOBAL
//! if
//!   unreachable           ;; the trap the call path turns into a deadline or cancel error
//! end
//! i32.const 0             ;; at loop heads only:
//! global.set $keel_beat   ;; see below
//! ```
//!
//! The watchdog stops a call by storing 1 into the instance's `$keel_stop` through a raw
//! pointer taken once when the instance is made ([`StopFlag`]); the guest traps at its next
//! function entry or loop iteration, a synchronous trap raised by its own code. Nothing is
//! unwound asynchronously: a guest inside a host function (Keel's or the server's) or
//! inside one of wasmer's library calls finishes it, and only then meets a check.
//!
//! This replaces wasmer's `experimental-host-interrupt` (a SIGUSR1 sent to the thread): its
//! signal handler raised the trap wherever the thread's stack pointer was inside the guest's
//! stack, which includes wasmer's own code on that stack, and the fuzzer found a host that
//! hung for good after such an interrupt (a lock of wasmer's store registry left held); it
//! also registered every store in a process-wide map on every call (tens of nanoseconds),
//! and took SIGUSR1 from the embedding server.
//!
//! Why the store to `$keel_beat`: Cranelift's alias analysis replaces a load by an earlier
//! load of the same address when no store can have happened in between (redundant-load
//! elimination). In a loop that stores nothing, the check at the loop head would then test
//! the value loaded by the function-entry check, forever: `tests/wasm_interrupt.rs`'s empty
//! loop, compiled without metering and without this store, is never stopped. The store (to
//! a second global, never read) puts a store on every path back to the loop head, so the
//! flag is loaded again on each iteration. A metered module does not need it: metering
//! stores its fuel counter at every branch, so every iteration stores already.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicI32, Ordering};

use wasmer::sys::{FunctionMiddleware, MiddlewareError, MiddlewareReaderState, ModuleMiddleware};
use wasmer::wasmparser::{BlockType, Operator};
use wasmer::{ExportIndex, GlobalInit, GlobalType, Instance, LocalFunctionIndex, ModuleInfo, Mutability, Store, Type};

/// The export under which the middleware publishes the stop flag.
pub const STOP_GLOBAL: &str = "__keel_stop";
/// The export of the store target (kept exported so nothing removes it).
pub const BEAT_GLOBAL: &str = "__keel_beat";
/// Part of the compiled-module cache key: changes whenever the inserted code changes.
pub const STOP_CHECKS_ID: &str = "keel-stop-v3";

/// The module middleware: adds the two globals and gives every function a [`FunctionStops`].
#[derive(Debug)]
pub struct StopChecks {
    globals: std::sync::OnceLock<(u32, u32)>,
    beat: bool,
}

impl StopChecks {
    /// `beat`: add the store at loop heads. Not needed when the module is also metered:
    /// metering's fuel counter is stored at every branch, so every loop iteration already
    /// stores (Keel's cost function charges every operator at least 1).
    pub fn new(beat: bool) -> StopChecks {
        StopChecks {
            globals: std::sync::OnceLock::new(),
            beat,
        }
    }
}

impl ModuleMiddleware for StopChecks {
    fn generate_function_middleware<'a>(&self, _: LocalFunctionIndex) -> Box<dyn FunctionMiddleware<'a> + 'a> {
        // `transform_module_info` runs first for the module (wasmer's order); without it no
        // function of this module could be compiled.
        let (stop, beat) = self.globals.get().copied().unwrap_or((u32::MAX, u32::MAX));
        Box::new(FunctionStops {
            stop,
            beat,
            beat_at_loops: self.beat,
            entered: false,
        })
    }

    fn transform_module_info(&self, info: &mut ModuleInfo) -> Result<(), MiddlewareError> {
        for name in [STOP_GLOBAL, BEAT_GLOBAL] {
            if info.exports.contains_key(name) {
                return Err(MiddlewareError::new(
                    "keel-stop-checks",
                    format!("the module already exports `{name}`, a name Keel reserves"),
                ));
            }
        }
        let stop = info.globals.push(GlobalType::new(Type::I32, Mutability::Var));
        info.global_initializers.push(GlobalInit::I32Const(0));
        info.exports.insert(STOP_GLOBAL.to_string(), ExportIndex::Global(stop));
        let beat = info.globals.push(GlobalType::new(Type::I32, Mutability::Var));
        info.global_initializers.push(GlobalInit::I32Const(0));
        info.exports.insert(BEAT_GLOBAL.to_string(), ExportIndex::Global(beat));
        if self.globals.set((stop.as_u32(), beat.as_u32())).is_err() {
            return Err(MiddlewareError::new(
                "keel-stop-checks",
                "one StopChecks middleware was used for two modules",
            ));
        }
        Ok(())
    }
}

/// Inserts the stop check before a function's first operator and after every `loop`.
#[derive(Debug)]
struct FunctionStops {
    stop: u32,
    beat: u32,
    beat_at_loops: bool,
    entered: bool,
}

impl FunctionStops {
    /// The check: trap if the flag is set. At a loop head `beat` adds the store that makes
    /// every iteration load the flag again (not needed at function entry: nothing loops back
    /// to it, and every call is a fence for Cranelift's alias analysis).
    fn check<'a>(&self, state: &mut MiddlewareReaderState<'a>, beat: bool) {
        state.extend(&[
            Operator::GlobalGet {
                global_index: self.stop,
            },
            Operator::If {
                blockty: BlockType::Empty,
            },
            Operator::Unreachable,
            Operator::End,
        ]);
        if beat {
            state.extend(&[
                Operator::I32Const { value: 0 },
                Operator::GlobalSet {
                    global_index: self.beat,
                },
            ]);
        }
    }
}

impl<'a> FunctionMiddleware<'a> for FunctionStops {
    fn feed(&mut self, operator: Operator<'a>, state: &mut MiddlewareReaderState<'a>) -> Result<(), MiddlewareError> {
        if self.stop == u32::MAX {
            return Err(MiddlewareError::new(
                "keel-stop-checks",
                "the module's globals were not added",
            ));
        }
        if !self.entered {
            self.entered = true;
            self.check(state, false);
        }
        let is_loop = matches!(operator, Operator::Loop { .. });
        state.push_operator(operator);
        if is_loop {
            self.check(state, self.beat_at_loops);
        }
        Ok(())
    }
}

/// The stop flag of one instance: a pointer to its `$keel_stop` global's value.
#[cfg_attr(test, derive(Clone))]
pub struct StopFlag {
    value: NonNull<AtomicI32>,
    /// wasmtime: the flag lives here (not in the instance), and raising it also bumps the
    /// engine's epoch so that running guests check their flags (see `wt`).
    epoch: Option<(std::sync::Arc<AtomicI32>, wasmtime::Engine)>,
}

// SAFETY: the pointer is only dereferenced by `raise`/`is_raised`/`clear`, as an atomic; for
// wasmtime it points into the `Arc` the flag holds itself. For wasmer the global's storage is owned by the instance's store and stays at one address for the
// store's lifetime (wasmer boxes every global definition). The owner of the `StopFlag`
// (the watchdog's `Watch` of that instance) only writes it while a call of the instance
// is in progress (see `watchdog`'s handshake), when the store is alive.
unsafe impl Send for StopFlag {}
// SAFETY: as above; all accesses are atomic.
unsafe impl Sync for StopFlag {}

impl StopFlag {
    /// The flag of `instance` (made by an engine with [`StopChecks`]), or `None` when the
    /// module has none.
    pub fn of(store: &mut Store, instance: &Instance) -> Option<StopFlag> {
        let global = instance.exports.get_global(STOP_GLOBAL).ok()?.clone();
        // `unwrap_sys` cannot fail: `sys` is the only backend Keel builds wasmer with.
        let wasmer::sys::vm::VMExtern::Global(handle) = wasmer::Extern::Global(global).to_vm_extern().unwrap_sys()
        else {
            return None;
        };
        use wasmer::AsStoreMut;
        let objects = store.objects_mut().as_sys();
        let definition = handle.get(objects).vmglobal();
        // `VMGlobalDefinition` is `repr(C, align(16))` holding a `RawValue` union whose
        // `i32` member is at offset 0; an i32 global's value is read there by compiled code.
        let value = definition.cast::<AtomicI32>();
        Some(StopFlag { value, epoch: None })
    }

    /// The flag of a wasmtime instance: `flag` is read by its store's epoch callback;
    /// raising it bumps `engine`'s epoch so the guest meets that callback at its next check.
    pub fn epoch(flag: std::sync::Arc<AtomicI32>, engine: wasmtime::Engine) -> StopFlag {
        let value = NonNull::from(&*flag);
        StopFlag {
            value,
            epoch: Some((flag, engine)),
        }
    }

    /// A flag of its own, not in any instance (the watchdog's unit tests).
    #[cfg(test)]
    pub fn detached() -> StopFlag {
        let value = NonNull::from(Box::leak(Box::new(AtomicI32::new(0))));
        StopFlag { value, epoch: None }
    }

    /// Ask the guest to stop at its next check.
    pub fn raise(&self) {
        // SAFETY: see the `Send` impl: the global outlives every call during which this is
        // called, the address is 16-byte aligned, and compiled code reads it with a plain
        // 4-byte load, which an atomic store never tears.
        unsafe { self.value.as_ref() }.store(1, Ordering::Release);
        if let Some((_, engine)) = &self.epoch {
            engine.increment_epoch();
        }
    }

    /// Whether the flag was raised (read by the call path after a trap, store still alive).
    pub fn is_raised(&self) -> bool {
        // SAFETY: as in `raise`; the caller holds the instance's store.
        unsafe { self.value.as_ref() }.load(Ordering::Acquire) != 0
    }
}
