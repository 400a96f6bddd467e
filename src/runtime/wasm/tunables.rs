//! Memory cap per instance: wasmer `Tunables` that clamp every memory's maximum to the
//! plugin's cap, lay memories out as the node's [`MemoryMode`] says, and a memory wrapper
//! that records refused growth.
//!
//! Memory modes (virtual address space an instance reserves, and what the compiled code does):
//!
//! - [`MemoryMode::Static`]: wasmer's static memories: 4 GiB + a 4 GiB guard reserved per
//!   instance (8 GiB), no bounds checks in the code. wasmer 7 offers no smaller static bound.
//! - [`MemoryMode::Capped`]: the plugin's memory cap + a 64 KiB guard reserved per instance,
//!   in one mapping that grows in place (the base never moves). The code is compiled for
//!   wasmer's dynamic style: explicit bounds checks against the memory's current length.
//! - [`MemoryMode::Dynamic`]: wasmer's dynamic memories: the current size + a 64 KiB guard
//!   reserved; growth maps a larger region and copies (the base moves). Same code as Capped.
//!
//! A guest that asks `memory.grow` for more than the cap gets -1 (inside the guest, as the
//! spec says); the wrapper counts the refusal in a thread-local counter. Growth only ever
//! happens on the thread running the guest, so the call path reads the counter before and
//! after a call to learn whether the guest hit its cap during that call, without any shared
//! state.

use std::cell::Cell;
use std::ptr::NonNull;

use std::cell::UnsafeCell;

use wasmer::sys::vm::{
    LinearMemory, MemoryError, MemoryStyle, Mmap, MmapType, Trap, VMConfig, VMMemory, VMMemoryDefinition, VMTable,
    VMTableDefinition,
};
use wasmer::sys::{BaseTunables, Tunables};
use wasmer::{MemoryType, Pages, TableStyle, TableType};

/// Tables may not start with (or grow to) more elements than this.
pub const MAX_TABLE_ELEMENTS: u32 = 1 << 20;

thread_local! {
    static GROW_REFUSED: Cell<u64> = const { Cell::new(0) };
}

/// How many `memory.grow` requests were refused on this thread so far.
#[inline]
pub fn grow_refusals() -> u64 {
    GROW_REFUSED.with(|c| c.get())
}

/// Count one refused `memory.grow` (wasmer's memory wrapper, wasmtime's resource limiter).
pub fn note_refusal() {
    GROW_REFUSED.with(|c| c.set(c.get().wrapping_add(1)));
}

/// Guard after the accessible bytes of a Capped or Dynamic memory: loads and stores whose
/// constant offset is below it need no check of the offset (wasmer's dynamic default).
pub const DYNAMIC_GUARD_BYTES: u64 = 64 << 10;

/// How linear memories are laid out in the address space (a node policy; see the module
/// documentation and docs/wasm.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MemoryMode {
    /// 8 GiB reserved per instance, no bounds checks (wasmer's static memories).
    Static,
    /// The memory cap + 64 KiB reserved per instance, explicit bounds checks, base fixed.
    #[default]
    Capped,
    /// The current size + 64 KiB reserved, explicit bounds checks, growth moves the memory.
    Dynamic,
}

impl MemoryMode {
    /// The name used in configuration and messages (`static`, `capped`, `dynamic`).
    pub fn as_str(self) -> &'static str {
        match self {
            MemoryMode::Static => "static",
            MemoryMode::Capped => "capped",
            MemoryMode::Dynamic => "dynamic",
        }
    }

    /// The mode called `name` (see [`MemoryMode::as_str`]).
    pub fn parse(name: &str) -> Option<MemoryMode> {
        [MemoryMode::Static, MemoryMode::Capped, MemoryMode::Dynamic]
            .into_iter()
            .find(|m| m.as_str() == name)
    }

    /// The memory style the code is compiled for (part of the compiled-module cache key:
    /// code compiled for static memories must never run on a dynamic one).
    pub fn style(self) -> MemoryStyle {
        match self {
            MemoryMode::Static => MemoryStyle::Static,
            MemoryMode::Capped | MemoryMode::Dynamic => MemoryStyle::Dynamic {
                offset_guard_size: DYNAMIC_GUARD_BYTES,
            },
        }
    }

    /// Whether a memory's base address stays put for the instance's whole life (Static and
    /// Capped reserve everything up front; Dynamic moves the memory when it grows).
    pub fn fixed_base(self) -> bool {
        !matches!(self, MemoryMode::Dynamic)
    }

    /// Bytes of address space one instance's memory reserves when its cap is `cap`.
    pub fn reservation(self, cap: Pages, current: Pages) -> u64 {
        match self {
            MemoryMode::Static => (1u64 << 32) + MemoryStyle::static_offset_guard_size(),
            MemoryMode::Capped => cap.bytes().0 as u64 + DYNAMIC_GUARD_BYTES,
            MemoryMode::Dynamic => current.bytes().0 as u64 + DYNAMIC_GUARD_BYTES,
        }
    }
}

