//! The registry: plugin name → [`Slot`]; a slot holds the current [`Generation`] behind an
//! atomic pointer.
//!
//! Readers never take an exclusive lock: the name map is a copy-on-write `ArcSwap`
//! (writers are serialised by the host's lifecycle lock), and a call does one atomic load
//! of the slot's generation. The arc-swap guard held during the call is the in-flight
//! guard: a generation swapped out is dropped (its plugin shut down and its code unmapped)
//! only when the last call inside it has returned.

pub mod hazard;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use parking_lot::Mutex;

use crate::barrier;
use crate::capability::Capabilities;
use crate::error::Result;
use crate::health_state::HealthCell;
use crate::manifest::Manifest;
use crate::metrics::PluginMetrics;
use crate::runtime::Instance;
use crate::{bail, err};

/// Functions a host may resolve per plugin (distinct names).
pub const MAX_FUNCTIONS: usize = 256;
const UNRESOLVED: u32 = u32::MAX;

/// One loaded, initialised version of a plugin.
pub struct Generation {
    /// 1 for the first load, +1 per successful reload.
    pub number: u64,
    pub manifest: Manifest,
    /// Lower-case hex SHA-256 of the binary that runs.
    pub binary_sha256: String,
    /// The frozen, granted capability set.
    pub granted: Capabilities,
    pub instance: Box<dyn Instance>,
    /// slot function id → this instance's function index (or UNRESOLVED).
    fn_map: Box<[AtomicU32]>,
}

impl Generation {
    pub fn new(
        number: u64,
        manifest: Manifest,
        binary_sha256: String,
        granted: Capabilities,
        instance: Box<dyn Instance>,
    ) -> Generation {
        Generation {
            number,
            manifest,
            binary_sha256,
            granted,
            instance,
            fn_map: (0..MAX_FUNCTIONS).map(|_| AtomicU32::new(UNRESOLVED)).collect(),
        }
    }

    fn map_function(&self, id: u32, name: &str) {
        if let Some(idx) = self.instance.functions().iter().position(|f| f == name) {
            self.fn_map[id as usize].store(idx as u32, Ordering::Release);
        }
    }
}

/// A named place for a plugin: stable across reloads; handles held by the embedding point
/// here.
pub struct Slot {
    name: String,
    /// Owns the current generation (lifecycle code, lookups, the health monitor).
    current: ArcSwapOption<Generation>,
    /// The same generation as a raw pointer for the call path, which protects it with a
    /// hazard pointer instead of a reference count. Non-null only while `current` holds it.
    fast: AtomicPtr<Generation>,
    /// Generations unpublished while calls were still inside them (drain timed out); freed
    /// by the last such call when it returns.
    retired: Mutex<Vec<Arc<Generation>>>,
    has_retired: AtomicBool,
    /// Function names resolved by hosts; a name's position is its stable function id.
    functions: Mutex<Vec<String>>,
    /// Serialises lifecycle operations (reload, unload) on this slot; never taken by calls.
    pub(crate) lifecycle: Mutex<()>,
    pub metrics: PluginMetrics,
    /// The health monitor's last report on this plugin (never touched by calls).
    pub health: HealthCell,
    next_generation: AtomicU64,
}

