//! Artifacts: a plugin binary's bytes, read once, pinned and hashed.
//!
//! One path leads from a manifest's binary reference to code a runtime may run:
//!
//! 1. [`read`] resolves the binary *beneath* the manifest's directory without following any
//!    symbolic link (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, or a component walk
//!    with `O_NOFOLLOW` where `openat2` is unavailable), opens it `O_NONBLOCK` (a FIFO never
//!    blocks the loader), checks on the opened descriptor that it is a regular file, and reads
//!    it into an [`Unverified`] artifact: native binaries are copied into a memfd, hashed on
//!    the way (one pass), and the memfd sealed (no write, grow, shrink, or further seals; its
//!    sealed size must be the number of bytes hashed); WASM modules are read into memory and
//!    hashed.
//! 2. [`Unverified::verify`] compares the SHA-256 with the digest the manifest pins and turns
//!    the artifact into a [`Verified`] one. Runtimes accept only `Verified`.
//!
//! The bytes that are hashed are the bytes that are later mapped (native: the runtime
//! `dlopen`s `/proc/self/fd/N` of the sealed memfd) or compiled (WASM); nothing downstream opens
//! the path again, so replacing or editing the file on disk after the check cannot change what
//! runs. The host's load path and `keel_verify` / `keel verify` both use [`read_verified`].

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Component, Path};

use rustix::fs::{Mode, OFlags, SealFlags};

use crate::digest;
use crate::error::{Error, Result};
use crate::fsio::{check_regular, open_regular_nofollow, read_flags};
use crate::manifest::{BinaryRef, ManifestFile, RuntimeKind};
use crate::{bail, err};

/// Native binaries larger than this are refused.
pub const MAX_NATIVE_BYTES: u64 = 1 << 30;
/// WASM modules larger than this are refused.
pub const MAX_WASM_BYTES: u64 = 256 << 20;

/// Bytes of one plugin binary, hashed but not yet compared with the manifest's pin.
/// Nothing but [`Unverified::verify`] turns it into something a runtime accepts.
#[derive(Debug)]
pub struct Unverified {
    sha256: [u8; 32],
    len: u64,
    body: Body,
}

/// Bytes of one plugin binary whose SHA-256 matched the digest pinned in its manifest.
/// Only [`Unverified::verify`] makes one.
#[derive(Debug)]
pub struct Verified {
    sha256: [u8; 32],
    len: u64,
    body: Body,
}

/// The name this module used before artifacts were typed: a verified artifact.
pub type Artifact = Verified;

#[derive(Debug)]
enum Body {
    /// A sealed memfd holding the exact bytes that were hashed.
    Sealed(OwnedFd),
    /// Bytes in memory (WASM modules are compiled from these).
    Bytes(std::sync::Arc<[u8]>),
}

impl Unverified {
    /// Lower-case hex SHA-256 of the bytes.
    pub fn sha256_hex(&self) -> String {
        hex::encode(self.sha256)
    }

    pub fn sha256(&self) -> &[u8; 32] {
        &self.sha256
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Compare the bytes' SHA-256 with `pinned_hex` (case-insensitive): the only way to a
    /// [`Verified`] artifact. `KEEL_ERR_DIGEST_MISMATCH` otherwise; `what` names the binary in
    /// the message.
    pub fn verify(self, pinned_hex: &str, what: &str) -> Result<Verified> {
        let expected = pinned_hex.trim().to_ascii_lowercase();
        let actual = self.sha256_hex();
        if expected != actual {
            bail!(
                KEEL_ERR_DIGEST_MISMATCH,
                "{what}: SHA-256 of the binary is {actual}, the manifest pins {expected} (binary modified or manifest stale)"
            );
        }
        Ok(Verified {
            sha256: self.sha256,
            len: self.len,
            body: self.body,
        })
    }

    /// Accept bytes whose manifest pins no digest, because the host's policy allows
    /// unpinned binaries (the caller checks the policy: see [`read_verified`]). The
    /// [`Verified`] artifact still carries the SHA-256 of exactly these bytes.
    fn accept_unpinned(self) -> Verified {
        Verified {
            sha256: self.sha256,
            len: self.len,
            body: self.body,
        }
    }
}

impl Verified {
    /// Lower-case hex SHA-256 of the bytes.
    pub fn sha256_hex(&self) -> String {
        hex::encode(self.sha256)
    }

