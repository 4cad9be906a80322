//! Quantized sources: checkpoints whose weights are already quantized, seen as the logical
//! weights they stand for.
//!
//! Two layouts are recognised (README, "Quantized sources"):
//!
//! * **MLX affine**: `<p>.weight` U32 codes `[rows, rows_words]` with `<p>.scales` and
//!   `<p>.biases` `[rows, cols / group]` (what `mx.quantize` and mlx-lm write); bits and group
//!   size come from the `quantization` of the checkpoint's `config.json` when there is one,
//!   else from the shapes (64 assumed when they are ambiguous). The logical weight is
//!   `[rows, cols]` in the scales' dtype.
//! * **bitsandbytes 4-bit** as omnipack writes it: `<p>.weight` U8 packed codes with
//!   `<p>.weight.absmax`, `<p>.weight.quant_map` and the JSON quant state
//!   `<p>.weight.quant_state.bitsandbytes__nf4` (or `__fp4`), whose `shape`, `dtype` and
//!   `blocksize` give the logical weight.
//!
//! A recognised group of tensors is **one logical weight** with its true shape and parameter
//! count everywhere. When a variant asks for the source's own format (same bits or code book,
//! same group size) the group passes through byte for byte; when it asks for a float format,
//! the group is dequantized exactly as its consumer does (`mx.dequantize`, bitsandbytes'
//! `dequantize_4bit`); when it asks for another quantized format, the group is dequantized and
//! quantized again, only with permission (the error compounds).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::dtype::{Dtype, TensorInfo};
use crate::error::QuantError;
use crate::layout::{affine_params, config_quant};
use crate::spec::{OutputKind, OutputTensor, QuantSpec, WeightFormat, plan_outputs};

/// The format a quantized source group is stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SourceFormat {
    /// MLX affine codes with per-group scales and biases.
    Affine {
        /// Bits per code (2, 3, 4, 6 or 8).
        bits: u8,
        /// Elements per group.
        group_size: u32,
    },
    /// bitsandbytes 4-bit codes with per-block absmax.
    Bnb4 {
        /// FP4 code book (else NF4).
        fp4: bool,
        /// Elements per block.
        blocksize: u32,
    },
}

impl SourceFormat {
    /// The quantizer format that writes this layout.
    pub fn weight_format(self) -> WeightFormat {
        match self {
            SourceFormat::Affine { bits, .. } => WeightFormat::Affine { bits },
            SourceFormat::Bnb4 { fp4: true, .. } => WeightFormat::Fp4,
            SourceFormat::Bnb4 { fp4: false, .. } => WeightFormat::Nf4,
        }
    }

    /// Group (affine) or block (bitsandbytes) size.
    pub fn group_size(self) -> u32 {
        match self {
            SourceFormat::Affine { group_size, .. } => group_size,
            SourceFormat::Bnb4 { blocksize, .. } => blocksize,
        }
    }

    /// True when `spec` writes exactly this layout.
    pub fn is_written_by(self, spec: &QuantSpec) -> bool {
        spec.format == self.weight_format() && spec.group_size == self.group_size()
    }
}

impl fmt::Display for SourceFormat {
    /// `int4 g64`, `nf4 g64`: the manifest's format name and the group size.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} g{}", self.weight_format(), self.group_size())
    }
}

/// One quantized weight of a source: the tensors that store it and what they stand for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuantizedGroup {
    /// Name of the logical weight: `<p>.weight` (the codes tensor's name).
    pub weight: String,
    /// How it is stored.
    pub format: SourceFormat,
    /// Dtype of the logical weight: the scales' dtype (affine) or the quant state's (4-bit).
    pub dtype: Dtype,
    /// True shape of the logical weight, `[rows, cols]`.
    pub shape: Vec<u64>,
    /// Every tensor of the group, the codes first.
    pub parts: Vec<String>,
}

impl QuantizedGroup {
    /// The logical weight as a tensor of the source.
    pub fn logical(&self) -> TensorInfo {
        TensorInfo {
            name: self.weight.clone(),
            dtype: self.dtype,
            shape: self.shape.clone(),
        }
    }
}

/// What a variant does with one quantized group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Treatment {
    /// The variant's format is the source's: the tensors are copied byte for byte.
    PassThrough,
    /// The variant stores the weight in float (or keeps it out of quantization): the group is
    /// dequantized exactly as its consumer does, then written like any float tensor.
    Dequantize,
    /// The variant quantizes to another format: dequantize, then quantize again (the error
    /// compounds; only with permission).
    Requantize,
}

