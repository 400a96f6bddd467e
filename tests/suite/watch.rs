//! The plugin-directory watcher end to end with native fixtures (echo.c, tagged per build):
//! a folder dropped in is loaded; a binary and manifest written slowly in chunks give exactly
//! one reload and the new generation answers while calls keep flowing; a tampered update is
//! rolled back and reported once; a removed manifest unloads (or is refused while others
//! depend on it); editor and partial names are ignored; a name already loaded is never
//! replaced; stopping is prompt and idempotent; the C ABI with one code per bad input.
//!
//! Nothing here measures time. Outcomes are awaited by bounded polling (the bound only keeps
//! a broken build from hanging). "Nothing else happened" is shown with a sentinel: a plugin
//! folder dropped in after the change under test; once the sentinel is loaded, every earlier
//! change has been acted on (events are handled in order, with the same quiet periods).

use crate::common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel::host::LifecycleEvent;
use keel::keel_status::*;
use keel::registry::Slot;
use keel::watch::{WatchAction, WatchConfig, WatchEvent};
use keel::Host;
use serde_json::{json, Value};

const BOUND: Duration = Duration::from_secs(30);

/// Wait until `f` returns `Some`, polling; panic with `what` past a generous bound.
fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let give_up = Instant::now() + BOUND;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < give_up, "gave up waiting for: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn host() -> Host {
    let h = common::host();
    h.trust().set_require_signature(false).unwrap();
    h
}

fn config(debounce_ms: u64) -> WatchConfig {
    WatchConfig {
        debounce: Duration::from_millis(debounce_ms),
        settle: Duration::from_millis(100),
        ..WatchConfig::default()
    }
}

fn call(slot: &Slot, f: &str) -> keel::Result<String> {
    let id = slot.resolve(f)?;
    let mut out = Vec::new();
    slot.call(id, b"", &mut out)?;
    Ok(String::from_utf8(out).unwrap())
}

fn generation(slot: &Slot) -> u64 {
    slot.current().map(|g| g.number).unwrap_or(0)
}

/// A plugin directory (`root`) and a place to build and stage plugin folders (`build`) on
/// the same file system, so a staged folder can be renamed in.
struct Plugins {
    root: PathBuf,
    build: PathBuf,
}

impl Plugins {
    fn new(tag: &str) -> Plugins {
        let base = common::tempdir(tag);
        let p = Plugins {
            root: base.join("plugins"),
            build: base.join("build"),
        };
        std::fs::create_dir_all(&p.root).unwrap();
        std::fs::create_dir_all(&p.build).unwrap();
        p
    }

    /// The echo fixture whose "tag" function returns `tag` (compiled once per tag).
    fn library(&self, tag: &str) -> PathBuf {
        let out = format!("libecho-{tag}.so");
        let existing = self.build.join(&out);
        if existing.exists() {
            return existing;
        }
        let define = format!("ECHO_TAG=\"{tag}\"");
        common::build_native("echo", &[define.as_str()], &self.build, &out)
    }

    fn manifest(name: &str, version: &str, lib: &[u8], deps: Value) -> Vec<u8> {
        let m = json!({
            "manifest_version": 1,
            "name": name,
            "version": version,
            "runtime": "native",
            "binary": {"linux": "libplugin.so"},
            "sha256": keel::trust::digest::sha256_hex(lib),
            "dependencies": deps,
        });
        serde_json::to_vec_pretty(&m).unwrap()
    }

