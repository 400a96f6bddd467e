//! The WASM compiler policy on wasmer (docs/wasm.md, "Compilers and tiering"): Singlepass
//! nodes keep the suite's behaviours (results, fuel, deadlines, cancel, memory cap); tiered
//! plugins start on Singlepass and switch to Cranelift in the background (pooled plugins
//! while calls flow, serial plugins only with save/restore), the cache then holds the
//! Cranelift code, and the C ABI's setter refuses what it cannot honour.

use crate::common;
use crate::wasm_support;

use common::capi::{self, *};

use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use keel::error::keel_status::*;
use keel::ffi::wasm::*;
use keel::runtime::wasm::{
    CacheConfig, TierUp, WasmCompiler, WasmConfig, WasmEngine, WasmPlugin, WasmRuntime, WasmTier,
};
use keel::runtime::{HostServices, Instance};
use keel::services::call::{CallOptions, CancelToken};
use serde_json::json;
use wasm_support::*;

/// Long enough for a Cranelift compile on a loaded 2-core machine; the waits return as soon
/// as the tier-up ends.
const TIER_UP: Duration = Duration::from_secs(120);

fn runtime(compiler: WasmCompiler, cache: Option<CacheConfig>) -> WasmRuntime {
    wasmer_runtime(compiler, cache)
}

fn cache(dir: &std::path::Path) -> Option<CacheConfig> {
    Some(CacheConfig::with_key_file(dir.join("modules"), &dir.join("cache.key")).unwrap())
}

fn load_bytes(rt: &WasmRuntime, wasm: Vec<u8>, name: &str, extra: serde_json::Value) -> WasmPlugin {
    let m = manifest(name, extra);
    rt.load(&artifact(wasm), &context(&m, HostServices::default()))
        .unwrap_or_else(|e| panic!("loading {name}: {e}"))
}

fn load(rt: &WasmRuntime, fixture: &str, extra: serde_json::Value) -> WasmPlugin {
    load_bytes(rt, wat_fixture(fixture), fixture, extra)
}

fn call(p: &dyn Instance, f: &str, input: &[u8]) -> keel::Result<Vec<u8>> {
    let i = p.functions().iter().position(|n| n == f).unwrap() as u32;
    let mut out = Vec::new();
    p.call(i, input, &mut out).map(|_| out)
}

fn u64le(v: &[u8]) -> u64 {
    u64::from_le_bytes(v.try_into().expect("8 bytes"))
}

fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100000001b3)
    })
}

fn entries(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "keelwasm"))
            })
            .count()
        })
        .unwrap_or(0)
}

// ---- Singlepass ------------------------------------------------------------------------

#[test]
fn a_singlepass_node_computes_meters_stops_and_caps_like_cranelift() {
    let rt = runtime(WasmCompiler::Singlepass, None);
    let p = load(&rt, "compute", json!({}));
    assert_eq!(p.tier(), WasmTier::Singlepass);
    assert_eq!(p.tier_up(), TierUp::NotTiered);
    let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
    assert_eq!(u64le(&call(&p, "checksum", &data).unwrap()), fnv1a(&data));
    let sum: u64 = data.iter().map(|b| *b as u64).sum();
    assert_eq!(u64le(&call(&p, "sum", &data).unwrap()), sum);

    // Fuel: metering works on Singlepass code.
    let l = load(
        &rt,
        "loop",
        json!({"limits": {"fuel_per_call": 1_000_000, "timeout_ms": 60_000}}),
    );
    let e = call(&l, "spin", b"").unwrap_err();
    assert_eq!(e.status(), KEEL_ERR_CPU_BUDGET, "{e}");
    assert_eq!(call(&l, "ok", b"").unwrap(), b"ok");

    // Deadline: the stop checks work on Singlepass code.
    let l = load(
        &rt,
        "loop",
        json!({"limits": {"fuel_per_call": 1_000_000_000_000u64, "timeout_ms": 50}}),
    );
    let e = call(&l, "spin", b"").unwrap_err();
    assert_eq!(e.status(), KEEL_ERR_DEADLINE, "{e}");
    assert_eq!(call(&l, "ok", b"").unwrap(), b"ok");

    // Cancel: only the token can stop this call (a minute of deadline, fuel for hours).
    let l = load(
        &rt,
        "loop",
        json!({"limits": {"fuel_per_call": 1_000_000_000_000u64, "timeout_ms": 60_000}}),
    );
    let token = CancelToken::new();
    token.cancel();
    let opts = CallOptions {
        cancel: Some(&token),
        ..CallOptions::default()
    };
    let mut out = Vec::new();
    let e = l.call_with(0, b"", &mut out, &opts).unwrap_err();
    assert_eq!(e.status(), KEEL_ERR_CANCELLED, "{e}");
    assert_eq!(call(&l, "ok", b"").unwrap(), b"ok");

    // Memory cap: growth stops at 2 MiB (32 pages), and trapping after it is MEMORY_LIMIT.
    let m = load(&rt, "memhog", json!({"limits": {"memory_mb": 2}}));
    let pages = u32::from_le_bytes(call(&m, "probe", b"").unwrap()[..4].try_into().unwrap());
    assert_eq!(pages, 32);
    assert_eq!(call(&m, "hog", b"").unwrap_err().status(), KEEL_ERR_MEMORY_LIMIT);
}

