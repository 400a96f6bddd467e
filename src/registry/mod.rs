//! The registry: plugin name → [`Slot`]; a slot holds the current [`Generation`] in a
//! generation cell ([`cell`]).
//!
//! Readers never take an exclusive lock: the name map is a copy-on-write `ArcSwap`
//! (writers are serialised by the host's lifecycle lock), and a call does one atomic load
//! of the slot's generation under a hazard pointer. A generation swapped out is dropped
//! (its plugin shut down and its code unmapped) only when the last call inside it has
//! returned, and always on a Keel thread: the lifecycle thread that drains it, or the
//! reclaimer thread when the drain timed out — never on the caller's thread.

pub(crate) mod cell;
mod hazard;
mod pmap;

/// The gate a stateful reload closes. `seq` is odd while a hold is in force: it is bumped
/// before the generation is unpublished and again after the new one is published, so a call
/// that finds no generation can tell "held" (wait for the swap) from "unloaded" (no hold
/// began or ended around its read). Cold path only; the hot path never reads it.
#[derive(Default)]
struct Hold {
    seq: AtomicU64,
    timeout_ns: AtomicU64,
    lock: Mutex<()>,
    cv: Condvar,
}

impl Hold {
    fn seq(&self) -> u64 {
        self.seq.load(Ordering::SeqCst)
    }

    fn begin(&self, timeout: Duration) {
        self.timeout_ns
            .store(timeout.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
        let _g = self.lock.lock();
        // SeqCst, and before the generation is unpublished: a call that reads the null
        // pointer (Acquire on the cell's SeqCst swap) then sees the odd value.
        self.seq.fetch_add(1, Ordering::SeqCst);
    }

    fn end(&self) {
        {
            let _g = self.lock.lock();
            self.seq.fetch_add(1, Ordering::SeqCst);
        }
        self.cv.notify_all();
    }

    /// Wait until `seq` moves past `seen` (the hold ended); `Some(waited ms)` on timeout.
    fn wait_past(&self, seen: u64) -> Option<u128> {
        let timeout = Duration::from_nanos(self.timeout_ns.load(Ordering::Relaxed));
        let start = Instant::now();
        let mut g = self.lock.lock();
        while self.seq.load(Ordering::SeqCst) == seen {
            let left = timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Some(start.elapsed().as_millis());
            }
            self.cv.wait_for(&mut g, left);
        }
        None
    }
}

#[cfg(all(test, loom))]
mod loom_tests;
mod reclaim;
#[cfg(all(test, not(loom)))]
mod tests;

pub use cell::Unpublished;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use parking_lot::{Condvar, Mutex};

use crate::capability::Capabilities;
use crate::error::{keel_status, Result};
use crate::health_state::HealthCell;
use crate::manifest::Manifest;
use crate::metrics::exposition::PluginLabels;
use crate::metrics::PluginMetrics;
use crate::runtime::Instance;
use crate::services::call::{self, CallOptions};
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
    /// The label text of this generation's metric series (name and version), rendered once
    /// here rather than at every scrape.
    pub labels: Arc<PluginLabels>,
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
            labels: Arc::new(PluginLabels::new(&manifest.name, &manifest.version.to_string())),
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
    /// The current generation: hazard-protected for calls, strong references for lifecycle
    /// code, lookups and the health monitor.
    cell: cell::GenerationCell<Generation>,
    /// Function names resolved by hosts; a name's position is its stable function id.
    functions: Mutex<Vec<String>>,
    /// Serialises lifecycle operations (reload, unload) on this slot; never taken by calls.
    pub(crate) lifecycle: Mutex<()>,
    pub metrics: PluginMetrics,
    /// The health monitor's last report on this plugin (never touched by calls).
    pub health: HealthCell,
    next_generation: AtomicU64,
    /// Set while a stateful reload holds calls (from saving the state to the swap); a call
    /// that finds no generation waits on it instead of failing as unloaded.
    hold: Hold,
}

