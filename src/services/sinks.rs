//! The log sink and the storage sink: replaceable at any time, read lock-free per use.
//!
//! Each sink sits in an [`ArcSwap`] cell shared by every clone of [`HostServices`] (the host,
//! its load pipeline and every loaded plugin). A use loads the current sink (no lock) and
//! holds it for the duration of that one use; setting a sink swaps the cell atomically.
//!
//! **Release rule.** A replaced sink is dropped — and a C sink's destructor runs — exactly
//! once, when the last use that loaded it has returned: uses that started before the swap
//! finish with the old sink, uses that start after it see the new one. The drop happens on
//! the thread that swapped it out or on the thread of the last use still inside it.
//!
//! **Containment.** A panic in a sink is caught here: a log line is dropped, a storage
//! operation fails with a [`SinkError`] the plugin sees. The message of the last failed
//! storage operation is kept per thread ([`last_sink_error`]) for the `sink_error` host entry.
//!
//! **Scan limit.** One scan hands the plugin at most [`MAX_SCAN_ENTRIES`] entries and
//! [`MAX_SCAN_BYTES`] bytes of encoded entries (less when the plugin's buffer is smaller);
//! past that the scan stops (the sink's visitor returns `false`) and the plugin is told the
//! result was truncated. Keel never buffers more than one entry of a scan.

use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::{HostServices, KvStore, KvTarget, LogLevel, LogSink, MemoryKv, SinkError, SinkResult};

/// Most entries one scan returns to a plugin.
pub const MAX_SCAN_ENTRIES: usize = 10_000;
/// Most bytes of encoded entries (see [`encode_entry`]) one scan returns to a plugin.
pub const MAX_SCAN_BYTES: usize = 16 << 20;
/// The capabilities any of which grants the `sink_error` host entry.
pub const SINK_CAPABILITIES: [&str; 4] = ["kv:read", "kv:write", "storage:read", "storage:write"];
/// Longest table name a plugin may pass (bytes, UTF-8, no NUL).
pub const MAX_TABLE_NAME: usize = 255;

/// The cells behind [`HostServices`].
pub(super) struct Sinks {
    log: ArcSwap<LogSink>,
    kv: ArcSwap<Arc<dyn KvStore>>,
    /// Restored by `set_kv_store(None)`: the same map, with what plugins stored in it.
    default_kv: Arc<MemoryKv>,
}

/// The default log sink: stderr, one line per message.
pub fn stderr_log_sink() -> LogSink {
    Arc::new(|plugin, level, msg| eprintln!("[keel:{plugin}] {level:?}: {msg}"))
}

impl Default for Sinks {
    fn default() -> Self {
        let default_kv = Arc::new(MemoryKv::default());
        Sinks {
            log: ArcSwap::from_pointee(stderr_log_sink()),
            kv: ArcSwap::from_pointee(default_kv.clone() as Arc<dyn KvStore>),
            default_kv,
        }
    }
}

