//! ThemisDB legacy C++ plugins: shared libraries exporting `createPlugin`/`destroyPlugin`
//! that hand out a `themis::IThemisPlugin*` (`include/keel/themis/plugin_interface.hpp`).
//!
//! Rust never touches the C++ object itself: every call goes through the small C++ shim
//! `cpp/themis_shim.cpp` (compiled into the crate by `build.rs`), which catches every C++
//! exception and returns a status and a message instead. The library is `dlopen`ed from the
//! verified sealed memfd exactly like a native plugin ([`SealedLibrary`]).
//!
//! # Load
//!
//! 1. `dlopen` the sealed memfd; look up `createPlugin` and `destroyPlugin`. Either missing →
//!    `KEEL_ERR_SYMBOL_MISSING`, before any plugin code but the library's constructors ran.
//!    A library with `createPlugin` but no `destroyPlugin` is refused: ThemisDB falls back to
//!    `delete` in the host module, freeing the object through another module's allocator.
//! 2. `createPlugin()`; a NULL result or an exception → `KEEL_ERR_INIT_FAILED`.
//! 3. `getName`, `getVersion` (NULL read as `""`), `getType`, `getCapabilities` and
//!    `dynamic_cast<IStatefulPlugin*>`, recorded as the load-time [`LegacyInfo`]. The
//!    `thread_safe` flag decides concurrency: unless the plugin declares it, Keel serialises
//!    every call into the object (this instance's own lock).
//! 4. `initialize(config)`: `false` or an exception → `KEEL_ERR_INIT_FAILED` (the object is
//!    then destroyed with `destroyPlugin`, without `shutdown`, and the library closed).
//!
//! # Config and restored state
//!
//! ThemisDB's `loadPlugin` always passes `"{}"` (compat §9.16); Keel passes the manifest's
//! `config` object (`{}` without one; ThemisDB `plugin.json` has no `config`, a Keel manifest
//! with `"runtime": "themis"` may have one). On a hot reload ThemisDB initialises the new
//! object with `{"restored_state": "<saved string>"}` and then calls `restoreState(saved)`
//! (compat §2.5). Keel keeps that convention: the config is the manifest's `config` object with
//! the key `restored_state` set to the saved state (replacing a `restored_state` key the
//! manifest itself may have) and `restored_state_version` set to the version of the plugin
//! that saved it (Keel's addition, so a new version can migrate), then `restoreState(saved)`
//! is called if the new object is an `IStatefulPlugin`. An empty saved state means "no state" (as in ThemisDB): no key, no
//! `restoreState`. Differences from ThemisDB, in favour of not losing state silently:
//!
//! * `saveState()` throwing fails the reload (`KEEL_ERR_STATE_SAVE`, old generation keeps
//!   serving); ThemisDB logs it and reloads without state.
//! * `restoreState()` returning false or throwing fails the reload (`KEEL_ERR_STATE_RESTORE`);
//!   ThemisDB only warns.
//! * A saved state that is not UTF-8 (possible when the previous generation was not a
//!   ThemisDB plugin) cannot be put in the JSON config: it is then only handed to
//!   `restoreState`, and a new object without `IStatefulPlugin` fails the reload.
//!
//! # Functions for `keel_call`
//!
//! `IThemisPlugin` has no generic call method (work is done through the type-specific object
//! of `getInstance()`, see `keel_plugin_themis_instance`), so a legacy plugin exposes:
//!
//! * `"info"` — input ignored; output a JSON object asked from the plugin at call time:
//!   `{"name", "version", "type" (name in ThemisDB's current numbering, or "unknown"),
//!   "type_id", "capabilities": {"streaming", "batching", "transactions", "thread_safe",
//!   "gpu_accelerated", "provides_vram_policy", "provides_shard_policy"}, "stateful"}`.
//! * `"state"` — only for `IStatefulPlugin` objects: input ignored; output `saveState()`.
//! * `"diagnostics"` — only for `ISelfHealingPlugin` objects: input ignored; output
//!   `performHealthCheck()` as a JSON object with ThemisDB's `PluginDiagnostics` field names
//!   (`status` as its name, `last_error_time_ms` since the epoch, plus `error_rate` and
//!   `needs_immediate_attention`).
//!
//! # Health and self-repair
//!
//! A plugin that is also an `ISelfHealingPlugin` (`include/keel/themis/self_healing_plugin.hpp`)
//! answers Keel's health checks with `performHealthCheck()`: `HEALTHY` → healthy, `DEGRADED`
//! and `RECOVERING` → degraded (a plugin repairing itself is not restarted under it),
//! `UNHEALTHY` and `CRITICAL` → unhealthy, an exception → unhealthy. Before the health monitor
//! restarts it, [`Instance::self_repair`] runs ThemisDB's recovery sequence (the declared
//! strategies in ThemisDB's order through `executeRecoveryAction`, then `attemptSelfRepair`,
//! each followed by a check); the restart happens only if that does not bring it back.
//! Other legacy plugins report `Unknown` (no health hook in `IThemisPlugin`).
//!
//! # Unload
//!
//! Dropping the instance (the registry does so only after the last in-flight call returned)
//! calls `shutdown()` (only if `initialize` succeeded), then `destroyPlugin`, then closes
//! the library. Exceptions there are logged through the host's log sink and do not stop the
//! sequence.

