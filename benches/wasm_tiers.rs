//! wasmer's compilers behind Keel (the node's compiler policy: docs/wasm.md, "Compilers and
//! tiering"). Every ratio comes from interleaved rounds in this process (benches/common:
//! `interleave`), printed as `RATIO name: min X median Y (rounds N)`:
//!
//! (a) cold start of the ~100 KB module (`big_module()`, as in benches/wasm.rs section (c)):
//!     time from `load` to the first call's result (compile, instantiate, keel_init, one
//!     `checksum` call), no cache, on a `cranelift`, a `singlepass` and a `tiered` node; and
//!     on a `tiered` node with a (cleared) cache. Goal: tiered <= 50 ms. The tiered rounds
//!     wait for the tier-up after the clock stops (so its background compile never overlaps
//!     another round), and report the time from `load` to the end of the tier-up too.
//! (b) per-call cost on Singlepass code vs Cranelift code: echo.wat's `add` (call overhead),
//!     and compute.wat's byte sum and FNV-1a of 4 KiB (code speed).
//!
//! Run: `cargo bench --bench wasm_tiers` (`KEEL_BENCH_ROUNDS`, default 21).
mod common;
#[path = "../tests/wasm_support/mod.rs"]
mod wasm_support;

use std::cell::RefCell;
use std::time::{Duration, Instant};

use keel::runtime::wasm::{CacheConfig, TierUp, WasmCompiler, WasmPlugin, WasmRuntime};
use keel::runtime::{HostServices, Instance};
use serde_json::json;
use wasm_support::*;

const ADD_INPUT: [u8; 8] = [40, 0, 0, 0, 2, 0, 0, 0];

fn runtime(compiler: WasmCompiler, cache: Option<CacheConfig>) -> WasmRuntime {
    wasmer_runtime(compiler, cache)
}

fn load(rt: &WasmRuntime, wasm: &[u8], name: &str, extra: serde_json::Value) -> WasmPlugin {
    let m = manifest(name, extra);
    rt.load(&artifact(wasm.to_vec()), &context(&m, HostServices::default()))
        .unwrap()
}

fn index(p: &dyn Instance, f: &str) -> u32 {
    p.functions().iter().position(|n| n == f).unwrap() as u32
}

