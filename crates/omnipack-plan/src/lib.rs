//! Resolution of a manifest into a [`Plan`]: the memory model per device tier, the best-fit
//! choice of quantization, and the stage graph with every stage's parameters. Pure data;
//! nothing heavy is done here.
//!
//! * [`plan`]: a loaded manifest to a [`Plan`] (or a [`PlanFailure`] with located diagnostics
//!   and the partial plan); the steps are in [`planner`].
//! * [`stage`]: what each stage of a plan runs with.
//! * [`with_measured_sizes`]: the same plan re-budgeted from the sizes a build produced.
//! * [`memory`]: the memory model (README, "Memory model").
//! * [`app_store`]: Apple's asset-pack limits.

pub mod app_store;
mod best_fit;
mod bundles;
mod components;
pub mod diag;
pub mod measured;
pub mod memory;
pub mod model;
pub mod planner;
pub mod search;
pub mod sizing;
pub mod stage;
mod stages;
mod suggestions;
mod tier_model;
mod tiers;

pub use app_store::AppStoreUsage;
pub use bundles::{bundle_id, coreml_quantization_info, deployment_target_text, quantization_info};
pub use diag::{PlanDiagnostic, PlanFailure};
pub use measured::with_measured_sizes;
pub use model::*;
pub use planner::{plan, plan_with_sizers};
pub use sizing::{ComponentSizer, SizeSource};
pub use stage::*;
pub use stages::{
    asset_pack_id, config_json, coreml_feature, coreml_io, decode_step_contract,
    decode_step_sidecars, export_stage_id, fill_placeholders, is_coreml_path,
};
