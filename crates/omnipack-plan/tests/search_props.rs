//! The exact best-fit search against brute force, against an independent dynamic program and
//! against the planner's own answers.
//!
//! The oracles here compute peaks with the planner's memory model
//! ([`omnipack_plan::memory::breakdown`] and [`omnipack_plan::memory::fits`]), not with the
//! search's own arithmetic.

use omnipack_manifest::{Format, Manifest, Residency, resolve};
use omnipack_plan::memory::{self, ComponentLoad};
use omnipack_plan::search::{SearchComponent, SearchInput, SearchOutcome, best_fit};
use omnipack_plan::{ComponentSizer, Plan, plan_with_sizers};
use omnipack_quant::{Dtype, TensorInfo};
use proptest::prelude::*;
use serde_json::json;

const MIB: u64 = 1 << 20;

/// Peak and fit of `ranks` by the planner's memory model.
fn model_peak(input: &SearchInput, ranks: &[usize]) -> (u64, bool) {
    let loads: Vec<ComponentLoad> = input
        .components
        .iter()
        .zip(ranks)
        .map(|(c, &r)| ComponentLoad {
            always: !c.lazy,
            resident_bytes: c.variant_bytes[r],
            activation_bytes: 0,
            kv_cache_bytes: 0,
        })
        .collect();
    let b = memory::breakdown(
        input.fixed_bytes,
        input.memory_limit,
        input.min_headroom,
        &loads,
    );
    (b.peak_bytes, memory::fits(&b, input.memory_limit))
}

/// Every rank vector, in lexicographic order.
fn all_plans(lens: &[usize]) -> Vec<Vec<usize>> {
    let mut out = Vec::new();
    let mut cur = vec![0; lens.len()];
    loop {
        out.push(cur.clone());
        let mut i = lens.len();
        loop {
            if i == 0 {
                return out;
            }
            i -= 1;
            cur[i] += 1;
            if cur[i] < lens[i] {
                break;
            }
            cur[i] = 0;
        }
    }
}

/// The first fitting plan by (rank sum, ranks), by trying every plan.
fn brute_force(input: &SearchInput) -> Option<Vec<usize>> {
    let lens: Vec<usize> = input
        .components
        .iter()
        .map(|c| c.variant_bytes.len())
        .collect();
    let mut best: Option<Vec<usize>> = None;
    for p in all_plans(&lens) {
        let sum: usize = p.iter().sum();
        // Plans come in lexicographic order, so a later plan wins only with a smaller sum.
        if model_peak(input, &p).1 && best.as_ref().is_none_or(|b| sum < b.iter().sum()) {
            best = Some(p);
        }
    }
    best
}

/// Each component's variant with the fewest bytes, the first among equals.
fn smallest(input: &SearchInput) -> Vec<usize> {
    input
        .components
        .iter()
        .map(|c| {
            let least = c.variant_bytes.iter().min().copied().unwrap_or(0);
            c.variant_bytes
                .iter()
                .position(|&b| b == least)
                .unwrap_or(0)
        })
        .collect()
}

/// The least fitting rank sum by another method: fix a bound `t` on the largest lazy bytes
/// (0 or any lazy variant's bytes), restrict every lazy component to variants within it,
/// give the always components the rest of the limit with a forward "least bytes for each
/// rank sum" table. Small numbers only (no saturation).
fn least_rank_sum(input: &SearchInput) -> Option<usize> {
    let cap = input.memory_limit.checked_sub(input.min_headroom)?;
    let mut least = vec![0u64];
    for c in input.components.iter().filter(|c| !c.lazy) {
        let mut next = vec![u64::MAX; least.len() + c.variant_bytes.len() - 1];
        for (s, &l) in least.iter().enumerate() {
            if l == u64::MAX {
                continue;
            }
            for (r, &b) in c.variant_bytes.iter().enumerate() {
                next[s + r] = next[s + r].min(l + b);
            }
        }
        least = next;
    }
    let mut bounds: Vec<u64> = vec![0];
    for c in input.components.iter().filter(|c| c.lazy) {
        bounds.extend(&c.variant_bytes);
    }
    let mut best: Option<usize> = None;
    for t in bounds {
        let lazy_ranks: Option<usize> = input
            .components
            .iter()
            .filter(|c| c.lazy)
            .map(|c| c.variant_bytes.iter().position(|&b| b <= t))
            .sum();
        let Some(lazy_ranks) = lazy_ranks else {
            continue;
        };
        let Some(room) = cap.checked_sub(input.fixed_bytes + t) else {
            continue;
        };
        if let Some(s) = least.iter().position(|&l| l <= room) {
            let total = s + lazy_ranks;
            best = Some(best.map_or(total, |b| b.min(total)));
        }
    }
    best
}

