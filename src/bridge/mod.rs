//! The legacy C++ API: a cxx bridge (the `cxx` crate) over [`crate::host::Host`] and
//! [`crate::registry::Slot`]. Thin: convert arguments, call the host or the slot, map errors.
//! The main C++ API (`keel::Host`, `keel::Plugin` of `include/keel/keel.hpp`) is header-only
//! over the C ABI; this bridge stays for existing users, in namespace `keel::bridge`.
//!
//! C++ sees (namespace `keel::bridge`, declared through `include/keel/keel.hpp`):
//! - `rust::Box<keel::bridge::Host> keel::new_host()` (also `keel::bridge::new_host()`), and on
//!   `Host`: `load`, `load_dir`, `reload`, `unload`, `get`, `set_trust_store_file`,
//!   `set_trust_store_bytes`, `set_require_signature`, `metrics_text`;
//! - `keel::bridge::Plugin` (a handle on one plugin's slot, valid across reloads): `function`,
//!   `call`, `name`, `generation`.
//!
//! Every fallible function returns `Result`, which cxx turns into a C++ exception
//! `rust::Error` whose `what()` is `"<KEEL_STATUS_NAME> (<code>): <message>"`, e.g.
//! `"KEEL_ERR_DIGEST_MISMATCH (400): ..."`. No panic crosses: cxx aborts the process on a
//! panic inside an `extern "Rust"` function, so every body runs inside [`guard`], which turns
//! a panic into a `KEEL_ERR_PANIC` error; dropping a `Host` or `Plugin` catches panics too.

use std::fmt;
use std::mem::ManuallyDrop;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::Arc;

use crate::err;
use crate::error::{Error, Result};
use crate::registry::Slot;

#[cxx::bridge(namespace = "keel::bridge")]
mod ffi {
    extern "Rust" {
        /// A Keel host: owns every loaded plugin. Dropping it unloads them all.
        type Host;
        /// A handle on one loaded plugin (its slot): valid across reloads of the plugin; after
        /// an unload its calls fail with KEEL_ERR_PLUGIN_UNLOADED.
        type Plugin;

        /// A new host with no plugin, an empty trust store and signatures required.
        fn new_host() -> Result<Box<Host>>;

        /// Load one plugin from its manifest (verified before any of its code runs).
        fn load(self: &Host, manifest_path: &str) -> Result<Box<Plugin>>;
        /// Load every plugin of a plugin directory as one all-or-nothing set, in dependency
        /// order; returns the names of the plugins loaded.
        fn load_dir(self: &Host, dir: &str) -> Result<Vec<String>>;
        /// Hot-reload a plugin from its manifest; returns the new generation number.
        fn reload(self: &Host, name: &str) -> Result<u64>;
        /// Unload a plugin (in-flight calls finish first, within the drain timeout).
        fn unload(self: &Host, name: &str) -> Result<()>;
        /// A handle on a loaded plugin.
        fn get(self: &Host, name: &str) -> Result<Box<Plugin>>;
        /// Replace the trust store with the JSON file at `path`; returns the store's version.
        fn set_trust_store_file(self: &Host, path: &str) -> Result<u64>;
        /// Replace the trust store with a JSON document; returns the store's version.
        fn set_trust_store_bytes(self: &Host, data: &[u8]) -> Result<u64>;
        /// Require (or, before the first load only, stop requiring) a trusted signature.
        fn set_require_signature(self: &Host, require: bool) -> Result<()>;
        /// OpenMetrics text exposition of every loaded plugin's metrics.
        fn metrics_text(self: &Host) -> Result<String>;
        /// The same host as a borrowed C handle (see `keel::c_host` in keel.hpp).
        fn c_handle(self: &Host) -> usize;

        /// Resolve a function name to an id, once; the id stays valid across reloads.
        fn function(self: &Plugin, name: &str) -> Result<u32>;
        /// Call a resolved function. `output` is cleared and receives the result; reuse one
        /// vector per thread so that steady-state calls do not allocate.
        fn call(self: &Plugin, function: u32, input: &[u8], output: &mut Vec<u8>) -> Result<()>;
        /// The plugin's name.
        fn name(self: &Plugin) -> &str;
        /// The current generation number (1 after load, +1 per reload; 0 once unloaded).
        fn generation(self: &Plugin) -> u64;
    }
}

/// The error C++ receives as `rust::Error`: its `what()` is this `Display`.
#[derive(Debug)]
pub struct Failure(pub Error);

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // keel_status displays as "NAME (code)".
        write!(f, "{}: {}", self.0.status(), self.0.message())
    }
}

/// Run a bridge function's body: a panic becomes a `KEEL_ERR_PANIC` error instead of
/// unwinding into cxx (which would abort the process).
pub fn guard<T>(f: impl FnOnce() -> Result<T>) -> Result<T, Failure> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r.map_err(Failure),
        Err(p) => Err(Failure(err!(
            KEEL_ERR_PANIC,
            "internal panic caught at the C++ API boundary: {}",
            crate::ffi::panic_message(&*p)
        ))),
    }
}

/// Drop `value`, catching a panic (cxx drops boxes from C++ through `extern "C"`).
fn drop_guarded<T>(value: T) {
    let _ = catch_unwind(AssertUnwindSafe(move || drop(value)));
}

