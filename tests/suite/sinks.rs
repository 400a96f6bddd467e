//! Log and storage sinks set through the C ABI (and the Rust API): a test server owns tables
//! that a native and a WASM plugin read and write through `storage:*`; `kv:*` reaches the
//! same sink in the plugin's own namespace; the log sink receives the plugin's name, level and
//! the trace id of the call; failures of a sink are errors the plugin sees.

use std::collections::BTreeMap;
use std::ffi::{c_char, c_void, CStr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use keel::ffi::deps::keel_host_set_capability_allowlist;
use keel::ffi::sinks::*;
use keel::keel_status::{self, *};
use keel::services::call::{with_options, CallOptions};

use crate::common::capi::{call, cstr, last_error, Buf, Plugin, TestHost};
use crate::common::{build_native, tempdir, write_manifest};

const ALL: &[&str] = &["log", "kv:read", "kv:write", "storage:read", "storage:write"];
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

// ---- the test server: tables it owns, behind a C storage sink -----------------------------

/// Rows by (space, key): space is "table:<name>" for the server's tables and "kv:<plugin>"
/// for each plugin's own namespace. Table "secrets" is refused to every plugin.
#[derive(Default)]
struct Server {
    rows: Mutex<BTreeMap<(String, Vec<u8>), Vec<u8>>>,
    /// (plugin, table, tenant, has user_context) of every request.
    seen: Mutex<Vec<(String, Option<String>, Option<String>, bool)>>,
    freed: AtomicUsize,
}

impl Server {
    fn row(&self, space: &str, key: &str) -> Option<String> {
        self.rows
            .lock()
            .unwrap()
            .get(&(space.to_string(), key.as_bytes().to_vec()))
            .map(|v| String::from_utf8(v.clone()).unwrap())
    }
    fn insert(&self, space: &str, key: &str, value: &str) {
        self.rows
            .lock()
            .unwrap()
            .insert((space.to_string(), key.as_bytes().to_vec()), value.as_bytes().to_vec());
    }
}

unsafe fn opt_str(p: *const c_char) -> Option<String> {
    // SAFETY: Keel passes NULL or a NUL-terminated string valid for the callback.
    (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_str().unwrap().to_string())
}

/// The server, the space a request addresses, or an error written to `error` (status 7).
unsafe fn resolve<'a>(
    ud: *mut c_void,
    req: *const keel_storage_request,
    error: *const keel_sink_writer,
) -> Result<(&'a Server, String), i32> {
    // SAFETY: user_data is the Arc<Server> given at registration, alive until freed.
    let server = unsafe { &*(ud as *const Server) };
    // SAFETY: Keel passes a valid request for the callback.
    let req = unsafe { &*req };
    // SAFETY: as above.
    let (plugin, table, tenant) = unsafe { (opt_str(req.plugin).unwrap(), opt_str(req.table), opt_str(req.tenant)) };
    server
        .seen
        .lock()
        .unwrap()
        .push((plugin.clone(), table.clone(), tenant, !req.user_context.is_null()));
    match table {
        Some(t) if t == "secrets" => {
            let msg = format!("access to table 'secrets' denied for plugin '{plugin}'");
            // SAFETY: Keel's error writer, valid for the callback.
            unsafe { ((*error).write)((*error).ctx, msg.as_ptr(), msg.len()) };
            Err(7)
        }
        Some(t) => Ok((server, format!("table:{t}"))),
        None => Ok((server, format!("kv:{plugin}"))),
    }
}

unsafe fn slice<'a>(p: *const u8, n: usize) -> &'a [u8] {
    if n == 0 {
        &[]
    } else {
        // SAFETY: Keel passes `n` readable bytes.
        unsafe { std::slice::from_raw_parts(p, n) }
    }
}

unsafe extern "C" fn s_get(
    ud: *mut c_void,
    req: *const keel_storage_request,
    key: *const u8,
    key_len: usize,
    value: *const keel_sink_writer,
    error: *const keel_sink_writer,
) -> i32 {
    // SAFETY: per the sink contract.
    let (server, space) = match unsafe { resolve(ud, req, error) } {
        Ok(x) => x,
        Err(rc) => return rc,
    };
    // SAFETY: per the sink contract.
    let key = unsafe { slice(key, key_len) }.to_vec();
    match server.rows.lock().unwrap().get(&(space, key)) {
        // SAFETY: Keel's value writer, valid for the callback.
        Some(v) => unsafe { ((*value).write)((*value).ctx, v.as_ptr(), v.len()) },
        None => 1,
    }
}