use std::ffi::{c_void, CString};

use parking_lot::{Mutex, MutexGuard};
use serde_json::{Map, Value};

use crate::artifact::Verified;
use crate::error::Result;
use crate::manifest::themis::LEGACY_TYPES;
use crate::runtime::output::{max_output, with_output, with_output_checked, RawOutput};
use crate::runtime::shared_lib::SealedLibrary;
use crate::runtime::{Health, HostServices, Instance, LoadContext, LogLevel, SelfRepair};
use crate::{bail, err};

/// The factory symbol (`themis::CreatePluginFunc`).
pub const CREATE_SYMBOL: &[u8] = b"createPlugin\0";
/// The destructor symbol (`themis::DestroyPluginFunc`).
pub const DESTROY_SYMBOL: &[u8] = b"destroyPlugin\0";
/// The function every legacy plugin exposes to `keel_call`.
pub const FN_INFO: &str = "info";
/// The function `IStatefulPlugin` plugins also expose (their `saveState()`).
pub const FN_STATE: &str = "state";
/// The function `ISelfHealingPlugin` plugins also expose (their `performHealthCheck()`).
pub const FN_DIAGNOSTICS: &str = "diagnostics";
/// The config key carrying the previous generation's state on reload (ThemisDB's convention).
pub const RESTORED_STATE_KEY: &str = "restored_state";
/// The config key carrying the version of the plugin that saved that state (Keel's addition,
/// so that a new version can migrate an old state).
pub const RESTORED_STATE_VERSION_KEY: &str = "restored_state_version";
/// `PluginCapabilities` flags in declaration order, as named in `"info"`.
pub const CAPABILITY_FLAGS: [&str; 7] = [
    "streaming",
    "batching",
    "transactions",
    "thread_safe",
    "gpu_accelerated",
    "provides_vram_policy",
    "provides_shard_policy",
];
const THREAD_SAFE: usize = 3;

/// Shim result codes (`keel_themis_rc` in cpp/themis_shim.h).
const RC_OK: i32 = 0;
const RC_FALSE: i32 = 1;
const RC_EXCEPTION: i32 = 2;
const RC_NULL: i32 = 3;
const RC_UNSUPPORTED: i32 = 4;
const RC_SINK_FULL: i32 = 5;
const RC_BAD_ARGUMENT: i32 = 6;

/// Error messages from the shim are capped at this many bytes.
const MAX_MESSAGE: usize = 64 << 10;
/// Names and versions longer than this are refused (ThemisDB caps versions at 64 bytes and
/// names at 256; this only bounds memory).
const MAX_NAME: usize = 4096;

/// The shim's C functions (cpp/themis_shim.h). Internal: kept out of the public header.
/// cbindgen:ignore
mod sys {
    use std::ffi::{c_char, c_void};

    use crate::runtime::output::RawOutput;

    /// Mirror of `keel_themis_info`.
    #[repr(C)]
    #[derive(Default)]
    pub struct RawInfo {
        pub type_id: i32,
        pub capabilities: [u8; 7],
        pub stateful: u8,
        pub name_null: u8,
        pub version_null: u8,
        pub self_healing: u8,
    }

