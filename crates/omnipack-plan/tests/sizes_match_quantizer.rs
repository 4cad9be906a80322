//! Planned `weights_bytes` equals what the quantizer really writes, for every format and
//! group size: the tiny example checkpoint is quantized and the written file is measured.

use std::path::PathBuf;
use std::sync::Arc;

use omnipack_manifest::{Format, GroupSize};
use omnipack_plan::ComponentSizer;
use omnipack_plan::sizing::{quant_spec_parts, select_tensors};
use omnipack_quant::{SafetensorsFile, SelectedTensor, quantize_to_file, read_full_header};

fn checkpoint_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/omnicoder-tiny")
}

#[test]
fn planned_weights_bytes_equal_quantizer_output() {
    let dir = checkpoint_dir();
    let shards = vec!["model.safetensors".to_string()];
    let file =
        Arc::new(SafetensorsFile::open(dir.join("model.safetensors")).expect("fixture opens"));
    let tmp = tempfile::tempdir().expect("temp dir");
    let keep = vec!["*norm*".to_string()];
    let mut checked = 0;
    for prefix in ["text.", "image."] {
        let tensors = select_tensors(&dir, &shards, prefix).expect("tensors selected");
        let sizer = ComponentSizer::native(tensors, keep.clone(), None);
        let mut inputs = SelectedTensor::with_prefix(&file, prefix);
        inputs.sort_by(|a, b| a.output_name.cmp(&b.output_name));
        for &format in Format::ALL {
            let groups: Vec<u32> = if format.is_grouped() {
                GroupSize::ALLOWED.to_vec()
            } else {
                vec![64]
            };
            for g in groups {
                let planned = sizer.weights_bytes(format, g).expect("planned");
                let spec = quant_spec_parts(format, g, &keep, None);
                let out = tmp.path().join(format!("{prefix}{format}-{g}.safetensors"));
                let outcome = quantize_to_file(&inputs, &spec, &out, &spec.format.metadata())
                    .expect("quantized");
                // Measure the written file itself: its tensor data, header excluded.
                let header = read_full_header(&out).expect("output readable");
                let written: u64 = header.tensors.iter().map(|t| t.len).sum();
                assert_eq!(
                    written,
                    header.file_size - header.data_start,
                    "{prefix}{format} g{g}"
                );
                assert_eq!(planned, written, "{prefix}{format} g{g}");
                assert_eq!(planned, outcome.data_bytes, "{prefix}{format} g{g}");
                assert_eq!(sizer.parameters, outcome.parameters, "{prefix}");
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 2 * (3 + 6 * 3));
}
