//! Engines: Cranelift or Singlepass ([`WasmTier`]) with the `Metering` middleware, the stop
//! checks and capped tunables.
//!
//! wasmer's `Metering` middleware records the indexes of its two globals when it transforms
//! a module and panics if the same middleware value transforms a second module, and memory
//! caps live in an engine's tunables. So every plugin generation gets its own engine: a
//! compiling engine with a fresh `Metering` on a cache miss, a headless one (no compiler)
//! when its compiled code comes from the cache. Both carry the plugin's tunables, and the
//! plugin's stores are created from it.

use std::sync::Arc;

use wasmer::sys::{Cranelift, CraneliftOptLevel, EngineBuilder, NativeEngineExt, Singlepass, Target};
use wasmer::wasmparser::Operator;
use wasmer::{Engine, Pages};
use wasmer_middlewares::Metering;

use super::interrupt::{StopChecks, STOP_CHECKS_ID};
use super::tunables::{CappedTunables, MemoryMode};
use super::WasmTier;

/// Names the cost function below; part of the compiled-module cache key. Change it whenever
/// [`operator_cost`] changes.
pub const METERING_ID: &str = "keel-cost-v1";

/// Fuel points one operator costs: 1 for plain operators, more for calls and for operators
/// whose host-side work grows with their operands (memory growth, bulk memory and table
/// operations). Deterministic: the same module and input always use the same fuel.
pub fn operator_cost(op: &Operator) -> u64 {
    match op {
        Operator::Call { .. }
        | Operator::CallIndirect { .. }
        | Operator::CallRef { .. }
        | Operator::ReturnCall { .. }
        | Operator::ReturnCallIndirect { .. }
        | Operator::ReturnCallRef { .. } => 4,
        Operator::MemoryGrow { .. } | Operator::TableGrow { .. } => 1024,
        Operator::MemoryCopy { .. }
        | Operator::MemoryFill { .. }
        | Operator::MemoryInit { .. }
        | Operator::TableCopy { .. }
        | Operator::TableFill { .. }
        | Operator::TableInit { .. } => 64,
        _ => 1,
    }
}

fn cranelift() -> Cranelift {
    let mut c = Cranelift::new();
    c.opt_level(CraneliftOptLevel::Speed);
    c
}

/// An engine that compiles with `tier`'s compiler (Cranelift optimised for speed, or
/// Singlepass), metering when `metering` is on, the stop checks always, memories capped at
/// `cap` and laid out as `mode` says. Both compilers get the same middlewares, in the same
/// order, so fuel and stops mean the same on either tier.
pub fn compiling(tier: WasmTier, cap: Pages, metering: bool, mode: MemoryMode) -> Engine {
    use wasmer::sys::CompilerConfig;
    fn with_middlewares(compiler: &mut dyn CompilerConfig, metering: bool) {
        if metering {
            // Initial limit 0: no guest code can run before the host sets the budget (Keel
            // refuses start functions, and sets the points before every entry).
            compiler.push_middleware(Arc::new(Metering::new(0, operator_cost)));
        }
        // Every module gets the stop checks the watchdog's deadlines and cancellation rely on
        // (see `interrupt`); after metering, so its accounting never sees their operators.
        compiler.push_middleware(Arc::new(StopChecks::new(!metering)));
    }
    let mut engine: Engine = match tier {
        WasmTier::Cranelift => {
            let mut c = cranelift();
            with_middlewares(&mut c, metering);
            EngineBuilder::new(c).into()
        }
        WasmTier::Singlepass => {
            let mut c = Singlepass::new();
            with_middlewares(&mut c, metering);
            EngineBuilder::new(c).into()
        }
    };
    engine.set_tunables(CappedTunables::new(cap, mode));
    engine
}

/// An engine without a compiler, for modules deserialized from the cache.
pub fn headless(cap: Pages, mode: MemoryMode) -> Engine {
    let mut engine = <Engine as NativeEngineExt>::headless();
    engine.set_tunables(CappedTunables::new(cap, mode));
    engine
}

/// What the compiled code depends on besides the module's bytes: wasmer's version, the
/// compiler (`tier`: Singlepass code is never served as Cranelift code, nor the reverse) and
/// its settings, the cost function, the memory cap and the memory style (fixed
/// at compile time: code compiled for static memories has no bounds checks and must never
/// run on a dynamic one) and the host target with its CPU features. Part of the cache key.
pub fn engine_key(tier: WasmTier, cap: Pages, metering: bool, mode: MemoryMode) -> String {
    let target = Target::default();
    let style = match mode.style() {
        wasmer::sys::vm::MemoryStyle::Static => "static".to_string(),
        wasmer::sys::vm::MemoryStyle::Dynamic { offset_guard_size } => format!("dynamic-guard-{offset_guard_size}"),
    };
    format!(
        "keel-wasm/1 wasmer-vm/{} {} metering/{} stops/{STOP_CHECKS_ID} cap-pages/{} memory/{style} target/{} cpu/{:?}",
        wasmer::sys::vm::VERSION,
        match tier {
            WasmTier::Cranelift => "cranelift/opt-speed",
            WasmTier::Singlepass => "singlepass/nan-canonical",
        },
        if metering { METERING_ID } else { "off" },
        cap.0,
        target.triple(),
        target.cpu_features(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_are_deterministic_and_weighted() {
        assert_eq!(operator_cost(&Operator::Nop), 1);
        assert_eq!(operator_cost(&Operator::Call { function_index: 0 }), 4);
        assert_eq!(operator_cost(&Operator::MemoryGrow { mem: 0 }), 1024);
    }

    #[test]
    fn engine_key_names_what_code_depends_on() {
        let c = WasmTier::Cranelift;
        let a = engine_key(c, Pages(16), true, MemoryMode::Capped);
        assert!(a.contains(wasmer::sys::vm::VERSION) && a.contains(METERING_ID) && a.contains("cap-pages/16"));
        assert_ne!(a, engine_key(c, Pages(17), true, MemoryMode::Capped));
        assert_ne!(a, engine_key(c, Pages(16), false, MemoryMode::Capped));
        // Static code has no bounds checks: never shared with the dynamic style.
        assert_ne!(a, engine_key(c, Pages(16), true, MemoryMode::Static));
        assert!(a.contains("memory/dynamic-guard-65536"));
        // Capped and Dynamic run the same code (same style), so they may share entries.
        assert_eq!(a, engine_key(c, Pages(16), true, MemoryMode::Dynamic));
        // Each compiler's code under its own key.
        let s = engine_key(WasmTier::Singlepass, Pages(16), true, MemoryMode::Capped);
        assert_ne!(a, s);
        assert!(a.contains("cranelift") && s.contains("singlepass") && !s.contains("cranelift"));
    }

    #[test]
    fn one_metering_engine_per_module() {
        // A compiling engine compiles one module; each plugin gets its own engine.
        let wasm = wat::parse_str("(module (func (export \"f\") (result i32) i32.const 1))").unwrap();
        for tier in [
            WasmTier::Cranelift,
            WasmTier::Cranelift,
            WasmTier::Singlepass,
            WasmTier::Singlepass,
        ] {
            let e = compiling(tier, Pages(1), true, MemoryMode::Capped);
            let m = wasmer::Module::new(&e, &wasm).unwrap();
            assert!(m.exports().any(|x| x.name() == "wasmer_metering_remaining_points"));
            assert!(m.exports().any(|x| x.name() == super::super::interrupt::STOP_GLOBAL));
        }
    }
}
