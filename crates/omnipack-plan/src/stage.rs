//! The stages of a plan and the exact parameters each runs with.
//!
//! In plan JSON a stage reads `{id, kind, depends_on, params}`, `kind` being `export`,
//! `quantize` or `package` and `params` the matching [`ExportParams`], [`QuantizeParams`] or
//! [`PackageParams`]. Every path is relative to the plan's `root`. A build runs these
//! parameters and nothing else: it never reads the manifest again.
//!
//! Parameters are plain structs with named fields, so a later option is one more field
//! (with `#[serde(default)]` when plans written before it must still load).

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use omnipack_manifest::{
    Architecture, Delivery, FloatDtype, Format, IoDtype, KvFormat, Method, Paging, Role, Runtime,
};
use omnipack_summary::QuantizationInfo;

/// A unit of work. Stages run once every stage in `depends_on` has finished.
#[derive(Debug, Clone, PartialEq)]
pub struct Stage {
    /// Unique id, for example `export:text`, `quantize:text-int4-g64`, `package:text-int4-g64`.
    pub id: String,
    /// What to do, with its parameters.
    pub kind: StageKind,
    /// Ids of the stages whose outputs this one reads.
    pub depends_on: Vec<String>,
}

/// What a stage does, with the parameters it runs with.
#[derive(Debug, Clone, PartialEq)]
pub enum StageKind {
    /// Produce a component's working weights or files (tensor selection, exporter run, files).
    Export(ExportParams),
    /// Turn working weights into one variant.
    Quantize(QuantizeParams),
    /// Write the bundle zip and its asset-pack folder.
    Package(Box<PackageParams>),
}

impl StageKind {
    /// `export`, `quantize` or `package`: the `kind` of plan JSON.
    pub fn name(&self) -> &'static str {
        match self {
            StageKind::Export(_) => "export",
            StageKind::Quantize(_) => "quantize",
            StageKind::Package(_) => "package",
        }
    }
}

/// What an export stage reads and runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportParams {
    /// The component exported.
    pub component: String,
    /// For an exporter whose command uses `{tier}`: the tier it exports for.
    pub tier: Option<String>,
    /// Where the component comes from.
    pub source: ExportSource,
}

/// The source of an export stage, paths relative to the plan's root.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ExportSource {
    /// Tensors selected from safetensors shards by name prefix (the prefix is stripped). No
    /// copy is made: the quantize stages read the shards directly.
    Safetensors {
        /// The shard files read (a shard index already resolved into its shards).
        shards: Vec<String>,
        /// Tensor-name prefix selected.
        prefix: String,
    },
    /// An external exporter, run without a shell.
    Command {
        /// The argv with every placeholder filled except `{out}`: only the build knows the
        /// private, empty folder it gives the exporter.
        argv: Vec<String>,
        /// The folder it runs in: the folder of the manifest file that wrote `run`.
        workdir: String,
        /// Seconds it may run before its process group is killed.
        timeout_secs: u64,
        /// Files or folders it reads (hashed into the cache key; a folder stands for every
        /// file under it).
        inputs: Vec<String>,
        /// Files or folders it must write under `{out}`, packaged as they are.
        outputs: Vec<String>,
        /// For a Core ML decode step: the contract each `.mlpackage` / `.mlmodel` output is
        /// checked against right after the exporter runs, before anything is packaged.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        coreml_contract: Option<DecodeStepContract>,
    },
    /// A Core ML model (`.mlpackage` folder or `.mlmodel` file), read and checked; the
    /// quantize stages write its variants.
    Mlpackage {
        /// The model.
        path: String,
        /// For a decode step: the contract it is checked against.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        contract: Option<DecodeStepContract>,
    },
    /// Files taken as they are (each packaged under its file name).
    Files {
        /// The files.
        files: Vec<String>,
    },
}

/// What a quantize stage produces: one variant of a component's selected tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuantizeParams {
    /// The component quantized.
    pub component: String,
    /// The bundle the variant is for.
    pub bundle: String,
    /// Target format of the quantizable tensors.
    pub format: Format,
    /// Elements per group (MLX affine) or block (NF4); none for float casts.
    pub group_size: Option<u32>,
    /// Tensor-name globs left unquantized.
    pub keep: Vec<String>,
    /// Dtype of the tensors left unquantized; none keeps each tensor's source dtype.
    pub keep_dtype: Option<FloatDtype>,
    /// `quantization.requantize`: a quantized source may be quantized again to another format.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub requantize: bool,
    /// The `quantization` of the source's `config.json` (`source.config`, else one next to
    /// the checkpoint), with which its quantized tensors are recognised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_quantization: Option<serde_json::Value>,
    /// How MLX affine formats choose each group's scale and bias (`rtn` or `mse`); float and
    /// NF4 variants are written the same way for both.
    #[serde(default)]
    pub method: Method,
    /// The `min_sqnr_db` floors of the tiers that use this variant. Quality is known only
    /// once the weights are written, so the build checks them right after this stage (the
    /// plan cannot): a variant below a floor fails the build at that floor's manifest key.
    #[serde(default)]
    pub quality_floors: Vec<QualityFloor>,
    /// For a Core ML model: the package this variant writes and how it is compressed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coreml: Option<CoreMlVariant>,
}

