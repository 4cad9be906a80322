//! Quantization specs and the exact output layout, as a pure function of the input headers.
//!
//! [`plan_outputs`] is used both by the planner (to know sizes without reading data) and by
//! the writer, so planned sizes equal written sizes by construction.
//!
//! # Which tensors are quantized
//!
//! A tensor is quantized (to an integer or NF4/FP4 format) when all of these hold:
//! * its dtype is `F32`, `F16` or `BF16`;
//! * it is 2-D;
//! * its name is `weight` or ends with `.weight`;
//! * its last axis is a multiple of `group_size`;
//! * its name matches none of the `keep` globs (`*` any run of characters, `?` one character).
//!
//! Every other tensor is written unchanged or cast: a float tensor (`F32`/`F16`/`BF16`) is cast
//! to `keep_dtype` when that is set; otherwise, when the target format is itself a float
//! format (`f32`, `f16`, `bf16`), tensors not matching a `keep` glob are cast to it; otherwise
//! it keeps its source dtype. Tensors of other dtypes (integers, `F64`, `F8_*`) are copied
//! as they are. Output tensors keep the input order; a quantized tensor expands in place into
//! its parts (see [`OutputKind`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::dtype::{Dtype, TensorInfo};
use crate::error::QuantError;

/// A weight format: what a variant's quantizable tensors become.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightFormat {
    /// IEEE single precision (cast).
    F32,
    /// IEEE half precision (cast, round to nearest even).
    F16,
    /// bfloat16 (cast, round to nearest even).
    Bf16,
    /// MLX affine integer quantization with `bits` in 2, 3, 4, 6, 8.
    Affine {
        /// Bits per code.
        bits: u8,
    },
    /// bitsandbytes blockwise NF4.
    Nf4,
    /// bitsandbytes blockwise FP4.
    Fp4,
}

impl WeightFormat {
    /// Parses `f32 f16 bf16 int2 int3 int4 int6 int8 nf4 fp4`.
    pub fn parse(s: &str) -> Option<WeightFormat> {
        Some(match s {
            "f32" => WeightFormat::F32,
            "f16" => WeightFormat::F16,
            "bf16" => WeightFormat::Bf16,
            "int2" => WeightFormat::Affine { bits: 2 },
            "int3" => WeightFormat::Affine { bits: 3 },
            "int4" => WeightFormat::Affine { bits: 4 },
            "int6" => WeightFormat::Affine { bits: 6 },
            "int8" => WeightFormat::Affine { bits: 8 },
            "nf4" => WeightFormat::Nf4,
            "fp4" => WeightFormat::Fp4,
            _ => return None,
        })
    }

    /// The format's name as written in manifests (`int4`, `nf4`, `f16`, ...).
    pub fn name(self) -> String {
        match self {
            WeightFormat::F32 => "f32".into(),
            WeightFormat::F16 => "f16".into(),
            WeightFormat::Bf16 => "bf16".into(),
            WeightFormat::Affine { bits } => format!("int{bits}"),
            WeightFormat::Nf4 => "nf4".into(),
            WeightFormat::Fp4 => "fp4".into(),
        }
    }

    /// For a float format, its dtype.
    pub fn float_dtype(self) -> Option<Dtype> {
        match self {
            WeightFormat::F32 => Some(Dtype::F32),
            WeightFormat::F16 => Some(Dtype::F16),
            WeightFormat::Bf16 => Some(Dtype::BF16),
            _ => None,
        }
    }

    /// Whether `group_size` matters for this format.
    pub fn uses_groups(self) -> bool {
        self.float_dtype().is_none()
    }

    /// The safetensors `__metadata__` a file in this format needs: `{"format": "mlx"}` for the
    /// MLX layouts (floats and affine integers, so mlx-lm loads them as they are) and
    /// `{"format": "pt"}` for NF4/FP4 (transformers' layout).
    pub fn metadata(self) -> BTreeMap<String, String> {
        let v = match self {
            WeightFormat::Nf4 | WeightFormat::Fp4 => "pt",
            _ => "mlx",
        };
        BTreeMap::from([("format".to_string(), v.to_string())])
    }
}

