//! Golden outputs: every manifest under `manifests/` that has tiers, built by the real binary,
//! gives exactly the committed `mobile_packager_summary.json` (it records the sha256 of every
//! bundle zip and of every file inside it, so an equal summary means byte-identical bundles)
//! and the committed asset-pack `Manifest.json` files.
//!
//! A changed snapshot here is a change of output bytes: make it only on purpose, and review it
//! (`INSTA_UPDATE=always cargo test -p omnipack-cli --test golden`, then `git diff`).

mod common;

use std::fs;

use common::{omnipack_in, repo as root, text};

/// The manifests with a top-level `tiers:` key (the others are bases for `extends`).
fn manifests_with_tiers() -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(root().join("manifests"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .filter(|p| {
            fs::read_to_string(p)
                .unwrap()
                .lines()
                .any(|l| l.starts_with("tiers:"))
        })
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Builds `manifests/<name>.yaml` into a fresh folder; returns the summary text and every
/// asset-pack `Manifest.json`, each under a header line with its path.
fn build(name: &str) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let manifest = format!("manifests/{name}.yaml");
    let o = omnipack_in(
        &root(),
        &["build", &manifest, "--out", out.to_str().unwrap()],
    );
    assert!(o.status.success(), "{name}: {}", text(&o));
    let summary = fs::read_to_string(out.join("mobile_packager_summary.json")).unwrap();
    let mut packs: Vec<String> = fs::read_dir(out.join("asset-packs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    packs.sort();
    let mut manifests = String::new();
    for id in packs {
        let rel = format!("asset-packs/{id}/Manifest.json");
        manifests.push_str(&format!("== {rel}\n"));
        manifests.push_str(&fs::read_to_string(out.join(&rel)).unwrap());
    }
    (summary, manifests)
}

#[test]
fn the_golden_manifests_are_the_ones_with_tiers() {
    assert_eq!(
        manifests_with_tiers(),
        ["iphone-3gb", "iphone-4gb", "omnicoder-int4", "release"],
        "a manifest with tiers was added or removed: add a golden test for it"
    );
}

fn golden(name: &str) {
    let (summary, manifests) = build(name);
    insta::assert_snapshot!(format!("{name}_summary"), summary);
    insta::assert_snapshot!(format!("{name}_asset_pack_manifests"), manifests);
}

#[test]
fn iphone_3gb() {
    golden("iphone-3gb");
}

/// A pre-quantized source (examples/omnicoder-tiny-int4): int4 g64 passed through byte for
/// byte on one tier, dequantized to f16 on the other.
#[test]
fn omnicoder_int4() {
    golden("omnicoder-int4");
}

#[test]
fn iphone_4gb() {
    golden("iphone-4gb");
}

#[test]
fn release() {
    golden("release");
}
