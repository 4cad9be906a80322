//! Resolution of a loaded manifest into a [`Plan`]: sizes, the best-fit choice per tier,
//! bundles, stages and warnings.
//!
//! # Best-fit order
//!
//! Each component a tier ships has a preference list (its `quantization.format`, or the
//! tier's override), best quality first; rank 0 is the best. The planner enumerates the
//! combinations of ranks ordered first by the **sum of ranks** (fewest steps down from the
//! preferred formats), then lexicographically by the rank vector in manifest component order
//! (on a tie, earlier components keep the better quality), and picks the first that fits.
//! If the combination of each component's smallest variant does not fit, nothing does: the
//! tier fails with that smallest plan's breakdown and suggestions.

use std::collections::{BTreeMap, BTreeSet};

use omnipack_manifest::{
    ComputeUnits, Delivery, Format, KvFormat, LoadedManifest, Paging, Residency, ResolvedComponent,
    ResolvedManifest, ResolvedSource, ResolvedTier, Role, Runtime, format_bytes,
};
use omnipack_summary::{
    KvCacheInfo, MemoryBreakdown, PackageInfo, PagingInfo, QuantizationInfo, TierEntry,
};

use crate::diag::{PlanDiagnostic, PlanFailure};
use crate::memory::{self, ComponentLoad};
use crate::model::*;
use crate::sizing::{ComponentSizer, SizeSource};

/// Apple's limit on asset packs per app record.
pub const MAX_ASSET_PACKS: usize = 100;
/// Apple's limit on the total size of an app record's asset packs (200 GB).
pub const MAX_ASSET_BYTES: u64 = 200_000_000_000;
/// Beyond this many combinations per tier the search stops at the smallest plan.
pub const MAX_COMBINATIONS: u64 = 2_000_000;

/// Plans `loaded` for the tiers named in `only_tiers` (every tier when empty).
///
/// Every tier is resolved (so a bundle's delivery does not depend on the selection); the
/// plan lists the selected tiers and the bundles and stages they need.
pub fn plan(loaded: &LoadedManifest, only_tiers: &[String]) -> Result<Plan, PlanFailure> {
    let m = &loaded.resolved;
    let mut sizers = Vec::with_capacity(m.components.len());
    let mut errors = Vec::new();
    check_shape(m, only_tiers)?;
    for (i, c) in m.components.iter().enumerate() {
        match ComponentSizer::new(c, &loaded.dir) {
            Ok(s) => sizers.push(s),
            Err(e) => {
                let mut d = PlanDiagnostic::new(
                    Some(format!("components[{i}].{}", e.field)),
                    format!("component `{}`: {}", c.name, e.message),
                );
                d.help.extend(e.help);
                errors.push(d);
                sizers.push(ComponentSizer::fixed(0, SizeSource::Unknown, 0));
            }
        }
    }
    if !errors.is_empty() {
        return Err(PlanFailure {
            diagnostics: errors,
            plan: None,
        });
    }
    plan_with_sizers(m, &sizers, only_tiers)
}

fn check_shape(m: &ResolvedManifest, only_tiers: &[String]) -> Result<(), PlanFailure> {
    if m.tiers.is_empty() {
        return Err(PlanFailure::one(
            PlanDiagnostic::new(None, "the manifest has no `tiers`: planning needs at least one tier")
                .with_help("add a `tiers:` list (name, device_memory, memory_limit), or plan a manifest that `extends` this one"),
        ));
    }
    if m.components.is_empty() {
        return Err(PlanFailure::one(
            PlanDiagnostic::new(
                None,
                "the manifest has no `components`: planning needs at least one component",
            )
            .with_help("add a `components:` list, or plan a manifest that `extends` this one"),
        ));
    }
    let valid: Vec<&str> = m.tiers.iter().map(|t| t.name.as_str()).collect();
    let unknown: Vec<PlanDiagnostic> = only_tiers
        .iter()
        .filter(|t| !valid.contains(&t.as_str()))
        .map(|t| {
            PlanDiagnostic::new(None, format!("unknown tier `{t}` given with --tier"))
                .with_help(format!("valid tiers: {}", valid.join(", ")))
        })
        .collect();
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(PlanFailure {
            diagnostics: unknown,
            plan: None,
        })
    }
}

/// One variant a tier may use for one component.
#[derive(Debug, Clone)]
struct VariantOption {
    format: Format,
    group_size: Option<u32>,
    weights_bytes: u64,
    resident_bytes: u64,
}

/// One component as a tier sees it.
#[derive(Debug, Clone)]
struct TierComponent {
    index: usize,
    always: bool,
    activation_bytes: u64,
    kv_cache_bytes: u64,
    kv_tokens: Option<u64>,
    options: Vec<VariantOption>,
}

