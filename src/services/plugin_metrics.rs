//! Plugin-defined metrics (capability `metrics:write`): counters, gauges and histograms a
//! plugin defines and updates, exported in Keel's exposition (see
//! [`crate::metrics::exposition`]) as `keel_custom_<name>` with the label `plugin="<plugin>"`
//! plus the plugin's own labels.
//!
//! - **Definition** (cold): [`MetricRegistry::define`] checks the name and labels, refuses a
//!   kind that differs from the one the same family already has (in any plugin: one
//!   exposition, one type per family), and returns the series' id. Defining the same
//!   (name, labels) again returns the same id (idempotent: a reloaded generation or another
//!   pooled WASM instance gets the series it had). A plugin has at most
//!   [`MAX_SERIES_PER_PLUGIN`] series; the next one is refused with
//!   `KEEL_ERR_METRIC_SERIES_LIMIT`. Definition takes this registry's lock and allocates.
//! - **Update** (hot): [`PluginMetricSet::add`] / [`PluginMetricSet::set`] /
//!   [`PluginMetricSet::observe`] by id: two atomic loads to find the series, then an atomic
//!   add, store or compare-and-swap loop. No lock, no allocation (errors are bare status codes).
//! - **Lifetime**: the series belong to the plugin's name. A reload keeps them (the new
//!   generation defines them again and gets the same ids; counters keep counting; series it
//!   does not define again stay with their last value); an unload removes them
//!   ([`MetricRegistry::forget`]).
//!
//! A lower module: imports nothing of the runtimes, the registry or the host.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

use crate::bail;
use crate::error::{keel_status, Result};

/// Every plugin-defined family is exported under this prefix.
pub const PREFIX: &str = "keel_custom_";
/// At most this many series (distinct (name, labels)) per plugin.
pub const MAX_SERIES_PER_PLUGIN: usize = 10_000;
/// Longest metric name a plugin may give (without the prefix).
pub const MAX_NAME_BYTES: usize = 128;
/// Most labels on one series (besides `plugin`).
pub const MAX_LABELS: usize = 16;
/// Longest label name.
pub const MAX_LABEL_NAME_BYTES: usize = 64;
/// Longest label value.
pub const MAX_LABEL_VALUE_BYTES: usize = 256;
/// Most bucket bounds of a histogram (the `+Inf` bucket is added).
pub const MAX_BUCKETS: usize = 64;
/// Bucket bounds of a histogram defined with none.
pub const DEFAULT_BUCKETS: [f64; 11] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Series per lazily allocated chunk.
const CHUNK: usize = 64;
const CHUNKS: usize = MAX_SERIES_PER_PLUGIN.div_ceil(CHUNK);

/// The kind of a metric (`KEEL_METRIC_*` in the headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum MetricKind {
    Counter = 0,
    Gauge = 1,
    Histogram = 2,
}

impl MetricKind {
    pub fn from_i32(v: i32) -> Option<MetricKind> {
        match v {
            0 => Some(MetricKind::Counter),
            1 => Some(MetricKind::Gauge),
            2 => Some(MetricKind::Histogram),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
        }
    }
}

/// An `f64` in an `AtomicU64` (its bits).
#[derive(Default)]
struct AtomicF64(AtomicU64);

impl AtomicF64 {
    #[inline]
    fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
    #[inline]
    fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::Relaxed)
    }
    #[inline]
    fn add(&self, v: f64) {
        let mut cur = self.0.load(Ordering::Relaxed);
        loop {
            let next = (f64::from_bits(cur) + v).to_bits();
            match self
                .0
                .compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(now) => cur = now,
            }
        }
    }
}

/// One series: a family name, its labels and its value(s).
struct Series {
    kind: MetricKind,
    /// The exported family name (prefix included, `_total` not).
    family: Arc<str>,
    /// Sorted by label name.
    labels: Box<[(String, String)]>,
    /// Counter and gauge: the value. Histogram: the sum of observations.
    value: AtomicF64,
    /// Histogram bucket upper bounds (increasing, finite); empty otherwise.
    bounds: Box<[f64]>,
    /// Histogram: one count per bound plus the `+Inf` bucket (not cumulative).
    buckets: Box<[AtomicU64]>,
}

/// One chunk of a plugin's series (allocated when its first series is defined).
type Chunk = Box<[OnceLock<Series>]>;