    extern "C" {
        pub fn keel_themis_shim_health_check(
            plugin: *mut c_void,
            status: *mut i32,
            diag: *const RawOutput,
            err: *const RawOutput,
        ) -> i32;
        pub fn keel_themis_shim_self_repair(
            plugin: *mut c_void,
            recovered: *mut i32,
            log: *const RawOutput,
            err: *const RawOutput,
        ) -> i32;
        pub fn keel_themis_shim_create(create_fn: *mut c_void, out: *mut *mut c_void, err: *const RawOutput) -> i32;
        pub fn keel_themis_shim_info(
            plugin: *mut c_void,
            info: *mut RawInfo,
            name: *const RawOutput,
            version: *const RawOutput,
            err: *const RawOutput,
        ) -> i32;
        pub fn keel_themis_shim_initialize(
            plugin: *mut c_void,
            config_json: *const c_char,
            err: *const RawOutput,
        ) -> i32;
        pub fn keel_themis_shim_shutdown(plugin: *mut c_void, err: *const RawOutput) -> i32;
        pub fn keel_themis_shim_destroy(destroy_fn: *mut c_void, plugin: *mut c_void, err: *const RawOutput) -> i32;
        pub fn keel_themis_shim_get_instance(plugin: *mut c_void, out: *mut *mut c_void, err: *const RawOutput) -> i32;
        pub fn keel_themis_shim_save_state(plugin: *mut c_void, out: *const RawOutput, err: *const RawOutput) -> i32;
        pub fn keel_themis_shim_restore_state(
            plugin: *mut c_void,
            data: *const u8,
            len: usize,
            err: *const RawOutput,
        ) -> i32;
    }
}

use sys::*;

/// Run a shim function with an error sink; returns its code and the message it wrote.
fn shim(f: impl FnOnce(&RawOutput) -> i32) -> (i32, String) {
    let mut buf = Vec::new();
    let rc = with_output(&mut buf, MAX_MESSAGE, f);
    (rc, String::from_utf8_lossy(&buf).into_owned())
}

/// A shim failure as text (for codes that write no message themselves).
fn describe(rc: i32, msg: String) -> String {
    match rc {
        _ if !msg.is_empty() => msg,
        RC_FALSE => "the plugin method returned false".to_string(),
        RC_EXCEPTION => "the plugin threw an exception".to_string(),
        RC_NULL => "createPlugin returned NULL".to_string(),
        RC_BAD_ARGUMENT => "the shim was called with a NULL argument".to_string(),
        RC_SINK_FULL => "the result exceeded the output limit".to_string(),
        RC_UNSUPPORTED => "the plugin is not an IStatefulPlugin".to_string(),
        other => format!("the shim returned {other}"),
    }
}

/// What a ThemisDB plugin object says about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LegacyInfo {
    /// `getName()` (NULL read as "", invalid UTF-8 replaced).
    pub name: String,
    /// `getVersion()` (NULL read as "").
    pub version: String,
    /// `getType()` as its integer value.
    pub type_id: i32,
    /// `PluginCapabilities`, in the order of [`CAPABILITY_FLAGS`].
    pub capabilities: [bool; 7],
    /// Whether the object is also an `IStatefulPlugin`.
    pub stateful: bool,
    /// Whether the object is also an `ISelfHealingPlugin`.
    pub self_healing: bool,
}

impl LegacyInfo {
    /// The type's name in ThemisDB's current numbering, or `"unknown"`.
    pub fn type_name(&self) -> &'static str {
        usize::try_from(self.type_id)
            .ok()
            .and_then(|i| LEGACY_TYPES.get(i))
            .copied()
            .unwrap_or("unknown")
    }

    /// Whether the plugin declared `thread_safe`.
    pub fn thread_safe(&self) -> bool {
        self.capabilities[THREAD_SAFE]
    }

    /// The `"info"` function's output.
    pub fn to_json(&self) -> String {
        let caps: Map<String, Value> = CAPABILITY_FLAGS
            .iter()
            .zip(self.capabilities)
            .map(|(k, v)| (k.to_string(), Value::Bool(v)))
            .collect();
        serde_json::json!({
            "name": self.name,
            "version": self.version,
            "type": self.type_name(),
            "type_id": self.type_id,
            "capabilities": caps,
            "stateful": self.stateful,
            "self_healing": self.self_healing,
        })
        .to_string()
    }
}

/// One loaded ThemisDB plugin object and its library.
pub struct LegacyInstance {
    plugin: *mut c_void,
    destroy: *mut c_void,
    initialized: bool,
    loaded_info: LegacyInfo,
    functions: Vec<String>,
    /// Present unless the plugin declared `thread_safe` at load.
    serial: Option<Mutex<()>>,
    max_output: usize,
    label: String,
    services: HostServices,
    lib: Option<SealedLibrary>,
}

