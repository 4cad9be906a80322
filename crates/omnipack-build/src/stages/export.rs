//! `export:<component>`: a component's working weights or files, as the plan's
//! [`ExportParams`] say: tensors selected from safetensors shards (no copy), an external
//! exporter's outputs (cached by argv, folder, inputs and outputs), or files as they are.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use omnipack_manifest::IoDtype;
use omnipack_manifest::lexical_path::absolute;
use omnipack_plan::{
    DecodeStepContract, ExportParams, ExportSource, Stage, fill_placeholders, is_coreml_path,
};
use omnipack_quant::{FileDigest, QuantError, SafetensorsFile, SelectedTensor};
use serde_json::json;

use crate::cache::{CacheError, CacheKind};
use crate::exporter::{ExporterError, run_exporter};
use crate::stages::cached::Produced;
use crate::stages::{BuildContext, CoreMlSource, Ran, StageOutput, StagedFile, TensorSelection};
use omnipack_fs::walk_files_skipping;

/// Why an export stage failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// A file the stage reads was not digested before the stages ran.
    #[error(
        "{}: not among the plan's inputs (the build digests every file a stage reads before it runs; is the plan edited by hand?)",
        path.display()
    )]
    NotAnInput { path: PathBuf },
    /// A shard cannot be opened.
    #[error("component `{component}`: {source}")]
    Shard {
        component: String,
        source: QuantError,
    },
    /// No tensor has the prefix.
    #[error("no tensor named `{prefix}*` in {shards}")]
    NoTensors { prefix: String, shards: String },
    /// Two shards hold a tensor of the same name.
    #[error("tensor `{tensor}` appears in two shards")]
    DuplicateTensor { tensor: String },
    /// A `files` entry has no file name.
    #[error("{path}: not a file name")]
    NotAFileName { path: String },
    /// Two `files` entries have the same file name.
    #[error("two files named `{name}` in component `{component}`")]
    DuplicateFileName { component: String, name: String },
    /// An exporter input cannot be read.
    #[error("{}: exporter input of component `{component}`: {source}", path.display())]
    Input {
        component: String,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The exporter failed.
    #[error("component `{component}`: {source}")]
    Exporter {
        component: String,
        source: ExporterError,
    },
    /// A Core ML model cannot be read or rewritten.
    #[error("component `{component}`: {source}")]
    CoreMl {
        component: String,
        source: omnipack_coreml::Error,
    },
    /// A Core ML decode step breaks the contract the app binds.
    #[error("component `{component}`: `{path}` breaks the decode-step contract: {mismatches}")]
    Contract {
        component: String,
        path: String,
        mismatches: String,
    },
    /// The cache failed.
    #[error(transparent)]
    Cache(#[from] CacheError),
}

/// Runs an export stage.
pub(crate) fn run(ctx: &BuildContext, stage: &Stage, p: &ExportParams) -> Result<Ran, ExportError> {
    match &p.source {
        ExportSource::Safetensors { shards, prefix } => select_tensors(ctx, p, shards, prefix),
        ExportSource::Command {
            argv,
            workdir,
            timeout_secs,
            inputs,
            outputs,
            coreml_contract,
        } => run_command(
            ctx,
            stage,
            p,
            &Command {
                argv,
                workdir,
                timeout: Duration::from_secs(*timeout_secs),
                inputs,
                outputs,
                coreml_contract: coreml_contract.as_ref(),
            },
        ),
        ExportSource::Files { files } => take_files(ctx, p, files),
        ExportSource::Mlpackage { path, contract } => read_coreml(ctx, p, path, contract.as_ref()),
    }
}

/// Reads a `source.mlpackage` model (every file was digested before the stages ran) and
/// checks its decode-step contract.
fn read_coreml(
    ctx: &BuildContext,
    p: &ExportParams,
    path: &str,
    contract: Option<&DecodeStepContract>,
) -> Result<Ran, ExportError> {
    let key_material = json!({"model": input_digests(ctx, p, &[path.to_string()])?});
    let abs = ctx.path(path);
    let model = omnipack_coreml::open(&abs).map_err(|source| ExportError::CoreMl {
        component: p.component.clone(),
        source,
    })?;
    check_contract(p, path, &model, contract)?;
    Ok(Ran {
        output: StageOutput::CoreMl(Arc::new(CoreMlSource {
            model,
            key_material,
        })),
        from_cache: true,
    })
}

/// The library's expectation for a plan's contract.
pub(crate) fn expectation(c: &DecodeStepContract) -> omnipack_coreml::DecodeStepExpectation {
    omnipack_coreml::DecodeStepExpectation {
        names: omnipack_coreml::DecodeStepNames {
            input_ids: c.input_ids.clone(),
            logits: c.logits.clone(),
            cache_inputs: c.cache_inputs.clone(),
            cache_outputs: c.cache_outputs.clone(),
        },
        layers: c.layers,
        kv_heads: c.kv_heads,
        kv_head_dim: c.kv_head_dim,
        vocab_size: c.vocab_size,
        io_dtype: c.io_dtype.map(|io| match io {
            IoDtype::F32 => omnipack_coreml::ArrayDataType::Float32,
            IoDtype::F16 => omnipack_coreml::ArrayDataType::Float16,
        }),
        context: c.context,
    }
}

/// Checks `model` (shown as `shown`) against `contract`, when there is one.
fn check_contract(
    p: &ExportParams,
    shown: &str,
    model: &omnipack_coreml::CoreMlModel,
    contract: Option<&DecodeStepContract>,
) -> Result<(), ExportError> {
    let Some(contract) = contract else {
        return Ok(());
    };
    let facts = model.facts().map_err(|source| ExportError::CoreMl {
        component: p.component.clone(),
        source,
    })?;
    let step = omnipack_coreml::check_decode_step(&facts, &expectation(contract));
    if step.is_ok() {
        return Ok(());
    }
    Err(ExportError::Contract {
        component: p.component.clone(),
        path: shown.to_string(),
        mismatches: step
            .mismatches
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; "),
    })
}

/// An exporter's Core ML output, checked and rewritten in place in its byte-reproducible form
/// (content-derived identifiers, sorted protobuf maps, no conversion date).
fn check_and_rewrite_output(
    p: &ExportParams,
    out: &Path,
    rel: &str,
    contract: Option<&DecodeStepContract>,
) -> Result<(), ExportError> {
    let path = out.join(rel.trim_end_matches('/'));
    let err = |source| ExportError::CoreMl {
        component: p.component.clone(),
        source,
    };
    let model = omnipack_coreml::open(&path).map_err(err)?;
    check_contract(p, rel, &model, contract)?;
    match model.format {
        omnipack_coreml::ModelFormat::SingleFile => {
            let bytes =
                omnipack_coreml::canonical_model_bytes(&model.model_bytes).map_err(|e| {
                    err(omnipack_coreml::Error::new(
                        &path,
                        omnipack_coreml::ErrorKind::Wire(e),
                    ))
                })?;
            omnipack_fs::write_atomic(&path, &bytes).map_err(|e| {
                err(omnipack_coreml::Error::new(
                    &path,
                    omnipack_coreml::ErrorKind::Io(e),
                ))
            })
        }
        omnipack_coreml::ModelFormat::Package(_) => {
            let entries = model.reproducible_entries().map_err(err)?;
            let mut tmp = path.as_os_str().to_owned();
            tmp.push(".reproducible");
            let tmp = PathBuf::from(tmp);
            omnipack_coreml::write_package(&entries, &tmp).map_err(err)?;
            let io = |e| {
                err(omnipack_coreml::Error::new(
                    &path,
                    omnipack_coreml::ErrorKind::Io(e),
                ))
            };
            fs::remove_dir_all(&path).map_err(io)?;
            fs::rename(&tmp, &path).map_err(io)
        }
    }
}

fn digest_of<'c>(ctx: &'c BuildContext, abs: &Path) -> Result<&'c FileDigest, ExportError> {
    ctx.input_digest(abs)
        .ok_or_else(|| ExportError::NotAnInput {
            path: abs.to_path_buf(),
        })
}

