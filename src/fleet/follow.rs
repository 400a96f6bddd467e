//! Following a trust store published in an OCI registry (trust-store rotation across nodes).
//!
//! An operator publishes a trust store with its detached signature made by a **root key**
//! (`keel trust publish`, [`super::push_trust_store`]). A node is configured with the root
//! keys it accepts (a trust-store document listing them: expiry and revocation apply to roots
//! too) and follows a reference: a thread of its own ("keel-trust-follow", started only by
//! [`TrustFollower::start`]) resolves the reference every interval; when the digest changed it
//! downloads the artifact (blobs checked against their digests), verifies the signature
//! against the root keys and swaps the host's store through
//! [`TrustState::set_trust_store_bytes`], which refuses a lower version (rollback) or the
//! same version with other content. The store in use never changes otherwise: a failed check
//! is recorded ([`FollowStatus`]) and the node keeps the store it has. A check between polls
//! runs with [`TrustFollower::check_now`].
//!
//! From the swap on, every load and reload verifies against the new store: a revoked key is
//! refused by every following node within one interval of its publication (plus the
//! registry round trip). Plugins already running keep running (unload or reload them to
//! apply the new store to them).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use parking_lot::{Condvar, Mutex};

use super::oci::{pull_trust_store, OciRef, RegistryOptions};
use crate::error::{Error, Result};
use crate::trust::signature::{self, SignatureFile};
use crate::trust::{TrustState, TrustStore};
use crate::{bail, err};

/// The name a root key's `allowed_plugins` must admit (if it restricts at all).
pub const TRUST_STORE_SUBJECT: &str = "keel-trust-store";

/// Shortest poll interval accepted.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// What to follow and how.
#[derive(Debug, Clone)]
pub struct FollowConfig {
    /// `[registry/]repository[:tag]` of the published trust store (normally a tag the
    /// operator moves; a digest reference never changes).
    pub reference: String,
    /// A trust-store document listing the root keys whose signature a published store needs.
    pub roots: Vec<u8>,
    /// How often the reference is resolved.
    pub interval: Duration,
    pub registry: RegistryOptions,
}

/// The follower's record (see [`TrustFollower::status`]).
#[derive(Debug, Clone, Default)]
pub struct FollowStatus {
    pub reference: String,
    /// The version of the store the host runs now.
    pub version: u64,
    /// The digest of the last artifact applied.
    pub digest: Option<String>,
    /// Checks run (polls and check-now), failed ones, and swaps made.
    pub checks: u64,
    pub failures: u64,
    pub applied: u64,
    /// When the last check succeeded, and the last check's error (cleared by a success).
    pub last_success: Option<SystemTime>,
    pub last_error: Option<Error>,
}

struct State {
    digest: Option<String>,
    last_success: Option<SystemTime>,
    last_error: Option<Error>,
}

struct Shared {
    trust: Arc<TrustState>,
    roots: TrustStore,
    reference: String,
    registry: RegistryOptions,
    interval: Duration,
    /// Held for a whole check: polls and check-now never overlap.
    state: Mutex<State>,
    stop: Mutex<bool>,
    wake: Condvar,
    checks: AtomicU64,
    failures: AtomicU64,
    applied: AtomicU64,
}

/// Verify `sig` (a Keel `.sig` document) over the trust-store bytes with one of `roots`.
pub fn verify_root_signature(roots: &TrustStore, store: &[u8], sig: &[u8], now: SystemTime) -> Result<()> {
    let sig = match signature::parse(sig)? {
        SignatureFile::Keel(s) => s,
        SignatureFile::HashOnly(_) => bail!(
            KEEL_ERR_HASH_ONLY_SIGNATURE,
            "the published trust store carries only a hash, not a root key's signature"
        ),
    };
    let Some(key) = roots.get(&sig.key_id) else {
        bail!(
            KEEL_ERR_UNKNOWN_KEY,
            "the published trust store is signed by key {}, which is not one of this node's root keys",
            signature::key_id_hex(&sig.key_id)
        );
    };
    key.check_usable(TRUST_STORE_SUBJECT, now)
        .map_err(|e| e.context("root key"))?;
    sig.verify(&key.key, store)
        .map_err(|e| e.context("published trust store"))
}

impl Shared {
    fn check(&self) -> Result<u64> {
        let mut st = self.state.lock();
        self.checks.fetch_add(1, Ordering::Relaxed);
        let r = self.check_locked(&mut st);
        match &r {
            Ok(_) => {
                st.last_success = Some(SystemTime::now());
                st.last_error = None;
            }
            Err(e) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                st.last_error = Some(e.clone());
            }
        }
        r
    }

    fn check_locked(&self, st: &mut State) -> Result<u64> {
        let Some(a) = pull_trust_store(&self.reference, &self.registry, st.digest.as_deref())? else {
            return Ok(self.trust.store().version());
        };
        verify_root_signature(&self.roots, &a.store, &a.signature, SystemTime::now())?;
        let before = self.trust.store().version();
        let v = self
            .trust
            .set_trust_store_bytes(&a.store)
            .map_err(|e| e.context(format!("published trust store {}", a.digest)))?;
        if v != before {
            self.applied.fetch_add(1, Ordering::Relaxed);
        }
        st.digest = Some(a.digest);
        Ok(v)
    }

    fn run(&self) {
        loop {
            {
                let mut stop = self.stop.lock();
                if !*stop {
                    self.wake.wait_for(&mut stop, self.interval);
                }
                if *stop {
                    return;
                }
            }
            // A failure is recorded in the status; the store in use stays.
            let _ = self.check();
        }
    }
}