// SAFETY: the object is only reached through the shim; calls into it are serialised by
// `serial` unless the plugin declared itself thread_safe (ThemisDB's contract for concurrent
// use), and the registry never drops an instance while a call is in flight.
unsafe impl Send for LegacyInstance {}
// SAFETY: as for Send: shared use goes through the shim under `serial` (or the plugin's own
// thread_safe promise).
unsafe impl Sync for LegacyInstance {}

/// Load a ThemisDB plugin from a verified artifact: create, describe, initialise and, on
/// reload, restore its state (see the module documentation).
pub fn load(artifact: Verified, ctx: &LoadContext<'_>) -> Result<LegacyInstance> {
    let name = &ctx.manifest.name;
    let lib = SealedLibrary::open(artifact, name)?;
    let create = lib.symbol(CREATE_SYMBOL).ok_or_else(|| {
        err!(
            KEEL_ERR_SYMBOL_MISSING,
            "plugin '{name}' does not export createPlugin (not a ThemisDB plugin)"
        )
    })?;
    let destroy = lib.symbol(DESTROY_SYMBOL).ok_or_else(|| {
        err!(
            KEEL_ERR_SYMBOL_MISSING,
            "plugin '{name}' exports createPlugin but not destroyPlugin: refused, since its object could only be freed by the host's delete, across allocators (export both, e.g. with THEMIS_PLUGIN_IMPL)"
        )
    })?;
    let mut plugin = std::ptr::null_mut();
    // SAFETY: `create` is the library's createPlugin; the shim calls it as CreatePluginFunc.
    let (rc, msg) = shim(|e| unsafe { keel_themis_shim_create(create, &mut plugin, e) });
    if rc != RC_OK || plugin.is_null() {
        bail!(KEEL_ERR_INIT_FAILED, "plugin '{name}': {}", describe(rc, msg));
    }
    let mut inst = LegacyInstance {
        plugin,
        destroy,
        initialized: false,
        loaded_info: LegacyInfo::default(),
        functions: Vec::new(),
        serial: None,
        max_output: max_output(ctx.manifest),
        label: name.clone(),
        services: ctx.services.clone(),
        lib: Some(lib),
    };
    // From here on, dropping `inst` destroys the object and closes the library.
    let info = inst
        .query_info()
        .map_err(|msg| err!(KEEL_ERR_INIT_FAILED, "plugin '{name}': {msg}"))?;
    inst.functions.push(FN_INFO.to_string());
    if info.stateful {
        inst.functions.push(FN_STATE.to_string());
    }
    if info.self_healing {
        inst.functions.push(FN_DIAGNOSTICS.to_string());
    }
    inst.serial = (!info.thread_safe()).then(|| Mutex::new(()));
    inst.loaded_info = info;

    let restored = ctx.restored_state.filter(|s| !s.is_empty());
    let mut config = ctx.manifest.config.clone().unwrap_or_default();
    if let Some(state) = restored {
        if let Some(v) = ctx.restored_state_version {
            config.insert(RESTORED_STATE_VERSION_KEY.to_string(), Value::from(v));
        }
        match std::str::from_utf8(state) {
            Ok(text) => {
                config.insert(RESTORED_STATE_KEY.to_string(), Value::from(text));
            }
            Err(_) if inst.loaded_info.stateful => inst.log(
                LogLevel::Warn,
                "the saved state is not UTF-8: handed to restoreState only, not to initialize",
            ),
            Err(_) => bail!(
                KEEL_ERR_STATE_RESTORE,
                "plugin '{name}': the saved state is not UTF-8, so it cannot go into the initialize config, and the plugin is not an IStatefulPlugin"
            ),
        }
    }
    let config = Value::Object(config).to_string();
    let config_c = CString::new(config)
        .map_err(|_| err!(KEEL_ERR_MANIFEST_INVALID, "plugin '{name}': config contains a NUL byte"))?;
    // SAFETY: the object is live and not shared yet; config_c outlives the call.
    let (rc, msg) = shim(|e| unsafe { keel_themis_shim_initialize(inst.plugin, config_c.as_ptr(), e) });
    if rc != RC_OK {
        bail!(KEEL_ERR_INIT_FAILED, "plugin '{name}': {}", describe(rc, msg));
    }
    inst.initialized = true;
    if let Some(state) = restored {
        if inst.loaded_info.stateful {
            inst.restore_state(state)?;
        }
    }
    Ok(inst)
}

