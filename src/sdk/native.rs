//! Safe helpers for native Keel plugins written in Rust (`include/keel/keel_plugin.h`).
//!
//! Implement [`Plugin`] for your instance type and export it with
//! [`keel_native_plugin!`](crate::keel_native_plugin) in a `cdylib` crate:
//!
//! ```ignore
//! struct Echo;
//! impl keel::sdk::native::Plugin for Echo {
//!     fn init(_config: &str, _host: keel::sdk::native::Host) -> keel::sdk::Result<Self> { Ok(Echo) }
//!     fn call(&self, f: keel::sdk::native::Function, input: &[u8], out: &mut keel::sdk::native::Output<'_>)
//!         -> keel::sdk::Result<()> { out.write(input) }
//! }
//! keel::keel_native_plugin!(type: Echo, name: "echo", version: "1.0.0", functions: ["echo"]);
//! ```
//!
//! Every hook runs behind a panic barrier: a panic becomes an error whose message
//! ("plugin panicked: ...") is written to the hook's error output, and the hook returns
//! non-zero; no unwinding reaches the host. `init`, `call` and `save_state` report their
//! errors through the host (`KEEL_ERR_INIT_FAILED` / `KEEL_ERR_CALL_FAILED` /
//! `KEEL_ERR_STATE_SAVE` with the message); `restore_state`, `health` and `shutdown` have no
//! error output in the ABI: a failure or panic there is a non-zero status (restore), an
//! unhealthy report (health) or nothing (shutdown).

use std::ffi::{c_char, c_void, CStr, CString};
use std::mem::{offset_of, size_of};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::addr_of;

use super::{panic_message, Error, Health, LogLevel, Result};

/// `KEEL_PLUGIN_ABI_VERSION`.
pub const ABI_VERSION: u32 = 1;
/// `KEEL_PLUGIN_FLAG_SERIAL`.
pub const FLAG_SERIAL: u32 = 1;

/// Mirror of `keel_output`. The host never passes a NULL `write`; the SDK checks anyway.
#[repr(C)]
pub struct RawOutput {
    pub ctx: *mut c_void,
    pub write: Option<unsafe extern "C" fn(*mut c_void, *const u8, usize) -> i32>,
}

/// `keel_host_fn` (opaque).
#[repr(C)]
pub struct RawHostFn {
    _opaque: [u8; 0],
}

/// Mirror of `keel_host_api` (fields in header order; the table grows at its end only).
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
    pub kv_scan: Option<unsafe extern "C" fn(*mut c_void, *const u8, usize, *const RawOutput) -> i32>,
    pub storage_get:
        Option<unsafe extern "C" fn(*mut c_void, *const c_char, *const u8, usize, *const RawOutput) -> i32>,
    pub storage_put:
        Option<unsafe extern "C" fn(*mut c_void, *const c_char, *const u8, usize, *const u8, usize) -> i32>,
    pub storage_delete: Option<unsafe extern "C" fn(*mut c_void, *const c_char, *const u8, usize) -> i32>,
    pub storage_scan:
        Option<unsafe extern "C" fn(*mut c_void, *const c_char, *const u8, usize, *const RawOutput) -> i32>,
    pub sink_error: Option<unsafe extern "C" fn(*mut c_void, *const RawOutput) -> i32>,
    #[allow(clippy::type_complexity)]
    pub metric_define: Option<
        unsafe extern "C" fn(
            *mut c_void,
            i32,
            *const c_char,
            usize,
            *const c_char,
            usize,
            *const f64,
            usize,
            *mut u32,
        ) -> i32,
    >,
    pub metric_add: Option<unsafe extern "C" fn(*mut c_void, u32, f64) -> i32>,
    pub metric_set: Option<unsafe extern "C" fn(*mut c_void, u32, f64) -> i32>,
    pub metric_observe: Option<unsafe extern "C" fn(*mut c_void, u32, f64) -> i32>,
    pub rpc_register: Option<unsafe extern "C" fn(*mut c_void, *const c_char, usize, *const c_char, usize) -> i32>,
    pub host_fn_lookup: Option<unsafe extern "C" fn(*mut c_void, *const c_char, *const c_char) -> *const RawHostFn>,
    pub host_fn_call:
        Option<unsafe extern "C" fn(*mut c_void, *const RawHostFn, *const u8, usize, *const RawOutput) -> i32>,
}

/// `init` of `keel_plugin_vtable`.
pub type InitFn =
    unsafe extern "C" fn(*const c_char, usize, *const RawHostApi, *mut *mut c_void, *const RawOutput) -> i32;
