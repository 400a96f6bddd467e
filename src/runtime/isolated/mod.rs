//! Isolated native plugins: the same `keel_plugin.h` vtable served from a sandbox process
//! (docs/isolation.md). This is the server side; [`sandbox`] is what the `keel-sandbox`
//! launcher runs, [`shm`] the call area both share.
//!
//! The server spawns the launcher from one long-lived thread (so that `PR_SET_PDEATHSIG`,
//! which follows the forking *thread*, only fires when the server dies), hands it the
//! verified sealed memfd over `SCM_RIGHTS`, and then calls through shared-memory slots with
//! futex wake-ups. A monitor thread per sandbox reaps it and fails the calls in flight with
//! the cause's code; the next call (or the health monitor) restarts it with backoff.

pub mod cgroup;
pub mod sandbox;
pub mod shm;

use std::cell::Cell;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use crate::artifact::Verified;
use crate::capability::Capabilities;
use crate::error::{Error, Result};
use crate::runtime::output::max_output;
use crate::runtime::{Health, HostServices, Instance, LoadContext, LogLevel};
use crate::services::call::{CallOptions, CancelToken};
use crate::services::hostfn::HostOutput;
use crate::services::KvTarget;
use crate::{bail, err};
use shm::*;

/// The environment variable naming the launcher when the host was given none.
pub const LAUNCHER_ENV: &str = "KEEL_SANDBOX_LAUNCHER";
/// The launcher's file name (installed next to the library, or in `../libexec/keel/`).
pub const LAUNCHER_NAME: &str = "keel-sandbox";
/// The sandbox's address-space limit when the manifest sets no `limits.memory_mb`.
pub const DEFAULT_MEMORY_MB: u64 = 1024;
/// After a call's deadline, how long a plugin polling `cancelled()` has to return before the
/// sandbox is killed.
const DEADLINE_GRACE: Duration = Duration::from_millis(20);
/// How long the handshake (spawn to hello) may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `shutdown` may take on unload.
const SHUTDOWN_BUDGET: Duration = Duration::from_secs(1);
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A sandbox that lived this long resets the restart backoff.
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(10);

/// The host's isolation settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IsolationConfig {
    /// Run every native plugin isolated, whatever its manifest says.
    pub required: bool,
    /// Run the native plugins whose name matches one of these glob patterns isolated.
    pub patterns: Vec<glob::Pattern>,
    /// Run the native plugins signed by one of these trusted keys (lower-case hex ids)
    /// isolated.
    pub keys: Vec<String>,
    /// The launcher; `None`: [`resolve_launcher`]'s search.
    pub launcher: Option<PathBuf>,
    /// `RLIMIT_CPU` of each sandbox in seconds (0: none).
    pub cpu_seconds: u64,
    /// CPU limit of each sandbox through its cgroup, in percent of one CPU (0: none).
    pub cpu_percent: u32,
}

impl IsolationConfig {
    /// Whether the host requires isolation for the native plugin `name` whose manifest was
    /// signed by `signer` (a verified key id; `None`: unsigned): all, by name pattern or by key.
    pub fn requires(&self, name: &str, signer: Option<&str>) -> bool {
        self.required
            || self.patterns.iter().any(|p| p.matches(name))
            || signer.is_some_and(|k| self.keys.iter().any(|x| x == k))
    }
}

/// The launcher to run: `configured`, else `$KEEL_SANDBOX_LAUNCHER`, else `keel-sandbox` next
/// to the object Keel is linked into (library or executable), else
/// `../libexec/keel/keel-sandbox` or `../../libexec/keel/keel-sandbox` relative to it.
pub fn resolve_launcher(configured: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = configured {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os(LAUNCHER_ENV) {
        return Ok(PathBuf::from(p));
    }
    let mut tried = Vec::new();
    if let Some(dir) = own_object_dir() {
        // Next to it (a build tree), or where CMake installs it: <prefix>/libexec/keel with the
        // library in <prefix>/lib or <prefix>/lib/<multiarch>.
        for cand in [
            dir.join(LAUNCHER_NAME),
            dir.join("../libexec/keel").join(LAUNCHER_NAME),
            dir.join("../../libexec/keel").join(LAUNCHER_NAME),
        ] {
            if cand.is_file() {
                return Ok(cand);
            }
            tried.push(cand.display().to_string());
        }
    }
    bail!(
        KEEL_ERR_SANDBOX_START,
        "no sandbox launcher: set one with keel_host_set_native_isolation or {LAUNCHER_ENV} (tried: {})",
        tried.join(", ")
    )
}

/// The directory of the shared object (or executable) this code is part of.
fn own_object_dir() -> Option<PathBuf> {
    let mut info = std::mem::MaybeUninit::<libc::Dl_info>::zeroed();
    // SAFETY: dladdr fills `info` for an address inside a loaded object (this function).
    let ok = unsafe { libc::dladdr(own_object_dir as *const libc::c_void, info.as_mut_ptr()) };
    if ok == 0 {
        return None;
    }
    // SAFETY: dladdr succeeded: the struct is initialised.
    let info = unsafe { info.assume_init() };
    if info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: dli_fname is a NUL-terminated path owned by the dynamic loader.
    let name = unsafe { std::ffi::CStr::from_ptr(info.dli_fname) }.to_str().ok()?;
    let p = std::fs::canonicalize(name).ok()?;
    p.parent().map(Path::to_path_buf)
}

// ---- the spawner thread -------------------------------------------------------------------

type Job = Box<dyn FnOnce() + Send>;

/// Run `f` on Keel's long-lived spawner thread and wait for its result.
fn on_spawner<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> Result<R> {
    static SPAWNER: OnceLock<std::result::Result<mpsc::Sender<Job>, String>> = OnceLock::new();
    let tx = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("keel-sandbox-spawner".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
            })
            .map(|_| tx)
            .map_err(|e| e.to_string())
    });
    let tx = tx.as_ref().map_err(|e| {
        err!(
            KEEL_ERR_SANDBOX_START,
            "starting the sandbox spawner thread failed: {e}"
        )
    })?;
    let (rtx, rrx) = mpsc::sync_channel(1);
    tx.send(Box::new(move || {
        let _ = rtx.send(f());
    }))
    .map_err(|_| err!(KEEL_ERR_SANDBOX_START, "the sandbox spawner thread is gone"))?;
    rrx.recv()
        .map_err(|_| err!(KEEL_ERR_SANDBOX_START, "the sandbox spawner thread failed"))
}

