//! Writing a compressed package: the blob files in one pass each (source blobs read by offset
//! from a memory map, pages released as soon as they are written), the edited program, the
//! other files as they are, then `Manifest.json`; all in a temporary folder renamed into place.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::kernel::{self, FloatData, KernelError, Quantized};
use super::program::{self, EditError, ModelEdits};
use super::{
    BlobContent, CompressedWeight, CompressionOp, CompressionPlan, Slot, WeightAction, mil_float,
};
use crate::blob::{BlobWriteError, BlobWriter};
use crate::error::{Error, ErrorKind};
use crate::package::CoreMlModel;
use crate::rewrite::{self, Staging};
use crate::types::MilDataType;
use crate::{CompressionConfig, canonical_model_bytes, write_package};

/// A read-only memory map of a blob file whose pages are handed back to the kernel as soon as
/// they have been used, so the resident set stays around one weight.
struct Source {
    map: memmap2::Mmap,
    released: usize,
}

impl Source {
    fn open(path: &Path, expected_len: u64) -> Result<Self, Error> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only and private to this process; the file was indexed and
        // its length is checked again below. A file truncated by another process while we
        // read it is outside what any reader can defend against.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        if map.len() as u64 != expected_len {
            return Err(Error::io(
                path,
                std::io::Error::other(format!(
                    "the file changed while being read ({} bytes, {expected_len} when indexed)",
                    map.len()
                )),
            ));
        }
        #[cfg(unix)]
        let _ = map.advise(memmap2::Advice::Sequential);
        Ok(Self { map, released: 0 })
    }

    fn bytes(&self, offset: u64, size: u64) -> &[u8] {
        &self.map[offset as usize..(offset + size) as usize]
    }

    /// Drops the mapped pages before `end` from the resident set (the page cache keeps them).
    fn release(&mut self, end: u64) {
        let end = end as usize;
        if end <= self.released {
            return;
        }
        #[cfg(unix)]
        {
            // SAFETY: the map is a read-only file mapping: dropped pages are read again from
            // the file if touched.
            let _ = unsafe {
                self.map.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    self.released,
                    end - self.released,
                )
            };
        }
        self.released = end;
    }
}

/// A writer that digests what goes through it (the manifest's identifier of the weights folder
/// needs the sha256 of `weight.bin`, which is then not read again).
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn write_error(path: &Path, e: BlobWriteError) -> Error {
    match e {
        BlobWriteError::Io(e) => Error::io(path, e),
        other => Error::new(path, ErrorKind::Program(other.to_string())),
    }
}

