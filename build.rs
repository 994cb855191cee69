//! Generates `include/zend_alloc.h` from the Rust sources with cbindgen.
//!
//! The header is committed. A normal build rewrites it only when its contents change. With
//! `ZEND_ALLOC_HEADER=check` nothing is written and the build fails if the committed header differs
//! from what the sources generate (`make check-header`).

use std::env;
use std::fs;
use std::path::PathBuf;

fn main() {
    let crate_dir =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    println!("cargo::rerun-if-changed=src");
    println!("cargo::rerun-if-changed=cbindgen.toml");
    println!("cargo::rerun-if-changed=include/zend_alloc.h");
    println!("cargo::rerun-if-env-changed=ZEND_ALLOC_HEADER");
    // A stable soname; the Makefile links target/*/libzend_alloc.so.0 to the built library.
    println!("cargo::rustc-cdylib-link-arg=-Wl,-soname,libzend_alloc.so.0");

    let mut config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml"))
        .expect("cbindgen.toml is readable");
    // The version placeholders of cbindgen.toml's raw C text.
    for text in [
        &mut config.header,
        &mut config.after_includes,
        &mut config.trailer,
    ]
    .into_iter()
    .flatten()
    {
        for var in [
            "CARGO_PKG_VERSION",
            "CARGO_PKG_VERSION_MAJOR",
            "CARGO_PKG_VERSION_MINOR",
            "CARGO_PKG_VERSION_PATCH",
        ] {
            let value = env::var(var).expect("cargo sets the CARGO_PKG_VERSION variables");
            *text = text.replace(&format!("@{var}@"), &value);
        }
    }
    let bindings = match cbindgen::Builder::new()
        .with_config(config)
        .with_src(crate_dir.join("src/lib.rs"))
        .generate()
    {
        Ok(bindings) => bindings,
        // Leave syntax errors to rustc, which reports them properly.
        Err(cbindgen::Error::ParseSyntaxError { .. }) => return,
        Err(e) => panic!("cbindgen failed: {e}"),
    };

    let header = crate_dir.join("include/zend_alloc.h");
    if env::var("ZEND_ALLOC_HEADER").as_deref() == Ok("check") {
        let mut generated = Vec::new();
        bindings.write(&mut generated);
        if fs::read(&header).ok().as_deref() != Some(&generated[..]) {
            println!(
                "cargo::error=include/zend_alloc.h differs from what the sources generate; run `cargo build` and commit it"
            );
        }
    } else {
        bindings.write_to_file(&header);
    }

    let out_include =
        PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("include");
    fs::create_dir_all(&out_include).expect("OUT_DIR is writable");
    bindings.write_to_file(out_include.join("zend_alloc.h"));
    println!("cargo::metadata=include={}", out_include.display());
}
