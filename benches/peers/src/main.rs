//! Keel side by side with its peers (issue 14), every ratio from interleaved rounds in this
//! process (the helper of benches/common, included by path):
//!
//! - calls of the same module functions through Keel's C ABI (`keel_call` on a Host), raw
//!   wasmer and wasmtime: a trivial call (echo.wat `add`), a 1 KB echo (echo.wat `echo`: input
//!   written into guest memory, output read back), and two 4 KiB kernels of compute.c built
//!   for wasm32 by clang (FNV-1a and a byte sum);
//! - each engine plain and with its interruption mechanism: Keel metered / unmetered (Keel's
//!   unmetered calls are still bounded by its deadline watchdog, which stops a guest through
//!   a flag its compiled code checks at function entries and loop heads), wasmer with and
//!   without wasmer-middlewares `Metering` (Keel's cost function), wasmtime plain, with fuel
//!   and with epoch interruption;
//! - cold start of a ~100 KB module: compile + instantiate + init, and the same from each
//!   engine's cache (Keel: its authenticated on-disk cache; wasmer and wasmtime: deserialize
//!   a module they serialized).
//!
//! Goal (issue 14): Keel's WASM call <= 1.2x raw wasmer unmetered, and no slower than
//! wasmtime with equivalent interruption. Run: benches/peers.sh.

#[path = "../../common/mod.rs"]
#[allow(dead_code, unused_imports)]
mod common;

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use keel::ffi::host::*;
use keel::ffi::wasm::{keel_host_set_wasm_config, keel_wasm_config, keel_wasm_config_default};
use keel::keel_status::KEEL_OK;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// One module function's call: function index and input.
trait Engine {
    /// Call function `f` with `input`; the output copied into `out`.
    fn call(&mut self, f: i32, input: &[u8], out: &mut Vec<u8>);
}

fn unpack(r: i64) -> (u32, u32) {
    assert!(r >= 0, "the guest reported an error");
    (r as u32, ((r as u64) >> 32) as u32)
}

// ---------------------------------------------------------------------------------------
// Raw wasmer
// ---------------------------------------------------------------------------------------

struct Wasmer {
    store: wasmer::Store,
    call: wasmer::TypedFunction<(i32, i32, i32), i64>,
    memory: wasmer::Memory,
    ptr: i32,
}

fn wasmer_engine(metering: bool) -> wasmer::Engine {
    let mut compiler = wasmer::sys::Cranelift::new();
    compiler.opt_level(wasmer::sys::CraneliftOptLevel::Speed);
    if metering {
        use wasmer::sys::CompilerConfig;
        compiler.push_middleware(Arc::new(wasmer_middlewares::Metering::new(
            u64::MAX / 2,
            keel::runtime::wasm::engine::operator_cost,
        )));
    }
    wasmer::sys::EngineBuilder::new(compiler).into()
}

fn wasmer_instantiate(store: &mut wasmer::Store, module: &wasmer::Module) -> wasmer::Instance {
    let log = wasmer::Function::new_typed(store, |_: i32, _: i32, _: i32| {});
    let imports = wasmer::imports! { "keel" => { "log" => log } };
    let instance = wasmer::Instance::new(store, module, &imports).unwrap();
    if let Ok(init) = instance
        .exports
        .get_typed_function::<(i32, i32), i64>(&*store, "keel_init")
    {
        unpack(init.call(store, 0, 0).unwrap());
    }
    instance
}

impl Wasmer {
    fn new(wasm: &[u8], metering: bool) -> Wasmer {
        let mut store = wasmer::Store::new(wasmer_engine(metering));
        let module = wasmer::Module::new(&store, wasm).unwrap();
        let instance = wasmer_instantiate(&mut store, &module);
        let alloc = instance
            .exports
            .get_typed_function::<i32, i32>(&store, "keel_alloc")
            .unwrap();
        let ptr = alloc.call(&mut store, 8192).unwrap();
        let call = instance.exports.get_typed_function(&store, "keel_call").unwrap();
        let memory = instance.exports.get_memory("memory").unwrap().clone();
        Wasmer {
            store,
            call,
            memory,
            ptr,
        }
    }
}

impl Engine for Wasmer {
    #[inline]
    fn call(&mut self, f: i32, input: &[u8], out: &mut Vec<u8>) {
        self.memory.view(&self.store).write(self.ptr as u64, input).unwrap();
        let r = self
            .call
            .call(&mut self.store, f, self.ptr, input.len() as i32)
            .unwrap();
        let (p, n) = unpack(r);
        out.resize(n as usize, 0);
        self.memory.view(&self.store).read(p as u64, out).unwrap();
    }
}

