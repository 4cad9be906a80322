//! Resolution of a manifest into a [`Plan`]: the memory model per device tier, the best-fit
//! choice of quantization, and the stage graph. Pure data; nothing heavy is done here.
//!
//! * [`plan`]: a loaded manifest to a [`Plan`] (or a [`PlanFailure`] with located diagnostics
//!   and the partial plan).
//! * [`with_measured_sizes`]: the same plan re-budgeted from the sizes a build produced.
//! * [`memory`]: the formulas of DESIGN section 4.

pub mod diag;
pub mod measured;
pub mod memory;
pub mod model;
pub mod planner;
pub mod search;
pub mod sizing;

pub use diag::{PlanDiagnostic, PlanFailure};
pub use measured::with_measured_sizes;
pub use model::*;
pub use planner::{bundle_id, export_stage_id, plan, plan_with_sizers, quantization_info};
pub use sizing::{ComponentSizer, SizeSource};
