//! Lifecycle listeners and introspection through the C ABI (`src/ffi/introspect.rs`):
//! listeners with user data that load and unload from inside the callback, removal by id
//! with the user-data destructor, the plugin list, a plugin's functions and its state,
//! unload-all in reverse dependency order.

use crate::common;

use std::ffi::{c_char, c_void, CStr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::Duration;

use keel::ffi::host::*;
use keel::ffi::introspect::*;
use keel::keel_status::{self, *};

use common::capi::{cstr, last_error, Buf, TestHost};

/// What the test listener sees and does.
struct Probe {
    host: *mut keel_host,
    events: Mutex<Vec<(String, keel_event, u64)>>,
    /// Loaded from inside the listener when `counter` is loaded.
    load_on_counter: PathBuf,
    /// Statuses of the lifecycle calls the listener made.
    inner: Mutex<Vec<keel_status>>,
}

static FREED: AtomicUsize = AtomicUsize::new(0);

unsafe extern "C" fn on_event(plugin: *const c_char, event: keel_event, generation: u64, user_data: *mut c_void) {
    // SAFETY: user_data is the Probe registered below, alive until its free function runs.
    let p = unsafe { &*(user_data as *const Probe) };
    // SAFETY: Keel passes a NUL-terminated name valid for the call.
    let name = unsafe { CStr::from_ptr(plugin) }.to_string_lossy().into_owned();
    p.events.lock().unwrap().push((name.clone(), event, generation));
    if name == "counter" && event == keel_event::KEEL_EVENT_LOADED {
        // Load another plugin from inside the listener (the lifecycle lock is free).
        let m = cstr(p.load_on_counter.to_str().unwrap());
        let s = keel_host_load(p.host, m.as_ptr(), std::ptr::null_mut());
        p.inner.lock().unwrap().push(s);
    }
    if name == "counter" && event == keel_event::KEEL_EVENT_AFTER_SWAP {
        // Unload from inside the listener.
        let s = keel_host_unload(p.host, c"echo".as_ptr());
        p.inner.lock().unwrap().push(s);
    }
}

unsafe extern "C" fn free_probe(user_data: *mut c_void) {
    FREED.fetch_add(1, Ordering::SeqCst);
    // SAFETY: made by Box::into_raw below; Keel calls this once.
    drop(unsafe { Box::from_raw(user_data as *mut Probe) });
}

/// Run `f` on its own thread and fail (instead of hanging) if it deadlocks.
fn bounded<F: FnOnce() + Send + 'static>(f: F) {
    let (tx, rx) = mpsc::channel();
    let t = std::thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(()) => t.join().unwrap(),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            t.join().unwrap(); // propagates the test's panic
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("deadlock: lifecycle call from a listener never returned"),
    }
}

