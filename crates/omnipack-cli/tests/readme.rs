//! The README's promises: the quick-start commands, and the worked memory-model example,
//! which must be exactly what `omnipack plan manifests/release.yaml` prints.

use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn readme() -> String {
    std::fs::read_to_string(root().join("README.md")).expect("README.md is readable")
}

#[test]
fn worked_example_matches_the_planner() {
    let readme = readme();
    let start = readme
        .find("```\ntier iphone-3gb")
        .expect("README has the worked example's plan table");
    let block_start = start + "```\n".len();
    let len = readme[block_start..]
        .find("```")
        .expect("the worked example's code block is closed");
    let block = &readme[block_start..block_start + len];

    let out = Command::new(env!("CARGO_BIN_EXE_omnipack"))
        .current_dir(root())
        .args(["plan", "manifests/release.yaml"])
        .output()
        .expect("omnipack runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(block),
        "README's worked example no longer matches `omnipack plan manifests/release.yaml`; \
         update the README.\n--- README ---\n{block}\n--- plan ---\n{stdout}"
    );
}

#[test]
fn quick_start_commands_are_documented_and_run_by_ci() {
    let readme = readme();
    assert!(readme.contains("cargo run --release -- build manifests/iphone-3gb.yaml"));
    assert!(readme.contains("cargo test --workspace"));
    let ci = std::fs::read_to_string(root().join(".ci/run")).expect(".ci/run is readable");
    assert!(ci.contains("cargo test --workspace"));
    assert!(root().join("manifests/iphone-3gb.yaml").is_file());
}
