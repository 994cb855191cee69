//! Generates `include/zend_alloc.h` from the Rust sources with cbindgen.
//!
//! The header is committed. A normal build rewrites it only when its contents change. With
//! `ZEND_ALLOC_HEADER=check` nothing is written and the build fails if the committed header differs
//! from what the sources generate (`make check-header`).
//!
//! It also gives the shared library its SONAME and the link of that name next to it (see
//! [`link_soname`]), so a plain `cargo build` yields a library programs can link and run against.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

fn main() {
    let crate_dir =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    println!("cargo::rerun-if-changed=src");
    println!("cargo::rerun-if-changed=cbindgen.toml");
    println!("cargo::rerun-if-changed=include/zend_alloc.h");
    println!("cargo::rerun-if-env-changed=ZEND_ALLOC_HEADER");
    // The SONAME carries the major version of Cargo.toml (0 for 0.x): programs linked with
    // -lzend_alloc record libzend_alloc.so.<major> and load that name at run time.
    let soname = format!(
        "libzend_alloc.so.{}",
        env::var("CARGO_PKG_VERSION_MAJOR").expect("cargo sets CARGO_PKG_VERSION_MAJOR")
    );
    println!("cargo::rustc-cdylib-link-arg=-Wl,-soname,{soname}");
    link_soname(&soname);

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

/// Makes `<profile dir>/<soname> -> libzend_alloc.so`, so that a program linked against a plain
/// `cargo build` finds the library by its SONAME (cargo itself only writes `libzend_alloc.so`).
///
/// Cargo names no output directory to build scripts, but `OUT_DIR` is
/// `<profile dir>/build/zend_alloc-<hash>/out`, where the profile dir is `target/release`,
/// `target/debug`, `<--target-dir>/<triple>/<profile>`, ... : the parent of the nearest `build`
/// ancestor. The link is relative and made before rustc writes the library (it dangles until then),
/// and is left alone when already right, so repeated builds change nothing. Writing outside OUT_DIR
/// is deliberate, as for the header. Cargo's `build.build-dir` setting moves OUT_DIR away from the
/// libraries; the link then lands beside the intermediate files, where it is harmless, and the
/// Makefile's `build` target still makes the one it uses.
fn link_soname(soname: &str) {
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let Some(profile_dir) = out_dir
        .ancestors()
        .find(|dir| dir.file_name().is_some_and(|name| name == "build"))
        .and_then(Path::parent)
    else {
        println!(
            "cargo::warning=OUT_DIR {} is not under a build/ directory; no {soname} link made",
            out_dir.display()
        );
        return;
    };
    let link = profile_dir.join(soname);
    let target = Path::new("libzend_alloc.so");
    if fs::read_link(&link).is_ok_and(|current| current == target) {
        return;
    }
    // Whatever is there (a stale link, a copy) gives way to the link.
    let _ = fs::remove_file(&link);
    #[cfg(unix)]
    if let Err(e) = std::os::unix::fs::symlink(target, &link) {
        println!("cargo::warning=could not make {}: {e}", link.display());
    }
}
