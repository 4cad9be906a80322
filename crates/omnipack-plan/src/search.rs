//! The exact best-fit search of one tier: which variant each shipped component uses.
//!
//! # What is chosen
//!
//! Every component has a preference list of variants, best quality first; a variant's
//! position is its **rank** (0 = best). Among the combinations of ranks that fit, the search
//! returns the first in the order README.md documents ("Best fit: the documented order"):
//!
//! 1. the smallest **sum of ranks**;
//! 2. on equal sums, the lexicographically smallest rank vector in component order (earlier
//!    components keep better quality).
//!
//! The answer is exact for any number of components and variants: there is no cap on the work
//! and no fall back to the smallest variants.
//!
//! # The memory model it searches
//!
//! Each variant carries the bytes it adds while its component is loaded (resident weights plus
//! the component's activations). With `r` the chosen ranks:
//!
//! ```text
//! peak = fixed_bytes
//!      + sum of bytes(r_i) over the `always` components
//!      + max of bytes(r_j) over the `lazy` components (0 when there is none)
//! ```
//!
//! `fixed_bytes` is what does not depend on the choice (runtime overhead and KV caches). A
//! plan fits when `peak + min_headroom <= memory_limit`, with the same saturating arithmetic as
//! [`crate::memory::fits`]: sums that would pass `u64::MAX` count as `u64::MAX`.
//!
//! # Algorithm
//!
//! First the plan of each component's smallest variant (the fewest bytes, the first among
//! equals): it has the least of every part of the peak, so when it does not fit nothing does,
//! and it is the answer for the error message.
//!
//! Otherwise, the `always` components and the `lazy` components interact only through the
//! total rank sum and the limit, so each part gets its own table over the components in
//! order. For every position `i` and every rank sum `s`:
//!
//! * `always[i][s]`: the least sum of bytes of the `always` components from `i` on whose ranks
//!   add up to exactly `s` (a min-plus dynamic program, the multiple-choice knapsack);
//! * `lazy[i][s]`: the least *largest* bytes among the `lazy` components from `i` on whose ranks
//!   add up to exactly `s` (the same program with `max` in place of `+`; 0 for no component).
//!
//! Suppose components `0..i` are already chosen, with `B` bytes of `always` components, `M`
//! the largest `lazy` bytes so far and `s` ranks left to spend. A completion that fits exists
//! if and only if some split `s = a + l` has
//!
//! ```text
//! fixed_bytes + B + always[i][a] + max(M, lazy[i][l]) <= memory_limit - min_headroom
//! ```
//!
//! This is exact: once the split is fixed the two parts are chosen independently, the sum is
//! least at `always[i][a]`, and `max(M, x)` is least where `x` is. (Fixing the split also
//! settles ties between equal byte counts: only the least value of each part matters, never
//! which variant reaches it.) The search then
//!
//! 1. takes the smallest `s` for which a completion from position 0 exists: the best rank
//!    sum;
//! 2. rebuilds the lexicographically smallest plan of that sum greedily: component 0 takes
//!    the smallest rank after which a completion with the ranks left still exists, then
//!    component 1, and so on. Each step keeps a completion possible, so the last component
//!    ends exactly on the sum.
//!
//! The tables only need the rank sums up to the best one, which is usually far below the
//! largest: they are built for sums below 16, and rebuilt twice as wide until the best sum
//! is among them. Entries are bytes in `u64`; any value above the largest peak that fits is
//! stored as that peak plus one (it can never be part of a fitting plan), so saturating
//! additions stay exact where it matters.
//!
//! For each component that stepped down from rank 0 the result also says what one step back
//! up (to its previous rank, every other choice unchanged) would cost. Such a step never fits:
//! it would be a fitting plan with a smaller rank sum.
//!
//! # Complexity
//!
//! With `n` components, at most `k` variants each, `σ` the best rank sum and `W` the final
//! table width (`W <= max(16, 2 * σ + 2)`, and never more than the largest rank sum plus one):
//! the tables take `O(n * k * W)` time over all doublings and `O(n * W)` memory, step 1
//! `O(W^2)`, step 2 `O(n * k * W)`. The worst case, every component far down its list, is
//! `W = n * (k - 1) + 1`: 321 for 64 components with 6 formats each, some hundred thousand
//! table steps. Each tier is solved on its own.
//!
//! # Building the input from a tier
//!
//! `fixed_bytes` is the runtime overhead plus every shipped component's KV cache; each
//! component is `lazy` when its residency is `lazy`, and each variant's bytes are its resident
//! weight bytes plus the component's activation bytes (saturating). The smallest plan takes
//! the variant with the fewest bytes, the first among equals.

