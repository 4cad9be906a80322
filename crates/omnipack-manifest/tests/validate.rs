//! Validation through the library: every broken manifest under `manifests/errors/` fails at the
//! right place with a useful help line (the rendered diagnostics snapshotted), every problem of
//! a manifest is reported, and the committed manifests match the committed schema. What needs
//! the binary (exit codes, `--format json`, several files, hostile inputs) is tested in
//! `crates/omnipack-cli/tests/validate.rs`.

use std::path::{Path, PathBuf};
use std::sync::Once;

use omnipack_manifest::{Diagnostics, load, render};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every test here runs from the repository root, so that the file names in diagnostics (and
/// snapshots) are the paths a user types there, such as `manifests/errors/bad-size.yaml`.
fn from_repo_root() {
    static CHDIR: Once = Once::new();
    CHDIR.call_once(|| std::env::set_current_dir(repo()).expect("the repository exists"));
}

/// The diagnostics of one manifest as `omnipack validate` prints them on stderr: rendered, then
/// the number of errors.
fn as_printed(diags: &Diagnostics) -> String {
    format!(
        "{}{} found\n",
        render(&diags.0),
        omnipack_manifest::counted(diags.error_count(), "error")
    )
}

/// (fixture, file the error is in, line, column, manifest path, text the help must contain)
const FIXTURES: &[(&str, &str, u64, u64, &str, &str)] = &[
    (
        "method-without-affine",
        "method-without-affine.yaml",
        15,
        15,
        "components[0].quantization.method",
        "remove `method`",
    ),
    (
        "coreml-missing-output",
        "coreml-missing-output.yaml",
        14,
        26,
        "components[0].source.mlpackage",
        "`decode_step` renames them",
    ),
    (
        "coreml-kv-heads",
        "coreml-kv-heads.yaml",
        15,
        42,
        "components[0].architecture.kv_heads",
        "leave `architecture` out",
    ),
    (
        "coreml-io-dtype",
        "coreml-io-dtype.yaml",
        16,
        27,
        "components[0].kv_cache.io_dtype",
        "set `kv_cache.io_dtype`",
    ),
    (
        "coreml-sequence-bound",
        "coreml-sequence-bound.yaml",
        15,
        18,
        "components[0].max_seq_len",
        "lower `max_seq_len`",
    ),
    (
        "coreml-int64-input-ids",
        "coreml-int64-input-ids.yaml",
        14,
        26,
        "components[0].source.mlpackage",
        "int32 array of shape [1, 1]",
    ),
    (
        "coreml-layers",
        "coreml-layers.yaml",
        15,
        29,
        "components[0].architecture.layers",
        "leave `architecture` out",
    ),
    (
        "coreml-int4-ios17",
        "coreml-int4-ios17.yaml",
        16,
        35,
        "components[0].quantization.format[1]",
        "minimum_deployment_target=ct.target.iOS18",
    ),
    (
        "coreml-source-runtime",
        "coreml-source-runtime.yaml",
        12,
        15,
        "components[0].source.mlpackage",
        "add `runtime: coreml`",
    ),
    (
        "coreml-missing-model",
        "coreml-missing-model.yaml",
        13,
        26,
        "components[0].source.mlpackage",
        "did you mean",
    ),
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
        "bad-asset-pack-prefix",
        "bad-asset-pack-prefix.yaml",
        8,
        22,
        "package.asset_pack_prefix",
        "refuses `.`",
    ),
    (
        "same-asset-pack-id",
        "same-asset-pack-id.yaml",
        13,
        11,
        "components[1].name",
        "turn `_` into `-`",
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
        "name-too-long",
        "name-too-long.yaml",
        10,
        11,
        "components[0].name",
        "at most 64 characters",
    ),
    (
        "output-not-normal",
        "output-not-normal.yaml",
        20,
        19,
        "components[1].source.command.outputs[0]",
        "`{out}`",
    ),
    (
        "output-listed-twice",
        "output-listed-twice.yaml",
        20,
        24,
        "components[1].source.command.outputs[1]",
        "list each output once",
    ),
    (
        "extends-not-a-manifest",
        "extends-not-a-manifest.yaml",
        4,
        10,
        "extends",
        "its text is not shown",
    ),
    (
        "requantize-without-permission",
        "requantize-without-permission.yaml",
        13,
        36,
        "components[0].quantization.format[1]",
        "`quantization.requantize: true`",
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
    from_repo_root();
    for &(name, file, line, column, path, help) in FIXTURES {
        let rel = format!("manifests/errors/{name}.yaml");
        let diags = match load(Path::new(&rel)) {
            Ok(_) => panic!("{rel} loads"),
            Err(d) => d,
        };
        let rendered = as_printed(&diags);
        insta::assert_snapshot!(name, rendered);

        let first = diags
            .iter()
            .find(|d| d.is_error())
            .unwrap_or_else(|| panic!("{rel}: no error in {rendered}"));
        assert_eq!(first.file, format!("manifests/errors/{file}"), "{rel}");
        assert_eq!(first.line.map(|l| l as u64), Some(line), "{rel}: line");
        assert_eq!(
            first.column.map(|c| c as u64),
            Some(column),
            "{rel}: column"
        );
        assert_eq!(first.path, path, "{rel}: path");
        let h = first.help.as_deref().unwrap_or("");
        assert!(h.contains(help), "{rel}: help `{h}` lacks `{help}`");
        assert!(!first.message.is_empty());
        if name.starts_with("extends-cycle") {
            let m = &first.message;
            assert!(
                m.contains("cycle")
                    && m.contains("extends-cycle-a.yaml")
                    && m.contains("extends-cycle-b.yaml"),
                "{m}"
            );
        }
    }
}

/// The YAML files under `manifests/` (except `manifests/errors/`) and `examples/`, relative to
/// the repository root.
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
fn committed_manifests_match_the_committed_schema() {
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("schemas/omnipack-manifest.schema.json")).unwrap(),
    )
    .unwrap();
    let validator = jsonschema::draft7::new(&schema).expect("the committed schema compiles");
    let files = committed_manifests();
    assert!(
        files.iter().any(|f| f == "manifests/release.yaml"),
        "{files:?}"
    );
    for f in files {
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
fn all_problems_of_one_manifest_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.yaml");
    std::fs::write(
        &path,
        "omnipack: 1\npackage: { name: x, version: '1', bundle_id: com.x }\ntiers:\n  - { name: a, device_memory: 4GiB, memory_limit: lots }\n  - { name: a, device_memory: 4GiB, memory_limit: 2GiB, colour: red }\ncomponents:\n  - { name: d, role: data, source: { files: [nope.txt] } }\n",
    )
    .unwrap();
    let diags = load(&path).expect_err("the manifest is broken");
    let paths: Vec<&str> = diags.iter().map(|d| d.path.as_str()).collect();
    for want in [
        "tiers[0].memory_limit",
        "tiers[1].colour",
        "tiers[1].name",
        "components[0].source.files[0]",
    ] {
        assert!(paths.contains(&want), "{want} not in {paths:?}");
    }
}
