//! Cost of call-latency sampling: `keel_call` on the echo fixture with sampling off
//! (`keel_host_set_latency_sampling(host, 0)`: calls and errors are still counted) against
//! the default one call in 64 timed, and every call timed for reference. Same host, plugin,
//! buffer and build; the settings are switched at run time between interleaved rounds.
//! Figure: ratio sampled(1/64) / off, target ≤ 1.1.

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
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
