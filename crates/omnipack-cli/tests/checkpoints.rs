//! Checkpoints as users have them, through the real binary: a source that is already MLX int4
//! (made by `omnipack quantize`, as the MLX community's checkpoints are), and files written the
//! way `mx.save_safetensors` writes them (`"__metadata__": null`).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use common::{omnipack, omnipack_in, s, stderr, stdout, text};
use omnipack_quant::{Dtype, SafetensorsFile, TensorInfo};

/// 1024 x 1024 parameters: the weight of the issue's repro.
const ROWS: u64 = 1024;
const COLS: u64 = 1024;

/// Writes `l.weight` [1024, 1024] F16 and `norm.weight` [1024] F16, with `metadata` as the
/// header's `__metadata__` (`None`: no key).
fn write_f16(path: &Path, metadata: Option<serde_json::Value>) {
    let mut seed: u32 = 7;
    let mut vals = |n: u64| -> Vec<u8> {
        let v: Vec<f32> = (0..n)
            .map(|_| {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                ((seed >> 8) % 2001) as f32 / 1000.0 - 1.0
            })
            .collect();
        let mut b = vec![0u8; v.len() * 2];
        omnipack_quant::kernels::encode_f32(&v, Dtype::F16, &mut b);
        b
    };
    let w = vals(ROWS * COLS);
    let n = vals(COLS);
    let mut header = serde_json::Map::new();
    if let Some(m) = metadata {
        header.insert("__metadata__".into(), m);
    }
    header.insert(
        "l.weight".into(),
        serde_json::json!({"dtype": "F16", "shape": [ROWS, COLS], "data_offsets": [0, w.len()]}),
    );
    header.insert(
        "norm.weight".into(),
        serde_json::json!({"dtype": "F16", "shape": [COLS], "data_offsets": [w.len(), w.len() + n.len()]}),
    );
    let json = serde_json::to_vec(&header).unwrap();
    let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&json);
    bytes.extend_from_slice(&w);
    bytes.extend_from_slice(&n);
    fs::write(path, bytes).unwrap();
}

/// `f16.safetensors` and `q4.safetensors` (its int4 g64, by `omnipack quantize`) in `dir`.
fn int4_source(dir: &Path) {
    write_f16(&dir.join("f16.safetensors"), None);
    let o = omnipack(&[
        "quantize",
        s(&dir.join("f16.safetensors")),
        "-o",
        s(&dir.join("q4.safetensors")),
        "--format",
        "int4",
        "--group-size",
        "64",
    ]);
    assert!(o.status.success(), "{}", text(&o));
}

/// A manifest packaging `source` as `format` (one tier with room for f16).
fn manifest(dir: &Path, source: &str, format: &str, requantize: bool) -> String {
    let path = dir.join("m.yaml");
    fs::write(
        &path,
        format!(
            r#"omnipack: 1
package: {{ name: ckpt, version: 1.0.0, bundle_id: com.example.ckpt }}
tiers:
  - {{ name: phone, device_memory: 4GiB, memory_limit: 2GiB, components: [dec] }}
components:
  - name: dec
    role: image_decoder
    source: {{ safetensors: {source} }}
    quantization: {{ format: {format}, group_size: 64{} }}
"#,
            if requantize { ", requantize: true" } else { "" }
        ),
    )
    .unwrap();
    "m.yaml".into()
}

/// Tensor name -> (dtype, shape, bytes) of a safetensors file.
fn tensors(path: &Path) -> BTreeMap<String, (Dtype, Vec<u64>, Vec<u8>)> {
    let f = SafetensorsFile::open(path).unwrap();
    f.tensors()
        .map(|t: &TensorInfo| {
            let e = f.entry(&t.name).unwrap();
            (
                t.name.clone(),
                (t.dtype, t.shape.clone(), f.bytes(e).to_vec()),
            )
        })
        .collect()
}

/// The bundle folder of `id` in a build output.
fn bundle(out: &Path, id: &str) -> std::path::PathBuf {
    out.join("asset-packs").join(id).join(id)
}

