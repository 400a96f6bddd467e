//! Capabilities that grant something real: `metrics:write` (plugin-defined counters, gauges
//! and histograms in Keel's exposition), `rpc:register` (endpoints the server lists and
//! invokes through the C ABI), and `network:egress`, removed. Through the C ABI, with a real
//! native plugin (tests/fixtures/native/capmetrics.c) and a real WASM module
//! (tests/fixtures/wasm/capmetrics.wat).

use crate::common;
use crate::metrics::{check_histograms, parse, Exposition};

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::ptr;

use common::capi::*;
use keel::ffi::capmetrics::*;
use keel::ffi::deps::keel_host_set_capability_allowlist;
use keel::ffi::host::*;
use keel::keel_status::{self, *};

const ALL: &[&str] = &["log", "metrics:write", "rpc:register"];

impl TestHost {
    fn allow(&self, names: &[&str]) {
        let owned: Vec<CString> = names.iter().map(|n| cstr(n)).collect();
        let ptrs: Vec<*const std::ffi::c_char> = owned.iter().map(|c| c.as_ptr()).collect();
        assert_eq!(
            keel_host_set_capability_allowlist(self.0, ptrs.as_ptr(), ptrs.len()),
            KEEL_OK
        );
    }

    fn exposition(&self) -> Exposition {
        let b = Buf::new();
        assert_eq!(keel_host_metrics_text(self.0, b.0), KEEL_OK);
        let text = b.text();
        parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    fn rpc_list(&self) -> Vec<(String, String, String)> {
        let b = Buf::new();
        assert_eq!(keel_host_rpc_list(self.0, b.0), KEEL_OK);
        let v: serde_json::Value = serde_json::from_slice(&b.bytes()).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let s = |k: &str| e[k].as_str().unwrap().to_string();
                (s("endpoint"), s("plugin"), s("function"))
            })
            .collect()
    }

    fn rpc_call(&self, endpoint: &str, input: &[u8]) -> Result<String, keel_status> {
        let b = Buf::new();
        let ep = cstr(endpoint);
        match keel_host_rpc_call(self.0, ep.as_ptr(), input.as_ptr(), input.len(), b.0) {
            KEEL_OK => Ok(b.text()),
            s => {
                assert!(b.bytes().is_empty(), "a failed call leaves the buffer empty");
                Err(s)
            }
        }
    }
}

/// Call `f` of `p` with `input`; the text result or the status.
fn call_text(p: &Plugin, f: &str, input: &str) -> Result<String, keel_status> {
    let id = p.function(f)?;
    let out = Buf::new();
    match call(p.0, id, input.as_bytes(), &out) {
        KEEL_OK => Ok(out.text()),
        s => Err(s),
    }
}

/// Build the native fixture as plugin `name` in `dir` with `defines`, manifest with
/// `capabilities` and `config`.
fn native(dir: &Path, name: &str, defines: &[&str], capabilities: &[&str], config: serde_json::Value) -> PathBuf {
    let so = common::build_native("capmetrics", defines, dir, &format!("lib{name}.so"));
    common::write_manifest(
        dir,
        name,
        "1.0.0",
        &so,
        serde_json::json!({"capabilities": capabilities, "config": config}),
    )
}

/// The WASM fixture as plugin `name` in `dir`, manifest with `capabilities`.
fn wasm(dir: &Path, name: &str, capabilities: &[&str]) -> PathBuf {
    let bytes = wat::parse_file(common::repo().join("tests/fixtures/wasm/capmetrics.wat")).unwrap();
    let bin = dir.join(format!("{name}.wasm"));
    std::fs::write(&bin, &bytes).unwrap();
    let m = serde_json::json!({
        "manifest_version": 1, "name": name, "version": "1.0.0", "runtime": "wasm",
        "binary": {"wasm32": format!("{name}.wasm")}, "sha256": common::sha256_file(&bin),
        "capabilities": capabilities,
    });
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, m.to_string()).unwrap();
    path
}

fn samples_of(e: &Exposition, name: &str, plugin: &str) -> usize {
    e.samples_named(name)
        .filter(|s| s.labels.get("plugin").map(String::as_str) == Some(plugin))
        .count()
}

