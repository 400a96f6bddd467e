//! Prometheus / OpenMetrics exposition through `prometheus-client`: a [`Collector`] that
//! reads every loaded plugin's counters, sampled latency histogram and health record at
//! scrape time. Nothing is registered or updated per call.
//!
//! Families (label `plugin`, Keel's own also `version`):
//!
//! | family | type | value |
//! |---|---|---|
//! | `keel_plugin_calls_total` | counter | calls into the plugin (all generations) |
//! | `keel_plugin_errors_total` | counter | calls that returned an error |
//! | `keel_plugin_loads_total` | counter | successful loads |
//! | `keel_plugin_reloads_total` | counter | successful hot reloads (restarts included) |
//! | `keel_plugin_reload_failures_total` | counter | reloads rolled back |
//! | `keel_plugin_drain_timeouts_total` | counter | unloads/reloads whose old generation outlived the drain timeout |
//! | `keel_plugin_health_restarts_total` | counter | restarts done by the health monitor |
//! | `keel_plugin_load_duration_seconds` | gauge | duration of the last (re)load |
//! | `keel_plugin_generation` | gauge | current generation number |
//! | `keel_plugin_call_duration_seconds` | histogram | sampled call latencies (octave buckets 64 ns … 2^34 ns) |
//!
//! | `keel_plugin_isolated` | gauge | 1: the plugin runs in a sandbox process (native isolation), 0: not |
//! | `keel_plugin_sandbox_up` | gauge | isolated plugins: 1 while the sandbox process runs |
//! | `keel_plugin_sandbox_restarts_total` | counter | isolated plugins: sandboxes started again after a death |
//! | `keel_plugin_sandbox_deaths_total` | counter | isolated plugins, label `cause` ([`super::SANDBOX_DEATH_CAUSES`]): unplanned ends |
//!
//! (the sandbox counters count from the generation's load), and the un-prefixed gauges ThemisDB's `PluginMetricsCollector` / `PluginHealthMonitor`
//! publish and its Grafana dashboard queries (label `plugin` only): `plugin_function_calls`,
//! `plugin_errors`, `plugin_reload_count`, `plugin_load_time_ms`,
//! `plugin_call_latency_avg_ms`, `plugin_call_latency_p95_ms`, `plugin_call_latency_p99_ms`
//! (from the sampled histogram; no sample while nothing was timed), `plugin_memory_bytes`
//! (only for plugins whose runtime reports it — no series rather than a made-up 0) and
//! `plugin_health_score` (only once the health monitor has checked the plugin).
//!
//! Plugin-defined metrics (capability `metrics:write`, see
//! [`crate::services::plugin_metrics`]) follow: one family per name, `keel_custom_<name>`
//! (counters with `_total`), labels `plugin` plus the plugin's own.
//!
//! The histogram counts sampled calls only (one in N, see [`super::PluginMetrics::observe`]);
//! its quantiles and rates of `_sum / _count` are unbiased, its `_count` is about
//! `calls / N`.

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

use super::{LatencySnapshot, MetricsSnapshot, SandboxSnapshot, SANDBOX_DEATH_CAUSES};
use crate::health_state::HealthReport;
use crate::services::plugin_metrics::{FamilySnapshot, MetricKind, MetricRegistry};

/// The HTTP `Content-Type` of [`crate::host::Host::metrics_text`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The HTTP `Content-Type` of the classic Prometheus text format (version 0.0.4), the output of
/// [`to_prometheus_text`]: what a server's existing `/metrics` endpoint serves when its other
/// collectors write that format.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The index just past the `}` closing the label set that opens at `open` (a `{`), skipping
/// quoted label values with their escapes; the line's length if it is not closed.
fn labels_end(line: &str, open: usize) -> usize {
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in line[open..].char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            '}' if !in_quotes => return open + i + 1,
            _ => {}
        }
    }
    line.len()
}

