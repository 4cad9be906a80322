//! Loading the committed manifests and hostile inputs through the library.

use std::path::PathBuf;

use omnipack_manifest::{ResolvedSource, Severity, load};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn committed_manifests_load() {
    for name in [
        "base.yaml",
        "iphone-3gb.yaml",
        "iphone-4gb.yaml",
        "release.yaml",
    ] {
        let path = repo().join("manifests").join(name);
        match load(&path) {
            Ok(m) => assert!(
                m.warnings.is_empty(),
                "{name}: {}",
                omnipack_manifest::render(&m.warnings)
            ),
            Err(d) => panic!("{name}:\n{}", d.render()),
        }
    }
}

/// A minimal safetensors file: 8-byte header length, then `{}`.
fn tiny_safetensors(path: &std::path::Path) {
    let mut bytes = 2u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn extends_across_folders_rebases_paths_and_locates_errors_in_the_base() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("shared/weights")).unwrap();
    std::fs::create_dir_all(root.join("apps/phone")).unwrap();
    tiny_safetensors(&root.join("shared/weights/m.safetensors"));
    std::fs::write(root.join("shared/tok.json"), "{}").unwrap();
    std::fs::write(
        root.join("shared/base.yaml"),
        "omnipack: 1\n\
         package: { name: app, version: 1.0.0, bundle_id: com.example.app }\n\
         runtime_overhead: 100MiB\n\
         components:\n\
         \x20 - name: text\n\
         \x20   role: text_decode_step\n\
         \x20   source: { safetensors: [weights/m.safetensors], prefix: text. }\n\
         \x20   architecture: { layers: 1, kv_heads: 1, kv_head_dim: 8, hidden_size: 8, vocab_size: 8 }\n\
         \x20   max_seq_len: 128\n\
         \x20 - name: tok\n\
         \x20   role: data\n\
         \x20   source: { files: [./tok.json] }\n",
    )
    .unwrap();
    std::fs::write(
        root.join("apps/phone/app.yaml"),
        "omnipack: 1\nextends: ../../shared/base.yaml\nruntime_overhead: 200MiB\n\
         tiers:\n  - { name: small, device_memory: 4GiB, memory_limit: 2GiB }\n",
    )
    .unwrap();
    let m = load(&root.join("apps/phone/app.yaml")).unwrap_or_else(|d| panic!("{}", d.render()));
    assert_eq!(m.files.len(), 2);
    assert_eq!(
        m.resolved.runtime_overhead,
        200 << 20,
        "the child's value wins"
    );
    match &m.resolved.components[0].source {
        ResolvedSource::Safetensors { shards, prefix, .. } => {
            assert_eq!(shards, &["../../shared/weights/m.safetensors"]);
            assert_eq!(prefix, "text.");
            assert!(m.dir.join(&shards[0]).is_file());
        }
        other => panic!("{other:?}"),
    }
    match &m.resolved.components[1].source {
        ResolvedSource::Files { files } => assert_eq!(files, &["../../shared/tok.json"]),
        other => panic!("{other:?}"),
    }
    // Canonical merged JSON: sorted keys, no `extends`, rebased paths.
    let json = serde_json::to_string(&m.merged_json).unwrap();
    assert!(!json.contains("extends"));
    assert!(json.contains("../../shared/weights/m.safetensors"));
    let keys: Vec<&String> = m.merged_json.as_object().unwrap().keys().collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);

    // A located diagnostic for a value written in the base points into the base file.
    let d = m.diagnostic_at(
        "components[0].max_seq_len",
        Severity::Warning,
        "too long",
        Some("shorten it".into()),
    );
    assert!(d.file.ends_with("shared/base.yaml"), "{}", d.file);
    assert_eq!((d.line, d.column), (Some(9), Some(18)));
    assert_eq!(d.path, "components[0].max_seq_len");
    let rendered = d.render();
    assert!(
        rendered.contains("shared/base.yaml:9:18") && rendered.contains("shorten it"),
        "{rendered}"
    );
    // ... and one for a value written in the child points into the child.
    let d = m.diagnostic_at(
        "tiers[0].memory_limit",
        Severity::Error,
        "tier does not fit",
        None,
    );
    assert!(d.file.ends_with("apps/phone/app.yaml"));
    assert_eq!(d.line, Some(5));
    // A defaulted value (not written) points at the nearest enclosing value.
    let d = m.diagnostic_at(
        "components[1].delivery",
        Severity::Warning,
        "delivered on demand",
        None,
    );
    assert!(d.file.ends_with("shared/base.yaml"));
    assert_eq!(d.line, Some(10));
    assert_eq!(m.tier_path("small").as_deref(), Some("tiers[0]"));
    assert_eq!(m.component_path("tok").as_deref(), Some("components[1]"));
    assert!(!m.is_base_only());

    let base = load(&root.join("shared/base.yaml")).unwrap();
    assert!(base.is_base_only());
}

#[test]
fn all_errors_are_reported_with_byte_spans() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.yaml");
    let text = "omnipack: 1\npackage: { name: \"ünï\", version: 1, bundle_id: com.x, hue: 3 }\ntiers:\n  - { name: t, device_memory: 1GiB, memory_limit: 2GiB }\n";
    std::fs::write(&path, text).unwrap();
    let err = load(&path).unwrap_err();
    let errors: Vec<_> = err.iter().filter(|d| d.is_error()).collect();
    assert!(errors.len() >= 3, "{}", err.render());
    for d in &errors {
        let span = d.span.clone().expect("located");
        assert!(text.is_char_boundary(span.start) && text.is_char_boundary(span.end));
    }
    let hue = errors
        .iter()
        .find(|d| d.path == "package.hue")
        .expect("unknown key reported");
    assert_eq!(&text[hue.span.clone().unwrap()], "hue");
    assert_eq!(hue.column, Some(55), "columns count characters, not bytes");
}

