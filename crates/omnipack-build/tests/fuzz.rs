//! Fuzzing on stable Rust: arbitrary and mutated bundle zips through the zip reader, arbitrary
//! and mutated summaries through the summary reader and its description. No input may panic;
//! the zip reader never hashes more bytes than the file holds. The case count is small so CI
//! stays fast; `OMNIPACK_FUZZ_CASES=100000 cargo test -p omnipack-build --test fuzz` runs a
//! longer campaign.

use omnipack_build::bundle_zip::{Entry, read_zip_entries, write_zip};
use omnipack_build::verify::{describe_summary, read_summary};
use proptest::prelude::*;

fn cases() -> u32 {
    std::env::var("OMNIPACK_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(96)
}

/// A real bundle zip of two entries, the seed the mutations start from.
fn seed_zip() -> Vec<u8> {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("b.zip");
    write_zip(
        &p,
        vec![
            Entry::bytes("bundle.json", br#"{"a":1}"#.to_vec()),
            Entry::bytes("weights.safetensors", vec![3u8; 300]),
        ],
        &|_| {},
    )
    .unwrap();
    std::fs::read(&p).unwrap()
}

/// A real summary, the seed of the summary mutations.
const SEED_SUMMARY: &str =
    include_str!("../../omnipack-cli/tests/snapshots/golden__release_summary.snap");

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn zips_never_panic_nor_hash_more_than_the_file(
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        cut in prop::option::of(any::<prop::sample::Index>()),
        random in prop::option::of(prop::collection::vec(any::<u8>(), 0..512)),
    ) {
        let mut z = random.unwrap_or_else(seed_zip);
        for (at, b) in flips {
            if !z.is_empty() {
                let i = at.index(z.len());
                z[i] = b;
            }
        }
        if let Some(c) = cut {
            let n = c.index(z.len() + 1);
            z.truncate(n);
        }
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.zip");
        std::fs::write(&p, &z).unwrap();
        if let Ok(entries) = read_zip_entries(&p) {
            let hashed: u64 = entries.iter().map(|e| e.size).sum();
            // Stored entries never overlap; deflated ones may expand, but each is read once.
            if entries.iter().all(|e| e.stored) {
                prop_assert!(hashed <= z.len() as u64, "{hashed} > {}", z.len());
            }
        }
    }

    #[test]
    fn summaries_never_panic(
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        random in prop::option::of(prop::collection::vec(any::<u8>(), 0..512)),
    ) {
        let seed = SEED_SUMMARY
            .split_once("\n---\n")
            .map(|(_, body)| body)
            .unwrap_or(SEED_SUMMARY);
        let mut s = random.unwrap_or_else(|| seed.as_bytes().to_vec());
        for (at, b) in flips {
            if !s.is_empty() {
                let i = at.index(s.len());
                s[i] = b;
            }
        }
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("mobile_packager_summary.json");
        std::fs::write(&p, &s).unwrap();
        if read_summary(&p).is_ok() {
            prop_assert!(describe_summary(&p).is_ok());
        }
    }
}
