//! `omnipack build`: input digests, the stages (export, quantize, package) on the executor
//! with the cache, the summary, and the swap into the output folder.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use omnipack_manifest::{Format, LoadedManifest, ResolvedComponent, ResolvedSource, Role};
use omnipack_plan::{BundlePlan, Plan, Stage, StageKind};
use omnipack_quant::{Dtype, QuantSpec, SafetensorsFile, SelectedTensor, WeightFormat};
use omnipack_summary::{BundleManifest, FileEntry, Summary};
use serde_json::json;

use crate::cache::{Cache, CacheEntry, Lookup, key_of};
use crate::executor::{StageStatus, execute};
use crate::exporter::{absolute, fill_placeholders, run_exporter};
use crate::fsutil::{
    dir_identity, link_or_copy, normalize, relative_to, remove_any, slash, walk_files,
    walk_files_skipping,
};
use crate::hash::{DigestMemo, MemoStats};
use crate::output::{OutputLock, PRIVATE_DIR, SwapArea};
use crate::progress::{Event, Progress};
use crate::sidecars::{asset_pack_id, asset_pack_manifest, config_json, decode_step_sidecars};
use crate::zipper::{BUNDLE_JSON, Entry, EntrySource, write_zip};

/// Apple's limits per app record.
pub const MAX_ASSET_PACKS: usize = 100;
/// 200 GB.
pub const MAX_ASSET_PACK_BYTES: u64 = 200_000_000_000;

/// A private cache keeps the entries used by this many most recent builds.
pub const KEEP_BUILDS: usize = 3;

/// Options of a build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The output folder.
    pub out_dir: PathBuf,
    /// The cache folder; default `OUT/.omnipack/cache`.
    pub cache_dir: Option<PathBuf>,
    /// Stages (and inner parallel work) at once; default: the number of CPUs.
    pub jobs: Option<usize>,
    /// Ignore existing cache entries (every stage runs; results still refresh the cache).
    pub no_cache: bool,
}

/// A stage that failed, with its cause.
#[derive(Debug, Clone)]
pub struct StageFailure {
    /// Stage id.
    pub stage: String,
    /// Cause (or, for a skipped stage, the failed stage it waited for).
    pub error: String,
    /// True when the stage did not run because a dependency failed.
    pub skipped: bool,
}

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The output folder is locked or unusable.
    #[error(transparent)]
    Output(#[from] crate::output::OutputError),
    /// An input file is missing or unreadable.
    #[error("{path}: {message}")]
    Input { path: String, message: String },
    /// I/O on a named path.
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// The stage graph is unusable.
    #[error(transparent)]
    Graph(#[from] crate::executor::GraphError),
    /// One or more stages failed.
    #[error("{} stage(s) failed: {}", .0.iter().filter(|f| !f.skipped).count(), .0.iter().filter(|f| !f.skipped).map(|f| f.stage.as_str()).collect::<Vec<_>>().join(", "))]
    Stages(Vec<StageFailure>),
    /// App Store asset-pack limits exceeded.
    #[error("{0}")]
    Limits(String),
    /// The plan has a tier that does not fit or is otherwise unbuildable.
    #[error("{0}")]
    Plan(String),
}

/// A build replaces `OUT/bundles`, `OUT/asset-packs` and the summary wholesale. When `OUT` was
/// never an omnipack output (no `.omnipack/` folder and no readable summary), such entries are
/// someone else's files: refuse rather than delete them.
fn refuse_foreign_output(out: &Path) -> Result<(), BuildError> {
    if out.join(PRIVATE_DIR).is_dir()
        || crate::verify::read_summary(&out.join(omnipack_summary::SUMMARY_FILE)).is_ok()
    {
        return Ok(());
    }
    let foreign: Vec<&str> = crate::output::DELIVERABLES
        .into_iter()
        .filter(|n| fs::symlink_metadata(out.join(n)).is_ok())
        .collect();
    if foreign.is_empty() {
        return Ok(());
    }
    Err(BuildError::Plan(format!(
        "{}: holds {} but is not an omnipack output folder (no {PRIVATE_DIR}/, no readable summary); a build would replace them: move them away or choose another --out",
        out.display(),
        foreign.join(", ")
    )))
}

fn io_err(p: &Path) -> impl FnOnce(std::io::Error) -> BuildError + '_ {
    move |source| BuildError::Io {
        path: p.display().to_string(),
        source,
    }
}

/// How a stage was satisfied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageReport {
    /// Stage id.
    pub stage: String,
    /// True when its output came from the cache (or, for a selection, needed no work).
    pub cached: bool,
}

/// A finished build.
#[derive(Debug, Clone)]
pub struct BuildReport {
    /// The summary written.
    pub summary: Summary,
    /// Every stage, in plan order.
    pub stages: Vec<StageReport>,
    /// Bytes hashed to digest inputs (0 when every digest came from the memo).
    pub input_bytes_hashed: u64,
    /// Warnings (also sent as events).
    pub warnings: Vec<String>,
}

/// A file that goes into a bundle.
#[derive(Debug, Clone)]
struct FileRef {
    path: String,
    abs: PathBuf,
    sha256: String,
    size: u64,
    /// True when the file belongs to our cache (may be hard-linked).
    ours: bool,
}

#[derive(Debug)]
struct Selection {
    tensors: Vec<SelectedTensor>,
    material: serde_json::Value,
    parameters: u64,
}