/// Tunables of one plugin's engine: the base tunables for the host, with every memory capped
/// and laid out as the node's [`MemoryMode`] says.
pub struct CappedTunables {
    base: BaseTunables,
    cap: Pages,
    mode: MemoryMode,
}

impl CappedTunables {
    pub fn new(cap: Pages, mode: MemoryMode) -> CappedTunables {
        CappedTunables {
            base: BaseTunables::new(),
            cap,
            mode,
        }
    }

    pub fn cap(&self) -> Pages {
        self.cap
    }

    pub fn mode(&self) -> MemoryMode {
        self.mode
    }

    /// The memory type with its maximum clamped to the cap.
    pub fn adjust_memory(&self, requested: &MemoryType) -> MemoryType {
        let mut ty = *requested;
        ty.maximum = Some(match requested.maximum {
            Some(m) if m < self.cap => m,
            _ => self.cap,
        });
        ty
    }

    fn validate_memory(&self, ty: &MemoryType) -> Result<(), MemoryError> {
        if ty.minimum > self.cap {
            return Err(MemoryError::MinimumMemoryTooLarge {
                min_requested: ty.minimum,
                max_allowed: self.cap,
            });
        }
        Ok(())
    }

    fn adjust_table(&self, requested: &TableType) -> Result<TableType, String> {
        if requested.minimum > MAX_TABLE_ELEMENTS {
            return Err(format!(
                "the module's table starts at {} elements, more than the {MAX_TABLE_ELEMENTS} allowed",
                requested.minimum
            ));
        }
        let mut ty = *requested;
        ty.maximum = Some(match requested.maximum {
            Some(m) if m < MAX_TABLE_ELEMENTS => m,
            _ => MAX_TABLE_ELEMENTS,
        });
        Ok(ty)
    }
}

impl Tunables for CappedTunables {
    /// Static in Static mode, dynamic (explicit bounds checks) otherwise. Whether the base
    /// may move is decided by the memory created below, not by the style: the call path asks
    /// [`MemoryMode::fixed_base`].
    fn memory_style(&self, _memory: &MemoryType) -> MemoryStyle {
        self.mode.style()
    }

    fn table_style(&self, table: &TableType) -> TableStyle {
        self.base.table_style(table)
    }

    fn create_host_memory(&self, ty: &MemoryType, style: &MemoryStyle) -> Result<VMMemory, MemoryError> {
        let ty = self.adjust_memory(ty);
        self.validate_memory(&ty)?;
        let inner = match style {
            MemoryStyle::Dynamic { offset_guard_size } if self.mode.fixed_base() => {
                VMMemory(Box::new(ReservedMemory::new(&ty, *offset_guard_size, None)?))
            }
            _ => self.base.create_host_memory(&ty, style)?,
        };
        Ok(VMMemory(Box::new(CappedMemory { inner })))
    }

    unsafe fn create_vm_memory(
        &self,
        ty: &MemoryType,
        style: &MemoryStyle,
        vm_definition_location: NonNull<VMMemoryDefinition>,
    ) -> Result<VMMemory, MemoryError> {
        let ty = self.adjust_memory(ty);
        self.validate_memory(&ty)?;
        let inner = match style {
            // The style comes from the compiled artifact (the cache key names it: it is the
            // mode's). Dynamic-style code where bases must not move (Capped; Static never
            // compiles it) gets a memory that reserves its cap; static-style code gets wasmer's
            // static memory, which never moves either; Dynamic gets wasmer's moving memory.
            MemoryStyle::Dynamic { offset_guard_size } if self.mode.fixed_base() => VMMemory(Box::new(
                ReservedMemory::new(&ty, *offset_guard_size, Some(vm_definition_location))?,
            )),
            // SAFETY: forwarded unchanged from the caller's contract.
            _ => unsafe { self.base.create_vm_memory(&ty, style, vm_definition_location)? },
        };
        Ok(VMMemory(Box::new(CappedMemory { inner })))
    }

