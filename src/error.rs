//! Errors: one variant per cause, each with a stable numeric code.
//!
//! Codes are grouped by cause in blocks of 100 and are never reused: a code that is
//! retired stays reserved. `Status` is the ABI view (`keel_status` in C); `Error`
//! carries the human-readable detail that becomes the thread's last error message.

use std::fmt;

/// Stable status codes of the C ABI. `Ok` is 0; every other value names one cause.
///
/// Blocks: 1xx argument/ABI misuse, 2xx not found, 3xx manifest, 4xx trust,
/// 5xx dependency, 6xx capability, 7xx runtime, 8xx limit, 9xx state/lifecycle,
/// 10xx internal, 11xx fleet distribution (OCI).
///
/// What Keel guarantees: bad input (files, manifests, signatures, WASM modules, a native
/// plugin's vtable and lengths, C ABI arguments) is refused with one of these codes, the host
/// keeps serving and its registry is unchanged; no panic, C++ exception or unwinding crosses
/// the ABI. What it cannot: a native (or ThemisDB C++) plugin runs in-process, so a native
/// plugin that segfaults, aborts or corrupts memory takes the whole process down; run
/// untrusted native code in WASM (or out of process) instead. See docs/errors.md.
#[allow(non_camel_case_types)]
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, strum::EnumIter, strum::IntoStaticStr, strum::FromRepr)]
pub enum keel_status {
    KEEL_OK = 0,

    // 1xx: the caller passed something unusable.
    /// A required pointer argument was NULL.
    KEEL_ERR_NULL_POINTER = 100,
    /// A string argument was not valid UTF-8.
    KEEL_ERR_INVALID_UTF8 = 101,
    /// An argument was out of range or otherwise invalid.
    KEEL_ERR_INVALID_ARGUMENT = 102,
    /// Reading a file failed (permissions, I/O error, not a regular file).
    KEEL_ERR_IO = 103,
    /// A path refers to a symbolic link where a regular file is required.
    KEEL_ERR_SYMLINK_REFUSED = 104,
    /// A file is larger than Keel accepts for its kind.
    KEEL_ERR_FILE_TOO_LARGE = 105,
    /// A file Keel reads (manifest, binary, `.sig`, trust store) is not a regular file (a FIFO,
    /// socket, device or directory), checked on the opened descriptor; refused without blocking.
    KEEL_ERR_NOT_REGULAR_FILE = 106,

    // 2xx: something named does not exist.
    /// No plugin with that name is loaded.
    KEEL_ERR_PLUGIN_NOT_FOUND = 200,
    /// The plugin does not export a function with that name.
    KEEL_ERR_FUNCTION_NOT_FOUND = 201,
    /// A file named by the caller or a manifest does not exist.
    KEEL_ERR_FILE_NOT_FOUND = 202,
    /// The plugin handle refers to a plugin that has been unloaded.
    KEEL_ERR_PLUGIN_UNLOADED = 203,
    /// A directory scan found no plugin manifest although the directory is not empty.
    KEEL_ERR_NO_MANIFEST = 204,

    // 3xx: manifests.
    /// The manifest is not well-formed JSON.
    KEEL_ERR_MANIFEST_PARSE = 300,
    /// The manifest violates the manifest schema.
    KEEL_ERR_MANIFEST_SCHEMA = 301,
    /// The manifest names no binary for this platform.
    KEEL_ERR_MANIFEST_NO_BINARY = 302,
    /// The manifest's binary path escapes the manifest's directory or is absolute.
    KEEL_ERR_MANIFEST_BAD_PATH = 303,
    /// The manifest is valid but inconsistent (e.g. a digest missing for a binary).
    KEEL_ERR_MANIFEST_INVALID = 304,
    /// The manifest's format is not recognised (neither Keel nor ThemisDB).
    KEEL_ERR_MANIFEST_UNKNOWN_FORMAT = 305,

