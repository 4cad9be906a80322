//! Integration tests on the committed coremltools 9.0 fixtures (tests/data, made by
//! scripts/make-coreml-fixtures.py) and the example decode step.

use std::collections::BTreeMap;
use std::fs;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use omnipack_coreml::blob::{self, BlobIndex, BlobWriter};
use omnipack_coreml::{
    ArrayDataType, CacheForm, DecodeStepExpectation, EntrySource, PackageEntry, Subject,
    check_decode_step, open,
};
use serde_json::Value;

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/omnicoder-tiny")
}

fn recorded() -> BTreeMap<String, Value> {
    let doc: Value =
        serde_json::from_slice(&fs::read(data().join("fixtures.json")).unwrap()).unwrap();
    doc["fixtures"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn package(name: &str) -> PathBuf {
    data().join(format!("{name}.mlpackage"))
}

/// Compares a package's facts with the numbers the generator recorded from coremltools.
fn compare_with_recorded(path: &Path, rec: &Value) {
    let model = open(path).unwrap();
    let facts = model.facts().unwrap();
    let what = path.display();
    assert_eq!(
        i64::from(facts.specification_version),
        rec["specification_version"].as_i64().unwrap(),
        "{what}"
    );
    let ops: BTreeMap<String, u64> = serde_json::from_value(rec["operations"].clone()).unwrap();
    assert_eq!(facts.operations, ops, "{what}: operation counts");
    let weights = facts.weights.as_ref().unwrap();
    if let Some(p) = rec["parameters"].as_u64() {
        assert_eq!(weights.parameters, p, "{what}: parameters");
        let mut ours: Vec<(String, String, Vec<u64>, u64)> = weights
            .constants
            .iter()
            .map(|c| {
                (
                    c.name.clone(),
                    c.operation.clone(),
                    c.shape.clone(),
                    c.parameters,
                )
            })
            .collect();
        ours.sort();
        let mut theirs: Vec<(String, String, Vec<u64>, u64)> = rec["weights"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| {
                (
                    w["name"].as_str().unwrap().to_string(),
                    w["op"].as_str().unwrap().to_string(),
                    serde_json::from_value(w["shape"].clone()).unwrap(),
                    w["parameters"].as_u64().unwrap(),
                )
            })
            .collect();
        theirs.sort();
        assert_eq!(ours, theirs, "{what}: weight constants");
    }
    let blobs: u64 = weights.blobs.values().map(|b| b.blobs).sum();
    assert_eq!(
        blobs,
        rec["blob_count"].as_u64().unwrap(),
        "{what}: blob count"
    );
    for (dtype, b) in rec["blobs_by_dtype"].as_object().unwrap() {
        let ours = weights
            .blobs
            .get(dtype)
            .unwrap_or_else(|| panic!("{what}: no {dtype} blobs"));
        assert_eq!(
            ours.blobs,
            b["blobs"].as_u64().unwrap(),
            "{what}: {dtype} blobs"
        );
        assert_eq!(
            ours.bytes,
            b["bytes"].as_u64().unwrap(),
            "{what}: {dtype} bytes"
        );
    }
    assert_eq!(
        weights.blobs.len(),
        rec["blobs_by_dtype"].as_object().unwrap().len(),
        "{what}"
    );
    assert_eq!(
        weights.inline_bytes,
        rec["inline_const_bytes"].as_u64().unwrap(),
        "{what}: inline bytes"
    );
    assert_eq!(
        facts.stored_bytes,
        rec["stored_bytes"].as_u64().unwrap(),
        "{what}: stored bytes"
    );
    let file = &model.blob_files[0];
    assert_eq!(
        file.index.len,
        rec["weight_bin_bytes"].as_u64().unwrap(),
        "{what}: weight.bin bytes"
    );
    assert_eq!(
        file.index.records.len() as u64,
        rec["weight_bin_header"]["count"].as_u64().unwrap()
    );
}

#[test]
fn sizes_equal_what_coremltools_reports() {
    let rec = recorded();
    let mut n = 0;
    for (name, r) in &rec {
        if name.ends_with(".mlmodel") {
            continue;
        }
        compare_with_recorded(&package(name), r);
        n += 1;
    }
    assert_eq!(n, 19);
    // The example decode step, iOS 16 and iOS 18 (the one the committed manifests ship).
    for stem in ["omnicoder_decode_step", "omnicoder_decode_step_ios18"] {
        let ex: Value = serde_json::from_slice(
            &fs::read(example().join(format!("{stem}.coreml.json"))).unwrap(),
        )
        .unwrap();
        compare_with_recorded(&example().join(format!("{stem}.mlpackage")), &ex);
    }
}

#[test]
fn compressed_fixtures_name_their_ops_and_blob_types() {
    let rec = recorded();
    for (name, op, dtype) in [
        (
            "int8_per_channel_ios17",
            "constexpr_affine_dequantize",
            "int8",
        ),
        (
            "int8_per_channel_ios18",
            "constexpr_blockwise_shift_scale",
            "int8",
        ),
        (
            "int4_block32_ios18",
            "constexpr_blockwise_shift_scale",
            "int4",
        ),
        (
            "int4_block64_ios18",
            "constexpr_blockwise_shift_scale",
            "int4",
        ),
    ] {
        let facts = open(&package(name)).unwrap().facts().unwrap();
        assert_eq!(facts.operations[op], 18, "{name}");
        let w = facts.weights.unwrap();
        assert!(w.blobs.contains_key(dtype), "{name}");
        assert!(w.constants.iter().filter(|c| c.operation == op).count() == 18);
        // Compression keeps the parameter count of the source.
        let src = rec[name]["compressed_from"].as_str().unwrap();
        assert_eq!(w.parameters, rec[src]["parameters"].as_u64().unwrap());
    }
    // int4 data: elements = bytes * 2 (64 x 64 and 128 x 64 weights need no padding).
    let w = open(&package("int4_block32_ios18"))
        .unwrap()
        .facts()
        .unwrap()
        .weights
        .unwrap();
    assert_eq!(w.blobs["int4"].elements, 2 * w.blobs["int4"].bytes);
}

#[test]
fn deployment_targets_and_features() {
    for (name, target) in [
        ("decode_step_ios16", "iOS 16"),
        ("decode_step_ios17", "iOS 17"),
        ("decode_step_ios18", "iOS 18"),
    ] {
        let f = open(&package(name)).unwrap().facts().unwrap();
        assert_eq!(f.deployment_target, Some(target));
        assert_eq!(f.model_type, "mlProgram");
        assert_eq!(f.format, "mlpackage");
    }
    let f = open(&package("decode_step_ios16"))
        .unwrap()
        .facts()
        .unwrap();
    let k = f.feature("k_lat_0").unwrap().kind.array().unwrap();
    assert_eq!(k.data_type, ArrayDataType::Float16);
    assert_eq!(k.shape_text(), "[1, 2, 1..4096, 16]");
    // Outputs with a flexible axis have no shape in the description: the program gives it.
    let nk = f.feature("nk_lat_0").unwrap().kind.array().unwrap();
    assert!(nk.shape.is_empty());
    assert_eq!(nk.shape_text(), "[1, 2, ?, 16]");
    assert_eq!(
        f.feature("logits")
            .unwrap()
            .kind
            .array()
            .unwrap()
            .shape_text(),
        "[1, 1, 64]"
    );
    assert_eq!(f.metadata["com.github.apple.coremltools.version"], "9.0");
    let s = open(&package("decode_step_ios18_stateful"))
        .unwrap()
        .facts()
        .unwrap();
    assert_eq!(s.states.len(), 8);
    assert_eq!(
        s.states[0].kind.array().unwrap().shape_text(),
        "[1, 2, 4096, 16]"
    );
}

#[test]
fn single_mlmodel_file_is_described_and_sized_by_its_file() {
    let path = data().join("neural_network.mlmodel");
    let f = open(&path).unwrap().facts().unwrap();
    assert_eq!(f.format, "mlmodel");
    assert_eq!(f.model_type, "neuralNetwork");
    assert_eq!(f.deployment_target, Some("iOS 13"));
    assert_eq!(f.stored_bytes, fs::metadata(&path).unwrap().len());
    assert!(f.weights.is_none());
    assert_eq!(f.inputs[0].name, "features");
    assert_eq!(f.outputs[0].name, "scores");
    let rec = recorded();
    assert_eq!(
        f.stored_bytes,
        rec["neural_network.mlmodel"]["file_bytes"]
            .as_u64()
            .unwrap()
    );
}

fn expectation(rec: &Value) -> DecodeStepExpectation {
    let c = &rec["config"];
    DecodeStepExpectation {
        layers: c["layers"].as_u64(),
        kv_heads: c["kv_heads"].as_u64(),
        kv_head_dim: c["kv_head_dim"].as_u64(),
        vocab_size: c["vocab"].as_u64(),
        io_dtype: Some(ArrayDataType::Float16),
        context: Some(4096),
        ..Default::default()
    }
}

#[test]
fn good_decode_steps_meet_the_contract() {
    let rec = recorded();
    for name in [
        "decode_step_ios16",
        "decode_step_ios17",
        "decode_step_ios18",
        "decode_step_ios18_stateful",
        "separate_process_a",
        "int4_block32_ios18",
    ] {
        let r = if rec[name].get("config").is_some() {
            &rec[name]
        } else {
            &rec[rec[name]["compressed_from"].as_str().unwrap()]
        };
        let facts = open(&package(name)).unwrap().facts().unwrap();
        let d = check_decode_step(&facts, &expectation(r));
        assert!(d.is_ok(), "{name}: {:?}", d.mismatches);
        let form = if name.ends_with("stateful") {
            CacheForm::States
        } else {
            CacheForm::InputsOutputs
        };
        assert_eq!(d.form, form, "{name}");
        // Without expectations the architecture is read from the model.
        let read = check_decode_step(&facts, &DecodeStepExpectation::default());
        assert!(read.is_ok(), "{name}: {:?}", read.mismatches);
        assert_eq!(read.layers, r["config"]["layers"].as_u64());
        assert_eq!(read.kv_heads, r["config"]["kv_heads"].as_u64());
        assert_eq!(read.kv_head_dim, r["config"]["kv_head_dim"].as_u64());
        assert_eq!(read.vocab_size, r["config"]["vocab"].as_u64());
        assert_eq!(read.io_dtype.as_deref(), Some("fp16"));
        assert_eq!(read.max_context, Some(4096));
    }
    // The example: 4 layers of 4 heads of 32, vocab 512.
    let facts = open(&example().join("omnicoder_decode_step.mlpackage"))
        .unwrap()
        .facts()
        .unwrap();
    let d = check_decode_step(&facts, &DecodeStepExpectation::default());
    assert!(d.is_ok(), "{:?}", d.mismatches);
    assert_eq!(
        (d.layers, d.kv_heads, d.kv_head_dim, d.vocab_size),
        (Some(4), Some(4), Some(32), Some(512))
    );
}

fn mismatches(name: &str, expect: &DecodeStepExpectation) -> Vec<(Subject, String)> {
    let facts = open(&package(name)).unwrap().facts().unwrap();
    check_decode_step(&facts, expect)
        .mismatches
        .into_iter()
        .map(|m| (m.subject, m.to_string()))
        .collect()
}

#[test]
fn broken_decode_steps_are_named_precisely() {
    let rec = recorded();
    let tiny = expectation(&rec["decode_step_ios16"]);
    assert_eq!(
        mismatches("broken_missing_nv_lat_2", &tiny),
        vec![(
            Subject::CacheOutputs,
            "expected outputs `nv_lat_{i}` for every layer i in 0..4, but the model has no output `nv_lat_2` (it has `nv_lat_0`, `nv_lat_1`, `nv_lat_3`)".to_string()
        )]
    );
    assert_eq!(
        mismatches("broken_kv_heads_4", &tiny),
        vec![(
            Subject::KvHeads,
            "expected 2, but the model's caches have kv_heads 4 (the model's `k_lat_0` is fp16 [1, 4, 1..4096, 16])".to_string()
        )]
    );
    assert_eq!(
        mismatches("broken_fp32_caches", &tiny),
        vec![(
            Subject::IoDtype,
            "expected fp16, but the model's `k_lat_0` is fp32 [1, 2, 1..4096, 16]".to_string()
        )]
    );
    assert_eq!(
        mismatches("broken_seq_upper_2048", &tiny),
        vec![(
            Subject::Context,
            "expected a context of 4096 tokens, but the model's sequence axis reaches only 2048 (the model's `k_lat_0` is fp16 [1, 2, 1..2048, 16])".to_string()
        )]
    );
    assert_eq!(
        mismatches("broken_int64_input_ids", &tiny),
        vec![(
            Subject::InputIds,
            "expected int32 [1, 1] (Core ML has no int64 multi-arrays), but the model's `input_ids` is int64 (array data type code 131136) [1, 1]".to_string()
        )]
    );
    // More layers than the manifest says.
    let three = DecodeStepExpectation {
        layers: Some(3),
        ..tiny.clone()
    };
    assert_eq!(
        mismatches("decode_step_ios16", &three),
        vec![(
            Subject::Layers,
            "expected 3, but the model has cache inputs for 4 layers (`k_lat_0` … `k_lat_3`)"
                .to_string()
        )]
    );
    let six = DecodeStepExpectation {
        layers: Some(6),
        ..tiny.clone()
    };
    assert_eq!(
        mismatches("decode_step_ios16", &six),
        vec![(
            Subject::Layers,
            "expected 6, but the model has cache inputs for 4 layers (`k_lat_0` … `k_lat_3`)"
                .to_string()
        )]
    );
    let mut past = tiny.clone();
    past.names.cache_inputs = ["past_k_{i}".into(), "past_v_{i}".into()];
    assert_eq!(
        mismatches("decode_step_ios16", &past),
        vec![(
            Subject::CacheInputs,
            "expected cache inputs `past_k_{i}` for 4 layers, but the model has no cache inputs named `past_k_{i}` (its inputs: `input_ids` … `v_lat_3`)".to_string()
        )]
    );
    // Other names than the model's.
    let mut renamed = tiny.clone();
    renamed.names.logits = "scores".into();
    let m = mismatches("decode_step_ios16", &renamed);
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].0, Subject::Logits);
    assert!(
        m[0].1
            .contains("the model has no output `scores` (its outputs: `logits` … `nv_lat_3`)"),
        "{}",
        m[0].1
    );
    // A stateful model whose states are shorter than the context.
    let long = DecodeStepExpectation {
        context: Some(8192),
        ..tiny
    };
    let m = mismatches("decode_step_ios18_stateful", &long);
    assert_eq!(m.len(), 1);
    assert!(
        m[0].1.contains("the model's cache states hold 4096 tokens"),
        "{}",
        m[0].1
    );
}

