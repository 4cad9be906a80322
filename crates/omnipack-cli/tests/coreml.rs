//! Core ML components end to end on the real binary: `validate`, `plan`, `build` and `inspect`
//! of `source.mlpackage` models and of exporters whose output is a `.mlpackage`.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{omnipack, s, stdout, text};
use omnipack_build::bundle_zip::{read_zip_entries, read_zip_entry};
use serde_json::Value;

fn data(name: &str) -> PathBuf {
    common::repo()
        .join("crates/omnipack-coreml/tests/data")
        .join(name)
        .canonicalize()
        .expect("the fixture exists")
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// A project whose Core ML decode step is `model.mlpackage` (a copy of `fixture`), with no
/// `architecture`.
fn project(fixture: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    copy_dir(&data(fixture), &d.path().join("model.mlpackage"));
    fs::write(
        d.path().join("omnipack.yaml"),
        r#"omnipack: 1
package: { name: t, version: 1.0.0, bundle_id: com.example.t }
tiers:
  - { name: small, device_memory: 4GiB, memory_limit: 2GiB, max_seq_len: 2048 }
components:
  - name: text
    role: text_decode_step
    artifact: step
    runtime: coreml
    compute_units: cpu_and_ne
    source: { mlpackage: model.mlpackage }
    max_seq_len: 4096
"#,
    )
    .unwrap();
    d
}

fn build(dir: &Path) -> PathBuf {
    let out = dir.join("out");
    let o = omnipack(&[
        "build",
        s(&dir.join("omnipack.yaml")),
        "--out",
        s(&out),
        "--cache-dir",
        s(&dir.join("cache")),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    out
}

#[test]
fn plan_sizes_the_model_and_shows_size_source_model() {
    let d = project("separate_process_a.mlpackage");
    let o = omnipack(&[
        "plan",
        s(&d.path().join("omnipack.yaml")),
        "--format",
        "json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let plan: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let c = &plan["components"][0];
    assert_eq!(c["size_source"], "model");
    let facts = omnipack_coreml::open(&data("separate_process_a.mlpackage"))
        .unwrap()
        .facts()
        .unwrap();
    assert_eq!(c["parameters"], facts.weights.unwrap().parameters);
    // The architecture and the cache type were read from the model.
    let arch = &c["component"]["architecture"];
    assert_eq!(arch["layers"], 4);
    assert_eq!(arch["kv_heads"], 2);
    assert_eq!(arch["kv_head_dim"], 16);
    assert_eq!(arch["hidden_size"], 32);
    assert_eq!(arch["vocab_size"], 64);
    assert_eq!(c["component"]["kv_cache"]["io_dtype"], "f16");
    assert_eq!(plan["bundles"][0]["weights_bytes"], facts.stored_bytes);
    // The stages carry the Core ML options.
    let q = plan["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["kind"] == "quantize")
        .unwrap();
    assert_eq!(q["params"]["coreml"]["output"], "step.mlpackage");
    assert_eq!(q["params"]["coreml"]["compression"], "f16");
    assert_eq!(q["params"]["coreml"]["deployment_target"], "iOS 17");
    let e = plan["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["kind"] == "export")
        .unwrap();
    assert_eq!(e["params"]["source"]["type"], "mlpackage");
    assert_eq!(e["params"]["source"]["contract"]["context"], 2048);
}

#[test]
fn build_ships_the_package_reproducibly_with_sidecars_from_the_model() {
    // Two conversions of one model in separate Python processes: their Manifest.json and
    // model.mlmodel differ; their bundles must not.
    let a = project("separate_process_a.mlpackage");
    let b = project("separate_process_b.mlpackage");
    assert_ne!(
        fs::read(a.path().join("model.mlpackage/Manifest.json")).unwrap(),
        fs::read(b.path().join("model.mlpackage/Manifest.json")).unwrap()
    );
    let out_a = build(a.path());
    let out_b = build(b.path());
    let zip_a = out_a.join("bundles/text-f16.zip");
    assert_eq!(
        fs::read(&zip_a).unwrap(),
        fs::read(out_b.join("bundles/text-f16.zip")).unwrap(),
        "the two conversions give different bundles"
    );

    let entries = read_zip_entries(&zip_a).unwrap();
    let names: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
    for want in [
        "bundle.json",
        "step.io.json",
        "step.mlpackage/Manifest.json",
        "step.mlpackage/Data/com.apple.CoreML/model.mlmodel",
        "step.mlpackage/Data/com.apple.CoreML/weights/weight.bin",
    ] {
        assert!(names.contains(&want), "{want} not in {names:?}");
    }
    for e in &entries {
        assert!(e.stored, "{} is compressed", e.path);
        if e.path.ends_with("weight.bin") {
            assert_eq!(e.data_start % 16384, 0, "weight.bin is not 16 KiB aligned");
        }
    }
    // The bundled package is the rewrite of the source (content-derived identifiers, no
    // conversion date), and it reads back with the same program.
    let manifest = read_zip_entry(&zip_a, "step.mlpackage/Manifest.json", 1 << 20).unwrap();
    let source = omnipack_coreml::open(&data("separate_process_a.mlpackage")).unwrap();
    let rewritten = source.reproducible_entries().unwrap();
    let expected = rewritten
        .iter()
        .find(|e| e.path == "Manifest.json")
        .unwrap();
    match &expected.source {
        omnipack_coreml::EntrySource::Bytes(bytes) => assert_eq!(&manifest, bytes),
        other => panic!("Manifest.json is {other:?}"),
    }
    let model = read_zip_entry(
        &zip_a,
        "step.mlpackage/Data/com.apple.CoreML/model.mlmodel",
        1 << 24,
    )
    .unwrap();
    assert!(
        !String::from_utf8_lossy(&model).contains(omnipack_coreml::CONVERSION_DATE_KEY),
        "the conversion date is still there"
    );

    // bundle.json records the Core ML storage.
    let bj: Value =
        serde_json::from_slice(&read_zip_entry(&zip_a, "bundle.json", 1 << 20).unwrap()).unwrap();
    assert_eq!(bj["runtime"], "coreml");
    assert_eq!(bj["quantization"]["format"], "f16");
    assert_eq!(bj["quantization"]["coreml"]["deployment_target"], "iOS 17");
    assert_eq!(bj["quantization"]["coreml"]["compressed_weights"], 0);
    // So does the summary, with the stored bytes planned exactly.
    let summary: Value =
        serde_json::from_slice(&fs::read(out_a.join("mobile_packager_summary.json")).unwrap())
            .unwrap();
    let sb = &summary["bundles"][0];
    assert_eq!(sb["quantization"]["coreml"]["format"], "f16");
    assert_eq!(sb["weights_bytes"], source.facts().unwrap().stored_bytes);

    // The io sidecar lists every feature as the model declares it.
    let io: Value =
        serde_json::from_slice(&read_zip_entry(&zip_a, "step.io.json", 1 << 20).unwrap()).unwrap();
    let inputs = io["inputs"].as_array().unwrap();
    let ids = inputs.iter().find(|f| f["name"] == "input_ids").unwrap();
    assert_eq!(ids["dtype"], "int32");
    assert_eq!(ids["shape"], serde_json::json!([1, 1]));
    let k0 = inputs.iter().find(|f| f["name"] == "k_lat_0").unwrap();
    assert_eq!(k0["dtype"], "float16");
    assert_eq!(k0["shape"], serde_json::json!([1, 2, -1, 16]));
    assert_eq!(
        k0["flexible_axes"],
        serde_json::json!([{"axis": 2, "lower": 1, "upper": 4096}])
    );
    let outputs = io["outputs"].as_array().unwrap();
    assert!(outputs.iter().any(|f| f["name"] == "nv_lat_3"));
    assert!(outputs.iter().any(|f| f["name"] == "logits"));
    assert_eq!(inputs.len(), 9);
    assert_eq!(io["states"], serde_json::json!([]));

    // verify agrees with what was written.
    let v = omnipack(&["verify", s(&out_a)]);
    assert!(v.status.success(), "{}", text(&v));
}

/// A project whose Core ML decode step comes from an exporter that copies `fixture`.
fn exporter_project(fixture: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let m = format!(
        r#"omnipack: 1
package: {{ name: t, version: 1.0.0, bundle_id: com.example.t }}
tiers:
  - {{ name: small, device_memory: 4GiB, memory_limit: 2GiB }}
components:
  - name: text
    role: text_decode_step
    runtime: coreml
    compute_units: cpu_and_ne
    source:
      command:
        run: [cp, -R, "{}", "{{out}}/step.mlpackage"]
        outputs: [step.mlpackage]
    architecture: {{ layers: 4, kv_heads: 2, kv_head_dim: 16, hidden_size: 32, vocab_size: 64 }}
    max_seq_len: 2048
    kv_cache: {{ io_dtype: f16 }}
    size: 200KiB
"#,
        data(fixture).display()
    );
    fs::write(d.path().join("omnipack.yaml"), m).unwrap();
    d
}

#[test]
fn an_exporters_mlpackage_is_checked_before_anything_is_packaged() {
    let d = exporter_project("broken_missing_nv_lat_2.mlpackage");
    let out = d.path().join("out");
    let o = omnipack(&[
        "build",
        s(&d.path().join("omnipack.yaml")),
        "--out",
        s(&out),
        "--cache-dir",
        s(&d.path().join("cache")),
    ]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains("breaks the decode-step contract"), "{t}");
    assert!(t.contains("`nv_lat_2`"), "{t}");
    assert!(!out.join("bundles").exists(), "something was packaged");
}

#[test]
fn an_exporters_mlpackage_is_stored_byte_reproducibly() {
    let a = exporter_project("separate_process_a.mlpackage");
    let b = exporter_project("separate_process_b.mlpackage");
    let out_a = build(a.path());
    let out_b = build(b.path());
    let zip = |out: &Path| {
        let dir = out.join("bundles");
        let name = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|x| x == "zip"))
            .unwrap();
        fs::read(name).unwrap()
    };
    assert_eq!(zip(&out_a), zip(&out_b));
}

#[test]
fn inspect_describes_a_core_ml_model() {
    let o = omnipack(&["inspect", s(&data("decode_step_ios18_stateful.mlpackage"))]);
    assert!(o.status.success(), "{}", text(&o));
    insta::assert_snapshot!("inspect_coreml_stateful", stdout(&o));
    let o = omnipack(&["inspect", s(&data("int4_block32_ios18.mlpackage"))]);
    assert!(o.status.success(), "{}", text(&o));
    insta::assert_snapshot!("inspect_coreml_int4", stdout(&o));
    let o = omnipack(&["inspect", s(&data("neural_network.mlmodel"))]);
    assert!(o.status.success(), "{}", text(&o));
    insta::assert_snapshot!("inspect_coreml_mlmodel", stdout(&o));
    // A broken package is a located error, not a panic.
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("broken.mlpackage");
    copy_dir(&data("decode_step_ios16.mlpackage"), &p);
    let wb = p.join("Data/com.apple.CoreML/weights/weight.bin");
    let bytes = fs::read(&wb).unwrap();
    fs::write(&wb, &bytes[..bytes.len() / 2]).unwrap();
    let o = omnipack(&["inspect", s(&p)]);
    assert!(!o.status.success());
    assert!(text(&o).contains("weight.bin"), "{}", text(&o));
}

/// The sha256 of `weight.bin` coremltools 9.0 wrote for compression `name`, as recorded by the
/// fixture generator in `fixtures.json`.
fn coremltools_weight_bin_sha256(name: &str) -> String {
    let records: Value = serde_json::from_slice(&fs::read(data("fixtures.json")).unwrap()).unwrap();
    records["compressions"][name]["weight_bin"]["sha256"]
        .as_str()
        .unwrap_or_else(|| panic!("fixtures.json records compression {name}"))
        .to_string()
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn the_committed_manifests_ship_core_ml_int4_on_3gb_and_f16_above_as_coremltools_writes_them() {
    let dir = tempfile::tempdir().unwrap();
    let repo = common::repo();
    let weight_bin = "omnicoder_decode_step.mlpackage/Data/com.apple.CoreML/weights/weight.bin";
    for (manifest, bundle, expected) in [
        (
            "manifests/iphone-3gb.yaml",
            "text_coreml-int4-g32",
            // The example compressed by coremltools' linear_quantize_weights, int4 blocks of 32.
            coremltools_weight_bin_sha256("omnicoder_decode_step_ios18_int4_b32"),
        ),
        (
            "manifests/release.yaml",
            "text_coreml-f16",
            // f16: the model's own weights, untouched.
            sha256_hex(
                &fs::read(repo.join(
                    "examples/omnicoder-tiny/omnicoder_decode_step_ios18.mlpackage/Data/com.apple.CoreML/weights/weight.bin",
                ))
                .unwrap(),
            ),
        ),
    ] {
        let out = dir.path().join(bundle);
        let o = omnipack(&[
            "build",
            s(&repo.join(manifest)),
            "--out",
            s(&out),
            "--cache-dir",
            s(&dir.path().join("cache")),
        ]);
        assert!(o.status.success(), "{}", text(&o));
        let zip = out.join(format!("bundles/{bundle}.zip"));
        let written = read_zip_entry(&zip, weight_bin, 1 << 30).unwrap();
        assert_eq!(sha256_hex(&written), expected, "{manifest}: {bundle}");
        let summary: Value =
            serde_json::from_slice(&fs::read(out.join("mobile_packager_summary.json")).unwrap())
                .unwrap();
        let b = summary["bundles"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["id"] == bundle)
            .unwrap_or_else(|| panic!("{manifest} ships {bundle}"));
        assert_eq!(b["quantization"]["coreml"]["deployment_target"], "iOS 18");
    }
}
