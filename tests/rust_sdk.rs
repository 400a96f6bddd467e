//! The Rust plugin SDK (`keel::sdk`, feature `sdk`): its two examples
//! (tests/fixtures/rust/native_plugin, a cdylib speaking the vtable ABI, and
//! tests/fixtures/rust/wasm_plugin, a wasm32-unknown-unknown cdylib speaking the WASM ABI)
//! depend on this crate as a plugin author's crate does (a path dependency with
//! `default-features = false, features = ["sdk"]`: the SDK without the host, which is what
//! builds for wasm32). They are built by this test with cargo (offline; target dir
//! target/sdk-fixtures, reused across runs), loaded into a real host through manifests pinning
//! their SHA-256, called, reloaded with their state, and made to panic: the panic is a clean
//! error and the host keeps serving. Also: the SDK's mirror of the ABI structs matches the
//! host's, and host-API entries past `struct_size` are absent.

mod common;

use std::ffi::{c_char, c_void};
use std::mem::{offset_of, size_of};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use keel::capability::Capabilities;
use keel::error::keel_status::*;
use keel::registry::Slot;
use keel::runtime::Health;
use keel::services::call::{CallOptions, CancelToken};
use keel::Host;
use parking_lot::Mutex;
use serde_json::json;

/// Build an example crate (`native_plugin` or `wasm_plugin`) and return its artifact.
fn build_example(krate: &str, wasm: bool) -> PathBuf {
    let target_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("..").join("sdk-fixtures");
    let manifest = common::repo()
        .join("tests/fixtures/rust")
        .join(krate)
        .join("Cargo.toml");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "--offline", "--quiet", "--manifest-path"])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target_dir);
    if wasm {
        cmd.args(["--target", "wasm32-unknown-unknown"]);
    }
    // The outer build's flags (sanitizers, instrumentation, a forced target) are not the example's.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "RUSTC_WRAPPER",
    ] {
        cmd.env_remove(var);
    }
    let st = cmd.status().expect("running cargo");
    assert!(
        st.success(),
        "building the SDK example {krate} failed{}",
        if wasm {
            " (is the target installed? rustup target add wasm32-unknown-unknown)"
        } else {
            ""
        }
    );
    if wasm {
        target_dir.join("wasm32-unknown-unknown/debug/keel_rust_wasm_example.wasm")
    } else {
        target_dir.join("debug/libkeel_rust_native_example.so")
    }
}

/// Each example is built once per test process (cargo serialises builds on the target dir).
fn native_artifact() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| build_example("native_plugin", false))
}

fn wasm_artifact() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| build_example("wasm_plugin", true))
}

/// What cargo resolves for an example: every package and the features it is built with.
fn resolved(krate: &str) -> Vec<(String, Vec<String>)> {
    let manifest = common::repo()
        .join("tests/fixtures/rust")
        .join(krate)
        .join("Cargo.toml");
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--offline", "--format-version", "1", "--manifest-path"])
        .arg(&manifest)
        .output()
        .expect("running cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata for {krate}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut nodes: Vec<(String, Vec<String>)> = meta["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            let id = n["id"].as_str().unwrap();
            let pkg = meta["packages"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["id"] == id)
                .unwrap();
            let features = n["features"].as_array().unwrap().iter();
            (
                pkg["name"].as_str().unwrap().to_owned(),
                features.map(|f| f.as_str().unwrap().to_owned()).collect(),
            )
        })
        .collect();
    nodes.sort();
    nodes
}

/// A plugin takes the SDK alone: keel with `sdk` and not `host`, and nothing else. A host
/// dependency that is not optional (behind `host`) would show up here, and in every plugin's
/// build (wasm32 included, where the host's dependencies do not build).
#[test]
fn the_examples_depend_on_keel_with_the_sdk_alone() {
    for (krate, package) in [
        ("native_plugin", "keel_rust_native_example"),
        ("wasm_plugin", "keel_rust_wasm_example"),
    ] {
        assert_eq!(
            resolved(krate),
            [
                ("keel".to_owned(), vec!["sdk".to_owned()]),
                (package.to_owned(), vec![])
            ],
            "{krate}"
        );
    }
}

