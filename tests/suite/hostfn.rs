//! Host functions defined by the embedder: a native and a WASM plugin read and write rows of a
//! table the test server owns through "db.get_row" / "db.put_row"; capabilities gate them
//! (NULL for native, refused load for WASM); undefined imports are refused by name; panics
//! become errors; the call context reaches the function; the C ABI's ownership rule holds.

use std::collections::HashMap;
use std::ffi::{c_char, c_void, CString};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use keel::capability::Capabilities;
use keel::error::keel_status::*;
use keel::ffi::host::keel_host;
use keel::ffi::hostfn::*;
use keel::registry::Slot;
use keel::services::call::{with_options, CallOptions, CancelToken};
use keel::Host;
use parking_lot::Mutex;
use serde_json::json;

use crate::common;

type Table = Arc<Mutex<HashMap<Vec<u8>, Vec<u8>>>>;

/// A host allowing every capability, loading unsigned plugins, with db.get_row/db.put_row
/// over `table`.
fn db_host() -> (Host, Table) {
    let host = common::host();
    host.trust().set_require_signature(false).unwrap();
    host.set_allowlist(Capabilities::all());
    let table: Table = Arc::default();
    define_db(&host, &table);
    (host, table)
}

fn define_db(host: &Host, table: &Table) {
    let t = table.clone();
    host.define_host_fn("db", "get_row", "storage:read", move |_, key, out| {
        match t.lock().get(key) {
            Some(row) => {
                out.write(row);
                Ok(())
            }
            None => Err(format!("no row '{}'", String::from_utf8_lossy(key))),
        }
    })
    .unwrap();
    let t = table.clone();
    host.define_host_fn("db", "put_row", "storage:write", move |_, input, _| {
        let (&klen, rest) = input.split_first().ok_or("empty put")?;
        let (k, v) = rest.split_at_checked(klen as usize).ok_or("short key")?;
        t.lock().insert(k.to_vec(), v.to_vec());
        Ok(())
    })
    .unwrap();
}

fn put_input(key: &str, value: &str) -> Vec<u8> {
    let mut v = vec![key.len() as u8];
    v.extend_from_slice(key.as_bytes());
    v.extend_from_slice(value.as_bytes());
    v
}

fn native_plugin(tag: &str, caps: &[&str]) -> (PathBuf, PathBuf) {
    let dir = common::tempdir(tag);
    let so = common::build_native("hostfn", &[], &dir, "libhostfn.so");
    let m = common::write_manifest(&dir, "hostfn", "1.0.0", &so, json!({ "capabilities": caps }));
    (dir, m)
}

fn wasm_plugin(dir: &Path, name: &str, caps: &[&str]) -> PathBuf {
    let wasm = wat::parse_file(common::repo().join("tests/fixtures/wasm/hostfn.wat")).unwrap();
    std::fs::write(dir.join(format!("{name}.wasm")), &wasm).unwrap();
    let m = json!({
        "manifest_version": 1, "name": name, "version": "1.0.0", "runtime": "wasm",
        "binary": {"wasm32": format!("{name}.wasm")},
        "sha256": keel::trust::digest::sha256_hex(&wasm),
        "capabilities": caps,
    });
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, m.to_string()).unwrap();
    path
}

fn load_err(host: &Host, path: &Path) -> keel::Error {
    match host.load(path) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e,
    }
}

fn call(slot: &Slot, f: &str, input: &[u8]) -> keel::error::Result<Vec<u8>> {
    let idx = slot.resolve(f)?;
    let mut out = Vec::new();
    slot.call(idx, input, &mut out)?;
    Ok(out)
}

