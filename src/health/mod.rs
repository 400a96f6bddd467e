//! Health monitoring: heartbeats, a health score per plugin, and automatic restart with
//! exponential backoff.
//!
//! A [`Monitor`] is one thread owned by the host (`Host::start_health_monitor`; stopped by
//! `Host::stop_health_monitor` or when the host is dropped — the stop is a message on the
//! channel the thread waits on, so it returns at once). Every `interval` it takes a lock-free
//! snapshot of the registry and asks each plugin's current generation how it is
//! ([`crate::runtime::Instance::health`]: the native `health` hook; `Unknown` for plugins without one).
//!
//! * **No lock is held while a plugin runs a check.** The check runs on a worker thread that
//!   holds only the generation (an `Arc`, the same in-flight guard a call holds); the monitor
//!   waits for the answer at most `check_timeout`. A check still running then counts as
//!   `Unhealthy` ("timed out") for this interval and for every later interval it is still
//!   running, and no second check of that plugin is started meanwhile: a hung plugin holds
//!   one worker, never the monitor. Each started check has a worker of its own (an idle one
//!   is reserved, or a new one spawned), so a hung worker never delays another plugin's check.
//! * **Heartbeat**: the time of the plugin's last answer to a check.
//! * **Score** (published as `plugin_health_score`, see [`score`]):
//!   `clamp(base(status) − error_weight · error_rate, 0, 1)`, with base 1.0 for `Healthy`
//!   and `Unknown` (no hook: only the error rate speaks), 0.7 for `Degraded`, 0.3 for
//!   `Unhealthy` (reported, timed out or panicked), and `error_rate` = errors / calls since
//!   the previous check (0 without calls). This is ThemisDB's formula (themisdb-compat §6.3)
//!   with the error weight raised from 0.2 to a configurable 0.5: with 0.2 a plugin failing
//!   every call still scored 0.8, "green" on its own dashboard.
//! * **Restart**: after `unhealthy_threshold` consecutive unhealthy checks the plugin is
//!   restarted through the lifecycle's reload (`Host::reload`: the manifest and binary are verified again, the state
//!   is carried over). Errors alone lower the score but never restart a plugin: callers'
//!   bad input makes calls fail too, and a restart would not fix that. Attempts are spaced
//!   by exponential backoff (`backoff_initial · backoff_factor^(n−1)`, at most
//!   `backoff_max`, between attempt n and n+1; the first attempt is immediate) and capped at
//!   `max_restart_attempts` consecutive attempts, after which the plugin is reported
//!   `Failed` and left alone. A check that is not unhealthy resets both the consecutive
//!   failures and the attempt counter (unlike ThemisDB, whose lifetime counter disabled a
//!   plugin after 3 successful recoveries, themisdb-compat §9.17). A restarted plugin gets
//!   `unhealthy_threshold` fresh checks before the next attempt. Restarts run on their own
//!   thread, so a reload that waits for a drain never stalls the checks of other plugins.

use std::collections::{HashMap, VecDeque};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;

use crate::bail;
use crate::error::Result;
pub use crate::health_state::{score, Health, HealthCell, HealthReport};
use crate::lifecycle::Handle;
use crate::registry::{Generation, Slot};
use crate::runtime::SelfRepair;

/// What the last check found: the crate's one health enum ([`Health`]), under the name the
/// health API has always used (`keel_health_status` in the C ABI).
pub use crate::health_state::Health as HealthStatus;

/// Settings of the health monitor.
#[derive(Clone, Debug, PartialEq)]
pub struct HealthConfig {
    /// Time between two checks of a plugin.
    pub interval: Duration,
    /// How long a check may run before it counts as unhealthy.
    pub check_timeout: Duration,
    /// Consecutive unhealthy checks that trigger a restart (≥ 1).
    pub unhealthy_threshold: u32,
    /// Delay between the first and second restart attempt.
    pub backoff_initial: Duration,
    /// Longest delay between two attempts.
    pub backoff_max: Duration,
    /// Growth of the delay per attempt (≥ 1).
    pub backoff_factor: f64,
    /// Consecutive restart attempts before the plugin is reported `Failed` and left alone
    /// (until a check finds it healthy again). 0 disables restarts.
    pub max_restart_attempts: u32,
    /// Weight of the error rate in the score, in [0, 1].
    pub error_weight: f64,
    /// Checks running at once (hung checks not counted).
    pub max_parallel_checks: usize,
}

