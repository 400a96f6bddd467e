//! Host functions defined by the embedder, measured as A/B in interleaved rounds in one
//! process (so machine noise and other load hit both alike):
//!
//! - native: a plugin (tests/fixtures/native/hostfn.c, -O2) calls the server's host function
//!   `LOOP` times in one `keel_call`. A = `loop_direct`: it calls the host function's C
//!   callback through a plain function pointer; B = `loop_host`: it calls the same callback,
//!   defined with `keel_host_define_function`, through `host_fn_call` of its host-API table.
//!   Reported: the overhead per host-function call, (B - A) / LOOP in ns (target <= 10 ns),
//!   and B/A.
//! - WASM: a guest calls an imported host function `LOOP` times per call. A = raw wasmer: the
//!   module instantiated with an import closure that reads the input from guest memory, runs
//!   the host function body and copies its output back; B = the same module loaded in Keel,
//!   the same body defined with `Host::define_host_fn`, called with `Slot::call`. Reported:
//!   B/A (target <= 1.3).
//!
//! Each round times `CALLS` plugin calls of A and of B (the order alternates per round); the
//! bench prints min and median of the per-round figures. `KEEL_BENCH_ROUNDS`,
//! `KEEL_BENCH_CALLS` override the defaults. Run: `cargo bench --bench host_functions`.

use std::ffi::c_void;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use keel::capability::Capabilities;
use keel::ffi::hostfn::{keel_call_context, keel_host_define_function, keel_host_fn_output};
use keel::keel_status::KEEL_OK;
use keel::registry::Slot;
use keel::services::hostfn::HostOutput;
use keel::Host;
use wasmer::{imports, Function, FunctionEnv, FunctionEnvMut, Instance, Memory, Module, Store, TypedFunction};

/// Host-function calls per plugin call.
const LOOP: u32 = 1000;
/// The payload handed to the host function (16 bytes in, 16 bytes out).
const PAYLOAD: &[u8] = b"0123456789abcdef";

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn bench_dir() -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-host-functions");
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write_manifest(dir: &Path, name: &str, runtime: &str, binary: &str, bytes: &[u8]) -> PathBuf {
    let key = if runtime == "wasm" { "wasm32" } else { "linux" };
    let m = serde_json::json!({
        "manifest_version": 1, "name": name, "version": "1.0.0", "runtime": runtime,
        "binary": { key: binary }, "sha256": keel::trust::digest::sha256_hex(bytes),
        "capabilities": ["storage:read"],
    });
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, m.to_string()).unwrap();
    path
}

fn host() -> Host {
    let h = Host::new();
    h.trust().set_require_signature(false).unwrap();
    h.set_allowlist(Capabilities::all());
    h
}

/// Min and median of per-round figures.
fn report(what: &str, unit: &str, mut v: Vec<f64>) {
    v.sort_by(f64::total_cmp);
    println!(
        "KEEL-HOSTFN-FIGURES {what}: min={:.3}{unit} median={:.3}{unit} over {} rounds",
        v[0],
        v[v.len() / 2],
        v.len()
    );
}

fn time(calls: u64, f: &mut impl FnMut()) -> Duration {
    let start = Instant::now();
    for _ in 0..calls {
        f();
    }
    start.elapsed()
}

/// Interleaved rounds; returns per-round (A, B) times per plugin call in ns.
fn rounds(rounds: u64, calls: u64, a: &mut impl FnMut(), b: &mut impl FnMut()) -> Vec<(f64, f64)> {
    for _ in 0..calls.min(200) {
        a();
        b();
    }
    (0..rounds)
        .map(|r| {
            let (ta, tb) = if r % 2 == 0 {
                let ta = time(calls, a);
                (ta, time(calls, b))
            } else {
                let tb = time(calls, b);
                (time(calls, a), tb)
            };
            let ns = |d: Duration| d.as_nanos() as f64 / calls as f64;
            (ns(ta), ns(tb))
        })
        .collect()
}

// ---- native ----------------------------------------------------------------------------