fn entry_bytes(e: &PackageEntry) -> Vec<u8> {
    match &e.source {
        EntrySource::Bytes(b) => b.clone(),
        EntrySource::File(p) => fs::read(p).unwrap(),
    }
}

#[test]
fn separate_process_conversions_rewrite_to_identical_packages() {
    let a = package("separate_process_a");
    let b = package("separate_process_b");
    let model = "Data/com.apple.CoreML/model.mlmodel";
    // coremltools' own outputs differ.
    assert_ne!(
        fs::read(a.join("Manifest.json")).unwrap(),
        fs::read(b.join("Manifest.json")).unwrap()
    );
    assert_ne!(
        fs::read(a.join(model)).unwrap(),
        fs::read(b.join(model)).unwrap()
    );
    let ea = open(&a).unwrap().reproducible_entries().unwrap();
    let eb = open(&b).unwrap().reproducible_entries().unwrap();
    let paths: Vec<&str> = ea.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "Data/com.apple.CoreML/model.mlmodel",
            "Data/com.apple.CoreML/weights/weight.bin",
            "Manifest.json"
        ]
    );
    assert_eq!(ea.len(), eb.len());
    for (x, y) in ea.iter().zip(&eb) {
        assert_eq!(x.path, y.path);
        assert_eq!(entry_bytes(x), entry_bytes(y), "{}", x.path);
    }
    // weight.bin is copied as it is.
    assert!(matches!(&ea[1].source, EntrySource::File(p) if p.ends_with("weights/weight.bin")));
}

