//! Native plugins: shared libraries exporting Keel's C vtable (`include/keel/keel_plugin.h`).
//!
//! The library is `dlopen`ed from the artifact's sealed memfd (`/proc/self/fd/N`), never
//! from the path the manifest names. The memfd stays open while the library is mapped, so
//! that no other library can be loaded under the same `/proc/self/fd/N` name (glibc matches
//! already-loaded objects by name first).

use std::ffi::{c_char, c_void, CStr};
use std::os::fd::OwnedFd;

use parking_lot::Mutex;

use crate::artifact::{self, Artifact};
use crate::capability::Capabilities;
use crate::error::Result;
use crate::manifest::Manifest;
use crate::runtime::{Health, HostServices, Instance, LoadContext, LogLevel};
use crate::{bail, err};

/// The ABI version this host speaks (`KEEL_PLUGIN_ABI_VERSION`).
pub const ABI_VERSION: u32 = 1;
/// The exported entry symbol.
pub const ENTRY_SYMBOL: &[u8] = b"keel_plugin_entry\0";
/// `KEEL_PLUGIN_FLAG_SERIAL`.
pub const FLAG_SERIAL: u32 = 1;

/// Mirror of `keel_output`.
#[repr(C)]
pub struct RawOutput {
    pub ctx: *mut c_void,
    pub write: unsafe extern "C" fn(ctx: *mut c_void, data: *const u8, len: usize) -> i32,
}

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
}

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
}

/// The fields every ABI-1 vtable has (up to and including `shutdown`).
const MIN_VTABLE_SIZE: usize = std::mem::offset_of!(RawVtable, save_state);

/// Where an output writer appends, and how much it may.
pub struct OutputSink<'a> {
    pub buf: &'a mut Vec<u8>,
    pub max: usize,
}

/// `keel_output.write`: append to the sink, refusing past its limit.
pub unsafe extern "C" fn output_write(ctx: *mut c_void, data: *const u8, len: usize) -> i32 {
    if ctx.is_null() || (data.is_null() && len != 0) {
        return -1;
    }
    // SAFETY: ctx is the OutputSink the host passed for the duration of this hook.
    let sink = unsafe { &mut *(ctx as *mut OutputSink<'_>) };
    if sink.buf.len().saturating_add(len) > sink.max {
        return -2;
    }
    if len != 0 {
        // SAFETY: the plugin promises `data` points to `len` readable bytes.
        sink.buf
            .extend_from_slice(unsafe { std::slice::from_raw_parts(data, len) });
    }
    0
}

/// Run `f` with a `keel_output` whose writes append to `buf` up to `max` bytes in all.
#[inline]
pub fn with_output<R>(buf: &mut Vec<u8>, max: usize, f: impl FnOnce(&RawOutput) -> R) -> R {
    let mut sink = OutputSink { buf, max };
    let out = RawOutput {
        ctx: &mut sink as *mut OutputSink<'_> as *mut c_void,
        write: output_write,
    };
    f(&out)
}

/// What the host API entries reach through `ctx`.
struct HostApiCtx {
    plugin: String,
    services: HostServices,
}

unsafe extern "C" fn api_log(ctx: *mut c_void, level: i32, msg: *const c_char, len: usize) {
    if ctx.is_null() || (msg.is_null() && len != 0) {
        return;
    }
    let c = unsafe { &*(ctx as *const HostApiCtx) };
    let bytes = if len == 0 {
        &[][..]
    } else {
        unsafe { std::slice::from_raw_parts(msg as *const u8, len) }
    };
    let text = String::from_utf8_lossy(bytes);
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        (c.services.log)(&c.plugin, LogLevel::from_i32(level), &text)
    }));
}

unsafe extern "C" fn api_now(_ctx: *mut c_void) -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

unsafe extern "C" fn api_random(_ctx: *mut c_void, buf: *mut u8, len: usize) -> i32 {
    if buf.is_null() && len != 0 {
        return -1;
    }
    if len == 0 {
        return 0;
    }
    let out = unsafe { std::slice::from_raw_parts_mut(buf, len) };
    match rand_core::OsRng.try_fill_bytes(out) {
        Ok(()) => 0,
        Err(_) => -1,
    }
}

