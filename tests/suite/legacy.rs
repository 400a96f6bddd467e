//! Legacy ThemisDB C++ plugins (`createPlugin`/`destroyPlugin` returning `IThemisPlugin*`),
//! end to end: a real C++ fixture (tests/fixtures/themis/legacy_plugin.cpp) compiled with the
//! system C++ compiler, loaded from ThemisDB `plugin.json` and Keel manifests through the C ABI
//! and the Rust host; info, getInstance, config, hot reload with state, unload order, and one
//! precise code for every failure.

use crate::common;

use std::ffi::{c_char, c_void, CStr};
use std::path::{Path, PathBuf};
use std::ptr;
use std::sync::{Arc, Mutex};

use keel::ffi::host::*;
use keel::ffi::themis::*;
use keel::keel_status::{self, *};
use keel::runtime::legacy::LegacyInstance;
use serde_json::{json, Value};

use common::capi::{cstr, last_error, Buf, Plugin, TestHost};

const FIXTURE: &str = "themis/legacy_plugin.cpp";

/// Mirror of `legacy_fixture_api` (tests/fixtures/themis/legacy_fixture_api.h).
#[repr(C)]
struct FixtureApi {
    magic: u32,
    self_: *mut c_void,
    bump: unsafe extern "C" fn(*mut c_void) -> i64,
    count: unsafe extern "C" fn(*mut c_void) -> i64,
    tag: unsafe extern "C" fn(*mut c_void) -> *const c_char,
    config: unsafe extern "C" fn(*mut c_void) -> *const c_char,
}
const FIXTURE_MAGIC: u32 = 0x4c45_4731;

/// The fixture object behind a legacy plugin's getInstance().
struct Api(*const FixtureApi);

impl Api {
    fn get(&self) -> &FixtureApi {
        // SAFETY: the pointer came from getInstance() of a generation that a lease (or, in
        // `rust_host_api_and_a_throwing_shutdown`, the instance itself) keeps alive.
        let a = unsafe { &*self.0 };
        assert_eq!(a.magic, FIXTURE_MAGIC, "getInstance() is the fixture's API object");
        a
    }
    fn bump(&self) -> i64 {
        let a = self.get();
        // SAFETY: the fixture's function table, called with its own object (live, see `get`).
        unsafe { (a.bump)(a.self_) }
    }
    fn count(&self) -> i64 {
        let a = self.get();
        // SAFETY: as in `bump`.
        unsafe { (a.count)(a.self_) }
    }
    fn tag(&self) -> String {
        let a = self.get();
        // SAFETY: as in `bump`; `tag` returns a static NUL-terminated string.
        unsafe { CStr::from_ptr((a.tag)(a.self_)) }
            .to_string_lossy()
            .into_owned()
    }
    fn config(&self) -> Value {
        let a = self.get();
        // SAFETY: as in `bump`; `config` returns the object's own NUL-terminated string.
        let text = unsafe { CStr::from_ptr((a.config)(a.self_)) }
            .to_string_lossy()
            .into_owned();
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("config {text:?} is not JSON: {e}"))
    }
}

/// A `keel_themis_lease` and the fixture object it keeps alive; freed when dropped.
struct Lease(*mut keel_themis_lease, Api);

impl Lease {
    fn adopt(l: *mut keel_themis_lease) -> Lease {
        let mut obj = ptr::null_mut();
        assert_eq!(keel_themis_lease_instance(l, &mut obj), KEEL_OK);
        Lease(l, Api(obj as *const FixtureApi))
    }
    fn generation(&self) -> u64 {
        let mut g = 0;
        assert_eq!(keel_themis_lease_generation(self.0, &mut g), KEEL_OK);
        g
    }
}

impl std::ops::Deref for Lease {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.1
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        assert_eq!(keel_themis_lease_free(self.0), KEEL_OK);
    }
}

// The calls these tests add to the shared C-ABI helpers.

impl TestHost {
    fn reload(&self, name: &str) -> Result<u64, keel_status> {
        let mut g = 0;
        match keel_host_reload(self.0, cstr(name).as_ptr(), &mut g) {
            KEEL_OK => Ok(g),
            s => Err(s),
        }
    }
}

impl Plugin {
    fn call(&self, function: &str) -> Result<String, keel_status> {
        let f = self.function(function)?;
        let out = Buf::new();
        match keel_call(self.0, f, ptr::null(), 0, out.0) {
            KEEL_OK => Ok(out.text()),
            s => Err(s),
        }
    }
    fn info(&self) -> Value {
        let text = self
            .call("info")
            .unwrap_or_else(|s| panic!("info: {s:?}: {}", last_error()));
        serde_json::from_str(&text).unwrap()
    }
    /// A lease on the current generation's getInstance() object (freed when dropped).
    fn instance(&self) -> Result<Lease, keel_status> {
        let mut l = ptr::null_mut();
        match keel_plugin_themis_lease(self.0, &mut l) {
            KEEL_OK => Ok(Lease::adopt(l)),
            s => Err(s),
        }
    }
    fn text(
        &self,
        f: extern "C" fn(*const keel_plugin, *mut keel_buffer) -> keel_status,
    ) -> Result<String, keel_status> {
        let out = Buf::new();
        match f(self.0, out.0) {
            KEEL_OK => Ok(out.text()),
            s => Err(s),
        }
    }
    fn generation(&self) -> u64 {
        let mut g = 0;
        assert_eq!(keel_plugin_generation(self.0, &mut g), KEEL_OK);
        g
    }
    fn generation_status(&self) -> keel_status {
        let mut g = 0;
        keel_plugin_generation(self.0, &mut g)
    }
}

/// Build the fixture with `defines` as `<dir>/<so>`.
fn build(dir: &Path, defines: &[&str], so: &str) -> PathBuf {
    common::build_cxx(FIXTURE, defines, dir, so)
}