/// The component's tensors (prefix stripped) from its shards, sorted by name. The selection
/// reads headers only; its cache record says whether this exact selection was made before,
/// so a rebuild reports it as cached.
fn select_tensors(
    ctx: &BuildContext,
    p: &ExportParams,
    shards: &[String],
    prefix: &str,
) -> Result<Ran, ExportError> {
    let mut tensors = Vec::new();
    let mut material = Vec::new();
    for shard in shards {
        let abs = ctx.path(shard);
        let sha = digest_of(ctx, &abs)?.sha256.clone();
        let file = Arc::new(
            SafetensorsFile::open(&abs).map_err(|source| ExportError::Shard {
                component: p.component.clone(),
                source,
            })?,
        );
        let sel = SelectedTensor::with_prefix(&file, prefix);
        let names: Vec<&str> = sel.iter().map(|t| t.tensor.as_str()).collect();
        material.push(json!({"sha256": sha, "tensors": names}));
        tensors.extend(sel);
    }
    if tensors.is_empty() {
        return Err(ExportError::NoTensors {
            prefix: prefix.to_string(),
            shards: shards.join(", "),
        });
    }
    tensors.sort_by(|a, b| a.output_name.cmp(&b.output_name));
    if let Some(w) = tensors
        .windows(2)
        .find(|w| w[0].output_name == w[1].output_name)
    {
        return Err(ExportError::DuplicateTensor {
            tensor: format!("{prefix}{}", w[0].output_name),
        });
    }
    let parameters: u64 = tensors
        .iter()
        .filter_map(|t| t.file.entry(&t.tensor).ok().map(|e| e.info.numel()))
        .sum();
    let key_material = json!({"prefix": prefix, "shards": material});
    let selection = Arc::new(TensorSelection {
        tensors,
        key_material: key_material.clone(),
        parameters,
    });
    let c = ctx.cached(
        CacheKind::Select,
        &key_material,
        |_| {
            Ok::<_, ExportError>(Produced {
                files: Vec::new(),
                meta: json!({"parameters": parameters}),
            })
        },
        |_| Ok(selection.clone()),
    )?;
    Ok(Ran {
        output: StageOutput::Tensors(c.value),
        from_cache: c.from_cache,
    })
}

