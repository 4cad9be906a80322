//! The plan of each selected tier: its chosen variants, load order, KV cache and memory, and
//! what is worth saying about it (a tier that does not fit, lazy components larger than the
//! headroom), and what the chosen plan trades (its rank sum, the step ups that do not fit).

use std::collections::BTreeMap;

use omnipack_manifest::{Paging, ResolvedManifest, format_bytes};
use omnipack_summary::{KvCacheInfo, MemoryBreakdown, PagingInfo, TierEntry};

use crate::bundles::ChosenBundles;
use crate::diag::PlanDiagnostic;
use crate::memory;
use crate::model::{PlanWarning, StepUpCost, TierPlan, VariantChoice};
use crate::sizing::ComponentSizer;
use crate::suggestions::does_not_fit;
use crate::tier_model::{TierModel, TierSearch};

/// The plans of the `selected` tiers, with their warnings and the diagnostics of the tiers
/// that do not fit.
pub(crate) fn tier_plans(
    m: &ResolvedManifest,
    sizers: &[ComponentSizer],
    searched: &[TierSearch],
    selected: &[usize],
    chosen: &ChosenBundles,
    warnings: &mut Vec<PlanWarning>,
    diagnostics: &mut Vec<PlanDiagnostic>,
) -> Vec<TierPlan> {
    let mut plans = Vec::new();
    for &ti in selected {
        let tier = &m.tiers[ti];
        let r = &searched[ti];
        let memory = r.model.breakdown(&r.outcome.ranks);
        let ids = &chosen.per_tier[ti];
        if !r.outcome.fits {
            diagnostics.push(does_not_fit(
                m,
                sizers,
                ti,
                &r.model,
                &r.outcome.ranks,
                &memory,
            ));
        } else {
            warnings.extend(lazy_warnings(m, ti, &r.model, &r.outcome.ranks, &memory));
        }
        plans.push(TierPlan {
            entry: TierEntry {
                name: tier.name.clone(),
                device_memory_bytes: tier.device_memory,
                memory_limit_bytes: tier.memory_limit,
                bundles: load_order(&r.model, ids),
                kv_cache: kv_cache_info(m, &r.model),
                required_bytes: memory::required_bytes(&memory),
                memory,
                fits: r.outcome.fits,
            },
            min_headroom_bytes: tier.min_headroom,
            choices: choices(m, r, ids),
            rank_sum: r.outcome.rank_sum,
            step_ups: step_ups(m, r),
        });
    }
    warnings.extend(default_activation_warnings(m, searched, selected));
    plans
}

/// One warning per decode step that counts the default activations (no `activation_memory`),
/// with the bytes and context of each selected tier that ships it.
fn default_activation_warnings(
    m: &ResolvedManifest,
    searched: &[TierSearch],
    selected: &[usize],
) -> Vec<PlanWarning> {
    let mut per_component: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for &ti in selected {
        for tc in &searched[ti].model.comps {
            if tc.activation_source == memory::ActivationSource::Default {
                per_component.entry(tc.index).or_default().push(format!(
                    "{} at {} tokens on tier `{}`",
                    m.size_units.format(tc.activation_bytes),
                    tc.kv_tokens.unwrap_or(0),
                    m.tiers[ti].name
                ));
            }
        }
    }
    per_component
        .into_iter()
        .map(|(index, uses)| PlanWarning {
            message: format!(
                "component `{}` has no `activation_memory`: the plan counts the decode-step default, 4 * vocab_size + layers * (4 * heads * context + 32 * hidden_size) bytes ({}); a runtime's caches and scratch can take far more: declare what it allocates per step",
                m.components[index].name,
                uses.join(", ")
            ),
            path: Some(format!("components[{index}]")),
        })
        .collect()
}

/// Bundle ids in load order: resident (`always`) components first, then lazy ones, each in
/// manifest order.
fn load_order(model: &TierModel, ids: &[(usize, String, usize)]) -> Vec<String> {
    let mut order = Vec::new();
    for always in [true, false] {
        for (tc, (_, id, _)) in model.comps.iter().zip(ids) {
            if tc.always == always {
                order.push(id.clone());
            }
        }
    }
    order
}

/// The tier's KV cache: that of its (first) decode step.
fn kv_cache_info(m: &ResolvedManifest, model: &TierModel) -> Option<KvCacheInfo> {
    model
        .comps
        .iter()
        .find(|tc| tc.kv_tokens.is_some())
        .map(|tc| {
            let c = &m.components[tc.index];
            KvCacheInfo {
                tokens: tc.kv_tokens.unwrap_or(0),
                format: c.kv_cache.format,
                paging: c.kv_cache.paging.map(|p: Paging| PagingInfo {
                    page_len: p.page_len,
                    resident_pages: p.resident_pages,
                }),
            }
        })
}

fn choices(
    m: &ResolvedManifest,
    r: &TierSearch,
    ids: &[(usize, String, usize)],
) -> Vec<VariantChoice> {
    r.model
        .comps
        .iter()
        .zip(ids)
        .map(|(tc, (ci, id, rank))| VariantChoice {
            component: m.components[*ci].name.clone(),
            bundle: id.clone(),
            format: tc.options[*rank].format,
            preference_rank: *rank,
            activation_bytes: tc.activation_bytes,
            activation_source: tc.activation_source.as_str().to_string(),
        })
        .collect()
}

/// What one step back up costs, for each component of a fitting tier that stepped down.
fn step_ups(m: &ResolvedManifest, r: &TierSearch) -> Vec<StepUpCost> {
    r.outcome
        .step_ups
        .iter()
        .map(|u| {
            let tc = &r.model.comps[u.component];
            StepUpCost {
                component: m.components[tc.index].name.clone(),
                format: tc.options[u.rank].format,
                step_up_format: tc.options[u.rank - 1].format,
                peak_bytes: u.peak_bytes,
                over_bytes: u.over_bytes,
            }
        })
        .collect()
}

/// In a tier with several lazy components, one larger than the headroom (above
/// `min_headroom`) cannot be loaded while another is.
fn lazy_warnings(
    m: &ResolvedManifest,
    ti: usize,
    model: &TierModel,
    ranks: &[usize],
    memory: &MemoryBreakdown,
) -> Vec<PlanWarning> {
    let lazy: Vec<(usize, u64)> = model
        .comps
        .iter()
        .zip(ranks)
        .filter(|(c, _)| !c.always)
        .map(|(c, &r)| {
            (
                c.index,
                c.options[r]
                    .resident_bytes
                    .saturating_add(c.activation_bytes),
            )
        })
        .collect();
    if lazy.len() < 2 {
        return Vec::new();
    }
    let headroom = memory
        .headroom_bytes
        .saturating_sub(memory.min_headroom_bytes as i64);
    lazy.into_iter()
        .filter(|&(_, cost)| (cost as i128) > headroom as i128)
        .map(|(index, cost)| PlanWarning {
            message: format!(
                "lazy component `{}` takes {} when loaded, more than tier `{}`'s headroom of {}: unload the other lazy component before loading it (lazy components are budgeted one at a time)",
                m.components[index].name,
                format_bytes(cost),
                m.tiers[ti].name,
                omnipack_manifest::format_signed_bytes(headroom)
            ),
            path: Some(format!("components[{index}].residency")),
        })
        .collect()
}