/// Rewrite an OpenMetrics text exposition (as `prometheus-client` writes it) into the classic
/// Prometheus text format 0.0.4, so that it can be appended to a server's own endpoint:
/// - no `# EOF` line, no `# UNIT` lines (the unit is already part of the family name);
/// - a counter family is named after its samples (`# TYPE keel_plugin_calls_total counter`,
///   where OpenMetrics says `keel_plugin_calls`);
/// - `unknown` becomes `untyped`; OpenMetrics-only types (`info`, `stateset`,
///   `gaugehistogram`) become `untyped`;
/// - `_created` samples and exemplars (` # {...}` after a value) are dropped.
///
/// Samples, labels and values are kept byte for byte.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    // Pass 1: the type of every family (HELP precedes TYPE, so it is needed before).
    let mut types: Vec<(&str, &str)> = Vec::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some((name, typ)) = rest.split_once(' ') {
                types.push((name, typ));
            }
        }
    }
    let type_of = |name: &str| types.iter().find(|(n, _)| *n == name).map(|(_, t)| *t);
    let family_of_sample = |sample: &str| {
        types
            .iter()
            .filter(|(n, _)| sample.starts_with(n))
            .max_by_key(|(n, _)| n.len())
            .map(|(n, t)| (*n, *t))
    };
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = line
            .strip_prefix("# HELP ")
            .map(|r| ("HELP", r))
            .or_else(|| line.strip_prefix("# TYPE ").map(|r| ("TYPE", r)));
        if let Some((kind, rest)) = meta {
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            let typ = type_of(name).unwrap_or("unknown");
            out.push_str("# ");
            out.push_str(kind);
            out.push(' ');
            out.push_str(name);
            if typ == "counter" {
                out.push_str("_total");
            }
            out.push(' ');
            if kind == "TYPE" {
                out.push_str(match typ {
                    "counter" | "gauge" | "histogram" | "summary" => typ,
                    _ => "untyped",
                });
            } else {
                out.push_str(tail);
            }
            out.push('\n');
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..name_end];
        if name.ends_with("_created")
            && matches!(family_of_sample(name), Some((_, "counter" | "histogram" | "summary")))
        {
            continue;
        }
        // An exemplar follows the value as ` # {labels} value [timestamp]`: look for it only
        // after the sample's own label set (whose quoted values may contain anything).
        let body_start = if line[name_end..].starts_with('{') {
            labels_end(line, name_end)
        } else {
            name_end
        };
        let end = line[body_start..]
            .find(" # ")
            .map(|i| body_start + i)
            .unwrap_or(line.len());
        out.push_str(&line[..end]);
        out.push('\n');
    }
    out
}

/// Where a [`PluginCollector`] reads the loaded plugins at every scrape (the host's registry).
pub trait PluginSource: Send + Sync {
    /// One row per loaded plugin, sorted by name; plugins without a current generation
    /// (mid-unload) are left out.
    fn plugin_rows(&self) -> Vec<PluginRow>;
}

/// Reads the plugins of a [`PluginSource`] at every scrape. Register it in a
/// `prometheus_client::registry::Registry` (the host keeps one; embedders may add Keel's
/// collector to their own registry with [`crate::host::Host::metrics_collector`]).
pub struct PluginCollector {
    plugins: Arc<dyn PluginSource>,
    /// Plugin-defined metrics, read at every scrape too.
    custom: Option<Arc<MetricRegistry>>,
    options: ExpositionOptions,
}

impl fmt::Debug for PluginCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PluginCollector").finish_non_exhaustive()
    }
}

impl PluginCollector {
    pub fn new(plugins: Arc<dyn PluginSource>) -> PluginCollector {
        PluginCollector {
            plugins,
            custom: None,
            options: ExpositionOptions::default(),
        }
    }

    /// A collector that also exports the plugin-defined metrics of `custom`.
    pub fn with_custom(plugins: Arc<dyn PluginSource>, custom: Arc<MetricRegistry>) -> PluginCollector {
        PluginCollector {
            plugins,
            custom: Some(custom),
            options: ExpositionOptions::default(),
        }
    }

    /// The same collector writing with `options`.
    pub fn with_options(mut self, options: ExpositionOptions) -> PluginCollector {
        self.options = options;
        self
    }
}

/// One plugin as read at scrape time.
#[derive(Clone, Debug)]
pub struct PluginRow {
    pub name: String,
    pub version: String,
    pub generation: u64,
    pub counters: MetricsSnapshot,
    pub latency: LatencySnapshot,
    pub memory_bytes: Option<u64>,
    /// The sandbox counters of an isolated plugin (`None`: not isolated).
    pub sandbox: Option<SandboxSnapshot>,
    pub health: HealthReport,
    /// The label text of `name` and `version`, rendered once when the generation was made.
    pub labels: Arc<PluginLabels>,
}

