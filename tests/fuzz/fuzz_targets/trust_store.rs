//! Trust-store parser: arbitrary bytes through `TrustStore::from_bytes` and
//! `TrustState::set_trust_store_bytes` (which must agree), and every key of a store that
//! parses through the checks a verification runs.
#![no_main]

#[path = "../targets/trust_store.rs"]
mod target;

libfuzzer_sys::fuzz_target!(|data: &[u8]| target::run(data));
