//! WASM plugins on wasmer.
