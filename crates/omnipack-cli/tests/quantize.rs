//! `omnipack quantize` and `omnipack inspect`, running the real binary.

mod common;

use std::path::{Path, PathBuf};

use common::{omnipack, omnipack_in, stderr, stdout};

/// Writes a small F32 safetensors file: a 2-D weight, its bias, a norm, and an embedding.
fn write_checkpoint(path: &Path, nan_at: Option<usize>) {
    let tensors: Vec<(&str, Vec<u64>)> = vec![
        ("embed.weight", vec![16, 64]),
        ("layers.0.proj.bias", vec![32]),
        ("layers.0.proj.weight", vec![32, 128]),
        ("norm.weight", vec![64]),
    ];
    let mut header = serde_json::Map::new();
    let mut data: Vec<u8> = Vec::new();
    let mut seed: u32 = 12345;
    for (name, shape) in &tensors {
        let n: u64 = shape.iter().product();
        let begin = data.len();
        for i in 0..n as usize {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let mut v = ((seed >> 8) % 2001) as f32 / 1000.0 - 1.0;
            if *name == "layers.0.proj.weight" && Some(i) == nan_at {
                v = f32::NAN;
            }
            data.extend_from_slice(&(v * 0.05).to_le_bytes());
        }
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [begin, data.len()]}),
        );
    }
    let json = serde_json::to_vec(&header).unwrap();
    let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&json);
    bytes.extend_from_slice(&data);
    std::fs::write(path, bytes).unwrap();
}

fn setup() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("model.safetensors");
    write_checkpoint(&input, None);
    (dir, input)
}