/// A series' identity in its plugin: (family name, label pairs).
type SeriesKey = (Arc<str>, Box<[(String, String)]>);

/// A plugin's series, by id. Updates reach a series with two atomic loads.
pub struct PluginMetricSet {
    plugin: Arc<str>,
    chunks: Box<[OnceLock<Chunk>]>,
    /// Series defined so far (ids `0..len`); published after the series is.
    len: AtomicU32,
    /// (family, labels) → id, and family → kind: only for definitions (the registry's lock
    /// is held around every change).
    index: Mutex<SetIndex>,
}

#[derive(Default)]
struct SetIndex {
    ids: HashMap<SeriesKey, u32>,
    kinds: HashMap<Arc<str>, MetricKind>,
}

impl PluginMetricSet {
    fn new(plugin: &str) -> PluginMetricSet {
        PluginMetricSet {
            plugin: Arc::from(plugin),
            chunks: (0..CHUNKS).map(|_| OnceLock::new()).collect(),
            len: AtomicU32::new(0),
            index: Mutex::new(SetIndex::default()),
        }
    }

    /// The plugin these series belong to.
    pub fn plugin(&self) -> &str {
        &self.plugin
    }

    /// Number of series defined.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[inline]
    fn series(&self, id: u32) -> Option<&Series> {
        let id = id as usize;
        self.chunks.get(id / CHUNK)?.get()?.get(id % CHUNK)?.get()
    }

    #[inline]
    fn of_kind(&self, id: u32, kind: MetricKind) -> std::result::Result<&Series, keel_status> {
        match self.series(id) {
            Some(s) if s.kind == kind => Ok(s),
            Some(_) => Err(keel_status::KEEL_ERR_METRIC_CONFLICT),
            None => Err(keel_status::KEEL_ERR_METRIC_INVALID),
        }
    }

    /// Add `v` to a counter (`v` ≥ 0 and finite) or a gauge (`v` not NaN).
    /// `KEEL_ERR_METRIC_INVALID` for an unknown id or a value refused,
    /// `KEEL_ERR_METRIC_CONFLICT` for a histogram. Lock-free, allocation-free.
    #[inline]
    pub fn add(&self, id: u32, v: f64) -> std::result::Result<(), keel_status> {
        let s = self.series(id).ok_or(keel_status::KEEL_ERR_METRIC_INVALID)?;
        match s.kind {
            MetricKind::Counter if v.is_finite() && v >= 0.0 => s.value.add(v),
            MetricKind::Gauge if !v.is_nan() => s.value.add(v),
            MetricKind::Histogram => return Err(keel_status::KEEL_ERR_METRIC_CONFLICT),
            _ => return Err(keel_status::KEEL_ERR_METRIC_INVALID),
        }
        Ok(())
    }

    /// Set a gauge to `v` (not NaN). Errors as [`PluginMetricSet::add`] (a counter or a
    /// histogram: `KEEL_ERR_METRIC_CONFLICT`).
    #[inline]
    pub fn set(&self, id: u32, v: f64) -> std::result::Result<(), keel_status> {
        let s = self.of_kind(id, MetricKind::Gauge)?;
        if v.is_nan() {
            return Err(keel_status::KEEL_ERR_METRIC_INVALID);
        }
        s.value.set(v);
        Ok(())
    }

    /// Record `v` (not NaN) in a histogram. Errors as [`PluginMetricSet::set`].
    #[inline]
    pub fn observe(&self, id: u32, v: f64) -> std::result::Result<(), keel_status> {
        let s = self.of_kind(id, MetricKind::Histogram)?;
        if v.is_nan() {
            return Err(keel_status::KEEL_ERR_METRIC_INVALID);
        }
        let i = s.bounds.iter().position(|b| v <= *b).unwrap_or(s.bounds.len());
        s.buckets[i].fetch_add(1, Ordering::Relaxed);
        s.value.add(v);
        Ok(())
    }

    /// The current value of a counter or gauge (the sum of a histogram), if the id exists.
    pub fn value(&self, id: u32) -> Option<f64> {
        self.series(id).map(|s| s.value.get())
    }
}

/// A series as read at scrape time.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesSnapshot {
    pub plugin: Arc<str>,
    /// The plugin's labels, sorted by name (without `plugin`).
    pub labels: Vec<(String, String)>,
    /// Counter and gauge: the value; histogram: the sum.
    pub value: f64,
    /// Histogram only: (upper bound, count) per bucket, not cumulative, the last bound
    /// `f64::MAX` (`+Inf`).
    pub buckets: Vec<(f64, u64)>,
}