/// The quantized groups of a checkpoint (empty for a float checkpoint).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceLayout {
    groups: BTreeMap<String, QuantizedGroup>,
    part_of: BTreeMap<String, String>,
}

fn bnb_state(
    t: &TensorInfo,
    by_name: &BTreeMap<&str, &TensorInfo>,
    read_small: &dyn Fn(&str) -> Option<Vec<u8>>,
) -> Option<QuantizedGroup> {
    if t.dtype != Dtype::U8 || !(t.name == "weight" || t.name.ends_with(".weight")) {
        return None;
    }
    for (qt, fp4) in [("nf4", false), ("fp4", true)] {
        let state_name = format!("{}.quant_state.bitsandbytes__{qt}", t.name);
        let absmax = format!("{}.absmax", t.name);
        let quant_map = format!("{}.quant_map", t.name);
        if !by_name.contains_key(state_name.as_str()) || !by_name.contains_key(absmax.as_str()) {
            continue;
        }
        let state: serde_json::Value = serde_json::from_slice(&read_small(&state_name)?).ok()?;
        let blocksize = u32::try_from(state.get("blocksize")?.as_u64()?).ok()?;
        let dtype = match state.get("dtype")?.as_str()? {
            "float16" => Dtype::F16,
            "bfloat16" => Dtype::BF16,
            "float32" => Dtype::F32,
            _ => return None,
        };
        let shape: Vec<u64> = state
            .get("shape")?
            .as_array()?
            .iter()
            .map(|d| d.as_u64())
            .collect::<Option<_>>()?;
        let numel = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d))?;
        let am = by_name[absmax.as_str()];
        if shape.len() != 2
            || blocksize == 0
            || t.numel().checked_mul(2) != Some(numel)
            || am.numel() != numel.div_ceil(u64::from(blocksize))
            || am.dtype != Dtype::F32
        {
            return None;
        }
        let mut parts = vec![t.name.clone(), absmax];
        if by_name.contains_key(quant_map.as_str()) {
            parts.push(quant_map);
        }
        parts.push(state_name);
        return Some(QuantizedGroup {
            weight: t.name.clone(),
            format: SourceFormat::Bnb4 { fp4, blocksize },
            dtype,
            shape,
            parts,
        });
    }
    None
}

impl SourceLayout {
    /// Recognises the quantized groups among `tensors` (names as the component sees them),
    /// with the checkpoint's `config.json` when there is one; `read_small` returns the bytes
    /// of a small tensor (the bitsandbytes quant state), `None` when it cannot.
    pub fn recognise(
        tensors: &[TensorInfo],
        config: Option<&serde_json::Value>,
        read_small: &dyn Fn(&str) -> Option<Vec<u8>>,
    ) -> SourceLayout {
        let by_name: BTreeMap<&str, &TensorInfo> =
            tensors.iter().map(|t| (t.name.as_str(), t)).collect();
        let (cfg_group, cfg_bits) = config_quant(config);
        let mut layout = SourceLayout::default();
        for t in tensors {
            let group =
                if let Some((bits, g, groups)) = affine_params(t, &by_name, cfg_group, cfg_bits) {
                    let p = &t.name[..t.name.len() - "weight".len()];
                    let scales = by_name[format!("{p}scales").as_str()];
                    let (Ok(bits), Ok(group_size)) = (u8::try_from(bits), u32::try_from(g)) else {
                        continue;
                    };
                    Some(QuantizedGroup {
                        weight: t.name.clone(),
                        format: SourceFormat::Affine { bits, group_size },
                        dtype: scales.dtype,
                        shape: vec![t.shape[0], g * groups],
                        parts: vec![t.name.clone(), format!("{p}scales"), format!("{p}biases")],
                    })
                } else {
                    bnb_state(t, &by_name, read_small)
                };
            if let Some(g) = group {
                for part in &g.parts {
                    layout.part_of.insert(part.clone(), g.weight.clone());
                }
                layout.groups.insert(g.weight.clone(), g);
            }
        }
        layout
    }

    /// True for a checkpoint without quantized groups.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// The quantized groups, by weight name.
    pub fn groups(&self) -> impl Iterator<Item = &QuantizedGroup> {
        self.groups.values()
    }

    /// The group tensor `name` is part of.
    pub fn group_of(&self, name: &str) -> Option<&QuantizedGroup> {
        self.part_of.get(name).and_then(|w| self.groups.get(w))
    }

    /// The formats of the groups.
    pub fn formats(&self) -> BTreeSet<SourceFormat> {
        self.groups.values().map(|g| g.format).collect()
    }

