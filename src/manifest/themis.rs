//! ThemisDB `plugin.json` compatibility: accept a ThemisDB manifest as-is, check it against
//! ThemisDB's manifest rules, and convert it into a Keel [`Manifest`] with runtime `themis`
//! (the legacy C++ `createPlugin`/`destroyPlugin` ABI).
//!
//! # Validation
//!
//! The document is validated against [`THEMISDB_MANIFEST_SCHEMA`] (JSON Schema draft 2020-12,
//! `themisdb-manifest-v2.schema.json`): ThemisDB's v2 schema in its newer variant
//! (`visibility`, `allowed_editions`, `license_feature`, `compatible_core_abi`), plus exactly
//! what ThemisDB's own loader accepts beyond that schema: `min/max_themisdb_version`, the legacy
//! single `library` field and a legacy integer `type`. Violations are reported as
//! `KEEL_ERR_MANIFEST_SCHEMA` with the JSON path and the rule (schema keyword) of each. The
//! converted manifest is then validated against Keel's own schema too, so a ThemisDB manifest
//! never loads with less checking than a Keel one.
//!
//! # Mapping
//!
//! | ThemisDB | Keel |
//! |---|---|
//! | `name`, `version`, `description` | same (legacy manifests without `version` get `1.0.0`, as ThemisDB's legacy parser does) |
//! | `type` (8 v2 names) | `type`, same name |
//! | `type` (legacy integer) | `type`, named by ThemisDB's current `PluginType` numbering: 0 `compute_backend` … 6 `llm_backend`, 7 `audio_processing`, 8 `image_generation`, 9 `agentic_tool`, 10 `ingestion_step`, 11 `resource_limit_policy`, 12 `custom` (older releases numbered differently; a note says so) |
//! | `binary.linux` / `.windows` / `.macos` | `binary` keys `linux` / `windows` / `macos` |
//! | `library` (legacy) | every one of those three keys not already named |
//! | `expected_hash` | `sha256`, lower-cased (ThemisDB compared case-sensitively, §9.8), pinned for every listed platform: like ThemisDB, the one hash is checked against whichever platform binary is loaded. Absent: no `sha256` (an *unpinned* manifest, see below) |
//! | `dependencies` array | names resolved at load ([`Manifest::weak_dependencies`]): a plugin of the set being loaded (or a loaded one) → name → `*`; anything else is a library dependency (noted, not an error) |
//! | `dependencies` object | name → requirement; values are *minimum* versions, so a bare version `1.11.0` becomes `>=1.11.0` (not semver's caret default); `""` becomes `*` |
//! | `config` (not in ThemisDB's schema; a Keel extension) | `config`, checked against `config_schema` and passed to `initialize` |
//! | `capabilities` flags set to `true` | `traits` (informational; `supports_streaming` style keys are read as `streaming`). They are not Keel capabilities: a ThemisDB plugin is granted no Keel capability |
//! | `auto_load`, `load_priority`, `config_schema` | same |
//! | everything else the schema knows | checked, not mapped (marketplace metadata, edition/licence gating, `min/max_themis(db)_version`, `compatible_core_abi`, `signature` metadata); the ones ThemisDB would act on produce a note |
//! | top-level keys the schema does not know (`build_flags`, `source_url_format`, `security`, ...) | accepted with a note each, as ThemisDB's runtime loader and C++ validator accept them (ThemisDB's JSON Schema file says `additionalProperties: false`, but nothing in ThemisDB applies it) |
//!
//! # Where Keel deliberately differs from ThemisDB's loader
//!
//! * **`expected_hash` is optional, loading an unpinned binary is a policy.** A ThemisDB
//!   manifest without `expected_hash` is valid (a note starting `warning:` says it is
//!   unpinned), but the host refuses to load it with `KEEL_ERR_UNPINNED_BINARY` unless it has
//!   opted in with the `allow_unpinned` policy (`keel_host_set_allow_unpinned`, only before
//!   the first load). An unpinned binary that is loaded is still read once and hashed; the
//!   generation records the SHA-256 of the exact bytes loaded.
//! * **Libraries listed as dependencies** (compat notes §9.10: `nlohmann/json`, `curl`,
//!   `librdkafka`, `aws-sdk-cpp`, …): a dependency is read as a *library* requirement and
//!   dropped from the plugin dependencies, with a note, when its name contains a character a
//!   ThemisDB plugin name cannot contain (anything but ASCII letters, digits, `_`, `-`; e.g.
//!   `/`, `.`, `+`) or it is one of [`KNOWN_LIBRARIES`]. In the array form, so is a name Keel
//!   could not load as a plugin (upper case), and every other array name is decided at load:
//!   a plugin of the scanned set or a loaded plugin makes it a plugin dependency, otherwise it
//!   is a library (`aws-sdk-cpp-s3`). Libraries are the dynamic linker's business, not the
//!   plugin host's. In the object form (entries with a version range: plugin dependencies) a
//!   name that is a valid ThemisDB name but not a valid Keel name (upper case) is refused
//!   rather than guessed at. This applies to ThemisDB manifests only.
//! * **Type names** follow the v2 schema: a string `type` must be one of the 8 lower-case
//!   names (ThemisDB's loader silently turned anything else, e.g. `"CUSTOM"`, into CUSTOM).
//! * Rescans overwriting loaded entries (§9.11) is host behaviour: Keel's load path refuses a
//!   name that is already loaded with `KEEL_ERR_ALREADY_LOADED`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use serde_json::{Map, Value};

