//! The Grafana dashboard installed with Keel (cmake/dashboards/keel-plugins.json) queries
//! only metric names a real host exports: a host with a loaded fixture plugin, a few calls
//! and a running health monitor is scraped, and every name in every panel query and in the
//! template variable must be among the scraped series.

use crate::common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use keel::health::HealthConfig;
use serde_json::Value;

fn dashboard() -> Value {
    let path = common::repo().join("cmake/dashboards/keel-plugins.json");
    serde_json::from_slice(&std::fs::read(&path).unwrap()).expect("the dashboard is valid JSON")
}

/// Every panel, rows' nested panels included.
fn panels(d: &Value) -> Vec<&Value> {
    fn walk<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
        for p in v.as_array().into_iter().flatten() {
            out.push(p);
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&d["panels"], &mut out);
    out
}

/// Keywords, and aggregation operators (which may stand before `by (...)` rather than `(`).
const PROMQL_WORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "sum",
    "avg",
    "min",
    "max",
    "count",
    "group",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
];

/// Metric names in a PromQL expression: identifiers outside strings, label matchers,
/// ranges and grouping clauses that are neither functions, keywords nor numbers.
fn metric_names(expr: &str) -> BTreeSet<String> {
    // Blank out "..." strings, {...} matchers and [...] ranges.
    let mut plain = String::with_capacity(expr.len());
    let mut depth_brace = 0;
    let mut depth_bracket = 0;
    let mut in_str = false;
    for c in expr.chars() {
        match c {
            '"' => in_str = !in_str,
            '{' if !in_str => depth_brace += 1,
            '}' if !in_str => depth_brace -= 1,
            '[' if !in_str => depth_bracket += 1,
            ']' if !in_str => depth_bracket -= 1,
            _ => {}
        }
        let keep = !in_str && depth_brace == 0 && depth_bracket == 0 && !"\"{}[]".contains(c);
        plain.push(if keep { c } else { ' ' });
    }
    // Blank out grouping label lists: by (...), without (...), on (...), ignoring (...).
    let mut s = plain.clone();
    for kw in ["by", "without", "on", "ignoring"] {
        let mut from = 0;
        while let Some(i) = s[from..].find(kw).map(|i| i + from) {
            let before_ok = i == 0 || !s.as_bytes()[i - 1].is_ascii_alphanumeric() && s.as_bytes()[i - 1] != b'_';
            let rest = &s[i + kw.len()..];
            let open = rest.len() - rest.trim_start().len();
            if before_ok && rest.trim_start().starts_with('(') {
                let start = i + kw.len() + open;
                let end = s[start..].find(')').map(|e| e + start).unwrap_or(s.len() - 1);
                s.replace_range(start..=end, &" ".repeat(end - start + 1));
            }
            from = i + kw.len();
        }
    }
    let mut names = BTreeSet::new();
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i] as char;
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < bytes.len()
                && ((bytes[i] as char).is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b':')
            {
                i += 1;
            }
            let word = &s[start..i];
            let next = s[i..].trim_start().chars().next();
            let is_function = next == Some('(');
            if !is_function && !PROMQL_WORDS.contains(&word) && !word.starts_with("$") {
                names.insert(word.to_string());
            }
        } else if c.is_ascii_digit() || c == '.' {
            while i < bytes.len() && ((bytes[i] as char).is_ascii_alphanumeric() || bytes[i] == b'.') {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    names
}

/// Scrape a real host: a fixture plugin, calls (every one timed), a reload, a monitor check.
fn scrape() -> (BTreeSet<String>, String) {
    let host = common::host();
    host.trust().set_require_signature(false).unwrap();
    host.set_latency_sampling(1);
    let (_dir, manifest) = common::echo_plugin("dashboard", &[], serde_json::json!({}));
    let slot = host.load(&manifest).unwrap();
    let id = slot.resolve("echo").unwrap();
    let mut out = Vec::new();
    for _ in 0..10 {
        slot.call(id, b"x", &mut out).unwrap();
    }
    host.reload("echo").unwrap();
    host.start_health_monitor(HealthConfig {
        interval: Duration::from_millis(10),
        ..HealthConfig::default()
    })
    .unwrap();
    let give_up = Instant::now() + Duration::from_secs(60);
    while host.health("echo").unwrap().checks == 0 {
        assert!(Instant::now() < give_up, "the monitor never checked the plugin");
        std::thread::sleep(Duration::from_millis(5));
    }
    host.stop_health_monitor();
    let text = host.metrics_text();
    let names = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect();
    (names, text)
}

#[test]
fn every_queried_metric_is_exported_by_a_real_host() {
    let d = dashboard();
    let (exported, text) = scrape();

    let mut queried = BTreeSet::new();
    for p in panels(&d) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("target without expr in {}", p["title"]));
            let names = metric_names(expr);
            assert!(!names.is_empty(), "no metric in {expr}");
            queried.extend(names);
        }
    }
    // The template variables: label_values(<metric>{<the variables before>}, <label>), in the
    // order job → instance → plugin (job and instance are the labels Prometheus adds when it
    // scrapes a server, so a dashboard over many servers can select them).
    let vars = d["templating"]["list"].as_array().unwrap();
    let names: Vec<&str> = vars.iter().filter_map(|v| v["name"].as_str()).collect();
    assert_eq!(names, ["datasource", "job", "instance", "plugin"]);
    for (name, want) in [
        ("job", "label_values(keel_plugin_calls_total, job)"),
        (
            "instance",
            "label_values(keel_plugin_calls_total{job=~\"$job\"}, instance)",
        ),
        (
            "plugin",
            "label_values(keel_plugin_calls_total{job=~\"$job\", instance=~\"$instance\"}, plugin)",
        ),
    ] {
        let v = vars.iter().find(|v| v["name"] == name).unwrap();
        assert_eq!(v["query"]["query"].as_str().unwrap(), want, "variable {name}");
        assert_eq!(v["definition"], want, "variable {name}");
        assert_eq!(v["includeAll"], true, "variable {name}");
        assert!(v["allValue"].is_string(), "variable {name}");
    }
    queried.insert("keel_plugin_calls_total".to_string());
    assert!(
        text.contains("keel_plugin_calls_total{plugin=\"echo\""),
        "the variable's label is on the metric"
    );

    let missing: Vec<_> = queried.difference(&exported).collect();
    assert!(missing.is_empty(), "queried but not exported: {missing:?}\n{text}");
    // The panels the dashboard promises.
    for want in [
        "keel_plugin_calls_total",
        "keel_plugin_errors_total",
        "keel_plugin_call_duration_seconds_bucket",
        "plugin_health_score",
        "keel_plugin_reloads_total",
        "keel_plugin_reload_failures_total",
        "keel_plugin_drain_timeouts_total",
        "keel_plugin_load_duration_seconds",
    ] {
        assert!(queried.contains(want), "the dashboard has no panel on {want}");
    }
}

