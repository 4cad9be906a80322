//! `quantize:<bundle>`: one variant of a component's selected tensors, written by
//! `omnipack-quant` (streaming, parallel across tensors) with its sha256 and CRC-32 computed in
//! the same pass, as the plan's [`QuantizeParams`] say; or one variant of a Core ML model,
//! written by `omnipack-coreml` (compressed in parallel, memory bounded by the largest weight).

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use omnipack_coreml::ModelFormat;
use omnipack_manifest::GroupSize;
use omnipack_plan::sizing::{coreml_config, quant_method, quant_spec_parts};
use omnipack_plan::{QualityFloor, QuantizeParams, Stage};
use omnipack_quant::{FileDigest, OutputKind, QuantError, SourceLayout, TensorInfo};
use omnipack_summary::Quality;
use serde_json::json;

use crate::cache::{CacheError, CacheKind};
use crate::progress::Event;
use crate::stages::cached::Produced;
use crate::stages::{
    BuildContext, CoreMlSource, CoreMlWritten, QuantizedWeights, Ran, StageError, StageOutput,
    StagedFile,
};
use omnipack_fs::walk_files;

/// Name of the weights file in a quantize entry and in a bundle.
pub(crate) const WEIGHTS_FILE: &str = "weights.safetensors";

/// Why a quantize stage failed.
#[derive(Debug, thiserror::Error)]
pub enum QuantizeError {
    /// The quantizer refused the tensors or could not write.
    #[error("bundle `{bundle}`: {source}")]
    Quantizer { bundle: String, source: QuantError },
    /// The cache entry has no weights file.
    #[error("cache entry of bundle `{bundle}` has no {WEIGHTS_FILE}")]
    EntryWithoutWeights { bundle: String },
    /// The cache entry has no (or an unreadable) measured quality.
    #[error("cache entry of bundle `{bundle}` has no measured quality")]
    EntryWithoutQuality { bundle: String },
    /// The variant measures below a `min_sqnr_db` floor of a tier that uses it.
    #[error("{}", below_floor_message(&.0.bundle, &.0.quality, &.0.floor))]
    BelowQualityFloor(Box<BelowFloor>),
    /// A Core ML variant could not be written.
    #[error("bundle `{bundle}`: {source}")]
    CoreMl {
        bundle: String,
        source: omnipack_coreml::Error,
    },
    /// The plan asks for a Core ML variant omnipack cannot write.
    #[error("bundle `{bundle}`: {message}")]
    CoreMlVariant { bundle: String, message: String },
    /// The cache failed.
    #[error(transparent)]
    Cache(#[from] CacheError),
}

/// A variant below a `min_sqnr_db` floor.
#[derive(Debug)]
pub struct BelowFloor {
    /// The bundle.
    pub bundle: String,
    /// What it measures.
    pub quality: Quality,
    /// The floor it misses.
    pub floor: QualityFloor,
}

impl QuantizeError {
    /// For a variant below a `min_sqnr_db` floor: the floor's manifest path (where the error
    /// is reported) and how to fix it.
    pub fn quality_floor(&self) -> Option<(&str, String)> {
        match self {
            QuantizeError::BelowQualityFloor(b) => Some((
                b.floor.manifest_path.as_str(),
                "lower `min_sqnr_db`, or give the variant more bits (a wider format, a smaller group size); for MLX affine formats `method: mse` loses less in the same bytes".to_string(),
            )),
            _ => None,
        }
    }
}

/// Runs a quantize stage on its export's output. Exporter and file outputs pass through:
/// they are packaged as they are (their quantization is declarative).
pub(crate) fn run(
    ctx: &BuildContext,
    stage: &Stage,
    p: &QuantizeParams,
    input: StageOutput,
) -> Result<Ran, StageError> {
    let selection = match input {
        StageOutput::CoreMl(source) => return run_coreml(ctx, stage, p, &source),
        StageOutput::Tensors(s) => s,
        StageOutput::Files(f) => {
            return Ok(Ran {
                output: StageOutput::Files(f),
                from_cache: true,
            });
        }
        _ => {
            return Err(StageError::WrongInput {
                stage: stage.id.clone(),
                expected: "selected tensors",
            });
        }
    };
    let spec = quant_spec_parts(
        p.format,
        p.group_size.unwrap_or(GroupSize::DEFAULT.get()),
        &p.keep,
        p.keep_dtype,
    )
    .with_method(quant_method(p.method));
    // The method is part of the key where it changes the bytes (MLX affine formats): an `mse`
    // variant never comes from an `rtn` entry, and float or NF4 variants share one entry.
    let method = if spec.method.applies_to(spec.format) {
        spec.method
    } else {
        omnipack_quant::Method::Rtn
    };
    let layout = source_layout(&selection.tensors, p.source_quantization.as_ref());
    let mut material = json!({
        "source": selection.key_material,
        "format": p.format.as_str(),
        "group_size": p.group_size,
        "keep": spec.keep,
        "keep_dtype": spec.keep_dtype.map(|d| d.safetensors_name()),
        "method": method.as_str(),
    });
    if !layout.is_empty() {
        // How the source's quantized tensors are read, and whether they may be quantized again.
        material["source_format"] = json!(layout.describe());
        material["requantize"] = json!(p.requantize);
    }
    let c = ctx.cached::<_, QuantizeError>(
        CacheKind::Quantize,
        &material,
        |work| {
            let planned = ctx
                .plan
                .bundle(&p.bundle)
                .map(|b| b.weights_bytes)
                .filter(|&n| n > 0);
            ctx.progress.event(Event::Started {
                stage: stage.id.clone(),
                total_bytes: planned,
            });
            let out = work.join(WEIGHTS_FILE);
            let r = with_progress(ctx, stage, work, planned.is_some(), || {
                omnipack_quant::quantize_source_to_file(
                    &selection.tensors,
                    &layout,
                    p.requantize,
                    &spec,
                    &out,
                    &spec.format.metadata(),
                )
            })
            .map_err(|source| QuantizeError::Quantizer {
                bundle: p.bundle.clone(),
                source,
            })?;
            ctx.progress.event(Event::Bytes {
                stage: stage.id.clone(),
                done: r.file_bytes,
            });
            let requantized = requantized_quality(&layout, &r);
            Ok(Produced {
                files: vec![(
                    WEIGHTS_FILE.into(),
                    Some(FileDigest {
                        size: r.file_bytes,
                        sha256: r.sha256,
                        crc32: r.crc32,
                    }),
                )],
                meta: json!({
                    "data_bytes": r.data_bytes,
                    "parameters": r.parameters,
                    "requantized": requantized,
                    "quality": r.quality,
                }),
            })
        },
        |entry| {
            let f = entry
                .get(WEIGHTS_FILE)
                .ok_or_else(|| QuantizeError::EntryWithoutWeights {
                    bundle: p.bundle.clone(),
                })?;
            if let Some(q) = entry
                .record
                .meta
                .get("requantized")
                .filter(|q| !q.is_null())
            {
                ctx.progress
                    .event(Event::Warning(requantized_warning(&p.bundle, q)));
            }
            let quality = serde_json::from_value::<Quality>(entry.record.meta["quality"].clone())
                .map_err(|_| QuantizeError::EntryWithoutQuality {
                bundle: p.bundle.clone(),
            })?;
            Ok(QuantizedWeights {
                file: entry.file(WEIGHTS_FILE),
                digest: f.digest(),
                data_bytes: entry.record.meta["data_bytes"].as_u64().unwrap_or(0),
                parameters: entry.record.meta["parameters"].as_u64().unwrap_or(0),
                quality,
            })
        },
    )?;
    check_floors(&p.bundle, &c.value.quality, &p.quality_floors)?;
    Ok(Ran {
        output: StageOutput::Weights(Arc::new(c.value)),
        from_cache: c.from_cache,
    })
}

/// The quantized groups among the selected tensors (by output name), recognised with the
/// source's `config.json` quantization when the plan carries one.
fn source_layout(
    tensors: &[omnipack_quant::SelectedTensor],
    config_quantization: Option<&serde_json::Value>,
) -> SourceLayout {
    let infos: Vec<TensorInfo> = tensors
        .iter()
        .filter_map(|s| {
            let e = s.file.entry(&s.tensor).ok()?;
            Some(TensorInfo {
                name: s.output_name.clone(),
                dtype: e.info.dtype,
                shape: e.info.shape.clone(),
            })
        })
        .collect();
    let config = config_quantization.map(|q| json!({ "quantization": q }));
    let read_small = |name: &str| -> Option<Vec<u8>> {
        let s = tensors.iter().find(|s| s.output_name == name)?;
        let e = s.file.entry(&s.tensor).ok()?;
        (e.len <= 1 << 20).then(|| s.file.bytes(e).to_vec())
    };
    SourceLayout::recognise(&infos, config.as_ref(), &read_small)
}

/// For a variant that quantized a quantized source again: the source's format and the
/// measured quality of the tensors quantized again, against the dequantized source (`null`
/// otherwise).
fn requantized_quality(
    layout: &SourceLayout,
    r: &omnipack_quant::QuantizeOutcome,
) -> serde_json::Value {
    let again: Vec<&omnipack_quant::TensorReport> = r
        .tensors
        .iter()
        .filter(|t| {
            layout
                .group_of(&t.name)
                .is_some_and(|g| g.weight == t.name && t.kind != OutputKind::Cast)
        })
        .collect();
    if again.is_empty() {
        return serde_json::Value::Null;
    }
    let q = omnipack_quant::Quality::of(again.iter().map(|t| (t.name.as_str(), &t.stats)));
    json!({
        "source_format": layout.describe(),
        "tensors": again.len(),
        "sqnr_db": q.sqnr_db,
    })
}

/// The build's warning for a variant quantized again from a quantized source.
fn requantized_warning(bundle: &str, q: &serde_json::Value) -> String {
    let sqnr = match q["sqnr_db"].as_f64() {
        Some(db) => format!("{db:.2} dB"),
        None => "exact".into(),
    };
    format!(
        "bundle `{bundle}`: its source is already quantized ({}); {} tensor(s) were dequantized and quantized again, so their error compounds: SQNR {sqnr} against the dequantized source",
        q["source_format"].as_str().unwrap_or("?"),
        q["tensors"],
    )
}

/// The first floor of `floors` that `quality` misses, as an error. An exact variant (no SQNR:
/// infinite) passes every floor.
fn check_floors(
    bundle: &str,
    quality: &Quality,
    floors: &[QualityFloor],
) -> Result<(), QuantizeError> {
    let Some(sqnr) = quality.sqnr_db else {
        return Ok(());
    };
    match floors.iter().find(|f| sqnr < f.min_sqnr_db) {
        Some(floor) => Err(QuantizeError::BelowQualityFloor(Box::new(BelowFloor {
            bundle: bundle.to_string(),
            quality: quality.clone(),
            floor: floor.clone(),
        }))),
        None => Ok(()),
    }
}

/// `bundle `text-int2-g64` measures 9.81 dB SQNR, below `min_sqnr_db: 40` (tier
/// iphone-3gb); its worst tensor is `layers.0.mlp.up_proj.weight` at 7.52 dB`.
fn below_floor_message(bundle: &str, quality: &Quality, floor: &QualityFloor) -> String {
    let mut s = format!(
        "bundle `{bundle}` measures {:.2} dB SQNR, below `min_sqnr_db: {}` (tier{} {})",
        quality.sqnr_db.unwrap_or(f64::INFINITY),
        floor.min_sqnr_db,
        if floor.tiers.len() == 1 { "" } else { "s" },
        floor.tiers.join(", "),
    );
    if let (Some(t), Some(db)) = (&quality.worst_tensor, quality.worst_sqnr_db) {
        s.push_str(&format!("; its worst tensor is `{t}` at {db:.2} dB"));
    }
    s
}

/// Runs `write` while a thread reports the bytes written so far in `work` (the quantizer
/// writes one temporary file there, whose final size the plan knows) every 200 ms.
fn with_progress<T>(
    ctx: &BuildContext,
    stage: &Stage,
    work: &Path,
    report: bool,
    write: impl FnOnce() -> Result<T, QuantError>,
) -> Result<T, QuantError> {
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|scope| {
        if report {
            scope.spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(Duration::from_millis(200))
                {
                    ctx.progress.event(Event::Bytes {
                        stage: stage.id.clone(),
                        done: written_in(work),
                    });
                }
            });
        }
        let r = write();
        drop(stop);
        r
    })
}

