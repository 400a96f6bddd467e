//! What the package promises about versions and the metrics a server embeds in its own
//! endpoint: `keel_version` and the `KEEL_VERSION_*` macros agree with Cargo.toml and
//! CMakeLists.txt; `keel_host_metrics_text_format` writes OpenMetrics or the classic
//! Prometheus text format 0.0.4 (checked line by line against that format's grammar), and the
//! constants of keel.h are the ones the library uses.

use crate::common;

use std::collections::BTreeMap;
use std::ffi::CString;

use keel::ffi::exposition::*;
use keel::ffi::host::*;
use keel::ffi::version::keel_version;
use keel::keel_status::*;
use keel::metrics::exposition::{CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE};

fn define(header: &str, name: &str) -> String {
    let prefix = format!("#define {name} ");
    header
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no #define {name}"))
        .trim()
        .to_string()
}

fn cargo_version() -> (u32, u32, u32) {
    (
        env!("CARGO_PKG_VERSION_MAJOR").parse().unwrap(),
        env!("CARGO_PKG_VERSION_MINOR").parse().unwrap(),
        env!("CARGO_PKG_VERSION_PATCH").parse().unwrap(),
    )
}

#[test]
fn keel_version_is_the_crate_version() {
    let (mut a, mut b, mut c) = (77, 77, 77);
    assert_eq!(keel_version(&mut a, &mut b, &mut c), KEEL_OK);
    assert_eq!((a, b, c), cargo_version());
    // Any NULL: refused, nothing written.
    let (mut a, mut c) = (77, 77);
    assert_eq!(
        keel_version(&mut a, std::ptr::null_mut(), &mut c),
        KEEL_ERR_NULL_POINTER
    );
    assert_eq!((a, c), (77, 77));
}

#[test]
fn version_macros_match_cargo_and_cmake() {
    let root = common::repo();
    let h = std::fs::read_to_string(root.join("include/keel/keel_version.h")).unwrap();
    let (a, b, c) = cargo_version();
    assert_eq!(define(&h, "KEEL_VERSION_MAJOR"), a.to_string());
    assert_eq!(define(&h, "KEEL_VERSION_MINOR"), b.to_string());
    assert_eq!(define(&h, "KEEL_VERSION_PATCH"), c.to_string());
    assert_eq!(define(&h, "KEEL_VERSION_STRING"), format!("\"{a}.{b}.{c}\""));
    let cmake = std::fs::read_to_string(root.join("CMakeLists.txt")).unwrap();
    assert!(
        cmake.contains(&format!("project(Keel VERSION {a}.{b}.{c} ")),
        "CMakeLists.txt's project version is not {a}.{b}.{c}"
    );
    let keel_h = std::fs::read_to_string(root.join("include/keel/keel.h")).unwrap();
    assert!(
        keel_h.contains("#include \"keel_version.h\""),
        "keel.h includes keel_version.h"
    );
}

#[test]
fn keel_h_metrics_constants_are_the_librarys() {
    let h = std::fs::read_to_string(common::repo().join("include/keel/keel.h")).unwrap();
    assert_eq!(
        define(&h, "KEEL_METRICS_CONTENT_TYPE_OPENMETRICS"),
        format!("\"{CONTENT_TYPE}\"")
    );
    assert_eq!(
        define(&h, "KEEL_METRICS_CONTENT_TYPE_PROMETHEUS"),
        format!("\"{PROMETHEUS_CONTENT_TYPE}\"")
    );
    assert_eq!(
        define(&h, "KEEL_METRICS_FORMAT_OPENMETRICS"),
        format!("{KEEL_METRICS_FORMAT_OPENMETRICS}u")
    );
    assert_eq!(
        define(&h, "KEEL_METRICS_FORMAT_PROMETHEUS"),
        format!("{KEEL_METRICS_FORMAT_PROMETHEUS}u")
    );
    assert_eq!(
        define(&h, "KEEL_METRICS_OMIT_IDLE_HISTOGRAMS"),
        format!("{KEEL_METRICS_OMIT_IDLE_HISTOGRAMS:#x}u")
    );
}

