//! The planner on small manifests with hand-computed numbers.

use std::collections::BTreeMap;

use omnipack_manifest::{Delivery, Format, Manifest, resolve};
use omnipack_plan::{
    ComponentSizer, Plan, PlanFailure, PlanWarning, SizeSource, StageKind, plan_with_sizers,
    with_measured_sizes,
};
use omnipack_quant::{Dtype, TensorInfo};
use serde_json::json;

const MIB: u64 = 1 << 20;

/// One f16 `[1024, 1024]` weight: f16 = 2 MiB; int8 g64 = 1 MiB codes + 64 KiB scales and
/// biases = 1_114_112; int4 g64 = 512 KiB + 64 KiB = 589_824.
fn square() -> ComponentSizer {
    ComponentSizer::native(
        vec![TensorInfo {
            name: "w.weight".into(),
            dtype: Dtype::F16,
            shape: vec![1024, 1024],
        }],
        vec![],
        None,
    )
}

fn manifest(v: serde_json::Value) -> omnipack_manifest::ResolvedManifest {
    let m: Manifest = serde_json::from_value(v).expect("a manifest");
    resolve(&m)
}

fn base(
    tiers: serde_json::Value,
    components: serde_json::Value,
) -> omnipack_manifest::ResolvedManifest {
    manifest(json!({
        "omnipack": 1,
        "package": {"name": "t", "version": "1", "bundle_id": "com.example.t"},
        "runtime_overhead": 10 * MIB,
        "tiers": tiers,
        "components": components,
    }))
}

fn arch() -> serde_json::Value {
    json!({"layers": 4, "kv_heads": 4, "kv_head_dim": 32, "hidden_size": 128, "vocab_size": 512})
}

fn text(formats: serde_json::Value) -> serde_json::Value {
    json!({
        "name": "text", "role": "text_decode_step",
        "source": {"safetensors": "m.safetensors", "prefix": "text."},
        "architecture": arch(), "max_seq_len": 2048,
        "quantization": {"format": formats, "group_size": 64},
    })
}

fn ok(p: Result<Plan, PlanFailure>) -> Plan {
    match p {
        Ok(p) => p,
        Err(f) => panic!("plan failed: {f}"),
    }
}

#[test]
fn breakdown_by_hand() {
    // text f16: 2 MiB weights; KV f16 2048 tokens = 2*4*4*2048*64 = 4 MiB;
    // activations (the decode-step default at 2048 tokens, heads = 128 / 32 = 4)
    // 4*512 + 4*(4*4*2048 + 32*128) = 149_504. decoder: 2 MiB + 1 MiB activations, lazy.
    let m = base(
        json!([{"name": "a", "device_memory": 1 << 30, "memory_limit": 100 * MIB}]),
        json!([
            text(json!("f16")),
            {"name": "dec", "role": "image_decoder", "source": {"safetensors": "m.safetensors"},
             "activation_memory": MIB}
        ]),
    );
    let p = ok(plan_with_sizers(&m, &[square(), square()], &[]));
    let t = &p.tiers[0].entry;
    let mem = &t.memory;
    assert_eq!(mem.runtime_overhead_bytes, 10 * MIB);
    assert_eq!(mem.weights_resident_bytes, 2 * MIB);
    assert_eq!(mem.activations_bytes, 149_504);
    assert_eq!(mem.kv_cache_bytes, 4 * MIB);
    assert_eq!(mem.lazy_peak_bytes, 3 * MIB);
    assert_eq!(mem.peak_bytes, 19 * MIB + 149_504);
    assert_eq!(mem.headroom_bytes, (81 * MIB - 149_504) as i64);
    assert!(t.fits);
    assert_eq!(t.bundles, ["text-f16", "dec-f16"]);
    assert_eq!(t.kv_cache.as_ref().map(|k| k.tokens), Some(2048));
}

