//! One WASM plugin generation: its compiled module, and its instances (a lock-free pool, or
//! one instance behind the plugin's own lock).
//!
//! The call path ([`Guest`]: staging, fuel, deadlines, output, failures and their codes) is
//! written once, over a [`Backend`]: the few things an engine's instance must do (enter one
//! of the ABI's exports, set the fuel, show its memory, describe a trap). `wr` implements it
//! on wasmer, `wt` on wasmtime.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use super::imports::{self, HostTrap};
use super::interrupt::StopFlag;
use super::pool::Pool;
use super::tunables;
use super::watchdog::{Watch, Watchdog};
use crate::error::{Error, Result};
use crate::runtime::{Health, HostServices, Instance};
use crate::services::call::{CallOptions, CancelState, CancelToken};
use crate::{bail, err};

/// The WASM ABI version this runtime speaks (`KEEL_WASM_ABI_VERSION`).
pub const WASM_ABI_VERSION: i32 = 1;
/// Most functions a plugin may declare.
pub const MAX_FUNCTIONS: usize = 4096;
/// Longest error message taken from a guest.
const MAX_GUEST_MESSAGE: u32 = 4096;

/// Limits of one plugin, after defaults and ceilings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EffectiveLimits {
    pub memory_pages: u32,
    pub fuel_per_call: u64,
    pub timeout: Duration,
    pub max_output_bytes: usize,
}

/// Which optional exports the module has (checked before instantiation).
#[derive(Debug, Clone, Copy, Default)]
pub struct OptionalExports {
    pub free: bool,
    pub init: bool,
    pub save_state: bool,
    pub restore_state: bool,
    pub restore_state_versioned: bool,
    pub health: bool,
    pub initialize: bool,
}

/// What every instance of one plugin generation shares.
pub struct PluginShared {
    pub name: Arc<str>,
    /// The compiled module, for the engine that runs it. Read when an instance is made (never
    /// per call); a tiered plugin's tier-up stores its Cranelift code here, then bumps
    /// `epoch` (pooled) so that instances of the first tier are replaced.
    pub code: ArcSwap<Code>,
    pub used_imports: imports::UsedImports,
    pub services: HostServices,
    /// The plugin's metric set when `metrics:write` is granted.
    pub metrics: Option<Arc<crate::services::plugin_metrics::PluginMetricSet>>,
    /// This generation's number (tags RPC registrations).
    pub generation: u64,
    pub config_json: Vec<u8>,
    pub limits: EffectiveLimits,
    pub metering: bool,
    pub exports: OptionalExports,
    pub dog: Arc<Watchdog>,
    /// `instances: pooled` (else serial).
    pub pooled: bool,
    /// State handed over on reload (or by restore_state in pooled mode), applied to new
    /// instances: to the first one only in serial mode, to every new one in pooled mode.
    pub restored: Mutex<Option<Arc<[u8]>>>,
    /// The version of the plugin that saved `restored` (None when the server restored a
    /// state itself through `restore_state`).
    pub restored_version: Mutex<Option<Arc<str>>>,
    /// Bumped by restore_state and by a tier-up in pooled mode; instances of older epochs are
    /// dropped.
    pub epoch: AtomicU64,
    /// Linear memory of every live instance, in bytes (`plugin_memory_bytes`): each instance
    /// adds its size when created and after every entry whose memory grew, and subtracts what
    /// it added when dropped.
    pub memory_bytes: AtomicU64,
    /// The memories' base addresses never move (the node's memory mode reserves the whole
    /// memory up front: `MemoryMode::fixed_base`); when false, growth may move a memory.
    pub fixed_base: bool,
}

/// A plugin generation's compiled code: which engine runs it, and what that engine needs to
/// make instances.
pub enum Code {
    Wasmer(super::wr::Code),
    Wasmtime(super::wt::Code),
}

impl Code {
    /// The compiler that made this code.
    pub fn tier(&self) -> super::WasmTier {
        match self {
            Code::Wasmer(c) => c.tier,
            Code::Wasmtime(_) => super::WasmTier::Cranelift,
        }
    }
}

/// Decode a `keel_result`: (error flag, pointer, length).
#[inline]
pub fn decode_result(r: i64) -> (bool, u32, u32) {
    let u = r as u64;
    (u >> 63 == 1, u as u32, ((u >> 32) & 0x7fff_ffff) as u32)
}

/// Parse the comma-separated list `keel_functions` returns.
pub fn parse_functions(bytes: &[u8]) -> Result<Vec<String>> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        err!(
            KEEL_ERR_PLUGIN_ABI_VIOLATION,
            "keel_functions returned names that are not UTF-8: {e}"
        )
    })?;
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let mut out: Vec<String> = Vec::new();
    for raw in text.split(',') {
        let name = raw.trim();
        let ok = !name.is_empty()
            && name.len() <= 128
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
        if !ok {
            bail!(
                KEEL_ERR_PLUGIN_ABI_VIOLATION,
                "keel_functions: '{name}' is not a function name (1-128 characters of A-Z a-z 0-9 _ . : -)"
            );
        }
        if out.iter().any(|n| n == name) {
            bail!(
                KEEL_ERR_PLUGIN_ABI_VIOLATION,
                "keel_functions: '{name}' is listed twice"
            );
        }
        if out.len() == MAX_FUNCTIONS {
            bail!(
                KEEL_ERR_PLUGIN_ABI_VIOLATION,
                "keel_functions: more than {MAX_FUNCTIONS} functions"
            );
        }
        out.push(name.to_string());
    }
    Ok(out)
}

/// One entry into the guest: an export of the Keel WASM ABI and its arguments.
#[derive(Clone, Copy, Debug)]
pub enum Entry {
    AbiVersion,
    Functions,
    Alloc(i32),
    Call(i32, i32, i32),
    Free(i32, i32),
    Init(i32, i32),
    SaveState,
    RestoreState(i32, i32),
    RestoreStateVersioned(i32, i32, i32, i32),
    Health,
    Initialize,
}