    /// A complete plugin folder outside the watched directory.
    fn stage(&self, folder: &str, name: &str, tag: &str, deps: Value) -> PathBuf {
        let dir = self.build.join(format!("stage-{folder}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let lib = std::fs::read(self.library(tag)).unwrap();
        std::fs::write(dir.join("libplugin.so"), &lib).unwrap();
        std::fs::write(dir.join("keel.json"), Self::manifest(name, "1.0.0", &lib, deps)).unwrap();
        dir
    }

    /// Stage a plugin folder and move it into the watched directory in one rename.
    fn drop_in(&self, folder: &str, name: &str, tag: &str, deps: Value) {
        let staged = self.stage(folder, name, tag, deps);
        std::fs::rename(staged, self.root.join(folder)).unwrap();
    }

    fn folder(&self, folder: &str) -> PathBuf {
        self.root.join(folder)
    }
}

/// Write `bytes` to `path` (truncating it first) in `chunks` pieces with a pause after each:
/// a writer that is slow, so the watcher sees the file half-written many times.
fn write_slowly(path: &Path, bytes: &[u8], chunks: usize) {
    let mut f = std::fs::File::create(path).unwrap();
    for piece in bytes.chunks(bytes.len().div_ceil(chunks).max(1)) {
        f.write_all(piece).unwrap();
        f.flush().unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn events_of(host: &Host, folder: &str) -> Vec<WatchEvent> {
    host.watch_events().into_iter().filter(|e| e.folder == folder).collect()
}

/// Wait for an outcome of `action` on `folder` and return it.
fn wait_event(host: &Host, folder: &str, action: WatchAction) -> WatchEvent {
    wait_for(&format!("{action:?} of folder {folder}"), || {
        events_of(host, folder).into_iter().find(|e| e.action == action)
    })
}

/// Wait for a successful outcome of `action` on `folder` (failed ones are passed over).
fn wait_ok(host: &Host, folder: &str, action: WatchAction, what: &str) -> WatchEvent {
    wait_for(what, || {
        events_of(host, folder)
            .into_iter()
            .find(|e| e.action == action && e.status == KEEL_OK)
    })
}

/// Drop a sentinel plugin in and wait until it is loaded: every change made before has
/// been acted on by then.
fn sentinel(host: &Host, p: &Plugins, name: &str) {
    p.drop_in(name, name, "sentinel", json!({}));
    let e = wait_event(host, name, WatchAction::Load);
    assert_eq!(e.status, KEEL_OK, "sentinel {name}: {e:?}");
}

fn record_lifecycle(host: &Host) -> Arc<Mutex<Vec<(String, LifecycleEvent, u64)>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    host.add_listener(Arc::new(move |n, e, g| s.lock().unwrap().push((n.to_string(), e, g))));
    seen
}

#[test]
fn folder_dropped_in_is_loaded_and_answers() {
    let p = Plugins::new("watch-new");
    let host = host();
    let seen = record_lifecycle(&host);
    host.watch_dir(&p.root, config(150)).unwrap();
    assert_eq!(host.watched_dir(), Some(std::fs::canonicalize(&p.root).unwrap()));
    p.drop_in("echo", "echo", "v1", json!({}));
    let e = wait_event(&host, "echo", WatchAction::Load);
    assert_eq!(
        (e.status, e.plugin.as_str(), e.generation),
        (KEEL_OK, "echo", 1),
        "{e:?}"
    );
    let slot = host.get("echo").unwrap();
    assert_eq!(call(&slot, "tag").unwrap(), "v1");
    assert!(seen
        .lock()
        .unwrap()
        .contains(&("echo".into(), LifecycleEvent::Loaded, 1)));

    // A folder created in place, file by file (binary first, manifest last), also loads.
    let dir = p.folder("second");
    std::fs::create_dir(&dir).unwrap();
    let lib = std::fs::read(p.library("second")).unwrap();
    std::fs::write(dir.join("libplugin.so"), &lib).unwrap();
    write_slowly(
        &dir.join("keel.json"),
        &Plugins::manifest("second", "1.0.0", &lib, json!({})),
        4,
    );
    let e = wait_event(&host, "second", WatchAction::Load);
    assert_eq!(e.status, KEEL_OK, "{e:?}");
    assert_eq!(call(&host.get("second").unwrap(), "tag").unwrap(), "second");
}

#[test]
fn slow_replacement_gives_exactly_one_reload_and_calls_keep_flowing() {
    let p = Plugins::new("watch-reload");
    p.drop_in("echo", "echo", "v1", json!({}));
    let host = host();
    // Loaded before watching: adopted, not reloaded.
    host.load_dir(&p.root).unwrap();
    let seen = record_lifecycle(&host);
    // A debounce well above the writer's pauses.
    host.watch_dir(&p.root, config(500)).unwrap();
    let slot = host.get("echo").unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let caller = {
        let (slot, stop) = (slot.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut answers = std::collections::BTreeSet::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                answers.insert(call(&slot, "tag").expect("a call failed during the reload"));
                n += 1;
            }
            (answers, n)
        })
    };

    // The new binary first, then the manifest pinning it, both in many slow chunks.
    let dir = p.folder("echo");
    let lib = std::fs::read(p.library("v2")).unwrap();
    write_slowly(&dir.join("libplugin.so"), &lib, 10);
    write_slowly(
        &dir.join("keel.json"),
        &Plugins::manifest("echo", "1.0.0", &lib, json!({})),
        6,
    );
    let e = wait_event(&host, "echo", WatchAction::Reload);
    assert_eq!((e.status, e.generation), (KEEL_OK, 2), "{e:?}");
    assert_eq!(call(&slot, "tag").unwrap(), "v2");
    assert_eq!(generation(&slot), 2);

    sentinel(&host, &p, "sentinel");
    stop.store(true, Ordering::Relaxed);
    let (answers, n) = caller.join().unwrap();
    assert!(n > 0);
    assert!(answers.iter().all(|a| a == "v1" || a == "v2"), "{answers:?}");
    let reloads: Vec<_> = events_of(&host, "echo");
    assert_eq!(reloads.len(), 1, "exactly one action on the folder: {reloads:?}");
    let swaps = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(n, e, _)| n == "echo" && *e == LifecycleEvent::AfterSwap)
        .count();
    assert_eq!(swaps, 1);
    assert_eq!(slot.metrics.snapshot().reloads, 1);
}

