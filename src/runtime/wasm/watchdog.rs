//! Wall-clock deadlines: one watchdog thread per [`super::WasmRuntime`].
//!
//! Every WASM instance owns a [`Watch`]. The call path writes "in the guest with call number
//! n" into it when it enters the guest and 0 when it leaves: no clock is read, no message
//! sent, no lock taken, and on Linux no atomic read-modify-write or fence instruction either
//! (see below). The watchdog wakes every `tick` while any watch is armed, notes when it first
//! saw each call, and once a call has run for longer than its timeout, raises the
//! instance's stop flag ([`super::interrupt`]): the guest traps at its next function entry
//! or loop head. A deadline therefore fires between `timeout` and `timeout + tick` after the
//! call started (plus the time the guest spends in a host function before it meets a
//! check: host code is never interrupted).
//!
//! ## Which calls the watchdog looks at
//!
//! The watchdog does not walk every instance it watches: each thread that enters a guest
//! has a *lane* (allocated and registered once per thread, in a process-wide list), and
//! arming pushes "watchdog d, entry i, watch id w" onto the lane's small stack (a nested
//! call, through a host function, pushes a second frame) with plain stores. A scan reads the
//! lanes — one per thread that ever called WASM, not one per instance — and looks up only
//! the entries named there (checking the watch id, so a reused entry is never mistaken for
//! the one armed). The watch's own `armed` word stays the authority: a stale or torn frame
//! only makes the scan look at an idle watch. A lane pushed past [`LANE_DEPTH`] frames makes
//! the scan fall back to every entry while it lasts. The list of entries (changed when an
//! instance is made or dropped) is locked only to look up those few entries.
//!
//! ## Per-call deadlines and cancellation
//!
//! A call made with options may carry a shorter deadline and a cancel token. The call path
//! writes them into the watch *before* arming (`call_timeout`, `cancel`) and clears them
//! after disarming; a plain call never touches them. The watchdog reads them after seeing
//! the call armed, so it sees the values of that call (or of a later one, which the
//! handshake below then keeps it from interrupting). A cancelled token is treated like a
//! call past its deadline, without waiting for a tick: cancelling wakes every watchdog
//! ([`crate::services::call::CancelWaker`]), whose next scan interrupts the call through
//! the same handshake.
//!
//! ## The handshake
//!
//! The watchdog must never stop a call other than the overdue one (the instance may
//! already be running its next call), must never write the flag of an instance that is
//! gone (the flag lives in the instance's store), and the call path must learn whether the
//! flag was raised for its call (the instance is then discarded: its flag stays raised).
//! Both are Dekker-style "store, then load the other side's flag" exchanges:
//!
//! - call path, leaving: `armed = 0`; barrier; read `target` (== my call? then wait for
//!   `done` and read `fired`);
//! - watchdog: `target = n`; barrier; read `armed` (still n? then raise the stop flag,
//!   `fired = n`); `done = n`.
//!
//! A call that sees `target == n` waits for `done == n` before it returns, so the flag is
//! only ever written while the call that owns the store is still in progress.
//!
//! and likewise for waking a parked watchdog (`armed = n`; barrier; read `idle` / `idle =
//! true`; barrier; scan). The call path's barrier is only a compiler fence: the watchdog's
//! barrier is `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`, which makes every running
//! thread of the process execute a full memory barrier, so whichever store came first is
//! seen by the other side. Where `membarrier` is unavailable both sides use `SeqCst` fences.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use super::interrupt::StopFlag;
use crate::barrier;
use crate::services::call::{CancelState, CancelWaker};
use arc_swap::ArcSwapOption;
use parking_lot::Mutex;

/// Flags the call path reads.
struct Flags {
    /// The watchdog is parked until an arm wakes it.
    idle: AtomicBool,
    stop: AtomicBool,
    thread: std::sync::OnceLock<Thread>,
}

impl Flags {
    fn wake(&self) {
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }
}

impl CancelWaker for Flags {
    fn wake(&self) {
        Flags::wake(self);
    }
}

