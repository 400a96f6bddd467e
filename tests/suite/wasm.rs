//! WASM plugins through `WasmRuntime`: ABI, limits, traps, capabilities, concurrency, state,
//! compiled-module cache, and a fixture written in C against keel_wasm.h.

use crate::wasm_support;

use std::sync::Arc;

use keel::error::keel_status::{self, *};
use keel::runtime::wasm::{CacheConfig, WasmConfig, WasmPlugin, WasmRuntime};
use keel::runtime::{Health, HostServices, Instance, LogLevel, MemoryKv};
use parking_lot::Mutex;
use serde_json::json;
use wasm_support::*;

fn runtime() -> WasmRuntime {
    WasmRuntime::new(WasmConfig::default()).unwrap()
}

fn load_with(
    rt: &WasmRuntime,
    wasm: Vec<u8>,
    name: &str,
    extra: serde_json::Value,
    services: HostServices,
) -> keel::Result<WasmPlugin> {
    let m = manifest(name, extra);
    rt.load(&artifact(wasm), &context(&m, services))
}

fn load(rt: &WasmRuntime, fixture: &str, extra: serde_json::Value) -> WasmPlugin {
    load_with(rt, wat_fixture(fixture), fixture, extra, HostServices::default())
        .unwrap_or_else(|e| panic!("loading {fixture}: {e}"))
}

fn index(p: &dyn Instance, f: &str) -> u32 {
    p.functions()
        .iter()
        .position(|n| n == f)
        .unwrap_or_else(|| panic!("no function {f}")) as u32
}

fn call(p: &dyn Instance, f: &str, input: &[u8]) -> keel::Result<Vec<u8>> {
    let mut out = Vec::new();
    p.call(index(p, f), input, &mut out).map(|_| out)
}

fn status(r: keel::Result<Vec<u8>>) -> keel_status {
    match r {
        Ok(v) => panic!("expected an error, got Ok({v:?})"),
        Err(e) => e.status(),
    }
}

fn u64le(v: &[u8]) -> u64 {
    u64::from_le_bytes(v.try_into().expect("8 bytes"))
}

fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100000001b3)
    })
}

fn fib(n: u32) -> u64 {
    let (mut a, mut b) = (0u64, 1u64);
    for _ in 0..n {
        (a, b) = (b, a.wrapping_add(b));
    }
    a
}

type LogLines = Arc<Mutex<Vec<(String, LogLevel, String)>>>;

/// Services whose log lines are recorded.
fn recording_services() -> (HostServices, LogLines) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let l = lines.clone();
    let services = HostServices::default()
        .with_kv(Arc::new(MemoryKv::default()))
        .with_log(Arc::new(move |p: &str, lvl: LogLevel, m: &str| {
            l.lock().push((p.to_string(), lvl, m.to_string()))
        }));
    (services, lines)
}

// ---- the ABI ---------------------------------------------------------------------------

#[test]
fn echo_and_add_round_trip_inputs_of_every_size() {
    let rt = runtime();
    let p = load(&rt, "echo", json!({}));
    assert_eq!(
        p.functions(),
        ["echo", "add", "fail", "big_output", "bad_output", "config"]
    );
    for size in [0usize, 1, 255, 256, 257, 4096, 100_000, 10] {
        let input: Vec<u8> = (0..size).map(|i| (i * 7) as u8).collect();
        assert_eq!(call(&p, "echo", &input).unwrap(), input, "size {size}");
    }
    let mut input = 40i32.to_le_bytes().to_vec();
    input.extend(2i32.to_le_bytes());
    assert_eq!(call(&p, "add", &input).unwrap(), 42i32.to_le_bytes());
}

#[test]
fn keel_init_receives_the_manifest_config() {
    let rt = runtime();
    let p = load(&rt, "echo", json!({"config": {"greeting": "hello", "n": 3}}));
    let got: serde_json::Value = serde_json::from_slice(&call(&p, "config", b"").unwrap()).unwrap();
    assert_eq!(got, json!({"greeting": "hello", "n": 3}));
}

#[test]
fn a_guest_error_is_call_failed_with_its_message() {
    let rt = runtime();
    let p = load(&rt, "echo", json!({}));
    let e = call(&p, "fail", b"").unwrap_err();
    assert_eq!(e.status(), KEEL_ERR_CALL_FAILED);
    assert!(
        e.message().contains("this function always fails") && e.message().contains("'fail'"),
        "{e}"
    );
    // A guest that reports an error is not broken: the instance keeps serving.
    assert_eq!(call(&p, "echo", b"x").unwrap(), b"x");
}

#[test]
fn output_past_max_output_bytes_is_refused() {
    let rt = runtime();
    let p = load(&rt, "echo", json!({"limits": {"max_output_bytes": 1024}}));
    let e = call(&p, "big_output", b"").unwrap_err();
    assert_eq!(e.status(), KEEL_ERR_OUTPUT_TOO_LARGE, "{e}");
    assert_eq!(call(&p, "echo", &[1u8; 1024]).unwrap().len(), 1024);
    assert_eq!(status(call(&p, "echo", &[1u8; 1025])), KEEL_ERR_OUTPUT_TOO_LARGE);
}

