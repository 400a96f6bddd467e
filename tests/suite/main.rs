//! The integration suite as one test binary: every module below used to be its own binary,
//! each linking wasmer and the whole library again. `tests/cli.rs` (needs the `cli` feature)
//! and `tests/wasm_interrupt.rs` (looks at process-wide signal dispositions) stay separate.

// Test fixtures record tuples of what they saw; naming every such type adds nothing.
#![allow(clippy::type_complexity)]

#[path = "../common/mod.rs"]
mod common;
#[path = "../fuzz/targets/mod.rs"]
mod fuzz_targets;
#[path = "../wasm_support/mod.rs"]
mod wasm_support;

mod callopts;
mod capmetrics;
mod dashboard;
mod deps;
mod fuzz_corpus;
mod header;
mod health;
mod hostfn;
mod hostile;
mod introspect;
mod legacy;
mod metrics;
mod module_graph;
mod native;
mod packaging;
mod sinks;
mod state_version;
mod themis_manifest;
mod trust;
mod wasm;
mod wasm_config;
mod wasm_engines;
mod wasm_memory;
mod wasm_tiers;
mod watch;
