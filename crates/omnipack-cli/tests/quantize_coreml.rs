//! `omnipack quantize` of a Core ML `.mlpackage`, running the real binary against the
//! coremltools 9.0 fixtures of the omnipack-coreml crate (`crates/omnipack-coreml/tests/data`,
//! made by `scripts/make-coreml-fixtures.py`).

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{omnipack, repo, s, stderr, stdout};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn data() -> PathBuf {
    repo().join("crates/omnipack-coreml/tests/data")
}

fn example() -> PathBuf {
    repo().join("examples/omnicoder-tiny/omnicoder_decode_step.mlpackage")
}

fn source_path(name: &str) -> PathBuf {
    if name == "example" {
        example()
    } else {
        data().join(format!("{name}.mlpackage"))
    }
}

fn weight_bin(pkg: &Path) -> PathBuf {
    pkg.join("Data/com.apple.CoreML/weights/weight.bin")
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The omnipack arguments of a recorded compression (`format`, `block_size`, `keep`).
fn quantize_args(src: &Path, out: &Path, o: &Value) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "quantize".into(),
        s(src).into(),
        "-o".into(),
        s(out).into(),
        "--format".into(),
        o["format"].as_str().unwrap().into(),
    ];
    if let Some(b) = o["block_size"].as_u64() {
        args.extend(["--group-size".into(), b.to_string()]);
    }
    for g in o["keep"].as_array().into_iter().flatten() {
        args.extend(["--keep".into(), g.as_str().unwrap().into()]);
    }
    args
}

fn run(args: &[String]) -> std::process::Output {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    omnipack(&refs)
}

#[test]
fn every_recorded_coremltools_compression_through_the_binary() {
    let recorded: Value =
        serde_json::from_slice(&fs::read(data().join("fixtures.json")).unwrap()).unwrap();
    let compressions = recorded["compressions"].as_object().unwrap();
    assert!(compressions.len() >= 15, "{}", compressions.len());
    let dir = tempfile::tempdir().unwrap();
    for (name, r) in compressions {
        let src = source_path(r["source"].as_str().unwrap());
        let out = dir.path().join(format!("{name}.mlpackage"));
        let o = run(&quantize_args(&src, &out, &r["omnipack"]));
        assert_eq!(o.status.code(), Some(0), "{name}: {}", stderr(&o));
        let bin = fs::read(weight_bin(&out)).unwrap();
        assert_eq!(
            bin.len() as u64,
            r["weight_bin"]["bytes"].as_u64().unwrap(),
            "{name}"
        );
        assert_eq!(
            sha256_hex(&bin),
            r["weight_bin"]["sha256"].as_str().unwrap(),
            "{name}: weight.bin differs from coremltools'"
        );
        let err = stderr(&o);
        let ops = r["constexpr_ops"].as_array().unwrap();
        assert!(
            err.contains(&format!("{} of ", ops.len())),
            "{name}: {} weights compressed by coremltools: {err}",
            ops.len()
        );
        if let Some(op) = ops.first() {
            assert!(err.contains(op["type"].as_str().unwrap()), "{name}: {err}");
        }
        assert!(
            err.contains(&format!("weight.bin {} bytes", bin.len())),
            "{name}: {err}"
        );
    }
}

#[test]
fn committed_coremltools_packages_are_reproduced_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    for (source, compressed, format, block) in [
        ("decode_step_ios17", "int8_per_channel_ios17", "int8", None),
        ("decode_step_ios18", "int8_per_channel_ios18", "int8", None),
        (
            "decode_step_ios18",
            "int4_block32_ios18",
            "int4",
            Some("32"),
        ),
        (
            "decode_step_ios18",
            "int4_block64_ios18",
            "int4",
            Some("64"),
        ),
    ] {
        let out = dir.path().join(format!("{compressed}.mlpackage"));
        let src = data().join(format!("{source}.mlpackage"));
        let mut args = vec!["quantize", s(&src), "-o", s(&out), "--format", format];
        if let Some(b) = block {
            args.extend(["--group-size", b]);
        }
        let o = omnipack(&args);
        assert_eq!(o.status.code(), Some(0), "{compressed}: {}", stderr(&o));
        let theirs = fs::read(weight_bin(&data().join(format!("{compressed}.mlpackage")))).unwrap();
        let ours = fs::read(weight_bin(&out)).unwrap();
        assert!(ours == theirs, "{compressed}: weight.bin differs");
        let err = stderr(&o);
        assert!(
            err.contains("18 of ") && err.contains("weights compressed"),
            "{compressed}: {err}"
        );
    }
}

