//! Properties of the memory model and the best-fit search.

use omnipack_manifest::{Architecture, FloatDtype, Format, KvFormat, Manifest, Paging, resolve};
use omnipack_plan::memory::{kv_stored_bytes, kv_tokens};
use omnipack_plan::{ComponentSizer, plan_with_sizers};
use omnipack_quant::{Dtype, TensorInfo};
use proptest::prelude::*;
use serde_json::json;

fn tensors() -> impl Strategy<Value = Vec<TensorInfo>> {
    prop::collection::vec(
        (
            1u64..64,
            prop::sample::select(vec![32u64, 64, 96, 128, 192, 256, 100, 7]),
            prop::sample::select(vec![Dtype::F16, Dtype::BF16, Dtype::F32]),
            prop::sample::select(vec!["weight", "bias", "norm.weight"]),
        ),
        1..6,
    )
    .prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (rows, cols, dtype, kind))| TensorInfo {
                name: format!("l{i}.{kind}"),
                dtype,
                shape: if kind == "bias" {
                    vec![cols]
                } else {
                    vec![rows, cols]
                },
            })
            .collect()
    })
}

/// Formats from most to fewest bits.
const CHAIN: [Format; 7] = [
    Format::F32,
    Format::F16,
    Format::Int8,
    Format::Int6,
    Format::Int4,
    Format::Int3,
    Format::Int2,
];

proptest! {
    #[test]
    fn fewer_bits_never_increase_bytes(ts in tensors(), g in prop::sample::select(vec![32u32, 64, 128])) {
        // Tensors left unquantized stay in their source dtype by default, so the whole chain
        // is monotone once `keep_dtype: f16`; floats and integers each are monotone anyway.
        let keep = vec!["*norm*".to_string()];
        let default_keep = ComponentSizer::native(ts.clone(), keep.clone(), None);
        let f16_keep = ComponentSizer::native(ts, keep, Some(FloatDtype::F16));
        let monotone = |sizer: &ComponentSizer, chain: &[Format]| -> Result<(), TestCaseError> {
            let bytes: Vec<u64> = chain.iter().map(|&f| sizer.weights_bytes(f, g).expect("sized")).collect();
            for w in bytes.windows(2) {
                prop_assert!(w[1] <= w[0], "{chain:?}: {bytes:?}");
            }
            Ok(())
        };
        monotone(&default_keep, &CHAIN[..2])?;
        monotone(&default_keep, &CHAIN[2..])?;
        monotone(&f16_keep, &CHAIN)?;
    }

    #[test]
    fn fewer_kv_bits_never_increase_bytes(k in 1u64..16, g in 1u64..128, t in 1u64..10_000) {
        // Validation requires a quantized cache's group size to divide kv_head_dim (an f16 row
        // is 2 * kv_head_dim whatever the group size).
        let d = g * k;
        let arch = Architecture { layers: 3, kv_heads: 2, kv_head_dim: d, hidden_size: 8, vocab_size: 8 };
        let f16 = kv_stored_bytes(&arch, t, KvFormat::F16, g);
        let u8 = kv_stored_bytes(&arch, t, KvFormat::U8, g);
        let nf4 = kv_stored_bytes(&arch, t, KvFormat::Nf4, g);
        // Per group: nf4 g/2+2 <= u8 g+4 always; u8 <= f16 2g once g >= 4 (a scale and a
        // zero point cost 4 bytes, more than 1..3 f16 elements).
        prop_assert!(nf4 <= u8, "{u8} {nf4}");
        if g >= 4 {
            prop_assert!(u8 <= f16, "{f16} {u8}");
        }
    }

    #[test]
    fn kv_bytes_grow_linearly_until_paging_caps_them(
        layers in 1u64..64, heads in 1u64..32, dim in prop::sample::select(vec![32u64, 64, 128]),
        page_len in 1u64..512, pages in 1u64..16, t in 1u64..20_000,
        format in prop::sample::select(vec![KvFormat::F16, KvFormat::U8, KvFormat::Nf4]),
    ) {
        let arch = Architecture { layers, kv_heads: heads, kv_head_dim: dim, hidden_size: 8, vocab_size: 8 };
        let per_token = kv_stored_bytes(&arch, 1, format, 32);
        // Linear without paging.
        let tokens = kv_tokens(Some(t), None, None).expect("tokens");
        prop_assert_eq!(kv_stored_bytes(&arch, tokens, format, 32), per_token * t);
        // With paging: linear up to the cap, constant after it.
        let paging = Some(Paging { page_len, resident_pages: pages });
        let cap = page_len * pages;
        let tokens = kv_tokens(Some(t), None, paging).expect("tokens");
        prop_assert_eq!(kv_stored_bytes(&arch, tokens, format, 32), per_token * t.min(cap));
    }

    #[test]
    fn raising_memory_limit_never_breaks_a_fitting_tier(
        limit_mib in 8u64..64, raise in 0u64..(64 << 20),
        formats in prop::sample::subsequence(vec!["f16", "int8", "int6", "int4", "int2"], 1..5),
        dec_formats in prop::sample::subsequence(vec!["f32", "f16", "int8", "int4"], 1..4),
        tokens in 1u64..8192,
    ) {
        let limit = limit_mib << 20;
        let manifest = |limit: u64| -> omnipack_manifest::ResolvedManifest {
            let m: Manifest = serde_json::from_value(json!({
                "omnipack": 1,
                "package": {"name": "p", "version": "1", "bundle_id": "com.example.p"},
                "runtime_overhead": 4 << 20,
                "tiers": [{"name": "a", "device_memory": 1u64 << 30, "memory_limit": limit, "min_headroom": 1 << 20}],
                "components": [
                    {"name": "text", "role": "text_decode_step", "source": {"safetensors": "x"},
                     "architecture": {"layers": 8, "kv_heads": 4, "kv_head_dim": 64, "hidden_size": 256, "vocab_size": 1000},
                     "max_seq_len": tokens, "quantization": {"format": formats}},
                    {"name": "dec", "role": "image_decoder", "source": {"safetensors": "x"},
                     "quantization": {"format": dec_formats}},
                ],
            })).expect("manifest");
            resolve(&m)
        };
        let sizer = || ComponentSizer::native(
            vec![TensorInfo { name: "w.weight".into(), dtype: Dtype::F16, shape: vec![2048, 1024] }],
            vec![],
            None,
        );
        let sizers = [sizer(), sizer()];
        let fits = |limit: u64| match plan_with_sizers(&manifest(limit), &sizers, &[]) {
            Ok(p) => p.tiers[0].entry.fits,
            Err(f) => f.plan.map(|p| p.tiers[0].entry.fits).unwrap_or(false),
        };
        if fits(limit) {
            prop_assert!(fits(limit + raise));
        }
    }
}
