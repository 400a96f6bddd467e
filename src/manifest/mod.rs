//! Plugin manifests: Keel's own JSON format (validated against the embedded JSON Schema,
//! draft 2020-12) and, through [`themis`], ThemisDB's `plugin.json`.
//!
//! This module reads the manifest file and nothing else: binaries are opened by
//! [`crate::artifact`].

pub mod themis;

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::{bail, err};

/// The embedded JSON Schema of Keel manifests (draft 2020-12).
pub const KEEL_MANIFEST_SCHEMA: &str = include_str!("keel-manifest.schema.json");

/// Manifests larger than this are refused before parsing.
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;

/// Which runtime runs the plugin's binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    /// A shared library exporting Keel's C vtable (`keel_plugin.h`).
    Native,
    /// A WebAssembly module speaking Keel's WASM ABI (`keel_wasm.h`).
    Wasm,
    /// A ThemisDB C++ plugin exporting `createPlugin`/`destroyPlugin`.
    Themis,
}

/// How WASM instances may be shared between concurrent calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum InstanceMode {
    /// Stateless: a pool of ready instances serves concurrent calls.
    Pooled,
    /// Stateful: one instance, calls serialised by the plugin's own lock.
    #[default]
    Serial,
}

/// Where a native plugin runs (`isolation`): in the server's process, or in a sandbox
/// process (docs/isolation.md). The host may require `process` for all native plugins; a
/// manifest can never downgrade that.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// In-process (unless the host requires isolation).
    #[default]
    None,
    /// In a sandbox process (seccomp, rlimits, calls over shared memory).
    Process,
}

/// `sha256`: one digest, or one per platform key of `binary`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Digests {
    One(String),
    PerPlatform(BTreeMap<String, String>),
}

/// Per-plugin limits (WASM); node-wide defaults and ceilings apply where absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fuel_per_call: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_output_bytes: Option<u64>,
}

/// A validated Keel manifest. ThemisDB manifests are converted into this type.
///
/// The serde shape of this type is the JSON Schema in [`KEEL_MANIFEST_SCHEMA`], except that
/// serde lets `sha256` be absent (the schema requires it; only a converted ThemisDB manifest
/// without `expected_hash` is typed without it) and [`Manifest::weak_dependencies`] is never
/// read or written. Documents always pass the schema before they are typed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    #[serde(rename = "$schema", default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    pub manifest_version: u32,
    pub name: String,
    pub version: semver::Version,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub plugin_type: Option<String>,
    pub runtime: RuntimeKind,
    pub binary: BTreeMap<String, String>,
    /// The pinned digests. Required by the Keel schema; `None` only for a ThemisDB
    /// `plugin.json` without `expected_hash` (valid, but loaded only under the
    /// `allow_unpinned` policy: see [`crate::trust::policy`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<Digests>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub dependencies: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<serde_json::Map<String, Value>>,
    /// JSON Schema of `config` (ThemisDB `config_schema`): when the manifest has a `config`,
    /// it must validate against this schema (checked with the manifest, see
    /// [`Manifest::check_config`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_schema: Option<serde_json::Map<String, Value>>,
    /// Behaviour the plugin declares (ThemisDB capability flags such as `streaming` or
    /// `thread_safe`). Informational: unlike `capabilities`, traits grant nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub traits: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<InstanceMode>,
    /// `"wasmer"` or `"wasmtime"`: the engine this WASM plugin asks for; honoured only where
    /// the node lets manifests choose (docs/wasm.md), refused otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wasm_engine: Option<String>,
    /// `"process"`: run this native plugin in a sandbox process (docs/isolation.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<Isolation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_load: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_priority: Option<u32>,
    /// ThemisDB array-form dependencies that may name a plugin or a library: resolved at load
    /// ([`Manifest::resolve_weak_dependencies`]). Never part of a Keel manifest document.
    #[serde(skip)]
    pub weak_dependencies: std::collections::BTreeSet<String>,
}

/// Which format a manifest file was written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestFormat {
    Keel,
    ThemisDb,
}

impl ManifestFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ManifestFormat::Keel => "keel",
            ManifestFormat::ThemisDb => "themisdb",
        }
    }
}

