//! Capabilities: what a plugin may ask the host to do.
//!
//! Capability strings from manifests are parsed into a [`Capabilities`] bit set. The node's
//! allowlist is a bit set too; a plugin's granted set is computed once at load, frozen in its
//! generation, and never widened afterwards (there is no API that could).

use std::fmt;

use crate::bail;
use crate::error::Result;

/// Every capability Keel knows, with its bit and what it grants.
pub const REGISTRY: &[(&str, u32, &str)] = &[
    ("log", 0, "write log lines through the host's logger"),
    ("clock", 1, "read the host's wall clock and monotonic clock"),
    ("random", 2, "read random bytes from the host's CSPRNG"),
    (
        "kv:read",
        3,
        "read keys of the plugin's namespace in the host key-value store",
    ),
    (
        "kv:write",
        4,
        "write and delete keys of the plugin's namespace in the host key-value store",
    ),
    ("storage:read", 5, "read through the host's storage engine API"),
    ("storage:write", 6, "write through the host's storage engine API"),
    // Bit 7 was `network:egress`, removed (it granted nothing); the bit stays retired.
    (
        "rpc:register",
        8,
        "register RPC endpoints (bound to the plugin's functions) that the server lists and invokes",
    ),
    (
        "metrics:write",
        9,
        "define and update counters, gauges and histograms exported as keel_custom_* with the plugin's label",
    ),
];

/// Capability names Keel no longer knows; a manifest naming one fails as unknown, with a
/// note saying why.
pub const REMOVED: &[(&str, &str)] = &[(
    "network:egress",
    "removed: Keel never gave plugins network access, so the name granted nothing",
)];

/// A set of capabilities (one bit each, see [`REGISTRY`]).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Capabilities(u64);

impl Capabilities {
    pub const NONE: Capabilities = Capabilities(0);

    /// Every capability in the registry.
    pub fn all() -> Capabilities {
        Capabilities(REGISTRY.iter().fold(0, |acc, (_, bit, _)| acc | (1u64 << bit)))
    }

    pub fn bits(self) -> u64 {
        self.0
    }

    /// Build from raw bits; bits that name no capability are an error.
    pub fn from_bits(bits: u64) -> Result<Capabilities> {
        let unknown = bits & !Capabilities::all().0;
        if unknown != 0 {
            bail!(KEEL_ERR_CAPABILITY_UNKNOWN, "bits {unknown:#x} name no capability");
        }
        Ok(Capabilities(bits))
    }

    /// The bit of one capability name.
    pub fn bit_of(name: &str) -> Result<Capabilities> {
        match REGISTRY.iter().find(|(n, _, _)| *n == name) {
            Some((_, bit, _)) => Ok(Capabilities(1u64 << bit)),
            None => bail!(
                KEEL_ERR_CAPABILITY_UNKNOWN,
                "unknown capability '{name}'{} (known: {})",
                REMOVED
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, why)| format!(" ({why})"))
                    .unwrap_or_default(),
                REGISTRY.iter().map(|(n, _, _)| *n).collect::<Vec<_>>().join(", ")
            ),
        }
    }

    /// Parse a list of capability names.
    pub fn parse<S: AsRef<str>>(names: &[S]) -> Result<Capabilities> {
        names.iter().try_fold(Capabilities::NONE, |acc, n| {
            Ok(acc.union(Capabilities::bit_of(n.as_ref())?))
        })
    }

    pub fn union(self, other: Capabilities) -> Capabilities {
        Capabilities(self.0 | other.0)
    }

    pub fn contains(self, other: Capabilities) -> bool {
        self.0 & other.0 == other.0
    }

    /// `contains` for one name; unknown names are never contained.
    pub fn has(self, name: &str) -> bool {
        Capabilities::bit_of(name).map(|b| self.contains(b)).unwrap_or(false)
    }

    pub fn names(self) -> Vec<&'static str> {
        REGISTRY
            .iter()
            .filter(|(_, bit, _)| self.0 & (1u64 << bit) != 0)
            .map(|(n, _, _)| *n)
            .collect()
    }

    /// The capabilities `requested` asks for beyond `allowlist`, or an error naming the first
    /// one outside it.
    pub fn check_allowed(requested: Capabilities, allowlist: Capabilities, plugin: &str) -> Result<()> {
        let denied = Capabilities(requested.0 & !allowlist.0);
        if denied.0 != 0 {
            bail!(
                KEEL_ERR_CAPABILITY_DENIED,
                "plugin '{plugin}' asks for capability '{}', which this node's allowlist does not grant",
                denied.names().join("', '")
            );
        }
        Ok(())
    }
}

impl fmt::Debug for Capabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.names()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::keel_status;

    #[test]
    fn parse_and_names_round_trip() {
        let c = Capabilities::parse(&["kv:read", "log"]).unwrap();
        assert_eq!(c.names(), vec!["log", "kv:read"]);
        assert!(c.has("log") && !c.has("kv:write"));
        assert_eq!(Capabilities::from_bits(c.bits()).unwrap(), c);
    }

    #[test]
    fn unknown_and_denied() {
        assert_eq!(
            Capabilities::parse(&["fly"]).unwrap_err().status(),
            keel_status::KEEL_ERR_CAPABILITY_UNKNOWN
        );
        let req = Capabilities::parse(&["log", "rpc:register"]).unwrap();
        let allow = Capabilities::parse(&["log"]).unwrap();
        let e = Capabilities::check_allowed(req, allow, "p").unwrap_err();
        assert_eq!(e.status(), keel_status::KEEL_ERR_CAPABILITY_DENIED);
        assert!(e.message().contains("rpc:register"));
        // network:egress was removed: unknown, with the reason.
        let e = Capabilities::parse(&["network:egress"]).unwrap_err();
        assert_eq!(e.status(), keel_status::KEEL_ERR_CAPABILITY_UNKNOWN);
        assert!(e.message().contains("removed"), "{e}");
        assert_eq!(
            Capabilities::from_bits(1 << 7).unwrap_err().status(),
            keel_status::KEEL_ERR_CAPABILITY_UNKNOWN
        );
    }
}
