//! Shared helpers for integration tests: build fixture plugins with the system C compiler
//! and write manifests pinning their digests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A fresh directory under the cargo target tmp dir.
pub fn tempdir(tag: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Compile `tests/fixtures/native/<src>.c` with `defines` into `<dir>/<out_name>`.
/// Builds go to a temporary name and are renamed into place, so parallel tests never see a
/// half-written library.
pub fn build_native(src: &str, defines: &[&str], dir: &Path, out_name: &str) -> PathBuf {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = dir.join(out_name);
    let tmp = dir.join(format!(".{out_name}.{}.tmp", std::process::id()));
    let mut cmd = Command::new(&cc);
    cmd.args(["-shared", "-fPIC", "-O1", "-Wall", "-Wextra", "-Werror"])
        .arg("-I")
        .arg(repo().join("include"))
        .arg("-o")
        .arg(&tmp)
        .arg(repo().join(format!("tests/fixtures/native/{src}.c")));
    for d in defines {
        cmd.arg(format!("-D{d}"));
    }
    let st = cmd.status().unwrap_or_else(|e| panic!("running {cc}: {e}"));
    assert!(st.success(), "compiling fixture {src} failed");
    std::fs::rename(&tmp, &out).unwrap();
    out
}

/// Compile the C++ fixture `tests/fixtures/<src>` (e.g. `themis/legacy_plugin.cpp`, C++17,
/// `-Wall -Wextra -Werror`) with `defines` into `<dir>/<out_name>`, like [`build_native`].
pub fn build_cxx(src: &str, defines: &[&str], dir: &Path, out_name: &str) -> PathBuf {
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let out = dir.join(out_name);
    let tmp = dir.join(format!(".{out_name}.{}.tmp", std::process::id()));
    let mut cmd = Command::new(&cxx);
    cmd.args(["-shared", "-fPIC", "-std=c++17", "-O1", "-Wall", "-Wextra", "-Werror"])
        .arg("-I")
        .arg(repo().join("include"))
        .arg("-o")
        .arg(&tmp)
        .arg(repo().join("tests/fixtures").join(src));
    for d in defines {
        cmd.arg(format!("-D{d}"));
    }
    let st = cmd.status().unwrap_or_else(|e| panic!("running {cxx}: {e}"));
    assert!(st.success(), "compiling fixture {src} failed");
    std::fs::rename(&tmp, &out).unwrap();
    out
}

pub fn sha256_file(p: &Path) -> String {
    keel::trust::digest::sha256_hex(&std::fs::read(p).unwrap())
}

/// Write a Keel manifest for `binary` (in the same directory) and return its path.
pub fn write_manifest(dir: &Path, name: &str, version: &str, binary: &Path, extra: serde_json::Value) -> PathBuf {
    let rel = binary.file_name().unwrap().to_str().unwrap();
    let mut m = serde_json::json!({
        "manifest_version": 1,
        "name": name,
        "version": version,
        "description": format!("test fixture {name}"),
        "runtime": "native",
        "binary": { "linux": rel },
        "sha256": sha256_file(binary),
    });
    if let serde_json::Value::Object(extra) = extra {
        for (k, v) in extra {
            m[k] = v;
        }
    }
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    path
}

/// Build the echo fixture into a fresh directory and write its manifest.
pub fn echo_plugin(tag: &str, defines: &[&str], extra: serde_json::Value) -> (PathBuf, PathBuf) {
    let dir = tempdir(tag);
    let so = build_native("echo", defines, &dir, "libecho.so");
    let manifest = write_manifest(&dir, "echo", "1.0.0", &so, extra);
    (dir, manifest)
}

/// Let a fresh host load unsigned plugins (tests of everything but trust).
pub fn allow_unsigned(host: *mut keel::ffi::host::keel_host) {
    assert_eq!(
        keel::ffi::trust::keel_host_set_require_signature(host, false),
        keel::keel_status::KEEL_OK
    );
}
