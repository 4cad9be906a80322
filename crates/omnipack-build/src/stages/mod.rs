//! The steps of a build, one module each: digest the inputs ([`inputs`]), run the plan's
//! stages ([`export`], [`quantize`], [`package`], every cached one through [`cached`]), write
//! the summary ([`summary`]), then install the new output and prune the cache ([`install`]).
//!
//! [`run_all`] runs the stages on the executor: each stage gets its own parameters from the
//! plan and the outputs of the stages it depends on, nothing else.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use omnipack_manifest::lexical_path::{normalize, relative_to, slash};
use omnipack_plan::{Plan, Stage, StageKind};
use omnipack_quant::{FileDigest, SelectedTensor};
use omnipack_summary::FileEntry;

use crate::cache::Cache;
use crate::executor::{Panicked, StageStatus, execute};
use crate::progress::{Event, Progress};

mod cached;
pub mod export;
pub mod failure;
pub(crate) mod inputs;
pub(crate) mod install;
pub mod package;
pub mod quantize;
mod remote;
pub(crate) mod summary;

pub(crate) use remote::unavailable as remote_unavailable;
pub(crate) use remote::{DeferredEntries, Materialized};

pub use export::ExportError;
pub use failure::{BuildError, StageFailure, StageReport, UnbuildablePlan};
pub use package::PackageError;
pub use quantize::QuantizeError;

/// Why a stage failed.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// An export stage failed.
    #[error(transparent)]
    Export(#[from] ExportError),
    /// A quantize stage failed.
    #[error(transparent)]
    Quantize(#[from] QuantizeError),
    /// A package stage failed.
    #[error(transparent)]
    Package(#[from] PackageError),
    /// The stage's dependencies did not give what its kind reads (a plan edited by hand).
    #[error(
        "stage `{stage}` needs {expected} from the stage it depends on (is the plan edited by hand?)"
    )]
    WrongInput {
        /// The stage.
        stage: String,
        /// What it reads.
        expected: &'static str,
    },
    /// The stage panicked: a bug.
    #[error("internal error: {0}")]
    Panicked(String),
}

impl From<Panicked> for StageError {
    fn from(p: Panicked) -> StageError {
        StageError::Panicked(p.0)
    }
}

/// What a finished stage hands to the stages that depend on it.
#[derive(Debug, Clone)]
pub(crate) enum StageOutput {
    /// Tensors selected from safetensors shards (export of a safetensors component).
    Tensors(Arc<TensorSelection>),
    /// Files as they are (an exporter's outputs, a `files` component's files).
    Files(Arc<Vec<StagedFile>>),
    /// A quantized weights file.
    Weights(Arc<QuantizedWeights>),
    /// A packaged bundle.
    Bundle(Arc<PackagedBundle>),
    /// A Core ML model read and checked (export of a `source.mlpackage` component).
    CoreMl(Arc<CoreMlSource>),
    /// A Core ML variant written (the files of its package, or its `.mlmodel`).
    CoreMlModel(Arc<CoreMlWritten>),
}

/// A Core ML model read by an export stage.
#[derive(Debug)]
pub(crate) struct CoreMlSource {
    pub model: omnipack_coreml::CoreMlModel,
    /// What identifies it in cache keys (every file's path and sha256).
    pub key_material: serde_json::Value,
}

/// A Core ML variant in the cache.
#[derive(Debug)]
pub(crate) struct CoreMlWritten {
    /// Its files, with paths inside the bundle (`<artifact>.mlpackage/...`).
    pub files: Vec<StagedFile>,
    /// Stored weight bytes of the written model (blob data plus inline constants).
    pub weights_bytes: u64,
    pub parameters: u64,
}

/// Tensors selected from a component's shards.
#[derive(Debug)]
pub(crate) struct TensorSelection {
    pub tensors: Vec<SelectedTensor>,
    /// What identifies the selection in cache keys (shard digests, tensor names, prefix).
    pub key_material: serde_json::Value,
    pub parameters: u64,
}

/// A file that goes into a bundle as it is.
#[derive(Debug, Clone)]
pub(crate) struct StagedFile {
    /// Its path inside the bundle.
    pub path: String,
    pub abs: PathBuf,
    pub digest: FileDigest,
}

