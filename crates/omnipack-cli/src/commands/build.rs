//! `omnipack build MANIFEST [--out DIR] [--tier NAME]... [--jobs N] [--no-cache] [--cache-dir DIR]
//! [--cache-url s3://BUCKET/PREFIX [--require-cache]] [--only STAGE_ID]...`
//! (or `omnipack build --plan PLAN.json ...`): the whole pipeline, with progress bars on a
//! terminal and plain lines otherwise, then a table per tier. With `--only`, just those stages
//! and what they need, pushed to the remote cache, and no output folder.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{IsTerminal, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Instant;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use omnipack_build::{BuildError, BuildOptions, Event, Progress, StageError, StageFailure};
use omnipack_manifest::diagnostic::{Diagnostic, render};
use omnipack_manifest::{LoadedManifest, Severity};
use omnipack_manifest::{counted, format_bytes, format_signed_bytes};
use omnipack_plan::{Plan, PlanFailure};

use super::CommandResult;

/// Arguments of `omnipack build`.
#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// The bundle manifest.
    #[arg(required_unless_present = "plan")]
    pub manifest: Option<PathBuf>,
    /// Build this plan (`omnipack plan MANIFEST --format json`, `-` for stdin) instead of a
    /// manifest: exactly its stages, without reading the manifest. Run it from the folder the
    /// plan was made in (its paths are relative to the manifest's folder as given then).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["manifest", "tiers"])]
    pub plan: Option<PathBuf>,
    /// Output folder.
    #[arg(long, value_name = "DIR", default_value = "dist")]
    pub out: PathBuf,
    /// Build only this tier (repeatable). Default: every tier.
    #[arg(long = "tier", value_name = "NAME")]
    pub tiers: Vec<String>,
    /// Stages (and parallel work inside them) at once. Default: the number of CPUs.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub jobs: Option<u32>,
    /// Run every stage even when its output is in the cache.
    #[arg(long)]
    pub no_cache: bool,
    /// Cache folder (share one between output folders). Default: OUT/.omnipack/cache.
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Remote cache shared between machines: an S3-compatible bucket and key prefix
    /// (s3://BUCKET/PREFIX; default: the OMNIPACK_CACHE_URL environment variable). Every stage
    /// is looked up there after the local cache and pushed there once built. Credentials,
    /// region and endpoint come from the AWS environment (AWS_ACCESS_KEY_ID, AWS_REGION,
    /// AWS_ENDPOINT_URL, AWS_PROFILE, ...); plain-HTTP endpoints need AWS_ALLOW_HTTP=true.
    #[arg(long, value_name = "URL")]
    pub cache_url: Option<String>,
    /// Fail (exit 1) instead of building locally when the remote cache is unreachable or
    /// refuses access. Needs a cache URL.
    #[arg(long)]
    pub require_cache: bool,
    /// Run only this stage (repeatable; ids from `omnipack plan --format json`, `stages[].id`)
    /// and the stages it depends on, push the results to the remote cache (required), and
    /// write no output folder. A later build with the same cache URL finds them.
    #[arg(long = "only", value_name = "STAGE_ID")]
    pub only: Vec<String>,
}

/// The cache URL: `--cache-url`, else `OMNIPACK_CACHE_URL` (empty means none).
fn cache_url(args: &BuildArgs) -> Option<String> {
    args.cache_url
        .clone()
        .or_else(|| std::env::var("OMNIPACK_CACHE_URL").ok())
        .filter(|u| !u.is_empty())
}

