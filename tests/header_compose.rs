//! The header composition of build.rs (build/compose.rs): every exported function lands in exactly
//! one group, and Rust syntax or C99-only comments never reach the C header.

#[path = "../build/compose.rs"]
mod compose;

use compose::{Part, compose, lint};

/// cbindgen's output shape: prelude, the extern "C" block with one declaration per paragraph.
fn generated(functions: &[&str]) -> String {
    let mut s = String::from("#ifndef H\n#define H\n\n#define ZEND_MM_BINS 30\n\n");
    s.push_str("#ifdef __cplusplus\nextern \"C\" {\n#endif // __cplusplus\n\n");
    for f in functions {
        s.push_str(&format!(
            "/**\n * Does {f}.\n *\n * # Safety\n * The pointer must be live.\n */\nZEND_API\nvoid *{f}(void *ptr,\n     size_t size);\n\n"
        ));
    }
    s.push_str("#ifdef __cplusplus\n}  // extern \"C\"\n#endif  // __cplusplus\n");
    s
}

fn part(functions: &[&str], c: &str) -> Part {
    Part {
        functions: functions.iter().map(|f| f.to_string()).collect(),
        c: c.to_string(),
    }
}

#[test]
fn functions_go_where_the_parts_say_with_their_macros_after_them() {
    let header = compose(
        &generated(&["_b", "_a"]),
        &[
            part(&[], "/* group */"),
            part(&["_a"], "#define a(p) _a(p, 0)"),
            part(&["_b"], "#define b(p) _b(p, 0)\n#endif /* H */"),
        ],
    )
    .unwrap();
    let at = |s: &str| header.find(s).unwrap_or_else(|| panic!("{s} missing"));
    assert!(at("/* group */") < at("void *_a("));
    assert!(at("void *_a(") < at("#define a(p)"));
    assert!(at("#define a(p)") < at("void *_b("));
    assert!(at("void *_b(") < at("#define b(p)"));
    // The prelude is kept; cbindgen's `//` markers and the Safety headings are gone, their prose stays.
    assert!(header.starts_with("#ifndef H\n#define H\n\n#define ZEND_MM_BINS 30\n"));
    assert!(!header.contains("//") && !header.contains("# Safety"));
    assert_eq!(header.matches(" * The pointer must be live.").count(), 2);
    assert!(header.ends_with("#endif /* H */\n"));
}

#[test]
fn a_function_in_no_part_fails() {
    let err = compose(&generated(&["_a", "_forgotten"]), &[part(&["_a"], "")]).unwrap_err();
    assert!(
        err.contains("no [[zend_alloc.part]]") && err.contains("_forgotten"),
        "{err}"
    );
}

#[test]
fn a_name_no_function_has_or_a_name_given_twice_fails() {
    let err = compose(&generated(&["_a"]), &[part(&["_a", "_gone"], "")]).unwrap_err();
    assert!(
        err.contains("_gone") && err.contains("do not export"),
        "{err}"
    );
    let err = compose(&generated(&["_a"]), &[part(&["_a"], ""), part(&["_a"], "")]).unwrap_err();
    assert!(err.contains("_a twice"), "{err}");
}

#[test]
fn rust_syntax_and_c99_comments_fail() {
    let err = compose(
        &generated(&["_a"]),
        &[part(
            &["_a"],
            "/* see [`crate::segment::max_large_pages`] */",
        )],
    )
    .unwrap_err();
    assert!(err.contains("Rust syntax"), "{err}");
    for (bad, what) in [
        ("#define X 1 // one", "`//` comment"),
        ("#endif X", "text after #endif"),
        (" * # Errors", "markdown heading"),
        (" * an Option<&mut Heap>", "Rust syntax"),
        (" * 2 MiB \u{2212} 4 KiB", "non-ASCII"),
    ] {
        let problems = lint(bad);
        assert!(
            problems.iter().any(|p| p.contains(what)),
            "{bad}: {problems:?}"
        );
    }
    assert!(lint("#endif /* X */\n#endif\n/* plain C */").is_empty());
}

/// The committed header passes the same lint (build.rs enforces it on every build; this says so
/// in the test suite too).
#[test]
fn the_committed_header_is_plain_c() {
    let header =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/include/zend_alloc.h"))
            .unwrap();
    assert_eq!(lint(&header), Vec::<String>::new());
}
