//! The per-call context: what a call made with options carries to everything it reaches.
//!
//! A server calls a plugin with [`CallOptions`] (deadline, fuel, cancel token, its opaque
//! `user_context`, tenant id, W3C `traceparent`). For the duration of that call the options
//! are this thread's *current call context*: runtimes read the deadline, fuel and cancel
//! token from it, and host functions, sinks and the `cancelled()` host-API entry read the
//! rest. A plain call (no options) sets nothing and costs nothing: [`with_current`] then sees
//! `None`.
//!
//! The context lives on the caller's stack; the thread-local holds a pointer to it only
//! while [`with_options`] runs (restored on return and on unwind), so no reader can see it
//! after the call.

use std::cell::Cell;
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::error::Result;
use crate::{bail, err};

/// A cancel token: created by the server, cancelled from any thread, observed by the call(s)
/// it was passed to. Cancelling is sticky (a token cannot be reset).
///
/// A `CancelToken` is a counted reference to its shared state: cloning it (an atomic
/// increment, no allocation) gives another handle to the same token, so a call holds the
/// token alive for its whole duration even if the server drops its own handle meanwhile.
#[derive(Debug, Default, Clone)]
pub struct CancelToken {
    state: Arc<CancelState>,
}

/// The shared state of a [`CancelToken`] (the C ABI's `keel_cancel_token` points at it).
#[derive(Debug, Default)]
pub struct CancelState {
    cancelled: AtomicBool,
}

impl CancelState {
    /// Mark cancelled; on the first cancel, wake every registered [`CancelWaker`] (the WASM
    /// watchdogs), so a running WASM call is interrupted at once instead of at the next tick.
    pub fn cancel(&self) {
        if !self.cancelled.swap(true, Ordering::AcqRel) {
            wake_all();
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }
}

impl CancelToken {
    pub fn new() -> CancelToken {
        CancelToken::default()
    }

    /// A token sharing `state` (the C ABI holds tokens as `Arc<CancelState>`).
    pub fn from_state(state: Arc<CancelState>) -> CancelToken {
        CancelToken { state }
    }

    /// The shared state (what a runtime keeps while a call runs).
    pub fn state(&self) -> &Arc<CancelState> {
        &self.state
    }

    /// Mark the token cancelled. Calls observing it stop at their next check; a running WASM
    /// call is interrupted promptly. Idempotent, callable from any thread.
    pub fn cancel(&self) {
        self.state.cancel();
    }

    pub fn is_cancelled(&self) -> bool {
        self.state.is_cancelled()
    }
}

/// Something to wake when any token is cancelled (a WASM runtime's watchdog thread).
pub trait CancelWaker: Send + Sync {
    fn wake(&self);
}

static WAKERS: Mutex<Vec<Weak<dyn CancelWaker>>> = Mutex::new(Vec::new());

/// Register a waker for the lifetime of `w` (dead ones are pruned here). Cold path (a WASM
/// runtime starting).
pub fn register_cancel_waker(w: Weak<dyn CancelWaker>) {
    let mut ws = WAKERS.lock();
    ws.retain(|x| x.strong_count() > 0);
    ws.push(w);
}

#[cold]
fn wake_all() {
    let ws = WAKERS.lock();
    for w in ws.iter() {
        if let Some(w) = w.upgrade() {
            w.wake();
        }
    }
}

/// Options of one call. Every field is optional; `Default` is "as `keel_call`".
#[derive(Debug, Clone, Copy)]
pub struct CallOptions<'a> {
    /// Wall-clock budget of this call (capped by the plugin's and the node's ceiling).
    pub deadline: Option<Duration>,
    /// Fuel budget of this call (WASM; capped by the plugin's and the node's ceiling).
    pub fuel: Option<u64>,
    pub cancel: Option<&'a CancelToken>,
    /// The server's opaque pointer (session, transaction), handed to host functions as is.
    pub user_context: *mut c_void,
    pub tenant: Option<&'a str>,
    /// W3C trace context (`traceparent` header value).
    pub traceparent: Option<&'a str>,
    /// When the call's (capped) deadline passes: set by the call path from `deadline` as the
    /// call starts, never by the caller. Native plugins see it through `cancelled()`.
    pub expires: Option<Instant>,
}

