//! Hot plug: a directory watcher that turns file changes in a plugin directory into load,
//! reload and unload.
//!
//! `Host::watch_dir(dir, config)` starts one thread that watches `dir` **recursively**
//! (notify: inotify on Linux), so an edit of `<dir>/<plugin>/keel.json` (or `plugin.json`),
//! of its `.sig` or of the binary is seen (ThemisDB watched only the top directory and missed
//! exactly these, themisdb-compat §9.18). The layout and what counts as a manifest are those of
//! [`crate::deps::discover`]: one folder per plugin; hidden, temporary and partial names
//! (`.x`, `x~`, `x.tmp`, `x.part`, `x.swp`, `x.download`) are ignored wherever they appear
//! in a path, so an editor's swap file or a copy in progress never triggers anything.
//!
//! # When the watcher acts
//!
//! Events are grouped **per plugin folder** (the first path component below `dir`):
//!
//! 1. **Debounce**: a folder is looked at only once no event has arrived for it for
//!    [`WatchConfig::debounce`] (default 300 ms). Every event restarts that wait, so a file
//!    written in many chunks is one change, not many (ThemisDB slept 500 ms per event).
//! 2. **Settle**: then the folder's relevant files — `keel.json`, `plugin.json`, their
//!    `.sig` files and the binary the manifest names — must keep the same size, mtime,
//!    ctime and inode across [`WatchConfig::settle`] (default 200 ms), which also catches
//!    writers whose events are not seen (a network file system, a file behind a symbolic
//!    link). If they moved, the settle interval starts again.
//! 3. **Decide**, from the folder's files and the host's registry (never from a cached copy
//!    of either):
//!    * a manifest, and no loaded plugin came from this folder → **load** it, through the same
//!      path as `Host::load_dir` for that one folder (signature, digest, capabilities,
//!      dependencies all checked);
//!    * a manifest, a plugin loaded from it, and the relevant files differ from when the
//!      watcher last acted on them → **reload** (`Host::reload`: the new bytes are verified
//!      first; on failure it rolls back and the old generation keeps serving). `touch
//!      keel.json` is thus a way to ask for a reload;
//!    * no manifest (removed, or the folder is gone) and a plugin loaded from this folder →
//!      **unload**. If other plugins depend on it, it stays loaded and the refusal
//!      (`KEEL_ERR_HAS_DEPENDENTS`) is reported.
//!
//!    A loaded plugin is never replaced by a rescan: a folder whose manifest names a plugin
//!    that is already loaded from elsewhere gets `KEEL_ERR_ALREADY_LOADED` reported and is
//!    left alone.
//! 4. **No failure storms**: the watcher acts on a folder only when its relevant files
//!    changed since it last acted (successfully or not), so a manifest that does not parse
//!    or a tampered binary is reported once, and tried again after the next change and quiet
//!    period. Failures that another plugin's arrival or departure can cure (missing
//!    dependency, version conflict, dependents, name taken) are tried again after every
//!    successful load, reload or unload by the watcher, so folders dropped in together load
//!    in dependency order whatever order their events came in; such a retry is reported
//!    only if it is refused for another reason than last time (or succeeds).
//!
//! A writer that pauses for longer than debounce + settle in the middle of a file is taken
//! to be done. That is still safe: the manifest's SHA-256 refuses a partial binary
//! (`KEEL_ERR_DIGEST_MISMATCH`, reload rolled back) and a partial manifest does not parse;
//! the next change is tried again. Deploy tools should write to a temporary name and rename
//! (the temporary name is ignored; the rename is one event).
//!
//! When the watcher starts it adopts the plugins already loaded from `dir`'s folders (they
//! are not reloaded) and, with [`WatchConfig::load_existing`] (default on), loads the
//! folders with a manifest whose plugin is not loaded, as if they had just been dropped in.
//!
//! # Outcomes
//!
//! Every action the watcher takes, and every problem of the watch itself, is a
//! [`WatchEvent`] in a bounded ring ([`WatchConfig::history`], default 256; the oldest
//! are dropped) read with `Host::watch_events`; sequence numbers keep counting across
//! restarts of the watcher. Lifecycle listeners fire as for any load, reload and unload.
//!
//! # Threads and stopping
//!
//! Events are applied on the watcher's own thread (`keel-watch`) through the public
//! lifecycle operations; it holds no lock while it waits, and calls never wait for it (they
//! do not take the lifecycle lock at all). One watcher per host: `watch_dir` while one runs
//! is `KEEL_ERR_BUSY` (stop it first). `Host::stop_watching` and dropping the host stop the
//! thread with a message on the channel it waits on and join it: prompt, except that an
//! action already under way (a reload waiting for its drain) finishes first. No
//! spin-then-detach (ThemisDB, §9.18). Stopping twice is harmless. A lifecycle listener
//! running on the watcher thread may stop the watcher; the thread then ends once the listener
//! returns.
//!
//! # Limits
//!
//! * The watcher sees changes of files, not of the host: a plugin unloaded through the API
//!   while its folder stays is loaded again only after the folder changes.
//! * Symbolic links: a folder that is a link is followed for reading, and replacing the link
//!   is seen, but edits inside the link's target are seen only if the target is itself
//!   under `dir`.
//! * inotify has a per-user watch limit (`fs.inotify.max_user_watches`); one watch per folder
//!   is used. If the kernel's event queue overflows, every folder is looked at again.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::{JoinHandle, ThreadId};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use notify::Watcher as _;
use parking_lot::Mutex;

