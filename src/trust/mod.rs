//! Trust: digests, signatures, the trusted-key store and the signature policy.
//! Nothing here loads or runs plugin code.
//!
//! [`TrustState`] is what a host owns: the current [`store::TrustStore`] behind an
//! `ArcSwap` (verifications read it without locking; replacing it is one pointer swap) and the
//! [`policy::PolicyCell`]. A verification captures one `SystemTime::now()` and checks, with one
//! status code per cause and in this order:
//!
//! | step | failure |
//! |---|---|
//! | `<manifest>.sig` exists | `KEEL_ERR_NO_SIGNATURE` (401), unless policy allows unsigned plugins |
//! | it parses | `KEEL_ERR_MALFORMED_SIGNATURE` (402) |
//! | ThemisDB hash-only `.sig` | `KEEL_ERR_HASH_ONLY_SIGNATURE` (412) if signatures are required, else `KEEL_ERR_DIGEST_MISMATCH` (400) if the hash is wrong |
//! | the key id is in the store | `KEEL_ERR_UNKNOWN_KEY` (403) |
//! | the key is not revoked | `KEEL_ERR_KEY_REVOKED` (406) — revocation beats every later check |
//! | `now >= not_before` | `KEEL_ERR_KEY_NOT_YET_VALID` (404) |
//! | `now <= not_after` | `KEEL_ERR_KEY_EXPIRED` (405) |
//! | the plugin name matches `allowed_plugins` | `KEEL_ERR_KEY_NOT_ALLOWED` (407) |
//! | the Ed25519 signature verifies | `KEEL_ERR_BAD_SIGNATURE` (408) |
//!
//! A Keel signature that is present is checked even when unsigned plugins are allowed: a
//! signature that fails is evidence of tampering, never a reason to fall back to "unsigned".

/// SHA-256 digests (a leaf of its own, [`crate::digest`], so that `artifact` needs nothing of `trust`).
pub use crate::digest;
pub mod policy;
pub mod signature;
pub mod store;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use crate::artifact::{self, Unverified, Verified};
use crate::error::{keel_status, Error, Result};
use crate::manifest::{self, BinaryRef, ManifestFile};
use crate::{bail, err};

pub use policy::{Policy, PolicyCell};
pub use signature::{KeelSignature, SignatureFile};
pub use store::{TrustStore, TrustedKey};

/// How a verified manifest's authenticity was established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authenticity {
    /// A valid Ed25519 signature by a trusted key.
    Signed {
        /// Lower-case hex key id.
        key_id: String,
        /// The key's label in the trust store.
        key_label: String,
        /// The signed comment ("" if none).
        comment: String,
    },
    /// A ThemisDB hash-only `.sig` whose hash matches (accepted only when unsigned plugins are).
    HashOnly,
    /// No `.sig` file (accepted only when unsigned plugins are).
    Unsigned,
}

/// The result of a successful verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustReport {
    pub authenticity: Authenticity,
    /// Version of the trust store the verification used.
    pub store_version: u64,
    /// The single time every validity check of this verification used.
    pub checked_at: SystemTime,
}

impl TrustReport {
    /// `"signed"`, `"hash-only"` or `"unsigned"`.
    pub fn kind(&self) -> &'static str {
        match self.authenticity {
            Authenticity::Signed { .. } => "signed",
            Authenticity::HashOnly => "hash-only",
            Authenticity::Unsigned => "unsigned",
        }
    }

    /// One line for logs and the CLI.
    pub fn summary(&self) -> String {
        match &self.authenticity {
            Authenticity::Signed { key_id, key_label, .. } if key_label.is_empty() => {
                format!("signed by key {key_id} (trust store version {})", self.store_version)
            }
            Authenticity::Signed { key_id, key_label, .. } => {
                format!(
                    "signed by key {key_id} ({key_label}) (trust store version {})",
                    self.store_version
                )
            }
            Authenticity::HashOnly => {
                "unsigned (ThemisDB hash-only .sig matches; allowed because signatures are not required)".into()
            }
            Authenticity::Unsigned => "unsigned (allowed because signatures are not required)".into(),
        }
    }
}

/// The result of [`TrustState::verify_plugin`]: manifest, signature and binary all checked.
#[derive(Debug)]
pub struct PluginVerification {
    pub manifest: ManifestFile,
    pub trust: TrustReport,
    /// The binary for this platform; its bytes hash to `binary.sha256` when it is pinned.
    pub binary: BinaryRef,
    /// Lower-case hex SHA-256 of the binary's bytes as read (equal to the pin, if any).
    pub binary_sha256: String,
}

/// `<manifest>.sig`: the manifest's file name with `.sig` appended (`plugin.json.sig`).
pub fn signature_path(manifest_path: &Path) -> PathBuf {
    let mut s = manifest_path.as_os_str().to_os_string();
    s.push(".sig");
    PathBuf::from(s)
}

