//! Metrics exposition through prometheus-client: every family with the values known calls,
//! reloads and failures must produce; the sampled latency histogram's counts; and the text
//! checked line by line against the OpenMetrics text grammar.

use crate::common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use keel::keel_status::*;
use keel::Host;

fn host() -> Host {
    let h = common::host();
    h.trust().set_require_signature(false).unwrap();
    h
}

/// One sample line: name, labels, value.
#[derive(Debug, Clone)]
pub(crate) struct Sample {
    pub(crate) name: String,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) value: f64,
}

/// A parsed exposition: families (name → type) in order, and samples.
#[derive(Debug, Default)]
pub(crate) struct Exposition {
    types: Vec<(String, String)>,
    units: HashMap<String, String>,
    samples: Vec<Sample>,
}

impl Exposition {
    pub(crate) fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
    }
    /// The samples named `name`.
    pub(crate) fn samples_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.name == name)
    }
    pub(crate) fn names(&self) -> std::collections::BTreeSet<String> {
        self.samples.iter().map(|s| s.name.clone()).collect()
    }
}

fn is_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_' || ch == ':')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
}

fn parse_value(v: &str) -> Result<f64, String> {
    match v {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => v.parse::<f64>().map_err(|e| format!("value {v:?}: {e}")),
    }
}

/// `k="v",k2="v2"` (values without escapes, as Keel's names and versions have none).
fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    let mut rest = s;
    while !rest.is_empty() {
        let eq = rest.find("=\"").ok_or_else(|| format!("label without =\" in {s:?}"))?;
        let key = &rest[..eq];
        if !is_name(key) || key.contains(':') {
            return Err(format!("bad label name {key:?}"));
        }
        let after = &rest[eq + 2..];
        let close = after
            .find('"')
            .ok_or_else(|| format!("unterminated label value in {s:?}"))?;
        let val = &after[..close];
        if val.contains('\\') || val.contains('\n') {
            return Err(format!("unexpected escape in {val:?}"));
        }
        if out.insert(key.to_string(), val.to_string()).is_some() {
            return Err(format!("duplicate label {key}"));
        }
        rest = &after[close + 1..];
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else if !rest.is_empty() {
            return Err(format!("junk after label value in {s:?}"));
        }
    }
    Ok(out)
}