/// `call` of `keel_plugin_vtable`.
pub type CallFn = unsafe extern "C" fn(*mut c_void, u32, *const u8, usize, *const RawOutput) -> i32;

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
    pub init: Option<InitFn>,
    pub call: Option<CallFn>,
    pub shutdown: Option<unsafe extern "C" fn(*mut c_void)>,
    pub save_state: Option<unsafe extern "C" fn(*mut c_void, *const RawOutput) -> i32>,
    pub restore_state: Option<unsafe extern "C" fn(*mut c_void, *const u8, usize) -> i32>,
    pub health: Option<unsafe extern "C" fn(*mut c_void) -> i32>,
    pub restore_state_versioned: Option<unsafe extern "C" fn(*mut c_void, *const u8, usize, *const c_char) -> i32>,
}

/// A value holding raw pointers to static data (the vtable, the function-name array), shared
/// between threads: what it points to is immutable and lives as long as the library.
#[repr(transparent)]
pub struct StaticData<T>(pub T);

// SAFETY: StaticData only wraps the plugin's vtable and name arrays, built once at compile time
// from string literals and function pointers and never written to: reading them from any
// thread is sound.
unsafe impl<T> Sync for StaticData<T> {}

/// One of the plugin's functions, as `call` receives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Function {
    /// Its index in the exported list (what the host passes).
    pub index: u32,
    /// Its name, as listed in [`keel_native_plugin!`](crate::keel_native_plugin).
    pub name: &'static str,
}

/// Where a hook writes its result (the host's `keel_output`, valid during the hook).
pub struct Output<'a> {
    raw: &'a RawOutput,
}

impl<'a> Output<'a> {
    /// Append `data`. An error means the host refused it (output larger than the plugin's
    /// `max_output_bytes`): stop and return the error; the host fails the call anyway.
    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        let Some(write) = self.raw.write else {
            return Err(Error::new("the host passed an output without a write function"));
        };
        // SAFETY: `raw` is the keel_output the host passed to the running hook, valid for its
        // duration (Output borrows it for no longer); `data` is a live slice of `len` bytes,
        // which the host copies before returning.
        let rc = unsafe { write(self.raw.ctx, data.as_ptr(), data.len()) };
        if rc == 0 {
            Ok(())
        } else {
            Err(Error::new(
                "the host refused the output (larger than the plugin's output limit)",
            ))
        }
    }

    /// Append `s` (UTF-8).
    pub fn write_str(&mut self, s: &str) -> Result<()> {
        self.write(s.as_bytes())
    }
}

impl std::fmt::Write for Output<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.write(s.as_bytes()).map_err(|_| std::fmt::Error)
    }
}

/// A Keel native plugin instance. One is created by `init` per load (and per reload: the new
/// generation gets its own), shared by concurrent calls (hence `Sync`; use interior
/// mutability for state, or set [`SERIAL`](Plugin::SERIAL)), and dropped by `shutdown`.
pub trait Plugin: Sized + Send + Sync + 'static {
    /// `KEEL_PLUGIN_FLAG_SERIAL`: the host serialises calls into the plugin.
    const SERIAL: bool = false;
    /// Export `save_state` / `restore_state` (hot reload keeps the state).
    const HAS_STATE: bool = false;
    /// Export `health` (the host's health monitor polls it).
    const HAS_HEALTH: bool = false;

    /// Create the instance. `config` is the manifest's `config` object as JSON text ("{}"
    /// when absent); `host` reaches the host-API table and may be kept in the instance.
    fn init(config: &str, host: Host) -> Result<Self>;

    /// Run `function` on `input`, writing the result to `output`. On `Err`, the message is
    /// appended to `output` (after what was written) and the host reports the call failed.
    fn call(&self, function: Function, input: &[u8], output: &mut Output<'_>) -> Result<()>;

    /// Write the state a later generation takes over ([`HAS_STATE`](Plugin::HAS_STATE)).
    fn save_state(&self, _output: &mut Output<'_>) -> Result<()> {
        Err(Error::new("save_state is not implemented"))
    }

    /// Take over `state` written by `save_state` of an earlier generation, whose manifest
    /// version was `saved_by` (when the host passes it).
    fn restore_state(&self, _state: &[u8], _saved_by: Option<&str>) -> Result<()> {
        Err(Error::new("restore_state is not implemented"))
    }

    /// The instance's health ([`HAS_HEALTH`](Plugin::HAS_HEALTH)); a panic reports unhealthy.
    fn health(&self) -> Health {
        Health::Healthy
    }
}

