//! Calls with options (`keel_call_with`): cancel tokens (WASM interrupt, native polling),
//! per-call deadline and fuel capped by the plugin's limits, bad options, the call context.
//! Real plugins: a WAT module compiled by the test build and a native C fixture.

use crate::common::capi::{self, cstr, last_error, Buf, TestHost};
use crate::common::{build_native, tempdir, write_manifest};
use crate::wasm_support::wat_fixture;

use std::path::{Path, PathBuf};
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keel::error::keel_status::{self, *};
use keel::ffi::call::*;
use keel::ffi::host::*;
use keel::services::call::{self as ctx, CallOptions, CancelToken};
use keel::services::HostServices;
use parking_lot::Mutex;
use serde_json::json;

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Write `<name>.wasm` (the `cancel_loop` fixture) and its manifest into `dir`.
fn wasm_plugin(dir: &Path, name: &str, extra: serde_json::Value) -> PathBuf {
    let wasm = wat_fixture("cancel_loop");
    std::fs::write(dir.join(format!("{name}.wasm")), &wasm).unwrap();
    let mut m = json!({
        "manifest_version": 1, "name": name, "version": "1.0.0", "runtime": "wasm",
        "binary": {"wasm32": format!("{name}.wasm")},
        "sha256": keel::trust::digest::sha256_hex(&wasm),
        "capabilities": ["log"],
    });
    for (k, v) in extra.as_object().unwrap() {
        m[k] = v.clone();
    }
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, m.to_string()).unwrap();
    path
}

fn native_plugin(dir: &Path) -> PathBuf {
    let so = build_native("cancel_poll", &[], dir, "libcancel_poll.so");
    write_manifest(dir, "cancel_poll", "1.0.0", &so, json!({}))
}

/// Options with every field zero but `struct_size`.
fn opts() -> keel_call_options {
    keel_call_options {
        struct_size: std::mem::size_of::<keel_call_options>() as u32,
        flags: 0,
        deadline_us: 0,
        fuel: 0,
        cancel: ptr::null(),
        user_context: ptr::null_mut(),
        tenant: ptr::null(),
        traceparent: ptr::null(),
    }
}

fn call_with(
    p: *const keel_plugin,
    f: keel_function,
    input: &[u8],
    o: Option<&keel_call_options>,
    out: &Buf,
) -> keel_status {
    let o = o.map_or(ptr::null(), |o| o as *const _);
    keel_call_with(p, f, input.as_ptr(), input.len(), o, out.0)
}

/// A C cancel token, freed when dropped.
struct Token(*mut keel_cancel_token);

impl Token {
    fn new() -> Token {
        let mut t = ptr::null_mut();
        assert_eq!(keel_cancel_token_new(&mut t), KEEL_OK);
        Token(t)
    }
    fn cancel(&self) {
        assert_eq!(keel_cancel_token_cancel(self.0), KEEL_OK);
    }
    fn is_cancelled(&self) -> bool {
        let mut b = false;
        assert_eq!(keel_cancel_token_is_cancelled(self.0, &mut b), KEEL_OK);
        b
    }
}

impl Drop for Token {
    fn drop(&mut self) {
        assert_eq!(keel_cancel_token_free(self.0), KEEL_OK);
    }
}

/// Raw pointers handed to another thread (the C ABI's handles are thread-safe).
#[derive(Clone, Copy)]
struct SendPtr(usize);

/// Run `keel_call_with(plugin, f, "", {cancel: token, ..extra})` on another thread.
fn call_in_thread(
    plugin: *mut keel_plugin,
    f: keel_function,
    token: *mut keel_cancel_token,
    deadline_us: u64,
) -> std::thread::JoinHandle<(keel_status, String, Vec<u8>)> {
    let (p, t) = (SendPtr(plugin as usize), SendPtr(token as usize));
    std::thread::spawn(move || {
        let out = Buf::new();
        let mut o = opts();
        o.cancel = t.0 as *const keel_cancel_token;
        o.deadline_us = deadline_us;
        let s = call_with(p.0 as *const keel_plugin, f, b"", Some(&o), &out);
        let msg = if s == KEEL_OK { String::new() } else { last_error() };
        (s, msg, out.bytes())
    })
}

