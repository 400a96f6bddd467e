//! The reclaimer: one Keel thread (`keel-reclaim`, started on first use) that frees
//! unpublished generations whose drain timed out (or which were dropped undrained).
//!
//! While it holds retired generations it scans with [`super::cell::try_free`] — heavy
//! barrier, hazard scan, `Arc::try_unwrap` — every 1 ms at first, backing off to
//! [`MAX_INTERVAL`] while nothing becomes free, and parks when the list is empty. A
//! generation is therefore freed at most `MAX_INTERVAL` after its last call returned (and
//! its last strong reference was dropped), on this thread: never on a caller's thread.
//! A failed barrier keeps everything for the next scan.

use std::sync::Arc;

use super::cell::try_free;

/// Longest pause between two scans while generations are retired.
#[cfg(not(loom))]
pub(crate) const MAX_INTERVAL: std::time::Duration = std::time::Duration::from_millis(20);

/// A retired generation of any type.
trait Retired: Send {
    /// Free it if nothing holds it; otherwise give it back. Only after a successful
    /// heavy barrier that ran after it was unpublished.
    fn try_free(self: Box<Self>) -> Option<Box<dyn Retired>>;
}

impl<T: Send + Sync + 'static> Retired for Arc<T> {
    fn try_free(self: Box<Self>) -> Option<Box<dyn Retired>> {
        match try_free(*self, true) {
            Ok(()) => None,
            Err((g, _)) => Some(Box::new(g)),
        }
    }
}

/// One pass over `batch`: one heavy barrier (entries may come straight from a swap — a
/// dropped `Unpublished` — with none run since), then free what no read and no strong
/// reference holds; returns the rest. If the barrier fails nothing is freed.
fn scan(batch: Vec<Box<dyn Retired>>) -> Vec<Box<dyn Retired>> {
    if crate::barrier::heavy().is_err() {
        return batch;
    }
    batch.into_iter().filter_map(|r| r.try_free()).collect()
}

#[cfg(not(loom))]
mod thread {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::thread::Thread;
    use std::time::Duration;

    use parking_lot::Mutex;

    use super::{scan, Retired, MAX_INTERVAL};

    pub(super) static LIST: Mutex<Vec<Box<dyn Retired>>> = Mutex::new(Vec::new());
    static THREAD: Mutex<Option<Thread>> = Mutex::new(None);
    /// Retired generations not freed yet (in the list or in the scan running now).
    pub(super) static PENDING: AtomicUsize = AtomicUsize::new(0);

    /// Wake the reclaimer, starting it if needed. If the thread cannot be started the
    /// generations stay in the list (a leak, reported by `pending`) and the next retire
    /// tries again: they are never freed on the caller's thread.
    pub(super) fn wake() {
        let mut t = THREAD.lock();
        if t.is_none() {
            *t = std::thread::Builder::new()
                .name("keel-reclaim".into())
                .spawn(run)
                .ok()
                .map(|h| h.thread().clone());
        }
        if let Some(t) = t.as_ref() {
            t.unpark();
        }
    }

    fn run() {
        #[cfg(test)]
        crate::barrier::subject_to_forced_failures();
        let mut interval = Duration::from_millis(1);
        loop {
            let batch = std::mem::take(&mut *LIST.lock());
            if batch.is_empty() {
                std::thread::park();
                interval = Duration::from_millis(1);
                continue;
            }
            let before = batch.len();
            let kept = scan(batch);
            let freed = before - kept.len();
            PENDING.fetch_sub(freed, Ordering::AcqRel);
            let more = {
                let mut list = LIST.lock();
                list.extend(kept);
                !list.is_empty()
            };
            if more {
                std::thread::park_timeout(interval);
                interval = if freed > 0 {
                    Duration::from_millis(1)
                } else {
                    (interval * 2).min(MAX_INTERVAL)
                };
            }
        }
    }
}

/// Hand an unpublished generation to the reclaimer thread.
#[cfg(not(loom))]
pub(crate) fn retire<T: Send + Sync + 'static>(gen: Arc<T>) {
    thread::PENDING.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    thread::LIST.lock().push(Box::new(gen));
    thread::wake();
}

/// Retired generations not freed yet.
#[cfg(all(test, not(loom)))]
pub(crate) fn pending() -> usize {
    thread::PENDING.load(std::sync::atomic::Ordering::Acquire)
}

// Under loom there is no thread: the model runs the reclaimer's scan itself.
#[cfg(loom)]
loom::lazy_static! {
    static ref LIST: loom::sync::Mutex<Vec<Box<dyn Retired>>> = loom::sync::Mutex::new(Vec::new());
}

#[cfg(loom)]
pub(crate) fn retire<T: Send + Sync + 'static>(gen: Arc<T>) {
    LIST.lock().unwrap().push(Box::new(gen));
}

/// One reclaimer pass (loom model); returns how many generations are still retired.
#[cfg(loom)]
pub(crate) fn run_once() -> usize {
    let batch = std::mem::take(&mut *LIST.lock().unwrap());
    let kept = scan(batch);
    let mut list = LIST.lock().unwrap();
    list.extend(kept);
    list.len()
}