/// A manifest as read from disk: its exact bytes (what signatures cover), where it lives,
/// which format it was, and the validated content.
#[derive(Debug, Clone)]
pub struct ManifestFile {
    pub path: PathBuf,
    pub bytes: Vec<u8>,
    pub format: ManifestFormat,
    pub manifest: Manifest,
}

/// The binary this platform loads, as the manifest names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryRef {
    /// The platform key that matched (e.g. `linux-x86_64`).
    pub platform: String,
    /// Manifest directory joined with the relative path (for messages: the binary is opened
    /// as `relative` beneath `dir`, see [`crate::artifact::read`]).
    pub path: PathBuf,
    /// The manifest's directory.
    pub dir: PathBuf,
    /// The path the manifest names, relative to `dir`.
    pub relative: PathBuf,
    /// Lower-case hex SHA-256 pinned by the manifest; `None` if it pins none (ThemisDB
    /// `plugin.json` without `expected_hash`).
    pub sha256: Option<String>,
}

/// The platform keys tried for this machine, most specific first.
pub fn platform_keys(runtime: RuntimeKind) -> Vec<String> {
    if runtime == RuntimeKind::Wasm {
        return vec!["wasm32".into(), "wasm".into()];
    }
    let os = std::env::consts::OS;
    vec![format!("{os}-{}", std::env::consts::ARCH), os.to_string()]
}

/// Compile an embedded draft 2020-12 schema (once per schema, behind a `OnceLock`).
pub(crate) fn compile_schema(text: &str) -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(text).expect("embedded schema is valid JSON");
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true)
        .build(&schema)
        .expect("embedded schema compiles")
}

/// Check `value` against `validator`. The error (`KEEL_ERR_MANIFEST_SCHEMA`, prefixed by
/// `what`) names every violation, up to 16, with its JSON path and the rule (schema keyword)
/// it broke.
pub(crate) fn check_schema(validator: &jsonschema::Validator, value: &Value, what: &str) -> Result<()> {
    let mut msgs = Vec::new();
    for e in validator.iter_errors(value) {
        let path = e.instance_path().to_string();
        let path = if path.is_empty() { "/".to_string() } else { path };
        msgs.push(format!("at {path}: {e} (rule: {})", e.kind().keyword()));
        if msgs.len() >= 16 {
            break;
        }
    }
    if msgs.is_empty() {
        Ok(())
    } else {
        Err(err!(KEEL_ERR_MANIFEST_SCHEMA, "{what}: {}", msgs.join("; ")))
    }
}

/// Validate a JSON value against the Keel manifest schema. The error names every violation
/// with its JSON path and the rule (schema keyword) it broke.
pub fn validate_keel_schema(value: &Value) -> Result<()> {
    static V: OnceLock<jsonschema::Validator> = OnceLock::new();
    check_schema(
        V.get_or_init(|| compile_schema(KEEL_MANIFEST_SCHEMA)),
        value,
        "manifest violates the schema",
    )
}

