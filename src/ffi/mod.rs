#![allow(non_camel_case_types)]
// The exported functions are safe `extern "C"` functions that take raw pointers: C callers
// cannot see `unsafe`, and every pointer is checked (NULL) and used under the contract each
// function documents in the header. Rust callers (the tests) use them exactly as C does.
#![allow(clippy::not_unsafe_ptr_arg_deref)]
//! The C ABI. Thin: check pointers and strings, catch panics, convert, return a status.
//!
//! The rules every function follows are stated once, in the header's preamble (cbindgen.toml):
//! status codes, the thread's last error, out-parameters, output buffers, ownership, panics.
//! This module holds the one implementation of each:
//! - [`boundary`]: runs a body, turns errors and panics into a status and the last error;
//! - [`Castable`] with [`new_boxed`], [`new_shared`], [`borrow`], [`borrow_mut`], [`free`]:
//!   the only place a handle pointer is made from or turned back into a `Box` or an `Arc`;
//! - [`Out`]: an out-parameter, written once, only on success;
//! - [`fill_buffer`]: a `keel_buffer` output (the result on success, empty on failure).

// Declaration order is the order of `keel.h` (cbindgen keeps source order): hosts, plugins,
// calls and buffers (all in `host`), then the rest. (Blank lines keep rustfmt from sorting.)
pub mod host;

pub mod errors;

pub mod trust;

pub mod deps;

pub mod health;

pub mod watch;

pub mod wasm;

pub mod themis;

pub mod introspect;

pub mod call;
pub mod capmetrics;
pub mod sinks;

pub mod exposition;

pub mod version;

pub mod hostfn;
pub mod isolation;

pub mod fleet;

pub use errors::{keel_last_error_message, keel_status_name};

use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::NonNull;
use std::sync::Arc;

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

/// How a handle owns the Rust value it points to: see [`Castable`].
pub(crate) trait Ownership {
    /// Release one owner of the value at `p`.
    ///
    /// # Safety
    /// `p` was made by the matching constructor ([`new_boxed`] / [`new_shared`]) for a
    /// value of type `T` and this owner has not been released yet.
    unsafe fn release<T>(p: *const T);
}

/// The handle is a `Box<Rust>`: one owner, freed by its `_free` function.
pub(crate) enum Boxed {}

/// The handle is an `Arc<Rust>` (one strong count per handle given out), released by its
/// `_free` function; the value lives while Keel or another handle still holds it.
pub(crate) enum Shared {}

impl Ownership for Boxed {
    unsafe fn release<T>(p: *const T) {
        // SAFETY: per the trait contract `p` came from `Box::into_raw` and is released once.
        drop(unsafe { Box::from_raw(p.cast_mut()) });
    }
}

impl Ownership for Shared {
    unsafe fn release<T>(p: *const T) {
        // SAFETY: per the trait contract `p` came from `Arc::into_raw` and this strong count
        // is released once.
        drop(unsafe { Arc::from_raw(p) });
    }
}

/// A C handle type (`keel_host`, `keel_plugin`, ...): an opaque name for a pointer to
/// `Self::Rust`, owned as `Self::Ownership` says. The pointer C holds *is* the `Box` or
/// `Arc` pointer (no wrapper in between), so borrowing a handle is one pointer hop.
///
/// Handle pointers are made and taken apart only by the functions below.
pub(crate) trait Castable {
    /// The Rust value behind the handle.
    type Rust;
    /// [`Boxed`] or [`Shared`].
    type Ownership: Ownership;
}

/// A new handle owning `value` (a `Box`).
pub(crate) fn new_boxed<C: Castable<Ownership = Boxed>>(value: C::Rust) -> *mut C {
    Box::into_raw(Box::new(value)).cast()
}

/// A new handle holding one strong count of `value` (an `Arc`).
pub(crate) fn new_shared<C: Castable<Ownership = Shared>>(value: Arc<C::Rust>) -> *mut C {
    Arc::into_raw(value).cast_mut().cast()
}