#[test]
fn best_fit_walks_down_the_preference_list() {
    // Fixed part: 10 MiB + 149_504 + 4 MiB KV = 14 MiB + 149_504.
    let fixed = 14 * MIB + 149_504;
    let cases = [
        (fixed + 2 * MIB, Format::F16, 0),
        (fixed + 2 * MIB - 1, Format::Int8, 1),
        (fixed + 1_114_112, Format::Int8, 1),
        (fixed + 1_114_111, Format::Int4, 2),
        (fixed + 589_824, Format::Int4, 2),
    ];
    for (limit, format, rank) in cases {
        let m = base(
            json!([{"name": "a", "device_memory": 1 << 30, "memory_limit": limit}]),
            json!([text(json!(["f16", "int8", "int4"]))]),
        );
        let p = ok(plan_with_sizers(&m, &[square()], &[]));
        let c = &p.tiers[0].choices[0];
        assert_eq!(
            (c.format, c.preference_rank),
            (format, rank),
            "limit {limit}"
        );
        assert!(p.tiers[0].entry.fits);
    }
    let m = base(
        json!([{"name": "a", "device_memory": 1 << 30, "memory_limit": fixed + 589_823}]),
        json!([text(json!(["f16", "int8", "int4"]))]),
    );
    let f = plan_with_sizers(&m, &[square()], &[]).expect_err("does not fit");
    assert_eq!(
        f.diagnostics[0].path.as_deref(),
        Some("tiers[0].memory_limit")
    );
    let plan = f.plan.expect("partial plan");
    assert!(!plan.tiers[0].entry.fits);
    assert_eq!(plan.tiers[0].choices[0].format, Format::Int4);
    assert_eq!(plan.tiers[0].entry.memory.headroom_bytes, -1);
}

#[test]
fn ties_keep_earlier_components_at_better_quality() {
    // Two identical components, room for exactly one at f16: the first keeps f16.
    let second = json!({"name": "second", "role": "data", "source": {"safetensors": "m.safetensors"},
        "residency": "always", "quantization": {"format": ["f16", "int8"]}});
    let mut first = text(json!(["f16", "int8"]));
    first["role"] = json!("video_decoder");
    first["residency"] = json!("always");
    first.as_object_mut().map(|o| o.remove("architecture"));
    // `data` counts only resident_memory, so make the second a decoder kept resident too.
    let mut second = second;
    second["role"] = json!("image_decoder");
    let m = base(
        json!([{"name": "a", "device_memory": 1 << 30, "memory_limit": 10 * MIB + 2 * MIB + 1_114_112}]),
        json!([first, second]),
    );
    let p = ok(plan_with_sizers(&m, &[square(), square()], &[]));
    let formats: Vec<Format> = p.tiers[0].choices.iter().map(|c| c.format).collect();
    assert_eq!(formats, [Format::F16, Format::Int8]);
}

#[test]
fn per_tier_overrides_are_honoured() {
    let mut c = text(json!(["f16", "int8"]));
    c["quantization"]["tiers"] = json!({"small": {"format": "int4", "group_size": 32}});
    let m = base(
        json!([
            {"name": "small", "device_memory": 1 << 30, "memory_limit": 100 * MIB},
            {"name": "big", "device_memory": 1 << 30, "memory_limit": 100 * MIB}
        ]),
        json!([c]),
    );
    let p = ok(plan_with_sizers(&m, &[square()], &[]));
    assert_eq!(p.tiers[0].choices[0].bundle, "text-int4-g32");
    assert_eq!(p.tiers[1].choices[0].bundle, "text-f16");
    // int4 g32: 512 KiB codes + 2 * 2 * 32768 = 655_360 bytes.
    assert_eq!(
        p.bundle("text-int4-g32").map(|b| b.weights_bytes),
        Some(655_360)
    );
    // Used by one tier each, so neither may stay essential.
    for b in &p.bundles {
        assert_eq!(b.delivery, Delivery::OnDemand);
    }
    // Two about the delivery, one about the default activations of `text`.
    assert_eq!(p.warnings.len(), 3, "{:?}", p.warnings);
}

