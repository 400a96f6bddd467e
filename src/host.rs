//! The host: registry + policy + runtimes + services + metrics + health. Load, reload and
//! unload are orchestrated here; calls go straight to a [`Slot`] and never touch the host.
//!
//! [`Host`] owns a [`HostCore`] behind an `Arc` (the health monitor's thread holds the other
//! reference, to restart plugins through [`HostCore::reload`]) and the monitor itself;
//! everything but the monitor is on [`HostCore`], reached through `Deref`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};

use crate::artifact;
use crate::capability::Capabilities;
use crate::deps;
use crate::error::{Error, Result};
use crate::health::{HealthConfig, HealthReport, Monitor};
use crate::manifest::{self, ManifestFile, RuntimeKind};
use crate::metrics::exposition::PluginCollector;
use crate::metrics::{MetricsSnapshot, DEFAULT_SAMPLE_EVERY};
use crate::registry::{Generation, Registry, Slot};
use crate::runtime::wasm::{WasmConfig, WasmRuntime};
use crate::runtime::{self, HostServices, Instance, LoadContext};
use crate::trust::TrustState;
use crate::watch::{WatchConfig, WatchControl, WatchEvent};
use crate::{bail, err};

/// Lifecycle events delivered to listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum LifecycleEvent {
    /// A plugin was loaded (first generation installed).
    Loaded = 0,
    /// A reload verified and initialised the new generation and is about to swap.
    BeforeSwap = 1,
    /// The new generation is current; the old one is draining.
    AfterSwap = 2,
    /// A reload failed; the old generation keeps serving.
    ReloadRolledBack = 3,
    /// A plugin was unloaded.
    Unloaded = 4,
}

/// A lifecycle listener: (plugin name, event, generation number).
pub type Listener = Arc<dyn Fn(&str, LifecycleEvent, u64) + Send + Sync>;

/// Host-wide settings.
#[derive(Clone, Debug)]
pub struct HostOptions {
    /// How long unload/reload wait for in-flight calls of the old generation.
    pub drain_timeout: Duration,
}

impl Default for HostOptions {
    fn default() -> Self {
        HostOptions {
            drain_timeout: Duration::from_secs(5),
        }
    }
}

/// Capabilities a node allows unless configured otherwise: the ones that reach nothing
/// outside the plugin's own namespace.
pub fn default_allowlist() -> Capabilities {
    Capabilities::parse(&["log", "clock", "random", "kv:read", "kv:write", "metrics:write"])
        .unwrap_or(Capabilities::NONE)
}

/// A Keel host: owns every loaded plugin and the health monitor. Dropping it stops the
/// monitor, then unloads every plugin.
pub struct Host {
    core: Arc<HostCore>,
    monitor: Mutex<Option<Monitor>>,
    /// The plugin-directory watcher (see [`crate::watch`]) and its outcome ring.
    watch: WatchControl,
}

impl std::ops::Deref for Host {
    type Target = HostCore;
    fn deref(&self) -> &HostCore {
        &self.core
    }
}

/// Everything a host is but its health monitor (see [`Host`]).
pub struct HostCore {
    registry: Arc<Registry>,
    /// Serialises load, reload and unload (never taken by calls or lookups).
    lifecycle: Mutex<()>,
    allowlist: RwLock<Capabilities>,
    services: HostServices,
    options: RwLock<HostOptions>,
    listeners: RwLock<Vec<Listener>>,
    /// Where each loaded plugin's manifest came from (for reload).
    sources: Mutex<std::collections::HashMap<String, PathBuf>>,
    /// Trust store and signature policy (lock-free reads on verification).
    trust: TrustState,
    /// The WASM runtime (engine settings, module cache, deadline watchdog), started on the
    /// first WASM load with `wasm_config`.
    wasm: std::sync::OnceLock<WasmRuntime>,
    wasm_config: Mutex<WasmConfig>,
    /// Latency sampling period given to every slot (see [`HostCore::set_latency_sampling`]).
    sample_every: AtomicU32,
    /// The Prometheus registry holding Keel's scrape-time collector.
    prometheus: prometheus_client::registry::Registry,
}

impl Default for Host {
    fn default() -> Self {
        Host::new()
    }
}

impl Host {
    pub fn new() -> Host {
        Host::with_services(HostServices::default())
    }

