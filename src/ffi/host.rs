//! C ABI: hosts, plugins, calls and buffers: the first three sections of `keel.h`, in this
//! order (cbindgen keeps source order).

use std::ffi::c_char;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::{
    arg_bytes, arg_str, borrow, boundary, fill_buffer, free, new_boxed, new_shared, Boxed, Castable, Out, Shared,
};
use crate::error::{keel_status, Result};
use crate::host::Host;
use crate::registry::{Generation, Slot};

/// A Keel host: the registry of loaded plugins plus policy and runtimes.
///
/// Created by `keel_host_new`, released by `keel_host_free`. All `keel_host_*` functions
/// are thread-safe; lifecycle operations (load, reload, unload) are serialised internally.
pub struct keel_host {
    _opaque: [u8; 0],
}

impl Castable for keel_host {
    type Rust = Host;
    type Ownership = Boxed;
}

/// A handle to a loaded plugin (by name, stable across hot reloads).
///
/// Owned by the caller; release with `keel_plugin_free`. A handle outlives unloading: calls
/// through it then fail with `KEEL_ERR_PLUGIN_UNLOADED`. Thread-safe: one handle may be
/// used by many threads at once.
pub struct keel_plugin {
    _opaque: [u8; 0],
}

/// The handle is the plugin's `Arc<Slot>` itself: `keel_call` reaches the slot in one hop.
impl Castable for keel_plugin {
    type Rust = Slot;
    type Ownership = Shared;
}

/// A growable byte buffer that receives results (see "Output buffers" at the top of this
/// header). Owned by the caller (`keel_buffer_new` / `keel_buffer_free`) and reused across
/// calls: its memory is kept, so steady-state calls allocate nothing. Not thread-safe: use
/// one buffer per thread.
pub struct keel_buffer {
    _opaque: [u8; 0],
}

impl Castable for keel_buffer {
    type Rust = Vec<u8>;
    type Ownership = Boxed;
}

/// A resolved function of a plugin (see `keel_plugin_function`); valid for the plugin's
/// whole life, across hot reloads.
pub type keel_function = u32;

/// The plugin's current generation; `KEEL_ERR_PLUGIN_UNLOADED` once it has been unloaded.
pub(crate) fn current(slot: &Slot) -> Result<Arc<Generation>> {
    // A stateful reload's hold is not an unload: metadata readers wait for the swap.
    slot.current_settled()
        .ok_or_else(|| crate::err!(KEEL_ERR_PLUGIN_UNLOADED, "plugin '{}' has been unloaded", slot.name()))
}

// ---- Hosts ----

/// Create a host.
///
/// On success `*out` receives a new host owned by the caller (release with
/// `keel_host_free`). The host allows the capabilities `log`, `clock`, `random`, `kv:read`,
/// `kv:write` and `metrics:write` until told otherwise, and requires signatures.
///
/// Errors: `KEEL_ERR_NULL_POINTER` (`out`).
#[no_mangle]
pub extern "C" fn keel_host_new(out: *mut *mut keel_host) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract for `out`.
        let out = unsafe { Out::new(out, "out") }?;
        out.set(new_boxed::<keel_host>(Host::new()));
        Ok(())
    })
}

/// Release a host: unloads every plugin (waiting for in-flight calls up to the drain
/// timeout each) and frees the host. NULL is accepted and ignored.
///
/// Plugin handles obtained from the host stay valid (calls through them fail with
/// `KEEL_ERR_PLUGIN_UNLOADED`) and must still be released with `keel_plugin_free`.
/// Must not be called while another thread uses the host.
///
/// Errors: none (always `KEEL_OK`).
#[no_mangle]
pub extern "C" fn keel_host_free(host: *mut keel_host) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract: from keel_host_new, not yet freed, no other user.
        unsafe { free(host) };
        Ok(())
    })
}