// ---------------------------------------------------------------------------------------
// wasmtime
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Debug)]
enum Wt {
    Plain,
    Fuel,
    Epoch,
}

struct Wasmtime {
    store: wasmtime::Store<()>,
    call: wasmtime::TypedFunc<(i32, i32, i32), i64>,
    memory: wasmtime::Memory,
    ptr: i32,
}

fn wasmtime_engine(mode: Wt) -> wasmtime::Engine {
    let mut c = wasmtime::Config::new();
    c.cranelift_opt_level(wasmtime::OptLevel::Speed);
    c.consume_fuel(mode == Wt::Fuel);
    c.epoch_interruption(mode == Wt::Epoch);
    wasmtime::Engine::new(&c).unwrap()
}

fn wasmtime_instantiate(
    engine: &wasmtime::Engine,
    module: &wasmtime::Module,
    mode: Wt,
) -> (wasmtime::Store<()>, wasmtime::Instance) {
    let mut store = wasmtime::Store::new(engine, ());
    match mode {
        Wt::Plain => {}
        Wt::Fuel => store.set_fuel(u64::MAX / 2).unwrap(),
        Wt::Epoch => store.set_epoch_deadline(u64::MAX / 2),
    }
    let mut linker = wasmtime::Linker::new(engine);
    linker.func_wrap("keel", "log", |_: i32, _: i32, _: i32| {}).unwrap();
    let instance = linker.instantiate(&mut store, module).unwrap();
    if let Ok(init) = instance.get_typed_func::<(i32, i32), i64>(&mut store, "keel_init") {
        unpack(init.call(&mut store, (0, 0)).unwrap());
    }
    (store, instance)
}

impl Wasmtime {
    fn new(wasm: &[u8], mode: Wt) -> Wasmtime {
        let engine = wasmtime_engine(mode);
        let module = wasmtime::Module::new(&engine, wasm).unwrap();
        let (mut store, instance) = wasmtime_instantiate(&engine, &module, mode);
        let alloc = instance.get_typed_func::<i32, i32>(&mut store, "keel_alloc").unwrap();
        let ptr = alloc.call(&mut store, 8192).unwrap();
        let call = instance.get_typed_func(&mut store, "keel_call").unwrap();
        let memory = instance.get_memory(&mut store, "memory").unwrap();
        Wasmtime {
            store,
            call,
            memory,
            ptr,
        }
    }
}

impl Engine for Wasmtime {
    #[inline]
    fn call(&mut self, f: i32, input: &[u8], out: &mut Vec<u8>) {
        self.memory.write(&mut self.store, self.ptr as usize, input).unwrap();
        let r = self
            .call
            .call(&mut self.store, (f, self.ptr, input.len() as i32))
            .unwrap();
        let (p, n) = unpack(r);
        out.resize(n as usize, 0);
        self.memory.read(&self.store, p as usize, out).unwrap();
    }
}

// ---------------------------------------------------------------------------------------
// Keel, through its C ABI
// ---------------------------------------------------------------------------------------

struct Keel {
    host: *mut keel_host,
    plugin: *mut keel_plugin,
    /// Resolved ids, indexed like the module's own function numbers.
    functions: Vec<keel_function>,
    buf: *mut keel_buffer,
}

fn keel_config(metering: bool, cache: Option<(&CString, [u8; 32])>) -> keel_wasm_config {
    // SAFETY: keel_wasm_config is a plain C struct (integers, bools, a pointer); all-zero
    // is a valid value, overwritten next.
    let mut c = unsafe { std::mem::zeroed::<keel_wasm_config>() };
    assert_eq!(keel_wasm_config_default(&mut c), KEEL_OK);
    c.metering = metering;
    if let Some((dir, key)) = cache {
        c.cache_dir = dir.as_ptr();
        c.cache_key = key;
    }
    c
}

/// Write `wasm` and a manifest for it into `dir`; returns the manifest path.
fn keel_files(dir: &Path, name: &str, wasm: &[u8]) -> CString {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(format!("{name}.wasm")), wasm).unwrap();
    let m = serde_json::json!({
        "manifest_version": 1, "name": name, "version": "1.0.0", "runtime": "wasm",
        "binary": {"wasm32": format!("{name}.wasm")}, "sha256": keel::trust::digest::sha256_hex(wasm),
        "capabilities": ["log"], "instances": "pooled"
    });
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, m.to_string()).unwrap();
    CString::new(path.to_str().unwrap()).unwrap()
}

