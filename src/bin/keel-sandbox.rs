//! `keel-sandbox`: the launcher of isolated native plugins (docs/isolation.md). Keel starts it
//! with its end of a socket as fd 3; it is not meant to be run by hand.

fn main() {
    keel::runtime::isolated::sandbox::sandbox_main()
}