    /// `int4 g64`, or `mixed (int4 g64, int8 g64)`; `None` for a float checkpoint.
    pub fn describe(&self) -> Option<String> {
        let f: Vec<String> = self.formats().iter().map(|f| f.to_string()).collect();
        match f.len() {
            0 => None,
            1 => Some(f[0].clone()),
            _ => Some(format!("mixed ({})", f.join(", "))),
        }
    }

    /// `tensors` with every quantized group replaced by its logical weight (at the codes'
    /// position): the tensors the checkpoint stands for.
    pub fn logical_tensors(&self, tensors: &[TensorInfo]) -> Vec<TensorInfo> {
        tensors
            .iter()
            .filter_map(|t| match self.group_of(&t.name) {
                Some(g) if g.weight == t.name => Some(g.logical()),
                Some(_) => None,
                None => Some(t.clone()),
            })
            .collect()
    }

    /// What `spec` does with `group`.
    pub fn treatment(group: &QuantizedGroup, spec: &QuantSpec) -> Treatment {
        if !spec.quantizes(&group.logical()) {
            Treatment::Dequantize
        } else if group.format.is_written_by(spec) {
            Treatment::PassThrough
        } else {
            Treatment::Requantize
        }
    }

    /// The groups among `tensors` that `spec` would quantize again, with their format.
    pub fn requantized(&self, tensors: &[TensorInfo], spec: &QuantSpec) -> Vec<&QuantizedGroup> {
        tensors
            .iter()
            .filter_map(|t| self.groups.get(&t.name))
            .filter(|g| Self::treatment(g, spec) == Treatment::Requantize)
            .collect()
    }

    /// The error for `spec` when it would quantize a group again without permission.
    pub fn check_requantize(
        &self,
        tensors: &[TensorInfo],
        spec: &QuantSpec,
        allowed: bool,
    ) -> Result<(), QuantError> {
        match self.requantized(tensors, spec).first() {
            Some(g) if !allowed => Err(QuantError::AlreadyQuantized {
                tensor: g.weight.clone(),
                source_format: g.format.to_string(),
                requested: spec_name(spec),
            }),
            _ => Ok(()),
        }
    }

    /// The inputs the writer reads for `tensors` under `spec`, in order: each tensor as it is,
    /// except the groups `spec` dequantizes (or quantizes again), which become their logical
    /// weight. The second value names the tensors passed through.
    pub fn writer_inputs(
        &self,
        tensors: &[TensorInfo],
        spec: &QuantSpec,
    ) -> (Vec<TensorInfo>, BTreeSet<String>) {
        let mut infos = Vec::with_capacity(tensors.len());
        let mut passed = BTreeSet::new();
        for t in tensors {
            match self.group_of(&t.name) {
                Some(g) if Self::treatment(g, spec) == Treatment::PassThrough => {
                    passed.insert(t.name.clone());
                    infos.push(t.clone());
                }
                Some(g) if g.weight == t.name => infos.push(g.logical()),
                Some(_) => {}
                None => infos.push(t.clone()),
            }
        }
        (infos, passed)
    }

    /// The output tensors of `tensors` (names as the writer sees them) under `spec`, in the
    /// order they are written: [`plan_outputs`] of [`SourceLayout::writer_inputs`], with the
    /// tensors passed through copied unchanged. The planner sizes variants with it, so planned
    /// and written sizes agree.
    pub fn plan_outputs(
        &self,
        tensors: &[TensorInfo],
        spec: &QuantSpec,
    ) -> Result<Vec<OutputTensor>, QuantError> {
        let (infos, passed) = self.writer_inputs(tensors, spec);
        let mut outputs = plan_outputs(&infos, spec)?;
        if !passed.is_empty() {
            let dtypes: BTreeMap<&str, Dtype> =
                tensors.iter().map(|t| (t.name.as_str(), t.dtype)).collect();
            for o in &mut outputs {
                if passed.contains(&o.source) {
                    o.dtype = dtypes[o.source.as_str()];
                    o.kind = OutputKind::Kept;
                }
            }
        }
        Ok(outputs)
    }
}

