//! Keel manifest parser: arbitrary bytes through `keel::manifest::parse` (format detection,
//! duplicate keys, schema, typed view, consistency) and, for a manifest that parses, the
//! accessors the load path uses next. Never a panic; a document refused for duplicate keys
//! is never accepted by the parser.
//!
//! Shared by the fuzz target (tests/fuzz/fuzz_targets) and the suite, which replays the
//! checked-in corpus through it (tests/suite/fuzz_corpus.rs).

use std::path::Path;

use keel::manifest::{self, ManifestFormat};

/// One input: never panics; the invariants below hold.
pub fn run(data: &[u8]) {
    let parsed = manifest::parse(data);
    if serde_json::from_slice::<serde_json::Value>(data).is_ok() {
        let dup = manifest::check_duplicate_keys(data);
        if dup.is_err() {
            assert!(parsed.is_err(), "a manifest with duplicate keys was accepted");
        }
    }
    if let Ok((format, m)) = parsed {
        assert!(matches!(format, ManifestFormat::Keel | ManifestFormat::ThemisDb));
        // What the load path does with a parsed manifest, before touching any file.
        let _ = m.check_consistency();
        if let Ok(bin) = m.binary_for_platform(Path::new("/nonexistent/plugin-dir")) {
            // A binary path never leaves the manifest's directory.
            assert!(
                !bin.relative.is_absolute(),
                "absolute binary path accepted: {:?}",
                bin.relative
            );
            assert!(
                !bin.relative
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir)),
                "binary path with '..' accepted: {:?}",
                bin.relative
            );
            // A pin, when there is one (an unpinned ThemisDB manifest is valid; loading it is
            // a policy question), is 64 hex digits.
            if let Some(pin) = &bin.sha256 {
                assert!(
                    pin.len() == 64 && pin.bytes().all(|b| b.is_ascii_hexdigit()),
                    "pinned digest is not 64 hex digits: {pin}"
                );
            }
        }
        let cfg = m.config_json();
        assert!(
            serde_json::from_str::<serde_json::Value>(&cfg).is_ok(),
            "config_json is not JSON: {cfg}"
        );
        // A Keel manifest's typed view serialises back to a document the parser accepts.
        if format == ManifestFormat::Keel {
            let v = serde_json::to_value(&m).expect("a manifest serialises");
            if let Err(e) = manifest::parse_keel_value(v) {
                panic!("re-parsing a parsed manifest failed: {e}");
            }
        }
    }
}