fn ok_call(p: &capi::Plugin, f: &str) -> String {
    let out = Buf::new();
    let id = p.function(f).unwrap();
    assert_eq!(capi::call(p.0, id, b"", &out), KEEL_OK, "{}", last_error());
    out.text()
}

// ---- WASM: cancel ----------------------------------------------------------------------

#[test]
fn cancel_from_another_thread_stops_an_infinite_wasm_loop() {
    let d = tempdir("callopts-wasm-cancel");
    // No deadline or fuel would stop `spin` for a minute: only the cancel can.
    let path = wasm_plugin(
        &d,
        "cancel_loop",
        json!({"limits": {"timeout_ms": 60_000, "fuel_per_call": 1_000_000_000_000u64}}),
    );
    let host = TestHost::new();
    let p = host.load_plugin(&path).unwrap();
    let spin = p.function("spin").unwrap();
    // The cancel may land before the guest is entered (then the call is not run); wait longer
    // each round until one lands while it spins. Nothing here asserts a duration.
    let mut wait = Duration::from_millis(10);
    let msg = loop {
        let token = Token::new();
        let call = call_in_thread(p.0, spin, token.0, 0);
        std::thread::sleep(wait);
        token.cancel();
        assert!(token.is_cancelled());
        let (s, msg, out) = call.join().unwrap();
        assert_eq!(s, KEEL_ERR_CANCELLED, "{msg}");
        assert!(out.is_empty(), "a cancelled call's buffer is empty");
        if msg.contains("interrupted") {
            break msg;
        }
        assert!(msg.contains("before the call started"), "{msg}");
        wait *= 2;
        assert!(wait < Duration::from_secs(60), "the call never started");
    };
    assert!(msg.contains("cancel"), "{msg}");
    // The host keeps serving; the plugin's next call gets a fresh instance and works.
    assert_eq!(ok_call(&p, "ok"), "ok");
    let out = Buf::new();
    assert_eq!(
        call_with(p.0, p.function("ok").unwrap(), b"", Some(&opts()), &out),
        KEEL_OK
    );
    assert_eq!(out.text(), "ok");
}

/// A host whose log sink tells the test when the guest is running and records the call
/// context the sink saw (tenant, traceparent, user_context, cancelled).
fn logging_host() -> (
    keel::Host,
    Arc<AtomicBool>,
    Arc<Mutex<Vec<(Option<String>, Option<String>, usize)>>>,
) {
    let started = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (s, v) = (started.clone(), seen.clone());
    let services = HostServices::default().with_log(Arc::new(move |_plugin, _level, msg| {
        if msg == "started" {
            ctx::with_current(|c| {
                v.lock().push((
                    c.and_then(|c| c.tenant).map(str::to_owned),
                    c.and_then(|c| c.traceparent).map(str::to_owned),
                    c.map_or(0, |c| c.user_context as usize),
                ))
            });
            s.store(true, Ordering::SeqCst);
        }
    }));
    let host = keel::Host::with_services(services);
    host.trust().set_require_signature(false).unwrap();
    (host, started, seen)
}

#[test]
fn a_wasm_call_cancelled_while_it_runs_is_interrupted_and_sees_its_context() {
    let d = tempdir("callopts-wasm-ctx");
    let path = wasm_plugin(
        &d,
        "cancel_loop",
        json!({"limits": {"timeout_ms": 60_000, "fuel_per_call": 1_000_000_000_000u64}}),
    );
    let (host, started, seen) = logging_host();
    let slot = host.load(&path).unwrap();
    let spin = slot.resolve("spin").unwrap();
    let token = CancelToken::new();
    let t2 = token.clone();
    let call = std::thread::spawn(move || {
        let mut out = Vec::new();
        let o = CallOptions {
            cancel: Some(&t2),
            tenant: Some("tenant-7"),
            traceparent: Some(TRACEPARENT),
            user_context: 0x5eed as *mut std::ffi::c_void,
            ..CallOptions::default()
        };
        slot.call_with(spin, b"", &mut out, &o).map(|()| out)
    });
    // The guest logged "started" from inside the call: it is running now.
    while !started.load(Ordering::SeqCst) {
        std::thread::yield_now();
    }
    token.cancel();
    let e = call.join().unwrap().unwrap_err();
    assert_eq!(e.status(), KEEL_ERR_CANCELLED, "{e}");
    assert!(e.message().contains("interrupted"), "{e}");
    assert_eq!(
        *seen.lock(),
        vec![(Some("tenant-7".to_owned()), Some(TRACEPARENT.to_owned()), 0x5eed)],
        "the log sink ran inside the call's context"
    );
    // Outside the call no context is current.
    assert!(ctx::with_current(|c| c.is_none()));
    let slot = host.get("cancel_loop").unwrap();
    let mut out = Vec::new();
    slot.call(slot.resolve("ok").unwrap(), b"", &mut out).unwrap();
    assert_eq!(out, b"ok");
}