#[test]
fn output_outside_guest_memory_is_an_abi_violation() {
    let rt = runtime();
    let p = load(&rt, "echo", json!({}));
    let e = call(&p, "bad_output", b"").unwrap_err();
    assert_eq!(e.status(), KEEL_ERR_PLUGIN_ABI_VIOLATION, "{e}");
    assert_eq!(call(&p, "echo", b"still fine").unwrap(), b"still fine");
}

#[test]
fn unknown_function_index_is_function_not_found() {
    let rt = runtime();
    let p = load(&rt, "echo", json!({}));
    let mut out = Vec::new();
    assert_eq!(
        p.call(99, b"", &mut out).unwrap_err().status(),
        KEEL_ERR_FUNCTION_NOT_FOUND
    );
}

#[test]
fn health_comes_from_keel_health_or_is_unknown() {
    let rt = runtime();
    assert_eq!(load(&rt, "echo", json!({})).health(), Health::Degraded);
    assert_eq!(load(&rt, "counter", json!({})).health(), Health::Healthy);
    assert_eq!(load(&rt, "compute", json!({})).health(), Health::Unknown);
}

#[test]
fn compute_kernels_match_the_reference() {
    let rt = runtime();
    let p = load(&rt, "compute", json!({}));
    let data: Vec<u8> = (0..10_000u32).map(|i| (i * 31 + 7) as u8).collect();
    assert_eq!(
        u64le(&call(&p, "sum", &data).unwrap()),
        data.iter().map(|b| *b as u64).sum::<u64>()
    );
    assert_eq!(u64le(&call(&p, "checksum", &data).unwrap()), fnv1a(&data));
    assert_eq!(u64le(&call(&p, "fib", &90u32.to_le_bytes()).unwrap()), fib(90));
    assert_eq!(u64le(&call(&p, "fib", &1000u32.to_le_bytes()).unwrap()), fib(1000));
}

// ---- limits ----------------------------------------------------------------------------

#[test]
fn memory_growth_stops_at_the_cap() {
    let rt = runtime();
    let p = load(&rt, "memhog", json!({"limits": {"memory_mb": 2}}));
    // The guest copes with the refusal: it got exactly the cap (2 MiB = 32 pages).
    let pages = call(&p, "probe", b"").unwrap();
    assert_eq!(u32::from_le_bytes(pages.try_into().unwrap()), 32);
    // A guest that traps after the refusal, or reports an error, hit the memory limit.
    let e = call(&p, "hog", b"").unwrap_err();
    assert_eq!(e.status(), KEEL_ERR_MEMORY_LIMIT, "{e}");
    assert!(e.message().contains("2 MiB"), "{e}");
    let e = call(&p, "hog_err", b"").unwrap_err();
    assert_eq!(e.status(), KEEL_ERR_MEMORY_LIMIT, "{e}");
    assert!(e.message().contains("out of memory"), "{e}");
    // The broken instance was discarded; a fresh one starts from its initial memory again.
    let pages = call(&p, "probe", b"").unwrap();
    assert_eq!(u32::from_le_bytes(pages.try_into().unwrap()), 32);
}

#[test]
fn memory_caps_are_per_plugin() {
    let rt = runtime();
    let small = load(&rt, "memhog", json!({"limits": {"memory_mb": 1}}));
    let big = load_with(
        &rt,
        wat_fixture("memhog"),
        "memhog2",
        json!({"limits": {"memory_mb": 8}}),
        HostServices::default(),
    )
    .unwrap();
    assert_eq!(call(&small, "probe", b"").unwrap(), 16u32.to_le_bytes());
    assert_eq!(call(&big, "probe", b"").unwrap(), 128u32.to_le_bytes());
}

#[test]
fn memory_caps_are_clamped_to_the_node_ceiling() {
    let mut config = WasmConfig::default();
    config.ceilings.memory_mb = 1;
    let rt = WasmRuntime::new(config).unwrap();
    let p = load(&rt, "memhog", json!({"limits": {"memory_mb": 64}}));
    assert_eq!(p.limits().memory_pages, 16);
    assert_eq!(call(&p, "probe", b"").unwrap(), 16u32.to_le_bytes());
}

#[test]
fn a_module_whose_initial_memory_exceeds_the_cap_is_refused_at_load() {
    let rt = runtime();
    let wasm = wat_fixture("echo");
    let text = std::fs::read_to_string(fixture_dir().join("echo.wat")).unwrap();
    let big =
        wat::parse_str(text.replace("(memory (export \"memory\") 1)", "(memory (export \"memory\") 40)")).unwrap();
    assert_ne!(wasm, big);
    let e = load_with(
        &rt,
        big,
        "echo",
        json!({"limits": {"memory_mb": 2}}),
        HostServices::default(),
    )
    .unwrap_err();
    assert_eq!(e.status(), KEEL_ERR_MEMORY_LIMIT, "{e}");
}

