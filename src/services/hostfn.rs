//! Host functions defined by the embedder: the server defines a function under a namespace
//! and a name, tied to one capability; plugins granted that capability call it (native
//! plugins through their host-API table, WASM plugins by importing `namespace.name`).
//!
//! Binding: a plugin binds at load time. The load takes a snapshot of the definitions (an
//! `Arc` of each one the plugin may use); later definitions, redefinitions and removals
//! change what later loads and reloads see, never what a loaded generation calls.
//!
//! Lifetime: a definition lives while the registry holds it or a loaded generation is bound
//! to it. Its destructor (`user_data`'s free function, or the Rust closure's drop) runs
//! exactly once, when the last of those lets go: on removal or replacement if no generation
//! is bound to it, else when the last bound generation is dropped (after its last call).
//!
//! The call path ([`HostFn::invoke_raw`]) allocates nothing, takes no lock and looks nothing
//! up: the runtime already holds the definition.

use std::collections::HashMap;
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use parking_lot::RwLock;

use super::call::{with_current, CallOptions};
use crate::bail;
use crate::capability::{Capabilities, REGISTRY};
use crate::error::Result;

/// The output sink a host function writes to. Same layout as `keel_output`
/// (`keel_plugin.h`) and `keel_host_fn_output` (`keel.h`): `write` appends `len` bytes and
/// returns 0, or non-zero when refused (output limit).
#[repr(C)]
pub struct HostOutput {
    pub ctx: *mut c_void,
    pub write: unsafe extern "C" fn(ctx: *mut c_void, data: *const u8, len: usize) -> i32,
}

impl HostOutput {
    /// Append `data`; `false` when the sink refused it.
    #[inline]
    pub fn write(&self, data: &[u8]) -> bool {
        // SAFETY: a HostOutput is only built by a runtime over a live sink whose `write` takes
        // its own `ctx` and a readable slice.
        unsafe { (self.write)(self.ctx, data.as_ptr(), data.len()) == 0 }
    }
}

/// What a host function learns about the call it serves: the calling plugin and, for a call
/// made with options, the server's `user_context`, tenant, `traceparent` and cancel token.
/// Valid only during the host function's call.
pub struct CallContext<'a> {
    plugin: &'a str,
    /// The options of the call being served (null for a plain call); points into the frame
    /// of `services::call::with_options`, which encloses this host function call.
    opts: *const CallOptions<'static>,
}

