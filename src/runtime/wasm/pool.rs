//! The lock-free instance pool of a pooled plugin.
//!
//! A fixed array of cache-line-sized slots, each holding at most one instance and claimed
//! with one compare-and-swap of its `busy` flag (released with one store). A thread starts
//! looking at "its" slot (threads are numbered on first use), so a thread that calls a
//! plugin repeatedly keeps reusing the same instance and its warm caches; when that slot is
//! busy it tries the others. Nothing blocks: when every slot is busy the caller gets `None`
//! and runs on a temporary instance.

use std::cell::{Cell, UnsafeCell};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

#[repr(align(64))]
struct Slot<T> {
    busy: AtomicBool,
    guest: UnsafeCell<Option<T>>,
}

/// A fixed set of slots for ready instances.
pub struct Pool<T> {
    slots: Box<[Slot<T>]>,
}

// SAFETY: a slot's `guest` is only touched by the thread that claimed the slot (set `busy`
// from false to true with Acquire; released with a Release store), so accesses never
// overlap and each claim sees the previous holder's writes; `T: Send` lets a value be
// used by whichever thread claims it.
unsafe impl<T: Send> Sync for Pool<T> {}
// SAFETY: see the comment above: claims are exclusive (one CAS), so no two threads use a value at once.
unsafe impl<T: Send> Send for Pool<T> {}
// SAFETY: as for Sync above: the pool owns its values and hands each to one claimer at a time.

/// A claimed slot; released when dropped.
pub struct Claim<'a, T> {
    slot: &'a Slot<T>,
}

impl<T> Claim<'_, T> {
    /// The slot's instance (None when empty).
    #[inline]
    pub fn guest(&mut self) -> &mut Option<T> {
        // SAFETY: this claim holds the slot exclusively (see `Pool`'s Sync impl).
        unsafe { &mut *self.slot.guest.get() }
    }
}

impl<T> Drop for Claim<'_, T> {
    #[inline]
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Unwound out of a call: the instance may be half-way through anything.
            *self.guest() = None;
        }
        self.slot.busy.store(false, Ordering::Release);
    }
}

#[inline]
fn thread_number() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static N: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    N.with(|n| {
        let v = n.get();
        if v != usize::MAX {
            return v;
        }
        let v = NEXT.fetch_add(1, Ordering::Relaxed);
        n.set(v);
        v
    })
}

/// The calling thread's own slot in a pool of `n` slots: its number modulo `n`, kept per
/// thread for the last `n` seen (pools of one host share their size), so a claim divides
/// only when the size changes.
#[inline]
fn start_slot(n: usize) -> usize {
    thread_local! {
        static LAST: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
    }
    LAST.with(|c| {
        let (last_n, start) = c.get();
        if last_n == n {
            return start;
        }
        let start = thread_number() % n;
        c.set((n, start));
        start
    })
}

impl<T> Pool<T> {
    pub fn new(size: usize) -> Pool<T> {
        let slots = (0..size.max(1))
            .map(|_| Slot {
                busy: AtomicBool::new(false),
                guest: UnsafeCell::new(None),
            })
            .collect();
        Pool { slots }
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Claim a free slot, starting with the calling thread's own; `None` if all are busy.
    #[inline]
    pub fn claim(&self) -> Option<Claim<'_, T>> {
        let n = self.slots.len();
        let mut i = start_slot(n);
        for _ in 0..n {
            let slot = &self.slots[i];
            if !slot.busy.load(Ordering::Relaxed)
                && slot
                    .busy
                    .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                return Some(Claim { slot });
            }
            i += 1;
            if i == n {
                i = 0;
            }
        }
        None
    }

    /// Put an instance into a free empty slot (returns it back if there is none).
    pub fn offer(&self, guest: T) -> Option<T> {
        for slot in self.slots.iter() {
            if slot
                .busy
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                let mut c = Claim { slot };
                if c.guest().is_none() {
                    *c.guest() = Some(guest);
                    return None;
                }
            }
        }
        Some(guest)
    }

    /// Drop the instances of every slot that is not busy; returns how many slots still
    /// hold an instance (busy ones count as holding one).
    pub fn retain(&self, mut keep: impl FnMut(&T) -> bool) -> usize {
        let mut held = 0;
        for slot in self.slots.iter() {
            if slot
                .busy
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                let mut c = Claim { slot };
                let g = c.guest();
                if g.as_ref().is_some_and(|x| !keep(x)) {
                    *g = None;
                }
                held += g.is_some() as usize;
            } else {
                held += 1;
            }
        }
        held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_are_exclusive_and_released_on_drop() {
        let pool: Pool<u32> = Pool::new(2);
        let mut a = pool.claim().unwrap();
        let mut b = pool.claim().unwrap();
        assert!(pool.claim().is_none());
        *a.guest() = Some(1);
        *b.guest() = Some(2);
        drop(a);
        let mut c = pool.claim().unwrap();
        assert_eq!(*c.guest(), Some(1));
        drop((b, c));
        assert_eq!(pool.retain(|_| true), 2);
        assert_eq!(pool.retain(|v| *v == 2), 1);
        assert_eq!(pool.offer(7), None);
        assert_eq!(pool.offer(8), Some(8));
    }

    #[test]
    fn concurrent_claims_never_share_a_slot() {
        let pool: Pool<u64> = Pool::new(3);
        std::thread::scope(|s| {
            for t in 0..6u64 {
                let pool = &pool;
                s.spawn(move || {
                    for i in 0..2000u64 {
                        if let Some(mut c) = pool.claim() {
                            let mine = t << 32 | i;
                            *c.guest() = Some(mine);
                            std::hint::spin_loop();
                            assert_eq!(*c.guest(), Some(mine));
                        }
                    }
                });
            }
        });
    }
}