/// A tier ready for the search.
#[derive(Debug, Clone)]
struct TierModel {
    runtime_overhead: u64,
    memory_limit: u64,
    min_headroom: u64,
    comps: Vec<TierComponent>,
}

impl TierModel {
    fn loads(&self, ranks: &[usize]) -> Vec<ComponentLoad> {
        self.comps
            .iter()
            .zip(ranks)
            .map(|(c, &r)| ComponentLoad {
                always: c.always,
                resident_bytes: c.options[r].resident_bytes,
                activation_bytes: c.activation_bytes,
                kv_cache_bytes: c.kv_cache_bytes,
            })
            .collect()
    }

    fn breakdown(&self, ranks: &[usize]) -> MemoryBreakdown {
        memory::breakdown(
            self.runtime_overhead,
            self.memory_limit,
            self.min_headroom,
            &self.loads(ranks),
        )
    }

    fn fits(&self, ranks: &[usize]) -> bool {
        memory::fits(&self.breakdown(ranks), self.memory_limit)
    }

    /// Each component's smallest variant (the first among equals): the smallest peak.
    fn smallest(&self) -> Vec<usize> {
        self.comps
            .iter()
            .map(|c| {
                let mut best = 0;
                for (r, o) in c.options.iter().enumerate() {
                    if o.resident_bytes < c.options[best].resident_bytes {
                        best = r;
                    }
                }
                best
            })
            .collect()
    }
}

/// The result of the search for one tier.
#[derive(Debug, Clone)]
struct TierOutcome {
    ranks: Vec<usize>,
    fits: bool,
    /// True when the search budget ran out before a better fitting combination was found.
    truncated: bool,
}

/// Enumerates rank vectors by increasing sum, then lexicographically; returns the first that
/// satisfies `accept`, with the number of combinations tried.
fn search(
    lens: &[usize],
    budget: u64,
    accept: &mut dyn FnMut(&[usize]) -> bool,
) -> (Option<Vec<usize>>, bool) {
    fn rec(
        lens: &[usize],
        pos: usize,
        remaining: usize,
        cur: &mut Vec<usize>,
        tried: &mut u64,
        budget: u64,
        accept: &mut dyn FnMut(&[usize]) -> bool,
    ) -> Option<bool> {
        if pos == lens.len() {
            if remaining != 0 {
                return Some(false);
            }
            *tried += 1;
            if *tried > budget {
                return None;
            }
            return Some(accept(cur));
        }
        // Ranks the positions after this one can still absorb.
        let tail: usize = lens[pos + 1..].iter().map(|l| l - 1).sum();
        let lo = remaining.saturating_sub(tail);
        let hi = remaining.min(lens[pos] - 1);
        for r in lo..=hi {
            cur.push(r);
            match rec(lens, pos + 1, remaining - r, cur, tried, budget, accept) {
                Some(true) => return Some(true),
                Some(false) => {}
                None => {
                    cur.pop();
                    return None;
                }
            }
            cur.pop();
        }
        Some(false)
    }
    let max_sum: usize = lens.iter().map(|l| l - 1).sum();
    let mut tried = 0u64;
    let mut cur = Vec::with_capacity(lens.len());
    for s in 0..=max_sum {
        match rec(lens, 0, s, &mut cur, &mut tried, budget, accept) {
            Some(true) => return (Some(cur), false),
            Some(false) => {}
            None => return (None, true),
        }
    }
    (None, false)
}

fn best_fit(model: &TierModel) -> TierOutcome {
    let smallest = model.smallest();
    if !model.fits(&smallest) {
        return TierOutcome {
            ranks: smallest,
            fits: false,
            truncated: false,
        };
    }
    let lens: Vec<usize> = model.comps.iter().map(|c| c.options.len()).collect();
    match search(&lens, MAX_COMBINATIONS, &mut |r| model.fits(r)) {
        (Some(ranks), _) => TierOutcome {
            ranks,
            fits: true,
            truncated: false,
        },
        (None, truncated) => TierOutcome {
            ranks: smallest,
            fits: true,
            truncated,
        },
    }
}

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

/// How a variant is written in `bundle.json` and the summary.
pub fn quantization_info(format: Format, group_size: Option<u32>) -> QuantizationInfo {
    let (bits, mode) = match format {
        Format::Nf4 => (Some(4), Some(Format::Nf4.as_str().to_string())),
        f => match f.affine_bits() {
            Some(b) => (Some(b), Some("affine".to_string())),
            None => (None, None),
        },
    };
    QuantizationInfo {
        format: format.as_str().to_string(),
        group_size: if format.is_grouped() {
            group_size
        } else {
            None
        },
        bits,
        mode,
    }
}

