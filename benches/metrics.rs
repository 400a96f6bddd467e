//! Cost of call-latency sampling: `keel_call` on the echo fixture with sampling off
//! (`keel_host_set_latency_sampling(host, 0)`: calls and errors are still counted) against
//! the default one call in 64 timed, and every call timed for reference. Same host, plugin,
//! buffer and build; the settings are switched at run time between interleaved rounds.
//! Figure: ratio sampled(1/64) / off, target ≤ 1.1.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use keel::ffi::health::keel_host_set_latency_sampling;
use keel::ffi::host::*;
use keel::keel_status::KEEL_OK;

const INPUT: &[u8] = b"0123456789abcdef";

fn build_fixture(dir: &Path) -> PathBuf {
    let so = dir.join("libecho.so");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let st = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-shared", "-fPIC", "-O2", "-I"])
        .arg(root.join("include"))
        .arg("-o")
        .arg(&so)
        .arg(root.join("tests/fixtures/native/echo.c"))
        .status()
        .expect("run cc");
    assert!(st.success());
    so
}

struct Setup {
    host: *mut keel_host,
    plugin: *mut keel_plugin,
    function: keel_function,
    buf: *mut keel_buffer,
}

impl Setup {
    fn new() -> Setup {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-metrics");
        std::fs::create_dir_all(&dir).unwrap();
        let so = build_fixture(&dir);
        let digest = keel::trust::digest::sha256_hex(&std::fs::read(&so).unwrap());
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
        let mut host = std::ptr::null_mut();
        assert_eq!(keel_host_new(&mut host), KEEL_OK);
        assert_eq!(keel::ffi::trust::keel_host_set_require_signature(host, false), KEEL_OK);
        let path = std::ffi::CString::new(manifest.to_str().unwrap()).unwrap();
        let mut plugin = std::ptr::null_mut();
        assert_eq!(keel_host_load(host, path.as_ptr(), &mut plugin), KEEL_OK);
        let mut function = 0;
        assert_eq!(keel_plugin_function(plugin, c"echo".as_ptr(), &mut function), KEEL_OK);
        let mut buf = std::ptr::null_mut();
        assert_eq!(keel_buffer_new(&mut buf), KEEL_OK);
        Setup {
            host,
            plugin,
            function,
            buf,
        }
    }

    fn sampling(&self, every: u32) {
        assert_eq!(keel_host_set_latency_sampling(self.host, every), KEEL_OK);
    }

    #[inline]
    fn call(&self) -> keel::keel_status {
        keel_call(self.plugin, self.function, INPUT.as_ptr(), INPUT.len(), self.buf)
    }

    /// Nanoseconds per call over `n` calls.
    fn per_call(&self, n: u64) -> f64 {
        let t = Instant::now();
        for _ in 0..n {
            std::hint::black_box(self.call());
        }
        t.elapsed().as_nanos() as f64 / n as f64
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        keel_buffer_free(self.buf);
        keel_plugin_free(self.plugin);
        keel_host_free(self.host);
    }
}

fn bench(c: &mut Criterion) {
    let s = Setup::new();
    let mut g = c.benchmark_group("metrics");
    for (name, every) in [
        ("keel_call_sampling_off", 0),
        ("keel_call_sampling_1_in_64", 64),
        ("keel_call_sampling_every_call", 1),
    ] {
        s.sampling(every);
        g.bench_function(name, |b| b.iter(|| std::hint::black_box(s.call())));
    }
    g.finish();

    // The figure: interleaved rounds, best of each, in this run.
    const N: u64 = 2_000_000;
    let (mut off, mut sampled, mut every) = (f64::MAX, f64::MAX, f64::MAX);
    for _ in 0..7 {
        s.sampling(0);
        off = off.min(s.per_call(N));
        s.sampling(64);
        sampled = sampled.min(s.per_call(N));
        s.sampling(1);
        every = every.min(s.per_call(N));
    }
    println!(
        "\nKEEL-METRICS-FIGURES keel_call sampling_off={off:.1}ns sampled_1_in_64={sampled:.1}ns \
         ratio={:.3} (target <= 1.1) every_call={every:.1}ns (ratio {:.2})",
        sampled / off,
        every / off
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
