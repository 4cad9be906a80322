//! Compression against coremltools 9.0: every `linear_quantize_weights` run recorded in
//! tests/data/fixtures.json (`compressions`, made by scripts/make-coreml-fixtures.py) is
//! repeated by omnipack and must give the same weight.bin (sha256), the same constexpr_*
//! operations with the same values and the same blob-stored constants; committed compressed
//! packages are compared byte for byte; the plan must equal what is written.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use omnipack_coreml::blob::BlobIndex;
use omnipack_coreml::spec;
use omnipack_coreml::{
    BlobContent, CompressionConfig, CompressionFormat, CompressionPlan, DecodeStepExpectation,
    ErrorKind, KeepReason, WeightAction, check_decode_step, compress, open,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/omnicoder-tiny/omnicoder_decode_step.mlpackage")
}

fn recorded() -> Value {
    serde_json::from_slice(&fs::read(data().join("fixtures.json")).unwrap()).unwrap()
}

fn source_path(name: &str) -> PathBuf {
    if name == "example" {
        example()
    } else {
        data().join(format!("{name}.mlpackage"))
    }
}

fn config_of(o: &Value) -> CompressionConfig {
    let format = match o["format"].as_str().unwrap() {
        "f16" => CompressionFormat::F16,
        "int8" => CompressionFormat::Int8,
        "int4" => CompressionFormat::Int4 {
            block_size: o["block_size"].as_u64().unwrap() as u32,
        },
        f => panic!("format {f}"),
    };
    let keep = o["keep"]
        .as_array()
        .map(|a| a.iter().map(|g| g.as_str().unwrap().to_string()).collect())
        .unwrap_or_default();
    CompressionConfig { format, keep }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn weight_bin(pkg: &Path) -> PathBuf {
    pkg.join("Data/com.apple.CoreML/weights/weight.bin")
}

fn value_record(v: &spec::Value) -> Value {
    use spec::tensor_value::Value as T;
    let Some(spec::value_type::Type::TensorType(t)) = v.r#type.as_ref().unwrap().r#type.as_ref()
    else {
        panic!("not a tensor")
    };
    let shape: Vec<u64> = t
        .dimensions
        .iter()
        .map(|d| match &d.dimension {
            Some(spec::dimension::Dimension::Constant(c)) => c.size,
            _ => panic!("unknown dimension"),
        })
        .collect();
    let mut out = json!({
        "dtype": omnipack_coreml::MilDataType(t.data_type).name(),
        "shape": shape,
    });
    match v.value.as_ref().unwrap() {
        spec::value::Value::BlobFileValue(b) => out["blob"] = json!(b.offset),
        spec::value::Value::ImmediateValue(i) => {
            let Some(spec::immediate_value::Value::Tensor(t)) = &i.value else {
                panic!("not a tensor value")
            };
            let raw: Vec<u8> = match t.value.as_ref().unwrap() {
                T::Bytes(b) => b.values.clone(),
                T::Floats(f) => f.values.iter().flat_map(|x| x.to_le_bytes()).collect(),
                T::Ints(f) => f.values.iter().flat_map(|x| x.to_le_bytes()).collect(),
                other => panic!("{other:?}"),
            };
            out["inline"] = json!(hex(&raw));
        }
    }
    out
}

fn walk<'a>(block: &'a spec::Block, out: &mut Vec<&'a spec::Operation>) {
    for op in &block.operations {
        out.push(op);
        for b in &op.blocks {
            walk(b, out);
        }
    }
}

fn ops_of(model: &spec::Model) -> Vec<&spec::Operation> {
    let Some(spec::model::Type::MlProgram(p)) = &model.r#type else {
        panic!("not an ML program")
    };
    let mut out = Vec::new();
    for f in p.functions.values() {
        walk(&f.block_specializations[&f.opset], &mut out);
    }
    out
}