impl Entry {
    /// The export's name.
    pub fn export(self) -> &'static str {
        match self {
            Entry::AbiVersion => "keel_abi_version",
            Entry::Functions => "keel_functions",
            Entry::Alloc(_) => "keel_alloc",
            Entry::Call(..) => "keel_call",
            Entry::Free(..) => "keel_free",
            Entry::Init(..) => "keel_init",
            Entry::SaveState => "keel_save_state",
            Entry::RestoreState(..) => "keel_restore_state",
            Entry::RestoreStateVersioned(..) => "keel_restore_state_versioned",
            Entry::Health => "keel_health",
            Entry::Initialize => "_initialize",
        }
    }
}

/// What an engine says about a failed entry.
pub struct TrapInfo {
    /// A host function failed (its status and message).
    pub host: Option<HostTrap>,
    /// The trap a stop request causes (wasmer: the stop check's `unreachable`; wasmtime: the
    /// epoch callback's interrupt): a deadline or a cancel if the instance's stop flag is up.
    pub stop_trap: bool,
    /// The guest ran out of fuel.
    pub out_of_fuel: bool,
    /// The engine's description of the trap.
    pub message: String,
}

/// What the call path needs from an engine's instance. Implemented by `wr::Instance`
/// (wasmer) and `wt::Instance` (wasmtime).
pub trait Backend: Sized + Send {
    type Err;
    /// Give the next entry `fuel` (only called when the node meters). false: the engine
    /// refused (the instance is then discarded).
    fn set_fuel(&mut self, fuel: u64) -> bool;
    /// The linear memory now: base and size in bytes.
    fn memory(&self) -> (*mut u8, u64);
    /// Run one export; results narrower than i64 are widened, `()` is 0. The caller only
    /// asks for optional exports the module has ([`OptionalExports`]).
    fn invoke(&mut self, entry: Entry) -> Result<i64, Self::Err>;
    /// Describe a failed entry.
    fn trap_info(&mut self, e: Self::Err) -> TrapInfo;
}

/// The per-instance state the call path updates.
struct Ctl {
    shared: Arc<PluginShared>,
    watch: Arc<Watch>,
    seq: u64,
    /// Reusable input buffer in guest memory (pointer, capacity).
    input: (u32, u32),
    /// Set when the instance must not be used again (trap, budget, deadline, ABI violation).
    broken: bool,
    /// `tunables::grow_refusals()` when the last entry started.
    refusals_before: u64,
    epoch: u64,
    /// Bytes of linear memory this instance has added to `shared.memory_bytes`.
    accounted: u64,
}

/// `copy_nonoverlapping` without a call into libc's `memcpy` for the few bytes most plugin
/// calls pass (up to 16: two overlapping loads and stores).
///
/// # Safety
/// As `std::ptr::copy_nonoverlapping(src, dst, len)`.
#[inline(always)]
unsafe fn copy_bytes(src: *const u8, dst: *mut u8, len: usize) {
    // SAFETY: the caller guarantees `src..src+len` readable and `dst..dst+len` writable, not
    // overlapping; each access stays within those ranges (`len - 8 >= 0` in the 8..=16 arm,
    // `len - 4 >= 0` in the 4..8 arm) and is unaligned.
    unsafe {
        match len {
            8..=16 => {
                let a = src.cast::<u64>().read_unaligned();
                let b = src.add(len - 8).cast::<u64>().read_unaligned();
                dst.cast::<u64>().write_unaligned(a);
                dst.add(len - 8).cast::<u64>().write_unaligned(b);
            }
            4..=7 => {
                let a = src.cast::<u32>().read_unaligned();
                let b = src.add(len - 4).cast::<u32>().read_unaligned();
                dst.cast::<u32>().write_unaligned(a);
                dst.add(len - 4).cast::<u32>().write_unaligned(b);
            }
            _ => std::ptr::copy_nonoverlapping(src, dst, len),
        }
    }
}

/// One instance on engine `B`: its store, memory and exports. Used by one thread at a time.
pub struct Guest<B: Backend> {
    b: B,
    ctl: Ctl,
}

pub(crate) fn instantiate_error(name: &str, e: impl std::fmt::Display) -> Error {
    err!(KEEL_ERR_WASM_INSTANTIATE, "plugin '{name}': instantiation failed: {e}")
}

/// The limits of one call made with options: the plugin's own, lowered by the options (a
/// larger request is capped at the plugin's limit, never an error).
#[derive(Clone, Copy)]
pub struct PerCall<'a> {
    pub fuel: u64,
    pub timeout: Duration,
    pub cancel: Option<&'a Arc<CancelState>>,
}

impl<'a> PerCall<'a> {
    /// The limits of a call with `opts` under `limits`, or `None` when the options change
    /// nothing the runtime enforces (the call then takes the plain path).
    #[inline]
    pub fn of(opts: &'a CallOptions<'a>, limits: &EffectiveLimits) -> Option<PerCall<'a>> {
        if opts.fuel.is_none() && opts.deadline.is_none() && opts.cancel.is_none() {
            return None;
        }
        Some(PerCall {
            fuel: opts.fuel.map_or(limits.fuel_per_call, |f| f.min(limits.fuel_per_call)),
            timeout: opts.deadline.map_or(limits.timeout, |d| d.min(limits.timeout)),
            cancel: opts.cancel.map(CancelToken::state),
        })
    }
}

impl Ctl {
    /// Enter the guest: refill the fuel, arm the deadline, run `entry`, disarm, and turn a
    /// failure into the error that names its cause.
    #[inline]
    fn enter<B: Backend>(&mut self, b: &mut B, what: &dyn Fn(&str) -> String, entry: Entry) -> Result<i64> {
        self.enter_with(b, what, None, entry)
    }

