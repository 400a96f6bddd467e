//! The trust store: the public keys an operator trusts to sign plugins.
//!
//! # Format (version 1)
//!
//! A UTF-8 JSON file the operator edits and distributes to every node:
//!
//! ```json
//! {
//!   "keel_trust_store": 1,
//!   "version": 7,
//!   "keys": [
//!     {
//!       "id": "<64 lower-case hex: SHA-256 of the raw 32-byte Ed25519 public key>",
//!       "public_key": "<standard base64 with padding of the raw 32-byte public key>",
//!       "label": "ACME release key 2026",
//!       "not_before": "2026-01-01T00:00:00Z",
//!       "not_after": "2027-01-01T00:00:00Z",
//!       "revoked": { "at": "2026-06-01T12:00:00Z", "reason": "laptop stolen" },
//!       "allowed_plugins": ["acme-*", "acme_tools"]
//!     }
//!   ]
//! }
//! ```
//!
//! * `keel_trust_store` (required): the format version, 1.
//! * `version` (required): an unsigned integer the operator increases with every change. A
//!   host refuses a store older than the one it uses (`KEEL_ERR_TRUST_STORE_ROLLBACK`), and a
//!   store with the same version but different content (bump the version when editing).
//! * per key: `id` and `public_key` required; `label` optional (default ""). The `id` must be
//!   the SHA-256 of the decoded key, ids must be unique, and the key must be a valid,
//!   non-small-order Ed25519 point.
//! * `not_before` / `not_after` (optional): RFC 3339 UTC timestamps (`Z` or `+00:00`,
//!   fractional seconds allowed). Both bounds are inclusive: the key is valid at
//!   `not_before` and still valid at `not_after`.
//! * `revoked` (optional): `{"at": RFC 3339, "reason": text}`; `reason` may be omitted. A
//!   revoked key is refused for every signature, whatever the other fields say: `at` records
//!   when the operator revoked it, it does not schedule the revocation (a signature carries no
//!   trusted time, so "signed before revocation" cannot be told apart from "signed with the
//!   stolen key afterwards").
//! * `allowed_plugins` (optional): glob patterns (`*`, `?`, `[a-z]`, case-sensitive) over
//!   plugin names; the key may sign only plugins whose manifest name matches one of them.
//!   Absent = any plugin; an empty list = no plugin.
//!
//! Unknown fields are refused (`KEEL_ERR_TRUST_STORE_MALFORMED`): a misspelt `not_afer` must
//! not silently make a key valid forever.

use std::collections::HashMap;
use std::time::SystemTime;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::VerifyingKey;
use serde::Deserialize;

use crate::error::Result;
use crate::trust::signature::{key_id, key_id_hex, parse_lower_hex32, KeyId};
use crate::{bail, err};

