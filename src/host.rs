//! The host: composes the parts of Keel into one object. It owns no lifecycle logic itself.
//!
//! ```text
//! Host ─┬─ lifecycle   load sets, reload, unload, cascades, listeners  (crate::lifecycle)
//!       ├─ trust       trust store and signature policy               (crate::trust)
//!       ├─ runtimes    native, legacy and the WASM runtime             (crate::runtime)
//!       ├─ metrics     the Prometheus registry with Keel's collector   (crate::metrics)
//!       ├─ monitor     the health monitor, if started                  (crate::health)
//!       └─ watch       the directory watcher, if started               (crate::watch)
//! ```
//!
//! The lifecycle shares the trust state and the runtimes (its load pipeline uses them); the
//! monitor and the watcher get a [`crate::lifecycle`] handle, never the host. Calls go
//! straight to a [`Slot`] and touch none of this.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::capability::Capabilities;
use crate::deps;
use crate::err;
use crate::error::{Error, Result};
use crate::health::{HealthConfig, HealthReport, Monitor};
use crate::lifecycle::{Handle, Lifecycle};
use crate::manifest::ManifestFile;
use crate::metrics::exposition::{self, CustomCollector, ExpositionOptions, PluginCollector, PluginSource};
use crate::metrics::MetricsSnapshot;
use crate::registry::Slot;
use crate::runtime::wasm::{MemoryMode, WasmConfig, WasmRuntime};
use crate::runtime::{HostServices, Runtimes};
use crate::services::hostfn::{CallContext, HostFunctions, HostOutput};
use crate::services::rpc::EndpointInfo;
use crate::trust::TrustState;
use crate::watch::{WatchConfig, WatchControl, WatchEvent};

pub use crate::lifecycle::pipeline::check_capabilities;
pub use crate::lifecycle::{default_allowlist, DirPlan, HostOptions, LifecycleEvent, Listener, PluginCheck};

/// A plugin loaded from an OCI registry ([`Host::load_oci`]).
#[derive(Clone)]
pub struct OciLoad {
    pub slot: Arc<Slot>,
    /// The digest the reference resolved to, the cached folder, and whether it was a cache hit.
    pub pulled: crate::fleet::Pulled,
}

impl std::fmt::Debug for OciLoad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OciLoad")
            .field("plugin", &self.slot.name())
            .field("pulled", &self.pulled)
            .finish()
    }
}

/// A Keel host: owns every loaded plugin, the health monitor and the directory watcher.
/// Dropping it stops the watcher and the monitor, then unloads every plugin.
pub struct Host {
    lifecycle: Arc<Lifecycle>,
    /// Trust store and signature policy (lock-free reads on verification); shared with the
    /// lifecycle's load pipeline.
    trust: Arc<TrustState>,
    /// The runtimes (the WASM one started on the first WASM load); shared with the lifecycle.
    runtimes: Arc<Runtimes>,
    /// The Prometheus registry holding the scrape-time collector of the plugin-defined
    /// families (the plugin families are rendered directly, see [`Host::metrics_text`]).
    prometheus: prometheus_client::registry::Registry,
    monitor: Mutex<Option<Monitor>>,
    /// The plugin-directory watcher (see [`crate::watch`]) and its outcome ring.
    watch: WatchControl,
    /// The sinks lent to plugins (shared with the load pipeline and every loaded plugin).
    services: HostServices,
    /// The embedder's host functions (the same registry the load pipeline's services hold).
    host_fns: Arc<HostFunctions>,
    /// The trust-store follower, if one runs ([`Host::follow_trust_store`]), and its metrics.
    trust_follow: Mutex<Option<crate::fleet::TrustFollower>>,
    follow_metrics: crate::fleet::FollowMetrics,
    /// Holds on the OCI cache folders loaded plugins came from (plugin name, manifest path,
    /// hold): [`Host::prune_oci_cache`] in any process leaves them alone. A hold whose plugin
    /// is no longer loaded from that path is dropped at the next `load_oci` or prune.
    oci_holds: Mutex<Vec<(String, PathBuf, crate::fleet::CacheHold)>>,
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

