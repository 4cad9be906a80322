//! `omnipack build`: runs a [`Plan`] and nothing else. [`build`] is the sequence of steps, each
//! in its own module under [`crate::stages`].

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use omnipack_remote::{RemoteCache, Stats};

use omnipack_manifest::lexical_path::{absolute, normalize};
use omnipack_plan::{PLAN_VERSION, Plan};
use omnipack_summary::Summary;

use crate::cache::Cache;
use crate::digest_memo::Clock;
use crate::output::{OutputLock, PRIVATE_DIR, SwapArea, refuse_foreign_output};
use crate::progress::{Event, Progress};
use crate::stages::{self, BuildContext};
pub use crate::stages::{BuildError, StageFailure, StageReport, UnbuildablePlan};
use omnipack_fs::{dir_identity, remove_any};

pub use crate::stages::install::KEEP_BUILDS;

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
    /// Where the build reads the time (the system clock unless testing).
    pub clock: Clock,
    /// The remote cache (`--cache-url`): looked up after the local cache, pushed to after.
    pub remote: Option<Arc<RemoteCache>>,
    /// Fail (instead of a warning and a local build) when the remote cache is unavailable.
    pub require_remote: bool,
}

impl BuildOptions {
    /// Defaults for a build into `out_dir`.
    pub fn new(out_dir: impl Into<PathBuf>) -> BuildOptions {
        BuildOptions {
            out_dir: out_dir.into(),
            cache_dir: None,
            jobs: None,
            no_cache: false,
            clock: Clock::system(),
            remote: None,
            require_remote: false,
        }
    }
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
    /// What the remote cache did, when there was one.
    pub remote: Option<RemoteReport>,
}

/// What the remote cache did in a build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteReport {
    /// The cache URL.
    pub url: String,
    /// Hits, pushes and bytes moved.
    pub stats: Stats,
    /// Why the store stopped being used, when it did (the build went on locally).
    pub unavailable: Option<String>,
    /// Why pushes stopped while the store was still read (read-only credentials).
    pub writes_refused: Option<String>,
}

impl RemoteReport {
    fn of(remote: Option<&RemoteCache>) -> Option<RemoteReport> {
        remote.map(|r| RemoteReport {
            url: r.url().to_string(),
            stats: r.stats(),
            unavailable: stages::remote_unavailable(Some(r)),
            writes_refused: r.writes_refused(),
        })
    }
}

/// A finished `--only` run: the stages that ran (the ones named and what they need).
#[derive(Debug, Clone)]
pub struct SliceReport {
    /// Every stage run, in plan order.
    pub stages: Vec<StageReport>,
    /// What the remote cache did.
    pub remote: Option<RemoteReport>,
}

/// Runs the whole build of `plan` into `opts.out_dir`: check the plan, take the output folder,
/// digest the inputs, run the stages, write the summary, swap the new output in, prune the
/// cache. Paths of the plan are relative to its root, itself relative to the current folder.
pub fn build(
    plan: &Plan,
    opts: &BuildOptions,
    progress: &dyn Progress,
) -> Result<BuildReport, BuildError> {
    check_buildable(plan)?;
    let root = root_folder(plan)?;
    let out = &opts.out_dir;
    refuse_foreign_output(out)?;
    // `acquire` creates the folder, or says clearly that `out` is a file.
    let lock = OutputLock::acquire(out)?;
    let swap = SwapArea::new(out);
    if let Some(note) = swap.recover()? {
        progress.event(Event::Note(note));
    }
    let cache = open_cache(out, opts)?;
    let logs = out.join(PRIVATE_DIR).join("logs");
    omnipack_fs::private_dir(&logs).map_err(io_err(&logs))?;
    let skip = vec![
        dir_identity(out).map_err(io_err(out))?,
        dir_identity(cache.root()).map_err(io_err(cache.root()))?,
    ];
    let jobs = jobs(opts);
    let (ctx, bytes_hashed) = context(plan, root, cache, skip, logs, opts, progress)?;
    let done = stages::run_all(&ctx, jobs)?;
    let summary = stages::summary::make_summary(&ctx, &done.bundles)?;
    stages::install::install(&swap, &summary, &done.bundles)?;
    let mut warnings = Vec::new();
    if let Err(e) = ctx.cache.restamp_used() {
        let w = format!(
            "could not record the stamps of the cache {}: {e} (the next build re-hashes its entries)",
            ctx.cache.root().display()
        );
        progress.event(Event::Warning(w.clone()));
        warnings.push(w);
    }
    if opts.cache_dir.is_none() {
        // Only a private cache is pruned: a shared one is the user's to clean.
        stages::install::prune(&ctx.cache, progress, &mut warnings);
    }
    drop(lock);
    Ok(BuildReport {
        summary,
        stages: done.reports,
        input_bytes_hashed: bytes_hashed,
        warnings,
        remote: RemoteReport::of(opts.remote.as_deref()),
    })
}