/// A ThemisDB `plugin.json` (v2 fields) for `so`, pinned by `expected_hash`.
fn plugin_json(dir: &Path, name: &str, version: &str, so: &Path, extra: Value) -> PathBuf {
    let mut m = json!({
        "name": name,
        "version": version,
        "type": "custom",
        "description": "legacy C++ fixture plugin",
        "binary": { "linux": so.file_name().unwrap().to_str().unwrap() },
        "expected_hash": common::sha256_file(so),
    });
    if let Value::Object(extra) = extra {
        for (k, v) in extra {
            m[k] = v;
        }
    }
    let path = dir.join("plugin.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    path
}

/// A Keel manifest with `"runtime": "themis"` (which may carry `config`).
fn keel_manifest(dir: &Path, name: &str, version: &str, so: &Path, config: Value) -> PathBuf {
    common::write_manifest(dir, name, version, so, json!({ "runtime": "themis", "config": config }))
}

fn marker_lines(marker: &Path) -> Vec<String> {
    std::fs::read_to_string(marker)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn themisdb_plugin_json_loads_answers_info_and_hands_out_its_instance() {
    let dir = common::tempdir("legacy-basic");
    let so = build(&dir, &[], "liblegacy.so");
    let manifest = plugin_json(
        &dir,
        "legacy",
        "1.0.0",
        &so,
        json!({"capabilities": {"streaming": true}}),
    );
    let host = TestHost::new();
    let p = host
        .load_plugin(&manifest)
        .unwrap_or_else(|s| panic!("{s:?}: {}", last_error()));

    let info = p.info();
    assert_eq!(info["name"], "legacy");
    assert_eq!(info["version"], "1.0.0");
    assert_eq!(info["type"], "custom");
    assert_eq!(info["type_id"], 12);
    assert_eq!(info["stateful"], true);
    let caps = info["capabilities"].as_object().unwrap();
    assert_eq!(caps.len(), 7);
    assert_eq!(caps["provides_shard_policy"], true);
    assert_eq!(caps["thread_safe"], false);
    assert_eq!(caps["streaming"], false, "the object's flags, not the manifest's");

    // Metadata accessors (used by the C++ adapter).
    assert_eq!(p.text(keel_plugin_name).unwrap(), "legacy");
    assert_eq!(p.text(keel_plugin_version).unwrap(), "1.0.0");
    assert_eq!(p.text(keel_plugin_type).unwrap(), "custom");
    let mut has = false;
    assert_eq!(keel_plugin_has_trait(p.0, c"streaming".as_ptr(), &mut has), KEEL_OK);
    assert!(has, "manifest capability flags are traits");
    assert_eq!(keel_plugin_has_trait(p.0, c"batching".as_ptr(), &mut has), KEEL_OK);
    assert!(!has);

    // getInstance(): the type-specific object, used directly.
    let api = p.instance().unwrap();
    assert_eq!(api.tag(), "v1");
    assert_eq!(
        api.config(),
        json!({}),
        "a plugin.json has no config: initialize gets {{}}"
    );
    assert_eq!(api.bump(), 1);
    assert_eq!(api.bump(), 2);
    let state: Value = serde_json::from_str(&p.call("state").unwrap()).unwrap();
    assert_eq!(state, json!({"count": 2, "tag": "v1"}));
    assert_eq!(api.generation(), 1);
    drop(api);

    // After unload: calls and accessors say so; the name stays readable.
    assert_eq!(host.unload("legacy"), KEEL_OK);
    let info_fn = p.function("info").unwrap_err();
    assert_eq!(info_fn, KEEL_ERR_PLUGIN_UNLOADED);
    assert_eq!(p.instance().err(), Some(KEEL_ERR_PLUGIN_UNLOADED));
    assert_eq!(p.text(keel_plugin_version).err(), Some(KEEL_ERR_PLUGIN_UNLOADED));
    assert_eq!(p.text(keel_plugin_type).err(), Some(KEEL_ERR_PLUGIN_UNLOADED));
    assert_eq!(
        keel_plugin_has_trait(p.0, c"streaming".as_ptr(), &mut has),
        KEEL_ERR_PLUGIN_UNLOADED
    );
    assert_eq!(p.text(keel_plugin_name).unwrap(), "legacy");
}

#[test]
fn reload_from_plugin_json_carries_state_the_themisdb_way() {
    let dir = common::tempdir("legacy-reload");
    let so = build(&dir, &[], "liblegacy.so");
    let manifest = plugin_json(&dir, "legacy", "1.0.0", &so, json!({}));
    let host = TestHost::new();
    let p = host.load_plugin(&manifest).unwrap();
    let old = p.instance().unwrap();
    for _ in 0..3 {
        old.bump();
    }
    drop(old);

    let so2 = build(
        &dir,
        &["LEGACY_TAG=\"v2\"", "LEGACY_STEP=10", "LEGACY_VERSION=\"1.1.0\""],
        "liblegacy.so",
    );
    plugin_json(&dir, "legacy", "1.1.0", &so2, json!({}));
    assert_eq!(host.reload("legacy"), Ok(2), "{}", last_error());
    assert_eq!(p.generation(), 2);

    let new = p.instance().unwrap();
    assert_eq!(new.tag(), "v2");
    assert_eq!(new.count(), 3, "state carried over");
    assert_eq!(
        new.config(),
        json!({"restored_state": "{\"count\":3,\"tag\":\"v1\"}", "restored_state_version": "1.0.0"}),
        "ThemisDB's reload config: {{\"restored_state\": <saved>}} plus the saver's version"
    );
    assert_eq!(new.bump(), 13, "new code runs");
    assert_eq!(p.info()["version"], "1.1.0");
    assert_eq!(p.text(keel_plugin_version).unwrap(), "1.1.0");

    // A tampered binary on reload: refused, the running generation keeps serving.
    build(&dir, &["LEGACY_TAG=\"v3\""], "liblegacy.so");
    assert_eq!(host.reload("legacy"), Err(KEEL_ERR_DIGEST_MISMATCH));
    assert!(last_error().contains("rolled back"), "{}", last_error());
    assert_eq!(p.generation(), 2);
    assert_eq!(p.instance().unwrap().bump(), 23);
}

#[test]
fn manifest_config_reaches_initialize_and_lifecycle_runs_in_order() {
    let dir = common::tempdir("legacy-config");
    let marker = dir.join("marker.txt");
    let config = json!({"marker": marker.to_str().unwrap(), "mode": "fast", "depth": 3});
    let so = build(&dir, &[], "liblegacy.so");
    let manifest = keel_manifest(&dir, "legacy", "1.0.0", &so, config.clone());
    let host = TestHost::new();
    let p = host
        .load_plugin(&manifest)
        .unwrap_or_else(|s| panic!("{s:?}: {}", last_error()));
    let api = p.instance().unwrap();
    assert_eq!(
        api.config(),
        config,
        "the manifest's config, not ThemisDB's constant {{}}"
    );
    assert_eq!(marker_lines(&marker), ["init v1"]);
    api.bump();
    api.bump();
    drop(api);

    let so2 = build(&dir, &["LEGACY_TAG=\"v2\"", "LEGACY_STEP=5"], "liblegacy.so");
    keel_manifest(&dir, "legacy", "1.0.1", &so2, config.clone());
    assert_eq!(host.reload("legacy"), Ok(2), "{}", last_error());
    let new = p.instance().unwrap();
    let mut want = config.clone();
    want["restored_state"] = json!("{\"count\":2,\"tag\":\"v1\"}");
    want["restored_state_version"] = json!("1.0.0");
    assert_eq!(new.config(), want, "manifest config plus restored_state");
    assert_eq!(new.bump(), 7);
    drop(new);
    // The new object is initialised and restored before the old one is shut down and
    // destroyed; nothing of the old one runs after its destroyPlugin.
    assert_eq!(
        marker_lines(&marker),
        ["init v1", "init v2", "restore v2 2", "shutdown v1", "destroy v1"]
    );

    assert_eq!(host.unload("legacy"), KEEL_OK);
    assert_eq!(
        marker_lines(&marker),
        [
            "init v1",
            "init v2",
            "restore v2 2",
            "shutdown v1",
            "destroy v1",
            "shutdown v2",
            "destroy v2"
        ]
    );
}

#[test]
fn a_reload_while_a_lease_is_held_does_not_free_the_leased_instance() {
    let dir = common::tempdir("legacy-lease");
    let marker = dir.join("marker.txt");
    let config = json!({"marker": marker.to_str().unwrap()});
    let so = build(&dir, &[], "liblegacy.so");
    let manifest = keel_manifest(&dir, "legacy", "1.0.0", &so, config.clone());
    let host = TestHost::new();
    assert_eq!(keel_host_set_drain_timeout_ms(host.0, 50), KEEL_OK);
    let p = host
        .load_plugin(&manifest)
        .unwrap_or_else(|s| panic!("{s:?}: {}", last_error()));
    let lease = p.instance().unwrap();
    assert_eq!(lease.generation(), 1);
    assert_eq!(lease.bump(), 1);

    // A reload (here the embedder's; the health monitor's and the watcher's take the same
    // path) swaps at once but cannot shut the leased generation down: the drain times out.
    let so2 = build(&dir, &["LEGACY_TAG=\"v2\""], "liblegacy.so");
    keel_manifest(&dir, "legacy", "1.0.1", &so2, config);
    assert_eq!(host.reload("legacy"), Err(KEEL_ERR_DRAIN_TIMEOUT), "{}", last_error());
    assert_eq!(p.generation(), 2);
    let state: Value = serde_json::from_str(&p.call("state").unwrap()).unwrap();
    assert_eq!(
        state,
        json!({"count": 1, "tag": "v2"}),
        "calls go to the new generation"
    );
    let lines = marker_lines(&marker);
    assert!(
        !lines.iter().any(|l| l == "shutdown v1" || l == "destroy v1"),
        "the leased generation was shut down under its lease: {lines:?}"
    );

    // The leased object is the old generation's, alive, and keeps its own state.
    assert_eq!(lease.tag(), "v1");
    assert_eq!(lease.bump(), 2);
    assert_eq!(lease.generation(), 1);
    {
        let new = p.instance().unwrap();
        assert_eq!(new.tag(), "v2");
        assert_eq!(new.generation(), 2);
        assert_eq!(new.count(), 1, "the state saved at the swap");
    }

    // Freed with the lease: the old generation is then shut down and destroyed (by the
    // plugin's next call or by Keel's reaper), and only then.
    drop(lease);
    let start = std::time::Instant::now();
    while !marker_lines(&marker).iter().any(|l| l == "destroy v1") {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "{:?}",
            marker_lines(&marker)
        );
        p.call("info").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(
        marker_lines(&marker),
        ["init v1", "init v2", "restore v2 1", "shutdown v1", "destroy v1"]
    );

    // The same for an unload: the leased object outlives it until the lease is freed.
    let info = p.function("info").unwrap();
    let lease = p.instance().unwrap();
    assert_eq!(host.unload("legacy"), KEEL_ERR_DRAIN_TIMEOUT, "{}", last_error());
    assert_eq!(p.generation_status(), KEEL_ERR_PLUGIN_UNLOADED);
    assert_eq!(lease.tag(), "v2");
    assert_eq!(lease.bump(), 2);
    assert!(!marker_lines(&marker).iter().any(|l| l == "destroy v2"));
    drop(lease);
    let start = std::time::Instant::now();
    while !marker_lines(&marker).iter().any(|l| l == "destroy v2") {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "{:?}",
            marker_lines(&marker)
        );
        // A call through the handle (function ids stay valid; the plugin is gone).
        let out = Buf::new();
        assert_eq!(keel_call(p.0, info, ptr::null(), 0, out.0), KEEL_ERR_PLUGIN_UNLOADED);
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(marker_lines(&marker)[5..], ["shutdown v2", "destroy v2"]);
}

#[test]
fn failing_initialize_is_init_failed_and_the_host_keeps_serving() {
    let dir = common::tempdir("legacy-initfail");
    let good_dir = dir.join("good");
    std::fs::create_dir_all(&good_dir).unwrap();
    let good_so = build(&good_dir, &[], "liblegacy.so");
    let host = TestHost::new();
    let good = host
        .load_plugin(&plugin_json(&good_dir, "legacy", "1.0.0", &good_so, json!({})))
        .unwrap();

    let cases: [(&str, &str); 4] = [
        ("LEGACY_INIT_THROWS", "initialize threw: fixture initialize failure"),
        (
            "LEGACY_INIT_THROWS_INT",
            "initialize threw an exception not derived from std::exception",
        ),
        ("LEGACY_INIT_FALSE", "initialize returned false"),
        ("LEGACY_CREATE_NULL", "createPlugin returned NULL"),
    ];
    for (i, (define, message)) in cases.iter().enumerate() {
        let d = dir.join(format!("bad{i}"));
        std::fs::create_dir_all(&d).unwrap();
        let marker = d.join("marker.txt");
        let so = build(&d, &[define], "libbroken.so");
        let m = keel_manifest(&d, "broken", "1.0.0", &so, json!({"marker": marker.to_str().unwrap()}));
        assert_eq!(host.load_plugin(&m).err(), Some(KEEL_ERR_INIT_FAILED), "{define}");
        let e = last_error();
        assert!(e.contains(message), "{define}: {e}");
        assert!(e.contains("broken"), "{e}");
        if *define != "LEGACY_CREATE_NULL" {
            // Destroyed through destroyPlugin, never shut down (it never initialised).
            assert_eq!(marker_lines(&marker), ["destroy v1"], "{define}");
        }
        assert_eq!(host.get("broken").err(), Some(KEEL_ERR_PLUGIN_NOT_FOUND));
        // The host keeps serving the good plugin.
        assert_eq!(good.info()["name"], "legacy");
        assert_eq!(good.instance().unwrap().bump(), i as i64 + 1);
    }
    // The name is free again.
    let d = dir.join("fixed");
    std::fs::create_dir_all(&d).unwrap();
    let so = build(&d, &[], "libbroken.so");
    let fixed = host
        .load_plugin(&keel_manifest(&d, "broken", "1.0.0", &so, json!({})))
        .unwrap();
    assert_eq!(fixed.info()["name"], "legacy");
}

#[test]
fn missing_destroy_plugin_is_refused_before_create_runs() {
    let dir = common::tempdir("legacy-nodestroy");
    let marker = dir.join("marker.txt");
    let so = build(&dir, &["LEGACY_NO_DESTROY"], "liblegacy.so");
    let m = keel_manifest(
        &dir,
        "legacy",
        "1.0.0",
        &so,
        json!({"marker": marker.to_str().unwrap()}),
    );
    let host = TestHost::new();
    assert_eq!(host.load_plugin(&m).err(), Some(KEEL_ERR_SYMBOL_MISSING));
    let e = last_error();
    assert!(e.contains("destroyPlugin"), "{e}");
    assert!(!marker.exists(), "no object was created or initialised");
    assert_eq!(host.get("legacy").err(), Some(KEEL_ERR_PLUGIN_NOT_FOUND));
}

#[test]
fn a_library_without_create_plugin_is_not_a_themis_plugin() {
    let dir = common::tempdir("legacy-notthemis");
    let so = common::build_native("echo", &[], &dir, "libecho.so");
    let m = keel_manifest(&dir, "echo", "1.0.0", &so, json!({}));
    let host = TestHost::new();
    assert_eq!(host.load_plugin(&m).err(), Some(KEEL_ERR_SYMBOL_MISSING));
    assert!(last_error().contains("createPlugin"), "{}", last_error());
}

#[test]
fn tampered_binary_is_refused_before_it_runs() {
    let dir = common::tempdir("legacy-tamper");
    let marker = dir.join("marker.txt");
    let so = build(&dir, &[], "liblegacy.so");
    let m = plugin_json(&dir, "legacy", "1.0.0", &so, json!({}));
    // Replace the binary after the manifest pinned it.
    build(&dir, &["LEGACY_TAG=\"evil\""], "liblegacy.so");
    let host = TestHost::new();
    assert_eq!(host.load_plugin(&m).err(), Some(KEEL_ERR_DIGEST_MISMATCH));
    assert!(last_error().contains("SHA-256"), "{}", last_error());
    assert!(!marker.exists());
    assert_eq!(host.get("legacy").err(), Some(KEEL_ERR_PLUGIN_NOT_FOUND));
}

#[test]
fn null_name_and_version_read_as_empty() {
    let dir = common::tempdir("legacy-nullname");
    let so = build(&dir, &["LEGACY_NULL_NAME"], "liblegacy.so");
    let host = TestHost::new();
    let p = host
        .load_plugin(&plugin_json(&dir, "nameless", "2.0.0", &so, json!({})))
        .unwrap();
    let info = p.info();
    assert_eq!(info["name"], "");
    assert_eq!(info["version"], "");
    // Keel registers the plugin under its manifest's name.
    assert_eq!(p.text(keel_plugin_name).unwrap(), "nameless");
    assert_eq!(p.text(keel_plugin_version).unwrap(), "2.0.0");
    assert!(host.get("nameless").is_ok());
}

#[test]
fn state_save_and_restore_failures_roll_the_reload_back() {
    // saveState throws in the running generation.
    let dir = common::tempdir("legacy-savefail");
    let so = build(&dir, &["LEGACY_SAVE_THROWS"], "liblegacy.so");
    plugin_json(&dir, "legacy", "1.0.0", &so, json!({}));
    let host = TestHost::new();
    let p = host.load_plugin(&dir.join("plugin.json")).unwrap();
    p.instance().unwrap().bump();
    assert_eq!(p.call("state").err(), Some(KEEL_ERR_CALL_FAILED));
    assert!(last_error().contains("fixture saveState failure"), "{}", last_error());
    let so2 = build(&dir, &["LEGACY_TAG=\"v2\""], "liblegacy.so");
    plugin_json(&dir, "legacy", "1.0.1", &so2, json!({}));
    assert_eq!(host.reload("legacy"), Err(KEEL_ERR_STATE_SAVE));
    let e = last_error();
    assert!(
        e.contains("saveState threw: fixture saveState failure") && e.contains("rolled back"),
        "{e}"
    );
    assert_eq!(p.generation(), 1);
    assert_eq!(p.instance().unwrap().tag(), "v1");
    assert_eq!(p.instance().unwrap().count(), 1);

    // restoreState returns false in the new generation.
    let dir = common::tempdir("legacy-restorefail");
    let so = build(&dir, &[], "liblegacy.so");
    plugin_json(&dir, "legacy2", "1.0.0", &so, json!({}));
    let p = host.load_plugin(&dir.join("plugin.json")).unwrap();
    p.instance().unwrap().bump();
    let so2 = build(&dir, &["LEGACY_RESTORE_FALSE", "LEGACY_TAG=\"v2\""], "liblegacy.so");
    plugin_json(&dir, "legacy2", "1.0.1", &so2, json!({}));
    assert_eq!(host.reload("legacy2"), Err(KEEL_ERR_STATE_RESTORE));
    assert!(last_error().contains("restoreState returned false"), "{}", last_error());
    assert_eq!(p.generation(), 1);
    assert_eq!(p.instance().unwrap().tag(), "v1");
    assert_eq!(p.instance().unwrap().bump(), 2, "old generation untouched");
}

#[test]
fn a_plugin_without_istatefulplugin_has_no_state_function_and_reloads_fresh() {
    let dir = common::tempdir("legacy-stateless");
    let so = build(&dir, &["LEGACY_NOT_STATEFUL"], "liblegacy.so");
    plugin_json(&dir, "legacy", "1.0.0", &so, json!({}));
    let host = TestHost::new();
    let p = host.load_plugin(&dir.join("plugin.json")).unwrap();
    assert_eq!(p.info()["stateful"], false);
    assert_eq!(p.function("state").err(), Some(KEEL_ERR_FUNCTION_NOT_FOUND));
    p.instance().unwrap().bump();
    let so2 = build(&dir, &["LEGACY_NOT_STATEFUL", "LEGACY_TAG=\"v2\""], "liblegacy.so");
    plugin_json(&dir, "legacy", "1.0.1", &so2, json!({}));
    assert_eq!(host.reload("legacy"), Ok(2), "{}", last_error());
    let api = p.instance().unwrap();
    assert_eq!(api.tag(), "v2");
    assert_eq!(api.count(), 0, "no IStatefulPlugin: nothing saved");
    assert_eq!(api.config(), json!({}));
}

#[test]
fn bad_arguments_and_non_legacy_plugins_get_their_codes() {
    let host = TestHost::new();
    let mut out = ptr::null_mut();
    assert_eq!(keel_plugin_themis_lease(ptr::null(), &mut out), KEEL_ERR_NULL_POINTER);
    assert!(out.is_null(), "out-parameters are written only on success");
    let mut obj = ptr::null_mut();
    assert_eq!(keel_themis_lease_instance(ptr::null(), &mut obj), KEEL_ERR_NULL_POINTER);
    let mut g = 0;
    assert_eq!(keel_themis_lease_generation(ptr::null(), &mut g), KEEL_ERR_NULL_POINTER);
    assert_eq!(keel_themis_lease_free(ptr::null_mut()), KEEL_OK);
    let buf = Buf::new();
    assert_eq!(keel_plugin_name(ptr::null(), buf.0), KEEL_ERR_NULL_POINTER);
    assert_eq!(keel_plugin_version(ptr::null(), buf.0), KEEL_ERR_NULL_POINTER);
    assert_eq!(keel_plugin_type(ptr::null(), buf.0), KEEL_ERR_NULL_POINTER);
    let mut has = false;
    assert_eq!(
        keel_plugin_has_trait(ptr::null(), c"x".as_ptr(), &mut has),
        KEEL_ERR_NULL_POINTER
    );

    // A native Keel plugin has no IThemisPlugin object.
    let (_dir, manifest) = common::echo_plugin("legacy-native", &[], json!({"type": "embedding"}));
    let echo = host.load_plugin(&manifest).unwrap();
    assert_eq!(echo.instance().err(), Some(KEEL_ERR_UNSUPPORTED));
    assert!(
        last_error().contains("not a ThemisDB legacy plugin"),
        "{}",
        last_error()
    );
    assert_eq!(keel_plugin_themis_lease(echo.0, ptr::null_mut()), KEEL_ERR_NULL_POINTER);
    assert_eq!(keel_plugin_name(echo.0, ptr::null_mut()), KEEL_ERR_NULL_POINTER);
    assert_eq!(
        keel_plugin_has_trait(echo.0, ptr::null(), &mut has),
        KEEL_ERR_NULL_POINTER
    );
    assert_eq!(
        keel_plugin_has_trait(echo.0, c"x".as_ptr(), ptr::null_mut()),
        KEEL_ERR_NULL_POINTER
    );
    let bad_utf8 = [0xffu8, 0];
    assert_eq!(
        keel_plugin_has_trait(echo.0, bad_utf8.as_ptr() as *const c_char, &mut has),
        KEEL_ERR_INVALID_UTF8
    );
    // The metadata accessors work for every runtime.
    assert_eq!(echo.text(keel_plugin_name).unwrap(), "echo");
    assert_eq!(echo.text(keel_plugin_version).unwrap(), "1.0.0");
    assert_eq!(echo.text(keel_plugin_type).unwrap(), "embedding");
}

#[test]
fn rust_host_api_and_a_throwing_shutdown() {
    let dir = common::tempdir("legacy-rust");
    let marker = dir.join("marker.txt");
    let so = build(&dir, &["LEGACY_SHUTDOWN_THROWS", "LEGACY_THREAD_SAFE"], "liblegacy.so");
    let m = keel_manifest(
        &dir,
        "legacy",
        "1.0.0",
        &so,
        json!({"marker": marker.to_str().unwrap()}),
    );
    let logs: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = logs.clone();
    let services = keel::runtime::HostServices::default().with_log(Arc::new(move |plugin, level, msg| {
        sink.lock().unwrap().push(format!("{plugin} {level:?} {msg}"))
    }));
    let host = keel::Host::with_services(services);
    host.trust().set_require_signature(false).unwrap();
    let slot = host.load(&m).unwrap();
    {
        let gen = slot.current().unwrap();
        let legacy = gen
            .instance
            .as_any()
            .and_then(|a| a.downcast_ref::<LegacyInstance>())
            .expect("a legacy instance");
        let info = legacy.loaded_info();
        assert!(info.thread_safe());
        assert_eq!(info.name, "legacy");
        assert_eq!(info.type_name(), "custom");
        assert_eq!(legacy.info().unwrap(), *info);
        let api = Api(legacy.themis_instance().unwrap() as *const FixtureApi);
        assert_eq!(api.bump(), 1);
        assert_eq!(gen.instance.functions(), ["info", "state"]);
    }
    let info = slot.resolve("info").unwrap();
    let mut out = Vec::new();
    slot.call(info, b"ignored", &mut out).unwrap();
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["capabilities"]["thread_safe"], true);
    assert_eq!(v["capabilities"]["streaming"], true);

    // shutdown() throws: logged, and destroyPlugin still runs.
    host.unload("legacy").unwrap();
    assert_eq!(marker_lines(&marker), ["init v1", "shutdown v1", "destroy v1"]);
    let logs = logs.lock().unwrap();
    assert!(
        logs.iter()
            .any(|l| l.starts_with("legacy Warn") && l.contains("shutdown threw: fixture shutdown failure")),
        "{logs:?}"
    );
}

#[test]
fn calls_from_many_threads_while_reloading() {
    let dir = common::tempdir("legacy-threads");
    let so = build(&dir, &[], "liblegacy.so");
    plugin_json(&dir, "legacy", "1.0.0", &so, json!({}));
    let host = TestHost::new();
    let p = host.load_plugin(&dir.join("plugin.json")).unwrap();
    let info = p.function("info").unwrap();
    let state = p.function("state").unwrap();
    let handle = p.0 as usize;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let out = Buf::new();
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) || n < 50 {
                    let f = if n.is_multiple_of(2) { info } else { state };
                    let s = keel_call(handle as *const keel_plugin, f, ptr::null(), 0, out.0);
                    assert_eq!(s, KEEL_OK);
                    assert!(out.text().starts_with('{'));
                    n += 1;
                }
                n
            })
        })
        .collect();
    for (i, tag) in ["v2", "v3"].iter().enumerate() {
        let so = build(&dir, &[&format!("LEGACY_TAG=\"{tag}\"")], "liblegacy.so");
        plugin_json(&dir, "legacy", &format!("1.0.{}", i + 1), &so, json!({}));
        assert_eq!(host.reload("legacy"), Ok(i as u64 + 2), "{}", last_error());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in threads {
        assert!(t.join().unwrap() >= 50);
    }
    assert_eq!(p.instance().unwrap().tag(), "v3");
}