#[test]
fn the_default_activations_follow_the_tier_context_and_are_warned_about() {
    let m = base(
        json!([
            {"name": "short", "device_memory": 1 << 30, "memory_limit": 100 * MIB, "max_seq_len": 512},
            {"name": "long", "device_memory": 1 << 30, "memory_limit": 100 * MIB}
        ]),
        json!([text(json!("f16"))]),
    );
    let p = ok(plan_with_sizers(&m, &[square()], &[]));
    // 4 * 512 + 4 * (4 * 4 * T + 32 * 128): T = 512 on `short`, 2048 (max_seq_len) on `long`.
    let by_hand = |t: u64| 4 * 512 + 4 * (4 * 4 * t + 32 * 128);
    for (tier, tokens) in [(0, 512), (1, 2048)] {
        let c = &p.tiers[tier].choices[0];
        assert_eq!(c.activation_source, "default");
        assert_eq!(c.activation_bytes, by_hand(tokens));
        assert_eq!(
            p.tiers[tier].entry.memory.activations_bytes,
            by_hand(tokens)
        );
    }
    let w: Vec<&PlanWarning> = p
        .warnings
        .iter()
        .filter(|w| w.message.contains("has no `activation_memory`"))
        .collect();
    assert_eq!(w.len(), 1, "{:?}", p.warnings);
    assert_eq!(w[0].path.as_deref(), Some("components[0]"));
    assert!(
        w[0].message.contains("at 512 tokens on tier `short`")
            && w[0].message.contains("at 2048 tokens on tier `long`"),
        "{}",
        w[0].message
    );

    // Declared: counted as written, no warning.
    let mut declared = text(json!("f16"));
    declared["activation_memory"] = json!(MIB);
    let m = base(
        json!([{"name": "a", "device_memory": 1 << 30, "memory_limit": 100 * MIB}]),
        json!([declared]),
    );
    let p = ok(plan_with_sizers(&m, &[square()], &[]));
    assert_eq!(p.tiers[0].choices[0].activation_source, "manifest");
    assert_eq!(p.tiers[0].entry.memory.activations_bytes, MIB);
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
}

#[test]
fn per_tier_exporters_get_one_bundle_and_export_per_tier() {
    let m = base(
        json!([
            {"name": "a", "device_memory": 1 << 30, "memory_limit": 2000 * MIB},
            {"name": "b", "device_memory": 1 << 30, "memory_limit": 2000 * MIB}
        ]),
        json!([{
            "name": "cm", "role": "text_decode_step", "runtime": "coreml", "compute_units": "cpu_and_ne",
            "architecture": arch(), "max_seq_len": 1024, "size": 500 * MIB,
            "source": {"command": {"run": ["exp", "--preset", "{tier}", "--out", "{out}"], "outputs": ["x.mlpackage"]}},
            "kv_cache": {"io_dtype": "f16"},
        }]),
    );
    let sizer = ComponentSizer::fixed(0, SizeSource::DeclaredSize, 500 * MIB);
    let p = ok(plan_with_sizers(&m, &[sizer], &[]));
    let ids: Vec<&str> = p.bundles.iter().map(|b| b.id.as_str()).collect();
    assert_eq!(ids, ["cm-f16-a", "cm-f16-b"]);
    let stages: Vec<&str> = p.stages.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(
        stages,
        [
            "export:cm:a",
            "export:cm:b",
            "package:cm-f16-a",
            "package:cm-f16-b"
        ]
    );
    assert_eq!(p.stages[2].depends_on, ["export:cm:a"]);
    // cpu_and_ne keeps the stored size; KV: f16 stored 2*4*4*1024*64 = 2 MiB plus Core ML
    // copies 4*4*4*1024*32*2 = 4 MiB.
    let mem = &p.tiers[0].entry.memory;
    assert_eq!(mem.weights_resident_bytes, 500 * MIB);
    assert_eq!(mem.kv_cache_bytes, 6 * MIB);
    assert_eq!(p.components[0].size_source, "declared_size");
}