#[derive(Debug)]
struct WeightsOut {
    file: PathBuf,
    sha256: String,
    size: u64,
    data_bytes: u64,
    parameters: u64,
}

#[derive(Debug)]
struct BundleOut {
    zip: PathBuf,
    zip_sha256: String,
    zip_size: u64,
    pack_dir: PathBuf,
    files: Vec<FileEntry>,
    weights_bytes: u64,
    parameters: u64,
}

#[derive(Debug, Clone)]
enum Value {
    Tensors(Arc<Selection>),
    Files(Arc<Vec<FileRef>>),
    Weights(Arc<WeightsOut>),
    Bundle(Arc<BundleOut>),
}

struct Ctx<'a> {
    loaded: &'a LoadedManifest,
    plan: &'a Plan,
    cache: Cache,
    no_cache: bool,
    digests: BTreeMap<PathBuf, (String, u64)>,
    /// The output and cache folders: never part of an exporter's input folder.
    skip: Vec<(u64, u64)>,
    logs: PathBuf,
    progress: &'a dyn Progress,
    cached: Mutex<BTreeMap<String, bool>>,
}

impl Ctx<'_> {
    fn abs(&self, rel: &str) -> PathBuf {
        normalize(&absolute(&self.loaded.dir.join(rel)))
    }

    fn digest(&self, abs: &Path) -> Result<(String, u64), String> {
        self.digests
            .get(abs)
            .cloned()
            .ok_or_else(|| format!("{}: not among the digested inputs", abs.display()))
    }

    fn lookup(&self, kind: &str, key: &str) -> Option<CacheEntry> {
        if self.no_cache {
            return None;
        }
        match self.cache.lookup(kind, key) {
            Lookup::Hit(e) => Some(e),
            Lookup::Miss => None,
            Lookup::Corrupt(why) => {
                self.progress
                    .event(Event::Note(format!("cache entry rebuilt: {why}")));
                None
            }
        }
    }

    fn mark(&self, stage: &str, cached: bool) {
        if let Ok(mut m) = self.cached.lock() {
            m.insert(stage.to_string(), cached);
        }
    }

    fn component(&self, name: &str) -> Result<&ResolvedComponent, String> {
        self.plan
            .resolved_component(name)
            .ok_or_else(|| format!("component `{name}` is not in the plan"))
    }
}

/// Input files of a component, absolute. Input folders are expanded, skipping the folders
/// in `skip` (the build's own output and cache folders).
fn component_inputs(
    loaded: &LoadedManifest,
    c: &ResolvedComponent,
    skip: &[(u64, u64)],
) -> Result<Vec<PathBuf>, BuildError> {
    let abs = |rel: &str| normalize(&absolute(&loaded.dir.join(rel)));
    let mut out = Vec::new();
    match &c.source {
        ResolvedSource::Safetensors { shards, config, .. } => {
            if let Some(cfg) = config {
                out.push(abs(cfg));
            }
            for s in shards {
                let p = abs(s);
                let shards = omnipack_quant::resolve_shards(&p).map_err(|e| BuildError::Input {
                    path: p.display().to_string(),
                    message: e.to_string(),
                })?;
                if !shards.iter().any(|x| normalize(&absolute(x)) == p) {
                    out.push(p.clone());
                }
                out.extend(shards.iter().map(|x| normalize(&absolute(x))));
            }
        }
        ResolvedSource::Command { inputs, .. } => {
            for i in inputs {
                let p = abs(i);
                let meta = fs::metadata(&p).map_err(|e| BuildError::Input {
                    path: p.display().to_string(),
                    message: format!("exporter input of component `{}`: {e}", c.name),
                })?;
                if meta.is_dir() {
                    for f in walk_files_skipping(&p, skip).map_err(io_err(&p))? {
                        out.push(p.join(f));
                    }
                } else {
                    out.push(p);
                }
            }
        }
        ResolvedSource::Files { files } => out.extend(files.iter().map(|f| abs(f))),
    }
    Ok(out)
}

