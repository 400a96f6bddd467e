//! The bodies of the fuzz targets, as plain functions: the cargo-fuzz binaries in
//! `../fuzz_targets` call them, and the suite replays the checked-in corpus through them
//! (tests/suite/fuzz_corpus.rs), so the targets compile with the crate and every seed — and
//! every regression input added to the corpus — runs in `cargo test`.
pub mod capi_ops;
pub mod manifest;
pub mod signature;
pub mod themis_manifest;
pub mod trust_store;
pub mod wasm_load;
