//! The memory model (README.md, "Memory model and `omnipack plan`"), as pure integer functions.
//!
//! Every function here is exact integer arithmetic (saturating, so hostile numbers cannot
//! overflow into a small value). README.md ("Memory model") writes the same formulas out, with a worked example.

use omnipack_manifest::{
    Architecture, ComputeUnits, IoDtype, KvFormat, Paging, ResolvedComponent, Role, Runtime,
};
use omnipack_summary::MemoryBreakdown;

/// Bytes one KV row (`kv_head_dim` elements of one token and one head) takes when stored.
///
/// Per group of `g` elements: f16 `2*g`; u8 `g + 4` (f16 scale and zero point);
/// nf4 `g/2 + 2` (two codes per byte and an f16 absmax). An f16 row has no per-group data,
/// so it is `2 * kv_head_dim` whatever the group size (the default group of 32 need not
/// divide a head of 80 or 48). For u8 and nf4, a last partial group (a group size that does
/// not divide `kv_head_dim`, which validation rejects) counts as a whole group.
pub fn kv_bytes_per_row(kv_head_dim: u64, format: KvFormat, group_size: u64) -> u64 {
    if format == KvFormat::F16 {
        return kv_head_dim.saturating_mul(2);
    }
    let g = group_size.max(1);
    let groups = kv_head_dim.div_ceil(g);
    let per_group = match format {
        KvFormat::F16 => g.saturating_mul(2),
        KvFormat::U8 => g.saturating_add(4),
        KvFormat::Nf4 => g.div_ceil(2).saturating_add(2),
    };
    groups.saturating_mul(per_group)
}

/// Tokens the KV cache holds: `min(component max_seq_len, tier max_seq_len,
/// page_len * resident_pages)`, over the limits that are set. `None` when none is set.
pub fn kv_tokens(
    component_max_seq_len: Option<u64>,
    tier_max_seq_len: Option<u64>,
    paging: Option<Paging>,
) -> Option<u64> {
    let paged = paging.map(|p| p.page_len.saturating_mul(p.resident_pages));
    [component_max_seq_len, tier_max_seq_len, paged]
        .into_iter()
        .flatten()
        .min()
}

/// Stored KV cache: `2 * layers * kv_heads * T * bytes_per_row(kv_head_dim)` (K and V).
pub fn kv_stored_bytes(arch: &Architecture, tokens: u64, format: KvFormat, group_size: u64) -> u64 {
    2u64.saturating_mul(arch.layers)
        .saturating_mul(arch.kv_heads)
        .saturating_mul(tokens)
        .saturating_mul(kv_bytes_per_row(arch.kv_head_dim, format, group_size))
}

/// Bytes of one element of the Core ML decode step's KV inputs and outputs.
pub fn io_dtype_bytes(io: IoDtype) -> u64 {
    match io {
        IoDtype::F32 => 4,
        IoDtype::F16 => 2,
    }
}

/// The input and output KV copies a stateless Core ML decode step holds during a step:
/// `2 * 2 * layers * kv_heads * T * kv_head_dim * io_bytes`.
pub fn kv_coreml_io_bytes(arch: &Architecture, tokens: u64, io: IoDtype) -> u64 {
    4u64.saturating_mul(arch.layers)
        .saturating_mul(arch.kv_heads)
        .saturating_mul(tokens)
        .saturating_mul(arch.kv_head_dim)
        .saturating_mul(io_dtype_bytes(io))
}

