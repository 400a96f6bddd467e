//! A sequence of C ABI operations in random order on random inputs: load, get, resolve,
//! call, reload (switching the manifest between two real versions), unload, handle free,
//! buffer new/free, and loads of fuzzed manifest bytes, on a fresh host per input. Real
//! fixtures, built once per process with the system C compiler (the echo plugin from
//! tests/fixtures/native/echo.c in two versions) and the `wat` crate (the WASM echo fixture).
//!
//! Oracles: no panic reaches the boundary (`KEEL_ERR_PANIC`), no `KEEL_ERR_INTERNAL`; an echo
//! call that succeeds returns its input; `tag` answers the version the last reload installed;
//! a plugin that loaded or reloaded is found by name until it is unloaded, and not after.
//!
//! Shared by the fuzz target (tests/fuzz/fuzz_targets) and the suite, which replays the
//! checked-in corpus through it (tests/suite/fuzz_corpus.rs).

use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::ptr;
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use keel::ffi::host::*;
use keel::ffi::keel_last_error_message;
use keel::ffi::trust::keel_host_set_require_signature;
use keel::keel_status::{self, *};

/// Functions of the echo fixture that return promptly (not `sleep_ms`, `block_until`, and
/// not `log`, which writes to stderr), plus names no version has.
const FUNCTIONS: &[&str] = &[
    "echo",
    "fail",
    "tag",
    "hostcaps",
    "kv_put",
    "kv_get",
    "sum",
    "nope",
    "add",
    "config",
    "big_output",
    "bad_output",
];
const NAMES: &[&str] = &["echo", "wecho", "fuzzed", "missing"];

struct Fixtures {
    dir: PathBuf,
    /// Manifests by index: 0 echo (the switchable one), 1 wecho (WASM), 2 tampered, 3 abi2,
    /// 4 fuzzed bytes (rewritten by `LoadBytes`), 5 missing file.
    manifests: Vec<CString>,
    v1: Vec<u8>,
    v2: Vec<u8>,
}

/// The repository root (the fuzz crate's manifest is two levels down, the suite's at the root).
fn repo() -> PathBuf {
    let mut dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    while !dir.join("include/keel/keel.h").exists() {
        assert!(dir.pop(), "the repository root is above {}", env!("CARGO_MANIFEST_DIR"));
    }
    dir
}

fn cc(dir: &Path, out: &str, defines: &[&str]) -> PathBuf {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let path = dir.join(out);
    let mut cmd = Command::new(&cc);
    cmd.args(["-shared", "-fPIC", "-O1"])
        .arg("-I")
        .arg(repo().join("include"))
        .arg("-o")
        .arg(&path)
        .arg(repo().join("tests/fixtures/native/echo.c"));
    for d in defines {
        cmd.arg(format!("-D{d}"));
    }
    assert!(
        cmd.status().expect("running the C compiler").success(),
        "building the echo fixture"
    );
    path
}

fn sha256_hex(bytes: &[u8]) -> String {
    keel::trust::digest::sha256_hex(bytes)
}

fn manifest(name: &str, runtime: &str, key: &str, binary: &str, sha: &str) -> Vec<u8> {
    serde_json::to_vec_pretty(&serde_json::json!({
        "manifest_version": 1,
        "name": name,
        "version": "1.0.0",
        "runtime": runtime,
        "binary": { key: binary },
        "sha256": sha,
        "capabilities": ["kv:read", "kv:write"],
    }))
    .unwrap()
}