/// Borrow the value behind a handle argument (no reference-count traffic).
///
/// # Safety
/// `p` is NULL or a handle of type `C` from Keel, not yet freed, for at least `'a`.
pub(crate) unsafe fn borrow<'a, C: Castable>(p: *const C, what: &str) -> Result<&'a C::Rust> {
    // SAFETY: per the contract a non-null `p` points to a live `C::Rust` (the handle pointer
    // is the Box/Arc pointer, see `Castable`), shared for `'a`.
    unsafe { p.cast::<C::Rust>().as_ref() }.ok_or_else(|| err!(KEEL_ERR_NULL_POINTER, "{what} is NULL"))
}

/// Borrow the value behind a `Boxed` handle exclusively.
///
/// # Safety
/// `p` is NULL or a handle of type `C` from Keel, not yet freed, that no one else uses for
/// `'a` (the caller owns it exclusively for the call).
pub(crate) unsafe fn borrow_mut<'a, C: Castable<Ownership = Boxed>>(p: *mut C, what: &str) -> Result<&'a mut C::Rust> {
    // SAFETY: per the contract a non-null `p` points to a live `C::Rust` owned by a Box
    // that nobody else touches for `'a`.
    unsafe { p.cast::<C::Rust>().as_mut() }.ok_or_else(|| err!(KEEL_ERR_NULL_POINTER, "{what} is NULL"))
}

/// Release a handle (its `_free` function). NULL is accepted and ignored.
///
/// # Safety
/// `p` is NULL or a handle of type `C` from Keel, not yet freed, and no other thread uses
/// it any more.
pub(crate) unsafe fn free<C: Castable>(p: *mut C) {
    if !p.is_null() {
        // SAFETY: per the contract; the pointer was made by the constructor of C's ownership.
        unsafe { C::Ownership::release(p.cast_const().cast::<C::Rust>()) };
    }
}

/// An out-parameter: checked for NULL when the function starts, written at most once, by
/// [`Out::set`], which a function calls only once nothing can fail any more. So on failure
/// the caller's variable is unchanged.
pub(crate) struct Out<'a, T: Copy> {
    p: NonNull<T>,
    _caller: PhantomData<&'a mut T>,
}

impl<'a, T: Copy> Out<'a, T> {
    /// A required out-parameter (NULL: `KEEL_ERR_NULL_POINTER`).
    ///
    /// # Safety
    /// `p` is NULL or valid for writes of one `T` for `'a`.
    pub(crate) unsafe fn new(p: *mut T, what: &str) -> Result<Out<'a, T>> {
        match NonNull::new(p) {
            Some(p) => Ok(Out {
                p,
                _caller: PhantomData,
            }),
            None => bail!(KEEL_ERR_NULL_POINTER, "{what} (out-parameter) is NULL"),
        }
    }

    /// An optional out-parameter (NULL: the caller does not want the value).
    ///
    /// # Safety
    /// As for [`Out::new`].
    pub(crate) unsafe fn optional(p: *mut T) -> Option<Out<'a, T>> {
        NonNull::new(p).map(|p| Out {
            p,
            _caller: PhantomData,
        })
    }

    /// Write the value (the function's last step on success).
    pub(crate) fn set(self, value: T) {
        // SAFETY: `p` is non-null and valid for a write of `T` for `'a` (contract of `new`);
        // `T: Copy`, so nothing is dropped in place.
        unsafe { self.p.as_ptr().write(value) }
    }
}

