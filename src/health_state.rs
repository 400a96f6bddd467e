//! Health state: the one health enum of the crate and the record a registry slot keeps.
//!
//! A leaf: it imports nothing of Keel, so the registry (which keeps a [`HealthCell`] in every
//! slot), the metrics exposition (which reads it), the runtimes (whose plugins answer with a
//! [`Health`]) and the health monitor (which writes it) all depend on this module and never on
//! each other.

use std::time::SystemTime;

use parking_lot::Mutex;

/// A plugin's health: what its `health` hook answers ([`Health::Healthy`],
/// [`Health::Degraded`], [`Health::Unhealthy`], or [`Health::Unknown`] without a hook), and
/// what the health monitor last found (those, plus [`Health::Failed`]). The values are those
/// of `keel_health_status` in the C ABI and of the plugin ABIs' health answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Health {
    Healthy = 0,
    Degraded = 1,
    /// Reported unhealthy, or the check timed out or panicked.
    Unhealthy = 2,
    /// Not checked yet, or the plugin has no health hook.
    Unknown = 3,
    /// The monitor's verdict, never a plugin's answer: still unhealthy after
    /// `max_restart_attempts` consecutive restarts; no more attempts until a check finds it
    /// healthy.
    Failed = 4,
}

/// A plugin's health as the monitor last saw it.
#[derive(Clone, Debug, PartialEq)]
pub struct HealthReport {
    pub status: Health,
    /// In [0, 1]; 1.0 before the first check.
    pub score: f64,
    /// When the plugin last answered a check.
    pub last_heartbeat: Option<SystemTime>,
    /// Unhealthy checks in a row.
    pub consecutive_failures: u32,
    /// Restart attempts since the plugin was last found not unhealthy.
    pub restart_attempts: u32,
    /// Successful restarts by the monitor over the slot's life.
    pub restarts: u64,
    /// Checks completed or timed out over the slot's life.
    pub checks: u64,
    /// Error rate (errors / calls) in the last check's window.
    pub error_rate: f64,
    /// Why the plugin is unhealthy (the last failed check); cleared by a check that is not
    /// unhealthy.
    pub last_error: Option<String>,
    /// What went wrong in the last restart attempt: why it failed (the reload was rolled
    /// back), or a drain timeout after a swap that did take effect. `None` after a clean one.
    pub last_restart_error: Option<String>,
    /// Times the plugin repaired itself when a restart was due (ThemisDB's
    /// `ISelfHealingPlugin`), so that no restart was needed.
    pub self_repairs: u64,
    /// The steps of the last self-repair attempt (successful or not).
    pub last_self_repair: Option<String>,
}

impl Default for HealthReport {
    fn default() -> Self {
        HealthReport {
            status: Health::Unknown,
            score: 1.0,
            last_heartbeat: None,
            consecutive_failures: 0,
            restart_attempts: 0,
            restarts: 0,
            checks: 0,
            error_rate: 0.0,
            last_error: None,
            last_restart_error: None,
            self_repairs: 0,
            last_self_repair: None,
        }
    }
}

/// A slot's published health record: written by the monitor, read by `Host::health`,
/// `keel_plugin_health` and the metrics collector. Never touched by calls.
#[derive(Default)]
pub struct HealthCell(Mutex<HealthReport>);

impl HealthCell {
    pub fn report(&self) -> HealthReport {
        self.0.lock().clone()
    }

    /// Replace the record (the health monitor's); returns whether the status changed.
    pub(crate) fn publish(&self, r: &HealthReport) -> bool {
        let mut cur = self.0.lock();
        let changed = cur.status != r.status;
        *cur = r.clone();
        changed
    }
}

/// The score of a check: `clamp(base(status) − error_weight · error_rate, 0, 1)`, base
/// 1.0 (`Healthy`, `Unknown`), 0.7 (`Degraded`), 0.3 (`Unhealthy`, `Failed`).
pub fn score(status: Health, error_rate: f64, error_weight: f64) -> f64 {
    let base = match status {
        Health::Healthy | Health::Unknown => 1.0,
        Health::Degraded => 0.7,
        Health::Unhealthy | Health::Failed => 0.3,
    };
    (base - error_weight * error_rate.clamp(0.0, 1.0)).clamp(0.0, 1.0)
}
