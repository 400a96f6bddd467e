//! C ABI for ThemisDB compatibility: the `IThemisPlugin` object behind a legacy plugin, and
//! the plugin metadata `cpp/themis_adapter.hpp` needs to show any Keel plugin as an
//! `IThemisPlugin`.

use std::ffi::{c_char, c_void};

use super::host::{keel_buffer, keel_plugin};
use super::{arg_out, arg_ref, arg_str, boundary};
use crate::err;
use crate::error::{keel_status, Result};
use crate::runtime::legacy::LegacyInstance;

fn write_text(out: *mut keel_buffer, text: &str) -> Result<()> {
    let out = arg_out(out, "out")?;
    // SAFETY: checked non-null; the caller owns the buffer exclusively for the call.
    let buf = unsafe { &mut *out };
    buf.data.clear();
    buf.data.extend_from_slice(text.as_bytes());
    Ok(())
}

/// The type-specific object of a ThemisDB legacy plugin: `IThemisPlugin::getInstance()` of
/// the plugin's current generation (plugins loaded with `"runtime": "themis"`, e.g. from a
/// ThemisDB `plugin.json`). Cast it by the plugin's type, as ThemisDB hosts do.
///
/// `*out` receives the pointer (NULL if `getInstance()` returned NULL). It is borrowed from
/// the plugin object and valid only until the next reload or unload of that plugin (each
/// reload creates a new object; call this again after `keel_host_reload`). Calls into the
/// object are the caller's own business: Keel serialises only its own calls.
///
/// Errors: `KEEL_ERR_UNSUPPORTED` if the plugin is not a legacy ThemisDB plugin,
/// `KEEL_ERR_PLUGIN_UNLOADED` after unload, `KEEL_ERR_CALL_FAILED` if `getInstance()` threw.
/// Thread-safe.
#[no_mangle]
pub extern "C" fn keel_plugin_themis_instance(plugin: *const keel_plugin, out: *mut *mut c_void) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract.
        let p = unsafe { arg_ref(plugin, "plugin") }?;
        let out = arg_out(out, "out")?;
        let gen = p.current()?;
        let legacy = gen
            .instance
            .as_any()
            .and_then(|a| a.downcast_ref::<LegacyInstance>())
            .ok_or_else(|| {
                err!(
                    KEEL_ERR_UNSUPPORTED,
                    "plugin '{}' is not a ThemisDB legacy plugin (runtime {:?}): it has no IThemisPlugin object",
                    p.slot.name(),
                    gen.manifest.runtime
                )
            })?;
        let instance = legacy.themis_instance()?;
        // SAFETY: checked non-null.
        unsafe { *out = instance };
        Ok(())
    })
}

/// The plugin's name (as its manifest says; the same for every generation) written to `out`,
/// replacing its content (UTF-8, no NUL). Works after unload too. Thread-safe (for distinct
/// buffers).
#[no_mangle]
pub extern "C" fn keel_plugin_name(plugin: *const keel_plugin, out: *mut keel_buffer) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract.
        let p = unsafe { arg_ref(plugin, "plugin") }?;
        write_text(out, p.slot.name())
    })
}

/// The current generation's version (from its manifest, semver text) written to `out`,
/// replacing its content. `KEEL_ERR_PLUGIN_UNLOADED` after unload. Thread-safe.
#[no_mangle]
pub extern "C" fn keel_plugin_version(plugin: *const keel_plugin, out: *mut keel_buffer) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract.
        let p = unsafe { arg_ref(plugin, "plugin") }?;
        let gen = p.current()?;
        write_text(out, &gen.manifest.version.to_string())
    })
}

/// The current generation's plugin type (manifest `"type"`, e.g. `"embedding"`; ThemisDB type
/// names) written to `out`, replacing its content; empty when the manifest names no type.
/// `KEEL_ERR_PLUGIN_UNLOADED` after unload. Thread-safe.
#[no_mangle]
pub extern "C" fn keel_plugin_type(plugin: *const keel_plugin, out: *mut keel_buffer) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract.
        let p = unsafe { arg_ref(plugin, "plugin") }?;
        let gen = p.current()?;
        write_text(out, gen.manifest.plugin_type.as_deref().unwrap_or(""))
    })
}

/// Whether the current generation's manifest declares the trait `name` (behaviour flags such
/// as ThemisDB's `streaming`, `batching`, `transactions`, `thread_safe`, `gpu_accelerated`;
/// informational, they grant nothing). `*out` receives the answer.
/// `KEEL_ERR_PLUGIN_UNLOADED` after unload. Thread-safe.
#[no_mangle]
pub extern "C" fn keel_plugin_has_trait(
    plugin: *const keel_plugin,
    name: *const c_char,
    out: *mut bool,
) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract.
        let p = unsafe { arg_ref(plugin, "plugin") }?;
        let name = unsafe { arg_str(name, "name") }?;
        let out = arg_out(out, "out")?;
        let gen = p.current()?;
        let has = gen.manifest.traits.iter().any(|t| t == name);
        // SAFETY: checked non-null.
        unsafe { *out = has };
        Ok(())
    })
}