impl WeightFormat {
    /// The `"quantization"` object mlx-lm and MLX Swift expect in `config.json` for an
    /// affine format (`{"group_size", "bits", "mode": "affine"}`); `None` for other formats.
    pub fn mlx_quantization_config(self, group_size: u32) -> Option<serde_json::Value> {
        match self {
            WeightFormat::Affine { bits } => Some(serde_json::json!({
                "group_size": group_size,
                "bits": bits,
                "mode": "affine",
            })),
            _ => None,
        }
    }
}

impl fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// How the MLX affine formats (`int2` ... `int8`) choose each group's scale and bias. The
/// file layout is the same for both: only the numbers differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Method {
    /// Round to nearest on the grid spanning the group's minimum and maximum, bit-exact with
    /// `mx.quantize` (the default).
    #[default]
    Rtn,
    /// Error-minimising: the scale and bias are searched for the smallest squared error after
    /// MLX dequantization, never worse than `rtn` on any group (docs/quantization.md).
    Mse,
}

impl Method {
    /// Every method, in the order they are documented.
    pub const ALL: [Method; 2] = [Method::Rtn, Method::Mse];

    /// The method's name as written in manifests and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Rtn => "rtn",
            Method::Mse => "mse",
        }
    }

    /// Parses `rtn` or `mse`.
    pub fn parse(s: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.as_str() == s)
    }

    /// Whether the method changes the output of `format`: `mse` applies to the MLX affine
    /// formats only; float casts have no scale, and NF4/FP4 keep bitsandbytes' absmax scaling,
    /// so for them both methods write the same bytes.
    pub fn applies_to(self, format: WeightFormat) -> bool {
        self == Method::Rtn || matches!(format, WeightFormat::Affine { .. })
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to produce: format, group size, method, and which tensors to keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuantSpec {
    /// Target format of quantizable tensors.
    pub format: WeightFormat,
    /// Group size (MLX affine) or block size (NF4/FP4). Ignored by float formats.
    pub group_size: u32,
    /// How MLX affine scales and biases are chosen; other formats ignore it (see
    /// [`Method::applies_to`]).
    pub method: Method,
    /// Globs (`*`, `?`) of tensor names kept out of quantization.
    pub keep: Vec<String>,
    /// Dtype of kept float tensors; `None` keeps each one's own dtype.
    pub keep_dtype: Option<Dtype>,
}

impl QuantSpec {
    /// A spec with the `rtn` method, no keep globs and no keep dtype.
    pub fn new(format: WeightFormat, group_size: u32) -> QuantSpec {
        QuantSpec {
            format,
            group_size,
            method: Method::Rtn,
            keep: Vec::new(),
            keep_dtype: None,
        }
    }

    /// The same spec with `method`.
    pub fn with_method(mut self, method: Method) -> QuantSpec {
        self.method = method;
        self
    }

    /// Checks bits, group size and keep dtype.
    pub fn validate(&self) -> Result<(), QuantError> {
        match self.format {
            WeightFormat::Affine { bits } => {
                if !matches!(bits, 2 | 3 | 4 | 6 | 8) {
                    return Err(QuantError::Spec(format!(
                        "unsupported affine bit width {bits}: use 2, 3, 4, 6 or 8"
                    )));
                }
                if !matches!(self.group_size, 32 | 64 | 128) {
                    return Err(QuantError::Spec(format!(
                        "unsupported group size {} for {}: use 32, 64 or 128",
                        self.group_size, self.format
                    )));
                }
            }
            WeightFormat::Nf4 | WeightFormat::Fp4
                if !(self.group_size.is_power_of_two()
                    && (32..=4096).contains(&self.group_size)) =>
            {
                return Err(QuantError::Spec(format!(
                    "unsupported block size {} for {}: use a power of two from 32 to 4096 (64 is the bitsandbytes default)",
                    self.group_size, self.format
                )));
            }
            _ => {}
        }
        if let Some(d) = self.keep_dtype
            && !d.is_working_float()
        {
            return Err(QuantError::Spec(format!(
                "keep_dtype must be f32, f16 or bf16, not {d}"
            )));
        }
        Ok(())
    }

    /// Whether `name` matches one of the keep globs.
    pub fn is_kept(&self, name: &str) -> bool {
        self.keep.iter().any(|g| glob_match(g, name))
    }

    /// Whether a tensor is quantized under this spec (see the module docs for the rule).
    pub fn quantizes(&self, t: &TensorInfo) -> bool {
        self.format.uses_groups()
            && t.dtype.is_working_float()
            && t.shape.len() == 2
            && (t.name == "weight" || t.name.ends_with(".weight"))
            && self.group_size > 0
            && t.shape[1].is_multiple_of(u64::from(self.group_size))
            && t.shape[1] > 0
            && !self.is_kept(&t.name)
    }
}

/// Matches `name` against a glob with `*` (any run, possibly empty) and `?` (one char).
pub fn glob_match(glob: &str, name: &str) -> bool {
    let g: Vec<char> = glob.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut gi, mut ni) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if gi < g.len() && (g[gi] == '?' || (g[gi] != '*' && g[gi] == n[ni])) {
            gi += 1;
            ni += 1;
        } else if gi < g.len() && g[gi] == '*' {
            star = Some((gi, ni));
            gi += 1;
        } else if let Some((sg, sn)) = star {
            gi = sg + 1;
            ni = sn + 1;
            star = Some((sg, sn + 1));
        } else {
            return false;
        }
    }
    while gi < g.len() && g[gi] == '*' {
        gi += 1;
    }
    gi == g.len()
}

