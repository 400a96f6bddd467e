//! SIGUSR1 routing between wasmer's interrupts and the embedding application.
//!
//! wasmer's `experimental-host-interrupt` interrupts a running guest by sending SIGUSR1 to its
//! thread, and installs a process-wide SIGUSR1 handler that never passes a signal on to the
//! handler installed before it. Worse, that handler asserts that an interrupt was requested
//! for the receiving thread: any other SIGUSR1 — a database server's own use of the signal,
//! `kill -USR1` from an operator's log rotation — aborts the process.
//!
//! So Keel puts its own handler in front of wasmer's. Before the watchdog interrupts a call it
//! records the target thread in a small lock-free set ([`expect`]); the handler hands a
//! signal to wasmer only if its thread is in the set (and removes it), otherwise to whatever
//! handler the application had installed before Keel (or the default action). A call that was
//! interrupted makes a system call on its way out ([`settle`]) — pending signals are delivered
//! on return to user space, so its signal has been handled by then — and clears the entries
//! left for its thread (wasmer sends nothing when the guest had already finished, or when an
//! earlier interrupt to the same thread is still being handled).
//!
//! The application's handler is called as the kernel would have called it ([`forward`]):
//! - `SA_SIGINFO` picks the three-argument or the one-argument form;
//! - its `sa_mask` is blocked for the duration of its handler, and the signal itself too
//!   unless it asked for `SA_NODEFER`; the thread's mask is restored when it returns;
//! - `SA_RESETHAND`: the first signal forwarded resets the application's disposition to the
//!   default action (Keel's handler stays installed, as wasmer needs it), so a later
//!   application signal terminates the process as it would have without Keel;
//! - `SA_RESTART` cannot be applied per signal: whether an interrupted system call restarts is
//!   decided by the kernel from the flags of the handler actually installed, which is Keel's.
//!   Keel therefore installs its handler with `SA_RESTART` exactly when the application's had
//!   it when Keel started. It then applies to wasmer's interrupts too: they target guest
//!   code, which makes no system calls, and Keel's host functions do not block, so that only
//!   matters for a system call some other code of the interrupted thread is blocked in (it
//!   restarts instead of failing with `EINTR`). The flag cannot follow changes the
//!   application makes after Keel started (such a `sigaction` replaces Keel's handler; see
//!   below).
//!
//! A *late* interrupt (the signal reaches a thread after [`settle`] cleared its entry: the
//! thread had SIGUSR1 blocked when the watchdog fired, or wasmer's signal was still on its
//! way) is not the application's. When the application's disposition is the default action
//! (which would terminate the process), a SIGUSR1 that the process sent to itself
//! (`SI_TKILL` from our own pid, as wasmer's `pthread_kill`) to a thread whose entry
//! [`settle`] had to clear is swallowed and counted ([`SignalStats::late_interrupts`]);
//! it never reaches the default action. A signal from another process (`kill -USR1`) still
//! does. With an application handler installed a late interrupt is forwarded to it (it sees
//! one extra SIGUSR1) rather than risk swallowing one of its own.
//!
//! A handler installed over Keel's (someone calls `sigaction(SIGUSR1)` after Keel) replaces
//! Keel's and wasmer's and stops deadlines from working. Keel looks (`sigaction` query) each
//! time the watchdog is about to interrupt a guest and whenever [`stats`] is read; each time
//! it finds its handler replaced after having seen it in place, it counts one override
//! ([`SignalStats::handler_overrides`]).
//!
//! Limits: an application SIGUSR1 that arrives at a thread at the very moment that thread's
//! guest is being interrupted is taken for the interrupt (lost for the application). Keel
//! must create its first WASM runtime before anything else in the process uses wasmer;
//! otherwise it cannot tell the application's handler apart and leaves wasmer's in place
//! (routing inactive).

use std::cell::Cell;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Once;

/// Threads with an interrupt in flight (0 = free entry).
const SLOTS: usize = 256;
static PENDING: [AtomicU64; SLOTS] = [const { AtomicU64::new(0) }; SLOTS];
/// Threads whose entry [`settle`] had to clear: a late interrupt may still reach them.
static LATE: [AtomicU64; SLOTS] = [const { AtomicU64::new(0) }; SLOTS];
/// `LATE` was full once: from then on any self-sent SIGUSR1 under the default action counts
/// as late (never terminate the process for a signal that may be Keel's).
static LATE_OVERFLOW: AtomicBool = AtomicBool::new(false);