    pub fn with_services(services: HostServices) -> Host {
        let registry = Arc::new(Registry::default());
        let mut prometheus = prometheus_client::registry::Registry::default();
        prometheus.register_collector(Box::new(PluginCollector::new(registry.clone())));
        let core = HostCore {
            registry,
            lifecycle: Mutex::new(()),
            allowlist: RwLock::new(default_allowlist()),
            services,
            options: RwLock::new(HostOptions::default()),
            listeners: RwLock::new(Vec::new()),
            sources: Mutex::new(Default::default()),
            trust: TrustState::new(),
            wasm: std::sync::OnceLock::new(),
            wasm_config: Mutex::new(WasmConfig::default()),
            sample_every: AtomicU32::new(DEFAULT_SAMPLE_EVERY),
            prometheus,
        };
        Host {
            core: Arc::new(core),
            monitor: Mutex::new(None),
            watch: WatchControl::new(),
        }
    }

    /// Start the health monitor (see [`crate::health`]): every `config.interval` each
    /// plugin is checked on a worker thread, scored, and restarted through
    /// [`HostCore::reload`] after `unhealthy_threshold` unhealthy checks in a row. A monitor
    /// already running is stopped first and replaced; the plugins' records are kept.
    /// `KEEL_ERR_INVALID_ARGUMENT` for settings [`HealthConfig::validate`] refuses.
    pub fn start_health_monitor(&self, config: HealthConfig) -> Result<()> {
        config.validate()?;
        let mut m = self.monitor.lock();
        if let Some(old) = m.take() {
            old.stop();
        }
        *m = Some(Monitor::start(self.core.clone(), config)?);
        Ok(())
    }

    /// Stop the health monitor, if running, and wait for its thread (prompt: it never waits
    /// on a plugin). Returns whether one was running.
    pub fn stop_health_monitor(&self) -> bool {
        let old = self.monitor.lock().take();
        let was = old.is_some();
        if let Some(m) = old {
            m.stop();
        }
        was
    }

    /// Whether the health monitor runs.
    pub fn health_monitor_running(&self) -> bool {
        self.monitor.lock().is_some()
    }

    /// Watch a plugin directory and turn its changes into load, reload and unload (see
    /// [`crate::watch`]: recursive, debounced per plugin folder, acts only on settled files).
    /// `KEEL_ERR_BUSY` while a watcher already runs; `KEEL_ERR_INVALID_ARGUMENT` for settings
    /// [`WatchConfig::validate`] refuses; `dir` is checked as by [`HostCore::load_dir`].
    pub fn watch_dir(&self, dir: &Path, config: WatchConfig) -> Result<()> {
        self.watch.start(&self.core, dir, config)
    }

    /// Stop the directory watcher, if running, and wait for its thread. Returns whether one
    /// was running.
    pub fn stop_watching(&self) -> bool {
        self.watch.stop()
    }

    /// The directory being watched (canonical), if a watcher runs.
    pub fn watched_dir(&self) -> Option<PathBuf> {
        self.watch.dir()
    }

    /// The watcher's recent outcomes, oldest first (a bounded ring, kept after stopping).
    pub fn watch_events(&self) -> Vec<WatchEvent> {
        self.watch.events_after(0)
    }

    /// The watcher's outcomes with a sequence number above `seq`, oldest first.
    pub fn watch_events_after(&self, seq: u64) -> Vec<WatchEvent> {
        self.watch.events_after(seq)
    }
}

impl HostCore {
    /// Settings of the WASM runtime (limits' defaults and ceilings, pool size, metering,
    /// compiled-module cache). Only before the first WASM plugin is loaded.
    pub fn set_wasm_config(&self, config: WasmConfig) -> Result<()> {
        config.validate()?;
        let _lc = self.lifecycle.lock();
        if self.wasm.get().is_some() {
            bail!(
                KEEL_ERR_INVALID_ARGUMENT,
                "the WASM runtime is already running; configure it before loading WASM plugins"
            );
        }
        *self.wasm_config.lock() = config;
        Ok(())
    }

    /// The WASM runtime, once a WASM plugin has been loaded (cache statistics, live instances).
    pub fn wasm_runtime(&self) -> Option<&WasmRuntime> {
        self.wasm.get()
    }

