//! Integration tests of `omnipack build` and `omnipack verify` on the real binary.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{bin, omnipack, plan_fixtures, repo as root, s, text, tree};

/// A project folder with the example checkpoint and a manifest whose `tok` data component runs
/// `script` (POSIX sh, `$1` is `{out}`), with the given timeout.
fn project(script: &str, timeout: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    fs::copy(
        root().join("examples/omnicoder-tiny/model.safetensors"),
        d.path().join("model.safetensors"),
    )
    .unwrap();
    write_manifest(d.path(), script, timeout);
    d
}

fn write_manifest(dir: &Path, script: &str, timeout: &str) {
    let script = script.replace('\'', "''");
    let m = format!(
        r#"omnipack: 1
package: {{ name: t, version: 1.0.0, bundle_id: com.example.t }}
runtime_overhead: 100MiB
tiers:
  - {{ name: small, device_memory: 4GiB, memory_limit: 2GiB }}
components:
  - name: text
    role: text_decode_step
    source: {{ safetensors: model.safetensors, prefix: text. }}
    architecture: {{ layers: 4, kv_heads: 4, kv_head_dim: 32, hidden_size: 128, vocab_size: 512 }}
    max_seq_len: 256
    quantization: {{ format: int4, group_size: 64, keep: ["*norm*"] }}
  - name: image_decoder
    role: image_decoder
    source: {{ safetensors: model.safetensors, prefix: image. }}
    quantization: {{ format: int8 }}
  - name: tok
    role: data
    source:
      command:
        run: [sh, -c, '{script}', sh, "{{out}}"]
        outputs: [tok.json]
        timeout: {timeout}
    size: 1KiB
"#
    );
    fs::write(dir.join("omnipack.yaml"), m).unwrap();
}

const GOOD: &str = r#"printf '{"v":1}\n' > "$1/tok.json""#;

fn build(dir: &Path, out: &Path, extra: &[&str]) -> Output {
    let m = dir.join("omnipack.yaml");
    let mut args = vec!["build", s(&m), "--out", s(out)];
    args.extend_from_slice(extra);
    omnipack(&args)
}

#[test]
fn iphone_3gb_builds_verifies_and_detects_one_changed_byte() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("dist");
    let m = root().join("manifests/iphone-3gb.yaml");
    let o = omnipack(&["build", s(&m), "--out", s(&out)]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(out.join("mobile_packager_summary.json").exists());
    let summary: serde_json::Value =
        serde_json::from_slice(&fs::read(out.join("mobile_packager_summary.json")).unwrap())
            .unwrap();
    let bundles = summary["bundles"].as_array().unwrap();
    let roles: Vec<&str> = bundles
        .iter()
        .map(|b| b["role"].as_str().unwrap())
        .collect();
    for r in ["text_decode_step", "image_decoder", "data"] {
        assert!(roles.contains(&r), "{roles:?}");
    }
    assert!(
        bundles
            .iter()
            .any(|b| b["quantization"]["mode"] == "affine")
    );
    for b in bundles {
        let id = b["id"].as_str().unwrap();
        assert!(out.join(format!("bundles/{id}.zip")).exists());
        assert!(out.join(format!("asset-packs/{id}/Manifest.json")).exists());
        assert!(
            out.join(format!("asset-packs/{id}/{id}/bundle.json"))
                .exists()
        );
    }
    // The summary validates against the committed schema.
    let schema_path = root().join("schemas/mobile_packager_summary.schema.json");
    let schema: serde_json::Value =
        serde_json::from_slice(&fs::read(&schema_path).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&summary)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{errors:?}");

    let v = omnipack(&["verify", s(&out)]);
    assert!(v.status.success(), "{}", text(&v));

    // One changed byte in a bundle zip.
    let id = bundles[0]["id"].as_str().unwrap();
    let zip = out.join(format!("bundles/{id}.zip"));
    let mut bytes = fs::read(&zip).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    fs::write(&zip, &bytes).unwrap();
    let v = omnipack(&["verify", s(&out)]);
    assert_eq!(v.status.code(), Some(1), "{}", text(&v));
    assert!(
        text(&v).contains(&format!("bundles/{id}.zip")),
        "{}",
        text(&v)
    );

    // A rebuild repairs it (the corrupted cache entry is detected and rebuilt).
    let o = omnipack(&["build", s(&m), "--out", s(&out)]);
    assert!(o.status.success(), "{}", text(&o));
    let v = omnipack(&["verify", s(&out)]);
    assert!(v.status.success(), "{}", text(&v));

    // One changed byte in an asset-pack file.
    let weights = out.join(format!("asset-packs/{id}/{id}/bundle.json"));
    let mut bytes = fs::read(&weights).unwrap();
    bytes[0] = b' ';
    fs::write(&weights, &bytes).unwrap();
    let v = omnipack(&["verify", s(&out)]);
    assert_eq!(v.status.code(), Some(1), "{}", text(&v));
    assert!(
        text(&v).contains(&format!("asset-packs/{id}/{id}/bundle.json")),
        "{}",
        text(&v)
    );
}