/// A ThemisDB `plugin.json` for `so` without `expected_hash` (an unpinned binary).
fn unpinned_plugin_json(dir: &Path, name: &str, so: &Path, extra: Value) -> PathBuf {
    let path = plugin_json(dir, name, "1.0.0", so, extra);
    let mut v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    v.as_object_mut().unwrap().remove("expected_hash");
    std::fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    path
}

#[test]
fn unpinned_plugin_json_is_refused_by_default_and_loads_only_when_the_host_opts_in() {
    use keel::ffi::trust::{keel_host_set_allow_unpinned, keel_verify};
    let dir = common::tempdir("legacy-unpinned");
    let so = build(&dir, &[], "liblegacy.so");
    let manifest = unpinned_plugin_json(&dir, "legacy", &so, json!({}));
    let mpath = cstr(manifest.to_str().unwrap());

    // Default policy: valid manifest, refused load with its own code, nothing registered.
    let host = TestHost::new();
    assert_eq!(keel_verify(host.0, mpath.as_ptr()), KEEL_ERR_UNPINNED_BINARY);
    assert_eq!(host.load(&manifest).err(), Some(KEEL_ERR_UNPINNED_BINARY));
    let msg = last_error();
    assert!(msg.contains("legacy") && msg.contains("expected_hash"), "{msg}");
    assert_eq!(host.get("legacy").err(), Some(KEEL_ERR_PLUGIN_NOT_FOUND));
    // The host has started (a load was attempted): the policy cannot be relaxed any more.
    assert_eq!(keel_host_set_allow_unpinned(host.0, true), KEEL_ERR_POLICY_DOWNGRADE);
    assert!(last_error().contains("allow_unpinned"), "{}", last_error());
    assert_eq!(host.load(&manifest).err(), Some(KEEL_ERR_UNPINNED_BINARY));
    assert_eq!(keel_host_set_allow_unpinned(host.0, false), KEEL_OK);
    assert_eq!(keel_host_set_allow_unpinned(ptr::null(), true), KEEL_ERR_NULL_POINTER);

    // Opted in before the first load: it loads and runs.
    let host = TestHost::new();
    assert_eq!(keel_host_set_allow_unpinned(host.0, true), KEEL_OK);
    assert_eq!(keel_verify(host.0, mpath.as_ptr()), KEEL_OK, "{}", last_error());
    let p = host
        .load_plugin(&manifest)
        .unwrap_or_else(|s| panic!("{s:?}: {}", last_error()));
    assert_eq!(p.instance().unwrap().bump(), 1);
    // Strict again after start, and never relaxed again.
    assert_eq!(keel_host_set_allow_unpinned(host.0, false), KEEL_OK);
    assert_eq!(keel_host_set_allow_unpinned(host.0, true), KEEL_ERR_POLICY_DOWNGRADE);
    let dir2 = common::tempdir("legacy-unpinned-2");
    let so2 = build(&dir2, &[], "liblegacy.so");
    let m2 = unpinned_plugin_json(&dir2, "legacy2", &so2, json!({}));
    assert_eq!(host.load(&m2).err(), Some(KEEL_ERR_UNPINNED_BINARY));
    assert_eq!(p.instance().unwrap().bump(), 2, "the loaded plugin keeps serving");
}