/// Check the OpenMetrics text grammar (the subset prometheus-client writes) and parse.
pub(crate) fn parse(text: &str) -> Result<Exposition, String> {
    let mut e = Exposition::default();
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    if lines.last() != Some(&"# EOF\n") {
        return Err("exposition does not end with \"# EOF\\n\"".into());
    }
    let mut family: Option<(String, String)> = None;
    let mut helped = std::collections::HashSet::new();
    for (n, raw) in lines.iter().enumerate() {
        let line = raw
            .strip_suffix('\n')
            .ok_or_else(|| format!("line {n} lacks a newline"))?;
        let err = |m: String| format!("line {}: {m}: {line:?}", n + 1);
        if line == "# EOF" {
            if n + 1 != lines.len() {
                return Err(err("# EOF before the end".into()));
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name, arg) = (parts.next(), parts.next(), parts.next());
            let (Some(kind), Some(name), Some(arg)) = (kind, name, arg) else {
                return Err(err("incomplete metadata line".into()));
            };
            if !is_name(name) {
                return Err(err(format!("bad family name {name:?}")));
            }
            match kind {
                "HELP" => {
                    if !helped.insert(name.to_string()) {
                        return Err(err("family described twice".into()));
                    }
                }
                "TYPE" => {
                    if !["counter", "gauge", "histogram"].contains(&arg) {
                        return Err(err(format!("unexpected type {arg}")));
                    }
                    if e.types.iter().any(|(n, _)| n == name) {
                        return Err(err("family typed twice".into()));
                    }
                    e.types.push((name.to_string(), arg.to_string()));
                    family = Some((name.to_string(), arg.to_string()));
                }
                "UNIT" => {
                    if !name.ends_with(&format!("_{arg}")) {
                        return Err(err("family name does not end with its unit".into()));
                    }
                    e.units.insert(name.to_string(), arg.to_string());
                }
                _ => return Err(err(format!("unknown metadata {kind}"))),
            }
            continue;
        }
        // A sample.
        let (name_labels, value) = line
            .rsplit_once(' ')
            .ok_or_else(|| err("sample without value".into()))?;
        let (name, labels) = match name_labels.split_once('{') {
            Some((n, l)) => {
                let l = l.strip_suffix('}').ok_or_else(|| err("unclosed label set".into()))?;
                (n, parse_labels(l).map_err(err)?)
            }
            None => (name_labels, BTreeMap::new()),
        };
        if !is_name(name) {
            return Err(err(format!("bad metric name {name:?}")));
        }
        let value = parse_value(value).map_err(err)?;
        let Some((fam, typ)) = &family else {
            return Err(err("sample before any TYPE".into()));
        };
        let ok = match typ.as_str() {
            "counter" => *name == format!("{fam}_total"),
            "gauge" => name == fam,
            "histogram" => {
                [format!("{fam}_bucket"), format!("{fam}_sum"), format!("{fam}_count")].contains(&name.to_string())
            }
            _ => false,
        };
        if !ok {
            return Err(err(format!("sample {name} does not belong to {typ} family {fam}")));
        }
        if name.ends_with("_bucket") != labels.contains_key("le") {
            return Err(err("le label on a non-bucket or missing on a bucket".into()));
        }
        if typ == "counter" && (value.is_nan() || value < 0.0) {
            return Err(err("negative counter".into()));
        }
        e.samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    Ok(e)
}

/// Histogram invariants per label set: buckets in increasing `le`, cumulative counts
/// non-decreasing, the last bucket `+Inf` equal to `_count`.
pub(crate) fn check_histograms(e: &Exposition, family: &str) -> usize {
    let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for s in e.samples.iter().filter(|s| s.name == format!("{family}_bucket")) {
        let mut l = s.labels.clone();
        let le = parse_value(&l.remove("le").unwrap()).unwrap();
        series.entry(format!("{l:?}")).or_default().push((le, s.value));
    }
    for (key, buckets) in &series {
        for w in buckets.windows(2) {
            assert!(w[1].0 > w[0].0, "{key}: le not increasing: {buckets:?}");
            assert!(w[1].1 >= w[0].1, "{key}: counts not cumulative: {buckets:?}");
        }
        let last = buckets.last().unwrap();
        assert_eq!(last.0, f64::INFINITY, "{key}: last bucket is +Inf");
        let count = e
            .samples
            .iter()
            .find(|s| {
                s.name == format!("{family}_count") && {
                    let l = s.labels.clone();
                    format!("{l:?}") == *key
                }
            })
            .unwrap_or_else(|| panic!("{key}: no _count"))
            .value;
        assert_eq!(last.1, count, "{key}: +Inf bucket equals _count");
    }
    series.len()
}

fn echo(host: &Host, tag: &str, defines: &[&str]) -> (std::path::PathBuf, Arc<keel::registry::Slot>) {
    let (dir, manifest) = common::echo_plugin(tag, defines, serde_json::json!({}));
    let slot = host.load(&manifest).unwrap();
    (dir, slot)
}

fn call(slot: &keel::registry::Slot, f: &str, input: &[u8]) -> keel::Result<Vec<u8>> {
    let id = slot.resolve(f).unwrap();
    let mut out = Vec::new();
    slot.call(id, input, &mut out).map(|()| out)
}

#[test]
fn families_carry_the_values_of_known_calls_reloads_and_failures() {
    let host = host();
    host.set_latency_sampling(1);
    let (dir, slot) = echo(&host, "metrics-families", &[]);
    for _ in 0..5 {
        call(&slot, "echo", b"x").unwrap();
    }
    assert_eq!(call(&slot, "fail", b"").unwrap_err().status(), KEEL_ERR_CALL_FAILED);
    assert_eq!(host.reload("echo").unwrap(), 2);
    // A reload that fails verification is rolled back and counted.
    std::fs::write(dir.join("libecho.so"), b"not the pinned library").unwrap();
    assert_eq!(host.reload("echo").unwrap_err().status(), KEEL_ERR_DIGEST_MISMATCH);

    let text = host.metrics_text();
    let e = parse(&text).unwrap_or_else(|m| panic!("{m}\n{text}"));
    let keel = [("plugin", "echo"), ("version", "1.0.0")];
    let themis = [("plugin", "echo")];
    let want_keel = [
        ("keel_plugin_calls_total", 6.0),
        ("keel_plugin_errors_total", 1.0),
        ("keel_plugin_loads_total", 1.0),
        ("keel_plugin_reloads_total", 1.0),
        ("keel_plugin_reload_failures_total", 1.0),
        ("keel_plugin_drain_timeouts_total", 0.0),
        ("keel_plugin_health_restarts_total", 0.0),
        ("keel_plugin_generation", 2.0),
        ("keel_plugin_call_duration_seconds_count", 6.0),
    ];
    for (name, v) in want_keel {
        assert_eq!(e.get(name, &keel), Some(v), "{name}\n{text}");
    }
    for (name, v) in [
        ("plugin_function_calls", 6.0),
        ("plugin_errors", 1.0),
        ("plugin_reload_count", 1.0),
    ] {
        assert_eq!(e.get(name, &themis), Some(v), "{name}\n{text}");
    }
    // ThemisDB gauges carry only the plugin label.
    let calls = e.samples.iter().find(|s| s.name == "plugin_function_calls").unwrap();
    assert_eq!(calls.labels.keys().collect::<Vec<_>>(), vec!["plugin"]);

    let load_s = e.get("keel_plugin_load_duration_seconds", &keel).unwrap();
    let load_ms = e.get("plugin_load_time_ms", &themis).unwrap();
    assert!(load_s > 0.0);
    assert!(
        (load_ms - load_s * 1e3).abs() <= 1e-9 * load_ms.max(1.0),
        "{load_ms} ms vs {load_s} s"
    );
    assert_eq!(
        e.units.get("keel_plugin_load_duration_seconds").map(String::as_str),
        Some("seconds")
    );

    let sum = e.get("keel_plugin_call_duration_seconds_sum", &keel).unwrap();
    let avg = e.get("plugin_call_latency_avg_ms", &themis).unwrap();
    let p95 = e.get("plugin_call_latency_p95_ms", &themis).unwrap();
    let p99 = e.get("plugin_call_latency_p99_ms", &themis).unwrap();
    assert!(sum > 0.0 && avg > 0.0 && p95 > 0.0);
    assert!(
        (avg - sum / 6.0 * 1e3).abs() <= 1e-6 * avg,
        "avg {avg} ms = sum {sum} s / 6"
    );
    assert!(p99 >= p95, "p99 {p99} >= p95 {p95}");
    assert_eq!(check_histograms(&e, "keel_plugin_call_duration_seconds"), 1);

    // Native plugins report no memory: no series rather than 0. No monitor: no score.
    assert_eq!(e.get("plugin_memory_bytes", &themis), None, "{text}");
    assert_eq!(e.get("plugin_health_score", &themis), None, "{text}");
    assert!(e.types.iter().any(|(n, t)| n == "plugin_memory_bytes" && t == "gauge"));
}

#[test]
fn latency_is_sampled_one_call_in_n_per_thread() {
    let host = host();
    host.set_latency_sampling(8);
    let (_dir, slot) = echo(&host, "metrics-sampling", &[]);
    for _ in 0..80 {
        call(&slot, "echo", b"x").unwrap();
    }
    assert_eq!(slot.metrics.latency.snapshot().count(), 10, "80 calls / 8");

    // Four threads, each its own countdown: 4 × 64 calls / 16.
    host.set_latency_sampling(16);
    let before = slot.metrics.latency.snapshot().count();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..64 {
                    call(&slot, "echo", b"y").unwrap();
                }
            });
        }
    });
    assert_eq!(slot.metrics.latency.snapshot().count() - before, 16);

    // Off: calls are counted, nothing is timed.
    host.set_latency_sampling(0);
    assert_eq!(slot.metrics.sample_every(), 0);
    let before = slot.metrics.latency.snapshot().count();
    for _ in 0..100 {
        call(&slot, "echo", b"x").unwrap();
    }
    assert_eq!(slot.metrics.latency.snapshot().count(), before);
    assert_eq!(slot.metrics.calls.get(), 80 + 256 + 100);

    let e = parse(&host.metrics_text()).unwrap();
    let labels = [("plugin", "echo"), ("version", "1.0.0")];
    assert_eq!(e.get("keel_plugin_call_duration_seconds_count", &labels), Some(26.0));
    assert_eq!(e.get("keel_plugin_calls_total", &labels), Some(436.0));

    // Plugins loaded later get the host's setting.
    host.set_latency_sampling(3);
    let (_d2, counter) = {
        let dir = common::tempdir("metrics-sampling-counter");
        let so = common::build_native("counter", &[], &dir, "libcounter.so");
        let m = common::write_manifest(&dir, "counter", "1.0.0", &so, serde_json::json!({}));
        (dir, host.load(&m).unwrap())
    };
    assert_eq!(counter.metrics.sample_every(), 4, "3 rounded up to a power of two");
}