/// Parse manifest bytes, detecting the format: a document with `manifest_version` is a Keel
/// manifest; one without it is read as a ThemisDB `plugin.json`.
pub fn parse(bytes: &[u8]) -> Result<(ManifestFormat, Manifest)> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| err!(KEEL_ERR_MANIFEST_PARSE, "manifest is not valid JSON: {e}"))?;
    if !value.is_object() {
        bail!(
            KEEL_ERR_MANIFEST_UNKNOWN_FORMAT,
            "manifest is a JSON {}, not an object: neither a Keel manifest nor a ThemisDB plugin.json",
            json_kind(&value)
        );
    }
    check_duplicate_keys(bytes)?;
    match detect_format(&value) {
        Some(ManifestFormat::Keel) => Ok((ManifestFormat::Keel, parse_keel_value(value)?)),
        Some(ManifestFormat::ThemisDb) => Ok((ManifestFormat::ThemisDb, themis::convert(&value)?)),
        None => bail!(
            KEEL_ERR_MANIFEST_UNKNOWN_FORMAT,
            "manifest is neither a Keel manifest (no \"manifest_version\") nor a ThemisDB plugin.json (no \"name\")"
        ),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Refuse a document in which an object has the same key twice (`KEEL_ERR_MANIFEST_SCHEMA`,
/// naming the key and the JSON path of the object): JSON parsers disagree on which one wins,
/// so a signed manifest could mean one thing to Keel and another to a tool. `bytes` must
/// already parse as JSON (nesting depth is bounded by the parser).
pub fn check_duplicate_keys(bytes: &[u8]) -> Result<()> {
    use serde::de::{DeserializeSeed, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};

    struct Node<'p>(&'p str);

    impl<'de> DeserializeSeed<'de> for Node<'_> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Node<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_bool<E>(self, _: bool) -> std::result::Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> std::result::Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> std::result::Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> std::result::Result<(), E> {
            Ok(())
        }
        fn visit_str<E>(self, _: &str) -> std::result::Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> std::result::Result<(), E> {
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(), A::Error> {
            let mut i = 0usize;
            while seq.next_element_seed(Node(&format!("{}/{i}", self.0)))?.is_some() {
                i += 1;
            }
            Ok(())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<(), A::Error> {
            let mut seen = std::collections::HashSet::new();
            while let Some(key) = map.next_key::<String>()? {
                let escaped = key.replace('~', "~0").replace('/', "~1");
                if !seen.insert(key.clone()) {
                    let at = if self.0.is_empty() { "/" } else { self.0 };
                    return Err(A::Error::custom(format!(
                        "\u{0}duplicate key \"{key}\" in the object at {at} (rule: unique keys)\u{0}"
                    )));
                }
                map.next_value_seed(Node(&format!("{}/{escaped}", self.0)))?;
            }
            Ok(())
        }
    }

    let mut de = serde_json::Deserializer::from_slice(bytes);
    match Node("").deserialize(&mut de) {
        Ok(()) => Ok(()),
        Err(e) => {
            // The message between the NUL markers is ours; serde_json appends the position.
            let text = e.to_string();
            let msg = text.split('\u{0}').nth(1).unwrap_or(&text).to_string();
            Err(err!(
                KEEL_ERR_MANIFEST_SCHEMA,
                "manifest is ambiguous: {msg} at line {} column {}",
                e.line(),
                e.column()
            ))
        }
    }
}

/// Which format a parsed JSON document claims to be, by the rule [`parse`] applies: an object
/// with `manifest_version` is a Keel manifest; one with `name` and no `manifest_version` is a
/// ThemisDB `plugin.json` (so a ThemisDB manifest without `binary` is reported as a schema
/// error at `binary`, not as an unknown format). `None` for anything else.
pub fn detect_format(value: &Value) -> Option<ManifestFormat> {
    let obj = value.as_object()?;
    if obj.contains_key("manifest_version") {
        Some(ManifestFormat::Keel)
    } else if obj.contains_key("name") {
        Some(ManifestFormat::ThemisDb)
    } else {
        None
    }
}

/// Parse a Keel manifest value: schema first, then the typed view and consistency checks.
pub fn parse_keel_value(value: Value) -> Result<Manifest> {
    validate_keel_schema(&value)?;
    typed_manifest(value)
}

/// The Keel schema without `sha256` among the required keys: what a converted ThemisDB
/// manifest without `expected_hash` is checked against (every other rule still applies).
pub(crate) fn validate_keel_schema_unpinned(value: &Value) -> Result<()> {
    static V: OnceLock<jsonschema::Validator> = OnceLock::new();
    check_schema(
        V.get_or_init(|| {
            let mut schema: Value = serde_json::from_str(KEEL_MANIFEST_SCHEMA).expect("embedded schema is valid JSON");
            if let Some(Value::Array(req)) = schema.get_mut("required") {
                req.retain(|k| k != "sha256");
            }
            compile_schema(&schema.to_string())
        }),
        value,
        "manifest violates the schema",
    )
}

/// The typed view of a value that passed a schema, then the consistency checks.
pub(crate) fn typed_manifest(value: Value) -> Result<Manifest> {
    let m: Manifest = serde_json::from_value(value).map_err(|e| {
        err!(
            KEEL_ERR_MANIFEST_SCHEMA,
            "manifest does not match the manifest type: {e}"
        )
    })?;
    m.check_consistency()?;
    Ok(m)
}

/// Read and parse a manifest file (size-capped).
pub fn read_file(path: &Path) -> Result<ManifestFile> {
    let bytes = read_capped(path, MAX_MANIFEST_BYTES)?;
    let (format, manifest) = parse(&bytes).map_err(|e| e.context(path.display()))?;
    Ok(ManifestFile {
        path: path.to_path_buf(),
        bytes,
        format,
        manifest,
    })
}

/// The bytes of `mf` with the pinned SHA-256 of this platform's binary set to `sha256_hex`
/// (64 hex digits): Keel `sha256` (the one digest, or this platform's entry of the
/// per-platform map), ThemisDB `expected_hash`. The text is edited in place when the old pin
/// occurs exactly once (formatting and key order kept); otherwise the document is rewritten.
/// The result is parsed again, as a host reads it, and must pin `sha256_hex` for this platform.
pub fn with_pin(mf: &ManifestFile, sha256_hex: &str) -> Result<Vec<u8>> {
    if sha256_hex.len() != 64 || !sha256_hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!(
            KEEL_ERR_INVALID_ARGUMENT,
            "'{sha256_hex}' is not a SHA-256 (64 hex digits)"
        );
    }
    let new = sha256_hex.to_ascii_lowercase();
    let bin = mf.manifest.binary_for_platform(&mf.dir())?;
    let mut doc: Value = serde_json::from_slice(&mf.bytes).map_err(|e| err!(KEEL_ERR_MANIFEST_PARSE, "{e}"))?;
    let obj = doc
        .as_object_mut()
        .ok_or_else(|| err!(KEEL_ERR_MANIFEST_INVALID, "manifest is not a JSON object"))?;
    let old: Option<String> = match mf.format {
        ManifestFormat::ThemisDb => {
            let old = obj.get("expected_hash").and_then(Value::as_str).map(str::to_string);
            obj.insert("expected_hash".into(), Value::from(new.clone()));
            old
        }
        ManifestFormat::Keel => match obj.get_mut("sha256") {
            Some(Value::Object(map)) => {
                let old = map.get(&bin.platform).and_then(Value::as_str).map(str::to_string);
                map.insert(bin.platform.clone(), Value::from(new.clone()));
                old
            }
            Some(v) if mf.manifest.binary.len() <= 1 => {
                let old = v.as_str().map(str::to_string);
                *v = Value::from(new.clone());
                old
            }
            _ => bail!(
                KEEL_ERR_MANIFEST_INVALID,
                "the manifest pins one sha256 for several binaries; pin each platform in a sha256 map"
            ),
        },
    };
    let text = String::from_utf8_lossy(&mf.bytes);
    let bytes = match old.map(|o| format!("\"{o}\"")) {
        Some(quoted) if text.matches(quoted.as_str()).count() == 1 => {
            text.replacen(quoted.as_str(), &format!("\"{new}\""), 1).into_bytes()
        }
        _ => {
            let mut b = serde_json::to_vec_pretty(&doc).map_err(|e| Error::internal(e.to_string()))?;
            b.push(b'\n');
            b
        }
    };
    let (_, m) = parse(&bytes)?;
    let pinned = m.binary_for_platform(&mf.dir())?.sha256;
    if pinned.as_deref() != Some(new.as_str()) {
        bail!(
            KEEL_ERR_INTERNAL,
            "updating the pin did not pin {new} (found {pinned:?})"
        );
    }
    Ok(bytes)
}

