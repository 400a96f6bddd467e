//! Per-plugin metrics. The call path only bumps sharded atomics: each thread writes its own
//! cache line, so concurrent callers of one plugin never contend on a counter. Reads sum the
//! shards.
//!
//! Call latency is sampled: timing a call costs two clock reads (~40 ns), more than the
//! whole call path of a native plugin, so only one call in N per thread and plugin is timed
//! (N = [`DEFAULT_SAMPLE_EVERY`] unless the host says otherwise; see
//! [`PluginMetrics::set_sample_every`]). The countdown is the thread's own shard of the calls
//! counter, which the call path bumps anyway: a call is timed when that shard's count before
//! it is `N-1 (mod N)`. Sampled latencies go to a [`LatencyHistogram`] of fixed log-scale
//! buckets held in per-thread rows of atomics, so recording is as contention-free as
//! counting. Everything else (sums, quantiles, the Prometheus exposition in [`exposition`])
//! happens at scrape time.

pub mod exposition;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

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

/// One past the highest shard index any thread has ever claimed exclusively. Threads claim
/// the lowest free index, so a process with N caller threads uses shards `0..N` (plus the
/// overflow shard); readers sum only those instead of all 64 cache lines. Never decreases:
/// a released shard keeps its counts. A thread raises it before its first increment.
static HIGH: AtomicUsize = AtomicUsize::new(0);

/// The shards a reader must sum: `0..HIGH` and the overflow shard.
#[inline]
fn shards_in_use() -> impl Iterator<Item = usize> {
    // Acquire pairs with the Release in `claim`: a shard's index is visible before anything
    // its owner wrote into it.
    let high = HIGH.load(Ordering::Acquire).min(OVERFLOW);
    (0..high).chain(std::iter::once(OVERFLOW))
}

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
                Ok(_) => {
                    HIGH.fetch_max(idx + 1, Ordering::Release);
                    return ShardClaim { idx, exclusive: true };
                }
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

/// This thread's shard: (index, owned exclusively).
#[derive(Clone, Copy)]
struct Shard {
    idx: usize,
    exclusive: bool,
}

#[inline]
fn my_shard() -> Shard {
    let (idx, exclusive) = CLAIM.try_with(|c| (c.idx, c.exclusive)).unwrap_or((OVERFLOW, false));
    Shard { idx, exclusive }
}

/// Add `n` to a shard cell; returns the value before.
#[inline]
fn bump(cell: &AtomicU64, n: u64, shard: Shard) -> u64 {
    if shard.exclusive {
        // Only this thread writes this cell: a plain load and store, no locked instruction.
        let v = cell.load(Ordering::Relaxed);
        cell.store(v.wrapping_add(n), Ordering::Relaxed);
        v
    } else {
        cell.fetch_add(n, Ordering::Relaxed)
    }
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
        let shard = my_shard();
        bump(&self.shards[shard.idx].0, n, shard);
    }

    #[inline]
    pub fn inc(&self) {
        self.add(1)
    }

    /// Add 1 on `shard`; the shard's count before.
    #[inline]
    fn inc_at(&self, shard: Shard) -> u64 {
        bump(&self.shards[shard.idx].0, 1, shard)
    }

    pub fn get(&self) -> u64 {
        shards_in_use()
            .map(|i| self.shards[i].0.load(Ordering::Relaxed))
            .fold(0u64, u64::wrapping_add)
    }
}

// ---------------------------------------------------------------------------------------
// Latency histogram
// ---------------------------------------------------------------------------------------

/// log2 of the number of sub-buckets per octave (4 per octave: ≤ 19 % relative width).
const SUB_BITS: u32 = 2;
/// Bucket 0 holds durations up to 2^MIN_EXP ns (64 ns).
const MIN_EXP: u32 = 6;
/// The last finite bucket ends at 2^MAX_EXP ns (~68.7 s); the overflow bucket holds the rest.
const MAX_EXP: u32 = 36;
/// Number of fine buckets: 4 per octave between 64 ns and 2^36 ns, plus the first and the
/// overflow bucket.
pub const LATENCY_BUCKETS: usize = (((MAX_EXP - MIN_EXP) << SUB_BITS) + 2) as usize;

/// Octave bounds exported as Prometheus `le` buckets: 2^k ns for k in this range
/// (64 ns … ~17.2 s), then `+Inf`.
const EXPORT_EXP: std::ops::RangeInclusive<u32> = MIN_EXP..=34;