impl Default for CallOptions<'_> {
    fn default() -> Self {
        CallOptions {
            deadline: None,
            fuel: None,
            cancel: None,
            user_context: std::ptr::null_mut(),
            tenant: None,
            traceparent: None,
            expires: None,
        }
    }
}

impl CallOptions<'_> {
    /// Whether the call should stop: its cancel token has been cancelled, or its deadline
    /// has passed (what the native `cancelled()` entry and host functions report).
    pub fn is_cancelled(&self) -> bool {
        self.token_cancelled() || self.is_expired()
    }

    /// Whether this call's cancel token has been cancelled.
    pub fn token_cancelled(&self) -> bool {
        self.cancel.is_some_and(CancelToken::is_cancelled)
    }

    /// Whether the call's deadline has passed (reads the clock only when one is set).
    pub fn is_expired(&self) -> bool {
        self.expires.is_some_and(|t| Instant::now() >= t)
    }

    /// Whether nothing is set: the call is exactly a plain call.
    pub fn is_plain(&self) -> bool {
        self.deadline.is_none()
            && self.fuel.is_none()
            && self.cancel.is_none()
            && self.user_context.is_null()
            && self.tenant.is_none()
            && self.traceparent.is_none()
    }

    /// Check the fields a server supplies as text: the tenant (at most
    /// [`MAX_TENANT_BYTES`] bytes, no control characters) and the traceparent (W3C format,
    /// see [`check_traceparent`]). `KEEL_ERR_INVALID_ARGUMENT` naming the field otherwise.
    pub fn validate(&self) -> Result<()> {
        if let Some(t) = self.tenant {
            if t.len() > MAX_TENANT_BYTES {
                bail!(
                    KEEL_ERR_INVALID_ARGUMENT,
                    "call options: tenant is {} bytes long; at most {MAX_TENANT_BYTES} are accepted",
                    t.len()
                );
            }
            if t.chars().any(char::is_control) {
                bail!(
                    KEEL_ERR_INVALID_ARGUMENT,
                    "call options: tenant {t:?} contains a control character"
                );
            }
        }
        if let Some(tp) = self.traceparent {
            check_traceparent(tp)?;
        }
        Ok(())
    }
}

/// Longest tenant id accepted in call options, in bytes.
pub const MAX_TENANT_BYTES: usize = 256;

/// Check a W3C Trace Context `traceparent` value: `version-traceid-parentid-flags`, lower-case
/// hex, 2-32-16-2 digits; version `ff` is invalid; trace id and parent id are not all zeros.
/// Version `00` is exactly 55 characters; a later version may append `-...` fields (which are
/// kept, not interpreted), as the specification asks of parsers.
pub fn check_traceparent(tp: &str) -> Result<()> {
    let bad = |why: &str| {
        err!(
            KEEL_ERR_INVALID_ARGUMENT,
            "call options: traceparent {tp:?} is not a W3C traceparent (version-traceid-parentid-flags, e.g. 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01): {why}"
        )
    };
    let b = tp.as_bytes();
    if b.len() < 55 {
        return Err(bad("too short"));
    }
    let hex = |r: std::ops::Range<usize>| b[r].iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    if b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return Err(bad("fields must be separated by '-' at offsets 2, 35 and 52"));
    }
    if !hex(0..2) || !hex(3..35) || !hex(36..52) || !hex(53..55) {
        return Err(bad("fields must be lower-case hexadecimal"));
    }
    if &b[0..2] == b"ff" {
        return Err(bad("version ff is invalid"));
    }
    if &b[0..2] == b"00" && b.len() != 55 {
        return Err(bad("version 00 is exactly 55 characters"));
    }
    if b.len() > 55 && b[55] != b'-' {
        return Err(bad("extra fields of a later version must follow a '-'"));
    }
    if b[3..35].iter().all(|&c| c == b'0') {
        return Err(bad("the trace id is all zeros"));
    }
    if b[36..52].iter().all(|&c| c == b'0') {
        return Err(bad("the parent id is all zeros"));
    }
    Ok(())
}

