//! The bundle manifest as written by users (`omnipack: 1`).
//!
//! These types are the single source of truth for the manifest format: the JSON schema in
//! `schemas/omnipack-manifest.schema.json` is generated from them, so every doc comment here
//! becomes the description an editor shows on hover. Optional fields stay `Option` here;
//! defaults are applied in one place, `resolved.rs`.

use std::borrow::Cow;
use std::collections::BTreeMap;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

use crate::units::{ByteSize, Duration};

use omnipack_summary::named_enum;
pub use omnipack_summary::names::{Delivery, Format, KvFormat, Method, Residency, Role, Runtime};

named_enum!(ComputeUnits { CpuOnly => "cpu_only", CpuAndGpu => "cpu_and_gpu", CpuAndNe => "cpu_and_ne", All => "all" });
named_enum!(FloatDtype { F32 => "f32", F16 => "f16", Bf16 => "bf16" });
named_enum!(IoDtype { F32 => "f32", F16 => "f16" });

/// An omnipack bundle manifest: the components of an on-device model, how each is quantized
/// and delivered, and the device memory tiers it must fit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "omnipack bundle manifest")]
pub struct Manifest {
    /// Manifest format version. Always `1`.
    pub omnipack: ManifestVersion,
    /// Name, version and App Store bundle identifier of the package.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<Package>,
    /// A base manifest this one extends, relative to this file. Maps merge key by key, lists
    /// replace the base's list as a whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extends: Option<String>,
    /// Memory taken by the app and the runtime itself, counted in every tier's peak
    /// (for example `300MiB`). Default `0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_overhead: Option<ByteSize>,
    /// Device memory tiers: one budget and load plan per class of device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tiers: Option<Vec<Tier>>,
    /// The model components shipped as separate bundles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub components: Option<Vec<Component>>,
}

/// The manifest format version; only `1` exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct ManifestVersion;

impl JsonSchema for ManifestVersion {
    fn schema_name() -> Cow<'static, str> {
        "ManifestVersion".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "Manifest format version. Always `1`.",
            "type": "integer",
            "oneOf": [
                { "const": 1, "description": "Version 1 of the omnipack manifest format." }
            ]
        })
    }
}

impl TryFrom<u64> for ManifestVersion {
    type Error = String;
    fn try_from(v: u64) -> Result<Self, String> {
        if v == 1 {
            Ok(ManifestVersion)
        } else {
            Err(format!(
                "unsupported manifest version {v}; this omnipack reads `omnipack: 1`"
            ))
        }
    }
}

impl From<ManifestVersion> for u64 {
    fn from(_: ManifestVersion) -> u64 {
        1
    }
}

/// Identity of the package.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Package {
    /// Package name: lowercase letters, digits, `_` and `-`, starting with a letter or digit;
    /// at most 64 characters.
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9_-]*$"), length(max = 64))]
    pub name: String,
    /// Package version, for example `1.0.0`.
    pub version: String,
    /// The app's reverse-DNS bundle identifier, for example `com.example.omnicoder`. It is
    /// recorded in the summary; asset-pack IDs do not contain it (App Store Connect refuses
    /// dots in asset-pack identifiers).
    #[schemars(regex(pattern = r"^[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*$"))]
    pub bundle_id: String,
    /// Optional namespace of every asset-pack ID: letters, digits and single inner hyphens
    /// (for example `omnicoder`). With it a pack's ID is `<asset_pack_prefix>-<bundle id>`,
    /// without it the bundle id alone, in both cases with `_` turned into `-`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9]+(-[A-Za-z0-9]+)*$"))]
    pub asset_pack_prefix: Option<String>,
}

/// One class of devices and the memory an app may use on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    /// Tier name, used in bundle ids and overrides (for example `iphone-3gb`); at most 64
    /// characters (bundle ids become file names).
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9_-]*$"), length(max = 64))]
    pub name: String,
    /// Physical memory of the device class (for example `3GiB`).
    pub device_memory: ByteSize,
    /// Memory the app may use before iOS terminates it (for example `1.4GiB`).
    pub memory_limit: ByteSize,
    /// Safety margin kept free below `memory_limit`. Default `0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_headroom: Option<ByteSize>,
    /// Cap on the context length (tokens) for this tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_seq_len: Option<u64>,
    /// The components this tier ships, by name. Default: every component.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub components: Option<Vec<String>>,
}

