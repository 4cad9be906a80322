//! The planner's sizing of Core ML variants: for every format and block size, the planned
//! `weights_bytes` equals the stored bytes of the package the compression writes (re-read
//! from disk), and formats the model cannot take are errors about that format.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use omnipack_coreml::{CompressionConfig, compress, open};
use omnipack_manifest::Format;
use omnipack_plan::ComponentSizer;
use omnipack_plan::sizing::{SizeSource, core_ml_format};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixture(name: &str) -> PathBuf {
    repo().join(format!(
        "crates/omnipack-coreml/tests/data/{name}.mlpackage"
    ))
}

/// `(format, group size)` of every variant the planner may size for a Core ML component.
const VARIANTS: [(Format, u32); 5] = [
    (Format::F16, 64),
    (Format::Int8, 64),
    (Format::Int4, 32),
    (Format::Int4, 64),
    (Format::Int4, 128),
];

#[test]
fn planned_weights_bytes_equal_the_written_bytes_for_every_format_and_block_size() {
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    let mut refused = 0;
    for (name, path) in [
        (
            "example",
            repo().join("examples/omnicoder-tiny/omnicoder_decode_step.mlpackage"),
        ),
        ("decode_step_ios18", fixture("decode_step_ios18")),
        ("decode_step_ios17", fixture("decode_step_ios17")),
        (
            "omnicoder_decode_step_ios18",
            fixture("omnicoder_decode_step_ios18"),
        ),
        ("compression_zoo_ios18", fixture("compression_zoo_ios18")),
    ] {
        let model = Arc::new(open(&path).unwrap());
        let keep = if name.starts_with("compression_zoo") {
            vec!["weight_with_inf*".to_string()]
        } else {
            Vec::new()
        };
        let sizer = ComponentSizer::core_ml(model.clone(), keep.clone()).unwrap();
        assert_eq!(sizer.source, SizeSource::Model);
        assert_eq!(
            sizer.parameters,
            model.facts().unwrap().weights.unwrap().parameters,
            "{name}"
        );
        assert!(sizer.is_native());
        for (format, group) in VARIANTS {
            let planned = sizer.weights_bytes(format, group);
            let config = CompressionConfig {
                format: core_ml_format(format, group).unwrap(),
                keep: keep.clone(),
            };
            let out = dir
                .path()
                .join(format!("{name}-{format}-{group}.mlpackage"));
            match compress(&model, &config, &out) {
                Ok(plan) => {
                    let written = open(&out).unwrap().facts().unwrap();
                    let planned = planned.unwrap_or_else(|e| panic!("{name} {format}: {e:?}"));
                    assert_eq!(planned, written.stored_bytes, "{name} {format} g{group}");
                    assert_eq!(planned, plan.weights_bytes, "{name} {format} g{group}");
                    assert_eq!(
                        written.weights.as_ref().unwrap().parameters,
                        sizer.parameters,
                        "{name} {format}"
                    );
                    checked += 1;
                }
                Err(e) => {
                    // What the compression refuses, the planner refuses too (int4 on iOS 17).
                    let err = planned.expect_err(&format!("{name} {format}: {e}"));
                    assert_eq!(err.format, Some(format));
                    assert_eq!(err.field, "quantization.format");
                    refused += 1;
                }
            }
        }
    }
    // Refused: int4 (3 block sizes) on the iOS 16 example and the iOS 17 decode step, and
    // f16 on the zoo (it has an fp32 weight).
    assert_eq!((checked, refused), (18, 7));
}

#[test]
fn int4_before_ios18_is_an_error_about_the_format_naming_the_target() {
    let model = Arc::new(open(&fixture("decode_step_ios17")).unwrap());
    let sizer = ComponentSizer::core_ml(model, Vec::new()).unwrap();
    let err = sizer.weights_bytes(Format::Int4, 32).unwrap_err();
    assert_eq!(err.format, Some(Format::Int4));
    assert!(err.message.contains("iOS 18"), "{}", err.message);
    assert!(err.message.contains("iOS 17"), "{}", err.message);
    assert!(err.help.is_some());
    // int8 and f16 are fine on iOS 17.
    assert!(sizer.weights_bytes(Format::Int8, 32).unwrap() > 0);
    assert!(sizer.weights_bytes(Format::F16, 32).unwrap() > 0);
}

#[test]
fn formats_core_ml_is_not_written_in_are_errors_about_the_format() {
    let model = Arc::new(open(&fixture("decode_step_ios18")).unwrap());
    let sizer = ComponentSizer::core_ml(model, Vec::new()).unwrap();
    for format in [Format::Int3, Format::Nf4, Format::Bf16, Format::F32] {
        let err = sizer.weights_bytes(format, 64).unwrap_err();
        assert_eq!(err.format, Some(format));
        assert!(
            err.message.contains("not a Core ML weight format"),
            "{}",
            err.message
        );
    }
}

#[test]
fn smaller_formats_plan_fewer_bytes() {
    let model = Arc::new(
        open(
            &repo().join("crates/omnipack-coreml/tests/data/omnicoder_decode_step_ios18.mlpackage"),
        )
        .unwrap(),
    );
    let sizer = ComponentSizer::core_ml(model, Vec::new()).unwrap();
    let f16 = sizer.weights_bytes(Format::F16, 64).unwrap();
    let int8 = sizer.weights_bytes(Format::Int8, 64).unwrap();
    let int4 = sizer.weights_bytes(Format::Int4, 32).unwrap();
    assert!(f16 > int8 && int8 > int4, "{f16} {int8} {int4}");
}