/// Put and get rows through the plugin; the rows land in (and come from) the server's table.
fn rows_round_trip(slot: &Slot, table: &Table) {
    assert_eq!(call(slot, "put", &put_input("k1", "hello")).unwrap(), b"");
    assert_eq!(table.lock().get(&b"k1"[..]).map(Vec::as_slice), Some(&b"hello"[..]));
    table.lock().insert(b"k2".to_vec(), b"from the server".to_vec());
    assert_eq!(call(slot, "get", b"k2").unwrap(), b"from the server");
    assert_eq!(call(slot, "get", b"k1").unwrap(), b"hello");
    // The function's failure is the plugin's call error, with the function's message.
    let e = call(slot, "get", b"nope").unwrap_err();
    assert_eq!(e.status(), KEEL_ERR_CALL_FAILED, "{e}");
    assert!(e.message().contains("no row 'nope'"), "{e}");
}

#[test]
fn a_native_plugin_reads_and_writes_server_rows_through_host_functions() {
    let (host, table) = db_host();
    let (_d, m) = native_plugin("hostfn-native", &["storage:read", "storage:write"]);
    let slot = host.load(&m).unwrap();
    assert_eq!(call(&slot, "bound", b"").unwrap(), [1, 1]);
    rows_round_trip(&slot, &table);
    table.lock().insert(b"r".to_vec(), b"ab".to_vec());
    assert_eq!(call(&slot, "get_twice", b"r").unwrap(), b"abab");
}

#[test]
fn a_native_plugin_without_the_capability_sees_null() {
    let (host, table) = db_host();
    let (_d, m) = native_plugin("hostfn-native-ro", &["storage:read"]);
    let slot = host.load(&m).unwrap();
    assert_eq!(
        call(&slot, "bound", b"").unwrap(),
        [1, 0],
        "put_row needs storage:write"
    );
    let e = call(&slot, "put", &put_input("k", "v")).unwrap_err();
    assert!(e.message().contains("host function unavailable"), "{e}");
    assert!(table.lock().is_empty());
    host.unload("hostfn").unwrap();
    // Neither capability: both NULL. Unknown functions are NULL too (see `bound` of a host
    // that defines nothing).
    let (_d, m) = native_plugin("hostfn-native-none", &[]);
    assert_eq!(call(&host.load(&m).unwrap(), "bound", b"").unwrap(), [0, 0]);
    host.unload("hostfn").unwrap();
    let bare = common::host();
    bare.trust().set_require_signature(false).unwrap();
    bare.set_allowlist(Capabilities::all());
    let (_d, m) = native_plugin("hostfn-native-undef", &["storage:read", "storage:write"]);
    assert_eq!(call(&bare.load(&m).unwrap(), "bound", b"").unwrap(), [0, 0]);
}

#[test]
fn a_wasm_plugin_reads_and_writes_server_rows_through_imported_host_functions() {
    let (host, table) = db_host();
    let dir = common::tempdir("hostfn-wasm");
    let slot = host
        .load(&wasm_plugin(&dir, "rows", &["storage:read", "storage:write"]))
        .unwrap();
    rows_round_trip(&slot, &table);
}

#[test]
fn a_wasm_plugin_without_the_capability_or_with_an_undefined_import_is_refused_by_name() {
    let (host, _table) = db_host();
    let dir = common::tempdir("hostfn-wasm-refused");
    let e = load_err(&host, &wasm_plugin(&dir, "ro", &["storage:read"]));
    assert_eq!(e.status(), KEEL_ERR_IMPORT_NOT_GRANTED, "{e}");
    assert!(
        e.message().contains("db.put_row") && e.message().contains("storage:write"),
        "{e}"
    );
    assert!(host.get("ro").is_err(), "nothing loaded");

    // A host that defines only get_row: the put_row import is undefined.
    host.remove_host_fn("db", "put_row").unwrap();
    let e = load_err(&host, &wasm_plugin(&dir, "undef", &["storage:read", "storage:write"]));
    assert_eq!(e.status(), KEEL_ERR_IMPORT_UNDEFINED, "{e}");
    assert_eq!(e.status() as u32, 603);
    assert!(
        e.message().contains("db.put_row") && e.message().contains("not defined"),
        "{e}"
    );
    assert_eq!(
        host.remove_host_fn("db", "put_row").unwrap_err().status(),
        KEEL_ERR_HOST_FN_NOT_FOUND
    );
}

