//! Trust end to end: Ed25519 (RFC 8032 vectors), Keel's signature format, the trust store,
//! the policy, and one code per cause through both the Rust API and the C ABI.

use crate::common;

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::ptr;
use std::time::{Duration, SystemTime};

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde_json::{json, Value};

use keel::ffi::host::{keel_host, keel_host_free, keel_host_load, keel_host_new, keel_plugin, keel_plugin_free};
use keel::ffi::trust::{
    keel_host_set_require_signature, keel_host_set_trust_store_bytes, keel_host_set_trust_store_file, keel_verify,
};
use keel::keel_status::{self, *};
use keel::trust::{self, signature, store, Authenticity, KeelSignature, TrustState};

use common::capi::last_error;

// ---------------------------------------------------------------------------------------------
// Helpers

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn t(s: &str) -> SystemTime {
    humantime::parse_rfc3339(s).unwrap()
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// A trust-store key entry for `k` with extra fields merged in.
fn entry(k: &SigningKey, label: &str, extra: Value) -> Value {
    let mut e = store::key_entry(&k.verifying_key(), label, &[]).unwrap();
    if let Value::Object(extra) = extra {
        for (name, v) in extra {
            e[name] = v;
        }
    }
    e
}

fn store_doc(version: u64, keys: Vec<Value>) -> Vec<u8> {
    serde_json::to_vec_pretty(&json!({"keel_trust_store": 1, "version": version, "keys": keys})).unwrap()
}

/// A plugin directory with a fake binary (bytes only: nothing here runs it) and a manifest.
struct Plugin {
    dir: PathBuf,
    manifest: PathBuf,
    name: String,
}

impl Plugin {
    fn new(tag: &str, name: &str) -> Plugin {
        let dir = common::tempdir(tag);
        let bin = dir.join(format!("lib{name}.so"));
        std::fs::write(&bin, format!("not really an ELF file of {name}")).unwrap();
        let manifest = common::write_manifest(&dir, name, "1.0.0", &bin, json!({}));
        Plugin {
            dir,
            manifest,
            name: name.to_string(),
        }
    }

    fn bytes(&self) -> Vec<u8> {
        std::fs::read(&self.manifest).unwrap()
    }

    fn sign(&self, k: &SigningKey, comment: &str) {
        let sig = KeelSignature::sign(k, &self.bytes(), comment).unwrap();
        trust::write_signature_file(&self.manifest, &sig).unwrap();
    }

    fn sig_path(&self) -> PathBuf {
        trust::signature_path(&self.manifest)
    }

    fn write_sig(&self, text: &[u8]) {
        std::fs::write(self.sig_path(), text).unwrap();
    }

    fn verify_at(&self, ts: &TrustState, now: SystemTime) -> keel::Result<trust::TrustReport> {
        ts.verify_at(&self.manifest, &self.bytes(), &self.name, now)
    }

    fn verify(&self, ts: &TrustState) -> keel::Result<trust::TrustReport> {
        ts.verify_manifest(&self.manifest, &self.bytes(), &self.name)
    }
}

fn trust_with(keys: Vec<Value>) -> TrustState {
    let ts = TrustState::new();
    ts.set_trust_store_bytes(&store_doc(1, keys)).unwrap();
    ts
}

fn code<T: std::fmt::Debug>(r: keel::Result<T>) -> keel_status {
    r.unwrap_err().status()
}

const NOW: &str = "2026-06-15T12:00:00Z";

// ---------------------------------------------------------------------------------------------
// RFC 8032 section 7.1, TEST 1, TEST 2, TEST 3 (Ed25519): (secret key, public key, message,
// signature), typed in from the RFC.

const RFC8032: [(&str, &str, &str, &str); 3] = [
    (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
    (
        "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
    ),
];

fn hex32(s: &str) -> [u8; 32] {
    hex::decode(s).unwrap().try_into().unwrap()
}

#[test]
fn rfc8032_test_vectors() {
    for (i, (sk, pk, msg, sig)) in RFC8032.iter().enumerate() {
        let signing = SigningKey::from_bytes(&hex32(sk));
        assert_eq!(
            hex::encode(signing.verifying_key().as_bytes()),
            *pk,
            "TEST {}: public key",
            i + 1
        );
        let msg = hex::decode(msg).unwrap();
        let produced = signing.sign(&msg);
        assert_eq!(hex::encode(produced.to_bytes()), *sig, "TEST {}: signature", i + 1);
        let vk = VerifyingKey::from_bytes(&hex32(pk)).unwrap();
        let expected = Signature::from_bytes(&hex::decode(sig).unwrap().try_into().unwrap());
        vk.verify_strict(&msg, &expected).unwrap();
        // One flipped bit in the message or the signature breaks it.
        let mut bad_msg = msg.clone();
        bad_msg.push(0);
        assert!(
            vk.verify_strict(&bad_msg, &expected).is_err(),
            "TEST {}: longer message",
            i + 1
        );
        let mut bad_sig = expected.to_bytes();
        bad_sig[10] ^= 1;
        assert!(
            vk.verify_strict(&msg, &Signature::from_bytes(&bad_sig)).is_err(),
            "TEST {}: bad sig",
            i + 1
        );
        // The key id is the SHA-256 of the raw public key.
        assert_eq!(signature::key_id(&vk), keel::trust::digest::sha256(&hex32(pk)));
    }
}

#[test]
fn keel_signature_with_rfc8032_key_verifies_only_over_the_domain_separated_message() {
    let signing = SigningKey::from_bytes(&hex32(RFC8032[0].0));
    let p = Plugin::new("trust-rfc-key", "rfckey");
    let ts = trust_with(vec![entry(&signing, "rfc test 1", json!({}))]);
    p.sign(&signing, "");
    assert!(matches!(
        p.verify(&ts).unwrap().authenticity,
        Authenticity::Signed { .. }
    ));

    // A plain Ed25519 signature over the manifest bytes (no Keel prefix) is not a Keel
    // signature: it fails as a bad signature.
    let plain = signing.sign(&p.bytes());
    let forged = KeelSignature {
        key_id: signature::key_id(&signing.verifying_key()),
        signature: plain,
        comment: String::new(),
    };
    p.write_sig(forged.to_file_text().as_bytes());
    assert_eq!(code(p.verify(&ts)), KEEL_ERR_BAD_SIGNATURE);
}

// ---------------------------------------------------------------------------------------------
// One code per cause, through the Rust API.

#[test]
fn every_cause_has_its_own_code_rust_api() {
    let now = t(NOW);
    let good = key(1);
    let p = Plugin::new("trust-causes", "acme-db");

    // ok
    let ts = trust_with(vec![entry(&good, "good", json!({"allowed_plugins": ["acme-*"]}))]);
    p.sign(&good, "release");
    let r = p.verify_at(&ts, now).unwrap();
    assert_eq!(r.checked_at, now);
    assert_eq!(r.store_version, 1);
    match &r.authenticity {
        Authenticity::Signed {
            key_id,
            key_label,
            comment,
        } => {
            assert_eq!(
                key_id,
                &signature::key_id_hex(&signature::key_id(&good.verifying_key()))
            );
            assert_eq!(key_label, "good");
            assert_eq!(comment, "release");
        }
        other => panic!("expected signed, got {other:?}"),
    }

    // 401 no signature
    std::fs::remove_file(p.sig_path()).unwrap();
    assert_eq!(code(p.verify_at(&ts, now)), KEEL_ERR_NO_SIGNATURE);

    // 402 malformed: garbage, wrong version, wrong algorithm, short signature, bad key id
    for bad in [
        b"garbage".to_vec(),
        br#"{"keel_signature":2,"algorithm":"ed25519","key_id":"00","signature":""}"#.to_vec(),
        format!(
            r#"{{"keel_signature":1,"algorithm":"rsa","key_id":"{}","signature":"AAAA"}}"#,
            "0".repeat(64)
        )
        .into_bytes(),
        format!(
            r#"{{"keel_signature":1,"algorithm":"ed25519","key_id":"{}","signature":"AAAA"}}"#,
            "0".repeat(64)
        )
        .into_bytes(),
        br#"{"keel_signature":1,"algorithm":"ed25519","key_id":"XYZ","signature":"AAAA"}"#.to_vec(),
    ] {
        p.write_sig(&bad);
        assert_eq!(
            code(p.verify_at(&ts, now)),
            KEEL_ERR_MALFORMED_SIGNATURE,
            "{}",
            String::from_utf8_lossy(&bad)
        );
    }

    // 403 unknown key
    p.sign(&key(2), "");
    assert_eq!(code(p.verify_at(&ts, now)), KEEL_ERR_UNKNOWN_KEY);

    // 404 not yet valid / 405 expired (bounds inclusive, one captured time)
    p.sign(&good, "");
    let ts = trust_with(vec![entry(
        &good,
        "windowed",
        json!({"not_before": "2026-01-01T00:00:00Z", "not_after": "2026-12-31T23:59:59Z"}),
    )]);
    assert_eq!(
        code(p.verify_at(&ts, t("2025-12-31T23:59:59Z"))),
        KEEL_ERR_KEY_NOT_YET_VALID
    );
    p.verify_at(&ts, t("2026-01-01T00:00:00Z")).unwrap();
    p.verify_at(&ts, t("2026-12-31T23:59:59Z")).unwrap();
    assert_eq!(code(p.verify_at(&ts, t("2027-01-01T00:00:00Z"))), KEEL_ERR_KEY_EXPIRED);

    // 406 revoked
    let ts = trust_with(vec![entry(
        &good,
        "",
        json!({"revoked": {"at": "2026-03-01T00:00:00Z", "reason": "leak"}}),
    )]);
    let e = p.verify_at(&ts, now).unwrap_err();
    assert_eq!(e.status(), KEEL_ERR_KEY_REVOKED);
    assert!(e.message().contains("leak"), "{e}");

    // 407 not allowed for this plugin name
    let ts = trust_with(vec![entry(&good, "", json!({"allowed_plugins": ["other-*", "x?"]}))]);
    assert_eq!(code(p.verify_at(&ts, now)), KEEL_ERR_KEY_NOT_ALLOWED);
    let ts = trust_with(vec![entry(&good, "", json!({"allowed_plugins": []}))]);
    assert_eq!(code(p.verify_at(&ts, now)), KEEL_ERR_KEY_NOT_ALLOWED);

    // 408 bad signature: manifest bytes differ from what was signed
    let ts = trust_with(vec![entry(&good, "", json!({}))]);
    assert_eq!(
        code(ts.verify_at(&p.manifest, b"{}", &p.name, now)),
        KEEL_ERR_BAD_SIGNATURE
    );

    // 412 hash-only .sig while signatures are required; 400 when allowed but the hash is wrong
    p.write_sig(format!("{}\n", keel::trust::digest::sha256_hex(&p.bytes())).as_bytes());
    assert_eq!(code(p.verify_at(&ts, now)), KEEL_ERR_HASH_ONLY_SIGNATURE);
    ts.set_require_signature(false).unwrap();
    assert_eq!(p.verify_at(&ts, now).unwrap().authenticity, Authenticity::HashOnly);
    p.write_sig(format!("{}\n", keel::trust::digest::sha256_hex(b"another manifest")).as_bytes());
    assert_eq!(code(p.verify_at(&ts, now)), KEEL_ERR_DIGEST_MISMATCH);

    // 409 malformed store, 410 rollback, 411 downgrade
    assert_eq!(
        code(ts.set_trust_store_bytes(b"{\"keel_trust_store\":1}")),
        KEEL_ERR_TRUST_STORE_MALFORMED
    );
    assert_eq!(
        code(ts.set_trust_store_bytes(&store_doc(0, vec![]))),
        KEEL_ERR_TRUST_STORE_ROLLBACK
    );
    ts.mark_started();
    ts.set_require_signature(true).unwrap();
    assert_eq!(code(ts.set_require_signature(false)), KEEL_ERR_POLICY_DOWNGRADE);

    // 400 digest mismatch of the binary (verify_plugin checks manifest, signature and binary)
    let ts = trust_with(vec![entry(&good, "", json!({}))]);
    p.sign(&good, "");
    ts.verify_plugin(&p.manifest).unwrap();
    std::fs::write(p.dir.join("libacme-db.so"), b"swapped binary").unwrap();
    assert_eq!(code(ts.verify_plugin(&p.manifest)), KEEL_ERR_DIGEST_MISMATCH);
}

#[test]
fn check_order_is_malformed_unknown_revoked_validity_name_signature() {
    let now = t(NOW);
    let k = key(3);
    let p = Plugin::new("trust-order", "vendor-a");
    // A key that is revoked, expired, not yet valid (impossible window aside), not allowed for
    // this name, and whose signature does not match: revocation is reported.
    p.sign(&k, "");
    let ts = trust_with(vec![entry(
        &k,
        "",
        json!({
            "revoked": {"at": "2030-01-01T00:00:00Z"},
            "not_after": "2020-01-01T00:00:00Z",
            "allowed_plugins": ["vendor-b"],
        }),
    )]);
    assert_eq!(
        code(ts.verify_at(&p.manifest, b"edited", &p.name, now)),
        KEEL_ERR_KEY_REVOKED
    );
    // Not revoked: not-yet-valid beats expiry's absence, name and signature.
    let ts = trust_with(vec![entry(
        &k,
        "",
        json!({"not_before": "2030-01-01T00:00:00Z", "allowed_plugins": ["b"]}),
    )]);
    assert_eq!(
        code(ts.verify_at(&p.manifest, b"edited", &p.name, now)),
        KEEL_ERR_KEY_NOT_YET_VALID
    );
    // Expired beats name and signature.
    let ts = trust_with(vec![entry(
        &k,
        "",
        json!({"not_after": "2020-01-01T00:00:00Z", "allowed_plugins": ["b"]}),
    )]);
    assert_eq!(
        code(ts.verify_at(&p.manifest, b"edited", &p.name, now)),
        KEEL_ERR_KEY_EXPIRED
    );
    // Name beats signature.
    let ts = trust_with(vec![entry(&k, "", json!({"allowed_plugins": ["b"]}))]);
    assert_eq!(
        code(ts.verify_at(&p.manifest, b"edited", &p.name, now)),
        KEEL_ERR_KEY_NOT_ALLOWED
    );
    // Malformed beats a missing key.
    p.write_sig(b"{\"keel_signature\":1}");
    assert_eq!(code(p.verify_at(&TrustState::new(), now)), KEEL_ERR_MALFORMED_SIGNATURE);
}

// ---------------------------------------------------------------------------------------------
// Scenarios from the issue.

#[test]
fn signature_made_for_plugin_a_is_rejected_for_plugin_b() {
    let vendor = key(4);
    let a = Plugin::new("trust-a", "acme-search");
    let b = Plugin::new("trust-b", "rival-cache");

    // The vendor key may only sign acme-* plugins: its signature on B's manifest is refused.
    let ts = trust_with(vec![entry(&vendor, "acme", json!({"allowed_plugins": ["acme-*"]}))]);
    a.sign(&vendor, "");
    b.sign(&vendor, "");
    a.verify(&ts).unwrap();
    let e = b.verify(&ts).unwrap_err();
    assert_eq!(e.status(), KEEL_ERR_KEY_NOT_ALLOWED);
    assert!(
        e.message().contains("rival-cache") && e.message().contains("acme-*"),
        "{e}"
    );

    // Even an unrestricted key's signature does not transfer: A's .sig copied next to B's
    // manifest does not verify over B's bytes.
    let ts = trust_with(vec![entry(&vendor, "any", json!({}))]);
    std::fs::copy(a.sig_path(), b.sig_path()).unwrap();
    assert_eq!(code(b.verify(&ts)), KEEL_ERR_BAD_SIGNATURE);
    a.verify(&ts).unwrap();
}

#[test]
fn revoked_key_fails_even_when_otherwise_valid() {
    let k = key(5);
    let p = Plugin::new("trust-revoked", "good-plugin");
    p.sign(&k, "");
    let now = SystemTime::now();
    let valid = json!({
        "not_before": rfc3339(now - Duration::from_secs(86400)),
        "not_after": rfc3339(now + Duration::from_secs(86400)),
        "allowed_plugins": ["good-*"],
    });
    let ts = TrustState::new();
    ts.set_trust_store_bytes(&store_doc(1, vec![entry(&k, "", valid.clone())]))
        .unwrap();
    p.verify(&ts).unwrap();

    // Revoked with a revocation time in the future: revoked now all the same.
    let mut revoked = valid.clone();
    revoked["revoked"] = json!({"at": rfc3339(now + Duration::from_secs(3600)), "reason": "key compromised"});
    ts.set_trust_store_bytes(&store_doc(2, vec![entry(&k, "", revoked)]))
        .unwrap();
    let e = p.verify(&ts).unwrap_err();
    assert_eq!(e.status(), KEEL_ERR_KEY_REVOKED);
    assert!(e.message().contains("key compromised"), "{e}");

    // Allowing unsigned plugins does not make a revoked signature acceptable.
    let ts2 = TrustState::new();
    ts2.set_require_signature(false).unwrap();
    ts2.set_trust_store_bytes(&store_doc(2, vec![entry(&k, "", json!({"revoked": {"at": NOW}}))]))
        .unwrap();
    assert_eq!(code(p.verify(&ts2)), KEEL_ERR_KEY_REVOKED);
}

#[test]
fn manifest_edit_requires_resigning() {
    let k = key(6);
    let p = Plugin::new("trust-edit", "editable");
    let ts = trust_with(vec![entry(&k, "", json!({}))]);
    p.sign(&k, "v1");
    p.verify(&ts).unwrap();

    // Any byte change, even whitespace, invalidates the signature.
    let mut bytes = p.bytes();
    bytes.push(b'\n');
    std::fs::write(&p.manifest, &bytes).unwrap();
    assert_eq!(code(p.verify(&ts)), KEEL_ERR_BAD_SIGNATURE);

    // A semantic edit (pin a new binary) too.
    let mut v: Value = serde_json::from_slice(&bytes).unwrap();
    v["sha256"] = Value::from("ab".repeat(32));
    std::fs::write(&p.manifest, serde_json::to_vec(&v).unwrap()).unwrap();
    assert_eq!(code(p.verify(&ts)), KEEL_ERR_BAD_SIGNATURE);

    // Re-signing makes it valid again.
    p.sign(&k, "v2");
    p.verify(&ts).unwrap();

    // The comment is covered: editing it in the .sig breaks the signature.
    let text = std::fs::read_to_string(p.sig_path())
        .unwrap()
        .replace("\"v2\"", "\"v3\"");
    p.write_sig(text.as_bytes());
    assert_eq!(code(p.verify(&ts)), KEEL_ERR_BAD_SIGNATURE);
}

#[test]
fn trust_store_rollback_is_refused_and_keeps_the_current_store() {
    let (k1, k2) = (key(7), key(8));
    let p = Plugin::new("trust-rollback", "rolled");
    p.sign(&k2, "");
    let ts = TrustState::new();
    let v1 = store_doc(1, vec![entry(&k1, "", json!({}))]);
    let v2 = store_doc(2, vec![entry(&k1, "", json!({})), entry(&k2, "", json!({}))]);
    assert_eq!(ts.set_trust_store_bytes(&v2).unwrap(), 2);
    p.verify(&ts).unwrap();

    assert_eq!(code(ts.set_trust_store_bytes(&v1)), KEEL_ERR_TRUST_STORE_ROLLBACK);
    assert_eq!(ts.store().version(), 2);
    p.verify(&ts).unwrap();

    // Same version: identical content (formatting aside) is a no-op; different content refused.
    let v2_compact: Value = serde_json::from_slice(&v2).unwrap();
    ts.set_trust_store_bytes(&serde_json::to_vec(&v2_compact).unwrap())
        .unwrap();
    let v2_edited = store_doc(2, vec![entry(&k1, "", json!({}))]);
    assert_eq!(
        code(ts.set_trust_store_bytes(&v2_edited)),
        KEEL_ERR_TRUST_STORE_ROLLBACK
    );
    p.verify(&ts).unwrap();

    // A malformed store leaves the current one in use too.
    assert_eq!(
        code(ts.set_trust_store_bytes(b"not json")),
        KEEL_ERR_TRUST_STORE_MALFORMED
    );
    p.verify(&ts).unwrap();

    // Moving forward works, and a revocation in v3 takes effect immediately.
    let v3 = store_doc(3, vec![entry(&k2, "", json!({"revoked": {"at": NOW}}))]);
    ts.set_trust_store_bytes(&v3).unwrap();
    assert_eq!(code(p.verify(&ts)), KEEL_ERR_KEY_REVOKED);

    // From a file: missing file has its own code and changes nothing.
    assert_eq!(
        code(ts.set_trust_store_path(&p.dir.join("missing.json"))),
        KEEL_ERR_FILE_NOT_FOUND
    );
    assert_eq!(ts.store().version(), 3);
}

#[test]
fn trust_store_validation() {
    let k = key(9);
    let mut wrong_id = entry(&k, "", json!({}));
    wrong_id["id"] = Value::from("0".repeat(64));
    let mut upper = entry(&k, "", json!({}));
    upper["id"] = Value::from(upper["id"].as_str().unwrap().to_uppercase());
    let mut hex_key = entry(&k, "", json!({}));
    hex_key["public_key"] = Value::from(hex::encode(k.verifying_key().as_bytes()));
    for (what, doc) in [
        (
            "duplicate ids",
            store_doc(1, vec![entry(&k, "a", json!({})), entry(&k, "b", json!({}))]),
        ),
        ("id is not the key's hash", store_doc(1, vec![wrong_id])),
        ("upper-case id", store_doc(1, vec![upper])),
        ("hex instead of base64 key", store_doc(1, vec![hex_key])),
        (
            "unknown field",
            store_doc(1, vec![entry(&k, "", json!({"not_afer": NOW}))]),
        ),
        (
            "bad time",
            store_doc(1, vec![entry(&k, "", json!({"not_after": "2026-13-01T00:00:00Z"}))]),
        ),
        (
            "offset time",
            store_doc(
                1,
                vec![entry(&k, "", json!({"not_after": "2026-01-01T00:00:00+02:00"}))],
            ),
        ),
        (
            "revoked without at",
            store_doc(1, vec![entry(&k, "", json!({"revoked": {"reason": "x"}}))]),
        ),
        (
            "bad pattern",
            store_doc(1, vec![entry(&k, "", json!({"allowed_plugins": ["[a-"]}))]),
        ),
        ("missing keys", br#"{"keel_trust_store":1,"version":1}"#.to_vec()),
        (
            "wrong format version",
            br#"{"keel_trust_store":9,"version":1,"keys":[]}"#.to_vec(),
        ),
    ] {
        let e = TrustState::new().set_trust_store_bytes(&doc).unwrap_err();
        assert_eq!(e.status(), KEEL_ERR_TRUST_STORE_MALFORMED, "{what}: {e}");
    }
}

#[test]
fn policy_downgrade_is_refused_after_start() {
    let p = Plugin::new("trust-policy", "unsigned-one");
    let ts = TrustState::new();
    assert!(ts.policy().require_signature, "signatures are required by default");
    assert_eq!(code(p.verify(&ts)), KEEL_ERR_NO_SIGNATURE);

    ts.set_require_signature(false).unwrap();
    assert_eq!(p.verify(&ts).unwrap().authenticity, Authenticity::Unsigned);
    ts.mark_started();
    ts.set_require_signature(false).unwrap(); // unchanged: not a downgrade
    ts.set_require_signature(true).unwrap();
    assert_eq!(code(ts.set_require_signature(false)), KEEL_ERR_POLICY_DOWNGRADE);
    assert!(ts.policy().require_signature);
    assert_eq!(code(p.verify(&ts)), KEEL_ERR_NO_SIGNATURE);
}

#[test]
fn allowing_unsigned_never_skips_digest_or_a_present_signature() {
    let p = Plugin::new("trust-unsigned", "lax");
    let ts = TrustState::new();
    ts.set_require_signature(false).unwrap();
    ts.verify_plugin(&p.manifest).unwrap();
    std::fs::write(p.dir.join("liblax.so"), b"tampered").unwrap();
    assert_eq!(code(ts.verify_plugin(&p.manifest)), KEEL_ERR_DIGEST_MISMATCH);

    // A signature that is present is checked: unknown key, not "fall back to unsigned".
    let q = Plugin::new("trust-unsigned2", "lax2");
    q.sign(&key(10), "");
    assert_eq!(code(q.verify(&ts)), KEEL_ERR_UNKNOWN_KEY);
    q.write_sig(b"{ broken");
    assert_eq!(code(q.verify(&ts)), KEEL_ERR_MALFORMED_SIGNATURE);
}

#[test]
fn concurrent_verification_during_store_swaps_sees_whole_stores() {
    let (k1, k2) = (key(11), key(12));
    let p = Plugin::new("trust-concurrent", "busy");
    p.sign(&k1, "");
    let ts = std::sync::Arc::new(trust_with(vec![entry(&k1, "", json!({}))]));
    let bytes = p.bytes();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (ts, stop, manifest, bytes) = (ts.clone(), stop.clone(), p.manifest.clone(), bytes.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) || n == 0 {
                    // Odd versions trust k1, even versions only k2: a verification sees one or
                    // the other, never an error other than "unknown key".
                    match ts.verify_manifest(&manifest, &bytes, "busy") {
                        Ok(r) => assert_eq!(r.store_version % 2, 1),
                        Err(e) => assert_eq!(e.status(), KEEL_ERR_UNKNOWN_KEY, "{e}"),
                    }
                    n += 1;
                }
                n
            })
        })
        .collect();
    for v in 2..200u64 {
        let k = if v % 2 == 1 { &k1 } else { &k2 };
        ts.set_trust_store_bytes(&store_doc(v, vec![entry(k, "", json!({}))]))
            .unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        assert!(r.join().unwrap() > 0);
    }
    assert_eq!(ts.store().version(), 199);
}

