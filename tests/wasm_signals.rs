//! SIGUSR1 is shared between wasmer's guest interrupts and the embedding application (see
//! src/runtime/wasm/signals.rs). Signal dispositions are per process, so every test runs its
//! body in a child process of its own: the test binary started again on just that test, with
//! `KEEL_SIGNALS_CHILD` naming it.

mod wasm_support;

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use keel::error::keel_status::*;
use keel::runtime::wasm::{signals, WasmConfig, WasmRuntime};
use keel::runtime::{HostServices, Instance};
use serde_json::json;
use wasm_support::*;

const CHILD: &str = "KEEL_SIGNALS_CHILD";

/// Run `body` in a child process (this binary, only the test `name`). Returns the child's
/// exit status and output; in the child, runs `body` and returns `None`.
fn in_child(name: &str, body: fn()) -> Option<(std::process::ExitStatus, String)> {
    if std::env::var(CHILD).as_deref() == Ok(name) {
        body();
        return None;
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
    Some((out.status, text))
}

/// [`in_child`] for a body that must pass.
fn passes_in_child(name: &str, body: fn()) {
    if let Some((status, text)) = in_child(name, body) {
        assert!(status.success(), "child {name} failed ({status}):\n{text}");
        assert!(text.contains("1 passed"), "child {name} ran no test:\n{text}");
    }
}

/// The application installs `handler` for SIGUSR1 (before Keel starts).
fn install_app(handler: usize, flags: libc::c_int, mask: &[libc::c_int]) {
    // SAFETY: sigaction/sigset calls on a zeroed, then fully set, struct owned by this frame.
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = handler;
        act.sa_flags = flags;
        libc::sigemptyset(&mut act.sa_mask);
        for &s in mask {
            libc::sigaddset(&mut act.sa_mask, s);
        }
        assert_eq!(libc::sigaction(libc::SIGUSR1, &act, std::ptr::null_mut()), 0);
    }
}

/// Whether `sig` is blocked on the calling thread now.
fn blocked(sig: libc::c_int) -> bool {
    // SAFETY: a mask query into a set owned by this frame.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_SETMASK, std::ptr::null(), &mut set);
        libc::sigismember(&set, sig) == 1
    }
}

fn set_blocked(sig: libc::c_int, block: bool) {
    // SAFETY: a mask change with a set owned by this frame.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        let how = if block { libc::SIG_BLOCK } else { libc::SIG_UNBLOCK };
        assert_eq!(libc::pthread_sigmask(how, &set, std::ptr::null_mut()), 0);
    }
}

fn call(p: &dyn Instance, f: &str) -> keel::Result<Vec<u8>> {
    let i = p.functions().iter().position(|n| n == f).unwrap() as u32;
    let mut out = Vec::new();
    p.call(i, b"", &mut out).map(|_| out)
}

static APP_SIGNALS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn counting_handler(_sig: libc::c_int) {
    APP_SIGNALS.fetch_add(1, Ordering::SeqCst);
}

#[test]
fn application_sigusr1_reaches_the_application_and_deadlines_keep_working() {
    passes_in_child(
        "application_sigusr1_reaches_the_application_and_deadlines_keep_working",
        || {
            install_app(counting_handler as *const () as usize, 0, &[]);
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
            // SAFETY: raise has no preconditions; a handler for SIGUSR1 is installed.
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
            let st = signals::stats();
            assert!(st.interrupts >= 9, "{st:?}");
            assert_eq!(st.forwarded, 1, "{st:?}");
            assert!(!st.handler_overridden && st.handler_overrides == 0, "{st:?}");

            // A signal sent to another thread of the process goes to the application too.
            let t = std::thread::spawn(|| {
                while APP_SIGNALS.load(Ordering::SeqCst) < 2 {
                    std::thread::yield_now();
                }
            });
            // SAFETY: `t` is a live, joinable thread of this process.
            unsafe { libc::pthread_kill(std::os::unix::thread::JoinHandleExt::as_pthread_t(&t), libc::SIGUSR1) };
            t.join().unwrap();
            assert_eq!(APP_SIGNALS.load(Ordering::SeqCst), 2);
        },
    );
}