/// Read a whole small regular file, refusing anything larger than `cap` bytes (see
/// [`crate::fsio::read_capped`]: never blocks on a FIFO, `KEEL_ERR_NOT_REGULAR_FILE`).
pub fn read_capped(path: &Path, cap: u64) -> Result<Vec<u8>> {
    crate::fsio::read_capped(path, cap)
}

impl ManifestFile {
    /// The directory the manifest's binary paths are relative to: the manifest's parent
    /// directory (`.` for a bare file name).
    pub fn dir(&self) -> PathBuf {
        manifest_dir(&self.path)
    }
}

/// The directory a manifest at `path` resolves its binaries in (`.` for a bare file name).
pub fn manifest_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

impl Manifest {
    /// Checks the schema cannot express: digests present for every binary, relative paths,
    /// dependency requirements that parse as semver.
    pub fn check_consistency(&self) -> Result<()> {
        for (platform, rel) in &self.binary {
            check_relative(rel).map_err(|e| e.context(format!("binary.{platform}")))?;
            if self.sha256.is_some() && self.digest_for(platform).is_none() {
                bail!(KEEL_ERR_MANIFEST_INVALID, "binary.{platform} has no sha256 digest (sha256 must be one digest for a single binary, or name every platform)");
            }
        }
        if let Some(Digests::PerPlatform(map)) = &self.sha256 {
            for k in map.keys() {
                if !self.binary.contains_key(k) {
                    bail!(
                        KEEL_ERR_MANIFEST_INVALID,
                        "sha256.{k} names a platform that binary does not list"
                    );
                }
            }
        }
        for (dep, req) in &self.dependencies {
            semver::VersionReq::parse(req).map_err(|e| {
                err!(
                    KEEL_ERR_BAD_VERSION,
                    "dependencies.{dep}: '{req}' is not a semver requirement: {e}"
                )
            })?;
        }
        self.check_config()
    }