/// Fork and exec the launcher with `child_sock` as its fd 3 (on the spawner thread).
fn spawn_launcher(launcher: &Path, child_sock: OwnedFd) -> Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    // Keep the child's end away from 0..=2 (a server with stdin closed could have it there,
    // and the child's stdio setup would overwrite it) and from 3 (dup2 to itself would keep
    // O_CLOEXEC).
    let high = rustix::io::fcntl_dupfd_cloexec(&child_sock, 10)
        .map_err(|e| err!(KEEL_ERR_SANDBOX_START, "duplicating the sandbox socket failed: {e}"))?;
    drop(child_sock);
    let raw = high.as_raw_fd();
    let parent = std::process::id();
    let launcher = launcher.to_path_buf();
    let debug = std::env::var_os("KEEL_SANDBOX_DEBUG").is_some();
    on_spawner(move || {
        let mut cmd = std::process::Command::new(&launcher);
        cmd.env_clear()
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(if debug {
                std::process::Stdio::inherit()
            } else {
                std::process::Stdio::null()
            });
        // SAFETY: the hook runs in the forked child before execve and calls only
        // async-signal-safe functions (dup2, prctl, getppid); it allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(raw, sandbox::SOCKET_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0);
                if libc::getppid() as u32 != parent {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            })
        };
        let r = cmd.spawn();
        drop(high);
        r.map_err(|e| {
            err!(
                KEEL_ERR_SANDBOX_START,
                "starting the sandbox launcher {} failed: {e}",
                launcher.display()
            )
        })
    })?
}

// ---- one sandbox process ------------------------------------------------------------------

/// The sandbox counters of one isolated generation (all its sandboxes), read at scrape time
/// (`keel_plugin_sandbox_*`, see [`crate::metrics::SandboxSnapshot`]).
#[derive(Default)]
struct SandboxStats {
    restarts: std::sync::atomic::AtomicU64,
    deaths: [std::sync::atomic::AtomicU64; crate::metrics::SANDBOX_DEATH_CAUSES.len()],
}

/// A [`Spin`] alone on its cache line (128 bytes: adjacent-line prefetch pairs lines).
#[repr(align(128))]
struct PaddedSpin(Spin);

/// Why a sandbox ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    Signal(i32),
    /// Killed by the OOM killer at its cgroup's memory limit.
    OutOfMemory,
    Exit(i32),
    Unknown,
}

struct Process {
    shm: Shm,
    pid: i32,
    pidfd: OwnedFd,
    /// The server's end of the socket; closing it ends the sandbox.
    sock: Mutex<Option<OwnedFd>>,
    dead: AtomicBool,
    ended: OnceLock<Ended>,
    /// The server killed it for a call's deadline.
    killed_for_deadline: AtomicBool,
    /// The server ended it on purpose (unload, reload, a failed start): not a death.
    retired: AtomicBool,
    /// The generation's counters, where the monitor records a death.
    stats: Arc<SandboxStats>,
    /// Its cgroup, if one could be made: removed by the monitor once it has ended.
    cgroup: Mutex<Option<cgroup::Cgroup>>,
    started: Instant,
    /// The server side's adaptive spin budget of each slot, each on its own cache line: a
    /// budget shared by all callers was written by every call of every thread (the line
    /// bouncing between the callers' cores, next to the `dead` flag every call reads), and
    /// one caller's misses shortened another's spin.
    spins: Box<[PaddedSpin]>,
}

