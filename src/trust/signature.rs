//! Detached manifest signatures (`<manifest>.sig`) and Keel's key files.
//!
//! # The signature file (format version 1)
//!
//! A UTF-8 JSON object, nothing else in the file but surrounding whitespace:
//!
//! ```json
//! {
//!   "keel_signature": 1,
//!   "algorithm": "ed25519",
//!   "key_id": "<64 lower-case hex: SHA-256 of the raw 32-byte public key>",
//!   "signature": "<standard base64 with padding of the 64-byte Ed25519 signature>",
//!   "comment": "optional, covered by the signature"
//! }
//! ```
//!
//! Unknown fields are refused, so a field added by a later version cannot be silently
//! ignored by this one. The signature is pure Ed25519 (RFC 8032, no pre-hash, no context)
//! over a domain-separated message:
//!
//! ```text
//! message = "keel-manifest-signature-v1" 0x00
//!         || u32 big-endian length of the comment in bytes || comment (UTF-8)
//!         || the manifest file's exact bytes
//! ```
//!
//! The prefix makes a Keel manifest signature useless as a signature over anything else
//! (and the reverse); the length prefix keeps the comment and the manifest apart. Because the
//! manifest pins its binary's SHA-256, the signature covers the binary too. Verification uses
//! ed25519-dalek's `verify_strict` (rejects small-order keys and non-canonical signatures).
//!
//! # ThemisDB `.sig` files
//!
//! ThemisDB writes `<manifest>.sig` holding the SHA-256 hex of the manifest on its first line
//! (an integrity check with no authorship). [`parse`] recognises such a file as
//! [`SignatureFile::HashOnly`]: 64 hex digits (either case) on the first line, only
//! whitespace after it. What policy does with it is decided by [`crate::trust::TrustState`].
//!
//! # Key files (written by `keel keygen`)
//!
//! * secret key `<prefix>.key`, mode 0600:
//!   `{"keel_secret_key":1,"algorithm":"ed25519","key_id":"<hex>","seed":"<64 hex: the 32-byte RFC 8032 secret key>"}`
//! * public key `<prefix>.pub`: a ready-to-paste trust-store key entry,
//!   `{"id":"<hex>","public_key":"<base64 of the 32-byte key>","label":"..."}`
//!   (see [`crate::trust::store`]).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use std::path::Path;

use crate::error::{Error, Result};
use crate::trust::digest;
use crate::{bail, err};

/// Version of the signature file format written and read by this code.
pub const SIGNATURE_FORMAT_VERSION: u32 = 1;
/// The only algorithm of format version 1.
pub const ALGORITHM: &str = "ed25519";
/// Domain-separation prefix of the signed message (includes the trailing NUL).
pub const DOMAIN_PREFIX: &[u8] = b"keel-manifest-signature-v1\0";
/// Signature files larger than this are refused before parsing.
pub const MAX_SIGNATURE_FILE_BYTES: u64 = 64 << 10;
/// Longest accepted comment, in bytes.
pub const MAX_COMMENT_BYTES: usize = 1024;
/// Version of the secret key file format.
pub const SECRET_KEY_FORMAT_VERSION: u32 = 1;

/// A key id: the SHA-256 of the raw 32-byte Ed25519 public key.
pub type KeyId = [u8; 32];

/// The id of a public key (SHA-256 of its 32 raw bytes).
pub fn key_id(key: &VerifyingKey) -> KeyId {
    digest::sha256(key.as_bytes())
}

/// Lower-case hex of a key id.
pub fn key_id_hex(id: &KeyId) -> String {
    hex::encode(id)
}

/// Standard base64 (with padding) of a public key, as trust stores carry it.
pub fn public_key_base64(key: &VerifyingKey) -> String {
    B64.encode(key.as_bytes())
}

/// Parse 64 lower-case hex digits into 32 bytes. `what` names the field in errors.
pub(crate) fn parse_lower_hex32(s: &str, what: &str) -> std::result::Result<[u8; 32], String> {
    if s.len() != 64 {
        return Err(format!("{what} must be 64 hex digits, found {} characters", s.len()));
    }
    if !s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(format!("{what} must be lower-case hex (0-9, a-f)"));
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).map_err(|e| format!("{what}: {e}"))?;
    Ok(out)
}

