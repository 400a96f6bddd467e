//! The call area shared by the server and a sandbox: a sealed memfd mapped `MAP_SHARED` in
//! both processes. One header page, then `nslots` slots; each slot is a header page (atomic
//! words, the state word doubling as the futex both sides sleep on), an input area, an output
//! area and a host-API ("callback") area.
//!
//! The server never trusts what the sandbox writes here: every length read back is bounded
//! before use, and the memfd is sealed against shrinking, so the sandbox cannot make the
//! server's mapping fault (`SIGBUS`) by truncating it.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::err;
use crate::error::Result;

pub const PAGE: usize = 4096;
/// Input area per slot.
pub const IN_CAP: usize = 1 << 20;
/// Output area per slot.
pub const OUT_CAP: usize = 1 << 20;
/// Host-API area per slot (a proxied `log` line, a key and value).
pub const CB_CAP: usize = 64 << 10;
/// Bytes per slot: header page, input, output, callback areas.
pub const SLOT_STRIDE: usize = PAGE + IN_CAP + OUT_CAP + CB_CAP;
/// Call slots per sandbox (concurrent calls; one sandbox worker thread each).
pub const DEFAULT_SLOTS: u32 = 4;
/// At most this many slots.
pub const MAX_SLOTS: u32 = 64;

/// Slot states (the futex word).
pub const FREE: u32 = 0;
/// A server thread owns the slot and writes the request.
pub const CLAIMED: u32 = 1;
/// The sandbox's turn: the request is published (or a callback answered and resumed).
pub const REQUEST: u32 = 2;
/// The sandbox asks the server for a host-API call (server's turn).
pub const CALLBACK: u32 = 3;
/// The server answered the callback (sandbox's turn).
pub const CALLBACK_DONE: u32 = 4;
/// The result is ready (server's turn).
pub const DONE: u32 = 5;
/// The sandbox is gone (set by the server's monitor).
pub const DEAD: u32 = 6;

/// Requests.
pub const OP_CALL: u32 = 1;
pub const OP_INIT: u32 = 2;
pub const OP_SAVE: u32 = 3;
pub const OP_RESTORE: u32 = 4;
pub const OP_RESTORE_VERSIONED: u32 = 5;
pub const OP_HEALTH: u32 = 6;
pub const OP_SHUTDOWN: u32 = 7;

/// Callbacks (host-API entries proxied to the server).
pub const CB_LOG: u32 = 1;
pub const CB_KV_GET: u32 = 2;
pub const CB_KV_PUT: u32 = 3;
pub const CB_KV_DELETE: u32 = 4;
pub const CB_HOSTFN_LOOKUP: u32 = 5;
pub const CB_HOSTFN_CALL: u32 = 6;
pub const CB_KV_SCAN: u32 = 7;
pub const CB_STORAGE_GET: u32 = 8;
pub const CB_STORAGE_PUT: u32 = 9;
pub const CB_STORAGE_DELETE: u32 = 10;
pub const CB_STORAGE_SCAN: u32 = 11;
pub const CB_SINK_ERROR: u32 = 12;
pub const CB_METRIC_DEFINE: u32 = 13;
/// `cb_arg`: 0 add, 1 set, 2 observe.
pub const CB_METRIC_UPDATE: u32 = 14;
pub const CB_RPC_REGISTER: u32 = 15;
/// The output area is full: the server appends its first `cb_len` bytes to the call's output
/// and the worker starts over at its beginning (outputs longer than the area stream through).
pub const CB_OUTPUT_FLUSH: u32 = 16;

/// A slot's header: the words both processes read and write.
#[repr(C)]
pub struct SlotHeader {
    pub state: AtomicU32,
    pub server_sleeping: AtomicU32,
    pub worker_sleeping: AtomicU32,
    pub op: AtomicU32,
    pub function: AtomicU32,
    pub rc: AtomicI32,
    pub refused: AtomicU32,
    pub cancel: AtomicU32,
    pub in_len: AtomicU64,
    pub out_len: AtomicU64,
    pub out_limit: AtomicU64,
    /// CLOCK_MONOTONIC nanoseconds after which `cancelled()` answers 1 (0: no deadline).
    pub expires_ns: AtomicU64,
    pub cb_op: AtomicU32,
    pub cb_arg: AtomicI32,
    pub cb_len: AtomicU64,
    pub cb_len2: AtomicU64,
    pub cb_ret: AtomicI64,
}

