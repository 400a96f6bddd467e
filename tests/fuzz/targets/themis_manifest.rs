//! ThemisDB `plugin.json`: arbitrary bytes as JSON through the ThemisDB schema and the
//! conversion to a Keel manifest (and through `manifest::parse`, which detects the format).
//! Never a panic; a converted manifest always passes Keel's own checks.
//!
//! Shared by the fuzz target (tests/fuzz/fuzz_targets) and the suite, which replays the
//! checked-in corpus through it (tests/suite/fuzz_corpus.rs).

use keel::manifest::{self, themis};

/// One input: never panics; the invariants below hold.
pub fn run(data: &[u8]) {
    let _ = manifest::parse(data);
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        // Also feed the text helpers the raw text.
        if let Ok(s) = std::str::from_utf8(data) {
            let _ = themis::is_valid_plugin_name(s);
            let _ = themis::is_library_name(s);
            let _ = themis::themis_requirement(s);
        }
        return;
    };
    let _ = themis::validate_themis_schema(&value);
    if let Ok(conv) = themis::convert_with_notes(&value) {
        let m = &conv.manifest;
        if let Err(e) = m.check_consistency() {
            panic!("a converted ThemisDB manifest fails Keel's consistency check: {e}");
        }
        let mut v = serde_json::to_value(m).expect("a manifest serialises");
        if m.is_unpinned() {
            // A ThemisDB manifest without `expected_hash` is valid (loading it is a policy
            // question); Keel's own format always pins, so only the pin may be what is missing.
            assert!(
                v.get("sha256").is_none_or(|p| p.is_null()),
                "an unpinned manifest with a pin: {v}"
            );
            v["sha256"] = serde_json::json!("0".repeat(64));
        }
        if let Err(e) = manifest::validate_keel_schema(&v) {
            panic!("a converted ThemisDB manifest violates Keel's schema: {e}");
        }
    }
}