    /// The WASM runtime, started on first use (load path, under the lifecycle lock).
    fn start_wasm(&self) -> Result<&WasmRuntime> {
        if let Some(rt) = self.wasm.get() {
            return Ok(rt);
        }
        let rt = WasmRuntime::new(self.wasm_config.lock().clone())?;
        Ok(self.wasm.get_or_init(|| rt))
    }

    pub fn options(&self) -> HostOptions {
        self.options.read().clone()
    }

    pub fn set_drain_timeout(&self, timeout: Duration) {
        self.options.write().drain_timeout = timeout;
    }

    /// Trust store and signature policy. The policy can be weakened
    /// (`set_require_signature(false)`) only before the first load; after that only strengthened.
    pub fn trust(&self) -> &TrustState {
        &self.trust
    }

    pub fn allowlist(&self) -> Capabilities {
        *self.allowlist.read()
    }

    /// Replace the node's capability allowlist. Plugins already loaded keep their frozen set.
    pub fn set_allowlist(&self, allow: Capabilities) {
        *self.allowlist.write() = allow;
    }

    pub fn add_listener(&self, l: Listener) {
        self.listeners.write().push(l);
    }

    fn notify(&self, plugin: &str, ev: LifecycleEvent, generation: u64) {
        let ls: Vec<Listener> = self.listeners.read().clone();
        for l in ls {
            // A listener that panics must not break the lifecycle operation.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| l(plugin, ev, generation)));
        }
    }

    /// A loaded plugin's slot.
    pub fn get(&self, name: &str) -> Result<Arc<Slot>> {
        self.registry
            .get(name)
            .ok_or_else(|| err!(KEEL_ERR_PLUGIN_NOT_FOUND, "no plugin named '{name}' is loaded"))
    }

    pub fn plugin_names(&self) -> Vec<String> {
        self.registry.names()
    }

    /// The manifest path a loaded plugin was loaded from (what reload reads again).
    pub fn manifest_path(&self, name: &str) -> Option<PathBuf> {
        self.sources.lock().get(name).cloned()
    }

    /// Every loaded plugin's name and manifest path.
    pub fn manifest_paths(&self) -> Vec<(String, PathBuf)> {
        self.sources
            .lock()
            .iter()
            .map(|(n, p)| (n.clone(), p.clone()))
            .collect()
    }

    /// Load one plugin from its manifest.
    pub fn load(&self, manifest_path: &Path) -> Result<Arc<Slot>> {
        let mut v = self.load_set(&[manifest_path.to_path_buf()])?;
        v.pop().ok_or_else(|| Error::internal("load_set returned nothing"))
    }

    /// Load several plugins all-or-nothing: every manifest is read and checked first; then
    /// plugins are initialised in dependency order; if any fails, those already loaded by
    /// this call are unloaded again in reverse order and the registry is as before.
    pub fn load_set(&self, manifest_paths: &[PathBuf]) -> Result<Vec<Arc<Slot>>> {
        let files = manifest_paths
            .iter()
            .map(|p| manifest::read_file(p))
            .collect::<Result<Vec<_>>>()?;
        self.load_manifests(files)
    }

