//! How a running guest is stopped (src/runtime/wasm/interrupt.rs): a flag the watchdog
//! raises and the guest's own code checks at every function entry and loop head. No signal
//! is sent, so Keel leaves every signal disposition to the embedding server. Signal
//! dispositions are per process, so the tests that look at them run in a child process of
//! their own: this test binary started again on just that test, with `KEEL_INTERRUPT_CHILD`
//! naming it.

mod wasm_support;

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use keel::error::keel_status::*;
use keel::runtime::wasm::{WasmConfig, WasmRuntime};
use keel::runtime::{HostServices, Instance};
use serde_json::json;
use wasm_support::*;

const CHILD: &str = "KEEL_INTERRUPT_CHILD";

/// Run `body` in a child process (this binary, only the test `name`) and require it to pass;
/// in the child, run `body`.
fn passes_in_child(name: &str, body: fn()) {
    if std::env::var(CHILD).as_deref() == Ok(name) {
        body();
        return;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, name)
        .output()
        .expect("run the test binary as a child");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "child {name} failed ({}):\n{text}", out.status);
    assert!(text.contains("1 passed"), "child {name} ran no test:\n{text}");
}

fn call(p: &dyn Instance, f: &str) -> keel::Result<Vec<u8>> {
    let i = p.functions().iter().position(|n| n == f).unwrap() as u32;
    let mut out = Vec::new();
    p.call(i, b"", &mut out).map(|_| out)
}

/// The disposition of `sig` now.
fn disposition(sig: libc::c_int) -> (usize, libc::c_int) {
    // SAFETY: a query into a zeroed struct owned by this frame.
    unsafe {
        let mut cur: libc::sigaction = std::mem::zeroed();
        assert_eq!(libc::sigaction(sig, std::ptr::null(), &mut cur), 0);
        (cur.sa_sigaction, cur.sa_flags)
    }
}

static APP_SIGNALS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn counting_handler(_sig: libc::c_int) {
    APP_SIGNALS.fetch_add(1, Ordering::SeqCst);
}

const TIMED: fn() -> serde_json::Value =
    || json!({"instances": "pooled", "limits": {"timeout_ms": 20, "fuel_per_call": 1_000_000_000_000u64}});

/// SIGUSR1 and SIGUSR2 belong to the server: Keel installs no handler for them and sends
/// none, while deadlines stop guests from several threads at once. (Keel used wasmer's
/// SIGUSR1 interrupts before; an application's SIGUSR1 handler had to be routed around.)
#[test]
fn deadlines_send_no_signal_and_leave_the_applications_handlers_alone() {
    passes_in_child(
        "deadlines_send_no_signal_and_leave_the_applications_handlers_alone",
        || {
            // SAFETY: installing a plain handler into a zeroed, then fully set, struct.
            unsafe {
                let mut act: libc::sigaction = std::mem::zeroed();
                act.sa_sigaction = counting_handler as *const () as usize;
                libc::sigemptyset(&mut act.sa_mask);
                assert_eq!(libc::sigaction(libc::SIGUSR1, &act, std::ptr::null_mut()), 0);
            }
            let before = [disposition(libc::SIGUSR1), disposition(libc::SIGUSR2)];
            let rt = WasmRuntime::new(WasmConfig::default()).unwrap();
            let m = manifest("loop", TIMED());
            let p = rt
                .load(&artifact(wat_fixture("loop")), &context(&m, HostServices::default()))
                .unwrap();
            std::thread::scope(|s| {
                for _ in 0..3 {
                    s.spawn(|| {
                        for _ in 0..3 {
                            assert_eq!(call(&p, "spin").unwrap_err().status(), KEEL_ERR_DEADLINE);
                            assert_eq!(call(&p, "ok").unwrap(), b"ok");
                        }
                    });
                }
            });
            assert_eq!(
                [disposition(libc::SIGUSR1), disposition(libc::SIGUSR2)],
                before,
                "Keel changed a disposition of the application's"
            );
            assert_eq!(APP_SIGNALS.load(Ordering::SeqCst), 0, "Keel sent a signal");
            // SAFETY: raise has no preconditions; the application's handler is installed.
            unsafe { libc::raise(libc::SIGUSR1) };
            assert_eq!(APP_SIGNALS.load(Ordering::SeqCst), 1);
        },
    );
}

