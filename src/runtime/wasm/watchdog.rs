//! Wall-clock deadlines: one watchdog thread per [`super::WasmRuntime`].
//!
//! Every WASM instance owns a [`Watch`]: an atomic word the call path writes when it enters
//! the guest ("armed with call number n") and clears when it leaves. No clock is read and no
//! message is sent per call. The watchdog wakes every `tick` while any watch is armed,
//! notes when it first saw each call, and once a call has been running for longer than its
//! timeout, interrupts the instance's store through wasmer's `Interrupter` (a signal to the
//! thread running it). The deadline therefore fires between `timeout` and `timeout + tick`
//! after the call started. If the interrupt lands while the thread is in host code it has no
//! effect, so the watchdog repeats it every tick until the call leaves the guest.
//!
//! When nothing is armed the watchdog parks; arming a watch while it is parked wakes it
//! (one `SeqCst` load of a flag per call decides that).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use wasmer::Interrupter;

/// Set while the watchdog is sending an interrupt for this watch.
const BUSY: u64 = 1 << 62;
/// Set once an interrupt was sent for the armed call.
const FIRED: u64 = 1 << 63;
const SEQ: u64 = BUSY - 1;

/// The deadline state of one instance.
pub struct Watch {
    state: AtomicU64,
    timeout: Duration,
    interrupter: Interrupter,
}

impl Watch {
    /// Enter the guest with call number `seq` (non-zero, below 2^62).
    #[inline]
    pub fn arm(&self, seq: u64, dog: &Watchdog) {
        debug_assert!(seq != 0 && seq & !SEQ == 0);
        self.state.store(seq, Ordering::SeqCst);
        if dog.shared.idle.load(Ordering::SeqCst) {
            dog.wake();
        }
    }

    /// Leave the guest. Returns true if an interrupt was sent for this call (the instance
    /// must then not be reused: a late signal could hit its next call).
    #[inline]
    pub fn disarm(&self) -> bool {
        loop {
            let s = self.state.load(Ordering::Acquire);
            if s & BUSY != 0 {
                std::hint::spin_loop();
                continue;
            }
            if self
                .state
                .compare_exchange(s, 0, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return s & FIRED != 0;
            }
        }
    }
}

struct Entry {
    watch: Arc<Watch>,
    seen_seq: u64,
    seen_at: Instant,
}

struct Shared {
    entries: Mutex<Vec<Entry>>,
    idle: AtomicBool,
    stop: AtomicBool,
    tick: Duration,
}

/// The watchdog thread and its list of watches.
pub struct Watchdog {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    handle: Thread,
}

impl Watchdog {
    pub fn start(tick: Duration) -> std::io::Result<Watchdog> {
        let shared = Arc::new(Shared {
            entries: Mutex::new(Vec::new()),
            idle: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            tick: tick.max(Duration::from_micros(100)),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("keel-wasm-watchdog".into())
            .spawn(move || run(&s))?;
        let handle = thread.thread().clone();
        Ok(Watchdog {
            shared,
            thread: Some(thread),
            handle,
        })
    }

    fn wake(&self) {
        self.handle.unpark();
    }

    /// Watch a store; `timeout` is the plugin's deadline per call.
    pub fn register(&self, interrupter: Interrupter, timeout: Duration) -> Arc<Watch> {
        let watch = Arc::new(Watch {
            state: AtomicU64::new(0),
            timeout,
            interrupter,
        });
        self.shared.entries.lock().push(Entry {
            watch: watch.clone(),
            seen_seq: 0,
            seen_at: Instant::now(),
        });
        watch
    }

    /// Stop watching (the instance is being dropped).
    pub fn unregister(&self, watch: &Arc<Watch>) {
        let mut e = self.shared.entries.lock();
        if let Some(i) = e.iter().position(|x| Arc::ptr_eq(&x.watch, watch)) {
            e.swap_remove(i);
        }
    }

    /// How many instances are watched (for tests and diagnostics).
    pub fn watched(&self) -> usize {
        self.shared.entries.lock().len()
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.handle.unpark();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One scan: interrupt overdue calls. Returns whether any watch is armed.
fn scan(shared: &Shared, now: Instant) -> bool {
    let mut any = false;
    for e in shared.entries.lock().iter_mut() {
        let s = e.watch.state.load(Ordering::SeqCst);
        if s == 0 || s & BUSY != 0 {
            continue;
        }
        any = true;
        let seq = s & SEQ;
        if seq != e.seen_seq {
            e.seen_seq = seq;
            e.seen_at = now;
            continue;
        }
        if now.duration_since(e.seen_at) < e.watch.timeout {
            continue;
        }
        // Overdue. Claim the watch so the call cannot leave (and the instance start another
        // call) while the signal is being sent.
        if e.watch
            .state
            .compare_exchange(s, s | BUSY, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            e.watch.interrupter.interrupt();
            e.watch.state.store(seq | FIRED, Ordering::Release);
        }
    }
    any
}

/// Empty scans in a row before the watchdog parks until the next arm.
const EMPTY_SCANS_BEFORE_PARKING: u32 = 64;

fn run(shared: &Shared) {
    let mut empty = 0u32;
    while !shared.stop.load(Ordering::SeqCst) {
        if scan(shared, Instant::now()) {
            empty = 0;
        } else {
            empty += 1;
        }
        if empty < EMPTY_SCANS_BEFORE_PARKING {
            std::thread::park_timeout(shared.tick);
            continue;
        }
        // Nothing armed for a while: announce that we park, then look once more so an arm
        // that raced with the announcement is not missed (arm stores its watch, then loads
        // `idle`; we store `idle`, then load the watches; all SeqCst).
        shared.idle.store(true, Ordering::SeqCst);
        if !scan(shared, Instant::now()) && !shared.stop.load(Ordering::SeqCst) {
            std::thread::park_timeout(Duration::from_secs(1));
        }
        shared.idle.store(false, Ordering::SeqCst);
        empty = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interrupter() -> (wasmer::Store, Interrupter) {
        let store = wasmer::Store::default();
        let i = store.interrupter();
        (store, i)
    }

    #[test]
    fn short_calls_are_not_interrupted() {
        let dog = Watchdog::start(Duration::from_millis(1)).unwrap();
        let (_store, i) = interrupter();
        let w = dog.register(i, Duration::from_secs(60));
        for seq in 1..100 {
            w.arm(seq, &dog);
            assert!(!w.disarm());
        }
        dog.unregister(&w);
        assert_eq!(dog.watched(), 0);
    }

    #[test]
    fn overdue_calls_are_fired_and_refired() {
        let dog = Watchdog::start(Duration::from_millis(1)).unwrap();
        let (_store, i) = interrupter();
        let w = dog.register(i, Duration::from_millis(5));
        w.arm(1, &dog);
        // The store is not running wasm, so the interrupt itself is a no-op; the watch
        // records that it was sent.
        while w.state.load(Ordering::Acquire) & FIRED == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(w.disarm());
        // The next call starts clean.
        w.arm(2, &dog);
        assert!(!w.disarm());
    }
}