/// Runs the whole build of `plan` into `opts.out_dir`.
pub fn build(
    loaded: &LoadedManifest,
    plan: &Plan,
    opts: &BuildOptions,
    progress: &dyn Progress,
) -> Result<BuildReport, BuildError> {
    if let Some(t) = plan.tiers.iter().find(|t| !t.entry.fits) {
        return Err(BuildError::Plan(format!(
            "tier `{}` does not fit: peak {} bytes + min_headroom {} > memory_limit {} (run `omnipack plan` for the breakdown)",
            t.entry.name,
            t.entry.memory.peak_bytes,
            t.min_headroom_bytes,
            t.entry.memory_limit_bytes
        )));
    }
    if plan.tiers.is_empty() || plan.bundles.is_empty() {
        return Err(BuildError::Plan(
            "nothing to build: the plan has no tier or no bundle".into(),
        ));
    }
    let out = &opts.out_dir;
    refuse_foreign_output(out)?;
    // `acquire` creates the folder, or says clearly that `out` is a file.
    let lock = OutputLock::acquire(out)?;
    let private = out.join(PRIVATE_DIR);
    let swap = SwapArea::new(out);
    if let Some(note) = swap.recover()? {
        progress.event(Event::Note(note));
    }
    let default_cache = opts.cache_dir.is_none();
    let cache_root = opts
        .cache_dir
        .clone()
        .unwrap_or_else(|| private.join("cache"));
    fs::create_dir_all(&cache_root).map_err(io_err(&cache_root))?;
    if default_cache {
        // We hold the lock of the only user of this cache: leftovers are from killed builds.
        let tmp = cache_root.join("tmp");
        remove_any(&tmp).map_err(io_err(&tmp))?;
    }
    let logs = private.join("logs");
    fs::create_dir_all(&logs).map_err(io_err(&logs))?;
    let skip = vec![
        dir_identity(out).map_err(io_err(out))?,
        dir_identity(&cache_root).map_err(io_err(&cache_root))?,
    ];

    // Digests of every input, from the memo when unchanged.
    let memo = DigestMemo::load(cache_root.join("digests.json"));
    let stats = Mutex::new(MemoStats::default());
    let mut inputs: BTreeSet<PathBuf> = loaded
        .files
        .iter()
        .map(|f| normalize(&absolute(f)))
        .collect();
    for cp in &plan.components {
        inputs.extend(component_inputs(loaded, &cp.component, &skip)?);
    }
    let jobs = opts
        .jobs
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
        .max(1);
    let digests: BTreeMap<PathBuf, (String, u64)> = {
        use rayon::prelude::*;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(jobs)
            .build()
            .map_err(|_| BuildError::Graph(crate::executor::GraphError::Pool(jobs)))?;
        let list: Vec<PathBuf> = inputs.iter().cloned().collect();
        pool.install(|| {
            list.par_iter()
                .map(|p| {
                    memo.digest(p, &stats)
                        .map(|d| (p.clone(), d))
                        .map_err(|e| BuildError::Input {
                            path: p.display().to_string(),
                            message: e.to_string(),
                        })
                })
                .collect::<Result<_, _>>()
        })?
    };
    let _ = memo.save();
    let (input_bytes_hashed, memo_hits) = stats
        .lock()
        .map(|s| (s.bytes_hashed, s.memo_hits))
        .unwrap_or((0, 0));
    if input_bytes_hashed > 0 {
        progress.event(Event::Note(format!(
            "hashed {} of new or changed inputs ({memo_hits} unchanged inputs not read)",
            omnipack_manifest::format_bytes(input_bytes_hashed)
        )));
    }

    let ctx = Ctx {
        loaded,
        plan,
        cache: Cache::new(cache_root.clone()),
        no_cache: opts.no_cache,
        digests,
        skip,
        logs,
        progress,
        cached: Mutex::new(BTreeMap::new()),
    };
    progress.event(Event::Planned {
        stages: plan.stages.iter().map(|s| s.id.clone()).collect(),
    });
    let results = execute(&plan.stages, jobs, |stage, deps| {
        let t0 = Instant::now();
        let r = run_stage(&ctx, stage, deps);
        let cached = ctx
            .cached
            .lock()
            .ok()
            .and_then(|m| m.get(&stage.id).copied())
            .unwrap_or(false);
        match &r {
            Ok(v) => progress.event(Event::Finished {
                stage: stage.id.clone(),
                cached,
                seconds: t0.elapsed().as_secs_f64(),
                detail: describe(v),
            }),
            Err(e) => progress.event(Event::Failed {
                stage: stage.id.clone(),
                error: e.clone(),
            }),
        }
        r
    })?;
    let mut failures = Vec::new();
    let mut bundles: BTreeMap<String, Arc<BundleOut>> = BTreeMap::new();
    let mut reports = Vec::new();
    for (stage, st) in plan.stages.iter().zip(&results) {
        match st {
            StageStatus::Done(v) => {
                if let (StageKind::Package { bundle }, Value::Bundle(b)) = (&stage.kind, v) {
                    bundles.insert(bundle.clone(), b.clone());
                }
                let cached = ctx
                    .cached
                    .lock()
                    .ok()
                    .and_then(|m| m.get(&stage.id).copied())
                    .unwrap_or(false);
                reports.push(StageReport {
                    stage: stage.id.clone(),
                    cached,
                });
            }
            StageStatus::Failed(e) => failures.push(StageFailure {
                stage: stage.id.clone(),
                error: e.clone(),
                skipped: false,
            }),
            StageStatus::Skipped(dep) => {
                progress.event(Event::Skipped {
                    stage: stage.id.clone(),
                    because: dep.clone(),
                });
                failures.push(StageFailure {
                    stage: stage.id.clone(),
                    error: format!("not run: `{dep}` failed"),
                    skipped: true,
                })
            }
        }
    }
    if !failures.is_empty() {
        return Err(BuildError::Stages(failures));
    }

    // Summary from measured sizes.
    let mut warnings = Vec::new();
    let weights: BTreeMap<String, u64> = bundles
        .iter()
        .map(|(id, b)| (id.clone(), b.weights_bytes))
        .collect();
    let measured = omnipack_plan::with_measured_sizes(plan, &weights);
    let summary = make_summary(&ctx, &measured, &bundles)?;
    check_limits(&summary, &mut warnings)?;
    for w in &warnings {
        progress.event(Event::Warning(w.clone()));
    }

    // Assemble the new tree, summary last, then swap it in.
    let new = swap.prepare()?;
    for b in &summary.bundles {
        let out_b = bundles
            .get(&b.id)
            .ok_or_else(|| BuildError::Plan(format!("bundle `{}` was not packaged", b.id)))?;
        link_or_copy(&out_b.zip, &new.join(&b.file)).map_err(io_err(&out_b.zip))?;
        let pack = new.join("asset-packs").join(&b.id);
        for f in walk_files(&out_b.pack_dir).map_err(io_err(&out_b.pack_dir))? {
            link_or_copy(&out_b.pack_dir.join(&f), &pack.join(&f)).map_err(io_err(&pack))?;
        }
    }
    fs::create_dir_all(new.join("bundles")).map_err(io_err(&new))?;
    fs::create_dir_all(new.join("asset-packs")).map_err(io_err(&new))?;
    let mut text =
        serde_json::to_vec_pretty(&summary).map_err(|e| BuildError::Plan(e.to_string()))?;
    text.push(b'\n');
    crate::fsutil::write_atomic(&new.join(omnipack_summary::SUMMARY_FILE), &text)
        .map_err(io_err(&new))?;
    swap.commit()?;
    if default_cache {
        // A private cache keeps what the last three builds used; older entries are deleted.
        match ctx.cache.prune(KEEP_BUILDS) {
            Ok(0) => {}
            Ok(n) => progress.event(Event::Note(format!(
                "removed {n} cache entr{} no build among the last {KEEP_BUILDS} used",
                if n == 1 { "y" } else { "ies" }
            ))),
            Err(e) => progress.event(Event::Warning(format!(
                "could not prune the cache {}: {e}",
                cache_root.display()
            ))),
        }
    }
    drop(lock);
    Ok(BuildReport {
        summary,
        stages: reports,
        input_bytes_hashed,
        warnings,
    })
}