use crate::deps::discover::{self, is_ignored_name, MANIFEST_NAMES};
use crate::error::{keel_status, Error, Result};
use crate::lifecycle::Handle;
use crate::manifest;
use crate::{bail, err};

/// Settings of a directory watcher.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchConfig {
    /// A plugin folder is looked at once no file event has arrived for it for this long.
    pub debounce: Duration,
    /// Then its manifest, `.sig` and binary must keep size, mtime, ctime and inode across
    /// this interval before the watcher acts.
    pub settle: Duration,
    /// On start, load the folders whose plugin is not loaded yet.
    pub load_existing: bool,
    /// How many outcomes `Host::watch_events` keeps (the oldest are dropped).
    pub history: usize,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            debounce: Duration::from_millis(300),
            settle: Duration::from_millis(200),
            load_existing: true,
            history: 256,
        }
    }
}

/// Longest debounce or settle interval accepted.
pub const MAX_WAIT: Duration = Duration::from_secs(3600);

impl WatchConfig {
    /// `KEEL_ERR_INVALID_ARGUMENT` unless 1 ms ≤ debounce, settle ≤ 1 h and history ≥ 1.
    pub fn validate(&self) -> Result<()> {
        for (what, d) in [("debounce", self.debounce), ("settle", self.settle)] {
            if d < Duration::from_millis(1) || d > MAX_WAIT {
                bail!(
                    KEEL_ERR_INVALID_ARGUMENT,
                    "watch {what} must be between 1 ms and 1 h, not {d:?}"
                );
            }
        }
        if self.history == 0 {
            bail!(KEEL_ERR_INVALID_ARGUMENT, "watch history must keep at least one event");
        }
        Ok(())
    }
}

/// What the watcher did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WatchAction {
    /// Loaded a plugin from a new folder (or tried to).
    Load,
    /// Reloaded a plugin whose files changed (or tried to; on failure it rolled back).
    Reload,
    /// Unloaded a plugin whose manifest went away (or tried to).
    Unload,
    /// A problem of the watch itself (event queue overflow, watch error, directory gone).
    Watch,
}

impl WatchAction {
    /// `"load"`, `"reload"`, `"unload"` or `"watch"`.
    pub fn as_str(self) -> &'static str {
        match self {
            WatchAction::Load => "load",
            WatchAction::Reload => "reload",
            WatchAction::Unload => "unload",
            WatchAction::Watch => "watch",
        }
    }
}

/// One outcome of the watcher.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    /// 1 for the host's first watch event, then counting up (across watcher restarts).
    pub seq: u64,
    /// When it happened.
    pub at: SystemTime,
    /// The plugin folder's name (below the watched directory); "" for watch problems.
    pub folder: String,
    /// The plugin's name, when known ("" when the manifest could not be read).
    pub plugin: String,
    pub action: WatchAction,
    /// `KEEL_OK`, or why the action failed (a failed reload rolled back).
    pub status: keel_status,
    /// The generation serving after the action: the new one after a load or reload, the one
    /// that kept serving after a failed reload, the one unloaded after an unload; 0 if none.
    pub generation: u64,
    /// What happened, for humans ("" never for failures).
    pub message: String,
}

