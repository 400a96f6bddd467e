//! Call overhead, measured as ratios of A and B run in interleaved rounds in one process
//! (so machine noise and other load hit both alike):
//!
//! - 1 thread: A = the fixture's function called directly through its vtable function
//!   pointer, B = the same call through `keel_call`;
//! - 2 threads: A = two threads making direct calls at once (what the machine gives two
//!   threads), B = two threads calling `keel_call` on the same plugin at once.
//!
//! Each round times `CALLS` calls of A and of B (the order alternates per round) and
//! records B/A; the bench prints the min and the median of the per-round ratios, and the
//! per-call times of the median round for orientation. `KEEL_BENCH_ROUNDS` and
//! `KEEL_BENCH_CALLS` override the defaults. Run: `cargo bench --bench call`.

mod common;

use std::ffi::c_void;
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::{Buffer, Loaded};
use keel::runtime::native::{with_output, RawVtable};

const INPUT: &[u8] = b"0123456789abcdef";

struct Direct {
    _lib: libloading::Library,
    vt: *const RawVtable,
    inst: *mut c_void,
}

// SAFETY: the echo fixture's instance may be called from many threads at once (its calls
// share no mutable state); the vtable is immutable and the library stays loaded while the
// `Direct` lives.
unsafe impl Send for Direct {}
// SAFETY: as above: `call` takes `&self` and the fixture's call is thread-safe.
unsafe impl Sync for Direct {}

impl Direct {
    fn new(so: &Path) -> Direct {
        // SAFETY: the fixture is built by the test build and exports `keel_plugin_entry`
        // with the Keel ABI; `init` gets a zeroed host API (no capabilities), as the
        // fixture accepts.
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
        // SAFETY: `vt` and `inst` come from a successful `init` of the loaded fixture;
        // function 0 exists; `out` is the sink `with_output` built for `buf`.
        with_output(buf, usize::MAX, |out| unsafe {
            ((*self.vt).call.unwrap())(self.inst, 0, INPUT.as_ptr(), INPUT.len(), out)
        })
    }
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Time `calls` calls of `f` on each of `threads` threads started together; wall time.
fn timed<F: Fn() + Sync>(threads: usize, calls: u64, f: &F) -> Duration {
    let barrier = Barrier::new(threads + 1);
    std::thread::scope(|s| {
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
        let start = Instant::now();
        barrier.wait();
        start.elapsed()
    })
}

struct Figures {
    ratios: Vec<f64>,
    a: Vec<f64>,
    b: Vec<f64>,
}

impl Figures {
    fn report(mut self, what: &str) {
        let mut order: Vec<usize> = (0..self.ratios.len()).collect();
        order.sort_by(|&i, &j| self.ratios[i].total_cmp(&self.ratios[j]));
        let med = order[order.len() / 2];
        self.ratios.sort_by(f64::total_cmp);
        println!(
            "KEEL-CALL-FIGURES {what}: B/A min={:.3} median={:.3} over {} rounds (median round: A={:.1} ns/call, B={:.1} ns/call)",
            self.ratios[0],
            self.ratios[self.ratios.len() / 2],
            self.ratios.len(),
            self.a[med],
            self.b[med]
        );
    }
}

/// Interleaved rounds of A and B, `threads` threads each, `calls` calls per thread.
fn rounds(rounds: u64, calls: u64, threads: usize, a: &(impl Fn() + Sync), b: &(impl Fn() + Sync)) -> Figures {
    let per_call = |d: Duration| d.as_nanos() as f64 / calls as f64;
    let mut f = Figures {
        ratios: Vec::new(),
        a: Vec::new(),
        b: Vec::new(),
    };
    // Warm-up (not recorded).
    timed(threads, calls / 4 + 1, a);
    timed(threads, calls / 4 + 1, b);
    for r in 0..rounds {
        let (ta, tb) = if r % 2 == 0 {
            let ta = timed(threads, calls, a);
            (ta, timed(threads, calls, b))
        } else {
            let tb = timed(threads, calls, b);
            (timed(threads, calls, a), tb)
        };
        f.a.push(per_call(ta));
        f.b.push(per_call(tb));
        f.ratios.push(per_call(tb) / per_call(ta));
    }
    f
}

thread_local! {
    static VBUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(64));
    static KBUF: Buffer = Buffer::new();
}

fn main() {
    let (so, manifest) = common::echo_fixture("bench-call");
    let direct = Direct::new(&so);
    let keel = Arc::new(Loaded::new(&manifest, c"echo"));
    let n_rounds = env("KEEL_BENCH_ROUNDS", 21);
    let calls = env("KEEL_BENCH_CALLS", 1_000_000);

    let a = || {
        VBUF.with(|b| std::hint::black_box(direct.call(&mut b.borrow_mut())));
    };
    let b = || {
        KBUF.with(|b| std::hint::black_box(keel.call(INPUT, b.0)));
    };
    println!(
        "call bench: {n_rounds} interleaved rounds x {calls} calls per thread, {} cores available",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    rounds(n_rounds, calls, 1, &a, &b).report("1 thread (A=direct fn ptr, B=keel_call)");
    rounds(n_rounds, calls, 2, &a, &b).report("2 threads (A=2x direct fn ptr, B=2x keel_call)");
}