/// The role of an output tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutputKind {
    /// Copied unchanged.
    Kept,
    /// Cast to another float dtype (round to nearest even).
    Cast,
    /// MLX packed codes `<p>.weight`, U32 `[out, in*bits/32]`.
    AffineCodes,
    /// MLX scales `<p>.scales`, input dtype `[out, in/group]`.
    AffineScales,
    /// MLX biases `<p>.biases`, input dtype `[out, in/group]`.
    AffineBiases,
    /// bitsandbytes packed 4-bit codes `<p>.weight`, U8 `[numel/2, 1]`.
    Nf4Packed,
    /// bitsandbytes per-block absmax `<p>.weight.absmax`, F32 `[numel/blocksize]`.
    Nf4Absmax,
    /// bitsandbytes code book `<p>.weight.quant_map`, F32 `[16]`.
    Nf4QuantMap,
    /// bitsandbytes JSON quant state `<p>.weight.quant_state.bitsandbytes__nf4` (or `__fp4`),
    /// U8 bytes.
    Nf4QuantState,
}

/// One tensor of the output file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputTensor {
    /// Output tensor name.
    pub name: String,
    /// Output dtype.
    pub dtype: Dtype,
    /// Output shape.
    pub shape: Vec<u64>,
    /// Name of the input tensor it comes from.
    pub source: String,
    /// What it is.
    pub kind: OutputKind,
}

impl OutputTensor {
    /// Bytes of data.
    pub fn data_bytes(&self) -> u64 {
        self.shape
            .iter()
            .fold(self.dtype.size_bytes(), |a, &d| a.saturating_mul(d))
    }
}

/// The JSON quant state bitsandbytes stores for a 4-bit tensor, byte for byte as
/// `QuantState.as_dict(packed=True)` writes it (Python `json.dumps` separators).
pub fn bnb_quant_state_json(format: WeightFormat, blocksize: u32, source: &TensorInfo) -> String {
    let quant_type = if format == WeightFormat::Fp4 {
        "fp4"
    } else {
        "nf4"
    };
    let dtype = match source.dtype {
        Dtype::F16 => "float16",
        Dtype::BF16 => "bfloat16",
        _ => "float32",
    };
    let shape: Vec<String> = source.shape.iter().map(|d| d.to_string()).collect();
    format!(
        "{{\"quant_type\": \"{quant_type}\", \"blocksize\": {blocksize}, \"dtype\": \"{dtype}\", \"shape\": [{}]}}",
        shape.join(", ")
    )
}

