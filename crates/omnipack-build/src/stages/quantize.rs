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
use omnipack_plan::sizing::{coreml_config, quant_spec_parts};
use omnipack_plan::{QuantizeParams, Stage};
use omnipack_quant::{FileDigest, QuantError};
use serde_json::json;

use crate::cache::{CacheError, CacheKind};
use crate::fsutil::walk_files;
use crate::progress::Event;
use crate::stages::cached::Produced;
use crate::stages::{
    BuildContext, CoreMlSource, CoreMlWritten, QuantizedWeights, Ran, StageError, StageOutput,
    StagedFile,
};

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
    );
    let material = json!({
        "source": selection.key_material,
        "format": p.format.as_str(),
        "group_size": p.group_size,
        "keep": spec.keep,
        "keep_dtype": spec.keep_dtype.map(|d| d.safetensors_name()),
    });
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
                omnipack_quant::quantize_to_file(
                    &selection.tensors,
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
            Ok(Produced {
                files: vec![(
                    WEIGHTS_FILE.into(),
                    Some(FileDigest {
                        size: r.file_bytes,
                        sha256: r.sha256,
                        crc32: r.crc32,
                    }),
                )],
                meta: json!({"data_bytes": r.data_bytes, "parameters": r.parameters}),
            })
        },
        |entry| {
            let f = entry
                .get(WEIGHTS_FILE)
                .ok_or_else(|| QuantizeError::EntryWithoutWeights {
                    bundle: p.bundle.clone(),
                })?;
            Ok(QuantizedWeights {
                file: entry.file(WEIGHTS_FILE),
                digest: f.digest(),
                data_bytes: entry.record.meta["data_bytes"].as_u64().unwrap_or(0),
                parameters: entry.record.meta["parameters"].as_u64().unwrap_or(0),
            })
        },
    )?;
    Ok(Ran {
        output: StageOutput::Weights(Arc::new(c.value)),
        from_cache: c.from_cache,
    })
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
                    crate::fsutil::write_atomic(&out, &bytes).map_err(|e| {
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
                        in_cache: true,
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
