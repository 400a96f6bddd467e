//! Model check of the generation cell with loom (the real `hazard`, `cell` and `reclaim`
//! code, loom's atomics; the asymmetric barrier modelled as a `SeqCst` fence on both sides).
//!
//! Run: `RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test --lib loom` (add
//! `--release` for speed; 361 s in the debug profile on a busy 2-core machine). Not part of
//! a normal build or test run. Mutation check done when it was written: making either side
//! of the barrier a no-op makes `loom_read_vs_unpublish_scan_free` fail with a causality
//! violation (use-after-free) within a second.
//!
//! A use-after-free shows up as a loom causality violation: the value's drop writes its
//! `UnsafeCell` (`with_mut`), a read inside `with_current` reads it (`with`), and loom fails
//! the model unless the read happens-before the drop. A leak shows up as a value still
//! retired (or not dropped) after every thread has finished and the reclaimer has scanned.

use std::sync::Arc;

use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicUsize, Ordering};

use super::cell::GenerationCell;
use super::reclaim;

struct Val {
    data: UnsafeCell<u64>,
    dropped: Arc<AtomicUsize>,
}

impl Val {
    fn new(v: u64, dropped: &Arc<AtomicUsize>) -> Arc<Val> {
        Arc::new(Val {
            data: UnsafeCell::new(v),
            dropped: dropped.clone(),
        })
    }

    fn read(&self) -> u64 {
        // SAFETY: nothing writes `data` except `drop`; loom checks that this read
        // happens-before that write (else it reports the use-after-free).
        self.data.with(|p| unsafe { *p })
    }
}

// SAFETY: `data` is written only in `drop` (exclusive access); reads go through loom's
// checked `with`.
unsafe impl Sync for Val {}

impl Drop for Val {
    fn drop(&mut self) {
        // SAFETY: `&mut self`: exclusive; loom checks it against every earlier read.
        self.data.with_mut(|p| unsafe { *p = 0 });
        self.dropped.fetch_add(1, Ordering::SeqCst);
    }
}

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    b.check(f);
}

/// A read against unpublish + barrier + scan + free (the drain's single try): no
/// use-after-free; and once both are done, a reclaimer pass frees it (no leak).
#[test]
fn loom_read_vs_unpublish_scan_free() {
    model(|| {
        let dropped = Arc::new(AtomicUsize::new(0));
        let cell = Arc::new(GenerationCell::new());
        cell.swap(Some(Val::new(7, &dropped)));
        let c = cell.clone();
        let reader = loom::thread::spawn(move || c.with_current(|g| g.map(Val::read)));
        let old = cell.swap(None).unwrap();
        // Dropping the unpublished value retires it; one reclaimer pass scans and frees
        // what no hazard holds (the lifecycle thread's drain does the same try).
        drop(old);
        reclaim::run_once();
        let r = reader.join().unwrap();
        assert!(r.is_none() || r == Some(7));
        assert_eq!(reclaim::run_once(), 0, "leaked after both sides finished");
        assert_eq!(dropped.load(Ordering::SeqCst), 1);
    });
}

/// The retire path: the reader may still be inside when the writer gives up, and the
/// reclaimer scans concurrently on its own thread. The value is freed exactly once, after
/// the read, and nothing stays retired after everyone is done — whichever side finishes
/// last (the ordering that once let both sides miss each other).
#[test]
fn loom_retire_vs_last_read_vs_reclaimer() {
    model(|| {
        let dropped = Arc::new(AtomicUsize::new(0));
        let cell = Arc::new(GenerationCell::new());
        cell.swap(Some(Val::new(1, &dropped)));
        let c = cell.clone();
        let reader = loom::thread::spawn(move || c.with_current(|g| g.map(Val::read)));
        let writer = {
            let cell = cell.clone();
            let d = dropped.clone();
            loom::thread::spawn(move || {
                // Publish a replacement; the old one goes to the reclaimer.
                drop(cell.swap(Some(Val::new(2, &d))));
            })
        };
        let reclaimer = loom::thread::spawn(|| {
            reclaim::run_once();
        });
        let r = reader.join().unwrap();
        writer.join().unwrap();
        reclaimer.join().unwrap();
        assert!(r == Some(1) || r == Some(2));
        assert_eq!(reclaim::run_once(), 0, "leaked after both sides finished");
        assert_eq!(dropped.load(Ordering::SeqCst), 1);
        // The replacement is alive and readable.
        assert_eq!(cell.with_current(|g| g.map(Val::read)), Some(2));
    });
}

/// A strong reference taken through the hazard (`load_full`) keeps the value alive after
/// the writer retired it: the increment happens under the hazard, and a reclaimer pass
/// running meanwhile must not free the value the holder is reading. (The holder hands its
/// reference back through `join`: loom does not model std `Arc`'s own counter, whose
/// Release/Acquire pairing for a drop on another thread is std's guarantee, not ours.)
#[test]
fn loom_load_full_vs_retire() {
    model(|| {
        let dropped = Arc::new(AtomicUsize::new(0));
        let cell = Arc::new(GenerationCell::new());
        cell.swap(Some(Val::new(3, &dropped)));
        let c = cell.clone();
        let holder = loom::thread::spawn(move || {
            let v = c.load_full();
            let r = v.as_ref().map(|v| v.read());
            (v, r)
        });
        drop(cell.swap(None));
        reclaim::run_once();
        let (v, r) = holder.join().unwrap();
        assert!(r.is_none() || r == Some(3));
        drop(v);
        assert_eq!(reclaim::run_once(), 0, "leaked after both sides finished");
        assert_eq!(dropped.load(Ordering::SeqCst), 1);
    });
}
