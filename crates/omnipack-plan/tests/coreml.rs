//! Core ML components: the planner sizes every variant from the model with the compression's
//! layout function, so the planned `weights_bytes` equals the stored bytes of the package the
//! build writes (checked here by writing it), and the memory model uses the real parameter
//! count.

use std::path::{Path, PathBuf};

use omnipack_coreml::{CompressionConfig, compress, open};
use omnipack_manifest::{Format, load};
use omnipack_plan::sizing::coreml_config;
use omnipack_plan::{ComponentSizer, SizeSource, plan};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../omnipack-coreml/tests/data")
        .join(name)
        .canonicalize()
        .expect("the fixture exists")
}

/// A manifest with one Core ML decode step read from `model`, no `architecture`.
fn manifest(dir: &Path, model: &Path, formats: &str, group: u32, units: &str) -> PathBuf {
    let m = format!(
        r#"omnipack: 1
package: {{ name: t, version: 1.0.0, bundle_id: com.example.t }}
tiers:
  - {{ name: small, device_memory: 4GiB, memory_limit: 2GiB, max_seq_len: 2048 }}
components:
  - name: text
    role: text_decode_step
    runtime: coreml
    compute_units: {units}
    source: {{ mlpackage: "{}" }}
    max_seq_len: 4096
    quantization: {{ format: {formats}, group_size: {group} }}
"#,
        model.display()
    );
    let p = dir.join("omnipack.yaml");
    std::fs::write(&p, m).unwrap();
    p
}

#[test]
fn planned_weights_bytes_equal_the_written_package_for_every_format() {
    let model_path = data("decode_step_ios18.mlpackage");
    let model = open(&model_path).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (Format::F16, 64),
        (Format::Int8, 64),
        (Format::Int4, 32),
        (Format::Int4, 64),
        (Format::Int4, 128),
    ];
    for (format, group) in cases {
        let m = manifest(
            dir.path(),
            &model_path,
            format.as_str(),
            group,
            "cpu_and_ne",
        );
        let loaded = load(&m).unwrap_or_else(|e| panic!("{format} g{group}: {e:?}"));
        let c = &loaded.resolved.components[0];
        let sizer = ComponentSizer::new(c, &loaded.dir).unwrap();
        assert_eq!(sizer.source, SizeSource::Model);
        let planned = sizer.weights_bytes(format, group).unwrap();
        let layout = sizer.coreml_plan(format, group).unwrap().unwrap();

        let out = dir.path().join(format!("{format}-{group}.mlpackage"));
        let config: CompressionConfig = coreml_config(format, group, &[]).unwrap();
        compress(&model, &config, &out).unwrap();
        let written = open(&out).unwrap().facts().unwrap();
        assert_eq!(planned, written.stored_bytes, "{format} g{group}");
        let weight_bin = std::fs::metadata(out.join("Data/com.apple.CoreML/weights/weight.bin"))
            .unwrap()
            .len();
        assert_eq!(layout.weight_bin_bytes, weight_bin, "{format} g{group}");

        // The plan shows it: size source, the real parameter count, the bundle's bytes.
        let p = plan(&loaded, &[]).unwrap();
        let cp = &p.components[0];
        assert_eq!(cp.size_source, "model");
        assert_eq!(
            cp.parameters,
            model.facts().unwrap().weights.unwrap().parameters
        );
        let b = &p.bundles[0];
        assert_eq!(b.weights_bytes, written.stored_bytes, "{}", b.id);
        let q = b
            .quantization
            .as_ref()
            .and_then(|q| q.coreml.as_ref())
            .expect("a Core ML record");
        assert_eq!(q.deployment_target, "iOS 18");
        assert_eq!(q.format, format);
        // Bundle ids as for other formats; Core ML int8 is per channel, so no group.
        match format {
            Format::Int4 => assert_eq!(b.id, format!("text-int4-g{group}")),
            Format::F16 => assert_eq!(b.id, "text-f16"),
            _ => assert_eq!(b.id, "text-int8"),
        }
    }
}

#[test]
fn memory_rows_use_the_real_parameter_count_and_full_state_buffers() {
    let dir = tempfile::tempdir().unwrap();
    // On the CPU or GPU, Core ML decompresses to f16: parameters * 2, whatever the format.
    let model_path = data("decode_step_ios18.mlpackage");
    let params = open(&model_path)
        .unwrap()
        .facts()
        .unwrap()
        .weights
        .unwrap()
        .parameters;
    let m = manifest(dir.path(), &model_path, "int4", 32, "cpu_and_gpu");
    let p = plan(&load(&m).unwrap(), &[]).unwrap();
    assert_eq!(p.bundles[0].resident_bytes, params * 2);
    assert!(
        p.warnings
            .iter()
            .any(|w| w.message.contains("decompresses")),
        "{:?}",
        p.warnings
    );

    // The iOS 18 stateful form: its 8 states [1, 2, 4096, 16] fp16 count at full size, though
    // the tier's context is 2048.
    let stateful = data("decode_step_ios18_stateful.mlpackage");
    let m = manifest(dir.path(), &stateful, "f16", 64, "cpu_and_ne");
    let loaded = load(&m).unwrap();
    let c = &loaded.resolved.components[0];
    let arch = c.architecture.expect("read from the model");
    assert_eq!(
        (
            arch.layers,
            arch.kv_heads,
            arch.kv_head_dim,
            arch.vocab_size
        ),
        (4, 2, 16, 64)
    );
    let states = 8 * 2 * 4096 * 16 * 2;
    assert_eq!(c.coreml.as_ref().unwrap().state_bytes, Some(states));
    let p = plan(&loaded, &[]).unwrap();
    assert_eq!(p.tiers[0].entry.memory.kv_cache_bytes, states);
}
