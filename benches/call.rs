//! Call overhead, measured as ratios of A and B run in interleaved rounds in one process
//! (so machine noise and other load hit both alike):
//!
//! - 1 thread: A = the fixture's function called directly through its vtable function
//!   pointer, B = the same call through `keel_call`;
//! - 2 threads: A = two threads making direct calls at once (what the machine gives two
//!   threads), B = two threads calling `keel_call` on the same plugin at once.
//!
//! All four variants (direct and keel_call, 1 and 2 threads) run in the same interleaved
//! rounds (benches/common: order rotating per round); every ratio is per round, printed as
//! min and median (`RATIO ...` lines), plus the scaling of each side. `KEEL_BENCH_ROUNDS` and
//! `KEEL_BENCH_CALLS` override the defaults. Run: `cargo bench --bench call`.

mod common;

use std::ffi::c_void;
use std::path::Path;
use std::sync::Arc;

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

thread_local! {
    static VBUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(64));
    static KBUF: Buffer = Buffer::new();
}

fn main() {
    let (so, manifest) = common::echo_fixture("bench-call");
    let direct = Direct::new(&so);
    let keel = Arc::new(Loaded::new(&manifest, c"echo"));
    let n_rounds = common::rounds();
    let calls = common::env_u64("KEEL_BENCH_CALLS", 1_000_000);

    let a = || {
        VBUF.with(|b| std::hint::black_box(direct.call(&mut b.borrow_mut())));
    };
    let b = || {
        KBUF.with(|b| std::hint::black_box(keel.call(INPUT, b.0)));
    };
    println!("{}", common::conditions());
    println!("call bench: {n_rounds} interleaved rounds x {calls} calls per thread per variant");
    // One set of rounds with all four variants, so the 1-thread overhead and both 2-thread
    // scalings come from the same moments.
    let r = common::interleave(
        n_rounds,
        &mut [
            ("direct_1t", &mut || common::ns_per_call_threads(1, calls, &a)),
            ("keel_1t", &mut || common::ns_per_call_threads(1, calls, &b)),
            ("direct_2t", &mut || common::ns_per_call_threads(2, calls, &a)),
            ("keel_2t", &mut || common::ns_per_call_threads(2, calls, &b)),
        ],
    );
    r.ratio("keel_call / direct call, 1 thread", "keel_1t", "direct_1t", "ns/call");
    let over: Vec<f64> = r
        .of("keel_1t")
        .iter()
        .zip(r.of("direct_1t"))
        .map(|(k, d)| k - d)
        .collect();
    let (mn, md) = common::min_median(&over);
    println!(
        "DIFF keel_call - direct call, 1 thread: min {mn:.2} median {md:.2} ns/call (rounds {}) (goal <= 10 ns median)",
        over.len()
    );
    // Scaling = throughput of 2 threads / throughput of 1 thread = 2 * t1 / t2 (t: wall ns
    // per call per thread).
    let scaling =
        |one: &[f64], two: &[f64]| -> Vec<f64> { one.iter().zip(two).map(|(t1, t2)| 2.0 * t1 / t2).collect() };
    let ds = scaling(r.of("direct_1t"), r.of("direct_2t"));
    let ks = scaling(r.of("keel_1t"), r.of("keel_2t"));
    common::report_ratio("2-thread scaling of direct calls (what the machine gives)", &ds, &[]);
    common::report_ratio("2-thread scaling of keel_call", &ks, &[]);
    let rel: Vec<f64> = ks.iter().zip(&ds).map(|(k, d)| k / d).collect();
    common::report_ratio("keel_call scaling / direct scaling (goal >= 0.9)", &rel, &[]);
    r.ratio(
        "keel_call / direct call, 2 threads",
        "keel_2t",
        "direct_2t",
        "ns/call/thread",
    );
}