#[test]
fn a_panicking_host_function_is_an_error_for_the_plugin_and_the_host_keeps_serving() {
    let (host, table) = db_host();
    host.define_host_fn("db", "get_row", "storage:read", |_, key, _| {
        if key == b"boom" {
            panic!("deliberate host function panic");
        }
        Ok(())
    })
    .unwrap();
    let (_d, m) = native_plugin("hostfn-panic", &["storage:read", "storage:write"]);
    let native = host.load(&m).unwrap();
    let dir = common::tempdir("hostfn-panic-wasm");
    let wasm = host
        .load(&wasm_plugin(&dir, "rows", &["storage:read", "storage:write"]))
        .unwrap();
    for slot in [&native, &wasm] {
        for _ in 0..3 {
            let e = call(slot, "get", b"boom").unwrap_err();
            assert_eq!(e.status(), KEEL_ERR_CALL_FAILED, "{e}");
            assert!(
                e.message()
                    .contains("db.get_row' panicked: deliberate host function panic"),
                "{e}"
            );
            // Still serving: the same plugin's next calls work.
            assert_eq!(call(slot, "get", b"fine").unwrap(), b"");
            assert_eq!(call(slot, "put", &put_input("a", "b")).unwrap(), b"");
        }
    }
    assert_eq!(table.lock().get(&b"a"[..]).map(Vec::as_slice), Some(&b"b"[..]));
}

#[test]
fn the_call_context_reaches_the_host_function() {
    let (host, _table) = db_host();
    host.define_host_fn("db", "get_row", "storage:read", |c, _, out| {
        let s = format!(
            "plugin={} tenant={} trace={} user={} cancelled={}",
            c.plugin(),
            c.tenant().unwrap_or("-"),
            c.traceparent().unwrap_or("-"),
            c.user_context() as usize,
            c.cancelled()
        );
        out.write(s.as_bytes());
        Ok(())
    })
    .unwrap();
    let (_d, m) = native_plugin("hostfn-ctx", &["storage:read", "storage:write"]);
    let native = host.load(&m).unwrap();
    let dir = common::tempdir("hostfn-ctx-wasm");
    let wasm = host
        .load(&wasm_plugin(&dir, "rows", &["storage:read", "storage:write"]))
        .unwrap();
    let token = CancelToken::new();
    let mut session = 7u64;
    let opts = CallOptions {
        tenant: Some("acme"),
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        user_context: &mut session as *mut u64 as *mut c_void,
        cancel: Some(&token),
        ..CallOptions::default()
    };
    for (slot, name) in [(&native, "hostfn"), (&wasm, "rows")] {
        let plain = String::from_utf8(call(slot, "get", b"").unwrap()).unwrap();
        assert_eq!(plain, format!("plugin={name} tenant=- trace=- user=0 cancelled=false"));
        let with = String::from_utf8(with_options(&opts, || call(slot, "get", b"")).unwrap()).unwrap();
        assert_eq!(
            with,
            format!(
                "plugin={name} tenant=acme trace=00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01 user={} cancelled=false",
                &mut session as *mut u64 as usize
            )
        );
    }
    token.cancel();
    let with = String::from_utf8(with_options(&opts, || call(&native, "get", b"")).unwrap()).unwrap();
    assert!(with.ends_with("cancelled=true"), "{with}");
}

