//! Trust-store parser: arbitrary bytes through `TrustStore::from_bytes` and
//! `TrustState::set_trust_store_bytes` (which must agree), and every key of a store that
//! parses through the checks a verification runs.
//!
//! Shared by the fuzz target (tests/fuzz/fuzz_targets) and the suite, which replays the
//! checked-in corpus through it (tests/suite/fuzz_corpus.rs).

use std::time::{Duration, SystemTime};

use keel::trust::store::TrustStore;
use keel::trust::TrustState;

/// One input: never panics; the invariants below hold.
pub fn run(data: &[u8]) {
    let parsed = TrustStore::from_bytes(data);
    let state = TrustState::new();
    let installed = state.set_trust_store_bytes(data);
    match (&parsed, &installed) {
        (Ok(s), Ok(v)) => assert_eq!(s.version(), *v),
        (Err(a), Err(b)) => assert_eq!(a.status(), b.status()),
        // A well-formed store the state refuses (e.g. version 0, not newer than the empty
        // store's): never for being malformed.
        (Ok(_), Err(b)) => assert_ne!(b.status(), keel::keel_status::KEEL_ERR_TRUST_STORE_MALFORMED, "{b}"),
        (Err(_), Ok(_)) => panic!("set_trust_store_bytes accepted a store from_bytes refuses: {parsed:?}"),
    }
    if let Ok(store) = parsed {
        assert!(store.same_content(&store));
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_780_000_000);
        for k in store.keys() {
            let _ = k.describe();
            let _ = k.id_hex();
            for name in ["echo", "a", "vendor-plugin", ""] {
                let _ = k.check_usable(name, now);
            }
            assert!(store.get(&k.id).is_some());
        }
    }
}
