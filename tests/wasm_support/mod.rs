//! Shared by tests/wasm.rs and benches/wasm.rs: fixtures, manifests and the C builds.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use keel::artifact::{self, Verified};
use keel::capability::Capabilities;
use keel::manifest::{self, Manifest};
use keel::runtime::{HostServices, LoadContext};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture_dir() -> PathBuf {
    repo().join("tests/fixtures/wasm")
}

/// A WAT fixture compiled to WASM bytes by the `wat` crate.
pub fn wat_fixture(name: &str) -> Vec<u8> {
    let path = fixture_dir().join(format!("{name}.wat"));
    wat::parse_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A verified artifact of `wasm` (pinned to its own digest: these tests load bytes, not files).
pub fn artifact(wasm: Vec<u8>) -> Verified {
    let art = artifact::from_bytes(wasm);
    let pin = art.sha256_hex();
    art.verify(&pin, "test module")
        .expect("an artifact matches its own digest")
}

/// A validated Keel manifest for a WASM plugin; `extra` is merged into the JSON.
pub fn manifest(name: &str, extra: serde_json::Value) -> Manifest {
    let mut v = serde_json::json!({
        "manifest_version": 1,
        "name": name,
        "version": "1.0.0",
        "runtime": "wasm",
        "binary": {"wasm32": format!("{name}.wasm")},
        "sha256": "00".repeat(32),
    });
    if let (Some(obj), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
        for (k, x) in extra {
            obj.insert(k.clone(), x.clone());
        }
    }
    manifest::parse_keel_value(v).unwrap_or_else(|e| panic!("test manifest invalid: {e}"))
}

pub fn context<'a>(m: &'a Manifest, services: HostServices) -> LoadContext<'a> {
    let granted = Capabilities::parse(&m.capabilities).expect("capabilities");
    LoadContext {
        manifest: m,
        granted,
        services,
        restored_state: None,
        restored_state_version: None,
        generation: 1,
        signer_key_id: None,
    }
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!(
            "{what}: cannot run {:?}: {e}. The WASM tests need clang with the wasm32 target and wasm-ld \
             (lld) installed; .ci/run installs them (apt-get install clang lld).",
            cmd.get_program()
        )
    });
    if !out.status.success() {
        panic!(
            "{what} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Build a C fixture (tests/fixtures/wasm/c/<name>.c) for wasm32 with clang against
/// include/keel/keel_wasm.h. Fails (panics with instructions) when clang or wasm-ld is missing.
pub fn build_c_wasm(name: &str, out_dir: &Path) -> Vec<u8> {
    let src = fixture_dir().join("c").join(format!("{name}.c"));
    let out = out_dir.join(format!("{name}.wasm"));
    run(
        Command::new("clang")
            .args(["--target=wasm32", "-nostdlib", "-O2", "-Wall", "-Wextra", "-Werror"])
            .args(["-Wl,--no-entry", "-Wl,--export-dynamic"])
            .arg("-I")
            .arg(repo().join("include"))
            .arg("-o")
            .arg(&out)
            .arg(&src),
        &format!("building {} for wasm32", src.display()),
    );
    std::fs::read(&out).unwrap_or_else(|e| panic!("{}: {e}", out.display()))
}

/// Build a C++ fixture (tests/fixtures/wasm/cpp/<name>.cpp) for wasm32 with clang++ against
/// include/keel/keel_wasm.h (C++17, no exceptions, no C++ runtime).
pub fn build_cpp_wasm(name: &str, out_dir: &Path) -> Vec<u8> {
    let src = fixture_dir().join("cpp").join(format!("{name}.cpp"));
    let out = out_dir.join(format!("{name}.wasm"));
    run(
        Command::new("clang++")
            .args(["--target=wasm32", "-nostdlib", "-std=c++17", "-fno-exceptions", "-O2"])
            .args(["-Wall", "-Wextra", "-Werror", "-Wl,--no-entry", "-Wl,--export-dynamic"])
            .arg("-I")
            .arg(repo().join("include"))
            .arg("-o")
            .arg(&out)
            .arg(&src),
        &format!("building {} for wasm32", src.display()),
    );
    std::fs::read(&out).unwrap_or_else(|e| panic!("{}: {e}", out.display()))
}

/// Build a C fixture as a native shared library (cc -O2 -shared -fPIC).
pub fn build_c_native(name: &str, out_dir: &Path) -> PathBuf {
    let src = fixture_dir().join("c").join(format!("{name}.c"));
    let out = out_dir.join(format!("lib{name}.so"));
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    run(
        Command::new(cc)
            .args(["-O2", "-shared", "-fPIC", "-Wall", "-Wextra", "-Werror"])
            .arg("-I")
            .arg(repo().join("include"))
            .arg("-o")
            .arg(&out)
            .arg(&src),
        &format!("building {} as a shared library", src.display()),
    );
    out
}

/// A module of about 100 KB: compute.wat plus 1100 small exported functions (what the
/// cold-start figures of benches/wasm.rs and the tiering tests compile).
pub fn big_module() -> Vec<u8> {
    let base = std::fs::read_to_string(fixture_dir().join("compute.wat")).unwrap();
    let body_end = base.rfind(')').unwrap();
    let mut wat = base[..body_end].to_string();
    let n = 1100;
    for i in 0..n {
        wat.push_str(&format!(
            "(func $g{i} (export \"g{i}\") (param $x i32) (param $y i32) (result i32) (local $t i32)
               (local.set $t (i32.mul (local.get $x) (i32.const {k})))
               (if (i32.gt_u (local.get $t) (local.get $y))
                 (then (local.set $t (i32.xor (local.get $t) (i32.rotl (local.get $y) (i32.const 7)))))
                 (else (local.set $t (i32.add (local.get $t) (i32.load (i32.and (local.get $y) (i32.const 1020)))))))
               (i32.store (i32.const 2048) (local.get $t))
               (i32.add (local.get $t) (i32.shr_u (local.get $x) (i32.const 3))))\n",
            k = i * 2 + 1
        ));
    }
    wat.push(')');
    wat::parse_str(&wat).unwrap()
}

/// A runtime on wasmer with compiler policy `compiler` and `cache`, the rest defaults.
pub fn wasmer_runtime(
    compiler: keel::runtime::wasm::WasmCompiler,
    cache: Option<keel::runtime::wasm::CacheConfig>,
) -> keel::runtime::wasm::WasmRuntime {
    keel::runtime::wasm::WasmRuntime::new(keel::runtime::wasm::WasmConfig {
        engine: keel::runtime::wasm::WasmEngine::Wasmer,
        compiler,
        cache,
        ..keel::runtime::wasm::WasmConfig::default()
    })
    .unwrap()
}
