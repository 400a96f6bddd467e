//! Host functions (module `"keel"`, and the embedder's host functions: module = namespace),
//! each gated by one capability, and the import check that refuses a module before any of its
//! code runs.

use std::sync::Arc;

use wasmer::{ExternType, Function, FunctionEnv, FunctionEnvMut, Imports, Memory, Module, Store, Type};

use crate::capability::Capabilities;
use crate::error::{keel_status, Result};
use crate::runtime::{HostServices, LogLevel};
use crate::services::hostfn::{HostFn as DefinedFn, HostFunctions, HostOutput};
use crate::services::plugin_metrics::{MetricKind, PluginMetricSet};
use crate::services::sinks::{check_table, encode_entry, ScanEnd};
use crate::services::KvTarget;
use crate::{bail, err};

/// The only import module a plugin may use.
pub const IMPORT_MODULE: &str = "keel";

/// Longest log line kept (longer ones are truncated).
pub const MAX_LOG_BYTES: u32 = 16 << 10;
/// Largest key `kv_*` accept; larger ones make the host function return -1.
pub const MAX_KV_KEY_BYTES: u32 = 64 << 10;
/// Largest value `kv_put` accepts; larger ones make it return -1.
pub const MAX_KV_VALUE_BYTES: u32 = 16 << 20;
/// Most bytes one `random_bytes` call fills; larger requests return -1.
pub const MAX_RANDOM_BYTES: u32 = 1 << 20;
/// The signature of every embedder host function as a WASM import:
/// `(input_ptr, input_len, out_ptr, out_cap) -> i64` (see keel_wasm.h).
pub const HOST_FN_PARAMS: &[Type] = &[Type::I32, Type::I32, Type::I32, Type::I32];
pub const HOST_FN_RESULTS: &[Type] = &[Type::I64];
/// Bit 63 of a host function import's result: the call failed, the bytes are its message.
pub const HOST_FN_ERROR_BIT: i64 = i64::MIN;

/// One host function: its import name, the capability that grants it, its signature.
#[derive(Debug)]
pub struct HostFn {
    pub name: &'static str,
    pub capability: &'static str,
    pub params: &'static [Type],
    pub results: &'static [Type],
}

use Type::{F64, I32, I64};

/// Every host function Keel offers WASM plugins (see `keel_wasm.h`).
pub const HOST_FUNCTIONS: &[HostFn] = &[
    HostFn {
        name: "log",
        capability: "log",
        params: &[I32, I32, I32],
        results: &[],
    },
    HostFn {
        name: "now_unix_nanos",
        capability: "clock",
        params: &[],
        results: &[I64],
    },
    HostFn {
        name: "random_bytes",
        capability: "random",
        params: &[I32, I32],
        results: &[I32],
    },
    HostFn {
        name: "kv_get",
        capability: "kv:read",
        params: &[I32, I32, I32, I32],
        results: &[I64],
    },
    HostFn {
        name: "kv_put",
        capability: "kv:write",
        params: &[I32, I32, I32, I32],
        results: &[I32],
    },
    HostFn {
        name: "kv_delete",
        capability: "kv:write",
        params: &[I32, I32],
        results: &[I32],
    },
    // ---- sinks ----
    HostFn {
        name: "kv_scan",
        capability: "kv:read",
        params: &[I32, I32, I32, I32],
        results: &[I64],
    },
    HostFn {
        name: "storage_get",
        capability: "storage:read",
        params: &[I32, I32, I32, I32, I32, I32],
        results: &[I64],
    },
    HostFn {
        name: "storage_put",
        capability: "storage:write",
        params: &[I32, I32, I32, I32, I32, I32],
        results: &[I32],
    },
    HostFn {
        name: "storage_delete",
        capability: "storage:write",
        params: &[I32, I32, I32, I32],
        results: &[I32],
    },
    HostFn {
        name: "storage_scan",
        capability: "storage:read",
        params: &[I32, I32, I32, I32, I32, I32],
        results: &[I64],
    },
    HostFn {
        name: "sink_error",
        capability: "kv:read|kv:write|storage:read|storage:write",
        params: &[I32, I32],
        results: &[I32],
    },
    // ---- capmetrics ----
    HostFn {
        name: "metric_define",
        capability: "metrics:write",
        params: &[I32, I32, I32, I32, I32, I32, I32],
        results: &[I64],
    },
    HostFn {
        name: "metric_add",
        capability: "metrics:write",
        params: &[I32, F64],
        results: &[I32],
    },
    HostFn {
        name: "metric_set",
        capability: "metrics:write",
        params: &[I32, F64],
        results: &[I32],
    },
    HostFn {
        name: "metric_observe",
        capability: "metrics:write",
        params: &[I32, F64],
        results: &[I32],
    },
    HostFn {
        name: "rpc_register",
        capability: "rpc:register",
        params: &[I32, I32, I32, I32],
        results: &[I32],
    },
];

fn sig(params: &[Type], results: &[Type]) -> String {
    let p: Vec<String> = params.iter().map(|t| t.to_string()).collect();
    let r: Vec<String> = results.iter().map(|t| t.to_string()).collect();
    format!("({}) -> ({})", p.join(", "), r.join(", "))
}