impl<'a> CallContext<'a> {
    /// The context of a host function call made now, on this thread, by `plugin`.
    #[inline]
    pub fn current(plugin: &'a str) -> CallContext<'a> {
        let opts = with_current(|c| c.map_or(std::ptr::null(), |c| (c as *const CallOptions<'_>).cast()));
        CallContext { plugin, opts }
    }

    fn opts(&self) -> Option<&CallOptions<'_>> {
        // SAFETY: `opts` is null or was read from the current call context when this
        // CallContext was made; that context's `with_options` frame encloses the host function
        // call, which is the only place a CallContext is handed out (by reference).
        unsafe { self.opts.as_ref() }
    }

    /// The calling plugin's name.
    pub fn plugin(&self) -> &str {
        self.plugin
    }

    /// The server's opaque pointer given with the call's options (null for a plain call).
    pub fn user_context(&self) -> *mut c_void {
        self.opts().map_or(std::ptr::null_mut(), |o| o.user_context)
    }

    /// The tenant id given with the call's options.
    pub fn tenant(&self) -> Option<&str> {
        self.opts().and_then(|o| o.tenant)
    }

    /// The W3C `traceparent` given with the call's options.
    pub fn traceparent(&self) -> Option<&str> {
        self.opts().and_then(|o| o.traceparent)
    }

    /// Whether the call's cancel token has been cancelled (false without one).
    pub fn cancelled(&self) -> bool {
        self.opts().is_some_and(CallOptions::is_cancelled)
    }
}

/// A C host function: `(context, input, input_len, output, user_data) -> status`.
pub type RawHostFnCallback = unsafe extern "C" fn(
    ctx: *const CallContext<'_>,
    input: *const u8,
    input_len: usize,
    output: *const HostOutput,
    user_data: *mut c_void,
) -> i32;

/// Releases a C host function's `user_data`.
pub type RawFreeFn = unsafe extern "C" fn(user_data: *mut c_void);

/// A Rust host function: writes its output through the [`HostOutput`]; `Err(message)` fails
/// the call with that message. A panic is caught and fails the call too.
pub type RustHostFn = dyn Fn(&CallContext<'_>, &[u8], &HostOutput) -> std::result::Result<(), String> + Send + Sync;

/// What a failed or panicking Rust host function returns to the plugin.
pub const STATUS_FAILED: i32 = 1;
/// What a host function call returns when the function panicked (the message is written to
/// the output).
pub const STATUS_PANICKED: i32 = -3;

enum Body {
    C {
        callback: RawHostFnCallback,
        user_data: *mut c_void,
        free: Option<RawFreeFn>,
    },
    Rust(Box<RustHostFn>),
}

/// One defined host function.
pub struct HostFn {
    namespace: String,
    name: String,
    capability: &'static str,
    bit: Capabilities,
    body: Body,
}

// SAFETY: the definition contract (`keel_host_define_function`) requires the C callback and
// its user_data to be callable from any thread, concurrently; Rust bodies are Send + Sync.
unsafe impl Send for HostFn {}
// SAFETY: as for Send.
unsafe impl Sync for HostFn {}

impl Drop for HostFn {
    fn drop(&mut self) {
        if let Body::C {
            user_data,
            free: Some(free),
            ..
        } = self.body
        {
            // SAFETY: definition contract: `free` releases `user_data`; the last owner of the
            // definition is being dropped, so this runs once and nothing calls it afterwards.
            unsafe { free(user_data) }
        }
    }
}

impl std::fmt::Debug for HostFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HostFn({}.{} [{}])", self.namespace, self.name, self.capability)
    }
}

impl HostFn {
    pub fn namespace(&self) -> &str {
        &self.namespace
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The capability a plugin needs to use this function.
    pub fn capability(&self) -> &'static str {
        self.capability
    }
    /// Whether a plugin with `granted` may use it.
    #[inline]
    pub fn granted_to(&self, granted: Capabilities) -> bool {
        granted.contains(self.bit)
    }

    /// Call the function for `plugin` with `input`, its output (or, on failure, its error
    /// message) appended to `out`. Returns 0 on success, the callback's non-zero status on
    /// failure, [`STATUS_FAILED`] for a Rust function's `Err`, [`STATUS_PANICKED`] for a
    /// panic. Nothing unwinds out of it.
    #[inline]
    pub fn invoke(&self, plugin: &str, input: &[u8], out: &HostOutput) -> i32 {
        let ctx = CallContext::current(plugin);
        match &self.body {
            Body::C {
                callback, user_data, ..
            } => {
                // SAFETY: definition contract: the callback takes these arguments; every
                // pointer is valid for the call (ctx and out on this frame, input borrowed).
                unsafe { callback(&ctx, input.as_ptr(), input.len(), out, *user_data) }
            }
            Body::Rust(f) => self.invoke_rust(f, &ctx, input, out),
        }
    }

    fn invoke_rust(&self, f: &RustHostFn, ctx: &CallContext<'_>, input: &[u8], out: &HostOutput) -> i32 {
        match catch_unwind(AssertUnwindSafe(|| f(ctx, input, out))) {
            Ok(Ok(())) => 0,
            Ok(Err(msg)) => {
                out.write(msg.as_bytes());
                STATUS_FAILED
            }
            Err(p) => {
                let what = p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic payload".into());
                out.write(format!("host function '{}.{}' panicked: {what}", self.namespace, self.name).as_bytes());
                STATUS_PANICKED
            }
        }
    }
}

/// The namespace Keel's own WASM imports use; host functions may not be defined in it.
pub const RESERVED_NAMESPACE: &str = "keel";
/// Longest namespace or name (bytes).
pub const MAX_NAME: usize = 128;

fn check_name(what: &str, s: &str) -> Result<()> {
    let ok = !s.is_empty()
        && s.len() <= MAX_NAME
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b':'));
    if !ok {
        bail!(
            KEEL_ERR_INVALID_ARGUMENT,
            "host function {what} '{s}' must be 1-{MAX_NAME} characters of [A-Za-z0-9_.:-]"
        );
    }
    Ok(())
}

/// The embedder's host functions, by (namespace, name). Read only when a plugin loads; the
/// call path never touches it.
#[derive(Default)]
pub struct HostFunctions {
    map: RwLock<HashMap<(String, String), Arc<HostFn>>>,
}