    pub fn sha256(&self) -> &[u8; 32] {
        &self.sha256
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The sealed memfd (native artifacts).
    pub fn sealed_fd(&self) -> Option<&OwnedFd> {
        match &self.body {
            Body::Sealed(fd) => Some(fd),
            Body::Bytes(_) => None,
        }
    }

    /// Take ownership of the sealed memfd (the native runtimes keep it open while the library
    /// is mapped).
    pub fn into_sealed_fd(self) -> Option<OwnedFd> {
        match self.body {
            Body::Sealed(fd) => Some(fd),
            Body::Bytes(_) => None,
        }
    }

    /// The bytes, for artifacts read into memory (WASM).
    pub fn bytes(&self) -> Option<&std::sync::Arc<[u8]>> {
        match &self.body {
            Body::Bytes(b) => Some(b),
            Body::Sealed(_) => None,
        }
    }
}

/// Map an error of resolving `rel` beneath `dir` to its cause.
fn beneath_error(dir: &Path, rel: &Path, e: rustix::io::Errno) -> Error {
    let full = dir.join(rel);
    match e {
        rustix::io::Errno::LOOP => err!(
            KEEL_ERR_SYMLINK_REFUSED,
            "{}: a component of the binary path '{}' is a symbolic link (refused: binaries are resolved beneath the manifest's directory without following links)",
            full.display(),
            rel.display()
        ),
        rustix::io::Errno::XDEV => err!(
            KEEL_ERR_MANIFEST_BAD_PATH,
            "{}: the binary path '{}' leaves the manifest's directory",
            full.display(),
            rel.display()
        ),
        rustix::io::Errno::NOTDIR => err!(
            KEEL_ERR_FILE_NOT_FOUND,
            "{}: a component of '{}' is not a directory",
            full.display(),
            rel.display()
        ),
        e => Error::io(&full, &std::io::Error::from(e)),
    }
}

/// Open `rel` (relative, no `..`) beneath the directory `dir` without following any symbolic
/// link in any component, and check it is a regular file.
pub fn open_beneath(dir: &Path, rel: &Path) -> Result<(File, u64)> {
    for c in rel.components() {
        if !matches!(c, Component::Normal(_) | Component::CurDir) {
            bail!(
                KEEL_ERR_MANIFEST_BAD_PATH,
                "'{}' must be a relative path inside the manifest's directory",
                rel.display()
            );
        }
    }
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let dirfd = rustix::fs::open(dir, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| Error::io(dir, &std::io::Error::from(e)))?;
    let resolve = rustix::fs::ResolveFlags::BENEATH
        | rustix::fs::ResolveFlags::NO_SYMLINKS
        | rustix::fs::ResolveFlags::NO_MAGICLINKS;
    match rustix::fs::openat2(&dirfd, rel, read_flags(true), Mode::empty(), resolve) {
        Ok(fd) => check_regular(fd, &dir.join(rel)),
        // No openat2 (kernel before 5.6, or filtered by seccomp): walk the components.
        Err(rustix::io::Errno::NOSYS) | Err(rustix::io::Errno::PERM) => walk_beneath(dirfd, dir, rel),
        Err(e) => Err(beneath_error(dir, rel, e)),
    }
}

/// The fallback of [`open_beneath`]: open every directory component with
/// `O_DIRECTORY | O_NOFOLLOW` relative to the previous one, then the file with `O_NOFOLLOW`.
#[doc(hidden)]
pub fn walk_beneath(dirfd: OwnedFd, dir: &Path, rel: &Path) -> Result<(File, u64)> {
    let parts: Vec<_> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(p) => Some(p),
            _ => None,
        })
        .collect();
    let Some((last, dirs)) = parts.split_last() else {
        bail!(
            KEEL_ERR_MANIFEST_BAD_PATH,
            "the binary path '{}' is empty",
            rel.display()
        );
    };
    let mut cur = dirfd;
    for d in dirs {
        cur = rustix::fs::openat(
            &cur,
            *d,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| {
            // O_DIRECTORY | O_NOFOLLOW on a symbolic link fails with ENOTDIR: say which it was.
            let link = e == rustix::io::Errno::NOTDIR
                && rustix::fs::statat(&cur, *d, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
                    .is_ok_and(|st| rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Symlink);
            beneath_error(dir, rel, if link { rustix::io::Errno::LOOP } else { e })
        })?;
    }
    let fd =
        rustix::fs::openat(&cur, *last, read_flags(true), Mode::empty()).map_err(|e| beneath_error(dir, rel, e))?;
    check_regular(fd, &dir.join(rel))
}

/// Bytes read from a native binary per step of [`seal`]: small enough to stay in the cache
/// between hashing and writing them, large enough to keep the system calls few.
const COPY_CHUNK: usize = 256 << 10;

/// Copy an opened native binary into a sealed memfd, hashing the bytes on the way (one pass
/// over the data: each chunk is read, hashed while in the cache, and written to the memfd).
///
/// The digest is over exactly the sealed content `dlopen` later maps: the memfd is created
/// here, unnamed and close-on-exec, and until it is sealed no one but this function writes to
/// it (another process could reach it only through `/proc/<pid>/fd`, which takes ptrace
/// rights over this process, i.e. the power to change its memory anyway); after the seals
/// (no write, grow, shrink, or further seals) it cannot change, and its sealed size must
/// equal the number of bytes hashed. Measured against copying in the kernel
/// (`copy_file_range`/`sendfile`) and hashing a mapping of the sealed memfd afterwards, this
/// is about 10 % faster for 1 MiB (`benches/trust.rs`): the cost is the memfd's page
/// allocation and the hash, not the copy.
fn seal(mut file: File, len: u64, path: &Path, label: &str) -> Result<Unverified> {
    if len > MAX_NATIVE_BYTES {
        bail!(
            KEEL_ERR_FILE_TOO_LARGE,
            "{}: {len} bytes is more than the {MAX_NATIVE_BYTES} accepted",
            path.display()
        );
    }
    let name = format!("keel:{label}");
    let memfd = rustix::fs::memfd_create(
        name.as_str(),
        rustix::fs::MemfdFlags::CLOEXEC | rustix::fs::MemfdFlags::ALLOW_SEALING,
    )
    .map_err(|e| err!(KEEL_ERR_IO, "memfd_create failed: {e}"))?;
    let mut dst = File::from(memfd);
    let mut hasher = digest::Hasher::new();
    let mut buf = vec![0u8; COPY_CHUNK.min(len as usize + 1).max(4096)];
    let mut copied = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io(path, &e)),
        };
        copied += n as u64;
        if copied > MAX_NATIVE_BYTES {
            bail!(
                KEEL_ERR_FILE_TOO_LARGE,
                "{}: grew past {MAX_NATIVE_BYTES} bytes while being read",
                path.display()
            );
        }
        hasher.update(&buf[..n]);
        dst.write_all(&buf[..n])
            .map_err(|e| err!(KEEL_ERR_IO, "writing the memfd failed: {e}"))?;
    }
    rustix::fs::fcntl_add_seals(
        dst.as_fd(),
        SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE | SealFlags::SEAL,
    )
    .map_err(|e| err!(KEEL_ERR_IO, "sealing the memfd failed: {e}"))?;
    // From here on the memfd cannot change; it must hold exactly the bytes hashed.
    let sealed_len = rustix::fs::fstat(&dst)
        .map_err(|e| err!(KEEL_ERR_IO, "fstat of the memfd failed: {e}"))?
        .st_size as u64;
    if sealed_len != copied {
        bail!(
            KEEL_ERR_IO,
            "{}: the sealed copy holds {sealed_len} bytes, {copied} were read and hashed",
            path.display()
        );
    }
    Ok(Unverified {
        sha256: hasher.finalize(),
        len: sealed_len,
        body: Body::Sealed(OwnedFd::from(dst)),
    })
}

