//! Shared libraries loaded from a verified artifact's sealed memfd: the one loader of the
//! native and the legacy (ThemisDB C++) runtimes.
//!
//! Before `dlopen` maps anything, the sealed bytes are checked to be an ELF image for this
//! machine whose header, program header table and every segment's file range lie inside the
//! file ([`check_elf`]): mapping a segment past the end of a (truncated) file would make the
//! first access to it die with `SIGBUS`. The library is then `dlopen`ed as `/proc/self/fd/N`,
//! never from the path the manifest names, and the memfd stays open while the library is
//! mapped, so that no other library can be loaded under the same name (glibc matches
//! already-loaded objects by name first).

use std::ffi::c_void;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;

use crate::artifact::{self, Verified};
use crate::error::Result;
use crate::{bail, err};

/// A shared library `dlopen`ed from a verified artifact's sealed memfd (`/proc/self/fd/N`,
/// `RTLD_NOW | RTLD_LOCAL`), together with that memfd. Dropping it `dlclose`s the library and
/// then closes the memfd, unless the image is still mapped (see `Drop`). The owner must have
/// shut the plugin down first.
pub struct SealedLibrary {
    lib: Option<libloading::os::unix::Library>,
    memfd: Option<OwnedFd>,
}

const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const ELFDATA2MSB: u8 = 2;
const ET_DYN: u16 = 3;
const EHDR64: usize = 64;
const PHDR64: usize = 56;
/// `e_phnum` value meaning "the real count is in section 0" (not accepted: no shared library
/// a compiler emits has that many program headers).
const PN_XNUM: u16 = 0xffff;

#[cfg(target_endian = "little")]
const HOST_DATA: u8 = ELFDATA2LSB;
#[cfg(target_endian = "big")]
const HOST_DATA: u8 = ELFDATA2MSB;

#[cfg(target_arch = "x86_64")]
const HOST_MACHINE: Option<u16> = Some(62);
#[cfg(target_arch = "aarch64")]
const HOST_MACHINE: Option<u16> = Some(183);
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const HOST_MACHINE: Option<u16> = None;

/// Check that `read_at` (a file of `len` bytes) holds a 64-bit ELF shared object for this
/// machine whose header, program header table and every program header's file range
/// (`p_offset + p_filesz`) lie inside the file: `KEEL_ERR_LIBRARY_MALFORMED` otherwise. A file
/// that is not ELF, or ELF for another machine, gets `KEEL_ERR_LIBRARY_LOAD` (what `dlopen`
/// reported for it before this check).
pub fn check_elf(len: u64, read_at: impl Fn(&mut [u8], u64) -> std::io::Result<()>, what: &str) -> Result<()> {
    let bad = |why: String| err!(KEEL_ERR_LIBRARY_MALFORMED, "{what}: {why} (refused before dlopen)");
    // What dlopen itself refuses safely keeps dlopen's code: not ELF, or not for this machine.
    let foreign = |why: String| err!(KEEL_ERR_LIBRARY_LOAD, "{what}: {why} (refused before dlopen)");
    let mut magic = [0u8; 4];
    if len < 4 || read_at(&mut magic, 0).is_err() || magic != *b"\x7fELF" {
        return Err(foreign("not an ELF file (bad magic)".into()));
    }
    if len < EHDR64 as u64 {
        return Err(bad(format!("{len} bytes is too short for an ELF header (truncated)")));
    }
    let mut eh = [0u8; EHDR64];
    read_at(&mut eh, 0).map_err(|e| bad(format!("reading the ELF header failed: {e}")))?;
    if eh[4] != ELFCLASS64 || !cfg!(target_pointer_width = "64") {
        return Err(foreign(format!("ELF class {} is not this machine's (64-bit)", eh[4])));
    }
    if eh[5] != HOST_DATA {
        return Err(foreign(format!("ELF data encoding {} is not this machine's", eh[5])));
    }
    let big = HOST_DATA == ELFDATA2MSB;
    let u16_at = |b: &[u8], o: usize| {
        let v = [b[o], b[o + 1]];
        if big {
            u16::from_be_bytes(v)
        } else {
            u16::from_le_bytes(v)
        }
    };
    let u32_at = |b: &[u8], o: usize| {
        let v = [b[o], b[o + 1], b[o + 2], b[o + 3]];
        if big {
            u32::from_be_bytes(v)
        } else {
            u32::from_le_bytes(v)
        }
    };
    let u64_at = |b: &[u8], o: usize| {
        let mut v = [0u8; 8];
        v.copy_from_slice(&b[o..o + 8]);
        if big {
            u64::from_be_bytes(v)
        } else {
            u64::from_le_bytes(v)
        }
    };
    let e_type = u16_at(&eh, 16);
    if e_type != ET_DYN {
        return Err(foreign(format!("ELF type {e_type} is not a shared object (ET_DYN)")));
    }
    let e_machine = u16_at(&eh, 18);
    if let Some(m) = HOST_MACHINE {
        if e_machine != m {
            return Err(foreign(format!("ELF machine {e_machine} is not this machine's ({m})")));
        }
    }
    let e_phoff = u64_at(&eh, 32);
    let e_ehsize = u16_at(&eh, 52) as usize;
    let e_phentsize = u16_at(&eh, 54) as usize;
    let e_phnum = u16_at(&eh, 56);
    if e_ehsize < EHDR64 {
        return Err(bad(format!("ELF header size {e_ehsize} is too small")));
    }
    if e_phnum == 0 || e_phnum == PN_XNUM {
        return Err(bad(format!("{e_phnum} program headers")));
    }
    if e_phentsize < PHDR64 {
        return Err(bad(format!("program header size {e_phentsize} is too small")));
    }
    let table = (e_phentsize as u64) * u64::from(e_phnum);
    let end = e_phoff.checked_add(table).filter(|&e| e <= len);
    if end.is_none() {
        return Err(bad(format!(
            "the program header table ({e_phnum} x {e_phentsize} bytes at offset {e_phoff}) ends past the end of the file ({len} bytes)"
        )));
    }
    let mut ph = vec![0u8; table as usize];
    read_at(&mut ph, e_phoff).map_err(|e| bad(format!("reading the program headers failed: {e}")))?;
    for i in 0..e_phnum as usize {
        let h = &ph[i * e_phentsize..i * e_phentsize + PHDR64];
        let p_type = u32_at(h, 0);
        let p_offset = u64_at(h, 8);
        let p_filesz = u64_at(h, 32);
        let p_memsz = u64_at(h, 40);
        if p_offset.checked_add(p_filesz).is_none_or(|e| e > len) {
            return Err(bad(format!(
                "program header {i} (type {p_type:#x}) covers file bytes {p_offset}..{} past the end of the file ({len} bytes)",
                p_offset.saturating_add(p_filesz)
            )));
        }
        // PT_LOAD: the file part of a segment cannot be larger than the segment.
        if p_type == 1 && p_filesz > p_memsz {
            return Err(bad(format!(
                "loadable segment {i} has {p_filesz} file bytes but only {p_memsz} bytes in memory"
            )));
        }
    }
    Ok(())
}

