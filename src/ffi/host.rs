//! C ABI: hosts, plugins, calls and buffers.

use std::ffi::c_char;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::{arg_bytes, arg_out, arg_ref, arg_str, boundary};
use crate::error::{keel_status, Result};
use crate::host::Host;
use crate::registry::{Generation, Slot};

/// A Keel host: the registry of loaded plugins plus policy and runtimes.
///
/// Created by `keel_host_new`, released by `keel_host_free`. All `keel_host_*` functions
/// are thread-safe; lifecycle operations (load, reload, unload) are serialised internally.
pub struct keel_host {
    pub(crate) host: Host,
}

/// A handle to a loaded plugin (by name, stable across hot reloads).
///
/// Owned by the caller; release with `keel_plugin_free`. A handle outlives unloading: calls
/// through it then fail with `KEEL_ERR_PLUGIN_UNLOADED`. Thread-safe: one handle may be
/// used by many threads at once.
pub struct keel_plugin {
    pub(crate) slot: Arc<Slot>,
}

impl keel_plugin {
    /// The plugin's current generation; `KEEL_ERR_PLUGIN_UNLOADED` once it has been unloaded.
    pub(crate) fn current(&self) -> Result<Arc<Generation>> {
        self.slot.current().ok_or_else(|| {
            crate::err!(
                KEEL_ERR_PLUGIN_UNLOADED,
                "plugin '{}' has been unloaded",
                self.slot.name()
            )
        })
    }
}

/// A growable byte buffer that receives call results. Owned by the caller
/// (`keel_buffer_new` / `keel_buffer_free`) and reused across calls: its memory is kept, so
/// steady-state calls allocate nothing. Not thread-safe: use one buffer per thread.
pub struct keel_buffer {
    pub(crate) data: Vec<u8>,
}

/// A resolved function of a plugin (see `keel_plugin_function`); valid for the plugin's
/// whole life, across hot reloads.
pub type keel_function = u32;

/// Create a host.
///
/// On success `*out` receives a new host owned by the caller (release with
/// `keel_host_free`). The host allows the capabilities `log`, `clock`, `random`, `kv:read`,
/// `kv:write` and `metrics:write` until told otherwise, and requires signatures.
#[no_mangle]
pub extern "C" fn keel_host_new(out: *mut *mut keel_host) -> keel_status {
    boundary(|| {
        let out = arg_out(out, "out")?;
        let b = Box::new(keel_host { host: Host::new() });
        // SAFETY: checked non-null.
        unsafe { *out = Box::into_raw(b) };
        Ok(())
    })
}

/// Release a host: unloads every plugin (waiting for in-flight calls up to the drain
/// timeout each) and frees the host. NULL is accepted and ignored.
///
/// Plugin handles obtained from the host stay valid (calls through them fail with
/// `KEEL_ERR_PLUGIN_UNLOADED`) and must still be released with `keel_plugin_free`.
/// Must not be called while another thread uses the host.
#[no_mangle]
pub extern "C" fn keel_host_free(host: *mut keel_host) -> keel_status {
    boundary(|| {
        if !host.is_null() {
            // SAFETY: pointer from keel_host_new, not yet freed (caller contract).
            drop(unsafe { Box::from_raw(host) });
        }
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
#[no_mangle]
pub extern "C" fn keel_host_load(
    host: *const keel_host,
    manifest_path: *const c_char,
    out: *mut *mut keel_plugin,
) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract for every pointer argument.
        let h = unsafe { arg_ref(host, "host") }?;
        let path = unsafe { arg_str(manifest_path, "manifest_path") }?;
        let slot = h.host.load(Path::new(path))?;
        if !out.is_null() {
            // SAFETY: checked non-null.
            unsafe { *out = Box::into_raw(Box::new(keel_plugin { slot })) };
        }
        Ok(())
    })
}