fn describe(v: &Value) -> String {
    match v {
        Value::Tensors(s) => format!("{} tensors, {} parameters", s.tensors.len(), s.parameters),
        Value::Files(f) => format!(
            "{} files, {} bytes",
            f.len(),
            f.iter().map(|x| x.size).sum::<u64>()
        ),
        Value::Weights(w) => format!("{} bytes of weights", w.data_bytes),
        Value::Bundle(b) => format!(
            "{} bytes, sha256 {}",
            b.zip_size,
            b.zip_sha256.get(..12).unwrap_or(&b.zip_sha256)
        ),
    }
}

fn run_stage(ctx: &Ctx, stage: &Stage, deps: Vec<Value>) -> Result<Value, String> {
    ctx.progress.event(Event::Started {
        stage: stage.id.clone(),
        total_bytes: None,
    });
    match &stage.kind {
        StageKind::Export { component, tier } => export(ctx, stage, component, tier.as_deref()),
        StageKind::Quantize {
            component,
            bundle,
            format,
            group_size,
        } => {
            let dep = deps
                .into_iter()
                .next()
                .ok_or("quantize stage without an export stage")?;
            quantize(ctx, stage, component, bundle, *format, *group_size, dep)
        }
        StageKind::Package { bundle } => {
            let dep = deps
                .into_iter()
                .next()
                .ok_or("package stage without an input stage")?;
            package(ctx, stage, bundle, dep)
        }
    }
}

fn bundle_for<'p>(plan: &'p Plan, component: &str, tier: Option<&str>) -> Option<&'p BundlePlan> {
    plan.bundles
        .iter()
        .find(|b| b.component == component && b.tier.as_deref() == tier)
}