/// `int8 g64`, `f16`: the format a spec writes.
fn spec_name(spec: &QuantSpec) -> String {
    if spec.format.uses_groups() {
        format!("{} g{}", spec.format, spec.group_size)
    } else {
        spec.format.to_string()
    }
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

    fn int4_g64() -> Vec<TensorInfo> {
        vec![
            t("l.biases", Dtype::F16, &[1024, 16]),
            t("l.scales", Dtype::F16, &[1024, 16]),
            t("l.weight", Dtype::U32, &[1024, 128]),
            t("norm.weight", Dtype::F16, &[1024]),
        ]
    }

    #[test]
    fn an_affine_group_is_one_logical_weight() {
        let tensors = int4_g64();
        let l = SourceLayout::recognise(&tensors, None, &|_| None);
        assert_eq!(l.describe().as_deref(), Some("int4 g64"));
        let logical = l.logical_tensors(&tensors);
        assert_eq!(
            logical,
            [
                t("l.weight", Dtype::F16, &[1024, 1024]),
                t("norm.weight", Dtype::F16, &[1024])
            ]
        );
        // 1024 x 1024 + 1024, not 1024 x (128 + 16 + 16) + 1024.
        assert_eq!(logical.iter().map(|t| t.numel()).sum::<u64>(), 1_049_600);
        // config.json says int8 g32: the same shapes read differently.
        let config = serde_json::json!({"quantization": {"group_size": 32, "bits": 8}});
        let l = SourceLayout::recognise(&tensors, Some(&config), &|_| None);
        assert_eq!(l.describe().as_deref(), Some("int8 g32"));
        assert_eq!(l.logical_tensors(&tensors)[0].shape, [1024, 512]);
    }

    #[test]
    fn same_format_passes_through_and_others_need_permission() {
        let tensors = int4_g64();
        let l = SourceLayout::recognise(&tensors, None, &|_| None);
        let same = QuantSpec::new(WeightFormat::Affine { bits: 4 }, 64);
        let mut with_keep_dtype = same.clone();
        with_keep_dtype.keep_dtype = Some(Dtype::F32);
        for spec in [&same, &with_keep_dtype] {
            let outs = l.plan_outputs(&tensors, spec).unwrap();
            let got: Vec<(&str, Dtype, OutputKind)> = outs
                .iter()
                .map(|o| (o.name.as_str(), o.dtype, o.kind))
                .collect();
            let norm = if spec.keep_dtype.is_some() {
                (Dtype::F32, OutputKind::Cast)
            } else {
                (Dtype::F16, OutputKind::Kept)
            };
            assert_eq!(
                got,
                [
                    ("l.biases", Dtype::F16, OutputKind::Kept),
                    ("l.scales", Dtype::F16, OutputKind::Kept),
                    ("l.weight", Dtype::U32, OutputKind::Kept),
                    ("norm.weight", norm.0, norm.1),
                ]
            );
        }
        assert!(l.check_requantize(&tensors, &same, false).is_ok());

        let int8 = QuantSpec::new(WeightFormat::Affine { bits: 8 }, 64);
        let err = l.check_requantize(&tensors, &int8, false).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("`l.weight`") && msg.contains("int4 g64") && msg.contains("int8 g64"),
            "{msg}"
        );
        assert!(l.check_requantize(&tensors, &int8, true).is_ok());
        let outs = l.plan_outputs(&tensors, &int8).unwrap();
        assert_eq!(outs[0].name, "l.weight");
        assert_eq!(outs[0].shape, [1024, 256]);
        assert_eq!(outs[0].kind, OutputKind::AffineCodes);

        // Float formats dequantize without permission.
        let f16 = QuantSpec::new(WeightFormat::F16, 64);
        assert!(l.check_requantize(&tensors, &f16, false).is_ok());
        let outs = l.plan_outputs(&tensors, &f16).unwrap();
        assert_eq!(outs[0].shape, [1024, 1024]);
        assert_eq!(outs[0].dtype, Dtype::F16);
    }

    #[test]
    fn nf4_as_omnipack_writes_it() {
        let src = t("l.weight", Dtype::BF16, &[64, 256]);
        let spec = QuantSpec::new(WeightFormat::Nf4, 64);
        let outs = plan_outputs(std::slice::from_ref(&src), &spec).unwrap();
        let tensors: Vec<TensorInfo> = outs.iter().map(|o| t(&o.name, o.dtype, &o.shape)).collect();
        let state = crate::spec::bnb_quant_state_json(WeightFormat::Nf4, 64, &src);
        let read = |name: &str| name.ends_with("__nf4").then(|| state.clone().into_bytes());
        let l = SourceLayout::recognise(&tensors, None, &read);
        assert_eq!(l.describe().as_deref(), Some("nf4 g64"));
        assert_eq!(l.logical_tensors(&tensors), [src]);
        let again = l.plan_outputs(&tensors, &spec).unwrap();
        assert!(again.iter().all(|o| o.kind == OutputKind::Kept));
        assert_eq!(
            crate::spec::data_bytes(&again),
            crate::spec::data_bytes(&outs)
        );
        // Without the quant state the packed bytes are not recognised.
        assert!(SourceLayout::recognise(&tensors, None, &|_| None).is_empty());
    }
}