#[test]
fn rewritten_package_reads_back_with_the_same_facts() {
    let tmp = tempfile::tempdir().unwrap();
    for name in [
        "decode_step_ios18_stateful",
        "int4_block32_ios18",
        "separate_process_a",
    ] {
        let m = open(&package(name)).unwrap();
        let out = tmp.path().join(format!("{name}.mlpackage"));
        omnipack_coreml::write_package(&m.reproducible_entries().unwrap(), &out).unwrap();
        let r = open(&out).unwrap();
        let (mut f0, f1) = (m.facts().unwrap(), r.facts().unwrap());
        f0.metadata.remove(omnipack_coreml::CONVERSION_DATE_KEY);
        assert_eq!(f0, f1, "{name}");
        // The typed views agree, the date aside; rewriting again changes nothing.
        let mut want = m.model.clone();
        want.description
            .as_mut()
            .unwrap()
            .metadata
            .as_mut()
            .unwrap()
            .user_defined
            .remove(omnipack_coreml::CONVERSION_DATE_KEY);
        assert_eq!(r.model, want);
        assert_eq!(
            omnipack_coreml::canonical_model_bytes(&r.model_bytes).unwrap(),
            r.model_bytes
        );
        let manifest = fs::read_to_string(out.join("Manifest.json")).unwrap();
        assert!(
            manifest.starts_with(
                "{\n    \"fileFormatVersion\": \"1.0.0\",\n    \"itemInfoEntries\": {\n"
            )
        );
        assert!(!String::from_utf8_lossy(&r.model_bytes).contains("conversion_date"));
        assert!(String::from_utf8_lossy(&m.model_bytes).contains("conversion_date"));
        // Writing into an existing folder is refused.
        assert!(omnipack_coreml::write_package(&m.reproducible_entries().unwrap(), &out).is_err());
    }
}