/// Read an opened WASM module into memory and hash it.
fn slurp(file: File, len: u64, path: &Path) -> Result<Unverified> {
    if len > MAX_WASM_BYTES {
        bail!(
            KEEL_ERR_FILE_TOO_LARGE,
            "{}: {len} bytes is more than the {MAX_WASM_BYTES} accepted",
            path.display()
        );
    }
    let mut buf = Vec::with_capacity(len as usize);
    file.take(MAX_WASM_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::io(path, &e))?;
    if buf.len() as u64 > MAX_WASM_BYTES {
        bail!(
            KEEL_ERR_FILE_TOO_LARGE,
            "{}: grew past {MAX_WASM_BYTES} bytes while being read",
            path.display()
        );
    }
    Ok(from_bytes(buf))
}

/// Read the binary `bin` names, for `runtime`, beneath the manifest's directory (see the
/// module documentation). `label` names the memfd (`keel:<label>`).
pub fn read(bin: &BinaryRef, runtime: RuntimeKind, label: &str) -> Result<Unverified> {
    let (file, len) = open_beneath(&bin.dir, &bin.relative)?;
    match runtime {
        RuntimeKind::Wasm => slurp(file, len, &bin.path),
        RuntimeKind::Native | RuntimeKind::Themis => seal(file, len, &bin.path, label),
    }
}