use crate::error::Result;
use crate::manifest::Manifest;
use crate::{bail, err};

/// ThemisDB's manifest rules as Keel applies them (JSON Schema draft 2020-12).
pub const THEMISDB_MANIFEST_SCHEMA: &str = include_str!("themisdb-manifest-v2.schema.json");

/// Library names ThemisDB manifests list as "dependencies" although they are not plugins
/// (kept sorted: looked up by binary search).
pub const KNOWN_LIBRARIES: &[&str] = &[
    "abseil",
    "aws-sdk-cpp",
    "azure-sdk-for-cpp",
    "azure-storage-blobs-cpp",
    "boost",
    "cuda",
    "curl",
    "fmt",
    "google-cloud-cpp",
    "grpc",
    "libcurl",
    "libpq",
    "librdkafka",
    "lz4",
    "mongo-cxx-driver",
    "mongocxx",
    "nlohmann-json",
    "nlohmann_json",
    "onnxruntime",
    "openssl",
    "protobuf",
    "rdkafka",
    "rocksdb",
    "snappy",
    "spdlog",
    "sqlite3",
    "tbb",
    "themisdb_sdk",
    "yaml-cpp",
    "zlib",
    "zstd",
];

/// ThemisDB's current `PluginType` numbering (v0.0.47), for legacy integer `type` values.
pub const LEGACY_TYPES: [&str; 13] = [
    "compute_backend",
    "blob_storage",
    "importer",
    "exporter",
    "hsm_provider",
    "embedding",
    "llm_backend",
    "audio_processing",
    "image_generation",
    "agentic_tool",
    "ingestion_step",
    "resource_limit_policy",
    "custom",
];

/// ThemisDB's capability flags that Keel keeps as traits.
const FLAGS: [&str; 5] = [
    "streaming",
    "batching",
    "transactions",
    "thread_safe",
    "gpu_accelerated",
];

/// A converted manifest and what the conversion dropped, defaulted or did not apply.
#[derive(Debug, Clone)]
pub struct Conversion {
    pub manifest: Manifest,
    /// One line per remark, for tools such as `keel validate`.
    pub notes: Vec<String>,
}

/// Validate a value against ThemisDB's manifest rules. The error names every violation (up to
/// 16) with its JSON path and the rule it broke.
pub fn validate_themis_schema(value: &Value) -> Result<()> {
    static V: OnceLock<jsonschema::Validator> = OnceLock::new();
    super::check_schema(
        V.get_or_init(|| super::compile_schema(THEMISDB_MANIFEST_SCHEMA)),
        value,
        "ThemisDB plugin.json violates the manifest rules",
    )
}

/// Convert a ThemisDB `plugin.json` value into a Keel [`Manifest`].
pub fn convert(value: &Value) -> Result<Manifest> {
    Ok(convert_with_notes(value)?.manifest)
}

