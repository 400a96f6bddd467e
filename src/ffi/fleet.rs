//! C ABI: loading plugins from an OCI registry (see docs/fleet.md).

use std::ffi::c_char;
use std::path::Path;

use super::host::{keel_buffer, keel_host, keel_plugin};
use super::{
    arg_bytes, arg_str, borrow, borrow_mut, boundary, fill_buffer, free, new_boxed, new_shared, Boxed, Castable, Out,
};
use crate::error::keel_status;
use crate::fleet::{Credentials, RegistryOptions};

/// How to reach an OCI registry: credentials (none, a bearer token, or basic authentication,
/// which also obtains a token from the registry's token server when it asks for one), whether
/// plain HTTP is allowed to a registry off the loopback interface, and the timeout of each
/// request. Made by `keel_registry_options_new`, changed by the `keel_registry_options_set_*`
/// functions, released by `keel_registry_options_free`; passed (borrowed) to the `*_with`
/// functions below, which copy what they need, so one value can serve many calls. Not
/// thread-safe to change while another thread passes it to a call; reading it from several
/// calls at once is fine.
pub struct keel_registry_options {
    _opaque: [u8; 0],
}

impl Castable for keel_registry_options {
    type Rust = RegistryOptions;
    type Ownership = Boxed;
}

/// New registry options with the defaults: anonymous, TLS for every registry that is not on
/// the loopback interface, 30 s per request. `*out` receives them, owned by the caller
/// (release with `keel_registry_options_free`).
///
/// Errors: `KEEL_ERR_NULL_POINTER` (`out`).
#[no_mangle]
pub extern "C" fn keel_registry_options_new(out: *mut *mut keel_registry_options) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract for `out`.
        let out = unsafe { Out::new(out, "out") }?;
        out.set(new_boxed::<keel_registry_options>(RegistryOptions::default()));
        Ok(())
    })
}

/// Release registry options. NULL is accepted and ignored. The secrets they held are dropped
/// with them.
///
/// Errors: none (always `KEEL_OK`).
#[no_mangle]
pub extern "C" fn keel_registry_options_free(options: *mut keel_registry_options) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract: from keel_registry_options_new, not yet freed, no other user.
        unsafe { free(options) };
        Ok(())
    })
}

/// Authenticate with a bearer token (`Authorization: Bearer <token>`, sent as given; the
/// registry's token server is not asked). NULL or "" makes the options anonymous again.
/// Replaces basic credentials set before.
///
/// Errors: `KEEL_ERR_NULL_POINTER` (`options`), `KEEL_ERR_INVALID_UTF8`.
#[no_mangle]
pub extern "C" fn keel_registry_options_set_bearer(
    options: *mut keel_registry_options,
    token: *const c_char,
) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract: `options` is a live handle nobody else uses for the call.
        let o = unsafe { borrow_mut(options, "options") }?;
        // SAFETY: caller contract: `token` is NULL or a NUL-terminated string.
        o.credentials = unsafe { bearer_credentials(token) }?;
        Ok(())
    })
}

/// Authenticate with HTTP basic authentication: sent to a registry that asks for basic
/// authentication, and to the token server of a registry that asks for a bearer token (the
/// Docker/OCI token flow). Replaces a bearer token set before.
///
/// Errors: `KEEL_ERR_NULL_POINTER` (`options`, `username`, `password`),
/// `KEEL_ERR_INVALID_UTF8`, `KEEL_ERR_INVALID_ARGUMENT` (empty `username`).
#[no_mangle]
pub extern "C" fn keel_registry_options_set_basic(
    options: *mut keel_registry_options,
    username: *const c_char,
    password: *const c_char,
) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract for every pointer argument.
        let (username, password) = unsafe { (arg_str(username, "username")?, arg_str(password, "password")?) };
        if username.is_empty() {
            crate::bail!(KEEL_ERR_INVALID_ARGUMENT, "username is empty");
        }
        // SAFETY: caller contract: `options` is a live handle nobody else uses for the call.
        let o = unsafe { borrow_mut(options, "options") }?;
        o.credentials = Credentials::Basic {
            username: username.to_string(),
            password: password.to_string(),
        };
        Ok(())
    })
}

/// Allow (`true`) or refuse (`false`, the default) plain HTTP to a registry that is not on the
/// loopback interface. Registries on `localhost`, `127.0.0.0/8` and `[::1]` are always spoken
/// to in plain HTTP; every other registry only over TLS unless this is set.
///
/// Errors: `KEEL_ERR_NULL_POINTER` (`options`).
#[no_mangle]
pub extern "C" fn keel_registry_options_set_insecure(
    options: *mut keel_registry_options,
    insecure: bool,
) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract: `options` is a live handle nobody else uses for the call.
        let o = unsafe { borrow_mut(options, "options") }?;
        o.insecure = insecure;
        Ok(())
    })
}