unsafe fn bytes<'a>(p: *const u8, len: usize) -> Option<&'a [u8]> {
    if len == 0 {
        Some(&[])
    } else if p.is_null() {
        None
    } else {
        Some(unsafe { std::slice::from_raw_parts(p, len) })
    }
}

unsafe extern "C" fn api_kv_get(ctx: *mut c_void, key: *const u8, key_len: usize, out: *const RawOutput) -> i32 {
    if ctx.is_null() || out.is_null() {
        return -1;
    }
    let c = unsafe { &*(ctx as *const HostApiCtx) };
    let Some(key) = (unsafe { bytes(key, key_len) }) else {
        return -1;
    };
    match c.services.kv.get(&c.plugin, key) {
        Some(v) => {
            let out = unsafe { &*out };
            if unsafe { (out.write)(out.ctx, v.as_ptr(), v.len()) } != 0 {
                return -2;
            }
            0
        }
        None => 1,
    }
}

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
    let c = unsafe { &*(ctx as *const HostApiCtx) };
    let (Some(key), Some(val)) = (unsafe { bytes(key, key_len) }, unsafe { bytes(val, val_len) }) else {
        return -1;
    };
    c.services.kv.put(&c.plugin, key, val);
    0
}

unsafe extern "C" fn api_kv_delete(ctx: *mut c_void, key: *const u8, key_len: usize) -> i32 {
    if ctx.is_null() {
        return -1;
    }
    let c = unsafe { &*(ctx as *const HostApiCtx) };
    let Some(key) = (unsafe { bytes(key, key_len) }) else {
        return -1;
    };
    if c.services.kv.delete(&c.plugin, key) {
        0
    } else {
        1
    }
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
    }
}

use rand_core::RngCore;

/// A loaded native plugin instance.
pub struct NativeInstance {
    vtable: *const RawVtable,
    instance: *mut c_void,
    functions: Vec<String>,
    serial: Option<Mutex<()>>,
    max_output: usize,
    has_save: bool,
    has_restore: bool,
    has_health: bool,
    // Kept alive for the plugin: it may hold `host` until shutdown.
    _api: Box<RawHostApi>,
    _api_ctx: Box<HostApiCtx>,
    lib: Option<SealedLibrary>,
}

// SAFETY: the vtable and instance pointers are only used through the plugin's C ABI, whose
// contract (keel_plugin.h) is that `call` is thread-safe unless KEEL_PLUGIN_FLAG_SERIAL is set,
// in which case calls are serialised by `serial`.
unsafe impl Send for NativeInstance {}
unsafe impl Sync for NativeInstance {}

/// Default ceiling on a call's output (64 MiB).
pub const DEFAULT_MAX_OUTPUT: usize = 64 << 20;

/// The ceiling on a call's output: the manifest's `limits.max_output_bytes`, else
/// [`DEFAULT_MAX_OUTPUT`].
pub(crate) fn max_output(manifest: &Manifest) -> usize {
    manifest
        .limits
        .as_ref()
        .and_then(|l| l.max_output_bytes)
        .map(|v| v as usize)
        .unwrap_or(DEFAULT_MAX_OUTPUT)
}

fn cstr_field(p: *const c_char, what: &str) -> Result<String> {
    if p.is_null() {
        bail!(KEEL_ERR_PLUGIN_ABI_VIOLATION, "vtable field {what} is NULL");
    }
    // SAFETY: the ABI requires NUL-terminated strings that live as long as the library.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str()
        .map(str::to_owned)
        .map_err(|_| err!(KEEL_ERR_PLUGIN_ABI_VIOLATION, "vtable field {what} is not UTF-8"))
}

/// A shared library `dlopen`ed from a verified artifact's sealed memfd (`/proc/self/fd/N`,
/// `RTLD_NOW | RTLD_LOCAL`), together with that memfd. Dropping it `dlclose`s the library and
/// then closes the memfd, unless the image is still mapped (see `Drop`). Used by the native and
/// the legacy (ThemisDB C++) runtimes; the owner must have shut the plugin down first.
pub struct SealedLibrary {
    lib: Option<libloading::os::unix::Library>,
    memfd: Option<OwnedFd>,
}