/// The function names of a plugin type, implemented by
/// [`keel_native_plugin!`](crate::keel_native_plugin) (the list it exports).
pub trait Exports {
    const FUNCTIONS: &'static [&'static str];
}

/// The vtable of `P`, for [`keel_native_plugin!`](crate::keel_native_plugin). `name` and
/// `version` are NUL-terminated; `functions` points to `function_count` NUL-terminated names,
/// all static.
pub const fn vtable<P: Plugin + Exports>(
    name: &'static str,
    version: &'static str,
    functions: *const *const c_char,
    function_count: u32,
) -> RawVtable {
    RawVtable {
        abi_version: ABI_VERSION,
        struct_size: size_of::<RawVtable>() as u32,
        flags: if P::SERIAL { FLAG_SERIAL } else { 0 },
        name: name.as_ptr() as *const c_char,
        version: version.as_ptr() as *const c_char,
        functions,
        function_count,
        init: Some(hook_init::<P>),
        call: Some(hook_call::<P>),
        shutdown: Some(hook_shutdown::<P>),
        save_state: if P::HAS_STATE { Some(hook_save_state::<P>) } else { None },
        restore_state: if P::HAS_STATE {
            Some(hook_restore_state::<P>)
        } else {
            None
        },
        health: if P::HAS_HEALTH { Some(hook_health::<P>) } else { None },
        restore_state_versioned: if P::HAS_STATE {
            Some(hook_restore_state_versioned::<P>)
        } else {
            None
        },
    }
}

/// Run a hook body behind the panic barrier; an error or panic is written to `err` (if not
/// NULL) and becomes status 1.
fn guard(err: *const RawOutput, body: impl FnOnce() -> Result<()>) -> i32 {
    let msg = match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => return 0,
        Ok(Err(e)) => e.0,
        Err(payload) => {
            let m = panic_message(&*payload);
            // Dropping a payload may itself panic; keep that inside too.
            let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
            m
        }
    };
    if !err.is_null() {
        // SAFETY: a non-NULL `err` is the keel_output the host passed to this hook, valid
        // until the hook returns.
        let mut out = Output { raw: unsafe { &*err } };
        let _ = out.write(msg.as_bytes());
    }
    1
}

/// # Safety
/// `p` is NULL with `len == 0`, or points to `len` bytes readable for `'a`.
unsafe fn slice<'a>(p: *const u8, len: usize) -> Option<&'a [u8]> {
    if len == 0 {
        Some(&[])
    } else if p.is_null() {
        None
    } else {
        // SAFETY: non-NULL, and the caller guarantees `len` readable bytes.
        Some(unsafe { std::slice::from_raw_parts(p, len) })
    }
}

/// The vtable's `init`.
///
/// # Safety
/// Called by the host per `keel_plugin.h`: `config` holds `config_len` bytes, `host` is NULL
/// or a host-API table valid until `shutdown`, `instance` and `err` are valid for the call.
pub unsafe extern "C" fn hook_init<P: Plugin>(
    config: *const c_char,
    config_len: usize,
    host: *const RawHostApi,
    instance: *mut *mut c_void,
    err: *const RawOutput,
) -> i32 {
    guard(err, || {
        if instance.is_null() {
            return Err(Error::new("init: the instance pointer is NULL"));
        }
        // SAFETY: the host passes `config_len` readable bytes at `config` for this hook.
        let config = unsafe { slice(config as *const u8, config_len) }.ok_or("init: config is NULL")?;
        let config = std::str::from_utf8(config)?;
        let p = P::init(config, Host { raw: host })?;
        // SAFETY: `instance` is non-NULL (checked) and writable per the ABI.
        unsafe { *instance = Box::into_raw(Box::new(p)) as *mut c_void };
        Ok(())
    })
}

/// # Safety
/// `instance` is what `init` stored (a `Box<P>` not yet shut down).
unsafe fn instance<'a, P>(instance: *mut c_void) -> Result<&'a P> {
    if instance.is_null() {
        return Err(Error::new("the instance pointer is NULL"));
    }
    // SAFETY: per the caller, a live Box<P> from hook_init; only shared references are made.
    Ok(unsafe { &*(instance as *const P) })
}