#[allow(clippy::too_many_arguments)]
unsafe extern "C" fn s_put(
    ud: *mut c_void,
    req: *const keel_storage_request,
    key: *const u8,
    key_len: usize,
    val: *const u8,
    val_len: usize,
    error: *const keel_sink_writer,
) -> i32 {
    // SAFETY: per the sink contract.
    let (server, space) = match unsafe { resolve(ud, req, error) } {
        Ok(x) => x,
        Err(rc) => return rc,
    };
    // SAFETY: per the sink contract.
    let (k, v) = unsafe { (slice(key, key_len).to_vec(), slice(val, val_len).to_vec()) };
    server.rows.lock().unwrap().insert((space, k), v);
    0
}

unsafe extern "C" fn s_remove(
    ud: *mut c_void,
    req: *const keel_storage_request,
    key: *const u8,
    key_len: usize,
    error: *const keel_sink_writer,
) -> i32 {
    // SAFETY: per the sink contract.
    let (server, space) = match unsafe { resolve(ud, req, error) } {
        Ok(x) => x,
        Err(rc) => return rc,
    };
    // SAFETY: per the sink contract.
    let k = unsafe { slice(key, key_len) }.to_vec();
    if server.rows.lock().unwrap().remove(&(space, k)).is_some() {
        0
    } else {
        1
    }
}

unsafe extern "C" fn s_scan(
    ud: *mut c_void,
    req: *const keel_storage_request,
    prefix: *const u8,
    prefix_len: usize,
    visitor: *const keel_scan_visitor,
    error: *const keel_sink_writer,
) -> i32 {
    // SAFETY: per the sink contract.
    let (server, space) = match unsafe { resolve(ud, req, error) } {
        Ok(x) => x,
        Err(rc) => return rc,
    };
    // SAFETY: per the sink contract.
    let prefix = unsafe { slice(prefix, prefix_len) };
    let rows = server.rows.lock().unwrap();
    for ((s, k), v) in rows.iter() {
        if *s == space && k.starts_with(prefix) {
            // SAFETY: Keel's visitor, valid for the callback.
            if unsafe { ((*visitor).entry)((*visitor).ctx, k.as_ptr(), k.len(), v.as_ptr(), v.len()) } != 0 {
                break;
            }
        }
    }
    0
}

unsafe extern "C" fn free_server(ud: *mut c_void) {
    // SAFETY: the pointer came from Arc::into_raw at registration; this is its release.
    let server = unsafe { Arc::from_raw(ud as *const Server) };
    server.freed.fetch_add(1, Ordering::SeqCst);
}

fn sink() -> keel_storage_sink {
    keel_storage_sink {
        struct_size: std::mem::size_of::<keel_storage_sink>() as u32,
        get: Some(s_get),
        put: Some(s_put),
        remove: Some(s_remove),
        scan: Some(s_scan),
    }
}

/// A test host allowing `caps`, with the server as its storage sink.
fn host_with_server(caps: &[&str]) -> (TestHost, Arc<Server>) {
    let host = TestHost::new();
    allow(&host, caps);
    let server = Arc::new(Server::default());
    server.insert("table:orders", "o1", "apples");
    server.insert("table:orders", "o2", "pears");
    server.insert("table:stock", "s1", "12");
    let ud = Arc::into_raw(server.clone()) as *mut c_void;
    assert_eq!(
        keel_host_set_storage_sink(host.0, &sink(), ud, Some(free_server)),
        KEEL_OK,
        "{}",
        last_error()
    );
    (host, server)
}

fn allow(host: &TestHost, caps: &[&str]) {
    let names: Vec<_> = caps.iter().map(|c| cstr(c)).collect();
    let ptrs: Vec<*const c_char> = names.iter().map(|c| c.as_ptr()).collect();
    assert_eq!(
        keel_host_set_capability_allowlist(host.0, ptrs.as_ptr(), ptrs.len()),
        KEEL_OK
    );
}

fn native_plugin(tag: &str, name: &str, caps: &[&str]) -> PathBuf {
    let dir = tempdir(tag);
    let so = build_native("storage", &[], &dir, "libstorage.so");
    write_manifest(&dir, name, "1.0.0", &so, serde_json::json!({ "capabilities": caps }))
}