#[test]
fn plugins_bind_at_load_later_definitions_reach_reloads() {
    let host = common::host();
    host.trust().set_require_signature(false).unwrap();
    host.set_allowlist(Capabilities::all());
    let (_d, m) = native_plugin("hostfn-bind", &["storage:read", "storage:write"]);
    let slot = host.load(&m).unwrap();
    assert_eq!(call(&slot, "bound", b"").unwrap(), [0, 0], "nothing defined at load");
    let table: Table = Arc::default();
    define_db(&host, &table);
    assert_eq!(call(&slot, "bound", b"").unwrap(), [0, 0], "bound at load: unchanged");
    host.reload("hostfn").unwrap();
    assert_eq!(call(&slot, "bound", b"").unwrap(), [1, 1], "a reload binds again");
    // Removed while bound: the loaded generation keeps calling what it bound to.
    table.lock().insert(b"x".to_vec(), b"y".to_vec());
    host.remove_host_fn("db", "get_row").unwrap();
    assert_eq!(call(&slot, "get", b"x").unwrap(), b"y");
    host.reload("hostfn").unwrap();
    assert_eq!(call(&slot, "bound", b"").unwrap(), [0, 1]);
}

// ---- the C ABI ---------------------------------------------------------------------------

static FREED: AtomicUsize = AtomicUsize::new(0);

unsafe extern "C" fn count_free(user_data: *mut c_void) {
    // SAFETY: user_data is the Box<u64> made by the test.
    drop(unsafe { Box::from_raw(user_data as *mut u64) });
    FREED.fetch_add(1, Ordering::SeqCst);
}

fn ctx_str(
    f: extern "C" fn(*const keel_call_context, *mut *const c_char, *mut usize) -> keel::keel_status,
    ctx: *const keel_call_context,
) -> String {
    let (mut p, mut n) = (std::ptr::null(), 0usize);
    assert_eq!(f(ctx, &mut p, &mut n), KEEL_OK);
    if p.is_null() {
        return "-".into();
    }
    // SAFETY: the accessor returned `n` bytes at `p`, valid during the callback.
    String::from_utf8_lossy(unsafe { std::slice::from_raw_parts(p as *const u8, n) }).into_owned()
}

/// A C host function: writes "<user_data's u64>:<plugin>:<tenant>:<user_context>:<input>".
unsafe extern "C" fn c_get_row(
    ctx: *const keel_call_context,
    input: *const u8,
    len: usize,
    out: *const keel_host_fn_output,
    user_data: *mut c_void,
) -> i32 {
    let mut uc = std::ptr::null_mut();
    assert_eq!(keel_call_context_user_context(ctx, &mut uc), KEEL_OK);
    let mut cancelled = true;
    assert_eq!(keel_call_context_cancelled(ctx, &mut cancelled), KEEL_OK);
    // SAFETY: per the callback contract.
    let input = unsafe { std::slice::from_raw_parts(input, len) };
    if input == b"fail" {
        let msg = b"c says no";
        // SAFETY: out is live for the call.
        unsafe { ((*out).write)((*out).ctx, msg.as_ptr(), msg.len()) };
        return 5;
    }
    let s = format!(
        "{}:{}:{}:{}:{}:{}",
        // SAFETY: user_data is the test's Box<u64>.
        unsafe { *(user_data as *const u64) },
        ctx_str(keel_call_context_plugin, ctx),
        ctx_str(keel_call_context_tenant, ctx),
        uc as usize,
        cancelled,
        String::from_utf8_lossy(input)
    );
    // SAFETY: out is live for the call.
    unsafe { ((*out).write)((*out).ctx, s.as_ptr(), s.len()) }
}

fn define_c(host: *const keel_host, ns: &str, tag: u64) -> keel::keel_status {
    let (ns, n, cap) = (
        CString::new(ns).unwrap(),
        CString::new("get_row").unwrap(),
        CString::new("storage:read").unwrap(),
    );
    keel_host_define_function(
        host,
        ns.as_ptr(),
        n.as_ptr(),
        cap.as_ptr(),
        Some(c_get_row),
        Box::into_raw(Box::new(tag)) as *mut c_void,
        Some(count_free),
    )
}

