//! End-to-end tests of the reader and the streaming writer.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use omnipack_quant::kernels::{self, Bnb4};
use omnipack_quant::{
    Dtype, OutputKind, QuantError, QuantSpec, SafetensorsFile, SelectedTensor, WeightFormat,
    file_bytes, plan_outputs, quantize_file, quantize_to_file, read_header, read_shard_set,
};
use sha2::Digest;

/// Writes a safetensors file by hand: tensors in the given order, `F32`/`F16` data.
fn write_st(path: &Path, tensors: &[(&str, Dtype, Vec<u64>, Vec<f32>)]) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, dt, shape, vals) in tensors {
        let begin = data.len();
        let mut bytes = vec![0u8; vals.len() * dt.size_bytes() as usize];
        kernels::encode_f32(vals, *dt, &mut bytes);
        data.extend_from_slice(&bytes);
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": dt.safetensors_name(), "shape": shape, "data_offsets": [begin, data.len()]}),
        );
    }
    write_raw(path, serde_json::to_vec(&header).unwrap(), &data);
}

fn write_raw(path: &Path, json: Vec<u8>, data: &[u8]) {
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&json);
    out.extend_from_slice(data);
    std::fs::write(path, out).unwrap();
}

fn values(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).max(1);
    (0..n)
        .map(|i| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            let v = (s % 20001) as f32 / 10000.0 - 1.0;
            if i % 97 == 0 { v * 8.0 } else { v * 0.1 }
        })
        .collect()
}

fn sample(dir: &Path, dt: Dtype) -> std::path::PathBuf {
    let p = dir.join("in.safetensors");
    write_st(
        &p,
        &[
            ("model.norm.weight", dt, vec![128], values(128, 1)),
            (
                "model.layers.0.mlp.weight",
                dt,
                vec![64, 256],
                values(64 * 256, 2),
            ),
            ("model.layers.0.mlp.bias", dt, vec![64], values(64, 3)),
            ("lm_head.weight", dt, vec![32, 128], values(32 * 128, 4)),
            ("odd.weight", dt, vec![4, 100], values(400, 5)),
        ],
    );
    p
}

#[test]
fn int4_roundtrip_matches_plan_and_kernels() {
    let dir = tempfile::tempdir().unwrap();
    let input = sample(dir.path(), Dtype::F16);
    let out = dir.path().join("out.safetensors");
    let mut spec = QuantSpec::new(WeightFormat::Affine { bits: 4 }, 64);
    spec.keep = vec!["lm_head*".into()];
    let outcome = quantize_file(&input, &out, &spec).unwrap();

    let bytes = std::fs::read(&out).unwrap();
    assert_eq!(bytes.len() as u64, outcome.file_bytes);
    let digest = sha2::Sha256::digest(&bytes);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, outcome.sha256);
    assert_eq!(omnipack_quant::sha256_file(&out).unwrap(), outcome.sha256);

    let inputs = read_header(&input).unwrap();
    let mut sorted = inputs.clone();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let plan = plan_outputs(&sorted, &spec).unwrap();
    assert_eq!(
        file_bytes(&plan, &WeightFormat::Affine { bits: 4 }.metadata()),
        outcome.file_bytes
    );
    assert_eq!(outcome.parameters, 128 + 64 * 256 + 64 + 32 * 128 + 400);

    // The reference safetensors implementation accepts the file.
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(
        meta.metadata().as_ref().unwrap().get("format").unwrap(),
        "mlx"
    );
    let w = st.tensor("model.layers.0.mlp.weight").unwrap();
    assert_eq!(w.dtype(), safetensors::Dtype::U32);
    assert_eq!(w.shape(), &[64, 32]);
    let s = st.tensor("model.layers.0.mlp.scales").unwrap();
    assert_eq!(s.dtype(), safetensors::Dtype::F16);
    assert_eq!(s.shape(), &[64, 4]);
    assert_eq!(
        st.tensor("lm_head.weight").unwrap().dtype(),
        safetensors::Dtype::F16
    );
    assert_eq!(st.tensor("odd.weight").unwrap().shape(), &[4, 100]);
    assert!(st.tensor("lm_head.scales").is_err());

    // Written codes equal the kernel's codes on the same input.
    let f = SafetensorsFile::open(&input).unwrap();
    let e = f.entry("model.layers.0.mlp.weight").unwrap();
    let mut wf = vec![0f32; 64 * 256];
    kernels::decode_f32(f.bytes(e), Dtype::F16, &mut wf);
    let mut codes = vec![0u32; 64 * 32];
    let (mut sc, mut bi) = (vec![0f32; 256], vec![0f32; 256]);
    kernels::affine_quantize(
        &wf,
        256,
        64,
        4,
        Dtype::F16,
        &mut codes,
        &mut sc,
        &mut bi,
        None,
    )
    .unwrap();
    let written: Vec<u32> = w
        .data()
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(written, codes);
    let report = outcome
        .tensors
        .iter()
        .find(|r| r.name == "model.layers.0.mlp.weight")
        .unwrap();
    assert_eq!(report.kind, OutputKind::AffineCodes);
    assert!(report.stats.sqnr_db() > 10.0 && report.stats.rmse() > 0.0);

    // Same inputs, byte-identical output.
    let out2 = dir.path().join("out2.safetensors");
    let again = quantize_file(&input, &out2, &spec).unwrap();
    assert_eq!(again.sha256, outcome.sha256);
    assert_eq!(again.tensors, outcome.tensors);
    assert_eq!(again.quality, outcome.quality);
    // No temporary files left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
}

