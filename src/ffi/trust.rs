//! C ABI: trust store, signature policy, verification without loading.

use std::ffi::c_char;
use std::path::Path;

use super::host::keel_host;
use super::{arg_bytes, arg_str, borrow, boundary};
use crate::error::keel_status;

/// Replace the host's trust store with the JSON file at `path` (format: see docs/trust.md).
///
/// `path` is borrowed for the call; the file is read once, completely, during the call (later
/// edits to it have no effect until this is called again). On failure the store in use is
/// unchanged: `KEEL_ERR_TRUST_STORE_MALFORMED` if the document does not validate,
/// `KEEL_ERR_TRUST_STORE_ROLLBACK` if its `version` is lower than the store in use (or equal
/// with different content), `KEEL_ERR_FILE_NOT_FOUND` / `KEEL_ERR_IO` if it cannot be read.
/// Loading the same content again succeeds and changes nothing.
///
/// Thread-safe: verifications running concurrently see either the old or the new store,
/// never a mix.
///
/// Errors: `KEEL_ERR_NULL_POINTER`, `KEEL_ERR_INVALID_UTF8`, `KEEL_ERR_FILE_NOT_FOUND`,
/// `KEEL_ERR_IO`, `KEEL_ERR_SYMLINK_REFUSED`, `KEEL_ERR_FILE_TOO_LARGE`,
/// `KEEL_ERR_TRUST_STORE_MALFORMED`, `KEEL_ERR_TRUST_STORE_ROLLBACK`.
#[no_mangle]
pub extern "C" fn keel_host_set_trust_store_file(host: *const keel_host, path: *const c_char) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract for every pointer argument.
        let h = unsafe { borrow(host, "host") }?;
        // SAFETY: caller contract.
        let path = unsafe { arg_str(path, "path") }?;
        h.trust().set_trust_store_path(Path::new(path))?;
        Ok(())
    })
}

/// Replace the host's trust store with a JSON document held in memory.
///
/// `data` points to `len` bytes borrowed for the call (copied as needed; the caller keeps
/// ownership). Thread-safety as for `keel_host_set_trust_store_file`.
///
/// Errors: `KEEL_ERR_NULL_POINTER` (`host`, or `data` while `len` is non-zero),
/// `KEEL_ERR_TRUST_STORE_MALFORMED`, `KEEL_ERR_TRUST_STORE_ROLLBACK`.
#[no_mangle]
pub extern "C" fn keel_host_set_trust_store_bytes(host: *const keel_host, data: *const u8, len: usize) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract for every pointer argument.
        let h = unsafe { borrow(host, "host") }?;
        // SAFETY: caller contract.
        let bytes = unsafe { arg_bytes(data, len, "data") }?;
        h.trust().set_trust_store_bytes(bytes)?;
        Ok(())
    })
}

/// Set whether plugins must carry a valid signature by a trusted key (default: true).
///
/// Turning the requirement on always succeeds. Turning it off succeeds only before the host
/// has started (its first load); afterwards it fails with `KEEL_ERR_POLICY_DOWNGRADE` and
/// the policy stays on. Allowing unsigned plugins never skips the manifest, binary digest or
/// ABI checks, and a signature that is present must still verify.
///
/// Thread-safe.
///
/// Errors: `KEEL_ERR_NULL_POINTER`, `KEEL_ERR_POLICY_DOWNGRADE` (turning it off after the
/// first load).
#[no_mangle]
pub extern "C" fn keel_host_set_require_signature(host: *const keel_host, require: bool) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract.
        let h = unsafe { borrow(host, "host") }?;
        h.trust().set_require_signature(require)?;
        Ok(())
    })
}

/// Set whether binaries whose manifest pins no SHA-256 (a ThemisDB `plugin.json` without
/// `expected_hash`) may be loaded (default: false; such a load fails with
/// `KEEL_ERR_UNPINNED_BINARY`).
///
/// Turning it off always succeeds. Turning it on succeeds only before the host has started
/// (its first load); afterwards it fails with `KEEL_ERR_POLICY_DOWNGRADE` and the policy
/// stays off. Every unpinned load it allows is logged through the host's log sink with the
/// SHA-256 of the bytes loaded, which the plugin's generation records. Allowing unpinned
/// binaries skips no other check (manifest, signature policy, ABI).
///
/// Thread-safe.
///
/// Errors: `KEEL_ERR_NULL_POINTER`, `KEEL_ERR_POLICY_DOWNGRADE` (turning it on after the
/// first load).
#[no_mangle]
pub extern "C" fn keel_host_set_allow_unpinned(host: *const keel_host, allow: bool) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract.
        let h = unsafe { borrow(host, "host") }?;
        h.trust().set_allow_unpinned(allow)?;
        Ok(())
    })
}

/// Verify a plugin without loading it: run every check a load runs before any plugin code
/// (the same code path as `keel_host_load`): read and validate the manifest at
/// `manifest_path`, verify `<manifest_path>.sig` against the host's trust store and policy,
/// check its capability names against the registry and the host's allowlist, its
/// dependencies against the loaded plugins, and the binary for this platform against the
/// digest the manifest pins. No plugin code runs and nothing is registered.
///
/// Returns `KEEL_OK` if the plugin would pass these checks on load, otherwise the code of the
/// first failing check (one code per cause: e.g. `KEEL_ERR_NO_SIGNATURE`,
/// `KEEL_ERR_MALFORMED_SIGNATURE`, `KEEL_ERR_UNKNOWN_KEY`, `KEEL_ERR_KEY_REVOKED`,
/// `KEEL_ERR_KEY_NOT_YET_VALID`, `KEEL_ERR_KEY_EXPIRED`, `KEEL_ERR_KEY_NOT_ALLOWED`,
/// `KEEL_ERR_BAD_SIGNATURE`, `KEEL_ERR_HASH_ONLY_SIGNATURE`, `KEEL_ERR_DIGEST_MISMATCH`,
/// `KEEL_ERR_UNPINNED_BINARY` (no pin and unpinned binaries not allowed), or a manifest code), with the thread's last error message naming the plugin and the cause.
/// `manifest_path` is borrowed for the call.
///
/// Thread-safe; does not mark the host as started.
///
/// Errors: `KEEL_ERR_NULL_POINTER`, `KEEL_ERR_INVALID_UTF8`, the file codes
/// (`KEEL_ERR_FILE_NOT_FOUND`, `KEEL_ERR_IO`, `KEEL_ERR_SYMLINK_REFUSED`,
/// `KEEL_ERR_FILE_TOO_LARGE`), `KEEL_ERR_MANIFEST_*`, and the signature and digest codes
/// listed above, `KEEL_ERR_UNPINNED_BINARY`, `KEEL_ERR_CAPABILITY_UNKNOWN`,
/// `KEEL_ERR_CAPABILITY_DENIED`, `KEEL_ERR_DEPENDENCY_*`, `KEEL_ERR_ALREADY_LOADED`.
#[no_mangle]
pub extern "C" fn keel_verify(host: *const keel_host, manifest_path: *const c_char) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract for every pointer argument.
        let h = unsafe { borrow(host, "host") }?;
        // SAFETY: caller contract.
        let path = unsafe { arg_str(manifest_path, "manifest_path") }?;
        // Exactly the checks a load runs before any plugin code (the same code path).
        h.check(&[std::path::PathBuf::from(path)])?;
        Ok(())
    })
}