#[test]
fn an_infinite_loop_runs_out_of_fuel_and_the_next_call_gets_a_fresh_instance() {
    let rt = runtime();
    let p = load(
        &rt,
        "loop",
        json!({"limits": {"fuel_per_call": 1_000_000, "timeout_ms": 60_000}}),
    );
    let e = call(&p, "spin", b"").unwrap_err();
    assert_eq!(e.status(), KEEL_ERR_CPU_BUDGET, "{e}");
    assert!(e.message().contains("1000000 fuel"), "{e}");
    assert_eq!(call(&p, "ok", b"").unwrap(), b"ok");
    // Fuel is refilled for every call: many calls each well below the budget all succeed.
    for _ in 0..100 {
        assert_eq!(call(&p, "ok", b"").unwrap(), b"ok");
    }
}

#[test]
fn an_infinite_loop_is_interrupted_at_its_deadline() {
    let rt = runtime();
    // Fuel enough for many minutes: the wall-clock deadline must be what stops it.
    let p = load(
        &rt,
        "loop",
        json!({"limits": {"fuel_per_call": 1_000_000_000_000u64, "timeout_ms": 50}}),
    );
    let e = call(&p, "spin", b"").unwrap_err();
    assert_eq!(e.status(), KEEL_ERR_DEADLINE, "{e}");
    assert!(e.message().contains("50 ms"), "{e}");
    assert_eq!(call(&p, "ok", b"").unwrap(), b"ok");
    // Again, on the replacement instance.
    assert_eq!(status(call(&p, "spin", b"")), KEEL_ERR_DEADLINE);
    assert_eq!(call(&p, "ok", b"").unwrap(), b"ok");
}

#[test]
fn deadlines_hold_for_concurrent_pooled_calls() {
    let rt = runtime();
    let p = load(
        &rt,
        "loop",
        json!({"instances": "pooled", "limits": {"fuel_per_call": 1_000_000_000_000u64, "timeout_ms": 30}}),
    );
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..3 {
                    assert_eq!(status(call(&p, "spin", b"")), KEEL_ERR_DEADLINE);
                    assert_eq!(call(&p, "ok", b"").unwrap(), b"ok");
                }
            });
        }
    });
}

#[test]
fn without_metering_the_deadline_still_stops_a_loop() {
    let config = WasmConfig {
        metering: false,
        ..WasmConfig::default()
    };
    let rt = WasmRuntime::new(config).unwrap();
    let p = load(&rt, "loop", json!({"limits": {"timeout_ms": 20}}));
    assert_eq!(status(call(&p, "spin", b"")), KEEL_ERR_DEADLINE);
    assert_eq!(call(&p, "ok", b"").unwrap(), b"ok");
}

#[test]
fn each_kind_of_trap_is_reported_with_its_message() {
    let rt = runtime();
    let p = load(&rt, "trap", json!({}));
    for (f, needle) in [
        ("unreachable", "unreachable"),
        ("div0", "divi"),
        ("oob", "out of bounds"),
        ("stack_overflow", "stack"),
    ] {
        let e = call(&p, f, b"").unwrap_err();
        assert_eq!(e.status(), KEEL_ERR_WASM_TRAP, "{f}: {e}");
        assert!(e.message().to_lowercase().contains(needle), "{f}: {e}");
        assert_eq!(call(&p, "ok", b"").unwrap(), b"un", "after {f}");
    }
}

#[test]
fn broken_instances_are_dropped_not_leaked() {
    let rt = runtime();
    let p = load(&rt, "trap", json!({"instances": "pooled"}));
    // How many instances serve this thread's calls depends on which pool slot the thread
    // starts at (the instance made at load sits in the first one): count them after a call.
    assert!(call(&p, "ok", b"").is_ok());
    let serving = rt.live_instances();
    assert!((1..=2).contains(&serving), "{serving}");
    for _ in 0..20 {
        assert_eq!(status(call(&p, "unreachable", b"")), KEEL_ERR_WASM_TRAP);
    }
    assert!(call(&p, "ok", b"").is_ok());
    assert_eq!(rt.live_instances(), serving, "every trapped instance was dropped");
    drop(p);
    assert_eq!(rt.live_instances(), 0);
}

// ---- capabilities ----------------------------------------------------------------------

#[test]
fn an_ungranted_import_is_refused_at_load_by_name() {
    let rt = runtime();
    let e = load_with(
        &rt,
        wat_fixture("ungranted"),
        "ungranted",
        json!({"capabilities": ["log", "kv:read"]}),
        HostServices::default(),
    )
    .unwrap_err();
    assert_eq!(e.status(), KEEL_ERR_IMPORT_NOT_GRANTED, "{e}");
    assert!(
        e.message().contains("keel.kv_put") && e.message().contains("kv:write"),
        "{e}"
    );
    // Granted, it loads.
    load_with(
        &rt,
        wat_fixture("ungranted"),
        "ungranted",
        json!({"capabilities": ["kv:write"]}),
        HostServices::default(),
    )
    .unwrap();
}