#[test]
fn nf4_layout_as_transformers_saves_it() {
    let dir = tempfile::tempdir().unwrap();
    let input = sample(dir.path(), Dtype::BF16);
    let out = dir.path().join("nf4.safetensors");
    let spec = QuantSpec::new(WeightFormat::Nf4, 64);
    quantize_file(&input, &out, &spec).unwrap();
    let bytes = std::fs::read(&out).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let p = st.tensor("model.layers.0.mlp.weight").unwrap();
    assert_eq!(
        (p.dtype(), p.shape()),
        (safetensors::Dtype::U8, &[64 * 128, 1][..])
    );
    let am = st.tensor("model.layers.0.mlp.weight.absmax").unwrap();
    assert_eq!(am.shape(), &[256]);
    let qm = st.tensor("model.layers.0.mlp.weight.quant_map").unwrap();
    assert_eq!(qm.shape(), &[16]);
    let qs = st
        .tensor("model.layers.0.mlp.weight.quant_state.bitsandbytes__nf4")
        .unwrap();
    assert_eq!(
        std::str::from_utf8(qs.data()).unwrap(),
        r#"{"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [64, 256]}"#
    );
    // Dequantized values are within half the largest NF4 gap of the source.
    let f = SafetensorsFile::open(&input).unwrap();
    let e = f.entry("model.layers.0.mlp.weight").unwrap();
    let mut w = vec![0f32; 64 * 256];
    kernels::decode_f32(f.bytes(e), Dtype::BF16, &mut w);
    let amv: Vec<f32> = am
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let mut r = vec![0f32; w.len()];
    kernels::bnb4_dequantize(p.data(), &amv, 64, Bnb4::Nf4, &mut r);
    for (i, (a, b)) in w.iter().zip(&r).enumerate() {
        assert!(
            (a - b).abs() <= amv[i / 64] * 0.161 + 1e-6,
            "{i}: {a} vs {b}"
        );
    }
}

#[test]
fn float_cast_and_keep_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let input = sample(dir.path(), Dtype::F32);
    let out = dir.path().join("f16.safetensors");
    let mut spec = QuantSpec::new(WeightFormat::Bf16, 64);
    spec.keep = vec!["*norm*".into()];
    let o = quantize_file(&input, &out, &spec).unwrap();
    let bytes = std::fs::read(&out).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(
        st.tensor("model.norm.weight").unwrap().dtype(),
        safetensors::Dtype::F32
    );
    assert_eq!(
        st.tensor("lm_head.weight").unwrap().dtype(),
        safetensors::Dtype::BF16
    );
    assert!(o.overall.max_abs_err > 0.0 && o.overall.sqnr_db() > 40.0);
}

