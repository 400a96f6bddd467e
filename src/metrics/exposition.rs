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
//! and the un-prefixed gauges ThemisDB's `PluginMetricsCollector` / `PluginHealthMonitor`
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

use super::{LatencySnapshot, MetricsSnapshot};
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
}

impl fmt::Debug for PluginCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PluginCollector").finish_non_exhaustive()
    }
}

impl PluginCollector {
    pub fn new(plugins: Arc<dyn PluginSource>) -> PluginCollector {
        PluginCollector { plugins, custom: None }
    }

    /// A collector that also exports the plugin-defined metrics of `custom`.
    pub fn with_custom(plugins: Arc<dyn PluginSource>, custom: Arc<MetricRegistry>) -> PluginCollector {
        PluginCollector {
            plugins,
            custom: Some(custom),
        }
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
    pub health: HealthReport,
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

impl Collector for PluginCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let rows = self.plugins.plugin_rows();
        let e = &mut enc;

        // Keel's own families.
        counter(e, "keel_plugin_calls", "Calls into the plugin.", &rows, |r| {
            r.counters.calls
        })?;
        counter(e, "keel_plugin_errors", "Calls that returned an error.", &rows, |r| {
            r.counters.errors
        })?;
        counter(e, "keel_plugin_loads", "Successful loads of the plugin.", &rows, |r| {
            r.counters.loads
        })?;
        counter(
            e,
            "keel_plugin_reloads",
            "Successful hot reloads (health-monitor restarts included).",
            &rows,
            |r| r.counters.reloads,
        )?;
        counter(
            e,
            "keel_plugin_reload_failures",
            "Hot reloads rolled back.",
            &rows,
            |r| r.counters.reload_failures,
        )?;
        counter(
            e,
            "keel_plugin_drain_timeouts",
            "Unloads and reloads whose old generation still had calls in flight at the drain timeout.",
            &rows,
            |r| r.counters.drain_timeouts,
        )?;
        counter(
            e,
            "keel_plugin_health_restarts",
            "Restarts performed by the health monitor.",
            &rows,
            |r| r.health.restarts,
        )?;
        gauge(
            e,
            "keel_plugin_load_duration",
            "Duration of the last (re)load.",
            Some(&Unit::Seconds),
            Labels::Keel,
            &rows,
            |r| Some(Value::Float(r.counters.last_load_nanos as f64 / 1e9)),
        )?;
        gauge(
            e,
            "keel_plugin_generation",
            "Current generation number (1 after load, +1 per reload).",
            None,
            Labels::Keel,
            &rows,
            |r| Some(Value::Int(r.generation)),
        )?;
        {
            let mut m = e.encode_descriptor(
                "keel_plugin_call_duration",
                "Latency of sampled calls (one call in N per thread is timed).",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            for r in &rows {
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
        gauge(
            e,
            "plugin_function_calls",
            "Function calls (ThemisDB-compatible gauge).",
            None,
            Labels::Themis,
            &rows,
            |r| Some(Value::Int(r.counters.calls)),
        )?;
        gauge(
            e,
            "plugin_errors",
            "Calls that returned an error (ThemisDB-compatible gauge).",
            None,
            Labels::Themis,
            &rows,
            |r| Some(Value::Int(r.counters.errors)),
        )?;
        gauge(
            e,
            "plugin_reload_count",
            "Successful hot reloads (ThemisDB-compatible gauge).",
            None,
            Labels::Themis,
            &rows,
            |r| Some(Value::Int(r.counters.reloads)),
        )?;
        gauge(
            e,
            "plugin_load_time_ms",
            "Duration of the last (re)load in milliseconds (ThemisDB-compatible gauge).",
            None,
            Labels::Themis,
            &rows,
            |r| Some(Value::Float(r.counters.last_load_nanos as f64 / NANOS_PER_MS)),
        )?;
        gauge(
            e,
            "plugin_call_latency_avg_ms",
            "Mean latency of sampled calls in milliseconds (ThemisDB-compatible gauge).",
            None,
            Labels::Themis,
            &rows,
            |r| r.latency.mean_nanos().map(|n| Value::Float(n / NANOS_PER_MS)),
        )?;
        gauge(
            e,
            "plugin_call_latency_p95_ms",
            "95th percentile of sampled call latencies in milliseconds (ThemisDB-compatible gauge).",
            None,
            Labels::Themis,
            &rows,
            |r| r.latency.quantile_nanos(0.95).map(|n| Value::Float(n / NANOS_PER_MS)),
        )?;
        gauge(
            e,
            "plugin_call_latency_p99_ms",
            "99th percentile of sampled call latencies in milliseconds (ThemisDB-compatible gauge).",
            None,
            Labels::Themis,
            &rows,
            |r| r.latency.quantile_nanos(0.99).map(|n| Value::Float(n / NANOS_PER_MS)),
        )?;
        gauge(
            e,
            "plugin_memory_bytes",
            "Memory the plugin's runtime reports for it (WASM linear memory); absent when unknown.",
            None,
            Labels::Themis,
            &rows,
            |r| r.memory_bytes.map(Value::Int),
        )?;
        gauge(
            e,
            "plugin_health_score",
            "Health score in [0,1] from the last health check (ThemisDB-compatible gauge).",
            None,
            Labels::Themis,
            &rows,
            |r| (r.health.checks > 0).then_some(Value::Float(r.health.score)),
        )?;
        if let Some(custom) = &self.custom {
            for f in custom.snapshot() {
                custom_family(e, &f)?;
            }
        }
        Ok(())
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

    #[test]
    fn labels_end_skips_quoted_braces_and_escapes() {
        let l = r#"x{a="}\"}",b="c"} 1"#;
        assert_eq!(&l[labels_end(l, 1)..], " 1");
        assert_eq!(labels_end("x{a=\"", 1), 5);
    }
}