/// An exporter command of the plan.
struct Command<'a> {
    argv: &'a [String],
    workdir: &'a str,
    timeout: Duration,
    inputs: &'a [String],
    outputs: &'a [String],
    coreml_contract: Option<&'a DecodeStepContract>,
}

/// Runs the exporter in a fresh folder of the cache (unless its result is cached), keyed by
/// its argv, folder, declared outputs and the digests of every input file.
fn run_command(
    ctx: &BuildContext,
    stage: &Stage,
    p: &ExportParams,
    cmd: &Command,
) -> Result<Ran, ExportError> {
    let material = json!({
        "argv": cmd.argv,
        "workdir": cmd.workdir,
        "inputs": input_digests(ctx, p, cmd.inputs)?,
        "outputs": cmd.outputs,
        "component": p.component,
    });
    let c = ctx.cached::<_, ExportError>(
        CacheKind::Export,
        &material,
        |work| {
            let out = absolute(&work.join("out")).display().to_string();
            let argv = fill_placeholders(cmd.argv, &BTreeMap::from([("out", out)]));
            let log = ctx
                .logs
                .join(format!("{}.log", stage.id.replace([':', '/'], "_")));
            // Not normalised: `..` in the folder means what the file system says it means.
            let cwd = ctx.root.join(cmd.workdir);
            let r = run_exporter(&argv, &cwd, work, cmd.outputs, cmd.timeout, &log).map_err(
                |source| ExportError::Exporter {
                    component: p.component.clone(),
                    source,
                },
            )?;
            // A Core ML output is read and checked right after the export (a failure here
            // leaves no cache entry and nothing packaged), then stored byte-reproducibly.
            if cmd.coreml_contract.is_some() {
                for o in cmd.outputs.iter().filter(|o| is_coreml_path(o)) {
                    check_and_rewrite_output(p, &work.join("out"), o, cmd.coreml_contract)?;
                }
            }
            Ok(Produced {
                files: r.files.iter().map(|f| (format!("out/{f}"), None)).collect(),
                meta: json!({"files": r.files}),
            })
        },
        |entry| {
            Ok(entry
                .record
                .files
                .iter()
                .filter_map(|f| {
                    f.path.strip_prefix("out/").map(|rel| StagedFile {
                        path: rel.to_string(),
                        abs: entry.file(&f.path),
                        digest: f.digest(),
                    })
                })
                .collect::<Vec<_>>())
        },
    )?;
    Ok(Ran {
        output: StageOutput::Files(Arc::new(c.value)),
        from_cache: c.from_cache,
    })
}

/// `[path relative to the root, sha256]` of every exporter input file, folders expanded
/// (without the build's own output and cache folders).
fn input_digests(
    ctx: &BuildContext,
    p: &ExportParams,
    inputs: &[String],
) -> Result<Vec<serde_json::Value>, ExportError> {
    let mut out = Vec::new();
    for i in inputs {
        let path = ctx.path(i);
        let input_err = |source| ExportError::Input {
            component: p.component.clone(),
            path: path.clone(),
            source,
        };
        let meta = fs::metadata(&path).map_err(input_err)?;
        let files = if meta.is_dir() {
            walk_files_skipping(&path, &ctx.skip)
                .map_err(input_err)?
                .into_iter()
                .map(|f| path.join(f))
                .collect()
        } else {
            vec![path.clone()]
        };
        for f in files {
            let sha = &digest_of(ctx, &f)?.sha256;
            out.push(json!([ctx.relative(&f), sha]));
        }
    }
    Ok(out)
}

/// A `files` component's files, each under its file name.
fn take_files(ctx: &BuildContext, p: &ExportParams, files: &[String]) -> Result<Ran, ExportError> {
    let mut refs: Vec<StagedFile> = Vec::new();
    for f in files {
        let abs = ctx.path(f);
        let digest = digest_of(ctx, &abs)?.clone();
        let name = abs
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| ExportError::NotAFileName { path: f.clone() })?;
        if refs.iter().any(|r| r.path == name) {
            return Err(ExportError::DuplicateFileName {
                component: p.component.clone(),
                name,
            });
        }
        refs.push(StagedFile {
            path: name,
            abs,
            digest,
        });
    }
    refs.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(Ran {
        output: StageOutput::Files(Arc::new(refs)),
        from_cache: true,
    })
}