fn wasm_plugin(tag: &str, name: &str, caps: &[&str]) -> PathBuf {
    let dir = tempdir(tag);
    let wasm = wat::parse_file(crate::common::repo().join("tests/fixtures/wasm/storage.wat")).unwrap();
    let bin = dir.join("storage.wasm");
    std::fs::write(&bin, wasm).unwrap();
    let m = dir.join(format!("{name}.json"));
    std::fs::write(
        &m,
        serde_json::to_vec(&serde_json::json!({
            "manifest_version": 1, "name": name, "version": "1.0.0", "runtime": "wasm",
            "binary": {"wasm32": "storage.wasm"}, "sha256": crate::common::sha256_file(&bin),
            "capabilities": caps,
        }))
        .unwrap(),
    )
    .unwrap();
    m
}

/// Call `f` of `p`: Ok(output) or Err((status, last error)).
fn run(p: &Plugin, f: &str, input: &[u8]) -> Result<Vec<u8>, (keel_status, String)> {
    let out = Buf::new();
    let f = p.function(f).unwrap();
    match call(p.0, f, input, &out) {
        KEEL_OK => Ok(out.bytes()),
        s => Err((s, last_error())),
    }
}

fn text(r: Result<Vec<u8>, (keel_status, String)>) -> String {
    String::from_utf8(r.unwrap_or_else(|(s, e)| panic!("{s:?}: {e}"))).unwrap()
}

/// The WASM fixture's inputs: u8 table length, table, then `rest`.
fn w(table: &str, rest: &[u8]) -> Vec<u8> {
    let mut v = vec![table.len() as u8];
    v.extend_from_slice(table.as_bytes());
    v.extend_from_slice(rest);
    v
}

fn w_put(table: &str, key: &str, value: &str) -> Vec<u8> {
    let mut rest = vec![key.len() as u8];
    rest.extend_from_slice(key.as_bytes());
    rest.extend_from_slice(value.as_bytes());
    w(table, &rest)
}

/// Decode a WASM scan output: truncated flag, then entries.
fn decode_scan(out: &[u8]) -> (bool, Vec<(String, String)>) {
    let (flag, mut b) = (out[0], &out[1..]);
    let mut entries = Vec::new();
    while !b.is_empty() {
        let kl = u32::from_le_bytes(b[..4].try_into().unwrap()) as usize;
        let k = String::from_utf8(b[4..4 + kl].to_vec()).unwrap();
        b = &b[4 + kl..];
        let vl = u32::from_le_bytes(b[..4].try_into().unwrap()) as usize;
        let v = String::from_utf8(b[4..4 + vl].to_vec()).unwrap();
        b = &b[4 + vl..];
        entries.push((k, v));
    }
    (flag == 1, entries)
}

// ---- storage ------------------------------------------------------------------------------