#[test]
fn an_unpinned_generation_records_the_sha256_of_the_bytes_loaded() {
    let dir = common::tempdir("legacy-unpinned-sha");
    let so = build(&dir, &[], "liblegacy.so");
    let manifest = unpinned_plugin_json(&dir, "legacy", &so, json!({}));
    let logged = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = logged.clone();
    let host = keel::Host::with_services(keel::runtime::HostServices::default().with_log(Arc::new(
        move |plugin, level, msg| sink.lock().unwrap().push(format!("{plugin} {level:?} {msg}")),
    )));
    host.trust().set_require_signature(false).unwrap();
    host.trust().set_allow_unpinned(true).unwrap();
    let slot = host.load(&manifest).unwrap();
    let sha = common::sha256_file(&so);
    assert_eq!(slot.current().unwrap().binary_sha256, sha);
    let logged = logged.lock().unwrap();
    assert!(
        logged
            .iter()
            .any(|l| l.starts_with("legacy Warn") && l.contains("unpinned") && l.contains(&sha)),
        "{logged:?}"
    );
}

#[test]
fn plugin_json_config_is_checked_and_reaches_initialize_merged_with_restored_state_on_reload() {
    let dir = common::tempdir("legacy-json-config");
    let so = build(&dir, &[], "liblegacy.so");
    let schema = json!({
        "type": "object",
        "properties": {"mode": {"enum": ["fast", "safe"]}, "depth": {"type": "integer", "minimum": 1}},
        "required": ["mode"]
    });
    let config = json!({"mode": "fast", "depth": 3});
    let host = TestHost::new();

    // A bad config is refused at load with its path; nothing is registered.
    let manifest = plugin_json(
        &dir,
        "legacy",
        "1.0.0",
        &so,
        json!({"config_schema": schema, "config": {"mode": "fast", "depth": 0}}),
    );
    assert_eq!(host.load(&manifest).err(), Some(KEEL_ERR_MANIFEST_SCHEMA));
    let msg = last_error();
    assert!(msg.contains("at /config/depth") && msg.contains("minimum"), "{msg}");
    assert_eq!(host.get("legacy").err(), Some(KEEL_ERR_PLUGIN_NOT_FOUND));

    let manifest = plugin_json(
        &dir,
        "legacy",
        "1.0.0",
        &so,
        json!({"config_schema": schema, "config": config}),
    );
    let p = host
        .load_plugin(&manifest)
        .unwrap_or_else(|s| panic!("{s:?}: {}", last_error()));
    let api = p.instance().unwrap();
    assert_eq!(api.config(), config, "the manifest's config, not {{}}");
    api.bump();
    drop(api);
    assert_eq!(host.reload("legacy"), Ok(2), "{}", last_error());
    let mut want = config.clone();
    want["restored_state"] = json!("{\"count\":1,\"tag\":\"v1\"}");
    want["restored_state_version"] = json!("1.0.0");
    assert_eq!(p.instance().unwrap().config(), want, "config plus restored_state");

    // A reload whose manifest now has a bad config rolls back; the old generation serves.
    plugin_json(
        &dir,
        "legacy",
        "1.0.0",
        &so,
        json!({"config_schema": schema, "config": {"depth": 2}}),
    );
    assert_eq!(host.reload("legacy"), Err(KEEL_ERR_MANIFEST_SCHEMA));
    assert!(last_error().contains("mode"), "{}", last_error());
    assert_eq!(p.generation(), 2);
}

