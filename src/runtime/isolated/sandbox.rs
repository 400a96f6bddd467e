//! The sandbox side: what `keel-sandbox` runs (see docs/isolation.md for the order of steps).
//!
//! Everything here runs in the sandbox process, never in the server. It receives the
//! plugin's sealed memfd and the call area over fd 3, sets its limits, `dlopen`s the plugin,
//! starts one worker per call slot, drops to the seccomp allowlist, checks the vtable exactly
//! as the in-process runtime does and serves requests until the server's end of the socket
//! closes.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::ffi::{c_char, c_void};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Mutex, OnceLock};

use super::shm::*;
use crate::error::keel_status;
use crate::runtime::native::{copy_vtable, read_function_names, RawHostApi, RawOutput, RawVtable, ABI_VERSION};
use crate::runtime::native::{ENTRY_SYMBOL, FLAG_SERIAL};
use crate::runtime::output::{WRITE_BAD_ARGUMENT, WRITE_REFUSED};

/// The socket to the server: fd 3 (placed there by the spawner before `execve`).
pub const SOCKET_FD: i32 = 3;

struct Plugin {
    vt: RawVtable,
    serial: Option<Mutex<()>>,
}

// SAFETY: the vtable's pointers are the plugin's static code and data, valid for the
// process's life; the plugin is thread-safe unless it set FLAG_SERIAL (then `serial` locks).
unsafe impl Sync for Plugin {}
// SAFETY: as for Sync.
unsafe impl Send for Plugin {}

struct Api(RawHostApi);
// SAFETY: the table holds function pointers and a NULL ctx only.
unsafe impl Sync for Api {}
// SAFETY: as for Sync.
unsafe impl Send for Api {}

static SHM: OnceLock<Shm> = OnceLock::new();
static PLUGIN: OnceLock<Plugin> = OnceLock::new();
static API: OnceLock<Api> = OnceLock::new();
static INSTANCE: AtomicPtr<c_void> = AtomicPtr::new(std::ptr::null_mut());

thread_local! {
    /// The slot the current worker thread serves (`usize::MAX`: not a worker).
    static SLOT: Cell<usize> = const { Cell::new(usize::MAX) };
}

fn die(msg: &str) -> ! {
    let _ = std::io::Write::write_all(&mut std::io::stderr(), format!("keel-sandbox: {msg}\n").as_bytes());
    // SAFETY: ending the process; nothing is left to clean up.
    unsafe { libc::_exit(70) }
}

/// The sandbox's `main`. Never returns.
pub fn sandbox_main() -> ! {
    // A panic in Keel's sandbox code ends the sandbox (reported as a crash), never a stuck slot.
    std::panic::set_hook(Box::new(|_| std::process::abort()));
    // SAFETY: fd 3 was placed by the spawner for this process alone; owned from here on.
    let sock = unsafe { OwnedFd::from_raw_fd(SOCKET_FD) };
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) };
    let mut buf = [0u8; BOOT_LEN];
    let (n, mut fds) = match recv_with_fds(sock.as_fd(), &mut buf) {
        Ok(r) => r,
        Err(e) => die(&format!("receiving the bootstrap failed: {e}")),
    };
    let Some(boot) = Bootstrap::decode(&buf[..n]) else {
        die("bad bootstrap record");
    };
    if fds.len() != 2 {
        die("expected two descriptors");
    }
    // SAFETY: getppid has no preconditions.
    if unsafe { libc::getppid() } as u64 != boot.parent {
        die("the server is gone");
    }
    let shm_fd = fds.pop().unwrap_or_else(|| die("no call area"));
    let plugin_fd = fds.pop().unwrap_or_else(|| die("no plugin"));

    set_limits(&boot);

    match rustix::fs::fstat(&shm_fd) {
        Ok(st) if st.st_size as u64 >= area_len(boot.nslots) as u64 => {}
        _ => die("call area too small"),
    }
    let area = Shm::map(shm_fd.as_fd(), boot.nslots).unwrap_or_else(|e| die(&format!("mapping the call area: {e}")));
    drop(shm_fd);
    let _ = SHM.set(area);
    let _ = API.set(Api(host_api(boot.api)));

    // dlopen: the plugin's ELF constructors run here, under the loader's filter (the main
    // allowlist plus read-only opens and stats for the dynamic loader; see docs/isolation.md).
    if let Err(e) = install_seccomp(true) {
        hello_error(
            &sock,
            keel_status::KEEL_ERR_SANDBOX_START,
            &format!("installing the loader's seccomp filter failed: {e}"),
        );
        die("seccomp failed");
    }
    let path = format!("/proc/self/fd/{}", plugin_fd.as_raw_fd());
    // SAFETY: loading the verified, sealed plugin image; its initialisers run in this sandbox.
    let lib = match unsafe { libloading::os::unix::Library::open(Some(&path), libc::RTLD_NOW | libc::RTLD_LOCAL) } {
        Ok(l) => l,
        Err(e) => {
            hello_error(
                &sock,
                keel_status::KEEL_ERR_LIBRARY_LOAD,
                &format!("dlopen failed: {e}"),
            );
            die("dlopen failed");
        }
    };

    for i in 0..boot.nslots as usize {
        if std::thread::Builder::new()
            .name(format!("keel-sbx-{i}"))
            .spawn(move || worker(i))
            .is_err()
        {
            die("starting a worker failed");
        }
    }

    if let Err(e) = install_seccomp(false) {
        hello_error(
            &sock,
            keel_status::KEEL_ERR_SANDBOX_START,
            &format!("installing the seccomp filter failed: {e}"),
        );
        die("seccomp failed");
    }

    // From here on plugin code runs only under the filter.
    let hello = load_vtable(&lib);
    match hello {
        Ok((plugin, names)) => {
            let shm = shm();
            let mut len = 0usize;
            for n in &names {
                let b = n.as_bytes();
                if len + b.len() + 1 > OUT_CAP {
                    break;
                }
                // SAFETY: within slot 0's output area (bounded above); nobody else uses it yet.
                unsafe {
                    std::ptr::copy_nonoverlapping(b.as_ptr(), shm.output(0).add(len), b.len());
                    *shm.output(0).add(len + b.len()) = 0;
                }
                len += b.len() + 1;
            }
            let h = Hello {
                status: 0,
                flags: plugin.vt.flags,
                hooks: hooks(&plugin.vt),
                nfunctions: names.len() as u32,
                len: len as u64,
            };
            let _ = PLUGIN.set(plugin);
            send_hello(&sock, &h);
        }
        Err(e) => {
            hello_error(&sock, e.status(), e.message());
            die("bad vtable");
        }
    }
    // Keep the library and its memfd for the process's life.
    std::mem::forget(lib);
    std::mem::forget(plugin_fd);

    // Block until the server's end closes (unload, or the server died): then end.
    let mut b = [0u8; 16];
    loop {
        match rustix::io::read(&sock, &mut b) {
            Ok(0) => break,
            Ok(_) => continue,
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => break,
        }
    }
    // SAFETY: ending the process.
    unsafe { libc::_exit(0) }
}