#[test]
fn a_native_plugin_reads_and_writes_the_servers_tables_through_the_storage_sink() {
    let (host, server) = host_with_server(ALL);
    let p = host
        .load_plugin(&native_plugin("sink-native", "nstore", ALL))
        .unwrap_or_else(|s| panic!("{s:?}: {}", last_error()));
    assert_eq!(
        text(run(&p, "caps", b"")),
        "kv_scan=1 storage_get=1 storage_put=1 storage_delete=1 storage_scan=1 sink_error=1"
    );
    assert_eq!(text(run(&p, "get", b"orders|o1")), "apples");
    run(&p, "put", b"orders|o3=plums").unwrap();
    assert_eq!(server.row("table:orders", "o3").as_deref(), Some("plums"));
    assert_eq!(text(run(&p, "scan", b"orders|o")), "o1=apples\no2=pears\no3=plums\n");
    assert_eq!(text(run(&p, "del", b"orders|o2")), "deleted");
    assert_eq!(text(run(&p, "del", b"orders|o2")), "absent");
    assert_eq!(server.row("table:orders", "o2"), None);
    let (s, e) = run(&p, "get", b"orders|o2").unwrap_err();
    assert_eq!((s, e.contains("absent")), (KEEL_ERR_CALL_FAILED, true), "{e}");
    // The server refuses a table: the plugin sees the server's message.
    let (s, e) = run(&p, "put", b"secrets|k=v").unwrap_err();
    assert_eq!(s, KEEL_ERR_CALL_FAILED);
    assert!(
        e.contains("storage_put rc=-3") && e.contains("access to table 'secrets' denied for plugin 'nstore'"),
        "{e}"
    );
    // A table name the plugin may not pass (empty).
    let (_, e) = run(&p, "get", b"|k").unwrap_err();
    assert!(e.contains("storage_get rc=-1") && e.contains("table name"), "{e}");
    // kv:* reaches the same sink, in the plugin's own namespace (table NULL).
    run(&p, "kv_put", b"user:1=ann").unwrap();
    run(&p, "kv_put", b"user:2=bob").unwrap();
    assert_eq!(server.row("kv:nstore", "user:1").as_deref(), Some("ann"));
    assert_eq!(text(run(&p, "kv_scan", b"user:")), "user:1=ann\nuser:2=bob\n");
    // The sink received the calling plugin's name and the table (NULL for kv).
    let seen = server.seen.lock().unwrap().clone();
    assert!(
        seen.contains(&("nstore".into(), Some("orders".into()), None, false)),
        "{seen:?}"
    );
    assert!(seen.contains(&("nstore".into(), None, None, false)), "{seen:?}");
    // A call with options hands the sink its tenant and user_context.
    let mut session = 5u32;
    let opts = CallOptions {
        tenant: Some("acme"),
        user_context: &mut session as *mut u32 as *mut c_void,
        ..CallOptions::default()
    };
    with_options(&opts, || run(&p, "get", b"stock|s1")).unwrap();
    assert_eq!(
        server.seen.lock().unwrap().last().cloned(),
        Some(("nstore".into(), Some("stock".into()), Some("acme".into()), true))
    );
    // Unsetting the sink restores the default map (no tables): the plugin keeps serving.
    assert_eq!(
        keel_host_set_storage_sink(host.0, std::ptr::null(), std::ptr::null_mut(), None),
        KEEL_OK
    );
    let (_, e) = run(&p, "get", b"orders|o1").unwrap_err();
    assert!(e.contains("no storage sink is set"), "{e}");
    run(&p, "kv_put", b"k=v").unwrap();
    assert_eq!(text(run(&p, "kv_scan", b"k")), "k=v\n");
    drop(p);
    assert_eq!(
        server.freed.load(Ordering::SeqCst),
        1,
        "destructor ran once, when replaced"
    );
    drop(host);
    assert_eq!(server.freed.load(Ordering::SeqCst), 1);
}

#[test]
fn a_wasm_plugin_reads_and_writes_the_servers_tables_through_the_storage_sink() {
    let (host, server) = host_with_server(ALL);
    let p = host
        .load_plugin(&wasm_plugin("sink-wasm", "wstore", ALL))
        .unwrap_or_else(|s| panic!("{s:?}: {}", last_error()));
    assert_eq!(text(run(&p, "get", &w("orders", b"o2"))), "pears");
    run(&p, "put", &w_put("orders", "o9", "kiwis")).unwrap();
    assert_eq!(server.row("table:orders", "o9").as_deref(), Some("kiwis"));
    let (trunc, entries) = decode_scan(&run(&p, "scan", &w("orders", b"o")).unwrap());
    assert!(!trunc);
    assert_eq!(
        entries,
        [("o1", "apples"), ("o2", "pears"), ("o9", "kiwis")].map(|(k, v)| (k.to_string(), v.to_string()))
    );
    assert_eq!(run(&p, "del", &w("orders", b"o1")).unwrap(), [0]);
    assert_eq!(run(&p, "del", &w("orders", b"o1")).unwrap(), [1]);
    let (_, e) = run(&p, "get", &w("orders", b"o1")).unwrap_err();
    assert!(e.contains("absent"), "{e}");
    let (s, e) = run(&p, "get", &w("secrets", b"k")).unwrap_err();
    assert_eq!(s, KEEL_ERR_CALL_FAILED);
    assert!(
        e.contains("access to table 'secrets' denied for plugin 'wstore'"),
        "{e}"
    );
    // A 64-byte buffer holds whole entries only and the scan says it was cut.
    for i in 0..20 {
        server.insert("table:big", &format!("row{i:02}"), "0123456789");
    }
    let (trunc, entries) = decode_scan(&run(&p, "scan_small", &w("big", b"row")).unwrap());
    assert!(trunc);
    assert_eq!(entries.len(), 2, "{entries:?}"); // 4 + 5 + 4 + 10 = 23 bytes each
                                                 // kv:* in the plugin's own namespace, through the same sink.
    let mut kv = vec![3u8];
    kv.extend_from_slice(b"abcvalue");
    run(&p, "kv_put", &kv).unwrap();
    assert_eq!(server.row("kv:wstore", "abc").as_deref(), Some("value"));
    let (_, entries) = decode_scan(&run(&p, "kv_scan", b"ab").unwrap());
    assert_eq!(entries, [("abc".to_string(), "value".to_string())]);
}

