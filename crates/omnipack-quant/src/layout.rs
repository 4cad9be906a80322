//! Recognising a quantized checkpoint's layout from its tensor names, dtypes and shapes (and
//! its `config.json`): which tensors are MLX affine codes or bitsandbytes 4-bit blocks, and
//! which are their scales, biases and states. Used by `omnipack inspect`.

use std::collections::BTreeMap;

use crate::dtype::{Dtype, TensorInfo};

/// The quantization a set of tensors is recognised as.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct QuantizedLayout {
    /// `p.weight` -> description, for quantized tensors.
    pub quantized: BTreeMap<String, String>,
    /// Tensor names that are parts (scales, biases, absmax, ...) of a quantized tensor, and
    /// what they are.
    pub parts: BTreeMap<String, String>,
    /// One line per layout found (or the dtypes when nothing is quantized).
    pub summary: Vec<String>,
}

/// The group size and bits of a `config.json`'s `quantization` (or `quantization_config`).
pub(crate) fn config_quant(config: Option<&serde_json::Value>) -> (Option<u64>, Option<u64>) {
    let q = config.and_then(|c| {
        c.get("quantization")
            .or_else(|| c.get("quantization_config"))
    });
    (
        q.and_then(|q| q.get("group_size")).and_then(|v| v.as_u64()),
        q.and_then(|q| q.get("bits")).and_then(|v| v.as_u64()),
    )
}

/// Bits, group size and number of groups per row of `t` when it is the codes of an MLX affine
/// tensor: `<p>.weight` U32 `[rows, words]` with `<p>.scales` `[rows, groups]` and
/// `<p>.biases`; bits and group size from `config` when it says them, else the first of
/// 64, 32 and 128 that gives a width MLX packs (2, 3, 4, 6 or 8 bits).
pub(crate) fn affine_params(
    t: &TensorInfo,
    by_name: &BTreeMap<&str, &TensorInfo>,
    cfg_group: Option<u64>,
    cfg_bits: Option<u64>,
) -> Option<(u64, u64, u64)> {
    if t.dtype != Dtype::U32 || t.shape.len() != 2 || !t.name.ends_with("weight") {
        return None;
    }
    let p = &t.name[..t.name.len() - "weight".len()];
    if !(p.is_empty() || p.ends_with('.')) {
        return None;
    }
    let st = by_name.get(format!("{p}scales").as_str())?;
    let bt = by_name.get(format!("{p}biases").as_str())?;
    if st.shape.len() != 2
        || st.shape[1] == 0
        || st.shape != bt.shape
        || st.shape[0] != t.shape[0]
        || st.dtype != bt.dtype
        || !st.dtype.is_working_float()
    {
        return None;
    }
    let (words, groups) = (t.shape[1], st.shape[1]);
    let candidates: Vec<u64> = match cfg_group {
        Some(g) => vec![g],
        None => vec![64, 32, 128],
    };
    candidates.into_iter().find_map(|g| {
        let cols = g.checked_mul(groups)?;
        let bits = words.checked_mul(32)?.checked_div(cols)?;
        let ok = bits * cols == words * 32
            && matches!(bits, 2 | 3 | 4 | 6 | 8)
            && cfg_bits.is_none_or(|cb| cb == bits);
        ok.then_some((bits, g, groups))
    })
}

