//! Keel manifest parser: arbitrary bytes through `keel::manifest::parse` (format detection,
//! duplicate keys, schema, typed view, consistency) and, for a manifest that parses, the
//! accessors the load path uses next. Never a panic; a document refused for duplicate keys
//! is never accepted by the parser.
#![no_main]

#[path = "../targets/manifest.rs"]
mod target;

libfuzzer_sys::fuzz_target!(|data: &[u8]| target::run(data));