/// Runs the stages `only` names and the stages they depend on, pushing every result to the
/// remote cache, which is required (`opts.remote`; a failing store fails the run). Writes no
/// output folder: the local cache is `opts.cache_dir`, else a temporary folder removed at the
/// end. A later build with the same remote cache finds these stages there.
pub fn build_only(
    plan: &Plan,
    only: &[String],
    opts: &BuildOptions,
    progress: &dyn Progress,
) -> Result<SliceReport, BuildError> {
    check_buildable(plan)?;
    let wanted = stage_closure(plan, only)?;
    let mut slice = plan.clone();
    slice.stages.retain(|s| wanted.contains(s.id.as_str()));
    let root = root_folder(plan)?;
    let (cache_root, temp) = match &opts.cache_dir {
        Some(d) => (d.clone(), None),
        None => {
            let t = TempCache::new().map_err(|e| BuildError::Io {
                path: std::env::temp_dir().display().to_string(),
                source: e,
            })?;
            (t.0.clone(), Some(t))
        }
    };
    fs::create_dir_all(&cache_root).map_err(io_err(&cache_root))?;
    let cache = prepared_cache(cache_root)?;
    let logs = cache.root().join("logs");
    fs::create_dir_all(&logs).map_err(io_err(&logs))?;
    let skip = vec![dir_identity(cache.root()).map_err(io_err(cache.root()))?];
    let jobs = jobs(opts);
    // Publishing is the whole point of a slice: the remote cache is required.
    let required = BuildOptions {
        require_remote: true,
        ..opts.clone()
    };
    let (ctx, _) = context(&slice, root, cache, skip, logs, &required, progress)?;
    let done = stages::run_all(&ctx, jobs).inspect_err(|_| {
        // A failed stage's error points at its log in this cache: leave it to be read.
        if let Some(t) = &temp {
            t.keep();
        }
    })?;
    drop(temp);
    Ok(SliceReport {
        stages: done.reports,
        remote: RemoteReport::of(opts.remote.as_deref()),
    })
}

/// Probes the remote cache, digests the plan's inputs and gathers what every stage may use;
/// also returns how many input bytes were hashed (not found in the digest memo).
fn context<'a>(
    plan: &'a Plan,
    root: PathBuf,
    cache: Cache,
    skip: Vec<(u64, u64)>,
    logs: PathBuf,
    opts: &'a BuildOptions,
    progress: &'a dyn Progress,
) -> Result<(BuildContext<'a>, u64), BuildError> {
    probe_remote(opts, progress)?;
    let inputs = stages::inputs::digest_inputs(
        plan,
        &root,
        &skip,
        cache.root().join("digests.json"),
        opts.clock.clone(),
        jobs(opts),
        progress,
    )?;
    let ctx = BuildContext {
        plan,
        root,
        cache,
        no_cache: opts.no_cache,
        inputs: inputs.digests,
        skip,
        logs,
        progress,
        remote: opts.remote.as_deref(),
        require_remote: opts.require_remote,
        // The probe's warning is the one warning.
        remote_warned: AtomicBool::new(
            stages::remote_unavailable(opts.remote.as_deref()).is_some(),
        ),
        remote_push_warned: AtomicBool::new(false),
        remote_deferred: Default::default(),
        stage_inputs: Default::default(),
    };
    Ok((ctx, inputs.bytes_hashed))
}

