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

#[test]
fn schema_validates_and_rejects_unknown_fields() {
    let schema: serde_json::Value =
        serde_json::from_str(&omnipack_summary::summary_schema_json()).unwrap();
    let v = jsonschema::validator_for(&schema).unwrap();
    let mut summary = serde_json::json!({
        "summary_version": 1,
        "generator": "omnipack 0.1.0",
        "package": {"name": "p", "version": "1", "bundle_id": "com.example.p"},
        "manifest_sha256": "00",
        "inputs": [{"path": "m.yaml", "sha256": "00"}],
        "bundles": [],
        "tiers": [{
            "name": "t", "device_memory_bytes": 1, "memory_limit_bytes": 1, "bundles": [],
            "memory": {"runtime_overhead_bytes": 0, "weights_resident_bytes": 0, "activations_bytes": 0,
                       "kv_cache_bytes": 0, "lazy_peak_bytes": 0, "peak_bytes": 0, "min_headroom_bytes": 0,
                       "headroom_bytes": -5},
            "fits": false
        }]
    });
    assert!(
        v.is_valid(&summary),
        "{:?}",
        v.iter_errors(&summary)
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
    );
    let parsed: omnipack_summary::Summary = serde_json::from_value(summary.clone()).unwrap();
    assert_eq!(parsed.tiers[0].memory.headroom_bytes, -5);
    summary["extra"] = serde_json::json!(1);
    assert!(!v.is_valid(&summary));
}