/// The deadline state of one instance.
pub struct Watch {
    /// Written by the call path: the call number while in the guest, else 0.
    armed: AtomicU64,
    /// Written by the watchdog: the call it is about to interrupt.
    target: AtomicU64,
    /// Written by the watchdog: the call whose handling it has finished.
    done: AtomicU64,
    /// Written by the watchdog: the call it sent an interrupt for.
    fired: AtomicU64,
    timeout: Duration,
    /// Written by the call path before `armed` (calls with options only): this call's
    /// deadline in nanoseconds, 0 for `timeout`.
    call_timeout: AtomicU64,
    /// Written by the call path before `armed` (calls with a cancel token only): the token.
    cancel: ArcSwapOption<CancelState>,
    stop: StopFlag,
    flags: Arc<Flags>,
    /// Which watchdog, which of its entries, and this watch's unique id: what arming writes
    /// into the thread's lane.
    dog_id: u64,
    entry: usize,
    id: u64,
}

/// Frames a lane holds; deeper nesting makes scans fall back to every entry.
pub const LANE_DEPTH: usize = 8;

/// One frame of a lane: the watch armed at that nesting depth.
#[derive(Default)]
struct Frame {
    dog: AtomicU64,
    entry: AtomicU64,
    id: AtomicU64,
}

/// The calls in a guest on one thread (outermost first). Written only by its thread, with
/// plain stores; read by the watchdogs.
#[derive(Default)]
struct Lane {
    depth: AtomicU32,
    frames: [Frame; LANE_DEPTH],
}

/// Every thread's lane (registered at its first guest call, removed when it exits).
static LANES: Mutex<Vec<Arc<Lane>>> = Mutex::new(Vec::new());

/// The thread's lane and its depth (the thread's own copy: no atomic read-modify-write);
/// unregisters the lane when the thread exits.
struct LaneHandle {
    lane: Arc<Lane>,
    depth: Cell<u32>,
}

impl Drop for LaneHandle {
    fn drop(&mut self) {
        LANES.lock().retain(|l| !Arc::ptr_eq(l, &self.lane));
    }
}

impl LaneHandle {
    fn new() -> LaneHandle {
        let lane = Arc::new(Lane::default());
        LANES.lock().push(lane.clone());
        LaneHandle {
            lane,
            depth: Cell::new(0),
        }
    }
}

thread_local! {
    static LANE: LaneHandle = LaneHandle::new();
}

/// Calls armed on a thread whose lane is gone (a call from a thread-local destructor while
/// the thread exits): while non-zero, scans look at every entry.
static UNLANED: AtomicU32 = AtomicU32::new(0);

static NEXT_WATCH_ID: AtomicU64 = AtomicU64::new(1);
static NEXT_DOG_ID: AtomicU64 = AtomicU64::new(1);

impl Watch {
    /// Enter the guest with call number `seq` (non-zero, increasing per watch).
    #[inline]
    pub fn arm(&self, seq: u64) {
        let laned = LANE.try_with(|l| {
            let d = l.depth.get();
            l.depth.set(d + 1);
            if let Some(f) = l.lane.frames.get(d as usize) {
                f.dog.store(self.dog_id, Ordering::Relaxed);
                f.entry.store(self.entry as u64, Ordering::Relaxed);
                f.id.store(self.id, Ordering::Relaxed);
            }
            l.lane.depth.store(d + 1, Ordering::Release);
        });
        if laned.is_err() {
            self.unlaned();
        }
        self.armed.store(seq, Ordering::Release);
        barrier::light();
        if self.flags.idle.load(Ordering::Relaxed) {
            self.flags.wake();
        }
    }

    /// Leave the guest after call `seq`. Returns true if the stop flag was raised for it (the
    /// instance must then not be reused: its flag stays raised).
    #[inline]
    pub fn disarm(&self, seq: u64) -> bool {
        self.armed.store(0, Ordering::Release);
        let popped = LANE.try_with(|l| {
            let d = l.depth.get().saturating_sub(1);
            l.depth.set(d);
            l.lane.depth.store(d, Ordering::Release);
        });
        if popped.is_err() {
            UNLANED.fetch_sub(1, Ordering::SeqCst);
        }
        barrier::light();
        if self.target.load(Ordering::Acquire) != seq {
            return false;
        }
        self.wait_for_watchdog(seq)
    }