thread_local! {
    static LAST_SINK_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Record `e` as this thread's last storage failure (for the `sink_error` host entry).
pub fn record_error(e: &SinkError) {
    LAST_SINK_ERROR.with(|l| {
        let mut l = l.borrow_mut();
        l.clear();
        l.push_str(&e.0);
    });
}

/// The message of the last storage operation that failed on this thread (empty if none):
/// what the `sink_error` host entry hands the plugin.
pub fn last_sink_error() -> String {
    LAST_SINK_ERROR.with(|l| l.borrow().clone())
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = p.downcast_ref::<&str>() {
        s
    } else if let Some(s) = p.downcast_ref::<String>() {
        s
    } else {
        "non-string panic payload"
    }
}

/// The trace id (32 lowercase hex digits) of a W3C `traceparent`
/// (`version-traceid-parentid-flags`), or `None` if it is malformed or the all-zero id.
pub fn trace_id(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let (Some(version), Some(id), Some(parent), Some(flags)) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let ok = hex(version, 2)
        && version != "ff"
        && hex(id, 32)
        && id.bytes().any(|b| b != b'0')
        && hex(parent, 16)
        && hex(flags, 2)
        && (version != "00" || parts.next().is_none());
    ok.then_some(id)
}

/// Check a table name a plugin passed: non-empty, at most [`MAX_TABLE_NAME`] bytes, UTF-8,
/// no NUL or control characters.
pub fn check_table(raw: &[u8]) -> Result<&str, String> {
    if raw.is_empty() || raw.len() > MAX_TABLE_NAME {
        return Err(format!(
            "table name of {} bytes (1..={MAX_TABLE_NAME} allowed)",
            raw.len()
        ));
    }
    let s = std::str::from_utf8(raw).map_err(|_| "table name is not UTF-8".to_string())?;
    if s.chars().any(char::is_control) {
        return Err("table name holds control characters".into());
    }
    Ok(s)
}

/// The wire form of one scan entry as plugins receive it: key length (u32 little-endian),
/// key, value length (u32 little-endian), value.
pub fn encode_entry(buf: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    buf.clear();
    buf.extend_from_slice(&(key.len() as u32).to_le_bytes());
    buf.extend_from_slice(key);
    buf.extend_from_slice(&(value.len() as u32).to_le_bytes());
    buf.extend_from_slice(value);
}

/// How a scan ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanEnd {
    /// Every matching entry was delivered.
    Complete,
    /// Stopped at a limit (Keel's or the receiver's): more entries may match.
    Truncated,
}

impl HostServices {
    /// Services with `log` as the log sink (builder form of [`HostServices::set_log_sink`]).
    pub fn with_log(self, log: LogSink) -> HostServices {
        self.set_log_sink(Some(log));
        self
    }

    /// Services with `kv` as the storage sink (builder form of [`HostServices::set_kv_store`]).
    pub fn with_kv(self, kv: Arc<dyn KvStore>) -> HostServices {
        self.set_kv_store(Some(kv));
        self
    }

    /// Replace the log sink (`None`: back to stderr). Atomic; see the module's release rule.
    pub fn set_log_sink(&self, sink: Option<LogSink>) {
        self.sinks.log.store(Arc::new(sink.unwrap_or_else(stderr_log_sink)));
    }

    /// Replace the storage sink (`None`: back to the default in-memory map, with what
    /// plugins stored in it before). Atomic; see the module's release rule.
    pub fn set_kv_store(&self, store: Option<Arc<dyn KvStore>>) {
        let store = store.unwrap_or_else(|| self.sinks.default_kv.clone() as Arc<dyn KvStore>);
        self.sinks.kv.store(Arc::new(store));
    }

    /// The current storage sink.
    pub fn kv(&self) -> Arc<dyn KvStore> {
        Arc::clone(&self.sinks.kv.load())
    }

    /// Hand one log line to the current log sink (a panic in it drops the line).
    pub fn log(&self, plugin: &str, level: LogLevel, msg: &str) {
        let sink = self.sinks.log.load();
        let _ = catch_unwind(AssertUnwindSafe(|| (**sink)(plugin, level, msg)));
    }

    fn using_kv<R>(&self, op: &str, f: impl FnOnce(&dyn KvStore) -> SinkResult<R>) -> SinkResult<R> {
        let kv = self.sinks.kv.load();
        let r = match catch_unwind(AssertUnwindSafe(|| f(&***kv))) {
            Ok(r) => r,
            Err(p) => Err(SinkError(format!(
                "the storage sink panicked in {op}: {}",
                panic_text(&*p)
            ))),
        };
        if let Err(e) = &r {
            record_error(e);
        }
        r
    }

    /// `get` on the current storage sink (panics contained; failures recorded for `sink_error`).
    pub fn kv_get(&self, at: KvTarget<'_>, key: &[u8]) -> SinkResult<Option<Vec<u8>>> {
        self.using_kv("get", |kv| kv.get(at, key))
    }