#[test]
fn without_storage_capabilities_a_native_plugin_sees_null_and_a_wasm_plugin_is_refused() {
    let (host, _server) = host_with_server(ALL);
    let p = host
        .load_plugin(&native_plugin("sink-native-nocap", "nstore", &["kv:read"]))
        .unwrap_or_else(|s| panic!("{s:?}: {}", last_error()));
    assert_eq!(
        text(run(&p, "caps", b"")),
        "kv_scan=1 storage_get=0 storage_put=0 storage_delete=0 storage_scan=0 sink_error=1"
    );
    let (_, e) = run(&p, "put", b"orders|k=v").unwrap_err();
    assert!(e.contains("no storage_put"), "{e}");
    let p = host
        .load_plugin(&native_plugin("sink-native-none", "nstore2", &["log"]))
        .unwrap();
    assert_eq!(
        text(run(&p, "caps", b"")),
        "kv_scan=0 storage_get=0 storage_put=0 storage_delete=0 storage_scan=0 sink_error=0"
    );
    // storage:read without storage:write still refuses the WASM module, naming the import.
    let caps = ["log", "kv:read", "kv:write", "storage:read"];
    let s = host.load(&wasm_plugin("sink-wasm-nocap", "wstore", &caps)).unwrap_err();
    assert_eq!(s, KEEL_ERR_IMPORT_NOT_GRANTED);
    let e = last_error();
    assert!(e.contains("keel.storage_put") && e.contains("storage:write"), "{e}");
}

#[test]
fn storage_is_refused_without_a_sink_and_kv_stays_in_memory() {
    let host = TestHost::new();
    allow(&host, ALL);
    let p = host.load_plugin(&native_plugin("sink-default", "nstore", ALL)).unwrap();
    let (_, e) = run(&p, "get", b"orders|o1").unwrap_err();
    assert!(
        e.contains("storage_get rc=-3") && e.contains("no storage sink is set"),
        "{e}"
    );
    run(&p, "kv_put", b"a1=x").unwrap();
    run(&p, "kv_put", b"a2=y").unwrap();
    run(&p, "kv_put", b"b1=z").unwrap();
    assert_eq!(text(run(&p, "kv_scan", b"a")), "a1=x\na2=y\n");
}

#[test]
fn bad_storage_sink_arguments_are_refused_and_the_host_keeps_its_sink() {
    let (host, server) = host_with_server(ALL);
    let mut s = sink();
    s.struct_size = 4;
    assert_eq!(
        keel_host_set_storage_sink(host.0, &s, std::ptr::null_mut(), Some(free_server)),
        KEEL_ERR_INVALID_ARGUMENT
    );
    assert!(last_error().contains("struct_size"), "{}", last_error());
    let empty = keel_storage_sink {
        struct_size: std::mem::size_of::<keel_storage_sink>() as u32,
        get: None,
        put: None,
        remove: None,
        scan: None,
    };
    assert_eq!(
        keel_host_set_storage_sink(host.0, &empty, std::ptr::null_mut(), None),
        KEEL_ERR_INVALID_ARGUMENT
    );
    assert_eq!(
        keel_host_set_storage_sink(std::ptr::null(), &sink(), std::ptr::null_mut(), None),
        KEEL_ERR_NULL_POINTER
    );
    assert_eq!(
        keel_host_set_log_sink(std::ptr::null(), Some(record_log), std::ptr::null_mut(), None),
        KEEL_ERR_NULL_POINTER
    );
    // The server's sink is still in place (and its destructor was not called).
    let p = host.load_plugin(&native_plugin("sink-bad", "nstore", ALL)).unwrap();
    assert_eq!(text(run(&p, "get", b"orders|o1")), "apples");
    assert_eq!(server.freed.load(Ordering::SeqCst), 0);
    // A sink without scan: scanning fails with a message, the rest works.
    let mut partial = sink();
    partial.scan = None;
    let ud = Arc::into_raw(server.clone()) as *mut c_void;
    assert_eq!(
        keel_host_set_storage_sink(host.0, &partial, ud, Some(free_server)),
        KEEL_OK
    );
    assert_eq!(server.freed.load(Ordering::SeqCst), 1, "the replaced sink was released");
    let (_, e) = run(&p, "scan", b"orders|o").unwrap_err();
    assert!(e.contains("does not implement scan"), "{e}");
    assert_eq!(text(run(&p, "get", b"orders|o2")), "pears");
}

