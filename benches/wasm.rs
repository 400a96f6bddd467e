//! WASM runtime figures. Every ratio comes from interleaved rounds in this process
//! (benches/common: `interleave`), printed as `RATIO name: min X median Y (rounds N)`:
//!
//! (a) call: raw wasmer typed call of echo.wat's `keel_call` (function `add`) vs the same
//!     call through Keel — the C ABI's `keel_call` on a Host and `Instance::call` — pairing
//!     like with like: Keel unmetered vs raw wasmer unmetered, Keel metered vs raw wasmer
//!     with wasmer-middlewares `Metering` (Keel's cost function). Goals: unmetered <= 1.2x,
//!     metered <= 1.5x. Two raw baselines: the bare typed call (its input written once
//!     beforehand, its result not read), and the same call doing the work a raw embedding
//!     must do to pass bytes, which Keel's call does too: the 8-byte input written into guest
//!     memory, the result decoded, the 4-byte output copied out (`raw_wasmer_io`). A third:
//!     that call made callable from any thread, as a server must (a wasmer `Store` needs
//!     `&mut`): the instance behind a `parking_lot::Mutex`, locked per call
//!     (`raw_wasmer_io_locked`; Keel's equivalent is its pool's claim).
//! (b) kernels over 4 KiB, the same C (tests/fixtures/wasm/c/kernel.h) built by clang three
//!     ways: called directly (benches/kernels/direct.c, dlopen + dlsym), as a native plugin
//!     through Keel, and for wasm32 through Keel (metered and unmetered). Two kernels:
//!     FNV-1a (a chain of dependent multiplies: latency-bound, hides bounds checks) and a
//!     byte sum (throughput-bound: native code vectorises it, WASM bounds-checks each load).
//!     Goal: WASM <= 2x native.
//! (c) cold start of a ~100 KB module: cache miss (compile, instantiate, init) vs cache hit
//!     (authenticate, deserialize, instantiate, init). Goals: <= 50 ms and <= 5 ms.
//!
//! Run: `cargo bench --bench wasm` (`KEEL_BENCH_ROUNDS`, default 21).
mod common;
#[path = "../tests/wasm_support/mod.rs"]
mod wasm_support;

use std::sync::Arc;
use std::time::Instant;

use common::{Buffer, Loaded};
use keel::runtime::wasm::{CacheConfig, WasmConfig, WasmPlugin, WasmRuntime};
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
    memory: wasmer::Memory,
    ptr: i32,
}

impl Raw {
    /// Plain wasmer (Cranelift, optimised for speed, wasmer's default tunables); with
    /// `metering`, wasmer-middlewares' `Metering` with Keel's cost function and a budget that
    /// never runs out (set once, as a raw embedding would).
    fn new(metering: bool) -> Raw {
        let mut compiler = wasmer::sys::Cranelift::new();
        compiler.opt_level(wasmer::sys::CraneliftOptLevel::Speed);
        if metering {
            use wasmer::sys::CompilerConfig;
            compiler.push_middleware(Arc::new(wasmer_middlewares::Metering::new(
                u64::MAX / 2,
                keel::runtime::wasm::engine::operator_cost,
            )));
        }
        let engine: wasmer::Engine = wasmer::sys::EngineBuilder::new(compiler).into();
        let mut store = wasmer::Store::new(engine);
        let module = wasmer::Module::new(&store, wat_fixture("echo")).unwrap();
        let instance = wasmer::Instance::new(&mut store, &module, &wasmer::imports! {}).unwrap();
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
        let memory = instance.exports.get_memory("memory").unwrap().clone();
        Raw {
            store,
            call,
            memory,
            ptr,
        }
    }

    #[inline]
    fn call(&mut self) -> i64 {
        self.call.call(&mut self.store, ADD, self.ptr, 8).unwrap()
    }