/// The record scripts/make-coreml-fixtures.py's `compression_record` makes, from our side.
fn record(pkg: &Path) -> Value {
    let model = open(pkg).unwrap();
    let bytes = fs::read(weight_bin(pkg)).unwrap();
    let mut constexpr = Vec::new();
    let mut consts = Vec::new();
    for op in ops_of(&model.model) {
        if op.r#type.starts_with("constexpr_") {
            let mut values = serde_json::Map::new();
            for (k, v) in &op.attributes {
                if k != "name" {
                    values.insert(k.clone(), value_record(v));
                }
            }
            for (k, arg) in &op.inputs {
                let Some(spec::binding::Binding::Value(v)) = &arg.arguments[0].binding else {
                    panic!("input bound by name")
                };
                values.insert(k.clone(), value_record(v));
            }
            let out = &op.outputs[0];
            let output = value_record(&spec::Value {
                doc_string: String::new(),
                r#type: out.r#type.clone(),
                value: Some(spec::value::Value::BlobFileValue(spec::BlobFileValue {
                    file_name: String::new(),
                    offset: 0,
                })),
            });
            constexpr.push(json!({
                "name": out.name,
                "type": op.r#type,
                "output": {"dtype": output["dtype"], "shape": output["shape"]},
                "values": values,
            }));
        } else if op.r#type == "const"
            && let Some(spec::value::Value::BlobFileValue(b)) =
                op.attributes.get("val").and_then(|v| v.value.as_ref())
        {
            consts.push(json!({"name": op.outputs[0].name, "blob": b.offset}));
        }
    }
    json!({
        "weight_bin": {
            "bytes": bytes.len(),
            "sha256": hex(&Sha256::digest(&bytes)),
            "blobs": u32::from_le_bytes(bytes[0..4].try_into().unwrap()),
        },
        "constexpr_ops": constexpr,
        "blob_consts": consts,
    })
}