/// Options of an exposition ([`crate::host::Host::metrics_text_with`], the flags of
/// `keel_host_metrics_text_format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExpositionOptions {
    /// Leave out the `keel_plugin_call_duration_seconds` series (its `_sum`, `_count` and 30
    /// `_bucket` lines, about 3 KB per plugin) of every plugin that has had no call since it
    /// was loaded (`keel_plugin_calls_total` 0): its histogram is all zeros. The family's
    /// `HELP`/`TYPE` lines and every other family stay. Default: off (every plugin's
    /// histogram is written).
    pub omit_idle_histograms: bool,
}

/// The constant label text of one plugin's series, rendered once per generation (at load and
/// at every reload, whose version may differ) instead of at every scrape:
/// `plugin="<name>",version="<version>"` (Keel's families) and `plugin="<name>"` (the
/// ThemisDB-compatible gauges). Written exactly as `prometheus-client` writes these labels
/// (values verbatim: plugin names and versions are restricted to characters that need no
/// escaping).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginLabels {
    name: String,
    version: String,
    keel: String,
    themis: String,
}

impl PluginLabels {
    pub fn new(name: &str, version: &str) -> PluginLabels {
        PluginLabels {
            name: name.to_string(),
            version: version.to_string(),
            keel: format!("plugin=\"{name}\",version=\"{version}\""),
            themis: format!("plugin=\"{name}\""),
        }
    }

    /// Whether this is the label text of `name` at `version`.
    pub fn is_for(&self, name: &str, version: &str) -> bool {
        self.name == name && self.version == version
    }
}

impl PluginRow {
    fn keel_labels(&self) -> [(&str, &str); 2] {
        [("plugin", self.name.as_str()), ("version", self.version.as_str())]
    }
    fn themis_labels(&self) -> [(&str, &str); 1] {
        [("plugin", self.name.as_str())]
    }
}

const NANOS_PER_MS: f64 = 1e6;

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[PluginRow],
    value: fn(&PluginRow) -> u64,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for r in rows {
        let labels = r.keel_labels();
        m.encode_family(&labels)?
            .encode_counter::<NoLabelSet, u64, u64>(&value(r), None)?;
    }
    Ok(())
}

enum Labels {
    Keel,
    Themis,
}

#[derive(Clone, Copy)]
enum Value {
    Int(u64),
    Float(f64),
}

fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    labels: Labels,
    rows: &[PluginRow],
    value: fn(&PluginRow) -> Option<Value>,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    for r in rows {
        let Some(v) = value(r) else { continue };
        let (k, t);
        let mut sample = match labels {
            Labels::Keel => {
                k = r.keel_labels();
                m.encode_family(&k)?
            }
            Labels::Themis => {
                t = r.themis_labels();
                m.encode_family(&t)?
            }
        };
        match v {
            Value::Int(i) => sample.encode_gauge(&i)?,
            Value::Float(f) => sample.encode_gauge(&f)?,
        }
    }
    Ok(())
}

type CounterFamily = (&'static str, &'static str, fn(&PluginRow) -> u64);
type GaugeFamily = (&'static str, &'static str, fn(&PluginRow) -> Option<Value>);

/// Keel's counter families: name (without `_total`), help, value.
const KEEL_COUNTERS: [CounterFamily; 7] = [
    ("keel_plugin_calls", "Calls into the plugin.", |r| r.counters.calls),
    ("keel_plugin_errors", "Calls that returned an error.", |r| {
        r.counters.errors
    }),
    ("keel_plugin_loads", "Successful loads of the plugin.", |r| {
        r.counters.loads
    }),
    (
        "keel_plugin_reloads",
        "Successful hot reloads (health-monitor restarts included).",
        |r| r.counters.reloads,
    ),
    ("keel_plugin_reload_failures", "Hot reloads rolled back.", |r| {
        r.counters.reload_failures
    }),
    (
        "keel_plugin_drain_timeouts",
        "Unloads and reloads whose old generation still had calls in flight at the drain timeout.",
        |r| r.counters.drain_timeouts,
    ),
    (
        "keel_plugin_health_restarts",
        "Restarts performed by the health monitor.",
        |r| r.health.restarts,
    ),
];

