//! The lifecycle: load sets, rollback, reload, unload, cascades and listeners.
//!
//! Every change to the set of loaded plugins goes through `Lifecycle`, one operation at a
//! time (the lifecycle lock; calls and lookups never take it). A load runs the
//! [`pipeline`] — manifest → trust → deps/capabilities → artifact → runtime → registry — for
//! every manifest of a set, all or nothing. A reload runs the same pipeline for the new
//! generation with the old one's state and swaps it in; on any failure before the swap the old
//! generation keeps serving. Unload removes the slot from the registry and drains the old
//! generation. Events are queued under the lock and delivered to listeners after it is
//! released ([`listeners`]), so a listener may load or unload plugins itself.
//!
//! The health monitor and the directory watcher drive the lifecycle through a `Handle`
//! (list the plugins, load, reload, unload): they never see the host.

pub mod listeners;
pub mod pipeline;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, MutexGuard, RwLock};

use crate::capability::Capabilities;
use crate::deps;
use crate::error::Result;
use crate::manifest::{self, ManifestFile};
use crate::metrics::exposition::{PluginLabels, PluginRow, PluginSource};
use crate::metrics::DEFAULT_SAMPLE_EVERY;
use crate::registry::{Registry, Slot};
use crate::runtime::{HostServices, Runtimes};
use crate::trust::TrustState;
use crate::{bail, err};

use listeners::Listeners;
pub use listeners::{LifecycleEvent, Listener};
pub use pipeline::default_allowlist;
use pipeline::Pipeline;

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

/// A plugin that passed every check of a load that runs none of its code (see
/// `Host::check`): what a load of the same manifest, by a host with the same trust store,
/// policy and allowlist, verifies before it starts the plugin.
#[derive(Debug, Clone)]
pub struct PluginCheck {
    pub manifest: ManifestFile,
    /// How the manifest's authenticity was established.
    pub trust: crate::trust::TrustReport,
    /// The capabilities the plugin would be granted.
    pub granted: Capabilities,
    /// The binary for this platform.
    pub binary: crate::manifest::BinaryRef,
    /// Lower-case hex SHA-256 of the binary's bytes as read (equal to the pin, if any).
    pub binary_sha256: String,
}

/// What `Host::plan_dir` found: the manifests `load_dir` would load, in load order, and the
/// entries of the directory it skipped, with the reason.
#[derive(Debug, Clone)]
pub struct DirPlan {
    pub manifests: Vec<ManifestFile>,
    pub skipped: Vec<(PathBuf, &'static str)>,
}

/// The manifests of a plugin directory, as `load_dir` reads them: the directory scan
/// ([`deps::discover`]; a non-empty directory without a manifest is `KEEL_ERR_NO_MANIFEST`),
/// each manifest read and validated; with the entries the scan skipped.
/// Entries a directory scan skipped: (path, why).
type Skipped = Vec<(PathBuf, &'static str)>;

fn read_dir_manifests(dir: &Path) -> Result<(Vec<ManifestFile>, Skipped)> {
    let found = deps::discover::discover(dir)?;
    found.require_manifests(dir)?;
    let files = found
        .manifests
        .iter()
        .map(|p| manifest::read_file(p))
        .collect::<Result<Vec<_>>>()?;
    Ok((files, found.skipped))
}

/// Owns the registry and every change to it.
pub(crate) struct Lifecycle {
    registry: Arc<Registry>,
    /// Serialises load, reload and unload (never taken by calls or lookups).
    lock: Mutex<()>,
    /// Where each loaded plugin's manifest came from (for reload).
    sources: Mutex<HashMap<String, PathBuf>>,
    /// The loaded plugins' dependency graph, kept up to date per plugin (loads, reloads and
    /// unloads read views of the part they can involve instead of rebuilding it).
    index: Mutex<deps::index::LoadedIndex>,
    options: RwLock<HostOptions>,
    listeners: Listeners,
    /// Latency sampling period given to every slot (see [`Lifecycle::set_latency_sampling`]).
    sample_every: AtomicU32,
    pipeline: Pipeline,
}

/// One lifecycle operation: the lifecycle lock, and on release the delivery of the events the
/// operation queued (after the lock is gone, so listeners may start operations of their own).
struct Op<'a> {
    lock: Option<MutexGuard<'a, ()>>,
    listeners: &'a Listeners,
}

impl Drop for Op<'_> {
    fn drop(&mut self) {
        drop(self.lock.take());
        self.listeners.deliver();
    }
}