#[test]
fn tampered_update_is_rolled_back_and_reported_once() {
    let p = Plugins::new("watch-tamper");
    p.drop_in("echo", "echo", "v1", json!({}));
    let host = host();
    let seen = record_lifecycle(&host);
    host.watch_dir(&p.root, config(150)).unwrap();
    let e = wait_event(&host, "echo", WatchAction::Load);
    assert_eq!(e.status, KEEL_OK, "{e:?}");
    let slot = host.get("echo").unwrap();

    // Another binary under the old manifest: its SHA-256 no longer matches.
    let evil = std::fs::read(p.library("evil")).unwrap();
    write_slowly(&p.folder("echo").join("libplugin.so"), &evil, 3);
    let e = wait_event(&host, "echo", WatchAction::Reload);
    assert_eq!(e.status, KEEL_ERR_DIGEST_MISMATCH, "{e:?}");
    assert_eq!(e.generation, 1, "the old generation keeps serving");
    assert!(e.message.contains("rolled back"), "{}", e.message);
    assert_eq!(call(&slot, "tag").unwrap(), "v1");
    assert_eq!(generation(&slot), 1);
    assert!(seen
        .lock()
        .unwrap()
        .iter()
        .any(|(n, e, _)| n == "echo" && *e == LifecycleEvent::ReloadRolledBack));

    sentinel(&host, &p, "sentinel");
    let reloads: Vec<_> = events_of(&host, "echo")
        .into_iter()
        .filter(|e| e.action == WatchAction::Reload)
        .collect();
    assert_eq!(reloads.len(), 1, "reported once, not retried: {reloads:?}");
    assert_eq!(slot.metrics.snapshot().reload_failures, 1);

    // Fixing the manifest (pinning the new binary) is the next change: reloaded.
    std::fs::write(
        p.folder("echo").join("keel.json"),
        Plugins::manifest("echo", "1.0.0", &evil, json!({})),
    )
    .unwrap();
    wait_ok(&host, "echo", WatchAction::Reload, "reload after the fix");
    assert_eq!(call(&slot, "tag").unwrap(), "evil");
}