    /// [`Host::load_set`] for manifests already read.
    pub fn load_manifests(&self, files: Vec<ManifestFile>) -> Result<Vec<Arc<Slot>>> {
        let _lc = self.lifecycle.lock();
        // The host has started: from now on the signature policy can only be strengthened.
        self.trust.mark_started();
        for f in &files {
            if self.registry.get(&f.manifest.name).is_some() {
                bail!(
                    KEEL_ERR_ALREADY_LOADED,
                    "a plugin named '{}' is already loaded",
                    f.manifest.name
                );
            }
            self.check_before_load(f)?;
        }
        let order = self.plan(&files)?;
        let mut loaded: Vec<Arc<Slot>> = Vec::with_capacity(files.len());
        for i in order {
            let f = &files[i];
            let started = Instant::now();
            match self.build_generation(f, 1, None) {
                Ok(gen) => {
                    let slot = Arc::new(Slot::new(f.manifest.name.clone()));
                    slot.metrics.set_sample_every(self.sample_every.load(Ordering::Relaxed));
                    slot.metrics.loads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    slot.metrics.last_load_nanos.store(
                        started.elapsed().as_nanos() as u64,
                        std::sync::atomic::Ordering::Relaxed,
                    );
                    slot.install(gen);
                    self.registry.insert(slot.clone());
                    self.sources.lock().insert(f.manifest.name.clone(), f.path.clone());
                    loaded.push(slot);
                }
                Err(e) => {
                    for s in loaded.iter().rev() {
                        self.registry.remove(s.name());
                        self.sources.lock().remove(s.name());
                        if let Some(g) = s.take() {
                            let _ = s.drain(g, self.options().drain_timeout);
                        }
                    }
                    return Err(e.context(format!(
                        "loading '{}' failed; nothing from this set was loaded",
                        f.manifest.name
                    )));
                }
            }
        }
        for s in &loaded {
            self.notify(s.name(), LifecycleEvent::Loaded, 1);
        }
        // Return in the caller's order.
        let mut out = Vec::with_capacity(files.len());
        for f in &files {
            if let Some(s) = loaded.iter().find(|s| s.name() == f.manifest.name) {
                out.push(s.clone());
            }
        }
        Ok(out)
    }

    /// Checks that need no plugin code: trust and capabilities.
    fn check_before_load(&self, f: &ManifestFile) -> Result<()> {
        self.trust.verify_manifest(&f.path, &f.bytes, &f.manifest.name)?;
        let requested = Capabilities::parse(&f.manifest.capabilities)
            .map_err(|e| e.context(format!("plugin '{}'", f.manifest.name)))?;
        Capabilities::check_allowed(requested, self.allowlist(), &f.manifest.name)?;
        Ok(())
    }

    /// The order in which to initialise `files`: dependencies first, ties by name; cycles,
    /// missing dependencies and version conflicts refused (see [`crate::deps::plan`]).
    fn plan(&self, files: &[ManifestFile]) -> Result<Vec<usize>> {
        let loaded = deps::versions(&self.loaded_graph());
        let candidates: Vec<deps::Candidate> = files
            .iter()
            .map(|f| deps::Candidate {
                name: f.manifest.name.clone(),
                version: f.manifest.version.clone(),
                dependencies: f.manifest.dependencies.clone(),
            })
            .collect();
        deps::plan(&candidates, &loaded)
    }

    /// The loaded plugins' versions and dependencies (the registry's dependency view).
    pub fn loaded_graph(&self) -> deps::LoadedGraph {
        self.registry
            .slots()
            .iter()
            .filter_map(|s| {
                s.current().map(|g| {
                    let node = deps::LoadedNode {
                        version: g.manifest.version.clone(),
                        dependencies: g.manifest.dependencies.clone(),
                    };
                    (s.name().to_string(), node)
                })
            })
            .collect()
    }

    /// Load every plugin of a plugin directory (one folder per plugin, `keel.json` or
    /// ThemisDB `plugin.json`; see [`crate::deps::discover`] for what is skipped) as one
    /// all-or-nothing set, in dependency order. A plugin that is already loaded makes the
    /// whole call fail with `KEEL_ERR_ALREADY_LOADED`: a rescan never replaces a loaded plugin
    /// (use reload for that).
    pub fn load_dir(&self, dir: &Path) -> Result<Vec<Arc<Slot>>> {
        let found = deps::discover::discover(dir)?;
        self.load_set(&found.manifests)
    }

    /// Verify the binary and start one generation of a plugin. Nothing of the plugin's code
    /// runs before the digest check.
    fn build_generation(&self, f: &ManifestFile, number: u64, restored: Option<&[u8]>) -> Result<Generation> {
        let m = &f.manifest;
        let dir = f.path.parent().unwrap_or_else(|| Path::new("."));
        let bin = m.binary_for_platform(dir)?;
        let granted = Capabilities::parse(&m.capabilities)?;
        Capabilities::check_allowed(granted, self.allowlist(), &m.name)?;
        let ctx = LoadContext {
            manifest: m,
            granted,
            services: self.services.clone(),
            restored_state: restored,
        };
        let what = format!("plugin '{}' ({})", m.name, bin.path.display());
        let instance: Box<dyn Instance> = match m.runtime {
            RuntimeKind::Native => {
                let art = artifact::read_sealed(&bin.path, &m.name)?;
                art.check_digest(&bin.sha256, &what)?;
                Box::new(runtime::native::load(art, &ctx)?)
            }
            RuntimeKind::Wasm => {
                let art = artifact::read_bytes(&bin.path)?;
                art.check_digest(&bin.sha256, &what)?;
                self.start_wasm()?.instantiate(&art, &ctx)?
            }
            RuntimeKind::Themis => {
                // ThemisDB C++ plugin: same sealed-memfd path as native, then the C++ shim.
                let art = artifact::read_sealed(&bin.path, &m.name)?;
                art.check_digest(&bin.sha256, &what)?;
                Box::new(runtime::legacy::load(art, &ctx)?)
            }
        };
        Ok(Generation::new(
            number,
            m.clone(),
            bin.sha256.clone(),
            granted,
            instance,
        ))
    }

