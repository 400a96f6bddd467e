//! C ABI: lifecycle listeners, unload-all, and introspection (the plugin list, a plugin's
//! functions, a plugin's lifecycle state). What `include/keel/themis/plugin_manager.hpp`
//! builds ThemisDB's `PluginManager` on.

use std::ffi::{c_char, c_void, CString};
use std::sync::Arc;

use super::host::{current, keel_buffer, keel_host, keel_plugin};
use super::{borrow, boundary, fill_buffer, Out};
use crate::bail;
use crate::error::keel_status;
use crate::health_state::Health;
use crate::lifecycle::LifecycleEvent;
use crate::registry::Slot;

/// A lifecycle event, as delivered to a `keel_listener_fn`.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum keel_event {
    /// A plugin was loaded (generation 1 installed and initialised).
    KEEL_EVENT_LOADED = 0,
    /// A reload verified and initialised a new generation and swapped it in (always followed
    /// by `KEEL_EVENT_AFTER_SWAP` for the same generation; listeners run after the operation,
    /// so the new generation already serves when they see it).
    KEEL_EVENT_BEFORE_SWAP = 1,
    /// After a reload: the new generation is current, the old one has been drained.
    KEEL_EVENT_AFTER_SWAP = 2,
    /// A reload failed; the old generation keeps serving (`generation` is the number the new
    /// one would have had).
    KEEL_EVENT_ROLLED_BACK = 3,
    /// A plugin was unloaded (`generation` is the one that was unloaded).
    KEEL_EVENT_UNLOADED = 4,
    /// The health monitor's verdict on the plugin changed (`Healthy`, `Degraded`,
    /// `Unhealthy`, `Failed`, or `Unknown` after a restart): read it with
    /// `keel_plugin_health`. `generation` is the generation the verdict is about. Delivered by
    /// the health monitor's thread (a listener that blocks delays the next health checks, and
    /// must not change the health configuration or free the host).
    KEEL_EVENT_HEALTH_CHANGED = 5,
}

impl From<LifecycleEvent> for keel_event {
    fn from(e: LifecycleEvent) -> keel_event {
        match e {
            LifecycleEvent::Loaded => keel_event::KEEL_EVENT_LOADED,
            LifecycleEvent::BeforeSwap => keel_event::KEEL_EVENT_BEFORE_SWAP,
            LifecycleEvent::AfterSwap => keel_event::KEEL_EVENT_AFTER_SWAP,
            LifecycleEvent::ReloadRolledBack => keel_event::KEEL_EVENT_ROLLED_BACK,
            LifecycleEvent::Unloaded => keel_event::KEEL_EVENT_UNLOADED,
            LifecycleEvent::HealthChanged => keel_event::KEEL_EVENT_HEALTH_CHANGED,
        }
    }
}

/// A lifecycle listener: `plugin` (NUL-terminated UTF-8, borrowed for the call), the event,
/// the generation number, and the `user_data` given at registration. It may be called from
/// any thread that runs a lifecycle operation (the embedder's, the health monitor's, the
/// directory watcher's), one call at a time, never re-entered, and never under Keel's
/// lifecycle lock: it may load, reload or unload plugins itself (the events of those
/// operations follow once it returns). It must not unwind (no C++ exception may leave it).
pub type keel_listener_fn =
    Option<unsafe extern "C" fn(plugin: *const c_char, event: keel_event, generation: u64, user_data: *mut c_void)>;

/// Releases a listener's `user_data` once the listener is removed (or its host freed) and no
/// delivery uses it any more.
pub type keel_user_data_free_fn = Option<unsafe extern "C" fn(user_data: *mut c_void)>;

/// A C listener and its user data; the destructor runs when the last copy is dropped.
struct CListener {
    f: unsafe extern "C" fn(*const c_char, keel_event, u64, *mut c_void),
    user_data: *mut c_void,
    free: keel_user_data_free_fn,
}

// SAFETY: the registration contract (`keel_host_add_listener`) requires the callback and its
// user data to be usable from any thread, one call at a time (which delivery guarantees).
unsafe impl Send for CListener {}
// SAFETY: as above; Keel never calls the listener from two threads at once.
unsafe impl Sync for CListener {}

