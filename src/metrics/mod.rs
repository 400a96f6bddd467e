//! Per-plugin metrics. The call path only bumps sharded atomics: each thread writes its own
//! cache line, so concurrent callers of one plugin never contend on a counter. Reads sum the
//! shards.

use std::sync::atomic::{AtomicU64, Ordering};

/// Number of shards; a power of two. Threads beyond this many share the overflow shard.
const SHARDS: usize = 64;
const OVERFLOW: usize = SHARDS - 1;

#[repr(align(128))]
#[derive(Default)]
struct Padded(AtomicU64);

/// Which shard this thread writes, and whether it owns it alone.
struct ShardClaim {
    idx: usize,
    exclusive: bool,
}

/// One bit per exclusively owned shard (the overflow shard is never owned).
static CLAIMED: AtomicU64 = AtomicU64::new(1u64 << OVERFLOW);

impl ShardClaim {
    fn claim() -> ShardClaim {
        let mut cur = CLAIMED.load(Ordering::Relaxed);
        loop {
            let free = !cur;
            if free == 0 {
                return ShardClaim {
                    idx: OVERFLOW,
                    exclusive: false,
                };
            }
            let idx = free.trailing_zeros() as usize;
            match CLAIMED.compare_exchange_weak(cur, cur | (1 << idx), Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => return ShardClaim { idx, exclusive: true },
                Err(now) => cur = now,
            }
        }
    }
}

impl Drop for ShardClaim {
    fn drop(&mut self) {
        if self.exclusive {
            // Release: the next owner sees every increment this thread made.
            CLAIMED.fetch_and(!(1u64 << self.idx), Ordering::Release);
        }
    }
}

thread_local! {
    static CLAIM: ShardClaim = ShardClaim::claim();
}

/// A counter split over cache-line-padded shards. Each thread owns a shard while it lives, so
/// an increment is a plain load and store on a line no other thread writes (no locked
/// instruction, no contention); threads past the 63rd share one shard with atomic adds.
pub struct ShardedCounter {
    shards: [Padded; SHARDS],
}

impl Default for ShardedCounter {
    fn default() -> Self {
        ShardedCounter {
            shards: std::array::from_fn(|_| Padded::default()),
        }
    }
}

impl ShardedCounter {
    #[inline]
    pub fn add(&self, n: u64) {
        let (idx, exclusive) = CLAIM.try_with(|c| (c.idx, c.exclusive)).unwrap_or((OVERFLOW, false));
        let cell = &self.shards[idx].0;
        if exclusive {
            // Only this thread writes this shard.
            cell.store(cell.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
        } else {
            cell.fetch_add(n, Ordering::Relaxed);
        }
    }

    #[inline]
    pub fn inc(&self) {
        self.add(1)
    }

    pub fn get(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .fold(0u64, u64::wrapping_add)
    }
}

/// Counters of one plugin, kept across reloads (they belong to the slot).
#[derive(Default)]
pub struct PluginMetrics {
    pub calls: ShardedCounter,
    pub errors: ShardedCounter,
    pub loads: AtomicU64,
    pub reloads: AtomicU64,
    pub reload_failures: AtomicU64,
    pub drain_timeouts: AtomicU64,
    /// Nanoseconds the last (re)load took.
    pub last_load_nanos: AtomicU64,
}

/// A point-in-time copy of [`PluginMetrics`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    pub calls: u64,
    pub errors: u64,
    pub loads: u64,
    pub reloads: u64,
    pub reload_failures: u64,
    pub drain_timeouts: u64,
    pub last_load_nanos: u64,
}

impl PluginMetrics {
    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            calls: self.calls.get(),
            errors: self.errors.get(),
            loads: self.loads.load(Ordering::Relaxed),
            reloads: self.reloads.load(Ordering::Relaxed),
            reload_failures: self.reload_failures.load(Ordering::Relaxed),
            drain_timeouts: self.drain_timeouts.load(Ordering::Relaxed),
            last_load_nanos: self.last_load_nanos.load(Ordering::Relaxed),
        }
    }
}

/// Prometheus text exposition of every plugin's counters (sorted by plugin name).
pub fn render_prometheus(plugins: &[(String, String, MetricsSnapshot)]) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let families: [(&str, &str, &str, fn(&MetricsSnapshot) -> f64); 6] = [
        ("keel_plugin_calls_total", "counter", "Calls into the plugin.", |m| {
            m.calls as f64
        }),
        (
            "keel_plugin_errors_total",
            "counter",
            "Calls that returned an error.",
            |m| m.errors as f64,
        ),
        (
            "keel_plugin_loads_total",
            "counter",
            "Successful loads of the plugin.",
            |m| m.loads as f64,
        ),
        ("keel_plugin_reloads_total", "counter", "Successful hot reloads.", |m| {
            m.reloads as f64
        }),
        (
            "keel_plugin_reload_failures_total",
            "counter",
            "Hot reloads rolled back.",
            |m| m.reload_failures as f64,
        ),
        (
            "keel_plugin_load_duration_seconds",
            "gauge",
            "Duration of the last (re)load.",
            |m| m.last_load_nanos as f64 / 1e9,
        ),
    ];
    let mut sorted: Vec<_> = plugins.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, typ, help, f) in families {
        let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {typ}");
        for (plugin, version, m) in &sorted {
            let _ = writeln!(s, "{name}{{plugin=\"{plugin}\",version=\"{version}\"}} {}", f(m));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sharded_counter_sums_across_threads() {
        let c = std::sync::Arc::new(ShardedCounter::default());
        let hs: Vec<_> = (0..100)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || (0..1000).for_each(|_| c.inc()))
            })
            .collect();
        hs.into_iter().for_each(|h| h.join().unwrap());
        assert_eq!(c.get(), 100_000, "exact across exclusive and overflow shards");
    }
}