/// What a module imports, once checked: Keel's own host functions (bit i =
/// `HOST_FUNCTIONS[i]`) and the embedder's host functions it is bound to (in import order).
#[derive(Debug, Default, Clone)]
pub struct UsedImports {
    pub keel: u32,
    pub defined: Vec<Arc<DefinedFn>>,
}

/// One import of a module, as either engine describes it.
#[derive(Debug, Clone)]
pub struct Import {
    pub module: String,
    pub name: String,
    /// The function's signature; `None` for an import that is not a function.
    pub func: Option<wasmer::FunctionType>,
    /// What the import is (for messages about non-function imports).
    pub kind: String,
}

impl Import {
    fn module(&self) -> &str {
        &self.module
    }

    fn name(&self) -> &str {
        &self.name
    }

    /// The imports of a wasmer module.
    pub fn of_wasmer(module: &Module) -> Vec<Import> {
        module
            .imports()
            .map(|imp| Import {
                module: imp.module().to_string(),
                name: imp.name().to_string(),
                func: match imp.ty() {
                    ExternType::Function(f) => Some(f.clone()),
                    _ => None,
                },
                kind: format!("{:?}", imp.ty()),
            })
            .collect()
    }
}

/// Check every import of `module` against Keel's host functions, the embedder's host
/// functions (`defined`, read once here: the plugin binds to what is defined now) and the
/// granted capabilities.
///
/// An import nobody defines fails with `KEEL_ERR_IMPORT_UNDEFINED`; one whose capability was
/// not granted, or that is not a function, with `KEEL_ERR_IMPORT_NOT_GRANTED`; a function
/// imported with the wrong signature with `KEEL_ERR_WASM_INSTANTIATE`. Every message names the
/// import as `module.name`.
pub fn check_imports(imports: &[Import], granted: Capabilities, defined: &HostFunctions) -> Result<UsedImports> {
    let mut used = UsedImports::default();
    for imp in imports {
        let full = format!("{}.{}", imp.module(), imp.name());
        let Some(fty) = &imp.func else {
            bail!(
                KEEL_ERR_IMPORT_NOT_GRANTED,
                "module imports '{full}' ({}); WASM plugins may import only functions",
                imp.kind
            );
        };
        if imp.module() != IMPORT_MODULE {
            let Some(f) = defined.get(imp.module(), imp.name()) else {
                bail!(
                    KEEL_ERR_IMPORT_UNDEFINED,
                    "module imports '{full}', which is not defined: neither a Keel host function (module \"{IMPORT_MODULE}\") nor a host function the server defined as module '{}' name '{}'",
                    imp.module(),
                    imp.name()
                );
            };
            if !f.granted_to(granted) {
                bail!(
                    KEEL_ERR_IMPORT_NOT_GRANTED,
                    "module imports '{full}', which needs capability '{}' that this plugin was not granted",
                    f.capability()
                );
            }
            if fty.params() != HOST_FN_PARAMS || fty.results() != HOST_FN_RESULTS {
                bail!(
                    KEEL_ERR_WASM_INSTANTIATE,
                    "module imports host function '{full}' as {}, but host functions are {}",
                    sig(fty.params(), fty.results()),
                    sig(HOST_FN_PARAMS, HOST_FN_RESULTS)
                );
            }
            used.defined.push(f);
            continue;
        }
        let Some(i) = HOST_FUNCTIONS.iter().position(|f| f.name == imp.name()) else {
            bail!(
                KEEL_ERR_IMPORT_UNDEFINED,
                "module imports '{full}', which Keel does not provide (module \"{IMPORT_MODULE}\" has: {})",
                HOST_FUNCTIONS.iter().map(|f| f.name).collect::<Vec<_>>().join(", ")
            );
        };
        let f = &HOST_FUNCTIONS[i];
        // `a|b`: any of the alternatives grants it.
        if !f.capability.split('|').any(|c| granted.has(c)) {
            bail!(
                KEEL_ERR_IMPORT_NOT_GRANTED,
                "module imports '{full}', which needs capability '{}' that this plugin was not granted",
                f.capability
            );
        }
        if fty.params() != f.params || fty.results() != f.results {
            bail!(
                KEEL_ERR_WASM_INSTANTIATE,
                "module imports '{full}' as {}, but Keel provides {}",
                sig(fty.params(), fty.results()),
                sig(f.params, f.results)
            );
        }
        used.keel |= 1 << i;
    }
    Ok(used)
}

/// A host function's failure: traps the guest; the call fails with `status`.
#[derive(Debug, Clone)]
pub struct HostTrap {
    pub status: keel_status,
    pub message: String,
}

impl std::fmt::Display for HostTrap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for HostTrap {}

fn violation(message: String) -> HostTrap {
    HostTrap {
        status: keel_status::KEEL_ERR_PLUGIN_ABI_VIOLATION,
        message,
    }
}

/// What host functions see of their instance (the same for both engines; each engine's
/// glue hands the handlers this and a [`Mem`] of the instance's memory).
pub struct HostEnv {
    /// The plugin's name: its log label and its key-value namespace.
    pub plugin: Arc<str>,
    pub services: HostServices,
    /// The plugin's metric set when `metrics:write` is granted (shared by its generations).
    pub metrics: Option<Arc<PluginMetricSet>>,
    /// The generation this instance belongs to (tags its RPC registrations).
    pub generation: u64,
    /// Reused buffer for an embedder host function's input when it overlaps the output
    /// buffer (otherwise the function reads guest memory in place).
    pub scratch_in: Vec<u8>,
}