/// The host function: copies its input to its output (the same body for A and B).
unsafe extern "C" fn echo_row(
    _ctx: *const keel_call_context,
    input: *const u8,
    len: usize,
    out: *const keel_host_fn_output,
    _user_data: *mut c_void,
) -> i32 {
    // SAFETY: per the callback contract `out` is live and `input` holds `len` bytes.
    unsafe { ((*out).write)((*out).ctx, input, len) }
}

fn native(rounds_n: u64, calls: u64) {
    let dir = bench_dir();
    let so = dir.join("libhostfn.so");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let st = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-shared", "-fPIC", "-O2", "-I"])
        .arg(root.join("include"))
        .arg("-o")
        .arg(&so)
        .arg(root.join("tests/fixtures/native/hostfn.c"))
        .status()
        .expect("run cc");
    assert!(st.success());
    let manifest = write_manifest(&dir, "hostfn", "native", "libhostfn.so", &std::fs::read(&so).unwrap());
    let h = host();
    let (ns, n, cap) = (c"db", c"get_row", c"storage:read");
    let st = keel_host_define_function(
        &h as *const Host as *const keel::ffi::host::keel_host,
        ns.as_ptr(),
        n.as_ptr(),
        cap.as_ptr(),
        Some(echo_row),
        std::ptr::null_mut(),
        None,
    );
    assert_eq!(st, KEEL_OK);
    let slot = h.load(&manifest).unwrap();
    let (direct, via) = (slot.resolve("loop_direct").unwrap(), slot.resolve("loop_host").unwrap());
    let mut in_direct = (echo_row as *const () as usize as u64).to_ne_bytes().to_vec();
    in_direct.extend_from_slice(&LOOP.to_ne_bytes());
    in_direct.extend_from_slice(PAYLOAD);
    let mut in_host = LOOP.to_ne_bytes().to_vec();
    in_host.extend_from_slice(PAYLOAD);
    let (mut oa, mut ob) = (Vec::new(), Vec::new());
    let mut a = || {
        oa.clear();
        slot.call(direct, &in_direct, &mut oa).unwrap();
    };
    let mut b = || {
        ob.clear();
        slot.call(via, &in_host, &mut ob).unwrap();
    };
    let r = rounds(rounds_n, calls, &mut a, &mut b);
    assert_eq!(oa.len(), PAYLOAD.len() * LOOP as usize);
    assert_eq!(oa, ob, "both loops produce the same output");
    report(
        "native host_fn_call overhead per call (B-A)/LOOP",
        " ns",
        r.iter().map(|(a, b)| (b - a) / LOOP as f64).collect(),
    );
    report(
        "native loop via table / direct (B/A)",
        "",
        r.iter().map(|(a, b)| b / a).collect(),
    );
}

// ---- WASM --------------------------------------------------------------------------------

const GUEST: &str = r#"
(module
  (import "db" "get_row" (func $get_row (param i32 i32 i32 i32) (result i64)))
  (memory (export "memory") 1)
  (data (i32.const 16) "loop")
  (func $ok (param $p i32) (param $n i32) (result i64)
    (i64.or (i64.shl (i64.extend_i32_u (local.get $n)) (i64.const 32)) (i64.extend_i32_u (local.get $p))))
  (func (export "keel_abi_version") (result i32) (i32.const 1))
  (func (export "keel_functions") (result i64) (call $ok (i32.const 16) (i32.const 4)))
  (func (export "keel_alloc") (param $n i32) (result i32) (i32.const 8192))
  ;; input: u32 count, then the payload handed to the host function each time; output: the
  ;; host function's last output (copied to 4096).
  (func (export "keel_call") (param $f i32) (param $p i32) (param $n i32) (result i64)
    (local $i i32) (local $count i32) (local $r i64)
    (local.set $count (i32.load (local.get $p)))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $count)))
        (local.set $r (call $get_row (i32.add (local.get $p) (i32.const 4)) (i32.sub (local.get $n) (i32.const 4))
                                     (i32.const 4096) (i32.const 4096)))
        (if (i64.lt_s (local.get $r) (i64.const 0)) (then unreachable))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (call $ok (i32.const 4096) (i32.wrap_i64 (local.get $r)))))
"#;

/// The host function body shared by A and B: the row is the key (copied).
#[inline]
fn row_body(input: &[u8], out: &mut dyn FnMut(&[u8])) {
    out(input)
}

