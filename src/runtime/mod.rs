//! Runtimes turn a verified artifact into a running [`Instance`].
//!
//! Every runtime implements the same trait, so the registry, the call path and the
//! lifecycle code never know which one they are driving.

pub mod legacy;
pub mod native;
pub mod output;
pub mod shared_lib;
pub mod wasm;

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;

use crate::capability::Capabilities;
use crate::error::Result;
use crate::manifest::Manifest;

/// Health as a plugin reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Health {
    Healthy = 0,
    Degraded = 1,
    Unhealthy = 2,
    /// The plugin has no health hook.
    Unknown = 3,
}

/// One loaded, initialised plugin generation's code and state.
///
/// `call` may be invoked from many threads at once; an implementation that cannot run calls
/// concurrently serialises them itself (its own lock, never a global one).
pub trait Instance: Send + Sync {
    /// The functions this instance exports; a function's index in this list is the
    /// `function` argument of [`Instance::call`].
    fn functions(&self) -> &[String];

    /// Run function number `function` on `input`, appending its result to `output`
    /// (which the caller has cleared). On error, `output`'s content is unspecified.
    fn call(&self, function: u32, input: &[u8], output: &mut Vec<u8>) -> Result<()>;

    /// The plugin's state, if it has a save hook (`Ok(None)` when it has none).
    fn save_state(&self) -> Result<Option<Vec<u8>>> {
        Ok(None)
    }

    /// Hand a previously saved state to the plugin. Runtimes without a restore hook fail
    /// with `KEEL_ERR_UNSUPPORTED`.
    fn restore_state(&self, _state: &[u8]) -> Result<()> {
        crate::bail!(KEEL_ERR_UNSUPPORTED, "this plugin has no restore_state hook")
    }

    /// Ask the plugin how it is.
    fn health(&self) -> Health {
        Health::Unknown
    }

    /// Bytes of memory the runtime can attribute to this instance (WASM: linear memory),
    /// if it knows; published as `plugin_memory_bytes`. `None` means unknown, not zero.
    fn memory_bytes(&self) -> Option<u64> {
        None
    }

    /// The concrete instance, for runtime-specific accessors (e.g. the ThemisDB object behind
    /// a legacy plugin: [`legacy::LegacyInstance`]). `None` unless a runtime opts in.
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        None
    }
}

/// Log levels passed to the host logger (same values as `KEEL_LOG_*` in the headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum LogLevel {
    Error = 0,
    Warn = 1,
    Info = 2,
    Debug = 3,
}

impl LogLevel {
    pub fn from_i32(v: i32) -> LogLevel {
        match v {
            0 => LogLevel::Error,
            1 => LogLevel::Warn,
            2 => LogLevel::Info,
            _ => LogLevel::Debug,
        }
    }
}

/// The key-value store host functions (`kv:read`/`kv:write`) work on. Each plugin sees only
/// its own namespace (its name).
pub trait KvStore: Send + Sync {
    fn get(&self, namespace: &str, key: &[u8]) -> Option<Vec<u8>>;
    fn put(&self, namespace: &str, key: &[u8], value: &[u8]);
    fn delete(&self, namespace: &str, key: &[u8]) -> bool;
}

/// The default [`KvStore`]: in memory, per node.
#[derive(Default)]
pub struct MemoryKv {
    map: RwLock<HashMap<(String, Vec<u8>), Vec<u8>>>,
}

impl KvStore for MemoryKv {
    fn get(&self, namespace: &str, key: &[u8]) -> Option<Vec<u8>> {
        self.map.read().get(&(namespace.to_string(), key.to_vec())).cloned()
    }
    fn put(&self, namespace: &str, key: &[u8], value: &[u8]) {
        self.map
            .write()
            .insert((namespace.to_string(), key.to_vec()), value.to_vec());
    }
    fn delete(&self, namespace: &str, key: &[u8]) -> bool {
        self.map
            .write()
            .remove(&(namespace.to_string(), key.to_vec()))
            .is_some()
    }
}

/// A sink for plugin log lines: (plugin name, level, message).
pub type LogSink = Arc<dyn Fn(&str, LogLevel, &str) + Send + Sync>;

/// What the host offers plugins, before capability gating.
#[derive(Clone)]
pub struct HostServices {
    pub kv: Arc<dyn KvStore>,
    pub log: LogSink,
}

impl Default for HostServices {
    fn default() -> Self {
        HostServices {
            kv: Arc::new(MemoryKv::default()),
            log: Arc::new(|plugin, level, msg| eprintln!("[keel:{plugin}] {level:?}: {msg}")),
        }
    }
}

/// Everything a runtime needs to instantiate one plugin generation.
pub struct LoadContext<'a> {
    pub manifest: &'a Manifest,
    /// The frozen, granted capability set (requested ∩ allowed, checked before this point).
    pub granted: Capabilities,
    pub services: HostServices,
    /// State saved from the previous generation on reload, handed to init where the ABI
    /// supports it (ThemisDB plugins get it as `{"restored_state": ...}`).
    pub restored_state: Option<&'a [u8]>,
}
