//! Shared by the benches (`mod common;`; cargo takes only `benches/*.rs` as bench targets, so
//! this file is none): the echo fixture built for measuring, and a plugin loaded through the
//! C ABI with one function resolved.
#![allow(dead_code)]

use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};
use std::process::Command;

use keel::ffi::host::*;
use keel::keel_status::{self, KEEL_OK};

/// Build `tests/fixtures/native/echo.c` (-O2) into `<repo>/target/<dir_name>/libecho.so`
/// and write `echo.json` next to it, pinning its digest. Returns (library, manifest).
pub fn echo_fixture(dir_name: &str) -> (PathBuf, PathBuf) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("target").join(dir_name);
    std::fs::create_dir_all(&dir).unwrap();
    let so = dir.join("libecho.so");
    let digest = build_echo(&so, &[]);
    let manifest = dir.join("echo.json");
    std::fs::write(
        &manifest,
        serde_json::json!({
            "manifest_version": 1, "name": "echo", "version": "1.0.0", "runtime": "native",
            "binary": {"linux": "libecho.so"}, "sha256": digest
        })
        .to_string(),
    )
    .unwrap();
    (so, manifest)
}

/// Build `tests/fixtures/native/echo.c` (-O2, with the given `-D` definitions) into `so`;
/// returns the library's SHA-256 (hex).
pub fn build_echo(so: &Path, defines: &[String]) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let st = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-shared", "-fPIC", "-O2", "-I"])
        .arg(root.join("include"))
        .args(defines.iter().map(|d| format!("-D{d}")))
        .arg("-o")
        .arg(so)
        .arg(root.join("tests/fixtures/native/echo.c"))
        .status()
        .expect("run cc");
    assert!(st.success());
    keel::trust::digest::sha256_hex(&std::fs::read(so).unwrap())
}

/// A host (unsigned plugins allowed) with the plugin of `manifest` loaded and its function
/// `function` resolved; plugin handle and host are freed when dropped.
pub struct Loaded {
    pub host: *mut keel_host,
    pub plugin: *mut keel_plugin,
    pub function: keel_function,
}

// The C ABI's host and plugin calls are thread-safe; buffers stay per thread.
// SAFETY: the C ABI documents host and plugin handles as thread-safe; buffers are per thread.
unsafe impl Send for Loaded {}
// SAFETY: the C ABI documents host and plugin handles as thread-safe; buffers are per thread.
unsafe impl Sync for Loaded {}

impl Loaded {
    pub fn new(manifest: &Path, function: &CStr) -> Loaded {
        Loaded::with_setup(manifest, function, |_| {})
    }

    /// As [`Loaded::new`], running `setup` on the fresh host before the load.
    pub fn with_setup(manifest: &Path, function: &CStr, setup: impl FnOnce(*mut keel_host)) -> Loaded {
        let mut host = std::ptr::null_mut();
        assert_eq!(keel_host_new(&mut host), KEEL_OK);
        assert_eq!(keel::ffi::trust::keel_host_set_require_signature(host, false), KEEL_OK);
        setup(host);
        let path = CString::new(manifest.to_str().unwrap()).unwrap();
        let mut plugin = std::ptr::null_mut();
        assert_eq!(keel_host_load(host, path.as_ptr(), &mut plugin), KEEL_OK);
        let mut f = 0;
        assert_eq!(keel_plugin_function(plugin, function.as_ptr(), &mut f), KEEL_OK);
        Loaded {
            host,
            plugin,
            function: f,
        }
    }

    /// `keel_call` of the resolved function with `input`, the result into `out`.
    #[inline]
    pub fn call(&self, input: &[u8], out: *mut keel_buffer) -> keel_status {
        keel_call(self.plugin, self.function, input.as_ptr(), input.len(), out)
    }
}

impl Drop for Loaded {
    fn drop(&mut self) {
        keel_plugin_free(self.plugin);
        keel_host_free(self.host);
    }
}

/// A `keel_buffer`, freed when dropped.
pub struct Buffer(pub *mut keel_buffer);

impl Buffer {
    pub fn new() -> Buffer {
        let mut b = std::ptr::null_mut();
        assert_eq!(keel_buffer_new(&mut b), KEEL_OK);
        Buffer(b)
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        keel_buffer_free(self.0);
    }
}

// ---------------------------------------------------------------------------------------
// The interleaved method: every ratio a bench reports comes from here.
//
// Each round runs every variant once (one timed batch each), in an order that rotates from
// round to round (A B C, B C A, C A B, ...), so slow drifts of the machine (other jobs,
// frequency, page cache) hit all variants alike. A ratio is computed per round (B/A of that
// round) and reported as the min and the median over the rounds, next to the median of the
// absolute figures. Never compare best-of-N runs taken at different moments.
// ---------------------------------------------------------------------------------------

/// An unsigned integer from the environment, or `default`.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Rounds of the interleaved benches: `KEEL_BENCH_ROUNDS`, at least 15.
pub fn rounds() -> usize {
    env_u64("KEEL_BENCH_ROUNDS", 21).max(15) as usize
}