/// Builds the tier's search model; errors are located diagnostics.
fn tier_model(
    m: &ResolvedManifest,
    sizers: &[ComponentSizer],
    tier: &ResolvedTier,
) -> Result<TierModel, Vec<PlanDiagnostic>> {
    let mut errors = Vec::new();
    let mut comps = Vec::new();
    for name in &tier.components {
        let Some(index) = m.components.iter().position(|c| &c.name == name) else {
            continue;
        };
        let c = &m.components[index];
        let sizer = &sizers[index];
        let (kv_bytes, kv_tokens) = match kv_for(c, tier, index) {
            Ok(v) => v,
            Err(d) => {
                errors.push(d);
                continue;
            }
        };
        let tq = c.quantization.for_tier(&tier.name);
        let mut options = Vec::new();
        for &format in &tq.formats {
            let group = format.is_grouped().then_some(tq.group_size);
            match sizer.weights_bytes(format, tq.group_size) {
                Ok(w) => options.push(VariantOption {
                    format,
                    group_size: group,
                    weights_bytes: w,
                    resident_bytes: memory::resident_weight_bytes(c, sizer.parameters, w),
                }),
                Err(e) => errors.push(PlanDiagnostic::new(
                    Some(format!("components[{index}].{}", e.field)),
                    format!("component `{}`: {}", c.name, e.message),
                )),
            }
        }
        if options.is_empty() {
            continue;
        }
        comps.push(TierComponent {
            index,
            always: c.residency == Residency::Always,
            activation_bytes: memory::activation_bytes(c),
            kv_cache_bytes: kv_bytes,
            kv_tokens,
            options,
        });
    }
    if errors.is_empty() {
        Ok(TierModel {
            runtime_overhead: m.runtime_overhead,
            memory_limit: tier.memory_limit,
            min_headroom: tier.min_headroom,
            comps,
        })
    } else {
        Err(errors)
    }
}

/// KV bytes and tokens of `c` on `tier` (0 and `None` for non decode steps).
fn kv_for(
    c: &ResolvedComponent,
    tier: &ResolvedTier,
    index: usize,
) -> Result<(u64, Option<u64>), PlanDiagnostic> {
    if c.role != Role::TextDecodeStep {
        return Ok((0, None));
    }
    if c.architecture.is_none() {
        return Err(PlanDiagnostic::new(
            Some(format!("components[{index}]")),
            format!("text decode step `{}` has no `architecture`: its KV cache and activations cannot be sized", c.name),
        )
        .with_help("add `architecture: { layers, kv_heads, kv_head_dim, hidden_size, vocab_size }`"));
    }
    if c.runtime == Runtime::Mlc && c.kv_cache.format != KvFormat::F16 {
        return Err(PlanDiagnostic::new(
            Some(format!("components[{index}].kv_cache.format")),
            format!("component `{}` runs on MLC, which keeps an f16 paged KV cache: `kv_cache.format: {}` cannot apply", c.name, c.kv_cache.format),
        )
        .with_help("use `kv_cache.format: f16` (or remove it) for runtime `mlc`"));
    }
    let Some(tokens) = memory::kv_tokens(c.max_seq_len, tier.max_seq_len, c.kv_cache.paging) else {
        return Err(PlanDiagnostic::new(
            Some(format!("components[{index}]")),
            format!("text decode step `{}` has no context length on tier `{}`: the KV cache cannot be sized", c.name, tier.name),
        )
        .with_help("set `max_seq_len` on the component or the tier, or `kv_cache.paging`"));
    };
    Ok((memory::kv_cache_bytes(c, tokens), Some(tokens)))
}

struct Resolved {
    model: TierModel,
    outcome: TierOutcome,
}