/// One exported family with its series from every plugin.
#[derive(Debug, Clone, PartialEq)]
pub struct FamilySnapshot {
    /// Exported name (prefix included; a counter's exposition adds `_total`).
    pub name: Arc<str>,
    pub kind: MetricKind,
    pub series: Vec<SeriesSnapshot>,
}

/// Every plugin's metric set, by plugin name. One per host.
#[derive(Default)]
pub struct MetricRegistry {
    sets: Mutex<BTreeMap<String, Arc<PluginMetricSet>>>,
}

impl MetricRegistry {
    /// The set of `plugin` (created empty if it has none): what its generations update.
    pub fn set_for(&self, plugin: &str) -> Arc<PluginMetricSet> {
        self.sets
            .lock()
            .entry(plugin.to_string())
            .or_insert_with(|| Arc::new(PluginMetricSet::new(plugin)))
            .clone()
    }

    /// Remove `plugin`'s series from the exposition (on unload, or a failed first load).
    /// Generations still holding the set may update it; nothing reads it any more.
    pub fn forget(&self, plugin: &str) {
        self.sets.lock().remove(plugin);
    }

    /// Define (or find) a series of `set`'s plugin: `name` as the plugin gives it (without the
    /// prefix; a counter's name may end in `_total`, which is dropped), `labels_json` a JSON
    /// object of string values (empty = no labels), `buckets` a histogram's upper bounds
    /// (empty = [`DEFAULT_BUCKETS`]; must be empty for counters and gauges).
    ///
    /// Errors: `KEEL_ERR_METRIC_INVALID` (name, labels or buckets refused),
    /// `KEEL_ERR_METRIC_CONFLICT` (the family has another kind, in this or another plugin, or
    /// other buckets), `KEEL_ERR_METRIC_SERIES_LIMIT` (the plugin has
    /// [`MAX_SERIES_PER_PLUGIN`] series).
    pub fn define(
        &self,
        set: &PluginMetricSet,
        kind: MetricKind,
        name: &str,
        labels_json: &[u8],
        buckets: &[f64],
    ) -> Result<u32> {
        let base = check_name(name, kind)?;
        let labels = parse_labels(labels_json)?;
        let bounds = check_buckets(kind, buckets)?;
        let family: Arc<str> = Arc::from(format!("{PREFIX}{base}"));
        let sets = self.sets.lock();
        let mut idx = set.index.lock();
        if let Some(&id) = idx.ids.get(&(family.clone(), labels.clone())) {
            let s = set.series(id).expect("indexed series exist");
            if s.kind != kind {
                bail!(
                    KEEL_ERR_METRIC_CONFLICT,
                    "metric '{name}' is a {}, not a {}",
                    s.kind.as_str(),
                    kind.as_str()
                );
            }
            if kind == MetricKind::Histogram && !buckets.is_empty() && *s.bounds != *bounds {
                bail!(
                    KEEL_ERR_METRIC_CONFLICT,
                    "histogram '{name}' is already defined with other buckets"
                );
            }
            return Ok(id);
        }
        if let Some(k) = idx.kinds.get(&family) {
            if *k != kind {
                bail!(
                    KEEL_ERR_METRIC_CONFLICT,
                    "metric '{name}' is already a {} of this plugin, not a {}",
                    k.as_str(),
                    kind.as_str()
                );
            }
        }
        for (other, s) in sets.iter() {
            if std::ptr::eq(&**s, set) {
                continue;
            }
            if let Some(k) = s.index.lock().kinds.get(&family) {
                if *k != kind {
                    bail!(
                        KEEL_ERR_METRIC_CONFLICT,
                        "metric '{family}' is already a {} of plugin '{other}'; one family has one type",
                        k.as_str()
                    );
                }
            }
        }
        let id = set.len.load(Ordering::Relaxed) as usize;
        if id >= MAX_SERIES_PER_PLUGIN {
            bail!(
                KEEL_ERR_METRIC_SERIES_LIMIT,
                "plugin '{}' already has {MAX_SERIES_PER_PLUGIN} metric series; '{name}' with labels {} is refused",
                set.plugin,
                String::from_utf8_lossy(labels_json)
            );
        }
        let n = bounds.len();
        let series = Series {
            kind,
            family: family.clone(),
            labels: labels.clone(),
            value: AtomicF64::default(),
            bounds,
            buckets: (0..if kind == MetricKind::Histogram { n + 1 } else { 0 })
                .map(|_| AtomicU64::new(0))
                .collect(),
        };
        let chunk = set.chunks[id / CHUNK].get_or_init(|| (0..CHUNK).map(|_| OnceLock::new()).collect());
        if chunk[id % CHUNK].set(series).is_err() {
            bail!(KEEL_ERR_INTERNAL, "metric series {id} defined twice");
        }
        // Release: a reader that sees the new length sees the series.
        set.len.store(id as u32 + 1, Ordering::Release);
        idx.ids.insert((family.clone(), labels), id as u32);
        idx.kinds.insert(family, kind);
        Ok(id as u32)
    }