/// Runs `omnipack build`.
pub fn run(args: BuildArgs) -> CommandResult {
    let plan = match (&args.plan, &args.manifest) {
        (Some(file), _) => plan_from_file(file).map(|p| (p, None)),
        (None, Some(manifest)) => plan_manifest(manifest, &args.tiers),
        // clap requires one of them.
        (None, None) => None,
    };
    let url = cache_url(&args);
    if url.is_none() && (args.require_cache || !args.only.is_empty()) {
        eprintln!(
            "error: {} needs a remote cache: give --cache-url s3://BUCKET/PREFIX or set OMNIPACK_CACHE_URL",
            if args.only.is_empty() {
                "--require-cache"
            } else {
                "--only"
            }
        );
        return Ok(ExitCode::from(2));
    }
    let Some((plan, loaded)) = plan else {
        return Ok(ExitCode::from(1));
    };
    let remote = match url.as_deref().map(omnipack_build::RemoteCache::connect) {
        None => None,
        Some(Ok(r)) => Some(std::sync::Arc::new(r)),
        Some(Err(e)) => {
            eprintln!("error: {e}");
            eprintln!("error: nothing was built");
            return Ok(ExitCode::from(1));
        }
    };
    let opts = BuildOptions {
        cache_dir: args.cache_dir.clone(),
        jobs: args.jobs.map(|j| j as usize),
        no_cache: args.no_cache,
        remote,
        require_remote: args.require_cache,
        ..BuildOptions::new(&args.out)
    };
    let reporter = Reporter::new(std::io::stderr().is_terminal());
    let t0 = Instant::now();
    if !args.only.is_empty() {
        let result = omnipack_build::build_only(&plan, &args.only, &opts, &reporter);
        reporter.finish();
        return Ok(match result {
            Ok(report) => {
                let ran = report.stages.iter().filter(|s| !s.cached).count();
                println!(
                    "ran --only {} in {:.2}s: {} ({ran} ran, {} from the cache){}",
                    args.only.join(" --only "),
                    t0.elapsed().as_secs_f64(),
                    counted(report.stages.len(), "stage"),
                    report.stages.len() - ran,
                    remote_line(report.remote.as_ref()),
                );
                ExitCode::SUCCESS
            }
            // A stage id that is not in the plan is a usage error: nothing ran.
            Err(e @ BuildError::UnknownStage { .. }) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
            Err(e) => {
                report_failure(&e, loaded.as_ref());
                eprintln!("error: --only failed; the remote cache has what was pushed before");
                ExitCode::from(1)
            }
        });
    }
    let result = omnipack_build::build(&plan, &opts, &reporter);
    reporter.finish();
    match result {
        Ok(report) => {
            let ran = report.stages.iter().filter(|s| !s.cached).count();
            let cached = report.stages.len() - ran;
            let mut stdout = std::io::stdout().lock();
            let _ = writeln!(
                stdout,
                "built {} bundle{} into {} in {:.2}s: {ran} stage{} ran, {cached} from the cache{}",
                report.summary.bundles.len(),
                if report.summary.bundles.len() == 1 {
                    ""
                } else {
                    "s"
                },
                args.out.display(),
                t0.elapsed().as_secs_f64(),
                if ran == 1 { "" } else { "s" },
                remote_line(report.remote.as_ref()),
            );
            let _ = write!(stdout, "{}", tier_tables(&report.summary));
            Ok(ExitCode::SUCCESS)
        }
        Err(BuildError::Stages(failures)) => {
            print_failed_stages(&failures, loaded.as_ref());
            let skipped: Vec<&str> = failures
                .iter()
                .filter(|f| matches!(f, StageFailure::NotRun { .. }))
                .map(StageFailure::stage)
                .collect();
            if !skipped.is_empty() {
                eprintln!(
                    "note: not run because a stage they need failed: {}",
                    skipped.join(", ")
                );
            }
            eprintln!(
                "error: build failed; {} is unchanged (logs in {})",
                args.out.display(),
                args.out.join(".omnipack/logs").display()
            );
            Ok(ExitCode::from(1))
        }
        Err(e) => {
            eprintln!("error: {e}");
            eprintln!("error: build failed; {} is unchanged", args.out.display());
            Ok(ExitCode::from(1))
        }
    }
}

/// The remote cache's part of the summary line: hits, pushes and bytes, or why the build
/// went on locally.
fn remote_line(r: Option<&omnipack_build::RemoteReport>) -> String {
    let Some(r) = r else {
        return String::new();
    };
    let s = &r.stats;
    let moved = format!(
        "{}, {} pushed; {} fetched, {} down, {} up",
        counted(s.hits as usize, "remote hit"),
        s.pushed,
        counted(s.blobs_fetched as usize, "file"),
        format_bytes(s.bytes_down),
        format_bytes(s.bytes_up)
    );
    match &r.unavailable {
        None if let Some(why) = &r.writes_refused => {
            format!(" ({} {moved}; nothing pushed: {why})", r.url)
        }
        Some(why) => format!(
            " (built locally: remote cache {} unavailable: {why}; {moved})",
            r.url
        ),
        None => format!(" ({} {moved})", r.url),
    }
}

/// Prints why an `--only` run failed.
fn report_failure(e: &BuildError, loaded: Option<&LoadedManifest>) {
    match e {
        BuildError::Stages(failures) => print_failed_stages(failures, loaded),
        e => eprintln!("error: {e}"),
    }
}