#[test]
fn a_cancel_never_reaches_the_next_call_on_the_same_instance() {
    let d = tempdir("callopts-wasm-next");
    let path = wasm_plugin(
        &d,
        "cancel_loop",
        json!({"limits": {"timeout_ms": 60_000, "fuel_per_call": 1_000_000_000_000u64}}),
    );
    let (host, started, _) = logging_host();
    let slot = host.load(&path).unwrap();
    let (spin, count) = (slot.resolve("spin").unwrap(), slot.resolve("count").unwrap());
    for _ in 0..25 {
        started.store(false, Ordering::SeqCst);
        let token = CancelToken::new();
        let (t2, s2) = (token.clone(), slot.clone());
        let call = std::thread::spawn(move || {
            let o = CallOptions {
                cancel: Some(&t2),
                ..CallOptions::default()
            };
            s2.call_with(spin, b"", &mut Vec::new(), &o)
        });
        while !started.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        token.cancel();
        assert_eq!(call.join().unwrap().unwrap_err().status(), KEEL_ERR_CANCELLED);
        // Right after: calls with a live token, with other options and plain ones all finish
        // (the serial instance is the fresh one that replaced the cancelled one).
        let live = CancelToken::new();
        let o = CallOptions {
            cancel: Some(&live),
            deadline: Some(Duration::from_secs(30)),
            ..CallOptions::default()
        };
        let mut out = Vec::new();
        slot.call_with(count, &[20], &mut out, &o).unwrap();
        assert_eq!(out, b"done");
        slot.call(count, &[20], &mut out).unwrap();
        assert_eq!(out, b"done");
    }
}

#[test]
fn a_token_cancelled_before_the_call_means_the_call_is_not_run() {
    let d = tempdir("callopts-precancel");
    let host = TestHost::new();
    let native = host.load_plugin(&native_plugin(&d)).unwrap();
    let wasm = host.load_plugin(&wasm_plugin(&d, "cancel_loop", json!({}))).unwrap();
    let token = Token::new();
    token.cancel();
    token.cancel(); // idempotent
    let mut o = opts();
    o.cancel = token.0;
    let out = Buf::new();
    // `finish` would succeed with "done" if it ran (it returns success once cancelled).
    assert_eq!(
        call_with(native.0, native.function("finish").unwrap(), b"", Some(&o), &out),
        KEEL_ERR_CANCELLED
    );
    assert!(last_error().contains("not run"), "{}", last_error());
    assert!(out.bytes().is_empty());
    assert_eq!(
        call_with(wasm.0, wasm.function("ok").unwrap(), b"", Some(&o), &out),
        KEEL_ERR_CANCELLED
    );
    // Both keep serving.
    assert_eq!(ok_call(&native, "state"), "0");
    assert_eq!(ok_call(&wasm, "ok"), "ok");
}

// ---- native: cancelled() -------------------------------------------------------------

fn wait_until_running(p: &capi::Plugin) {
    while ok_call(p, "running") != "1" {
        std::thread::yield_now();
    }
}