/// Repro 1 of issue 17, `omnipack quantize`: an int4 file asked for int8 is refused unless
/// `--requantize`; then it is real int8 (codes as `mx.dequantize` expects for 8 bits).
#[test]
fn quantize_refuses_to_requantize_silently() {
    let dir = tempfile::tempdir().unwrap();
    int4_source(dir.path());
    let q4 = dir.path().join("q4.safetensors");
    let q8 = dir.path().join("q8.safetensors");
    let args = [
        "quantize",
        s(&q4),
        "-o",
        s(&q8),
        "--format",
        "int8",
        "--group-size",
        "64",
    ];
    let o = omnipack(&args);
    assert!(!o.status.success(), "{}", text(&o));
    let err = stderr(&o);
    // miette wraps long lines: look at words.
    assert!(
        err.contains("already quantized")
            && err.contains("(int4 g64)")
            && err.contains("int8 g64")
            && err.contains("--requantize"),
        "{err}"
    );
    assert!(!q8.exists());

    let mut with = args.to_vec();
    with.push("--requantize");
    let o = omnipack(&with);
    assert!(o.status.success(), "{}", text(&o));
    let err = stderr(&o);
    assert!(
        err.contains("dequantized and quantized again") && err.contains("SQNR"),
        "{err}"
    );
    let t = tensors(&q8);
    assert_eq!(t["l.weight"].0, Dtype::U32);
    // 8 bits: 4 codes a word; scales and biases of 1024 / 64 groups.
    assert_eq!(t["l.weight"].1, [ROWS, COLS / 4]);
    assert_eq!(t["l.scales"].1, [ROWS, COLS / 64]);
    assert_eq!(t["l.biases"].1, [ROWS, COLS / 64]);

    // The same format passes through byte for byte.
    let same = dir.path().join("same.safetensors");
    let o = omnipack(&[
        "quantize",
        s(&q4),
        "-o",
        s(&same),
        "--format",
        "int4",
        "--group-size",
        "64",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        stderr(&o).contains("passed through byte for byte"),
        "{}",
        text(&o)
    );
    assert_eq!(tensors(&same), tensors(&q4));
}

/// Repro 2: the int4 file's parameters are 1,048,576 weights (+ the norm), not its U32 words,
/// in `plan` and in `inspect`.
#[test]
fn an_int4_source_counts_its_true_parameters() {
    let dir = tempfile::tempdir().unwrap();
    int4_source(dir.path());
    let m = manifest(dir.path(), "q4.safetensors", "int4", false);
    let o = omnipack_in(dir.path(), &["plan", &m, "--format", "json"]);
    assert!(o.status.success(), "{}", text(&o));
    let plan: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let want = ROWS * COLS + COLS;
    assert_eq!(plan["components"][0]["parameters"], want);
    assert_eq!(plan["components"][0]["source_format"], "int4 g64");
    assert_eq!(plan["bundles"][0]["parameters"], want);
    assert_eq!(plan["bundles"][0]["source_treatment"], "pass_through");
    // omnipack does not quantize tensors it passes through: no method is recorded.
    assert_eq!(plan["bundles"][0]["quantization"]["format"], "int4");
    assert!(
        plan["bundles"][0]["quantization"].get("method").is_none(),
        "{}",
        plan["bundles"][0]["quantization"]
    );
    let o = omnipack_in(dir.path(), &["plan", &m]);
    let human = stdout(&o);
    assert!(
        human.contains(&format!("{want} parameters, source quantized int4 g64"))
            && human.contains(
                "dec-int4-g64: the source's format: its tensors pass through byte for byte"
            ),
        "{human}"
    );
    let o = omnipack(&["inspect", s(&dir.path().join("q4.safetensors"))]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        stdout(&o).contains(&format!("parameters: {want} (int4 g64 weights")),
        "{}",
        stdout(&o)
    );
}

/// An int4 source packaged as int4 ships the source's tensors byte for byte, and its config
/// agrees; as int8 without permission it is a located error; with permission, real int8 with
/// its SQNR against the dequantized source reported; as f16, the dequantized weights.
#[test]
fn build_passes_through_refuses_or_requantizes() {
    let dir = tempfile::tempdir().unwrap();
    int4_source(dir.path());
    let q4 = tensors(&dir.path().join("q4.safetensors"));

    let m = manifest(dir.path(), "q4.safetensors", "int4", false);
    let o = omnipack_in(dir.path(), &["build", &m, "--out", "out"]);
    assert!(o.status.success(), "{}", text(&o));
    let b = bundle(&dir.path().join("out"), "dec-int4-g64");
    assert_eq!(tensors(&b.join("weights.safetensors")), q4);
    let config: serde_json::Value =
        serde_json::from_slice(&fs::read(b.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["quantization"]["bits"], 4);
    let o = omnipack_in(dir.path(), &["verify", "out"]);
    assert!(o.status.success(), "{}", text(&o));

    let m = manifest(dir.path(), "q4.safetensors", "int8", false);
    let o = omnipack_in(dir.path(), &["build", &m, "--out", "out8"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = stderr(&o);
    assert!(
        err.contains("already quantized (int4 g64)")
            && err.contains("m.yaml:9:")
            && err.contains("quantization.requantize: true")
            && err.contains("request `int4` with `group_size: 64`"),
        "{err}"
    );
    assert!(!dir.path().join("out8").exists());

    let m = manifest(dir.path(), "q4.safetensors", "int8", true);
    let o = omnipack_in(dir.path(), &["build", &m, "--out", "out8"]);
    assert!(o.status.success(), "{}", text(&o));
    let err = stderr(&o);
    assert!(
        err.contains("error compounds") && err.contains("dB against the dequantized source"),
        "{err}"
    );
    let b = bundle(&dir.path().join("out8"), "dec-int8-g64");
    let t = tensors(&b.join("weights.safetensors"));
    let config: serde_json::Value =
        serde_json::from_slice(&fs::read(b.join("config.json")).unwrap()).unwrap();
    let (bits, group) = (
        config["quantization"]["bits"].as_u64().unwrap(),
        config["quantization"]["group_size"].as_u64().unwrap(),
    );
    assert_eq!((bits, group), (8, 64));
    // What mx.dequantize checks: the codes' width in elements is the scales' groups times the
    // group size, for the config's bits.
    let (codes, scales, biases) = (&t["l.weight"].1, &t["l.scales"].1, &t["l.biases"].1);
    assert_eq!(codes[1] * 32 / bits, scales[1] * group);
    assert_eq!(scales, biases);
    assert_eq!(codes[1] * 32 / bits, COLS);
    let o = omnipack_in(dir.path(), &["verify", "out8"]);
    assert!(o.status.success(), "{}", text(&o));

    let m = manifest(dir.path(), "q4.safetensors", "f16", false);
    let o = omnipack_in(dir.path(), &["build", &m, "--out", "out16"]);
    assert!(o.status.success(), "{}", text(&o));
    let t = tensors(&bundle(&dir.path().join("out16"), "dec-f16").join("weights.safetensors"));
    assert_eq!(t["l.weight"].0, Dtype::F16);
    assert_eq!(t["l.weight"].1, [ROWS, COLS]);
    assert!(!t.contains_key("l.scales"));
    // Exactly mx.dequantize of the source's codes, scales and biases.
    let words: Vec<u32> = q4["l.weight"]
        .2
        .chunks(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let f32s = |b: &[u8]| {
        let mut v = vec![0f32; b.len() / 2];
        omnipack_quant::kernels::decode_f32(b, Dtype::F16, &mut v);
        v
    };
    let mut want = vec![0f32; (ROWS * COLS) as usize];
    omnipack_quant::quality::mlx_affine_dequantize(
        &words,
        &f32s(&q4["l.scales"].2),
        &f32s(&q4["l.biases"].2),
        64,
        4,
        Dtype::F16,
        &mut want,
    );
    assert_eq!(f32s(&t["l.weight"].2), want);
}

/// Repro 3: a file as `mx.save_safetensors` writes it without metadata
/// (`"__metadata__": null`) is inspected, planned and built.
#[test]
fn null_metadata_plans_and_builds() {
    let dir = tempfile::tempdir().unwrap();
    write_f16(
        &dir.path().join("mlx.safetensors"),
        Some(serde_json::Value::Null),
    );
    let o = omnipack(&["inspect", s(&dir.path().join("mlx.safetensors"))]);
    assert!(o.status.success(), "{}", text(&o));
    let m = manifest(dir.path(), "mlx.safetensors", "int4", false);
    let o = omnipack_in(dir.path(), &["plan", &m]);
    assert!(o.status.success(), "{}", text(&o));
    let o = omnipack_in(dir.path(), &["build", &m, "--out", "out"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = omnipack_in(dir.path(), &["verify", "out"]);
    assert!(o.status.success(), "{}", text(&o));
}