impl WatchEvent {
    /// One line of JSON (no trailing newline): `seq`, `unix_ms`, `folder`, `plugin`,
    /// `action`, `status` (number), `status_name`, `generation`, `message`.
    pub fn to_json_line(&self) -> String {
        let unix_ms = self
            .at
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        serde_json::json!({
            "seq": self.seq,
            "unix_ms": unix_ms,
            "folder": self.folder,
            "plugin": self.plugin,
            "action": self.action.as_str(),
            "status": self.status as u32,
            "status_name": self.status.name(),
            "generation": self.generation,
            "message": self.message,
        })
        .to_string()
    }
}

/// The bounded ring of recent outcomes (kept by the host across watcher restarts).
struct WatchLog {
    inner: Mutex<Ring>,
}

struct Ring {
    events: VecDeque<WatchEvent>,
    capacity: usize,
    last_seq: u64,
}

impl WatchLog {
    fn new() -> WatchLog {
        WatchLog {
            inner: Mutex::new(Ring {
                events: VecDeque::new(),
                capacity: WatchConfig::default().history,
                last_seq: 0,
            }),
        }
    }

    fn set_capacity(&self, capacity: usize) {
        let mut r = self.inner.lock();
        r.capacity = capacity.max(1);
        while r.events.len() > r.capacity {
            r.events.pop_front();
        }
    }

    fn push(&self, mut e: WatchEvent) {
        let mut r = self.inner.lock();
        r.last_seq += 1;
        e.seq = r.last_seq;
        while r.events.len() >= r.capacity {
            r.events.pop_front();
        }
        r.events.push_back(e);
    }

    fn after(&self, seq: u64) -> Vec<WatchEvent> {
        self.inner
            .lock()
            .events
            .iter()
            .filter(|e| e.seq > seq)
            .cloned()
            .collect()
    }
}

/// The host's watcher slot: at most one running watcher, and the outcome ring.
pub(crate) struct WatchControl {
    running: Mutex<Option<Watcher>>,
    log: Arc<WatchLog>,
}

impl WatchControl {
    pub(crate) fn new() -> WatchControl {
        WatchControl {
            running: Mutex::new(None),
            log: Arc::new(WatchLog::new()),
        }
    }

    /// Start watching `dir` (see the module documentation).
    pub(crate) fn start(&self, lifecycle: Handle, dir: &Path, config: WatchConfig) -> Result<()> {
        config.validate()?;
        // The same checks (and codes) as load_dir: missing → FILE_NOT_FOUND, not a directory
        // → INVALID_ARGUMENT.
        discover::discover(dir)?;
        let dir = std::fs::canonicalize(dir).map_err(|e| Error::io(dir, &e))?;
        let mut running = self.running.lock();
        if let Some(w) = running.as_ref() {
            bail!(
                KEEL_ERR_BUSY,
                "already watching {}; stop watching before watching {}",
                w.dir.display(),
                dir.display()
            );
        }
        self.log.set_capacity(config.history);
        *running = Some(Watcher::start(lifecycle, dir, config, self.log.clone())?);
        Ok(())
    }

    /// Stop the watcher, if one runs, and wait for its thread. Returns whether one ran.
    pub(crate) fn stop(&self) -> bool {
        // Taken out first: the join happens without the slot's lock held.
        let w = self.running.lock().take();
        let was = w.is_some();
        drop(w);
        was
    }

    /// The directory being watched (canonical path), if a watcher runs.
    pub(crate) fn dir(&self) -> Option<PathBuf> {
        self.running.lock().as_ref().map(|w| w.dir.clone())
    }

    /// Outcomes with a sequence number above `seq`, oldest first.
    pub(crate) fn events_after(&self, seq: u64) -> Vec<WatchEvent> {
        self.log.after(seq)
    }
}

enum Msg {
    Fs(notify::Result<notify::Event>),
    Stop,
}

/// A running watcher; dropping it stops and joins its thread.
struct Watcher {
    dir: PathBuf,
    tx: Sender<Msg>,
    stopping: Arc<AtomicBool>,
    fs: Option<notify::RecommendedWatcher>,
    thread: Option<JoinHandle<()>>,
    thread_id: ThreadId,
}

fn notify_error(dir: &Path, e: notify::Error) -> Error {
    let status = match &e.kind {
        notify::ErrorKind::PathNotFound => keel_status::KEEL_ERR_FILE_NOT_FOUND,
        notify::ErrorKind::InvalidConfig(_) => keel_status::KEEL_ERR_INVALID_ARGUMENT,
        _ => keel_status::KEEL_ERR_IO,
    };
    let hint = if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) {
        " (raise fs.inotify.max_user_watches)"
    } else {
        ""
    };
    Error::new(status, format!("watching {}: {e}{hint}", dir.display()))
}