fn export(ctx: &Ctx, stage: &Stage, component: &str, tier: Option<&str>) -> Result<Value, String> {
    let c = ctx.component(component)?;
    match &c.source {
        ResolvedSource::Safetensors { shards, prefix, .. } => {
            let mut tensors = Vec::new();
            let mut material = Vec::new();
            for s in shards {
                for shard in
                    omnipack_quant::resolve_shards(ctx.abs(s)).map_err(|e| e.to_string())?
                {
                    let abs = normalize(&absolute(&shard));
                    let (sha, _) = ctx.digest(&abs)?;
                    let file = Arc::new(SafetensorsFile::open(&abs).map_err(|e| e.to_string())?);
                    let sel = SelectedTensor::with_prefix(&file, prefix);
                    let names: Vec<&str> = sel.iter().map(|t| t.tensor.as_str()).collect();
                    material.push(json!({"sha256": sha, "tensors": names}));
                    tensors.extend(sel);
                }
            }
            if tensors.is_empty() {
                return Err(format!(
                    "no tensor named `{prefix}*` in {}",
                    shards.join(", ")
                ));
            }
            tensors.sort_by(|a, b| a.output_name.cmp(&b.output_name));
            let parameters: u64 = tensors
                .iter()
                .filter_map(|t| t.file.entry(&t.tensor).ok().map(|e| e.info.numel()))
                .sum();
            for w in tensors.windows(2) {
                if w[0].output_name == w[1].output_name {
                    return Err(format!(
                        "tensor `{}{}` appears in two shards",
                        prefix, w[0].output_name
                    ));
                }
            }
            let material = json!({"prefix": prefix, "shards": material});
            // The selection itself is cheap (headers only); its cache record says whether this
            // exact selection was made before, so a rebuild reports it as cached.
            let key = key_of("select", &material);
            let cached = ctx.lookup("select", &key).is_some();
            if !cached {
                let work = ctx
                    .cache
                    .work_dir("select", &key)
                    .map_err(|e| e.to_string())?;
                ctx.cache
                    .commit(
                        "select",
                        &key,
                        &work,
                        Vec::new(),
                        json!({"parameters": parameters}),
                    )
                    .map_err(|e| e.to_string())?;
            }
            ctx.mark(&stage.id, cached);
            Ok(Value::Tensors(Arc::new(Selection {
                tensors,
                material,
                parameters,
            })))
        }
        ResolvedSource::Files { files } => {
            let mut refs = Vec::new();
            for f in files {
                let abs = ctx.abs(f);
                let (sha256, size) = ctx.digest(&abs)?;
                let name = abs
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .ok_or_else(|| format!("{f}: not a file name"))?;
                if refs.iter().any(|r: &FileRef| r.path == name) {
                    return Err(format!(
                        "two files named `{name}` in component `{component}`"
                    ));
                }
                refs.push(FileRef {
                    path: name,
                    abs,
                    sha256,
                    size,
                    ours: false,
                });
            }
            refs.sort_by(|a, b| a.path.cmp(&b.path));
            ctx.mark(&stage.id, true);
            Ok(Value::Files(Arc::new(refs)))
        }
        ResolvedSource::Command {
            run,
            inputs,
            outputs,
            timeout_secs,
            workdir,
        } => {
            let b = bundle_for(ctx.plan, component, tier);
            let max_seq = match (
                c.max_seq_len,
                tier.and_then(|t| ctx.loaded.resolved.tiers.iter().find(|x| x.name == t))
                    .and_then(|t| t.max_seq_len),
            ) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let mut values: BTreeMap<&str, String> = BTreeMap::new();
            values.insert("tier", tier.unwrap_or("").to_string());
            values.insert("component", component.to_string());
            values.insert(
                "format",
                b.map(|b| b.format.as_str().to_string())
                    .unwrap_or_else(|| c.quantization.formats[0].as_str().into()),
            );
            values.insert(
                "group_size",
                b.and_then(|b| b.group_size)
                    .unwrap_or(c.quantization.group_size)
                    .to_string(),
            );
            values.insert(
                "max_seq_len",
                max_seq.map(|m| m.to_string()).unwrap_or_default(),
            );
            let keyed_argv = fill_placeholders(run, &values);
            let mut input_digests = Vec::new();
            for i in inputs {
                let p = ctx.abs(i);
                let meta = fs::metadata(&p).map_err(|e| format!("{}: {e}", p.display()))?;
                let files = if meta.is_dir() {
                    walk_files_skipping(&p, &ctx.skip)
                        .map_err(|e| format!("{}: {e}", p.display()))?
                        .into_iter()
                        .map(|f| p.join(f))
                        .collect()
                } else {
                    vec![p.clone()]
                };
                for f in files {
                    let (sha, _) = ctx.digest(&f)?;
                    input_digests.push(json!([
                        slash(&relative_to(&f, &manifest_dir(ctx.loaded))),
                        sha
                    ]));
                }
            }
            let key = key_of(
                "export",
                &json!({"argv": keyed_argv, "workdir": workdir, "inputs": input_digests, "outputs": outputs, "component": component}),
            );
            let entry = match ctx.lookup("export", &key) {
                Some(e) => {
                    ctx.mark(&stage.id, true);
                    e
                }
                None => {
                    let work = ctx
                        .cache
                        .work_dir("export", &key)
                        .map_err(|e| e.to_string())?;
                    values.insert("out", absolute(&work.join("out")).display().to_string());
                    let argv = fill_placeholders(run, &values);
                    let log = ctx
                        .logs
                        .join(format!("{}.log", stage.id.replace([':', '/'], "_")));
                    let r = run_exporter(
                        &argv,
                        &manifest_dir(ctx.loaded).join(workdir),
                        &work,
                        outputs,
                        Duration::from_secs(*timeout_secs),
                        &log,
                    )
                    .map_err(|e| {
                        let _ = remove_any(&work);
                        format!("component `{component}`: {e}")
                    })?;
                    let files = r.files.iter().map(|f| (format!("out/{f}"), None)).collect();
                    let e = ctx
                        .cache
                        .commit("export", &key, &work, files, json!({"files": r.files}))
                        .map_err(|e| e.to_string())?;
                    ctx.mark(&stage.id, false);
                    e
                }
            };
            let refs = entry
                .record
                .files
                .iter()
                .filter_map(|f| {
                    f.path.strip_prefix("out/").map(|rel| FileRef {
                        path: rel.to_string(),
                        abs: entry.file(&f.path),
                        sha256: f.sha256.clone(),
                        size: f.size,
                        ours: true,
                    })
                })
                .collect();
            Ok(Value::Files(Arc::new(refs)))
        }
    }
}

/// Bytes of a file actually written so far: its allocated blocks (the quantizer may size its
/// output up front and fill it through a memory map), at most its length.
fn written_bytes(m: &fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    (m.blocks() * 512).min(m.len())
}

/// The manifest's folder as an absolute path (the exporter's working directory).
fn manifest_dir(loaded: &LoadedManifest) -> PathBuf {
    if loaded.dir.as_os_str().is_empty() {
        std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."))
    } else {
        absolute(&loaded.dir)
    }
}

fn dtype_of(d: omnipack_manifest::FloatDtype) -> Option<Dtype> {
    serde_json::to_value(d)
        .ok()
        .and_then(|v| v.as_str().and_then(Dtype::parse))
}