use thiserror::Error;

/// One shipped component as the search sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchComponent {
    /// True for `residency: lazy`: only the largest lazy component counts toward the peak.
    pub lazy: bool,
    /// The bytes each variant adds to the peak while the component is loaded (resident
    /// weights plus activations), in preference order: index = rank, 0 = best quality.
    pub variant_bytes: Vec<u64>,
}

/// One tier's search problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchInput {
    /// Bytes that do not depend on the choice: runtime overhead plus KV caches.
    pub fixed_bytes: u64,
    /// The tier's `memory_limit` in bytes.
    pub memory_limit: u64,
    /// The tier's `min_headroom` in bytes.
    pub min_headroom: u64,
    /// The components the tier ships, in manifest order.
    pub components: Vec<SearchComponent>,
}

/// An input the search cannot take.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SearchError {
    /// A component without any variant has no rank to choose.
    #[error("component {component} of the search has no variant to choose from")]
    NoVariants {
        /// Position of the component in [`SearchInput::components`].
        component: usize,
    },
}

/// What the search found for one tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SearchOutcome {
    /// The best-fitting plan in the documented order.
    Fits(BestFit),
    /// No combination fits; the smallest plan, for the error message.
    NoneFits(NoFit),
}

/// The best-fitting plan of a tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BestFit {
    /// The chosen rank of each component, in input order.
    pub ranks: Vec<usize>,
    /// The sum of `ranks`: how many steps down the preference lists the tier takes.
    pub rank_sum: usize,
    /// Peak bytes of the chosen plan.
    pub peak_bytes: u64,
    /// For each component that stepped down from rank 0, in input order: what one step back
    /// up would cost.
    pub step_ups: Vec<StepUp>,
}

/// One step back up the preference list that breaks the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepUp {
    /// Position of the component in [`SearchInput::components`].
    pub component: usize,
    /// The rank chosen; the step up is to `rank - 1`.
    pub rank: usize,
    /// Peak bytes with this component at `rank - 1`, every other choice unchanged.
    pub peak_bytes: u64,
    /// How many bytes `peak_bytes + min_headroom` exceeds `memory_limit` by (always > 0).
    pub over_bytes: u64,
}

/// The smallest plan of a tier that cannot fit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoFit {
    /// Each component's smallest variant (the first among equals): the least peak.
    pub ranks: Vec<usize>,
    /// Peak bytes of that plan.
    pub peak_bytes: u64,
    /// How many bytes `peak_bytes + min_headroom` exceeds `memory_limit` by.
    pub over_bytes: u64,
}

impl SearchInput {
    /// The exact peak of `ranks` (one rank per component, each within its list), without
    /// saturation: at most `(n + 2) * u64::MAX`, far below `u128::MAX`.
    fn exact_peak(&self, ranks: &[usize]) -> u128 {
        let mut always = 0u128;
        let mut lazy = 0u128;
        for (c, &r) in self.components.iter().zip(ranks) {
            let b = u128::from(c.variant_bytes[r]);
            if c.lazy {
                lazy = lazy.max(b);
            } else {
                always += b;
            }
        }
        u128::from(self.fixed_bytes) + always + lazy
    }

    /// Peak bytes of `ranks` (one rank per component, each within its list), saturated at
    /// `u64::MAX` as the tier's memory breakdown is.
    pub fn peak_bytes(&self, ranks: &[usize]) -> u64 {
        saturate(self.exact_peak(ranks))
    }