    // 4xx: trust.
    /// The binary's SHA-256 differs from the digest pinned in the manifest.
    KEEL_ERR_DIGEST_MISMATCH = 400,
    /// No signature was found and policy requires one.
    KEEL_ERR_NO_SIGNATURE = 401,
    /// The signature file cannot be parsed.
    KEEL_ERR_MALFORMED_SIGNATURE = 402,
    /// The signature names a key id the trust store does not know.
    KEEL_ERR_UNKNOWN_KEY = 403,
    /// The signing key's validity starts in the future.
    KEEL_ERR_KEY_NOT_YET_VALID = 404,
    /// The signing key's validity has ended.
    KEEL_ERR_KEY_EXPIRED = 405,
    /// The signing key has been revoked.
    KEEL_ERR_KEY_REVOKED = 406,
    /// The signing key may not sign plugins of this name.
    KEEL_ERR_KEY_NOT_ALLOWED = 407,
    /// The signature does not verify against the key.
    KEEL_ERR_BAD_SIGNATURE = 408,
    /// The trust store cannot be parsed or is inconsistent.
    KEEL_ERR_TRUST_STORE_MALFORMED = 409,
    /// The trust store's version is older than the one in use.
    KEEL_ERR_TRUST_STORE_ROLLBACK = 410,
    /// The policy change would weaken a policy that may only be strengthened.
    KEEL_ERR_POLICY_DOWNGRADE = 411,
    /// A ThemisDB hash-only `.sig` was found where an authenticated signature is required.
    KEEL_ERR_HASH_ONLY_SIGNATURE = 412,
    /// The manifest pins no SHA-256 for the binary (a ThemisDB `plugin.json` without
    /// `expected_hash`) and the host has not opted in to unpinned binaries.
    KEEL_ERR_UNPINNED_BINARY = 413,

    // 5xx: dependencies.
    /// The dependency graph has a cycle.
    KEEL_ERR_DEPENDENCY_CYCLE = 500,
    /// A dependency is neither loaded nor part of the set being loaded.
    KEEL_ERR_DEPENDENCY_MISSING = 501,
    /// A dependency is present in a version outside the required range.
    KEEL_ERR_DEPENDENCY_VERSION = 502,
    /// Other loaded plugins depend on this one.
    KEEL_ERR_HAS_DEPENDENTS = 503,
    /// A plugin with that name is already loaded.
    KEEL_ERR_ALREADY_LOADED = 504,
    /// A version requirement or version string is not valid semver.
    KEEL_ERR_BAD_VERSION = 505,

    // 6xx: capabilities.
    /// A capability name is not in Keel's registry of capability names.
    KEEL_ERR_CAPABILITY_UNKNOWN = 600,
    /// A capability is outside the node's allowlist.
    KEEL_ERR_CAPABILITY_DENIED = 601,
    /// A WASM module imports a host function its capabilities do not grant.
    KEEL_ERR_IMPORT_NOT_GRANTED = 602,
    /// A WASM module imports a function no one defines (neither Keel's module "keel" nor a
    /// host function the server defined under that module and name).
    KEEL_ERR_IMPORT_UNDEFINED = 603,
    /// No host function is defined under that namespace and name.
    KEEL_ERR_HOST_FN_NOT_FOUND = 604,
    /// A plugin-defined metric was refused: a name outside the Prometheus/OpenMetrics rules,
    /// labels or buckets refused, an unknown metric id, or a value the metric's kind refuses.
    KEEL_ERR_METRIC_INVALID = 606,
    /// A plugin-defined metric clashes with one already defined under that name (another
    /// kind, or other histogram buckets).
    KEEL_ERR_METRIC_CONFLICT = 607,
    /// An RPC endpoint name is already registered (by another plugin, or bound to another
    /// function).
    KEEL_ERR_RPC_ENDPOINT_TAKEN = 608,
    /// No plugin has registered an RPC endpoint with that name.
    KEEL_ERR_RPC_ENDPOINT_NOT_FOUND = 609,