thread_local! {
    /// The slot this thread claimed last: where it looks first next time.
    static HINT: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// What a request returned.
struct Reply {
    rc: i32,
    refused: bool,
}

impl Process {
    fn kill(&self) {
        // SAFETY: pidfd_send_signal on our own pidfd (no pid reuse possible), no siginfo.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0u32,
            )
        };
    }

    fn close(&self) {
        self.retired.store(true, Ordering::Release);
        drop(self.sock.lock().take());
    }

    /// The index into [`crate::metrics::SANDBOX_DEATH_CAUSES`] of how it ended.
    fn death_cause(&self, ended: Ended) -> usize {
        match ended {
            Ended::Signal(libc::SIGKILL) if self.killed_for_deadline.load(Ordering::Acquire) => 4,
            Ended::OutOfMemory => 5,
            Ended::Signal(libc::SIGSYS) => 2,
            Ended::Signal(libc::SIGXCPU) => 3,
            Ended::Signal(_) => 0,
            Ended::Exit(_) => 1,
            Ended::Unknown => 6,
        }
    }

    /// Ended, or being killed for a deadline (then the next call restarts at once rather
    /// than meet the dying process).
    fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire) || self.killed_for_deadline.load(Ordering::Acquire)
    }

    /// The error for calls that met the sandbox dead.
    #[cold]
    fn death_error(&self, plugin: &str) -> Error {
        let ended = self.ended.get().copied();
        if self.killed_for_deadline.load(Ordering::Acquire)
            && matches!(ended, None | Some(Ended::Signal(libc::SIGKILL)))
        {
            return err!(
                KEEL_ERR_SANDBOX_CRASHED,
                "plugin '{plugin}': its sandbox was killed because a call ran past its deadline"
            );
        }
        match ended.unwrap_or(Ended::Unknown) {
            Ended::OutOfMemory => err!(
                KEEL_ERR_MEMORY_LIMIT,
                "plugin '{plugin}': its sandbox was killed by the kernel at its cgroup memory limit (out of memory)"
            ),
            Ended::Signal(libc::SIGSYS) => err!(
                KEEL_ERR_SANDBOX_SYSCALL_REFUSED,
                "plugin '{plugin}': its sandbox was killed by the seccomp filter (a system call outside the allowlist: file, socket, fork, ...)"
            ),
            Ended::Signal(libc::SIGXCPU) => err!(
                KEEL_ERR_CPU_BUDGET,
                "plugin '{plugin}': its sandbox used up its CPU time limit (SIGXCPU)"
            ),
            Ended::Signal(s) => err!(
                KEEL_ERR_SANDBOX_CRASHED,
                "plugin '{plugin}': its sandbox died from signal {s} ({})",
                signal_name(s)
            ),
            Ended::Exit(c) => err!(
                KEEL_ERR_SANDBOX_EXITED,
                "plugin '{plugin}': its sandbox exited with status {c}"
            ),
            Ended::Unknown => err!(KEEL_ERR_SANDBOX_CRASHED, "plugin '{plugin}': its sandbox ended"),
        }
    }

    /// Claim a slot, send a request, serve its host-API callbacks and collect the reply.
    #[allow(clippy::too_many_arguments)]
    fn request(
        &self,
        spec: &Spec,
        op: u32,
        function: u32,
        input: &[u8],
        extra: &[u8],
        output: &mut Vec<u8>,
        out_limit: usize,
        expires: Option<Instant>,
        cancel: Option<&CancelToken>,
    ) -> Result<Reply> {
        // Input, extra bytes and a terminating NUL.
        if input.len() + extra.len() + 1 > IN_CAP {
            return Err(err!(
                KEEL_ERR_SANDBOX_INPUT_TOO_LARGE,
                "plugin '{}': input of {} bytes is larger than the sandbox's call slot ({} bytes)",
                spec.name,
                input.len() + extra.len(),
                IN_CAP - 1
            ));
        }
        let i = self.claim(spec, expires)?;
        // What this request may append to `output` in all (the sandbox is not trusted to
        // have kept to the limit it was given).
        let start_len = output.len();
        let h = self.shm.header(i);
        // SAFETY: slot i is ours (CLAIMED); the input area holds IN_CAP bytes and the copies
        // fit (checked above).
        unsafe {
            let dst = self.shm.input(i);
            std::ptr::copy_nonoverlapping(input.as_ptr(), dst, input.len());
            std::ptr::copy_nonoverlapping(extra.as_ptr(), dst.add(input.len()), extra.len());
            *dst.add(input.len() + extra.len()) = 0;
        }
        h.op.store(op, Ordering::Relaxed);
        h.function.store(function, Ordering::Relaxed);
        h.in_len.store((input.len() + extra.len()) as u64, Ordering::Relaxed);
        h.out_limit.store(out_limit as u64, Ordering::Relaxed);
        h.cancel.store(0, Ordering::Relaxed);
        h.expires_ns.store(
            expires.map_or(0, |e| {
                monotonic_ns().saturating_add(e.saturating_duration_since(Instant::now()).as_nanos() as u64)
            }),
            Ordering::Relaxed,
        );
        if !publish_from(h, CLAIMED, REQUEST, &h.worker_sleeping) {
            return Err(self.death_error(&spec.name));
        }
        let watch = expires.is_some() || cancel.is_some();
        let tick = watch.then_some(Duration::from_millis(2));
        let mut timed_out = false;
        loop {
            let s = wait_for(
                h,
                &h.server_sleeping,
                |s| s == DONE || s == CALLBACK || s == DEAD,
                &self.spins[i].0,
                tick,
                || {
                    if cancel.is_some_and(|c| c.is_cancelled()) {
                        h.cancel.store(1, Ordering::Relaxed);
                    }
                    if expires.is_some_and(|e| Instant::now() >= e + DEADLINE_GRACE) {
                        timed_out = true;
                        return false;
                    }
                    true
                },
            );
            match s {
                Some(DONE) => {
                    let room = out_limit.saturating_sub(output.len() - start_len);
                    let sent = (h.out_len.load(Ordering::Relaxed) as usize).min(OUT_CAP);
                    let n = sent.min(room);
                    let reply = Reply {
                        rc: h.rc.load(Ordering::Relaxed),
                        refused: h.refused.load(Ordering::Relaxed) != 0 || sent > room,
                    };
                    output.reserve(n);
                    // SAFETY: n bytes of slot i's output area (bounded above) appended to
                    // `output`'s spare capacity (reserved), then the length set to cover them.
                    unsafe {
                        let len = output.len();
                        std::ptr::copy_nonoverlapping(self.shm.output(i), output.as_mut_ptr().add(len), n);
                        output.set_len(len + n);
                    }
                    let _ = h
                        .state
                        .compare_exchange(DONE, FREE, Ordering::Release, Ordering::Relaxed);
                    return Ok(reply);
                }
                Some(CALLBACK) if h.cb_op.load(Ordering::Relaxed) == CB_OUTPUT_FLUSH => {
                    // Output longer than the slot's area streams through it.
                    let n = (h.cb_len.load(Ordering::Relaxed) as usize).min(OUT_CAP);
                    if n > out_limit.saturating_sub(output.len() - start_len) {
                        // Past the limit: refused here too (the plugin sees a refused write).
                        h.cb_ret.store(-1, Ordering::Relaxed);
                        if !publish_from(h, CALLBACK, CALLBACK_DONE, &h.worker_sleeping) {
                            return Err(self.death_error(&spec.name));
                        }
                        continue;
                    }
                    output.reserve(n);
                    // SAFETY: n bytes of slot i's output area (bounded above), which the
                    // worker does not touch until CALLBACK_DONE, appended to `output`'s
                    // spare capacity (reserved), then the length set to cover them.
                    unsafe {
                        let len = output.len();
                        std::ptr::copy_nonoverlapping(self.shm.output(i), output.as_mut_ptr().add(len), n);
                        output.set_len(len + n);
                    }
                    h.cb_ret.store(0, Ordering::Relaxed);
                    if !publish_from(h, CALLBACK, CALLBACK_DONE, &h.worker_sleeping) {
                        return Err(self.death_error(&spec.name));
                    }
                }
                Some(CALLBACK) => {
                    let ret = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.serve_callback(spec, i)))
                        .unwrap_or(-3);
                    h.cb_ret.store(ret, Ordering::Relaxed);
                    if !publish_from(h, CALLBACK, CALLBACK_DONE, &h.worker_sleeping) {
                        return Err(self.death_error(&spec.name));
                    }
                    // A plugin that keeps calling back never lets the wait time out: the
                    // deadline is checked here too.
                    if expires.is_some_and(|e| Instant::now() >= e + DEADLINE_GRACE) {
                        self.killed_for_deadline.store(true, Ordering::Release);
                        self.kill();
                        return Err(err!(
                            KEEL_ERR_DEADLINE,
                            "plugin '{}': the call ran past its deadline; its sandbox was killed (it restarts on the next call)",
                            spec.name
                        ));
                    }
                }
                Some(_) => return Err(self.death_error(&spec.name)),
                None => {
                    debug_assert!(timed_out);
                    self.killed_for_deadline.store(true, Ordering::Release);
                    self.kill();
                    return Err(err!(
                        KEEL_ERR_DEADLINE,
                        "plugin '{}': the call ran past its deadline; its sandbox was killed (it restarts on the next call)",
                        spec.name
                    ));
                }
            }
        }
    }

    /// A free slot, claimed. Starts at this thread's last slot; yields while all are busy.
    #[inline]
    fn claim(&self, spec: &Spec, expires: Option<Instant>) -> Result<usize> {
        let n = self.shm.nslots();
        let start = HINT.with(|h| h.get());
        let start = if start < n { start } else { 0 };
        let mut rounds = 0u32;
        loop {
            for k in 0..n {
                let i = (start + k) % n;
                let h = self.shm.header(i);
                if h.state.load(Ordering::Relaxed) == FREE
                    && h.state
                        .compare_exchange(FREE, CLAIMED, Ordering::Acquire, Ordering::Relaxed)
                        .is_ok()
                {
                    HINT.with(|c| c.set(i));
                    return Ok(i);
                }
            }
            if self.is_dead() {
                return Err(self.death_error(&spec.name));
            }
            if expires.is_some_and(|e| Instant::now() >= e) {
                return Err(err!(
                    KEEL_ERR_DEADLINE,
                    "plugin '{}': every sandbox call slot stayed busy until the call's deadline",
                    spec.name
                ));
            }
            rounds += 1;
            if rounds < 64 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(100));
            }
        }
    }

    /// A host-API call the plugin made, checked against the granted capabilities here (the
    /// sandbox is not trusted to have honoured its table). Returns the entry's status.
    fn serve_callback(&self, spec: &Spec, i: usize) -> i64 {
        let h = self.shm.header(i);
        let op = h.cb_op.load(Ordering::Relaxed);
        let len = (h.cb_len.load(Ordering::Relaxed) as usize).min(CB_CAP);
        let mut data = vec![0u8; len];
        // SAFETY: len <= CB_CAP bytes of slot i's callback area into a buffer of that size.
        unsafe { std::ptr::copy_nonoverlapping(self.shm.callback(i), data.as_mut_ptr(), len) };
        // What the answer carries back (set by the entries that answer with bytes).
        h.cb_len.store(0, Ordering::Relaxed);
        let granted = |c: &str| spec.granted.has(c);
        let at = KvTarget::kv(&spec.name);
        match op {
            CB_LOG if granted("log") => {
                let level = LogLevel::from_i32(h.cb_arg.load(Ordering::Relaxed));
                spec.services.log(&spec.name, level, &String::from_utf8_lossy(&data));
                0
            }
            CB_KV_GET if granted("kv:read") => match spec.services.kv_get(at, &data) {
                Ok(Some(v)) if v.len() <= CB_CAP => {
                    // SAFETY: v.len() <= CB_CAP bytes into slot i's callback area.
                    unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), self.shm.callback(i), v.len()) };
                    h.cb_len.store(v.len() as u64, Ordering::Relaxed);
                    0
                }
                Ok(Some(_)) => -2,
                Ok(None) => 1,
                Err(_) => -3,
            },
            CB_KV_PUT if granted("kv:write") => {
                let k = (h.cb_len2.load(Ordering::Relaxed) as usize).min(len);
                match spec.services.kv_put(at, &data[..k], &data[k..]) {
                    Ok(()) => 0,
                    Err(_) => -3,
                }
            }
            CB_KV_DELETE if granted("kv:write") => match spec.services.kv_delete(at, &data) {
                Ok(true) => 0,
                Ok(false) => 1,
                Err(_) => -3,
            },
            CB_KV_SCAN if granted("kv:read") => self.scan_into(spec, i, at, &data),
            CB_STORAGE_GET | CB_STORAGE_SCAN if granted("storage:read") => match split_table(&data) {
                Some((table, rest)) if op == CB_STORAGE_GET => {
                    match spec.services.kv_get(KvTarget::table(&spec.name, table), rest) {
                        Ok(Some(v)) if v.len() <= CB_CAP => self.answer(i, &v, 0),
                        Ok(Some(_)) => -2,
                        Ok(None) => 1,
                        Err(_) => -3,
                    }
                }
                Some((table, rest)) => self.scan_into(spec, i, KvTarget::table(&spec.name, table), rest),
                None => -1,
            },
            CB_STORAGE_PUT | CB_STORAGE_DELETE if granted("storage:write") => match split_table(&data) {
                Some((table, rest)) if op == CB_STORAGE_PUT => {
                    let k = (h.cb_len2.load(Ordering::Relaxed) as usize).min(rest.len());
                    match spec
                        .services
                        .kv_put(KvTarget::table(&spec.name, table), &rest[..k], &rest[k..])
                    {
                        Ok(()) => 0,
                        Err(_) => -3,
                    }
                }
                Some((table, rest)) => match spec.services.kv_delete(KvTarget::table(&spec.name, table), rest) {
                    Ok(true) => 0,
                    Ok(false) => 1,
                    Err(_) => -3,
                },
                None => -1,
            },
            CB_SINK_ERROR if crate::services::sinks::SINK_CAPABILITIES.iter().any(|c| granted(c)) => {
                let msg = crate::services::sinks::last_sink_error();
                if msg.is_empty() {
                    1
                } else {
                    let b = &msg.as_bytes()[..msg.len().min(CB_CAP)];
                    self.answer(i, b, 0)
                }
            }
            CB_METRIC_DEFINE => self.metric_define(spec, i, &data),
            CB_RPC_REGISTER if granted("rpc:register") => {
                let Some(el) = data
                    .get(..4)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
                else {
                    return crate::error::keel_status::KEEL_ERR_INVALID_ARGUMENT as i64;
                };
                let Some((endpoint, function)) = data[4..].split_at_checked(el) else {
                    return crate::error::keel_status::KEEL_ERR_INVALID_ARGUMENT as i64;
                };
                let (Ok(endpoint), Ok(function)) = (std::str::from_utf8(endpoint), std::str::from_utf8(function))
                else {
                    return crate::error::keel_status::KEEL_ERR_INVALID_UTF8 as i64;
                };
                let functions = spec.functions.get().map(Vec::as_slice);
                match spec
                    .services
                    .rpc
                    .register(&spec.rpc_plugin, spec.generation, functions, endpoint, function)
                {
                    Ok(()) => 0,
                    Err(e) => {
                        spec.services.log(&spec.name, LogLevel::Warn, &e.to_string());
                        e.status() as i64
                    }
                }
            }
            CB_RPC_REGISTER => crate::error::keel_status::KEEL_ERR_CAPABILITY_DENIED as i64,
            CB_METRIC_UPDATE => {
                let Some(set) = &spec.metrics else {
                    return crate::error::keel_status::KEEL_ERR_CAPABILITY_DENIED as i64;
                };
                if data.len() != 12 {
                    return crate::error::keel_status::KEEL_ERR_INVALID_ARGUMENT as i64;
                }
                let id = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
                let mut v = [0u8; 8];
                v.copy_from_slice(&data[4..12]);
                let v = f64::from_le_bytes(v);
                let r = match h.cb_arg.load(Ordering::Relaxed) {
                    0 => set.add(id, v),
                    1 => set.set(id, v),
                    _ => set.observe(id, v),
                };
                match r {
                    Ok(()) => 0,
                    Err(s) => s as i64,
                }
            }
            CB_HOSTFN_LOOKUP => {
                let Some(z) = data.iter().position(|&b| b == 0) else {
                    return 0;
                };
                let (ns, name) = (&data[..z], &data[z + 1..]);
                spec.host_fns
                    .iter()
                    .position(|f| f.namespace().as_bytes() == ns && f.name().as_bytes() == name)
                    .map_or(0, |i| i as i64 + 1)
            }
            CB_HOSTFN_CALL => {
                let Some(f) = spec.host_fns.get(h.cb_arg.load(Ordering::Relaxed) as u32 as usize) else {
                    return -1;
                };
                let mut buf = Vec::new();
                let rc = crate::runtime::output::with_output(&mut buf, CB_CAP, |out| {
                    // SAFETY: RawOutput and HostOutput are both #[repr(C)] { ctx, write } with
                    // the same write signature (as the in-process runtime relies on); `out`
                    // lives for the call.
                    let out = unsafe { &*(out as *const crate::runtime::output::RawOutput as *const HostOutput) };
                    f.invoke(&spec.name, &data, out)
                });
                let n = buf.len().min(CB_CAP);
                // SAFETY: n <= CB_CAP bytes into slot i's callback area.
                unsafe { std::ptr::copy_nonoverlapping(buf.as_ptr(), self.shm.callback(i), n) };
                h.cb_len.store(n as u64, Ordering::Relaxed);
                rc as i64
            }
            _ => -1,
        }
    }
}