static ACTIVE: AtomicBool = AtomicBool::new(false);
static INSTALL: Once = Once::new();
// Written once inside INSTALL, before Keel's handler is installed; only read afterwards.
static mut APP: MaybeUninit<libc::sigaction> = MaybeUninit::uninit();
static mut WASMER: MaybeUninit<libc::sigaction> = MaybeUninit::uninit();
/// The application's handler had `SA_RESETHAND` and has run once: its disposition is now
/// the default action.
static APP_RESET: AtomicBool = AtomicBool::new(false);

static INTERRUPTS: AtomicU64 = AtomicU64::new(0);
static FORWARDED: AtomicU64 = AtomicU64::new(0);
static LATE_SWALLOWED: AtomicU64 = AtomicU64::new(0);
static OVERRIDES: AtomicU64 = AtomicU64::new(0);
static OVERRIDDEN: AtomicBool = AtomicBool::new(false);

/// Counters of the SIGUSR1 routing (process-wide; all zero while routing is inactive).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SignalStats {
    /// Keel's handler was installed in front of wasmer's.
    pub routing_active: bool,
    /// Signals handed to wasmer as guest interrupts.
    pub interrupts: u64,
    /// Signals handed to the application's disposition (handler, ignore or default).
    pub forwarded: u64,
    /// Late interrupts swallowed instead of reaching the default action.
    pub late_interrupts: u64,
    /// Times Keel found its handler replaced by another one (after having seen it in place).
    pub handler_overrides: u64,
    /// Keel's handler was not installed at the last look.
    pub handler_overridden: bool,
}

/// The routing counters; looks whether Keel's handler is still installed first.
pub fn stats() -> SignalStats {
    let active = routing_active();
    if active {
        check_handler();
    }
    SignalStats {
        routing_active: active,
        interrupts: INTERRUPTS.load(Ordering::Relaxed),
        forwarded: FORWARDED.load(Ordering::Relaxed),
        late_interrupts: LATE_SWALLOWED.load(Ordering::Relaxed),
        handler_overrides: OVERRIDES.load(Ordering::Relaxed),
        handler_overridden: OVERRIDDEN.load(Ordering::Relaxed),
    }
}

/// Whether Keel's handler is the installed SIGUSR1 handler (false while routing is
/// inactive). Counts an override when it finds another handler after having seen its own.
pub fn check_handler() -> bool {
    if !routing_active() {
        return false;
    }
    // SAFETY: an all-zero sigaction is a valid value to be overwritten by the query.
    let mut cur: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: a query (no new action) into a valid, writable struct.
    if unsafe { libc::sigaction(libc::SIGUSR1, std::ptr::null(), &mut cur) } != 0 {
        return true;
    }
    let ours = cur.sa_sigaction == handler as *const () as usize;
    if ours {
        OVERRIDDEN.store(false, Ordering::Relaxed);
    } else if !OVERRIDDEN.swap(true, Ordering::Relaxed) {
        OVERRIDES.fetch_add(1, Ordering::Relaxed);
    }
    ours
}

/// This thread's id as the routing set stores it (never 0).
#[inline]
pub fn current_thread() -> u64 {
    thread_local! {
        static ID: Cell<u64> = const { Cell::new(0) };
    }
    ID.with(|c| {
        let v = c.get();
        if v != 0 {
            return v;
        }
        // SAFETY: pthread_self has no preconditions.
        let v = (unsafe { libc::pthread_self() } as u64).max(1);
        c.set(v);
        v
    })
}

/// Whether Keel's handler is in front of wasmer's.
pub fn routing_active() -> bool {
    ACTIVE.load(Ordering::Relaxed)
}