    /// Before arming a call made with options: its deadline (already capped by the plugin's
    /// own) and its cancel token. Undo with [`Watch::clear_call`] after disarming.
    pub fn set_call(&self, timeout: Duration, cancel: Option<&Arc<CancelState>>) {
        let ns = timeout.as_nanos().clamp(1, u64::MAX as u128) as u64;
        self.call_timeout.store(ns, Ordering::Relaxed);
        if let Some(c) = cancel {
            self.cancel.store(Some(c.clone()));
        }
    }

    /// After disarming a call made with options: back to the plugin's own deadline, no token.
    pub fn clear_call(&self) {
        self.call_timeout.store(0, Ordering::Relaxed);
        if self.cancel.load().is_some() {
            self.cancel.store(None);
        }
    }

    /// This call's deadline.
    fn timeout_now(&self) -> Duration {
        match self.call_timeout.load(Ordering::Relaxed) {
            0 => self.timeout,
            ns => Duration::from_nanos(ns),
        }
    }

    fn cancel_requested(&self) -> bool {
        self.cancel.load().as_ref().is_some_and(|c| c.is_cancelled())
    }

    #[cold]
    fn unlaned(&self) {
        UNLANED.fetch_add(1, Ordering::SeqCst);
    }

    #[cold]
    fn wait_for_watchdog(&self, seq: u64) -> bool {
        while self.done.load(Ordering::Acquire) != seq {
            std::hint::spin_loop();
        }
        self.fired.load(Ordering::Acquire) == seq
    }

    /// Whether the instance's stop flag is raised (the call path, after a trap).
    pub fn stop_raised(&self) -> bool {
        self.stop.is_raised()
    }
}

struct Entry {
    watch: Arc<Watch>,
    seen_seq: u64,
    seen_at: Instant,
}

/// The watched instances: a slab (an instance keeps its index until it is dropped).
#[derive(Default)]
struct Entries {
    slots: Vec<Option<Entry>>,
    free: Vec<usize>,
    live: usize,
    /// Entries looked at by scans (a diagnostic: scans must not grow with idle instances).
    examined: u64,
    scans: u64,
}

/// The watchdog thread and its list of watches.
pub struct Watchdog {
    id: u64,
    entries: Arc<Mutex<Entries>>,
    flags: Arc<Flags>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    pub fn start(tick: Duration) -> std::io::Result<Watchdog> {
        barrier::init();
        let flags = Arc::new(Flags {
            idle: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            thread: std::sync::OnceLock::new(),
        });
        let entries = Arc::new(Mutex::new(Entries::default()));
        let id = NEXT_DOG_ID.fetch_add(1, Ordering::Relaxed);
        let waker: Arc<dyn CancelWaker> = flags.clone();
        crate::services::call::register_cancel_waker(Arc::downgrade(&waker));
        let (f, e) = (flags.clone(), entries.clone());
        let tick = tick.max(Duration::from_micros(100));
        let thread = std::thread::Builder::new()
            .name("keel-wasm-watchdog".into())
            .spawn(move || run(id, &f, &e, tick))?;
        let _ = flags.thread.set(thread.thread().clone());
        flags.wake();
        Ok(Watchdog {
            id,
            entries,
            flags,
            thread: Some(thread),
        })
    }

    /// Whether the call path runs fence-free (membarrier available).
    pub fn asymmetric(&self) -> bool {
        barrier::is_asymmetric()
    }

    /// Watch a store; `timeout` is the plugin's deadline per call.
    pub fn register(&self, stop: StopFlag, timeout: Duration) -> Arc<Watch> {
        let mut entries = self.entries.lock();
        let entry = match entries.free.pop() {
            Some(i) => i,
            None => {
                entries.slots.push(None);
                entries.slots.len() - 1
            }
        };
        let watch = Arc::new(Watch {
            armed: AtomicU64::new(0),
            target: AtomicU64::new(0),
            done: AtomicU64::new(0),
            fired: AtomicU64::new(0),
            timeout,
            call_timeout: AtomicU64::new(0),
            cancel: ArcSwapOption::empty(),
            stop,
            flags: self.flags.clone(),
            dog_id: self.id,
            entry,
            id: NEXT_WATCH_ID.fetch_add(1, Ordering::Relaxed),
        });
        entries.slots[entry] = Some(Entry {
            watch: watch.clone(),
            seen_seq: 0,
            seen_at: Instant::now(),
        });
        entries.live += 1;
        watch
    }

