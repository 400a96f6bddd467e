//! Host functions defined by the embedder (logic in `services::hostfn`): define, remove, and
//! the accessors of the call context a host function receives.

use std::ffi::{c_char, c_void};

use super::host::keel_host;
use super::introspect::keel_user_data_free_fn;
use super::{arg_str, borrow, boundary, Out};
use crate::bail;
use crate::error::keel_status;
use crate::services::hostfn::{CallContext, RawHostFnCallback};

/// What a host function learns about the call it serves (opaque): the calling plugin and,
/// for a call made with options, the server's `user_context`, tenant, `traceparent` and
/// cancel token. Borrowed by the callback for the duration of its call only; read it with the
/// `keel_call_context_*` functions (from the callback's thread, during the callback).
pub struct keel_call_context {
    _opaque: [u8; 0],
}

/// Where a host function writes its output (or, when it fails, its error message).
/// `write(ctx, data, len)` appends `len` bytes (copied) and returns 0, or non-zero when the
/// output is refused (too large): the function should then stop and fail. Borrowed for the
/// callback's call only. Same layout as `keel_output` of keel_plugin.h.
#[repr(C)]
pub struct keel_host_fn_output {
    pub ctx: *mut c_void,
    pub write: unsafe extern "C" fn(ctx: *mut c_void, data: *const u8, len: usize) -> i32,
}

/// A host function: `input` (`input_len` bytes, borrowed for the call; NULL when empty), the
/// call context and the output sink (both borrowed for the call), and the `user_data` given
/// at definition. Returns 0 on success; any other value fails the plugin's call, and what the
/// function wrote to `out` is the error message the plugin sees (UTF-8). A native plugin gets
/// the status itself from `host_fn_call`; a WASM plugin gets the error flag of its import's
/// result (keel_wasm.h).
///
/// Called on the thread of the plugin call it serves, from many threads at once (plugins,
/// pooled WASM instances and callers run concurrently): it must be thread-safe. It must not
/// unwind (no C++ exception or longjmp may leave it: keel.hpp's wrapper catches them). It may
/// call into Keel (e.g. `keel_call` another plugin), but must not call, unload or reload the
/// plugin that is calling it (its instance is busy with the call in progress, which an unload
/// or reload waits for).
pub type keel_host_fn_callback = Option<
    unsafe extern "C" fn(
        ctx: *const keel_call_context,
        input: *const u8,
        input_len: usize,
        out: *const keel_host_fn_output,
        user_data: *mut c_void,
    ) -> i32,
>;

/// Define (or replace) the host function `namespace`.`name` (each 1-128 characters of
/// `[A-Za-z0-9_.:-]`, NUL-terminated, borrowed for the call; namespace "keel" is reserved),
/// which plugins granted `capability` (a name of Keel's capability registry, e.g.
/// "storage:read") may call: native plugins through `host_fn_lookup`/`host_fn_call` of their
/// host-API table, WASM plugins by importing `name` from module `namespace`.
///
/// Binding: a plugin binds to the definitions that exist when it loads (a snapshot).
/// Defining, replacing or removing a function affects plugins loaded or reloaded afterwards;
/// loaded generations keep calling the definition they bound to.
///
/// Ownership: Keel owns `user_data` from this call on, whatever the outcome.
/// `free_user_data` (may be NULL) is called with it exactly once: when the definition has been
/// replaced or removed (or the host freed) and no loaded plugin generation is bound to it any
/// more; or, when the definition is refused, before this function returns. `callback` and
/// `free_user_data` may be called from any thread. Thread-safe.
///
/// Errors: `KEEL_ERR_NULL_POINTER` (`host`, `namespace_`, `name`, `capability`, `callback`),
/// `KEEL_ERR_INVALID_UTF8`, `KEEL_ERR_INVALID_ARGUMENT` (a bad name, namespace "keel"),
/// `KEEL_ERR_CAPABILITY_UNKNOWN`.
#[no_mangle]
pub extern "C" fn keel_host_define_function(
    host: *const keel_host,
    namespace_: *const c_char,
    name: *const c_char,
    capability: *const c_char,
    callback: keel_host_fn_callback,
    user_data: *mut c_void,
    free_user_data: keel_user_data_free_fn,
) -> keel_status {
    let mut handed_over = false;
    let status = boundary(|| {
        // SAFETY: caller contract for every pointer argument.
        let h = unsafe { borrow(host, "host") }?;
        // SAFETY: caller contract: NUL-terminated strings valid for the call.
        let (ns, n, cap) = unsafe {
            (
                arg_str(namespace_, "namespace_")?,
                arg_str(name, "name")?,
                arg_str(capability, "capability")?,
            )
        };
        let Some(cb) = callback else {
            bail!(KEEL_ERR_NULL_POINTER, "callback is NULL");
        };
        // SAFETY: the two fn pointer types have the same ABI: the context and output
        // pointers point to Keel's CallContext and HostOutput, whose C views are the opaque
        // keel_call_context and the layout-identical keel_host_fn_output.
        let cb = unsafe {
            std::mem::transmute::<
                unsafe extern "C" fn(
                    *const keel_call_context,
                    *const u8,
                    usize,
                    *const keel_host_fn_output,
                    *mut c_void,
                ) -> i32,
                RawHostFnCallback,
            >(cb)
        };
        let hf = h.host_functions();
        // From here on the definition owns user_data (a refused one releases it).
        handed_over = true;
        // SAFETY: caller contract: callback and free_user_data are thread-safe.
        unsafe { hf.define_raw(ns, n, cap, cb, user_data, free_user_data) }
    });
    // Refused before the registry took user_data: release it here, as documented.
    if !handed_over {
        if let Some(free) = free_user_data {
            // SAFETY: caller contract: `free` releases `user_data`; nothing else will.
            unsafe { free(user_data) }
        }
    }
    status
}

