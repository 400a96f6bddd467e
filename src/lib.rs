//! Keel: a plugin host for C++ database servers.
//!
//! Bytes on disk become a verified [`artifact::Artifact`]; a verified artifact plus a
//! validated [`manifest::Manifest`] become one generation of a plugin; generations live in a
//! [`registry::Slot`]; slots live in the [`registry::Registry`] of a [`host::Host`]. The C ABI
//! (`ffi`, header `include/keel/keel.h`) is a thin layer over [`host::Host`].

pub mod error;
pub mod fsio;

pub mod artifact;
pub mod barrier;
pub mod bridge;
pub mod capability;
pub mod deps;
pub mod digest;
pub mod ffi;
pub mod health;
pub mod health_state;
pub mod host;
pub mod lifecycle;
pub mod manifest;
pub mod metrics;
pub mod registry;
pub mod runtime;
/// The SDK for plugins written in Rust (native vtable and WASM ABI); the host never needs it,
/// and it is not part of the host C ABI (kept out of keel.h).
/// cbindgen:ignore
#[cfg(feature = "sdk")]
pub mod sdk;
pub mod services;
pub mod trust;
pub mod watch;

pub use error::{keel_status, Error, Result, Status};
pub use host::Host;