#[test]
fn storage_sinks_swapped_while_plugins_read_are_each_released_exactly_once() {
    let (host, first) = host_with_server(ALL);
    let p = host.load_plugin(&native_plugin("sink-swap", "nstore", ALL)).unwrap();
    let f = p.function("get").unwrap();
    let pp = p.0 as usize;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let threads: Vec<_> = (0..3)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let out = Buf::new();
                while !stop.load(Ordering::Relaxed) {
                    // Every server holds the row: each call succeeds whichever sink it meets.
                    assert_eq!(call(pp as *const _, f, b"orders|o1", &out), KEEL_OK, "{}", last_error());
                    assert_eq!(out.text(), "apples");
                }
            })
        })
        .collect();
    let mut servers = vec![first];
    for _ in 0..30 {
        while servers.last().unwrap().seen.lock().unwrap().len() < 3 {
            std::thread::yield_now();
        }
        let server = Arc::new(Server::default());
        server.insert("table:orders", "o1", "apples");
        let ud = Arc::into_raw(server.clone()) as *mut c_void;
        assert_eq!(
            keel_host_set_storage_sink(host.0, &sink(), ud, Some(free_server)),
            KEEL_OK
        );
        servers.push(server);
    }
    stop.store(true, Ordering::Relaxed);
    threads.into_iter().for_each(|t| t.join().unwrap());
    assert_eq!(
        keel_host_set_storage_sink(host.0, std::ptr::null(), std::ptr::null_mut(), None),
        KEEL_OK
    );
    for s in &servers {
        assert_eq!(s.freed.load(Ordering::SeqCst), 1);
        assert_eq!(Arc::strong_count(s), 1, "Keel keeps no reference to a replaced sink");
    }
}

// ---- log ----------------------------------------------------------------------------------

#[derive(Default)]
struct Logs {
    lines: Mutex<Vec<(String, i32, String, Option<String>, Option<String>, Option<String>)>>,
    freed: AtomicUsize,
}

unsafe extern "C" fn record_log(ud: *mut c_void, r: *const keel_log_record) {
    // SAFETY: user_data is the Arc<Logs> given at registration; the record is valid for the call.
    let (logs, r) = unsafe { (&*(ud as *const Logs), &*r) };
    // SAFETY: message_len bytes at message.
    let msg = unsafe { std::slice::from_raw_parts(r.message as *const u8, r.message_len) };
    // SAFETY: NUL-terminated strings or NULL.
    let line = unsafe {
        (
            opt_str(r.plugin).unwrap(),
            r.level,
            String::from_utf8(msg.to_vec()).unwrap(),
            opt_str(r.trace_id),
            opt_str(r.traceparent),
            opt_str(r.tenant),
        )
    };
    logs.lines.lock().unwrap().push(line);
}

unsafe extern "C" fn free_logs(ud: *mut c_void) {
    // SAFETY: from Arc::into_raw at registration; released once.
    let logs = unsafe { Arc::from_raw(ud as *const Logs) };
    logs.freed.fetch_add(1, Ordering::SeqCst);
}

fn set_log_sink(host: &TestHost) -> Arc<Logs> {
    let logs = Arc::new(Logs::default());
    let ud = Arc::into_raw(logs.clone()) as *mut c_void;
    assert_eq!(
        keel_host_set_log_sink(host.0, Some(record_log), ud, Some(free_logs)),
        KEEL_OK
    );
    logs
}