    fn create_host_table(&self, ty: &TableType, style: &TableStyle) -> Result<VMTable, String> {
        let ty = self.adjust_table(ty)?;
        self.base.create_host_table(&ty, style)
    }

    unsafe fn create_vm_table(
        &self,
        ty: &TableType,
        style: &TableStyle,
        vm_definition_location: NonNull<VMTableDefinition>,
    ) -> Result<VMTable, String> {
        let ty = self.adjust_table(ty)?;
        // SAFETY: forwarded unchanged from the caller's contract.
        unsafe { self.base.create_vm_table(&ty, style, vm_definition_location) }
    }

    fn vmconfig(&self) -> &VMConfig {
        self.base.vmconfig()
    }
}

/// A linear memory that counts refused growth (see [`grow_refusals`]).
#[derive(Debug)]
struct CappedMemory {
    inner: VMMemory,
}

impl LinearMemory for CappedMemory {
    fn ty(&self) -> MemoryType {
        self.inner.ty()
    }

    fn size(&self) -> Pages {
        self.inner.size()
    }

    fn style(&self) -> MemoryStyle {
        self.inner.style()
    }

    fn grow(&mut self, delta: Pages) -> Result<Pages, MemoryError> {
        let r = self.inner.grow(delta);
        if r.is_err() {
            note_refusal();
        }
        r
    }

    fn grow_at_least(&mut self, min_size: u64) -> Result<(), MemoryError> {
        let r = self.inner.grow_at_least(min_size);
        if r.is_err() {
            note_refusal();
        }
        r
    }

    fn reset(&mut self) -> Result<(), MemoryError> {
        self.inner.reset()
    }

    fn vmmemory(&self) -> NonNull<VMMemoryDefinition> {
        self.inner.vmmemory()
    }

    fn try_clone(&self) -> Result<Box<dyn LinearMemory + Send + Sync + 'static>, MemoryError> {
        Ok(Box::new(CappedMemory {
            inner: VMMemory(LinearMemory::try_clone(&self.inner)?),
        }))
    }

    unsafe fn initialize_with_data(&self, start: usize, data: &[u8]) -> Result<(), Trap> {
        // SAFETY: forwarded unchanged from the caller's contract.
        unsafe { self.inner.initialize_with_data(start, data) }
    }

    fn copy(&self) -> Result<Box<dyn LinearMemory + Send + Sync + 'static>, MemoryError> {
        Ok(Box::new(CappedMemory {
            inner: VMMemory(LinearMemory::copy(&self.inner)?),
        }))
    }
}

/// Where a [`ReservedMemory`]'s `VMMemoryDefinition` lives: in the instance's VM context
/// (wasmer gives its address), or owned here for a host-created memory.
enum Definition {
    Vm(NonNull<VMMemoryDefinition>),
    Host(Box<UnsafeCell<VMMemoryDefinition>>),
}

/// A linear memory that reserves its maximum (the plugin's cap) plus a guard in one mapping
/// when created and grows in place (`mprotect`), so its base never moves. Only for code
/// compiled for the dynamic style, which checks every access against `current_length`;
/// the guard (`PROT_NONE`) catches the accesses whose constant offset that check leaves out.
struct ReservedMemory {
    alloc: Mmap,
    def: Definition,
    /// The memory type, its maximum set (to the cap).
    ty: MemoryType,
    guard: u64,
    size: Pages,
}

impl std::fmt::Debug for ReservedMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReservedMemory")
            .field("ty", &self.ty)
            .field("guard", &self.guard)
            .field("size", &self.size)
            .field("reserved", &self.alloc.len())
            .finish()
    }
}

// SAFETY: the only non-Send/Sync part is the definition pointer. It points into the VM
// context of the instance that owns this memory (wasmer's own memories hold the same
// pointer and are Send + Sync), or into our own box; it is written only through `&mut self`
// (grow, reset), which the store serialises.
unsafe impl Send for ReservedMemory {}
// SAFETY: see above: shared references only read the definition.
unsafe impl Sync for ReservedMemory {}