/// The mapping of a call area (unmapped on drop).
pub struct Shm {
    base: *mut u8,
    len: usize,
    nslots: usize,
}

// SAFETY: the mapping is shared memory accessed through atomics (headers) and raw copies
// ordered by the state word's release/acquire; the pointer itself is immutable.
unsafe impl Send for Shm {}
// SAFETY: as for Send; concurrent access is per slot, coordinated by the slot's state word.
unsafe impl Sync for Shm {}

pub fn area_len(nslots: u32) -> usize {
    PAGE + nslots as usize * SLOT_STRIDE
}

/// Create the sealed memfd of a call area for `nslots` slots.
pub fn create(nslots: u32) -> Result<OwnedFd> {
    use rustix::fs::{MemfdFlags, SealFlags};
    let fd = rustix::fs::memfd_create("keel-sandbox-calls", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
        .map_err(|e| err!(KEEL_ERR_SANDBOX_START, "memfd_create for the call area failed: {e}"))?;
    rustix::fs::ftruncate(&fd, area_len(nslots) as u64)
        .map_err(|e| err!(KEEL_ERR_SANDBOX_START, "sizing the call area failed: {e}"))?;
    rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)
        .map_err(|e| err!(KEEL_ERR_SANDBOX_START, "sealing the call area failed: {e}"))?;
    Ok(fd)
}

impl Shm {
    /// Map the call area of `nslots` slots held by `fd`.
    pub fn map(fd: BorrowedFd<'_>, nslots: u32) -> std::io::Result<Shm> {
        let len = area_len(nslots);
        // SAFETY: a fresh shared mapping of `len` bytes of the memfd; no existing memory is
        // affected. The memfd is at least `len` bytes (sized, and sealed against shrinking,
        // before it is shared; the sandbox checks its size before mapping).
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Shm {
            base: p as *mut u8,
            len,
            nslots: nslots as usize,
        })
    }

    pub fn nslots(&self) -> usize {
        self.nslots
    }

    fn slot_base(&self, i: usize) -> *mut u8 {
        assert!(i < self.nslots);
        // SAFETY: i < nslots: the slot lies inside the mapping.
        unsafe { self.base.add(PAGE + i * SLOT_STRIDE) }
    }

    pub fn header(&self, i: usize) -> &SlotHeader {
        // SAFETY: the slot's first page is inside the mapping, page-aligned, and holds only
        // atomics (every bit pattern valid); it lives as long as `self`.
        unsafe { &*(self.slot_base(i) as *const SlotHeader) }
    }

    pub fn input(&self, i: usize) -> *mut u8 {
        // SAFETY: inside slot i (see SLOT_STRIDE).
        unsafe { self.slot_base(i).add(PAGE) }
    }

    pub fn output(&self, i: usize) -> *mut u8 {
        // SAFETY: inside slot i (see SLOT_STRIDE).
        unsafe { self.slot_base(i).add(PAGE + IN_CAP) }
    }

    pub fn callback(&self, i: usize) -> *mut u8 {
        // SAFETY: inside slot i (see SLOT_STRIDE).
        unsafe { self.slot_base(i).add(PAGE + IN_CAP + OUT_CAP) }
    }
}

impl Drop for Shm {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping this value created; no reference into it outlives
        // `self` (accessors borrow `self`).
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.len) };
    }
}

/// `FUTEX_WAIT` (shared: the word is in a `MAP_SHARED` mapping) while `word == expected`, at
/// most `timeout`.
pub fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    let ts = timeout.map(|d| libc::timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    });
    let tsp = ts.as_ref().map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: FUTEX_WAIT reads the aligned u32 at `word` (valid for the call) and sleeps; the
    // timespec outlives the call.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            tsp,
            std::ptr::null::<u32>(),
            0u32,
        )
    };
}

/// `FUTEX_WAKE` (shared) of up to `n` waiters on `word`.
pub fn futex_wake(word: &AtomicU32, n: i32) {
    // SAFETY: FUTEX_WAKE only uses the address as a key; `word` is valid.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            n,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        )
    };
}

/// Store a new state and wake the other side if it sleeps (`other_sleeping`): with both the
/// store and the waiter's flag store sequentially consistent, either the waker sees the flag
/// or the waiter sees the new state before it sleeps (no lost wake-up).
#[inline]
pub fn publish(h: &SlotHeader, state: u32, other_sleeping: &AtomicU32) {
    h.state.store(state, Ordering::SeqCst);
    if other_sleeping.load(Ordering::SeqCst) != 0 {
        futex_wake(&h.state, i32::MAX);
    }
}

