//! WASM module loader: a module through compile, the import/export checks, instantiation
//! (keel_abi_version, keel_functions, keel_init) and one call, on the lowest-level runtime API
//! that does all of that (`WasmRuntime::instantiate`, the same call the host's load path
//! makes after the digest check). The first input byte picks the module:
//!   0: the remaining bytes as they are (raw WASM, seeds in the corpus)
//!   1: a `wasm-smith` module of any shape
//!   2: a `wasm-smith` module with exactly Keel's ABI exports, free to import Keel's host
//!      functions (so generated code reaches instantiate and the call)
//! Any outcome but a panic or a crash is fine: every failure must be an error value.
#![no_main]

#[path = "../targets/wasm_load.rs"]
mod target;

libfuzzer_sys::fuzz_target!(|data: &[u8]| target::run(data));
