//! ThemisDB `plugin.json` manifests: every shape the compat notes describe, accepted as-is,
//! checked against ThemisDB's rules and converted into Keel manifests.

use std::path::Path;

use keel::keel_status::{self, *};
use keel::manifest::{self, themis, Digests, ManifestFormat, RuntimeKind};
use serde_json::{json, Value};

const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

fn parse(v: &Value) -> keel::Result<(ManifestFormat, manifest::Manifest)> {
    manifest::parse(v.to_string().as_bytes())
}

fn refused(v: &Value) -> keel::Error {
    match parse(v) {
        Ok((_, m)) => panic!("expected a refusal, got {m:?}"),
        Err(e) => e,
    }
}

fn assert_code(e: &keel::Error, code: keel_status) {
    assert_eq!(e.status(), code, "{e}");
}

/// A realistic PostgreSQL importer manifest (array dependencies, one of them a library).
fn postgres() -> Value {
    json!({
        "name": "postgres_importer",
        "version": "1.4.2",
        "type": "importer",
        "description": "Imports pg_dump plain-text and custom-format archives",
        "author": "Example Org",
        "license": "Apache-2.0",
        "homepage": "https://example.org/plugins/postgres",
        "tags": ["postgres", "import", "pg_dump"],
        "category": "data-import",
        "binary": {
            "linux": "libpostgres_importer.so",
            "windows": "postgres_importer.dll",
            "macos": "libpostgres_importer.dylib"
        },
        "dependencies": ["nlohmann/json", "schema_mapper"],
        "capabilities": {
            "streaming": true,
            "batching": true,
            "transactions": false,
            "thread_safe": false,
            "gpu_accelerated": false
        },
        "config_schema": {
            "type": "object",
            "properties": {
                "batch_size": {"type": "integer", "default": 500},
                "target_namespace": {"type": "string", "default": "pg"}
            }
        },
        "supported_formats": ["pg_dump", "postgres"],
        "auto_load": true,
        "load_priority": 40,
        "expected_hash": HASH,
        "visibility": "public",
        "compatible_core_abi": "plugin-abi-v2",
        "min_themisdb_version": "1.3.0"
    })
}

/// A realistic MongoDB importer manifest (object dependencies with minimum versions).
fn mongo() -> Value {
    json!({
        "name": "mongo_importer",
        "version": "2.0.0",
        "type": "importer",
        "description": "Imports mongoexport JSON and NDJSON",
        "binary": {"linux": "mongo_importer.so"},
        "dependencies": {
            "mongo-cxx-driver": ">=3.8.0",
            "json_normalizer": "1.2.0",
            "schema_mapper": ">=1.0.0, <3"
        },
        "capabilities": {"streaming": true, "thread_safe": true, "bulk_upsert": true},
        "expected_hash": HASH.to_uppercase(),
        "auto_load": false,
        "load_priority": 50,
        "visibility": "private",
        "allowed_editions": ["enterprise"],
        "license_feature": "connector_pack"
    })
}

#[test]
fn postgres_like_manifest_with_array_dependencies() {
    let (format, m) = parse(&postgres()).unwrap();
    assert_eq!(format, ManifestFormat::ThemisDb);
    assert_eq!(m.name, "postgres_importer");
    assert_eq!(m.version, semver::Version::new(1, 4, 2));
    assert_eq!(m.runtime, RuntimeKind::Themis);
    assert_eq!(m.plugin_type.as_deref(), Some("importer"));
    assert_eq!(m.binary.len(), 3);
    assert_eq!(m.binary["linux"], "libpostgres_importer.so");
    assert_eq!(m.binary["windows"], "postgres_importer.dll");
    assert_eq!(m.binary["macos"], "libpostgres_importer.dylib");
    // The library is dropped; the array-form name is resolved at load (plugin or library).
    assert!(m.dependencies.is_empty());
    assert_eq!(m.weak_dependencies.iter().collect::<Vec<_>>(), ["schema_mapper"]);
    assert_eq!(m.traits, ["batching", "streaming"]);
    assert!(
        m.capabilities.is_empty(),
        "ThemisDB flags must not become Keel capabilities"
    );
    assert_eq!(m.auto_load, Some(true));
    assert_eq!(m.load_priority, Some(40));
    let schema = m.config_schema.as_ref().unwrap();
    assert_eq!(schema["properties"]["batch_size"]["default"], 500);
    assert!(m.config.is_none());
    assert_eq!(m.config_json(), "{}");
    // One hash, pinned for whichever platform binary gets loaded.
    let Some(Digests::PerPlatform(d)) = &m.sha256 else {
        panic!("{:?}", m.sha256)
    };
    assert!(d.len() == 3 && d.values().all(|h| h == HASH));
    let bin = m.binary_for_platform(Path::new("/plugins/pg")).unwrap();
    assert_eq!(bin.platform, "linux");
    assert_eq!(bin.path, Path::new("/plugins/pg/libpostgres_importer.so"));
    assert_eq!(bin.sha256.as_deref(), Some(HASH));
}

