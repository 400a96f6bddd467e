//! The output sink behind `keel_output` (`keel_plugin.h`): where a native or legacy plugin's
//! hook appends its result, capped at a limit.
//!
//! A refused write (past the limit) is remembered: whatever the hook returns afterwards, the
//! runtime reports the call as `KEEL_ERR_OUTPUT_TOO_LARGE` (see [`with_output_checked`]), so a
//! plugin that ignores the refusal and returns success never hands the caller a cut buffer
//! as if it were whole.

use std::ffi::c_void;

use crate::manifest::Manifest;

/// Mirror of `keel_output`.
#[repr(C)]
pub struct RawOutput {
    pub ctx: *mut c_void,
    pub write: unsafe extern "C" fn(ctx: *mut c_void, data: *const u8, len: usize) -> i32,
}

/// Default ceiling on a call's output (64 MiB).
pub const DEFAULT_MAX_OUTPUT: usize = 64 << 20;

/// The ceiling on a call's output: the manifest's `limits.max_output_bytes`, else
/// [`DEFAULT_MAX_OUTPUT`].
pub fn max_output(manifest: &Manifest) -> usize {
    manifest
        .limits
        .as_ref()
        .and_then(|l| l.max_output_bytes)
        .map(|v| v as usize)
        .unwrap_or(DEFAULT_MAX_OUTPUT)
}

/// What `output_write` returns for a write past the limit.
pub const WRITE_REFUSED: i32 = -2;
/// What `output_write` returns for a NULL `data` with a non-zero `len` (or a NULL `ctx`).
pub const WRITE_BAD_ARGUMENT: i32 = -1;

/// Where an output writer appends, how much it may, and whether a write was refused.
pub struct OutputSink<'a> {
    pub buf: &'a mut Vec<u8>,
    pub max: usize,
    /// Set by the first write refused for the limit; never cleared during the hook.
    pub refused: bool,
}

/// `keel_output.write`: append to the sink, refusing (and remembering the refusal) past its
/// limit.
///
/// # Safety
/// `ctx` must be the `OutputSink` of the `RawOutput` this function was handed out with, alive
/// and not otherwise borrowed for the duration of the call; `data` must point to `len`
/// readable bytes (or be NULL with `len == 0`).
pub unsafe extern "C" fn output_write(ctx: *mut c_void, data: *const u8, len: usize) -> i32 {
    if ctx.is_null() || (data.is_null() && len != 0) {
        return WRITE_BAD_ARGUMENT;
    }
    // SAFETY: ctx is the OutputSink the host passed for the duration of this hook (see
    // `with_output_checked`); hooks run on one thread and the sink is not borrowed elsewhere.
    let sink = unsafe { &mut *(ctx as *mut OutputSink<'_>) };
    if sink.refused || sink.buf.len().saturating_add(len) > sink.max {
        sink.refused = true;
        return WRITE_REFUSED;
    }
    if len != 0 {
        // SAFETY: the plugin promises `data` points to `len` readable bytes (checked non-NULL).
        sink.buf
            .extend_from_slice(unsafe { std::slice::from_raw_parts(data, len) });
    }
    0
}

/// Run `f` with a `keel_output` whose writes append to `buf` up to `max` bytes in all; returns
/// `f`'s result and whether a write was refused for the limit.
#[inline]
pub fn with_output_checked<R>(buf: &mut Vec<u8>, max: usize, f: impl FnOnce(&RawOutput) -> R) -> (R, bool) {
    let mut sink = OutputSink {
        buf,
        max,
        refused: false,
    };
    let out = RawOutput {
        ctx: &mut sink as *mut OutputSink<'_> as *mut c_void,
        write: output_write,
    };
    let r = f(&out);
    (r, sink.refused)
}

/// [`with_output_checked`] for callers that learn about a refusal from `f`'s own result (the
/// legacy shim reports it as its own code).
#[inline]
pub fn with_output<R>(buf: &mut Vec<u8>, max: usize, f: impl FnOnce(&RawOutput) -> R) -> R {
    with_output_checked(buf, max, f).0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_write_is_remembered_and_later_writes_refused() {
        let mut buf = Vec::new();
        let (rcs, refused) = with_output_checked(&mut buf, 4, |o| {
            // SAFETY: o is the live output of this closure; the data pointers are valid.
            unsafe {
                [
                    (o.write)(o.ctx, b"abc".as_ptr(), 3),
                    (o.write)(o.ctx, b"de".as_ptr(), 2),
                    (o.write)(o.ctx, b"d".as_ptr(), 1),
                ]
            }
        });
        assert_eq!(rcs, [0, WRITE_REFUSED, WRITE_REFUSED]);
        assert!(refused);
        assert_eq!(buf, b"abc");
        let (_, refused) = with_output_checked(&mut buf, 8, |o| {
            // SAFETY: as above.
            unsafe { (o.write)(o.ctx, b"x".as_ptr(), 1) }
        });
        assert!(!refused);
    }
}
