//! `keel`: the plugin workflow from the command line: scaffold a plugin (`new`), hash, pin and
//! sign it (`hash`, `sign --update-pin`), manage the trust store (`trust`), check it as a
//! host would (`validate`, `verify`, `inspect`, `list`) and run it (`call`).
//!
//! Thin over the library: every check is the host's own code (`keel::Host::check`,
//! `keel::Host::plan_dir`, `keel::trust`, `keel::manifest`), so anything `verify` accepts, a
//! host with the same trust store, policy and allowlist loads. The exit code names the cause
//! (table in `keel --help` and docs/trust.md); `--json` prints one JSON document on stdout.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};

use keel::capability::Capabilities;
use keel::error::{keel_status, Error, Result};
use keel::host::{check_capabilities, Host, PluginCheck};
use keel::manifest::{self, ManifestFile};
use keel::trust::{self, digest, signature, store, KeelSignature, Policy, SignatureFile, TrustStore};

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
            "a file cannot be read or written (includes: refusing to overwrite a key, a store or a plugin folder)",
        ),
        (5, Some(KEEL_ERR_SYMLINK_REFUSED), "a binary is a symbolic link"),
        (6, Some(KEEL_ERR_FILE_TOO_LARGE), "a file is larger than Keel accepts"),
        (
            7,
            Some(KEEL_ERR_INVALID_ARGUMENT),
            "bad argument (secret key file unreadable/invalid/too open, bad comment, key already in the store)",
        ),
        (
            8,
            Some(KEEL_ERR_NOT_REGULAR_FILE),
            "a file is not a regular file (FIFO, socket, device, directory)",
        ),
        (9, Some(KEEL_ERR_NO_MANIFEST), "a plugin directory holds no manifest"),
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
            17,
            Some(KEEL_ERR_CAPABILITY_UNKNOWN),
            "manifest asks for an unknown capability",
        ),
        (
            18,
            Some(KEEL_ERR_CAPABILITY_DENIED),
            "manifest asks for a capability the allowlist does not grant",
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
        (
            40,
            Some(KEEL_ERR_DEPENDENCY_CYCLE),
            "the plugins' dependencies form a cycle",
        ),
        (
            41,
            Some(KEEL_ERR_DEPENDENCY_MISSING),
            "a dependency is neither in the set nor loaded",
        ),
        (
            42,
            Some(KEEL_ERR_DEPENDENCY_VERSION),
            "a dependency's version does not satisfy the requirement",
        ),
        (
            50,
            Some(KEEL_ERR_FUNCTION_NOT_FOUND),
            "keel call: the plugin has no such function",
        ),
        (
            51,
            Some(KEEL_ERR_CALL_FAILED),
            "keel call: the plugin's function failed",
        ),
        (52, Some(KEEL_ERR_INIT_FAILED), "keel call: the plugin's init failed"),
        (
            53,
            Some(KEEL_ERR_SYMBOL_MISSING),
            "keel call: the library exports no keel_plugin_entry (C++: extern \"C\")",
        ),
        (
            54,
            Some(KEEL_ERR_LIBRARY_LOAD),
            "keel call: the dynamic linker cannot load the library",
        ),
        (
            60,
            Some(KEEL_ERR_OCI_BAD_REFERENCE),
            "push/pull: the OCI reference does not parse",
        ),
        (
            61,
            Some(KEEL_ERR_OCI_MANIFEST_NOT_FOUND),
            "pull: the registry has no manifest under that reference",
        ),
        (
            62,
            Some(KEEL_ERR_OCI_DIGEST_MISMATCH),
            "pull: pulled bytes do not match their digest",
        ),
        (
            63,
            Some(KEEL_ERR_OCI_PULL_FAILED),
            "pull: registry unreachable or the transfer failed",
        ),
        (
            64,
            Some(KEEL_ERR_OCI_AUTH_FAILED),
            "push/pull: the registry refused the credentials",
        ),
        (
            65,
            Some(KEEL_ERR_OCI_NOT_A_PLUGIN),
            "pull: the artifact is not a Keel plugin artifact",
        ),
        (
            66,
            Some(KEEL_ERR_OCI_PUSH_FAILED),
            "push: registry unreachable or the upload failed",
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
    about = "The Keel plugin workflow: scaffold, hash, pin, sign, trust, verify, list and call plugins",
    long_about = "The Keel plugin workflow: scaffold, hash, pin, sign, trust, verify, list and call plugins.\n\n\
        A plugin's manifest pins the SHA-256 of its binary and is signed with Ed25519 into a detached \
        <manifest>.sig; hosts verify it against a trust store of public keys (see docs/trust.md for \
        both formats). validate, verify and list run the host's own checks.",
    after_help = exit_code_help()
)]
struct Cli {
    /// Print one JSON document on stdout (on failure too: {"ok": false, "error": {...}}).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

/// What a host is configured with: the same options give the same verdict as a host's load.
#[derive(Args, Clone, Default)]
struct HostArgs {
    /// Trust store file (JSON). Without one no key is trusted.
    #[arg(long, value_name = "FILE")]
    trust_store: Option<PathBuf>,
    /// Accept a plugin without a signature, or with a ThemisDB hash-only .sig whose hash
    /// matches (a host with require_signature off). A signature that is present must still
    /// verify; the digest check still runs.
    #[arg(long)]
    allow_unsigned: bool,
    /// Accept a binary whose manifest pins no SHA-256 (ThemisDB plugin.json without
    /// expected_hash), as a host with the allow_unpinned policy does; the binary's actual
    /// SHA-256 is printed.
    #[arg(long)]
    allow_unpinned: bool,
    /// The node's capability allowlist, comma-separated ("" for none). Default: the host's
    /// default allowlist (log, clock, random, kv:read, kv:write, metrics:write).
    #[arg(long, value_name = "CAPS")]
    allowlist: Option<String>,
}

fn parse_caps(list: &str) -> Result<Capabilities> {
    let names: Vec<&str> = list.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    Capabilities::parse(&names).map_err(|e| e.context("--allowlist"))
}

impl HostArgs {
    /// A host configured as a server would configure its own.
    fn host(&self) -> Result<Host> {
        let host = Host::new();
        let t = host.trust();
        if self.allow_unsigned {
            t.set_require_signature(false)?;
        }
        t.set_allow_unpinned(self.allow_unpinned)?;
        if let Some(p) = &self.trust_store {
            t.set_trust_store_path(p)?;
        }
        if let Some(list) = &self.allowlist {
            host.set_allowlist(parse_caps(list)?);
        }
        Ok(host)
    }

