//! The checked-in C header must be exactly what cbindgen generates from the source.
//! Regenerate with `KEEL_BLESS=1 cargo test --test header`.

use std::path::Path;

#[test]
fn keel_h_is_up_to_date() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(root.join("cbindgen.toml")).expect("cbindgen.toml parses");
    let bindings = cbindgen::Builder::new()
        .with_crate(root)
        .with_config(config)
        .generate()
        .expect("cbindgen generates the header");
    let mut generated = Vec::new();
    bindings.write(&mut generated);
    let path = root.join("include/keel/keel.h");
    if std::env::var_os("KEEL_BLESS").is_some() {
        std::fs::write(&path, &generated).expect("write keel.h");
        return;
    }
    let checked_in = std::fs::read(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "include/keel/keel.h is stale: regenerate it with `KEEL_BLESS=1 cargo test --test header` and commit it"
    );
}

/// The function declarations of keel.h with the doc comment right above each.
fn documented_functions(header: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut doc = String::new();
    let mut in_doc = false;
    for line in header.lines() {
        let t = line.trim();
        if t.starts_with("/**") {
            in_doc = true;
            doc.clear();
        }
        if in_doc {
            doc.push_str(t);
            doc.push('\n');
            if t.ends_with("*/") {
                in_doc = false;
            }
            continue;
        }
        if let Some(rest) = t.strip_prefix("keel_status ") {
            let name = rest.split('(').next().unwrap_or("").trim().to_string();
            out.push((name, std::mem::take(&mut doc)));
        } else if !t.is_empty() {
            doc.clear();
        }
    }
    out
}

#[test]
fn every_function_says_which_errors_it_returns() {
    let header = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("include/keel/keel.h")).unwrap();
    let fns = documented_functions(&header);
    assert!(fns.len() > 40, "found only {} functions in keel.h", fns.len());
    let missing: Vec<&str> = fns
        .iter()
        .filter(|(_, doc)| !doc.contains("Errors:"))
        .map(|(name, _)| name.as_str())
        .collect();
    assert!(
        missing.is_empty(),
        "no `Errors:` line in the doc comment of: {missing:?}"
    );
}

#[test]
fn keel_h_reads_host_then_plugin_then_call_then_the_rest() {
    let header = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("include/keel/keel.h")).unwrap();
    let names: Vec<String> = documented_functions(&header).into_iter().map(|(n, _)| n).collect();
    let pos = |n: &str| {
        names
            .iter()
            .position(|x| x == n)
            .unwrap_or_else(|| panic!("{n} missing"))
    };
    let section = |n: &str| {
        if n.starts_with("keel_host_") && pos(n) < pos("keel_plugin_get") {
            0
        } else if n.starts_with("keel_plugin_") && pos(n) < pos("keel_call") {
            1
        } else if n == "keel_call" || n.starts_with("keel_buffer_") {
            2
        } else {
            3
        }
    };
    // The first three sections come first, in order, and hold what they should.
    let sections: Vec<u32> = names.iter().map(|n| section(n)).collect();
    assert!(sections.windows(2).all(|w| w[0] <= w[1]), "keel.h order: {names:?}");
    for n in [
        "keel_host_new",
        "keel_host_free",
        "keel_host_load",
        "keel_host_reload",
        "keel_host_unload",
    ] {
        assert_eq!(section(n), 0, "{n} belongs to the host section: {names:?}");
    }
    for n in [
        "keel_plugin_get",
        "keel_plugin_free",
        "keel_plugin_function",
        "keel_plugin_generation",
    ] {
        assert_eq!(section(n), 1, "{n} belongs to the plugin section: {names:?}");
    }
    for n in ["keel_buffer_new", "keel_buffer_free", "keel_buffer_data"] {
        assert_eq!(section(n), 2, "{n} belongs to the call section: {names:?}");
    }
    assert_eq!(names[0], "keel_host_new");
}

#[test]
fn values_shared_by_the_plugin_headers_are_defined_once() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("include/keel");
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let common = read("keel_common.h");
    for name in ["keel_plugin.h", "keel_wasm.h"] {
        let h = read(name);
        assert!(
            h.contains("#include \"keel_common.h\""),
            "{name} includes keel_common.h"
        );
        for line in h.lines().filter(|l| l.trim_start().starts_with("#define ")) {
            let macro_name = line.split_whitespace().nth(1).unwrap_or("");
            assert!(
                !common.contains(&format!("#define {macro_name} ")),
                "{name} defines {macro_name} again (it belongs to keel_common.h)"
            );
        }
    }
    for m in [
        "KEEL_LOG_ERROR",
        "KEEL_LOG_DEBUG",
        "KEEL_HEALTH_HEALTHY",
        "KEEL_HEALTH_UNHEALTHY",
    ] {
        assert!(common.contains(&format!("#define {m} ")), "keel_common.h defines {m}");
    }
}