    /// The same call with its bytes in and out: `input` written into guest memory, the
    /// result decoded and its bytes appended to `out`.
    #[inline]
    fn call_io(&mut self, input: &[u8], out: &mut Vec<u8>) {
        self.memory.view(&self.store).write(self.ptr as u64, input).unwrap();
        let r = self
            .call
            .call(&mut self.store, ADD, self.ptr, input.len() as i32)
            .unwrap() as u64;
        assert_eq!(r >> 63, 0);
        let (p, l) = (r as u32 as usize, ((r >> 32) & 0x7fff_ffff) as usize);
        let view = self.memory.view(&self.store);
        // SAFETY: the bench's own instance; no guest code runs while the slice lives.
        out.extend_from_slice(&unsafe { view.data_unchecked() }[p..p + l]);
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

/// A C file built with clang into a shared library (the bench's own build, -O2 like the
/// plugin builds it is compared with).
fn clang_so(src: &std::path::Path, out: &std::path::Path) {
    let st = std::process::Command::new("clang")
        .args(["-O2", "-shared", "-fPIC", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(repo().join("include"))
        .arg("-I")
        .arg(fixture_dir().join("c"))
        .arg("-o")
        .arg(out)
        .arg(src)
        .status()
        .expect("run clang");
    assert!(st.success(), "clang {}", src.display());
}

type Kernel = unsafe extern "C" fn(*const u8, u32) -> u64;

fn main() {
    println!("{}", common::conditions());
    let rounds = common::rounds();
    let dir = tempfile::tempdir().unwrap();
    let rt = WasmRuntime::new(WasmConfig::default()).unwrap();
    let rt_plain = WasmRuntime::new(WasmConfig {
        metering: false,
        ..WasmConfig::default()
    })
    .unwrap();

    // ---- (a) calls ----
    let mut raw = Raw::new(false);
    let mut raw_metered = Raw::new(true);
    assert_eq!(raw.call() as u64 >> 32, 4);
    assert_eq!(raw_metered.call() as u64 >> 32, 4);
    let pooled = keel_echo(&rt, "pooled");
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

    let n = common::env_u64("KEEL_BENCH_CALLS", 200_000);
    let mut o1 = Vec::with_capacity(64);
    let mut o2 = Vec::with_capacity(64);
    let (mut o3, mut o4) = (Vec::with_capacity(64), Vec::with_capacity(64));
    let (mut raw_io, mut raw_io_metered) = (Raw::new(false), Raw::new(true));
    let raw_locked = parking_lot::Mutex::new(Raw::new(false));
    let mut o5 = Vec::with_capacity(64);
    raw_locked.lock().call_io(&ADD_INPUT, &mut o5);
    assert_eq!(o5, 42i32.to_le_bytes());
    raw_io.call_io(&ADD_INPUT, &mut o3);
    raw_io_metered.call_io(&ADD_INPUT, &mut o4);
    assert_eq!((&o3[..], &o4[..]), (&42i32.to_le_bytes()[..], &42i32.to_le_bytes()[..]));
    let r = common::interleave(
        rounds,
        &mut [
            ("raw_wasmer_io", &mut || {
                common::ns_per_call(n, &mut || {
                    o3.clear();
                    raw_io.call_io(std::hint::black_box(&ADD_INPUT), &mut o3);
                })
            }),
            ("raw_wasmer_io_metered", &mut || {
                common::ns_per_call(n, &mut || {
                    o4.clear();
                    raw_io_metered.call_io(std::hint::black_box(&ADD_INPUT), &mut o4);
                })
            }),
            ("raw_wasmer_io_locked", &mut || {
                common::ns_per_call(n, &mut || {
                    o5.clear();
                    raw_locked.lock().call_io(std::hint::black_box(&ADD_INPUT), &mut o5);
                })
            }),
            ("raw_wasmer", &mut || {
                common::ns_per_call(n, &mut || {
                    std::hint::black_box(raw.call());
                })
            }),
            ("raw_wasmer_metered", &mut || {
                common::ns_per_call(n, &mut || {
                    std::hint::black_box(raw_metered.call());
                })
            }),
            ("keel_call", &mut || {
                common::ns_per_call(n, &mut || {
                    std::hint::black_box(ffi_plain.call());
                })
            }),
            ("keel_call_metered", &mut || {
                common::ns_per_call(n, &mut || {
                    std::hint::black_box(ffi.call());
                })
            }),
            ("instance_call", &mut || {
                common::ns_per_call(n, &mut || {
                    o1.clear();
                    plain.call(add, std::hint::black_box(&ADD_INPUT), &mut o1).unwrap();
                })
            }),
            ("instance_call_metered", &mut || {
                common::ns_per_call(n, &mut || {
                    o2.clear();
                    pooled.call(add, std::hint::black_box(&ADD_INPUT), &mut o2).unwrap();
                })
            }),
        ],
    );
    r.ratio(
        "wasm keel_call / raw wasmer with bytes in and out, unmetered both (goal <= 1.2)",
        "keel_call",
        "raw_wasmer_io",
        "ns",
    );
    r.ratio(
        "wasm keel_call / raw wasmer with bytes in and out, metered both",
        "keel_call_metered",
        "raw_wasmer_io_metered",
        "ns",
    );
    r.ratio(
        "wasm keel_call / raw wasmer with bytes in and out behind a mutex (callable from any thread), unmetered both",
        "keel_call",
        "raw_wasmer_io_locked",
        "ns",
    );
    r.ratio(
        "wasm keel_call / bare raw wasmer call, unmetered both",
        "keel_call",
        "raw_wasmer",
        "ns",
    );
    r.ratio(
        "wasm keel_call / bare raw wasmer call, metered both (goal <= 1.5)",
        "keel_call_metered",
        "raw_wasmer_metered",
        "ns",
    );
    r.ratio(
        "wasm Instance::call / raw wasmer, unmetered both",
        "instance_call",
        "raw_wasmer",
        "ns",
    );
    r.ratio(
        "wasm Instance::call / raw wasmer, metered both",
        "instance_call_metered",
        "raw_wasmer_metered",
        "ns",
    );
    r.ratio(
        "raw wasmer metered / unmetered (metering's own cost)",
        "raw_wasmer_metered",
        "raw_wasmer",
        "ns",
    );

    // ---- (b) kernels ----
    let wasm_c = build_c_wasm("compute", dir.path());
    let so = dir.path().join("libcompute_native.so");
    clang_so(&fixture_dir().join("c/compute_native.c"), &so);
    let direct_so = dir.path().join("libkernels_direct.so");
    clang_so(&repo().join("benches/kernels/direct.c"), &direct_so);
    // SAFETY: the library is the bench's own build of benches/kernels/direct.c; the symbols
    // have the `Kernel` signature, and the library outlives every use (dropped at the end).
    let (lib, d_sum, d_fnv) = unsafe {
        let lib = libloading::Library::new(&direct_so).unwrap();
        let s: Kernel = *lib.get::<Kernel>(b"bench_kernel_sum\0").unwrap();
        let f: Kernel = *lib.get::<Kernel>(b"bench_kernel_fnv1a\0").unwrap();
        (lib, s, f)
    };
    let m = manifest("compute", json!({"capabilities": ["log"], "instances": "pooled"}));
    let wasm_kernel = rt
        .load(&artifact(wasm_c.clone()), &context(&m, HostServices::default()))
        .unwrap();
    let wasm_kernel_plain = rt_plain
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
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 131 + 17) as u8).collect();
    let k = common::env_u64("KEEL_BENCH_KERNEL_CALLS", 5_000);
    for (kname, fid, direct) in [("fnv1a", 2u32, d_fnv), ("bytesum", 0u32, d_sum)] {
        let mut outs = [Vec::new(), Vec::new(), Vec::new()];
        wasm_kernel.call(fid, &data, &mut outs[0]).unwrap();
        wasm_kernel_plain.call(fid, &data, &mut outs[1]).unwrap();
        native_kernel.call(fid, &data, &mut outs[2]).unwrap();
        // SAFETY: see the dlsym above; `data` is valid for its length.
        let want = unsafe { direct(data.as_ptr(), data.len() as u32) }.to_le_bytes();
        assert!(outs.iter().all(|o| o[..] == want[..]), "{kname}: the builds disagree");
        let run = |p: &dyn Instance| {
            let mut o = Vec::with_capacity(64);
            common::ns_per_call(k, &mut || {
                o.clear();
                p.call(fid, std::hint::black_box(&data), &mut o).unwrap();
            })
        };
        let r = common::interleave(
            rounds,
            &mut [
                ("c_direct", &mut || {
                    common::ns_per_call(k, &mut || {
                        // SAFETY: as above.
                        std::hint::black_box(unsafe { direct(std::hint::black_box(data.as_ptr()), 4096) });
                    })
                }),
                ("native_keel", &mut || run(&native_kernel)),
                ("wasm_keel_metered", &mut || run(&wasm_kernel)),
                ("wasm_keel_unmetered", &mut || run(&wasm_kernel_plain)),
            ],
        );
        r.ratio(
            &format!("{kname} 4 KiB: native plugin via Keel / C direct"),
            "native_keel",
            "c_direct",
            "ns",
        );
        r.ratio(
            &format!("{kname} 4 KiB: WASM metered via Keel / native plugin (goal <= 2)"),
            "wasm_keel_metered",
            "native_keel",
            "ns",
        );
        r.ratio(
            &format!("{kname} 4 KiB: WASM unmetered via Keel / native plugin"),
            "wasm_keel_unmetered",
            "native_keel",
            "ns",
        );
        r.ratio(
            &format!("{kname} 4 KiB: WASM metered via Keel / C direct"),
            "wasm_keel_metered",
            "c_direct",
            "ns",
        );
    }
    drop(lib);

    // ---- (c) cold start ----
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
    let load_ms = || {
        let t = Instant::now();
        let p = rt_cached
            .load(&artifact(big.clone()), &context(&big_manifest, HostServices::default()))
            .unwrap();
        let d = t.elapsed();
        drop(p);
        d.as_secs_f64() * 1e3
    };
    // The same load without a cache (compile + instantiate + init, no cache write) and with
    // static memories (no explicit bounds checks to compile): where a miss spends its time.
    let rt_nocache = WasmRuntime::new(WasmConfig::default()).unwrap();
    let rt_static = WasmRuntime::new(WasmConfig {
        memory: keel::runtime::wasm::MemoryMode::Static,
        ..WasmConfig::default()
    })
    .unwrap();
    let load_uncached_ms = |rt: &WasmRuntime| {
        let t = Instant::now();
        let p = rt
            .load(&artifact(big.clone()), &context(&big_manifest, HostServices::default()))
            .unwrap();
        let d = t.elapsed();
        drop(p);
        d.as_secs_f64() * 1e3
    };
    let cold_rounds = common::cold_rounds(rounds);
    let r = common::interleave(
        cold_rounds,
        &mut [
            ("cache_miss", &mut || {
                clear_cache();
                load_ms()
            }),
            ("cache_hit", &mut || {
                // The miss rounds clear the cache: make sure this load hits.
                if std::fs::read_dir(&cache_dir).unwrap().next().is_none() {
                    load_ms();
                }
                load_ms()
            }),
            ("no_cache", &mut || load_uncached_ms(&rt_nocache)),
            ("no_cache_static", &mut || load_uncached_ms(&rt_static)),
        ],
    );
    println!("module_bytes {}", big.len());
    r.absolute("cache_miss", "ms (goal <= 50)");
    r.absolute("cache_hit", "ms (goal <= 5)");
    r.ratio("cold start cache miss / cache hit", "cache_miss", "cache_hit", "ms");
    r.ratio(
        "cold start cache miss / the same load without a cache (the cache write's share)",
        "cache_miss",
        "no_cache",
        "ms",
    );
    r.ratio(
        "cold start without a cache, capped / static memories (bounds checks to compile)",
        "no_cache",
        "no_cache_static",
        "ms",
    );
}