/// Core ML compute units.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ComputeUnits {
    /// CPU only: weights decompressed to f16 at load.
    CpuOnly,
    /// CPU and GPU: weights decompressed to f16 at load.
    CpuAndGpu,
    /// CPU and Neural Engine: weights stay compressed in memory.
    CpuAndNe,
    /// Any compute unit: weights decompressed to f16 at load.
    All,
}

/// A dtype for tensors left unquantized.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum FloatDtype {
    /// 32-bit IEEE float.
    F32,
    /// 16-bit IEEE float.
    F16,
    /// bfloat16.
    Bf16,
}

/// One value or a list of values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    /// A single value.
    One(T),
    /// A list of values (at least one).
    Many(#[schemars(length(min = 1))] Vec<T>),
}

impl<T: Clone> OneOrMany<T> {
    /// The values as a list.
    pub fn to_vec(&self) -> Vec<T> {
        match self {
            OneOrMany::One(v) => vec![v.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// A model component: one bundle per chosen quantization variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Component {
    /// Component name, used in bundle ids (for example `text`); at most 64 characters (bundle
    /// ids become file names, which the file system limits to 255 bytes).
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9_-]*$"), length(max = 64))]
    pub name: String,
    /// What the component is.
    pub role: Role,
    /// Stem of the decode-step files and sidecars. Default: the component name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"), length(max = 64))]
    pub artifact: Option<String>,
    /// Runtime that loads it on device. Default `mlx`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<Runtime>,
    /// Core ML compute units (only with `runtime: coreml`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute_units: Option<ComputeUnits>,
    /// Where the component's weights or files come from: exactly one of `safetensors`,
    /// `mlpackage`, `command` or `files`.
    pub source: Source,
    /// The feature names of a Core ML decode step (`runtime: coreml`, `role:
    /// text_decode_step`), checked against the model. Default: `input_ids`, `logits`,
    /// `k_lat_{i}`/`v_lat_{i}` in (or as iOS 18 states), `nk_lat_{i}`/`nv_lat_{i}` out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decode_step: Option<DecodeStepNames>,
    /// Shape of a text decode step, needed by the KV-cache and activation memory model.
    /// Optional for a Core ML decode step read from `source.mlpackage`: read from the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<Architecture>,
    /// Longest context (tokens) the component supports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_seq_len: Option<u64>,
    /// Download policy of its asset pack. Default: `essential` for text and data,
    /// `on_demand` for decoders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<Delivery>,
    /// Memory policy. Default: `always` for text and data, `lazy` for decoders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub residency: Option<Residency>,
    /// Activation memory while it runs (per decode step for a text decode step). Default for a
    /// decode step, with a plan warning: `4 * vocab_size + layers * (4 * heads * T + 32 *
    /// hidden_size)` bytes for the tier's context `T`, `heads = max(1, hidden_size /
    /// kv_head_dim)`, a floor rather than a measurement; otherwise `0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation_memory: Option<ByteSize>,
    /// Override of the memory model: the bytes this component keeps resident once loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resident_memory: Option<ByteSize>,
    /// Declared size of an exporter's outputs, used to plan before the export has run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<ByteSize>,
    /// How the weights are quantized. Default: `f16`, group size 64, nothing kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<Quantization>,
    /// KV-cache quantization and paging of a text decode step. Default: f16 without paging.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_cache: Option<KvCache>,
}

/// Where a component comes from: exactly one of `safetensors`, `mlpackage`, `command` or
/// `files`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// A safetensors checkpoint: one path or a list of shards, relative to the manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safetensors: Option<OneOrMany<String>>,
    /// A Core ML model (`runtime: coreml` only): an `.mlpackage` folder or an `.mlmodel` file,
    /// relative to the manifest. omnipack reads it (sizes, inputs and outputs, the decode-step
    /// contract) and ships it byte-reproducibly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mlpackage: Option<String>,
    /// Select the tensors whose names start with this prefix, and strip it (for example `text.`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// A Hugging Face style `config.json` (a JSON object), relative to the manifest; only with
    /// `safetensors`. The bundle's `config.json` is this object with omnipack's keys
    /// (`quantization`, `omnipack_*`, ...) overlaid, so that MLX runtimes (mlx-lm, MLX Swift)
    /// can instantiate the model from the bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    /// An external exporter (coremltools, MLC compile, ...) run without a shell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<CommandSource>,
    /// Files copied into the bundle as they are, relative to the manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<Vec<String>>,
}

/// An external exporter command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandSource {
    /// The argv to run (no shell). Placeholders: `{out}` `{tier}` `{format}` `{group_size}`
    /// `{max_seq_len}` `{component}`.
    #[schemars(length(min = 1))]
    pub run: Vec<String>,
    /// Files or folders the exporter reads, relative to the manifest; hashed into the cache key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<Vec<String>>,
    /// Files or folders the exporter writes, relative to its `{out}` folder; packaged as they are.
    #[schemars(length(min = 1))]
    pub outputs: Vec<String>,
    /// How long the exporter may run (for example `30m`). Default `1h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

/// The feature names of a Core ML decode step; `{i}` stands for the layer index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DecodeStepNames {
    /// The token input: an int32 array of shape `[1, 1]`. Default `input_ids`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub input_ids: Option<String>,
    /// The logits output: shape `[1, 1, vocab_size]` or `[1, vocab_size]`. Default `logits`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub logits: Option<String>,
    /// The key and value cache inputs (or iOS 18 states), each with `{i}`. Default
    /// `[k_lat_{i}, v_lat_{i}]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 2))]
    pub cache_inputs: Option<Vec<LayerName>>,
    /// The key and value cache outputs, each with `{i}`. Default `[nk_lat_{i}, nv_lat_{i}]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 2))]
    pub cache_outputs: Option<Vec<LayerName>>,
}

