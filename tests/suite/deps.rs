//! Dependencies, plugin directories and capabilities, end to end through the C ABI with real
//! native fixture plugins: load order, all-or-nothing sets, cycles, version ranges, unload
//! refusal and cascade, the capability allowlist and the frozen granted set.

use crate::common;

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::ptr;

use keel::ffi::deps::*;
use keel::ffi::host::*;
use keel::keel_status::{self, *};
use serde_json::{json, Value};

use common::capi::{call, cstr, last_error, Buf, Plugin, TestHost};

// The calls these tests add to the shared C-ABI helpers.

impl TestHost {
    fn load_dir(&self, dir: &Path) -> keel_status {
        keel_host_load_dir(self.0, cstr(dir.to_str().unwrap()).as_ptr())
    }

    /// `keel_host_load` with a NULL `out`: the status only, no handle.
    fn load_status(&self, manifest: &Path) -> keel_status {
        keel_host_load(self.0, cstr(manifest.to_str().unwrap()).as_ptr(), ptr::null_mut())
    }

    fn unload_cascade(&self, name: &str) -> keel_status {
        keel_host_unload_cascade(self.0, cstr(name).as_ptr())
    }

    fn is_loaded(&self, name: &str) -> bool {
        match self.get(name) {
            Ok(_) => true,
            Err(KEEL_ERR_PLUGIN_NOT_FOUND) => false,
            Err(s) => panic!("keel_plugin_get({name}) returned {s}"),
        }
    }

    fn set_allowlist(&self, names: &[&str]) -> keel_status {
        let owned: Vec<CString> = names.iter().map(|n| cstr(n)).collect();
        let ptrs: Vec<*const std::ffi::c_char> = owned.iter().map(|c| c.as_ptr()).collect();
        keel_host_set_capability_allowlist(self.0, ptrs.as_ptr(), ptrs.len())
    }

    fn allowlist(&self) -> u64 {
        let mut bits = 0;
        assert_eq!(keel_host_capability_allowlist(self.0, &mut bits), KEEL_OK);
        bits
    }
}

impl Plugin {
    fn capabilities(&self) -> Result<u64, keel_status> {
        let mut bits = 0;
        match keel_plugin_capabilities(self.0, &mut bits) {
            KEEL_OK => Ok(bits),
            s => Err(s),
        }
    }

    fn call_text(&self, function: &str, input: &[u8]) -> String {
        let f = self.function(function).unwrap();
        let out = Buf::new();
        assert_eq!(call(self.0, f, input, &out), KEEL_OK, "{}", last_error());
        String::from_utf8_lossy(&out.bytes()).into_owned()
    }
}

fn bit(name: &str) -> u64 {
    let mut b = 0;
    assert_eq!(keel_capability_bit(cstr(name).as_ptr(), &mut b), KEEL_OK);
    b
}

/// A plugin directory under construction: fixture libraries are compiled once per variant
/// and copied into each plugin folder.
struct PluginDir {
    root: PathBuf,
    build: PathBuf,
    marker: PathBuf,
}

