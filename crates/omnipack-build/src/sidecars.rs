//! Generated JSON files of a bundle, written from a package stage's parameters: `config.json`,
//! the decode-step sidecars (`<artifact>.io.json` for Core ML, `<artifact>.kvq.json`,
//! `<artifact>.kv_paging.json`) and the asset pack's Background Assets `Manifest.json`. All
//! depend only on the component (never on a tier), with sorted keys, so a bundle's bytes are
//! the same for every tier.

use omnipack_manifest::canonical_json::to_canonical_pretty;
use omnipack_manifest::{Delivery, IoDtype, KvFormat, Runtime};
use omnipack_plan::{ConfigJson, DecodeStepSidecars};
use serde_json::{Map, Value, json};

/// `config.json` of a native variant, as the plan describes it: `base` (the component's
/// `source.config`, when it has one) without the keys `params.remove`, with every key of
/// `params.set` laid over it, keys sorted.
pub fn config_json(base: Option<&Map<String, Value>>, params: &ConfigJson) -> Vec<u8> {
    let mut m = base.cloned().unwrap_or_default();
    for k in &params.remove {
        m.remove(k);
    }
    for (k, v) in &params.set {
        m.insert(k.clone(), v.clone());
    }
    to_canonical_pretty(&Value::Object(m))
}

/// The sidecars of a text decode step: `(path, bytes)`. The `.io.json` (the model's cache inputs
/// and outputs) only for Core ML, the one runtime whose decode step takes and returns the KV
/// cache as model inputs and outputs; an MLX (or other) runtime keeps its cache inside, so it
/// gets only the `.kvq.json` and `.kv_paging.json` that describe the cache's format and paging.
pub fn decode_step_sidecars(
    s: &DecodeStepSidecars,
    runtime: Option<Runtime>,
) -> Vec<(String, Vec<u8>)> {
    let a = s.architecture;
    let t: Value = s.cache_tokens.map(Value::from).unwrap_or(json!(-1));
    let mut out = Vec::new();
    if runtime == Some(Runtime::Coreml) {
        let io = match s.io_dtype {
            IoDtype::F32 => "float32",
            IoDtype::F16 => "float16",
        };
        let cache_shape = json!([1, a.kv_heads, t, a.kv_head_dim]);
        let mut inputs = vec![json!({"name": "input_ids", "shape": [1, 1], "dtype": "int64"})];
        let mut outputs =
            vec![json!({"name": "logits", "shape": [1, 1, a.vocab_size], "dtype": "float32"})];
        for kv in ["k", "v"] {
            for i in 0..a.layers {
                inputs.push(
                    json!({"name": format!("{kv}_lat_{i}"), "shape": cache_shape, "dtype": io}),
                );
                outputs.push(
                    json!({"name": format!("n{kv}_lat_{i}"), "shape": cache_shape, "dtype": io}),
                );
            }
        }
        // A Core ML decode step omnipack read: every feature as the model declares it.
        let mut states = None;
        if let Some(io) = &s.coreml_io {
            let list = |f: &[omnipack_plan::CoreMlFeature]| {
                f.iter()
                    .map(|x| serde_json::to_value(x).unwrap_or(Value::Null))
                    .collect::<Vec<_>>()
            };
            inputs = list(&io.inputs);
            outputs = list(&io.outputs);
            states = Some(list(&io.states));
        }
        let mut io_json = json!({
            "artifact": s.artifact,
            "io_version": 1,
            "layers": a.layers,
            "kv_heads": a.kv_heads,
            "kv_head_dim": a.kv_head_dim,
            "hidden_size": a.hidden_size,
            "vocab_size": a.vocab_size,
            "cache_tokens": t,
            "max_seq_len": s.max_seq_len,
            "cache_layout": "[batch, kv_heads, tokens, kv_head_dim]; -1 tokens means flexible",
            "inputs": inputs,
            "outputs": outputs,
        });
        if let (Some(states), Value::Object(m)) = (states, &mut io_json) {
            m.insert("states".into(), Value::Array(states));
            m.insert("source".into(), json!("model"));
        }
        out.push((
            format!("{}.io.json", s.artifact),
            to_canonical_pretty(&io_json),
        ));
    }
    let g = s.kv_group_size;
    // The fields of the quantized format; the layout fields every format shares are added below.
    let format_fields = match s.kv_format {
        KvFormat::F16 => None,
        KvFormat::U8 => Some(json!({
            "format": KvFormat::U8.as_str(),
            "scale_dtype": "float16",
            "zero_point_dtype": "float16",
            "code_dtype": "uint8",
            "packing": "one code per byte, row-major [batch, kv_heads, tokens, kv_head_dim]",
            "dequantize": "x = code * scale + zero_point",
            "quantize": "scale = max((max - min) / 255, 1e-7); zero_point = min; code = clamp(rint((x - zero_point) / scale), 0, 255)",
            "rounding": "nearest_even",
            "bytes_per_group": g + 4,
        })),
        KvFormat::Nf4 => Some(json!({
            "format": KvFormat::Nf4.as_str(),
            "scale_dtype": "float16",
            "scale": "absmax",
            "zero_point_dtype": null,
            "code_dtype": "uint4",
            "packing": "two codes per byte, first element in the high nibble",
            "quant_map": NF4_TABLE,
            "dequantize": "x = quant_map[code] * absmax",
            "quantize": "code = number of midpoints between sorted quant_map values that are < clamp(x / absmax, -1, 1)",
            "rounding": "nearest",
            "bytes_per_group": g / 2 + 2,
        })),
    };
    if let Some(mut kvq) = format_fields {
        if let Value::Object(m) = &mut kvq {
            m.insert("group_size".into(), json!(g));
            m.insert("axis".into(), json!("kv_head_dim"));
            m.insert("axis_index".into(), json!(-1));
            m.insert("groups_per_row".into(), json!(a.kv_head_dim / g.max(1)));
        }
        out.push((
            format!("{}.kvq.json", s.artifact),
            to_canonical_pretty(&kvq),
        ));
    }
    if let Some(p) = s.paging {
        let paging = json!({
            "page_len": p.page_len,
            "resident_pages": p.resident_pages,
            "resident_tokens": p.page_len.saturating_mul(p.resident_pages),
            "max_seq_len": s.max_seq_len,
            "tail_truncation": {
                "policy": "drop_oldest_page",
                "description": "when the context needs more than resident_pages pages, the oldest full page is dropped; the last page may be partly filled",
            },
        });
        out.push((
            format!("{}.kv_paging.json", s.artifact),
            to_canonical_pretty(&paging),
        ));
    }
    out
}