/// A `min_sqnr_db` floor a variant must reach, checked at build time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QualityFloor {
    /// The lowest SQNR (dB, over all the variant's measured weights) the build accepts.
    pub min_sqnr_db: f64,
    /// The tiers this floor is for (the tiers using the variant that set or inherit it).
    pub tiers: Vec<String>,
    /// Manifest path of the key that sets it, such as `components[0].quantization.min_sqnr_db`
    /// or `components[0].quantization.tiers.iphone-3gb.min_sqnr_db`: where a failure is
    /// reported.
    pub manifest_path: String,
    /// When the check runs: always `build` (after quantizing, before packaging).
    pub checked_at: String,
}

/// One Core ML variant: the model written as a package, its weights compressed (`int8`,
/// `int4`) or as they are (`f16`), byte-reproducibly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoreMlVariant {
    /// Name of the written model in the bundle (`<artifact>.mlpackage` or `.mlmodel`).
    pub output: String,
    /// `f16` (as it is), `int8` (per channel) or `int4` (per block).
    pub compression: String,
    /// The block size of `int4`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u32>,
    /// The operation holding the compressed weights (`constexpr_affine_dequantize` up to iOS
    /// 17, `constexpr_blockwise_shift_scale` from iOS 18); none for `f16`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    /// The model's deployment target, such as `iOS 16`.
    pub deployment_target: String,
    /// Weight constants compressed, of all the model has.
    pub compressed_weights: u64,
    /// Weight constants of the model.
    pub weights: u64,
    /// Planned stored weight bytes (blob data plus inline constants).
    pub weights_bytes: u64,
    /// Planned size of `weight.bin` (headers, records and alignment included).
    pub weight_bin_bytes: u64,
}

/// The decode-step contract a Core ML model is checked against; `None` values are read from
/// the model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecodeStepContract {
    /// The token input.
    pub input_ids: String,
    /// The logits output.
    pub logits: String,
    /// The key and value cache inputs (or states), `{i}` the layer.
    pub cache_inputs: [String; 2],
    /// The key and value cache outputs.
    pub cache_outputs: [String; 2],
    pub layers: Option<u64>,
    pub kv_heads: Option<u64>,
    pub kv_head_dim: Option<u64>,
    pub vocab_size: Option<u64>,
    /// Cache data type (`kv_cache.io_dtype`).
    pub io_dtype: Option<IoDtype>,
    /// The longest context a tier uses: the caches' sequence axis must reach it.
    pub context: Option<u64>,
}

/// What a package stage writes: one bundle zip and its asset-pack folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageParams {
    /// The bundle id.
    pub bundle: String,
    /// The component packaged (written in `bundle.json`).
    pub component: String,
    /// Its role (written in `bundle.json`).
    pub role: Role,
    /// Its runtime (written in `bundle.json`); none for a `data` component.
    pub runtime: Option<Runtime>,
    /// How its weights are stored (written in `bundle.json`); none for a `data` component.
    pub quantization: Option<QuantizationInfo>,
    /// The bundle's files besides `bundle.json` and the decode-step sidecars.
    pub contents: BundleContents,
    /// The sidecars of a text decode step (`<artifact>.io.json`, and `.kvq.json` /
    /// `.kv_paging.json` when the KV cache is quantized / paged).
    pub decode_step: Option<DecodeStepSidecars>,
    /// The asset pack the bundle is delivered in.
    pub asset_pack: AssetPackParams,
}

/// Where a bundle's files come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "from", rename_all = "snake_case", deny_unknown_fields)]
pub enum BundleContents {
    /// `weights.safetensors` from the quantize stage this stage depends on, and a generated
    /// `config.json`.
    QuantizedWeights {
        /// How `config.json` is made.
        config_json: ConfigJson,
    },
    /// The files of the export stage this stage depends on, as they are (exporter outputs
    /// with folders expanded, or a `files` component's files).
    ExportedFiles,
    /// The Core ML package (a folder of stored entries) or `.mlmodel` file the quantize stage
    /// this stage depends on wrote.
    CoreMlModel,
}

/// How a native bundle's `config.json` is made: `base` (when given) without the keys in
/// `remove`, then every key of `set` laid over it; written with sorted keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigJson {
    /// The component's `source.config`: a JSON object read when the stage runs (it must still
    /// have the digest the build recorded for it).
    pub base: Option<String>,
    /// Keys of `base` dropped: they describe the source checkpoint, not this bundle.
    pub remove: Vec<String>,
    /// Keys written (the architecture in mlx-lm's names, the quantization, ...).
    pub set: serde_json::Map<String, serde_json::Value>,
}

