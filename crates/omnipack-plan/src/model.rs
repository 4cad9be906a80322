//! The Plan: plain serialisable data computed entirely up front from a manifest.
//! `omnipack plan --format json` prints it; `omnipack build` executes its stages in a loop,
//! and needs nothing else: every stage carries the exact parameters it runs with
//! ([`crate::stage`]), and the plan carries the folder its paths are relative to, the input
//! files and the manifest digest.

use serde::{Deserialize, Serialize};

use crate::app_store::AppStoreUsage;
use crate::stage::Stage;

use omnipack_manifest::{Format, ResolvedComponent};
use omnipack_summary::{InputFile, MemoryBreakdown, PackageInfo, QuantizationInfo, TierEntry};

/// The version of the plan format this omnipack writes and runs.
pub const PLAN_VERSION: u32 = 1;

/// Everything a build will do and every tier's budget, computed without heavy work.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Version of the plan format ([`PLAN_VERSION`]); a build refuses any other.
    pub plan_version: u32,
    /// Package identity.
    pub package: PackageInfo,
    /// The folder every path of the plan is relative to: the manifest's folder as it was given
    /// on the command line (so relative to the folder omnipack ran in; `.` for that folder).
    /// Run a build of a saved plan from that same folder.
    pub root: String,
    /// sha256 of the merged manifest (its `extends` chain included) as canonical JSON: the
    /// summary's `manifest_sha256`.
    pub manifest_sha256: String,
    /// The manifest files the plan was made from (the `extends` chain), relative to `root`,
    /// with their sha256 when planned: the summary lists them in `inputs[]`. A build does not
    /// read them again.
    pub manifests: Vec<InputFile>,
    /// Every file or folder the build reads, relative to `root`, sorted: each component's
    /// sources (shards, `source.config`, exporter inputs, files). A folder stands for every
    /// file under it, listed when the build digests its inputs.
    pub inputs: Vec<String>,
    /// Components with defaults applied, in manifest order.
    pub components: Vec<ComponentPlan>,
    /// Every bundle the build produces, sorted by id.
    pub bundles: Vec<BundlePlan>,
    /// Every tier, in manifest order: chosen variants, load order, memory, fits.
    pub tiers: Vec<TierPlan>,
    /// Stages in a valid execution order (every stage after its dependencies).
    pub stages: Vec<Stage>,
    /// Warnings found while planning (essential bundles used by some tiers only, pack limits, ...).
    pub warnings: Vec<PlanWarning>,
    /// Asset packs and bytes of the whole release (every tier, whatever the selection), as
    /// checked against the App Store's limits.
    pub app_store: AppStoreUsage,
}

/// A component and what the plan knows of its source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComponentPlan {
    /// The component with every default applied.
    pub component: ResolvedComponent,
    /// Parameters (elements of the selected source tensors); 0 when unknown before export.
    pub parameters: u64,
    /// Where sizes come from: `safetensors_headers`, `declared_size`, `resident_memory`,
    /// `file_sizes` (a `files` source) or `unknown` (an exporter that declares nothing).
    pub size_source: String,
    /// For a source checkpoint that is already quantized: its format, for example
    /// `int4 g64` (or `mixed (int4 g64, int8 g64)`). `parameters` counts its quantized
    /// weights at their true shape. Absent for a float source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_format: Option<String>,
}

