//! Runtimes turn a verified artifact into a running [`Instance`].
//!
//! Every runtime implements the same trait, so the registry, the call path and the
//! lifecycle code never know which one they are driving. [`Runtimes::instantiate`] is the one
//! place that picks the runtime for a manifest's [`RuntimeKind`].

pub mod isolated;
pub mod legacy;
pub mod native;
pub mod output;
pub mod shared_lib;
pub mod wasm;

use std::sync::OnceLock;

use parking_lot::Mutex;

use crate::artifact::Artifact;
use crate::capability::Capabilities;
use crate::error::Result;
/// Health as a plugin reports it: the crate's one health enum (a plugin answers `Healthy`,
/// `Degraded`, `Unhealthy`, or `Unknown` without a hook; `Failed` is the monitor's verdict).
pub use crate::health_state::Health;
use crate::manifest::{Manifest, RuntimeKind};
/// What the server lends plugins (moved to [`crate::services`]; re-exported for the runtimes).
pub use crate::services::{HostServices, KvStore, KvTarget, LogLevel, LogSink, MemoryKv, SinkError, SinkResult};
use wasm::{WasmConfig, WasmRuntime};

/// One loaded, initialised plugin generation's code and state.
///
/// `call` may be invoked from many threads at once; an implementation that cannot run calls
/// concurrently serialises them itself (its own lock, never a global one).
pub trait Instance: Send + Sync {
    /// The functions this instance exports; a function's index in this list is the
    /// `function` argument of [`Instance::call`].
    fn functions(&self) -> &[String];

    /// Run function number `function` on `input`, appending its result to `output`
    /// (which the caller has cleared). On error, `output`'s content is unspecified.
    fn call(&self, function: u32, input: &[u8], output: &mut Vec<u8>) -> Result<()>;

    /// [`Instance::call`] for a call made with options. The caller has already made `opts`
    /// this thread's current call context ([`crate::services::call::with_options`]), so
    /// everything the call reaches can read it; a runtime overrides this to enforce what it
    /// can (WASM: per-call fuel and deadline, interrupt on cancel). The default runs the
    /// plain call: native code sees the context through its `cancelled()` entry.
    fn call_with(
        &self,
        function: u32,
        input: &[u8],
        output: &mut Vec<u8>,
        _opts: &crate::services::call::CallOptions<'_>,
    ) -> Result<()> {
        self.call(function, input, output)
    }

    /// The most wall-clock time a call may be given (WASM: the plugin's deadline after the
    /// node's ceiling); a per-call deadline is capped at it. `None`: no cap (native code has
    /// no deadline of its own).
    fn deadline_cap(&self) -> Option<std::time::Duration> {
        None
    }

    /// Whether the plugin has a state hook: its reloads then hold calls from saving the
    /// state until the new generation is published, so no update is lost in between.
    fn has_state(&self) -> bool {
        false
    }

    /// The plugin's state, if it has a save hook (`Ok(None)` when it has none).
    fn save_state(&self) -> Result<Option<Vec<u8>>> {
        Ok(None)
    }

    /// Hand a previously saved state to the plugin. Runtimes without a restore hook fail
    /// with `KEEL_ERR_UNSUPPORTED`.
    fn restore_state(&self, _state: &[u8]) -> Result<()> {
        crate::bail!(KEEL_ERR_UNSUPPORTED, "this plugin has no restore_state hook")
    }

    /// Ask the plugin how it is.
    fn health(&self) -> Health {
        Health::Unknown
    }

    /// Let the plugin repair itself before the health monitor restarts it (`None`: the
    /// plugin has no such interface; ThemisDB's `ISelfHealingPlugin` has one). Called by the
    /// monitor's restart thread, concurrently with calls.
    fn self_repair(&self) -> Option<SelfRepair> {
        None
    }

    /// Bytes of memory the runtime can attribute to this instance (WASM: linear memory),
    /// if it knows; published as `plugin_memory_bytes`. `None` means unknown, not zero.
    fn memory_bytes(&self) -> Option<u64> {
        None
    }

    /// The sandbox counters of an isolated native plugin (`None`: not isolated), published as
    /// `keel_plugin_isolated` and the `keel_plugin_sandbox_*` families.
    fn sandbox(&self) -> Option<crate::metrics::SandboxSnapshot> {
        None
    }

    /// The concrete instance, for runtime-specific accessors (e.g. the ThemisDB object behind
    /// a legacy plugin: [`legacy::LegacyInstance`]). `None` unless a runtime opts in.
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        None
    }
}