#[test]
fn the_c_abi_defines_calls_and_frees_user_data_exactly_once_when_unbound() {
    let mut raw: *mut keel_host = std::ptr::null_mut();
    assert_eq!(keel::ffi::host::keel_host_new(&mut raw), KEEL_OK);
    common::allow_unsigned(raw);
    // SAFETY: raw is a live host from keel_host_new, freed at the end of this test only.
    let host: &Host = unsafe { &*(raw as *const Host) };
    host.set_allowlist(Capabilities::all());
    let before = FREED.load(Ordering::SeqCst);

    // Refused definitions release user_data before returning.
    assert_eq!(define_c(raw, "keel", 1), KEEL_ERR_INVALID_ARGUMENT);
    assert_eq!(define_c(raw, "bad ns", 1), KEEL_ERR_INVALID_ARGUMENT);
    assert_eq!(define_c(std::ptr::null(), "db", 1), KEEL_ERR_NULL_POINTER);
    assert_eq!(FREED.load(Ordering::SeqCst), before + 3);

    assert_eq!(define_c(raw, "db", 41), KEEL_OK);
    let (_d, m) = native_plugin("hostfn-capi", &["storage:read"]);
    let slot = host.load(&m).unwrap();
    assert_eq!(call(&slot, "get", b"row").unwrap(), b"41:hostfn:-:0:false:row");
    let mut session = 0u8;
    let opts = CallOptions {
        tenant: Some("t9"),
        user_context: &mut session as *mut u8 as *mut c_void,
        ..CallOptions::default()
    };
    let got = String::from_utf8(with_options(&opts, || call(&slot, "get", b"r")).unwrap()).unwrap();
    assert_eq!(
        got,
        format!("41:hostfn:t9:{}:false:r", &mut session as *mut u8 as usize)
    );
    let e = call(&slot, "get", b"fail").unwrap_err();
    assert!(
        e.message().contains("returned 5") && e.message().contains("c says no"),
        "{e}"
    );

    // Replaced while a plugin is bound to it: not freed until that generation goes.
    assert_eq!(define_c(raw, "db", 42), KEEL_OK);
    assert_eq!(FREED.load(Ordering::SeqCst), before + 3);
    assert_eq!(call(&slot, "get", b"x").unwrap(), b"41:hostfn:-:0:false:x");
    host.reload("hostfn").unwrap();
    assert_eq!(FREED.load(Ordering::SeqCst), before + 4, "41 freed once unbound");
    assert_eq!(call(&slot, "get", b"x").unwrap(), b"42:hostfn:-:0:false:x");

    let (ns, n) = (CString::new("db").unwrap(), CString::new("get_row").unwrap());
    assert_eq!(keel_host_remove_function(raw, ns.as_ptr(), n.as_ptr()), KEEL_OK);
    assert_eq!(
        keel_host_remove_function(raw, ns.as_ptr(), n.as_ptr()),
        KEEL_ERR_HOST_FN_NOT_FOUND
    );
    assert_eq!(FREED.load(Ordering::SeqCst), before + 4, "42 still bound");
    host.unload("hostfn").unwrap();
    assert_eq!(FREED.load(Ordering::SeqCst), before + 5, "42 freed at unload");

    // Freeing the host releases what is still defined.
    assert_eq!(define_c(raw, "db", 43), KEEL_OK);
    assert_eq!(keel::ffi::host::keel_host_free(raw), KEEL_OK);
    assert_eq!(FREED.load(Ordering::SeqCst), before + 6);

    // Accessors refuse NULL.
    let mut p = std::ptr::null_mut();
    assert_eq!(
        keel_call_context_user_context(std::ptr::null(), &mut p),
        KEEL_ERR_NULL_POINTER
    );
}