#[test]
fn schema_errors_become_advice_at_the_value() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.yaml");
    std::fs::write(
        &path,
        "omnipack: 1\n\
         package: { name: x, version: \"1\", bundle_id: com.x }\n\
         tiers:\n\
         \x20 - { name: t, device_memory: 4GiB, memory_limit: 2GiB, min_headroom: lots }\n\
         components:\n\
         \x20 - name: d\n\
         \x20   role: data\n\
         \x20   runtime: tflite\n\
         \x20   delivery: sometimes\n\
         \x20   source: { command: { run: [sh, x.sh], outputs: [out.json], timeout: 5 } }\n\
         \x20   quantization: { format: int4, group_size: 48 }\n",
    )
    .unwrap();
    let err = load(&path).unwrap_err();
    let find = |p: &str| {
        err.iter()
            .find(|d| d.path == p)
            .unwrap_or_else(|| panic!("{p} not reported:\n{}", err.render()))
    };
    let d = find("tiers[0].min_headroom");
    assert!(
        d.help.as_deref().unwrap().contains("KiB"),
        "size syntax in help"
    );
    let d = find("components[0].runtime");
    assert!(d.message.contains("`tflite`") && d.help.as_deref().unwrap().contains("`llama_cpp`"));
    assert!(
        find("components[0].delivery")
            .help
            .as_deref()
            .unwrap()
            .contains("`on_demand`")
    );
    assert!(
        find("components[0].quantization.group_size")
            .help
            .as_deref()
            .unwrap()
            .contains("`128`")
    );
    assert!(
        find("components[0].source.command.timeout")
            .help
            .as_deref()
            .unwrap()
            .contains("`20m`")
    );
    // No runtime-dependent rule fires for a runtime that does not exist.
    assert!(
        err.iter().all(|d| !d.message.contains("needs runtime")),
        "{}",
        err.render()
    );
}

#[test]
fn only_the_tiers_that_ship_a_decode_step_must_cap_its_context() {
    // `text_b` has no max_seq_len of its own; the only tier that ships it caps the context,
    // the tier without a cap ships `text_a`, which has its own max_seq_len.
    let dir = tempfile::tempdir().unwrap();
    tiny_safetensors(&dir.path().join("m.safetensors"));
    let manifest = |b_tiers: &str| {
        format!(
            "omnipack: 1\n\
             package: {{ name: x, version: \"1\", bundle_id: com.x }}\n\
             tiers:\n\
             \x20 - {{ name: small, device_memory: 3GiB, memory_limit: 1GiB, max_seq_len: 2048, components: [{b_tiers}] }}\n\
             \x20 - {{ name: big, device_memory: 8GiB, memory_limit: 5GiB, components: [text_a] }}\n\
             components:\n\
             \x20 - name: text_a\n\
             \x20   role: text_decode_step\n\
             \x20   source: {{ safetensors: m.safetensors }}\n\
             \x20   architecture: {{ layers: 1, kv_heads: 1, kv_head_dim: 32, hidden_size: 32, vocab_size: 8 }}\n\
             \x20   max_seq_len: 4096\n\
             \x20 - name: text_b\n\
             \x20   role: text_decode_step\n\
             \x20   source: {{ safetensors: m.safetensors }}\n\
             \x20   architecture: {{ layers: 1, kv_heads: 1, kv_head_dim: 32, hidden_size: 32, vocab_size: 8 }}\n"
        )
    };
    let path = dir.path().join("m.yaml");
    std::fs::write(&path, manifest("text_b")).unwrap();
    if let Err(d) = load(&path) {
        panic!("capped by every tier that ships it:\n{}", d.render());
    }
    // Shipped by the uncapped tier too: unbounded there.
    std::fs::write(
        &path,
        manifest("text_b").replace("[text_a]", "[text_a, text_b]"),
    )
    .unwrap();
    let err = load(&path).unwrap_err();
    assert!(
        err.iter().any(|d| d
            .message
            .contains("`text_b`: the KV cache has no length limit")),
        "{}",
        err.render()
    );
}

/// A component in which the schema rejects a value is checked by its name only (duplicates,
/// references), never misread: serde alone would take the list below as a `source` mapping
/// and report a missing safetensors file. A misspelt key does not stop the other rules.
#[test]
fn a_component_the_schema_rejects_is_checked_by_its_name_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.yaml");
    std::fs::write(
        &path,
        "omnipack: 1\n\
         package: { name: x, version: \"1\", bundle_id: com.x }\n\
         tiers:\n\
         \x20 - { name: t, device_memory: 4GiB, memory_limit: 2GiB, components: [tok, nope] }\n\
         components:\n\
         \x20 - { name: tok, role: data, source: [missing.safetensors] }\n\
         \x20 - { name: tok, role: data, source: { files: [gone.json] }, colour: red }\n",
    )
    .unwrap();
    let err = load(&path).unwrap_err();
    let found = |p: &str, text: &str| err.iter().any(|d| d.path == p && d.message.contains(text));
    assert!(
        found("components[0].source", "must be a mapping"),
        "{}",
        err.render()
    );
    assert!(
        found("components[1].name", "duplicate component name"),
        "{}",
        err.render()
    );
    assert!(
        found("components[1].colour", "unknown key"),
        "{}",
        err.render()
    );
    assert!(
        found("tiers[0].components[1]", "unknown component `nope`"),
        "{}",
        err.render()
    );
    assert!(
        err.iter()
            .all(|d| !d.message.contains("missing.safetensors")),
        "{}",
        err.render()
    );
}
