//! Native plugins: shared libraries exporting Keel's C vtable (`include/keel/keel_plugin.h`).
//!
//! The library is `dlopen`ed from the artifact's sealed memfd (`/proc/self/fd/N`), never
//! from the path the manifest names. The memfd stays open while the library is mapped, so
//! that no other library can be loaded under the same `/proc/self/fd/N` name (glibc matches
//! already-loaded objects by name first).

use std::ffi::{c_char, c_void};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::artifact::Verified;
use crate::capability::Capabilities;
use crate::error::{keel_status, Result};
pub(crate) use crate::runtime::output::max_output;
use crate::runtime::output::WRITE_REFUSED;
pub use crate::runtime::output::{
    output_write, with_output, with_output_checked, OutputSink, RawOutput, DEFAULT_MAX_OUTPUT,
};
pub use crate::runtime::shared_lib::SealedLibrary;
use crate::runtime::{Health, HostServices, Instance, LoadContext, LogLevel};
pub use crate::services::hostfn::{HostFn, HostOutput};
use crate::services::plugin_metrics::{MetricKind, PluginMetricSet};
use crate::services::sinks::{check_table, encode_entry, last_sink_error, ScanEnd, SINK_CAPABILITIES};
use crate::services::{KvTarget, SinkError};
use crate::{bail, err};

/// The ABI version this host speaks (`KEEL_PLUGIN_ABI_VERSION`).
pub const ABI_VERSION: u32 = 1;
/// The exported entry symbol.
pub const ENTRY_SYMBOL: &[u8] = b"keel_plugin_entry\0";
/// `KEEL_PLUGIN_FLAG_SERIAL`.
pub const FLAG_SERIAL: u32 = 1;
/// A vtable may list at most this many functions (`function_count`); more is refused.
pub const MAX_FUNCTIONS: u32 = 4096;
/// A function name may be at most this many bytes (without the NUL); longer is refused.
pub const MAX_FUNCTION_NAME: usize = 255;
/// What a host-API entry returns when the embedder's service failed, refused or panicked
/// (a panic is caught; the plugin sees this status, and the message through `sink_error`).
pub const API_PANICKED: i32 = -3;

/// Mirror of `keel_host_api`.
#[repr(C)]
pub struct RawHostApi {
    pub abi_version: u32,
    pub struct_size: u32,
    pub ctx: *mut c_void,
    pub log: Option<unsafe extern "C" fn(*mut c_void, i32, *const c_char, usize)>,
    pub now_unix_nanos: Option<unsafe extern "C" fn(*mut c_void) -> i64>,
    pub random_bytes: Option<unsafe extern "C" fn(*mut c_void, *mut u8, usize) -> i32>,
    pub kv_get: Option<unsafe extern "C" fn(*mut c_void, *const u8, usize, *const RawOutput) -> i32>,
    pub kv_put: Option<unsafe extern "C" fn(*mut c_void, *const u8, usize, *const u8, usize) -> i32>,
    pub kv_delete: Option<unsafe extern "C" fn(*mut c_void, *const u8, usize) -> i32>,
    pub cancelled: Option<unsafe extern "C" fn(*mut c_void) -> i32>,
    // ---- sinks ----
    pub kv_scan: Option<unsafe extern "C" fn(*mut c_void, *const u8, usize, *const RawOutput) -> i32>,
    pub storage_get:
        Option<unsafe extern "C" fn(*mut c_void, *const c_char, *const u8, usize, *const RawOutput) -> i32>,
    pub storage_put:
        Option<unsafe extern "C" fn(*mut c_void, *const c_char, *const u8, usize, *const u8, usize) -> i32>,
    pub storage_delete: Option<unsafe extern "C" fn(*mut c_void, *const c_char, *const u8, usize) -> i32>,
    pub storage_scan:
        Option<unsafe extern "C" fn(*mut c_void, *const c_char, *const u8, usize, *const RawOutput) -> i32>,
    pub sink_error: Option<unsafe extern "C" fn(*mut c_void, *const RawOutput) -> i32>,
    // ---- capmetrics (appended; a plugin checks `struct_size` before reading them) ----
    pub metric_define: Option<MetricDefineFn>,
    pub metric_add: Option<MetricUpdateFn>,
    pub metric_set: Option<MetricUpdateFn>,
    pub metric_observe: Option<MetricUpdateFn>,
    pub rpc_register: Option<RpcRegisterFn>,
    // ---- hostfn: host functions defined by the embedder ----
    pub host_fn_lookup: Option<unsafe extern "C" fn(*mut c_void, *const c_char, *const c_char) -> *const HostFn>,
    pub host_fn_call:
        Option<unsafe extern "C" fn(*mut c_void, *const HostFn, *const u8, usize, *const RawOutput) -> i32>,
}

/// `keel_host_api.metric_define`.
pub type MetricDefineFn = unsafe extern "C" fn(
    *mut c_void,
    i32,
    *const c_char,
    usize,
    *const c_char,
    usize,
    *const f64,
    usize,
    *mut u32,
) -> i32;
/// `keel_host_api.metric_add` / `metric_set` / `metric_observe`.
pub type MetricUpdateFn = unsafe extern "C" fn(*mut c_void, u32, f64) -> i32;
/// `keel_host_api.rpc_register`.
pub type RpcRegisterFn = unsafe extern "C" fn(*mut c_void, *const c_char, usize, *const c_char, usize) -> i32;

/// Mirror of `keel_plugin_vtable`.
#[repr(C)]
pub struct RawVtable {
    pub abi_version: u32,
    pub struct_size: u32,
    pub flags: u32,
    pub name: *const c_char,
    pub version: *const c_char,
    pub functions: *const *const c_char,
    pub function_count: u32,
    pub init: Option<
        unsafe extern "C" fn(*const c_char, usize, *const RawHostApi, *mut *mut c_void, *const RawOutput) -> i32,
    >,
    pub call: Option<unsafe extern "C" fn(*mut c_void, u32, *const u8, usize, *const RawOutput) -> i32>,
    pub shutdown: Option<unsafe extern "C" fn(*mut c_void)>,
    pub save_state: Option<unsafe extern "C" fn(*mut c_void, *const RawOutput) -> i32>,
    pub restore_state: Option<unsafe extern "C" fn(*mut c_void, *const u8, usize) -> i32>,
    pub health: Option<unsafe extern "C" fn(*mut c_void) -> i32>,
    pub restore_state_versioned: Option<unsafe extern "C" fn(*mut c_void, *const u8, usize, *const c_char) -> i32>,
}