impl std::fmt::Debug for HostFunctions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.map.read().values()).finish()
    }
}

impl HostFunctions {
    fn define(&self, namespace: &str, name: &str, capability: &str, body: Body) -> Result<()> {
        // Build the definition first: if a check fails it is dropped, which releases the
        // user data (the C ABI's rule: a refused definition's `free` runs at once).
        let mut def = HostFn {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            capability: "",
            bit: Capabilities::NONE,
            body,
        };
        check_name("namespace", namespace)?;
        check_name("name", name)?;
        if namespace == RESERVED_NAMESPACE {
            bail!(
                KEEL_ERR_INVALID_ARGUMENT,
                "host function namespace '{RESERVED_NAMESPACE}' is reserved for Keel's own imports"
            );
        }
        let bit = Capabilities::bit_of(capability)?;
        let Some(&(cap, _, _)) = REGISTRY.iter().find(|(n, _, _)| *n == capability) else {
            bail!(KEEL_ERR_CAPABILITY_UNKNOWN, "unknown capability '{capability}'");
        };
        def.capability = cap;
        def.bit = bit;
        let def = Arc::new(def);
        let old = self.map.write().insert((namespace.to_owned(), name.to_owned()), def);
        // The replaced definition (if any) is dropped here, outside the lock.
        drop(old);
        Ok(())
    }

    /// Define (or replace) a C host function. The definition owns `user_data` from this call
    /// on, also when it fails (then `free` runs before this returns).
    ///
    /// # Safety
    /// `callback` and `free` must be callable from any thread, concurrently, with `user_data`,
    /// until `free` runs.
    pub unsafe fn define_raw(
        &self,
        namespace: &str,
        name: &str,
        capability: &str,
        callback: RawHostFnCallback,
        user_data: *mut c_void,
        free: Option<RawFreeFn>,
    ) -> Result<()> {
        self.define(
            namespace,
            name,
            capability,
            Body::C {
                callback,
                user_data,
                free,
            },
        )
    }

