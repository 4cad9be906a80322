//! `omnipack plan` end to end: the real binary on fixture manifests.

mod common;

use omnipack_summary::TierEntry;

use common::{omnipack_in, plan_fixtures, stderr, stdout};

/// Runs `omnipack plan ARGS` in the fixtures folder (so paths in messages are relative).
fn plan(args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["plan"];
    all.extend_from_slice(args);
    let out = omnipack_in(&plan_fixtures(), &all);
    (out.status.code().unwrap_or(-1), stdout(&out), stderr(&out))
}

#[test]
fn human_table_for_a_fitting_manifest() {
    let (code, stdout, _stderr) = plan(&["tiny.yaml"]);
    assert_eq!(code, 0, "{stdout}");
    insta::assert_snapshot!("tiny_human", stdout);
}

#[test]
fn text_is_the_format_word_and_human_its_alias() {
    let (code, default, _) = plan(&["tiny.yaml"]);
    assert_eq!(code, 0);
    for word in ["text", "human"] {
        let (code, stdout, stderr) = plan(&["tiny.yaml", "--format", word]);
        assert_eq!(code, 0, "{word}: {stderr}");
        assert_eq!(stdout, default, "--format {word}");
    }
}

#[test]
fn essential_bundles_used_by_some_tiers_are_warned_about() {
    let (code, _stdout, stderr) = plan(&["tiny.yaml"]);
    assert_eq!(code, 0);
    insta::assert_snapshot!("tiny_warnings", stderr);
}

#[test]
fn a_tier_that_does_not_fit_fails_at_its_memory_limit() {
    let (code, stdout, stderr) = plan(&["nofit.yaml"]);
    assert_eq!(code, 1);
    assert!(stdout.contains("fits: NO"), "{stdout}");
    assert!(stderr.contains("nofit.yaml:7:19"), "{stderr}");
    insta::assert_snapshot!("nofit_diagnostic", stderr);
}

#[test]
fn a_manifest_in_decimal_units_gets_sizes_in_decimal_units() {
    let (code, _, stderr) = plan(&["nofit-decimal.yaml"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("exceeds memory_limit 12.00 MB"), "{stderr}");
    assert!(!stderr.contains("MiB"), "{stderr}");
    insta::assert_snapshot!("nofit_decimal_diagnostic", stderr);
}

#[test]
fn json_tiers_have_the_summary_field_names() {
    let (code, stdout, _) = plan(&["tiny.yaml", "--format", "json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("JSON on stdout");
    let tiers = v["tiers"].as_array().expect("tiers[]");
    assert_eq!(tiers.len(), 2);
    for t in tiers {
        // Every summary field is there, with the summary's names.
        let mut t = t.clone();
        let obj = t.as_object_mut().expect("object");
        obj.remove("min_headroom_bytes");
        obj.remove("choices");
        obj.remove("rank_sum");
        obj.remove("step_ups");
        let entry: TierEntry = serde_json::from_value(t).expect("a summary tiers[] element");
        assert!(entry.fits);
        let m = &entry.memory;
        assert_eq!(
            m.peak_bytes,
            m.runtime_overhead_bytes
                + m.weights_resident_bytes
                + m.activations_bytes
                + m.kv_cache_bytes
                + m.lazy_peak_bytes
        );
        assert_eq!(
            m.headroom_bytes,
            entry.memory_limit_bytes as i64 - m.peak_bytes as i64
        );
    }
    assert_eq!(v["tiers"][0]["name"], "small");
    assert_eq!(v["tiers"][0]["kv_cache"]["tokens"], 1024);
    assert_eq!(v["tiers"][0]["bundles"][0], "text-int8-g64");
}

#[test]
fn json_of_a_failing_plan_is_still_printed() {
    let (code, stdout, _) = plan(&["nofit.yaml", "--format", "json"]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("JSON on stdout");
    assert_eq!(v["tiers"][0]["fits"], false);
    assert!(
        v["tiers"][0]["memory"]["headroom_bytes"]
            .as_i64()
            .unwrap_or(0)
            < 0
    );
}

#[test]
fn tier_selection() {
    let (code, stdout, _) = plan(&["tiny.yaml", "--tier", "large", "--format", "json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("JSON on stdout");
    assert_eq!(v["tiers"].as_array().map(Vec::len), Some(1));
    assert_eq!(v["tiers"][0]["name"], "large");
    // Only the large tier's bundles are built.
    let ids: Vec<&str> = v["bundles"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|b| b["id"].as_str())
        .collect();
    assert_eq!(
        ids,
        ["image_decoder-f16", "text-f16", "video_decoder-int8-g32"]
    );
}

#[test]
fn unknown_tier_lists_the_valid_ones() {
    let (code, stdout, stderr) = plan(&["tiny.yaml", "--tier", "huge"]);
    assert_eq!(code, 1);
    assert!(stdout.is_empty());
    assert!(stderr.contains("unknown tier `huge`"), "{stderr}");
    assert!(stderr.contains("valid tiers: small, large"), "{stderr}");
}

#[test]
fn same_input_same_output() {
    let a = plan(&["tiny.yaml", "--format", "json"]);
    let b = plan(&["tiny.yaml", "--format", "json"]);
    assert_eq!(a, b);
}

#[test]
fn a_lone_hint_has_no_bullet() {
    let (code, _stdout, stderr) = plan(&["tiny.yaml", "--tier", "nope"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("help: valid tiers: "), "{stderr}");
    assert!(!stderr.contains("help: -"), "{stderr}");
}