    /// [`Ctl::enter`] with the limits of a call made with options (`None`: the plugin's own;
    /// that path compiles to exactly what `enter` did before options existed).
    #[inline(always)]
    fn enter_with<B: Backend>(
        &mut self,
        b: &mut B,
        what: &dyn Fn(&str) -> String,
        per_call: Option<&PerCall<'_>>,
        entry: Entry,
    ) -> Result<i64> {
        // Refill the fuel. An instance that ran out is discarded, so no other state needs a
        // reset.
        if self.shared.metering {
            let budget = match per_call {
                Some(pc) => pc.fuel,
                None => self.shared.limits.fuel_per_call,
            };
            if !b.set_fuel(budget) {
                self.broken = true;
                bail!(
                    KEEL_ERR_INTERNAL,
                    "{}: setting the fuel budget failed",
                    what(&self.shared.name)
                );
            }
        }
        self.refusals_before = tunables::grow_refusals();
        self.seq += 1;
        if let Some(pc) = per_call {
            self.watch.set_call(pc.timeout, pc.cancel);
        }
        self.watch.arm(self.seq);
        let r = b.invoke(entry);
        let fired = self.watch.disarm(self.seq);
        if per_call.is_some() {
            self.watch.clear_call();
        }
        self.account(b);
        if fired {
            // The stop flag stays raised: the instance's next call would stop at once.
            self.broken = true;
        }
        match r {
            Ok(v) => Ok(v),
            Err(e) => {
                self.broken = true;
                let info = b.trap_info(e);
                Err(self.classify(info, what, per_call))
            }
        }
    }

    /// Bring `shared.memory_bytes` up to this instance's linear memory size (an atomic
    /// add only when the memory grew: memories never shrink).
    #[inline]
    fn account<B: Backend>(&mut self, b: &B) {
        let now = b.memory().1;
        if now != self.accounted {
            if now > self.accounted {
                self.shared
                    .memory_bytes
                    .fetch_add(now - self.accounted, Ordering::Relaxed);
            } else {
                self.shared
                    .memory_bytes
                    .fetch_sub(self.accounted - now, Ordering::Relaxed);
            }
            self.accounted = now;
        }
    }

    /// Whether the guest's memory growth was refused since the last entry started.
    #[inline]
    fn hit_memory_cap(&self) -> bool {
        tunables::grow_refusals() != self.refusals_before
    }

    #[cold]
    fn classify(&self, info: TrapInfo, what: &dyn Fn(&str) -> String, per_call: Option<&PerCall<'_>>) -> Error {
        if let Some(h) = info.host {
            return Error::new(h.status, format!("{}: {}", what(&self.shared.name), h.message));
        }
        let mut limits = self.shared.limits;
        if let Some(pc) = per_call {
            limits.fuel_per_call = pc.fuel;
            limits.timeout = pc.timeout;
        }
        if info.stop_trap && self.watch.stop_raised() {
            if per_call.and_then(|pc| pc.cancel).is_some_and(|c| c.is_cancelled()) {
                return err!(
                    KEEL_ERR_CANCELLED,
                    "{}: cancelled through its cancel token and interrupted (the instance is discarded)",
                    what(&self.shared.name)
                );
            }
            return err!(
                KEEL_ERR_DEADLINE,
                "{}: ran past its deadline of {} ms and was interrupted",
                what(&self.shared.name),
                limits.timeout.as_millis()
            );
        }
        if info.out_of_fuel {
            return err!(
                KEEL_ERR_CPU_BUDGET,
                "{}: used up its CPU budget of {} fuel",
                what(&self.shared.name),
                limits.fuel_per_call
            );
        }
        if self.hit_memory_cap() {
            return err!(
                KEEL_ERR_MEMORY_LIMIT,
                "{}: reached its memory cap of {} MiB (memory.grow refused), then trapped: {}",
                what(&self.shared.name),
                limits.memory_pages / 16,
                info.message
            );
        }
        err!(
            KEEL_ERR_WASM_TRAP,
            "{}: trapped: {}",
            what(&self.shared.name),
            info.message
        )
    }

    /// The guest's bytes `ptr..ptr+len`, appended to `out`.
    #[inline]
    fn copy_out<B: Backend>(
        &mut self,
        b: &B,
        ptr: u32,
        len: u32,
        out: &mut Vec<u8>,
        what: &dyn Fn(&str) -> String,
    ) -> Result<()> {
        let (base, size) = b.memory();
        if ptr as u64 + len as u64 > size {
            self.broken = true;
            bail!(
                KEEL_ERR_PLUGIN_ABI_VIOLATION,
                "{}: returned bytes {ptr}..{} outside its memory of {} bytes",
                what(&self.shared.name),
                ptr as u64 + len as u64,
                size
            );
        }
        // SAFETY: ptr + len <= the memory's size (checked above); this thread has the
        // instance to itself and no guest code runs, so the bytes are valid and stable.
        out.extend_from_slice(unsafe { std::slice::from_raw_parts(base.add(ptr as usize), len as usize) });
        Ok(())
    }

    /// A failed hook's message (lossy UTF-8, truncated).
    #[cold]
    fn guest_message<B: Backend>(&mut self, b: &B, ptr: u32, len: u32) -> String {
        let mut buf = Vec::new();
        let len = len.min(MAX_GUEST_MESSAGE);
        if self.copy_out(b, ptr, len, &mut buf, &|_| String::new()).is_err() {
            return format!("(error message at {ptr} outside the guest's memory)");
        }
        if buf.is_empty() {
            return "(no message)".into();
        }
        String::from_utf8_lossy(&buf).into_owned()
    }