#[test]
fn notes_name_dropped_libraries_and_unapplied_settings() {
    let c = themis::convert_with_notes(&postgres()).unwrap();
    assert!(
        c.notes
            .iter()
            .any(|n| n.contains("'nlohmann/json'") && n.contains("library")),
        "{:?}",
        c.notes
    );
    assert!(
        c.notes.iter().any(|n| n.contains("min_themisdb_version")),
        "{:?}",
        c.notes
    );
    let c = themis::convert_with_notes(&mongo()).unwrap();
    assert!(
        c.notes.iter().any(|n| n.contains("edition/licence gating")),
        "{:?}",
        c.notes
    );
    assert!(
        c.notes.iter().any(|n| n.contains("'mongo-cxx-driver'")),
        "{:?}",
        c.notes
    );
}

#[test]
fn mongo_like_manifest_with_object_dependencies_and_upper_case_hash() {
    let (format, m) = parse(&mongo()).unwrap();
    assert_eq!(format, ManifestFormat::ThemisDb);
    // Bare versions are minimum versions in ThemisDB, not semver's caret default.
    assert_eq!(m.dependencies["json_normalizer"], ">=1.2.0");
    assert_eq!(m.dependencies["schema_mapper"], ">=1.0.0, <3");
    assert!(!m.dependencies.contains_key("mongo-cxx-driver"));
    // Upper-case expected_hash is accepted and compared lower-cased (ThemisDB bug §9.8).
    assert_eq!(m.sha256, Some(Digests::One(HASH.to_string())));
    assert_eq!(
        m.binary_for_platform(Path::new("/p")).unwrap().sha256.as_deref(),
        Some(HASH)
    );
    // Domain-specific flags are kept as traits too; false flags are not.
    assert_eq!(m.traits, ["bulk_upsert", "streaming", "thread_safe"]);
    assert_eq!(m.auto_load, Some(false));
}

#[test]
fn converted_manifest_is_a_valid_keel_manifest() {
    for v in [postgres(), mongo()] {
        let (_, m) = parse(&v).unwrap();
        let keel_json = serde_json::to_vec(&m).unwrap();
        let (format, again) = manifest::parse(&keel_json).unwrap();
        assert_eq!(format, ManifestFormat::Keel);
        // Array-form names still to be resolved at load are not part of a Keel document.
        let mut m = m;
        m.weak_dependencies.clear();
        assert_eq!(again, m);
    }
}

#[test]
fn legacy_library_field() {
    let v = json!({"name": "old_exporter", "library": "libold_exporter.so", "type": 3, "expected_hash": HASH});
    let c = themis::convert_with_notes(&v).unwrap();
    let m = &c.manifest;
    assert_eq!(m.version, semver::Version::new(1, 0, 0));
    assert!(c.notes.iter().any(|n| n.contains("1.0.0 assumed")), "{:?}", c.notes);
    for platform in ["linux", "windows", "macos"] {
        assert_eq!(m.binary[platform], "libold_exporter.so");
    }
    assert_eq!(m.plugin_type.as_deref(), Some("exporter"));
    assert_eq!(
        m.binary_for_platform(Path::new("/x")).unwrap().sha256.as_deref(),
        Some(HASH)
    );
    // Through the format detection too.
    assert_eq!(parse(&v).unwrap().0, ManifestFormat::ThemisDb);
}

#[test]
fn library_fills_only_platforms_binary_does_not_name() {
    let mut v = postgres();
    v["binary"] = json!({"linux": "libnew.so"});
    v["library"] = json!("libold.so");
    let (_, m) = parse(&v).unwrap();
    assert_eq!(m.binary["linux"], "libnew.so");
    assert_eq!(m.binary["windows"], "libold.so");
}

