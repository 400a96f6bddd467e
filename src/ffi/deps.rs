//! C ABI: plugin directories, dependency-aware unload, capabilities.

use std::ffi::c_char;
use std::path::Path;

use super::host::{keel_host, keel_plugin};
use super::{arg_out, arg_ref, arg_str, boundary};
use crate::bail;
use crate::capability::Capabilities;
use crate::error::keel_status;

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
/// Errors: `KEEL_ERR_NULL_POINTER`, `KEEL_ERR_INVALID_UTF8`, `KEEL_ERR_FILE_NOT_FOUND`,
/// `KEEL_ERR_INVALID_ARGUMENT` (not a directory), `KEEL_ERR_NO_MANIFEST`, `KEEL_ERR_DEPENDENCY_*`,
/// and every error of `keel_host_load`.
#[no_mangle]
pub extern "C" fn keel_host_load_dir(host: *const keel_host, dir: *const c_char) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract for every pointer argument.
        let h = unsafe { arg_ref(host, "host") }?;
        let dir = unsafe { arg_str(dir, "dir") }?;
        h.host.load_dir(Path::new(dir)).map(|_| ())
    })
}

/// Unload a plugin and every loaded plugin that depends on it, directly or transitively:
/// dependents first, `name` last. (`keel_host_unload` refuses with `KEEL_ERR_HAS_DEPENDENTS`
/// instead, naming the dependents.)
///
/// `name` is borrowed for the call. Thread-safe. A `KEEL_ERR_DRAIN_TIMEOUT` result means every
/// plugin of the cascade was unloaded but at least one still had calls running when its drain
/// timeout passed (its code is released when the last of them returns).
#[no_mangle]
pub extern "C" fn keel_host_unload_cascade(host: *const keel_host, name: *const c_char) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract.
        let h = unsafe { arg_ref(host, "host") }?;
        let name = unsafe { arg_str(name, "name") }?;
        h.host.unload_cascade(name).map(|_| ())
    })
}

/// Set the node's capability allowlist: the capabilities plugins loaded from now on may be
/// granted. `names` points to `count` NUL-terminated capability names (`"log"`, `"kv:read"`,
/// `"storage:write"`, `"network:egress"`, ...; may be NULL when `count` is 0, which allows
/// none). The whole list is checked first: an unknown name gives `KEEL_ERR_CAPABILITY_UNKNOWN`
/// and leaves the allowlist unchanged.
///
/// Plugins already loaded keep the set they were granted at load; nothing widens a granted
/// set. `names` and the strings are borrowed for the call. Thread-safe.
#[no_mangle]
pub extern "C" fn keel_host_set_capability_allowlist(
    host: *const keel_host,
    names: *const *const c_char,
    count: usize,
) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract.
        let h = unsafe { arg_ref(host, "host") }?;
        if names.is_null() && count > 0 {
            bail!(KEEL_ERR_NULL_POINTER, "names is NULL but count is {count}");
        }
        let mut allow = Capabilities::NONE;
        for i in 0..count {
            // SAFETY: `names` points to `count` pointers (caller contract), checked non-null.
            let p = unsafe { *names.add(i) };
            // SAFETY: caller contract for each string.
            let name = unsafe { arg_str(p, &format!("names[{i}]")) }?;
            allow = allow.union(Capabilities::bit_of(name)?);
        }
        h.host.set_allowlist(allow);
        Ok(())
    })
}

/// The node's current capability allowlist as a bit set (bits as given by
/// `keel_capability_bit`). Thread-safe.
#[no_mangle]
pub extern "C" fn keel_host_capability_allowlist(host: *const keel_host, bits: *mut u64) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract.
        let h = unsafe { arg_ref(host, "host") }?;
        let out = arg_out(bits, "bits")?;
        // SAFETY: checked non-null.
        unsafe { *out = h.host.allowlist().bits() };
        Ok(())
    })
}

/// The capabilities granted to a loaded plugin, as a bit set: frozen when its current
/// generation was loaded (requested by its manifest and inside the allowlist at that time),
/// never widened afterwards. `KEEL_ERR_PLUGIN_UNLOADED` if the plugin has been unloaded.
/// Thread-safe, lock-free.
#[no_mangle]
pub extern "C" fn keel_plugin_capabilities(plugin: *const keel_plugin, bits: *mut u64) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract.
        let p = unsafe { arg_ref(plugin, "plugin") }?;
        let out = arg_out(bits, "bits")?;
        let g = p.current()?;
        // SAFETY: checked non-null.
        unsafe { *out = g.granted.bits() };
        Ok(())
    })
}

/// The bit of one capability name (e.g. `"kv:read"`), for testing the sets returned by
/// `keel_plugin_capabilities` and `keel_host_capability_allowlist`. Bits are stable.
/// `KEEL_ERR_CAPABILITY_UNKNOWN` for a name Keel does not know. Thread-safe.
#[no_mangle]
pub extern "C" fn keel_capability_bit(name: *const c_char, bit: *mut u64) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract.
        let name = unsafe { arg_str(name, "name") }?;
        let out = arg_out(bit, "bit")?;
        let b = Capabilities::bit_of(name)?;
        // SAFETY: checked non-null.
        unsafe { *out = b.bits() };
        Ok(())
    })
}