impl Slot {
    pub fn new(name: String) -> Slot {
        Slot {
            name,
            cell: cell::GenerationCell::new(),
            functions: Mutex::new(Vec::new()),
            lifecycle: Mutex::new(()),
            metrics: PluginMetrics::default(),
            health: HealthCell::default(),
            next_generation: AtomicU64::new(1),
            hold: Hold::default(),
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
        self.cell.load_full()
    }

    pub fn is_loaded(&self) -> bool {
        self.cell.is_some() || self.is_held()
    }

    /// Whether a stateful reload holds calls right now (no generation is published, but the
    /// plugin is loaded: the new generation is published when the hold ends).
    pub fn is_held(&self) -> bool {
        self.hold.seq() % 2 == 1
    }

    /// The current generation for readers of metadata (not the call path): during a
    /// stateful reload's hold it waits, bounded by the reload's timeout, for the generation
    /// being swapped in instead of taking the plugin for unloaded. `None` once unloaded (or
    /// if the hold outlasts its timeout).
    pub fn current_settled(&self) -> Option<Arc<Generation>> {
        loop {
            let seq = self.hold.seq();
            if let Some(g) = self.current() {
                return Some(g);
            }
            if seq % 2 == 1 {
                if self.hold.wait_past(seq).is_some() {
                    return None;
                }
                continue;
            }
            // Nothing published and no hold began or ended around that read: unloaded.
            if self.hold.seq() == seq {
                return None;
            }
        }
    }

    /// Resolve a function name to a stable id, valid across reloads of this slot.
    pub fn resolve(&self, name: &str) -> Result<u32> {
        loop {
            let seq = self.hold.seq();
            let done = {
                let mut fns = self.functions.lock();
                self.cell
                    .with_current(|gen| gen.map(|g| self.resolve_in(&mut fns, Some(g), name)))
            };
            if let Some(r) = done {
                return r;
            }
            // No generation published: a stateful reload's hold (wait for its swap, without
            // the functions lock, which the swap needs), or an unload.
            if seq % 2 == 1 {
                if let Some(ms) = self.hold.wait_past(seq) {
                    bail!(
                        KEEL_ERR_BUSY,
                        "plugin '{}' is being reloaded with its state: resolving '{name}' waited {ms} ms for the swap",
                        self.name
                    );
                }
                continue;
            }
            if self.hold.seq() == seq {
                return self.resolve_in(&mut self.functions.lock(), None, name);
            }
        }
    }

    fn resolve_in(&self, fns: &mut Vec<String>, gen: Option<&Generation>, name: &str) -> Result<u32> {
        let Some(gen) = gen else {
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

    /// Install `gen` as the current generation; returns the previous one, which calls may
    /// still be inside: pass it to [`Slot::drain`] (dropping it instead hands it to the
    /// reclaimer thread). The function map of `gen` is filled for every name resolved so far
    /// before it becomes visible.
    pub fn install(&self, gen: Generation) -> Option<Unpublished<Generation>> {
        let fns = self.functions.lock();
        for (id, name) in fns.iter().enumerate() {
            gen.map_function(id as u32, name);
        }
        self.next_generation.store(gen.number + 1, Ordering::Relaxed);
        self.cell.swap(Some(Arc::new(gen)))
    }

    /// Remove the current generation (calls from now on fail with KEEL_ERR_PLUGIN_UNLOADED);
    /// returns it for [`Slot::drain`].
    pub fn take(&self) -> Option<Unpublished<Generation>> {
        let _fns = self.functions.lock();
        self.cell.swap(None)
    }

    /// The call path: one atomic load under a hazard pointer, the call, the sharded
    /// counters. Never frees a generation (that is a Keel thread's job). Only when no
    /// generation is published does a call look at the hold gate (cold path).
    #[inline]
    pub fn call(&self, function: u32, input: &[u8], output: &mut Vec<u8>) -> Result<()> {
        self.cell.with_current(|gen| match gen {
            Some(g) => self.call_in(g, function, input, output),
            None => self.call_held(|g| self.call_in(g, function, input, output)),
        })
    }

    /// A call with options ([`CallOptions`]): as [`Slot::call`], with `opts` this thread's
    /// current call context for the call's duration. A token already cancelled: the call is
    /// not run (`KEEL_ERR_CANCELLED`). A deadline is capped at the plugin's own
    /// ([`Instance::deadline_cap`]) and turned into the instant it expires. A plugin failure
    /// (`KEEL_ERR_CALL_FAILED`) after the token was cancelled is reported as
    /// `KEEL_ERR_CANCELLED`, after the deadline passed as `KEEL_ERR_DEADLINE`; a success is
    /// reported as such (the work was done).
    pub fn call_with(&self, function: u32, input: &[u8], output: &mut Vec<u8>, opts: &CallOptions<'_>) -> Result<()> {
        if opts.token_cancelled() {
            return Err(err!(
                KEEL_ERR_CANCELLED,
                "plugin '{}': the call's cancel token was cancelled before the call started; it was not run",
                self.name
            ));
        }
        self.cell.with_current(|gen| match gen {
            Some(g) => self.call_in_with(g, function, input, output, opts),
            None => self.call_held(|g| self.call_in_with(g, function, input, output, opts)),
        })
    }

    fn call_in_with(
        &self,
        gen: &Generation,
        function: u32,
        input: &[u8],
        output: &mut Vec<u8>,
        opts: &CallOptions<'_>,
    ) -> Result<()> {
        let idx = match gen.fn_map.get(function as usize) {
            Some(a) => a.load(Ordering::Acquire),
            None => UNRESOLVED,
        };
        if idx == UNRESOLVED {
            return Err(self.no_function(function));
        }
        output.clear();
        let mut local = *opts;
        if let Some(d) = opts.deadline {
            let d = gen.instance.deadline_cap().map_or(d, |cap| d.min(cap));
            local.deadline = Some(d);
            local.expires = Instant::now().checked_add(d);
        }
        let r = self
            .metrics
            .observe(|| call::with_options(&local, || gen.instance.call_with(idx, input, output, &local)));
        match r {
            Err(e) if e.status() == keel_status::KEEL_ERR_CALL_FAILED && local.token_cancelled() => Err(err!(
                KEEL_ERR_CANCELLED,
                "plugin '{}' failed after its call was cancelled: {}",
                self.name,
                e.message()
            )),
            Err(e) if e.status() == keel_status::KEEL_ERR_CALL_FAILED && local.is_expired() => Err(err!(
                KEEL_ERR_DEADLINE,
                "plugin '{}' failed after its call's deadline of {} ms had passed: {}",
                self.name,
                local.deadline.unwrap_or_default().as_millis(),
                e.message()
            )),
            r => r,
        }
    }

    /// No generation published: either unloaded, or a stateful reload holds calls. Wait for
    /// the hold to end (bounded by the timeout the reload gave), then call the generation
    /// that is published then.
    #[cold]
    #[inline(never)]
    fn call_held(&self, mut call_in: impl FnMut(&Generation) -> Result<()>) -> Result<()> {
        loop {
            let seq = self.hold.seq();
            if seq % 2 == 1 {
                if let Some(ms) = self.hold.wait_past(seq) {
                    return Err(err!(
                        KEEL_ERR_BUSY,
                        "plugin '{}' is being reloaded with its state: the call waited {ms} ms for the swap and was not run",
                        self.name
                    ));
                }
                continue;
            }
            let done = self.cell.with_current(|gen| gen.map(&mut call_in));
            if let Some(r) = done {
                return r;
            }
            // Nothing published, and no hold began or ended around that read: unloaded.
            if self.hold.seq() == seq {
                return Err(self.unloaded());
            }
        }
    }

    /// Start holding calls for a stateful reload: calls arriving from now on wait (at most
    /// `timeout`) instead of entering a generation; the current generation is unpublished and
    /// returned. Caller holds the slot's lifecycle lock and must call [`Slot::release`].
    pub fn hold(&self, timeout: Duration) -> Option<Unpublished<Generation>> {
        self.hold.begin(timeout);
        let old = self.take();
        if old.is_none() {
            self.hold.end();
        }
        old
    }

    /// Wait (at most `timeout`) until no call is inside the held generation; it stays alive.
    pub fn wait_quiet(&self, gen: &Unpublished<Generation>, timeout: Duration) -> Result<()> {
        gen.wait_quiet(timeout).map_err(|why| {
            err!(
                KEEL_ERR_DRAIN_TIMEOUT,
                "plugin '{}' generation {}: calls still in flight after {} ms ({why:?}); the reload is rolled back",
                self.name,
                gen.number,
                timeout.as_millis()
            )
        })
    }

    /// Publish a held generation again (a stateful reload rolled back).
    pub fn republish(&self, gen: Unpublished<Generation>) {
        let _fns = self.functions.lock();
        let previous = self.cell.swap(Some(gen.into_arc()));
        debug_assert!(previous.is_none(), "republish while another generation is published");
        drop(previous);
    }

    /// End a hold: waiting calls go on with whatever generation is published now.
    pub fn release(&self) {
        self.hold.end();
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

    /// Wait until no call is inside `gen` (which `install` or `take` just unpublished) and
    /// nobody else holds it, for at most `timeout`, then drop it here (plugin shutdown, code
    /// unmapped). On timeout the generation goes to Keel's reclaimer thread, which frees it
    /// once the last call inside it has returned: code is never freed under a running call,
    /// and never on a caller's thread.
    pub fn drain(&self, gen: Unpublished<Generation>, timeout: Duration) -> Result<()> {
        let number = gen.number;
        match gen.drain(timeout) {
            Ok(()) => Ok(()),
            Err(cell::NotDrained::InUse) => bail!(
                KEEL_ERR_DRAIN_TIMEOUT,
                "plugin '{}' generation {number}: calls still in flight after {} ms; its code stays mapped until they return",
                self.name,
                timeout.as_millis()
            ),
            Err(cell::NotDrained::BarrierFailed) => bail!(
                KEEL_ERR_DRAIN_TIMEOUT,
                "plugin '{}' generation {number}: the memory barrier (membarrier) failed for {} ms, so no call can be proven finished; its code stays mapped and is freed once a barrier succeeds",
                self.name,
                timeout.as_millis()
            ),
        }
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

/// Name → slot, copy-on-write: a persistent hash trie ([`pmap`]) published through an
/// `ArcSwap`, so an insert or a removal copies O(log n) nodes, not the map. Mutations must be
/// serialised by the caller (the host's lifecycle lock); reads are lock-free.
#[derive(Default)]
pub struct Registry {
    map: ArcSwap<pmap::PMap<Arc<Slot>>>,
}

impl Registry {
    pub fn get(&self, name: &str) -> Option<Arc<Slot>> {
        self.map.load().get(name).cloned()
    }

    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = Vec::with_capacity(self.len());
        self.map.load().for_each(|k, _| v.push(k.to_string()));
        v.sort();
        v
    }

    pub fn slots(&self) -> Vec<Arc<Slot>> {
        let mut v: Vec<Arc<Slot>> = Vec::with_capacity(self.len());
        self.map.load().for_each(|_, s| v.push(s.clone()));
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
        let m = self.map.load().insert(slot.name.clone(), slot);
        self.map.store(Arc::new(m));
    }

    /// Remove a slot by name. Caller holds the host's lifecycle lock.
    pub fn remove(&self, name: &str) -> Option<Arc<Slot>> {
        let (m, r) = self.map.load().remove(name);
        if r.is_some() {
            self.map.store(Arc::new(m));
        }
        r
    }
}