fn keel_host(config: &keel_wasm_config) -> *mut keel_host {
    let mut host = std::ptr::null_mut();
    assert_eq!(keel_host_new(&mut host), KEEL_OK);
    assert_eq!(keel::ffi::trust::keel_host_set_require_signature(host, false), KEEL_OK);
    assert_eq!(keel_host_set_wasm_config(host, config), KEEL_OK);
    host
}

impl Keel {
    /// `names[i]`: the module's function `i` (empty: not used).
    fn new(dir: &Path, name: &str, wasm: &[u8], metering: bool, names: &[&str]) -> Keel {
        let manifest = keel_files(dir, name, wasm);
        let host = keel_host(&keel_config(metering, None));
        let mut plugin = std::ptr::null_mut();
        assert_eq!(keel_host_load(host, manifest.as_ptr(), &mut plugin), KEEL_OK);
        let functions = names
            .iter()
            .map(|n| {
                if n.is_empty() {
                    return 0;
                }
                let c = CString::new(*n).unwrap();
                let mut f = 0;
                assert_eq!(keel_plugin_function(plugin, c.as_ptr(), &mut f), KEEL_OK);
                f
            })
            .collect();
        let mut buf = std::ptr::null_mut();
        assert_eq!(keel_buffer_new(&mut buf), KEEL_OK);
        Keel {
            host,
            plugin,
            functions,
            buf,
        }
    }
}

impl Engine for Keel {
    /// The output stays in Keel's buffer (Keel already copied it out of the guest); `out`
    /// receives only its length, so no side copies the output twice.
    #[inline]
    fn call(&mut self, f: i32, input: &[u8], out: &mut Vec<u8>) {
        let rc = keel_call(
            self.plugin,
            self.functions[f as usize],
            input.as_ptr(),
            input.len(),
            self.buf,
        );
        assert_eq!(rc, KEEL_OK);
        let (mut p, mut n) = (std::ptr::null(), 0usize);
        assert_eq!(keel_buffer_data(self.buf, &mut p, &mut n), KEEL_OK);
        out.resize(n, 0);
        std::hint::black_box(p);
    }
}

impl Drop for Keel {
    fn drop(&mut self) {
        keel_buffer_free(self.buf);
        keel_plugin_free(self.plugin);
        keel_host_free(self.host);
    }
}

// ---------------------------------------------------------------------------------------
// Modules
// ---------------------------------------------------------------------------------------

fn echo_wasm() -> Vec<u8> {
    wat::parse_file(repo().join("tests/fixtures/wasm/echo.wat")).unwrap()
}

fn compute_wasm(dir: &Path) -> Vec<u8> {
    let root = repo();
    let out = dir.join("compute.wasm");
    let st = Command::new("clang")
        .args([
            "--target=wasm32",
            "-nostdlib",
            "-O2",
            "-Wl,--no-entry",
            "-Wl,--export-dynamic",
            "-I",
        ])
        .arg(root.join("include"))
        .arg("-o")
        .arg(&out)
        .arg(root.join("tests/fixtures/wasm/c/compute.c"))
        .status()
        .expect("clang (wasm32 target and wasm-ld needed)");
    assert!(st.success());
    std::fs::read(out).unwrap()
}