/// Hot-reload a loaded plugin from its manifest path: verify the new bytes, start the new
/// generation with the old one's saved state, swap atomically while calls keep flowing,
/// drain the old one. On failure before the swap the old generation keeps serving.
///
/// If `generation` is non-NULL it receives the new generation number. A
/// `KEEL_ERR_DRAIN_TIMEOUT` result means the swap happened but old calls were still running
/// when the drain timeout passed. Thread-safe.
#[no_mangle]
pub extern "C" fn keel_host_reload(host: *const keel_host, name: *const c_char, generation: *mut u64) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract.
        let h = unsafe { arg_ref(host, "host") }?;
        let name = unsafe { arg_str(name, "name") }?;
        let g = h.host.reload(name)?;
        if !generation.is_null() {
            // SAFETY: checked non-null.
            unsafe { *generation = g };
        }
        Ok(())
    })
}

/// Unload a plugin by name. Waits for in-flight calls up to the drain timeout, then shuts
/// the plugin down and unmaps its code (on `KEEL_ERR_DRAIN_TIMEOUT` a Keel thread does that
/// once the last running call has returned — never the caller's thread; code is never freed
/// under a running call). Thread-safe.
#[no_mangle]
pub extern "C" fn keel_host_unload(host: *const keel_host, name: *const c_char) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract.
        let h = unsafe { arg_ref(host, "host") }?;
        let name = unsafe { arg_str(name, "name") }?;
        h.host.unload(name)
    })
}

/// Set how long unload and reload wait for in-flight calls (default 5000 ms). Thread-safe.
#[no_mangle]
pub extern "C" fn keel_host_set_drain_timeout_ms(host: *const keel_host, timeout_ms: u64) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract.
        let h = unsafe { arg_ref(host, "host") }?;
        h.host.set_drain_timeout(Duration::from_millis(timeout_ms));
        Ok(())
    })
}

/// Write the OpenMetrics text exposition (Prometheus-compatible; serve it with
/// `Content-Type: application/openmetrics-text; version=1.0.0; charset=utf-8`) of every
/// loaded plugin's metrics into `out`, replacing its content: Keel's `keel_plugin_*`
/// families (calls, errors, loads, reloads, reload failures, drain timeouts, health
/// restarts, load duration, generation, sampled call-latency histogram) and the
/// ThemisDB-compatible `plugin_*` gauges. Counters are read at this moment; nothing is
/// accumulated per scrape. `out` is borrowed. Thread-safe (for distinct buffers).
#[no_mangle]
pub extern "C" fn keel_host_metrics_text(host: *const keel_host, out: *mut keel_buffer) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract.
        let h = unsafe { arg_ref(host, "host") }?;
        let out = arg_out(out, "out")?;
        let text = h.host.metrics_text();
        // SAFETY: checked non-null; caller owns the buffer exclusively for the call.
        let buf = unsafe { &mut *out };
        buf.data.clear();
        buf.data.extend_from_slice(text.as_bytes());
        Ok(())
    })
}

/// Look up a loaded plugin by name. On success `*out` receives a new handle owned by the
/// caller (release with `keel_plugin_free`). Resolve once, call many times. Thread-safe,
/// lock-free.
#[no_mangle]
pub extern "C" fn keel_plugin_get(
    host: *const keel_host,
    name: *const c_char,
    out: *mut *mut keel_plugin,
) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract.
        let h = unsafe { arg_ref(host, "host") }?;
        let name = unsafe { arg_str(name, "name") }?;
        let out = arg_out(out, "out")?;
        let slot = h.host.get(name)?;
        // SAFETY: checked non-null.
        unsafe { *out = Box::into_raw(Box::new(keel_plugin { slot })) };
        Ok(())
    })
}

/// Release a plugin handle. NULL is accepted and ignored. Does not unload the plugin.
#[no_mangle]
pub extern "C" fn keel_plugin_free(plugin: *mut keel_plugin) -> keel_status {
    boundary(|| {
        if !plugin.is_null() {
            // SAFETY: pointer from Keel, not yet freed (caller contract).
            drop(unsafe { Box::from_raw(plugin) });
        }
        Ok(())
    })
}

