//! `export:<component>`: a component's working weights or files, as the plan's
//! [`ExportParams`] say: tensors selected from safetensors shards (no copy), an external
//! exporter's outputs (cached by argv, folder, inputs and outputs), or files as they are.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use omnipack_manifest::lexical_path::absolute;
use omnipack_plan::{ExportParams, ExportSource, Stage, fill_placeholders};
use omnipack_quant::{FileDigest, QuantError, SafetensorsFile, SelectedTensor};
use serde_json::json;

use crate::cache::{CacheError, CacheKind};
use crate::exporter::{ExporterError, run_exporter};
use crate::stages::cached::Produced;
use crate::stages::{BuildContext, Ran, StageOutput, StagedFile, TensorSelection};
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
            },
        ),
        ExportSource::Files { files } => take_files(ctx, p, files),
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
        |_| Ok(selection),
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
