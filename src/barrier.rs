//! Asymmetric memory barriers: a hot path pays only a compiler fence, a rare path pays for
//! both with `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`, which makes every running thread
//! of the process execute a full memory barrier. Where `membarrier` is unavailable both sides
//! fall back to `SeqCst` fences.
//!
//! Pattern: hot side `store A; light(); load B`, rare side `store B; heavy(); load A`: at least
//! one side sees the other's store.

use std::sync::atomic::{compiler_fence, fence, AtomicBool, Ordering};
use std::sync::OnceLock;

pub(crate) const MEMBARRIER_CMD_PRIVATE_EXPEDITED: libc::c_long = 1 << 3;
const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_long = 1 << 4;

/// True once the process is registered for private expedited membarrier.
static ASYMMETRIC: AtomicBool = AtomicBool::new(false);
static REGISTERED: OnceLock<()> = OnceLock::new();

/// Register the process for expedited membarrier (idempotent; cheap after the first call).
/// Until it has run, both sides use full fences.
pub fn init() {
    REGISTERED.get_or_init(|| {
        // SAFETY: plain syscall, no pointers.
        let ok = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) } == 0;
        ASYMMETRIC.store(ok, Ordering::SeqCst);
    });
}

/// Whether the light side is a compiler fence only.
pub fn is_asymmetric() -> bool {
    ASYMMETRIC.load(Ordering::Relaxed)
}

/// The hot side.
#[inline(always)]
pub fn light() {
    if ASYMMETRIC.load(Ordering::Relaxed) {
        compiler_fence(Ordering::SeqCst);
    } else {
        fence(Ordering::SeqCst);
    }
}

/// The rare side.
pub fn heavy() {
    if ASYMMETRIC.load(Ordering::Relaxed) {
        // SAFETY: plain syscall, no pointers.
        let r = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) };
        if r == 0 {
            return;
        }
        // Cannot happen once registration succeeded; if it does, use fences on both sides
        // from now on (and this once).
        ASYMMETRIC.store(false, Ordering::SeqCst);
    }
    fence(Ordering::SeqCst);
}
