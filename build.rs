// Give libkeel.so a SONAME so that programs linking it record `libkeel.so`, not a build path.
// Compile the ThemisDB C++ shim (cpp/themis_shim.cpp) into the crate: the legacy runtime
// (src/runtime/legacy.rs) calls ThemisDB plugin objects only through it. The shim needs the
// C++ standard library (libstdc++), which the `cc` crate links.
// Generate and compile the C++ half of the cxx bridge (src/bridge/mod.rs, the C++ API of
// include/keel/keel.hpp). cxx-build writes the generated header and cxx's own `rust/cxx.h`
// under `$CARGO_TARGET_DIR/cxxbridge/` (`keel/src/bridge/mod.rs.h`, `rust/cxx.h`), where
// CMake finds them.
// All of that is the host's (feature `host`, on by default). A plugin built against the SDK
// alone (`default-features = false, features = ["sdk"]`, native or wasm32) compiles no C++.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "host")]
    host();
}

#[cfg(feature = "host")]
fn host() {
    // The target is the crate's (the build script itself runs on the build machine). The host
    // is native code: a wasm32 build with `host` stops here with what to do instead of in a C++
    // compiler (unless a host dependency, e.g. wasmer, has failed first).
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("wasm32") {
        panic!(
            "keel's `host` feature (on by default) does not build for wasm32: a plugin depends \
             on keel with `default-features = false, features = [\"sdk\"]` (docs/rust-sdk.md)"
        );
    }
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libkeel.so");
    for f in [
        "cpp/themis_shim.cpp",
        "cpp/themis_shim.h",
        "include/keel/themis/plugin_interface.hpp",
        "include/keel/themis/self_healing_plugin.hpp",
        "src/bridge/mod.rs",
    ] {
        println!("cargo:rerun-if-changed={f}");
    }
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .file("cpp/themis_shim.cpp")
        .include("cpp")
        .include("include")
        .warnings(true)
        .extra_warnings(true)
        .flag_if_supported("-fvisibility=hidden")
        .compile("keel_themis_shim");
    cxx_build::bridge("src/bridge/mod.rs")
        .std("c++17")
        .warnings(true)
        .extra_warnings(true)
        .compile("keel_cxxbridge");
}