    fn any(&self) -> bool {
        self.trust_store.is_some() || self.allow_unsigned || self.allow_unpinned || self.allowlist.is_some()
    }
}

/// How to reach an OCI registry. Secrets come from the environment, never the command line:
/// KEEL_REGISTRY_TOKEN (a bearer token), or --username with KEEL_REGISTRY_PASSWORD (basic).
#[derive(Args, Clone, Default)]
struct RegistryArgs {
    /// User name for basic authentication (the password is read from KEEL_REGISTRY_PASSWORD).
    #[arg(long)]
    username: Option<String>,
    /// Allow plain HTTP to a registry that is not on the loopback interface (loopback
    /// registries are always spoken to in plain HTTP, all others over TLS without this).
    #[arg(long)]
    insecure: bool,
}

impl RegistryArgs {
    fn options(&self) -> Result<keel::fleet::RegistryOptions> {
        use keel::fleet::Credentials;
        let credentials = match (&self.username, std::env::var("KEEL_REGISTRY_TOKEN")) {
            (Some(u), _) => Credentials::Basic {
                username: u.clone(),
                password: std::env::var("KEEL_REGISTRY_PASSWORD").map_err(|_| {
                    Error::new(
                        keel_status::KEEL_ERR_INVALID_ARGUMENT,
                        "--username needs the password in KEEL_REGISTRY_PASSWORD",
                    )
                })?,
            },
            (None, Ok(t)) if !t.is_empty() => Credentials::Bearer(t),
            _ => Credentials::Anonymous,
        };
        Ok(keel::fleet::RegistryOptions {
            credentials,
            insecure: self.insecure,
            ..Default::default()
        })
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Lang {
    /// A native plugin in C (keel_plugin.h).
    C,
    /// A native plugin in C++ (keel_plugin.h, entry with C linkage, exceptions caught).
    Cpp,
    /// A WebAssembly plugin in C (keel_wasm.h), built with clang --target=wasm32.
    Wasm,
}

#[derive(Subcommand)]
enum Command {
    /// Scaffold a plugin: <dir>/<name>/ with its source, keel.json (placeholder pin) and a
    /// CMakeLists.txt using keel_add_plugin. Never overwrites.
    #[command(after_help = exit_code_help())]
    New {
        /// The plugin name (as a manifest requires: lower-case letters, digits, '-', '_', '.').
        name: String,
        /// Language and runtime.
        #[arg(long, value_enum, default_value = "c")]
        lang: Lang,
        /// Directory to create the plugin folder in.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
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
    /// Manage a trust store file (the format hosts read: docs/trust.md). Every change
    /// increases the store's version and is checked as a host reads it before it is written.
    #[command(subcommand, after_help = exit_code_help())]
    Trust(TrustCommand),
    /// Print the SHA-256 of files (the digest a manifest pins), like sha256sum.
    #[command(after_help = exit_code_help())]
    Hash {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Sign a manifest's exact bytes with a secret key; writes <manifest>.sig. Refuses a
    /// manifest whose pin does not match its binary (exit 20) or that pins none (33), unless
    /// --update-pin.
    #[command(after_help = exit_code_help())]
    Sign {
        /// The manifest to sign (validated first; an invalid manifest is not signed).
        manifest: PathBuf,
        /// Secret key file written by `keel keygen` / `keel trust init` (mode 0600).
        #[arg(long, value_name = "SECRET")]
        key: PathBuf,
        /// A comment stored in the .sig and covered by the signature (no control characters).
        #[arg(long, default_value = "")]
        comment: String,
        /// First set the manifest's pin (sha256, or ThemisDB expected_hash) to the SHA-256 of
        /// the binary this platform loads, then sign.
        #[arg(long)]
        update_pin: bool,
    },
    /// Check plugins exactly as a host's load does before running any plugin code: manifest,
    /// signature against the trust store, pin policy, capability names and the allowlist,
    /// dependencies within the set, and each binary's digest. Several manifests are checked as
    /// one load set; a directory as keel_host_load_dir would load it.
    #[command(after_help = exit_code_help())]
    Verify {
        /// Manifests (one load set), or one plugin directory.
        #[arg(required = true)]
        manifests: Vec<PathBuf>,
        #[command(flatten)]
        host: HostArgs,
    },
    /// Check a manifest as a host reads it: the schema (Keel or ThemisDB format, path-precise
    /// errors), its consistency, its capability names, and the allowlist when --allowlist is
    /// given. Signature and binary are verify's.
    #[command(after_help = exit_code_help())]
    Validate {
        manifest: PathBuf,
        /// Check the capabilities against this allowlist (comma-separated, "" for none).
        #[arg(long, value_name = "CAPS")]
        allowlist: Option<String>,
    },
    /// Show a manifest, its digests, its signature's key id and, with host options, one
    /// verdict: the checks of `verify`. Exits 0 whenever the manifest itself could be read
    /// and parsed.
    #[command(after_help = exit_code_help())]
    Inspect {
        manifest: PathBuf,
        #[command(flatten)]
        host: HostArgs,
    },
    /// List what keel_host_load_dir would load from a plugin directory, in load order
    /// (dependencies first), and what it skips. Use `verify DIR` to check them.
    #[command(after_help = exit_code_help())]
    List { dir: PathBuf },
    /// Load one plugin into a host (configured by the options, as `verify`) and call one of
    /// its functions. The output is written to stdout as is (--json: as text and hex).
    #[command(after_help = exit_code_help())]
    Call {
        manifest: PathBuf,
        function: String,
        /// The input bytes; "-" reads them from stdin; absent: empty input.
        input: Option<String>,
        #[command(flatten)]
        host: HostArgs,
    },
    /// Publish a plugin folder (manifest, its .sig, one binary per platform key) to an OCI
    /// registry as a Keel plugin artifact (media types in docs/fleet.md). Prints the digest:
    /// hosts load REPOSITORY@DIGEST (or the tag). Nothing is verified against a trust store:
    /// every node verifies what it pulls. Credentials: --username with the password in
    /// KEEL_REGISTRY_PASSWORD, or a bearer token in KEEL_REGISTRY_TOKEN.
    #[command(after_help = exit_code_help())]
    Push {
        /// The plugin folder (holding keel.json or plugin.json), or its manifest.
        dir: PathBuf,
        /// [registry/]repository[:tag], e.g. registry.example.com/plugins/echo:1.0.0.
        reference: String,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Download a Keel plugin artifact into a new folder (the reverse of push). Every blob is
    /// checked against its digest; the folder appears only when complete. Prints the digest.
    /// Use `verify DIR/<manifest>` (keel.json or plugin.json) to check it as a host would.
    #[command(after_help = exit_code_help())]
    Pull {
        /// [registry/]repository[:tag][@sha256:<hex>].
        reference: String,
        /// The folder to create (must not exist, or be empty).
        dir: PathBuf,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Evict least recently used plugin folders from an OCI cache (the cache_dir hosts pull
    /// into) until it takes at most --max-bytes. Folders a running host has a plugin loaded
    /// from, and folders being pulled, are never removed (they are held with file locks).
    /// Prints the digests removed.
    #[command(name = "cache-prune", after_help = exit_code_help())]
    CachePrune {
        /// The cache folder.
        cache_dir: PathBuf,
        /// The most bytes of plugin folders to keep (0: every folder not in use).
        #[arg(long)]
        max_bytes: u64,
    },
}

#[derive(Subcommand)]
enum TrustCommand {
    /// Create a trust store (version 1). With --key, also generate a key pair
    /// (<prefix>.key, <prefix>.pub) and trust it.
    #[command(after_help = exit_code_help())]
    Init {
        store: PathBuf,
        /// Generate a key pair at this prefix and put its entry in the store.
        #[arg(long, value_name = "PREFIX")]
        key: Option<PathBuf>,
        /// Label of the generated key.
        #[arg(long, default_value = "")]
        label: String,
        /// Plugin-name glob the generated key may sign (repeatable).
        #[arg(long = "allow-plugin", value_name = "GLOB")]
        allow_plugin: Vec<String>,
    },
    /// Add a key entry (a <prefix>.pub written by keygen) to a store.
    #[command(after_help = exit_code_help())]
    Add {
        store: PathBuf,
        /// The key entry file.
        entry: PathBuf,
        /// Replace the entry's label.
        #[arg(long)]
        label: Option<String>,
        /// Restrict the key to plugin names matching these globs (repeatable).
        #[arg(long = "allow-plugin", value_name = "GLOB")]
        allow_plugin: Vec<String>,
        /// The key is valid from this time (RFC 3339, e.g. 2026-01-01T00:00:00Z).
        #[arg(long, value_name = "TIME")]
        not_before: Option<String>,
        /// The key is valid until this time (RFC 3339).
        #[arg(long, value_name = "TIME")]
        not_after: Option<String>,
    },
    /// Mark a key revoked (now). A revoked key is refused for every signature.
    #[command(after_help = exit_code_help())]
    Revoke {
        store: PathBuf,
        /// The key id (64 lower-case hex digits, as keygen prints it).
        key_id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// List a store's keys with their state now (valid, revoked, expired, not-yet-valid).
    #[command(after_help = exit_code_help())]
    List { store: PathBuf },
    /// Sign a trust store with a root key and publish it to an OCI registry for the nodes
    /// that follow REFERENCE (keel_host_follow_trust_store; docs/fleet.md). Prints the
    /// digest. Nodes accept it only if the root key is one of theirs and its version is not
    /// lower than the one they run (the same version only with identical content).
    #[command(after_help = exit_code_help())]
    Publish {
        /// The trust-store file to publish (as `trust init` / `add` / `revoke` keep it).
        store: PathBuf,
        /// [registry/]repository[:tag] the nodes follow.
        reference: String,
        /// The root key's secret key file (keel keygen).
        #[arg(long, value_name = "SECRET")]
        key: PathBuf,
        /// A comment stored in the signature.
        #[arg(long, default_value = "")]
        comment: String,
        #[command(flatten)]
        registry: RegistryArgs,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json_out = cli.json;
    let (name, result) = run(cli.command, json_out);
    match result {
        Ok(doc) => {
            if json_out {
                let mut doc = doc;
                if let Value::Object(m) = &mut doc {
                    m.insert("ok".into(), Value::Bool(true));
                    m.insert("command".into(), Value::from(name));
                }
                print_json(&doc);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("keel {name}: error: {e} ({})", e.code());
            if json_out {
                print_json(&json!({"ok": false, "command": name, "error": error_json(&e)}));
            }
            ExitCode::from(exit_code(e.status()))
        }
    }
}

fn print_json(doc: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(doc).unwrap_or_else(|_| "null".into())
    );
}

fn run(command: Command, json_out: bool) -> (&'static str, Result<Value>) {
    let text = !json_out;
    match command {
        Command::New { name, lang, dir } => ("new", new_plugin(&name, lang, &dir, text)),
        Command::Keygen {
            out,
            label,
            allow_plugin,
            print_entry,
        } => ("keygen", keygen(&out, &label, &allow_plugin, print_entry, text)),
        Command::Trust(t) => ("trust", trust_cmd(t, text)),
        Command::Hash { files } => ("hash", hash(&files, text)),
        Command::Sign {
            manifest,
            key,
            comment,
            update_pin,
        } => ("sign", sign(&manifest, &key, &comment, update_pin, text)),
        Command::Verify { manifests, host } => ("verify", verify(&manifests, &host, text)),
        Command::Validate { manifest, allowlist } => ("validate", validate(&manifest, allowlist.as_deref(), text)),
        Command::Inspect { manifest, host } => ("inspect", inspect(&manifest, &host, text)),
        Command::List { dir } => ("list", list(&dir, text)),
        Command::Call {
            manifest,
            function,
            input,
            host,
        } => ("call", call(&manifest, &function, input.as_deref(), &host, text)),
        Command::Push {
            dir,
            reference,
            registry,
        } => ("push", push(&dir, &reference, &registry, text)),
        Command::Pull {
            reference,
            dir,
            registry,
        } => ("pull", pull(&reference, &dir, &registry, text)),
        Command::CachePrune { cache_dir, max_bytes } => ("cache-prune", cache_prune(&cache_dir, max_bytes, text)),
    }
}

fn cache_prune(cache_dir: &Path, max_bytes: u64, text: bool) -> Result<Value> {
    let p = keel::fleet::prune_cache(cache_dir, max_bytes)?;
    if text {
        for d in &p.removed {
            println!("{d}");
        }
        eprintln!(
            "removed {} folder(s); kept {} ({} bytes), {} in use",
            p.removed.len(),
            p.kept,
            p.kept_bytes,
            p.busy
        );
    }
    Ok(json!({"removed": p.removed, "kept": p.kept, "kept_bytes": p.kept_bytes, "busy": p.busy}))
}

// --- OCI registries -------------------------------------------------------------------------

fn push(dir: &Path, reference: &str, registry: &RegistryArgs, text: bool) -> Result<Value> {
    let p = keel::fleet::push_dir(dir, reference, &registry.options()?)?;
    if text {
        println!("{}", p.digest);
        eprintln!(
            "pushed {} {} to {} ({} layers); pinned: {}",
            p.name,
            p.version,
            p.reference,
            p.layers.len(),
            p.pinned
        );
    }
    Ok(json!({
        "digest": p.digest,
        "reference": p.reference,
        "pinned": p.pinned,
        "name": p.name,
        "version": p.version,
        "layers": p.layers.iter().map(|l| json!({
            "title": l.title, "media_type": l.media_type, "digest": l.digest, "size": l.size,
        })).collect::<Vec<_>>(),
    }))
}

fn pull(reference: &str, dir: &Path, registry: &RegistryArgs, text: bool) -> Result<Value> {
    let p = keel::fleet::pull_to_dir(reference, dir, &registry.options()?)?;
    if text {
        println!("{}", p.digest);
        eprintln!("pulled {reference} into {}", p.dir.display());
    }
    Ok(json!({
        "digest": p.digest,
        "reference": reference,
        "dir": p.dir,
        "manifest": p.manifest_path,
    }))
}

fn internal(e: impl std::fmt::Display) -> Error {
    Error::internal(e.to_string())
}

fn error_json(e: &Error) -> Value {
    json!({"status": e.status().name(), "code": e.code(), "message": e.message()})
}

// --- keys and trust stores ------------------------------------------------------------------

struct NewKey {
    id: String,
    entry: Value,
    key_path: PathBuf,
    pub_path: PathBuf,
}

fn with_ext(prefix: &Path, ext: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_os_string();
    s.push(ext);
    PathBuf::from(s)
}

fn refuse_existing(p: &Path, what: &str) -> Result<()> {
    if p.symlink_metadata().is_ok() {
        return Err(Error::new(
            keel_status::KEEL_ERR_IO,
            format!("{}: already exists (refusing to overwrite {what})", p.display()),
        ));
    }
    Ok(())
}

/// Generate a key pair at `prefix` (.key secret 0600, .pub trust-store entry).
fn make_key_pair(prefix: &Path, label: &str, allowed: &[String]) -> Result<NewKey> {
    let (key_path, pub_path) = (with_ext(prefix, ".key"), with_ext(prefix, ".pub"));
    for p in [&key_path, &pub_path] {
        refuse_existing(p, "a key")?;
    }
    let key = signature::generate_signing_key()?;
    let vk = key.verifying_key();
    // Checks the --allow-plugin patterns, before anything is written.
    let entry = store::key_entry(&vk, label, allowed).map_err(|e| e.context("--allow-plugin"))?;
    let mut entry_text = serde_json::to_string_pretty(&entry).map_err(internal)?;
    entry_text.push('\n');
    signature::write_secret_key_file(&key_path, &key)?;
    if let Err(e) = write_new(&pub_path, entry_text.as_bytes()) {
        let _ = std::fs::remove_file(&key_path);
        return Err(e);
    }
    Ok(NewKey {
        id: signature::key_id_hex(&signature::key_id(&vk)),
        entry,
        key_path,
        pub_path,
    })
}

fn keygen(prefix: &Path, label: &str, allowed: &[String], print_entry: bool, text: bool) -> Result<Value> {
    let k = make_key_pair(prefix, label, allowed)?;
    if text {
        println!("{}", k.id);
        if print_entry {
            print!("{}", serde_json::to_string_pretty(&k.entry).map_err(internal)? + "\n");
        }
        eprintln!(
            "wrote {} (secret, mode 0600) and {} (trust-store key entry)",
            k.key_path.display(),
            k.pub_path.display()
        );
    }
    Ok(json!({
        "key_id": k.id,
        "secret_key": k.key_path.display().to_string(),
        "public_entry": k.pub_path.display().to_string(),
        "entry": k.entry,
    }))
}

fn write_new(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| Error::io(path, &e))?;
    f.write_all(bytes).map_err(|e| Error::io(path, &e))
}

/// Replace `path` atomically (a temporary file in the same directory, then rename): a host
/// reading it concurrently sees the old content or the new, never half of one.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = with_ext(path, &format!(".{}.tmp", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, &e)
    })
}

fn read_store(path: &Path) -> Result<Vec<u8>> {
    manifest::read_capped(path, store::MAX_TRUST_STORE_BYTES)
}

fn trust_cmd(cmd: TrustCommand, text: bool) -> Result<Value> {
    match cmd {
        TrustCommand::Publish {
            store: path,
            reference,
            key,
            comment,
            registry,
        } => {
            let bytes = manifest::read_capped(&path, store::MAX_TRUST_STORE_BYTES)?;
            let parsed = TrustStore::from_bytes(&bytes).map_err(|e| e.context(path.display()))?;
            let root = signature::read_secret_key_file(&key)?;
            let sig = KeelSignature::sign(&root, &bytes, &comment)?;
            let p =
                keel::fleet::push_trust_store(&bytes, sig.to_file_text().as_bytes(), &reference, &registry.options()?)?;
            let root_id = signature::key_id_hex(&sig.key_id);
            if text {
                println!("{}", p.digest);
                eprintln!(
                    "published trust store version {} signed by root key {root_id} to {}; pinned: {}",
                    parsed.version(),
                    p.reference,
                    p.pinned
                );
            }
            Ok(json!({
                "digest": p.digest,
                "reference": p.reference,
                "pinned": p.pinned,
                "version": parsed.version(),
                "root_key_id": root_id,
            }))
        }
        TrustCommand::Init {
            store: path,
            key,
            label,
            allow_plugin,
        } => {
            refuse_existing(&path, "a trust store")?;
            let new_key = match &key {
                Some(prefix) => Some(make_key_pair(prefix, &label, &allow_plugin)?),
                None => None,
            };
            let keys: Vec<Value> = new_key.iter().map(|k| k.entry.clone()).collect();
            let written = store::new_document(1, keys).and_then(|doc| write_new(&path, &doc));
            if let Err(e) = written {
                if let Some(k) = &new_key {
                    let _ = std::fs::remove_file(&k.key_path);
                    let _ = std::fs::remove_file(&k.pub_path);
                }
                return Err(e);
            }
            if text {
                match &new_key {
                    Some(k) => {
                        println!("{}", k.id);
                        eprintln!(
                            "wrote {} (trust store version 1 trusting key {}), {} (secret, mode 0600) and {}",
                            path.display(),
                            k.id,
                            k.key_path.display(),
                            k.pub_path.display()
                        );
                    }
                    None => eprintln!("wrote {} (trust store version 1, no key)", path.display()),
                }
            }
            Ok(json!({
                "store": path.display().to_string(),
                "version": 1,
                "key": new_key.map(|k| json!({
                    "key_id": k.id,
                    "secret_key": k.key_path.display().to_string(),
                    "public_entry": k.pub_path.display().to_string(),
                })),
            }))
        }
        TrustCommand::Add {
            store: path,
            entry,
            label,
            allow_plugin,
            not_before,
            not_after,
        } => {
            let current = read_store(&path)?;
            let bytes = manifest::read_capped(&entry, store::MAX_TRUST_STORE_BYTES)?;
            let mut e: Value = serde_json::from_slice(&bytes).map_err(|err| {
                Error::new(
                    keel_status::KEEL_ERR_TRUST_STORE_MALFORMED,
                    format!("{}: not a key entry (JSON): {err}", entry.display()),
                )
            })?;
            if !e.is_object() {
                return Err(Error::new(
                    keel_status::KEEL_ERR_TRUST_STORE_MALFORMED,
                    format!("{}: not a key entry (a JSON object)", entry.display()),
                ));
            }
            if let Some(l) = label {
                e["label"] = l.into();
            }
            if !allow_plugin.is_empty() {
                e["allowed_plugins"] = allow_plugin.into();
            }
            if let Some(t) = not_before {
                e["not_before"] = t.into();
            }
            if let Some(t) = not_after {
                e["not_after"] = t.into();
            }
            let id = e["id"].as_str().unwrap_or_default().to_string();
            let updated = store::add_key(&current, e).map_err(|err| err.context(path.display()))?;
            write_atomic(&path, &updated)?;
            let version = TrustStore::from_bytes(&updated)?.version();
            if text {
                println!("added key {id} to {} (version {version})", path.display());
            }
            Ok(json!({"store": path.display().to_string(), "version": version, "key_id": id}))
        }
        TrustCommand::Revoke {
            store: path,
            key_id,
            reason,
        } => {
            let current = read_store(&path)?;
            let updated = store::revoke_key(&current, &key_id, &reason, SystemTime::now())
                .map_err(|err| err.context(path.display()))?;
            write_atomic(&path, &updated)?;
            let version = TrustStore::from_bytes(&updated)?.version();
            if text {
                println!("revoked key {key_id} in {} (version {version})", path.display());
            }
            Ok(json!({"store": path.display().to_string(), "version": version, "key_id": key_id}))
        }
        TrustCommand::List { store: path } => {
            let s = TrustStore::from_bytes(&read_store(&path)?).map_err(|e| e.context(path.display()))?;
            let now = SystemTime::now();
            let time = |t: Option<SystemTime>| t.map(|t| humantime::format_rfc3339_seconds(t).to_string());
            let mut keys: Vec<_> = s.keys().collect();
            keys.sort_by(|a, b| (&a.label, a.id_hex()).cmp(&(&b.label, b.id_hex())));
            let rows: Vec<Value> = keys
                .iter()
                .map(|k| {
                    json!({
                        "id": k.id_hex(),
                        "label": k.label,
                        "state": k.state_at(now),
                        "not_before": time(k.not_before),
                        "not_after": time(k.not_after),
                        "revoked": k.revoked.as_ref().map(|r| json!({"at": time(Some(r.at)), "reason": r.reason})),
                        "allowed_plugins": k.allowed_plugins.as_ref().map(|p| p.iter().map(|g| g.as_str().to_string()).collect::<Vec<_>>()),
                    })
                })
                .collect();
            if text {
                println!(
                    "{}: trust store version {}, {} key(s)",
                    path.display(),
                    s.version(),
                    rows.len()
                );
                for r in &rows {
                    let allowed = match r["allowed_plugins"].as_array() {
                        Some(a) => a.iter().map(s_of).collect::<Vec<_>>().join(","),
                        None => "*".into(),
                    };
                    println!(
                        "{}  {:<13} {:<24} plugins: {allowed}",
                        s_of(&r["id"]),
                        s_of(&r["state"]),
                        s_of(&r["label"])
                    );
                }
            }
            Ok(json!({"store": path.display().to_string(), "version": s.version(), "keys": rows}))
        }
    }
}

// --- hash, sign -----------------------------------------------------------------------------

fn hash(files: &[PathBuf], text: bool) -> Result<Value> {
    let mut rows = Vec::new();
    for f in files {
        let art = keel::artifact::read_bytes(f)?;
        if text {
            println!("{}  {}", art.sha256_hex(), f.display());
        }
        rows.push(json!({"path": f.display().to_string(), "sha256": art.sha256_hex(), "bytes": art.len()}));
    }
    Ok(json!({"files": rows}))
}

fn sign(manifest_path: &Path, key_path: &Path, comment: &str, update_pin: bool, text: bool) -> Result<Value> {
    let mut mf = manifest::read_file(manifest_path)?;
    let key = signature::read_secret_key_file(key_path)?;
    let mut pin_updated = None;
    if update_pin {
        let (bin, art) = trust::read_binary(&mf)?;
        let actual = art.sha256_hex();
        if bin.sha256.as_deref() != Some(actual.as_str()) {
            let bytes = manifest::with_pin(&mf, &actual)?;
            write_atomic(&mf.path, &bytes)?;
            mf = manifest::read_file(manifest_path)?;
            pin_updated = Some(json!({"old": bin.sha256, "new": actual}));
        }
    }
    // The binary this platform loads must match the pin: a signature vouches for the manifest,
    // and a manifest whose pin is stale would be refused by every host.
    let (bin, art) = trust::check_binary(&mf, Policy::default()).map_err(|e| {
        let hint = match e.status() {
            keel_status::KEEL_ERR_DIGEST_MISMATCH | keel_status::KEEL_ERR_UNPINNED_BINARY => {
                "; not signed (rebuild, or pin the binary with `keel sign --update-pin`)"
            }
            _ => "; not signed",
        };
        Error::new(e.status(), format!("{}{hint}", e.message()))
    })?;
    let sig = KeelSignature::sign(&key, &mf.bytes, comment)?;
    let out = trust::write_signature_file(&mf.path, &sig)?;
    if text {
        if let Some(p) = &pin_updated {
            println!(
                "pinned {} to sha256 {} (was {})",
                mf.path.display(),
                s_of(&p["new"]),
                s_of(&p["old"])
            );
        }
        println!(
            "signed {} (plugin '{}' {}) with key {} -> {}",
            mf.path.display(),
            mf.manifest.name,
            mf.manifest.version,
            signature::key_id_hex(&sig.key_id),
            out.display()
        );
    }
    Ok(json!({
        "manifest": mf.path.display().to_string(),
        "plugin": mf.manifest.name,
        "version": mf.manifest.version.to_string(),
        "key_id": signature::key_id_hex(&sig.key_id),
        "signature": out.display().to_string(),
        "binary": {"path": bin.path.display().to_string(), "sha256": art.sha256_hex()},
        "pin_updated": pin_updated,
    }))
}

// --- verify, validate, inspect, list ---------------------------------------------------------

fn check_json(c: &PluginCheck) -> Value {
    let m = &c.manifest.manifest;
    let key_id = match &c.trust.authenticity {
        trust::Authenticity::Signed { key_id, .. } => Some(key_id.clone()),
        _ => None,
    };
    json!({
        "manifest": c.manifest.path.display().to_string(),
        "plugin": m.name,
        "version": m.version.to_string(),
        "runtime": m.runtime,
        "trust": {
            "result": c.trust.kind(),
            "summary": c.trust.summary(),
            "key_id": key_id,
            "trust_store_version": c.trust.store_version,
        },
        "capabilities": c.granted.names(),
        "binary": {
            "platform": c.binary.platform,
            "path": c.binary.path.display().to_string(),
            "pinned": c.binary.sha256.is_some(),
            "sha256": c.binary_sha256,
        },
    })
}

/// The host's checks for `paths` (one load set, or one plugin directory).
fn host_check(host: &Host, paths: &[PathBuf]) -> Result<Vec<PluginCheck>> {
    match paths {
        [dir] if dir.is_dir() => host.check_dir(dir),
        _ => host.check(paths),
    }
}

fn verify(paths: &[PathBuf], args: &HostArgs, text: bool) -> Result<Value> {
    let host = args.host()?;
    let checks = host_check(&host, paths)?;
    if text {
        for c in &checks {
            let binary = if c.binary.sha256.is_some() {
                format!("binary {} matches sha256 {}", c.binary.path.display(), c.binary_sha256)
            } else {
                format!(
                    "binary {} is UNPINNED (allowed by --allow-unpinned), its sha256 is {}",
                    c.binary.path.display(),
                    c.binary_sha256
                )
            };
            let caps = c.granted.names();
            println!(
                "ok: {}: plugin '{}' {}: {}; capabilities: {}; {binary}",
                c.manifest.path.display(),
                c.manifest.manifest.name,
                c.manifest.manifest.version,
                c.trust.summary(),
                if caps.is_empty() {
                    "none".to_string()
                } else {
                    caps.join(", ")
                },
            );
        }
    }
    Ok(json!({"plugins": checks.iter().map(check_json).collect::<Vec<_>>()}))
}

fn validate(manifest_path: &Path, allowlist: Option<&str>, text: bool) -> Result<Value> {
    let bytes = manifest::read_capped(manifest_path, manifest::MAX_MANIFEST_BYTES)?;
    let (format, m) = match manifest::parse(&bytes) {
        Ok(v) => v,
        Err(e) => {
            let format = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| manifest::detect_format(&v))
                .map(|f| f.as_str())
                .unwrap_or("unrecognised");
            return Err(e.context(format!(
                "{}: invalid manifest (format: {format})",
                manifest_path.display()
            )));
        }
    };
    // The capability check of a load: names always, the allowlist when one is given.
    let allow = match allowlist {
        Some(list) => parse_caps(list)?,
        None => Capabilities::all(),
    };
    let granted = check_capabilities(&m, allow).map_err(|e| e.context(manifest_path.display()))?;
    let mut notes = Vec::new();
    let mut warnings = Vec::new();
    if format == manifest::ManifestFormat::ThemisDb {
        let value: Value = serde_json::from_slice(&bytes).map_err(internal)?;
        for note in manifest::themis::convert_with_notes(&value)?.notes {
            match note.strip_prefix("warning: ") {
                Some(w) => warnings.push(w.to_string()),
                None => notes.push(note),
            }
        }
    }
    let binaries: Vec<String> = m.binary.keys().cloned().collect();
    if text {
        println!(
            "ok: {}: valid {} manifest (plugin '{}' {}, runtime {:?}, binaries: {})",
            manifest_path.display(),
            format.as_str(),
            m.name,
            m.version,
            m.runtime,
            binaries.join(", ")
        );
        for w in &warnings {
            eprintln!("warning: {}: {w}", manifest_path.display());
        }
        for n in &notes {
            println!("note: {n}");
        }
    }
    Ok(json!({
        "manifest": manifest_path.display().to_string(),
        "format": format.as_str(),
        "plugin": m.name,
        "version": m.version.to_string(),
        "runtime": m.runtime,
        "binaries": binaries,
        "capabilities": granted.names(),
        "allowlist_checked": allowlist.is_some(),
        "notes": notes,
        "warnings": warnings,
    }))
}

fn inspect(manifest_path: &Path, args: &HostArgs, text: bool) -> Result<Value> {
    let mf: ManifestFile = manifest::read_file(manifest_path)?;
    let m = &mf.manifest;

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
    let signature = match trust::read_signature_file(&mf.path) {
        Ok(None) => json!({"kind": "none"}),
        Ok(Some(b)) => match signature::parse(&b) {
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
        Err(e) => json!({"kind": "unreadable", "error": error_json(&e)}),
    };

    // One verdict: the host's checks (those of `verify`), or none without host options.
    let verification = if args.any() {
        let host = args.host()?;
        match host.check(std::slice::from_ref(&mf.path)) {
            Ok(checks) => match checks.first() {
                Some(c) => json!({
                    "checked": true,
                    "ok": true,
                    "result": c.trust.kind(),
                    "summary": c.trust.summary(),
                    "trust_store_version": c.trust.store_version,
                    "capabilities": c.granted.names(),
                }),
                None => return Err(internal("host check returned no plugin")),
            },
            Err(e) => json!({
                "checked": true,
                "ok": false,
                "trust_store_version": host.trust().store().version(),
                "error": error_json(&e),
            }),
        }
    } else {
        json!({"checked": false})
    };

    let doc = json!({
        "manifest": {
            "path": mf.path.display().to_string(),
            "format": mf.format.as_str(),
            "sha256": digest::sha256_hex(&mf.bytes),
            "bytes": mf.bytes.len(),
            "content": serde_json::to_value(m).map_err(internal)?,
        },
        "binary": binary,
        "signature": { "path": sig_path.display().to_string(), "file": signature },
        "verification": verification,
    });
    if text {
        print_inspect_text(&doc);
    }
    Ok(doc)
}

fn list(dir: &Path, text: bool) -> Result<Value> {
    let plan = Host::new().plan_dir(dir)?;
    let rows: Vec<Value> = plan
        .manifests
        .iter()
        .map(|f| {
            json!({
                "plugin": f.manifest.name,
                "version": f.manifest.version.to_string(),
                "runtime": f.manifest.runtime,
                "manifest": f.path.display().to_string(),
                "format": f.format.as_str(),
                "dependencies": f.manifest.dependencies,
            })
        })
        .collect();
    let skipped: Vec<Value> = plan
        .skipped
        .iter()
        .map(|(p, why)| json!({"path": p.display().to_string(), "reason": why}))
        .collect();
    if text {
        for (i, f) in plan.manifests.iter().enumerate() {
            let deps: Vec<String> = f
                .manifest
                .dependencies
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            println!(
                "{:>3}. {} {} ({}) {}{}",
                i + 1,
                f.manifest.name,
                f.manifest.version,
                s_of(&serde_json::to_value(f.manifest.runtime).unwrap_or(Value::Null)),
                f.path.display(),
                if deps.is_empty() {
                    String::new()
                } else {
                    format!("  depends on {}", deps.join(", "))
                }
            );
        }
        for (p, why) in &plan.skipped {
            eprintln!("skipped: {}: {why}", p.display());
        }
    }
    Ok(json!({"dir": dir.display().to_string(), "plugins": rows, "skipped": skipped}))
}

// --- call -----------------------------------------------------------------------------------

fn call(manifest_path: &Path, function: &str, input: Option<&str>, args: &HostArgs, text: bool) -> Result<Value> {
    let input: Vec<u8> = match input {
        Some("-") => {
            let mut b = Vec::new();
            std::io::stdin()
                .read_to_end(&mut b)
                .map_err(|e| Error::io(Path::new("<stdin>"), &e))?;
            b
        }
        Some(s) => s.as_bytes().to_vec(),
        None => Vec::new(),
    };
    let host = args.host()?;
    let slot = host.load(manifest_path)?;
    let id = slot.resolve(function)?;
    let mut output = Vec::new();
    let result = slot.call(id, &input, &mut output);
    let unloaded = host.unload_all();
    result?;
    unloaded?;
    if text {
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(&output)
            .and_then(|_| stdout.flush())
            .map_err(|e| Error::io(Path::new("<stdout>"), &e))?;
    }
    Ok(json!({
        "plugin": slot.name(),
        "function": function,
        "input_bytes": input.len(),
        "output": std::str::from_utf8(&output).ok(),
        "output_hex": hex::encode(&output),
        "output_bytes": output.len(),
    }))
}

// --- text output ----------------------------------------------------------------------------

fn s_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn err_line(e: &Value) -> String {
    format!("{} ({}) {}", s_of(&e["status"]), s_of(&e["code"]), s_of(&e["message"]))
}

fn print_inspect_text(d: &Value) {
    let m = &d["manifest"];
    let c = &m["content"];
    println!("manifest      {}", s_of(&m["path"]));
    println!("  format      {}", s_of(&m["format"]));
    println!("  sha256      {}  ({} bytes)", s_of(&m["sha256"]), s_of(&m["bytes"]));
    println!("  plugin      {} {}", s_of(&c["name"]), s_of(&c["version"]));
    println!("  runtime     {}", s_of(&c["runtime"]));
    if let Some(desc) = c["description"].as_str() {
        println!("  description {desc}");
    }
    if let Some(bins) = c["binary"].as_object() {
        for (k, v) in bins {
            println!("  binary      {k}: {}", s_of(v));
        }
    }
    if let Some(caps) = c["capabilities"].as_array() {
        let caps: Vec<String> = caps.iter().map(s_of).collect();
        println!("  capabilities {}", caps.join(", "));
    }
    if let Some(deps) = c["dependencies"].as_object() {
        for (k, v) in deps {
            println!("  depends on  {k} {}", s_of(v));
        }
    }
    let b = &d["binary"];
    println!("binary (this platform)");
    if b.get("error").is_some() {
        println!("  error       {}", err_line(&b["error"]));
    } else {
        println!("  platform    {}", s_of(&b["platform"]));
        println!("  path        {}", s_of(&b["path"]));
        println!("  pinned      {}", s_of(&b["pinned_sha256"]));
        println!("  actual      {}", s_of(&b["actual_sha256"]));
        println!("  matches     {}", s_of(&b["matches"]));
    }
    let sg = &d["signature"];
    let f = &sg["file"];
    println!("signature     {}", s_of(&sg["path"]));
    println!("  kind        {}", s_of(&f["kind"]));
    match f["kind"].as_str() {
        Some("keel") => {
            println!("  algorithm   {}", s_of(&f["algorithm"]));
            println!("  key id      {}", s_of(&f["key_id"]));
            println!("  comment     {}", s_of(&f["comment"]));
        }
        Some("hash-only") => {
            println!("  sha256      {}", s_of(&f["sha256"]));
            println!("  matches     {}", s_of(&f["matches_manifest"]));
        }
        Some("malformed") | Some("unreadable") => println!("  error       {}", err_line(&f["error"])),
        _ => {}
    }
    let v = &d["verification"];
    if v["checked"] == Value::Bool(false) {
        println!(
            "verification  not checked (give --trust-store and/or --allow-unsigned, --allowlist as the host has them)"
        );
    } else if v["ok"] == Value::Bool(true) {
        println!(
            "verification  ok: a host with these settings loads it: {}",
            s_of(&v["summary"])
        );
    } else {
        println!("verification  REFUSED: {}", err_line(&v["error"]));
    }
}

// --- new ------------------------------------------------------------------------------------

/// The placeholder pin of a scaffolded manifest: no binary hashes to it, so no host loads
/// the plugin before `keel sign --update-pin` (or keel_add_plugin) pins the real binary.
const PLACEHOLDER_PIN: &str = "0000000000000000000000000000000000000000000000000000000000000000";

const C_TEMPLATE: &str = r#"/*
 * {{NAME}}: a Keel native plugin in C, written against keel/keel_plugin.h.
 * Functions: "echo" (returns its input), "hello" (returns a greeting).
 *
 * Build (or use the CMakeLists.txt next to this file):
 *     cc -O2 -shared -fPIC -I <keel>/include -o lib{{NAME}}.so {{NAME}}.c
 * Pin and sign the manifest, then try it:
 *     keel sign keel.json --key <secret.key> --update-pin
 *     keel call keel.json echo 'hi' --trust-store <store.json>
 */
#include <stdlib.h>

#include "keel/keel_plugin.h"

static const char *const functions[] = {"echo", "hello"};

/* One instance per load. `call` runs concurrently on several threads (no
 * KEEL_PLUGIN_FLAG_SERIAL): keep per-call data on the stack. */
typedef struct {
    const keel_host_api *host;
} plugin_instance;

static int32_t plugin_init(const char *config_json, size_t config_len, const keel_host_api *host,
                           void **instance, const keel_output *err) {
    (void)config_json;
    (void)config_len;
    plugin_instance *self = calloc(1, sizeof *self);
    if (self == NULL) {
        keel_output_str(err, "{{NAME}}: out of memory");
        return 1;
    }
    self->host = host;
    *instance = self;
    return 0;
}

static int32_t plugin_call(void *instance, uint32_t function, const uint8_t *input, size_t input_len,
                           const keel_output *output) {
    (void)instance;
    switch (function) {
    case 0: /* echo */
        return output->write(output->ctx, input, input_len);
    case 1: /* hello */
        return keel_output_str(output, "hello from {{NAME}}");
    default:
        keel_output_str(output, "{{NAME}}: no such function");
        return 1;
    }
}

static void plugin_shutdown(void *instance) { free(instance); }

static int32_t plugin_health(void *instance) {
    (void)instance;
    return KEEL_HEALTH_HEALTHY;
}

static const keel_plugin_vtable vtable = {
    .abi_version = KEEL_PLUGIN_ABI_VERSION,
    .struct_size = sizeof(keel_plugin_vtable),
    .flags = 0,
    .name = "{{NAME}}",
    .version = "0.1.0",
    .functions = functions,
    .function_count = sizeof functions / sizeof functions[0],
    .init = plugin_init,
    .call = plugin_call,
    .shutdown = plugin_shutdown,
    .health = plugin_health,
};

KEEL_DEFINE_PLUGIN(vtable)
"#;

const CPP_TEMPLATE: &str = r#"// {{NAME}}: a Keel native plugin in C++, written against keel/keel_plugin.h.
// Functions: "echo" (returns its input), "hello" (returns a greeting).
//
// Two rules of a C++ plugin, both kept below:
//  * the entry symbol keel_plugin_entry has C linkage (extern "C"): a mangled name is not
//    found and the load fails with KEEL_ERR_SYMBOL_MISSING;
//  * no exception leaves a hook: every hook catches everything and reports it as an error.
//
// Build (or use the CMakeLists.txt next to this file):
//     c++ -std=c++17 -O2 -shared -fPIC -I <keel>/include -o lib{{NAME}}.so {{NAME}}.cpp
// Pin and sign the manifest, then try it:
//     keel sign keel.json --key <secret.key> --update-pin
//     keel call keel.json echo 'hi' --trust-store <store.json>
#include <cstdint>
#include <exception>
#include <stdexcept>
#include <string>
#include <string_view>

#include "keel/keel_plugin.h"

namespace {

class Plugin {
public:
    explicit Plugin(const keel_host_api *host) : host_(host) {}

    // The host's services (log, clock, kv, ...), as far as the manifest's capabilities grant them.
    const keel_host_api *host() const { return host_; }

    // Called concurrently from several threads (no KEEL_PLUGIN_FLAG_SERIAL).
    std::string call(std::uint32_t function, std::string_view input) const {
        switch (function) {
        case 0:
            return std::string(input);
        case 1:
            return "hello from {{NAME}}";
        default:
            throw std::invalid_argument("{{NAME}}: no such function");
        }
    }

private:
    const keel_host_api *host_;
};

const char *const kFunctions[] = {"echo", "hello"};

std::int32_t write(const keel_output *out, std::string_view s) {
    return out->write(out->ctx, reinterpret_cast<const std::uint8_t *>(s.data()), s.size());
}

// The exception barrier: runs `f`, turning any exception into an error return with the
// message written to `out` (the host reports it as KEEL_ERR_CALL_FAILED / _INIT_FAILED).
template <class F>
std::int32_t guarded(const keel_output *out, F &&f) noexcept {
    try {
        return f();
    } catch (const std::exception &e) {
        if (out != nullptr) write(out, e.what());
    } catch (...) {
        if (out != nullptr) write(out, "{{NAME}}: unknown C++ exception");
    }
    return 1;
}

std::int32_t plugin_init(const char *, std::size_t, const keel_host_api *host, void **instance,
                         const keel_output *err) noexcept {
    return guarded(err, [&] {
        *instance = new Plugin(host);
        return 0;
    });
}

std::int32_t plugin_call(void *instance, std::uint32_t function, const std::uint8_t *input,
                         std::size_t input_len, const keel_output *output) noexcept {
    return guarded(output, [&] {
        const auto *self = static_cast<const Plugin *>(instance);
        std::string result =
            self->call(function, std::string_view(reinterpret_cast<const char *>(input), input_len));
        return write(output, result);
    });
}

void plugin_shutdown(void *instance) noexcept {
    try {
        delete static_cast<Plugin *>(instance);
    } catch (...) {
    }
}

std::int32_t plugin_health(void *) noexcept { return KEEL_HEALTH_HEALTHY; }

keel_plugin_vtable make_vtable() {
    keel_plugin_vtable v{};
    v.abi_version = KEEL_PLUGIN_ABI_VERSION;
    v.struct_size = sizeof(keel_plugin_vtable);
    v.flags = 0;
    v.name = "{{NAME}}";
    v.version = "0.1.0";
    v.functions = kFunctions;
    v.function_count = sizeof kFunctions / sizeof kFunctions[0];
    v.init = plugin_init;
    v.call = plugin_call;
    v.shutdown = plugin_shutdown;
    v.health = plugin_health;
    return v;
}

const keel_plugin_vtable kVtable = make_vtable();

} // namespace

// C linkage: the host looks the entry up by its plain name.
extern "C" KEEL_PLUGIN_EXPORT const keel_plugin_vtable *keel_plugin_entry(void) { return &kVtable; }
"#;

const WASM_TEMPLATE: &str = r#"/*
 * {{NAME}}: a Keel WebAssembly plugin in C, written against keel/keel_wasm.h.
 * Functions: "echo" (returns its input), "hello" (returns a greeting).
 *
 * Build (no libc needed; or use the CMakeLists.txt next to this file):
 *     clang --target=wasm32 -nostdlib -O2 -Wl,--no-entry -Wl,--export-dynamic \
 *           -I <keel>/include -o {{NAME}}.wasm {{NAME}}.c
 * Pin and sign the manifest, then try it:
 *     keel sign keel.json --key <secret.key> --update-pin
 *     keel call keel.json echo 'hi' --trust-store <store.json>
 */
#define KEEL_WASM_IMPLEMENT_ALLOCATOR
#include "keel/keel_wasm.h"

KEEL_WASM_FUNCTIONS("echo,hello")

/* The output of the last call (valid until the guest is next entered). */
static uint8_t *out_buf;
static uint32_t out_cap;

static keel_result copy_out(const uint8_t *data, uint32_t len) {
    if (len > out_cap) {
        uint8_t *bigger = keel_alloc(len);
        if (bigger == 0) return keel_err_str("{{NAME}}: out of memory");
        if (out_buf != 0) keel_free(out_buf, out_cap);
        out_buf = bigger;
        out_cap = len;
    }
    for (uint32_t i = 0; i < len; i++) out_buf[i] = data[i];
    return keel_ok(out_buf, len);
}

keel_result keel_call(uint32_t function, const uint8_t *input, uint32_t len) {
    switch (function) {
    case 0:
        return copy_out(input, len);
    case 1: {
        static const char greeting[] = "hello from {{NAME}}";
        return keel_ok(greeting, sizeof greeting - 1);
    }
    }
    return keel_err_str("{{NAME}}: no such function");
}

int32_t keel_health(void) { return KEEL_HEALTH_HEALTHY; }
"#;

const CMAKE_TEMPLATE: &str = r#"# {{NAME}}: a Keel {{KIND}} plugin, scaffolded by `keel new`.
#
# Needs an installed Keel package that provides the keel_add_plugin() CMake helper
# (find_package(Keel) loads it). keel_add_plugin builds the plugin{{WASM_NOTE}}, writes its
# manifest with the SHA-256 pin of the binary, signs it with SIGN_KEY when given, and lays out
# <build>/{{NAME}}/ ready for keel_host_load_dir. Configure with
#     cmake -S . -B build -DCMAKE_PREFIX_PATH=<keel prefix> [-DKEEL_SIGN_KEY=<secret.key>]
# (a key pair and a trust store trusting it: `keel trust init store.json --key signer`).
#
# Without CMake: build as the comment in {{SOURCE}} shows, then
#     keel sign keel.json --key <secret.key> --update-pin
cmake_minimum_required(VERSION 3.20)
project({{PROJECT}} LANGUAGES {{LANG}})

find_package(Keel REQUIRED)

set(KEEL_SIGN_KEY "" CACHE FILEPATH "Secret key (keel keygen / keel trust init) that signs the manifest")
set(sign_args)
if(KEEL_SIGN_KEY)
  set(sign_args SIGN_KEY "${KEEL_SIGN_KEY}")
endif()

keel_add_plugin(
  NAME {{NAME}}
  SOURCES {{SOURCE}}
  RUNTIME {{RUNTIME}}
  # CAPABILITIES log kv:read     # host services the plugin may use (checked against the node's allowlist)
  ${sign_args}
)
"#;

fn new_plugin(name: &str, lang: Lang, parent: &Path, text: bool) -> Result<Value> {
    let (runtime, source, binary, template, cmake_lang, kind) = match lang {
        Lang::C => (
            "native",
            format!("{name}.c"),
            format!("lib{name}.so"),
            C_TEMPLATE,
            "C",
            "native (C)",
        ),
        Lang::Cpp => (
            "native",
            format!("{name}.cpp"),
            format!("lib{name}.so"),
            CPP_TEMPLATE,
            "CXX",
            "native (C++)",
        ),
        Lang::Wasm => (
            "wasm",
            format!("{name}.c"),
            format!("{name}.wasm"),
            WASM_TEMPLATE,
            "C",
            "WebAssembly",
        ),
    };
    let platform = if runtime == "wasm" {
        "wasm32"
    } else {
        std::env::consts::OS
    };
    let manifest_doc = json!({
        "manifest_version": 1,
        "name": name,
        "version": "0.1.0",
        "description": format!("{name}: a Keel {kind} plugin"),
        "runtime": runtime,
        "binary": { platform: binary },
        "sha256": PLACEHOLDER_PIN,
    });
    let mut manifest_text = serde_json::to_string_pretty(&manifest_doc).map_err(internal)?;
    manifest_text.push('\n');
    // The manifest a host will read must be valid before anything is written (the name too).
    manifest::parse(manifest_text.as_bytes()).map_err(|e| e.context(format!("plugin name '{name}'")))?;

    let dir = parent.join(name);
    refuse_existing(&dir, "a plugin folder")?;
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, &e))?;
    let fill = |t: &str| {
        t.replace("{{NAME}}", name)
            .replace("{{PROJECT}}", &name.replace(['-', '.'], "_"))
            .replace("{{SOURCE}}", &source)
            .replace("{{RUNTIME}}", runtime)
            .replace("{{LANG}}", cmake_lang)
            .replace("{{KIND}}", kind)
            .replace(
                "{{WASM_NOTE}}",
                if runtime == "wasm" {
                    " (for wasm32, with the WASM toolchain file installed with Keel)"
                } else {
                    ""
                },
            )
    };
    let files = [
        (source.clone(), fill(template)),
        ("keel.json".to_string(), manifest_text),
        ("CMakeLists.txt".to_string(), fill(CMAKE_TEMPLATE)),
    ];
    for (file, body) in &files {
        write_new(&dir.join(file), body.as_bytes())?;
    }
    if text {
        println!("created {}/ ({kind} plugin '{name}')", dir.display());
        for (file, _) in &files {
            println!("  {file}");
        }
        println!(
            "next: build {binary} (see {source} or CMakeLists.txt), then `keel sign {}/keel.json --key <secret.key> --update-pin`",
            dir.display()
        );
    }
    Ok(json!({
        "dir": dir.display().to_string(),
        "plugin": name,
        "runtime": runtime,
        "source": dir.join(&source).display().to_string(),
        "manifest": dir.join("keel.json").display().to_string(),
        "cmake": dir.join("CMakeLists.txt").display().to_string(),
        "binary": binary,
        "pin": "placeholder",
    }))
}