/// Default check timeout: the interval, at most this.
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval: Duration::from_secs(10),
            check_timeout: DEFAULT_CHECK_TIMEOUT,
            unhealthy_threshold: 3,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            backoff_factor: 2.0,
            max_restart_attempts: 5,
            error_weight: 0.5,
            max_parallel_checks: 4,
        }
    }
}

impl HealthConfig {
    /// The defaults with the four settings of the C ABI; the check timeout is the interval,
    /// at most [`DEFAULT_CHECK_TIMEOUT`].
    pub fn new(
        interval: Duration,
        unhealthy_threshold: u32,
        backoff_initial: Duration,
        backoff_max: Duration,
    ) -> HealthConfig {
        HealthConfig {
            interval,
            check_timeout: interval.min(DEFAULT_CHECK_TIMEOUT),
            unhealthy_threshold,
            backoff_initial,
            backoff_max,
            ..HealthConfig::default()
        }
    }

    /// Refuse settings the monitor cannot work with (`KEEL_ERR_INVALID_ARGUMENT`).
    pub fn validate(&self) -> Result<()> {
        if self.interval.is_zero() {
            bail!(KEEL_ERR_INVALID_ARGUMENT, "health check interval must be > 0");
        }
        if self.check_timeout.is_zero() {
            bail!(KEEL_ERR_INVALID_ARGUMENT, "health check timeout must be > 0");
        }
        if self.unhealthy_threshold == 0 {
            bail!(
                KEEL_ERR_INVALID_ARGUMENT,
                "unhealthy_threshold must be ≥ 1 (checks before a restart)"
            );
        }
        if self.backoff_max < self.backoff_initial {
            bail!(
                KEEL_ERR_INVALID_ARGUMENT,
                "backoff_max ({} ms) is below backoff_initial ({} ms)",
                self.backoff_max.as_millis(),
                self.backoff_initial.as_millis()
            );
        }
        if !(self.backoff_factor.is_finite() && self.backoff_factor >= 1.0) {
            bail!(
                KEEL_ERR_INVALID_ARGUMENT,
                "backoff_factor must be a finite number ≥ 1, not {}",
                self.backoff_factor
            );
        }
        if !(0.0..=1.0).contains(&self.error_weight) {
            bail!(
                KEEL_ERR_INVALID_ARGUMENT,
                "error_weight must lie in [0, 1], not {}",
                self.error_weight
            );
        }
        if self.max_parallel_checks == 0 {
            bail!(KEEL_ERR_INVALID_ARGUMENT, "max_parallel_checks must be ≥ 1");
        }
        Ok(())
    }

    /// Delay after restart attempt `n` (1-based) before attempt `n + 1`.
    pub fn backoff(&self, n: u32) -> Duration {
        let exp = n.saturating_sub(1).min(1024) as i32;
        let secs = self.backoff_initial.as_secs_f64() * self.backoff_factor.powi(exp);
        if !secs.is_finite() || secs >= self.backoff_max.as_secs_f64() {
            self.backoff_max
        } else {
            Duration::from_secs_f64(secs)
        }
    }
}

// ---------------------------------------------------------------------------------------
// The monitor thread
// ---------------------------------------------------------------------------------------

/// How a check ended.
enum Outcome {
    Answered(Health),
    /// The check panicked or could not be started.
    Failed(String),
    TimedOut,
}

enum Event {
    Stop,
    Checked {
        name: String,
        token: u64,
        answer: Outcome,
    },
    Restarted {
        name: String,
        took_effect: bool,
        error: Option<String>,
        /// What the plugin's self-repair did before the restart was attempted.
        repair: Option<SelfRepair>,
    },
}

/// A running monitor; stopping it (or dropping it) ends and joins its thread.
pub struct Monitor {
    tx: Sender<Event>,
    thread: Option<JoinHandle<()>>,
}

impl Monitor {
    /// Start a monitor over the plugins of `lifecycle`.
    pub(crate) fn start(lifecycle: Handle, config: HealthConfig) -> Result<Monitor> {
        config.validate()?;
        let (tx, rx) = channel();
        let loop_tx = tx.clone();
        let thread = std::thread::Builder::new()
            .name("keel-health".into())
            .spawn(move || MonitorLoop::new(lifecycle, config, loop_tx).run(rx))
            .map_err(|e| crate::err!(KEEL_ERR_INTERNAL, "cannot start the health monitor thread: {e}"))?;
        Ok(Monitor {
            tx,
            thread: Some(thread),
        })
    }