/// The fields every ABI-1 vtable has (up to and including `shutdown`).
const MIN_VTABLE_SIZE: usize = std::mem::offset_of!(RawVtable, save_state);

/// What the host API entries reach through `ctx`.
struct HostApiCtx {
    plugin: String,
    services: HostServices,
    /// The plugin's metric set (`metrics:write` granted), shared by its generations.
    metrics: Option<Arc<PluginMetricSet>>,
    /// For `rpc:register`: the plugin's name, the generation being loaded and its functions.
    rpc_plugin: Arc<str>,
    generation: u64,
    functions: Vec<String>,
    /// The host functions this plugin may use, bound at load (see `services::hostfn`).
    host_fns: Vec<Arc<HostFn>>,
}

/// Run a host-API entry's body behind a panic boundary: a panic in the embedder's service
/// (log sink, key-value store) or in Keel becomes `on_panic` for the plugin instead of
/// unwinding into C.
#[inline]
fn guarded<R>(on_panic: R, f: impl FnOnce() -> R) -> R {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(on_panic)
}

/// # Safety
/// `ctx` is the `HostApiCtx` of the table handed to the plugin (or NULL); `msg` points to
/// `len` readable bytes (or is NULL with `len == 0`).
unsafe extern "C" fn api_log(ctx: *mut c_void, level: i32, msg: *const c_char, len: usize) {
    if ctx.is_null() || (msg.is_null() && len != 0) {
        return;
    }
    // SAFETY: ctx is the HostApiCtx boxed in the NativeInstance, alive until shutdown returns.
    let c = unsafe { &*(ctx as *const HostApiCtx) };
    // SAFETY: per the ABI the plugin passes `len` readable bytes (non-NULL checked above).
    let Some(bytes) = (unsafe { bytes(msg as *const u8, len) }) else {
        return;
    };
    guarded((), || {
        let text = String::from_utf8_lossy(bytes);
        c.services.log(&c.plugin, LogLevel::from_i32(level), &text)
    })
}

unsafe extern "C" fn api_now(_ctx: *mut c_void) -> i64 {
    guarded(0, || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0)
    })
}

/// # Safety
/// `buf` points to `len` writable bytes (or is NULL with `len == 0`).
unsafe extern "C" fn api_random(_ctx: *mut c_void, buf: *mut u8, len: usize) -> i32 {
    if buf.is_null() && len != 0 {
        return -1;
    }
    if len == 0 {
        return 0;
    }
    // SAFETY: per the ABI `buf` holds `len` writable bytes (non-NULL checked above).
    let out = unsafe { std::slice::from_raw_parts_mut(buf, len) };
    guarded(API_PANICKED, || match rand_core::OsRng.try_fill_bytes(out) {
        Ok(()) => 0,
        Err(_) => -1,
    })
}

/// # Safety
/// `p` points to `len` readable bytes that stay valid for `'a`, or is NULL.
unsafe fn bytes<'a>(p: *const u8, len: usize) -> Option<&'a [u8]> {
    if len == 0 {
        Some(&[])
    } else if p.is_null() {
        None
    } else {
        // SAFETY: non-NULL, and the caller guarantees `len` readable bytes.
        Some(unsafe { std::slice::from_raw_parts(p, len) })
    }
}

/// # Safety
/// `ctx` is the plugin's `HostApiCtx`; `key` points to `key_len` readable bytes; `out` is a
/// live `keel_output`.
unsafe extern "C" fn api_kv_get(ctx: *mut c_void, key: *const u8, key_len: usize, out: *const RawOutput) -> i32 {
    if ctx.is_null() || out.is_null() {
        return -1;
    }
    // SAFETY: ctx is the HostApiCtx boxed in the NativeInstance, alive until shutdown returns.
    let c = unsafe { &*(ctx as *const HostApiCtx) };
    // SAFETY: per the ABI.
    let Some(key) = (unsafe { bytes(key, key_len) }) else {
        return -1;
    };
    // SAFETY: `out` is the live keel_output the plugin was given (non-NULL checked above).
    unsafe { get_into(c, KvTarget::kv(&c.plugin), key, &*out) }
}

/// A get's result for the plugin: 0 found (value written to `out`), 1 absent, -2 `out`
/// refused the value, [`API_PANICKED`] the sink failed (message for `sink_error`).
///
/// # Safety
/// `out` is a live `keel_output`.
unsafe fn get_into(c: &HostApiCtx, at: KvTarget<'_>, key: &[u8], out: &RawOutput) -> i32 {
    let v = match guarded(Err(SinkError::new("panic")), || c.services.kv_get(at, key)) {
        Err(_) => return API_PANICKED,
        Ok(None) => return 1,
        Ok(Some(v)) => v,
    };
    // SAFETY: calling the output's own write with its own ctx and a valid slice.
    if unsafe { (out.write)(out.ctx, v.as_ptr(), v.len()) } != 0 {
        return -2;
    }
    0
}

/// A scan for the plugin: entries (see `services::sinks::encode_entry`) written to `out`,
/// one write per entry. 0 complete, 2 truncated (a limit or `out` refused an entry),
/// [`API_PANICKED`] the sink failed.
///
/// # Safety
/// `out` is a live `keel_output`.
unsafe fn scan_into(c: &HostApiCtx, at: KvTarget<'_>, prefix: &[u8], out: &RawOutput) -> i32 {
    let mut buf = Vec::new();
    let r = guarded(Err(SinkError::new("panic")), || {
        c.services.kv_scan(at, prefix, usize::MAX, |k, v| {
            encode_entry(&mut buf, k, v);
            // SAFETY: calling the output's own write with its own ctx and a valid slice.
            unsafe { (out.write)(out.ctx, buf.as_ptr(), buf.len()) == 0 }
        })
    });
    match r {
        Ok(ScanEnd::Complete) => 0,
        Ok(ScanEnd::Truncated) => 2,
        Err(_) => API_PANICKED,
    }
}