/// Copy `artifact` into a fresh directory and write its manifest (SHA-256 pinned).
fn install(tag: &str, artifact: &Path, name: &str, wasm: bool, extra: serde_json::Value) -> PathBuf {
    let dir = common::tempdir(tag);
    let file = if wasm {
        format!("{name}.wasm")
    } else {
        format!("lib{name}.so")
    };
    std::fs::copy(artifact, dir.join(&file)).unwrap();
    let mut m = json!({
        "manifest_version": 1, "name": name, "version": "1.0.0",
        "runtime": if wasm { "wasm" } else { "native" },
        "binary": if wasm { json!({"wasm32": file}) } else { json!({"linux": file}) },
        "sha256": common::sha256_file(&dir.join(&file)),
    });
    if let serde_json::Value::Object(extra) = extra {
        for (k, v) in extra {
            m[k] = v;
        }
    }
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, m.to_string()).unwrap();
    path
}

type Lines = Arc<Mutex<Vec<String>>>;

fn host() -> (Host, Lines) {
    let host = Host::new();
    host.trust().set_require_signature(false).unwrap();
    host.set_allowlist(Capabilities::all());
    let lines: Lines = Arc::default();
    let l = lines.clone();
    host.set_log_sink(Some(Arc::new(move |plugin: &str, _level, msg: &str| {
        l.lock().push(format!("{plugin}: {msg}"))
    })));
    (host, lines)
}

/// The server's host function text.upper: upper-cases its input; fails on "fail".
fn define_upper(host: &Host) {
    host.define_host_fn("text", "upper", "storage:read", |_, input, out| {
        if input == b"fail" {
            return Err("upper refuses 'fail'".into());
        }
        out.write(&input.to_ascii_uppercase());
        Ok(())
    })
    .unwrap();
}

fn call(slot: &Slot, f: &str, input: &[u8]) -> keel::Result<String> {
    let idx = slot.resolve(f)?;
    let mut out = Vec::new();
    slot.call(idx, input, &mut out)?;
    Ok(String::from_utf8(out).unwrap())
}