#[test]
fn prefix_selection_across_files() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.safetensors");
    let b = dir.path().join("b.safetensors");
    write_st(
        &a,
        &[
            ("text.l.weight", Dtype::F32, vec![2, 64], values(128, 9)),
            ("image.x.weight", Dtype::F32, vec![2, 64], values(128, 8)),
        ],
    );
    write_st(
        &b,
        &[("text.m.weight", Dtype::F32, vec![2, 64], values(128, 7))],
    );
    let index = dir.path().join("model.safetensors.index.json");
    std::fs::write(
        &index,
        r#"{"metadata": {}, "weight_map": {"text.l.weight": "a.safetensors", "image.x.weight": "a.safetensors", "text.m.weight": "b.safetensors"}}"#,
    )
    .unwrap();
    let all = read_shard_set(&index).unwrap();
    assert_eq!(all.len(), 3);
    let fa = Arc::new(SafetensorsFile::open(&a).unwrap());
    let fb = Arc::new(SafetensorsFile::open(&b).unwrap());
    let mut sel = SelectedTensor::with_prefix(&fa, "text.");
    sel.extend(SelectedTensor::with_prefix(&fb, "text."));
    let spec = QuantSpec::new(WeightFormat::Affine { bits: 8 }, 32);
    let out = dir.path().join("w.safetensors");
    let o = quantize_to_file(&sel, &spec, &out, &spec.format.metadata()).unwrap();
    let names: Vec<_> = o.outputs.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "l.weight", "l.scales", "l.biases", "m.weight", "m.scales", "m.biases"
        ]
    );
    assert_eq!(o.data_bytes, 2 * (2 * 64 + 2 * 2 * 2 * 4));

    std::fs::write(
        &index,
        r#"{"weight_map": {"text.l.weight": "b.safetensors", "text.m.weight": "b.safetensors"}}"#,
    )
    .unwrap();
    let err = read_shard_set(&index).unwrap_err().to_string();
    assert!(
        err.contains("text.l.weight") && err.contains("not found there"),
        "{err}"
    );

    std::fs::write(&index, r#"{"weight_map": {"x": "../escape.safetensors"}}"#).unwrap();
    let err = read_shard_set(&index).unwrap_err().to_string();
    assert!(err.contains("inside the index's folder"), "{err}");
}

fn header_err(json: &str, data: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.safetensors");
    write_raw(&p, json.as_bytes().to_vec(), data);
    let e = read_header(&p).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("bad.safetensors"), "{msg}");
    msg
}

#[test]
fn hostile_headers_are_clear_errors() {
    let m = header_err(
        r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
        &[0u8; 4],
    );
    assert!(m.contains("tensor `a`") && m.contains("run past"), "{m}");
    let m = header_err(
        r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,8]}}"#,
        &[0u8; 8],
    );
    assert!(m.contains("needs 16"), "{m}");
    let m = header_err(
        r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
        &[0u8; 12],
    );
    assert!(m.contains("overlap"), "{m}");
    let m = header_err(
        r#"{"a":{"dtype":"Q7","shape":[2],"data_offsets":[0,8]}}"#,
        &[0u8; 8],
    );
    assert!(m.contains("unknown dtype `Q7`"), "{m}");
    let m = header_err(
        r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}}"#,
        &[0u8; 8],
    );
    assert!(m.contains("overflows"), "{m}");
    // Two entries with one name: serde_json would silently keep the second.
    let m = header_err(
        r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
        &[0u8; 8],
    );
    assert!(m.contains("tensor `a`") && m.contains("named twice"), "{m}");
    let m = header_err(r#"{"a": [1, 2"#, &[]);
    assert!(m.contains("not valid JSON"), "{m}");

    let dir = tempfile::tempdir().unwrap();
    // A huge declared header length is refused before any allocation.
    let p = dir.path().join("huge.safetensors");
    let mut bytes = (1u64 << 40).to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    std::fs::write(&p, &bytes).unwrap();
    let m = read_header(&p).unwrap_err().to_string();
    assert!(
        m.contains("exceeds") && m.contains("huge.safetensors"),
        "{m}"
    );
    // A header length past the end of the file.
    let p = dir.path().join("short.safetensors");
    let mut bytes = 4096u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    std::fs::write(&p, &bytes).unwrap();
    let m = read_header(&p).unwrap_err().to_string();
    assert!(m.contains("runs past the end"), "{m}");
    // A file cut in the middle of the data.
    let good = sample(dir.path(), Dtype::F16);
    let full = std::fs::read(&good).unwrap();
    let p = dir.path().join("cut.safetensors");
    std::fs::write(&p, &full[..full.len() - 100]).unwrap();
    let m = read_header(&p).unwrap_err().to_string();
    assert!(
        m.contains("cut.safetensors") && m.contains("truncated"),
        "{m}"
    );
    std::fs::write(&p, &full[..5]).unwrap();
    assert!(
        read_header(&p)
            .unwrap_err()
            .to_string()
            .contains("too short")
    );
    assert!(matches!(
        read_header(dir.path().join("missing.safetensors")),
        Err(QuantError::Io { .. })
    ));
}