    /// True when `ranks` fits: `peak + min_headroom <= memory_limit` (saturating).
    pub fn fits(&self, ranks: &[usize]) -> bool {
        self.over_bytes(self.exact_peak(ranks)) == 0
    }

    /// Bytes by which a plan of exact peak `peak` misses the limit (0 when it fits), in the
    /// saturating arithmetic of the memory breakdown.
    fn over_bytes(&self, peak: u128) -> u64 {
        let needed = saturate(peak + u128::from(self.min_headroom));
        needed.saturating_sub(self.memory_limit)
    }

    /// Each component's variant with the fewest bytes, the first among equals.
    fn smallest_ranks(&self) -> Vec<usize> {
        self.components
            .iter()
            .map(|c| {
                let mut best = 0;
                for (r, &b) in c.variant_bytes.iter().enumerate() {
                    if b < c.variant_bytes[best] {
                        best = r;
                    }
                }
                best
            })
            .collect()
    }
}

fn saturate(v: u128) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

/// The suffix tables of the module documentation for rank sums `0..width`, stored row by row.
///
/// Every entry is at most `cap + 1`, where `cap < u64::MAX` is the largest peak that fits:
/// a value above `cap` cannot be part of a fitting plan, so all such values (and rank sums no
/// assignment reaches) are stored as `cap + 1`, and saturating additions stay exact below it.
struct Tables {
    width: usize,
    cap: u64,
    /// `always[i * width + s]`: least bytes of the always components from `i` on with rank
    /// sum exactly `s`.
    always: Vec<u64>,
    /// `lazy[i * width + s]`: least largest bytes of the lazy components from `i` on with rank
    /// sum exactly `s`.
    lazy: Vec<u64>,
}

impl Tables {
    fn new(components: &[SearchComponent], width: usize, cap: u64) -> Tables {
        let n = components.len();
        let too_big = cap + 1;
        let mut always = vec![too_big; (n + 1) * width];
        let mut lazy = vec![too_big; (n + 1) * width];
        always[n * width] = 0;
        lazy[n * width] = 0;
        for i in (0..n).rev() {
            let (head, next) = (i * width, (i + 1) * width);
            let c = &components[i];
            // The table of the other kind passes this component through unchanged.
            let (own, other) = if c.lazy {
                (&mut lazy, &mut always)
            } else {
                (&mut always, &mut lazy)
            };
            other.copy_within(next..next + width, head);
            for s in 0..width {
                let mut best = too_big;
                for (r, &b) in c.variant_bytes.iter().enumerate().take(s + 1) {
                    let rest = own[next + s - r];
                    let v = if c.lazy {
                        rest.max(b)
                    } else {
                        rest.saturating_add(b)
                    };
                    best = best.min(v);
                }
                own[head + s] = best;
            }
        }
        Tables {
            width,
            cap,
            always,
            lazy,
        }
    }

    /// True when the components from `i` on can spend exactly `s` ranks (`s < width`) with a
    /// peak of at most `cap`, given `base` bytes already counted (fixed and chosen always
    /// components) and `lazy_max`, the largest chosen lazy bytes so far.
    fn completes(&self, i: usize, s: usize, base: u64, lazy_max: u64) -> bool {
        let row = i * self.width;
        let always = &self.always[row..=row + s];
        let lazy = &self.lazy[row..=row + s];
        always
            .iter()
            .zip(lazy.iter().rev())
            .any(|(&a, &l)| base.saturating_add(a).saturating_add(lazy_max.max(l)) <= self.cap)
    }
}

/// The first table width tried; it doubles until the best rank sum is below it.
const FIRST_WIDTH: usize = 16;

