//! Builds libzmq 4.3.4 (the source `zeromq-src` ships) with CURVE, against the libsodium
//! that `libsodium-sys-stable` has just built from source. No system library is used, so
//! `cargo build` stays the only build step on a fresh machine.

use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // `libsodium-sys-stable` declares `links = "sodium"`; Cargo hands its `cargo:include`
    // and `cargo:lib` lines to the build scripts of the crates that depend on it directly.
    let include = env::var_os("DEP_SODIUM_INCLUDE")
        .map(PathBuf::from)
        .expect("libsodium-sys-stable did not report DEP_SODIUM_INCLUDE");
    let lib = env::var_os("DEP_SODIUM_LIB")
        .map(PathBuf::from)
        .expect("libsodium-sys-stable did not report DEP_SODIUM_LIB");
    // libzmq's sources warn a lot; they are not ours to fix, and Cargo would print every
    // warning on every build of this (path) crate.
    let flags = env::var("CXXFLAGS").unwrap_or_default();
    env::set_var("CXXFLAGS", format!("{flags} -w"));
    zeromq_src::Build::new()
        .with_libsodium(Some(zeromq_src::LibLocation::new(lib, include)))
        .build();
}