/// Remove the host function `namespace`.`name` (NUL-terminated, borrowed for the call).
/// Plugins already bound to it keep calling it until they are reloaded or unloaded; its
/// `free_user_data` runs when the last of them lets go. Thread-safe.
///
/// Errors: `KEEL_ERR_NULL_POINTER`, `KEEL_ERR_INVALID_UTF8`, `KEEL_ERR_HOST_FN_NOT_FOUND`.
#[no_mangle]
pub extern "C" fn keel_host_remove_function(
    host: *const keel_host,
    namespace_: *const c_char,
    name: *const c_char,
) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract for every pointer argument.
        let h = unsafe { borrow(host, "host") }?;
        // SAFETY: caller contract: NUL-terminated strings valid for the call.
        let (ns, n) = unsafe { (arg_str(namespace_, "namespace_")?, arg_str(name, "name")?) };
        h.remove_host_fn(ns, n)
    })
}

/// # Safety
/// `ctx` is NULL or the context a host function callback was given, during that callback.
unsafe fn context<'a>(ctx: *const keel_call_context) -> crate::error::Result<&'a CallContext<'a>> {
    // SAFETY: caller contract: a keel_call_context pointer is a CallContext, live during the
    // callback.
    unsafe { ctx.cast::<CallContext<'a>>().as_ref() }.ok_or_else(|| crate::err!(KEEL_ERR_NULL_POINTER, "ctx is NULL"))
}

/// Write a borrowed string (`None` = (NULL, 0)) to two out-parameters.
///
/// # Safety
/// `data` and `len` are NULL or writable.
unsafe fn set_str(s: Option<&str>, data: *mut *const c_char, len: *mut usize) -> crate::error::Result<()> {
    // SAFETY: caller contract.
    let (d, l) = unsafe { (Out::new(data, "data")?, Out::new(len, "len")?) };
    let (p, n) = s.map_or((std::ptr::null(), 0), |s| (s.as_ptr() as *const c_char, s.len()));
    d.set(p);
    l.set(n);
    Ok(())
}

/// The server's `user_context` pointer given with the options of the call being served
/// (NULL for a call made without options) into `*out`. Call only from the host function,
/// during its call. Thread-safe.
///
/// Errors: `KEEL_ERR_NULL_POINTER` (`ctx`, `out`).
#[no_mangle]
pub extern "C" fn keel_call_context_user_context(ctx: *const keel_call_context, out: *mut *mut c_void) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract.
        let (c, out) = unsafe { (context(ctx)?, Out::new(out, "out")?) };
        out.set(c.user_context());
        Ok(())
    })
}

/// The tenant id of the call being served: `*data` (not NUL-terminated, UTF-8) and `*len`,
/// (NULL, 0) when the call has none. Borrowed: valid during the host function's call only.
///
/// Errors: `KEEL_ERR_NULL_POINTER` (`ctx`, `data`, `len`).
#[no_mangle]
pub extern "C" fn keel_call_context_tenant(
    ctx: *const keel_call_context,
    data: *mut *const c_char,
    len: *mut usize,
) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract.
        let c = unsafe { context(ctx) }?;
        // SAFETY: caller contract.
        unsafe { set_str(c.tenant(), data, len) }
    })
}

/// The W3C `traceparent` of the call being served: `*data` (not NUL-terminated) and `*len`,
/// (NULL, 0) when the call has none. Borrowed: valid during the host function's call only.
///
/// Errors: `KEEL_ERR_NULL_POINTER` (`ctx`, `data`, `len`).
#[no_mangle]
pub extern "C" fn keel_call_context_traceparent(
    ctx: *const keel_call_context,
    data: *mut *const c_char,
    len: *mut usize,
) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract.
        let c = unsafe { context(ctx) }?;
        // SAFETY: caller contract.
        unsafe { set_str(c.traceparent(), data, len) }
    })
}

/// The name of the plugin calling the host function: `*data` (not NUL-terminated, UTF-8)
/// and `*len`. Borrowed: valid during the host function's call only.
///
/// Errors: `KEEL_ERR_NULL_POINTER` (`ctx`, `data`, `len`).
#[no_mangle]
pub extern "C" fn keel_call_context_plugin(
    ctx: *const keel_call_context,
    data: *mut *const c_char,
    len: *mut usize,
) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract.
        let c = unsafe { context(ctx) }?;
        // SAFETY: caller contract.
        unsafe { set_str(Some(c.plugin()), data, len) }
    })
}

/// Whether the call being served has been cancelled through its cancel token (`false` for a
/// call without one) into `*out`. A long host function may poll it and fail early.
///
/// Errors: `KEEL_ERR_NULL_POINTER` (`ctx`, `out`).
#[no_mangle]
pub extern "C" fn keel_call_context_cancelled(ctx: *const keel_call_context, out: *mut bool) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract.
        let (c, out) = unsafe { (context(ctx)?, Out::new(out, "out")?) };
        out.set(c.cancelled());
        Ok(())
    })
}