/// Load a plugin from its manifest (Keel JSON manifest or ThemisDB `plugin.json`).
///
/// `manifest_path` is borrowed for the call. Manifest, signature, binary digest and
/// capabilities are checked before any plugin code runs; then the plugin is initialised.
/// If `out` is non-NULL it receives a new plugin handle owned by the caller
/// (release with `keel_plugin_free`). On failure nothing is loaded.
/// Thread-safe.
///
/// Errors: `KEEL_ERR_NULL_POINTER`, `KEEL_ERR_INVALID_UTF8`, `KEEL_ERR_FILE_NOT_FOUND`,
/// `KEEL_ERR_IO`, `KEEL_ERR_SYMLINK_REFUSED`, `KEEL_ERR_FILE_TOO_LARGE`, `KEEL_ERR_MANIFEST_*`,
/// the signature and digest codes (`KEEL_ERR_DIGEST_MISMATCH`, `KEEL_ERR_NO_SIGNATURE`, ...,
/// see `keel_verify`), `KEEL_ERR_ALREADY_LOADED`, `KEEL_ERR_DEPENDENCY_MISSING`,
/// `KEEL_ERR_DEPENDENCY_VERSION`, `KEEL_ERR_CAPABILITY_UNKNOWN`, `KEEL_ERR_CAPABILITY_DENIED`,
/// `KEEL_ERR_IMPORT_NOT_GRANTED`, `KEEL_ERR_IMPORT_UNDEFINED`, `KEEL_ERR_LIBRARY_LOAD`, `KEEL_ERR_SYMBOL_MISSING`,
/// `KEEL_ERR_ABI_MISMATCH`, `KEEL_ERR_PLUGIN_ABI_VIOLATION`, `KEEL_ERR_INIT_FAILED`,
/// `KEEL_ERR_WASM_COMPILE`, `KEEL_ERR_WASM_INSTANTIATE`, `KEEL_ERR_MEMORY_LIMIT`,
/// `KEEL_ERR_UNSUPPORTED`.
#[no_mangle]
pub extern "C" fn keel_host_load(
    host: *const keel_host,
    manifest_path: *const c_char,
    out: *mut *mut keel_plugin,
) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract for every pointer argument.
        let (h, out) = unsafe { (borrow(host, "host")?, Out::optional(out)) };
        // SAFETY: caller contract.
        let path = unsafe { arg_str(manifest_path, "manifest_path") }?;
        let slot = h.load(Path::new(path))?;
        if let Some(out) = out {
            out.set(new_shared::<keel_plugin>(slot));
        }
        Ok(())
    })
}

/// Load every plugin of a plugin directory as one all-or-nothing set.
///
/// Layout: one folder per plugin, `<dir>/<folder>/keel.json` (Keel manifest) or
/// `<dir>/<folder>/plugin.json` (ThemisDB manifest; `keel.json` wins when both exist).
/// A folder without a manifest is searched for plugin folders, up to 4 levels down
/// (ThemisDB's `plugins/<category>/<name>/plugin.json`); nothing below a plugin folder is.
/// Files outside plugin folders are not loaded. Names starting with `.` or ending in `~`,
/// `.tmp`, `.part`, `.swp` or `.download` are ignored, and no other `*.json` file is taken for
/// a manifest.
///
/// Every manifest is read and checked (schema, trust, capabilities, dependencies: cycles,
/// missing plugins, version ranges) before any plugin code runs; plugins are then initialised
/// in dependency order. If any of them fails, the ones this call already initialised are shut
/// down again in reverse order and the registry is exactly as before. A plugin of the
/// directory that is already loaded fails the call with `KEEL_ERR_ALREADY_LOADED` (a rescan
/// never replaces a loaded plugin; reload it instead). An empty directory loads nothing and
/// succeeds; a non-empty one in which no manifest is found fails with `KEEL_ERR_NO_MANIFEST`
/// (the message lists what was looked at).
///
/// `dir` is borrowed for the call. Thread-safe (lifecycle operations are serialised).
///
/// Errors: `KEEL_ERR_NULL_POINTER`, `KEEL_ERR_INVALID_UTF8`, `KEEL_ERR_FILE_NOT_FOUND`,
/// `KEEL_ERR_INVALID_ARGUMENT` (not a directory), `KEEL_ERR_NO_MANIFEST`,
/// `KEEL_ERR_DEPENDENCY_*`, and every error of `keel_host_load`.
#[no_mangle]
pub extern "C" fn keel_host_load_dir(host: *const keel_host, dir: *const c_char) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract for every pointer argument.
        let h = unsafe { borrow(host, "host") }?;
        // SAFETY: caller contract.
        let dir = unsafe { arg_str(dir, "dir") }?;
        h.load_dir(Path::new(dir)).map(|_| ())
    })
}

