//! `keel`: sign, verify, validate and inspect Keel plugins.
//!
//! Thin over the library: every check is `keel::trust` / `keel::manifest` code, the same code
//! a host runs on load. The exit code names the cause (table in `keel --help` and
//! docs/trust.md).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use clap::{Parser, Subcommand};
use serde_json::{json, Value};

use keel::error::{keel_status, Error, Result};
use keel::manifest::{self, ManifestFile};
use keel::trust::{self, digest, signature, store, KeelSignature, SignatureFile, TrustState};

/// Exit codes, one per cause. Stable: a code is never reused for another cause.
const EXIT_CODES: &[(u8, Option<keel_status>, &str)] = {
    use keel_status::*;
    &[
        (0, None, "ok"),
        (1, None, "any other failure (the message names the KEEL_ERR_* cause)"),
        (2, None, "command-line usage error"),
        (3, Some(KEEL_ERR_FILE_NOT_FOUND), "a file does not exist"),
        (
            4,
            Some(KEEL_ERR_IO),
            "a file cannot be read or written (includes: refusing to overwrite a key)",
        ),
        (5, Some(KEEL_ERR_SYMLINK_REFUSED), "a binary is a symbolic link"),
        (6, Some(KEEL_ERR_FILE_TOO_LARGE), "a file is larger than Keel accepts"),
        (
            7,
            Some(KEEL_ERR_INVALID_ARGUMENT),
            "bad argument (secret key file unreadable/invalid/too open, bad comment)",
        ),
        (
            8,
            Some(KEEL_ERR_NOT_REGULAR_FILE),
            "a file is not a regular file (FIFO, socket, device, directory)",
        ),
        (10, Some(KEEL_ERR_MANIFEST_PARSE), "manifest is not valid JSON"),
        (11, Some(KEEL_ERR_MANIFEST_SCHEMA), "manifest violates the schema"),
        (
            12,
            Some(KEEL_ERR_MANIFEST_NO_BINARY),
            "manifest names no binary for this platform",
        ),
        (
            13,
            Some(KEEL_ERR_MANIFEST_BAD_PATH),
            "manifest binary path escapes its directory",
        ),
        (14, Some(KEEL_ERR_MANIFEST_INVALID), "manifest is inconsistent"),
        (
            15,
            Some(KEEL_ERR_MANIFEST_UNKNOWN_FORMAT),
            "manifest is neither Keel nor ThemisDB format",
        ),
        (
            16,
            Some(KEEL_ERR_BAD_VERSION),
            "manifest has a version or requirement that is not semver",
        ),
        (
            20,
            Some(KEEL_ERR_DIGEST_MISMATCH),
            "binary (or hash-only .sig) does not match its digest",
        ),
        (
            21,
            Some(KEEL_ERR_NO_SIGNATURE),
            "no signature file and a signature is required",
        ),
        (
            22,
            Some(KEEL_ERR_MALFORMED_SIGNATURE),
            "signature file cannot be parsed",
        ),
        (23, Some(KEEL_ERR_UNKNOWN_KEY), "signing key is not in the trust store"),
        (24, Some(KEEL_ERR_KEY_NOT_YET_VALID), "signing key is not valid yet"),
        (25, Some(KEEL_ERR_KEY_EXPIRED), "signing key has expired"),
        (26, Some(KEEL_ERR_KEY_REVOKED), "signing key is revoked"),
        (
            27,
            Some(KEEL_ERR_KEY_NOT_ALLOWED),
            "signing key may not sign this plugin name",
        ),
        (28, Some(KEEL_ERR_BAD_SIGNATURE), "signature does not verify"),
        (
            29,
            Some(KEEL_ERR_TRUST_STORE_MALFORMED),
            "trust store cannot be parsed or is inconsistent",
        ),
        (
            30,
            Some(KEEL_ERR_TRUST_STORE_ROLLBACK),
            "trust store rollback (not produced by this CLI)",
        ),
        (
            31,
            Some(KEEL_ERR_POLICY_DOWNGRADE),
            "policy downgrade (not produced by this CLI)",
        ),
        (
            32,
            Some(KEEL_ERR_HASH_ONLY_SIGNATURE),
            "only a ThemisDB hash .sig and a signature is required",
        ),
        (
            33,
            Some(KEEL_ERR_UNPINNED_BINARY),
            "manifest pins no binary digest and unpinned binaries are not allowed",
        ),
    ]
};

