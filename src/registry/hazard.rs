//! Hazard pointers for the call path (crate-private: reached only through
//! [`super::cell::GenerationCell`]).
//!
//! A reader publishes the pointer it is about to dereference in a slot of its thread's
//! record (a plain store, [`barrier::light`], a re-check of the source), runs a closure, and
//! clears the slot when the closure returns or unwinds. A writer unpublishes the pointer,
//! runs [`barrier::heavy`], and may free it only once no record holds it
//! ([`is_protected`]). No reference count is touched and no shared cache line is written
//! per read.
//!
//! The scope is a closure, so slots are cleared in LIFO order by construction: there is no
//! guard a caller could keep or drop out of order. Records are per thread, leaked once and
//! reused by later threads; each has [`SLOTS`] slots for nested reads (a plugin whose host
//! callback calls another plugin). Deeper nesting — and reads from a thread whose
//! thread-local record is already destroyed — borrow a whole spare record from the global
//! list for the duration of the read (lock-free; it allocates only when every record is
//! busy), so nesting depth is unbounded and every read is protected the same way.
//!
//! ## Why it is safe (the argument the loom model checks)
//!
//! Reader: `H = p; light(); q = src; (q == p ? use *p : retry); H = null (Release)`.
//! Writer: `src = p' (SeqCst swap); heavy(); scan all H (Acquire); free p if none == p`.
//! `light()`/`heavy()` form a process-wide store→load barrier pair: either the writer's scan
//! sees `H == p` (it keeps p), or the reader's re-check sees `src != p` (it retries and never
//! uses p). Once the writer has run `heavy()` after unpublishing, no reader can newly
//! protect p, so a scan that finds no `H == p` stays true. The scan's Acquire load reads the
//! reader's Release clear (or a later Release store of that slot), so everything the reader
//! did with `*p` happens before the free.

use std::cell::Cell;
use std::ptr;

#[cfg(loom)]
use loom::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
#[cfg(not(loom))]
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

use crate::barrier;

/// Nested reads one thread can protect in its own record.
pub(crate) const SLOTS: usize = 4;

#[repr(align(128))]
struct Record {
    hazards: [AtomicPtr<()>; SLOTS],
    next: AtomicPtr<Record>,
    active: AtomicBool,
}

#[cfg(not(loom))]
static HEAD: AtomicPtr<Record> = AtomicPtr::new(ptr::null_mut());
#[cfg(loom)]
loom::lazy_static! {
    static ref HEAD: AtomicPtr<Record> = AtomicPtr::new(ptr::null_mut());
}

fn records() -> impl Iterator<Item = &'static Record> {
    let mut p = HEAD.load(Ordering::Acquire);
    std::iter::from_fn(move || {
        // SAFETY: every pointer in the list comes from `Box::leak` in `acquire_record` and
        // is never freed; the Acquire loads of HEAD/`next` pair with the Release CAS that
        // linked the record, so its fields are initialised.
        let r = unsafe { p.as_ref() }?;
        p = r.next.load(Ordering::Acquire);
        Some(r)
    })
}

/// Take an inactive record (or leak a new one); it is this caller's until `release_record`.
fn acquire_record() -> &'static Record {
    for r in records() {
        if !r.active.load(Ordering::Relaxed)
            && r.active
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        {
            return r;
        }
    }
    let rec: &'static Record = Box::leak(Box::new(Record {
        hazards: std::array::from_fn(|_| AtomicPtr::new(ptr::null_mut())),
        next: AtomicPtr::new(ptr::null_mut()),
        active: AtomicBool::new(true),
    }));
    let mut head = HEAD.load(Ordering::Relaxed);
    loop {
        rec.next.store(head, Ordering::Relaxed);
        match HEAD.compare_exchange_weak(
            head,
            rec as *const Record as *mut Record,
            Ordering::Release,
            Ordering::Relaxed,
        ) {
            Ok(_) => return rec,
            Err(h) => head = h,
        }
    }
}

fn release_record(rec: &Record) {
    for h in &rec.hazards {
        h.store(ptr::null_mut(), Ordering::Release);
    }
    rec.active.store(false, Ordering::Release);
}

/// This thread's record and how many of its slots are in use.
struct Owner {
    rec: &'static Record,
    depth: Cell<usize>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        release_record(self.rec);
    }
}

#[cfg(not(loom))]
thread_local! {
    static OWNER: Owner = Owner { rec: acquire_record(), depth: Cell::new(0) };
}
#[cfg(loom)]
loom::thread_local! {
    static OWNER: Owner = Owner { rec: acquire_record(), depth: Cell::new(0) };
}

