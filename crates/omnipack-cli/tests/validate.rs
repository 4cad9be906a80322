//! `omnipack validate` and `omnipack schema` through the real binary: the committed manifests
//! are valid, every broken fixture fails with exit 1 at the right place with a useful help
//! line (rendered output snapshotted), hostile inputs fail cleanly, and the committed schemas
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

/// (fixture, file the error is in, line, column, manifest path, text the help must contain)
const FIXTURES: &[(&str, &str, u64, u64, &str, &str)] = &[
    (
        "config-architecture-mismatch",
        "config-architecture-mismatch.yaml",
        16,
        75,
        "components[0].architecture.hidden_size",
        "make them agree",
    ),
    (
        "config-missing",
        "config-missing.yaml",
        15,
        15,
        "components[0].source.config",
        "did you mean `text-config.json`?",
    ),
    (
        "config-not-object",
        "config-not-object.yaml",
        15,
        15,
        "components[0].source.config",
        "one JSON object",
    ),
    (
        "decimal-integer",
        "decimal-integer.yaml",
        14,
        18,
        "components[0].max_seq_len",
        "without a decimal point",
    ),
    (
        "empty-format-list",
        "empty-format-list.yaml",
        16,
        7,
        "components[0].quantization.format",
        "at least one value",
    ),
    (
        "empty-package",
        "empty-package.yaml",
        4,
        1,
        "package",
        "bundle_id",
    ),
    (
        "empty-source",
        "empty-source.yaml",
        12,
        5,
        "components[0].source",
        "safetensors",
    ),
    (
        "multi-document",
        "multi-document.yaml",
        15,
        1,
        "",
        "one YAML document",
    ),
    (
        "size-overflow",
        "size-overflow.yaml",
        8,
        19,
        "tiers[0].memory_limit",
        "GiB",
    ),
    (
        "tab-indent",
        "tab-indent.yaml",
        5,
        1,
        "",
        "spaces, not tabs",
    ),
    (
        "bad-duration",
        "bad-duration.yaml",
        21,
        18,
        "components[1].source.command.timeout",
        "`30s`",
    ),
    (
        "bad-name",
        "bad-name.yaml",
        10,
        11,
        "components[0].name",
        "lowercase letters",
    ),
    (
        "bad-size",
        "bad-size.yaml",
        8,
        19,
        "tiers[0].memory_limit",
        "MiB",
    ),
    (
        "base-with-typo",
        "base-with-typo.yaml",
        11,
        5,
        "components[0].delivry",
        "`delivery`",
    ),
    (
        "compute-units-mlx",
        "compute-units-mlx.yaml",
        15,
        5,
        "components[0].compute_units",
        "runtime: coreml",
    ),
    (
        "duplicate-component",
        "duplicate-component.yaml",
        15,
        11,
        "components[1].name",
        "duplicate-component.yaml:10:11",
    ),
    (
        "duplicate-file",
        "duplicate-file.yaml",
        16,
        11,
        "components[0].source.files[2]",
        "duplicate-file.yaml:14:11",
    ),
    (
        "duplicate-key",
        "duplicate-key.yaml",
        9,
        5,
        "",
        "once per mapping",
    ),
    (
        "extends-bad-base",
        "base-with-typo.yaml",
        11,
        5,
        "components[0].delivry",
        "`delivery`",
    ),
    (
        "extends-cycle-a",
        "extends-cycle-b.yaml",
        4,
        10,
        "extends",
        "remove one `extends`",
    ),
    (
        "extends-cycle-b",
        "extends-cycle-a.yaml",
        4,
        10,
        "extends",
        "remove one `extends`",
    ),
    (
        "extends-missing",
        "extends-missing.yaml",
        4,
        10,
        "extends",
        "did you mean `base.yaml`?",
    ),
    (
        "int-format-coreml",
        "int-format-coreml.yaml",
        16,
        29,
        "components[0].quantization.format",
        "`f16`",
    ),
    (
        "kv-group-size",
        "kv-group-size.yaml",
        15,
        41,
        "components[0].kv_cache.group_size",
        "divisor of 32",
    ),
    (
        "limit-above-device",
        "limit-above-device.yaml",
        8,
        19,
        "tiers[0].memory_limit",
        "at most 4.00 GiB",
    ),
    (
        "missing-architecture",
        "missing-architecture.yaml",
        11,
        11,
        "components[0].role",
        "architecture:",
    ),
    (
        "missing-package",
        "missing-package.yaml",
        3,
        1,
        "package",
        "bundle_id",
    ),
    (
        "missing-required",
        "missing-required.yaml",
        6,
        5,
        "tiers[0]",
        "add `memory_limit:`",
    ),
    (
        "missing-source-file",
        "missing-source-file.yaml",
        12,
        28,
        "components[0].source.safetensors",
        "`model.safetensors`",
    ),
    (
        "mlc-kv-quant",
        "mlc-kv-quant.yaml",
        16,
        25,
        "components[0].kv_cache.format",
        "f16",
    ),
    (
        "negative-number",
        "negative-number.yaml",
        14,
        18,
        "components[0].max_seq_len",
        "at least 1",
    ),
    (
        "negative-size",
        "negative-size.yaml",
        5,
        19,
        "runtime_overhead",
        "MiB",
    ),
    (
        "nf4-mlx",
        "nf4-mlx.yaml",
        15,
        29,
        "components[0].quantization.format",
        "`custom`",
    ),
    (
        "not-a-mapping",
        "not-a-mapping.yaml",
        3,
        1,
        "",
        "omnipack: 1",
    ),
    (
        "not-safetensors",
        "not-safetensors.yaml",
        12,
        28,
        "components[0].source.safetensors",
        "safetensors",
    ),
    (
        "output-traversal",
        "output-traversal.yaml",
        20,
        19,
        "components[1].source.command.outputs[0]",
        "`{out}`",
    ),
    (
        "prefix-without-safetensors",
        "prefix-without-safetensors.yaml",
        17,
        65,
        "components[1].source.prefix",
        "remove `prefix`",
    ),
    ("tabs", "tabs.yaml", 7, 1, "", "spaces, not tabs"),
    (
        "two-sources",
        "two-sources.yaml",
        12,
        92,
        "components[0].source.files",
        "exactly one",
    ),
    (
        "unicode-columns",
        "unicode-columns.yaml",
        4,
        82,
        "package.licence",
        "`bundle_id`",
    ),
    (
        "unknown-key-component",
        "unknown-key-component.yaml",
        15,
        5,
        "components[0].qunatization",
        "`quantization`",
    ),
    (
        "unknown-key-deep",
        "unknown-key-deep.yaml",
        17,
        17,
        "components[0].kv_cache.paging.page_length",
        "`page_len`",
    ),
    (
        "unknown-key-top",
        "unknown-key-top.yaml",
        5,
        1,
        "runtime_overhed",
        "`runtime_overhead`",
    ),
    (
        "unknown-placeholder",
        "unknown-placeholder.yaml",
        14,
        77,
        "components[0].source.command.run[3]",
        "did you mean `{out}`?",
    ),
    (
        "unknown-tier-component",
        "unknown-tier-component.yaml",
        9,
        18,
        "tiers[0].components[0]",
        "`text`",
    ),
    (
        "unknown-tier-override",
        "unknown-tier-override.yaml",
        18,
        9,
        "components[0].quantization.tiers.iphone-3g",
        "`iphone-4gb`",
    ),
    (
        "wrong-enum-format",
        "wrong-enum-format.yaml",
        15,
        36,
        "components[0].quantization.format[1]",
        "`int8`",
    ),
    (
        "wrong-enum-role",
        "wrong-enum-role.yaml",
        11,
        11,
        "components[0].role",
        "`text_decode_step`",
    ),
    ("wrong-type", "wrong-type.yaml", 5, 1, "tiers", "tiers"),
    (
        "wrong-version",
        "wrong-version.yaml",
        3,
        11,
        "omnipack",
        "`omnipack: 1`",
    ),
    (
        "yaml-syntax",
        "yaml-syntax.yaml",
        10,
        11,
        "",
        "line 9 is never closed",
    ),
];