#[test]
fn a_native_plugin_that_polls_cancelled_stops() {
    let d = tempdir("callopts-native");
    let host = TestHost::new();
    let p = host.load_plugin(&native_plugin(&d)).unwrap();
    assert_eq!(ok_call(&p, "has"), "yes", "the host API table has the cancelled entry");
    assert_eq!(ok_call(&p, "state"), "0", "outside a call with options");

    // Fails after the cancel: KEEL_ERR_CANCELLED.
    let token = Token::new();
    let call = call_in_thread(p.0, p.function("wait").unwrap(), token.0, 0);
    wait_until_running(&p);
    token.cancel();
    let (s, msg, out) = call.join().unwrap();
    assert_eq!(s, KEEL_ERR_CANCELLED, "{msg}");
    assert!(msg.contains("after its call was cancelled"), "{msg}");
    assert!(out.is_empty());

    // Succeeds after the cancel: the work was done, the result is delivered.
    let token = Token::new();
    let call = call_in_thread(p.0, p.function("finish").unwrap(), token.0, 0);
    wait_until_running(&p);
    token.cancel();
    let (s, msg, out) = call.join().unwrap();
    assert_eq!((s, out.as_slice()), (KEEL_OK, &b"done"[..]), "{msg}");

    // A call with options but no token: cancelled() is 0.
    let mut o = opts();
    let tenant = cstr("t1");
    o.tenant = tenant.as_ptr();
    let buf = Buf::new();
    assert_eq!(
        call_with(p.0, p.function("state").unwrap(), b"", Some(&o), &buf),
        KEEL_OK
    );
    assert_eq!(buf.text(), "0");
}

#[test]
fn a_native_plugin_sees_its_per_call_deadline_through_cancelled() {
    let d = tempdir("callopts-native-deadline");
    let host = TestHost::new();
    let p = host.load_plugin(&native_plugin(&d)).unwrap();
    let token = Token::new();
    // `wait` fails once cancelled() says stop: past the deadline that is KEEL_ERR_DEADLINE.
    let (s, msg, _) = call_in_thread(p.0, p.function("wait").unwrap(), token.0, 20_000)
        .join()
        .unwrap();
    assert_eq!(s, KEEL_ERR_DEADLINE, "{msg}");
    assert!(msg.contains("deadline"), "{msg}");
    // `finish` succeeds once past it: delivered as a success.
    let (s, msg, out) = call_in_thread(p.0, p.function("finish").unwrap(), ptr::null_mut(), 20_000)
        .join()
        .unwrap();
    assert_eq!((s, out.as_slice()), (KEEL_OK, &b"done"[..]), "{msg}");
    assert!(!token.is_cancelled());
}

#[test]
fn a_token_freed_while_its_call_runs_is_safe() {
    let d = tempdir("callopts-free");
    let host = TestHost::new();
    let p = host.load_plugin(&native_plugin(&d)).unwrap();
    let server = Token::new();
    // A second handle to the same token, for the thread that will cancel it.
    let mut other = ptr::null_mut();
    assert_eq!(keel_cancel_token_clone(server.0, &mut other), KEEL_OK);
    let other = Token(other);
    let call = call_in_thread(p.0, p.function("wait").unwrap(), server.0, 0);
    wait_until_running(&p);
    // The server drops its handle while the call runs: the call holds its own reference.
    drop(server);
    other.cancel();
    let (s, msg, _) = call.join().unwrap();
    assert_eq!(s, KEEL_ERR_CANCELLED, "{msg}");

    // Many threads calling with one token while it is cancelled and freed.
    let t = Token::new();
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let mut c = ptr::null_mut();
            assert_eq!(keel_cancel_token_clone(t.0, &mut c), KEEL_OK);
            let (pp, f, cc) = (SendPtr(p.0 as usize), p.function("state").unwrap(), SendPtr(c as usize));
            std::thread::spawn(move || {
                let out = Buf::new();
                let mut o = opts();
                o.cancel = cc.0 as *const keel_cancel_token;
                let mut statuses = Vec::new();
                for _ in 0..200 {
                    statuses.push(call_with(pp.0 as *const keel_plugin, f, b"", Some(&o), &out));
                }
                assert_eq!(keel_cancel_token_free(cc.0 as *mut keel_cancel_token), KEEL_OK);
                statuses
            })
        })
        .collect();
    t.cancel();
    drop(t);
    for c in calls {
        for s in c.join().unwrap() {
            assert!(s == KEEL_OK || s == KEEL_ERR_CANCELLED, "{s:?}");
        }
    }
}

// ---- per-call deadline and fuel --------------------------------------------------------