#[test]
fn native_example_calls_reloads_with_state_and_survives_a_panic() {
    let (host, lines) = host();
    define_upper(&host);
    let m = install(
        "sdk-native",
        native_artifact(),
        "rust_native",
        false,
        json!({"capabilities": ["log", "kv:read", "kv:write", "storage:read", "storage:write", "metrics:write"]}),
    );
    let slot = host.load(&m).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        lines.lock().iter().any(|l| l == "rust_native: rust example up"),
        "{:?}",
        lines.lock()
    );
    assert_eq!(call(&slot, "echo", b"hello").unwrap(), "hello");
    assert_eq!(call(&slot, "echo", b"").unwrap(), "");
    for n in 1..=3 {
        assert_eq!(call(&slot, "count", b"").unwrap(), n.to_string());
    }
    // An Err is the call's error message.
    let e = call(&slot, "fail", b"abc").unwrap_err();
    assert_eq!(e.status(), KEEL_ERR_CALL_FAILED);
    assert!(e.message().contains("asked to fail with 3 bytes"), "{e}");
    // A panic never unwinds into the host: it is an error with the panic's message.
    let e = call(&slot, "boom", b"x").unwrap_err();
    assert_eq!(e.status(), KEEL_ERR_CALL_FAILED);
    assert!(e.message().contains("plugin panicked: boom: x"), "{e}");
    assert_eq!(call(&slot, "echo", b"still serving").unwrap(), "still serving");
    // Host API: key-value store and a host function the server defined.
    assert_eq!(call(&slot, "kv", b"colour").unwrap(), "<absent>");
    assert_eq!(call(&slot, "kv", b"colour=green").unwrap(), "");
    assert_eq!(call(&slot, "kv", b"colour").unwrap(), "green");
    assert_eq!(call(&slot, "upper", b"keel").unwrap(), "KEEL");
    let e = call(&slot, "upper", b"fail").unwrap_err();
    assert!(e.message().contains("upper refuses 'fail'"), "{e}");
    // A scan decodes the host's entry encoding.
    assert_eq!(call(&slot, "kv", b"colour2=blue").unwrap(), "");
    assert_eq!(call(&slot, "kv", b"shape=round").unwrap(), "");
    assert_eq!(call(&slot, "scan", b"col").unwrap(), "colour=green;colour2=blue;");
    // A storage sink failure carries the sink's message (sink_error): the default map has no tables.
    let e = call(&slot, "table", b"o1").unwrap_err();
    assert!(
        e.message().contains("storage_put failed (-3)") && e.message().contains("no table 'orders'"),
        "{e}"
    );
    // Plugin metrics through the table reach the host's exposition.
    assert_eq!(call(&slot, "metric", b"2").unwrap(), "");
    assert_eq!(call(&slot, "metric", b"3").unwrap(), "");
    let text = host.metrics_text();
    let line = text
        .lines()
        .find(|l| l.starts_with("keel_custom_sdk_calls_total"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.contains("plugin=\"rust_native\"") && line.ends_with(" 5.0"),
        "{line}"
    );
    // cancelled(): the server's cancel token reaches the plugin, which stops.
    assert_eq!(call(&slot, "poll", b"").unwrap(), "done");
    let token = CancelToken::new();
    token.cancel();
    let opts = CallOptions {
        cancel: Some(&token),
        ..CallOptions::default()
    };
    let mut out = Vec::new();
    let e = slot
        .call_with(slot.resolve("poll").unwrap(), b"", &mut out, &opts)
        .unwrap_err();
    assert_eq!(e.status(), KEEL_ERR_CANCELLED, "{e}");
    // Reload: the new generation takes the state over (count continues at 4).
    host.reload("rust_native").unwrap();
    assert_eq!(call(&slot, "count", b"").unwrap(), "4");
    assert_eq!(call(&slot, "kv", b"colour").unwrap(), "green");
    // The health hook is exported (HAS_HEALTH) and answers through the instance.
    assert_eq!(slot.current().unwrap().instance.health(), Health::Healthy);
    host.unload("rust_native").unwrap();
}

#[test]
fn native_example_without_capabilities_gets_absent_entries_and_init_errors_are_reported() {
    let (host, _lines) = host();
    // No kv capability: the SDK reports the entry absent instead of calling NULL.
    let m = install("sdk-native-nocap", native_artifact(), "rust_native", false, json!({}));
    let slot = host.load(&m).unwrap_or_else(|e| panic!("{e}"));
    let e = call(&slot, "kv", b"k").unwrap_err();
    assert!(e.message().contains("host API `kv_get` is absent"), "{e}");
    let e = call(&slot, "upper", b"k").unwrap_err();
    assert!(e.message().contains("text.upper is not available"), "{e}");
    host.unload("rust_native").unwrap();
    // init's Err is the load error.
    let m = install(
        "sdk-native-init",
        native_artifact(),
        "rust_native",
        false,
        json!({"config": {"fail_init": true}}),
    );
    let e = host.load(&m).map(|_| ()).unwrap_err();
    assert_eq!(e.status(), KEEL_ERR_INIT_FAILED);
    assert!(e.message().contains("init refused: fail_init is set"), "{e}");
}