/// With SIGUSR1 at its default action (terminate the process), deadlines are harmless.
#[test]
fn deadlines_work_with_sigusr1_at_its_default_action() {
    passes_in_child("deadlines_work_with_sigusr1_at_its_default_action", || {
        assert_eq!(disposition(libc::SIGUSR1).0, libc::SIG_DFL);
        let rt = WasmRuntime::new(WasmConfig::default()).unwrap();
        let m = manifest("loop", TIMED());
        let p = rt
            .load(&artifact(wat_fixture("loop")), &context(&m, HostServices::default()))
            .unwrap();
        for _ in 0..5 {
            assert_eq!(call(&p, "spin").unwrap_err().status(), KEEL_ERR_DEADLINE);
        }
        assert_eq!(call(&p, "ok").unwrap(), b"ok");
        assert_eq!(disposition(libc::SIGUSR1).0, libc::SIG_DFL);
    });
}

/// A loop that stores nothing: the flag must be read again on every iteration (Cranelift
/// could otherwise reuse the value it loaded at the function's entry; see interrupt.rs).
/// Without metering (whose fuel counter is itself a store in every loop) that is the stop
/// checks' own store's job.
#[test]
fn a_loop_without_memory_traffic_is_stopped() {
    for metering in [false, true] {
        let rt = WasmRuntime::new(WasmConfig {
            metering,
            ..WasmConfig::default()
        })
        .unwrap();
        let m = manifest("loop", TIMED());
        let p = rt
            .load(&artifact(wat_fixture("loop")), &context(&m, HostServices::default()))
            .unwrap();
        let e = call(&p, "spin").unwrap_err();
        assert_eq!(e.status(), KEEL_ERR_DEADLINE, "metering {metering}: {e}");
        assert!(e.to_string().contains("deadline of 20 ms"), "{e}");
        assert_eq!(call(&p, "ok").unwrap(), b"ok");
    }
}

/// Code without a single loop that runs for hours (2^60 calls, 60 frames deep) is stopped
/// at a function entry.
#[test]
fn recursion_without_loops_is_stopped() {
    for metering in [true, false] {
        let rt = WasmRuntime::new(WasmConfig {
            metering,
            ..WasmConfig::default()
        })
        .unwrap();
        let m = manifest("recurse", TIMED());
        let p = rt
            .load(&artifact(wat_fixture("recurse")), &context(&m, HostServices::default()))
            .unwrap();
        let e = call(&p, "fib").unwrap_err();
        assert_eq!(e.status(), KEEL_ERR_DEADLINE, "metering {metering}: {e}");
        assert_eq!(call(&p, "ok").unwrap(), b"ok");
    }
}

/// The names the stop checks export are Keel's: a module exporting one is refused at
/// compile time with a clear reason, not silently given a second meaning.
#[test]
fn a_module_exporting_the_reserved_stop_global_is_refused() {
    let wasm = wat::parse_str(
        r#"(module (global (export "__keel_stop") (mut i32) (i32.const 0))
                   (memory (export "memory") 1)
                   (func (export "keel_abi_version") (result i32) (i32.const 1)))"#,
    )
    .unwrap();
    let rt = WasmRuntime::new(WasmConfig::default()).unwrap();
    let m = manifest("reserved", json!({}));
    let Err(e) = rt.load(&artifact(wasm), &context(&m, HostServices::default())) else {
        panic!("a module exporting __keel_stop must not load");
    };
    assert!(e.to_string().contains("__keel_stop"), "{e}");
}
