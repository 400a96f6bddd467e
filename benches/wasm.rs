//! WASM runtime figures, each a ratio against a baseline measured in the same run:
//!
//! (a) raw wasmer typed call of the fixture's `keel_call` (echo.wat, function `add`), vs
//! (b) the same call through Keel's `Instance::call` (input copied in, output copied out,
//!     fuel refilled, deadline armed), and through the C ABI's `keel_call` on a Host:
//!     target (b)/(a) <= 1.3, <= 1.5 with metering on;
//! (c) the same C compute kernel (FNV-1a over 4 KiB) native through Keel's native runtime
//!     vs compiled for wasm32 through Keel with metering on: target <= 2x;
//! (d) cold start of a ~100 KB module: cache miss (compile, instantiate, init) vs cache hit
//!     (authenticate, deserialize, instantiate, init): targets <= 50 ms and <= 5 ms.

mod common;
#[path = "../tests/wasm_support/mod.rs"]
mod wasm_support;

use std::time::{Duration, Instant};

use common::{Buffer, Loaded};
use criterion::{criterion_group, criterion_main, Criterion};
use keel::runtime::wasm::{engine, CacheConfig, WasmConfig, WasmPlugin, WasmRuntime};
use keel::runtime::{HostServices, Instance};
use serde_json::json;
use wasm_support::*;

/// add(40, 2): the fixture function of (a) and (b).
const ADD_INPUT: [u8; 8] = [40, 0, 0, 0, 2, 0, 0, 0];
const ADD: i32 = 1;

/// A raw wasmer instance of echo.wat, with the input already in its memory.
struct Raw {
    store: wasmer::Store,
    call: wasmer::TypedFunction<(i32, i32, i32), i64>,
    ptr: i32,
}

impl Raw {
    fn new(metering: bool) -> Raw {
        let engine = if metering {
            engine::compiling(wasmer::Pages(1024), true, keel::runtime::wasm::MemoryMode::Static)
        } else {
            wasmer::Engine::from(wasmer::sys::Cranelift::new())
        };
        let mut store = wasmer::Store::new(engine);
        let module = wasmer::Module::new(&store, wat_fixture("echo")).unwrap();
        let instance = wasmer::Instance::new(&mut store, &module, &wasmer::imports! {}).unwrap();
        if metering {
            wasmer_middlewares::metering::set_remaining_points(&mut store, &instance, u64::MAX / 2);
        }
        let alloc = instance
            .exports
            .get_typed_function::<i32, i32>(&store, "keel_alloc")
            .unwrap();
        let ptr = alloc.call(&mut store, 8).unwrap();
        instance
            .exports
            .get_memory("memory")
            .unwrap()
            .view(&store)
            .write(ptr as u64, &ADD_INPUT)
            .unwrap();
        let call = instance.exports.get_typed_function(&store, "keel_call").unwrap();
        Raw { store, call, ptr }
    }

    #[inline]
    fn call(&mut self) -> i64 {
        self.call.call(&mut self.store, ADD, self.ptr, 8).unwrap()
    }
}

/// echo.wat loaded by a Host, called through the C ABI (`keel_call`).
struct Ffi {
    echo: Loaded,
    buf: Buffer,
}

impl Ffi {
    /// `metering`: the host's WASM runtime compiles with instruction metering (the default).
    fn new(dir: &std::path::Path, metering: bool) -> Ffi {
        let wasm = wat_fixture("echo");
        std::fs::write(dir.join("echo.wasm"), &wasm).unwrap();
        let m = json!({
            "manifest_version": 1, "name": "echo", "version": "1.0.0", "runtime": "wasm",
            "binary": {"wasm32": "echo.wasm"}, "sha256": keel::trust::digest::sha256_hex(&wasm),
            "instances": "pooled"
        });
        let path = dir.join("echo.json");
        std::fs::write(&path, m.to_string()).unwrap();
        Ffi {
            echo: Loaded::with_setup(&path, c"add", |host| {
                // SAFETY: keel_wasm_config is a plain C struct of integers and bools; all-zero is a valid value, overwritten next.
                let mut c = unsafe { std::mem::zeroed::<keel::ffi::wasm::keel_wasm_config>() };
                assert_eq!(
                    keel::ffi::wasm::keel_wasm_config_default(&mut c),
                    keel::keel_status::KEEL_OK
                );
                c.metering = metering;
                assert_eq!(
                    keel::ffi::wasm::keel_host_set_wasm_config(host, &c),
                    keel::keel_status::KEEL_OK
                );
            }),
            buf: Buffer::new(),
        }
    }

    #[inline]
    fn call(&self) -> keel::keel_status {
        self.echo.call(&ADD_INPUT, self.buf.0)
    }
}

fn keel_echo(rt: &WasmRuntime, mode: &str) -> WasmPlugin {
    let m = manifest("echo", json!({"instances": mode}));
    rt.load(&artifact(wat_fixture("echo")), &context(&m, HostServices::default()))
        .unwrap()
}