#[test]
fn integer_types_follow_the_current_enum() {
    for (n, name) in [
        (0, "compute_backend"),
        (6, "llm_backend"),
        (7, "audio_processing"),
        (12, "custom"),
    ] {
        let mut v = postgres();
        v["type"] = json!(n);
        let c = themis::convert_with_notes(&v).unwrap();
        assert_eq!(c.manifest.plugin_type.as_deref(), Some(name));
        assert!(
            c.notes.iter().any(|t| t.contains("legacy integer type")),
            "{:?}",
            c.notes
        );
    }
    let mut v = postgres();
    v["type"] = json!(13);
    let e = refused(&v);
    assert_code(&e, KEEL_ERR_MANIFEST_SCHEMA);
    assert!(e.message().contains("/type"), "{e}");
}

#[test]
fn all_eight_v2_type_names() {
    for t in [
        "compute_backend",
        "blob_storage",
        "importer",
        "exporter",
        "hsm_provider",
        "embedding",
        "llm_backend",
        "custom",
    ] {
        let mut v = postgres();
        v["type"] = json!(t);
        assert_eq!(parse(&v).unwrap().1.plugin_type.as_deref(), Some(t));
    }
    let mut v = postgres();
    v["type"] = json!("CUSTOM");
    let e = refused(&v);
    assert_code(&e, KEEL_ERR_MANIFEST_SCHEMA);
    assert!(e.message().contains("/type"), "{e}");
}

#[test]
fn missing_binary_object() {
    let mut v = postgres();
    v.as_object_mut().unwrap().remove("binary");
    // A document with "name" and no "manifest_version" is a plugin.json: a missing "binary"
    // is a schema error naming the field, not an unknown format.
    for e in [refused(&v), themis::convert(&v).unwrap_err()] {
        assert_code(&e, KEEL_ERR_MANIFEST_SCHEMA);
        assert!(e.message().contains("\"binary\" is a required property"), "{e}");
        assert!(e.message().contains("rule: required"), "{e}");
    }
    // Without "name" either, the document is no manifest Keel knows.
    v.as_object_mut().unwrap().remove("name");
    assert_code(&refused(&v), KEEL_ERR_MANIFEST_UNKNOWN_FORMAT);
}

#[test]
fn empty_binary_object() {
    let mut v = postgres();
    v["binary"] = json!({});
    let e = refused(&v);
    assert_code(&e, KEEL_ERR_MANIFEST_SCHEMA);
    assert!(
        e.message().contains("/binary") && e.message().contains("rule: minProperties"),
        "{e}"
    );
}

#[test]
fn binary_suffix_and_platform_keys() {
    let mut v = postgres();
    v["binary"]["linux"] = json!("libpostgres_importer.dll");
    let e = refused(&v);
    assert_code(&e, KEEL_ERR_MANIFEST_SCHEMA);
    assert!(
        e.message().contains("/binary/linux") && e.message().contains("rule: pattern"),
        "{e}"
    );
    let mut v = postgres();
    v["binary"]["freebsd"] = json!("x.so");
    let e = refused(&v);
    assert!(e.message().contains("rule: additionalProperties"), "{e}");
}

#[test]
fn binary_outside_the_plugin_directory() {
    let mut v = postgres();
    v["binary"]["linux"] = json!("../../elsewhere/evil.so");
    assert_code(&refused(&v), KEEL_ERR_MANIFEST_BAD_PATH);
}

#[test]
fn name_pattern_violation() {
    let mut v = postgres();
    v["name"] = json!("LLMWiki");
    let e = refused(&v);
    assert_code(&e, KEEL_ERR_MANIFEST_SCHEMA);
    assert!(
        e.message().contains("/name") && e.message().contains("rule: pattern"),
        "{e}"
    );
}

#[test]
fn llm_wiki_like_manifest_reports_every_violation() {
    // Shaped like ThemisDB's in-tree llm_wiki manifest: fails on several counts.
    let v = json!({
        "name": "LLMWiki",
        "plugin_id": "llm_wiki",
        "version": "0.1.0",
        "type": "CUSTOM",
        "description": "wiki",
        "library": "libllm_wiki.so",
        "expected_hash": HASH,
        "factory_symbol": "themisdb_llm_wiki_create"
    });
    let e = refused(&v);
    assert_code(&e, KEEL_ERR_MANIFEST_SCHEMA);
    for part in ["/name", "/type"] {
        assert!(e.message().contains(part), "{part} missing in {e}");
    }
    // Unknown keys are not among the violations (ThemisDB accepts them; Keel notes them).
    assert!(!e.message().contains("plugin_id"), "{e}");
}