impl Watcher {
    fn start(lifecycle: Handle, dir: PathBuf, config: WatchConfig, log: Arc<WatchLog>) -> Result<Watcher> {
        let (tx, rx) = channel();
        let fs_tx = tx.clone();
        // The file system watch starts before the thread's first scan, so nothing that
        // changes in between is missed.
        let mut fs = notify::recommended_watcher(move |ev| {
            // The loop may be gone (stopping): nothing to deliver to.
            let _ = fs_tx.send(Msg::Fs(ev));
        })
        .map_err(|e| notify_error(&dir, e))?;
        fs.watch(&dir, notify::RecursiveMode::Recursive)
            .map_err(|e| notify_error(&dir, e))?;
        let stopping = Arc::new(AtomicBool::new(false));
        let state = WatchLoop::new(lifecycle, dir.clone(), config, log, stopping.clone());
        let thread = std::thread::Builder::new()
            .name("keel-watch".into())
            .spawn(move || state.run(rx))
            .map_err(|e| err!(KEEL_ERR_INTERNAL, "cannot start the watch thread: {e}"))?;
        let thread_id = thread.thread().id();
        Ok(Watcher {
            dir,
            tx,
            stopping,
            fs: Some(fs),
            thread: Some(thread),
            thread_id,
        })
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // No more file events; notify's own thread ends on its shutdown message. Its drop
        // unwraps a channel send; keep a panic there from unwinding out of a stop.
        if let Some(fs) = self.fs.take() {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(fs)));
        }
        let _ = self.tx.send(Msg::Stop);
        if let Some(t) = self.thread.take() {
            if std::thread::current().id() != self.thread_id {
                let _ = t.join();
            }
            // Else: stopped from a listener running on the watcher thread itself; it sees
            // `stopping` and ends as soon as the listener returns.
        }
    }
}

/// Size, times and identity of one file (`None` in [`Fingerprint`]: absent).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    ino: u64,
    dev: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Some(Stamp {
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
            ino: m.ino(),
            dev: m.dev(),
        })
    }
    #[cfg(not(unix))]
    {
        let t = |t: std::io::Result<SystemTime>| {
            t.ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| (d.as_secs() as i64, i64::from(d.subsec_nanos())))
                .unwrap_or((0, 0))
        };
        Some(Stamp {
            len: m.len(),
            mtime: t(m.modified()),
            ctime: t(m.created()),
            ino: 0,
            dev: 0,
        })
    }
}

/// The relevant files of a plugin folder and their stamps.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Fingerprint(Vec<(PathBuf, Option<Stamp>)>);

/// The plugin folder (first component below `dir`) a path belongs to, unless a component
/// of the path below `dir` is an ignored name.
fn folder_of(dir: &Path, path: &Path) -> Option<String> {
    let rel = path.strip_prefix(dir).ok()?;
    let mut folder = None;
    for c in rel.components() {
        let Component::Normal(s) = c else {
            return None;
        };
        let s = s.to_str()?;
        if is_ignored_name(s) {
            return None;
        }
        folder.get_or_insert_with(|| s.to_string());
    }
    folder
}

/// A folder waiting for its quiet period.
struct Pending {
    last_event: Instant,
    /// Stamps taken when the quiet period ended, and when.
    settling: Option<(Fingerprint, Instant)>,
}

/// What the watcher knows about one plugin folder.
#[derive(Default)]
struct Folder {
    /// The relevant files when the watcher last acted on (or adopted) this folder.
    applied: Option<Fingerprint>,
    /// The plugin last seen loaded from this folder, with the manifest path the host has for
    /// it (to unload it once the folder is gone and no longer resolves).
    owner: Option<(String, PathBuf)>,
    /// The last refusal that may be cured by another plugin (a retry refused for the same
    /// reason is not reported again).
    blocked: Option<(WatchAction, keel_status, String)>,
}

/// The result of one attempt, before it is recorded.
struct Outcome {
    folder: String,
    plugin: String,
    action: WatchAction,
    status: keel_status,
    generation: u64,
    message: String,
}

impl Outcome {
    fn progress(&self) -> bool {
        // A drain timeout comes after the swap or removal: the change happened.
        self.action != WatchAction::Watch
            && matches!(self.status, keel_status::KEEL_OK | keel_status::KEEL_ERR_DRAIN_TIMEOUT)
    }

