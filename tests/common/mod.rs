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
        // ThemisDB's include root as ThemisDB lays it out (`#include <plugins/plugin_interface.h>`).
        .arg("-I")
        .arg(repo().join("tests/fixtures/themis/themisdb/include"))
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

/// Let a fresh host load unsigned plugins (tests of everything but trust). In the isolated
/// re-run ([`isolated_run`]) it also requires isolation for every native plugin.
pub fn allow_unsigned(host: *mut keel::ffi::host::keel_host) {
    assert_eq!(
        keel::ffi::trust::keel_host_set_require_signature(host, false),
        keel::keel_status::KEEL_OK
    );
    isolate_if_asked(host);
}

/// The environment variable that re-runs the native tests with every native plugin isolated
/// (docs/isolation.md): the `cargo_test_isolated` ctest entry sets it.
pub const ISOLATED_ENV: &str = "KEEL_TEST_ISOLATION";

/// Whether this run drives every native plugin through a sandbox process: the tests' host
/// constructors ([`host`], [`capi::TestHost::new`], [`isolate_if_asked`]) require isolation
/// for all native plugins, with the launcher this test build compiled.
pub fn isolated_run() -> bool {
    std::env::var_os(ISOLATED_ENV).is_some_and(|v| !v.is_empty() && v != "0")
}

/// In the isolated re-run, whether to skip a test that cannot hold there (it says why on
/// stderr). The reasons are few and fixed: the fixture signals through files (the echo
/// fixture's `marker` and `block_until`), and a sandbox has no file system.
pub fn skip_when_isolated(why: &str) -> bool {
    if isolated_run() {
        eprintln!("isolated re-run: skipped: {why}");
    }
    isolated_run()
}

/// Why the echo fixture's file-based tests cannot run isolated.
pub const NEEDS_FILES: &str =
    "the echo fixture signals through files (block_until, shutdown marker) and a sandbox has no file system";

/// The `keel-sandbox` launcher of this test build.
pub fn sandbox_launcher() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_keel-sandbox"))
}

/// A fresh host (Rust API), with every native plugin isolated in the isolated re-run.
pub fn host() -> keel::Host {
    let h = keel::Host::new();
    if isolated_run() {
        h.set_native_isolation(true, Some(sandbox_launcher())).unwrap();
    }
    h
}

/// In the isolated re-run, require isolation for every native plugin of a host made through
/// the C ABI (`keel_host_new`).
pub fn isolate_if_asked(host: *mut keel::ffi::host::keel_host) {
    if isolated_run() {
        let l = std::ffi::CString::new(sandbox_launcher().to_str().unwrap()).unwrap();
        assert_eq!(
            keel::ffi::isolation::keel_host_set_native_isolation(host, true, l.as_ptr()),
            keel::keel_status::KEEL_OK
        );
    }
}

/// The C ABI as the tests drive it: a host, plugin handles, output buffers and the thread's
/// last error. Test files add their own calls with `impl common::capi::TestHost { .. }` (or
/// `Plugin`) blocks next to their tests.
pub mod capi {
    use std::ffi::{CStr, CString};
    use std::path::Path;
    use std::ptr;

    use keel::ffi::host::*;
    use keel::ffi::keel_last_error_message;
    use keel::keel_status::{self, *};

    /// The calling thread's last error message.
    pub fn last_error() -> String {
        let mut p = ptr::null();
        assert_eq!(keel_last_error_message(&mut p), KEEL_OK);
        // SAFETY: keel_last_error_message succeeded: p is a NUL-terminated string valid until the next call on this thread.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }

    pub fn cstr(s: &str) -> CString {
        CString::new(s).unwrap()
    }

    /// A host that loads unsigned plugins; freed (asserting `KEEL_OK`) when dropped.
    pub struct TestHost(pub *mut keel_host);

    impl TestHost {
        pub fn new() -> TestHost {
            let mut h = ptr::null_mut();
            assert_eq!(keel_host_new(&mut h), KEEL_OK);
            super::allow_unsigned(h);
            TestHost(h)
        }

        /// `keel_host_load`: a raw handle the caller releases with `keel_plugin_free`.
        pub fn load(&self, manifest: &Path) -> Result<*mut keel_plugin, keel_status> {
            let c = cstr(manifest.to_str().unwrap());
            let mut p = ptr::null_mut();
            match keel_host_load(self.0, c.as_ptr(), &mut p) {
                KEEL_OK => Ok(p),
                s => Err(s),
            }
        }

        /// `keel_host_load` into an owned [`Plugin`].
        pub fn load_plugin(&self, manifest: &Path) -> Result<Plugin, keel_status> {
            self.load(manifest).map(Plugin)
        }

        /// A handle to a loaded plugin, or the status of the lookup.
        pub fn get(&self, name: &str) -> Result<Plugin, keel_status> {
            let mut p = ptr::null_mut();
            match keel_plugin_get(self.0, cstr(name).as_ptr(), &mut p) {
                KEEL_OK => Ok(Plugin(p)),
                s => Err(s),
            }
        }

        pub fn unload(&self, name: &str) -> keel_status {
            keel_host_unload(self.0, cstr(name).as_ptr())
        }
    }

    impl Drop for TestHost {
        fn drop(&mut self) {
            assert_eq!(keel_host_free(self.0), KEEL_OK);
        }
    }

    /// A plugin handle, released with `keel_plugin_free` when dropped.
    pub struct Plugin(pub *mut keel_plugin);

    impl Plugin {
        pub fn function(&self, name: &str) -> Result<keel_function, keel_status> {
            function(self.0, name)
        }
    }

    impl Drop for Plugin {
        fn drop(&mut self) {
            keel_plugin_free(self.0);
        }
    }

    /// A `keel_buffer`, freed when dropped.
    pub struct Buf(pub *mut keel_buffer);

    impl Buf {
        pub fn new() -> Buf {
            let mut b = ptr::null_mut();
            assert_eq!(keel_buffer_new(&mut b), KEEL_OK);
            Buf(b)
        }

        pub fn bytes(&self) -> Vec<u8> {
            let mut d = ptr::null();
            let mut n = 0;
            assert_eq!(keel_buffer_data(self.0, &mut d, &mut n), KEEL_OK);
            if n == 0 {
                return vec![];
            }
            // SAFETY: keel_buffer_data returned a pointer to n bytes the buffer owns; copied before the next write.
            unsafe { std::slice::from_raw_parts(d, n) }.to_vec()
        }

        pub fn text(&self) -> String {
            String::from_utf8(self.bytes()).unwrap()
        }
    }

    impl Drop for Buf {
        fn drop(&mut self) {
            keel_buffer_free(self.0);
        }
    }

    /// `keel_plugin_function`: the id of `name`, or the status.
    pub fn function(p: *const keel_plugin, name: &str) -> Result<keel_function, keel_status> {
        let c = cstr(name);
        let mut f = 0;
        match keel_plugin_function(p, c.as_ptr(), &mut f) {
            KEEL_OK => Ok(f),
            s => Err(s),
        }
    }

    /// `keel_call` with `input`, the result into `out`.
    pub fn call(p: *const keel_plugin, f: keel_function, input: &[u8], out: &Buf) -> keel_status {
        keel_call(p, f, input.as_ptr(), input.len(), out.0)
    }
}