fn fixtures() -> &'static Fixtures {
    static F: OnceLock<Fixtures> = OnceLock::new();
    F.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("keel-fuzz-capi-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let so1 = cc(&dir, "libecho1.so", &["ECHO_TAG=\"v1\""]);
        let so2 = cc(&dir, "libecho2.so", &["ECHO_TAG=\"v2\""]);
        let abi2 = cc(&dir, "libabi2.so", &["ECHO_ABI=2"]);
        let wasm = wat::parse_file(repo().join("tests/fixtures/wasm/echo.wat")).unwrap();
        std::fs::write(dir.join("echo.wasm"), &wasm).unwrap();
        let h = |p: &Path| sha256_hex(&std::fs::read(p).unwrap());
        let v1 = manifest("echo", "native", "linux", "libecho1.so", &h(&so1));
        let v2 = manifest("echo", "native", "linux", "libecho2.so", &h(&so2));
        std::fs::write(dir.join("echo.json"), &v1).unwrap();
        std::fs::write(
            dir.join("wecho.json"),
            manifest("wecho", "wasm", "wasm32", "echo.wasm", &sha256_hex(&wasm)),
        )
        .unwrap();
        // The v1 manifest pinning v2's binary: a digest mismatch.
        std::fs::write(
            dir.join("tampered.json"),
            manifest("echo", "native", "linux", "libecho2.so", &h(&so1)),
        )
        .unwrap();
        std::fs::write(
            dir.join("abi2.json"),
            manifest("echo", "native", "linux", "libabi2.so", &h(&abi2)),
        )
        .unwrap();
        std::fs::write(dir.join("fuzzed.json"), b"{}").unwrap();
        let manifests = [
            "echo.json",
            "wecho.json",
            "tampered.json",
            "abi2.json",
            "fuzzed.json",
            "missing.json",
        ]
        .iter()
        .map(|n| CString::new(dir.join(n).to_str().unwrap()).unwrap())
        .collect();
        Fixtures { dir, manifests, v1, v2 }
    })
}

#[derive(Arbitrary, Debug)]
pub enum Op {
    Load(u8),
    LoadNoHandle(u8),
    /// Write these bytes as `fuzzed.json` and load it.
    LoadBytes(Vec<u8>),
    Get(u8),
    Function(u8, u8),
    Call(u8, u8, Vec<u8>),
    /// `keel_call` with a raw function id (resolved or not).
    CallRaw(u8, u32),
    Generation(u8),
    /// Switch `echo.json` to version 1 (false) or 2 (true), then reload.
    Reload(u8, bool),
    Unload(u8),
    UnloadCascade(u8),
    FreeHandle(u8),
    NewBuffer,
    FreeBuffer(u8),
    NullArgs(u8),
}

fn ok_status(s: keel_status) {
    assert!(s != KEEL_ERR_PANIC && s != KEEL_ERR_INTERNAL, "{s:?}: {}", last_error());
}