impl SealedLibrary {
    /// `dlopen` the artifact's sealed memfd. The library's constructors run here, so call this
    /// only after the digest (and signature) checks.
    pub fn open(artifact: Artifact, plugin: &str) -> Result<SealedLibrary> {
        let Some(fd) = artifact.into_sealed_fd() else {
            bail!(KEEL_ERR_INTERNAL, "native artifact of '{plugin}' is not a sealed memfd");
        };
        let path = artifact::proc_path(&fd);
        // SAFETY: dlopen runs the library's constructors; the bytes were verified before this.
        let lib = unsafe { libloading::os::unix::Library::open(Some(&path), libc::RTLD_NOW | libc::RTLD_LOCAL) }
            .map_err(|e| err!(KEEL_ERR_LIBRARY_LOAD, "plugin '{plugin}': dlopen failed: {e}"))?;
        Ok(SealedLibrary {
            lib: Some(lib),
            memfd: Some(fd),
        })
    }

    /// The address of an exported symbol (`name` NUL-terminated), if the library exports it.
    pub fn symbol(&self, name: &[u8]) -> Option<*mut c_void> {
        let lib = self.lib.as_ref()?;
        // SAFETY: only the address is taken; the caller decides the type it is used as.
        let sym: libloading::os::unix::Symbol<*mut c_void> = unsafe { lib.get(name) }.ok()?;
        Some(sym.into_raw())
    }
}

impl Drop for SealedLibrary {
    fn drop(&mut self) {
        let name = self.memfd.as_ref().map(artifact::proc_path);
        drop(self.lib.take());
        if let (Some(fd), Some(name)) = (self.memfd.take(), name) {
            // If the library is still mapped (a TLS destructor, RTLD_NODELETE or a
            // STB_GNU_UNIQUE symbol keeps it), keep the descriptor open forever so its name is
            // never reused for another library: glibc would hand back the old object for the
            // new name.
            let cname = std::ffi::CString::new(name).unwrap_or_default();
            // SAFETY: RTLD_NOLOAD only queries.
            let h = unsafe { libc::dlopen(cname.as_ptr(), libc::RTLD_NOLOAD | libc::RTLD_LAZY) };
            if h.is_null() {
                drop(fd);
            } else {
                // SAFETY: balances the NOLOAD reference just taken.
                unsafe { libc::dlclose(h) };
                std::mem::forget(fd);
            }
        }
    }
}

