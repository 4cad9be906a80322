//! The build pipeline of omnipack: runs a [`omnipack_plan::Plan`]'s stages in parallel with a
//! content-addressed cache, runs exporters, writes deterministic bundle zips and asset packs,
//! writes `mobile_packager_summary.json` last, and swaps the finished tree into the output
//! folder. Also `verify` and bundle/summary inspection. Never prints: progress goes through
//! [`Progress`].

pub mod bundle_zip;
pub mod cache;
pub mod digest_memo;
pub mod executor;
pub mod exporter;
pub mod output;
pub mod pipeline;
pub mod progress;
pub mod sidecars;
pub mod stages;
pub mod verify;

pub use digest_memo::Clock;
pub use omnipack_remote::{ConfigError as RemoteConfigError, RemoteCache};
pub use pipeline::{
    BuildError, BuildOptions, BuildReport, RemoteReport, SliceReport, StageFailure, StageReport,
    UnbuildablePlan, build, build_only,
};
pub use progress::{Event, NoProgress, Progress};
pub use stages::StageError;
