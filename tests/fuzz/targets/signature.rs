//! `.sig` parser: arbitrary bytes through `keel::trust::signature::parse` and the secret-key
//! file parser. A Keel signature that parses round-trips through its file text, and verifying
//! it over a fixed manifest under a fixed key never panics (and never succeeds: the fuzzer
//! does not know the secret key).
//!
//! Shared by the fuzz target (tests/fuzz/fuzz_targets) and the suite, which replays the
//! checked-in corpus through it (tests/suite/fuzz_corpus.rs).

use keel::trust::signature::{self, SignatureFile};

const MANIFEST: &[u8] = br#"{"manifest_version":1,"name":"x","version":"1.0.0"}"#;

/// One input: never panics; the invariants below hold.
pub fn run(data: &[u8]) {
    match signature::parse(data) {
        Ok(SignatureFile::Keel(sig)) => {
            let text = sig.to_file_text();
            match signature::parse(text.as_bytes()) {
                Ok(SignatureFile::Keel(again)) => assert_eq!(again, sig, "round trip changed the signature"),
                other => panic!("a parsed signature's own text does not parse back: {other:?}"),
            }
            let key = ed25519_key();
            assert!(sig.verify(&key, MANIFEST).is_err(), "a fuzzed signature verified");
        }
        Ok(SignatureFile::HashOnly(_)) | Err(_) => {}
    }
    let _ = signature::parse_secret_key_file(data);
}

fn ed25519_key() -> ed25519_dalek::VerifyingKey {
    ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]).verifying_key()
}
