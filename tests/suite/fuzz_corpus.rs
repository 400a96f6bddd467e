//! The fuzz targets' checked-in corpora (seeds and every regression input added since),
//! replayed through the very functions the cargo-fuzz binaries run (tests/fuzz/targets): the
//! targets compile with the crate, and a crash once found stays fixed. The long runs are
//! tests/fuzz.sh's (docs/testing.md).

use crate::common;
use crate::fuzz_targets;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = common::repo().join("tests/fuzz/corpus").join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        if std::panic::catch_unwind(|| run(&data)).is_err() {
            panic!("fuzz target {target}: input {} fails", path.display());
        }
        n += 1;
    }
    assert!(n > 0, "no corpus for {target} in {}", dir.display());
}

#[test]
fn manifest_corpus() {
    replay("manifest", fuzz_targets::manifest::run);
}

#[test]
fn themis_manifest_corpus() {
    replay("themis_manifest", fuzz_targets::themis_manifest::run);
}

#[test]
fn signature_corpus() {
    replay("signature", fuzz_targets::signature::run);
}

#[test]
fn trust_store_corpus() {
    replay("trust_store", fuzz_targets::trust_store::run);
}

#[test]
fn wasm_load_corpus() {
    replay("wasm_load", fuzz_targets::wasm_load::run);
}

#[test]
fn capi_ops_corpus() {
    // libFuzzer hands the typed target `Vec<Op>` built from the raw bytes this way.
    replay("capi_ops", |data| {
        use arbitrary::Arbitrary;
        let ops = Vec::<fuzz_targets::capi_ops::Op>::arbitrary_take_rest(arbitrary::Unstructured::new(data));
        if let Ok(ops) = ops {
            fuzz_targets::capi_ops::run(ops);
        }
    });
}