/// The vtable's `call`.
///
/// # Safety
/// Called by the host per `keel_plugin.h` with the instance `init` created, `input_len`
/// readable bytes at `input` and an output valid for the call.
pub unsafe extern "C" fn hook_call<P: Plugin + Exports>(
    inst: *mut c_void,
    function: u32,
    input: *const u8,
    input_len: usize,
    output: *const RawOutput,
) -> i32 {
    if output.is_null() {
        return 1;
    }
    guard(output, || {
        // SAFETY: `inst` is the instance init created; the host calls no hook after shutdown.
        let p = unsafe { instance::<P>(inst) }?;
        let name = *P::FUNCTIONS
            .get(function as usize)
            .ok_or_else(|| Error::new(format!("no function with index {function}")))?;
        // SAFETY: the host passes `input_len` readable bytes at `input` for this hook.
        let input = unsafe { slice(input, input_len) }.ok_or("call: input is NULL")?;
        // SAFETY: `output` is non-NULL (checked above) and valid until the hook returns.
        let raw = unsafe { &*output };
        let mut out = Output { raw };
        p.call(Function { index: function, name }, input, &mut out)
    })
}

/// The vtable's `shutdown`: drops the instance (a panic in `Drop` is swallowed).
///
/// # Safety
/// `inst` is the instance `init` created; called once, with no call in flight.
pub unsafe extern "C" fn hook_shutdown<P: Plugin>(inst: *mut c_void) {
    if inst.is_null() {
        return;
    }
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: a Box<P> from hook_init, released exactly once here.
        drop(unsafe { Box::from_raw(inst as *mut P) })
    }));
}

/// The vtable's `save_state`.
///
/// # Safety
/// As [`hook_call`].
pub unsafe extern "C" fn hook_save_state<P: Plugin>(inst: *mut c_void, out: *const RawOutput) -> i32 {
    if out.is_null() {
        return 1;
    }
    guard(out, || {
        // SAFETY: `inst` is the instance init created.
        let p = unsafe { instance::<P>(inst) }?;
        // SAFETY: `out` is non-NULL (checked above) and valid until the hook returns.
        let mut o = Output { raw: unsafe { &*out } };
        p.save_state(&mut o)
    })
}

/// # Safety
/// `inst` is the instance `init` created; `state` holds `len` bytes; `version` is NULL or
/// NUL-terminated.
unsafe fn restore<P: Plugin>(inst: *mut c_void, state: *const u8, len: usize, version: *const c_char) -> i32 {
    guard(std::ptr::null(), || {
        // SAFETY: `inst` is the instance init created.
        let p = unsafe { instance::<P>(inst) }?;
        // SAFETY: the host passes `len` readable bytes at `state` for this hook.
        let state = unsafe { slice(state, len) }.ok_or("restore_state: state is NULL")?;
        let saved_by = if version.is_null() {
            None
        } else {
            // SAFETY: a non-NULL version is NUL-terminated and valid for the hook.
            Some(unsafe { CStr::from_ptr(version) }.to_str()?)
        };
        p.restore_state(state, saved_by)
    })
}

/// The vtable's `restore_state`.
///
/// # Safety
/// As [`restore`].
pub unsafe extern "C" fn hook_restore_state<P: Plugin>(inst: *mut c_void, state: *const u8, len: usize) -> i32 {
    // SAFETY: forwarded as the host passed them.
    unsafe { restore::<P>(inst, state, len, std::ptr::null()) }
}

/// The vtable's `restore_state_versioned`.
///
/// # Safety
/// As [`restore`].
pub unsafe extern "C" fn hook_restore_state_versioned<P: Plugin>(
    inst: *mut c_void,
    state: *const u8,
    len: usize,
    version: *const c_char,
) -> i32 {
    // SAFETY: forwarded as the host passed them.
    unsafe { restore::<P>(inst, state, len, version) }
}

/// The vtable's `health`: a panic or a NULL instance reports unhealthy.
///
/// # Safety
/// `inst` is the instance `init` created.
pub unsafe extern "C" fn hook_health<P: Plugin>(inst: *mut c_void) -> i32 {
    catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `inst` is the instance init created.
        match unsafe { instance::<P>(inst) } {
            Ok(p) => p.health() as i32,
            Err(_) => Health::Unhealthy as i32,
        }
    }))
    .unwrap_or(Health::Unhealthy as i32)
}

