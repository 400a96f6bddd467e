//! Isolated native plugins (docs/isolation.md), measured as ratios of variants run in
//! interleaved rounds in one process (benches/common):
//!
//! - `isolated_1t`: `keel_call` of the echo fixture's `echo` (16 bytes) isolated in a sandbox
//!   process (`"isolation": "process"`, the `keel-sandbox` this build compiles);
//! - `inproc_1t`: `keel_call` of the same binary in-process;
//! - `pipe_1t`: a 16-byte round trip through pipes to another process (`cat`), the stand-in
//!   for an RPC-based plugin protocol such as go-plugin's (which adds gRPC on top);
//! - `isolated_2t`: two threads calling the same isolated plugin at once (throughput scaling).
//!
//! Figures are wall ns per call per thread. `KEEL_BENCH_ROUNDS` and `KEEL_BENCH_CALLS`
//! override the defaults. Run: `cargo bench --bench isolated`.

mod common;

use std::ffi::CString;
use std::io::{Read, Write};
use std::sync::Mutex;

use common::{Buffer, Loaded};
use keel::keel_status::KEEL_OK;

const INPUT: &[u8] = b"0123456789abcdef";

thread_local! {
    static KBUF: Buffer = Buffer::new();
}

fn main() {
    let (_so, manifest) = common::echo_fixture("bench-isolated");
    let inproc = Loaded::new(&manifest, c"echo");
    let launcher = CString::new(env!("CARGO_BIN_EXE_keel-sandbox")).unwrap();
    let isolated = Loaded::with_setup(&manifest, c"echo", |h| {
        assert_eq!(
            keel::ffi::isolation::keel_host_set_native_isolation(h, true, launcher.as_ptr()),
            KEEL_OK
        );
    });
    let mut cat = std::process::Command::new("cat")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("cat");
    let pipe = Mutex::new((cat.stdin.take().unwrap(), cat.stdout.take().unwrap()));

    let n_rounds = common::rounds();
    let calls = common::env_u64("KEEL_BENCH_CALLS", 20_000);
    let f_inproc = || {
        KBUF.with(|b| assert_eq!(inproc.call(INPUT, b.0), KEEL_OK));
    };
    let f_isolated = || {
        KBUF.with(|b| assert_eq!(isolated.call(INPUT, b.0), KEEL_OK));
    };
    let f_pipe = || {
        let mut p = pipe.lock().unwrap();
        let mut back = [0u8; 16];
        p.0.write_all(INPUT).unwrap();
        p.1.read_exact(&mut back).unwrap();
        std::hint::black_box(back);
    };
    println!("{}", common::conditions());
    println!("isolated bench: {n_rounds} interleaved rounds x {calls} calls per thread per variant");
    let r = common::interleave(
        n_rounds,
        &mut [
            ("inproc_1t", &mut || common::ns_per_call_threads(1, calls, &f_inproc)),
            ("isolated_1t", &mut || {
                common::ns_per_call_threads(1, calls, &f_isolated)
            }),
            ("pipe_1t", &mut || common::ns_per_call_threads(1, calls, &f_pipe)),
            ("isolated_2t", &mut || {
                common::ns_per_call_threads(2, calls, &f_isolated)
            }),
        ],
    );
    let (_, md) = common::min_median(r.of("isolated_1t"));
    println!(
        "ABS isolated keel_call round trip, 1 thread: median {:.3} us (goal <= 5 us)",
        md / 1000.0
    );
    r.ratio(
        "isolated / in-process keel_call, 1 thread",
        "isolated_1t",
        "inproc_1t",
        "ns/call",
    );
    r.ratio(
        "pipe round trip / isolated keel_call, 1 thread (goal >= 10)",
        "pipe_1t",
        "isolated_1t",
        "ns/call",
    );
    let scaling: Vec<f64> = r
        .of("isolated_1t")
        .iter()
        .zip(r.of("isolated_2t"))
        .map(|(t1, t2)| 2.0 * t1 / t2)
        .collect();
    common::report_ratio(
        "2-thread throughput / 1-thread throughput, isolated (goal >= 1.7)",
        &scaling,
        &[],
    );
    drop(pipe);
    let _ = cat.wait();
}
