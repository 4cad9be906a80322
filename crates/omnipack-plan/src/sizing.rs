//! Exact sizes without reading weights.
//!
//! A native component's variants are sized from the safetensors headers alone, with the
//! quantizer's own output layout ([`omnipack_quant::plan_outputs`]), so the planned
//! `weights_bytes` equals what the quantizer writes by construction. Exporter components are
//! sized from their declared `size` (else `resident_memory`, else unknown), file components
//! from the files' sizes. A Core ML model (`source.mlpackage`) is sized per variant from its
//! program's weight shapes with the compression's own layout
//! ([`omnipack_coreml::CompressionPlan`]), so its planned `weights_bytes` equals the stored
//! bytes of the package the quantize stage writes.

use std::path::Path;
use std::sync::Arc;

use omnipack_coreml::{CompressionConfig, CompressionPlan, CoreMlModel, ModelFormat};

use omnipack_manifest::lexical_path::{normalize_str, slash};
use omnipack_manifest::{FloatDtype, Format, ResolvedComponent, ResolvedSource};
use omnipack_quant::{
    Dtype, QuantSpec, SafetensorsFile, SourceLayout, TensorInfo, Treatment, WeightFormat,
};

/// Where a component's sizes come from (the `size_source` of the plan).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeSource {
    /// Shapes and dtypes of the selected safetensors tensors.
    SafetensorsHeaders,
    /// The component's declared `size`.
    DeclaredSize,
    /// The component's `resident_memory` (no `size` declared).
    ResidentMemory,
    /// The sizes of the component's files on disk.
    FileSizes,
    /// Nothing known before the export runs: counted as 0.
    Unknown,
    /// A Core ML model read by omnipack: its parameters, and per variant the exact layout of
    /// the package omnipack writes.
    Model,
}

impl SizeSource {
    /// The name written in the plan.
    pub fn as_str(self) -> &'static str {
        match self {
            SizeSource::SafetensorsHeaders => "safetensors_headers",
            SizeSource::DeclaredSize => "declared_size",
            SizeSource::ResidentMemory => "resident_memory",
            SizeSource::FileSizes => "file_sizes",
            SizeSource::Unknown => "unknown",
            SizeSource::Model => "model",
        }
    }
}

/// What the planner knows of one component's size.
#[derive(Debug, Clone)]
pub struct ComponentSizer {
    /// Parameters: elements of the selected tensors (0 when unknown).
    pub parameters: u64,
    /// Where the sizes come from.
    pub source: SizeSource,
    kind: SizerKind,
    /// The shard files read (a shard index resolved into its shards), relative to the
    /// manifest's folder; `None` when not read from disk.
    shards: Option<Vec<String>>,
}

#[derive(Debug, Clone)]
enum SizerKind {
    /// Tensors of the component (prefix stripped), sized per variant by the quantizer layout.
    Native {
        tensors: Vec<TensorInfo>,
        /// The quantized groups among `tensors` (empty for a float source).
        layout: SourceLayout,
        /// The `quantization` of the `config.json` the layout was recognised with.
        config_quantization: Option<serde_json::Value>,
        keep: Vec<String>,
        keep_dtype: Option<Dtype>,
        requantize: bool,
    },
    /// The same size whatever the variant.
    Fixed(u64),
    /// A Core ML ML program, sized per variant by the compression's layout function.
    CoreMl {
        model: Arc<CoreMlModel>,
        keep: Vec<String>,
    },
    /// A single `.mlmodel` file: shipped as it is (f16 only), sized by the file.
    CoreMlFile(u64),
}

/// Why a component could not be sized; `field` is the manifest path below the component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizingError {
    /// For example `source.safetensors`.
    pub field: &'static str,
    /// The format (of the variant being sized) the error is about, when it is the format
    /// that does not fit the source: the error is then located at that format.
    pub format: Option<Format>,
    /// What went wrong, naming the file.
    pub message: String,
    /// How to fix it.
    pub help: Option<String>,
}

/// The quantizer's format for a manifest format.
pub fn weight_format(f: Format) -> WeightFormat {
    match f {
        Format::F32 => WeightFormat::F32,
        Format::F16 => WeightFormat::F16,
        Format::Bf16 => WeightFormat::Bf16,
        Format::Nf4 => WeightFormat::Nf4,
        other => WeightFormat::Affine {
            bits: other.affine_bits().unwrap_or(8) as u8,
        },
    }
}