    /// Every family with its series, sorted by family name, then plugin, then labels.
    pub fn snapshot(&self) -> Vec<FamilySnapshot> {
        let sets: Vec<Arc<PluginMetricSet>> = self.sets.lock().values().cloned().collect();
        let mut families: BTreeMap<Arc<str>, FamilySnapshot> = BTreeMap::new();
        for set in &sets {
            for id in 0..set.len() as u32 {
                let Some(s) = set.series(id) else { continue };
                let buckets = if s.kind == MetricKind::Histogram {
                    s.bounds
                        .iter()
                        .copied()
                        .chain(std::iter::once(f64::MAX))
                        .zip(s.buckets.iter().map(|b| b.load(Ordering::Relaxed)))
                        .collect()
                } else {
                    Vec::new()
                };
                families
                    .entry(s.family.clone())
                    .or_insert_with(|| FamilySnapshot {
                        name: s.family.clone(),
                        kind: s.kind,
                        series: Vec::new(),
                    })
                    .series
                    .push(SeriesSnapshot {
                        plugin: set.plugin.clone(),
                        labels: s.labels.to_vec(),
                        value: s.value.get(),
                        buckets,
                    });
            }
        }
        let mut out: Vec<FamilySnapshot> = families.into_values().collect();
        for f in &mut out {
            f.series
                .sort_by(|a, b| (&a.plugin, &a.labels).cmp(&(&b.plugin, &b.labels)));
        }
        out
    }
}

/// OpenMetrics suffixes a family name may not end in (they name samples of other types).
const RESERVED_SUFFIXES: &[&str] = &[
    "_total", "_created", "_bucket", "_count", "_sum", "_gcount", "_gsum", "_info",
];

/// The base name (what follows the prefix): `[a-zA-Z_][a-zA-Z0-9_]*`, at most
/// [`MAX_NAME_BYTES`], not starting with `__`, no reserved suffix (a counter's `_total` is
/// dropped first).
fn check_name(name: &str, kind: MetricKind) -> Result<&str> {
    let base = if kind == MetricKind::Counter {
        name.strip_suffix("_total").unwrap_or(name)
    } else {
        name
    };
    let ok_chars = base
        .bytes()
        .enumerate()
        .all(|(i, b)| b == b'_' || b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit()));
    if base.is_empty() || name.len() > MAX_NAME_BYTES || !ok_chars {
        bail!(
            KEEL_ERR_METRIC_INVALID,
            "metric name '{}' is not [a-zA-Z_][a-zA-Z0-9_]* of at most {MAX_NAME_BYTES} bytes (Prometheus name rules; ':' is reserved for recording rules)",
            name.escape_debug()
        );
    }
    if base.starts_with("__") {
        bail!(
            KEEL_ERR_METRIC_INVALID,
            "metric name '{name}' starts with '__' (reserved)"
        );
    }
    if let Some(s) = RESERVED_SUFFIXES.iter().find(|s| base.ends_with(*s)) {
        bail!(
            KEEL_ERR_METRIC_INVALID,
            "metric name '{name}' ends in '{s}', a suffix OpenMetrics reserves for samples"
        );
    }
    Ok(base)
}

/// Label names refused: `plugin` is Keel's, `le` and `quantile` are the exposition's.
const RESERVED_LABELS: &[&str] = &["plugin", "le", "quantile"];