/// Checks the written package against the plan: the stored bytes (the facts' rule), the
/// parameters, every blob record and the file size.
fn check_plan(plan: &CompressionPlan, out: &Path, what: &str) {
    let model = open(out).unwrap();
    let facts = model.facts().unwrap();
    assert_eq!(
        facts.stored_bytes, plan.weights_bytes,
        "{what}: weights_bytes"
    );
    let w = facts.weights.as_ref().unwrap();
    assert_eq!(w.parameters, plan.parameters, "{what}: parameters");
    assert_eq!(w.blob_bytes, plan.blob_bytes, "{what}: blob bytes");
    assert_eq!(w.inline_bytes, plan.inline_bytes, "{what}: inline bytes");
    let mut total = 0;
    for f in &plan.files {
        let path = out.join(&f.path);
        let index = BlobIndex::open(&path).unwrap();
        assert_eq!(index.len, f.bytes, "{what}: {} size", f.path);
        total += index.len;
        let planned: Vec<_> = f
            .blobs
            .iter()
            .map(|b| (b.metadata_offset, b.data_type, b.size, b.padding_bits))
            .collect();
        let written: Vec<_> = index
            .records
            .iter()
            .map(|r| (r.metadata_offset, r.data_type, r.size, r.padding_bits))
            .collect();
        assert_eq!(planned, written, "{what}: {} records", f.path);
    }
    assert_eq!(total, plan.weight_bin_bytes, "{what}: weight.bin bytes");
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn every_recorded_compression_matches_coremltools() {
    let rec = recorded();
    let compressions = rec["compressions"].as_object().unwrap();
    assert_eq!(compressions.len(), 15);
    for (name, r) in compressions {
        let src = open(&source_path(r["source"].as_str().unwrap())).unwrap();
        let config = config_of(&r["omnipack"]);
        let dir = tmp();
        let out = dir.path().join(format!("{name}.mlpackage"));
        let plan = compress(&src, &config, &out).unwrap();
        let ours = record(&out);
        for key in ["weight_bin", "constexpr_ops", "blob_consts"] {
            assert_eq!(ours[key], r[key], "{name}: {key}");
        }
        assert_eq!(
            plan.compressed_count(),
            r["constexpr_ops"].as_array().unwrap().len(),
            "{name}"
        );
        if let Some(pkg) = r["package"].as_str() {
            let theirs = fs::read(weight_bin(&data().join(format!("{pkg}.mlpackage")))).unwrap();
            assert!(
                fs::read(weight_bin(&out)).unwrap() == theirs,
                "{name}: weight.bin differs from {pkg}"
            );
        }
        check_plan(&plan, &out, name);
        same_program_apart_from_the_weights(&src.model, &open(&out).unwrap().model, &plan, name);
    }
}

/// Replaces blob offsets by `map` and binding names by `renames`.
fn normalize(
    op: &spec::Operation,
    offsets: &HashMap<u64, u64>,
    renames: &HashMap<String, String>,
) -> spec::Operation {
    fn value(v: &mut spec::Value, offsets: &HashMap<u64, u64>) {
        if let Some(spec::value::Value::BlobFileValue(b)) = &mut v.value {
            b.offset = offsets.get(&b.offset).copied().unwrap_or(u64::MAX);
        }
    }
    let mut op = op.clone();
    for v in op.attributes.values_mut() {
        value(v, offsets);
    }
    for arg in op.inputs.values_mut() {
        for b in &mut arg.arguments {
            match &mut b.binding {
                Some(spec::binding::Binding::Value(v)) => value(v, offsets),
                Some(spec::binding::Binding::Name(n)) => {
                    if let Some(r) = renames.get(n) {
                        *n = r.clone();
                    }
                }
                None => {}
            }
        }
    }
    op.blocks.clear();
    op
}

/// The compressed program is the source's with each compressed `const` replaced by its
/// constexpr_* operation (and uses renamed): every other operation equal, blob offsets moved
/// as the plan says.
fn same_program_apart_from_the_weights(
    src: &spec::Model,
    out: &spec::Model,
    plan: &CompressionPlan,
    what: &str,
) {
    let mut offsets = HashMap::new();
    for f in &plan.files {
        for b in &f.blobs {
            if let BlobContent::Copy { source_offset } = b.content {
                offsets.insert(source_offset, b.metadata_offset);
            }
        }
    }
    let renames: HashMap<String, String> = plan
        .weights
        .iter()
        .filter_map(|w| Some((w.name.clone(), w.compressed()?.op_name.clone())))
        .collect();
    let identity: HashMap<u64, u64> = offsets.values().map(|&o| (o, o)).collect();
    let (a, b) = (ops_of(src), ops_of(out));
    assert_eq!(a.len(), b.len(), "{what}: operation count");
    for (x, y) in a.iter().zip(&b) {
        let name = &x
            .outputs
            .first()
            .map(|o| o.name.clone())
            .unwrap_or_default();
        if let Some(new) = renames.get(name) {
            assert_eq!(x.r#type, "const", "{what}");
            assert!(y.r#type.starts_with("constexpr_"), "{what}: {name}");
            assert_eq!(&y.outputs[0].name, new, "{what}");
            assert_eq!(
                y.outputs[0].r#type, x.outputs[0].r#type,
                "{what}: {name} type"
            );
            continue;
        }
        assert_eq!(
            normalize(x, &offsets, &renames),
            normalize(y, &identity, &HashMap::new()),
            "{what}: operation `{name}`"
        );
    }
    // The description (inputs, outputs, states, metadata) is the source's, without the date.
    let mut d = src.description.clone().unwrap();
    if let Some(m) = &mut d.metadata {
        m.user_defined.remove(omnipack_coreml::CONVERSION_DATE_KEY);
    }
    assert_eq!(out.description.as_ref(), Some(&d), "{what}: description");
    assert_eq!(out.specification_version, src.specification_version);
}

/// Every fixture package and the example, in every format and block size: the plan (from the
/// source alone) equals what is written.
#[test]
fn plans_equal_the_written_bytes_for_every_format() {
    let mut sources: Vec<PathBuf> = fs::read_dir(data())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "mlpackage"))
        .collect();
    sources.sort();
    sources.push(example());
    let formats = [
        CompressionFormat::F16,
        CompressionFormat::Int8,
        CompressionFormat::Int4 { block_size: 32 },
        CompressionFormat::Int4 { block_size: 64 },
        CompressionFormat::Int4 { block_size: 128 },
    ];
    let dir = tmp();
    let mut checked = 0;
    for (i, src) in sources.iter().enumerate() {
        let model = open(src).unwrap();
        let spec_version = model.model.specification_version;
        for (j, &format) in formats.iter().enumerate() {
            let mut config = CompressionConfig::new(format);
            config.keep.push("weight_with_inf*".into());
            let what = format!("{} {format}", src.display());
            let planned = CompressionPlan::new(&model, &config);
            let out = dir.path().join(format!("{i}-{j}.mlpackage"));
            let written = compress(&model, &config, &out);
            match (&planned, &written) {
                (Ok(p), Ok(w)) => {
                    assert_eq!(p, w, "{what}");
                    check_plan(p, &out, &what);
                    checked += 1;
                }
                (Err(p), Err(w)) => {
                    assert_eq!(p.to_string(), w.to_string());
                    assert!(!out.exists(), "{what}: a failed compression left output");
                    let zoo = src.to_string_lossy().contains("zoo");
                    match &p.kind {
                        ErrorKind::TargetTooOld { target, .. } => {
                            assert_eq!(target.specification_version, spec_version);
                            assert!(spec_version < format.minimum_specification_version());
                        }
                        ErrorKind::Fp32Weights { first, count } => {
                            assert!(zoo && format == CompressionFormat::F16, "{what}");
                            assert_eq!((first.as_str(), *count), ("lin_fp32_weight_0", 1));
                        }
                        other => panic!("{what}: {other}"),
                    }
                }
                _ => panic!("{what}: plan {planned:?} but compression {written:?}"),
            }
        }
    }
    // 20 packages x 5 formats, less int4 below iOS 18 (13 x 3) and f16 of the zoo (fp32 weight).
    assert_eq!(checked, 59);
}

#[test]
fn f16_is_the_reproducible_form_of_the_model() {
    let model = open(&data().join("decode_step_ios17.mlpackage")).unwrap();
    let dir = tmp();
    let a = dir.path().join("a.mlpackage");
    let b = dir.path().join("b.mlpackage");
    compress(&model, &CompressionConfig::new(CompressionFormat::F16), &a).unwrap();
    omnipack_coreml::write_package(&model.reproducible_entries().unwrap(), &b).unwrap();
    for rel in [
        "Manifest.json",
        "Data/com.apple.CoreML/model.mlmodel",
        "Data/com.apple.CoreML/weights/weight.bin",
    ] {
        assert_eq!(
            fs::read(a.join(rel)).unwrap(),
            fs::read(b.join(rel)).unwrap(),
            "{rel}"
        );
    }
}

#[test]
fn compression_is_deterministic_and_reproducible() {
    let model = open(&data().join("omnicoder_decode_step_ios18.mlpackage")).unwrap();
    let config = CompressionConfig::new(CompressionFormat::Int4 { block_size: 32 });
    let dir = tmp();
    let files = |p: &Path| -> BTreeMap<String, Vec<u8>> {
        [
            "Manifest.json",
            "Data/com.apple.CoreML/model.mlmodel",
            "Data/com.apple.CoreML/weights/weight.bin",
        ]
        .iter()
        .map(|r| (r.to_string(), fs::read(p.join(r)).unwrap()))
        .collect()
    };
    let run = |threads: usize, name: &str| {
        let out = dir.path().join(name);
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| compress(&model, &config, &out).unwrap());
        files(&out)
    };
    let one = run(1, "one.mlpackage");
    assert_eq!(run(3, "three.mlpackage"), one);
    // The rewrite rules hold: no conversion date, identifiers derived from content, and
    // rewriting the result changes nothing.
    let out = dir.path().join("one.mlpackage");
    let again = open(&out).unwrap();
    assert!(!String::from_utf8_lossy(&again.model_bytes).contains("conversion_date"));
    let entries = again.reproducible_entries().unwrap();
    let re = dir.path().join("re.mlpackage");
    omnipack_coreml::write_package(&entries, &re).unwrap();
    assert_eq!(files(&re), one);
    // Separate-process conversions of one model compress to identical packages.
    let a = open(&data().join("separate_process_a.mlpackage")).unwrap();
    let b = open(&data().join("separate_process_b.mlpackage")).unwrap();
    let config = CompressionConfig::new(CompressionFormat::Int8);
    compress(&a, &config, &dir.path().join("a.mlpackage")).unwrap();
    compress(&b, &config, &dir.path().join("b.mlpackage")).unwrap();
    assert_eq!(
        files(&dir.path().join("a.mlpackage")),
        files(&dir.path().join("b.mlpackage"))
    );
}

