//! C ABI: RPC endpoints plugins register (capability `rpc:register`). Plugin-defined metrics
//! (capability `metrics:write`) need no function of their own: they are in
//! `keel_host_metrics_text`'s exposition.

use std::ffi::c_char;

use crate::error::keel_status;

use super::host::{keel_buffer, keel_function, keel_host, keel_plugin};
use super::{arg_bytes, arg_str, borrow, boundary, fill_buffer, new_shared, Out};

// ---- RPC endpoints ----

/// List the RPC endpoints the loaded plugins have registered, as JSON into `out` (an output
/// buffer): an array sorted by endpoint name,
/// `[{"endpoint": "...", "plugin": "...", "function": "..."}, ...]` (`[]` when there are
/// none). Endpoints are registered by plugins (host-API `rpc_register`, WASM import
/// `keel.rpc_register`) during init or a call, and removed when their plugin unloads.
/// Thread-safe (for distinct buffers).
///
/// Errors: `KEEL_ERR_NULL_POINTER`.
#[no_mangle]
pub extern "C" fn keel_host_rpc_list(host: *const keel_host, out: *mut keel_buffer) -> keel_status {
    fill_buffer(out, |out| {
        // SAFETY: caller contract.
        let h = unsafe { borrow(host, "host") }?;
        out.clear();
        serde_json::to_writer(&mut *out, &h.rpc_endpoints())
            .map_err(|e| crate::err!(KEEL_ERR_INTERNAL, "encoding the endpoint list: {e}"))?;
        Ok(())
    })
}

/// Resolve an RPC endpoint to the plugin and function it is bound to, for repeated calls
/// through `keel_call` (the normal lock-free call path). `endpoint` is borrowed for the call.
/// On success `*plugin_out` receives a new plugin handle owned by the caller (release with
/// `keel_plugin_free`) and `*function_out` the function's id. The binding is read now: if the
/// plugin later re-registers the endpoint for another function, resolve again; after an
/// unload calls through the handle fail with `KEEL_ERR_PLUGIN_UNLOADED`. Thread-safe.
///
/// Errors: `KEEL_ERR_NULL_POINTER`, `KEEL_ERR_INVALID_UTF8`, `KEEL_ERR_RPC_ENDPOINT_NOT_FOUND`,
/// `KEEL_ERR_PLUGIN_UNLOADED`, `KEEL_ERR_FUNCTION_NOT_FOUND` (a WASM plugin registered a
/// function it does not export), `KEEL_ERR_INVALID_ARGUMENT`.
#[no_mangle]
pub extern "C" fn keel_host_rpc_resolve(
    host: *const keel_host,
    endpoint: *const c_char,
    plugin_out: *mut *mut keel_plugin,
    function_out: *mut keel_function,
) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract for every pointer argument.
        let (h, p_out, f_out) = unsafe {
            (
                borrow(host, "host")?,
                Out::new(plugin_out, "plugin_out")?,
                Out::new(function_out, "function_out")?,
            )
        };
        // SAFETY: caller contract.
        let endpoint = unsafe { arg_str(endpoint, "endpoint") }?;
        let (slot, id) = h.rpc_resolve(endpoint)?;
        p_out.set(new_shared::<keel_plugin>(slot));
        f_out.set(id);
        Ok(())
    })
}

/// Invoke an RPC endpoint: resolve it (as `keel_host_rpc_resolve`) and call the plugin's
/// function with `input` (`input_len` bytes; may be NULL when 0, borrowed for the call)
/// through the normal call path; the result goes into `out` like `keel_call`'s. Thread-safe
/// (each thread with its own buffer) and lock-free: the endpoint table and the plugin
/// registry are read with atomic loads; the function id is resolved once per binding.
///
/// Errors: those of `keel_host_rpc_resolve` and of `keel_call`.
#[no_mangle]
pub extern "C" fn keel_host_rpc_call(
    host: *const keel_host,
    endpoint: *const c_char,
    input: *const u8,
    input_len: usize,
    out: *mut keel_buffer,
) -> keel_status {
    fill_buffer(out, |out| {
        // SAFETY: caller contract for every pointer argument.
        let (h, input) = unsafe { (borrow(host, "host")?, arg_bytes(input, input_len, "input")?) };
        // SAFETY: caller contract.
        let endpoint = unsafe { arg_str(endpoint, "endpoint") }?;
        h.rpc_call(endpoint, input, out)
    })
}