fn exit_code(status: keel_status) -> u8 {
    EXIT_CODES
        .iter()
        .find(|(_, s, _)| *s == Some(status))
        .map(|(c, _, _)| *c)
        .unwrap_or(1)
}

fn exit_code_help() -> String {
    let mut s = String::from("Exit codes:\n");
    for (code, status, what) in EXIT_CODES {
        let name = status.map(|s| s.name()).unwrap_or("");
        s.push_str(&format!("  {code:>3}  {name:<32} {what}\n"));
    }
    s
}

#[derive(Parser)]
#[command(
    name = "keel",
    version,
    about = "Sign, verify, validate and inspect Keel plugins",
    long_about = "Sign, verify, validate and inspect Keel plugins.\n\n\
        A plugin's manifest is signed with Ed25519 into a detached <manifest>.sig; hosts verify it \
        against a trust store of public keys (see docs/trust.md for both formats).",
    after_help = exit_code_help()
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate an Ed25519 key pair: <prefix>.key (secret, mode 0600) and <prefix>.pub (a
    /// trust-store key entry). Prints the key id on stdout.
    #[command(after_help = exit_code_help())]
    Keygen {
        /// Output prefix: writes <prefix>.key and <prefix>.pub (never overwrites existing files).
        #[arg(long, value_name = "PREFIX")]
        out: PathBuf,
        /// Label recorded in the public key entry.
        #[arg(long, default_value = "")]
        label: String,
        /// Plugin-name glob the key may sign (repeatable); recorded as allowed_plugins in the entry.
        #[arg(long = "allow-plugin", value_name = "GLOB")]
        allow_plugin: Vec<String>,
        /// Also print the trust-store key entry (JSON) on stdout after the key id.
        #[arg(long)]
        print_entry: bool,
    },
    /// Sign a manifest's exact bytes with a secret key; writes <manifest>.sig.
    #[command(after_help = exit_code_help())]
    Sign {
        /// The manifest to sign (validated first; an invalid manifest is not signed).
        manifest: PathBuf,
        /// Secret key file written by `keel keygen` (must not be readable by group or others).
        #[arg(long, value_name = "SECRET")]
        key: PathBuf,
        /// A comment stored in the .sig and covered by the signature (no control characters).
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Verify a plugin as a host would before loading it: manifest, signature against the
    /// trust store, and the binary's digest. Prints "ok" or the exact cause.
    #[command(after_help = exit_code_help())]
    Verify {
        manifest: PathBuf,
        /// Trust store file (JSON). Without one no key is trusted.
        #[arg(long, value_name = "FILE")]
        trust_store: Option<PathBuf>,
        /// Accept a plugin without a signature, or with a ThemisDB hash-only .sig whose hash
        /// matches. A signature that is present must still verify; the digest check still runs.
        #[arg(long)]
        allow_unsigned: bool,
        /// Accept a binary whose manifest pins no SHA-256 (ThemisDB plugin.json without
        /// expected_hash), as a host with the allow_unpinned policy does; the binary's actual
        /// SHA-256 is printed.
        #[arg(long)]
        allow_unpinned: bool,
    },
    /// Check a manifest against the schema (Keel or ThemisDB format) with path-precise errors.
    #[command(after_help = exit_code_help())]
    Validate { manifest: PathBuf },
    /// Show a manifest, its digests, its signature's key id, and (with --trust-store) whether
    /// the signature verifies. Exits 0 whenever the manifest itself could be read and parsed.
    #[command(after_help = exit_code_help())]
    Inspect {
        manifest: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Trust store to check the signature against.
        #[arg(long, value_name = "FILE")]
        trust_store: Option<PathBuf>,
        /// Judge the signature with unsigned plugins allowed (as `verify --allow-unsigned`).
        #[arg(long)]
        allow_unsigned: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (name, result) = match cli.command {
        Command::Keygen {
            out,
            label,
            allow_plugin,
            print_entry,
        } => ("keygen", keygen(&out, &label, &allow_plugin, print_entry)),
        Command::Sign { manifest, key, comment } => ("sign", sign(&manifest, &key, &comment)),
        Command::Verify {
            manifest,
            trust_store,
            allow_unsigned,
            allow_unpinned,
        } => (
            "verify",
            verify(&manifest, trust_store.as_deref(), allow_unsigned, allow_unpinned),
        ),
        Command::Validate { manifest } => ("validate", validate(&manifest)),
        Command::Inspect {
            manifest,
            json,
            trust_store,
            allow_unsigned,
        } => (
            "inspect",
            inspect(&manifest, json, trust_store.as_deref(), allow_unsigned),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keel {name}: error: {e} ({})", e.code());
            ExitCode::from(exit_code(e.status()))
        }
    }
}

fn keygen(prefix: &Path, label: &str, allowed: &[String], print_entry: bool) -> Result<()> {
    let with_ext = |ext: &str| {
        let mut s = prefix.as_os_str().to_os_string();
        s.push(ext);
        PathBuf::from(s)
    };
    let (key_path, pub_path) = (with_ext(".key"), with_ext(".pub"));
    for p in [&key_path, &pub_path] {
        if p.symlink_metadata().is_ok() {
            return Err(Error::new(
                keel_status::KEEL_ERR_IO,
                format!("{}: already exists (refusing to overwrite a key)", p.display()),
            ));
        }
    }
    let key = signature::generate_signing_key()?;
    let vk = key.verifying_key();
    // Checks the --allow-plugin patterns, before anything is written.
    let entry = store::key_entry(&vk, label, allowed).map_err(|e| e.context("--allow-plugin"))?;
    let mut entry_text = serde_json::to_string_pretty(&entry).map_err(|e| Error::internal(e.to_string()))?;
    entry_text.push('\n');
    signature::write_secret_key_file(&key_path, &key)?;
    if let Err(e) = write_new(&pub_path, entry_text.as_bytes()) {
        let _ = std::fs::remove_file(&key_path);
        return Err(e);
    }
    println!("{}", signature::key_id_hex(&signature::key_id(&vk)));
    if print_entry {
        print!("{entry_text}");
    }
    eprintln!(
        "wrote {} (secret, mode 0600) and {} (trust-store key entry)",
        key_path.display(),
        pub_path.display()
    );
    Ok(())
}

fn write_new(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| Error::io(path, &e))?;
    f.write_all(bytes).map_err(|e| Error::io(path, &e))
}

fn sign(manifest_path: &Path, key_path: &Path, comment: &str) -> Result<()> {
    let mf = manifest::read_file(manifest_path)?;
    let key = signature::read_secret_key_file(key_path)?;
    let sig = KeelSignature::sign(&key, &mf.bytes, comment)?;
    let out = trust::write_signature_file(&mf.path, &sig)?;
    println!(
        "signed {} (plugin '{}' {}) with key {} -> {}",
        mf.path.display(),
        mf.manifest.name,
        mf.manifest.version,
        signature::key_id_hex(&sig.key_id),
        out.display()
    );
    Ok(())
}

fn trust_state(trust_store: Option<&Path>, allow_unsigned: bool) -> Result<TrustState> {
    let t = TrustState::new();
    if allow_unsigned {
        t.set_require_signature(false)?;
    }
    if let Some(p) = trust_store {
        t.set_trust_store_path(p)?;
    }
    Ok(t)
}

fn verify(manifest_path: &Path, trust_store: Option<&Path>, allow_unsigned: bool, allow_unpinned: bool) -> Result<()> {
    let t = trust_state(trust_store, allow_unsigned)?;
    t.set_allow_unpinned(allow_unpinned)?;
    let v = t.verify_plugin(manifest_path)?;
    let binary = match &v.binary.sha256 {
        Some(pin) => format!("binary {} matches sha256 {pin}", v.binary.path.display()),
        None => format!(
            "binary {} is UNPINNED (allowed by --allow-unpinned), its sha256 is {}",
            v.binary.path.display(),
            v.binary_sha256
        ),
    };
    println!(
        "ok: {}: plugin '{}' {}: {}; {binary}",
        manifest_path.display(),
        v.manifest.manifest.name,
        v.manifest.manifest.version,
        v.trust.summary(),
    );
    Ok(())
}

fn validate(manifest_path: &Path) -> Result<()> {
    let bytes = manifest::read_capped(manifest_path, manifest::MAX_MANIFEST_BYTES)?;
    match manifest::parse(&bytes) {
        Ok((format, m)) => {
            println!(
                "ok: {}: valid {} manifest (plugin '{}' {}, runtime {:?}, binaries: {})",
                manifest_path.display(),
                format.as_str(),
                m.name,
                m.version,
                m.runtime,
                m.binary.keys().cloned().collect::<Vec<_>>().join(", ")
            );
            if format == manifest::ManifestFormat::ThemisDb {
                let value: Value = serde_json::from_slice(&bytes).map_err(|e| Error::internal(e.to_string()))?;
                for note in manifest::themis::convert_with_notes(&value)?.notes {
                    match note.strip_prefix("warning: ") {
                        Some(w) => eprintln!("warning: {}: {w}", manifest_path.display()),
                        None => println!("note: {note}"),
                    }
                }
            }
            Ok(())
        }
        Err(e) => {
            let format = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| manifest::detect_format(&v))
                .map(|f| f.as_str())
                .unwrap_or("unrecognised");
            Err(e.context(format!(
                "{}: invalid manifest (format: {format})",
                manifest_path.display()
            )))
        }
    }
}