/// A decode step's whole KV budget for `tokens` tokens: the stored cache, plus for Core ML
/// the input and output copies; for a Core ML decode step with its caches as states (iOS 18),
/// the states' bytes at their full declared size. 0 for components that are not text decode
/// steps.
pub fn kv_cache_bytes(c: &ResolvedComponent, tokens: u64) -> u64 {
    let Some(arch) = c.architecture.as_ref() else {
        return 0;
    };
    if c.role != Role::TextDecodeStep {
        return 0;
    }
    // An iOS 18 decode step keeps its caches as states: Core ML allocates them at their
    // declared size, whatever the context used, and there are no input or output copies.
    if c.runtime == Runtime::Coreml
        && let Some(states) = c.coreml.as_ref().and_then(|m| m.state_bytes)
    {
        return states;
    }
    let stored = kv_stored_bytes(arch, tokens, c.kv_cache.format, c.kv_cache.group_size);
    match c.runtime {
        Runtime::Coreml => {
            stored.saturating_add(kv_coreml_io_bytes(arch, tokens, c.kv_cache.io_dtype))
        }
        _ => stored,
    }
}

/// Default activations of one decode step over a context of `tokens` tokens, in bytes:
///
/// `4 * vocab_size + layers * (4 * heads * tokens + 32 * hidden_size)`, with
/// `heads = max(1, hidden_size / kv_head_dim)` (the query heads of a model whose heads
/// split the hidden size).
///
/// * `4 * vocab_size`: the logits of the step in f32, for sampling;
/// * `4 * heads * tokens` per layer: the attention scores and their softmax in f32;
/// * `32 * hidden_size` per layer: the step's f16 intermediates (query, attention output and
///   residual, the MLP's gate, up and down at an intermediate size of 4 x hidden_size).
///
/// Every layer is counted, not one: a lazily evaluated graph (MLX) may hold all of a step's
/// intermediates until it is evaluated. Allocator caching and a runtime's own scratch are not
/// modelled: measure and declare `activation_memory` for a release.
pub fn default_decode_activations(arch: &Architecture, tokens: u64) -> u64 {
    let heads = (arch.hidden_size / arch.kv_head_dim.max(1)).max(1);
    let per_layer = 4u64
        .saturating_mul(heads)
        .saturating_mul(tokens)
        .saturating_add(32u64.saturating_mul(arch.hidden_size));
    4u64.saturating_mul(arch.vocab_size)
        .saturating_add(arch.layers.saturating_mul(per_layer))
}

/// Where a component's activation bytes come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActivationSource {
    /// `activation_memory` in the manifest.
    Manifest,
    /// The decode-step default ([`default_decode_activations`]).
    Default,
    /// None: a `data` component, or a component without `activation_memory` that is not a
    /// decode step.
    None,
}

impl ActivationSource {
    /// `manifest`, `default` or `none`.
    pub fn as_str(self) -> &'static str {
        match self {
            ActivationSource::Manifest => "manifest",
            ActivationSource::Default => "default",
            ActivationSource::None => "none",
        }
    }
}

/// Activation memory of a component while it runs on a tier whose context for it is
/// `tokens` (the resident KV tokens of a decode step): `activation_memory` when given; for a
/// text decode step with an `architecture`, the decode-step default; otherwise 0. A `data`
/// component counts only its `resident_memory`, so its activations are 0.
pub fn activation_bytes(c: &ResolvedComponent, tokens: Option<u64>) -> (u64, ActivationSource) {
    if c.role == Role::Data {
        return (0, ActivationSource::None);
    }
    if let Some(a) = c.activation_memory {
        return (a, ActivationSource::Manifest);
    }
    match (c.role, c.architecture.as_ref()) {
        (Role::TextDecodeStep, Some(arch)) => (
            default_decode_activations(arch, tokens.unwrap_or(0)),
            ActivationSource::Default,
        ),
        _ => (0, ActivationSource::None),
    }
}

/// True when Core ML decompresses the weights to f16 at load for these compute units
/// (`cpu_only`, `cpu_and_gpu`, `all`; no `compute_units` means Core ML's default, `all`).
pub fn coreml_decompresses(units: Option<ComputeUnits>) -> bool {
    !matches!(units, Some(ComputeUnits::CpuAndNe))
}