/// Prints each stage that failed (not those skipped because of it).
fn print_failed_stages(failures: &[StageFailure], loaded: Option<&LoadedManifest>) {
    for f in failures {
        if let StageFailure::Failed { stage, error } = f {
            eprint!("{}", stage_failure(stage, error, loaded));
        }
    }
}

/// A failed stage as printed: a variant below a `min_sqnr_db` floor is located at that key
/// when the manifest is at hand (a build of a saved plan names the key's path instead).
fn stage_failure(stage: &str, error: &StageError, loaded: Option<&LoadedManifest>) -> String {
    let floor = match error {
        StageError::Quantize(q) => q.quality_floor(),
        _ => None,
    };
    match (floor, loaded) {
        (Some((path, help)), Some(loaded)) => render(&[loaded.diagnostic_at(
            path,
            Severity::Error,
            format!("stage `{stage}` failed: {error}"),
            Some(help),
        )]),
        (Some((path, help)), None) => {
            format!("error: stage `{stage}` failed: {path}: {error}\n  help: {help}\n")
        }
        (None, _) => format!("error: stage `{stage}` failed: {error}\n"),
    }
}

/// Loads, validates and plans `manifest`, printing its diagnostics and warnings; `None` when
/// nothing can be built. The loaded manifest comes back with the plan, to locate the errors
/// only the build can find.
fn plan_manifest(manifest: &Path, tiers: &[String]) -> Option<(Plan, Option<LoadedManifest>)> {
    let loaded = match omnipack_manifest::load(manifest) {
        Ok(l) => l,
        Err(diags) => {
            eprint!("{}", diags.render());
            return None;
        }
    };
    eprint!("{}", render(&loaded.warnings));
    let plan = match omnipack_plan::plan(&loaded, tiers) {
        Ok(p) => p,
        Err(PlanFailure { diagnostics, .. }) => {
            let diags: Vec<Diagnostic> = diagnostics
                .iter()
                .map(|d| d.to_diagnostic(&loaded))
                .collect();
            eprint!("{}", render(&diags));
            eprintln!(
                "error: nothing was built (the plan failed; see `omnipack plan {}`)",
                manifest.display()
            );
            return None;
        }
    };
    let warnings: Vec<Diagnostic> = plan
        .warnings
        .iter()
        .map(|w| w.to_diagnostic(&loaded))
        .collect();
    eprint!("{}", render(&warnings));
    Some((plan, Some(loaded)))
}

/// Reads a plan written by `omnipack plan --format json` (`-`: stdin), printing its warnings;
/// `None` (with the error printed) when it cannot be read.
fn plan_from_file(file: &Path) -> Option<Plan> {
    let text = if file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).map(|_| s)
    } else {
        omnipack_fs::read_to_string_capped(file, omnipack_fs::MAX_DOCUMENT_BYTES)
    };
    let plan = text.map_err(|e| e.to_string()).and_then(|t| {
        serde_json::from_str::<Plan>(&t).map_err(|e| format!("not an omnipack plan: {e}"))
    });
    match plan {
        Ok(plan) => {
            for w in &plan.warnings {
                eprintln!("warning: {}", w.message);
            }
            Some(plan)
        }
        Err(e) => {
            eprintln!("error: {}: {e}", file.display());
            None
        }
    }
}

/// Per tier: its bundles with zip sizes, then peak memory and headroom.
fn tier_tables(s: &omnipack_summary::Summary) -> String {
    let sizes: BTreeMap<&str, (u64, u64)> = s
        .bundles
        .iter()
        .map(|b| (b.id.as_str(), (b.size_bytes, b.resident_bytes)))
        .collect();
    let mut out = String::new();
    for t in &s.tiers {
        let m = &t.memory;
        let _ = writeln!(
            out,
            "\ntier {}  (memory_limit {}, peak {}, headroom {}, {})",
            t.name,
            format_bytes(t.memory_limit_bytes),
            format_bytes(m.peak_bytes),
            format_signed_bytes(m.headroom_bytes),
            if t.fits { "fits" } else { "DOES NOT FIT" }
        );
        let _ = writeln!(
            out,
            "  {:<36} {:>14} {:>14}",
            "bundle (load order)", "zip", "resident"
        );
        for id in &t.bundles {
            let (zip, resident) = sizes.get(id.as_str()).copied().unwrap_or((0, 0));
            let _ = writeln!(
                out,
                "  {:<36} {:>14} {:>14}",
                id,
                format_bytes(zip),
                format_bytes(resident)
            );
        }
    }
    out
}