fn quantize(
    ctx: &Ctx,
    stage: &Stage,
    component: &str,
    bundle: &str,
    format: Format,
    group_size: Option<u32>,
    dep: Value,
) -> Result<Value, String> {
    let c = ctx.component(component)?;
    let sel = match dep {
        Value::Tensors(s) => s,
        // Exporter and file outputs are packaged as they are; their quantization is declarative.
        Value::Files(f) => {
            ctx.mark(&stage.id, true);
            return Ok(Value::Files(f));
        }
        _ => return Err("quantize stage got an unexpected input".into()),
    };
    let wf = WeightFormat::parse(format.as_str())
        .ok_or_else(|| format!("format {format} is not supported natively"))?;
    let spec = QuantSpec {
        format: wf,
        group_size: group_size.unwrap_or(c.quantization.group_size),
        method: omnipack_quant::Method::Rtn,
        keep: c.quantization.keep.clone(),
        keep_dtype: c.quantization.keep_dtype.and_then(dtype_of),
    };
    let key = key_of(
        "quantize",
        &json!({
            "source": sel.material,
            "format": format.as_str(),
            "group_size": if format.is_grouped() { Some(spec.group_size) } else { None },
            "keep": spec.keep,
            "keep_dtype": spec.keep_dtype.map(|d| d.safetensors_name()),
        }),
    );
    let out_of = |e: &CacheEntry| -> Result<Value, String> {
        let f = e
            .get("weights.safetensors")
            .ok_or("cache entry without weights")?;
        Ok(Value::Weights(Arc::new(WeightsOut {
            file: e.file("weights.safetensors"),
            sha256: f.sha256.clone(),
            size: f.size,
            data_bytes: e.record.meta["data_bytes"].as_u64().unwrap_or(0),
            parameters: e.record.meta["parameters"].as_u64().unwrap_or(0),
        })))
    };
    if let Some(e) = ctx.lookup("quantize", &key) {
        ctx.mark(&stage.id, true);
        return out_of(&e);
    }
    // Bytes written so far, for progress: the quantizer writes one temporary file in `work`,
    // whose final size the plan knows exactly.
    let planned = ctx
        .plan
        .bundle(bundle)
        .map(|b| b.weights_bytes)
        .filter(|&n| n > 0);
    ctx.progress.event(Event::Started {
        stage: stage.id.clone(),
        total_bytes: planned,
    });
    let work = ctx
        .cache
        .work_dir("quantize", &key)
        .map_err(|e| e.to_string())?;
    let out = work.join("weights.safetensors");
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let r = std::thread::scope(|scope| {
        if planned.is_some() {
            let work = &work;
            scope.spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(Duration::from_millis(200))
                {
                    let done: u64 = fs::read_dir(work)
                        .map(|rd| {
                            rd.filter_map(|e| e.ok()?.metadata().ok())
                                .map(|m| written_bytes(&m))
                                .sum()
                        })
                        .unwrap_or(0);
                    ctx.progress.event(Event::Bytes {
                        stage: stage.id.clone(),
                        done,
                    });
                }
            });
        }
        let r = omnipack_quant::quantize_to_file(&sel.tensors, &spec, &out, &wf.metadata());
        drop(stop);
        r
    })
    .map_err(|e| {
        let _ = remove_any(&work);
        format!("bundle `{bundle}`: {e}")
    })?;
    ctx.progress.event(Event::Bytes {
        stage: stage.id.clone(),
        done: r.file_bytes,
    });
    let e = ctx
        .cache
        .commit(
            "quantize",
            &key,
            &work,
            vec![(
                "weights.safetensors".into(),
                Some((r.sha256.clone(), r.file_bytes)),
            )],
            json!({"data_bytes": r.data_bytes, "parameters": r.parameters}),
        )
        .map_err(|e| e.to_string())?;
    ctx.mark(&stage.id, false);
    out_of(&e)
}

/// The JSON object of the component's `source.config`, read from the bytes that were digested
/// (a file changed since is an error, so the bundle matches the summary's `inputs[]`).
fn source_config(
    ctx: &Ctx,
    c: &ResolvedComponent,
) -> Result<Option<serde_json::Map<String, serde_json::Value>>, String> {
    let ResolvedSource::Safetensors {
        config: Some(rel), ..
    } = &c.source
    else {
        return Ok(None);
    };
    let abs = ctx.abs(rel);
    let (sha, _) = ctx.digest(&abs)?;
    let bytes = fs::read(&abs).map_err(|e| format!("{}: {e}", abs.display()))?;
    if crate::hash::sha256_bytes(&bytes) != sha {
        return Err(format!(
            "{}: changed during the build (run it again)",
            abs.display()
        ));
    }
    match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(serde_json::Value::Object(m)) => Ok(Some(m)),
        Ok(_) => Err(format!(
            "{}: `source.config` of component `{}` is not a JSON object",
            abs.display(),
            c.name
        )),
        Err(e) => Err(format!(
            "{}: `source.config` of component `{}` is not valid JSON: {e}",
            abs.display(),
            c.name
        )),
    }
}

