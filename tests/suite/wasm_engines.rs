//! The two WASM engines in one process: the node's choice and a manifest's (only where the
//! node allows it), the same plugin on wasmer and wasmtime side by side with the same results
//! and the same error codes, one compiled-module cache entry per engine, and the choice
//! through the C ABI. (Every other WASM test runs on the node default engine: wasmer, or
//! wasmtime when `KEEL_WASM_ENGINE=wasmtime`, which is how ctest runs them a second time.)

use crate::common;
use crate::wasm_support;

use std::ptr;

use common::capi::{self, *};
use keel::error::keel_status::*;
use keel::ffi::wasm::*;
use keel::runtime::wasm::{CacheConfig, WasmConfig, WasmEngine, WasmPlugin, WasmRuntime};
use keel::runtime::{HostServices, Instance};
use serde_json::json;
use wasm_support::*;

const ENGINES: [WasmEngine; 2] = [WasmEngine::Wasmer, WasmEngine::Wasmtime];

fn runtime(node: WasmEngine, manifest_engine: bool, cache: Option<CacheConfig>) -> WasmRuntime {
    WasmRuntime::new(WasmConfig {
        engine: node,
        manifest_engine,
        cache,
        ..WasmConfig::default()
    })
    .unwrap()
}

fn load_on(
    rt: &WasmRuntime,
    fixture: &str,
    engine: Option<WasmEngine>,
    extra: serde_json::Value,
) -> keel::Result<WasmPlugin> {
    let mut extra = extra;
    if let Some(e) = engine {
        extra["wasm_engine"] = json!(e.as_str());
    }
    let m = manifest(fixture, extra);
    rt.load(&artifact(wat_fixture(fixture)), &context(&m, HostServices::default()))
}

fn call(p: &dyn Instance, f: &str, input: &[u8]) -> keel::Result<Vec<u8>> {
    let i = p.functions().iter().position(|n| n == f).unwrap() as u32;
    let mut out = Vec::new();
    p.call(i, input, &mut out).map(|_| out)
}

#[test]
fn the_same_plugins_run_on_both_engines_side_by_side_with_the_same_results_and_codes() {
    let rt = runtime(WasmEngine::Wasmer, true, None);
    let echo: Vec<WasmPlugin> = ENGINES
        .iter()
        .map(|e| load_on(&rt, "echo", Some(*e), json!({"instances": "pooled"})).unwrap())
        .collect();
    let traps: Vec<WasmPlugin> = ENGINES
        .iter()
        .map(|e| load_on(&rt, "trap", Some(*e), json!({})).unwrap())
        .collect();
    let loops: Vec<WasmPlugin> = ENGINES
        .iter()
        .map(|e| {
            load_on(
                &rt,
                "loop",
                Some(*e),
                json!({"limits": {"fuel_per_call": 1_000_000_000_000u64, "timeout_ms": 30}}),
            )
            .unwrap()
        })
        .collect();
    for (i, e) in ENGINES.iter().enumerate() {
        assert_eq!(echo[i].engine(), *e);
        assert_eq!(traps[i].engine(), *e);
        assert_eq!(loops[i].engine(), *e);
    }
    // Both engines' trap handling in one process, from several threads at once: out-of-bounds
    // accesses (a signal on one engine must never be taken for the other's), deadlines.
    std::thread::scope(|s| {
        for t in 0..4usize {
            let (echo, traps, loops) = (&echo, &traps, &loops);
            s.spawn(move || {
                for round in 0..3usize {
                    for i in [(t + round) % 2, (t + round + 1) % 2] {
                        let input: Vec<u8> = (0..1000 + t).map(|b| (b * 3 + round) as u8).collect();
                        assert_eq!(call(&echo[i], "echo", &input).unwrap(), input);
                        let e = call(&traps[i], "oob", b"").unwrap_err();
                        assert_eq!(e.status(), KEEL_ERR_WASM_TRAP, "{:?}: {e}", ENGINES[i]);
                        assert!(e.message().contains("out of bounds"), "{e}");
                        assert_eq!(call(&traps[i], "ok", b"").unwrap(), b"un");
                        if t < 2 {
                            let e = call(&loops[i], "spin", b"").unwrap_err();
                            assert_eq!(e.status(), KEEL_ERR_DEADLINE, "{:?}: {e}", ENGINES[i]);
                            assert_eq!(call(&loops[i], "ok", b"").unwrap(), b"ok");
                        }
                    }
                }
            });
        }
    });
    // Out of fuel is KEEL_ERR_CPU_BUDGET on both (the engines count differently, the code is
    // the same: docs/wasm.md).
    for e in ENGINES {
        let p = load_on(
            &rt,
            "loop",
            Some(e),
            json!({"limits": {"fuel_per_call": 1_000_000, "timeout_ms": 60_000}}),
        )
        .unwrap();
        assert_eq!(
            call(&p, "spin", b"").unwrap_err().status(),
            KEEL_ERR_CPU_BUDGET,
            "{e:?}"
        );
        assert_eq!(call(&p, "ok", b"").unwrap(), b"ok");
    }
}