/// Publish the pointer currently in `src` in `slot` and return it once the re-check
/// confirms it is still the published one.
#[inline(always)]
fn publish<T>(slot: &AtomicPtr<()>, src: &AtomicPtr<T>) -> *const T {
    let mut p = src.load(Ordering::Acquire);
    loop {
        // Release: a scan that reads this store (or a later one of this slot) also sees
        // everything this thread did with the previously protected pointer.
        slot.store(p as *mut (), Ordering::Release);
        barrier::light();
        let again = src.load(Ordering::Acquire);
        if again == p {
            return p;
        }
        p = again;
    }
}

/// Clears one slot of this thread's record when the read ends (returns or unwinds).
struct Clear<'a> {
    slot: &'a AtomicPtr<()>,
    depth: &'a Cell<usize>,
    at: usize,
}

impl Drop for Clear<'_> {
    #[inline(always)]
    fn drop(&mut self) {
        self.slot.store(ptr::null_mut(), Ordering::Release);
        self.depth.set(self.at);
    }
}

/// Gives a borrowed spare record back when the read ends (returns or unwinds).
struct Release(&'static Record);

impl Drop for Release {
    fn drop(&mut self) {
        release_record(self.0);
    }
}

/// Run `f` with the pointer currently in `src`, which stays protected (a writer that
/// unpublished it and ran [`barrier::heavy`] sees it in [`is_protected`]) until `f` returns.
/// The pointer may be null. `f` may itself call `protected` (nesting is unbounded).
#[inline(always)]
pub(crate) fn protected<T, R>(src: &AtomicPtr<T>, f: impl FnOnce(*const T) -> R) -> R {
    let mut f = Some(f);
    let fast = OWNER.try_with(|o| {
        let d = o.depth.get();
        if d >= SLOTS {
            return None;
        }
        let slot = &o.rec.hazards[d];
        o.depth.set(d + 1);
        let _clear = Clear {
            slot,
            depth: &o.depth,
            at: d,
        };
        let p = publish(slot, src);
        let f = f.take().expect("taken once");
        Some(f(p))
    });
    match fast {
        Ok(Some(r)) => r,
        // Nested deeper than SLOTS, or this thread's record is gone (thread exit).
        _ => protected_spare(src, f.take().expect("not taken on this path")),
    }
}

#[cold]
#[inline(never)]
fn protected_spare<T, R>(src: &AtomicPtr<T>, f: impl FnOnce(*const T) -> R) -> R {
    let rec = acquire_record();
    let _release = Release(rec);
    let p = publish(&rec.hazards[0], src);
    f(p)
}

/// Whether any thread's hazard holds `p`. Meaningful only after `p` has been unpublished
/// and [`barrier::heavy`] has succeeded since.
pub(crate) fn is_protected<T>(p: *const T) -> bool {
    let p = p as *mut ();
    records().any(|r| r.hazards.iter().any(|h| h.load(Ordering::Acquire) == p))
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn nesting_is_unbounded_and_every_level_is_protected_then_cleared() {
        let a = Box::into_raw(Box::new(1u32));
        let src = AtomicPtr::new(a);
        fn nest(src: &AtomicPtr<u32>, a: *mut u32, depth: usize) {
            if depth == 0 {
                barrier::heavy().unwrap();
                assert!(is_protected(a as *const u32));
                return;
            }
            protected(src, |p| {
                assert_eq!(p, a as *const u32);
                nest(src, a, depth - 1)
            })
        }
        // Deeper than this thread's own slots: the spare records take over.
        nest(&src, a, SLOTS * 3);
        assert!(!is_protected(a as *const u32));
        // SAFETY: allocated above, no longer published nor protected.
        drop(unsafe { Box::from_raw(a) });
    }

    #[test]
    fn a_panicking_read_clears_its_hazard() {
        let a = Box::into_raw(Box::new(3u32));
        let src = AtomicPtr::new(a);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            protected(&src, |_| protected(&src, |_| panic!("plugin callback panicked")))
        }));
        assert!(r.is_err());
        assert!(!is_protected(a as *const u32));
        // The depth was restored too: a new read uses this thread's first slot again.
        protected(&src, |_| {
            OWNER.with(|o| assert_eq!(o.depth.get(), 1));
        });
        // SAFETY: allocated above, no longer protected.
        drop(unsafe { Box::from_raw(a) });
    }

    #[test]
    fn other_threads_hazards_are_seen() {
        let a = Box::into_raw(Box::new(7u64));
        let src = std::sync::Arc::new(AtomicPtr::new(a));
        let (tx, rx) = std::sync::mpsc::channel();
        let (tx2, rx2) = std::sync::mpsc::channel::<()>();
        let s = src.clone();
        let t = std::thread::spawn(move || {
            protected(&s, |_| {
                tx.send(()).unwrap();
                rx2.recv().unwrap();
            })
        });
        rx.recv().unwrap();
        barrier::heavy().unwrap();
        assert!(is_protected(a as *const u64));
        tx2.send(()).unwrap();
        t.join().unwrap();
        assert!(!is_protected(a as *const u64));
        // SAFETY: allocated above, no longer protected.
        drop(unsafe { Box::from_raw(a) });
    }
}