/// A per-layer feature name with `{i}` where the layer index goes (for example `k_lat_{i}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct LayerName(#[schemars(regex(pattern = r"^[^{}]*\{i\}[^{}]*$"))] pub String);

/// Shape of a text decode step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Architecture {
    /// Number of transformer layers.
    #[schemars(range(min = 1))]
    pub layers: u64,
    /// Number of key/value heads.
    #[schemars(range(min = 1))]
    pub kv_heads: u64,
    /// Dimension of one key/value head.
    #[schemars(range(min = 1))]
    pub kv_head_dim: u64,
    /// Hidden size of the model.
    #[schemars(range(min = 1))]
    pub hidden_size: u64,
    /// Vocabulary size (length of the logits).
    #[schemars(range(min = 1))]
    pub vocab_size: u64,
}

/// Weight quantization of a component.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Quantization {
    /// One format, or a preference list (best quality first): the planner picks, per tier,
    /// the first that fits.
    pub format: OneOrMany<Format>,
    /// Elements per quantization group along the last axis: 32, 64 or 128. Default `64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_size: Option<GroupSize>,
    /// Tensor-name globs (`*` and `?`) left unquantized, in `keep_dtype`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep: Option<Vec<String>>,
    /// Dtype of tensors left unquantized. Default: each tensor's source dtype.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_dtype: Option<FloatDtype>,
    /// For a source that is already quantized (an MLX affine or bitsandbytes 4-bit
    /// checkpoint): allow a variant in another quantized format, made by dequantizing the
    /// source exactly as MLX does and quantizing it again (the error compounds; the build
    /// reports its SQNR against the dequantized source). Without it such a variant is an
    /// error. The source's own format always passes through byte for byte, and float formats
    /// dequantize. Default `false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requantize: Option<bool>,
    /// How the MLX affine formats (`int2` ... `int8`) choose each group's scale and bias:
    /// `rtn` (the default) or `mse`. Applies to the affine formats of the preference list and
    /// is ignored for float and NF4 variants; an error when no format of the component (tier
    /// overrides included) is affine, or when the weights come from an exporter. One method
    /// per component: bundle ids stay `<component>-<format>[-g<group>]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<Method>,
    /// Quality floor: the build fails when a variant of this component measures an SQNR (in
    /// dB, over all its quantized and cast weights, element-weighted, as its consumer
    /// dequantizes them) below this value. Known only after quantizing, so checked at build
    /// time; overridable per tier. Only for weights omnipack writes (a `safetensors` source).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_sqnr_db: Option<f64>,
    /// Per-tier overrides, keyed by tier name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tiers: Option<BTreeMap<String, QuantizationOverride>>,
}