#[test]
fn unknown_top_level_keys_are_accepted_with_a_note() {
    // Shaped like ThemisDB's real importer manifests (kafka, s3), which ThemisDB's loader and
    // C++ validator accept: extra top-level keys are not errors.
    let mut v = postgres();
    v["build_flags"] = json!({"optional_define": "X"});
    v["source_url_format"] = json!("s3://{bucket}/{key}");
    v["security"] = json!({"requires_tls": true});
    let c = themis::convert_with_notes(&v).expect("accepted");
    for key in ["build_flags", "source_url_format", "security"] {
        assert!(
            c.notes
                .iter()
                .any(|n| n.contains(&format!("unknown top-level key \"{key}\""))),
            "{key}: {:?}",
            c.notes
        );
    }
    assert!(parse(&v).is_ok());
    // Known keys are still checked.
    v["load_priority"] = json!(5000);
    assert!(refused(&v).message().contains("/load_priority"));
}

#[test]
fn newer_variant_fields_are_checked() {
    let mut v = postgres();
    v["visibility"] = json!("community");
    assert!(refused(&v).message().contains("/visibility"));
    let mut v = postgres();
    v["allowed_editions"] = json!(["enterprise", "platinum"]);
    assert!(refused(&v).message().contains("/allowed_editions/1"));
    // ThemisDB's validator checks only the length of the release bounds (in-tree manifests
    // write "2.4"); nothing enforces them.
    let mut v = postgres();
    v["min_themisdb_version"] = json!("2.4");
    assert!(parse(&v).is_ok());
    v["min_themisdb_version"] = json!("x".repeat(33));
    assert!(refused(&v).message().contains("/min_themisdb_version"));
    let mut v = postgres();
    v["max_themisdb_version"] = json!("3.0.0");
    v["license_feature"] = json!("pack");
    v["allowed_editions"] = json!(["community", "enterprise"]);
    assert!(parse(&v).is_ok());
}

#[test]
fn missing_expected_hash_is_valid_and_unpinned_with_a_warning() {
    let mut v = postgres();
    v.as_object_mut().unwrap().remove("expected_hash");
    let c = themis::convert_with_notes(&v).unwrap();
    assert!(c.manifest.is_unpinned());
    assert_eq!(c.manifest.sha256, None);
    assert!(
        c.notes
            .iter()
            .any(|n| n.starts_with("warning: ") && n.contains("KEEL_ERR_UNPINNED_BINARY")),
        "{:?}",
        c.notes
    );
    let bin = c.manifest.binary_for_platform(Path::new("/p")).unwrap();
    assert_eq!(bin.sha256, None);
    // A Keel manifest without sha256 is still a schema error.
    let mut k = serde_json::to_value(&c.manifest).unwrap();
    k.as_object_mut().unwrap().remove("sha256");
    let e = manifest::parse(&serde_json::to_vec(&k).unwrap()).unwrap_err();
    assert_code(&e, KEEL_ERR_MANIFEST_SCHEMA);
    assert!(e.message().contains("sha256"), "{e}");
}

