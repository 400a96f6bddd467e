//! C ABI for ThemisDB compatibility: the `IThemisPlugin` object behind a legacy plugin, and
//! the plugin metadata `cpp/themis_adapter.hpp` needs to show any Keel plugin as an
//! `IThemisPlugin`.

use std::ffi::{c_char, c_void};
use std::sync::Arc;

use super::host::{current, keel_buffer, keel_plugin};
use super::{arg_str, borrow, boundary, fill_buffer, free, new_boxed, Boxed, Castable, Out};
use crate::err;
use crate::error::keel_status;
use crate::registry::Generation;
use crate::runtime::legacy::LegacyInstance;

/// A lease on the `IThemisPlugin::getInstance()` object of one generation of a ThemisDB
/// legacy plugin (plugins loaded with `"runtime": "themis"`, e.g. from a ThemisDB
/// `plugin.json`).
///
/// Taken by `keel_plugin_themis_lease`, released by `keel_themis_lease_free`. While the lease
/// is held, the generation it was taken from stays alive, and with it the object
/// (`keel_themis_lease_instance`): a reload or unload, whether the embedder, the health
/// monitor or the directory watcher does it, swaps the plugin's calls over to the new
/// generation at once but does not shut the leased one down. It waits for the lease as for a
/// call in flight: up to the drain timeout, after which it returns `KEEL_ERR_DRAIN_TIMEOUT`
/// and the old generation is shut down and unmapped once the lease is freed (and its last
/// call returned). So hold a lease for the work with the object, not for the plugin's life,
/// and take a new one to reach a newer generation. Calls into the object are the caller's
/// own business: Keel serialises only its own calls. Thread-safe: one lease may be read by
/// many threads; free it once, when no thread uses it any more.
pub struct keel_themis_lease {
    _opaque: [u8; 0],
}

/// What a `keel_themis_lease` holds: the generation (kept alive) and its object.
pub(crate) struct ThemisLease {
    generation: Arc<Generation>,
    instance: *mut c_void,
    plugin: *mut c_void,
}

impl Castable for keel_themis_lease {
    type Rust = ThemisLease;
    type Ownership = Boxed;
}

/// Take a lease on the type-specific object of a ThemisDB legacy plugin's current generation:
/// `IThemisPlugin::getInstance()`, asked once, now. `*out` receives a lease owned by the
/// caller (release with `keel_themis_lease_free`); what it keeps alive is described at
/// `keel_themis_lease`. Thread-safe.
///
/// Errors: `KEEL_ERR_NULL_POINTER`, `KEEL_ERR_PLUGIN_UNLOADED`, `KEEL_ERR_UNSUPPORTED` (not a
/// legacy ThemisDB plugin), `KEEL_ERR_CALL_FAILED` (`getInstance()` threw).
#[no_mangle]
pub extern "C" fn keel_plugin_themis_lease(
    plugin: *const keel_plugin,
    out: *mut *mut keel_themis_lease,
) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract for every pointer argument.
        let (slot, out) = unsafe { (borrow(plugin, "plugin")?, Out::new(out, "out")?) };
        let generation = current(slot)?;
        let legacy = generation
            .instance
            .as_any()
            .and_then(|a| a.downcast_ref::<LegacyInstance>())
            .ok_or_else(|| {
                err!(
                    KEEL_ERR_UNSUPPORTED,
                    "plugin '{}' is not a ThemisDB legacy plugin (runtime {:?}): it has no IThemisPlugin object",
                    slot.name(),
                    generation.manifest.runtime
                )
            })?;
        let instance = legacy.themis_instance()?;
        let plugin = legacy.themis_plugin();
        out.set(new_boxed::<keel_themis_lease>(ThemisLease {
            generation,
            instance,
            plugin,
        }));
        Ok(())
    })
}

/// The leased object: `*out` receives what `getInstance()` returned (NULL if it returned
/// NULL), cast it by the plugin's type as ThemisDB hosts do. Valid until the lease is freed.
/// Thread-safe.
///
/// Errors: `KEEL_ERR_NULL_POINTER`.
#[no_mangle]
pub extern "C" fn keel_themis_lease_instance(lease: *const keel_themis_lease, out: *mut *mut c_void) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract for every pointer argument.
        let (l, out) = unsafe { (borrow(lease, "lease")?, Out::new(out, "out")?) };
        out.set(l.instance);
        Ok(())
    })
}