fn shm() -> &'static Shm {
    SHM.get().unwrap_or_else(|| die("no call area"))
}

fn set_limits(boot: &Bootstrap) {
    let set_soft_hard = |res: libc::__rlimit_resource_t, soft: u64, hard: u64| {
        let r = libc::rlimit {
            rlim_cur: soft,
            rlim_max: hard,
        };
        // SAFETY: setrlimit reads the struct it is given.
        if unsafe { libc::setrlimit(res, &r) } != 0 {
            die("setrlimit failed");
        }
    };
    let set = |res: libc::__rlimit_resource_t, v: u64| set_soft_hard(res, v, v);
    set(libc::RLIMIT_CORE, 0);
    set(libc::RLIMIT_FSIZE, 0);
    set(libc::RLIMIT_NOFILE, 32);
    if boot.memory_limit > 0 {
        set(libc::RLIMIT_AS, boot.memory_limit);
    }
    if boot.cpu_limit > 0 {
        // SIGXCPU at the soft limit (reported as KEEL_ERR_CPU_BUDGET); SIGKILL at the hard
        // limit a second later only if SIGXCPU was survived.
        set_soft_hard(libc::RLIMIT_CPU, boot.cpu_limit, boot.cpu_limit.saturating_add(1));
    }
}

fn send_hello(sock: &OwnedFd, h: &Hello) {
    // write(2): one SEQPACKET message (sendmsg is not in the allowlist).
    let b = h.encode();
    if rustix::io::write(sock, &b) != Ok(b.len()) {
        die("sending hello failed");
    }
}

fn hello_error(sock: &OwnedFd, status: keel_status, msg: &str) {
    let shm = shm();
    let b = &msg.as_bytes()[..msg.len().min(OUT_CAP)];
    // SAFETY: within slot 0's output area; no worker serves yet.
    unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), shm.output(0), b.len()) };
    send_hello(
        sock,
        &Hello {
            status: status as u32,
            flags: 0,
            hooks: 0,
            nfunctions: 0,
            len: b.len() as u64,
        },
    );
}

fn load_vtable(lib: &libloading::os::unix::Library) -> crate::error::Result<(Plugin, Vec<String>)> {
    // SAFETY: looking up a symbol by name; its type is fixed by keel_plugin.h.
    let entry = unsafe { lib.get::<unsafe extern "C" fn() -> *const RawVtable>(ENTRY_SYMBOL) }.map_err(|_| {
        crate::err!(
            KEEL_ERR_SYMBOL_MISSING,
            "the plugin does not export keel_plugin_entry (not a Keel native plugin)"
        )
    })?;
    // SAFETY: calling the plugin's entry per the ABI (under seccomp).
    let vt = unsafe { entry() };
    if vt.is_null() {
        crate::bail!(KEEL_ERR_PLUGIN_ABI_VIOLATION, "keel_plugin_entry returned NULL");
    }
    let v = copy_vtable(vt, "sandboxed plugin")?;
    if v.init.is_none() || v.call.is_none() || v.shutdown.is_none() {
        crate::bail!(KEEL_ERR_PLUGIN_ABI_VIOLATION, "vtable lacks init, call or shutdown");
    }
    let names = read_function_names(&v, "sandboxed plugin")?;
    let serial = (v.flags & FLAG_SERIAL != 0).then(|| Mutex::new(()));
    Ok((Plugin { vt: v, serial }, names))
}

fn hooks(v: &RawVtable) -> u32 {
    let mut h = 0;
    if v.save_state.is_some() {
        h |= HOOK_SAVE;
    }
    if v.restore_state.is_some() {
        h |= HOOK_RESTORE;
    }
    if v.restore_state_versioned.is_some() {
        h |= HOOK_RESTORE_VERSIONED;
    }
    if v.health.is_some() {
        h |= HOOK_HEALTH;
    }
    h
}

