//! Finding the manifests of a plugin directory (`keel_host_load_dir`).
//!
//! # Layout: one folder per plugin
//!
//! ```text
//! <dir>/
//!   postgres/keel.json        Keel manifest (+ keel.json.sig, the binary, ...)
//!   mongo/plugin.json         ThemisDB manifest, accepted as-is
//!   both/keel.json            a folder with both: keel.json is used, plugin.json ignored
//! ```
//!
//! * Only the immediate sub-folders of `<dir>` are looked at, in name order, and in each only
//!   a file named exactly `keel.json` or, failing that, `plugin.json`. Every other file is
//!   ignored, whatever its extension: a `*.json` file is not a manifest just because of its
//!   name (ThemisDB registered sidecar and config files as plugins, compat notes §9.12).
//! * Names starting with `.` and names ending in `~`, `.tmp`, `.part`, `.swp` or `.download`
//!   (editor backups, partial copies, downloads in progress) are ignored, for folders as for
//!   manifest files.
//! * **Non-recursive** (the surprises): files directly in `<dir>` (e.g. `<dir>/foo.json`) are
//!   not loaded, and folders nested deeper are not searched; ThemisDB's source tree groups
//!   plugins by category (`plugins/importers/postgres/plugin.json`), so point Keel at
//!   `plugins/importers`, not at `plugins`. A folder without a manifest is skipped, not an error.
//!   Every skipped entry is listed in [`Discovery::skipped`] with the reason.
//! * The folder name need not equal the plugin name (ThemisDB's own folders do not: folder
//!   `postgres`, plugin `postgres_importer`); the manifest's `name` is what counts.
//! * A symbolic link to a folder is followed (deploying by switching a `current` link is
//!   common); binaries are still opened without following links (see [`crate::artifact`]).

use std::path::{Path, PathBuf};

use crate::bail;
use crate::error::{Error, Result};

/// Manifest file names, in order of preference.
pub const MANIFEST_NAMES: [&str; 2] = ["keel.json", "plugin.json"];

/// What a directory scan found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Discovery {
    /// One manifest per plugin folder, in folder-name order.
    pub manifests: Vec<PathBuf>,
    /// Entries that were looked at and not used, with the reason.
    pub skipped: Vec<(PathBuf, &'static str)>,
}

/// Whether a file or folder name is an editor, temporary or partial file.
pub fn is_ignored_name(name: &str) -> bool {
    name.starts_with('.')
        || name.ends_with('~')
        || [".tmp", ".part", ".swp", ".download"].iter().any(|s| name.ends_with(s))
}

/// Scan `dir` (see the module documentation for the rules).
pub fn discover(dir: &Path) -> Result<Discovery> {
    let meta = std::fs::metadata(dir).map_err(|e| Error::io(dir, &e))?;
    if !meta.is_dir() {
        bail!(KEEL_ERR_INVALID_ARGUMENT, "{}: not a directory", dir.display());
    }
    let mut entries: Vec<(String, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, &e))? {
        let entry = entry.map_err(|e| Error::io(dir, &e))?;
        let path = entry.path();
        match entry.file_name().into_string() {
            Ok(name) => entries.push((name, path)),
            Err(_) => {
                // Not UTF-8: cannot be a plugin folder name Keel would report sensibly.
                entries.push((String::new(), path));
            }
        }
    }
    entries.sort();
    let mut found = Discovery::default();
    for (name, path) in entries {
        if name.is_empty() {
            found.skipped.push((path, "name is not valid UTF-8"));
            continue;
        }
        if is_ignored_name(&name) {
            found.skipped.push((path, "hidden, temporary or partial name"));
            continue;
        }
        // Follows a symbolic link to a folder (documented).
        let is_dir = std::fs::metadata(&path).map(|m| m.is_dir()).unwrap_or(false);
        if !is_dir {
            found.skipped.push((
                path,
                "not a plugin folder (files directly in the directory are not loaded)",
            ));
            continue;
        }
        let mut chosen = None;
        for m in MANIFEST_NAMES {
            let candidate = path.join(m);
            // symlink_metadata: a manifest that is a symbolic link is still found here and
            // then read (read_file opens it); what matters is that something is there.
            if std::fs::symlink_metadata(&candidate).is_ok() {
                match chosen {
                    None => chosen = Some(candidate),
                    Some(_) => found
                        .skipped
                        .push((candidate, "keel.json in the same folder takes precedence")),
                }
            }
        }
        match chosen {
            Some(m) => found.manifests.push(m),
            None => found.skipped.push((path, "folder has no keel.json or plugin.json")),
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::keel_status;

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"{}").unwrap();
    }

    #[test]
    fn plugin_per_folder_with_ignored_entries() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        touch(&root.join("b/plugin.json"));
        touch(&root.join("a/keel.json"));
        touch(&root.join("a/plugin.json"));
        touch(&root.join("a/libplugin.so.json")); // sidecar: never a manifest
        touch(&root.join("c/config.json"));
        touch(&root.join(".hidden/keel.json"));
        touch(&root.join("d~/keel.json"));
        touch(&root.join("e.tmp/keel.json"));
        touch(&root.join("f.part/keel.json"));
        touch(&root.join("g.swp/keel.json"));
        touch(&root.join("top.json"));
        touch(&root.join("nested/deeper/keel.json"));
        let found = discover(root).unwrap();
        assert_eq!(found.manifests, [root.join("a/keel.json"), root.join("b/plugin.json")]);
        let skipped: Vec<_> = found
            .skipped
            .iter()
            .map(|(p, _)| p.strip_prefix(root).unwrap().to_path_buf())
            .collect();
        for s in [
            ".hidden",
            "d~",
            "e.tmp",
            "f.part",
            "g.swp",
            "top.json",
            "c",
            "nested",
            "a/plugin.json",
        ] {
            assert!(skipped.contains(&PathBuf::from(s)), "{s} not in {skipped:?}");
        }
    }

    #[test]
    fn missing_or_non_directory() {
        let d = tempfile::tempdir().unwrap();
        let e = discover(&d.path().join("nope")).unwrap_err();
        assert_eq!(e.status(), keel_status::KEEL_ERR_FILE_NOT_FOUND);
        touch(&d.path().join("file"));
        assert_eq!(
            discover(&d.path().join("file")).unwrap_err().status(),
            keel_status::KEEL_ERR_INVALID_ARGUMENT
        );
        assert_eq!(discover(d.path()).unwrap().manifests.len(), 0);
    }

    #[test]
    fn ignored_names() {
        for n in [".x", "x~", "x.tmp", "x.part", "x.swp", "x.download"] {
            assert!(is_ignored_name(n), "{n}");
        }
        for n in ["x", "x.json", "tmp", "partial"] {
            assert!(!is_ignored_name(n), "{n}");
        }
    }
}