/// # Safety
/// `ctx` is the plugin's `HostApiCtx`; `prefix` points to `prefix_len` readable bytes; `out`
/// is a live `keel_output`.
unsafe extern "C" fn api_kv_scan(ctx: *mut c_void, prefix: *const u8, prefix_len: usize, out: *const RawOutput) -> i32 {
    if ctx.is_null() || out.is_null() {
        return -1;
    }
    // SAFETY: ctx is the HostApiCtx boxed in the NativeInstance, alive until shutdown returns.
    let c = unsafe { &*(ctx as *const HostApiCtx) };
    // SAFETY: per the ABI.
    let Some(prefix) = (unsafe { bytes(prefix, prefix_len) }) else {
        return -1;
    };
    // SAFETY: `out` is the live keel_output the plugin was given (non-NULL checked above).
    unsafe { scan_into(c, KvTarget::kv(&c.plugin), prefix, &*out) }
}

/// A table name argument: NUL-terminated, checked by `services::sinks::check_table`.
///
/// # Safety
/// `table` is NULL or a NUL-terminated string.
unsafe fn table_arg<'a>(table: *const c_char) -> Option<&'a str> {
    if table.is_null() {
        return None;
    }
    // SAFETY: per the ABI a NUL-terminated string (native plugins run in-process: their
    // pointers are trusted as for every other host-API argument).
    let raw = unsafe { std::ffi::CStr::from_ptr(table) }.to_bytes();
    match check_table(raw) {
        Ok(t) => Some(t),
        Err(e) => {
            record_bad_table(e);
            None
        }
    }
}

#[cold]
fn record_bad_table(e: String) {
    crate::services::sinks::record_error(&SinkError(e));
}

/// The arguments every `storage_*` entry starts with: the plugin's context, the table and one
/// byte string (key or prefix); `None` for a NULL or refused one (the entry returns -1).
///
/// # Safety
/// `ctx` is NULL or the plugin's `HostApiCtx`; `table` NULL or NUL-terminated; `data`
/// points to `len` readable bytes (or `len` is 0).
unsafe fn storage_args<'a>(
    ctx: *mut c_void,
    table: *const c_char,
    data: *const u8,
    len: usize,
) -> Option<(&'a HostApiCtx, &'a str, &'a [u8])> {
    if ctx.is_null() {
        return None;
    }
    // SAFETY: ctx is the HostApiCtx boxed in the NativeInstance, alive until shutdown returns.
    let c = unsafe { &*(ctx as *const HostApiCtx) };
    // SAFETY: per the ABI (see the function's contract).
    let table = unsafe { table_arg(table) }?;
    // SAFETY: per the ABI (see the function's contract).
    let data = unsafe { bytes(data, len) }?;
    Some((c, table, data))
}

/// # Safety
/// `ctx` is the plugin's `HostApiCtx`; `table` a NUL-terminated name; `key` `key_len`
/// readable bytes; `out` a live `keel_output`.
unsafe extern "C" fn api_storage_get(
    ctx: *mut c_void,
    table: *const c_char,
    key: *const u8,
    key_len: usize,
    out: *const RawOutput,
) -> i32 {
    if out.is_null() {
        return -1;
    }
    // SAFETY: per this entry's contract.
    let Some((c, table, key)) = (unsafe { storage_args(ctx, table, key, key_len) }) else {
        return -1;
    };
    // SAFETY: `out` is the live keel_output the plugin was given (non-NULL checked above).
    unsafe { get_into(c, KvTarget::table(&c.plugin, table), key, &*out) }
}

/// # Safety
/// As `api_storage_get`; `val` points to `val_len` readable bytes.
unsafe extern "C" fn api_storage_put(
    ctx: *mut c_void,
    table: *const c_char,
    key: *const u8,
    key_len: usize,
    val: *const u8,
    val_len: usize,
) -> i32 {
    // SAFETY: per this entry's contract.
    let (Some((c, table, key)), Some(val)) = (unsafe { storage_args(ctx, table, key, key_len) }, unsafe {
        bytes(val, val_len)
    }) else {
        return -1;
    };
    guarded(API_PANICKED, || {
        match c.services.kv_put(KvTarget::table(&c.plugin, table), key, val) {
            Ok(()) => 0,
            Err(_) => API_PANICKED,
        }
    })
}

/// # Safety
/// As `api_storage_get`.
unsafe extern "C" fn api_storage_delete(ctx: *mut c_void, table: *const c_char, key: *const u8, key_len: usize) -> i32 {
    // SAFETY: per this entry's contract.
    let Some((c, table, key)) = (unsafe { storage_args(ctx, table, key, key_len) }) else {
        return -1;
    };
    guarded(API_PANICKED, || {
        match c.services.kv_delete(KvTarget::table(&c.plugin, table), key) {
            Ok(true) => 0,
            Ok(false) => 1,
            Err(_) => API_PANICKED,
        }
    })
}

/// # Safety
/// As `api_storage_get`, with `prefix`/`prefix_len` for the key.
unsafe extern "C" fn api_storage_scan(
    ctx: *mut c_void,
    table: *const c_char,
    prefix: *const u8,
    prefix_len: usize,
    out: *const RawOutput,
) -> i32 {
    if out.is_null() {
        return -1;
    }
    // SAFETY: per this entry's contract.
    let Some((c, table, prefix)) = (unsafe { storage_args(ctx, table, prefix, prefix_len) }) else {
        return -1;
    };
    // SAFETY: `out` is the live keel_output the plugin was given (non-NULL checked above).
    unsafe { scan_into(c, KvTarget::table(&c.plugin, table), prefix, &*out) }
}

