//! Helpers for WASM Keel plugins written in Rust (`include/keel/keel_wasm.h`), for a `cdylib`
//! built for `wasm32-unknown-unknown`.
//!
//! Implement [`WasmPlugin`] and define the exports with
//! [`keel_wasm_plugin!`](crate::keel_wasm_plugin):
//!
//! ```ignore
//! struct Echo;
//! impl keel::sdk::wasm::WasmPlugin for Echo {
//!     fn init(_config: &str) -> keel::sdk::Result<Self> { Ok(Echo) }
//!     fn call(&mut self, _f: keel::sdk::wasm::Function, input: &[u8], out: &mut Vec<u8>) -> keel::sdk::Result<()> {
//!         out.extend_from_slice(input);
//!         Ok(())
//!     }
//! }
//! keel::keel_wasm_plugin!(type: Echo, functions: ["echo"]);
//! ```
//!
//! The macro exports `keel_abi_version`, `keel_functions`, `keel_alloc`, `keel_free`,
//! `keel_init`, `keel_call`, `keel_save_state`, `keel_restore_state_versioned` and
//! `keel_health`. A hook's `Err` becomes an error `keel_result` with its message. A panic
//! aborts, which in WebAssembly is a trap: the host reports `KEEL_ERR_WASM_TRAP`, discards the
//! instance and runs the next call on a fresh one (its state is lost); the host keeps serving.
//!
//! The pure parts (the `keel_result` encoding) compile on every target; the exports, the
//! instance slot and the imports from module `"keel"` only on wasm32.

use super::{Error, Health, Result};

/// `KEEL_WASM_ABI_VERSION`.
pub const ABI_VERSION: i32 = 1;

/// `KEEL_WASM_OK(ptr, len)`: a success `keel_result` (the length is masked to 31 bits).
pub const fn ok(ptr: u32, len: u32) -> i64 {
    ((((len & 0x7fff_ffff) as u64) << 32) | ptr as u64) as i64
}

/// `KEEL_WASM_ERR(ptr, len)`: an error `keel_result` (bit 63 set).
pub const fn err(ptr: u32, len: u32) -> i64 {
    (ok(ptr, len) as u64 | (1u64 << 63)) as i64
}

/// Split a `keel_result` into (is error, pointer, length).
pub const fn decode(result: i64) -> (bool, u32, u32) {
    let r = result as u64;
    (r >> 63 == 1, r as u32, ((r >> 32) & 0x7fff_ffff) as u32)
}

/// One of the plugin's functions, as `call` receives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Function {
    pub index: u32,
    pub name: &'static str,
}

/// A Keel WASM plugin instance: one per WASM instance (the host never overlaps calls into
/// one, hence `&mut self`). With `"instances": "pooled"` there are several, each with its own
/// memory, and none should rely on state between calls.
pub trait WasmPlugin: Sized + 'static {
    /// Create the instance from the manifest's `config` (JSON text, "{}" when absent).
    fn init(config: &str) -> Result<Self>;

    /// Run `function` on `input`, appending the result to `output` (empty on entry).
    fn call(&mut self, function: Function, input: &[u8], output: &mut Vec<u8>) -> Result<()>;

    /// Write the state a later generation takes over (hot reload). Default: no state.
    fn save_state(&mut self, _output: &mut Vec<u8>) -> Result<()> {
        Ok(())
    }

    /// Take over `state` from `save_state` of the plugin version `saved_by`. Default:
    /// accepts an empty state only.
    fn restore_state(&mut self, state: &[u8], _saved_by: Option<&str>) -> Result<()> {
        if state.is_empty() {
            Ok(())
        } else {
            Err(Error::new("restore_state is not implemented"))
        }
    }

    /// The instance's health (polled by the host's health monitor).
    fn health(&mut self) -> Health {
        Health::Healthy
    }
}

#[cfg(target_arch = "wasm32")]
pub use guest::*;

#[cfg(target_arch = "wasm32")]
mod guest {
    use std::alloc::Layout;
    use std::cell::UnsafeCell;

    use super::{err, ok, Function, WasmPlugin, ABI_VERSION};
    use crate::sdk::{Error, Health, LogLevel, Result};

    struct Inner<P> {
        instance: Option<P>,
        /// The bytes of the last result, valid until the guest is next entered.
        out: Vec<u8>,
    }

    /// The module's one plugin instance and result buffer, for
    /// [`keel_wasm_plugin!`](crate::keel_wasm_plugin).
    pub struct Slot<P> {
        inner: UnsafeCell<Inner<P>>,
    }

    // SAFETY: wasm32-unknown-unknown modules are single-threaded (no shared memory, no
    // threads), and the host never enters one instance from two hooks at once, so the slot is
    // never accessed concurrently.
    unsafe impl<P> Sync for Slot<P> {}