/// The hostfn fields of keel_host_api, keel.h's keel_host_fn_output and keel_plugin.h's
/// keel_output against their Rust mirrors (the runtimes pass one for the other): C
/// `static_assert`s on the values the mirrors give, compiled by the system C compiler.
#[test]
fn hostfn_layouts_match_the_headers() {
    use keel::runtime::native::{HostOutput, RawHostApi, RawOutput};
    use std::mem::{offset_of, size_of};
    assert_eq!(size_of::<HostOutput>(), size_of::<RawOutput>());
    assert_eq!(offset_of!(HostOutput, write), offset_of!(RawOutput, write));
    assert_eq!(size_of::<keel_host_fn_output>(), size_of::<HostOutput>());
    assert_eq!(offset_of!(keel_host_fn_output, write), offset_of!(HostOutput, write));
    let checks = [
        (
            "offsetof(keel_host_api, host_fn_lookup)",
            offset_of!(RawHostApi, host_fn_lookup),
        ),
        (
            "offsetof(keel_host_api, host_fn_call)",
            offset_of!(RawHostApi, host_fn_call),
        ),
        ("sizeof(keel_host_api)", size_of::<RawHostApi>()),
        ("sizeof(keel_host_fn_output)", size_of::<HostOutput>()),
        ("offsetof(keel_host_fn_output, write)", offset_of!(HostOutput, write)),
        ("sizeof(keel_output)", size_of::<HostOutput>()),
        ("offsetof(keel_output, write)", offset_of!(HostOutput, write)),
    ];
    let compile = |off_by: usize| {
        let mut c = String::from(
            "#include <assert.h>\n#include <stddef.h>\n#include <keel/keel.h>\n#include <keel/keel_plugin.h>\n",
        );
        for (i, (expr, v)) in checks.iter().enumerate() {
            let v = if i == 0 { v + off_by } else { *v };
            c.push_str(&format!("static_assert({expr} == {v}, \"{expr} != {v}\");\n"));
        }
        let dir = common::tempdir("hostfn-layout");
        let src = dir.join("layout.c");
        std::fs::write(&src, c).unwrap();
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
        std::process::Command::new(cc)
            .args(["-std=c11", "-fsyntax-only", "-Wall", "-Werror", "-I"])
            .arg(common::repo().join("include"))
            .arg(&src)
            .output()
            .unwrap()
    };
    let ok = compile(0);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(!compile(8).status.success(), "the assertions are checked");
}