/// Version of the trust store file format.
pub const TRUST_STORE_FORMAT_VERSION: u32 = 1;
/// Trust store files larger than this are refused.
pub const MAX_TRUST_STORE_BYTES: u64 = 4 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreDoc {
    keel_trust_store: u32,
    version: u64,
    keys: Vec<KeyDoc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyDoc {
    id: String,
    public_key: String,
    #[serde(default)]
    label: String,
    #[serde(default)]
    not_before: Option<String>,
    #[serde(default)]
    not_after: Option<String>,
    #[serde(default)]
    revoked: Option<RevokedDoc>,
    #[serde(default)]
    allowed_plugins: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokedDoc {
    at: String,
    #[serde(default)]
    reason: String,
}

/// A revocation record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub at: SystemTime,
    pub reason: String,
}

/// One trusted key, validated.
#[derive(Debug, Clone)]
pub struct TrustedKey {
    pub id: KeyId,
    pub key: VerifyingKey,
    pub label: String,
    pub not_before: Option<SystemTime>,
    pub not_after: Option<SystemTime>,
    pub revoked: Option<Revocation>,
    /// `None`: any plugin name. `Some`: only names matching one of the patterns.
    pub allowed_plugins: Option<Vec<glob::Pattern>>,
}

const NAME_MATCH: glob::MatchOptions = glob::MatchOptions {
    case_sensitive: true,
    require_literal_separator: true,
    require_literal_leading_dot: false,
};

impl TrustedKey {
    /// Lower-case hex of the key id.
    pub fn id_hex(&self) -> String {
        key_id_hex(&self.id)
    }

    /// "label (id)" or just the id, for messages.
    pub fn describe(&self) -> String {
        if self.label.is_empty() {
            format!("key {}", self.id_hex())
        } else {
            format!("key {} ({})", self.id_hex(), self.label)
        }
    }

    /// The key's state at `now`, by the first rule of [`TrustedKey::check_usable`] that
    /// refuses it (the plugin-name rule aside): `"revoked"`, `"not-yet-valid"`, `"expired"`,
    /// or `"valid"`.
    pub fn state_at(&self, now: SystemTime) -> &'static str {
        match self.check_usable_at(now) {
            Ok(()) => "valid",
            Err(e) => match e.status() {
                crate::error::keel_status::KEEL_ERR_KEY_REVOKED => "revoked",
                crate::error::keel_status::KEEL_ERR_KEY_NOT_YET_VALID => "not-yet-valid",
                _ => "expired",
            },
        }
    }

    /// May this key sign a plugin called `plugin_name` at time `now`? Checks, in this order:
    /// revoked (`KEEL_ERR_KEY_REVOKED`), not yet valid (`KEEL_ERR_KEY_NOT_YET_VALID`), expired
    /// (`KEEL_ERR_KEY_EXPIRED`), plugin name not allowed (`KEEL_ERR_KEY_NOT_ALLOWED`).
    pub fn check_usable(&self, plugin_name: &str, now: SystemTime) -> Result<()> {
        self.check_usable_at(now)?;
        self.check_name(plugin_name)
    }

    /// The time rules of [`TrustedKey::check_usable`]: revoked, not yet valid, expired.
    fn check_usable_at(&self, now: SystemTime) -> Result<()> {
        if let Some(r) = &self.revoked {
            let reason = if r.reason.is_empty() {
                String::new()
            } else {
                format!(": {}", r.reason)
            };
            bail!(
                KEEL_ERR_KEY_REVOKED,
                "{} was revoked at {}{reason}",
                self.describe(),
                humantime::format_rfc3339_seconds(r.at)
            );
        }
        if let Some(nb) = self.not_before {
            if now < nb {
                bail!(
                    KEEL_ERR_KEY_NOT_YET_VALID,
                    "{} is not valid before {} (now {})",
                    self.describe(),
                    humantime::format_rfc3339_seconds(nb),
                    humantime::format_rfc3339_seconds(now)
                );
            }
        }
        if let Some(na) = self.not_after {
            if now > na {
                bail!(
                    KEEL_ERR_KEY_EXPIRED,
                    "{} expired at {} (now {})",
                    self.describe(),
                    humantime::format_rfc3339_seconds(na),
                    humantime::format_rfc3339_seconds(now)
                );
            }
        }
        Ok(())
    }

    /// The plugin-name rule of [`TrustedKey::check_usable`].
    fn check_name(&self, plugin_name: &str) -> Result<()> {
        if let Some(patterns) = &self.allowed_plugins {
            if !patterns.iter().any(|p| p.matches_with(plugin_name, NAME_MATCH)) {
                let list: Vec<&str> = patterns.iter().map(|p| p.as_str()).collect();
                bail!(
                    KEEL_ERR_KEY_NOT_ALLOWED,
                    "{} may not sign plugin '{plugin_name}' (it may sign: {})",
                    self.describe(),
                    if list.is_empty() {
                        "no plugin".to_string()
                    } else {
                        list.join(", ")
                    }
                );
            }
        }
        Ok(())
    }
}

/// A validated trust store.
#[derive(Debug, Clone)]
pub struct TrustStore {
    version: u64,
    keys: HashMap<KeyId, TrustedKey>,
    /// The parsed document, to tell "same version, same content" from "same version, edited".
    doc: Option<StoreDoc>,
}

fn malformed(msg: String) -> crate::error::Error {
    err!(KEEL_ERR_TRUST_STORE_MALFORMED, "trust store: {msg}")
}

fn parse_time(s: &str, what: &str) -> Result<SystemTime> {
    humantime::parse_rfc3339(s).map_err(|e| {
        malformed(format!(
            "{what}: '{s}' is not an RFC 3339 UTC timestamp like 2026-01-31T00:00:00Z ({e})"
        ))
    })
}

impl TrustStore {
    /// The store in effect before any store is loaded: version 0, no keys (every signature
    /// fails with `KEEL_ERR_UNKNOWN_KEY`).
    pub fn empty() -> TrustStore {
        TrustStore {
            version: 0,
            keys: HashMap::new(),
            doc: None,
        }
    }

