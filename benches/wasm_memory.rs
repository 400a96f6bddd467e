//! Per-call cost of the WASM memory modes (docs/wasm.md): `static` (8 GiB reserved per
//! instance, no bounds checks), `capped` (the default: the cap + 64 KiB reserved, explicit
//! bounds checks) and `dynamic` (the current size + 64 KiB, explicit bounds checks, moving).
//!
//! Interleaved rounds in one process: each round times every mode once (order reversed every
//! other round), and the per-round ratios capped/static and dynamic/static are reported as min
//! and median, with the median time per call of each mode. Cases, each with metering on (the
//! default) and off:
//!   - trivial: echo.wat `add` (8 bytes in, 4 out);
//!   - sum64k WAT: compute.wat `sum` over 64 KiB (one i64.load8_u per byte);
//!   - sum64k C: compute.c `sum` over 64 KiB, clang -O2 for wasm32 (the byte sum).
//!
//! Run: `cargo bench --bench wasm_memory` (KEEL_BENCH_ROUNDS, default 31). Needs clang with
//! the wasm32 target, like benches/wasm.rs.

#[path = "../tests/wasm_support/mod.rs"]
mod wasm_support;

use std::time::Instant;

use keel::runtime::wasm::{MemoryMode, WasmConfig, WasmPlugin, WasmRuntime};
use keel::runtime::{HostServices, Instance};
use serde_json::json;
use wasm_support::*;

/// (label, module bytes, function, input, fuel, expected output)
type Case<'a> = (&'a str, &'a [u8], &'a str, &'a [u8], u64, Vec<u8>);

const MODES: [MemoryMode; 3] = [MemoryMode::Static, MemoryMode::Capped, MemoryMode::Dynamic];

fn load(rt: &WasmRuntime, name: &str, wasm: &[u8]) -> WasmPlugin {
    let m = manifest(name, json!({"capabilities": ["log"]}));
    rt.load(&artifact(wasm.to_vec()), &context(&m, HostServices::default()))
        .unwrap()
}

fn function(p: &WasmPlugin, f: &str) -> u32 {
    p.functions().iter().position(|n| n == f).unwrap() as u32
}

/// Nanoseconds per call over `n` calls.
fn per_call(p: &WasmPlugin, f: u32, input: &[u8], out: &mut Vec<u8>, n: u64) -> f64 {
    let t = Instant::now();
    for _ in 0..n {
        out.clear();
        p.call(f, std::hint::black_box(input), out).unwrap();
    }
    t.elapsed().as_nanos() as f64 / n as f64
}

fn min_median(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (v[0], v[v.len() / 2])
}

fn main() {
    let rounds: usize = std::env::var("KEEL_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(31);
    let dir = tempfile::tempdir().unwrap();
    let echo = wat_fixture("echo");
    let compute_wat = wat_fixture("compute");
    let compute_c = build_c_wasm("compute", dir.path());
    let data: Vec<u8> = (0..65536u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let expect_sum: u64 = data.iter().map(|b| *b as u64).sum();
    let add_input: Vec<u8> = [40u32, 2].iter().flat_map(|v| v.to_le_bytes()).collect();
    println!("KEEL-WASM-MEMORY rounds={rounds} (ratio = mode / static per round; min / median; median ns per call)");
    for metering in [true, false] {
        let rts: Vec<WasmRuntime> = MODES
            .iter()
            .map(|&memory| {
                WasmRuntime::new(WasmConfig {
                    memory,
                    metering,
                    ..WasmConfig::default()
                })
                .unwrap()
            })
            .collect();
        let cases: [Case; 3] = [
            (
                "trivial add",
                &echo,
                "add",
                &add_input,
                100_000,
                42u32.to_le_bytes().to_vec(),
            ),
            (
                "sum64k WAT",
                &compute_wat,
                "sum",
                &data,
                200,
                expect_sum.to_le_bytes().to_vec(),
            ),
            (
                "sum64k C",
                &compute_c,
                "sum",
                &data,
                400,
                expect_sum.to_le_bytes().to_vec(),
            ),
        ];
        for (case, wasm, fname, input, n, expect) in cases {
            let plugins: Vec<WasmPlugin> = rts.iter().map(|rt| load(rt, "bench", wasm)).collect();
            let f = function(&plugins[0], fname);
            let mut out = Vec::with_capacity(64);
            for p in &plugins {
                out.clear();
                p.call(f, input, &mut out).unwrap();
                assert_eq!(out, expect, "{case}");
                per_call(p, f, input, &mut out, n / 4); // warm up
            }
            let mut times: [Vec<f64>; 3] = Default::default();
            let mut ratios: [Vec<f64>; 2] = Default::default();
            for r in 0..rounds {
                let mut t = [0f64; 3];
                let order: [usize; 3] = if r % 2 == 0 { [0, 1, 2] } else { [2, 1, 0] };
                for m in order {
                    t[m] = per_call(&plugins[m], f, input, &mut out, n);
                }
                for m in 0..3 {
                    times[m].push(t[m]);
                }
                ratios[0].push(t[1] / t[0]);
                ratios[1].push(t[2] / t[0]);
            }
            let med = |v: &Vec<f64>| min_median(v.clone()).1;
            let (c_min, c_med) = min_median(ratios[0].clone());
            let (d_min, d_med) = min_median(ratios[1].clone());
            println!(
                "metering={:<5} {case:<12} static {:>9.1} ns | capped {:>9.1} ns ratio {c_min:.3} / {c_med:.3} | \
                 dynamic {:>9.1} ns ratio {d_min:.3} / {d_med:.3}",
                metering,
                med(&times[0]),
                med(&times[1]),
                med(&times[2]),
            );
        }
    }
}
