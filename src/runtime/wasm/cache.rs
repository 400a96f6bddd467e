//! Compiled-module cache on disk.
//!
//! An entry is named by the module's SHA-256 and a digest of the engine key (see
//! [`super::engine::engine_key`]) and holds wasmer's serialized artifact behind an
//! HMAC-SHA256 tag under a node-local key:
//!
//! ```text
//! "KEELWC01" | tag (32 bytes) | serialized module
//! tag = HMAC-SHA256(key, "keel-wasm-cache/1" 0x00 engine_key 0x00 module_sha256 payload)
//! ```
//!
//! `Module::deserialize` maps the bytes as executable code, so it is only ever given bytes
//! whose tag verified (constant-time compare). An entry that is truncated, tampered with,
//! written under another key or for another module or engine is reported as
//! [`Lookup::Rejected`] and removed; the caller recompiles and writes a fresh one.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::digest;
use crate::error::{Error, Result};
use crate::{bail, err};

const MAGIC: &[u8; 8] = b"KEELWC01";
const DOMAIN: &[u8] = b"keel-wasm-cache/1";
const TAG_LEN: usize = 32;
/// Entries larger than this are not read.
pub const MAX_ENTRY_BYTES: u64 = 1 << 30;

type HmacSha256 = Hmac<Sha256>;

/// Where compiled modules are cached and the key that authenticates them.
#[derive(Clone)]
pub struct CacheConfig {
    pub dir: PathBuf,
    /// Node-local secret. Anyone who knows it can make this node run arbitrary machine code
    /// from the cache directory: keep it readable by the node only.
    pub key: [u8; 32],
}

impl std::fmt::Debug for CacheConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheConfig")
            .field("dir", &self.dir)
            .field("key", &"<secret>")
            .finish()
    }
}

impl CacheConfig {
    /// Cache in `dir`, with the key read from `key_file`, which is created (mode 0600, 32
    /// random bytes) if it does not exist. The key file should not live in a directory that
    /// anyone but the node can write.
    pub fn with_key_file(dir: impl Into<PathBuf>, key_file: &Path) -> Result<CacheConfig> {
        let key = load_or_create_key(key_file)?;
        Ok(CacheConfig { dir: dir.into(), key })
    }
}

/// Read a 32-byte key file, or create one with fresh random bytes (O_EXCL, mode 0600).
pub fn load_or_create_key(path: &Path) -> Result<[u8; 32]> {
    match OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path) {
        Ok(mut f) => {
            let mut key = [0u8; 32];
            let mut extra = [0u8; 1];
            f.read_exact(&mut key).map_err(|e| Error::io(path, &e))?;
            if f.read(&mut extra).map_err(|e| Error::io(path, &e))? != 0 {
                bail!(
                    KEEL_ERR_INVALID_ARGUMENT,
                    "{}: a cache key file holds exactly 32 bytes",
                    path.display()
                );
            }
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use rand_core::RngCore;
            let mut key = [0u8; 32];
            rand_core::OsRng.fill_bytes(&mut key);
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(path)
                .map_err(|e| Error::io(path, &e))?;
            f.write_all(&key)
                .and_then(|_| f.sync_all())
                .map_err(|e| Error::io(path, &e))?;
            Ok(key)
        }
        Err(e) => Err(Error::io(path, &e)),
    }
}

/// The result of looking a module up.
#[derive(Debug)]
pub enum Lookup {
    /// An authenticated serialized module: safe to deserialize.
    Hit(Vec<u8>),
    /// No entry.
    Miss,
    /// An entry existed but did not authenticate; it has been removed. The string says why.
    Rejected(String),
}

/// The cache of one node.
#[derive(Debug)]
pub struct ModuleCache {
    config: CacheConfig,
}

impl ModuleCache {
    pub fn open(config: CacheConfig) -> Result<ModuleCache> {
        std::fs::create_dir_all(&config.dir).map_err(|e| Error::io(&config.dir, &e))?;
        Ok(ModuleCache { config })
    }

    pub fn dir(&self) -> &Path {
        &self.config.dir
    }

    /// The entry's file for a module and engine key.
    pub fn entry_path(&self, module_sha256: &[u8; 32], engine_key: &str) -> PathBuf {
        let ek = digest::sha256(engine_key.as_bytes());
        self.config.dir.join(format!(
            "{}-{}.keelwasm",
            hex::encode(module_sha256),
            hex::encode(&ek[..8])
        ))
    }