impl CListener {
    fn deliver(&self, plugin: &str, ev: LifecycleEvent, generation: u64) {
        let name = CString::new(plugin.replace('\0', "\\0")).unwrap_or_default();
        // SAFETY: registration contract: `f` is callable with these arguments; `name` lives
        // for the call.
        unsafe { (self.f)(name.as_ptr(), ev.into(), generation, self.user_data) }
    }
}

impl Drop for CListener {
    fn drop(&mut self) {
        if let Some(free) = self.free {
            // SAFETY: registration contract: `free` releases `user_data`; this is the last use.
            unsafe { free(self.user_data) }
        }
    }
}

/// Register a lifecycle listener (see `keel_listener_fn` for when and how it is called).
/// `user_data` is passed to every call; `free_user_data` (may be NULL) is called with it once
/// the listener has been removed or the host freed and no delivery uses it any more. Both
/// must be usable from any thread. On success `*id` receives the listener's id (never 0), for
/// `keel_host_remove_listener`. A listener that panics or fails is ignored; later listeners
/// still run. Thread-safe.
///
/// Events: loaded, before swap, after swap, rolled back, unloaded (`keel_event`). Health
/// changes are not lifecycle events: read them with `keel_plugin_health`.
///
/// Errors: `KEEL_ERR_NULL_POINTER` (`host`, `listener`, `id`; then `free_user_data` is not
/// called).
#[no_mangle]
pub extern "C" fn keel_host_add_listener(
    host: *const keel_host,
    listener: keel_listener_fn,
    user_data: *mut c_void,
    free_user_data: keel_user_data_free_fn,
    id: *mut u64,
) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract for every pointer argument.
        let (h, id) = unsafe { (borrow(host, "host")?, Out::new(id, "id")?) };
        let Some(f) = listener else {
            bail!(KEEL_ERR_NULL_POINTER, "listener is NULL");
        };
        let l = Arc::new(CListener {
            f,
            user_data,
            free: free_user_data,
        });
        id.set(h.add_listener(Arc::new(move |p, e, g| l.deliver(p, e, g))));
        Ok(())
    })
}

/// Remove a listener registered with `keel_host_add_listener`. An event being delivered on
/// another thread when this returns may still reach it; later events do not. Its
/// `free_user_data` runs once no delivery uses it. Thread-safe; may be called from a listener.
///
/// Errors: `KEEL_ERR_NULL_POINTER`, `KEEL_ERR_INVALID_ARGUMENT` (no listener with that id:
/// never registered, or already removed).
#[no_mangle]
pub extern "C" fn keel_host_remove_listener(host: *const keel_host, id: u64) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract.
        let h = unsafe { borrow(host, "host") }?;
        if !h.remove_listener(id) {
            bail!(KEEL_ERR_INVALID_ARGUMENT, "no listener with id {id} is registered");
        }
        Ok(())
    })
}

/// Unload every loaded plugin, dependents before their dependencies (reverse dependency order,
/// ties by name). Every plugin is unloaded even if one fails to drain; the first error is
/// returned then. Thread-safe.
///
/// Errors: `KEEL_ERR_NULL_POINTER`, `KEEL_ERR_DRAIN_TIMEOUT` (all unloaded; a plugin's code is
/// released when its last call returns).
#[no_mangle]
pub extern "C" fn keel_host_unload_all(host: *const keel_host) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract.
        let h = unsafe { borrow(host, "host") }?;
        h.unload_all()
    })
}

/// A plugin's lifecycle state (`keel_plugin_state`); the values are ThemisDB's `PluginState`
/// ones, with `Draining` in place of `Unloading`.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum keel_lifecycle_state {
    /// Not loaded (unloaded since the handle was taken).
    KEEL_STATE_UNLOADED = 0,
    /// Being loaded. A handle or a list row exists only once a plugin is initialised and
    /// published, so Keel's queries never return it; it is here for ThemisDB's state values.
    KEEL_STATE_LOADING = 1,
    /// Loaded and serving; the health monitor has not found it degraded or unhealthy.
    KEEL_STATE_ACTIVE = 2,
    /// Loaded and serving, but the health monitor's last report was degraded, unhealthy or
    /// failed (`keel_plugin_health` has the details).
    KEEL_STATE_DEGRADED = 3,
    /// Loaded and serving while a reload or unload of it runs (its current generation will be
    /// drained).
    KEEL_STATE_DRAINING = 4,
}