#[test]
fn a_c_listener_sees_every_event_and_may_load_and_unload() {
    let (_echo_dir, echo_manifest) = common::echo_plugin("listen-echo", &[], serde_json::json!({}));
    let dir = common::tempdir("listen-counter");
    let so = common::build_native("counter", &[], &dir, "libcounter.so");
    let counter_manifest = common::write_manifest(&dir, "counter", "1.0.0", &so, serde_json::json!({}));
    bounded(move || {
        let host = TestHost::new();
        let probe = Box::into_raw(Box::new(Probe {
            host: host.0,
            events: Mutex::new(Vec::new()),
            load_on_counter: echo_manifest,
            inner: Mutex::new(Vec::new()),
        }));
        let mut id = 0;
        assert_eq!(
            keel_host_add_listener(host.0, Some(on_event), probe.cast(), Some(free_probe), &mut id),
            KEEL_OK
        );
        assert_ne!(id, 0);
        // SAFETY: the probe lives until free_probe runs (after removal, below).
        let p = unsafe { &*probe };

        let c = host
            .load(&counter_manifest)
            .unwrap_or_else(|s| panic!("{s}: {}", last_error()));
        // When keel_host_load returns, its events (and those of the listener's own load) have
        // been delivered.
        assert_eq!(*p.inner.lock().unwrap(), vec![KEEL_OK], "load from a listener");
        assert!(host.get("echo").is_ok(), "the listener loaded echo");
        // Reload counter: before swap, after swap; the listener then unloads echo.
        let mut g = 0;
        assert_eq!(
            keel_host_reload(host.0, c"counter".as_ptr(), &mut g),
            KEEL_OK,
            "{}",
            last_error()
        );
        assert_eq!(
            *p.inner.lock().unwrap(),
            vec![KEEL_OK, KEEL_OK],
            "unload from a listener"
        );
        assert!(host.get("echo").is_err(), "the listener unloaded echo");
        // A failed reload: rolled back.
        common::build_native("counter", &["COUNTER_STEP=7"], &dir, "libcounter.so");
        assert_eq!(
            keel_host_reload(host.0, c"counter".as_ptr(), &mut g),
            KEEL_ERR_DIGEST_MISMATCH
        );
        assert_eq!(host.unload("counter"), KEEL_OK);
        use keel_event::*;
        let expected: Vec<(String, keel_event, u64)> = vec![
            ("counter".into(), KEEL_EVENT_LOADED, 1),
            ("echo".into(), KEEL_EVENT_LOADED, 1),
            ("counter".into(), KEEL_EVENT_BEFORE_SWAP, 2),
            ("counter".into(), KEEL_EVENT_AFTER_SWAP, 2),
            ("echo".into(), KEEL_EVENT_UNLOADED, 1),
            ("counter".into(), KEEL_EVENT_ROLLED_BACK, 3),
            ("counter".into(), KEEL_EVENT_UNLOADED, 2),
        ];
        assert_eq!(*p.events.lock().unwrap(), expected);

        // Removal: no more events, the destructor runs once; a second removal is refused.
        let before = FREED.load(Ordering::SeqCst);
        assert_eq!(keel_host_remove_listener(host.0, id), KEEL_OK);
        assert_eq!(
            FREED.load(Ordering::SeqCst),
            before + 1,
            "user data released on removal"
        );
        assert_eq!(keel_host_remove_listener(host.0, id), KEEL_ERR_INVALID_ARGUMENT);
        assert!(last_error().contains(&id.to_string()));
        let _c2 = host.load(&counter_manifest);
        assert_eq!(FREED.load(Ordering::SeqCst), before + 1);
        keel_plugin_free(c);
    });
}

#[test]
fn listener_registration_refuses_null_and_frees_with_the_host() {
    let host = TestHost::new();
    let mut id = 7;
    assert_eq!(
        keel_host_add_listener(host.0, None, std::ptr::null_mut(), None, &mut id),
        KEEL_ERR_NULL_POINTER
    );
    assert_eq!(id, 7, "out-parameter untouched on failure");
    assert_eq!(
        keel_host_add_listener(host.0, Some(on_event), std::ptr::null_mut(), None, std::ptr::null_mut()),
        KEEL_ERR_NULL_POINTER
    );
    assert_eq!(
        keel_host_add_listener(std::ptr::null(), Some(on_event), std::ptr::null_mut(), None, &mut id),
        KEEL_ERR_NULL_POINTER
    );
    assert_eq!(keel_host_remove_listener(host.0, 12345), KEEL_ERR_INVALID_ARGUMENT);
    // A listener still registered when its host is freed has its user data released then.
    static HOST_FREED: AtomicUsize = AtomicUsize::new(0);
    unsafe extern "C" fn count_free(_: *mut c_void) {
        HOST_FREED.fetch_add(1, Ordering::SeqCst);
    }
    let h2 = TestHost::new();
    assert_eq!(
        keel_host_add_listener(h2.0, Some(on_event), std::ptr::null_mut(), Some(count_free), &mut id),
        KEEL_OK
    );
    assert_eq!(HOST_FREED.load(Ordering::SeqCst), 0);
    drop(h2);
    assert_eq!(HOST_FREED.load(Ordering::SeqCst), 1);
}