thread_local! {
    /// The options of the call this thread is running, or null.
    static CURRENT: Cell<*const CallOptions<'static>> = const { Cell::new(std::ptr::null()) };
}

/// Restores the previous current context on drop (also on unwind).
struct Restore(*const CallOptions<'static>);

impl Drop for Restore {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(self.0));
    }
}

/// Run `f` with `opts` as this thread's current call context. Nests: an inner call with
/// options (a host function calling another plugin) sees its own options, and the outer ones
/// are current again when it returns.
pub fn with_options<R>(opts: &CallOptions<'_>, f: impl FnOnce() -> R) -> R {
    let ptr = (opts as *const CallOptions<'_>).cast::<CallOptions<'static>>();
    let _restore = Restore(CURRENT.with(|c| c.replace(ptr)));
    f()
}

/// Read this thread's current call context (`None` outside a call made with options).
pub fn with_current<R>(f: impl FnOnce(Option<&CallOptions<'_>>) -> R) -> R {
    let ptr = CURRENT.with(Cell::get);
    // SAFETY: a non-null pointer was set by `with_options` on this thread from a reference
    // that outlives the `with_options` frame, which is still running (it restores the
    // previous value before returning or unwinding); the lifetime handed to `f` is bounded
    // by this call, so the reference cannot escape it.
    let cur = unsafe { ptr.as_ref() };
    f(cur)
}

/// Whether the current call (if any) should stop: its token was cancelled or its deadline
/// has passed. `false` outside a call made with options.
pub fn cancelled() -> bool {
    with_current(|c| c.is_some_and(CallOptions::is_cancelled))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_are_checked() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        check_traceparent(good).unwrap();
        check_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-later").unwrap();
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            let e = check_traceparent(bad).unwrap_err();
            assert_eq!(
                e.status(),
                crate::error::keel_status::KEEL_ERR_INVALID_ARGUMENT,
                "{bad}"
            );
            assert!(e.message().contains("traceparent"), "{e}");
        }
    }

    #[test]
    fn a_clone_shares_the_token_and_cancel_is_idempotent() {
        let a = CancelToken::new();
        let b = a.clone();
        assert!(!b.is_cancelled());
        a.cancel();
        a.cancel();
        assert!(b.is_cancelled());
        let opts = CallOptions {
            cancel: Some(&b),
            ..CallOptions::default()
        };
        assert!(opts.token_cancelled() && opts.is_cancelled() && !opts.is_plain());
    }

    #[test]
    fn an_expired_deadline_reads_as_cancelled() {
        let opts = CallOptions {
            expires: Some(Instant::now()),
            ..CallOptions::default()
        };
        assert!(opts.is_expired() && opts.is_cancelled() && !opts.token_cancelled());
        assert!(CallOptions::default().is_plain());
    }

    #[test]
    fn context_is_scoped_and_nests() {
        assert!(with_current(|c| c.is_none()));
        let token = CancelToken::new();
        let outer = CallOptions {
            tenant: Some("t1"),
            cancel: Some(&token),
            ..CallOptions::default()
        };
        with_options(&outer, || {
            assert_eq!(
                with_current(|c| c.and_then(|c| c.tenant).map(str::to_owned)),
                Some("t1".to_owned())
            );
            assert!(!cancelled());
            token.cancel();
            assert!(cancelled());
            let inner = CallOptions {
                tenant: Some("t2"),
                ..CallOptions::default()
            };
            with_options(&inner, || {
                assert_eq!(
                    with_current(|c| c.and_then(|c| c.tenant).map(str::to_owned)),
                    Some("t2".to_owned())
                );
                assert!(!cancelled());
            });
            assert_eq!(
                with_current(|c| c.and_then(|c| c.tenant).map(str::to_owned)),
                Some("t1".to_owned())
            );
        });
        assert!(with_current(|c| c.is_none()));
    }

    #[test]
    fn context_is_restored_on_unwind() {
        let opts = CallOptions::default();
        let r = std::panic::catch_unwind(|| with_options(&opts, || panic!("boom")));
        assert!(r.is_err());
        assert!(with_current(|c| c.is_none()));
    }
}