/// Recognises the quantized layouts among `tensors`: MLX affine (`<p>.weight` U32 codes with
/// `<p>.scales` and `<p>.biases`; bits and group size from `config`'s `quantization`, else
/// inferred from the shapes, 64 assumed when ambiguous) and bitsandbytes NF4/FP4 (a
/// `<p>.weight.quant_state.bitsandbytes__nf4` tensor, its JSON read with `read_small`).
pub fn recognise_layout(
    tensors: &[TensorInfo],
    config: Option<&serde_json::Value>,
    read_small: &dyn Fn(&str) -> Option<Vec<u8>>,
) -> QuantizedLayout {
    let by_name: BTreeMap<&str, &TensorInfo> =
        tensors.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut layout = QuantizedLayout::default();
    let (cfg_group, cfg_bits) = config_quant(config);
    let mut affine: BTreeMap<(u64, u64), usize> = BTreeMap::new();
    let mut bnb: BTreeMap<String, usize> = BTreeMap::new();
    for t in tensors {
        if let Some((bits, g, groups)) = affine_params(t, &by_name, cfg_group, cfg_bits) {
            let p = &t.name[..t.name.len() - "weight".len()];
            *affine.entry((bits, g)).or_default() += 1;
            layout.quantized.insert(
                t.name.clone(),
                format!("mlx affine int{bits} g{g}, {} x {}", t.shape[0], g * groups),
            );
            layout
                .parts
                .insert(format!("{p}scales"), format!("scales of {}", t.name));
            layout
                .parts
                .insert(format!("{p}biases"), format!("biases of {}", t.name));
        }
        for qt in ["nf4", "fp4"] {
            let state_name = format!("{}.quant_state.bitsandbytes__{qt}", t.name);
            if by_name.contains_key(state_name.as_str()) {
                let state = read_small(&state_name)
                    .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
                let bs = state
                    .as_ref()
                    .and_then(|s| s.get("blocksize"))
                    .and_then(|v| v.as_u64())
                    .map(|b| b.to_string())
                    .unwrap_or_else(|| "?".into());
                let shape = state
                    .as_ref()
                    .and_then(|s| s.get("shape"))
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "?".into());
                let dtype = state
                    .as_ref()
                    .and_then(|s| s.get("dtype"))
                    .and_then(|v| v.as_str())
                    .unwrap_or("?")
                    .to_string();
                *bnb.entry(format!("{qt} blocksize {bs}")).or_default() += 1;
                layout.quantized.insert(
                    t.name.clone(),
                    format!("bitsandbytes {qt} blocksize {bs}, {dtype} {shape}"),
                );
                for part in [".absmax", ".quant_map"] {
                    layout.parts.insert(
                        format!("{}{part}", t.name),
                        format!("{qt} state of {}", t.name),
                    );
                }
                layout
                    .parts
                    .insert(state_name, format!("{qt} state of {}", t.name));
            }
        }
    }
    for ((bits, g), n) in &affine {
        let how = if cfg_group.is_some() {
            "from config.json"
        } else {
            "group size inferred from shapes, 64 assumed when ambiguous"
        };
        layout.summary.push(format!(
            "mlx affine int{bits}, group size {g}: {n} tensors ({how})"
        ));
    }
    for (what, n) in &bnb {
        layout
            .summary
            .push(format!("bitsandbytes {what}: {n} tensors"));
    }
    if layout.summary.is_empty() {
        let mut dts: BTreeMap<String, usize> = BTreeMap::new();
        for t in tensors {
            *dts.entry(t.dtype.to_string()).or_default() += 1;
        }
        let d: Vec<String> = dts.iter().map(|(k, v)| format!("{k} x{v}")).collect();
        layout
            .summary
            .push(format!("not quantized ({})", d.join(", ")));
    }
    layout
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, dtype: Dtype, shape: &[u64]) -> TensorInfo {
        TensorInfo {
            name: name.into(),
            dtype,
            shape: shape.to_vec(),
        }
    }

    #[test]
    fn mlx_affine_from_shapes_and_from_config() {
        // 8 words of 32 bits per row and one group: 4 bits with a group of 64 (or 8 bits with
        // a group of 32, which config.json can say).
        let tensors = [
            t("l.weight", Dtype::U32, &[64, 8]),
            t("l.scales", Dtype::F16, &[64, 1]),
            t("l.biases", Dtype::F16, &[64, 1]),
            t("norm.weight", Dtype::F16, &[64]),
        ];
        let l = recognise_layout(&tensors, None, &|_| None);
        assert_eq!(l.quantized["l.weight"], "mlx affine int4 g64, 64 x 64");
        assert_eq!(l.parts["l.scales"], "scales of l.weight");
        assert!(l.summary[0].starts_with("mlx affine int4, group size 64: 1 tensors"));
        let config = serde_json::json!({"quantization": {"group_size": 32, "bits": 8}});
        let l = recognise_layout(&tensors, Some(&config), &|_| None);
        assert_eq!(l.quantized["l.weight"], "mlx affine int8 g32, 64 x 32");
        let l = recognise_layout(&tensors[3..], None, &|_| None);
        assert_eq!(l.summary, ["not quantized (F16 x1)"]);
    }
}