#[test]
fn the_plugin_list_functions_and_state_describe_what_runs() {
    let (_dir, manifest) = common::echo_plugin("list", &[], serde_json::json!({"capabilities": ["log"]}));
    let so = manifest.parent().unwrap().join("libecho.so");
    let dir = common::tempdir("list-counter");
    let cso = common::build_native("counter", &[], &dir, "libcounter.so");
    let cm = common::write_manifest(
        &dir,
        "counter",
        "2.1.0",
        &cso,
        serde_json::json!({"dependencies": {"echo": ">=1.0.0"}}),
    );
    let host = TestHost::new();
    let e = host.load_plugin(&manifest).unwrap();
    host.load_plugin(&cm)
        .unwrap_or_else(|s| panic!("{s}: {}", last_error()));
    let out = Buf::new();
    assert_eq!(keel_host_list_plugins(host.0, out.0), KEEL_OK);
    let rows: serde_json::Value = serde_json::from_slice(&out.bytes()).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    let echo = &rows[1 - (rows[0]["name"] == "echo") as usize];
    assert_eq!(echo["name"], "echo");
    assert_eq!(echo["version"], "1.0.0");
    assert_eq!(echo["runtime"], "native");
    assert_eq!(echo["generation"], 1);
    assert_eq!(echo["state"], "active");
    assert_eq!(echo["binary_sha256"], common::sha256_file(&so));
    assert_eq!(echo["capabilities"], serde_json::json!(["log"]));
    assert_eq!(echo["manifest_path"], manifest.to_str().unwrap());
    let counter = rows.iter().find(|r| r["name"] == "counter").unwrap();
    assert_eq!(counter["version"], "2.1.0");
    assert_eq!(counter["dependencies"]["echo"], ">=1.0.0");

    assert_eq!(keel_plugin_functions(e.0, out.0), KEEL_OK);
    let fns: Vec<String> = serde_json::from_slice(&out.bytes()).unwrap();
    assert_eq!(fns[0], "echo");
    assert!(fns.contains(&"sum".to_string()));

    let mut st = keel_lifecycle_state::KEEL_STATE_LOADING;
    assert_eq!(keel_plugin_state(e.0, &mut st), KEEL_OK);
    assert_eq!(st, keel_lifecycle_state::KEEL_STATE_ACTIVE);
    assert_eq!(keel_plugin_state(e.0, std::ptr::null_mut()), KEEL_ERR_NULL_POINTER);
    assert_eq!(
        keel_host_list_plugins(host.0, std::ptr::null_mut()),
        KEEL_ERR_NULL_POINTER
    );

    // unload-all: dependents first (listener records the order).
    let order = std::sync::Arc::new(Mutex::new(Vec::new()));
    let o = order.clone();
    // SAFETY: host.0 is a live host; its Rust API is reached as the C ABI does.
    let h = unsafe { &*(host.0 as *const keel::Host) };
    h.add_listener(std::sync::Arc::new(move |n, ev, _| {
        if ev == keel::lifecycle::LifecycleEvent::Unloaded {
            o.lock().unwrap().push(n.to_string());
        }
    }));
    assert_eq!(keel_host_unload_all(host.0), KEEL_OK);
    assert_eq!(*order.lock().unwrap(), vec!["counter".to_string(), "echo".to_string()]);
    assert_eq!(keel_plugin_state(e.0, &mut st), KEEL_OK);
    assert_eq!(st, keel_lifecycle_state::KEEL_STATE_UNLOADED);
    assert_eq!(keel_plugin_functions(e.0, out.0), KEEL_ERR_PLUGIN_UNLOADED);
    assert_eq!(keel_host_list_plugins(host.0, out.0), KEEL_OK);
    assert_eq!(out.text(), "[]");
    assert_eq!(keel_host_unload_all(std::ptr::null()), KEEL_ERR_NULL_POINTER);
}

