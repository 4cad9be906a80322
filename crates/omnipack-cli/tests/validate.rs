//! `omnipack validate` and `omnipack schema` through the real binary: the committed manifests
//! are valid, every broken fixture exits 1 and prints exactly the library's diagnostics (their
//! places and snapshots are tested in `crates/omnipack-manifest/tests/validate.rs`), several
//! manifests are checked in one run, hostile inputs fail cleanly, and the committed schemas
//! match what the binary prints.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs `omnipack` from the repository root, so paths (and snapshots) are relative.
fn omnipack(args: &[&str]) -> Output {
    omnipack_in(&repo(), args)
}

fn omnipack_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_omnipack"))
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .output()
        .expect("omnipack runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Every broken manifest under `manifests/errors/`, relative to this crate's folder (where
/// `cargo test` runs the tests, so the library and the binary see the same path).
fn error_fixtures() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(repo().join("manifests/errors"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .map(|n| format!("../../manifests/errors/{n}"))
        .collect();
    names.sort();
    names
}

/// The binary exits 1 on every broken fixture and prints the library's diagnostics as they
/// are: rendered on stderr followed by the error count, or as JSON on stdout.
#[test]
fn broken_fixtures_exit_1_with_the_library_diagnostics() {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let fixtures = error_fixtures();
    assert!(fixtures.len() >= 20);
    for rel in fixtures {
        let diags = omnipack_manifest::load(Path::new(&rel))
            .err()
            .unwrap_or_else(|| panic!("{rel} loads"));

        let out = omnipack_in(&here, &["validate", &rel]);
        assert_eq!(out.status.code(), Some(1), "{rel}: {}", text(&out.stderr));
        let stderr = text(&out.stderr);
        assert!(!stderr.contains("panicked"), "{rel}: {stderr}");
        let expected = format!(
            "{}{} found\n",
            omnipack_manifest::render(&diags.0),
            omnipack_manifest::counted(diags.error_count(), "error")
        );
        assert_eq!(stderr, expected, "{rel}");

        let out = omnipack_in(&here, &["validate", "--format", "json", &rel]);
        assert_eq!(out.status.code(), Some(1));
        let printed: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("JSON on stdout");
        assert_eq!(printed, serde_json::to_value(&diags.0).unwrap(), "{rel}");
    }
}

fn committed_manifests() -> Vec<String> {
    let mut out = Vec::new();
    for dir in ["manifests", "examples"] {
        collect_yaml(&repo(), &repo().join(dir), &mut out);
    }
    out.sort();
    out
}

fn collect_yaml(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n == "errors")
                && p.parent() == Some(&root.join("manifests"))
            {
                continue;
            }
            collect_yaml(root, &p, out);
        } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
        }
    }
}

