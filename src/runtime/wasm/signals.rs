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
//! Limits: an application SIGUSR1 that arrives at a thread at the very moment that thread's
//! guest is being interrupted is taken for the interrupt (lost for the application); a
//! SIGUSR1 handler the application installs *after* Keel's replaces Keel's and wasmer's, which
//! stops deadlines from working. Keel must create its first WASM runtime before anything else
//! in the process uses wasmer; otherwise it cannot tell the application's handler apart and
//! leaves wasmer's in place (routing inactive).

use std::cell::Cell;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Once;

/// Threads with an interrupt in flight (0 = free entry).
const SLOTS: usize = 256;
static PENDING: [AtomicU64; SLOTS] = [const { AtomicU64::new(0) }; SLOTS];

static ACTIVE: AtomicBool = AtomicBool::new(false);
static INSTALL: Once = Once::new();
// Written once inside INSTALL, before Keel's handler is installed; only read afterwards.
static mut APP: MaybeUninit<libc::sigaction> = MaybeUninit::uninit();
static mut WASMER: MaybeUninit<libc::sigaction> = MaybeUninit::uninit();

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
        // SAFETY: sigaction with valid pointers; the statics are written before the handler
        // that reads them is installed, and never again.
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
            ours.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
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
/// (then it must not interrupt now; it retries on its next tick).
pub fn expect(thread: u64) -> bool {
    PENDING.iter().any(|s| {
        s.compare_exchange(0, thread, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    })
}

/// Called on the interrupted thread after its call left the guest: let any signal still on
/// its way be delivered, then drop this thread's remaining entries.
pub fn settle(thread: u64) {
    // Pending signals are delivered on the return from any system call.
    // SAFETY: getppid has no preconditions.
    unsafe { libc::getppid() };
    for s in PENDING.iter() {
        let _ = s.compare_exchange(thread, 0, Ordering::AcqRel, Ordering::Relaxed);
    }
}

fn take(thread: u64) -> bool {
    PENDING.iter().any(|s| {
        s.load(Ordering::Relaxed) == thread
            && s.compare_exchange(thread, 0, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
    })
}

extern "C" fn handler(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // Async-signal-safe: atomics, pthread_self, and the saved handlers.
    // SAFETY: pthread_self has no preconditions.
    let me = (unsafe { libc::pthread_self() } as u64).max(1);
    // SAFETY: both statics were initialised before this handler was installed.
    let act = unsafe {
        if take(me) {
            (*std::ptr::addr_of!(WASMER)).assume_init_ref()
        } else {
            (*std::ptr::addr_of!(APP)).assume_init_ref()
        }
    };
    // SAFETY: forwarding the signal to a handler the process installed, with the arguments the
    // kernel gave us (wasmer rewrites `ctx` to stop the guest).
    unsafe { forward(act, sig, info, ctx) }
}

unsafe fn forward(act: &libc::sigaction, sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the function pointers come from sigaction; their type follows SA_SIGINFO.
    unsafe {
        if act.sa_flags & libc::SA_SIGINFO != 0 {
            let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                std::mem::transmute(act.sa_sigaction);
            f(sig, info, ctx);
        } else if act.sa_sigaction == libc::SIG_IGN {
        } else if act.sa_sigaction == libc::SIG_DFL {
            // SIGUSR1's default action terminates the process: restore it and re-raise; the
            // signal is blocked while this handler runs and is delivered when it returns.
            let mut dfl: libc::sigaction = std::mem::zeroed();
            dfl.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(sig, &dfl, std::ptr::null_mut());
            libc::raise(sig);
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
        assert!(!take(t));
        assert!(expect(t) && expect(t));
        assert!(take(t));
        // One entry is left (e.g. an interrupt wasmer did not send): settle clears it.
        settle(t);
        assert!(!take(t));
        assert_ne!(current_thread(), 0);
    }
}