#[test]
fn config_is_checked_against_config_schema_with_its_path() {
    let mut v = postgres();
    v["config"] = json!({"batch_size": "many"});
    let e = refused(&v);
    assert_code(&e, KEEL_ERR_MANIFEST_SCHEMA);
    assert!(e.message().contains("at /config/batch_size"), "{e}");
    assert!(e.message().contains("config_schema"), "{e}");
    v["config"] = json!({"batch_size": 100});
    let (_, m) = parse(&v).unwrap();
    assert_eq!(m.config_json(), r#"{"batch_size":100}"#);
    v["config"] = json!(3);
    let e = refused(&v);
    assert_code(&e, KEEL_ERR_MANIFEST_SCHEMA);
    assert!(e.message().contains("at /config"), "{e}");
    // A config_schema that is no schema is refused at its path.
    v["config"] = json!({});
    v["config_schema"] = json!({"type": 12});
    let e = refused(&v);
    assert_code(&e, KEEL_ERR_MANIFEST_SCHEMA);
    assert!(e.message().contains("at /config_schema"), "{e}");
}

#[test]
fn malformed_expected_hash() {
    let mut v = postgres();
    v["expected_hash"] = json!("abc123");
    let e = refused(&v);
    assert_code(&e, KEEL_ERR_MANIFEST_SCHEMA);
    assert!(e.message().contains("/expected_hash"), "{e}");
}

#[test]
fn libraries_in_both_dependency_forms() {
    let mut v = postgres();
    v["dependencies"] = json!(["nlohmann/json", "curl", "librdkafka", "llama.cpp", "base_plugin"]);
    let (_, m) = parse(&v).unwrap();
    assert!(m.dependencies.is_empty());
    assert_eq!(m.weak_dependencies.iter().collect::<Vec<_>>(), ["base_plugin"]);
    let mut v = postgres();
    v["dependencies"] = json!({"aws-sdk-cpp": ">=1.11.0", "openssl": ">=1.1.1w", "spdlog": ">=1.9.0"});
    let (_, m) = parse(&v).unwrap();
    assert!(m.dependencies.is_empty());
}

#[test]
fn dependency_names_keel_cannot_load_are_refused() {
    // Array form: a name Keel cannot load as a plugin is a library dependency.
    let mut v = postgres();
    v["dependencies"] = json!(["OtherPlugin", "aws-sdk-cpp-s3"]);
    let c = themis::convert_with_notes(&v).unwrap();
    assert!(c.manifest.dependencies.is_empty());
    assert_eq!(
        c.manifest.weak_dependencies.iter().collect::<Vec<_>>(),
        ["aws-sdk-cpp-s3"]
    );
    assert!(
        c.notes.iter().any(|n| n.contains("'OtherPlugin' names a library")),
        "{:?}",
        c.notes
    );
    // Object form (a version range: a plugin dependency): refused.
    let mut v = postgres();
    v["dependencies"] = json!({"OtherPlugin": ">=1.0"});
    let e = refused(&v);
    assert_code(&e, KEEL_ERR_MANIFEST_INVALID);
    assert!(e.message().contains("'OtherPlugin'"), "{e}");
}

#[test]
fn bad_dependency_constraint() {
    let mut v = mongo();
    v["dependencies"] = json!({"schema_mapper": "about 1.0"});
    let e = refused(&v);
    assert_code(&e, KEEL_ERR_BAD_VERSION);
    assert!(
        e.message().contains("schema_mapper") && e.message().contains("about 1.0"),
        "{e}"
    );
}

#[test]
fn dependencies_of_the_wrong_shape() {
    let mut v = postgres();
    v["dependencies"] = json!("schema_mapper");
    assert_code(&refused(&v), KEEL_ERR_MANIFEST_SCHEMA);
    let mut v = postgres();
    v["dependencies"] = json!([""]);
    assert_code(&refused(&v), KEEL_ERR_MANIFEST_SCHEMA);
}

#[test]
fn supports_prefixed_flags_are_read_as_traits() {
    let mut v = postgres();
    v["capabilities"] = json!({"supports_streaming": true, "supports_batching": false, "GPU": true});
    let c = themis::convert_with_notes(&v).unwrap();
    assert_eq!(c.manifest.traits, ["streaming"]);
    assert!(c.notes.iter().any(|n| n.contains("'GPU'")), "{:?}", c.notes);
    let mut v = postgres();
    v["capabilities"] = json!({"streaming": "yes"});
    assert!(refused(&v).message().contains("/capabilities/streaming"));
}

#[test]
fn load_priority_bounds_and_marketplace_fields() {
    let mut v = postgres();
    v["load_priority"] = json!(1001);
    assert!(refused(&v).message().contains("/load_priority"));
    let mut v = postgres();
    v["signature"] =
        json!({"fingerprint": "00112233445566778899", "algorithm": "ed25519", "signed_at": "2026-01-02T03:04:05Z"});
    v["marketplace_id"] = json!("123e4567-e89b-42d3-a456-426614174000");
    let c = themis::convert_with_notes(&v).unwrap();
    assert!(c.notes.iter().any(|n| n.contains("\"signature\"")), "{:?}", c.notes);
    v["signature"]["algorithm"] = json!("md5");
    assert!(refused(&v).message().contains("/signature/algorithm"));
}

#[test]
fn read_file_reports_format_for_keel_validate() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plugin.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&mongo()).unwrap()).unwrap();
    let f = manifest::read_file(&path).unwrap();
    assert_eq!(f.format, ManifestFormat::ThemisDb);
    assert_eq!(f.format.as_str(), "themisdb");
    assert_eq!(f.manifest.name, "mongo_importer");
    assert_eq!(f.bytes, std::fs::read(&path).unwrap());
}
