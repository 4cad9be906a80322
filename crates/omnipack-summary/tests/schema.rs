//! The committed summary schema is exactly what the types generate, and it accepts a summary
//! built from the types while rejecting unknown fields.

use std::path::Path;

#[test]
fn committed_schema_is_up_to_date() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../schemas/mobile_packager_summary.schema.json");
    let committed =
        std::fs::read_to_string(&path).expect("schemas/mobile_packager_summary.schema.json exists");
    assert_eq!(
        committed,
        omnipack_summary::summary_schema_json(),
        "regenerate with `cargo run -q -- schema summary > schemas/mobile_packager_summary.schema.json`"
    );
}

const SHA: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// A summary as a build writes it: one native bundle, one data bundle, one tier.
fn summary() -> serde_json::Value {
    serde_json::json!({
        "summary_version": 1,
        "generator": "omnipack 0.1.0",
        "package": {"name": "p", "version": "1", "bundle_id": "com.example.p", "asset_pack_prefix": "p"},
        "manifest_sha256": SHA,
        "inputs": [{"path": "m.yaml", "sha256": SHA}],
        "bundles": [
            {"id": "text-int4-g32", "component": "text", "role": "text_decode_step", "runtime": "mlx",
             "delivery": "on_demand", "residency": "always", "file": "bundles/text-int4-g32.zip",
             "size_bytes": 10, "sha256": SHA,
             "asset_pack": {"id": "p-text-int4-g32", "manifest": "asset-packs/text-int4-g32/Manifest.json"},
             "quantization": {"format": "int4", "group_size": 32, "bits": 4, "mode": "affine", "method": "mse"},
             "quality": {"sqnr_db": 20.5, "worst_tensor": "w", "worst_sqnr_db": 18.0, "rel_rms_error": 0.09},
             "parameters": 1, "weights_bytes": 1, "resident_bytes": 1,
             "files": [{"path": "weights.safetensors", "size_bytes": 1, "sha256": SHA}]},
            {"id": "tokenizer", "component": "tokenizer", "role": "data",
             "delivery": "essential", "residency": "always", "file": "bundles/tokenizer.zip",
             "size_bytes": 10, "sha256": SHA,
             "asset_pack": {"id": "p-tokenizer", "manifest": "asset-packs/tokenizer/Manifest.json"},
             "quality": null, "parameters": 0, "weights_bytes": 0, "resident_bytes": 0, "files": []}
        ],
        "tiers": [{
            "name": "t", "device_memory_bytes": 1, "memory_limit_bytes": 1, "required_bytes": 0,
            "bundles": ["text-int4-g32", "tokenizer"],
            "kv_cache": {"tokens": 2048, "format": "u8", "paging": {"page_len": 256, "resident_pages": 8}},
            "memory": {"runtime_overhead_bytes": 0, "weights_resident_bytes": 0, "activations_bytes": 0,
                       "kv_cache_bytes": 0, "lazy_peak_bytes": 0, "peak_bytes": 0, "min_headroom_bytes": 0,
                       "headroom_bytes": -5},
            "fits": false
        }]
    })
}

fn validator() -> jsonschema::Validator {
    let schema: serde_json::Value =
        serde_json::from_str(&omnipack_summary::summary_schema_json()).unwrap();
    jsonschema::validator_for(&schema).unwrap()
}

#[test]
fn schema_validates_and_rejects_unknown_fields() {
    let v = validator();
    let mut summary = summary();
    assert!(
        v.is_valid(&summary),
        "{:?}",
        v.iter_errors(&summary)
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
    );
    let parsed: omnipack_summary::Summary = serde_json::from_value(summary.clone()).unwrap();
    assert_eq!(parsed.tiers[0].memory.headroom_bytes, -5);
    assert_eq!(serde_json::to_value(&parsed).unwrap(), summary);
    summary["extra"] = serde_json::json!(1);
    assert!(!v.is_valid(&summary));
}

/// Each edit of a valid summary the schema must refuse (pointer, new value).
#[test]
fn schema_rejects_values_outside_the_closed_sets() {
    let v = validator();
    let cases = [
        ("/bundles/0/delivery", serde_json::json!("later")),
        ("/bundles/0/residency", serde_json::json!("sometimes")),
        ("/bundles/0/role", serde_json::json!("text")),
        ("/bundles/0/runtime", serde_json::json!("tflite")),
        ("/bundles/0/quantization/format", serde_json::json!("int5")),
        ("/bundles/0/quantization/mode", serde_json::json!("linear")),
        ("/bundles/0/quantization/method", serde_json::json!("gptq")),
        (
            "/bundles/0/quality/rel_rms_error",
            serde_json::json!("small"),
        ),
        ("/tiers/0/kv_cache/format", serde_json::json!("f8")),
        ("/bundles/0/sha256", serde_json::json!("xyz")),
        ("/bundles/0/sha256", serde_json::json!(SHA.to_uppercase())),
        ("/manifest_sha256", serde_json::json!("00")),
        ("/inputs/0/sha256", serde_json::json!(format!("{SHA}0"))),
        ("/bundles/0/files/0/sha256", serde_json::json!("")),
        ("/summary_version", serde_json::json!(2)),
        (
            "/bundles/0/asset_pack/id",
            serde_json::json!("com.example.p.text-int4-g32"),
        ),
        ("/bundles/0/id", serde_json::json!("Text/int4")),
        ("/tiers/0/bundles/0", serde_json::json!("../x")),
        ("/tiers/0/bundles/0", serde_json::json!(7)),
    ];
    for (pointer, value) in cases {
        let mut s = summary();
        *s.pointer_mut(pointer).unwrap() = value.clone();
        assert!(!v.is_valid(&s), "{pointer} = {value} was accepted");
    }
    // A required field removed.
    for (object, field) in [
        ("/tiers/0", "required_bytes"),
        ("/bundles/0", "delivery"),
        ("/bundles/0", "runtime"),
        ("/bundles/0", "quantization"),
        ("/bundles/0", "quality"),
        ("", "summary_version"),
    ] {
        let mut s = summary();
        s.pointer_mut(object)
            .unwrap()
            .as_object_mut()
            .unwrap()
            .remove(field);
        assert!(!v.is_valid(&s), "{object} without {field} was accepted");
    }
    // A data bundle takes neither runtime nor quantization.
    let mut s = summary();
    s["bundles"][1]["runtime"] = serde_json::json!("mlx");
    assert!(!v.is_valid(&s));
    let mut s = summary();
    s["bundles"][1]["quantization"] = serde_json::json!({"format": "f16"});
    assert!(!v.is_valid(&s));
}
