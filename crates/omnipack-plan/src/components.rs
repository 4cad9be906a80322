//! The plan's components, and what is worth saying about those the plan builds: an exporter
//! that declares no size, a Core ML component quantized on compute units that decompress it.

use std::collections::BTreeSet;

use omnipack_manifest::{ComputeUnits, Format, ResolvedManifest, ResolvedSource, Runtime};

use crate::memory;
use crate::model::{BundlePlan, ComponentPlan, PlanWarning};
use crate::sizing::{ComponentSizer, SizeSource};

/// Every component with what the plan knows of its size; warnings for the used ones.
pub(crate) fn component_plans(
    m: &ResolvedManifest,
    sizers: &[ComponentSizer],
    bundles: &[BundlePlan],
    warnings: &mut Vec<PlanWarning>,
) -> Vec<ComponentPlan> {
    let used: BTreeSet<&str> = bundles.iter().map(|b| b.component.as_str()).collect();
    let mut plans = Vec::new();
    for (i, c) in m.components.iter().enumerate() {
        let s = &sizers[i];
        if used.contains(c.name.as_str()) {
            warnings.extend(unknown_export_size(m, i, s));
            warnings.extend(coreml_quantized_but_decompressed(m, i, s, bundles));
            warnings.extend(requantized(m, i, s, bundles));
        }
        plans.push(ComponentPlan {
            component: c.clone(),
            parameters: s.parameters,
            size_source: s.source.as_str().to_string(),
            source_format: s.source_layout().and_then(|l| l.describe()),
        });
    }
    plans
}

/// A quantized source quantized again to another format (allowed by
/// `quantization.requantize`): the error compounds.
fn requantized(
    m: &ResolvedManifest,
    i: usize,
    s: &ComponentSizer,
    bundles: &[BundlePlan],
) -> Option<PlanWarning> {
    let c = &m.components[i];
    let ids: Vec<&str> = bundles
        .iter()
        .filter(|b| b.component == c.name && b.source_treatment.as_deref() == Some("requantize"))
        .map(|b| b.id.as_str())
        .collect();
    if ids.is_empty() {
        return None;
    }
    let source = s
        .source_layout()
        .and_then(|l| l.describe())
        .unwrap_or_default();
    Some(PlanWarning {
        message: format!(
            "component `{}`: its source is already quantized ({source}); bundle(s) {} dequantize it and quantize it again, so the error compounds (the build reports the SQNR of each against the dequantized source)",
            c.name,
            ids.iter()
                .map(|i| format!("`{i}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        path: Some(format!("components[{i}].quantization.requantize")),
    })
}

fn unknown_export_size(m: &ResolvedManifest, i: usize, s: &ComponentSizer) -> Option<PlanWarning> {
    let c = &m.components[i];
    (matches!(c.source, ResolvedSource::Command { .. }) && s.source == SizeSource::Unknown).then(
        || PlanWarning {
            message: format!(
                "exporter component `{}` declares neither `size` nor `resident_memory`: its weights count as 0 bytes until it is exported; declare `size:` to budget it now",
                c.name
            ),
            path: Some(format!("components[{i}]")),
        },
    )
}

fn coreml_quantized_but_decompressed(
    m: &ResolvedManifest,
    i: usize,
    s: &ComponentSizer,
    bundles: &[BundlePlan],
) -> Option<PlanWarning> {
    let c = &m.components[i];
    if c.runtime != Runtime::Coreml || !memory::coreml_decompresses(c.compute_units) {
        return None;
    }
    let quantized: BTreeSet<Format> = bundles
        .iter()
        .filter(|b| b.component == c.name && b.format.is_grouped())
        .map(|b| b.format)
        .collect();
    let f = quantized.iter().next()?;
    let lower_bound = if s.parameters == 0 && c.resident_memory.is_none() {
        " (its parameter count is unknown before export, so the plan counts the declared size: a lower bound; set `resident_memory`)"
    } else {
        ""
    };
    Some(PlanWarning {
        message: format!(
            "Core ML component `{}` is quantized ({f}) but runs with compute_units `{}`, which decompresses weights to f16 at load: the file shrinks, the memory does not{lower_bound}; use `compute_units: cpu_and_ne` to keep weights compressed in memory",
            c.name,
            // Core ML's own default is `all`.
            c.compute_units.unwrap_or(ComputeUnits::All)
        ),
        path: Some(format!("components[{i}].compute_units")),
    })
}
