//! Generates `include/zend_alloc.h` from the Rust sources with cbindgen.
//!
//! The header is composed in two steps:
//! 1. cbindgen reads cbindgen.toml (minus its `[zend_alloc]` table, which cbindgen would reject)
//!    and writes banner, portability macros, constants, types and all prototypes, the prototypes
//!    in one block.
//! 2. `compose` (build/compose.rs) cuts the types and the prototypes into one declaration each
//!    and writes the header's groups in the order of cbindgen.toml's `[[zend_alloc.part]]` tables:
//!    each part gives the declarations of its `types`, the prototypes of its `functions`, then its
//!    raw C text `c` (the group's opening comment, the macros wrapping those functions). Types no
//!    part names stay with the constants. A function that no part names fails the
//!    build, as does a name cbindgen did not declare; so does Rust syntax left in a comment, a `//`
//!    comment or text after `#endif` (the header must stay plain C89). The `# Safety` headings
//!    that clippy asks for in Rust docs are dropped: their paragraph reads as prose in C.
//!
//! All raw C text is in cbindgen.toml. The header is committed. A normal build rewrites it only
//! when its contents change. With `ZEND_ALLOC_HEADER=check` nothing is written and the build fails
//! if the committed header differs from what the sources generate (`make check-header`). In the raw
//! text build.rs replaces `@CARGO_PKG_VERSION@` and `@CARGO_PKG_VERSION_MAJOR@` (`_MINOR@`,
//! `_PATCH@`) with Cargo.toml's version, so the header's version macros cannot drift from it.
//!
//! It also gives the shared library its SONAME and the link of that name next to it (see
//! [`link_soname`]), so a plain `cargo build` yields a library programs can link and run against.

#[path = "build/compose.rs"]
mod compose;

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

    let config_path = crate_dir.join("cbindgen.toml");
    let (mut config, mut parts) = read_config(&config_path);
    config.config_path = Some(config_path);
    let raw_texts = [
        &mut config.header,
        &mut config.after_includes,
        &mut config.trailer,
    ]
    .into_iter()
    .flatten()
    .chain(parts.iter_mut().map(|part| &mut part.c));
    for text in raw_texts {
        fill_in_version(text);
    }
    let after_includes = config.after_includes.clone().unwrap_or_default();
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
    let mut generated = Vec::new();
    bindings.write(&mut generated);
    let generated = String::from_utf8(generated).expect("cbindgen writes UTF-8");
    let composed = compose::compose(&generated, &after_includes, &parts)
        .unwrap_or_else(|e| panic!("composing include/zend_alloc.h: {e}"));

    let header = crate_dir.join("include/zend_alloc.h");
    if env::var("ZEND_ALLOC_HEADER").as_deref() == Ok("check") {
        if fs::read_to_string(&header).ok().as_deref() != Some(composed.as_str()) {
            println!(
                "cargo::error=include/zend_alloc.h differs from what the sources generate; run `cargo build` and commit it"
            );
        }
    } else {
        write_if_changed(&header, &composed);
    }

    let out_include =
        PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("include");
    fs::create_dir_all(&out_include).expect("OUT_DIR is writable");
    write_if_changed(&out_include.join("zend_alloc.h"), &composed);
    println!("cargo::metadata=include={}", out_include.display());
}

/// cbindgen's configuration and the header's parts, both from cbindgen.toml.
fn read_config(path: &PathBuf) -> (cbindgen::Config, Vec<compose::Part>) {
    let text = fs::read_to_string(path).expect("cbindgen.toml is readable");
    let mut table: toml::Table = text.parse().expect("cbindgen.toml is valid TOML");
    let ours = table
        .remove("zend_alloc")
        .expect("cbindgen.toml has a [zend_alloc] table");
    let parts = ours
        .get("part")
        .and_then(toml::Value::as_array)
        .expect("cbindgen.toml has [[zend_alloc.part]] tables")
        .iter()
        .map(|p| {
            let p = p.as_table().expect("a [[zend_alloc.part]] is a table");
            if let Some(key) = p
                .keys()
                .find(|k| !["types", "functions", "c"].contains(&k.as_str()))
            {
                panic!("[[zend_alloc.part]] has `types`, `functions` and `c`, not `{key}`");
            }
            let names = |key: &str| -> Vec<String> {
                p.get(key)
                    .map(|f| {
                        f.as_array()
                            .unwrap_or_else(|| panic!("`{key}` is an array"))
                            .iter()
                            .map(|n| n.as_str().expect("a name").to_string())
                            .collect()
                    })
                    .unwrap_or_default()
            };
            let c = p
                .get("c")
                .map(|c| c.as_str().expect("`c` is a string").to_string())
                .unwrap_or_default();
            compose::Part {
                types: names("types"),
                functions: names("functions"),
                c,
            }
        })
        .collect();
    let config = table
        .try_into()
        .unwrap_or_else(|e| panic!("cbindgen.toml: {e}"));
    (config, parts)
}

/// Writing only changed contents keeps the header's mtime, so nothing rebuilds in a loop.
fn write_if_changed(path: &PathBuf, contents: &str) {
    if fs::read_to_string(path).ok().as_deref() != Some(contents) {
        fs::write(path, contents).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }
}

/// Replaces the version placeholders of raw C text with Cargo.toml's version.
fn fill_in_version(text: &mut String) {
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