    // 7xx: runtimes.
    /// The shared library could not be loaded (dlopen failed).
    KEEL_ERR_LIBRARY_LOAD = 700,
    /// The shared library lacks the entry symbol.
    KEEL_ERR_SYMBOL_MISSING = 701,
    /// The plugin was built for another Keel ABI version.
    KEEL_ERR_ABI_MISMATCH = 702,
    /// The plugin's init hook failed.
    KEEL_ERR_INIT_FAILED = 703,
    /// The plugin's function returned an error.
    KEEL_ERR_CALL_FAILED = 704,
    /// The WASM module failed to compile or validate.
    KEEL_ERR_WASM_COMPILE = 705,
    /// The WASM guest trapped.
    KEEL_ERR_WASM_TRAP = 706,
    /// The WASM module could not be instantiated (missing export, link error).
    KEEL_ERR_WASM_INSTANTIATE = 707,
    /// The plugin's runtime does not support the operation (e.g. no save_state hook).
    KEEL_ERR_UNSUPPORTED = 708,
    /// The plugin violated the ABI contract (bad pointer, bad length from the guest).
    KEEL_ERR_PLUGIN_ABI_VIOLATION = 709,
    /// The shared library is not a well-formed ELF image for this machine (header, program
    /// headers or a segment's file range outside the file, e.g. a truncated library); refused
    /// before `dlopen` maps it.
    KEEL_ERR_LIBRARY_MALFORMED = 710,
    // 72x: isolated native plugins (docs/isolation.md).
    /// The sandbox process of an isolated plugin could not be started (launcher missing or
    /// not executable, spawn or handshake failed).
    KEEL_ERR_SANDBOX_START = 720,
    /// The sandbox process died from a signal (segfault, bus error, abort, ...); the calls
    /// in flight fail with this code, the next call restarts it.
    KEEL_ERR_SANDBOX_CRASHED = 721,
    /// The sandbox process exited (the plugin called `exit`/`_exit`).
    KEEL_ERR_SANDBOX_EXITED = 722,
    /// The sandbox was killed by its seccomp filter: the plugin made a system call outside
    /// the allowlist (opened a file or a socket, forked, ...).
    KEEL_ERR_SANDBOX_SYSCALL_REFUSED = 723,
    /// The sandbox is down and its restart is held back (exponential backoff after repeated
    /// deaths); the call was not run.
    KEEL_ERR_SANDBOX_BACKOFF = 724,
    /// Process isolation was asked for (by the manifest or the host) for a plugin kind that
    /// cannot be isolated (ThemisDB C++ plugins).
    KEEL_ERR_ISOLATION_UNSUPPORTED = 725,
    /// The input of a call to an isolated plugin is larger than the sandbox's call slot.
    KEEL_ERR_SANDBOX_INPUT_TOO_LARGE = 726,

    // 8xx: limits.
    /// The guest hit its memory cap.
    KEEL_ERR_MEMORY_LIMIT = 800,
    /// The call used up its instruction budget.
    KEEL_ERR_CPU_BUDGET = 801,
    /// The call ran past its wall-clock deadline and was interrupted.
    KEEL_ERR_DEADLINE = 802,
    /// The output exceeded the maximum output size.
    KEEL_ERR_OUTPUT_TOO_LARGE = 803,
    /// The call's cancel token was cancelled: before the call started (it was not run), or
    /// while it ran (a WASM call was interrupted and its instance discarded; a native plugin
    /// saw `cancelled()` and returned failure).
    KEEL_ERR_CANCELLED = 804,
    /// A plugin already has the most metric series allowed (10 000); the next one is refused.
    KEEL_ERR_METRIC_SERIES_LIMIT = 806,

    // 9xx: state and lifecycle.
    /// In-flight calls did not finish within the drain timeout; the old code stays mapped
    /// until they do.
    KEEL_ERR_DRAIN_TIMEOUT = 900,
    /// Saving the plugin's state failed.
    KEEL_ERR_STATE_SAVE = 901,
    /// Restoring the plugin's state failed.
    KEEL_ERR_STATE_RESTORE = 902,
    /// The plugin is busy with another lifecycle operation.
    KEEL_ERR_BUSY = 903,

    // 10xx: internal.
    /// A Rust panic was caught at the ABI boundary.
    KEEL_ERR_PANIC = 1000,
    /// An internal invariant failed.
    KEEL_ERR_INTERNAL = 1001,

    // 11xx: fleet distribution (OCI registries, see docs/fleet.md).
    /// An OCI reference does not parse (`[registry/]repository[:tag][@sha256:<hex>]`), or
    /// names a digest where a tag is required (push). ThemisDB: 6310.
    KEEL_ERR_OCI_BAD_REFERENCE = 1100,
    /// The registry has no manifest under that reference (unknown repository, tag or
    /// digest). ThemisDB: 6308.
    KEEL_ERR_OCI_MANIFEST_NOT_FOUND = 1101,
    /// Bytes pulled from a registry do not match their digest: the OCI manifest against the
    /// reference's digest, or a blob against its descriptor (digest or size). Nothing is
    /// cached. ThemisDB: 6309.
    KEEL_ERR_OCI_DIGEST_MISMATCH = 1102,
    /// A pull failed: registry unreachable, timeout, protocol error, a blob missing.
    /// Nothing is cached. ThemisDB: 6307.
    KEEL_ERR_OCI_PULL_FAILED = 1103,
    /// The registry refused the credentials (or asked for some and none were given).
    /// ThemisDB: 6307.
    KEEL_ERR_OCI_AUTH_FAILED = 1104,
    /// The manifest under the reference is not a Keel plugin artifact (media types, layer
    /// paths that leave the plugin folder, no plugin manifest layer). ThemisDB: 6307.
    KEEL_ERR_OCI_NOT_A_PLUGIN = 1105,
    /// A push failed: registry unreachable, protocol error, upload refused.
    KEEL_ERR_OCI_PUSH_FAILED = 1106,
}

