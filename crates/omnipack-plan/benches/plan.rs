//! Planning a manifest that points at a synthetic 7 B-parameter checkpoint (Llama-2-7B
//! shapes, f16). The checkpoint is a sparse file: its header declares every tensor, its data
//! is a hole, so it costs no disk; planning reads headers only.
//!
//! `cargo bench -p omnipack-plan`

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn main() {
    divan::main();
}

const VOCAB: u64 = 32000;
const HIDDEN: u64 = 4096;
const LAYERS: u64 = 32;
const FFN: u64 = 11008;

/// Tensor names and shapes of a Llama-2-7B checkpoint.
fn shapes() -> Vec<(String, Vec<u64>)> {
    let mut t = vec![
        ("model.embed_tokens.weight".to_string(), vec![VOCAB, HIDDEN]),
        ("model.norm.weight".to_string(), vec![HIDDEN]),
        ("lm_head.weight".to_string(), vec![VOCAB, HIDDEN]),
    ];
    for l in 0..LAYERS {
        let p = format!("model.layers.{l}");
        for m in ["q_proj", "k_proj", "v_proj", "o_proj"] {
            t.push((format!("{p}.self_attn.{m}.weight"), vec![HIDDEN, HIDDEN]));
        }
        t.push((format!("{p}.mlp.gate_proj.weight"), vec![FFN, HIDDEN]));
        t.push((format!("{p}.mlp.up_proj.weight"), vec![FFN, HIDDEN]));
        t.push((format!("{p}.mlp.down_proj.weight"), vec![HIDDEN, FFN]));
        t.push((format!("{p}.input_layernorm.weight"), vec![HIDDEN]));
        t.push((format!("{p}.post_attention_layernorm.weight"), vec![HIDDEN]));
    }
    t
}

/// Writes the sparse checkpoint and a manifest with four tiers; returns the manifest path.
fn fixture() -> &'static Path {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut header = serde_json::Map::new();
        let mut offset = 0u64;
        let mut params = 0u64;
        for (name, shape) in shapes() {
            let n: u64 = shape.iter().product();
            params += n;
            header.insert(
                name,
                serde_json::json!({"dtype": "F16", "shape": shape, "data_offsets": [offset, offset + 2 * n]}),
            );
            offset += 2 * n;
        }
        assert!(params > 6_700_000_000, "a 7 B checkpoint");
        let mut json = serde_json::to_vec(&serde_json::Value::Object(header)).expect("json");
        while !json.len().is_multiple_of(8) {
            json.push(b' ');
        }
        let path = dir.path().join("model.safetensors");
        let mut f = std::fs::File::create(&path).expect("create");
        f.write_all(&(json.len() as u64).to_le_bytes()).expect("write");
        f.write_all(&json).expect("write");
        f.set_len(8 + json.len() as u64 + offset).expect("sparse data");
        let manifest = dir.path().join("seven-b.yaml");
        std::fs::write(
            &manifest,
            r#"omnipack: 1
package: { name: seven-b, version: 1.0.0, bundle_id: com.example.sevenb }
runtime_overhead: 300MiB
tiers:
  - { name: iphone-4gb, device_memory: 4GiB, memory_limit: 2GiB, max_seq_len: 1024 }
  - { name: iphone-6gb, device_memory: 6GiB, memory_limit: 3GiB, min_headroom: 128MiB }
  - { name: iphone-8gb, device_memory: 8GiB, memory_limit: 5GiB }
  - { name: ipad-16gb, device_memory: 16GiB, memory_limit: 12GiB }
components:
  - name: text
    role: text_decode_step
    source: { safetensors: model.safetensors }
    architecture: { layers: 32, kv_heads: 32, kv_head_dim: 128, hidden_size: 4096, vocab_size: 32000 }
    max_seq_len: 4096
    quantization: { format: [f16, int8, int6, int4, int3, int2], group_size: 64, keep: ["*norm*"] }
    kv_cache: { format: u8, group_size: 32, paging: { page_len: 256, resident_pages: 8 } }
"#,
        )
        .expect("manifest");
        (dir, manifest)
    })
    .1
}

/// Load the manifest (headers only) and plan every tier.
#[divan::bench]
fn plan_7b_checkpoint() -> omnipack_plan::Plan {
    let loaded = omnipack_manifest::load(divan::black_box(fixture())).expect("manifest loads");
    match omnipack_plan::plan(&loaded, &[]) {
        Ok(p) => p,
        Err(f) => f.plan.map(|p| *p).expect("a plan"),
    }
}
