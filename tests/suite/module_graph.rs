//! The import graph of `src/` stays one-way: no loop between top-level modules, and no module
//! below the host imports it (only `ffi`, `bridge`, the CLI and `lib.rs` may).
//!
//! The graph is read from the source text: every `use` declaration (groups, `self`, `super`,
//! globs, renames) and every inline `crate::…` / `super::…` path outside comments and string
//! literals, resolved through `lib.rs`'s re-exports and `#[macro_export]` macros. A path into the
//! crate that cannot be resolved fails the test, so the parser cannot silently miss an edge.
//!
//! `cargo test --test module_graph -- --nocapture` prints the graph between top-level modules;
//! with `KEEL_MODULE_GRAPH=files` also the graph between files.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// Top-level modules allowed to import `host`.
const HOST_USERS: &[&str] = &["ffi", "bridge", "bin", "lib"];

// ---------------------------------------------------------------------------------------
// Lexing: code without comments and literals, as tokens
// ---------------------------------------------------------------------------------------

/// The source with comments, string and char literals replaced by spaces.
fn strip(src: &str) -> String {
    let c: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    let blank = |out: &mut String, ch: char| out.push(if ch == '\n' { '\n' } else { ' ' });
    while i < c.len() {
        let ch = c[i];
        let next = c.get(i + 1).copied();
        if ch == '/' && next == Some('/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && next == Some('*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, c[i]);
                    i += 1;
                }
            }
            out.push(' ');
        } else if let Some(end) = raw_string_end(&c, i) {
            for &ch in &c[i..end] {
                blank(&mut out, ch);
            }
            i = end;
        } else if ch == '"' || (ch == 'b' && next == Some('"') && !ident_char_before(&c, i)) {
            i += if ch == 'b' { 2 } else { 1 };
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    i += 1;
                }
                if i < c.len() {
                    blank(&mut out, c[i]);
                }
                i += 1;
            }
            i += 1;
            out.push(' ');
        } else if ch == '\'' {
            // A char literal ('x', '\n', '\u{..}') or a lifetime / label ('a).
            if next == Some('\\') {
                i += 2;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
                out.push(' ');
            } else if c.get(i + 2) == Some(&'\'') {
                i += 3;
                out.push(' ');
            } else {
                out.push(' ');
                i += 1;
            }
        } else {
            out.push(ch);
            i += 1;
        }
    }
    out
}

fn ident_char_before(c: &[char], i: usize) -> bool {
    i > 0 && (c[i - 1].is_alphanumeric() || c[i - 1] == '_')
}

/// If a raw (byte) string literal starts at `i`, the index just past it.
fn raw_string_end(c: &[char], i: usize) -> Option<usize> {
    if ident_char_before(c, i) {
        return None;
    }
    let mut j = i;
    if c.get(j) == Some(&'b') {
        j += 1;
    }
    if c.get(j) != Some(&'r') {
        return None;
    }
    j += 1;
    let mut hashes = 0;
    while c.get(j) == Some(&'#') {
        hashes += 1;
        j += 1;
    }
    if c.get(j) != Some(&'"') {
        return None;
    }
    j += 1;
    while j < c.len() {
        if c[j] == '"' && (1..=hashes).all(|k| c.get(j + k) == Some(&'#')) {
            return Some(j + 1 + hashes);
        }
        j += 1;
    }
    Some(c.len())
}