#[test]
fn the_same_input_gives_the_same_package() {
    let dir = tempfile::tempdir().unwrap();
    let src = data().join("decode_step_ios18.mlpackage");
    let mut trees = Vec::new();
    for run in ["a", "b"] {
        let out = dir.path().join(format!("{run}.mlpackage"));
        let o = omnipack(&[
            "quantize",
            s(&src),
            "-o",
            s(&out),
            "--format",
            "int4",
            "--group-size",
            "32",
        ]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        trees.push(common::tree(&out));
    }
    assert!(trees[0].contains_key("Manifest.json"));
    assert!(trees[0].contains_key("Data/com.apple.CoreML/model.mlmodel"));
    assert_eq!(trees[0], trees[1]);
}

#[test]
fn report_lists_every_weight_compressed_or_kept() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("zoo.mlpackage");
    let src = data().join("compression_zoo_ios18.mlpackage");
    let o = omnipack(&[
        "quantize",
        s(&src),
        "-o",
        s(&out),
        "--format",
        "int4",
        "--group-size",
        "32",
        "--keep",
        "weight_with_inf*",
        "--report",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let report = stdout(&o);
    assert!(
        report.contains("lin96_weight_0_to_fp16")
            && report.contains("constexpr_blockwise_shift_scale scale [96, 2]"),
        "{report}"
    );
    assert!(
        report.contains("kept: its name matches keep glob `weight_with_inf*`"),
        "{report}"
    );
    assert!(
        report.contains("kept: it has 2048 elements, not more than 2048"),
        "{report}"
    );
}

#[test]
fn int4_on_an_ios17_model_names_the_target() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.mlpackage");
    let src = data().join("decode_step_ios17.mlpackage");
    let o = omnipack(&["quantize", s(&src), "-o", s(&out), "--format", "int4"]);
    assert_eq!(o.status.code(), Some(1));
    // miette wraps long lines (a long temporary path moves the breaks): read it as one line.
    let err = stderr(&o)
        .split_whitespace()
        .filter(|w| *w != "│")
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        err.contains("decode_step_ios17.mlpackage")
            && err.contains("iOS 18")
            && err.contains("iOS 17"),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn an_existing_output_is_not_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.mlpackage");
    fs::create_dir(&out).unwrap();
    fs::write(out.join("keep.txt"), b"mine").unwrap();
    let src = data().join("decode_step_ios18.mlpackage");
    let o = omnipack(&["quantize", s(&src), "-o", s(&out), "--format", "int8"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("already exists"), "{}", stderr(&o));
    assert_eq!(fs::read(out.join("keep.txt")).unwrap(), b"mine");
}

#[test]
fn broken_packages_are_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.mlpackage");
    fs::create_dir(&broken).unwrap();
    fs::write(broken.join("Manifest.json"), b"{ not json").unwrap();
    let out = dir.path().join("o.mlpackage");
    let o = omnipack(&["quantize", s(&broken), "-o", s(&out), "--format", "int8"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("Manifest.json") && err.contains("manifest"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(!out.exists());
}

#[test]
fn options_that_do_not_apply_to_core_ml_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.mlpackage");
    let src = data().join("decode_step_ios18.mlpackage");
    for extra in [
        vec!["--format", "nf4"],
        vec!["--format", "int4", "--method", "mse"],
        vec!["--format", "int8", "--keep-dtype", "f32"],
        vec!["--format", "int4", "--group-size", "0"],
    ] {
        let mut args = vec!["quantize", s(&src), "-o", s(&out)];
        args.extend(extra.iter().copied());
        let o = omnipack(&args);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {}", stderr(&o));
        assert!(!out.exists());
    }
}