/// The exact message an Ed25519 signature covers (see the module documentation).
pub fn signed_message(comment: &str, manifest_bytes: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN_PREFIX.len() + 4 + comment.len() + manifest_bytes.len());
    m.extend_from_slice(DOMAIN_PREFIX);
    // Comments are capped at MAX_COMMENT_BYTES, far below u32::MAX.
    m.extend_from_slice(&(comment.len() as u32).to_be_bytes());
    m.extend_from_slice(comment.as_bytes());
    m.extend_from_slice(manifest_bytes);
    m
}

fn check_comment(comment: &str) -> std::result::Result<(), String> {
    if comment.len() > MAX_COMMENT_BYTES {
        return Err(format!(
            "comment is {} bytes, more than the {MAX_COMMENT_BYTES} accepted",
            comment.len()
        ));
    }
    if comment.chars().any(char::is_control) {
        return Err("comment must not contain control characters (newlines, tabs, escapes)".into());
    }
    Ok(())
}

/// A parsed Keel signature (format version 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeelSignature {
    pub key_id: KeyId,
    pub signature: Signature,
    pub comment: String,
}

/// What a `.sig` file turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureFile {
    /// A Keel Ed25519 signature.
    Keel(KeelSignature),
    /// A ThemisDB-style bare SHA-256 of the manifest: integrity, no authorship.
    HashOnly([u8; 32]),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignatureDoc {
    keel_signature: u32,
    algorithm: String,
    key_id: String,
    signature: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    comment: String,
}

/// Parse a `.sig` file's bytes. Anything that is neither a valid Keel signature document nor
/// a ThemisDB hash line fails with `KEEL_ERR_MALFORMED_SIGNATURE`.
pub fn parse(bytes: &[u8]) -> Result<SignatureFile> {
    let Ok(text) = std::str::from_utf8(bytes) else {
        bail!(KEEL_ERR_MALFORMED_SIGNATURE, "signature file is not UTF-8 text");
    };
    let trimmed = text.trim();
    if trimmed.starts_with('{') {
        return parse_keel(trimmed).map(SignatureFile::Keel);
    }
    // ThemisDB: the hash on the first line, nothing but whitespace after it.
    let mut lines = trimmed.splitn(2, '\n');
    let first = lines.next().unwrap_or("").trim();
    let rest = lines.next().unwrap_or("");
    if first.len() == 64 && first.bytes().all(|b| b.is_ascii_hexdigit()) && rest.trim().is_empty() {
        let mut h = [0u8; 32];
        hex::decode_to_slice(first.to_ascii_lowercase(), &mut h)
            .map_err(|e| err!(KEEL_ERR_MALFORMED_SIGNATURE, "hash line: {e}"))?;
        return Ok(SignatureFile::HashOnly(h));
    }
    if trimmed.is_empty() {
        bail!(KEEL_ERR_MALFORMED_SIGNATURE, "signature file is empty");
    }
    bail!(
        KEEL_ERR_MALFORMED_SIGNATURE,
        "signature file is neither a Keel signature (a JSON object with \"keel_signature\") nor a ThemisDB hash line (64 hex digits)"
    )
}

fn parse_keel(text: &str) -> Result<KeelSignature> {
    let doc: SignatureDoc = serde_json::from_str(text).map_err(|e| {
        err!(
            KEEL_ERR_MALFORMED_SIGNATURE,
            "signature file is not a valid Keel signature document: {e}"
        )
    })?;
    if doc.keel_signature != SIGNATURE_FORMAT_VERSION {
        bail!(
            KEEL_ERR_MALFORMED_SIGNATURE,
            "signature format version {} is not supported (this Keel reads version {SIGNATURE_FORMAT_VERSION})",
            doc.keel_signature
        );
    }
    if doc.algorithm != ALGORITHM {
        bail!(
            KEEL_ERR_MALFORMED_SIGNATURE,
            "signature algorithm '{}' is not supported (only '{ALGORITHM}')",
            doc.algorithm
        );
    }
    let key_id = parse_lower_hex32(&doc.key_id, "key_id").map_err(|m| err!(KEEL_ERR_MALFORMED_SIGNATURE, "{m}"))?;
    let raw = B64
        .decode(doc.signature.as_bytes())
        .map_err(|e| err!(KEEL_ERR_MALFORMED_SIGNATURE, "signature is not standard base64: {e}"))?;
    let raw: [u8; 64] = raw.as_slice().try_into().map_err(|_| {
        err!(
            KEEL_ERR_MALFORMED_SIGNATURE,
            "signature must decode to 64 bytes, found {}",
            raw.len()
        )
    })?;
    check_comment(&doc.comment).map_err(|m| err!(KEEL_ERR_MALFORMED_SIGNATURE, "{m}"))?;
    Ok(KeelSignature {
        key_id,
        signature: Signature::from_bytes(&raw),
        comment: doc.comment,
    })
}