#[test]
fn without_metering_a_singlepass_loop_is_still_stopped_at_its_deadline() {
    let rt = WasmRuntime::new(WasmConfig {
        engine: WasmEngine::Wasmer,
        compiler: WasmCompiler::Singlepass,
        metering: false,
        ..WasmConfig::default()
    })
    .unwrap();
    let l = load(&rt, "loop", json!({"limits": {"timeout_ms": 50}}));
    assert_eq!(call(&l, "spin", b"").unwrap_err().status(), KEEL_ERR_DEADLINE);
    assert_eq!(call(&l, "ok", b"").unwrap(), b"ok");
}

#[test]
fn each_compiler_has_its_own_cache_entries() {
    let d = tempfile::tempdir().unwrap();
    let modules = d.path().join("modules");
    let sp = runtime(WasmCompiler::Singlepass, cache(d.path()));
    let a = load(&sp, "compute", json!({}));
    assert_eq!(entries(&modules), 1);
    // A Cranelift node on the same cache does not get the Singlepass code: it compiles.
    let cl = runtime(WasmCompiler::Cranelift, cache(d.path()));
    let b = load(&cl, "compute", json!({}));
    assert_eq!((cl.cache_stats().hits, cl.cache_stats().compiles), (0, 1));
    assert_eq!((a.tier(), b.tier()), (WasmTier::Singlepass, WasmTier::Cranelift));
    assert_eq!(entries(&modules), 2);
    // Each node hits its own compiler's entry.
    let sp2 = runtime(WasmCompiler::Singlepass, cache(d.path()));
    assert_eq!(load(&sp2, "compute", json!({})).tier(), WasmTier::Singlepass);
    assert_eq!((sp2.cache_stats().hits, sp2.cache_stats().compiles), (1, 0));
}

// ---- tiered ----------------------------------------------------------------------------

#[test]
fn a_tiered_pooled_plugin_serves_on_singlepass_then_switches_to_cranelift() {
    let rt = runtime(WasmCompiler::Tiered, None);
    let p = load(&rt, "compute", json!({"instances": "pooled"}));
    assert_eq!(p.loaded_tier(), WasmTier::Singlepass);
    let data = b"the same answer on either tier";
    let before = call(&p, "checksum", data).unwrap();
    assert_eq!(u64le(&before), fnv1a(data));
    assert_eq!(p.wait_for_tier_up(TIER_UP), TierUp::Switched);
    assert_eq!(p.tier(), WasmTier::Cranelift);
    assert_eq!(call(&p, "checksum", data).unwrap(), before);
    assert_eq!(u64le(&call(&p, "fib", &50u32.to_le_bytes()).unwrap()), 12586269025);
}

#[test]
fn a_pooled_plugin_keeps_serving_from_several_threads_while_it_switches() {
    let rt = runtime(WasmCompiler::Tiered, None);
    let p = load_bytes(&rt, big_module(), "big", json!({"instances": "pooled"}));
    assert_eq!(p.loaded_tier(), WasmTier::Singlepass);
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 31) as u8).collect();
    let want = fnv1a(&data);
    let switched = AtomicBool::new(false);
    let (during, after) = (AtomicUsize::new(0), AtomicUsize::new(0));
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| {
                // Call until the switch is over, then a few more times on the new code.
                let mut extra = 0;
                while extra < 50 {
                    let r = call(&p, "checksum", &data).unwrap_or_else(|e| panic!("a call failed: {e}"));
                    assert_eq!(u64le(&r), want);
                    if switched.load(Ordering::Acquire) {
                        extra += 1;
                        after.fetch_add(1, Ordering::Relaxed);
                    } else {
                        during.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        assert_eq!(p.wait_for_tier_up(TIER_UP), TierUp::Switched);
        switched.store(true, Ordering::Release);
    });
    assert!(during.load(Ordering::Relaxed) > 0, "calls ran during the compile");
    assert_eq!(after.load(Ordering::Relaxed), 150);
    assert_eq!(p.tier(), WasmTier::Cranelift);
    // The pool holds no more than its slots, and nothing leaked from the replaced tier.
    drop(p);
    assert_eq!(rt.live_instances(), 0);
}

