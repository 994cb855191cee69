//! Composes `include/zend_alloc.h` from cbindgen's output and the parts listed in cbindgen.toml's
//! `[[zend_alloc.part]]` tables. Plain text handling, shared by build.rs and
//! tests/header_compose.rs (which checks the failure cases).
//!
//! cbindgen writes the types and constants after the `after_includes` text, then every prototype
//! in one `extern "C"` block, one declaration per paragraph. Both are cut into their declarations,
//! and each part gets the types and functions it names, then its C text: the group's opening
//! comment and the macros that call those functions. Types no part names stay where cbindgen put
//! them (cbindgen orders them so that each comes after what it uses; a part must keep that order).
//! cbindgen's `extern "C"` markers are dropped (they carry `//` comments, which C89 lacks): the
//! parts open and close the block themselves.

/// One part of the header: these types and constants, the prototypes of these functions (each in
/// the order given), then this C text.
pub struct Part {
    pub types: Vec<String>,
    pub functions: Vec<String>,
    pub c: String,
}

/// What cbindgen (0.29.4, `cpp_compat`) writes around the prototypes.
const OPEN: &str = "#ifdef __cplusplus\nextern \"C\" {\n#endif // __cplusplus\n";
const CLOSE: &str = "#ifdef __cplusplus\n}  // extern \"C\"\n#endif  // __cplusplus\n";

/// A declaration cbindgen wrote, by the name it declares.
struct Piece<'a> {
    name: String,
    text: &'a str,
    placed: bool,
}

/// The header: `generated` (cbindgen's output, whose configured `after_includes` text is
/// `after_includes`) with its prototypes, and the types the parts name, spread over `parts`. Types
/// no part names stay where cbindgen put them. Fails if a generated function is in no part (it
/// would vanish from the header), if a part names something cbindgen did not generate or names it
/// twice, or if the result fails [`lint`].
pub fn compose(generated: &str, after_includes: &str, parts: &[Part]) -> Result<String, String> {
    let open = find_once(generated, OPEN)?;
    let body_start = open + OPEN.len();
    let close = body_start + find_once(&generated[body_start..], CLOSE)?;
    let after = generated[close + CLOSE.len()..].trim();
    if !after.is_empty() {
        return Err(format!(
            "text after the prototypes (cbindgen's trailer?): {after:.60}; put it into a part"
        ));
    }
    let after_includes = after_includes.trim();
    if after_includes.is_empty() {
        return Err("cbindgen.toml needs an after_includes text (it ends the prelude)".into());
    }
    let types_start = find_once(&generated[..open], after_includes)? + after_includes.len();
    let mut types = pieces(&generated[types_start..open], type_name)?;
    let mut functions = pieces(&generated[body_start..close], function_name)?;

    let mut out = String::from(generated[..types_start].trim_end());
    out.push_str("\n\n");
    for t in types
        .iter()
        .filter(|t| !parts.iter().any(|p| p.types.contains(&t.name)))
    {
        out.push_str(t.text);
        out.push_str("\n\n");
    }
    for part in parts {
        place(&mut out, &mut types, &part.types, "type or constant")?;
        place(&mut out, &mut functions, &part.functions, "function")?;
        let c = part.c.trim_matches('\n');
        if !c.is_empty() {
            out.push_str(c);
            out.push_str("\n\n");
        }
    }
    let missing: Vec<&str> = functions
        .iter()
        .filter(|p| !p.placed)
        .map(|p| p.name.as_str())
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

/// cbindgen's declarations in `text`, one per paragraph (it separates them by a blank line).
fn pieces(text: &str, name_of: fn(&str) -> Option<String>) -> Result<Vec<Piece<'_>>, String> {
    let mut pieces: Vec<Piece> = Vec::new();
    for text in text.split("\n\n") {
        let text = text.trim_matches('\n');
        if text.is_empty() {
            continue;
        }
        let name =
            name_of(text).ok_or_else(|| format!("no name in cbindgen's declaration:\n{text}"))?;
        if pieces.iter().any(|p| p.name == name) {
            return Err(format!("cbindgen declared {name} twice"));
        }
        pieces.push(Piece {
            name,
            text,
            placed: false,
        });
    }
    Ok(pieces)
}

/// Appends the named pieces to `out`, marking them placed.
fn place(
    out: &mut String,
    pieces: &mut [Piece],
    names: &[String],
    what: &str,
) -> Result<(), String> {
    for name in names {
        let Some(piece) = pieces.iter_mut().find(|p| p.name == *name) else {
            return Err(format!(
                "cbindgen.toml names the {what} {name}, which the sources do not export"
            ));
        };
        if piece.placed {
            return Err(format!("cbindgen.toml names {name} twice"));
        }
        piece.placed = true;
        out.push_str(piece.text);
        out.push_str("\n\n");
    }
    Ok(())
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

/// The declared type or constant: `#define NAME`, `struct NAME {`, `typedef ... (*NAME)(...);` or
/// `typedef ... NAME;`.
fn type_name(piece: &str) -> Option<String> {
    let code: Vec<&str> = piece
        .lines()
        .filter(|l| {
            let t = l.trim_start();
            !(t.starts_with("/*") || t.starts_with('*'))
        })
        .collect();
    let first = code.first()?.trim();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let name = if let Some(rest) = first.strip_prefix("#define ") {
        ident(rest)
    } else if let Some(rest) = first.strip_prefix("struct ") {
        ident(rest)
    } else if first.starts_with("typedef ") {
        let joined = code.join(" ");
        if let Some(at) = joined.find("(*") {
            ident(&joined[at + 2..])
        } else {
            let before = joined.trim_end().strip_suffix(';')?;
            let start = before
                .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(0, |i| i + 1);
            before[start..].to_string()
        }
    } else {
        return None;
    };
    (!name.is_empty()).then_some(name)
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