/// Read `<manifest>.sig`: `None` if it does not exist.
pub fn read_signature_file(manifest_path: &Path) -> Result<Option<Vec<u8>>> {
    let path = signature_path(manifest_path);
    match manifest::read_capped(&path, signature::MAX_SIGNATURE_FILE_BYTES) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.status() == keel_status::KEEL_ERR_FILE_NOT_FOUND => Ok(None),
        Err(e) if e.status() == keel_status::KEEL_ERR_FILE_TOO_LARGE => {
            Err(err!(KEEL_ERR_MALFORMED_SIGNATURE, "{}", e.message()))
        }
        Err(e) => Err(e),
    }
}

/// Read the binary a manifest names for this platform exactly as a load does
/// ([`artifact::read_for`]: beneath the manifest's directory, no symbolic link, regular file;
/// native binaries through a sealed memfd), with the manifest's pinned digest in the
/// [`BinaryRef`]. The digest is not compared here: see [`check_binary`].
pub fn read_binary(mf: &ManifestFile) -> Result<(BinaryRef, Unverified)> {
    artifact::read_for(mf)
}

/// Read the binary for this platform and compare it with the manifest's pinned digest
/// (`KEEL_ERR_DIGEST_MISMATCH`): [`artifact::read_verified`], the host's own load path. A
/// manifest without a pin is refused (`KEEL_ERR_UNPINNED_BINARY`) unless `policy` allows
/// unpinned binaries.
pub fn check_binary(mf: &ManifestFile, policy: Policy) -> Result<(BinaryRef, Verified)> {
    artifact::read_verified(mf, unpinned_rule(policy))
}

/// The artifact rule for manifests without a pin under `policy`.
pub fn unpinned_rule(policy: Policy) -> artifact::Unpinned {
    if policy.allow_unpinned {
        artifact::Unpinned::Allow
    } else {
        artifact::Unpinned::Refuse
    }
}

/// Trust state a host owns: store (lock-free reads) and policy.
#[derive(Debug)]
pub struct TrustState {
    store: ArcSwap<TrustStore>,
    policy: PolicyCell,
    /// Serialises store replacements so "check version, then swap" is atomic. Readers never
    /// take it.
    update: Mutex<()>,
}

impl Default for TrustState {
    fn default() -> Self {
        TrustState::new()
    }
}

impl TrustState {
    /// Empty store (no key trusted), `require_signature = true`, not started.
    pub fn new() -> TrustState {
        TrustState {
            store: ArcSwap::from_pointee(TrustStore::empty()),
            policy: PolicyCell::default(),
            update: Mutex::new(()),
        }
    }

    /// The store in use (a cheap reference-counted snapshot).
    pub fn store(&self) -> Arc<TrustStore> {
        self.store.load_full()
    }

    /// The policy in effect.
    pub fn policy(&self) -> Policy {
        self.policy.get()
    }

    /// Replace the trust store with a document. Fails, leaving the current store in use, with
    /// `KEEL_ERR_TRUST_STORE_MALFORMED` if it does not validate and
    /// `KEEL_ERR_TRUST_STORE_ROLLBACK` if its version is lower than the current one, or equal
    /// with different content. Reloading the same content is a no-op. Returns the version.
    pub fn set_trust_store_bytes(&self, bytes: &[u8]) -> Result<u64> {
        let new = TrustStore::from_bytes(bytes)?;
        let _guard = self.update.lock();
        let cur = self.store.load();
        if cur.is_loaded() {
            if new.version() < cur.version() {
                bail!(
                    KEEL_ERR_TRUST_STORE_ROLLBACK,
                    "trust store version {} is older than version {} in use (rollback refused)",
                    new.version(),
                    cur.version()
                );
            }
            if new.version() == cur.version() {
                if new.same_content(&cur) {
                    return Ok(new.version());
                }
                bail!(
                    KEEL_ERR_TRUST_STORE_ROLLBACK,
                    "trust store version {} is already in use with different content (increase \"version\" with every change)",
                    new.version()
                );
            }
        }
        let v = new.version();
        self.store.store(Arc::new(new));
        Ok(v)
    }

    /// Replace the trust store with the file at `path` (see [`TrustState::set_trust_store_bytes`]).
    pub fn set_trust_store_path(&self, path: &Path) -> Result<u64> {
        let bytes = manifest::read_capped(path, store::MAX_TRUST_STORE_BYTES)?;
        self.set_trust_store_bytes(&bytes)
            .map_err(|e| e.context(path.display()))
    }

    /// Turn the signature requirement on, or off before [`TrustState::mark_started`]
    /// (`KEEL_ERR_POLICY_DOWNGRADE` after).
    pub fn set_require_signature(&self, require: bool) -> Result<()> {
        self.policy.set_require_signature(require)
    }

    /// Allow loading binaries whose manifest pins no SHA-256, only before
    /// [`TrustState::mark_started`] (`KEEL_ERR_POLICY_DOWNGRADE` after); disallowing always
    /// succeeds.
    pub fn set_allow_unpinned(&self, allow: bool) -> Result<()> {
        self.policy.set_allow_unpinned(allow)
    }

