//! Whole-host soak through the C ABI (issue 13), run by `tests/soak.sh` (plain, under
//! AddressSanitizer and under ThreadSanitizer); `#[ignore]`d so a normal `cargo test` skips it.
//!
//! Two caller threads make `KEEL_SOAK_CALLS` calls each (default 1 000 000) to the `echo`
//! function of a signed native plugin while a reloader thread makes `KEEL_SOAK_RELOADS` hot
//! reloads (default 1 000), alternating two signed versions (`v1`/`v2`, different binaries),
//! and a churn thread loops unload/load of a second signed plugin (`churn`) that the callers
//! also look up and call now and then. Every echo must return its input; every reload must
//! succeed; the callers must see both versions; lookups of the churned plugin may only find
//! it or report it unloaded. Resident set size is sampled after a warm-up and at the end
//! (after everything is unloaded); growth must stay within `KEEL_SOAK_RSS_GROWTH_MB`
//! (default 64 MiB). The figures are printed on one `soak:` line.
//!
//! `soak_prepare_fixtures` writes the same signed fixtures into `KEEL_SOAK_DIR` for the C
//! stress host (`tests/c/soak_host.c`, run under valgrind by `tests/soak.sh`).

mod common;

use std::path::{Path, PathBuf};
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use ed25519_dalek::SigningKey;
use serde_json::json;

use common::capi::{cstr, last_error, Buf};
use keel::ffi::host::*;
use keel::ffi::trust::keel_host_set_trust_store_bytes;
use keel::keel_status::*;
use keel::trust::{self, store, KeelSignature};

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v.parse().unwrap_or_else(|_| panic!("{name}={v} is not a number")),
        Err(_) => default,
    }
}

/// Resident set size of this process in bytes (`/proc/self/statm`).
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    pages * page
}

/// The signed fixture set: `echo.json` (+ `.sig`) is the live manifest of plugin `echo`,
/// switched between `echo.v1.json` and `echo.v2.json` (each with its `.sig`); `churn.json`
/// is plugin `churn`; `trust.json` trusts the one signing key.
struct Fixture {
    dir: PathBuf,
    trust_store: Vec<u8>,
}

fn sign(key: &SigningKey, manifest: &Path) {
    let sig = KeelSignature::sign(key, &std::fs::read(manifest).unwrap(), "soak fixture").unwrap();
    trust::write_signature_file(manifest, &sig).unwrap();
}

fn prepare(dir: &Path) -> Fixture {
    std::fs::create_dir_all(dir).unwrap();
    let key = SigningKey::from_bytes(&[0x5a; 32]);
    let v1 = common::build_native("echo", &["ECHO_TAG=\"v1\""], dir, "libecho_v1.so");
    let v2 = common::build_native("echo", &["ECHO_TAG=\"v2\""], dir, "libecho_v2.so");
    for (version, so) in [("1.0.0", &v1), ("2.0.0", &v2)] {
        let m = common::write_manifest(dir, "echo", version, so, json!({}));
        let tag = if version == "1.0.0" { "v1" } else { "v2" };
        let named = dir.join(format!("echo.{tag}.json"));
        std::fs::rename(&m, &named).unwrap();
        sign(&key, &named);
    }
    let churn = common::write_manifest(dir, "churn", "1.0.0", &v1, json!({}));
    sign(&key, &churn);
    switch(dir, "v1");
    let entry = store::key_entry(&key.verifying_key(), "soak", &[]).unwrap();
    let trust_store =
        serde_json::to_vec_pretty(&json!({"keel_trust_store": 1, "version": 1, "keys": [entry]})).unwrap();
    std::fs::write(dir.join("trust.json"), &trust_store).unwrap();
    Fixture {
        dir: dir.to_path_buf(),
        trust_store,
    }
}

/// Make `echo.json` (and its `.sig`) version `tag`: each file replaced by a rename, the
/// signature first (a reader never sees a half-written file; only the reloader switches).
fn switch(dir: &Path, tag: &str) {
    for (from, to) in [
        (format!("echo.{tag}.json.sig"), "echo.json.sig"),
        (format!("echo.{tag}.json"), "echo.json"),
    ] {
        let tmp = dir.join(format!(".{to}.tmp"));
        std::fs::copy(dir.join(from), &tmp).unwrap();
        std::fs::rename(&tmp, dir.join(to)).unwrap();
    }
}

/// Raw pointers the threads share: the host and the echo handle are thread-safe by contract.
#[derive(Clone, Copy)]
struct Shared(*mut keel_host, *mut keel_plugin);
// SAFETY: `keel_host` and `keel_plugin` are documented thread-safe; both outlive the threads
// (joined before they are freed).
unsafe impl Send for Shared {}
// SAFETY: as above.
unsafe impl Sync for Shared {}

fn call_bytes(p: *const keel_plugin, f: keel_function, input: &[u8], out: &Buf) -> Result<Vec<u8>, String> {
    match common::capi::call(p, f, input, out) {
        KEEL_OK => Ok(out.bytes()),
        s => Err(format!("{s:?}: {}", last_error())),
    }
}

