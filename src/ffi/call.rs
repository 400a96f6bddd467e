//! C ABI: calls with options (deadline, fuel, cancel token, the server's context, tenant and
//! trace context) and cancel tokens. The logic is in `services::call`, the registry's call
//! path and the runtimes; this file checks pointers and strings and converts.

use std::ffi::{c_char, c_void};
use std::sync::Arc;
use std::time::Duration;

use super::host::{keel_buffer, keel_function, keel_plugin};
use super::{arg_bytes, arg_str, borrow, boundary, fill_buffer, free, new_shared, Castable, Out, Shared};
use crate::bail;
use crate::error::{keel_status, Result};
use crate::services::call::{CallOptions, CancelState, CancelToken};

// ---- Calls with options and cancel tokens ----

/// A cancel token: created by the server (`keel_cancel_token_new`), handed to any number of
/// calls through `keel_call_options.cancel`, cancelled from any thread at any time
/// (`keel_cancel_token_cancel`), released with `keel_cancel_token_free`. Reference-counted:
/// every handle (from `_new` or `_clone`) is released once, and a call that was given the
/// token holds its own reference until it returns, so freeing the server's handle while a
/// call runs is safe. Thread-safe: every function may be called from any thread at once.
pub struct keel_cancel_token {
    _opaque: [u8; 0],
}

/// The handle is the token's `Arc<CancelState>` itself.
impl Castable for keel_cancel_token {
    type Rust = CancelState;
    type Ownership = Shared;
}

/// Options of one call (`keel_call_with`). Zero-initialise it, set `struct_size` to
/// `sizeof(keel_call_options)`, then set the fields you need; every zero or NULL field means
/// "as `keel_call`". The struct grows at its end in later versions: the host accepts any
/// `struct_size` from the size of this first version up to 4096 bytes, as long as the bytes
/// it does not know are zero. Borrowed for the call (the strings too); never kept.
#[repr(C)]
pub struct keel_call_options {
    /// `sizeof(keel_call_options)` as the caller was compiled (at least this version's).
    pub struct_size: u32,
    /// Reserved: must be 0.
    pub flags: u32,
    /// Wall-clock budget of this call in microseconds; 0: the plugin's own. Capped at the
    /// plugin's deadline (its manifest's `limits.timeout_ms`, itself capped by the node's
    /// ceiling): a larger value is not an error, the call simply gets the plugin's deadline.
    /// WASM: the call is interrupted when it passes (`KEEL_ERR_DEADLINE`, instance
    /// discarded). Native: the plugin sees it through its `cancelled()` host-API entry; a
    /// failure it returns after the deadline is `KEEL_ERR_DEADLINE` (native code cannot be
    /// interrupted, and has no deadline of its own to cap this one).
    pub deadline_us: u64,
    /// Fuel (WASM instruction budget) of this call; 0: the plugin's own. Capped at the
    /// plugin's `limits.fuel_per_call` (after the node's ceiling); running out is
    /// `KEEL_ERR_CPU_BUDGET`. Ignored by native plugins and by WASM runtimes configured
    /// without metering (nothing counts instructions there).
    pub fuel: u64,
    /// A cancel token, or NULL. Borrowed: the call takes its own reference for its duration.
    pub cancel: *const keel_cancel_token,
    /// The server's opaque pointer (session, transaction), handed as is to host functions the
    /// call reaches. Keel never dereferences it.
    pub user_context: *mut c_void,
    /// Tenant id (NUL-terminated UTF-8, at most 256 bytes, no control characters), or NULL.
    pub tenant: *const c_char,
    /// W3C Trace Context `traceparent` value (NUL-terminated,
    /// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`, lower-case), or NULL.
    pub traceparent: *const c_char,
}

/// The largest `struct_size` accepted (a newer caller's options; the unknown bytes must be 0).
const MAX_OPTIONS_SIZE: u32 = 4096;

/// A new reference to the token behind a handle (an atomic increment, no allocation).
///
/// # Safety
/// `p` is a live `keel_cancel_token` handle (non-NULL).
unsafe fn token_ref(p: *const keel_cancel_token) -> CancelToken {
    let p = p.cast::<CancelState>();
    // SAFETY: per the contract `p` came from `Arc::into_raw` (new_shared) and its handle
    // still holds a strong count, so adding one and taking it back as an Arc is sound.
    unsafe {
        Arc::increment_strong_count(p);
        CancelToken::from_state(Arc::from_raw(p))
    }
}

