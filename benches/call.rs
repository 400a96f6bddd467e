//! Call overhead: (a) the fixture's function called directly through its vtable function
//! pointer, (b) the same call through `keel_call`; and the throughput of 2 threads calling
//! the same plugin against 1 thread. Both figures are ratios/differences measured in the
//! same run. Target: (b) − (a) ≤ 20 ns; 2-thread throughput ≥ 1.7× one thread.

mod common;

use std::ffi::c_void;
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::{Buffer, Loaded};
use criterion::{criterion_group, criterion_main, Criterion};
use keel::runtime::native::{with_output, RawVtable};

const INPUT: &[u8] = b"0123456789abcdef";

struct Direct {
    _lib: libloading::Library,
    vt: *const RawVtable,
    inst: *mut c_void,
}

impl Direct {
    fn new(so: &Path) -> Direct {
        unsafe {
            let lib = libloading::Library::new(so).unwrap();
            let entry: libloading::Symbol<unsafe extern "C" fn() -> *const RawVtable> =
                lib.get(b"keel_plugin_entry\0").unwrap();
            let vt = entry();
            let mut inst = std::ptr::null_mut();
            let mut err = Vec::new();
            let api: keel::runtime::native::RawHostApi = std::mem::zeroed();
            let rc = with_output(&mut err, 1 << 16, |out| {
                ((*vt).init.unwrap())(c"{}".as_ptr(), 2, &api, &mut inst, out)
            });
            assert_eq!(rc, 0);
            Direct { _lib: lib, vt, inst }
        }
    }

    #[inline]
    fn call(&self, buf: &mut Vec<u8>) -> i32 {
        buf.clear();
        with_output(buf, usize::MAX, |out| unsafe {
            ((*self.vt).call.unwrap())(self.inst, 0, INPUT.as_ptr(), INPUT.len(), out)
        })
    }
}

/// Time `iters` calls on each of `threads` threads started together; returns wall time.
fn run_threads(k: &Arc<Loaded>, threads: usize, iters: u64) -> Duration {
    let barrier = Arc::new(Barrier::new(threads + 1));
    let hs: Vec<_> = (0..threads)
        .map(|_| {
            let k = k.clone();
            let b = barrier.clone();
            std::thread::spawn(move || {
                let buf = Buffer::new();
                b.wait();
                for _ in 0..iters {
                    std::hint::black_box(k.call(INPUT, buf.0));
                }
                b.wait();
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    barrier.wait();
    let t = start.elapsed();
    hs.into_iter().for_each(|h| h.join().unwrap());
    t
}

fn bench(c: &mut Criterion) {
    let (so, manifest) = common::echo_fixture("bench-call");
    let direct = Direct::new(&so);
    let keel = Arc::new(Loaded::new(&manifest, c"echo"));

    let mut g = c.benchmark_group("call");
    let mut vbuf = Vec::with_capacity(64);
    g.bench_function("a_direct_fn_ptr", |b| {
        b.iter(|| std::hint::black_box(direct.call(&mut vbuf)))
    });
    let kbuf = Buffer::new();
    g.bench_function("b_keel_call", |b| {
        b.iter(|| std::hint::black_box(keel.call(INPUT, kbuf.0)))
    });
    g.bench_function("keel_call_1_thread", |b| {
        b.iter_custom(|iters| run_threads(&keel, 1, iters))
    });
    // Per-call time of the aggregate: 2 threads each doing `iters` calls, wall time / 2.
    g.bench_function("keel_call_2_threads_aggregate", |b| {
        b.iter_custom(|iters| run_threads(&keel, 2, iters) / 2)
    });
    g.finish();

    // The figures the issue names, computed from one interleaved measurement in this run.
    const N: u64 = 2_000_000;
    let mut a_best = f64::MAX;
    let mut b_best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..N {
            std::hint::black_box(direct.call(&mut vbuf));
        }
        a_best = a_best.min(t.elapsed().as_nanos() as f64 / N as f64);
        let t = Instant::now();
        for _ in 0..N {
            std::hint::black_box(keel.call(INPUT, kbuf.0));
        }
        b_best = b_best.min(t.elapsed().as_nanos() as f64 / N as f64);
    }
    let mut one = f64::MAX;
    let mut two = f64::MAX;
    for _ in 0..5 {
        one = one.min(run_threads(&keel, 1, N).as_secs_f64());
        two = two.min(run_threads(&keel, 2, N).as_secs_f64());
    }
    let scaling = (2.0 * N as f64 / two) / (N as f64 / one);
    println!(
        "\nKEEL-CALL-FIGURES direct={a_best:.1}ns keel_call={b_best:.1}ns overhead={:.1}ns (target <= 20) \
         two_thread_throughput={scaling:.2}x one thread (target >= 1.7) on {} cores",
        b_best - a_best,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