#[test]
fn array_form_dependencies_a_library_and_a_plugin_of_the_scanned_set() {
    let root = common::tempdir("legacy-array-deps");
    let so = build(&root, &[], "liblegacy.so");
    for (category, name, deps) in [
        ("storage", "base_store", json!([])),
        (
            "importers",
            "s3_importer",
            json!(["aws-sdk-cpp-s3", "base_store", "OpenSSL"]),
        ),
    ] {
        let dir = root.join(category).join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let local = dir.join("liblegacy.so");
        std::fs::copy(&so, &local).unwrap();
        plugin_json(&dir, name, "1.0.0", &local, json!({"dependencies": deps}));
    }
    std::fs::remove_file(&so).unwrap();
    let host = TestHost::new();
    let c = cstr(root.to_str().unwrap());
    assert_eq!(keel_host_load_dir(host.0, c.as_ptr()), KEEL_OK, "{}", last_error());
    assert!(host.get("base_store").is_ok() && host.get("s3_importer").is_ok());
    // The resolved plugin dependency is a real one: it blocks unload, naming the dependent.
    assert_eq!(host.unload("base_store"), KEEL_ERR_HAS_DEPENDENTS);
    assert!(last_error().contains("s3_importer"), "{}", last_error());
    assert_eq!(host.unload("s3_importer"), KEEL_OK);
    assert_eq!(host.unload("base_store"), KEEL_OK);

    // Loaded one at a time: the dependency resolves against the loaded plugin too.
    let host = TestHost::new();
    host.load_plugin(&root.join("storage/base_store/plugin.json")).unwrap();
    host.load_plugin(&root.join("importers/s3_importer/plugin.json"))
        .unwrap_or_else(|s| panic!("{s:?}: {}", last_error()));
    assert_eq!(host.unload("base_store"), KEEL_ERR_HAS_DEPENDENTS);
}