impl LegacyInstance {
    fn lock(&self) -> Option<MutexGuard<'_, ()>> {
        self.serial.as_ref().map(|m| m.lock())
    }

    fn log(&self, level: LogLevel, msg: &str) {
        let log = &self.services.log;
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| log(&self.label, level, msg)));
    }

    /// Ask the object for its info (caller holds the lock if there is one).
    fn query_info(&self) -> std::result::Result<LegacyInfo, String> {
        let mut raw = RawInfo::default();
        let (mut name, mut version) = (Vec::new(), Vec::new());
        let (rc, msg) = with_output(&mut name, MAX_NAME, |n| {
            with_output(&mut version, MAX_NAME, |v| {
                // SAFETY: the object is live; every pointer is valid for the call.
                shim(|e| unsafe { keel_themis_shim_info(self.plugin, &mut raw, n, v, e) })
            })
        });
        if rc != RC_OK {
            return Err(match rc {
                RC_SINK_FULL => format!("getName or getVersion returned more than {MAX_NAME} bytes"),
                _ => describe(rc, msg),
            });
        }
        let mut capabilities = [false; 7];
        for (c, r) in capabilities.iter_mut().zip(raw.capabilities) {
            *c = r != 0;
        }
        Ok(LegacyInfo {
            name: String::from_utf8_lossy(&name).into_owned(),
            version: String::from_utf8_lossy(&version).into_owned(),
            type_id: raw.type_id,
            capabilities,
            stateful: raw.stateful != 0,
            self_healing: raw.self_healing != 0,
        })
    }

    /// What the plugin says about itself now (`getName`, `getVersion`, `getType`,
    /// `getCapabilities`, `IStatefulPlugin`).
    pub fn info(&self) -> Result<LegacyInfo> {
        let _serial = self.lock();
        self.query_info()
            .map_err(|msg| err!(KEEL_ERR_CALL_FAILED, "plugin '{}': {msg}", self.label))
    }

    /// What the plugin said about itself at load (its `thread_safe` flag decided whether
    /// Keel serialises calls into it).
    pub fn loaded_info(&self) -> &LegacyInfo {
        &self.loaded_info
    }

    /// `getInstance()`: the type-specific object (may be NULL). It belongs to the plugin
    /// object and is valid while this instance lives.
    /// The plugin's own `IThemisPlugin` object (valid while this instance lives).
    pub fn themis_plugin(&self) -> *mut c_void {
        self.plugin
    }

    pub fn themis_instance(&self) -> Result<*mut c_void> {
        let _serial = self.lock();
        let mut out = std::ptr::null_mut();
        // SAFETY: the object is live (self is).
        let (rc, msg) = shim(|e| unsafe { keel_themis_shim_get_instance(self.plugin, &mut out, e) });
        if rc != RC_OK {
            bail!(KEEL_ERR_CALL_FAILED, "plugin '{}': {}", self.label, describe(rc, msg));
        }
        Ok(out)
    }

    /// `saveState()` appended to `out` (at most `max` bytes). Caller holds the lock.
    fn save_into(&self, out: &mut Vec<u8>, max: usize) -> (i32, String) {
        let ((rc, msg), refused) = with_output_checked(out, max, |o| {
            // SAFETY: the object is live; sinks are valid for the call.
            shim(|e| unsafe { keel_themis_shim_save_state(self.plugin, o, e) })
        });
        // A refused write fails the call whatever the shim reports.
        if refused {
            (RC_SINK_FULL, msg)
        } else {
            (rc, msg)
        }
    }
}

impl Instance for LegacyInstance {
    fn functions(&self) -> &[String] {
        &self.functions
    }

