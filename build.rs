// Give libkeel.so a SONAME so that programs linking it record `libkeel.so`, not a build path.
// Compile the ThemisDB C++ shim (cpp/themis_shim.cpp) into the crate: the legacy runtime
// (src/runtime/legacy.rs) calls ThemisDB plugin objects only through it. The shim needs the
// C++ standard library (libstdc++), which the `cc` crate links.
// Generate and compile the C++ half of the cxx bridge (src/bridge/mod.rs, the C++ API of
// include/keel/keel.hpp). cxx-build writes the generated header and cxx's own `rust/cxx.h`
// under `$CARGO_TARGET_DIR/cxxbridge/` (`keel/src/bridge/mod.rs.h`, `rust/cxx.h`), where
// CMake finds them.
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libkeel.so");
    println!("cargo:rerun-if-changed=build.rs");
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