/// Hot-reload a loaded plugin from its manifest path: verify the new bytes, start the new
/// generation with the old one's saved state, swap atomically while calls keep flowing,
/// drain the old one. On failure before the swap the old generation keeps serving.
///
/// If `generation` is non-NULL it receives the new generation number. A
/// `KEEL_ERR_DRAIN_TIMEOUT` result means the swap happened but old calls (or
/// `keel_themis_lease`s) still held the old generation when the drain timeout passed.
/// Thread-safe.
///
/// Errors: `KEEL_ERR_NULL_POINTER`, `KEEL_ERR_INVALID_UTF8`, `KEEL_ERR_PLUGIN_NOT_FOUND`,
/// `KEEL_ERR_DRAIN_TIMEOUT` (after the swap), `KEEL_ERR_STATE_SAVE`, `KEEL_ERR_STATE_RESTORE`,
/// and every error of `keel_host_load` for the new generation (then the old one keeps
/// serving).
#[no_mangle]
pub extern "C" fn keel_host_reload(host: *const keel_host, name: *const c_char, generation: *mut u64) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract for every pointer argument.
        let (h, out) = unsafe { (borrow(host, "host")?, Out::optional(generation)) };
        // SAFETY: caller contract.
        let name = unsafe { arg_str(name, "name") }?;
        let g = h.reload(name)?;
        if let Some(out) = out {
            out.set(g);
        }
        Ok(())
    })
}

/// Unload a plugin by name. Waits for in-flight calls up to the drain timeout, then shuts
/// the plugin down and unmaps its code (on `KEEL_ERR_DRAIN_TIMEOUT` a Keel thread does that
/// once the last running call or lease has ended — never the caller's thread; code is never
/// freed under a running call). Thread-safe.
///
/// Errors: `KEEL_ERR_NULL_POINTER`, `KEEL_ERR_INVALID_UTF8`, `KEEL_ERR_PLUGIN_NOT_FOUND`,
/// `KEEL_ERR_HAS_DEPENDENTS` (nothing unloaded), `KEEL_ERR_DRAIN_TIMEOUT` (unloaded).
#[no_mangle]
pub extern "C" fn keel_host_unload(host: *const keel_host, name: *const c_char) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract.
        let h = unsafe { borrow(host, "host") }?;
        // SAFETY: caller contract.
        let name = unsafe { arg_str(name, "name") }?;
        h.unload(name)
    })
}

/// Unload a plugin and every loaded plugin that depends on it, directly or transitively:
/// dependents first, `name` last. (`keel_host_unload` refuses with `KEEL_ERR_HAS_DEPENDENTS`
/// instead, naming the dependents.)
///
/// `name` is borrowed for the call. Thread-safe. A `KEEL_ERR_DRAIN_TIMEOUT` result means every
/// plugin of the cascade was unloaded but at least one still had calls running when its drain
/// timeout passed (its code is released when the last of them returns).
///
/// Errors: `KEEL_ERR_NULL_POINTER`, `KEEL_ERR_INVALID_UTF8`, `KEEL_ERR_PLUGIN_NOT_FOUND`,
/// `KEEL_ERR_DRAIN_TIMEOUT` (all unloaded).
#[no_mangle]
pub extern "C" fn keel_host_unload_cascade(host: *const keel_host, name: *const c_char) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract.
        let h = unsafe { borrow(host, "host") }?;
        // SAFETY: caller contract.
        let name = unsafe { arg_str(name, "name") }?;
        h.unload_cascade(name).map(|_| ())
    })
}