/// Run a function that writes its result into a `keel_buffer` (`out`), inside [`boundary`]:
/// `f` gets the buffer's bytes; on success they are the result, on any failure (error or
/// panic) the buffer is left empty. Its memory is kept either way, and nothing is copied:
/// `f` writes in place. A NULL `out` fails with `KEEL_ERR_NULL_POINTER` before `f` runs.
///
/// This is the whole output-buffer rule of the header's preamble.
#[inline]
pub(crate) fn fill_buffer<F>(out: *mut host::keel_buffer, f: F) -> keel_status
where
    F: FnOnce(&mut Vec<u8>) -> Result<()>,
{
    // SAFETY: caller contract: `out` is NULL or a buffer the caller owns exclusively for the call.
    let buf = match unsafe { borrow_mut(out, "out") } {
        Ok(b) => b,
        Err(e) => return fail(&e),
    };
    let status = boundary(|| f(&mut *buf));
    if status != keel_status::KEEL_OK {
        buf.clear();
    }
    status
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
    fn a_plugin_handle_is_the_arc_of_its_slot() {
        use crate::registry::Slot;
        let slot = Arc::new(Slot::new("handle-test".into()));
        let h = new_shared::<host::keel_plugin>(slot.clone());
        assert_eq!(
            h as usize,
            Arc::as_ptr(&slot) as usize,
            "no wrapper between handle and slot"
        );
        assert_eq!(Arc::strong_count(&slot), 2, "one strong count per handle");
        // SAFETY: `h` is a live handle.
        let borrowed = unsafe { borrow(h, "plugin") }.unwrap();
        assert!(std::ptr::eq(borrowed, &*slot));
        assert_eq!(Arc::strong_count(&slot), 2, "borrowing takes no count");
        // SAFETY: `h` is a live handle, freed once.
        unsafe { free(h) };
        assert_eq!(Arc::strong_count(&slot), 1);
        // SAFETY: NULL is accepted.
        unsafe { free(std::ptr::null_mut::<host::keel_plugin>()) };
        // SAFETY: NULL is refused with a status, never dereferenced.
        let e = unsafe { borrow(std::ptr::null::<host::keel_plugin>(), "plugin") }
            .err()
            .unwrap();
        assert_eq!(e.status(), keel_status::KEEL_ERR_NULL_POINTER);
    }

    #[test]
    fn out_parameters_are_written_only_on_success() {
        let mut v = 7u64;
        let s = boundary(|| {
            // SAFETY: `v` is valid for writes.
            let out = unsafe { Out::new(&mut v, "v") }?;
            Err::<(), _>(err!(KEEL_ERR_INVALID_ARGUMENT, "fails before the write"))?;
            out.set(1);
            Ok(())
        });
        assert_eq!(s, keel_status::KEEL_ERR_INVALID_ARGUMENT);
        assert_eq!(v, 7);
        // SAFETY: NULL is refused.
        assert!(unsafe { Out::<u64>::new(std::ptr::null_mut(), "v") }.is_err());
    }

    #[test]
    fn an_output_buffer_holds_the_result_or_nothing() {
        let b = new_boxed::<host::keel_buffer>(b"old".to_vec());
        let bytes = |b: *mut host::keel_buffer| {
            // SAFETY: `b` is a live buffer, not written meanwhile.
            unsafe { borrow(b, "b") }.unwrap().clone()
        };
        assert_eq!(
            fill_buffer(b, |o| {
                o.clear();
                o.extend_from_slice(b"new");
                Ok(())
            }),
            keel_status::KEEL_OK
        );
        assert_eq!(bytes(b), b"new");
        let s = fill_buffer(b, |o| {
            o.extend_from_slice(b"partial or error text");
            Err(err!(KEEL_ERR_CALL_FAILED, "failed"))
        });
        assert_eq!(s, keel_status::KEEL_ERR_CALL_FAILED);
        assert!(bytes(b).is_empty(), "empty after a failure");
        assert_eq!(
            fill_buffer(b, |o| {
                o.extend_from_slice(b"x");
                panic!("deliberate test panic")
            }),
            keel_status::KEEL_ERR_PANIC
        );
        assert!(bytes(b).is_empty(), "empty after a panic");
        assert_eq!(
            fill_buffer(std::ptr::null_mut(), |_| Ok(())),
            keel_status::KEEL_ERR_NULL_POINTER
        );
        // SAFETY: `b` is a live buffer, freed once.
        unsafe { free(b) };
    }

    #[test]
    fn errors_set_the_message_and_return_their_code() {
        let s = boundary(|| Err(err!(KEEL_ERR_KEY_REVOKED, "key abc revoked")));
        assert_eq!(s, keel_status::KEEL_ERR_KEY_REVOKED);
        assert!(message().contains("key abc revoked"));
    }
}