fn error_json(e: &Error) -> Value {
    json!({"status": e.status().name(), "code": e.code(), "message": e.message()})
}

fn inspect(manifest_path: &Path, as_json: bool, trust_store: Option<&Path>, allow_unsigned: bool) -> Result<()> {
    let mf: ManifestFile = manifest::read_file(manifest_path)?;
    let m = &mf.manifest;
    let trust = match trust_store {
        Some(p) => Some(trust_state(Some(p), allow_unsigned)?),
        None => None,
    };

    let binary = match trust::read_binary(&mf) {
        Ok((bin, art)) => json!({
            "platform": bin.platform,
            "path": bin.path.display().to_string(),
            "pinned_sha256": bin.sha256,
            "actual_sha256": art.sha256_hex(),
            "matches": bin.sha256.as_deref() == Some(art.sha256_hex().as_str()),
        }),
        Err(e) => json!({"error": error_json(&e)}),
    };

    let sig_path = trust::signature_path(&mf.path);
    let sig_bytes = trust::read_signature_file(&mf.path);
    let signature = match &sig_bytes {
        Ok(None) => json!({"kind": "none"}),
        Ok(Some(b)) => match signature::parse(b) {
            Ok(SignatureFile::Keel(s)) => json!({
                "kind": "keel",
                "algorithm": signature::ALGORITHM,
                "key_id": signature::key_id_hex(&s.key_id),
                "comment": s.comment,
            }),
            Ok(SignatureFile::HashOnly(h)) => json!({
                "kind": "hash-only",
                "sha256": hex::encode(h),
                "matches_manifest": h == digest::sha256(&mf.bytes),
            }),
            Err(e) => json!({"kind": "malformed", "error": error_json(&e)}),
        },
        Err(e) => json!({"kind": "unreadable", "error": error_json(e)}),
    };

    let verification = match (&trust, &sig_bytes) {
        (None, _) => json!({"checked": false}),
        (Some(_), Err(e)) => json!({"checked": true, "ok": false, "error": error_json(e)}),
        (Some(t), Ok(b)) => match t.verify_signature_at(b.as_deref(), &mf.bytes, &m.name, SystemTime::now()) {
            Ok(r) => json!({
                "checked": true,
                "ok": true,
                "result": r.kind(),
                "summary": r.summary(),
                "trust_store_version": r.store_version,
            }),
            Err(e) => json!({
                "checked": true,
                "ok": false,
                "trust_store_version": t.store().version(),
                "error": error_json(&e),
            }),
        },
    };

    let doc = json!({
        "manifest": {
            "path": mf.path.display().to_string(),
            "format": mf.format.as_str(),
            "sha256": digest::sha256_hex(&mf.bytes),
            "bytes": mf.bytes.len(),
            "content": serde_json::to_value(m).map_err(|e| Error::internal(e.to_string()))?,
        },
        "binary": binary,
        "signature": { "path": sig_path.display().to_string(), "file": signature },
        "verification": verification,
    });
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).map_err(|e| Error::internal(e.to_string()))?
        );
    } else {
        print_inspect_text(&doc);
    }
    Ok(())
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn err_line(e: &Value) -> String {
    format!("{} ({}) {}", s(&e["status"]), s(&e["code"]), s(&e["message"]))
}