impl KeelSignature {
    /// Sign a manifest's exact bytes. Fails with `KEEL_ERR_INVALID_ARGUMENT` if the comment is
    /// too long or contains control characters.
    pub fn sign(key: &SigningKey, manifest_bytes: &[u8], comment: &str) -> Result<KeelSignature> {
        check_comment(comment).map_err(|m| err!(KEEL_ERR_INVALID_ARGUMENT, "{m}"))?;
        let signature = key.sign(&signed_message(comment, manifest_bytes));
        Ok(KeelSignature {
            key_id: key_id(&key.verifying_key()),
            signature,
            comment: comment.to_string(),
        })
    }

    /// Verify against a public key (strict). `KEEL_ERR_BAD_SIGNATURE` if it does not verify.
    ///
    /// This checks the cryptography only; whether the key is trusted, valid now and allowed for
    /// the plugin is [`crate::trust::TrustState`]'s job.
    pub fn verify(&self, key: &VerifyingKey, manifest_bytes: &[u8]) -> Result<()> {
        key.verify_strict(&signed_message(&self.comment, manifest_bytes), &self.signature).map_err(|_| {
            err!(
                KEEL_ERR_BAD_SIGNATURE,
                "the Ed25519 signature by key {} does not verify over this manifest (manifest edited after signing, signature copied from another manifest, or comment altered)",
                key_id_hex(&self.key_id)
            )
        })
    }

    /// The signature file text (pretty JSON with a trailing newline).
    pub fn to_file_text(&self) -> String {
        let doc = SignatureDoc {
            keel_signature: SIGNATURE_FORMAT_VERSION,
            algorithm: ALGORITHM.to_string(),
            key_id: key_id_hex(&self.key_id),
            signature: B64.encode(self.signature.to_bytes()),
            comment: self.comment.clone(),
        };
        // Serialising a struct of strings and integers cannot fail.
        let mut s = serde_json::to_string_pretty(&doc).unwrap_or_default();
        s.push('\n');
        s
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretKeyDoc {
    keel_secret_key: u32,
    algorithm: String,
    key_id: String,
    seed: String,
}

/// Generate a new signing key from the operating system's random source.
pub fn generate_signing_key() -> Result<SigningKey> {
    use rand_core::RngCore as _;
    let mut seed = [0u8; 32];
    rand_core::OsRng
        .try_fill_bytes(&mut seed)
        .map_err(|e| err!(KEEL_ERR_INTERNAL, "the operating system's random source failed: {e}"))?;
    let key = SigningKey::from_bytes(&seed);
    seed.fill(0);
    Ok(key)
}

/// The secret key file text for `key` (see the module documentation).
pub fn secret_key_file_text(key: &SigningKey) -> String {
    let doc = SecretKeyDoc {
        keel_secret_key: SECRET_KEY_FORMAT_VERSION,
        algorithm: ALGORITHM.to_string(),
        key_id: key_id_hex(&key_id(&key.verifying_key())),
        seed: hex::encode(key.to_bytes()),
    };
    let mut s = serde_json::to_string_pretty(&doc).unwrap_or_default();
    s.push('\n');
    s
}

/// Parse a secret key file. The stored key id must match the key (catches a corrupted or
/// hand-edited file). Errors are `KEEL_ERR_INVALID_ARGUMENT`; the message never contains the seed.
pub fn parse_secret_key_file(bytes: &[u8]) -> Result<SigningKey> {
    let doc: SecretKeyDoc = serde_json::from_slice(bytes).map_err(|e| {
        // serde_json's message can quote input; keep only the position.
        err!(
            KEEL_ERR_INVALID_ARGUMENT,
            "not a Keel secret key file (line {}, column {})",
            e.line(),
            e.column()
        )
    })?;
    if doc.keel_secret_key != SECRET_KEY_FORMAT_VERSION || doc.algorithm != ALGORITHM {
        bail!(
            KEEL_ERR_INVALID_ARGUMENT,
            "secret key file version {} / algorithm '{}' not supported (expected {SECRET_KEY_FORMAT_VERSION} / {ALGORITHM})",
            doc.keel_secret_key,
            doc.algorithm
        );
    }
    let seed = parse_lower_hex32(&doc.seed, "seed").map_err(|_| {
        err!(
            KEEL_ERR_INVALID_ARGUMENT,
            "secret key file: seed must be 64 lower-case hex digits"
        )
    })?;
    let key = SigningKey::from_bytes(&seed);
    let id = key_id_hex(&key_id(&key.verifying_key()));
    if id != doc.key_id {
        bail!(
            KEEL_ERR_INVALID_ARGUMENT,
            "secret key file: key_id {} does not match the key (its id is {id})",
            doc.key_id
        );
    }
    Ok(key)
}

/// Write a new secret key file at `path`: created exclusively (an existing file is never
/// overwritten: `KEEL_ERR_IO`), mode 0600 from the moment it exists.
pub fn write_secret_key_file(path: &Path, key: &SigningKey) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(path, &e))?;
    // The umask can only remove bits; make the mode exactly 0600 regardless.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io(path, &e))?;
    f.write_all(secret_key_file_text(key).as_bytes())
        .map_err(|e| Error::io(path, &e))?;
    f.sync_all().map_err(|e| Error::io(path, &e))?;
    Ok(())
}

