//! Resolution of a loaded manifest into a [`Plan`], as a sequence of named steps: check the
//! manifest's shape, size the components, search each tier's variants ([`crate::best_fit`]),
//! collect the bundles, plan the tiers and components, check the App Store's limits, and lay
//! out the stages with their parameters.

use std::collections::BTreeSet;
use std::path::Path;

use omnipack_manifest::canonical_json::to_canonical_compact;
use omnipack_manifest::lexical_path::{normalize_or_dot, relative_to, slash};
use omnipack_manifest::{LoadedManifest, ResolvedManifest, ResolvedSource};
use omnipack_summary::{InputFile, PackageInfo};

use crate::app_store;
use crate::best_fit::best_fit;
use crate::bundles;
use crate::components::component_plans;
use crate::diag::{PlanDiagnostic, PlanFailure};
use crate::model::{PLAN_VERSION, Plan, PlanWarning};
use crate::sizing::{ComponentSizer, SizeSource};
use crate::stages::stages;
use crate::tier_model::{TierSearch, tier_model};
use crate::tiers::tier_plans;

/// Plans `loaded` for the tiers named in `only_tiers` (every tier when empty).
///
/// Every tier is resolved (so a bundle's delivery does not depend on the selection); the
/// plan lists the selected tiers and the bundles and stages they need.
pub fn plan(loaded: &LoadedManifest, only_tiers: &[String]) -> Result<Plan, PlanFailure> {
    check_shape(&loaded.resolved, only_tiers)?;
    let sizers = size_components(loaded)?;
    let origin = Origin::of_manifest(loaded)?;
    plan_in(&loaded.resolved, &sizers, only_tiers, &origin)
}

/// Plans with component sizes already known (used by [`plan`]; handy for tests). The plan's
/// root is `.`, its manifest digest empty and its manifest list too.
pub fn plan_with_sizers(
    m: &ResolvedManifest,
    sizers: &[ComponentSizer],
    only_tiers: &[String],
) -> Result<Plan, PlanFailure> {
    plan_in(m, sizers, only_tiers, &Origin::in_memory())
}

/// Where a plan comes from: its root folder, the manifest files and their digests.
struct Origin {
    root: String,
    manifest_sha256: String,
    manifests: Vec<InputFile>,
}

impl Origin {
    fn of_manifest(loaded: &LoadedManifest) -> Result<Origin, PlanFailure> {
        let root = if loaded.dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            loaded.dir.as_path()
        };
        let mut manifests = Vec::with_capacity(loaded.files.len());
        for f in &loaded.files {
            let sha256 = omnipack_quant::sha256_file(f).map_err(|e| {
                PlanFailure::one(PlanDiagnostic::new(
                    None,
                    format!("cannot read the manifest file {}: {e}", f.display()),
                ))
            })?;
            manifests.push(InputFile {
                path: slash(&relative_to(f, root)),
                sha256,
            });
        }
        manifests.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(Origin {
            root: slash(root),
            manifest_sha256: omnipack_quant::sha256_bytes(&to_canonical_compact(
                &loaded.merged_json,
            )),
            manifests,
        })
    }

    fn in_memory() -> Origin {
        Origin {
            root: ".".into(),
            manifest_sha256: String::new(),
            manifests: Vec::new(),
        }
    }
}

