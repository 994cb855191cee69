//! Module layering check, done by reading `src/`.
//!
//! The crate is meant to be a layered stack: each top-level module (`sizes`, `storage`, `heap`,
//! ...) may use only modules below it, so any layer can be read, tested and changed without the
//! ones above it. C types stay in `ffi`, the top layer: the core speaks Rust and only `ffi`
//! translates to and from the C ABI. These tests find every `crate::NAME` reference (comments,
//! literals and `#[cfg(test)] mod tests` blocks excluded), build the graph between top-level
//! modules, and fail on a cycle or on a use of `ffi` from below, naming the file and line to fix.
//! Run with `--nocapture` to see the layer order.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;

/// One `crate::NAME` mention: a file of module `from` uses module `to`, at `file:line`.
#[derive(Clone, Debug)]
struct Ref {
    from: String,
    to: String,
    at: String,
}

fn is_ident(ch: char) -> bool {
    ch.is_alphanumeric() || ch == '_'
}

/// Blanks comments and string/char literals, keeping newlines so line numbers stay right.
fn strip(src: &str) -> String {
    let c: Vec<char> = src.chars().collect();
    let at = |j: usize| c.get(j).copied().unwrap_or('\0');
    let starts = |j: usize, s: &str| s.chars().enumerate().all(|(k, ch)| at(j + k) == ch);
    let find = |j: usize, s: &str| (j..c.len()).find(|&k| starts(k, s)).unwrap_or(c.len());
    let token = |j: usize| j == 0 || !is_ident(c[j - 1]);
    let blank = |ch: &char| if *ch == '\n' { '\n' } else { ' ' };
    let (mut out, mut i) = (String::with_capacity(src.len()), 0);
    while i < c.len() {
        // A raw string's `r` starts a token, or follows a `b`/`c` that does (`br"…"`, `cr#"…"#`).
        let raw = at(i) == 'r' && (token(i) || (matches!(at(i - 1), 'b' | 'c') && token(i - 1)));
        let hashes = c[i + 1..].iter().take_while(|&&ch| ch == '#').count();
        let end = if starts(i, "//") {
            Some(find(i, "\n") + 1)
        } else if starts(i, "/*") {
            // Block comments nest.
            let (mut depth, mut j) = (1, i + 2);
            while j < c.len() && depth > 0 {
                let d = starts(j, "/*") as i32 - starts(j, "*/") as i32;
                (depth, j) = (depth + d, j + if d == 0 { 1 } else { 2 });
            }
            Some(j)
        } else if raw && at(i + 1 + hashes) == '"' {
            let close = format!("\"{}", "#".repeat(hashes));
            Some(find(i + 2 + hashes, &close) + close.len())
        } else if at(i) == '"' {
            let mut j = i + 1;
            while j < c.len() && c[j] != '"' {
                j += if c[j] == '\\' { 2 } else { 1 };
            }
            Some(j + 1)
        } else if at(i) == '\'' && at(i + 1) == '\\' {
            Some(find(i + 3, "'") + 1)
        } else if at(i) == '\'' && at(i + 2) == '\'' {
            Some(i + 3)
        } else {
            None // code, including lifetimes and labels (`'a`)
        };
        if let Some(end) = end.map(|e| e.min(c.len())) {
            out.extend(c[i..end].iter().map(blank));
            i = end;
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

/// Identifiers and single punctuation characters of stripped code, with their line numbers.
fn tokens(code: &str) -> Vec<(String, usize)> {
    let (mut toks, mut line, mut prev_ident) = (Vec::<(String, usize)>::new(), 1, false);
    for ch in code.chars() {
        match ch {
            '\n' => line += 1,
            _ if is_ident(ch) && prev_ident => toks.last_mut().unwrap().0.push(ch),
            _ if !ch.is_whitespace() => toks.push((ch.to_string(), line)),
            _ => {}
        }
        prev_ident = is_ident(ch);
    }
    toks
}

/// The top-level names reached through `crate::` in a file's tokens, with their line numbers,
/// outside `#[cfg(test)] mod tests { ... }` (unit tests may reach anywhere).
fn crate_paths(toks: &[(String, usize)]) -> Vec<(String, usize)> {
    let t = |i: usize| toks.get(i).map_or("", |t| t.0.as_str());
    let test_mod = ["#", "[", "cfg", "(", "test", ")", "]", "mod", "tests", "{"];
    let (mut found, mut i) = (Vec::new(), 0);
    while i < toks.len() {
        if (i..i + test_mod.len()).map(t).eq(test_mod) {
            // Comments and literals are already blank, so every brace token is code.
            let mut depth = 0;
            i += test_mod.len() - 1;
            while i < toks.len() && (t(i) != "}" || depth > 1) {
                depth += (t(i) == "{") as i32 - (t(i) == "}") as i32;
                i += 1;
            }
        } else if (i..i + 3).map(t).eq(["crate", ":", ":"]) && t(i + 3) != "{" {
            found.extend(toks.get(i + 3).cloned());
        } else if (i..i + 3).map(t).eq(["crate", ":", ":"]) {
            // Grouped use: the first name of each item at brace depth 1.
            let (mut depth, mut j) = (0, i + 3);
            while j < toks.len() && (t(j) != "}" || depth > 1) {
                depth += (t(j) == "{") as i32 - (t(j) == "}") as i32;
                if depth == 1 && matches!(t(j - 1), "{" | ",") && t(j).starts_with(is_ident) {
                    found.push(toks[j].clone());
                }
                j += 1;
            }
        }
        i += 1;
    }
    found
}

/// Modules declared in lib.rs: `mod NAME;`, whatever attributes and visibility precede it.
fn declared_modules(lib_rs: &str) -> BTreeSet<String> {
    let toks = tokens(&strip(lib_rs));
    let decl = |w: &&[(String, usize)]| w[0].0 == "mod" && w[2].0 == ";";
    let decls = toks.windows(3).filter(decl);
    decls.map(|w| w[1].0.clone()).collect()
}

/// `src/heap/small.rs` -> `heap`, `src/sizes.rs` -> `sizes`.
fn top_module(path: &str) -> String {
    let first = path.trim_start_matches("src/").split('/').next().unwrap();
    first.trim_end_matches(".rs").to_string()
}

/// The modules declared in `src/lib.rs` and every reference between them, from (path, source)
/// pairs with paths relative to the crate root.
fn analyze(files: &[(String, String)]) -> (BTreeSet<String>, Vec<Ref>) {
    let lib = files.iter().find(|(p, _)| p == "src/lib.rs");
    let mut modules = declared_modules(&lib.expect("no src/lib.rs").1);
    // lib.rs only declares modules; model_tests.rs is compiled for tests only.
    modules.remove("model_tests");
    let mut refs = Vec::new();
    for (file, src) in files {
        if file == "src/lib.rs" || file == "src/model_tests.rs" {
            continue;
        }
        // `super::` never leaves the top-level module, so only `crate::` paths can make edges.
        for (to, line) in crate_paths(&tokens(&strip(src))) {
            let (from, at) = (top_module(file), format!("{file}:{line}"));
            if to != from && modules.contains(&to) {
                refs.push(Ref { from, to, at });
            }
        }
    }
    (modules, refs)
}

type Graph<'a> = BTreeMap<&'a str, BTreeMap<&'a str, Vec<&'a Ref>>>;

fn graph(refs: &[Ref]) -> Graph<'_> {
    let mut g = Graph::new();
    for r in refs {
        let edges: &mut BTreeMap<_, Vec<_>> = g.entry(&r.from).or_default();
        edges.entry(&r.to).or_default().push(r);
    }
    g
}

fn next<'a>(g: &Graph<'a>, m: &str) -> Vec<&'a str> {
    let none = BTreeMap::new();
    g.get(m).unwrap_or(&none).keys().copied().collect()
}

