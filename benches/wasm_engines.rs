//! wasmer vs wasmtime behind Keel. Every ratio comes from interleaved rounds in this process
//! (benches/common: `interleave`), printed as `RATIO name: min X median Y (rounds N)`:
//!
//! (a) echo.wat's `add` and a 1 KiB `echo`, each with the same bytes in and out: a raw typed
//!     call of `keel_call` on each engine (input written into guest memory, result decoded,
//!     output copied out) vs the C ABI's `keel_call` on a Host running that engine (Keel's
//!     defaults: metered, deadline armed). Raw wasmtime twice: plain, and with fuel + epoch
//!     interruption (fuel set and epoch deadline armed per call, as an embedding with the same
//!     guarantees would); and that guarded call made callable from any thread, as a server
//!     must (a wasmtime `Store` needs `&mut`): behind a `parking_lot::Mutex` locked per call
//!     (Keel's equivalent is its pool's claim). Goal: Keel-on-wasmtime / raw wasmtime with
//!     fuel + epoch <= 1.2x.
//! (b) a throughput-bound kernel: the byte sum of 4 KiB (tests/fixtures/wasm/c/compute.c)
//!     through Keel on each engine.
//! (c) cold start of the ~100 KB module of benches/wasm.rs on each engine: cache miss
//!     (compile, cache write, instantiate, init) and cache hit (authenticate, deserialize,
//!     instantiate, init).
//!
//! Run: `cargo bench --bench wasm_engines` (`KEEL_BENCH_ROUNDS`, default 21).
mod common;
#[path = "../tests/wasm_support/mod.rs"]
mod wasm_support;

use std::time::Instant;

use common::{Buffer, Loaded};
use keel::ffi::wasm::keel_wasm_engine;
use keel::runtime::wasm::{CacheConfig, WasmConfig, WasmEngine, WasmPlugin, WasmRuntime};
use keel::runtime::{HostServices, Instance};
use serde_json::json;
use wasm_support::*;

const ADD_INPUT: [u8; 8] = [40, 0, 0, 0, 2, 0, 0, 0];
const ECHO: i32 = 0;
const ADD: i32 = 1;

/// The work of one raw call with bytes in and out, whichever engine.
#[inline(always)]
fn finish(r: i64, mem: &[u8], out: &mut Vec<u8>) {
    let u = r as u64;
    assert_eq!(u >> 63, 0);
    let (p, l) = (u as u32 as usize, ((u >> 32) & 0x7fff_ffff) as usize);
    out.clear();
    out.extend_from_slice(&mem[p..p + l]);
}

/// A raw wasmer instance of echo.wat (Cranelift, speed, default tunables; no metering, no
/// stop checks).
struct RawWasmer {
    store: wasmer::Store,
    call: wasmer::TypedFunction<(i32, i32, i32), i64>,
    memory: wasmer::Memory,
    ptr: i32,
}

impl RawWasmer {
    fn new() -> RawWasmer {
        let mut compiler = wasmer::sys::Cranelift::new();
        compiler.opt_level(wasmer::sys::CraneliftOptLevel::Speed);
        let engine: wasmer::Engine = wasmer::sys::EngineBuilder::new(compiler).into();
        let mut store = wasmer::Store::new(engine);
        let module = wasmer::Module::new(&store, wat_fixture("echo")).unwrap();
        let instance = wasmer::Instance::new(&mut store, &module, &wasmer::imports! {}).unwrap();
        let alloc = instance
            .exports
            .get_typed_function::<i32, i32>(&store, "keel_alloc")
            .unwrap();
        let ptr = alloc.call(&mut store, 4096).unwrap();
        let memory = instance.exports.get_memory("memory").unwrap().clone();
        let call = instance.exports.get_typed_function(&store, "keel_call").unwrap();
        RawWasmer {
            store,
            call,
            memory,
            ptr,
        }
    }

    #[inline]
    fn call(&mut self, f: i32, input: &[u8], out: &mut Vec<u8>) {
        self.memory.view(&self.store).write(self.ptr as u64, input).unwrap();
        let r = self
            .call
            .call(&mut self.store, f, self.ptr, input.len() as i32)
            .unwrap();
        let view = self.memory.view(&self.store);
        // SAFETY: the bench's own instance; no guest code runs while the slice lives.
        let mem = unsafe { view.data_unchecked() };
        finish(r, mem, out);
    }
}