/// Finds the best-fitting plan of one tier in the documented order (see the module
/// documentation), or the smallest plan when nothing fits.
pub fn best_fit(input: &SearchInput) -> Result<SearchOutcome, SearchError> {
    if let Some(component) = input
        .components
        .iter()
        .position(|c| c.variant_bytes.is_empty())
    {
        return Err(SearchError::NoVariants { component });
    }
    let smallest = input.smallest_ranks();
    let smallest_peak = input.exact_peak(&smallest);
    if input.over_bytes(smallest_peak) > 0 {
        // The smallest variants give the least of every part of the peak.
        return Ok(SearchOutcome::NoneFits(NoFit {
            ranks: smallest,
            peak_bytes: saturate(smallest_peak),
            over_bytes: input.over_bytes(smallest_peak),
        }));
    }
    let ranks = if input.memory_limit == u64::MAX {
        // Every saturated peak is at most u64::MAX: the preferred variants fit.
        vec![0; input.components.len()]
    } else {
        // The smallest plan fits, so min_headroom <= memory_limit < u64::MAX.
        best_ranks(input, input.memory_limit - input.min_headroom)
    };

    let mut step_ups = Vec::new();
    let mut up = ranks.clone();
    for (i, &r) in ranks.iter().enumerate() {
        if r == 0 {
            continue;
        }
        up[i] = r - 1;
        let peak = input.exact_peak(&up);
        up[i] = r;
        step_ups.push(StepUp {
            component: i,
            rank: r,
            peak_bytes: saturate(peak),
            over_bytes: input.over_bytes(peak),
        });
    }
    Ok(SearchOutcome::Fits(BestFit {
        peak_bytes: input.peak_bytes(&ranks),
        rank_sum: ranks.iter().sum(),
        ranks,
        step_ups,
    }))
}