impl keel_lifecycle_state {
    fn name(self) -> &'static str {
        match self {
            keel_lifecycle_state::KEEL_STATE_UNLOADED => "unloaded",
            keel_lifecycle_state::KEEL_STATE_LOADING => "loading",
            keel_lifecycle_state::KEEL_STATE_ACTIVE => "active",
            keel_lifecycle_state::KEEL_STATE_DEGRADED => "degraded",
            keel_lifecycle_state::KEEL_STATE_DRAINING => "draining",
        }
    }
}

/// A slot's lifecycle state, read now (no lock held afterwards; the lifecycle lock of the
/// slot is only tried, never waited for).
fn state_of(slot: &Slot) -> keel_lifecycle_state {
    if !slot.is_loaded() {
        return keel_lifecycle_state::KEEL_STATE_UNLOADED;
    }
    if slot.lifecycle.try_lock().is_none() {
        return keel_lifecycle_state::KEEL_STATE_DRAINING;
    }
    match slot.health.report().status {
        Health::Degraded | Health::Unhealthy | Health::Failed => keel_lifecycle_state::KEEL_STATE_DEGRADED,
        Health::Healthy | Health::Unknown => keel_lifecycle_state::KEEL_STATE_ACTIVE,
    }
}

/// A plugin's lifecycle state now (`keel_lifecycle_state`): `*out` receives it. Works on a
/// handle whose plugin has been unloaded (`KEEL_STATE_UNLOADED`). Thread-safe, lock-free for
/// calls.
///
/// Errors: `KEEL_ERR_NULL_POINTER`.
#[no_mangle]
pub extern "C" fn keel_plugin_state(plugin: *const keel_plugin, out: *mut keel_lifecycle_state) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract for every pointer argument.
        let (slot, out) = unsafe { (borrow(plugin, "plugin")?, Out::new(out, "out")?) };
        out.set(state_of(slot));
        Ok(())
    })
}

/// The functions the plugin's current generation exports, as a JSON array of strings (in the
/// plugin's order), written to `out` (an output buffer). Thread-safe (for distinct buffers).
///
/// Errors: `KEEL_ERR_NULL_POINTER`, `KEEL_ERR_PLUGIN_UNLOADED`.
#[no_mangle]
pub extern "C" fn keel_plugin_functions(plugin: *const keel_plugin, out: *mut keel_buffer) -> keel_status {
    fill_buffer(out, |out| {
        // SAFETY: caller contract.
        let slot = unsafe { borrow(plugin, "plugin") }?;
        let g = current(slot)?;
        out.clear();
        serde_json::to_writer(&mut *out, g.instance.functions())
            .map_err(|e| crate::err!(KEEL_ERR_INTERNAL, "serialising the function list: {e}"))?;
        Ok(())
    })
}

/// One row of `keel_host_list_plugins`.
fn row(h: &crate::host::Host, slot: &Slot) -> Option<serde_json::Value> {
    let g = slot.current()?;
    let m = &g.manifest;
    Some(serde_json::json!({
        "name": slot.name(),
        "version": m.version.to_string(),
        "description": m.description,
        "type": m.plugin_type.as_deref().unwrap_or(""),
        "runtime": m.runtime,
        "generation": g.number,
        "state": state_of(slot).name(),
        "manifest_path": h.manifest_path(slot.name()).map(|p| p.to_string_lossy().into_owned()),
        "binary_sha256": g.binary_sha256,
        "capabilities": g.granted.names(),
        "dependencies": m.dependencies,
        "traits": m.traits,
        "auto_load": m.auto_load.unwrap_or(false),
        "load_priority": m.load_priority,
    }))
}