pub use keel_status as Status;

impl keel_status {
    /// The symbolic name of the code, e.g. `"KEEL_ERR_DIGEST_MISMATCH"`.
    pub fn name(self) -> &'static str {
        self.into()
    }

    /// The status with numeric value `v`, if there is one.
    pub fn from_u32(v: u32) -> Option<keel_status> {
        keel_status::from_repr(v)
    }

    /// Every status value, in code order.
    pub fn all() -> impl Iterator<Item = keel_status> {
        <keel_status as strum::IntoEnumIterator>::iter()
    }
}

impl fmt::Display for keel_status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), *self as u32)
    }
}

/// An error: a cause (its stable code) and a message for humans.
///
/// The message says what failed and, where it helps, where (a JSON path, a file, a plugin
/// name). It never has to be parsed: the code is the machine-readable part.
///
/// Boxed, so that `Result<(), Error>` is one pointer wide and the success path of a call
/// returns in a register instead of through memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(Box<Inner>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Inner {
    status: keel_status,
    message: String,
}

impl Error {
    #[cold]
    pub fn new(status: keel_status, message: impl Into<String>) -> Self {
        debug_assert!(status != keel_status::KEEL_OK);
        Error(Box::new(Inner {
            status,
            message: message.into(),
        }))
    }

    /// The stable code of this error's cause.
    pub fn status(&self) -> keel_status {
        self.0.status
    }

    /// The numeric value of [`Error::status`].
    pub fn code(&self) -> u32 {
        self.0.status as u32
    }

    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// Prefix the message with context (e.g. the plugin name), keeping the cause.
    pub fn context(mut self, ctx: impl fmt::Display) -> Self {
        self.0.message = format!("{ctx}: {}", self.0.message);
        self
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Error::new(keel_status::KEEL_ERR_INTERNAL, message)
    }

    /// Map an I/O error on `path` to the matching cause.
    pub fn io(path: &std::path::Path, err: &std::io::Error) -> Self {
        let status = match err.kind() {
            std::io::ErrorKind::NotFound => keel_status::KEEL_ERR_FILE_NOT_FOUND,
            _ if err.raw_os_error() == Some(libc::ELOOP) => keel_status::KEEL_ERR_SYMLINK_REFUSED,
            // open(2) of a Unix socket.
            _ if err.raw_os_error() == Some(libc::ENXIO) => keel_status::KEEL_ERR_NOT_REGULAR_FILE,
            _ => keel_status::KEEL_ERR_IO,
        };
        let what = if status == keel_status::KEEL_ERR_SYMLINK_REFUSED {
            "is a symbolic link (refused)".to_string()
        } else {
            err.to_string()
        };
        Error::new(status, format!("{}: {what}", path.display()))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}]", self.0.message, self.0.status.name())
    }
}

impl std::error::Error for Error {}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `bail!(STATUS, "fmt", args…)`: return an [`Error`] with that status.
#[macro_export]
macro_rules! bail {
    ($status:ident, $($arg:tt)*) => {
        return Err($crate::error::Error::new($crate::error::keel_status::$status, format!($($arg)*)))
    };
}

/// `err!(STATUS, "fmt", args…)`: build an [`Error`] with that status.
#[macro_export]
macro_rules! err {
    ($status:ident, $($arg:tt)*) => {
        $crate::error::Error::new($crate::error::keel_status::$status, format!($($arg)*))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_named() {
        let mut seen = std::collections::HashSet::new();
        for s in keel_status::all() {
            assert!(seen.insert(s as u32));
            assert!(s.name().starts_with("KEEL_"));
            assert_eq!(keel_status::from_u32(s as u32), Some(s));
        }
        assert!(seen.len() > 50);
        assert_eq!(keel_status::KEEL_ERR_DIGEST_MISMATCH as u32, 400);
        assert_eq!(keel_status::KEEL_ERR_DIGEST_MISMATCH.name(), "KEEL_ERR_DIGEST_MISMATCH");
    }

    #[test]
    fn a_unit_result_is_one_pointer_wide() {
        assert_eq!(std::mem::size_of::<Result<()>>(), std::mem::size_of::<usize>());
    }
}
