//! The header composition of build.rs (build/compose.rs): every exported function lands in exactly
//! one group, types go where a group names them, and Rust syntax or C99-only comments never reach
//! the C header.

#[path = "../build/compose.rs"]
mod compose;

use compose::{Part, compose, lint};

const AFTER_INCLUDES: &str = "/* after includes */";

/// cbindgen's output shape: prelude, types, the extern "C" block with one declaration per paragraph.
fn generated(functions: &[&str]) -> String {
    let mut s = format!("#ifndef H\n#define H\n\n{AFTER_INCLUDES}\n\n#define ZEND_MM_BINS 30\n\n");
    s.push_str("/**\n * A handler.\n */\ntypedef void (*handler_t)(void *ptr);\n\n");
    s.push_str("struct _info {\n    size_t size;\n};\n\ntypedef struct _info info;\n\n");
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
        types: Vec::new(),
        functions: functions.iter().map(|f| f.to_string()).collect(),
        c: c.to_string(),
    }
}

#[test]
fn functions_go_where_the_parts_say_with_their_macros_after_them() {
    let header = compose(
        &generated(&["_b", "_a"]),
        AFTER_INCLUDES,
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
    assert!(header.starts_with(&format!(
        "#ifndef H\n#define H\n\n{AFTER_INCLUDES}\n\n#define ZEND_MM_BINS 30\n"
    )));
    assert!(!header.contains("//") && !header.contains("# Safety"));
    assert_eq!(header.matches(" * The pointer must be live.").count(), 2);
    assert!(header.ends_with("#endif /* H */\n"));
}

#[test]
fn types_go_to_the_part_that_names_them_the_others_stay() {
    let mut p = part(&["_a"], "#define a(p) _a(p, 0)");
    p.types = vec!["_info".to_string(), "info".to_string()];
    let header = compose(
        &generated(&["_a"]),
        AFTER_INCLUDES,
        &[part(&[], "/* group */"), p],
    )
    .unwrap();
    let at = |s: &str| header.find(s).unwrap_or_else(|| panic!("{s} missing"));
    // Unnamed: right after the after_includes text, in cbindgen's order.
    assert!(at(AFTER_INCLUDES) < at("#define ZEND_MM_BINS 30"));
    assert!(at("#define ZEND_MM_BINS 30") < at("typedef void (*handler_t)"));
    // Named: in their part, before its functions.
    assert!(at("typedef void (*handler_t)") < at("/* group */"));
    assert!(at("/* group */") < at("struct _info {"));
    assert!(at("struct _info {") < at("typedef struct _info info;"));
    assert!(at("typedef struct _info info;") < at("void *_a("));
    assert_eq!(header.matches("struct _info {").count(), 1);

    let mut p = part(&["_a"], "");
    p.types = vec!["gone_t".to_string()];
    let err = compose(&generated(&["_a"]), AFTER_INCLUDES, &[p]).unwrap_err();
    assert!(err.contains("type or constant gone_t"), "{err}");
}

#[test]
fn a_function_in_no_part_fails() {
    let err = compose(
        &generated(&["_a", "_forgotten"]),
        AFTER_INCLUDES,
        &[part(&["_a"], "")],
    )
    .unwrap_err();
    assert!(
        err.contains("no [[zend_alloc.part]]") && err.contains("_forgotten"),
        "{err}"
    );
}

#[test]
fn a_name_no_function_has_or_a_name_given_twice_fails() {
    let err = compose(
        &generated(&["_a"]),
        AFTER_INCLUDES,
        &[part(&["_a", "_gone"], "")],
    )
    .unwrap_err();
    assert!(
        err.contains("_gone") && err.contains("do not export"),
        "{err}"
    );
    let err = compose(
        &generated(&["_a"]),
        AFTER_INCLUDES,
        &[part(&["_a"], ""), part(&["_a"], "")],
    )
    .unwrap_err();
    assert!(err.contains("_a twice"), "{err}");
}

#[test]
fn rust_syntax_and_c99_comments_fail() {
    let err = compose(
        &generated(&["_a"]),
        AFTER_INCLUDES,
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
