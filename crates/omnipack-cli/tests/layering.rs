//! The workspace's layering rule: no two source files import each other (a module and the
//! folder module that contains it excepted). Read from the sources (`crate::` and `super::`
//! paths outside tests), so a new cycle fails here with the two files named.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every `.rs` file under `dir`, sorted.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The module path of a file under `src/` (`stages::install` for `src/stages/install.rs`,
/// `stages` for `src/stages/mod.rs`, empty for `lib.rs` and `main.rs`).
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// Module paths named after `crate::` and `super::` in `text` (code before any
/// `#[cfg(test)]`), resolved against `module`.
fn references(text: &str, module: &[String]) -> BTreeSet<Vec<String>> {
    let code = text.split("#[cfg(test)]").next().unwrap_or("");
    let mut out = BTreeSet::new();
    for (prefix, base) in [
        ("crate::", Vec::new()),
        ("super::", module[..module.len().saturating_sub(1)].to_vec()),
    ] {
        for (at, _) in code.match_indices(prefix) {
            let before = code[..at].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            let mut path = base.clone();
            let rest = &code[at + prefix.len()..];
            let end = rest
                .find(|c: char| {
                    !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == ':')
                })
                .unwrap_or(rest.len());
            path.extend(
                rest[..end]
                    .split("::")
                    .filter(|s| !s.is_empty())
                    .map(str::to_string),
            );
            out.insert(path);
        }
    }
    out
}

/// The longest prefix of `path` that is a module of the crate.
fn resolve<'a>(path: &[String], modules: &'a BTreeSet<Vec<String>>) -> Option<&'a Vec<String>> {
    (1..=path.len()).rev().find_map(|n| modules.get(&path[..n]))
}

#[test]
fn no_two_files_import_each_other() {
    let mut cycles = Vec::new();
    let mut crates: Vec<_> = fs::read_dir(repo().join("crates"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    crates.sort();
    let mut checked = 0;
    for krate in crates {
        let src = krate.join("src");
        if !src.is_dir() {
            continue;
        }
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        let mut refs: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
        let mut file_of = BTreeMap::new();
        for f in &files {
            let m = module_of(&src, f);
            file_of.insert(m.clone(), f.clone());
            refs.insert(m.clone(), references(&fs::read_to_string(f).unwrap(), &m));
        }
        let modules: BTreeSet<Vec<String>> = refs.keys().cloned().collect();
        let edges: BTreeSet<(Vec<String>, Vec<String>)> = refs
            .iter()
            .flat_map(|(a, rs)| {
                rs.iter()
                    .filter_map(|r| resolve(r, &modules))
                    .filter(move |b| *b != a)
                    .map(move |b| (a.clone(), b.clone()))
            })
            .collect();
        checked += files.len();
        for (a, b) in &edges {
            let nested = b.starts_with(a) || a.starts_with(b);
            if a < b && !a.is_empty() && !nested && edges.contains(&(b.clone(), a.clone())) {
                cycles.push(format!(
                    "{} <-> {}",
                    file_of[a]
                        .strip_prefix(repo())
                        .unwrap_or(&file_of[a])
                        .display(),
                    file_of[b]
                        .strip_prefix(repo())
                        .unwrap_or(&file_of[b])
                        .display()
                ));
            }
        }
    }
    assert!(checked > 50, "only {checked} source files found");
    assert!(
        cycles.is_empty(),
        "files that import each other:\n{}",
        cycles.join("\n")
    );
}

#[test]
fn the_reference_scanner_finds_a_cycle() {
    let a = vec!["a".to_string()];
    let b = vec!["b".to_string()];
    let refs_a = references("use crate::b::Thing;\nfn f() {}", &a);
    let refs_b = references("pub fn g() { crate::a::f() }", &b);
    assert!(refs_a.contains(&b), "{refs_a:?}");
    assert!(refs_b.iter().any(|r| r.starts_with(&a)));
    let child = vec!["stages".to_string(), "install".to_string()];
    let refs = references("use super::BuildError;", &child);
    assert!(refs.iter().any(|r| r.starts_with(&["stages".to_string()])));
}