    /// # Safety
    /// `ptr` points to `len` bytes of this module's memory readable for `'a` (the host's
    /// input buffer during a hook), or `len == 0`.
    unsafe fn slice<'a>(ptr: *const u8, len: u32) -> &'a [u8] {
        if len == 0 || ptr.is_null() {
            &[]
        } else {
            // SAFETY: per the caller, `len` readable bytes at `ptr`.
            unsafe { std::slice::from_raw_parts(ptr, len as usize) }
        }
    }

    impl<P: WasmPlugin> Slot<P> {
        pub const fn new() -> Slot<P> {
            Slot {
                inner: UnsafeCell::new(Inner {
                    instance: None,
                    out: Vec::new(),
                }),
            }
        }

        #[allow(clippy::mut_from_ref)]
        fn inner(&self) -> &mut Inner<P> {
            // SAFETY: single-threaded and never re-entered (see the Sync impl); each export
            // takes this reference once and drops it before returning.
            unsafe { &mut *self.inner.get() }
        }

        fn finish(inner: &mut Inner<P>, r: Result<()>) -> i64 {
            match r {
                Ok(()) => ok(inner.out.as_ptr() as u32, inner.out.len() as u32),
                Err(Error(msg)) => {
                    inner.out = msg.into_bytes();
                    err(inner.out.as_ptr() as u32, inner.out.len() as u32)
                }
            }
        }

        /// `keel_init`.
        ///
        /// # Safety
        /// `config` holds `len` bytes of the host's input buffer.
        pub unsafe fn init(&self, config: *const u8, len: u32) -> i64 {
            let inner = self.inner();
            inner.out.clear();
            // SAFETY: forwarded from the host per the ABI.
            let cfg = unsafe { slice(config, len) };
            let r = std::str::from_utf8(cfg)
                .map_err(Error::from)
                .and_then(P::init)
                .map(|p| {
                    inner.instance = Some(p);
                });
            Self::finish(inner, r)
        }

        fn with_instance(&self, f: impl FnOnce(&mut P, &mut Vec<u8>) -> Result<()>) -> i64 {
            let inner = self.inner();
            inner.out.clear();
            let r = match inner.instance.as_mut() {
                Some(p) => f(p, &mut inner.out),
                None => Err(Error::new("the plugin is not initialised (keel_init did not succeed)")),
            };
            Self::finish(inner, r)
        }

        /// `keel_call`.
        ///
        /// # Safety
        /// `input` holds `len` bytes of the host's input buffer.
        pub unsafe fn call(&self, names: &[&'static str], function: u32, input: *const u8, len: u32) -> i64 {
            // SAFETY: forwarded from the host per the ABI.
            let input = unsafe { slice(input, len) };
            self.with_instance(|p, out| {
                let name = *names
                    .get(function as usize)
                    .ok_or_else(|| Error::new(format!("no function with index {function}")))?;
                p.call(Function { index: function, name }, input, out)
            })
        }

        /// `keel_save_state`.
        pub fn save_state(&self) -> i64 {
            self.with_instance(|p, out| p.save_state(out))
        }

        /// `keel_restore_state_versioned` (`version` may be empty: unknown).
        ///
        /// # Safety
        /// `state` holds `len` bytes and `version` `version_len` bytes of guest memory.
        pub unsafe fn restore_state(&self, state: *const u8, len: u32, version: *const u8, version_len: u32) -> i64 {
            // SAFETY: forwarded from the host per the ABI.
            let state = unsafe { slice(state, len) };
            // SAFETY: forwarded from the host per the ABI.
            let version = unsafe { slice(version, version_len) };
            self.with_instance(|p, _| {
                let v = if version.is_empty() {
                    None
                } else {
                    Some(std::str::from_utf8(version)?)
                };
                p.restore_state(state, v)
            })
        }

        /// `keel_health`.
        pub fn health(&self) -> i32 {
            match self.inner().instance.as_mut() {
                Some(p) => p.health() as i32,
                None => Health::Unhealthy as i32,
            }
        }
    }

    impl<P: WasmPlugin> Default for Slot<P> {
        fn default() -> Self {
            Self::new()
        }
    }

    /// `keel_abi_version`.
    pub fn abi_version() -> i32 {
        ABI_VERSION
    }

    fn layout(size: u32) -> Option<Layout> {
        Layout::from_size_align(size.max(1) as usize, 8).ok()
    }

    /// `keel_alloc`: `size` bytes (8-aligned) from the Rust allocator, 0 when out of memory.
    pub fn alloc(size: u32) -> *mut u8 {
        match layout(size) {
            // SAFETY: the layout has a non-zero size.
            Some(l) => unsafe { std::alloc::alloc(l) },
            None => std::ptr::null_mut(),
        }
    }

