//! C ABI: the log sink and the storage sink (see `crate::services::sinks` for the rules:
//! swapped atomically, read lock-free per use, a replaced sink released once no plugin is
//! inside it). This file only adapts C callbacks to the Rust sinks.

use std::ffi::{c_char, c_void, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use super::borrow;
use super::boundary;
use super::host::keel_host;
use super::introspect::keel_user_data_free_fn;
use crate::bail;
use crate::error::keel_status;
use crate::services::call::with_current;
use crate::services::sinks::trace_id;
use crate::services::{KvStore, KvTarget, LogLevel, SinkError, SinkResult};

/// One plugin log line, as a `keel_log_sink_fn` receives it. Every pointer is borrowed for
/// the duration of the callback only; strings are NUL-terminated UTF-8.
#[repr(C)]
pub struct keel_log_record {
    /// The logging plugin's name.
    pub plugin: *const c_char,
    /// `KEEL_LOG_ERROR` (0), `KEEL_LOG_WARN` (1), `KEEL_LOG_INFO` (2) or `KEEL_LOG_DEBUG` (3).
    pub level: i32,
    /// The message (`message_len` bytes, also NUL-terminated; invalid UTF-8 from the plugin
    /// was replaced by U+FFFD; a NUL byte inside it is possible, so prefer `message_len`).
    pub message: *const c_char,
    pub message_len: usize,
    /// The trace id (32 lowercase hex digits) of the `traceparent` of the call being served,
    /// or NULL when the line was not logged inside a call made with a valid `traceparent`.
    pub trace_id: *const c_char,
    /// That call's whole `traceparent` as the server passed it (even if malformed), or NULL.
    pub traceparent: *const c_char,
    /// That call's tenant id, or NULL.
    pub tenant: *const c_char,
}

/// A log sink: receives every plugin log line (and Keel's own lines about a plugin, such as
/// load warnings) instead of stderr. Called on the thread that logs — the thread running the
/// plugin's call, concurrently from many threads — so it must be thread-safe and should be
/// quick. It must not unwind (no C++ exception may leave it; keel.hpp's wrapper catches
/// them). `user_data` is the pointer given to `keel_host_set_log_sink`.
pub type keel_log_sink_fn = Option<unsafe extern "C" fn(user_data: *mut c_void, record: *const keel_log_record)>;

/// Where a storage callback writes bytes (a value, an error message): `write` appends `len`
/// bytes (copied) and returns 0, or non-zero if Keel refuses them (too large: stop and fail).
/// Valid only during the callback it is passed to.
#[repr(C)]
pub struct keel_sink_writer {
    pub ctx: *mut c_void,
    pub write: unsafe extern "C" fn(ctx: *mut c_void, data: *const u8, len: usize) -> i32,
}

/// Receives the entries of a scan: `entry` copies one key/value pair and returns 0 to go on,
/// or 1 when Keel's scan limit is reached (the sink should stop and return 0; further
/// entries are ignored). Valid only during the scan callback.
#[repr(C)]
pub struct keel_scan_visitor {
    pub ctx: *mut c_void,
    pub entry: unsafe extern "C" fn(
        ctx: *mut c_void,
        key: *const u8,
        key_len: usize,
        value: *const u8,
        value_len: usize,
    ) -> i32,
}

/// Who asks and where: what every storage callback receives. Borrowed for the callback.
#[repr(C)]
pub struct keel_storage_request {
    /// The calling plugin's name (NUL-terminated).
    pub plugin: *const c_char,
    /// NULL: the plugin's own key-value namespace (`kv:read`/`kv:write`; the namespace is the
    /// plugin's name — keep namespaces apart). Otherwise the server table the plugin named
    /// (`storage:read`/`storage:write`; NUL-terminated, 1..=255 bytes, no control
    /// characters): the server decides whether this plugin may use it.
    pub table: *const c_char,
    /// The current call's tenant id, or NULL (plain `keel_call`, or none set).
    pub tenant: *const c_char,
    /// The current call's `traceparent`, or NULL.
    pub traceparent: *const c_char,
    /// The current call's `user_context` (the server's session or transaction), or NULL.
    pub user_context: *mut c_void,
}

/// A storage sink: the server's storage behind `kv:*` and `storage:*`. Every callback
/// receives the `user_data` given to `keel_host_set_storage_sink` and the request, is called
/// on the plugin's calling thread (concurrently from many threads: it must be thread-safe)
/// and returns 0 on success, 1 for "absent" (`get`, `remove`), and any other value for a
/// failure or a refusal, optionally explained by bytes written to `error` (the plugin sees
/// an error status and that message). A callback may be NULL: that operation then fails. No
/// C++ exception may leave a callback (keel.hpp's wrapper catches them).
#[repr(C)]
pub struct keel_storage_sink {
    /// `sizeof(keel_storage_sink)` as the caller compiled it (callbacks past it are absent).
    pub struct_size: u32,
    /// Write the value of `key` to `value`; 0 found, 1 absent.
    pub get: Option<
        unsafe extern "C" fn(
            user_data: *mut c_void,
            request: *const keel_storage_request,
            key: *const u8,
            key_len: usize,
            value: *const keel_sink_writer,
            error: *const keel_sink_writer,
        ) -> i32,
    >,
    /// Set `key` to `value`; 0 done.
    pub put: Option<
        unsafe extern "C" fn(
            user_data: *mut c_void,
            request: *const keel_storage_request,
            key: *const u8,
            key_len: usize,
            value: *const u8,
            value_len: usize,
            error: *const keel_sink_writer,
        ) -> i32,
    >,
    /// Delete `key`; 0 deleted, 1 absent.
    pub remove: Option<
        unsafe extern "C" fn(
            user_data: *mut c_void,
            request: *const keel_storage_request,
            key: *const u8,
            key_len: usize,
            error: *const keel_sink_writer,
        ) -> i32,
    >,
    /// Hand every entry whose key starts with `prefix` to `visitor` (any order) until it
    /// returns 1; 0 done.
    pub scan: Option<
        unsafe extern "C" fn(
            user_data: *mut c_void,
            request: *const keel_storage_request,
            prefix: *const u8,
            prefix_len: usize,
            visitor: *const keel_scan_visitor,
            error: *const keel_sink_writer,
        ) -> i32,
    >,
}

/// Largest value a storage callback may write for one `get` (larger: the get fails).
pub const MAX_SINK_VALUE: usize = 64 << 20;
/// Longest error message kept from a callback (the rest is dropped).
const MAX_SINK_ERROR: usize = 16 << 10;

/// The user data of a C sink; its destructor runs when the last user drops it.
struct UserData {
    ptr: *mut c_void,
    free: keel_user_data_free_fn,
}

// SAFETY: the setters' contract requires callbacks and user data to be usable from any
// thread, concurrently.
unsafe impl Send for UserData {}
// SAFETY: as above.
unsafe impl Sync for UserData {}

impl Drop for UserData {
    fn drop(&mut self) {
        if let Some(free) = self.free {
            // SAFETY: setter contract: `free` releases `ptr`; this is the last use.
            unsafe { free(self.ptr) }
        }
    }
}

fn cstring(s: &str) -> CString {
    CString::new(s.replace('\0', "\\0")).unwrap_or_default()
}

fn opt_ptr(s: &Option<CString>) -> *const c_char {
    s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr())
}

