//! C ABI: loading plugins from an OCI registry (see docs/fleet.md).

use std::ffi::c_char;
use std::path::Path;

use super::host::{keel_buffer, keel_host, keel_plugin};
use super::{arg_bytes, arg_str, borrow, borrow_mut, boundary, fill_buffer, new_shared, Out};
use crate::error::keel_status;
use crate::fleet::{Credentials, RegistryOptions};

/// Load a plugin from an OCI registry: pull `reference` (`[registry/]repository[:tag]` or
/// `...@sha256:<64 hex>`) into the content-addressed cache folder `cache_dir` (created if
/// missing), then load it exactly as `keel_host_load` loads a local folder (signature against
/// the host's trust store, binary pin, capabilities, init).
///
/// Every blob is checked against its digest before it is cached; a reference with a digest
/// that is already cached does not touch the network; a tag is resolved once per call.
/// Registries on the loopback interface are spoken to in plain HTTP, all others over TLS.
/// `bearer` is a bearer token, or NULL (or "") for none. All strings are borrowed for the
/// call. If `out` is non-NULL it receives a new plugin handle owned by the caller (release
/// with `keel_plugin_free`). If `digest` is non-NULL the buffer receives the OCI manifest
/// digest the reference resolved to (`sha256:<hex>`, not NUL-terminated); on failure it is
/// left empty. On failure nothing is loaded. Thread-safe; blocks while it pulls (never call
/// it on a thread that serves `keel_call`s with deadlines).
///
/// Errors: `KEEL_ERR_NULL_POINTER` (`host`, `reference`, `cache_dir`),
/// `KEEL_ERR_INVALID_UTF8`, `KEEL_ERR_INVALID_ARGUMENT` (empty `cache_dir`),
/// `KEEL_ERR_OCI_BAD_REFERENCE`, `KEEL_ERR_OCI_MANIFEST_NOT_FOUND`,
/// `KEEL_ERR_OCI_DIGEST_MISMATCH`, `KEEL_ERR_OCI_PULL_FAILED`, `KEEL_ERR_OCI_AUTH_FAILED`,
/// `KEEL_ERR_OCI_NOT_A_PLUGIN`, `KEEL_ERR_IO` (the cache folder), then every code of
/// `keel_host_load`.
#[no_mangle]
pub extern "C" fn keel_host_load_oci(
    host: *const keel_host,
    reference: *const c_char,
    cache_dir: *const c_char,
    bearer: *const c_char,
    out: *mut *mut keel_plugin,
    digest: *mut keel_buffer,
) -> keel_status {
    let mut digest_buf = if digest.is_null() {
        None
    } else {
        // SAFETY: caller contract: `digest` is NULL or a buffer the caller owns for the call.
        unsafe { borrow_mut(digest, "digest") }.ok()
    };
    if let Some(b) = digest_buf.as_mut() {
        b.clear();
    }
    boundary(|| {
        // SAFETY: caller contract for every pointer argument.
        let (h, out) = unsafe { (borrow(host, "host")?, Out::optional(out)) };
        // SAFETY: caller contract.
        let reference = unsafe { arg_str(reference, "reference") }?;
        // SAFETY: caller contract.
        let cache_dir = unsafe { arg_str(cache_dir, "cache_dir") }?;
        // SAFETY: caller contract.
        let options = unsafe { options(bearer) }?;
        let loaded = h.load_oci(reference, non_empty(cache_dir)?, &options)?;
        if let Some(b) = digest_buf.as_mut() {
            b.extend_from_slice(loaded.pulled.digest.as_bytes());
        }
        if let Some(out) = out {
            out.set(new_shared::<keel_plugin>(loaded.slot));
        }
        Ok(())
    })
}

/// Pull `reference` into the content-addressed cache folder `cache_dir` without loading it
/// (the first half of `keel_host_load_oci`, for an embedder that loads through its own path,
/// e.g. ThemisDB's façade `loadPluginFromOci`): same digest checks, same cache rules. The
/// folder is not verified against a trust store here; loading it (`keel_host_load` of the
/// returned manifest path) does that.
///
/// `manifest_path` receives the path of the plugin's manifest in the cache (not
/// NUL-terminated); on failure it is left empty. `digest`, if non-NULL, receives the OCI
/// manifest digest the reference resolved to. `bearer` as for `keel_host_load_oci`.
/// Thread-safe; blocks while it pulls.
///
/// Errors: `KEEL_ERR_NULL_POINTER` (`reference`, `cache_dir`, `manifest_path`),
/// `KEEL_ERR_INVALID_UTF8`, `KEEL_ERR_INVALID_ARGUMENT` (empty `cache_dir`), the
/// `KEEL_ERR_OCI_*` codes of `keel_host_load_oci`, `KEEL_ERR_IO`.
#[no_mangle]
pub extern "C" fn keel_oci_pull(
    reference: *const c_char,
    cache_dir: *const c_char,
    bearer: *const c_char,
    manifest_path: *mut keel_buffer,
    digest: *mut keel_buffer,
) -> keel_status {
    let mut digest_buf = if digest.is_null() {
        None
    } else {
        // SAFETY: caller contract: `digest` is NULL or a buffer the caller owns for the call.
        unsafe { borrow_mut(digest, "digest") }.ok()
    };
    if let Some(b) = digest_buf.as_mut() {
        b.clear();
    }
    fill_buffer(manifest_path, |out| {
        // SAFETY: caller contract for every pointer argument.
        let (reference, cache_dir) = unsafe { (arg_str(reference, "reference")?, arg_str(cache_dir, "cache_dir")?) };
        // SAFETY: caller contract.
        let options = unsafe { options(bearer) }?;
        let pulled = crate::fleet::pull_to_cache(reference, non_empty(cache_dir)?, &options)?;
        let p = pulled
            .manifest_path
            .to_str()
            .ok_or_else(|| crate::err!(KEEL_ERR_INVALID_UTF8, "the cache path is not UTF-8"))?;
        out.extend_from_slice(p.as_bytes());
        if let Some(b) = digest_buf.as_mut() {
            b.extend_from_slice(pulled.digest.as_bytes());
        }
        Ok(())
    })
}