/// Resolve a function by name. `*out` receives an id valid for this plugin across hot
/// reloads (if a later generation lacks the function, calls fail with
/// `KEEL_ERR_FUNCTION_NOT_FOUND`). Thread-safe.
#[no_mangle]
pub extern "C" fn keel_plugin_function(
    plugin: *const keel_plugin,
    name: *const c_char,
    out: *mut keel_function,
) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract.
        let p = unsafe { arg_ref(plugin, "plugin") }?;
        let name = unsafe { arg_str(name, "name") }?;
        let out = arg_out(out, "out")?;
        let id = p.slot.resolve(name)?;
        // SAFETY: checked non-null.
        unsafe { *out = id };
        Ok(())
    })
}

/// The current generation number of a plugin (1 after load, +1 per successful reload).
/// Thread-safe.
#[no_mangle]
pub extern "C" fn keel_plugin_generation(plugin: *const keel_plugin, out: *mut u64) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract.
        let p = unsafe { arg_ref(plugin, "plugin") }?;
        let out = arg_out(out, "out")?;
        let g = p.current()?;
        // SAFETY: checked non-null.
        unsafe { *out = g.number };
        Ok(())
    })
}

/// Call a plugin function.
///
/// `input` (`input_len` bytes; may be NULL when `input_len` is 0) is borrowed for the call.
/// The result replaces the content of `out`, which the caller owns and may reuse: once it
/// is large enough, calls allocate nothing. On failure `out` holds no result.
///
/// Thread-safe: any number of threads may call the same plugin at once, each with its own
/// buffer. The call takes no lock (plugins that declare themselves serial are serialised
/// by their own lock) and runs concurrently with reloads: it completes in the generation
/// it started in.
#[no_mangle]
pub extern "C" fn keel_call(
    plugin: *const keel_plugin,
    function: keel_function,
    input: *const u8,
    input_len: usize,
    out: *mut keel_buffer,
) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract.
        let p = unsafe { arg_ref(plugin, "plugin") }?;
        let input = unsafe { arg_bytes(input, input_len, "input") }?;
        let out = arg_out(out, "out")?;
        // SAFETY: checked non-null; the caller owns the buffer exclusively for the call.
        let buf = unsafe { &mut *out };
        p.slot.call(function, input, &mut buf.data)
    })
}

/// Create an empty buffer. `*out` receives a buffer owned by the caller (release with
/// `keel_buffer_free`).
#[no_mangle]
pub extern "C" fn keel_buffer_new(out: *mut *mut keel_buffer) -> keel_status {
    boundary(|| {
        let out = arg_out(out, "out")?;
        // SAFETY: checked non-null.
        unsafe { *out = Box::into_raw(Box::new(keel_buffer { data: Vec::new() })) };
        Ok(())
    })
}

/// Release a buffer. NULL is accepted and ignored.
#[no_mangle]
pub extern "C" fn keel_buffer_free(buf: *mut keel_buffer) -> keel_status {
    boundary(|| {
        if !buf.is_null() {
            // SAFETY: pointer from keel_buffer_new, not yet freed (caller contract).
            drop(unsafe { Box::from_raw(buf) });
        }
        Ok(())
    })
}

/// Borrow a buffer's content: `*data` points to `*len` bytes owned by the buffer, valid
/// until the buffer is next written to or freed. `*data` may be NULL when `*len` is 0.
#[no_mangle]
pub extern "C" fn keel_buffer_data(buf: *const keel_buffer, data: *mut *const u8, len: *mut usize) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract.
        let b = unsafe { arg_ref(buf, "buf") }?;
        let data = arg_out(data, "data")?;
        let len = arg_out(len, "len")?;
        // SAFETY: checked non-null.
        unsafe {
            *data = if b.data.is_empty() {
                std::ptr::null()
            } else {
                b.data.as_ptr()
            };
            *len = b.data.len();
        }
        Ok(())
    })
}