/// A running follower (see the module documentation). Stopped when dropped.
pub struct TrustFollower {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TrustFollower {
    /// Check the roots and the reference, run a first check on the caller's thread (so the
    /// caller learns at once whether the published store is acceptable), then start polling.
    /// On failure nothing is started and the host's store is unchanged.
    ///
    /// Errors: `KEEL_ERR_INVALID_ARGUMENT` (interval below [`MIN_INTERVAL`], no root key),
    /// `KEEL_ERR_TRUST_STORE_MALFORMED` (roots), `KEEL_ERR_OCI_*` (the pull), the signature
    /// codes (`KEEL_ERR_UNKNOWN_KEY`: not signed by a root key, `KEEL_ERR_BAD_SIGNATURE`,
    /// `KEEL_ERR_KEY_REVOKED`/`_EXPIRED` for the root), `KEEL_ERR_TRUST_STORE_MALFORMED`,
    /// `KEEL_ERR_TRUST_STORE_ROLLBACK` (the published version is lower than the one in use).
    pub fn start(trust: Arc<TrustState>, config: FollowConfig) -> Result<TrustFollower> {
        if config.interval < MIN_INTERVAL {
            bail!(
                KEEL_ERR_INVALID_ARGUMENT,
                "trust-store poll interval {:?} is below {MIN_INTERVAL:?}",
                config.interval
            );
        }
        OciRef::parse(&config.reference)?;
        let roots = TrustStore::from_bytes(&config.roots).map_err(|e| e.context("root keys"))?;
        if roots.is_empty() {
            bail!(
                KEEL_ERR_INVALID_ARGUMENT,
                "no root key: a followed trust store must be signed by one"
            );
        }
        let shared = Arc::new(Shared {
            trust,
            roots,
            reference: config.reference,
            registry: config.registry,
            interval: config.interval,
            state: Mutex::new(State {
                digest: None,
                last_success: None,
                last_error: None,
            }),
            stop: Mutex::new(false),
            wake: Condvar::new(),
            checks: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            applied: AtomicU64::new(0),
        });
        shared.check()?;
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("keel-trust-follow".into())
            .spawn(move || s.run())
            .map_err(|e| err!(KEEL_ERR_INTERNAL, "cannot start the trust-store follower: {e}"))?;
        Ok(TrustFollower {
            shared,
            thread: Some(thread),
        })
    }

    /// Check the reference now, on the caller's thread (waits for a poll in progress).
    /// Returns the version in use afterwards; errors as for [`TrustFollower::start`] (the
    /// store in use stays).
    pub fn check_now(&self) -> Result<u64> {
        self.shared.check()
    }

    pub fn status(&self) -> FollowStatus {
        let st = self.shared.state.lock();
        FollowStatus {
            reference: self.shared.reference.clone(),
            version: self.shared.trust.store().version(),
            digest: st.digest.clone(),
            checks: self.shared.checks.load(Ordering::Relaxed),
            failures: self.shared.failures.load(Ordering::Relaxed),
            applied: self.shared.applied.load(Ordering::Relaxed),
            last_success: st.last_success,
            last_error: st.last_error.clone(),
        }
    }

    /// The poll interval.
    pub fn interval(&self) -> Duration {
        self.shared.interval
    }

    /// Stop polling and wait for the thread (a check in progress finishes first).
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        *self.shared.stop.lock() = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for TrustFollower {
    fn drop(&mut self) {
        self.halt();
    }
}

/// The trust-store families of a host's metrics, present while it follows a reference:
/// `keel_trust_store_version` (gauge: the version in use), `keel_trust_follow_checks_total`
/// and `keel_trust_follow_failures_total` (counters). Read at scrape time.
#[derive(Clone, Default)]
pub struct FollowMetrics(Arc<ArcSwapOption<FollowView>>);

/// What the metrics read of a follower.
pub struct FollowView(Arc<Shared>);

impl FollowMetrics {
    /// Report `f` (or nothing: `None`).
    pub fn set(&self, f: Option<&TrustFollower>) {
        self.0.store(f.map(|f| Arc::new(FollowView(f.shared.clone()))));
    }
}

impl std::fmt::Debug for FollowMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FollowMetrics")
    }
}

impl prometheus_client::collector::Collector for FollowMetrics {
    fn encode(&self, mut enc: prometheus_client::encoding::DescriptorEncoder) -> std::fmt::Result {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        let Some(v) = self.0.load_full() else {
            return Ok(());
        };
        let s = &v.0;
        let g = ConstGauge::new(s.trust.store().version() as i64);
        g.encode(enc.encode_descriptor(
            "keel_trust_store_version",
            "Version of the trust store this host verifies plugins with",
            None,
            g.metric_type(),
        )?)?;
        let c = ConstCounter::new(s.checks.load(Ordering::Relaxed));
        c.encode(enc.encode_descriptor(
            "keel_trust_follow_checks",
            "Checks of the followed trust-store reference",
            None,
            c.metric_type(),
        )?)?;
        let c = ConstCounter::new(s.failures.load(Ordering::Relaxed));
        c.encode(enc.encode_descriptor(
            "keel_trust_follow_failures",
            "Checks of the followed trust-store reference that failed (the store in use stayed)",
            None,
            c.metric_type(),
        )?)?;
        Ok(())
    }
}
