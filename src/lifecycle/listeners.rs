//! Lifecycle listeners, called outside the lifecycle lock.
//!
//! A lifecycle operation queues its events while it holds the lock (so the queue is in the
//! order the operations happened) and delivers them once it has released it
//! (`Listeners::deliver`). One thread at a time delivers, oldest event first; a listener that
//! loads, reloads or unloads a plugin runs that operation to its end (the lock is free), and the
//! events of that nested operation are delivered on the same thread right after it, still in
//! order. A thread whose operation ends while another thread delivers waits for that delivery,
//! so when a lifecycle call returns its events have been delivered (unless it was made from a
//! listener: then they follow as soon as that listener returns).

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::{Mutex, ReentrantMutex, RwLock};

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
}

/// A lifecycle listener: (plugin name, event, generation number).
pub type Listener = Arc<dyn Fn(&str, LifecycleEvent, u64) + Send + Sync>;

/// The registered listeners and the events waiting to be delivered to them.
#[derive(Default)]
pub(crate) struct Listeners {
    list: RwLock<Vec<Listener>>,
    queue: Mutex<VecDeque<(String, LifecycleEvent, u64)>>,
    /// Held by the thread delivering; re-entered by a listener's own lifecycle call.
    delivering: ReentrantMutex<()>,
}

impl Listeners {
    pub(crate) fn add(&self, l: Listener) {
        self.list.write().push(l);
    }

    /// Queue an event (under the lifecycle lock, so the queue keeps the operations' order).
    pub(crate) fn queue(&self, plugin: &str, ev: LifecycleEvent, generation: u64) {
        self.queue.lock().push_back((plugin.to_string(), ev, generation));
    }

    /// Deliver every queued event, oldest first. Call without the lifecycle lock.
    pub(crate) fn deliver(&self) {
        let _one_at_a_time = self.delivering.lock();
        loop {
            // The queue's lock is released before any listener runs.
            let next = self.queue.lock().pop_front();
            let Some((plugin, ev, generation)) = next else { break };
            let ls: Vec<Listener> = self.list.read().clone();
            for l in ls {
                // A listener that panics must not break the lifecycle or later listeners.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| l(&plugin, ev, generation)));
            }
        }
    }
}