#[test]
fn every_error_fixture_is_covered() {
    let mut on_disk: Vec<String> = std::fs::read_dir(repo().join("manifests/errors"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| {
            e.file_name()
                .to_string_lossy()
                .trim_end_matches(".yaml")
                .to_string()
        })
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = FIXTURES.iter().map(|f| f.0.to_string()).collect();
    listed.sort();
    assert_eq!(
        on_disk, listed,
        "every manifests/errors/*.yaml needs a row in FIXTURES"
    );
    assert!(listed.len() >= 20);
}

#[test]
fn broken_fixtures_fail_at_the_right_place() {
    for &(name, file, line, column, path, help) in FIXTURES {
        let rel = format!("manifests/errors/{name}.yaml");
        let out = omnipack(&["validate", &rel]);
        assert_eq!(out.status.code(), Some(1), "{rel}: {}", text(&out.stderr));
        let stderr = text(&out.stderr);
        assert!(!stderr.contains("panicked"), "{rel}: {stderr}");
        insta::assert_snapshot!(name, stderr);

        let out = omnipack(&["validate", "--format", "json", &rel]);
        assert_eq!(out.status.code(), Some(1));
        let diags: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
        let first = diags
            .as_array()
            .and_then(|a| a.iter().find(|d| d["severity"] == "error"))
            .unwrap_or_else(|| panic!("{rel}: no error in {diags}"));
        assert_eq!(first["file"], format!("manifests/errors/{file}"), "{rel}");
        assert_eq!(first["line"], line, "{rel}: line");
        assert_eq!(first["column"], column, "{rel}: column");
        assert_eq!(first["path"], path, "{rel}: path");
        let h = first["help"].as_str().unwrap_or("");
        assert!(h.contains(help), "{rel}: help `{h}` lacks `{help}`");
        assert!(first["message"].as_str().is_some_and(|m| !m.is_empty()));
        if name.starts_with("extends-cycle") {
            let m = first["message"].as_str().unwrap();
            assert!(
                m.contains("cycle")
                    && m.contains("extends-cycle-a.yaml")
                    && m.contains("extends-cycle-b.yaml"),
                "{m}"
            );
        }
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
        stdout.contains("manifests/release.yaml: valid (4 tiers, 4 components)"),
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
fn committed_manifests_match_the_committed_schema() {
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("schemas/omnipack-manifest.schema.json")).unwrap(),
    )
    .unwrap();
    let validator = jsonschema::draft7::new(&schema).expect("the committed schema compiles");
    for f in committed_manifests() {
        let text = std::fs::read_to_string(repo().join(&f)).unwrap();
        assert!(
            text.starts_with("# yaml-language-server: $schema="),
            "{f} must start with the yaml-language-server schema line"
        );
        let value = omnipack_manifest::load::read_yaml_json(&repo().join(&f))
            .unwrap_or_else(|d| panic!("{f}: {d}"));
        let errors: Vec<String> = validator
            .iter_errors(&value)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{f}: {errors:?}");
    }
    // And a broken fixture really is rejected by the committed schema.
    let bad = omnipack_manifest::load::read_yaml_json(
        &repo().join("manifests/errors/unknown-key-top.yaml"),
    )
    .unwrap();
    assert!(!validator.is_valid(&bad));
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

#[test]
fn all_problems_of_one_manifest_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("m.yaml"),
        "omnipack: 1\npackage: { name: x, version: '1', bundle_id: com.x }\ntiers:\n  - { name: a, device_memory: 4GiB, memory_limit: lots }\n  - { name: a, device_memory: 4GiB, memory_limit: 2GiB, colour: red }\ncomponents:\n  - { name: d, role: data, source: { files: [nope.txt] } }\n",
    )
    .unwrap();
    let out = omnipack_in(dir.path(), &["validate", "--format", "json", "m.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    let diags: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let paths: Vec<&str> = diags.iter().filter_map(|d| d["path"].as_str()).collect();
    for want in [
        "tiers[0].memory_limit",
        "tiers[1].colour",
        "tiers[1].name",
        "components[0].source.files[0]",
    ] {
        assert!(paths.contains(&want), "{want} not in {paths:?}");
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
/// declare `int4`, and running it on CPU/GPU is the DESIGN warning (the file shrinks, the
/// memory does not), not an error. A native int4 layout for Core ML stays an error
/// (`manifests/errors/int-format-coreml.yaml`).
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