/// What the application's SA_SIGINFO handler saw.
static SAW_INFO: AtomicBool = AtomicBool::new(false);
static SAW_USR2_BLOCKED: AtomicBool = AtomicBool::new(false);
static SAW_USR1_BLOCKED: AtomicBool = AtomicBool::new(false);
static SIGINFO_CALLS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn siginfo_handler(sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: `info` is the kernel's siginfo for this delivery (SA_SIGINFO), checked non-null.
    let ok = !info.is_null() && unsafe { (*info).si_signo } == sig;
    SAW_INFO.store(ok, Ordering::SeqCst);
    SAW_USR2_BLOCKED.store(blocked(libc::SIGUSR2), Ordering::SeqCst);
    SAW_USR1_BLOCKED.store(blocked(libc::SIGUSR1), Ordering::SeqCst);
    SIGINFO_CALLS.fetch_add(1, Ordering::SeqCst);
}

extern "C" fn plain_masked_handler(_sig: libc::c_int) {
    SAW_USR2_BLOCKED.store(blocked(libc::SIGUSR2), Ordering::SeqCst);
    SAW_USR1_BLOCKED.store(blocked(libc::SIGUSR1), Ordering::SeqCst);
    APP_SIGNALS.fetch_add(1, Ordering::SeqCst);
}

/// Keel's own SIGUSR1 disposition as installed now.
fn installed() -> libc::sigaction {
    // SAFETY: a query into a zeroed struct owned by this frame.
    unsafe {
        let mut cur: libc::sigaction = std::mem::zeroed();
        assert_eq!(libc::sigaction(libc::SIGUSR1, std::ptr::null(), &mut cur), 0);
        cur
    }
}

#[test]
fn a_forwarded_siginfo_handler_runs_with_the_applications_mask_and_flags() {
    passes_in_child(
        "a_forwarded_siginfo_handler_runs_with_the_applications_mask_and_flags",
        || {
            install_app(
                siginfo_handler as *const () as usize,
                libc::SA_SIGINFO | libc::SA_NODEFER | libc::SA_RESTART,
                &[libc::SIGUSR2],
            );
            let _rt = WasmRuntime::new(WasmConfig::default()).unwrap();
            assert!(signals::routing_active());
            let keel = installed();
            assert_ne!(
                keel.sa_sigaction, siginfo_handler as *const () as usize,
                "Keel's handler is in front"
            );
            assert_ne!(
                keel.sa_flags & libc::SA_RESTART,
                0,
                "the application's SA_RESTART is kept"
            );

            assert!(!blocked(libc::SIGUSR2));
            // SAFETY: raise has no preconditions; a handler for SIGUSR1 is installed.
            unsafe { libc::raise(libc::SIGUSR1) };
            assert_eq!(SIGINFO_CALLS.load(Ordering::SeqCst), 1);
            assert!(
                SAW_INFO.load(Ordering::SeqCst),
                "the three-argument form with the kernel's siginfo"
            );
            assert!(
                SAW_USR2_BLOCKED.load(Ordering::SeqCst),
                "sa_mask applied while the handler runs"
            );
            assert!(
                !SAW_USR1_BLOCKED.load(Ordering::SeqCst),
                "SA_NODEFER: SIGUSR1 not blocked"
            );
            assert!(
                !blocked(libc::SIGUSR2) && !blocked(libc::SIGUSR1),
                "the mask is restored"
            );
            assert_eq!(signals::stats().forwarded, 1);
        },
    );
}

#[test]
fn a_forwarded_plain_handler_runs_with_its_mask_and_the_signal_blocked() {
    passes_in_child(
        "a_forwarded_plain_handler_runs_with_its_mask_and_the_signal_blocked",
        || {
            install_app(plain_masked_handler as *const () as usize, 0, &[libc::SIGUSR2]);
            let _rt = WasmRuntime::new(WasmConfig::default()).unwrap();
            assert!(signals::routing_active());
            assert_eq!(
                installed().sa_flags & libc::SA_RESTART,
                0,
                "no SA_RESTART the application did not ask for"
            );
            // SAFETY: raise has no preconditions; a handler for SIGUSR1 is installed.
            unsafe { libc::raise(libc::SIGUSR1) };
            assert_eq!(APP_SIGNALS.load(Ordering::SeqCst), 1);
            assert!(SAW_USR2_BLOCKED.load(Ordering::SeqCst), "sa_mask applied");
            assert!(
                SAW_USR1_BLOCKED.load(Ordering::SeqCst),
                "no SA_NODEFER: SIGUSR1 blocked"
            );
            assert!(!blocked(libc::SIGUSR2), "the mask is restored");
        },
    );
}