#[test]
fn coreml_on_gpu_decompresses_and_warns_when_quantized() {
    let m = base(
        json!([{"name": "a", "device_memory": 1 << 30, "memory_limit": 2000 * MIB}]),
        json!([{
            "name": "cm", "role": "image_decoder", "runtime": "coreml", "compute_units": "cpu_and_gpu",
            "source": {"safetensors": "m.safetensors"},
            "quantization": {"format": "int4"},
        }]),
    );
    let p = ok(plan_with_sizers(&m, &[square()], &[]));
    // parameters x 2 = 2 MiB resident, although the file is 589_824 bytes.
    let b = &p.bundles[0];
    assert_eq!((b.weights_bytes, b.resident_bytes), (589_824, 2 * MIB));
    assert_eq!(p.tiers[0].entry.memory.lazy_peak_bytes, 2 * MIB);
    assert!(
        p.warnings
            .iter()
            .any(|w| w.message.contains("the file shrinks, the memory does not"))
    );
}

#[test]
fn data_components_count_only_resident_memory() {
    let m = base(
        json!([{"name": "a", "device_memory": 1 << 30, "memory_limit": 2000 * MIB}]),
        json!([{"name": "tok", "role": "data", "source": {"files": ["tok.json"]}, "resident_memory": 3 * MIB}]),
    );
    let p = ok(plan_with_sizers(
        &m,
        &[ComponentSizer::fixed(0, SizeSource::FileSizes, 12345)],
        &[],
    ));
    let mem = &p.tiers[0].entry.memory;
    assert_eq!(mem.weights_resident_bytes, 3 * MIB);
    assert_eq!(mem.activations_bytes, 0);
    assert_eq!(p.bundles[0].weights_bytes, 12345);
    assert_eq!(p.stages.len(), 2);
}

#[test]
fn stages_are_in_a_valid_order() {
    let m = base(
        json!([
            {"name": "a", "device_memory": 1 << 30, "memory_limit": 16 * MIB},
            {"name": "b", "device_memory": 1 << 30, "memory_limit": 100 * MIB}
        ]),
        json!([text(json!(["f16", "int8", "int4"])),
               {"name": "dec", "role": "image_decoder", "source": {"safetensors": "m.safetensors"},
                "quantization": {"format": ["int8", "int4"]}}]),
    );
    let p = ok(plan_with_sizers(&m, &[square(), square()], &[]));
    let mut seen = std::collections::BTreeSet::new();
    for s in &p.stages {
        for d in &s.depends_on {
            assert!(seen.contains(d), "{} runs before its dependency {d}", s.id);
        }
        assert!(seen.insert(s.id.clone()), "duplicate stage {}", s.id);
    }
    let quantize = p
        .stages
        .iter()
        .filter(|s| matches!(s.kind, StageKind::Quantize { .. }))
        .count();
    assert_eq!(quantize, p.bundles.len());
}

#[test]
fn measured_sizes_rebudget_every_tier() {
    let fixed = 14 * MIB + 149_504;
    let m = base(
        json!([{"name": "a", "device_memory": 1 << 30, "memory_limit": fixed + 2 * MIB}]),
        json!([text(json!("f16"))]),
    );
    let p = ok(plan_with_sizers(&m, &[square()], &[]));
    assert!(p.tiers[0].entry.fits);
    let measured = BTreeMap::from([("text-f16".to_string(), 2 * MIB + 1)]);
    let q = with_measured_sizes(&p, &measured);
    assert_eq!(q.bundles[0].weights_bytes, 2 * MIB + 1);
    assert_eq!(q.bundles[0].resident_bytes, 2 * MIB + 1);
    let t = &q.tiers[0].entry;
    assert_eq!(t.memory.peak_bytes, fixed + 2 * MIB + 1);
    assert_eq!(t.memory.headroom_bytes, -1);
    assert!(!t.fits);
    assert_eq!(q.tiers[0].choices, p.tiers[0].choices);
    // Unchanged sizes give the same plan.
    let same = BTreeMap::from([("text-f16".to_string(), 2 * MIB)]);
    assert_eq!(with_measured_sizes(&p, &same), p);
}

