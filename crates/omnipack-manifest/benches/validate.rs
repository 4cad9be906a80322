//! Loading and validating `manifests/release.yaml` (read, parse with spans, merge `extends`,
//! schema and semantic checks, defaults).

use std::path::PathBuf;

fn main() {
    divan::main();
}

fn release() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../manifests/release.yaml")
}

#[divan::bench]
fn validate_release_yaml() {
    let loaded = omnipack_manifest::load(divan::black_box(&release()));
    assert!(loaded.is_ok(), "manifests/release.yaml must be valid");
    divan::black_box(loaded.ok());
}