#[test]
fn blob_writer_reproduces_coremltools_weight_files() {
    let mut names: Vec<String> = recorded()
        .keys()
        .filter(|k| !k.ends_with(".mlmodel"))
        .cloned()
        .collect();
    names.push("example".into());
    for name in names {
        let path = if name == "example" {
            example()
                .join("omnicoder_decode_step.mlpackage/Data/com.apple.CoreML/weights/weight.bin")
        } else {
            package(&name).join("Data/com.apple.CoreML/weights/weight.bin")
        };
        let bytes = fs::read(&path).unwrap();
        let index = BlobIndex::read(&mut Cursor::new(&bytes), bytes.len() as u64).unwrap();
        let mut w = BlobWriter::new(Vec::new(), index.records.len() as u32).unwrap();
        for r in &index.records {
            let data = blob::read_blob_data(&mut Cursor::new(&bytes), r).unwrap();
            assert_eq!(
                w.write_blob(r.data_type, &data, r.padding_bits).unwrap(),
                r.metadata_offset
            );
        }
        let (out, len) = w.finish().unwrap();
        assert_eq!(len, bytes.len() as u64, "{name}");
        assert!(out == bytes, "{name}: the rewritten weight.bin differs");
        let (offsets, total) = blob::layout(index.records.iter().map(|r| r.size));
        assert_eq!(total, bytes.len() as u64);
        assert_eq!(
            offsets,
            index
                .records
                .iter()
                .map(|r| r.metadata_offset)
                .collect::<Vec<_>>()
        );
    }
}