#[test]
fn a_manifest_picks_another_engine_only_where_the_node_allows_it() {
    for node in ENGINES {
        let other = if node == WasmEngine::Wasmer {
            WasmEngine::Wasmtime
        } else {
            WasmEngine::Wasmer
        };
        let strict = runtime(node, false, None);
        // No choice in the manifest: the node's engine.
        assert_eq!(load_on(&strict, "echo", None, json!({})).unwrap().engine(), node);
        // Naming the node's own engine is fine.
        assert_eq!(load_on(&strict, "echo", Some(node), json!({})).unwrap().engine(), node);
        // The other one is refused, saying why.
        let e = load_on(&strict, "echo", Some(other), json!({})).unwrap_err();
        assert_eq!(e.status(), KEEL_ERR_MANIFEST_INVALID, "{e}");
        assert!(
            e.message().contains(other.as_str()) && e.message().contains("does not let manifests choose"),
            "{e}"
        );
        let open = runtime(node, true, None);
        assert_eq!(load_on(&open, "echo", Some(other), json!({})).unwrap().engine(), other);
    }
    // The manifest schema knows the two names only.
    let mut v = json!({
        "manifest_version": 1, "name": "x", "version": "1.0.0", "runtime": "wasm",
        "binary": {"wasm32": "x.wasm"}, "sha256": "00".repeat(32), "wasm_engine": "v8",
    });
    assert!(keel::manifest::parse_keel_value(v.clone()).is_err());
    v["wasm_engine"] = json!("wasmtime");
    assert_eq!(
        keel::manifest::parse_keel_value(v).unwrap().wasm_engine.as_deref(),
        Some("wasmtime")
    );
}

#[test]
fn the_module_cache_keeps_one_authenticated_entry_per_engine() {
    let d = tempfile::tempdir().unwrap();
    let cache = || Some(CacheConfig::with_key_file(d.path().join("modules"), &d.path().join("cache.key")).unwrap());
    let rt = runtime(WasmEngine::Wasmer, true, cache());
    for e in ENGINES {
        load_on(&rt, "compute", Some(e), json!({})).unwrap();
    }
    let s = rt.cache_stats();
    assert_eq!((s.compiles, s.hits, s.rejected), (2, 0, 0), "one compile per engine");
    // A restarted node hits both entries, and the code computes the same on both engines.
    let rt2 = runtime(WasmEngine::Wasmtime, true, cache());
    let data = b"the same bytes on both engines";
    let sums: Vec<Vec<u8>> = ENGINES
        .iter()
        .map(|e| {
            let p = load_on(&rt2, "compute", Some(*e), json!({})).unwrap();
            call(&p, "checksum", data).unwrap()
        })
        .collect();
    assert_eq!(sums[0], sums[1]);
    let s = rt2.cache_stats();
    assert_eq!((s.compiles, s.hits, s.rejected), (0, 2, 0));
}

#[test]
fn the_engine_through_the_c_abi() {
    let dir = common::tempdir("wasm-engine");
    let h = TestHost::new();
    let (mut e, mut open) = (u32::MAX, true);
    assert_eq!(keel_host_wasm_engine(h.0, &mut e, &mut open), KEEL_OK);
    assert_eq!(e, keel_wasm_engine::from(WasmEngine::node_default()) as u32);
    assert!(!open);
    assert_eq!(
        keel_host_wasm_engine(h.0, ptr::null_mut(), ptr::null_mut()),
        KEEL_ERR_NULL_POINTER
    );
    assert_eq!(
        keel_host_wasm_engine(ptr::null(), &mut e, &mut open),
        KEEL_ERR_NULL_POINTER
    );
    assert_eq!(keel_host_set_wasm_engine(ptr::null(), 1, false), KEEL_ERR_NULL_POINTER);
    assert_eq!(keel_host_set_wasm_engine(h.0, 2, false), KEEL_ERR_INVALID_ARGUMENT);
    assert!(last_error().contains("keel_wasm_engine"), "{}", last_error());
    let wasmtime = keel_wasm_engine::KEEL_WASM_ENGINE_WASMTIME as u32;
    assert_eq!(keel_host_set_wasm_engine(h.0, wasmtime, true), KEEL_OK);
    // keel_host_set_wasm_config keeps the engine.
    // SAFETY: plain C struct of integers and bools, overwritten by keel_wasm_config_default.
    let mut c = unsafe { std::mem::zeroed::<keel_wasm_config>() };
    assert_eq!(keel_wasm_config_default(&mut c), KEEL_OK);
    assert_eq!(keel_host_set_wasm_config(h.0, &c), KEEL_OK);
    assert_eq!(keel_host_wasm_engine(h.0, &mut e, ptr::null_mut()), KEEL_OK);
    assert_eq!(e, wasmtime);
    assert_eq!(keel_host_wasm_engine(h.0, ptr::null_mut(), &mut open), KEEL_OK);
    assert!(open);

    // The plugin runs on wasmtime: its Debug says so, and it answers.
    let wasm = wat_fixture("echo");
    std::fs::write(dir.join("echo.wasm"), &wasm).unwrap();
    let m = json!({
        "manifest_version": 1, "name": "echo", "version": "1.0.0", "runtime": "wasm",
        "binary": {"wasm32": "echo.wasm"}, "sha256": keel::trust::digest::sha256_hex(&wasm),
    });
    let path = dir.join("echo.json");
    std::fs::write(&path, m.to_string()).unwrap();
    let p = h.load_plugin(&path).unwrap_or_else(|s| panic!("{s}: {}", last_error()));
    let out = Buf::new();
    assert_eq!(capi::call(p.0, p.function("echo").unwrap(), b"hi", &out), KEEL_OK);
    assert_eq!(out.bytes(), b"hi");
    // The runtime runs now: the engine is fixed.
    assert_eq!(keel_host_set_wasm_engine(h.0, 0, false), KEEL_ERR_INVALID_ARGUMENT);
    assert!(last_error().contains("already running"), "{}", last_error());
    assert_eq!(keel_host_wasm_engine(h.0, &mut e, ptr::null_mut()), KEEL_OK);
    assert_eq!(e, wasmtime);
}