/// Groups of mutually dependent modules (strongly connected components), lowest layer first: a
/// module reaches strictly more modules than any module below it.
fn layers<'a>(modules: &'a BTreeSet<String>, g: &Graph<'a>) -> Vec<Vec<&'a str>> {
    let mut reach = BTreeMap::new();
    for m in modules.iter().map(String::as_str) {
        let (mut seen, mut todo) = (BTreeSet::from([m]), vec![m]);
        while let Some(n) = todo.pop() {
            todo.extend(next(g, n).into_iter().filter(|&k| seen.insert(k)));
        }
        reach.insert(m, seen);
    }
    let mut groups: Vec<Vec<&str>> = Vec::new();
    for (&m, r) in &reach {
        if !groups.iter().any(|grp| grp.contains(&m)) {
            groups.push(r.iter().copied().filter(|n| reach[n].contains(m)).collect());
        }
    }
    groups.sort_by_key(|grp| (reach[grp[0]].len(), grp[0]));
    groups
}

fn edge_text(g: &Graph, a: &str, b: &str) -> String {
    let refs = &g[a][b];
    let more = (refs.len() > 1).then(|| format!(", +{} more", refs.len() - 1));
    format!("{a} -> {b} ({}{})", refs[0].at, more.unwrap_or_default())
}