#[test]
fn wasm_example_calls_reloads_with_state_and_survives_a_panic() {
    let (host, lines) = host();
    define_upper(&host);
    let m = install(
        "sdk-wasm",
        wasm_artifact(),
        "rust_wasm",
        true,
        json!({"capabilities": ["log", "kv:read", "kv:write", "storage:read"]}),
    );
    let slot = host.load(&m).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        lines.lock().iter().any(|l| l == "rust_wasm: rust wasm example up"),
        "{:?}",
        lines.lock()
    );
    assert_eq!(call(&slot, "echo", b"hello wasm").unwrap(), "hello wasm");
    assert_eq!(call(&slot, "add", b"5").unwrap(), "5");
    assert_eq!(call(&slot, "add", b"7").unwrap(), "12");
    let e = call(&slot, "fail", b"ab").unwrap_err();
    assert_eq!(e.status(), KEEL_ERR_CALL_FAILED);
    assert!(e.message().contains("asked to fail with 2 bytes"), "{e}");
    let e = call(&slot, "add", b"x").unwrap_err();
    assert!(e.message().contains("add: not a number"), "{e}");
    // A failed call that returned an error keeps the instance: the total is still 12.
    assert_eq!(call(&slot, "add", b"0").unwrap(), "12");
    assert_eq!(call(&slot, "kv", b"k=v1").unwrap(), "");
    assert_eq!(call(&slot, "kv", b"k").unwrap(), "v1");
    // The server's host function, imported with keel_wasm_host_fn!: output longer than the
    // SDK's first buffer (the host runs it again with a large enough one), and its error.
    assert_eq!(call(&slot, "upper", b"keel").unwrap(), "KEEL");
    let long = "x".repeat(5000);
    assert_eq!(call(&slot, "upper", long.as_bytes()).unwrap(), long.to_uppercase());
    let e = call(&slot, "upper", b"fail").unwrap_err();
    assert!(
        e.message().contains("host function failed: upper refuses 'fail'"),
        "{e}"
    );
    // Reload: the new generation takes the state over.
    host.reload("rust_wasm").unwrap();
    assert_eq!(call(&slot, "add", b"1").unwrap(), "13");
    // A panic traps (wasm32 aborts on panic); the host discards the instance and serves on.
    let e = call(&slot, "boom", b"").unwrap_err();
    assert_eq!(e.status(), KEEL_ERR_WASM_TRAP, "{e}");
    assert_eq!(call(&slot, "echo", b"still serving").unwrap(), "still serving");
    assert_eq!(
        call(&slot, "add", b"1").unwrap(),
        "1",
        "a fresh instance after the trap"
    );
    host.unload("rust_wasm").unwrap();
    // init's Err is the load error.
    let m = install(
        "sdk-wasm-init",
        wasm_artifact(),
        "rust_wasm",
        true,
        // The module imports what its code calls: kv_* and sink_error need a kv capability,
        // text.upper its capability (storage:read).
        json!({"capabilities": ["log", "kv:read", "kv:write", "storage:read"], "config": {"fail_init": true}}),
    );
    let e = host.load(&m).map(|_| ()).unwrap_err();
    assert_eq!(e.status(), KEEL_ERR_INIT_FAILED, "{e}");
    assert!(e.message().contains("init refused: fail_init is set"), "{e}");
}

#[test]
fn wasm_result_encoding_matches_the_header() {
    use keel::sdk::wasm::{decode, err, ok};
    assert_eq!(ok(0, 0), 0);
    assert_eq!(ok(0x10, 3), (3i64 << 32) | 0x10);
    assert_eq!(err(0x10, 3) as u64, (1u64 << 63) | (3u64 << 32) | 0x10);
    assert_eq!(decode(err(0xffff_fff0, 0x7fff_ffff)), (true, 0xffff_fff0, 0x7fff_ffff));
    assert_eq!(decode(ok(8, 9)), (false, 8, 9));
    // KEEL_WASM_OK masks the length to 31 bits: it never sets the error bit.
    assert_eq!(decode(ok(1, u32::MAX)), (false, 1, 0x7fff_ffff));
}