/// Plans with component sizes already known (used by [`plan`]; handy for tests).
pub fn plan_with_sizers(
    m: &ResolvedManifest,
    sizers: &[ComponentSizer],
    only_tiers: &[String],
) -> Result<Plan, PlanFailure> {
    check_shape(m, only_tiers)?;
    let mut errors = Vec::new();
    let mut resolved: Vec<Option<Resolved>> = Vec::new();
    for tier in &m.tiers {
        match tier_model(m, sizers, tier) {
            Ok(model) => {
                let outcome = best_fit(&model);
                resolved.push(Some(Resolved { model, outcome }));
            }
            Err(mut e) => {
                // Report each located error once, even when several tiers hit it.
                e.retain(|d| !errors.contains(d));
                errors.extend(e);
                resolved.push(None);
            }
        }
    }
    if !errors.is_empty() {
        return Err(PlanFailure {
            diagnostics: errors,
            plan: None,
        });
    }
    let resolved: Vec<Resolved> = resolved.into_iter().flatten().collect();
    let selected: Vec<usize> = (0..m.tiers.len())
        .filter(|&i| only_tiers.is_empty() || only_tiers.contains(&m.tiers[i].name))
        .collect();

    let mut warnings = Vec::new();
    let mut diagnostics = Vec::new();

    // Bundles: used_by over the selected tiers; delivery decided over every tier.
    struct BundleAcc {
        component: usize,
        option: VariantOption,
        tier: Option<String>,
        used_by: Vec<String>,
        used_by_all: Vec<String>,
    }
    let mut bundles: BTreeMap<String, BundleAcc> = BTreeMap::new();
    let mut tier_bundle_ids: Vec<Vec<(usize, String, usize)>> = Vec::new();
    for (ti, r) in resolved.iter().enumerate() {
        let tier = &m.tiers[ti];
        let mut ids = Vec::new();
        for (tc, &rank) in r.model.comps.iter().zip(&r.outcome.ranks) {
            let c = &m.components[tc.index];
            let o = &tc.options[rank];
            let per_tier = c.source.is_per_tier().then_some(tier.name.as_str());
            let id = bundle_id(&c.name, o.format, o.group_size, per_tier);
            let acc = bundles.entry(id.clone()).or_insert_with(|| BundleAcc {
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
        tier_bundle_ids.push(ids);
    }

    // Exporters whose command depends on the variant need one variant per export.
    for (i, c) in m.components.iter().enumerate() {
        if let ResolvedSource::Command { run, .. } = &c.source
            && !c.source.is_per_tier()
            && run
                .iter()
                .any(|a| a.contains("{format}") || a.contains("{group_size}"))
        {
            let variants: BTreeSet<&str> = bundles
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

    let all_tiers: Vec<String> = m.tiers.iter().map(|t| t.name.clone()).collect();
    let mut bundle_plans = Vec::new();
    for (id, acc) in &bundles {
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
        bundle_plans.push(BundlePlan {
            id: id.clone(),
            component: c.name.clone(),
            format: acc.option.format,
            group_size: acc.option.group_size,
            tier: acc.tier.clone(),
            delivery,
            residency: c.residency,
            quantization: quantization_info(acc.option.format, acc.option.group_size),
            parameters: sizers[acc.component].parameters,
            weights_bytes: acc.option.weights_bytes,
            resident_bytes: acc.option.resident_bytes,
            used_by: acc.used_by.clone(),
        });
    }

    // Tiers.
    let mut tier_plans = Vec::new();
    for &ti in &selected {
        let tier = &m.tiers[ti];
        let r = &resolved[ti];
        let memory = r.model.breakdown(&r.outcome.ranks);
        let fits = r.outcome.fits;
        let ids = &tier_bundle_ids[ti];
        let mut load_order: Vec<String> = Vec::new();
        for always in [true, false] {
            for (tc, (_, id, _)) in r.model.comps.iter().zip(ids) {
                if tc.always == always {
                    load_order.push(id.clone());
                }
            }
        }
        let kv_cache = r
            .model
            .comps
            .iter()
            .find(|tc| tc.kv_tokens.is_some())
            .map(|tc| {
                let c = &m.components[tc.index];
                KvCacheInfo {
                    tokens: tc.kv_tokens.unwrap_or(0),
                    format: c.kv_cache.format.as_str().to_string(),
                    paging: c.kv_cache.paging.map(|p: Paging| PagingInfo {
                        page_len: p.page_len,
                        resident_pages: p.resident_pages,
                    }),
                }
            });
        let choices = r
            .model
            .comps
            .iter()
            .zip(ids)
            .map(|(tc, (ci, id, rank))| VariantChoice {
                component: m.components[*ci].name.clone(),
                bundle: id.clone(),
                format: tc.options[*rank].format,
                preference_rank: *rank,
            })
            .collect();
        if r.outcome.truncated {
            warnings.push(PlanWarning {
                message: format!(
                    "tier `{}`: more than {MAX_COMBINATIONS} format combinations; the search stopped and uses each component's smallest variant",
                    tier.name
                ),
                path: Some(format!("tiers[{ti}]")),
            });
        }
        if !fits {
            diagnostics.push(does_not_fit(
                m,
                sizers,
                ti,
                &r.model,
                &r.outcome.ranks,
                &memory,
            ));
        } else {
            lazy_warnings(m, ti, &r.model, &r.outcome.ranks, &memory, &mut warnings);
        }
        tier_plans.push(TierPlan {
            entry: TierEntry {
                name: tier.name.clone(),
                device_memory_bytes: tier.device_memory,
                memory_limit_bytes: tier.memory_limit,
                bundles: load_order,
                kv_cache,
                memory,
                fits,
            },
            min_headroom_bytes: tier.min_headroom,
            choices,
        });
    }

    // Component-level warnings.
    let used_components: BTreeSet<&str> =
        bundle_plans.iter().map(|b| b.component.as_str()).collect();
    let mut component_plans = Vec::new();
    for (i, c) in m.components.iter().enumerate() {
        let s = &sizers[i];
        if used_components.contains(c.name.as_str()) {
            if matches!(c.source, ResolvedSource::Command { .. }) && s.source == SizeSource::Unknown
            {
                warnings.push(PlanWarning {
                    message: format!(
                        "exporter component `{}` declares neither `size` nor `resident_memory`: its weights count as 0 bytes until it is exported; declare `size:` to budget it now",
                        c.name
                    ),
                    path: Some(format!("components[{i}]")),
                });
            }
            if c.runtime == Runtime::Coreml && memory::coreml_decompresses(c.compute_units) {
                let quantized: BTreeSet<Format> = bundle_plans
                    .iter()
                    .filter(|b| b.component == c.name && (b.format.is_grouped()))
                    .map(|b| b.format)
                    .collect();
                if let Some(f) = quantized.iter().next() {
                    let lower_bound = if s.parameters == 0 && c.resident_memory.is_none() {
                        " (its parameter count is unknown before export, so the plan counts the declared size: a lower bound; set `resident_memory`)"
                    } else {
                        ""
                    };
                    warnings.push(PlanWarning {
                        message: format!(
                            "Core ML component `{}` is quantized ({f}) but runs with compute_units `{}`, which decompresses weights to f16 at load: the file shrinks, the memory does not{lower_bound}; use `compute_units: cpu_and_ne` to keep weights compressed in memory",
                            c.name,
                            // Core ML's own default is `all`.
                            c.compute_units.unwrap_or(ComputeUnits::All)
                        ),
                        path: Some(format!("components[{i}].compute_units")),
                    });
                }
            }
        }
        component_plans.push(ComponentPlan {
            component: c.clone(),
            parameters: s.parameters,
            size_source: s.source.as_str().to_string(),
        });
    }

    // Asset-pack limits of an app record: over the whole release (every tier), whatever the
    // selection, since the app record holds them all. Sizes are the bundles' weight bytes.
    let packs = bundles.len();
    let total: u64 = bundles
        .values()
        .fold(0u64, |a, b| a.saturating_add(b.option.weights_bytes));
    if packs > MAX_ASSET_PACKS {
        diagnostics.push(
            PlanDiagnostic::new(None, format!("the plan has {packs} asset packs; the App Store allows {MAX_ASSET_PACKS} per app"))
                .with_help("use fewer formats per component or fewer tiers (`omnipack plan` lists the bundles)"),
        );
    } else if packs * 5 > MAX_ASSET_PACKS * 4 {
        warnings.push(PlanWarning {
            message: format!("the plan has {packs} asset packs, over 80% of the App Store's {MAX_ASSET_PACKS} per app"),
            path: None,
        });
    }
    if total > MAX_ASSET_BYTES {
        diagnostics.push(
            PlanDiagnostic::new(None, format!("the bundles total {} ({total} bytes); the App Store allows 200 GB of asset packs per app", format_bytes(total)))
                .with_help("use smaller formats or fewer variants"),
        );
    } else if total > MAX_ASSET_BYTES / 5 * 4 {
        warnings.push(PlanWarning {
            message: format!(
                "the bundles total {} ({total} bytes), over 80% of the App Store's 200 GB per app",
                format_bytes(total)
            ),
            path: None,
        });
    }

    let stages = stages(m, &bundle_plans);
    let plan = Plan {
        package: PackageInfo {
            name: m.package.name.clone(),
            version: m.package.version.clone(),
            bundle_id: m.package.bundle_id.clone(),
        },
        components: component_plans,
        bundles: bundle_plans,
        tiers: tier_plans,
        stages,
        warnings,
    };
    if diagnostics.is_empty() {
        Ok(plan)
    } else {
        Err(PlanFailure {
            diagnostics,
            plan: Some(Box::new(plan)),
        })
    }
}

/// Export per component (per tier for `{tier}` exporters), quantize per native variant,
/// package per bundle; in a valid execution order.
fn stages(m: &ResolvedManifest, bundles: &[BundlePlan]) -> Vec<Stage> {
    let mut exports = Vec::new();
    let mut quantizes = Vec::new();
    let mut packages = Vec::new();
    for c in &m.components {
        let mine: Vec<&BundlePlan> = bundles.iter().filter(|b| b.component == c.name).collect();
        if mine.is_empty() {
            continue;
        }
        if c.source.is_per_tier() {
            let mut seen = BTreeSet::new();
            for t in &m.tiers {
                if mine
                    .iter()
                    .any(|b| b.tier.as_deref() == Some(t.name.as_str()))
                    && seen.insert(t.name.clone())
                {
                    exports.push(Stage {
                        id: export_stage_id(&c.name, Some(&t.name)),
                        kind: StageKind::Export {
                            component: c.name.clone(),
                            tier: Some(t.name.clone()),
                        },
                        depends_on: Vec::new(),
                    });
                }
            }
        } else {
            exports.push(Stage {
                id: export_stage_id(&c.name, None),
                kind: StageKind::Export {
                    component: c.name.clone(),
                    tier: None,
                },
                depends_on: Vec::new(),
            });
        }
    }
    for b in bundles {
        let Some(c) = m.components.iter().find(|c| c.name == b.component) else {
            continue;
        };
        let export = export_stage_id(&c.name, b.tier.as_deref());
        let package_dep = if matches!(c.source, ResolvedSource::Safetensors { .. }) {
            let q = format!("quantize:{}", b.id);
            quantizes.push(Stage {
                id: q.clone(),
                kind: StageKind::Quantize {
                    component: c.name.clone(),
                    bundle: b.id.clone(),
                    format: b.format,
                    group_size: b.group_size,
                },
                depends_on: vec![export],
            });
            q
        } else {
            export
        };
        packages.push(Stage {
            id: format!("package:{}", b.id),
            kind: StageKind::Package {
                bundle: b.id.clone(),
            },
            depends_on: vec![package_dep],
        });
    }
    exports
        .into_iter()
        .chain(quantizes)
        .chain(packages)
        .collect()
}

/// `export:<component>` or `export:<component>:<tier>`.
pub fn export_stage_id(component: &str, tier: Option<&str>) -> String {
    match tier {
        Some(t) => format!("export:{component}:{t}"),
        None => format!("export:{component}"),
    }
}

fn lazy_warnings(
    m: &ResolvedManifest,
    ti: usize,
    model: &TierModel,
    ranks: &[usize],
    memory: &MemoryBreakdown,
    warnings: &mut Vec<PlanWarning>,
) {
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
        return;
    }
    let headroom = memory
        .headroom_bytes
        .saturating_sub(memory.min_headroom_bytes as i64);
    for (index, cost) in lazy {
        if (cost as i128) > headroom as i128 {
            warnings.push(PlanWarning {
                message: format!(
                    "lazy component `{}` takes {} when loaded, more than tier `{}`'s headroom of {}: unload the other lazy component before loading it (lazy components are budgeted one at a time)",
                    m.components[index].name,
                    format_bytes(cost),
                    m.tiers[ti].name,
                    omnipack_manifest::format_signed_bytes(headroom)
                ),
                path: Some(format!("components[{index}].residency")),
            });
        }
    }
}

fn mib_and_bytes(n: u64) -> String {
    format!("{} ({n} bytes)", format_bytes(n))
}

/// The located diagnostic of a tier that does not fit, with suggestions.
fn does_not_fit(
    m: &ResolvedManifest,
    sizers: &[ComponentSizer],
    ti: usize,
    model: &TierModel,
    ranks: &[usize],
    mem: &MemoryBreakdown,
) -> PlanDiagnostic {
    let tier = &m.tiers[ti];
    let need = mem.peak_bytes.saturating_add(mem.min_headroom_bytes);
    let over = need.saturating_sub(tier.memory_limit);
    let mut d = PlanDiagnostic::new(
        Some(format!("tiers[{ti}].memory_limit")),
        format!(
            "tier `{}` does not fit: peak {}{} exceeds memory_limit {} by {}",
            tier.name,
            format_bytes(mem.peak_bytes),
            if mem.min_headroom_bytes > 0 {
                format!(" + min_headroom {}", format_bytes(mem.min_headroom_bytes))
            } else {
                String::new()
            },
            format_bytes(tier.memory_limit),
            mib_and_bytes(over),
        ),
    );
    let chosen: Vec<String> = model
        .comps
        .iter()
        .zip(ranks)
        .map(|(c, &r)| {
            let o = &c.options[r];
            format!(
                "{} {}",
                m.components[c.index].name,
                bundle_id("", o.format, o.group_size, None).trim_start_matches('-')
            )
        })
        .collect();
    d.notes
        .push(format!("smallest plan found: {}", chosen.join(", ")));
    for (name, v) in [
        ("runtime_overhead_bytes", mem.runtime_overhead_bytes),
        ("weights_resident_bytes", mem.weights_resident_bytes),
        ("activations_bytes", mem.activations_bytes),
        ("kv_cache_bytes", mem.kv_cache_bytes),
        ("lazy_peak_bytes", mem.lazy_peak_bytes),
        ("peak_bytes", mem.peak_bytes),
    ] {
        d.notes
            .push(format!("{name:<24} {v:>14}  {}", format_bytes(v)));
    }
    d.help = suggestions(m, sizers, ti, model, ranks, mem);
    d
}

/// Concrete changes that reduce the peak, each with its saving computed by the model.
fn suggestions(
    m: &ResolvedManifest,
    sizers: &[ComponentSizer],
    ti: usize,
    model: &TierModel,
    ranks: &[usize],
    mem: &MemoryBreakdown,
) -> Vec<String> {
    let tier = &m.tiers[ti];
    let over = mem
        .peak_bytes
        .saturating_add(mem.min_headroom_bytes)
        .saturating_sub(tier.memory_limit);
    let verdict = |saved: u64| {
        if saved >= over {
            "enough on its own"
        } else {
            "not enough on its own"
        }
    };
    let peak_with = |k: usize, f: &dyn Fn(&mut TierComponent)| {
        let mut alt = model.clone();
        f(&mut alt.comps[k]);
        alt.breakdown(ranks).peak_bytes
    };
    let mut out = Vec::new();
    // Every change below applied at once, to say whether they fit together.
    let mut combined = model.clone();
    for (k, tc) in model.comps.iter().enumerate() {
        let c = &m.components[tc.index];
        let Some(tokens) = tc.kv_tokens else { continue };
        let mut combo = c.clone();
        let mut combo_tokens = tokens;
        // A smaller KV format.
        let smaller: &[KvFormat] = match c.kv_cache.format {
            KvFormat::F16 => &[KvFormat::U8, KvFormat::Nf4],
            KvFormat::U8 => &[KvFormat::Nf4],
            KvFormat::Nf4 => &[],
        };
        if c.runtime != Runtime::Mlc {
            for &f in smaller {
                let mut alt = c.clone();
                alt.kv_cache.format = f;
                combo.kv_cache.format = f;
                let kv = memory::kv_cache_bytes(&alt, tokens);
                let saved = mem.peak_bytes - peak_with(k, &|t| t.kv_cache_bytes = kv);
                if saved > 0 {
                    out.push(format!(
                        "`kv_cache.format: {}` for `{}` saves {} ({})",
                        f,
                        c.name,
                        mib_and_bytes(saved),
                        verdict(saved)
                    ));
                }
            }
        }
        // Fewer tokens: the KV cache is linear in T.
        let per_token = memory::kv_cache_bytes(c, 1);
        if per_token > 0 && tokens > 1 {
            let cut = over.div_ceil(per_token).min(tokens - 1);
            let target = tokens - cut;
            match c.kv_cache.paging {
                Some(p) if p.page_len > 0 => {
                    let pages = (target / p.page_len).max(1);
                    if pages < p.resident_pages {
                        let t2 = memory::kv_tokens(
                            c.max_seq_len,
                            tier.max_seq_len,
                            Some(Paging {
                                resident_pages: pages,
                                ..p
                            }),
                        )
                        .unwrap_or(tokens);
                        let kv = memory::kv_cache_bytes(c, t2);
                        combo_tokens = combo_tokens.min(t2);
                        let saved = mem.peak_bytes - peak_with(k, &|t| t.kv_cache_bytes = kv);
                        if saved > 0 {
                            out.push(format!(
                                "`kv_cache.paging.resident_pages: {pages}` for `{}` ({} resident tokens) saves {} ({})",
                                c.name,
                                t2,
                                mib_and_bytes(saved),
                                verdict(saved)
                            ));
                        }
                    }
                }
                _ => {
                    let kv = memory::kv_cache_bytes(c, target);
                    combo_tokens = combo_tokens.min(target);
                    let saved = mem.peak_bytes - peak_with(k, &|t| t.kv_cache_bytes = kv);
                    if saved > 0 {
                        out.push(format!(
                            "`max_seq_len: {target}` on tier `{}` saves {} ({}); or page the cache with `kv_cache.paging` on `{}`",
                            tier.name,
                            mib_and_bytes(saved),
                            verdict(saved),
                            c.name
                        ));
                    }
                }
            }
        }
        combined.comps[k].kv_cache_bytes = memory::kv_cache_bytes(&combo, combo_tokens);
    }
    // Smaller weight formats than any in the preference list.
    let mut combined_resident: Vec<(usize, u64)> = Vec::new();
    for (k, tc) in model.comps.iter().enumerate() {
        let c = &m.components[tc.index];
        let sizer = &sizers[tc.index];
        if !sizer.is_native() || c.resident_memory.is_some() || c.role == Role::Data {
            continue;
        }
        let allowed: Vec<Format> = Format::ALL
            .iter()
            .copied()
            .filter(|f| match c.runtime {
                Runtime::Mlx => *f != Format::Nf4,
                Runtime::Custom => true,
                _ => f.affine_bits().is_none() && *f != Format::Nf4,
            })
            .collect();
        let group = c.quantization.for_tier(&tier.name).group_size;
        let current = tc.options[ranks[k]].resident_bytes;
        let mut candidates: Vec<(Format, u64, u64)> = Vec::new();
        for f in allowed {
            if let Ok(w) = sizer.weights_bytes(f, group) {
                let r = memory::resident_weight_bytes(c, sizer.parameters, w);
                if r < current {
                    let saved = mem.peak_bytes
                        - peak_with(k, &|t| {
                            let o = &mut t.options[ranks[k]];
                            o.resident_bytes = r;
                        });
                    if saved > 0 {
                        candidates.push((f, saved, r));
                    }
                }
            }
        }
        // The least aggressive format that is enough on its own, else the one saving most.
        let pick = candidates
            .iter()
            .filter(|(_, s, _)| *s >= over)
            .min_by_key(|(f, s, _)| (*s, *f))
            .or_else(|| {
                candidates
                    .iter()
                    .max_by_key(|(f, s, _)| (*s, std::cmp::Reverse(*f)))
            });
        if let Some((f, saved, r)) = pick {
            combined_resident.push((k, *r));
            // A tier with its own override ignores the component-level list.
            let site = if c.quantization.tiers.contains_key(&tier.name) {
                format!("quantization.tiers.{}.format", tier.name)
            } else {
                "quantization.format".to_string()
            };
            out.push(format!(
                "`{f}` for `{}` (in `{site}`) saves {} ({})",
                c.name,
                mib_and_bytes(*saved),
                verdict(*saved)
            ));
        }
        if c.runtime == Runtime::Coreml
            && memory::coreml_decompresses(c.compute_units)
            && sizer.parameters > 0
        {
            let w = tc.options[ranks[k]].weights_bytes;
            let saved = mem.peak_bytes - peak_with(k, &|t| t.options[ranks[k]].resident_bytes = w);
            if saved > 0 {
                combined_resident.push((k, w));
                out.push(format!(
                    "`compute_units: cpu_and_ne` for `{}` keeps its weights compressed: saves {} ({})",
                    c.name,
                    mib_and_bytes(saved),
                    verdict(saved)
                ));
            }
        }
    }
    for (k, r) in combined_resident {
        let o = &mut combined.comps[k].options[ranks[k]];
        o.resident_bytes = o.resident_bytes.min(r);
    }
    let alone = out.iter().any(|l| l.contains("(enough on its own)"));
    if !alone && out.len() >= 2 {
        let saved = mem
            .peak_bytes
            .saturating_sub(combined.breakdown(ranks).peak_bytes);
        out.push(format!(
            "all of the above together (the smallest KV format, fewer tokens, the smaller weight formats) save {}: {}",
            mib_and_bytes(saved),
            if saved >= over { "enough" } else { "still not enough" }
        ));
    }
    if mem.min_headroom_bytes >= over && mem.min_headroom_bytes > 0 {
        out.push(format!(
            "`min_headroom: {}` on tier `{}` (from {}) would fit, with less safety margin",
            mem.min_headroom_bytes - over,
            tier.name,
            mem.min_headroom_bytes
        ));
    }
    let need = mem.peak_bytes.saturating_add(mem.min_headroom_bytes);
    out.push(format!(
        "raise `memory_limit` of tier `{}` to at least {} ({need} bytes), for devices that allow it",
        tier.name,
        format_bytes(need)
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_order_is_rank_sum_then_lexicographic() {
        let mut seen = Vec::new();
        let (found, truncated) = search(&[3, 2], 100, &mut |r| {
            seen.push(r.to_vec());
            false
        });
        assert!(found.is_none());
        assert!(!truncated);
        assert_eq!(
            seen,
            vec![
                vec![0, 0],
                vec![0, 1],
                vec![1, 0],
                vec![1, 1],
                vec![2, 0],
                vec![2, 1]
            ]
        );
    }

    #[test]
    fn search_stops_at_budget() {
        let (found, truncated) = search(&[9, 9, 9], 10, &mut |_| false);
        assert!(found.is_none());
        assert!(truncated);
    }

    #[test]
    fn ids() {
        assert_eq!(
            bundle_id("text", Format::Int4, Some(64), None),
            "text-int4-g64"
        );
        assert_eq!(bundle_id("image", Format::F16, None, None), "image-f16");
        assert_eq!(
            bundle_id("t", Format::F16, None, Some("iphone-8gb")),
            "t-f16-iphone-8gb"
        );
        assert_eq!(export_stage_id("t", Some("a")), "export:t:a");
        let q = quantization_info(Format::Int4, Some(64));
        assert_eq!(
            (q.bits, q.mode.as_deref(), q.group_size),
            (Some(4), Some("affine"), Some(64))
        );
        let q = quantization_info(Format::F16, Some(64));
        assert_eq!((q.bits, q.mode, q.group_size), (None, None, None));
    }
}