#[test]
fn latency_sampling_through_the_c_abi() {
    use keel::ffi::health::keel_host_set_latency_sampling;
    use keel::ffi::host::*;
    let (_dir, manifest) = common::echo_plugin("metrics-c", &[], serde_json::json!({}));
    let mut h = std::ptr::null_mut();
    assert_eq!(keel_host_new(&mut h), KEEL_OK);
    common::allow_unsigned(h);
    assert_eq!(
        keel_host_set_latency_sampling(std::ptr::null(), 1),
        KEEL_ERR_NULL_POINTER
    );
    assert_eq!(keel_host_set_latency_sampling(h, 1), KEEL_OK);
    let path = std::ffi::CString::new(manifest.to_str().unwrap()).unwrap();
    let mut p = std::ptr::null_mut();
    assert_eq!(keel_host_load(h, path.as_ptr(), &mut p), KEEL_OK);
    let mut f = 0;
    assert_eq!(keel_plugin_function(p, c"echo".as_ptr(), &mut f), KEEL_OK);
    let mut buf = std::ptr::null_mut();
    assert_eq!(keel_buffer_new(&mut buf), KEEL_OK);
    for _ in 0..3 {
        assert_eq!(keel_call(p, f, b"a".as_ptr(), 1, buf), KEEL_OK);
    }
    assert_eq!(keel_host_metrics_text(h, buf), KEEL_OK);
    let (mut d, mut n) = (std::ptr::null(), 0);
    assert_eq!(keel_buffer_data(buf, &mut d, &mut n), KEEL_OK);
    // SAFETY: keel_buffer_data returned KEEL_OK: d points to n bytes the buffer owns, read before it changes.
    let text = String::from_utf8(unsafe { std::slice::from_raw_parts(d, n) }.to_vec()).unwrap();
    let e = parse(&text).unwrap_or_else(|m| panic!("{m}\n{text}"));
    assert_eq!(
        e.get(
            "keel_plugin_call_duration_seconds_count",
            &[("plugin", "echo"), ("version", "1.0.0")]
        ),
        Some(3.0)
    );
    keel_buffer_free(buf);
    keel_plugin_free(p);
    assert_eq!(keel_host_free(h), KEEL_OK);
}