impl Process {
    /// Put `bytes` (at most CB_CAP) in slot i's callback area as the answer; returns `ret`.
    fn answer(&self, i: usize, bytes: &[u8], ret: i64) -> i64 {
        let n = bytes.len().min(CB_CAP);
        // SAFETY: n <= CB_CAP bytes into slot i's callback area.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.shm.callback(i), n) };
        self.shm.header(i).cb_len.store(n as u64, Ordering::Relaxed);
        ret
    }

    /// `metric_define`: payload `name_len u32, labels_len u32, bucket_count u32` (LE), name,
    /// labels, buckets (f64 LE); the id answers in the callback area. A refusal is logged
    /// (Warn) with its reason, as in-process.
    fn metric_define(&self, spec: &Spec, i: usize, data: &[u8]) -> i64 {
        use crate::error::keel_status as ks;
        use crate::services::plugin_metrics::MetricKind;
        let Some(set) = &spec.metrics else {
            return ks::KEEL_ERR_CAPABILITY_DENIED as i64;
        };
        let u = |at: usize| {
            data.get(at..at + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        };
        let (Some(nl), Some(ll), Some(bc)) = (u(0), u(4), u(8)) else {
            return ks::KEEL_ERR_INVALID_ARGUMENT as i64;
        };
        let (name_end, labels_end) = (
            12usize.saturating_add(nl),
            12usize.saturating_add(nl).saturating_add(ll),
        );
        if labels_end.saturating_add(bc.saturating_mul(8)) != data.len() {
            return ks::KEEL_ERR_INVALID_ARGUMENT as i64;
        }
        let (Ok(name), Ok(labels)) = (
            std::str::from_utf8(&data[12..name_end]),
            std::str::from_utf8(&data[name_end..labels_end]),
        ) else {
            return ks::KEEL_ERR_INVALID_UTF8 as i64;
        };
        let buckets: Vec<f64> = data[labels_end..]
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect();
        let kind = self.shm.header(i).cb_arg.load(Ordering::Relaxed);
        let refused = |e: Error| -> i64 {
            spec.services.log(&spec.name, LogLevel::Warn, &e.to_string());
            e.status() as i64
        };
        let Some(kind) = MetricKind::from_i32(kind) else {
            return refused(err!(KEEL_ERR_METRIC_INVALID, "metric kind {kind} is not KEEL_METRIC_*"));
        };
        match spec
            .services
            .metrics
            .define(set, kind, name, labels.as_bytes(), &buckets)
        {
            Ok(id) => self.answer(i, &id.to_le_bytes(), 0),
            Err(e) => refused(e),
        }
    }

    /// A scan whose entries (encoded as for in-process plugins) fill at most the callback
    /// area: 0 complete, 2 truncated, -3 the sink failed.
    fn scan_into(&self, spec: &Spec, i: usize, at: KvTarget<'_>, prefix: &[u8]) -> i64 {
        let mut all = Vec::new();
        let mut one = Vec::new();
        let r = spec.services.kv_scan(at, prefix, CB_CAP, |k, v| {
            crate::services::sinks::encode_entry(&mut one, k, v);
            if all.len() + one.len() > CB_CAP {
                return false;
            }
            all.extend_from_slice(&one);
            true
        });
        match r {
            Ok(crate::services::sinks::ScanEnd::Complete) => self.answer(i, &all, 0),
            Ok(crate::services::sinks::ScanEnd::Truncated) => self.answer(i, &all, 2),
            Err(_) => -3,
        }
    }
}

/// `table\0rest` → (checked table name, rest); a bad name is recorded for `sink_error`.
fn split_table(data: &[u8]) -> Option<(&str, &[u8])> {
    let z = data.iter().position(|&b| b == 0)?;
    match crate::services::sinks::check_table(&data[..z]) {
        Ok(t) => Some((t, &data[z + 1..])),
        Err(e) => {
            crate::services::sinks::record_error(&crate::services::SinkError(e));
            None
        }
    }
}

fn signal_name(s: i32) -> &'static str {
    match s {
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGBUS => "SIGBUS",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGABRT => "SIGABRT: abort()",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSYS => "SIGSYS",
        libc::SIGXCPU => "SIGXCPU",
        _ => "signal",
    }
}