/// Compare-and-publish: as [`publish`], only if the state is still `from` (the monitor may
/// have marked the slot [`DEAD`]). Returns whether it was published.
#[inline]
pub fn publish_from(h: &SlotHeader, from: u32, state: u32, other_sleeping: &AtomicU32) -> bool {
    if h.state
        .compare_exchange(from, state, Ordering::SeqCst, Ordering::SeqCst)
        .is_err()
    {
        return false;
    }
    if other_sleeping.load(Ordering::SeqCst) != 0 {
        futex_wake(&h.state, i32::MAX);
    }
    true
}

/// An adaptive spin budget (nanoseconds) for one side of a slot or process: a wait that the
/// spin satisfied grows it, one that had to sleep halves it, between [`Spin::MIN_NS`] and
/// [`Spin::MAX_NS`]. On an idle machine the other process answers within the spin and no
/// system call is made; on an oversubscribed one the budget decays and the waiter sleeps on
/// the futex at once instead of burning the time slice its peer needs.
pub struct Spin(AtomicU32);

impl Spin {
    pub const MIN_NS: u32 = 2_000;
    pub const MAX_NS: u32 = 50_000;

    pub const fn new() -> Spin {
        Spin(AtomicU32::new(Spin::MIN_NS * 4))
    }

    fn budget(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::Relaxed) as u64)
    }

    fn hit(&self) {
        let b = self.0.load(Ordering::Relaxed);
        self.0.store((b + b / 2 + 1_000).min(Spin::MAX_NS), Ordering::Relaxed);
    }

    fn miss(&self) {
        let b = self.0.load(Ordering::Relaxed);
        self.0.store((b / 2).max(Spin::MIN_NS), Ordering::Relaxed);
    }
}

impl Default for Spin {
    fn default() -> Self {
        Spin::new()
    }
}

/// Wait until `pred(state)`: spin (adaptively, see [`Spin`]; yielding the CPU after the first
/// couple of microseconds so that a peer waiting for a core gets it), then sleep on the futex
/// (flagging `sleeping`), waking at least every `tick` to run `on_tick` (which may stop the
/// wait by returning `false`). Returns the state that satisfied `pred`, or `None` if `on_tick`
/// stopped the wait.
#[inline]
pub fn wait_for(
    h: &SlotHeader,
    sleeping: &AtomicU32,
    pred: impl Fn(u32) -> bool,
    spin: &Spin,
    tick: Option<Duration>,
    mut on_tick: impl FnMut() -> bool,
) -> Option<u32> {
    let s = h.state.load(Ordering::Acquire);
    if pred(s) {
        return Some(s);
    }
    let budget = spin.budget();
    let start = Instant::now();
    loop {
        for _ in 0..32 {
            std::hint::spin_loop();
            let s = h.state.load(Ordering::Acquire);
            if pred(s) {
                spin.hit();
                return Some(s);
            }
        }
        let elapsed = start.elapsed();
        if elapsed >= budget {
            break;
        }
        if elapsed >= Duration::from_nanos(Spin::MIN_NS as u64) {
            std::thread::yield_now();
        }
    }
    spin.miss();
    loop {
        sleeping.store(1, Ordering::SeqCst);
        let s = h.state.load(Ordering::SeqCst);
        if pred(s) {
            sleeping.store(0, Ordering::Relaxed);
            return Some(s);
        }
        futex_wait(&h.state, s, tick);
        sleeping.store(0, Ordering::Relaxed);
        let s = h.state.load(Ordering::Acquire);
        if pred(s) {
            return Some(s);
        }
        if tick.is_some() && !on_tick() {
            return None;
        }
    }
}

/// CLOCK_MONOTONIC in nanoseconds (the clock `Instant` reads on Linux; the same in both
/// processes).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The bootstrap record the server sends with the two descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bootstrap {
    pub nslots: u32,
    /// `API_*` bits: which host-API entries the plugin was granted.
    pub api: u64,
    /// `RLIMIT_AS` in bytes (0: none).
    pub memory_limit: u64,
    /// `RLIMIT_CPU` in seconds (0: none).
    pub cpu_limit: u64,
    /// The server's pid (the sandbox checks it is its parent).
    pub parent: u64,
}