#[test]
fn quantize_int4_then_inspect() {
    let (dir, input) = setup();
    let out = dir.path().join("q4.safetensors");
    let o = omnipack(&[
        "quantize",
        input.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--format",
        "int4",
        "--group-size",
        "64",
        "--keep",
        "embed*",
        "--keep-dtype",
        "f16",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("wrote"), "{}", stderr(&o));
    let i = omnipack(&["inspect", out.to_str().unwrap()]);
    assert!(i.status.success(), "{}", stderr(&i));
    insta::assert_snapshot!("inspect_int4", stdout(&i));
}

#[test]
fn inspect_reads_config_next_to_the_file() {
    let (dir, input) = setup();
    let out = dir.path().join("q8.safetensors");
    let o = omnipack(&[
        "quantize",
        input.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--format",
        "int8",
        "--group-size",
        "32",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"model_type": "llama", "quantization": {"group_size": 32, "bits": 8, "mode": "affine"}}"#,
    )
    .unwrap();
    let i = omnipack(&["inspect", out.to_str().unwrap()]);
    let text = stdout(&i);
    assert!(
        text.contains("layout: mlx affine int8, group size 32: 2 tensors (from config.json)"),
        "{text}"
    );
    assert!(text.contains("model_type: \"llama\""), "{text}");
}

#[test]
fn quantize_nf4_report() {
    let (dir, input) = setup();
    let out = dir.path().join("nf4.safetensors");
    let o = omnipack(&[
        "quantize",
        input.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--format",
        "nf4",
        "--report",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains("sqnr_db")
            && text.contains("layers.0.proj.weight")
            && text.contains("overall"),
        "{text}"
    );
    let i = omnipack(&["inspect", out.to_str().unwrap()]);
    assert!(
        stdout(&i).contains("layout: bitsandbytes nf4 blocksize 64: 2 tensors"),
        "{}",
        stdout(&i)
    );
}

#[test]
fn bad_input_exits_1_naming_the_cause() {
    let (dir, _) = setup();
    let out = dir.path().join("o.safetensors");
    let missing = dir.path().join("missing.safetensors");
    let o = omnipack(&[
        "quantize",
        missing.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--format",
        "int4",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("missing.safetensors"), "{}", stderr(&o));

    let nan = dir.path().join("nan.safetensors");
    write_checkpoint(&nan, Some(130));
    let o = omnipack(&[
        "quantize",
        nan.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--format",
        "int4",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.contains("layers.0.proj.weight") && e.contains("[1, 2]") && e.contains("nan.safetensors"),
        "{e}"
    );
    assert!(!e.contains("panicked"), "{e}");
    assert!(!out.exists());

    let cut = dir.path().join("cut.safetensors");
    let full = std::fs::read(dir.path().join("model.safetensors")).unwrap();
    std::fs::write(&cut, &full[..full.len() / 2]).unwrap();
    for cmd in [
        vec!["inspect", cut.to_str().unwrap()],
        vec![
            "quantize",
            cut.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--format",
            "nf4",
        ],
    ] {
        let o = omnipack(&cmd);
        assert_eq!(o.status.code(), Some(1));
        assert!(
            stderr(&o).contains("cut.safetensors") && stderr(&o).contains("truncated"),
            "{}",
            stderr(&o)
        );
    }
}

#[test]
fn usage_errors_exit_2() {
    let (dir, input) = setup();
    let out = dir.path().join("o.safetensors");
    for extra in [["--format", "int5"], ["--group-size", "48"]] {
        let mut args = vec![
            "quantize",
            input.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ];
        if extra[0] != "--format" {
            args.extend(["--format", "int4"]);
        }
        args.extend(extra);
        let o = omnipack(&args);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    }
    let o = omnipack(&["quantize", input.to_str().unwrap(), "--format", "int4"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn rendered_errors() {
    let (dir, input) = setup();
    let full = std::fs::read(&input).unwrap();
    std::fs::write(dir.path().join("cut.safetensors"), &full[..full.len() - 64]).unwrap();
    let mut lying = full.clone();
    // A hostile length prefix: 2^50 bytes of header.
    lying[..8].copy_from_slice(&(1u64 << 50).to_le_bytes());
    std::fs::write(dir.path().join("huge.safetensors"), &lying).unwrap();
    let nan = dir.path().join("nan.safetensors");
    write_checkpoint(&nan, Some(7));
    let run = |args: &[&str]| {
        let o = omnipack_in(dir.path(), args);
        assert_eq!(o.status.code(), Some(1));
        stderr(&o)
    };
    insta::assert_snapshot!("error_truncated", run(&["inspect", "cut.safetensors"]));
    insta::assert_snapshot!("error_huge_header", run(&["inspect", "huge.safetensors"]));
    insta::assert_snapshot!(
        "error_nan",
        run(&[
            "quantize",
            "nan.safetensors",
            "-o",
            "o.safetensors",
            "--format",
            "int4"
        ])
    );
}

/// The overall SQNR (dB) from `--report`'s `overall` line.
fn overall_sqnr(report: &str) -> f64 {
    let line = report
        .lines()
        .find(|l| l.starts_with("overall"))
        .unwrap_or_else(|| panic!("no overall line in:\n{report}"));
    let cols: Vec<&str> = line.split_whitespace().collect();
    cols[cols.len() - 2].parse().unwrap()
}

#[test]
fn quantize_mse_same_layout_better_quality() {
    let (dir, input) = setup();
    let mut sqnr = Vec::new();
    let mut sizes = Vec::new();
    for method in ["rtn", "mse"] {
        let out = dir.path().join(format!("{method}.safetensors"));
        let o = omnipack(&[
            "quantize",
            input.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--format",
            "int3",
            "--method",
            method,
            "--report",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let text = stdout(&o);
        assert!(
            text.contains("rel_rms") && text.contains("layers.0.proj.weight"),
            "{text}"
        );
        assert!(
            stderr(&o).contains(&format!("quality ({method}): SQNR")),
            "{}",
            stderr(&o)
        );
        sqnr.push(overall_sqnr(&text));
        sizes.push(std::fs::metadata(&out).unwrap().len());
        let i = omnipack(&["inspect", out.to_str().unwrap()]);
        assert!(
            stdout(&i).contains("layout: mlx affine int3, group size 64"),
            "{}",
            stdout(&i)
        );
    }
    assert_eq!(sizes[0], sizes[1]);
    assert!(sqnr[1] > sqnr[0], "rtn {} dB, mse {} dB", sqnr[0], sqnr[1]);
}

#[test]
fn mse_on_other_formats_is_noted_and_unknown_methods_are_usage_errors() {
    let (dir, input) = setup();
    let out = dir.path().join("o.safetensors");
    let args = |format: &'static str, method: &'static str| {
        vec![
            "quantize".to_string(),
            input.to_str().unwrap().to_string(),
            "-o".into(),
            out.to_str().unwrap().to_string(),
            "--format".into(),
            format.into(),
            "--method".into(),
            method.into(),
        ]
    };
    let run = |a: Vec<String>| omnipack(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let o = run(args("nf4", "mse"));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("note: --method mse applies to the MLX affine formats int2..int8; nf4 is written the same as with rtn"),
        "{}",
        stderr(&o)
    );
    let mse = std::fs::read(&out).unwrap();
    assert!(run(args("nf4", "rtn")).status.success());
    assert_eq!(std::fs::read(&out).unwrap(), mse);
    let o = run(args("int4", "gptq"));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}
