//! Cost of plugin-defined metrics and of RPC dispatch, on the capmetrics fixture
//! (tests/fixtures/native/capmetrics.c, -O2) through the C ABI:
//!
//! - metrics: `hello` of a plugin granted `metrics:write` (each call does `metric_add`,
//!   `metric_set` and `metric_observe` through the host-API table) against `hello` of the
//!   same library loaded without the capability (the entries are NULL: no update). The
//!   difference per call, divided by 3, is the cost of one update.
//! - RPC: `keel_host_rpc_call(host, "b.echo", ...)` against `keel_call` of the same `echo`
//!   function resolved once.
//!
//! Interleaved rounds in one process; min and median of the per-round ratios.

mod common;

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Buffer, Loaded};
use criterion::{criterion_group, criterion_main, Criterion};
use keel::ffi::capmetrics::keel_host_rpc_call;
use keel::ffi::host::*;
use keel::keel_status::KEEL_OK;

const INPUT: &[u8] = b"0123456789abcdef";

/// Build the fixture once and write two manifests for it: `withm` (metrics:write,
/// rpc:register, endpoint b.echo) and `nom` (no capability).
fn fixture() -> (PathBuf, PathBuf) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("target").join("bench-capmetrics");
    std::fs::create_dir_all(&dir).unwrap();
    let so = dir.join("libcapmetrics.so");
    let st = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-shared", "-fPIC", "-O2", "-I"])
        .arg(root.join("include"))
        .arg("-o")
        .arg(&so)
        .arg(root.join("tests/fixtures/native/capmetrics.c"))
        .status()
        .expect("run cc");
    assert!(st.success());
    let digest = keel::trust::digest::sha256_hex(&std::fs::read(&so).unwrap());
    let write = |name: &str, extra: serde_json::Value| {
        let mut m = serde_json::json!({
            "manifest_version": 1, "name": name, "version": "1.0.0", "runtime": "native",
            "binary": {"linux": "libcapmetrics.so"}, "sha256": digest
        });
        for (k, v) in extra.as_object().unwrap() {
            m[k] = v.clone();
        }
        let p = dir.join(format!("{name}.json"));
        std::fs::write(&p, m.to_string()).unwrap();
        p
    };
    (
        write(
            "withm",
            serde_json::json!({"capabilities": ["metrics:write", "rpc:register"],
                               "config": {"endpoints": "b.echo=echo"}}),
        ),
        write("nom", serde_json::json!({})),
    )
}

fn allow_all(host: *mut keel_host) {
    let names = [c"metrics:write", c"rpc:register"];
    let ptrs: Vec<_> = names.iter().map(|c| c.as_ptr()).collect();
    assert_eq!(
        keel::ffi::deps::keel_host_set_capability_allowlist(host, ptrs.as_ptr(), ptrs.len()),
        KEEL_OK
    );
}

/// Nanoseconds per iteration of `f` over `n` iterations.
fn per_call(n: u64, mut f: impl FnMut() -> keel::keel_status) -> f64 {
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(f());
    }
    t.elapsed().as_nanos() as f64 / n as f64
}

fn min_median(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (v[0], v[v.len() / 2])
}

fn bench(c: &mut Criterion) {
    let (withm, nom) = fixture();
    let metered = Loaded::with_setup(&withm, c"hello", allow_all);
    let plain = Loaded::new(&nom, c"hello");
    let mut echo = 0;
    assert_eq!(
        keel_plugin_function(metered.plugin, c"echo".as_ptr(), &mut echo),
        KEEL_OK
    );
    let endpoint = CString::new("b.echo").unwrap();
    let buf = Buffer::new();
    let rpc = || keel_host_rpc_call(metered.host, endpoint.as_ptr(), INPUT.as_ptr(), INPUT.len(), buf.0);
    let direct = || keel_call(metered.plugin, echo, INPUT.as_ptr(), INPUT.len(), buf.0);
    assert_eq!(rpc(), KEEL_OK);
    assert_eq!(metered.call(INPUT, buf.0), KEEL_OK);

    let mut g = c.benchmark_group("capmetrics");
    g.bench_function("hello_without_metrics", |b| b.iter(|| plain.call(INPUT, buf.0)));
    g.bench_function("hello_with_3_metric_updates", |b| b.iter(|| metered.call(INPUT, buf.0)));
    g.bench_function("keel_call_echo", |b| b.iter(direct));
    g.bench_function("keel_host_rpc_call_echo", |b| b.iter(rpc));
    g.finish();

    const N: u64 = 1_000_000;
    let (mut m_ratio, mut m_diff, mut r_ratio, mut r_diff) = (vec![], vec![], vec![], vec![]);
    for _ in 0..9 {
        let a = per_call(N, || plain.call(INPUT, buf.0));
        let b = per_call(N, || metered.call(INPUT, buf.0));
        let d = per_call(N, direct);
        let r = per_call(N, rpc);
        m_ratio.push(b / a);
        m_diff.push((b - a) / 3.0);
        r_ratio.push(r / d);
        r_diff.push(r - d);
    }
    let (mr_min, mr_med) = min_median(m_ratio);
    let (md_min, md_med) = min_median(m_diff);
    let (rr_min, rr_med) = min_median(r_ratio);
    let (rd_min, rd_med) = min_median(r_diff);
    println!(
        "\nKEEL-CAPMETRICS-FIGURES metrics: hello with 3 updates / without: min {mr_min:.3} median {mr_med:.3}; \
         per update min {md_min:.1}ns median {md_med:.1}ns\n\
         KEEL-CAPMETRICS-FIGURES rpc: keel_host_rpc_call / keel_call (echo): min {rr_min:.3} median {rr_med:.3}; \
         overhead min {rd_min:.1}ns median {rd_med:.1}ns"
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