fn tokens(code: &str) -> Vec<String> {
    let c: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch.is_whitespace() {
            i += 1;
        } else if ch.is_alphabetic() || ch == '_' || (ch == '$' && c.get(i + 1).is_some_and(|n| n.is_alphabetic())) {
            let start = i;
            i += 1;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            out.push(c[start..i].iter().collect());
        } else if ch == ':' && c.get(i + 1) == Some(&':') {
            out.push("::".into());
            i += 2;
        } else {
            out.push(ch.to_string());
            i += 1;
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Files, modules and the paths each one names
// ---------------------------------------------------------------------------------------

/// One source file: its module path (`[]` for lib.rs) and the crate paths it names.
struct File {
    rel: String,
    module: Vec<String>,
    /// (module the path is named in, the path as written, whether it is part of a `use`).
    paths: Vec<(Vec<String>, Vec<String>, bool)>,
    /// Inline `mod name { … }` modules, as full module paths.
    inline_mods: Vec<Vec<String>>,
    /// `#[macro_export] macro_rules! name`.
    macros: Vec<String>,
    /// `pub use` declarations at the file's top level: (alias, path as written).
    reexports: Vec<(String, Vec<String>)>,
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel.iter().map(|s| s.to_string_lossy().into_owned()).collect();
    if parts[0] == "bin" {
        // A binary is a crate of its own; it reaches the library as `keel::…`.
        return vec!["bin".into()];
    }
    let last = parts.pop().expect("file name");
    let stem = last.trim_end_matches(".rs");
    if !(stem == "mod" || (parts.is_empty() && stem == "lib")) {
        parts.push(stem.to_string());
    }
    parts
}

/// Parse one `use` tree starting at `toks[*i]`; append every leaf as (alias, path).
fn use_tree(toks: &[String], i: &mut usize, prefix: &[String], out: &mut Vec<(String, Vec<String>)>) {
    let mut path = prefix.to_vec();
    if toks.get(*i).map(String::as_str) == Some("::") {
        // `::name`: an extern crate.
        path = vec!["::".into()];
        *i += 1;
    }
    loop {
        match toks.get(*i).map(String::as_str) {
            Some("{") => {
                *i += 1;
                while toks.get(*i).map(String::as_str) != Some("}") && *i < toks.len() {
                    use_tree(toks, i, &path, out);
                    if toks.get(*i).map(String::as_str) == Some(",") {
                        *i += 1;
                    }
                }
                *i += 1;
                return;
            }
            Some("*") => {
                *i += 1;
                out.push(("*".into(), path));
                return;
            }
            Some(t)
                if t.chars()
                    .next()
                    .is_some_and(|c| c.is_alphabetic() || c == '_' || c == '$') =>
            {
                let seg = t.to_string();
                *i += 1;
                if seg != "self" || path.is_empty() {
                    path.push(seg);
                }
                if toks.get(*i).map(String::as_str) == Some("::") {
                    *i += 1;
                    continue;
                }
                let mut alias = path.last().cloned().unwrap_or_default();
                if toks.get(*i).map(String::as_str) == Some("as") {
                    alias = toks.get(*i + 1).cloned().unwrap_or_default();
                    *i += 2;
                }
                out.push((alias, path));
                return;
            }
            _ => return,
        }
    }
}

fn parse_file(rel: &Path, src: &str) -> File {
    let module = module_of(rel);
    let toks = tokens(&strip(src));
    let mut file = File {
        rel: rel.display().to_string(),
        module: module.clone(),
        paths: Vec::new(),
        inline_mods: Vec::new(),
        macros: Vec::new(),
        reexports: Vec::new(),
    };
    // Inline modules: (name, brace depth inside it).
    let mut stack: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut pending_mod: Option<String> = None;
    let mut i = 0;
    while i < toks.len() {
        let t = toks[i].as_str();
        let here = |stack: &[(String, usize)]| {
            let mut m = module.clone();
            m.extend(stack.iter().map(|(n, _)| n.clone()));
            m
        };
        match t {
            "{" => {
                depth += 1;
                if let Some(name) = pending_mod.take() {
                    stack.push((name, depth));
                    file.inline_mods.push(here(&stack));
                }
                i += 1;
            }
            "}" => {
                if stack.last().is_some_and(|(_, d)| *d == depth) {
                    stack.pop();
                }
                depth = depth.saturating_sub(1);
                i += 1;
            }
            "mod" if toks.get(i + 2).map(String::as_str) == Some("{") => {
                pending_mod = toks.get(i + 1).cloned();
                i += 2;
            }
            "macro_rules" => {
                // `#[macro_export]` within the few tokens before.
                let exported = toks[i.saturating_sub(8)..i].iter().any(|t| t == "macro_export");
                if exported {
                    if let Some(name) = toks.get(i + 2) {
                        file.macros.push(name.clone());
                    }
                }
                i += 1;
            }
            "use" => {
                let public = i > 0 && (toks[i - 1] == "pub" || toks[i - 1] == ")");
                i += 1;
                let mut leaves = Vec::new();
                use_tree(&toks, &mut i, &[], &mut leaves);
                for (alias, path) in leaves {
                    if public && stack.is_empty() && alias != "*" {
                        file.reexports.push((alias.clone(), path.clone()));
                    }
                    file.paths.push((here(&stack), path, true));
                }
            }
            "crate" | "$crate" | "super" | "keel"
                if toks.get(i + 1).map(String::as_str) == Some("::")
                    && (i == 0 || toks[i - 1] != "::")
                    && (t != "keel" || module == ["bin"]) =>
            {
                let mut path = vec![t.to_string()];
                i += 1;
                while toks.get(i).map(String::as_str) == Some("::") {
                    match toks.get(i + 1) {
                        Some(s) if s.chars().next().is_some_and(|c| c.is_alphabetic() || c == '_') => {
                            path.push(s.clone());
                            i += 2;
                        }
                        _ => break,
                    }
                }
                file.paths.push((here(&stack), path, false));
            }
            _ => i += 1,
        }
    }
    file
}

// ---------------------------------------------------------------------------------------
// Resolution and the graph
// ---------------------------------------------------------------------------------------

struct Crate {
    files: Vec<File>,
    /// Every module path (files and inline modules) → index of its file.
    modules: HashMap<Vec<String>, usize>,
    macros: HashMap<String, usize>,
    /// `lib.rs` re-exports: name → absolute path.
    reexports: HashMap<String, Vec<String>>,
}

impl Crate {
    fn read(root: &Path) -> Crate {
        let src = root.join("src");
        let mut paths = Vec::new();
        rs_files(&src, &mut paths);
        let files: Vec<File> = paths
            .iter()
            .map(|p| {
                let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                parse_file(p.strip_prefix(&src).expect("under src"), &text)
            })
            .collect();
        let mut modules = HashMap::new();
        let mut macros = HashMap::new();
        for (k, f) in files.iter().enumerate() {
            modules.insert(f.module.clone(), k);
            for m in &f.inline_mods {
                modules.insert(m.clone(), k);
            }
            for m in &f.macros {
                macros.insert(m.clone(), k);
            }
        }
        let mut krate = Crate {
            files,
            modules,
            macros,
            reexports: HashMap::new(),
        };
        let lib = krate
            .files
            .iter()
            .position(|f| f.module.is_empty())
            .expect("src/lib.rs");
        let mut reexports = HashMap::new();
        for (alias, path) in krate.files[lib].reexports.clone() {
            if let Some(abs) = krate.absolute(&[], &path, true) {
                reexports.insert(alias, abs);
            }
        }
        krate.reexports = reexports;
        krate
    }

    fn is_module(&self, m: &[String]) -> bool {
        self.modules.contains_key(m)
    }

    /// The absolute path (below the crate root) that `path`, named in module `at`, refers to;
    /// `None` for paths outside the crate.
    fn absolute(&self, at: &[String], path: &[String], in_use: bool) -> Option<Vec<String>> {
        let first = path.first()?.as_str();
        let mut rest = &path[1..];
        let base: Vec<String> = match first {
            "crate" | "$crate" => Vec::new(),
            "keel" if at == ["bin"] => Vec::new(),
            "super" => {
                let mut m = at.to_vec();
                m.pop();
                while rest.first().map(String::as_str) == Some("super") {
                    m.pop();
                    rest = &rest[1..];
                }
                m
            }
            "self" => at.to_vec(),
            _ if in_use && at != ["bin"] => {
                // 2018 paths: a child module of the current module, or at the root a top-level one.
                let mut child = at.to_vec();
                child.push(first.to_string());
                if self.is_module(&child) {
                    return Some(child.into_iter().chain(rest.iter().cloned()).collect());
                }
                return None;
            }
            _ => return None,
        };
        Some(base.into_iter().chain(rest.iter().cloned()).collect())
    }

    /// The file an absolute path lands in (the deepest module on it), following `lib.rs`'s
    /// re-exports and exported macros. `Err` for a path that names nothing known.
    fn target(&self, abs: &[String]) -> Result<Option<usize>, String> {
        if abs.is_empty() || abs[0] == "*" {
            return Ok(None);
        }
        let first = &abs[0];
        if !self.is_module(&abs[..1]) {
            if let Some(to) = self.reexports.get(first) {
                let mut p = to.clone();
                p.extend(abs[1..].iter().cloned());
                return self.target(&p);
            }
            if let Some(&k) = self.macros.get(first) {
                return Ok(Some(k));
            }
            return Err(format!("unresolved crate path `crate::{}`", abs.join("::")));
        }
        let mut best = None;
        for n in 1..=abs.len() {
            if let Some(&k) = self.modules.get(&abs[..n]) {
                best = Some(k);
            }
        }
        Ok(best)
    }

    fn top(&self, k: usize) -> String {
        let f = &self.files[k];
        f.module.first().cloned().unwrap_or_else(|| "lib".into())
    }

    /// (file graph, top-level graph, unresolved paths). Each edge keeps one example.
    #[allow(clippy::type_complexity)]
    fn graphs(
        &self,
    ) -> (
        BTreeMap<(String, String), String>,
        BTreeMap<(String, String), String>,
        Vec<String>,
    ) {
        let mut files = BTreeMap::new();
        let mut tops = BTreeMap::new();
        let mut unresolved = Vec::new();
        for (k, f) in self.files.iter().enumerate() {
            for (at, path, in_use) in &f.paths {
                let Some(abs) = self.absolute(at, path, *in_use) else {
                    continue;
                };
                match self.target(&abs) {
                    Ok(Some(to)) if to != k => {
                        let example = format!("{}: {}", f.rel, path.join("::"));
                        files
                            .entry((f.rel.clone(), self.files[to].rel.clone()))
                            .or_insert_with(|| example.clone());
                        let (a, b) = (self.top(k), self.top(to));
                        if a != b {
                            tops.entry((a, b)).or_insert(example);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => unresolved.push(format!("{}: {e}", f.rel)),
                }
            }
        }
        (files, tops, unresolved)
    }
}

/// Strongly connected components with more than one node (Tarjan).
fn cycles(edges: &BTreeMap<(String, String), String>) -> Vec<Vec<String>> {
    let mut adj: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (a, b) in edges.keys() {
        adj.entry(a).or_default().push(b);
        adj.entry(b).or_default();
    }
    struct St<'a> {
        adj: &'a BTreeMap<&'a str, Vec<&'a str>>,
        index: HashMap<&'a str, usize>,
        low: HashMap<&'a str, usize>,
        on: BTreeSet<&'a str>,
        stack: Vec<&'a str>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut St<'a>, v: &'a str) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on.insert(v);
        for &w in &s.adj[v] {
            if !s.index.contains_key(w) {
                visit(s, w);
                let l = s.low[v].min(s.low[w]);
                s.low.insert(v, l);
            } else if s.on.contains(w) {
                let l = s.low[v].min(s.index[w]);
                s.low.insert(v, l);
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            loop {
                let w = s.stack.pop().expect("on stack");
                s.on.remove(w);
                comp.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                s.out.push(comp);
            }
        }
    }
    let mut s = St {
        adj: &adj,
        index: HashMap::new(),
        low: HashMap::new(),
        on: BTreeSet::new(),
        stack: Vec::new(),
        next: 0,
        out: Vec::new(),
    };
    for &v in adj.keys() {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.out
}

fn print_graph(title: &str, edges: &BTreeMap<(String, String), String>) {
    let mut by: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (a, b) in edges.keys() {
        by.entry(a).or_default().push(b);
    }
    println!("{title} (`a -> b`: a uses b)");
    for (a, bs) in by {
        println!("  {a} -> {}", bs.join(", "));
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn no_import_loop_and_nothing_below_the_host_imports_it() {
    let krate = Crate::read(&root());
    let (files, tops, unresolved) = krate.graphs();
    print_graph("module graph", &tops);
    if std::env::var("KEEL_MODULE_GRAPH").is_ok_and(|v| v == "files") {
        print_graph("file graph", &files);
    }
    assert!(
        unresolved.is_empty(),
        "paths the graph parser cannot place:\n{}",
        unresolved.join("\n")
    );
    let loops = cycles(&tops);
    let mut problems: Vec<String> = loops
        .iter()
        .map(|c| {
            let inside: Vec<String> = tops
                .iter()
                .filter(|((a, b), _)| c.contains(a) && c.contains(b))
                .map(|((a, b), ex)| format!("    {a} -> {b}  ({ex})"))
                .collect();
            format!("import loop between {}:\n{}", c.join(", "), inside.join("\n"))
        })
        .collect();
    for ((a, b), ex) in &tops {
        if b == "host" && !HOST_USERS.contains(&a.as_str()) {
            problems.push(format!("`{a}` imports the host ({ex}); only {HOST_USERS:?} may"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// The checker checks itself on small sources: each of these would fail without the code it
// exercises.

#[test]
fn parser_expands_use_groups_and_skips_comments_and_strings() {
    let src = r##"
        //! [`crate::host::Host`] in a doc comment is not an import
        use crate::{a, b::{self, c::D as E}, e::*};
        use super::f::G;
        pub(crate) use self::h::I;
        fn x() { let _ = "crate::j::K"; let _ = r#"crate::l"#; let _ = 'c'; crate::m::n(); }
        /* crate::o /* nested */ crate::p */
        fn y<'a>(_: &'a str) { super::super::q::R::s(); }
        mod tests { use super::*; }
    "##;
    let f = parse_file(Path::new("z/w.rs"), src);
    let mut got: Vec<String> = f.paths.iter().map(|(_, p, _)| p.join("::")).collect();
    got.sort();
    let mut want = vec![
        "crate::a",
        "crate::b",
        "crate::b::c::D",
        "crate::e",
        "super::f::G",
        "self::h::I",
        "crate::m::n",
        "super::super::q::R::s",
        "super",
    ];
    want.sort();
    assert_eq!(got, want);
    let tests = f.paths.iter().find(|(_, p, _)| p == &["super"]).expect("use super::*");
    assert_eq!(tests.0, ["z", "w", "tests"], "inline module tracked");
}

#[test]
fn cycle_finder_finds_loops_only() {
    let edge = |a: &str, b: &str| ((a.to_string(), b.to_string()), String::new());
    let acyclic: BTreeMap<_, _> = [edge("a", "b"), edge("b", "c"), edge("a", "c")].into_iter().collect();
    assert!(cycles(&acyclic).is_empty());
    let looped: BTreeMap<_, _> = [edge("a", "b"), edge("b", "c"), edge("c", "a"), edge("c", "d")]
        .into_iter()
        .collect();
    assert_eq!(cycles(&looped), vec![vec!["a".to_string(), "b".into(), "c".into()]]);
}
