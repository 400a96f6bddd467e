//! SIGUSR1 is shared between wasmer's guest interrupts and the embedding application (see
//! src/runtime/wasm/signals.rs). One test in its own binary: signal handlers are per process.

mod wasm_support;

use std::sync::atomic::{AtomicUsize, Ordering};

use keel::error::keel_status::*;
use keel::runtime::wasm::{signals, WasmConfig, WasmRuntime};
use keel::runtime::{HostServices, Instance};
use serde_json::json;
use wasm_support::*;

static APP_SIGNALS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn app_handler(_sig: libc::c_int) {
    APP_SIGNALS.fetch_add(1, Ordering::SeqCst);
}

fn call(p: &dyn Instance, f: &str) -> keel::Result<Vec<u8>> {
    let i = p.functions().iter().position(|n| n == f).unwrap() as u32;
    let mut out = Vec::new();
    p.call(i, b"", &mut out).map(|_| out)
}

#[test]
fn application_sigusr1_reaches_the_application_and_deadlines_keep_working() {
    // The application installs its SIGUSR1 handler before Keel starts.
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = app_handler as *const () as usize;
        libc::sigemptyset(&mut act.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGUSR1, &act, std::ptr::null_mut()), 0);
    }
    let rt = WasmRuntime::new(WasmConfig::default()).unwrap();
    assert!(signals::routing_active());

    let m = manifest(
        "loop",
        json!({"instances": "pooled", "limits": {"timeout_ms": 20, "fuel_per_call": 1_000_000_000_000u64}}),
    );
    let p = rt
        .load(&artifact(wat_fixture("loop")), &context(&m, HostServices::default()))
        .unwrap();
    assert_eq!(call(&p, "ok").unwrap(), b"ok");

    // Without Keel's router, wasmer's handler would abort the process here.
    unsafe { libc::raise(libc::SIGUSR1) };
    assert_eq!(APP_SIGNALS.load(Ordering::SeqCst), 1);

    // Interrupts still reach wasmer (and only wasmer), from several threads at once.
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
    assert_eq!(APP_SIGNALS.load(Ordering::SeqCst), 1);

    // A signal sent to another thread of the process goes to the application too.
    let t = std::thread::spawn(|| {
        while APP_SIGNALS.load(Ordering::SeqCst) < 2 {
            std::thread::yield_now();
        }
    });
    unsafe { libc::pthread_kill(std::os::unix::thread::JoinHandleExt::as_pthread_t(&t), libc::SIGUSR1) };
    t.join().unwrap();
    assert_eq!(APP_SIGNALS.load(Ordering::SeqCst), 2);
}
