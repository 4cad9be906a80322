//! `mobile_packager_summary.json` from the plan and what the stages built: the bundles with
//! their measured sizes, and every tier re-budgeted from them
//! ([`omnipack_plan::with_measured_sizes`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use omnipack_summary::{AssetPackRef, BundleEntry, InputFile, Summary};

use super::BuildError;
use crate::stages::{BuildContext, PackagedBundle};

/// The summary of a build of `ctx.plan` that produced `bundles`.
pub(crate) fn make_summary(
    ctx: &BuildContext,
    bundles: &BTreeMap<String, Arc<PackagedBundle>>,
) -> Result<Summary, BuildError> {
    let weights: BTreeMap<String, u64> = bundles
        .iter()
        .map(|(id, b)| (id.clone(), b.weights_bytes))
        .collect();
    let plan = omnipack_plan::with_measured_sizes(ctx.plan, &weights);
    let mut inputs: Vec<InputFile> = ctx
        .inputs
        .iter()
        .map(|(p, d)| InputFile {
            path: ctx.relative(p),
            sha256: d.sha256.clone(),
        })
        .collect();
    // The manifest files, as planned, unless the build read them too (an exporter input folder
    // holding the manifest).
    for m in &plan.manifests {
        if !inputs.iter().any(|i| i.path == m.path) {
            inputs.push(m.clone());
        }
    }
    inputs.sort_by(|a, b| a.path.cmp(&b.path));
    let mut entries = Vec::new();
    for b in &plan.bundles {
        let o = bundles.get(&b.id).ok_or_else(|| BuildError::NotPackaged {
            bundle: b.id.clone(),
        })?;
        let c = plan
            .resolved_component(&b.component)
            .ok_or_else(|| BuildError::NotPackaged {
                bundle: b.id.clone(),
            })?;
        entries.push(BundleEntry {
            id: b.id.clone(),
            component: b.component.clone(),
            role: c.role,
            runtime: (c.role != omnipack_manifest::Role::Data).then_some(c.runtime),
            delivery: b.delivery,
            residency: b.residency,
            file: format!("bundles/{}.zip", b.id),
            size_bytes: o.zip_size,
            sha256: o.zip_sha256.clone(),
            asset_pack: AssetPackRef {
                id: omnipack_plan::asset_pack_id(plan.package.asset_pack_prefix.as_deref(), &b.id),
                manifest: format!("asset-packs/{}/Manifest.json", b.id),
            },
            quantization: b.quantization.clone(),
            parameters: if o.parameters > 0 {
                o.parameters
            } else {
                b.parameters
            },
            weights_bytes: o.weights_bytes,
            resident_bytes: b.resident_bytes,
            files: o.files.clone(),
            quality: o.quality.clone(),
        });
    }
    entries.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(Summary {
        summary_version: omnipack_summary::SUMMARY_VERSION,
        generator: omnipack_summary::generator(),
        package: plan.package.clone(),
        manifest_sha256: plan.manifest_sha256.clone(),
        inputs,
        bundles: entries,
        tiers: plan.tiers.iter().map(|t| t.entry.clone()).collect(),
    })
}