/// What every (re)start of a plugin's sandbox needs.
struct Spec {
    name: String,
    launcher: PathBuf,
    /// The verified sealed memfd (sent, never a path).
    plugin_fd: OwnedFd,
    config: String,
    granted: Capabilities,
    services: HostServices,
    /// The host functions this plugin may use (granted), bound at load as in-process; the
    /// sandbox names them by index + 1.
    host_fns: Vec<Arc<crate::services::hostfn::HostFn>>,
    /// The plugin's metric set (`metrics:write` granted), shared by its generations.
    metrics: Option<Arc<crate::services::plugin_metrics::PluginMetricSet>>,
    /// For `rpc:register`: the plugin's name, this generation and its functions (set from the
    /// first sandbox's hello; a restarted sandbox must report the same).
    rpc_plugin: Arc<str>,
    generation: u64,
    functions: OnceLock<Vec<String>>,
    boot: Bootstrap,
    stats: Arc<SandboxStats>,
    /// The memory limit (`limits.memory_mb`) and CPU percent its cgroup enforces.
    memory_mb: u64,
    cpu_percent: u32,
}

/// What a freshly started sandbox reported.
struct Started {
    process: Arc<Process>,
    functions: Vec<String>,
    flags: u32,
    hooks: u32,
}

/// Spawn a sandbox for `spec`, hand it the plugin and read its hello (no `init` yet).
fn start(spec: &Spec) -> Result<Started> {
    use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
    let name = &spec.name;
    let (ours, theirs) = socketpair(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)
        .map_err(|e| err!(KEEL_ERR_SANDBOX_START, "socketpair failed: {e}"))?;
    let shm_fd = shm::create(spec.boot.nslots)?;
    let shm = Shm::map(shm_fd.as_fd(), spec.boot.nslots)
        .map_err(|e| err!(KEEL_ERR_SANDBOX_START, "mapping the call area failed: {e}"))?;
    let mut child = spawn_launcher(&spec.launcher, theirs)?;
    let pid = child.id() as i32;
    // SAFETY: pidfd_open of our own unreaped child (only the monitor below reaps it).
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        let e = std::io::Error::last_os_error();
        let _ = child.kill();
        let _ = child.wait();
        bail!(KEEL_ERR_SANDBOX_START, "pidfd_open failed: {e}");
    }
    // SAFETY: a fresh descriptor owned from here on.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
    let _ =
        rustix::net::sockopt::set_socket_timeout(&ours, rustix::net::sockopt::Timeout::Recv, Some(HANDSHAKE_TIMEOUT));
    // Its cgroup, before it gets its bootstrap: the limits are in force before any plugin
    // code runs. Without one, the rlimits alone (the log says which).
    let limits = cgroup::CgroupLimits {
        memory_bytes: spec.memory_mb << 20,
        cpu_percent: spec.cpu_percent,
    };
    // Said once per generation (its first sandbox), at debug level.
    let first = spec.functions.get().is_none();
    let cg = match cgroup::Cgroup::create(pid, limits) {
        Ok(cg) => {
            first.then(|| {
                spec.services.log(
                    name,
                    LogLevel::Debug,
                    &format!("sandbox {pid}: limits by rlimits and {}", cg.description),
                )
            });
            Some(cg)
        }
        Err(why) => {
            first.then(|| {
                spec.services.log(
                    name,
                    LogLevel::Debug,
                    &format!("sandbox {pid}: limits by rlimits only (no cgroup: {why})"),
                )
            });
            None
        }
    };
    // With a cgroup memory limit, RLIMIT_AS (which counts reserved address space — thread
    // stacks, malloc arenas — not memory used) is only a backstop: four times the limit plus
    // 1 GiB of reservations.
    let memory_limit = if cg.is_some() {
        spec.boot.memory_limit + 3 * (spec.memory_mb << 20) + (1 << 30)
    } else {
        spec.boot.memory_limit
    };
    let process = Arc::new(Process {
        shm,
        pid,
        pidfd,
        sock: Mutex::new(None),
        dead: AtomicBool::new(false),
        ended: OnceLock::new(),
        killed_for_deadline: AtomicBool::new(false),
        retired: AtomicBool::new(false),
        stats: spec.stats.clone(),
        cgroup: Mutex::new(cg),
        started: Instant::now(),
        spins: (0..spec.boot.nslots).map(|_| PaddedSpin(Spin::new())).collect(),
    });
    let watched = process.clone();
    let monitor = std::thread::Builder::new()
        .name("keel-sandbox-monitor".into())
        .spawn(move || monitor(child, watched));
    if let Err(e) = monitor {
        process.kill();
        bail!(KEEL_ERR_SANDBOX_START, "starting the sandbox monitor failed: {e}");
    }
    let fail = |e: Error| -> Error {
        process.retired.store(true, Ordering::Release);
        process.kill();
        e
    };
    let boot = Bootstrap {
        parent: std::process::id() as u64,
        memory_limit,
        ..spec.boot
    };
    send_with_fds(ours.as_fd(), &boot.encode(), &[spec.plugin_fd.as_fd(), shm_fd.as_fd()]).map_err(|e| {
        fail(err!(
            KEEL_ERR_SANDBOX_START,
            "plugin '{name}': sending the plugin to its sandbox failed: {e}"
        ))
    })?;
    drop(shm_fd);
    let mut buf = [0u8; HELLO_LEN];
    let hello = match recv_with_fds(ours.as_fd(), &mut buf) {
        Ok((n, _)) if n == HELLO_LEN => Hello::decode(&buf),
        Ok((0, _)) => None,
        Ok(_) => None,
        Err(e) => {
            return Err(fail(err!(
                KEEL_ERR_SANDBOX_START,
                "plugin '{name}': no answer from its sandbox: {e}"
            )))
        }
    };
    let Some(hello) = hello else {
        // The sandbox ended before answering: say why if the monitor knows.
        let t = Instant::now();
        while !process.is_dead() && t.elapsed() < Duration::from_secs(1) {
            std::thread::sleep(Duration::from_millis(1));
        }
        let e = if process.is_dead() {
            process.death_error(name)
        } else {
            err!(KEEL_ERR_SANDBOX_START, "plugin '{name}': bad answer from its sandbox")
        };
        return Err(fail(err!(
            KEEL_ERR_SANDBOX_START,
            "plugin '{name}': the sandbox ended during its start: {}",
            e.message()
        )));
    };
    let len = (hello.len as usize).min(OUT_CAP);
    let mut text = vec![0u8; len];
    // SAFETY: len <= OUT_CAP bytes of slot 0's output area; no call runs yet.
    unsafe { std::ptr::copy_nonoverlapping(process.shm.output(0), text.as_mut_ptr(), len) };
    if hello.status != 0 {
        let status = crate::error::keel_status::from_repr(hello.status)
            .filter(|s| *s != crate::error::keel_status::KEEL_OK)
            .unwrap_or(crate::error::keel_status::KEEL_ERR_SANDBOX_START);
        return Err(fail(Error::new(
            status,
            format!("plugin '{name}' (isolated): {}", String::from_utf8_lossy(&text)),
        )));
    }
    let functions: Vec<String> = text
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    if functions.len() != hello.nfunctions as usize {
        return Err(fail(err!(
            KEEL_ERR_PLUGIN_ABI_VIOLATION,
            "plugin '{name}': its sandbox reported {} functions but sent {}",
            hello.nfunctions,
            functions.len()
        )));
    }
    *process.sock.lock() = Some(ours);
    Ok(Started {
        process,
        functions,
        flags: hello.flags,
        hooks: hello.hooks,
    })
}