#[test]
fn removed_manifest_unloads_unless_others_depend_on_it() {
    let p = Plugins::new("watch-unload");
    let host = host();
    host.watch_dir(&p.root, config(150)).unwrap();
    // The dependent first: refused until its dependency arrives, then loaded.
    p.drop_in("app", "app", "app", json!({"base": "^1"}));
    let e = wait_event(&host, "app", WatchAction::Load);
    assert_eq!(e.status, KEEL_ERR_DEPENDENCY_MISSING, "{e:?}");
    p.drop_in("base", "base", "base", json!({}));
    for f in ["base", "app"] {
        wait_for(&format!("{f} loaded"), || host.get(f).ok());
    }
    let base = host.get("base").unwrap();
    let app = host.get("app").unwrap();
    assert_eq!(call(&app, "tag").unwrap(), "app");

    // base's manifest goes while app depends on it: stays loaded, refusal reported.
    std::fs::remove_file(p.folder("base").join("keel.json")).unwrap();
    let e = wait_event(&host, "base", WatchAction::Unload);
    assert_eq!(e.status, KEEL_ERR_HAS_DEPENDENTS, "{e:?}");
    assert!(e.message.contains("app"), "{}", e.message);
    assert_eq!(call(&base, "tag").unwrap(), "base");

    // app's whole folder goes: app is unloaded, then base (its refusal is cured).
    std::fs::remove_dir_all(p.folder("app")).unwrap();
    let e = wait_event(&host, "app", WatchAction::Unload);
    assert_eq!(e.status, KEEL_OK, "{e:?}");
    wait_ok(&host, "base", WatchAction::Unload, "base unloaded");
    assert!(host.plugin_names().is_empty(), "{:?}", host.plugin_names());
    assert_eq!(call(&app, "tag").unwrap_err().status(), KEEL_ERR_PLUGIN_UNLOADED);
    assert_eq!(call(&base, "tag").unwrap_err().status(), KEEL_ERR_PLUGIN_UNLOADED);
}

#[test]
fn editor_and_partial_names_are_ignored_and_a_rename_save_reloads() {
    let p = Plugins::new("watch-editor");
    p.drop_in("echo", "echo", "v1", json!({}));
    let host = host();
    host.watch_dir(&p.root, config(150)).unwrap();
    wait_event(&host, "echo", WatchAction::Load);
    let slot = host.get("echo").unwrap();

    let dir = p.folder("echo");
    for junk in [".keel.json.swp", "keel.json~", "keel.json.tmp", ".libplugin.so.part"] {
        std::fs::write(dir.join(junk), b"{ half a manifest").unwrap();
    }
    // Whole plugin folders under ignored names.
    for (folder, name) in [
        ("copy.part", "copy"),
        (".hidden", "hidden"),
        ("backup~", "backup"),
        ("incoming.tmp", "incoming"),
    ] {
        let staged = p.stage(folder, name, "v1", json!({}));
        std::fs::rename(staged, p.root.join(folder)).unwrap();
    }
    sentinel(&host, &p, "sentinel");
    let others: Vec<_> = host
        .watch_events()
        .into_iter()
        .filter(|e| e.folder != "sentinel")
        .collect();
    assert_eq!(others.len(), 1, "only echo's first load: {others:?}");
    assert_eq!(generation(&slot), 1);
    let mut names = host.plugin_names();
    names.sort();
    assert_eq!(names, ["echo", "sentinel"]);

    // An editor's save: write a temporary name, rename over the manifest; the binary too.
    let lib = std::fs::read(p.library("v2")).unwrap();
    std::fs::write(dir.join("libplugin.so.download"), &lib).unwrap();
    std::fs::rename(dir.join("libplugin.so.download"), dir.join("libplugin.so")).unwrap();
    std::fs::write(
        dir.join("keel.json.tmp"),
        Plugins::manifest("echo", "1.0.0", &lib, json!({})),
    )
    .unwrap();
    std::fs::rename(dir.join("keel.json.tmp"), dir.join("keel.json")).unwrap();
    let e = wait_event(&host, "echo", WatchAction::Reload);
    assert_eq!((e.status, e.generation), (KEEL_OK, 2), "{e:?}");
    assert_eq!(call(&slot, "tag").unwrap(), "v2");
}