    /// Parse and validate a trust store document. Every problem is
    /// `KEEL_ERR_TRUST_STORE_MALFORMED`, with the JSON path of the offending key.
    pub fn from_bytes(bytes: &[u8]) -> Result<TrustStore> {
        if bytes.len() as u64 > MAX_TRUST_STORE_BYTES {
            return Err(malformed(format!(
                "{} bytes, more than the {MAX_TRUST_STORE_BYTES} accepted",
                bytes.len()
            )));
        }
        let doc: StoreDoc = serde_json::from_slice(bytes).map_err(|e| malformed(e.to_string()))?;
        if doc.keel_trust_store != TRUST_STORE_FORMAT_VERSION {
            return Err(malformed(format!(
                "format version {} is not supported (this Keel reads \"keel_trust_store\": {TRUST_STORE_FORMAT_VERSION})",
                doc.keel_trust_store
            )));
        }
        let mut keys = HashMap::with_capacity(doc.keys.len());
        for (i, k) in doc.keys.iter().enumerate() {
            let at = format!("/keys/{i}");
            let key = parse_key(k).map_err(|e| malformed(format!("at {at}: {}", e.message())))?;
            if let Some(prev) = keys.insert(key.id, key) {
                return Err(malformed(format!("at {at}: duplicate key id {}", prev.id_hex())));
            }
        }
        Ok(TrustStore {
            version: doc.version,
            keys,
            doc: Some(doc),
        })
    }

    /// The operator's version number (0 for [`TrustStore::empty`]).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Was this store loaded from a document (as opposed to [`TrustStore::empty`])?
    pub fn is_loaded(&self) -> bool {
        self.doc.is_some()
    }

    /// Same document content (ignoring formatting)?
    pub fn same_content(&self, other: &TrustStore) -> bool {
        self.doc == other.doc
    }

