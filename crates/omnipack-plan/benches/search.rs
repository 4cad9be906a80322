//! The exact best-fit search on release-sized inputs.
//!
//! * `release_20_tiers`: 8, 16, 32 and 64 components with 6 formats each (one in four a lazy
//!   decoder), 20 tiers whose limits ask for 30 % to 70 % of the saving of one step down of
//!   every always component (with 64 components, 13 to 32 of them step down); one iteration
//!   solves all 20 tiers, each on its own.
//! * `near_smallest_20_tiers`: the same components, 20 tiers with limits just above the
//!   smallest plan, so most components go far down their lists: the search's worst case.
//! * `issue_table`: the input of the table in the issue that asked for this search: each
//!   component two 256 x 512 f16 tensors, `format: [f16, int8, int4, int2]`, all resident, one
//!   tier with room for about half the components at int8 and half at int4.
//!
//! `cargo bench -p omnipack-plan --bench search`

use omnipack_manifest::Format;
use omnipack_plan::ComponentSizer;
use omnipack_plan::search::{SearchComponent, SearchInput, SearchOutcome, best_fit};
use omnipack_quant::{Dtype, TensorInfo};

fn main() {
    divan::main();
}

const MIB: u64 = 1 << 20;

/// A small deterministic generator (SplitMix64), so every run benchmarks the same inputs.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `low..high`.
    fn range(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low)
    }
}

/// Bytes per parameter of `f16, int8, int6, int4, int3, int2` with group-64 scales, in
/// thousandths.
const FORMAT_PERMILLE: [u64; 6] = [2000, 1063, 813, 563, 438, 313];

/// `n` components with 6 formats each, one in four a lazy decoder.
fn components(n: usize) -> Vec<SearchComponent> {
    let mut rng = SplitMix(n as u64);
    (0..n)
        .map(|i| {
            let parameters = rng.range(16 * MIB, 24 * MIB);
            let activations = rng.range(0, MIB);
            SearchComponent {
                lazy: i % 4 == 3,
                variant_bytes: FORMAT_PERMILLE
                    .iter()
                    .map(|p| parameters * p / 1000 + activations)
                    .collect(),
            }
        })
        .collect()
}

/// `n` components and 20 tiers of one release.
fn release(n: usize) -> Vec<SearchInput> {
    let components = components(n);
    let fixed_bytes = 300 * MIB;
    let always = components.iter().filter(|c| !c.lazy);
    let (best, next): (u64, u64) = always.fold((0, 0), |(b, n), c| {
        (b + c.variant_bytes[0], n + c.variant_bytes[1])
    });
    let largest_lazy = components
        .iter()
        .filter(|c| c.lazy)
        .map(|c| c.variant_bytes[0])
        .max()
        .unwrap_or(0);
    // Tier k asks for 30 % to 70 % of the saving of one step down everywhere.
    (0..20u64)
        .map(|k| {
            let cut = (best - next) * (30 + 40 * k / 19) / 100;
            SearchInput {
                fixed_bytes,
                memory_limit: fixed_bytes + best + largest_lazy + 64 * MIB - cut,
                min_headroom: 64 * MIB,
                components: components.clone(),
            }
        })
        .collect()
}

#[divan::bench(args = [8, 16, 32, 64])]
fn release_20_tiers(bencher: divan::Bencher, n: usize) {
    let tiers = release(n);
    bencher.bench(|| {
        tiers
            .iter()
            .map(|t| best_fit(divan::black_box(t)))
            .filter(|o| matches!(o, Ok(SearchOutcome::Fits(_))))
            .count()
    });
}

/// `n` components and 20 tiers with limits from the smallest plan to 1 MiB per component above it.
fn near_smallest(n: usize) -> Vec<SearchInput> {
    let components = components(n);
    let fixed_bytes = 300 * MIB;
    let always: u64 = components
        .iter()
        .filter(|c| !c.lazy)
        .map(|c| c.variant_bytes[5])
        .sum();
    let lazy = components
        .iter()
        .filter(|c| c.lazy)
        .map(|c| c.variant_bytes[5])
        .max()
        .unwrap_or(0);
    (0..20u64)
        .map(|k| SearchInput {
            fixed_bytes,
            memory_limit: fixed_bytes + always + lazy + 64 * MIB + k * n as u64 * MIB / 19,
            min_headroom: 64 * MIB,
            components: components.clone(),
        })
        .collect()
}

#[divan::bench(args = [8, 16, 32, 64])]
fn near_smallest_20_tiers(bencher: divan::Bencher, n: usize) {
    let tiers = near_smallest(n);
    bencher.bench(|| {
        tiers
            .iter()
            .map(|t| best_fit(divan::black_box(t)))
            .filter(|o| matches!(o, Ok(SearchOutcome::Fits(_))))
            .count()
    });
}

/// The issue's table input with `n` components.
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

#[divan::bench(args = [8, 10, 12, 16, 32, 64])]
fn issue_table(bencher: divan::Bencher, n: usize) {
    let input = issue_table_input(n);
    bencher.bench(|| best_fit(divan::black_box(&input)));
}
