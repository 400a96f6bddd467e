//! Calls with options: cost and cancel latency.
//!
//! (1) `keel_call_with` with no options set vs `keel_call` (target: at most +5 ns per call).
//!     The native echo fixture through the C ABI; A = `keel_call`, B = `keel_call_with` with
//!     a zero-initialised `keel_call_options` (only `struct_size` set), C = `keel_call_with`
//!     with `opts == NULL`. Interleaved rounds in one process (the order alternates per
//!     round); each round times `CALLS` calls of each and records B/A, B−A (ns per call),
//!     and the same for C. Printed: min and median of the per-round ratios and differences.
//!     For orientation only, D = options that take the options path (a tenant and a
//!     traceparent set) are reported against A the same way.
//!
//! (2) Cancel latency: a WASM call looping forever (tests/fixtures/wasm/cancel_loop.wat,
//!     `spin`, which logs "started" before it loops) is cancelled from another thread once
//!     the log sink has seen "started"; the latency is from just before `cancel()` until the
//!     calling thread has the call's result (`KEEL_ERR_CANCELLED`). Printed: min, median and
//!     max over `KEEL_BENCH_CANCEL_ROUNDS` rounds (default 200).
//!
//! `KEEL_BENCH_ROUNDS` and `KEEL_BENCH_CALLS` override (1)'s defaults.
//! Run: `cargo bench --bench call_options`.

mod common;
#[path = "../tests/wasm_support/mod.rs"]
mod wasm_support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Buffer, Loaded};
use keel::ffi::call::{keel_call_options, keel_call_with};
use keel::keel_status::{KEEL_ERR_CANCELLED, KEEL_OK};
use keel::services::call::{CallOptions, CancelToken};
use keel::services::HostServices;
use serde_json::json;

const INPUT: &[u8] = b"0123456789abcdef";
const TRACEPARENT: &std::ffi::CStr = c"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn zero_options() -> keel_call_options {
    keel_call_options {
        struct_size: std::mem::size_of::<keel_call_options>() as u32,
        flags: 0,
        deadline_us: 0,
        fuel: 0,
        cancel: std::ptr::null(),
        user_context: std::ptr::null_mut(),
        tenant: std::ptr::null(),
        traceparent: std::ptr::null(),
    }
}