#[test]
fn discovery_and_manifest_reading_report_bad_input() {
    let (dir, manifest) = common::echo_plugin("discover", &[], serde_json::json!({}));
    // A stray JSON file next to the plugin folder is not a manifest.
    let root = dir
        .parent()
        .unwrap()
        .join(format!("{}-root", dir.file_name().unwrap().to_str().unwrap()));
    std::fs::create_dir_all(root.join("cat")).unwrap();
    std::fs::rename(&dir, root.join("cat").join("echo")).unwrap();
    let name = manifest.file_name().unwrap().to_str().unwrap().to_string();
    std::fs::rename(root.join("cat/echo").join(&name), root.join("cat/echo/keel.json")).unwrap();
    std::fs::write(root.join("notes.json"), "{}").unwrap();
    let out = Buf::new();
    let r = cstr(root.to_str().unwrap());
    assert_eq!(keel_discover_manifests(r.as_ptr(), out.0), KEEL_OK, "{}", last_error());
    let found: Vec<String> = serde_json::from_slice(&out.bytes()).unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].ends_with("cat/echo/keel.json"), "{found:?}");
    let m = cstr(&found[0]);
    assert_eq!(keel_manifest_read(m.as_ptr(), out.0), KEEL_OK, "{}", last_error());
    let v: serde_json::Value = serde_json::from_slice(&out.bytes()).unwrap();
    assert_eq!(v["name"], "echo");
    assert_eq!(v["runtime"], "native");

    let missing = cstr(root.join("missing").to_str().unwrap());
    assert_eq!(
        keel_discover_manifests(missing.as_ptr(), out.0),
        KEEL_ERR_FILE_NOT_FOUND
    );
    assert!(out.bytes().is_empty(), "an output buffer is empty after a failure");
    assert_eq!(keel_manifest_read(missing.as_ptr(), out.0), KEEL_ERR_FILE_NOT_FOUND);
    let stray = cstr(root.join("notes.json").to_str().unwrap());
    assert_ne!(keel_manifest_read(stray.as_ptr(), out.0), KEEL_OK);
    assert!(!last_error().is_empty());
    assert_eq!(keel_discover_manifests(std::ptr::null(), out.0), KEEL_ERR_NULL_POINTER);
    assert_eq!(
        keel_manifest_read(m.as_ptr(), std::ptr::null_mut()),
        KEEL_ERR_NULL_POINTER
    );
    let mut obj = std::ptr::null_mut();
    assert_eq!(
        keel::ffi::themis::keel_themis_lease_plugin(std::ptr::null(), &mut obj),
        KEEL_ERR_NULL_POINTER
    );
}

/// Poll `cond` (bounded: fails after 60 s instead of hanging; no timing is asserted).
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..60_000 {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("never happened: {what}");
}

#[test]
fn a_plugin_being_reloaded_under_a_running_call_is_draining() {
    if common::skip_when_isolated(common::NEEDS_FILES) {
        return;
    }
    let (dir, manifest) = common::echo_plugin("draining", &[], serde_json::json!({}));
    let host = TestHost::new();
    let p = host.load_plugin(&manifest).unwrap();
    let block = p.function("block_until").unwrap();
    let gate = dir.join("gate");
    let entered = dir.join("gate.entered");
    let host_ptr = host.0 as usize;
    let plugin_ptr = p.0 as usize;
    let g = gate.clone();
    let caller = std::thread::spawn(move || {
        let out = Buf::new();
        let input = g.to_str().unwrap().as_bytes().to_vec();
        common::capi::call(plugin_ptr as *const keel_plugin, block, &input, &out)
    });
    wait_for("the call entered the plugin", || entered.exists());
    let reloader = std::thread::spawn(move || {
        let mut g = 0;
        keel_host_reload(host_ptr as *const keel_host, c"echo".as_ptr(), &mut g)
    });
    let state = || {
        let mut st = keel_lifecycle_state::KEEL_STATE_LOADING;
        assert_eq!(keel_plugin_state(p.0, &mut st), KEEL_OK);
        st
    };
    wait_for("the reload is draining the old generation", || {
        state() == keel_lifecycle_state::KEEL_STATE_DRAINING
    });
    std::fs::write(&gate, b"").unwrap();
    assert_eq!(caller.join().unwrap(), KEEL_OK);
    assert_eq!(reloader.join().unwrap(), KEEL_OK, "{}", last_error());
    assert_eq!(state(), keel_lifecycle_state::KEEL_STATE_ACTIVE);
}
