//! `.sig` parser: arbitrary bytes through `keel::trust::signature::parse` and the secret-key
//! file parser. A Keel signature that parses round-trips through its file text, and verifying
//! it over a fixed manifest under a fixed key never panics (and never succeeds: the fuzzer
//! does not know the secret key).
#![no_main]

#[path = "../targets/signature.rs"]
mod target;

libfuzzer_sys::fuzz_target!(|data: &[u8]| target::run(data));