    /// Stop the thread and wait for it (it only ever waits on its channel, so this is
    /// prompt). Check workers still inside a hung plugin are not waited for: they hold only
    /// that plugin's generation and exit when it returns.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let _ = self.tx.send(Event::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.shutdown();
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// Check workers. Every submitted job gets a worker of its own: an idle one is reserved at
/// submission, or a new one is spawned, so a job never queues behind a hung check.
struct Workers {
    tx: Option<Sender<Job>>,
    rx: Arc<Mutex<Receiver<Job>>>,
    idle: Arc<Mutex<usize>>,
}

impl Workers {
    fn new() -> Workers {
        let (tx, rx) = channel();
        Workers {
            tx: Some(tx),
            rx: Arc::new(Mutex::new(rx)),
            idle: Arc::new(Mutex::new(0)),
        }
    }

    fn submit(&mut self, job: Job) -> std::result::Result<(), String> {
        let reserved = {
            let mut idle = self.idle.lock();
            if *idle > 0 {
                *idle -= 1;
                true
            } else {
                false
            }
        };
        if !reserved {
            let (rx, idle) = (self.rx.clone(), self.idle.clone());
            std::thread::Builder::new()
                .name("keel-health-check".into())
                .spawn(move || loop {
                    let job = rx.lock().recv();
                    match job {
                        Ok(job) => {
                            job();
                            *idle.lock() += 1;
                        }
                        Err(_) => break,
                    }
                })
                .map_err(|e| format!("cannot start a health check worker: {e}"))?;
        }
        self.tx
            .as_ref()
            .ok_or_else(|| "the monitor is stopping".to_string())?
            .send(job)
            .map_err(|_| "the check workers are gone".to_string())
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        // Idle workers see the channel close and exit.
        self.tx.take();
    }
}

/// An outstanding check of one plugin.
struct Pending {
    token: u64,
    deadline: Instant,
    /// Already counted as timed out; still running in its worker.
    timed_out: bool,
}

/// The monitor's private state for one plugin.
struct Tracked {
    slot: Weak<Slot>,
    report: HealthReport,
    last_calls: u64,
    last_errors: u64,
    pending: Option<Pending>,
    queued: bool,
    restarting: bool,
    next_restart_at: Option<Instant>,
}

impl Tracked {
    fn new(slot: &Arc<Slot>) -> Tracked {
        let m = slot.metrics.snapshot();
        Tracked {
            slot: Arc::downgrade(slot),
            report: slot.health.report(),
            last_calls: m.calls,
            last_errors: m.errors,
            pending: None,
            queued: false,
            restarting: false,
            next_restart_at: None,
        }
    }
}

struct MonitorLoop {
    /// The monitor's only way to the plugins: list them, restart one.
    lifecycle: Handle,
    config: HealthConfig,
    tx: Sender<Event>,
    workers: Workers,
    tracked: HashMap<String, Tracked>,
    queue: VecDeque<String>,
    /// Checks started and neither answered nor timed out.
    running: usize,
    next_token: u64,
}

impl MonitorLoop {
    fn new(lifecycle: Handle, config: HealthConfig, tx: Sender<Event>) -> MonitorLoop {
        MonitorLoop {
            lifecycle,
            config,
            tx,
            workers: Workers::new(),
            tracked: HashMap::new(),
            queue: VecDeque::new(),
            running: 0,
            next_token: 0,
        }
    }