/// The connect and read timeout of each request to the registry, in milliseconds (default
/// 30 000).
///
/// Errors: `KEEL_ERR_NULL_POINTER` (`options`), `KEEL_ERR_INVALID_ARGUMENT` (0).
#[no_mangle]
pub extern "C" fn keel_registry_options_set_timeout_ms(
    options: *mut keel_registry_options,
    timeout_ms: u64,
) -> keel_status {
    boundary(|| {
        if timeout_ms == 0 {
            crate::bail!(KEEL_ERR_INVALID_ARGUMENT, "timeout_ms is 0");
        }
        // SAFETY: caller contract: `options` is a live handle nobody else uses for the call.
        let o = unsafe { borrow_mut(options, "options") }?;
        o.timeout = std::time::Duration::from_millis(timeout_ms);
        Ok(())
    })
}

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
    load_oci(host, reference, cache_dir, Registry::Bearer(bearer), out, digest)
}

/// `keel_host_load_oci` with registry options (`keel_registry_options_new`; NULL: the
/// defaults, anonymous): basic authentication and the token flow, plain HTTP off the loopback
/// interface when explicitly allowed, the request timeout. `options` is borrowed for the call.
///
/// Errors: those of `keel_host_load_oci`.
#[no_mangle]
pub extern "C" fn keel_host_load_oci_with(
    host: *const keel_host,
    reference: *const c_char,
    cache_dir: *const c_char,
    options: *const keel_registry_options,
    out: *mut *mut keel_plugin,
    digest: *mut keel_buffer,
) -> keel_status {
    load_oci(host, reference, cache_dir, Registry::Options(options), out, digest)
}

