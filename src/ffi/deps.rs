//! C ABI: capabilities (allowlist, granted sets, bits).

use std::ffi::c_char;

use super::host::{current, keel_host, keel_plugin};
pub use super::host::{keel_host_load_dir, keel_host_unload_cascade};
use super::{arg_str, borrow, boundary, Out};
use crate::bail;
use crate::capability::Capabilities;
use crate::error::keel_status;

/// Set the node's capability allowlist: the capabilities plugins loaded from now on may be
/// granted. `names` points to `count` NUL-terminated capability names (`"log"`, `"kv:read"`,
/// `"storage:write"`, `"rpc:register"`, ...; may be NULL when `count` is 0, which allows
/// none). The whole list is checked first: an unknown name gives `KEEL_ERR_CAPABILITY_UNKNOWN`
/// and leaves the allowlist unchanged.
///
/// Plugins already loaded keep the set they were granted at load; nothing widens a granted
/// set. `names` and the strings are borrowed for the call. Thread-safe.
///
/// Errors: `KEEL_ERR_NULL_POINTER` (`host`, `names` with a non-zero `count`, or one of the
/// strings), `KEEL_ERR_INVALID_UTF8`, `KEEL_ERR_CAPABILITY_UNKNOWN`.
#[no_mangle]
pub extern "C" fn keel_host_set_capability_allowlist(
    host: *const keel_host,
    names: *const *const c_char,
    count: usize,
) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract.
        let h = unsafe { borrow(host, "host") }?;
        if names.is_null() && count > 0 {
            bail!(KEEL_ERR_NULL_POINTER, "names is NULL but count is {count}");
        }
        let mut allow = Capabilities::NONE;
        for i in 0..count {
            // SAFETY: `names` points to `count` pointers (caller contract), checked non-null.
            let p = unsafe { *names.add(i) };
            // SAFETY: caller contract for each string.
            let name = unsafe { arg_str(p, &format!("names[{i}]")) }?;
            allow = allow.union(Capabilities::bit_of(name)?);
        }
        h.set_allowlist(allow);
        Ok(())
    })
}

/// The node's current capability allowlist as a bit set (bits as given by
/// `keel_capability_bit`). Thread-safe.
///
/// Errors: `KEEL_ERR_NULL_POINTER`.
#[no_mangle]
pub extern "C" fn keel_host_capability_allowlist(host: *const keel_host, bits: *mut u64) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract for every pointer argument.
        let (h, out) = unsafe { (borrow(host, "host")?, Out::new(bits, "bits")?) };
        out.set(h.allowlist().bits());
        Ok(())
    })
}

/// The capabilities granted to a loaded plugin, as a bit set: frozen when its current
/// generation was loaded (requested by its manifest and inside the allowlist at that time),
/// never widened afterwards. Thread-safe, lock-free.
///
/// Errors: `KEEL_ERR_NULL_POINTER`, `KEEL_ERR_PLUGIN_UNLOADED`.
#[no_mangle]
pub extern "C" fn keel_plugin_capabilities(plugin: *const keel_plugin, bits: *mut u64) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract for every pointer argument.
        let (slot, out) = unsafe { (borrow(plugin, "plugin")?, Out::new(bits, "bits")?) };
        out.set(current(slot)?.granted.bits());
        Ok(())
    })
}

/// The bit of one capability name (e.g. `"kv:read"`), for testing the sets returned by
/// `keel_plugin_capabilities` and `keel_host_capability_allowlist`. Bits are stable.
/// Thread-safe.
///
/// Errors: `KEEL_ERR_NULL_POINTER`, `KEEL_ERR_INVALID_UTF8`, `KEEL_ERR_CAPABILITY_UNKNOWN` (a
/// name Keel does not know).
#[no_mangle]
pub extern "C" fn keel_capability_bit(name: *const c_char, bit: *mut u64) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract for every pointer argument.
        let (name, out) = unsafe { (arg_str(name, "name")?, Out::new(bit, "bit")?) };
        out.set(Capabilities::bit_of(name)?.bits());
        Ok(())
    })
}