/// Every field of the SDK's mirrors sits where the host's mirror puts it.
#[test]
fn sdk_structs_match_the_host_layout() {
    use keel::runtime::native as host;
    use keel::sdk::native as sdk;
    macro_rules! same {
        ($a:ty, $b:ty; $($f:ident),+) => {
            assert_eq!(size_of::<$a>(), size_of::<$b>(), stringify!($a));
            $(assert_eq!(offset_of!($a, $f), offset_of!($b, $f), stringify!($f));)+
        };
    }
    same!(sdk::RawHostApi, host::RawHostApi; abi_version, struct_size, ctx, log, now_unix_nanos,
        random_bytes, kv_get, kv_put, kv_delete, cancelled, kv_scan, storage_get, storage_put,
        storage_delete, storage_scan, sink_error, metric_define, metric_add, metric_set,
        metric_observe, rpc_register, host_fn_lookup, host_fn_call);
    same!(sdk::RawVtable, host::RawVtable; abi_version, struct_size, flags, name, version,
        functions, function_count, init, call, shutdown, save_state, restore_state, health,
        restore_state_versioned);
    same!(sdk::RawOutput, host::RawOutput; ctx, write);
    assert_eq!(sdk::ABI_VERSION, host::ABI_VERSION);
    assert_eq!(sdk::FLAG_SERIAL, host::FLAG_SERIAL);
}

static LOGGED: Mutex<Vec<String>> = Mutex::new(Vec::new());

unsafe extern "C" fn test_log(_ctx: *mut c_void, _level: i32, msg: *const c_char, len: usize) {
    // SAFETY: Host::log passes a live slice of `len` bytes.
    let b = unsafe { std::slice::from_raw_parts(msg as *const u8, len) };
    LOGGED.lock().push(String::from_utf8_lossy(b).into_owned());
}

unsafe extern "C" fn test_cancelled(_ctx: *mut c_void) -> i32 {
    1
}

unsafe extern "C" fn test_lookup(
    _ctx: *mut c_void,
    _ns: *const c_char,
    _name: *const c_char,
) -> *const keel::sdk::native::RawHostFn {
    std::ptr::NonNull::dangling().as_ptr()
}

/// A table an older host would pass: entries past its `struct_size` are absent to the SDK,
/// even where the memory behind holds a function pointer.
#[test]
fn host_api_entries_past_struct_size_are_absent() {
    use keel::sdk::native::{Host as SdkHost, RawHostApi};
    use keel::sdk::LogLevel;
    // SAFETY: RawHostApi is plain data: integers, a pointer and Option<fn> (NULL = None).
    let mut api: RawHostApi = unsafe { std::mem::zeroed() };
    api.abi_version = 1;
    api.log = Some(test_log);
    api.cancelled = Some(test_cancelled);
    api.host_fn_lookup = Some(test_lookup);
    // The first version of the struct: up to kv_delete.
    api.struct_size = (offset_of!(RawHostApi, kv_delete) + size_of::<usize>()) as u32;
    // SAFETY: `api` outlives `h`.
    let h = unsafe { SdkHost::from_raw(&api) };
    assert!(h.log(LogLevel::Info, "old host"));
    assert!(!h.cancelled(), "cancelled lies past struct_size");
    assert!(
        h.host_fn("text", "upper").is_none(),
        "host_fn_lookup lies past struct_size"
    );
    assert!(h.kv_get(b"k").unwrap_err().message().contains("absent"));
    // The full table: the same entries are present.
    api.struct_size = size_of::<RawHostApi>() as u32;
    // SAFETY: `api` outlives `h`.
    let h = unsafe { SdkHost::from_raw(&api) };
    assert!(h.cancelled());
    assert!(h.host_fn("text", "upper").is_some());
    // No table at all: everything absent.
    // SAFETY: NULL is allowed.
    let none = unsafe { SdkHost::from_raw(std::ptr::null()) };
    assert!(!none.log(LogLevel::Info, "nobody"));
    assert_eq!(LOGGED.lock().as_slice(), ["old host"]);
}

// ---- the macro through `keel::` (a plugin depending on this crate with `features = ["sdk"]`) ----

mod via_keel {
    use keel::sdk::native::{Function, Host, Output, Plugin};
    use keel::sdk::{Error, Result};

    pub struct Direct;

    impl Plugin for Direct {
        const SERIAL: bool = true;

        fn init(config: &str, _host: Host) -> Result<Self> {
            if config == "panic" {
                panic!("init panicked on purpose");
            }
            Ok(Direct)
        }