impl Lifecycle {
    pub(crate) fn new(trust: Arc<TrustState>, runtimes: Arc<Runtimes>, services: HostServices) -> Lifecycle {
        Lifecycle {
            registry: Arc::new(Registry::default()),
            lock: Mutex::new(()),
            sources: Mutex::new(HashMap::new()),
            index: Mutex::new(deps::index::LoadedIndex::default()),
            options: RwLock::new(HostOptions::default()),
            listeners: Listeners::default(),
            sample_every: AtomicU32::new(DEFAULT_SAMPLE_EVERY),
            pipeline: Pipeline::new(trust, runtimes, services),
        }
    }

    fn op(&self) -> Op<'_> {
        Op {
            lock: Some(self.lock.lock()),
            listeners: &self.listeners,
        }
    }

    /// What the host lends plugins.
    pub(crate) fn services(&self) -> &HostServices {
        self.pipeline.services()
    }

    /// The registry (lock-free reads; changed only here).
    pub(crate) fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    pub(crate) fn options(&self) -> HostOptions {
        self.options.read().clone()
    }

    pub(crate) fn set_drain_timeout(&self, timeout: Duration) {
        self.options.write().drain_timeout = timeout;
    }

    pub(crate) fn allowlist(&self) -> Capabilities {
        self.pipeline.allowlist()
    }

    pub(crate) fn set_allowlist(&self, allow: Capabilities) {
        self.pipeline.set_allowlist(allow);
    }

    pub(crate) fn add_listener(&self, l: Listener) -> u64 {
        self.listeners.add(l)
    }

    pub(crate) fn remove_listener(&self, id: u64) -> bool {
        self.listeners.remove(id)
    }

    /// A loaded plugin's slot.
    pub(crate) fn get(&self, name: &str) -> Result<Arc<Slot>> {
        self.registry
            .get(name)
            .ok_or_else(|| err!(KEEL_ERR_PLUGIN_NOT_FOUND, "no plugin named '{name}' is loaded"))
    }

    pub(crate) fn plugin_names(&self) -> Vec<String> {
        self.registry.names()
    }

    /// The loaded plugins' slots, sorted by name (lock-free snapshot).
    pub(crate) fn slots(&self) -> Vec<Arc<Slot>> {
        self.registry.slots()
    }

    pub(crate) fn manifest_path(&self, name: &str) -> Option<PathBuf> {
        self.sources.lock().get(name).cloned()
    }

    pub(crate) fn manifest_paths(&self) -> Vec<(String, PathBuf)> {
        self.sources
            .lock()
            .iter()
            .map(|(n, p)| (n.clone(), p.clone()))
            .collect()
    }

    /// The loaded plugins' versions and dependencies (the registry's dependency view).
    pub(crate) fn loaded_graph(&self) -> deps::LoadedGraph {
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

    /// Dependency-graph nodes the lifecycle's checks have looked at since the host was made
    /// (loading a plugin with d dependencies adds at most 1 + d, however many are loaded).
    pub(crate) fn graph_nodes_visited(&self) -> u64 {
        self.index.lock().visited()
    }

    /// Whether a plugin of that name is loaded, by the dependency index.
    fn is_loaded_plugin(&self, name: &str) -> bool {
        self.index.lock().contains(name)
    }

    /// The part of the loaded graph a load set's plan reads: the loaded plugins among the
    /// set's names and direct dependencies (a loaded plugin never depends on one that is not
    /// loaded, so a cycle can only run through the set).
    fn graph_for_set(&self, files: &[ManifestFile]) -> deps::LoadedGraph {
        let names = files.iter().flat_map(|f| {
            std::iter::once(f.manifest.name.as_str()).chain(f.manifest.dependencies.keys().map(String::as_str))
        });
        self.index.lock().view(names)
    }

    fn index_insert(&self, m: &crate::manifest::Manifest) {
        self.index.lock().insert(
            &m.name,
            deps::LoadedNode {
                version: m.version.clone(),
                dependencies: m.dependencies.clone(),
            },
        );
    }

    pub(crate) fn load_set(&self, manifest_paths: &[PathBuf]) -> Result<Vec<Arc<Slot>>> {
        let files = manifest_paths
            .iter()
            .map(|p| manifest::read_file(p))
            .collect::<Result<Vec<_>>>()?;
        self.load_manifests(files)
    }

    pub(crate) fn load_dir(&self, dir: &Path) -> Result<Vec<Arc<Slot>>> {
        let (files, _skipped) = read_dir_manifests(dir)?;
        self.load_manifests(files)
    }

    /// Load a set all or nothing: admit every manifest (trust, capabilities), plan the order
    /// (dependencies), then build and install one generation each; if one fails, those
    /// installed by this call are unloaded again in reverse order.
    pub(crate) fn load_manifests(&self, mut files: Vec<ManifestFile>) -> Result<Vec<Arc<Slot>>> {
        let _op = self.op();
        // The host has started: from now on the signature policy can only be strengthened.
        self.pipeline.trust().mark_started();
        let graph = self.prepare_set(&mut files)?;
        let (admitted, order) = self.admit_set(&files, &graph)?;
        let mut loaded: Vec<Arc<Slot>> = Vec::with_capacity(files.len());
        for i in order {
            let a = &admitted[i];
            let started = Instant::now();
            match self.pipeline.build(a, 1, None) {
                Ok(gen) => {
                    let slot = Arc::new(Slot::new(a.file.manifest.name.clone()));
                    slot.metrics.set_sample_every(self.sample_every.load(Ordering::Relaxed));
                    slot.metrics.loads.fetch_add(1, Ordering::Relaxed);
                    slot.metrics
                        .last_load_nanos
                        .store(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    slot.install(gen);
                    self.registry.insert(slot.clone());
                    self.index_insert(&a.file.manifest);
                    self.sources
                        .lock()
                        .insert(a.file.manifest.name.clone(), a.file.path.clone());
                    loaded.push(slot);
                }
                Err(e) => {
                    // Its init may have registered metrics or endpoints before failing.
                    self.pipeline.forget_plugin(&a.file.manifest.name);
                    self.roll_back(&loaded);
                    return Err(e.context(format!(
                        "loading '{}' failed; nothing from this set was loaded",
                        a.file.manifest.name
                    )));
                }
            }
        }
        for s in &loaded {
            self.listeners.queue(s.name(), LifecycleEvent::Loaded, 1);
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

    /// The checks of a load set that run no plugin code, in the order a load runs them: no
    /// plugin of the set already loaded and ThemisDB array-form dependencies resolved here
    /// (returns the loaded graph used); then `admit_set`: every manifest admitted (signature,
    /// pin policy, capabilities against the allowlist) and the load order planned.
    fn prepare_set(&self, files: &mut [ManifestFile]) -> Result<deps::LoadedGraph> {
        for f in files.iter() {
            if self.registry.get(&f.manifest.name).is_some() {
                bail!(
                    KEEL_ERR_ALREADY_LOADED,
                    "a plugin named '{}' is already loaded",
                    f.manifest.name
                );
            }
        }
        // ThemisDB array-form dependencies: plugin or library, decided by this set and the
        // loaded plugins; the generations record the resolved dependencies.
        self.pipeline
            .resolve_weak_dependencies(files, &|d| self.is_loaded_plugin(d));
        Ok(self.graph_for_set(files))
    }

    /// The second half of the checks of a set (after `prepare_set`): admit every manifest,
    /// then plan the order.
    fn admit_set<'a>(
        &self,
        files: &'a [ManifestFile],
        graph: &deps::LoadedGraph,
    ) -> Result<(Vec<pipeline::Admitted<'a>>, Vec<usize>)> {
        let mut admitted = Vec::with_capacity(files.len());
        for f in files {
            admitted.push(self.pipeline.admit(f)?);
        }
        let order = pipeline::plan(files, graph)?;
        Ok((admitted, order))
    }

    /// Every check [`Lifecycle::load_manifests`] runs before a plugin's code runs (see
    /// `admit_set`), then each binary read and checked against its pin, in load order; nothing
    /// is loaded and the policy is not frozen.
    pub(crate) fn check_manifests(&self, mut files: Vec<ManifestFile>) -> Result<Vec<PluginCheck>> {
        let _op = self.op();
        let graph = self.prepare_set(&mut files)?;
        let (admitted, order) = self.admit_set(&files, &graph)?;
        let mut out = Vec::with_capacity(order.len());
        for i in order {
            let a = &admitted[i];
            let (binary, art) = self.pipeline.verified_binary(a.file)?;
            out.push(PluginCheck {
                manifest: a.file.clone(),
                trust: a.trust.clone(),
                granted: a.granted,
                binary,
                binary_sha256: art.sha256_hex(),
            });
        }
        Ok(out)
    }

    /// [`Lifecycle::check_manifests`] for the manifests [`Lifecycle::load_dir`] reads from
    /// `dir` (same scan, same order of checks: a refused directory fails with the cause the
    /// load would give).
    pub(crate) fn check_dir(&self, dir: &Path) -> Result<Vec<PluginCheck>> {
        let (files, _skipped) = read_dir_manifests(dir)?;
        self.check_manifests(files)
    }

    /// What [`Lifecycle::load_dir`] would load, in load order: the directory scan and the
    /// dependency plan of the manifests found (no signature, capability or binary check).
    pub(crate) fn plan_dir(&self, dir: &Path) -> Result<DirPlan> {
        let (mut files, skipped) = read_dir_manifests(dir)?;
        self.pipeline
            .resolve_weak_dependencies(&mut files, &|d| self.is_loaded_plugin(d));
        let graph = self.graph_for_set(&files);
        let order = pipeline::plan(&files, &graph)?;
        let mut slots: Vec<Option<ManifestFile>> = files.into_iter().map(Some).collect();
        let manifests = order.into_iter().filter_map(|i| slots[i].take()).collect();
        Ok(DirPlan { manifests, skipped })
    }

    /// Undo the installs of a failed load set, last first (no events: nothing was loaded).
    fn roll_back(&self, installed: &[Arc<Slot>]) {
        for s in installed.iter().rev() {
            self.registry.remove(s.name());
            self.index.lock().remove(s.name());
            self.sources.lock().remove(s.name());
            if let Some(g) = s.take() {
                let _ = s.drain(g, self.options().drain_timeout);
            }
            self.pipeline.forget_plugin(s.name());
        }
    }

    /// Hot reload (see `Host::reload`).
    pub(crate) fn reload(&self, name: &str) -> Result<u64> {
        let _op = self.op();
        let slot = self.get(name)?;
        let _sl = slot.lifecycle.lock();
        let path = self
            .manifest_path(name)
            .ok_or_else(|| err!(KEEL_ERR_PLUGIN_NOT_FOUND, "plugin '{name}' has no manifest path"))?;
        let start = Instant::now();
        let result = (|| {
            let mut f = manifest::read_file(&path)?;
            self.pipeline
                .resolve_weak_dependencies(std::slice::from_mut(&mut f), &|d| self.is_loaded_plugin(d));
            if f.manifest.name != name {
                bail!(
                    KEEL_ERR_MANIFEST_INVALID,
                    "manifest now names plugin '{}', not '{name}'",
                    f.manifest.name
                );
            }
            let a = self.pipeline.admit(&f)?;
            let graph = self
                .index
                .lock()
                .view_for_replacement(name, f.manifest.dependencies.keys().map(String::as_str));
            deps::check_replacement(&pipeline::candidate(&f), &graph)?;
            let old = slot
                .current()
                .ok_or_else(|| err!(KEEL_ERR_PLUGIN_UNLOADED, "plugin '{name}' is not loaded"))?;
            // The granted set is frozen at load: a reload may keep or narrow it, never widen it.
            if !old.granted.contains(a.granted) {
                let extra = Capabilities::from_bits(a.granted.bits() & !old.granted.bits())?;
                bail!(
                    KEEL_ERR_CAPABILITY_DENIED,
                    "the new manifest asks for {:?} beyond the capabilities frozen at load ({:?}); unload and load the plugin to grant more",
                    extra,
                    old.granted
                );
            }
            if old.instance.has_state() {
                drop(old);
                return self.reload_holding_calls(&slot, &a).map(Reloaded::Held);
            }
            let state = old.instance.save_state()?;
            let saved_by = old.manifest.version.to_string();
            drop(old);
            self.pipeline
                .build(
                    &a,
                    slot.next_generation_number(),
                    state.as_deref().map(|s| (s, saved_by.as_str())),
                )
                .map(|g| Reloaded::Built(Box::new(g)))
        })();
        let gen = match result {
            Ok(Reloaded::Built(g)) => *g,
            Ok(Reloaded::Held((number, old))) => {
                // Already swapped (calls were held from the save to the swap).
                if let Some(g) = slot.current() {
                    self.index_insert(&g.manifest);
                }
                self.pipeline.services().rpc.commit(name, number);
                self.listeners.queue(name, LifecycleEvent::BeforeSwap, number);
                slot.metrics.reloads.fetch_add(1, Ordering::Relaxed);
                slot.metrics
                    .last_load_nanos
                    .store(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
                self.listeners.queue(name, LifecycleEvent::AfterSwap, number);
                if let Err(e) = slot.drain(old, self.options().drain_timeout) {
                    slot.metrics.drain_timeouts.fetch_add(1, Ordering::Relaxed);
                    return Err(e);
                }
                return Ok(number);
            }
            Err(e) => {
                // Endpoints the failed generation registered are undone (the old ones are back).
                self.pipeline
                    .services()
                    .rpc
                    .roll_back(name, slot.next_generation_number());
                slot.metrics.reload_failures.fetch_add(1, Ordering::Relaxed);
                self.listeners
                    .queue(name, LifecycleEvent::ReloadRolledBack, slot.next_generation_number());
                return Err(e.context(format!(
                    "reload of '{name}' rolled back; the old generation keeps serving"
                )));
            }
        };
        let number = gen.number;
        self.listeners.queue(name, LifecycleEvent::BeforeSwap, number);
        let manifest = gen.manifest.clone();
        let old = slot.install(gen);
        self.index_insert(&manifest);
        // Published: endpoints only older generations registered are removed.
        self.pipeline.services().rpc.commit(name, number);
        slot.metrics.reloads.fetch_add(1, Ordering::Relaxed);
        slot.metrics
            .last_load_nanos
            .store(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        self.listeners.queue(name, LifecycleEvent::AfterSwap, number);
        if let Some(old) = old {
            if let Err(e) = slot.drain(old, self.options().drain_timeout) {
                slot.metrics.drain_timeouts.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        }
        Ok(number)
    }

    /// Reload a plugin that keeps state without losing an update: calls are held (bounded by
    /// the drain timeout) from before the state is saved until the new generation is
    /// published. The old generation is unpublished, calls still inside it finish, its state
    /// is saved, the new generation is built with it and published, and held calls go on in
    /// the new one. On any failure the old generation is published again, untouched since
    /// its state was saved, and held calls go on there. Returns the new generation's number
    /// and the old generation, to drain.
    fn reload_holding_calls(
        &self,
        slot: &Arc<Slot>,
        a: &pipeline::Admitted,
    ) -> Result<(u64, crate::registry::Unpublished<crate::registry::Generation>)> {
        let timeout = self.options().drain_timeout;
        let old = slot
            .hold(timeout)
            .ok_or_else(|| err!(KEEL_ERR_PLUGIN_UNLOADED, "plugin '{}' is not loaded", slot.name()))?;
        let built = (|| {
            slot.wait_quiet(&old, timeout)?;
            let state = old.instance.save_state()?;
            let saved_by = old.manifest.version.to_string();
            self.pipeline.build(
                a,
                slot.next_generation_number(),
                state.as_deref().map(|s| (s, saved_by.as_str())),
            )
        })();
        match built {
            Ok(gen) => {
                let number = gen.number;
                let none = slot.install(gen);
                debug_assert!(none.is_none(), "a generation was published during the hold");
                drop(none);
                slot.release();
                Ok((number, old))
            }
            Err(e) => {
                slot.republish(old);
                slot.release();
                Err(e)
            }
        }
    }

    pub(crate) fn unload(&self, name: &str) -> Result<()> {
        let _op = self.op();
        self.get(name)?;
        let graph = self.index.lock().view_for_unload(name);
        deps::check_unload(name, &graph)?;
        self.unload_locked(name)
    }

    pub(crate) fn unload_cascade(&self, name: &str) -> Result<Vec<String>> {
        let _op = self.op();
        self.get(name)?;
        let graph = self.index.lock().view_for_cascade(name);
        let order = deps::cascade_unload_order(name, &graph);
        let mut first = None;
        for n in &order {
            if let Err(e) = self.unload_locked(n) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(order), Err)
    }

    pub(crate) fn unload_all(&self) -> Result<()> {
        let _op = self.op();
        let mut first = None;
        // One order for all of them (O(n log n)); each unload is then O(log n + its edges).
        let graph = self.index.lock().view_all();
        for name in deps::unload_all_order(&graph) {
            if let Err(e) = self.unload_locked(&name) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Unload one plugin; the caller holds the lifecycle lock and has checked dependents.
    fn unload_locked(&self, name: &str) -> Result<()> {
        let slot = self.get(name)?;
        let _sl = slot.lifecycle.lock();
        self.registry.remove(name);
        self.index.lock().remove(name);
        self.sources.lock().remove(name);
        let old = slot.take();
        // Its endpoints and metric series go with it (calls still draining may update series
        // nobody reads any more).
        self.pipeline.forget_plugin(name);
        self.listeners.queue(
            name,
            LifecycleEvent::Unloaded,
            old.as_ref().map(|g| g.number).unwrap_or(0),
        );
        if let Some(old) = old {
            if let Err(e) = slot.drain(old, self.options().drain_timeout) {
                slot.metrics.drain_timeouts.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        }
        Ok(())
    }

    pub(crate) fn set_latency_sampling(&self, every: u32) {
        let _op = self.op();
        self.sample_every.store(every, Ordering::Relaxed);
        for s in self.registry.slots() {
            s.metrics.set_sample_every(every);
        }
    }
}

/// The registry as the metrics exposition reads it at every scrape.
impl PluginSource for Registry {
    fn plugin_rows(&self) -> Vec<PluginRow> {
        // `slots()` is sorted by name. A slot whose generation is gone (mid-unload) is skipped.
        self.slots()
            .iter()
            .filter_map(|s| {
                let g = s.current()?;
                let version = g.manifest.version.to_string();
                // Rendered when the generation was made; a slot named unlike its manifest
                // (only in unit tests) gets its own.
                let labels = if g.labels.is_for(s.name(), &version) {
                    g.labels.clone()
                } else {
                    Arc::new(PluginLabels::new(s.name(), &version))
                };
                Some(PluginRow {
                    name: s.name().to_string(),
                    version,
                    labels,
                    generation: g.number,
                    counters: s.metrics.snapshot(),
                    latency: s.metrics.latency.snapshot(),
                    memory_bytes: g.instance.memory_bytes(),
                    sandbox: g.instance.sandbox(),
                    health: s.health.report(),
                })
            })
            .collect()
    }
}

/// The narrow interface through which the health monitor and the directory watcher drive the
/// plugins: list them, load, reload, unload. Each operation is the lifecycle's own (verified,
/// serialised, listeners notified); nothing else of the host is reachable from here.
#[derive(Clone)]
pub(crate) struct Handle(Arc<Lifecycle>);

impl Handle {
    pub(crate) fn new(lifecycle: Arc<Lifecycle>) -> Handle {
        Handle(lifecycle)
    }

    /// The loaded plugins' slots, sorted by name (lock-free snapshot).
    pub(crate) fn slots(&self) -> Vec<Arc<Slot>> {
        self.0.slots()
    }

    /// A loaded plugin's slot (`KEEL_ERR_PLUGIN_NOT_FOUND` if none is loaded by that name).
    pub(crate) fn get(&self, name: &str) -> Result<Arc<Slot>> {
        self.0.get(name)
    }

    /// The manifest a loaded plugin was loaded from.
    pub(crate) fn manifest_path(&self, name: &str) -> Option<PathBuf> {
        self.0.manifest_path(name)
    }

    /// Every loaded plugin's name and manifest path.
    pub(crate) fn manifest_paths(&self) -> Vec<(String, PathBuf)> {
        self.0.manifest_paths()
    }

    /// Load manifests already read, as one all-or-nothing set.
    pub(crate) fn load_manifests(&self, files: Vec<ManifestFile>) -> Result<Vec<Arc<Slot>>> {
        self.0.load_manifests(files)
    }

    /// Verified hot reload; on failure the old generation keeps serving.
    pub(crate) fn reload(&self, name: &str) -> Result<u64> {
        self.0.reload(name)
    }

    /// Unload, refused while other plugins depend on it.
    pub(crate) fn unload(&self, name: &str) -> Result<()> {
        self.0.unload(name)
    }

    /// Tell the listeners that the health verdict on a plugin changed (delivered on this
    /// thread, outside the lifecycle lock, after earlier queued events).
    pub(crate) fn health_changed(&self, name: &str, generation: u64) {
        self.0.listeners.queue(name, LifecycleEvent::HealthChanged, generation);
        self.0.listeners.deliver();
    }
}

/// What the inner part of a reload produced: a generation still to swap in, or (for a plugin
/// with state) a swap already done while calls were held.
enum Reloaded {
    Built(Box<crate::registry::Generation>),
    Held((u64, crate::registry::Unpublished<crate::registry::Generation>)),
}
