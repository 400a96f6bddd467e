// Give libkeel.so a SONAME so that programs linking it record `libkeel.so`, not a build path.
// Compile the ThemisDB C++ shim (cpp/themis_shim.cpp) into the crate: the legacy runtime
// (src/runtime/legacy.rs) calls ThemisDB plugin objects only through it. The shim needs the
// C++ standard library (libstdc++), which the `cc` crate links.
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libkeel.so");
    println!("cargo:rerun-if-changed=build.rs");
    for f in [
        "cpp/themis_shim.cpp",
        "cpp/themis_shim.h",
        "include/keel/themis/plugin_interface.hpp",
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
}