    /// Hot reload: re-read and verify the manifest and binary, start the new generation with
    /// the old one's state, swap atomically while calls keep flowing, drain the old one. On
    /// any failure before the swap the old generation keeps serving, untouched.
    pub fn reload(&self, name: &str) -> Result<u64> {
        let _lc = self.lifecycle.lock();
        let slot = self.get(name)?;
        let _sl = slot.lifecycle.lock();
        let path = self
            .sources
            .lock()
            .get(name)
            .cloned()
            .ok_or_else(|| err!(KEEL_ERR_PLUGIN_NOT_FOUND, "plugin '{name}' has no manifest path"))?;
        let start = Instant::now();
        let result = (|| {
            let f = manifest::read_file(&path)?;
            if f.manifest.name != name {
                bail!(
                    KEEL_ERR_MANIFEST_INVALID,
                    "manifest now names plugin '{}', not '{name}'",
                    f.manifest.name
                );
            }
            self.check_before_load(&f)?;
            let replacement = deps::Candidate {
                name: f.manifest.name.clone(),
                version: f.manifest.version.clone(),
                dependencies: f.manifest.dependencies.clone(),
            };
            deps::check_replacement(&replacement, &self.loaded_graph())?;
            let old = slot
                .current()
                .ok_or_else(|| err!(KEEL_ERR_PLUGIN_UNLOADED, "plugin '{name}' is not loaded"))?;
            // The granted set is frozen at load: a reload may keep or narrow it, never widen it.
            let requested = Capabilities::parse(&f.manifest.capabilities)?;
            if !old.granted.contains(requested) {
                let extra = Capabilities::from_bits(requested.bits() & !old.granted.bits())?;
                bail!(
                    KEEL_ERR_CAPABILITY_DENIED,
                    "the new manifest asks for {:?} beyond the capabilities frozen at load ({:?}); unload and load the plugin to grant more",
                    extra,
                    old.granted
                );
            }
            let state = old.instance.save_state()?;
            drop(old);
            self.build_generation(&f, slot.next_generation_number(), state.as_deref())
        })();
        let gen = match result {
            Ok(g) => g,
            Err(e) => {
                slot.metrics
                    .reload_failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.notify(name, LifecycleEvent::ReloadRolledBack, slot.next_generation_number());
                return Err(e.context(format!(
                    "reload of '{name}' rolled back; the old generation keeps serving"
                )));
            }
        };
        let number = gen.number;
        self.notify(name, LifecycleEvent::BeforeSwap, number);
        let old = slot.install(gen);
        slot.metrics.reloads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        slot.metrics
            .last_load_nanos
            .store(start.elapsed().as_nanos() as u64, std::sync::atomic::Ordering::Relaxed);
        self.notify(name, LifecycleEvent::AfterSwap, number);
        if let Some(old) = old {
            if let Err(e) = slot.drain(old, self.options().drain_timeout) {
                slot.metrics
                    .drain_timeouts
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Err(e);
            }
        }
        Ok(number)
    }

    /// Unload a plugin: later calls through existing handles fail with
    /// KEEL_ERR_PLUGIN_UNLOADED; in-flight calls finish; the plugin is shut down and its code
    /// unmapped after the last one (waiting at most the drain timeout; on timeout the error
    /// says so and Keel's reclaimer thread releases it after the last call returns).
    ///
    /// Refused with `KEEL_ERR_HAS_DEPENDENTS`, listing them, while other loaded plugins
    /// depend on it; [`Host::unload_cascade`] unloads those too.
    pub fn unload(&self, name: &str) -> Result<()> {
        let _lc = self.lifecycle.lock();
        self.get(name)?;
        deps::check_unload(name, &self.loaded_graph())?;
        self.unload_locked(name)
    }