/// Checks everything the search promises about `input`, with `expected` the best plan (or
/// `None` when nothing fits).
fn check_outcome(input: &SearchInput, expected: Option<Vec<usize>>) -> Result<(), TestCaseError> {
    let outcome = best_fit(input).expect("every component has a variant");
    match (outcome, expected) {
        (SearchOutcome::Fits(f), Some(expected)) => {
            prop_assert_eq!(&f.ranks, &expected);
            let (peak, fits) = model_peak(input, &f.ranks);
            prop_assert!(fits);
            prop_assert_eq!(f.peak_bytes, peak);
            prop_assert_eq!(f.rank_sum, f.ranks.iter().sum::<usize>());
            let stepped: Vec<usize> = (0..f.ranks.len()).filter(|&i| f.ranks[i] > 0).collect();
            let listed: Vec<usize> = f.step_ups.iter().map(|s| s.component).collect();
            prop_assert_eq!(listed, stepped);
            for s in &f.step_ups {
                let mut up = f.ranks.clone();
                up[s.component] -= 1;
                prop_assert_eq!(s.rank, f.ranks[s.component]);
                let (peak, fits) = model_peak(input, &up);
                prop_assert!(!fits);
                prop_assert_eq!(s.peak_bytes, peak);
                let over = peak
                    .saturating_add(input.min_headroom)
                    .saturating_sub(input.memory_limit);
                prop_assert!(over > 0);
                prop_assert_eq!(s.over_bytes, over);
            }
        }
        (SearchOutcome::NoneFits(n), None) => {
            prop_assert_eq!(&n.ranks, &smallest(input));
            let (peak, fits) = model_peak(input, &n.ranks);
            prop_assert!(!fits);
            prop_assert_eq!(n.peak_bytes, peak);
            prop_assert_eq!(
                n.over_bytes,
                peak.saturating_add(input.min_headroom)
                    .saturating_sub(input.memory_limit)
            );
        }
        (got, expected) => {
            prop_assert!(false, "search {got:?}, expected {expected:?}");
        }
    }
    Ok(())
}

/// Byte counts with many ties and zeros, or spread out.
fn bytes() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0u64), 0u64..4, 0u64..40, 0u64..1_000_000]
}

/// Components with `1..=max_formats` variants, always and lazy mixed.
fn components(
    max_components: usize,
    max_formats: usize,
) -> impl Strategy<Value = Vec<SearchComponent>> {
    prop::collection::vec(
        (
            any::<bool>(),
            prop::collection::vec(bytes(), 1..=max_formats),
        )
            .prop_map(|(lazy, variant_bytes)| SearchComponent {
                lazy,
                variant_bytes,
            }),
        0..=max_components,
    )
}

/// A search input whose limit falls anywhere from below the smallest plan to above the
/// largest (`permille` of the largest peak plus headroom, plus a little).
fn inputs(max_components: usize, max_formats: usize) -> impl Strategy<Value = SearchInput> {
    (
        components(max_components, max_formats),
        0u64..100,
        0u64..50,
        0u64..=1100,
        0u64..3,
    )
        .prop_map(|(components, fixed_bytes, min_headroom, permille, nudge)| {
            let largest_lazy = components
                .iter()
                .filter(|c| c.lazy)
                .flat_map(|c| c.variant_bytes.iter().copied())
                .max()
                .unwrap_or(0);
            let largest: u64 = components
                .iter()
                .filter(|c| !c.lazy)
                .map(|c| c.variant_bytes.iter().copied().max().unwrap_or(0))
                .sum::<u64>()
                + largest_lazy
                + fixed_bytes
                + min_headroom;
            SearchInput {
                fixed_bytes,
                memory_limit: largest * permille / 1000 + nudge,
                min_headroom,
                components,
            }
        })
}

