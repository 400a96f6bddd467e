//! Artifacts: a plugin binary's bytes, read once, pinned and hashed.
//!
//! The bytes that are hashed are the bytes that are later mapped (native) or compiled
//! (WASM); nothing downstream opens the path again. A native binary is copied through an
//! `O_NOFOLLOW` descriptor into a sealed memfd (no write, grow, shrink, or further seals),
//! the memfd is hashed, and the runtime `dlopen`s `/proc/self/fd/N`: replacing or editing the
//! file on disk after the check cannot change what runs.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::Path;

use rustix::fs::{Mode, OFlags, SealFlags};

use crate::digest;
use crate::error::{Error, Result};
use crate::{bail, err};

/// Native binaries larger than this are refused.
pub const MAX_NATIVE_BYTES: u64 = 1 << 30;
/// WASM modules larger than this are refused.
pub const MAX_WASM_BYTES: u64 = 256 << 20;

/// Verified bytes of one plugin binary.
#[derive(Debug)]
pub struct Artifact {
    sha256: [u8; 32],
    len: u64,
    body: Body,
}

#[derive(Debug)]
enum Body {
    /// A sealed memfd holding the exact bytes that were hashed.
    Sealed(OwnedFd),
    /// Bytes in memory (WASM modules are compiled from these).
    Bytes(std::sync::Arc<[u8]>),
}

impl Artifact {
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

    /// Take ownership of the sealed memfd (native runtime keeps it open while the library
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

    /// Fail with `KEEL_ERR_DIGEST_MISMATCH` unless the bytes hash to `expected_hex`
    /// (case-insensitive).
    pub fn check_digest(&self, expected_hex: &str, what: &str) -> Result<()> {
        let expected = expected_hex.trim().to_ascii_lowercase();
        let actual = self.sha256_hex();
        if expected != actual {
            bail!(
                KEEL_ERR_DIGEST_MISMATCH,
                "{what}: SHA-256 of the binary is {actual}, the manifest pins {expected} (binary modified or manifest stale)"
            );
        }
        Ok(())
    }
}

fn open_nofollow(path: &Path) -> Result<(File, u64)> {
    let fd = rustix::fs::open(path, OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| Error::io(path, &std::io::Error::from(e)))?;
    let file = File::from(fd);
    let meta = file.metadata().map_err(|e| Error::io(path, &e))?;
    if !meta.is_file() {
        bail!(KEEL_ERR_IO, "{}: not a regular file", path.display());
    }
    Ok((file, meta.len()))
}

/// Copy a native binary into a sealed memfd and hash the sealed copy.
pub fn read_sealed(path: &Path, label: &str) -> Result<Artifact> {
    let (mut file, len) = open_nofollow(path)?;
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
    let copied =
        std::io::copy(&mut (&mut file).take(MAX_NATIVE_BYTES + 1), &mut dst).map_err(|e| Error::io(path, &e))?;
    if copied > MAX_NATIVE_BYTES {
        bail!(
            KEEL_ERR_FILE_TOO_LARGE,
            "{}: grew past {MAX_NATIVE_BYTES} bytes while being read",
            path.display()
        );
    }
    rustix::fs::fcntl_add_seals(
        dst.as_fd(),
        SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE | SealFlags::SEAL,
    )
    .map_err(|e| err!(KEEL_ERR_IO, "sealing the memfd failed: {e}"))?;
    // Hash the sealed copy: from here on these bytes cannot change.
    let mut hasher = digest::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    loop {
        let n = dst
            .read_at(&mut buf, off)
            .map_err(|e| err!(KEEL_ERR_IO, "reading the memfd failed: {e}"))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        off += n as u64;
    }
    Ok(Artifact {
        sha256: hasher.finalize(),
        len: off,
        body: Body::Sealed(OwnedFd::from(dst)),
    })
}

/// Read a module into memory (O_NOFOLLOW) and hash it.
pub fn read_bytes(path: &Path) -> Result<Artifact> {
    let (file, len) = open_nofollow(path)?;
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

/// An artifact from bytes already in memory.
pub fn from_bytes(bytes: Vec<u8>) -> Artifact {
    let sha256 = digest::sha256(&bytes);
    let len = bytes.len() as u64;
    Artifact {
        sha256,
        len,
        body: Body::Bytes(bytes.into()),
    }
}

/// `/proc/self/fd/N` for a descriptor.
pub fn proc_path(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}