/// The classic Prometheus text format 0.0.4 (what Prometheus' own text parser accepts):
/// `# HELP name text`, `# TYPE name counter|gauge|histogram|summary|untyped`, samples whose
/// name is the family's (histograms: `_bucket`, `_sum`, `_count`); no other `#` line and no
/// `# EOF`. Returns family → type and (sample name, labels) → value.
#[allow(clippy::type_complexity)]
fn parse_prometheus(text: &str) -> Result<(BTreeMap<String, String>, BTreeMap<(String, String), f64>), String> {
    let mut types = BTreeMap::new();
    let mut samples = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    if !text.ends_with('\n') {
        return Err("does not end with a newline".into());
    }
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name, tail) = (parts.next(), parts.next(), parts.next());
            match (kind, name) {
                (Some("HELP"), Some(_)) => {}
                (Some("TYPE"), Some(name)) => {
                    let typ = tail.ok_or("TYPE without a type")?;
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&typ) {
                        return Err(format!("type {typ} is not Prometheus 0.0.4"));
                    }
                    if types.insert(name.to_string(), typ.to_string()).is_some() {
                        return Err(format!("second TYPE for {name}"));
                    }
                    current = Some((name.to_string(), typ.to_string()));
                }
                _ => return Err(format!("comment line not allowed: {line:?}")),
            }
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            return Err(format!("unexpected line {line:?}"));
        }
        let name_end = line.find(['{', ' ']).ok_or("sample without value")?;
        let name = &line[..name_end];
        let (labels, value) = match line[name_end..].strip_prefix('{') {
            Some(r) => {
                let close = r.rfind("} ").ok_or("unterminated labels")?;
                (r[..close].to_string(), r[close + 2..].to_string())
            }
            None => (String::new(), line[name_end + 1..].to_string()),
        };
        let (fam, typ) = current.as_ref().ok_or("sample before TYPE")?;
        let belongs = match typ.as_str() {
            "histogram" => {
                [format!("{fam}_bucket"), format!("{fam}_sum"), format!("{fam}_count")].contains(&name.to_string())
            }
            _ => name == fam,
        };
        if !belongs {
            return Err(format!("sample {name} is not of {typ} family {fam}"));
        }
        if value.contains(' ') || value.contains('#') {
            return Err(format!("timestamp or exemplar after {name}: {value:?}"));
        }
        let v: f64 = match value.as_str() {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v.parse().map_err(|e| format!("{name} value {v:?}: {e}"))?,
        };
        samples.insert((name.to_string(), labels), v);
    }
    Ok((types, samples))
}

fn buffer(b: *const keel_buffer) -> String {
    let mut data = std::ptr::null();
    let mut len = 0;
    assert_eq!(keel_buffer_data(b, &mut data, &mut len), KEEL_OK);
    if len == 0 {
        return String::new();
    }
    // SAFETY: Keel returned `len` readable bytes, valid until the buffer changes.
    String::from_utf8(unsafe { std::slice::from_raw_parts(data, len) }.to_vec()).unwrap()
}

#[test]
fn metrics_in_openmetrics_and_classic_prometheus_text() {
    let mut host = std::ptr::null_mut();
    assert_eq!(keel_host_new(&mut host), KEEL_OK);
    common::allow_unsigned(host);
    let (_dir, manifest) = common::echo_plugin("packaging-metrics", &[], serde_json::json!({}));
    let path = CString::new(manifest.to_str().unwrap()).unwrap();
    let mut plugin = std::ptr::null_mut();
    assert_eq!(keel_host_load(host, path.as_ptr(), &mut plugin), KEEL_OK);
    let mut fid = 0;
    assert_eq!(keel_plugin_function(plugin, c"echo".as_ptr(), &mut fid), KEEL_OK);
    let mut out = std::ptr::null_mut();
    assert_eq!(keel_buffer_new(&mut out), KEEL_OK);
    for _ in 0..3 {
        assert_eq!(keel_call(plugin, fid, b"x".as_ptr(), 1, out), KEEL_OK);
    }

    // OpenMetrics: exactly keel_host_metrics_text.
    assert_eq!(keel_host_metrics_text(host, out), KEEL_OK);
    let om = buffer(out);
    assert_eq!(
        keel_host_metrics_text_format(host, KEEL_METRICS_FORMAT_OPENMETRICS, out),
        KEEL_OK
    );
    assert_eq!(buffer(out), om);
    assert!(om.ends_with("# EOF\n"));

    // Classic Prometheus text: the same samples, in the 0.0.4 grammar.
    assert_eq!(
        keel_host_metrics_text_format(host, KEEL_METRICS_FORMAT_PROMETHEUS, out),
        KEEL_OK
    );
    let prom = buffer(out);
    let (types, samples) = parse_prometheus(&prom).unwrap_or_else(|e| panic!("{e}\n{prom}"));
    assert!(!prom.contains("# EOF") && !prom.contains("# UNIT"), "{prom}");
    assert_eq!(types["keel_plugin_calls_total"], "counter");
    assert_eq!(types["keel_plugin_call_duration_seconds"], "histogram");
    assert_eq!(types["keel_plugin_load_duration_seconds"], "gauge");
    assert_eq!(
        samples[&(
            "keel_plugin_calls_total".to_string(),
            "plugin=\"echo\",version=\"1.0.0\"".to_string()
        )],
        3.0
    );
    // Every OpenMetrics sample is there, with the same value.
    let om_samples: Vec<&str> = om.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).collect();
    let prom_samples: Vec<&str> = prom.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(om_samples, prom_samples);

    // An unknown format: refused, the buffer left empty.
    assert_eq!(keel_host_metrics_text_format(host, 2, out), KEEL_ERR_INVALID_ARGUMENT);
    assert_eq!(buffer(out), "");
    assert_eq!(
        keel_host_metrics_text_format(std::ptr::null(), KEEL_METRICS_FORMAT_PROMETHEUS, out),
        KEEL_ERR_NULL_POINTER
    );
    assert_eq!(
        keel_host_metrics_text_format(host, KEEL_METRICS_FORMAT_PROMETHEUS, std::ptr::null_mut()),
        KEEL_ERR_NULL_POINTER
    );

    assert_eq!(keel_buffer_free(out), KEEL_OK);
    assert_eq!(keel_plugin_free(plugin), KEEL_OK);
    assert_eq!(keel_host_free(host), KEEL_OK);
}