impl Slot {
    pub fn new(name: String) -> Slot {
        barrier::init();
        Slot {
            name,
            current: ArcSwapOption::empty(),
            fast: AtomicPtr::new(std::ptr::null_mut()),
            retired: Mutex::new(Vec::new()),
            has_retired: AtomicBool::new(false),
            functions: Mutex::new(Vec::new()),
            lifecycle: Mutex::new(()),
            metrics: PluginMetrics::default(),
            health: HealthCell::default(),
            next_generation: AtomicU64::new(1),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The number the next installed generation gets.
    pub fn next_generation_number(&self) -> u64 {
        self.next_generation.load(Ordering::Relaxed)
    }

    /// The current generation, if loaded (a strong reference: not for the call path).
    pub fn current(&self) -> Option<Arc<Generation>> {
        self.current.load_full()
    }

    pub fn is_loaded(&self) -> bool {
        self.current.load().is_some()
    }

    /// Resolve a function name to a stable id, valid across reloads of this slot.
    pub fn resolve(&self, name: &str) -> Result<u32> {
        let mut fns = self.functions.lock();
        let guard = self.current.load();
        let Some(gen) = guard.as_ref() else {
            bail!(KEEL_ERR_PLUGIN_UNLOADED, "plugin '{}' is not loaded", self.name);
        };
        if !gen.instance.functions().iter().any(|f| f == name) {
            bail!(
                KEEL_ERR_FUNCTION_NOT_FOUND,
                "plugin '{}' has no function '{name}' (it exports: {})",
                self.name,
                gen.instance.functions().join(", ")
            );
        }
        let id = match fns.iter().position(|f| f == name) {
            Some(i) => i as u32,
            None => {
                if fns.len() >= MAX_FUNCTIONS {
                    bail!(
                        KEEL_ERR_INVALID_ARGUMENT,
                        "more than {MAX_FUNCTIONS} distinct functions resolved"
                    );
                }
                fns.push(name.to_string());
                (fns.len() - 1) as u32
            }
        };
        gen.map_function(id, name);
        Ok(id)
    }

    /// Install `gen` as the current generation; returns the previous one. The function map
    /// of `gen` is filled for every name resolved so far before it becomes visible.
    pub fn install(&self, gen: Generation) -> Option<Arc<Generation>> {
        let fns = self.functions.lock();
        for (id, name) in fns.iter().enumerate() {
            gen.map_function(id as u32, name);
        }
        self.next_generation.store(gen.number + 1, Ordering::Relaxed);
        let gen = Arc::new(gen);
        self.fast.store(Arc::as_ptr(&gen) as *mut Generation, Ordering::SeqCst);
        self.current.swap(Some(gen))
    }

    /// Remove the current generation (calls from now on fail with KEEL_ERR_PLUGIN_UNLOADED).
    pub fn take(&self) -> Option<Arc<Generation>> {
        let _fns = self.functions.lock();
        self.fast.store(std::ptr::null_mut(), Ordering::SeqCst);
        self.current.swap(None)
    }

    /// The call path: one atomic load, an in-flight guard, the call, the sharded counters.
    #[inline]
    pub fn call(&self, function: u32, input: &[u8], output: &mut Vec<u8>) -> Result<()> {
        let Some((guard, p)) = hazard::protect(&self.fast) else {
            // Nested deeper than the hazard slots: hold a reference count instead.
            let gen = self.current.load_full();
            return match gen.as_deref() {
                Some(g) => self.call_in(g, function, input, output),
                None => Err(self.unloaded()),
            };
        };
        // SAFETY: `p` is protected by `guard`: it is either null or a generation that
        // `current` or `retired` still owns, and that is not freed while the hazard is set.
        let r = match unsafe { p.as_ref() } {
            Some(g) => self.call_in(g, function, input, output),
            None => Err(self.unloaded()),
        };
        drop(guard);
        if self.has_retired.load(Ordering::Relaxed) {
            self.reap();
        }
        r
    }

    #[inline]
    fn call_in(&self, gen: &Generation, function: u32, input: &[u8], output: &mut Vec<u8>) -> Result<()> {
        let idx = match gen.fn_map.get(function as usize) {
            Some(a) => a.load(Ordering::Acquire),
            None => UNRESOLVED,
        };
        if idx == UNRESOLVED {
            return Err(self.no_function(function));
        }
        output.clear();
        // Counts the call (and its error) on this thread's shards; times one call in N.
        self.metrics.observe(|| gen.instance.call(idx, input, output))
    }

    /// Whether a generation (already unpublished, heavy barrier run since) is still in use.
    fn in_use(gen: &Arc<Generation>) -> bool {
        Arc::strong_count(gen) > 1 || hazard::is_protected(Arc::as_ptr(gen))
    }

    /// Free retired generations nobody is inside any more (the last caller does this).
    #[cold]
    fn reap(&self) {
        let freed: Vec<Arc<Generation>> = {
            let Some(mut retired) = self.retired.try_lock() else {
                return;
            };
            let (busy, idle): (Vec<_>, Vec<_>) = retired.drain(..).partition(Self::in_use);
            *retired = busy;
            if retired.is_empty() {
                self.has_retired.store(false, Ordering::Relaxed);
            }
            idle
        };
        // Shut down and unmap outside the lock.
        drop(freed);
    }

    /// Wait until no call is inside `gen` (which `install` or `take` just unpublished), for
    /// at most `timeout`, then drop it (plugin shutdown, code unmapped). On timeout the
    /// generation is kept until the last call inside it returns, which then frees it: code
    /// is never freed under a running call.
    pub fn drain(&self, gen: Arc<Generation>, timeout: Duration) -> Result<()> {
        barrier::heavy();
        let start = Instant::now();
        let mut sleep = Duration::from_micros(50);
        while Self::in_use(&gen) {
            if start.elapsed() >= timeout {
                let number = gen.number;
                self.retired.lock().push(gen);
                self.has_retired.store(true, Ordering::SeqCst);
                // The last call may have left between the check and the push.
                self.reap();
                bail!(
                    KEEL_ERR_DRAIN_TIMEOUT,
                    "plugin '{}' generation {number}: calls still in flight after {} ms; its code stays mapped until they return",
                    self.name,
                    timeout.as_millis()
                );
            }
            std::thread::sleep(sleep);
            sleep = (sleep * 2).min(Duration::from_millis(5));
        }
        drop(gen);
        Ok(())
    }

    #[cold]
    fn unloaded(&self) -> crate::error::Error {
        err!(KEEL_ERR_PLUGIN_UNLOADED, "plugin '{}' has been unloaded", self.name)
    }

    #[cold]
    fn no_function(&self, function: u32) -> crate::error::Error {
        let fns = self.functions.lock();
        match fns.get(function as usize) {
            Some(n) => err!(
                KEEL_ERR_FUNCTION_NOT_FOUND,
                "plugin '{}' (this generation) has no function '{n}'",
                self.name
            ),
            None => err!(
                KEEL_ERR_FUNCTION_NOT_FOUND,
                "function id {function} was not resolved for plugin '{}'",
                self.name
            ),
        }
    }
}

/// Name → slot, copy-on-write. Mutations must be serialised by the caller (the host's
/// lifecycle lock); reads are lock-free.
#[derive(Default)]
pub struct Registry {
    map: ArcSwap<HashMap<String, Arc<Slot>>>,
}

impl Registry {
    pub fn get(&self, name: &str) -> Option<Arc<Slot>> {
        self.map.load().get(name).cloned()
    }

    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.map.load().keys().cloned().collect();
        v.sort();
        v
    }

    pub fn slots(&self) -> Vec<Arc<Slot>> {
        let mut v: Vec<Arc<Slot>> = self.map.load().values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    pub fn len(&self) -> usize {
        self.map.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Insert a slot. Caller holds the host's lifecycle lock.
    pub fn insert(&self, slot: Arc<Slot>) {
        let mut m = HashMap::clone(&self.map.load());
        m.insert(slot.name.clone(), slot);
        self.map.store(Arc::new(m));
    }

    /// Remove a slot by name. Caller holds the host's lifecycle lock.
    pub fn remove(&self, name: &str) -> Option<Arc<Slot>> {
        let mut m = HashMap::clone(&self.map.load());
        let r = m.remove(name);
        self.map.store(Arc::new(m));
        r
    }
}