// ---------------------------------------------------------------------------------------------
// The same causes through the C ABI.

struct CHost(*mut keel_host);

impl CHost {
    fn new() -> CHost {
        let mut h = ptr::null_mut();
        assert_eq!(keel_host_new(&mut h), KEEL_OK);
        CHost(h)
    }
    fn set_store(&self, doc: &[u8]) -> keel_status {
        keel_host_set_trust_store_bytes(self.0, doc.as_ptr(), doc.len())
    }
    fn verify(&self, manifest: &Path) -> keel_status {
        let c = CString::new(manifest.to_str().unwrap()).unwrap();
        keel_verify(self.0, c.as_ptr())
    }
    /// Verify and check the code and that the last error names the cause.
    fn expect(&self, manifest: &Path, status: keel_status) {
        assert_eq!(self.verify(manifest), status, "{}", last_error());
        if status != KEEL_OK {
            assert!(last_error().contains(status.name()), "{}", last_error());
        }
    }
}

impl Drop for CHost {
    fn drop(&mut self) {
        assert_eq!(keel_host_free(self.0), KEEL_OK);
    }
}

#[test]
fn every_cause_has_its_own_code_c_abi() {
    let good = key(13);
    let h = CHost::new();
    let p = Plugin::new("trust-c", "c-plugin");

    // 401 no signature (policy requires one by default)
    h.expect(&p.manifest, KEEL_ERR_NO_SIGNATURE);
    // 403 unknown key (no store yet)
    p.sign(&good, "");
    h.expect(&p.manifest, KEEL_ERR_UNKNOWN_KEY);
    // ok
    assert_eq!(h.set_store(&store_doc(1, vec![entry(&good, "", json!({}))])), KEEL_OK);
    h.expect(&p.manifest, KEEL_OK);
    // 402 malformed
    p.write_sig(b"{\"keel_signature\": \"one\"}");
    h.expect(&p.manifest, KEEL_ERR_MALFORMED_SIGNATURE);
    p.sign(&good, "");
    // 404 not yet valid
    assert_eq!(
        h.set_store(&store_doc(
            2,
            vec![entry(&good, "", json!({"not_before": "2999-01-01T00:00:00Z"}))]
        )),
        KEEL_OK
    );
    h.expect(&p.manifest, KEEL_ERR_KEY_NOT_YET_VALID);
    // 405 expired
    assert_eq!(
        h.set_store(&store_doc(
            3,
            vec![entry(&good, "", json!({"not_after": "2000-01-01T00:00:00Z"}))]
        )),
        KEEL_OK
    );
    h.expect(&p.manifest, KEEL_ERR_KEY_EXPIRED);
    // 406 revoked
    assert_eq!(
        h.set_store(&store_doc(
            4,
            vec![entry(&good, "", json!({"revoked": {"at": NOW, "reason": "test"}}))]
        )),
        KEEL_OK
    );
    h.expect(&p.manifest, KEEL_ERR_KEY_REVOKED);
    // 407 not allowed
    assert_eq!(
        h.set_store(&store_doc(
            5,
            vec![entry(&good, "", json!({"allowed_plugins": ["d-*"]}))]
        )),
        KEEL_OK
    );
    h.expect(&p.manifest, KEEL_ERR_KEY_NOT_ALLOWED);
    // 408 bad signature: manifest edited after signing
    assert_eq!(h.set_store(&store_doc(6, vec![entry(&good, "", json!({}))])), KEEL_OK);
    h.expect(&p.manifest, KEEL_OK);
    let mut edited = p.bytes();
    edited.extend_from_slice(b" ");
    std::fs::write(&p.manifest, &edited).unwrap();
    h.expect(&p.manifest, KEEL_ERR_BAD_SIGNATURE);
    // 412 hash-only .sig while signatures are required
    p.write_sig(keel::trust::digest::sha256_hex(&edited).as_bytes());
    h.expect(&p.manifest, KEEL_ERR_HASH_ONLY_SIGNATURE);
    // 400 digest mismatch (signed manifest, swapped binary)
    p.sign(&good, "");
    h.expect(&p.manifest, KEEL_OK);
    std::fs::write(p.dir.join("libc-plugin.so"), b"swapped").unwrap();
    h.expect(&p.manifest, KEEL_ERR_DIGEST_MISMATCH);
    // 409 malformed store, 410 rollback (from bytes and from a file)
    assert_eq!(h.set_store(b"[]"), KEEL_ERR_TRUST_STORE_MALFORMED);
    assert!(last_error().contains("KEEL_ERR_TRUST_STORE_MALFORMED"));
    assert_eq!(h.set_store(&store_doc(5, vec![])), KEEL_ERR_TRUST_STORE_ROLLBACK);
    let old = p.dir.join("old-store.json");
    std::fs::write(&old, store_doc(1, vec![])).unwrap();
    let c_old = CString::new(old.to_str().unwrap()).unwrap();
    assert_eq!(
        keel_host_set_trust_store_file(h.0, c_old.as_ptr()),
        KEEL_ERR_TRUST_STORE_ROLLBACK
    );
    let newer = p.dir.join("new-store.json");
    std::fs::write(&newer, store_doc(7, vec![entry(&good, "", json!({}))])).unwrap();
    let c_new = CString::new(newer.to_str().unwrap()).unwrap();
    assert_eq!(keel_host_set_trust_store_file(h.0, c_new.as_ptr()), KEEL_OK);
    let missing = CString::new(p.dir.join("nope.json").to_str().unwrap()).unwrap();
    assert_eq!(
        keel_host_set_trust_store_file(h.0, missing.as_ptr()),
        KEEL_ERR_FILE_NOT_FOUND
    );
    // Manifest problems keep their own codes through keel_verify.
    std::fs::write(&p.manifest, b"{ not json").unwrap();
    h.expect(&p.manifest, KEEL_ERR_MANIFEST_PARSE);
    h.expect(&p.dir.join("no-such-manifest.json"), KEEL_ERR_FILE_NOT_FOUND);
}

