//! Node-wide WASM settings through the C ABI: defaults, ceilings, metering, and the
//! compiled-module cache, as a C++ host sets them.

use crate::common;

use std::path::{Path, PathBuf};
use std::ptr;

use common::capi::*;
use keel::ffi::wasm::*;
use keel::keel_status::*;

/// Compile a WAT fixture to `<dir>/<name>.wasm` and write its Keel manifest.
fn wasm_plugin(dir: &Path, fixture: &str, name: &str) -> PathBuf {
    let wat = common::repo().join(format!("tests/fixtures/wasm/{fixture}.wat"));
    let bytes = wat::parse_file(&wat).unwrap();
    let bin = dir.join(format!("{name}.wasm"));
    std::fs::write(&bin, &bytes).unwrap();
    let m = serde_json::json!({
        "manifest_version": 1, "name": name, "version": "1.0.0", "runtime": "wasm",
        "binary": {"wasm32": format!("{name}.wasm")}, "sha256": common::sha256_file(&bin),
    });
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, m.to_string()).unwrap();
    path
}

fn defaults() -> keel_wasm_config {
    // SAFETY: keel_wasm_config is a plain C struct of integers and bools; all-zero is a valid value, overwritten next.
    let mut c = unsafe { std::mem::zeroed::<keel_wasm_config>() };
    assert_eq!(keel_wasm_config_default(&mut c), KEEL_OK);
    c
}

fn stats(h: &TestHost) -> keel_wasm_cache_stats {
    let mut s = keel_wasm_cache_stats::default();
    assert_eq!(keel_host_wasm_cache_stats(h.0, &mut s), KEEL_OK);
    s
}

#[test]
fn defaults_are_sane_and_bad_settings_are_refused() {
    let c = defaults();
    assert!(c.metering && c.pool_size > 0 && c.cache_dir.is_null());
    assert!(c.defaults.memory_mb <= c.ceilings.memory_mb && c.ceilings.memory_mb <= 4096);
    assert_eq!(keel_wasm_config_default(ptr::null_mut()), KEEL_ERR_NULL_POINTER);

    let h = TestHost::new();
    assert_eq!(keel_host_set_wasm_config(h.0, ptr::null()), KEEL_ERR_NULL_POINTER);
    assert_eq!(keel_host_set_wasm_config(ptr::null(), &c), KEEL_ERR_NULL_POINTER);
    let mut bad = c;
    bad.defaults.memory_mb = 0;
    assert_eq!(keel_host_set_wasm_config(h.0, &bad), KEEL_ERR_INVALID_ARGUMENT);
    assert!(last_error().contains("memory_mb"));
    let mut bad = c;
    bad.ceilings.memory_mb = 5000;
    assert_eq!(keel_host_set_wasm_config(h.0, &bad), KEEL_ERR_INVALID_ARGUMENT);
    let mut bad = c;
    bad.pool_size = 0;
    assert_eq!(keel_host_set_wasm_config(h.0, &bad), KEEL_ERR_INVALID_ARGUMENT);
    let mut bad = c;
    bad.watchdog_tick_us = 10;
    assert_eq!(keel_host_set_wasm_config(h.0, &bad), KEEL_ERR_INVALID_ARGUMENT);
    let dir = common::tempdir("wasmcfg-badkey");
    let cdir = cstr(dir.to_str().unwrap());
    let mut bad = c;
    bad.cache_dir = cdir.as_ptr();
    assert_eq!(
        keel_host_set_wasm_config(h.0, &bad),
        KEEL_ERR_INVALID_ARGUMENT,
        "all-zero cache key"
    );
    assert!(last_error().contains("cache key"));
    let bad_utf8 = [0xffu8, 0];
    let mut bad = c;
    bad.cache_dir = bad_utf8.as_ptr() as *const _;
    bad.cache_key = [7; 32];
    assert_eq!(keel_host_set_wasm_config(h.0, &bad), KEEL_ERR_INVALID_UTF8);
    assert_eq!(keel_host_set_wasm_config(h.0, &c), KEEL_OK);
    assert_eq!(keel_host_wasm_cache_stats(h.0, ptr::null_mut()), KEEL_ERR_NULL_POINTER);
}

