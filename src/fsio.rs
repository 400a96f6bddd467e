//! How Keel opens the files it reads (manifests, `.sig` files, trust stores, binaries): never
//! blocking, never anything but a regular file.
//!
//! Every open is `O_RDONLY | O_NONBLOCK | O_CLOEXEC` (binaries add `O_NOFOLLOW`, see
//! [`crate::artifact`]): opening a FIFO returns at once instead of waiting for a writer. The
//! file type is then checked on the opened descriptor (`fstat`, no race with a rename), and
//! anything but a regular file (FIFO, socket, device, directory) is refused with
//! `KEEL_ERR_NOT_REGULAR_FILE`. A leaf module: it imports nothing of Keel but errors.

use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{FileType, Mode, OFlags};

use crate::bail;
use crate::error::{Error, Result};

/// `O_RDONLY | O_NONBLOCK | O_CLOEXEC`, plus `O_NOFOLLOW` when `nofollow`.
pub fn read_flags(nofollow: bool) -> OFlags {
    let f = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC;
    if nofollow {
        f | OFlags::NOFOLLOW
    } else {
        f
    }
}

/// Check on an opened descriptor that it is a regular file (`KEEL_ERR_NOT_REGULAR_FILE`
/// otherwise) and return it as a `File` (blocking again) with its size.
pub fn check_regular(fd: OwnedFd, path: &Path) -> Result<(File, u64)> {
    let st = rustix::fs::fstat(&fd).map_err(|e| Error::io(path, &std::io::Error::from(e)))?;
    let kind = FileType::from_raw_mode(st.st_mode);
    if kind != FileType::RegularFile {
        bail!(
            KEEL_ERR_NOT_REGULAR_FILE,
            "{}: is a {} (refused: Keel reads only regular files)",
            path.display(),
            type_name(kind)
        );
    }
    // Regular files never block; clear O_NONBLOCK anyway so reads behave as usual.
    let _ = rustix::fs::fcntl_setfl(&fd, OFlags::empty());
    Ok((File::from(fd), st.st_size as u64))
}

fn type_name(t: FileType) -> &'static str {
    match t {
        FileType::RegularFile => "regular file",
        FileType::Directory => "directory",
        FileType::Symlink => "symbolic link",
        FileType::Fifo => "FIFO (named pipe)",
        FileType::Socket => "socket",
        FileType::CharacterDevice => "character device",
        FileType::BlockDevice => "block device",
        FileType::Unknown => "file of unknown type",
    }
}

/// Open `path` for reading: `O_NONBLOCK | O_CLOEXEC`, then checked on the descriptor to be a
/// regular file. A symbolic link to a regular file is followed (a plugin folder may link its
/// manifest, an operator its trust store); what it points to is checked.
pub fn open_regular(path: &Path) -> Result<(File, u64)> {
    let fd = rustix::fs::open(path, read_flags(false), Mode::empty())
        .map_err(|e| Error::io(path, &std::io::Error::from(e)))?;
    check_regular(fd, path)
}

/// [`open_regular`] with `O_NOFOLLOW`: a symbolic link is refused (`KEEL_ERR_SYMLINK_REFUSED`).
pub fn open_regular_nofollow(path: &Path) -> Result<(File, u64)> {
    let fd = rustix::fs::open(path, read_flags(true), Mode::empty())
        .map_err(|e| Error::io(path, &std::io::Error::from(e)))?;
    check_regular(fd, path)
}

/// Read a whole small regular file ([`open_regular`]), refusing anything larger than `cap`
/// bytes (`KEEL_ERR_FILE_TOO_LARGE`), also when it grows while being read.
pub fn read_capped(path: &Path, cap: u64) -> Result<Vec<u8>> {
    let (f, len) = open_regular(path)?;
    if len > cap {
        bail!(
            KEEL_ERR_FILE_TOO_LARGE,
            "{}: {} bytes, more than the {} accepted",
            path.display(),
            len,
            cap
        );
    }
    let mut buf = Vec::with_capacity(len as usize);
    f.take(cap + 1).read_to_end(&mut buf).map_err(|e| Error::io(path, &e))?;
    if buf.len() as u64 > cap {
        bail!(
            KEEL_ERR_FILE_TOO_LARGE,
            "{}: grew past {} bytes while being read",
            path.display(),
            cap
        );
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::keel_status;

    #[test]
    fn a_fifo_and_a_directory_are_refused_without_blocking() {
        let d = std::env::temp_dir().join(format!("keel-fsio-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("pipe");
        rustix::fs::mknodat(rustix::fs::CWD, &p, FileType::Fifo, Mode::from_raw_mode(0o600), 0).unwrap();
        for path in [&p, &d] {
            let e = read_capped(path, 1 << 20).unwrap_err();
            assert_eq!(e.status(), keel_status::KEEL_ERR_NOT_REGULAR_FILE, "{e}");
        }
        assert_eq!(
            open_regular_nofollow(&p).unwrap_err().status(),
            keel_status::KEEL_ERR_NOT_REGULAR_FILE
        );
    }
}