#[test]
fn nan_weights_name_tensor_and_index() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("nan.safetensors");
    let mut v = values(64 * 128, 3);
    v[5 * 128 + 17] = f32::NAN;
    let mut mask = vec![0.0f32; 64];
    mask[3] = f32::NEG_INFINITY;
    write_st(
        &p,
        &[
            ("attn.mask", Dtype::F32, vec![64], mask),
            ("attn.q.weight", Dtype::F32, vec![64, 128], v),
        ],
    );
    let out = dir.path().join("o.safetensors");
    for format in [WeightFormat::Affine { bits: 4 }, WeightFormat::Nf4] {
        let err = quantize_file(&p, &out, &QuantSpec::new(format, 64)).unwrap_err();
        match &err {
            QuantError::NonFinite { tensor, index, .. } => {
                assert_eq!(tensor, "attn.q.weight");
                assert_eq!(index, &vec![5, 17]);
            }
            other => panic!("unexpected {other}"),
        }
        assert!(err.to_string().contains("nan.safetensors"));
        assert!(!out.exists());
    }
    // Kept tensors may hold -inf masks; keeping the NaN weight makes the file quantizable.
    let mut spec = QuantSpec::new(WeightFormat::Affine { bits: 4 }, 64);
    spec.keep = vec!["attn.q.*".into()];
    quantize_file(&p, &out, &spec).unwrap();
    let _ = BTreeMap::<String, String>::new();
}

#[test]
fn straddling_bit_widths_and_fp4_match_kernels() {
    let dir = tempfile::tempdir().unwrap();
    let input = sample(dir.path(), Dtype::BF16);
    let f = SafetensorsFile::open(&input).unwrap();
    let e = f.entry("model.layers.0.mlp.weight").unwrap();
    let mut w = vec![0f32; 64 * 256];
    kernels::decode_f32(f.bytes(e), Dtype::BF16, &mut w);
    for bits in [3u8, 6] {
        let out = dir.path().join(format!("int{bits}.safetensors"));
        let spec = QuantSpec::new(WeightFormat::Affine { bits }, 32);
        quantize_file(&input, &out, &spec).unwrap();
        let bytes = std::fs::read(&out).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let t = st.tensor("model.layers.0.mlp.weight").unwrap();
        assert_eq!(t.shape(), &[64, 256 * bits as usize / 32]);
        let mut codes = vec![0u32; 64 * 256 * bits as usize / 32];
        let (mut s, mut b) = (vec![0f32; 64 * 8], vec![0f32; 64 * 8]);
        kernels::affine_quantize(
            &w,
            256,
            32,
            bits,
            Dtype::BF16,
            &mut codes,
            &mut s,
            &mut b,
            None,
        )
        .unwrap();
        let want: Vec<u8> = codes.iter().flat_map(|c| c.to_le_bytes()).collect();
        assert_eq!(t.data(), want.as_slice(), "int{bits}");
        let sc = st.tensor("model.layers.0.mlp.scales").unwrap();
        let mut got = vec![0f32; 64 * 8];
        kernels::decode_f32(sc.data(), Dtype::BF16, &mut got);
        assert_eq!(got, s);
    }
    let out = dir.path().join("fp4.safetensors");
    quantize_file(&input, &out, &QuantSpec::new(WeightFormat::Fp4, 128)).unwrap();
    let bytes = std::fs::read(&out).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut packed = vec![0u8; w.len() / 2];
    let mut am = vec![0f32; w.len() / 128];
    kernels::bnb4_quantize(&w, 128, Bnb4::Fp4, &mut packed, &mut am, None).unwrap();
    assert_eq!(
        st.tensor("model.layers.0.mlp.weight").unwrap().data(),
        packed.as_slice()
    );
    assert!(
        st.tensor("model.layers.0.mlp.weight.quant_state.bitsandbytes__fp4")
            .is_ok()
    );
}

/// The squared error and squared signal of `w` against `r`, in f64.
fn sq_err(w: &[f32], r: &[f32]) -> (f64, f64) {
    w.iter().zip(r).fold((0.0, 0.0), |(e, s), (&a, &b)| {
        let d = f64::from(a) - f64::from(b);
        (e + d * d, s + f64::from(a) * f64::from(a))
    })
}