/// A raw wasmtime instance of echo.wat; with `guarded`, fuel and epoch interruption on, and
/// every call refills the fuel and arms an epoch deadline.
struct RawWasmtime {
    store: wasmtime::Store<()>,
    call: wasmtime::TypedFunc<(i32, i32, i32), i64>,
    memory: wasmtime::Memory,
    ptr: i32,
    guarded: bool,
}

impl RawWasmtime {
    fn new(guarded: bool) -> RawWasmtime {
        let mut c = wasmtime::Config::new();
        c.cranelift_opt_level(wasmtime::OptLevel::Speed)
            .consume_fuel(guarded)
            .epoch_interruption(guarded);
        let engine = wasmtime::Engine::new(&c).unwrap();
        let module = wasmtime::Module::new(&engine, wat_fixture("echo")).unwrap();
        let mut store = wasmtime::Store::new(&engine, ());
        if guarded {
            store.set_fuel(u64::MAX / 2).unwrap();
            store.set_epoch_deadline(1);
        }
        let instance = wasmtime::Instance::new(&mut store, &module, &[]).unwrap();
        let alloc = instance.get_typed_func::<i32, i32>(&mut store, "keel_alloc").unwrap();
        let ptr = alloc.call(&mut store, 4096).unwrap();
        let memory = instance.get_memory(&mut store, "memory").unwrap();
        let call = instance.get_typed_func(&mut store, "keel_call").unwrap();
        RawWasmtime {
            store,
            call,
            memory,
            ptr,
            guarded,
        }
    }

    #[inline]
    fn call(&mut self, f: i32, input: &[u8], out: &mut Vec<u8>) {
        if self.guarded {
            self.store.set_fuel(1_000_000_000).unwrap();
            self.store.set_epoch_deadline(1);
        }
        self.memory.write(&mut self.store, self.ptr as usize, input).unwrap();
        let r = self
            .call
            .call(&mut self.store, (f, self.ptr, input.len() as i32))
            .unwrap();
        finish(r, self.memory.data(&self.store), out);
    }
}

/// echo.wat loaded by a Host running `engine`, function `function` resolved.
fn ffi(dir: &std::path::Path, engine: WasmEngine, function: &std::ffi::CStr) -> Loaded {
    let wasm = wat_fixture("echo");
    let sub = dir.join(format!("{}-{}", engine.as_str(), function.to_str().unwrap()));
    std::fs::create_dir_all(&sub).unwrap();
    std::fs::write(sub.join("echo.wasm"), &wasm).unwrap();
    let m = json!({
        "manifest_version": 1, "name": "echo", "version": "1.0.0", "runtime": "wasm",
        "binary": {"wasm32": "echo.wasm"}, "sha256": keel::trust::digest::sha256_hex(&wasm),
        "instances": "pooled"
    });
    let path = sub.join("echo.json");
    std::fs::write(&path, m.to_string()).unwrap();
    Loaded::with_setup(&path, function, |host| {
        assert_eq!(
            keel::ffi::wasm::keel_host_set_wasm_engine(host, keel_wasm_engine::from(engine) as u32, false),
            keel::keel_status::KEEL_OK
        );
    })
}

/// A raw wasmtime instance of a Keel WASM module (its `keel.log` import a no-op), under
/// `config`: for telling apart what the byte sum's cost on wasmtime comes from.
struct RawKernel {
    store: wasmtime::Store<()>,
    call: wasmtime::TypedFunc<(i32, i32, i32), i64>,
    memory: wasmtime::Memory,
    ptr: i32,
}

impl RawKernel {
    fn new(wasm: &[u8], config: &wasmtime::Config) -> RawKernel {
        let engine = wasmtime::Engine::new(config).unwrap();
        let module = wasmtime::Module::new(&engine, wasm).unwrap();
        let mut linker = wasmtime::Linker::new(&engine);
        linker.func_wrap("keel", "log", |_: i32, _: i32, _: i32| {}).unwrap();
        let mut store = wasmtime::Store::new(&engine, ());
        store.set_fuel(u64::MAX / 2).unwrap();
        store.set_epoch_deadline(u64::MAX / 2);
        let instance = linker.instantiate(&mut store, &module).unwrap();
        let alloc = instance.get_typed_func::<i32, i32>(&mut store, "keel_alloc").unwrap();
        let ptr = alloc.call(&mut store, 4096).unwrap();
        let init = instance
            .get_typed_func::<(i32, i32), i64>(&mut store, "keel_init")
            .unwrap();
        assert_eq!(init.call(&mut store, (ptr, 0)).unwrap() as u64 >> 63, 0, "keel_init");
        let memory = instance.get_memory(&mut store, "memory").unwrap();
        let call = instance.get_typed_func(&mut store, "keel_call").unwrap();
        RawKernel {
            store,
            call,
            memory,
            ptr,
        }
    }