fn non_empty(cache_dir: &str) -> crate::error::Result<&Path> {
    if cache_dir.is_empty() {
        crate::bail!(KEEL_ERR_INVALID_ARGUMENT, "cache_dir is empty");
    }
    Ok(Path::new(cache_dir))
}

/// Registry options with `bearer` (NULL or "": anonymous).
///
/// # Safety
/// `bearer` is NULL or a NUL-terminated string valid for the call.
unsafe fn options(bearer: *const c_char) -> crate::error::Result<RegistryOptions> {
    let credentials = if bearer.is_null() {
        Credentials::Anonymous
    } else {
        // SAFETY: caller contract.
        match unsafe { arg_str(bearer, "bearer") }? {
            "" => Credentials::Anonymous,
            t => Credentials::Bearer(t.to_string()),
        }
    };
    Ok(RegistryOptions {
        credentials,
        ..RegistryOptions::default()
    })
}

/// Follow a trust store published in an OCI registry (`keel trust publish`; docs/fleet.md):
/// check `reference` now, then every `interval_ms` on a thread of the follower's own. A
/// published store is swapped in only if it is signed by one of the root keys in `roots`
/// (`roots_len` bytes: a trust-store document listing them) and its version is not lower
/// than the store in use (rollback refused); otherwise the store in use stays and the error
/// is recorded (`keel_host_trust_check_now` returns it). From the swap on, every load and
/// reload verifies with the new store. Replaces a follower already running once the new one's
/// first check succeeded. `bearer` as for `keel_host_load_oci`. If `version` is non-NULL it
/// receives the version in use. While following, the metrics carry
/// `keel_trust_store_version`. Thread-safe; blocks for the first check.
///
/// Errors: `KEEL_ERR_NULL_POINTER`, `KEEL_ERR_INVALID_UTF8`, `KEEL_ERR_INVALID_ARGUMENT`
/// (`interval_ms` below 100, no root key), `KEEL_ERR_TRUST_STORE_MALFORMED` (roots or the
/// published store), the `KEEL_ERR_OCI_*` codes of the pull, `KEEL_ERR_UNKNOWN_KEY` (not
/// signed by a root key), `KEEL_ERR_BAD_SIGNATURE`, `KEEL_ERR_MALFORMED_SIGNATURE`,
/// `KEEL_ERR_KEY_REVOKED` / `KEEL_ERR_KEY_EXPIRED` (the root key),
/// `KEEL_ERR_TRUST_STORE_ROLLBACK`.
#[no_mangle]
pub extern "C" fn keel_host_follow_trust_store(
    host: *const keel_host,
    reference: *const c_char,
    roots: *const u8,
    roots_len: usize,
    interval_ms: u64,
    bearer: *const c_char,
    version: *mut u64,
) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract for every pointer argument.
        let (h, out) = unsafe { (borrow(host, "host")?, Out::optional(version)) };
        // SAFETY: caller contract.
        let reference = unsafe { arg_str(reference, "reference") }?;
        // SAFETY: caller contract: `roots` points to `roots_len` readable bytes.
        let roots = unsafe { arg_bytes(roots, roots_len, "roots") }?;
        // SAFETY: caller contract.
        let registry = unsafe { options(bearer) }?;
        let v = h.follow_trust_store(crate::fleet::FollowConfig {
            reference: reference.to_string(),
            roots: roots.to_vec(),
            interval: std::time::Duration::from_millis(interval_ms),
            registry,
        })?;
        if let Some(out) = out {
            out.set(v);
        }
        Ok(())
    })
}

/// Check the followed trust-store reference now, on the calling thread, and swap in a newer
/// published store. If `version` is non-NULL it receives the version in use afterwards.
///
/// Errors: `KEEL_ERR_NULL_POINTER` (`host`), `KEEL_ERR_INVALID_ARGUMENT` (the host follows no
/// reference), and those of `keel_host_follow_trust_store` (the store in use stays).
#[no_mangle]
pub extern "C" fn keel_host_trust_check_now(host: *const keel_host, version: *mut u64) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract for every pointer argument.
        let (h, out) = unsafe { (borrow(host, "host")?, Out::optional(version)) };
        let v = h.trust_check_now()?;
        if let Some(out) = out {
            out.set(v);
        }
        Ok(())
    })
}

/// Stop following the trust-store reference (the store in use stays) and wait for the
/// follower's thread. If `was_following` is non-NULL it receives whether a follower ran.
///
/// Errors: `KEEL_ERR_NULL_POINTER` (`host`).
#[no_mangle]
pub extern "C" fn keel_host_stop_following_trust_store(
    host: *const keel_host,
    was_following: *mut bool,
) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract for every pointer argument.
        let (h, out) = unsafe { (borrow(host, "host")?, Out::optional(was_following)) };
        let was = h.stop_following_trust_store();
        if let Some(out) = out {
            out.set(was);
        }
        Ok(())
    })
}
