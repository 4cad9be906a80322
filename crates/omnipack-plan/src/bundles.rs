//! The bundles a plan builds: one per component variant some tier chose (per tier for `{tier}`
//! exporters), with the delivery decided over every tier.

use std::collections::{BTreeMap, BTreeSet};

use omnipack_manifest::{
    Delivery, Format, Method, ResolvedComponent, ResolvedManifest, ResolvedSource, Role,
};
use omnipack_summary::{QuantMode, QuantizationInfo};

use crate::diag::PlanDiagnostic;
use crate::model::{BundlePlan, PlanWarning};
use crate::sizing::ComponentSizer;
use crate::tier_model::{TierSearch, VariantOption};

/// The bundle id of a variant: `<component>-<format>[-g<group>][-<tier>]`.
pub fn bundle_id(
    component: &str,
    format: Format,
    group_size: Option<u32>,
    tier: Option<&str>,
) -> String {
    let mut id = format!("{component}-{format}");
    if let Some(g) = group_size {
        id.push_str(&format!("-g{g}"));
    }
    if let Some(t) = tier {
        id.push('-');
        id.push_str(t);
    }
    id
}

/// The bundle id of one of `c`'s variants: [`bundle_id`], except for a `data` component
/// (files shipped as they are, in one variant), whose id has no format: `<component>[-<tier>]`.
pub fn component_bundle_id(
    c: &ResolvedComponent,
    format: Format,
    group_size: Option<u32>,
    tier: Option<&str>,
) -> String {
    if c.role != Role::Data {
        return bundle_id(&c.name, format, group_size, tier);
    }
    match tier {
        Some(t) => format!("{}-{t}", c.name),
        None => c.name.clone(),
    }
}

/// How a variant is written in `bundle.json` and the summary; `method` is the method
/// omnipack quantizes with (`None` for weights it does not quantize: exporter outputs), and is
/// written for MLX affine formats only.
pub fn quantization_info(
    format: Format,
    group_size: Option<u32>,
    method: Option<Method>,
) -> QuantizationInfo {
    let (bits, mode) = match format {
        Format::Nf4 => (Some(4), Some(QuantMode::Nf4)),
        f => match f.affine_bits() {
            Some(b) => (Some(b), Some(QuantMode::Affine)),
            None => (None, None),
        },
    };
    QuantizationInfo {
        format,
        group_size: if format.is_grouped() {
            group_size
        } else {
            None
        },
        bits,
        mode,
        method: method.filter(|_| format.affine_bits().is_some()),
        coreml: None,
    }
}

/// How a Core ML variant is written in `bundle.json` and the summary: its format, block size
/// and bits, mode `linear_symmetric` for int8 and int4, and the `coreml` record.
pub fn coreml_quantization_info(plan: &omnipack_coreml::CompressionPlan) -> QuantizationInfo {
    let bits = match plan.format {
        omnipack_coreml::CompressionFormat::F16 => None,
        omnipack_coreml::CompressionFormat::Int8 => Some(8),
        omnipack_coreml::CompressionFormat::Int4 { .. } => Some(4),
    };
    let format = match plan.format {
        omnipack_coreml::CompressionFormat::F16 => Format::F16,
        omnipack_coreml::CompressionFormat::Int8 => Format::Int8,
        omnipack_coreml::CompressionFormat::Int4 { .. } => Format::Int4,
    };
    QuantizationInfo {
        format,
        group_size: plan.block_size,
        bits,
        mode: bits.map(|_| QuantMode::LinearSymmetric),
        method: None,
        coreml: Some(omnipack_summary::CoreMlCompression {
            format,
            block_size: plan.block_size,
            operation: plan.op.map(|o| o.name().to_string()),
            deployment_target: deployment_target_text(plan.deployment_target),
            compressed_weights: plan.compressed_count() as u64,
            weights: plan.weights.len() as u64,
        }),
    }
}

/// `iOS 16`, or the specification version when omnipack does not know it.
pub fn deployment_target_text(t: omnipack_coreml::DeploymentTarget) -> String {
    t.ios()
        .map(str::to_string)
        .unwrap_or_else(|| format!("specification version {}", t.specification_version))
}

/// A bundle some tier uses, before planning its delivery.
#[derive(Debug)]
pub(crate) struct ChosenBundle {
    /// Index of the component in the manifest.
    pub component: usize,
    pub option: VariantOption,
    /// For `{tier}` exporters: the tier exported for.
    pub tier: Option<String>,
    /// Selected tiers using it, in manifest order.
    pub used_by: Vec<String>,
    /// Every tier using it, in manifest order (for the delivery).
    pub used_by_all: Vec<String>,
}

/// The bundles every tier chose, by id, and per tier its components' (index, bundle id, rank).
pub(crate) struct ChosenBundles {
    pub by_id: BTreeMap<String, ChosenBundle>,
    pub per_tier: Vec<Vec<(usize, String, usize)>>,
}