/// The quantizer's dtype for a `keep_dtype`.
pub fn keep_dtype(d: FloatDtype) -> Dtype {
    match d {
        FloatDtype::F32 => Dtype::F32,
        FloatDtype::F16 => Dtype::F16,
        FloatDtype::Bf16 => Dtype::BF16,
    }
}

/// The spec the quantizer uses for one variant (the build's quantize stages use it, so planned
/// sizes and written outputs agree).
pub fn quant_spec_parts(
    format: Format,
    group_size: u32,
    keep: &[String],
    keep_dtype: Option<FloatDtype>,
) -> QuantSpec {
    QuantSpec {
        format: weight_format(format),
        group_size,
        method: omnipack_quant::Method::Rtn,
        keep: keep.to_vec(),
        keep_dtype: keep_dtype.map(self::keep_dtype),
    }
}

/// The quantizer's method for a manifest `method`.
pub fn quant_method(method: omnipack_manifest::Method) -> omnipack_quant::Method {
    match method {
        omnipack_manifest::Method::Rtn => omnipack_quant::Method::Rtn,
        omnipack_manifest::Method::Mse => omnipack_quant::Method::Mse,
    }
}

/// The tensors a component selects from its shards: names starting with `prefix`, prefix
/// stripped, in shard order then file order.
pub fn select_tensors(
    dir: &Path,
    shards: &[String],
    prefix: &str,
) -> Result<Vec<TensorInfo>, SizingError> {
    let mut out = Vec::new();
    for shard in shards {
        let path = dir.join(shard);
        let infos = omnipack_quant::read_header(&path).map_err(|e| SizingError {
            format: None,
            field: "source.safetensors",
            message: format!("cannot read the safetensors header of `{shard}`: {e}"),
            help: None,
        })?;
        for mut t in infos {
            if let Some(rest) = t.name.strip_prefix(prefix) {
                t.name = rest.to_string();
                out.push(t);
            }
        }
    }
    if out.is_empty() {
        return Err(SizingError {
            format: None,
            field: "source.prefix",
            message: format!(
                "no tensor in {} starts with prefix `{prefix}`",
                shards.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", ")
            ),
            help: Some("check `source.prefix` against the tensor names (`omnipack inspect FILE` lists them)".into()),
        });
    }
    Ok(out)
}

/// The shard files of `shards` (relative to `dir`): each file as it is, a
/// `*.safetensors.index.json` replaced by the shards it names.
fn resolve_shard_files(dir: &Path, shards: &[String]) -> Result<Vec<String>, SizingError> {
    let mut out = Vec::new();
    for shard in shards {
        let files = omnipack_quant::resolve_shards(dir.join(shard)).map_err(|e| SizingError {
            format: None,
            field: "source.safetensors",
            message: format!("cannot read the shard index `{shard}`: {e}"),
            help: None,
        })?;
        for f in files {
            let rel = f.strip_prefix(dir).unwrap_or(&f);
            out.push(normalize_str(&slash(rel)));
        }
    }
    Ok(out)
}

fn path_size(path: &Path) -> std::io::Result<u64> {
    let meta = std::fs::metadata(path)?;
    if meta.is_dir() {
        let mut total = 0u64;
        for entry in std::fs::read_dir(path)? {
            total = total.saturating_add(path_size(&entry?.path())?);
        }
        Ok(total)
    } else {
        Ok(meta.len())
    }
}

