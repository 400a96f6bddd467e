//! The load pipeline: how a manifest becomes one generation of a plugin.
//!
//! ```text
//! manifest ──► trust ──────────► deps / capabilities ──► artifact ─────────► runtime ──► registry
//! (read by     (signature of     (granted set frozen,    (binary read once,  (native,    (Generation,
//!  the caller)  the manifest)     load order planned)     digest checked)     legacy,     installed in
//!                                                                             wasm)       a Slot)
//! ```
//!
//! `Pipeline::admit` runs the checks that need no plugin code (trust, capabilities) once
//! per manifest; `plan` orders a set by its dependencies; `Pipeline::build` reads and
//! verifies the binary (`verified_binary`) and starts it with the runtime its manifest names.
//! Nothing of a plugin's code runs before its digest has been checked.

use std::sync::Arc;

use parking_lot::RwLock;

use crate::artifact::{self, Verified};
use crate::capability::Capabilities;
use crate::deps;
use crate::error::Result;
use crate::manifest::{BinaryRef, Manifest, ManifestFile};
use crate::registry::Generation;
use crate::runtime::{HostServices, LoadContext, LogLevel, Runtimes};
use crate::trust::{Policy, TrustReport, TrustState};

/// Capabilities a node allows unless configured otherwise: the ones that reach nothing
/// outside the plugin's own namespace.
pub fn default_allowlist() -> Capabilities {
    Capabilities::parse(&["log", "clock", "random", "kv:read", "kv:write", "metrics:write"])
        .unwrap_or(Capabilities::NONE)
}

/// The capability check of a load: the manifest's capability names must all be known
/// (`KEEL_ERR_CAPABILITY_UNKNOWN`) and inside `allowlist` (`KEEL_ERR_CAPABILITY_DENIED`).
/// Returns the set the plugin is granted. The load pipeline and `keel validate` both run it.
pub fn check_capabilities(m: &Manifest, allowlist: Capabilities) -> Result<Capabilities> {
    let requested = Capabilities::parse(&m.capabilities).map_err(|e| e.context(format!("plugin '{}'", m.name)))?;
    Capabilities::check_allowed(requested, allowlist, &m.name)?;
    Ok(requested)
}

/// What the stages need from the host: trust store and policy, the node's capability
/// allowlist, the services lent to plugins and the runtimes.
pub(crate) struct Pipeline {
    trust: Arc<TrustState>,
    allowlist: RwLock<Capabilities>,
    services: HostServices,
    runtimes: Arc<Runtimes>,
}

/// A manifest that passed the trust and capability checks, with the capability set it is
/// granted (frozen from here on).
pub(crate) struct Admitted<'a> {
    pub(crate) file: &'a ManifestFile,
    pub(crate) granted: Capabilities,
    /// How the manifest's authenticity was established.
    pub(crate) trust: TrustReport,
}

impl Pipeline {
    pub(crate) fn new(trust: Arc<TrustState>, runtimes: Arc<Runtimes>, services: HostServices) -> Pipeline {
        Pipeline {
            trust,
            allowlist: RwLock::new(default_allowlist()),
            services,
            runtimes,
        }
    }

    /// What the host lends plugins (log, key-value store, metric registry, RPC table).
    pub(crate) fn services(&self) -> &HostServices {
        &self.services
    }

    /// Drop what `plugin` registered with the host's services: its metric series and its RPC
    /// endpoints (on unload, and when its first load fails).
    pub(crate) fn forget_plugin(&self, plugin: &str) {
        self.services.metrics.forget(plugin);
        self.services.rpc.forget(plugin);
    }

    pub(crate) fn trust(&self) -> &TrustState {
        &self.trust
    }

    pub(crate) fn allowlist(&self) -> Capabilities {
        *self.allowlist.read()
    }

    pub(crate) fn set_allowlist(&self, allow: Capabilities) {
        *self.allowlist.write() = allow;
    }