#[test]
fn compressed_decode_steps_keep_their_contract() {
    for (name, format) in [
        ("decode_step_ios17", CompressionFormat::Int8),
        (
            "omnicoder_decode_step_ios18",
            CompressionFormat::Int4 { block_size: 64 },
        ),
    ] {
        let model = open(&data().join(format!("{name}.mlpackage"))).unwrap();
        let dir = tmp();
        let out = dir.path().join("c.mlpackage");
        compress(&model, &CompressionConfig::new(format), &out).unwrap();
        let before = model.facts().unwrap();
        let after = open(&out).unwrap().facts().unwrap();
        assert_eq!(after.inputs, before.inputs);
        assert_eq!(after.outputs, before.outputs);
        let expect = DecodeStepExpectation::default();
        let a = check_decode_step(&before, &expect);
        let b = check_decode_step(&after, &expect);
        assert!(a.mismatches.is_empty(), "{name}: {:?}", a.mismatches);
        assert_eq!(a, b, "{name}");
    }
}

#[test]
fn keep_globs_leave_weights_as_they_are() {
    let model = open(&data().join("decode_step_ios18.mlpackage")).unwrap();
    let config = CompressionConfig {
        format: CompressionFormat::Int8,
        keep: vec!["linear_1?_weight_0".into(), "gather_*".into()],
    };
    let plan = CompressionPlan::new(&model, &config).unwrap();
    let kept: Vec<&str> = plan
        .weights
        .iter()
        .filter(|w| matches!(&w.action, WeightAction::Kept(KeepReason::KeepGlob { .. })))
        .map(|w| w.name.as_str())
        .collect();
    assert_eq!(
        kept,
        [
            "gather_0_x_0",
            "linear_10_weight_0",
            "linear_11_weight_0",
            "linear_12_weight_0",
            "linear_13_weight_0",
            "linear_14_weight_0",
            "linear_15_weight_0",
            "linear_16_weight_0"
        ]
    );
    assert_eq!(plan.compressed_count(), 18 - kept.len());
    let dir = tmp();
    let out = dir.path().join("k.mlpackage");
    compress(&model, &config, &out).unwrap();
    check_plan(&plan, &out, "keep");
    let facts = open(&out).unwrap().facts().unwrap();
    assert_eq!(
        facts.operations["constexpr_blockwise_shift_scale"] as usize,
        plan.compressed_count()
    );
}