    fn run(mut self, rx: Receiver<Event>) {
        let mut next_tick = Instant::now();
        loop {
            let now = Instant::now();
            if now >= next_tick {
                self.tick(now);
                next_tick = now + self.config.interval;
            }
            self.start_queued();
            let wake = self
                .tracked
                .values()
                .filter_map(|t| t.pending.as_ref().filter(|p| !p.timed_out).map(|p| p.deadline))
                .fold(next_tick, Instant::min);
            match rx.recv_timeout(wake.saturating_duration_since(Instant::now())) {
                Ok(Event::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                Ok(Event::Checked { name, token, answer }) => self.checked(&name, token, answer),
                Ok(Event::Restarted {
                    name,
                    took_effect,
                    error,
                    repair,
                }) => self.restarted(&name, took_effect, error, repair),
                Err(RecvTimeoutError::Timeout) => {}
            }
            self.expire(Instant::now());
        }
    }

    /// Sync with the registry and queue a check of every plugin that has none running.
    fn tick(&mut self, now: Instant) {
        let slots = self.lifecycle.slots();
        let live: std::collections::HashSet<&str> = slots.iter().map(|s| s.name()).collect();
        self.tracked.retain(|name, _| live.contains(name.as_str()));
        self.queue.retain(|name| live.contains(name.as_str()));
        let mut hung = Vec::new();
        for slot in &slots {
            let name = slot.name().to_string();
            let same = self
                .tracked
                .get(&name)
                .is_some_and(|t| t.slot.upgrade().is_some_and(|s| Arc::ptr_eq(&s, slot)));
            if !same {
                // New plugin, or unloaded and loaded again under the same name.
                self.queue.retain(|n| *n != name);
                self.tracked.insert(name.clone(), Tracked::new(slot));
            }
            let Some(t) = self.tracked.get_mut(&name) else { continue };
            if t.restarting || t.queued {
                continue;
            }
            match &t.pending {
                // Still hung from an earlier interval: another failed check.
                Some(p) if p.timed_out => hung.push(name),
                Some(_) => {}
                None => {
                    t.queued = true;
                    self.queue.push_back(name);
                }
            }
        }
        for name in hung {
            self.record(&name, Outcome::TimedOut, now);
        }
    }

    /// Start queued checks while fewer than `max_parallel_checks` run.
    fn start_queued(&mut self) {
        let mut failed = Vec::new();
        while self.running < self.config.max_parallel_checks {
            let Some(name) = self.queue.pop_front() else { break };
            let Some(t) = self.tracked.get_mut(&name) else { continue };
            t.queued = false;
            let Some(gen) = t.slot.upgrade().and_then(|s| s.current()) else {
                continue;
            };
            let token = self.next_token;
            self.next_token += 1;
            let tx = self.tx.clone();
            let job_name = name.clone();
            let job: Job = Box::new(move || {
                let answer = run_check(&gen);
                // The generation (the in-flight guard) is released before reporting.
                drop(gen);
                let _ = tx.send(Event::Checked {
                    name: job_name,
                    token,
                    answer,
                });
            });
            match self.workers.submit(job) {
                Ok(()) => {
                    t.pending = Some(Pending {
                        token,
                        deadline: Instant::now() + self.config.check_timeout,
                        timed_out: false,
                    });
                    self.running += 1;
                }
                Err(msg) => failed.push((name, msg)),
            }
        }
        for (name, msg) in failed {
            self.record(&name, Outcome::Failed(msg), Instant::now());
        }
    }

    fn checked(&mut self, name: &str, token: u64, answer: Outcome) {
        let Some(t) = self.tracked.get_mut(name) else { return };
        let Some(p) = t.pending.as_ref().filter(|p| p.token == token) else {
            return;
        };
        let late = p.timed_out;
        t.pending = None;
        if late {
            // Already counted as timed out; the plugin is alive again, though.
            t.report.last_heartbeat = Some(SystemTime::now());
            if let Some(slot) = t.slot.upgrade() {
                slot.health.publish(&t.report);
            }
            return;
        }
        self.running = self.running.saturating_sub(1);
        self.record(name, answer, Instant::now());
    }

    /// Count checks past their deadline as timed out.
    fn expire(&mut self, now: Instant) {
        let expired: Vec<String> = self
            .tracked
            .iter_mut()
            .filter_map(|(name, t)| {
                let p = t.pending.as_mut()?;
                (!p.timed_out && now >= p.deadline).then(|| {
                    p.timed_out = true;
                    name.clone()
                })
            })
            .collect();
        for name in expired {
            self.running = self.running.saturating_sub(1);
            self.record(&name, Outcome::TimedOut, now);
        }
    }

    /// Fold one check outcome into the plugin's record; publish it; restart if due.
    fn record(&mut self, name: &str, outcome: Outcome, now: Instant) {
        let cfg = &self.config;
        let Some(t) = self.tracked.get_mut(name) else { return };
        // Gone, or unloaded (a check that ended after the unload speaks for no plugin).
        let Some(slot) = t.slot.upgrade().filter(|s| s.is_loaded()) else {
            return;
        };
        let m = slot.metrics.snapshot();
        let (calls, errors) = (
            m.calls.saturating_sub(t.last_calls),
            m.errors.saturating_sub(t.last_errors),
        );
        t.last_calls = m.calls;
        t.last_errors = m.errors;
        let error_rate = if calls == 0 {
            0.0
        } else {
            (errors as f64 / calls as f64).min(1.0)
        };
        let status = match outcome {
            Outcome::Answered(h) => {
                t.report.last_heartbeat = Some(SystemTime::now());
                // `Failed` is the monitor's verdict; a plugin cannot answer it.
                if h == Health::Failed {
                    Health::Unhealthy
                } else {
                    h
                }
            }
            Outcome::Failed(ref msg) => {
                t.report.last_error = Some(msg.clone());
                Health::Unhealthy
            }
            Outcome::TimedOut => {
                t.report.last_error = Some(format!(
                    "the health check did not answer within {} ms",
                    cfg.check_timeout.as_millis()
                ));
                Health::Unhealthy
            }
        };
        let r = &mut t.report;
        r.checks += 1;
        r.error_rate = error_rate;
        r.score = score(status, error_rate, cfg.error_weight);
        r.status = status;
        let mut restart = false;
        if status == Health::Unhealthy {
            if matches!(outcome, Outcome::Answered(_)) {
                r.last_error = Some("the plugin reports itself unhealthy".into());
            }
            r.consecutive_failures = r.consecutive_failures.saturating_add(1);
            if r.consecutive_failures >= cfg.unhealthy_threshold && !t.restarting {
                if r.restart_attempts >= cfg.max_restart_attempts {
                    r.status = Health::Failed;
                } else if t.next_restart_at.is_none_or(|at| now >= at) {
                    r.restart_attempts += 1;
                    t.next_restart_at = Some(now + cfg.backoff(r.restart_attempts));
                    t.restarting = true;
                    restart = true;
                }
            }
        } else {
            // Success: reset both counters (ThemisDB never reset its attempt counter).
            r.last_error = None;
            r.consecutive_failures = 0;
            r.restart_attempts = 0;
            t.next_restart_at = None;
        }
        if slot.health.publish(r) {
            let generation = slot.current().map(|g| g.number).unwrap_or(0);
            self.lifecycle.health_changed(name, generation);
        }
        if restart {
            self.spawn_restart(name, &slot);
        }
    }

    /// Restart a plugin through the host's verified reload, on a thread of its own.
    fn spawn_restart(&mut self, name: &str, slot: &Arc<Slot>) {
        let lifecycle = self.lifecycle.clone();
        let tx = self.tx.clone();
        let before = slot.current().map(|g| g.number).unwrap_or(0);
        let weak = Arc::downgrade(slot);
        let plugin = name.to_string();
        let spawned = std::thread::Builder::new()
            .name("keel-health-restart".into())
            .spawn(move || {
                // A plugin that can repair itself gets that chance first (ThemisDB's
                // ISelfHealingPlugin); the restart happens only if it does not recover.
                let repair = weak
                    .upgrade()
                    .and_then(|s| s.current())
                    .and_then(|g| {
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| g.instance.self_repair())).ok()
                    })
                    .flatten();
                if repair.as_ref().is_some_and(|r| r.recovered) {
                    let _ = tx.send(Event::Restarted {
                        name: plugin,
                        took_effect: false,
                        error: None,
                        repair,
                    });
                    return;
                }
                let r = lifecycle.reload(&plugin);
                // A drain timeout is reported after the swap: the restart did take effect.
                let after = weak.upgrade().and_then(|s| s.current()).map(|g| g.number).unwrap_or(0);
                let _ = tx.send(Event::Restarted {
                    name: plugin,
                    took_effect: after > before,
                    error: r.err().map(|e| e.to_string()),
                    repair,
                });
            });
        if let Err(e) = spawned {
            self.restarted(name, false, Some(format!("cannot start a restart thread: {e}")), None);
        }
    }