fn strip_weight(name: &str) -> &str {
    &name[..name.len() - "weight".len()]
}

/// Plans the output tensors of `inputs` under `spec`, in the exact order they are written.
/// `inputs` carry the output-side names (for example with a prefix already stripped).
pub fn plan_outputs(
    inputs: &[TensorInfo],
    spec: &QuantSpec,
) -> Result<Vec<OutputTensor>, QuantError> {
    spec.validate()?;
    let mut out = Vec::with_capacity(inputs.len() * 2);
    for t in inputs {
        let g = u64::from(spec.group_size);
        if spec.quantizes(t) {
            let (rows, cols) = (t.shape[0], t.shape[1]);
            // A header may declare a 0-row tensor with any number of columns: sizes computed
            // from them are checked, never wrapped.
            let too_big = || {
                QuantError::Spec(format!(
                    "tensor `{}`: shape [{rows}, {cols}] is too large to quantize",
                    t.name
                ))
            };
            cols.checked_mul(32)
                .and(rows.checked_mul(cols))
                .and_then(|n| n.checked_mul(32))
                .ok_or_else(too_big)?;
            match spec.format {
                WeightFormat::Affine { bits } => {
                    let p = strip_weight(&t.name);
                    let words = cols * u64::from(bits) / 32;
                    out.push(OutputTensor {
                        name: t.name.clone(),
                        dtype: Dtype::U32,
                        shape: vec![rows, words],
                        source: t.name.clone(),
                        kind: OutputKind::AffineCodes,
                    });
                    for (suffix, kind) in [
                        ("scales", OutputKind::AffineScales),
                        ("biases", OutputKind::AffineBiases),
                    ] {
                        out.push(OutputTensor {
                            name: format!("{p}{suffix}"),
                            dtype: t.dtype,
                            shape: vec![rows, cols / g],
                            source: t.name.clone(),
                            kind,
                        });
                    }
                }
                WeightFormat::Nf4 | WeightFormat::Fp4 => {
                    let n = rows * cols;
                    let qt = if spec.format == WeightFormat::Fp4 {
                        "fp4"
                    } else {
                        "nf4"
                    };
                    let state = bnb_quant_state_json(spec.format, spec.group_size, t);
                    let parts = [
                        (
                            String::new(),
                            Dtype::U8,
                            vec![n / 2, 1],
                            OutputKind::Nf4Packed,
                        ),
                        (
                            ".absmax".into(),
                            Dtype::F32,
                            vec![n / g],
                            OutputKind::Nf4Absmax,
                        ),
                        (
                            ".quant_map".into(),
                            Dtype::F32,
                            vec![16],
                            OutputKind::Nf4QuantMap,
                        ),
                        (
                            format!(".quant_state.bitsandbytes__{qt}"),
                            Dtype::U8,
                            vec![state.len() as u64],
                            OutputKind::Nf4QuantState,
                        ),
                    ];
                    for (suffix, dtype, shape, kind) in parts {
                        out.push(OutputTensor {
                            name: format!("{}{suffix}", t.name),
                            dtype,
                            shape,
                            source: t.name.clone(),
                            kind,
                        });
                    }
                }
                WeightFormat::F32 | WeightFormat::F16 | WeightFormat::Bf16 => {}
            }
            continue;
        }
        let dtype = if t.dtype.is_working_float() {
            match (spec.keep_dtype, spec.format.float_dtype()) {
                (Some(d), _) => d,
                (None, Some(d)) if !spec.is_kept(&t.name) => d,
                _ => t.dtype,
            }
        } else {
            t.dtype
        };
        out.push(OutputTensor {
            name: t.name.clone(),
            dtype,
            shape: t.shape.clone(),
            source: t.name.clone(),
            kind: if dtype == t.dtype {
                OutputKind::Kept
            } else {
                OutputKind::Cast
            },
        });
    }
    let mut names = BTreeSet::new();
    for o in &out {
        if !names.insert(o.name.as_str()) {
            return Err(QuantError::Spec(format!(
                "output tensor name `{}` (from input `{}`) is produced twice; rename the input tensor or keep it out of quantization",
                o.name, o.source
            )));
        }
    }
    Ok(out)
}