/// Where a hook's output goes: the slot's output area, up to `limit`.
struct SlotOut {
    /// The slot (for the flush callback).
    slot: usize,
    base: *mut u8,
    /// Bytes in the output area now.
    len: usize,
    /// Bytes already handed to the server by flushes.
    flushed: usize,
    /// The call's output limit (all of its output, flushed or not).
    limit: usize,
    refused: bool,
}

/// `keel_output.write` into a slot's output area.
///
/// # Safety
/// `ctx` is the live `SlotOut` of the output handed to the hook; `data` points to `len`
/// readable bytes (or is NULL with `len == 0`).
unsafe extern "C" fn slot_write(ctx: *mut c_void, data: *const u8, len: usize) -> i32 {
    if ctx.is_null() || (data.is_null() && len != 0) {
        return WRITE_BAD_ARGUMENT;
    }
    // SAFETY: ctx is the SlotOut of the running hook, used by this thread only.
    let o = unsafe { &mut *(ctx as *mut SlotOut) };
    if len > o.limit.saturating_sub(o.flushed + o.len) {
        o.refused = true;
        return WRITE_REFUSED;
    }
    let mut done = 0;
    while done < len {
        if o.len == OUT_CAP {
            // The area is full: the server takes it (on the calling server thread, which
            // waits for this call) and the area starts over.
            if callback(o.slot, CB_OUTPUT_FLUSH, 0, o.len, 0) != 0 {
                o.refused = true;
                return WRITE_REFUSED;
            }
            o.flushed += o.len;
            o.len = 0;
        }
        let n = (len - done).min(OUT_CAP - o.len);
        // SAFETY: o.len + n <= OUT_CAP, the output area's size; `data` has len bytes, of
        // which [done, done + n) are copied.
        unsafe { std::ptr::copy_nonoverlapping(data.add(done), o.base.add(o.len), n) };
        o.len += n;
        done += n;
    }
    0
}

fn worker(i: usize) {
    SLOT.with(|s| s.set(i));
    let shm = shm();
    let h = shm.header(i);
    let spin = Spin::new();
    loop {
        let Some(s) = wait_for(
            h,
            &h.worker_sleeping,
            |s| s == REQUEST || s == DEAD,
            &spin,
            None,
            || true,
        ) else {
            continue;
        };
        if s == DEAD {
            return;
        }
        serve(shm, i, h);
        publish_from(h, REQUEST, DONE, &h.server_sleeping);
    }
}

fn serve(shm: &Shm, i: usize, h: &SlotHeader) {
    let op = h.op.load(Ordering::Relaxed);
    let in_len = (h.in_len.load(Ordering::Relaxed) as usize).min(IN_CAP);
    let input = shm.input(i) as *const u8;
    let mut out = SlotOut {
        slot: i,
        base: shm.output(i),
        len: 0,
        flushed: 0,
        limit: h.out_limit.load(Ordering::Relaxed) as usize,
        refused: false,
    };
    let raw = RawOutput {
        ctx: &mut out as *mut SlotOut as *mut c_void,
        write: slot_write,
    };
    let Some(p) = PLUGIN.get() else {
        h.rc.store(i32::MIN, Ordering::Relaxed);
        return;
    };
    let _serial = p.serial.as_ref().map(|m| m.lock().unwrap_or_else(|e| e.into_inner()));
    let inst = INSTANCE.load(Ordering::Acquire);
    let api = API.get().map_or(std::ptr::null(), |a| &a.0 as *const RawHostApi);
    // Every arm calls one of the plugin's hooks per the ABI: the input area holds `in_len`
    // bytes (bounded by IN_CAP), `raw` and `out` live for the call, `inst` came from init.
    let rc = match op {
        OP_CALL => match p.vt.call {
            // SAFETY: see above.
            Some(call) => unsafe { call(inst, h.function.load(Ordering::Relaxed), input, in_len, &raw) },
            None => i32::MIN,
        },
        OP_INIT => match p.vt.init {
            Some(init) => {
                // The server wrote a NUL after the config (in_len < IN_CAP).
                let mut instance = std::ptr::null_mut();
                // SAFETY: see above; `api` is the sandbox's static host-API table.
                let rc = unsafe { init(input as *const c_char, in_len, api, &mut instance, &raw) };
                if rc == 0 {
                    INSTANCE.store(instance, Ordering::Release);
                }
                rc
            }
            None => i32::MIN,
        },
        OP_SAVE => match p.vt.save_state {
            // SAFETY: see above.
            Some(save) => unsafe { save(inst, &raw) },
            None => i32::MIN,
        },
        OP_RESTORE => match p.vt.restore_state {
            // SAFETY: see above.
            Some(restore) => unsafe { restore(inst, input, in_len) },
            None => i32::MIN,
        },
        OP_RESTORE_VERSIONED => match p.vt.restore_state_versioned {
            // The version follows the state, NUL-terminated (written by the server).
            Some(restore) => {
                let state_len = (h.function.load(Ordering::Relaxed) as usize).min(in_len);
                // SAFETY: see above; the version starts at state_len inside the input area
                // and the server terminated it (and the whole input) with a NUL.
                unsafe { restore(inst, input, state_len, input.add(state_len) as *const c_char) }
            }
            None => i32::MIN,
        },
        OP_HEALTH => match p.vt.health {
            // SAFETY: see above.
            Some(health) => unsafe { health(inst) },
            None => i32::MIN,
        },
        OP_SHUTDOWN => {
            let inst = INSTANCE.swap(std::ptr::null_mut(), Ordering::AcqRel);
            if let (Some(shutdown), false) = (p.vt.shutdown, inst.is_null()) {
                // SAFETY: see above; called once (the instance pointer was taken).
                unsafe { shutdown(inst) };
            }
            0
        }
        _ => i32::MIN,
    };
    h.rc.store(rc, Ordering::Relaxed);
    h.out_len.store(out.len as u64, Ordering::Relaxed);
    h.refused.store(out.refused as u32, Ordering::Relaxed);
}