fn plan_in(
    m: &ResolvedManifest,
    sizers: &[ComponentSizer],
    only_tiers: &[String],
    origin: &Origin,
) -> Result<Plan, PlanFailure> {
    check_shape(m, only_tiers)?;
    let searched = search_tiers(m, sizers)?;
    let selected = selected_tiers(m, only_tiers);
    let mut warnings: Vec<PlanWarning> = Vec::new();
    let chosen = bundles::choose(m, &searched, &selected);
    let mut diagnostics = bundles::check_variant_exporters(m, &chosen);
    let bundles = bundles::bundle_plans(m, sizers, &chosen, &mut warnings);
    let tiers = tier_plans(
        m,
        sizers,
        &searched,
        &selected,
        &chosen,
        &mut warnings,
        &mut diagnostics,
    );
    let components = component_plans(m, sizers, &bundles, &mut warnings);
    let app_store = bundles::app_store_usage(&chosen);
    check_app_store(&app_store, &mut warnings, &mut diagnostics);
    let plan = Plan {
        plan_version: PLAN_VERSION,
        package: PackageInfo {
            name: m.package.name.clone(),
            version: m.package.version.clone(),
            bundle_id: m.package.bundle_id.clone(),
            asset_pack_prefix: m.package.asset_pack_prefix.clone(),
        },
        root: origin.root.clone(),
        manifest_sha256: origin.manifest_sha256.clone(),
        manifests: origin.manifests.clone(),
        inputs: inputs(m, sizers),
        stages: stages(m, sizers, &bundles),
        components,
        bundles,
        tiers,
        warnings,
        app_store,
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

/// Sizes every component from safetensors headers and file metadata (no weight is read).
fn size_components(loaded: &LoadedManifest) -> Result<Vec<ComponentSizer>, PlanFailure> {
    let mut sizers = Vec::with_capacity(loaded.resolved.components.len());
    let mut errors = Vec::new();
    for (i, c) in loaded.resolved.components.iter().enumerate() {
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
    if errors.is_empty() {
        Ok(sizers)
    } else {
        Err(PlanFailure {
            diagnostics: errors,
            plan: None,
        })
    }
}

/// Every tier's model and the best fit on it; the located errors of tiers that cannot be
/// modelled (each reported once, even when several tiers hit it).
fn search_tiers(
    m: &ResolvedManifest,
    sizers: &[ComponentSizer],
) -> Result<Vec<TierSearch>, PlanFailure> {
    let mut errors: Vec<PlanDiagnostic> = Vec::new();
    let mut searched = Vec::new();
    for tier in &m.tiers {
        match tier_model(m, sizers, tier) {
            Ok(model) => {
                let outcome = best_fit(&model);
                searched.push(TierSearch { model, outcome });
            }
            Err(mut e) => {
                e.retain(|d| !errors.contains(d));
                errors.extend(e);
            }
        }
    }
    if errors.is_empty() {
        Ok(searched)
    } else {
        Err(PlanFailure {
            diagnostics: errors,
            plan: None,
        })
    }
}

/// Indexes of the tiers named in `only_tiers` (every tier when empty), in manifest order.
fn selected_tiers(m: &ResolvedManifest, only_tiers: &[String]) -> Vec<usize> {
    (0..m.tiers.len())
        .filter(|&i| only_tiers.is_empty() || only_tiers.contains(&m.tiers[i].name))
        .collect()
}

/// The App Store's limits, over the whole release: errors past them, warnings near them.
fn check_app_store(
    usage: &app_store::AppStoreUsage,
    warnings: &mut Vec<PlanWarning>,
    diagnostics: &mut Vec<PlanDiagnostic>,
) {
    let check = app_store::check(usage);
    for p in check.over {
        let mut d = PlanDiagnostic::new(None, p.message);
        d.help.extend(p.help);
        diagnostics.push(d);
    }
    warnings.extend(check.near.into_iter().map(|p| PlanWarning {
        message: p.message,
        path: None,
    }));
}

/// Every file or folder a build reads, relative to the root, sorted: every component's sources
/// (used by a selected tier or not).
fn inputs(m: &ResolvedManifest, sizers: &[ComponentSizer]) -> Vec<String> {
    let mut all: BTreeSet<String> = BTreeSet::new();
    for (c, sizer) in m.components.iter().zip(sizers) {
        match &c.source {
            ResolvedSource::Safetensors { shards, config, .. } => {
                all.extend(config.iter().cloned());
                all.extend(shards.iter().cloned());
                all.extend(sizer.resolved_shards().unwrap_or_default().iter().cloned());
            }
            ResolvedSource::Command { inputs, .. } => all.extend(inputs.iter().cloned()),
            ResolvedSource::Files { files } => all.extend(files.iter().cloned()),
            ResolvedSource::Mlpackage { path } => {
                all.insert(path.clone());
            }
        }
    }
    all.into_iter()
        .map(|p| normalize_or_dot(&p))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}