/// Resident weight bytes of one variant of a component.
///
/// * `resident_memory` when given (for a `data` component: that or 0);
/// * `coreml` on `cpu_only`, `cpu_and_gpu` or `all`: `parameters * 2` (f16); when the
///   parameter count is unknown (an exporter before it ran), the stored size;
/// * everything else: the stored `weights_bytes`.
pub fn resident_weight_bytes(c: &ResolvedComponent, parameters: u64, weights_bytes: u64) -> u64 {
    if let Some(r) = c.resident_memory {
        return r;
    }
    if c.role == Role::Data {
        return 0;
    }
    match c.runtime {
        Runtime::Coreml if coreml_decompresses(c.compute_units) && parameters > 0 => {
            parameters.saturating_mul(2)
        }
        _ => weights_bytes,
    }
}

/// What one shipped component contributes to a tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ComponentLoad {
    /// `always` (true) or `lazy` (false).
    pub always: bool,
    /// Resident weight bytes of the chosen variant.
    pub resident_bytes: u64,
    /// Activation bytes.
    pub activation_bytes: u64,
    /// KV cache bytes (decode steps only; counted whatever the residency).
    pub kv_cache_bytes: u64,
}

/// A tier's breakdown from its components' loads.
///
/// peak = runtime_overhead + resident weights and activations of `always` components + KV
/// caches + the largest `lazy` component's resident weights plus activations.
/// `headroom = memory_limit - peak`.
pub fn breakdown(
    runtime_overhead: u64,
    memory_limit: u64,
    min_headroom: u64,
    loads: &[ComponentLoad],
) -> MemoryBreakdown {
    let mut weights = 0u64;
    let mut activations = 0u64;
    let mut kv = 0u64;
    let mut lazy_peak = 0u64;
    for l in loads {
        kv = kv.saturating_add(l.kv_cache_bytes);
        if l.always {
            weights = weights.saturating_add(l.resident_bytes);
            activations = activations.saturating_add(l.activation_bytes);
        } else {
            lazy_peak = lazy_peak.max(l.resident_bytes.saturating_add(l.activation_bytes));
        }
    }
    let peak = runtime_overhead
        .saturating_add(weights)
        .saturating_add(activations)
        .saturating_add(kv)
        .saturating_add(lazy_peak);
    let headroom =
        (memory_limit as i128 - peak as i128).clamp(i64::MIN as i128, i64::MAX as i128) as i64;
    MemoryBreakdown {
        runtime_overhead_bytes: runtime_overhead,
        weights_resident_bytes: weights,
        activations_bytes: activations,
        kv_cache_bytes: kv,
        lazy_peak_bytes: lazy_peak,
        peak_bytes: peak,
        min_headroom_bytes: min_headroom,
        headroom_bytes: headroom,
    }
}

/// A tier fits when `peak + min_headroom <= memory_limit`.
pub fn fits(m: &MemoryBreakdown, memory_limit: u64) -> bool {
    required_bytes(m) <= memory_limit
}