#[test]
fn broken_manifest_is_reported_once_and_loaded_once_fixed() {
    let p = Plugins::new("watch-broken");
    let host = host();
    host.watch_dir(&p.root, config(150)).unwrap();
    let dir = p.folder("echo");
    std::fs::create_dir(&dir).unwrap();
    let lib = std::fs::read(p.library("v1")).unwrap();
    std::fs::write(dir.join("libplugin.so"), &lib).unwrap();
    let good = Plugins::manifest("echo", "1.0.0", &lib, json!({}));
    // A writer that stopped half-way (longer than the quiet period).
    std::fs::write(dir.join("keel.json"), &good[..good.len() / 2]).unwrap();
    let e = wait_event(&host, "echo", WatchAction::Load);
    assert_eq!(e.status, KEEL_ERR_MANIFEST_PARSE, "{e:?}");
    sentinel(&host, &p, "sentinel");
    assert_eq!(events_of(&host, "echo").len(), 1, "no failure storm");

    // The writer finishes: the next quiet period loads it.
    std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join("keel.json"))
        .unwrap()
        .write_all(&good[good.len() / 2..])
        .unwrap();
    wait_ok(
        &host,
        "echo",
        WatchAction::Load,
        "echo loaded after the manifest was completed",
    );
    assert_eq!(call(&host.get("echo").unwrap(), "tag").unwrap(), "v1");
}

#[test]
fn a_loaded_plugin_is_never_replaced_by_another_folder() {
    let p = Plugins::new("watch-conflict");
    p.drop_in("first", "echo", "first", json!({}));
    let host = host();
    host.watch_dir(&p.root, config(150)).unwrap();
    wait_event(&host, "first", WatchAction::Load);
    let slot = host.get("echo").unwrap();

    p.drop_in("second", "echo", "second", json!({}));
    let e = wait_event(&host, "second", WatchAction::Load);
    assert_eq!(e.status, KEEL_ERR_ALREADY_LOADED, "{e:?}");
    assert_eq!(call(&slot, "tag").unwrap(), "first");
    assert_eq!(generation(&slot), 1);

    // Once the first folder is gone, the second one's plugin takes the name.
    std::fs::remove_dir_all(p.folder("first")).unwrap();
    wait_ok(&host, "second", WatchAction::Load, "second loaded");
    assert_eq!(call(&host.get("echo").unwrap(), "tag").unwrap(), "second");
}

/// Run `f` on another thread and wait (bounded) for it to return.
fn returns<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(BOUND)
        .unwrap_or_else(|_| panic!("{what} did not return"))
}

#[test]
fn stop_is_prompt_idempotent_and_one_watcher_at_a_time() {
    let p = Plugins::new("watch-stop");
    let other = Plugins::new("watch-stop-other");
    let host = Arc::new(host());
    // A debounce of an hour: a change is pending when the watcher is stopped.
    let slow = WatchConfig {
        debounce: Duration::from_secs(3600),
        ..WatchConfig::default()
    };
    host.watch_dir(&p.root, slow.clone()).unwrap();
    assert_eq!(
        host.watch_dir(&other.root, slow.clone()).unwrap_err().status(),
        KEEL_ERR_BUSY
    );
    assert_eq!(
        host.watch_dir(&p.root, slow.clone()).unwrap_err().status(),
        KEEL_ERR_BUSY
    );
    p.drop_in("echo", "echo", "v1", json!({}));
    let h = host.clone();
    assert!(returns("stop_watching", move || h.stop_watching()));
    assert!(!host.stop_watching(), "second stop: nothing to stop");
    assert_eq!(host.watched_dir(), None);
    assert!(host.plugin_names().is_empty());

    // Watching again works; the existing folder is loaded at start (load_existing).
    host.watch_dir(&p.root, config(100)).unwrap();
    let e = wait_event(&host, "echo", WatchAction::Load);
    assert_eq!(e.status, KEEL_OK, "{e:?}");
    // Dropping the host stops the watcher (and joins it) before unloading.
    let host = Arc::try_unwrap(host).unwrap_or_else(|_| panic!("host still shared"));
    returns("dropping a watching host", move || drop(host));
}