#[test]
fn the_zoo_shows_every_selection_rule() {
    let model = open(&data().join("compression_zoo_ios18.mlpackage")).unwrap();
    let mut config = CompressionConfig::new(CompressionFormat::Int4 { block_size: 32 });
    config.keep.push("weight_with_inf*".into());
    let plan = CompressionPlan::new(&model, &config).unwrap();
    let by_name: BTreeMap<&str, &WeightAction> = plan
        .weights
        .iter()
        .map(|w| (w.name.as_str(), &w.action))
        .collect();
    let reason = |n: &str| match by_name[n] {
        WeightAction::Kept(r) => Some(r.clone()),
        WeightAction::Compressed(_) => None,
    };
    let axes = |n: &str| match by_name[n] {
        WeightAction::Compressed(c) => (c.output_axis, c.input_axis, c.block_sizes.clone()),
        WeightAction::Kept(r) => panic!("{n}: {r}"),
    };
    assert_eq!(
        reason("lin_2048_weight_0_to_fp16"),
        Some(KeepReason::Small { elements: 2048 })
    );
    assert_eq!(axes("lin_2112_weight_0_to_fp16"), (0, 1, vec![1, 32]));
    assert_eq!(
        reason("add1d_y_0_to_fp16"),
        Some(KeepReason::OneDimensional)
    );
    assert_eq!(
        reason("weight_two_axes_to_fp16"),
        Some(KeepReason::AxisConflict)
    );
    assert!(matches!(
        reason("weight_with_inf_to_fp16"),
        Some(KeepReason::KeepGlob { .. })
    ));
    assert_eq!(axes("mm_y_y_0_to_fp16"), (1, 0, vec![32, 1]));
    assert_eq!(axes("mm_yt_y_0_to_fp16"), (0, 1, vec![1, 32]));
    assert_eq!(axes("mm_x_x_0_to_fp16"), (0, 1, vec![1, 32]));
    assert_eq!(
        reason("conv_weight_0_to_fp16"),
        Some(KeepReason::NotDivisible {
            axis: 1,
            size: 16,
            block_size: 32
        })
    );
    assert_eq!(axes("convt_weight_0_to_fp16"), (1, 0, vec![32, 1, 0, 0]));
    assert_eq!(axes("lin_fp32_weight_0"), (0, 1, vec![1, 32]));
    // Without the keep glob, the infinity is an error naming the weight.
    let dir = tmp();
    let out = dir.path().join("z.mlpackage");
    let e = compress(
        &model,
        &CompressionConfig::new(CompressionFormat::Int8),
        &out,
    )
    .unwrap_err();
    assert!(
        matches!(&e.kind, ErrorKind::NonFiniteWeight { name, nan: false, .. } if name == "weight_with_inf_to_fp16"),
        "{e}"
    );
    assert!(e.to_string().contains("list it in `keep`"), "{e}");
    assert!(!out.exists());
    assert_eq!(
        fs::read_dir(dir.path()).unwrap().count(),
        0,
        "temporary folder left"
    );
}