// ---- the host API inside the sandbox --------------------------------------------------

fn host_api(bits: u64) -> RawHostApi {
    let has = |b: u64| bits & b != 0;
    RawHostApi {
        abi_version: ABI_VERSION,
        // The whole table; entries this sandbox does not serve yet are NULL (absent).
        struct_size: std::mem::size_of::<RawHostApi>() as u32,
        ctx: std::ptr::null_mut(),
        log: has(API_LOG).then_some(sb_log as _),
        now_unix_nanos: has(API_CLOCK).then_some(sb_now as _),
        random_bytes: has(API_RANDOM).then_some(sb_random as _),
        kv_get: has(API_KV_READ).then_some(sb_kv_get as _),
        kv_put: has(API_KV_WRITE).then_some(sb_kv_put as _),
        kv_delete: has(API_KV_WRITE).then_some(sb_kv_delete as _),
        cancelled: Some(sb_cancelled as _),
        kv_scan: has(API_KV_READ).then_some(sb_kv_scan as _),
        storage_get: has(API_STORAGE_READ).then_some(sb_storage_get as _),
        storage_put: has(API_STORAGE_WRITE).then_some(sb_storage_put as _),
        storage_delete: has(API_STORAGE_WRITE).then_some(sb_storage_delete as _),
        storage_scan: has(API_STORAGE_READ).then_some(sb_storage_scan as _),
        sink_error: has(API_KV_READ | API_KV_WRITE | API_STORAGE_READ | API_STORAGE_WRITE)
            .then_some(sb_sink_error as _),
        metric_define: has(API_METRICS).then_some(sb_metric_define as _),
        metric_add: has(API_METRICS).then_some(sb_metric_add as _),
        metric_set: has(API_METRICS).then_some(sb_metric_set as _),
        metric_observe: has(API_METRICS).then_some(sb_metric_observe as _),
        rpc_register: has(API_RPC).then_some(sb_rpc_register as _),
        host_fn_lookup: Some(sb_host_fn_lookup as _),
        host_fn_call: Some(sb_host_fn_call as _),
    }
}

/// The calling worker's slot, if this thread is a worker.
fn my_slot() -> Option<usize> {
    let i = SLOT.with(|s| s.get());
    (i != usize::MAX).then_some(i)
}

/// Ask the server to run callback `op` with the slot's callback area as written; returns its
/// `cb_ret` (or -3 if the server is gone).
fn callback(i: usize, op: u32, arg: i32, len: usize, len2: usize) -> i64 {
    let h = shm().header(i);
    h.cb_op.store(op, Ordering::Relaxed);
    h.cb_arg.store(arg, Ordering::Relaxed);
    h.cb_len.store(len as u64, Ordering::Relaxed);
    h.cb_len2.store(len2 as u64, Ordering::Relaxed);
    if !publish_from(h, REQUEST, CALLBACK, &h.server_sleeping) {
        return -3;
    }
    thread_local! {
        // Each worker's own budget (one shared by all workers was written by every callback
        // of every worker, the line bouncing between their cores).
        static CALLBACK_SPIN: Spin = const { Spin::new() };
    }
    let r = CALLBACK_SPIN.with(|spin| {
        wait_for(
            h,
            &h.worker_sleeping,
            |s| s == CALLBACK_DONE || s == DEAD,
            spin,
            None,
            || true,
        )
    });
    match r {
        Some(CALLBACK_DONE) => {
            let r = h.cb_ret.load(Ordering::Relaxed);
            let _ = h
                .state
                .compare_exchange(CALLBACK_DONE, REQUEST, Ordering::AcqRel, Ordering::Relaxed);
            r
        }
        _ => -3,
    }
}

/// Copy `parts` one after the other into slot `i`'s callback area; false if they do not fit.
fn put_cb(i: usize, parts: &[(*const u8, usize)]) -> bool {
    let total: usize = parts.iter().map(|p| p.1).sum();
    if total > CB_CAP {
        return false;
    }
    let mut at = 0;
    for &(p, n) in parts {
        if n > 0 {
            if p.is_null() {
                return false;
            }
            // SAFETY: `p` points to n readable bytes (the plugin's arguments per the ABI); the
            // destination lies within the callback area (total <= CB_CAP).
            unsafe { std::ptr::copy_nonoverlapping(p, shm().callback(i).add(at), n) };
        }
        at += n;
    }
    true
}

/// # Safety
/// `msg` points to `len` readable bytes.
unsafe extern "C" fn sb_log(_ctx: *mut c_void, level: i32, msg: *const c_char, len: usize) {
    let Some(i) = my_slot() else { return };
    let len = len.min(CB_CAP);
    if put_cb(i, &[(msg as *const u8, len)]) {
        callback(i, CB_LOG, level, len, 0);
    }
}

unsafe extern "C" fn sb_now(_ctx: *mut c_void) -> i64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