    #[cold]
    fn call_failed<B: Backend>(&mut self, b: &B, p: u32, l: u32, what: &dyn Fn(&str) -> String) -> Error {
        let msg = self.guest_message(b, p, l);
        if self.hit_memory_cap() {
            self.broken = true;
            return err!(
                KEEL_ERR_MEMORY_LIMIT,
                "{}: failed after reaching its memory cap: {msg}",
                what(&self.shared.name)
            );
        }
        err!(KEEL_ERR_CALL_FAILED, "{}: {msg}", what(&self.shared.name))
    }
}

impl<B: Backend> Guest<B> {
    /// Wrap a fresh instance of the plugin (made by the engine's backend, with its stop
    /// flag), watch it, and run its lifecycle up to the first call.
    /// `epoch`: the plugin's epoch read before its code was (see [`AnyGuest::new`]).
    pub fn new(shared: &Arc<PluginShared>, b: B, stop: StopFlag, epoch: u64) -> Result<Guest<B>> {
        let watch = shared.dog.register(stop, shared.limits.timeout);
        let mut g = Guest {
            b,
            ctl: Ctl {
                shared: shared.clone(),
                watch,
                seq: 0,
                input: (0, 0),
                broken: false,
                refusals_before: 0,
                epoch,
                accounted: 0,
            },
        };
        g.ctl.account(&g.b);
        g.start()?;
        Ok(g)
    }

    /// The lifecycle up to the first call: _initialize, ABI version, keel_init, restore.
    fn start(&mut self) -> Result<()> {
        let Guest { b, ctl } = self;
        let o = ctl.shared.exports;
        if o.initialize {
            ctl.enter(b, &|n| format!("plugin '{n}' _initialize"), Entry::Initialize)?;
        }
        let v = ctl.enter(b, &|n| format!("plugin '{n}' keel_abi_version"), Entry::AbiVersion)? as i32;
        if v != WASM_ABI_VERSION {
            bail!(
                KEEL_ERR_ABI_MISMATCH,
                "plugin '{}' speaks Keel WASM ABI {v}; this host speaks {WASM_ABI_VERSION}",
                ctl.shared.name
            );
        }
        if o.init {
            let shared = self.ctl.shared.clone();
            let config = &shared.config_json;
            let ptr = self.stage(config)?;
            let Guest { b, ctl } = self;
            let what = |n: &str| format!("plugin '{n}' keel_init");
            let r = ctl.enter(b, &what, Entry::Init(ptr as i32, config.len() as i32))?;
            let (is_err, p, l) = decode_result(r);
            if is_err {
                let msg = ctl.guest_message(b, p, l);
                if ctl.hit_memory_cap() {
                    ctl.broken = true;
                    bail!(
                        KEEL_ERR_MEMORY_LIMIT,
                        "{}: failed after reaching its memory cap: {msg}",
                        what(&shared.name)
                    );
                }
                bail!(KEEL_ERR_INIT_FAILED, "{}: {msg}", what(&shared.name));
            }
        }
        let state = {
            let mut r = self.ctl.shared.restored.lock();
            if self.ctl.shared.pooled {
                r.clone()
            } else {
                r.take()
            }
        };
        if let Some(state) = state {
            let version = self.ctl.shared.restored_version.lock().clone();
            if let (Some(v), true) = (version, o.restore_state_versioned) {
                self.restore_state_versioned(&state, &v)?;
            } else if o.restore_state {
                self.restore_state(&state)?;
            } else {
                let shared = &self.ctl.shared;
                // Say so once, not for every pooled instance.
                *shared.restored.lock() = None;
                shared.services.log(
                    &shared.name,
                    crate::runtime::LogLevel::Warn,
                    &format!(
                        "{} bytes of saved state were not handed over: this module has no keel_restore_state",
                        state.len()
                    ),
                );
            }
        }
        Ok(())
    }

    /// The function names the module declares (`keel_functions`).
    pub fn function_names(&mut self) -> Result<Vec<String>> {
        let what = |n: &str| format!("plugin '{n}' keel_functions");
        let Guest { b, ctl } = self;
        let r = ctl.enter(b, &what, Entry::Functions)?;
        let (is_err, p, l) = decode_result(r);
        if is_err {
            let msg = ctl.guest_message(b, p, l);
            bail!(
                KEEL_ERR_PLUGIN_ABI_VIOLATION,
                "{}: returned an error: {msg}",
                what(&ctl.shared.name)
            );
        }
        if l > 1 << 20 {
            bail!(
                KEEL_ERR_PLUGIN_ABI_VIOLATION,
                "{}: {l} bytes of names is too long",
                what(&ctl.shared.name)
            );
        }
        let mut buf = Vec::new();
        ctl.copy_out(b, p, l, &mut buf, &what)?;
        parse_functions(&buf).map_err(|e| e.context(format!("plugin '{}'", ctl.shared.name)))
    }

    /// Copy `data` into the reusable input buffer (growing it through keel_alloc when it is
    /// too small) and return its guest address.
    #[inline]
    fn stage(&mut self, data: &[u8]) -> Result<u32> {
        self.stage_mapped(data).map(|(ptr, _)| ptr)
    }

    /// [`Guest::stage`], also returning the memory as it was then: (base, length).
    #[inline]
    fn stage_mapped(&mut self, data: &[u8]) -> Result<(u32, (*const u8, u64))> {
        if data.len() > self.ctl.input.1 as usize {
            self.grow_input(data.len())?;
        }
        let ptr = self.ctl.input.0;
        let (base, size) = self.b.memory();
        let mapped = (base as *const u8, size);
        if data.is_empty() {
            return Ok((ptr, mapped));
        }
        if ptr as u64 + data.len() as u64 > size {
            self.ctl.broken = true;
            bail!(
                KEEL_ERR_PLUGIN_ABI_VIOLATION,
                "plugin '{}': keel_alloc returned {ptr}, which does not hold {} bytes",
                self.ctl.shared.name,
                data.len()
            );
        }
        // SAFETY: ptr + len <= the memory's size (checked above); this thread has the
        // instance to itself and no guest code runs; `data` is host memory, never the guest's.
        unsafe { copy_bytes(data.as_ptr(), base.add(ptr as usize), data.len()) };
        Ok((ptr, mapped))
    }