#[test]
fn committed_manifests_are_valid() {
    let files = committed_manifests();
    assert!(
        files.iter().any(|f| f == "manifests/release.yaml"),
        "{files:?}"
    );
    let mut args = vec!["validate"];
    args.extend(files.iter().map(String::as_str));
    let out = omnipack(&args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("manifests/base.yaml: valid (a base for extends: no tiers"),
        "{stdout}"
    );
    assert!(
        stdout.contains("manifests/release.yaml: valid (4 tiers, 5 components)"),
        "{stdout}"
    );
    assert!(
        text(&out.stderr).is_empty(),
        "warnings: {}",
        text(&out.stderr)
    );

    let out = omnipack(&["validate", "--format", "json", "manifests/release.yaml"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap(),
        serde_json::json!([])
    );
}

#[test]
fn schemas_do_not_drift() {
    for (which, file) in [
        ("manifest", "schemas/omnipack-manifest.schema.json"),
        ("summary", "schemas/mobile_packager_summary.schema.json"),
    ] {
        let out = omnipack(&["schema", which]);
        assert_eq!(out.status.code(), Some(0));
        let committed = std::fs::read(repo().join(file)).unwrap_or_default();
        assert!(
            committed == out.stdout,
            "{file} differs from `omnipack schema {which}`: regenerate it with\n  cargo run -q -p omnipack-cli -- schema {which} > {file}"
        );
    }
    let default = omnipack(&["schema"]);
    assert_eq!(default.stdout, omnipack(&["schema", "manifest"]).stdout);
    assert_eq!(omnipack(&["schema", "plan"]).status.code(), Some(2));
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(omnipack(&["validate"]).status.code(), Some(2));
    assert_eq!(
        omnipack(&["validate", "--format", "xml", "manifests/base.yaml"])
            .status
            .code(),
        Some(2)
    );
}

#[test]
fn several_manifests_report_every_problem() {
    let out = omnipack(&[
        "validate",
        "--format",
        "json",
        "manifests/release.yaml",
        "manifests/errors/bad-size.yaml",
        "manifests/errors/tabs.yaml",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let diags: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let files: Vec<&str> = diags.iter().filter_map(|d| d["file"].as_str()).collect();
    assert_eq!(
        files,
        [
            "manifests/errors/bad-size.yaml",
            "manifests/errors/tabs.yaml"
        ]
    );
    for d in &diags {
        for key in ["severity", "message", "file", "line", "column", "path"] {
            assert!(d.get(key).is_some(), "{key} missing in {d}");
        }
    }
}

/// Hostile inputs: each ends with exit 1 and a clear message, never a panic or a hang.
#[test]
fn hostile_inputs_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Billion laughs.
    let mut bomb =
        String::from("omnipack: 1\na0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..12 {
        let refs = vec![format!("*a{}", i - 1); 10].join(", ");
        bomb.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
    }
    std::fs::write(d.join("bomb.yaml"), bomb).unwrap();
    // Nesting thousands deep, flow and block.
    std::fs::write(
        d.join("deep-flow.yaml"),
        format!("omnipack: 1\nx: {}{}\n", "[".repeat(5000), "]".repeat(5000)),
    )
    .unwrap();
    let mut deep = String::from("omnipack: 1\n");
    for i in 0..2000 {
        deep.push_str(&format!("{}k:\n", " ".repeat(i)));
    }
    std::fs::write(d.join("deep-block.yaml"), deep).unwrap();
    // 50 MB.
    let big = std::fs::File::create(d.join("big.yaml")).unwrap();
    big.set_len(50 * 1000 * 1000).unwrap();
    // Invalid UTF-8.
    std::fs::write(
        d.join("latin1.yaml"),
        b"omnipack: 1\npackage: { name: caf\xe9 }\n",
    )
    .unwrap();
    // A directory.
    std::fs::create_dir(d.join("folder.yaml")).unwrap();
    // Empty, and missing.
    std::fs::write(d.join("empty.yaml"), "").unwrap();

    for (file, needle) in [
        (
            "bomb.yaml",
            "too deeply nested, too large or uses too many aliases",
        ),
        ("deep-flow.yaml", "too deeply nested"),
        ("deep-block.yaml", "too deeply nested"),
        ("big.yaml", "(50000000 bytes)"),
        ("latin1.yaml", "not valid UTF-8"),
        ("folder.yaml", "is a directory"),
        ("empty.yaml", "empty"),
        ("missing.yaml", "no such file"),
    ] {
        let out = omnipack_in(d, &["validate", file]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{file}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{file}: `{needle}` not in:\n{stderr}"
        );
        assert!(stderr.contains(file), "{file} not named in:\n{stderr}");
        assert!(!stderr.contains("panicked"), "{file}: {stderr}");
    }
    let out = omnipack_in(d, &["validate", "--format", "json", "latin1.yaml"]);
    let diags: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (diags[0]["line"].as_u64(), diags[0]["column"].as_u64()),
        (Some(2), Some(21))
    );
}

/// `validate` also checks budgets: a tier that cannot fit is an error at its `memory_limit`.
#[test]
fn a_tier_that_does_not_fit_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let base = repo().join("manifests/base.yaml");
    let base = base.canonicalize().unwrap();
    std::fs::write(
        dir.path().join("small.yaml"),
        format!(
            "omnipack: 1\nextends: {}\ntiers:\n  - {{ name: tiny, device_memory: 1GiB, memory_limit: 200MiB }}\n",
            base.display()
        ),
    )
    .unwrap();
    let out = omnipack_in(dir.path(), &["validate", "--format", "json", "small.yaml"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let diags: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let d = diags
        .iter()
        .find(|d| d["path"] == "tiers[0].memory_limit")
        .unwrap_or_else(|| panic!("{diags:?}"));
    assert_eq!(
        (d["file"].as_str(), d["line"].as_u64(), d["column"].as_u64()),
        (Some("small.yaml"), Some(4), Some(54))
    );
    assert!(
        d["message"].as_str().unwrap().contains("does not fit"),
        "{d}"
    );
}

/// An exporter's quantization is declarative (passed as `{format}`): a Core ML exporter may
/// declare `int4`, and running it on CPU/GPU is a warning of the planner (README, "Warnings":
/// the file shrinks, the memory does not), not an error. A native int4 layout for Core ML stays
/// an error (`manifests/errors/int-format-coreml.yaml`).
#[test]
fn a_quantized_coreml_exporter_on_gpu_is_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("cq.yaml"),
        "omnipack: 1\n\
         package: { name: x, version: \"1\", bundle_id: com.x }\n\
         tiers:\n\
         \x20 - { name: a, device_memory: 3GiB, memory_limit: 2GiB, max_seq_len: 512 }\n\
         components:\n\
         \x20 - name: text_coreml\n\
         \x20   role: text_decode_step\n\
         \x20   runtime: coreml\n\
         \x20   compute_units: cpu_and_gpu\n\
         \x20   architecture: { layers: 4, kv_heads: 4, kv_head_dim: 32, hidden_size: 128, vocab_size: 512 }\n\
         \x20   size: 400MiB\n\
         \x20   quantization: { format: int4 }\n\
         \x20   source:\n\
         \x20     command:\n\
         \x20       run: [python3, -m, export, --out, \"{out}/m.mlpackage\", --bits, \"{format}\"]\n\
         \x20       outputs: [m.mlpackage]\n",
    )
    .unwrap();
    let out = omnipack_in(dir.path(), &["validate", "--format", "json", "cq.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    let diags: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let d = diags
        .iter()
        .find(|d| d["path"] == "components[0].compute_units")
        .unwrap_or_else(|| panic!("{diags:?}"));
    assert_eq!(d["severity"], "warning");
    assert!(
        d["message"]
            .as_str()
            .unwrap()
            .contains("the file shrinks, the memory does not"),
        "{d}"
    );
}