#[test]
fn exposition_of_several_plugins_parses_as_openmetrics_text() {
    let host = host();
    let (_d1, echo) = echo(&host, "metrics-parse", &[]);
    let dir = common::tempdir("metrics-parse-counter");
    let so = common::build_native("counter", &[], &dir, "libcounter.so");
    let m = common::write_manifest(&dir, "counter", "2.1.0", &so, serde_json::json!({}));
    let counter = host.load(&m).unwrap();
    host.set_latency_sampling(1);
    for i in 0..50 {
        call(&echo, "echo", &vec![b'z'; i]).unwrap();
        call(&counter, "incr", b"").unwrap();
    }
    let text = host.metrics_text();
    let e = parse(&text).unwrap_or_else(|m| panic!("{m}\n{text}"));
    // Every family once, each with one series per plugin (memory: none for native plugins).
    for (family, typ) in &e.types {
        let series: std::collections::BTreeSet<String> = e
            .samples
            .iter()
            .filter(|s| s.name.starts_with(family.as_str()))
            .map(|s| s.labels.get("plugin").cloned().unwrap_or_default())
            .collect();
        let expect = if family == "plugin_memory_bytes" || family == "plugin_health_score" {
            0
        } else if family.starts_with("keel_plugin_sandbox_") {
            // Sandbox series only for isolated plugins (all of them in the isolated re-run).
            if common::isolated_run() {
                2
            } else {
                0
            }
        } else {
            2
        };
        assert_eq!(series.len(), expect, "{family} ({typ}): {series:?}");
    }
    assert_eq!(check_histograms(&e, "keel_plugin_call_duration_seconds"), 2);
    assert_eq!(
        e.get(
            "keel_plugin_calls_total",
            &[("plugin", "counter"), ("version", "2.1.0")]
        ),
        Some(50.0)
    );
    // Plugins appear sorted by name within each family.
    let order: Vec<&str> = e
        .samples
        .iter()
        .filter(|s| s.name == "keel_plugin_calls_total")
        .map(|s| s.labels["plugin"].as_str())
        .collect();
    assert_eq!(order, vec!["counter", "echo"]);
    // Nothing but Keel's and ThemisDB's names.
    for n in e.names() {
        assert!(n.starts_with("keel_plugin_") || n.starts_with("plugin_"), "{n}");
    }
    // The grammar check itself refuses broken text.
    assert!(
        parse("keel_plugin_calls_total 1\n# EOF\n").is_err(),
        "sample before TYPE"
    );
    assert!(parse("# TYPE x counter\nx_total 1\n").is_err(), "no EOF");
    assert!(
        parse("# TYPE x counter\nx 1\n# EOF\n").is_err(),
        "counter sample without _total"
    );
    assert!(
        parse("# TYPE x gauge\nx{a=\"b\" 1\n# EOF\n").is_err(),
        "unclosed labels"
    );
}