/// Tensor data bytes of a planned file: the README's "weight bytes" (the header excluded).
pub fn data_bytes(outputs: &[OutputTensor]) -> u64 {
    outputs.iter().map(|o| o.data_bytes()).sum()
}

/// Total size of the file the writer produces: 8-byte length, header JSON (padded with
/// spaces to a multiple of 8) and the data.
pub fn file_bytes(outputs: &[OutputTensor], metadata: &BTreeMap<String, String>) -> u64 {
    header_bytes(outputs, metadata).len() as u64 + data_bytes(outputs)
}

/// The exact header bytes (length prefix + JSON + padding) the writer emits.
pub fn header_bytes(outputs: &[OutputTensor], metadata: &BTreeMap<String, String>) -> Vec<u8> {
    let mut json = String::with_capacity(64 + outputs.len() * 96);
    json.push('{');
    let mut first = true;
    if !metadata.is_empty() {
        json.push_str("\"__metadata__\":");
        json.push_str(&serde_json::to_string(metadata).unwrap_or_else(|_| "{}".into()));
        first = false;
    }
    let mut offset = 0u64;
    for o in outputs {
        if !first {
            json.push(',');
        }
        first = false;
        let len = o.data_bytes();
        let name = serde_json::to_string(&o.name).unwrap_or_else(|_| "\"\"".into());
        let shape: Vec<String> = o.shape.iter().map(|d| d.to_string()).collect();
        json.push_str(&format!(
            "{name}:{{\"dtype\":\"{}\",\"shape\":[{}],\"data_offsets\":[{offset},{}]}}",
            o.dtype.safetensors_name(),
            shape.join(","),
            offset + len
        ));
        offset += len;
    }
    json.push('}');
    while !json.len().is_multiple_of(8) {
        json.push(' ');
    }
    let mut bytes = Vec::with_capacity(8 + json.len());
    bytes.extend_from_slice(&(json.len() as u64).to_le_bytes());
    bytes.extend_from_slice(json.as_bytes());
    bytes
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
    fn globs() {
        assert!(glob_match(
            "*norm*",
            "model.layers.0.input_layernorm.weight"
        ));
        assert!(glob_match("*.bias", "a.b.bias"));
        assert!(!glob_match("*.bias", "a.b.biases"));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "ac"));
        assert!(glob_match("*", ""));
        assert!(glob_match("**x*", "yyxyy"));
    }

    #[test]
    fn plan_int4() {
        let inputs = vec![
            t("l.weight", Dtype::F16, &[8, 128]),
            t("l.bias", Dtype::F16, &[8]),
            t("norm.weight", Dtype::F32, &[128]),
            t("odd.weight", Dtype::F16, &[8, 100]),
            t("ids", Dtype::I64, &[4]),
        ];
        let spec = QuantSpec::new(WeightFormat::Affine { bits: 4 }, 64);
        let out = plan_outputs(&inputs, &spec).unwrap();
        let names: Vec<_> = out.iter().map(|o| (o.name.as_str(), o.kind)).collect();
        assert_eq!(
            names,
            vec![
                ("l.weight", OutputKind::AffineCodes),
                ("l.scales", OutputKind::AffineScales),
                ("l.biases", OutputKind::AffineBiases),
                ("l.bias", OutputKind::Kept),
                ("norm.weight", OutputKind::Kept),
                ("odd.weight", OutputKind::Kept),
                ("ids", OutputKind::Kept),
            ]
        );
        assert_eq!(out[0].shape, vec![8, 16]);
        assert_eq!(out[1].shape, vec![8, 2]);
        assert_eq!(out[1].dtype, Dtype::F16);
        assert_eq!(
            data_bytes(&out),
            8 * 16 * 4 + 2 * 8 * 2 * 2 + 16 + 512 + 1600 + 32
        );
        let md = WeightFormat::Affine { bits: 4 }.metadata();
        let h = header_bytes(&out, &md);
        assert_eq!(h.len() % 8, 0);
        assert_eq!(file_bytes(&out, &md), h.len() as u64 + data_bytes(&out));
    }

    #[test]
    fn plan_float_and_keep() {
        let inputs = vec![
            t("a.weight", Dtype::F32, &[4, 64]),
            t("norm.weight", Dtype::F32, &[64]),
        ];
        let mut spec = QuantSpec::new(WeightFormat::F16, 64);
        spec.keep = vec!["*norm*".into()];
        let out = plan_outputs(&inputs, &spec).unwrap();
        assert_eq!(out[0].dtype, Dtype::F16);
        assert_eq!(out[0].kind, OutputKind::Cast);
        assert_eq!(out[1].dtype, Dtype::F32);
        spec.keep_dtype = Some(Dtype::BF16);
        let out = plan_outputs(&inputs, &spec).unwrap();
        assert_eq!(out[0].dtype, Dtype::BF16);
        assert_eq!(out[1].dtype, Dtype::BF16);
    }

    #[test]
    fn plan_nf4_names() {
        let inputs = vec![t("m.weight", Dtype::F16, &[4, 128])];
        let spec = QuantSpec::new(WeightFormat::Nf4, 64);
        let out = plan_outputs(&inputs, &spec).unwrap();
        let names: Vec<_> = out.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "m.weight",
                "m.weight.absmax",
                "m.weight.quant_map",
                "m.weight.quant_state.bitsandbytes__nf4"
            ]
        );
        assert_eq!(out[0].shape, vec![256, 1]);
        assert_eq!(out[1].shape, vec![8]);
        assert_eq!(
            bnb_quant_state_json(WeightFormat::Nf4, 64, &inputs[0]),
            r#"{"quant_type": "nf4", "blocksize": 64, "dtype": "float16", "shape": [4, 128]}"#
        );
    }

    #[test]
    fn duplicate_output_names_are_errors() {
        let inputs = vec![
            t("l.weight", Dtype::F16, &[8, 64]),
            t("l.scales", Dtype::F16, &[8]),
        ];
        let spec = QuantSpec::new(WeightFormat::Affine { bits: 8 }, 64);
        assert!(plan_outputs(&inputs, &spec).is_err());
    }

    #[test]
    fn mlx_config() {
        let c = WeightFormat::Affine { bits: 4 }
            .mlx_quantization_config(64)
            .unwrap();
        assert_eq!(
            c.to_string(),
            r#"{"group_size":64,"bits":4,"mode":"affine"}"#
        );
        assert!(WeightFormat::Nf4.mlx_quantization_config(64).is_none());
    }

    #[test]
    fn methods() {
        for m in Method::ALL {
            assert_eq!(Method::parse(m.as_str()), Some(m));
            assert_eq!(m.to_string(), m.as_str());
        }
        assert_eq!(Method::parse("gptq"), None);
        assert_eq!(Method::default(), Method::Rtn);
        assert!(Method::Mse.applies_to(WeightFormat::Affine { bits: 3 }));
        assert!(!Method::Mse.applies_to(WeightFormat::Nf4));
        assert!(!Method::Mse.applies_to(WeightFormat::F16));
        let spec = QuantSpec::new(WeightFormat::Affine { bits: 4 }, 64).with_method(Method::Mse);
        assert_eq!(spec.method, Method::Mse);
    }

    #[test]
    fn bad_specs() {
        assert!(
            QuantSpec::new(WeightFormat::Affine { bits: 5 }, 64)
                .validate()
                .is_err()
        );
        assert!(
            QuantSpec::new(WeightFormat::Affine { bits: 4 }, 48)
                .validate()
                .is_err()
        );
        assert!(QuantSpec::new(WeightFormat::Nf4, 100).validate().is_err());
        let mut s = QuantSpec::new(WeightFormat::F16, 64);
        s.keep_dtype = Some(Dtype::I8);
        assert!(s.validate().is_err());
    }
}