/// Compresses `model` as `config` says into the new package folder `out` (which must not
/// exist) and returns the plan it followed: what [`CompressionPlan::new`] gives for the same
/// model and configuration, byte for byte what was written.
pub fn compress(
    model: &CoreMlModel,
    config: &CompressionConfig,
    out: &Path,
) -> Result<CompressionPlan, Error> {
    let plan = CompressionPlan::new(model, config)?;
    if plan.op.is_none() {
        write_package(&model.reproducible_entries()?, out)?;
        return Ok(plan);
    }
    let manifest = model
        .manifest()
        .ok_or_else(|| Error::new(&model.path, ErrorKind::UnknownFormat))?;
    let staging = Staging::new(out)?;
    let mut inline_scales: HashMap<usize, Vec<u8>> = HashMap::new();
    let mut digests: HashMap<std::path::PathBuf, [u8; 32]> = HashMap::new();
    for file in &plan.files {
        let source = model.blob_file(&file.program_name).ok_or_else(|| {
            Error::new(
                &model.model_path,
                ErrorKind::Program(format!("blob file `{}` was not indexed", file.program_name)),
            )
        })?;
        let mut src = Source::open(&source.path, source.index.len)?;
        let dest = staging.entry_path(&file.path)?;
        let f = File::create(&dest).map_err(|e| Error::io(&dest, e))?;
        let count = u32::try_from(file.blobs.len()).map_err(|_| {
            Error::new(
                &dest,
                ErrorKind::Program(format!("{} blobs do not fit one file", file.blobs.len())),
            )
        })?;
        let hashing = Hashing {
            inner: BufWriter::with_capacity(1 << 20, f),
            hasher: Sha256::new(),
        };
        let mut writer = BlobWriter::new(hashing, count).map_err(|e| write_error(&dest, e))?;
        let mut pending: Option<(usize, Quantized)> = None;
        for blob in &file.blobs {
            let offset = match blob.content {
                BlobContent::Copy { source_offset } => {
                    let r = source.index.record_at(source_offset).ok_or_else(|| {
                        Error::new(
                            &source.path,
                            ErrorKind::Program(format!("no blob record at offset {source_offset}")),
                        )
                    })?;
                    let o = writer
                        .write_blob(
                            r.data_type,
                            src.bytes(r.data_offset, r.size),
                            r.padding_bits,
                        )
                        .map_err(|e| write_error(&dest, e))?;
                    src.release(r.data_offset + r.size);
                    o
                }
                BlobContent::Data { weight } => {
                    let w = &plan.weights[weight];
                    let WeightAction::Compressed(c) = &w.action else {
                        return Err(internal(&dest, "data of a weight that is kept"));
                    };
                    let d = &c.detail;
                    let r = source.index.record_at(d.source_offset).ok_or_else(|| {
                        internal(&source.path, "compressed weight without its source blob")
                    })?;
                    let bytes = src.bytes(r.data_offset, r.size);
                    let data = match d.float {
                        kernel::FloatType::F16 => FloatData::F16(bytes),
                        kernel::FloatType::F32 => FloatData::F32(bytes),
                    };
                    let q = kernel::quantize(data, &d.grid, d.bits).map_err(|e| match e {
                        KernelError::NonFinite(n) => Error::new(
                            &source.path,
                            ErrorKind::NonFiniteWeight {
                                name: w.name.clone(),
                                index: n.index,
                                nan: n.nan,
                            },
                        ),
                        KernelError::Length { .. } => {
                            internal(&source.path, "blob size does not match the weight's shape")
                        }
                    })?;
                    let o = writer
                        .write_blob(blob.data_type, &q.data, blob.padding_bits)
                        .map_err(|e| write_error(&dest, e))?;
                    src.release(r.data_offset + r.size);
                    if d.scale == Slot::Inline {
                        inline_scales.insert(weight, q.scales.clone());
                    }
                    pending = Some((weight, q));
                    o
                }
                BlobContent::Scale { weight } => {
                    let q = match pending.take() {
                        Some((w, q)) if w == weight => q,
                        _ => return Err(internal(&dest, "scales before their weight's data")),
                    };
                    writer
                        .write_blob(blob.data_type, &q.scales, 0)
                        .map_err(|e| write_error(&dest, e))?
                }
                BlobContent::ZeroPoint { .. } => writer
                    .write_blob(blob.data_type, &vec![0u8; blob.size as usize], 0)
                    .map_err(|e| write_error(&dest, e))?,
            };
            if offset != blob.metadata_offset {
                return Err(internal(
                    &dest,
                    "a blob landed where the plan did not put it",
                ));
            }
        }
        let (mut out, len) = writer.finish().map_err(|e| write_error(&dest, e))?;
        out.flush().map_err(|e| Error::io(&dest, e))?;
        if len != file.bytes {
            return Err(internal(&dest, "the file's size differs from the plan"));
        }
        digests.insert(dest, out.hasher.finalize().into());
    }

    // The program.
    let mut edits = ModelEdits {
        replace: HashMap::new(),
        offsets: HashMap::new(),
        renames: HashMap::new(),
    };
    for file in &plan.files {
        for b in &file.blobs {
            if let BlobContent::Copy { source_offset } = b.content {
                edits.offsets.insert(
                    (file.program_name.clone(), source_offset),
                    b.metadata_offset,
                );
            }
        }
    }
    for (i, w) in plan.weights.iter().enumerate() {
        if let WeightAction::Compressed(c) = &w.action {
            let op = new_op(&plan, c, &w.shape, inline_scales.get(&i));
            edits
                .replace
                .insert((w.function.clone(), w.name.clone()), op);
            edits
                .renames
                .insert((w.function.clone(), w.name.clone()), c.op_name.clone());
        }
    }
    let edited = program::edit_model(&model.model_bytes, &edits).map_err(|e| match e {
        EditError::Wire(e) => Error::new(&model.model_path, ErrorKind::Wire(e)),
        EditError::UnplannedBlob { file_name, offset } => Error::new(
            &model.model_path,
            ErrorKind::NotCompressible(format!(
                "the program refers to the blob at offset {offset} of `{file_name}` from outside the operations of a function's block"
            )),
        ),
    })?;
    let model_bytes = canonical_model_bytes(&edited)
        .map_err(|e| Error::new(&model.model_path, ErrorKind::Wire(e)))?;
    let root = format!("Data/{}", manifest.root_item().path);
    let dest = staging.entry_path(&root)?;
    std::fs::write(&dest, &model_bytes).map_err(|e| Error::io(&dest, e))?;

    // Every other file of the package, as it is.
    for (rel, path) in rewrite::files_below(&model.path)? {
        if rel == "Manifest.json"
            || path == model.model_path
            || plan.files.iter().any(|f| f.path == rel)
        {
            continue;
        }
        rewrite::copy_file(&path, &staging.entry_path(&rel)?)?;
    }

    let digest: [u8; 32] = Sha256::digest(&model_bytes).into();
    let manifest_bytes =
        rewrite::rewrite_manifest(manifest, &staging.path().join("Data"), &digest, &digests)?;
    let dest = staging.entry_path("Manifest.json")?;
    std::fs::write(&dest, manifest_bytes).map_err(|e| Error::io(&dest, e))?;
    staging.commit()?;
    Ok(plan)
}