/// A ~100 KB module speaking the Keel ABI: compute.wat plus many small functions.
fn big_module() -> Vec<u8> {
    let base = std::fs::read_to_string(fixture_dir().join("compute.wat")).unwrap();
    let body_end = base.rfind(')').unwrap();
    let mut wat = base[..body_end].to_string();
    let n = 1100;
    for i in 0..n {
        wat.push_str(&format!(
            "(func $g{i} (export \"g{i}\") (param $x i32) (param $y i32) (result i32) (local $t i32)
               (local.set $t (i32.mul (local.get $x) (i32.const {k})))
               (if (i32.gt_u (local.get $t) (local.get $y))
                 (then (local.set $t (i32.xor (local.get $t) (i32.rotl (local.get $y) (i32.const 7)))))
                 (else (local.set $t (i32.add (local.get $t) (i32.load (i32.and (local.get $y) (i32.const 1020)))))))
               (i32.store (i32.const 2048) (local.get $t))
               (i32.add (local.get $t) (i32.shr_u (local.get $x) (i32.const 3))))\n",
            k = i * 2 + 1
        ));
    }
    wat.push(')');
    wat::parse_str(&wat).unwrap()
}

fn best_of<F: FnMut() -> Duration>(rounds: usize, mut f: F) -> Duration {
    (0..rounds).map(|_| f()).min().unwrap()
}