#[test]
#[ignore = "soak: run by tests/soak.sh (sized by KEEL_SOAK_CALLS / KEEL_SOAK_RELOADS)"]
fn soak_calls_reloads_and_unload_load_churn() {
    let calls = env_u64("KEEL_SOAK_CALLS", 1_000_000);
    let reloads = env_u64("KEEL_SOAK_RELOADS", 1_000);
    let rss_bound = env_u64("KEEL_SOAK_RSS_GROWTH_MB", 64) << 20;
    let fx = prepare(&common::tempdir("soak"));

    let mut host = ptr::null_mut();
    assert_eq!(keel_host_new(&mut host), KEEL_OK);
    // Signatures stay required (the default): every load and reload verifies one.
    assert_eq!(
        keel_host_set_trust_store_bytes(host, fx.trust_store.as_ptr(), fx.trust_store.len()),
        KEEL_OK
    );
    let echo_manifest = cstr(fx.dir.join("echo.json").to_str().unwrap());
    let churn_manifest = cstr(fx.dir.join("churn.json").to_str().unwrap());
    let mut echo = ptr::null_mut();
    assert_eq!(
        keel_host_load(host, echo_manifest.as_ptr(), &mut echo),
        KEEL_OK,
        "{}",
        last_error()
    );
    assert_eq!(
        keel_host_load(host, churn_manifest.as_ptr(), ptr::null_mut()),
        KEEL_OK,
        "{}",
        last_error()
    );
    let f_echo = common::capi::function(echo, "echo").unwrap();
    let f_tag = common::capi::function(echo, "tag").unwrap();

    // Warm-up: buffers, thread-locals, allocator arenas, a few reloads and churn cycles.
    let echo_name = cstr("echo");
    let churn_name = cstr("churn");
    {
        let out = Buf::new();
        for i in 0..2_000u32 {
            assert_eq!(
                call_bytes(echo, f_echo, &i.to_le_bytes(), &out).unwrap(),
                i.to_le_bytes()
            );
        }
        for tag in ["v2", "v1", "v2", "v1"] {
            switch(&fx.dir, tag);
            assert_eq!(
                keel_host_reload(host, echo_name.as_ptr(), ptr::null_mut()),
                KEEL_OK,
                "{}",
                last_error()
            );
            assert_eq!(keel_host_unload(host, churn_name.as_ptr()), KEEL_OK);
            assert_eq!(keel_host_load(host, churn_manifest.as_ptr(), ptr::null_mut()), KEEL_OK);
        }
    }
    let rss_before = rss_bytes();
    let shared = Shared(host, echo);
    let done_calls = Arc::new(AtomicU64::new(0));
    let callers_done = Arc::new(AtomicU64::new(0));
    let reloads_done = Arc::new(AtomicBool::new(false));
    let started = Instant::now();

    let callers: Vec<_> = (0..2u8)
        .map(|t| {
            let (done_calls, callers_done, reloads_done) =
                (done_calls.clone(), callers_done.clone(), reloads_done.clone());
            std::thread::spawn(move || {
                let s = shared;
                let out = Buf::new();
                let churn = cstr("churn");
                let (mut n, mut v1, mut v2, mut churn_ok, mut churn_gone) = (0u64, 0u64, 0u64, 0u64, 0u64);
                let mut input = [t; 64];
                // At least `calls` calls, and on until the reloads are over.
                while n < calls || !reloads_done.load(Ordering::Acquire) {
                    input[..8].copy_from_slice(&n.to_le_bytes());
                    match call_bytes(s.1, f_echo, &input, &out) {
                        Ok(got) => assert_eq!(got, input, "echo returned other bytes"),
                        Err(e) => panic!("call {n} of thread {t} failed: {e}"),
                    }
                    n += 1;
                    if n % 1024 == 0 {
                        done_calls.fetch_add(1024, Ordering::Relaxed);
                        match call_bytes(s.1, f_tag, b"", &out).unwrap().as_slice() {
                            b"v1" => v1 += 1,
                            b"v2" => v2 += 1,
                            other => panic!("tag {other:?}"),
                        }
                    }
                    if n % 4096 == 0 {
                        // The churned plugin: found and answering, or gone (never anything else).
                        let mut p = ptr::null_mut();
                        match keel_plugin_get(s.0, churn.as_ptr(), &mut p) {
                            KEEL_OK => {
                                let h = common::capi::Plugin(p);
                                match h.function("echo") {
                                    Ok(f) => match common::capi::call(p, f, b"churn", &out) {
                                        KEEL_OK => {
                                            assert_eq!(out.bytes(), b"churn");
                                            churn_ok += 1
                                        }
                                        KEEL_ERR_PLUGIN_UNLOADED => churn_gone += 1,
                                        st => panic!("call of churn: {st:?}: {}", last_error()),
                                    },
                                    Err(KEEL_ERR_PLUGIN_UNLOADED) => churn_gone += 1,
                                    Err(st) => panic!("resolving churn.echo: {st:?}: {}", last_error()),
                                }
                            }
                            KEEL_ERR_PLUGIN_NOT_FOUND => churn_gone += 1,
                            st => panic!("keel_plugin_get(churn): {st:?}: {}", last_error()),
                        }
                    }
                }
                callers_done.fetch_add(1, Ordering::Release);
                (n, v1, v2, churn_ok, churn_gone)
            })
        })
        .collect();

    let reloader = {
        let (done_calls, reloads_done, dir) = (done_calls.clone(), reloads_done.clone(), fx.dir.clone());
        std::thread::spawn(move || {
            let s = shared;
            let name = cstr("echo");
            let mut last = 0u64;
            for i in 0..reloads {
                // Spread the reloads over the calls (no waiting once the callers are past them).
                let due = (i * 2 * calls) / reloads.max(1);
                while done_calls.load(Ordering::Relaxed) < due && done_calls.load(Ordering::Relaxed) < 2 * calls {
                    std::thread::yield_now();
                }
                switch(&dir, if i % 2 == 0 { "v2" } else { "v1" });
                let mut g = 0;
                let st = keel_host_reload(s.0, name.as_ptr(), &mut g);
                assert_eq!(st, KEEL_OK, "reload {i}: {}", last_error());
                assert!(g > last, "generation went from {last} to {g}");
                last = g;
            }
            reloads_done.store(true, Ordering::Release);
            last
        })
    };

    let churner = {
        let callers_done = callers_done.clone();
        let manifest = churn_manifest.clone();
        std::thread::spawn(move || {
            let s = shared;
            let name = cstr("churn");
            let mut cycles = 0u64;
            while callers_done.load(Ordering::Acquire) < 2 {
                assert_eq!(keel_host_unload(s.0, name.as_ptr()), KEEL_OK, "{}", last_error());
                assert_eq!(
                    keel_host_load(s.0, manifest.as_ptr(), ptr::null_mut()),
                    KEEL_OK,
                    "{}",
                    last_error()
                );
                cycles += 1;
            }
            cycles
        })
    };

    let last_generation = reloader.join().expect("reloader");
    let per_thread: Vec<_> = callers.into_iter().map(|h| h.join().expect("caller")).collect();
    let cycles = churner.join().expect("churner");
    let elapsed = started.elapsed();

    let total: u64 = per_thread.iter().map(|r| r.0).sum();
    let (v1, v2): (u64, u64) = per_thread.iter().fold((0, 0), |a, r| (a.0 + r.1, a.1 + r.2));
    let (churn_ok, churn_gone): (u64, u64) = per_thread.iter().fold((0, 0), |a, r| (a.0 + r.3, a.1 + r.4));
    let mut g = 0;
    assert_eq!(keel_plugin_generation(echo, &mut g), KEEL_OK);
    assert_eq!(g, last_generation);
    // 1 (load) + 4 (warm-up) + the soak's reloads.
    assert_eq!(g, 5 + reloads, "generation after {reloads} reloads");
    assert!(per_thread.iter().all(|r| r.0 >= calls));
    if reloads >= 2 && calls >= 1 << 16 {
        assert!(v1 > 0 && v2 > 0, "callers saw v1 {v1} times and v2 {v2} times");
    }

    assert_eq!(keel_plugin_free(echo), KEEL_OK);
    assert_eq!(keel_host_unload(host, echo_name.as_ptr()), KEEL_OK);
    assert_eq!(keel_host_unload(host, churn_name.as_ptr()), KEEL_OK);
    let rss_after = rss_bytes();
    assert_eq!(keel_host_free(host), KEEL_OK);
    let growth = rss_after.saturating_sub(rss_before);
    println!(
        "soak: {total} calls by 2 threads (>= {calls} each), {reloads} reloads (generation {g}), {cycles} unload/load \
         cycles, churn lookups ok {churn_ok} / gone {churn_gone}, tags seen v1 {v1} v2 {v2}, {:.1} s, RSS before \
         {} KiB after {} KiB (growth {} KiB, bound {} KiB)",
        elapsed.as_secs_f64(),
        rss_before >> 10,
        rss_after >> 10,
        growth >> 10,
        rss_bound >> 10
    );
    assert!(
        growth <= rss_bound,
        "RSS grew by {} KiB, more than the {} KiB bound",
        growth >> 10,
        rss_bound >> 10
    );
}

/// The signed fixtures of the soak in `KEEL_SOAK_DIR`, for the C stress host.
#[test]
#[ignore = "run by tests/soak.sh: writes the C stress host's fixtures to KEEL_SOAK_DIR"]
fn soak_prepare_fixtures() {
    let dir = PathBuf::from(std::env::var("KEEL_SOAK_DIR").expect("KEEL_SOAK_DIR"));
    let fx = prepare(&dir);
    println!("soak fixtures in {}", fx.dir.display());
}