impl ReservedMemory {
    fn new(ty: &MemoryType, guard: u64, location: Option<NonNull<VMMemoryDefinition>>) -> Result<Self, MemoryError> {
        let max = ty.maximum.unwrap_or(Pages::max_value());
        if max > Pages::max_value() {
            return Err(MemoryError::MaximumMemoryTooLarge {
                max_requested: max,
                max_allowed: Pages::max_value(),
            });
        }
        if ty.minimum > max {
            return Err(MemoryError::InvalidMemory {
                reason: format!(
                    "the maximum ({} pages) is less than the minimum ({} pages)",
                    max.0, ty.minimum.0
                ),
            });
        }
        let page = region_page_size();
        let guard = (guard as usize).next_multiple_of(page);
        let min_bytes = ty.minimum.bytes().0;
        let reserve = max.bytes().0 + guard;
        let mut alloc =
            Mmap::accessible_reserved(min_bytes, reserve, None, MmapType::Private).map_err(MemoryError::Region)?;
        let d = VMMemoryDefinition {
            base: alloc.as_mut_ptr(),
            current_length: min_bytes,
        };
        let def = match location {
            Some(mut p) => {
                // SAFETY: wasmer hands `create_vm_memory` the address of this memory's
                // definition in the new instance's VM context, valid for the instance's life.
                unsafe { *p.as_mut() = d };
                Definition::Vm(p)
            }
            None => Definition::Host(Box::new(UnsafeCell::new(d))),
        };
        let mut ty = *ty;
        ty.maximum = Some(max);
        Ok(ReservedMemory {
            alloc,
            def,
            ty,
            guard: guard as u64,
            size: ty.minimum,
        })
    }

    fn definition(&self) -> NonNull<VMMemoryDefinition> {
        match &self.def {
            Definition::Vm(p) => *p,
            // UnsafeCell::get never returns null.
            Definition::Host(b) => NonNull::new(b.get()).unwrap_or_else(|| unreachable!()),
        }
    }

    fn set_length(&mut self, bytes: usize) {
        let mut p = self.definition();
        // SAFETY: the definition is valid while this memory lives (see `new`), and `&mut self`
        // means no other code of this store touches the memory now.
        unsafe { p.as_mut().current_length = bytes };
    }
}

fn region_page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as usize
    } else {
        4096
    }
}

impl LinearMemory for ReservedMemory {
    fn ty(&self) -> MemoryType {
        let mut t = self.ty;
        t.minimum = self.size;
        t
    }

    fn size(&self) -> Pages {
        self.size
    }

    fn style(&self) -> MemoryStyle {
        MemoryStyle::Dynamic {
            offset_guard_size: self.guard,
        }
    }

    fn grow(&mut self, delta: Pages) -> Result<Pages, MemoryError> {
        let prev = self.size;
        if delta.0 == 0 {
            return Ok(prev);
        }
        let refused = MemoryError::CouldNotGrow {
            current: prev,
            attempted_delta: delta,
        };
        let Some(new) = prev.checked_add(delta) else {
            return Err(refused);
        };
        if Some(new) > self.ty.maximum || new > Pages::max_value() {
            return Err(refused);
        }
        self.alloc
            .make_accessible(prev.bytes().0, delta.bytes().0)
            .map_err(MemoryError::Region)?;
        self.size = new;
        self.set_length(new.bytes().0);
        Ok(prev)
    }

    fn grow_at_least(&mut self, min_size: u64) -> Result<(), MemoryError> {
        let cur = self.size.bytes().0 as u64;
        if cur < min_size {
            let pages = (min_size - cur).div_ceil(wasmer::WASM_PAGE_SIZE as u64);
            let pages = u32::try_from(pages).map_err(|_| MemoryError::CouldNotGrow {
                current: self.size,
                attempted_delta: Pages(u32::MAX),
            })?;
            self.grow(Pages(pages))?;
        }
        Ok(())
    }

    fn reset(&mut self) -> Result<(), MemoryError> {
        self.size = Pages(0);
        self.set_length(0);
        Ok(())
    }

    fn vmmemory(&self) -> NonNull<VMMemoryDefinition> {
        self.definition()
    }

