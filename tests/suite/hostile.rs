//! Hostile inputs through the C ABI (issue 13): FIFOs where files are expected, a truncated
//! ELF whose hash is pinned, a vtable that lies, a plugin that ignores a refused write, a
//! binary path through a symlinked directory, ambiguous manifests, a WASM allocator out of
//! memory, a panicking embedder service. After each, the host keeps serving and its registry
//! is unchanged. Also: the bad-input matrix of docs/errors.md is checked against the code,
//! and the Rust mirrors of keel_plugin.h's structs against the header (C `static_assert`s).

use crate::common;

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use common::capi::*;
use keel::ffi::trust::{keel_host_set_trust_store_file, keel_verify};
use keel::keel_status::{self, *};

/// A named pipe at `path`.
fn mkfifo(path: &Path) {
    let c = CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: c is a valid NUL-terminated path.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(rc, 0, "mkfifo {}", path.display());
}

/// Run `f` on another thread; if it has not returned after a minute (it would block forever on
/// a FIFO before the fix), open the FIFOs for writing to release it and fail the test.
fn without_hanging<T: Send + 'static>(fifos: &[PathBuf], f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let t = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(v) => {
            t.join().unwrap();
            v
        }
        Err(_) => {
            for p in fifos {
                let _ = std::fs::OpenOptions::new().write(true).open(p);
            }
            panic!("reading a FIFO blocked the loading thread");
        }
    }
}

fn load_status(host: &TestHost, manifest: &Path) -> keel_status {
    match host.load(manifest) {
        Ok(p) => {
            keel::ffi::host::keel_plugin_free(p);
            KEEL_OK
        }
        Err(s) => s,
    }
}

fn verify_status(host: &TestHost, manifest: &Path) -> keel_status {
    keel_verify(host.0, cstr(manifest.to_str().unwrap()).as_ptr())
}

/// The host still loads and serves a good plugin, and `name` (the refused one) is not loaded.
fn still_serving(host: &TestHost, refused: &str) {
    assert_eq!(
        host.get(refused).err(),
        Some(KEEL_ERR_PLUGIN_NOT_FOUND),
        "registry unchanged"
    );
    let (_dir, manifest) = common::echo_plugin("serving", &[], serde_json::json!({}));
    let p = host
        .load_plugin(&manifest)
        .unwrap_or_else(|s| panic!("{s}: {}", last_error()));
    let out = Buf::new();
    assert_eq!(call(p.0, p.function("echo").unwrap(), b"alive", &out), KEEL_OK);
    assert_eq!(out.text(), "alive");
    drop(p);
    assert_eq!(host.unload("echo"), KEEL_OK);
}

