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
use std::time::Duration;

/// A cancel token: created by the server, cancelled from any thread, observed by the call(s)
/// it was passed to. Cancelling is sticky (a token cannot be reset).
#[derive(Debug, Default)]
pub struct CancelToken {
    cancelled: AtomicBool,
}

impl CancelToken {
    pub fn new() -> CancelToken {
        CancelToken::default()
    }

    /// Mark the token cancelled. Calls observing it stop at their next check.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
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
        }
    }
}

impl CallOptions<'_> {
    /// Whether this call's cancel token has been cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_some_and(CancelToken::is_cancelled)
    }
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

/// Whether the current call (if any) has been cancelled.
pub fn cancelled() -> bool {
    with_current(|c| c.is_some_and(CallOptions::is_cancelled))
}

#[cfg(test)]
mod tests {
    use super::*;

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
