//! Hazard pointers for the call path: a call publishes the generation it is about to enter
//! in a slot of its thread's record (a plain store, a compiler fence, a re-check), and
//! clears it when it returns. Unload and reload unpublish a generation, run the heavy
//! barrier, and then free it only once no record holds it. No reference count is touched
//! and no shared cache line is written per call.
//!
//! Records are per thread, leaked once and reused by later threads; each has a few slots
//! for nested calls (a plugin whose host callback calls another plugin). Deeper nesting
//! returns `None` and the caller takes the reference-counted path.

use std::cell::Cell;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

use crate::barrier;

/// Nested calls one thread can protect at once.
pub const SLOTS: usize = 4;

#[repr(align(128))]
struct Record {
    hazards: [AtomicPtr<()>; SLOTS],
    next: AtomicPtr<Record>,
    active: AtomicBool,
}

static HEAD: AtomicPtr<Record> = AtomicPtr::new(ptr::null_mut());

fn records() -> impl Iterator<Item = &'static Record> {
    let mut p = HEAD.load(Ordering::Acquire);
    std::iter::from_fn(move || {
        // SAFETY: records are leaked and never freed.
        let r = unsafe { p.as_ref() }?;
        p = r.next.load(Ordering::Acquire);
        Some(r)
    })
}

struct Owner {
    rec: &'static Record,
    depth: Cell<usize>,
}

impl Owner {
    fn acquire() -> Owner {
        for r in records() {
            if r.active
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                return Owner {
                    rec: r,
                    depth: Cell::new(0),
                };
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
                Ok(_) => break,
                Err(h) => head = h,
            }
        }
        Owner {
            rec,
            depth: Cell::new(0),
        }
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        for h in &self.rec.hazards {
            h.store(ptr::null_mut(), Ordering::Release);
        }
        self.rec.active.store(false, Ordering::Release);
    }
}

thread_local! {
    static OWNER: Owner = Owner::acquire();
}

/// A published hazard; clears it when dropped (on the thread that made it, in LIFO order).
pub struct Guard {
    slot: &'static AtomicPtr<()>,
    depth: *const Cell<usize>,
}

impl Drop for Guard {
    #[inline]
    fn drop(&mut self) {
        self.slot.store(ptr::null_mut(), Ordering::Release);
        // SAFETY: `depth` belongs to this thread's Owner, alive for the thread's life, and
        // guards never leave their thread (Guard is !Send through the raw pointer).
        let d = unsafe { &*self.depth };
        d.set(d.get() - 1);
    }
}

/// Protect the pointer currently in `src`: returns it together with a guard that keeps any
/// non-null value from being freed until dropped. `None` if this thread has no free hazard
/// slot (deep nesting) or is shutting down: use a reference-counted path then.
#[inline]
pub fn protect<T>(src: &AtomicPtr<T>) -> Option<(Guard, *const T)> {
    OWNER
        .try_with(|o| {
            let d = o.depth.get();
            if d >= SLOTS {
                return None;
            }
            let slot: &'static AtomicPtr<()> = &o.rec.hazards[d];
            let mut p = src.load(Ordering::Acquire);
            loop {
                slot.store(p as *mut (), Ordering::Relaxed);
                barrier::light();
                let again = src.load(Ordering::Acquire);
                if again == p {
                    break;
                }
                p = again;
            }
            o.depth.set(d + 1);
            Some((
                Guard {
                    slot,
                    depth: &o.depth as *const Cell<usize>,
                },
                p as *const T,
            ))
        })
        .ok()
        .flatten()
}

/// Whether any thread's hazard holds `p`. Call only after `p` has been unpublished and
/// [`barrier::heavy`] has run since.
pub fn is_protected<T>(p: *const T) -> bool {
    let p = p as *mut ();
    records().any(|r| r.hazards.iter().any(|h| h.load(Ordering::Acquire) == p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protect_publishes_and_guard_clears_with_nesting() {
        let a = Box::into_raw(Box::new(1u32));
        let src = AtomicPtr::new(a);
        let mut guards = Vec::new();
        for _ in 0..SLOTS {
            let (g, p) = protect(&src).expect("a free slot");
            assert_eq!(p, a as *const u32);
            guards.push(g);
        }
        assert!(protect(&src).is_none(), "nesting deeper than SLOTS falls back");
        barrier::heavy();
        assert!(is_protected(a as *const u32));
        while let Some(g) = guards.pop() {
            drop(g);
        }
        assert!(!is_protected(a as *const u32));
        assert!(protect(&src).is_some());
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
            let (g, _) = protect(&s).unwrap();
            tx.send(()).unwrap();
            rx2.recv().unwrap();
            drop(g);
        });
        rx.recv().unwrap();
        barrier::heavy();
        assert!(is_protected(a as *const u64));
        tx2.send(()).unwrap();
        t.join().unwrap();
        assert!(!is_protected(a as *const u64));
        // SAFETY: allocated above, no longer protected.
        drop(unsafe { Box::from_raw(a) });
    }
}