/// # Safety
/// `buf` points to `len` writable bytes.
unsafe extern "C" fn sb_random(_ctx: *mut c_void, buf: *mut u8, len: usize) -> i32 {
    if buf.is_null() && len != 0 {
        return -1;
    }
    let mut done = 0;
    while done < len {
        // SAFETY: getrandom writes at most len - done bytes at buf + done (inside the buffer).
        let n = unsafe { libc::getrandom(buf.add(done) as *mut c_void, len - done, 0) };
        if n < 0 {
            return -1;
        }
        done += n as usize;
    }
    0
}

/// # Safety
/// `key` points to `key_len` readable bytes; `out` is a live `keel_output`.
unsafe extern "C" fn sb_kv_get(_ctx: *mut c_void, key: *const u8, key_len: usize, out: *const RawOutput) -> i32 {
    let Some(i) = my_slot() else { return -1 };
    if out.is_null() || !put_cb(i, &[(key, key_len)]) {
        return -1;
    }
    let r = callback(i, CB_KV_GET, 0, key_len, 0);
    if r != 0 {
        return r as i32;
    }
    let h = shm().header(i);
    let n = (h.cb_len.load(Ordering::Relaxed) as usize).min(CB_CAP);
    // SAFETY: `out` is the plugin's live keel_output; the value is n bytes of the callback area.
    if unsafe { ((*out).write)((*out).ctx, shm().callback(i), n) } != 0 {
        return -2;
    }
    0
}

/// # Safety
/// `key`/`val` point to `key_len`/`val_len` readable bytes.
unsafe extern "C" fn sb_kv_put(
    _ctx: *mut c_void,
    key: *const u8,
    key_len: usize,
    val: *const u8,
    val_len: usize,
) -> i32 {
    let Some(i) = my_slot() else { return -1 };
    if !put_cb(i, &[(key, key_len), (val, val_len)]) {
        return -1;
    }
    callback(i, CB_KV_PUT, 0, key_len + val_len, key_len) as i32
}

/// # Safety
/// `key` points to `key_len` readable bytes.
unsafe extern "C" fn sb_kv_delete(_ctx: *mut c_void, key: *const u8, key_len: usize) -> i32 {
    let Some(i) = my_slot() else { return -1 };
    if !put_cb(i, &[(key, key_len)]) {
        return -1;
    }
    callback(i, CB_KV_DELETE, 0, key_len, 0) as i32
}

/// Write the answer in slot i's callback area (`cb_len` bytes) to `out`; false if refused.
///
/// # Safety
/// `out` is a live `keel_output`.
unsafe fn answer_to(i: usize, out: *const RawOutput) -> bool {
    let n = (shm().header(i).cb_len.load(Ordering::Relaxed) as usize).min(CB_CAP);
    // SAFETY: `out` is the plugin's live keel_output; n bytes of the callback area.
    n == 0 || unsafe { ((*out).write)((*out).ctx, shm().callback(i), n) } == 0
}

/// Write the scan entries in slot i's callback area to `out`, one write per entry (as
/// in-process); false if `out` refused one.
///
/// # Safety
/// `out` is a live `keel_output`.
unsafe fn entries_to(i: usize, out: *const RawOutput) -> bool {
    let n = (shm().header(i).cb_len.load(Ordering::Relaxed) as usize).min(CB_CAP);
    // SAFETY: the first n bytes of the callback area, written by the server before it
    // answered; nothing writes them while this worker reads (the slot is this worker's).
    let area = unsafe { std::slice::from_raw_parts(shm().callback(i) as *const u8, n) };
    let mut at = 0;
    while at + 4 <= n {
        let k = u32::from_le_bytes([area[at], area[at + 1], area[at + 2], area[at + 3]]) as usize;
        let v_at = at + 4 + k;
        if v_at + 4 > n {
            break;
        }
        let v = u32::from_le_bytes([area[v_at], area[v_at + 1], area[v_at + 2], area[v_at + 3]]) as usize;
        let end = v_at + 4 + v;
        if end > n {
            break;
        }
        // SAFETY: `out` is live; the entry lies inside the area.
        if unsafe { ((*out).write)((*out).ctx, area[at..end].as_ptr(), end - at) } != 0 {
            return false;
        }
        at = end;
    }
    true
}

/// Stage a storage request in slot `i`'s callback area: `table`, its NUL, then `rest` (at
/// most two parts). The staged length, or `None` for a NULL table or too many bytes.
///
/// # Safety
/// `table` is NULL or a NUL-terminated string; each part of `rest` points to its length of
/// readable bytes (the plugin's arguments per the ABI).
unsafe fn put_table_cb(i: usize, table: *const c_char, rest: &[(*const u8, usize)]) -> Option<usize> {
    if table.is_null() {
        return None;
    }
    // SAFETY: per the ABI a NUL-terminated string.
    let t = unsafe { std::ffi::CStr::from_ptr(table) }.to_bytes_with_nul();
    let mut parts = [(t.as_ptr(), t.len()), (std::ptr::null(), 0), (std::ptr::null(), 0)];
    parts.get_mut(1..1 + rest.len())?.copy_from_slice(rest);
    put_cb(i, &parts).then(|| parts.iter().map(|p| p.1).sum())
}