/// ThemisDB's `ISelfHealingPlugin` mix-in, with the fixture built against a header laid out
/// as ThemisDB's `plugins/self_healing_plugin.h`: Keel's health checks ask
/// `performHealthCheck()`, and before a restart the plugin repairs itself the way ThemisDB's
/// monitor lets it (declared strategies in ThemisDB's order, then `attemptSelfRepair`).
mod self_healing {
    use super::*;
    use keel::health::{HealthConfig, HealthReport, HealthStatus};
    use keel::registry::Slot;
    use std::time::{Duration, Instant};

    fn wait_report(host: &keel::Host, name: &str, what: &str, until: impl Fn(&HealthReport) -> bool) -> HealthReport {
        let give_up = Instant::now() + Duration::from_secs(60);
        loop {
            let r = host.health(name).unwrap();
            if until(&r) {
                return r;
            }
            assert!(
                Instant::now() < give_up,
                "gave up waiting for: {what} (last report {r:?})"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn fast() -> HealthConfig {
        HealthConfig {
            interval: Duration::from_millis(10),
            check_timeout: Duration::from_secs(5),
            unhealthy_threshold: 2,
            backoff_initial: Duration::from_millis(5),
            backoff_max: Duration::from_millis(20),
            ..HealthConfig::default()
        }
    }

    fn api(slot: &Slot) -> (Arc<keel::registry::Generation>, Api) {
        let g = slot.current().unwrap();
        let inst = g.instance.as_any().unwrap().downcast_ref::<LegacyInstance>().unwrap();
        let p = inst.themis_instance().unwrap();
        (g.clone(), Api(p as *const FixtureApi))
    }

    fn call(slot: &Slot, f: &str) -> keel::Result<Vec<u8>> {
        let id = slot.resolve(f)?;
        let mut out = Vec::new();
        slot.call(id, b"", &mut out).map(|()| out)
    }

    fn load(tag: &str, defines: &[&str]) -> (keel::Host, Arc<Slot>, PathBuf) {
        let dir = common::tempdir(tag);
        let so = build(&dir, defines, "liblegacy.so");
        let marker = dir.join("marker.txt");
        let m = keel_manifest(
            &dir,
            "healer",
            "1.0.0",
            &so,
            json!({"broken_at": 3, "marker": marker.to_str().unwrap()}),
        );
        let host = keel::Host::new();
        host.trust().set_require_signature(false).unwrap();
        let slot = host.load(&m).unwrap();
        (host, slot, marker)
    }

    #[test]
    fn health_checks_and_diagnostics_come_from_perform_health_check() {
        let (host, slot, _) = load("legacy-heal-diag", &["LEGACY_SELF_HEALING"]);
        let info: Value = serde_json::from_slice(&call(&slot, "info").unwrap()).unwrap();
        assert_eq!(
            info["self_healing"], true,
            "dynamic_cast<ISelfHealingPlugin*> matched: {info}"
        );
        let d: Value = serde_json::from_slice(&call(&slot, "diagnostics").unwrap()).unwrap();
        assert_eq!(d["status"], "HEALTHY", "{d}");
        assert_eq!(
            d["memory_usage_bytes"], 4096,
            "a member past the strings and vectors: {d}"
        );
        assert_eq!(
            d["available_recovery_strategies"],
            json!(["ROLLBACK_STATE", "CLEANUP_RESOURCES"])
        );

        let (_g, a) = api(&slot);
        for _ in 0..3 {
            a.bump();
        }
        let d: Value = serde_json::from_slice(&call(&slot, "diagnostics").unwrap()).unwrap();
        assert_eq!(d["status"], "UNHEALTHY", "{d}");
        assert_eq!(d["error_code"], "FIXTURE_BROKEN");
        assert_eq!(d["total_requests"], 3);
        assert_eq!(
            d["recent_errors"],
            json!(["count 3 reached \"broken_at\""]),
            "escaped: {d}"
        );

        // No restart wanted here: only the verdict.
        host.start_health_monitor(HealthConfig {
            max_restart_attempts: 0,
            ..fast()
        })
        .unwrap();
        // (With restarts off, the monitor's verdict on an unhealthy plugin is `Failed`.)
        wait_report(&host, "healer", "unhealthy from performHealthCheck", |r| {
            matches!(r.status, HealthStatus::Unhealthy | HealthStatus::Failed) && r.checks > 0
        });
        for _ in 0..3 {
            a.bump(); // 6 = CRITICAL, still unhealthy
        }
        let d: Value = serde_json::from_slice(&call(&slot, "diagnostics").unwrap()).unwrap();
        assert_eq!(d["status"], "CRITICAL");
        assert!(host.stop_health_monitor());

        // A plugin without the mix-in has no diagnostics function and reports Unknown.
        let (_h2, plain, _) = load("legacy-heal-plain", &[]);
        let info: Value = serde_json::from_slice(&call(&plain, "info").unwrap()).unwrap();
        assert_eq!(info["self_healing"], false);
        assert_eq!(
            call(&plain, "diagnostics").unwrap_err().status(),
            KEEL_ERR_FUNCTION_NOT_FOUND
        );
    }

    #[test]
    fn an_unhealthy_plugin_repairs_itself_instead_of_being_restarted() {
        let (host, slot, marker) = load("legacy-heal-repair", &["LEGACY_SELF_HEALING"]);
        let (_g, a) = api(&slot);
        host.start_health_monitor(fast()).unwrap();
        wait_report(&host, "healer", "a healthy check", |r| {
            r.status == HealthStatus::Healthy
        });
        for _ in 0..3 {
            a.bump();
        }
        let r = wait_report(&host, "healer", "a self-repair", |r| r.self_repairs >= 1);
        let steps = r.last_self_repair.clone().unwrap();
        assert!(
            steps.starts_with("CLEANUP_RESOURCES: done, health HEALTHY"),
            "ThemisDB's order, not the declared one: {steps}"
        );
        wait_report(&host, "healer", "healthy again", |r| r.status == HealthStatus::Healthy);
        assert_eq!(slot.current().unwrap().number, 1, "repaired in place, not restarted");
        assert_eq!(a.count(), 0, "cleanupResources() reset the count");
        assert!(host.stop_health_monitor());
        let lines = marker_lines(&marker);
        assert!(lines.contains(&"cleanup v1".to_string()), "{lines:?}");
        assert!(
            !lines
                .iter()
                .any(|l| l.starts_with("rollback") || l.starts_with("self-repair")),
            "{lines:?}"
        );
        assert_eq!(host.health("healer").unwrap().restarts, 0);
    }

    #[test]
    fn a_failed_self_repair_leads_to_a_restart() {
        let (host, slot, marker) = load("legacy-heal-fails", &["LEGACY_SELF_HEALING", "LEGACY_REPAIR_FAILS"]);
        {
            let (_g, a) = api(&slot);
            for _ in 0..3 {
                a.bump();
            }
        }
        host.start_health_monitor(fast()).unwrap();
        let r = wait_report(&host, "healer", "a restart", |r| r.restarts >= 1);
        assert_eq!(r.self_repairs, 0);
        let steps = r.last_self_repair.clone().unwrap();
        assert!(
            steps.contains("CLEANUP_RESOURCES: returned false")
                && steps.contains("ROLLBACK_STATE: returned false")
                && steps.contains("attemptSelfRepair: returned false"),
            "{steps}"
        );
        assert!(host.stop_health_monitor());
        let lines = marker_lines(&marker);
        let pos = |p: &str| {
            lines
                .iter()
                .position(|l| l == p)
                .unwrap_or_else(|| panic!("{p} in {lines:?}"))
        };
        assert!(pos("cleanup v1") < pos("rollback v1") && pos("rollback v1") < pos("self-repair v1"));
        assert!(
            pos("self-repair v1") < lines.iter().rposition(|l| l == "init v1").unwrap(),
            "then the restart: {lines:?}"
        );
        assert!(slot.current().unwrap().number >= 2);
    }

    #[test]
    fn a_throwing_health_check_counts_as_unhealthy_and_the_host_keeps_serving() {
        let (host, slot, _) = load("legacy-heal-throws", &["LEGACY_SELF_HEALING", "LEGACY_HEALTH_THROWS"]);
        let e = call(&slot, "diagnostics").unwrap_err();
        assert_eq!(e.status(), KEEL_ERR_CALL_FAILED);
        assert!(e.message().contains("fixture health check failure"), "{e}");
        host.start_health_monitor(HealthConfig {
            max_restart_attempts: 0,
            ..fast()
        })
        .unwrap();
        let r = wait_report(&host, "healer", "unhealthy", |r| {
            matches!(r.status, HealthStatus::Unhealthy | HealthStatus::Failed)
        });
        assert_eq!(r.restarts, 0);
        assert!(host.stop_health_monitor());
        assert!(call(&slot, "info").is_ok());
    }
}