const LOAD_DURATION_HELP: &str = "Duration of the last (re)load.";
const ISOLATED_HELP: &str = "1 when the plugin runs in a sandbox process (native isolation), else 0.";
const SANDBOX_UP_HELP: &str = "1 while the isolated plugin's sandbox process runs, 0 while it is down.";
const SANDBOX_RESTARTS_HELP: &str = "Sandbox processes started again after a death (this generation).";
const SANDBOX_DEATHS_HELP: &str = "Unplanned ends of the sandbox process by cause (this generation).";

fn isolated(r: &PluginRow) -> Option<Value> {
    Some(Value::Int(r.sandbox.is_some() as u64))
}

fn sandbox_up(r: &PluginRow) -> Option<Value> {
    r.sandbox.map(|s| Value::Int(s.up as u64))
}
const GENERATION_HELP: &str = "Current generation number (1 after load, +1 per reload).";
const CALL_DURATION_HELP: &str = "Latency of sampled calls (one call in N per thread is timed).";

fn load_duration(r: &PluginRow) -> Option<Value> {
    Some(Value::Float(r.counters.last_load_nanos as f64 / 1e9))
}

fn generation(r: &PluginRow) -> Option<Value> {
    Some(Value::Int(r.generation))
}

/// The ThemisDB-compatible gauges (PluginMetricsCollector, PluginHealthMonitor): name, help,
/// value (none: no sample for that plugin).
const THEMIS_GAUGES: [GaugeFamily; 9] = [
    (
        "plugin_function_calls",
        "Function calls (ThemisDB-compatible gauge).",
        |r| Some(Value::Int(r.counters.calls)),
    ),
    (
        "plugin_errors",
        "Calls that returned an error (ThemisDB-compatible gauge).",
        |r| Some(Value::Int(r.counters.errors)),
    ),
    (
        "plugin_reload_count",
        "Successful hot reloads (ThemisDB-compatible gauge).",
        |r| Some(Value::Int(r.counters.reloads)),
    ),
    (
        "plugin_load_time_ms",
        "Duration of the last (re)load in milliseconds (ThemisDB-compatible gauge).",
        |r| Some(Value::Float(r.counters.last_load_nanos as f64 / NANOS_PER_MS)),
    ),
    (
        "plugin_call_latency_avg_ms",
        "Mean latency of sampled calls in milliseconds (ThemisDB-compatible gauge).",
        |r| r.latency.mean_nanos().map(|n| Value::Float(n / NANOS_PER_MS)),
    ),
    (
        "plugin_call_latency_p95_ms",
        "95th percentile of sampled call latencies in milliseconds (ThemisDB-compatible gauge).",
        |r| r.latency.quantile_nanos(0.95).map(|n| Value::Float(n / NANOS_PER_MS)),
    ),
    (
        "plugin_call_latency_p99_ms",
        "99th percentile of sampled call latencies in milliseconds (ThemisDB-compatible gauge).",
        |r| r.latency.quantile_nanos(0.99).map(|n| Value::Float(n / NANOS_PER_MS)),
    ),
    (
        "plugin_memory_bytes",
        "Memory the plugin's runtime reports for it (WASM linear memory); absent when unknown.",
        |r| r.memory_bytes.map(Value::Int),
    ),
    (
        "plugin_health_score",
        "Health score in [0,1] from the last health check (ThemisDB-compatible gauge).",
        |r| (r.health.checks > 0).then_some(Value::Float(r.health.score)),
    ),
];