#[test]
fn the_log_sink_gets_plugin_logs_with_name_level_and_the_calls_trace_id() {
    let (host, _server) = host_with_server(ALL);
    let native = host.load_plugin(&native_plugin("log-native", "nlog", ALL)).unwrap();
    let wasm = host.load_plugin(&wasm_plugin("log-wasm", "wlog", ALL)).unwrap();
    // Set after the loads: already loaded plugins use it from their next line.
    let logs = set_log_sink(&host);
    let opts = CallOptions {
        traceparent: Some(TRACEPARENT),
        tenant: Some("acme"),
        ..CallOptions::default()
    };
    with_options(&opts, || {
        run(&native, "log", b"native says hi").unwrap();
        run(&wasm, "log", b"wasm says hi").unwrap();
    });
    run(&native, "log", b"no context").unwrap();
    let bad = CallOptions {
        traceparent: Some("not-a-traceparent"),
        ..CallOptions::default()
    };
    with_options(&bad, || run(&native, "log", b"bad context")).unwrap();
    let lines = logs.lines.lock().unwrap().clone();
    let trace = Some("4bf92f3577b34da6a3ce929d0e0e4736".to_string());
    assert_eq!(
        lines,
        [
            (
                "nlog".into(),
                2,
                "native says hi".into(),
                trace.clone(),
                Some(TRACEPARENT.into()),
                Some("acme".into())
            ),
            (
                "wlog".into(),
                2,
                "wasm says hi".into(),
                trace,
                Some(TRACEPARENT.into()),
                Some("acme".into())
            ),
            ("nlog".into(), 2, "no context".into(), None, None, None),
            (
                "nlog".into(),
                2,
                "bad context".into(),
                None,
                Some("not-a-traceparent".into()),
                None
            ),
        ]
    );
    // Replacing the sink releases the old one once; NULL restores stderr.
    let second = set_log_sink(&host);
    assert_eq!(logs.freed.load(Ordering::SeqCst), 1);
    run(&native, "log", b"to the second sink").unwrap();
    assert_eq!(second.lines.lock().unwrap().len(), 1);
    // The same through the C ABI's call with options: the sink gets the call's trace id.
    {
        use keel::ffi::call::{keel_call_options, keel_call_with};
        let tp = std::ffi::CString::new(TRACEPARENT).unwrap();
        let tenant = std::ffi::CString::new("acme").unwrap();
        let opts = keel_call_options {
            struct_size: std::mem::size_of::<keel_call_options>() as u32,
            flags: 0,
            deadline_us: 0,
            fuel: 0,
            cancel: std::ptr::null(),
            user_context: std::ptr::null_mut(),
            tenant: tenant.as_ptr(),
            traceparent: tp.as_ptr(),
        };
        let out = Buf::new();
        let f = native.function("log").unwrap();
        let input = b"through keel_call_with";
        assert_eq!(
            keel_call_with(native.0, f, input.as_ptr(), input.len(), &opts, out.0),
            KEEL_OK,
            "{}",
            last_error()
        );
        let lines = second.lines.lock().unwrap().clone();
        let last = lines.last().unwrap();
        assert_eq!(last.2, "through keel_call_with");
        assert_eq!(last.3.as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"), "{last:?}");
        assert_eq!(last.5.as_deref(), Some("acme"));
    }
    assert_eq!(second.lines.lock().unwrap().len(), 2);
    assert_eq!(logs.lines.lock().unwrap().len(), 4);
    assert_eq!(
        keel_host_set_log_sink(host.0, None, std::ptr::null_mut(), None),
        KEEL_OK
    );
    assert_eq!(second.freed.load(Ordering::SeqCst), 1);
    run(&native, "log", b"to stderr").unwrap();
    assert_eq!(
        second.lines.lock().unwrap().len(),
        2,
        "nothing more after it was replaced"
    );
}

#[test]
fn a_log_sink_swapped_while_plugins_log_from_many_threads_is_released_exactly_once() {
    let (host, _server) = host_with_server(ALL);
    let p = host.load_plugin(&native_plugin("log-swap", "nlog", ALL)).unwrap();
    let f = p.function("log").unwrap();
    let pp = p.0 as usize;
    let mut sinks = vec![set_log_sink(&host)];
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let threads: Vec<_> = (0..3)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let out = Buf::new();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    assert_eq!(call(pp as *const _, f, b"x", &out), KEEL_OK);
                    n += 1;
                }
                n
            })
        })
        .collect();
    for _ in 0..50 {
        // Swap while lines are being delivered: once the current sink has some.
        while sinks.last().unwrap().lines.lock().unwrap().len() < 3 {
            std::thread::yield_now();
        }
        sinks.push(set_log_sink(&host));
    }
    stop.store(true, Ordering::Relaxed);
    let calls: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(
        keel_host_set_log_sink(host.0, None, std::ptr::null_mut(), None),
        KEEL_OK
    );
    let delivered: usize = sinks.iter().map(|s| s.lines.lock().unwrap().len()).sum();
    assert_eq!(delivered as u64, calls, "every line reached exactly one sink");
    for s in &sinks {
        assert_eq!(s.freed.load(Ordering::SeqCst), 1);
    }
}

