//! C ABI: the plugin-directory watcher (hot plug).

use std::ffi::c_char;
use std::path::Path;
use std::time::Duration;

use super::host::{keel_buffer, keel_host};
use super::{arg_str, borrow, boundary, fill_buffer};
use crate::error::keel_status;
use crate::watch::WatchConfig;

/// Watch a plugin directory and load, reload and unload plugins as their folders change.
///
/// `dir` (borrowed for the call) has the layout of `keel_host_load_dir`: one folder per
/// plugin with `keel.json` or `plugin.json`. The watch is recursive, so edits of
/// `<dir>/<plugin>/keel.json`, its `.sig` and the binary are seen; hidden, temporary and
/// partial names (`.x`, `x~`, `x.tmp`, `x.part`, `x.swp`, `x.download`) are ignored. A
/// folder is acted on once no event has arrived for it for `debounce_ms` and its manifest,
/// `.sig` and binary then keep their size and times for a further 200 ms, so a file still
/// being written is never loaded. Then:
/// - a new folder with a manifest is loaded (as by `keel_host_load_dir` for that folder);
/// - a changed manifest, `.sig` or binary of a plugin loaded from the folder is reloaded (as
///   by `keel_host_reload`: verified first; on failure the old generation keeps serving);
/// - a removed manifest unloads its plugin, unless others depend on it (then it stays loaded
///   and `KEEL_ERR_HAS_DEPENDENTS` is reported).
///
/// A loaded plugin is never replaced by a rescan. Plugins already loaded from `dir` are
/// adopted, not reloaded; folders whose plugin is not loaded are loaded at once. Each
/// outcome is recorded (see `keel_host_watch_events`); lifecycle listeners fire as usual,
/// on the watcher's thread.
///
/// The watcher's thread belongs to the host; it is stopped by `keel_host_stop_watching` or
/// `keel_host_free`. Calls never wait for it. Thread-safe.
///
/// Errors: `KEEL_ERR_NULL_POINTER`, `KEEL_ERR_INVALID_UTF8`, `KEEL_ERR_BUSY` (the host already
/// watches a directory; stop it first), `KEEL_ERR_FILE_NOT_FOUND` (`dir` does not exist),
/// `KEEL_ERR_INVALID_ARGUMENT` (not a directory, or `debounce_ms` is 0 or above 3600000),
/// `KEEL_ERR_IO` (the watch cannot be set up, e.g. the inotify watch limit).
#[no_mangle]
pub extern "C" fn keel_host_watch_dir(host: *const keel_host, dir: *const c_char, debounce_ms: u64) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract for every pointer argument.
        let h = unsafe { borrow(host, "host") }?;
        // SAFETY: caller contract.
        let dir = unsafe { arg_str(dir, "dir") }?;
        let config = WatchConfig {
            debounce: Duration::from_millis(debounce_ms),
            ..WatchConfig::default()
        };
        h.watch_dir(Path::new(dir), config)
    })
}

/// Stop the host's directory watcher and wait for its thread. Prompt: an action already
/// under way (a reload waiting for in-flight calls to drain) completes, nothing else is
/// waited for. Not watching: `KEEL_OK` (idempotent). Plugins stay loaded; the recorded
/// outcomes are kept. May be called from a lifecycle listener running on the watcher's
/// thread (the thread then ends when the listener returns). Thread-safe.
///
/// Errors: `KEEL_ERR_NULL_POINTER`.
#[no_mangle]
pub extern "C" fn keel_host_stop_watching(host: *const keel_host) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract.
        let h = unsafe { borrow(host, "host") }?;
        h.stop_watching();
        Ok(())
    })
}

/// Write the watcher's recent outcomes with a sequence number above `after_seq` (0: all
/// kept) into `out` (an output buffer), as JSON lines, oldest first, each ending in
/// `\n`:
///
/// `{"seq":3,"unix_ms":1700000000000,"folder":"echo","plugin":"echo","action":"reload",
///   "status":400,"status_name":"KEEL_ERR_DIGEST_MISMATCH","generation":1,"message":"..."}`
///
/// `action` is `load`, `reload`, `unload` or `watch` (a problem of the watch itself);
/// `status` is a `keel_status` (0: done); `generation` is the generation serving after the
/// action (after a failed reload: the old one, still serving). Sequence numbers count up
/// for the life of the host; the host keeps the last 256 outcomes. No outcomes: `out` is
/// emptied. Thread-safe (for distinct buffers).
///
/// Errors: `KEEL_ERR_NULL_POINTER`.
#[no_mangle]
pub extern "C" fn keel_host_watch_events(host: *const keel_host, after_seq: u64, out: *mut keel_buffer) -> keel_status {
    fill_buffer(out, |out| {
        // SAFETY: caller contract.
        let h = unsafe { borrow(host, "host") }?;
        out.clear();
        for e in h.watch_events_after(after_seq) {
            out.extend_from_slice(e.to_json_line().as_bytes());
            out.push(b'\n');
        }
        Ok(())
    })
}