/// The leased generation's own `IThemisPlugin` object (the one `createPlugin` returned and
/// Keel initialised): `*out` receives it as a `themis::plugins::IThemisPlugin*`. Valid until
/// the lease is freed; do not call `initialize`, `shutdown` or `destroyPlugin` on it (Keel
/// owns its lifecycle). Thread-safe.
///
/// Errors: `KEEL_ERR_NULL_POINTER`.
#[no_mangle]
pub extern "C" fn keel_themis_lease_plugin(lease: *const keel_themis_lease, out: *mut *mut c_void) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract for every pointer argument.
        let (l, out) = unsafe { (borrow(lease, "lease")?, Out::new(out, "out")?) };
        out.set(l.plugin);
        Ok(())
    })
}

/// The number of the generation the lease holds (compare with `keel_plugin_generation` to
/// see whether the plugin has been reloaded since). Thread-safe.
///
/// Errors: `KEEL_ERR_NULL_POINTER`.
#[no_mangle]
pub extern "C" fn keel_themis_lease_generation(lease: *const keel_themis_lease, out: *mut u64) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract for every pointer argument.
        let (l, out) = unsafe { (borrow(lease, "lease")?, Out::new(out, "out")?) };
        out.set(l.generation.number);
        Ok(())
    })
}

/// Release a lease. NULL is accepted and ignored. If the leased generation has been replaced
/// or unloaded meanwhile and nothing else holds it, it is shut down and unmapped after this
/// (as after a drain timeout: by the plugin's next call, or its reaper), never under a call.
///
/// Errors: none (always `KEEL_OK`).
#[no_mangle]
pub extern "C" fn keel_themis_lease_free(lease: *mut keel_themis_lease) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract: from keel_plugin_themis_lease, not yet freed, no other user.
        unsafe { free(lease) };
        Ok(())
    })
}

/// The plugin's name (as its manifest says; the same for every generation) written to `out`
/// (an output buffer; UTF-8, no NUL). Works after unload too. Thread-safe (for distinct
/// buffers).
///
/// Errors: `KEEL_ERR_NULL_POINTER`.
#[no_mangle]
pub extern "C" fn keel_plugin_name(plugin: *const keel_plugin, out: *mut keel_buffer) -> keel_status {
    fill_buffer(out, |out| {
        // SAFETY: caller contract.
        let slot = unsafe { borrow(plugin, "plugin") }?;
        set_text(out, slot.name());
        Ok(())
    })
}

/// The current generation's version (from its manifest, semver text) written to `out` (an
/// output buffer). Thread-safe.
///
/// Errors: `KEEL_ERR_NULL_POINTER`, `KEEL_ERR_PLUGIN_UNLOADED`.
#[no_mangle]
pub extern "C" fn keel_plugin_version(plugin: *const keel_plugin, out: *mut keel_buffer) -> keel_status {
    fill_buffer(out, |out| {
        // SAFETY: caller contract.
        let slot = unsafe { borrow(plugin, "plugin") }?;
        set_text(out, &current(slot)?.manifest.version.to_string());
        Ok(())
    })
}

/// The current generation's plugin type (manifest `"type"`, e.g. `"embedding"`; ThemisDB type
/// names) written to `out` (an output buffer); empty when the manifest names no type.
/// Thread-safe.
///
/// Errors: `KEEL_ERR_NULL_POINTER`, `KEEL_ERR_PLUGIN_UNLOADED`.
#[no_mangle]
pub extern "C" fn keel_plugin_type(plugin: *const keel_plugin, out: *mut keel_buffer) -> keel_status {
    fill_buffer(out, |out| {
        // SAFETY: caller contract.
        let slot = unsafe { borrow(plugin, "plugin") }?;
        set_text(out, current(slot)?.manifest.plugin_type.as_deref().unwrap_or(""));
        Ok(())
    })
}

/// Whether the current generation's manifest declares the trait `name` (behaviour flags such
/// as ThemisDB's `streaming`, `batching`, `transactions`, `thread_safe`, `gpu_accelerated`;
/// informational, they grant nothing). `*out` receives the answer. Thread-safe.
///
/// Errors: `KEEL_ERR_NULL_POINTER`, `KEEL_ERR_INVALID_UTF8`, `KEEL_ERR_PLUGIN_UNLOADED`.
#[no_mangle]
pub extern "C" fn keel_plugin_has_trait(
    plugin: *const keel_plugin,
    name: *const c_char,
    out: *mut bool,
) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract for every pointer argument.
        let (slot, name, out) = unsafe { (borrow(plugin, "plugin")?, arg_str(name, "name")?, Out::new(out, "out")?) };
        let has = current(slot)?.manifest.traits.iter().any(|t| t == name);
        out.set(has);
        Ok(())
    })
}

fn set_text(out: &mut Vec<u8>, text: &str) {
    out.clear();
    out.extend_from_slice(text.as_bytes());
}
