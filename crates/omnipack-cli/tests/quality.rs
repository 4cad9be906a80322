//! Measured quality in builds: `quality` in `bundle.json` and the summary, the `method` of a
//! component (cache keys, bundle ids), and the `min_sqnr_db` floor failing a build at its key.

mod common;

use std::fs;
use std::path::Path;

use common::{omnipack_in, repo, s, stderr, stdout, text};
use serde_json::Value;

/// A project folder with the example checkpoint and a manifest with one tier: `text` in
/// `format` with `quant` added to its quantization block, and an image decoder in f16.
fn project(format: &str, quant: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    fs::copy(
        repo().join("examples/omnicoder-tiny/model.safetensors"),
        d.path().join("model.safetensors"),
    )
    .unwrap();
    let m = format!(
        r#"omnipack: 1
package: {{ name: q, version: 1.0.0, bundle_id: com.example.q }}
tiers:
  - {{ name: small, device_memory: 4GiB, memory_limit: 2GiB }}
components:
  - name: text
    role: text_decode_step
    source: {{ safetensors: model.safetensors, prefix: text. }}
    architecture: {{ layers: 4, kv_heads: 4, kv_head_dim: 32, hidden_size: 128, vocab_size: 512 }}
    max_seq_len: 256
    quantization: {{ format: {format}, group_size: 64, keep: ["*norm*"]{quant} }}
  - name: image_decoder
    role: image_decoder
    source: {{ safetensors: model.safetensors, prefix: image. }}
    quantization: {{ format: f16 }}
"#
    );
    fs::write(d.path().join("omnipack.yaml"), m).unwrap();
    d
}

fn build(dir: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["build", "omnipack.yaml", "--out", s(out)];
    args.extend_from_slice(extra);
    omnipack_in(dir, &args)
}

fn summary(out: &Path) -> Value {
    serde_json::from_slice(&fs::read(out.join("mobile_packager_summary.json")).unwrap()).unwrap()
}

