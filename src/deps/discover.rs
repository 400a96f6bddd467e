//! Finding the manifests of a plugin directory (`keel_host_load_dir`).
//!
//! # Layout: one folder per plugin
//!
//! ```text
//! <dir>/
//!   postgres/keel.json        Keel manifest (+ keel.json.sig, the binary, ...)
//!   mongo/plugin.json         ThemisDB manifest, accepted as-is
//!   both/keel.json            a folder with both: keel.json is used, plugin.json ignored
//!   importers/kafka/plugin.json   nested (ThemisDB's plugins/<category>/<name>/ layout)
//! ```
//!
//! * A **plugin folder** is a folder holding a file named exactly `keel.json` or, failing
//!   that, `plugin.json`; nothing below it is searched. Every other file is ignored, whatever
//!   its extension: a `*.json` file is not a manifest just because of its name (ThemisDB
//!   registered sidecar and config files as plugins, compat notes §9.12).
//! * **Nested layouts**: a folder without a manifest is searched for plugin folders, up to
//!   [`MAX_DEPTH`] levels below `<dir>`, so ThemisDB's source layout
//!   (`plugins/importers/postgres/plugin.json`) loads from `plugins`. Folders are visited in
//!   name order at every level; the load order is still decided by the dependency rules.
//!   A symbolic link loop is visited once.
//! * Names starting with `.` and names ending in `~`, `.tmp`, `.part`, `.swp` or `.download`
//!   (editor backups, partial copies, downloads in progress) are ignored, for folders as for
//!   manifest files.
//! * Files outside plugin folders (e.g. `<dir>/foo.json`, ThemisDB's legacy layout) are not
//!   loaded. Every skipped entry is listed in [`Discovery::skipped`] with the reason, and a
//!   non-empty directory in which no manifest was found is an error for `load_dir`
//!   ([`Discovery::require_manifests`], `KEEL_ERR_NO_MANIFEST`), never a silent success.
//! * The directory watcher (`watch.rs`) works per top-level folder: plugins nested deeper are
//!   loaded by `load_dir` but not hot-plugged.
//! * The folder name need not equal the plugin name (ThemisDB's own folders do not: folder
//!   `postgres`, plugin `postgres_importer`); the manifest's `name` is what counts.
//! * A symbolic link to a folder is followed (deploying by switching a `current` link is
//!   common); binaries are still opened without following links (see [`crate::artifact`]).

use std::collections::HashSet;
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

/// How many folder levels below the scanned directory are searched for plugin folders
/// (`plugins/<category>/<name>/plugin.json` is 2).
pub const MAX_DEPTH: usize = 4;

impl Discovery {
    /// `Err(KEEL_ERR_NO_MANIFEST)` when the scan found no manifest although the directory is
    /// not empty (e.g. ThemisDB's legacy layout of `*.json` files directly in the directory,
    /// or folders without `keel.json`/`plugin.json`): a load of such a directory must not
    /// report success for loading nothing. An empty directory is `Ok`.
    pub fn require_manifests(&self, dir: &Path) -> Result<()> {
        if !self.manifests.is_empty() || self.skipped.is_empty() {
            return Ok(());
        }
        let shown: Vec<String> = self
            .skipped
            .iter()
            .take(8)
            .map(|(p, why)| format!("{} ({why})", p.strip_prefix(dir).unwrap_or(p).display()))
            .collect();
        bail!(
            KEEL_ERR_NO_MANIFEST,
            "{}: no plugin manifest found (a plugin is a folder holding keel.json or plugin.json, up to {MAX_DEPTH} levels down); looked at {} entr{}: {}{}",
            dir.display(),
            self.skipped.len(),
            if self.skipped.len() == 1 { "y" } else { "ies" },
            shown.join("; "),
            if self.skipped.len() > shown.len() { "; ..." } else { "" }
        )
    }
}