    /// A host lending `services` to its plugins. The first host of a process raises the
    /// soft open-file limit to the hard one ([`crate::fsio::raise_nofile_limit_once`]: each
    /// native plugin holds a descriptor) and logs that through `services`' log sink.
    pub fn with_services(services: HostServices) -> Host {
        match crate::fsio::raise_nofile_limit_once() {
            Some(Ok(msg)) => services.log("keel", crate::services::LogLevel::Info, &msg),
            Some(Err(msg)) => services.log("keel", crate::services::LogLevel::Warn, &msg),
            None => {}
        }
        let host_fns = services.host_fns.clone();
        let trust = Arc::new(TrustState::new());
        let runtimes = Arc::new(Runtimes::default());
        let custom = services.metrics.clone();
        let lifecycle = Arc::new(Lifecycle::new(trust.clone(), runtimes.clone(), services.clone()));
        let mut prometheus = prometheus_client::registry::Registry::default();
        prometheus.register_collector(Box::new(CustomCollector(custom)));
        let follow_metrics = crate::fleet::FollowMetrics::default();
        prometheus.register_collector(Box::new(follow_metrics.clone()));
        Host {
            lifecycle,
            trust,
            runtimes,
            prometheus,
            monitor: Mutex::new(None),
            watch: WatchControl::new(),
            services,
            host_fns,
            trust_follow: Mutex::new(None),
            oci_holds: Mutex::new(Vec::new()),
            follow_metrics,
        }
    }

    // --- sinks --------------------------------------------------------------------------

    /// The services lent to plugins (log sink, storage sink).
    pub fn services(&self) -> &HostServices {
        &self.services
    }

    /// Replace the log sink at any time (`None`: back to stderr). Plugins already loaded use
    /// the new sink from their next log line; a replaced sink is released once no plugin is
    /// inside it (see [`crate::services::sinks`]).
    pub fn set_log_sink(&self, sink: Option<crate::services::LogSink>) {
        self.services.set_log_sink(sink);
    }

    /// Replace the storage sink behind `kv:*` and `storage:*` at any time (`None`: back to the
    /// default in-memory map, which knows no tables). Same rules as [`Host::set_log_sink`].
    pub fn set_kv_store(&self, store: Option<Arc<dyn crate::services::KvStore>>) {
        self.services.set_kv_store(store);
    }

    // --- host functions -----------------------------------------------------------------

