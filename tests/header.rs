//! The checked-in C header must be exactly what cbindgen generates from the source.
//! Regenerate with `KEEL_BLESS=1 cargo test --test header`.

use std::path::Path;

#[test]
fn keel_h_is_up_to_date() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(root.join("cbindgen.toml")).expect("cbindgen.toml parses");
    let bindings = cbindgen::Builder::new()
        .with_crate(root)
        .with_config(config)
        .generate()
        .expect("cbindgen generates the header");
    let mut generated = Vec::new();
    bindings.write(&mut generated);
    let path = root.join("include/keel/keel.h");
    if std::env::var_os("KEEL_BLESS").is_some() {
        std::fs::write(&path, &generated).expect("write keel.h");
        return;
    }
    let checked_in = std::fs::read(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "include/keel/keel.h is stale: regenerate it with `KEEL_BLESS=1 cargo test --test header` and commit it"
    );
}