#[test]
fn a_per_call_deadline_shorter_than_the_manifests_stops_a_wasm_loop_and_a_longer_one_is_capped() {
    let d = tempdir("callopts-deadline");
    let host = TestHost::new();
    let long = host
        .load_plugin(&wasm_plugin(
            &d,
            "cancel_loop",
            json!({"limits": {"timeout_ms": 60_000, "fuel_per_call": 1_000_000_000_000u64}}),
        ))
        .unwrap();
    let out = Buf::new();
    let mut o = opts();
    o.deadline_us = 30_000;
    assert_eq!(
        call_with(long.0, long.function("spin").unwrap(), b"", Some(&o), &out),
        KEEL_ERR_DEADLINE
    );
    assert!(last_error().contains("deadline of 30 ms"), "{}", last_error());
    assert_eq!(ok_call(&long, "ok"), "ok");

    // A per-call deadline of an hour on a plugin whose manifest allows 40 ms: capped.
    let d2 = tempdir("callopts-deadline-cap");
    let short = host
        .load_plugin(&wasm_plugin(
            &d2,
            "cancel_loop_short",
            json!({"limits": {"timeout_ms": 40, "fuel_per_call": 1_000_000_000_000u64}}),
        ))
        .unwrap();
    o.deadline_us = 3_600_000_000;
    assert_eq!(
        call_with(short.0, short.function("spin").unwrap(), b"", Some(&o), &out),
        KEEL_ERR_DEADLINE
    );
    assert!(last_error().contains("deadline of 40 ms"), "{}", last_error());
    assert_eq!(ok_call(&short, "ok"), "ok");
}

#[test]
fn a_per_call_fuel_budget_is_enforced_and_capped() {
    let d = tempdir("callopts-fuel");
    let host = TestHost::new();
    let p = host
        .load_plugin(&wasm_plugin(
            &d,
            "cancel_loop",
            json!({"limits": {"fuel_per_call": 1_000_000_000u64}}),
        ))
        .unwrap();
    let count = p.function("count").unwrap();
    let out = Buf::new();
    // 100 000 iterations fit the manifest's budget...
    assert_eq!(capi::call(p.0, count, &[100], &out), KEEL_OK, "{}", last_error());
    assert_eq!(out.text(), "done");
    // ...not a per-call budget of 1000.
    let mut o = opts();
    o.fuel = 1000;
    assert_eq!(call_with(p.0, count, &[100], Some(&o), &out), KEEL_ERR_CPU_BUDGET);
    assert!(last_error().contains("1000 fuel"), "{}", last_error());
    assert_eq!(call_with(p.0, count, &[100], None, &out), KEEL_OK);

    // A per-call budget above the manifest's is capped at the manifest's.
    let d2 = tempdir("callopts-fuel-cap");
    let small = host
        .load_plugin(&wasm_plugin(
            &d2,
            "cancel_loop_small",
            json!({"limits": {"fuel_per_call": 5000}}),
        ))
        .unwrap();
    o.fuel = u64::MAX;
    assert_eq!(
        call_with(small.0, small.function("count").unwrap(), &[100], Some(&o), &out),
        KEEL_ERR_CPU_BUDGET
    );
    assert!(last_error().contains("5000 fuel"), "{}", last_error());
    assert_eq!(ok_call(&small, "ok"), "ok");
}

// ---- bad options -----------------------------------------------------------------------