    /// Unload a plugin and everything that depends on it, directly or transitively:
    /// dependents first (reverse dependency order, ties by name), `name` last. Returns the
    /// names in the order they were unloaded. A drain timeout of one plugin does not stop the
    /// cascade (that plugin is already out of the registry); the first error is returned
    /// after every plugin of the cascade has been unloaded.
    pub fn unload_cascade(&self, name: &str) -> Result<Vec<String>> {
        let _lc = self.lifecycle.lock();
        self.get(name)?;
        let order = deps::cascade_unload_order(name, &self.loaded_graph());
        let mut first = None;
        for n in &order {
            if let Err(e) = self.unload_locked(n) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(order), Err)
    }

    /// Unload one plugin; the caller holds the lifecycle lock and has checked dependents.
    fn unload_locked(&self, name: &str) -> Result<()> {
        let slot = self.get(name)?;
        let _sl = slot.lifecycle.lock();
        self.registry.remove(name);
        self.sources.lock().remove(name);
        let old = slot.take();
        self.notify(
            name,
            LifecycleEvent::Unloaded,
            old.as_ref().map(|g| g.number).unwrap_or(0),
        );
        if let Some(old) = old {
            if let Err(e) = slot.drain(old, self.options().drain_timeout) {
                slot.metrics
                    .drain_timeouts
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Unload everything, dependents before their dependencies (ties by name), collecting
    /// the first error.
    pub fn unload_all(&self) -> Result<()> {
        let _lc = self.lifecycle.lock();
        let mut first = None;
        for name in deps::unload_all_order(&self.loaded_graph()) {
            if let Err(e) = self.unload_locked(&name) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Metrics of every loaded plugin.
    pub fn metrics(&self) -> Vec<(String, String, MetricsSnapshot)> {
        self.registry
            .slots()
            .iter()
            .map(|s| {
                let v = s.current().map(|g| g.manifest.version.to_string()).unwrap_or_default();
                (s.name().to_string(), v, s.metrics.snapshot())
            })
            .collect()
    }

    /// OpenMetrics text exposition (`prometheus-client`; serve it as
    /// [`crate::metrics::exposition::CONTENT_TYPE`]) of every loaded plugin's counters,
    /// sampled latency histogram and health score, read at this moment; ends with `# EOF`.
    /// Families are listed in [`crate::metrics::exposition`].
    pub fn metrics_text(&self) -> String {
        let mut s = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.prometheus);
        s
    }

    /// A collector of this host's plugin metrics, for an embedder's own
    /// `prometheus_client::registry::Registry` (`register_collector`).
    pub fn metrics_collector(&self) -> PluginCollector {
        PluginCollector::new(self.registry.clone())
    }

    /// Time one call in `every` per thread and plugin (rounded up to a power of two; 0 turns
    /// latency sampling off, 1 times every call). Applies to loaded plugins at once and to
    /// later loads. Default [`DEFAULT_SAMPLE_EVERY`].
    pub fn set_latency_sampling(&self, every: u32) {
        let _lc = self.lifecycle.lock();
        self.sample_every.store(every, Ordering::Relaxed);
        for s in self.registry.slots() {
            s.metrics.set_sample_every(every);
        }
    }

    /// A loaded plugin's health as the monitor last saw it (status `Unknown` and score 1.0
    /// before its first check). `KEEL_ERR_PLUGIN_NOT_FOUND` if no such plugin is loaded.
    pub fn health(&self, name: &str) -> Result<HealthReport> {
        Ok(self.get(name)?.health.report())
    }

    /// The loaded plugins' slots, sorted by name (lock-free snapshot).
    pub(crate) fn slots(&self) -> Vec<Arc<Slot>> {
        self.registry.slots()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // The watcher and the monitor first, so that no load or restart starts while the
        // plugins are unloaded.
        self.stop_watching();
        self.stop_health_monitor();
        let _ = self.core.unload_all();
    }
}