#[test]
fn native_plugin_metrics_appear_with_its_label_and_bad_definitions_are_errors_it_sees() {
    let dir = common::tempdir("capmetrics-native");
    let h = TestHost::new();
    let p = h
        .load_plugin(&native(&dir, "nat", &[], &["metrics:write"], serde_json::json!({})))
        .unwrap_or_else(|s| panic!("{s:?}: {}", last_error()));
    assert_eq!(call_text(&p, "caps", "").unwrap(), "metrics=1 rpc=0");
    for input in ["a", "abcde", "x".repeat(50).as_str()] {
        assert!(call_text(&p, "hello", input).unwrap().starts_with("hello from v1"));
    }
    let e = h.exposition();
    let l = [("plugin", "nat"), ("route", "hello")];
    assert_eq!(e.get("keel_custom_native_requests_total", &l), Some(3.0));
    assert_eq!(
        e.get("keel_custom_native_last_input_bytes", &[("plugin", "nat")]),
        Some(50.0)
    );
    let hist = |le: &str| {
        e.get(
            "keel_custom_native_input_bytes_bucket",
            &[("plugin", "nat"), ("le", le)],
        )
    };
    assert_eq!(hist("10.0"), Some(2.0), "1 and 5 bytes");
    assert_eq!(hist("100.0"), Some(3.0), "cumulative");
    assert_eq!(hist("+Inf"), Some(3.0));
    assert_eq!(
        e.get("keel_custom_native_input_bytes_sum", &[("plugin", "nat")]),
        Some(56.0)
    );
    assert_eq!(check_histograms(&e, "keel_custom_native_input_bytes"), 1);

    // Definitions the plugin gets wrong are a status it sees, never a crash.
    let m = keel_status::KEEL_ERR_METRIC_INVALID as u32;
    for bad in [
        "0 1bad",
        "0 a-b",
        "0 x_count",
        "1 __x",
        "7 kind_out_of_range",
        r#"1 g {"plugin":"x"}"#,
        "1 g {oops",
    ] {
        let r = call_text(&p, "define", bad).unwrap();
        assert_eq!(r, format!("{m} 0"), "{bad}");
    }
    // Another kind under a defined name: conflict.
    assert_eq!(
        call_text(&p, "define", "1 native_requests").unwrap(),
        format!("{} 0", KEEL_ERR_METRIC_CONFLICT as u32)
    );
    // A new gauge with labels; updates through its id; wrong updates are refused.
    let r = call_text(&p, "define", r#"1 queue_depth {"queue":"q1"}"#).unwrap();
    let id: u32 = r.strip_prefix("0 ").unwrap().parse().unwrap();
    assert_eq!(call_text(&p, "update", &format!("set {id} 7.5")).unwrap(), "0");
    assert_eq!(call_text(&p, "update", &format!("add {id} -2.5")).unwrap(), "0");
    assert_eq!(
        call_text(&p, "update", &format!("observe {id} 1")).unwrap(),
        (KEEL_ERR_METRIC_CONFLICT as u32).to_string()
    );
    assert_eq!(
        call_text(&p, "update", "add 9999 1").unwrap(),
        m.to_string(),
        "unknown id"
    );
    assert_eq!(
        call_text(&p, "update", "add 0 -1").unwrap(),
        m.to_string(),
        "counters only go up"
    );
    assert_eq!(call_text(&p, "update", "add 0 nan").unwrap(), m.to_string());
    let e = h.exposition();
    assert_eq!(
        e.get("keel_custom_queue_depth", &[("plugin", "nat"), ("queue", "q1")]),
        Some(5.0)
    );
    assert_eq!(e.get("keel_custom_native_requests_total", &l), Some(3.0));

    // Unload removes the plugin's series.
    drop(p);
    assert_eq!(h.unload("nat"), KEEL_OK);
    let e = h.exposition();
    assert!(
        !e.names().iter().any(|n| n.starts_with("keel_custom_")),
        "{:?}",
        e.names()
    );
}

#[test]
fn the_10001st_series_is_refused_and_the_host_keeps_serving() {
    let dir = common::tempdir("capmetrics-cap");
    let h = TestHost::new();
    let p = h
        .load_plugin(&native(&dir, "flood", &[], &["metrics:write"], serde_json::json!({})))
        .unwrap();
    // init defined 3 series; 9 997 more fit, the next one is refused with its own code.
    assert_eq!(
        call_text(&p, "flood", "10001").unwrap(),
        format!("defined 9997 rc {}", KEEL_ERR_METRIC_SERIES_LIMIT as u32)
    );
    assert_eq!(
        call_text(&p, "flood", "9997").unwrap(),
        "defined 9997 rc 0",
        "defining existing series again finds them"
    );
    assert_eq!(
        call_text(&p, "define", "0 one_more").unwrap(),
        format!("{} 0", KEEL_ERR_METRIC_SERIES_LIMIT as u32)
    );
    // The host and the plugin keep serving; existing series keep counting.
    assert!(call_text(&p, "hello", "x").unwrap().starts_with("hello"));
    let e = h.exposition();
    assert_eq!(samples_of(&e, "keel_custom_flood_total", "flood"), 9997);
    assert_eq!(
        e.get("keel_custom_flood_total", &[("plugin", "flood"), ("i", "9996")]),
        Some(2.0)
    );
    assert_eq!(
        e.get("keel_custom_native_requests_total", &[("plugin", "flood")]),
        Some(1.0)
    );
    // Another plugin has its own budget.
    let q = h
        .load_plugin(&native(&dir, "other", &[], &["metrics:write"], serde_json::json!({})))
        .unwrap();
    assert_eq!(call_text(&q, "flood", "5").unwrap(), "defined 5 rc 0");
}

#[test]
fn without_metrics_write_native_sees_null_and_wasm_is_refused_at_load() {
    let dir = common::tempdir("capmetrics-denied");
    let h = TestHost::new();
    h.allow(ALL);
    let p = h
        .load_plugin(&native(&dir, "plain", &[], &["log"], serde_json::json!({})))
        .unwrap();
    assert_eq!(call_text(&p, "caps", "").unwrap(), "metrics=0 rpc=0");
    assert!(call_text(&p, "hello", "x").is_ok(), "works without defining anything");

    let m = wasm(&dir, "wnometrics", &["rpc:register"]);
    let c = cstr(m.to_str().unwrap());
    assert_eq!(
        keel_host_load(h.0, c.as_ptr(), ptr::null_mut()),
        KEEL_ERR_IMPORT_NOT_GRANTED
    );
    let msg = last_error();
    assert!(
        msg.contains("keel.metric_define") && msg.contains("metrics:write"),
        "{msg}"
    );
    let m = wasm(&dir, "wnorpc", &["metrics:write"]);
    let c = cstr(m.to_str().unwrap());
    assert_eq!(
        keel_host_load(h.0, c.as_ptr(), ptr::null_mut()),
        KEEL_ERR_IMPORT_NOT_GRANTED
    );
    assert!(last_error().contains("rpc:register"));
    // rpc:register is not in the default allowlist.
    let h2 = TestHost::new();
    let m = wasm(&dir, "wdefault", &["metrics:write", "rpc:register"]);
    assert_eq!(h2.load(&m).err(), Some(KEEL_ERR_CAPABILITY_DENIED));
}

#[test]
fn wasm_plugin_metrics_appear_and_a_bad_name_is_refused() {
    let dir = common::tempdir("capmetrics-wasm");
    let h = TestHost::new();
    h.allow(ALL);
    let p = h
        .load_plugin(&wasm(&dir, "wcap", &["metrics:write", "rpc:register"]))
        .unwrap_or_else(|s| panic!("{s:?}: {}", last_error()));
    assert_eq!(call_text(&p, "hello", "").unwrap(), "hi");
    assert_eq!(call_text(&p, "hello", "").unwrap(), "hi");
    let e = h.exposition();
    assert_eq!(
        e.get("keel_custom_wasm_requests_total", &[("plugin", "wcap"), ("route", "w")]),
        Some(2.0)
    );
    assert_eq!(e.get("keel_custom_wasm_depth", &[("plugin", "wcap")]), Some(42.0));
    assert_eq!(
        e.get("keel_custom_wasm_latency_bucket", &[("plugin", "wcap"), ("le", "1.0")]),
        Some(0.0)
    );
    assert_eq!(
        e.get("keel_custom_wasm_latency_bucket", &[("plugin", "wcap"), ("le", "2.0")]),
        Some(2.0)
    );
    assert_eq!(
        e.get("keel_custom_wasm_latency_count", &[("plugin", "wcap")]),
        Some(2.0)
    );
    assert_eq!(e.get("keel_custom_wasm_latency_sum", &[("plugin", "wcap")]), Some(3.0));
    // A bad name: the guest gets -606, the call itself succeeds, the plugin keeps serving.
    let id = p.function("bad").unwrap();
    let out = Buf::new();
    assert_eq!(call(p.0, id, b"", &out), KEEL_OK);
    let r = i64::from_le_bytes(out.bytes()[..8].try_into().unwrap());
    assert_eq!(r, -(KEEL_ERR_METRIC_INVALID as i64));
    assert_eq!(call_text(&p, "hello", "").unwrap(), "hi");
    drop(p);
    assert_eq!(h.unload("wcap"), KEEL_OK);
    assert_eq!(
        h.exposition().get("keel_custom_wasm_depth", &[("plugin", "wcap")]),
        None
    );
}

#[test]
fn rpc_endpoints_are_listed_invoked_refused_when_taken_and_removed_on_unload() {
    let dir = common::tempdir("capmetrics-rpc");
    let h = TestHost::new();
    h.allow(ALL);
    assert!(h.rpc_list().is_empty());
    let n = h
        .load_plugin(&native(
            &dir,
            "nat",
            &[],
            &["rpc:register"],
            serde_json::json!({"endpoints": "n.greet=hello,n.echo=echo"}),
        ))
        .unwrap_or_else(|s| panic!("{s:?}: {}", last_error()));
    let w = h
        .load_plugin(&wasm(&dir, "wcap", &["metrics:write", "rpc:register"]))
        .unwrap();
    let s = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
    assert_eq!(
        h.rpc_list(),
        vec![
            s("n.echo", "nat", "echo"),
            s("n.greet", "nat", "hello"),
            s("w.hello", "wcap", "hello")
        ]
    );
    // Invoked by name through the C ABI.
    assert_eq!(h.rpc_call("n.greet", b"db").unwrap(), "hello from v1: db");
    assert_eq!(h.rpc_call("w.hello", b"").unwrap(), "hi");
    assert_eq!(h.rpc_call("n.echo", b"").unwrap(), "");
    // Resolved once, called through keel_call.
    let (mut plugin, mut f) = (ptr::null_mut(), 0);
    let ep = cstr("n.echo");
    assert_eq!(keel_host_rpc_resolve(h.0, ep.as_ptr(), &mut plugin, &mut f), KEEL_OK);
    let resolved = Plugin(plugin);
    let out = Buf::new();
    assert_eq!(call(resolved.0, f, b"ping", &out), KEEL_OK);
    assert_eq!(out.text(), "ping");
    // Unknown endpoint, bad arguments.
    assert_eq!(h.rpc_call("nope", b""), Err(KEEL_ERR_RPC_ENDPOINT_NOT_FOUND));
    assert!(last_error().contains("nope"));
    assert_eq!(
        keel_host_rpc_call(h.0, ptr::null(), ptr::null(), 0, out.0),
        KEEL_ERR_NULL_POINTER
    );
    assert_eq!(
        keel_host_rpc_resolve(h.0, ep.as_ptr(), ptr::null_mut(), &mut f),
        KEEL_ERR_NULL_POINTER
    );
    // A taken name is an error each plugin sees.
    let taken = (KEEL_ERR_RPC_ENDPOINT_TAKEN as u32).to_string();
    assert_eq!(call_text(&n, "register", "w.hello hello").unwrap(), taken);
    assert_eq!(call_text(&n, "register", "n.greet echo").unwrap(), taken, "rebinding");
    assert_eq!(call_text(&n, "register", "n.greet hello").unwrap(), "0", "same binding");
    assert_eq!(
        call_text(&n, "register", "n.x nosuchfn").unwrap(),
        (KEEL_ERR_FUNCTION_NOT_FOUND as u32).to_string()
    );
    let id = w.function("dup").unwrap();
    assert_eq!(call(w.0, id, b"", &out), KEEL_OK);
    assert_eq!(
        i32::from_le_bytes(out.bytes()[..4].try_into().unwrap()),
        -(KEEL_ERR_RPC_ENDPOINT_TAKEN as i32)
    );
    // Registered during a call.
    assert_eq!(call_text(&n, "register", "n.late echo").unwrap(), "0");
    assert_eq!(h.rpc_call("n.late", b"late").unwrap(), "late");
    // Unload removes the plugin's endpoints; the other plugin's stay.
    drop(n);
    assert_eq!(h.unload("nat"), KEEL_OK);
    assert_eq!(h.rpc_list(), vec![s("w.hello", "wcap", "hello")]);
    assert_eq!(h.rpc_call("n.greet", b""), Err(KEEL_ERR_RPC_ENDPOINT_NOT_FOUND));
    assert_eq!(call(resolved.0, f, b"ping", &out), KEEL_ERR_PLUGIN_UNLOADED);
    assert_eq!(h.rpc_call("w.hello", b"").unwrap(), "hi");
    drop(w);
    assert_eq!(h.unload("wcap"), KEEL_OK);
    assert!(h.rpc_list().is_empty());
}

#[test]
fn reload_keeps_series_and_endpoints_follow_the_new_generation() {
    let dir = common::tempdir("capmetrics-reload");
    let h = TestHost::new();
    h.allow(ALL);
    let caps = ["metrics:write", "rpc:register"];
    let m = native(
        &dir,
        "nat",
        &[],
        &caps,
        serde_json::json!({"endpoints": "a=hello,b=echo"}),
    );
    let p = h.load_plugin(&m).unwrap();
    call_text(&p, "hello", "x").unwrap();
    call_text(&p, "hello", "x").unwrap();
    let requests = |h: &TestHost| {
        h.exposition()
            .get("keel_custom_native_requests_total", &[("plugin", "nat")])
    };
    assert_eq!(requests(&h), Some(2.0));
    let reload = |h: &TestHost| {
        let mut g = 0;
        keel_host_reload(h.0, cstr("nat").as_ptr(), &mut g)
    };

    // v2 registers only "a", bound to another function.
    native(
        &dir,
        "nat",
        &["CAP_TAG=\"v2\""],
        &caps,
        serde_json::json!({"endpoints": "a=echo"}),
    );
    assert_eq!(reload(&h), KEEL_OK, "{}", last_error());
    let s = |a: &str, c: &str| (a.to_string(), "nat".to_string(), c.to_string());
    assert_eq!(h.rpc_list(), vec![s("a", "echo")], "b was not registered again");
    assert_eq!(h.rpc_call("a", b"x").unwrap(), "x");
    assert_eq!(h.rpc_call("b", b""), Err(KEEL_ERR_RPC_ENDPOINT_NOT_FOUND));
    // The counter kept counting across the reload.
    assert_eq!(requests(&h), Some(2.0));
    assert!(call_text(&p, "hello", "x").unwrap().starts_with("hello from v2"));
    assert_eq!(requests(&h), Some(3.0));

    // A reload whose init fails after registering: rolled back, endpoints as before.
    native(
        &dir,
        "nat",
        &["CAP_TAG=\"v3\""],
        &caps,
        serde_json::json!({"endpoints": "a=hello,c=hello", "fail_init": "yes"}),
    );
    assert_eq!(reload(&h), KEEL_ERR_INIT_FAILED);
    assert_eq!(h.rpc_list(), vec![s("a", "echo")]);
    assert_eq!(h.rpc_call("a", b"y").unwrap(), "y");
    assert_eq!(requests(&h), Some(3.0));

    // A first load whose init fails leaves no endpoint and no series behind.
    let bad = native(
        &dir,
        "broken",
        &[],
        &caps,
        serde_json::json!({"endpoints": "z=hello", "fail_init": "yes"}),
    );
    assert_eq!(h.load(&bad).err(), Some(KEEL_ERR_INIT_FAILED));
    assert_eq!(h.rpc_list(), vec![s("a", "echo")]);
    let e = h.exposition();
    assert!(!e
        .samples_named("keel_custom_native_requests_total")
        .any(|s| s.labels["plugin"] == "broken"));
}

#[test]
fn network_egress_is_gone_a_manifest_naming_it_is_refused_as_unknown() {
    let dir = common::tempdir("capmetrics-egress");
    let h = TestHost::new();
    let m = native(&dir, "egress", &[], &["log", "network:egress"], serde_json::json!({}));
    assert_eq!(h.load(&m).err(), Some(KEEL_ERR_CAPABILITY_UNKNOWN));
    let msg = last_error();
    assert!(msg.contains("network:egress") && msg.contains("removed"), "{msg}");
    // Not in the registry: no bit, and an allowlist naming it is refused.
    let mut bit = 0;
    assert_eq!(
        keel::ffi::deps::keel_capability_bit(cstr("network:egress").as_ptr(), &mut bit),
        KEEL_ERR_CAPABILITY_UNKNOWN
    );
    let owned = [cstr("log"), cstr("network:egress")];
    let ptrs: Vec<_> = owned.iter().map(|c| c.as_ptr()).collect();
    assert_eq!(
        keel_host_set_capability_allowlist(h.0, ptrs.as_ptr(), ptrs.len()),
        KEEL_ERR_CAPABILITY_UNKNOWN
    );
    assert!(keel::capability::REGISTRY
        .iter()
        .all(|(n, _, _)| *n != "network:egress"));
    // The host keeps serving.
    let ok = native(&dir, "fine", &[], &["log"], serde_json::json!({}));
    assert!(h.load_plugin(&ok).is_ok());
}