#[test]
fn pooled_instances_made_after_the_switch_get_the_pools_handed_over_state() {
    let rt = runtime(WasmCompiler::Tiered, None);
    let p = load(&rt, "counter", json!({"instances": "pooled"}));
    p.restore_state(&41u64.to_le_bytes()).unwrap();
    assert_eq!(p.wait_for_tier_up(TIER_UP), TierUp::Switched);
    // The switch dropped the idle Singlepass instances: the next ones are made from the
    // Cranelift code, with keel_init and the restored state, as before the switch.
    assert_eq!(p.tier(), WasmTier::Cranelift);
    assert_eq!(u64le(&call(&p, "get", b"").unwrap()), 41);
    assert_eq!(p.kept_instances(), 1);
}

#[test]
fn the_cache_then_holds_the_cranelift_code_and_the_next_load_skips_the_first_tier() {
    let d = tempfile::tempdir().unwrap();
    let rt = runtime(WasmCompiler::Tiered, cache(d.path()));
    let a = load(&rt, "compute", json!({"instances": "pooled"}));
    assert_eq!(a.wait_for_tier_up(TIER_UP), TierUp::Switched);
    // The load compiled Singlepass (not cached), the tier-up compiled and stored Cranelift.
    assert_eq!((rt.cache_stats().compiles, rt.cache_stats().hits), (2, 0));
    assert_eq!(entries(&d.path().join("modules")), 1);
    let b = load(&rt, "compute", json!({"instances": "pooled"}));
    assert_eq!(rt.cache_stats().hits, 1);
    assert_eq!(
        (b.loaded_tier(), b.tier(), b.tier_up()),
        (WasmTier::Cranelift, WasmTier::Cranelift, TierUp::NotTiered)
    );
    let data = b"cached cranelift code";
    assert_eq!(u64le(&call(&b, "checksum", data).unwrap()), fnv1a(data));
    // It is Cranelift code under Cranelift's key: a Cranelift node hits it too.
    let cl = runtime(WasmCompiler::Cranelift, cache(d.path()));
    load(&cl, "compute", json!({}));
    assert_eq!((cl.cache_stats().hits, cl.cache_stats().compiles), (1, 0));
}

#[test]
fn a_serial_plugin_with_save_and_restore_keeps_its_state_across_the_switch() {
    let rt = runtime(WasmCompiler::Tiered, None);
    let p = load(&rt, "counter", json!({}));
    assert!(!p.is_pooled());
    for _ in 0..5 {
        call(&p, "incr", b"").unwrap();
    }
    assert_eq!(p.wait_for_tier_up(TIER_UP), TierUp::Switched);
    assert_eq!(p.tier(), WasmTier::Cranelift);
    assert_eq!(u64le(&call(&p, "get", b"").unwrap()), 5);
    assert_eq!(u64le(&call(&p, "incr", b"").unwrap()), 6);
    assert_eq!(rt.live_instances(), 1);
}

#[test]
fn a_serial_plugin_without_save_and_restore_stays_on_its_first_tier_until_reload() {
    let d = tempfile::tempdir().unwrap();
    let rt = runtime(WasmCompiler::Tiered, cache(d.path()));
    let p = load(&rt, "compute", json!({}));
    assert!(!p.is_pooled());
    let TierUp::Kept(why) = p.wait_for_tier_up(TIER_UP) else {
        panic!("expected the plugin to keep its first tier: {:?}", p.tier_up());
    };
    assert!(why.contains("keel_save_state"), "{why}");
    assert_eq!(p.tier(), WasmTier::Singlepass);
    let data = b"still served";
    assert_eq!(u64le(&call(&p, "checksum", data).unwrap()), fnv1a(data));
    // The Cranelift code was cached all the same: the reload's load starts on it.
    let next = load(&rt, "compute", json!({}));
    assert_eq!((next.loaded_tier(), rt.cache_stats().hits), (WasmTier::Cranelift, 1));
}

