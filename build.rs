// Give libkeel.so a SONAME so that programs linking it record `libkeel.so`, not a build path.
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libkeel.so");
    println!("cargo:rerun-if-changed=build.rs");
}