fn load_oci(
    host: *const keel_host,
    reference: *const c_char,
    cache_dir: *const c_char,
    registry: Registry,
    out: *mut *mut keel_plugin,
    digest: *mut keel_buffer,
) -> keel_status {
    // SAFETY: caller contract: `digest` is NULL or a buffer the caller owns for the call.
    let mut digest_buf = unsafe { optional_cleared(digest) };
    boundary(|| {
        // SAFETY: caller contract for every pointer argument.
        let (h, out) = unsafe { (borrow(host, "host")?, Out::optional(out)) };
        // SAFETY: caller contract.
        let reference = unsafe { arg_str(reference, "reference") }?;
        // SAFETY: caller contract.
        let cache_dir = unsafe { arg_str(cache_dir, "cache_dir") }?;
        // SAFETY: caller contract.
        let options = unsafe { registry.options() }?;
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
    oci_pull(reference, cache_dir, Registry::Bearer(bearer), manifest_path, digest)
}

/// `keel_oci_pull` with registry options (NULL: the defaults), as `keel_host_load_oci_with`.
///
/// Errors: those of `keel_oci_pull`.
#[no_mangle]
pub extern "C" fn keel_oci_pull_with(
    reference: *const c_char,
    cache_dir: *const c_char,
    options: *const keel_registry_options,
    manifest_path: *mut keel_buffer,
    digest: *mut keel_buffer,
) -> keel_status {
    oci_pull(reference, cache_dir, Registry::Options(options), manifest_path, digest)
}

fn oci_pull(
    reference: *const c_char,
    cache_dir: *const c_char,
    registry: Registry,
    manifest_path: *mut keel_buffer,
    digest: *mut keel_buffer,
) -> keel_status {
    // SAFETY: caller contract: `digest` is NULL or a buffer the caller owns for the call.
    let mut digest_buf = unsafe { optional_cleared(digest) };
    fill_buffer(manifest_path, |out| {
        // SAFETY: caller contract for every pointer argument.
        let (reference, cache_dir) = unsafe { (arg_str(reference, "reference")?, arg_str(cache_dir, "cache_dir")?) };
        // SAFETY: caller contract.
        let options = unsafe { registry.options() }?;
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

/// Evict least recently used plugin folders from the OCI cache `cache_dir` until they take at
/// most `max_bytes` (0: every folder not in use). Never removed: a folder this host or another
/// process sharing the cache has a plugin loaded from (hosts hold them with file locks while
/// the plugin is loaded; reload reads the folder again), and a folder being pulled. A folder
/// disappears atomically (renamed out, then deleted), so a concurrent load sees it complete or
/// pulls it again. `removed` (if non-NULL) receives the number of folders removed,
/// `kept_bytes` (if non-NULL) the bytes left. Thread-safe.
///
/// Errors: `KEEL_ERR_NULL_POINTER` (`host`, `cache_dir`), `KEEL_ERR_INVALID_UTF8`,
/// `KEEL_ERR_INVALID_ARGUMENT` (empty `cache_dir`), `KEEL_ERR_FILE_NOT_FOUND` (no such
/// folder), `KEEL_ERR_IO`.
#[no_mangle]
pub extern "C" fn keel_host_prune_oci_cache(
    host: *const keel_host,
    cache_dir: *const c_char,
    max_bytes: u64,
    removed: *mut usize,
    kept_bytes: *mut u64,
) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract for every pointer argument.
        let (h, removed, kept_bytes) =
            unsafe { (borrow(host, "host")?, Out::optional(removed), Out::optional(kept_bytes)) };
        // SAFETY: caller contract.
        let cache_dir = unsafe { arg_str(cache_dir, "cache_dir") }?;
        let p = h.prune_oci_cache(non_empty(cache_dir)?, max_bytes)?;
        if let Some(o) = removed {
            o.set(p.removed.len());
        }
        if let Some(o) = kept_bytes {
            o.set(p.kept_bytes);
        }
        Ok(())
    })
}

/// An optional output buffer (NULL: none), emptied now so that it stays empty on failure.
///
/// # Safety
/// `buf` is NULL or a `keel_buffer` the caller owns and nobody else uses for `'a`.
unsafe fn optional_cleared<'a>(buf: *mut keel_buffer) -> Option<&'a mut Vec<u8>> {
    // SAFETY: per this function's contract.
    let b = unsafe { borrow_mut(buf, "buffer") }.ok()?;
    b.clear();
    Some(b)
}

fn non_empty(cache_dir: &str) -> crate::error::Result<&Path> {
    if cache_dir.is_empty() {
        crate::bail!(KEEL_ERR_INVALID_ARGUMENT, "cache_dir is empty");
    }
    Ok(Path::new(cache_dir))
}

/// Where a C function's registry options come from: a bearer-token argument (the plain
/// functions) or a `keel_registry_options` handle (the `*_with` functions).
#[derive(Clone, Copy)]
enum Registry {
    Bearer(*const c_char),
    Options(*const keel_registry_options),
}

impl Registry {
    /// The options to use.
    ///
    /// # Safety
    /// A bearer pointer is NULL or a NUL-terminated string valid for the call; an options
    /// pointer is NULL or a live `keel_registry_options` handle not changed during the call.
    unsafe fn options(self) -> crate::error::Result<RegistryOptions> {
        match self {
            Registry::Bearer(bearer) => Ok(RegistryOptions {
                // SAFETY: per this function's contract.
                credentials: unsafe { bearer_credentials(bearer) }?,
                ..RegistryOptions::default()
            }),
            // SAFETY: per this function's contract: NULL (defaults) or a live handle.
            Registry::Options(o) => Ok(unsafe { o.cast::<RegistryOptions>().as_ref() }
                .cloned()
                .unwrap_or_default()),
        }
    }
}

/// Credentials from a bearer-token argument (NULL or "": anonymous).
///
/// # Safety
/// `bearer` is NULL or a NUL-terminated string valid for the call.
unsafe fn bearer_credentials(bearer: *const c_char) -> crate::error::Result<Credentials> {
    if bearer.is_null() {
        return Ok(Credentials::Anonymous);
    }
    // SAFETY: caller contract.
    Ok(match unsafe { arg_str(bearer, "bearer") }? {
        "" => Credentials::Anonymous,
        t => Credentials::Bearer(t.to_string()),
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
    follow(
        host,
        reference,
        roots,
        roots_len,
        interval_ms,
        Registry::Bearer(bearer),
        version,
    )
}

/// `keel_host_follow_trust_store` with registry options (NULL: the defaults), as
/// `keel_host_load_oci_with`. The follower keeps a copy of the options for its later checks.
///
/// Errors: those of `keel_host_follow_trust_store`.
#[no_mangle]
pub extern "C" fn keel_host_follow_trust_store_with(
    host: *const keel_host,
    reference: *const c_char,
    roots: *const u8,
    roots_len: usize,
    interval_ms: u64,
    options: *const keel_registry_options,
    version: *mut u64,
) -> keel_status {
    follow(
        host,
        reference,
        roots,
        roots_len,
        interval_ms,
        Registry::Options(options),
        version,
    )
}

fn follow(
    host: *const keel_host,
    reference: *const c_char,
    roots: *const u8,
    roots_len: usize,
    interval_ms: u64,
    registry: Registry,
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
        let registry = unsafe { registry.options() }?;
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