#[test]
fn formats_the_model_cannot_take_are_typed_errors() {
    let ios17 = open(&data().join("decode_step_ios17.mlpackage")).unwrap();
    let e = CompressionPlan::new(
        &ios17,
        &CompressionConfig::new(CompressionFormat::Int4 { block_size: 32 }),
    )
    .unwrap_err();
    assert_eq!(
        e.kind.to_string(),
        "`int4` needs a deployment target of iOS 18 (specification version 9) or later, but the model's is iOS 17 (specification version 8)"
    );
    // An iOS 15 model (its specification version edited down) cannot hold constexpr ops.
    let dir = tmp();
    let ios15 = dir.path().join("ios15.mlpackage");
    omnipack_coreml::write_package(
        &open(&data().join("decode_step_ios16.mlpackage"))
            .unwrap()
            .reproducible_entries()
            .unwrap(),
        &ios15,
    )
    .unwrap();
    let model_file = ios15.join("Data/com.apple.CoreML/model.mlmodel");
    let mut bytes = fs::read(&model_file).unwrap();
    assert_eq!(&bytes[..2], &[0x08, 0x07]);
    bytes[1] = 0x06;
    fs::write(&model_file, bytes).unwrap();
    let e = CompressionPlan::new(
        &open(&ios15).unwrap(),
        &CompressionConfig::new(CompressionFormat::Int8),
    )
    .unwrap_err();
    assert!(
        matches!(e.kind, ErrorKind::TargetTooOld { format: "int8", .. }),
        "{e}"
    );
    assert!(
        e.to_string().contains("iOS 16 (specification version 7)"),
        "{e}"
    );
    // Block size 0, a single .mlmodel file, an existing output folder.
    let e = CompressionPlan::new(
        &ios17,
        &CompressionConfig::new(CompressionFormat::Int4 { block_size: 0 }),
    )
    .unwrap_err();
    assert!(matches!(e.kind, ErrorKind::InvalidBlockSize(0)));
    let single = open(&data().join("neural_network.mlmodel")).unwrap();
    let e = CompressionPlan::new(&single, &CompressionConfig::new(CompressionFormat::Int8))
        .unwrap_err();
    assert!(matches!(e.kind, ErrorKind::NotCompressible(_)), "{e}");
    let e = compress(
        &ios17,
        &CompressionConfig::new(CompressionFormat::Int8),
        dir.path(),
    )
    .unwrap_err();
    assert!(matches!(e.kind, ErrorKind::OutputExists), "{e}");
}