#[test]
fn module_cache_configured_through_the_c_abi_serves_a_second_node_process() {
    let dir = common::tempdir("wasmcfg-cache");
    let cache = dir.join("cache");
    let manifest = wasm_plugin(&dir, "echo", "echo");
    let cdir = cstr(cache.to_str().unwrap());
    let mut c = defaults();
    c.cache_dir = cdir.as_ptr();
    c.cache_key = [0x5a; 32];

    let first = TestHost::new();
    assert_eq!(keel_host_set_wasm_config(first.0, &c), KEEL_OK);
    let p = first
        .load_plugin(&manifest)
        .unwrap_or_else(|s| panic!("{s}: {}", last_error()));
    let out = Buf::new();
    assert_eq!(call(p.0, p.function("echo").unwrap(), b"cached", &out), KEEL_OK);
    assert_eq!(out.bytes(), b"cached");
    let s = stats(&first);
    assert_eq!((s.compiles, s.hits), (1, 0));
    // Configuring after the runtime started is refused and changes nothing.
    assert_eq!(keel_host_set_wasm_config(first.0, &c), KEEL_ERR_INVALID_ARGUMENT);

    // Another host with the same cache and key deserializes instead of compiling.
    let second = TestHost::new();
    assert_eq!(keel_host_set_wasm_config(second.0, &c), KEEL_OK);
    let p2 = second.load_plugin(&manifest).unwrap();
    assert_eq!(call(p2.0, p2.function("echo").unwrap(), b"again", &out), KEEL_OK);
    let s = stats(&second);
    assert_eq!((s.compiles, s.hits, s.rejected), (0, 1, 0));

    // A host with another key cannot use those entries: they fail authentication.
    let mut other = c;
    other.cache_key = [0x33; 32];
    let third = TestHost::new();
    assert_eq!(keel_host_set_wasm_config(third.0, &other), KEEL_OK);
    let p3 = third.load_plugin(&manifest).unwrap();
    assert_eq!(call(p3.0, p3.function("echo").unwrap(), b"x", &out), KEEL_OK);
    let s = stats(&third);
    assert_eq!(s.hits, 0);
    assert_eq!(s.compiles, 1);
}

#[test]
fn without_metering_the_deadline_still_stops_a_loop() {
    let dir = common::tempdir("wasmcfg-nometer");
    let manifest = wasm_plugin(&dir, "loop", "spinner");
    let mut c = defaults();
    c.metering = false;
    c.defaults.timeout_ms = 50;
    let h = TestHost::new();
    assert_eq!(keel_host_set_wasm_config(h.0, &c), KEEL_OK);
    let p = h.load_plugin(&manifest).unwrap();
    let out = Buf::new();
    assert_eq!(call(p.0, p.function("spin").unwrap(), b"", &out), KEEL_ERR_DEADLINE);
    // A fresh instance serves the next call.
    assert_eq!(call(p.0, p.function("ok").unwrap(), b"", &out), KEEL_OK);
    assert_eq!(out.bytes(), b"ok");
}

#[test]
fn default_fuel_budget_from_the_node_stops_a_loop_with_cpu_budget() {
    let dir = common::tempdir("wasmcfg-fuel");
    let manifest = wasm_plugin(&dir, "loop", "spinner");
    let mut c = defaults();
    c.defaults.fuel_per_call = 100_000;
    c.defaults.timeout_ms = 60_000;
    let h = TestHost::new();
    assert_eq!(keel_host_set_wasm_config(h.0, &c), KEEL_OK);
    let p = h.load_plugin(&manifest).unwrap();
    let out = Buf::new();
    assert_eq!(call(p.0, p.function("spin").unwrap(), b"", &out), KEEL_ERR_CPU_BUDGET);
}