/// What a plugin's self-repair did (see [`Instance::self_repair`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelfRepair {
    /// A health check after a repair step found the plugin healthy or degraded.
    pub recovered: bool,
    /// The steps taken, for the health report and the log.
    pub steps: String,
}

/// Everything a runtime needs to instantiate one plugin generation.
pub struct LoadContext<'a> {
    pub manifest: &'a Manifest,
    /// The frozen, granted capability set (requested ∩ allowed, checked before this point).
    pub granted: Capabilities,
    pub services: HostServices,
    /// State saved from the previous generation on reload, handed to init where the ABI
    /// supports it (ThemisDB plugins get it as `{"restored_state": ...}`).
    pub restored_state: Option<&'a [u8]>,
    /// The version (manifest `version`) of the plugin generation that saved
    /// `restored_state`, so that a new version can migrate it. Handed over where the ABI has
    /// a channel: ThemisDB plugins get it in their config as `restored_state_version`, native
    /// plugins through `restore_state_versioned`, WASM plugins through
    /// `keel_restore_state_versioned`.
    pub restored_state_version: Option<&'a str>,
    /// The number this generation gets (1 on load, +1 per reload): what the plugin's RPC
    /// registrations are tagged with (see [`crate::services::rpc`]).
    pub generation: u64,
    /// The lower-case hex id of the trusted key whose Ed25519 signature on the manifest was
    /// verified for this load (`None`: unsigned or hash-only). What the host's per-key
    /// isolation policy ([`Runtimes::require_isolation_for_key`]) is decided on.
    pub signer_key_id: Option<&'a str>,
}

/// The runtimes a host drives. Native and ThemisDB plugins need no shared state; the WASM
/// runtime (engine settings, module cache, deadline watchdog) is started on the first WASM
/// load with the configuration set until then.
#[derive(Default)]
pub struct Runtimes {
    wasm: OnceLock<WasmRuntime>,
    /// Held while the WASM runtime starts, so a configuration change and a first WASM load
    /// never cross (the change is either used or refused, never lost).
    wasm_config: Mutex<WasmConfig>,
    /// Process isolation of native plugins (docs/isolation.md).
    isolation: Mutex<isolated::IsolationConfig>,
}

impl Runtimes {
    /// Settings of the WASM runtime. Only before it has started (the first WASM load):
    /// `KEEL_ERR_INVALID_ARGUMENT` after that, or for settings [`WasmConfig::validate`]
    /// refuses.
    pub fn set_wasm_config(&self, config: WasmConfig) -> Result<()> {
        config.validate()?;
        let mut current = self.wasm_config.lock();
        if self.wasm.get().is_some() {
            crate::bail!(
                KEEL_ERR_INVALID_ARGUMENT,
                "the WASM runtime is already running; configure it before loading WASM plugins"
            );
        }
        *current = config;
        Ok(())
    }

    /// Change the settings of the WASM runtime in place (e.g. only its memory mode), under
    /// the same rules as [`Runtimes::set_wasm_config`]: only before the runtime has started,
    /// and the result must validate (nothing changes otherwise).
    pub fn update_wasm_config(&self, f: impl FnOnce(&mut WasmConfig)) -> Result<()> {
        let mut current = self.wasm_config.lock();
        let mut next = current.clone();
        f(&mut next);
        next.validate()?;
        if self.wasm.get().is_some() {
            crate::bail!(
                KEEL_ERR_INVALID_ARGUMENT,
                "the WASM runtime is already running; configure it before loading WASM plugins"
            );
        }
        *current = next;
        Ok(())
    }

    /// The WASM settings: those of the running runtime, or those it will start with.
    pub fn wasm_config(&self) -> WasmConfig {
        match self.wasm.get() {
            Some(rt) => rt.config().clone(),
            None => self.wasm_config.lock().clone(),
        }
    }

    /// The isolation settings of native plugins.
    pub fn isolation(&self) -> isolated::IsolationConfig {
        self.isolation.lock().clone()
    }