    fn restarted(&mut self, name: &str, took_effect: bool, error: Option<String>, repair: Option<SelfRepair>) {
        let Some(t) = self.tracked.get_mut(name) else { return };
        t.restarting = false;
        let r = &mut t.report;
        if let Some(rep) = repair {
            if rep.recovered {
                // Repaired in place: no restart; the next checks judge it afresh.
                r.self_repairs += 1;
                r.consecutive_failures = 0;
            }
            r.last_self_repair = Some(rep.steps);
        }
        if took_effect {
            // A check still hung in the old generation no longer speaks for the plugin.
            if let Some(p) = t.pending.take() {
                if !p.timed_out {
                    self.running = self.running.saturating_sub(1);
                }
            }
            r.restarts += 1;
            // The new generation gets `unhealthy_threshold` fresh checks.
            r.consecutive_failures = 0;
            r.status = Health::Unknown;
            // The new generation's own window of calls starts now.
            if let Some(slot) = t.slot.upgrade() {
                let m = slot.metrics.snapshot();
                t.last_calls = m.calls;
                t.last_errors = m.errors;
            }
        }
        r.last_restart_error = error;
        if let Some(slot) = t.slot.upgrade() {
            if slot.health.publish(r) {
                let generation = slot.current().map(|g| g.number).unwrap_or(0);
                self.lifecycle.health_changed(name, generation);
            }
        }
    }
}