#[test]
fn bad_call_options_get_clear_codes_and_the_plugin_keeps_serving() {
    let d = tempdir("callopts-bad");
    let host = TestHost::new();
    let p = host.load_plugin(&native_plugin(&d)).unwrap();
    let f = p.function("state").unwrap();
    let out = Buf::new();
    let check = |o: &keel_call_options, want: keel_status, words: &str| {
        assert_eq!(call_with(p.0, f, b"", Some(o), &out), want, "{}", last_error());
        assert!(last_error().contains(words), "{words:?} not in {:?}", last_error());
        assert!(out.bytes().is_empty());
    };
    for size in [0u32, 8, 40] {
        let mut o = opts();
        o.struct_size = size;
        check(&o, KEEL_ERR_INVALID_ARGUMENT, "struct_size");
    }
    let mut o = opts();
    o.struct_size = 5000;
    check(&o, KEEL_ERR_INVALID_ARGUMENT, "struct_size");
    let mut o = opts();
    o.flags = 1;
    check(&o, KEEL_ERR_INVALID_ARGUMENT, "flags");
    for bad in [
        "",
        "not a traceparent",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
    ] {
        let tp = cstr(bad);
        let mut o = opts();
        o.traceparent = tp.as_ptr();
        check(&o, KEEL_ERR_INVALID_ARGUMENT, "traceparent");
    }
    let bad_utf8 = std::ffi::CString::new(vec![b'a', 0xff, b'b']).unwrap();
    let mut o = opts();
    o.tenant = bad_utf8.as_ptr();
    check(&o, KEEL_ERR_INVALID_UTF8, "opts->tenant");
    let mut o = opts();
    o.traceparent = bad_utf8.as_ptr();
    check(&o, KEEL_ERR_INVALID_UTF8, "opts->traceparent");
    let long = cstr(&"t".repeat(257));
    let mut o = opts();
    o.tenant = long.as_ptr();
    check(&o, KEEL_ERR_INVALID_ARGUMENT, "tenant");
    let ctl = cstr("a\nb");
    let mut o = opts();
    o.tenant = ctl.as_ptr();
    check(&o, KEEL_ERR_INVALID_ARGUMENT, "control character");

    // NULL pieces.
    let o = opts();
    assert_eq!(
        keel_call_with(ptr::null(), f, ptr::null(), 0, &o, out.0),
        KEEL_ERR_NULL_POINTER
    );
    assert_eq!(keel_call_with(p.0, f, ptr::null(), 3, &o, out.0), KEEL_ERR_NULL_POINTER);
    assert_eq!(
        keel_call_with(p.0, f, ptr::null(), 0, &o, ptr::null_mut()),
        KEEL_ERR_NULL_POINTER
    );
    assert_eq!(keel_cancel_token_new(ptr::null_mut()), KEEL_ERR_NULL_POINTER);
    assert_eq!(keel_cancel_token_cancel(ptr::null()), KEEL_ERR_NULL_POINTER);
    let mut b = false;
    assert_eq!(
        keel_cancel_token_is_cancelled(ptr::null(), &mut b),
        KEEL_ERR_NULL_POINTER
    );
    let t = Token::new();
    assert_eq!(
        keel_cancel_token_is_cancelled(t.0, ptr::null_mut()),
        KEEL_ERR_NULL_POINTER
    );
    assert_eq!(
        keel_cancel_token_clone(ptr::null(), &mut ptr::null_mut()),
        KEEL_ERR_NULL_POINTER
    );
    assert_eq!(keel_cancel_token_clone(t.0, ptr::null_mut()), KEEL_ERR_NULL_POINTER);
    assert_eq!(keel_cancel_token_free(ptr::null_mut()), KEEL_OK);

    // Good options: NULL opts, all-zero opts, a valid traceparent and tenant, and a larger
    // struct from a newer caller whose unknown bytes are zero (set bytes are refused).
    assert_eq!(call_with(p.0, f, b"", None, &out), KEEL_OK);
    assert_eq!(out.text(), "0");
    assert_eq!(call_with(p.0, f, b"", Some(&opts()), &out), KEEL_OK);
    let (tp, tenant) = (cstr(TRACEPARENT), cstr("tenant-1"));
    let mut o = opts();
    o.traceparent = tp.as_ptr();
    o.tenant = tenant.as_ptr();
    o.cancel = t.0;
    assert_eq!(call_with(p.0, f, b"", Some(&o), &out), KEEL_OK, "{}", last_error());
    assert_eq!(out.text(), "0");
    #[repr(C)]
    struct Newer {
        base: keel_call_options,
        more: [u64; 2],
    }
    let mut n = Newer { base: o, more: [0; 2] };
    n.base.struct_size = std::mem::size_of::<Newer>() as u32;
    let np = &n as *const Newer as *const keel_call_options;
    assert_eq!(
        keel_call_with(p.0, f, ptr::null(), 0, np, out.0),
        KEEL_OK,
        "{}",
        last_error()
    );
    n.more[1] = 7;
    let np = &n as *const Newer as *const keel_call_options;
    assert_eq!(
        keel_call_with(p.0, f, ptr::null(), 0, np, out.0),
        KEEL_ERR_INVALID_ARGUMENT
    );
    assert!(last_error().contains("newer version"), "{}", last_error());
    // The plugin still serves plain calls.
    assert_eq!(ok_call(&p, "has"), "yes");
}

#[test]
fn keel_err_cancelled_has_its_name_and_code() {
    assert_eq!(KEEL_ERR_CANCELLED as u32, 804);
    assert_eq!(keel_status::from_u32(804), Some(KEEL_ERR_CANCELLED));
    assert_eq!(KEEL_ERR_CANCELLED.name(), "KEEL_ERR_CANCELLED");
}