    /// trust → capabilities: the manifest's signature under the host's policy, then its
    /// requested capabilities against the allowlist. The one capability check of a load.
    pub(crate) fn admit<'a>(&self, f: &'a ManifestFile) -> Result<Admitted<'a>> {
        let trust = self.trust.verify_manifest(&f.path, &f.bytes, &f.manifest.name)?;
        if f.manifest.is_unpinned() && !self.trust.policy().allow_unpinned {
            // Refused before anything of the set is built (read_verified checks it again).
            artifact::read_verified(f, artifact::Unpinned::Refuse)?;
        }
        let granted = check_capabilities(&f.manifest, self.allowlist())?;
        Ok(Admitted {
            file: f,
            granted,
            trust,
        })
    }

    /// artifact → runtime → generation: read and verify the binary, start it with the
    /// runtime the manifest names (with the previous generation's state on reload).
    /// `restored`: the previous generation's saved state and the version of the plugin that
    /// saved it.
    pub(crate) fn build(&self, a: &Admitted<'_>, number: u64, restored: Option<(&[u8], &str)>) -> Result<Generation> {
        let m = &a.file.manifest;
        let (_bin, art) = self.verified_binary(a.file)?;
        let sha256 = art.sha256_hex();
        if m.is_unpinned() {
            // Allowed by policy (read_verified refused it otherwise): say so, with what ran.
            self.services.log(
                &m.name,
                LogLevel::Warn,
                &format!(
                    "loading an unpinned binary (the manifest has no expected_hash; allowed by the host's allow_unpinned policy): sha256 {sha256}"
                ),
            );
        }
        let ctx = LoadContext {
            manifest: m,
            granted: a.granted,
            services: self.services.clone(),
            restored_state: restored.map(|(s, _)| s),
            restored_state_version: restored.map(|(_, v)| v),
            generation: number,
            signer_key_id: match &a.trust.authenticity {
                crate::trust::Authenticity::Signed { key_id, .. } => Some(key_id),
                _ => None,
            },
        };
        let instance = self.runtimes.instantiate(art, &ctx)?;
        // The SHA-256 of the exact bytes that run (equal to the pin when there is one).
        Ok(Generation::new(number, m.clone(), sha256, a.granted, instance))
    }

    /// The binary of an admitted manifest, read and checked against its pin under the
    /// host's policy (see [`verified_binary`]).
    pub(crate) fn verified_binary(&self, f: &ManifestFile) -> Result<(BinaryRef, Verified)> {
        verified_binary(f, self.trust.policy())
    }

    /// Resolve the ThemisDB array-form dependencies of `files` (see
    /// [`crate::manifest::Manifest::resolve_weak_dependencies`]) against the set itself and the
    /// loaded plugins: names of plugins become plugin dependencies (`*`) in the manifests that
    /// are planned and recorded by the generations; the rest are library dependencies, logged.
    pub(crate) fn resolve_weak_dependencies(&self, files: &mut [ManifestFile], loaded: &dyn Fn(&str) -> bool) {
        let names: std::collections::BTreeSet<String> = files.iter().map(|f| f.manifest.name.clone()).collect();
        for f in files.iter_mut() {
            let libs = f.manifest.resolve_weak_dependencies(|d| names.contains(d) || loaded(d));
            if !libs.is_empty() {
                self.services.log(
                    &f.manifest.name,
                    LogLevel::Info,
                    &format!(
                        "dependencies {} name no plugin being loaded or loaded: read as library dependencies (resolved by the dynamic linker)",
                        libs.join(", ")
                    ),
                );
            }
        }
    }
}

/// deps: the order in which to initialise `files`, dependencies first, ties by name; cycles,
/// missing dependencies and version conflicts refused (see [`crate::deps::plan`]).
pub(crate) fn plan(files: &[ManifestFile], loaded: &deps::LoadedGraph) -> Result<Vec<usize>> {
    let candidates: Vec<deps::Candidate> = files.iter().map(candidate).collect();
    deps::plan(&candidates, &deps::versions(loaded))
}

/// A manifest as the dependency planner sees it.
pub(crate) fn candidate(f: &ManifestFile) -> deps::Candidate {
    deps::Candidate {
        name: f.manifest.name.clone(),
        version: f.manifest.version.clone(),
        dependencies: f.manifest.dependencies.clone(),
    }
}

/// Read the binary a manifest names for this platform, the way its runtime takes it (native
/// and ThemisDB: copied into a sealed memfd; WASM: bytes in memory), and check it against the
/// pinned digest: [`artifact::read_verified`], the same path as `keel_verify`. The bytes
/// returned are the bytes that were hashed and are the bytes that run.
fn verified_binary(f: &ManifestFile, policy: Policy) -> Result<(BinaryRef, Verified)> {
    artifact::read_verified(f, crate::trust::unpinned_rule(policy))
}