    /// Define (or replace) a Rust host function.
    pub fn define_fn<F>(&self, namespace: &str, name: &str, capability: &str, f: F) -> Result<()>
    where
        F: Fn(&CallContext<'_>, &[u8], &HostOutput) -> std::result::Result<(), String> + Send + Sync + 'static,
    {
        self.define(namespace, name, capability, Body::Rust(Box::new(f)))
    }

    /// Remove a definition. Plugins bound to it keep it until they are unloaded or reloaded.
    /// `KEEL_ERR_HOST_FN_NOT_FOUND` if none is defined under that name.
    pub fn remove(&self, namespace: &str, name: &str) -> Result<()> {
        let old = self.map.write().remove(&(namespace.to_owned(), name.to_owned()));
        match old {
            Some(def) => {
                drop(def);
                Ok(())
            }
            None => bail!(
                KEEL_ERR_HOST_FN_NOT_FOUND,
                "no host function '{namespace}.{name}' is defined"
            ),
        }
    }

    /// The definition under (namespace, name), whatever its capability (load-time use).
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<HostFn>> {
        self.map.read().get(&(namespace.to_owned(), name.to_owned())).cloned()
    }

    /// Every definition a plugin with `granted` may use (the native runtime's load-time
    /// snapshot), sorted by (namespace, name).
    pub fn snapshot(&self, granted: Capabilities) -> Vec<Arc<HostFn>> {
        let mut v: Vec<Arc<HostFn>> = self
            .map
            .read()
            .values()
            .filter(|f| f.granted_to(granted))
            .cloned()
            .collect();
        v.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        v
    }

    /// Number of definitions.
    pub fn len(&self) -> usize {
        self.map.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::keel_status;
    use crate::services::call::with_options;
    use std::sync::atomic::{AtomicUsize, Ordering};

    unsafe extern "C" fn vec_write(ctx: *mut c_void, data: *const u8, len: usize) -> i32 {
        // SAFETY: test sink: ctx is a &mut Vec<u8>, data has len bytes.
        unsafe { (*(ctx as *mut Vec<u8>)).extend_from_slice(std::slice::from_raw_parts(data, len)) };
        0
    }

    fn call(f: &HostFn, plugin: &str, input: &[u8]) -> (i32, Vec<u8>) {
        let mut buf = Vec::new();
        let out = HostOutput {
            ctx: &mut buf as *mut Vec<u8> as *mut c_void,
            write: vec_write,
        };
        let rc = f.invoke(plugin, input, &out);
        (rc, buf)
    }

    static FREED: AtomicUsize = AtomicUsize::new(0);
    unsafe extern "C" fn count_free(_u: *mut c_void) {
        FREED.fetch_add(1, Ordering::SeqCst);
    }
    unsafe extern "C" fn echo(
        _ctx: *const CallContext<'_>,
        input: *const u8,
        len: usize,
        out: *const HostOutput,
        _u: *mut c_void,
    ) -> i32 {
        // SAFETY: per the callback contract.
        unsafe { ((*out).write)((*out).ctx, input, len) }
    }

    #[test]
    fn define_call_replace_remove_and_the_destructor_runs_once_when_unbound() {
        let r = HostFunctions::default();
        // SAFETY: echo and count_free are thread-safe.
        unsafe {
            r.define_raw(
                "db",
                "echo",
                "storage:read",
                echo,
                std::ptr::null_mut(),
                Some(count_free),
            )
        }
        .unwrap();
        let bound = r.snapshot(Capabilities::parse(&["storage:read"]).unwrap());
        assert_eq!(bound.len(), 1);
        assert!(r.snapshot(Capabilities::NONE).is_empty());
        assert_eq!(call(&bound[0], "p", b"hi"), (0, b"hi".to_vec()));
        let before = FREED.load(Ordering::SeqCst);
        // Replaced while bound: not freed yet.
        r.define_fn("db", "echo", "storage:read", |_, _, _| Ok(())).unwrap();
        assert_eq!(FREED.load(Ordering::SeqCst), before);
        drop(bound);
        assert_eq!(FREED.load(Ordering::SeqCst), before + 1);
        r.remove("db", "echo").unwrap();
        assert_eq!(
            r.remove("db", "echo").unwrap_err().status(),
            keel_status::KEEL_ERR_HOST_FN_NOT_FOUND
        );
        // A refused definition releases its user data at once.
        // SAFETY: as above.
        let e = unsafe { r.define_raw("keel", "x", "log", echo, std::ptr::null_mut(), Some(count_free)) }.unwrap_err();
        assert_eq!(e.status(), keel_status::KEEL_ERR_INVALID_ARGUMENT);
        assert_eq!(FREED.load(Ordering::SeqCst), before + 2);
        let e = r.define_fn("db", "x", "fly", |_, _, _| Ok(())).unwrap_err();
        assert_eq!(e.status(), keel_status::KEEL_ERR_CAPABILITY_UNKNOWN);
        assert!(r.is_empty());
    }

    #[test]
    fn rust_functions_fail_and_panic_into_a_status_and_see_the_call_context() {
        let r = HostFunctions::default();
        r.define_fn("t", "ctx", "log", |c, _, out| {
            let s = format!(
                "{}|{}|{}|{}|{}",
                c.plugin(),
                c.tenant().unwrap_or("-"),
                c.traceparent().unwrap_or("-"),
                c.user_context() as usize,
                c.cancelled()
            );
            out.write(s.as_bytes());
            Ok(())
        })
        .unwrap();
        r.define_fn("t", "fail", "log", |_, _, _| Err("no such row".into()))
            .unwrap();
        r.define_fn("t", "panic", "log", |_, _, _| panic!("boom")).unwrap();
        let ctx = r.get("t", "ctx").unwrap();
        assert_eq!(call(&ctx, "p", b""), (0, b"p|-|-|0|false".to_vec()));
        let token = crate::services::call::CancelToken::new();
        token.cancel();
        let opts = CallOptions {
            tenant: Some("acme"),
            traceparent: Some("00-abc-def-01"),
            user_context: 42usize as *mut c_void,
            cancel: Some(&token),
            ..CallOptions::default()
        };
        let got = with_options(&opts, || call(&ctx, "p", b""));
        assert_eq!(got, (0, b"p|acme|00-abc-def-01|42|true".to_vec()));
        assert_eq!(
            call(&r.get("t", "fail").unwrap(), "p", b""),
            (STATUS_FAILED, b"no such row".to_vec())
        );
        let (rc, msg) = call(&r.get("t", "panic").unwrap(), "p", b"");
        assert_eq!(rc, STATUS_PANICKED);
        assert!(String::from_utf8_lossy(&msg).contains("t.panic' panicked: boom"));
    }
}