    fn call(&self, function: u32, _input: &[u8], output: &mut Vec<u8>) -> Result<()> {
        let _serial = self.lock();
        match self.functions.get(function as usize).map(String::as_str) {
            Some(FN_INFO) => {
                let info = self
                    .query_info()
                    .map_err(|msg| err!(KEEL_ERR_CALL_FAILED, "function 'info': {msg}"))?;
                let text = info.to_json();
                if text.len() > self.max_output {
                    bail!(
                        KEEL_ERR_OUTPUT_TOO_LARGE,
                        "function 'info' output exceeded {} bytes",
                        self.max_output
                    );
                }
                output.extend_from_slice(text.as_bytes());
                Ok(())
            }
            Some(FN_STATE) => match self.save_into(output, self.max_output) {
                (RC_OK, _) => Ok(()),
                (RC_SINK_FULL, _) => Err(err!(
                    KEEL_ERR_OUTPUT_TOO_LARGE,
                    "function 'state' output exceeded {} bytes",
                    self.max_output
                )),
                (rc, msg) => Err(err!(KEEL_ERR_CALL_FAILED, "function 'state': {}", describe(rc, msg))),
            },
            Some(FN_DIAGNOSTICS) => {
                let mut status = 0;
                let ((rc, msg), refused) = with_output_checked(output, self.max_output, |o| {
                    // SAFETY: the object is live; every pointer is valid for the call.
                    shim(|e| unsafe { keel_themis_shim_health_check(self.plugin, &mut status, o, e) })
                });
                match rc {
                    _ if refused || rc == RC_SINK_FULL => Err(err!(
                        KEEL_ERR_OUTPUT_TOO_LARGE,
                        "function 'diagnostics' output exceeded {} bytes",
                        self.max_output
                    )),
                    RC_OK => Ok(()),
                    _ => Err(err!(
                        KEEL_ERR_CALL_FAILED,
                        "function 'diagnostics': {}",
                        describe(rc, msg)
                    )),
                }
            }
            _ => Err(err!(
                KEEL_ERR_FUNCTION_NOT_FOUND,
                "function index {function} is not a function of this legacy plugin"
            )),
        }
    }

    fn has_state(&self) -> bool {
        self.loaded_info.stateful
    }

    fn save_state(&self) -> Result<Option<Vec<u8>>> {
        if !self.loaded_info.stateful {
            return Ok(None);
        }
        let _serial = self.lock();
        let mut buf = Vec::new();
        match self.save_into(&mut buf, usize::MAX) {
            (RC_OK, _) if buf.is_empty() => Ok(None),
            (RC_OK, _) => Ok(Some(buf)),
            (RC_UNSUPPORTED, _) => Ok(None),
            (rc, msg) => Err(err!(
                KEEL_ERR_STATE_SAVE,
                "plugin '{}': {}",
                self.label,
                describe(rc, msg)
            )),
        }
    }

    fn restore_state(&self, state: &[u8]) -> Result<()> {
        if !self.loaded_info.stateful {
            bail!(
                KEEL_ERR_UNSUPPORTED,
                "plugin '{}' is not an IStatefulPlugin: it has no restoreState",
                self.label
            );
        }
        let _serial = self.lock();
        // SAFETY: the object is live; `state` is valid for the call.
        let (rc, msg) =
            shim(|e| unsafe { keel_themis_shim_restore_state(self.plugin, state.as_ptr(), state.len(), e) });
        match rc {
            RC_OK => Ok(()),
            _ => Err(err!(
                KEEL_ERR_STATE_RESTORE,
                "plugin '{}': {}",
                self.label,
                describe(rc, msg)
            )),
        }
    }

    fn health(&self) -> Health {
        if !self.loaded_info.self_healing {
            return Health::Unknown;
        }
        let _serial = self.lock();
        let mut status = 0;
        // SAFETY: the object is live; `status` and the error sink are valid for the call.
        let (rc, msg) =
            shim(|e| unsafe { keel_themis_shim_health_check(self.plugin, &mut status, std::ptr::null(), e) });
        if rc != RC_OK {
            self.log(
                LogLevel::Warn,
                &format!("performHealthCheck failed: {}", describe(rc, msg)),
            );
            return Health::Unhealthy;
        }
        match status {
            0 => Health::Healthy,
            1 | 4 => Health::Degraded,
            _ => Health::Unhealthy,
        }
    }

    fn self_repair(&self) -> Option<SelfRepair> {
        if !self.loaded_info.self_healing {
            return None;
        }
        let _serial = self.lock();
        let mut recovered = 0;
        let mut log = Vec::new();
        let (rc, msg) = with_output(&mut log, MAX_MESSAGE, |l| {
            // SAFETY: the object is live; every pointer is valid for the call.
            shim(|e| unsafe { keel_themis_shim_self_repair(self.plugin, &mut recovered, l, e) })
        });
        let mut steps = String::from_utf8_lossy(&log).trim_end().replace('\n', "; ");
        if rc != RC_OK && rc != RC_SINK_FULL {
            if !steps.is_empty() {
                steps.push_str("; ");
            }
            steps.push_str(&describe(rc, msg));
        }
        Some(SelfRepair {
            recovered: rc != RC_EXCEPTION && recovered != 0,
            steps,
        })
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }
}