fn internal(path: &Path, what: &str) -> Error {
    Error::new(path, ErrorKind::Program(format!("internal error: {what}")))
}

/// The encoded operation holding a compressed weight of shape `shape`.
fn new_op(
    plan: &CompressionPlan,
    c: &CompressedWeight,
    shape: &[u64],
    inline_scale: Option<&Vec<u8>>,
) -> Vec<u8> {
    let d = &c.detail;
    let place = |slot: Slot, data_type: MilDataType, dims: &[u64], inline: &[u8]| match slot {
        Slot::Blob { file, index } => {
            let f = &plan.files[file];
            program::blob_value(
                data_type,
                dims,
                &f.program_name,
                f.blobs[index].metadata_offset,
            )
        }
        Slot::Inline | Slot::Absent => program::immediate_value(data_type, dims, inline),
    };
    let float = mil_float(d.float);
    let empty = Vec::new();
    let scale = place(
        d.scale,
        float,
        &c.scale_shape,
        inline_scale.unwrap_or(&empty),
    );
    match c.op {
        CompressionOp::ConstexprBlockwiseShiftScale => {
            let data_type = match d.bits {
                kernel::Bits::Int8 => MilDataType::INT8,
                kernel::Bits::Int4 => MilDataType::INT4,
            };
            program::constexpr_op(
                c.op.name(),
                &c.op_name,
                (float, shape),
                vec![
                    ("data", place(d.data, data_type, shape, &[])),
                    ("scale", scale),
                ],
                true,
            )
        }
        CompressionOp::ConstexprAffineDequantize => {
            let zeros = vec![0u8; c.scale_shape.iter().product::<u64>() as usize];
            let axis = d.axis.unwrap_or(0).to_le_bytes();
            program::constexpr_op(
                c.op.name(),
                &c.op_name,
                (float, shape),
                vec![
                    (
                        "quantized_data",
                        place(d.data, MilDataType::INT8, shape, &[]),
                    ),
                    (
                        "zero_point",
                        place(d.zero_point, MilDataType::INT8, &c.scale_shape, &zeros),
                    ),
                    ("scale", scale),
                    (
                        "axis",
                        program::immediate_value(MilDataType::INT32, &[], &axis),
                    ),
                ],
                false,
            )
        }
    }
}
