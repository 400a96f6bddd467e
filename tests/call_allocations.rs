//! The hot call path allocates nothing: after a warm-up call, `keel_call` of a native plugin
//! and of a WASM plugin on each engine (and through options: deadline and cancel token) makes
//! no heap allocation on the calling thread. A global allocator of this test binary counts the
//! allocations each thread makes (other threads — the watchdog, the reclaimer — are not
//! counted: their work is not on the caller's path). What a thread allocates once per plugin
//! (its histogram row) happens during a warm-up.

#[path = "common/mod.rs"]
mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::Path;
use std::ptr;

use keel::ffi::call::{keel_call_options, keel_call_with, keel_cancel_token_free, keel_cancel_token_new};
use keel::ffi::host::keel_call;
use keel::keel_status::*;
use serde_json::json;

use common::capi::{function, last_error, Buf, TestHost};

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every method forwards to the system allocator unchanged; counting touches only a
// const-initialised thread-local `Cell` (no allocation, no reentrancy into the allocator).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: forwarded with the caller's layout (GlobalAlloc contract).
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        // SAFETY: `p` came from `alloc`/`realloc` above with this layout.
        unsafe { System.dealloc(p, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: as `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: `p` came from this allocator with `layout` (GlobalAlloc contract).
        unsafe { System.realloc(p, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCS.with(|c| c.get())
}

/// Allocations made by `n` calls of `f` after 256 warm-up calls (what a thread allocates once
/// per plugin happens there: e.g. its row of the latency histogram, made at its first sampled
/// call — latency is sampled 1 call in 64).
fn allocations_of(n: u32, mut f: impl FnMut()) -> u64 {
    for _ in 0..256 {
        f();
    }
    let before = allocations();
    for _ in 0..n {
        f();
    }
    allocations() - before
}

fn wasm_plugin(dir: &Path, engine: &str) -> std::path::PathBuf {
    let wasm = wat::parse_file(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wasm/echo.wat")).unwrap();
    std::fs::write(dir.join("echo.wasm"), &wasm).unwrap();
    let m = json!({
        "manifest_version": 1, "name": "wecho", "version": "1.0.0", "runtime": "wasm",
        "binary": {"wasm32": "echo.wasm"}, "sha256": common::sha256_file(&dir.join("echo.wasm")),
        "wasm_engine": engine,
    });
    let p = dir.join("keel.json");
    std::fs::write(&p, serde_json::to_vec(&m).unwrap()).unwrap();
    p
}

fn check_no_allocations(t: &TestHost, manifest: &Path, what: &str) {
    let p = t
        .load(manifest)
        .unwrap_or_else(|s| panic!("{what}: load {s:?}: {}", last_error()));
    let f = function(p, "echo").unwrap();
    let out = Buf::new();
    let input = [7u8; 64];
    // Plain keel_call.
    let n = allocations_of(1000, || {
        assert_eq!(
            keel_call(p, f, input.as_ptr(), input.len(), out.0),
            KEEL_OK,
            "{}",
            last_error()
        );
    });
    assert_eq!(n, 0, "{what}: keel_call allocated {n} times in 1000 calls");
    // With options: a deadline and a cancel token.
    let mut token = ptr::null_mut();
    assert_eq!(keel_cancel_token_new(&mut token), KEEL_OK);
    let opts = keel_call_options {
        struct_size: std::mem::size_of::<keel_call_options>() as u32,
        flags: 0,
        deadline_us: 5_000_000,
        fuel: 0,
        cancel: token,
        user_context: ptr::null_mut(),
        tenant: ptr::null(),
        traceparent: ptr::null(),
    };
    let n = allocations_of(1000, || {
        assert_eq!(
            keel_call_with(p, f, input.as_ptr(), input.len(), &opts, out.0),
            KEEL_OK,
            "{}",
            last_error()
        );
    });
    assert_eq!(n, 0, "{what}: keel_call_with allocated {n} times in 1000 calls");
    assert_eq!(keel_cancel_token_free(token), KEEL_OK);
    assert_eq!(keel::ffi::host::keel_plugin_free(p), KEEL_OK);
}

#[test]
fn steady_state_calls_do_not_allocate() {
    // Native: the echo fixture.
    let dir = common::tempdir("alloc-native");
    let so = common::build_native("echo", &[], &dir, "libecho.so");
    let m = common::write_manifest(&dir, "echo", "1.0.0", &so, json!({}));
    let t = TestHost::new();
    check_no_allocations(&t, &m, "native");
    // WASM on each engine (the node lets the manifest choose).
    for engine in ["wasmer", "wasmtime"] {
        let dir = common::tempdir(&format!("alloc-{engine}"));
        let m = wasm_plugin(&dir, engine);
        let t = TestHost::new();
        let e = if engine == "wasmer" {
            keel::ffi::wasm::keel_wasm_engine::KEEL_WASM_ENGINE_WASMER as u32
        } else {
            keel::ffi::wasm::keel_wasm_engine::KEEL_WASM_ENGINE_WASMTIME as u32
        };
        assert_eq!(keel::ffi::wasm::keel_host_set_wasm_engine(t.0, e, true), KEEL_OK);
        check_no_allocations(&t, &m, engine);
    }
}