/// A per-tier override of `format`, `group_size` and `min_sqnr_db`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QuantizationOverride {
    /// Format (or preference list) for this tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<OneOrMany<Format>>,
    /// Group size for this tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_size: Option<GroupSize>,
    /// Quality floor for this tier's variant, in dB SQNR (checked at build time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_sqnr_db: Option<f64>,
}

/// Quantization group size: 32, 64 or 128 elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct GroupSize(u32);

impl JsonSchema for GroupSize {
    fn schema_name() -> Cow<'static, str> {
        "GroupSize".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "Quantization group size: 32, 64 or 128 elements.",
            "type": "integer",
            "oneOf": [
                { "const": 32, "description": "32 elements per group: the most accurate, the most scales and biases." },
                { "const": 64, "description": "64 elements per group: the default, as in mlx-lm." },
                { "const": 128, "description": "128 elements per group: the smallest, the least accurate." }
            ]
        })
    }
}

impl GroupSize {
    /// The allowed group sizes.
    pub const ALLOWED: [u32; 3] = [32, 64, 128];
    /// The default, 64.
    pub const DEFAULT: GroupSize = GroupSize(64);
    /// Elements per group.
    pub fn get(self) -> u32 {
        self.0
    }
    /// A group size, if allowed.
    pub fn new(v: u32) -> Option<Self> {
        Self::ALLOWED.contains(&v).then_some(GroupSize(v))
    }
}

impl TryFrom<u64> for GroupSize {
    type Error = String;
    fn try_from(v: u64) -> Result<Self, String> {
        u32::try_from(v)
            .ok()
            .and_then(GroupSize::new)
            .ok_or_else(|| format!("group size {v} is not one of 32, 64, 128"))
    }
}

impl From<GroupSize> for u64 {
    fn from(g: GroupSize) -> u64 {
        g.0 as u64
    }
}

/// Dtype of the KV-cache copies a Core ML decode step takes as inputs and returns as outputs.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum IoDtype {
    /// 32-bit floats (the default, as in the seed's Swift code).
    F32,
    /// 16-bit floats.
    F16,
}

/// KV-cache quantization and paging of a text decode step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KvCache {
    /// Storage format of the cache. Default `f16`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<KvFormat>,
    /// Elements per group along `kv_head_dim`, per token and head; must divide `kv_head_dim`.
    /// Default: 32, or `kv_head_dim` when that is smaller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub group_size: Option<u64>,
    /// Dtype of the cache copies passed in and out of a Core ML decode step. Default `f32`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_dtype: Option<IoDtype>,
    /// Keep only a window of pages resident.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paging: Option<Paging>,
}

/// KV-cache paging: only `page_len * resident_pages` tokens stay resident.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Paging {
    /// Tokens per page.
    #[schemars(range(min = 1))]
    pub page_len: u64,
    /// Pages kept resident.
    #[schemars(range(min = 1))]
    pub resident_pages: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serde_name<T: Serialize>(v: T) -> String {
        serde_json::to_value(v)
            .unwrap()
            .as_str()
            .unwrap()
            .to_string()
    }

    #[test]
    fn enum_names_equal_serde_names() {
        macro_rules! check {
            ($($ty:ident),+) => {$(
                for v in $ty::ALL {
                    assert_eq!(v.as_str(), serde_name(*v), "{}", stringify!($ty));
                    assert_eq!(v.to_string(), v.as_str());
                }
            )+};
        }
        check!(
            Role,
            Runtime,
            ComputeUnits,
            Delivery,
            Residency,
            Format,
            FloatDtype,
            KvFormat,
            IoDtype
        );
    }
}