#[test]
fn jobs_1_and_default_are_byte_identical_and_rebuild_is_cached() {
    let p = project(GOOD, "10s");
    let a = p.path().join("a");
    let b = p.path().join("b");
    let o = build(p.path(), &a, &["--jobs", "1"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = build(p.path(), &b, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let ta = tree(&a);
    assert!(ta.len() > 10, "{:?}", ta.keys());
    assert!(ta == tree(&b), "output trees differ");
    // Unchanged rebuild: nothing runs.
    let o = build(p.path(), &a, &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains(" 0 stages ran"), "{}", text(&o));
    assert!(ta == tree(&a), "output trees differ");
    // --no-cache runs everything and gives the same bytes.
    let o = build(p.path(), &a, &["--no-cache"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains(" 0 from the cache"), "{}", text(&o));
    assert!(ta == tree(&a), "output trees differ");
}

#[test]
fn failing_exporter_is_reported_with_its_log_and_output_is_untouched() {
    let p = project(GOOD, "10s");
    let out = p.path().join("dist");
    assert!(build(p.path(), &out, &[]).status.success());
    let before = tree(&out);
    write_manifest(p.path(), "echo exporter-went-boom >&2; exit 7", "10s");
    let o = build(p.path(), &out, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("export:tok"), "{t}");
    assert!(t.contains("exporter-went-boom"), "{t}");
    assert!(t.contains("exit status: 7"), "{t}");
    assert!(
        t.contains("package:tok"),
        "dependent stage should be named as not run: {t}"
    );
    assert!(before == tree(&out), "output trees differ");
}

#[test]
fn hanging_exporter_times_out() {
    let p = project("sleep 60", "1s");
    let t0 = Instant::now();
    let o = build(p.path(), &p.path().join("dist"), &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("did not finish within 1s"),
        "{}",
        text(&o)
    );
    assert!(t0.elapsed() < Duration::from_secs(30));
    assert!(!p.path().join("dist/mobile_packager_summary.json").exists());
}

#[test]
fn exporter_writing_outside_its_folder_is_refused() {
    let p = project(r#"echo x > "$1/../evil"; echo y > "$1/tok.json""#, "10s");
    let o = build(p.path(), &p.path().join("dist"), &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("wrote outside its folder"),
        "{}",
        text(&o)
    );

    write_manifest(p.path(), r#"ln -s /etc/hostname "$1/tok.json""#, "10s");
    let o = build(p.path(), &p.path().join("dist"), &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("symlink"), "{}", text(&o));
}

#[test]
fn killed_build_leaves_previous_output_and_next_build_recovers() {
    let p = project(GOOD, "10s");
    let out = p.path().join("dist");
    assert!(build(p.path(), &out, &[]).status.success());
    let before = tree(&out);
    // Same bundle ids, new bytes, killed at several moments.
    write_manifest(
        p.path(),
        r#"sleep 0.3; printf '{"v":2}\n' > "$1/tok.json""#,
        "10s",
    );
    // Every kill lands before the exporter (which sleeps 0.3 s) is done, so before the swap.
    for delay_ms in [30u64, 120, 240] {
        let m = p.path().join("omnipack.yaml");
        let mut child = Command::new(bin())
            .args(["build", s(&m), "--out", s(&out), "--no-cache"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert!(!status.success());
        assert!(
            before == tree(&out),
            "output changed by a build killed after {delay_ms} ms"
        );
        let v = omnipack(&["verify", s(&out)]);
        assert!(v.status.success(), "{}", text(&v));
    }
    let o = build(p.path(), &out, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let v = omnipack(&["verify", s(&out)]);
    assert!(v.status.success(), "{}", text(&v));
    let tok = tree(&out)
        .into_iter()
        .find(|(k, _)| k.ends_with("/tok.json"))
        .unwrap()
        .1;
    assert_eq!(tok, b"{\"v\":2}\n");
}

#[test]
fn second_concurrent_build_exits_at_once_naming_the_lock() {
    let p = project(r#"sleep 3; printf '{}' > "$1/tok.json""#, "20s");
    let out = p.path().join("dist");
    let m = p.path().join("omnipack.yaml");
    let mut first = Command::new(bin())
        .args(["build", s(&m), "--out", s(&out)])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the first build holds the lock (it writes its pid into it).
    let lock = out.join(".omnipack/lock");
    let t0 = Instant::now();
    while fs::read_to_string(&lock)
        .map(|s| s.trim().is_empty())
        .unwrap_or(true)
    {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "first build never took the lock"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = build(p.path(), &out, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains(".omnipack/lock"), "{}", text(&o));
    // It did not wait for the lock: the first build (its exporter sleeps 3 s) is still running.
    assert!(
        first.try_wait().unwrap().is_none(),
        "the second build waited for the first"
    );
    let status = first.wait().unwrap();
    assert!(status.success());
    assert!(omnipack(&["verify", s(&out)]).status.success());
}

#[test]
fn corrupt_cache_entry_is_detected_and_rebuilt() {
    let p = project(GOOD, "10s");
    let out = p.path().join("dist");
    assert!(build(p.path(), &out, &[]).status.success());
    let before = tree(&out);
    let qdir = out.join(".omnipack/cache/quantize");
    let entry = fs::read_dir(&qdir).unwrap().next().unwrap().unwrap().path();
    let w = entry.join("weights.safetensors");
    let mut bytes = fs::read(&w).unwrap();
    let n = bytes.len();
    bytes.truncate(n - 10);
    fs::write(&w, &bytes).unwrap();
    let o = build(p.path(), &out, &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("cache entry rebuilt"), "{}", text(&o));
    assert!(text(&o).contains("ran    quantize:"), "{}", text(&o));
    assert!(before == tree(&out), "output trees differ");
    assert!(omnipack(&["verify", s(&out)]).status.success());
}

#[test]
fn tier_exporter_gives_one_bundle_per_tier_with_placeholders_filled() {
    let d = tempfile::tempdir().unwrap();
    fs::copy(
        root().join("examples/omnicoder-tiny/model.safetensors"),
        d.path().join("model.safetensors"),
    )
    .unwrap();
    let m = r#"omnipack: 1
package: { name: t, version: 1.0.0, bundle_id: com.example.t }
runtime_overhead: 100MiB
tiers:
  - { name: small, device_memory: 4GiB, memory_limit: 2GiB, max_seq_len: 512 }
  - { name: big, device_memory: 8GiB, memory_limit: 5GiB }
components:
  - name: text
    role: text_decode_step
    source: { safetensors: model.safetensors, prefix: text. }
    architecture: { layers: 4, kv_heads: 4, kv_head_dim: 32, hidden_size: 128, vocab_size: 512 }
    max_seq_len: 1024
    quantization: { format: int4, tiers: { big: { format: int8 } } }
  - name: tok
    role: data
    delivery: on_demand
    source:
      command:
        run: [sh, -c, 'printf "%s|%s|%s" "$2" "$3" "$4" > "$1/tok.json"', sh, "{out}", "{tier}", "{component}", "{max_seq_len}"]
        outputs: [tok.json]
        timeout: 5s
    size: 1KiB
"#;
    fs::write(d.path().join("m.yaml"), m).unwrap();
    let out = d.path().join("out");
    let o = omnipack(&["build", s(&d.path().join("m.yaml")), "--out", s(&out)]);
    assert!(o.status.success(), "{}", text(&o));
    let small = fs::read_to_string(out.join("asset-packs/tok-small/tok-small/tok.json")).unwrap();
    let big = fs::read_to_string(out.join("asset-packs/tok-big/tok-big/tok.json")).unwrap();
    assert_eq!(small, "small|tok|512");
    assert_eq!(big, "big|tok|");
    // Only the tiers asked for.
    let out2 = d.path().join("out2");
    let o = omnipack(&[
        "build",
        s(&d.path().join("m.yaml")),
        "--out",
        s(&out2),
        "--tier",
        "small",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let names: Vec<String> = fs::read_dir(out2.join("bundles"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.contains(&"tok-small.zip".to_string()), "{names:?}");
    // inspect reads bundle zips and summaries.
    let o = omnipack(&["inspect", s(&out.join("bundles/text-int4-g64.zip"))]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("weights.safetensors") && text(&o).contains("16KiB"),
        "{}",
        text(&o)
    );
    let o = omnipack(&["inspect", s(&out.join("mobile_packager_summary.json"))]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("tok-big"), "{}", text(&o));
}

#[test]
fn out_naming_a_file_is_a_clear_error() {
    let d = project(GOOD, "5s");
    let out = d.path().join("dist");
    fs::write(&out, "a file").unwrap();
    let o = build(d.path(), &out, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("is not a folder"), "{}", text(&o));
    assert_eq!(fs::read(&out).unwrap(), b"a file");
}

#[test]
fn foreign_files_in_out_are_never_deleted() {
    let d = project(GOOD, "5s");
    let out = d.path().join("site");
    fs::create_dir_all(out.join("bundles")).unwrap();
    fs::write(out.join("bundles/mine.txt"), "precious").unwrap();
    let o = build(d.path(), &out, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("not an omnipack output folder"),
        "{}",
        text(&o)
    );
    assert_eq!(fs::read(out.join("bundles/mine.txt")).unwrap(), b"precious");
    // An omnipack output whose private folder was deleted (summary intact) is still ours.
    fs::remove_dir_all(out.join("bundles")).unwrap();
    assert!(build(d.path(), &out, &[]).status.success());
    fs::remove_dir_all(out.join(".omnipack")).unwrap();
    let o = build(d.path(), &out, &[]);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn concurrent_builds_sharing_a_cache_dir_both_succeed() {
    let d = tempfile::tempdir().unwrap();
    let man = root().join("manifests/release.yaml");
    for round in 0..4 {
        let cache = d.path().join(format!("cache{round}"));
        let outs: Vec<PathBuf> = (0..2)
            .map(|i| d.path().join(format!("out{round}-{i}")))
            .collect();
        let children: Vec<_> = outs
            .iter()
            .map(|o| {
                Command::new(bin())
                    .args(["build", s(&man), "--out", s(o), "--cache-dir", s(&cache)])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for c in children {
            let o = c.wait_with_output().unwrap();
            assert!(o.status.success(), "round {round}: {}", text(&o));
        }
        assert_eq!(tree(&outs[0]), tree(&outs[1]), "round {round}");
    }
}

#[test]
fn verify_without_a_summary_fails_clearly() {
    let d = tempfile::tempdir().unwrap();
    let o = omnipack(&["verify", s(d.path())]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("mobile_packager_summary.json"),
        "{}",
        text(&o)
    );
}

#[test]
fn shared_cache_dir_and_files_components() {
    let d = tempfile::tempdir().unwrap();
    fs::copy(
        root().join("examples/omnicoder-tiny/model.safetensors"),
        d.path().join("model.safetensors"),
    )
    .unwrap();
    fs::create_dir_all(d.path().join("tok")).unwrap();
    fs::write(d.path().join("tok/vocab.txt"), "a\nb\n").unwrap();
    fs::write(d.path().join("tok/merges.txt"), "a b\n").unwrap();
    let m = r#"omnipack: 1
package: { name: t, version: 1.0.0, bundle_id: com.example.t }
runtime_overhead: 100MiB
tiers:
  - { name: small, device_memory: 4GiB, memory_limit: 2GiB }
components:
  - name: video
    role: video_decoder
    source: { safetensors: [model.safetensors], prefix: video. }
    quantization: { format: int8, group_size: 128, keep: ["*norm*", "*.bias"] }
  - name: vocab
    role: data
    source: { files: [tok/vocab.txt, tok/merges.txt] }
"#;
    fs::write(d.path().join("m.yaml"), m).unwrap();
    let cache = d.path().join("shared-cache");
    let a = d.path().join("a");
    let b = d.path().join("b");
    let man = d.path().join("m.yaml");
    let o = omnipack(&["build", s(&man), "--out", s(&a), "--cache-dir", s(&cache)]);
    assert!(o.status.success(), "{}", text(&o));
    let o = omnipack(&["build", s(&man), "--out", s(&b), "--cache-dir", s(&cache)]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains(" 0 stages ran"), "{}", text(&o));
    assert!(tree(&a) == tree(&b), "output trees differ");
    assert!(!a.join(".omnipack/cache").exists());
    let t = tree(&a);
    let vocab = t
        .iter()
        .find(|(k, _)| k.ends_with("/vocab.txt"))
        .expect("vocab.txt in the asset pack");
    assert_eq!(vocab.1, b"a\nb\n");
    let summary: serde_json::Value =
        serde_json::from_slice(&t["mobile_packager_summary.json"]).unwrap();
    let inputs: Vec<&str> = summary["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        inputs,
        [
            "m.yaml",
            "model.safetensors",
            "tok/merges.txt",
            "tok/vocab.txt"
        ]
    );
    // The copied files are not hard links to the sources: editing a source later cannot change
    // a built output.
    fs::write(d.path().join("tok/vocab.txt"), "changed\n").unwrap();
    assert!(omnipack(&["verify", s(&a)]).status.success());
    let o = omnipack(&["build", s(&man), "--out", s(&a), "--cache-dir", s(&cache)]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("ran    package:vocab"), "{}", text(&o));
    assert!(omnipack(&["verify", s(&a)]).status.success());
}

#[test]
fn builds_killed_at_many_moments_never_leave_a_broken_output() {
    let p = project(GOOD, "10s");
    let out = p.path().join("dist");
    let m = p.path().join("omnipack.yaml");
    assert!(build(p.path(), &out, &[]).status.success());
    for i in 0..8u64 {
        let before = tree(&out);
        write_manifest(
            p.path(),
            &format!(r#"printf '{{"v":{i}}}\n' > "$1/tok.json""#),
            "10s",
        );
        let mut child = Command::new(bin())
            .args(["build", s(&m), "--out", s(&out), "--no-cache"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(15 * i + 5));
        let _ = child.kill();
        let status = child.wait().unwrap();
        let after = tree(&out);
        let interrupted_swap = out.join(".omnipack/swap/READY").exists();
        if !interrupted_swap && after != before {
            // Only a build that got through its swap may change the output, and then the
            // output is its complete new tree.
            let v = omnipack(&["verify", s(&out)]);
            assert!(
                v.status.success(),
                "killed after {} ms (exit {status:?}): {}",
                15 * i + 5,
                text(&v)
            );
            let tok = after
                .iter()
                .find(|(k, _)| k.ends_with("/tok.json"))
                .map(|(_, v)| v.clone());
            assert_eq!(tok, Some(format!("{{\"v\":{i}}}\n").into_bytes()));
        }
        // The next build recovers whatever state the kill left.
        let o = build(p.path(), &out, &[]);
        assert!(o.status.success(), "{}", text(&o));
        let v = omnipack(&["verify", s(&out)]);
        assert!(v.status.success(), "{}", text(&v));
    }
}

#[test]
fn exporter_inputs_are_hashed_into_its_cache_key() {
    let d = tempfile::tempdir().unwrap();
    fs::create_dir_all(d.path().join("src/sub")).unwrap();
    fs::write(d.path().join("src/a.txt"), "one").unwrap();
    fs::write(d.path().join("src/sub/b.txt"), "two").unwrap();
    let m = r#"omnipack: 1
package: { name: t, version: 1.0.0, bundle_id: com.example.t }
runtime_overhead: 100MiB
tiers:
  - { name: small, device_memory: 4GiB, memory_limit: 2GiB }
components:
  - name: blob
    role: data
    source:
      command:
        run: [sh, -c, 'cat src/a.txt src/sub/b.txt > "$1/blob.txt"', sh, "{out}"]
        inputs: [src]
        outputs: [blob.txt]
        timeout: 5s
    size: 1KiB
"#;
    fs::write(d.path().join("m.yaml"), m).unwrap();
    let man = d.path().join("m.yaml");
    let out = d.path().join("out");
    let o = omnipack(&["build", s(&man), "--out", s(&out)]);
    assert!(o.status.success(), "{}", text(&o));
    let summary: serde_json::Value =
        serde_json::from_slice(&fs::read(out.join("mobile_packager_summary.json")).unwrap())
            .unwrap();
    let inputs: Vec<&str> = summary["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["path"].as_str().unwrap())
        .collect();
    assert_eq!(inputs, ["m.yaml", "src/a.txt", "src/sub/b.txt"]);
    let o = omnipack(&["build", s(&man), "--out", s(&out)]);
    assert!(text(&o).contains("cached export:blob"), "{}", text(&o));
    // A changed input file re-runs the exporter.
    fs::write(d.path().join("src/sub/b.txt"), "three").unwrap();
    let o = omnipack(&["build", s(&man), "--out", s(&out)]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("ran    export:blob"), "{}", text(&o));
    let blob = tree(&out)
        .into_iter()
        .find(|(k, _)| k.ends_with("/blob.txt"))
        .map(|(_, v)| v)
        .unwrap();
    assert_eq!(blob, b"onethree");
}

#[test]
fn out_inside_an_exporter_input_folder_is_not_an_input() {
    // `inputs: [.]` with the default `--out dist` next to the manifest: the build's own output,
    // cache and lock must not become exporter inputs (they change with every build).
    let d = tempfile::tempdir().unwrap();
    fs::write(d.path().join("a.txt"), "one").unwrap();
    let m = r#"omnipack: 1
package: { name: t, version: 1.0.0, bundle_id: com.example.t }
runtime_overhead: 100MiB
tiers:
  - { name: small, device_memory: 4GiB, memory_limit: 2GiB }
components:
  - name: blob
    role: data
    source:
      command:
        run: [sh, -c, 'cat a.txt > "$1/blob.txt"', sh, "{out}"]
        inputs: ["."]
        outputs: [blob.txt]
        timeout: 5s
    size: 1KiB
"#;
    fs::write(d.path().join("m.yaml"), m).unwrap();
    let man = d.path().join("m.yaml");
    let out = d.path().join("dist");
    let cache = d.path().join("cache");
    for round in 0..2 {
        let o = omnipack(&["build", s(&man), "--out", s(&out), "--cache-dir", s(&cache)]);
        assert!(o.status.success(), "round {round}: {}", text(&o));
        if round == 1 {
            assert!(text(&o).contains("cached export:blob"), "{}", text(&o));
        }
        let summary: serde_json::Value =
            serde_json::from_slice(&fs::read(out.join("mobile_packager_summary.json")).unwrap())
                .unwrap();
        let inputs: Vec<&str> = summary["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["path"].as_str().unwrap())
            .collect();
        assert_eq!(inputs, ["a.txt", "m.yaml"], "round {round}");
    }
}

#[test]
fn verify_rejects_an_edited_summary() {
    let d = project(GOOD, "5s");
    let out = d.path().join("out");
    let o = build(d.path(), &out, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let path = out.join("mobile_packager_summary.json");
    let good: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    type Edit = fn(&mut serde_json::Value);
    let edits: [(&str, Edit); 5] = [
        ("required_bytes", |v| {
            let t = &mut v["tiers"][0];
            t["required_bytes"] = (t["required_bytes"].as_u64().unwrap() - 1).into();
        }),
        ("memory_limit_bytes", |v| {
            let t = &mut v["tiers"][0];
            t["memory_limit_bytes"] = (t["memory_limit_bytes"].as_u64().unwrap() * 2).into();
        }),
        ("fits", |v| v["tiers"][0]["fits"] = false.into()),
        ("peak_bytes", |v| {
            let m = &mut v["tiers"][0]["memory"];
            m["kv_cache_bytes"] = (m["kv_cache_bytes"].as_u64().unwrap() + 1).into();
        }),
        ("not in `bundles`", |v| {
            v["tiers"][0]["bundles"][0] = "text-int9-g64".into();
        }),
    ];
    for (what, edit) in edits {
        let mut v = good.clone();
        edit(&mut v);
        fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
        let o = omnipack(&["verify", s(&out)]);
        assert_eq!(o.status.code(), Some(1), "{what}: {}", text(&o));
        assert!(text(&o).contains(what), "{what}: {}", text(&o));
    }
    let mut restored = serde_json::to_vec_pretty(&good).unwrap();
    restored.push(b'\n');
    fs::write(&path, &restored).unwrap();
    let o = omnipack(&["verify", s(&out)]);
    assert!(o.status.success(), "{}", text(&o));
    // The app's copy of the summary must be the summary.
    let copy = out.join("app/mobile_packager_summary.json");
    fs::write(&copy, b"{}\n").unwrap();
    let o = omnipack(&["verify", s(&out)]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("app/mobile_packager_summary.json: differs"),
        "{}",
        text(&o)
    );
    fs::write(&copy, &restored).unwrap();
    assert!(omnipack(&["verify", s(&out)]).status.success());
}

#[test]
fn source_config_is_the_base_of_the_bundle_config_json() {
    let d = tempfile::tempdir().unwrap();
    fs::copy(
        root().join("examples/omnicoder-tiny/model.safetensors"),
        d.path().join("model.safetensors"),
    )
    .unwrap();
    fs::create_dir_all(d.path().join("hf")).unwrap();
    // A checkpoint config with its own (bitsandbytes) quantization_config and a torch_dtype:
    // both describe the source, not the bundle, so they are replaced.
    fs::write(
        d.path().join("hf/config.json"),
        r#"{"model_type": "llama", "intermediate_size": 384, "num_attention_heads": 4,
            "rms_norm_eps": 1e-5, "torch_dtype": "bfloat16",
            "quantization_config": {"quant_method": "bitsandbytes"}}"#,
    )
    .unwrap();
    let m = r#"omnipack: 1
package: { name: t, version: 1.0.0, bundle_id: com.example.t }
runtime_overhead: 100MiB
tiers:
  - { name: small, device_memory: 4GiB, memory_limit: 2GiB }
components:
  - name: text
    role: text_decode_step
    source: { safetensors: model.safetensors, prefix: text., config: hf/config.json }
    architecture: { layers: 4, kv_heads: 4, kv_head_dim: 32, hidden_size: 128, vocab_size: 512 }
    max_seq_len: 256
    quantization: { format: int4, group_size: 32, keep: ["*norm*"] }
  - name: image
    role: image_decoder
    source: { safetensors: model.safetensors, prefix: image. }
    quantization: { format: f16 }
"#;
    fs::write(d.path().join("m.yaml"), m).unwrap();
    let man = d.path().join("m.yaml");
    let out = d.path().join("out");
    let o = omnipack(&["build", s(&man), "--out", s(&out)]);
    assert!(o.status.success(), "{}", text(&o));
    let read = |id: &str| -> (Vec<u8>, serde_json::Value) {
        let b = fs::read(out.join(format!("asset-packs/{id}/{id}/config.json"))).unwrap();
        let v = serde_json::from_slice(&b).unwrap();
        (b, v)
    };
    let (bytes, c) = read("text-int4-g32");
    let q = serde_json::json!({"group_size": 32, "bits": 4, "mode": "affine"});
    assert_eq!(c["model_type"], "llama");
    assert_eq!(c["intermediate_size"], 384);
    assert_eq!(c["num_attention_heads"], 4);
    assert_eq!(c["rms_norm_eps"], 1e-5);
    assert_eq!(c["hidden_size"], 128, "from the manifest's architecture");
    assert_eq!(c["num_hidden_layers"], 4);
    assert_eq!(c["quantization"], q);
    assert_eq!(c["quantization_config"], q);
    assert!(c.get("torch_dtype").is_none(), "{c}");
    assert_eq!(c["omnipack_component"], "text");
    // Keys sorted, canonical bytes.
    let keys: Vec<&String> = c.as_object().unwrap().keys().collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
    assert!(bytes.ends_with(b"}\n"));
    // A component without `config` keeps omnipack's own config.json.
    let (_, img) = read("image-f16");
    assert!(img.get("model_type").is_none(), "{img}");
    assert_eq!(img["torch_dtype"], "float16");
    // The config is an input: listed in the summary and part of the cache key.
    let summary: serde_json::Value =
        serde_json::from_slice(&fs::read(out.join("mobile_packager_summary.json")).unwrap())
            .unwrap();
    let inputs: Vec<&str> = summary["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["path"].as_str().unwrap())
        .collect();
    assert_eq!(inputs, ["hf/config.json", "m.yaml", "model.safetensors"]);
    fs::write(
        d.path().join("hf/config.json"),
        r#"{"model_type": "qwen2"}"#,
    )
    .unwrap();
    let o = omnipack(&["build", s(&man), "--out", s(&out)]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("ran    package:text"), "{}", text(&o));
    assert_eq!(read("text-int4-g32").1["model_type"], "qwen2");
    assert!(omnipack(&["verify", s(&out)]).status.success());
}

#[test]
fn an_exporter_written_in_a_base_runs_in_the_base_folder() {
    // The base, in its own folder, runs `scripts/make.sh` relative to itself; a release
    // manifest in another folder extends it. The exporter must find its script.
    let d = tempfile::tempdir().unwrap();
    fs::create_dir_all(d.path().join("shared/scripts")).unwrap();
    fs::create_dir_all(d.path().join("apps/ios")).unwrap();
    fs::write(
        d.path().join("shared/scripts/make.sh"),
        "printf 'made in %s\\n' \"$(basename \"$PWD\")\" > \"$1/made.txt\"\n",
    )
    .unwrap();
    fs::write(
        d.path().join("shared/base.yaml"),
        r#"omnipack: 1
package: { name: t, version: 1.0.0, bundle_id: com.example.t }
components:
  - name: made
    role: data
    source:
      command:
        run: [sh, scripts/make.sh, "{out}"]
        inputs: [scripts/make.sh]
        outputs: [made.txt]
        timeout: 5s
    size: 1KiB
"#,
    )
    .unwrap();
    fs::write(
        d.path().join("apps/ios/release.yaml"),
        r#"omnipack: 1
extends: ../../shared/base.yaml
runtime_overhead: 100MiB
tiers:
  - { name: small, device_memory: 4GiB, memory_limit: 2GiB }
"#,
    )
    .unwrap();
    let man = d.path().join("apps/ios/release.yaml");
    let out = d.path().join("out");
    let o = omnipack(&["build", s(&man), "--out", s(&out)]);
    assert!(o.status.success(), "{}", text(&o));
    let made = tree(&out)
        .into_iter()
        .find(|(k, _)| k.ends_with("/made.txt"))
        .map(|(_, v)| v)
        .expect("made.txt is in the asset pack");
    assert_eq!(made, b"made in shared\n");
}

#[test]
fn a_saved_plan_builds_the_same_outputs_without_the_manifest() {
    let p = project(GOOD, "10s");
    let a = p.path().join("a");
    assert!(build(p.path(), &a, &[]).status.success());
    // The plan, made in the project folder: its paths are relative to `.`.
    let o = Command::new(bin())
        .current_dir(p.path())
        .args(["plan", "omnipack.yaml", "--format", "json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    fs::write(p.path().join("plan.json"), &o.stdout).unwrap();
    // The plan is the program: the manifest is not needed any more.
    fs::remove_file(p.path().join("omnipack.yaml")).unwrap();
    let o = Command::new(bin())
        .current_dir(p.path())
        .args(["build", "--plan", "plan.json", "--out", "b"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(tree(&a) == tree(&p.path().join("b")), "output trees differ");
    // From stdin too.
    let mut child = Command::new(bin())
        .current_dir(p.path())
        .args(["build", "--plan", "-", "--out", "c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        child.stdin.as_mut().unwrap(),
        &fs::read(p.path().join("plan.json")).unwrap(),
    )
    .unwrap();
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    assert!(tree(&a) == tree(&p.path().join("c")), "output trees differ");
}

#[test]
fn a_plan_that_does_not_fit_or_is_not_a_plan_is_refused() {
    let fixtures = plan_fixtures();
    let d = tempfile::tempdir().unwrap();
    let o = Command::new(bin())
        .current_dir(&fixtures)
        .args(["plan", "nofit.yaml", "--format", "json"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let plan = d.path().join("plan.json");
    fs::write(&plan, &o.stdout).unwrap();
    let out = d.path().join("out");
    let o = Command::new(bin())
        .current_dir(&fixtures)
        .args(["build", "--plan", s(&plan), "--out", s(&out)])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("tier `watch` does not fit"),
        "{}",
        text(&o)
    );
    assert!(
        !out.exists(),
        "nothing is written for a plan that cannot be built"
    );
    fs::write(&plan, "{\"stages\": []}").unwrap();
    let o = omnipack(&["build", "--plan", s(&plan), "--out", s(&out)]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("not an omnipack plan"), "{}", text(&o));
    // A manifest and a plan at once is a usage error.
    let o = omnipack(&["build", "m.yaml", "--plan", s(&plan)]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}