/// The best ranks when some plan has a peak of at most `cap` (`cap < u64::MAX`).
fn best_ranks(input: &SearchInput, cap: u64) -> Vec<usize> {
    let largest_sum: usize = input
        .components
        .iter()
        .map(|c| c.variant_bytes.len() - 1)
        .sum();
    let fixed = input.fixed_bytes;
    // Tables for rank sums below `width`, doubled until the best sum is among them: the
    // smallest plan fits, so a sum of at most `largest_sum` always is.
    // A wider table has the same entries for the sums of the narrower one: only the new sums
    // need a look.
    let (mut tried, mut width) = (0, FIRST_WIDTH.min(largest_sum + 1));
    let (tables, rank_sum) = loop {
        let tables = Tables::new(&input.components, width, cap);
        if let Some(s) = (tried..width).find(|&s| tables.completes(0, s, fixed, 0)) {
            break (tables, s);
        }
        assert!(
            width <= largest_sum,
            "the smallest plan fits, so some rank sum up to {largest_sum} does"
        );
        (tried, width) = (width, (width * 2).min(largest_sum + 1));
    };

    let mut ranks = Vec::with_capacity(input.components.len());
    let (mut base, mut lazy_max, mut left) = (fixed, 0u64, rank_sum);
    for (i, c) in input.components.iter().enumerate() {
        // The smallest rank after which the components left can still complete the sum.
        let next = c
            .variant_bytes
            .iter()
            .enumerate()
            .take(left + 1)
            .map(|(r, &b)| {
                if c.lazy {
                    (r, base, lazy_max.max(b))
                } else {
                    (r, base.saturating_add(b), lazy_max)
                }
            })
            .find(|&(r, base, lazy_max)| tables.completes(i + 1, left - r, base, lazy_max));
        // The previous step (or the choice of `rank_sum`) left a completion possible, and
        // that completion starts with one of the ranks tried here.
        let (r, next_base, next_lazy_max) =
            next.expect("a completion exists for the ranks left, so some rank continues it");
        ranks.push(r);
        (base, lazy_max, left) = (next_base, next_lazy_max, left - r);
    }
    ranks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn always(bytes: &[u64]) -> SearchComponent {
        SearchComponent {
            lazy: false,
            variant_bytes: bytes.to_vec(),
        }
    }

    fn lazy(bytes: &[u64]) -> SearchComponent {
        SearchComponent {
            lazy: true,
            variant_bytes: bytes.to_vec(),
        }
    }

    fn input(limit: u64, components: Vec<SearchComponent>) -> SearchInput {
        SearchInput {
            fixed_bytes: 10,
            memory_limit: limit,
            min_headroom: 5,
            components,
        }
    }

    fn fit(i: &SearchInput) -> BestFit {
        match best_fit(i) {
            Ok(SearchOutcome::Fits(f)) => f,
            other => panic!("expected a fit, got {other:?}"),
        }
    }

    #[test]
    fn everything_at_rank_zero_when_it_fits() {
        let i = input(
            10 + 5 + 100 + 50,
            vec![always(&[100, 60, 30]), lazy(&[50, 20])],
        );
        let f = fit(&i);
        assert_eq!((f.ranks, f.rank_sum, f.peak_bytes), (vec![0, 0], 0, 160));
        assert!(f.step_ups.is_empty());
    }

    #[test]
    fn equal_sums_keep_earlier_components_better() {
        // Room for one of the two at 100: the first keeps it.
        let i = input(
            10 + 5 + 100 + 60,
            vec![always(&[100, 60]), always(&[100, 60])],
        );
        let f = fit(&i);
        assert_eq!(f.ranks, [0, 1]);
        assert_eq!(
            f.step_ups,
            [StepUp {
                component: 1,
                rank: 1,
                peak_bytes: 210,
                over_bytes: 40
            }]
        );
    }

    #[test]
    fn only_the_largest_lazy_component_counts() {
        // Lazy decoders of 70 and 40 count 70; the always one must step down to 30.
        let i = input(
            10 + 5 + 70 + 30,
            vec![always(&[100, 30]), lazy(&[70, 10]), lazy(&[40, 5])],
        );
        let f = fit(&i);
        assert_eq!((f.ranks, f.peak_bytes), (vec![1, 0, 0], 110));
        // Stepping the lazy one down instead frees only 30 of the 70 needed.
        let i = input(
            10 + 5 + 100 + 40,
            vec![always(&[100, 30]), lazy(&[70, 10]), lazy(&[40, 5])],
        );
        assert_eq!(fit(&i).ranks, [0, 1, 0]);
    }

    #[test]
    fn a_larger_later_variant_is_never_preferred_over_rank_zero() {
        // Preference lists need not shrink: rank 1 is bigger, rank 2 smaller.
        let i = input(10 + 5 + 50, vec![always(&[60, 80, 50])]);
        let f = fit(&i);
        assert_eq!(f.ranks, [2]);
        assert_eq!(f.step_ups[0].over_bytes, 30);
    }

    #[test]
    fn nothing_fits_gives_the_smallest_plan() {
        let i = input(10 + 5 + 49, vec![always(&[60, 50, 50]), lazy(&[9, 3, 3])]);
        assert_eq!(
            best_fit(&i),
            Ok(SearchOutcome::NoneFits(NoFit {
                ranks: vec![1, 1],
                peak_bytes: 63,
                over_bytes: 4
            }))
        );
        // A headroom above the limit: not even an empty plan fits.
        let i = SearchInput {
            fixed_bytes: 0,
            memory_limit: 4,
            min_headroom: 5,
            components: vec![],
        };
        assert!(matches!(best_fit(&i), Ok(SearchOutcome::NoneFits(_))));
    }

    #[test]
    fn huge_numbers_saturate_like_the_memory_breakdown() {
        let big = u64::MAX - 1;
        let i = SearchInput {
            fixed_bytes: big,
            memory_limit: u64::MAX,
            min_headroom: big,
            components: vec![always(&[big, 1]), lazy(&[big])],
        };
        // A limit of u64::MAX admits every saturated peak.
        let f = fit(&i);
        assert_eq!((f.ranks, f.peak_bytes), (vec![0, 0], u64::MAX));
        let i = SearchInput {
            memory_limit: u64::MAX - 1,
            min_headroom: 0,
            ..i
        };
        match best_fit(&i) {
            Ok(SearchOutcome::NoneFits(n)) => {
                assert_eq!(
                    (n.ranks, n.peak_bytes, n.over_bytes),
                    (vec![1, 0], u64::MAX, 1)
                )
            }
            other => panic!("expected no fit, got {other:?}"),
        }
    }

    #[test]
    fn a_component_without_variants_is_an_error() {
        let i = input(100, vec![always(&[1]), lazy(&[])]);
        assert_eq!(best_fit(&i), Err(SearchError::NoVariants { component: 1 }));
    }
}