#[test]
fn a_blob_that_contradicts_its_constant_is_an_error_not_a_panic() {
    let dir = tmp();
    let pkg = dir.path().join("edited.mlpackage");
    omnipack_coreml::write_package(
        &open(&data().join("decode_step_ios18.mlpackage"))
            .unwrap()
            .reproducible_entries()
            .unwrap(),
        &pkg,
    )
    .unwrap();
    // The first blob (the fp16 embedding) now says it holds fp32 data.
    let wb = weight_bin(&pkg);
    let mut bytes = fs::read(&wb).unwrap();
    assert_eq!(&bytes[68..72], &1u32.to_le_bytes());
    bytes[68..72].copy_from_slice(&2u32.to_le_bytes());
    fs::write(&wb, bytes).unwrap();
    let model = open(&pkg).unwrap();
    let e =
        CompressionPlan::new(&model, &CompressionConfig::new(CompressionFormat::Int8)).unwrap_err();
    assert!(matches!(e.kind, ErrorKind::Program(_)), "{e}");
    assert!(
        e.to_string()
            .contains("const `gather_0_x_0` is fp16 [128, 64], but its blob at offset 64"),
        "{e}"
    );
    let out = dir.path().join("out.mlpackage");
    assert!(
        compress(
            &model,
            &CompressionConfig::new(CompressionFormat::Int8),
            &out
        )
        .is_err()
    );
    assert!(!out.exists());
}

#[test]
fn a_new_name_the_function_already_has_is_refused() {
    let dir = tmp();
    let pkg = dir.path().join("edited.mlpackage");
    omnipack_coreml::write_package(
        &open(&data().join("decode_step_ios18.mlpackage"))
            .unwrap()
            .reproducible_entries()
            .unwrap(),
        &pkg,
    )
    .unwrap();
    // Rename a constant (definition and uses; same length, so the protobuf stays valid) to
    // the name the embedding's compressed form would get.
    let file = pkg.join("Data/com.apple.CoreML/model.mlmodel");
    let from: &[u8] = b"matmul_0_transpose_y_0";
    let to: &[u8] = b"gather_0_x_0_quantized";
    let mut bytes = fs::read(&file).unwrap();
    let mut hits = 0;
    for i in 0..=bytes.len() - from.len() {
        if &bytes[i..i + from.len()] == from {
            bytes[i..i + from.len()].copy_from_slice(to);
            hits += 1;
        }
    }
    assert!(hits >= 2);
    fs::write(&file, bytes).unwrap();
    let model = open(&pkg).unwrap();
    let e =
        CompressionPlan::new(&model, &CompressionConfig::new(CompressionFormat::Int8)).unwrap_err();
    assert!(matches!(e.kind, ErrorKind::NotCompressible(_)), "{e}");
    assert!(
        e.to_string()
            .contains("`gather_0_x_0_quantized`, a name function `main` already has"),
        "{e}"
    );
}
