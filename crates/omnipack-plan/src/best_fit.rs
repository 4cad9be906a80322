//! The best-fit search: per tier, the first combination of variant ranks that fits, in the
//! documented order (README, "Best fit: the documented order").
//!
//! Each component a tier ships has a preference list (its `quantization.format`, or the
//! tier's override), best quality first; rank 0 is the best. Combinations of ranks are tried
//! ordered first by the **sum of ranks** (fewest steps down from the preferred formats), then
//! lexicographically by the rank vector in manifest component order (on a tie, earlier
//! components keep the better quality). If the combination of each component's smallest
//! variant does not fit, nothing does: the tier fails with that smallest plan. The search stops
//! after [`MAX_COMBINATIONS`] and falls back to the smallest plan.
//!
//! The planner calls [`best_fit`] only, so another search can replace this one behind that
//! function.

use crate::tier_model::{TierModel, TierOutcome};

/// Beyond this many combinations per tier the search stops at the smallest plan.
pub const MAX_COMBINATIONS: u64 = 2_000_000;

/// The variants `model`'s tier uses: the first fitting combination in the documented order,
/// else the smallest one (not fitting, or fitting when the search budget ran out).
pub(crate) fn best_fit(model: &TierModel) -> TierOutcome {
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

/// Enumerates rank vectors by increasing sum, then lexicographically; returns the first that
/// satisfies `accept`, and whether the budget of `budget` combinations ran out.
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
}