/// Write this thread's last storage failure message to `out`: 0 written, 1 none.
///
/// # Safety
/// `out` is a live `keel_output`.
unsafe extern "C" fn api_sink_error(_ctx: *mut c_void, out: *const RawOutput) -> i32 {
    if out.is_null() {
        return -1;
    }
    let msg = last_sink_error();
    if msg.is_empty() {
        return 1;
    }
    // SAFETY: `out` is the live keel_output the plugin was given (non-NULL checked above).
    let out = unsafe { &*out };
    // SAFETY: calling the output's own write with its own ctx and a valid slice.
    if unsafe { (out.write)(out.ctx, msg.as_ptr(), msg.len()) } != 0 {
        return -2;
    }
    0
}
/// # Safety
/// `ctx` is the plugin's `HostApiCtx`; `key`/`val` point to `key_len`/`val_len` readable bytes.
unsafe extern "C" fn api_kv_put(
    ctx: *mut c_void,
    key: *const u8,
    key_len: usize,
    val: *const u8,
    val_len: usize,
) -> i32 {
    if ctx.is_null() {
        return -1;
    }
    // SAFETY: ctx is the HostApiCtx boxed in the NativeInstance, alive until shutdown returns.
    let c = unsafe { &*(ctx as *const HostApiCtx) };
    // SAFETY: per the ABI.
    let (Some(key), Some(val)) = (unsafe { bytes(key, key_len) }, unsafe { bytes(val, val_len) }) else {
        return -1;
    };
    guarded(API_PANICKED, || {
        match c.services.kv_put(KvTarget::kv(&c.plugin), key, val) {
            Ok(()) => 0,
            Err(_) => API_PANICKED,
        }
    })
}

/// # Safety
/// `ctx` is the plugin's `HostApiCtx`; `key` points to `key_len` readable bytes.
unsafe extern "C" fn api_kv_delete(ctx: *mut c_void, key: *const u8, key_len: usize) -> i32 {
    if ctx.is_null() {
        return -1;
    }
    // SAFETY: ctx is the HostApiCtx boxed in the NativeInstance, alive until shutdown returns.
    let c = unsafe { &*(ctx as *const HostApiCtx) };
    // SAFETY: per the ABI.
    let Some(key) = (unsafe { bytes(key, key_len) }) else {
        return -1;
    };
    guarded(API_PANICKED, || {
        match c.services.kv_delete(KvTarget::kv(&c.plugin), key) {
            Ok(true) => 0,
            Ok(false) => 1,
            Err(_) => API_PANICKED,
        }
    })
}

/// `cancelled`: whether the call this thread runs should stop (its token was cancelled or its
/// deadline passed; see `services::call::cancelled`). No capability needed.
unsafe extern "C" fn api_cancelled(_ctx: *mut c_void) -> i32 {
    guarded(0, || crate::services::call::cancelled() as i32)
}

/// A `(ptr, len)` string argument of a host-API entry: `Err(status)` for NULL with a length
/// or bytes that are not UTF-8.
///
/// # Safety
/// `p` points to `len` readable bytes that stay valid for `'a`, or is NULL.
unsafe fn str_arg<'a>(p: *const c_char, len: usize) -> std::result::Result<&'a str, i32> {
    // SAFETY: caller contract.
    let b = unsafe { bytes(p as *const u8, len) }.ok_or(keel_status::KEEL_ERR_NULL_POINTER as i32)?;
    std::str::from_utf8(b).map_err(|_| keel_status::KEEL_ERR_INVALID_UTF8 as i32)
}

/// A refused definition or registration: logged (Warn) through the host's log sink with
/// the reason, and its status returned to the plugin.
#[cold]
fn refused(c: &HostApiCtx, e: crate::error::Error) -> i32 {
    c.services.log(&c.plugin, LogLevel::Warn, &e.to_string());
    e.status() as i32
}

/// # Safety
/// `ctx` is the plugin's `HostApiCtx`; `name`/`labels` point to `name_len`/`labels_len`
/// readable bytes; `buckets` to `bucket_count` doubles (or NULL with 0); `id` is writable.
#[allow(clippy::too_many_arguments)]
unsafe extern "C" fn api_metric_define(
    ctx: *mut c_void,
    kind: i32,
    name: *const c_char,
    name_len: usize,
    labels: *const c_char,
    labels_len: usize,
    buckets: *const f64,
    bucket_count: usize,
    id: *mut u32,
) -> i32 {
    if ctx.is_null() || id.is_null() || (buckets.is_null() && bucket_count != 0) {
        return keel_status::KEEL_ERR_NULL_POINTER as i32;
    }
    // SAFETY: ctx is the HostApiCtx boxed in the NativeInstance, alive until shutdown returns.
    let c = unsafe { &*(ctx as *const HostApiCtx) };
    let Some(set) = &c.metrics else {
        return keel_status::KEEL_ERR_CAPABILITY_DENIED as i32;
    };
    // SAFETY: per the ABI.
    let (name, labels) = match unsafe { (str_arg(name, name_len), str_arg(labels, labels_len)) } {
        (Ok(n), Ok(l)) => (n, l),
        (Err(e), _) | (_, Err(e)) => return e,
    };
    let buckets = if bucket_count == 0 {
        &[][..]
    } else {
        // SAFETY: per the ABI `buckets` holds `bucket_count` doubles (non-NULL checked above).
        unsafe { std::slice::from_raw_parts(buckets, bucket_count) }
    };
    guarded(API_PANICKED, || {
        let Some(kind) = MetricKind::from_i32(kind) else {
            return refused(
                c,
                err!(KEEL_ERR_METRIC_INVALID, "metric kind {kind} is not KEEL_METRIC_*"),
            );
        };
        match c.services.metrics.define(set, kind, name, labels.as_bytes(), buckets) {
            Ok(v) => {
                // SAFETY: `id` is the plugin's writable out-parameter (non-NULL checked above).
                unsafe { id.write(v) };
                0
            }
            Err(e) => refused(c, e),
        }
    })
}

/// Shared body of the three metric updates: no lock, no allocation.
///
/// # Safety
/// `ctx` is the plugin's `HostApiCtx` or NULL.
#[inline]
unsafe fn metric_update(
    ctx: *mut c_void,
    f: impl FnOnce(&PluginMetricSet) -> std::result::Result<(), keel_status>,
) -> i32 {
    if ctx.is_null() {
        return keel_status::KEEL_ERR_NULL_POINTER as i32;
    }
    // SAFETY: ctx is the HostApiCtx boxed in the NativeInstance, alive until shutdown returns.
    let c = unsafe { &*(ctx as *const HostApiCtx) };
    match &c.metrics {
        None => keel_status::KEEL_ERR_CAPABILITY_DENIED as i32,
        Some(set) => match f(set) {
            Ok(()) => 0,
            Err(s) => s as i32,
        },
    }
}

