//! Push a plugin folder to an OCI registry and pull it back into a content-addressed cache.
//!
//! Artifact (docs/fleet.md): an OCI image manifest with `artifactType`
//! [`media_type::ARTIFACT`], a small JSON config blob ([`media_type::CONFIG`]) and one layer
//! per file of the plugin folder: the manifest ([`media_type::MANIFEST`]), its detached
//! signature ([`media_type::SIGNATURE`], if the folder has one) and one layer per binary the
//! manifest names ([`media_type::BINARY`], with the platform keys that name it). Every layer
//! carries its path in the folder as `org.opencontainers.image.title`.
//!
//! Cache (`cache_dir`): `sha256/<hex of the manifest digest>/` is a complete plugin folder,
//! renamed into place only after every layer was written, synced and matched its digest;
//! `tmp/` holds pulls in progress (never loaded from), `locks/` one lock file per digest so
//! that concurrent pulls of the same digest (threads or processes) download it once.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciImageManifest;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde_json::{json, Value};

use super::{block_on, media_type, ANNOTATION_PLATFORMS, ANNOTATION_TITLE};
use crate::error::{keel_status, Error, Result};
use crate::{bail, err};

/// The largest OCI manifest accepted (bytes).
pub const MAX_OCI_MANIFEST_BYTES: usize = 1 << 20;
/// The largest layer accepted (bytes): a plugin binary.
pub const MAX_LAYER_BYTES: u64 = 1 << 30;
/// The most layers a plugin artifact may have.
pub const MAX_LAYERS: usize = 64;
/// The file in a cached folder naming its plugin manifest, written last: only a complete
/// folder has it (and only complete folders are renamed into the cache).
const MARKER: &str = ".keel-manifest";

/// Credentials for a registry.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Credentials {
    /// No credentials (a public repository, or a registry without authentication).
    #[default]
    Anonymous,
    /// A bearer token sent as `Authorization: Bearer <token>`.
    Bearer(String),
    /// HTTP basic authentication (also used to obtain a token when the registry asks for one).
    Basic { username: String, password: String },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Anonymous => write!(f, "Anonymous"),
            Credentials::Bearer(_) => write!(f, "Bearer(<redacted>)"),
            Credentials::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
        }
    }
}

impl Credentials {
    fn auth(&self) -> RegistryAuth {
        match self {
            Credentials::Anonymous => RegistryAuth::Anonymous,
            Credentials::Bearer(t) => RegistryAuth::Bearer(t.clone()),
            Credentials::Basic { username, password } => RegistryAuth::Basic(username.clone(), password.clone()),
        }
    }
}

/// How to reach a registry.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    pub credentials: Credentials,
    /// Allow plain HTTP to a registry that is not on the loopback interface. Off by default:
    /// remote registries are reached over TLS (rustls, the system's root certificates), and
    /// only `localhost`, `127.0.0.0/8` and `[::1]` are spoken to in plain HTTP.
    pub insecure: bool,
    /// Connect and read timeout of each request.
    pub timeout: Duration,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            credentials: Credentials::Anonymous,
            insecure: false,
            timeout: Duration::from_secs(30),
        }
    }
}

/// A parsed reference `[registry/]repository[:tag][@sha256:<hex>]`.
#[derive(Debug, Clone)]
pub struct OciRef {
    inner: Reference,
}

impl OciRef {
    /// Parse a reference. `KEEL_ERR_OCI_BAD_REFERENCE` for anything that is not one (empty,
    /// control characters or spaces, a bad repository name or tag, a digest that is not
    /// `sha256:` and 64 lower-case hex digits).
    pub fn parse(s: &str) -> Result<OciRef> {
        if s.is_empty() || s.len() > 1024 {
            bail!(
                KEEL_ERR_OCI_BAD_REFERENCE,
                "OCI reference '{s}': empty or longer than 1024 bytes"
            );
        }
        if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
            bail!(
                KEEL_ERR_OCI_BAD_REFERENCE,
                "OCI reference {s:?}: contains whitespace or control characters"
            );
        }
        let inner: Reference = s.parse().map_err(|e| {
            err!(
                KEEL_ERR_OCI_BAD_REFERENCE,
                "OCI reference '{s}': {e} (expected [registry/]repository[:tag][@sha256:<hex>])"
            )
        })?;
        // The distribution spec's grammar, which the parser is lenient about.
        let component_ok = |c: &str| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && c.as_bytes()[0].is_ascii_alphanumeric()
                && c.as_bytes()[c.len() - 1].is_ascii_alphanumeric()
        };
        if !inner.repository().split('/').all(component_ok) {
            bail!(
                KEEL_ERR_OCI_BAD_REFERENCE,
                "OCI reference '{s}': repository '{}' is not lower-case letters, digits and separators",
                inner.repository()
            );
        }
        if let Some(t) = inner.tag() {
            let ok = t.len() <= 128
                && t.as_bytes()[0] != b'.'
                && t.as_bytes()[0] != b'-'
                && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !ok {
                bail!(KEEL_ERR_OCI_BAD_REFERENCE, "OCI reference '{s}': bad tag '{t}'");
            }
        }
        if let Some(d) = inner.digest() {
            let ok = d
                .strip_prefix("sha256:")
                .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
            if !ok {
                bail!(
                    KEEL_ERR_OCI_BAD_REFERENCE,
                    "OCI reference '{s}': digest '{d}' is not sha256:<64 lower-case hex digits>"
                );
            }
        }
        Ok(OciRef { inner })
    }

    /// The registry host (and port) requests go to.
    pub fn registry(&self) -> &str {
        self.inner.resolve_registry()
    }

    pub fn repository(&self) -> &str {
        self.inner.repository()
    }

    pub fn tag(&self) -> Option<&str> {
        self.inner.tag()
    }

    /// The digest the reference pins, if any (`sha256:<hex>`).
    pub fn digest(&self) -> Option<&str> {
        self.inner.digest()
    }

    /// The same repository pinned to `digest`.
    fn at(&self, digest: &str) -> Reference {
        Reference::with_digest(
            self.inner.registry().to_string(),
            self.inner.repository().to_string(),
            digest.to_string(),
        )
    }

    fn whole(&self) -> String {
        self.inner.whole()
    }
}