pub const BOOT_MAGIC: u64 = 0x4b45_454c_5342_0001;
pub const BOOT_LEN: usize = 8 * 6;

pub const API_LOG: u64 = 1;
pub const API_CLOCK: u64 = 2;
pub const API_RANDOM: u64 = 4;
pub const API_KV_READ: u64 = 8;
pub const API_KV_WRITE: u64 = 16;
pub const API_STORAGE_READ: u64 = 32;
pub const API_STORAGE_WRITE: u64 = 64;
pub const API_METRICS: u64 = 128;
pub const API_RPC: u64 = 256;

impl Bootstrap {
    pub fn encode(&self) -> [u8; BOOT_LEN] {
        let words = [
            BOOT_MAGIC,
            self.nslots as u64,
            self.api,
            self.memory_limit,
            self.cpu_limit,
            self.parent,
        ];
        let mut out = [0u8; BOOT_LEN];
        for (i, w) in words.iter().enumerate() {
            out[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
        }
        out
    }

    pub fn decode(b: &[u8]) -> Option<Bootstrap> {
        if b.len() != BOOT_LEN {
            return None;
        }
        let w = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
        if w(0) != BOOT_MAGIC || w(1) == 0 || w(1) > MAX_SLOTS as u64 {
            return None;
        }
        Some(Bootstrap {
            nslots: w(1) as u32,
            api: w(2),
            memory_limit: w(3),
            cpu_limit: w(4),
            parent: w(5),
        })
    }
}

/// The sandbox's answer after loading the plugin: status 0 and the vtable facts, or a
/// `keel_status` code; the function names (NUL-separated) or the error message are in slot
/// 0's output area (`len` bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    pub status: u32,
    pub flags: u32,
    /// `HOOK_*` bits.
    pub hooks: u32,
    pub nfunctions: u32,
    pub len: u64,
}

pub const HELLO_LEN: usize = 24;
pub const HOOK_SAVE: u32 = 1;
pub const HOOK_RESTORE: u32 = 2;
pub const HOOK_RESTORE_VERSIONED: u32 = 4;
pub const HOOK_HEALTH: u32 = 8;

impl Hello {
    pub fn encode(&self) -> [u8; HELLO_LEN] {
        let mut o = [0u8; HELLO_LEN];
        o[0..4].copy_from_slice(&self.status.to_le_bytes());
        o[4..8].copy_from_slice(&self.flags.to_le_bytes());
        o[8..12].copy_from_slice(&self.hooks.to_le_bytes());
        o[12..16].copy_from_slice(&self.nfunctions.to_le_bytes());
        o[16..24].copy_from_slice(&self.len.to_le_bytes());
        o
    }

    pub fn decode(b: &[u8]) -> Option<Hello> {
        if b.len() != HELLO_LEN {
            return None;
        }
        let u = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap_or([0; 4]));
        Some(Hello {
            status: u(0),
            flags: u(4),
            hooks: u(8),
            nfunctions: u(12),
            len: u64::from_le_bytes(b[16..24].try_into().unwrap_or([0; 8])),
        })
    }
}

/// Send `data` and `fds` as one `SCM_RIGHTS` message on the socket `sock`.
pub fn send_with_fds(sock: BorrowedFd<'_>, data: &[u8], fds: &[BorrowedFd<'_>]) -> std::io::Result<()> {
    use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut anc = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !anc.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(std::io::Error::other("too many descriptors"));
    }
    let n = sendmsg(sock, &[std::io::IoSlice::new(data)], &mut anc, SendFlags::NOSIGNAL)?;
    if n != data.len() {
        return Err(std::io::Error::other("short send"));
    }
    Ok(())
}

/// Receive one message of at most `buf.len()` bytes and up to 4 descriptors from `sock`.
/// Returns the bytes received (0: the peer closed) and the descriptors.
pub fn recv_with_fds(sock: BorrowedFd<'_>, buf: &mut [u8]) -> std::io::Result<(usize, Vec<OwnedFd>)> {
    use rustix::net::{recvmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut anc = RecvAncillaryBuffer::new(&mut space);
    let r = recvmsg(
        sock,
        &mut [std::io::IoSliceMut::new(buf)],
        &mut anc,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for m in anc.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = m {
            fds.extend(rights);
        }
    }
    Ok((r.bytes, fds))
}
