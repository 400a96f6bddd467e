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
    for sub in ["verify", "sign", "keygen", "validate", "inspect"] {
        let o = expect([sub, "--help"], 0);
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
    assert!(
        o.stdout.contains("keygen") && o.stdout.contains("inspect"),
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