/// The current call's tenant, traceparent and user_context, as C strings.
fn call_context() -> (Option<CString>, Option<CString>, *mut c_void) {
    with_current(|c| match c {
        None => (None, None, std::ptr::null_mut()),
        Some(c) => (c.tenant.map(cstring), c.traceparent.map(cstring), c.user_context),
    })
}

fn c_log_sink(f: unsafe extern "C" fn(*mut c_void, *const keel_log_record), ud: UserData) -> crate::services::LogSink {
    Arc::new(move |plugin: &str, level: LogLevel, msg: &str| {
        // The whole UserData (Send + Sync, freed with the sink), not just its pointer field.
        let ud = &ud;
        let plugin = cstring(plugin);
        let mut message = Vec::with_capacity(msg.len() + 1);
        message.extend_from_slice(msg.as_bytes());
        message.push(0);
        let (tenant, traceparent, _) = call_context();
        let trace = traceparent
            .as_ref()
            .and_then(|t| t.to_str().ok())
            .and_then(trace_id)
            .map(cstring);
        let record = keel_log_record {
            plugin: plugin.as_ptr(),
            level: level as i32,
            message: message.as_ptr() as *const c_char,
            message_len: msg.len(),
            trace_id: opt_ptr(&trace),
            traceparent: opt_ptr(&traceparent),
            tenant: opt_ptr(&tenant),
        };
        // SAFETY: setter contract: `f` is callable with its user data from any thread; the
        // record and everything it points to live for the call.
        unsafe { f(ud.ptr, &record) }
    })
}