/// Export `keel_plugin_entry` (C linkage) for the [`Plugin`] type `type`, with a static
/// vtable and function names:
///
/// ```ignore
/// keel_native_plugin!(type: MyPlugin, name: "my_plugin", version: "1.2.0", functions: ["get", "put"]);
/// ```
///
/// `call` receives the index into `functions` (and the name). Use it once per `cdylib`.
#[macro_export]
macro_rules! keel_native_plugin {
    (type: $ty:ty, name: $name:literal, version: $version:literal, functions: [$($f:literal),+ $(,)?] $(,)?) => {
        const _: () = {
            impl $crate::sdk::native::Exports for $ty {
                const FUNCTIONS: &'static [&'static str] = &[$($f),+];
            }
            const COUNT: usize = [$($f),+].len();
            static NAMES: $crate::sdk::native::StaticData<[*const ::std::ffi::c_char; COUNT]> =
                $crate::sdk::native::StaticData([$(concat!($f, "\0").as_ptr() as *const ::std::ffi::c_char),+]);
            static VTABLE: $crate::sdk::native::StaticData<$crate::sdk::native::RawVtable> =
                $crate::sdk::native::StaticData($crate::sdk::native::vtable::<$ty>(
                    concat!($name, "\0"),
                    concat!($version, "\0"),
                    &NAMES.0 as *const [*const ::std::ffi::c_char; COUNT] as *const *const ::std::ffi::c_char,
                    COUNT as u32,
                ));
            #[unsafe(no_mangle)]
            pub extern "C" fn keel_plugin_entry() -> *const $crate::sdk::native::RawVtable {
                &VTABLE.0
            }
        };
    };
}

// ---- the host-API table ----------------------------------------------------------------------

/// A host function the server defined, from [`Host::host_fn`]; valid until `shutdown`.
#[derive(Debug, Clone, Copy)]
pub struct HostFn(*const RawHostFn);

// SAFETY: an opaque handle the host keeps alive until shutdown; host_fn_call is thread-safe.
unsafe impl Send for HostFn {}
// SAFETY: as for Send: the handle is only passed back to the host's thread-safe entry.
unsafe impl Sync for HostFn {}

/// `KEEL_METRIC_*`: the kind of a plugin metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum MetricKind {
    Counter = 0,
    Gauge = 1,
    Histogram = 2,
}

/// One entry of a scan: key and value.
pub type Entry = (Vec<u8>, Vec<u8>);

/// The host-API table the host passed to `init`: safe methods over its entries. An entry the
/// host does not offer — its capability not granted, or a field past the host's
/// `struct_size` (an older host) — is absent: methods then return an error (or `false` /
/// `None` as documented), never read past the table. Valid until the instance's `shutdown`
/// returns: keep it in the instance, not beyond.
#[derive(Debug, Clone, Copy)]
pub struct Host {
    raw: *const RawHostApi,
}

// SAFETY: the host documents every entry of the table as thread-safe, and the table stays
// valid and unchanged until shutdown.
unsafe impl Send for Host {}
// SAFETY: as for Send.
unsafe impl Sync for Host {}

/// Read entry `$field` of the table if the host's `struct_size` covers it.
macro_rules! entry {
    ($host:expr, $field:ident) => {{
        let raw = $host.raw;
        if raw.is_null() {
            None
        } else {
            // SAFETY: a non-NULL table is valid until shutdown; `struct_size` is in the first
            // version of the struct, and the field is read (through a raw place, never a
            // reference to the whole struct) only if `struct_size` covers it.
            unsafe {
                let size = (*raw).struct_size as usize;
                if size >= offset_of!(RawHostApi, $field) + size_of::<usize>() {
                    addr_of!((*raw).$field).read()
                } else {
                    None
                }
            }
        }
    }};
}

unsafe extern "C" fn vec_write(ctx: *mut c_void, data: *const u8, len: usize) -> i32 {
    if ctx.is_null() || (data.is_null() && len != 0) {
        return -1;
    }
    // SAFETY: ctx is the &mut Vec<u8> of `vec_output`'s caller, alive for the host call;
    // `data` holds `len` readable bytes per the ABI.
    unsafe {
        let v = &mut *(ctx as *mut Vec<u8>);
        if len != 0 {
            v.extend_from_slice(std::slice::from_raw_parts(data, len));
        }
    }
    0
}

fn vec_output(v: &mut Vec<u8>) -> RawOutput {
    RawOutput {
        ctx: v as *mut Vec<u8> as *mut c_void,
        write: Some(vec_write),
    }
}

fn absent(what: &str) -> Error {
    Error::new(format!(
        "host API `{what}` is absent (capability not granted, or the host is older)"
    ))
}

fn cstring(what: &str, s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::new(format!("{what} contains a NUL byte")))
}