/// Draws events: indicatif bars on a terminal, plain lines otherwise.
struct Reporter {
    tty: bool,
    multi: MultiProgress,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    total: usize,
    done: usize,
    bars: BTreeMap<String, ProgressBar>,
}

impl Reporter {
    fn new(tty: bool) -> Reporter {
        let multi = MultiProgress::with_draw_target(if tty {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
        Reporter {
            tty,
            multi,
            state: Mutex::new(State::default()),
        }
    }

    fn line(&self, text: String) {
        if self.tty {
            let _ = self.multi.println(text);
        } else {
            let _ = writeln!(std::io::stderr(), "{text}");
        }
    }

    fn finish(&self) {
        if let Ok(mut st) = self.state.lock() {
            for (_, b) in std::mem::take(&mut st.bars) {
                b.finish_and_clear();
            }
        }
        let _ = self.multi.clear();
    }
}

impl Progress for Reporter {
    fn event(&self, event: Event) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        match event {
            Event::Planned { stages } => st.total = stages.len(),
            Event::Started { stage, total_bytes } => {
                if !self.tty {
                    return;
                }
                let bar = st.bars.entry(stage.clone()).or_insert_with(|| {
                    let b = self.multi.add(ProgressBar::new_spinner());
                    b.enable_steady_tick(std::time::Duration::from_millis(120));
                    b
                });
                match total_bytes {
                    Some(n) => {
                        bar.set_length(n);
                        bar.set_style(
                            ProgressStyle::with_template("{spinner} {prefix:40} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
                                .unwrap_or_else(|_| ProgressStyle::default_bar())
                                .progress_chars("=> "),
                        );
                    }
                    None => bar.set_style(
                        ProgressStyle::with_template("{spinner} {prefix:40} {elapsed}")
                            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                    ),
                }
                bar.set_prefix(stage);
            }
            Event::Bytes { stage, done } => {
                if let Some(b) = st.bars.get(&stage) {
                    b.set_position(done);
                }
            }
            Event::Finished {
                stage,
                cached,
                seconds,
                detail,
            } => {
                st.done += 1;
                if let Some(b) = st.bars.remove(&stage) {
                    b.finish_and_clear();
                    self.multi.remove(&b);
                }
                let how = if cached { "cached" } else { "ran   " };
                let text = format!(
                    "[{}/{}] {how} {stage} ({seconds:.2}s; {detail})",
                    st.done, st.total
                );
                drop(st);
                self.line(text);
            }
            Event::Failed { stage, error } => {
                st.done += 1;
                if let Some(b) = st.bars.remove(&stage) {
                    b.finish_and_clear();
                    self.multi.remove(&b);
                }
                let first = error.lines().next().unwrap_or_default().to_string();
                let text = format!("[{}/{}] FAILED {stage}: {first}", st.done, st.total);
                drop(st);
                self.line(text);
            }
            Event::Skipped { stage, because } => {
                drop(st);
                self.line(format!("skipped {stage} (needs `{because}`, which failed)"));
            }
            Event::Transfer {
                entry,
                upload,
                done,
                total,
            } => {
                let label = format!("{} {entry}", if upload { "push" } else { "fetch" });
                if done < total {
                    if self.tty {
                        let bar = st.bars.entry(label.clone()).or_insert_with(|| {
                            let b = self.multi.add(ProgressBar::new(total));
                            b.set_style(
                                ProgressStyle::with_template("{spinner} {prefix:40} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
                                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                                    .progress_chars("=> "),
                            );
                            b.set_prefix(label.clone());
                            b
                        });
                        bar.set_position(done);
                    }
                    return;
                }
                if let Some(b) = st.bars.remove(&label) {
                    b.finish_and_clear();
                    self.multi.remove(&b);
                }
                drop(st);
                self.line(if upload {
                    format!("remote: pushed {entry} ({} uploaded)", format_bytes(done))
                } else {
                    format!("remote: fetched {entry} ({}, verified)", format_bytes(done))
                });
            }
            Event::Note(n) => {
                drop(st);
                self.line(format!("note: {n}"));
            }
            Event::Warning(w) => {
                drop(st);
                self.line(format!("warning: {w}"));
            }
        }
    }
}