#[test]
fn import_refusal_happens_before_any_guest_code_runs() {
    // _initialize would log, but the module also imports kv_delete, which is not granted.
    let wat = r#"(module
      (import "keel" "log" (func $log (param i32 i32 i32)))
      (import "keel" "kv_delete" (func $del (param i32 i32) (result i32)))
      (memory (export "memory") 1)
      (data (i32.const 16) "ran")
      (func (export "_initialize") (call $log (i32.const 2) (i32.const 16) (i32.const 3)))
      (func (export "keel_abi_version") (result i32) (i32.const 1))
      (func (export "keel_functions") (result i64) (i64.const 0))
      (func (export "keel_alloc") (param i32) (result i32) (i32.const 1024))
      (func (export "keel_call") (param i32 i32 i32) (result i64)
        (drop (call $del (i32.const 0) (i32.const 0))) (i64.const 0)))"#;
    let rt = runtime();
    let (services, lines) = recording_services();
    let e = load_with(
        &rt,
        wat::parse_str(wat).unwrap(),
        "sneaky",
        json!({"capabilities": ["log"]}),
        services.clone(),
    )
    .unwrap_err();
    assert_eq!(e.status(), KEEL_ERR_IMPORT_NOT_GRANTED, "{e}");
    assert!(e.message().contains("keel.kv_delete"), "{e}");
    assert!(lines.lock().is_empty(), "guest code ran: {:?}", lines.lock());
    // With both granted, _initialize runs and logs.
    load_with(
        &rt,
        wat::parse_str(wat).unwrap(),
        "sneaky",
        json!({"capabilities": ["log", "kv:write"]}),
        services,
    )
    .unwrap();
    assert_eq!(
        lines.lock().as_slice(),
        [("sneaky".to_string(), LogLevel::Info, "ran".to_string())]
    );
}

#[test]
fn imports_from_other_modules_are_refused_by_name() {
    let wat = r#"(module (import "env" "abort" (func)) (memory (export "memory") 1))"#;
    let rt = runtime();
    let e = load_with(
        &rt,
        wat::parse_str(wat).unwrap(),
        "env",
        json!({}),
        HostServices::default(),
    )
    .unwrap_err();
    assert_eq!(e.status(), KEEL_ERR_IMPORT_UNDEFINED);
    assert!(e.message().contains("env.abort"), "{e}");
}

#[test]
fn host_functions_work_when_granted_and_kv_is_namespaced_by_plugin() {
    let rt = runtime();
    let (services, lines) = recording_services();
    let caps = json!({"capabilities": ["log", "clock", "random", "kv:read", "kv:write"]});
    let p = load_with(&rt, wat_fixture("kv"), "kv", caps.clone(), services.clone()).unwrap();
    let other = load_with(&rt, wat_fixture("kv"), "kv-other", caps, services.clone()).unwrap();

    let mut put = vec![3u8];
    put.extend(b"key");
    put.extend(b"value");
    assert_eq!(call(&p, "put", &put).unwrap(), b"");
    assert_eq!(call(&p, "get", b"key").unwrap(), b"value");
    assert_eq!(
        services
            .kv()
            .get(keel::runtime::KvTarget::kv("kv"), b"key")
            .unwrap()
            .as_deref(),
        Some(&b"value"[..])
    );
    // Another plugin's namespace does not see it.
    assert_eq!(status(call(&other, "get", b"key")), KEEL_ERR_CALL_FAILED);
    assert_eq!(call(&p, "del", b"key").unwrap(), [0]);
    assert_eq!(call(&p, "del", b"key").unwrap(), [1]);
    assert_eq!(status(call(&p, "get", b"key")), KEEL_ERR_CALL_FAILED);

    call(&p, "log", b"hello from wasm").unwrap();
    assert!(lines
        .lock()
        .contains(&("kv".to_string(), LogLevel::Info, "hello from wasm".to_string())));

    let now = u64le(&call(&p, "now", b"").unwrap());
    let sys = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    assert!(now > 1_600_000_000_000_000_000 && now <= sys, "{now} vs {sys}");

    let (a, b) = (call(&p, "rand", b"").unwrap(), call(&p, "rand", b"").unwrap());
    assert_eq!(a.len(), 32);
    assert_ne!(a, b);
}

#[test]
fn a_host_call_with_a_pointer_outside_memory_is_an_abi_violation() {
    let rt = runtime();
    let p = load(
        &rt,
        "kv",
        json!({"capabilities": ["log", "clock", "random", "kv:read", "kv:write"]}),
    );
    let e = call(&p, "bad_ptr", b"v").unwrap_err();
    assert_eq!(e.status(), KEEL_ERR_PLUGIN_ABI_VIOLATION, "{e}");
    assert!(e.message().contains("kv_put key"), "{e}");
    assert_eq!(call(&p, "del", b"nothing").unwrap(), [1]);
}

