//! Fuzzing on stable Rust: arbitrary and mutated safetensors headers through the header parser
//! and the quantization planner. No input may panic; a bad one is an error. The case count is
//! small so CI stays fast; `OMNIPACK_FUZZ_CASES=100000 cargo test -p omnipack-quant --test fuzz`
//! runs a longer campaign.

use omnipack_quant::{QuantSpec, WeightFormat, plan_outputs, read_full_header};
use proptest::prelude::*;

fn cases() -> u32 {
    std::env::var("OMNIPACK_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(128)
}

/// A header JSON built from plausible and hostile pieces: dtypes, huge or empty shapes,
/// offsets out of order, long and control-character names, metadata of odd types.
fn header_json() -> impl Strategy<Value = String> {
    let dtype = prop::sample::select(vec![
        "F32", "F16", "BF16", "U8", "I64", "U32", "F8_E4M3", "X",
    ]);
    let dim = prop_oneof![
        0u64..8,
        Just(u64::MAX),
        Just(1u64 << 61),
        Just(1u64 << 32),
        any::<u64>()
    ];
    let name = prop_oneof![
        "[a-z.]{1,12}",
        Just("__metadata__".to_string()),
        "\\PC{0,8}",
        Just("a\u{1b}[31m".to_string()),
    ];
    let tensor = (
        name,
        dtype,
        prop::collection::vec(dim, 0..5),
        any::<u16>(),
        any::<u16>(),
    )
        .prop_map(|(n, d, shape, a, b)| {
            serde_json::json!([n, {"dtype": d, "shape": shape, "data_offsets": [a, b]}])
        });
    prop::collection::vec(tensor, 0..6).prop_map(|ts| {
        let mut m = serde_json::Map::new();
        for t in ts {
            m.insert(t[0].as_str().unwrap().to_string(), t[1].clone());
        }
        serde_json::Value::Object(m).to_string()
    })
}

fn file_of(header: &[u8], declared_len: Option<u64>, data: usize) -> Vec<u8> {
    let mut bytes = declared_len
        .unwrap_or(header.len() as u64)
        .to_le_bytes()
        .to_vec();
    bytes.extend_from_slice(header);
    bytes.resize(bytes.len() + data, 0);
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.safetensors");
        std::fs::write(&p, &bytes).unwrap();
        let _ = read_full_header(&p);
    }

    #[test]
    fn structured_headers_never_panic_and_plan_safely(
        json in header_json(),
        declared in prop::option::of(prop_oneof![0u64..512, Just(u64::MAX)]),
        data in 0usize..2048,
        flip in prop::option::of((any::<prop::sample::Index>(), any::<u8>())),
        bits in prop::sample::select(vec![2u8, 3, 4, 6, 8]),
    ) {
        let mut header = json.into_bytes();
        if let Some((at, b)) = flip
            && !header.is_empty()
        {
            let i = at.index(header.len());
            header[i] = b;
        }
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.safetensors");
        std::fs::write(&p, file_of(&header, declared, data)).unwrap();
        if let Ok(h) = read_full_header(&p) {
            let infos: Vec<_> = h.tensors.iter().map(|t| t.info.clone()).collect();
            for format in [WeightFormat::Affine { bits }, WeightFormat::Nf4, WeightFormat::F16] {
                let _ = plan_outputs(&infos, &QuantSpec::new(format, 64));
            }
        }
    }
}