impl Collector for PluginCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let rows = self.plugins.plugin_rows();
        let e = &mut enc;

        // Keel's own families.
        for (name, help, value) in KEEL_COUNTERS {
            counter(e, name, help, &rows, value)?;
        }
        gauge(
            e,
            "keel_plugin_load_duration",
            LOAD_DURATION_HELP,
            Some(&Unit::Seconds),
            Labels::Keel,
            &rows,
            load_duration,
        )?;
        gauge(
            e,
            "keel_plugin_generation",
            GENERATION_HELP,
            None,
            Labels::Keel,
            &rows,
            generation,
        )?;
        {
            let mut m = e.encode_descriptor(
                "keel_plugin_call_duration",
                CALL_DURATION_HELP,
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            for r in &rows {
                if self.options.omit_idle_histograms && r.counters.calls == 0 {
                    continue;
                }
                let labels = r.keel_labels();
                let buckets = r.latency.prometheus_buckets();
                m.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
                    r.latency.sum_nanos as f64 / 1e9,
                    r.latency.count(),
                    &buckets,
                    None,
                )?;
            }
        }

        // ThemisDB-compatible gauges (PluginMetricsCollector, PluginHealthMonitor).
        for (name, help, value) in THEMIS_GAUGES {
            gauge(e, name, help, None, Labels::Themis, &rows, value)?;
        }
        // Process isolation.
        gauge(
            e,
            "keel_plugin_isolated",
            ISOLATED_HELP,
            None,
            Labels::Keel,
            &rows,
            isolated,
        )?;
        gauge(
            e,
            "keel_plugin_sandbox_up",
            SANDBOX_UP_HELP,
            None,
            Labels::Keel,
            &rows,
            sandbox_up,
        )?;
        {
            let mut m = e.encode_descriptor(
                "keel_plugin_sandbox_restarts",
                SANDBOX_RESTARTS_HELP,
                None,
                MetricType::Counter,
            )?;
            for r in &rows {
                if let Some(s) = &r.sandbox {
                    m.encode_family(&r.keel_labels())?
                        .encode_counter::<NoLabelSet, u64, u64>(&s.restarts, None)?;
                }
            }
        }
        {
            let mut m = e.encode_descriptor(
                "keel_plugin_sandbox_deaths",
                SANDBOX_DEATHS_HELP,
                None,
                MetricType::Counter,
            )?;
            for r in &rows {
                if let Some(s) = &r.sandbox {
                    for (cause, n) in SANDBOX_DEATH_CAUSES.iter().zip(s.deaths) {
                        let labels = [
                            ("plugin", r.name.as_str()),
                            ("version", r.version.as_str()),
                            ("cause", *cause),
                        ];
                        m.encode_family(&labels)?
                            .encode_counter::<NoLabelSet, u64, u64>(&n, None)?;
                    }
                }
            }
        }
        if let Some(custom) = &self.custom {
            for f in custom.snapshot() {
                custom_family(e, &f)?;
            }
        }
        Ok(())
    }
}

/// Writes only the plugin-defined families of a [`MetricRegistry`] (what
/// [`PluginCollector::with_custom`] writes after the plugin families): the host renders its
/// plugin families with [`write_plugin_families`] and these through `prometheus-client`.
pub struct CustomCollector(pub Arc<MetricRegistry>);

impl fmt::Debug for CustomCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CustomCollector").finish_non_exhaustive()
    }
}

impl Collector for CustomCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        for f in self.0.snapshot() {
            custom_family(&mut enc, &f)?;
        }
        Ok(())
    }
}

// --- The plugin families, rendered directly ------------------------------------------------
//
// `write_plugin_families` writes the same bytes as `PluginCollector` encoding its plugin
// families through `prometheus-client` (a test compares the two), without its per-sample
// costs: label sets are copied from each generation's pre-rendered `PluginLabels`, histogram
// bucket bounds from text rendered once per process, and numbers are formatted with the
// formatters prometheus-client uses (itoa, dtoa).

/// `# HELP`, `# TYPE` and (with a unit) `# UNIT` of one family, as prometheus-client writes
/// them; `name` already carries the unit suffix.
fn write_header(out: &mut String, name: &str, help: &str, typ: &str, unit: Option<&str>) {
    out.push_str("# HELP ");
    out.push_str(name);
    out.push(' ');
    out.push_str(help);
    out.push_str("\n# TYPE ");
    out.push_str(name);
    out.push(' ');
    out.push_str(typ);
    out.push('\n');
    if let Some(unit) = unit {
        out.push_str("# UNIT ");
        out.push_str(name);
        out.push(' ');
        out.push_str(unit);
        out.push('\n');
    }
}

fn push_u64(out: &mut String, v: u64) {
    out.push_str(itoa::Buffer::new().format(v));
}

fn push_f64(out: &mut String, v: f64) {
    out.push_str(dtoa::Buffer::new().format(v));
}

/// One sample: `<sample>{<labels>} <value>\n`.
fn write_sample(out: &mut String, sample: &str, labels: &str, v: Value) {
    out.push_str(sample);
    out.push('{');
    out.push_str(labels);
    out.push_str("} ");
    match v {
        Value::Int(i) => push_u64(out, i),
        Value::Float(f) => push_f64(out, f),
    }
    out.push('\n');
}