#[test]
fn suggestions_carry_savings_from_the_model() {
    // f16 KV of 4 MiB; u8 would be 2*4*4*2048*36 = 2_359_296 (saves 1_835_008).
    let fixed = 14 * MIB + 149_504;
    let m = base(
        json!([{"name": "a", "device_memory": 1 << 30, "memory_limit": fixed + 589_823}]),
        json!([text(json!(["f16", "int8", "int4"]))]),
    );
    let f = plan_with_sizers(&m, &[square()], &[]).expect_err("does not fit");
    let help = f.diagnostics[0].help.join("\n");
    assert!(
        help.contains("`kv_cache.format: u8` for `text` saves 1.75 MiB (enough on its own)"),
        "{help}"
    );
    assert!(
        help.contains("`max_seq_len: 2047` on tier `a` saves"),
        "{help}"
    );
    assert!(
        help.contains(&format!(
            "raise `memory_limit` of tier `a` to at least 14.71 MiB ({} bytes)",
            fixed + 589_824
        )),
        "{help}"
    );
}

#[test]
fn weight_format_suggestions_name_the_tier_override_in_effect() {
    // Tier `a` overrides the format of `text`: adding a format to the component-level list
    // would not change it, so the suggestion must name the override.
    let mut t = text(json!(["f16", "int8"]));
    t["quantization"]["tiers"] = json!({"a": {"format": "int8"}});
    let m = base(
        json!([
            {"name": "a", "device_memory": 1 << 30, "memory_limit": 12 * MIB},
            {"name": "b", "device_memory": 1 << 30, "memory_limit": 12 * MIB},
        ]),
        json!([t]),
    );
    let f = plan_with_sizers(&m, &[square()], &[]).expect_err("does not fit");
    let help = |tier: &str| {
        f.diagnostics
            .iter()
            .find(|d| d.path.as_deref() == Some(tier))
            .map(|d| d.help.join("\n"))
            .unwrap_or_default()
    };
    let a = help("tiers[0].memory_limit");
    assert!(
        a.contains("to `quantization.tiers.a.format` of `text` (it widens the formats the planner may choose) saves"),
        "{a}"
    );
    // A change that is enough on its own (here a tier max_seq_len) makes the "all of the
    // above together" line pointless.
    assert!(
        a.contains("on tier `a` saves") && a.contains("(enough on its own); or page"),
        "{a}"
    );
    assert!(!a.contains("all of the above"), "{a}");
    let b = help("tiers[1].memory_limit");
    assert!(
        b.contains("to `quantization.format` of `text` (it widens the formats the planner may choose) saves"),
        "{b}"
    );
}

#[test]
fn too_many_asset_packs_is_an_error() {
    let comps: Vec<serde_json::Value> = (0..101)
        .map(|i| json!({"name": format!("d{i}"), "role": "data", "source": {"files": ["x"]}}))
        .collect();
    let m = base(
        json!([{"name": "a", "device_memory": 1 << 30, "memory_limit": 100 * MIB}]),
        json!(comps),
    );
    let sizers: Vec<ComponentSizer> = (0..101)
        .map(|_| ComponentSizer::fixed(0, SizeSource::FileSizes, 1))
        .collect();
    let f = plan_with_sizers(&m, &sizers, &[]).expect_err("101 packs");
    assert!(f.diagnostics[0].message.contains("101 asset packs"));
    let m = base(
        json!([{"name": "a", "device_memory": 1 << 30, "memory_limit": 100 * MIB}]),
        json!(comps[..81]),
    );
    let p = ok(plan_with_sizers(&m, &sizers[..81], &[]));
    assert!(
        p.warnings
            .iter()
            .any(|w| w.message.contains("81 asset packs"))
    );
}

