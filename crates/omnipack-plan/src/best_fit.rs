//! The best-fit step of the planner: each tier's model handed to the exact search
//! ([`crate::search`]), which finds the first fitting combination of variant ranks in the
//! documented order (README, "Best fit: the documented order") for any number of components.
//!
//! The planner calls [`best_fit`] only.

use crate::search::{self, SearchComponent, SearchInput, SearchOutcome};
use crate::tier_model::{TierModel, TierOutcome};

/// The search's view of `model`: the runtime overhead and every KV cache are fixed; each
/// variant adds its resident weight bytes plus the component's activations.
pub(crate) fn search_input(model: &TierModel) -> SearchInput {
    let fixed_bytes = model.comps.iter().fold(model.runtime_overhead, |acc, c| {
        acc.saturating_add(c.kv_cache_bytes)
    });
    SearchInput {
        fixed_bytes,
        memory_limit: model.memory_limit,
        min_headroom: model.min_headroom,
        components: model
            .comps
            .iter()
            .map(|c| SearchComponent {
                lazy: !c.always,
                variant_bytes: c
                    .options
                    .iter()
                    .map(|o| o.resident_bytes.saturating_add(c.activation_bytes))
                    .collect(),
            })
            .collect(),
    }
}

/// The variants `model`'s tier uses: the first fitting combination in the documented order,
/// else each component's smallest variant (the tier does not fit).
pub(crate) fn best_fit(model: &TierModel) -> TierOutcome {
    // Every component of a tier model has at least one variant (`tier_model` skips the
    // others), so the search cannot refuse the input; should it, the smallest plan stands.
    match search::best_fit(&search_input(model)) {
        Ok(SearchOutcome::Fits(f)) => TierOutcome {
            ranks: f.ranks,
            fits: true,
            rank_sum: f.rank_sum,
            step_ups: f.step_ups,
        },
        Ok(SearchOutcome::NoneFits(n)) => TierOutcome {
            rank_sum: n.ranks.iter().sum(),
            ranks: n.ranks,
            fits: false,
            step_ups: Vec::new(),
        },
        Err(_) => {
            let ranks = model.smallest();
            TierOutcome {
                rank_sum: ranks.iter().sum(),
                fits: model.fits(&ranks),
                ranks,
                step_ups: Vec::new(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tier_model::{TierComponent, VariantOption};
    use omnipack_manifest::Format;

    fn comp(index: usize, always: bool, resident: &[u64]) -> TierComponent {
        TierComponent {
            index,
            always,
            activation_bytes: 7,
            activation_source: crate::memory::ActivationSource::Manifest,
            kv_cache_bytes: 11,
            kv_tokens: None,
            options: resident
                .iter()
                .map(|&r| VariantOption {
                    format: Format::Int8,
                    group_size: Some(64),
                    weights_bytes: r,
                    resident_bytes: r,
                })
                .collect(),
        }
    }

    /// The search's peak is the memory breakdown's peak, and its verdict the model's.
    #[test]
    fn the_search_sees_the_memory_model() {
        let model = TierModel {
            runtime_overhead: 1000,
            memory_limit: 1000 + 22 + 100 + 7 + 60 + 7 + 50,
            min_headroom: 50,
            comps: vec![comp(0, true, &[200, 100]), comp(1, false, &[60, 30])],
        };
        let input = search_input(&model);
        for ranks in [[0, 0], [0, 1], [1, 0], [1, 1]] {
            assert_eq!(
                input.peak_bytes(&ranks),
                model.breakdown(&ranks).peak_bytes,
                "{ranks:?}"
            );
            assert_eq!(input.fits(&ranks), model.fits(&ranks), "{ranks:?}");
        }
        let out = best_fit(&model);
        assert_eq!((out.ranks, out.fits, out.rank_sum), (vec![1, 0], true, 1));
        assert_eq!(out.step_ups.len(), 1);
        assert_eq!(out.step_ups[0].component, 0);
        assert_eq!(out.step_ups[0].over_bytes, 100);
    }

    #[test]
    fn a_tier_that_cannot_fit_gets_its_smallest_plan() {
        let model = TierModel {
            runtime_overhead: 1000,
            memory_limit: 1000,
            min_headroom: 0,
            comps: vec![comp(0, true, &[200, 100, 150])],
        };
        let out = best_fit(&model);
        assert_eq!((out.ranks, out.fits, out.rank_sum), (vec![1], false, 1));
        assert!(out.step_ups.is_empty());
    }
}