impl Host {
    /// A table pointer as the host passed it (NULL: every entry absent).
    ///
    /// # Safety
    /// `raw` is NULL or the host-API table passed to `init`, valid while the `Host` is used.
    pub unsafe fn from_raw(raw: *const RawHostApi) -> Host {
        Host { raw }
    }

    /// The table as the host passed it.
    pub fn as_raw(&self) -> *const RawHostApi {
        self.raw
    }

    fn ctx(&self) -> *mut c_void {
        // SAFETY: only called after an entry was found, so the table is non-NULL and valid.
        unsafe { (*self.raw).ctx }
    }

    /// The host's `struct_size` (0 without a table).
    pub fn struct_size(&self) -> u32 {
        if self.raw.is_null() {
            0
        } else {
            // SAFETY: a non-NULL table is valid; struct_size is in every version.
            unsafe { (*self.raw).struct_size }
        }
    }

    /// Capability "log": write one line. Returns false (nothing written) if absent.
    pub fn log(&self, level: LogLevel, msg: &str) -> bool {
        let Some(f) = entry!(self, log) else { return false };
        // SAFETY: an entry of the host's table with its ctx; `msg` is a live slice.
        unsafe { f(self.ctx(), level as i32, msg.as_ptr() as *const c_char, msg.len()) };
        true
    }

    /// Capability "clock": nanoseconds since the Unix epoch.
    pub fn now_unix_nanos(&self) -> Option<i64> {
        let f = entry!(self, now_unix_nanos)?;
        // SAFETY: an entry of the host's table with its ctx.
        Some(unsafe { f(self.ctx()) })
    }

    /// Capability "random": fill `buf` with random bytes.
    pub fn random_bytes(&self, buf: &mut [u8]) -> Result<()> {
        let f = entry!(self, random_bytes).ok_or_else(|| absent("random_bytes"))?;
        // SAFETY: an entry of the host's table; `buf` is a live writable slice.
        match unsafe { f(self.ctx(), buf.as_mut_ptr(), buf.len()) } {
            0 => Ok(()),
            rc => Err(Error::new(format!("random_bytes failed ({rc})"))),
        }
    }

    /// Whether the call running on this thread should stop (cancelled or past its deadline).
    /// False on hosts without the entry.
    pub fn cancelled(&self) -> bool {
        match entry!(self, cancelled) {
            // SAFETY: an entry of the host's table with its ctx.
            Some(f) => (unsafe { f(self.ctx()) }) != 0,
            None => false,
        }
    }

    /// The message of the last failed kv_*/storage_* entry on this thread, for `rc`.
    fn sink_failure(&self, what: &str, rc: i32) -> Error {
        let mut msg = Vec::new();
        if let Some(f) = entry!(self, sink_error) {
            let out = vec_output(&mut msg);
            // SAFETY: an entry of the host's table; `out` writes into `msg`, alive for the call.
            if unsafe { f(self.ctx(), &out) } != 0 {
                msg.clear();
            }
        }
        if msg.is_empty() {
            Error::new(format!("{what} failed ({rc})"))
        } else {
            Error::new(format!("{what} failed ({rc}): {}", String::from_utf8_lossy(&msg)))
        }
    }

