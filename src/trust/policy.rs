//! Signature policy: whether a plugin must carry a trusted signature.
//!
//! `require_signature` is on by default. Before the host has started, an operator may turn it
//! off (development, or accepting ThemisDB hash-only `.sig` files); once
//! [`PolicyCell::mark_started`] has run it can still be turned on, but never off again
//! (`KEEL_ERR_POLICY_DOWNGRADE`). Allowing unsigned plugins only relaxes the signature
//! requirement: manifest validation, the binary's digest check and the ABI check run
//! regardless, and a signature that is present must still verify.
//!
//! `allow_unpinned` is off by default: a manifest that pins no SHA-256 for its binary (a
//! ThemisDB `plugin.json` without `expected_hash`) is valid but refused at load with
//! `KEEL_ERR_UNPINNED_BINARY`. Before the host has started an operator may turn it on; once
//! started it can still be turned off, but never on again (`KEEL_ERR_POLICY_DOWNGRADE`).
//! Allowing unpinned binaries skips only the comparison with a pin that does not exist: the
//! binary is still read once beneath the manifest's directory, and the SHA-256 of the exact
//! bytes loaded is recorded (and logged) for the generation.

use std::sync::atomic::{AtomicU8, Ordering};

use crate::bail;
use crate::error::Result;

/// A snapshot of the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Refuse plugins without a valid signature by a trusted key (default `true`).
    pub require_signature: bool,
    /// Load binaries whose manifest pins no SHA-256 (default `false`).
    pub allow_unpinned: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            require_signature: true,
            allow_unpinned: false,
        }
    }
}

const REQUIRE: u8 = 1;
const STARTED: u8 = 2;
const UNPINNED: u8 = 4;

/// The policy as the host holds it: one atomic, so "started" and "require" change together
/// (no window in which a downgrade could slip past a concurrent `mark_started`).
#[derive(Debug)]
pub struct PolicyCell(AtomicU8);

impl Default for PolicyCell {
    fn default() -> Self {
        PolicyCell::new(Policy::default())
    }
}

impl PolicyCell {
    pub fn new(p: Policy) -> Self {
        let mut v = if p.require_signature { REQUIRE } else { 0 };
        if p.allow_unpinned {
            v |= UNPINNED;
        }
        PolicyCell(AtomicU8::new(v))
    }

    /// The current policy.
    pub fn get(&self) -> Policy {
        let v = self.0.load(Ordering::Acquire);
        Policy {
            require_signature: v & REQUIRE != 0,
            allow_unpinned: v & UNPINNED != 0,
        }
    }

    /// Has the host started (policy may no longer be weakened)?
    pub fn is_started(&self) -> bool {
        self.0.load(Ordering::Acquire) & STARTED != 0
    }

    /// From now on, `require_signature` can only be turned on.
    pub fn mark_started(&self) {
        self.0.fetch_or(STARTED, Ordering::AcqRel);
    }

    /// Set `require_signature`. Turning it off after [`PolicyCell::mark_started`] fails with
    /// `KEEL_ERR_POLICY_DOWNGRADE` (and changes nothing); setting the value it already has
    /// always succeeds.
    pub fn set_require_signature(&self, require: bool) -> Result<()> {
        let r = self.0.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
            if require {
                Some(v | REQUIRE)
            } else if v & STARTED != 0 && v & REQUIRE != 0 {
                None
            } else {
                Some(v & !REQUIRE)
            }
        });
        if r.is_err() {
            bail!(
                KEEL_ERR_POLICY_DOWNGRADE,
                "require_signature cannot be turned off after the host has started (it can only be strengthened at run time)"
            );
        }
        Ok(())
    }

    /// Set `allow_unpinned`. Turning it on after [`PolicyCell::mark_started`] fails with
    /// `KEEL_ERR_POLICY_DOWNGRADE` (and changes nothing); setting the value it already has
    /// always succeeds; turning it off always succeeds.
    pub fn set_allow_unpinned(&self, allow: bool) -> Result<()> {
        let r = self.0.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
            if !allow {
                Some(v & !UNPINNED)
            } else if v & STARTED != 0 && v & UNPINNED == 0 {
                None
            } else {
                Some(v | UNPINNED)
            }
        });
        if r.is_err() {
            bail!(
                KEEL_ERR_POLICY_DOWNGRADE,
                "allow_unpinned cannot be turned on after the host has started (the policy can only be strengthened at run time)"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::keel_status;

    #[test]
    fn off_before_start_on_after_never_off_again() {
        let p = PolicyCell::default();
        assert!(p.get().require_signature);
        p.set_require_signature(false).unwrap();
        assert!(!p.get().require_signature);
        p.mark_started();
        p.set_require_signature(false).unwrap(); // no change, not a downgrade
        p.set_require_signature(true).unwrap();
        assert_eq!(
            p.set_require_signature(false).unwrap_err().status(),
            keel_status::KEEL_ERR_POLICY_DOWNGRADE
        );
        assert!(p.get().require_signature);
    }

    #[test]
    fn unpinned_on_before_start_off_after_never_on_again() {
        let p = PolicyCell::default();
        assert!(!p.get().allow_unpinned);
        p.set_allow_unpinned(true).unwrap();
        assert!(p.get().allow_unpinned && p.get().require_signature);
        p.mark_started();
        p.set_allow_unpinned(true).unwrap(); // no change, not a downgrade
        p.set_allow_unpinned(false).unwrap();
        assert_eq!(
            p.set_allow_unpinned(true).unwrap_err().status(),
            keel_status::KEEL_ERR_POLICY_DOWNGRADE
        );
        assert!(!p.get().allow_unpinned);
        // Independent of the signature bit.
        p.set_require_signature(true).unwrap();
        assert!(!p.get().allow_unpinned);
    }
}
