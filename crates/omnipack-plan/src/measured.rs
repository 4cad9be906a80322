//! Re-budgeting a plan from the sizes a build actually produced.

use std::collections::BTreeMap;

use omnipack_manifest::Residency;

use crate::memory::{self, ComponentLoad};
use crate::model::Plan;

/// Recomputes `plan` with measured weight sizes (bundle id -> tensor data bytes after export
/// and quantization): each listed bundle's `weights_bytes` and `resident_bytes`, then every
/// tier's memory breakdown and `fits`. Choices, load order, KV cache and activations are kept.
/// Bundles missing from `measured` keep their planned sizes.
pub fn with_measured_sizes(plan: &Plan, measured: &BTreeMap<String, u64>) -> Plan {
    let mut out = plan.clone();
    for b in &mut out.bundles {
        let Some(&w) = measured.get(&b.id) else {
            continue;
        };
        b.weights_bytes = w;
        if let Some(c) = plan.resolved_component(&b.component) {
            b.resident_bytes = memory::resident_weight_bytes(c, b.parameters, w);
        }
    }
    for t in &mut out.tiers {
        let mut loads = Vec::with_capacity(t.choices.len());
        for choice in &t.choices {
            let (Some(c), Some(b)) = (
                plan.resolved_component(&choice.component),
                out.bundles.iter().find(|b| b.id == choice.bundle),
            ) else {
                continue;
            };
            loads.push(ComponentLoad {
                always: c.residency == Residency::Always,
                resident_bytes: b.resident_bytes,
                activation_bytes: choice.activation_bytes,
                kv_cache_bytes: 0,
            });
        }
        let old = &t.entry.memory;
        let mut m = memory::breakdown(
            old.runtime_overhead_bytes,
            t.entry.memory_limit_bytes,
            t.min_headroom_bytes,
            &loads,
        );
        // The KV cache does not depend on weight sizes: keep the planned figure.
        m.kv_cache_bytes = old.kv_cache_bytes;
        m.peak_bytes = m.peak_bytes.saturating_add(old.kv_cache_bytes);
        m.headroom_bytes = (t.entry.memory_limit_bytes as i128 - m.peak_bytes as i128)
            .clamp(i64::MIN as i128, i64::MAX as i128) as i64;
        t.entry.fits = memory::fits(&m, t.entry.memory_limit_bytes);
        t.entry.required_bytes = memory::required_bytes(&m);
        t.entry.memory = m;
    }
    out
}