impl SealedLibrary {
    /// Check the verified artifact's ELF image ([`check_elf`]) and `dlopen` its sealed memfd.
    /// The library's constructors run here, so call this only after the digest (and
    /// signature) checks, which a [`Verified`] artifact has passed.
    pub fn open(artifact: Verified, plugin: &str) -> Result<SealedLibrary> {
        let len = artifact.len();
        let Some(fd) = artifact.into_sealed_fd() else {
            bail!(KEEL_ERR_INTERNAL, "native artifact of '{plugin}' is not a sealed memfd");
        };
        let file = std::fs::File::from(fd);
        check_elf(
            len,
            |buf, off| file.read_exact_at(buf, off),
            &format!("plugin '{plugin}'"),
        )?;
        let fd = OwnedFd::from(file);
        let path = artifact::proc_path(&fd);
        // SAFETY: dlopen runs the library's constructors; the bytes were verified against the
        // pinned digest and their ELF layout checked above, and the memfd is sealed.
        let lib = unsafe { libloading::os::unix::Library::open(Some(&path), libc::RTLD_NOW | libc::RTLD_LOCAL) }
            .map_err(|e| err!(KEEL_ERR_LIBRARY_LOAD, "plugin '{plugin}': dlopen failed: {e}"))?;
        Ok(SealedLibrary {
            lib: Some(lib),
            memfd: Some(fd),
        })
    }

    /// The address of an exported symbol (`name` NUL-terminated), if the library exports it.
    pub fn symbol(&self, name: &[u8]) -> Option<*mut c_void> {
        let lib = self.lib.as_ref()?;
        // SAFETY: only the address is taken; the caller decides the type it is used as.
        let sym: libloading::os::unix::Symbol<*mut c_void> = unsafe { lib.get(name) }.ok()?;
        Some(sym.into_raw())
    }
}

impl Drop for SealedLibrary {
    fn drop(&mut self) {
        let name = self.memfd.as_ref().map(artifact::proc_path);
        drop(self.lib.take());
        if let (Some(fd), Some(name)) = (self.memfd.take(), name) {
            // If the library is still mapped (a TLS destructor, RTLD_NODELETE or a
            // STB_GNU_UNIQUE symbol keeps it), keep the descriptor open forever so its name is
            // never reused for another library: glibc would hand back the old object for the
            // new name.
            let cname = std::ffi::CString::new(name).unwrap_or_default();
            // SAFETY: RTLD_NOLOAD only queries; cname is a valid NUL-terminated string.
            let h = unsafe { libc::dlopen(cname.as_ptr(), libc::RTLD_NOLOAD | libc::RTLD_LAZY) };
            if h.is_null() {
                drop(fd);
            } else {
                // SAFETY: balances the NOLOAD reference just taken.
                unsafe { libc::dlclose(h) };
                std::mem::forget(fd);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::keel_status;

    /// This test binary itself is a 64-bit ELF (PIE: ET_DYN) for this machine.
    #[test]
    fn own_executable_passes_and_its_truncations_fail() {
        let bytes = std::fs::read("/proc/self/exe").unwrap();
        let read = |b: &[u8]| {
            let b = b.to_vec();
            move |buf: &mut [u8], off: u64| -> std::io::Result<()> {
                let off = off as usize;
                if off + buf.len() > b.len() {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                buf.copy_from_slice(&b[off..off + buf.len()]);
                Ok(())
            }
        };
        let is_pie = u16::from_le_bytes([bytes[16], bytes[17]]) == ET_DYN;
        if is_pie {
            check_elf(bytes.len() as u64, read(&bytes), "self").unwrap();
        }
        for cut in [10, 63, 64, 200, 4096] {
            let e = check_elf(cut as u64, read(&bytes[..cut]), "cut").unwrap_err();
            assert_eq!(e.status(), keel_status::KEEL_ERR_LIBRARY_MALFORMED, "{cut}: {e}");
        }
        let mut bad = bytes.clone();
        bad[0] = 0;
        for (len, b) in [(bad.len(), &bad[..]), (0, &bytes[..0]), (3, &bytes[..3])] {
            let e = check_elf(len as u64, read(b), "magic").unwrap_err();
            assert_eq!(e.status(), keel_status::KEEL_ERR_LIBRARY_LOAD, "{e}");
        }
    }
}