#[test]
fn c_abi_policy_and_hash_only_with_unsigned_allowed() {
    let h = CHost::new();
    let p = Plugin::new("trust-c-policy", "themis-style");
    assert_eq!(keel_host_set_require_signature(h.0, false), KEEL_OK);
    h.expect(&p.manifest, KEEL_OK); // unsigned, allowed
    p.write_sig(format!("{}\n", keel::trust::digest::sha256_hex(&p.bytes())).as_bytes());
    h.expect(&p.manifest, KEEL_OK); // ThemisDB hash .sig, matches
    p.write_sig(format!("{}\n", keel::trust::digest::sha256_hex(b"other")).as_bytes());
    h.expect(&p.manifest, KEEL_ERR_DIGEST_MISMATCH);
    // keel_verify does not start the host: the policy can still be changed both ways.
    assert_eq!(keel_host_set_require_signature(h.0, true), KEEL_OK);
    assert_eq!(keel_host_set_require_signature(h.0, false), KEEL_OK);
    // A load (even a failing one) starts the host; from then on only strengthening works.
    let c = CString::new(p.manifest.to_str().unwrap()).unwrap();
    let mut plugin: *mut keel_plugin = ptr::null_mut();
    assert_eq!(keel_host_load(h.0, c.as_ptr(), &mut plugin), KEEL_ERR_DIGEST_MISMATCH);
    assert_eq!(keel_host_set_require_signature(h.0, true), KEEL_OK);
    assert_eq!(keel_host_set_require_signature(h.0, false), KEEL_ERR_POLICY_DOWNGRADE);
    assert!(last_error().contains("KEEL_ERR_POLICY_DOWNGRADE"));
}