/// # Safety
/// `ctx` is the plugin's `HostApiCtx`.
unsafe extern "C" fn api_metric_add(ctx: *mut c_void, id: u32, v: f64) -> i32 {
    // SAFETY: forwarded contract.
    unsafe { metric_update(ctx, |s| s.add(id, v)) }
}

/// # Safety
/// `ctx` is the plugin's `HostApiCtx`.
unsafe extern "C" fn api_metric_set(ctx: *mut c_void, id: u32, v: f64) -> i32 {
    // SAFETY: forwarded contract.
    unsafe { metric_update(ctx, |s| s.set(id, v)) }
}

/// # Safety
/// `ctx` is the plugin's `HostApiCtx`.
unsafe extern "C" fn api_metric_observe(ctx: *mut c_void, id: u32, v: f64) -> i32 {
    // SAFETY: forwarded contract.
    unsafe { metric_update(ctx, |s| s.observe(id, v)) }
}

/// # Safety
/// `ctx` is the plugin's `HostApiCtx`; `endpoint`/`function` point to `endpoint_len` /
/// `function_len` readable bytes.
unsafe extern "C" fn api_rpc_register(
    ctx: *mut c_void,
    endpoint: *const c_char,
    endpoint_len: usize,
    function: *const c_char,
    function_len: usize,
) -> i32 {
    if ctx.is_null() {
        return keel_status::KEEL_ERR_NULL_POINTER as i32;
    }
    // SAFETY: ctx is the HostApiCtx boxed in the NativeInstance, alive until shutdown returns.
    let c = unsafe { &*(ctx as *const HostApiCtx) };
    // SAFETY: per the ABI.
    let (endpoint, function) = match unsafe { (str_arg(endpoint, endpoint_len), str_arg(function, function_len)) } {
        (Ok(e), Ok(f)) => (e, f),
        (Err(e), _) | (_, Err(e)) => return e,
    };
    guarded(API_PANICKED, || {
        match c
            .services
            .rpc
            .register(&c.rpc_plugin, c.generation, Some(&c.functions), endpoint, function)
        {
            Ok(()) => 0,
            Err(e) => refused(c, e),
        }
    })
}

/// # Safety
/// `ctx` is the plugin's `HostApiCtx`; `namespace` and `name` are NUL-terminated strings (or
/// NULL).
unsafe extern "C" fn api_host_fn_lookup(
    ctx: *mut c_void,
    namespace: *const c_char,
    name: *const c_char,
) -> *const HostFn {
    if ctx.is_null() || namespace.is_null() || name.is_null() {
        return std::ptr::null();
    }
    // SAFETY: ctx is the HostApiCtx boxed in the NativeInstance, alive until shutdown returns.
    let c = unsafe { &*(ctx as *const HostApiCtx) };
    // SAFETY: per the ABI both are NUL-terminated strings valid for the call.
    let (ns, n) = unsafe { (std::ffi::CStr::from_ptr(namespace), std::ffi::CStr::from_ptr(name)) };
    let (Ok(ns), Ok(n)) = (ns.to_str(), n.to_str()) else {
        return std::ptr::null();
    };
    c.host_fns
        .iter()
        .find(|f| f.namespace() == ns && f.name() == n)
        .map_or(std::ptr::null(), Arc::as_ptr)
}

/// # Safety
/// `ctx` is the plugin's `HostApiCtx`; `f` was returned by `host_fn_lookup` of the same table;
/// `input` points to `len` readable bytes; `out` is a live `keel_output`.
unsafe extern "C" fn api_host_fn_call(
    ctx: *mut c_void,
    f: *const HostFn,
    input: *const u8,
    len: usize,
    out: *const RawOutput,
) -> i32 {
    if ctx.is_null() || f.is_null() || out.is_null() {
        return -1;
    }
    // SAFETY: ctx is the HostApiCtx boxed in the NativeInstance, alive until shutdown returns.
    let c = unsafe { &*(ctx as *const HostApiCtx) };
    // SAFETY: per the ABI `f` came from host_fn_lookup of this table: an `Arc<HostFn>` held by
    // `c.host_fns`, alive as long as `c`.
    let f = unsafe { &*f };
    // SAFETY: per the ABI.
    let Some(input) = (unsafe { bytes(input, len) }) else {
        return -1;
    };
    // SAFETY: RawOutput and HostOutput are both #[repr(C)] { *mut c_void, write fn } with the
    // same write signature (checked by a test); `out` is live for the call.
    let out = unsafe { &*(out as *const HostOutput) };
    // Nothing unwinds out of invoke (Rust bodies run behind catch_unwind; C bodies cannot).
    f.invoke(&c.plugin, input, out)
}

/// The host API table for a plugin: entries only for granted capabilities.
fn host_api(ctx: &HostApiCtx, granted: Capabilities) -> RawHostApi {
    RawHostApi {
        abi_version: ABI_VERSION,
        struct_size: std::mem::size_of::<RawHostApi>() as u32,
        ctx: ctx as *const HostApiCtx as *mut c_void,
        log: granted.has("log").then_some(api_log as _),
        now_unix_nanos: granted.has("clock").then_some(api_now as _),
        random_bytes: granted.has("random").then_some(api_random as _),
        kv_get: granted.has("kv:read").then_some(api_kv_get as _),
        kv_put: granted.has("kv:write").then_some(api_kv_put as _),
        kv_delete: granted.has("kv:write").then_some(api_kv_delete as _),
        cancelled: Some(api_cancelled as _),
        kv_scan: granted.has("kv:read").then_some(api_kv_scan as _),
        storage_get: granted.has("storage:read").then_some(api_storage_get as _),
        storage_put: granted.has("storage:write").then_some(api_storage_put as _),
        storage_delete: granted.has("storage:write").then_some(api_storage_delete as _),
        storage_scan: granted.has("storage:read").then_some(api_storage_scan as _),
        sink_error: SINK_CAPABILITIES
            .iter()
            .any(|c| granted.has(c))
            .then_some(api_sink_error as _),
        metric_define: granted.has("metrics:write").then_some(api_metric_define as _),
        metric_add: granted.has("metrics:write").then_some(api_metric_add as _),
        metric_set: granted.has("metrics:write").then_some(api_metric_set as _),
        metric_observe: granted.has("metrics:write").then_some(api_metric_observe as _),
        rpc_register: granted.has("rpc:register").then_some(api_rpc_register as _),
        // Always present: the lookup answers NULL for what the plugin may not use.
        host_fn_lookup: Some(api_host_fn_lookup as _),
        host_fn_call: Some(api_host_fn_call as _),
    }
}