#[test]
fn sa_resethand_gives_the_default_action_back_after_one_signal() {
    let name = "sa_resethand_gives_the_default_action_back_after_one_signal";
    let Some((status, text)) = in_child(name, || {
        install_app(counting_handler as *const () as usize, libc::SA_RESETHAND, &[]);
        let _rt = WasmRuntime::new(WasmConfig::default()).unwrap();
        assert!(signals::routing_active());
        // SAFETY: raise has no preconditions; a handler for SIGUSR1 is installed.
        unsafe { libc::raise(libc::SIGUSR1) };
        assert_eq!(APP_SIGNALS.load(Ordering::SeqCst), 1);
        println!("first signal handled");
        // The application's disposition is the default action now: this terminates.
        // SAFETY: raise has no preconditions (this one is meant to terminate the child).
        unsafe { libc::raise(libc::SIGUSR1) };
        println!("still alive after the second signal");
    }) else {
        return;
    };
    use std::os::unix::process::ExitStatusExt;
    assert!(text.contains("first signal handled"), "{text}");
    assert!(!text.contains("still alive"), "{text}");
    assert_eq!(status.signal(), Some(libc::SIGUSR1), "{status}: {text}");
}

#[test]
fn a_late_interrupt_never_reaches_the_default_action() {
    passes_in_child("a_late_interrupt_never_reaches_the_default_action", || {
        // The application leaves SIGUSR1 at its default action (terminate).
        let _rt = WasmRuntime::new(WasmConfig::default()).unwrap();
        assert!(signals::routing_active());
        let me = signals::current_thread();

        // The watchdog's sequence, with SIGUSR1 blocked on the target thread: the interrupt
        // is expected and sent (as wasmer sends it, pthread_kill), but cannot be delivered
        // before the call has left the guest and `settle` has cleared the entry.
        set_blocked(libc::SIGUSR1, true);
        assert!(signals::expect(me));
        // SAFETY: signalling the calling thread, which has SIGUSR1 blocked.
        assert_eq!(unsafe { libc::pthread_kill(libc::pthread_self(), libc::SIGUSR1) }, 0);
        signals::settle(me);
        // Delivered now: late. Without Keel swallowing it, the process would end here.
        set_blocked(libc::SIGUSR1, false);
        let st = signals::stats();
        assert_eq!(st.late_interrupts, 1, "{st:?}");
        assert_eq!(st.interrupts, 0, "{st:?}");
        assert_eq!(st.forwarded, 0, "{st:?}");
    });
}

#[test]
fn a_handler_installed_over_keels_is_detected_and_counted() {
    passes_in_child("a_handler_installed_over_keels_is_detected_and_counted", || {
        let _rt = WasmRuntime::new(WasmConfig::default()).unwrap();
        assert!(signals::routing_active());
        assert!(signals::check_handler());
        let keel = installed();
        assert_eq!(signals::stats().handler_overrides, 0);

        // Someone installs a SIGUSR1 handler after Keel.
        install_app(counting_handler as *const () as usize, 0, &[]);
        // Seen when the watchdog is about to interrupt a guest ...
        let t = 0x5eed_0042;
        assert!(signals::expect(t));
        signals::settle(t);
        let st = signals::stats();
        assert!(st.handler_overridden, "{st:?}");
        assert_eq!(st.handler_overrides, 1, "one override, counted once: {st:?}");
        assert!(!signals::check_handler());
        assert_eq!(signals::stats().handler_overrides, 1);

        // Keel's handler back in place, then replaced again: a second override.
        // SAFETY: reinstalling the disposition read from sigaction above.
        unsafe { assert_eq!(libc::sigaction(libc::SIGUSR1, &keel, std::ptr::null_mut()), 0) };
        assert!(signals::check_handler());
        assert!(!signals::stats().handler_overridden);
        install_app(counting_handler as *const () as usize, 0, &[]);
        assert_eq!(signals::stats().handler_overrides, 2);

        // The same counters through the C ABI.
        let mut c = keel::ffi::wasm::keel_wasm_signal_stats::default();
        assert_eq!(keel::ffi::wasm::keel_wasm_signal_counters(&mut c), KEEL_OK);
        assert!(c.routing_active && c.handler_overridden, "{c:?}");
        assert_eq!(c.handler_overrides, 2, "{c:?}");
        assert_eq!(
            keel::ffi::wasm::keel_wasm_signal_counters(std::ptr::null_mut()),
            KEEL_ERR_NULL_POINTER
        );
    });
}