/// Per cyclic group: its shortest cycle through the first module, then every edge inside the group
/// (each lies on some cycle, so these are the candidates to cut).
fn cycle_report(modules: &BTreeSet<String>, g: &Graph) -> String {
    let mut report = String::new();
    for grp in layers(modules, g).into_iter().filter(|grp| grp.len() > 1) {
        let start = grp[0];
        let (mut parent, mut todo) = (BTreeMap::new(), VecDeque::from([start]));
        while let Some(m) = todo.pop_front() {
            for n in next(g, m).into_iter().filter(|n| grp.contains(n)) {
                parent.entry(n).or_insert_with(|| {
                    todo.push_back(n);
                    m
                });
            }
        }
        let mut cycle = vec![start];
        while let Some(&p) = parent.get(cycle.last().unwrap()).filter(|&&p| p != start) {
            cycle.push(p);
        }
        cycle.push(start);
        cycle.reverse();
        report += &format!("cycle among {{{}}}:\n", grp.join(", "));
        for w in cycle.windows(2) {
            report += &format!("    {}\n", edge_text(g, w[0], w[1]));
        }
        report += "  all edges inside this group:\n";
        for &a in &grp {
            for b in next(g, a).into_iter().filter(|b| grp.contains(b)) {
                report += &format!("    {}\n", edge_text(g, a, b));
            }
        }
    }
    report
}

/// References to `ffi` from any other module.
fn ffi_violations(refs: &[Ref]) -> Vec<&Ref> {
    let bad = |r: &&Ref| r.to == "ffi" && r.from != "ffi";
    refs.iter().filter(bad).collect()
}

fn read_tree() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (mut files, mut dirs) = (Vec::new(), vec![root.join("src")]);
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|e| e == "rs") {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy();
                files.push((rel.replace('\\', "/"), std::fs::read_to_string(&p).unwrap()));
            }
        }
    }
    files.sort();
    files
}

#[test]
fn modules_form_a_layered_stack_without_cycles() {
    let (modules, refs) = analyze(&read_tree());
    assert!(modules.len() > 1, "found no modules in src/lib.rs");
    let g = graph(&refs);
    eprintln!("layer order, lowest first:");
    for layer in layers(&modules, &g) {
        eprintln!("    {}", layer.join(" <-> "));
    }
    let report = cycle_report(&modules, &g);
    assert!(report.is_empty(), "cycles between modules:\n{report}");
}

#[test]
fn only_ffi_uses_ffi() {
    let (_, refs) = analyze(&read_tree());
    let bad: Vec<&str> = ffi_violations(&refs)
        .iter()
        .map(|r| r.at.as_str())
        .collect();
    assert!(
        bad.is_empty(),
        "C types belong to ffi; used from:\n    {}",
        bad.join("\n    ")
    );
}

#[test]
fn the_checker_finds_a_planted_cycle() {
    let lib = "pub mod a;\n#[cfg(x)]\npub(crate) mod b;\nmod c; mod d;\n\
        pub(in crate) mod e;\nmod f;\n#[path = \"g]x.rs\"]\nmod g;\nmod ffi;\nfn z() {}\n";
    let a = "pub const Y: u32 = 1;\nfn f() -> u32 {\n    crate::b::X + 1\n}\n";
    let b = "const X: u32 = crate :: a::Y;\nfn g() { super::x(); crate::ffi::T; }";
    let f = r##"//! see crate::c::Z
/* crate::c /* nested */ crate::c */
const S: &str = "crate::c::Z \" crate::c";
const R: &str = r#"a "crate::c" b"#;
fn h<'a>(x: &'a u8) -> char { let _ = '"'; '{' }
use crate::{d::{self, E}, e::F};
#[cfg(test)]
mod tests {
    const B: char = '}';
    use crate::c;
}
fn k() -> u8 { crate::g::K + crate::VALUE + crate::f::L } // crate::c
"##;
    let files = [
        ("src/lib.rs", lib),
        ("src/a.rs", a),
        ("src/b/mod.rs", b),
        ("src/f.rs", f),
    ];
    let (modules, refs) = analyze(&files.map(|(p, s)| (p.to_string(), s.to_string())));
    assert_eq!(modules.len(), 8, "{modules:?}");
    let g = graph(&refs);
    let report = cycle_report(&modules, &g);
    assert!(report.contains("cycle among {a, b}"), "{report}");
    assert!(report.contains("a -> b (src/a.rs:3)"), "{report}");
    assert!(report.contains("b -> a (src/b/mod.rs:1)"), "{report}");
    // In f.rs only the grouped use and `g` after the test module count: not comments, literals,
    // tests, crate-root items or f itself.
    let from_f: Vec<&str> = g["f"].keys().copied().collect();
    assert_eq!(from_f, ["d", "e", "g"]);
    let bad = ffi_violations(&refs);
    assert!(bad.len() == 1 && bad[0].at == "src/b/mod.rs:2", "{bad:?}");
    let order = layers(&modules, &g).concat();
    let pos = |m: &str| order.iter().position(|&n| n == m).unwrap();
    assert!(
        pos("d") < pos("f") && pos("g") < pos("f") && pos("ffi") < pos("b"),
        "{order:?}"
    );
}