/// Read a secret key file. Refused (`KEEL_ERR_INVALID_ARGUMENT`) if group or others may read
/// or write it, like ssh does: a secret key others can read is no longer secret.
pub fn read_secret_key_file(path: &Path) -> Result<SigningKey> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, &e))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            KEEL_ERR_INVALID_ARGUMENT,
            "{}: secret key file has mode {mode:04o}; it must not be accessible by group or others (chmod 600)",
            path.display()
        );
    }
    let bytes = crate::manifest::read_capped(path, 64 << 10)?;
    parse_secret_key_file(&bytes).map_err(|e| e.context(path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::keel_status;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7u8; 32])
    }

    #[test]
    fn round_trip_and_tamper() {
        let sig = KeelSignature::sign(&key(), b"{\"a\":1}", "release 1").unwrap();
        let text = sig.to_file_text();
        let SignatureFile::Keel(parsed) = parse(text.as_bytes()).unwrap() else {
            panic!("not keel")
        };
        assert_eq!(parsed, sig);
        parsed.verify(&key().verifying_key(), b"{\"a\":1}").unwrap();
        let e = parsed.verify(&key().verifying_key(), b"{\"a\":2}").unwrap_err();
        assert_eq!(e.status(), keel_status::KEEL_ERR_BAD_SIGNATURE);
        let mut other = parsed.clone();
        other.comment = "release 2".into();
        assert_eq!(
            other.verify(&key().verifying_key(), b"{\"a\":1}").unwrap_err().status(),
            keel_status::KEEL_ERR_BAD_SIGNATURE
        );
    }

    #[test]
    fn message_is_domain_separated_and_length_prefixed() {
        let m = signed_message("ab", b"cd");
        assert!(m.starts_with(DOMAIN_PREFIX));
        assert_eq!(&m[DOMAIN_PREFIX.len()..], b"\0\0\0\x02abcd");
        // Moving bytes between comment and manifest changes the message.
        assert_ne!(signed_message("a", b"bcd"), m);
    }

    #[test]
    fn malformed_variants() {
        for bad in [
            &b""[..],
            b"\xff\xfe",
            b"{}",
            b"{\"keel_signature\":2,\"algorithm\":\"ed25519\",\"key_id\":\"\",\"signature\":\"\"}",
            b"not a hash",
            b"abcd",
        ] {
            assert_eq!(
                parse(bad).unwrap_err().status(),
                keel_status::KEEL_ERR_MALFORMED_SIGNATURE,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn themis_hash_line() {
        let h = digest::sha256_hex(b"x");
        assert_eq!(
            parse(format!("{h}\n").as_bytes()).unwrap(),
            SignatureFile::HashOnly(digest::sha256(b"x"))
        );
        assert_eq!(
            parse(format!("  {}\r\n\n", h.to_uppercase()).as_bytes()).unwrap(),
            SignatureFile::HashOnly(digest::sha256(b"x"))
        );
        assert_eq!(
            parse(format!("{h}\ntrailing").as_bytes()).unwrap_err().status(),
            keel_status::KEEL_ERR_MALFORMED_SIGNATURE
        );
    }

    #[test]
    fn secret_key_file_round_trip() {
        let text = secret_key_file_text(&key());
        assert_eq!(
            parse_secret_key_file(text.as_bytes()).unwrap().to_bytes(),
            key().to_bytes()
        );
        let tampered = text.replace(&key_id_hex(&key_id(&key().verifying_key())), &"0".repeat(64));
        assert_eq!(
            parse_secret_key_file(tampered.as_bytes()).unwrap_err().status(),
            keel_status::KEEL_ERR_INVALID_ARGUMENT
        );
    }
}