/// The binary a manifest names for this platform, read as a load reads it ([`read`]) but not
/// yet compared with the pin (tools show both digests).
pub fn read_for(mf: &ManifestFile) -> Result<(BinaryRef, Unverified)> {
    let bin = mf.manifest.binary_for_platform(&mf.dir())?;
    let art = read(&bin, mf.manifest.runtime, &mf.manifest.name)?;
    Ok((bin, art))
}

/// Whether a binary whose manifest pins no digest may be loaded (the host's
/// `allow_unpinned` policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unpinned {
    /// Refuse it with `KEEL_ERR_UNPINNED_BINARY` (the default policy).
    Refuse,
    /// Accept it: the artifact records the SHA-256 of the bytes read.
    Allow,
}

/// The one read-and-check path of the host's load and of `keel_verify`: the binary for this
/// platform, read beneath the manifest's directory and checked against the pinned digest
/// (`KEEL_ERR_DIGEST_MISMATCH`). A manifest that pins no digest is refused with
/// `KEEL_ERR_UNPINNED_BINARY` *before* the binary is opened, unless `unpinned` is
/// [`Unpinned::Allow`].
pub fn read_verified(mf: &ManifestFile, unpinned: Unpinned) -> Result<(BinaryRef, Verified)> {
    if mf.manifest.is_unpinned() && unpinned == Unpinned::Refuse {
        bail!(
            KEEL_ERR_UNPINNED_BINARY,
            "plugin '{}': the manifest pins no SHA-256 for its binary (no \"expected_hash\") and the host's policy does not allow unpinned binaries (pin it, or opt in with keel_host_set_allow_unpinned before the first load)",
            mf.manifest.name
        );
    }
    let (bin, art) = read_for(mf)?;
    let art = match &bin.sha256 {
        Some(pin) => {
            let what = format!("plugin '{}' binary {}", mf.manifest.name, bin.path.display());
            art.verify(pin, &what)?
        }
        None => art.accept_unpinned(),
    };
    Ok((bin, art))
}