#[test]
fn the_themisdb_dashboard_names_are_exported_too() {
    // ThemisDB's own dashboard (themisdb-compat §6.2) queries these un-prefixed gauges.
    let (exported, text) = scrape();
    for name in [
        "plugin_function_calls",
        "plugin_errors",
        "plugin_reload_count",
        "plugin_load_time_ms",
        "plugin_call_latency_avg_ms",
        "plugin_call_latency_p95_ms",
        "plugin_call_latency_p99_ms",
        "plugin_health_score",
    ] {
        assert!(exported.contains(name), "{name} missing\n{text}");
    }
    // plugin_memory_bytes is declared, with series only for runtimes that know the size.
    assert!(text.contains("# TYPE plugin_memory_bytes gauge"));
}

#[test]
fn dashboard_shape() {
    let d = dashboard();
    assert_eq!(d["schemaVersion"], 39);
    assert_eq!(d["uid"], "keel-plugins");
    let ps = panels(&d);
    let mut ids = BTreeSet::new();
    for p in &ps {
        assert!(
            ids.insert(p["id"].as_u64().expect("numeric id")),
            "duplicate id {}",
            p["id"]
        );
        let g = &p["gridPos"];
        assert!(
            g["w"].as_u64().unwrap() + g["x"].as_u64().unwrap() <= 24,
            "{} too wide",
            p["title"]
        );
        if p["type"] != "row" {
            assert!(
                !p["targets"].as_array().unwrap().is_empty(),
                "{} has no query",
                p["title"]
            );
            // Every query follows the job, instance and plugin variables.
            for t in p["targets"].as_array().unwrap() {
                let expr = t["expr"].as_str().unwrap();
                for var in ["job", "instance", "plugin"] {
                    let matcher = format!("{var}=~\"${var}\"");
                    assert!(expr.contains(&matcher), "{}: {expr} lacks {matcher}", p["title"]);
                }
            }
        }
    }
    // The health score: 0 red, 0.5 yellow, 0.8 green, as ThemisDB's dashboard.
    let score = ps
        .iter()
        .find(|p| p["title"] == "Health score")
        .expect("a health score panel");
    let steps = score["fieldConfig"]["defaults"]["thresholds"]["steps"]
        .as_array()
        .unwrap();
    let got: Vec<(String, Option<f64>)> = steps
        .iter()
        .map(|s| (s["color"].as_str().unwrap().to_string(), s["value"].as_f64()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("red".to_string(), None),
            ("yellow".to_string(), Some(0.5)),
            ("green".to_string(), Some(0.8))
        ]
    );
    assert_eq!(score["fieldConfig"]["defaults"]["unit"], "percentunit");
}

#[test]
fn promql_name_extraction() {
    let n = |e: &str| metric_names(e).into_iter().collect::<Vec<_>>();
    assert_eq!(
        n(r#"histogram_quantile(0.95, sum by (plugin, le) (rate(a_bucket{plugin=~"$plugin"}[$__rate_interval])))"#),
        vec!["a_bucket"]
    );
    assert_eq!(
        n(r#"sum by (plugin) (rate(x_total[5m])) / sum by (plugin) (rate(y_total[5m]))"#),
        vec!["x_total", "y_total"]
    );
    assert_eq!(
        n(r#"plugin_health_score{plugin=~"$plugin"}"#),
        vec!["plugin_health_score"]
    );
    assert_eq!(n("up offset 5m"), vec!["up"]);
}