/// The fine bucket of a duration of `ns` nanoseconds. Bucket `i` holds the durations in
/// `(latency_bucket_upper(i-1), latency_bucket_upper(i)]` (bucket 0 from 0).
#[inline]
pub fn latency_bucket(ns: u64) -> usize {
    let v = ns.saturating_sub(1);
    if v < 1 << MIN_EXP {
        return 0;
    }
    if v >= 1 << MAX_EXP {
        return LATENCY_BUCKETS - 1;
    }
    let e = 63 - v.leading_zeros();
    let sub = (v >> (e - SUB_BITS)) & ((1 << SUB_BITS) - 1);
    1 + (((e - MIN_EXP) << SUB_BITS) as usize) + sub as usize
}

/// Inclusive upper bound, in nanoseconds, of fine bucket `i` (`u64::MAX` for the overflow
/// bucket).
pub fn latency_bucket_upper(i: usize) -> u64 {
    if i == 0 {
        return 1 << MIN_EXP;
    }
    if i >= LATENCY_BUCKETS - 1 {
        return u64::MAX;
    }
    let k = (i - 1) as u32;
    let e = MIN_EXP + (k >> SUB_BITS);
    let sub = (k & ((1 << SUB_BITS) - 1)) as u64;
    (1u64 << e) + ((sub + 1) << (e - SUB_BITS))
}

/// Exclusive lower bound, in nanoseconds, of fine bucket `i`.
fn latency_bucket_lower(i: usize) -> u64 {
    if i == 0 {
        0
    } else {
        latency_bucket_upper(i - 1)
    }
}

/// One thread's row of a histogram: its own cache lines.
#[repr(align(128))]
struct Row {
    buckets: [AtomicU64; LATENCY_BUCKETS],
    sum_nanos: AtomicU64,
}

impl Row {
    fn new() -> Box<Row> {
        Box::new(Row {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_nanos: AtomicU64::new(0),
        })
    }
}

/// A lock-free latency histogram: [`LATENCY_BUCKETS`] fixed log-scale buckets (4 per octave
/// from 64 ns to ~68.7 s) and a sum, in one row per thread shard. A row is allocated the
/// first time its thread records, so a plugin called from few threads costs few rows.
/// Recording is a load and store on the recording thread's own row (atomic adds on the
/// shared overflow row past 63 threads). Reads sum the rows.
pub struct LatencyHistogram {
    rows: [OnceLock<Box<Row>>; SHARDS],
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            rows: std::array::from_fn(|_| OnceLock::new()),
        }
    }
}

impl LatencyHistogram {
    /// Record one duration.
    pub fn record(&self, d: Duration) {
        self.record_at(my_shard(), u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    #[inline]
    fn record_at(&self, shard: Shard, nanos: u64) {
        let row = self.rows[shard.idx].get_or_init(Row::new);
        bump(&row.buckets[latency_bucket(nanos)], 1, shard);
        bump(&row.sum_nanos, nanos, shard);
    }

    /// Sum of every row.
    pub fn snapshot(&self) -> LatencySnapshot {
        let mut s = LatencySnapshot {
            buckets: [0; LATENCY_BUCKETS],
            sum_nanos: 0,
        };
        for row in shards_in_use().filter_map(|i| self.rows[i].get()) {
            for (acc, b) in s.buckets.iter_mut().zip(row.buckets.iter()) {
                *acc = acc.wrapping_add(b.load(Ordering::Relaxed));
            }
            s.sum_nanos = s.sum_nanos.wrapping_add(row.sum_nanos.load(Ordering::Relaxed));
        }
        s
    }
}

/// A point-in-time copy of a [`LatencyHistogram`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LatencySnapshot {
    /// Count per fine bucket (not cumulative).
    pub buckets: [u64; LATENCY_BUCKETS],
    /// Sum of the recorded durations, in nanoseconds.
    pub sum_nanos: u64,
}

impl LatencySnapshot {
    /// Number of recorded durations.
    pub fn count(&self) -> u64 {
        self.buckets.iter().fold(0u64, |a, b| a.wrapping_add(*b))
    }

    /// Mean duration in nanoseconds (exact: from the sum), if anything was recorded.
    pub fn mean_nanos(&self) -> Option<f64> {
        let n = self.count();
        (n > 0).then(|| self.sum_nanos as f64 / n as f64)
    }