/// Copy the native binary at `path` (final component `O_NOFOLLOW`, regular file) into a
/// sealed memfd and hash it. For tools and tests; loads go through [`read`].
pub fn read_sealed(path: &Path, label: &str) -> Result<Unverified> {
    let (file, len) = open_regular_nofollow(path)?;
    seal(file, len, path, label)
}

/// Read the module at `path` (final component `O_NOFOLLOW`, regular file) into memory and hash
/// it. For tools and tests; loads go through [`read`].
pub fn read_bytes(path: &Path) -> Result<Unverified> {
    let (file, len) = open_regular_nofollow(path)?;
    slurp(file, len, path)
}

/// An artifact from bytes already in memory.
pub fn from_bytes(bytes: Vec<u8>) -> Unverified {
    let sha256 = digest::sha256(&bytes);
    let len = bytes.len() as u64;
    Unverified {
        sha256,
        len,
        body: Body::Bytes(bytes.into()),
    }
}

/// `/proc/self/fd/N` for a descriptor.
pub fn proc_path(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::keel_status;

    fn tmp(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("keel-artifact-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// The sealed copy holds exactly the file's bytes, carries every seal, and its digest is
    /// theirs: for an empty file, sizes off page and copy-chunk boundaries,
    /// and a 1 MiB + 1 file.
    #[test]
    fn sealed_copy_is_the_file_and_its_digest_is_over_the_sealed_bytes() {
        let d = tmp("seal");
        for size in [0usize, 1, 4095, 4097, 65_537, (1 << 20) + 1] {
            let bytes: Vec<u8> = (0..size).map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8).collect();
            let p = d.join(format!("lib{size}.so"));
            std::fs::write(&p, &bytes).unwrap();
            let art = read_sealed(&p, "seal-test").unwrap();
            assert_eq!(art.len(), size as u64);
            assert_eq!(*art.sha256(), digest::sha256(&bytes), "size {size}");
            let art = art.verify(&hex::encode(digest::sha256(&bytes)), "t").unwrap();
            let fd = art.sealed_fd().unwrap();
            let seals = rustix::fs::fcntl_get_seals(fd).unwrap();
            assert!(
                seals.contains(SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE | SealFlags::SEAL),
                "{seals:?}"
            );
            let mut back = Vec::new();
            std::fs::File::open(proc_path(fd))
                .unwrap()
                .read_to_end(&mut back)
                .unwrap();
            assert!(back == bytes, "size {size}: the memfd holds other bytes");
        }
    }

    #[test]
    fn walk_fallback_refuses_a_symlinked_directory_and_reads_a_plain_path() {
        let d = tmp("walk");
        let outside = tmp("walk-outside");
        std::fs::write(outside.join("lib.so"), b"outside").unwrap();
        std::fs::create_dir_all(d.join("sub")).unwrap();
        std::fs::write(d.join("sub/lib.so"), b"inside").unwrap();
        std::os::unix::fs::symlink(&outside, d.join("escape")).unwrap();
        let dirfd = || rustix::fs::open(&d, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        let e = walk_beneath(dirfd(), &d, Path::new("escape/lib.so")).unwrap_err();
        assert_eq!(e.status(), keel_status::KEEL_ERR_SYMLINK_REFUSED, "{e}");
        let (mut f, len) = walk_beneath(dirfd(), &d, Path::new("sub/lib.so")).unwrap();
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        assert_eq!((s.as_str(), len), ("inside", 6));
        // The same through openat2.
        let e = open_beneath(&d, Path::new("escape/lib.so")).unwrap_err();
        assert_eq!(e.status(), keel_status::KEEL_ERR_SYMLINK_REFUSED, "{e}");
        assert_eq!(open_beneath(&d, Path::new("./sub/lib.so")).unwrap().1, 6);
        let e = open_beneath(&d, Path::new("sub")).unwrap_err();
        assert_eq!(e.status(), keel_status::KEEL_ERR_NOT_REGULAR_FILE, "{e}");
    }
}
