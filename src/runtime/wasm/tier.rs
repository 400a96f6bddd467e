//! Tier-up of plugins loaded under the `tiered` compiler policy ([`super::WasmCompiler`]).
//!
//! A tiered plugin is loaded on Singlepass code (compiled in about linear time, so its first
//! call comes early). [`spawn`] then starts one thread that compiles the same verified bytes
//! with Cranelift (the same middlewares, cap and memory mode: [`super::engine::compiling`]),
//! stores the result in the compiled-module cache when the node has one (the next load of
//! these bytes is a Cranelift cache hit and skips the first tier), and switches the plugin:
//!
//! - pooled: the plugin's code is replaced, then its epoch bumped; idle instances of the
//!   first tier are dropped at once, those in flight when they are next claimed, and new
//!   ones are made lazily from the Cranelift code with the pool's usual set-up (keel_init,
//!   the handed-over state). The call path is the same as before: one atomic load of the
//!   epoch per claim, which it already did;
//! - serial, with `keel_save_state` and `keel_restore_state`: under the plugin's lock, the
//!   state is saved from the running instance and restored into a new Cranelift instance,
//!   which then replaces it; on any failure the old instance stays (its state is never
//!   lost) and the plugin keeps its first tier;
//! - serial without them: the plugin keeps its first tier until its next reload (whose load
//!   hits the Cranelift code in the cache, if there is one).
//!
//! One Cranelift compile of a tier-up runs at a time in the process (wasmer's Cranelift
//! already compiles a module's functions on every core): tier-up threads of further plugins
//! wait their turn asleep, and one whose plugin was unloaded meanwhile ends without compiling.
//!
//! The thread holds the plugin weakly: a plugin unloaded during the compile is freed as
//! usual (its instances are dropped by whoever drops the plugin), and the thread ends after
//! the compile without touching it ([`TierUp::Abandoned`]).

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use wasmer::{Module, Pages};

use super::cache::ModuleCache;
use super::plugin::{AnyGuest, Code, Mode, PluginShared};
use super::{engine, wr, Counters, MemoryMode, WasmTier};
use crate::err;
use crate::error::Result;
use crate::runtime::LogLevel;

/// Where a tiered plugin's tier-up is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TierUp {
    /// The plugin has no tier-up: not tiered, or loaded from Cranelift code in the cache.
    NotTiered,
    /// The Cranelift compile is running; the plugin runs its first tier.
    Compiling,
    /// The plugin switched to its Cranelift code.
    Switched,
    /// The Cranelift code was compiled (and cached), but the plugin keeps its first tier until
    /// its next reload; the reason says why (a serial plugin without keel_save_state and
    /// keel_restore_state, or a switch that failed and kept the old instance).
    Kept(String),
    /// The Cranelift compile failed; the plugin keeps its first tier.
    Failed(String),
    /// The plugin was unloaded before the switch.
    Abandoned,
}

/// Shared by a plugin and its tier-up thread: the tier-up's status, and a condition variable
/// signalled when it ends.
#[derive(Clone)]
pub struct TierWatch(Arc<(Mutex<TierUp>, Condvar)>);

impl TierWatch {
    fn new() -> TierWatch {
        TierWatch(Arc::new((Mutex::new(TierUp::Compiling), Condvar::new())))
    }

    /// The status now.
    pub fn status(&self) -> TierUp {
        self.0 .0.lock().clone()
    }

    /// Wait up to `timeout` for the tier-up to end; the status then.
    pub fn wait(&self, timeout: Duration) -> TierUp {
        let until = Instant::now() + timeout;
        let (m, cv) = &*self.0;
        let mut s = m.lock();
        while *s == TierUp::Compiling {
            if cv.wait_until(&mut s, until).timed_out() {
                break;
            }
        }
        s.clone()
    }

    fn end(&self, status: TierUp) {
        let (m, cv) = &*self.0;
        *m.lock() = status;
        cv.notify_all();
    }
}

/// What a tier-up needs besides the plugin: the verified bytes and how the first tier was
/// compiled (the Cranelift code must match it), and the runtime's cache.
pub(crate) struct Job {
    pub name: Arc<str>,
    pub bytes: Arc<[u8]>,
    pub sha256: [u8; 32],
    pub cap: Pages,
    pub metering: bool,
    pub mode: MemoryMode,
    pub cache: Option<Arc<ModuleCache>>,
    pub cache_lock: Arc<Mutex<()>>,
    pub counters: Arc<Counters>,
}

