//! WASM module loader: a module through compile, the import/export checks, instantiation
//! (keel_abi_version, keel_functions, keel_init) and one call, on the lowest-level runtime API
//! that does all of that (`WasmRuntime::instantiate`, the same call the host's load path
//! makes after the digest check). The first input byte picks the module:
//!   0: the remaining bytes as they are (raw WASM, seeds in the corpus)
//!   1: a `wasm-smith` module of any shape
//!   2: a `wasm-smith` module with exactly Keel's ABI exports, free to import Keel's host
//!      functions (so generated code reaches instantiate and the call)
//! Any outcome but a panic or a crash is fine: every failure must be an error value.
//!
//! Shared by the fuzz target (tests/fuzz/fuzz_targets) and the suite, which replays the
//! checked-in corpus through it (tests/suite/fuzz_corpus.rs).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arbitrary::Unstructured;
use keel::artifact;
use keel::capability::Capabilities;
use keel::manifest::{self, Manifest};
use keel::runtime::wasm::{WasmConfig, WasmLimits, WasmRuntime};
use keel::runtime::{HostServices, LoadContext, LogLevel, MemoryKv};

const CAPS: &[&str] = &["log", "clock", "random", "kv:read", "kv:write"];

/// The ABI a generated module of mode 2 exports (names and types; wasm-smith writes bodies).
const ABI_EXPORTS: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "keel_abi_version") (result i32) unreachable)
  (func (export "keel_functions") (result i64) unreachable)
  (func (export "keel_alloc") (param i32) (result i32) unreachable)
  (func (export "keel_call") (param i32 i32 i32) (result i64) unreachable)
  (func (export "keel_init") (param i32 i32) (result i64) unreachable)
  (func (export "keel_health") (result i32) unreachable))"#;

/// Keel's host functions, as a module of imports wasm-smith may draw from.
const HOST_IMPORTS: &str = r#"(module
  (import "keel" "log" (func (param i32 i32 i32)))
  (import "keel" "now_unix_nanos" (func (result i64)))
  (import "keel" "random_bytes" (func (param i32 i32) (result i32)))
  (import "keel" "kv_get" (func (param i32 i32 i32 i32) (result i64)))
  (import "keel" "kv_put" (func (param i32 i32 i32 i32) (result i32)))
  (import "keel" "kv_delete" (func (param i32 i32) (result i32))))"#;

struct Fixture {
    runtime: WasmRuntime,
    manifest: Manifest,
    services: HostServices,
    abi_exports: Vec<u8>,
    host_imports: Vec<u8>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        // Small limits so a generated infinite loop or memory hog ends fast.
        let small = WasmLimits {
            memory_mb: 16,
            fuel_per_call: 200_000,
            timeout_ms: 200,
            max_output_bytes: 1 << 20,
        };
        let config = WasmConfig {
            defaults: small,
            ceilings: small,
            pool_size: 1,
            metering: true,
            watchdog_tick: Duration::from_millis(1),
            cache: None,
            memory: Default::default(),
            // The node default: wasmer, or the engine KEEL_WASM_ENGINE names.
            engine: keel::runtime::wasm::WasmEngine::node_default(),
            manifest_engine: false,
            // The node default: Cranelift, or the policy KEEL_WASM_COMPILER names.
            compiler: keel::runtime::wasm::WasmCompiler::node_default(),
        };
        let manifest = manifest::parse_keel_value(serde_json::json!({
            "manifest_version": 1,
            "name": "fuzzed",
            "version": "1.0.0",
            "runtime": "wasm",
            "binary": {"wasm32": "fuzzed.wasm"},
            "sha256": "00".repeat(32),
            "capabilities": CAPS,
            "config": {"k": "v"},
        }))
        .expect("fixture manifest is valid");
        Fixture {
            runtime: WasmRuntime::new(config).expect("WASM runtime starts"),
            manifest,
            services: HostServices::default()
                .with_kv(Arc::new(MemoryKv::default()))
                .with_log(Arc::new(|_: &str, _: LogLevel, _: &str| {})),
            abi_exports: wat::parse_str(ABI_EXPORTS).unwrap(),
            host_imports: wat::parse_str(HOST_IMPORTS).unwrap(),
        }
    })
}

fn smith(f: &Fixture, u: &mut Unstructured<'_>, abi: bool) -> Option<Vec<u8>> {
    let mut config: wasm_smith::Config = u.arbitrary().ok()?;
    config.max_memory32_bytes = config.max_memory32_bytes.min(16 << 20);
    config.memory64_enabled = false;
    config.threads_enabled = false;
    config.exceptions_enabled = false;
    config.gc_enabled = false;
    config.max_funcs = config.max_funcs.min(50);
    config.max_instructions = config.max_instructions.min(2000);
    if abi {
        config.exports = Some(f.abi_exports.clone());
        config.available_imports = Some(f.host_imports.clone());
        config.max_memories = 1;
    }
    let module = wasm_smith::Module::new(config, u).ok()?;
    Some(module.to_bytes())
}

/// One input: never panics; the oracles above hold.
pub fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let f = fixture();
    let mut u = Unstructured::new(rest);
    let (bytes, input, fn_pick) = match mode % 3 {
        0 => (rest.to_vec(), b"fuzz input".to_vec(), 0u32),
        m => {
            let Some(b) = smith(f, &mut u, m == 2) else { return };
            let input: Vec<u8> = u.arbitrary().unwrap_or_default();
            let pick: u32 = u.arbitrary().unwrap_or(0);
            (b, input, pick)
        }
    };
    let art = artifact::from_bytes(bytes);
    let pin = art.sha256_hex();
    let Ok(art) = art.verify(&pin, "fuzzed module") else {
        panic!("an artifact does not match its own digest");
    };
    let ctx = LoadContext {
        manifest: &f.manifest,
        granted: Capabilities::parse(CAPS).unwrap(),
        services: f.services.clone(),
        restored_state: None,
        restored_state_version: None,
        generation: 1,
        signer_key_id: None,
    };
    let Ok(instance) = f.runtime.instantiate(&art, &ctx) else {
        return;
    };
    let n = instance.functions().len() as u32;
    let mut out = Vec::new();
    // One call of a listed function (or, with no functions, of index 0: must be refused).
    let function = if n == 0 { 0 } else { fn_pick % n };
    let r = instance.call(function, &input, &mut out);
    if n == 0 {
        assert!(r.is_err(), "a call to a function the module does not list succeeded");
    }
    if r.is_ok() {
        assert!(
            out.len() <= 1 << 20,
            "output of {} bytes passed the 1 MiB limit",
            out.len()
        );
    }
    let _ = instance.health();
    let _ = instance.save_state();
    drop(instance);
}