fn per_call(n: u64, f: &mut dyn FnMut()) -> f64 {
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    t.elapsed().as_nanos() as f64 / n as f64
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let rt = WasmRuntime::new(WasmConfig::default()).unwrap();
    let rt_plain = WasmRuntime::new(WasmConfig {
        metering: false,
        ..WasmConfig::default()
    })
    .unwrap();

    // ---- (a) and (b) ----
    let mut raw = Raw::new(false);
    let mut raw_metered = Raw::new(true);
    assert_eq!(raw.call() as u64 >> 32, 4);
    let pooled = keel_echo(&rt, "pooled");
    let serial = keel_echo(&rt, "serial");
    let plain = keel_echo(&rt_plain, "pooled");
    let add = pooled.functions().iter().position(|f| f == "add").unwrap() as u32;
    let mut out = Vec::with_capacity(64);
    pooled.call(add, &ADD_INPUT, &mut out).unwrap();
    assert_eq!(out, 42i32.to_le_bytes());
    let ffi = Ffi::new(dir.path(), true);
    assert_eq!(ffi.call(), keel::keel_status::KEEL_OK);
    let ffi_plain_dir = dir.path().join("plain");
    std::fs::create_dir_all(&ffi_plain_dir).unwrap();
    let ffi_plain = Ffi::new(&ffi_plain_dir, false);
    assert_eq!(ffi_plain.call(), keel::keel_status::KEEL_OK);

    let mut g = c.benchmark_group("wasm_call");
    g.bench_function("a_raw_wasmer_typed_call", |b| {
        b.iter(|| std::hint::black_box(raw.call()))
    });
    g.bench_function("a_raw_wasmer_typed_call_metered", |b| {
        b.iter(|| std::hint::black_box(raw_metered.call()))
    });
    for (name, p) in [
        ("b_keel_no_metering", &plain),
        ("b_keel_pooled", &pooled),
        ("b_keel_serial", &serial),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                p.call(add, std::hint::black_box(&ADD_INPUT), &mut out).unwrap();
            })
        });
    }
    g.bench_function("b_keel_call_c_abi", |b| b.iter(|| std::hint::black_box(ffi.call())));
    g.bench_function("b_keel_call_c_abi_no_metering", |b| {
        b.iter(|| std::hint::black_box(ffi_plain.call()))
    });
    g.finish();

    // ---- (c) ----
    let wasm_c = build_c_wasm("compute", dir.path());
    let so = build_c_native("compute_native", dir.path());
    let m = manifest("compute", json!({"capabilities": ["log"], "instances": "pooled"}));
    let wasm_kernel = rt
        .load(&artifact(wasm_c), &context(&m, HostServices::default()))
        .unwrap();
    let native_manifest = keel::manifest::parse_keel_value(json!({
        "manifest_version": 1, "name": "compute-native", "version": "1.0.0", "runtime": "native",
        "binary": {"linux": "libcompute_native.so"}, "sha256": "00".repeat(32)
    }))
    .unwrap();
    let native_kernel = keel::runtime::native::load(
        {
            let art = keel::artifact::read_sealed(&so, "compute-native").unwrap();
            let pin = art.sha256_hex();
            art.verify(&pin, "compute-native").unwrap()
        },
        &context(&native_manifest, HostServices::default()),
    )
    .unwrap();
    let checksum = 2u32;
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 131 + 17) as u8).collect();
    let (mut o1, mut o2) = (Vec::new(), Vec::new());
    wasm_kernel.call(checksum, &data, &mut o1).unwrap();
    native_kernel.call(checksum, &data, &mut o2).unwrap();
    assert_eq!(o1, o2);

    let mut g = c.benchmark_group("wasm_kernel_fnv1a_4k");
    g.bench_function("native_c", |b| {
        b.iter(|| {
            out.clear();
            native_kernel
                .call(checksum, std::hint::black_box(&data), &mut out)
                .unwrap();
        })
    });
    g.bench_function("wasm_c_metered", |b| {
        b.iter(|| {
            out.clear();
            wasm_kernel
                .call(checksum, std::hint::black_box(&data), &mut out)
                .unwrap();
        })
    });
    g.finish();

    // ---- (d) ----
    let big = big_module();
    let cache_dir = dir.path().join("cache");
    let rt_cached = WasmRuntime::new(WasmConfig {
        cache: Some(CacheConfig {
            dir: cache_dir.clone(),
            key: [7u8; 32],
        }),
        ..WasmConfig::default()
    })
    .unwrap();
    let big_manifest = manifest("big", json!({}));
    let clear_cache = || {
        for e in std::fs::read_dir(&cache_dir).unwrap() {
            std::fs::remove_file(e.unwrap().path()).unwrap();
        }
    };
    let mut cold_miss = || {
        clear_cache();
        let t = Instant::now();
        let p = rt_cached
            .load(&artifact(big.clone()), &context(&big_manifest, HostServices::default()))
            .unwrap();
        let d = t.elapsed();
        drop(p);
        d
    };
    let mut cold_hit = || {
        let t = Instant::now();
        let p = rt_cached
            .load(&artifact(big.clone()), &context(&big_manifest, HostServices::default()))
            .unwrap();
        let d = t.elapsed();
        drop(p);
        d
    };
    cold_miss();
    let mut g = c.benchmark_group("wasm_cold_start_100k");
    g.sample_size(10).measurement_time(Duration::from_secs(3));
    g.bench_function("cache_miss_compile", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| cold_miss()).sum())
    });
    cold_miss();
    g.bench_function("cache_hit_deserialize", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| cold_hit()).sum())
    });
    g.finish();

    // ---- the figures, from interleaved measurements in this run ----
    const N: u64 = 1_000_000;
    let (mut a, mut am, mut bp, mut bs, mut bn, mut bf) = (f64::MAX, f64::MAX, f64::MAX, f64::MAX, f64::MAX, f64::MAX);
    let mut bfn = f64::MAX;
    for _ in 0..5 {
        a = a.min(per_call(N, &mut || {
            std::hint::black_box(raw.call());
        }));
        am = am.min(per_call(N, &mut || {
            std::hint::black_box(raw_metered.call());
        }));
        bf = bf.min(per_call(N, &mut || {
            std::hint::black_box(ffi.call());
        }));
        bfn = bfn.min(per_call(N, &mut || {
            std::hint::black_box(ffi_plain.call());
        }));
        for (best, p) in [(&mut bn, &plain), (&mut bp, &pooled), (&mut bs, &serial)] {
            *best = best.min(per_call(N, &mut || {
                out.clear();
                p.call(add, std::hint::black_box(&ADD_INPUT), &mut out).unwrap();
            }));
        }
    }
    const K: u64 = 20_000;
    let (mut cn, mut cw) = (f64::MAX, f64::MAX);
    for _ in 0..5 {
        cn = cn.min(per_call(K, &mut || {
            out.clear();
            native_kernel
                .call(checksum, std::hint::black_box(&data), &mut out)
                .unwrap();
        }));
        cw = cw.min(per_call(K, &mut || {
            out.clear();
            wasm_kernel
                .call(checksum, std::hint::black_box(&data), &mut out)
                .unwrap();
        }));
    }
    let miss = best_of(5, &mut cold_miss);
    cold_miss();
    let hit = best_of(5, &mut cold_hit);
    println!(
        "\nKEEL-WASM-FIGURES module_bytes={}\n\
         (a) raw wasmer typed call: {a:.1} ns (with metering compiled in: {am:.1} ns)\n\
         (b) Keel Instance::call: no metering {bn:.1} ns = {:.2}x (a) (target <= 1.3); \
         metering pooled {bp:.1} ns = {:.2}x (target <= 1.5); metering serial {bs:.1} ns = {:.2}x; \
         Keel overhead over raw metered call {:.2}x\n\
         (b) through keel_call (C ABI, Host, pooled): no metering {bfn:.1} ns = {:.2}x (a) (target <= 1.3); \
         metering {bf:.1} ns = {:.2}x (a) (target <= 1.5)\n\
         (c) FNV-1a 4 KiB: native C {cn:.0} ns, WASM C metered {cw:.0} ns = {:.2}x (target <= 2)\n\
         (d) cold start: cache miss {:.2} ms (target <= 50), cache hit {:.3} ms (target <= 5), miss/hit {:.1}x",
        big.len(),
        bn / a,
        bp / a,
        bs / a,
        bp / am,
        bfn / a,
        bf / a,
        cw / cn,
        miss.as_secs_f64() * 1e3,
        hit.as_secs_f64() * 1e3,
        miss.as_secs_f64() / hit.as_secs_f64(),
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