    /// A refusal another plugin's load, reload or unload may cure.
    fn blocked(&self) -> bool {
        matches!(
            self.status,
            keel_status::KEEL_ERR_DEPENDENCY_MISSING
                | keel_status::KEEL_ERR_DEPENDENCY_VERSION
                | keel_status::KEEL_ERR_HAS_DEPENDENTS
                | keel_status::KEEL_ERR_ALREADY_LOADED
        )
    }
}

struct WatchLoop {
    /// The watcher's only way to the plugins: list their sources, load, reload, unload.
    lifecycle: Handle,
    dir: PathBuf,
    config: WatchConfig,
    log: Arc<WatchLog>,
    stopping: Arc<AtomicBool>,
    pending: BTreeMap<String, Pending>,
    folders: HashMap<String, Folder>,
    /// Folders whose last attempt was refused for a reason another plugin may cure.
    blocked: BTreeSet<String>,
    dir_gone_reported: bool,
}

impl WatchLoop {
    fn new(
        lifecycle: Handle,
        dir: PathBuf,
        config: WatchConfig,
        log: Arc<WatchLog>,
        stopping: Arc<AtomicBool>,
    ) -> WatchLoop {
        WatchLoop {
            lifecycle,
            dir,
            config,
            log,
            stopping,
            pending: BTreeMap::new(),
            folders: HashMap::new(),
            blocked: BTreeSet::new(),
            dir_gone_reported: false,
        }
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    fn run(mut self, rx: Receiver<Msg>) {
        self.initial_scan();
        loop {
            self.step();
            if self.stopping() {
                return;
            }
            let next = self.pending.values().map(|p| self.deadline(p)).min();
            let msg = match next {
                Some(d) => rx.recv_timeout(d.saturating_duration_since(Instant::now())),
                None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match msg {
                Ok(Msg::Fs(ev)) => self.on_fs(ev),
                Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => {}
            }
            // Take everything already queued before looking at deadlines.
            loop {
                match rx.try_recv() {
                    Ok(Msg::Fs(ev)) => self.on_fs(ev),
                    Ok(Msg::Stop) => return,
                    Err(_) => break,
                }
            }
        }
    }

    fn deadline(&self, p: &Pending) -> Instant {
        match &p.settling {
            Some((_, at)) => *at + self.config.settle,
            None => p.last_event + self.config.debounce,
        }
    }

    /// The non-ignored entries directly in the watched directory.
    fn folder_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        if let Ok(rd) = std::fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                if let Ok(n) = e.file_name().into_string() {
                    if !is_ignored_name(&n) {
                        names.push(n);
                    }
                }
            }
        }
        names.sort();
        names
    }

    /// Adopt what is loaded; queue what is not (with `load_existing`).
    fn initial_scan(&mut self) {
        let now = Instant::now();
        for name in self.folder_names() {
            let fp = self.fingerprint(&name);
            let owner = self.owner_of(&name);
            let adopt = owner.is_some() || !self.config.load_existing;
            let f = self.folders.entry(name.clone()).or_default();
            f.owner = owner;
            if adopt {
                f.applied = Some(fp);
            } else {
                // Straight to the settle check.
                self.pending.insert(
                    name,
                    Pending {
                        last_event: now,
                        settling: Some((fp, now)),
                    },
                );
            }
        }
    }

    fn touch(&mut self, folder: String) {
        let now = Instant::now();
        self.pending.insert(
            folder,
            Pending {
                last_event: now,
                settling: None,
            },
        );
    }

    fn on_fs(&mut self, ev: notify::Result<notify::Event>) {
        use notify::event::{AccessKind, AccessMode, EventKind};
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                let e = notify_error(&self.dir, e);
                self.record(Outcome {
                    folder: String::new(),
                    plugin: String::new(),
                    action: WatchAction::Watch,
                    status: e.status(),
                    generation: 0,
                    message: e.message().to_string(),
                });
                return;
            }
        };
        if ev.need_rescan() {
            self.record(Outcome {
                folder: String::new(),
                plugin: String::new(),
                action: WatchAction::Watch,
                status: keel_status::KEEL_OK,
                generation: 0,
                message: "file events were lost (event queue overflow); looking at every folder again".into(),
            });
            let mut all: BTreeSet<String> = self.folder_names().into_iter().collect();
            all.extend(self.folders.keys().cloned());
            for f in all {
                self.touch(f);
            }
            return;
        }
        match ev.kind {
            // Opening and reading (ours included: fingerprints, loads) change nothing.
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => {}
            EventKind::Access(_) => return,
            _ => {}
        }
        for p in &ev.paths {
            if p == &self.dir {
                if matches!(ev.kind, EventKind::Remove(_)) && !self.dir_gone_reported {
                    self.dir_gone_reported = true;
                    self.record(Outcome {
                        folder: String::new(),
                        plugin: String::new(),
                        action: WatchAction::Watch,
                        status: keel_status::KEEL_ERR_FILE_NOT_FOUND,
                        generation: 0,
                        message: format!(
                            "the watched directory {} was removed; nothing more will be seen (stop and watch again)",
                            self.dir.display()
                        ),
                    });
                }
                continue;
            }
            if let Some(f) = folder_of(&self.dir, p) {
                self.touch(f);
            }
        }
    }

    /// Move folders whose quiet period ended to the settle check, and act on those that
    /// settled.
    fn step(&mut self) {
        let now = Instant::now();
        let due: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, p)| self.deadline(p) <= now)
            .map(|(f, _)| f.clone())
            .collect();
        let mut ready = Vec::new();
        for f in due {
            let fp = self.fingerprint(&f);
            let Some(p) = self.pending.get_mut(&f) else {
                continue;
            };
            match p.settling.take() {
                Some((before, _)) if before == fp => {
                    self.pending.remove(&f);
                    ready.push(f);
                }
                _ => p.settling = Some((fp, Instant::now())),
            }
        }
        if !ready.is_empty() {
            self.apply(ready);
        }
    }

    /// Act on settled folders; retry cured refusals while something changes.
    fn apply(&mut self, ready: Vec<String>) {
        let mut todo: Vec<(String, bool)> = ready.into_iter().map(|f| (f, false)).collect();
        // The last refusal per folder, and whether it came from a retry (files unchanged).
        let mut refused: BTreeMap<String, (Outcome, bool)> = BTreeMap::new();
        loop {
            let mut progress = false;
            for (f, force) in std::mem::take(&mut todo) {
                if self.stopping() {
                    return;
                }
                let outcomes = self.evaluate(&f, force);
                // Still refused only if this attempt was refused again. An attempt that did
                // nothing because the files did not change (not forced) says nothing new.
                if !outcomes.iter().any(Outcome::blocked) && (force || !outcomes.is_empty()) {
                    self.blocked.remove(&f);
                    refused.remove(&f);
                    if let Some(st) = self.folders.get_mut(&f) {
                        st.blocked = None;
                    }
                }
                for o in outcomes {
                    if o.blocked() {
                        self.blocked.insert(f.clone());
                        refused.insert(f.clone(), (o, force));
                    } else {
                        progress |= o.progress();
                        self.record(o);
                    }
                }
            }
            if !progress {
                break;
            }
            // Something changed: try the refused folders again (not those still settling).
            todo = self
                .blocked
                .iter()
                .filter(|f| !self.pending.contains_key(*f))
                .map(|f| (f.clone(), true))
                .collect();
            if todo.is_empty() {
                break;
            }
        }
        for (f, (o, retry)) in refused {
            if !self.blocked.contains(&f) {
                continue;
            }
            let key = (o.action, o.status, o.message.clone());
            let st = self.folders.entry(f).or_default();
            // A retry refused for the same reason as last time is not news.
            if !retry || st.blocked.as_ref() != Some(&key) {
                st.blocked = Some(key);
                self.record(o);
            }
        }
    }

    fn record(&self, o: Outcome) {
        self.log.push(WatchEvent {
            seq: 0,
            at: SystemTime::now(),
            folder: o.folder,
            plugin: o.plugin,
            action: o.action,
            status: o.status,
            generation: o.generation,
            message: o.message,
        });
    }

    /// The manifest [`discover`] picks for a folder, if any.
    fn manifest_of(&self, folder: &str) -> Option<PathBuf> {
        let path = self.dir.join(folder);
        discover::discover(&self.dir)
            .ok()?
            .manifests
            .into_iter()
            .find(|m| m.parent() == Some(path.as_path()))
    }

    fn fingerprint(&self, folder: &str) -> Fingerprint {
        let path = self.dir.join(folder);
        let mut files = Vec::with_capacity(MANIFEST_NAMES.len() * 2 + 1);
        for name in MANIFEST_NAMES {
            let m = path.join(name);
            files.push(crate::trust::signature_path(&m));
            files.push(m);
        }
        if let Some(m) = self.manifest_of(folder) {
            if let Ok(f) = manifest::read_file(&m) {
                if let Ok(b) = f.manifest.binary_for_platform(&path) {
                    files.push(b.path);
                }
            }
        }
        Fingerprint(files.into_iter().map(|p| (p.clone(), stamp(&p))).collect())
    }

    /// The loaded plugin whose manifest is in `folder`, with the path the host has for it.
    fn owner_of(&mut self, folder: &str) -> Option<(String, PathBuf)> {
        let path = self.dir.join(folder);
        let canonical = std::fs::canonicalize(&path).ok();
        let sources = self.lifecycle.manifest_paths();
        for (name, src) in &sources {
            let Some(parent) = src.parent() else {
                continue;
            };
            let same = parent == path
                || (canonical.is_some() && std::fs::canonicalize(parent).ok().as_ref() == canonical.as_ref());
            if same {
                return Some((name.clone(), src.clone()));
            }
        }
        // The folder may be gone: the plugin last seen loaded from it, if still loaded from
        // the same manifest path.
        let cached = self.folders.get(folder)?.owner.clone()?;
        sources
            .iter()
            .any(|(n, s)| *n == cached.0 && *s == cached.1)
            .then_some(cached)
    }

    fn same_file(a: &Path, b: &Path) -> bool {
        a == b
            || matches!(
                (std::fs::canonicalize(a), std::fs::canonicalize(b)),
                (Ok(x), Ok(y)) if x == y
            )
    }

    /// Decide and act on one settled folder. `force`: act even if its files are as when
    /// the watcher last acted (retrying a refusal another plugin may have cured).
    fn evaluate(&mut self, folder: &str, force: bool) -> Vec<Outcome> {
        let fp = self.fingerprint(folder);
        let owner = self.owner_of(folder);
        let st = self.folders.entry(folder.to_string()).or_default();
        st.owner = owner.clone();
        if !force && st.applied.as_ref() == Some(&fp) {
            return Vec::new();
        }
        st.applied = Some(fp);
        let manifest = self.manifest_of(folder);
        let mut out = Vec::new();
        match (manifest, owner) {
            (None, None) => {}
            (None, Some((name, _))) => out.push(self.unload(folder, &name)),
            (Some(m), Some((name, src))) if Self::same_file(&m, &src) => out.push(self.reload(folder, &name)),
            (Some(m), Some((name, _))) => {
                // Another manifest file now (keel.json added next to plugin.json, or removed
                // from beside it): the plugin from the old one goes, the new one comes.
                let o = self.unload(folder, &name);
                let gone = o.progress();
                out.push(o);
                if gone {
                    out.push(self.load(folder, &m));
                }
            }
            (Some(m), None) => out.push(self.load(folder, &m)),
        }
        out
    }

    fn load(&mut self, folder: &str, manifest_path: &Path) -> Outcome {
        let mut o = Outcome {
            folder: folder.to_string(),
            plugin: String::new(),
            action: WatchAction::Load,
            status: keel_status::KEEL_OK,
            generation: 0,
            message: String::new(),
        };
        let file = match manifest::read_file(manifest_path) {
            Ok(f) => f,
            Err(e) => {
                o.status = e.status();
                o.message = format!("{}; tried again after the next change", e.message());
                return o;
            }
        };
        o.plugin = file.manifest.name.clone();
        // The load path of load_dir for this one folder (load_set of its manifest).
        match self.lifecycle.load_manifests(vec![file]) {
            Ok(slots) => {
                o.generation = slots.first().and_then(|s| s.current()).map_or(0, |g| g.number);
                o.message = format!("loaded from {}", manifest_path.display());
                if let Some(src) = self.lifecycle.manifest_path(&o.plugin) {
                    self.folders.entry(folder.to_string()).or_default().owner = Some((o.plugin.clone(), src));
                }
            }
            Err(e) => {
                o.status = e.status();
                o.message = e.message().to_string();
            }
        }
        o
    }

    fn reload(&mut self, folder: &str, name: &str) -> Outcome {
        let mut o = Outcome {
            folder: folder.to_string(),
            plugin: name.to_string(),
            action: WatchAction::Reload,
            status: keel_status::KEEL_OK,
            generation: 0,
            message: String::new(),
        };
        match self.lifecycle.reload(name) {
            Ok(g) => {
                o.generation = g;
                o.message = format!("generation {g} serving");
            }
            Err(e) => {
                o.status = e.status();
                o.message = e.message().to_string();
                o.generation = self
                    .lifecycle
                    .get(name)
                    .ok()
                    .and_then(|s| s.current())
                    .map_or(0, |g| g.number);
            }
        }
        o
    }

    fn unload(&mut self, folder: &str, name: &str) -> Outcome {
        let generation = self
            .lifecycle
            .get(name)
            .ok()
            .and_then(|s| s.current())
            .map_or(0, |g| g.number);
        let mut o = Outcome {
            folder: folder.to_string(),
            plugin: name.to_string(),
            action: WatchAction::Unload,
            status: keel_status::KEEL_OK,
            generation,
            message: "manifest removed; unloaded".into(),
        };
        match self.lifecycle.unload(name) {
            Ok(()) => {}
            Err(e) => {
                o.status = e.status();
                o.message = if e.status() == keel_status::KEEL_ERR_HAS_DEPENDENTS {
                    format!("manifest removed, but the plugin stays loaded: {}", e.message())
                } else {
                    e.message().to_string()
                };
            }
        }
        if o.progress() {
            if let Some(st) = self.folders.get_mut(folder) {
                st.owner = None;
            }
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_bounds() {
        assert!(WatchConfig::default().validate().is_ok());
        for c in [
            WatchConfig {
                debounce: Duration::ZERO,
                ..Default::default()
            },
            WatchConfig {
                settle: Duration::from_micros(10),
                ..Default::default()
            },
            WatchConfig {
                debounce: MAX_WAIT + Duration::from_secs(1),
                ..Default::default()
            },
            WatchConfig {
                history: 0,
                ..Default::default()
            },
        ] {
            assert_eq!(
                c.validate().unwrap_err().status(),
                keel_status::KEEL_ERR_INVALID_ARGUMENT,
                "{c:?}"
            );
        }
    }

    fn event(n: u32) -> WatchEvent {
        WatchEvent {
            seq: 0,
            at: SystemTime::now(),
            folder: format!("f{n}"),
            plugin: format!("p{n}"),
            action: WatchAction::Load,
            status: keel_status::KEEL_OK,
            generation: 1,
            message: String::new(),
        }
    }

    #[test]
    fn ring_is_bounded_and_numbered() {
        let log = WatchLog::new();
        log.set_capacity(3);
        for n in 0..5 {
            log.push(event(n));
        }
        let all = log.after(0);
        assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 4, 5]);
        assert_eq!(all[0].folder, "f2");
        assert_eq!(log.after(4).len(), 1);
        log.set_capacity(1);
        assert_eq!(log.after(0).iter().map(|e| e.seq).collect::<Vec<_>>(), [5]);
    }

    #[test]
    fn json_line() {
        let mut e = event(1);
        e.status = keel_status::KEEL_ERR_DIGEST_MISMATCH;
        e.action = WatchAction::Reload;
        e.message = "line\nbreak \"quoted\"".into();
        let line = e.to_json_line();
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["action"], "reload");
        assert_eq!(v["status"], 400);
        assert_eq!(v["status_name"], "KEEL_ERR_DIGEST_MISMATCH");
        assert_eq!(v["message"], "line\nbreak \"quoted\"");
        assert_eq!(v["plugin"], "p1");
    }

    #[test]
    fn paths_map_to_folders_and_ignored_names_to_none() {
        let f = |p: &str| folder_of(Path::new("/plugins"), Path::new(p));
        assert_eq!(f("/plugins/echo/keel.json").as_deref(), Some("echo"));
        assert_eq!(f("/plugins/echo/lib/libecho.so").as_deref(), Some("echo"));
        assert_eq!(f("/plugins/echo").as_deref(), Some("echo"));
        assert_eq!(f("/plugins/echo/.keel.json.swp"), None);
        assert_eq!(f("/plugins/echo/keel.json~"), None);
        assert_eq!(f("/plugins/echo/keel.json.tmp"), None);
        assert_eq!(f("/plugins/echo.part/keel.json"), None);
        assert_eq!(f("/plugins/.git/config"), None);
        assert_eq!(f("/plugins"), None);
        assert_eq!(f("/elsewhere/echo/keel.json"), None);
    }
}