#[test]
fn fifo_as_manifest_binary_sig_or_trust_store_is_refused_without_hanging() {
    let dir = common::tempdir("fifo");
    let so = common::build_native("echo", &[], &dir, "libecho.so");
    // Manifest.
    let manifest_fifo = dir.join("fifo.json");
    mkfifo(&manifest_fifo);
    // Binary: a manifest naming a FIFO as its binary.
    let bin_dir = dir.join("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    std::fs::copy(&so, bin_dir.join("libecho.so")).unwrap();
    let bin_manifest = common::write_manifest(
        &bin_dir,
        "echo",
        "1.0.0",
        &bin_dir.join("libecho.so"),
        serde_json::json!({}),
    );
    std::fs::remove_file(bin_dir.join("libecho.so")).unwrap();
    mkfifo(&bin_dir.join("libecho.so"));
    // .sig: a good manifest whose <manifest>.sig is a FIFO.
    let sig_dir = dir.join("sig");
    std::fs::create_dir_all(&sig_dir).unwrap();
    let sig_so = common::build_native("echo", &[], &sig_dir, "libecho.so");
    let sig_manifest = common::write_manifest(&sig_dir, "echo", "1.0.0", &sig_so, serde_json::json!({}));
    mkfifo(&keel::trust::signature_path(&sig_manifest));
    // Trust store.
    let store_fifo = dir.join("trust.json");
    mkfifo(&store_fifo);

    let fifos = vec![
        manifest_fifo.clone(),
        bin_dir.join("libecho.so"),
        keel::trust::signature_path(&sig_manifest),
        store_fifo.clone(),
    ];
    let results = without_hanging(&fifos, move || {
        let host = TestHost::new();
        let r = vec![
            ("manifest", load_status(&host, &manifest_fifo)),
            ("manifest (verify)", verify_status(&host, &manifest_fifo)),
            ("binary", load_status(&host, &bin_manifest)),
            ("binary (verify)", verify_status(&host, &bin_manifest)),
            ("sig", load_status(&host, &sig_manifest)),
            ("sig (verify)", verify_status(&host, &sig_manifest)),
            (
                "trust store",
                keel_host_set_trust_store_file(host.0, cstr(store_fifo.to_str().unwrap()).as_ptr()),
            ),
        ];
        assert!(last_error().contains("FIFO"), "{}", last_error());
        still_serving(&host, "echo");
        r
    });
    for (what, status) in results {
        assert_eq!(status, KEEL_ERR_NOT_REGULAR_FILE, "{what}");
    }
}

#[test]
fn a_directory_where_a_file_is_expected_is_not_a_regular_file() {
    let dir = common::tempdir("dirfile");
    std::fs::create_dir_all(dir.join("keel.json")).unwrap();
    let host = TestHost::new();
    assert_eq!(load_status(&host, &dir.join("keel.json")), KEEL_ERR_NOT_REGULAR_FILE);
}

#[test]
fn truncated_elf_with_pinned_hash_is_refused_before_dlopen() {
    let host = TestHost::new();
    let so = common::build_native("echo", &[], &common::tempdir("elf-src"), "libecho.so");
    let full = std::fs::read(&so).unwrap();
    // Half the file (segments run past the end), the header and part of the program headers,
    // and a file too short for an ELF header.
    for cut in [full.len() / 2, 100, 40, 8] {
        let dir = common::tempdir("elf-cut");
        let bin = dir.join("libecho.so");
        std::fs::write(&bin, &full[..cut]).unwrap();
        let manifest = common::write_manifest(&dir, "echo", "1.0.0", &bin, serde_json::json!({}));
        assert_eq!(
            load_status(&host, &manifest),
            KEEL_ERR_LIBRARY_MALFORMED,
            "cut at {cut}"
        );
        assert!(last_error().contains("refused before dlopen"), "{}", last_error());
    }
    still_serving(&host, "echo");
}

#[test]
fn a_vtable_that_lies_about_function_count_is_refused() {
    let host = TestHost::new();
    // Far too many; and a few past the array (the host must not read past it unchecked).
    for count in ["1000000", "4097", "64", "11"] {
        let (_dir, manifest) = common::echo_plugin(
            "liar",
            &[&format!("ECHO_FUNCTION_COUNT={count}")],
            serde_json::json!({}),
        );
        assert_eq!(
            load_status(&host, &manifest),
            KEEL_ERR_PLUGIN_ABI_VIOLATION,
            "function_count {count}: {}",
            last_error()
        );
        assert!(last_error().contains("function"), "{}", last_error());
    }
    still_serving(&host, "echo");
}

#[test]
fn an_older_smaller_vtable_loads_without_its_optional_hooks() {
    // struct_size up to `shutdown` only: save_state/restore_state/health are absent, whatever
    // bytes follow the plugin's struct.
    let (_dir, manifest) = common::echo_plugin(
        "oldvt",
        &["ECHO_STRUCT_SIZE=offsetof(keel_plugin_vtable, save_state)"],
        serde_json::json!({}),
    );
    let host = common::host();
    host.trust().set_require_signature(false).unwrap();
    let slot = host.load(&manifest).unwrap();
    let g = slot.current().unwrap();
    assert_eq!(g.instance.health(), keel::runtime::Health::Unknown);
    assert_eq!(g.instance.save_state().unwrap(), None);
    let mut out = Vec::new();
    let f = g.instance.functions().iter().position(|n| n == "echo").unwrap() as u32;
    g.instance.call(f, b"old", &mut out).unwrap();
    assert_eq!(out, b"old");
    // Too small to hold the mandatory hooks: refused.
    let (_dir, manifest) = common::echo_plugin("tinyvt", &["ECHO_STRUCT_SIZE=16"], serde_json::json!({}));
    let t = TestHost::new();
    assert_eq!(load_status(&t, &manifest), KEEL_ERR_PLUGIN_ABI_VIOLATION);
}

#[test]
fn a_refused_output_write_fails_the_call_whatever_the_plugin_returns() {
    let dir = common::tempdir("flood");
    let so = common::build_native("flood", &[], &dir, "libflood.so");
    let manifest = common::write_manifest(&dir, "flood", "1.0.0", &so, serde_json::json!({}));
    let small_dir = common::tempdir("flood-small");
    let so2 = common::build_native("flood", &[], &small_dir, "libflood.so");
    let small = common::write_manifest(
        &small_dir,
        "flood-small",
        "1.0.0",
        &so2,
        serde_json::json!({"limits": {"max_output_bytes": 3 << 20}}),
    );
    let host = TestHost::new();
    let out = Buf::new();
    // The default 64 MiB limit: 65 blocks of 1 MiB, the plugin ignores the refusal and
    // returns 0.
    let p = host.load_plugin(&manifest).unwrap();
    let flood = p.function("flood").unwrap();
    assert_eq!(call(p.0, flood, b"64", &out), KEEL_OK, "exactly at the limit is fine");
    assert_eq!(out.bytes().len(), 64 << 20);
    assert_eq!(call(p.0, flood, b"65", &out), KEEL_ERR_OUTPUT_TOO_LARGE);
    assert!(last_error().contains("refused"), "{}", last_error());
    // A manifest limit, and the plugin keeps serving.
    let q = host.load_plugin(&small).unwrap();
    assert_eq!(
        call(q.0, q.function("flood").unwrap(), b"4", &out),
        KEEL_ERR_OUTPUT_TOO_LARGE
    );
    assert_eq!(call(q.0, q.function("small").unwrap(), b"", &out), KEEL_OK);
    assert_eq!(out.text(), "ok");
}

#[test]
fn a_binary_path_through_a_symlinked_directory_is_refused() {
    let outside = common::tempdir("escape-outside");
    let so = common::build_native("echo", &[], &outside, "libecho.so");
    let dir = common::tempdir("escape");
    std::os::unix::fs::symlink(&outside, dir.join("escape")).unwrap();
    let manifest = dir.join("keel.json");
    std::fs::write(
        &manifest,
        serde_json::to_vec(&serde_json::json!({
            "manifest_version": 1, "name": "echo", "version": "1.0.0", "runtime": "native",
            "binary": {"linux": "escape/libecho.so"}, "sha256": common::sha256_file(&so),
        }))
        .unwrap(),
    )
    .unwrap();
    let host = TestHost::new();
    assert_eq!(load_status(&host, &manifest), KEEL_ERR_SYMLINK_REFUSED);
    assert!(last_error().contains("escape/libecho.so"), "{}", last_error());
    assert_eq!(verify_status(&host, &manifest), KEEL_ERR_SYMLINK_REFUSED);
    // A real subdirectory is fine.
    std::fs::remove_file(dir.join("escape")).unwrap();
    std::fs::create_dir_all(dir.join("escape")).unwrap();
    std::fs::copy(&so, dir.join("escape/libecho.so")).unwrap();
    assert_eq!(verify_status(&host, &manifest), KEEL_OK, "{}", last_error());
    still_serving(&host, "echo");
}

#[test]
fn duplicate_keys_and_non_object_manifests_are_refused() {
    let dir = common::tempdir("dupkeys");
    let so = common::build_native("echo", &[], &dir, "libecho.so");
    let sha = common::sha256_file(&so);
    let host = TestHost::new();
    let keel_dup = format!(
        r#"{{"manifest_version": 1, "name": "echo", "name": "evil", "version": "1.0.0", "runtime": "native",
            "binary": {{"linux": "libecho.so"}}, "sha256": "{sha}"}}"#
    );
    let themis_dup = format!(
        r#"{{"name": "echo", "version": "1.0.0", "type": "custom",
            "binary": {{"linux": "libecho.so", "linux": "other.so"}}, "expected_hash": "{sha}"}}"#
    );
    for (file, text, status, needle) in [
        (
            "keel.json",
            keel_dup.as_str(),
            KEEL_ERR_MANIFEST_SCHEMA,
            "duplicate key \"name\" in the object at /",
        ),
        (
            "plugin.json",
            themis_dup.as_str(),
            KEEL_ERR_MANIFEST_SCHEMA,
            "duplicate key \"linux\" in the object at /binary",
        ),
        (
            "array.json",
            "[{\"manifest_version\": 1}]",
            KEEL_ERR_MANIFEST_UNKNOWN_FORMAT,
            "array",
        ),
    ] {
        let p = dir.join(file);
        std::fs::write(&p, text).unwrap();
        assert_eq!(load_status(&host, &p), status, "{file}: {}", last_error());
        assert!(last_error().contains(needle), "{file}: {}", last_error());
        assert_eq!(verify_status(&host, &p), status, "{file}");
    }
    still_serving(&host, "evil");
}