/// Bytes written by a callback, bounded.
struct Collect {
    buf: Vec<u8>,
    max: usize,
    refused: bool,
}

unsafe extern "C" fn collect_write(ctx: *mut c_void, data: *const u8, len: usize) -> i32 {
    if ctx.is_null() || (data.is_null() && len != 0) {
        return -1;
    }
    // SAFETY: ctx is the `Collect` of the writer handed to this callback, alive for it.
    let c = unsafe { &mut *(ctx as *mut Collect) };
    if c.buf.len() + len > c.max {
        c.refused = true;
        return -1;
    }
    if len != 0 {
        // SAFETY: writer contract: `data` holds `len` readable bytes (non-NULL checked).
        c.buf
            .extend_from_slice(unsafe { std::slice::from_raw_parts(data, len) });
    }
    0
}

type Visit<'a> = &'a mut dyn FnMut(&[u8], &[u8]) -> bool;

unsafe extern "C" fn visit_entry(
    ctx: *mut c_void,
    key: *const u8,
    key_len: usize,
    val: *const u8,
    val_len: usize,
) -> i32 {
    if ctx.is_null() || (key.is_null() && key_len != 0) || (val.is_null() && val_len != 0) {
        return 1;
    }
    // SAFETY: ctx is the `Visit` of the visitor handed to the scan callback, alive for it.
    let visit = unsafe { &mut *(ctx as *mut Visit<'_>) };
    // SAFETY: visitor contract: readable `key_len`/`val_len` bytes (NULL only when empty).
    let (k, v): (&[u8], &[u8]) = unsafe {
        (
            if key_len == 0 {
                &[]
            } else {
                std::slice::from_raw_parts(key, key_len)
            },
            if val_len == 0 {
                &[]
            } else {
                std::slice::from_raw_parts(val, val_len)
            },
        )
    };
    // Keel's side of the visitor never unwinds into the server's C code.
    match catch_unwind(AssertUnwindSafe(|| visit(k, v))) {
        Ok(true) => 0,
        _ => 1,
    }
}

/// A storage sink made of C callbacks.
struct CStorage {
    sink: keel_storage_sink,
    ud: UserData,
}

impl CStorage {
    /// Run one callback with the request for `at` and an error writer; map its status.
    fn run<R>(
        &self,
        op: &str,
        at: KvTarget<'_>,
        f: impl FnOnce(*mut c_void, &keel_storage_request, &keel_sink_writer) -> i32,
        ok: impl FnOnce(i32) -> Option<R>,
    ) -> SinkResult<R> {
        let plugin = cstring(at.plugin);
        let table = at.table.map(cstring);
        let (tenant, traceparent, user_context) = call_context();
        let req = keel_storage_request {
            plugin: plugin.as_ptr(),
            table: opt_ptr(&table),
            tenant: opt_ptr(&tenant),
            traceparent: opt_ptr(&traceparent),
            user_context,
        };
        let mut err = Collect {
            buf: Vec::new(),
            max: MAX_SINK_ERROR,
            refused: false,
        };
        let writer = keel_sink_writer {
            ctx: &mut err as *mut Collect as *mut c_void,
            write: collect_write,
        };
        let rc = f(self.ud.ptr, &req, &writer);
        if let Some(r) = ok(rc) {
            return Ok(r);
        }
        let what = match at.table {
            None => format!("'{}' key-value namespace", at.plugin),
            Some(t) => format!("table '{t}' (plugin '{}')", at.plugin),
        };
        Err(SinkError(if err.buf.is_empty() {
            format!("the server's storage sink failed {op} on {what}: status {rc}")
        } else {
            format!(
                "the server's storage sink failed {op} on {what}: {}",
                String::from_utf8_lossy(&err.buf)
            )
        }))
    }
}

fn missing(op: &str) -> SinkError {
    SinkError(format!("the server's storage sink does not implement {op}"))
}

impl KvStore for CStorage {
    fn get(&self, at: KvTarget<'_>, key: &[u8]) -> SinkResult<Option<Vec<u8>>> {
        let f = self.sink.get.ok_or_else(|| missing("get"))?;
        let mut val = Collect {
            buf: Vec::new(),
            max: MAX_SINK_VALUE,
            refused: false,
        };
        let vw = keel_sink_writer {
            ctx: &mut val as *mut Collect as *mut c_void,
            write: collect_write,
        };
        let found = self.run(
            "get",
            at,
            // SAFETY: setter contract: a thread-safe callback; every pointer lives for the call.
            |ud, req, err| unsafe { f(ud, req, key.as_ptr(), key.len(), &vw, err) },
            |rc| match rc {
                0 => Some(true),
                1 => Some(false),
                _ => None,
            },
        )?;
        if val.refused {
            return Err(SinkError(format!(
                "the server's storage sink returned a value larger than {MAX_SINK_VALUE} bytes"
            )));
        }
        Ok(found.then_some(val.buf))
    }

    fn put(&self, at: KvTarget<'_>, key: &[u8], value: &[u8]) -> SinkResult<()> {
        let f = self.sink.put.ok_or_else(|| missing("put"))?;
        self.run(
            "put",
            at,
            // SAFETY: setter contract: a thread-safe callback; every pointer lives for the call.
            |ud, req, err| unsafe { f(ud, req, key.as_ptr(), key.len(), value.as_ptr(), value.len(), err) },
            |rc| (rc == 0).then_some(()),
        )
    }

    fn delete(&self, at: KvTarget<'_>, key: &[u8]) -> SinkResult<bool> {
        let f = self.sink.remove.ok_or_else(|| missing("remove"))?;
        self.run(
            "remove",
            at,
            // SAFETY: setter contract: a thread-safe callback; every pointer lives for the call.
            |ud, req, err| unsafe { f(ud, req, key.as_ptr(), key.len(), err) },
            |rc| match rc {
                0 => Some(true),
                1 => Some(false),
                _ => None,
            },
        )
    }

    fn scan(&self, at: KvTarget<'_>, prefix: &[u8], visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> SinkResult<()> {
        let f = self.sink.scan.ok_or_else(|| missing("scan"))?;
        let mut visit: Visit<'_> = visit;
        let visitor = keel_scan_visitor {
            ctx: &mut visit as *mut Visit<'_> as *mut c_void,
            entry: visit_entry,
        };
        self.run(
            "scan",
            at,
            // SAFETY: setter contract: a thread-safe callback; every pointer lives for the call.
            |ud, req, err| unsafe { f(ud, req, prefix.as_ptr(), prefix.len(), &visitor, err) },
            |rc| (rc == 0).then_some(()),
        )
    }
}

/// Set the host's log sink: every plugin log line goes to `sink` instead of stderr (see
/// `keel_log_sink_fn`, `keel_log_record`). `sink` NULL restores stderr (`user_data` and
/// `free_user_data` are then ignored). Settable at any time, from any thread; the swap is
/// atomic: lines logged after it returns go to the new sink, a line being logged on another
/// thread may still reach the old one. `free_user_data` (may be NULL) is called with
/// `user_data` exactly once, when this sink has been replaced (or the host and every plugin
/// freed) and no line is being delivered to it any more — possibly on a plugin's thread.
///
/// Errors: `KEEL_ERR_NULL_POINTER` (`host`; then `free_user_data` is not called).
#[no_mangle]
pub extern "C" fn keel_host_set_log_sink(
    host: *const keel_host,
    sink: keel_log_sink_fn,
    user_data: *mut c_void,
    free_user_data: keel_user_data_free_fn,
) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract.
        let h = unsafe { borrow(host, "host") }?;
        let sink = sink.map(|f| {
            c_log_sink(
                f,
                UserData {
                    ptr: user_data,
                    free: free_user_data,
                },
            )
        });
        h.set_log_sink(sink);
        Ok(())
    })
}