/// Whether `registry` (`host[:port]`) is on the loopback interface.
pub fn is_loopback(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        registry.rsplit_once(':').map_or(registry, |(h, _)| h)
    };
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Whether requests to `registry` may go over plain HTTP: loopback, or explicitly allowed.
/// Everything else is HTTPS only (no fallback).
fn plain_http_allowed(registry: &str, insecure: bool) -> bool {
    insecure || is_loopback(registry)
}

fn client(r: &OciRef, opts: &RegistryOptions) -> Result<Client> {
    // rustls needs a process-wide crypto provider; ring is the one built in. An embedder
    // that installed its own keeps it.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let registry = r.registry().to_string();
    let protocol = if plain_http_allowed(&registry, opts.insecure) {
        ClientProtocol::HttpsExcept(vec![registry])
    } else {
        ClientProtocol::Https
    };
    let config = ClientConfig {
        protocol,
        connect_timeout: Some(opts.timeout),
        read_timeout: Some(opts.timeout),
        ..Default::default()
    };
    Client::try_from(config).map_err(|e| err!(KEEL_ERR_OCI_PULL_FAILED, "cannot create the OCI client: {e}"))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Manifest,
    Blob,
    Push,
}

/// Say, on an authentication failure, whether credentials were given at all (the registry's
/// own message is the same for none and for wrong ones).
fn auth_hint(e: Error, opts: &RegistryOptions) -> Error {
    if e.status() != keel_status::KEEL_ERR_OCI_AUTH_FAILED {
        return e;
    }
    let hint = match opts.credentials {
        Credentials::Anonymous => "no credentials were given",
        Credentials::Bearer(_) => "the bearer token was refused",
        Credentials::Basic { .. } => "the user name and password were refused",
    };
    Error::new(e.status(), format!("{} ({hint})", e.message()))
}

/// Map an OCI client error to Keel's cause.
fn oci_error(e: OciDistributionError, what: &str, op: Op) -> Error {
    use keel_status::*;
    let transfer = if op == Op::Push {
        KEEL_ERR_OCI_PUSH_FAILED
    } else {
        KEEL_ERR_OCI_PULL_FAILED
    };
    let status = match &e {
        OciDistributionError::AuthenticationFailure(_) | OciDistributionError::UnauthorizedError { .. } => {
            KEEL_ERR_OCI_AUTH_FAILED
        }
        OciDistributionError::ServerError { code: 401 | 403, .. } => KEEL_ERR_OCI_AUTH_FAILED,
        OciDistributionError::ServerError { code: 404, .. } if op == Op::Manifest => KEEL_ERR_OCI_MANIFEST_NOT_FOUND,
        OciDistributionError::ImageManifestNotFoundError(_) => KEEL_ERR_OCI_MANIFEST_NOT_FOUND,
        OciDistributionError::DigestError(_) => KEEL_ERR_OCI_DIGEST_MISMATCH,
        OciDistributionError::RegistryError { envelope, .. } => {
            if envelope
                .errors
                .iter()
                .any(|x| matches!(x.code, OciErrorCode::Unauthorized | OciErrorCode::Denied))
            {
                KEEL_ERR_OCI_AUTH_FAILED
            } else if op == Op::Manifest
                && envelope.errors.iter().any(|x| {
                    matches!(
                        x.code,
                        OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown | OciErrorCode::NotFound
                    )
                })
            {
                KEEL_ERR_OCI_MANIFEST_NOT_FOUND
            } else if envelope
                .errors
                .iter()
                .any(|x| matches!(x.code, OciErrorCode::DigestInvalid))
            {
                KEEL_ERR_OCI_DIGEST_MISMATCH
            } else {
                transfer
            }
        }
        _ => transfer,
    };
    // reqwest's Display omits the cause (e.g. "connection refused"): add the chain.
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    Error::new(status, format!("{what}: {msg}"))
}

// --- push -------------------------------------------------------------------------------

/// One layer of a pushed artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushedLayer {
    pub title: String,
    pub media_type: &'static str,
    pub digest: String,
    pub size: u64,
}

/// What [`push_dir`] published.
#[derive(Debug, Clone)]
pub struct Pushed {
    /// The digest of the OCI manifest (`sha256:<hex>`): pull `repository@digest` to get
    /// exactly these bytes.
    pub digest: String,
    /// The reference pushed to, as given.
    pub reference: String,
    /// `registry/repository@digest`.
    pub pinned: String,
    pub name: String,
    pub version: String,
    pub layers: Vec<PushedLayer>,
}

/// The manifest of a plugin folder (or the manifest file itself).
fn find_manifest(path: &Path) -> Result<PathBuf> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, &e))?;
    if !meta.is_dir() {
        return Ok(path.to_path_buf());
    }
    for n in crate::deps::discover::MANIFEST_NAMES {
        let p = path.join(n);
        if p.symlink_metadata().is_ok() {
            return Ok(p);
        }
    }
    bail!(
        KEEL_ERR_NO_MANIFEST,
        "{}: no keel.json or plugin.json in this plugin folder",
        path.display()
    )
}

/// A relative path inside a plugin folder: normal components only (no `..`, no root, no
/// `.`), at most 8 deep, UTF-8 without control characters or backslashes.
fn folder_path(title: &str) -> Option<PathBuf> {
    if title.is_empty() || title.len() > 1024 || title.chars().any(|c| c.is_control() || c == '\\') {
        return None;
    }
    let p = Path::new(title);
    let n = p.components().count();
    if n == 0 || n > 8 || !p.components().all(|c| matches!(c, Component::Normal(_))) {
        return None;
    }
    Some(p.to_path_buf())
}

fn read_plain_file(path: &Path, cap: u64) -> Result<Vec<u8>> {
    // A binary is never read through a symbolic link (as for a load).
    let (mut f, len) = crate::fsio::open_regular_nofollow(path)?;
    if len > cap {
        bail!(
            KEEL_ERR_FILE_TOO_LARGE,
            "{}: {len} bytes (at most {cap})",
            path.display()
        );
    }
    let mut v = Vec::with_capacity(len as usize);
    std::io::Read::read_to_end(&mut f, &mut v).map_err(|e| Error::io(path, &e))?;
    Ok(v)
}

struct Layer {
    title: String,
    media_type: &'static str,
    data: Vec<u8>,
    annotations: BTreeMap<String, String>,
}

