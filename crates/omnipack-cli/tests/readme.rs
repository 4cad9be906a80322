//! The README's promises: the quick-start commands, and the worked memory-model example,
//! which must be exactly what `omnipack plan manifests/release.yaml` prints.

mod common;

use common::{omnipack_in, repo as root, stderr, stdout};

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

    let out = omnipack_in(&root(), &["plan", "manifests/release.yaml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = stdout(&out);
    assert!(
        stdout.contains(block),
        "README's worked example no longer matches `omnipack plan manifests/release.yaml`; \
         update the README.\n--- README ---\n{block}\n--- plan ---\n{stdout}"
    );
}

#[test]
fn core_ml_plan_matches_the_planner() {
    let readme = readme();
    let start = readme
        .find("  ```\n  plan for omnicoder 1.0.0")
        .expect("README's Core ML section shows the plan of manifests/iphone-3gb.yaml");
    let block_start = start + "  ```\n".len();
    let len = readme[block_start..]
        .find("  ```")
        .expect("the Core ML plan's code block is closed");
    // The block is indented by two spaces inside a list item.
    let block: String = readme[block_start..block_start + len]
        .lines()
        .map(|l| l.strip_prefix("  ").unwrap_or(l))
        .map(|l| format!("{l}\n"))
        .collect();

    let out = omnipack_in(&root(), &["plan", "manifests/iphone-3gb.yaml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = stdout(&out);
    assert!(
        stdout.contains(&block),
        "README's Core ML plan no longer matches `omnipack plan manifests/iphone-3gb.yaml`; \
         update the README.\n--- README ---\n{block}\n--- plan ---\n{stdout}"
    );
    assert!(block.contains("text_coreml-int4-g32"), "{block}");
}

#[test]
fn the_no_fit_example_matches_the_planner() {
    let readme = readme();
    let start = readme
        .find("```\n  × tier `watch` does not fit")
        .expect("README shows the diagnostic of nofit.yaml");
    let block_start = start + "```\n".len();
    let len = readme[block_start..]
        .find("```")
        .expect("the block is closed");
    let block = &readme[block_start..block_start + len];
    let out = omnipack_in(
        &root().join("crates/omnipack-plan/tests/fixtures"),
        &["plan", "nofit.yaml"],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = stderr(&out);
    assert!(
        stderr.contains(block),
        "README's no-fit example no longer matches `omnipack plan nofit.yaml`; update the \
         README.\n--- README ---\n{block}\n--- plan ---\n{stderr}"
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

#[test]
fn broken_manifest_count_is_the_real_one() {
    let count = std::fs::read_dir(root().join("manifests/errors"))
        .expect("manifests/errors is readable")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "yaml"))
        })
        .count();
    let said = format!("{count} broken manifests");
    for doc in ["README.md", "docs/manifest.md"] {
        let text = std::fs::read_to_string(root().join(doc)).expect("the doc is readable");
        assert!(
            text.contains(&said),
            "{doc} must say `{said}` (the files in manifests/errors/)"
        );
    }
}