// ---- module checks at load -------------------------------------------------------------

fn load_wat(rt: &WasmRuntime, wat: &str) -> keel::Result<WasmPlugin> {
    load_with(
        rt,
        wat::parse_str(wat).unwrap(),
        "bad",
        json!({}),
        HostServices::default(),
    )
}

const MINIMAL_EXPORTS: &str = r#"
      (memory (export "memory") 1)
      (func (export "keel_functions") (result i64) (i64.const 0))
      (func (export "keel_alloc") (param i32) (result i32) (i32.const 1024))
      (func (export "keel_call") (param i32 i32 i32) (result i64) (i64.const 0))"#;

#[test]
fn modules_that_break_the_abi_are_refused_with_their_cause() {
    let rt = runtime();
    let ok = format!("(module {MINIMAL_EXPORTS} (func (export \"keel_abi_version\") (result i32) (i32.const 1)))");
    assert!(load_wat(&rt, &ok).unwrap().functions().is_empty());

    let v2 = format!("(module {MINIMAL_EXPORTS} (func (export \"keel_abi_version\") (result i32) (i32.const 2)))");
    assert_eq!(load_wat(&rt, &v2).unwrap_err().status(), KEEL_ERR_ABI_MISMATCH);

    let missing = format!("(module {MINIMAL_EXPORTS})");
    let e = load_wat(&rt, &missing).unwrap_err();
    assert_eq!(e.status(), KEEL_ERR_WASM_INSTANTIATE);
    assert!(e.message().contains("keel_abi_version"), "{e}");

    let wrong = format!("(module {MINIMAL_EXPORTS} (func (export \"keel_abi_version\") (result i64) (i64.const 1)))");
    let e = load_wat(&rt, &wrong).unwrap_err();
    assert_eq!(e.status(), KEEL_ERR_WASM_INSTANTIATE);
    assert!(e.message().contains("keel_abi_version"), "{e}");

    let start = format!(
        "(module {MINIMAL_EXPORTS} (func $s) (start $s) (func (export \"keel_abi_version\") (result i32) (i32.const 1)))"
    );
    let e = load_wat(&rt, &start).unwrap_err();
    assert_eq!(e.status(), KEEL_ERR_WASM_INSTANTIATE);
    assert!(e.message().contains("start function"), "{e}");

    let dup = format!(
        "(module {} (data (i32.const 16) \"a,a\") (func (export \"keel_functions\") (result i64) (i64.const 0x300000010)) \
         (func (export \"keel_abi_version\") (result i32) (i32.const 1)))",
        MINIMAL_EXPORTS.replace("(func (export \"keel_functions\") (result i64) (i64.const 0))", "")
    );
    let e = load_wat(&rt, &dup).unwrap_err();
    assert_eq!(e.status(), KEEL_ERR_PLUGIN_ABI_VIOLATION, "{e}");

    let init_fails = format!(
        "(module {MINIMAL_EXPORTS} (data (i32.const 16) \"no\") \
         (func (export \"keel_abi_version\") (result i32) (i32.const 1)) \
         (func (export \"keel_init\") (param i32 i32) (result i64) (i64.const 0x8000000200000010)))"
    );
    let e = load_wat(&rt, &init_fails).unwrap_err();
    assert_eq!(e.status(), KEEL_ERR_INIT_FAILED);
    assert!(e.message().ends_with(": no"), "{e}");
}

#[test]
fn bytes_that_are_not_a_wasm_binary_do_not_compile() {
    let rt = runtime();
    for bytes in [
        b"not wasm at all".to_vec(),
        b"(module)".to_vec(),
        b"\0asm\x01\0\0\0\x05garbage".to_vec(),
    ] {
        let e = load_with(&rt, bytes, "junk", json!({}), HostServices::default()).unwrap_err();
        assert_eq!(e.status(), KEEL_ERR_WASM_COMPILE, "{e}");
    }
}

// ---- concurrency and state -------------------------------------------------------------

#[test]
fn pooled_plugins_serve_concurrent_calls_from_many_threads() {
    let rt = runtime();
    let p = load(&rt, "compute", json!({"instances": "pooled"}));
    assert!(p.is_pooled());
    let f = index(&p, "checksum");
    std::thread::scope(|s| {
        for t in 0..8u32 {
            let p = &p;
            s.spawn(move || {
                let mut out = Vec::new();
                for i in 0..300u32 {
                    let input: Vec<u8> = (0..(i % 97 + t)).map(|k| (k ^ t ^ i) as u8).collect();
                    out.clear();
                    p.call(f, &input, &mut out).unwrap();
                    assert_eq!(u64le(&out), fnv1a(&input));
                }
            });
        }
    });
    assert!(p.kept_instances() >= 1 && p.kept_instances() <= rt.config().pool_size);
}