/// A quantized weights file in the cache.
#[derive(Debug)]
pub(crate) struct QuantizedWeights {
    pub file: PathBuf,
    pub digest: FileDigest,
    pub data_bytes: u64,
    pub parameters: u64,
    /// The measured error of the weights against their source.
    pub quality: omnipack_summary::Quality,
}

/// A bundle zip and its asset-pack folder in the cache.
#[derive(Debug)]
pub(crate) struct PackagedBundle {
    pub zip: PathBuf,
    pub zip_sha256: String,
    pub zip_size: u64,
    pub pack_dir: PathBuf,
    pub files: Vec<FileEntry>,
    pub weights_bytes: u64,
    pub parameters: u64,
    /// The measured quality of the weights (none for exporter outputs and files).
    pub quality: Option<omnipack_summary::Quality>,
}

/// A finished stage: its output and whether it came from the cache.
#[derive(Debug, Clone)]
pub(crate) struct Ran {
    pub output: StageOutput,
    pub from_cache: bool,
}

/// Everything a stage may use: the plan, its root folder, the digested inputs, the cache.
pub(crate) struct BuildContext<'a> {
    pub plan: &'a Plan,
    /// The plan's root, absolute.
    pub root: PathBuf,
    pub cache: Cache,
    pub no_cache: bool,
    /// Every input file (absolute) and its digest.
    pub inputs: BTreeMap<PathBuf, FileDigest>,
    /// The output and cache folders: never part of an exporter's input folder.
    pub skip: Vec<(u64, u64)>,
    pub logs: PathBuf,
    pub progress: &'a dyn Progress,
    /// The remote cache (`--cache-url`), looked up after the local one and pushed to.
    pub remote: Option<&'a omnipack_remote::RemoteCache>,
    /// A failing remote cache fails the stage instead of a warning.
    pub require_remote: bool,
    /// Whether the remote cache's failure was reported.
    pub remote_warned: std::sync::atomic::AtomicBool,
    /// Whether refused pushes were reported.
    pub remote_push_warned: std::sync::atomic::AtomicBool,
    /// Entries found in the remote cache whose files are downloaded when read.
    pub remote_deferred: DeferredEntries,
    /// What each stage that ran was given (to run it again when its deferred remote entry
    /// cannot be downloaded).
    pub stage_inputs: std::sync::Mutex<BTreeMap<String, Vec<Ran>>>,
}

impl BuildContext<'_> {
    /// A plan path (relative to the root) as an absolute, normalised path.
    pub fn path(&self, rel: &str) -> PathBuf {
        normalize(&self.root.join(rel))
    }

    /// A path relative to the root, `/`-separated (as in the summary's `inputs[]`).
    pub fn relative(&self, abs: &Path) -> String {
        slash(&relative_to(abs, &self.root))
    }

    /// The digest of an input file, recorded before any stage ran.
    pub fn input_digest(&self, abs: &Path) -> Option<&FileDigest> {
        self.inputs.get(abs)
    }
}

/// What the stages built: a report per stage and the packaged bundles by id.
pub(crate) struct StagesDone {
    pub reports: Vec<StageReport>,
    pub bundles: BTreeMap<String, Arc<PackagedBundle>>,
}

/// Runs every stage of the plan on `jobs` threads; every failure is reported.
pub(crate) fn run_all(ctx: &BuildContext, jobs: usize) -> Result<StagesDone, BuildError> {
    let plan = ctx.plan;
    ctx.progress.event(Event::Planned {
        stages: plan.stages.iter().map(|s| s.id.clone()).collect(),
    });
    let work = |s: &Stage| work_estimate(plan, s);
    let results = execute(&plan.stages, jobs, &work, |stage, deps: Vec<Ran>| {
        if ctx.remote.is_some()
            && let Ok(mut given) = ctx.stage_inputs.lock()
        {
            given.insert(stage.id.clone(), deps.clone());
        }
        let t0 = Instant::now();
        let r = run_stage(ctx, stage, deps);
        match &r {
            Ok(ran) => ctx.progress.event(Event::Finished {
                stage: stage.id.clone(),
                cached: ran.from_cache,
                seconds: t0.elapsed().as_secs_f64(),
                detail: describe(&ran.output),
            }),
            Err(e) => ctx.progress.event(Event::Failed {
                stage: stage.id.clone(),
                error: e.to_string(),
            }),
        }
        r
    })?;
    let mut failures = Vec::new();
    let mut done = StagesDone {
        reports: Vec::new(),
        bundles: BTreeMap::new(),
    };
    for (stage, status) in plan.stages.iter().zip(results) {
        match status {
            StageStatus::Done(ran) => {
                if let StageOutput::Bundle(b) = &ran.output
                    && let StageKind::Package(p) = &stage.kind
                {
                    done.bundles.insert(p.bundle.clone(), b.clone());
                }
                done.reports.push(StageReport {
                    stage: stage.id.clone(),
                    cached: ran.from_cache,
                });
            }
            StageStatus::Failed(error) => failures.push(StageFailure::Failed {
                stage: stage.id.clone(),
                error,
            }),
            StageStatus::Skipped(dep) => {
                ctx.progress.event(Event::Skipped {
                    stage: stage.id.clone(),
                    because: dep.clone(),
                });
                failures.push(StageFailure::NotRun {
                    stage: stage.id.clone(),
                    failed_dependency: dep,
                });
            }
        }
    }
    if failures.is_empty() {
        Ok(done)
    } else {
        Err(BuildError::Stages(failures))
    }
}