/// [`convert`], also returning the notes (dropped library dependencies, defaults applied,
/// ThemisDB-only settings that Keel does not enforce).
pub fn convert_with_notes(value: &Value) -> Result<Conversion> {
    validate_themis_schema(value)?;
    let Some(obj) = value.as_object() else {
        bail!(KEEL_ERR_MANIFEST_SCHEMA, "manifest must be a JSON object (rule: type)");
    };
    let mut notes = Vec::new();
    // The schema guarantees name is a string.
    let name = obj.get("name").and_then(Value::as_str).unwrap_or_default().to_string();

    let version = match obj.get("version").and_then(Value::as_str) {
        Some(v) => v.to_string(),
        None => {
            notes.push("no \"version\" (legacy manifest): version 1.0.0 assumed, as ThemisDB does".to_string());
            "1.0.0".to_string()
        }
    };

    let plugin_type = match obj.get("type") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => {
            let t = n
                .as_u64()
                .and_then(|i| LEGACY_TYPES.get(i as usize))
                .copied()
                .ok_or_else(|| {
                    err!(
                        KEEL_ERR_MANIFEST_SCHEMA,
                        "at /type: {n} is not a ThemisDB plugin type (rule: maximum)"
                    )
                })?;
            notes.push(format!(
                "legacy integer type {n} read as \"{t}\" (ThemisDB's current numbering; older releases numbered types differently)"
            ));
            Some(t.to_string())
        }
        _ => None,
    };

    let mut binary = Map::new();
    if let Some(b) = obj.get("binary").and_then(Value::as_object) {
        for (k, v) in b {
            binary.insert(k.clone(), v.clone());
        }
    }
    if let Some(lib) = obj.get("library").and_then(Value::as_str) {
        for platform in ["linux", "windows", "macos"] {
            binary.entry(platform).or_insert_with(|| Value::from(lib));
        }
    }

    let sha256: Option<Value> = match obj.get("expected_hash").and_then(Value::as_str) {
        Some(hash) => {
            let hash = hash.to_ascii_lowercase();
            Some(if binary.len() == 1 {
                Value::from(hash)
            } else {
                Value::Object(binary.keys().map(|k| (k.clone(), Value::from(hash.clone()))).collect())
            })
        }
        None => {
            notes.push(
                "warning: no \"expected_hash\": the binary is unpinned; a host refuses to load it (KEEL_ERR_UNPINNED_BINARY) unless its policy allows unpinned binaries (keel_host_set_allow_unpinned); pin it with \"expected_hash\": \"<sha256 of the binary>\" (e.g. from sha256sum)".to_string(),
            );
            None
        }
    };

    let (dependencies, weak) = convert_dependencies(&name, obj.get("dependencies"), &mut notes)?;
    let config = convert_config(obj)?;
    let traits = convert_traits(obj.get("capabilities"), &mut notes);
    unapplied_settings(obj, &mut notes);

    let mut keel = Map::new();
    keel.insert("manifest_version".into(), Value::from(1));
    keel.insert("name".into(), Value::from(name.clone()));
    keel.insert("version".into(), Value::from(version));
    if let Some(d) = obj.get("description") {
        keel.insert("description".into(), d.clone());
    }
    if let Some(t) = plugin_type {
        keel.insert("type".into(), Value::from(t));
    }
    keel.insert("runtime".into(), Value::from("themis"));
    keel.insert("binary".into(), Value::Object(binary));
    if let Some(sha256) = &sha256 {
        keel.insert("sha256".into(), sha256.clone());
    }
    if let Some(config) = config {
        keel.insert("config".into(), Value::Object(config));
    }
    if !dependencies.is_empty() {
        keel.insert(
            "dependencies".into(),
            Value::Object(dependencies.into_iter().map(|(k, v)| (k, Value::from(v))).collect()),
        );
    }
    if !traits.is_empty() {
        keel.insert("traits".into(), Value::from(traits));
    }
    for key in ["config_schema", "auto_load", "load_priority"] {
        if let Some(v) = obj.get(key) {
            keel.insert(key.into(), v.clone());
        }
    }
    let keel = Value::Object(keel);
    let checked = if sha256.is_some() {
        super::validate_keel_schema(&keel)
    } else {
        super::validate_keel_schema_unpinned(&keel)
    };
    let mut manifest = checked
        .and_then(|()| super::typed_manifest(keel))
        .map_err(|e| e.context(format!("ThemisDB plugin '{name}' converted to a Keel manifest")))?;
    manifest.weak_dependencies = weak;
    Ok(Conversion { manifest, notes })
}

/// Whether `name` is a plugin name Keel accepts: `^[a-z0-9]([a-z0-9_-]*[a-z0-9])?$`, ≤128.
pub fn is_valid_plugin_name(name: &str) -> bool {
    let b = name.as_bytes();
    let inner = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-';
    let edge = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty() && b.len() <= 128 && b.iter().all(inner) && b.first().is_some_and(edge) && b.last().is_some_and(edge)
}