fn descriptor(media_type: &str, data: &[u8], annotations: &BTreeMap<String, String>) -> Value {
    let mut d = json!({
        "mediaType": media_type,
        "digest": format!("sha256:{}", crate::digest::sha256_hex(data)),
        "size": data.len(),
    });
    if !annotations.is_empty() {
        d["annotations"] = json!(annotations);
    }
    d
}

/// Publish the plugin folder `path` (a folder holding `keel.json` or `plugin.json`, or the
/// manifest file itself) as an OCI artifact under `reference` (a tag; a digest is refused:
/// the digest is the result). The manifest is read and validated as a host reads it; the
/// folder's `<manifest>.sig` goes along if present (a host that requires signatures refuses
/// the pull without one, as it refuses the folder). Nothing is checked against a trust
/// store here: every node verifies on its own.
///
/// Errors: `KEEL_ERR_OCI_BAD_REFERENCE`, the manifest's own codes, `KEEL_ERR_FILE_NOT_FOUND`
/// and the file codes for the binaries, `KEEL_ERR_MANIFEST_BAD_PATH` for a binary path that
/// leaves the folder, `KEEL_ERR_OCI_AUTH_FAILED`, `KEEL_ERR_OCI_PUSH_FAILED`.
pub fn push_dir(path: &Path, reference: &str, opts: &RegistryOptions) -> Result<Pushed> {
    push_dir_inner(path, reference, opts).map_err(|e| auth_hint(e, opts))
}

fn push_dir_inner(path: &Path, reference: &str, opts: &RegistryOptions) -> Result<Pushed> {
    let r = OciRef::parse(reference)?;
    if r.digest().is_some() {
        bail!(
            KEEL_ERR_OCI_BAD_REFERENCE,
            "OCI reference '{reference}': push to a tag; the digest is what the push returns"
        );
    }
    let manifest_path = find_manifest(path)?;
    let mf = crate::manifest::read_file(&manifest_path)?;
    let dir = manifest_path.parent().unwrap_or(Path::new("."));
    let manifest_name = manifest_path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| {
            err!(
                KEEL_ERR_INVALID_ARGUMENT,
                "{}: not a file name",
                manifest_path.display()
            )
        })?
        .to_string();

    let mut layers = vec![Layer {
        title: manifest_name.clone(),
        media_type: media_type::MANIFEST,
        data: mf.bytes.clone(),
        annotations: BTreeMap::new(),
    }];
    let sig_path = crate::trust::signature_path(&manifest_path);
    match crate::manifest::read_capped(&sig_path, crate::trust::signature::MAX_SIGNATURE_FILE_BYTES) {
        Ok(sig) => layers.push(Layer {
            title: format!("{manifest_name}.sig"),
            media_type: media_type::SIGNATURE,
            data: sig,
            annotations: BTreeMap::new(),
        }),
        Err(e) if e.status() == keel_status::KEEL_ERR_FILE_NOT_FOUND => {}
        Err(e) => return Err(e),
    }
    // One layer per file, with every platform key that names it.
    let mut files: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (platform, rel) in &mf.manifest.binary {
        files.entry(rel.clone()).or_default().insert(platform.clone());
    }
    for (rel, platforms) in files {
        let Some(p) = folder_path(&rel) else {
            bail!(
                KEEL_ERR_MANIFEST_BAD_PATH,
                "{}: binary path '{rel}' is not a relative path inside the plugin folder",
                manifest_path.display()
            );
        };
        let data = read_plain_file(&dir.join(&p), MAX_LAYER_BYTES)?;
        let mut annotations = BTreeMap::new();
        annotations.insert(
            ANNOTATION_PLATFORMS.to_string(),
            platforms.into_iter().collect::<Vec<_>>().join(","),
        );
        layers.push(Layer {
            title: rel,
            media_type: media_type::BINARY,
            data,
            annotations,
        });
    }
    for l in &mut layers {
        l.annotations.insert(ANNOTATION_TITLE.to_string(), l.title.clone());
    }

    let name = mf.manifest.name.clone();
    let version = mf.manifest.version.to_string();
    let config = json!({
        "name": name,
        "version": version,
        "runtime": serde_json::to_value(mf.manifest.runtime).unwrap_or(Value::Null),
        "manifest": manifest_name,
    });
    let (digest, layers) = push_artifact(
        &r,
        opts,
        media_type::ARTIFACT,
        media_type::CONFIG,
        &config,
        &layers,
        json!({
            "org.opencontainers.image.title": name,
            "org.opencontainers.image.version": version,
        }),
    )?;
    Ok(Pushed {
        pinned: format!("{}/{}@{digest}", r.inner.registry(), r.repository()),
        digest,
        reference: reference.to_string(),
        name,
        version,
        layers,
    })
}

/// Push `layers` and a JSON config blob as one OCI artifact of `artifact_type` under `r`;
/// returns the manifest digest and the layers as pushed.
fn push_artifact(
    r: &OciRef,
    opts: &RegistryOptions,
    artifact_type: &str,
    config_type: &str,
    config: &Value,
    layers: &[Layer],
    annotations: Value,
) -> Result<(String, Vec<PushedLayer>)> {
    let config = serde_json::to_vec(config).map_err(|e| Error::internal(e.to_string()))?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": descriptor(config_type, &config, &BTreeMap::new()),
        "layers": layers.iter().map(|l| descriptor(l.media_type, &l.data, &l.annotations)).collect::<Vec<_>>(),
        "annotations": annotations,
    });
    // serde_json's map is sorted: the bytes are canonical for the same content.
    let body = serde_json::to_vec(&manifest).map_err(|e| Error::internal(e.to_string()))?;
    let digest = format!("sha256:{}", crate::digest::sha256_hex(&body));

    let client = client(r, opts)?;
    let auth = opts.credentials.auth();
    let what = format!("push to '{}'", r.whole());
    block_on(async {
        client.store_auth_if_needed(r.registry(), &auth).await;
        for l in layers {
            let d = format!("sha256:{}", crate::digest::sha256_hex(&l.data));
            client
                .push_blob(&r.inner, l.data.clone(), &d)
                .await
                .map_err(|e| oci_error(e, &format!("{what}: layer '{}'", l.title), Op::Push))?;
        }
        let d = format!("sha256:{}", crate::digest::sha256_hex(&config));
        client
            .push_blob(&r.inner, config.clone(), &d)
            .await
            .map_err(|e| oci_error(e, &format!("{what}: config"), Op::Push))?;
        // The header type is `http`'s, inferred (no direct dependency on `http`).
        let ct = media_type::OCI_MANIFEST
            .parse()
            .map_err(|_| Error::internal("manifest media type is not a header value"))?;
        client
            .push_manifest_raw(&r.inner, body.clone(), ct)
            .await
            .map_err(|e| oci_error(e, &format!("{what}: manifest"), Op::Push))?;
        Ok::<(), Error>(())
    })??;
    let pushed = layers
        .iter()
        .map(|l| PushedLayer {
            title: l.title.clone(),
            media_type: l.media_type,
            digest: format!("sha256:{}", crate::digest::sha256_hex(&l.data)),
            size: l.data.len() as u64,
        })
        .collect();
    Ok((digest, pushed))
}

