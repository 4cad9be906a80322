//! Output types of omnipack: `mobile_packager_summary.json`, each bundle's `bundle.json`, and
//! the per-tier memory breakdown shared with `omnipack plan --format json`.
//!
//! The JSON schema committed at `schemas/mobile_packager_summary.schema.json` is generated
//! from these types; doc comments become its descriptions. Every map is ordered and every
//! byte count is an integer, so the same inputs give byte-identical JSON.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub mod names;
pub mod swift;

pub use names::{Delivery, Format, KvFormat, Method, QuantMode, Residency, Role, Runtime};

/// The pattern of every sha256 in the summary and `bundle.json`: 64 lowercase hex digits.
pub const SHA256_PATTERN: &str = r"^[0-9a-f]{64}$";
/// The pattern of bundle and component ids (the manifest's name rule).
pub const ID_PATTERN: &str = r"^[a-z0-9][a-z0-9_-]*$";
/// The pattern of asset-pack IDs: letters, digits and hyphens (App Store Connect refuses dots).
pub const ASSET_PACK_ID_PATTERN: &str = r"^[A-Za-z0-9][A-Za-z0-9-]*$";

/// Current `summary_version`.
pub const SUMMARY_VERSION: u32 = 1;

/// File name of the summary inside an output folder.
pub const SUMMARY_FILE: &str = "mobile_packager_summary.json";

/// Reads and parses the summary file at `path`: a regular file of at most
/// `omnipack_fs::MAX_DOCUMENT_BYTES`, never through a link (a link to `/dev/zero` or a FIFO is
/// refused at once). The error is a sentence for users, without the path (the caller names
/// the file).
pub fn read_summary(path: &std::path::Path) -> Result<Summary, String> {
    let bytes = omnipack_fs::read_capped_nofollow(path, omnipack_fs::MAX_DOCUMENT_BYTES)
        .map_err(|e| format!("cannot read the summary: {e}"))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("not a {SUMMARY_FILE}: {e}"))
}

/// The memory budget and contents of one omnipack build: what an app reads at run time to
/// decide which tier it is on and what it can load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "mobile_packager_summary.json")]
pub struct Summary {
    /// Version of this summary format: always `1` for this omnipack.
    #[schemars(extend("const" = 1))]
    pub summary_version: u32,
    /// The tool that wrote it, for example `omnipack 0.1.0`.
    pub generator: String,
    /// The package built.
    pub package: PackageInfo,
    /// sha256 (hex) of the resolved manifest (its `extends` chain merged) as canonical JSON.
    #[schemars(regex(pattern = SHA256_PATTERN))]
    pub manifest_sha256: String,
    /// Every input file read, relative to the manifest, with its sha256.
    pub inputs: Vec<InputFile>,
    /// Every bundle built, sorted by id.
    pub bundles: Vec<BundleEntry>,
    /// Every tier, in manifest order, with its load plan and memory breakdown.
    pub tiers: Vec<TierEntry>,
}

/// Package identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PackageInfo {
    /// Package name.
    pub name: String,
    /// Package version.
    pub version: String,
    /// The app's reverse-DNS bundle identifier.
    pub bundle_id: String,
    /// The namespace of every asset-pack ID (`<asset_pack_prefix>-<bundle id>`), when the
    /// manifest sets one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asset_pack_prefix: Option<String>,
}

/// An input file and its digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InputFile {
    /// Path relative to the manifest's folder, with `/` separators.
    pub path: String,
    /// sha256 of the file's bytes, lowercase hex.
    #[schemars(regex(pattern = SHA256_PATTERN))]
    pub sha256: String,
}