/// `keel_plugin_call_duration_seconds_bucket{le="<bound>",` for every exported bound (the
/// bounds are the same for every plugin), rendered once.
fn bucket_prefixes() -> &'static [String] {
    static PREFIXES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    PREFIXES.get_or_init(|| {
        let empty = LatencySnapshot {
            buckets: [0; super::LATENCY_BUCKETS],
            sum_nanos: 0,
        };
        empty
            .prometheus_buckets()
            .iter()
            .map(|(bound, _)| {
                let le = if *bound == f64::MAX {
                    "+Inf".to_string()
                } else {
                    dtoa::Buffer::new().format(*bound).to_string()
                };
                format!("keel_plugin_call_duration_seconds_bucket{{le=\"{le}\",")
            })
            .collect()
    })
}

/// Write the plugin families of `rows` (everything [`PluginCollector`] writes but the
/// plugin-defined families), byte for byte what `prometheus-client` writes for them in an
/// unprefixed registry.
pub fn write_plugin_families(out: &mut String, rows: &[PluginRow], options: ExpositionOptions) {
    fn counter(out: &mut String, name: &str, help: &str, rows: &[PluginRow], value: fn(&PluginRow) -> u64) {
        write_header(out, name, help, "counter", None);
        let sample = format!("{name}_total");
        for r in rows {
            write_sample(out, &sample, &r.labels.keel, Value::Int(value(r)));
        }
    }
    fn gauge(
        out: &mut String,
        name: &str,
        help: &str,
        unit: Option<&str>,
        labels: Labels,
        rows: &[PluginRow],
        value: fn(&PluginRow) -> Option<Value>,
    ) {
        write_header(out, name, help, "gauge", unit);
        for r in rows {
            let Some(v) = value(r) else { continue };
            let l = match labels {
                Labels::Keel => &r.labels.keel,
                Labels::Themis => &r.labels.themis,
            };
            write_sample(out, name, l, v);
        }
    }
    out.reserve(rows.len() * 4096);
    for f in KEEL_COUNTERS {
        counter(out, f.0, f.1, rows, f.2);
    }
    gauge(
        out,
        "keel_plugin_load_duration_seconds",
        LOAD_DURATION_HELP,
        Some("seconds"),
        Labels::Keel,
        rows,
        load_duration,
    );
    gauge(
        out,
        "keel_plugin_generation",
        GENERATION_HELP,
        None,
        Labels::Keel,
        rows,
        generation,
    );
    write_header(
        out,
        "keel_plugin_call_duration_seconds",
        CALL_DURATION_HELP,
        "histogram",
        Some("seconds"),
    );
    let prefixes = bucket_prefixes();
    for r in rows {
        if options.omit_idle_histograms && r.counters.calls == 0 {
            continue;
        }
        let labels = &r.labels.keel;
        write_sample(
            out,
            "keel_plugin_call_duration_seconds_sum",
            labels,
            Value::Float(r.latency.sum_nanos as f64 / 1e9),
        );
        write_sample(
            out,
            "keel_plugin_call_duration_seconds_count",
            labels,
            Value::Int(r.latency.count()),
        );
        let mut cumulative = 0u64;
        for (prefix, (_, n)) in prefixes.iter().zip(r.latency.prometheus_buckets()) {
            cumulative += n;
            out.push_str(prefix);
            out.push_str(labels);
            out.push_str("} ");
            push_u64(out, cumulative);
            out.push('\n');
        }
    }
    for f in THEMIS_GAUGES {
        gauge(out, f.0, f.1, None, Labels::Themis, rows, f.2);
    }
    gauge(
        out,
        "keel_plugin_isolated",
        ISOLATED_HELP,
        None,
        Labels::Keel,
        rows,
        isolated,
    );
    gauge(
        out,
        "keel_plugin_sandbox_up",
        SANDBOX_UP_HELP,
        None,
        Labels::Keel,
        rows,
        sandbox_up,
    );
    write_header(
        out,
        "keel_plugin_sandbox_restarts",
        SANDBOX_RESTARTS_HELP,
        "counter",
        None,
    );
    for r in rows {
        if let Some(s) = &r.sandbox {
            write_sample(
                out,
                "keel_plugin_sandbox_restarts_total",
                &r.labels.keel,
                Value::Int(s.restarts),
            );
        }
    }
    write_header(out, "keel_plugin_sandbox_deaths", SANDBOX_DEATHS_HELP, "counter", None);
    for r in rows {
        if let Some(s) = &r.sandbox {
            for (cause, n) in SANDBOX_DEATH_CAUSES.iter().zip(s.deaths) {
                let labels = format!("{},cause=\"{cause}\"", r.labels.keel);
                write_sample(out, "keel_plugin_sandbox_deaths_total", &labels, Value::Int(n));
            }
        }
    }
}