    /// `keel_free`: release a block from [`alloc`] of `size` bytes.
    ///
    /// # Safety
    /// `ptr` came from [`alloc`] with this `size` and is not used afterwards.
    pub unsafe fn free(ptr: *mut u8, size: u32) {
        if let (false, Some(l)) = (ptr.is_null(), layout(size)) {
            // SAFETY: per the caller, allocated by `alloc` with the same layout.
            unsafe { std::alloc::dealloc(ptr, l) }
        }
    }

    /// The imports from module "keel" (raw; prefer the safe wrappers below). Only the ones
    /// the plugin calls end up imported, and each needs its capability granted.
    pub mod raw {
        #[link(wasm_import_module = "keel")]
        unsafe extern "C" {
            pub fn log(level: i32, msg: *const u8, len: u32);
            pub fn now_unix_nanos() -> i64;
            pub fn random_bytes(buf: *mut u8, len: u32) -> i32;
            pub fn kv_get(key: *const u8, key_len: u32, out: *mut u8, out_cap: u32) -> i64;
            pub fn kv_put(key: *const u8, key_len: u32, value: *const u8, value_len: u32) -> i32;
            pub fn kv_delete(key: *const u8, key_len: u32) -> i32;
            pub fn sink_error(out: *mut u8, cap: u32) -> i32;
        }
    }

    /// Capability "log": write one log line.
    pub fn log(level: LogLevel, msg: &str) {
        // SAFETY: a live slice of guest memory.
        unsafe { raw::log(level as i32, msg.as_ptr(), msg.len() as u32) }
    }

    /// Capability "clock": nanoseconds since the Unix epoch.
    pub fn now_unix_nanos() -> i64 {
        // SAFETY: no arguments.
        unsafe { raw::now_unix_nanos() }
    }

    /// Capability "random": fill `buf` (at most 1 MiB) with random bytes.
    pub fn random_bytes(buf: &mut [u8]) -> Result<()> {
        // SAFETY: a live writable slice of guest memory.
        match unsafe { raw::random_bytes(buf.as_mut_ptr(), buf.len() as u32) } {
            0 => Ok(()),
            rc => Err(Error::new(format!("random_bytes failed ({rc})"))),
        }
    }

    fn sink_failure(what: &str, rc: i64) -> Error {
        let mut buf = vec![0u8; 512];
        // SAFETY: a live writable slice of guest memory.
        let n = unsafe { raw::sink_error(buf.as_mut_ptr(), buf.len() as u32) }.max(0) as usize;
        buf.truncate(n.min(512));
        if buf.is_empty() {
            Error::new(format!("{what} failed ({rc})"))
        } else {
            Error::new(format!("{what} failed ({rc}): {}", String::from_utf8_lossy(&buf)))
        }
    }

    /// The raw signature of a host function the server defined (see
    /// [`keel_wasm_host_fn!`](crate::keel_wasm_host_fn)).
    pub type RawHostFn = unsafe extern "C" fn(*const u8, u32, *mut u8, u32) -> i64;

    /// Call the imported host function `f` with `input`: its output, or its error message.
    pub fn call_host_fn(f: RawHostFn, input: &[u8]) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; 1024];
        loop {
            // SAFETY: `f` is an import with the host-function signature; both slices are live
            // guest memory with their lengths.
            let r = unsafe { f(input.as_ptr(), input.len() as u32, buf.as_mut_ptr(), buf.len() as u32) };
            let len = (r as u64 & 0x7fff_ffff_ffff_ffff) as usize;
            if r < 0 {
                buf.truncate(len.min(buf.len()));
                return Err(Error::new(format!(
                    "host function failed: {}",
                    String::from_utf8_lossy(&buf)
                )));
            }
            if len <= buf.len() {
                buf.truncate(len);
                return Ok(buf);
            }
            buf.resize(len, 0);
        }
    }

    /// Capability "kv:read": the value of `key` in the plugin's namespace (any length: asks
    /// again with a larger buffer when needed). Absent: `None`.
    pub fn kv_get(key: &[u8]) -> Result<Option<Vec<u8>>> {
        let mut buf = vec![0u8; 256];
        loop {
            // SAFETY: live slices of guest memory with their lengths.
            let n = unsafe { raw::kv_get(key.as_ptr(), key.len() as u32, buf.as_mut_ptr(), buf.len() as u32) };
            match n {
                -1 => return Ok(None),
                n if n < 0 => return Err(sink_failure("kv_get", n)),
                n if n as usize <= buf.len() => {
                    buf.truncate(n as usize);
                    return Ok(Some(buf));
                }
                n => buf.resize(n as usize, 0),
            }
        }
    }

    /// Capability "kv:write": set `key` to `value`.
    pub fn kv_put(key: &[u8], value: &[u8]) -> Result<()> {
        // SAFETY: live slices of guest memory with their lengths.
        match unsafe { raw::kv_put(key.as_ptr(), key.len() as u32, value.as_ptr(), value.len() as u32) } {
            0 => Ok(()),
            rc => Err(sink_failure("kv_put", rc as i64)),
        }
    }

    /// Capability "kv:write": delete `key`; true if it existed.
    pub fn kv_delete(key: &[u8]) -> Result<bool> {
        // SAFETY: a live slice of guest memory.
        match unsafe { raw::kv_delete(key.as_ptr(), key.len() as u32) } {
            0 => Ok(true),
            1 => Ok(false),
            rc => Err(sink_failure("kv_delete", rc as i64)),
        }
    }
}