#[test]
fn an_embedder_registry_can_hold_keels_collector() {
    let host = host();
    let (_dir, slot) = echo(&host, "metrics-embed", &[]);
    call(&slot, "echo", b"x").unwrap();
    let mut reg = prometheus_client::registry::Registry::with_prefix("db");
    reg.register_collector(Box::new(host.metrics_collector()));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
    let e = parse(&text).unwrap_or_else(|m| panic!("{m}\n{text}"));
    assert_eq!(
        e.get("db_keel_plugin_calls_total", &[("plugin", "echo")]),
        Some(1.0),
        "{text}"
    );
}

#[test]
fn wasm_plugins_report_the_linear_memory_of_their_instances() {
    let dir = common::tempdir("metrics-wasm-memory");
    let wasm = wat::parse_file(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wasm/memhog.wat"))
        .unwrap();
    let bin = dir.join("memhog.wasm");
    std::fs::write(&bin, &wasm).unwrap();
    let manifest = dir.join("memhog.json");
    std::fs::write(
        &manifest,
        serde_json::to_vec(&serde_json::json!({
            "manifest_version": 1, "name": "memhog", "version": "1.0.0", "runtime": "wasm",
            "binary": {"wasm32": "memhog.wasm"}, "sha256": common::sha256_file(&bin),
            "limits": {"memory_mb": 2}
        }))
        .unwrap(),
    )
    .unwrap();
    let host = host();
    let slot = host.load(&manifest).unwrap();
    let memory = |host: &Host| {
        let text = host.metrics_text();
        parse(&text)
            .unwrap_or_else(|e| panic!("{e}\n{text}"))
            .get("plugin_memory_bytes", &[("plugin", "memhog")])
    };
    // One instance with its one declared page.
    assert_eq!(memory(&host), Some(65536.0));
    // `probe` grows the memory to the 2 MiB cap and returns the page count: the gauge follows.
    let out = call(&slot, "probe", b"").unwrap();
    let pages = u32::from_le_bytes(out[..4].try_into().unwrap());
    assert_eq!(pages, 32);
    assert_eq!(memory(&host), Some(f64::from(pages) * 65536.0));
    // `hog` traps: the instance is discarded and its memory no longer counted.
    assert_eq!(call(&slot, "hog", b"").unwrap_err().status(), KEEL_ERR_MEMORY_LIMIT);
    assert_eq!(memory(&host), Some(0.0));
    // The next call runs on a fresh instance.
    call(&slot, "probe", b"").unwrap();
    assert_eq!(memory(&host), Some(32.0 * 65536.0));
    drop(slot);
    host.unload("memhog").unwrap();
    assert_eq!(memory(&host), None);
}