// --- trust-store artifacts ------------------------------------------------------------------

/// File name of the trust-store layer (and, with `.sig`, of its signature layer).
pub const TRUST_STORE_TITLE: &str = "trust-store.json";

/// Publish a trust store document and its detached Keel signature (made with a root key:
/// `keel trust publish`) under `reference` (a tag). Nothing is verified here beyond the
/// document parsing as a trust store: each following node checks the signature against its
/// own root keys and the version against the store it runs.
///
/// Errors: `KEEL_ERR_OCI_BAD_REFERENCE`, `KEEL_ERR_TRUST_STORE_MALFORMED`,
/// `KEEL_ERR_MALFORMED_SIGNATURE`, `KEEL_ERR_OCI_AUTH_FAILED`, `KEEL_ERR_OCI_PUSH_FAILED`.
pub fn push_trust_store(store: &[u8], signature: &[u8], reference: &str, opts: &RegistryOptions) -> Result<Pushed> {
    push_trust_store_inner(store, signature, reference, opts).map_err(|e| auth_hint(e, opts))
}

fn push_trust_store_inner(store: &[u8], signature: &[u8], reference: &str, opts: &RegistryOptions) -> Result<Pushed> {
    let r = OciRef::parse(reference)?;
    if r.digest().is_some() {
        bail!(
            KEEL_ERR_OCI_BAD_REFERENCE,
            "OCI reference '{reference}': push to a tag; the digest is what the push returns"
        );
    }
    let parsed = crate::trust::TrustStore::from_bytes(store)?;
    crate::trust::signature::parse(signature)?;
    let title = |t: &str| {
        let mut a = BTreeMap::new();
        a.insert(ANNOTATION_TITLE.to_string(), t.to_string());
        a
    };
    let layers = vec![
        Layer {
            title: TRUST_STORE_TITLE.to_string(),
            media_type: media_type::TRUST_STORE,
            data: store.to_vec(),
            annotations: title(TRUST_STORE_TITLE),
        },
        Layer {
            title: format!("{TRUST_STORE_TITLE}.sig"),
            media_type: media_type::TRUST_SIGNATURE,
            data: signature.to_vec(),
            annotations: title(&format!("{TRUST_STORE_TITLE}.sig")),
        },
    ];
    let version = parsed.version().to_string();
    let (digest, layers) = push_artifact(
        &r,
        opts,
        media_type::TRUST_ARTIFACT,
        media_type::TRUST_CONFIG,
        &json!({"version": parsed.version()}),
        &layers,
        json!({"org.opencontainers.image.version": version}),
    )?;
    Ok(Pushed {
        pinned: format!("{}/{}@{digest}", r.inner.registry(), r.repository()),
        digest,
        reference: reference.to_string(),
        name: "trust-store".to_string(),
        version,
        layers,
    })
}

/// A trust-store artifact as pulled: digests checked, signature not yet (see
/// [`crate::fleet::follow`]).
#[derive(Debug, Clone)]
pub struct TrustArtifact {
    pub digest: String,
    pub store: Vec<u8>,
    pub signature: Vec<u8>,
}

/// Pull the trust-store artifact `reference` (one manifest request: a tag is resolved here).
/// `None` when it resolves to `known_digest` (nothing downloaded). Every blob is checked
/// against its digest and a size cap.
pub fn pull_trust_store(
    reference: &str,
    opts: &RegistryOptions,
    known_digest: Option<&str>,
) -> Result<Option<TrustArtifact>> {
    pull_trust_store_inner(reference, opts, known_digest).map_err(|e| auth_hint(e, opts))
}

fn pull_trust_store_inner(
    reference: &str,
    opts: &RegistryOptions,
    known_digest: Option<&str>,
) -> Result<Option<TrustArtifact>> {
    let r = OciRef::parse(reference)?;
    let client = client(&r, opts)?;
    let auth = opts.credentials.auth();
    let what = format!("pull of trust store '{}'", r.whole());
    block_on(async {
        client.store_auth_if_needed(r.registry(), &auth).await;
        let (m, digest) = pull_manifest(&client, &r, &auth, &what).await?;
        if known_digest == Some(digest.as_str()) {
            return Ok(None);
        }
        let not_it = |why: String| {
            err!(
                KEEL_ERR_OCI_NOT_A_PLUGIN,
                "{what}: not a Keel trust-store artifact: {why}"
            )
        };
        if m.config.media_type != media_type::TRUST_CONFIG {
            return Err(not_it(format!("config media type '{}'", m.config.media_type)));
        }
        let find = |t: &str| {
            let mut it = m.layers.iter().filter(|l| l.media_type == t);
            match (it.next(), it.next()) {
                (Some(l), None) => Ok(l.clone()),
                _ => Err(not_it(format!("not exactly one layer of media type {t}"))),
            }
        };
        let (store_desc, sig_desc) = (find(media_type::TRUST_STORE)?, find(media_type::TRUST_SIGNATURE)?);
        let pinned = r.at(&digest);
        let fetch = async |d: &oci_client::manifest::OciDescriptor, cap: u64, name: &str| {
            if d.size < 0 || d.size as u64 > cap {
                return Err(not_it(format!("{name} of {} bytes (at most {cap})", d.size)));
            }
            let mut w = Capped::new(Vec::new(), d.size as u64);
            let res = client.pull_blob(&pinned, d, &mut w).await;
            if w.overflow {
                bail!(
                    KEEL_ERR_OCI_DIGEST_MISMATCH,
                    "{what}: {name} is longer than its descriptor says"
                );
            }
            res.map_err(|e| oci_error(e, &format!("{what}: {name}"), Op::Blob))?;
            Ok(w.sink)
        };
        let store = fetch(&store_desc, crate::trust::store::MAX_TRUST_STORE_BYTES, "trust store").await?;
        let signature = fetch(
            &sig_desc,
            crate::trust::signature::MAX_SIGNATURE_FILE_BYTES,
            "signature",
        )
        .await?;
        Ok(Some(TrustArtifact {
            digest,
            store,
            signature,
        }))
    })?
}