    /// Estimated `q`-quantile (0 ≤ q ≤ 1) in nanoseconds, if anything was recorded: the
    /// bucket holding the rank `q·count` is found and the value interpolated linearly inside
    /// it (error at most the bucket's width, ≤ 19 % of the value above 64 ns). Durations past
    /// the last finite bucket are reported as its bound (2^36 ns).
    pub fn quantile_nanos(&self, q: f64) -> Option<f64> {
        let n = self.count();
        if n == 0 || !(0.0..=1.0).contains(&q) {
            return None;
        }
        let rank = q * n as f64;
        let mut below = 0u64;
        for (i, &b) in self.buckets.iter().enumerate() {
            if b == 0 {
                continue;
            }
            if (below + b) as f64 >= rank {
                let lo = latency_bucket_lower(i) as f64;
                if i == LATENCY_BUCKETS - 1 {
                    return Some(lo);
                }
                let hi = latency_bucket_upper(i) as f64;
                let frac = ((rank - below as f64) / b as f64).clamp(0.0, 1.0);
                return Some(lo + frac * (hi - lo));
            }
            below += b;
        }
        // Unreachable when the counts add up; fall back to the highest non-empty bucket.
        let last = self.buckets.iter().rposition(|&b| b > 0)?;
        Some(latency_bucket_upper(last).min(1 << MAX_EXP) as f64)
    }

    /// The histogram at octave bounds for Prometheus: `(upper bound in seconds, count)` per
    /// bucket, not cumulative, the last bound `f64::MAX` (rendered `+Inf`). Exact: every
    /// exported bound is also a fine-bucket bound.
    pub fn prometheus_buckets(&self) -> Vec<(f64, u64)> {
        let mut out: Vec<(f64, u64)> = EXPORT_EXP
            .map(|k| ((1u64 << k) as f64 / 1e9, 0))
            .chain(std::iter::once((f64::MAX, 0)))
            .collect();
        for (i, &b) in self.buckets.iter().enumerate() {
            if b == 0 {
                continue;
            }
            let upper = latency_bucket_upper(i);
            // Smallest exported k with upper <= 2^k; past the last one: +Inf.
            let k = 64 - (upper - 1).leading_zeros();
            let slot = if upper == u64::MAX || k > *EXPORT_EXP.end() {
                out.len() - 1
            } else {
                (k.max(MIN_EXP) - MIN_EXP) as usize
            };
            out[slot].1 += b;
        }
        out
    }
}

// ---------------------------------------------------------------------------------------
// Per-plugin metrics
// ---------------------------------------------------------------------------------------

/// Time one call in this many (per thread and plugin) unless told otherwise.
pub const DEFAULT_SAMPLE_EVERY: u32 = 64;

/// The sampling mask for "one call in `every`": `every` rounded up to a power of two, minus
/// one; `every == 0` turns sampling off (a mask no count ever matches).
pub fn sample_mask(every: u32) -> u64 {
    if every == 0 {
        return u64::MAX;
    }
    u64::from(every.checked_next_power_of_two().unwrap_or(1 << 31)) - 1
}

/// Counters of one plugin, kept across reloads (they belong to the slot).
pub struct PluginMetrics {
    pub calls: ShardedCounter,
    pub errors: ShardedCounter,
    /// Sampled call latencies.
    pub latency: LatencyHistogram,
    pub loads: AtomicU64,
    pub reloads: AtomicU64,
    pub reload_failures: AtomicU64,
    pub drain_timeouts: AtomicU64,
    /// Nanoseconds the last (re)load took.
    pub last_load_nanos: AtomicU64,
    /// A call is timed when its thread's calls shard, before the call, ends in this mask.
    sample_mask: AtomicU64,
}

impl Default for PluginMetrics {
    fn default() -> Self {
        PluginMetrics {
            calls: ShardedCounter::default(),
            errors: ShardedCounter::default(),
            latency: LatencyHistogram::default(),
            loads: AtomicU64::new(0),
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
            drain_timeouts: AtomicU64::new(0),
            last_load_nanos: AtomicU64::new(0),
            sample_mask: AtomicU64::new(sample_mask(DEFAULT_SAMPLE_EVERY)),
        }
    }
}

/// Why an isolated plugin's sandbox process ended unplanned: the `cause` label of
/// `keel_plugin_sandbox_deaths_total`, in the order of [`SandboxSnapshot::deaths`].
pub const SANDBOX_DEATH_CAUSES: [&str; 7] = [
    // A signal: SIGSEGV, SIGBUS, SIGABRT, ... (KEEL_ERR_SANDBOX_CRASHED).
    "crash",
    // exit/_exit from plugin code (KEEL_ERR_SANDBOX_EXITED).
    "exit",
    // SIGSYS from the seccomp filter (KEEL_ERR_SANDBOX_SYSCALL_REFUSED).
    "syscall_refused",
    // SIGXCPU at RLIMIT_CPU (KEEL_ERR_CPU_BUDGET).
    "cpu_limit",
    // Killed by the server for a call past its deadline (KEEL_ERR_DEADLINE).
    "deadline",
    // Killed by the kernel's OOM killer at its cgroup's memory limit.
    "memory_limit",
    // Not known (the monitor could not read the status).
    "unknown",
];

/// A point-in-time copy of an isolated plugin generation's sandbox counters (see
/// docs/isolation.md, "Metrics").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SandboxSnapshot {
    /// Its sandbox process is running now.
    pub up: bool,
    /// Sandboxes started again after a death (by a call or the health check).
    pub restarts: u64,
    /// Unplanned ends, by cause ([`SANDBOX_DEATH_CAUSES`]); an unload's or reload's planned
    /// stop is not one.
    pub deaths: [u64; SANDBOX_DEATH_CAUSES.len()],
}