use rand_core::RngCore;

/// A loaded native plugin instance.
pub struct NativeInstance {
    /// The plugin's vtable, copied once at load according to its `struct_size` (entries the
    /// plugin's version of the struct does not have are NULL).
    vt: RawVtable,
    /// `vt.call`, checked present at load.
    call: unsafe extern "C" fn(*mut c_void, u32, *const u8, usize, *const RawOutput) -> i32,
    instance: *mut c_void,
    functions: Vec<String>,
    serial: Option<Mutex<()>>,
    max_output: usize,
    // Kept alive for the plugin: it may hold `host` until shutdown.
    _api: Box<RawHostApi>,
    _api_ctx: Box<HostApiCtx>,
    lib: Option<SealedLibrary>,
}

// SAFETY: the vtable copy and instance pointer are only used through the plugin's C ABI, whose
// contract (keel_plugin.h) is that `call` is thread-safe unless KEEL_PLUGIN_FLAG_SERIAL is set,
// in which case calls are serialised by `serial`.
unsafe impl Send for NativeInstance {}
// SAFETY: as for Send: shared use goes through the thread-safe (or serialised) C ABI.
unsafe impl Sync for NativeInstance {}

/// Copy `dst.len()` bytes of this process's memory at `addr` into `dst` without faulting:
/// `false` if any of it is not mapped readable. Used for everything a plugin's vtable points
/// to before Keel trusts it (a lying `struct_size`, `function_count` or string pointer must
/// not crash the host).
fn read_plugin_memory(addr: usize, dst: &mut [u8]) -> bool {
    if dst.is_empty() {
        return true;
    }
    if addr == 0 {
        return false;
    }
    let local = libc::iovec {
        iov_base: dst.as_mut_ptr() as *mut c_void,
        iov_len: dst.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as *mut c_void,
        iov_len: dst.len(),
    };
    // SAFETY: process_vm_readv on our own pid copies into `dst` (valid, writable, dst.len()
    // bytes) and reports EFAULT instead of faulting for unmapped source memory.
    let n = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
    if n >= 0 {
        return n as usize == dst.len();
    }
    let errno = std::io::Error::last_os_error().raw_os_error();
    if errno == Some(libc::ENOSYS) || errno == Some(libc::EPERM) {
        return read_via_pipe(addr, dst);
    }
    false
}

/// [`read_plugin_memory`] where `process_vm_readv` is unavailable: `write(2)` of the source
/// into a pipe fails with `EFAULT` instead of faulting; the bytes are read back.
fn read_via_pipe(addr: usize, dst: &mut [u8]) -> bool {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return false;
    }
    // SAFETY: both descriptors were just created and are owned here only.
    let (r, w) = unsafe {
        use std::os::fd::FromRawFd;
        (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))
    };
    for (i, chunk) in dst.chunks_mut(4096).enumerate() {
        let src = addr + i * 4096;
        // SAFETY: write(2) only reads `chunk.len()` bytes at `src`, reporting EFAULT (no
        // signal) if they are not mapped; the pipe buffer (>= 4096 bytes) holds them.
        let n = unsafe { libc::write(w.as_raw_fd(), src as *const c_void, chunk.len()) };
        if n != chunk.len() as isize {
            return false;
        }
        // SAFETY: reading back into `chunk`, valid and writable for its length.
        let m = unsafe { libc::read(r.as_raw_fd(), chunk.as_mut_ptr() as *mut c_void, chunk.len()) };
        if m != chunk.len() as isize {
            return false;
        }
    }
    true
}

/// A NUL-terminated string at `p` of at most `max` bytes, read without faulting (page by
/// page); `None` if unreadable or longer.
fn read_plugin_cstr(p: *const c_char, max: usize) -> Option<Vec<u8>> {
    const PAGE: usize = 4096;
    let mut out = Vec::new();
    let mut addr = p as usize;
    while out.len() <= max {
        let chunk = (PAGE - addr % PAGE).min(max + 1 - out.len());
        let mut buf = vec![0u8; chunk];
        if !read_plugin_memory(addr, &mut buf) {
            return None;
        }
        if let Some(z) = buf.iter().position(|&b| b == 0) {
            out.extend_from_slice(&buf[..z]);
            return Some(out);
        }
        out.extend_from_slice(&buf);
        addr += chunk;
    }
    None
}