fn bundle(summary: &Value, id: &str) -> Value {
    summary["bundles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["id"] == id)
        .unwrap_or_else(|| panic!("no bundle {id} in {summary}"))
        .clone()
}

/// `bundle.json` of bundle `id`, from its asset-pack folder (the zip holds the same bytes:
/// `omnipack verify` checks it).
fn bundle_json(out: &Path, id: &str) -> Value {
    let path = out.join(format!("asset-packs/{id}/{id}/bundle.json"));
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}

fn sqnr(b: &Value) -> f64 {
    b["quality"]["sqnr_db"].as_f64().unwrap()
}

#[test]
fn bundles_carry_their_measured_quality_and_mse_beats_rtn_without_sharing_a_cache_entry() {
    let rtn = project("int4", "");
    let mse = project("int4", ", method: mse");
    let cache = tempfile::tempdir().unwrap();
    let out_rtn = rtn.path().join("out");
    let out_mse = mse.path().join("out");
    let o = build(rtn.path(), &out_rtn, &["--cache-dir", s(cache.path())]);
    assert!(o.status.success(), "{}", text(&o));
    let o = build(mse.path(), &out_mse, &["--cache-dir", s(cache.path())]);
    assert!(o.status.success(), "{}", text(&o));
    // The mse variant was quantized, not taken from the rtn entry (same id, other bytes).
    assert!(!stdout(&o).contains(" 0 stages ran"), "{}", text(&o));
    let (sr, sm) = (summary(&out_rtn), summary(&out_mse));
    let (tr, tm) = (bundle(&sr, "text-int4-g64"), bundle(&sm, "text-int4-g64"));
    assert_ne!(tr["sha256"], tm["sha256"]);
    assert_eq!(tr["quantization"]["method"], "rtn");
    assert_eq!(tm["quantization"]["method"], "mse");
    // 4-bit groups of 64 on the example's Gaussian weights: about 20 dB; mse gains.
    assert!((15.0..30.0).contains(&sqnr(&tr)), "{tr}");
    assert!(sqnr(&tm) > sqnr(&tr) + 0.3, "rtn {tr} mse {tm}");
    for (out, s) in [(&out_rtn, &sr), (&out_mse, &sm)] {
        for b in s["bundles"].as_array().unwrap() {
            let id = b["id"].as_str().unwrap();
            assert_eq!(bundle_json(out, id)["quality"], b["quality"], "{id}");
            let q = &b["quality"];
            let keys: Vec<&String> = q.as_object().unwrap().keys().collect();
            assert_eq!(
                keys,
                ["sqnr_db", "worst_tensor", "worst_sqnr_db", "rel_rms_error"]
            );
            let rel = q["rel_rms_error"].as_f64().unwrap();
            match q["sqnr_db"].as_f64() {
                // rel_rms_error = 10^(-sqnr/20).
                Some(db) => assert!((rel - 10f64.powf(-db / 20.0)).abs() < 1e-9, "{q}"),
                None => assert_eq!(rel, 0.0),
            }
            if let Some(w) = q["worst_sqnr_db"].as_f64() {
                assert!(w <= q["sqnr_db"].as_f64().unwrap() + 1e-9, "{q}");
                assert!(q["worst_tensor"].as_str().unwrap().ends_with(".weight"));
            }
        }
    }
    // f16 image decoder from an f32 (or f16) source: measured as a cast, never worse than int4.
    let img = bundle(&sr, "image_decoder-f16");
    assert!(
        img["quality"]["rel_rms_error"].as_f64().unwrap() < 1e-3,
        "{img}"
    );
    assert!(img["quantization"].get("method").is_none(), "{img}");

    // A rebuild from the cache carries the same quality, and verify checks it.
    let again = rtn.path().join("again");
    let o = build(rtn.path(), &again, &["--cache-dir", s(cache.path())]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(stdout(&o).contains(" 0 stages ran"), "{}", text(&o));
    assert_eq!(summary(&again)["bundles"], sr["bundles"]);
    let o = omnipack_in(rtn.path(), &["verify", "again"]);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn a_variant_below_min_sqnr_db_fails_the_build_at_that_key() {
    let fixture = "crates/omnipack-cli/tests/fixtures/int2-below-floor.yaml";
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    // The plan says the floor is checked when building.
    let o = omnipack_in(&repo(), &["plan", fixture]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        stdout(&o).contains(
            "quality floors (min_sqnr_db), checked at build time once each variant is quantized:\n  text-int2-g64: at least 40 dB SQNR (tier small; components[0].quantization.tiers.small.min_sqnr_db)\n  text-int8-g64: at least 20 dB SQNR (tier large; components[0].quantization.min_sqnr_db)"
        ),
        "{}",
        stdout(&o)
    );
    let o = omnipack_in(&repo(), &["plan", fixture, "--format", "json"]);
    let plan: Value = serde_json::from_slice(&o.stdout).unwrap();
    let q = plan["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|st| st["id"] == "quantize:text-int2-g64")
        .unwrap();
    assert_eq!(q["params"]["method"], "mse");
    assert_eq!(
        q["params"]["quality_floors"][0],
        serde_json::json!({
            "min_sqnr_db": 40.0,
            "tiers": ["small"],
            "manifest_path": "components[0].quantization.tiers.small.min_sqnr_db",
            "checked_at": "build"
        })
    );

    let o = omnipack_in(
        &repo(),
        &["build", fixture, "--out", s(&out), "--jobs", "1"],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(!out.join("mobile_packager_summary.json").exists());
    let err = stderr(&o);
    // The located diagnostic: from its first line, without the progress lines before it (they
    // carry timings) nor the closing line naming the temporary output folder.
    let located: String = err
        .lines()
        .skip_while(|l| !l.starts_with("  × stage"))
        .filter(|l| !l.contains(s(&out)) && !l.starts_with("note: not run"))
        .map(|l| format!("{l}\n"))
        .collect();
    insta::assert_snapshot!("int2_below_floor", located);
    assert!(
        err.contains("int2-below-floor.yaml:26:"),
        "located at the tier's key: {err}"
    );
    assert!(err.contains("its worst tensor is `"), "{err}");

    // A saved plan has no manifest to point into: the key's path is named instead.
    let plan_file = dir.path().join("plan.json");
    fs::write(&plan_file, serde_json::to_vec(&plan).unwrap()).unwrap();
    let o = omnipack_in(
        &repo(),
        &["build", "--plan", s(&plan_file), "--out", s(&out)],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        stderr(&o).contains(
            "components[0].quantization.tiers.small.min_sqnr_db: bundle `text-int2-g64` measures "
        ),
        "{}",
        stderr(&o)
    );
}