/// Set how long unload and reload wait for in-flight calls (default 5000 ms). Thread-safe.
///
/// Errors: `KEEL_ERR_NULL_POINTER` (`host`).
#[no_mangle]
pub extern "C" fn keel_host_set_drain_timeout_ms(host: *const keel_host, timeout_ms: u64) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract.
        let h = unsafe { borrow(host, "host") }?;
        h.set_drain_timeout(Duration::from_millis(timeout_ms));
        Ok(())
    })
}

// ---- Plugins ----

/// Look up a loaded plugin by name. On success `*out` receives a new handle owned by the
/// caller (release with `keel_plugin_free`). Resolve once, call many times. Thread-safe,
/// lock-free.
///
/// Errors: `KEEL_ERR_NULL_POINTER`, `KEEL_ERR_INVALID_UTF8`, `KEEL_ERR_PLUGIN_NOT_FOUND`.
#[no_mangle]
pub extern "C" fn keel_plugin_get(
    host: *const keel_host,
    name: *const c_char,
    out: *mut *mut keel_plugin,
) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract for every pointer argument.
        let (h, out) = unsafe { (borrow(host, "host")?, Out::new(out, "out")?) };
        // SAFETY: caller contract.
        let name = unsafe { arg_str(name, "name") }?;
        out.set(new_shared::<keel_plugin>(h.get(name)?));
        Ok(())
    })
}

/// Release a plugin handle. NULL is accepted and ignored. Does not unload the plugin.
///
/// Errors: none (always `KEEL_OK`).
#[no_mangle]
pub extern "C" fn keel_plugin_free(plugin: *mut keel_plugin) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract: a handle from Keel, not yet freed, no other user.
        unsafe { free(plugin) };
        Ok(())
    })
}

/// Resolve a function by name. `*out` receives an id valid for this plugin across hot
/// reloads (if a later generation lacks the function, calls fail with
/// `KEEL_ERR_FUNCTION_NOT_FOUND`). Thread-safe.
///
/// Errors: `KEEL_ERR_NULL_POINTER`, `KEEL_ERR_INVALID_UTF8`, `KEEL_ERR_PLUGIN_UNLOADED`,
/// `KEEL_ERR_FUNCTION_NOT_FOUND`, `KEEL_ERR_INVALID_ARGUMENT` (more than 256 distinct names
/// resolved for the plugin).
#[no_mangle]
pub extern "C" fn keel_plugin_function(
    plugin: *const keel_plugin,
    name: *const c_char,
    out: *mut keel_function,
) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract for every pointer argument.
        let (slot, out) = unsafe { (borrow(plugin, "plugin")?, Out::new(out, "out")?) };
        // SAFETY: caller contract.
        let name = unsafe { arg_str(name, "name") }?;
        out.set(slot.resolve(name)?);
        Ok(())
    })
}

/// The current generation number of a plugin (1 after load, +1 per successful reload).
/// Thread-safe.
///
/// Errors: `KEEL_ERR_NULL_POINTER`, `KEEL_ERR_PLUGIN_UNLOADED`.
#[no_mangle]
pub extern "C" fn keel_plugin_generation(plugin: *const keel_plugin, out: *mut u64) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract for every pointer argument.
        let (slot, out) = unsafe { (borrow(plugin, "plugin")?, Out::new(out, "out")?) };
        out.set(current(slot)?.number);
        Ok(())
    })
}

// ---- Calls and buffers ----

