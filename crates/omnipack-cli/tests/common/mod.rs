//! Helpers shared by the CLI's integration tests (`mod common;` in each): running the real
//! `omnipack` binary and reading what it printed and wrote.

// Each test file uses some of these.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `omnipack` binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_omnipack")
}

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The planner's fixture manifests (`crates/omnipack-plan/tests/fixtures`).
pub fn plan_fixtures() -> PathBuf {
    repo().join("crates/omnipack-plan/tests/fixtures")
}

/// Runs `omnipack ARGS` in the current folder.
pub fn omnipack(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .output()
        .expect("omnipack runs")
}

/// Runs `omnipack ARGS` in `dir` without colours (so paths in messages are relative to it).
pub fn omnipack_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .output()
        .expect("omnipack runs")
}

/// What it printed on stdout.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// What it printed on stderr.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Stdout then stderr.
pub fn text(o: &Output) -> String {
    format!("{}{}", stdout(o), stderr(o))
}

/// A path as an argument.
pub fn s(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// Every file under `dir` except `.omnipack/`, with its bytes.
pub fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
            if rel == ".omnipack" {
                continue;
            }
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            } else {
                out.insert(rel, fs::read(&p).unwrap());
            }
        }
    }
    out
}
