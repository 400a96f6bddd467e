#![allow(non_camel_case_types)]
// The exported functions are safe `extern "C"` functions that take raw pointers: C callers
// cannot see `unsafe`, and every pointer is checked (NULL) and used under the contract each
// function documents in the header. Rust callers (the tests) use them exactly as C does.
#![allow(clippy::not_unsafe_ptr_arg_deref)]
//! The C ABI. Thin: check pointers and strings, catch panics, convert, return a status.
//!
//! Conventions (also in the header):
//! - Every function returns `keel_status`; `KEEL_OK` (0) is success.
//! - On failure, `keel_last_error_message` returns a message for the calling thread; it is
//!   left untouched by successful calls.
//! - Out-parameters are written only on success.
//! - Objects returned through `**out` are owned by the caller and released with their
//!   `_free` function; borrowed pointers say so.
//! - No panic unwinds across this boundary: each body runs inside [`boundary`].

pub mod deps;
pub mod health;
pub mod host;
pub mod themis;
pub mod trust;
pub mod wasm;
pub mod watch;

use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::error::{keel_status, Error, Result};
use crate::{bail, err};

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Record `e` as this thread's last error.
pub(crate) fn set_last_error(e: &Error) {
    let text = e.to_string().replace('\0', "\\0");
    let c = CString::new(text).unwrap_or_default();
    LAST_ERROR.with(|l| *l.borrow_mut() = c);
}

pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_string()
    }
}

/// Run an exported function's body: panics become `KEEL_ERR_PANIC`, errors set the thread's
/// last error and return their code.
#[inline]
pub(crate) fn boundary<F: FnOnce() -> Result<()>>(f: F) -> keel_status {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => keel_status::KEEL_OK,
        Ok(Err(e)) => fail(&e),
        Err(p) => fail(&err!(
            KEEL_ERR_PANIC,
            "internal panic caught at the ABI boundary: {}",
            panic_message(&*p)
        )),
    }
}

#[cold]
fn fail(e: &Error) -> keel_status {
    set_last_error(e);
    e.status()
}

/// Borrow a NUL-terminated UTF-8 string argument.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string valid for `'a`.
pub(crate) unsafe fn arg_str<'a>(p: *const c_char, what: &str) -> Result<&'a str> {
    if p.is_null() {
        bail!(KEEL_ERR_NULL_POINTER, "{what} is NULL");
    }
    // SAFETY: caller contract.
    unsafe { CStr::from_ptr(p) }
        .to_str()
        .map_err(|e| err!(KEEL_ERR_INVALID_UTF8, "{what} is not valid UTF-8: {e}"))
}

/// Borrow a byte buffer argument; `(NULL, 0)` is the empty buffer.
///
/// # Safety
/// `p` is NULL or points to `len` readable bytes valid for `'a`.
pub(crate) unsafe fn arg_bytes<'a>(p: *const u8, len: usize, what: &str) -> Result<&'a [u8]> {
    if len == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        bail!(KEEL_ERR_NULL_POINTER, "{what} is NULL but its length is {len}");
    }
    // SAFETY: caller contract.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

/// Borrow an object argument.
///
/// # Safety
/// `p` is NULL or a valid pointer obtained from Keel, not yet freed.
pub(crate) unsafe fn arg_ref<'a, T>(p: *const T, what: &str) -> Result<&'a T> {
    // SAFETY: caller contract.
    unsafe { p.as_ref() }.ok_or_else(|| err!(KEEL_ERR_NULL_POINTER, "{what} is NULL"))
}

/// Check an out-parameter.
pub(crate) fn arg_out<T>(p: *mut T, what: &str) -> Result<*mut T> {
    if p.is_null() {
        bail!(KEEL_ERR_NULL_POINTER, "{what} (out-parameter) is NULL");
    }
    Ok(p)
}

/// The calling thread's last error message.
///
/// Sets `*message` to a NUL-terminated UTF-8 string describing the most recent failed Keel
/// call on this thread ("" if none failed yet). The string is owned by Keel and stays valid
/// until the next failing Keel call on the same thread; copy it to keep it.
///
/// Thread-safety: per thread; no synchronisation needed.
/// Returns `KEEL_ERR_NULL_POINTER` if `message` is NULL.
#[no_mangle]
pub extern "C" fn keel_last_error_message(message: *mut *const c_char) -> keel_status {
    if message.is_null() {
        return keel_status::KEEL_ERR_NULL_POINTER;
    }
    LAST_ERROR.with(|l| {
        // SAFETY: checked non-null; the pointer stays valid until the next set_last_error on
        // this thread, which only a failing Keel call performs.
        unsafe { *message = l.borrow().as_ptr() };
    });
    keel_status::KEEL_OK
}

/// The symbolic name of a status code.
///
/// Sets `*name` to a static NUL-terminated string such as `"KEEL_ERR_DIGEST_MISMATCH"`
/// (never freed). Unknown codes give `KEEL_ERR_INVALID_ARGUMENT`.
///
/// Thread-safety: safe from any thread.
#[no_mangle]
pub extern "C" fn keel_status_name(status: u32, name: *mut *const c_char) -> keel_status {
    boundary(|| {
        let out = arg_out(name, "name")?;
        let s = keel_status::from_u32(status)
            .ok_or_else(|| err!(KEEL_ERR_INVALID_ARGUMENT, "{status} is not a keel_status value"))?;
        let c: &'static CStr = status_cstr(s);
        // SAFETY: checked non-null.
        unsafe { *out = c.as_ptr() };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> String {
        let mut p = std::ptr::null();
        assert_eq!(keel_last_error_message(&mut p), keel_status::KEEL_OK);
        // SAFETY: Keel returned a valid NUL-terminated string.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }

    #[test]
    fn a_panic_becomes_a_status_and_never_unwinds() {
        let s = boundary(|| panic!("deliberate test panic"));
        assert_eq!(s, keel_status::KEEL_ERR_PANIC);
        assert!(message().contains("deliberate test panic"));
        let s = boundary(|| {
            let v: Vec<u8> = Vec::new();
            let _ = v[3];
            Ok(())
        });
        assert_eq!(s, keel_status::KEEL_ERR_PANIC);
        assert_eq!(boundary(|| Ok(())), keel_status::KEEL_OK);
        assert!(
            message().contains("index out of bounds"),
            "success leaves the last error alone"
        );
    }

    #[test]
    fn errors_set_the_message_and_return_their_code() {
        let s = boundary(|| Err(err!(KEEL_ERR_KEY_REVOKED, "key abc revoked")));
        assert_eq!(s, keel_status::KEEL_ERR_KEY_REVOKED);
        assert!(message().contains("key abc revoked"));
    }
}