    /// `put` on the current storage sink.
    pub fn kv_put(&self, at: KvTarget<'_>, key: &[u8], value: &[u8]) -> SinkResult<()> {
        self.using_kv("put", |kv| kv.put(at, key, value))
    }

    /// `delete` on the current storage sink.
    pub fn kv_delete(&self, at: KvTarget<'_>, key: &[u8]) -> SinkResult<bool> {
        self.using_kv("delete", |kv| kv.delete(at, key))
    }

    /// `scan` on the current storage sink, bounded: `emit` receives each entry until
    /// [`MAX_SCAN_ENTRIES`] entries or `max_bytes` (at most [`MAX_SCAN_BYTES`]) bytes of
    /// encoded entries were delivered, or until it returns `false` (the receiver is full);
    /// then the scan stops and reports [`ScanEnd::Truncated`]. Entries the sink offers
    /// after that are ignored.
    pub fn kv_scan(
        &self,
        at: KvTarget<'_>,
        prefix: &[u8],
        max_bytes: usize,
        mut emit: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> SinkResult<ScanEnd> {
        let max_bytes = max_bytes.min(MAX_SCAN_BYTES);
        let (mut entries, mut bytes, mut stopped) = (0usize, 0usize, false);
        let mut visit = |k: &[u8], v: &[u8]| -> bool {
            if stopped {
                return false;
            }
            if !k.starts_with(prefix) {
                // A sink's bug, not the plugin's business: skip what does not match.
                return true;
            }
            let size = 8 + k.len() + v.len();
            if entries == MAX_SCAN_ENTRIES || bytes + size > max_bytes || !emit(k, v) {
                stopped = true;
                return false;
            }
            entries += 1;
            bytes += size;
            true
        };
        self.using_kv("scan", |kv| kv.scan(at, prefix, &mut visit))?;
        Ok(if stopped { ScanEnd::Truncated } else { ScanEnd::Complete })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn trace_id_is_taken_from_a_valid_traceparent_only() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(trace_id(tp), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(
            trace_id("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(
            trace_id("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(trace_id("garbage"), None);
        assert_eq!(trace_id(&format!("{tp}-extra")), None);
    }

    #[test]
    fn memory_kv_scans_a_prefix_within_its_namespace_and_refuses_tables() {
        let s = HostServices::default();
        for (ns, k) in [("a", "user:1"), ("a", "user:2"), ("a", "uses"), ("b", "user:3")] {
            s.kv_put(KvTarget::kv(ns), k.as_bytes(), b"v").unwrap();
        }
        let mut seen = Vec::new();
        let end = s
            .kv_scan(KvTarget::kv("a"), b"user:", usize::MAX, |k, _| {
                seen.push(String::from_utf8(k.to_vec()).unwrap());
                true
            })
            .unwrap();
        assert_eq!(end, ScanEnd::Complete);
        assert_eq!(seen, ["user:1", "user:2"]);
        let e = s.kv_get(KvTarget::table("a", "orders"), b"k").unwrap_err();
        assert!(e.0.contains("no storage sink") && e.0.contains("orders"), "{e}");
        assert_eq!(last_sink_error(), e.0);
    }

    #[test]
    fn scans_are_bounded_by_bytes_and_by_the_receiver() {
        let s = HostServices::default();
        for i in 0..100u32 {
            s.kv_put(KvTarget::kv("p"), format!("k{i:03}").as_bytes(), &[0u8; 10])
                .unwrap();
        }
        let mut n = 0;
        // 4 + 4 key bytes + 4 + 10 value bytes = 22 per entry: 10 fit in 220 bytes.
        let end = s
            .kv_scan(KvTarget::kv("p"), b"k", 225, |_, _| {
                n += 1;
                true
            })
            .unwrap();
        assert_eq!((end, n), (ScanEnd::Truncated, 10));
        let mut n = 0;
        let end = s
            .kv_scan(KvTarget::kv("p"), b"", usize::MAX, |_, _| {
                n += 1;
                n < 5
            })
            .unwrap();
        assert_eq!((end, n), (ScanEnd::Truncated, 5));
    }

    #[test]
    fn memory_kv_scans_past_its_batches_and_lets_the_visitor_use_the_store() {
        let kv = MemoryKv::default();
        let at = KvTarget::kv("p");
        for i in 0..200u32 {
            kv.put(at, format!("k{i:03}").as_bytes(), b"v").unwrap();
        }
        kv.put(KvTarget::kv("q"), b"k999", b"other namespace").unwrap();
        let mut n = 0;
        kv.scan(at, b"k", &mut |k, _| {
            // Writing during a scan must not deadlock (no lock is held while visiting).
            kv.put(KvTarget::kv("side"), k, b"copied").unwrap();
            n += 1;
            true
        })
        .unwrap();
        assert_eq!(n, 200);
        let mut side = 0;
        kv.scan(KvTarget::kv("side"), b"", &mut |_, _| {
            side += 1;
            true
        })
        .unwrap();
        assert_eq!(side, 200);
    }

    struct Panics;
    impl KvStore for Panics {
        fn get(&self, _: KvTarget<'_>, _: &[u8]) -> SinkResult<Option<Vec<u8>>> {
            panic!("get exploded")
        }
        fn put(&self, _: KvTarget<'_>, _: &[u8], _: &[u8]) -> SinkResult<()> {
            Err(SinkError::new("read-only"))
        }
        fn delete(&self, _: KvTarget<'_>, _: &[u8]) -> SinkResult<bool> {
            Ok(false)
        }
        fn scan(&self, _: KvTarget<'_>, _: &[u8], _: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> SinkResult<()> {
            Ok(())
        }
    }

    #[test]
    fn a_panicking_sink_is_an_error_and_none_restores_the_default_map() {
        let s = HostServices::default();
        s.kv_put(KvTarget::kv("p"), b"k", b"kept").unwrap();
        s.set_kv_store(Some(Arc::new(Panics)));
        let e = s.kv_get(KvTarget::kv("p"), b"k").unwrap_err();
        assert!(e.0.contains("panicked in get") && e.0.contains("get exploded"), "{e}");
        assert_eq!(s.kv_put(KvTarget::kv("p"), b"k", b"v").unwrap_err().0, "read-only");
        s.set_kv_store(None);
        assert_eq!(
            s.kv_get(KvTarget::kv("p"), b"k").unwrap().as_deref(),
            Some(&b"kept"[..])
        );
    }

    #[test]
    fn a_replaced_log_sink_is_released_once_its_last_use_returns() {
        struct Tracked(Arc<AtomicUsize>);
        impl Drop for Tracked {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let drops = Arc::new(AtomicUsize::new(0));
        let s = HostServices::default();
        let t = Tracked(drops.clone());
        let (entered_tx, entered_rx) = std::sync::mpsc::channel::<()>();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let go_rx = parking_lot::Mutex::new(go_rx);
        let entered_tx = parking_lot::Mutex::new(entered_tx);
        s.set_log_sink(Some(Arc::new(move |_, _, _| {
            let _keep = &t;
            entered_tx.lock().send(()).unwrap();
            go_rx.lock().recv().unwrap();
        })));
        let s2 = s.clone();
        let user = std::thread::spawn(move || s2.log("p", LogLevel::Info, "inside"));
        entered_rx.recv().unwrap();
        s.set_log_sink(None); // swapped out while a use is inside it
        assert_eq!(drops.load(Ordering::SeqCst), 0, "released while in use");
        go_tx.send(()).unwrap();
        user.join().unwrap();
        assert_eq!(drops.load(Ordering::SeqCst), 1, "released once after its last use");
    }
}
