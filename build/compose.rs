//! Composes `include/zend_alloc.h` from cbindgen's output and the parts listed in cbindgen.toml's
//! `[[zend_alloc.part]]` tables. Plain text handling, shared by build.rs and
//! tests/header_compose.rs (which checks the failure cases).
//!
//! cbindgen writes every prototype in one `extern "C"` block. That block is cut into one piece per
//! function (cbindgen separates declarations by a blank line), and the pieces are written where
//! the parts name them, each part's C text right after its prototypes. What comes before the block
//! (banner, portability macros, constants, types) stays as cbindgen wrote it; its `extern "C"`
//! markers are dropped (they are `//` comments, which C89 lacks): the parts open and close the
//! block themselves.

/// One part of the header: prototypes of these functions (in this order), then this C text.
pub struct Part {
    pub functions: Vec<String>,
    pub c: String,
}

/// What cbindgen (0.29.4, `cpp_compat`) writes around the prototypes.
const OPEN: &str = "#ifdef __cplusplus\nextern \"C\" {\n#endif // __cplusplus\n";
const CLOSE: &str = "#ifdef __cplusplus\n}  // extern \"C\"\n#endif  // __cplusplus\n";

/// The header: `generated` (cbindgen's output) with its prototypes spread over `parts`. Fails if a
/// generated function is in no part (it would vanish from the header), if a part names a function
/// cbindgen did not generate or names one twice, or if the result fails [`lint`].
pub fn compose(generated: &str, parts: &[Part]) -> Result<String, String> {
    let open = find_once(generated, OPEN)?;
    let body_start = open + OPEN.len();
    let close = body_start + find_once(&generated[body_start..], CLOSE)?;
    let prelude = generated[..open].trim_end();
    let after = generated[close + CLOSE.len()..].trim();
    if !after.is_empty() {
        return Err(format!(
            "text after the prototypes (cbindgen's trailer?): {after:.60}; put it into a part"
        ));
    }

    let mut pieces: Vec<(String, &str, bool)> = Vec::new();
    for piece in generated[body_start..close].split("\n\n") {
        let piece = piece.trim_matches('\n');
        if piece.is_empty() {
            continue;
        }
        let name = function_name(piece)
            .ok_or_else(|| format!("no function name in cbindgen's declaration:\n{piece}"))?;
        if pieces.iter().any(|(n, _, _)| *n == name) {
            return Err(format!("cbindgen declared {name} twice"));
        }
        pieces.push((name, piece, false));
    }

    let mut out = String::from(prelude);
    out.push_str("\n\n");
    for part in parts {
        for f in &part.functions {
            let Some(entry) = pieces.iter_mut().find(|(n, _, _)| n == f) else {
                return Err(format!(
                    "cbindgen.toml names {f}, which the sources do not export"
                ));
            };
            if entry.2 {
                return Err(format!("cbindgen.toml names {f} twice"));
            }
            entry.2 = true;
            out.push_str(entry.1);
            out.push_str("\n\n");
        }
        let c = part.c.trim_matches('\n');
        if !c.is_empty() {
            out.push_str(c);
            out.push_str("\n\n");
        }
    }
    let missing: Vec<&str> = pieces
        .iter()
        .filter(|p| !p.2)
        .map(|p| p.0.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "exported functions in no [[zend_alloc.part]] of cbindgen.toml (they would be missing from \
             the header): {}",
            missing.join(", ")
        ));
    }
    let out = drop_safety_headings(out.trim_end()) + "\n";
    let problems = lint(&out);
    if !problems.is_empty() {
        return Err(format!(
            "the header is not plain C89:\n{}",
            problems.join("\n")
        ));
    }
    Ok(out)
}

fn find_once(haystack: &str, needle: &str) -> Result<usize, String> {
    let at = haystack
        .find(needle)
        .ok_or_else(|| format!("cbindgen's output lacks {needle:?}"))?;
    if haystack[at + needle.len()..].contains(needle) {
        return Err(format!("cbindgen's output has {needle:?} twice"));
    }
    Ok(at)
}

/// The declared function: the identifier before the first `(` outside the doc comment.
fn function_name(piece: &str) -> Option<String> {
    let code: String = piece
        .lines()
        .filter(|l| {
            let t = l.trim_start();
            !(t.starts_with("/*") || t.starts_with('*'))
        })
        .collect::<Vec<_>>()
        .join(" ");
    let before = code[..code.find('(')?].trim_end();
    let start = before
        .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .map_or(0, |i| i + 1);
    let name = &before[start..];
    (!name.is_empty()).then(|| name.to_string())
}

/// Rust's `unsafe fn` docs need a `# Safety` heading (clippy's missing_safety_doc); in C the
/// paragraph below it reads as plain prose, so the heading line goes.
fn drop_safety_headings(text: &str) -> String {
    text.lines()
        .filter(|l| l.trim() != "* # Safety")
        .collect::<Vec<_>>()
        .join("\n")
}

/// What a C89 compiler or a C reader should not meet: `//` comments, text after `#endif`,
/// non-ASCII characters, and Rust syntax in comments (markdown headings, rustdoc links, Rust
/// types). One line per problem, with its line number.
pub fn lint(header: &str) -> Vec<String> {
    const RUST: [&str; 9] = [
        "[`",
        "crate::",
        "Option<",
        "&mut",
        "&self",
        "Box<",
        "usize",
        "Self::",
        "extern \"Rust\"",
    ];
    let mut problems = Vec::new();
    for (i, line) in header.lines().enumerate() {
        let n = i + 1;
        if line.contains("//") {
            problems.push(format!("line {n}: `//` comment: {line}"));
        }
        if !line.is_ascii() {
            problems.push(format!("line {n}: non-ASCII character: {line}"));
        }
        let t = line.trim_start();
        if let Some(rest) = t.strip_prefix("#endif") {
            let rest = rest.trim();
            if !(rest.is_empty() || rest.starts_with("/*")) {
                problems.push(format!("line {n}: text after #endif: {line}"));
            }
        }
        if t.starts_with("* #") {
            problems.push(format!("line {n}: markdown heading in a comment: {line}"));
        }
        for r in RUST {
            if line.contains(r) {
                problems.push(format!("line {n}: Rust syntax `{r}`: {line}"));
            }
        }
    }
    problems
}