    /// Has the host started (its first load)? Policies may only be strengthened then.
    pub fn is_started(&self) -> bool {
        self.policy.is_started()
    }

    /// The host has started: from now on the policy can only be strengthened.
    pub fn mark_started(&self) {
        self.policy.mark_started();
    }

    /// Verify a manifest's signature (`<manifest_path>.sig`) for a plugin called `plugin_name`
    /// (the name in the manifest), at the current time. `manifest_bytes` are the exact bytes
    /// the caller read and will use: the `.sig` is the only file read here.
    pub fn verify_manifest(
        &self,
        manifest_path: &Path,
        manifest_bytes: &[u8],
        plugin_name: &str,
    ) -> Result<TrustReport> {
        let sig = read_signature_file(manifest_path)?;
        self.verify_signature_at(sig.as_deref(), manifest_bytes, plugin_name, SystemTime::now())
    }

    /// [`TrustState::verify_manifest`] at a given time (for tests and tools).
    pub fn verify_at(
        &self,
        manifest_path: &Path,
        manifest_bytes: &[u8],
        plugin_name: &str,
        now: SystemTime,
    ) -> Result<TrustReport> {
        let sig = read_signature_file(manifest_path)?;
        self.verify_signature_at(sig.as_deref(), manifest_bytes, plugin_name, now)
    }

    /// The checks themselves, on the `.sig` bytes (`None`: no `.sig` file). Every validity
    /// check uses `now`.
    pub fn verify_signature_at(
        &self,
        sig_bytes: Option<&[u8]>,
        manifest_bytes: &[u8],
        plugin_name: &str,
        now: SystemTime,
    ) -> Result<TrustReport> {
        let policy = self.policy.get();
        let store = self.store.load();
        let report = |authenticity| TrustReport {
            authenticity,
            store_version: store.version(),
            checked_at: now,
        };
        let Some(sig_bytes) = sig_bytes else {
            if policy.require_signature {
                bail!(
                    KEEL_ERR_NO_SIGNATURE,
                    "plugin '{plugin_name}': no signature file and policy requires a signature"
                );
            }
            return Ok(report(Authenticity::Unsigned));
        };
        let sig = signature::parse(sig_bytes).map_err(|e| e.context(format!("plugin '{plugin_name}'")))?;
        let sig = match sig {
            SignatureFile::Keel(s) => s,
            SignatureFile::HashOnly(h) => {
                if policy.require_signature {
                    bail!(
                        KEEL_ERR_HASH_ONLY_SIGNATURE,
                        "plugin '{plugin_name}': the .sig holds only a SHA-256 of the manifest (ThemisDB style: integrity, not authorship) and policy requires a signature"
                    );
                }
                let actual = digest::sha256(manifest_bytes);
                if actual != h {
                    bail!(
                        KEEL_ERR_DIGEST_MISMATCH,
                        "plugin '{plugin_name}': the hash-only .sig says {}, the manifest's SHA-256 is {}",
                        hex::encode(h),
                        hex::encode(actual)
                    );
                }
                return Ok(report(Authenticity::HashOnly));
            }
        };
        let Some(key) = store.get(&sig.key_id) else {
            bail!(
                KEEL_ERR_UNKNOWN_KEY,
                "plugin '{plugin_name}': signed by key {} which the trust store (version {}) does not hold",
                signature::key_id_hex(&sig.key_id),
                store.version()
            );
        };
        key.check_usable(plugin_name, now)
            .map_err(|e| e.context(format!("plugin '{plugin_name}'")))?;
        sig.verify(&key.key, manifest_bytes)
            .map_err(|e| e.context(format!("plugin '{plugin_name}'")))?;
        Ok(report(Authenticity::Signed {
            key_id: key.id_hex(),
            key_label: key.label.clone(),
            comment: sig.comment,
        }))
    }

    /// Verify a plugin without loading it: read and validate the manifest, verify its
    /// signature, and check the binary for this platform against the pinned digest.
    pub fn verify_plugin(&self, manifest_path: &Path) -> Result<PluginVerification> {
        let mf = manifest::read_file(manifest_path)?;
        let trust = self.verify_manifest(&mf.path, &mf.bytes, &mf.manifest.name)?;
        let (binary, artifact) = check_binary(&mf, self.policy())?;
        Ok(PluginVerification {
            manifest: mf,
            trust,
            binary,
            binary_sha256: artifact.sha256_hex(),
        })
    }
}

/// Write `<manifest>.sig` atomically (a temporary file in the same directory, then rename), so
/// a concurrent verification sees the old signature or the new one, never half of one.
pub fn write_signature_file(manifest_path: &Path, sig: &KeelSignature) -> Result<PathBuf> {
    use std::io::Write as _;
    let path = signature_path(manifest_path);
    let mut tmp_name = path.as_os_str().to_os_string();
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp_name);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(sig.to_file_text().as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(&path, &e));
    }
    Ok(path)
}