/// Install Keel's SIGUSR1 handler (once per process; initialises wasmer's trap handlers).
pub fn install() -> bool {
    INSTALL.call_once(|| {
        // SAFETY: sigaction with valid pointers (queries into zeroed structs, then one install
        // of a fully initialised struct); the statics are written before the handler that
        // reads them is installed, and never again; init_traps is wasmer's own, idempotent
        // initialisation.
        unsafe {
            let mut app: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(libc::SIGUSR1, std::ptr::null(), &mut app) != 0 {
                return;
            }
            wasmer::sys::vm::init_traps();
            let mut wasmer: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(libc::SIGUSR1, std::ptr::null(), &mut wasmer) != 0 {
                return;
            }
            if wasmer.sa_sigaction == app.sa_sigaction {
                // wasmer was initialised before Keel got here: the application's handler is
                // hidden inside wasmer. Leave things as they are.
                return;
            }
            (*std::ptr::addr_of_mut!(APP)).write(app);
            (*std::ptr::addr_of_mut!(WASMER)).write(wasmer);
            let mut ours: libc::sigaction = std::mem::zeroed();
            // SA_RESTART is decided per installed handler: keep the application's choice.
            ours.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | (app.sa_flags & libc::SA_RESTART);
            ours.sa_sigaction = handler as *const () as usize;
            libc::sigemptyset(&mut ours.sa_mask);
            if libc::sigaction(libc::SIGUSR1, &ours, std::ptr::null_mut()) == 0 {
                ACTIVE.store(true, Ordering::SeqCst);
            }
        }
    });
    routing_active()
}