#[test]
fn unloading_during_the_tier_up_compile_is_clean() {
    let rt = runtime(WasmCompiler::Tiered, None);
    let p = load_bytes(&rt, big_module(), "big", json!({"instances": "pooled"}));
    let watch = p.tier_up_watch().expect("a tiered plugin has a tier-up");
    assert_eq!(rt.live_instances(), 1);
    // Dropped while the ~100 KB module is compiled by Cranelift: its instance goes at once.
    drop(p);
    assert_eq!(rt.live_instances(), 0);
    assert_eq!(watch.wait(TIER_UP), TierUp::Abandoned);
    assert_eq!(rt.live_instances(), 0);
}

#[test]
fn tier_up_compiles_take_turns_and_a_waiting_one_whose_plugin_went_never_compiles() {
    let rt = runtime(WasmCompiler::Tiered, None);
    let a = load_bytes(&rt, big_module(), "big-a", json!({"instances": "pooled"}));
    let b = load_bytes(&rt, big_module(), "big-b", json!({"instances": "pooled"}));
    let (wa, wb) = (a.tier_up_watch().unwrap(), b.tier_up_watch().unwrap());
    // Two first-tier compiles so far; a's Cranelift compile holds the turn (it started a whole
    // Singlepass compile earlier), b's waits for it. Dropped while waiting, b never compiles.
    assert_eq!(rt.cache_stats().compiles, 2);
    drop(b);
    assert_eq!(wb.wait(TIER_UP), TierUp::Abandoned);
    assert_eq!(wa.wait(TIER_UP), TierUp::Switched);
    assert_eq!(rt.cache_stats().compiles, 3, "only a's tier-up compiled");
    assert_eq!(a.tier(), WasmTier::Cranelift);
}

#[test]
fn plugins_on_wasmtime_compile_with_cranelift_whatever_the_policy() {
    let rt = WasmRuntime::new(WasmConfig {
        engine: WasmEngine::Wasmer,
        manifest_engine: true,
        compiler: WasmCompiler::Tiered,
        ..WasmConfig::default()
    })
    .unwrap();
    let wt = load(
        &rt,
        "compute",
        json!({"wasm_engine": "wasmtime", "instances": "pooled"}),
    );
    assert_eq!(wt.engine(), WasmEngine::Wasmtime);
    assert_eq!(
        (wt.loaded_tier(), wt.tier_up()),
        (WasmTier::Cranelift, TierUp::NotTiered)
    );
    let wr = load(&rt, "compute", json!({"instances": "pooled"}));
    assert_eq!(
        (wr.engine(), wr.loaded_tier()),
        (WasmEngine::Wasmer, WasmTier::Singlepass)
    );
    let data = b"same on both";
    assert_eq!(
        call(&wt, "checksum", data).unwrap(),
        call(&wr, "checksum", data).unwrap()
    );
}

// ---- C ABI -----------------------------------------------------------------------------