/// The ids in `only` and every stage they depend on, transitively.
fn stage_closure<'p>(
    plan: &'p Plan,
    only: &[String],
) -> Result<std::collections::BTreeSet<&'p str>, BuildError> {
    let by_id: std::collections::BTreeMap<&str, &omnipack_plan::Stage> =
        plan.stages.iter().map(|s| (s.id.as_str(), s)).collect();
    let mut wanted = std::collections::BTreeSet::new();
    let mut todo: Vec<&str> = Vec::new();
    for id in only {
        let Some((&id, _)) = by_id.get_key_value(id.as_str()) else {
            return Err(BuildError::UnknownStage {
                stage: id.clone(),
                known: plan
                    .stages
                    .iter()
                    .map(|s| s.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        todo.push(id);
    }
    while let Some(id) = todo.pop() {
        if wanted.insert(id)
            && let Some(&s) = by_id.get(id)
        {
            todo.extend(s.depends_on.iter().map(String::as_str));
        }
    }
    Ok(wanted)
}

/// A temporary local cache for an `--only` run, removed when dropped unless kept.
struct TempCache(PathBuf, std::cell::Cell<bool>);

impl TempCache {
    fn new() -> std::io::Result<TempCache> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let d = std::env::temp_dir().join(format!("omnipack-only-{}-{nanos}", std::process::id()));
        fs::create_dir_all(&d)?;
        Ok(TempCache(d, std::cell::Cell::new(false)))
    }

    /// Leaves the folder in place when dropped.
    fn keep(&self) {
        self.1.set(true);
    }
}

impl Drop for TempCache {
    fn drop(&mut self) {
        if !self.1.get() {
            let _ = remove_any(&self.0);
        }
    }
}

/// One request to the remote cache before any work: an unreachable or refused store is an
/// error when required, else a warning (the build goes on locally).
fn probe_remote(opts: &BuildOptions, progress: &dyn Progress) -> Result<(), BuildError> {
    let Some(remote) = &opts.remote else {
        return Ok(());
    };
    match remote.probe() {
        Ok(()) => Ok(()),
        Err(u) if opts.require_remote => Err(BuildError::Remote(u)),
        Err(u) => {
            progress.event(Event::Warning(format!("{u}; building locally")));
            Ok(())
        }
    }
}

fn io_err(p: &Path) -> impl FnOnce(std::io::Error) -> BuildError + '_ {
    move |source| BuildError::Io {
        path: p.display().to_string(),
        source,
    }
}

/// A plan this omnipack can build: its version, every tier fitting, something to build,
/// within the App Store's limits.
fn check_buildable(plan: &Plan) -> Result<(), UnbuildablePlan> {
    if plan.plan_version != PLAN_VERSION {
        return Err(UnbuildablePlan::Version {
            found: plan.plan_version,
        });
    }
    if let Some(t) = plan.tiers.iter().find(|t| !t.entry.fits) {
        return Err(UnbuildablePlan::TierDoesNotFit {
            tier: t.entry.name.clone(),
            peak: t.entry.memory.peak_bytes,
            min_headroom: t.min_headroom_bytes,
            limit: t.entry.memory_limit_bytes,
        });
    }
    if plan.tiers.is_empty() || plan.bundles.is_empty() {
        return Err(UnbuildablePlan::Empty);
    }
    if let Some(over) = omnipack_plan::app_store::check(&plan.app_store)
        .over
        .first()
    {
        return Err(UnbuildablePlan::AppStore(over.message.clone()));
    }
    Ok(())
}

/// The plan's root folder, absolute.
fn root_folder(plan: &Plan) -> Result<PathBuf, UnbuildablePlan> {
    let root = normalize(&absolute(Path::new(&plan.root)));
    match fs::metadata(&root) {
        Ok(m) if m.is_dir() => Ok(root),
        Ok(_) => Err(UnbuildablePlan::Root {
            root: plan.root.clone(),
            source: std::io::Error::other("not a folder"),
        }),
        Err(source) => Err(UnbuildablePlan::Root {
            root: plan.root.clone(),
            source,
        }),
    }
}

/// The cache: `--cache-dir`, else the private `OUT/.omnipack/cache`, whose leftovers of
/// killed builds are removed (the lock makes this build its only user).
fn open_cache(out: &Path, opts: &BuildOptions) -> Result<Cache, BuildError> {
    let root = opts
        .cache_dir
        .clone()
        .unwrap_or_else(|| out.join(PRIVATE_DIR).join("cache"));
    if opts.cache_dir.is_none() {
        omnipack_fs::private_dir(&root).map_err(io_err(&root))?;
        let tmp = root.join("tmp");
        remove_any(&tmp).map_err(io_err(&tmp))?;
    } else {
        fs::create_dir_all(&root).map_err(io_err(&root))?;
    }
    prepared_cache(root)
}

/// The cache at `root` (an existing folder), its kind folders made real folders (see
/// [`Cache::prepare`]).
fn prepared_cache(root: PathBuf) -> Result<Cache, BuildError> {
    let cache = Cache::new(root);
    cache.prepare().map_err(|e| BuildError::Io {
        path: e.path.display().to_string(),
        source: e.source,
    })?;
    Ok(cache)
}

fn jobs(opts: &BuildOptions) -> usize {
    opts.jobs
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
        .max(1)
}