/// One bundle: a component in one variant (and, for `{tier}` exporters, one tier).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BundlePlan {
    /// `<component>-<format>[-g<group>][-<tier>]`; `<component>[-<tier>]` for a `data`
    /// component.
    pub id: String,
    /// Component name.
    pub component: String,
    /// Weight format of this variant.
    pub format: Format,
    /// Group size, for grouped formats (affine and NF4).
    pub group_size: Option<u32>,
    /// For an exporter whose command uses `{tier}`: the tier it was exported for.
    pub tier: Option<String>,
    /// Download policy after planning (an `essential` bundle used by only some tiers is
    /// delivered `on_demand`, with a warning).
    pub delivery: omnipack_manifest::Delivery,
    /// Memory policy.
    pub residency: omnipack_manifest::Residency,
    /// How the weights are stored, as written in `bundle.json` and the summary; none for a
    /// `data` component (files shipped as they are).
    pub quantization: Option<QuantizationInfo>,
    /// Parameters of the component.
    pub parameters: u64,
    /// Planned tensor data bytes (exact for native variants); 0 when unknown before export.
    pub weights_bytes: u64,
    /// Planned resident bytes by the runtime's memory model.
    pub resident_bytes: u64,
    /// Tiers that use this bundle, in manifest order.
    pub used_by: Vec<String>,
    /// For a component whose source is already quantized: `pass_through` (the variant is the
    /// source's format: its tensors are copied byte for byte), `dequantize` (a float variant,
    /// or tensors kept out of quantization: dequantized exactly as MLX does) or `requantize`
    /// (another quantized format: dequantized and quantized again, with
    /// `quantization.requantize: true`). Absent for a float source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_treatment: Option<String>,
}

/// A tier's plan. `entry` is exactly the summary's `tiers[]` element.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TierPlan {
    /// Name, limits, bundles in load order, KV cache, memory breakdown and `fits`.
    #[serde(flatten)]
    pub entry: TierEntry,
    /// `min_headroom` of the tier, in bytes.
    pub min_headroom_bytes: u64,
    /// The variant chosen for each shipped component.
    pub choices: Vec<VariantChoice>,
    /// The sum of the chosen `preference_rank`s: how many steps down the preference lists
    /// the tier takes (README, "Best fit: the documented order"). For a tier that does not
    /// fit, that of its smallest plan.
    #[serde(default)]
    pub rank_sum: usize,
    /// For a tier that fits, each component that stepped down from its first preference, in
    /// manifest order: the single step back up (every other choice unchanged) and by how much
    /// it would break the limit. Empty when every component has its first preference.
    #[serde(default)]
    pub step_ups: Vec<StepUpCost>,
}

/// One step back up a component's preference list that the tier cannot afford.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepUpCost {
    /// Component name.
    pub component: String,
    /// Format chosen.
    pub format: Format,
    /// The format one rank better, which does not fit.
    pub step_up_format: Format,
    /// Peak bytes with `step_up_format`, every other choice unchanged.
    pub peak_bytes: u64,
    /// Bytes by which `peak_bytes + min_headroom` would exceed `memory_limit` (always > 0).
    pub over_bytes: u64,
}

impl TierPlan {
    /// The memory breakdown.
    pub fn memory(&self) -> &MemoryBreakdown {
        &self.entry.memory
    }
}

/// The variant a tier uses for one component.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VariantChoice {
    /// Component name.
    pub component: String,
    /// Bundle id used.
    pub bundle: String,
    /// Format chosen.
    pub format: Format,
    /// Position of the format in the component's preference list (0 = best).
    pub preference_rank: usize,
    /// Activation bytes the component counts on this tier.
    pub activation_bytes: u64,
    /// Where they come from: `manifest` (`activation_memory`), `default` (the decode-step
    /// default for the tier's context, with a warning) or `none`.
    pub activation_source: String,
}

/// A planning warning, located in the manifest when possible.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanWarning {
    /// What is wrong and what to do.
    pub message: String,
    /// Manifest path of the offending value, for example `components[1].delivery`.
    pub path: Option<String>,
}

impl Plan {
    /// The component plan named `name`.
    pub fn component(&self, name: &str) -> Option<&ComponentPlan> {
        self.components.iter().find(|c| c.component.name == name)
    }

    /// The bundle named `id`.
    pub fn bundle(&self, id: &str) -> Option<&BundlePlan> {
        self.bundles.iter().find(|b| b.id == id)
    }

    /// The resolved component named `name`.
    pub fn resolved_component(&self, name: &str) -> Option<&ResolvedComponent> {
        self.component(name).map(|c| &c.component)
    }

    /// The stage with id `id`.
    pub fn stage(&self, id: &str) -> Option<&Stage> {
        self.stages.iter().find(|s| s.id == id)
    }
}
