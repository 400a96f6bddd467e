//! What the server lends its plugins: the log sink, the key-value store, (with later
//! additions) host functions the server defines, storage sinks and plugin-defined metrics;
//! and the per-call context ([`call`]) a call with options carries to all of them.
//!
//! A lower module: runtimes import it, it imports neither the runtimes nor the host.

pub mod call;
pub mod hostfn;
pub mod plugin_metrics;
pub mod rpc;
pub mod sinks;

use std::collections::BTreeMap;
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

/// Where a key-value or storage operation lands: the calling plugin and, for `storage:*`, the
/// server's table the plugin named (`None` for `kv:*`: the plugin's own namespace, whose
/// name is the plugin's name, always).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvTarget<'a> {
    /// The calling plugin's name (its `kv:*` namespace).
    pub plugin: &'a str,
    /// The server's table (`storage:*`), or `None` for the plugin's own namespace (`kv:*`).
    pub table: Option<&'a str>,
}

impl<'a> KvTarget<'a> {
    /// The plugin's own namespace (`kv:*`).
    pub fn kv(plugin: &'a str) -> KvTarget<'a> {
        KvTarget { plugin, table: None }
    }
    /// A server table, on behalf of `plugin` (`storage:*`).
    pub fn table(plugin: &'a str, table: &'a str) -> KvTarget<'a> {
        KvTarget {
            plugin,
            table: Some(table),
        }
    }
}

/// A storage sink's failure or refusal; the plugin sees an error status, and its message
/// through the `sink_error` host entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkError(pub String);

impl SinkError {
    pub fn new(message: impl Into<String>) -> SinkError {
        SinkError(message.into())
    }
}

impl std::fmt::Display for SinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SinkError {}

/// What a storage sink returns.
pub type SinkResult<T> = std::result::Result<T, SinkError>;

/// The storage the `kv:*` and `storage:*` host entries work on (the storage sink).
///
/// `at.table == None` is the calling plugin's own namespace (`kv:*`; namespace = plugin
/// name): an implementation must keep namespaces apart. `at.table == Some(t)` is the
/// server's table `t` (`storage:*`): the implementation decides per plugin and table, and
/// may refuse with an error the plugin sees. Called on the calling plugin's thread, inside
/// its call (so [`call::with_current`] gives the call's tenant, traceparent and
/// user_context), concurrently from many threads. A panic is caught and becomes an error for
/// the plugin.
pub trait KvStore: Send + Sync {
    /// The value of `key`, or `None` if absent.
    fn get(&self, at: KvTarget<'_>, key: &[u8]) -> SinkResult<Option<Vec<u8>>>;
    fn put(&self, at: KvTarget<'_>, key: &[u8], value: &[u8]) -> SinkResult<()>;
    /// Whether `key` was present.
    fn delete(&self, at: KvTarget<'_>, key: &[u8]) -> SinkResult<bool>;
    /// Hand every entry whose key starts with `prefix` to `visit` (in any order) until it
    /// returns `false` (Keel's scan limit reached: stop and return `Ok`).
    fn scan(&self, at: KvTarget<'_>, prefix: &[u8], visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> SinkResult<()>;
}

/// (namespace, key) → value.
type KvMap = BTreeMap<(String, Vec<u8>), Vec<u8>>;

/// The default [`KvStore`]: the plugins' own namespaces in memory, per node. It knows no
/// server tables: `storage:*` operations fail ("no storage sink is set") until the server
/// sets a sink.
#[derive(Default)]
pub struct MemoryKv {
    map: RwLock<KvMap>,
}

fn no_tables(at: KvTarget<'_>) -> SinkResult<()> {
    match at.table {
        None => Ok(()),
        Some(t) => Err(SinkError(format!(
            "no storage sink is set: the server offers no table '{t}' (plugin '{}')",
            at.plugin
        ))),
    }
}

impl KvStore for MemoryKv {
    fn get(&self, at: KvTarget<'_>, key: &[u8]) -> SinkResult<Option<Vec<u8>>> {
        no_tables(at)?;
        Ok(self.map.read().get(&(at.plugin.to_string(), key.to_vec())).cloned())
    }
    fn put(&self, at: KvTarget<'_>, key: &[u8], value: &[u8]) -> SinkResult<()> {
        no_tables(at)?;
        self.map
            .write()
            .insert((at.plugin.to_string(), key.to_vec()), value.to_vec());
        Ok(())
    }
    fn delete(&self, at: KvTarget<'_>, key: &[u8]) -> SinkResult<bool> {
        no_tables(at)?;
        Ok(self
            .map
            .write()
            .remove(&(at.plugin.to_string(), key.to_vec()))
            .is_some())
    }
    fn scan(&self, at: KvTarget<'_>, prefix: &[u8], visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> SinkResult<()> {
        use std::ops::Bound;
        no_tables(at)?;
        // Entries are copied out in small batches and visited without the lock held, so a
        // visitor may use the store (a native plugin's output callback calling kv_put).
        const BATCH: usize = 64;
        let mut from = Bound::Included((at.plugin.to_string(), prefix.to_vec()));
        loop {
            let batch: Vec<(Vec<u8>, Vec<u8>)> = {
                let map = self.map.read();
                map.range((from.clone(), Bound::Unbounded))
                    .take_while(|((ns, k), _)| ns == at.plugin && k.starts_with(prefix))
                    .take(BATCH)
                    .map(|((_, k), v)| (k.clone(), v.clone()))
                    .collect()
            };
            for (k, v) in &batch {
                if !visit(k, v) {
                    return Ok(());
                }
            }
            match batch.last() {
                Some((k, _)) if batch.len() == BATCH => from = Bound::Excluded((at.plugin.to_string(), k.clone())),
                _ => return Ok(()),
            }
        }
    }
}

/// A sink for plugin log lines: (plugin name, level, message). Called on the logging
/// thread: inside a call made with options, [`call::with_current`] gives its tenant and
/// traceparent ([`sinks::trace_id`] extracts the trace id).
pub type LogSink = Arc<dyn Fn(&str, LogLevel, &str) + Send + Sync>;

/// What the host offers plugins, before capability gating: the log sink and the storage
/// sink, each replaceable at any time ([`HostServices::set_log_sink`],
/// [`HostServices::set_kv_store`]; see [`sinks`]). Clones share the sinks: a sink set on the
/// host reaches every plugin already loaded.
#[derive(Clone, Default)]
pub struct HostServices {
    sinks: Arc<sinks::Sinks>,
    /// Plugin-defined metrics (`metrics:write`), one registry per host, read by the
    /// exposition.
    pub metrics: Arc<plugin_metrics::MetricRegistry>,
    /// RPC endpoints plugins register (`rpc:register`), one table per host.
    pub rpc: Arc<rpc::RpcTable>,
    /// Host functions the embedder defines (shared: every clone sees the same definitions;
    /// plugins bind to them at load).
    pub host_fns: Arc<hostfn::HostFunctions>,
}