/// Reap the sandbox (no zombie), record why it ended and fail every call waiting on it.
fn monitor(mut child: std::process::Child, p: Arc<Process>) {
    use std::os::unix::process::ExitStatusExt;
    let ended = match child.wait() {
        Ok(st) => match (st.signal(), st.code()) {
            (Some(s), _) => Ended::Signal(s),
            (None, Some(c)) => Ended::Exit(c),
            _ => Ended::Unknown,
        },
        Err(_) => Ended::Unknown,
    };
    let cg = p.cgroup.lock().take();
    let ended = match (ended, &cg) {
        (Ended::Signal(libc::SIGKILL), Some(cg)) if cg.oom_kills() > 0 => Ended::OutOfMemory,
        _ => ended,
    };
    // The sandbox has been reaped: its cgroup is empty and goes.
    drop(cg);
    let _ = p.ended.set(ended);
    if !p.retired.load(Ordering::Acquire) {
        p.stats.deaths[p.death_cause(ended)].fetch_add(1, Ordering::Relaxed);
    }
    p.dead.store(true, Ordering::Release);
    for i in 0..p.shm.nslots() {
        let h = p.shm.header(i);
        h.state.swap(DEAD, Ordering::SeqCst);
        futex_wake(&h.state, i32::MAX);
    }
}