/// Every loaded plugin, sorted by name, as a JSON array written to `out` (an output buffer).
/// Each element is an object with `name`, `version`, `description`, `type` (manifest type, ""
/// if none), `runtime` (`"native"`, `"wasm"`, `"themis"`), `generation`, `state` (`"active"`,
/// `"degraded"`, `"draining"`; see `keel_lifecycle_state`), `manifest_path` (or null),
/// `binary_sha256` (lower-case hex of the binary that runs), `capabilities` (the granted,
/// frozen set), `dependencies` (plugin name → version range), `traits`, `auto_load`,
/// `load_priority` (or null). A lock-free snapshot: a plugin unloaded meanwhile is left out.
/// Thread-safe (for distinct buffers).
///
/// Errors: `KEEL_ERR_NULL_POINTER`.
#[no_mangle]
pub extern "C" fn keel_host_list_plugins(host: *const keel_host, out: *mut keel_buffer) -> keel_status {
    fill_buffer(out, |out| {
        // SAFETY: caller contract.
        let h = unsafe { borrow(host, "host") }?;
        let rows: Vec<serde_json::Value> = h.slots().iter().filter_map(|s| row(h, s)).collect();
        out.clear();
        serde_json::to_writer(&mut *out, &rows)
            .map_err(|e| crate::err!(KEEL_ERR_INTERNAL, "serialising the plugin list: {e}"))?;
        Ok(())
    })
}

/// Find the plugin manifests under `dir` as `keel_host_load_dir` does (plugin folders with
/// `keel.json` or `plugin.json`, ThemisDB's nested `<category>/<name>/plugin.json` layout up to
/// 4 levels, no stray `*.json`, hidden and temporary names ignored), without reading or
/// loading them: a JSON array of manifest paths, sorted, written to `out` (an output buffer).
/// An empty array means none was found. Thread-safe (for distinct buffers).
///
/// Errors: `KEEL_ERR_NULL_POINTER`, `KEEL_ERR_INVALID_UTF8`, `KEEL_ERR_FILE_NOT_FOUND`,
/// `KEEL_ERR_INVALID_ARGUMENT` (not a directory), `KEEL_ERR_IO`.
#[no_mangle]
pub extern "C" fn keel_discover_manifests(dir: *const c_char, out: *mut keel_buffer) -> keel_status {
    fill_buffer(out, |out| {
        // SAFETY: caller contract.
        let dir = unsafe { super::arg_str(dir, "dir") }?;
        let mut found = crate::deps::discover::discover(std::path::Path::new(dir))?.manifests;
        found.sort();
        let paths: Vec<String> = found.iter().map(|p| p.to_string_lossy().into_owned()).collect();
        out.clear();
        serde_json::to_writer(&mut *out, &paths)
            .map_err(|e| crate::err!(KEEL_ERR_INTERNAL, "serialising the manifest list: {e}"))?;
        Ok(())
    })
}

/// Read and validate one manifest (Keel `keel.json` or ThemisDB `plugin.json`) without loading
/// anything or checking trust: its normalised Keel form (the Keel manifest schema's JSON:
/// `name`, `version`, `type`, `runtime`, `binary`, `capabilities`, `dependencies`, `traits`,
/// `auto_load`, `load_priority`, `config`, ...) written to `out` (an output buffer).
/// Thread-safe (for distinct buffers).
///
/// Errors: `KEEL_ERR_NULL_POINTER`, `KEEL_ERR_INVALID_UTF8`, `KEEL_ERR_FILE_NOT_FOUND`,
/// `KEEL_ERR_IO`, `KEEL_ERR_SYMLINK_REFUSED`, `KEEL_ERR_FILE_TOO_LARGE`, `KEEL_ERR_MANIFEST_*`.
#[no_mangle]
pub extern "C" fn keel_manifest_read(path: *const c_char, out: *mut keel_buffer) -> keel_status {
    fill_buffer(out, |out| {
        // SAFETY: caller contract.
        let path = unsafe { super::arg_str(path, "path") }?;
        let f = crate::manifest::read_file(std::path::Path::new(path))?;
        out.clear();
        serde_json::to_writer(&mut *out, &f.manifest)
            .map_err(|e| crate::err!(KEEL_ERR_INTERNAL, "serialising the manifest: {e}"))?;
        Ok(())
    })
}