/// A ~100 KB module speaking the Keel ABI: compute.wat plus many small functions (the same
/// generator as benches/wasm.rs).
fn big_module() -> Vec<u8> {
    let base = std::fs::read_to_string(repo().join("tests/fixtures/wasm/compute.wat")).unwrap();
    let body_end = base.rfind(')').unwrap();
    let mut wat = base[..body_end].to_string();
    for i in 0..1100 {
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

// ---------------------------------------------------------------------------------------

/// One interleaved comparison of every engine on function `f` with `input`.
fn compare(what: &str, engines: &mut [(&str, &mut dyn Engine)], f: i32, input: &[u8], calls: u64) {
    // Every engine must compute the same output.
    let mut want: Option<Vec<u8>> = None;
    for (name, e) in engines.iter_mut() {
        let mut out = Vec::new();
        e.call(f, input, &mut out);
        if *name != "keel" && *name != "keel_metered" {
            match &want {
                None => want = Some(out),
                Some(w) => assert_eq!(w, &out, "{what}: {name} disagrees"),
            }
        }
    }
    let mut closures: Vec<(String, Box<dyn FnMut() -> f64 + '_>)> = engines
        .iter_mut()
        .map(|(name, e)| {
            let mut out = Vec::with_capacity(8192);
            let f: Box<dyn FnMut() -> f64 + '_> = Box::new(move || {
                common::ns_per_call(calls, &mut || {
                    e.call(f, std::hint::black_box(input), &mut out);
                })
            });
            (name.to_string(), f)
        })
        .collect();
    let mut variants: Vec<(&str, &mut dyn FnMut() -> f64)> = closures
        .iter_mut()
        .map(|(n, f)| (n.as_str(), &mut **f as &mut dyn FnMut() -> f64))
        .collect();
    let r = common::interleave(common::rounds(), &mut variants);
    println!("== {what}");
    for n in &r.names {
        r.absolute(n, "ns/call");
    }
    r.ratio(
        &format!("{what}: keel / wasmer, unmetered both (goal <= 1.2)"),
        "keel",
        "wasmer",
        "ns",
    );
    r.ratio(
        &format!("{what}: keel metered / wasmer metered"),
        "keel_metered",
        "wasmer_metered",
        "ns",
    );
    r.ratio(
        &format!("{what}: keel metered / wasmtime fuel (goal <= 1)"),
        "keel_metered",
        "wasmtime_fuel",
        "ns",
    );
    r.ratio(
        &format!("{what}: keel unmetered (stop-check deadline) / wasmtime epoch (goal <= 1)"),
        "keel",
        "wasmtime_epoch",
        "ns",
    );
    r.ratio(
        &format!("{what}: keel unmetered / wasmtime plain"),
        "keel",
        "wasmtime",
        "ns",
    );
    r.ratio(
        &format!("{what}: wasmtime plain / wasmer plain"),
        "wasmtime",
        "wasmer",
        "ns",
    );
}

fn main() {
    println!("{}", common::conditions());
    let dir = tempfile::tempdir().unwrap();
    let echo = echo_wasm();
    let compute = compute_wasm(dir.path());
    let calls = common::env_u64("KEEL_BENCH_CALLS", 100_000);
    let kcalls = common::env_u64("KEEL_BENCH_KERNEL_CALLS", 3_000);

    // echo.wat: 0 echo, 1 add.
    {
        let mut k = Keel::new(&dir.path().join("k"), "echo", &echo, false, &["echo", "add"]);
        let mut km = Keel::new(&dir.path().join("km"), "echo", &echo, true, &["echo", "add"]);
        let mut w = Wasmer::new(&echo, false);
        let mut wm = Wasmer::new(&echo, true);
        let mut t = Wasmtime::new(&echo, Wt::Plain);
        let mut tf = Wasmtime::new(&echo, Wt::Fuel);
        let mut te = Wasmtime::new(&echo, Wt::Epoch);
        let mut engines: [(&str, &mut dyn Engine); 7] = [
            ("keel", &mut k),
            ("keel_metered", &mut km),
            ("wasmer", &mut w),
            ("wasmer_metered", &mut wm),
            ("wasmtime", &mut t),
            ("wasmtime_fuel", &mut tf),
            ("wasmtime_epoch", &mut te),
        ];
        compare("trivial call (add)", &mut engines, 1, &[40, 0, 0, 0, 2, 0, 0, 0], calls);
        let kb: Vec<u8> = (0..1024u32).map(|i| i as u8).collect();
        compare("1 KB echo", &mut engines, 0, &kb, calls);
    }
    // compute.c: 0 sum, 2 checksum (FNV-1a).
    {
        let names = ["sum", "", "checksum"];
        let mut k = Keel::new(&dir.path().join("ck"), "compute", &compute, false, &names);
        let mut km = Keel::new(&dir.path().join("ckm"), "compute", &compute, true, &names);
        let mut w = Wasmer::new(&compute, false);
        let mut wm = Wasmer::new(&compute, true);
        let mut t = Wasmtime::new(&compute, Wt::Plain);
        let mut tf = Wasmtime::new(&compute, Wt::Fuel);
        let mut te = Wasmtime::new(&compute, Wt::Epoch);
        let mut engines: [(&str, &mut dyn Engine); 7] = [
            ("keel", &mut k),
            ("keel_metered", &mut km),
            ("wasmer", &mut w),
            ("wasmer_metered", &mut wm),
            ("wasmtime", &mut t),
            ("wasmtime_fuel", &mut tf),
            ("wasmtime_epoch", &mut te),
        ];
        let data: Vec<u8> = (0..4096u32).map(|i| (i * 131 + 17) as u8).collect();
        compare("FNV-1a 4 KiB", &mut engines, 2, &data, kcalls);
        compare("byte sum 4 KiB", &mut engines, 0, &data, kcalls);
    }

    // ---- cold start ----
    let big = big_module();
    println!("== cold start, module of {} bytes", big.len());
    let cache_dir = dir.path().join("keel-cache");
    std::fs::create_dir_all(&cache_dir).unwrap();
    let cache_c = CString::new(cache_dir.to_str().unwrap()).unwrap();
    let manifest = keel_files(&dir.path().join("big"), "big", &big);
    let keel_load = |cached: bool| -> f64 {
        let cfg = keel_config(true, cached.then_some((&cache_c, [7u8; 32])));
        let host = keel_host(&cfg);
        let mut plugin = std::ptr::null_mut();
        let t = Instant::now();
        assert_eq!(keel_host_load(host, manifest.as_ptr(), &mut plugin), KEEL_OK);
        let ms = t.elapsed().as_secs_f64() * 1e3;
        keel_plugin_free(plugin);
        keel_host_free(host);
        ms
    };
    let clear = || {
        for e in std::fs::read_dir(&cache_dir).unwrap() {
            std::fs::remove_file(e.unwrap().path()).unwrap();
        }
    };
    let wasmer_eng = wasmer_engine(true);
    // wasmer's `Metering` may compile one module only: a fresh engine per compile.
    let wasmer_bytes = wasmer::Module::new(&wasmer_engine(true), &big)
        .unwrap()
        .serialize()
        .unwrap();
    let wt_eng = wasmtime_engine(Wt::Fuel);
    let wt_bytes = wasmtime::Module::new(&wt_eng, &big).unwrap().serialize().unwrap();
    let ms = |f: &mut dyn FnMut()| {
        let t = Instant::now();
        f();
        t.elapsed().as_secs_f64() * 1e3
    };
    let r = common::interleave(
        common::rounds().min(15).max(15),
        &mut [
            ("keel_compile", &mut || {
                clear();
                keel_load(true)
            }),
            ("keel_cache_hit", &mut || {
                if std::fs::read_dir(&cache_dir).unwrap().next().is_none() {
                    keel_load(true);
                }
                keel_load(true)
            }),
            ("wasmer_compile", &mut || {
                ms(&mut || {
                    let mut store = wasmer::Store::new(wasmer_engine(true));
                    let m = wasmer::Module::new(&store, &big).unwrap();
                    std::hint::black_box(wasmer_instantiate(&mut store, &m));
                })
            }),
            ("wasmer_deserialize", &mut || {
                ms(&mut || {
                    let mut store = wasmer::Store::new(wasmer_eng.clone());
                    // SAFETY: the bytes are this process's own serialization with this engine.
                    let m = unsafe { wasmer::Module::deserialize(&store, wasmer_bytes.clone()) }.unwrap();
                    std::hint::black_box(wasmer_instantiate(&mut store, &m));
                })
            }),
            ("wasmtime_compile", &mut || {
                ms(&mut || {
                    let m = wasmtime::Module::new(&wt_eng, &big).unwrap();
                    std::hint::black_box(wasmtime_instantiate(&wt_eng, &m, Wt::Fuel));
                })
            }),
            ("wasmtime_deserialize", &mut || {
                ms(&mut || {
                    // SAFETY: the bytes are this process's own serialization with this engine.
                    let m = unsafe { wasmtime::Module::deserialize(&wt_eng, &wt_bytes) }.unwrap();
                    std::hint::black_box(wasmtime_instantiate(&wt_eng, &m, Wt::Fuel));
                })
            }),
        ],
    );
    for n in &r.names {
        r.absolute(n, "ms");
    }
    r.ratio(
        "cold compile: keel / wasmer (metered both)",
        "keel_compile",
        "wasmer_compile",
        "ms",
    );
    r.ratio(
        "cold compile: keel / wasmtime fuel",
        "keel_compile",
        "wasmtime_compile",
        "ms",
    );
    r.ratio(
        "cached: keel / wasmer deserialize",
        "keel_cache_hit",
        "wasmer_deserialize",
        "ms",
    );
    r.ratio(
        "cached: keel / wasmtime deserialize",
        "keel_cache_hit",
        "wasmtime_deserialize",
        "ms",
    );
}
