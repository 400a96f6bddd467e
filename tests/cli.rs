//! The `keel` CLI, run as a process: keygen / sign / verify / validate / inspect, with one
//! exit code per cause.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn keel<I, S>(args: I) -> Out
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let o = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(args)
        .output()
        .expect("run keel");
    Out {
        code: o.status.code().expect("keel exited normally"),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// Run and assert the exit code (printing the output on failure).
fn expect<I, S>(args: I, code: i32) -> Out
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let o = keel(args);
    assert_eq!(o.code, code, "stdout:\n{}\nstderr:\n{}", o.stdout, o.stderr);
    o
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// `keel keygen` into `dir/<name>`; returns (secret path, public entry).
fn keygen(dir: &Path, name: &str) -> (PathBuf, Value) {
    let prefix = dir.join(name);
    let o = expect(["keygen", "--out", p(&prefix), "--label", name], 0);
    let id = o.stdout.lines().next().unwrap().to_string();
    assert_eq!(id.len(), 64);
    assert!(
        id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
        "{id}"
    );
    let entry: Value = serde_json::from_slice(&std::fs::read(dir.join(format!("{name}.pub"))).unwrap()).unwrap();
    assert_eq!(entry["id"], Value::from(id));
    (dir.join(format!("{name}.key")), entry)
}

fn write_store(dir: &Path, file: &str, version: u64, keys: Vec<Value>) -> PathBuf {
    let path = dir.join(file);
    let doc = json!({"keel_trust_store": 1, "version": version, "keys": keys});
    std::fs::write(&path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    path
}

fn with(mut entry: Value, extra: Value) -> Value {
    if let Value::Object(extra) = extra {
        for (k, v) in extra {
            entry[k] = v;
        }
    }
    entry
}

/// A plugin directory: a fake binary (bytes only) and a manifest pinning it.
fn plugin(tag: &str, name: &str) -> (PathBuf, PathBuf) {
    let dir = common::tempdir(tag);
    let bin = dir.join(format!("lib{name}.so"));
    std::fs::write(&bin, format!("binary of {name}")).unwrap();
    let manifest = common::write_manifest(&dir, name, "2.1.0", &bin, json!({}));
    (dir, manifest)
}

#[test]
fn keygen_writes_a_0600_secret_and_a_trust_store_entry() {
    let dir = common::tempdir("cli-keygen");
    let (secret, entry) = keygen(&dir, "vendor");
    let mode = std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "secret key mode is {mode:o}");
    // The secret file is the documented JSON, and the entry drops straight into a store.
    let doc: Value = serde_json::from_slice(&std::fs::read(&secret).unwrap()).unwrap();
    assert_eq!(doc["keel_secret_key"], 1);
    assert_eq!(doc["algorithm"], "ed25519");
    assert_eq!(doc["key_id"], entry["id"]);
    assert_eq!(doc["seed"].as_str().unwrap().len(), 64);
    assert_eq!(entry["label"], "vendor");
    let store = write_store(&dir, "store.json", 1, vec![entry.clone()]);
    let t = keel::trust::TrustState::new();
    t.set_trust_store_path(&store).unwrap();
    assert_eq!(t.store().len(), 1);

    // --print-entry prints the same kind of entry after the id; patterns are recorded.
    let o = expect(
        [
            "keygen",
            "--out",
            p(&dir.join("scoped")),
            "--allow-plugin",
            "acme-*",
            "--print-entry",
        ],
        0,
    );
    let (id, rest) = o.stdout.split_once('\n').unwrap();
    let printed: Value = serde_json::from_str(rest).unwrap();
    assert_eq!(printed["id"], Value::from(id));
    assert_eq!(printed["allowed_plugins"], json!(["acme-*"]));

    // Never overwrites a key (exit 4, KEEL_ERR_IO); a bad pattern is refused before writing (7).
    let o = expect(["keygen", "--out", p(&dir.join("vendor"))], 4);
    assert!(o.stderr.contains("already exists"), "{}", o.stderr);
    expect(["keygen", "--out", p(&dir.join("bad")), "--allow-plugin", "[a-"], 7);
    assert!(!dir.join("bad.key").exists() && !dir.join("bad.pub").exists());
}

#[test]
fn sign_then_verify_and_every_cause_has_its_own_exit_code() {
    let keys = common::tempdir("cli-keys");
    let (secret, entry) = keygen(&keys, "signer");
    let (other_secret, _) = keygen(&keys, "stranger");
    let (dir, manifest) = plugin("cli-verify", "acme-index");
    let m = p(&manifest);
    let store = |file: &str, e: Value| write_store(&dir, file, 1, vec![e]);
    let plain = store("plain.json", entry.clone());

    // 21: no signature
    let o = expect(["verify", m, "--trust-store", p(&plain)], 21);
    assert!(o.stderr.contains("KEEL_ERR_NO_SIGNATURE"), "{}", o.stderr);
    // --allow-unsigned: ok (still checks the digest)
    let o = expect(["verify", m, "--allow-unsigned"], 0);
    assert!(
        o.stdout.starts_with("ok:") && o.stdout.contains("unsigned"),
        "{}",
        o.stdout
    );

    // 0: signed by a trusted key
    let o = expect(["sign", m, "--key", p(&secret), "--comment", "release 2.1.0"], 0);
    assert!(o.stdout.contains(entry["id"].as_str().unwrap()), "{}", o.stdout);
    let o = expect(["verify", m, "--trust-store", p(&plain)], 0);
    assert!(
        o.stdout.contains("signed by key") && o.stdout.contains("signer"),
        "{}",
        o.stdout
    );

    // 23: unknown key (no store, or a store without it)
    expect(["verify", m], 23);
    // 24 / 25 / 26 / 27 by the key's entry
    let cases = [
        (
            "nyv.json",
            json!({"not_before": "2999-01-01T00:00:00Z"}),
            24,
            "KEEL_ERR_KEY_NOT_YET_VALID",
        ),
        (
            "exp.json",
            json!({"not_after": "2001-01-01T00:00:00Z"}),
            25,
            "KEEL_ERR_KEY_EXPIRED",
        ),
        (
            "rev.json",
            json!({"revoked": {"at": "2026-01-01T00:00:00Z", "reason": "lost"}}),
            26,
            "KEEL_ERR_KEY_REVOKED",
        ),
        (
            "nal.json",
            json!({"allowed_plugins": ["other-*"]}),
            27,
            "KEEL_ERR_KEY_NOT_ALLOWED",
        ),
    ];
    for (file, extra, code, name) in cases {
        let s = store(file, with(entry.clone(), extra));
        let o = expect(["verify", m, "--trust-store", p(&s)], code);
        assert!(o.stderr.contains(name), "{}", o.stderr);
    }
    // 29: malformed store
    let bad_store = dir.join("bad-store.json");
    std::fs::write(
        &bad_store,
        br#"{"keel_trust_store":1,"version":1,"keys":[{"id":"00"}]}"#,
    )
    .unwrap();
    expect(["verify", m, "--trust-store", p(&bad_store)], 29);
    // 28: bad signature (manifest edited after signing); re-signing fixes it
    let mut bytes = std::fs::read(&manifest).unwrap();
    bytes.push(b'\n');
    std::fs::write(&manifest, &bytes).unwrap();
    expect(["verify", m, "--trust-store", p(&plain)], 28);
    expect(["sign", m, "--key", p(&secret)], 0);
    expect(["verify", m, "--trust-store", p(&plain)], 0);
    // 23 again: re-signed by a key the store does not hold
    expect(["sign", m, "--key", p(&other_secret)], 0);
    expect(["verify", m, "--trust-store", p(&plain)], 23);
    // 22: malformed signature
    let sig = PathBuf::from(format!("{m}.sig"));
    std::fs::write(&sig, b"{\"keel_signature\":1,\"algorithm\":\"ed25519\"}").unwrap();
    expect(["verify", m, "--trust-store", p(&plain)], 22);
    // 32: ThemisDB hash-only .sig when a signature is required; 0 when unsigned is allowed;
    // 20 when the hash is wrong
    std::fs::write(&sig, format!("{}\n", keel::trust::digest::sha256_hex(&bytes))).unwrap();
    expect(["verify", m, "--trust-store", p(&plain)], 32);
    let o = expect(["verify", m, "--allow-unsigned"], 0);
    assert!(o.stdout.contains("hash-only"), "{}", o.stdout);
    std::fs::write(&sig, format!("{}\n", keel::trust::digest::sha256_hex(b"x"))).unwrap();
    expect(["verify", m, "--allow-unsigned"], 20);
    // 20: binary swapped under a valid signature
    expect(["sign", m, "--key", p(&secret)], 0);
    std::fs::write(dir.join("libacme-index.so"), b"evil").unwrap();
    let o = expect(["verify", m, "--trust-store", p(&plain)], 20);
    assert!(o.stderr.contains("KEEL_ERR_DIGEST_MISMATCH"), "{}", o.stderr);
    // 3: missing manifest, missing store
    expect(["verify", p(&dir.join("missing.json"))], 3);
    expect(["verify", m, "--trust-store", p(&dir.join("missing-store.json"))], 3);
    // 2: usage
    expect(["verify"], 2);
}

#[test]
fn sign_refuses_bad_inputs() {
    let keys = common::tempdir("cli-sign-keys");
    let (secret, _) = keygen(&keys, "k");
    let (dir, manifest) = plugin("cli-sign", "signme");
    let m = p(&manifest);
    // A secret key readable by others is refused (7), as is a missing one (3).
    let loose = keys.join("loose.key");
    std::fs::copy(&secret, &loose).unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = expect(["sign", m, "--key", p(&loose)], 7);
    assert!(o.stderr.contains("chmod 600"), "{}", o.stderr);
    expect(["sign", m, "--key", p(&keys.join("none.key"))], 3);
    // Not a key file (7); comment with a control character (7).
    let not_key = keys.join("not.key");
    std::fs::write(&not_key, b"{}").unwrap();
    std::fs::set_permissions(&not_key, std::fs::Permissions::from_mode(0o600)).unwrap();
    expect(["sign", m, "--key", p(&not_key)], 7);
    expect(["sign", m, "--key", p(&secret), "--comment", "two\nlines"], 7);
    // An invalid manifest is not signed (11), and no .sig appears.
    let bad = dir.join("bad.json");
    std::fs::write(&bad, br#"{"manifest_version":1,"name":"Bad Name"}"#).unwrap();
    expect(["sign", p(&bad), "--key", p(&secret)], 11);
    assert!(!dir.join("bad.json.sig").exists());
    assert!(!PathBuf::from(format!("{m}.sig")).exists());
}

#[test]
fn validate_reports_format_and_path_precise_errors() {
    let (dir, manifest) = plugin("cli-validate", "valid-one");
    let o = expect(["validate", p(&manifest)], 0);
    assert!(
        o.stdout.contains("valid keel manifest") && o.stdout.contains("valid-one"),
        "{}",
        o.stdout
    );

    let write = |name: &str, body: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, body).unwrap();
        path
    };
    // Schema violation: exit 11, names the JSON path and rule, and the format it saw.
    let bad = write(
        "bad.json",
        br#"{"manifest_version":1,"name":"Bad Name","version":"1.0.0"}"#,
    );
    let o = expect(["validate", p(&bad)], 11);
    assert!(o.stderr.contains("format: keel"), "{}", o.stderr);
    assert!(
        o.stderr.contains("/name") && o.stderr.contains("rule: pattern"),
        "{}",
        o.stderr
    );
    // Not JSON: 10. Neither format: 15. Path escaping the directory: 13.
    expect(["validate", p(&write("nojson.json", b"{\"manifest_version\": 1,"))], 10);
    let o = expect(["validate", p(&write("unknown.json", br#"{"hello":"world"}"#))], 15);
    assert!(o.stderr.contains("format: unrecognised"), "{}", o.stderr);
    let mut v: Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    v["binary"] = json!({"linux": "../escape.so"});
    expect(
        ["validate", p(&write("escape.json", &serde_json::to_vec(&v).unwrap()))],
        13,
    );
    // A ThemisDB plugin.json is recognised as such (valid or not, the format is named).
    let themis = write(
        "plugin.json",
        br#"{"name":"vector_db","version":"1.0.0","type":"embedding","description":"d","binary":{"linux":"libv.so"}}"#,
    );
    let o = keel(["validate", p(&themis)]);
    assert!(
        o.stdout.contains("themisdb") || o.stderr.contains("format: themisdb"),
        "{}{}",
        o.stdout,
        o.stderr
    );
}

#[test]
fn inspect_shows_digests_key_id_and_verification() {
    let keys = common::tempdir("cli-inspect-keys");
    let (secret, entry) = keygen(&keys, "inspector");
    let (dir, manifest) = plugin("cli-inspect", "seen");
    let m = p(&manifest);
    let store = write_store(&dir, "store.json", 4, vec![entry.clone()]);
    expect(["sign", m, "--key", p(&secret), "--comment", "hello"], 0);

    let o = expect(["inspect", m, "--json", "--trust-store", p(&store)], 0);
    let d: Value = serde_json::from_str(&o.stdout).unwrap();
    let bytes = std::fs::read(&manifest).unwrap();
    assert_eq!(d["manifest"]["format"], "keel");
    assert_eq!(
        d["manifest"]["sha256"],
        Value::from(keel::trust::digest::sha256_hex(&bytes))
    );
    assert_eq!(d["manifest"]["content"]["name"], "seen");
    let bin_digest = common::sha256_file(&dir.join("libseen.so"));
    assert_eq!(d["binary"]["pinned_sha256"], Value::from(bin_digest.clone()));
    assert_eq!(d["binary"]["actual_sha256"], Value::from(bin_digest));
    assert_eq!(d["binary"]["matches"], true);
    assert_eq!(d["signature"]["file"]["kind"], "keel");
    assert_eq!(d["signature"]["file"]["key_id"], entry["id"]);
    assert_eq!(d["signature"]["file"]["comment"], "hello");
    assert_eq!(d["verification"]["ok"], true);
    assert_eq!(d["verification"]["trust_store_version"], 4);

    // Tampered binary and revoked key: inspect still exits 0 and says what is wrong.
    std::fs::write(dir.join("libseen.so"), b"changed").unwrap();
    let revoked = write_store(
        &dir,
        "revoked.json",
        5,
        vec![with(entry, json!({"revoked": {"at": "2026-01-01T00:00:00Z"}}))],
    );
    let o = expect(["inspect", m, "--json", "--trust-store", p(&revoked)], 0);
    let d: Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(d["binary"]["matches"], false);
    assert_eq!(d["verification"]["ok"], false);
    assert_eq!(d["verification"]["error"]["status"], "KEEL_ERR_KEY_REVOKED");

    // Text form, without a store: names the key id and says verification was not checked.
    let o = expect(["inspect", m], 0);
    assert!(
        o.stdout.contains(d["signature"]["file"]["key_id"].as_str().unwrap()),
        "{}",
        o.stdout
    );
    assert!(o.stdout.contains("not checked"), "{}", o.stdout);
    // Malformed .sig is reported, not fatal; an unreadable manifest is (3).
    std::fs::write(format!("{m}.sig"), b"junk").unwrap();
    let o = expect(["inspect", m, "--json"], 0);
    let d: Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(d["signature"]["file"]["kind"], "malformed");
    expect(["inspect", p(&dir.join("nope.json"))], 3);
}

#[test]
fn help_documents_the_exit_codes() {
    for sub in [
        "verify",
        "sign",
        "keygen",
        "validate",
        "inspect",
        "new",
        "hash",
        "call",
        "list",
        "trust",
        "trust init",
        "trust add",
        "trust revoke",
        "trust list",
    ] {
        let mut args: Vec<&str> = sub.split(' ').collect();
        args.push("--help");
        let o = expect(&args, 0);
        for needle in [
            "Exit codes",
            "KEEL_ERR_KEY_REVOKED",
            "26",
            "KEEL_ERR_BAD_SIGNATURE",
            "28",
        ] {
            assert!(o.stdout.contains(needle), "{sub} --help lacks {needle}:\n{}", o.stdout);
        }
    }
    let o = expect(["--help"], 0);
    for cmd in ["keygen", "inspect", "new", "trust", "hash", "call", "list", "--json"] {
        assert!(o.stdout.contains(cmd), "--help lacks {cmd}:\n{}", o.stdout);
    }
    let o = expect(["verify", "--help"], 0);
    assert!(
        o.stdout.contains("KEEL_ERR_CAPABILITY_UNKNOWN") && o.stdout.contains("17"),
        "{}",
        o.stdout
    );
}

/// Run keel, failing (instead of hanging) if it has not exited after a minute; the FIFOs are
/// then opened for writing to release it.
fn keel_bounded(args: &[&str], fifos: &[&Path]) -> Out {
    let mut child = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run keel");
    for _ in 0..6000 {
        if child.try_wait().unwrap().is_some() {
            let o = child.wait_with_output().unwrap();
            return Out {
                code: o.status.code().expect("keel exited normally"),
                stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
            };
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let _ = child.kill();
    for f in fifos {
        let _ = std::fs::OpenOptions::new().write(true).open(f);
    }
    panic!("keel {args:?} hung");
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: c is a valid NUL-terminated path.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(rc, 0);
}

#[test]
fn hostile_files_get_their_exit_codes_and_never_hang() {
    let (dir, manifest) = plugin("cli-hostile", "hostile");
    // A FIFO as the manifest: exit 8 (KEEL_ERR_NOT_REGULAR_FILE), for validate, verify, inspect.
    let fifo = dir.join("fifo.json");
    mkfifo(&fifo);
    for cmd in ["validate", "verify", "inspect"] {
        let o = keel_bounded(
            &[cmd, p(&fifo), "--allow-unsigned"][..if cmd == "verify" { 3 } else { 2 }],
            &[&fifo],
        );
        assert_eq!(o.code, 8, "{cmd}: {}{}", o.stdout, o.stderr);
        assert!(o.stderr.contains("KEEL_ERR_NOT_REGULAR_FILE"), "{}", o.stderr);
    }
    // Duplicate keys: 11 (schema), naming the key; a JSON array: 15 (unknown format).
    let text = std::fs::read_to_string(&manifest).unwrap();
    let dup = dir.join("dup.json");
    std::fs::write(&dup, text.replacen('{', "{\"name\": \"shadow\",", 1)).unwrap();
    let o = expect(["validate", p(&dup)], 11);
    assert!(o.stderr.contains("duplicate key \"name\""), "{}", o.stderr);
    let arr = dir.join("array.json");
    std::fs::write(&arr, format!("[{text}]")).unwrap();
    expect(["validate", p(&arr)], 15);
    // The binary behind a symlinked directory: 5; a FIFO as the binary: 8.
    let v: Value = serde_json::from_str(&text).unwrap();
    let so = dir.join(v["binary"]["linux"].as_str().unwrap());
    let outside = common::tempdir("cli-hostile-outside");
    std::fs::copy(&so, outside.join("lib.so")).unwrap();
    std::os::unix::fs::symlink(&outside, dir.join("escape")).unwrap();
    let mut esc = v.clone();
    esc["binary"] = json!({"linux": "escape/lib.so"});
    let esc_path = dir.join("escape.json");
    std::fs::write(&esc_path, serde_json::to_vec(&esc).unwrap()).unwrap();
    expect(["verify", p(&esc_path), "--allow-unsigned"], 5);
    let bin_fifo = dir.join("fifo.so");
    mkfifo(&bin_fifo);
    let mut ff = v.clone();
    ff["binary"] = json!({"linux": "fifo.so"});
    let ff_path = dir.join("fifobin.json");
    std::fs::write(&ff_path, serde_json::to_vec(&ff).unwrap()).unwrap();
    let o = keel_bounded(&["verify", p(&ff_path), "--allow-unsigned"], &[&bin_fifo]);
    assert_eq!(o.code, 8, "{}{}", o.stdout, o.stderr);
}

#[test]
fn validate_accepts_an_unpinned_themisdb_manifest_with_a_warning_and_verify_refuses_it() {
    let dir = common::tempdir("cli-unpinned");
    let manifest = dir.join("plugin.json");
    let doc = serde_json::json!({
        "name": "s3_importer", "version": "1.0.0", "type": "importer", "description": "d",
        "binary": {"linux": "libs3.so"},
        "dependencies": ["aws-sdk-cpp-s3", "base_store"],
        "config_schema": {"type": "object", "properties": {"bucket": {"type": "string"}}},
        "config": {"bucket": "b"}
    });
    std::fs::write(&manifest, serde_json::to_vec(&doc).unwrap()).unwrap();
    std::fs::write(dir.join("libs3.so"), b"not loaded by validate").unwrap();
    let o = expect(["validate", p(&manifest)], 0);
    assert!(
        o.stdout.starts_with("ok:") && o.stdout.contains("valid themisdb manifest"),
        "{}",
        o.stdout
    );
    assert!(
        o.stderr.contains("warning:") && o.stderr.contains("expected_hash") && o.stderr.contains("unpinned"),
        "{}",
        o.stderr
    );
    assert!(
        o.stdout.contains("'aws-sdk-cpp-s3'") && o.stdout.contains("resolved at load"),
        "{}",
        o.stdout
    );
    // Loading (here: verify, the load's checks) is a policy question: refused with its own exit code.
    let o = expect(["verify", p(&manifest), "--allow-unsigned"], 33);
    assert!(o.stderr.contains("KEEL_ERR_UNPINNED_BINARY"), "{}", o.stderr);
    // Opted in: the actual SHA-256 of the bytes read is reported.
    let o = expect(["verify", p(&manifest), "--allow-unsigned", "--allow-unpinned"], 0);
    let sha = common::sha256_file(&dir.join("libs3.so"));
    assert!(o.stdout.contains("UNPINNED") && o.stdout.contains(&sha), "{}", o.stdout);
    // A config that violates config_schema is a schema error at its path.
    let mut bad = doc.clone();
    bad["config"]["bucket"] = serde_json::json!(7);
    std::fs::write(&manifest, serde_json::to_vec(&bad).unwrap()).unwrap();
    let o = expect(["validate", p(&manifest)], 11);
    assert!(o.stderr.contains("at /config/bucket"), "{}", o.stderr);
}

// --- the plugin workflow: new, trust, hash, sign --update-pin, call, list, --json ----------------

/// Run keel with `stdin` as its standard input.
fn keel_stdin(args: &[&str], stdin: &[u8]) -> Out {
    use std::io::Write as _;
    let mut child = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run keel");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let o = child.wait_with_output().unwrap();
    Out {
        code: o.status.code().expect("keel exited normally"),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// `keel --json ...`: the exit code as expected and stdout one JSON document.
fn expect_json(args: &[&str], code: i32) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let o = expect(&all, code);
    let doc: Value = serde_json::from_str(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "keel {args:?} --json: stdout is not one JSON document ({e}):\n{}",
            o.stdout
        )
    });
    assert_eq!(doc["ok"], Value::Bool(code == 0), "{doc}");
    doc
}

fn run_tool(cmd: &mut Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {:?}: {e}", cmd.get_program()));
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Build a plugin scaffolded by `keel new` the way its source comment says, with the system
/// compilers (warnings are errors): cc / c++ for native, clang for wasm32.
fn build_scaffold(dir: &Path, name: &str, lang: &str) -> PathBuf {
    let include = common::repo().join("include");
    let (out, mut cmd) = match lang {
        "c" => (
            dir.join(format!("lib{name}.so")),
            Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into())),
        ),
        "cpp" => (
            dir.join(format!("lib{name}.so")),
            Command::new(std::env::var("CXX").unwrap_or_else(|_| "c++".into())),
        ),
        _ => (dir.join(format!("{name}.wasm")), Command::new("clang")),
    };
    let src = dir.join(format!("{name}.{}", if lang == "cpp" { "cpp" } else { "c" }));
    match lang {
        "wasm" => cmd.args(["--target=wasm32", "-nostdlib", "-Wl,--no-entry", "-Wl,--export-dynamic"]),
        "cpp" => cmd.args(["-std=c++17", "-shared", "-fPIC"]),
        _ => cmd.args(["-shared", "-fPIC"]),
    };
    cmd.args(["-O2", "-Wall", "-Wextra", "-Werror"])
        .arg("-I")
        .arg(&include)
        .arg("-o")
        .arg(&out)
        .arg(&src);
    run_tool(
        &mut cmd,
        &format!("building the scaffolded {lang} plugin {}", src.display()),
    );
    out
}

#[test]
fn scaffolded_c_cpp_and_wasm_plugins_build_pin_sign_and_run() {
    let root = common::tempdir("cli-new");
    let plugins = root.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    // A key pair and a store trusting it, from the CLI.
    let store = root.join("store.json");
    let o = expect(
        [
            "trust",
            "init",
            p(&store),
            "--key",
            p(&root.join("signer")),
            "--label",
            "release",
        ],
        0,
    );
    let key_id = o.stdout.trim().to_string();
    let secret = root.join("signer.key");
    let s = p(&store);

    for (lang, name) in [("c", "hello-c"), ("cpp", "hello-cpp"), ("wasm", "hello-wasm")] {
        expect(["new", name, "--lang", lang, "--dir", p(&plugins)], 0);
        let dir = plugins.join(name);
        let manifest = dir.join("keel.json");
        let m = p(&manifest);
        // The scaffold: a manifest a host reads (placeholder pin) and CMake for keel_add_plugin.
        let doc: Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
        assert_eq!(doc["name"], name);
        assert_eq!(doc["sha256"], "0".repeat(64));
        assert_eq!(doc["runtime"], if lang == "wasm" { "wasm" } else { "native" });
        let cmake = std::fs::read_to_string(dir.join("CMakeLists.txt")).unwrap();
        assert!(cmake.contains("find_package(Keel REQUIRED)"), "{cmake}");
        assert!(
            cmake.contains("keel_add_plugin(") && cmake.contains(&format!("NAME {name}")),
            "{cmake}"
        );
        assert!(
            cmake.contains(if lang == "wasm" {
                "RUNTIME wasm"
            } else {
                "RUNTIME native"
            }),
            "{cmake}"
        );
        if lang == "cpp" {
            let src = std::fs::read_to_string(dir.join(format!("{name}.cpp"))).unwrap();
            assert!(src.contains("extern \"C\""), "{src}");
        }
        // Never overwrites.
        expect(["new", name, "--lang", lang, "--dir", p(&plugins)], 4);

        let binary = build_scaffold(&dir, name, lang);
        // The placeholder pin: the validated manifest is refused by verify and by sign.
        expect(["validate", m], 0);
        let o = expect(["verify", m, "--trust-store", s], 21);
        assert!(o.stderr.contains("KEEL_ERR_NO_SIGNATURE"), "{}", o.stderr);
        let o = expect(["sign", m, "--key", p(&secret)], 20);
        assert!(o.stderr.contains("--update-pin"), "{}", o.stderr);
        assert!(!PathBuf::from(format!("{m}.sig")).exists(), "a stale pin was signed");

        // keel hash gives the digest; sign --update-pin pins exactly it and signs.
        let o = expect(["hash", p(&binary)], 0);
        let digest = o.stdout.split_whitespace().next().unwrap().to_string();
        assert_eq!(digest, common::sha256_file(&binary));
        let o = expect(["sign", m, "--key", p(&secret), "--update-pin"], 0);
        assert!(o.stdout.contains(&key_id), "{}", o.stdout);
        let doc: Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
        assert_eq!(doc["sha256"], Value::from(digest.clone()));
        let o = expect(["verify", m, "--trust-store", s], 0);
        assert!(
            o.stdout.contains("signed by key") && o.stdout.contains(&digest),
            "{}",
            o.stdout
        );

        // Loaded and called through the CLI: input from an argument, from stdin, none.
        let o = expect(["call", m, "echo", "payload 1", "--trust-store", s], 0);
        assert_eq!(o.stdout, "payload 1");
        let o = keel_stdin(&["call", m, "echo", "-", "--trust-store", s], b"from\0stdin\n");
        assert_eq!(o.code, 0, "{}", o.stderr);
        assert_eq!(o.stdout.as_bytes(), b"from\0stdin\n");
        let o = expect(["call", m, "hello", "--trust-store", s], 0);
        assert_eq!(o.stdout, format!("hello from {name}"));
        let d = expect_json(&["call", m, "echo", "x\u{1}y", "--trust-store", s], 0);
        assert_eq!(d["output"], "x\u{1}y");
        assert_eq!(d["output_hex"], "780179");
        // No such function (50); unsigned without --allow-unsigned is not loaded (21).
        let o = expect(["call", m, "nope", "--trust-store", s], 50);
        assert!(o.stderr.contains("KEEL_ERR_FUNCTION_NOT_FOUND"), "{}", o.stderr);
        std::fs::rename(format!("{m}.sig"), format!("{m}.sig.off")).unwrap();
        expect(["call", m, "echo", "x", "--trust-store", s], 21);
        let o = expect(["call", m, "echo", "unsigned ok", "--allow-unsigned"], 0);
        assert_eq!(o.stdout, "unsigned ok");
        std::fs::rename(format!("{m}.sig.off"), format!("{m}.sig")).unwrap();
        // A rebuilt binary no longer matches: call refuses it (20) until it is pinned again.
        std::fs::write(&binary, b"not the signed build").unwrap();
        expect(["call", m, "echo", "x", "--trust-store", s], 20);
        build_scaffold(&dir, name, lang);
    }

    // list: what load_dir loads, in order; verify DIR: the host's checks of that set.
    let d = expect_json(&["list", p(&plugins)], 0);
    let names: Vec<&str> = d["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["plugin"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["hello-c", "hello-cpp", "hello-wasm"]);
    let d = expect_json(&["verify", p(&plugins), "--trust-store", s], 0);
    assert_eq!(d["plugins"].as_array().unwrap().len(), 3);
    assert_eq!(d["plugins"][0]["trust"]["key_id"], Value::from(key_id.clone()));
    // And a real host loads that directory and calls every plugin.
    let host = keel::Host::new();
    host.trust().set_trust_store_path(&store).unwrap();
    let slots = host.load_dir(&plugins).unwrap();
    assert_eq!(slots.len(), 3);
    for slot in slots {
        let mut out = Vec::new();
        slot.call(slot.resolve("hello").unwrap(), b"", &mut out).unwrap();
        assert_eq!(out, format!("hello from {}", slot.name()).into_bytes());
    }
}

#[test]
fn list_orders_by_dependencies_and_reports_skipped_entries() {
    let root = common::tempdir("cli-list");
    // zeta has no dependencies, alpha depends on zeta: zeta loads first.
    for (name, deps) in [("alpha", json!({"zeta": "^1"})), ("zeta", json!({}))] {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let bin = dir.join(format!("lib{name}.so"));
        std::fs::write(&bin, name).unwrap();
        let m = common::write_manifest(&dir, name, "1.0.0", &bin, json!({"dependencies": deps}));
        std::fs::rename(&m, dir.join("keel.json")).unwrap();
    }
    std::fs::write(root.join("stray.json"), b"{}").unwrap();
    let o = expect(["list", p(&root)], 0);
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert!(lines[0].contains("zeta") && lines[1].contains("alpha"), "{}", o.stdout);
    assert!(lines[1].contains("depends on zeta ^1"), "{}", o.stdout);
    assert!(o.stderr.contains("stray.json"), "{}", o.stderr);
    let d = expect_json(&["list", p(&root)], 0);
    assert_eq!(d["plugins"][0]["plugin"], "zeta");
    assert_eq!(d["skipped"][0]["path"], Value::from(p(&root.join("stray.json"))));
    // A cycle is refused as load_dir refuses it (40); a directory without manifests (9).
    let mut v: Value = serde_json::from_slice(&std::fs::read(root.join("zeta/keel.json")).unwrap()).unwrap();
    v["dependencies"] = json!({"alpha": "*"});
    std::fs::write(root.join("zeta/keel.json"), serde_json::to_vec(&v).unwrap()).unwrap();
    let d = expect_json(&["list", p(&root)], 40);
    assert_eq!(d["error"]["status"], "KEEL_ERR_DEPENDENCY_CYCLE");
    // verify DIR refuses the directory with the cause load_dir gives, in the load's order of
    // checks: unsigned first (21), the cycle once unsigned plugins are allowed (40).
    let host = keel::Host::new();
    let e = host.load_dir(&root).err().expect("load_dir refuses the directory");
    assert_eq!(e.status(), keel::keel_status::KEEL_ERR_NO_SIGNATURE);
    expect(["verify", p(&root)], 21);
    let host = keel::Host::new();
    host.trust().set_require_signature(false).unwrap();
    let e = host.load_dir(&root).err().expect("load_dir refuses the directory");
    assert_eq!(e.status(), keel::keel_status::KEEL_ERR_DEPENDENCY_CYCLE);
    expect(["verify", p(&root), "--allow-unsigned"], 40);
    let empty = common::tempdir("cli-list-empty");
    std::fs::write(empty.join("x.json"), b"{}").unwrap();
    expect(["list", p(&empty)], 9);
}

#[test]
fn trust_commands_manage_a_store_that_hosts_accept() {
    let dir = common::tempdir("cli-trust");
    let store = dir.join("store.json");
    let s = p(&store);
    // An empty store, version 1; never overwritten.
    let d = expect_json(&["trust", "init", s], 0);
    assert_eq!(d["version"], 1);
    assert_eq!(d["key"], Value::Null);
    expect(["trust", "init", s], 4);
    let (a_secret, a) = keygen(&dir, "alice");
    let (_, b) = keygen(&dir, "bob");
    let a_id = a["id"].as_str().unwrap();
    let b_id = b["id"].as_str().unwrap();

    // add: version 2, then 3 (with restrictions); the same key twice is refused (7).
    let o = expect(["trust", "add", s, p(&dir.join("alice.pub"))], 0);
    assert!(o.stdout.contains("version 2"), "{}", o.stdout);
    expect(["trust", "add", s, p(&dir.join("alice.pub"))], 7);
    let d = expect_json(
        &[
            "trust",
            "add",
            s,
            p(&dir.join("bob.pub")),
            "--allow-plugin",
            "bob-*",
            "--not-after",
            "2001-01-01T00:00:00Z",
        ],
        0,
    );
    assert_eq!(d["version"], 3);
    // A malformed entry file (29) leaves the store as it was.
    std::fs::write(dir.join("bad.pub"), br#"{"id": "00", "public_key": "AA=="}"#).unwrap();
    expect(["trust", "add", s, p(&dir.join("bad.pub"))], 29);

    let d = expect_json(&["trust", "list", s], 0);
    assert_eq!(d["version"], 3);
    let state = |d: &Value, id: &str| {
        d["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["id"] == id)
            .map(|k| k["state"].as_str().unwrap().to_string())
            .unwrap()
    };
    assert_eq!(state(&d, a_id), "valid");
    assert_eq!(state(&d, b_id), "expired");
    let bob = d["keys"].as_array().unwrap().iter().find(|k| k["id"] == b_id).unwrap();
    assert_eq!(bob["allowed_plugins"], json!(["bob-*"]));

    // A host reads the store: a plugin signed by alice verifies and loads.
    let (_pdir, manifest) = plugin("cli-trust-plugin", "tp");
    let m = p(&manifest);
    expect(["sign", m, "--key", p(&a_secret)], 0);
    expect(["verify", m, "--trust-store", s], 0);
    let t = keel::trust::TrustState::new();
    assert_eq!(t.set_trust_store_path(&store).unwrap(), 3);

    // revoke: version 4; verify then refuses (26); revoking again (7) or an unknown key (23).
    let o = expect(["trust", "revoke", s, a_id, "--reason", "laptop lost"], 0);
    assert!(o.stdout.contains("version 4"), "{}", o.stdout);
    let o = expect(["verify", m, "--trust-store", s], 26);
    assert!(o.stderr.contains("laptop lost"), "{}", o.stderr);
    expect(["trust", "revoke", s, a_id], 7);
    expect(["trust", "revoke", s, &"ab".repeat(32)], 23);
    let o = expect(["trust", "list", s], 0);
    assert!(
        o.stdout.contains("revoked") && o.stdout.contains("version 4"),
        "{}",
        o.stdout
    );
    // The host holding version 3 takes version 4 (no rollback: every edit bumped the version).
    assert_eq!(t.set_trust_store_path(&store).unwrap(), 4);

    // init --key: a key pair and a store trusting it, in one step.
    let store2 = dir.join("store2.json");
    let d = expect_json(
        &[
            "trust",
            "init",
            p(&store2),
            "--key",
            p(&dir.join("carol")),
            "--allow-plugin",
            "tp",
        ],
        0,
    );
    let carol = d["key"]["key_id"].as_str().unwrap().to_string();
    assert!(dir.join("carol.key").exists() && dir.join("carol.pub").exists());
    expect(["sign", m, "--key", p(&dir.join("carol.key"))], 0);
    let o = expect(["verify", m, "--trust-store", p(&store2)], 0);
    assert!(o.stdout.contains(&carol), "{}", o.stdout);
    // A missing store (3).
    expect(["trust", "list", p(&dir.join("none.json"))], 3);
}

/// The options a case gives both to `keel verify` and to the host.
#[derive(Clone, Default)]
struct Opts {
    store: Option<PathBuf>,
    allow_unsigned: bool,
    allowlist: Option<&'static str>,
}

impl Opts {
    fn args(&self) -> Vec<String> {
        let mut a = Vec::new();
        if let Some(s) = &self.store {
            a.extend(["--trust-store".to_string(), p(s).to_string()]);
        }
        if self.allow_unsigned {
            a.push("--allow-unsigned".into());
        }
        if let Some(l) = self.allowlist {
            a.extend(["--allowlist".to_string(), l.to_string()]);
        }
        a
    }

    /// A real host configured with the same options.
    fn host(&self) -> keel::Host {
        let host = keel::Host::new();
        if self.allow_unsigned {
            host.trust().set_require_signature(false).unwrap();
        }
        if let Some(s) = &self.store {
            host.trust().set_trust_store_path(s).unwrap();
        }
        if let Some(l) = self.allowlist {
            let names: Vec<&str> = l.split(',').filter(|n| !n.is_empty()).collect();
            host.set_allowlist(keel::capability::Capabilities::parse(&names).unwrap());
        }
        host
    }
}

#[test]
fn verify_accepts_exactly_what_a_host_with_the_same_settings_loads() {
    let keys = common::tempdir("cli-prop-keys");
    let (secret, entry) = keygen(&keys, "trusted");
    let (stranger, _) = keygen(&keys, "stranger");
    let store = write_store(&keys, "store.json", 1, vec![entry.clone()]);
    let revoked = write_store(
        &keys,
        "revoked.json",
        1,
        vec![with(entry.clone(), json!({"revoked": {"at": "2026-01-01T00:00:00Z"}}))],
    );
    let trusted = Opts {
        store: Some(store.clone()),
        ..Opts::default()
    };

    // Real plugins: the echo fixture, built once, in one folder per case.
    let build = common::tempdir("cli-prop-build");
    let so = common::build_native("echo", &[], &build, "libecho.so");
    let make = |case: &str, extra: Value, sign_with: Option<&Path>| -> PathBuf {
        let dir = common::tempdir(&format!("cli-prop-{case}"));
        let bin = dir.join("libecho.so");
        std::fs::copy(&so, &bin).unwrap();
        let m = common::write_manifest(&dir, "echo", "1.0.0", &bin, extra);
        if let Some(k) = sign_with {
            expect(["sign", p(&m), "--key", p(k)], 0);
        }
        m
    };
    let good = make("good", json!({"capabilities": ["log"]}), Some(&secret));
    let unknown_cap = make(
        "unknown-cap",
        json!({"capabilities": ["log", "telepathy"]}),
        Some(&secret),
    );
    let network = make("network", json!({"capabilities": ["rpc:register"]}), Some(&secret));
    let needs_dep = make("dep", json!({"dependencies": {"base": "^1"}}), Some(&secret));
    let unsigned = make("unsigned", json!({}), None);
    let by_stranger = make("stranger", json!({}), Some(&stranger));
    let tampered = make("tampered", json!({}), Some(&secret));
    std::fs::write(tampered.with_file_name("libecho.so"), b"swapped after signing").unwrap();
    let stale_pin = make("stale", json!({"sha256": "ab".repeat(32)}), None);

    let unsigned_ok = Opts {
        allow_unsigned: true,
        ..Opts::default()
    };
    let cases: Vec<(&str, &PathBuf, Opts, i32)> = vec![
        ("signed and trusted", &good, trusted.clone(), 0),
        ("unknown capability", &unknown_cap, trusted.clone(), 17),
        (
            "capability outside the default allowlist",
            &network,
            trusted.clone(),
            18,
        ),
        (
            "capability in the given allowlist",
            &network,
            Opts {
                allowlist: Some("log,rpc:register"),
                ..trusted.clone()
            },
            0,
        ),
        (
            "log outside an empty allowlist",
            &good,
            Opts {
                allowlist: Some(""),
                ..trusted.clone()
            },
            18,
        ),
        ("dependency not loaded", &needs_dep, trusted.clone(), 41),
        ("unsigned, signature required", &unsigned, trusted.clone(), 21),
        ("unsigned, allowed", &unsigned, unsigned_ok.clone(), 0),
        ("untrusted key", &by_stranger, trusted.clone(), 23),
        (
            "revoked key",
            &good,
            Opts {
                store: Some(revoked.clone()),
                ..Opts::default()
            },
            26,
        ),
        ("binary swapped after signing", &tampered, trusted.clone(), 20),
        ("stale pin", &stale_pin, unsigned_ok.clone(), 20),
        ("no trust store", &good, Opts::default(), 23),
    ];
    let (mut accepted, mut refused) = (0, 0);
    for (what, manifest, opts, code) in &cases {
        let mut args = vec!["verify".to_string(), p(manifest).to_string()];
        args.extend(opts.args());
        let o = keel(&args);
        assert_eq!(o.code, *code, "{what}: keel verify\n{}{}", o.stdout, o.stderr);
        let host = opts.host();
        // Host::check (what verify runs) agrees with the load it stands for.
        let checked = host
            .check(std::slice::from_ref(manifest))
            .map(|_| ())
            .map_err(|e| e.status());
        match host.load(manifest) {
            Ok(slot) => {
                assert_eq!(o.code, 0, "{what}: the host loads what verify refused:\n{}", o.stderr);
                assert_eq!(checked, Ok(()), "{what}");
                // Loaded means running: the plugin answers.
                let mut out = Vec::new();
                slot.call(slot.resolve("echo").unwrap(), b"ping", &mut out).unwrap();
                assert_eq!(out, b"ping", "{what}");
                accepted += 1;
            }
            Err(e) => {
                assert_ne!(o.code, 0, "{what}: verify accepted what the host refuses: {e}");
                assert_eq!(checked, Err(e.status()), "{what}");
                assert!(
                    o.stderr.contains(e.status().name()),
                    "{what}: verify and the load disagree on the cause: host {e}, verify {}",
                    o.stderr
                );
                refused += 1;
            }
        }
        // validate checks the capability names (and the allowlist when given) as the load does.
        let mut vargs = vec!["validate".to_string(), p(manifest).to_string()];
        if let Some(l) = opts.allowlist {
            vargs.extend(["--allowlist".to_string(), l.to_string()]);
        }
        let v = keel(&vargs);
        if [17, 18].contains(code) && (opts.allowlist.is_some() || *code == 17) {
            assert_eq!(v.code, *code, "{what}: validate\n{}", v.stderr);
        } else {
            assert_eq!(v.code, 0, "{what}: validate\n{}", v.stderr);
        }
    }
    assert!(accepted >= 3 && refused >= 9, "accepted {accepted}, refused {refused}");

    // A set: the plugin with a dependency is accepted together with its dependency, exactly
    // as a host loads the pair (dependency first).
    let base_dir = needs_dep.parent().unwrap();
    let base_bin = base_dir.join("libbase.so");
    std::fs::copy(&so, &base_bin).unwrap();
    let base = common::write_manifest(base_dir, "base", "1.2.0", &base_bin, json!({}));
    expect(["sign", p(&base), "--key", p(&secret)], 0);
    let d = expect_json(&["verify", p(&needs_dep), p(&base), "--trust-store", p(&store)], 0);
    assert_eq!(d["plugins"][0]["plugin"], "base");
    assert_eq!(d["plugins"][1]["plugin"], "echo");
    let host = trusted.host();
    assert_eq!(host.load_set(&[needs_dep.clone(), base.clone()]).unwrap().len(), 2);
}

#[test]
fn inspect_gives_one_verdict_and_sign_refuses_a_stale_pin() {
    let keys = common::tempdir("cli-verdict-keys");
    let (secret, entry) = keygen(&keys, "k");
    let (dir, manifest) = plugin("cli-verdict", "verdict");
    let m = p(&manifest);
    let store = write_store(&dir, "store.json", 1, vec![entry]);
    let s = p(&store);
    expect(["sign", m, "--key", p(&secret)], 0);
    let d = expect_json(&["inspect", m, "--trust-store", s], 0);
    assert_eq!(d["binary"]["matches"], true);
    assert_eq!(d["verification"]["ok"], true);
    // The binary changes under a valid signature by a trusted key: the signature is fine, the
    // plugin is not: one verdict, the host's.
    let bin = dir.join("libverdict.so");
    std::fs::write(&bin, b"rebuilt").unwrap();
    let d = expect_json(&["inspect", m, "--trust-store", s], 0);
    assert_eq!(d["signature"]["file"]["kind"], "keel");
    assert_eq!(d["binary"]["matches"], false);
    assert_eq!(d["verification"]["ok"], false);
    assert_eq!(d["verification"]["error"]["status"], "KEEL_ERR_DIGEST_MISMATCH");
    let o = expect(["inspect", m, "--trust-store", s], 0);
    assert!(
        o.stdout.contains("REFUSED") && o.stdout.contains("KEEL_ERR_DIGEST_MISMATCH"),
        "{}",
        o.stdout
    );
    // An unknown capability: inspect refuses it as the load does.
    let mut v: Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    v["capabilities"] = json!(["telepathy"]);
    v["sha256"] = Value::from(common::sha256_file(&bin));
    std::fs::write(&manifest, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    expect(["sign", m, "--key", p(&secret)], 0);
    let d = expect_json(&["inspect", m, "--trust-store", s], 0);
    assert_eq!(d["verification"]["error"]["status"], "KEEL_ERR_CAPABILITY_UNKNOWN");
    v["capabilities"] = json!(["log"]);
    std::fs::write(&manifest, serde_json::to_vec_pretty(&v).unwrap()).unwrap();

    // sign refuses the stale pin (20) and leaves the old signature alone; --update-pin pins it.
    std::fs::write(&bin, b"rebuilt again").unwrap();
    let before = std::fs::read(format!("{m}.sig")).unwrap();
    let d = expect_json(&["sign", m, "--key", p(&secret)], 20);
    assert_eq!(d["error"]["status"], "KEEL_ERR_DIGEST_MISMATCH");
    assert_eq!(std::fs::read(format!("{m}.sig")).unwrap(), before);
    let d = expect_json(&["sign", m, "--key", p(&secret), "--update-pin"], 0);
    assert_eq!(d["pin_updated"]["new"], Value::from(common::sha256_file(&bin)));
    expect(["verify", m, "--trust-store", s], 0);
    // --update-pin with the pin already right changes nothing in the manifest.
    let text = std::fs::read(&manifest).unwrap();
    let d = expect_json(&["sign", m, "--key", p(&secret), "--update-pin"], 0);
    assert_eq!(d["pin_updated"], Value::Null);
    assert_eq!(std::fs::read(&manifest).unwrap(), text);

    // A ThemisDB manifest without expected_hash: sign refuses it (33); --update-pin adds it.
    let tdir = common::tempdir("cli-verdict-themis");
    let tm = tdir.join("plugin.json");
    std::fs::write(
        &tm,
        br#"{"name":"s3_importer","version":"1.0.0","type":"importer","description":"d","binary":{"linux":"libs3.so"}}"#,
    )
    .unwrap();
    std::fs::write(tdir.join("libs3.so"), b"s3").unwrap();
    expect(["sign", p(&tm), "--key", p(&secret)], 33);
    expect(["sign", p(&tm), "--key", p(&secret), "--update-pin"], 0);
    let t: Value = serde_json::from_slice(&std::fs::read(&tm).unwrap()).unwrap();
    assert_eq!(
        t["expected_hash"],
        Value::from(common::sha256_file(&tdir.join("libs3.so")))
    );
    expect(["verify", p(&tm), "--trust-store", s], 0);
}

#[test]
fn every_command_speaks_json() {
    let dir = common::tempdir("cli-json");
    let d = expect_json(&["keygen", "--out", p(&dir.join("k"))], 0);
    assert_eq!(d["command"], "keygen");
    assert_eq!(d["key_id"].as_str().unwrap().len(), 64);
    let store = dir.join("store.json");
    expect_json(&["trust", "init", p(&store)], 0);
    let d = expect_json(&["trust", "add", p(&store), p(&dir.join("k.pub"))], 0);
    assert_eq!(d["version"], 2);
    let d = expect_json(&["new", "jsonplug", "--lang", "c", "--dir", p(&dir)], 0);
    let manifest = PathBuf::from(d["manifest"].as_str().unwrap());
    let m = p(&manifest);
    let so = build_scaffold(&dir.join("jsonplug"), "jsonplug", "c");
    let d = expect_json(&["hash", p(&so)], 0);
    assert_eq!(d["files"][0]["sha256"], Value::from(common::sha256_file(&so)));
    let d = expect_json(&["sign", m, "--key", p(&dir.join("k.key")), "--update-pin"], 0);
    assert_eq!(d["key_id"], Value::from(d["key_id"].as_str().unwrap()));
    let d = expect_json(&["validate", m], 0);
    assert_eq!(d["format"], "keel");
    let d = expect_json(&["verify", m, "--trust-store", p(&store)], 0);
    assert_eq!(d["plugins"][0]["trust"]["result"], "signed");
    let d = expect_json(&["inspect", m, "--trust-store", p(&store)], 0);
    assert_eq!(d["verification"]["ok"], true);
    let d = expect_json(&["list", p(&dir)], 0);
    assert_eq!(d["plugins"][0]["plugin"], "jsonplug");
    let d = expect_json(&["call", m, "hello", "--trust-store", p(&store)], 0);
    assert_eq!(d["output"], "hello from jsonplug");
    let d = expect_json(&["trust", "list", p(&store)], 0);
    let id = d["keys"][0]["id"].as_str().unwrap().to_string();
    expect_json(&["trust", "revoke", p(&store), &id], 0);
    // Failures are one JSON document too, with the status and the exit code of the cause.
    let d = expect_json(&["verify", m, "--trust-store", p(&store)], 26);
    assert_eq!(d["command"], "verify");
    assert_eq!(d["error"]["status"], "KEEL_ERR_KEY_REVOKED");
    let d = expect_json(&["validate", p(&dir.join("missing.json"))], 3);
    assert_eq!(d["error"]["status"], "KEEL_ERR_FILE_NOT_FOUND");
}

/// Collects what a plugin writes to a `keel_output`.
unsafe extern "C" fn collect(ctx: *mut std::ffi::c_void, data: *const u8, len: usize) -> i32 {
    // SAFETY: ctx is the Vec<u8> the test passes; data points to len readable bytes (ABI).
    unsafe {
        (*(ctx as *mut Vec<u8>)).extend_from_slice(std::slice::from_raw_parts(data, len));
    }
    0
}

#[test]
fn the_cpp_scaffold_exports_a_c_entry_and_turns_exceptions_into_errors() {
    use keel::runtime::native::RawVtable;
    use keel::runtime::output::RawOutput;
    let dir = common::tempdir("cli-new-cpp-barrier");
    // A name a manifest refuses is refused before anything is written (11).
    expect(["new", "Bad Name", "--lang", "cpp", "--dir", p(&dir)], 11);
    assert!(!dir.join("Bad Name").exists());

    expect(["new", "barrier", "--lang", "cpp", "--dir", p(&dir)], 0);
    let so = build_scaffold(&dir.join("barrier"), "barrier", "cpp");
    // SAFETY: the library is the scaffold just built; loading it runs only its static
    // initialisers (the vtable).
    let lib = unsafe { libloading::Library::new(&so) }.unwrap();
    // The unmangled name resolves: the entry has C linkage.
    // SAFETY: keel_plugin_entry has this signature (keel_plugin.h).
    let entry = unsafe { lib.get::<unsafe extern "C" fn() -> *const RawVtable>(b"keel_plugin_entry\0") }.unwrap();
    // SAFETY: the entry returns a pointer to the plugin's static vtable.
    let vt = unsafe { &*entry() };
    assert_eq!(vt.abi_version, 1);
    let mut instance: *mut std::ffi::c_void = std::ptr::null_mut();
    let mut err: Vec<u8> = Vec::new();
    let err_out = RawOutput {
        ctx: &mut err as *mut Vec<u8> as *mut _,
        write: collect,
    };
    // SAFETY: the hooks are called as the ABI prescribes: init with a config and an output,
    // then call on the instance init made, then shutdown once.
    unsafe {
        assert_eq!(
            (vt.init.unwrap())(c"{}".as_ptr(), 2, std::ptr::null(), &mut instance, &err_out),
            0
        );
        let mut out: Vec<u8> = Vec::new();
        let output = RawOutput {
            ctx: &mut out as *mut Vec<u8> as *mut _,
            write: collect,
        };
        assert_eq!((vt.call.unwrap())(instance, 0, b"abc".as_ptr(), 3, &output), 0);
        assert_eq!(out, b"abc");
        // A function index the plugin does not have makes Plugin::call throw: the barrier
        // returns an error with the exception's message instead of terminating the process.
        out.clear();
        assert_eq!((vt.call.unwrap())(instance, 99, std::ptr::null(), 0, &output), 1);
        assert_eq!(String::from_utf8_lossy(&out), "barrier: no such function");
        (vt.shutdown.unwrap())(instance);
    }
}