fn package(ctx: &Ctx, stage: &Stage, bundle_id: &str, dep: Value) -> Result<Value, String> {
    let b = ctx
        .plan
        .bundle(bundle_id)
        .ok_or_else(|| format!("bundle `{bundle_id}` is not in the plan"))?;
    let c = ctx.component(&b.component)?;
    let mut entries: Vec<Entry> = Vec::new();
    let mut sources: BTreeMap<String, (PathBuf, bool)> = BTreeMap::new();
    let (weights_bytes, parameters) = match &dep {
        Value::Weights(w) => {
            entries.push(Entry {
                path: "weights.safetensors".into(),
                source: EntrySource::File(w.file.clone()),
                size: w.size,
                sha256: w.sha256.clone(),
            });
            sources.insert("weights.safetensors".into(), (w.file.clone(), true));
            let base = source_config(ctx, c)?;
            entries.push(Entry::bytes(
                "config.json",
                config_json(c, b.format, b.group_size, base.as_ref()),
            ));
            (w.data_bytes, w.parameters)
        }
        Value::Files(files) => {
            for f in files.iter() {
                entries.push(Entry {
                    path: f.path.clone(),
                    source: EntrySource::File(f.abs.clone()),
                    size: f.size,
                    sha256: f.sha256.clone(),
                });
                sources.insert(f.path.clone(), (f.abs.clone(), f.ours));
            }
            (files.iter().map(|f| f.size).sum(), b.parameters)
        }
        _ => return Err("package stage got an unexpected input".into()),
    };
    for (path, bytes) in decode_step_sidecars(c) {
        if entries.iter().any(|e| e.path == path) {
            return Err(format!(
                "`{path}` is both an exporter output and a generated sidecar"
            ));
        }
        entries.push(Entry::bytes(path, bytes));
    }
    if entries.iter().any(|e| e.path == BUNDLE_JSON) {
        return Err(format!("`{BUNDLE_JSON}` is reserved for omnipack"));
    }
    let mut files: Vec<FileEntry> = entries
        .iter()
        .map(|e| FileEntry {
            path: e.path.clone(),
            size_bytes: e.size,
            sha256: e.sha256.clone(),
        })
        .collect();
    files.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
    let manifest = BundleManifest {
        bundle_id: b.id.clone(),
        component: c.name.clone(),
        role: crate::sidecars::role_str(c.role).into(),
        runtime: enum_str(&c.runtime),
        quantization: b.quantization.clone(),
        files: files.clone(),
        generator: omnipack_summary::generator(),
    };
    let mut bj = serde_json::to_vec_pretty(&manifest).map_err(|e| e.to_string())?;
    bj.push(b'\n');
    let bundle_json = Entry::bytes(BUNDLE_JSON, bj);
    files.push(FileEntry {
        path: BUNDLE_JSON.into(),
        size_bytes: bundle_json.size,
        sha256: bundle_json.sha256.clone(),
    });
    files.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
    entries.push(bundle_json.clone());
    let pack_id = asset_pack_id(&ctx.plan.package.bundle_id, &b.id);
    let pack_manifest = asset_pack_manifest(&pack_id, &b.id, b.delivery);
    let key = key_of(
        "package",
        &json!({
            "bundle_json": bundle_json.sha256,
            "asset_pack_manifest": crate::hash::sha256_bytes(&pack_manifest),
            "weights_bytes": weights_bytes,
            "parameters": parameters,
        }),
    );
    let out_of = |e: &CacheEntry| -> Result<Value, String> {
        let z = e
            .get("bundle.zip")
            .ok_or("cache entry without bundle.zip")?;
        Ok(Value::Bundle(Arc::new(BundleOut {
            zip: e.file("bundle.zip"),
            zip_sha256: z.sha256.clone(),
            zip_size: z.size,
            pack_dir: e.file("pack"),
            files: files.clone(),
            weights_bytes,
            parameters,
        })))
    };
    if let Some(e) = ctx.lookup("package", &key) {
        ctx.mark(&stage.id, true);
        return out_of(&e);
    }
    let total: u64 = entries.iter().map(|e| e.size).sum();
    ctx.progress.event(Event::Started {
        stage: stage.id.clone(),
        total_bytes: Some(total),
    });
    let work = ctx
        .cache
        .work_dir("package", &key)
        .map_err(|e| e.to_string())?;
    let fail = |e: String| {
        let _ = remove_any(&work);
        e
    };
    let done = std::sync::atomic::AtomicU64::new(0);
    let zip = write_zip(&work.join("bundle.zip"), entries.clone(), &|n| {
        let d = done.fetch_add(n, std::sync::atomic::Ordering::Relaxed) + n;
        ctx.progress.event(Event::Bytes {
            stage: stage.id.clone(),
            done: d,
        });
    })
    .map_err(|e| fail(format!("bundle `{bundle_id}`: {e}")))?;
    let mut recorded = vec![(
        "bundle.zip".to_string(),
        Some((zip.sha256.clone(), zip.size)),
    )];
    let pack = work.join("pack");
    crate::fsutil::write_atomic(&pack.join("Manifest.json"), &pack_manifest)
        .map_err(|e| fail(e.to_string()))?;
    recorded.push((
        "pack/Manifest.json".into(),
        Some((
            crate::hash::sha256_bytes(&pack_manifest),
            pack_manifest.len() as u64,
        )),
    ));
    for e in &entries {
        let dest = pack.join(&b.id).join(&e.path);
        match &e.source {
            EntrySource::Bytes(bytes) => crate::fsutil::write_atomic(&dest, bytes)
                .map_err(|x| fail(format!("{}: {x}", dest.display())))?,
            EntrySource::File(src) => {
                let ours = sources.get(&e.path).map(|s| s.1).unwrap_or(false);
                let r = if ours {
                    link_or_copy(src, &dest)
                } else {
                    dest.parent()
                        .map(fs::create_dir_all)
                        .transpose()
                        .and_then(|_| fs::copy(src, &dest).map(|_| ()))
                };
                r.map_err(|x| fail(format!("{}: {x}", dest.display())))?;
            }
        }
        recorded.push((
            format!("pack/{}/{}", b.id, e.path),
            Some((e.sha256.clone(), e.size)),
        ));
    }
    let e = ctx
        .cache
        .commit("package", &key, &work, recorded, json!({"bundle": b.id}))
        .map_err(|e| fail(e.to_string()))?;
    ctx.mark(&stage.id, false);
    out_of(&e)
}