    pub fn get(&self, id: &KeyId) -> Option<&TrustedKey> {
        self.keys.get(id)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn keys(&self) -> impl Iterator<Item = &TrustedKey> {
        self.keys.values()
    }
}

fn parse_key(k: &KeyDoc) -> Result<TrustedKey> {
    let id = parse_lower_hex32(&k.id, "id").map_err(malformed)?;
    let raw = B64
        .decode(k.public_key.as_bytes())
        .map_err(|e| malformed(format!("public_key is not standard base64: {e}")))?;
    let raw: [u8; 32] = raw
        .as_slice()
        .try_into()
        .map_err(|_| malformed(format!("public_key must decode to 32 bytes, found {}", raw.len())))?;
    let key =
        VerifyingKey::from_bytes(&raw).map_err(|_| malformed("public_key is not a valid Ed25519 point".to_string()))?;
    if key.is_weak() {
        return Err(malformed(
            "public_key is a small-order (weak) Ed25519 point".to_string(),
        ));
    }
    let actual = key_id(&key);
    if actual != id {
        return Err(malformed(format!(
            "id {} is not the SHA-256 of public_key (that is {})",
            k.id,
            key_id_hex(&actual)
        )));
    }
    let not_before = k
        .not_before
        .as_deref()
        .map(|s| parse_time(s, "not_before"))
        .transpose()?;
    let not_after = k.not_after.as_deref().map(|s| parse_time(s, "not_after")).transpose()?;
    if let (Some(nb), Some(na)) = (not_before, not_after) {
        if na < nb {
            return Err(malformed("not_after is earlier than not_before".to_string()));
        }
    }
    let revoked = match &k.revoked {
        Some(r) => Some(Revocation {
            at: parse_time(&r.at, "revoked.at")?,
            reason: r.reason.clone(),
        }),
        None => None,
    };
    let allowed_plugins = match &k.allowed_plugins {
        Some(list) => {
            let mut pats = Vec::with_capacity(list.len());
            for (j, p) in list.iter().enumerate() {
                pats.push(compile_pattern(j, p)?);
            }
            Some(pats)
        }
        None => None,
    };
    Ok(TrustedKey {
        id,
        key,
        label: k.label.clone(),
        not_before,
        not_after,
        revoked,
        allowed_plugins,
    })
}

/// A trust-store key entry for `key` (what `keel keygen` writes as `<prefix>.pub`), ready to
/// paste into `"keys"`. Empty `allowed_plugins` leaves the field out (any plugin). Patterns
/// are checked with the same rules as a store's (`KEEL_ERR_INVALID_ARGUMENT`).
pub fn key_entry(key: &VerifyingKey, label: &str, allowed_plugins: &[String]) -> Result<serde_json::Value> {
    for (j, p) in allowed_plugins.iter().enumerate() {
        compile_pattern(j, p).map_err(|e| err!(KEEL_ERR_INVALID_ARGUMENT, "{}", e.message()))?;
    }
    let mut e = serde_json::Map::new();
    e.insert("id".into(), key_id_hex(&key_id(key)).into());
    e.insert("public_key".into(), B64.encode(key.as_bytes()).into());
    e.insert("label".into(), label.into());
    if !allowed_plugins.is_empty() {
        e.insert("allowed_plugins".into(), allowed_plugins.to_vec().into());
    }
    Ok(serde_json::Value::Object(e))
}

/// A new trust store document at `version` holding `keys` (entries as [`key_entry`] makes
/// them), pretty-printed and checked exactly as a host reads it
/// (`KEEL_ERR_TRUST_STORE_MALFORMED` otherwise).
pub fn new_document(version: u64, keys: Vec<serde_json::Value>) -> Result<Vec<u8>> {
    finish(serde_json::json!({
        "keel_trust_store": TRUST_STORE_FORMAT_VERSION,
        "version": version,
        "keys": keys,
    }))
}

/// `store` (a trust store document) with `entry` appended to its keys and its version
/// increased by one, checked as a host reads it. A key id already in the store is refused
/// (`KEEL_ERR_INVALID_ARGUMENT`); a malformed store or entry is
/// `KEEL_ERR_TRUST_STORE_MALFORMED`.
pub fn add_key(store: &[u8], entry: serde_json::Value) -> Result<Vec<u8>> {
    let current = TrustStore::from_bytes(store)?;
    let mut doc: serde_json::Value = serde_json::from_slice(store).map_err(|e| malformed(e.to_string()))?;
    let id = entry.get("id").and_then(|v| v.as_str()).unwrap_or_default();
    if current.keys().any(|k| k.id_hex() == id) {
        bail!(KEEL_ERR_INVALID_ARGUMENT, "key {id} is already in the trust store");
    }
    match doc.get_mut("keys").and_then(|k| k.as_array_mut()) {
        Some(keys) => keys.push(entry),
        None => return Err(malformed("\"keys\" is not an array".into())),
    }
    bump(&mut doc, current.version())?;
    finish(doc)
}

/// `store` with the key `id_hex` marked revoked at `at` (with `reason`) and its version
/// increased by one. `KEEL_ERR_UNKNOWN_KEY` if the store does not hold the key,
/// `KEEL_ERR_INVALID_ARGUMENT` if it is already revoked.
pub fn revoke_key(store: &[u8], id_hex: &str, reason: &str, at: SystemTime) -> Result<Vec<u8>> {
    let current = TrustStore::from_bytes(store)?;
    let mut doc: serde_json::Value = serde_json::from_slice(store).map_err(|e| malformed(e.to_string()))?;
    let Some(key) = current.keys().find(|k| k.id_hex() == id_hex) else {
        bail!(
            KEEL_ERR_UNKNOWN_KEY,
            "the trust store (version {}) holds no key {id_hex}",
            current.version()
        );
    };
    if key.revoked.is_some() {
        bail!(KEEL_ERR_INVALID_ARGUMENT, "{} is already revoked", key.describe());
    }
    let entry = doc
        .get_mut("keys")
        .and_then(|k| k.as_array_mut())
        .and_then(|keys| {
            keys.iter_mut()
                .find(|k| k.get("id").and_then(|v| v.as_str()) == Some(id_hex))
        })
        .ok_or_else(|| malformed(format!("key {id_hex} not found in the document")))?;
    entry["revoked"] = serde_json::json!({
        "at": humantime::format_rfc3339_seconds(at).to_string(),
        "reason": reason,
    });
    bump(&mut doc, current.version())?;
    finish(doc)
}

fn bump(doc: &mut serde_json::Value, version: u64) -> Result<()> {
    let next = version
        .checked_add(1)
        .ok_or_else(|| malformed("version cannot be increased past u64::MAX".into()))?;
    doc["version"] = next.into();
    Ok(())
}

fn finish(doc: serde_json::Value) -> Result<Vec<u8>> {
    let mut bytes = serde_json::to_vec_pretty(&doc).map_err(|e| malformed(e.to_string()))?;
    bytes.push(b'\n');
    TrustStore::from_bytes(&bytes)?;
    Ok(bytes)
}

fn compile_pattern(j: usize, p: &str) -> Result<glob::Pattern> {
    if p.is_empty() {
        return Err(malformed(format!("allowed_plugins/{j}: empty pattern")));
    }
    glob::Pattern::new(p).map_err(|e| malformed(format!("allowed_plugins/{j}: '{p}' is not a glob pattern: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::keel_status;
    use ed25519_dalek::SigningKey;

    fn entry(seed: u8) -> serde_json::Value {
        let vk = SigningKey::from_bytes(&[seed; 32]).verifying_key();
        serde_json::json!({"id": key_id_hex(&key_id(&vk)), "public_key": B64.encode(vk.as_bytes())})
    }

    fn store(keys: Vec<serde_json::Value>) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({"keel_trust_store": 1, "version": 3, "keys": keys})).unwrap()
    }

    fn code(bytes: &[u8]) -> keel_status {
        TrustStore::from_bytes(bytes).unwrap_err().status()
    }

    #[test]
    fn valid_store_loads() {
        let s = TrustStore::from_bytes(&store(vec![entry(1), entry(2)])).unwrap();
        assert_eq!(s.version(), 3);
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn malformed_stores() {
        use keel_status::KEEL_ERR_TRUST_STORE_MALFORMED as M;
        let mut wrong_id = entry(1);
        wrong_id["id"] = entry(2)["id"].clone();
        let mut upper = entry(1);
        upper["id"] = upper["id"].as_str().unwrap().to_uppercase().into();
        let mut typo = entry(1);
        typo["not_afer"] = "2030-01-01T00:00:00Z".into();
        let mut bad_time = entry(1);
        bad_time["not_after"] = "next tuesday".into();
        let mut bad_glob = entry(1);
        bad_glob["allowed_plugins"] = serde_json::json!(["[a-"]);
        let mut short_key = entry(1);
        short_key["public_key"] = B64.encode([1u8; 16]).into();
        let mut inverted = entry(1);
        inverted["not_before"] = "2030-01-01T00:00:00Z".into();
        inverted["not_after"] = "2029-01-01T00:00:00Z".into();
        for (what, bytes) in [
            ("duplicate", store(vec![entry(1), entry(1)])),
            ("wrong id", store(vec![wrong_id])),
            ("upper-case id", store(vec![upper])),
            ("unknown field", store(vec![typo])),
            ("bad time", store(vec![bad_time])),
            ("bad glob", store(vec![bad_glob])),
            ("short key", store(vec![short_key])),
            ("inverted validity", store(vec![inverted])),
            ("not json", b"{".to_vec()),
            ("format 2", br#"{"keel_trust_store":2,"version":1,"keys":[]}"#.to_vec()),
            (
                "negative version",
                br#"{"keel_trust_store":1,"version":-1,"keys":[]}"#.to_vec(),
            ),
        ] {
            assert_eq!(code(&bytes), M, "{what}");
        }
    }

    #[test]
    fn documents_are_edited_with_version_bumps_and_checked() {
        let doc = new_document(1, vec![entry(1)]).unwrap();
        assert_eq!(TrustStore::from_bytes(&doc).unwrap().len(), 1);
        let doc = add_key(&doc, entry(2)).unwrap();
        let s = TrustStore::from_bytes(&doc).unwrap();
        assert_eq!((s.version(), s.len()), (2, 2));
        // The same key twice; a malformed entry; an unknown key to revoke.
        assert_eq!(
            add_key(&doc, entry(2)).unwrap_err().status(),
            keel_status::KEEL_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            add_key(&doc, serde_json::json!({"id": "00"})).unwrap_err().status(),
            keel_status::KEEL_ERR_TRUST_STORE_MALFORMED
        );
        let id2 = entry(2)["id"].as_str().unwrap().to_string();
        let id3 = entry(3)["id"].as_str().unwrap().to_string();
        assert_eq!(
            revoke_key(&doc, &id3, "", SystemTime::now()).unwrap_err().status(),
            keel_status::KEEL_ERR_UNKNOWN_KEY
        );
        let now = SystemTime::now();
        let doc = revoke_key(&doc, &id2, "lost", now).unwrap();
        let s = TrustStore::from_bytes(&doc).unwrap();
        assert_eq!(s.version(), 3);
        let k = s.keys().find(|k| k.id_hex() == id2).unwrap();
        assert_eq!(k.revoked.as_ref().unwrap().reason, "lost");
        assert_eq!(k.state_at(now), "revoked");
        let other = s.keys().find(|k| k.id_hex() != id2).unwrap();
        assert_eq!(other.state_at(now), "valid");
        assert_eq!(
            revoke_key(&doc, &id2, "", now).unwrap_err().status(),
            keel_status::KEEL_ERR_INVALID_ARGUMENT
        );
    }

    #[test]
    fn weak_key_refused() {
        // The identity point (small order) encodes as 0x01 followed by zeros.
        let mut raw = [0u8; 32];
        raw[0] = 1;
        let id = hex::encode(crate::trust::digest::sha256(&raw));
        let bytes = store(vec![serde_json::json!({"id": id, "public_key": B64.encode(raw)})]);
        let e = TrustStore::from_bytes(&bytes).unwrap_err();
        assert_eq!(e.status(), keel_status::KEEL_ERR_TRUST_STORE_MALFORMED);
        assert!(e.message().contains("weak"), "{e}");
    }
}
