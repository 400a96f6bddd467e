//! Fleet distribution: signed plugins published to and pulled from an OCI registry.
//!
//! A plugin folder (manifest, detached `.sig`, one binary per platform key) is published as
//! one OCI artifact ([`oci::push_dir`], `keel push`) and pulled by reference into a
//! content-addressed cache ([`oci::pull_to_cache`], `Host::load_oci`, `keel_host_load_oci`).
//! Keel never trusts the transport: the registry's digests protect the bytes on the way
//! (every blob is checked against the digest its manifest names, the manifest against the
//! digest of the reference), and the plugin is then loaded from the cache folder through the
//! same trust chain as any local folder (signature against the host's trust store, binary
//! pin). See docs/fleet.md for the artifact format and the cache layout.
//!
//! The OCI client (`oci-client`, rustls) is async: each pull or push builds a tokio
//! current-thread runtime for its own duration ([`block_on`]) and drops it before returning.
//! A host that never pulls starts no thread, and nothing here is on the call path.
//!
//! Layering: this module uses `manifest`, `trust` (paths only) and `error`; it never imports
//! the host.

pub mod follow;
pub mod oci;

use std::future::Future;

use crate::error::{Error, Result};

pub use follow::{FollowConfig, FollowMetrics, FollowStatus, TrustFollower};
pub use oci::{
    hold, prune_cache, pull_to_cache, pull_to_dir, pull_trust_store, push_dir, push_trust_store, CacheHold,
    Credentials, OciRef, Pruned, Pulled, Pushed, RegistryOptions, TrustArtifact,
};

/// Media types of a Keel plugin artifact (documented in docs/fleet.md).
pub mod media_type {
    /// The artifact type (`artifactType` of the OCI image manifest).
    pub const ARTIFACT: &str = "application/vnd.keel.plugin.v1";
    /// The config blob: `{"name", "version", "runtime", "manifest"}` (JSON).
    pub const CONFIG: &str = "application/vnd.keel.plugin.config.v1+json";
    /// The plugin manifest layer (`keel.json` or ThemisDB `plugin.json`, bytes as signed).
    pub const MANIFEST: &str = "application/vnd.keel.plugin.manifest.v1+json";
    /// The detached signature layer (`<manifest>.sig`).
    pub const SIGNATURE: &str = "application/vnd.keel.plugin.signature.v1";
    /// One binary layer per file the manifest names (annotation `dev.keel.platforms` lists
    /// the platform keys that name it).
    pub const BINARY: &str = "application/vnd.keel.plugin.binary.v1";
    /// A trust store published for following nodes (artifact type).
    pub const TRUST_ARTIFACT: &str = "application/vnd.keel.trust-store.v1";
    /// Its config blob: `{"version": N}`.
    pub const TRUST_CONFIG: &str = "application/vnd.keel.trust-store.config.v1+json";
    /// The trust store document (docs/trust.md's format).
    pub const TRUST_STORE: &str = "application/vnd.keel.trust-store.v1+json";
    /// Its detached Keel signature, made with a root key.
    pub const TRUST_SIGNATURE: &str = "application/vnd.keel.trust-store.signature.v1";
    /// The OCI image manifest itself.
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
}

/// Annotation naming a layer's path inside the plugin folder (OCI's standard title).
pub const ANNOTATION_TITLE: &str = "org.opencontainers.image.title";
/// Annotation listing the platform keys (comma-separated) of a binary layer.
pub const ANNOTATION_PLATFORMS: &str = "dev.keel.platforms";

/// Run `fut` to completion on a tokio current-thread runtime made for this call and dropped
/// afterwards (with it, any blocking-pool thread it started). Called on a thread that is
/// itself inside a tokio runtime (an async embedder), the work moves to a scoped thread:
/// a runtime cannot be entered twice.
pub(crate) fn block_on<F>(fut: F) -> Result<F::Output>
where
    F: Future + Send,
    F::Output: Send,
{
    let run = move || -> Result<F::Output> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::internal(format!("cannot start the OCI client's runtime: {e}")))?;
        Ok(rt.block_on(fut))
    };
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|s| {
            s.spawn(run)
                .join()
                .unwrap_or_else(|_| Err(Error::internal("the OCI client's thread panicked")))
        })
    } else {
        run()
    }
}