/// Call a plugin function.
///
/// `input` (`input_len` bytes; may be NULL when `input_len` is 0) is borrowed for the call.
/// The result goes into `out` as every output buffer's does (see "Output buffers" at the top
/// of this header: the result on success, empty on failure, memory kept; once it is large
/// enough, calls allocate nothing).
///
/// Thread-safe: any number of threads may call the same plugin at once, each with its own
/// buffer. The call takes no lock (plugins that declare themselves serial are serialised
/// by their own lock) and runs concurrently with reloads: it completes in the generation
/// it started in.
///
/// Errors: `KEEL_ERR_NULL_POINTER`, `KEEL_ERR_PLUGIN_UNLOADED`, `KEEL_ERR_FUNCTION_NOT_FOUND`,
/// `KEEL_ERR_CALL_FAILED` (the plugin returned an error; its text is in the last error
/// message), `KEEL_ERR_OUTPUT_TOO_LARGE`, `KEEL_ERR_PLUGIN_ABI_VIOLATION`,
/// `KEEL_ERR_CAPABILITY_DENIED`, and for WASM plugins `KEEL_ERR_WASM_TRAP`,
/// `KEEL_ERR_MEMORY_LIMIT`, `KEEL_ERR_CPU_BUDGET`, `KEEL_ERR_DEADLINE`.
#[no_mangle]
pub extern "C" fn keel_call(
    plugin: *const keel_plugin,
    function: keel_function,
    input: *const u8,
    input_len: usize,
    out: *mut keel_buffer,
) -> keel_status {
    fill_buffer(out, |out| {
        // SAFETY: caller contract for every pointer argument.
        let (slot, input) = unsafe { (borrow(plugin, "plugin")?, arg_bytes(input, input_len, "input")?) };
        slot.call(function, input, out)
    })
}

/// Create an empty buffer. `*out` receives a buffer owned by the caller (release with
/// `keel_buffer_free`).
///
/// Errors: `KEEL_ERR_NULL_POINTER` (`out`).
#[no_mangle]
pub extern "C" fn keel_buffer_new(out: *mut *mut keel_buffer) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract for `out`.
        let out = unsafe { Out::new(out, "out") }?;
        out.set(new_boxed::<keel_buffer>(Vec::new()));
        Ok(())
    })
}

/// Release a buffer. NULL is accepted and ignored.
///
/// Errors: none (always `KEEL_OK`).
#[no_mangle]
pub extern "C" fn keel_buffer_free(buf: *mut keel_buffer) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract: from keel_buffer_new, not yet freed, no other user.
        unsafe { free(buf) };
        Ok(())
    })
}

/// Borrow a buffer's content: `*data` points to `*len` bytes owned by the buffer, valid
/// until the buffer is next written to or freed. `*data` may be NULL when `*len` is 0.
///
/// Errors: `KEEL_ERR_NULL_POINTER`.
#[no_mangle]
pub extern "C" fn keel_buffer_data(buf: *const keel_buffer, data: *mut *const u8, len: *mut usize) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract for every pointer argument.
        let (b, data, len) = unsafe { (borrow(buf, "buf")?, Out::new(data, "data")?, Out::new(len, "len")?) };
        data.set(if b.is_empty() { std::ptr::null() } else { b.as_ptr() });
        len.set(b.len());
        Ok(())
    })
}

// ---- Other functions on buffers (metrics) ----

/// Write the OpenMetrics text exposition (Prometheus-compatible; serve it with
/// `Content-Type: application/openmetrics-text; version=1.0.0; charset=utf-8`) of every
/// loaded plugin's metrics into `out` (an output buffer): Keel's `keel_plugin_*`
/// families (calls, errors, loads, reloads, reload failures, drain timeouts, health
/// restarts, load duration, generation, sampled call-latency histogram) and the
/// ThemisDB-compatible `plugin_*` gauges. Counters are read at this moment; nothing is
/// accumulated per scrape. Thread-safe (for distinct buffers).
///
/// Errors: `KEEL_ERR_NULL_POINTER`.
#[no_mangle]
pub extern "C" fn keel_host_metrics_text(host: *const keel_host, out: *mut keel_buffer) -> keel_status {
    fill_buffer(out, |out| {
        // SAFETY: caller contract.
        let h = unsafe { borrow(host, "host") }?;
        out.clear();
        out.extend_from_slice(h.metrics_text().as_bytes());
        Ok(())
    })
}
