//! Saved state carries the version of the plugin that saved it, so a new version can migrate
//! it: a reload from 1.0.0 to 1.1.0 hands "1.0.0" to the new generation of a native plugin
//! (`restore_state_versioned`), a WASM plugin (`keel_restore_state_versioned`) and a ThemisDB
//! plugin (`restored_state_version` in its initialize config); plugins without the versioned
//! hook still get their state through the plain one.

use crate::common;

use std::path::Path;
use std::sync::Arc;

use keel::registry::Slot;
use keel::runtime::legacy::LegacyInstance;
use serde_json::json;

fn host() -> keel::Host {
    let h = common::host();
    h.trust().set_require_signature(false).unwrap();
    h
}

fn call(slot: &Slot, f: &str) -> Vec<u8> {
    let id = slot.resolve(f).unwrap();
    let mut out = Vec::new();
    slot.call(id, b"", &mut out).unwrap_or_else(|e| panic!("{f}: {e}"));
    out
}

/// Rewrite the manifest at `path` with another version (same binary, same pin).
fn bump_version(path: &Path, version: &str) {
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    m["version"] = json!(version);
    std::fs::write(path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

fn reload_to_1_1(host: &keel::Host, slot: &Arc<Slot>, manifest: &Path, name: &str) {
    bump_version(manifest, "1.1.0");
    host.reload(name).unwrap();
    assert_eq!(slot.current().unwrap().manifest.version.to_string(), "1.1.0");
}

#[test]
fn native_plugins_get_the_savers_version_through_restore_state_versioned() {
    let dir = common::tempdir("state-version-native");
    let so = common::build_native("echo", &["ECHO_HEALTH", "ECHO_VERSIONED"], &dir, "libecho.so");
    let m = common::write_manifest(&dir, "echo", "1.0.0", &so, json!({}));
    let host = host();
    let slot = host.load(&m).unwrap();
    assert_eq!(call(&slot, "restored_from"), b"");
    call(&slot, "echo");
    reload_to_1_1(&host, &slot, &m, "echo");
    assert_eq!(call(&slot, "restored_from"), b"1.0.0");
    // The state itself came along: the call count of every generation (3 before, this one).
    assert_eq!(call(&slot, "calls"), b"4");
    // And the next reload hands over the version that saved it then.
    host.reload("echo").unwrap();
    assert_eq!(call(&slot, "restored_from"), b"1.1.0");

    // A plugin without the versioned hook keeps getting its state through restore_state.
    let dir = common::tempdir("state-version-native-plain");
    let so = common::build_native("echo", &["ECHO_HEALTH"], &dir, "libecho.so");
    let m = common::write_manifest(&dir, "plain", "1.0.0", &so, json!({}));
    let slot = host.load(&m).unwrap();
    call(&slot, "echo");
    reload_to_1_1(&host, &slot, &m, "plain");
    assert_eq!(call(&slot, "calls"), b"2");
}

#[test]
fn wasm_plugins_get_the_savers_version_through_keel_restore_state_versioned() {
    let dir = common::tempdir("state-version-wasm");
    let wasm = dir.join("counter.wasm");
    let bytes = wat::parse_file(common::repo().join("tests/fixtures/wasm/counter_versioned.wat")).unwrap();
    std::fs::write(&wasm, bytes).unwrap();
    let m = common::write_manifest(
        &dir,
        "counter",
        "1.0.0",
        &wasm,
        json!({"runtime": "wasm", "binary": {"wasm32": "counter.wasm"}}),
    );
    let host = host();
    let slot = host.load(&m).unwrap();
    assert_eq!(call(&slot, "from"), b"");
    call(&slot, "incr");
    call(&slot, "incr");
    reload_to_1_1(&host, &slot, &m, "counter");
    assert_eq!(call(&slot, "from"), b"1.0.0");
    assert_eq!(call(&slot, "get"), 2u64.to_le_bytes());
}

#[test]
fn themisdb_plugins_get_the_savers_version_in_their_initialize_config() {
    // ThemisDB plugins cannot be isolated: refused under the requirement with their own code
    // (deps::themisdb_plugin_json_dependencies_are_planned_without_libraries checks it).
    if common::skip_when_isolated("a ThemisDB plugin cannot run isolated (KEEL_ERR_ISOLATION_UNSUPPORTED)") {
        return;
    }
    let dir = common::tempdir("state-version-legacy");
    let so = common::build_cxx("themis/legacy_plugin.cpp", &[], &dir, "liblegacy.so");
    let m = common::write_manifest(
        &dir,
        "legacy",
        "1.0.0",
        &so,
        json!({"runtime": "themis", "config": {"k": 1}}),
    );
    let host = host();
    let slot = host.load(&m).unwrap();
    reload_to_1_1(&host, &slot, &m, "legacy");
    let g = slot.current().unwrap();
    let inst = g.instance.as_any().unwrap().downcast_ref::<LegacyInstance>().unwrap();
    // getInstance() of the fixture exposes the config its initialize received.
    #[repr(C)]
    struct Api {
        magic: u32,
        self_: *mut std::ffi::c_void,
        bump: unsafe extern "C" fn(*mut std::ffi::c_void) -> i64,
        count: unsafe extern "C" fn(*mut std::ffi::c_void) -> i64,
        tag: unsafe extern "C" fn(*mut std::ffi::c_void) -> *const std::ffi::c_char,
        config: unsafe extern "C" fn(*mut std::ffi::c_void) -> *const std::ffi::c_char,
    }
    let api = inst.themis_instance().unwrap() as *const Api;
    // SAFETY: the fixture's API object, alive while `g` (the generation) is held.
    let text = unsafe { std::ffi::CStr::from_ptr(((*api).config)((*api).self_)) }
        .to_string_lossy()
        .into_owned();
    let config: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(config["restored_state_version"], "1.0.0", "{config}");
    assert_eq!(config["k"], 1, "the manifest's config is kept: {config}");
    assert!(config["restored_state"].is_string(), "{config}");
}

/// A stateful reload holds calls, but the plugin is not unloaded meanwhile: metadata read
/// through the C ABI during the hold (generation, health, resolving a function) waits for the swap instead of
/// answering `KEEL_ERR_PLUGIN_UNLOADED` (a health poller saw that under load).
#[test]
fn metadata_read_during_a_stateful_reloads_hold_is_not_unloaded() {
    if common::skip_when_isolated(common::NEEDS_FILES) {
        return;
    }
    use keel::ffi::health::*;
    use keel::ffi::host::*;
    use keel::keel_status::KEEL_OK;

    let dir = common::tempdir("hold-metadata");
    let so = common::build_native("echo", &["ECHO_HEALTH"], &dir, "libecho.so");
    let m = common::write_manifest(&dir, "echo", "1.0.0", &so, json!({}));
    let host = Arc::new(host());
    let slot = host.load(&m).unwrap();
    let gate = dir.join("gate");
    // A call that blocks until `gate` exists keeps the reload's hold open.
    let blocked = {
        let slot = slot.clone();
        let gate = gate.clone();
        std::thread::spawn(move || {
            let id = slot.resolve("block_until").unwrap();
            let mut out = Vec::new();
            slot.call(id, gate.to_str().unwrap().as_bytes(), &mut out)
        })
    };
    let entered = dir.join("gate.entered");
    while !entered.exists() {
        std::thread::yield_now();
    }
    let reloader = {
        let host = host.clone();
        std::thread::spawn(move || host.reload("echo"))
    };
    while !slot.is_held() {
        std::thread::yield_now();
    }
    // Read through the C ABI while the hold lasts; the gate opens concurrently.
    // (A `keel_host*` is the address of the Rust host, as for keel::c_host in keel.hpp.)
    let c_host = Arc::as_ptr(&host) as *const keel_host;
    let mut handle: *mut keel_plugin = std::ptr::null_mut();
    assert_eq!(keel_plugin_get(c_host, c"echo".as_ptr(), &mut handle), KEEL_OK);
    let handle = handle as usize;
    let reader = std::thread::spawn(move || {
        let p = handle as *const keel_plugin;
        let mut g = 0u64;
        let s1 = keel_plugin_generation(p, &mut g);
        let mut r = std::mem::MaybeUninit::<keel_health_report>::uninit();
        let s2 = keel_plugin_health(p, r.as_mut_ptr());
        let mut f = 0;
        let s3 = keel_plugin_function(p, c"calls".as_ptr(), &mut f);
        (s1, g, s2, s3)
    });
    std::fs::write(&gate, b"").unwrap();
    blocked.join().unwrap().unwrap();
    assert_eq!(reloader.join().unwrap().unwrap(), 2);
    let (s1, g, s2, s3) = reader.join().unwrap();
    assert_eq!((s1, s2, s3), (KEEL_OK, KEEL_OK, KEEL_OK), "a hold is not an unload");
    assert!(g == 1 || g == 2, "{g}");
    assert_eq!(keel_plugin_free(handle as *mut keel_plugin), KEEL_OK);
}
