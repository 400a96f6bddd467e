//! C ABI: the version of the library (`keel_version`).

use super::{boundary, Out};
use crate::error::keel_status;

/// The version of the Keel library actually loaded (compare with the `KEEL_VERSION_*` macros
/// of `keel_version.h`, the version the caller was compiled against: the ABI is compatible
/// within one major version, and while the major version is 0, within one minor version).
///
/// Sets `*major`, `*minor`, `*patch`. Thread-safe; no allocation.
///
/// Errors: `KEEL_ERR_NULL_POINTER` (any of the three; none is then written).
#[no_mangle]
pub extern "C" fn keel_version(major: *mut u32, minor: *mut u32, patch: *mut u32) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract: each pointer is NULL or valid for a write of a uint32_t.
        let (ma, mi, pa) = unsafe {
            (
                Out::new(major, "major")?,
                Out::new(minor, "minor")?,
                Out::new(patch, "patch")?,
            )
        };
        let (a, b, c) = crate_version();
        ma.set(a);
        mi.set(b);
        pa.set(c);
        Ok(())
    })
}

/// This crate's version from Cargo.toml, as numbers.
pub(crate) fn crate_version() -> (u32, u32, u32) {
    const fn parse(s: &str) -> u32 {
        let b = s.as_bytes();
        let mut i = 0;
        let mut v = 0u32;
        while i < b.len() {
            v = v * 10 + (b[i] - b'0') as u32;
            i += 1;
        }
        v
    }
    const V: (u32, u32, u32) = (
        parse(env!("CARGO_PKG_VERSION_MAJOR")),
        parse(env!("CARGO_PKG_VERSION_MINOR")),
        parse(env!("CARGO_PKG_VERSION_PATCH")),
    );
    V
}
