//! C ABI: process isolation of native plugins (docs/isolation.md).

use std::ffi::c_char;
use std::path::PathBuf;

use super::host::keel_host;
use super::{arg_str, borrow, boundary};
use crate::error::keel_status;

/// Require process isolation for every native plugin loaded from now on (`required`), and/or
/// name the sandbox launcher `launcher` (the `keel-sandbox` executable installed with Keel;
/// NULL keeps the one set before, else Keel searches `$KEEL_SANDBOX_LAUNCHER`, then next to
/// the library). An isolated plugin is the same binary behind the same vtable and the same
/// `keel_call`, served from a sandbox process (seccomp allowlist, rlimits, no file system or
/// network); a plugin that crashes, exits, hangs past its deadline or makes a refused system
/// call fails the calls in flight with its own code and the server keeps serving.
///
/// A manifest's `"isolation": "process"` isolates its plugin whether or not this is required;
/// a manifest can never downgrade the requirement. ThemisDB C++ plugins cannot be isolated:
/// loading one while isolation is required fails with `KEEL_ERR_ISOLATION_UNSUPPORTED`.
/// Turning the requirement off after the host's first load fails with
/// `KEEL_ERR_POLICY_DOWNGRADE` (nothing changes). Plugins already loaded keep running where
/// they run. `launcher` is borrowed for the call (the path is checked when a sandbox starts:
/// `KEEL_ERR_SANDBOX_START` if it cannot be run).
///
/// Thread-safe.
///
/// Errors: `KEEL_ERR_NULL_POINTER` (`host`), `KEEL_ERR_INVALID_UTF8` (`launcher`),
/// `KEEL_ERR_INVALID_ARGUMENT` (empty `launcher`), `KEEL_ERR_POLICY_DOWNGRADE`.
#[no_mangle]
pub extern "C" fn keel_host_set_native_isolation(
    host: *const keel_host,
    required: bool,
    launcher: *const c_char,
) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract.
        let h = unsafe { borrow(host, "host") }?;
        let launcher = if launcher.is_null() {
            None
        } else {
            // SAFETY: caller contract: a NUL-terminated string.
            let s = unsafe { arg_str(launcher, "launcher") }?;
            if s.is_empty() {
                crate::bail!(
                    KEEL_ERR_INVALID_ARGUMENT,
                    "launcher is empty (pass NULL for the default)"
                );
            }
            Some(PathBuf::from(s))
        };
        h.set_native_isolation(required, launcher)
    })
}

/// Require process isolation for the native plugins loaded from now on whose name matches the
/// glob `pattern` (`*`, `?`, `[...]`; e.g. `"untrusted-*"`), in addition to those whose
/// manifest asks for it and to `keel_host_set_native_isolation`'s requirement for all.
/// Patterns add up and are never removed (a policy that only strengthens); the same pattern
/// twice is one. `pattern` is borrowed for the call. The launcher is the one set with
/// `keel_host_set_native_isolation` (or found as described there).
///
/// Thread-safe.
///
/// Errors: `KEEL_ERR_NULL_POINTER`, `KEEL_ERR_INVALID_UTF8`, `KEEL_ERR_INVALID_ARGUMENT` (a
/// pattern that does not parse).
#[no_mangle]
pub extern "C" fn keel_host_require_isolation_for(host: *const keel_host, pattern: *const c_char) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract.
        let h = unsafe { borrow(host, "host") }?;
        // SAFETY: caller contract: a NUL-terminated string.
        let pattern = unsafe { arg_str(pattern, "pattern") }?;
        h.require_isolation_for(pattern)
    })
}

/// Require process isolation for the native plugins loaded from now on whose manifest carries a
/// valid signature by the trusted key `key_id` (64 hex digits, any case: the key id the trust
/// store and `keel trust` show, the SHA-256 of the Ed25519 public key), in addition to the
/// other requirements. The key need not be in the trust store yet. Keys add up and are never
/// removed (a policy that only strengthens); the same key twice is one. Unsigned and hash-only
/// plugins are not affected by it (use `keel_host_set_native_isolation` to isolate them). The
/// signer is the one whose signature was verified at load (and again at each reload).
/// `key_id` is borrowed for the call.
///
/// Thread-safe.
///
/// Errors: `KEEL_ERR_NULL_POINTER`, `KEEL_ERR_INVALID_UTF8`, `KEEL_ERR_INVALID_ARGUMENT` (not
/// 64 hex digits).
#[no_mangle]
pub extern "C" fn keel_host_require_isolation_for_key(host: *const keel_host, key_id: *const c_char) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract.
        let h = unsafe { borrow(host, "host") }?;
        // SAFETY: caller contract: a NUL-terminated string.
        let key_id = unsafe { arg_str(key_id, "key_id") }?;
        h.require_isolation_for_key(key_id)
    })
}

/// Limit the CPU of every sandbox started from now on to `percent` of one CPU (e.g. 50: half
/// a CPU; 200: two CPUs; 0: no limit, the default), through the sandbox's cgroup (CFS quota)
/// where the host can create one (docs/isolation.md, "Limits"); a sandbox without a cgroup has
/// only its `RLIMIT_CPU`. Sandboxes already running keep their limit.
///
/// Thread-safe.
///
/// Errors: `KEEL_ERR_NULL_POINTER`, `KEEL_ERR_INVALID_ARGUMENT` (`percent` above 10000).
#[no_mangle]
pub extern "C" fn keel_host_set_sandbox_cpu_percent(host: *const keel_host, percent: u32) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract.
        let h = unsafe { borrow(host, "host") }?;
        h.set_sandbox_cpu_percent(percent)
    })
}