impl Drop for LegacyInstance {
    fn drop(&mut self) {
        if !self.plugin.is_null() {
            if self.initialized {
                // SAFETY: no call is in flight (the registry drops a generation after its last
                // guard); shutdown is called once, after a successful initialize.
                let (rc, msg) = shim(|e| unsafe { keel_themis_shim_shutdown(self.plugin, e) });
                if rc != RC_OK {
                    self.log(LogLevel::Warn, &format!("shutdown failed: {}", describe(rc, msg)));
                }
            }
            // SAFETY: destroyPlugin of the library that created the object, called once.
            let (rc, msg) = shim(|e| unsafe { keel_themis_shim_destroy(self.destroy, self.plugin, e) });
            if rc != RC_OK {
                self.log(LogLevel::Warn, &format!("destroyPlugin failed: {}", describe(rc, msg)));
            }
        }
        self.plugin = std::ptr::null_mut();
        self.initialized = false;
        // dlclose, then release the memfd.
        drop(self.lib.take());
    }
}

impl std::fmt::Debug for LegacyInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LegacyInstance")
            .field("plugin", &self.label)
            .field("info", &self.loaded_info)
            .field("functions", &self.functions)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_json_names_type_and_every_flag() {
        let info = LegacyInfo {
            name: "imp".into(),
            version: "".into(),
            type_id: 2,
            capabilities: [true, false, false, true, false, false, true],
            stateful: true,
            self_healing: false,
        };
        let v: Value = serde_json::from_str(&info.to_json()).unwrap();
        assert_eq!(v["type"], "importer");
        assert_eq!(v["type_id"], 2);
        assert_eq!(v["version"], "");
        assert_eq!(v["capabilities"].as_object().unwrap().len(), 7);
        assert_eq!(v["capabilities"]["thread_safe"], true);
        assert_eq!(v["capabilities"]["provides_shard_policy"], true);
        assert_eq!(v["capabilities"]["batching"], false);
        assert!(info.thread_safe());
        let odd = LegacyInfo {
            type_id: 99,
            ..Default::default()
        };
        assert_eq!(odd.type_name(), "unknown");
        let negative = LegacyInfo {
            type_id: -1,
            ..Default::default()
        };
        assert_eq!(negative.type_name(), "unknown");
        assert_eq!(
            LegacyInfo {
                type_id: 12,
                ..Default::default()
            }
            .type_name(),
            "custom"
        );
    }

    #[test]
    fn shim_refuses_null_arguments_without_touching_them() {
        // The shim checks every argument for NULL before touching it (what is tested here).
        let (rc, _) = shim(|e| {
            // SAFETY: NULL plugin arguments are refused by the shim; `e` is a live sink.
            unsafe { keel_themis_shim_create(std::ptr::null_mut(), std::ptr::null_mut(), e) }
        });
        assert_eq!(rc, RC_BAD_ARGUMENT);
        let (rc, _) = shim(|e| {
            // SAFETY: as above.
            unsafe { keel_themis_shim_initialize(std::ptr::null_mut(), c"{}".as_ptr(), e) }
        });
        assert_eq!(rc, RC_BAD_ARGUMENT);
        let (rc, _) = shim(|e| {
            // SAFETY: as above.
            unsafe { keel_themis_shim_restore_state(std::ptr::null_mut(), std::ptr::null(), 0, e) }
        });
        assert_eq!(rc, RC_BAD_ARGUMENT);
        assert_eq!(
            describe(RC_BAD_ARGUMENT, String::new()),
            "the shim was called with a NULL argument"
        );
        assert_eq!(
            describe(RC_NULL, "createPlugin returned NULL".into()),
            "createPlugin returned NULL"
        );
        assert_eq!(describe(RC_FALSE, String::new()), "the plugin method returned false");
        assert_eq!(describe(42, String::new()), "the shim returned 42");
        assert_eq!(describe(RC_EXCEPTION, "x threw: y".into()), "x threw: y");
    }
}