/// Load a native plugin from a verified artifact and run its init hook.
pub fn load(artifact: Artifact, ctx: &LoadContext<'_>) -> Result<NativeInstance> {
    let name = &ctx.manifest.name;
    let lib = SealedLibrary::open(artifact, name)?;
    let mut inst = NativeInstance {
        vtable: std::ptr::null(),
        instance: std::ptr::null_mut(),
        functions: Vec::new(),
        serial: None,
        max_output: max_output(ctx.manifest),
        has_save: false,
        has_restore: false,
        has_health: false,
        _api_ctx: Box::new(HostApiCtx {
            plugin: name.clone(),
            services: ctx.services.clone(),
        }),
        _api: Box::new(RawHostApi {
            abi_version: ABI_VERSION,
            struct_size: 0,
            ctx: std::ptr::null_mut(),
            log: None,
            now_unix_nanos: None,
            random_bytes: None,
            kv_get: None,
            kv_put: None,
            kv_delete: None,
        }),
        lib: Some(lib),
    };
    let entry = inst.lib.as_ref().and_then(|l| l.symbol(ENTRY_SYMBOL)).ok_or_else(|| {
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
    // Read the ABI version alone first: nothing else in the struct is trusted before it matches.
    // SAFETY: every vtable version starts with a u32 abi_version.
    let abi = unsafe { std::ptr::read(vt as *const u32) };
    if abi != ABI_VERSION {
        bail!(
            KEEL_ERR_ABI_MISMATCH,
            "plugin '{name}' speaks Keel plugin ABI {abi}, this host speaks {ABI_VERSION}"
        );
    }
    // SAFETY: ABI version matches, so the layout is RawVtable up to struct_size.
    let v = unsafe { &*vt };
    if (v.struct_size as usize) < MIN_VTABLE_SIZE {
        bail!(
            KEEL_ERR_PLUGIN_ABI_VIOLATION,
            "plugin '{name}': vtable struct_size {} too small",
            v.struct_size
        );
    }
    let full = v.struct_size as usize >= std::mem::size_of::<RawVtable>();
    let (Some(init), Some(_), Some(_)) = (v.init, v.call, v.shutdown) else {
        bail!(
            KEEL_ERR_PLUGIN_ABI_VIOLATION,
            "plugin '{name}': vtable lacks init, call or shutdown"
        );
    };
    if v.function_count > 0 && v.functions.is_null() {
        bail!(
            KEEL_ERR_PLUGIN_ABI_VIOLATION,
            "plugin '{name}': function_count > 0 but functions is NULL"
        );
    }
    for i in 0..v.function_count as usize {
        // SAFETY: functions has function_count entries per the ABI.
        let p = unsafe { *v.functions.add(i) };
        inst.functions.push(cstr_field(p, "functions[i]")?);
    }
    inst.vtable = vt;
    inst.serial = (v.flags & FLAG_SERIAL != 0).then(|| Mutex::new(()));
    inst.has_save = full && v.save_state.is_some();
    inst.has_restore = full && v.restore_state.is_some();
    inst.has_health = full && v.health.is_some();
    *inst._api = host_api(&inst._api_ctx, ctx.granted);

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
        inst.restore_state(state)?;
    }
    Ok(inst)
}

impl NativeInstance {
    fn vt(&self) -> &RawVtable {
        // SAFETY: set to a checked vtable before any NativeInstance escapes `load`.
        unsafe { &*self.vtable }
    }
}

impl Instance for NativeInstance {
    fn functions(&self) -> &[String] {
        &self.functions
    }

    #[inline]
    fn call(&self, function: u32, input: &[u8], output: &mut Vec<u8>) -> Result<()> {
        let _serial = self.serial.as_ref().map(|m| m.lock());
        // SAFETY: `call` is non-null (checked at load).
        let call = unsafe { self.vt().call.unwrap_unchecked() };
        let inst = self.instance;
        let rc = with_output(output, self.max_output, |out| {
            // SAFETY: per the ABI; input and output are valid for the call.
            unsafe { call(inst, function, input.as_ptr(), input.len(), out) }
        });
        if rc != 0 {
            return Err(self.call_error(function, rc, output));
        }
        Ok(())
    }

    fn save_state(&self) -> Result<Option<Vec<u8>>> {
        if !self.has_save {
            return Ok(None);
        }
        let _serial = self.serial.as_ref().map(|m| m.lock());
        let save = self
            .vt()
            .save_state
            .ok_or_else(|| err!(KEEL_ERR_INTERNAL, "save_state vanished"))?;
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
        if !self.has_restore {
            bail!(KEEL_ERR_UNSUPPORTED, "plugin has no restore_state hook");
        }
        let _serial = self.serial.as_ref().map(|m| m.lock());
        let restore = self
            .vt()
            .restore_state
            .ok_or_else(|| err!(KEEL_ERR_INTERNAL, "restore_state vanished"))?;
        // SAFETY: per the ABI.
        let rc = unsafe { restore(self.instance, state.as_ptr(), state.len()) };
        if rc != 0 {
            bail!(KEEL_ERR_STATE_RESTORE, "restore_state returned {rc}");
        }
        Ok(())
    }

    fn health(&self) -> Health {
        if !self.has_health {
            return Health::Unknown;
        }
        let Some(h) = self.vt().health else {
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
    fn call_error(&self, function: u32, rc: i32, output: &[u8]) -> crate::error::Error {
        let fname = self.functions.get(function as usize).map(String::as_str).unwrap_or("?");
        if rc == -2 || output.len() >= self.max_output {
            return err!(
                KEEL_ERR_OUTPUT_TOO_LARGE,
                "function '{fname}' output exceeded {} bytes",
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
        if !self.vtable.is_null() && !self.instance.is_null() {
            if let Some(shutdown) = self.vt().shutdown {
                // SAFETY: no call is in flight (the generation is only dropped after its last
                // guard), and shutdown is called exactly once.
                unsafe { shutdown(self.instance) };
            }
        }
        self.instance = std::ptr::null_mut();
        self.vtable = std::ptr::null();
        // dlclose, then release the memfd (see SealedLibrary's Drop).
        drop(self.lib.take());
    }
}