fn tensor_f32(st: &safetensors::SafeTensors<'_>, name: &str, dt: Dtype) -> Vec<f32> {
    let t = st.tensor(name).unwrap();
    let mut v = vec![0f32; t.data().len() / dt.size_bytes() as usize];
    kernels::decode_f32(t.data(), dt, &mut v);
    v
}

#[test]
fn mse_keeps_the_layout_and_measures_what_mlx_dequantizes() {
    use omnipack_quant::Method;
    use omnipack_quant::quality::mlx_affine_dequantize;
    let dir = tempfile::tempdir().unwrap();
    for dt in [Dtype::F16, Dtype::BF16, Dtype::F32] {
        let input = sample(dir.path(), dt);
        let f = SafetensorsFile::open(&input).unwrap();
        let e = f.entry("model.layers.0.mlp.weight").unwrap();
        let mut w = vec![0f32; 64 * 256];
        kernels::decode_f32(f.bytes(e), dt, &mut w);
        let mut sqnr = Vec::new();
        for method in Method::ALL {
            let spec = QuantSpec::new(WeightFormat::Affine { bits: 3 }, 64).with_method(method);
            let out = dir.path().join(format!("{method}.safetensors"));
            let o = quantize_file(&input, &out, &spec).unwrap();
            let bytes = std::fs::read(&out).unwrap();
            let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            // The file equals the kernel's output on the same input.
            let mut codes = vec![0u32; 64 * 256 * 3 / 32];
            let (mut s, mut b) = (vec![0f32; 256], vec![0f32; 256]);
            let quantize = match method {
                Method::Rtn => kernels::affine_quantize,
                Method::Mse => kernels::affine_quantize_mse,
            };
            quantize(&w, 256, 64, 3, dt, &mut codes, &mut s, &mut b, None).unwrap();
            let want: Vec<u8> = codes.iter().flat_map(|c| c.to_le_bytes()).collect();
            assert_eq!(st.tensor("model.layers.0.mlp.weight").unwrap().data(), want);
            assert_eq!(tensor_f32(&st, "model.layers.0.mlp.scales", dt), s);
            assert_eq!(tensor_f32(&st, "model.layers.0.mlp.biases", dt), b);
            // The reported error is the error of `mx.dequantize`'s reconstruction.
            let mut r = vec![0f32; w.len()];
            mlx_affine_dequantize(&codes, &s, &b, 64, 3, dt, &mut r);
            let (err, sig) = sq_err(&w, &r);
            let rep = o
                .tensors
                .iter()
                .find(|t| t.name == "model.layers.0.mlp.weight")
                .unwrap();
            assert!(
                (rep.stats.sum_sq_err - err).abs() <= 1e-5 * err,
                "{dt} {method}: {} vs {err}",
                rep.stats.sum_sq_err
            );
            assert!((rep.stats.sum_sq_ref - sig).abs() <= 1e-5 * sig);
            assert!(o.quality.worst_tensor.is_some());
            sqnr.push(rep.sqnr_db().unwrap());
        }
        // Mostly uniform weights (rtn's best case) with outliers: still a gain.
        assert!(
            sqnr[1] > sqnr[0] + 0.1,
            "{dt}: rtn {} dB, mse {} dB",
            sqnr[0],
            sqnr[1]
        );
    }
}

#[test]
fn outputs_and_quality_do_not_depend_on_the_thread_count() {
    use omnipack_quant::Method;
    let dir = tempfile::tempdir().unwrap();
    let input = sample(dir.path(), Dtype::F16);
    let specs = [
        QuantSpec::new(WeightFormat::Affine { bits: 4 }, 32),
        QuantSpec::new(WeightFormat::Affine { bits: 2 }, 64).with_method(Method::Mse),
        QuantSpec::new(WeightFormat::Nf4, 64),
        QuantSpec::new(WeightFormat::Bf16, 64),
    ];
    for spec in specs {
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let out = dir.path().join(format!("t{threads}.safetensors"));
            pool.install(|| quantize_file(&input, &out, &spec).unwrap())
        };
        let (one, three) = (run(1), run(3));
        assert_eq!(one.sha256, three.sha256, "{spec:?}");
        assert_eq!(one.tensors, three.tensors, "{spec:?}");
        assert_eq!(one.quality, three.quality, "{spec:?}");
        assert!(one.quality.sqnr_db.is_some(), "{spec:?}");
    }
}

