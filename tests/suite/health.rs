//! The health monitor end to end with native fixtures (echo.c built with -DECHO_HEALTH):
//! unhealthy → restart (new generation, state kept) → healthy; a hung check counted as
//! unhealthy without stalling the monitor; backoff capped and the attempt counter reset on
//! success; score from status and error rate; the C ABI with one code per bad input.
//!
//! Nothing here measures time: intervals are small and outcomes are awaited by bounded
//! polling (the bound only keeps a broken build from hanging).

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel::health::{HealthConfig, HealthReport, HealthStatus};
use keel::keel_status::*;
use keel::registry::Slot;
use keel::Host;

/// Wait until `f` returns `Some`, polling; panic with `what` past a generous bound.
fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < give_up, "gave up waiting for: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Wait until `name`'s health report satisfies `until`; return that report.
fn wait_report(host: &Host, name: &str, what: &str, until: impl Fn(&HealthReport) -> bool) -> HealthReport {
    wait_for(what, || {
        let r = host.health(name).unwrap();
        until(&r).then_some(r)
    })
}

fn host() -> Host {
    let h = common::host();
    h.trust().set_require_signature(false).unwrap();
    h
}

/// Build echo with -DECHO_HEALTH once per test directory; write a manifest per plugin.
fn health_fixture(tag: &str) -> (PathBuf, PathBuf) {
    let dir = common::tempdir(tag);
    let so = common::build_native("echo", &["ECHO_HEALTH"], &dir, "libecho.so");
    (dir, so)
}

fn manifest(dir: &Path, so: &Path, name: &str, config: serde_json::Value) -> PathBuf {
    common::write_manifest(dir, name, "1.0.0", so, serde_json::json!({ "config": config }))
}

/// The fixture loaded as "echo" into a fresh host, its health read from the file `flag`
/// (first holding `status`): returns the host, the plugin's slot, `flag` and the library.
///
/// In the isolated re-run the flag is the key `health` of the plugin's key-value namespace
/// instead (a sandbox has no files): set it with [`set_flag`].
fn flagged(tag: &str, status: &str) -> (Host, Arc<Slot>, PathBuf, PathBuf) {
    let (dir, so) = health_fixture(tag);
    let flag = dir.join("health.flag");
    let host = host();
    set_flag(&host, &flag, status);
    let m = if common::isolated_run() {
        common::write_manifest(
            &dir,
            "echo",
            "1.0.0",
            &so,
            serde_json::json!({"config": {"health_file": "kv:health"}, "capabilities": ["kv:read"]}),
        )
    } else {
        manifest(
            &dir,
            &so,
            "echo",
            serde_json::json!({"health_file": flag.to_str().unwrap()}),
        )
    };
    let slot = host.load(&m).unwrap();
    (host, slot, flag, so)
}

/// Set the health flag of a [`flagged`] plugin.
fn set_flag(host: &Host, flag: &Path, status: &str) {
    if common::isolated_run() {
        host.services()
            .kv_put(keel::services::KvTarget::kv("echo"), b"health", status.as_bytes())
            .unwrap();
    } else {
        std::fs::write(flag, status).unwrap();
    }
}

fn call(slot: &Slot, f: &str, input: &[u8]) -> keel::Result<Vec<u8>> {
    let id = slot.resolve(f).unwrap();
    let mut out = Vec::new();
    slot.call(id, input, &mut out).map(|()| out)
}

fn generation(slot: &Slot) -> u64 {
    slot.current().map(|g| g.number).unwrap_or(0)
}

fn fast(threshold: u32) -> HealthConfig {
    HealthConfig {
        interval: Duration::from_millis(10),
        check_timeout: Duration::from_secs(5),
        unhealthy_threshold: threshold,
        backoff_initial: Duration::from_millis(5),
        backoff_max: Duration::from_millis(20),
        ..HealthConfig::default()
    }
}