/// `KEEL_METRICS_OMIT_IDLE_HISTOGRAMS` in either format: the never-called plugin's histogram
/// series go, everything else stays; unknown flag bits are refused.
#[test]
fn idle_plugins_histograms_can_be_left_out() {
    let mut host = std::ptr::null_mut();
    assert_eq!(keel_host_new(&mut host), KEEL_OK);
    common::allow_unsigned(host);
    let dir = common::tempdir("packaging-idle");
    let so = common::build_native("echo", &[], &dir, "libecho.so");
    let mut plugins = Vec::new();
    for name in ["busy", "idle"] {
        let m = common::write_manifest(&dir, name, "1.0.0", &so, serde_json::json!({}));
        let path = CString::new(m.to_str().unwrap()).unwrap();
        let mut plugin = std::ptr::null_mut();
        assert_eq!(keel_host_load(host, path.as_ptr(), &mut plugin), KEEL_OK);
        plugins.push(plugin);
    }
    let mut fid = 0;
    assert_eq!(keel_plugin_function(plugins[0], c"echo".as_ptr(), &mut fid), KEEL_OK);
    let mut out = std::ptr::null_mut();
    assert_eq!(keel_buffer_new(&mut out), KEEL_OK);
    assert_eq!(keel_call(plugins[0], fid, b"x".as_ptr(), 1, out), KEEL_OK);
    let histogram_of = |text: &str, plugin: &str| {
        text.lines()
            .filter(|l| {
                l.starts_with("keel_plugin_call_duration_seconds_") && l.contains(&format!("plugin=\"{plugin}\""))
            })
            .count()
    };
    for format in [KEEL_METRICS_FORMAT_OPENMETRICS, KEEL_METRICS_FORMAT_PROMETHEUS] {
        assert_eq!(keel_host_metrics_text_format(host, format, out), KEEL_OK);
        let full = buffer(out);
        assert_eq!(
            keel_host_metrics_text_format(host, format | KEEL_METRICS_OMIT_IDLE_HISTOGRAMS, out),
            KEEL_OK
        );
        let lean = buffer(out);
        // _sum, _count, 29 bounds and +Inf.
        assert_eq!((histogram_of(&full, "busy"), histogram_of(&full, "idle")), (32, 32));
        assert_eq!((histogram_of(&lean, "busy"), histogram_of(&lean, "idle")), (32, 0));
        let rest = |t: &str| -> Vec<String> {
            t.lines()
                .filter(|l| !(l.starts_with("keel_plugin_call_duration_seconds_") && l.contains("plugin=\"idle\"")))
                .map(str::to_string)
                .collect()
        };
        assert_eq!(
            rest(&full),
            rest(&lean),
            "format {format}: only the idle histogram differs"
        );
        assert!(lean.contains("plugin_function_calls{plugin=\"idle\"} 0"), "{lean}");
    }
    // Unknown flag bits, alone or with a known one: refused, nothing written.
    for bad in [
        0x200,
        KEEL_METRICS_OMIT_IDLE_HISTOGRAMS | 0x8000_0000,
        2 | KEEL_METRICS_OMIT_IDLE_HISTOGRAMS,
    ] {
        assert_eq!(
            keel_host_metrics_text_format(host, bad, out),
            KEEL_ERR_INVALID_ARGUMENT,
            "{bad:#x}"
        );
        assert_eq!(buffer(out), "");
    }
    assert_eq!(keel_buffer_free(out), KEEL_OK);
    for p in plugins {
        assert_eq!(keel_plugin_free(p), KEEL_OK);
    }
    assert_eq!(keel_host_free(host), KEEL_OK);
}

#[test]
fn the_prometheus_checker_refuses_openmetrics() {
    // The checker above is not vacuous: OpenMetrics' own text fails it.
    assert!(parse_prometheus("# TYPE x counter\nx_total 1\n").is_err());
    assert!(parse_prometheus("# TYPE x gauge\nx 1\n# EOF\n").is_err());
    assert!(parse_prometheus("# TYPE x_seconds gauge\n# UNIT x_seconds seconds\nx_seconds 1\n").is_err());
    assert!(parse_prometheus("# TYPE x info\nx_info 1\n").is_err());
    assert!(parse_prometheus("# TYPE x_total counter\nx_total 1\n").is_ok());
}
