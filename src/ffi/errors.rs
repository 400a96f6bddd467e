//! C ABI: status codes and the thread's last error.

use std::ffi::{c_char, CStr, CString};

use super::{boundary, Out, LAST_ERROR};
use crate::err;
use crate::error::keel_status;

/// The calling thread's last error message.
///
/// Sets `*message` to a NUL-terminated UTF-8 string describing the most recent failed Keel
/// call on this thread ("" if none failed yet). The string is owned by Keel and stays valid
/// until the next failing Keel call on the same thread; copy it to keep it.
///
/// Thread-safety: per thread; no synchronisation needed.
///
/// Errors: `KEEL_ERR_NULL_POINTER` (`message`; the last error is then left as it was).
#[no_mangle]
pub extern "C" fn keel_last_error_message(message: *mut *const c_char) -> keel_status {
    // SAFETY: caller contract for `message`.
    let Some(out) = (unsafe { Out::optional(message) }) else {
        return keel_status::KEEL_ERR_NULL_POINTER;
    };
    // The pointer stays valid until the next set_last_error on this thread, which only a
    // failing Keel call performs.
    LAST_ERROR.with(|l| out.set(l.borrow().as_ptr()));
    keel_status::KEEL_OK
}

/// The symbolic name of a status code.
///
/// Sets `*name` to a static NUL-terminated string such as `"KEEL_ERR_DIGEST_MISMATCH"`
/// (never freed). Thread-safe.
///
/// Errors: `KEEL_ERR_NULL_POINTER`, `KEEL_ERR_INVALID_ARGUMENT` (not a `keel_status` value).
#[no_mangle]
pub extern "C" fn keel_status_name(status: u32, name: *mut *const c_char) -> keel_status {
    boundary(|| {
        // SAFETY: caller contract for `name`.
        let out = unsafe { Out::new(name, "name") }?;
        let s = keel_status::from_u32(status)
            .ok_or_else(|| err!(KEEL_ERR_INVALID_ARGUMENT, "{status} is not a keel_status value"))?;
        out.set(status_cstr(s).as_ptr());
        Ok(())
    })
}

fn status_cstr(s: keel_status) -> &'static CStr {
    use std::collections::HashMap;
    use std::sync::OnceLock;
    static NAMES: OnceLock<HashMap<u32, CString>> = OnceLock::new();
    let m = NAMES.get_or_init(|| {
        keel_status::all()
            .map(|s| (s as u32, CString::new(s.name()).unwrap_or_default()))
            .collect()
    });
    m.get(&(s as u32)).map(|c| c.as_c_str()).unwrap_or(c"KEEL_ERR_INTERNAL")
}