#[test]
fn serial_plugins_serialise_concurrent_calls() {
    let rt = runtime();
    let p = load(&rt, "counter", json!({"instances": "serial"}));
    assert!(!p.is_pooled());
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                for _ in 0..250 {
                    call(&p, "incr", b"").unwrap();
                }
            });
        }
    });
    assert_eq!(u64le(&call(&p, "get", b"").unwrap()), 2000);
}

#[test]
fn state_is_saved_and_restored() {
    let rt = runtime();
    let p = load(&rt, "counter", json!({}));
    for _ in 0..5 {
        call(&p, "incr", b"").unwrap();
    }
    let state = p.save_state().unwrap().expect("counter has save_state");
    assert_eq!(u64le(&state), 5);

    // A new generation handed the state (hot reload) continues from it.
    let m = manifest("counter", json!({}));
    let mut ctx = context(&m, HostServices::default());
    ctx.restored_state = Some(&state);
    let next = rt.load(&artifact(wat_fixture("counter")), &ctx).unwrap();
    assert_eq!(u64le(&call(&next, "incr", b"").unwrap()), 6);

    next.restore_state(&100u64.to_le_bytes()).unwrap();
    assert_eq!(u64le(&call(&next, "get", b"").unwrap()), 100);
    let e = next.restore_state(b"bad").unwrap_err();
    assert_eq!(e.status(), KEEL_ERR_STATE_RESTORE);
    assert!(e.message().contains("state must be 8 bytes"), "{e}");

    // No hooks: no state, and restoring is unsupported.
    let echo = load(&rt, "echo", json!({}));
    assert_eq!(echo.save_state().unwrap(), None);
    assert_eq!(echo.restore_state(b"x").unwrap_err().status(), KEEL_ERR_UNSUPPORTED);
}

#[test]
fn pooled_restore_reaches_every_new_instance() {
    let rt = runtime();
    let p = load(&rt, "counter", json!({"instances": "pooled"}));
    p.restore_state(&41u64.to_le_bytes()).unwrap();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                let v = u64le(&call(&p, "get", b"").unwrap());
                assert!(v >= 41, "{v}");
            });
        }
    });
}

// ---- compiled-module cache -------------------------------------------------------------

fn cached_runtime(dir: &std::path::Path) -> WasmRuntime {
    let cache = CacheConfig::with_key_file(dir.join("modules"), &dir.join("cache.key")).unwrap();
    WasmRuntime::new(WasmConfig {
        cache: Some(cache),
        ..WasmConfig::default()
    })
    .unwrap()
}

#[test]
fn the_compiled_module_cache_is_hit_on_the_second_load() {
    let d = tempfile::tempdir().unwrap();
    let rt = cached_runtime(d.path());
    let a = load(&rt, "compute", json!({}));
    assert_eq!((rt.cache_stats().compiles, rt.cache_stats().hits), (1, 0));
    let b = load(&rt, "compute", json!({}));
    assert_eq!((rt.cache_stats().compiles, rt.cache_stats().hits), (1, 1));
    let data = b"cached code computes the same";
    assert_eq!(call(&a, "checksum", data).unwrap(), call(&b, "checksum", data).unwrap());
    // Another runtime (e.g. after a restart) with the same key file hits too.
    let rt2 = cached_runtime(d.path());
    let c = load(&rt2, "compute", json!({}));
    assert_eq!(rt2.cache_stats().hits, 1);
    assert_eq!(u64le(&call(&c, "checksum", data).unwrap()), fnv1a(data));
    // A different memory cap compiles differently: its own entry.
    load(&rt2, "compute", json!({"limits": {"memory_mb": 3}}));
    assert_eq!(rt2.cache_stats().compiles, 1);
}

fn entries(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "keelwasm"))
        .collect()
}

#[test]
fn a_corrupted_cache_entry_is_discarded_and_recompiled_never_loaded() {
    let d = tempfile::tempdir().unwrap();
    let rt = cached_runtime(d.path());
    load(&rt, "compute", json!({}));
    let files = entries(&d.path().join("modules"));
    assert_eq!(files.len(), 1);
    let mut bytes = std::fs::read(&files[0]).unwrap();
    // Corrupt the machine code: a byte in the middle of the serialized module.
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&files[0], &bytes).unwrap();

    let p = load(&rt, "compute", json!({}));
    let s = rt.cache_stats();
    assert_eq!((s.compiles, s.hits, s.rejected), (2, 0, 1));
    assert_eq!(u64le(&call(&p, "checksum", b"abc").unwrap()), fnv1a(b"abc"));
    // The entry was rewritten and authenticates again.
    load(&rt, "compute", json!({}));
    assert_eq!(rt.cache_stats().hits, 1);
}