/// Start the tier-up thread of the plugin whose shared part and instances are `shared` and
/// `mode`.
pub(crate) fn spawn(job: Job, shared: Weak<PluginShared>, mode: Weak<Mode>) -> Result<TierWatch> {
    let watch = TierWatch::new();
    let w = watch.clone();
    std::thread::Builder::new()
        .name("keel-tier-up".into())
        .spawn(move || {
            // A panic in the compiler must not leave waiters waiting: the plugin keeps its
            // first tier, and the tier-up says why.
            let status = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(job, &shared, &mode)))
                .unwrap_or_else(|_| TierUp::Failed("tier-up: the Cranelift compile panicked".into()));
            w.end(status);
        })
        .map_err(|e| err!(KEEL_ERR_INTERNAL, "starting the tier-up thread failed: {e}"))?;
    Ok(watch)
}

fn log(shared: &Weak<PluginShared>, name: &str, level: LogLevel, msg: &str) {
    if let Some(s) = shared.upgrade() {
        s.services.log(name, level, msg);
    }
}

/// Held by the tier-up whose Cranelift compile is running.
static COMPILE_TURN: Mutex<()> = parking_lot::const_mutex(());

fn run(job: Job, shared: &Weak<PluginShared>, mode: &Weak<Mode>) -> TierUp {
    let _turn = COMPILE_TURN.lock();
    if shared.strong_count() == 0 {
        return TierUp::Abandoned;
    }
    let name = &*job.name;
    let engine = engine::compiling(WasmTier::Cranelift, job.cap, job.metering, job.mode);
    let module = match Module::from_binary(&engine, &job.bytes) {
        Ok(m) => m,
        Err(e) => {
            let msg = format!("tier-up: Cranelift did not compile the module: {e}; the plugin keeps Singlepass");
            log(shared, name, LogLevel::Warn, &msg);
            return TierUp::Failed(msg);
        }
    };
    job.counters.compiles.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if let Some(cache) = &job.cache {
        let key = engine::engine_key(WasmTier::Cranelift, job.cap, job.metering, job.mode);
        let stored = module
            .serialize()
            .map_err(|e| err!(KEEL_ERR_INTERNAL, "serializing: {e}"))
            .and_then(|b| {
                let _g = job.cache_lock.lock();
                cache.store(&job.sha256, &key, &b)
            });
        if let Err(e) = stored {
            log(
                shared,
                name,
                LogLevel::Warn,
                &format!("tier-up: could not write the compiled-module cache: {e}"),
            );
        }
    }
    let code = Code::Wasmer(wr::Code {
        engine,
        module,
        tier: WasmTier::Cranelift,
    });
    // Only now hold the plugin (briefly): if it was unloaded meanwhile, nothing is left to do.
    let (Some(shared), Some(mode)) = (shared.upgrade(), mode.upgrade()) else {
        return TierUp::Abandoned;
    };
    switch(&shared, &mode, code)
}

/// Switch the plugin to `code` (see the module's description).
fn switch(shared: &Arc<PluginShared>, mode: &Mode, code: Code) -> TierUp {
    use std::sync::atomic::Ordering;
    match mode {
        Mode::Pooled(pool) => {
            shared.code.store(Arc::new(code));
            // After the store: an instance that reads this epoch reads the new code.
            let epoch = shared.epoch.fetch_add(1, Ordering::AcqRel) + 1;
            pool.retain(|g| g.ctl_epoch() == epoch);
            TierUp::Switched
        }
        Mode::Serial(m) => {
            if !(shared.exports.save_state && shared.exports.restore_state) {
                return TierUp::Kept(
                    "a serial plugin without keel_save_state and keel_restore_state keeps its first tier until its next reload"
                        .into(),
                );
            }
            let mut slot = m.lock();
            let Some(old) = slot.as_mut() else {
                // No instance (the last one was discarded): the next call makes one anew,
                // from the new code; there is no state to carry.
                shared.code.store(Arc::new(code));
                return TierUp::Switched;
            };
            match move_state(shared, old, &code) {
                Ok(new) => {
                    shared.code.store(Arc::new(code));
                    *slot = Some(new);
                    TierUp::Switched
                }
                Err(e) => {
                    if !old.usable() {
                        // As after any failed entry: the instance is not reused.
                        *slot = None;
                    }
                    let msg = format!("tier-up: moving the state to the Cranelift instance failed ({e}); the plugin keeps its Singlepass instance");
                    shared.services.log(&shared.name, LogLevel::Warn, &msg);
                    TierUp::Kept(msg)
                }
            }
        }
    }
}

/// A new instance of `code` holding the state saved from `old` (which keeps it too).
fn move_state(shared: &Arc<PluginShared>, old: &mut AnyGuest, code: &Code) -> Result<AnyGuest> {
    let state = old.save_state()?.unwrap_or_default();
    let epoch = shared.epoch.load(std::sync::atomic::Ordering::Acquire);
    let mut new = AnyGuest::of_code(shared, code, epoch)?;
    new.restore_state(&state)?;
    Ok(new)
}