/// # Safety
/// `prefix` points to `len` readable bytes; `out` is a live `keel_output`.
unsafe extern "C" fn sb_kv_scan(_ctx: *mut c_void, prefix: *const u8, len: usize, out: *const RawOutput) -> i32 {
    let Some(i) = my_slot() else { return -1 };
    if out.is_null() || !put_cb(i, &[(prefix, len)]) {
        return -1;
    }
    let r = callback(i, CB_KV_SCAN, 0, len, 0);
    // SAFETY: `out` is live (checked non-NULL).
    if (r == 0 || r == 2) && !unsafe { entries_to(i, out) } {
        return 2;
    }
    r as i32
}

/// # Safety
/// As the in-process `storage_get`.
unsafe extern "C" fn sb_storage_get(
    _ctx: *mut c_void,
    table: *const c_char,
    key: *const u8,
    key_len: usize,
    out: *const RawOutput,
) -> i32 {
    let Some(i) = my_slot() else { return -1 };
    if out.is_null() {
        return -1;
    }
    // SAFETY: `table` and the parts per the ABI.
    let Some(n) = (unsafe { put_table_cb(i, table, &[(key, key_len)]) }) else {
        return -1;
    };
    let r = callback(i, CB_STORAGE_GET, 0, n, 0);
    // SAFETY: `out` is live (checked non-NULL).
    if r == 0 && !unsafe { answer_to(i, out) } {
        return -2;
    }
    r as i32
}

/// # Safety
/// As the in-process `storage_put`.
unsafe extern "C" fn sb_storage_put(
    _ctx: *mut c_void,
    table: *const c_char,
    key: *const u8,
    key_len: usize,
    val: *const u8,
    val_len: usize,
) -> i32 {
    let Some(i) = my_slot() else { return -1 };
    // SAFETY: `table` and the parts per the ABI.
    let Some(n) = (unsafe { put_table_cb(i, table, &[(key, key_len), (val, val_len)]) }) else {
        return -1;
    };
    callback(i, CB_STORAGE_PUT, 0, n, key_len) as i32
}

/// # Safety
/// As the in-process `storage_delete`.
unsafe extern "C" fn sb_storage_delete(_ctx: *mut c_void, table: *const c_char, key: *const u8, key_len: usize) -> i32 {
    let Some(i) = my_slot() else { return -1 };
    // SAFETY: `table` and the parts per the ABI.
    let Some(n) = (unsafe { put_table_cb(i, table, &[(key, key_len)]) }) else {
        return -1;
    };
    callback(i, CB_STORAGE_DELETE, 0, n, 0) as i32
}

/// # Safety
/// As the in-process `storage_scan`.
unsafe extern "C" fn sb_storage_scan(
    _ctx: *mut c_void,
    table: *const c_char,
    prefix: *const u8,
    len: usize,
    out: *const RawOutput,
) -> i32 {
    let Some(i) = my_slot() else { return -1 };
    if out.is_null() {
        return -1;
    }
    // SAFETY: `table` and the parts per the ABI.
    let Some(n) = (unsafe { put_table_cb(i, table, &[(prefix, len)]) }) else {
        return -1;
    };
    let r = callback(i, CB_STORAGE_SCAN, 0, n, 0);
    // SAFETY: `out` is live (checked non-NULL).
    if (r == 0 || r == 2) && !unsafe { entries_to(i, out) } {
        return 2;
    }
    r as i32
}

/// # Safety
/// `out` is a live `keel_output`.
unsafe extern "C" fn sb_sink_error(_ctx: *mut c_void, out: *const RawOutput) -> i32 {
    let Some(i) = my_slot() else { return -1 };
    if out.is_null() {
        return -1;
    }
    let r = callback(i, CB_SINK_ERROR, 0, 0, 0);
    // SAFETY: `out` is live (checked non-NULL).
    if r == 0 && !unsafe { answer_to(i, out) } {
        return -2;
    }
    r as i32
}

/// # Safety
/// As the in-process `metric_define`.
#[allow(clippy::too_many_arguments)]
unsafe extern "C" fn sb_metric_define(
    _ctx: *mut c_void,
    kind: i32,
    name: *const c_char,
    name_len: usize,
    labels: *const c_char,
    labels_len: usize,
    buckets: *const f64,
    bucket_count: usize,
    id: *mut u32,
) -> i32 {
    let null = keel_status::KEEL_ERR_NULL_POINTER as i32;
    let Some(i) = my_slot() else {
        return keel_status::KEEL_ERR_INTERNAL as i32;
    };
    if id.is_null()
        || (buckets.is_null() && bucket_count != 0)
        || (name.is_null() && name_len != 0)
        || (labels.is_null() && labels_len != 0)
    {
        return null;
    }
    if name_len > u32::MAX as usize || labels_len > u32::MAX as usize || bucket_count > (CB_CAP / 8) {
        return keel_status::KEEL_ERR_METRIC_INVALID as i32;
    }
    let head: Vec<u8> = [name_len as u32, labels_len as u32, bucket_count as u32]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let total = head.len() + name_len + labels_len + bucket_count * 8;
    if !put_cb(
        i,
        &[
            (head.as_ptr(), head.len()),
            (name as *const u8, name_len),
            (labels as *const u8, labels_len),
            (buckets as *const u8, bucket_count * 8),
        ],
    ) {
        return keel_status::KEEL_ERR_METRIC_INVALID as i32;
    }
    let r = callback(i, CB_METRIC_DEFINE, kind, total, 0);
    if r == 0 {
        let mut b = [0u8; 4];
        // SAFETY: 4 bytes of the callback area (the server's answer) into `b`.
        unsafe { std::ptr::copy_nonoverlapping(shm().callback(i), b.as_mut_ptr(), 4) };
        // SAFETY: `id` is the plugin's writable out-parameter (non-NULL checked above).
        unsafe { id.write(u32::from_le_bytes(b)) };
    }
    r as i32
}

