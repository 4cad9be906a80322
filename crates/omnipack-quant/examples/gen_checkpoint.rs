//! Writes a seeded synthetic transformer-like f16 checkpoint for benchmarks.
//!
//! `cargo run --release -p omnipack-quant --example gen_checkpoint -- OUT.safetensors [PRESET]`
//! with PRESET `1b` (default: TinyLlama-1.1B shapes, 1.1 G parameters) or `tiny`.
//! Weights are approximately normal (Irwin-Hall, 4 uniforms) with standard deviation 0.02,
//! and about one element in 4096 is an outlier 10-30x larger. Deterministic for a preset.

use std::io::Write;

use omnipack_quant::kernels;
use omnipack_quant::{Dtype, OutputKind, OutputTensor, header_bytes};
use rayon::prelude::*;

struct Preset {
    vocab: u64,
    hidden: u64,
    inter: u64,
    layers: u64,
    kv_dim: u64,
}

fn tensors(p: &Preset) -> Vec<(String, Vec<u64>)> {
    let mut v = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![p.vocab, p.hidden],
    )];
    for l in 0..p.layers {
        let pre = format!("model.layers.{l}");
        v.push((format!("{pre}.input_layernorm.weight"), vec![p.hidden]));
        v.push((
            format!("{pre}.self_attn.q_proj.weight"),
            vec![p.hidden, p.hidden],
        ));
        v.push((
            format!("{pre}.self_attn.k_proj.weight"),
            vec![p.kv_dim, p.hidden],
        ));
        v.push((
            format!("{pre}.self_attn.v_proj.weight"),
            vec![p.kv_dim, p.hidden],
        ));
        v.push((
            format!("{pre}.self_attn.o_proj.weight"),
            vec![p.hidden, p.hidden],
        ));
        v.push((
            format!("{pre}.post_attention_layernorm.weight"),
            vec![p.hidden],
        ));
        v.push((
            format!("{pre}.mlp.gate_proj.weight"),
            vec![p.inter, p.hidden],
        ));
        v.push((format!("{pre}.mlp.up_proj.weight"), vec![p.inter, p.hidden]));
        v.push((
            format!("{pre}.mlp.down_proj.weight"),
            vec![p.hidden, p.inter],
        ));
    }
    v.push(("model.norm.weight".to_string(), vec![p.hidden]));
    v.push(("lm_head.weight".to_string(), vec![p.vocab, p.hidden]));
    v
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn fill(seed: u64, norm: bool, out: &mut [f32]) {
    if norm {
        for (i, o) in out.iter_mut().enumerate() {
            *o = 1.0 + ((splitmix(seed ^ i as u64) >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2;
        }
        return;
    }
    let mut s = splitmix(seed);
    for o in out.iter_mut() {
        // xorshift64*
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        let r = s.wrapping_mul(0x2545_f491_4f6c_dd1d);
        let u = ((r & 0xffff) + ((r >> 16) & 0xffff) + ((r >> 32) & 0xffff) + (r >> 48)) as f32;
        // Irwin-Hall(4): mean 2, variance 1/3 (in units of 65536)
        let z = (u / 65536.0 - 2.0) * 1.732_050_8;
        let outlier = (r >> 20) & 4095 == 0;
        *o = z * if outlier {
            0.02 * (10.0 + ((r >> 8) & 15) as f32 * 1.33)
        } else {
            0.02
        };
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let out = args
        .get(1)
        .ok_or("usage: gen_checkpoint OUT.safetensors [1b|tiny]")?;
    let preset = match args.get(2).map(String::as_str).unwrap_or("1b") {
        "1b" => Preset {
            vocab: 32000,
            hidden: 2048,
            inter: 5632,
            layers: 22,
            kv_dim: 256,
        },
        "tiny" => Preset {
            vocab: 1024,
            hidden: 256,
            inter: 704,
            layers: 2,
            kv_dim: 64,
        },
        other => return Err(format!("unknown preset `{other}`").into()),
    };
    let list = tensors(&preset);
    let outputs: Vec<OutputTensor> = list
        .iter()
        .map(|(name, shape)| OutputTensor {
            name: name.clone(),
            dtype: Dtype::F16,
            shape: shape.clone(),
            source: name.clone(),
            kind: OutputKind::Kept,
        })
        .collect();
    let params: u64 = list.iter().map(|(_, s)| s.iter().product::<u64>()).sum();
    let tmp = format!("{out}.tmp");
    let mut f = std::io::BufWriter::with_capacity(8 << 20, std::fs::File::create(&tmp)?);
    f.write_all(&header_bytes(&outputs, &Default::default()))?;
    const CHUNK: usize = 1 << 20;
    for (ti, (_, shape)) in list.iter().enumerate() {
        let n = shape.iter().product::<u64>() as usize;
        let norm = shape.len() == 1;
        let mut bytes = vec![0u8; n * 2];
        bytes
            .par_chunks_mut(CHUNK * 2)
            .enumerate()
            .for_each(|(ci, b)| {
                let mut v = vec![0f32; b.len() / 2];
                fill(((ti as u64) << 32) | ci as u64, norm, &mut v);
                kernels::encode_f32(&v, Dtype::F16, b);
            });
        f.write_all(&bytes)?;
    }
    f.flush()?;
    drop(f);
    std::fs::rename(&tmp, out)?;
    println!("{out}: {} tensors, {params} parameters", list.len());
    Ok(())
}