/// The bitsandbytes NF4 code table.
const NF4_TABLE: [f64; 16] = [
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
];

/// The Background Assets `Manifest.json` of one asset pack (`ba-package` input).
pub fn asset_pack_manifest(pack_id: &str, bundle_id: &str, delivery: Delivery) -> Vec<u8> {
    let events = json!({"installationEventTypes": ["firstInstallation", "subsequentUpdate"]});
    let policy = match delivery {
        Delivery::Essential => json!({"essential": events}),
        Delivery::Prefetch => json!({"prefetch": events}),
        Delivery::OnDemand => json!({"onDemand": {}}),
    };
    let v = json!({
        "assetPackID": pack_id,
        "downloadPolicy": policy,
        "fileSelectors": [{"directory": bundle_id}],
        "platforms": ["iOS"],
    });
    to_canonical_pretty(&v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use omnipack_manifest::Format;

    #[test]
    fn asset_pack_manifest_shape() {
        let v: Value = serde_json::from_slice(&asset_pack_manifest(
            "com.x.text-f16",
            "text-f16",
            Delivery::OnDemand,
        ))
        .unwrap();
        assert_eq!(v["assetPackID"], "com.x.text-f16");
        assert_eq!(v["downloadPolicy"], json!({"onDemand": {}}));
        assert_eq!(v["fileSelectors"], json!([{"directory": "text-f16"}]));
        assert_eq!(v["platforms"], json!(["iOS"]));
        let e: Value =
            serde_json::from_slice(&asset_pack_manifest("a.b", "b", Delivery::Essential)).unwrap();
        assert_eq!(
            e["downloadPolicy"]["essential"]["installationEventTypes"][0],
            "firstInstallation"
        );
        assert_eq!(e["downloadPolicy"].as_object().unwrap().len(), 1);
    }

    fn component(config: Option<&str>) -> omnipack_manifest::ResolvedComponent {
        let m: omnipack_manifest::Manifest = serde_json::from_value(json!({
            "omnipack": 1,
            "components": [{
                "name": "text", "role": "text_decode_step",
                "source": {"safetensors": "m.safetensors", "prefix": "text.", "config": config},
                "architecture": {"layers": 2, "kv_heads": 2, "kv_head_dim": 16,
                                 "hidden_size": 64, "vocab_size": 100},
                "max_seq_len": 128
            }]
        }))
        .unwrap();
        omnipack_manifest::resolve(&m).components.remove(0)
    }

    #[test]
    fn config_json_overlays_the_source_config() {
        let base: Map<String, Value> = serde_json::from_value(json!({
            "model_type": "llama", "num_attention_heads": 2, "hidden_size": 1,
            "torch_dtype": "bfloat16", "quantization_config": {"quant_method": "fp8"}
        }))
        .unwrap();
        let c = component(Some("hf.json"));
        let parse = |b: Vec<u8>| -> Value { serde_json::from_slice(&b).unwrap() };
        let q = json!({"group_size": 32, "bits": 4, "mode": "affine"});
        let config = |c: &omnipack_manifest::ResolvedComponent,
                      f: Format,
                      g: Option<u32>,
                      base: Option<&Map<String, Value>>| {
            config_json(base, &omnipack_plan::config_json(c, f, g))
        };
        let v = parse(config(&c, Format::Int4, Some(32), Some(&base)));
        assert_eq!(v["model_type"], "llama");
        assert_eq!(v["num_attention_heads"], 2);
        assert_eq!(v["hidden_size"], 64);
        assert_eq!(v["max_position_embeddings"], 128);
        assert_eq!(v["quantization"], q);
        assert_eq!(v["quantization_config"], q);
        assert!(v.get("torch_dtype").is_none());
        let v = parse(config(&c, Format::Nf4, Some(64), Some(&base)));
        assert_eq!(v["quantization_config"]["quant_method"], "bitsandbytes");
        assert_eq!(v["quantization_config"]["bnb_4bit_blocksize"], 64);
        assert!(v.get("quantization").is_none());
        let v = parse(config(&c, Format::F16, None, Some(&base)));
        assert_eq!(v["torch_dtype"], "float16");
        assert!(v.get("quantization_config").is_none() && v.get("quantization").is_none());
        // Deterministic: the same inputs give the same bytes, whatever the base's key order.
        let mut rev = Map::new();
        for (k, x) in base.iter().rev() {
            rev.insert(k.clone(), x.clone());
        }
        assert_eq!(
            config(&c, Format::Int8, Some(64), Some(&base)),
            config(&c, Format::Int8, Some(64), Some(&rev))
        );
        // Without a base: omnipack's own keys only (no `quantization_config`, as before).
        let v = parse(config(&component(None), Format::Int4, Some(32), None));
        assert_eq!(v["quantization"], q);
        assert!(v.get("quantization_config").is_none() && v.get("model_type").is_none());
    }
}