/// # Safety
/// `endpoint`/`function` point to `endpoint_len`/`function_len` readable bytes.
unsafe extern "C" fn sb_rpc_register(
    _ctx: *mut c_void,
    endpoint: *const c_char,
    endpoint_len: usize,
    function: *const c_char,
    function_len: usize,
) -> i32 {
    let Some(i) = my_slot() else {
        return keel_status::KEEL_ERR_INTERNAL as i32;
    };
    if (endpoint.is_null() && endpoint_len != 0) || (function.is_null() && function_len != 0) {
        return keel_status::KEEL_ERR_NULL_POINTER as i32;
    }
    if endpoint_len > u32::MAX as usize {
        return keel_status::KEEL_ERR_INVALID_ARGUMENT as i32;
    }
    let head = (endpoint_len as u32).to_le_bytes();
    if !put_cb(
        i,
        &[
            (head.as_ptr(), 4),
            (endpoint as *const u8, endpoint_len),
            (function as *const u8, function_len),
        ],
    ) {
        return keel_status::KEEL_ERR_INVALID_ARGUMENT as i32;
    }
    callback(i, CB_RPC_REGISTER, 0, 4 + endpoint_len + function_len, 0) as i32
}

fn metric_update(which: i32, id: u32, v: f64) -> i32 {
    let Some(i) = my_slot() else {
        return keel_status::KEEL_ERR_INTERNAL as i32;
    };
    let mut b = [0u8; 12];
    b[..4].copy_from_slice(&id.to_le_bytes());
    b[4..].copy_from_slice(&v.to_le_bytes());
    if !put_cb(i, &[(b.as_ptr(), b.len())]) {
        return keel_status::KEEL_ERR_INTERNAL as i32;
    }
    callback(i, CB_METRIC_UPDATE, which, b.len(), 0) as i32
}

unsafe extern "C" fn sb_metric_add(_ctx: *mut c_void, id: u32, v: f64) -> i32 {
    metric_update(0, id, v)
}

unsafe extern "C" fn sb_metric_set(_ctx: *mut c_void, id: u32, v: f64) -> i32 {
    metric_update(1, id, v)
}

unsafe extern "C" fn sb_metric_observe(_ctx: *mut c_void, id: u32, v: f64) -> i32 {
    metric_update(2, id, v)
}

/// A host function by namespace and name: an opaque handle (its index + 1 in the server's
/// list of the functions granted to this plugin), or NULL.
///
/// # Safety
/// `namespace` and `name` are NULL or NUL-terminated strings.
unsafe extern "C" fn sb_host_fn_lookup(
    _ctx: *mut c_void,
    namespace: *const c_char,
    name: *const c_char,
) -> *const crate::services::hostfn::HostFn {
    let Some(i) = my_slot() else {
        return std::ptr::null();
    };
    if namespace.is_null() || name.is_null() {
        return std::ptr::null();
    }
    // SAFETY: per the ABI both are NUL-terminated strings valid for the call.
    let (ns, n) = unsafe { (std::ffi::CStr::from_ptr(namespace), std::ffi::CStr::from_ptr(name)) };
    let (ns, n) = (ns.to_bytes(), n.to_bytes());
    let zero = 0u8;
    if !put_cb(i, &[(ns.as_ptr(), ns.len()), (&zero, 1), (n.as_ptr(), n.len())]) {
        return std::ptr::null();
    }
    match callback(i, CB_HOSTFN_LOOKUP, 0, ns.len() + 1 + n.len(), 0) {
        r if r > 0 => r as usize as *const crate::services::hostfn::HostFn,
        _ => std::ptr::null(),
    }
}

/// Call a host function (a handle from `sb_host_fn_lookup`) in the server; what it writes
/// (at most the 64 KiB callback area) is appended to `out`.
///
/// # Safety
/// `input` points to `len` readable bytes; `out` is a live `keel_output`.
unsafe extern "C" fn sb_host_fn_call(
    _ctx: *mut c_void,
    f: *const crate::services::hostfn::HostFn,
    input: *const u8,
    len: usize,
    out: *const RawOutput,
) -> i32 {
    let Some(i) = my_slot() else { return -1 };
    let idx = (f as usize).wrapping_sub(1);
    if f.is_null() || out.is_null() || idx > i32::MAX as usize || !put_cb(i, &[(input, len)]) {
        return -1;
    }
    let r = callback(i, CB_HOSTFN_CALL, idx as i32, len, 0);
    let h = shm().header(i);
    let n = (h.cb_len.load(Ordering::Relaxed) as usize).min(CB_CAP);
    // SAFETY: `out` is the plugin's live keel_output; n bytes of the callback area.
    if n > 0 && unsafe { ((*out).write)((*out).ctx, shm().callback(i), n) } != 0 && r == 0 {
        return -2;
    }
    r as i32
}

unsafe extern "C" fn sb_cancelled(_ctx: *mut c_void) -> i32 {
    let Some(i) = my_slot() else { return 0 };
    let h = shm().header(i);
    if h.cancel.load(Ordering::Relaxed) != 0 {
        return 1;
    }
    let e = h.expires_ns.load(Ordering::Relaxed);
    (e != 0 && monotonic_ns() >= e) as i32
}