    /// When the manifest has both `config` and `config_schema`, `config` must validate
    /// against `config_schema` (JSON Schema, draft 2020-12 unless it names another with
    /// `$schema`): `KEEL_ERR_MANIFEST_SCHEMA`, naming every violation (up to 16) by its
    /// JSON path in the manifest (`/config/...`) and the rule it broke. A `config_schema`
    /// that is not a valid JSON Schema is refused the same way, at `/config_schema`.
    /// Without `config` nothing is checked (the plugin gets `{}`, and ThemisDB manifests
    /// carry schemas for settings the server supplies).
    pub fn check_config(&self) -> Result<()> {
        let (Some(config), Some(schema)) = (&self.config, &self.config_schema) else {
            return Ok(());
        };
        let schema = Value::Object(schema.clone());
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .build(&schema)
            .map_err(|e| {
                err!(
                    KEEL_ERR_MANIFEST_SCHEMA,
                    "plugin '{}': at /config_schema: not a valid JSON Schema: {e}",
                    self.name
                )
            })?;
        let value = Value::Object(config.clone());
        let mut msgs = Vec::new();
        for e in validator.iter_errors(&value) {
            msgs.push(format!(
                "at /config{}: {e} (rule: {})",
                e.instance_path(),
                e.kind().keyword()
            ));
            if msgs.len() >= 16 {
                break;
            }
        }
        if msgs.is_empty() {
            Ok(())
        } else {
            Err(err!(
                KEEL_ERR_MANIFEST_SCHEMA,
                "plugin '{}': config violates config_schema: {}",
                self.name,
                msgs.join("; ")
            ))
        }
    }

    fn digest_for(&self, platform: &str) -> Option<String> {
        match self.sha256.as_ref()? {
            Digests::One(d) if self.binary.len() == 1 => Some(d.to_ascii_lowercase()),
            Digests::One(_) => None,
            Digests::PerPlatform(m) => m.get(platform).map(|d| d.to_ascii_lowercase()),
        }
    }

    /// Whether the manifest pins no digest for its binaries (loaded only under the
    /// `allow_unpinned` policy).
    pub fn is_unpinned(&self) -> bool {
        self.sha256.is_none()
    }

    /// Resolve ThemisDB array-form dependencies ([`Manifest::weak_dependencies`]): a name
    /// for which `is_plugin` is true (a plugin of the set being loaded, or a loaded plugin)
    /// becomes a plugin dependency on any version (`*`), recorded in `dependencies` like any
    /// other, so unload refusal, cascades and reload checks see it; every other name is a
    /// library dependency (the dynamic linker's business) and is returned, for a note.
    pub fn resolve_weak_dependencies(&mut self, is_plugin: impl Fn(&str) -> bool) -> Vec<String> {
        let mut libraries = Vec::new();
        for dep in std::mem::take(&mut self.weak_dependencies) {
            if dep != self.name && is_plugin(&dep) {
                self.dependencies.entry(dep).or_insert_with(|| "*".to_string());
            } else {
                libraries.push(dep);
            }
        }
        libraries
    }

    /// The binary for this machine, resolved against the manifest's directory.
    pub fn binary_for_platform(&self, manifest_dir: &Path) -> Result<BinaryRef> {
        for key in platform_keys(self.runtime) {
            if let Some(rel) = self.binary.get(&key) {
                check_relative(rel)?;
                let sha256 = match &self.sha256 {
                    None => None,
                    Some(_) => Some(
                        self.digest_for(&key)
                            .ok_or_else(|| err!(KEEL_ERR_MANIFEST_INVALID, "binary.{key} has no sha256 digest"))?,
                    ),
                };
                return Ok(BinaryRef {
                    platform: key,
                    path: manifest_dir.join(rel),
                    dir: manifest_dir.to_path_buf(),
                    relative: PathBuf::from(rel),
                    sha256,
                });
            }
        }
        bail!(
            KEEL_ERR_MANIFEST_NO_BINARY,
            "plugin '{}' names no binary for this platform (tried {}; it lists {})",
            self.name,
            platform_keys(self.runtime).join(", "),
            self.binary.keys().cloned().collect::<Vec<_>>().join(", ")
        )
    }