    /// Require (or stop requiring) process isolation for every native plugin, and/or name the
    /// sandbox launcher. Turning the requirement off once `started` fails with
    /// `KEEL_ERR_POLICY_DOWNGRADE` (nothing changes).
    pub fn set_native_isolation(
        &self,
        required: bool,
        launcher: Option<std::path::PathBuf>,
        started: bool,
    ) -> Result<()> {
        let mut c = self.isolation.lock();
        if c.required && !required && started {
            crate::bail!(
                KEEL_ERR_POLICY_DOWNGRADE,
                "native plugin isolation is required and the host has started: it can no longer be turned off"
            );
        }
        c.required = required;
        if launcher.is_some() {
            c.launcher = launcher;
        }
        Ok(())
    }

    /// Require process isolation for the native plugins whose name matches the glob
    /// `pattern` (added to the set; patterns are never removed, so this only strengthens).
    pub fn require_isolation_for(&self, pattern: &str) -> Result<()> {
        let p = glob::Pattern::new(pattern)
            .map_err(|e| crate::err!(KEEL_ERR_INVALID_ARGUMENT, "isolation pattern '{pattern}': {e}"))?;
        let mut c = self.isolation.lock();
        if !c.patterns.contains(&p) {
            c.patterns.push(p);
        }
        Ok(())
    }

    /// Require process isolation for the native plugins whose manifest is signed by the trusted
    /// key `key_id` (64 hex digits, the id `keel trust` and the trust store show; any case).
    /// Added to the set; keys are never removed, so this only strengthens.
    pub fn require_isolation_for_key(&self, key_id: &str) -> Result<()> {
        let id = key_id.to_ascii_lowercase();
        if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            crate::bail!(
                KEEL_ERR_INVALID_ARGUMENT,
                "isolation key id '{key_id}': expected 64 hex digits (the SHA-256 of the Ed25519 public key)"
            );
        }
        let mut c = self.isolation.lock();
        if !c.keys.contains(&id) {
            c.keys.push(id);
        }
        Ok(())
    }

    /// `RLIMIT_CPU` (seconds over a sandbox's life; 0: none) of sandboxes started from now on.
    pub fn set_sandbox_cpu_seconds(&self, seconds: u64) {
        self.isolation.lock().cpu_seconds = seconds;
    }

    /// The CPU limit (percent of one CPU, through the sandbox's cgroup where one can be made;
    /// 0: none) of sandboxes started from now on.
    pub fn set_sandbox_cpu_percent(&self, percent: u32) {
        self.isolation.lock().cpu_percent = percent;
    }

    /// The WASM runtime, once a WASM plugin has been loaded.
    pub fn wasm(&self) -> Option<&WasmRuntime> {
        self.wasm.get()
    }

    /// The WASM runtime, started on first use.
    fn wasm_started(&self) -> Result<&WasmRuntime> {
        if let Some(rt) = self.wasm.get() {
            return Ok(rt);
        }
        let config = self.wasm_config.lock();
        if let Some(rt) = self.wasm.get() {
            return Ok(rt);
        }
        let rt = WasmRuntime::new(config.clone())?;
        Ok(self.wasm.get_or_init(|| rt))
    }

    /// Start one generation of a plugin from its verified binary with the runtime its
    /// manifest names: the single dispatch from [`RuntimeKind`] to a loader.
    pub fn instantiate(&self, artifact: Artifact, ctx: &LoadContext<'_>) -> Result<Box<dyn Instance>> {
        // Isolation is the manifest's request or the host's requirement: never downgraded.
        let asked = ctx.manifest.isolation == Some(crate::manifest::Isolation::Process);
        let isolation = (asked || ctx.manifest.runtime != RuntimeKind::Wasm)
            .then(|| self.isolation())
            .filter(|c| asked || c.requires(&ctx.manifest.name, ctx.signer_key_id));
        Ok(match ctx.manifest.runtime {
            RuntimeKind::Native => match isolation {
                Some(config) => Box::new(isolated::load(artifact, ctx, &config)?),
                None => Box::new(native::load(artifact, ctx)?),
            },
            RuntimeKind::Themis if isolation.is_some() => crate::bail!(
                KEEL_ERR_ISOLATION_UNSUPPORTED,
                "plugin '{}': ThemisDB C++ plugins cannot run isolated yet, and {}",
                ctx.manifest.name,
                if asked {
                    "its manifest asks for \"isolation\": \"process\""
                } else {
                    "the host requires isolation for native plugins"
                }
            ),
            // ThemisDB C++ plugin: the same sealed library as native, behind the C++ shim.
            RuntimeKind::Themis => Box::new(legacy::load(artifact, ctx)?),
            RuntimeKind::Wasm => self.wasm_started()?.instantiate(&artifact, ctx)?,
        })
    }
}