/// What a text decode step's sidecars say. They depend on the component only (never on a
/// tier), so a bundle's bytes are the same for every tier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecodeStepSidecars {
    /// Stem of the sidecar file names.
    pub artifact: String,
    /// Shape of the model.
    pub architecture: Architecture,
    /// The component's `max_seq_len`.
    pub max_seq_len: Option<u64>,
    /// Tokens the cache inputs hold, from the component alone:
    /// `min(max_seq_len, page_len * resident_pages)`; none when neither is set (written `-1`:
    /// flexible).
    pub cache_tokens: Option<u64>,
    /// Dtype of the cache inputs and outputs.
    pub io_dtype: IoDtype,
    /// Storage format of the KV cache (`u8` and `nf4` get a `.kvq.json`).
    pub kv_format: KvFormat,
    /// Elements per KV quantization group.
    pub kv_group_size: u64,
    /// Paging (gets a `.kv_paging.json`).
    pub paging: Option<Paging>,
    /// A Core ML decode step read by omnipack: every input, output and state as the model
    /// declares it (the `.io.json` lists these instead of the generated names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coreml_io: Option<CoreMlIo>,
}

/// The features of a Core ML model, as it declares them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoreMlIo {
    pub inputs: Vec<CoreMlFeature>,
    pub outputs: Vec<CoreMlFeature>,
    /// iOS 18 states (updated in place).
    pub states: Vec<CoreMlFeature>,
}

/// One input, output or state of a Core ML model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoreMlFeature {
    pub name: String,
    /// `multi_array`, `state`, `int64`, `double`, `string`, `image`, `dictionary`, `sequence`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Element type of an array: `float16`, `float32`, `float64`, `int32`, `int8`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<String>,
    /// Sizes, `-1` for a flexible axis (see `flexible_axes` or `enumerated_shapes`).
    pub shape: Vec<i64>,
    /// The flexible axes of a shape given by ranges.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flexible_axes: Vec<FlexibleAxis>,
    /// The allowed shapes of a shape given by enumeration.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub enumerated_shapes: Vec<Vec<i64>>,
    /// True when the model accepts it missing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
}

/// An axis whose size is a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlexibleAxis {
    pub axis: u32,
    pub lower: u64,
    /// `None`: unbounded.
    pub upper: Option<u64>,
}

/// The asset pack of a bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssetPackParams {
    /// `assetPackID`.
    pub id: String,
    /// Download policy.
    pub delivery: Delivery,
}

/// A stage as written in plan JSON.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StageJson {
    id: String,
    kind: String,
    depends_on: Vec<String>,
    params: serde_json::Value,
}

impl Serialize for Stage {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::Error;
        let params = match &self.kind {
            StageKind::Export(p) => serde_json::to_value(p),
            StageKind::Quantize(p) => serde_json::to_value(p),
            StageKind::Package(p) => serde_json::to_value(p),
        }
        .map_err(S::Error::custom)?;
        StageJson {
            id: self.id.clone(),
            kind: self.kind.name().to_string(),
            depends_on: self.depends_on.clone(),
            params,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Stage {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let j = StageJson::deserialize(d)?;
        let bad = |e: serde_json::Error| D::Error::custom(format!("stage `{}`: params: {e}", j.id));
        let kind = match j.kind.as_str() {
            "export" => StageKind::Export(serde_json::from_value(j.params.clone()).map_err(bad)?),
            "quantize" => {
                StageKind::Quantize(serde_json::from_value(j.params.clone()).map_err(bad)?)
            }
            "package" => StageKind::Package(serde_json::from_value(j.params.clone()).map_err(bad)?),
            other => {
                return Err(D::Error::custom(format!(
                    "stage `{}`: unknown kind `{other}` (export, quantize or package)",
                    j.id
                )));
            }
        };
        Ok(Stage {
            id: j.id,
            kind,
            depends_on: j.depends_on,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_json_has_kind_and_params() {
        let s = Stage {
            id: "quantize:t-int4-g64".into(),
            kind: StageKind::Quantize(QuantizeParams {
                component: "t".into(),
                bundle: "t-int4-g64".into(),
                format: Format::Int4,
                group_size: Some(64),
                keep: vec!["*norm*".into()],
                keep_dtype: None,
                requantize: false,
                source_quantization: None,
                method: Method::Mse,
                quality_floors: vec![QualityFloor {
                    min_sqnr_db: 20.5,
                    tiers: vec!["a".into()],
                    manifest_path: "components[0].quantization.min_sqnr_db".into(),
                    checked_at: "build".into(),
                }],
                coreml: None,
            }),
            depends_on: vec!["export:t".into()],
        };
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["kind"], "quantize");
        assert_eq!(v["params"]["format"], "int4");
        assert_eq!(v["params"]["method"], "mse");
        assert_eq!(v["params"]["quality_floors"][0]["checked_at"], "build");
        assert_eq!(v["depends_on"][0], "export:t");
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["id", "kind", "depends_on", "params"]);
        let back: Stage = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(back, s);
        let mut wrong = v;
        wrong["kind"] = "compile".into();
        let e = serde_json::from_value::<Stage>(wrong).unwrap_err();
        assert!(e.to_string().contains("unknown kind `compile`"), "{e}");
    }
}