#[test]
fn unhealthy_plugin_is_restarted_with_its_state_and_becomes_healthy() {
    let (dir, so) = health_fixture("health-restart");
    let host = host();
    let slot = host
        .load(&manifest(&dir, &so, "echo", serde_json::json!({"unhealthy_after": 5})))
        .unwrap();
    let events = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let ev = events.clone();
    host.add_listener(Arc::new(move |name, e, g| ev.lock().push((name.to_string(), e, g))));

    host.start_health_monitor(fast(2)).unwrap();
    assert!(host.health_monitor_running());
    let first = wait_report(&host, "echo", "a first healthy check", |r| {
        r.status == HealthStatus::Healthy && r.checks > 0
    });
    assert_eq!(first.score, 1.0);
    assert!(first.last_heartbeat.is_some());

    // Five calls make this generation report unhealthy.
    for _ in 0..5 {
        call(&slot, "echo", b"x").unwrap();
    }
    wait_for("a restart into generation 2", || (generation(&slot) >= 2).then_some(()));
    let healthy = wait_report(&host, "echo", "healthy again after the restart", |r| {
        r.status == HealthStatus::Healthy && r.restarts >= 1
    });
    assert_eq!(healthy.restarts, 1, "one restart fixed it: {healthy:?}");
    assert_eq!(healthy.consecutive_failures, 0);
    assert_eq!(healthy.restart_attempts, 0, "reset after success");
    assert_eq!(generation(&slot), 2);
    // The call count was saved and restored across the restart (5 + this call).
    assert_eq!(call(&slot, "calls", b"").unwrap(), b"6");
    assert!(events
        .lock()
        .iter()
        .any(|(n, e, g)| n == "echo" && *e == keel::host::LifecycleEvent::AfterSwap && *g == 2));
    // Every change of the verdict reached the listeners: healthy (gen 1), unhealthy (gen 1),
    // unknown after the restart and healthy again (gen 2). (The last one is delivered just
    // after the report is published.)
    let health_events = || -> Vec<u64> {
        events
            .lock()
            .iter()
            .filter(|(n, e, _)| n == "echo" && *e == keel::host::LifecycleEvent::HealthChanged)
            .map(|(_, _, g)| *g)
            .collect()
    };
    wait_for("the health-changed events", || {
        (health_events().len() >= 4).then_some(())
    });
    let changes = health_events();
    assert_eq!(
        &changes[..2],
        &[1, 1],
        "healthy then unhealthy in generation 1: {changes:?}"
    );
    assert_eq!(
        &changes[changes.len() - 2..],
        &[2, 2],
        "unknown then healthy in generation 2: {changes:?}"
    );

    // Metrics: the restart is a reload and a health restart; the score is published.
    let text = host.metrics_text();
    assert!(
        text.contains("keel_plugin_health_restarts_total{plugin=\"echo\",version=\"1.0.0\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("keel_plugin_reloads_total{plugin=\"echo\",version=\"1.0.0\"} 1\n"),
        "{text}"
    );
    assert!(text.contains("plugin_health_score{plugin=\"echo\"} "), "{text}");
    assert!(host.stop_health_monitor());
    assert!(!host.stop_health_monitor(), "already stopped");
}

#[test]
fn a_hung_check_counts_as_unhealthy_and_does_not_stall_the_monitor() {
    let (dir, so) = health_fixture("health-hang");
    let host = host();
    // The hung check holds the generation; don't wait long for it when the host goes.
    host.set_drain_timeout(Duration::from_millis(20));
    host.load(&manifest(
        &dir,
        &so,
        "slow",
        serde_json::json!({"health_sleep_ms": 10_000}),
    ))
    .unwrap();
    host.load(&manifest(&dir, &so, "quick", serde_json::json!({}))).unwrap();
    host.start_health_monitor(HealthConfig {
        check_timeout: Duration::from_millis(50),
        unhealthy_threshold: u32::MAX,
        ..fast(1)
    })
    .unwrap();

    let slow = wait_report(&host, "slow", "the slow plugin unhealthy three times", |r| {
        r.consecutive_failures >= 3
    });
    assert_eq!(slow.status, HealthStatus::Unhealthy);
    assert!(
        slow.last_error.as_deref().unwrap_or("").contains("did not answer"),
        "{slow:?}"
    );
    assert!((slow.score - 0.3).abs() < 1e-9, "{slow:?}");
    // Meanwhile the other plugin keeps being checked: the monitor is not stuck.
    let quick0 = host.health("quick").unwrap().checks;
    let quick = wait_report(&host, "quick", "five more checks of the quick plugin", |r| {
        r.checks >= quick0 + 5
    });
    assert_eq!(quick.status, HealthStatus::Healthy);
    // Still one hung check per plugin, not one per interval: failures keep counting.
    let later = host.health("slow").unwrap();
    assert!(later.consecutive_failures >= slow.consecutive_failures);
    // Stopping returns although a check is still inside the plugin.
    assert!(host.stop_health_monitor());
    let frozen = host.health("quick").unwrap().checks;
    // The reports stay readable after the stop.
    assert_eq!(host.health("quick").unwrap().checks, frozen);
}

#[test]
fn restarts_back_off_stop_at_the_cap_and_the_counter_resets_after_success() {
    let (host, slot, flag, _so) = flagged("health-cap", "unhealthy");
    host.start_health_monitor(HealthConfig {
        max_restart_attempts: 3,
        ..fast(1)
    })
    .unwrap();

    // Every generation reads the same flag: three attempts, then Failed.
    let failed = wait_report(&host, "echo", "Failed after three attempts", |r| {
        r.status == HealthStatus::Failed
    });
    assert_eq!(failed.restart_attempts, 3, "{failed:?}");
    assert_eq!(failed.restarts, 3, "{failed:?}");
    assert_eq!(generation(&slot), 4);
    // Still checked, no longer restarted.
    let checks = failed.checks;
    let later = wait_report(&host, "echo", "five more checks", |r| r.checks >= checks + 5);
    assert_eq!(later.status, HealthStatus::Failed);
    assert_eq!(generation(&slot), 4, "no restart past the cap");

    // Healthy again: both counters reset (ThemisDB never reset its attempt counter).
    set_flag(&host, &flag, "healthy");
    let ok = wait_report(&host, "echo", "healthy", |r| r.status == HealthStatus::Healthy);
    assert_eq!((ok.consecutive_failures, ok.restart_attempts), (0, 0));

    // So a later fault is restarted again instead of being left disabled.
    set_flag(&host, &flag, "unhealthy");
    wait_for("a fourth restart", || (generation(&slot) >= 5).then_some(()));
    host.stop_health_monitor();
}

#[test]
fn a_failed_restart_is_retried_up_to_the_cap_and_reported() {
    let (host, slot, _flag, so) = flagged("health-failed-restart", "unhealthy");
    // The binary no longer matches the pinned digest: every restart is rolled back.
    std::fs::write(&so, b"tampered").unwrap();
    host.start_health_monitor(HealthConfig {
        max_restart_attempts: 2,
        ..fast(1)
    })
    .unwrap();
    let r = wait_report(&host, "echo", "Failed after two rolled-back restarts", |r| {
        r.status == HealthStatus::Failed
    });
    assert_eq!((r.restarts, r.restart_attempts), (0, 2), "{r:?}");
    let why = r.last_restart_error.clone().unwrap_or_default();
    assert!(why.contains("rolled back"), "{why}");
    assert_eq!(generation(&slot), 1, "the old generation keeps serving");
    assert_eq!(call(&slot, "echo", b"still").unwrap(), b"still");
    assert_eq!(slot.metrics.snapshot().reload_failures, 2);
    host.stop_health_monitor();
}

#[test]
fn score_combines_status_and_error_rate_and_errors_alone_never_restart() {
    let (host, slot, flag, _so) = flagged("health-score", "degraded");
    host.start_health_monitor(fast(1)).unwrap();

    let degraded = wait_report(&host, "echo", "degraded without calls", |r| {
        r.status == HealthStatus::Degraded && r.error_rate == 0.0
    });
    assert!((degraded.score - 0.7).abs() < 1e-9, "{degraded:?}");

    // Every call fails: error rate 1 in every window while we keep calling.
    let failing = |want: HealthStatus| {
        wait_for("a window of failing calls", || {
            assert!(call(&slot, "fail", b"").is_err());
            let r = host.health("echo").unwrap();
            (r.status == want && r.error_rate == 1.0).then_some(r)
        })
    };
    let r = failing(HealthStatus::Degraded);
    assert!((r.score - 0.2).abs() < 1e-9, "0.7 − 0.5·1: {r:?}");

    set_flag(&host, &flag, "healthy");
    let r = failing(HealthStatus::Healthy);
    assert!((r.score - 0.5).abs() < 1e-9, "1.0 − 0.5·1: {r:?}");
    let checks = r.checks;
    let r = wait_for("five more checks with failing calls", || {
        assert!(call(&slot, "fail", b"").is_err());
        let r = host.health("echo").unwrap();
        (r.checks >= checks + 5).then_some(r)
    });
    assert_eq!(
        (r.restarts, generation(&slot)),
        (0, 1),
        "errors alone never restart: {r:?}"
    );
    host.stop_health_monitor();
}

#[test]
fn a_serial_plugins_check_waits_for_its_running_call() {
    if common::skip_when_isolated(common::NEEDS_FILES) {
        return;
    }
    let dir = common::tempdir("health-serial");
    let so = common::build_native("echo", &["ECHO_HEALTH", "ECHO_SERIAL"], &dir, "libecho.so");
    let host = host();
    let slot = host.load(&manifest(&dir, &so, "echo", serde_json::json!({}))).unwrap();
    let release = dir.join("release");
    let entered = dir.join("release.entered");
    std::thread::scope(|s| {
        let caller = s.spawn(|| call(&slot, "block_until", release.to_str().unwrap().as_bytes()));
        wait_for("the call to be running", || entered.exists().then_some(()));
        host.start_health_monitor(HealthConfig {
            check_timeout: Duration::from_millis(30),
            unhealthy_threshold: u32::MAX,
            ..fast(1)
        })
        .unwrap();
        // The hook may not overlap the call of a plugin that is not thread-safe.
        let r = wait_report(&host, "echo", "a check timed out behind the call", |r| {
            r.status == HealthStatus::Unhealthy
        });
        assert!(
            r.last_error.as_deref().unwrap_or("").contains("did not answer"),
            "{r:?}"
        );
        std::fs::write(&release, "").unwrap();
        assert_eq!(caller.join().unwrap().unwrap(), b"released");
    });
    wait_report(&host, "echo", "healthy once the call returned", |r| {
        r.status == HealthStatus::Healthy
    });
    host.stop_health_monitor();
}

#[test]
fn unloaded_plugins_leave_the_monitor_and_dropping_the_host_stops_it() {
    let (dir, so) = health_fixture("health-unload");
    let host = host();
    host.load(&manifest(&dir, &so, "a", serde_json::json!({}))).unwrap();
    let b = host.load(&manifest(&dir, &so, "b", serde_json::json!({}))).unwrap();
    host.start_health_monitor(fast(1)).unwrap();
    wait_for("both checked", || {
        (host.health("a").unwrap().checks > 0 && host.health("b").unwrap().checks > 0).then_some(())
    });
    host.unload("b").unwrap();
    assert_eq!(host.health("b").unwrap_err().status(), KEEL_ERR_PLUGIN_NOT_FOUND);
    let frozen = b.health.report().checks;
    let a0 = host.health("a").unwrap().checks;
    wait_report(&host, "a", "a checked on", |r| r.checks >= a0 + 3);
    assert_eq!(
        b.health.report().checks,
        frozen,
        "an unloaded slot is no longer checked"
    );
    // Loaded again under the same name: a fresh record, checked anew.
    assert!(host.stop_health_monitor());
    host.load(&manifest(&dir, &so, "b", serde_json::json!({}))).unwrap();
    assert_eq!(host.health("b").unwrap(), HealthReport::default());
    host.start_health_monitor(fast(1)).unwrap();
    wait_report(&host, "b", "the new b checked", |r| r.checks > 0);
    // Dropped with the monitor running: the monitor stops, then the plugins are unloaded.
    drop(host);
}

#[test]
fn bad_settings_are_refused_with_invalid_argument() {
    let host = host();
    for c in [
        HealthConfig {
            interval: Duration::ZERO,
            ..HealthConfig::default()
        },
        HealthConfig {
            unhealthy_threshold: 0,
            ..HealthConfig::default()
        },
        HealthConfig {
            backoff_initial: Duration::from_secs(10),
            backoff_max: Duration::from_secs(1),
            ..HealthConfig::default()
        },
    ] {
        assert_eq!(
            host.start_health_monitor(c).unwrap_err().status(),
            KEEL_ERR_INVALID_ARGUMENT
        );
    }
    assert!(!host.health_monitor_running());
    assert_eq!(host.health("nope").unwrap_err().status(), KEEL_ERR_PLUGIN_NOT_FOUND);
}

mod c_abi {
    use super::*;
    use keel::ffi::health::*;
    use keel::ffi::host::*;
    use std::ffi::CString;
    use std::ptr;

    fn report(p: *const keel_plugin) -> keel_health_report {
        let mut r = std::mem::MaybeUninit::<keel_health_report>::uninit();
        assert_eq!(keel_plugin_health(p, r.as_mut_ptr()), KEEL_OK);
        // SAFETY: keel_plugin_health returned KEEL_OK, so it wrote the whole report.
        unsafe { r.assume_init() }
    }

    #[test]
    fn monitor_and_reports_through_the_c_abi() {
        let (dir, so) = health_fixture("health-c");
        let m = manifest(&dir, &so, "echo", serde_json::json!({"unhealthy_after": 3}));
        let mut h = ptr::null_mut();
        assert_eq!(keel_host_new(&mut h), KEEL_OK);
        common::allow_unsigned(h);
        let path = CString::new(m.to_str().unwrap()).unwrap();
        let mut p = ptr::null_mut();
        assert_eq!(keel_host_load(h, path.as_ptr(), &mut p), KEEL_OK);

        // Bad input, one code each.
        assert_eq!(
            keel_host_start_health_monitor(ptr::null(), 10, 1, 1, 1),
            KEEL_ERR_NULL_POINTER
        );
        assert_eq!(keel_host_start_health_monitor(h, 0, 1, 1, 1), KEEL_ERR_INVALID_ARGUMENT);
        assert_eq!(
            keel_host_start_health_monitor(h, 10, 0, 1, 1),
            KEEL_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            keel_host_start_health_monitor(h, 10, 1, 100, 10),
            KEEL_ERR_INVALID_ARGUMENT
        );
        assert_eq!(keel_host_stop_health_monitor(ptr::null()), KEEL_ERR_NULL_POINTER);
        let mut r = std::mem::MaybeUninit::<keel_health_report>::uninit();
        assert_eq!(keel_plugin_health(ptr::null(), r.as_mut_ptr()), KEEL_ERR_NULL_POINTER);
        assert_eq!(keel_plugin_health(p, ptr::null_mut()), KEEL_ERR_NULL_POINTER);

        // Before any check.
        let r0 = report(p);
        assert_eq!(r0.status, keel_health_status::KEEL_HEALTH_STATUS_UNKNOWN);
        assert_eq!(
            (r0.score, r0.checks, r0.generation, r0.last_heartbeat_unix_ms),
            (1.0, 0, 1, 0)
        );

        assert_eq!(keel_host_start_health_monitor(h, 10, 2, 5, 50), KEEL_OK);
        let r1 = wait_for("a healthy check", || {
            let r = report(p);
            (r.status == keel_health_status::KEEL_HEALTH_STATUS_HEALTHY).then_some(r)
        });
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert!(
            r1.last_heartbeat_unix_ms > 0 && r1.last_heartbeat_unix_ms <= now_ms,
            "{r1:?}"
        );

        // Three calls: unhealthy, restarted, healthy, state kept.
        let mut f = 0;
        assert_eq!(keel_plugin_function(p, c"echo".as_ptr(), &mut f), KEEL_OK);
        let mut buf = ptr::null_mut();
        assert_eq!(keel_buffer_new(&mut buf), KEEL_OK);
        for _ in 0..3 {
            assert_eq!(keel_call(p, f, b"x".as_ptr(), 1, buf), KEEL_OK);
        }
        let r2 = wait_for("restarted and healthy", || {
            let r = report(p);
            (r.restarts == 1 && r.status == keel_health_status::KEEL_HEALTH_STATUS_HEALTHY).then_some(r)
        });
        assert_eq!((r2.generation, r2.consecutive_failures, r2.restart_attempts), (2, 0, 0));
        assert!(r2.score > 0.99);

        // Restart the monitor with other settings, stop it, stop again.
        assert_eq!(keel_host_start_health_monitor(h, 20, 3, 5, 50), KEEL_OK);
        assert_eq!(keel_host_stop_health_monitor(h), KEEL_OK);
        assert_eq!(keel_host_stop_health_monitor(h), KEEL_OK);

        // After unload the handle reports KEEL_ERR_PLUGIN_UNLOADED.
        assert_eq!(keel_host_unload(h, c"echo".as_ptr()), KEEL_OK);
        let mut r = std::mem::MaybeUninit::<keel_health_report>::uninit();
        assert_eq!(keel_plugin_health(p, r.as_mut_ptr()), KEEL_ERR_PLUGIN_UNLOADED);

        keel_buffer_free(buf);
        keel_plugin_free(p);
        // Freed with a monitor running: stopped first.
        assert_eq!(keel_host_start_health_monitor(h, 10, 1, 1, 1), KEEL_OK);
        assert_eq!(keel_host_free(h), KEEL_OK);
    }
}

/// One health enum: what a plugin answers (`runtime::Health`), what the monitor reports
/// (`health::HealthStatus`) and the registry keeps (`health_state::Health`) are one type, and
/// its values are those of `keel_health_status` in the C ABI.
#[test]
fn one_health_enum_with_the_c_abi_values() {
    use keel::ffi::health::keel_health_status as C;
    use keel::health_state::Health;
    // Compiles only while the three names are one type.
    let as_runtime: fn(Health) -> keel::runtime::Health = |h| h;
    let as_status: fn(keel::runtime::Health) -> HealthStatus = |h| h;
    for (h, c) in [
        (Health::Healthy, C::KEEL_HEALTH_STATUS_HEALTHY),
        (Health::Degraded, C::KEEL_HEALTH_STATUS_DEGRADED),
        (Health::Unhealthy, C::KEEL_HEALTH_STATUS_UNHEALTHY),
        (Health::Unknown, C::KEEL_HEALTH_STATUS_UNKNOWN),
        (Health::Failed, C::KEEL_HEALTH_STATUS_FAILED),
    ] {
        let h = as_status(as_runtime(h));
        assert_eq!(h as u32, c as u32, "{h:?}");
        assert_eq!(C::from(h), c);
    }
}