    fn tag(&self, module_sha256: &[u8; 32], engine_key: &str, payload: &[u8]) -> HmacSha256 {
        // new_from_slice accepts any key length for HMAC.
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&self.config.key).unwrap_or_else(|_| unreachable!());
        mac.update(DOMAIN);
        mac.update(&[0]);
        mac.update(engine_key.as_bytes());
        mac.update(&[0]);
        mac.update(module_sha256);
        mac.update(payload);
        mac
    }

    /// Look an entry up and authenticate it.
    pub fn load(&self, module_sha256: &[u8; 32], engine_key: &str) -> Lookup {
        let path = self.entry_path(module_sha256, engine_key);
        let bytes = match read_entry(&path) {
            Ok(Some(b)) => b,
            Ok(None) => return Lookup::Miss,
            Err(e) => return self.reject(&path, format!("unreadable: {e}")),
        };
        if bytes.len() < MAGIC.len() + TAG_LEN || &bytes[..MAGIC.len()] != MAGIC {
            return self.reject(&path, "not a Keel cache entry (bad header or truncated)".into());
        }
        let (tag, payload) = bytes[MAGIC.len()..].split_at(TAG_LEN);
        if self.tag(module_sha256, engine_key, payload).verify_slice(tag).is_err() {
            return self.reject(&path, "authentication tag does not verify (corrupted or forged)".into());
        }
        let mut bytes = bytes;
        bytes.drain(..MAGIC.len() + TAG_LEN);
        Lookup::Hit(bytes)
    }

    /// Remove an entry that must not be used (e.g. wasmer refused to deserialize it).
    pub fn discard(&self, module_sha256: &[u8; 32], engine_key: &str) {
        let _ = std::fs::remove_file(self.entry_path(module_sha256, engine_key));
    }

    fn reject(&self, path: &Path, why: String) -> Lookup {
        let _ = std::fs::remove_file(path);
        Lookup::Rejected(format!("{}: {why}", path.display()))
    }

    /// Write an entry atomically (temporary file in the same directory, then rename).
    /// Concurrent writers of the same entry each rename a complete file; the last one wins.
    pub fn store(&self, module_sha256: &[u8; 32], engine_key: &str, serialized: &[u8]) -> Result<()> {
        let path = self.entry_path(module_sha256, engine_key);
        let tag = self.tag(module_sha256, engine_key, serialized).finalize().into_bytes();
        let mut tmp = tempfile_in(&self.config.dir)?;
        // No fsync: an entry torn by a crash fails authentication and is recompiled.
        let write = (|| {
            tmp.1.write_all(MAGIC)?;
            tmp.1.write_all(&tag)?;
            tmp.1.write_all(serialized)
        })();
        if let Err(e) = write {
            let _ = std::fs::remove_file(&tmp.0);
            return Err(Error::io(&tmp.0, &e));
        }
        std::fs::rename(&tmp.0, &path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp.0);
            Error::io(&path, &e)
        })
    }
}

fn read_entry(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    let f = match OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let meta = f.metadata()?;
    if !meta.is_file() || meta.len() > MAX_ENTRY_BYTES {
        return Err(std::io::Error::other("not a regular file of acceptable size"));
    }
    let mut buf = Vec::with_capacity(meta.len() as usize);
    f.take(MAX_ENTRY_BYTES).read_to_end(&mut buf)?;
    Ok(Some(buf))
}

/// A new private file in `dir` (O_EXCL, 0600) with a random name.
fn tempfile_in(dir: &Path) -> Result<(PathBuf, File)> {
    use rand_core::RngCore;
    for _ in 0..16 {
        let mut r = [0u8; 8];
        rand_core::OsRng.fill_bytes(&mut r);
        let path = dir.join(format!(".tmp-{}", hex::encode(r)));
        match OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path) {
            Ok(f) => return Ok((path, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io(&path, &e)),
        }
    }
    Err(err!(
        KEEL_ERR_IO,
        "{}: could not create a temporary file",
        dir.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(dir: &Path, key: u8) -> ModuleCache {
        ModuleCache::open(CacheConfig {
            dir: dir.to_path_buf(),
            key: [key; 32],
        })
        .unwrap()
    }

    #[test]
    fn round_trip_and_tamper_detection() {
        let d = tempfile::tempdir().unwrap();
        let c = cache(d.path(), 7);
        let sha = [1u8; 32];
        assert!(matches!(c.load(&sha, "e1"), Lookup::Miss));
        c.store(&sha, "e1", b"compiled code").unwrap();
        match c.load(&sha, "e1") {
            Lookup::Hit(b) => assert_eq!(b, b"compiled code"),
            other => panic!("{other:?}"),
        }
        // Another engine key is another entry.
        assert!(matches!(c.load(&sha, "e2"), Lookup::Miss));

        // Flip one payload byte: rejected and removed.
        let p = c.entry_path(&sha, "e1");
        let mut bytes = std::fs::read(&p).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&p, &bytes).unwrap();
        assert!(matches!(c.load(&sha, "e1"), Lookup::Rejected(_)));
        assert!(!p.exists());
        assert!(matches!(c.load(&sha, "e1"), Lookup::Miss));
    }

    #[test]
    fn other_key_truncation_and_renamed_entries_are_rejected() {
        let d = tempfile::tempdir().unwrap();
        let c = cache(d.path(), 7);
        let (a, b) = ([1u8; 32], [2u8; 32]);
        c.store(&a, "e", b"code of a").unwrap();
        // Written under another node key.
        assert!(matches!(cache(d.path(), 8).load(&a, "e"), Lookup::Rejected(_)));
        // A valid entry of module a copied to module b's name does not verify for b.
        c.store(&a, "e", b"code of a").unwrap();
        std::fs::copy(c.entry_path(&a, "e"), c.entry_path(&b, "e")).unwrap();
        assert!(matches!(c.load(&b, "e"), Lookup::Rejected(_)));
        // Truncated.
        std::fs::write(c.entry_path(&a, "e"), b"KEELWC01short").unwrap();
        assert!(matches!(c.load(&a, "e"), Lookup::Rejected(_)));
    }

    #[test]
    fn key_file_is_created_once_and_reused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("cache.key");
        let k1 = load_or_create_key(&p).unwrap();
        let k2 = load_or_create_key(&p).unwrap();
        assert_eq!(k1, k2);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::write(&p, b"short").unwrap();
        assert_eq!(
            load_or_create_key(&p).unwrap_err().status(),
            crate::error::keel_status::KEEL_ERR_IO
        );
    }
}