fn last_error() -> String {
    let mut p = ptr::null();
    assert_eq!(keel_last_error_message(&mut p), KEEL_OK);
    // SAFETY: Keel returns a NUL-terminated string valid until the thread's next Keel call.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

fn name(i: u8) -> CString {
    CString::new(NAMES[i as usize % NAMES.len()]).unwrap()
}

struct Handle {
    p: *mut keel_plugin,
    /// Resolved function ids, with the name they were resolved for.
    functions: Vec<(keel_function, &'static str)>,
}

/// One input: never panics; the oracles above hold.
pub fn run(ops: Vec<Op>) {
    let f = fixtures();
    std::fs::write(f.dir.join("echo.json"), &f.v1).unwrap();
    let mut tag_now = "v1";
    let mut host = ptr::null_mut();
    assert_eq!(keel_host_new(&mut host), KEEL_OK);
    assert_eq!(keel_host_set_require_signature(host, false), KEEL_OK);
    assert_eq!(keel_host_set_drain_timeout_ms(host, 200), KEEL_OK);
    let mut handles: Vec<Handle> = Vec::new();
    let mut buffers: Vec<*mut keel_buffer> = Vec::new();
    let mut b = ptr::null_mut();
    assert_eq!(keel_buffer_new(&mut b), KEEL_OK);
    buffers.push(b);

    for op in ops.into_iter().take(64) {
        match op {
            Op::Load(i) | Op::LoadNoHandle(i) if (i as usize % f.manifests.len()) == 4 => {
                // Index 4 is whatever LoadBytes wrote last; load it like any other.
                let mut p = ptr::null_mut();
                let s = keel_host_load(host, f.manifests[4].as_ptr(), &mut p);
                ok_status(s);
                if s == KEEL_OK {
                    handles.push(Handle { p, functions: vec![] });
                }
            }
            Op::Load(i) => {
                let m = &f.manifests[i as usize % f.manifests.len()];
                let mut p = ptr::null_mut();
                let s = keel_host_load(host, m.as_ptr(), &mut p);
                ok_status(s);
                if s == KEEL_OK {
                    assert!(!p.is_null());
                    handles.push(Handle { p, functions: vec![] });
                    if (i as usize).is_multiple_of(f.manifests.len()) {
                        tag_now = if std::fs::read(f.dir.join("echo.json")).unwrap() == f.v2 {
                            "v2"
                        } else {
                            "v1"
                        };
                    }
                } else {
                    assert!(p.is_null(), "a failed load handed out a handle");
                }
            }
            Op::LoadNoHandle(i) => {
                let m = &f.manifests[i as usize % f.manifests.len()];
                let s = keel_host_load(host, m.as_ptr(), ptr::null_mut());
                ok_status(s);
                if s == KEEL_OK && (i as usize).is_multiple_of(f.manifests.len()) {
                    tag_now = if std::fs::read(f.dir.join("echo.json")).unwrap() == f.v2 {
                        "v2"
                    } else {
                        "v1"
                    };
                }
            }
            Op::LoadBytes(bytes) => {
                std::fs::write(f.dir.join("fuzzed.json"), &bytes).unwrap();
                let s = keel_host_load(host, f.manifests[4].as_ptr(), ptr::null_mut());
                ok_status(s);
            }
            Op::Get(n) => {
                let mut p = ptr::null_mut();
                let s = keel_plugin_get(host, name(n).as_ptr(), &mut p);
                ok_status(s);
                if s == KEEL_OK {
                    handles.push(Handle { p, functions: vec![] });
                } else {
                    assert_eq!(s, KEEL_ERR_PLUGIN_NOT_FOUND, "{}", last_error());
                }
            }
            Op::Function(h, fi) => {
                let at = h as usize % handles.len().max(1);
                let Some(hd) = handles.get_mut(at) else {
                    continue;
                };
                let fname = FUNCTIONS[fi as usize % FUNCTIONS.len()];
                let c = CString::new(fname).unwrap();
                let mut id = u32::MAX;
                let s = keel_plugin_function(hd.p, c.as_ptr(), &mut id);
                ok_status(s);
                if s == KEEL_OK {
                    hd.functions.push((id, fname));
                }
            }
            Op::Call(h, fi, input) => {
                let nb = buffers.len();
                let Some(hd) = handles.get(h as usize % handles.len().max(1)) else {
                    continue;
                };
                let Some(&(id, fname)) = hd.functions.get(fi as usize % hd.functions.len().max(1)) else {
                    continue;
                };
                let out = if nb == 0 {
                    ptr::null_mut()
                } else {
                    buffers[fi as usize % nb]
                };
                let s = keel_call(hd.p, id, input.as_ptr(), input.len(), out);
                ok_status(s);
                if out.is_null() {
                    assert_eq!(s, KEEL_ERR_NULL_POINTER);
                    continue;
                }
                let mut d = ptr::null();
                let mut n = 0usize;
                assert_eq!(keel_buffer_data(out, &mut d, &mut n), KEEL_OK);
                let got = if n == 0 {
                    &[][..]
                } else {
                    // SAFETY: Keel's buffer holds `n` bytes at `d` until its next use.
                    unsafe { std::slice::from_raw_parts(d, n) }
                };
                if s == KEEL_OK && fname == "echo" {
                    assert_eq!(got, &input[..], "echo returned something else");
                } else if s != KEEL_OK {
                    assert!(got.is_empty(), "a failed call left {} bytes in the buffer", got.len());
                }
            }
            Op::CallRaw(h, id) => {
                let Some(hd) = handles.get(h as usize % handles.len().max(1)) else {
                    continue;
                };
                let Some(&out) = buffers.first() else { continue };
                // Ids are per plugin: any id resolved so far names a prompt function (only
                // FUNCTIONS are ever resolved), and an unresolved one must be refused.
                if hd.functions.iter().any(|(i, _)| *i == id) {
                    continue;
                }
                let s = keel_call(hd.p, id, ptr::null(), 0, out);
                ok_status(s);
            }
            Op::Generation(h) => {
                let Some(hd) = handles.get(h as usize % handles.len().max(1)) else {
                    continue;
                };
                let mut g = 0;
                let s = keel_plugin_generation(hd.p, &mut g);
                ok_status(s);
                if s == KEEL_OK {
                    assert!(g >= 1);
                }
            }
            Op::Reload(n, second) => {
                let text = if second { &f.v2 } else { &f.v1 };
                std::fs::write(f.dir.join("echo.json"), text).unwrap();
                let nm = name(n);
                let mut g = 0;
                let s = keel_host_reload(host, nm.as_ptr(), &mut g);
                ok_status(s);
                if s == KEEL_OK && nm.as_bytes() == b"echo" {
                    tag_now = if second { "v2" } else { "v1" };
                    // The new generation answers.
                    let mut p = ptr::null_mut();
                    assert_eq!(keel_plugin_get(host, nm.as_ptr(), &mut p), KEEL_OK);
                    let tag = CString::new("tag").unwrap();
                    let mut id = 0;
                    assert_eq!(keel_plugin_function(p, tag.as_ptr(), &mut id), KEEL_OK);
                    let mut out = ptr::null_mut();
                    assert_eq!(keel_buffer_new(&mut out), KEEL_OK);
                    assert_eq!(keel_call(p, id, ptr::null(), 0, out), KEEL_OK, "{}", last_error());
                    let mut d = ptr::null();
                    let mut len = 0usize;
                    assert_eq!(keel_buffer_data(out, &mut d, &mut len), KEEL_OK);
                    // SAFETY: as above.
                    let got = unsafe { std::slice::from_raw_parts(d, len) };
                    assert_eq!(got, tag_now.as_bytes(), "reload did not install the new version");
                    assert_eq!(keel_buffer_free(out), KEEL_OK);
                    assert_eq!(keel_plugin_free(p), KEEL_OK);
                }
            }
            Op::Unload(n) | Op::UnloadCascade(n) => {
                let nm = name(n);
                let s = if matches!(op, Op::Unload(_)) {
                    keel_host_unload(host, nm.as_ptr())
                } else {
                    keel_host_unload_cascade(host, nm.as_ptr())
                };
                ok_status(s);
                if s == KEEL_OK || s == KEEL_ERR_DRAIN_TIMEOUT {
                    let mut p = ptr::null_mut();
                    assert_eq!(keel_plugin_get(host, nm.as_ptr(), &mut p), KEEL_ERR_PLUGIN_NOT_FOUND);
                    assert!(p.is_null());
                }
            }
            Op::FreeHandle(h) => {
                if !handles.is_empty() {
                    let hd = handles.swap_remove(h as usize % handles.len());
                    assert_eq!(keel_plugin_free(hd.p), KEEL_OK);
                }
            }
            Op::NewBuffer => {
                let mut b = ptr::null_mut();
                assert_eq!(keel_buffer_new(&mut b), KEEL_OK);
                buffers.push(b);
            }
            Op::FreeBuffer(i) => {
                if !buffers.is_empty() {
                    let b = buffers.swap_remove(i as usize % buffers.len());
                    assert_eq!(keel_buffer_free(b), KEEL_OK);
                }
            }
            Op::NullArgs(which) => {
                let nm = name(0);
                let s = match which % 6 {
                    0 => keel_host_load(ptr::null(), f.manifests[0].as_ptr(), ptr::null_mut()),
                    1 => keel_host_load(host, ptr::null(), ptr::null_mut()),
                    2 => keel_plugin_get(host, nm.as_ptr(), ptr::null_mut()),
                    3 => keel_call(ptr::null(), 0, ptr::null(), 0, ptr::null_mut()),
                    4 => keel_host_reload(host, ptr::null(), ptr::null_mut()),
                    _ => keel_call(ptr::null(), 0, ptr::null(), 5, ptr::null_mut()),
                };
                assert_eq!(s, KEEL_ERR_NULL_POINTER, "{}", last_error());
            }
        }
    }
    let _ = tag_now;
    for hd in handles {
        assert_eq!(keel_plugin_free(hd.p), KEEL_OK);
    }
    for b in buffers {
        assert_eq!(keel_buffer_free(b), KEEL_OK);
    }
    assert_eq!(keel_host_free(host), KEEL_OK);
}