/// Set the host's storage sink: the `kv:*` and `storage:*` host entries of every plugin go
/// to its callbacks instead of the in-memory map (see `keel_storage_sink`,
/// `keel_storage_request`). `*sink` is copied (up to its `struct_size`); `sink` NULL restores
/// the default in-memory map (with what plugins stored in it before; `user_data` and
/// `free_user_data` are then ignored). Without a sink, `storage:*` operations fail: the
/// default map knows no tables. Settable at any time, from any thread; the swap is atomic:
/// operations starting after it returns use the new sink, one in progress on another thread
/// finishes with the old one. `free_user_data` (may be NULL) is called with `user_data`
/// exactly once, when this sink has been replaced (or the host and every plugin freed) and
/// no operation is inside it any more — possibly on a plugin's thread.
///
/// Errors: `KEEL_ERR_NULL_POINTER` (`host`), `KEEL_ERR_INVALID_ARGUMENT` (`struct_size`
/// smaller than the `get` field, or no callback set); `free_user_data` is not called then.
#[no_mangle]
pub extern "C" fn keel_host_set_storage_sink(
    host: *const keel_host,
    sink: *const keel_storage_sink,
    user_data: *mut c_void,
    free_user_data: keel_user_data_free_fn,
) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract.
        let h = unsafe { borrow(host, "host") }?;
        if sink.is_null() {
            h.set_kv_store(None);
            return Ok(());
        }
        // SAFETY: caller contract: `sink` points to a keel_storage_sink whose first field is
        // its struct_size.
        let size = unsafe { (*sink).struct_size } as usize;
        let min = std::mem::offset_of!(keel_storage_sink, put);
        if size < min {
            bail!(
                KEEL_ERR_INVALID_ARGUMENT,
                "keel_storage_sink.struct_size is {size}, at least {min} needed"
            );
        }
        let n = size.min(std::mem::size_of::<keel_storage_sink>());
        let mut copy = std::mem::MaybeUninit::<keel_storage_sink>::zeroed();
        // SAFETY: the caller's struct holds `size >= n` readable bytes; `copy` has room for
        // size_of::<keel_storage_sink>() >= n bytes; all-zero is a valid keel_storage_sink
        // (NULL callbacks) and the copied prefix holds valid fields.
        let s = unsafe {
            std::ptr::copy_nonoverlapping(sink as *const u8, copy.as_mut_ptr() as *mut u8, n);
            copy.assume_init()
        };
        if s.get.is_none() && s.put.is_none() && s.remove.is_none() && s.scan.is_none() {
            bail!(KEEL_ERR_INVALID_ARGUMENT, "keel_storage_sink has no callback set");
        }
        h.set_kv_store(Some(Arc::new(CStorage {
            sink: s,
            ud: UserData {
                ptr: user_data,
                free: free_user_data,
            },
        })));
        Ok(())
    })
}