/// Ask a generation how it is; a panic counts as unhealthy.
fn run_check(gen: &Generation) -> Outcome {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| gen.instance.health())) {
        Ok(h) => Outcome::Answered(h),
        Err(_) => Outcome::Failed("the health check panicked".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn score_formula() {
        use Health::*;
        assert_eq!(score(Healthy, 0.0, 0.5), 1.0);
        assert_eq!(score(Unknown, 0.0, 0.5), 1.0);
        assert_eq!(score(Healthy, 1.0, 0.5), 0.5);
        assert!((score(Degraded, 0.2, 0.5) - 0.6).abs() < 1e-12);
        assert!((score(Unhealthy, 0.0, 0.5) - 0.3).abs() < 1e-12);
        assert_eq!(score(Unhealthy, 1.0, 0.5), 0.0, "clamped at 0");
        assert!((score(Healthy, 1.0, 0.2) - 0.8).abs() < 1e-12, "ThemisDB's weight");
        assert_eq!(score(Healthy, 7.0, 0.5), 0.5, "rate clamped to 1");
    }

    #[test]
    fn backoff_grows_and_caps() {
        let c = HealthConfig {
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_millis(1000),
            backoff_factor: 2.0,
            ..HealthConfig::default()
        };
        let got: Vec<u128> = (1..=6).map(|n| c.backoff(n).as_millis()).collect();
        assert_eq!(got, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(c.backoff(u32::MAX), Duration::from_millis(1000));
        let flat = HealthConfig {
            backoff_factor: 1.0,
            ..c.clone()
        };
        assert_eq!(flat.backoff(5), Duration::from_millis(100));
    }

    #[test]
    fn config_validation_names_the_setting() {
        use crate::keel_status::KEEL_ERR_INVALID_ARGUMENT;
        let ok = HealthConfig::default();
        assert!(ok.validate().is_ok());
        let bad = [
            (
                HealthConfig {
                    interval: Duration::ZERO,
                    ..ok.clone()
                },
                "interval",
            ),
            (
                HealthConfig {
                    check_timeout: Duration::ZERO,
                    ..ok.clone()
                },
                "timeout",
            ),
            (
                HealthConfig {
                    unhealthy_threshold: 0,
                    ..ok.clone()
                },
                "unhealthy_threshold",
            ),
            (
                HealthConfig {
                    backoff_max: Duration::from_millis(1),
                    ..ok.clone()
                },
                "backoff_max",
            ),
            (
                HealthConfig {
                    backoff_factor: 0.5,
                    ..ok.clone()
                },
                "backoff_factor",
            ),
            (
                HealthConfig {
                    backoff_factor: f64::NAN,
                    ..ok.clone()
                },
                "backoff_factor",
            ),
            (
                HealthConfig {
                    error_weight: 1.5,
                    ..ok.clone()
                },
                "error_weight",
            ),
            (
                HealthConfig {
                    max_parallel_checks: 0,
                    ..ok.clone()
                },
                "max_parallel_checks",
            ),
        ];
        for (c, what) in bad {
            let e = c.validate().unwrap_err();
            assert_eq!(e.status(), KEEL_ERR_INVALID_ARGUMENT, "{what}");
            assert!(e.to_string().contains(what), "{what}: {e}");
        }
    }

    #[test]
    fn c_abi_defaults_cap_the_timeout() {
        let c = HealthConfig::new(
            Duration::from_millis(50),
            2,
            Duration::from_millis(10),
            Duration::from_millis(20),
        );
        assert_eq!(c.check_timeout, Duration::from_millis(50));
        let c = HealthConfig::new(
            Duration::from_secs(30),
            2,
            Duration::from_millis(10),
            Duration::from_millis(20),
        );
        assert_eq!(c.check_timeout, DEFAULT_CHECK_TIMEOUT);
    }
}