/// Start a sandbox and run the plugin's `init` in it (with `restored` state, if any).
fn start_and_init(spec: &Spec, restored: Option<(&[u8], Option<&str>)>) -> Result<Started> {
    let s = start(spec)?;
    let _ = spec.functions.set(s.functions.clone());
    let mut errbuf = Vec::new();
    let r = s.process.request(
        spec,
        OP_INIT,
        0,
        spec.config.as_bytes(),
        &[],
        &mut errbuf,
        64 << 10,
        Some(Instant::now() + HANDSHAKE_TIMEOUT),
        None,
    );
    let fail = |e: Error| {
        s.process.kill();
        s.process.close();
        e
    };
    let r = r.map_err(|e| fail(e.context(format!("plugin '{}': during init", spec.name))))?;
    if r.rc != 0 {
        return Err(fail(err!(
            KEEL_ERR_INIT_FAILED,
            "plugin '{}': init returned {}{}",
            spec.name,
            r.rc,
            if errbuf.is_empty() {
                String::new()
            } else {
                format!(": {}", String::from_utf8_lossy(&errbuf))
            }
        )));
    }
    if let Some((state, version)) = restored {
        let mut out = Vec::new();
        let r = match version {
            Some(v) if s.hooks & HOOK_RESTORE_VERSIONED != 0 => {
                let mut extra = v.as_bytes().to_vec();
                extra.push(0);
                s.process.request(
                    spec,
                    OP_RESTORE_VERSIONED,
                    state.len() as u32,
                    state,
                    &extra,
                    &mut out,
                    0,
                    None,
                    None,
                )
            }
            _ if s.hooks & HOOK_RESTORE != 0 => {
                s.process
                    .request(spec, OP_RESTORE, 0, state, &[], &mut out, 0, None, None)
            }
            _ => return Err(fail(err!(KEEL_ERR_UNSUPPORTED, "plugin has no restore_state hook"))),
        }
        .map_err(fail)?;
        if r.rc != 0 {
            return Err(fail(err!(KEEL_ERR_STATE_RESTORE, "restore_state returned {}", r.rc)));
        }
    }
    Ok(s)
}

struct Backoff {
    next: Instant,
    delay: Duration,
}

/// An isolated native plugin generation: the [`Instance`] the registry calls.
pub struct IsolatedInstance {
    spec: Arc<Spec>,
    current: ArcSwap<Process>,
    backoff: Mutex<Backoff>,
    functions: Vec<String>,
    hooks: u32,
    max_output: usize,
    timeout: Option<Duration>,
}

/// Load a native plugin from its verified artifact into a new sandbox and run its `init`.
pub fn load(artifact: Verified, ctx: &LoadContext<'_>, config: &IsolationConfig) -> Result<IsolatedInstance> {
    let name = ctx.manifest.name.clone();
    let len = artifact.len();
    let plugin_fd = artifact
        .into_sealed_fd()
        .ok_or_else(|| err!(KEEL_ERR_INTERNAL, "native artifact of '{name}' is not a sealed memfd"))?;
    // The same ELF layout check as in-process, in the server before any sandbox starts: a
    // truncated or foreign image gets the in-process code, not a loader crash in the sandbox.
    let file = std::fs::File::from(plugin_fd);
    crate::runtime::shared_lib::check_elf(
        len,
        |buf, off| std::os::unix::fs::FileExt::read_exact_at(&file, buf, off),
        &format!("plugin '{name}'"),
    )?;
    let plugin_fd = OwnedFd::from(file);
    let launcher = resolve_launcher(config.launcher.as_deref())?;
    let limits = ctx.manifest.limits.as_ref();
    let memory_mb = limits.and_then(|l| l.memory_mb).unwrap_or(DEFAULT_MEMORY_MB);
    let g = ctx.granted;
    let api = [
        ("log", API_LOG),
        ("clock", API_CLOCK),
        ("random", API_RANDOM),
        ("kv:read", API_KV_READ),
        ("kv:write", API_KV_WRITE),
        ("storage:read", API_STORAGE_READ),
        ("storage:write", API_STORAGE_WRITE),
        ("metrics:write", API_METRICS),
        ("rpc:register", API_RPC),
    ]
    .iter()
    .filter(|(c, _)| g.has(c))
    .fold(0, |a, (_, b)| a | b);
    let spec = Arc::new(Spec {
        name: name.clone(),
        launcher,
        plugin_fd,
        config: ctx.manifest.config_json(),
        granted: g,
        services: ctx.services.clone(),
        host_fns: ctx.services.host_fns.snapshot(g),
        metrics: g.has("metrics:write").then(|| ctx.services.metrics.set_for(&name)),
        rpc_plugin: Arc::from(name.as_str()),
        generation: ctx.generation,
        functions: OnceLock::new(),
        stats: Arc::default(),
        memory_mb,
        cpu_percent: config.cpu_percent,
        boot: Bootstrap {
            nslots: DEFAULT_SLOTS,
            api,
            // The call area is mapped too; the limit is on top of it.
            memory_limit: (memory_mb << 20) + area_len(DEFAULT_SLOTS) as u64,
            cpu_limit: config.cpu_seconds,
            parent: 0,
        },
    });
    let restored = ctx.restored_state.map(|s| (s, ctx.restored_state_version));
    let s = start_and_init(&spec, restored)?;
    let _ = s.flags;
    Ok(IsolatedInstance {
        spec,
        current: ArcSwap::new(s.process),
        backoff: Mutex::new(Backoff {
            next: Instant::now(),
            delay: BACKOFF_MIN,
        }),
        functions: s.functions,
        hooks: s.hooks,
        max_output: max_output(ctx.manifest),
        timeout: limits.and_then(|l| l.timeout_ms).map(Duration::from_millis),
    })
}

impl IsolatedInstance {
    /// The pid of the current sandbox process.
    pub fn sandbox_pid(&self) -> i32 {
        self.current.load().pid
    }