/// The watchdog is about to interrupt a guest running on `thread`. False if the set is full
/// (then it must not interrupt now; it retries on its next tick). Also looks whether Keel's
/// handler is still installed (see [`check_handler`]).
pub fn expect(thread: u64) -> bool {
    check_handler();
    PENDING.iter().any(|s| {
        s.compare_exchange(0, thread, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    })
}

/// Called on the interrupted thread after its call left the guest: let any signal still on
/// its way be delivered, then drop this thread's remaining entries. An entry left here means
/// the signal may still come (SIGUSR1 blocked on the thread, or not yet sent): the thread is
/// marked so that such a late interrupt never reaches the default action.
pub fn settle(thread: u64) {
    // Pending signals are delivered on the return from any system call.
    // SAFETY: getppid has no preconditions.
    unsafe { libc::getppid() };
    let mut cleared = false;
    for s in PENDING.iter() {
        cleared |= s
            .compare_exchange(thread, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok();
    }
    if cleared && !LATE.iter().any(|s| s.load(Ordering::Relaxed) == thread) {
        let marked = LATE.iter().any(|s| {
            s.compare_exchange(0, thread, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        });
        if !marked {
            LATE_OVERFLOW.store(true, Ordering::Relaxed);
        }
    }
}

fn take(set: &[AtomicU64; SLOTS], thread: u64) -> bool {
    set.iter().any(|s| {
        s.load(Ordering::Relaxed) == thread
            && s.compare_exchange(thread, 0, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
    })
}

extern "C" fn handler(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // Async-signal-safe throughout: atomics, pthread_self, getpid, pthread_sigmask,
    // sigaction, raise, and the saved handlers.
    // SAFETY: pthread_self has no preconditions.
    let me = (unsafe { libc::pthread_self() } as u64).max(1);
    if take(&PENDING, me) {
        INTERRUPTS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: WASMER was initialised before this handler was installed and is never
        // written again; it holds wasmer's SA_SIGINFO handler, installed with an empty mask
        // and without SA_NODEFER, so the mask Keel's handler runs with is the one it expects.
        // It gets the arguments the kernel gave us (it rewrites `ctx` to stop the guest).
        unsafe { invoke((*std::ptr::addr_of!(WASMER)).assume_init_ref(), sig, info, ctx) };
        return;
    }
    // SAFETY: APP was initialised before this handler was installed and is never written
    // again.
    let app = unsafe { (*std::ptr::addr_of!(APP)).assume_init_ref() };
    let default = APP_RESET.load(Ordering::Acquire) || app.sa_sigaction == libc::SIG_DFL;
    // SAFETY: `info` is the kernel's siginfo for this delivery (SA_SIGINFO), or NULL.
    if default && unsafe { sent_by_this_process(info) } && (take(&LATE, me) || LATE_OVERFLOW.load(Ordering::Relaxed)) {
        LATE_SWALLOWED.fetch_add(1, Ordering::Relaxed);
        return;
    }
    FORWARDED.fetch_add(1, Ordering::Relaxed);
    if default {
        // SAFETY: restoring the default action and re-raising; see `terminate_by_default`.
        unsafe { terminate_by_default(sig) };
        return;
    }
    if app.sa_flags & libc::SA_RESETHAND != 0 {
        // The kernel resets the disposition on entry to the handler; so does Keel.
        APP_RESET.store(true, Ordering::Release);
    }
    // SAFETY: the application's handler, called as the kernel would have called it.
    unsafe { forward(app, sig, info, ctx) }
}

/// Whether the signal was sent by this process to one of its threads (`tgkill`, as
/// `pthread_kill` and `raise` do).
///
/// # Safety
/// `info` is NULL or the siginfo the kernel passed to the handler.
unsafe fn sent_by_this_process(info: *const libc::siginfo_t) -> bool {
    // SAFETY: caller contract.
    let Some(info) = (unsafe { info.as_ref() }) else {
        return false;
    };
    // SAFETY: for SI_TKILL the kernel fills the kill fields, so si_pid is initialised;
    // getpid has no preconditions.
    info.si_code == libc::SI_TKILL && unsafe { info.si_pid() == libc::getpid() }
}

/// SIGUSR1's default action: terminate the process.
///
/// # Safety
/// Called from the signal handler for `sig`.
unsafe fn terminate_by_default(sig: libc::c_int) {
    // Restore the default action and re-raise; the signal is blocked while this handler runs
    // and is delivered when it returns.
    // SAFETY: a zeroed sigaction is SIG_DFL with no flags and an empty mask; raise is
    // async-signal-safe.
    unsafe {
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(sig, &dfl, std::ptr::null_mut());
        libc::raise(sig);
    }
}

/// Call the application's handler `act` for `sig` as the kernel would have: its `sa_mask`
/// (and `sig` itself unless `SA_NODEFER`) blocked while it runs, the one- or three-argument
/// form by `SA_SIGINFO`; SIG_IGN does nothing. The thread's signal mask is restored after it
/// returns.
///
/// # Safety
/// Called from Keel's handler for `sig` (which runs with `sig` blocked) with the kernel's
/// `info` and `ctx`; `act` is a disposition the process installed for `sig`.
unsafe fn forward(act: &libc::sigaction, sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    if act.sa_sigaction == libc::SIG_IGN || act.sa_sigaction == libc::SIG_DFL {
        return;
    }
    // SAFETY: sigset operations on valid sets owned by this frame or by `act`;
    // pthread_sigmask is async-signal-safe (a system call on Linux).
    let saved = unsafe {
        let mut saved: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, &act.sa_mask, &mut saved);
        if act.sa_flags & libc::SA_NODEFER != 0 && libc::sigismember(&act.sa_mask, sig) != 1 {
            let mut only: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut only);
            libc::sigaddset(&mut only, sig);
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &only, std::ptr::null_mut());
        }
        saved
    };
    // SAFETY: caller contract.
    unsafe { invoke(act, sig, info, ctx) };
    // SAFETY: restoring the mask saved above (the one Keel's handler started with).
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &saved, std::ptr::null_mut()) };
}

/// Call the handler function of `act` (one- or three-argument form by `SA_SIGINFO`).
///
/// # Safety
/// `act` holds a handler function (not SIG_DFL or SIG_IGN) installed by the process for
/// `sig`; `info` and `ctx` are the kernel's for this delivery.
unsafe fn invoke(act: &libc::sigaction, sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the function pointer comes from sigaction; its type follows SA_SIGINFO
    // (caller contract), and the arguments are the kernel's.
    unsafe {
        if act.sa_flags & libc::SA_SIGINFO != 0 {
            let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                std::mem::transmute(act.sa_sigaction);
            f(sig, info, ctx);
        } else {
            let f: extern "C" fn(libc::c_int) = std::mem::transmute(act.sa_sigaction);
            f(sig);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pending_set_takes_and_settles() {
        let t = 0x5eed_0001u64;
        assert!(!take(&PENDING, t));
        assert!(expect(t) && expect(t));
        assert!(take(&PENDING, t));
        // One entry is left (e.g. an interrupt wasmer did not send): settle clears it.
        settle(t);
        assert!(!take(&PENDING, t));
        // ... and marks the thread: a late interrupt may still come.
        assert!(take(&LATE, t));
        assert_ne!(current_thread(), 0);
    }
}