    #[cold]
    fn grow_input(&mut self, need: usize) -> Result<()> {
        if need > (1 << 31) - 1 {
            bail!(
                KEEL_ERR_INVALID_ARGUMENT,
                "plugin '{}': input of {need} bytes is larger than a wasm32 guest can take",
                self.ctl.shared.name
            );
        }
        let cap = need.next_power_of_two().clamp(256, (1 << 31) - 1) as u32;
        let Guest { b, ctl } = self;
        let (old_ptr, old_cap) = ctl.input;
        if old_ptr != 0 {
            if ctl.shared.exports.free {
                ctl.enter(
                    b,
                    &|n| format!("plugin '{n}' keel_free"),
                    Entry::Free(old_ptr as i32, old_cap as i32),
                )?;
            }
            ctl.input = (0, 0);
        }
        let what = |n: &str| format!("plugin '{n}' keel_alloc({cap})");
        let p = ctl.enter(b, &what, Entry::Alloc(cap as i32))? as i32 as u32;
        if p == 0 {
            if ctl.hit_memory_cap() {
                ctl.broken = true;
                bail!(
                    KEEL_ERR_MEMORY_LIMIT,
                    "{}: out of memory at the plugin's cap of {} MiB",
                    what(&ctl.shared.name),
                    ctl.shared.limits.memory_pages / 16
                );
            }
            // keel_wasm.h: keel_alloc returns 0 when out of memory (below the cap too: the
            // guest's own allocator may be exhausted or fragmented).
            bail!(
                KEEL_ERR_MEMORY_LIMIT,
                "{}: returned 0 (the plugin is out of memory)",
                what(&ctl.shared.name)
            );
        }
        if p as u64 + cap as u64 > b.memory().1 {
            ctl.broken = true;
            bail!(
                KEEL_ERR_PLUGIN_ABI_VIOLATION,
                "{}: returned {p}, outside the guest's memory",
                what(&ctl.shared.name)
            );
        }
        ctl.input = (p, cap);
        Ok(())
    }

    /// Run function `function` on `input`, appending its output to `output`.
    #[inline]
    pub fn call(&mut self, function: u32, fname: &str, input: &[u8], output: &mut Vec<u8>) -> Result<()> {
        self.call_with(function, fname, input, output, None)
    }

    /// [`Guest::call`] under the limits of a call made with options (`None`: the plugin's).
    #[inline(always)]
    pub fn call_with(
        &mut self,
        function: u32,
        fname: &str,
        input: &[u8],
        output: &mut Vec<u8>,
        per_call: Option<&PerCall<'_>>,
    ) -> Result<()> {
        let (ptr, (mut base, mut mapped_len)) = self.stage_mapped(input)?;
        let what = |n: &str| format!("plugin '{n}' function '{fname}'");
        let Guest { b, ctl } = self;
        let r = ctl.enter_with(
            b,
            &what,
            per_call,
            Entry::Call(function as i32, ptr as i32, input.len() as i32),
        )?;
        let (is_err, p, l) = decode_result(r);
        if !ctl.shared.fixed_base {
            // Memories that may move when they grow: take the memory as it is now.
            let (nb, nl) = b.memory();
            (base, mapped_len) = (nb as *const u8, nl);
        }
        if !is_err {
            let max = ctl.shared.limits.max_output_bytes;
            if l as usize > max {
                return Err(err!(
                    KEEL_ERR_OUTPUT_TOO_LARGE,
                    "{}: output of {l} bytes exceeds the limit of {max}",
                    what(&ctl.shared.name)
                ));
            }
            if p as u64 + l as u64 <= mapped_len {
                // SAFETY: `base..base+mapped_len` is this instance's memory: as it was when the
                // input was staged when `fixed_base` holds (the node's memory mode reserves
                // everything up front: the base never moves and memories never shrink), or as
                // it is after the call otherwise (re-read above). This thread has the instance
                // to itself (no shared memories), so the range is valid and initialised.
                output.reserve(l as usize);
                let at = output.len();
                // SAFETY: the source as above; the destination is `output`'s spare capacity
                // (reserved above), which the two ranges cannot overlap (host heap vs guest
                // memory); `set_len` covers exactly the bytes just written.
                unsafe {
                    copy_bytes(base.add(p as usize), output.as_mut_ptr().add(at), l as usize);
                    output.set_len(at + l as usize);
                }
                return Ok(());
            }
            return ctl.copy_out(b, p, l, output, &what);
        }
        Err(ctl.call_failed(b, p, l, &what))
    }

    /// `keel_save_state`, if exported.
    pub fn save_state(&mut self) -> Result<Option<Vec<u8>>> {
        let what = |n: &str| format!("plugin '{n}' keel_save_state");
        let Guest { b, ctl } = self;
        if !ctl.shared.exports.save_state {
            return Ok(None);
        }
        let r = ctl.enter(b, &what, Entry::SaveState)?;
        let (is_err, p, l) = decode_result(r);
        if is_err {
            let msg = ctl.guest_message(b, p, l);
            bail!(KEEL_ERR_STATE_SAVE, "{}: {msg}", what(&ctl.shared.name));
        }
        let mut out = Vec::new();
        ctl.copy_out(b, p, l, &mut out, &what)?;
        Ok(Some(out))
    }