/// One plugin-defined family, every plugin's series.
fn custom_family(enc: &mut DescriptorEncoder, f: &FamilySnapshot) -> fmt::Result {
    let (ty, help) = match f.kind {
        MetricKind::Counter => (MetricType::Counter, "Plugin-defined counter."),
        MetricKind::Gauge => (MetricType::Gauge, "Plugin-defined gauge."),
        MetricKind::Histogram => (MetricType::Histogram, "Plugin-defined histogram."),
    };
    let mut m = enc.encode_descriptor(&f.name, help, None, ty)?;
    for s in &f.series {
        let labels: Vec<(&str, &str)> = std::iter::once(("plugin", &*s.plugin))
            .chain(s.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .collect();
        let mut sample = m.encode_family(&labels)?;
        match f.kind {
            MetricKind::Counter => sample.encode_counter::<NoLabelSet, f64, u64>(&s.value, None)?,
            MetricKind::Gauge => sample.encode_gauge(&s.value)?,
            MetricKind::Histogram => {
                let count = s.buckets.iter().map(|b| b.1).sum();
                sample.encode_histogram::<NoLabelSet>(s.value, count, &s.buckets, None)?
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPENMETRICS: &str = "\
# HELP keel_plugin_calls Calls into the plugin.
# TYPE keel_plugin_calls counter
keel_plugin_calls_total{plugin=\"a}b # c\",version=\"1.0.0\"} 6 # {trace_id=\"x\"} 1
keel_plugin_calls_created{plugin=\"a\"} 1700000000
# HELP keel_plugin_load_duration_seconds Duration of the last (re)load.
# TYPE keel_plugin_load_duration_seconds gauge
# UNIT keel_plugin_load_duration_seconds seconds
keel_plugin_load_duration_seconds{plugin=\"a\",version=\"1.0.0\"} 0.5
# HELP odd Something else.
# TYPE odd info
odd_info{plugin=\"a\"} 1
# EOF
";

    #[test]
    fn openmetrics_becomes_classic_prometheus_text() {
        let p = to_prometheus_text(OPENMETRICS);
        assert_eq!(
            p,
            "\
# HELP keel_plugin_calls_total Calls into the plugin.
# TYPE keel_plugin_calls_total counter
keel_plugin_calls_total{plugin=\"a}b # c\",version=\"1.0.0\"} 6
# HELP keel_plugin_load_duration_seconds Duration of the last (re)load.
# TYPE keel_plugin_load_duration_seconds gauge
keel_plugin_load_duration_seconds{plugin=\"a\",version=\"1.0.0\"} 0.5
# HELP odd Something else.
# TYPE odd untyped
odd_info{plugin=\"a\"} 1
"
        );
    }

    struct Rows(Vec<PluginRow>);
    impl PluginSource for Rows {
        fn plugin_rows(&self) -> Vec<PluginRow> {
            self.0.clone()
        }
    }

    /// Rows covering every branch: idle and busy plugins, samples in every bucket range and
    /// past the last, fractional and integral floats, memory and health present or not.
    fn rows() -> Vec<PluginRow> {
        let mut out = Vec::new();
        for (i, name) in ["alpha", "b-2", "themis_plugin", "zz.idle"].iter().enumerate() {
            let i = i as u64;
            let mut latency = LatencySnapshot {
                buckets: [0; super::super::LATENCY_BUCKETS],
                sum_nanos: 0,
            };
            if i != 3 {
                for (k, ns) in [1u64, 64, 65, 999, 12_345, 1 << 20, 3 << 30, 1 << 40, u64::MAX / 2]
                    .iter()
                    .enumerate()
                {
                    let b = super::super::latency_bucket(*ns);
                    latency.buckets[b] += (k as u64 + 1) * (i + 1);
                    latency.sum_nanos = latency.sum_nanos.wrapping_add(ns.wrapping_mul(k as u64 + 1));
                }
            }
            let mut health = HealthReport::default();
            if i % 2 == 1 {
                health.checks = 3;
                health.score = 0.75;
                health.restarts = 2;
            }
            out.push(PluginRow {
                name: name.to_string(),
                version: format!("{i}.2.3-rc.{i}"),
                generation: i + 1,
                counters: MetricsSnapshot {
                    calls: if i == 3 { 0 } else { 1_000_003 * (i + 1) },
                    errors: i * 7,
                    loads: 1,
                    reloads: i,
                    reload_failures: i / 2,
                    drain_timeouts: 0,
                    last_load_nanos: 1_234_567 * (i + 1) + 89,
                },
                latency,
                memory_bytes: (i == 2).then_some(65536 * 17),
                sandbox: i.is_multiple_of(2).then_some(SandboxSnapshot {
                    up: i == 0,
                    restarts: i + 3,
                    deaths: [1, 0, 2, 0, i, 0, 7],
                }),
                health,
                labels: Arc::new(PluginLabels::new(name, &format!("{i}.2.3-rc.{i}"))),
            });
        }
        out
    }

    /// What prometheus-client writes for the plugin families (an unprefixed registry holding
    /// only the collector), without the closing `# EOF`.
    fn through_prometheus_client(rows: Vec<PluginRow>, options: ExpositionOptions) -> String {
        let mut reg = prometheus_client::registry::Registry::default();
        reg.register_collector(Box::new(
            PluginCollector::new(Arc::new(Rows(rows))).with_options(options),
        ));
        let mut text = String::new();
        prometheus_client::encoding::text::encode_registry(&mut text, &reg).unwrap();
        text
    }

    #[test]
    fn the_direct_renderer_writes_what_prometheus_client_writes() {
        for omit in [false, true] {
            let options = ExpositionOptions {
                omit_idle_histograms: omit,
            };
            let expected = through_prometheus_client(rows(), options);
            let mut direct = String::new();
            write_plugin_families(&mut direct, &rows(), options);
            assert_eq!(direct, expected, "omit_idle_histograms={omit}");
            // The classic format is derived from the same text.
            assert_eq!(to_prometheus_text(&direct), to_prometheus_text(&expected));
        }
        // No rows: the families' headers only, as before.
        let mut empty = String::new();
        write_plugin_families(&mut empty, &[], ExpositionOptions::default());
        assert_eq!(
            empty,
            through_prometheus_client(Vec::new(), ExpositionOptions::default())
        );
    }

    #[test]
    fn omitting_idle_histograms_drops_exactly_the_never_called_plugins_histogram() {
        let mut all = String::new();
        write_plugin_families(&mut all, &rows(), ExpositionOptions::default());
        let mut lean = String::new();
        write_plugin_families(
            &mut lean,
            &rows(),
            ExpositionOptions {
                omit_idle_histograms: true,
            },
        );
        let idle = "plugin=\"zz.idle\",version=\"3.2.3-rc.3\"";
        let dropped: Vec<&str> = all.lines().filter(|l| !lean.lines().any(|k| k == *l)).collect();
        // _sum, _count and 30 buckets of the idle plugin, nothing else.
        assert_eq!(dropped.len(), 32, "{dropped:#?}");
        assert!(dropped
            .iter()
            .all(|l| l.starts_with("keel_plugin_call_duration_seconds_") && l.contains(idle)));
        assert!(lean.contains("# TYPE keel_plugin_call_duration_seconds histogram\n"));
        assert!(lean.contains(&format!("keel_plugin_calls_total{{{idle}}} 0\n")));
        assert!(lean.contains("keel_plugin_call_duration_seconds_count{plugin=\"alpha\""));
    }

    #[test]
    fn plugin_labels_know_their_name_and_version() {
        let l = PluginLabels::new("db", "1.0.0");
        assert!(l.is_for("db", "1.0.0"));
        assert!(!l.is_for("db", "1.0.1") && !l.is_for("d", "1.0.0"));
        assert_eq!(l.keel, "plugin=\"db\",version=\"1.0.0\"");
        assert_eq!(l.themis, "plugin=\"db\"");
    }

    #[test]
    fn labels_end_skips_quoted_braces_and_escapes() {
        let l = r#"x{a="}\"}",b="c"} 1"#;
        assert_eq!(&l[labels_end(l, 1)..], " 1");
        assert_eq!(labels_end("x{a=\"", 1), 5);
    }
}