    /// Stop watching (the instance is being dropped).
    pub fn unregister(&self, watch: &Arc<Watch>) {
        let mut e = self.entries.lock();
        let mine = matches!(e.slots.get(watch.entry), Some(Some(x)) if Arc::ptr_eq(&x.watch, watch));
        if mine {
            e.slots[watch.entry] = None;
            e.free.push(watch.entry);
            e.live -= 1;
        }
    }

    /// How many instances are watched (for tests and diagnostics).
    pub fn watched(&self) -> usize {
        self.entries.lock().live
    }

    /// Entries the scans have looked at so far (a diagnostic: a scan looks at the calls in
    /// progress, not at every instance).
    /// And how many scans there were: `(scans, entries examined)`.
    pub fn examined(&self) -> (u64, u64) {
        let e = self.entries.lock();
        (e.scans, e.examined)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.flags.stop.store(true, Ordering::SeqCst);
        self.flags.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The entries of watchdog `dog` named by the lanes (entry index, watch id); `None` if a
/// lane is nested deeper than its frames (then every entry must be looked at).
fn armed_in_lanes(dog: u64, out: &mut Vec<(usize, u64)>) -> Option<()> {
    out.clear();
    if UNLANED.load(Ordering::SeqCst) != 0 {
        return None;
    }
    let lanes = LANES.lock();
    for lane in lanes.iter() {
        let depth = lane.depth.load(Ordering::Acquire) as usize;
        if depth > LANE_DEPTH {
            return None;
        }
        for f in &lane.frames[..depth] {
            if f.dog.load(Ordering::Relaxed) == dog {
                out.push((f.entry.load(Ordering::Relaxed) as usize, f.id.load(Ordering::Relaxed)));
            }
        }
    }
    Some(())
}

/// One scan: interrupt overdue and cancelled calls. Returns whether any watch is armed.
fn scan(
    dog: u64,
    entries: &Mutex<Entries>,
    named: &mut Vec<(usize, u64)>,
    overdue: &mut Vec<(Arc<Watch>, u64)>,
) -> bool {
    let everything = armed_in_lanes(dog, named).is_none();
    let now = Instant::now();
    let mut any = false;
    {
        let mut entries = entries.lock();
        let entries = &mut *entries;
        entries.scans += 1;
        let mut visit = |e: &mut Entry| {
            let seq = e.watch.armed.load(Ordering::Acquire);
            if seq == 0 {
                return;
            }
            any = true;
            // Read after `armed` (Acquire): the token of this call or of a later one.
            let cancelled = e.watch.cancel_requested();
            if seq != e.seen_seq {
                e.seen_seq = seq;
                e.seen_at = now;
                if !cancelled {
                    return;
                }
            }
            if cancelled || now.duration_since(e.seen_at) >= e.watch.timeout_now() {
                e.watch.target.store(seq, Ordering::Release);
                overdue.push((e.watch.clone(), seq));
            }
        };
        if everything {
            entries.examined += entries.live as u64;
            entries.slots.iter_mut().flatten().for_each(&mut visit);
        } else {
            named.sort_unstable();
            named.dedup();
            for &(i, id) in named.iter() {
                if let Some(Some(e)) = entries.slots.get_mut(i) {
                    if e.watch.id == id {
                        entries.examined += 1;
                        visit(e);
                    }
                }
            }
        }
    }
    if overdue.is_empty() {
        return any;
    }
    // One barrier for all of them, then interrupt only the calls that are still running.
    // If the barrier failed, a call that has already left the guest may not have seen
    // `target`: no interrupt may be sent. Mark each call as fired without sending one, so a
    // call that did see `target` discards its instance (harmless) and a later tick's real
    // interrupt for the same call can never be missed by it; the deadline is retried next
    // tick.
    let fenced = barrier::heavy().is_ok();
    for (w, seq) in overdue.drain(..) {
        if !fenced {
            w.fired.store(seq, Ordering::Release);
            w.done.store(seq, Ordering::Release);
            continue;
        }
        if w.armed.load(Ordering::Acquire) == seq {
            w.stop.raise();
            w.fired.store(seq, Ordering::Release);
        }
        w.done.store(seq, Ordering::Release);
    }
    any
}

/// Empty scans in a row before the watchdog parks until the next arm.
const EMPTY_SCANS_BEFORE_PARKING: u32 = 64;

fn run(dog: u64, flags: &Flags, entries: &Mutex<Entries>, tick: Duration) {
    let mut overdue = Vec::new();
    let mut named = Vec::new();
    let mut empty = 0u32;
    while !flags.stop.load(Ordering::SeqCst) {
        if scan(dog, entries, &mut named, &mut overdue) {
            empty = 0;
        } else {
            empty += 1;
        }
        if empty < EMPTY_SCANS_BEFORE_PARKING {
            std::thread::park_timeout(tick);
            continue;
        }
        // Nothing armed for a while: announce that we park, then look once more, so an
        // arm that raced with the announcement is seen by one side or the other.
        flags.idle.store(true, Ordering::Relaxed);
        // Without a successful barrier an arm may not have seen `idle`: do not park long.
        let fenced = barrier::heavy().is_ok();
        if !scan(dog, entries, &mut named, &mut overdue) && !flags.stop.load(Ordering::SeqCst) {
            std::thread::park_timeout(if fenced { Duration::from_secs(1) } else { tick });
        }
        flags.idle.store(false, Ordering::Relaxed);
        empty = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interrupter() -> ((), StopFlag) {
        ((), StopFlag::detached())
    }

    #[test]
    fn membarrier_is_used_where_the_kernel_has_it() {
        let dog = Watchdog::start(Duration::from_millis(1)).unwrap();
        // SAFETY: plain syscall.
        let query = unsafe { libc::syscall(libc::SYS_membarrier, 0, 0, 0) };
        assert_eq!(
            dog.asymmetric(),
            query > 0 && query & crate::barrier::MEMBARRIER_CMD_PRIVATE_EXPEDITED != 0
        );
    }

    #[test]
    fn short_calls_are_not_interrupted() {
        let dog = Watchdog::start(Duration::from_millis(1)).unwrap();
        let (_store, i) = interrupter();
        let w = dog.register(i, Duration::from_secs(60));
        for seq in 1..1000 {
            w.arm(seq);
            assert!(!w.disarm(seq));
        }
        assert!(!w.stop_raised());
        dog.unregister(&w);
        assert_eq!(dog.watched(), 0);
    }

    #[test]
    fn overdue_calls_are_fired_and_refired() {
        let dog = Watchdog::start(Duration::from_millis(1)).unwrap();
        let (_store, i) = interrupter();
        let w = dog.register(i, Duration::from_millis(5));
        w.arm(1);
        while w.fired.load(Ordering::Acquire) != 1 {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(w.stop_raised(), "fired means the stop flag was raised");
        assert!(w.disarm(1));
        // The next call starts clean.
        w.arm(2);
        assert!(!w.disarm(2));
    }

    #[test]
    fn an_arm_while_the_watchdog_is_parked_still_fires() {
        let dog = Watchdog::start(Duration::from_millis(1)).unwrap();
        let (_store, i) = interrupter();
        let w = dog.register(i, Duration::from_millis(5));
        // Let it go idle (64 empty scans), then arm: the deadline must still fire.
        while !dog.flags.idle.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
        }
        w.arm(1);
        while w.fired.load(Ordering::Acquire) != 1 {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(w.disarm(1));
    }

    #[test]
    fn a_cancelled_token_fires_long_before_the_deadline() {
        let dog = Watchdog::start(Duration::from_millis(1)).unwrap();
        let (_store, i) = interrupter();
        let w = dog.register(i, Duration::from_secs(3600));
        let token = crate::services::call::CancelToken::new();
        w.set_call(Duration::from_secs(3600), Some(token.state()));
        w.arm(1);
        token.cancel();
        // Without the cancel this would wait an hour.
        while w.fired.load(Ordering::Acquire) != 1 {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(w.disarm(1));
        w.clear_call();
        // The next call, without a token, is not interrupted.
        w.arm(2);
        assert!(!w.disarm(2));
        assert!(w.cancel.load().is_none());
    }

    #[test]
    fn a_scan_looks_at_the_calls_in_progress_not_at_every_instance() {
        let dog = Watchdog::start(Duration::from_millis(1)).unwrap();
        let stores: Vec<_> = (0..500).map(|_| interrupter()).collect();
        let idle: Vec<_> = stores
            .iter()
            .map(|(_, i)| dog.register(i.clone(), Duration::from_secs(3600)))
            .collect();
        let (_store, i) = interrupter();
        let w = dog.register(i, Duration::from_millis(20));
        // Let the other 500 be armed and disarmed once: they are idle, not forgotten.
        for (n, x) in idle.iter().enumerate() {
            x.arm(n as u64 + 1);
            assert!(!x.disarm(n as u64 + 1));
        }
        let start = dog.examined();
        w.arm(1);
        while w.fired.load(Ordering::Acquire) != 1 {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(w.disarm(1));
        let end = dog.examined();
        let (scans, examined) = (end.0 - start.0, end.1 - start.1);
        assert!(scans >= 2, "the deadline needs at least two scans ({scans})");
        // One call in progress: one entry per scan (the old scan looked at all 501).
        assert!(examined <= scans, "{scans} scans looked at {examined} entries");
        // Nested calls on one thread are both watched: the inner one fires first, then the
        // outer one once the inner has left.
        let (_s2, i2) = interrupter();
        let inner = dog.register(i2, Duration::from_millis(5));
        let outer = &idle[0];
        outer.arm(1000);
        inner.arm(1);
        while inner.fired.load(Ordering::Acquire) != 1 {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(inner.disarm(1));
        assert_ne!(outer.fired.load(Ordering::Acquire), 1000, "outer deadline is an hour");
        assert!(!outer.disarm(1000));
        for x in &idle {
            dog.unregister(x);
        }
        dog.unregister(&w);
        dog.unregister(&inner);
        assert_eq!(dog.watched(), 0);
    }

    #[test]
    fn a_call_nested_deeper_than_the_lane_still_gets_its_deadline() {
        let dog = Watchdog::start(Duration::from_millis(1)).unwrap();
        let stores: Vec<_> = (0..LANE_DEPTH + 1).map(|_| interrupter()).collect();
        let watches: Vec<_> = stores
            .iter()
            .enumerate()
            .map(|(n, (_, i))| {
                // Only the innermost, which has no frame, has a short deadline.
                let t = if n == LANE_DEPTH { 5 } else { 3_600_000 };
                dog.register(i.clone(), Duration::from_millis(t))
            })
            .collect();
        for w in &watches {
            w.arm(1);
        }
        let inner = &watches[LANE_DEPTH];
        // Bounded (not a timing assertion: a working watchdog fires within a few ticks).
        for _ in 0..10_000 {
            if inner.fired.load(Ordering::Acquire) == 1 {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(
            inner.fired.load(Ordering::Acquire),
            1,
            "the unlaned call was never interrupted"
        );
        for w in watches.iter().rev() {
            assert_eq!(w.disarm(1), std::ptr::eq(w, inner));
        }
    }

    #[test]
    fn a_per_call_deadline_replaces_the_plugins_for_that_call_only() {
        let dog = Watchdog::start(Duration::from_millis(1)).unwrap();
        let (_store, i) = interrupter();
        let w = dog.register(i, Duration::from_secs(3600));
        w.set_call(Duration::from_millis(5), None);
        w.arm(1);
        while w.fired.load(Ordering::Acquire) != 1 {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(w.disarm(1));
        w.clear_call();
        assert_eq!(w.timeout_now(), Duration::from_secs(3600));
    }
}