    /// Define (or replace) a host function `namespace.name` that plugins granted
    /// `capability` may call (native: `host_fn_lookup`/`host_fn_call` of the host-API table;
    /// WASM: import `name` from module `namespace`). `f` writes its output to the sink and
    /// returns `Err(message)` to fail the plugin's call with that message; a panic in `f` is
    /// caught and fails the plugin's call too. Plugins bind at load: a definition made now
    /// reaches plugins loaded or reloaded from now on. `KEEL_ERR_INVALID_ARGUMENT` for a bad
    /// name or the reserved namespace "keel"; `KEEL_ERR_CAPABILITY_UNKNOWN`. Thread-safe.
    pub fn define_host_fn<F>(&self, namespace: &str, name: &str, capability: &str, f: F) -> Result<()>
    where
        F: Fn(&CallContext<'_>, &[u8], &HostOutput) -> std::result::Result<(), String> + Send + Sync + 'static,
    {
        self.host_fns.define_fn(namespace, name, capability, f)
    }

    /// Remove a host function. Loaded plugins bound to it keep calling it until they are
    /// reloaded or unloaded; its destructor runs when the last of them lets go.
    /// `KEEL_ERR_HOST_FN_NOT_FOUND` if none is defined under that name.
    pub fn remove_host_fn(&self, namespace: &str, name: &str) -> Result<()> {
        self.host_fns.remove(namespace, name)
    }

    /// The host function registry (for the C ABI's definitions with a C callback).
    pub fn host_functions(&self) -> &Arc<HostFunctions> {
        &self.host_fns
    }

    // --- health monitor -----------------------------------------------------------------

    /// Start the health monitor (see [`crate::health`]): every `config.interval` each
    /// plugin is checked on a worker thread, scored, and restarted through
    /// [`Host::reload`] after `unhealthy_threshold` unhealthy checks in a row. A monitor
    /// already running is stopped first and replaced; the plugins' records are kept.
    /// `KEEL_ERR_INVALID_ARGUMENT` for settings [`HealthConfig::validate`] refuses.
    pub fn start_health_monitor(&self, config: HealthConfig) -> Result<()> {
        config.validate()?;
        let mut m = self.monitor.lock();
        if let Some(old) = m.take() {
            old.stop();
        }
        *m = Some(Monitor::start(Handle::new(self.lifecycle.clone()), config)?);
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

    /// A loaded plugin's health as the monitor last saw it (status `Unknown` and score 1.0
    /// before its first check). `KEEL_ERR_PLUGIN_NOT_FOUND` if no such plugin is loaded.
    pub fn health(&self, name: &str) -> Result<HealthReport> {
        Ok(self.get(name)?.health.report())
    }

    // --- directory watcher --------------------------------------------------------------

    /// Watch a plugin directory and turn its changes into load, reload and unload (see
    /// [`crate::watch`]: recursive, debounced per plugin folder, acts only on settled files).
    /// `KEEL_ERR_BUSY` while a watcher already runs; `KEEL_ERR_INVALID_ARGUMENT` for settings
    /// [`WatchConfig::validate`] refuses; `dir` is checked as by [`Host::load_dir`].
    pub fn watch_dir(&self, dir: &Path, config: WatchConfig) -> Result<()> {
        self.watch.start(Handle::new(self.lifecycle.clone()), dir, config)
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

    // --- runtimes, trust, settings ------------------------------------------------------

    /// Settings of the WASM runtime (limits' defaults and ceilings, pool size, metering,
    /// compiled-module cache). Only before the first WASM plugin is loaded.
    pub fn set_wasm_config(&self, config: WasmConfig) -> Result<()> {
        self.runtimes.set_wasm_config(config)
    }

    /// Change the WASM settings in place (same rules as [`Host::set_wasm_config`]).
    pub fn update_wasm_config(&self, f: impl FnOnce(&mut WasmConfig)) -> Result<()> {
        self.runtimes.update_wasm_config(f)
    }

    /// How WASM instance memories use the address space ([`MemoryMode`]; default
    /// [`MemoryMode::Capped`]). Only before the first WASM plugin is loaded
    /// (`KEEL_ERR_INVALID_ARGUMENT` after that).
    pub fn set_wasm_memory_mode(&self, mode: MemoryMode) -> Result<()> {
        self.runtimes.update_wasm_config(|c| c.memory = mode)
    }

    /// The WASM settings in force (or that the runtime will start with).
    pub fn wasm_config(&self) -> WasmConfig {
        self.runtimes.wasm_config()
    }

    /// The WASM runtime, once a WASM plugin has been loaded (cache statistics, live instances).
    pub fn wasm_runtime(&self) -> Option<&WasmRuntime> {
        self.runtimes.wasm()
    }

    /// Require process isolation (docs/isolation.md) for every native plugin loaded from now
    /// on (`required`), whatever its manifest says, and/or name the sandbox launcher
    /// (`launcher`; `None` keeps the one set before, else the default search). A manifest's
    /// `"isolation": "process"` isolates its plugin even when not required. Turning the
    /// requirement off after the first load fails with `KEEL_ERR_POLICY_DOWNGRADE`.
    pub fn set_native_isolation(&self, required: bool, launcher: Option<std::path::PathBuf>) -> Result<()> {
        self.runtimes
            .set_native_isolation(required, launcher, self.trust.is_started())
    }

    /// Require process isolation for the native plugins loaded from now on whose name matches
    /// the glob `pattern` (e.g. `"untrusted-*"`); patterns add up and are never removed.
    /// `KEEL_ERR_INVALID_ARGUMENT` for a pattern that does not parse.
    pub fn require_isolation_for(&self, pattern: &str) -> Result<()> {
        self.runtimes.require_isolation_for(pattern)
    }

    /// Require process isolation for the native plugins loaded from now on whose manifest is
    /// signed by the trusted key `key_id` (64 hex digits, any case).
    /// Keys add up and are never removed. Unsigned plugins are not affected by it.
    pub fn require_isolation_for_key(&self, key_id: &str) -> Result<()> {
        self.runtimes.require_isolation_for_key(key_id)
    }

    /// The isolation settings of native plugins.
    pub fn native_isolation(&self) -> crate::runtime::isolated::IsolationConfig {
        self.runtimes.isolation()
    }

    /// `RLIMIT_CPU` of sandboxes started from now on (CPU seconds over a sandbox's life, 0:
    /// none); past it the sandbox dies with `SIGXCPU` (`KEEL_ERR_CPU_BUDGET`) and restarts.
    pub fn set_sandbox_cpu_seconds(&self, seconds: u64) {
        self.runtimes.set_sandbox_cpu_seconds(seconds)
    }

    /// The CPU limit of sandboxes started from now on, in percent of one CPU (1..=10000; 0:
    /// none), enforced by the sandbox's cgroup (CFS quota) where the host can create one; a
    /// sandbox without a cgroup has only `RLIMIT_CPU` ([`Host::set_sandbox_cpu_seconds`]).
    /// `KEEL_ERR_INVALID_ARGUMENT` above 10000 (100 CPUs).
    pub fn set_sandbox_cpu_percent(&self, percent: u32) -> Result<()> {
        if percent > 10_000 {
            crate::bail!(
                KEEL_ERR_INVALID_ARGUMENT,
                "sandbox CPU percent {percent} is above 10000 (100 CPUs)"
            );
        }
        self.runtimes.set_sandbox_cpu_percent(percent);
        Ok(())
    }

    pub fn options(&self) -> HostOptions {
        self.lifecycle.options()
    }

    pub fn set_drain_timeout(&self, timeout: Duration) {
        self.lifecycle.set_drain_timeout(timeout);
    }

    /// Trust store and signature policy. The policy can be weakened
    /// (`set_require_signature(false)`) only before the first load; after that only strengthened.
    pub fn trust(&self) -> &TrustState {
        &self.trust
    }

    /// Follow a trust store published in an OCI registry (see [`crate::fleet::follow`]):
    /// check `config.reference` now (the published store must be signed by one of
    /// `config.roots` and not be older than the store in use), swap it in, then check every
    /// `config.interval` on a thread of the follower's own. Replaces a follower already
    /// running once the new one's first check succeeded; on failure the old one (if any)
    /// keeps running and the store is unchanged. Returns the version in use. While following,
    /// the metrics carry `keel_trust_store_version`.
    pub fn follow_trust_store(&self, config: crate::fleet::FollowConfig) -> Result<u64> {
        let f = crate::fleet::TrustFollower::start(self.trust.clone(), config)?;
        let v = f.status().version;
        self.follow_metrics.set(Some(&f));
        let old = self.trust_follow.lock().replace(f);
        if let Some(old) = old {
            old.stop();
        }
        Ok(v)
    }

    /// Check the followed trust-store reference now (on this thread). Returns the version in
    /// use afterwards. `KEEL_ERR_INVALID_ARGUMENT` if the host follows none; otherwise the
    /// errors of [`Host::follow_trust_store`] (the store in use stays).
    pub fn trust_check_now(&self) -> Result<u64> {
        let g = self.trust_follow.lock();
        match g.as_ref() {
            Some(f) => f.check_now(),
            None => Err(crate::err!(
                KEEL_ERR_INVALID_ARGUMENT,
                "this host follows no trust-store reference"
            )),
        }
    }

    /// The follower's record, if the host follows a trust-store reference.
    pub fn trust_follow_status(&self) -> Option<crate::fleet::FollowStatus> {
        self.trust_follow.lock().as_ref().map(|f| f.status())
    }

    /// Stop following (the store in use stays). Returns whether a follower ran.
    pub fn stop_following_trust_store(&self) -> bool {
        let old = self.trust_follow.lock().take();
        self.follow_metrics.set(None);
        let was = old.is_some();
        if let Some(f) = old {
            f.stop();
        }
        was
    }

    pub fn allowlist(&self) -> Capabilities {
        self.lifecycle.allowlist()
    }

    /// Replace the node's capability allowlist. Plugins already loaded keep their frozen set.
    pub fn set_allowlist(&self, allow: Capabilities) {
        self.lifecycle.set_allowlist(allow);
    }

    /// Register a lifecycle listener. Listeners run after the lifecycle operation that
    /// caused the event has released the lifecycle lock, one event at a time in the order the
    /// events happened, on one thread at a time; a listener may load, reload or unload plugins,
    /// and the events of such an operation follow once it returns (a listener is never
    /// re-entered; see [`crate::lifecycle::listeners`]). A listener that panics is ignored.
    ///
    /// Returns the listener's id (never 0), for [`Host::remove_listener`].
    pub fn add_listener(&self, l: Listener) -> u64 {
        self.lifecycle.add_listener(l)
    }

    /// Remove a listener registered by [`Host::add_listener`]; `false` if the id is unknown
    /// (or already removed). Events already being delivered may still reach it.
    pub fn remove_listener(&self, id: u64) -> bool {
        self.lifecycle.remove_listener(id)
    }

    // --- plugins ------------------------------------------------------------------------

    /// A loaded plugin's slot.
    pub fn get(&self, name: &str) -> Result<Arc<Slot>> {
        self.lifecycle.get(name)
    }

    pub fn plugin_names(&self) -> Vec<String> {
        self.lifecycle.plugin_names()
    }

    /// The loaded plugins' slots, sorted by name (a lock-free snapshot).
    pub fn slots(&self) -> Vec<Arc<Slot>> {
        self.lifecycle.slots()
    }

    /// The manifest path a loaded plugin was loaded from (what reload reads again).
    pub fn manifest_path(&self, name: &str) -> Option<PathBuf> {
        self.lifecycle.manifest_path(name)
    }

    /// Every loaded plugin's name and manifest path.
    pub fn manifest_paths(&self) -> Vec<(String, PathBuf)> {
        self.lifecycle.manifest_paths()
    }

    /// Load one plugin from its manifest.
    pub fn load(&self, manifest_path: &Path) -> Result<Arc<Slot>> {
        let mut v = self.load_set(&[manifest_path.to_path_buf()])?;
        v.pop().ok_or_else(|| Error::internal("load_set returned nothing"))
    }

    /// Load a plugin from an OCI registry: pull `reference`
    /// (`[registry/]repository[:tag][@sha256:<hex>]`) into the content-addressed cache
    /// `cache_dir` ([`crate::fleet::pull_to_cache`]: digests checked, a digest reference that
    /// is cached never touches the network, a tag is resolved once), then load the cached
    /// folder exactly as [`Host::load`] loads a local one: signature against this host's trust
    /// store, binary pin, capabilities, init. The returned [`OciLoad`] names the digest the
    /// reference resolved to. Reload reads the cached folder again (same digest); to move to
    /// a new digest, unload and load the new reference.
    ///
    /// Errors: the `KEEL_ERR_OCI_*` codes of the pull, then those of [`Host::load`].
    pub fn load_oci(
        &self,
        reference: &str,
        cache_dir: &Path,
        options: &crate::fleet::RegistryOptions,
    ) -> Result<OciLoad> {
        self.drop_stale_oci_holds();
        // Pull, then hold the folder before loading from it; if a prune (another process)
        // removed it in between, pull it again.
        let mut pulled = crate::fleet::pull_to_cache(reference, cache_dir, options)?;
        let mut held = crate::fleet::hold(cache_dir, &pulled.digest)?;
        if held.is_none() {
            pulled = crate::fleet::pull_to_cache(reference, cache_dir, options)?;
            held = crate::fleet::hold(cache_dir, &pulled.digest)?;
        }
        let hold = held.ok_or_else(|| {
            err!(
                KEEL_ERR_IO,
                "'{reference}' ({}): the cache entry was removed while loading; retry",
                pulled.digest
            )
        })?;
        let slot = self
            .load(&pulled.manifest_path)
            .map_err(|e| e.context(format!("'{reference}' ({})", pulled.digest)))?;
        self.oci_holds
            .lock()
            .push((slot.name().to_string(), pulled.manifest_path.clone(), hold));
        Ok(OciLoad { slot, pulled })
    }

    /// Evict least recently used entries of the OCI cache `cache_dir` until it takes at most
    /// `max_bytes` ([`crate::fleet::prune_cache`]): never a folder a plugin of this host (or of
    /// another process sharing the cache) is loaded from, nor one being pulled.
    ///
    /// Errors: `KEEL_ERR_FILE_NOT_FOUND` (no such folder), `KEEL_ERR_IO`.
    pub fn prune_oci_cache(&self, cache_dir: &Path, max_bytes: u64) -> Result<crate::fleet::Pruned> {
        self.drop_stale_oci_holds();
        crate::fleet::prune_cache(cache_dir, max_bytes)
    }

    /// Drop the cache holds of plugins no longer loaded from the held folder.
    fn drop_stale_oci_holds(&self) {
        if self.oci_holds.lock().is_empty() {
            return;
        }
        let loaded: std::collections::HashMap<String, PathBuf> = self.manifest_paths().into_iter().collect();
        self.oci_holds
            .lock()
            .retain(|(name, path, _)| loaded.get(name) == Some(path));
    }

    /// Load several plugins all-or-nothing: every manifest is read and checked first; then
    /// plugins are initialised in dependency order; if any fails, those already loaded by
    /// this call are unloaded again in reverse order and the registry is as before.
    pub fn load_set(&self, manifest_paths: &[PathBuf]) -> Result<Vec<Arc<Slot>>> {
        self.lifecycle.load_set(manifest_paths)
    }

    /// [`Host::load_set`] for manifests already read.
    pub fn load_manifests(&self, files: Vec<ManifestFile>) -> Result<Vec<Arc<Slot>>> {
        self.lifecycle.load_manifests(files)
    }

    /// The loaded plugins' versions and dependencies (the registry's dependency view).
    pub fn loaded_graph(&self) -> deps::LoadedGraph {
        self.lifecycle.loaded_graph()
    }

    /// Diagnostic: how many dependency-graph nodes the lifecycle's checks (load, reload,
    /// unload) have looked at since this host was made. Loading a plugin with d dependencies
    /// adds at most 1 + d, however many plugins are loaded (tests use it to catch work that
    /// grows with the number loaded); unload-all adds the number loaded, once.
    #[doc(hidden)]
    pub fn dependency_nodes_visited(&self) -> u64 {
        self.lifecycle.graph_nodes_visited()
    }

    /// Load every plugin of a plugin directory (one folder per plugin, `keel.json` or
    /// ThemisDB `plugin.json`; see [`crate::deps::discover`] for what is skipped) as one
    /// all-or-nothing set, in dependency order. A plugin that is already loaded makes the
    /// whole call fail with `KEEL_ERR_ALREADY_LOADED`: a rescan never replaces a loaded plugin
    /// (use reload for that). A non-empty directory in which no manifest is found fails with
    /// `KEEL_ERR_NO_MANIFEST`.
    pub fn load_dir(&self, dir: &Path) -> Result<Vec<Arc<Slot>>> {
        self.lifecycle.load_dir(dir)
    }

    /// Every check [`Host::load_set`] runs before any plugin code runs, without loading:
    /// manifests read and validated, none already loaded, signatures against this host's
    /// trust store and policy, the pin policy, capability names and this host's allowlist,
    /// dependencies (against the set and the loaded plugins), and each binary read and
    /// checked against its pinned SHA-256. Returns the plugins in load order. What remains for
    /// a load is the plugin's own code: the entry symbol and ABI version, WASM compilation and
    /// imports, and `init`. Does not freeze the signature policy (a load does).
    pub fn check(&self, manifest_paths: &[PathBuf]) -> Result<Vec<PluginCheck>> {
        let files = manifest_paths
            .iter()
            .map(|p| crate::manifest::read_file(p))
            .collect::<Result<Vec<_>>>()?;
        self.lifecycle.check_manifests(files)
    }

    /// [`Host::check`] for the plugins [`Host::load_dir`] would load from `dir`.
    pub fn check_dir(&self, dir: &Path) -> Result<Vec<PluginCheck>> {
        self.lifecycle.check_dir(dir)
    }

    /// What [`Host::load_dir`] would load from `dir`, in load order (the directory scan and
    /// the dependency plan against the loaded plugins; no trust or binary check: see
    /// [`Host::check_dir`]), and what the scan skipped.
    pub fn plan_dir(&self, dir: &Path) -> Result<DirPlan> {
        self.lifecycle.plan_dir(dir)
    }

    /// Hot reload: re-read and verify the manifest and binary, start the new generation with
    /// the old one's state, swap atomically while calls keep flowing, drain the old one. On
    /// any failure before the swap the old generation keeps serving, untouched.
    pub fn reload(&self, name: &str) -> Result<u64> {
        self.lifecycle.reload(name)
    }

    /// Unload a plugin: later calls through existing handles fail with
    /// KEEL_ERR_PLUGIN_UNLOADED; in-flight calls finish; the plugin is shut down and its code
    /// unmapped after the last one (waiting at most the drain timeout; on timeout the error
    /// says so and Keel's reclaimer thread releases it after the last call returns).
    ///
    /// Refused with `KEEL_ERR_HAS_DEPENDENTS`, listing them, while other loaded plugins
    /// depend on it; [`Host::unload_cascade`] unloads those too.
    pub fn unload(&self, name: &str) -> Result<()> {
        self.lifecycle.unload(name)
    }

    /// Unload a plugin and everything that depends on it, directly or transitively:
    /// dependents first (reverse dependency order, ties by name), `name` last. Returns the
    /// names in the order they were unloaded. A drain timeout of one plugin does not stop the
    /// cascade (that plugin is already out of the registry); the first error is returned
    /// after every plugin of the cascade has been unloaded.
    pub fn unload_cascade(&self, name: &str) -> Result<Vec<String>> {
        self.lifecycle.unload_cascade(name)
    }

    /// Unload everything, dependents before their dependencies (ties by name), collecting
    /// the first error.
    pub fn unload_all(&self) -> Result<()> {
        self.lifecycle.unload_all()
    }

    // --- metrics ------------------------------------------------------------------------

    /// Metrics of every loaded plugin.
    pub fn metrics(&self) -> Vec<(String, String, MetricsSnapshot)> {
        self.lifecycle
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
    ///
    /// The plugin families are written directly from label text rendered at load and bucket
    /// text rendered once ([`exposition::write_plugin_families`], the same bytes
    /// [`Host::metrics_collector`] writes through `prometheus-client`); the plugin-defined
    /// families follow through `prometheus-client`.
    pub fn metrics_text(&self) -> String {
        self.metrics_text_with(ExpositionOptions::default())
    }

    /// [`Host::metrics_text`] with `options` (e.g. leave out the histograms of plugins never
    /// called: [`ExpositionOptions::omit_idle_histograms`]).
    pub fn metrics_text_with(&self, options: ExpositionOptions) -> String {
        let rows = self.lifecycle.registry().plugin_rows();
        let mut s = String::new();
        exposition::write_plugin_families(&mut s, &rows, options);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.prometheus);
        s
    }

    /// A collector of this host's plugin metrics, for an embedder's own
    /// `prometheus_client::registry::Registry` (`register_collector`).
    pub fn metrics_collector(&self) -> PluginCollector {
        PluginCollector::with_custom(
            self.lifecycle.registry().clone(),
            self.lifecycle.services().metrics.clone(),
        )
    }

    /// Time one call in `every` per thread and plugin (rounded up to a power of two; 0 turns
    /// latency sampling off, 1 times every call). Applies to loaded plugins at once and to
    /// later loads. Default [`crate::metrics::DEFAULT_SAMPLE_EVERY`].
    pub fn set_latency_sampling(&self, every: u32) {
        self.lifecycle.set_latency_sampling(every);
    }
}

// --- RPC endpoints (capability `rpc:register`) ---------------------------------------------

impl Host {
    /// Every RPC endpoint the loaded plugins have registered, sorted by endpoint name.
    pub fn rpc_endpoints(&self) -> Vec<EndpointInfo> {
        self.lifecycle.services().rpc.list()
    }

    /// The plugin and function id an endpoint is bound to, for calls through
    /// [`Slot::call`] (the normal call path). The function is resolved once per binding and
    /// cached. `KEEL_ERR_RPC_ENDPOINT_NOT_FOUND` when no loaded plugin registered `endpoint`;
    /// `KEEL_ERR_PLUGIN_UNLOADED` / `KEEL_ERR_FUNCTION_NOT_FOUND` as for
    /// [`Slot::resolve`].
    pub fn rpc_resolve(&self, endpoint: &str) -> Result<(Arc<Slot>, u32)> {
        let e = self.lifecycle.services().rpc.get(endpoint).ok_or_else(|| {
            crate::err!(
                KEEL_ERR_RPC_ENDPOINT_NOT_FOUND,
                "no plugin has registered the RPC endpoint '{endpoint}'"
            )
        })?;
        let slot = self.lifecycle.registry().get(&e.plugin).ok_or_else(|| {
            crate::err!(
                KEEL_ERR_PLUGIN_UNLOADED,
                "RPC endpoint '{endpoint}': plugin '{}' is not loaded",
                e.plugin
            )
        })?;
        let cached = e.function_id.load(std::sync::atomic::Ordering::Relaxed);
        if cached != crate::services::rpc::UNRESOLVED {
            return Ok((slot, cached));
        }
        let id = slot
            .resolve(&e.function)
            .map_err(|err| err.context(format!("RPC endpoint '{endpoint}'")))?;
        e.function_id.store(id, std::sync::atomic::Ordering::Relaxed);
        Ok((slot, id))
    }

    /// Invoke an endpoint: [`Host::rpc_resolve`], then the plugin's function through the
    /// normal call path with `input`; the result is appended to `output` (cleared first).
    /// Errors: those of [`Host::rpc_resolve`] and of a call.
    pub fn rpc_call(&self, endpoint: &str, input: &[u8], output: &mut Vec<u8>) -> Result<()> {
        let (slot, id) = self.rpc_resolve(endpoint)?;
        output.clear();
        slot.call(id, input, output)
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // The watcher and the monitor first, so that no load or restart starts while the
        // plugins are unloaded.
        self.stop_watching();
        self.stop_health_monitor();
        self.stop_following_trust_store();
        let _ = self.lifecycle.unload_all();
    }
}
