//! Memory cap per instance: wasmer `Tunables` that clamp every memory's maximum to the
//! plugin's cap, and a memory wrapper that records refused growth.
//!
//! A guest that asks `memory.grow` for more than the cap gets -1 (inside the guest, as the
//! spec says); the wrapper counts the refusal in a thread-local counter. Growth only ever
//! happens on the thread running the guest, so the call path reads the counter before and
//! after a call to learn whether the guest hit its cap during that call, without any shared
//! state.

use std::cell::Cell;
use std::ptr::NonNull;

use wasmer::sys::vm::{
    LinearMemory, MemoryError, MemoryStyle, Trap, VMConfig, VMMemory, VMMemoryDefinition, VMTable, VMTableDefinition,
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

fn note_refusal() {
    GROW_REFUSED.with(|c| c.set(c.get().wrapping_add(1)));
}

/// Tunables of one plugin's engine: the base tunables for the host, with every memory capped.
pub struct CappedTunables {
    base: BaseTunables,
    cap: Pages,
}

impl CappedTunables {
    pub fn new(cap: Pages) -> CappedTunables {
        CappedTunables {
            base: BaseTunables::new(),
            cap,
        }
    }

    pub fn cap(&self) -> Pages {
        self.cap
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
    /// Always static: the whole wasm32 address space is reserved up front, so a memory's base
    /// address never moves while the instance lives (the call path relies on this).
    fn memory_style(&self, _memory: &MemoryType) -> MemoryStyle {
        MemoryStyle::Static
    }

    fn table_style(&self, table: &TableType) -> TableStyle {
        self.base.table_style(table)
    }

    fn create_host_memory(&self, ty: &MemoryType, style: &MemoryStyle) -> Result<VMMemory, MemoryError> {
        let ty = self.adjust_memory(ty);
        self.validate_memory(&ty)?;
        let inner = self.base.create_host_memory(&ty, style)?;
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
        // SAFETY: forwarded unchanged from the caller's contract.
        let inner = unsafe { self.base.create_vm_memory(&ty, style, vm_definition_location)? };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maximum_is_clamped_to_the_cap() {
        let t = CappedTunables::new(Pages(16));
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
        let t = CappedTunables::new(Pages(4));
        let ty = MemoryType::new(1, None, false);
        let style = t.memory_style(&ty);
        let mut mem = t.create_host_memory(&ty, &style).unwrap();
        let before = grow_refusals();
        assert_eq!(mem.grow(Pages(3)).unwrap(), Pages(1));
        assert_eq!(grow_refusals(), before);
        assert!(mem.grow(Pages(1)).is_err());
        assert_eq!(grow_refusals(), before + 1);
        assert_eq!(mem.size(), Pages(4));
    }

    #[test]
    fn oversized_tables_are_refused() {
        let t = CappedTunables::new(Pages(4));
        let big = TableType::new(wasmer::Type::FuncRef, MAX_TABLE_ELEMENTS + 1, None);
        assert!(t.adjust_table(&big).is_err());
        let ok = TableType::new(wasmer::Type::FuncRef, 10, None);
        assert_eq!(t.adjust_table(&ok).unwrap().maximum, Some(MAX_TABLE_ELEMENTS));
    }
}