// --- pull -------------------------------------------------------------------------------

/// What a pull produced: a complete, digest-checked plugin folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pulled {
    /// The OCI manifest digest the reference resolved to (`sha256:<hex>`).
    pub digest: String,
    /// The plugin folder.
    pub dir: PathBuf,
    /// The plugin manifest inside it (what a host loads).
    pub manifest_path: PathBuf,
    /// The folder was already in the cache: no blob was downloaded (and, for a reference
    /// with a digest, the registry was not contacted at all).
    pub cache_hit: bool,
}

/// A writer for one blob: refuses to grow past the size its descriptor announced.
struct Capped<W> {
    sink: W,
    written: u64,
    cap: u64,
    overflow: bool,
}

impl<W> Capped<W> {
    fn new(sink: W, cap: u64) -> Capped<W> {
        Capped {
            sink,
            written: 0,
            cap,
            overflow: false,
        }
    }
}

impl<W: std::io::Write + Unpin> tokio::io::AsyncWrite for Capped<W> {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.written + buf.len() as u64 > this.cap {
            this.overflow = true;
            return Poll::Ready(Err(std::io::Error::other("blob is larger than its descriptor says")));
        }
        let r = this.sink.write(buf);
        if let Ok(n) = r {
            this.written += n as u64;
        }
        Poll::Ready(r)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A layer of a plugin artifact, checked.
struct PlannedLayer {
    desc: oci_client::manifest::OciDescriptor,
    path: PathBuf,
}

/// Check that `m` is a Keel plugin artifact; return its layers with their folder paths and
/// the manifest's file name.
fn plan(m: &OciImageManifest, what: &str) -> Result<(Vec<PlannedLayer>, String)> {
    let not_plugin = |why: String| err!(KEEL_ERR_OCI_NOT_A_PLUGIN, "{what}: not a Keel plugin artifact: {why}");
    if m.config.media_type != media_type::CONFIG {
        return Err(not_plugin(format!("config media type '{}'", m.config.media_type)));
    }
    if m.layers.is_empty() || m.layers.len() > MAX_LAYERS {
        return Err(not_plugin(format!("{} layers (1 to {MAX_LAYERS})", m.layers.len())));
    }
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    let mut manifest_name = None;
    let mut sig_name = None;
    for l in &m.layers {
        let title = l
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANNOTATION_TITLE))
            .ok_or_else(|| not_plugin(format!("layer {} has no {ANNOTATION_TITLE}", l.digest)))?;
        let path = folder_path(title).ok_or_else(|| not_plugin(format!("layer path '{title}' leaves the folder")))?;
        if title == MARKER {
            return Err(not_plugin(format!("layer path '{title}' is reserved")));
        }
        if !seen.insert(path.clone()) {
            return Err(not_plugin(format!("two layers for '{title}'")));
        }
        if l.size < 0 || l.size as u64 > MAX_LAYER_BYTES {
            return Err(not_plugin(format!("layer '{title}' size {}", l.size)));
        }
        let single = path.components().count() == 1;
        match l.media_type.as_str() {
            media_type::MANIFEST if single && manifest_name.is_none() => manifest_name = Some(title.clone()),
            media_type::SIGNATURE if single && sig_name.is_none() => sig_name = Some(title.clone()),
            media_type::BINARY => {}
            other => return Err(not_plugin(format!("layer '{title}' of media type '{other}'"))),
        }
        out.push(PlannedLayer { desc: l.clone(), path });
    }
    let manifest_name = manifest_name.ok_or_else(|| not_plugin("no manifest layer".into()))?;
    if let Some(s) = sig_name {
        if s != format!("{manifest_name}.sig") {
            return Err(not_plugin(format!("signature '{s}' is not '{manifest_name}.sig'")));
        }
    }
    Ok((out, manifest_name))
}

fn create_dir_all(p: &Path) -> Result<()> {
    std::fs::create_dir_all(p).map_err(|e| Error::io(p, &e))
}

fn digest_hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

/// The cached folder of `digest`, if complete (only complete folders are ever renamed in).
fn cached(cache_dir: &Path, digest: &str) -> Result<Option<Pulled>> {
    let dir = cache_dir.join("sha256").join(digest_hex(digest));
    let marker = dir.join(MARKER);
    match std::fs::read_to_string(&marker) {
        Ok(name) => {
            let name = name.trim();
            let ok = folder_path(name).is_some_and(|p| p.components().count() == 1);
            if !ok {
                bail!(KEEL_ERR_IO, "{}: corrupt cache entry", marker.display());
            }
            touch(&marker);
            Ok(Some(Pulled {
                digest: digest.to_string(),
                manifest_path: dir.join(name),
                dir,
                cache_hit: true,
            }))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(&marker, &e)),
    }
}

/// How stale an entry's last-use time may be before a use rewrites it: eviction order needs no
/// finer resolution, and a cache hit then costs a `stat` instead of an inode write.
const USE_RESOLUTION: Duration = Duration::from_secs(60);

/// Note a use of a cache entry: its marker's modification time is the entry's last use, which
/// [`prune_cache`] evicts by (least recently used first), rewritten only when older than
/// [`USE_RESOLUTION`]. Best effort: a read-only cache keeps its times.
fn touch(marker: &Path) {
    let now = std::time::SystemTime::now();
    let fresh = std::fs::metadata(marker)
        .and_then(|m| m.modified())
        .is_ok_and(|t| now.duration_since(t).is_ok_and(|age| age < USE_RESOLUTION));
    if fresh {
        return;
    }
    if let Ok(f) = std::fs::OpenOptions::new().write(true).open(marker) {
        let _ = f.set_modified(now);
    }
}

/// An exclusive lock on one digest of a cache (released when dropped).
struct DigestLock {
    _file: std::fs::File,
}