/// Byte counts at the edge of `u64`.
fn huge() -> impl Strategy<Value = u64> {
    prop::sample::select(vec![
        0,
        1,
        2,
        u64::MAX / 3,
        u64::MAX / 2,
        u64::MAX - 2,
        u64::MAX - 1,
        u64::MAX,
    ])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn small_instances_match_brute_force(input in inputs(7, 4)) {
        let expected = brute_force(&input);
        check_outcome(&input, expected)?;
    }

    #[test]
    fn sums_near_u64_max_saturate_like_the_memory_model(
        components in prop::collection::vec(
            (any::<bool>(), prop::collection::vec(huge(), 1..=3))
                .prop_map(|(lazy, variant_bytes)| SearchComponent { lazy, variant_bytes }),
            0..=4,
        ),
        fixed_bytes in huge(),
        min_headroom in huge(),
        memory_limit in huge(),
    ) {
        let input = SearchInput { fixed_bytes, memory_limit, min_headroom, components };
        let expected = brute_force(&input);
        check_outcome(&input, expected)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn large_instances_have_no_fitting_plan_with_a_smaller_rank_sum(input in inputs(40, 6)) {
        let outcome = best_fit(&input).expect("every component has a variant");
        match (outcome, least_rank_sum(&input)) {
            (SearchOutcome::Fits(f), Some(least)) => {
                prop_assert_eq!(f.rank_sum, least);
                prop_assert_eq!(f.ranks.iter().sum::<usize>(), least);
                prop_assert!(model_peak(&input, &f.ranks).1);
                for s in &f.step_ups {
                    prop_assert!(s.over_bytes > 0);
                }
            }
            (SearchOutcome::NoneFits(n), None) => {
                prop_assert!(!model_peak(&input, &n.ranks).1);
            }
            (got, least) => prop_assert!(false, "search {got:?}, least rank sum {least:?}"),
        }
    }
}

/// The issue's table input: each component two 256 x 512 f16 tensors, `format: [f16, int8,
/// int4, int2]` (group 64), all resident, one tier with room for about half the components
/// at int8 and half at int4.
fn issue_table_input(n: usize) -> SearchInput {
    let sizer = ComponentSizer::native(
        ["a", "b"]
            .iter()
            .map(|t| TensorInfo {
                name: format!("{t}.weight"),
                dtype: Dtype::F16,
                shape: vec![256, 512],
            })
            .collect(),
        vec![],
        None,
    );
    let bytes: Vec<u64> = [Format::F16, Format::Int8, Format::Int4, Format::Int2]
        .iter()
        .map(|&f| sizer.weights_bytes(f, 64).expect("sized"))
        .collect();
    let half = n as u64 / 2;
    let fixed_bytes = 8 * MIB;
    SearchInput {
        fixed_bytes,
        memory_limit: fixed_bytes + half * bytes[1] + (n as u64 - half) * bytes[2],
        min_headroom: 0,
        components: vec![
            SearchComponent {
                lazy: false,
                variant_bytes: bytes,
            };
            n
        ],
    }
}

#[test]
fn the_issue_table_gets_best_fits_at_every_size() {
    for n in [8, 10, 12, 16, 32, 64] {
        let input = issue_table_input(n);
        let Ok(SearchOutcome::Fits(f)) = best_fit(&input) else {
            panic!("{n} components: a plan fits");
        };
        assert_eq!(Some(f.rank_sum), least_rank_sum(&input), "{n} components");
        assert!(model_peak(&input, &f.ranks).1);
        assert!(
            f.ranks.iter().any(|&r| r != 3),
            "{n} components: not all int2"
        );
        if n == 8 {
            assert_eq!(Some(f.ranks), brute_force(&input));
        }
    }
}

// --- The planner's answers on hand-made manifests ---------------------------------------

/// A native sizer of one f16 weight of `rows x cols`.
fn weight(rows: u64, cols: u64) -> ComponentSizer {
    ComponentSizer::native(
        vec![TensorInfo {
            name: "w.weight".into(),
            dtype: Dtype::F16,
            shape: vec![rows, cols],
        }],
        vec![],
        None,
    )
}

/// The search input of tier `t` of a plan, built the way the planner models a tier.
fn tier_input(
    m: &omnipack_manifest::ResolvedManifest,
    sizers: &[ComponentSizer],
    plan: &Plan,
    t: usize,
) -> SearchInput {
    let tier = &m.tiers[t];
    let mem = &plan.tiers[t].entry.memory;
    let components = tier
        .components
        .iter()
        .map(|name| {
            let i = m
                .components
                .iter()
                .position(|c| &c.name == name)
                .expect("a component of the manifest");
            let (c, sizer) = (&m.components[i], &sizers[i]);
            let q = c.quantization.for_tier(&tier.name);
            let tokens = memory::kv_tokens(c.max_seq_len, tier.max_seq_len, c.kv_cache.paging);
            let (activations, _) = memory::activation_bytes(c, tokens);
            SearchComponent {
                lazy: c.residency == Residency::Lazy,
                variant_bytes: q
                    .formats
                    .iter()
                    .map(|&f| {
                        let w = sizer.weights_bytes(f, q.group_size).expect("sized");
                        memory::resident_weight_bytes(c, sizer.parameters, w)
                            .saturating_add(activations)
                    })
                    .collect(),
            }
        })
        .collect();
    SearchInput {
        fixed_bytes: mem.runtime_overhead_bytes + mem.kv_cache_bytes,
        memory_limit: tier.memory_limit,
        min_headroom: tier.min_headroom,
        components,
    }
}

/// Plans `components` on one tier per limit in `limits` and checks the search chooses what
/// the planner chose on every tier, fitting or not.
fn same_as_planner(components: serde_json::Value, sizers: &[ComponentSizer], limits: &[u64]) {
    let tiers: Vec<serde_json::Value> = limits
        .iter()
        .enumerate()
        .map(|(i, &l)| {
            json!({"name": format!("t{i}"), "device_memory": 1u64 << 34, "memory_limit": l,
                   "min_headroom": 256 * 1024, "max_seq_len": 512})
        })
        .collect();
    let manifest: Manifest = serde_json::from_value(json!({
        "omnipack": 1,
        "package": {"name": "t", "version": "1", "bundle_id": "com.example.t"},
        "runtime_overhead": 10 * MIB,
        "tiers": tiers,
        "components": components,
    }))
    .expect("a manifest");
    let m = resolve(&manifest);
    let plan = match plan_with_sizers(&m, sizers, &[]) {
        Ok(p) => p,
        Err(f) => *f.plan.expect("a partial plan"),
    };
    let mut fitting = 0;
    let mut plans = std::collections::BTreeSet::new();
    for t in 0..limits.len() {
        let input = tier_input(&m, sizers, &plan, t);
        let planner: Vec<usize> = plan.tiers[t]
            .choices
            .iter()
            .map(|c| c.preference_rank)
            .collect();
        match best_fit(&input).expect("every component has a variant") {
            SearchOutcome::Fits(f) => {
                fitting += 1;
                assert!(plan.tiers[t].entry.fits, "tier {t}");
                assert_eq!(f.ranks, planner, "tier {t}");
                assert_eq!(f.peak_bytes, plan.tiers[t].entry.memory.peak_bytes);
                plans.insert(f.ranks);
            }
            SearchOutcome::NoneFits(n) => {
                assert!(!plan.tiers[t].entry.fits, "tier {t}");
                assert_eq!(n.ranks, planner, "tier {t}");
                assert_eq!(n.peak_bytes, plan.tiers[t].entry.memory.peak_bytes);
            }
        }
    }
    // The sweep covers both outcomes and many different plans.
    assert!(fitting < limits.len(), "every tier fits");
    assert!(plans.len() >= 12, "{} different plans", plans.len());
}

/// Limits from `low` to `high` in `steps` equal steps.
fn sweep(low: u64, high: u64, steps: u64) -> Vec<u64> {
    (0..=steps)
        .map(|k| low + (high - low) * k / steps)
        .collect()
}

#[test]
fn the_planner_and_the_search_agree_on_a_text_model_with_decoders() {
    let components = json!([
        {"name": "text", "role": "text_decode_step", "source": {"safetensors": "m.safetensors"},
         "architecture": {"layers": 4, "kv_heads": 4, "kv_head_dim": 32, "hidden_size": 128, "vocab_size": 512},
         "max_seq_len": 2048,
         "quantization": {"format": ["f16", "int8", "int6", "int4", "int3", "int2"], "group_size": 64}},
        {"name": "image", "role": "image_decoder", "source": {"safetensors": "m.safetensors"},
         "activation_memory": MIB, "quantization": {"format": ["f16", "int8", "int4"], "group_size": 32}},
        {"name": "video", "role": "video_decoder", "source": {"safetensors": "m.safetensors"},
         "activation_memory": 3 * MIB / 2, "quantization": {"format": ["f16", "int8", "int4"]}},
        {"name": "adapter", "role": "image_decoder", "residency": "always",
         "source": {"safetensors": "m.safetensors"}, "quantization": {"format": ["f16", "nf4"]}},
    ]);
    let sizers = [
        weight(1024, 1024),
        weight(1024, 768),
        weight(512, 1024),
        weight(256, 1024),
    ];
    same_as_planner(
        components,
        &sizers,
        &sweep(13 * MIB, 16 * MIB + MIB / 2, 40),
    );
}

#[test]
fn the_planner_and_the_search_agree_on_ties_and_tier_overrides() {
    // Four identical always components, one with a tier override, and two identical lazy
    // decoders: many plans share a rank sum and byte count.
    let mut components = Vec::new();
    for k in 0..4 {
        let mut c = json!({"name": format!("enc{k}"), "role": "image_decoder", "residency": "always",
            "source": {"safetensors": "m.safetensors"},
            "quantization": {"format": ["f16", "int8", "int4", "int2"]}});
        if k == 2 {
            c["quantization"]["tiers"] = json!({"t3": {"format": ["int8", "int2"]}});
        }
        components.push(c);
    }
    for k in 0..2 {
        components.push(json!({"name": format!("dec{k}"), "role": "video_decoder",
            "source": {"safetensors": "m.safetensors"}, "activation_memory": 0,
            "quantization": {"format": ["f16", "int8", "int4", "int2"]}}));
    }
    let sizers: Vec<ComponentSizer> = (0..6).map(|_| weight(512, 512)).collect();
    same_as_planner(
        json!(components),
        &sizers,
        &sweep(10 * MIB, 12 * MIB + 3 * MIB / 4, 48),
    );
}