/// Copy the plugin's vtable once, according to its `struct_size`: never a reference to more
/// bytes than the plugin's struct has. Entries past `struct_size` (an older, smaller vtable)
/// are NULL; bytes past this host's struct (a newer plugin) are ignored.
pub(crate) fn copy_vtable(vt: *const RawVtable, name: &str) -> Result<RawVtable> {
    let mut head = [0u8; 8];
    if !read_plugin_memory(vt as usize, &mut head) {
        bail!(
            KEEL_ERR_PLUGIN_ABI_VIOLATION,
            "plugin '{name}': keel_plugin_entry returned an unreadable pointer"
        );
    }
    // Read the ABI version alone first: nothing else in the struct is trusted before it matches.
    let abi = u32::from_ne_bytes([head[0], head[1], head[2], head[3]]);
    if abi != ABI_VERSION {
        bail!(
            KEEL_ERR_ABI_MISMATCH,
            "plugin '{name}' speaks Keel plugin ABI {abi}, this host speaks {ABI_VERSION}"
        );
    }
    let struct_size = u32::from_ne_bytes([head[4], head[5], head[6], head[7]]) as usize;
    if struct_size < MIN_VTABLE_SIZE {
        bail!(
            KEEL_ERR_PLUGIN_ABI_VIOLATION,
            "plugin '{name}': vtable struct_size {struct_size} too small (at least {MIN_VTABLE_SIZE})"
        );
    }
    // Whole entries only: an entry the struct_size cuts through is absent.
    let n = struct_size.min(std::mem::size_of::<RawVtable>()) / std::mem::align_of::<RawVtable>()
        * std::mem::align_of::<RawVtable>();
    let mut copy = std::mem::MaybeUninit::<RawVtable>::zeroed();
    // SAFETY: `copy` is size_of::<RawVtable>() writable bytes and n <= that.
    let dst = unsafe { std::slice::from_raw_parts_mut(copy.as_mut_ptr() as *mut u8, n) };
    if !read_plugin_memory(vt as usize, dst) {
        bail!(
            KEEL_ERR_PLUGIN_ABI_VIOLATION,
            "plugin '{name}': vtable of struct_size {struct_size} is not readable"
        );
    }
    // SAFETY: all-zero is a valid RawVtable (integers 0, pointers NULL, function pointers
    // None); the first n bytes are the plugin's, whole fields of the same C layout (a function
    // pointer field holds NULL or an address, both valid for Option<fn>).
    Ok(unsafe { copy.assume_init() })
}

/// The exported function names, bounded: at most [`MAX_FUNCTIONS`] entries, each a readable,
/// non-empty UTF-8 string of at most [`MAX_FUNCTION_NAME`] bytes without control characters.
pub(crate) fn read_function_names(v: &RawVtable, name: &str) -> Result<Vec<String>> {
    let count = v.function_count;
    if count > MAX_FUNCTIONS {
        bail!(
            KEEL_ERR_PLUGIN_ABI_VIOLATION,
            "plugin '{name}': function_count {count} is more than the {MAX_FUNCTIONS} accepted"
        );
    }
    if count == 0 {
        return Ok(Vec::new());
    }
    if v.functions.is_null() {
        bail!(
            KEEL_ERR_PLUGIN_ABI_VIOLATION,
            "plugin '{name}': function_count > 0 but functions is NULL"
        );
    }
    let mut ptrs = vec![0usize; count as usize];
    // SAFETY: viewing the usize buffer as its bytes (same size, u8 has no alignment).
    let raw = unsafe {
        std::slice::from_raw_parts_mut(ptrs.as_mut_ptr() as *mut u8, ptrs.len() * std::mem::size_of::<usize>())
    };
    if !read_plugin_memory(v.functions as usize, raw) {
        bail!(
            KEEL_ERR_PLUGIN_ABI_VIOLATION,
            "plugin '{name}': function_count is {count} but the functions array is not that long (unreadable)"
        );
    }
    let mut names = Vec::with_capacity(count as usize);
    for (i, &p) in ptrs.iter().enumerate() {
        if p == 0 {
            bail!(KEEL_ERR_PLUGIN_ABI_VIOLATION, "plugin '{name}': functions[{i}] is NULL");
        }
        let Some(bytes) = read_plugin_cstr(p as *const c_char, MAX_FUNCTION_NAME) else {
            bail!(
                KEEL_ERR_PLUGIN_ABI_VIOLATION,
                "plugin '{name}': functions[{i}] is not a readable NUL-terminated name of at most {MAX_FUNCTION_NAME} bytes (function_count {count} too large?)"
            );
        };
        let s = String::from_utf8(bytes).map_err(|_| {
            err!(
                KEEL_ERR_PLUGIN_ABI_VIOLATION,
                "plugin '{name}': functions[{i}] is not UTF-8 (function_count {count} too large?)"
            )
        })?;
        if s.is_empty() || s.chars().any(char::is_control) {
            bail!(
                KEEL_ERR_PLUGIN_ABI_VIOLATION,
                "plugin '{name}': functions[{i}] is empty or holds control characters (function_count {count} too large?)"
            );
        }
        names.push(s);
    }
    Ok(names)
}

/// Load a native plugin from a verified artifact and run its init hook.
pub fn load(artifact: Verified, ctx: &LoadContext<'_>) -> Result<NativeInstance> {
    let name = &ctx.manifest.name;
    let lib = SealedLibrary::open(artifact, name)?;
    let entry = lib.symbol(ENTRY_SYMBOL).ok_or_else(|| {
        err!(
            KEEL_ERR_SYMBOL_MISSING,
            "plugin '{name}' does not export keel_plugin_entry (not a Keel native plugin)"
        )
    })?;
    // SAFETY: symbol type per keel_plugin.h.
    let entry = unsafe { std::mem::transmute::<*mut c_void, unsafe extern "C" fn() -> *const RawVtable>(entry) };
    // SAFETY: calling the plugin's entry function per the ABI.
    let vt = unsafe { entry() };
    if vt.is_null() {
        bail!(
            KEEL_ERR_PLUGIN_ABI_VIOLATION,
            "plugin '{name}': keel_plugin_entry returned NULL"
        );
    }
    let v = copy_vtable(vt, name)?;
    let (Some(init), Some(call), Some(_)) = (v.init, v.call, v.shutdown) else {
        bail!(
            KEEL_ERR_PLUGIN_ABI_VIOLATION,
            "plugin '{name}': vtable lacks init, call or shutdown"
        );
    };
    let functions = read_function_names(&v, name)?;
    let serial = (v.flags & FLAG_SERIAL != 0).then(|| Mutex::new(()));
    let api_ctx = Box::new(HostApiCtx {
        plugin: name.clone(),
        services: ctx.services.clone(),
        metrics: ctx
            .granted
            .has("metrics:write")
            .then(|| ctx.services.metrics.set_for(name)),
        rpc_plugin: Arc::from(name.as_str()),
        generation: ctx.generation,
        functions: functions.clone(),
        host_fns: ctx.services.host_fns.snapshot(ctx.granted),
    });
    let api = Box::new(host_api(&api_ctx, ctx.granted));
    let mut inst = NativeInstance {
        vt: v,
        call,
        instance: std::ptr::null_mut(),
        functions,
        serial,
        max_output: max_output(ctx.manifest),
        _api: api,
        _api_ctx: api_ctx,
        lib: Some(lib),
    };

    let config = ctx.manifest.config_json();
    let config_c = std::ffi::CString::new(config.clone())
        .map_err(|_| err!(KEEL_ERR_MANIFEST_INVALID, "plugin '{name}': config contains a NUL byte"))?;
    let mut errbuf = Vec::new();
    let mut instance: *mut c_void = std::ptr::null_mut();
    let rc = with_output(&mut errbuf, 64 << 10, |out| {
        // SAFETY: per the ABI; all pointers are valid for the duration of the call.
        unsafe { init(config_c.as_ptr(), config.len(), &*inst._api, &mut instance, out) }
    });
    if rc != 0 {
        bail!(
            KEEL_ERR_INIT_FAILED,
            "plugin '{name}': init returned {rc}{}",
            if errbuf.is_empty() {
                String::new()
            } else {
                format!(": {}", String::from_utf8_lossy(&errbuf))
            }
        );
    }
    inst.instance = instance;
    if let Some(state) = ctx.restored_state {
        match (inst.vt.restore_state_versioned, ctx.restored_state_version) {
            (Some(restore), Some(version)) => inst.restore_versioned(restore, state, version)?,
            _ => inst.restore_state(state)?,
        }
    }
    Ok(inst)
}