#[test]
fn a_listener_on_the_watcher_thread_may_stop_it() {
    let p = Plugins::new("watch-listener-stop");
    let host = Arc::new(host());
    let weak = Arc::downgrade(&host);
    host.add_listener(Arc::new(move |_, e, _| {
        if e == LifecycleEvent::Loaded {
            if let Some(h) = weak.upgrade() {
                h.stop_watching();
            }
        }
    }));
    host.watch_dir(&p.root, config(100)).unwrap();
    p.drop_in("echo", "echo", "v1", json!({}));
    wait_for("the watcher stopped by its own listener", || {
        host.watched_dir().is_none().then_some(())
    });
    assert!(host.get("echo").is_ok());
    // And a new watcher can start.
    host.watch_dir(&p.root, config(100)).unwrap();
    assert!(host.stop_watching());
}

#[test]
fn existing_folders_are_adopted_or_left_alone() {
    let p = Plugins::new("watch-existing");
    p.drop_in("loaded", "loaded", "v1", json!({}));
    p.drop_in("waiting", "waiting", "v1", json!({}));
    let host = host();
    host.load(&p.folder("loaded").join("keel.json")).unwrap();
    host.watch_dir(
        &p.root,
        WatchConfig {
            load_existing: false,
            ..config(100)
        },
    )
    .unwrap();
    sentinel(&host, &p, "sentinel");
    let others: Vec<_> = host
        .watch_events()
        .into_iter()
        .filter(|e| e.folder != "sentinel")
        .collect();
    assert!(others.is_empty(), "{others:?}");
    assert!(host.get("waiting").is_err());
    assert_eq!(generation(&host.get("loaded").unwrap()), 1);
    // The adopted plugin is unloaded when its manifest goes.
    std::fs::remove_file(p.folder("loaded").join("keel.json")).unwrap();
    let e = wait_event(&host, "loaded", WatchAction::Unload);
    assert_eq!((e.status, e.plugin.as_str()), (KEEL_OK, "loaded"), "{e:?}");
}

mod c_abi {
    use super::*;
    use common::capi::{cstr, last_error};
    use keel::ffi::host::*;
    use keel::ffi::watch::*;
    use std::ptr;