/// Whether a ThemisDB dependency entry names a library rather than a plugin: it contains a
/// character no ThemisDB plugin name can contain, or it is one of [`KNOWN_LIBRARIES`].
pub fn is_library_name(name: &str) -> bool {
    let plugin_chars = name
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-');
    !plugin_chars || name.starts_with('.') || KNOWN_LIBRARIES.binary_search(&name).is_ok()
}

/// A ThemisDB "minimum version constraint" as a semver requirement.
pub fn themis_requirement(text: &str) -> String {
    let t = text.trim();
    if t.is_empty() {
        "*".to_string()
    } else if t.as_bytes()[0].is_ascii_digit() && !t.contains([',', ' ', '<', '>', '=', '^', '~']) {
        format!(">={t}")
    } else {
        t.to_string()
    }
}

/// Plugin dependencies (name → requirement) and array-form names to resolve at load.
///
/// * Array form (`["schema_mapper", "aws-sdk-cpp-s3"]`): names without a version. A name that
///   cannot be a plugin name ([`is_library_name`], or not a valid Keel plugin name, e.g. upper
///   case) is a library (noted); every other name is *weak*: resolved at load against the
///   plugins being loaded and those already loaded (a plugin dependency `*` if one has that
///   name, a library dependency otherwise; see [`Manifest::resolve_weak_dependencies`]).
/// * Object form (`{"base": ">=1.0"}`): entries with a version range are plugin dependencies,
///   except names that are plainly libraries ([`is_library_name`]); a name Keel cannot load
///   is refused.
fn convert_dependencies(
    plugin: &str,
    deps: Option<&Value>,
    notes: &mut Vec<String>,
) -> Result<(BTreeMap<String, String>, BTreeSet<String>)> {
    let mut out = BTreeMap::new();
    let mut weak = BTreeSet::new();
    let library = |dep: &str, notes: &mut Vec<String>| {
        notes.push(format!(
            "dependency '{dep}' names a library, not a plugin: not treated as a plugin dependency (libraries are resolved by the dynamic linker)"
        ));
    };
    let entries: Vec<(&str, &str)> = match deps {
        None => Vec::new(),
        Some(Value::Array(items)) => {
            for dep in items.iter().filter_map(Value::as_str) {
                if is_library_name(dep) || !is_valid_plugin_name(dep) {
                    library(dep, notes);
                } else {
                    weak.insert(dep.to_string());
                }
            }
            if !weak.is_empty() {
                notes.push(format!(
                    "array-form dependencies {} are resolved at load: a plugin dependency (any version) if a plugin of that name is being loaded with it or is loaded, otherwise a library dependency",
                    weak.iter().map(|d| format!("'{d}'")).collect::<Vec<_>>().join(", ")
                ));
            }
            Vec::new()
        }
        Some(Value::Object(map)) => map
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str().unwrap_or("")))
            .collect(),
        Some(_) => bail!(
            KEEL_ERR_MANIFEST_SCHEMA,
            "at /dependencies: must be an array or an object (rule: oneOf)"
        ),
    };
    for (dep, constraint) in entries {
        if is_library_name(dep) {
            library(dep, notes);
            continue;
        }
        if !is_valid_plugin_name(dep) {
            bail!(
                KEEL_ERR_MANIFEST_INVALID,
                "ThemisDB plugin '{plugin}': dependency '{dep}' is not a valid Keel plugin name (lower-case letters, digits, '_' and '-', starting and ending with a letter or digit)"
            );
        }
        let req = themis_requirement(constraint);
        semver::VersionReq::parse(&req).map_err(|e| {
            err!(
                KEEL_ERR_BAD_VERSION,
                "ThemisDB plugin '{plugin}': dependency '{dep}' has constraint '{constraint}', which is not a version requirement: {e}"
            )
        })?;
        out.insert(dep.to_string(), req);
    }
    Ok((out, weak))
}

/// The config a ThemisDB plugin's `initialize` gets: the top-level `config` object, if the
/// manifest has one (a Keel extension of `plugin.json`: ThemisDB's schema has no such key and
/// its loader always passes `{}`). `config_schema` defaults are not filled in: as in ThemisDB,
/// applying them is the plugin's business.
fn convert_config(obj: &Map<String, Value>) -> Result<Option<Map<String, Value>>> {
    match obj.get("config") {
        Some(Value::Object(c)) => Ok(Some(c.clone())),
        Some(_) => bail!(KEEL_ERR_MANIFEST_SCHEMA, "at /config: must be an object (rule: type)"),
        None => Ok(None),
    }
}