/// A JSON object of string values → sorted (name, value) pairs.
fn parse_labels(json: &[u8]) -> Result<Box<[(String, String)]>> {
    if json.iter().all(u8::is_ascii_whitespace) {
        return Ok(Box::new([]));
    }
    let v: serde_json::Value = serde_json::from_slice(json)
        .map_err(|e| crate::err!(KEEL_ERR_METRIC_INVALID, "metric labels are not a JSON object: {e}"))?;
    let Some(obj) = v.as_object() else {
        bail!(
            KEEL_ERR_METRIC_INVALID,
            "metric labels must be a JSON object of strings"
        );
    };
    if obj.len() > MAX_LABELS {
        bail!(
            KEEL_ERR_METRIC_INVALID,
            "{} labels; at most {MAX_LABELS} per series",
            obj.len()
        );
    }
    let mut out = Vec::with_capacity(obj.len());
    for (k, v) in obj {
        let ok = !k.is_empty()
            && k.len() <= MAX_LABEL_NAME_BYTES
            && k.bytes()
                .enumerate()
                .all(|(i, b)| b == b'_' || b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit()));
        if !ok || k.starts_with("__") || RESERVED_LABELS.contains(&k.as_str()) {
            bail!(
                KEEL_ERR_METRIC_INVALID,
                "label name '{}' is refused ([a-zA-Z_][a-zA-Z0-9_]*, at most {MAX_LABEL_NAME_BYTES} bytes, not '__…', 'plugin', 'le' or 'quantile')",
                k.escape_debug()
            );
        }
        let Some(v) = v.as_str() else {
            bail!(KEEL_ERR_METRIC_INVALID, "label '{k}' is not a string");
        };
        if v.len() > MAX_LABEL_VALUE_BYTES || v.chars().any(|c| c.is_control() || c == '"' || c == '\\') {
            bail!(
                KEEL_ERR_METRIC_INVALID,
                "value of label '{k}' is longer than {MAX_LABEL_VALUE_BYTES} bytes or holds '\"', '\\' or a control character"
            );
        }
        out.push((k.clone(), v.to_string()));
    }
    out.sort();
    Ok(out.into_boxed_slice())
}