/// The guest's linear memory as a host function sees it, whichever engine runs the guest:
/// its base and its size at the moment the guest called the host function. Only made by
/// [`Mem::new`], whose caller vouches that the range is the memory of the suspended guest.
pub struct Mem {
    base: *mut u8,
    len: u64,
}

/// What a host function's memory access failed on.
#[derive(Debug)]
pub struct OutOfBounds;

impl std::fmt::Display for OutOfBounds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("access outside the guest's memory")
    }
}

impl Mem {
    /// # Safety
    /// `base..base+len` is the linear memory of an instance whose guest is suspended in a
    /// host function call for as long as this `Mem` lives: nothing else reads or writes it
    /// meanwhile (memories are not shared), and it cannot grow or move (no guest code runs).
    pub unsafe fn new(base: *mut u8, len: u64) -> Mem {
        Mem { base, len }
    }

    #[inline]
    pub fn data_size(&self) -> u64 {
        self.len
    }

    #[inline]
    pub fn data_ptr(&self) -> *mut u8 {
        self.base
    }

    #[inline]
    pub fn read(&self, start: u64, buf: &mut [u8]) -> Result<(), OutOfBounds> {
        if start.checked_add(buf.len() as u64).is_none_or(|end| end > self.len) {
            return Err(OutOfBounds);
        }
        // SAFETY: start + len <= the memory's size (checked above); see `Mem::new`.
        unsafe { std::ptr::copy(self.base.add(start as usize), buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    #[inline]
    pub fn write(&self, start: u64, data: &[u8]) -> Result<(), OutOfBounds> {
        if start.checked_add(data.len() as u64).is_none_or(|end| end > self.len) {
            return Err(OutOfBounds);
        }
        // SAFETY: start + len <= the memory's size (checked above); see `Mem::new`. `copy`
        // (memmove): the source may be guest memory too.
        unsafe { std::ptr::copy(data.as_ptr(), self.base.add(start as usize), data.len()) };
        Ok(())
    }
}

fn check_range(view: &Mem, ptr: i32, len: u32, what: &str) -> Result<u64, HostTrap> {
    let start = ptr as u32 as u64;
    let end = start + len as u64;
    if end > view.data_size() {
        return Err(violation(format!(
            "{what}: bytes {start}..{end} lie outside the guest's memory of {} bytes",
            view.data_size()
        )));
    }
    Ok(start)
}

fn read(view: &Mem, ptr: i32, len: i32, what: &str) -> Result<Vec<u8>, HostTrap> {
    let len = len as u32;
    let start = check_range(view, ptr, len, what)?;
    let mut buf = vec![0u8; len as usize];
    view.read(start, &mut buf)
        .map_err(|e| violation(format!("{what}: {e}")))?;
    Ok(buf)
}

fn write(view: &Mem, ptr: i32, data: &[u8], what: &str) -> Result<(), HostTrap> {
    let start = check_range(view, ptr, data.len() as u32, what)?;
    view.write(start, data).map_err(|e| violation(format!("{what}: {e}")))
}

pub(crate) fn h_log(data: &mut HostEnv, v: &Mem, level: i32, ptr: i32, len: i32) -> Result<(), HostTrap> {
    check_range(v, ptr, len as u32, "log message")?;
    let bytes = read(v, ptr, (len as u32).min(MAX_LOG_BYTES) as i32, "log message")?;
    data.services.log(
        &data.plugin,
        LogLevel::from_i32(level),
        &String::from_utf8_lossy(&bytes),
    );
    Ok(())
}

pub(crate) fn h_now_unix_nanos(_data: &mut HostEnv, _v: &Mem) -> Result<i64, HostTrap> {
    Ok(
        match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => d.as_nanos().min(i64::MAX as u128) as i64,
            Err(e) => -(e.duration().as_nanos().min(i64::MAX as u128) as i64),
        },
    )
}

pub(crate) fn h_random_bytes(_data: &mut HostEnv, v: &Mem, ptr: i32, len: i32) -> Result<i32, HostTrap> {
    use rand_core::RngCore;
    let len = len as u32;
    let start = check_range(v, ptr, len, "random_bytes buffer")?;
    if len > MAX_RANDOM_BYTES {
        return Ok(-1);
    }
    let mut chunk = [0u8; 256];
    let mut off = 0u64;
    while off < len as u64 {
        let n = (len as u64 - off).min(chunk.len() as u64) as usize;
        rand_core::OsRng.try_fill_bytes(&mut chunk[..n]).map_err(|e| HostTrap {
            status: keel_status::KEEL_ERR_INTERNAL,
            message: format!("OS RNG failed: {e}"),
        })?;
        v.write(start + off, &chunk[..n])
            .map_err(|e| violation(format!("random_bytes buffer: {e}")))?;
        off += n as u64;
    }
    Ok(0)
}

/// What `kv_get`/`storage_get` return for a sink failure (message through `sink_error`).
const SINK_FAILED: i32 = -3;

fn get_into(data: &HostEnv, v: &Mem, at: KvTarget<'_>, key: &[u8], op: i32, cap: i32) -> Result<i64, HostTrap> {
    match data.services.kv_get(at, key) {
        Err(_) => Ok(SINK_FAILED as i64),
        Ok(None) => Ok(-1),
        Ok(Some(value)) => {
            let n = value.len().min(cap as u32 as usize);
            write(v, op, &value[..n], "get output buffer")?;
            Ok(value.len() as i64)
        }
    }
}

/// A scan into guest memory: whole entries (`encode_entry`) at `op`, at most `cap` bytes.
/// Returns bytes written, plus bit 32 set if truncated; -3 if the sink failed.
fn scan_into(data: &HostEnv, v: &Mem, at: KvTarget<'_>, prefix: &[u8], op: i32, cap: i32) -> i64 {
    let start = op as u32 as u64;
    let mut off = 0u64;
    let mut buf = Vec::new();
    let r = data.services.kv_scan(at, prefix, cap as u32 as usize, |k, val| {
        encode_entry(&mut buf, k, val);
        if v.write(start + off, &buf).is_err() {
            return false;
        }
        off += buf.len() as u64;
        true
    });
    match r {
        Err(_) => SINK_FAILED as i64,
        Ok(ScanEnd::Complete) => off as i64,
        Ok(ScanEnd::Truncated) => off as i64 | (1 << 32),
    }
}

/// A table name from guest memory, checked; `None` (the call returns -2) if it is not a
/// valid name (the reason goes to `sink_error`).
fn table_arg(v: &Mem, tp: i32, tl: i32) -> Result<Option<String>, HostTrap> {
    check_range(v, tp, tl as u32, "table name")?;
    if tl as u32 as usize > crate::services::sinks::MAX_TABLE_NAME {
        crate::services::sinks::record_error(&crate::services::SinkError::new(format!(
            "table name of {} bytes (at most {})",
            tl as u32,
            crate::services::sinks::MAX_TABLE_NAME
        )));
        return Ok(None);
    }
    let raw = read(v, tp, tl, "table name")?;
    match check_table(&raw) {
        Ok(t) => Ok(Some(t.to_string())),
        Err(e) => {
            crate::services::sinks::record_error(&crate::services::SinkError(e));
            Ok(None)
        }
    }
}

pub(crate) fn h_kv_get(data: &mut HostEnv, v: &Mem, kp: i32, kl: i32, op: i32, cap: i32) -> Result<i64, HostTrap> {
    check_range(v, kp, kl as u32, "kv_get key")?;
    check_range(v, op, cap as u32, "kv_get output buffer")?;
    if kl as u32 > MAX_KV_KEY_BYTES {
        return Ok(-2);
    }
    let key = read(v, kp, kl, "kv_get key")?;
    get_into(data, v, KvTarget::kv(&data.plugin), &key, op, cap)
}

pub(crate) fn h_kv_put(data: &mut HostEnv, v: &Mem, kp: i32, kl: i32, vp: i32, vl: i32) -> Result<i32, HostTrap> {
    check_range(v, kp, kl as u32, "kv_put key")?;
    check_range(v, vp, vl as u32, "kv_put value")?;
    if kl as u32 > MAX_KV_KEY_BYTES || vl as u32 > MAX_KV_VALUE_BYTES {
        return Ok(-1);
    }
    let key = read(v, kp, kl, "kv_put key")?;
    let value = read(v, vp, vl, "kv_put value")?;
    Ok(match data.services.kv_put(KvTarget::kv(&data.plugin), &key, &value) {
        Ok(()) => 0,
        Err(_) => SINK_FAILED,
    })
}

pub(crate) fn h_kv_delete(data: &mut HostEnv, v: &Mem, kp: i32, kl: i32) -> Result<i32, HostTrap> {
    check_range(v, kp, kl as u32, "kv_delete key")?;
    if kl as u32 > MAX_KV_KEY_BYTES {
        return Ok(-1);
    }
    let key = read(v, kp, kl, "kv_delete key")?;
    Ok(match data.services.kv_delete(KvTarget::kv(&data.plugin), &key) {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(_) => SINK_FAILED,
    })
}

pub(crate) fn h_kv_scan(data: &mut HostEnv, v: &Mem, pp: i32, pl: i32, op: i32, cap: i32) -> Result<i64, HostTrap> {
    check_range(v, pp, pl as u32, "kv_scan prefix")?;
    check_range(v, op, cap as u32, "kv_scan output buffer")?;
    if pl as u32 > MAX_KV_KEY_BYTES {
        return Ok(-2);
    }
    let prefix = read(v, pp, pl, "kv_scan prefix")?;
    Ok(scan_into(data, v, KvTarget::kv(&data.plugin), &prefix, op, cap))
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn h_storage_get(
    data: &mut HostEnv,
    v: &Mem,
    tp: i32,
    tl: i32,
    kp: i32,
    kl: i32,
    op: i32,
    cap: i32,
) -> Result<i64, HostTrap> {
    check_range(v, kp, kl as u32, "storage_get key")?;
    check_range(v, op, cap as u32, "storage_get output buffer")?;
    let Some(table) = table_arg(v, tp, tl)? else {
        return Ok(-2);
    };
    if kl as u32 > MAX_KV_KEY_BYTES {
        return Ok(-2);
    }
    let key = read(v, kp, kl, "storage_get key")?;
    get_into(data, v, KvTarget::table(&data.plugin, &table), &key, op, cap)
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn h_storage_put(
    data: &mut HostEnv,
    v: &Mem,
    tp: i32,
    tl: i32,
    kp: i32,
    kl: i32,
    vp: i32,
    vl: i32,
) -> Result<i32, HostTrap> {
    check_range(v, kp, kl as u32, "storage_put key")?;
    check_range(v, vp, vl as u32, "storage_put value")?;
    let Some(table) = table_arg(v, tp, tl)? else {
        return Ok(-1);
    };
    if kl as u32 > MAX_KV_KEY_BYTES || vl as u32 > MAX_KV_VALUE_BYTES {
        return Ok(-1);
    }
    let key = read(v, kp, kl, "storage_put key")?;
    let value = read(v, vp, vl, "storage_put value")?;
    Ok(
        match data
            .services
            .kv_put(KvTarget::table(&data.plugin, &table), &key, &value)
        {
            Ok(()) => 0,
            Err(_) => SINK_FAILED,
        },
    )
}

pub(crate) fn h_storage_delete(
    data: &mut HostEnv,
    v: &Mem,
    tp: i32,
    tl: i32,
    kp: i32,
    kl: i32,
) -> Result<i32, HostTrap> {
    check_range(v, kp, kl as u32, "storage_delete key")?;
    let Some(table) = table_arg(v, tp, tl)? else {
        return Ok(-1);
    };
    if kl as u32 > MAX_KV_KEY_BYTES {
        return Ok(-1);
    }
    let key = read(v, kp, kl, "storage_delete key")?;
    Ok(
        match data.services.kv_delete(KvTarget::table(&data.plugin, &table), &key) {
            Ok(true) => 0,
            Ok(false) => 1,
            Err(_) => SINK_FAILED,
        },
    )
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn h_storage_scan(
    data: &mut HostEnv,
    v: &Mem,
    tp: i32,
    tl: i32,
    pp: i32,
    pl: i32,
    op: i32,
    cap: i32,
) -> Result<i64, HostTrap> {
    check_range(v, pp, pl as u32, "storage_scan prefix")?;
    check_range(v, op, cap as u32, "storage_scan output buffer")?;
    let Some(table) = table_arg(v, tp, tl)? else {
        return Ok(-2);
    };
    if pl as u32 > MAX_KV_KEY_BYTES {
        return Ok(-2);
    }
    let prefix = read(v, pp, pl, "storage_scan prefix")?;
    Ok(scan_into(
        data,
        v,
        KvTarget::table(&data.plugin, &table),
        &prefix,
        op,
        cap,
    ))
}

pub(crate) fn h_sink_error(_data: &mut HostEnv, v: &Mem, ptr: i32, cap: i32) -> Result<i32, HostTrap> {
    check_range(v, ptr, cap as u32, "sink_error buffer")?;
    let msg = crate::services::sinks::last_sink_error();
    let msg = &msg.as_bytes()[..msg.len().min(i32::MAX as usize)];
    write(v, ptr, &msg[..msg.len().min(cap as u32 as usize)], "sink_error buffer")?;
    Ok(msg.len() as i32)
}

/// Most histogram bucket bounds `metric_define` reads from the guest.
const MAX_GUEST_BUCKETS: u32 = crate::services::plugin_metrics::MAX_BUCKETS as u32 + 1;
/// Longest metric name or labels JSON `metric_define` reads; longer is refused.
const MAX_METRIC_TEXT: u32 = 64 << 10;

/// A refused definition or registration: logged (Warn) with the reason; its status for the
/// guest, negated.
#[cold]
fn refused(env: &HostEnv, e: crate::error::Error) -> i64 {
    env.services.log(&env.plugin, LogLevel::Warn, &e.to_string());
    -(e.status() as i64)
}

fn text(view: &Mem, ptr: i32, len: i32, what: &str) -> Result<std::result::Result<String, i64>, HostTrap> {
    check_range(view, ptr, len as u32, what)?;
    if len as u32 > MAX_METRIC_TEXT {
        return Ok(Err(-(keel_status::KEEL_ERR_INVALID_ARGUMENT as i64)));
    }
    let b = read(view, ptr, len, what)?;
    Ok(String::from_utf8(b).map_err(|_| -(keel_status::KEEL_ERR_INVALID_UTF8 as i64)))
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn h_metric_define(
    data: &mut HostEnv,
    v: &Mem,
    kind: i32,
    np: i32,
    nl: i32,
    lp: i32,
    ll: i32,
    bp: i32,
    bc: i32,
) -> Result<i64, HostTrap> {
    let Some(set) = data.metrics.clone() else {
        return Ok(-(keel_status::KEEL_ERR_CAPABILITY_DENIED as i64));
    };
    let name = match text(v, np, nl, "metric_define name")? {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let labels = match text(v, lp, ll, "metric_define labels")? {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let bc = bc as u32;
    check_range(v, bp, bc.saturating_mul(8), "metric_define buckets")?;
    if bc > MAX_GUEST_BUCKETS {
        return Ok(refused(
            data,
            err!(
                KEEL_ERR_METRIC_INVALID,
                "{bc} histogram buckets; at most {}",
                MAX_GUEST_BUCKETS - 1
            ),
        ));
    }
    let raw = read(v, bp, (bc * 8) as i32, "metric_define buckets")?;
    let buckets: Vec<f64> = raw
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
        .collect();
    let Some(kind) = MetricKind::from_i32(kind) else {
        return Ok(refused(
            data,
            err!(KEEL_ERR_METRIC_INVALID, "metric kind {kind} is not KEEL_METRIC_*"),
        ));
    };
    Ok(
        match data
            .services
            .metrics
            .define(&set, kind, &name, labels.as_bytes(), &buckets)
        {
            Ok(id) => id as i64,
            Err(e) => refused(data, e),
        },
    )
}

/// Shared body of the three metric updates: no lock, no allocation; the status negated.
#[inline]
fn metric_update(
    data: &HostEnv,
    f: impl FnOnce(&PluginMetricSet) -> std::result::Result<(), keel_status>,
) -> Result<i32, HostTrap> {
    Ok(match &data.metrics {
        None => -(keel_status::KEEL_ERR_CAPABILITY_DENIED as i32),
        Some(set) => match f(set) {
            Ok(()) => 0,
            Err(s) => -(s as i32),
        },
    })
}

pub(crate) fn h_metric_add(data: &mut HostEnv, _mem: &Mem, id: i32, v: f64) -> Result<i32, HostTrap> {
    metric_update(data, |s| s.add(id as u32, v))
}

pub(crate) fn h_metric_set(data: &mut HostEnv, _mem: &Mem, id: i32, v: f64) -> Result<i32, HostTrap> {
    metric_update(data, |s| s.set(id as u32, v))
}

pub(crate) fn h_metric_observe(data: &mut HostEnv, _mem: &Mem, id: i32, v: f64) -> Result<i32, HostTrap> {
    metric_update(data, |s| s.observe(id as u32, v))
}

pub(crate) fn h_rpc_register(data: &mut HostEnv, v: &Mem, ep: i32, el: i32, fp: i32, fl: i32) -> Result<i32, HostTrap> {
    let endpoint = match text(v, ep, el, "rpc_register endpoint")? {
        Ok(s) => s,
        Err(code) => return Ok(code as i32),
    };
    let function = match text(v, fp, fl, "rpc_register function")? {
        Ok(s) => s,
        Err(code) => return Ok(code as i32),
    };
    // The guest's function list is read after init; an unknown function is found when the
    // endpoint is invoked (KEEL_ERR_FUNCTION_NOT_FOUND).
    Ok(
        match data
            .services
            .rpc
            .register(&data.plugin, data.generation, None, &endpoint, &function)
        {
            Ok(()) => 0,
            Err(e) => refused(data, e) as i32,
        },
    )
}

/// The output sink of an embedder host function called by a guest: writes go straight into
/// the guest's output buffer (at most `cap` bytes; the rest is counted, not kept), so a call
/// buffers nothing on the host side and a write is never refused.
struct GuestSink {
    /// The guest's output buffer: `cap` writable bytes of its linear memory.
    dst: *mut u8,
    cap: usize,
    /// Bytes written so far (also those past `cap`).
    len: usize,
}

/// `keel_output.write` of a [`GuestSink`].
///
/// # Safety
/// `ctx` is the `GuestSink` of the `HostOutput` this function was handed out with, alive and
/// not otherwise borrowed; `data` points to `len` readable bytes (or is NULL with `len == 0`).
unsafe extern "C" fn guest_sink_write(ctx: *mut std::ffi::c_void, data: *const u8, len: usize) -> i32 {
    if ctx.is_null() || (data.is_null() && len != 0) {
        return -1;
    }
    // SAFETY: ctx is the GuestSink on `h_defined`'s frame, which outlives the host function.
    let sink = unsafe { &mut *(ctx as *mut GuestSink) };
    let n = sink.cap.saturating_sub(sink.len).min(len);
    if n != 0 {
        // SAFETY: `dst..dst+cap` lies inside the guest's memory (checked by `h_defined`) and
        // sink.len + n <= cap; `data` holds `len >= n` readable bytes. `copy` (memmove): the
        // source may be guest memory too.
        unsafe { std::ptr::copy(data, sink.dst.add(sink.len), n) };
    }
    sink.len = sink.len.saturating_add(len);
    0
}

/// An embedder host function called by the guest: the function runs on the guest's input and
/// writes straight into the guest's output buffer (up to `cap` bytes of its output, or of its
/// error message); returns the full length, with bit 63 set on failure.
pub(crate) fn h_defined(
    f: &DefinedFn,
    data: &mut HostEnv,
    v: &Mem,
    ip: i32,
    il: i32,
    op: i32,
    cap: i32,
) -> Result<i64, HostTrap> {
    let in_start = check_range(v, ip, il as u32, "host function input")? as usize;
    let out_start = check_range(v, op, cap as u32, "host function output buffer")? as usize;
    let (il, cap) = (il as u32 as usize, cap as u32 as usize);
    let base = v.data_ptr();
    let mut sink = GuestSink {
        // SAFETY: out_start + cap <= the memory's size (check_range).
        dst: unsafe { base.add(out_start) },
        cap,
        len: 0,
    };
    let out = HostOutput {
        ctx: &mut sink as *mut GuestSink as *mut std::ffi::c_void,
        write: guest_sink_write,
    };
    let overlaps = in_start < out_start + cap && out_start < in_start + il;
    let rc = if overlaps && cap != 0 && il != 0 {
        // The function writes into the bytes it reads: hand it a copy of its input.
        let mut input = std::mem::take(&mut data.scratch_in);
        input.clear();
        input.resize(il, 0);
        v.read(in_start as u64, &mut input)
            .map_err(|e| violation(format!("host function input: {e}")))?;
        let rc = f.invoke(&data.plugin, &input, &out);
        data.scratch_in = input;
        rc
    } else {
        // SAFETY: in_start + il <= the memory's size (check_range); the guest is suspended in
        // this call and its memory is not shared, so nothing writes these bytes while the
        // function reads them (its own writes go to the disjoint output range).
        let input = unsafe { std::slice::from_raw_parts(base.add(in_start), il) };
        f.invoke(&data.plugin, input, &out)
    };
    let len = sink.len.min(i64::MAX as usize) as i64;
    Ok(if rc != 0 { HOST_FN_ERROR_BIT | len } else { len })
}

/// Calls `$m!` with the table of Keel's host functions: import name, handler, parameters,
/// result. Each engine's glue (below for wasmer, `wt` for wasmtime) is generated from it, so
/// the handlers above are the only implementation.
macro_rules! keel_host_fns {
    ($m:ident) => {
        $m! {
            "log" => h_log(level: i32, ptr: i32, len: i32) -> ();
            "now_unix_nanos" => h_now_unix_nanos() -> i64;
            "random_bytes" => h_random_bytes(ptr: i32, len: i32) -> i32;
            "kv_get" => h_kv_get(kp: i32, kl: i32, op: i32, cap: i32) -> i64;
            "kv_put" => h_kv_put(kp: i32, kl: i32, vp: i32, vl: i32) -> i32;
            "kv_delete" => h_kv_delete(kp: i32, kl: i32) -> i32;
            "kv_scan" => h_kv_scan(pp: i32, pl: i32, op: i32, cap: i32) -> i64;
            "storage_get" => h_storage_get(tp: i32, tl: i32, kp: i32, kl: i32, op: i32, cap: i32) -> i64;
            "storage_put" => h_storage_put(tp: i32, tl: i32, kp: i32, kl: i32, vp: i32, vl: i32) -> i32;
            "storage_delete" => h_storage_delete(tp: i32, tl: i32, kp: i32, kl: i32) -> i32;
            "storage_scan" => h_storage_scan(tp: i32, tl: i32, pp: i32, pl: i32, op: i32, cap: i32) -> i64;
            "sink_error" => h_sink_error(ptr: i32, cap: i32) -> i32;
            "metric_define" => h_metric_define(kind: i32, np: i32, nl: i32, lp: i32, ll: i32, bp: i32, bc: i32) -> i64;
            "metric_add" => h_metric_add(id: i32, v: f64) -> i32;
            "metric_set" => h_metric_set(id: i32, v: f64) -> i32;
            "metric_observe" => h_metric_observe(id: i32, v: f64) -> i32;
            "rpc_register" => h_rpc_register(ep: i32, el: i32, fp: i32, fl: i32) -> i32;
        }
    };
}
pub(crate) use keel_host_fns;

/// The wasmer function environment: the engine-agnostic [`HostEnv`] and the instance's memory.
pub struct WasmerEnv {
    /// The instance's memory (set right after instantiation).
    pub memory: Option<Memory>,
    pub host: HostEnv,
}

/// The handlers' arguments in a wasmer host function: the environment and the memory.
fn wasmer_parts<'a>(env: &'a mut FunctionEnvMut<WasmerEnv>) -> Result<(&'a mut HostEnv, Mem), HostTrap> {
    let (data, store) = env.data_and_store_mut();
    let Some(memory) = &data.memory else {
        return Err(violation("host function called before the instance was set up".into()));
    };
    let view = memory.view(&store);
    // SAFETY: the instance's own memory while its guest is suspended in this host function
    // (wasmer calls host functions synchronously on the guest's thread; memories are not
    // shared and cannot grow until the guest runs again).
    let mem = unsafe { Mem::new(view.data_ptr(), view.data_size()) };
    Ok((&mut data.host, mem))
}

macro_rules! wasmer_fn {
    ($($name:literal => $h:ident($($a:ident: $t:ty),*) -> $r:ty;)*) => {
        /// The wasmer function of Keel host function `name`.
        fn wasmer_host_fn(store: &mut Store, env: &FunctionEnv<WasmerEnv>, name: &str) -> Option<Function> {
            match name {
                $($name => Some(Function::new_typed_with_env(
                    store,
                    env,
                    |mut env: FunctionEnvMut<WasmerEnv>, $($a: $t),*| -> Result<$r, HostTrap> {
                        let (data, mem) = wasmer_parts(&mut env)?;
                        $h(data, &mem, $($a),*)
                    },
                )),)*
                _ => None,
            }
        }
    };
}
keel_host_fns!(wasmer_fn);

/// The wasmer import object for one instance: exactly the host functions in `used`.
pub fn imports(store: &mut Store, env: &FunctionEnv<WasmerEnv>, used: &UsedImports) -> Result<Imports> {
    let mut imports = Imports::new();
    for f in &used.defined {
        let bound = f.clone();
        let func = Function::new_typed_with_env(
            store,
            env,
            move |mut env: FunctionEnvMut<WasmerEnv>, ip: i32, il: i32, op: i32, cap: i32| -> Result<i64, HostTrap> {
                let (data, mem) = wasmer_parts(&mut env)?;
                h_defined(&bound, data, &mem, ip, il, op, cap)
            },
        );
        imports.define(f.namespace(), f.name(), func);
    }
    for (i, f) in HOST_FUNCTIONS.iter().enumerate() {
        if used.keel & (1 << i) == 0 {
            continue;
        }
        let Some(func) = wasmer_host_fn(store, env, f.name) else {
            return Err(err!(
                KEEL_ERR_INTERNAL,
                "host function '{}' has no implementation",
                f.name
            ));
        };
        imports.define(IMPORT_MODULE, f.name, func);
    }
    Ok(imports)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module(imports: &str) -> Vec<Import> {
        let wat = format!("(module {imports})");
        let store = Store::default();
        Import::of_wasmer(&Module::new(&store, wat::parse_str(&wat).unwrap()).unwrap())
    }

    fn none() -> HostFunctions {
        HostFunctions::default()
    }

    fn caps(names: &[&str]) -> Capabilities {
        Capabilities::parse(names).unwrap()
    }

    #[test]
    fn granted_imports_pass_and_are_reported() {
        let m = module(
            r#"(import "keel" "log" (func (param i32 i32 i32))) (import "keel" "kv_get" (func (param i32 i32 i32 i32) (result i64)))"#,
        );
        let used = check_imports(&m, caps(&["log", "kv:read"]), &none()).unwrap();
        assert_eq!(used.keel, 0b1001);
    }

    #[test]
    fn ungranted_unknown_and_non_function_imports_are_refused_by_name() {
        let m = module(r#"(import "keel" "kv_put" (func (param i32 i32 i32 i32) (result i32)))"#);
        let e = check_imports(&m, caps(&["log", "kv:read"]), &none()).unwrap_err();
        assert_eq!(e.status(), keel_status::KEEL_ERR_IMPORT_NOT_GRANTED);
        assert!(
            e.message().contains("keel.kv_put") && e.message().contains("kv:write"),
            "{e}"
        );

        let m = module(r#"(import "env" "abort" (func))"#);
        let e = check_imports(&m, Capabilities::all(), &none()).unwrap_err();
        assert_eq!(e.status(), keel_status::KEEL_ERR_IMPORT_UNDEFINED);
        assert!(e.message().contains("env.abort"), "{e}");

        let m = module(r#"(import "keel" "spawn" (func))"#);
        let e = check_imports(&m, Capabilities::all(), &none()).unwrap_err();
        assert_eq!(e.status(), keel_status::KEEL_ERR_IMPORT_UNDEFINED);
        assert!(e.message().contains("keel.spawn"), "{e}");

        let m = module(r#"(import "keel" "mem" (memory 1))"#);
        let e = check_imports(&m, Capabilities::all(), &none()).unwrap_err();
        assert_eq!(e.status(), keel_status::KEEL_ERR_IMPORT_NOT_GRANTED);
        assert!(e.message().contains("keel.mem"), "{e}");
    }

    #[test]
    fn defined_host_functions_are_checked_by_definition_capability_and_signature() {
        let defs = HostFunctions::default();
        defs.define_fn("db", "get_row", "storage:read", |_, _, _| Ok(()))
            .unwrap();
        let good = r#"(import "db" "get_row" (func (param i32 i32 i32 i32) (result i64)))"#;
        let used = check_imports(&module(good), caps(&["storage:read"]), &defs).unwrap();
        assert_eq!((used.keel, used.defined.len()), (0, 1));
        let e = check_imports(&module(good), caps(&["log"]), &defs).unwrap_err();
        assert_eq!(e.status(), keel_status::KEEL_ERR_IMPORT_NOT_GRANTED);
        assert!(
            e.message().contains("db.get_row") && e.message().contains("storage:read"),
            "{e}"
        );
        let m = module(r#"(import "db" "put_row" (func (param i32 i32 i32 i32) (result i64)))"#);
        let e = check_imports(&m, Capabilities::all(), &defs).unwrap_err();
        assert_eq!(e.status(), keel_status::KEEL_ERR_IMPORT_UNDEFINED);
        assert!(e.message().contains("db.put_row"), "{e}");
        let m = module(r#"(import "db" "get_row" (func (param i32) (result i32)))"#);
        let e = check_imports(&m, Capabilities::all(), &defs).unwrap_err();
        assert_eq!(e.status(), keel_status::KEEL_ERR_WASM_INSTANTIATE);
    }

    #[test]
    fn wrong_signature_is_an_instantiate_error() {
        let m = module(r#"(import "keel" "log" (func (param i32)))"#);
        let e = check_imports(&m, caps(&["log"]), &none()).unwrap_err();
        assert_eq!(e.status(), keel_status::KEEL_ERR_WASM_INSTANTIATE);
        assert!(e.message().contains("keel.log"), "{e}");
    }
}