/// Rounds for cold starts (each round compiles a module per variant): `rounds` capped by
/// `KEEL_BENCH_COLD_ROUNDS` (default 15), at least 15.
pub fn cold_rounds(rounds: usize) -> usize {
    rounds.min(env_u64("KEEL_BENCH_COLD_ROUNDS", 15) as usize).max(15)
}

/// The per-round figures of `k` variants (one value per variant per round, e.g. ns/op).
pub struct Rounds {
    pub names: Vec<String>,
    /// `values[v][r]`: variant `v` in round `r`.
    pub values: Vec<Vec<f64>>,
}

/// Run `rounds` interleaved rounds of the variants (after one warm-up round that is not
/// recorded). Each closure runs one timed batch and returns its figure (e.g. ns per op).
pub fn interleave(rounds: usize, variants: &mut [(&str, &mut dyn FnMut() -> f64)]) -> Rounds {
    let k = variants.len();
    for (_, f) in variants.iter_mut() {
        f();
    }
    let mut values = vec![Vec::with_capacity(rounds); k];
    for r in 0..rounds {
        let mut this = vec![0.0; k];
        for i in 0..k {
            let v = (r + i) % k;
            this[v] = (variants[v].1)();
        }
        for v in 0..k {
            values[v].push(this[v]);
        }
    }
    Rounds {
        names: variants.iter().map(|(n, _)| n.to_string()).collect(),
        values,
    }
}

/// Min and median of `xs` (sorted copy; NaN-free input).
pub fn min_median(xs: &[f64]) -> (f64, f64) {
    let mut s = xs.to_vec();
    s.sort_by(f64::total_cmp);
    (s[0], median_sorted(&s))
}

fn median_sorted(s: &[f64]) -> f64 {
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

pub fn median(xs: &[f64]) -> f64 {
    min_median(xs).1
}

impl Rounds {
    fn index(&self, name: &str) -> usize {
        self.names
            .iter()
            .position(|n| n == name)
            .unwrap_or_else(|| panic!("no variant {name}"))
    }

    /// Per-round values of a variant.
    pub fn of(&self, name: &str) -> &[f64] {
        &self.values[self.index(name)]
    }

    /// Per-round ratios `num / den` (same round).
    pub fn ratios(&self, num: &str, den: &str) -> Vec<f64> {
        let (n, d) = (self.of(num), self.of(den));
        n.iter().zip(d).map(|(a, b)| a / b).collect()
    }

    /// Print `RATIO <what>: min X median Y (rounds N) ...` for `num / den` and return
    /// (min, median).
    pub fn ratio(&self, what: &str, num: &str, den: &str, unit: &str) -> (f64, f64) {
        let r = self.ratios(num, den);
        report_ratio(
            what,
            &r,
            &[(num, median(self.of(num)), unit), (den, median(self.of(den)), unit)],
        )
    }

    /// Print the median and min of a variant's absolute figure.
    pub fn absolute(&self, name: &str, unit: &str) -> (f64, f64) {
        let (mn, md) = min_median(self.of(name));
        println!(
            "ABS {name}: min {mn:.3} median {md:.3} {unit} (rounds {})",
            self.of(name).len()
        );
        (mn, md)
    }
}

/// Print a ratio line from per-round ratios (and the absolute medians it came from).
pub fn report_ratio(what: &str, per_round: &[f64], abs: &[(&str, f64, &str)]) -> (f64, f64) {
    let (mn, md) = min_median(per_round);
    let abs: Vec<String> = abs.iter().map(|(n, v, u)| format!("{n} {v:.3} {u}")).collect();
    println!(
        "RATIO {what}: min {mn:.3} median {md:.3} (rounds {}) [medians: {}]",
        per_round.len(),
        abs.join(", ")
    );
    (mn, md)
}

/// Nanoseconds per call of `calls` calls of `f` on this thread.
#[inline(never)]
pub fn ns_per_call(calls: u64, f: &mut dyn FnMut()) -> f64 {
    let t = std::time::Instant::now();
    for _ in 0..calls {
        f();
    }
    t.elapsed().as_nanos() as f64 / calls as f64
}

/// Wall time of `calls` calls of `f` on each of `threads` threads started together (the
/// threads are started before the clock and released by a barrier), in ns per call per
/// thread: throughput of `threads` threads is `threads / value`.
pub fn ns_per_call_threads<F: Fn() + Sync>(threads: usize, calls: u64, f: &F) -> f64 {
    use std::sync::Barrier;
    let barrier = Barrier::new(threads + 1);
    let d = std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                barrier.wait();
                for _ in 0..calls {
                    f();
                }
                barrier.wait();
            });
        }
        barrier.wait();
        let start = std::time::Instant::now();
        barrier.wait();
        start.elapsed()
    });
    d.as_nanos() as f64 / calls as f64
}

/// One line describing the machine and its load, for every bench's output.
pub fn conditions() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!(
        "CONDITIONS cpus={} cpu=\"{cpu}\" loadavg=\"{}\" rounds={}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        load.trim(),
        rounds()
    )
}
