//! A tier as the search sees it: for each component the tier ships, its fixed costs (KV cache,
//! activations) and the variants it may use, each with its weight and resident bytes.

use omnipack_manifest::{
    Format, KvFormat, Residency, ResolvedComponent, ResolvedManifest, ResolvedTier, Role, Runtime,
};
use omnipack_summary::MemoryBreakdown;

use crate::diag::PlanDiagnostic;
use crate::memory::{self, ComponentLoad};
use crate::sizing::ComponentSizer;

/// One variant a tier may use for one component.
#[derive(Debug, Clone)]
pub(crate) struct VariantOption {
    pub format: Format,
    pub group_size: Option<u32>,
    pub weights_bytes: u64,
    pub resident_bytes: u64,
}

/// One component as a tier sees it.
#[derive(Debug, Clone)]
pub(crate) struct TierComponent {
    /// Index of the component in the manifest.
    pub index: usize,
    pub always: bool,
    pub activation_bytes: u64,
    /// Where `activation_bytes` comes from.
    pub activation_source: memory::ActivationSource,
    pub kv_cache_bytes: u64,
    pub kv_tokens: Option<u64>,
    /// The preference list, best first: the rank of a variant is its index here.
    pub options: Vec<VariantOption>,
}

/// A tier ready for the search.
#[derive(Debug, Clone)]
pub(crate) struct TierModel {
    pub runtime_overhead: u64,
    pub memory_limit: u64,
    pub min_headroom: u64,
    pub comps: Vec<TierComponent>,
}

/// What the search chose for one tier.
#[derive(Debug, Clone)]
pub(crate) struct TierOutcome {
    /// One rank per component of the tier.
    pub ranks: Vec<usize>,
    pub fits: bool,
    /// The sum of `ranks`.
    pub rank_sum: usize,
    /// For a tier that fits, each component that stepped down: what one step back up costs.
    pub step_ups: Vec<crate::search::StepUp>,
}

/// One tier's model and the search's outcome on it.
#[derive(Debug, Clone)]
pub(crate) struct TierSearch {
    pub model: TierModel,
    pub outcome: TierOutcome,
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

    /// The memory breakdown with the variants of rank `ranks`.
    pub fn breakdown(&self, ranks: &[usize]) -> MemoryBreakdown {
        memory::breakdown(
            self.runtime_overhead,
            self.memory_limit,
            self.min_headroom,
            &self.loads(ranks),
        )
    }

    /// Whether the variants of rank `ranks` fit.
    pub fn fits(&self, ranks: &[usize]) -> bool {
        memory::fits(&self.breakdown(ranks), self.memory_limit)
    }

    /// Each component's smallest variant (the first among equals): the smallest peak.
    pub fn smallest(&self) -> Vec<usize> {
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

/// Builds the tier's search model; errors are located diagnostics.
pub(crate) fn tier_model(
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
        let (kv_cache_bytes, kv_tokens) = match kv_for(c, tier, index) {
            Ok(v) => v,
            Err(d) => {
                errors.push(d);
                continue;
            }
        };
        let options = variant_options(c, &sizers[index], tier, index, &mut errors);
        if options.is_empty() {
            continue;
        }
        let (activation_bytes, activation_source) = memory::activation_bytes(c, kv_tokens);
        comps.push(TierComponent {
            index,
            always: c.residency == Residency::Always,
            activation_bytes,
            activation_source,
            kv_cache_bytes,
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

/// The variants of `c`'s preference list on `tier`, sized.
fn variant_options(
    c: &ResolvedComponent,
    sizer: &ComponentSizer,
    tier: &ResolvedTier,
    index: usize,
    errors: &mut Vec<PlanDiagnostic>,
) -> Vec<VariantOption> {
    let tq = c.quantization.for_tier(&tier.name);
    let mut options = Vec::new();
    for &format in &tq.formats {
        // A Core ML model's int8 is per channel: only its int4 has blocks.
        let grouped = match sizer.coreml_model() {
            Some(_) => format == Format::Int4,
            None => format.is_grouped(),
        };
        match sizer.weights_bytes(format, tq.group_size) {
            Ok(w) => options.push(VariantOption {
                format,
                group_size: grouped.then_some(tq.group_size),
                weights_bytes: w,
                resident_bytes: memory::resident_weight_bytes(c, sizer.parameters, w),
            }),
            Err(e) => {
                let path = match e.format {
                    Some(f) => format_path(c, tier, index, f),
                    None => format!("components[{index}].{}", e.field),
                };
                let mut d = PlanDiagnostic::new(
                    Some(path),
                    format!("component `{}`: {}", c.name, e.message),
                );
                d.help.extend(e.help);
                errors.push(d);
            }
        }
    }
    options
}

/// The manifest path of `format` in the preference list `tier` uses for `c`: the tier's
/// override when it has its own list, else the component's `quantization.format` (an item
/// of the list, or the single format).
fn format_path(c: &ResolvedComponent, tier: &ResolvedTier, index: usize, format: Format) -> String {
    let q = &c.quantization;
    let (base, formats) = match q.tiers.get(&tier.name) {
        Some(t) if t.formats != q.formats => (
            format!(
                "components[{index}].quantization.tiers.{}.format",
                tier.name
            ),
            &t.formats,
        ),
        _ => (
            format!("components[{index}].quantization.format"),
            &q.formats,
        ),
    };
    match formats.iter().position(|&f| f == format) {
        Some(j) if formats.len() > 1 => format!("{base}[{j}]"),
        _ => base,
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