    /// Capability "kv:read": the value of `key` in the plugin's namespace.
    pub fn kv_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let f = entry!(self, kv_get).ok_or_else(|| absent("kv_get"))?;
        let mut v = Vec::new();
        let out = vec_output(&mut v);
        // SAFETY: an entry of the host's table; `key` is a live slice, `out` writes into `v`.
        match unsafe { f(self.ctx(), key.as_ptr(), key.len(), &out) } {
            0 => Ok(Some(v)),
            1 => Ok(None),
            rc => Err(self.sink_failure("kv_get", rc)),
        }
    }

    /// Capability "kv:write": set `key` to `value`.
    pub fn kv_put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        let f = entry!(self, kv_put).ok_or_else(|| absent("kv_put"))?;
        // SAFETY: an entry of the host's table; both slices are live.
        match unsafe { f(self.ctx(), key.as_ptr(), key.len(), value.as_ptr(), value.len()) } {
            0 => Ok(()),
            rc => Err(self.sink_failure("kv_put", rc)),
        }
    }

    /// Capability "kv:write": delete `key`; true if it existed.
    pub fn kv_delete(&self, key: &[u8]) -> Result<bool> {
        let f = entry!(self, kv_delete).ok_or_else(|| absent("kv_delete"))?;
        // SAFETY: an entry of the host's table; `key` is live.
        match unsafe { f(self.ctx(), key.as_ptr(), key.len()) } {
            0 => Ok(true),
            1 => Ok(false),
            rc => Err(self.sink_failure("kv_delete", rc)),
        }
    }

    /// Capability "kv:read": the entries whose key starts with `prefix`, and whether the scan
    /// was truncated (more may match).
    pub fn kv_scan(&self, prefix: &[u8]) -> Result<(Vec<Entry>, bool)> {
        let f = entry!(self, kv_scan).ok_or_else(|| absent("kv_scan"))?;
        let mut v = Vec::new();
        let out = vec_output(&mut v);
        // SAFETY: an entry of the host's table; `prefix` is live, `out` writes into `v`.
        let rc = unsafe { f(self.ctx(), prefix.as_ptr(), prefix.len(), &out) };
        scan_result(self, "kv_scan", rc, &v)
    }

    /// Capability "storage:read": the value of `key` in the server's `table`.
    pub fn storage_get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let f = entry!(self, storage_get).ok_or_else(|| absent("storage_get"))?;
        let t = cstring("table name", table)?;
        let mut v = Vec::new();
        let out = vec_output(&mut v);
        // SAFETY: an entry of the host's table; `t` is NUL-terminated, `key` live, `out` writes into `v`.
        match unsafe { f(self.ctx(), t.as_ptr(), key.as_ptr(), key.len(), &out) } {
            0 => Ok(Some(v)),
            1 => Ok(None),
            rc => Err(self.sink_failure("storage_get", rc)),
        }
    }

    /// Capability "storage:write": set `key` in `table` to `value`.
    pub fn storage_put(&self, table: &str, key: &[u8], value: &[u8]) -> Result<()> {
        let f = entry!(self, storage_put).ok_or_else(|| absent("storage_put"))?;
        let t = cstring("table name", table)?;
        // SAFETY: an entry of the host's table; `t` is NUL-terminated, the slices live.
        match unsafe {
            f(
                self.ctx(),
                t.as_ptr(),
                key.as_ptr(),
                key.len(),
                value.as_ptr(),
                value.len(),
            )
        } {
            0 => Ok(()),
            rc => Err(self.sink_failure("storage_put", rc)),
        }
    }

    /// Capability "storage:write": delete `key` from `table`; true if it existed.
    pub fn storage_delete(&self, table: &str, key: &[u8]) -> Result<bool> {
        let f = entry!(self, storage_delete).ok_or_else(|| absent("storage_delete"))?;
        let t = cstring("table name", table)?;
        // SAFETY: an entry of the host's table; `t` is NUL-terminated, `key` live.
        match unsafe { f(self.ctx(), t.as_ptr(), key.as_ptr(), key.len()) } {
            0 => Ok(true),
            1 => Ok(false),
            rc => Err(self.sink_failure("storage_delete", rc)),
        }
    }

    /// Capability "storage:read": the entries of `table` whose key starts with `prefix`.
    pub fn storage_scan(&self, table: &str, prefix: &[u8]) -> Result<(Vec<Entry>, bool)> {
        let f = entry!(self, storage_scan).ok_or_else(|| absent("storage_scan"))?;
        let t = cstring("table name", table)?;
        let mut v = Vec::new();
        let out = vec_output(&mut v);
        // SAFETY: an entry of the host's table; `t` is NUL-terminated, `prefix` live, `out` writes into `v`.
        let rc = unsafe { f(self.ctx(), t.as_ptr(), prefix.as_ptr(), prefix.len(), &out) };
        scan_result(self, "storage_scan", rc, &v)
    }

    /// Capability "metrics:write": define (or find) a series; `labels` is a JSON object of
    /// strings ("" = none), `buckets` the histogram bounds (empty = the defaults).
    pub fn metric_define(&self, kind: MetricKind, name: &str, labels: &str, buckets: &[f64]) -> Result<u32> {
        let f = entry!(self, metric_define).ok_or_else(|| absent("metric_define"))?;
        let mut id = 0u32;
        let bp = if buckets.is_empty() {
            std::ptr::null()
        } else {
            buckets.as_ptr()
        };
        // SAFETY: an entry of the host's table; every pointer is a live slice with its length,
        // `id` is writable.
        let rc = unsafe {
            f(
                self.ctx(),
                kind as i32,
                name.as_ptr() as *const c_char,
                name.len(),
                labels.as_ptr() as *const c_char,
                labels.len(),
                bp,
                buckets.len(),
                &mut id,
            )
        };
        match rc {
            0 => Ok(id),
            rc => Err(Error::new(format!("metric_define({name}) failed with status {rc}"))),
        }
    }

    fn metric_update(
        &self,
        what: &str,
        f: Option<unsafe extern "C" fn(*mut c_void, u32, f64) -> i32>,
        id: u32,
        value: f64,
    ) -> Result<()> {
        let f = f.ok_or_else(|| absent(what))?;
        // SAFETY: an entry of the host's table with its ctx.
        match unsafe { f(self.ctx(), id, value) } {
            0 => Ok(()),
            rc => Err(Error::new(format!("{what}({id}) failed with status {rc}"))),
        }
    }

    /// Capability "metrics:write": add to a counter or gauge.
    pub fn metric_add(&self, id: u32, value: f64) -> Result<()> {
        self.metric_update("metric_add", entry!(self, metric_add), id, value)
    }

    /// Capability "metrics:write": set a gauge.
    pub fn metric_set(&self, id: u32, value: f64) -> Result<()> {
        self.metric_update("metric_set", entry!(self, metric_set), id, value)
    }

    /// Capability "metrics:write": record a histogram observation.
    pub fn metric_observe(&self, id: u32, value: f64) -> Result<()> {
        self.metric_update("metric_observe", entry!(self, metric_observe), id, value)
    }

    /// Capability "rpc:register": bind RPC `endpoint` to the plugin's `function`.
    pub fn rpc_register(&self, endpoint: &str, function: &str) -> Result<()> {
        let f = entry!(self, rpc_register).ok_or_else(|| absent("rpc_register"))?;
        // SAFETY: an entry of the host's table; both strings are live with their lengths.
        let rc = unsafe {
            f(
                self.ctx(),
                endpoint.as_ptr() as *const c_char,
                endpoint.len(),
                function.as_ptr() as *const c_char,
                function.len(),
            )
        };
        match rc {
            0 => Ok(()),
            rc => Err(Error::new(format!("rpc_register({endpoint}) failed with status {rc}"))),
        }
    }

    /// The host function `namespace`.`name` the server defined, if it did and its capability
    /// was granted (None also on hosts without host functions). Look it up in `init`.
    pub fn host_fn(&self, namespace: &str, name: &str) -> Option<HostFn> {
        let f = entry!(self, host_fn_lookup)?;
        let ns = CString::new(namespace).ok()?;
        let n = CString::new(name).ok()?;
        // SAFETY: an entry of the host's table; both strings are NUL-terminated and live.
        let p = unsafe { f(self.ctx(), ns.as_ptr(), n.as_ptr()) };
        (!p.is_null()).then_some(HostFn(p))
    }

    /// Call host function `f` with `input`; its output is appended to `output`. On failure
    /// the function's error message is the error (and `output` is left as it was).
    pub fn call_host_fn(&self, f: HostFn, input: &[u8], output: &mut Vec<u8>) -> Result<()> {
        let call = entry!(self, host_fn_call).ok_or_else(|| absent("host_fn_call"))?;
        let start = output.len();
        let out = vec_output(output);
        // SAFETY: an entry of the host's table; `f` came from host_fn_lookup of this table
        // (valid until shutdown), `input` is live, `out` writes into `output`.
        let rc = unsafe { call(self.ctx(), f.0, input.as_ptr(), input.len(), &out) };
        if rc == 0 {
            return Ok(());
        }
        let msg = String::from_utf8_lossy(&output[start..]).into_owned();
        output.truncate(start);
        Err(Error::new(format!("host function failed ({rc}): {msg}")))
    }
}

fn scan_result(host: &Host, what: &str, rc: i32, bytes: &[u8]) -> Result<(Vec<Entry>, bool)> {
    let truncated = match rc {
        0 => false,
        2 => true,
        rc => return Err(host.sink_failure(what, rc)),
    };
    let mut entries = Vec::new();
    let mut rest = bytes;
    let take = |rest: &mut &[u8]| -> Result<Vec<u8>> {
        let bad = || Error::new(format!("{what}: malformed entry from the host"));
        let len = u32::from_le_bytes(rest.get(..4).ok_or_else(bad)?.try_into().unwrap()) as usize;
        let v = rest.get(4..4 + len).ok_or_else(bad)?.to_vec();
        *rest = &rest[4 + len..];
        Ok(v)
    };
    while !rest.is_empty() {
        let k = take(&mut rest)?;
        let v = take(&mut rest)?;
        entries.push((k, v));
    }
    Ok((entries, truncated))
}
