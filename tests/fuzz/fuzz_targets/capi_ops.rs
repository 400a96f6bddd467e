//! A sequence of C ABI operations in random order on random inputs: load, get, resolve,
//! call, reload (switching the manifest between two real versions), unload, handle free,
//! buffer new/free, and loads of fuzzed manifest bytes, on a fresh host per input. Real
//! fixtures, built once per process with the system C compiler (the echo plugin from
//! tests/fixtures/native/echo.c in two versions) and the `wat` crate (the WASM echo fixture).
//!
//! Oracles: no panic reaches the boundary (`KEEL_ERR_PANIC`), no `KEEL_ERR_INTERNAL`; an echo
//! call that succeeds returns its input; `tag` answers the version the last reload installed;
//! a plugin that loaded or reloaded is found by name until it is unloaded, and not after.
#![no_main]

#[path = "../targets/capi_ops.rs"]
mod target;

libfuzzer_sys::fuzz_target!(|ops: Vec<target::Op>| target::run(ops));