    /// `keel_restore_state`, if exported (`KEEL_ERR_UNSUPPORTED` otherwise).
    pub fn restore_state(&mut self, state: &[u8]) -> Result<()> {
        if !self.ctl.shared.exports.restore_state {
            bail!(
                KEEL_ERR_UNSUPPORTED,
                "plugin '{}' has no keel_restore_state export",
                self.ctl.shared.name
            );
        }
        let ptr = self.stage(state)?;
        let what = |n: &str| format!("plugin '{n}' keel_restore_state");
        let Guest { b, ctl } = self;
        let r = ctl.enter(b, &what, Entry::RestoreState(ptr as i32, state.len() as i32))?;
        let (is_err, p, l) = decode_result(r);
        if is_err {
            let msg = ctl.guest_message(b, p, l);
            bail!(KEEL_ERR_STATE_RESTORE, "{}: {msg}", what(&ctl.shared.name));
        }
        Ok(())
    }

    /// `keel_restore_state_versioned(state, len, version, version_len)`: the state and the
    /// version of the plugin that saved it, staged together in the input buffer.
    fn restore_state_versioned(&mut self, state: &[u8], version: &str) -> Result<()> {
        if !self.ctl.shared.exports.restore_state_versioned {
            return Ok(());
        }
        let mut staged = Vec::with_capacity(state.len() + version.len());
        staged.extend_from_slice(state);
        staged.extend_from_slice(version.as_bytes());
        let ptr = self.stage(&staged)?;
        let what = |n: &str| format!("plugin '{n}' keel_restore_state_versioned");
        let Guest { b, ctl } = self;
        let (sl, vp, vl) = (
            state.len() as i32,
            ptr as i32 + state.len() as i32,
            version.len() as i32,
        );
        let r = ctl.enter(b, &what, Entry::RestoreStateVersioned(ptr as i32, sl, vp, vl))?;
        let (is_err, p, l) = decode_result(r);
        if is_err {
            let msg = ctl.guest_message(b, p, l);
            bail!(KEEL_ERR_STATE_RESTORE, "{}: {msg}", what(&ctl.shared.name));
        }
        Ok(())
    }

    /// `keel_health`, if exported.
    pub fn health(&mut self) -> Health {
        let Guest { b, ctl } = self;
        if !ctl.shared.exports.health {
            return Health::Unknown;
        }
        match ctl.enter(b, &|n| format!("plugin '{n}' keel_health"), Entry::Health) {
            Ok(r) => match r as i32 {
                0 => Health::Healthy,
                1 => Health::Degraded,
                _ => Health::Unhealthy,
            },
            _ => Health::Unhealthy,
        }
    }

    /// Whether this instance may serve another call.
    pub fn usable(&self) -> bool {
        !self.ctl.broken
    }
}

impl<B: Backend> Drop for Guest<B> {
    fn drop(&mut self) {
        self.ctl.shared.dog.unregister(&self.ctl.watch);
        self.ctl
            .shared
            .memory_bytes
            .fetch_sub(self.ctl.accounted, Ordering::Relaxed);
    }
}

/// An instance on whichever engine runs the plugin.
///
/// Not boxed although the variants differ in size: a guest is built once and then used in
/// place (pool slot or the serial plugin's `Option`), never moved per call, and a box would add
/// a pointer chase to every call.
#[allow(clippy::large_enum_variant)]
pub enum AnyGuest {
    Wasmer(Guest<super::wr::Instance>),
    Wasmtime(Guest<super::wt::Instance>),
}

macro_rules! on_guest {
    ($g:expr, $x:ident => $e:expr) => {
        match $g {
            AnyGuest::Wasmer($x) => $e,
            AnyGuest::Wasmtime($x) => $e,
        }
    };
}

impl AnyGuest {
    /// Create and initialise one instance on the plugin's engine.
    pub fn new(shared: &Arc<PluginShared>) -> Result<AnyGuest> {
        // The epoch before the code: a tier-up stores its code before it bumps the epoch, so
        // an instance made from the first tier's code never carries the new epoch (it would
        // be kept for good), while one that carries the old epoch is replaced when next
        // claimed even if it was made from the new code.
        let epoch = shared.epoch.load(Ordering::Acquire);
        let code = shared.code.load();
        AnyGuest::of_code(shared, &code, epoch)
    }

    /// Create and initialise one instance of `code` (the plugin's, or the code a tier-up is
    /// about to switch to).
    pub(crate) fn of_code(shared: &Arc<PluginShared>, code: &Code, epoch: u64) -> Result<AnyGuest> {
        Ok(match code {
            Code::Wasmer(c) => {
                let (b, stop) = super::wr::Instance::new(shared, c)?;
                AnyGuest::Wasmer(Guest::new(shared, b, stop, epoch)?)
            }
            Code::Wasmtime(c) => {
                let (b, stop) = super::wt::Instance::new(shared, c)?;
                AnyGuest::Wasmtime(Guest::new(shared, b, stop, epoch)?)
            }
        })
    }

    pub(crate) fn ctl_epoch(&self) -> u64 {
        self.ctl().epoch
    }

    fn ctl(&self) -> &Ctl {
        on_guest!(self, g => &g.ctl)
    }

    pub fn function_names(&mut self) -> Result<Vec<String>> {
        on_guest!(self, g => g.function_names())
    }

    #[inline(always)]
    pub fn call_with(
        &mut self,
        function: u32,
        fname: &str,
        input: &[u8],
        output: &mut Vec<u8>,
        per_call: Option<&PerCall<'_>>,
    ) -> Result<()> {
        on_guest!(self, g => g.call_with(function, fname, input, output, per_call))
    }

    pub fn save_state(&mut self) -> Result<Option<Vec<u8>>> {
        on_guest!(self, g => g.save_state())
    }

    pub fn restore_state(&mut self, state: &[u8]) -> Result<()> {
        on_guest!(self, g => g.restore_state(state))
    }

