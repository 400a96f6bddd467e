//! The generation cell: the one place that publishes, protects, unpublishes and frees a
//! plugin's generations.
//!
//! A [`GenerationCell`] owns one strong reference to the published value as a raw pointer
//! (`Arc::into_raw`). Readers reach it only inside [`GenerationCell::with_current`] (a
//! hazard-protected borrow: no reference count, no shared write) or take a strong reference
//! with [`GenerationCell::load_full`]. A writer [`GenerationCell::swap`]s a new value in and
//! gets the old one back as an [`Unpublished`], which can be freed in exactly two ways,
//! both on a Keel thread and never inside a caller's read:
//!
//! - [`Unpublished::drain`] on the lifecycle thread: run the heavy barrier, wait (bounded)
//!   until no hazard and no other strong reference holds it, drop it there;
//! - otherwise (drain timed out, or the `Unpublished` was simply dropped) it is handed to
//!   the reclaimer thread ([`super::reclaim`]), which re-checks with the heavy barrier and
//!   frees it once the last read inside it has returned.
//!
//! A read never frees anything: it publishes a hazard, runs, clears the hazard — the
//! plugin's shutdown and `dlclose` never run on a database worker thread. Nothing a reader
//! does needs to be seen by a flag the writer sets, so there is no "retired" flag whose
//! ordering against the hazard clear could be missed by both sides: the reclaimer polls,
//! with a heavy barrier before every scan.
//!
//! If the heavy barrier fails (see [`crate::barrier`]), the generation counts as in use:
//! it is kept (retired) and the next scan retries; it is never freed on a weakened proof.

use std::ops::Deref;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[cfg(loom)]
use loom::sync::atomic::{AtomicPtr, Ordering};
#[cfg(not(loom))]
use std::sync::atomic::{AtomicPtr, Ordering};

use super::hazard;
use crate::barrier;

/// A published value readers can borrow without a reference count.
pub(crate) struct GenerationCell<T: Send + Sync + 'static> {
    /// Null, or a pointer from `Arc::into_raw` whose strong reference this cell owns.
    fast: AtomicPtr<T>,
}

impl<T: Send + Sync + 'static> GenerationCell<T> {
    pub(crate) fn new() -> Self {
        barrier::init();
        GenerationCell {
            fast: AtomicPtr::new(std::ptr::null_mut()),
        }
    }

    /// Run `f` with the current value (`None` if nothing is published). The value cannot be
    /// freed while `f` runs, even if a writer unpublishes it meanwhile. `f` may call into
    /// this or other cells (nesting is unbounded).
    #[inline(always)]
    pub(crate) fn with_current<R>(&self, f: impl FnOnce(Option<&T>) -> R) -> R {
        hazard::protected(&self.fast, |p| {
            // SAFETY: `p` is null or came from `Arc::into_raw` and was published in `fast`
            // when `protected` re-checked it, with a hazard set before that re-check. A
            // writer frees an unpublished value only after `heavy()` succeeded and a scan
            // found no hazard on it (`is_protected`), which cannot happen before this hazard
            // is cleared when `f` returns; the strong reference the cell held stays with
            // the `Unpublished` until then. So `*p` is alive for the whole borrow.
            f(unsafe { p.as_ref() })
        })
    }

    /// A strong reference to the current value (for lifecycle code, not the call path).
    pub(crate) fn load_full(&self) -> Option<Arc<T>> {
        hazard::protected(&self.fast, |p| {
            if p.is_null() {
                return None;
            }
            // SAFETY: `p` is protected (see `with_current`), so the allocation is alive and
            // its strong count is at least 1 (held by the cell or the `Unpublished`);
            // adding one and rebuilding an `Arc` from the `into_raw` pointer is sound.
            unsafe {
                Arc::increment_strong_count(p);
                Some(Arc::from_raw(p))
            }
        })
    }

    /// Whether a value is published (no dereference).
    pub(crate) fn is_some(&self) -> bool {
        !self.fast.load(Ordering::Acquire).is_null()
    }

    /// Publish `new` and unpublish the previous value. Writers must be serialised by the
    /// caller (the slot's function lock). The old value may still be read by calls that
    /// started before: free it through [`Unpublished::drain`] (or drop it: the reclaimer
    /// frees it).
    pub(crate) fn swap(&self, new: Option<Arc<T>>) -> Option<Unpublished<T>> {
        let raw = new.map_or(std::ptr::null_mut(), |a| Arc::into_raw(a) as *mut T);
        let old = self.fast.swap(raw, Ordering::SeqCst);
        if old.is_null() {
            return None;
        }
        // SAFETY: `old` was stored by a previous `swap` from `Arc::into_raw`, and the
        // strong reference it stood for moves from the cell to the returned value (the
        // swap removed it from `fast`, so no later read can reach it).
        let gen = unsafe { Arc::from_raw(old) };
        Some(Unpublished { gen: Some(gen) })
    }
}

impl<T: Send + Sync + 'static> Drop for GenerationCell<T> {
    fn drop(&mut self) {
        let p = self.fast.swap(std::ptr::null_mut(), Ordering::Acquire);
        if !p.is_null() {
            // SAFETY: `p` is the cell's own `into_raw` reference. Hazards on it are set only
            // inside `with_current`/`load_full`, which borrow the cell; `&mut self` proves no
            // such borrow exists, so no read is inside and dropping the reference is safe.
            drop(unsafe { Arc::from_raw(p) });
        }
    }
}

/// A value a [`GenerationCell::swap`] unpublished: readable (it derefs to the value) but no
/// longer reachable by new reads. Dropping it hands it to the reclaimer thread.
pub struct Unpublished<T: Send + Sync + 'static> {
    gen: Option<Arc<T>>,
}