    fn try_clone(&self) -> Result<Box<dyn LinearMemory + Send + Sync + 'static>, MemoryError> {
        Err(MemoryError::MemoryNotShared)
    }

    fn copy(&self) -> Result<Box<dyn LinearMemory + Send + Sync + 'static>, MemoryError> {
        let mut ty = self.ty;
        ty.minimum = self.size;
        let mut new = ReservedMemory::new(&ty, self.guard, None)?;
        let n = self.size.bytes().0;
        new.alloc.as_mut_slice()[..n].copy_from_slice(&self.alloc.as_slice()[..n]);
        Ok(Box::new(new))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maximum_is_clamped_to_the_cap() {
        let t = CappedTunables::new(Pages(16), MemoryMode::Capped);
        assert_eq!(
            t.adjust_memory(&MemoryType::new(1, None, false)).maximum,
            Some(Pages(16))
        );
        assert_eq!(
            t.adjust_memory(&MemoryType::new(1, Some(8), false)).maximum,
            Some(Pages(8))
        );
        assert_eq!(
            t.adjust_memory(&MemoryType::new(1, Some(100), false)).maximum,
            Some(Pages(16))
        );
        assert!(t.validate_memory(&MemoryType::new(17, None, false)).is_err());
        assert!(t.validate_memory(&MemoryType::new(16, None, false)).is_ok());
    }

    #[test]
    fn host_memory_growth_past_the_cap_is_refused_and_counted() {
        for mode in [MemoryMode::Static, MemoryMode::Capped, MemoryMode::Dynamic] {
            let t = CappedTunables::new(Pages(4), mode);
            let ty = MemoryType::new(1, None, false);
            let style = t.memory_style(&ty);
            assert_eq!(style, mode.style());
            let mut mem = t.create_host_memory(&ty, &style).unwrap();
            let before = grow_refusals();
            assert_eq!(mem.grow(Pages(3)).unwrap(), Pages(1), "{mode:?}");
            assert_eq!(grow_refusals(), before);
            assert!(mem.grow(Pages(1)).is_err());
            assert_eq!(grow_refusals(), before + 1);
            assert_eq!(mem.size(), Pages(4));
            // SAFETY: the definition of a live host memory.
            let def = unsafe { mem.vmmemory().as_ref().current_length };
            assert_eq!(def, 4 * 65536);
        }
    }

    #[test]
    fn capped_memories_grow_in_place_and_keep_their_bytes() {
        let t = CappedTunables::new(Pages(8), MemoryMode::Capped);
        let ty = MemoryType::new(1, None, false);
        let mut mem = t.create_host_memory(&ty, &t.memory_style(&ty)).unwrap();
        // SAFETY: the definition of a live host memory; the first page is accessible.
        let base = unsafe {
            let d = mem.vmmemory().as_ref();
            *d.base.add(100) = 42;
            d.base
        };
        mem.grow(Pages(7)).unwrap();
        // SAFETY: as above; the memory now has 8 accessible pages.
        unsafe {
            let d = mem.vmmemory().as_ref();
            assert_eq!(d.base, base, "a capped memory never moves");
            assert_eq!(*d.base.add(100), 42);
            *d.base.add(8 * 65536 - 1) = 7;
        }
        let copy = mem.copy().unwrap();
        assert_eq!(copy.size(), Pages(8));
        // SAFETY: the copy's definition, 8 accessible pages.
        unsafe { assert_eq!(*copy.vmmemory().as_ref().base.add(100), 42) };
    }

    #[test]
    fn reservations_follow_the_mode() {
        let cap = Pages(1024); // 64 MiB
        assert_eq!(MemoryMode::Static.reservation(cap, Pages(1)), (8 << 30) + 65536);
        assert_eq!(MemoryMode::Capped.reservation(cap, Pages(1)), (64 << 20) + 65536);
        assert_eq!(MemoryMode::Dynamic.reservation(cap, Pages(1)), 2 * 65536);
        for m in [MemoryMode::Static, MemoryMode::Capped, MemoryMode::Dynamic] {
            assert_eq!(MemoryMode::parse(m.as_str()), Some(m));
        }
        assert_eq!(MemoryMode::parse("huge"), None);
        assert_eq!(MemoryMode::default(), MemoryMode::Capped);
    }

    #[test]
    fn oversized_tables_are_refused() {
        let t = CappedTunables::new(Pages(4), MemoryMode::Capped);
        let big = TableType::new(wasmer::Type::FuncRef, MAX_TABLE_ELEMENTS + 1, None);
        assert!(t.adjust_table(&big).is_err());
        let ok = TableType::new(wasmer::Type::FuncRef, 10, None);
        assert_eq!(t.adjust_table(&ok).unwrap().maximum, Some(MAX_TABLE_ELEMENTS));
    }
}