    /// The `config` object as the JSON text handed to the plugin's init hook.
    pub fn config_json(&self) -> String {
        match &self.config {
            Some(c) => Value::Object(c.clone()).to_string(),
            None => "{}".to_string(),
        }
    }
}

/// A manifest's binary path must be relative and stay inside the manifest's directory.
fn check_relative(rel: &str) -> Result<()> {
    let p = Path::new(rel);
    for c in p.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            _ => bail!(
                KEEL_ERR_MANIFEST_BAD_PATH,
                "'{rel}' must be a relative path inside the manifest's directory"
            ),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::keel_status;

    fn good() -> Value {
        serde_json::json!({
            "manifest_version": 1,
            "name": "echo",
            "version": "1.2.3",
            "runtime": "native",
            "binary": {"linux-x86_64": "libecho.so", "linux": "libecho.so"},
            "sha256": {"linux-x86_64": "AB".repeat(32), "linux": "ab".repeat(32)},
            "dependencies": {"base": "^1.0"}
        })
    }

    #[test]
    fn good_manifest_parses() {
        let m = parse_keel_value(good()).unwrap();
        assert_eq!(m.name, "echo");
        let b = m.binary_for_platform(Path::new("/p")).unwrap();
        assert_eq!(b.sha256, Some("ab".repeat(32)));
        assert!(b.path.ends_with("libecho.so"));
    }

    fn file(bytes: Vec<u8>) -> ManifestFile {
        let (format, manifest) = parse(&bytes).unwrap();
        ManifestFile {
            path: PathBuf::from("/p/keel.json"),
            bytes,
            format,
            manifest,
        }
    }

    #[test]
    fn with_pin_sets_this_platforms_digest() {
        let new = "cd".repeat(32);
        // One digest: edited in place, the rest of the text untouched.
        let text = format!(
            "{{\n  \"manifest_version\": 1, \"name\": \"p\", \"version\": \"1.0.0\", \"runtime\": \"native\",\n  \"binary\": {{\"linux\": \"libp.so\"}}, \"sha256\": \"{}\"\n}}\n",
            "0".repeat(64)
        );
        let out = with_pin(&file(text.clone().into_bytes()), &new.to_uppercase()).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), text.replace(&"0".repeat(64), &new));
        // Per-platform map: this platform's entry (the first key tried that is listed).
        let mut v = good();
        v["binary"] = serde_json::json!({"linux": "libecho.so", "wasm32": "x.wasm"});
        v["sha256"] = serde_json::json!({"linux": "ab".repeat(32), "wasm32": "ab".repeat(32)});
        let out = with_pin(&file(serde_json::to_vec(&v).unwrap()), &new).unwrap();
        let (_, m) = parse(&out).unwrap();
        assert_eq!(
            m.binary_for_platform(Path::new("/p")).unwrap().sha256,
            Some(new.clone())
        );
        assert_eq!(m.digest_for("wasm32"), Some("ab".repeat(32)));
        // ThemisDB expected_hash, added when absent; a bad digest is refused.
        let themis =
            br#"{"name":"t","version":"1.0.0","type":"importer","description":"d","binary":{"linux":"libt.so"}}"#;
        let out = with_pin(&file(themis.to_vec()), &new).unwrap();
        let (format, m) = parse(&out).unwrap();
        assert_eq!(format, ManifestFormat::ThemisDb);
        assert_eq!(m.binary_for_platform(Path::new("/p")).unwrap().sha256, Some(new));
        assert_eq!(
            with_pin(&file(themis.to_vec()), "xyz").unwrap_err().status(),
            keel_status::KEEL_ERR_INVALID_ARGUMENT
        );
    }

    #[test]
    fn schema_errors_name_path_and_rule() {
        let mut v = good();
        v["name"] = Value::from("Bad Name");
        let e = parse_keel_value(v).unwrap_err();
        assert_eq!(e.status(), keel_status::KEEL_ERR_MANIFEST_SCHEMA);
        assert!(e.message().contains("/name"), "{e}");
        assert!(e.message().contains("rule: pattern"), "{e}");
    }

    #[test]
    fn path_escape_is_refused() {
        let mut v = good();
        v["binary"]["linux"] = Value::from("../evil.so");
        let e = parse_keel_value(v).unwrap_err();
        assert_eq!(e.status(), keel_status::KEEL_ERR_MANIFEST_BAD_PATH);
    }

    #[test]
    fn duplicate_keys_are_refused_with_key_and_path() {
        let e = parse(br#"{"manifest_version": 1, "name": "a", "name": "b"}"#).unwrap_err();
        assert_eq!(e.status(), keel_status::KEEL_ERR_MANIFEST_SCHEMA);
        assert!(e.message().contains("duplicate key \"name\" in the object at /"), "{e}");
        let e = parse(br#"{"manifest_version": 1, "limits": {"a/b": 1, "x": {"k": 1, "k": 2}}}"#).unwrap_err();
        assert!(e.message().contains("\"k\" in the object at /limits/x"), "{e}");
        let e = parse(br#"{"name": "t", "binary": {}, "deps": [{"x": 1}, {"y": 1, "y": 1}]}"#).unwrap_err();
        assert!(e.message().contains("\"y\" in the object at /deps/1"), "{e}");
        assert!(!e.message().contains('\u{0}'), "{e}");
    }

    #[test]
    fn a_json_array_is_an_unknown_format() {
        for doc in [&b"[]"[..], b"[{\"manifest_version\": 1}]", b"\"x\"", b"null"] {
            let e = parse(doc).unwrap_err();
            assert_eq!(e.status(), keel_status::KEEL_ERR_MANIFEST_UNKNOWN_FORMAT, "{e}");
        }
    }

    #[test]
    fn malformed_json_is_parse_error() {
        let e = parse(b"{\"manifest_version\": 1,").unwrap_err();
        assert_eq!(e.status(), keel_status::KEEL_ERR_MANIFEST_PARSE);
    }

    #[test]
    fn bad_dependency_requirement() {
        let mut v = good();
        v["dependencies"]["base"] = Value::from("not a range");
        assert_eq!(
            parse_keel_value(v).unwrap_err().status(),
            keel_status::KEEL_ERR_BAD_VERSION
        );
    }

    #[test]
    fn keel_config_is_checked_against_config_schema_with_its_path() {
        let mut v = good();
        v["config_schema"] = serde_json::json!({
            "type": "object",
            "properties": {"limits": {"type": "object", "properties": {"rows": {"type": "integer"}}}},
            "additionalProperties": false
        });
        v["config"] = serde_json::json!({"limits": {"rows": "ten"}, "extra": 1});
        let e = parse_keel_value(v.clone()).unwrap_err();
        assert_eq!(e.status(), keel_status::KEEL_ERR_MANIFEST_SCHEMA);
        assert!(e.message().contains("at /config/limits/rows"), "{e}");
        assert!(e.message().contains("rule: additionalProperties"), "{e}");
        assert!(e.message().contains("plugin 'echo'"), "{e}");
        v["config"] = serde_json::json!({"limits": {"rows": 10}});
        assert!(parse_keel_value(v.clone()).is_ok());
        // A schema without a config checks nothing.
        v.as_object_mut().unwrap().remove("config");
        assert!(parse_keel_value(v).is_ok());
    }

    #[test]
    fn weak_dependencies_resolve_to_plugins_or_libraries() {
        let mut m = parse_keel_value(good()).unwrap();
        m.weak_dependencies = ["aws-sdk-cpp-s3", "base", "echo", "store"].map(String::from).into();
        let libs = m.resolve_weak_dependencies(|d| ["store", "echo", "base"].contains(&d));
        assert_eq!(libs, ["aws-sdk-cpp-s3", "echo"], "itself is never its own dependency");
        assert_eq!(m.dependencies["store"], "*");
        assert_eq!(m.dependencies["base"], "^1.0", "an explicit requirement is kept");
        assert!(!m.dependencies.contains_key("aws-sdk-cpp-s3"));
        assert!(m.weak_dependencies.is_empty());
    }
}
