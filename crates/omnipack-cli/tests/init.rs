//! Integration tests of `omnipack init` on the real binary: a manifest written for the example
//! checkpoint validates and builds; an existing file is never replaced; bad input is a clear
//! error naming the file.

mod common;

use std::fs;
use std::path::Path;

use common::{omnipack_in, repo, stderr, stdout, text};

/// A folder with the example checkpoint and its text model's config as `config.json`.
fn checkpoint_folder() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let ex = repo().join("examples/omnicoder-tiny");
    fs::copy(
        ex.join("model.safetensors"),
        d.path().join("model.safetensors"),
    )
    .unwrap();
    fs::copy(ex.join("text-config.json"), d.path().join("config.json")).unwrap();
    d
}

#[test]
fn init_writes_a_manifest_that_validates_and_builds() {
    let d = checkpoint_folder();
    fs::create_dir(d.path().join("pack")).unwrap();
    let o = omnipack_in(
        d.path(),
        &["init", "model.safetensors", "--out", "pack/omnicoder.yaml"],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        stderr(&o).contains("wrote pack/omnicoder.yaml"),
        "{}",
        text(&o)
    );
    let m = fs::read_to_string(d.path().join("pack/omnicoder.yaml")).unwrap();
    assert!(
        m.starts_with("# yaml-language-server: $schema=omnipack-manifest.schema.json\n"),
        "{m}"
    );
    // Paths relative to the manifest's folder; one component per prefix, roles guessed.
    assert!(m.contains("safetensors: \"../model.safetensors\""), "{m}");
    assert!(m.contains("config: \"../config.json\""), "{m}");
    for (name, role) in [
        ("image", "image_decoder"),
        ("text", "text_decode_step"),
        ("video", "video_decoder"),
    ] {
        assert!(
            m.contains(&format!("  - name: {name} ")) && m.contains(&format!("role: {role} ")),
            "{name}: {m}"
        );
    }
    assert!(
        m.contains(
            "architecture: { layers: 4, kv_heads: 4, kv_head_dim: 32, hidden_size: 128, vocab_size: 512 }"
        ),
        "{m}"
    );
    assert!(m.contains("docs/manifest.md"), "{m}");
    assert!(
        m.contains("name: iphone-3gb") && m.contains("name: iphone-6gb"),
        "{m}"
    );

    let v = omnipack_in(d.path(), &["validate", "pack/omnicoder.yaml"]);
    assert!(v.status.success(), "{}\n{m}", text(&v));
    let b = omnipack_in(
        d.path(),
        &[
            "build",
            "pack/omnicoder.yaml",
            "--out",
            "dist",
            "--no-cache",
        ],
    );
    assert!(b.status.success(), "{}\n{m}", text(&b));
    let summary = fs::read_to_string(d.path().join("dist/mobile_packager_summary.json")).unwrap();
    assert!(summary.contains("iphone-3gb") && summary.contains("iphone-6gb"));
    let verify = omnipack_in(d.path(), &["verify", "dist"]);
    assert!(verify.status.success(), "{}", text(&verify));
}

#[test]
fn init_of_a_folder_finds_its_checkpoint_and_prints_with_out_dash() {
    let d = checkpoint_folder();
    let o = omnipack_in(d.path(), &["init", ".", "--out", "-"]);
    assert!(o.status.success(), "{}", text(&o));
    let m = stdout(&o);
    assert!(m.contains("safetensors: \"model.safetensors\""), "{m}");
    assert!(m.contains("config: \"config.json\""), "{m}");
    // Nothing written: the default file is only for a run without `--out -`.
    assert!(!d.path().join("omnipack.yaml").exists());
}

#[test]
fn init_of_a_shard_index_lists_its_shards_and_validates() {
    let d = checkpoint_folder();
    let header = fs::read(d.path().join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(header[..8].try_into().unwrap()) as usize;
    let h: serde_json::Value = serde_json::from_slice(&header[8..8 + n]).unwrap();
    let map: serde_json::Map<String, serde_json::Value> = h
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| *k != "__metadata__")
        .map(|k| (k.clone(), "model.safetensors".into()))
        .collect();
    fs::write(
        d.path().join("model.safetensors.index.json"),
        serde_json::json!({ "weight_map": map }).to_string(),
    )
    .unwrap();
    // The folder's index is preferred over its single file.
    let o = omnipack_in(d.path(), &["init", "."]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        stderr(&o).contains("model.safetensors.index.json"),
        "{}",
        text(&o)
    );
    // `source.safetensors` names the shards, not the index.
    let m = fs::read_to_string(d.path().join("omnipack.yaml")).unwrap();
    assert!(m.contains("safetensors: \"model.safetensors\""), "{m}");
    let v = omnipack_in(d.path(), &["validate", "omnipack.yaml"]);
    assert!(v.status.success(), "{}\n{m}", text(&v));
}

#[test]
fn init_without_out_writes_omnipack_yaml_and_never_replaces_a_file() {
    let d = checkpoint_folder();
    let first = omnipack_in(d.path(), &["init", "model.safetensors"]);
    assert!(first.status.success(), "{}", text(&first));
    let written = fs::read(d.path().join("omnipack.yaml")).unwrap();
    let again = omnipack_in(d.path(), &["init", "model.safetensors"]);
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    assert!(
        stderr(&again).contains("omnipack.yaml: already exists"),
        "{}",
        text(&again)
    );
    assert_eq!(fs::read(d.path().join("omnipack.yaml")).unwrap(), written);
    // No temporary file left behind.
    let names: Vec<String> = fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
}

#[test]
fn init_errors_name_the_file_and_exit_1() {
    let d = tempfile::tempdir().unwrap();
    fs::write(d.path().join("notes.txt"), "not a model\n").unwrap();
    fs::write(d.path().join("empty.safetensors"), b"\x02\0\0\0\0\0\0\0{}").unwrap();
    fs::create_dir(d.path().join("nothing")).unwrap();
    for (arg, want) in [
        ("missing.safetensors", "missing.safetensors: cannot read it"),
        (
            "notes.txt",
            "notes.txt: not a safetensors file or a shard index",
        ),
        ("empty.safetensors", "empty.safetensors: holds no tensors"),
        ("nothing", "nothing: a folder without a .safetensors file"),
    ] {
        let o = omnipack_in(d.path(), &["init", arg, "--out", "-"]);
        assert_eq!(o.status.code(), Some(1), "{arg}: {}", text(&o));
        assert!(stderr(&o).contains(want), "{arg}: {}", text(&o));
        assert!(!stderr(&o).contains("internal error"), "{}", text(&o));
        assert!(stdout(&o).is_empty());
    }
    assert!(!Path::new(&d.path().join("omnipack.yaml")).exists());
}