fn enum_str<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn make_summary(
    ctx: &Ctx,
    plan: &Plan,
    outs: &BTreeMap<String, Arc<BundleOut>>,
) -> Result<Summary, BuildError> {
    let manifest_sha256 = crate::hash::sha256_bytes(&crate::sidecars::to_canonical_compact(
        &ctx.loaded.merged_json,
    ));
    let mut inputs: Vec<omnipack_summary::InputFile> = ctx
        .digests
        .iter()
        .map(|(p, (sha, _))| omnipack_summary::InputFile {
            path: slash(&relative_to(p, &manifest_dir(ctx.loaded))),
            sha256: sha.clone(),
        })
        .collect();
    inputs.sort_by(|a, b| a.path.cmp(&b.path));
    let mut bundles = Vec::new();
    for b in &plan.bundles {
        let o = outs
            .get(&b.id)
            .ok_or_else(|| BuildError::Plan(format!("bundle `{}` has no package stage", b.id)))?;
        let c = plan
            .resolved_component(&b.component)
            .ok_or_else(|| BuildError::Plan(format!("bundle `{}`: unknown component", b.id)))?;
        bundles.push(omnipack_summary::BundleEntry {
            id: b.id.clone(),
            component: b.component.clone(),
            role: crate::sidecars::role_str(c.role).into(),
            runtime: enum_str(&c.runtime),
            delivery: enum_str(&b.delivery),
            residency: enum_str(&b.residency),
            file: format!("bundles/{}.zip", b.id),
            size_bytes: o.zip_size,
            sha256: o.zip_sha256.clone(),
            asset_pack: omnipack_summary::AssetPackRef {
                id: asset_pack_id(&plan.package.bundle_id, &b.id),
                manifest: format!("asset-packs/{}/Manifest.json", b.id),
            },
            quantization: b.quantization.clone(),
            parameters: if o.parameters > 0 {
                o.parameters
            } else {
                b.parameters
            },
            weights_bytes: o.weights_bytes,
            resident_bytes: b.resident_bytes,
            files: o.files.clone(),
        });
    }
    bundles.sort_by(|a, b| a.id.cmp(&b.id));
    let _ = Role::Data;
    Ok(Summary {
        summary_version: omnipack_summary::SUMMARY_VERSION,
        generator: omnipack_summary::generator(),
        package: plan.package.clone(),
        manifest_sha256,
        inputs,
        bundles,
        tiers: plan.tiers.iter().map(|t| t.entry.clone()).collect(),
    })
}

fn check_limits(summary: &Summary, warnings: &mut Vec<String>) -> Result<(), BuildError> {
    let n = summary.bundles.len();
    let bytes: u64 = summary.bundles.iter().map(|b| b.size_bytes).sum();
    if n > MAX_ASSET_PACKS {
        return Err(BuildError::Limits(format!(
            "{n} asset packs: the App Store allows {MAX_ASSET_PACKS} per app record; ship fewer variants or tiers"
        )));
    }
    if bytes > MAX_ASSET_PACK_BYTES {
        return Err(BuildError::Limits(format!(
            "asset packs total {bytes} bytes: the App Store allows 200 GB per app record"
        )));
    }
    if n * 5 > MAX_ASSET_PACKS * 4 {
        warnings.push(format!(
            "{n} asset packs: more than 80% of the App Store's {MAX_ASSET_PACKS} per app record"
        ));
    }
    if bytes.saturating_mul(5) > MAX_ASSET_PACK_BYTES.saturating_mul(4) {
        warnings.push(format!("asset packs total {bytes} bytes: more than 80% of the App Store's 200 GB per app record"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use omnipack_summary::{AssetPackRef, BundleEntry, PackageInfo, QuantizationInfo};

    fn summary(n: usize, size: u64) -> Summary {
        let b = |i: usize| BundleEntry {
            id: format!("b{i}"),
            component: "c".into(),
            role: "data".into(),
            runtime: "mlx".into(),
            delivery: "on_demand".into(),
            residency: "lazy".into(),
            file: format!("bundles/b{i}.zip"),
            size_bytes: size,
            sha256: String::new(),
            asset_pack: AssetPackRef {
                id: format!("x.b{i}"),
                manifest: String::new(),
            },
            quantization: QuantizationInfo {
                format: "f16".into(),
                group_size: None,
                bits: None,
                mode: None,
            },
            parameters: 0,
            weights_bytes: 0,
            resident_bytes: 0,
            files: Vec::new(),
        };
        Summary {
            summary_version: 1,
            generator: String::new(),
            package: PackageInfo {
                name: "p".into(),
                version: "1".into(),
                bundle_id: "x".into(),
            },
            manifest_sha256: String::new(),
            inputs: Vec::new(),
            bundles: (0..n).map(b).collect(),
            tiers: Vec::new(),
        }
    }

    #[test]
    fn app_store_limits() {
        let mut w = Vec::new();
        check_limits(&summary(80, 1), &mut w).unwrap();
        assert!(w.is_empty());
        check_limits(&summary(81, 1), &mut w).unwrap();
        assert_eq!(w.len(), 1);
        assert!(check_limits(&summary(101, 1), &mut Vec::new()).is_err());
        let mut w = Vec::new();
        check_limits(&summary(2, 81_000_000_000), &mut w).unwrap();
        assert!(w[0].contains("80%"), "{w:?}");
        assert!(check_limits(&summary(3, 67_000_000_000), &mut Vec::new()).is_err());
    }
}
