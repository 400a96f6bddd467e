//! Keel: a plugin host for C++ database servers.
//!
//! Bytes on disk become a verified [`artifact::Artifact`]; a verified artifact plus a
//! validated [`manifest::Manifest`] become one generation of a plugin; generations live in a
//! [`registry::Slot`]; slots live in the [`registry::Registry`] of a [`host::Host`]. The C ABI
//! (`ffi`, header `include/keel/keel.h`) is a thin layer over [`host::Host`].
//!
//! Features: `host` (default) is all of the above; `sdk` adds [`sdk`], the SDK for plugins
//! written in Rust. A plugin depends on this crate with `default-features = false, features =
//! ["sdk"]`: the SDK alone, no dependencies, and it builds for `wasm32-unknown-unknown`.

// The host: every module below but `sdk` (and all the crate's dependencies, feature `host`).
#[cfg(feature = "host")]
pub mod error;
#[cfg(feature = "host")]
pub mod fsio;

#[cfg(feature = "host")]
pub mod fleet;

#[cfg(feature = "host")]
pub mod artifact;
#[cfg(feature = "host")]
pub mod barrier;
#[cfg(feature = "host")]
pub mod bridge;
#[cfg(feature = "host")]
pub mod capability;
#[cfg(feature = "host")]
pub mod deps;
#[cfg(feature = "host")]
pub mod digest;
#[cfg(feature = "host")]
pub mod ffi;
#[cfg(feature = "host")]
pub mod health;
#[cfg(feature = "host")]
pub mod health_state;
#[cfg(feature = "host")]
pub mod host;
#[cfg(feature = "host")]
pub mod lifecycle;
#[cfg(feature = "host")]
pub mod manifest;
#[cfg(feature = "host")]
pub mod metrics;
#[cfg(feature = "host")]
pub mod registry;
#[cfg(feature = "host")]
pub mod runtime;
/// The SDK for plugins written in Rust (native vtable and WASM ABI); the host never needs it,
/// and it is not part of the host C ABI (kept out of keel.h).
/// cbindgen:ignore
#[cfg(feature = "sdk")]
pub mod sdk;
#[cfg(feature = "host")]
pub mod services;
#[cfg(feature = "host")]
pub mod trust;
#[cfg(feature = "host")]
pub mod watch;

#[cfg(feature = "host")]
pub use error::{keel_status, Error, Result, Status};
#[cfg(feature = "host")]
pub use host::Host;