impl NativeInstance {
    /// `restore_state_versioned(instance, state, len, saved_by_version)`.
    fn restore_versioned(
        &self,
        restore: unsafe extern "C" fn(*mut c_void, *const u8, usize, *const c_char) -> i32,
        state: &[u8],
        version: &str,
    ) -> Result<()> {
        let version = std::ffi::CString::new(version)
            .map_err(|_| err!(KEEL_ERR_INTERNAL, "a plugin version contains a NUL byte"))?;
        let _serial = self.serial.as_ref().map(|m| m.lock());
        // SAFETY: per the ABI; `state` and `version` are valid for the call.
        let rc = unsafe { restore(self.instance, state.as_ptr(), state.len(), version.as_ptr()) };
        if rc != 0 {
            bail!(KEEL_ERR_STATE_RESTORE, "restore_state_versioned returned {rc}");
        }
        Ok(())
    }
}

impl Instance for NativeInstance {
    fn functions(&self) -> &[String] {
        &self.functions
    }

    #[inline]
    fn call(&self, function: u32, input: &[u8], output: &mut Vec<u8>) -> Result<()> {
        let _serial = self.serial.as_ref().map(|m| m.lock());
        let call = self.call;
        let inst = self.instance;
        let (rc, refused) = with_output_checked(output, self.max_output, |out| {
            // SAFETY: per the ABI; input and output are valid for the call.
            unsafe { call(inst, function, input.as_ptr(), input.len(), out) }
        });
        // A refused write fails the call whatever the plugin returned: the output is cut.
        if rc != 0 || refused {
            return Err(self.call_error(function, rc, refused, output));
        }
        Ok(())
    }

    fn has_state(&self) -> bool {
        self.vt.save_state.is_some()
    }

    fn save_state(&self) -> Result<Option<Vec<u8>>> {
        let Some(save) = self.vt.save_state else {
            return Ok(None);
        };
        let _serial = self.serial.as_ref().map(|m| m.lock());
        let mut buf = Vec::new();
        let inst = self.instance;
        // SAFETY: per the ABI.
        let rc = with_output(&mut buf, usize::MAX, |out| unsafe { save(inst, out) });
        if rc != 0 {
            bail!(
                KEEL_ERR_STATE_SAVE,
                "save_state returned {rc}: {}",
                String::from_utf8_lossy(&buf)
            );
        }
        Ok(Some(buf))
    }

    fn restore_state(&self, state: &[u8]) -> Result<()> {
        let Some(restore) = self.vt.restore_state else {
            bail!(KEEL_ERR_UNSUPPORTED, "plugin has no restore_state hook");
        };
        let _serial = self.serial.as_ref().map(|m| m.lock());
        // SAFETY: per the ABI.
        let rc = unsafe { restore(self.instance, state.as_ptr(), state.len()) };
        if rc != 0 {
            bail!(KEEL_ERR_STATE_RESTORE, "restore_state returned {rc}");
        }
        Ok(())
    }

    fn health(&self) -> Health {
        let Some(h) = self.vt.health else {
            return Health::Unknown;
        };
        // A serial plugin is not thread-safe: its health hook must not overlap a call either.
        let _serial = self.serial.as_ref().map(|m| m.lock());
        // SAFETY: per the ABI.
        match unsafe { h(self.instance) } {
            0 => Health::Healthy,
            1 => Health::Degraded,
            _ => Health::Unhealthy,
        }
    }
}

impl NativeInstance {
    #[cold]
    fn call_error(&self, function: u32, rc: i32, refused: bool, output: &[u8]) -> crate::error::Error {
        let fname = self.functions.get(function as usize).map(String::as_str).unwrap_or("?");
        if refused || rc == WRITE_REFUSED {
            return err!(
                KEEL_ERR_OUTPUT_TOO_LARGE,
                "function '{fname}' output exceeded {} bytes (a write was refused; the plugin returned {rc})",
                self.max_output
            );
        }
        let msg = String::from_utf8_lossy(output);
        err!(
            KEEL_ERR_CALL_FAILED,
            "function '{fname}' returned {rc}{}",
            if msg.is_empty() {
                String::new()
            } else {
                format!(": {msg}")
            }
        )
    }
}

impl Drop for NativeInstance {
    fn drop(&mut self) {
        if !self.instance.is_null() {
            if let Some(shutdown) = self.vt.shutdown {
                // SAFETY: no call is in flight (the generation is only dropped after its last
                // guard), and shutdown is called exactly once.
                unsafe { shutdown(self.instance) };
            }
        }
        self.instance = std::ptr::null_mut();
        // dlclose, then release the memfd (see SealedLibrary's Drop).
        drop(self.lib.take());
    }
}
