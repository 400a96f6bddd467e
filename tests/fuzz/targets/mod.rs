//! The bodies of the parser fuzz targets, as plain functions: the cargo-fuzz binaries in
//! `../fuzz_targets` call them, and the suite replays the checked-in corpus through them
//! (tests/suite/fuzz_corpus.rs), so the targets compile with the crate and every seed — and
//! every regression input added to the corpus — runs in `cargo test`.
pub mod manifest;
pub mod signature;
pub mod themis_manifest;
pub mod trust_store;