impl ComponentSizer {
    /// Sizes component `c`, reading only safetensors headers and file metadata.
    pub fn new(c: &ResolvedComponent, dir: &Path) -> Result<ComponentSizer, SizingError> {
        match &c.source {
            ResolvedSource::Safetensors {
                shards,
                prefix,
                config,
            } => {
                let shards = resolve_shard_files(dir, shards)?;
                let tensors = select_tensors(dir, &shards, prefix)?;
                let config = source_config(dir, &shards, config.as_deref())?;
                let config_quantization = config.as_ref().and_then(|c| {
                    c.get("quantization")
                        .or_else(|| c.get("quantization_config"))
                        .cloned()
                });
                let layout = recognise_source(dir, &shards, prefix, &tensors, config.as_ref());
                let parameters = layout
                    .logical_tensors(&tensors)
                    .iter()
                    .fold(0u64, |a, t| a.saturating_add(t.numel()));
                Ok(ComponentSizer {
                    parameters,
                    source: SizeSource::SafetensorsHeaders,
                    kind: SizerKind::Native {
                        tensors,
                        layout,
                        config_quantization,
                        keep: c.quantization.keep.clone(),
                        keep_dtype: c.quantization.keep_dtype.map(keep_dtype),
                        requantize: c.quantization.requantize,
                    },
                    shards: Some(shards),
                })
            }
            ResolvedSource::Command { .. } => {
                let (bytes, source) = match (c.size, c.resident_memory) {
                    (Some(s), _) => (s, SizeSource::DeclaredSize),
                    (None, Some(r)) => (r, SizeSource::ResidentMemory),
                    (None, None) => (0, SizeSource::Unknown),
                };
                Ok(ComponentSizer {
                    parameters: 0,
                    source,
                    kind: SizerKind::Fixed(bytes),
                    shards: None,
                })
            }
            ResolvedSource::Mlpackage { path } => {
                let model = omnipack_coreml::open(&dir.join(path)).map_err(|e| SizingError {
                    format: None,
                    field: "source.mlpackage",
                    message: format!("cannot read Core ML model `{path}`: {e}"),
                    help: None,
                })?;
                let facts = model.facts().map_err(|e| SizingError {
                    format: None,
                    field: "source.mlpackage",
                    message: format!("cannot read Core ML model `{path}`: {e}"),
                    help: None,
                })?;
                let parameters = facts.weights.as_ref().map_or(0, |w| w.parameters);
                let kind = match model.format {
                    ModelFormat::SingleFile => SizerKind::CoreMlFile(facts.stored_bytes),
                    ModelFormat::Package(_) => SizerKind::CoreMl {
                        model: Arc::new(model),
                        keep: c.quantization.keep.clone(),
                    },
                };
                Ok(ComponentSizer {
                    parameters,
                    source: SizeSource::Model,
                    kind,
                    shards: None,
                })
            }
            ResolvedSource::Files { files } => {
                let mut total = 0u64;
                for f in files {
                    let size = path_size(&dir.join(f)).map_err(|e| SizingError {
                        format: None,
                        field: "source.files",
                        message: format!("cannot read `{f}`: {e}"),
                        help: Some("every file listed in `source.files` must exist, relative to the manifest".into()),
                    })?;
                    total = total.saturating_add(size);
                }
                Ok(ComponentSizer {
                    parameters: 0,
                    source: SizeSource::FileSizes,
                    kind: SizerKind::Fixed(total),
                    shards: None,
                })
            }
        }
    }

    /// A sizer with a fixed size for every variant (tests, exporters).
    pub fn fixed(parameters: u64, source: SizeSource, bytes: u64) -> ComponentSizer {
        ComponentSizer {
            parameters,
            source,
            kind: SizerKind::Fixed(bytes),
            shards: None,
        }
    }

    /// A native sizer over already selected tensors (MLX affine groups recognised from
    /// their shapes).
    pub fn native(
        tensors: Vec<TensorInfo>,
        keep: Vec<String>,
        keep_dtype: Option<FloatDtype>,
    ) -> ComponentSizer {
        let layout = SourceLayout::recognise(&tensors, None, &|_| None);
        let parameters = layout
            .logical_tensors(&tensors)
            .iter()
            .fold(0u64, |a, t| a.saturating_add(t.numel()));
        ComponentSizer {
            parameters,
            source: SizeSource::SafetensorsHeaders,
            kind: SizerKind::Native {
                tensors,
                layout,
                config_quantization: None,
                keep,
                keep_dtype: keep_dtype.map(self::keep_dtype),
                requantize: false,
            },
            shards: None,
        }
    }

    /// The quantized groups of a native source (`None` for other sources, empty for a float
    /// checkpoint).
    pub fn source_layout(&self) -> Option<&SourceLayout> {
        match &self.kind {
            SizerKind::Native { layout, .. } => Some(layout),
            _ => None,
        }
    }