impl PluginDir {
    fn new(tag: &str) -> PluginDir {
        let base = common::tempdir(tag);
        let root = base.join("plugins");
        let build = base.join("build");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&build).unwrap();
        PluginDir {
            root,
            build,
            marker: base.join("shutdowns.txt"),
        }
    }

    /// Compile the echo fixture with `tag` (returned by its "tag" function and written to the
    /// marker file on shutdown), optionally failing init.
    fn library(&self, tag: &str, fail_init: bool) -> PathBuf {
        let out = format!("libecho-{tag}{}.so", if fail_init { "-bad" } else { "" });
        let existing = self.build.join(&out);
        if existing.exists() {
            return existing;
        }
        let define = format!("ECHO_TAG=\"{tag}\"");
        let mut defines = vec![define.as_str()];
        if fail_init {
            defines.push("ECHO_INIT_FAIL");
        }
        common::build_native("echo", &defines, &self.build, &out)
    }

    /// `<root>/<name>/keel.json` plus the library, tagged with the plugin's name.
    fn plugin(&self, name: &str, version: &str, deps: Value, extra: Value) -> PathBuf {
        self.plugin_with(name, version, deps, extra, false)
    }

    fn plugin_with(&self, name: &str, version: &str, deps: Value, extra: Value, fail_init: bool) -> PathBuf {
        let folder = self.root.join(name);
        std::fs::create_dir_all(&folder).unwrap();
        let so = folder.join("libplugin.so");
        std::fs::copy(self.library(name, fail_init), &so).unwrap();
        let mut m = json!({
            "manifest_version": 1,
            "name": name,
            "version": version,
            "runtime": "native",
            "binary": {"linux": "libplugin.so"},
            "sha256": common::sha256_file(&so),
            "dependencies": deps,
            "config": {"marker": self.marker.to_str().unwrap()},
        });
        if let Value::Object(extra) = extra {
            for (k, v) in extra {
                m[k] = v;
            }
        }
        let path = folder.join("keel.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
        path
    }

    /// Shutdown lines written so far, in order ("shutdown <name>"). Always empty in the
    /// isolated re-run: a sandboxed plugin cannot write the marker file (see
    /// [`assert_shutdowns`]).
    fn shutdowns(&self) -> Vec<String> {
        std::fs::read_to_string(&self.marker)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

#[test]
fn rollback_when_the_third_of_five_fails_init() {
    let d = PluginDir::new("deps-rollback");
    // A chain p1 <- p2 <- p3 <- p4 <- p5 (each depends on the previous one): load order p1..p5.
    d.plugin("p1", "1.0.0", json!({}), json!({}));
    d.plugin("p2", "1.0.0", json!({"p1": "^1"}), json!({}));
    d.plugin_with("p3", "1.0.0", json!({"p2": "^1"}), json!({}), true);
    d.plugin("p4", "1.0.0", json!({"p3": "^1"}), json!({}));
    d.plugin("p5", "1.0.0", json!({"p4": "^1"}), json!({}));

    let h = TestHost::new();
    // An unrelated plugin loaded before: it must be untouched by the failed set.
    let other = PluginDir::new("deps-rollback-other");
    let keeper = other.plugin("keeper", "1.0.0", json!({}), json!({}));
    assert_eq!(h.load_status(&keeper), KEEL_OK, "{}", last_error());

    assert_eq!(h.load_dir(&d.root), KEEL_ERR_INIT_FAILED);
    let msg = last_error();
    assert!(
        msg.contains("'p3'") && msg.contains("nothing from this set was loaded"),
        "{msg}"
    );
    // The first two were initialised and have been shut down again, in reverse order; p4 and
    // p5 never ran.
    assert_shutdowns(&d, &["shutdown p2", "shutdown p1"]);
    for n in ["p1", "p2", "p3", "p4", "p5"] {
        assert!(!h.is_loaded(n), "{n} is still registered");
    }
    assert!(h.is_loaded("keeper"));
    assert_eq!(h.get("keeper").unwrap().call_text("tag", b""), "keeper");
    assert!(
        other.shutdowns().is_empty(),
        "keeper was shut down: {:?}",
        other.shutdowns()
    );

    // Nothing was left half-registered: the good part of the chain loads afterwards.
    std::fs::remove_dir_all(d.root.join("p3")).unwrap();
    std::fs::remove_dir_all(d.root.join("p4")).unwrap();
    std::fs::remove_dir_all(d.root.join("p5")).unwrap();
    assert_eq!(h.load_dir(&d.root), KEEL_OK, "{}", last_error());
    assert!(h.is_loaded("p1") && h.is_loaded("p2"));
}

#[test]
fn cycles_of_two_three_and_four_via_load_dir() {
    for (size, expected) in [
        (2, "dependency cycle: c0 -> c1 -> c0"),
        (3, "dependency cycle: c0 -> c1 -> c2 -> c0"),
        (4, "dependency cycle: c0 -> c1 -> c2 -> c3 -> c0"),
    ] {
        let d = PluginDir::new("deps-cycle");
        for i in 0..size {
            let next = format!("c{}", (i + 1) % size);
            d.plugin(&format!("c{i}"), "1.0.0", json!({ next: "*" }), json!({}));
        }
        // A plugin outside the cycle, which would be loadable on its own.
        d.plugin("free", "1.0.0", json!({}), json!({}));
        let h = TestHost::new();
        assert_eq!(h.load_dir(&d.root), KEEL_ERR_DEPENDENCY_CYCLE);
        let msg = last_error();
        assert!(msg.contains(expected), "{msg}");
        assert!(!h.is_loaded("free") && !h.is_loaded("c0"));
        assert!(d.shutdowns().is_empty(), "no plugin code may run: {:?}", d.shutdowns());
    }
}

#[test]
fn diamond_via_load_dir_then_unload_rules() {
    let d = PluginDir::new("deps-diamond");
    d.plugin("top", "1.0.0", json!({"left": "^1", "right": "^1"}), json!({}));
    d.plugin("left", "1.2.0", json!({"base": ">=2.1, <3"}), json!({}));
    d.plugin("right", "1.0.0", json!({"base": "^2"}), json!({}));
    d.plugin("base", "2.3.1", json!({}), json!({}));
    let h = TestHost::new();
    assert_eq!(h.load_dir(&d.root), KEEL_OK, "{}", last_error());
    for n in ["top", "left", "right", "base"] {
        assert_eq!(h.get(n).unwrap().call_text("tag", b""), n);
    }

    // Unloading something others depend on is refused, naming the dependents.
    assert_eq!(h.unload("base"), KEEL_ERR_HAS_DEPENDENTS);
    let msg = last_error();
    assert!(msg.contains("left, right"), "{msg}");
    assert!(h.is_loaded("base"));
    assert_eq!(h.unload("left"), KEEL_ERR_HAS_DEPENDENTS);
    assert!(last_error().contains("top"));
    assert!(d.shutdowns().is_empty());

    // Cascade, asked explicitly: dependents first, base last.
    assert_eq!(h.unload_cascade("base"), KEEL_OK, "{}", last_error());
    assert_shutdowns(
        &d,
        &["shutdown top", "shutdown left", "shutdown right", "shutdown base"],
    );
    for n in ["top", "left", "right", "base"] {
        assert!(!h.is_loaded(n));
    }
    assert_eq!(h.unload_cascade("base"), KEEL_ERR_PLUGIN_NOT_FOUND);
}

#[test]
fn leaf_unload_is_allowed_and_host_free_unloads_dependents_first() {
    let d = PluginDir::new("deps-leaf");
    d.plugin("app", "1.0.0", json!({"lib": "*"}), json!({}));
    d.plugin("lib", "1.0.0", json!({}), json!({}));
    d.plugin("zzz", "1.0.0", json!({"lib": "*"}), json!({}));
    {
        let h = TestHost::new();
        assert_eq!(h.load_dir(&d.root), KEEL_OK, "{}", last_error());
        assert_eq!(h.unload("zzz"), KEEL_OK, "{}", last_error());
        assert_shutdowns(&d, &["shutdown zzz"]);
    }
    // keel_host_free: "app" before "lib" although "lib" sorts after "app".
    assert_shutdowns(&d, &["shutdown zzz", "shutdown app", "shutdown lib"]);
}

#[test]
fn version_conflict_via_load_dir() {
    let d = PluginDir::new("deps-version");
    d.plugin("app", "1.0.0", json!({"base": "^2"}), json!({}));
    d.plugin("base", "1.4.0", json!({}), json!({}));
    let h = TestHost::new();
    assert_eq!(h.load_dir(&d.root), KEEL_ERR_DEPENDENCY_VERSION);
    let msg = last_error();
    assert!(
        msg.contains("'app'") && msg.contains("^2") && msg.contains("1.4.0"),
        "{msg}"
    );
    assert!(!h.is_loaded("base"));
}

#[test]
fn missing_dependency_via_load_dir() {
    let d = PluginDir::new("deps-missing");
    d.plugin("app", "1.0.0", json!({"ghost": ">=1.0"}), json!({}));
    d.plugin("fine", "1.0.0", json!({}), json!({}));
    let h = TestHost::new();
    assert_eq!(h.load_dir(&d.root), KEEL_ERR_DEPENDENCY_MISSING);
    let msg = last_error();
    assert!(
        msg.contains("'app'") && msg.contains("'ghost'") && msg.contains(">=1.0"),
        "{msg}"
    );
    assert!(!h.is_loaded("fine"));
}

#[test]
fn dependency_satisfied_by_an_already_loaded_plugin_and_rescan_never_replaces() {
    let base_dir = PluginDir::new("deps-loaded-base");
    let base = base_dir.plugin("base", "2.0.0", json!({}), json!({}));
    let d = PluginDir::new("deps-loaded");
    d.plugin("app", "1.0.0", json!({"base": "^2"}), json!({}));
    let h = TestHost::new();
    assert_eq!(h.load_status(&base), KEEL_OK, "{}", last_error());
    assert_eq!(h.load_dir(&d.root), KEEL_OK, "{}", last_error());
    assert!(h.is_loaded("app"));
    // Loading the same directory again is refused as a whole; the loaded plugin keeps running.
    assert_eq!(h.load_dir(&d.root), KEEL_ERR_ALREADY_LOADED);
    assert!(last_error().contains("'app'"));
    let app = h.get("app").unwrap();
    assert_eq!(app.call_text("tag", b""), "app");
    let mut generation = 0;
    assert_eq!(keel_plugin_generation(app.0, &mut generation), KEEL_OK);
    assert_eq!(generation, 1);
    assert!(d.shutdowns().is_empty());
    // The loaded dependency cannot go while "app" needs it.
    assert_eq!(h.unload("base"), KEEL_ERR_HAS_DEPENDENTS);
}

#[test]
fn load_dir_skips_editor_files_and_stray_json() {
    let d = PluginDir::new("deps-skip");
    d.plugin("good", "1.0.0", json!({}), json!({}));
    let broken = b"{ this is not json";
    for p in [
        ".hidden/keel.json",
        "backup~/keel.json",
        "copy.tmp/keel.json",
        "dl.part/keel.json",
        "x.swp/keel.json",
    ] {
        let path = d.root.join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, broken).unwrap();
    }
    // Stray JSON: a file at the top level, a sidecar next to the binary, a ThemisDB
    // plugin.json shadowed by keel.json, a folder without a manifest, JSON in a folder that
    // groups plugin folders, a manifest below a plugin folder (not searched).
    std::fs::write(d.root.join("stray.json"), broken).unwrap();
    std::fs::write(d.root.join("good/libplugin.so.json"), broken).unwrap();
    std::fs::write(d.root.join("good/plugin.json"), broken).unwrap();
    std::fs::create_dir_all(d.root.join("good/sub")).unwrap();
    std::fs::write(d.root.join("good/sub/keel.json"), broken).unwrap();
    std::fs::create_dir_all(d.root.join("empty")).unwrap();
    std::fs::create_dir_all(d.root.join("group/inner")).unwrap();
    std::fs::write(d.root.join("group/notes.json"), broken).unwrap();
    let h = TestHost::new();
    assert_eq!(h.load_dir(&d.root), KEEL_OK, "{}", last_error());
    assert!(h.is_loaded("good"));
    // A broken manifest in a real plugin folder fails the whole set.
    std::fs::create_dir_all(d.root.join("bad")).unwrap();
    std::fs::write(d.root.join("bad/keel.json"), broken).unwrap();
    let h2 = TestHost::new();
    assert_eq!(h2.load_dir(&d.root), KEEL_ERR_MANIFEST_PARSE);
    assert!(!h2.is_loaded("good"));
}

#[test]
fn load_dir_walks_themisdb_nested_layout() {
    // ThemisDB's tree: plugins/<category>/<name>/ — the dependency is in another category.
    let d = PluginDir::new("deps-nested");
    d.plugin("base", "1.0.0", json!({}), json!({}));
    d.plugin("app", "1.0.0", json!({"base": "^1"}), json!({}));
    for (category, name) in [("storage", "base"), ("importers", "app")] {
        std::fs::create_dir_all(d.root.join(category)).unwrap();
        std::fs::rename(d.root.join(name), d.root.join(category).join(name)).unwrap();
    }
    let h = TestHost::new();
    assert_eq!(h.load_dir(&d.root), KEEL_OK, "{}", last_error());
    assert!(h.is_loaded("base") && h.is_loaded("app"));
}

#[test]
fn load_dir_that_finds_no_manifest_says_so() {
    // ThemisDB's legacy layout (a *.json next to its library, directly in the directory):
    // not a Keel plugin folder, and not a silent success either.
    let d = PluginDir::new("deps-no-manifest");
    std::fs::write(d.root.join("postgres.json"), b"{}").unwrap();
    std::fs::write(d.root.join("libpostgres.so"), b"\x7fELF").unwrap();
    let h = TestHost::new();
    assert_eq!(h.load_dir(&d.root), KEEL_ERR_NO_MANIFEST);
    assert!(last_error().contains("postgres.json"), "{}", last_error());
}

#[test]
fn empty_and_missing_directories() {
    let d = PluginDir::new("deps-empty");
    let h = TestHost::new();
    assert_eq!(h.load_dir(&d.root), KEEL_OK);
    assert_eq!(h.load_dir(&d.root.join("nope")), KEEL_ERR_FILE_NOT_FOUND);
    let file = d.root.join("file");
    std::fs::write(&file, b"x").unwrap();
    assert_eq!(h.load_dir(&file), KEEL_ERR_INVALID_ARGUMENT);
}

#[test]
fn capability_outside_the_allowlist_is_refused() {
    let d = PluginDir::new("deps-caps-denied");
    d.plugin(
        "reader",
        "1.0.0",
        json!({}),
        json!({"capabilities": ["log", "kv:read"]}),
    );
    d.plugin(
        "egress",
        "1.0.0",
        json!({}),
        json!({"capabilities": ["log", "storage:write"]}),
    );
    let h = TestHost::new();
    assert_eq!(h.set_allowlist(&["log", "kv:read"]), KEEL_OK);
    assert_eq!(h.allowlist(), bit("log") | bit("kv:read"));
    assert_eq!(h.load_dir(&d.root), KEEL_ERR_CAPABILITY_DENIED);
    let msg = last_error();
    assert!(msg.contains("storage:write") && msg.contains("egress"), "{msg}");
    assert!(!h.is_loaded("reader"), "the set is all-or-nothing");
    assert!(d.shutdowns().is_empty(), "no plugin code may run: {:?}", d.shutdowns());
}

#[test]
fn granted_set_is_frozen_at_load() {
    let d = PluginDir::new("deps-caps-frozen");
    let manifest = d.plugin(
        "reader",
        "1.0.0",
        json!({}),
        json!({"capabilities": ["log", "kv:read"]}),
    );
    let h = TestHost::new();
    assert_eq!(h.set_allowlist(&["log", "kv:read", "kv:write", "clock"]), KEEL_OK);
    assert_eq!(h.load_status(&manifest), KEEL_OK, "{}", last_error());
    let p = h.get("reader").unwrap();
    let granted = bit("log") | bit("kv:read");
    assert_eq!(p.capabilities().unwrap(), granted);
    // Only granted host-API entries are present.
    assert_eq!(
        p.call_text("hostcaps", b""),
        "log=1 clock=0 random=0 kv_get=1 kv_put=0 kv_delete=0"
    );
    // Narrowing or widening the allowlist later changes nothing for the loaded plugin.
    assert_eq!(h.set_allowlist(&["log"]), KEEL_OK);
    assert_eq!(p.capabilities().unwrap(), granted);
    assert_eq!(
        h.set_allowlist(&["log", "kv:read", "kv:write", "clock", "random"]),
        KEEL_OK
    );
    assert_eq!(p.capabilities().unwrap(), granted);
    assert_eq!(
        p.call_text("hostcaps", b""),
        "log=1 clock=0 random=0 kv_get=1 kv_put=0 kv_delete=0"
    );
    // After unload the handle reports that.
    assert_eq!(h.unload("reader"), KEEL_OK);
    assert_eq!(p.capabilities(), Err(KEEL_ERR_PLUGIN_UNLOADED));
}

#[test]
fn allowlist_with_an_unknown_name_changes_nothing() {
    let h = TestHost::new();
    let before = h.allowlist();
    assert_eq!(h.set_allowlist(&["log", "teleport"]), KEEL_ERR_CAPABILITY_UNKNOWN);
    assert!(last_error().contains("teleport"));
    assert_eq!(h.allowlist(), before);
    // An empty list allows nothing.
    assert_eq!(keel_host_set_capability_allowlist(h.0, ptr::null(), 0), KEEL_OK);
    assert_eq!(h.allowlist(), 0);
}

#[test]
fn capability_bits_are_distinct_and_stable() {
    let names = [
        "log",
        "clock",
        "random",
        "kv:read",
        "kv:write",
        "storage:read",
        "storage:write",
        "rpc:register",
        "metrics:write",
    ];
    let mut all = 0u64;
    for n in names {
        let b = bit(n);
        assert_eq!(b.count_ones(), 1, "{n}");
        assert_eq!(all & b, 0, "{n} shares a bit");
        all |= b;
    }
    assert_eq!(bit("log"), 1);
    let mut b = 0;
    assert_eq!(
        keel_capability_bit(cstr("fly").as_ptr(), &mut b),
        KEEL_ERR_CAPABILITY_UNKNOWN
    );
}

#[test]
fn bad_arguments_get_precise_codes() {
    let h = TestHost::new();
    let dir = cstr("/nonexistent");
    assert_eq!(keel_host_load_dir(ptr::null(), dir.as_ptr()), KEEL_ERR_NULL_POINTER);
    assert_eq!(keel_host_load_dir(h.0, ptr::null()), KEEL_ERR_NULL_POINTER);
    let bad_utf8 = [0xffu8, 0xfe, 0];
    assert_eq!(keel_host_load_dir(h.0, bad_utf8.as_ptr().cast()), KEEL_ERR_INVALID_UTF8);
    assert_eq!(keel_host_unload_cascade(h.0, ptr::null()), KEEL_ERR_NULL_POINTER);
    assert_eq!(
        keel_host_unload_cascade(ptr::null(), cstr("x").as_ptr()),
        KEEL_ERR_NULL_POINTER
    );
    assert_eq!(h.unload_cascade("nobody"), KEEL_ERR_PLUGIN_NOT_FOUND);
    assert_eq!(
        keel_host_set_capability_allowlist(h.0, ptr::null(), 2),
        KEEL_ERR_NULL_POINTER
    );
    let log = cstr("log");
    let with_null = [log.as_ptr(), ptr::null()];
    assert_eq!(
        keel_host_set_capability_allowlist(h.0, with_null.as_ptr(), 2),
        KEEL_ERR_NULL_POINTER
    );
    assert!(last_error().contains("names[1]"));
    assert_eq!(
        keel_host_set_capability_allowlist(ptr::null(), ptr::null(), 0),
        KEEL_ERR_NULL_POINTER
    );
    assert_eq!(
        keel_host_capability_allowlist(h.0, ptr::null_mut()),
        KEEL_ERR_NULL_POINTER
    );
    let mut bits = 0;
    assert_eq!(keel_plugin_capabilities(ptr::null(), &mut bits), KEEL_ERR_NULL_POINTER);
    assert_eq!(keel_capability_bit(ptr::null(), &mut bits), KEEL_ERR_NULL_POINTER);
    assert_eq!(
        keel_capability_bit(log.as_ptr(), ptr::null_mut()),
        KEEL_ERR_NULL_POINTER
    );
}

#[test]
fn reload_that_would_break_a_dependent_is_rolled_back() {
    let d = PluginDir::new("deps-reload");
    let base = d.plugin("base", "2.0.0", json!({}), json!({}));
    d.plugin("app", "1.0.0", json!({"base": "^2"}), json!({}));
    let h = TestHost::new();
    assert_eq!(h.load_dir(&d.root), KEEL_OK, "{}", last_error());
    // A compatible new version reloads.
    let mut m: Value = serde_json::from_slice(&std::fs::read(&base).unwrap()).unwrap();
    m["version"] = json!("2.1.0");
    std::fs::write(&base, serde_json::to_vec(&m).unwrap()).unwrap();
    let mut generation = 0;
    assert_eq!(
        keel_host_reload(h.0, cstr("base").as_ptr(), &mut generation),
        KEEL_OK,
        "{}",
        last_error()
    );
    assert_eq!(generation, 2);
    // A major version "app" does not accept is refused; generation 2 keeps serving.
    m["version"] = json!("3.0.0");
    std::fs::write(&base, serde_json::to_vec(&m).unwrap()).unwrap();
    assert_eq!(
        keel_host_reload(h.0, cstr("base").as_ptr(), &mut generation),
        KEEL_ERR_DEPENDENCY_VERSION
    );
    let msg = last_error();
    assert!(
        msg.contains("'app'") && msg.contains("^2") && msg.contains("3.0.0"),
        "{msg}"
    );
    let p = h.get("base").unwrap();
    assert_eq!(keel_plugin_generation(p.0, &mut generation), KEEL_OK);
    assert_eq!(generation, 2);
    assert_eq!(p.call_text("tag", b""), "base");
    // A new dependency that leads back to it is a cycle.
    m["version"] = json!("2.2.0");
    m["dependencies"] = json!({"app": "*"});
    std::fs::write(&base, serde_json::to_vec(&m).unwrap()).unwrap();
    assert_eq!(
        keel_host_reload(h.0, cstr("base").as_ptr(), ptr::null_mut()),
        KEEL_ERR_DEPENDENCY_CYCLE
    );
    assert!(last_error().contains("base -> app -> base"), "{}", last_error());
}

#[test]
fn themisdb_plugin_json_dependencies_are_planned_without_libraries() {
    // A ThemisDB manifest in a plugin folder. Object form (version ranges: plugin
    // dependencies): "nlohmann/json" is a library and is not looked for; the real plugin
    // dependency is, and is missing.
    let d = PluginDir::new("deps-themis");
    let folder = d.root.join("importer");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::copy(d.library("importer", false), folder.join("importer.so")).unwrap();
    let write = |deps: serde_json::Value| {
        let manifest = json!({
            "name": "pg_importer",
            "version": "1.0.0",
            "type": "importer",
            "description": "test importer",
            "binary": {"linux": "importer.so"},
            "dependencies": deps,
            "expected_hash": common::sha256_file(&folder.join("importer.so")).to_uppercase()
        });
        std::fs::write(
            folder.join("plugin.json"),
            serde_json::to_vec_pretty(&manifest).unwrap(),
        )
        .unwrap();
    };
    write(json!({"nlohmann/json": ">=3.0", "schema_mapper": ">=1.0"}));
    let h = TestHost::new();
    assert_eq!(h.load_dir(&d.root), KEEL_ERR_DEPENDENCY_MISSING);
    let msg = last_error();
    assert!(
        msg.contains("'pg_importer'") && msg.contains("'schema_mapper'"),
        "{msg}"
    );
    assert!(!msg.contains("nlohmann"), "{msg}");
    // Array form: a name that is no plugin of the scanned set (nor loaded) is a library
    // dependency, not a missing plugin: planning passes, and the load goes on to the binary
    // (this native test library is no ThemisDB plugin, so it fails there, not at 501).
    write(json!(["nlohmann/json", "schema_mapper"]));
    let s = h.load_dir(&d.root);
    assert_ne!(s, KEEL_ERR_DEPENDENCY_MISSING, "{}", last_error());
    if common::isolated_run() {
        // A ThemisDB plugin cannot be isolated: under the re-run's requirement it is refused
        // with its own code (never silently in-process), after planning passed.
        assert_eq!(s, KEEL_ERR_ISOLATION_UNSUPPORTED, "{}", last_error());
        return;
    }
    assert_eq!(s, KEEL_ERR_SYMBOL_MISSING, "{}", last_error());
    assert!(last_error().contains("createPlugin"), "{}", last_error());
}

// ---------------------------------------------------------------------------------------
// Lifecycle listeners run outside the lifecycle lock
// ---------------------------------------------------------------------------------------

/// A listener loads a plugin when another one is loaded, a second one unloads it when the
/// first is reloaded: both work (listeners run after the lifecycle lock is released), each
/// operation's events are delivered before it returns, and every listener sees one order.
/// Run on a thread of its own and awaited with a bound, so a deadlock fails the test.
#[test]
fn listeners_may_load_and_unload_plugins() {
    use keel::host::LifecycleEvent::{self, *};
    use std::sync::{mpsc, Arc, Mutex, Weak};

    let d = PluginDir::new("deps-listeners");
    let a = d.plugin("a", "1.0.0", json!({}), json!({}));
    let b = d.plugin("b", "1.0.0", json!({}), json!({}));

    let host = Arc::new(common::host());
    host.trust().set_require_signature(false).unwrap();
    type Seen = Arc<Mutex<Vec<(String, LifecycleEvent, u64)>>>;
    let seen: Seen = Arc::default();
    let nested: Arc<Mutex<Vec<String>>> = Arc::default();

    let s = seen.clone();
    host.add_listener(Arc::new(move |n, e, g| s.lock().unwrap().push((n.to_string(), e, g))));
    // The listeners hold the host weakly (the host owns them).
    let (w, out) = (Arc::downgrade(&host), nested.clone());
    host.add_listener(Arc::new(move |n, e, _| {
        if let (Some(h), ("a", Loaded)) = (Weak::upgrade(&w), (n, e)) {
            let r = h.load(&b).map(|s| s.name().to_string());
            out.lock()
                .unwrap()
                .push(format!("load b: {:?}", r.map_err(|e| e.to_string())));
        }
    }));
    let (w, out) = (Arc::downgrade(&host), nested.clone());
    host.add_listener(Arc::new(move |n, e, _| {
        if let (Some(h), ("a", AfterSwap)) = (Weak::upgrade(&w), (n, e)) {
            let r = h.unload("b");
            out.lock()
                .unwrap()
                .push(format!("unload b: {:?}", r.map_err(|e| e.to_string())));
        }
    }));

    let (tx, rx) = mpsc::channel();
    let h = host.clone();
    std::thread::spawn(move || {
        h.load(&a).unwrap();
        // The nested load has happened by the time the outer one returns.
        let b_after_load = h.get("b").is_ok();
        let generation = h.reload("a").unwrap();
        let b_after_reload = h.get("b").is_ok();
        tx.send((b_after_load, generation, b_after_reload)).unwrap();
    });
    let (b_after_load, generation, b_after_reload) = rx
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("a listener that loads or unloads deadlocked the lifecycle");

    assert!(
        b_after_load,
        "the listener's load of b did not happen: {:?}",
        nested.lock().unwrap()
    );
    assert_eq!(generation, 2);
    assert!(
        !b_after_reload,
        "the listener's unload of b did not happen: {:?}",
        nested.lock().unwrap()
    );
    assert_eq!(
        *nested.lock().unwrap(),
        ["load b: Ok(\"b\")", "unload b: Ok(())"],
        "the listeners' own operations succeeded"
    );
    let want: Vec<(String, LifecycleEvent, u64)> = vec![
        ("a".into(), Loaded, 1),
        ("b".into(), Loaded, 1),
        ("a".into(), BeforeSwap, 2),
        ("a".into(), AfterSwap, 2),
        ("b".into(), Unloaded, 1),
    ];
    assert_eq!(*seen.lock().unwrap(), want);
    assert_shutdowns(&d, &["shutdown a", "shutdown b"]); // old a drained, b unloaded
}

/// Events of operations on several threads reach the listeners one at a time, a listener is
/// never re-entered by its own lifecycle call (so it may hold its own lock across it), and a
/// listener that unloads the very plugin whose event it handles works too.
#[test]
fn listener_unloading_the_plugin_it_is_told_about() {
    use keel::host::LifecycleEvent::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{mpsc, Arc, Mutex};

    let d = PluginDir::new("deps-listener-self");
    let names: Vec<String> = (0..4).map(|i| format!("p{i}")).collect();
    let manifests: Vec<PathBuf> = names
        .iter()
        .map(|n| d.plugin(n, "1.0.0", json!({}), json!({})))
        .collect();

    let host = Arc::new(common::host());
    host.trust().set_require_signature(false).unwrap();
    // The thread inside the listener, if any.
    let active: Arc<Mutex<Option<std::thread::ThreadId>>> = Arc::default();
    let overlaps = Arc::new(AtomicUsize::new(0));
    let unloads: Arc<Mutex<Vec<String>>> = Arc::default();
    let w = Arc::downgrade(&host);
    let (act, o, u) = (active.clone(), overlaps.clone(), unloads.clone());
    host.add_listener(Arc::new(move |n, e, _| {
        if act.lock().unwrap().replace(std::thread::current().id()).is_some() {
            o.fetch_add(1, Ordering::SeqCst);
        }
        if e == Loaded {
            if let Some(h) = w.upgrade() {
                // Unloading from inside the delivery of its own Loaded event.
                u.lock()
                    .unwrap()
                    .push(format!("{n}: {:?}", h.unload(n).map_err(|e| e.to_string())));
            }
        }
        *act.lock().unwrap() = None;
    }));

    let (tx, rx) = mpsc::channel();
    for m in manifests {
        let (h, tx) = (host.clone(), tx.clone());
        std::thread::spawn(move || tx.send(h.load(&m).map(|_| ()).map_err(|e| e.to_string())).unwrap());
    }
    for _ in 0..names.len() {
        let r = rx
            .recv_timeout(std::time::Duration::from_secs(120))
            .expect("a listener that unloads deadlocked the lifecycle");
        assert_eq!(r, Ok(()));
    }
    let mut got = unloads.lock().unwrap().clone();
    got.sort();
    let want: Vec<String> = names.iter().map(|n| format!("{n}: Ok(())")).collect();
    assert_eq!(got, want);
    for n in &names {
        assert!(host.get(n).is_err(), "{n} is still loaded");
    }
    assert_eq!(
        overlaps.load(Ordering::SeqCst),
        0,
        "a listener ran on two threads at once, or was re-entered"
    );
}

/// The fixture's shutdowns ran in this order: checked in-process; in the isolated re-run the
/// sandboxed fixture has no file system to write its marker to (its `shutdown` is refused
/// there, contained), so the order is the in-process run's to prove.
fn assert_shutdowns(d: &PluginDir, want: &[&str]) {
    if common::isolated_run() {
        assert!(
            d.shutdowns().is_empty(),
            "a sandboxed plugin wrote a file: {:?}",
            d.shutdowns()
        );
    } else {
        assert_eq!(d.shutdowns(), want);
    }
}