    /// As Keel configures wasmtime in the default `capped` mode (64 MiB cap), with or without
    /// Cranelift's Spectre mitigation of heap accesses.
    fn capped_config(spectre: bool) -> wasmtime::Config {
        let mut c = wasmtime::Config::new();
        c.cranelift_opt_level(wasmtime::OptLevel::Speed)
            .consume_fuel(true)
            .epoch_interruption(true)
            .memory_reservation(64 << 20)
            .memory_guard_size(64 << 10)
            .memory_reservation_for_growth(0)
            .memory_may_move(false);
        if !spectre {
            // SAFETY: a Cranelift setting the bench's own engine compiles with; it only
            // removes the speculative-execution hardening of bounds-checked accesses.
            unsafe {
                c.cranelift_flag_set("enable_heap_access_spectre_mitigation", "false");
            }
        }
        c
    }

    #[inline]
    fn call(&mut self, f: i32, input: &[u8], out: &mut Vec<u8>) {
        self.memory.write(&mut self.store, self.ptr as usize, input).unwrap();
        let r = self
            .call
            .call(&mut self.store, (f, self.ptr, input.len() as i32))
            .unwrap();
        finish(r, self.memory.data(&self.store), out);
    }
}

fn runtime(engine: WasmEngine, cache: Option<CacheConfig>) -> WasmRuntime {
    WasmRuntime::new(WasmConfig {
        engine,
        cache,
        ..WasmConfig::default()
    })
    .unwrap()
}

