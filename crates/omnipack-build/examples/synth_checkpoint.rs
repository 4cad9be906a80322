//! Writes a synthetic multimodal checkpoint for `scripts/bench-build`: about 1.5 B F16
//! parameters in two safetensors shards (`text.*` of a 22-layer, 2048-wide decoder with a
//! 32000 vocabulary; `image.*` and `video.*` decoders of 24 MLP blocks each).
//!
//!     cargo run --release -p omnipack-build --example synth_checkpoint -- OUT_DIR
//!
//! Values are pseudo-random finite f16 (xorshift), deterministic for a given layout.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

const HIDDEN: u64 = 2048;
const LAYERS: u64 = 22;
const KV_HEADS: u64 = 4;
const HEAD_DIM: u64 = 64;
const INTER: u64 = 5632;
const VOCAB: u64 = 32000;
const DEC: u64 = 1024;
const DEC_BLOCKS: u64 = 24;

fn text_tensors() -> Vec<(String, Vec<u64>)> {
    let mut t = vec![("text.embed_tokens.weight".to_string(), vec![VOCAB, HIDDEN])];
    for i in 0..LAYERS {
        let p = format!("text.layers.{i}.");
        t.push((format!("{p}self_attn.q_proj.weight"), vec![HIDDEN, HIDDEN]));
        t.push((
            format!("{p}self_attn.k_proj.weight"),
            vec![KV_HEADS * HEAD_DIM, HIDDEN],
        ));
        t.push((
            format!("{p}self_attn.v_proj.weight"),
            vec![KV_HEADS * HEAD_DIM, HIDDEN],
        ));
        t.push((format!("{p}self_attn.o_proj.weight"), vec![HIDDEN, HIDDEN]));
        t.push((format!("{p}mlp.gate_proj.weight"), vec![INTER, HIDDEN]));
        t.push((format!("{p}mlp.up_proj.weight"), vec![INTER, HIDDEN]));
        t.push((format!("{p}mlp.down_proj.weight"), vec![HIDDEN, INTER]));
        t.push((format!("{p}input_layernorm.weight"), vec![HIDDEN]));
        t.push((format!("{p}post_attention_layernorm.weight"), vec![HIDDEN]));
    }
    t.push(("text.norm.weight".into(), vec![HIDDEN]));
    t.push(("text.lm_head.weight".into(), vec![VOCAB, HIDDEN]));
    t
}

fn decoder_tensors(kind: &str) -> Vec<(String, Vec<u64>)> {
    let mut t = vec![
        (format!("{kind}.latent_in.weight"), vec![DEC, HIDDEN]),
        (format!("{kind}.latent_in.bias"), vec![DEC]),
    ];
    for b in 0..DEC_BLOCKS {
        let p = format!("{kind}.blocks.{b}.");
        t.push((format!("{p}norm.weight"), vec![DEC]));
        t.push((format!("{p}norm.bias"), vec![DEC]));
        t.push((format!("{p}fc1.weight"), vec![4 * DEC, DEC]));
        t.push((format!("{p}fc1.bias"), vec![4 * DEC]));
        t.push((format!("{p}fc2.weight"), vec![DEC, 4 * DEC]));
        t.push((format!("{p}fc2.bias"), vec![DEC]));
    }
    if kind == "video" {
        t.push(("video.temporal.weight".into(), vec![DEC, DEC]));
    }
    t.push((format!("{kind}.norm_out.weight"), vec![DEC]));
    t.push((format!("{kind}.to_pixels.weight"), vec![768, DEC]));
    t
}

fn write_shard(path: &Path, tensors: &[(String, Vec<u64>)], seed: u64) -> std::io::Result<u64> {
    let mut header = String::from("{\"__metadata__\":{\"format\":\"pt\"}");
    let mut offset = 0u64;
    for (name, shape) in tensors {
        let n: u64 = shape.iter().product();
        let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        header.push_str(&format!(
            ",\"{name}\":{{\"dtype\":\"F16\",\"shape\":[{}],\"data_offsets\":[{offset},{}]}}",
            dims.join(","),
            offset + 2 * n
        ));
        offset += 2 * n;
    }
    header.push('}');
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let tmp = path.with_extension("tmp");
    let mut w = BufWriter::with_capacity(8 << 20, File::create(&tmp)?);
    w.write_all(&(header.len() as u64).to_le_bytes())?;
    w.write_all(header.as_bytes())?;
    let mut state = seed | 1;
    let mut buf = vec![0u8; 8 << 20];
    let mut params = 0u64;
    for (name, shape) in tensors {
        let n: u64 = shape.iter().product();
        params += n;
        let norm = name.contains("norm");
        let mut left = 2 * n;
        while left > 0 {
            let len = left.min(buf.len() as u64) as usize;
            for chunk in buf[..len].chunks_exact_mut(8) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let mut words = [0u16; 4];
                for (k, w) in words.iter_mut().enumerate() {
                    let r = (state >> (16 * k)) as u16;
                    // sign, exponent 9..=12 (|x| in [2^-6, 2^-2)), random mantissa; norms near 1.
                    *w = if norm {
                        0x3C00 | (r & 0x00FF)
                    } else {
                        (r & 0x83FF) | ((9 + ((r >> 10) & 3)) << 10)
                    };
                }
                for (k, w) in words.iter().enumerate() {
                    chunk[2 * k..2 * k + 2].copy_from_slice(&w.to_le_bytes());
                }
            }
            w.write_all(&buf[..len])?;
            left -= len as u64;
        }
    }
    w.flush()?;
    drop(w);
    std::fs::rename(&tmp, path)?;
    Ok(params)
}

fn main() -> std::io::Result<()> {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "bench-out/checkpoint".into());
    let out = Path::new(&out);
    std::fs::create_dir_all(out)?;
    let a = write_shard(
        &out.join("model-00001-of-00002.safetensors"),
        &text_tensors(),
        0x9E37_79B9_7F4A_7C15,
    )?;
    let mut rest = decoder_tensors("image");
    rest.extend(decoder_tensors("video"));
    let b = write_shard(
        &out.join("model-00002-of-00002.safetensors"),
        &rest,
        0xD1B5_4A32_D192_ED03,
    )?;
    println!(
        "wrote {} parameters ({} text, {} decoders) to {}",
        a + b,
        a,
        b,
        out.display()
    );
    Ok(())
}
