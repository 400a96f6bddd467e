//! Signature policy: whether a plugin must carry a trusted signature.
//!
//! `require_signature` is on by default. Before the host has started, an operator may turn it
//! off (development, or accepting ThemisDB hash-only `.sig` files); once
//! [`PolicyCell::mark_started`] has run it can still be turned on, but never off again
//! (`KEEL_ERR_POLICY_DOWNGRADE`). Allowing unsigned plugins only relaxes the signature
//! requirement: manifest validation, the binary's digest check and the ABI check run
//! regardless, and a signature that is present must still verify.

use std::sync::atomic::{AtomicU8, Ordering};

use crate::bail;
use crate::error::Result;

/// A snapshot of the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Refuse plugins without a valid signature by a trusted key (default `true`).
    pub require_signature: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            require_signature: true,
        }
    }
}

const REQUIRE: u8 = 1;
const STARTED: u8 = 2;

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
        PolicyCell(AtomicU8::new(if p.require_signature { REQUIRE } else { 0 }))
    }

    /// The current policy.
    pub fn get(&self) -> Policy {
        Policy {
            require_signature: self.0.load(Ordering::Acquire) & REQUIRE != 0,
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
}
