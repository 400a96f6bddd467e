//! Shared by the benches (`mod common;`; cargo takes only `benches/*.rs` as bench targets, so
//! this file is none): the echo fixture built for measuring, and a plugin loaded through the
//! C ABI with one function resolved.
#![allow(dead_code)]

use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};
use std::process::Command;

use keel::ffi::host::*;
use keel::keel_status::{self, KEEL_OK};

/// Build `tests/fixtures/native/echo.c` (-O2) into `<repo>/target/<dir_name>/libecho.so`
/// and write `echo.json` next to it, pinning its digest. Returns (library, manifest).
pub fn echo_fixture(dir_name: &str) -> (PathBuf, PathBuf) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("target").join(dir_name);
    std::fs::create_dir_all(&dir).unwrap();
    let so = dir.join("libecho.so");
    let st = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-shared", "-fPIC", "-O2", "-I"])
        .arg(root.join("include"))
        .arg("-o")
        .arg(&so)
        .arg(root.join("tests/fixtures/native/echo.c"))
        .status()
        .expect("run cc");
    assert!(st.success());
    let digest = keel::trust::digest::sha256_hex(&std::fs::read(&so).unwrap());
    let manifest = dir.join("echo.json");
    std::fs::write(
        &manifest,
        serde_json::json!({
            "manifest_version": 1, "name": "echo", "version": "1.0.0", "runtime": "native",
            "binary": {"linux": "libecho.so"}, "sha256": digest
        })
        .to_string(),
    )
    .unwrap();
    (so, manifest)
}

/// A host (unsigned plugins allowed) with the plugin of `manifest` loaded and its function
/// `function` resolved; plugin handle and host are freed when dropped.
pub struct Loaded {
    pub host: *mut keel_host,
    pub plugin: *mut keel_plugin,
    pub function: keel_function,
}

// The C ABI's host and plugin calls are thread-safe; buffers stay per thread.
// SAFETY: the C ABI documents host and plugin handles as thread-safe; buffers are per thread.
unsafe impl Send for Loaded {}
// SAFETY: the C ABI documents host and plugin handles as thread-safe; buffers are per thread.
unsafe impl Sync for Loaded {}

impl Loaded {
    pub fn new(manifest: &Path, function: &CStr) -> Loaded {
        Loaded::with_setup(manifest, function, |_| {})
    }

    /// As [`Loaded::new`], running `setup` on the fresh host before the load.
    pub fn with_setup(manifest: &Path, function: &CStr, setup: impl FnOnce(*mut keel_host)) -> Loaded {
        let mut host = std::ptr::null_mut();
        assert_eq!(keel_host_new(&mut host), KEEL_OK);
        assert_eq!(keel::ffi::trust::keel_host_set_require_signature(host, false), KEEL_OK);
        setup(host);
        let path = CString::new(manifest.to_str().unwrap()).unwrap();
        let mut plugin = std::ptr::null_mut();
        assert_eq!(keel_host_load(host, path.as_ptr(), &mut plugin), KEEL_OK);
        let mut f = 0;
        assert_eq!(keel_plugin_function(plugin, function.as_ptr(), &mut f), KEEL_OK);
        Loaded {
            host,
            plugin,
            function: f,
        }
    }

    /// `keel_call` of the resolved function with `input`, the result into `out`.
    #[inline]
    pub fn call(&self, input: &[u8], out: *mut keel_buffer) -> keel_status {
        keel_call(self.plugin, self.function, input.as_ptr(), input.len(), out)
    }
}

impl Drop for Loaded {
    fn drop(&mut self) {
        keel_plugin_free(self.plugin);
        keel_host_free(self.host);
    }
}

/// A `keel_buffer`, freed when dropped.
pub struct Buffer(pub *mut keel_buffer);

impl Buffer {
    pub fn new() -> Buffer {
        let mut b = std::ptr::null_mut();
        assert_eq!(keel_buffer_new(&mut b), KEEL_OK);
        Buffer(b)
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        keel_buffer_free(self.0);
    }
}