fn lock_digest(cache_dir: &Path, digest: &str) -> Result<DigestLock> {
    let file = lock_file(cache_dir, digest)?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| err!(KEEL_ERR_IO, "{}: cannot lock: {e}", digest_hex(digest)))?;
    Ok(DigestLock { _file: file })
}

/// The lock file of one digest (opened, not locked; `locks/` made on first use).
fn lock_file(cache_dir: &Path, digest: &str) -> Result<std::fs::File> {
    let locks = cache_dir.join("locks");
    let p = locks.join(format!("{}.lock", digest_hex(digest)));
    let open = || {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
    };
    match open() {
        Ok(f) => Ok(f),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            create_dir_all(&locks)?;
            open().map_err(|e| Error::io(&p, &e))
        }
        Err(e) => Err(Error::io(&p, &e)),
    }
}

/// A hold on a cached plugin folder: a shared lock on its digest's lock file, which a host
/// keeps while it has a plugin loaded from the folder (reload reads it again). [`prune_cache`]
/// never removes a held folder, whichever process holds it (`flock` locks are per open file,
/// so this holds against the same process too). Released when dropped.
#[derive(Debug)]
pub struct CacheHold {
    _file: std::fs::File,
    digest: String,
}

impl CacheHold {
    /// The digest of the held folder.
    pub fn digest(&self) -> &str {
        &self.digest
    }
}

/// Hold the cached folder of `digest`: `None` if it is not (or no longer) in the cache, e.g.
/// pruned between a pull and this call.
pub fn hold(cache_dir: &Path, digest: &str) -> Result<Option<CacheHold>> {
    let file = lock_file(cache_dir, digest)?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockShared)
        .map_err(|e| err!(KEEL_ERR_IO, "{}: cannot lock: {e}", digest_hex(digest)))?;
    // Complete entries only ever appear by rename with their marker, and leave by rename:
    // the marker's presence under the lock is the answer.
    let marker = cache_dir.join("sha256").join(digest_hex(digest)).join(MARKER);
    match std::fs::symlink_metadata(&marker) {
        Ok(_) => Ok(Some(CacheHold {
            _file: file,
            digest: digest.to_string(),
        })),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(&marker, &e)),
    }
}

/// What [`prune_cache`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    /// The digests removed, least recently used first.
    pub removed: Vec<String>,
    /// Entries left in the cache, and their bytes.
    pub kept: usize,
    pub kept_bytes: u64,
    /// Entries that would have been removed but are held (a host has a plugin loaded from
    /// them) or being pulled right now.
    pub busy: usize,
}

fn dir_bytes(p: &Path) -> u64 {
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => n += dir_bytes(&e.path()),
                Ok(_) => n += e.metadata().map_or(0, |m| m.len()),
                Err(_) => {}
            }
        }
    }
    n
}

