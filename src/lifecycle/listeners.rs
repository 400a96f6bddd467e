//! Lifecycle listeners, called outside the lifecycle lock.
//!
//! A lifecycle operation queues its events while it holds the lock (so the queue is in the
//! order the operations happened) and delivers them once it has released it
//! (`Listeners::deliver`). One thread at a time delivers, oldest event first, each event to
//! every listener in registration order. A listener that loads, reloads or unloads a plugin runs
//! that operation to its end (the lock is free); the events of that operation are delivered
//! after the listener returns, by the same thread, still in order: a listener is never
//! re-entered, and never runs on two threads at once. A thread whose operation ends while
//! another thread delivers waits for that delivery, so when a lifecycle call returns its events
//! have been delivered (unless it was made from a listener: then they follow as soon as that
//! listener returns).

use std::collections::VecDeque;
use std::sync::Arc;
use std::thread::ThreadId;

use parking_lot::{Mutex, RwLock};

/// Lifecycle events delivered to listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum LifecycleEvent {
    /// A plugin was loaded (first generation installed).
    Loaded = 0,
    /// A reload verified and initialised the new generation and swapped it in (always
    /// delivered before the matching `AfterSwap`; listeners run after the operation, so the
    /// new generation already serves when they see it).
    BeforeSwap = 1,
    /// The new generation is current; the old one has been drained.
    AfterSwap = 2,
    /// A reload failed; the old generation keeps serving.
    ReloadRolledBack = 3,
    /// A plugin was unloaded.
    Unloaded = 4,
    /// The health monitor's verdict on a plugin changed (its status; read the new one from
    /// the plugin's health report). Delivered by the health monitor's thread.
    HealthChanged = 5,
}

/// A lifecycle listener: (plugin name, event, generation number).
pub type Listener = Arc<dyn Fn(&str, LifecycleEvent, u64) + Send + Sync>;

/// The registered listeners and the events waiting to be delivered to them.
#[derive(Default)]
pub(crate) struct Listeners {
    list: RwLock<Vec<(u64, Listener)>>,
    next_id: std::sync::atomic::AtomicU64,
    queue: Mutex<VecDeque<(String, LifecycleEvent, u64)>>,
    /// Held by the thread delivering.
    delivering: Mutex<()>,
    /// That thread, so that a listener's own lifecycle call leaves its events to it.
    deliverer: Mutex<Option<ThreadId>>,
}

impl Listeners {
    /// Register a listener; returns its id (never 0) for [`Listeners::remove`].
    pub(crate) fn add(&self, l: Listener) -> u64 {
        let id = self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        self.list.write().push((id, l));
        id
    }

    /// Remove a listener by id; `false` if no listener has that id. An event being delivered
    /// when this returns may still reach it (the delivering thread took its copy of the list
    /// before); later events do not.
    pub(crate) fn remove(&self, id: u64) -> bool {
        let mut list = self.list.write();
        let before = list.len();
        list.retain(|(i, _)| *i != id);
        list.len() != before
    }

    /// Queue an event (under the lifecycle lock, so the queue keeps the operations' order).
    pub(crate) fn queue(&self, plugin: &str, ev: LifecycleEvent, generation: u64) {
        self.queue.lock().push_back((plugin.to_string(), ev, generation));
    }

    /// Deliver every queued event, oldest first. Call without the lifecycle lock.
    pub(crate) fn deliver(&self) {
        let me = std::thread::current().id();
        if *self.deliverer.lock() == Some(me) {
            // Called from a listener's own lifecycle operation: the loop below, further up
            // this thread's stack, delivers these events once the listener returns.
            return;
        }
        let _one_at_a_time = self.delivering.lock();
        *self.deliverer.lock() = Some(me);
        loop {
            // The queue's lock is released before any listener runs.
            let next = self.queue.lock().pop_front();
            let Some((plugin, ev, generation)) = next else { break };
            let ls: Vec<Listener> = self.list.read().iter().map(|(_, l)| l.clone()).collect();
            for l in ls {
                // A listener that panics must not break the lifecycle or later listeners.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| l(&plugin, ev, generation)));
            }
        }
        *self.deliverer.lock() = None;
    }
}