/// Bytes written so far in the files of `dir`: their allocated blocks (the quantizer sizes its
/// output up front and fills it through a memory map), at most their lengths.
fn written_in(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| (m.blocks() * 512).min(m.len()))
                .sum()
        })
        .unwrap_or(0)
}

/// Writes one Core ML variant of the model its export read: the package through
/// `omnipack_coreml::compress` (int8 / int4 compressed, f16 as it is; always in its
/// byte-reproducible form), or a single `.mlmodel` file rewritten. The stored weight bytes are
/// measured on the written model.
fn run_coreml(
    ctx: &BuildContext,
    stage: &Stage,
    p: &QuantizeParams,
    source: &CoreMlSource,
) -> Result<Ran, StageError> {
    let Some(variant) = &p.coreml else {
        return Err(StageError::WrongInput {
            stage: stage.id.clone(),
            expected: "selected tensors (this quantize stage has no `coreml` parameters)",
        });
    };
    let config = coreml_config(
        p.format,
        p.group_size.unwrap_or(GroupSize::DEFAULT.get()),
        &p.keep,
    )
    .map_err(|e| QuantizeError::CoreMlVariant {
        bundle: p.bundle.clone(),
        message: e.message,
    })?;
    let material = json!({
        "source": source.key_material,
        "coreml": variant,
        "format": p.format.as_str(),
        "group_size": p.group_size,
        "keep": p.keep,
    });
    let bundle_err = |source| QuantizeError::CoreMl {
        bundle: p.bundle.clone(),
        source,
    };
    let c = ctx.cached::<_, QuantizeError>(
        CacheKind::Quantize,
        &material,
        |work| {
            ctx.progress.event(Event::Started {
                stage: stage.id.clone(),
                total_bytes: None,
            });
            let out = work.join(&variant.output);
            match source.model.format {
                ModelFormat::SingleFile => {
                    let bytes = omnipack_coreml::canonical_model_bytes(&source.model.model_bytes)
                        .map_err(|e| {
                        bundle_err(omnipack_coreml::Error::new(
                            &source.model.path,
                            omnipack_coreml::ErrorKind::Wire(e),
                        ))
                    })?;
                    omnipack_fs::write_atomic(&out, &bytes).map_err(|e| {
                        bundle_err(omnipack_coreml::Error::new(
                            &out,
                            omnipack_coreml::ErrorKind::Io(e),
                        ))
                    })?;
                }
                ModelFormat::Package(_) => {
                    omnipack_coreml::compress(&source.model, &config, &out).map_err(bundle_err)?;
                }
            }
            let written = omnipack_coreml::open(&out).map_err(bundle_err)?;
            let facts = written.facts().map_err(bundle_err)?;
            let files = if out.is_dir() {
                walk_files(&out)
                    .map_err(|e| {
                        bundle_err(omnipack_coreml::Error::new(
                            &out,
                            omnipack_coreml::ErrorKind::Io(e),
                        ))
                    })?
                    .into_iter()
                    .map(|f| (format!("{}/{f}", variant.output), None))
                    .collect()
            } else {
                vec![(variant.output.clone(), None)]
            };
            Ok(Produced {
                files,
                meta: json!({
                    "weights_bytes": facts.stored_bytes,
                    "parameters": facts.weights.as_ref().map_or(0, |w| w.parameters),
                }),
            })
        },
        |entry| {
            Ok(CoreMlWritten {
                files: entry
                    .record
                    .files
                    .iter()
                    .map(|f| StagedFile {
                        path: f.path.clone(),
                        abs: entry.file(&f.path),
                        digest: f.digest(),
                    })
                    .collect(),
                weights_bytes: entry.record.meta["weights_bytes"].as_u64().unwrap_or(0),
                parameters: entry.record.meta["parameters"].as_u64().unwrap_or(0),
            })
        },
    )?;
    Ok(Ran {
        output: StageOutput::CoreMlModel(Arc::new(c.value)),
        from_cache: c.from_cache,
    })
}