    /// The running sandbox, restarted first if it died (with backoff).
    #[cold]
    fn restarted(&self, dead: &Arc<Process>) -> Result<Arc<Process>> {
        let mut b = self.backoff.lock();
        let cur = self.current.load_full();
        if !Arc::ptr_eq(&cur, dead) && !cur.is_dead() {
            return Ok(cur);
        }
        let now = Instant::now();
        if now < b.next {
            let why = cur.death_error(&self.spec.name);
            bail!(
                KEEL_ERR_SANDBOX_BACKOFF,
                "plugin '{}': its sandbox is down and restarts in {} ms (last end: {})",
                self.spec.name,
                (b.next - now).as_millis(),
                why.message()
            );
        }
        if cur.started.elapsed() >= BACKOFF_RESET_AFTER {
            b.delay = BACKOFF_MIN;
        }
        b.next = now + b.delay;
        b.delay = (b.delay * 2).min(BACKOFF_MAX);
        let s = start_and_init(&self.spec, None)?;
        if s.functions != self.functions {
            s.process.kill();
            s.process.close();
            bail!(
                KEEL_ERR_SANDBOX_START,
                "plugin '{}': the restarted sandbox reports other functions",
                self.spec.name
            );
        }
        cur.close();
        self.current.store(s.process.clone());
        self.spec.stats.restarts.fetch_add(1, Ordering::Relaxed);
        Ok(s.process)
    }

    #[inline]
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        op: u32,
        function: u32,
        input: &[u8],
        extra: &[u8],
        output: &mut Vec<u8>,
        out_limit: usize,
        expires: Option<Instant>,
        cancel: Option<&CancelToken>,
    ) -> Result<Reply> {
        let g = self.current.load();
        if !g.is_dead() {
            return g.request(
                &self.spec, op, function, input, extra, output, out_limit, expires, cancel,
            );
        }
        let dead = arc_swap::Guard::into_inner(g);
        let p = self.restarted(&dead)?;
        p.request(
            &self.spec, op, function, input, extra, output, out_limit, expires, cancel,
        )
    }

    fn call_inner(
        &self,
        function: u32,
        input: &[u8],
        output: &mut Vec<u8>,
        expires: Option<Instant>,
        cancel: Option<&CancelToken>,
    ) -> Result<()> {
        let r = self.run(OP_CALL, function, input, &[], output, self.max_output, expires, cancel)?;
        if r.rc != 0 || r.refused {
            return Err(self.call_error(function, r, output));
        }
        Ok(())
    }

    #[cold]
    fn call_error(&self, function: u32, r: Reply, output: &[u8]) -> Error {
        let fname = self.functions.get(function as usize).map(String::as_str).unwrap_or("?");
        if r.refused || r.rc == crate::runtime::output::WRITE_REFUSED {
            return err!(
                KEEL_ERR_OUTPUT_TOO_LARGE,
                "function '{fname}' output exceeded {} bytes (a write was refused; the plugin returned {})",
                self.max_output,
                r.rc
            );
        }
        let msg = String::from_utf8_lossy(output);
        err!(
            KEEL_ERR_CALL_FAILED,
            "function '{fname}' returned {}{}",
            r.rc,
            if msg.is_empty() {
                String::new()
            } else {
                format!(": {msg}")
            }
        )
    }

    fn default_expiry(&self) -> Option<Instant> {
        self.timeout.map(|t| Instant::now() + t)
    }
}

impl Instance for IsolatedInstance {
    fn functions(&self) -> &[String] {
        &self.functions
    }

    #[inline]
    fn call(&self, function: u32, input: &[u8], output: &mut Vec<u8>) -> Result<()> {
        self.call_inner(function, input, output, self.default_expiry(), None)
    }

    fn call_with(&self, function: u32, input: &[u8], output: &mut Vec<u8>, opts: &CallOptions<'_>) -> Result<()> {
        let expires = match (opts.expires, self.default_expiry()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.call_inner(function, input, output, expires, opts.cancel)
    }

    fn deadline_cap(&self) -> Option<Duration> {
        self.timeout
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }

    fn sandbox(&self) -> Option<crate::metrics::SandboxSnapshot> {
        let st = &self.spec.stats;
        Some(crate::metrics::SandboxSnapshot {
            up: !self.current.load().is_dead(),
            restarts: st.restarts.load(Ordering::Relaxed),
            deaths: std::array::from_fn(|i| st.deaths[i].load(Ordering::Relaxed)),
        })
    }

    fn has_state(&self) -> bool {
        self.hooks & HOOK_SAVE != 0
    }

    fn save_state(&self) -> Result<Option<Vec<u8>>> {
        if self.hooks & HOOK_SAVE == 0 {
            return Ok(None);
        }
        let mut out = Vec::new();
        let r = self.run(OP_SAVE, 0, &[], &[], &mut out, OUT_CAP, self.default_expiry(), None)?;
        if r.rc != 0 || r.refused {
            bail!(
                KEEL_ERR_STATE_SAVE,
                "save_state returned {}{}: {}",
                r.rc,
                if r.refused {
                    " (state larger than the sandbox's slot)"
                } else {
                    ""
                },
                String::from_utf8_lossy(&out)
            );
        }
        Ok(Some(out))
    }

    fn restore_state(&self, state: &[u8]) -> Result<()> {
        if self.hooks & HOOK_RESTORE == 0 {
            bail!(KEEL_ERR_UNSUPPORTED, "plugin has no restore_state hook");
        }
        let mut out = Vec::new();
        let r = self.run(OP_RESTORE, 0, state, &[], &mut out, 0, self.default_expiry(), None)?;
        if r.rc != 0 {
            bail!(KEEL_ERR_STATE_RESTORE, "restore_state returned {}", r.rc);
        }
        Ok(())
    }

    /// Dead (and not restartable yet): `Unhealthy`. A dead sandbox is restarted here when the
    /// backoff allows, so the health monitor brings it back too.
    fn health(&self) -> Health {
        let mut out = Vec::new();
        let deadline = Some(Instant::now() + Duration::from_secs(5));
        if self.hooks & HOOK_HEALTH == 0 {
            let g = self.current.load();
            if !g.is_dead() {
                return Health::Unknown;
            }
            let dead = arc_swap::Guard::into_inner(g);
            return match self.restarted(&dead) {
                Ok(_) => Health::Unknown,
                Err(_) => Health::Unhealthy,
            };
        }
        match self.run(OP_HEALTH, 0, &[], &[], &mut out, 0, deadline, None) {
            Ok(r) if r.rc == 0 => Health::Healthy,
            Ok(r) if r.rc == 1 => Health::Degraded,
            _ => Health::Unhealthy,
        }
    }
}

impl Drop for IsolatedInstance {
    /// `shutdown` in the sandbox (bounded), then close the socket; the sandbox exits, and is
    /// killed if it has not after the budget. The monitor reaps it.
    fn drop(&mut self) {
        let p = self.current.load_full();
        if !p.is_dead() {
            let mut out = Vec::new();
            let _ = p.request(
                &self.spec,
                OP_SHUTDOWN,
                0,
                &[],
                &[],
                &mut out,
                0,
                Some(Instant::now() + SHUTDOWN_BUDGET),
                None,
            );
        }
        p.close();
        let t = Instant::now();
        while !p.is_dead() && t.elapsed() < SHUTDOWN_BUDGET {
            std::thread::sleep(Duration::from_millis(1));
        }
        if !p.is_dead() {
            p.kill();
        }
    }
}