/// One bundle: a zip under `bundles/` and its asset-pack folder.
///
/// A `data` bundle (files shipped as they are) has neither `runtime` nor `quantization`; every
/// other bundle has both.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend(
    "if" = {"properties": {"role": {"const": "data"}}, "required": ["role"]},
    "then" = {"not": {"anyOf": [{"required": ["runtime"]}, {"required": ["quantization"]}]}},
    "else" = {"required": ["runtime", "quantization"]}
))]
pub struct BundleEntry {
    /// Bundle id: `<component>-<format>[-g<group>][-<tier>]`, or `<component>[-<tier>]` for a
    /// `data` component.
    #[schemars(regex(pattern = ID_PATTERN))]
    pub id: String,
    /// Component name.
    #[schemars(regex(pattern = ID_PATTERN))]
    pub component: String,
    /// Component role.
    pub role: Role,
    /// Runtime that loads it; absent for `data` bundles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<Runtime>,
    /// Download policy.
    pub delivery: Delivery,
    /// Memory policy.
    pub residency: Residency,
    /// Path of the zip relative to the output folder, for example `bundles/text-int4-g64.zip`.
    pub file: String,
    /// Size of the zip in bytes.
    pub size_bytes: u64,
    /// sha256 of the zip, lowercase hex.
    #[schemars(regex(pattern = SHA256_PATTERN))]
    pub sha256: String,
    /// The Background Assets asset pack built from this bundle.
    pub asset_pack: AssetPackRef,
    /// How the weights are stored; absent for `data` bundles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<QuantizationInfo>,
    /// Number of weight parameters (elements of the source tensors); 0 when unknown.
    pub parameters: u64,
    /// Tensor data bytes of the stored weights (codes, scales, biases, absmax, kept tensors),
    /// excluding safetensors headers.
    pub weights_bytes: u64,
    /// Bytes the weights take in memory once loaded, by the runtime's memory model.
    pub resident_bytes: u64,
    /// Every file inside the bundle, sorted by path.
    pub files: Vec<FileEntry>,
    /// The measured error of the weights omnipack wrote, as in the bundle's `bundle.json`;
    /// `null` for a bundle of exporter outputs or files, which omnipack packages as they are.
    #[schemars(schema_with = "nullable_quality")]
    pub quality: Option<Quality>,
}

/// The measured quality of a bundle's weights: every quantized or cast tensor compared with
/// its source, on the values its consumer reconstructs (MLX affine as `mx.dequantize`
/// computes, NF4 as bitsandbytes' `dequantize_4bit`, casts as the cast value). Tensors copied
/// unchanged (kept in their source dtype) are exact and not measured. See docs/quantization.md.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Quality {
    /// Signal-to-quantization-noise ratio over all the bundle's weights, element-weighted:
    /// `10 log10(sum w^2 / sum (w - w')^2)` in dB (higher is better). `null` when every
    /// weight is reconstructed exactly (an infinite SQNR).
    #[schemars(schema_with = "nullable_number")]
    pub sqnr_db: Option<f64>,
    /// The tensor with the lowest SQNR (the first in file order on ties); `null` when every
    /// tensor is exact.
    #[schemars(schema_with = "nullable_string")]
    pub worst_tensor: Option<String>,
    /// That tensor's SQNR in dB; `null` when every tensor is exact.
    #[schemars(schema_with = "nullable_number")]
    pub worst_sqnr_db: Option<f64>,
    /// Relative RMS error over all the bundle's weights, `sqrt(sum (w - w')^2 / sum w^2)`
    /// (`10^(-sqnr_db/20)`); 0 when exact.
    pub rel_rms_error: f64,
}

/// A number or `null`, always present.
fn nullable_number(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "type": ["number", "null"] })
}

/// A string or `null`, always present.
fn nullable_string(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "type": ["string", "null"] })
}

/// A [`Quality`] object or `null`, always present.
fn nullable_quality(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let quality = generator.subschema_for::<Quality>();
    schemars::json_schema!({ "anyOf": [quality, { "type": "null" }] })
}

/// Reference to an asset pack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AssetPackRef {
    /// The asset-pack ID (`assetPackID`): the bundle id with `_` turned into `-`, after
    /// `<package.asset_pack_prefix>-` when the manifest sets a prefix. Letters, digits and
    /// hyphens only.
    #[schemars(regex(pattern = ASSET_PACK_ID_PATTERN))]
    pub id: String,
    /// Path of its `Manifest.json`, relative to the output folder.
    pub manifest: String,
}

/// How a bundle's weights are stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QuantizationInfo {
    /// Weight format.
    pub format: Format,
    /// Elements per group for grouped formats, absent for float formats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_size: Option<u32>,
    /// Bits per code for integer formats, absent for float formats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bits: Option<u32>,
    /// `affine` for MLX integer formats, `nf4` for NF4, `linear_symmetric` for Core ML int8
    /// and int4, absent for float formats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<QuantMode>,
    /// How omnipack chose the scales and biases of MLX affine weights it quantized: `rtn`
    /// (bit-exact with `mx.quantize`) or `mse` (error-minimising, same layout); absent for
    /// other formats and for exporter outputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<Method>,
    /// For a Core ML model omnipack read and wrote: how its weights are stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coreml: Option<CoreMlCompression>,
}