/// Import the host function the server defined as `namespace`.`name` (the WASM convention:
/// module `namespace`, name `name`, `(i32 i32 i32 i32) -> i64`) as a safe Rust function
/// `fn $rust(input: &[u8]) -> Result<Vec<u8>>` (wasm32 only):
///
/// ```ignore
/// keel_wasm_host_fn!(fn get_row = "db"."get_row");
/// let row = get_row(b"key")?;
/// ```
///
/// The import needs the function's capability granted (else the load is refused with
/// `KEEL_ERR_IMPORT_NOT_GRANTED`; undefined: `KEEL_ERR_IMPORT_UNDEFINED`). An output longer
/// than the SDK's first buffer (1 KiB) makes the host run the function again with a buffer of
/// the full size, as the ABI prescribes; an error message is cut at 1 KiB.
#[macro_export]
macro_rules! keel_wasm_host_fn {
    ($vis:vis fn $rust:ident = $ns:literal . $name:literal) => {
        $vis fn $rust(input: &[u8]) -> $crate::sdk::Result<::std::vec::Vec<u8>> {
            #[link(wasm_import_module = $ns)]
            unsafe extern "C" {
                #[link_name = $name]
                fn import(input: *const u8, input_len: u32, out: *mut u8, out_cap: u32) -> i64;
            }
            $crate::sdk::wasm::call_host_fn(import, input)
        }
    };
}

/// Define the Keel WASM exports for the [`WasmPlugin`] type `type` (wasm32 only; once per
/// module):
///
/// ```ignore
/// keel_wasm_plugin!(type: Counter, functions: ["add", "get"]);
/// ```
#[macro_export]
macro_rules! keel_wasm_plugin {
    (type: $ty:ty, functions: [$($f:literal),+ $(,)?] $(,)?) => {
        const _: () = {
            static SLOT: $crate::sdk::wasm::Slot<$ty> = $crate::sdk::wasm::Slot::new();
            const NAMES: &[&str] = &[$($f),+];
            const LIST: &str = concat!($($f, ","),+);

            #[unsafe(no_mangle)]
            pub extern "C" fn keel_abi_version() -> i32 {
                $crate::sdk::wasm::abi_version()
            }
            #[unsafe(no_mangle)]
            pub extern "C" fn keel_functions() -> i64 {
                // The list without its trailing comma; static, so valid for ever.
                $crate::sdk::wasm::ok(LIST.as_ptr() as u32, (LIST.len() - 1) as u32)
            }
            #[unsafe(no_mangle)]
            pub extern "C" fn keel_alloc(size: u32) -> *mut u8 {
                $crate::sdk::wasm::alloc(size)
            }
            #[unsafe(no_mangle)]
            pub unsafe extern "C" fn keel_free(ptr: *mut u8, size: u32) {
                // SAFETY: the host frees only blocks keel_alloc gave it, with their size.
                unsafe { $crate::sdk::wasm::free(ptr, size) }
            }
            #[unsafe(no_mangle)]
            pub unsafe extern "C" fn keel_init(config: *const u8, len: u32) -> i64 {
                // SAFETY: the host passes `len` bytes of its input buffer.
                unsafe { SLOT.init(config, len) }
            }
            #[unsafe(no_mangle)]
            pub unsafe extern "C" fn keel_call(function: u32, input: *const u8, len: u32) -> i64 {
                // SAFETY: the host passes `len` bytes of its input buffer.
                unsafe { SLOT.call(NAMES, function, input, len) }
            }
            #[unsafe(no_mangle)]
            pub extern "C" fn keel_save_state() -> i64 {
                SLOT.save_state()
            }
            #[unsafe(no_mangle)]
            pub unsafe extern "C" fn keel_restore_state_versioned(
                state: *const u8,
                len: u32,
                version: *const u8,
                version_len: u32,
            ) -> i64 {
                // SAFETY: the host passes `len` and `version_len` bytes of guest memory.
                unsafe { SLOT.restore_state(state, len, version, version_len) }
            }
            #[unsafe(no_mangle)]
            pub extern "C" fn keel_health() -> i32 {
                SLOT.health()
            }
        };
    };
}
