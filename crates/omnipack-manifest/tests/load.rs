//! Loading the committed manifests and hostile inputs through the library.

use std::path::PathBuf;

use omnipack_manifest::load;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn committed_manifests_load() {
    for name in [
        "base.yaml",
        "iphone-3gb.yaml",
        "iphone-4gb.yaml",
        "release.yaml",
    ] {
        let path = repo().join("manifests").join(name);
        match load(&path) {
            Ok(m) => assert!(
                m.warnings.is_empty(),
                "{name}: {}",
                omnipack_manifest::render(&m.warnings)
            ),
            Err(d) => panic!("{name}:\n{}", d.render()),
        }
    }
}