#[test]
fn unknown_tier_and_empty_manifests_are_errors() {
    let m = base(
        json!([{"name": "a", "device_memory": 1 << 30, "memory_limit": 100 * MIB}]),
        json!([text(json!("f16"))]),
    );
    let f = plan_with_sizers(&m, &[square()], &["zz".into()]).expect_err("unknown tier");
    assert_eq!(f.diagnostics[0].help, ["valid tiers: a"]);
    let m = base(json!([]), json!([text(json!("f16"))]));
    assert!(plan_with_sizers(&m, &[square()], &[]).is_err());
}

#[test]
fn lazy_components_bigger_than_the_headroom_are_warned_about() {
    // Two 2 MiB lazy decoders; headroom after the peak: 1 MiB.
    let dec = |n: &str| json!({"name": n, "role": "image_decoder", "source": {"safetensors": "m.safetensors"}});
    let m = base(
        json!([{"name": "a", "device_memory": 1 << 30, "memory_limit": 13 * MIB}]),
        json!([dec("d1"), dec("d2")]),
    );
    let p = ok(plan_with_sizers(&m, &[square(), square()], &[]));
    assert_eq!(p.tiers[0].entry.memory.headroom_bytes, MIB as i64);
    assert_eq!(
        p.warnings
            .iter()
            .filter(|w| w.message.contains("lazy component"))
            .count(),
        2
    );
}

#[test]
fn variant_dependent_exporters_need_one_variant_or_tier() {
    let mut exp = json!({
        "name": "cm", "role": "image_decoder", "runtime": "coreml", "size": MIB,
        "source": {"command": {"run": ["exp", "--format", "{format}"], "outputs": ["x.mlpackage"]}},
        "quantization": {"format": "f16", "tiers": {"b": {"format": "int8"}}},
    });
    let tiers = json!([
        {"name": "a", "device_memory": 1 << 30, "memory_limit": 100 * MIB},
        {"name": "b", "device_memory": 1 << 30, "memory_limit": 100 * MIB}
    ]);
    let sizer = || ComponentSizer::fixed(0, SizeSource::DeclaredSize, MIB);
    let f = plan_with_sizers(&base(tiers.clone(), json!([exp.clone()])), &[sizer()], &[])
        .expect_err("two variants, one export");
    assert_eq!(
        f.diagnostics[0].path.as_deref(),
        Some("components[0].source.command.run")
    );
    // With `{tier}` each tier exports its own variant.
    exp["source"]["command"]["run"] = json!(["exp", "--format", "{format}", "--preset", "{tier}"]);
    let p = ok(plan_with_sizers(
        &base(tiers, json!([exp])),
        &[sizer()],
        &[],
    ));
    let ids: Vec<&str> = p.bundles.iter().map(|b| b.id.as_str()).collect();
    assert_eq!(ids, ["cm-f16-a", "cm-int8-g64-b"]);
}

#[test]
fn a_corrupt_checkpoint_is_a_located_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/omnicoder-tiny/model.safetensors");
    std::fs::copy(example, dir.path().join("m.safetensors")).expect("copy");
    let manifest = dir.path().join("m.yaml");
    std::fs::write(
        &manifest,
        "omnipack: 1\npackage: {name: t, version: '1', bundle_id: com.example.t}\n\
         tiers: [{name: a, device_memory: 1GiB, memory_limit: 1GiB}]\n\
         components:\n  - {name: dec, role: image_decoder, source: {safetensors: m.safetensors}}\n",
    )
    .expect("write");
    let loaded = omnipack_manifest::load(&manifest).expect("the manifest itself is valid");
    // The checkpoint changes between validation and planning: a header length that runs past
    // the end of the file.
    std::fs::write(dir.path().join("m.safetensors"), 1000u64.to_le_bytes()).expect("write");
    let f = omnipack_plan::plan(&loaded, &[]).expect_err("corrupt header");
    let d = &f.diagnostics[0];
    assert_eq!(d.path.as_deref(), Some("components[0].source.safetensors"));
    assert!(d.message.contains("m.safetensors"), "{}", d.message);
    assert!(f.plan.is_none());
}