/// ns per call of `calls` calls of `f`.
fn time(calls: u64, f: &mut impl FnMut()) -> f64 {
    let start = Instant::now();
    for _ in 0..calls {
        f();
    }
    start.elapsed().as_nanos() as f64 / calls as f64
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

fn report(what: &str, a: &[f64], b: &[f64]) {
    let ratios = sorted(a.iter().zip(b).map(|(a, b)| b / a).collect());
    let diffs = sorted(a.iter().zip(b).map(|(a, b)| b - a).collect());
    let (sa, sb) = (sorted(a.to_vec()), sorted(b.to_vec()));
    println!(
        "KEEL-CALLOPTS-FIGURES {what}: B/A min={:.3} median={:.3}; B-A min={:+.2} ns median={:+.2} ns over {} rounds (median A={:.1} ns/call, B={:.1} ns/call)",
        ratios[0],
        ratios[ratios.len() / 2],
        diffs[0],
        diffs[diffs.len() / 2],
        ratios.len(),
        sa[sa.len() / 2],
        sb[sb.len() / 2]
    );
}

fn overhead() {
    let (_so, manifest) = common::echo_fixture("bench-call-options");
    let keel = Loaded::new(&manifest, c"echo");
    let buf = Buffer::new();
    let n_rounds = env("KEEL_BENCH_ROUNDS", 21);
    let calls = env("KEEL_BENCH_CALLS", 1_000_000);
    let zero = zero_options();
    let tenant = c"tenant-7";
    let mut ctx = zero_options();
    ctx.tenant = tenant.as_ptr();
    ctx.traceparent = TRACEPARENT.as_ptr();

    let mut a = || {
        std::hint::black_box(keel_call(&keel, &buf));
    };
    let with = |o: *const keel_call_options| {
        let (keel, buf) = (&keel, &buf);
        move || {
            std::hint::black_box(keel_call_with(
                keel.plugin,
                keel.function,
                INPUT.as_ptr(),
                INPUT.len(),
                std::hint::black_box(o),
                buf.0,
            ));
        }
    };
    let mut b = with(&zero);
    let mut c = with(std::ptr::null());
    let mut d = with(&ctx);
    assert_eq!(keel_call(&keel, &buf), KEEL_OK);
    for o in [&zero as *const _, std::ptr::null(), &ctx] {
        assert_eq!(
            keel_call_with(keel.plugin, keel.function, INPUT.as_ptr(), INPUT.len(), o, buf.0),
            KEEL_OK
        );
    }
    // Warm-up (not recorded).
    for f in [&mut a as &mut dyn FnMut(), &mut b, &mut c, &mut d] {
        let mut f = f;
        time(calls / 4 + 1, &mut f);
    }
    println!(
        "call_options bench: {n_rounds} interleaved rounds x {calls} calls, {} cores available",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    let (mut ta, mut tb, mut tc, mut td) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for r in 0..n_rounds {
        if r % 2 == 0 {
            ta.push(time(calls, &mut a));
            tb.push(time(calls, &mut b));
            tc.push(time(calls, &mut c));
            td.push(time(calls, &mut d));
        } else {
            td.push(time(calls, &mut d));
            tc.push(time(calls, &mut c));
            tb.push(time(calls, &mut b));
            ta.push(time(calls, &mut a));
        }
    }
    report("native echo, A=keel_call, B=keel_call_with(zeroed options)", &ta, &tb);
    report("native echo, A=keel_call, B=keel_call_with(opts=NULL)", &ta, &tc);
    report(
        "native echo, A=keel_call, B=keel_call_with(tenant+traceparent: the options path)",
        &ta,
        &td,
    );
}

fn keel_call(keel: &Loaded, buf: &Buffer) -> keel::keel_status {
    keel.call(INPUT, buf.0)
}

fn cancel_latency() {
    let rounds = env("KEEL_BENCH_CANCEL_ROUNDS", 200);
    let dir = std::env::temp_dir().join(format!("keel-bench-cancel-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let wasm = wasm_support::wat_fixture("cancel_loop");
    std::fs::write(dir.join("cancel_loop.wasm"), &wasm).unwrap();
    let manifest = dir.join("cancel_loop.json");
    std::fs::write(
        &manifest,
        json!({
            "manifest_version": 1, "name": "cancel_loop", "version": "1.0.0", "runtime": "wasm",
            "binary": {"wasm32": "cancel_loop.wasm"}, "sha256": keel::trust::digest::sha256_hex(&wasm),
            "capabilities": ["log"],
            "limits": {"timeout_ms": 60_000, "fuel_per_call": 1_000_000_000_000u64},
        })
        .to_string(),
    )
    .unwrap();
    let started = Arc::new(AtomicBool::new(false));
    let s = started.clone();
    let host = keel::Host::with_services(HostServices::default().with_log(Arc::new(move |_, _, msg| {
        if msg == "started" {
            s.store(true, Ordering::SeqCst);
        }
    })));
    host.trust().set_require_signature(false).unwrap();
    let slot = host.load(&manifest).unwrap();
    let spin = slot.resolve("spin").unwrap();
    let ok = slot.resolve("ok").unwrap();
    let mut latencies = Vec::new();
    let mut out = Vec::new();
    for _ in 0..rounds {
        // A fresh instance is created by this call (the cancelled one was discarded), so the
        // next spin starts without instantiation in its latency.
        slot.call(ok, b"", &mut out).unwrap();
        started.store(false, Ordering::SeqCst);
        let token = CancelToken::new();
        let (t2, slot2) = (token.clone(), slot.clone());
        let caller = std::thread::spawn(move || {
            let mut out = Vec::new();
            let o = CallOptions {
                cancel: Some(&t2),
                ..CallOptions::default()
            };
            let r = slot2.call_with(spin, b"", &mut out, &o);
            (r, Instant::now())
        });
        while !started.load(Ordering::SeqCst) {
            std::hint::spin_loop();
        }
        // Let the guest get into its loop (the log call returns first).
        std::thread::sleep(Duration::from_micros(200));
        let t0 = Instant::now();
        token.cancel();
        let (r, t1) = caller.join().unwrap();
        assert_eq!(r.unwrap_err().status(), KEEL_ERR_CANCELLED);
        latencies.push(t1.duration_since(t0));
    }
    latencies.sort();
    let us = |d: Duration| d.as_nanos() as f64 / 1000.0;
    println!(
        "KEEL-CALLOPTS-FIGURES cancel latency (WASM loop, cancel() until the caller has KEEL_ERR_CANCELLED): min={:.1} us median={:.1} us max={:.1} us over {} rounds",
        us(latencies[0]),
        us(latencies[latencies.len() / 2]),
        us(latencies[latencies.len() - 1]),
        latencies.len()
    );
    drop(host);
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() {
    overhead();
    cancel_latency();
}