#[test]
fn cache_entries_written_under_another_key_are_rejected() {
    let d = tempfile::tempdir().unwrap();
    let rt = cached_runtime(d.path());
    load(&rt, "compute", json!({}));
    let other_key = CacheConfig {
        dir: d.path().join("modules"),
        key: [9u8; 32],
    };
    let rt2 = WasmRuntime::new(WasmConfig {
        cache: Some(other_key),
        ..WasmConfig::default()
    })
    .unwrap();
    let p = load(&rt2, "compute", json!({}));
    assert_eq!(
        (
            rt2.cache_stats().rejected,
            rt2.cache_stats().hits,
            rt2.cache_stats().compiles
        ),
        (1, 0, 1)
    );
    assert_eq!(u64le(&call(&p, "sum", b"\x01\x02").unwrap()), 3);
}

// ---- a plugin written in C++ against keel_wasm.h --------------------------------------

#[test]
fn a_cpp_plugin_builds_against_keel_wasm_h_and_runs() {
    let d = tempfile::tempdir().unwrap();
    let wasm = crate::wasm_support::build_cpp_wasm("echo", d.path());
    let rt = runtime();
    let p = load_with(&rt, wasm, "echo-cpp", json!({}), HostServices::default()).unwrap();
    assert_eq!(p.functions(), ["echo", "upper", "fail"]);
    assert_eq!(call(&p, "echo", b"from C++").unwrap(), b"from C++");
    assert_eq!(call(&p, "upper", b"from C++").unwrap(), b"FROM C++");
    let e = call(&p, "fail", b"").unwrap_err();
    assert_eq!(e.status(), KEEL_ERR_CALL_FAILED);
    assert!(e.message().contains("asked to fail (C++)"), "{e}");
    assert_eq!(call(&p, "echo", b"still serving").unwrap(), b"still serving");
}

// ---- a plugin written in C against keel_wasm.h ----------------------------------------

#[test]
fn the_c_fixture_builds_with_clang_and_runs() {
    let d = tempfile::tempdir().unwrap();
    let wasm = build_c_wasm("compute", d.path());
    let rt = runtime();
    let (services, lines) = recording_services();
    let p = load_with(
        &rt,
        wasm.clone(),
        "compute-c",
        json!({"capabilities": ["log"], "instances": "pooled"}),
        services,
    )
    .unwrap();
    assert_eq!(p.functions(), ["sum", "fib", "checksum", "greet", "calls"]);
    let data: Vec<u8> = (0..5000u32).map(|i| (i * 13) as u8).collect();
    assert_eq!(
        u64le(&call(&p, "sum", &data).unwrap()),
        data.iter().map(|b| *b as u64).sum::<u64>()
    );
    assert_eq!(u64le(&call(&p, "checksum", &data).unwrap()), fnv1a(&data));
    assert_eq!(u64le(&call(&p, "fib", &50u32.to_le_bytes()).unwrap()), fib(50));
    let e = call(&p, "fib", b"").unwrap_err();
    assert_eq!(e.status(), KEEL_ERR_CALL_FAILED);
    assert!(e.message().contains("fib needs a 4-byte little-endian n"), "{e}");
    assert_eq!(call(&p, "greet", b"from C").unwrap(), b"hello");
    assert!(lines
        .lock()
        .contains(&("compute-c".to_string(), LogLevel::Info, "from C".to_string())));
    assert!(u64le(&call(&p, "calls", b"").unwrap()) >= 1);
    assert_eq!(p.health(), Health::Healthy);
    // Large inputs go through the header's allocator (keel_alloc/keel_free).
    let big = vec![7u8; 3 << 20];
    assert_eq!(u64le(&call(&p, "sum", &big).unwrap()), 7 * (3 << 20));

    // Without the log capability its import of keel.log is refused.
    let e = load_with(&rt, wasm, "compute-c", json!({}), HostServices::default()).unwrap_err();
    assert_eq!(e.status(), KEEL_ERR_IMPORT_NOT_GRANTED);
    assert!(e.message().contains("keel.log"), "{e}");
}

// ---- through the Host and the C ABI ----------------------------------------------------

/// Write `<name>.wasm` and its manifest (pinning the bytes' SHA-256) into `dir`.
fn write_plugin(dir: &std::path::Path, name: &str, wasm: &[u8], extra: serde_json::Value) -> std::path::PathBuf {
    std::fs::write(dir.join(format!("{name}.wasm")), wasm).unwrap();
    let mut m = json!({
        "manifest_version": 1, "name": name, "version": "1.0.0", "runtime": "wasm",
        "binary": {"wasm32": format!("{name}.wasm")},
        "sha256": keel::trust::digest::sha256_hex(wasm),
    });
    for (k, v) in extra.as_object().unwrap() {
        m[k] = v.clone();
    }
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, m.to_string()).unwrap();
    path
}

fn load_err(host: &keel::Host, path: &std::path::Path) -> keel::Error {
    match host.load(path) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e,
    }
}

fn unsigned_host() -> keel::Host {
    let host = keel::Host::new();
    host.trust().set_require_signature(false).unwrap();
    host
}