/// Call a plugin function with options: as `keel_call`, and for the call's duration the
/// options are the call's context (host functions read `user_context`, tenant and
/// traceparent; the log sink gets the trace id).
///
/// `opts == NULL`, or options with every field zero/NULL, behave exactly as `keel_call`.
/// `opts` and everything it points to are borrowed for the call.
///
/// Cancellation: a token already cancelled when the call starts: the call is not run,
/// `KEEL_ERR_CANCELLED`. Cancelled while a WASM call runs: the guest is interrupted
/// promptly, the call returns `KEEL_ERR_CANCELLED`, and the instance it ran on is discarded
/// exactly as after a deadline or a trap: the next call gets a fresh instance, created as at
/// load (`keel_init` runs again), and whatever the discarded instance held in its memory is
/// lost; other instances of a pooled plugin are untouched. Cancelled while a native call runs: the plugin sees it
/// through its `cancelled()` entry; if it then returns failure the call returns
/// `KEEL_ERR_CANCELLED`, if it returns success the result is delivered (the work was done).
/// A call that finishes before the cancel reaches it returns its result. ThemisDB plugins
/// cannot observe a cancel mid-call (their ABI has no such entry): only the check before the
/// call applies.
///
/// Thread-safe as `keel_call` (one output buffer per thread). No lock is taken; with a
/// token, the call takes and drops one reference on it.
///
/// Errors: every error of `keel_call`, and `KEEL_ERR_CANCELLED`;
/// `KEEL_ERR_INVALID_ARGUMENT` (`struct_size` smaller than this version's or larger than
/// 4096, non-zero unknown bytes or `flags`, a malformed `traceparent`, a tenant too long or
/// with control characters), `KEEL_ERR_INVALID_UTF8` (`tenant`, `traceparent`).
#[no_mangle]
pub extern "C" fn keel_call_with(
    plugin: *const keel_plugin,
    function: keel_function,
    input: *const u8,
    input_len: usize,
    opts: *const keel_call_options,
    out: *mut keel_buffer,
) -> keel_status {
    fill_buffer(out, |out| {
        // SAFETY: caller contract for every pointer argument.
        let (slot, input) = unsafe { (borrow(plugin, "plugin")?, arg_bytes(input, input_len, "input")?) };
        // SAFETY: caller contract: `opts` is NULL or points to `struct_size` readable bytes.
        let Some(o) = (unsafe { opts_ref(opts) })? else {
            return slot.call(function, input, out);
        };
        if o.deadline_us == 0
            && o.fuel == 0
            && o.cancel.is_null()
            && o.user_context.is_null()
            && o.tenant.is_null()
            && o.traceparent.is_null()
        {
            return slot.call(function, input, out);
        }
        // SAFETY: caller contract: a non-NULL `cancel` is a live token handle.
        let token = (!o.cancel.is_null()).then(|| unsafe { token_ref(o.cancel) });
        // SAFETY: caller contract: non-NULL strings are NUL-terminated and live for the call.
        let (tenant, traceparent) = unsafe {
            (
                opt_str(o.tenant, "opts->tenant")?,
                opt_str(o.traceparent, "opts->traceparent")?,
            )
        };
        let co = CallOptions {
            deadline: (o.deadline_us != 0).then(|| Duration::from_micros(o.deadline_us)),
            fuel: (o.fuel != 0).then_some(o.fuel),
            cancel: token.as_ref(),
            user_context: o.user_context,
            tenant,
            traceparent,
            expires: None,
        };
        co.validate()?;
        slot.call_with(function, input, out, &co)
    })
}

