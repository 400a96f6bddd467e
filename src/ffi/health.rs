//! C ABI: the health monitor, plugin health reports and latency sampling.

use std::time::{Duration, UNIX_EPOCH};

use super::host::{current, keel_host, keel_plugin};
use super::{borrow, boundary, Out};
use crate::error::keel_status;
use crate::health::{HealthConfig, HealthStatus};

/// What the health monitor last found for a plugin (`keel_health_report.status`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum keel_health_status {
    /// The plugin's health hook reported healthy.
    KEEL_HEALTH_STATUS_HEALTHY = 0,
    /// The plugin's health hook reported degraded.
    KEEL_HEALTH_STATUS_DEGRADED = 1,
    /// Reported unhealthy, or the check did not answer within the check timeout.
    KEEL_HEALTH_STATUS_UNHEALTHY = 2,
    /// Not checked yet, or the plugin has no health hook.
    KEEL_HEALTH_STATUS_UNKNOWN = 3,
    /// Still unhealthy after the maximum number of consecutive restart attempts; the
    /// monitor no longer restarts it until a check finds it healthy again.
    KEEL_HEALTH_STATUS_FAILED = 4,
}

impl From<HealthStatus> for keel_health_status {
    fn from(s: HealthStatus) -> Self {
        match s {
            HealthStatus::Healthy => keel_health_status::KEEL_HEALTH_STATUS_HEALTHY,
            HealthStatus::Degraded => keel_health_status::KEEL_HEALTH_STATUS_DEGRADED,
            HealthStatus::Unhealthy => keel_health_status::KEEL_HEALTH_STATUS_UNHEALTHY,
            HealthStatus::Unknown => keel_health_status::KEEL_HEALTH_STATUS_UNKNOWN,
            HealthStatus::Failed => keel_health_status::KEEL_HEALTH_STATUS_FAILED,
        }
    }
}

/// A plugin's health as the monitor last saw it. Written by `keel_plugin_health` into
/// caller-owned memory; holds no pointers.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct keel_health_report {
    /// A `keel_health_status` value.
    pub status: keel_health_status,
    /// Unhealthy checks in a row.
    pub consecutive_failures: u32,
    /// Health score in [0, 1] from the last check (1.0 before the first):
    /// `clamp(base − 0.5 · error_rate, 0, 1)`, base 1.0 healthy or no hook, 0.7 degraded,
    /// 0.3 unhealthy; error_rate = errors / calls since the previous check.
    pub score: f64,
    /// Error rate (errors / calls) in the last check's window.
    pub error_rate: f64,
    /// When the plugin last answered a check, in milliseconds since the Unix epoch (0: never).
    pub last_heartbeat_unix_ms: u64,
    /// Successful restarts by the monitor over the plugin's life.
    pub restarts: u64,
    /// Restart attempts since the plugin was last found not unhealthy.
    pub restart_attempts: u32,
    /// Reserved; 0.
    pub reserved: u32,
    /// Checks done over the plugin's life.
    pub checks: u64,
    /// The current generation number (1 after load, +1 per reload or restart).
    pub generation: u64,
}

/// Start the host's health monitor, or restart it with new settings.
///
/// Every `interval_ms` each loaded plugin's `health` hook is called on a worker thread
/// (never under a registry lock); a check that has not answered within
/// min(`interval_ms`, 2000) ms counts as unhealthy and does not block the monitor or other
/// plugins' checks. After `unhealthy_threshold` unhealthy checks in a row the plugin is
/// restarted through the same path as `keel_host_reload` (manifest and binary verified
/// again, state carried over). Attempts are spaced by exponential backoff starting at
/// `backoff_initial_ms`, doubling, at most `backoff_max_ms`; after 5 consecutive attempts the
/// plugin is reported `KEEL_HEALTH_STATUS_FAILED` and left alone until it is healthy again.
/// A healthy (or degraded) check resets both counters.
///
/// The monitor's threads belong to the host; it is stopped by
/// `keel_host_stop_health_monitor` or `keel_host_free`. Thread-safe.
///
/// Errors: `KEEL_ERR_NULL_POINTER`, `KEEL_ERR_INVALID_ARGUMENT` (`interval_ms` or
/// `unhealthy_threshold` is 0, or `backoff_max_ms < backoff_initial_ms`).
#[no_mangle]
pub extern "C" fn keel_host_start_health_monitor(
    host: *const keel_host,
    interval_ms: u64,
    unhealthy_threshold: u32,
    backoff_initial_ms: u64,
    backoff_max_ms: u64,
) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract.
        let h = unsafe { borrow(host, "host") }?;
        let config = HealthConfig::new(
            Duration::from_millis(interval_ms),
            unhealthy_threshold,
            Duration::from_millis(backoff_initial_ms),
            Duration::from_millis(backoff_max_ms),
        );
        h.start_health_monitor(config)
    })
}

/// Stop the host's health monitor and wait for its thread; returns promptly (the monitor
/// never waits on a plugin). A restart already under way completes. Not running: `KEEL_OK`.
/// Health reports keep their last values. Thread-safe.
///
/// Errors: `KEEL_ERR_NULL_POINTER`.
#[no_mangle]
pub extern "C" fn keel_host_stop_health_monitor(host: *const keel_host) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract.
        let h = unsafe { borrow(host, "host") }?;
        h.stop_health_monitor();
        Ok(())
    })
}

/// Copy a plugin's health report into `*out` (caller-owned memory; nothing to free).
///
/// Before the monitor has checked the plugin the status is `KEEL_HEALTH_STATUS_UNKNOWN` and
/// the score 1.0. Thread-safe, never waits on the plugin.
///
/// Errors: `KEEL_ERR_NULL_POINTER`, `KEEL_ERR_PLUGIN_UNLOADED`.
#[no_mangle]
pub extern "C" fn keel_plugin_health(plugin: *const keel_plugin, out: *mut keel_health_report) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract for every pointer argument.
        let (slot, out) = unsafe { (borrow(plugin, "plugin")?, Out::new(out, "out")?) };
        let g = current(slot)?;
        let r = slot.health.report();
        let heartbeat = r
            .last_heartbeat
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        let report = keel_health_report {
            status: r.status.into(),
            consecutive_failures: r.consecutive_failures,
            score: r.score,
            error_rate: r.error_rate,
            last_heartbeat_unix_ms: heartbeat,
            restarts: r.restarts,
            restart_attempts: r.restart_attempts,
            reserved: 0,
            checks: r.checks,
            generation: g.number,
        };
        out.set(report);
        Ok(())
    })
}

/// Time one call in `every` per thread and plugin for the latency histogram
/// (`keel_plugin_call_duration_seconds`, `plugin_call_latency_*_ms`): rounded up to a power
/// of two; 0 turns latency sampling off, 1 times every call (two clock reads per call).
/// Default 64. Applies to loaded plugins at once and to later loads. Thread-safe.
///
/// Errors: `KEEL_ERR_NULL_POINTER`.
#[no_mangle]
pub extern "C" fn keel_host_set_latency_sampling(host: *const keel_host, every: u32) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract.
        let h = unsafe { borrow(host, "host") }?;
        h.set_latency_sampling(every);
        Ok(())
    })
}