/// Scan `dir` (see the module documentation for the rules).
pub fn discover(dir: &Path) -> Result<Discovery> {
    let meta = std::fs::metadata(dir).map_err(|e| Error::io(dir, &e))?;
    if !meta.is_dir() {
        bail!(KEEL_ERR_INVALID_ARGUMENT, "{}: not a directory", dir.display());
    }
    let mut found = Discovery::default();
    let mut seen = HashSet::new();
    if let Ok(c) = std::fs::canonicalize(dir) {
        seen.insert(c);
    }
    scan(dir, 0, &mut seen, &mut found)?;
    Ok(found)
}

/// The manifest a plugin folder holds (`keel.json` preferred), noting a shadowed `plugin.json`.
fn manifest_in(folder: &Path, found: &mut Discovery) -> Option<PathBuf> {
    let mut chosen = None;
    for m in MANIFEST_NAMES {
        let candidate = folder.join(m);
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
    chosen
}

fn scan(dir: &Path, depth: usize, seen: &mut HashSet<PathBuf>, found: &mut Discovery) -> Result<()> {
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
                "not a plugin folder (files outside a plugin folder are not loaded)",
            ));
            continue;
        }
        if let Some(m) = manifest_in(&path, found) {
            found.manifests.push(m);
            continue;
        }
        // A folder without a manifest groups plugin folders (ThemisDB: plugins/<category>/).
        if depth + 1 >= MAX_DEPTH {
            found
                .skipped
                .push((path, "folder has no keel.json or plugin.json (search depth reached)"));
            continue;
        }
        let canonical = std::fs::canonicalize(&path).map_err(|e| Error::io(&path, &e))?;
        if !seen.insert(canonical) {
            found
                .skipped
                .push((path, "folder already searched (symbolic link loop)"));
            continue;
        }
        let before = found.manifests.len();
        scan(&path, depth + 1, seen, found)?;
        if found.manifests.len() == before {
            found.skipped.push((path, "folder has no keel.json or plugin.json"));
        }
    }
    Ok(())
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
        touch(&root.join("nested/deeper/sub/keel.json")); // inside a plugin folder: not searched
        touch(&root.join("nested/notes.json"));
        touch(&root.join("l1/l2/l3/l4/l5/keel.json")); // deeper than MAX_DEPTH
        let found = discover(root).unwrap();
        assert_eq!(
            found.manifests,
            [
                root.join("a/keel.json"),
                root.join("b/plugin.json"),
                root.join("nested/deeper/keel.json")
            ]
        );
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
            "c/config.json",
            "nested/notes.json",
            "l1/l2/l3/l4",
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
    fn themisdb_nested_layout_and_nothing_found() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        // ThemisDB's source tree: plugins/<category>/<name>/plugin.json.
        touch(&root.join("importers/postgres/plugin.json"));
        touch(&root.join("importers/kafka/plugin.json"));
        touch(&root.join("storage/s3/plugin.json"));
        let found = discover(root).unwrap();
        assert_eq!(
            found.manifests,
            [
                root.join("importers/kafka/plugin.json"),
                root.join("importers/postgres/plugin.json"),
                root.join("storage/s3/plugin.json")
            ]
        );
        found.require_manifests(root).unwrap();

        // An empty directory: nothing to load, not an error.
        let empty = tempfile::tempdir().unwrap();
        discover(empty.path()).unwrap().require_manifests(empty.path()).unwrap();

        // ThemisDB's legacy layout (*.json next to the library): found nothing Keel loads, said so.
        let legacy = tempfile::tempdir().unwrap();
        touch(&legacy.path().join("postgres.json"));
        touch(&legacy.path().join("libpostgres.so"));
        let e = discover(legacy.path())
            .unwrap()
            .require_manifests(legacy.path())
            .unwrap_err();
        assert_eq!(e.status(), keel_status::KEEL_ERR_NO_MANIFEST);
        assert!(e.message().contains("postgres.json"), "{e}");
    }

    #[test]
    fn symlink_loops_are_visited_once() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        touch(&root.join("group/p/keel.json"));
        std::os::unix::fs::symlink(root.join("group"), root.join("group/again")).unwrap();
        let found = discover(root).unwrap();
        assert_eq!(found.manifests, [root.join("group/p/keel.json")]);
        assert!(found
            .skipped
            .iter()
            .any(|(p, why)| p.ends_with("again") && why.contains("loop")));
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