#[test]
fn the_host_loads_calls_and_reloads_wasm_plugins() {
    let d = tempfile::tempdir().unwrap();
    let host = unsigned_host();
    let cache = CacheConfig {
        dir: d.path().join("cache"),
        key: [3u8; 32],
    };
    host.set_wasm_config(WasmConfig {
        cache: Some(cache),
        ..WasmConfig::default()
    })
    .unwrap();
    let path = write_plugin(d.path(), "counter", &wat_fixture("counter"), json!({}));
    let slot = host.load(&path).unwrap();
    let incr = slot.resolve("incr").unwrap();
    let mut out = Vec::new();
    for i in 1..=3u64 {
        slot.call(incr, b"", &mut out).unwrap();
        assert_eq!(u64le(&out), i);
    }
    // Reload: the new generation starts from the old one's saved state (and hits the cache).
    assert_eq!(host.reload("counter").unwrap(), 2);
    slot.call(incr, b"", &mut out).unwrap();
    assert_eq!(u64le(&out), 4);
    let stats = host.wasm_runtime().unwrap().cache_stats();
    assert_eq!((stats.compiles, stats.hits), (1, 1));
    // The runtime is running: its configuration is fixed now.
    assert_eq!(
        host.set_wasm_config(WasmConfig::default()).unwrap_err().status(),
        KEEL_ERR_INVALID_ARGUMENT
    );
    host.unload("counter").unwrap();
    assert_eq!(host.wasm_runtime().unwrap().live_instances(), 0);
}

#[test]
fn the_host_refuses_a_wasm_binary_that_does_not_match_its_digest() {
    let d = tempfile::tempdir().unwrap();
    let host = unsigned_host();
    let path = write_plugin(d.path(), "echo", &wat_fixture("echo"), json!({}));
    std::fs::write(d.path().join("echo.wasm"), wat_fixture("compute")).unwrap();
    assert_eq!(load_err(&host, &path).status(), KEEL_ERR_DIGEST_MISMATCH);
    // The capability check at load names the import, through the host too.
    let path = write_plugin(
        d.path(),
        "ungranted",
        &wat_fixture("ungranted"),
        json!({"capabilities": ["log"]}),
    );
    let e = load_err(&host, &path);
    assert_eq!(e.status(), KEEL_ERR_IMPORT_NOT_GRANTED);
    assert!(e.message().contains("keel.kv_put"), "{e}");
}

#[test]
fn keel_call_through_the_c_abi_reaches_wasm_plugins() {
    use keel::ffi::host::*;
    let d = tempfile::tempdir().unwrap();
    let path = write_plugin(
        d.path(),
        "loop",
        &wat_fixture("loop"),
        json!({"instances": "pooled", "limits": {"timeout_ms": 20, "fuel_per_call": 1_000_000_000_000u64}}),
    );
    let cpath = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    let mut host = std::ptr::null_mut();
    assert_eq!(keel_host_new(&mut host), KEEL_OK);
    assert_eq!(keel::ffi::trust::keel_host_set_require_signature(host, false), KEEL_OK);
    let mut plugin = std::ptr::null_mut();
    assert_eq!(keel_host_load(host, cpath.as_ptr(), &mut plugin), KEEL_OK);
    let (mut spin, mut ok) = (0, 0);
    assert_eq!(keel_plugin_function(plugin, c"spin".as_ptr(), &mut spin), KEEL_OK);
    assert_eq!(keel_plugin_function(plugin, c"ok".as_ptr(), &mut ok), KEEL_OK);
    let mut buf = std::ptr::null_mut();
    assert_eq!(keel_buffer_new(&mut buf), KEEL_OK);
    assert_eq!(keel_call(plugin, spin, std::ptr::null(), 0, buf), KEEL_ERR_DEADLINE);
    assert_eq!(keel_call(plugin, ok, std::ptr::null(), 0, buf), KEEL_OK);
    let (mut data, mut len) = (std::ptr::null(), 0usize);
    assert_eq!(keel_buffer_data(buf, &mut data, &mut len), KEEL_OK);
    // SAFETY: keel_buffer_data returned KEEL_OK: data points to len bytes the buffer owns.
    assert_eq!(unsafe { std::slice::from_raw_parts(data, len) }, b"ok");
    assert_eq!(keel_buffer_free(buf), KEEL_OK);
    assert_eq!(keel_plugin_free(plugin), KEEL_OK);
    assert_eq!(keel_host_free(host), KEEL_OK);
}

#[test]
fn state_handed_to_a_module_without_restore_is_reported_not_fatal() {
    let rt = runtime();
    let (services, lines) = recording_services();
    let m = manifest("echo", json!({"instances": "pooled"}));
    let mut ctx = context(&m, services);
    ctx.restored_state = Some(b"old state");
    let p = rt.load(&artifact(wat_fixture("echo")), &ctx).unwrap();
    assert_eq!(call(&p, "echo", b"fine").unwrap(), b"fine");
    let l = lines.lock();
    assert_eq!(l.len(), 1, "{l:?}");
    assert_eq!(l[0].1, LogLevel::Warn);
    assert!(l[0].2.contains("9 bytes of saved state"), "{l:?}");
}