#[test]
fn keel_alloc_returning_zero_is_out_of_memory() {
    let dir = common::tempdir("alloc0");
    let wasm = wat::parse_file(common::repo().join("tests/fixtures/wasm/alloc0.wat")).unwrap();
    let bin = dir.join("alloc0.wasm");
    std::fs::write(&bin, &wasm).unwrap();
    let manifest = dir.join("keel.json");
    std::fs::write(
        &manifest,
        serde_json::to_vec(&serde_json::json!({
            "manifest_version": 1, "name": "alloc0", "version": "1.0.0", "runtime": "wasm",
            "binary": {"wasm32": "alloc0.wasm"}, "sha256": common::sha256_file(&bin),
        }))
        .unwrap(),
    )
    .unwrap();
    let host = TestHost::new();
    let p = host
        .load_plugin(&manifest)
        .unwrap_or_else(|s| panic!("{s}: {}", last_error()));
    let echo = p.function("echo").unwrap();
    let out = Buf::new();
    assert_eq!(call(p.0, echo, &vec![7u8; 10_000], &out), KEEL_ERR_MEMORY_LIMIT);
    assert!(last_error().contains("out of memory"), "{}", last_error());
    // The plugin keeps serving inputs its allocator can hold.
    assert_eq!(call(p.0, echo, b"small", &out), KEEL_OK, "{}", last_error());
    assert_eq!(out.text(), "small");
}