fn convert_traits(caps: Option<&Value>, notes: &mut Vec<String>) -> Vec<String> {
    let Some(map) = caps.and_then(Value::as_object) else {
        return Vec::new();
    };
    let mut traits: Vec<String> = Vec::new();
    for (key, v) in map {
        if v != &Value::Bool(true) {
            continue;
        }
        let name = match key.strip_prefix("supports_") {
            Some(rest) if FLAGS.contains(&rest) => rest,
            _ => key.as_str(),
        };
        let well_formed = name.len() <= 64
            && name.as_bytes().first().is_some_and(u8::is_ascii_lowercase)
            && name
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_');
        if !well_formed {
            notes.push(format!(
                "capability flag '{key}' is not a trait name Keel keeps: ignored"
            ));
        } else if !traits.iter().any(|t| t == name) {
            traits.push(name.to_string());
        }
    }
    traits.sort();
    traits
}

/// The top-level keys [`THEMISDB_MANIFEST_SCHEMA`] knows (read from the schema itself, so the
/// list cannot drift from what is checked).
fn known_top_level_keys() -> &'static BTreeSet<String> {
    static KEYS: OnceLock<BTreeSet<String>> = OnceLock::new();
    KEYS.get_or_init(|| {
        let schema: Value = serde_json::from_str(THEMISDB_MANIFEST_SCHEMA).unwrap_or_default();
        schema
            .get("properties")
            .and_then(Value::as_object)
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default()
    })
}

/// Notes for ThemisDB settings that ThemisDB would act on and Keel does not, and for
/// top-level keys no ThemisDB rule knows (accepted, as ThemisDB's loader accepts them).
fn unapplied_settings(obj: &Map<String, Value>, notes: &mut Vec<String>) {
    let known = known_top_level_keys();
    for key in obj
        .keys()
        .filter(|k| !known.contains(k.as_str()) && k.as_str() != "config")
    {
        notes.push(format!(
            "unknown top-level key \"{key}\": accepted and ignored (ThemisDB's loader ignores it too)"
        ));
    }
    if obj
        .get("visibility")
        .and_then(Value::as_str)
        .is_some_and(|v| v != "public")
        || obj.contains_key("allowed_editions")
        || obj.contains_key("license_feature")
    {
        notes.push(
            "ThemisDB edition/licence gating (visibility, allowed_editions, license_feature) is not applied by Keel; use the capability allowlist and trust policy".to_string(),
        );
    }
    for key in [
        "min_themisdb_version",
        "max_themisdb_version",
        "min_themis_version",
        "max_themis_version",
    ] {
        if obj.contains_key(key) {
            notes.push(format!(
                "\"{key}\" refers to ThemisDB releases and is not checked by Keel"
            ));
        }
    }
    if obj.contains_key("signature") {
        notes.push(
            "\"signature\" is marketplace metadata that nothing verifies; Keel checks its own detached signature (trust policy)".to_string(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_libraries_are_sorted_for_binary_search() {
        assert!(KNOWN_LIBRARIES.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn library_and_plugin_names() {
        assert!(is_library_name("nlohmann/json"));
        assert!(is_library_name("librdkafka"));
        assert!(is_library_name("curl"));
        assert!(is_library_name("llama.cpp"));
        assert!(is_library_name(".hidden"));
        assert!(!is_library_name("base_plugin"));
        assert!(!is_library_name("Upper"));
        assert!(is_valid_plugin_name("a") && is_valid_plugin_name("a-b_c9"));
        assert!(!is_valid_plugin_name("Upper") && !is_valid_plugin_name("-a") && !is_valid_plugin_name(""));
    }

    #[test]
    fn minimum_constraints() {
        assert_eq!(themis_requirement("1.11.0"), ">=1.11.0");
        assert_eq!(themis_requirement(">=1.0.0"), ">=1.0.0");
        assert_eq!(themis_requirement("^2"), "^2");
        assert_eq!(themis_requirement(" "), "*");
        assert_eq!(themis_requirement("*"), "*");
    }

    #[test]
    fn legacy_type_numbering() {
        assert_eq!(LEGACY_TYPES[6], "llm_backend");
        assert_eq!(LEGACY_TYPES[12], "custom");
    }
}