/// Evict least recently used entries of the cache `cache_dir` until its plugin folders take
/// at most `max_bytes` (0: remove every entry that is not held). An entry's last use is its
/// last pull or cache hit. Held entries (a plugin loaded from them, in any process: see
/// [`CacheHold`]) and entries being pulled are skipped. An entry is removed under its digest's
/// exclusive lock by renaming it out of `sha256/` first, so a concurrent load sees it either
/// complete or absent (and pulls it again). Leftovers of interrupted pulls in `tmp/` older
/// than an hour are removed too.
///
/// Errors: `KEEL_ERR_FILE_NOT_FOUND` (`cache_dir` does not exist), `KEEL_ERR_IO`.
pub fn prune_cache(cache_dir: &Path, max_bytes: u64) -> Result<Pruned> {
    if !cache_dir.is_dir() {
        bail!(KEEL_ERR_FILE_NOT_FOUND, "{}: no such cache folder", cache_dir.display());
    }
    let root = cache_dir.join("sha256");
    let mut entries = Vec::new();
    match std::fs::read_dir(&root) {
        Ok(rd) => {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let digest = format!("sha256:{name}");
                let marker = e.path().join(MARKER);
                let Ok(meta) = std::fs::metadata(&marker) else {
                    continue; // not a cache entry (pull() replaces such folders)
                };
                let used = meta.modified().unwrap_or(std::time::SystemTime::UNIX_EPOCH);
                entries.push((used, digest, e.path(), dir_bytes(&e.path())));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(&root, &e)),
    }
    entries.sort();
    let mut total: u64 = entries.iter().map(|e| e.3).sum();
    let mut out = Pruned::default();
    let tmp_root = cache_dir.join("tmp");
    for (_, digest, path, bytes) in &entries {
        if total <= max_bytes {
            break;
        }
        let file = lock_file(cache_dir, digest)?;
        if rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
            out.busy += 1;
            continue;
        }
        create_dir_all(&tmp_root)?;
        let gone = tmp_root.join(format!("{}.evicted.{}", digest_hex(digest), std::process::id()));
        let _ = std::fs::remove_dir_all(&gone);
        std::fs::rename(path, &gone).map_err(|e| Error::io(path, &e))?;
        sync_dir(&root);
        let _ = std::fs::remove_dir_all(&gone);
        drop(file);
        total -= bytes;
        out.removed.push(digest.clone());
    }
    out.kept = entries.len() - out.removed.len();
    out.kept_bytes = total;
    // Leftovers of pulls that died (a live pull holds its digest's lock and is younger).
    if let Ok(rd) = std::fs::read_dir(&tmp_root) {
        let hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
        for e in rd.flatten() {
            let old = e.metadata().and_then(|m| m.modified()).is_ok_and(|t| t < hour_ago);
            if old {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    Ok(out)
}

fn sync_dir(p: &Path) {
    if let Ok(d) = std::fs::File::open(p) {
        let _ = d.sync_all();
    }
}

/// Pull `reference` into the content-addressed cache `cache_dir` (created if missing) and
/// return the plugin folder. A reference with a digest that is cached is a cache hit with no
/// network access; a tag is resolved once (one manifest request) and its digest reported;
/// blobs are downloaded only for a digest not yet cached, once even when several threads or
/// processes pull it at the same time. Every blob is checked against its descriptor's digest
/// and size, and the OCI manifest against the reference's digest; the folder is renamed into
/// the cache only when complete and synced, so an interrupted pull leaves nothing a later
/// pull trusts. What is in the folder is then for the host's trust chain to accept or refuse.
///
/// Errors: `KEEL_ERR_OCI_BAD_REFERENCE`, `KEEL_ERR_OCI_MANIFEST_NOT_FOUND`,
/// `KEEL_ERR_OCI_DIGEST_MISMATCH`, `KEEL_ERR_OCI_NOT_A_PLUGIN`, `KEEL_ERR_OCI_AUTH_FAILED`,
/// `KEEL_ERR_OCI_PULL_FAILED` (registry unreachable, protocol error, a blob missing),
/// `KEEL_ERR_IO` (the cache directory).
pub fn pull_to_cache(reference: &str, cache_dir: &Path, opts: &RegistryOptions) -> Result<Pulled> {
    pull_to_cache_inner(reference, cache_dir, opts).map_err(|e| auth_hint(e, opts))
}

fn pull_to_cache_inner(reference: &str, cache_dir: &Path, opts: &RegistryOptions) -> Result<Pulled> {
    let r = OciRef::parse(reference)?;
    if let Some(d) = r.digest() {
        if let Some(hit) = cached(cache_dir, d)? {
            return Ok(hit);
        }
    }
    create_dir_all(cache_dir)?;
    let client = client(&r, opts)?;
    let auth = opts.credentials.auth();
    let what = format!("pull of '{}'", r.whole());
    block_on(async {
        client.store_auth_if_needed(r.registry(), &auth).await;
        let (m, digest) = pull_manifest(&client, &r, &auth, &what).await?;
        if let Some(hit) = cached(cache_dir, &digest)? {
            return Ok(hit);
        }
        let _lock = lock_digest(cache_dir, &digest)?;
        // Another puller may have finished while this one waited for the lock.
        if let Some(hit) = cached(cache_dir, &digest)? {
            return Ok(hit);
        }
        let hex = digest_hex(&digest).to_string();
        let tmp_root = cache_dir.join("tmp");
        create_dir_all(&tmp_root)?;
        // Leftovers of an interrupted pull of this digest (no one else holds its lock).
        if let Ok(rd) = std::fs::read_dir(&tmp_root) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(&format!("{hex}.")) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let tmp = tmp_root.join(format!("{hex}.{}", std::process::id()));
        let name = download(&client, &r, &m, &digest, &tmp, &what, Layers::ThisPlatform).await;
        let name = match name {
            Ok(n) => n,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(e);
            }
        };
        let final_root = cache_dir.join("sha256");
        create_dir_all(&final_root)?;
        let dest = final_root.join(&hex);
        // A folder there without the marker is no cache entry (none is ever renamed in
        // incomplete; someone made it by hand): nothing loads from it, replace it.
        if dest.symlink_metadata().is_ok() {
            let _ = std::fs::remove_dir_all(&dest).or_else(|_| std::fs::remove_file(&dest));
        }
        if let Err(e) = std::fs::rename(&tmp, &dest) {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(Error::io(&dest, &e));
        }
        sync_dir(&final_root);
        Ok(Pulled {
            digest,
            manifest_path: dest.join(name),
            dir: dest,
            cache_hit: false,
        })
    })?
}

/// Pull `reference` into the new folder `dir` (which must not exist, or be empty): the
/// reverse of [`push_dir`]. Same checks as [`pull_to_cache`]; no cache.
pub fn pull_to_dir(reference: &str, dir: &Path, opts: &RegistryOptions) -> Result<Pulled> {
    pull_to_dir_inner(reference, dir, opts).map_err(|e| auth_hint(e, opts))
}

fn pull_to_dir_inner(reference: &str, dir: &Path, opts: &RegistryOptions) -> Result<Pulled> {
    let r = OciRef::parse(reference)?;
    if let Ok(mut rd) = std::fs::read_dir(dir) {
        if rd.next().is_some() {
            bail!(
                KEEL_ERR_IO,
                "{}: exists and is not empty (refusing to overwrite)",
                dir.display()
            );
        }
    }
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    create_dir_all(parent)?;
    let base = dir
        .file_name()
        .ok_or_else(|| err!(KEEL_ERR_INVALID_ARGUMENT, "{}: not a folder name", dir.display()))?
        .to_string_lossy()
        .to_string();
    let tmp = parent.join(format!(".{base}.{}.part", std::process::id()));
    let client = client(&r, opts)?;
    let auth = opts.credentials.auth();
    let what = format!("pull of '{}'", r.whole());
    block_on(async {
        client.store_auth_if_needed(r.registry(), &auth).await;
        let (m, digest) = pull_manifest(&client, &r, &auth, &what).await?;
        let _ = std::fs::remove_dir_all(&tmp);
        let name = match download(&client, &r, &m, &digest, &tmp, &what, Layers::All).await {
            Ok(n) => n,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(e);
            }
        };
        let _ = std::fs::remove_file(tmp.join(MARKER));
        let _ = std::fs::remove_dir(dir);
        if let Err(e) = std::fs::rename(&tmp, dir) {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(Error::io(dir, &e));
        }
        Ok(Pulled {
            digest,
            manifest_path: dir.join(name),
            dir: dir.to_path_buf(),
            cache_hit: false,
        })
    })?
}

/// Fetch the OCI manifest of `r` (one request: a tag is resolved here, once) and check it.
async fn pull_manifest(
    client: &Client,
    r: &OciRef,
    auth: &RegistryAuth,
    what: &str,
) -> Result<(OciImageManifest, String)> {
    let (body, digest) = client
        .pull_manifest_raw(&r.inner, auth, &[media_type::OCI_MANIFEST])
        .await
        .map_err(|e| oci_error(e, what, Op::Manifest))?;
    if body.len() > MAX_OCI_MANIFEST_BYTES {
        bail!(
            KEEL_ERR_OCI_NOT_A_PLUGIN,
            "{what}: manifest of {} bytes (at most {MAX_OCI_MANIFEST_BYTES})",
            body.len()
        );
    }
    // The digest is the one of the bytes received, whatever a header said.
    let actual = format!("sha256:{}", crate::digest::sha256_hex(&body));
    let expected = r.digest().unwrap_or(&digest);
    if actual != expected || actual != digest {
        bail!(
            KEEL_ERR_OCI_DIGEST_MISMATCH,
            "{what}: manifest digest is {actual}, expected {expected}"
        );
    }
    let m: OciImageManifest = serde_json::from_slice(&body).map_err(|e| {
        err!(
            KEEL_ERR_OCI_NOT_A_PLUGIN,
            "{what}: manifest is not an OCI image manifest: {e}"
        )
    })?;
    if m.media_type.as_deref().is_some_and(|t| t != media_type::OCI_MANIFEST) {
        bail!(
            KEEL_ERR_OCI_NOT_A_PLUGIN,
            "{what}: manifest media type '{}'",
            m.media_type.as_deref().unwrap_or("")
        );
    }
    Ok((m, actual))
}