#[test]
fn the_plan_round_trips_through_json() {
    let m = base(
        json!([{"name": "a", "device_memory": 1 << 30, "memory_limit": 100 * MIB, "min_headroom": MIB}]),
        json!([text(json!(["f16", "int4"])),
               {"name": "dec", "role": "image_decoder", "source": {"safetensors": "m.safetensors"}}]),
    );
    let p = ok(plan_with_sizers(&m, &[square(), square()], &[]));
    let text = serde_json::to_string_pretty(&p).expect("serializes");
    let back: Plan = serde_json::from_str(&text).expect("deserializes");
    assert_eq!(back, p);
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(v["tiers"][0]["min_headroom_bytes"], MIB);
    assert_eq!(v["tiers"][0]["memory"]["min_headroom_bytes"], MIB);
    assert_eq!(v["components"][0]["size_source"], "safetensors_headers");
}

/// A sparse Llama-2-7B-shaped checkpoint (the benchmark's): headers only, no data on disk.
#[test]
fn a_7b_checkpoint_is_sized_from_its_headers() {
    use std::io::Write;
    let dir = tempfile::tempdir().expect("temp dir");
    let (vocab, hidden, ffn) = (32000u64, 4096u64, 11008u64);
    let mut shapes = vec![
        ("model.embed_tokens.weight".to_string(), vec![vocab, hidden]),
        ("model.norm.weight".to_string(), vec![hidden]),
        ("lm_head.weight".to_string(), vec![vocab, hidden]),
    ];
    for l in 0..32 {
        for m in ["q_proj", "k_proj", "v_proj", "o_proj"] {
            shapes.push((
                format!("model.layers.{l}.self_attn.{m}.weight"),
                vec![hidden, hidden],
            ));
        }
        shapes.push((
            format!("model.layers.{l}.mlp.gate_proj.weight"),
            vec![ffn, hidden],
        ));
        shapes.push((
            format!("model.layers.{l}.mlp.up_proj.weight"),
            vec![ffn, hidden],
        ));
        shapes.push((
            format!("model.layers.{l}.mlp.down_proj.weight"),
            vec![hidden, ffn],
        ));
        shapes.push((
            format!("model.layers.{l}.input_layernorm.weight"),
            vec![hidden],
        ));
        shapes.push((
            format!("model.layers.{l}.post_attention_layernorm.weight"),
            vec![hidden],
        ));
    }
    let mut header = serde_json::Map::new();
    let mut offset = 0u64;
    for (name, shape) in shapes {
        let n: u64 = shape.iter().product();
        header.insert(
            name,
            json!({"dtype": "F16", "shape": shape, "data_offsets": [offset, offset + 2 * n]}),
        );
        offset += 2 * n;
    }
    let json = serde_json::to_vec(&serde_json::Value::Object(header)).expect("json");
    let path = dir.path().join("model.safetensors");
    let mut f = std::fs::File::create(&path).expect("create");
    f.write_all(&(json.len() as u64).to_le_bytes())
        .expect("write");
    f.write_all(&json).expect("write");
    f.set_len(8 + json.len() as u64 + offset).expect("sparse");
    drop(f);

    let tensors =
        omnipack_plan::sizing::select_tensors(dir.path(), &["model.safetensors".into()], "")
            .expect("headers");
    let sizer = ComponentSizer::native(tensors, vec!["*norm*".into()], None);
    // 2 * 32000 * 4096 + 32 * (4 * 4096^2 + 3 * 11008 * 4096 + 2 * 4096) + 4096.
    assert_eq!(sizer.parameters, 6_738_415_616);
    assert_eq!(
        sizer.weights_bytes(Format::F16, 64).expect("f16"),
        2 * 6_738_415_616
    );
    // int4 g64: 6_738_149_376 quantized elements -> /2 codes + /64 * 4 scales and biases;
    // 65 norms of 4096 kept in f16.
    let q = 6_738_149_376u64;
    assert_eq!(
        sizer.weights_bytes(Format::Int4, 64).expect("int4"),
        q / 2 + q / 64 * 4 + 65 * 4096 * 2
    );
}
