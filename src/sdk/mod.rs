//! A small SDK for plugin authors writing Keel plugins in Rust (feature `sdk`).
//!
//! - [`native`]: safe helpers for Keel's native vtable ABI (`include/keel/keel_plugin.h`): the
//!   [`native::Plugin`] trait, [`keel_native_plugin!`](crate::keel_native_plugin) to export
//!   `keel_plugin_entry`, and [`native::Host`] for the host-API table.
//! - [`wasm`]: helpers for the Keel WASM ABI (`include/keel/keel_wasm.h`): the
//!   [`wasm::WasmPlugin`] trait, [`keel_wasm_plugin!`](crate::keel_wasm_plugin) to define the
//!   exports, the `keel_result` encoding and safe wrappers of the imports from module `"keel"`.
//!
//! The SDK imports nothing from the host and uses only `std`, so a plugin crate takes it
//! without the host (feature `host`, default) and its dependencies (wasmer, cxx, ...):
//! `keel = { path = "...", default-features = false, features = ["sdk"] }`, which builds for
//! the server's target and for `wasm32-unknown-unknown` alike. The examples in
//! `tests/fixtures/rust/` depend on keel this way. See docs/rust-sdk.md.

#[cfg(not(target_arch = "wasm32"))]
pub mod native;
pub mod wasm;

/// An error a plugin hook reports: its message goes to the host, which reports
/// `KEEL_ERR_CALL_FAILED` / `KEEL_ERR_INIT_FAILED` (native) or the matching WASM status with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(pub String);

impl Error {
    pub fn new(msg: impl Into<String>) -> Error {
        Error(msg.into())
    }

    pub fn message(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl From<&str> for Error {
    fn from(s: &str) -> Error {
        Error(s.to_owned())
    }
}

impl From<String> for Error {
    fn from(s: String) -> Error {
        Error(s)
    }
}

impl From<std::str::Utf8Error> for Error {
    fn from(e: std::str::Utf8Error) -> Error {
        Error(format!("invalid UTF-8: {e}"))
    }
}

/// What a plugin's results are: `Ok` or an [`Error`] whose message reaches the host.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `KEEL_HEALTH_*`: what a plugin's `health` hook reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Health {
    Healthy = 0,
    Degraded = 1,
    Unhealthy = 2,
}

/// `KEEL_LOG_*`: the level of a log line a plugin writes through the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum LogLevel {
    Error = 0,
    Warn = 1,
    Info = 2,
    Debug = 3,
}

/// The message of a caught panic payload (`&str` or `String`; anything else is named as such).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        format!("plugin panicked: {s}")
    } else if let Some(s) = payload.downcast_ref::<String>() {
        format!("plugin panicked: {s}")
    } else {
        "plugin panicked".to_owned()
    }
}