/// A point-in-time copy of [`PluginMetrics`]' counters.
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
    /// Count one call around `f`, and time it if it is this thread's sampled call.
    ///
    /// The cost when not sampled: one thread-local read, a load and store on the thread's
    /// own shard, a relaxed load of the mask and a compare (plus the same store on the
    /// errors shard when `f` fails). No lock, no locked instruction, no allocation.
    #[inline]
    pub fn observe<T, E>(&self, f: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
        let shard = my_shard();
        let before = self.calls.inc_at(shard);
        let mask = self.sample_mask.load(Ordering::Relaxed);
        let r = if before & mask != mask {
            f()
        } else {
            self.timed(shard, f)
        };
        if r.is_err() {
            self.errors.inc_at(shard);
        }
        r
    }

    #[inline(never)]
    fn timed<T, E>(&self, shard: Shard, f: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
        let start = Instant::now();
        let r = f();
        let nanos = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.latency.record_at(shard, nanos);
        r
    }

    /// Time one call in `every` (rounded up to a power of two) per thread; 0 turns latency
    /// sampling off, 1 times every call.
    pub fn set_sample_every(&self, every: u32) {
        self.sample_mask.store(sample_mask(every), Ordering::Relaxed);
    }

    /// The effective sampling period (a power of two), or 0 when sampling is off.
    pub fn sample_every(&self) -> u64 {
        match self.sample_mask.load(Ordering::Relaxed) {
            u64::MAX => 0,
            m => m + 1,
        }
    }

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

    #[test]
    fn readers_sum_every_claimed_shard() {
        // Readers sum shards 0..HIGH and the overflow shard only; every thread's shard must
        // be among them from its first increment on, and the sum stays exact.
        let c = std::sync::Arc::new(ShardedCounter::default());
        let h = LatencyHistogram::default();
        let idxs: Vec<usize> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|_| {
                    let c = c.clone();
                    let h = &h;
                    s.spawn(move || {
                        c.add(3);
                        h.record(Duration::from_micros(5));
                        let mine = my_shard().idx;
                        assert!(shards_in_use().any(|i| i == mine), "shard {mine} not read");
                        mine
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(c.get(), 24);
        assert_eq!(h.snapshot().count(), 8);
        let high = HIGH.load(Ordering::Acquire);
        assert!(idxs.iter().all(|&i| i == OVERFLOW || i < high), "{idxs:?} vs {high}");
    }

    #[test]
    fn buckets_tile_the_line() {
        // Every bucket's lower bound is the previous one's upper bound, and each value lands
        // in the bucket whose (lower, upper] range holds it.
        for i in 1..LATENCY_BUCKETS - 1 {
            assert!(latency_bucket_upper(i) > latency_bucket_upper(i - 1), "bucket {i}");
            let (lo, hi) = (latency_bucket_lower(i), latency_bucket_upper(i));
            assert_eq!(latency_bucket(lo + 1), i, "lower edge of {i}");
            assert_eq!(latency_bucket(hi), i, "upper edge of {i}");
            assert_eq!(latency_bucket(hi + 1), i + 1, "past {i}");
        }
        assert_eq!(latency_bucket(0), 0);
        assert_eq!(latency_bucket(64), 0);
        assert_eq!(latency_bucket(65), 1);
        assert_eq!(latency_bucket_upper(LATENCY_BUCKETS - 2), 1 << 36);
        assert_eq!(latency_bucket((1 << 36) + 1), LATENCY_BUCKETS - 1);
        assert_eq!(latency_bucket(u64::MAX), LATENCY_BUCKETS - 1);
        // Relative width at most 25 % of the lower bound (4 sub-buckets per octave).
        for i in 2..LATENCY_BUCKETS - 1 {
            let (lo, hi) = (latency_bucket_lower(i) as f64, latency_bucket_upper(i) as f64);
            assert!((hi - lo) / lo <= 0.25 + 1e-12, "bucket {i}: {lo}..{hi}");
        }
    }

    #[test]
    fn quantiles_and_mean_from_known_samples() {
        let h = LatencyHistogram::default();
        // 1..=1000 µs, one each: p50 ≈ 500 µs, p95 ≈ 950 µs, p99 ≈ 990 µs, mean 500.5 µs.
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us));
        }
        let s = h.snapshot();
        assert_eq!(s.count(), 1000);
        assert_eq!(s.sum_nanos, 500_500_000);
        assert_eq!(s.mean_nanos(), Some(500_500.0));
        for (q, want) in [(0.5, 500_000.0), (0.95, 950_000.0), (0.99, 990_000.0)] {
            let got = s.quantile_nanos(q).unwrap();
            assert!((got - want).abs() / want < 0.2, "q{q}: {got} vs {want}");
        }
        assert!(s.quantile_nanos(1.0).unwrap() >= 1_000_000.0 * 0.8);
        assert_eq!(s.quantile_nanos(1.5), None);
        assert_eq!(LatencyHistogram::default().snapshot().quantile_nanos(0.5), None);
        assert_eq!(LatencyHistogram::default().snapshot().mean_nanos(), None);
    }

    #[test]
    fn prometheus_buckets_are_exact_at_octaves() {
        let h = LatencyHistogram::default();
        for ns in [1u64, 64, 65, 128, 129, 1000, 1 << 34, (1 << 34) + 1, 1 << 40] {
            h.record(Duration::from_nanos(ns));
        }
        let b = h.snapshot().prometheus_buckets();
        assert_eq!(b.len(), 30, "29 octave bounds + Inf");
        assert_eq!(b.last().unwrap().0, f64::MAX);
        let at = |ns: u64| {
            b.iter()
                .position(|(le, _)| (*le - ns as f64 / 1e9).abs() < 1e-15)
                .unwrap()
        };
        assert_eq!(b[at(64)].1, 2, "1 ns and 64 ns");
        assert_eq!(b[at(128)].1, 2, "65 and 128");
        assert_eq!(b[at(256)].1, 1, "129");
        assert_eq!(b[at(1024)].1, 1, "1000");
        assert_eq!(b[at(1 << 34)].1, 1);
        assert_eq!(b.last().unwrap().1, 2, "past 2^34 ns");
        assert_eq!(b.iter().map(|x| x.1).sum::<u64>(), 9);
    }

    #[test]
    fn observe_samples_one_call_in_n_per_thread() {
        let m = PluginMetrics::default();
        m.set_sample_every(4);
        assert_eq!(m.sample_every(), 4);
        for i in 0..40u32 {
            let _ = m.observe(|| if i % 10 == 0 { Err(()) } else { Ok(()) });
        }
        assert_eq!(m.calls.get(), 40);
        assert_eq!(m.errors.get(), 4);
        assert_eq!(m.latency.snapshot().count(), 10);

        m.set_sample_every(0);
        assert_eq!(m.sample_every(), 0);
        for _ in 0..40 {
            let _ = m.observe(|| Ok::<(), ()>(()));
        }
        assert_eq!(m.latency.snapshot().count(), 10, "off: nothing more timed");

        m.set_sample_every(3);
        assert_eq!(m.sample_every(), 4, "rounded up to a power of two");
        m.set_sample_every(1);
        for _ in 0..5 {
            let _ = m.observe(|| Ok::<(), ()>(()));
        }
        assert_eq!(m.latency.snapshot().count(), 15, "every call");
    }

    #[test]
    fn histogram_rows_sum_across_threads() {
        let h = std::sync::Arc::new(LatencyHistogram::default());
        let hs: Vec<_> = (0..80)
            .map(|_| {
                let h = h.clone();
                std::thread::spawn(move || (0..100).for_each(|_| h.record(Duration::from_micros(3))))
            })
            .collect();
        hs.into_iter().for_each(|t| t.join().unwrap());
        let s = h.snapshot();
        assert_eq!(s.count(), 8000, "exact across owned rows and the shared overflow row");
        assert_eq!(s.sum_nanos, 8000 * 3000);
    }
}