fn main() {
    println!("{}", common::conditions());
    let rounds = common::rounds();
    let dir = tempfile::tempdir().unwrap();
    let n = common::env_u64("KEEL_BENCH_CALLS", 200_000);

    // ---- (a) add and 1 KiB echo, bytes in and out ----
    let mut raw_wr = RawWasmer::new();
    let mut raw_wt = RawWasmtime::new(false);
    let mut raw_wt_guarded = RawWasmtime::new(true);
    let raw_wt_locked = parking_lot::Mutex::new(RawWasmtime::new(true));
    let kb: Vec<u8> = (0..1024u32).map(|i| (i * 7 + 3) as u8).collect();
    for (name, f, input, want) in [
        ("add", ADD, &ADD_INPUT[..], &42i32.to_le_bytes()[..]),
        ("echo 1 KiB", ECHO, &kb[..], &kb[..]),
    ] {
        let cname = if f == ADD { c"add" } else { c"echo" };
        let keel_wr = ffi(dir.path(), WasmEngine::Wasmer, cname);
        let keel_wt = ffi(dir.path(), WasmEngine::Wasmtime, cname);
        let buf = Buffer::new();
        let mut o = Vec::with_capacity(2048);
        raw_wr.call(f, input, &mut o);
        assert_eq!(o, want, "{name}");
        raw_wt.call(f, input, &mut o);
        assert_eq!(o, want, "{name}");
        raw_wt_guarded.call(f, input, &mut o);
        assert_eq!(o, want, "{name}");
        assert_eq!(keel_wr.call(input, buf.0), keel::keel_status::KEEL_OK);
        assert_eq!(keel_wt.call(input, buf.0), keel::keel_status::KEEL_OK);
        raw_wt_locked.lock().call(f, input, &mut o);
        assert_eq!(o, want, "{name}");
        let (mut o1, mut o2, mut o3, mut o4) = (o.clone(), o.clone(), o.clone(), o.clone());
        let r = common::interleave(
            rounds,
            &mut [
                ("raw_wasmer", &mut || {
                    common::ns_per_call(n, &mut || raw_wr.call(f, std::hint::black_box(input), &mut o1))
                }),
                ("raw_wasmtime", &mut || {
                    common::ns_per_call(n, &mut || raw_wt.call(f, std::hint::black_box(input), &mut o2))
                }),
                ("raw_wasmtime_fuel_epoch", &mut || {
                    common::ns_per_call(n, &mut || raw_wt_guarded.call(f, std::hint::black_box(input), &mut o3))
                }),
                ("raw_wasmtime_fuel_epoch_locked", &mut || {
                    common::ns_per_call(n, &mut || {
                        raw_wt_locked.lock().call(f, std::hint::black_box(input), &mut o4)
                    })
                }),
                ("keel_call_wasmer", &mut || {
                    common::ns_per_call(n, &mut || {
                        std::hint::black_box(keel_wr.call(std::hint::black_box(input), buf.0));
                    })
                }),
                ("keel_call_wasmtime", &mut || {
                    common::ns_per_call(n, &mut || {
                        std::hint::black_box(keel_wt.call(std::hint::black_box(input), buf.0));
                    })
                }),
            ],
        );
        r.ratio(
            &format!("{name}: keel_call on wasmer / raw wasmer"),
            "keel_call_wasmer",
            "raw_wasmer",
            "ns",
        );
        r.ratio(
            &format!("{name}: keel_call on wasmtime / raw wasmtime"),
            "keel_call_wasmtime",
            "raw_wasmtime",
            "ns",
        );
        r.ratio(
            &format!("{name}: keel_call on wasmtime / raw wasmtime with fuel + epoch (goal <= 1.2)"),
            "keel_call_wasmtime",
            "raw_wasmtime_fuel_epoch",
            "ns",
        );
        r.ratio(
            &format!("{name}: keel_call on wasmtime / raw wasmtime with fuel + epoch behind a mutex (callable from any thread)"),
            "keel_call_wasmtime",
            "raw_wasmtime_fuel_epoch_locked",
            "ns",
        );
        r.ratio(
            &format!("{name}: keel_call on wasmtime / keel_call on wasmer"),
            "keel_call_wasmtime",
            "keel_call_wasmer",
            "ns",
        );
        r.ratio(
            &format!("{name}: raw wasmtime / raw wasmer"),
            "raw_wasmtime",
            "raw_wasmer",
            "ns",
        );
    }

    // ---- (b) the byte sum of 4 KiB (throughput-bound) ----
    let wasm_c = build_c_wasm("compute", dir.path());
    let m = manifest("compute", json!({"capabilities": ["log"], "instances": "pooled"}));
    let kernels: Vec<WasmPlugin> = [WasmEngine::Wasmer, WasmEngine::Wasmtime]
        .into_iter()
        .map(|e| {
            runtime(e, None)
                .load(&artifact(wasm_c.clone()), &context(&m, HostServices::default()))
                .unwrap()
        })
        .collect();
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 131 + 17) as u8).collect();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    kernels[0].call(0, &data, &mut a).unwrap();
    kernels[1].call(0, &data, &mut b).unwrap();
    assert_eq!(a, b, "the engines disagree");
    let k = common::env_u64("KEEL_BENCH_KERNEL_CALLS", 5_000);
    let run = |p: &dyn Instance| {
        let mut o = Vec::with_capacity(64);
        common::ns_per_call(k, &mut || {
            o.clear();
            p.call(0, std::hint::black_box(&data), &mut o).unwrap();
        })
    };
    // Where wasmtime's cost on this loop comes from: Keel on wasmtime with static memories (no
    // explicit bounds checks), and raw wasmtime configured as Keel's capped mode, with and
    // without the Spectre mitigation of checked accesses.
    let static_kernel = WasmRuntime::new(WasmConfig {
        engine: WasmEngine::Wasmtime,
        memory: keel::runtime::wasm::MemoryMode::Static,
        ..WasmConfig::default()
    })
    .unwrap()
    .load(&artifact(wasm_c.clone()), &context(&m, HostServices::default()))
    .unwrap();
    let mut raw_capped = RawKernel::new(&wasm_c, &RawKernel::capped_config(true));
    let mut raw_capped_nospectre = RawKernel::new(&wasm_c, &RawKernel::capped_config(false));
    let mut o = Vec::new();
    for raw in [&mut raw_capped, &mut raw_capped_nospectre] {
        raw.call(0, &data, &mut o);
        assert_eq!(o, a);
    }
    let (mut o1, mut o2) = (Vec::with_capacity(64), Vec::with_capacity(64));
    let r = common::interleave(
        rounds,
        &mut [
            ("bytesum_wasmer", &mut || run(&kernels[0])),
            ("bytesum_wasmtime", &mut || run(&kernels[1])),
            ("bytesum_wasmtime_static", &mut || run(&static_kernel)),
            ("bytesum_raw_wasmtime_capped", &mut || {
                common::ns_per_call(k, &mut || raw_capped.call(0, std::hint::black_box(&data), &mut o1))
            }),
            ("bytesum_raw_wasmtime_capped_nospectre", &mut || {
                common::ns_per_call(k, &mut || {
                    raw_capped_nospectre.call(0, std::hint::black_box(&data), &mut o2)
                })
            }),
        ],
    );
    r.ratio(
        "bytesum 4 KiB via Keel: wasmtime / wasmer",
        "bytesum_wasmtime",
        "bytesum_wasmer",
        "ns",
    );
    r.ratio(
        "bytesum 4 KiB via Keel on wasmtime: static / capped memories",
        "bytesum_wasmtime_static",
        "bytesum_wasmtime",
        "ns",
    );
    r.ratio(
        "bytesum 4 KiB via Keel on wasmtime / raw wasmtime as capped (fuel + epoch)",
        "bytesum_wasmtime",
        "bytesum_raw_wasmtime_capped",
        "ns",
    );
    r.ratio(
        "bytesum 4 KiB raw wasmtime as capped: without / with the Spectre mitigation",
        "bytesum_raw_wasmtime_capped_nospectre",
        "bytesum_raw_wasmtime_capped",
        "ns",
    );
    r.ratio(
        "bytesum 4 KiB: raw wasmtime as capped without Spectre mitigation / Keel on wasmer",
        "bytesum_raw_wasmtime_capped_nospectre",
        "bytesum_wasmer",
        "ns",
    );

    // ---- (c) cold start ----
    let big = big_module();
    println!("module_bytes {}", big.len());
    let big_manifest = manifest("big", json!({}));
    let rts: Vec<(WasmRuntime, std::path::PathBuf)> = [WasmEngine::Wasmer, WasmEngine::Wasmtime]
        .into_iter()
        .map(|e| {
            let cache_dir = dir.path().join(format!("cache-{}", e.as_str()));
            let rt = runtime(
                e,
                Some(CacheConfig {
                    dir: cache_dir.clone(),
                    key: [7u8; 32],
                }),
            );
            (rt, cache_dir)
        })
        .collect();
    let load_ms = |i: usize, hit: bool| {
        let (rt, cache_dir) = &rts[i];
        let clear = || {
            if let Ok(d) = std::fs::read_dir(cache_dir) {
                for e in d {
                    std::fs::remove_file(e.unwrap().path()).unwrap();
                }
            }
        };
        let load = || {
            let t = Instant::now();
            let p = rt
                .load(&artifact(big.clone()), &context(&big_manifest, HostServices::default()))
                .unwrap();
            let d = t.elapsed();
            drop(p);
            d.as_secs_f64() * 1e3
        };
        if hit {
            let empty = match std::fs::read_dir(cache_dir) {
                Ok(mut d) => d.next().is_none(),
                Err(_) => true,
            };
            if empty {
                load();
            }
        } else {
            clear();
        }
        load()
    };
    let cold_rounds = rounds
        .min(common::env_u64("KEEL_BENCH_COLD_ROUNDS", 15) as usize)
        .max(7);
    let r = common::interleave(
        cold_rounds,
        &mut [
            ("miss_wasmer", &mut || load_ms(0, false)),
            ("hit_wasmer", &mut || load_ms(0, true)),
            ("miss_wasmtime", &mut || load_ms(1, false)),
            ("hit_wasmtime", &mut || load_ms(1, true)),
        ],
    );
    for v in ["miss_wasmer", "hit_wasmer", "miss_wasmtime", "hit_wasmtime"] {
        r.absolute(v, "ms");
    }
    r.ratio(
        "cold start cache miss: wasmtime / wasmer",
        "miss_wasmtime",
        "miss_wasmer",
        "ms",
    );
    r.ratio(
        "cold start cache hit: wasmtime / wasmer",
        "hit_wasmtime",
        "hit_wasmer",
        "ms",
    );
}