struct RawEnv {
    memory: Option<Memory>,
}

/// Raw wasmer's import: read the input, run the body, copy the output back, return its length.
fn raw_get_row(mut env: FunctionEnvMut<RawEnv>, ip: i32, il: i32, op: i32, cap: i32) -> i64 {
    let (data, store) = env.data_and_store_mut();
    let view = data.memory.as_ref().unwrap().view(&store);
    let mut input = [0u8; 256];
    let il = (il as usize).min(input.len());
    view.read(ip as u32 as u64, &mut input[..il]).unwrap();
    let mut len = 0i64;
    row_body(&input[..il], &mut |o| {
        let n = o.len().min(cap as u32 as usize);
        view.write(op as u32 as u64, &o[..n]).unwrap();
        len = o.len() as i64;
    });
    len
}

fn wasm(rounds_n: u64, calls: u64) {
    let bytes = wat::parse_str(GUEST).unwrap();
    let mut input = LOOP.to_le_bytes().to_vec();
    input.extend_from_slice(PAYLOAD);

    // A: raw wasmer.
    let mut store = Store::default();
    let module = Module::new(&store, &bytes).unwrap();
    let fenv = FunctionEnv::new(&mut store, RawEnv { memory: None });
    let imports = imports! { "db" => { "get_row" => Function::new_typed_with_env(&mut store, &fenv, raw_get_row) } };
    let instance = Instance::new(&mut store, &module, &imports).unwrap();
    let memory = instance.exports.get_memory("memory").unwrap().clone();
    fenv.as_mut(&mut store).memory = Some(memory.clone());
    let call: TypedFunction<(i32, i32, i32), i64> = instance.exports.get_typed_function(&store, "keel_call").unwrap();
    let mut raw_out = Vec::new();
    let mut a = || {
        memory.view(&store).write(8192, &input).unwrap();
        let r = call.call(&mut store, 0, 8192, input.len() as i32).unwrap();
        let (p, n) = (r as u32 as u64, ((r >> 32) & 0x7fff_ffff) as usize);
        raw_out.resize(n, 0);
        memory.view(&store).read(p, &mut raw_out).unwrap();
    };

    // B: through Keel.
    let dir = bench_dir();
    std::fs::write(dir.join("rows.wasm"), &bytes).unwrap();
    let manifest = write_manifest(&dir, "rows", "wasm", "rows.wasm", &bytes);
    let h = host();
    h.define_host_fn("db", "get_row", "storage:read", |_, input, out: &HostOutput| {
        row_body(input, &mut |o| {
            out.write(o);
        });
        Ok(())
    })
    .unwrap();
    let slot: std::sync::Arc<Slot> = h.load(&manifest).unwrap();
    let f = slot.resolve("loop").unwrap();
    let mut keel_out = Vec::new();
    let mut b = || {
        keel_out.clear();
        slot.call(f, &input, &mut keel_out).unwrap();
    };
    let r = rounds(rounds_n, calls, &mut a, &mut b);
    assert_eq!(raw_out, PAYLOAD);
    assert_eq!(keel_out, PAYLOAD);
    report(
        "wasm -> host function -> back, Keel / raw wasmer (B/A)",
        "",
        r.iter().map(|(a, b)| b / a).collect(),
    );
    let per = |v: f64| v / LOOP as f64;
    let med = {
        let mut v = r.clone();
        v.sort_by(|x, y| (x.1 / x.0).total_cmp(&(y.1 / y.0)));
        v[v.len() / 2]
    };
    println!(
        "KEEL-HOSTFN-FIGURES wasm median round: A={:.1} ns/host call, B={:.1} ns/host call",
        per(med.0),
        per(med.1)
    );
}

fn main() {
    // `cargo test --benches` runs bench targets with `--bench`-less args; keep that quick.
    let quick = std::env::args().all(|a| a != "--bench");
    let rounds_n = env("KEEL_BENCH_ROUNDS", if quick { 3 } else { 30 });
    let calls = env("KEEL_BENCH_CALLS", if quick { 10 } else { 200 });
    native(rounds_n, calls);
    wasm(rounds_n, calls);
}
