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

/// The soft and hard `RLIMIT_NOFILE` of this process.
pub fn nofile_limit() -> (u64, u64) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given; `r` is a valid rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return (0, 0);
    }
    // rlim_t is u64 on 64-bit Linux but not on every target libc supports.
    #[allow(clippy::unnecessary_cast)]
    (r.rlim_cur as u64, r.rlim_max as u64)
}

/// Raise the soft `RLIMIT_NOFILE` of this process to its hard limit (capped by
/// `/proc/sys/fs/nr_open` when the hard limit is unlimited), once per process: every native
/// plugin holds one descriptor (its sealed memfd) for as long as it is mapped, so the common
/// default soft limit of 1024 would stop a host near 1 000 native plugins. The hard limit is
/// never changed. Returns what to log on the call that tried: `Ok` (raised) or `Err` (could
/// not); `None` on every later call and when the soft limit already was the hard one.
pub fn raise_nofile_limit_once() -> Option<std::result::Result<String, String>> {
    static ONCE: std::sync::Once = std::sync::Once::new();
    let mut msg = None;
    ONCE.call_once(|| {
        let (soft, hard) = nofile_limit();
        let mut target = hard;
        #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every target
        if hard == libc::RLIM_INFINITY as u64 {
            target = std::fs::read_to_string("/proc/sys/fs/nr_open")
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(1 << 20);
        }
        if soft >= target {
            return;
        }
        let r = libc::rlimit {
            rlim_cur: target as libc::rlim_t,
            rlim_max: hard as libc::rlim_t,
        };
        // SAFETY: setrlimit reads the struct it is given; `r` is a valid rlimit.
        msg = Some(if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) } == 0 {
            Ok(format!(
                "raised the soft open-file limit (RLIMIT_NOFILE) from {soft} to {target}: each loaded native plugin holds one descriptor"
            ))
        } else {
            Err(format!(
                "could not raise the soft open-file limit (RLIMIT_NOFILE) from {soft} to {target}: {}; each loaded native plugin holds one descriptor, so this process can load fewer than {soft} native plugins",
                std::io::Error::last_os_error()
            ))
        });
    });
    msg
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