/// A stage's own work, in bytes read and written as planned (an export selects or runs
/// something of unknown size: 0; what depends on it counts).
fn work_estimate(plan: &Plan, stage: &Stage) -> u64 {
    match &stage.kind {
        StageKind::Export(_) => 0,
        StageKind::Quantize(p) => {
            let read = plan
                .component(&p.component)
                .map_or(0, |c| c.parameters.saturating_mul(2));
            let written = plan.bundle(&p.bundle).map_or(0, |b| b.weights_bytes);
            read.saturating_add(written)
        }
        StageKind::Package(p) => plan
            .bundle(&p.bundle)
            .map_or(0, |b| b.weights_bytes.saturating_mul(2)),
    }
}

/// Runs stage `id` again with what it was given, when the remote entry of its output could
/// not be downloaded at the time a stage read it.
pub(crate) fn run_again(ctx: &BuildContext, id: &str) -> Result<(), StageError> {
    let stage =
        ctx.plan
            .stages
            .iter()
            .find(|s| s.id == id)
            .ok_or_else(|| StageError::WrongInput {
                stage: id.to_string(),
                expected: "a stage of the plan",
            })?;
    let deps = ctx
        .stage_inputs
        .lock()
        .ok()
        .and_then(|g| g.get(id).cloned())
        .unwrap_or_default();
    ctx.progress.event(Event::Note(format!(
        "running `{id}` again: its output in the remote cache could not be used"
    )));
    run_stage(ctx, stage, deps).map(|_| ())
}

/// Runs one stage with its parameters and the outputs of the stages it depends on.
fn run_stage(ctx: &BuildContext, stage: &Stage, deps: Vec<Ran>) -> Result<Ran, StageError> {
    ctx.progress.event(Event::Started {
        stage: stage.id.clone(),
        total_bytes: None,
    });
    let input = || {
        deps.first()
            .map(|d| d.output.clone())
            .ok_or_else(|| StageError::WrongInput {
                stage: stage.id.clone(),
                expected: "an input",
            })
    };
    match &stage.kind {
        StageKind::Export(p) => Ok(export::run(ctx, stage, p)?),
        StageKind::Quantize(p) => quantize::run(ctx, stage, p, input()?),
        StageKind::Package(p) => package::run(ctx, stage, p, input()?),
    }
}

/// One line about a stage's output, for progress.
fn describe(o: &StageOutput) -> String {
    match o {
        StageOutput::Tensors(s) => {
            format!(
                "{}, {} parameters",
                omnipack_manifest::counted(s.tensors.len(), "tensor"),
                s.parameters
            )
        }
        StageOutput::Files(f) => format!(
            "{}, {} bytes",
            omnipack_manifest::counted(f.len(), "file"),
            f.iter().map(|x| x.digest.size).sum::<u64>()
        ),
        StageOutput::Weights(w) => format!("{} bytes of weights", w.data_bytes),
        StageOutput::Bundle(b) => format!(
            "{} bytes, sha256 {}",
            b.zip_size,
            b.zip_sha256.get(..12).unwrap_or(&b.zip_sha256)
        ),
        StageOutput::CoreMl(m) => format!("Core ML model, {} blob files", m.model.blob_files.len()),
        StageOutput::CoreMlModel(w) => format!(
            "{} files, {} bytes of weights",
            w.files.len(),
            w.weights_bytes
        ),
    }
}