        fn call(&self, f: Function, input: &[u8], out: &mut Output<'_>) -> Result<()> {
            out.write_str(f.name)?;
            out.write(b":")?;
            out.write(input)?;
            if f.name == "two" {
                return Err(Error::new("two fails"));
            }
            Ok(())
        }
    }

    // Exports `keel_plugin_entry` from this test binary, as a cdylib would.
    keel::keel_native_plugin!(type: Direct, name: "direct", version: "0.1.0", functions: ["one", "two"]);
}

unsafe extern "C" fn vec_write(ctx: *mut c_void, data: *const u8, len: usize) -> i32 {
    // SAFETY: ctx is the test's Vec<u8>; data holds len bytes.
    unsafe { (*(ctx as *mut Vec<u8>)).extend_from_slice(std::slice::from_raw_parts(data, len)) };
    0
}

#[test]
fn the_macro_through_keel_exports_a_vtable_whose_hooks_catch_panics() {
    use keel::sdk::native::{RawOutput, RawVtable};
    use std::ffi::CStr;
    // The symbol the macro exported, looked up by its C name as the host does.
    unsafe extern "C" {
        fn keel_plugin_entry() -> *const RawVtable;
    }
    // SAFETY: defined by keel_native_plugin! above with this signature.
    let vt = unsafe { keel_plugin_entry() };
    // SAFETY: the entry returns its static vtable, with static NUL-terminated strings.
    let vt = unsafe { &*vt };
    assert_eq!((vt.abi_version, vt.flags, vt.function_count), (1, 1, 2));
    assert_eq!(vt.struct_size as usize, size_of::<keel::sdk::native::RawVtable>());
    // SAFETY: as above.
    unsafe {
        assert_eq!(CStr::from_ptr(vt.name).to_str().unwrap(), "direct");
        assert_eq!(CStr::from_ptr(vt.version).to_str().unwrap(), "0.1.0");
        assert_eq!(CStr::from_ptr(*vt.functions.add(1)).to_str().unwrap(), "two");
    }
    assert!(vt.save_state.is_none() && vt.restore_state.is_none() && vt.health.is_none());
    let mut buf = Vec::<u8>::new();
    let out = RawOutput {
        ctx: &mut buf as *mut Vec<u8> as *mut c_void,
        write: Some(vec_write),
    };
    let mut inst = std::ptr::null_mut();
    // A panicking init: status 1, the message in `err`, nothing unwinds.
    // SAFETY: the hooks get what the host would pass: a config of its length, no table, live out-params.
    let rc = unsafe { (vt.init.unwrap())(c"panic".as_ptr(), 5, std::ptr::null(), &mut inst, &out) };
    assert_eq!(rc, 1);
    assert!(String::from_utf8_lossy(&buf).contains("plugin panicked: init panicked on purpose"));
    buf.clear();
    // SAFETY: as above.
    let rc = unsafe { (vt.init.unwrap())(c"{}".as_ptr(), 2, std::ptr::null(), &mut inst, &out) };
    assert_eq!(rc, 0);
    // SAFETY: the instance from init; input of its length; an output valid for the call.
    let rc = unsafe { (vt.call.unwrap())(inst, 0, b"x".as_ptr(), 1, &out) };
    assert_eq!((rc, buf.as_slice()), (0, &b"one:x"[..]));
    buf.clear();
    // SAFETY: as above.
    let rc = unsafe { (vt.call.unwrap())(inst, 1, b"y".as_ptr(), 1, &out) };
    assert_eq!((rc, buf.as_slice()), (1, &b"two:ytwo fails"[..]));
    buf.clear();
    // An index past the list is an error, not a read out of bounds.
    // SAFETY: as above.
    let rc = unsafe { (vt.call.unwrap())(inst, 7, std::ptr::null(), 0, &out) };
    assert_eq!(
        (rc, String::from_utf8_lossy(&buf).as_ref()),
        (1, "no function with index 7")
    );
    // SAFETY: the instance from init, released once.
    unsafe { (vt.shutdown.unwrap())(inst) };
}