#[test]
fn the_compiler_through_the_c_abi_and_hostile_values() {
    let dir = common::tempdir("wasm-compiler");
    let h = TestHost::new();
    // The environment (KEEL_WASM_ENGINE, KEEL_WASM_COMPILER) must not decide this test's.
    assert_eq!(keel_host_set_wasm_engine(h.0, 0, false), KEEL_OK);
    let mut c = u32::MAX;
    assert_eq!(keel_host_wasm_compiler(h.0, &mut c), KEEL_OK);
    assert_eq!(c, keel_wasm_compiler::from(WasmCompiler::node_default()) as u32);
    assert_eq!(keel_host_set_wasm_compiler(h.0, 0), KEEL_OK);
    assert_eq!(keel_host_wasm_compiler(h.0, ptr::null_mut()), KEEL_ERR_NULL_POINTER);
    assert_eq!(keel_host_wasm_compiler(ptr::null(), &mut c), KEEL_ERR_NULL_POINTER);
    assert_eq!(keel_host_set_wasm_compiler(ptr::null(), 1), KEEL_ERR_NULL_POINTER);
    for bad in [3, 255, u32::MAX] {
        assert_eq!(keel_host_set_wasm_compiler(h.0, bad), KEEL_ERR_INVALID_ARGUMENT);
        assert!(last_error().contains("keel_wasm_compiler"), "{}", last_error());
    }
    // wasmtime compiles with Cranelift only: a wasmtime host refuses the other policies.
    assert_eq!(keel_host_set_wasm_engine(h.0, 1, false), KEEL_OK);
    for c in [1, 2] {
        assert_eq!(keel_host_set_wasm_compiler(h.0, c), KEEL_ERR_UNSUPPORTED);
        assert!(last_error().contains("wasmtime"), "{}", last_error());
    }
    assert_eq!(keel_host_wasm_compiler(h.0, &mut c), KEEL_OK);
    assert_eq!(c, 0, "a refused setting changes nothing");
    assert_eq!(keel_host_set_wasm_engine(h.0, 0, false), KEEL_OK);
    let tiered = keel_wasm_compiler::KEEL_WASM_COMPILER_TIERED as u32;
    assert_eq!(keel_host_set_wasm_compiler(h.0, tiered), KEEL_OK);
    // keel_host_set_wasm_config keeps the compiler.
    // SAFETY: plain C struct of integers and bools, overwritten by keel_wasm_config_default.
    let mut cfg = unsafe { std::mem::zeroed::<keel_wasm_config>() };
    assert_eq!(keel_wasm_config_default(&mut cfg), KEEL_OK);
    assert_eq!(keel_host_set_wasm_config(h.0, &cfg), KEEL_OK);
    assert_eq!(keel_host_wasm_compiler(h.0, &mut c), KEEL_OK);
    assert_eq!(c, tiered);

    // A counter (serial, with save/restore): Singlepass first, Cranelift after its tier-up.
    let wasm = wat_fixture("counter");
    std::fs::write(dir.join("counter.wasm"), &wasm).unwrap();
    let m = json!({
        "manifest_version": 1, "name": "counter", "version": "1.0.0", "runtime": "wasm",
        "binary": {"wasm32": "counter.wasm"}, "sha256": keel::trust::digest::sha256_hex(&wasm),
    });
    let path = dir.join("counter.json");
    std::fs::write(&path, m.to_string()).unwrap();
    let p = h.load_plugin(&path).unwrap_or_else(|s| panic!("{s}: {}", last_error()));
    let out = Buf::new();
    assert_eq!(capi::call(p.0, p.function("incr").unwrap(), b"", &out), KEEL_OK);
    let mut t = u32::MAX;
    assert_eq!(keel_plugin_wasm_tier(p.0, &mut t), KEEL_OK);
    assert!(
        t == keel_wasm_tier::KEEL_WASM_TIER_SINGLEPASS as u32 || t == keel_wasm_tier::KEEL_WASM_TIER_CRANELIFT as u32
    );
    assert_eq!(keel_plugin_wasm_tier(p.0, ptr::null_mut()), KEEL_ERR_NULL_POINTER);
    assert_eq!(keel_plugin_wasm_tier(ptr::null(), &mut t), KEEL_ERR_NULL_POINTER);
    // A serial plugin without save/restore (echo.wat) keeps Singlepass until its next reload:
    // the tier C reads is then certain.
    let echo = wat_fixture("echo");
    std::fs::write(dir.join("echo.wasm"), &echo).unwrap();
    let m = json!({
        "manifest_version": 1, "name": "echo-serial", "version": "1.0.0", "runtime": "wasm",
        "binary": {"wasm32": "echo.wasm"}, "sha256": keel::trust::digest::sha256_hex(&echo),
    });
    let path = dir.join("echo.json");
    std::fs::write(&path, m.to_string()).unwrap();
    let e = h.load_plugin(&path).unwrap_or_else(|s| panic!("{s}: {}", last_error()));
    assert_eq!(keel_plugin_wasm_tier(e.0, &mut t), KEEL_OK);
    assert_eq!(t, keel_wasm_tier::KEEL_WASM_TIER_SINGLEPASS as u32);
    // A native plugin has no WASM tier.
    let (_native_dir, native) = common::echo_plugin("wasm-tier-native", &[], json!({}));
    let n = h
        .load_plugin(&native)
        .unwrap_or_else(|s| panic!("{s}: {}", last_error()));
    t = 7;
    assert_eq!(keel_plugin_wasm_tier(n.0, &mut t), KEEL_ERR_UNSUPPORTED);
    assert!(last_error().contains("WASM"), "{}", last_error());
    assert_eq!(t, 7, "nothing written on failure");
    // The runtime runs now: the compiler is fixed.
    assert_eq!(keel_host_set_wasm_compiler(h.0, 0), KEEL_ERR_INVALID_ARGUMENT);
    assert!(last_error().contains("already running"), "{}", last_error());
}
