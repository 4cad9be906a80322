//! How a build and its stages end: why a build fails ([`BuildError`], [`UnbuildablePlan`]),
//! which stages failed or did not run ([`StageFailure`]), and how each stage was satisfied
//! ([`StageReport`]).

use omnipack_plan::PLAN_VERSION;

use super::StageError;
use crate::executor::GraphError;
use crate::output::OutputError;

/// A stage that failed or did not run.
#[derive(Debug)]
pub enum StageFailure {
    /// The stage ran and failed.
    Failed {
        /// Stage id.
        stage: String,
        /// Why.
        error: StageError,
    },
    /// The stage did not run because a stage it needs failed.
    NotRun {
        /// Stage id.
        stage: String,
        /// The failed stage it waited for.
        failed_dependency: String,
    },
}

impl StageFailure {
    /// The stage's id.
    pub fn stage(&self) -> &str {
        match self {
            StageFailure::Failed { stage, .. } | StageFailure::NotRun { stage, .. } => stage,
        }
    }
}

/// Why a plan cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum UnbuildablePlan {
    /// The plan was written by another version of omnipack.
    #[error(
        "the plan has plan_version {found}; this omnipack runs plan_version {PLAN_VERSION}: plan the manifest again"
    )]
    Version { found: u32 },
    /// A tier does not fit its memory limit.
    #[error(
        "tier `{tier}` does not fit: peak {peak} bytes + min_headroom {min_headroom} > memory_limit {limit} (run `omnipack plan` for the breakdown)"
    )]
    TierDoesNotFit {
        tier: String,
        peak: u64,
        min_headroom: u64,
        limit: u64,
    },
    /// No tier or no bundle.
    #[error("nothing to build: the plan has no tier or no bundle")]
    Empty,
    /// Past one of the App Store's limits.
    #[error("{0}")]
    AppStore(String),
    /// The plan's root folder is not usable.
    #[error(
        "the plan's root `{root}` (the manifest's folder, relative to the folder omnipack runs in) is not a folder here: {source}"
    )]
    Root {
        root: String,
        source: std::io::Error,
    },
}

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The plan cannot be built.
    #[error(transparent)]
    Plan(#[from] UnbuildablePlan),
    /// The output folder is locked or unusable.
    #[error(transparent)]
    Output(#[from] OutputError),
    /// An input file is missing or unreadable.
    #[error("{path}: {source}")]
    Input {
        path: String,
        source: std::io::Error,
    },
    /// I/O on a named path (the cache, the output tree).
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// The stage graph is unusable.
    #[error(transparent)]
    Graph(#[from] GraphError),
    /// One or more stages failed.
    #[error("{} failed: {}", omnipack_manifest::counted(.0.iter().filter(|f| matches!(f, StageFailure::Failed { .. })).count(), "stage"), .0.iter().filter(|f| matches!(f, StageFailure::Failed { .. })).map(StageFailure::stage).collect::<Vec<_>>().join(", "))]
    Stages(Vec<StageFailure>),
    /// A bundle of the plan has no package stage (a plan edited by hand).
    #[error(
        "bundle `{bundle}` is in the plan but no stage packaged it (is the plan edited by hand?)"
    )]
    NotPackaged { bundle: String },
    /// The remote cache is required and unavailable.
    #[error("{0} (required by --require-cache or --only)")]
    Remote(omnipack_remote::Unavailable),
    /// `--only` names a stage the plan does not have.
    #[error("--only {stage}: the plan has no such stage (stages: {known})")]
    UnknownStage { stage: String, known: String },
    /// The summary could not be encoded.
    #[error("cannot encode the summary: {0}")]
    Summary(serde_json::Error),
    /// The summary's schema has a field the Swift generator cannot express.
    #[error("cannot generate the summary's Swift types: {0}")]
    SwiftTypes(String),
}

/// How a stage was satisfied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageReport {
    /// Stage id.
    pub stage: String,
    /// True when its output came from the cache (or, for a selection, needed no work).
    pub cached: bool,
}