fn print_inspect_text(d: &Value) {
    let m = &d["manifest"];
    let c = &m["content"];
    println!("manifest      {}", s(&m["path"]));
    println!("  format      {}", s(&m["format"]));
    println!("  sha256      {}  ({} bytes)", s(&m["sha256"]), s(&m["bytes"]));
    println!("  plugin      {} {}", s(&c["name"]), s(&c["version"]));
    println!("  runtime     {}", s(&c["runtime"]));
    if let Some(desc) = c["description"].as_str() {
        println!("  description {desc}");
    }
    if let Some(bins) = c["binary"].as_object() {
        for (k, v) in bins {
            println!("  binary      {k}: {}", s(v));
        }
    }
    if let Some(caps) = c["capabilities"].as_array() {
        let caps: Vec<String> = caps.iter().map(s).collect();
        println!("  capabilities {}", caps.join(", "));
    }
    if let Some(deps) = c["dependencies"].as_object() {
        for (k, v) in deps {
            println!("  depends on  {k} {}", s(v));
        }
    }
    let b = &d["binary"];
    println!("binary (this platform)");
    if b.get("error").is_some() {
        println!("  error       {}", err_line(&b["error"]));
    } else {
        println!("  platform    {}", s(&b["platform"]));
        println!("  path        {}", s(&b["path"]));
        println!("  pinned      {}", s(&b["pinned_sha256"]));
        println!("  actual      {}", s(&b["actual_sha256"]));
        println!("  matches     {}", s(&b["matches"]));
    }
    let sg = &d["signature"];
    let f = &sg["file"];
    println!("signature     {}", s(&sg["path"]));
    println!("  kind        {}", s(&f["kind"]));
    match f["kind"].as_str() {
        Some("keel") => {
            println!("  algorithm   {}", s(&f["algorithm"]));
            println!("  key id      {}", s(&f["key_id"]));
            println!("  comment     {}", s(&f["comment"]));
        }
        Some("hash-only") => {
            println!("  sha256      {}", s(&f["sha256"]));
            println!("  matches     {}", s(&f["matches_manifest"]));
        }
        Some("malformed") | Some("unreadable") => println!("  error       {}", err_line(&f["error"])),
        _ => {}
    }
    let v = &d["verification"];
    if v["checked"] == Value::Bool(false) {
        println!("verification  not checked (no --trust-store)");
    } else if v["ok"] == Value::Bool(true) {
        println!("verification  ok: {}", s(&v["summary"]));
    } else {
        println!("verification  FAILED: {}", err_line(&v["error"]));
    }
}