/// A key-value store whose every operation panics (an embedder bug).
struct PanickingKv;

impl keel::runtime::KvStore for PanickingKv {
    fn get(&self, _: keel::runtime::KvTarget<'_>, _: &[u8]) -> keel::runtime::SinkResult<Option<Vec<u8>>> {
        panic!("embedder kv get failed")
    }
    fn put(&self, _: keel::runtime::KvTarget<'_>, _: &[u8], _: &[u8]) -> keel::runtime::SinkResult<()> {
        panic!("embedder kv put failed")
    }
    fn delete(&self, _: keel::runtime::KvTarget<'_>, _: &[u8]) -> keel::runtime::SinkResult<bool> {
        panic!("embedder kv delete failed")
    }
    fn scan(
        &self,
        _: keel::runtime::KvTarget<'_>,
        _: &[u8],
        _: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> keel::runtime::SinkResult<()> {
        panic!("embedder kv scan failed")
    }
}

#[test]
fn a_panicking_embedder_service_is_an_error_status_for_the_plugin() {
    let (_dir, manifest) = common::echo_plugin(
        "kvpanic",
        &[],
        serde_json::json!({"capabilities": ["kv:read", "kv:write"]}),
    );
    let services = keel::runtime::HostServices::default().with_kv(std::sync::Arc::new(PanickingKv));
    let host = keel::Host::with_services(services);
    host.trust().set_require_signature(false).unwrap();
    let slot = host.load(&manifest).unwrap();
    let g = slot.current().unwrap();
    let f = |n: &str| g.instance.functions().iter().position(|x| x == n).unwrap() as u32;
    let mut out = Vec::new();
    // echo's kv_put returns what the host API returned: the panic's error status.
    let e = g.instance.call(f("kv_put"), b"k=v", &mut out).unwrap_err();
    assert_eq!(e.status(), KEEL_ERR_CALL_FAILED);
    assert!(
        e.message()
            .contains(&format!("returned {}", keel::runtime::native::API_PANICKED)),
        "{e}"
    );
    let e = g.instance.call(f("kv_get"), b"k", &mut out).unwrap_err();
    assert_eq!(e.status(), KEEL_ERR_CALL_FAILED, "{e}");
    out.clear();
    g.instance.call(f("echo"), b"still here", &mut out).unwrap();
    assert_eq!(out, b"still here");
}

/// docs/errors.md's bad-input matrix: every code it names exists, every code the matrix
/// needs is in it, and every row names the test (in this file or another test target) that
/// exercises it — which must exist.
#[test]
fn the_bad_input_matrix_in_docs_errors_md_matches_the_code() {
    let root = common::repo();
    let doc = std::fs::read_to_string(root.join("docs/errors.md")).unwrap();
    let start = doc.find("<!-- matrix:start -->").expect("matrix start marker");
    let end = doc.find("<!-- matrix:end -->").expect("matrix end marker");
    let rows: Vec<Vec<String>> = doc[start..end]
        .lines()
        .filter(|l| l.starts_with('|') && !l.starts_with("|---") && !l.starts_with("| input"))
        .map(|l| l.trim_matches('|').split('|').map(|c| c.trim().to_string()).collect())
        .collect();
    assert!(rows.len() >= 20, "{} rows", rows.len());
    let mut named = std::collections::HashSet::new();
    for r in &rows {
        assert_eq!(r.len(), 4, "row {r:?}: input | code | host afterwards | test");
        let code = r[1].trim_matches('`');
        let status = keel_status::all()
            .find(|s| s.name() == code)
            .unwrap_or_else(|| panic!("{code} (row {r:?}) is not a keel_status"));
        named.insert(status);
        assert!(
            r[2].contains("keeps serving") && r[2].contains("registry unchanged"),
            "row {r:?} must say what the host does afterwards"
        );
        // `file.rs::test_name`: the test exists in that file.
        let test = r[3].trim_matches('`');
        let (file, name) = test
            .split_once("::")
            .unwrap_or_else(|| panic!("row {r:?}: test as file.rs::name"));
        let src = ["tests/suite", "tests", "src"]
            .iter()
            .find_map(|d| std::fs::read_to_string(root.join(d).join(file)).ok())
            .unwrap_or_else(|| panic!("row {r:?}: no tests/suite/{file}, tests/{file} or src/{file}"));
        assert!(
            src.contains(&format!("fn {name}(")),
            "row {r:?}: no fn {name} in {file}"
        );
    }
    // Every cause a hostile file, manifest, signature or plugin can produce has a row.
    for s in [
        KEEL_ERR_NOT_REGULAR_FILE,
        KEEL_ERR_SYMLINK_REFUSED,
        KEEL_ERR_FILE_TOO_LARGE,
        KEEL_ERR_FILE_NOT_FOUND,
        KEEL_ERR_MANIFEST_PARSE,
        KEEL_ERR_MANIFEST_SCHEMA,
        KEEL_ERR_MANIFEST_UNKNOWN_FORMAT,
        KEEL_ERR_MANIFEST_BAD_PATH,
        KEEL_ERR_DIGEST_MISMATCH,
        KEEL_ERR_NO_SIGNATURE,
        KEEL_ERR_MALFORMED_SIGNATURE,
        KEEL_ERR_BAD_SIGNATURE,
        KEEL_ERR_TRUST_STORE_MALFORMED,
        KEEL_ERR_LIBRARY_MALFORMED,
        KEEL_ERR_ABI_MISMATCH,
        KEEL_ERR_PLUGIN_ABI_VIOLATION,
        KEEL_ERR_OUTPUT_TOO_LARGE,
        KEEL_ERR_MEMORY_LIMIT,
        KEEL_ERR_WASM_COMPILE,
        KEEL_ERR_NULL_POINTER,
        KEEL_ERR_INVALID_UTF8,
        KEEL_ERR_OCI_BAD_REFERENCE,
        KEEL_ERR_OCI_DIGEST_MISMATCH,
        KEEL_ERR_OCI_NOT_A_PLUGIN,
    ] {
        assert!(named.contains(&s), "docs/errors.md has no row for {}", s.name());
    }
}

/// keel_plugin.h's structs against their Rust mirrors: a C file of `static_assert`s on sizeof
/// and offsetof, the values taken from the mirrors (`std::mem::offset_of!`), compiled by the
/// system C compiler. A drift on either side fails to compile. The same file with one value
/// off by 8 must fail, so the assertions are known to be checked.
#[test]
fn rust_mirrors_match_keel_plugin_h() {
    use keel::runtime::native::{RawHostApi, RawOutput, RawVtable};
    use std::mem::{align_of, offset_of, size_of};
    let mut checks: Vec<(String, usize)> = vec![
        ("sizeof(keel_output)".into(), size_of::<RawOutput>()),
        ("_Alignof(keel_output)".into(), align_of::<RawOutput>()),
        ("offsetof(keel_output, ctx)".into(), offset_of!(RawOutput, ctx)),
        ("offsetof(keel_output, write)".into(), offset_of!(RawOutput, write)),
        ("sizeof(keel_host_api)".into(), size_of::<RawHostApi>()),
        ("_Alignof(keel_host_api)".into(), align_of::<RawHostApi>()),
        ("sizeof(keel_plugin_vtable)".into(), size_of::<RawVtable>()),
        ("_Alignof(keel_plugin_vtable)".into(), align_of::<RawVtable>()),
    ];
    macro_rules! off {
        ($c:literal, $t:ty, $($f:ident),*) => {
            $(checks.push((format!("offsetof({}, {})", $c, stringify!($f)), offset_of!($t, $f)));)*
        };
    }
    off!(
        "keel_host_api",
        RawHostApi,
        abi_version,
        struct_size,
        ctx,
        log,
        now_unix_nanos,
        random_bytes,
        kv_get,
        kv_put,
        kv_delete
    );
    // capmetrics' appended entries.
    off!(
        "keel_host_api",
        RawHostApi,
        metric_define,
        metric_add,
        metric_set,
        metric_observe,
        rpc_register
    );
    off!(
        "keel_plugin_vtable",
        RawVtable,
        abi_version,
        struct_size,
        flags,
        name,
        version,
        functions,
        function_count,
        init,
        call,
        shutdown,
        save_state,
        restore_state,
        health
    );
    let dir = common::tempdir("abi-layout");
    let compile = |checks: &[(String, usize)], name: &str| {
        let mut c = String::from("#include <assert.h>\n#include <stddef.h>\n#include <keel/keel_plugin.h>\n");
        for (expr, v) in checks {
            c.push_str(&format!(
                "static_assert({expr} == {v}, \"{expr} != {v} (Rust mirror)\");\n"
            ));
        }
        let src = dir.join(format!("{name}.c"));
        std::fs::write(&src, c).unwrap();
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
        std::process::Command::new(cc)
            .args(["-std=c11", "-fsyntax-only", "-Wall", "-Werror", "-I"])
            .arg(common::repo().join("include"))
            .arg(&src)
            .output()
            .unwrap()
    };
    let ok = compile(&checks, "layout");
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let mut wrong = checks.clone();
    let last = wrong.len() - 1;
    wrong[last].1 += 8;
    let bad = compile(&wrong, "layout_wrong");
    assert!(!bad.status.success(), "a wrong static_assert must fail to compile");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("Rust mirror"));
}