/// The memory a tier needs from the device: `peak_bytes + min_headroom_bytes` (the number an
/// app compares with its process limit).
pub fn required_bytes(m: &MemoryBreakdown) -> u64 {
    m.peak_bytes.saturating_add(m.min_headroom_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARCH: Architecture = Architecture {
        layers: 4,
        kv_heads: 4,
        kv_head_dim: 32,
        hidden_size: 128,
        vocab_size: 512,
    };

    #[test]
    fn row_costs() {
        // f16: 2 bytes per element.
        assert_eq!(kv_bytes_per_row(128, KvFormat::F16, 32), 256);
        // u8: 4 groups of (32 + 4).
        assert_eq!(kv_bytes_per_row(128, KvFormat::U8, 32), 144);
        // nf4: 4 groups of (16 + 2).
        assert_eq!(kv_bytes_per_row(128, KvFormat::Nf4, 32), 72);
        assert_eq!(kv_bytes_per_row(64, KvFormat::U8, 64), 68);
        assert_eq!(kv_bytes_per_row(64, KvFormat::Nf4, 64), 34);
        // f16 has no groups: heads of 80 or 48 with the default group of 32 are not rounded
        // up to whole groups.
        assert_eq!(kv_bytes_per_row(80, KvFormat::F16, 32), 160);
        assert_eq!(kv_bytes_per_row(48, KvFormat::F16, 32), 96);
    }

    #[test]
    fn tokens_take_the_smallest_limit() {
        let p = Some(Paging {
            page_len: 256,
            resident_pages: 8,
        });
        assert_eq!(kv_tokens(Some(4096), Some(2048), p), Some(2048));
        assert_eq!(kv_tokens(Some(4096), None, p), Some(2048));
        assert_eq!(kv_tokens(Some(4096), Some(1024), p), Some(1024));
        assert_eq!(kv_tokens(Some(4096), None, None), Some(4096));
        assert_eq!(kv_tokens(None, None, None), None);
    }

    #[test]
    fn kv_cache_by_hand() {
        // 2 * 4 layers * 4 heads * 2048 tokens * (32 * 2) = 4 MiB.
        assert_eq!(kv_stored_bytes(&ARCH, 2048, KvFormat::F16, 32), 4 << 20);
        // u8: row = 36 bytes -> 2*4*4*2048*36 = 2_359_296.
        assert_eq!(kv_stored_bytes(&ARCH, 2048, KvFormat::U8, 32), 2_359_296);
        // nf4: row = 18 -> 1_179_648.
        assert_eq!(kv_stored_bytes(&ARCH, 2048, KvFormat::Nf4, 32), 1_179_648);
        // Core ML copies: 4 * 4 * 4 * 2048 * 32 * 4 = 16 MiB (f32), 8 MiB (f16).
        assert_eq!(kv_coreml_io_bytes(&ARCH, 2048, IoDtype::F32), 16 << 20);
        assert_eq!(kv_coreml_io_bytes(&ARCH, 2048, IoDtype::F16), 8 << 20);
    }

    #[test]
    fn activations_by_hand() {
        // heads = 128 / 32 = 4; 4 * 512 + 4 * (4 * 4 * 2048 + 32 * 128) = 2_048 + 147_456.
        assert_eq!(default_decode_activations(&ARCH, 2048), 149_504);
        // Without a context only the logits and the intermediates remain.
        assert_eq!(default_decode_activations(&ARCH, 0), 2_048 + 4 * 4_096);
    }

    #[test]
    fn peak_and_headroom() {
        let loads = [
            ComponentLoad {
                always: true,
                resident_bytes: 1000,
                activation_bytes: 10,
                kv_cache_bytes: 200,
            },
            ComponentLoad {
                always: false,
                resident_bytes: 300,
                activation_bytes: 50,
                kv_cache_bytes: 0,
            },
            ComponentLoad {
                always: false,
                resident_bytes: 100,
                activation_bytes: 400,
                kv_cache_bytes: 0,
            },
        ];
        let m = breakdown(500, 2000, 100, &loads);
        assert_eq!(m.weights_resident_bytes, 1000);
        assert_eq!(m.activations_bytes, 10);
        assert_eq!(m.kv_cache_bytes, 200);
        assert_eq!(m.lazy_peak_bytes, 500);
        assert_eq!(m.peak_bytes, 500 + 1000 + 10 + 200 + 500);
        assert_eq!(m.headroom_bytes, 2000 - 2210);
        assert!(!fits(&m, 2000));
        let m = breakdown(500, 2310, 100, &loads);
        assert_eq!(m.headroom_bytes, 100);
        assert!(fits(&m, 2310));
        let m = breakdown(500, 2309, 100, &loads);
        assert!(!fits(&m, 2309));
    }

    #[test]
    fn huge_numbers_saturate() {
        let loads = [ComponentLoad {
            always: true,
            resident_bytes: u64::MAX,
            activation_bytes: 1,
            kv_cache_bytes: 1,
        }];
        let m = breakdown(1, 10, 0, &loads);
        assert_eq!(m.peak_bytes, u64::MAX);
        assert_eq!(m.headroom_bytes, i64::MIN);
        assert!(!fits(&m, 10));
    }
}