    pub fn health(&mut self) -> Health {
        on_guest!(self, g => g.health())
    }

    #[inline]
    pub fn usable(&self) -> bool {
        on_guest!(self, g => g.usable())
    }
}

pub(crate) enum Mode {
    Pooled(Pool<AnyGuest>),
    Serial(Box<Mutex<Option<AnyGuest>>>),
}

/// Clears the instance if the call unwinds (a host service panicked): it may be half-way
/// through anything.
struct ClearOnPanic<'a>(&'a mut Option<AnyGuest>);

impl Drop for ClearOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            *self.0 = None;
        }
    }
}

/// Run `f` on the instance in `slot` (creating it if the slot is empty); empty the slot if
/// the instance must not be reused.
#[inline]
fn run_in<R>(
    slot: &mut Option<AnyGuest>,
    shared: &Arc<PluginShared>,
    f: impl FnOnce(&mut AnyGuest) -> Result<R>,
) -> Result<R> {
    let guard = ClearOnPanic(slot);
    let g = match guard.0 {
        Some(g) => g,
        None => guard.0.insert(AnyGuest::new(shared)?),
    };
    let r = f(g);
    if !g.usable() {
        *guard.0 = None;
    }
    r
}

/// A loaded WASM plugin generation ([`Instance`]).
pub struct WasmPlugin {
    shared: Arc<PluginShared>,
    functions: Vec<String>,
    /// Shared (weakly) with a tiered plugin's tier-up thread, which replaces the instances.
    mode: Arc<Mode>,
    /// The tier-up of a tiered plugin loaded on its first tier (None otherwise).
    tier_up: Option<super::tier::TierWatch>,
    /// The tier the plugin was loaded on (its first instance's code).
    loaded_tier: super::WasmTier,
}

impl WasmPlugin {
    /// Start the plugin: create the first instance (which runs keel_init) and read its
    /// function list.
    pub fn start(shared: PluginShared, pool_size: usize) -> Result<WasmPlugin> {
        let shared = Arc::new(shared);
        let loaded_tier = shared.code.load().tier();
        let mut first = AnyGuest::new(&shared)?;
        let functions = first.function_names()?;
        let mode = if shared.pooled {
            let pool = Pool::new(pool_size);
            drop(pool.offer(first));
            Mode::Pooled(pool)
        } else {
            Mode::Serial(Box::new(Mutex::new(Some(first))))
        };
        Ok(WasmPlugin {
            shared,
            functions,
            mode: Arc::new(mode),
            tier_up: None,
            loaded_tier,
        })
    }

    /// Start compiling the plugin's Cranelift code in the background (`job`), and switch to
    /// it when done (see [`super::tier`]).
    pub(crate) fn start_tier_up(&mut self, job: super::tier::Job) -> Result<()> {
        let watch = super::tier::spawn(job, Arc::downgrade(&self.shared), Arc::downgrade(&self.mode))?;
        self.tier_up = Some(watch);
        Ok(())
    }

    /// The compiler that made the code new instances of this plugin are made from: Singlepass
    /// for a tiered plugin until its tier-up switched it (and for a node that compiles with
    /// Singlepass), else Cranelift. A pooled plugin's instances in flight during the switch
    /// finish their call on the first tier.
    pub fn tier(&self) -> super::WasmTier {
        self.shared.code.load().tier()
    }

    /// The tier the plugin was loaded on: Singlepass for a tiered plugin compiled at load,
    /// Cranelift for one whose Cranelift code came from the cache.
    pub fn loaded_tier(&self) -> super::WasmTier {
        self.loaded_tier
    }

    /// The tier-up of a tiered plugin loaded on its first tier, as it is now
    /// ([`super::TierUp::NotTiered`] for every other plugin).
    pub fn tier_up(&self) -> super::TierUp {
        self.tier_up.as_ref().map_or(super::TierUp::NotTiered, |w| w.status())
    }

    /// Wait up to `timeout` for the tier-up to end (switched, kept on the first tier, failed,
    /// abandoned); returns its status then, [`super::TierUp::Compiling`] if it has not ended.
    pub fn wait_for_tier_up(&self, timeout: Duration) -> super::TierUp {
        self.tier_up
            .as_ref()
            .map_or(super::TierUp::NotTiered, |w| w.wait(timeout))
    }

    /// A handle on the tier-up that outlives the plugin (to see a tier-up end after an
    /// unload); None when the plugin has no tier-up.
    pub fn tier_up_watch(&self) -> Option<super::tier::TierWatch> {
        self.tier_up.clone()
    }

    pub fn is_pooled(&self) -> bool {
        matches!(*self.mode, Mode::Pooled(_))
    }

    /// The engine this plugin runs on.
    pub fn engine(&self) -> super::WasmEngine {
        match **self.shared.code.load() {
            Code::Wasmer(_) => super::WasmEngine::Wasmer,
            Code::Wasmtime(_) => super::WasmEngine::Wasmtime,
        }
    }

    /// The limits this plugin runs under.
    pub fn limits(&self) -> EffectiveLimits {
        self.shared.limits
    }

    /// Instances kept for reuse: in the pool's slots (pooled), or 0 or 1 (serial).
    pub fn kept_instances(&self) -> usize {
        match &*self.mode {
            Mode::Pooled(p) => p.retain(|_| true),
            Mode::Serial(m) => m.lock().is_some() as usize,
        }
    }