// ---- seccomp ------------------------------------------------------------------------------

/// The allowlist (docs/isolation.md "What the sandbox may do"); anything else kills the
/// process with `SIGSYS`. `loader`: the filter `dlopen` (and the plugin's ELF constructors)
/// run under, the allowlist plus read-only opens, installed together with a filter answering
/// `clone3` with `ENOSYS` (so that the C library falls back to `clone`, whose flags the
/// allowlist can check); the main filter is stacked on top after `dlopen`.
fn install_seccomp(loader: bool) -> std::result::Result<(), String> {
    use seccompiler::{
        apply_filter_all_threads, BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op,
        SeccompCondition as Cond, SeccompFilter, SeccompRule, TargetArch,
    };
    let arch: TargetArch = std::env::consts::ARCH.try_into().map_err(|e| format!("{e:?}"))?;
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() } as u64;
    let cond = |arg: u8, len: Len, op: Op, v: u64| -> std::result::Result<SeccompRule, String> {
        SeccompRule::new(vec![Cond::new(arg, len, op, v).map_err(|e| format!("{e:?}"))?]).map_err(|e| format!("{e:?}"))
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for nr in [
        libc::SYS_read,
        libc::SYS_write,
        libc::SYS_readv,
        libc::SYS_writev,
        libc::SYS_close,
        libc::SYS_futex,
        libc::SYS_mmap,
        libc::SYS_munmap,
        libc::SYS_mprotect,
        libc::SYS_mremap,
        libc::SYS_madvise,
        libc::SYS_brk,
        libc::SYS_rt_sigaction,
        libc::SYS_rt_sigprocmask,
        libc::SYS_rt_sigreturn,
        libc::SYS_sigaltstack,
        libc::SYS_clock_gettime,
        libc::SYS_clock_nanosleep,
        libc::SYS_nanosleep,
        libc::SYS_gettimeofday,
        libc::SYS_sched_yield,
        libc::SYS_getpid,
        libc::SYS_gettid,
        libc::SYS_getrandom,
        libc::SYS_exit,
        libc::SYS_exit_group,
        libc::SYS_set_robust_list,
        libc::SYS_rseq,
        libc::SYS_fstat,
        libc::SYS_lseek,
        libc::SYS_clone3,
        // glibc's malloc sizes its arenas by the CPUs this thread may run on.
        libc::SYS_sched_getaffinity,
    ] {
        rules.insert(nr, vec![]);
    }
    rules.insert(
        libc::SYS_clone,
        vec![cond(
            0,
            Len::Qword,
            Op::MaskedEq(libc::CLONE_THREAD as u64),
            libc::CLONE_THREAD as u64,
        )?],
    );
    rules.insert(
        libc::SYS_newfstatat,
        vec![cond(
            3,
            Len::Dword,
            Op::MaskedEq(libc::AT_EMPTY_PATH as u64),
            libc::AT_EMPTY_PATH as u64,
        )?],
    );
    // Thread names (std names threads from inside the new thread).
    rules.insert(
        libc::SYS_prctl,
        vec![cond(0, Len::Dword, Op::Eq, libc::PR_SET_NAME as u64)?],
    );
    rules.insert(libc::SYS_tgkill, vec![cond(0, Len::Dword, Op::Eq, pid)?]);
    rules.insert(libc::SYS_process_vm_readv, vec![cond(0, Len::Dword, Op::Eq, pid)?]);
    rules.insert(libc::SYS_ioctl, vec![cond(1, Len::Dword, Op::Eq, libc::TCGETS)?]);
    if loader {
        // What the dynamic loader needs to map the plugin (and any library it depends on):
        // opens that can neither write, create nor truncate, stats by path, pread, and what
        // installing the main filter afterwards takes. No socket, no fork, no exec.
        let no_write = (libc::O_ACCMODE | libc::O_CREAT | libc::O_TRUNC) as u64;
        rules.insert(
            libc::SYS_openat,
            vec![cond(2, Len::Dword, Op::MaskedEq(no_write), libc::O_RDONLY as u64)?],
        );
        rules.insert(libc::SYS_newfstatat, vec![]);
        rules.insert(libc::SYS_pread64, vec![]);
        rules.insert(libc::SYS_seccomp, vec![]);
        rules.get_mut(&libc::SYS_prctl).ok_or("no prctl rule")?.push(cond(
            0,
            Len::Dword,
            Op::Eq,
            libc::PR_SET_NO_NEW_PRIVS as u64,
        )?);
    }
    let main = SeccompFilter::new(rules, SeccompAction::KillProcess, SeccompAction::Allow, arch)
        .map_err(|e| format!("{e:?}"))?;
    let main: BpfProgram = main.try_into().map_err(|e| format!("{e:?}"))?;
    if !loader {
        return apply_filter_all_threads(&main).map_err(|e| format!("{e:?}"));
    }
    let clone3 = SeccompFilter::new(
        [(libc::SYS_clone3, vec![])].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .map_err(|e| format!("{e:?}"))?;
    let clone3: BpfProgram = clone3.try_into().map_err(|e| format!("{e:?}"))?;
    // The permissive one first: installing a filter calls prctl(PR_SET_NO_NEW_PRIVS), which
    // the loader's filter allows and the main one (installed last, after dlopen) refuses.
    apply_filter_all_threads(&clone3).map_err(|e| format!("{e:?}"))?;
    apply_filter_all_threads(&main).map_err(|e| format!("{e:?}"))?;
    Ok(())
}
