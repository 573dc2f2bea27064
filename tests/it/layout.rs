//! The architecture holds: imports in `src/` only point down the layers
//! `lib.rs` draws, and no two modules import each other.
//!
//! Read from the source: every `use` and every `crate::`/`super::` path
//! outside comments and `#[cfg(test)] mod tests` blocks, resolved to the
//! module file it names.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

/// Bottom to top: a module may import from its own layer's modules and the
/// layers before it. `config`, `version`, `metrics` and `logging` are read
/// by every layer.
const LAYERS: &[&str] = &[
    "config",
    "version",
    "metrics",
    "logging",
    "domain",
    "connect",
    "db",
    "kafka",
    "consume",
    "providers",
    "http",
    "app",
    "ops",
    "main",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// `src/consume/partition.rs` → `consume::partition`; `mod.rs` names its
/// directory; `lib.rs` is the crate root.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    match parts.as_slice() {
        [one] if one == "lib" => "crate".into(),
        _ => parts.join("::"),
    }
}

/// The source without comments and without inline test modules.
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests {") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `a::{b, c::{d, e}}` → `a::b`, `a::c::d`, `a::c::e`.
fn expand(tree: &str) -> Vec<String> {
    let Some(open) = tree.find('{') else {
        return vec![tree.to_owned()];
    };
    let (prefix, inner) = (&tree[..open], &tree[open + 1..tree.rfind('}').unwrap()]);
    let (mut items, mut depth, mut cur) = (Vec::new(), 0, String::new());
    for ch in inner.chars() {
        match ch {
            '{' => depth += 1,
            '}' => depth -= 1,
            _ => {}
        }
        if ch == ',' && depth == 0 {
            items.push(std::mem::take(&mut cur));
        } else {
            cur.push(ch);
        }
    }
    items.push(cur);
    items
        .into_iter()
        .map(|i| i.trim().to_owned())
        .filter(|i| !i.is_empty())
        .flat_map(|i| expand(&i))
        .map(|i| format!("{prefix}{i}"))
        .collect()
}

/// The module a path names, seen from `from`, if it is one of ours.
fn resolve(from: &str, path: &str, modules: &BTreeSet<String>) -> Option<String> {
    let mut parts: Vec<&str> = path.split("::").collect();
    let mut base: Vec<&str> = if from == "crate" {
        Vec::new()
    } else {
        from.split("::").collect()
    };
    match parts.first() {
        Some(&"crate") => {
            base.clear();
            parts.remove(0);
        }
        Some(&"super") => {
            while parts.first() == Some(&"super") {
                base.pop();
                parts.remove(0);
            }
        }
        Some(&"self") => {
            parts.remove(0);
        }
        _ => return None,
    }
    let full: Vec<&str> = base.into_iter().chain(parts).collect();
    (1..=full.len())
        .rev()
        .map(|k| full[..k].join("::"))
        .find(|m| modules.contains(m))
}

fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(&src, f)).collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let from = module_of(&src, f);
        let code = code_of(&std::fs::read_to_string(f).unwrap());
        let mut paths: Vec<String> = Vec::new();
        // `use` statements: from a line that starts with one to its `;`.
        let mut stmt: Option<String> = None;
        for line in code.lines() {
            let t = line.trim_start();
            if stmt.is_none() {
                let vis = t.strip_prefix("pub ").or_else(|| {
                    t.strip_prefix("pub(crate) ")
                        .or_else(|| t.strip_prefix("pub(super) "))
                });
                stmt = vis.unwrap_or(t).strip_prefix("use ").map(str::to_owned);
            } else if let Some(s) = stmt.as_mut() {
                s.push_str(t);
            }
            if let Some(s) = stmt.take_if(|s| s.contains(';')) {
                let tree: String = s[..s.find(';').unwrap()]
                    .chars()
                    .filter(|c| !c.is_whitespace())
                    .collect();
                paths.extend(expand(&tree));
            }
        }
        for word in code.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')) {
            if word.starts_with("crate::") || word.starts_with("super::") {
                paths.push(word.trim_end_matches(':').to_owned());
            }
        }
        for p in paths {
            let p = p.split(" as ").next().unwrap_or(&p).to_owned();
            if let Some(to) = resolve(&from, &p, &modules) {
                // A module may always use its own ancestors' items.
                if to != from && !from.starts_with(&format!("{to}::")) && to != "crate" {
                    edges.entry(from.clone()).or_default().insert(to);
                }
            }
        }
    }
    edges
}

fn layer(module: &str) -> usize {
    let top = module.split("::").next().unwrap();
    LAYERS
        .iter()
        .position(|l| *l == top)
        .unwrap_or_else(|| panic!("module {module} is in no layer of LAYERS"))
}

#[test]
fn imports_only_point_down_and_never_both_ways() {
    let edges = imports();
    assert!(
        edges
            .get("consume::committer")
            .is_some_and(|t| t.contains("consume::unit")),
        "the reader must see imports: {edges:#?}"
    );
    let mut upward = Vec::new();
    let mut mutual = Vec::new();
    for (from, tos) in &edges {
        for to in tos {
            if layer(to) > layer(from) {
                upward.push(format!("{from} -> {to}"));
            }
            if from < to && edges.get(to).is_some_and(|t| t.contains(from)) {
                mutual.push(format!("{from} <-> {to}"));
            }
        }
    }
    assert!(upward.is_empty(), "imports that run upward: {upward:#?}");
    assert!(
        mutual.is_empty(),
        "modules that import each other: {mutual:#?}"
    );
}

#[test]
fn the_reader_finds_what_it_should() {
    let modules: BTreeSet<String> = ["a", "a::b", "a::b::c", "d"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(
        expand("crate::{a::b::{self, X}, d}"),
        ["crate::a::b::self", "crate::a::b::X", "crate::d"]
    );
    assert_eq!(
        resolve("a::b::c", "super::super::super::d::Y", &modules).as_deref(),
        Some("d")
    );
    assert_eq!(
        resolve("a::b", "super::b::c::Z", &modules).as_deref(),
        Some("a::b::c")
    );
    assert_eq!(resolve("d", "std::fmt", &modules), None);
    assert_eq!(code_of("use a; // use b;\n/// see crate::x"), "use a; \n");
}