/// Download every layer of `m` into the new folder `tmp`, each checked against its digest
/// and size, synced; returns the plugin manifest's file name.
/// Which binary layers a pull downloads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Layers {
    /// Every layer (`keel pull`: the folder as it was pushed).
    All,
    /// The manifest, its signature, and only the binaries whose platform keys include one this
    /// machine loads (the cache: a host loads only those; the manifest's pins of the others
    /// are never checked here).
    ThisPlatform,
}

/// Whether a layer is downloaded under `which`: every non-binary layer, a binary without
/// platform annotation, a binary for one of this machine's platform keys.
fn wanted(desc: &oci_client::manifest::OciDescriptor, which: Layers) -> bool {
    if which == Layers::All || desc.media_type != media_type::BINARY {
        return true;
    }
    let Some(platforms) = desc.annotations.as_ref().and_then(|a| a.get(ANNOTATION_PLATFORMS)) else {
        return true;
    };
    let mine: Vec<String> = [crate::manifest::RuntimeKind::Native, crate::manifest::RuntimeKind::Wasm]
        .into_iter()
        .flat_map(crate::manifest::platform_keys)
        .collect();
    platforms.split(',').any(|p| mine.iter().any(|m| m == p.trim()))
}

async fn download(
    client: &Client,
    r: &OciRef,
    m: &OciImageManifest,
    digest: &str,
    tmp: &Path,
    what: &str,
    which: Layers,
) -> Result<String> {
    let (mut layers, manifest_name) = plan(m, what)?;
    layers.retain(|l| wanted(&l.desc, which));
    let pinned = r.at(digest);
    // The config blob: small, checked like every blob (its content is informational).
    if m.config.size < 0 || m.config.size > 64 << 10 {
        bail!(KEEL_ERR_OCI_NOT_A_PLUGIN, "{what}: config of {} bytes", m.config.size);
    }
    create_dir_all(tmp)?;
    for l in &layers {
        let p = tmp.join(&l.path);
        if let Some(parent) = p.parent() {
            create_dir_all(parent)?;
        }
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&p)
            .map_err(|e| Error::io(&p, &e))?;
        let mut w = Capped::new(file, l.desc.size as u64);
        let title = l.path.display();
        let res = client.pull_blob(&pinned, &l.desc, &mut w).await;
        if w.overflow {
            bail!(
                KEEL_ERR_OCI_DIGEST_MISMATCH,
                "{what}: layer '{title}' is longer than its descriptor's {} bytes",
                l.desc.size
            );
        }
        res.map_err(|e| oci_error(e, &format!("{what}: layer '{title}'"), Op::Blob))?;
        if w.written != l.desc.size as u64 {
            bail!(
                KEEL_ERR_OCI_DIGEST_MISMATCH,
                "{what}: layer '{title}' has {} bytes, its descriptor says {}",
                w.written,
                l.desc.size
            );
        }
        w.sink.sync_all().map_err(|e| Error::io(&p, &e))?;
    }
    let mut config = Capped::new(Vec::new(), m.config.size as u64);
    let res = client.pull_blob(&pinned, &m.config, &mut config).await;
    if config.overflow {
        bail!(
            KEEL_ERR_OCI_DIGEST_MISMATCH,
            "{what}: config is longer than its descriptor says"
        );
    }
    res.map_err(|e| oci_error(e, &format!("{what}: config"), Op::Blob))?;
    let marker = tmp.join(MARKER);
    std::fs::write(&marker, manifest_name.as_bytes()).map_err(|e| Error::io(&marker, &e))?;
    if let Ok(f) = std::fs::File::open(&marker) {
        let _ = f.sync_all();
    }
    sync_dir(tmp);
    Ok(manifest_name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_or_get_the_bad_reference_code() {
        let r = OciRef::parse("127.0.0.1:5000/keel/echo:1.0").unwrap();
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "keel/echo");
        assert_eq!(r.tag(), Some("1.0"));
        let d = format!("sha256:{}", "a".repeat(64));
        let r = OciRef::parse(&format!("localhost:5000/echo@{d}")).unwrap();
        assert_eq!(r.digest(), Some(d.as_str()));
        for bad in [
            "",
            "UPPER/case",
            "a b",
            "reg/x@sha256:abc",
            "reg/x@md5:0123",
            "reg/x:tag\n",
            "reg//x",
        ] {
            let e = OciRef::parse(bad).unwrap_err();
            assert_eq!(e.status(), keel_status::KEEL_ERR_OCI_BAD_REFERENCE, "{bad:?}: {e}");
        }
    }

    #[test]
    fn only_loopback_registries_are_plain_http_by_default() {
        for l in ["localhost:5000", "127.0.0.1:80", "127.1.2.3", "[::1]:5000", "LOCALHOST"] {
            assert!(is_loopback(l), "{l}");
        }
        for r in [
            "registry.example.com",
            "10.0.0.1:5000",
            "[2001:db8::1]:5000",
            "localhost.evil.com",
        ] {
            assert!(!is_loopback(r), "{r}");
        }
    }

    #[test]
    fn remote_registries_get_tls_unless_explicitly_insecure() {
        assert!(plain_http_allowed("127.0.0.1:5000", false));
        assert!(!plain_http_allowed("registry.example.com", false));
        assert!(!plain_http_allowed("ghcr.io", false));
        assert!(plain_http_allowed("registry.example.com", true));
        // The client's choice follows: the scheme oci-client will use for each.
        let r = OciRef::parse("registry.example.com/plugins/echo:1").unwrap();
        assert!(client(&r, &RegistryOptions::default()).is_ok());
    }

    #[test]
    fn layer_paths_stay_inside_the_folder() {
        assert!(folder_path("libecho.so").is_some());
        assert!(folder_path("lib/x86_64/libecho.so").is_some());
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "./x", "a\\b", "a\nb"] {
            assert!(folder_path(bad).is_none(), "{bad:?}");
        }
    }
}