    /// Run `f` on an instance: one from the pool (or a new one), or the serial instance
    /// under the plugin's lock (created anew if the last one was discarded). An instance
    /// that failed in a way that may have left it broken is dropped, not returned.
    #[inline]
    fn with_guest<R>(&self, f: impl FnOnce(&mut AnyGuest) -> Result<R>) -> Result<R> {
        match &*self.mode {
            Mode::Pooled(pool) => match pool.claim() {
                Some(mut claim) => {
                    let slot = claim.guest();
                    if slot
                        .as_ref()
                        .is_some_and(|g| g.ctl().epoch != self.shared.epoch.load(Ordering::Acquire))
                    {
                        // Created before restore_state handed the pool a new state, or
                        // before a tier-up switched the plugin's code.
                        *slot = None;
                    }
                    run_in(slot, &self.shared, f)
                }
                // Every slot is busy: run on a temporary instance.
                None => run_in(&mut None, &self.shared, f),
            },
            Mode::Serial(m) => run_in(&mut m.lock(), &self.shared, f),
        }
    }
}

impl Instance for WasmPlugin {
    fn functions(&self) -> &[String] {
        &self.functions
    }

    #[inline]
    fn call(&self, function: u32, input: &[u8], output: &mut Vec<u8>) -> Result<()> {
        let Some(fname) = self.functions.get(function as usize) else {
            return Err(err!(
                KEEL_ERR_FUNCTION_NOT_FOUND,
                "plugin '{}' has {} functions; there is no function {function}",
                self.shared.name,
                self.functions.len()
            ));
        };
        self.with_guest(|g| g.call_with(function, fname, input, output, None))
    }

    fn call_with(&self, function: u32, input: &[u8], output: &mut Vec<u8>, opts: &CallOptions<'_>) -> Result<()> {
        let Some(pc) = PerCall::of(opts, &self.shared.limits) else {
            return self.call(function, input, output);
        };
        let Some(fname) = self.functions.get(function as usize) else {
            return self.call(function, input, output);
        };
        self.with_guest(|g| g.call_with(function, fname, input, output, Some(&pc)))
    }

    fn deadline_cap(&self) -> Option<Duration> {
        Some(self.shared.limits.timeout)
    }

    fn has_state(&self) -> bool {
        self.shared.exports.save_state
    }

    fn save_state(&self) -> Result<Option<Vec<u8>>> {
        if !self.shared.exports.save_state {
            return Ok(None);
        }
        self.with_guest(|g| g.save_state())
    }

    fn restore_state(&self, state: &[u8]) -> Result<()> {
        if !self.shared.exports.restore_state {
            bail!(
                KEEL_ERR_UNSUPPORTED,
                "plugin '{}' has no keel_restore_state export",
                self.shared.name
            );
        }
        match &*self.mode {
            Mode::Serial(_) => self.with_guest(|g| g.restore_state(state)),
            Mode::Pooled(pool) => {
                // Every instance created from now on starts from this state; idle instances
                // of the old state are dropped now, busy ones when they are next claimed.
                *self.shared.restored.lock() = Some(Arc::from(state));
                *self.shared.restored_version.lock() = None;
                let epoch = self.shared.epoch.fetch_add(1, Ordering::AcqRel) + 1;
                pool.retain(|g| g.ctl().epoch == epoch);
                // Check the state is accepted (and keep the instance that took it).
                drop(pool.offer(AnyGuest::new(&self.shared)?));
                Ok(())
            }
        }
    }

    fn health(&self) -> Health {
        if !self.shared.exports.health {
            return Health::Unknown;
        }
        self.with_guest(|g| Ok(g.health())).unwrap_or(Health::Unhealthy)
    }

    /// Linear memory of every live instance (pool slots, the serial instance, temporaries
    /// serving an overflow call), as of their last entry: a relaxed load, no instance touched.
    fn memory_bytes(&self) -> Option<u64> {
        Some(self.shared.memory_bytes.load(Ordering::Relaxed))
    }

    /// The [`WasmPlugin`] itself (its compiler tier: `keel_plugin_wasm_tier`).
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }
}

impl std::fmt::Debug for WasmPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmPlugin")
            .field("name", &self.shared.name)
            .field("functions", &self.functions)
            .field("engine", &self.engine())
            .field("tier", &self.tier())
            .field("pooled", &self.is_pooled())
            .field("limits", &self.shared.limits)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::keel_status;

    #[test]
    fn results_decode() {
        assert_eq!(decode_result(0), (false, 0, 0));
        let ok = ((5u64 << 32) | 1024) as i64;
        assert_eq!(decode_result(ok), (false, 1024, 5));
        let e = (((7u64 << 32) | 16) | (1 << 63)) as i64;
        assert_eq!(decode_result(e), (true, 16, 7));
        assert_eq!(decode_result(-1), (true, u32::MAX, 0x7fff_ffff));
    }

    #[test]
    fn small_copies_copy_exactly_len_bytes() {
        // Every length around the inline arms' edges, at unaligned offsets, with guard bytes
        // around the destination that must stay untouched.
        let src: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(37).wrapping_add(1)).collect();
        for len in 0..=40usize {
            for off in 0..3usize {
                let mut dst = vec![0xAAu8; len + 8];
                // SAFETY: src[off..off+len] and dst[3..3+len] are in bounds and distinct vectors.
                unsafe { copy_bytes(src.as_ptr().add(off), dst.as_mut_ptr().add(3), len) };
                assert_eq!(&dst[3..3 + len], &src[off..off + len], "len {len} off {off}");
                assert!(dst[..3].iter().chain(&dst[3 + len..]).all(|&b| b == 0xAA), "len {len}");
            }
        }
    }

    #[test]
    fn function_lists_parse() {
        assert_eq!(
            parse_functions(b"sum, fib,checksum").unwrap(),
            vec!["sum", "fib", "checksum"]
        );
        assert!(parse_functions(b"").unwrap().is_empty());
        for bad in [&b"a,,b"[..], b"a,a", b"has space", b"\xff"] {
            assert_eq!(
                parse_functions(bad).unwrap_err().status(),
                keel_status::KEEL_ERR_PLUGIN_ABI_VIOLATION,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