/// How a Core ML model's weights are stored in a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CoreMlCompression {
    /// `f16` (the weights as the model has them), `int8` (symmetric, one scale per output
    /// channel) or `int4` (symmetric, one scale per block of `block_size` input elements).
    pub format: Format,
    /// Elements per block of `int4`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u32>,
    /// The operation holding the compressed weights: `constexpr_affine_dequantize` (iOS 16
    /// and 17) or `constexpr_blockwise_shift_scale` (iOS 18 on); absent for `f16`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    /// The model's deployment target, such as `iOS 16`.
    pub deployment_target: String,
    /// Weight constants compressed.
    pub compressed_weights: u64,
    /// Weight constants of the model.
    pub weights: u64,
}

/// A file inside a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Path inside the bundle, with `/` separators.
    pub path: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// sha256, lowercase hex.
    #[schemars(regex(pattern = SHA256_PATTERN))]
    pub sha256: String,
}

/// One device tier: what it loads and whether it fits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TierEntry {
    /// Tier name.
    pub name: String,
    /// Physical memory of the device class, in bytes.
    pub device_memory_bytes: u64,
    /// Memory the app may use before iOS terminates it, in bytes (the process limit the tier
    /// was planned for).
    pub memory_limit_bytes: u64,
    /// The number an app compares on device: `peak_bytes + min_headroom_bytes`. At launch,
    /// pick the tier with the largest `required_bytes` not above the process limit, that is
    /// `os_proc_available_memory()` plus the app's current footprint (`phys_footprint`), both
    /// from one moment (README, "Choosing a tier at run time").
    pub required_bytes: u64,
    /// Bundle ids this tier uses, in load order (resident components first, then lazy ones).
    #[schemars(inner(regex(pattern = ID_PATTERN)))]
    pub bundles: Vec<String>,
    /// The text decode step's KV cache on this tier; absent when the tier has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_cache: Option<KvCacheInfo>,
    /// The memory breakdown.
    pub memory: MemoryBreakdown,
    /// True when `required_bytes <= memory_limit_bytes`.
    pub fits: bool,
}

/// The KV cache a tier budgets for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KvCacheInfo {
    /// Tokens resident: min(component max_seq_len, tier max_seq_len, page_len * resident_pages).
    pub tokens: u64,
    /// Storage format.
    pub format: KvFormat,
    /// Paging, when on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paging: Option<PagingInfo>,
}

/// KV-cache paging.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PagingInfo {
    /// Tokens per page.
    pub page_len: u64,
    /// Pages kept resident.
    pub resident_pages: u64,
}

/// A tier's peak memory, by part (the memory model of the README). `peak_bytes` is the sum of
/// the parts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MemoryBreakdown {
    /// App and runtime baseline.
    pub runtime_overhead_bytes: u64,
    /// Resident weights of every `always` component.
    pub weights_resident_bytes: u64,
    /// Activations of every `always` component.
    pub activations_bytes: u64,
    /// KV cache (with a Core ML decode step's input and output copies).
    pub kv_cache_bytes: u64,
    /// The largest `lazy` component's weights plus activations (decoders load one at a time).
    pub lazy_peak_bytes: u64,
    /// Sum of the above.
    pub peak_bytes: u64,
    /// Safety margin the tier keeps free.
    pub min_headroom_bytes: u64,
    /// `memory_limit_bytes - peak_bytes`; negative when the tier does not fit.
    pub headroom_bytes: i64,
}

/// `bundle.json`, the first entry of every bundle zip. A `data` bundle has neither `runtime`
/// nor `quantization`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BundleManifest {
    /// Bundle id.
    pub bundle_id: String,
    /// Component name.
    pub component: String,
    /// Component role.
    pub role: Role,
    /// Runtime that loads it; absent for `data` bundles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<Runtime>,
    /// How the weights are stored; absent for `data` bundles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<QuantizationInfo>,
    /// Every other file of the bundle, sorted by path, with size and sha256.
    pub files: Vec<FileEntry>,
    /// The measured error of the weights omnipack wrote; `null` for exporter outputs and
    /// files, packaged as they are.
    #[schemars(schema_with = "nullable_quality")]
    pub quality: Option<Quality>,
    /// The tool that wrote it.
    pub generator: String,
}

/// The `generator` string of this omnipack build.
pub fn generator() -> String {
    format!("omnipack {}", env!("CARGO_PKG_VERSION"))
}

/// The summary's JSON schema (draft-07), as committed in `schemas/`.
pub fn summary_schema_json() -> String {
    let generator = schemars::generate::SchemaSettings::draft07().into_generator();
    let schema = generator.into_root_schema_for::<Summary>();
    let mut text = serde_json::to_string_pretty(&schema).expect("a schema always serializes");
    text.push('\n');
    text
}