    /// The `quantization` of the `config.json` a native source's layout was recognised with
    /// (`source.config`, else a `config.json` next to the first shard).
    pub fn config_quantization(&self) -> Option<&serde_json::Value> {
        match &self.kind {
            SizerKind::Native {
                config_quantization,
                ..
            } => config_quantization.as_ref(),
            _ => None,
        }
    }

    /// What the variant `format` (group `group_size`) does with a quantized source:
    /// `pass_through`, `dequantize` or `requantize` (the most lossy that applies to any of its
    /// groups); `None` for a float source.
    pub fn source_treatment(&self, format: Format, group_size: u32) -> Option<&'static str> {
        let SizerKind::Native {
            tensors,
            layout,
            keep,
            keep_dtype,
            ..
        } = &self.kind
        else {
            return None;
        };
        if layout.is_empty() {
            return None;
        }
        let spec = QuantSpec {
            format: weight_format(format),
            group_size,
            method: omnipack_quant::Method::Rtn,
            keep: keep.clone(),
            keep_dtype: *keep_dtype,
        };
        let treatments: Vec<Treatment> = tensors
            .iter()
            .filter_map(|t| layout.group_of(&t.name).filter(|g| g.weight == t.name))
            .map(|g| SourceLayout::treatment(g, &spec))
            .collect();
        Some(if treatments.contains(&Treatment::Requantize) {
            "requantize"
        } else if treatments.contains(&Treatment::Dequantize) {
            "dequantize"
        } else {
            "pass_through"
        })
    }

    /// The selected tensors of a native source, as the checkpoint stores them.
    pub fn source_tensors(&self) -> &[TensorInfo] {
        match &self.kind {
            SizerKind::Native { tensors, .. } => tensors,
            _ => &[],
        }
    }

    /// The shard files the component reads, relative to the manifest's folder (a shard index
    /// resolved into its shards); `None` for a sizer not made from the files.
    pub fn resolved_shards(&self) -> Option<&[String]> {
        self.shards.as_deref()
    }

    /// True when the variants are quantized natively (sizes differ per format).
    pub fn is_native(&self) -> bool {
        matches!(
            self.kind,
            SizerKind::Native { .. } | SizerKind::CoreMl { .. }
        )
    }

    /// The Core ML model a `source.mlpackage` component reads (`None` for other sources and
    /// for a single `.mlmodel` file).
    pub fn coreml_model(&self) -> Option<&Arc<CoreMlModel>> {
        match &self.kind {
            SizerKind::CoreMl { model, .. } => Some(model),
            _ => None,
        }
    }

    /// The layout of the Core ML package one variant writes (`None` when the component is not
    /// a Core ML ML program).
    pub fn coreml_plan(
        &self,
        format: Format,
        group_size: u32,
    ) -> Option<Result<CompressionPlan, SizingError>> {
        let SizerKind::CoreMl { model, keep } = &self.kind else {
            return None;
        };
        Some(coreml_plan(model, keep, format, group_size))
    }

    /// Tensor data bytes of one variant.
    pub fn weights_bytes(&self, format: Format, group_size: u32) -> Result<u64, SizingError> {
        match &self.kind {
            SizerKind::Fixed(b) => Ok(*b),
            SizerKind::CoreMlFile(b) if format == Format::F16 => Ok(*b),
            SizerKind::CoreMlFile(_) => Err(SizingError {
                format: Some(format),
                field: "quantization.format",
                message: format!(
                    "a single `.mlmodel` file (a neural network) is shipped as it is: `{format}` cannot apply"
                ),
                help: Some(
                    "use `quantization.format: f16`, or give an ML program (`.mlpackage`)".into(),
                ),
            }),
            SizerKind::CoreMl { model, keep } => {
                Ok(coreml_plan(model, keep, format, group_size)?.weights_bytes)
            }
            SizerKind::Native {
                tensors,
                layout,
                keep,
                keep_dtype,
                requantize,
                ..
            } => {
                let spec = QuantSpec {
                    format: weight_format(format),
                    group_size,
                    method: omnipack_quant::Method::Rtn,
                    keep: keep.clone(),
                    keep_dtype: *keep_dtype,
                };
                if let Err(e) = layout.check_requantize(tensors, &spec, *requantize) {
                    let source = layout.describe().unwrap_or_default();
                    return Err(SizingError {
                        format: None,
                        field: "quantization.format",
                        message: format!("`{format}` cannot apply to its source as it is: {e}"),
                        help: Some(format!(
                            "request the source's format ({source}) to ship its tensors byte for byte, or set `quantization.requantize: true` to dequantize and quantize again"
                        )),
                    });
                }
                let outputs = layout
                    .plan_outputs(tensors, &spec)
                    .map_err(|e| SizingError {
                        format: None,
                        field: "quantization",
                        message: format!("cannot plan {format} with group size {group_size}: {e}"),
                        help: None,
                    })?;
                Ok(omnipack_quant::data_bytes(&outputs))
            }
        }
    }
}

