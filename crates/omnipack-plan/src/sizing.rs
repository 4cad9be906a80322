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

use omnipack_coreml::{CompressionConfig, CompressionFormat, CompressionPlan, CoreMlModel};

use omnipack_manifest::lexical_path::{normalize_str, slash};
use omnipack_manifest::{FloatDtype, Format, ResolvedComponent, ResolvedSource};
use omnipack_quant::{Dtype, QuantSpec, TensorInfo, WeightFormat};

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
    /// The Core ML model's program: its weight shapes and the compression layout.
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
        keep: Vec<String>,
        keep_dtype: Option<Dtype>,
    },
    /// The same size whatever the variant.
    Fixed(u64),
    /// A Core ML ML program, sized per variant by the compression's layout function.
    CoreMl {
        model: Arc<CoreMlModel>,
        keep: Vec<String>,
    },
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
            ResolvedSource::Safetensors { shards, prefix, .. } => {
                let shards = resolve_shard_files(dir, shards)?;
                let tensors = select_tensors(dir, &shards, prefix)?;
                let parameters = tensors
                    .iter()
                    .fold(0u64, |a, t| a.saturating_add(t.numel()));
                Ok(ComponentSizer {
                    parameters,
                    source: SizeSource::SafetensorsHeaders,
                    kind: SizerKind::Native {
                        tensors,
                        keep: c.quantization.keep.clone(),
                        keep_dtype: c.quantization.keep_dtype.map(keep_dtype),
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

    /// A sizer of a Core ML model (`source.mlpackage`): parameters from its program, every
    /// variant's `weights_bytes` from [`CompressionPlan`] (`keep`: the component's globs).
    pub fn core_ml(
        model: Arc<CoreMlModel>,
        keep: Vec<String>,
    ) -> Result<ComponentSizer, SizingError> {
        let facts = model.facts().map_err(|e| SizingError {
            format: None,
            field: "source.mlpackage",
            message: format!("cannot read the Core ML model: {e}"),
            help: None,
        })?;
        Ok(ComponentSizer {
            parameters: facts.weights.as_ref().map_or(0, |w| w.parameters),
            source: SizeSource::Model,
            kind: SizerKind::CoreMl { model, keep },
            shards: None,
        })
    }

    /// The Core ML model of a `source.mlpackage` component.
    pub fn core_ml_model(&self) -> Option<&Arc<CoreMlModel>> {
        match &self.kind {
            SizerKind::CoreMl { model, .. } => Some(model),
            _ => None,
        }
    }

    /// A native sizer over already selected tensors.
    pub fn native(
        tensors: Vec<TensorInfo>,
        keep: Vec<String>,
        keep_dtype: Option<FloatDtype>,
    ) -> ComponentSizer {
        let parameters = tensors
            .iter()
            .fold(0u64, |a, t| a.saturating_add(t.numel()));
        ComponentSizer {
            parameters,
            source: SizeSource::SafetensorsHeaders,
            kind: SizerKind::Native {
                tensors,
                keep,
                keep_dtype: keep_dtype.map(self::keep_dtype),
            },
            shards: None,
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

    /// Tensor data bytes of one variant.
    pub fn weights_bytes(&self, format: Format, group_size: u32) -> Result<u64, SizingError> {
        match &self.kind {
            SizerKind::Fixed(b) => Ok(*b),
            SizerKind::Native {
                tensors,
                keep,
                keep_dtype,
            } => {
                let spec = QuantSpec {
                    format: weight_format(format),
                    group_size,
                    method: omnipack_quant::Method::Rtn,
                    keep: keep.clone(),
                    keep_dtype: *keep_dtype,
                };
                let outputs =
                    omnipack_quant::plan_outputs(tensors, &spec).map_err(|e| SizingError {
                        format: None,
                        field: "quantization",
                        message: format!("cannot plan {format} with group size {group_size}: {e}"),
                        help: None,
                    })?;
                Ok(omnipack_quant::data_bytes(&outputs))
            }
            SizerKind::CoreMl { model, keep } => {
                Ok(core_ml_plan(model, keep, format, group_size)?.weights_bytes)
            }
        }
    }
}

/// The Core ML compression of a manifest format: `f16` (as it is), `int8` (per channel),
/// `int4` (blocks of `group_size`); `None` for formats Core ML packages are not written in.
pub fn core_ml_format(format: Format, group_size: u32) -> Option<CompressionFormat> {
    match format {
        Format::F16 => Some(CompressionFormat::F16),
        Format::Int8 => Some(CompressionFormat::Int8),
        Format::Int4 => Some(CompressionFormat::Int4 {
            block_size: group_size,
        }),
        _ => None,
    }
}

/// The compression plan of one variant of a Core ML model: what the quantize stage writes,
/// planned without reading weights. A format the model cannot take (int4 before iOS 18, an
/// fp32 model as `f16`, a format Core ML is not written in) is an error about that format.
pub fn core_ml_plan(
    model: &CoreMlModel,
    keep: &[String],
    format: Format,
    group_size: u32,
) -> Result<CompressionPlan, SizingError> {
    let Some(compression) = core_ml_format(format, group_size) else {
        return Err(SizingError {
            format: Some(format),
            field: "quantization.format",
            message: format!(
                "format `{format}` is not a Core ML weight format: a Core ML model is shipped as `f16` (as it is), `int8` or `int4`"
            ),
            help: Some("use `f16`, `int8` or `int4` (with `group_size` as the block size)".into()),
        });
    };
    let config = CompressionConfig {
        format: compression,
        keep: keep.to_vec(),
    };
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
            message: format!("cannot be shipped as {compression}: {e}"),
            help,
        }
    })
}