/// Why [`Unpublished::drain`] did not free the value (it was handed to the reclaimer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotDrained {
    /// Reads or strong references were still there when the timeout passed.
    InUse,
    /// The heavy barrier failed on every try: the reads could not be proven finished.
    BarrierFailed,
}

impl<T: Send + Sync + 'static> Deref for Unpublished<T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.gen.as_ref().expect("present until drained or dropped")
    }
}

impl<T: Send + Sync + 'static> Unpublished<T> {
    /// Wait at most `timeout` until no read is inside the value, keeping it alive (for a
    /// stateful reload: the state is saved once no call can change it any more). Strong
    /// references do not count: they are not calls. After `Ok`, no read can enter the value
    /// again while it stays unpublished.
    pub(crate) fn wait_quiet(&self, timeout: Duration) -> Result<(), NotDrained> {
        let gen = self.gen.as_ref().expect("present until drained or dropped");
        let start = Instant::now();
        let mut sleep = Duration::from_micros(20);
        let mut fenced = false;
        loop {
            // After one successful heavy barrier no read can newly protect the value (it is
            // unpublished); a scan without its hazard then proves every read has left.
            if !fenced {
                fenced = barrier::heavy().is_ok();
            }
            if fenced && !hazard::is_protected(Arc::as_ptr(gen)) {
                return Ok(());
            }
            if start.elapsed() >= timeout {
                return Err(if fenced {
                    NotDrained::InUse
                } else {
                    NotDrained::BarrierFailed
                });
            }
            if !pause(start, sleep, timeout) {
                sleep = (sleep * 2).min(Duration::from_millis(1));
            }
        }
    }

    /// Give the value back as a strong reference (to publish it again), without retiring it.
    pub(crate) fn into_arc(mut self) -> Arc<T> {
        self.gen.take().expect("present until drained or dropped")
    }

    /// Wait at most `timeout` until no read is inside the value and nobody else holds a
    /// strong reference, then drop it on this thread. On timeout the value goes to the
    /// reclaimer thread, which frees it once the last read has returned.
    pub(crate) fn drain(mut self, timeout: Duration) -> Result<(), NotDrained> {
        let mut gen = self.gen.take().expect("present until drained or dropped");
        let start = Instant::now();
        let mut sleep = Duration::from_micros(50);
        let mut fenced = false;
        loop {
            gen = match try_free(gen, fenced) {
                Ok(()) => return Ok(()),
                Err((g, why)) => {
                    fenced |= why == NotDrained::InUse;
                    g
                }
            };
            if start.elapsed() >= timeout {
                super::reclaim::retire(gen);
                return Err(if fenced {
                    NotDrained::InUse
                } else {
                    NotDrained::BarrierFailed
                });
            }
            if !pause(start, sleep, timeout) {
                sleep = (sleep * 2).min(Duration::from_millis(5));
            }
        }
    }
}

/// How long a drain (or a wait for quiet) gives up its CPU with `sched_yield` between scans
/// before it sleeps between them.
const YIELD_PHASE: Duration = Duration::from_millis(2);

/// Wait before the next scan of a drain started at `start`. Returns `true` while it yields
/// (the first [`YIELD_PHASE`]), `false` once it slept `sleep` (capped by what is left of
/// `timeout`).
///
/// Why yield first: a read still inside a generation just unpublished is most often a call
/// whose thread this very thread preempted (more runnable threads than cores: the reload's
/// work took its core). Yielding hands the core back to it; it leaves the generation within
/// its call, and the next scan frees the generation without this thread ever blocking.
/// Sleeping instead (what the drain did before) made the thread wake on a timer, and each
/// wake-up preempted a caller again — a caller stalled for the reload's next stretch of work,
/// measured by benches/reload_tail.rs as 5–9x the > 100 µs call-latency events of a
/// CPU-burning thread. A reload that never blocks shares the cores like any busy thread.
/// Calls that are genuinely long still get the bounded, backed-off sleeps after the first
/// milliseconds, so a slow plugin does not make this thread spin.
fn pause(start: Instant, sleep: Duration, timeout: Duration) -> bool {
    if start.elapsed() < YIELD_PHASE {
        std::thread::yield_now();
        return true;
    }
    std::thread::sleep(sleep.min(timeout.saturating_sub(start.elapsed())));
    false
}

/// Free an unpublished value on this thread if no read is inside it and no other strong
/// reference exists; otherwise give it back with the reason. Runs the heavy barrier first
/// unless `fenced` (one already succeeded since the value was unpublished): after a
/// successful barrier no read can newly protect the value, and a scan that finds no hazard
/// proves every read has left (the scan's Acquire load reads the reader's Release clear or
/// a later Release store of that slot, so the reads happen before the free).
pub(crate) fn try_free<T: Send + Sync + 'static>(gen: Arc<T>, fenced: bool) -> Result<(), (Arc<T>, NotDrained)> {
    if !fenced && barrier::heavy().is_err() {
        return Err((gen, NotDrained::BarrierFailed));
    }
    if hazard::is_protected(Arc::as_ptr(&gen)) {
        return Err((gen, NotDrained::InUse));
    }
    // No read holds it and none can start: only other strong references (load_full) can
    // keep it, and `try_unwrap` decides that with the count's own synchronisation.
    match Arc::try_unwrap(gen) {
        Ok(v) => {
            drop(v);
            Ok(())
        }
        Err(g) => Err((g, NotDrained::InUse)),
    }
}

impl<T: Send + Sync + 'static> Drop for Unpublished<T> {
    fn drop(&mut self) {
        if let Some(gen) = self.gen.take() {
            super::reclaim::retire(gen);
        }
    }
}