/// Borrow the options, checking `struct_size`, `flags` and the bytes a newer caller may have
/// added (NULL: no options).
///
/// # Safety
/// `p` is NULL or points to a `keel_call_options` prefix whose first field is `struct_size`,
/// with `struct_size` readable bytes.
unsafe fn opts_ref<'a>(p: *const keel_call_options) -> Result<Option<&'a keel_call_options>> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: a non-NULL `p` has at least its `struct_size` field (caller contract).
    let size = unsafe { p.cast::<u32>().read() };
    let known = std::mem::size_of::<keel_call_options>() as u32;
    if size < known {
        bail!(
            KEEL_ERR_INVALID_ARGUMENT,
            "opts->struct_size is {size}; set it to sizeof(keel_call_options) ({known} in this version)"
        );
    }
    if size > MAX_OPTIONS_SIZE {
        bail!(
            KEEL_ERR_INVALID_ARGUMENT,
            "opts->struct_size is {size}; at most {MAX_OPTIONS_SIZE} is accepted (is the field set?)"
        );
    }
    if size > known {
        // SAFETY: the caller says `size` bytes are readable at `p`.
        let extra = unsafe { std::slice::from_raw_parts(p.cast::<u8>().add(known as usize), (size - known) as usize) };
        if let Some(i) = extra.iter().position(|&b| b != 0) {
            bail!(
                KEEL_ERR_INVALID_ARGUMENT,
                "opts: byte {} is set, past the {known} bytes of keel_call_options this host knows; it cannot honour options of a newer version",
                known as usize + i
            );
        }
    }
    // SAFETY: at least `known` readable bytes, so the whole struct is there.
    let o = unsafe { &*p };
    if o.flags != 0 {
        bail!(
            KEEL_ERR_INVALID_ARGUMENT,
            "opts->flags is {:#x}; it is reserved and must be 0",
            o.flags
        );
    }
    Ok(Some(o))
}

/// An optional string field (NULL: `None`).
///
/// # Safety
/// As for [`arg_str`] when non-NULL.
unsafe fn opt_str<'a>(p: *const c_char, what: &str) -> Result<Option<&'a str>> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: caller contract.
    unsafe { arg_str(p, what) }.map(Some)
}

/// Create a cancel token (not cancelled). `*out` receives a handle owned by the caller
/// (release with `keel_cancel_token_free`). Thread-safe.
///
/// Errors: `KEEL_ERR_NULL_POINTER` (`out`).
#[no_mangle]
pub extern "C" fn keel_cancel_token_new(out: *mut *mut keel_cancel_token) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract for `out`.
        let out = unsafe { Out::new(out, "out") }?;
        out.set(new_shared::<keel_cancel_token>(Arc::new(CancelState::default())));
        Ok(())
    })
}

/// Another handle to the same token (for another owner, e.g. another thread); `*out`
/// receives it, owned by the caller (release with `keel_cancel_token_free`). Thread-safe.
///
/// Errors: `KEEL_ERR_NULL_POINTER` (`token`, `out`).
#[no_mangle]
pub extern "C" fn keel_cancel_token_clone(
    token: *const keel_cancel_token,
    out: *mut *mut keel_cancel_token,
) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract for every pointer argument.
        let (_, out) = unsafe { (borrow(token, "token")?, Out::new(out, "out")?) };
        // SAFETY: `token` is a live handle (checked non-NULL above).
        let t = unsafe { token_ref(token) };
        out.set(new_shared::<keel_cancel_token>(t.state().clone()));
        Ok(())
    })
}

/// Cancel the token: every call it was or will be given stops (see `keel_call_with`).
/// Sticky and idempotent; callable from any thread at any time, also while calls using the
/// token run. Never blocks on a call (it wakes the WASM watchdogs and returns).
///
/// Errors: `KEEL_ERR_NULL_POINTER` (`token`).
#[no_mangle]
pub extern "C" fn keel_cancel_token_cancel(token: *const keel_cancel_token) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract.
        unsafe { borrow(token, "token") }?.cancel();
        Ok(())
    })
}

/// Whether the token has been cancelled: `*out` receives it. Thread-safe.
///
/// Errors: `KEEL_ERR_NULL_POINTER` (`token`, `out`).
#[no_mangle]
pub extern "C" fn keel_cancel_token_is_cancelled(token: *const keel_cancel_token, out: *mut bool) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract for every pointer argument.
        let (t, out) = unsafe { (borrow(token, "token")?, Out::new(out, "out")?) };
        out.set(t.is_cancelled());
        Ok(())
    })
}

/// Release a token handle. NULL is accepted and ignored. Calls running with the token keep
/// their own reference, so this is safe while they run (they can still be cancelled through
/// other handles, not through this one). Thread-safe with respect to other handles; this
/// handle must not be used after or during the call.
///
/// Errors: none (always `KEEL_OK`).
#[no_mangle]
pub extern "C" fn keel_cancel_token_free(token: *mut keel_cancel_token) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract: a handle from Keel, not yet freed, no other user of it.
        unsafe { free(token) };
        Ok(())
    })
}