/// The source's `config.json`: `source.config` when given (an error when unreadable), else a
/// `config.json` next to the first shard when there is one that parses.
fn source_config(
    dir: &Path,
    shards: &[String],
    config: Option<&str>,
) -> Result<Option<serde_json::Value>, SizingError> {
    if let Some(c) = config {
        let text = std::fs::read_to_string(dir.join(c)).map_err(|e| SizingError {
            format: None,
            field: "source.config",
            message: format!("cannot read `{c}`: {e}"),
            help: None,
        })?;
        return serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| SizingError {
                format: None,
                field: "source.config",
                message: format!("`{c}` is not valid JSON: {e}"),
                help: None,
            });
    }
    let Some(first) = shards.first() else {
        return Ok(None);
    };
    let next_to = dir
        .join(first)
        .parent()
        .map(|p| p.join("config.json"))
        .filter(|p| p.is_file());
    Ok(next_to
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| serde_json::from_str(&t).ok()))
}

/// The quantized groups among a component's `tensors` (prefix stripped); the small quant
/// states of bitsandbytes tensors are read from the shards.
fn recognise_source(
    dir: &Path,
    shards: &[String],
    prefix: &str,
    tensors: &[TensorInfo],
    config: Option<&serde_json::Value>,
) -> SourceLayout {
    let opened: std::cell::RefCell<Vec<Option<SafetensorsFile>>> =
        std::cell::RefCell::new(shards.iter().map(|_| None).collect());
    let read_small = |name: &str| -> Option<Vec<u8>> {
        let full = format!("{prefix}{name}");
        let mut files = opened.borrow_mut();
        for (i, shard) in shards.iter().enumerate() {
            if files[i].is_none() {
                files[i] = SafetensorsFile::open(dir.join(shard)).ok();
            }
            if let Some(f) = &files[i]
                && let Ok(e) = f.entry(&full)
            {
                return (e.len <= 1 << 20).then(|| f.bytes(e).to_vec());
            }
        }
        None
    };
    SourceLayout::recognise(tensors, config, &read_small)
}

/// The compression of a Core ML model for a manifest format (`group_size` is int4's block).
pub fn coreml_config(
    format: Format,
    group_size: u32,
    keep: &[String],
) -> Result<CompressionConfig, SizingError> {
    let format =
        omnipack_manifest::compression_format(format, group_size).ok_or_else(|| SizingError {
            format: Some(format),
            field: "quantization.format",
            message: format!("a Core ML variant is `f16`, `int8` or `int4`, not `{format}`"),
            help: Some("list `f16`, `int8` or `int4` in `quantization.format`".into()),
        })?;
    Ok(CompressionConfig {
        format,
        keep: keep.to_vec(),
    })
}

fn coreml_plan(
    model: &CoreMlModel,
    keep: &[String],
    format: Format,
    group_size: u32,
) -> Result<CompressionPlan, SizingError> {
    let config = coreml_config(format, group_size, keep)?;
    CompressionPlan::new(model, &config).map_err(|e| {
        let help = match &e.kind {
            omnipack_coreml::ErrorKind::TargetTooOld { .. } => Some(format!(
                "remove `{format}` for this model, or convert it for a newer deployment target (coremltools' `minimum_deployment_target`)"
            )),
            omnipack_coreml::ErrorKind::Fp32Weights { .. } => Some(
                "convert the model with coremltools' `compute_precision=ct.precision.FLOAT16`, or compress it to `int8`/`int4`".into(),
            ),
            _ => None,
        };
        SizingError {
            format: Some(format),
            field: "quantization.format",
            message: format!("cannot be shipped as {}: {e}", config.format),
            help,
        }
    })
}