fn main() {
    println!("{}", common::conditions());
    let rounds = common::rounds();
    let dir = tempfile::tempdir().unwrap();

    // ---- (a) cold start ----
    let big = big_module();
    println!("big_module: {} bytes", big.len());
    let cranelift = runtime(WasmCompiler::Cranelift, None);
    let singlepass = runtime(WasmCompiler::Singlepass, None);
    let tiered = runtime(WasmCompiler::Tiered, None);
    let cache_dir = dir.path().join("cache");
    let tiered_cached = runtime(
        WasmCompiler::Tiered,
        Some(CacheConfig {
            dir: cache_dir.clone(),
            key: [7u8; 32],
        }),
    );
    let clear_cache = || {
        if let Ok(d) = std::fs::read_dir(&cache_dir) {
            for e in d {
                std::fs::remove_file(e.unwrap().path()).unwrap();
            }
        }
    };
    let input = [1u8; 16];
    // ms from load to the first call's result; `tier_up` gets the ms to the tier-up's end.
    let first_call = |rt: &WasmRuntime, tier_up: Option<&RefCell<Vec<f64>>>| {
        let t = Instant::now();
        let p = load(rt, &big, "big", json!({"instances": "pooled"}));
        let mut out = Vec::with_capacity(16);
        p.call(index(&p, "checksum"), &input, &mut out).unwrap();
        let first = t.elapsed().as_secs_f64() * 1e3;
        assert_eq!(out.len(), 8);
        if let Some(v) = tier_up {
            assert_eq!(p.wait_for_tier_up(Duration::from_secs(600)), TierUp::Switched);
            v.borrow_mut().push(t.elapsed().as_secs_f64() * 1e3);
        }
        drop(p);
        first
    };
    let tier_up_ms = RefCell::new(Vec::new());
    let tier_up_cached_ms = RefCell::new(Vec::new());
    let cold_rounds = common::cold_rounds(rounds);
    let r = common::interleave(
        cold_rounds,
        &mut [
            ("cranelift", &mut || first_call(&cranelift, None)),
            ("singlepass", &mut || first_call(&singlepass, None)),
            ("tiered", &mut || first_call(&tiered, Some(&tier_up_ms))),
            ("tiered_cache_miss", &mut || {
                clear_cache();
                first_call(&tiered_cached, Some(&tier_up_cached_ms))
            }),
        ],
    );
    for v in ["cranelift", "singlepass", "tiered", "tiered_cache_miss"] {
        r.absolute(v, "ms to the first result");
    }
    r.ratio(
        "cold start to first result: singlepass / cranelift",
        "singlepass",
        "cranelift",
        "ms",
    );
    r.ratio(
        "cold start to first result: tiered / cranelift",
        "tiered",
        "cranelift",
        "ms",
    );
    r.ratio(
        "cold start to first result: tiered with a cache miss / cranelift",
        "tiered_cache_miss",
        "cranelift",
        "ms",
    );
    for (what, v) in [("tiered", &tier_up_ms), ("tiered_cache_miss", &tier_up_cached_ms)] {
        // The warm-up round is in the vector too: drop it.
        let v = v.borrow();
        let (mn, md) = common::min_median(&v[1..]);
        println!(
            "ABS {what} load to tier-up done: min {mn:.3} median {md:.3} ms (rounds {})",
            v.len() - 1
        );
    }

    // ---- (b) per call ----
    let n = common::env_u64("KEEL_BENCH_CALLS", 200_000);
    let k = common::env_u64("KEEL_BENCH_KERNEL_CALLS", 20_000);
    let echo = wat_fixture("echo");
    let compute = wat_fixture("compute");
    let echo_c = load(&cranelift, &echo, "echo", json!({"instances": "pooled"}));
    let echo_s = load(&singlepass, &echo, "echo", json!({"instances": "pooled"}));
    let comp_c = load(&cranelift, &compute, "compute", json!({"instances": "pooled"}));
    let comp_s = load(&singlepass, &compute, "compute", json!({"instances": "pooled"}));
    let add = index(&echo_c, "add");
    let mut out = Vec::with_capacity(64);
    for p in [&echo_c, &echo_s] {
        out.clear();
        p.call(add, &ADD_INPUT, &mut out).unwrap();
        assert_eq!(out, 42i32.to_le_bytes());
    }
    let calls = |p: &WasmPlugin, f: u32, input: &[u8], count: u64| {
        let mut o = Vec::with_capacity(64);
        common::ns_per_call(count, &mut || {
            o.clear();
            p.call(f, std::hint::black_box(input), &mut o).unwrap();
        })
    };
    let r = common::interleave(
        rounds,
        &mut [
            ("cranelift", &mut || calls(&echo_c, add, &ADD_INPUT, n)),
            ("singlepass", &mut || calls(&echo_s, add, &ADD_INPUT, n)),
        ],
    );
    r.ratio(
        "echo add per call: singlepass / cranelift",
        "singlepass",
        "cranelift",
        "ns",
    );
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 131 + 7) as u8).collect();
    for kname in ["sum", "checksum"] {
        let f = index(&comp_c, kname);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        comp_c.call(f, &data, &mut a).unwrap();
        comp_s.call(f, &data, &mut b).unwrap();
        assert_eq!(a, b, "{kname}: both tiers compute the same");
        let r = common::interleave(
            rounds,
            &mut [
                ("cranelift", &mut || calls(&comp_c, f, &data, k)),
                ("singlepass", &mut || calls(&comp_s, f, &data, k)),
            ],
        );
        r.ratio(
            &format!("{kname} 4 KiB per call: singlepass / cranelift"),
            "singlepass",
            "cranelift",
            "ns",
        );
    }
}