/// See the bridge declaration.
pub struct Host {
    inner: ManuallyDrop<crate::host::Host>,
}

/// See the bridge declaration.
pub struct Plugin {
    slot: ManuallyDrop<Arc<Slot>>,
}

// C++ shares both across threads; keep that true.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Host>();
    send_sync::<Plugin>();
};

fn plugin(slot: Arc<Slot>) -> Box<Plugin> {
    Box::new(Plugin {
        slot: ManuallyDrop::new(slot),
    })
}

fn new_host() -> Result<Box<Host>, Failure> {
    guard(|| {
        Ok(Box::new(Host {
            inner: ManuallyDrop::new(crate::host::Host::new()),
        }))
    })
}

impl Host {
    fn load(&self, manifest_path: &str) -> Result<Box<Plugin>, Failure> {
        guard(|| self.inner.load(Path::new(manifest_path)).map(plugin))
    }

    fn load_dir(&self, dir: &str) -> Result<Vec<String>, Failure> {
        guard(|| {
            let slots = self.inner.load_dir(Path::new(dir))?;
            Ok(slots.iter().map(|s| s.name().to_string()).collect())
        })
    }

    fn reload(&self, name: &str) -> Result<u64, Failure> {
        guard(|| self.inner.reload(name))
    }

    fn unload(&self, name: &str) -> Result<(), Failure> {
        guard(|| self.inner.unload(name))
    }

    fn get(&self, name: &str) -> Result<Box<Plugin>, Failure> {
        guard(|| self.inner.get(name).map(plugin))
    }

    fn set_trust_store_file(&self, path: &str) -> Result<u64, Failure> {
        guard(|| self.inner.trust().set_trust_store_path(Path::new(path)))
    }

    fn set_trust_store_bytes(&self, data: &[u8]) -> Result<u64, Failure> {
        guard(|| self.inner.trust().set_trust_store_bytes(data))
    }

    fn set_require_signature(&self, require: bool) -> Result<(), Failure> {
        guard(|| self.inner.trust().set_require_signature(require))
    }

    fn metrics_text(&self) -> Result<String, Failure> {
        guard(|| Ok(self.inner.metrics_text()))
    }
}

impl Host {
    /// The address of the host the C ABI's `keel_host*` handles point to (a `keel_host*`
    /// is the address of the Rust `Host`), so C++ helpers can use C ABI functions that
    /// the bridge does not wrap. Borrowed: valid while this `Host` lives, never freed by C++.
    fn c_handle(&self) -> usize {
        let host: &crate::host::Host = &self.inner;
        host as *const crate::host::Host as usize
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // SAFETY: `inner` is taken once, here, and never used again.
        drop_guarded(unsafe { ManuallyDrop::take(&mut self.inner) });
    }
}

impl Plugin {
    fn function(&self, name: &str) -> Result<u32, Failure> {
        guard(|| self.slot.resolve(name))
    }

    #[inline]
    fn call(&self, function: u32, input: &[u8], output: &mut Vec<u8>) -> Result<(), Failure> {
        guard(|| self.slot.call(function, input, output))
    }

    fn name(&self) -> &str {
        self.slot.name()
    }

    fn generation(&self) -> u64 {
        self.slot.current().map_or(0, |g| g.number)
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        // SAFETY: `slot` is taken once, here, and never used again.
        drop_guarded(unsafe { ManuallyDrop::take(&mut self.slot) });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::keel_status;

    #[test]
    fn guard_passes_values_and_errors_through() {
        assert_eq!(guard(|| Ok(7u32)).map_err(|f| f.to_string()), Ok(7));
        let e = guard::<()>(|| Err(err!(KEEL_ERR_DIGEST_MISMATCH, "binary differs"))).unwrap_err();
        assert_eq!(e.0.status(), keel_status::KEEL_ERR_DIGEST_MISMATCH);
        assert_eq!(e.to_string(), "KEEL_ERR_DIGEST_MISMATCH (400): binary differs");
    }

    #[test]
    fn guard_turns_a_panic_into_keel_err_panic() {
        let e = guard::<u64>(|| panic!("plugin table corrupted")).unwrap_err();
        assert_eq!(e.0.status(), keel_status::KEEL_ERR_PANIC);
        let text = e.to_string();
        assert!(text.starts_with("KEEL_ERR_PANIC (1000): "), "{text}");
        assert!(text.contains("plugin table corrupted"), "{text}");
        // A formatted (String) payload is reported too.
        let n = 3;
        let e = guard::<()>(|| panic!("bad index {n}")).unwrap_err();
        assert!(e.to_string().contains("bad index 3"), "{e}");
    }

    #[test]
    fn drop_guarded_survives_a_panicking_drop() {
        struct Bomb;
        impl Drop for Bomb {
            fn drop(&mut self) {
                panic!("drop failed");
            }
        }
        drop_guarded(Bomb);
    }

    #[test]
    fn unknown_plugin_maps_to_plugin_not_found() {
        let host = new_host().unwrap();
        let e = host.get("nope").err().unwrap();
        assert_eq!(e.0.status(), keel_status::KEEL_ERR_PLUGIN_NOT_FOUND);
        assert!(e.to_string().starts_with("KEEL_ERR_PLUGIN_NOT_FOUND (200): "), "{e}");
    }
}
