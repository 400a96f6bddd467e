//! Asymmetric memory barriers: a hot path pays only a compiler fence, a rare path pays for
//! both with `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`, which makes every running thread
//! of the process execute a full memory barrier. Where `membarrier` is unavailable at
//! registration both sides use `SeqCst` fences.
//!
//! Pattern: hot side `store A; light(); load B`, rare side `store B; heavy()?; load A`: at
//! least one side sees the other's store — but only if `heavy()` returned `Ok`.
//!
//! ## When `membarrier` fails after registration
//!
//! Once registration succeeded, the hot side may already be running with a compiler fence
//! only. If a later `membarrier` call fails (`ENOMEM` from the kernel's cpumask allocation,
//! or a seccomp filter the application installed after start-up), no fence executed on the
//! rare side alone can restore the guarantee: a thread that passed `light()` before the
//! failure may still have its store in its store buffer, and nothing bounds when it drains.
//! Switching the hot side to fences "from now on" (what this module used to do) does not help
//! the callers already inside. So `heavy()` never pretends: it returns
//! [`BarrierFailed`] and the rare side must act as if the other side's store may be
//! invisible — the generation cell keeps a retired generation (it is freed by a later scan
//! whose barrier succeeds; a leak, never a use-after-free), the WASM watchdog sends no
//! interrupt on that tick and marks the call's instance as to be discarded. The hot side
//! stays as it is: nothing it does becomes unsafe, and every failure is counted
//! ([`failures`]).
//!
//! Under `cfg(loom)` and `cfg(miri)` both sides are `SeqCst` fences (the model of a barrier
//! executed by both sides), and `cfg(test)` can force failures ([`force_failures`]).

#[cfg(not(loom))]
use std::sync::atomic::compiler_fence;
#[cfg(not(loom))]
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
#[cfg(not(any(loom, miri)))]
use std::sync::OnceLock;

#[cfg(loom)]
use loom::sync::atomic::{fence, Ordering};

pub(crate) const MEMBARRIER_CMD_PRIVATE_EXPEDITED: libc::c_long = 1 << 3;
#[cfg(not(any(loom, miri)))]
const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_long = 1 << 4;

/// The rare side could not make every thread execute a barrier: treat whatever the other
/// side wrote as possibly invisible (keep the resource, skip the action) and retry later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarrierFailed;

/// True once the process is registered for private expedited membarrier.
#[cfg(not(loom))]
static ASYMMETRIC: AtomicBool = AtomicBool::new(false);
#[cfg(not(any(loom, miri)))]
static REGISTERED: OnceLock<()> = OnceLock::new();
#[cfg(not(loom))]
static FAILURES: AtomicU64 = AtomicU64::new(0);
/// Test hook: while set, `heavy()` fails as if `membarrier` had failed — on the threads that
/// opted in ([`subject_to_forced_failures`]: the test's own thread and Keel's reclaimer), so
/// that unrelated tests running in parallel are not affected.
#[cfg(all(test, not(loom)))]
static FORCE_FAILURE: AtomicBool = AtomicBool::new(false);
#[cfg(all(test, not(loom)))]
thread_local! {
    static SUBJECT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Register the process for expedited membarrier (idempotent; cheap after the first call).
/// Until it has run, both sides use full fences.
pub fn init() {
    #[cfg(not(any(loom, miri)))]
    REGISTERED.get_or_init(|| {
        // SAFETY: a plain syscall with integer arguments; no memory is passed.
        let ok = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) } == 0;
        ASYMMETRIC.store(ok, Ordering::SeqCst);
    });
}

/// Whether the light side is a compiler fence only.
pub fn is_asymmetric() -> bool {
    #[cfg(not(loom))]
    return ASYMMETRIC.load(Ordering::Relaxed);
    #[cfg(loom)]
    false
}

/// How many times the rare side failed (since process start).
pub fn failures() -> u64 {
    #[cfg(not(loom))]
    return FAILURES.load(Ordering::Relaxed);
    #[cfg(loom)]
    0
}

/// The hot side.
#[inline(always)]
pub fn light() {
    #[cfg(not(loom))]
    if ASYMMETRIC.load(Ordering::Relaxed) {
        compiler_fence(Ordering::SeqCst);
    } else {
        fence(Ordering::SeqCst);
    }
    #[cfg(loom)]
    fence(Ordering::SeqCst);
}

/// The rare side. `Err` means no process-wide barrier is known to have happened: the caller
/// must not rely on having seen the hot side's stores (see the module comment).
pub fn heavy() -> Result<(), BarrierFailed> {
    #[cfg(loom)]
    {
        fence(Ordering::SeqCst);
        Ok(())
    }
    #[cfg(not(loom))]
    {
        #[cfg(test)]
        if FORCE_FAILURE.load(Ordering::SeqCst) && SUBJECT.with(|s| s.get()) {
            FAILURES.fetch_add(1, Ordering::Relaxed);
            return Err(BarrierFailed);
        }
        if ASYMMETRIC.load(Ordering::Relaxed) {
            #[cfg(not(miri))]
            {
                // SAFETY: a plain syscall with integer arguments; no memory is passed.
                let r = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) };
                if r != 0 {
                    // The hot side may be inside its protocol with a compiler fence only:
                    // no fence here can stand in for the IPI. Report, never weaken.
                    FAILURES.fetch_add(1, Ordering::Relaxed);
                    return Err(BarrierFailed);
                }
            }
        }
        // Symmetric mode (both sides fence), or after a successful membarrier (which itself
        // orders this thread too): this fence completes the rare side's half.
        fence(Ordering::SeqCst);
        Ok(())
    }
}

/// While `on`, [`heavy`] fails on the threads subject to it (tests of the failure path).
#[cfg(all(test, not(loom)))]
pub(crate) fn force_failures(on: bool) {
    FORCE_FAILURE.store(on, Ordering::SeqCst);
}

/// Make this thread's [`heavy`] calls subject to [`force_failures`].
#[cfg(all(test, not(loom)))]
pub(crate) fn subject_to_forced_failures() {
    SUBJECT.with(|s| s.set(true));
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn forced_failures_are_reported_and_counted_then_recover() {
        init();
        let _serial = super::test_serial();
        subject_to_forced_failures();
        let before = failures();
        force_failures(true);
        assert_eq!(heavy(), Err(BarrierFailed));
        assert_eq!(heavy(), Err(BarrierFailed));
        force_failures(false);
        assert_eq!(heavy(), Ok(()));
        assert!(failures() >= before + 2);
    }
}

/// Serialises the unit tests that force barrier failures (a process-wide test hook); the
/// registry's tests take it too. It lives here, the lower module, so that test code adds no
/// import from the barrier up to the registry.
#[cfg(all(test, not(loom)))]
pub(crate) fn test_serial() -> parking_lot::MutexGuard<'static, ()> {
    static SERIAL: parking_lot::Mutex<()> = parking_lot::Mutex::new(());
    SERIAL.lock()
}
