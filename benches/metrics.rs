//! Cost of call-latency sampling: `keel_call` on the echo fixture with sampling off
//! (`keel_host_set_latency_sampling(host, 0)`: calls and errors are still counted) against
//! the default one call in 64 timed, and every call timed for reference. Same host, plugin,
//! buffer and build; the settings are switched at run time between interleaved rounds.
//! Figure: ratio sampled(1/64) / off, target ≤ 1.1.
//!
//! Scrape cost at 1 000 plugins (the echo fixture under 1 000 names, every other one called
//! once with every call timed, so half the histograms hold a sample): `Host::metrics_text`
//! (the direct renderer) against the same families written through `prometheus-client`
//! (`Host::metrics_collector` in a registry: the renderer before issue 14) in interleaved
//! rounds, per plugin; min and median of the per-round ratios. Also with
//! `omit_idle_histograms`. Target: ≤ 8 µs per plugin.

mod common;

use std::time::{Duration, Instant};

use common::{Buffer, Loaded};
use criterion::{criterion_group, criterion_main, Criterion};
use keel::ffi::health::keel_host_set_latency_sampling;
use keel::keel_status::KEEL_OK;

const INPUT: &[u8] = b"0123456789abcdef";

/// The echo fixture loaded through the C ABI, and a buffer for its results.
struct Setup {
    echo: Loaded,
    buf: Buffer,
}

impl Setup {
    fn new() -> Setup {
        let (_, manifest) = common::echo_fixture("bench-metrics");
        Setup {
            echo: Loaded::new(&manifest, c"echo"),
            buf: Buffer::new(),
        }
    }

    fn sampling(&self, every: u32) {
        assert_eq!(keel_host_set_latency_sampling(self.echo.host, every), KEEL_OK);
    }

    #[inline]
    fn call(&self) -> keel::keel_status {
        self.echo.call(INPUT, self.buf.0)
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

    // The figure: interleaved rounds (benches/common), per-round ratios, in this run.
    const N: u64 = 1_000_000;
    println!("\n{}", common::conditions());
    let run = |every: u32| {
        s.sampling(every);
        s.per_call(N)
    };
    let r = common::interleave(
        common::rounds(),
        &mut [
            ("sampling_off", &mut || run(0)),
            ("sampled_1_in_64", &mut || run(64)),
            ("every_call", &mut || run(1)),
        ],
    );
    r.ratio(
        "keel_call with 1-in-64 latency sampling / without (goal <= 1.1)",
        "sampled_1_in_64",
        "sampling_off",
        "ns",
    );
    r.ratio(
        "keel_call timing every call / without",
        "every_call",
        "sampling_off",
        "ns",
    );
    scrape();
}

/// 1 000 echo plugins in one host, every other one called once.
fn thousand_plugins() -> keel::Host {
    let (so, _) = common::echo_fixture("bench-metrics-scrape");
    let digest = keel::trust::digest::sha256_hex(&std::fs::read(&so).unwrap());
    let host = keel::Host::new();
    host.trust().set_require_signature(false).unwrap();
    host.set_latency_sampling(1);
    for i in 0..PLUGINS {
        let m = so.with_file_name(format!("scrape{i}.json"));
        std::fs::write(
            &m,
            serde_json::json!({
                "manifest_version": 1, "name": format!("scrape-plugin-{i:04}"), "version": "1.4.2",
                "runtime": "native", "binary": {"linux": "libecho.so"}, "sha256": digest
            })
            .to_string(),
        )
        .unwrap();
        let slot = host.load(&m).unwrap();
        if i % 2 == 0 {
            let id = slot.resolve("echo").unwrap();
            let mut out = Vec::new();
            slot.call(id, b"x", &mut out).unwrap();
        }
    }
    host
}

const PLUGINS: usize = 1000;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn scrape() {
    let host = thousand_plugins();
    let mut reg = prometheus_client::registry::Registry::default();
    reg.register_collector(Box::new(host.metrics_collector()));
    let direct = || host.metrics_text();
    let through_client = || {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &reg).unwrap();
        s
    };
    let lean_opts = keel::metrics::exposition::ExpositionOptions {
        omit_idle_histograms: true,
    };
    let lean = || host.metrics_text_with(lean_opts);
    // Same bytes (no plugin-defined metrics here, so the texts are equal in full).
    assert_eq!(direct(), through_client());
    let bytes = direct().len();
    let lean_bytes = lean().len();
    let time = |f: &dyn Fn() -> String| {
        let t = Instant::now();
        std::hint::black_box(f());
        t.elapsed().as_secs_f64() * 1e6 / PLUGINS as f64
    };
    for _ in 0..5 {
        time(&direct);
        time(&through_client);
    }
    const ROUNDS: usize = 60;
    let (mut d, mut c, mut l, mut ratios, mut lean_ratios) = (vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..ROUNDS {
        let a = time(&direct);
        let b = time(&through_client);
        let e = time(&lean);
        ratios.push(a / b);
        lean_ratios.push(e / a);
        d.push(a);
        c.push(b);
        l.push(e);
    }
    let min = |v: &[f64]| v.iter().cloned().fold(f64::MAX, f64::min);
    println!(
        "KEEL-METRICS-FIGURES scrape at {PLUGINS} plugins ({} bytes/plugin): metrics_text median={:.2}us/plugin \
         min={:.2} (target <= 8) prometheus-client median={:.2}us/plugin min={:.2}; \
         direct/prometheus-client ratio min={:.3} median={:.3}; omit_idle_histograms ({} bytes/plugin, \
         half idle) median={:.2}us/plugin ratio to full min={:.3} median={:.3} ({ROUNDS} interleaved rounds)",
        bytes / PLUGINS,
        median(&mut d.clone()),
        min(&d),
        median(&mut c.clone()),
        min(&c),
        min(&ratios),
        median(&mut ratios),
        lean_bytes / PLUGINS,
        median(&mut l),
        min(&lean_ratios),
        median(&mut lean_ratios),
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