// ---- the Rust API: sinks set on a keel::Host after creation, panics contained --------------

struct PanickingStore;

impl keel::services::KvStore for PanickingStore {
    fn get(&self, _: keel::services::KvTarget<'_>, _: &[u8]) -> keel::services::SinkResult<Option<Vec<u8>>> {
        panic!("server storage exploded")
    }
    fn put(&self, _: keel::services::KvTarget<'_>, _: &[u8], _: &[u8]) -> keel::services::SinkResult<()> {
        panic!("server storage exploded")
    }
    fn delete(&self, _: keel::services::KvTarget<'_>, _: &[u8]) -> keel::services::SinkResult<bool> {
        panic!("server storage exploded")
    }
    fn scan(
        &self,
        _: keel::services::KvTarget<'_>,
        _: &[u8],
        _: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> keel::services::SinkResult<()> {
        panic!("server storage exploded")
    }
}

#[test]
fn a_panicking_rust_sink_gives_the_plugin_an_error_and_the_host_keeps_serving() {
    let host = crate::common::host();
    host.trust().set_require_signature(false).unwrap();
    host.set_allowlist(keel::capability::Capabilities::parse(ALL).unwrap());
    let native = host.load(&native_plugin("panic-native", "nstore", ALL)).unwrap();
    let wasm = host.load(&wasm_plugin("panic-wasm", "wstore", ALL)).unwrap();
    let logged = Arc::new(Mutex::new(Vec::<(String, Option<String>)>::new()));
    let l = logged.clone();
    host.set_log_sink(Some(Arc::new(move |plugin: &str, _lvl, msg: &str| {
        if msg == "boom" {
            panic!("log sink exploded");
        }
        let trace = keel::services::call::with_current(|c| {
            c.and_then(|c| c.traceparent)
                .and_then(keel::services::sinks::trace_id)
                .map(str::to_owned)
        });
        l.lock().unwrap().push((format!("{plugin}: {msg}"), trace));
    })));
    host.set_kv_store(Some(Arc::new(PanickingStore)));
    let call = |slot: &keel::registry::Slot, f: &str, input: &[u8]| {
        let g = slot.current().unwrap();
        let id = g.instance.functions().iter().position(|x| x == f).unwrap() as u32;
        let mut out = Vec::new();
        g.instance.call(id, input, &mut out).map(|()| out)
    };
    let e = call(&native, "get", b"orders|o1").unwrap_err();
    assert!(
        e.message().contains("panicked in get") && e.message().contains("server storage exploded"),
        "{e}"
    );
    let e = call(&wasm, "put", &w_put("orders", "k", "v")).unwrap_err();
    assert!(e.message().contains("panicked in put"), "{e}");
    let e = call(&native, "kv_scan", b"").unwrap_err();
    assert!(e.message().contains("panicked in scan"), "{e}");
    // A panicking log sink drops the line; the call succeeds.
    call(&native, "log", b"boom").unwrap();
    call(&wasm, "log", b"boom").unwrap();
    // The Rust log sink reads the trace context itself.
    let opts = CallOptions {
        traceparent: Some(TRACEPARENT),
        ..CallOptions::default()
    };
    with_options(&opts, || call(&native, "log", b"traced")).unwrap();
    assert_eq!(
        logged.lock().unwrap().clone(),
        [(
            "nstore: traced".to_string(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736".to_string())
        )]
    );
    // Back to the default map: the same plugins keep serving.
    host.set_kv_store(None);
    call(&native, "kv_put", b"k=v").unwrap();
    assert_eq!(call(&native, "kv_scan", b"k").unwrap(), b"k=v\n");
}