#[test]
fn a_refused_wasm_import_stops_the_load_before_any_guest_code_runs() {
    // keel_init calls db.get_row (defined, granted); the module also imports db.missing.
    // Refused at load: the host function never ran, so no guest code did.
    let (host, _table) = db_host();
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    host.define_host_fn("db", "get_row", "storage:read", move |_, _, _| {
        r.fetch_add(1, Ordering::SeqCst);
        Ok(())
    })
    .unwrap();
    let wat = |extra: &str| {
        format!(
            r#"(module
              (import "db" "get_row" (func $g (param i32 i32 i32 i32) (result i64)))
              {extra}
              (memory (export "memory") 1)
              (data (i32.const 16) "f")
              (func (export "keel_abi_version") (result i32) (i32.const 1))
              (func (export "keel_functions") (result i64) (i64.or (i64.shl (i64.const 1) (i64.const 32)) (i64.const 16)))
              (func (export "keel_alloc") (param i32) (result i32) (i32.const 8192))
              (func (export "keel_init") (param i32 i32) (result i64)
                (drop (call $g (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0))) (i64.const 0))
              (func (export "keel_call") (param i32 i32 i32) (result i64) (i64.const 0)))"#
        )
    };
    let dir = common::tempdir("hostfn-before-guest");
    let write = |name: &str, text: &str| {
        let wasm = wat::parse_str(text).unwrap();
        std::fs::write(dir.join(format!("{name}.wasm")), &wasm).unwrap();
        let m = json!({
            "manifest_version": 1, "name": name, "version": "1.0.0", "runtime": "wasm",
            "binary": {"wasm32": format!("{name}.wasm")},
            "sha256": keel::trust::digest::sha256_hex(&wasm),
            "capabilities": ["storage:read"],
        });
        let path = dir.join(format!("{name}.json"));
        std::fs::write(&path, m.to_string()).unwrap();
        path
    };
    let bad = write(
        "bad",
        &wat(r#"(import "db" "missing" (func (param i32 i32 i32 i32) (result i64)))"#),
    );
    let e = load_err(&host, &bad);
    assert_eq!(e.status(), KEEL_ERR_IMPORT_UNDEFINED, "{e}");
    assert!(e.message().contains("db.missing"), "{e}");
    let ungranted = write(
        "ungranted",
        &wat(r#"(import "db" "put_row" (func (param i32 i32 i32 i32) (result i64)))"#),
    );
    assert_eq!(load_err(&host, &ungranted).status(), KEEL_ERR_IMPORT_NOT_GRANTED);
    assert_eq!(ran.load(Ordering::SeqCst), 0, "guest code ran before the refusal");
    // The same module without the bad import loads, and its keel_init does call the function.
    host.load(&write("good", &wat(""))).unwrap();
    assert_eq!(ran.load(Ordering::SeqCst), 1);
}

#[test]
fn a_wasm_guest_gets_at_most_its_buffer_and_the_full_length() {
    let (host, _table) = db_host();
    let big: Vec<u8> = (0..6000u32).map(|i| i as u8).collect();
    let b = big.clone();
    host.define_host_fn("db", "get_row", "storage:read", move |_, _, out| {
        out.write(&b);
        Ok(())
    })
    .unwrap();
    let dir = common::tempdir("hostfn-wasm-cap");
    let slot = host
        .load(&wasm_plugin(&dir, "rows", &["storage:read", "storage:write"]))
        .unwrap();
    // The fixture copies min(full length, 4096): its buffer's worth of the 6000 bytes.
    assert_eq!(call(&slot, "get", b"k").unwrap(), &big[..4096]);
    // With a zero-sized buffer the result is the full length, nothing copied.
    let r = i64::from_le_bytes(call(&slot, "get_len", b"k").unwrap().try_into().unwrap());
    assert_eq!(r, 6000);
    // Input and output buffers overlapping: the function reads its whole input even while it
    // writes (one byte at a time, reversed) over it.
    host.define_host_fn("db", "get_row", "storage:read", |_, input, out| {
        for b in input.iter().rev() {
            out.write(&[*b]);
        }
        Ok(())
    })
    .unwrap();
    host.reload("rows").unwrap();
    assert_eq!(call(&slot, "get_in_place", b"abcdef").unwrap(), b"fedcba");
    // A failure: bit 63 set, the low bits the message's full length.
    host.define_host_fn("db", "get_row", "storage:read", |_, _, _| Err("nope!".into()))
        .unwrap();
    host.reload("rows").unwrap();
    let r = i64::from_le_bytes(call(&slot, "get_len", b"k").unwrap().try_into().unwrap());
    assert!(r < 0);
    assert_eq!(r & i64::MAX, 5);
}

#[test]
fn a_c_wasm_plugin_uses_the_header_macros_for_host_functions() {
    let (host, table) = db_host();
    let dir = common::tempdir("hostfn-c-wasm");
    let wasm = crate::wasm_support::build_c_wasm("hostfn", &dir);
    let m = json!({
        "manifest_version": 1, "name": "crows", "version": "1.0.0", "runtime": "wasm",
        "binary": {"wasm32": "hostfn.wasm"},
        "sha256": keel::trust::digest::sha256_hex(&wasm),
        "capabilities": ["storage:read", "storage:write"],
    });
    let path = dir.join("crows.json");
    std::fs::write(&path, m.to_string()).unwrap();
    let slot = host.load(&path).unwrap();
    rows_round_trip(&slot, &table);
    // A row larger than the plugin's first buffer: it learns the length and asks again.
    let long = "x".repeat(1000);
    call(&slot, "put", &put_input("long", &long)).unwrap();
    assert_eq!(call(&slot, "get", b"long").unwrap(), long.as_bytes());
}