/// The bundles of every tier's chosen variants (`used_by` counts the `selected` tiers only).
pub(crate) fn choose(
    m: &ResolvedManifest,
    tiers: &[TierSearch],
    selected: &[usize],
) -> ChosenBundles {
    let mut by_id: BTreeMap<String, ChosenBundle> = BTreeMap::new();
    let mut per_tier = Vec::new();
    for (ti, r) in tiers.iter().enumerate() {
        let tier = &m.tiers[ti];
        let mut ids = Vec::new();
        for (tc, &rank) in r.model.comps.iter().zip(&r.outcome.ranks) {
            let c = &m.components[tc.index];
            let o = &tc.options[rank];
            let per_tier = c.source.is_per_tier().then_some(tier.name.as_str());
            let id = component_bundle_id(c, o.format, o.group_size, per_tier);
            let acc = by_id.entry(id.clone()).or_insert_with(|| ChosenBundle {
                component: tc.index,
                option: o.clone(),
                tier: per_tier.map(str::to_string),
                used_by: Vec::new(),
                used_by_all: Vec::new(),
            });
            acc.used_by_all.push(tier.name.clone());
            if selected.contains(&ti) {
                acc.used_by.push(tier.name.clone());
            }
            ids.push((tc.index, id, rank));
        }
        per_tier.push(ids);
    }
    ChosenBundles { by_id, per_tier }
}

/// An exporter whose command passes `{format}` or `{group_size}` (but not `{tier}`) runs once,
/// so the tiers must agree on its variant.
pub(crate) fn check_variant_exporters(
    m: &ResolvedManifest,
    chosen: &ChosenBundles,
) -> Vec<PlanDiagnostic> {
    let mut diagnostics = Vec::new();
    for (i, c) in m.components.iter().enumerate() {
        if let ResolvedSource::Command { run, .. } = &c.source
            && !c.source.is_per_tier()
            && run
                .iter()
                .any(|a| a.contains("{format}") || a.contains("{group_size}"))
        {
            let variants: BTreeSet<&str> = chosen
                .by_id
                .iter()
                .filter(|(_, b)| b.component == i)
                .map(|(id, _)| id.as_str())
                .collect();
            if variants.len() > 1 {
                diagnostics.push(
                    PlanDiagnostic::new(
                        Some(format!("components[{i}].source.command.run")),
                        format!(
                            "exporter `{}` passes `{{format}}`/`{{group_size}}` but the tiers use several variants ({}): one export cannot produce them all",
                            c.name,
                            variants.into_iter().collect::<Vec<_>>().join(", ")
                        ),
                    )
                    .with_help("add `{tier}` to the command so each tier gets its own export, or give the component a single format"),
                );
            }
        }
    }
    diagnostics
}

/// The plans of the bundles the selected tiers use, sorted by id. An `essential` bundle that
/// some tier does not use is delivered `on_demand` instead, with a warning.
pub(crate) fn bundle_plans(
    m: &ResolvedManifest,
    sizers: &[ComponentSizer],
    chosen: &ChosenBundles,
    warnings: &mut Vec<PlanWarning>,
) -> Vec<BundlePlan> {
    let all_tiers: Vec<String> = m.tiers.iter().map(|t| t.name.clone()).collect();
    let mut plans = Vec::new();
    for (id, acc) in &chosen.by_id {
        if acc.used_by.is_empty() {
            continue;
        }
        let c = &m.components[acc.component];
        let mut delivery = c.delivery;
        if delivery == Delivery::Essential && acc.used_by_all.len() < all_tiers.len() {
            delivery = Delivery::OnDemand;
            let missing: Vec<&str> = all_tiers
                .iter()
                .filter(|t| !acc.used_by_all.contains(t))
                .map(String::as_str)
                .collect();
            warnings.push(PlanWarning {
                message: format!(
                    "bundle `{id}` is used by tier(s) {} but not {}: delivered `essential`, every device would download it; it is delivered `on_demand` instead (request it at launch on the tiers that use it)",
                    acc.used_by_all.join(", "),
                    missing.join(", ")
                ),
                path: Some(format!("components[{}].delivery", acc.component)),
            });
        }
        let source_treatment = sizers[acc.component]
            .source_treatment(
                acc.option.format,
                acc.option.group_size.unwrap_or(c.quantization.group_size),
            )
            .map(str::to_string);
        plans.push(BundlePlan {
            id: id.clone(),
            component: c.name.clone(),
            format: acc.option.format,
            group_size: acc.option.group_size,
            tier: acc.tier.clone(),
            delivery,
            residency: c.residency,
            quantization: (c.role != Role::Data).then(|| {
                match sizers[acc.component].coreml_plan(
                    acc.option.format,
                    acc.option.group_size.unwrap_or(c.quantization.group_size),
                ) {
                    Some(Ok(plan)) => coreml_quantization_info(&plan),
                    // The method is recorded where omnipack quantizes: not for exporter outputs,
                    // nor for a quantized source whose tensors pass through byte for byte.
                    _ => quantization_info(
                        acc.option.format,
                        acc.option.group_size,
                        (matches!(c.source, ResolvedSource::Safetensors { .. })
                            && source_treatment.as_deref() != Some("pass_through"))
                        .then_some(c.quantization.method),
                    ),
                }
            }),
            parameters: sizers[acc.component].parameters,
            weights_bytes: acc.option.weights_bytes,
            resident_bytes: acc.option.resident_bytes,
            used_by: acc.used_by.clone(),
            source_treatment,
        });
    }
    plans
}

/// What the whole release (every tier, whatever the selection) puts in the app record.
pub(crate) fn app_store_usage(chosen: &ChosenBundles) -> crate::app_store::AppStoreUsage {
    crate::app_store::AppStoreUsage {
        asset_packs: chosen.by_id.len(),
        bytes: chosen
            .by_id
            .values()
            .fold(0u64, |a, b| a.saturating_add(b.option.weights_bytes)),
    }
}