#[test]
fn oversized_files_are_refused_before_parsing() {
    let dir = common::tempdir("oversized");
    let big = dir.join("keel.json");
    std::fs::write(&big, vec![b' '; (keel::manifest::MAX_MANIFEST_BYTES + 1) as usize]).unwrap();
    let store = dir.join("trust.json");
    std::fs::write(
        &store,
        vec![b' '; (keel::trust::store::MAX_TRUST_STORE_BYTES + 1) as usize],
    )
    .unwrap();
    let host = TestHost::new();
    assert_eq!(load_status(&host, &big), KEEL_ERR_FILE_TOO_LARGE);
    assert_eq!(
        keel_host_set_trust_store_file(host.0, cstr(store.to_str().unwrap()).as_ptr()),
        KEEL_ERR_FILE_TOO_LARGE
    );
    still_serving(&host, "echo");
}

/// `keel_verify` runs the checks a load runs (one code path): a manifest that would be refused
/// for its capabilities is refused by `keel_verify` with the same code, before any code runs.
#[test]
fn keel_verify_refuses_what_a_load_refuses_for_capabilities() {
    let host = TestHost::new();
    for (caps, want) in [
        (serde_json::json!(["log", "no:such"]), KEEL_ERR_CAPABILITY_UNKNOWN),
        (serde_json::json!(["rpc:register"]), KEEL_ERR_CAPABILITY_DENIED),
        (serde_json::json!(["log"]), KEEL_OK),
    ] {
        let (_dir, manifest) = common::echo_plugin("verify-caps", &[], serde_json::json!({ "capabilities": caps }));
        assert_eq!(verify_status(&host, &manifest), want, "{caps}: {}", last_error());
        let loaded = host.load(&manifest).map(|p| {
            keel::ffi::host::keel_plugin_free(p);
        });
        assert_eq!(loaded.err().unwrap_or(KEEL_OK), want, "{caps}: the load agrees");
        if want == KEEL_OK {
            assert_eq!(host.unload("echo"), KEEL_OK);
        }
    }
}
