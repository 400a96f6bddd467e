//! What the server lends its plugins: the log sink, the key-value store, (with later
//! additions) host functions the server defines, storage sinks and plugin-defined metrics;
//! and the per-call context ([`call`]) a call with options carries to all of them.
//!
//! A lower module: runtimes import it, it imports neither the runtimes nor the host.

pub mod call;
pub mod hostfn;

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;

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

/// (namespace, key) → value.
type KvMap = HashMap<(String, Vec<u8>), Vec<u8>>;

/// The default [`KvStore`]: in memory, per node.
#[derive(Default)]
pub struct MemoryKv {
    map: RwLock<KvMap>,
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
    /// Host functions the embedder defines (shared: every clone sees the same definitions;
    /// plugins bind to them at load).
    pub host_fns: Arc<hostfn::HostFunctions>,
}

impl Default for HostServices {
    fn default() -> Self {
        HostServices {
            kv: Arc::new(MemoryKv::default()),
            log: Arc::new(|plugin, level, msg| eprintln!("[keel:{plugin}] {level:?}: {msg}")),
            host_fns: Arc::default(),
        }
    }
}
