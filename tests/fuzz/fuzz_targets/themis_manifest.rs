//! ThemisDB `plugin.json`: arbitrary bytes as JSON through the ThemisDB schema and the
//! conversion to a Keel manifest (and through `manifest::parse`, which detects the format).
//! Never a panic; a converted manifest always passes Keel's own checks.
#![no_main]

#[path = "../targets/themis_manifest.rs"]
mod target;

libfuzzer_sys::fuzz_target!(|data: &[u8]| target::run(data));