fn check_buckets(kind: MetricKind, buckets: &[f64]) -> Result<Box<[f64]>> {
    if kind != MetricKind::Histogram {
        if !buckets.is_empty() {
            bail!(KEEL_ERR_METRIC_INVALID, "only a histogram has buckets");
        }
        return Ok(Box::new([]));
    }
    if buckets.is_empty() {
        return Ok(DEFAULT_BUCKETS.into());
    }
    if buckets.len() > MAX_BUCKETS {
        bail!(
            KEEL_ERR_METRIC_INVALID,
            "{} buckets; at most {MAX_BUCKETS}",
            buckets.len()
        );
    }
    if buckets.iter().any(|b| !b.is_finite()) || buckets.windows(2).any(|w| w[0] >= w[1]) {
        bail!(
            KEEL_ERR_METRIC_INVALID,
            "histogram bucket bounds must be finite and strictly increasing (+Inf is added)"
        );
    }
    Ok(buckets.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn define_update_snapshot() {
        let r = MetricRegistry::default();
        let s = r.set_for("p");
        let c = r.define(&s, MetricKind::Counter, "requests_total", b"", &[]).unwrap();
        assert_eq!(r.define(&s, MetricKind::Counter, "requests", b" ", &[]).unwrap(), c);
        let g = r.define(&s, MetricKind::Gauge, "depth", br#"{"q":"a"}"#, &[]).unwrap();
        let h = r.define(&s, MetricKind::Histogram, "lat", b"", &[1.0, 2.0]).unwrap();
        s.add(c, 2.0).unwrap();
        s.add(c, 1.5).unwrap();
        s.set(g, 7.0).unwrap();
        s.add(g, -2.0).unwrap();
        for v in [0.5, 1.5, 9.0] {
            s.observe(h, v).unwrap();
        }
        assert_eq!(s.add(c, -1.0), Err(keel_status::KEEL_ERR_METRIC_INVALID));
        assert_eq!(s.set(c, 1.0), Err(keel_status::KEEL_ERR_METRIC_CONFLICT));
        assert_eq!(s.add(99, 1.0), Err(keel_status::KEEL_ERR_METRIC_INVALID));
        let snap = r.snapshot();
        let names: Vec<&str> = snap.iter().map(|f| &*f.name).collect();
        assert_eq!(names, ["keel_custom_depth", "keel_custom_lat", "keel_custom_requests"]);
        assert_eq!(snap[2].series[0].value, 3.5);
        assert_eq!(snap[0].series[0].value, 5.0);
        assert_eq!(snap[0].series[0].labels, vec![("q".to_string(), "a".to_string())]);
        assert_eq!(snap[1].series[0].buckets, vec![(1.0, 1), (2.0, 1), (f64::MAX, 1)]);
        assert_eq!(snap[1].series[0].value, 11.0);
    }

    #[test]
    fn bad_names_labels_buckets_and_conflicts() {
        let r = MetricRegistry::default();
        let s = r.set_for("p");
        for bad in ["", "1x", "a-b", "a:b", "__x", "x_count", "é", &"x".repeat(129)] {
            let e = r.define(&s, MetricKind::Gauge, bad, b"", &[]).unwrap_err();
            assert_eq!(e.status(), keel_status::KEEL_ERR_METRIC_INVALID, "{bad}");
        }
        for bad in [
            &br#"{"plugin":"x"}"#[..],
            br#"{"a":1}"#,
            b"[1]",
            br#"{"a":"x\"y"}"#,
            b"{",
        ] {
            let e = r.define(&s, MetricKind::Gauge, "g", bad, &[]).unwrap_err();
            assert_eq!(e.status(), keel_status::KEEL_ERR_METRIC_INVALID);
        }
        let e = r.define(&s, MetricKind::Histogram, "h", b"", &[2.0, 1.0]).unwrap_err();
        assert_eq!(e.status(), keel_status::KEEL_ERR_METRIC_INVALID);
        let e = r.define(&s, MetricKind::Gauge, "g", b"", &[1.0]).unwrap_err();
        assert_eq!(e.status(), keel_status::KEEL_ERR_METRIC_INVALID);
        r.define(&s, MetricKind::Gauge, "g", b"", &[]).unwrap();
        let e = r.define(&s, MetricKind::Counter, "g", b"", &[]).unwrap_err();
        assert_eq!(e.status(), keel_status::KEEL_ERR_METRIC_CONFLICT);
        let other = r.set_for("q");
        let e = r.define(&other, MetricKind::Counter, "g", b"", &[]).unwrap_err();
        assert_eq!(e.status(), keel_status::KEEL_ERR_METRIC_CONFLICT);
        assert!(e.message().contains("'p'"), "{e}");
        r.define(&other, MetricKind::Gauge, "g", b"", &[]).unwrap();
        r.forget("p");
        assert_eq!(r.snapshot()[0].series.len(), 1);
    }

    #[test]
    fn concurrent_updates_lose_nothing() {
        let r = MetricRegistry::default();
        let s = r.set_for("p");
        let c = r.define(&s, MetricKind::Counter, "c", b"", &[]).unwrap();
        let g = r.define(&s, MetricKind::Gauge, "g", b"", &[]).unwrap();
        let h = r.define(&s, MetricKind::Histogram, "h", b"", &[0.5]).unwrap();
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    for _ in 0..10_000 {
                        s.add(c, 0.5).unwrap();
                        s.add(g, -1.0).unwrap();
                        s.observe(h, 1.0).unwrap();
                    }
                });
            }
        });
        assert_eq!(s.value(c), Some(40_000.0));
        assert_eq!(s.value(g), Some(-80_000.0));
        let snap = r.snapshot();
        let hist = &snap.iter().find(|f| &*f.name == "keel_custom_h").unwrap().series[0];
        assert_eq!(hist.buckets, vec![(0.5, 0), (f64::MAX, 80_000)]);
        assert_eq!(hist.value, 80_000.0);
    }

    #[test]
    fn series_cap() {
        let r = MetricRegistry::default();
        let s = r.set_for("p");
        for i in 0..MAX_SERIES_PER_PLUGIN {
            let labels = format!(r#"{{"i":"{i}"}}"#);
            assert_eq!(
                r.define(&s, MetricKind::Counter, "c", labels.as_bytes(), &[]).unwrap(),
                i as u32
            );
        }
        let e = r
            .define(&s, MetricKind::Counter, "c", br#"{"i":"x"}"#, &[])
            .unwrap_err();
        assert_eq!(e.status(), keel_status::KEEL_ERR_METRIC_SERIES_LIMIT);
        // Existing series are still found and updated.
        assert_eq!(r.define(&s, MetricKind::Counter, "c", br#"{"i":"5"}"#, &[]).unwrap(), 5);
        s.add(9_999, 1.0).unwrap();
        assert_eq!(s.value(9_999), Some(1.0));
    }
}