#[test]
fn c_abi_bad_arguments() {
    let h = CHost::new();
    let ok = CString::new("x").unwrap();
    assert_eq!(keel_verify(ptr::null(), ok.as_ptr()), KEEL_ERR_NULL_POINTER);
    assert_eq!(keel_verify(h.0, ptr::null()), KEEL_ERR_NULL_POINTER);
    assert_eq!(keel_host_set_trust_store_file(h.0, ptr::null()), KEEL_ERR_NULL_POINTER);
    assert_eq!(
        keel_host_set_trust_store_file(ptr::null(), ok.as_ptr()),
        KEEL_ERR_NULL_POINTER
    );
    assert_eq!(
        keel_host_set_trust_store_bytes(h.0, ptr::null(), 10),
        KEEL_ERR_NULL_POINTER
    );
    assert_eq!(
        keel_host_set_trust_store_bytes(ptr::null(), ptr::null(), 0),
        KEEL_ERR_NULL_POINTER
    );
    assert_eq!(
        keel_host_set_require_signature(ptr::null(), true),
        KEEL_ERR_NULL_POINTER
    );
    // (NULL, 0) is the empty document: malformed, not a null-pointer error.
    assert_eq!(
        keel_host_set_trust_store_bytes(h.0, ptr::null(), 0),
        KEEL_ERR_TRUST_STORE_MALFORMED
    );
    let bad_utf8 = CString::new(vec![0x66u8, 0xff, 0x66]).unwrap();
    assert_eq!(keel_verify(h.0, bad_utf8.as_ptr()), KEEL_ERR_INVALID_UTF8);
    assert_eq!(
        keel_host_set_trust_store_file(h.0, bad_utf8.as_ptr()),
        KEEL_ERR_INVALID_UTF8
    );
}

#[test]
fn host_loads_only_signed_native_plugins() {
    let k = key(14);
    let (_dir, manifest) = common::echo_plugin("trust-echo", &[], json!({}));
    let h = CHost::new();
    let c = CString::new(manifest.to_str().unwrap()).unwrap();
    let mut plugin: *mut keel_plugin = ptr::null_mut();

    // Unsigned: refused before any plugin code runs.
    assert_eq!(keel_host_load(h.0, c.as_ptr(), &mut plugin), KEEL_ERR_NO_SIGNATURE);
    // Signed by a trusted key: loads.
    let sig = KeelSignature::sign(&k, &std::fs::read(&manifest).unwrap(), "echo 1.0.0").unwrap();
    trust::write_signature_file(&manifest, &sig).unwrap();
    assert_eq!(
        h.set_store(&store_doc(
            1,
            vec![entry(&k, "echo vendor", json!({"allowed_plugins": ["echo"]}))]
        )),
        KEEL_OK
    );
    assert_eq!(
        keel_host_load(h.0, c.as_ptr(), &mut plugin),
        KEEL_OK,
        "{}",
        last_error()
    );
    assert!(!plugin.is_null());
    assert_eq!(keel_plugin_free(plugin), KEEL_OK);
}