#[test]
fn quality_of_casts_nf4_and_exact_files() {
    let dir = tempfile::tempdir().unwrap();
    // f16 to f16: every tensor copied, nothing measured, exact.
    let input = sample(dir.path(), Dtype::F16);
    let out = dir.path().join("same.safetensors");
    let o = quantize_file(&input, &out, &QuantSpec::new(WeightFormat::F16, 64)).unwrap();
    assert!(o.tensors.is_empty());
    assert_eq!(
        serde_json::to_value(&o.quality).unwrap(),
        serde_json::json!({"sqnr_db": null, "worst_tensor": null, "worst_sqnr_db": null, "rel_rms_error": 0.0})
    );
    // f16 to f32: measured, exact.
    let o = quantize_file(&input, &out, &QuantSpec::new(WeightFormat::F32, 64)).unwrap();
    assert_eq!(o.tensors.len(), 5);
    assert_eq!(o.quality.sqnr_db, None);
    // f32 to bf16: the error of the cast itself.
    let input = sample(dir.path(), Dtype::F32);
    let o = quantize_file(&input, &out, &QuantSpec::new(WeightFormat::Bf16, 64)).unwrap();
    let f = SafetensorsFile::open(&input).unwrap();
    let e = f.entry("lm_head.weight").unwrap();
    let mut w = vec![0f32; 32 * 128];
    kernels::decode_f32(f.bytes(e), Dtype::F32, &mut w);
    let r: Vec<f32> = w
        .iter()
        .map(|&x| kernels::round_to_dtype(x, Dtype::BF16))
        .collect();
    let (err, _) = sq_err(&w, &r);
    let rep = o
        .tensors
        .iter()
        .find(|t| t.name == "lm_head.weight")
        .unwrap();
    assert!((rep.stats.sum_sq_err - err).abs() <= 1e-5 * err);
    let db = o.quality.sqnr_db.unwrap();
    assert!(db > 40.0 && db < 60.0, "{db}");
    assert!((o.quality.rel_rms_error - 10f64.powf(-db / 20.0)).abs() < 1e-12);
    // NF4 from bf16: as bitsandbytes dequantizes (rounded to bf16).
    let input = sample(dir.path(), Dtype::BF16);
    let o = quantize_file(&input, &out, &QuantSpec::new(WeightFormat::Nf4, 64)).unwrap();
    let bytes = std::fs::read(&out).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let f = SafetensorsFile::open(&input).unwrap();
    let e = f.entry("model.layers.0.mlp.weight").unwrap();
    let mut w = vec![0f32; 64 * 256];
    kernels::decode_f32(f.bytes(e), Dtype::BF16, &mut w);
    let absmax = tensor_f32(&st, "model.layers.0.mlp.weight.absmax", Dtype::F32);
    let packed = st
        .tensor("model.layers.0.mlp.weight")
        .unwrap()
        .data()
        .to_vec();
    let mut r = vec![0f32; w.len()];
    omnipack_quant::quality::bnb4_dequantize_as(
        &packed,
        &absmax,
        64,
        Bnb4::Nf4,
        Dtype::BF16,
        &mut r,
    );
    let (err, _) = sq_err(&w, &r);
    let rep = o
        .tensors
        .iter()
        .find(|t| t.name == "model.layers.0.mlp.weight")
        .unwrap();
    assert!((rep.stats.sum_sq_err - err).abs() <= 1e-5 * err);
    let worst = o.quality.worst_tensor.as_deref().unwrap();
    let min = o
        .tensors
        .iter()
        .map(|t| t.sqnr_db().unwrap())
        .fold(f64::INFINITY, f64::min);
    assert_eq!(o.quality.worst_sqnr_db, Some(min));
    assert!(o.tensors.iter().any(|t| t.name == worst));
}

/// `mx.save_safetensors(path, arrays)` without metadata writes `"__metadata__": null`.
#[test]
fn null_metadata_is_no_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("mlx.safetensors");
    write_raw(
        &p,
        br#"{"__metadata__":null,"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#.to_vec(),
        &[0u8; 8],
    );
    let f = SafetensorsFile::open(&p).unwrap();
    assert!(f.header().metadata.is_empty());
    assert_eq!(read_header(&p).unwrap().len(), 1);
    let m = header_err(
        r#"{"__metadata__":[1],"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
        &[0u8; 8],
    );
    assert!(m.contains("`__metadata__` is not an object"), "{m}");
}