    fn events(h: *mut keel_host, after: u64, buf: *mut keel_buffer) -> Vec<Value> {
        assert_eq!(keel_host_watch_events(h, after, buf), KEEL_OK);
        let (mut data, mut len) = (ptr::null(), 0usize);
        assert_eq!(keel_buffer_data(buf, &mut data, &mut len), KEEL_OK);
        if len == 0 {
            return Vec::new();
        }
        // SAFETY: keel_buffer_data returned a pointer to len bytes the buffer owns, read before it changes.
        let text = std::str::from_utf8(unsafe { std::slice::from_raw_parts(data, len) }).unwrap();
        assert!(text.ends_with('\n'));
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    #[test]
    fn watch_through_the_c_abi_with_bad_arguments() {
        let p = Plugins::new("watch-ffi");
        let mut h = ptr::null_mut();
        assert_eq!(keel_host_new(&mut h), KEEL_OK);
        common::allow_unsigned(h);
        let mut buf = ptr::null_mut();
        assert_eq!(keel_buffer_new(&mut buf), KEEL_OK);
        let root = cstr(p.root.to_str().unwrap());

        assert_eq!(
            keel_host_watch_dir(ptr::null(), root.as_ptr(), 100),
            KEEL_ERR_NULL_POINTER
        );
        assert_eq!(keel_host_watch_dir(h, ptr::null(), 100), KEEL_ERR_NULL_POINTER);
        assert!(last_error().contains("dir"), "{}", last_error());
        let bad = [0x66u8, 0xff, 0xfe, 0];
        assert_eq!(keel_host_watch_dir(h, bad.as_ptr().cast(), 100), KEEL_ERR_INVALID_UTF8);
        let missing = cstr(p.root.join("nope").to_str().unwrap());
        assert_eq!(keel_host_watch_dir(h, missing.as_ptr(), 100), KEEL_ERR_FILE_NOT_FOUND);
        let file = p.build.join("file");
        std::fs::write(&file, b"x").unwrap();
        let file = cstr(file.to_str().unwrap());
        assert_eq!(keel_host_watch_dir(h, file.as_ptr(), 100), KEEL_ERR_INVALID_ARGUMENT);
        assert_eq!(keel_host_watch_dir(h, root.as_ptr(), 0), KEEL_ERR_INVALID_ARGUMENT);
        assert!(last_error().contains("debounce"), "{}", last_error());
        assert_eq!(
            keel_host_watch_dir(h, root.as_ptr(), 3_600_001),
            KEEL_ERR_INVALID_ARGUMENT
        );
        assert_eq!(keel_host_watch_events(ptr::null(), 0, buf), KEEL_ERR_NULL_POINTER);
        assert_eq!(keel_host_watch_events(h, 0, ptr::null_mut()), KEEL_ERR_NULL_POINTER);
        assert_eq!(keel_host_stop_watching(ptr::null()), KEEL_ERR_NULL_POINTER);
        assert!(events(h, 0, buf).is_empty());

        assert_eq!(keel_host_watch_dir(h, root.as_ptr(), 100), KEEL_OK);
        assert_eq!(keel_host_watch_dir(h, root.as_ptr(), 100), KEEL_ERR_BUSY);
        assert!(last_error().contains("already watching"), "{}", last_error());

        p.drop_in("echo", "echo", "v1", json!({}));
        let load = wait_for("load outcome as a JSON line", || {
            events(h, 0, buf).into_iter().find(|v| v["folder"] == "echo")
        });
        assert_eq!(load["action"], "load");
        assert_eq!(load["status"], 0);
        assert_eq!(load["status_name"], "KEEL_OK");
        assert_eq!(load["plugin"], "echo");
        assert_eq!(load["generation"], 1);
        assert!(load["unix_ms"].as_u64().unwrap() > 0);
        let seq = load["seq"].as_u64().unwrap();
        assert!(events(h, seq, buf).is_empty());

        // A tampered binary: the failed reload as a line after `seq`.
        let evil = std::fs::read(p.library("evil")).unwrap();
        std::fs::write(p.folder("echo").join("libplugin.so"), evil).unwrap();
        let reload = wait_for("reload outcome", || events(h, seq, buf).into_iter().next());
        assert_eq!(reload["action"], "reload");
        assert_eq!(reload["status"], KEEL_ERR_DIGEST_MISMATCH as u32);
        assert_eq!(reload["status_name"], "KEEL_ERR_DIGEST_MISMATCH");
        assert_eq!(reload["generation"], 1);

        assert_eq!(keel_host_stop_watching(h), KEEL_OK);
        assert_eq!(keel_host_stop_watching(h), KEEL_OK);
        // The outcomes outlive the watcher.
        assert_eq!(events(h, 0, buf).len(), 2);
        assert_eq!(keel_buffer_free(buf), KEEL_OK);
        assert_eq!(keel_host_free(h), KEEL_OK);
    }
}

#[test]
fn bad_settings_and_directories_have_their_codes() {
    let p = Plugins::new("watch-bad");
    let host = host();
    let e = |r: keel::Result<()>| r.unwrap_err().status();
    assert_eq!(
        e(host.watch_dir(&p.root.join("nope"), WatchConfig::default())),
        KEEL_ERR_FILE_NOT_FOUND
    );
    let file = p.build.join("f");
    std::fs::write(&file, b"").unwrap();
    assert_eq!(
        e(host.watch_dir(&file, WatchConfig::default())),
        KEEL_ERR_INVALID_ARGUMENT
    );
    for c in [
        WatchConfig {
            settle: Duration::ZERO,
            ..WatchConfig::default()
        },
        WatchConfig {
            history: 0,
            ..WatchConfig::default()
        },
    ] {
        assert_eq!(e(host.watch_dir(&p.root, c)), KEEL_ERR_INVALID_ARGUMENT);
    }
    assert_eq!(host.watched_dir(), None);
    assert!(!host.stop_watching());
}
