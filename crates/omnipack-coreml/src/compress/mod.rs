//! Weight compression of ML programs, bit-exact with coremltools 9.0's
//! `coremltools.optimize.coreml.linear_quantize_weights`.
//!
//! * [`CompressionPlan::new`] is the pure layout function: from the source model's program,
//!   weight shapes and data types and a [`CompressionConfig`] (no weight data is read) it gives
//!   which weights are compressed and how, every blob of the new `weight.bin` with its offset,
//!   and the exact byte counts ([`CompressionPlan::weights_bytes`], the file sizes).
//! * [`compress`] writes the compressed package that plan describes, streaming the weights
//!   through the parallel kernels of [`kernel`], one pass over `weight.bin`.
//!
//! Formats:
//!
//! * `int8`: `OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8",
//!   granularity="per_channel")`: `constexpr_affine_dequantize` up to iOS 17,
//!   `constexpr_blockwise_shift_scale` from iOS 18 (as coremltools chooses by the model's
//!   specification version); iOS 16 or later;
//! * `int4` with a block size: `dtype="int4", granularity="per_block", block_size=B`,
//!   `constexpr_blockwise_shift_scale`; iOS 18 or later;
//! * `f16`: the model as it is (its byte-reproducible form); a model with fp32 weights is
//!   refused (converting its precision changes the program, not only its weights).
//!
//! Which weights are compressed is [`select`]'s business; the crate README lists the rules.

pub mod kernel;
mod program;
pub mod select;
mod write;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use serde::Serialize;

pub use kernel::{Bits, BlockGrid, FloatType};
pub use select::{KeepReason, WEIGHT_THRESHOLD};
pub use write::compress;

use crate::blob::{self, BlobDataType};
use crate::error::{Error, ErrorKind};
use crate::package::{self, CoreMlModel};
use crate::spec;
use crate::types::{DeploymentTarget, MilDataType};

/// The first specification version of iOS 16 (`constexpr_affine_dequantize`).
pub const IOS16: i32 = 7;
/// The first specification version of iOS 18 (`constexpr_blockwise_shift_scale`, int4).
pub const IOS18: i32 = 9;

/// coremltools' `const_deduplication` merges constants of at least this many elements that
/// hold the same values; omnipack does the same for the zero points it writes (always zero).
const DEDUPLICATION_THRESHOLD: u64 = 100;

/// Values of fewer elements than this are stored in the program, not in `weight.bin`
/// (coremltools' `should_use_weight_file`).
const BLOB_MIN_ELEMENTS: u64 = 10;

/// A Core ML weight format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CompressionFormat {
    /// The weights as they are (fp16).
    F16,
    /// int8, one scale per output channel.
    Int8,
    /// int4, one scale per block of `block_size` input elements of each output channel.
    Int4 { block_size: u32 },
}

impl CompressionFormat {
    /// `f16`, `int8` or `int4`.
    pub fn name(self) -> &'static str {
        match self {
            Self::F16 => "f16",
            Self::Int8 => "int8",
            Self::Int4 { .. } => "int4",
        }
    }

    /// The block size of `int4`.
    pub fn block_size(self) -> Option<u32> {
        match self {
            Self::Int4 { block_size } => Some(block_size),
            _ => None,
        }
    }

    /// The oldest specification version the format runs on.
    pub fn minimum_specification_version(self) -> i32 {
        match self {
            Self::F16 => 0,
            Self::Int8 => IOS16,
            Self::Int4 { .. } => IOS18,
        }
    }

    fn bits(self) -> Option<Bits> {
        match self {
            Self::F16 => None,
            Self::Int8 => Some(Bits::Int8),
            Self::Int4 { .. } => Some(Bits::Int4),
        }
    }
}

impl fmt::Display for CompressionFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Int4 { block_size } => write!(f, "int4 (block size {block_size})"),
            other => f.write_str(other.name()),
        }
    }
}

/// What to compress and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompressionConfig {
    pub format: CompressionFormat,
    /// Globs (`*` any run, `?` one character) matched against weight names (the `const`
    /// operation's output name, e.g. `linear_0_weight_0`); a weight that matches one stays as
    /// it is.
    pub keep: Vec<String>,
}

impl CompressionConfig {
    pub fn new(format: CompressionFormat) -> Self {
        Self {
            format,
            keep: Vec::new(),
        }
    }
}

/// The operation that holds a compressed weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CompressionOp {
    /// `constexpr_affine_dequantize` (iOS 16 and 17): data, zero point, scale and axis as
    /// attributes.
    ConstexprAffineDequantize,
    /// `constexpr_blockwise_shift_scale` (iOS 18 on): data and scale as inputs.
    ConstexprBlockwiseShiftScale,
}

impl CompressionOp {
    /// The operation type as the program names it.
    pub fn name(self) -> &'static str {
        match self {
            Self::ConstexprAffineDequantize => "constexpr_affine_dequantize",
            Self::ConstexprBlockwiseShiftScale => "constexpr_blockwise_shift_scale",
        }
    }

    /// The operation coremltools uses for a model of this specification version.
    pub fn for_target(specification_version: i32) -> Self {
        if specification_version >= IOS18 {
            Self::ConstexprBlockwiseShiftScale
        } else {
            Self::ConstexprAffineDequantize
        }
    }
}

/// Where a part of a compressed weight is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    /// Blob `index` of planned file `file`.
    Blob { file: usize, index: usize },
    /// In the program (fewer than 10 values).
    Inline,
    /// Not written (no zero point from iOS 18 on).
    Absent,
}

/// How one weight is compressed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CompressedWeight {
    pub op: CompressionOp,
    /// The new operation's name and output name (`<const name>_quantized`).
    pub op_name: String,
    pub output_axis: usize,
    pub input_axis: usize,
    /// Block size per axis (0 = the whole axis, 1 on the output axis).
    pub block_sizes: Vec<u64>,
    /// Shape of the scale tensor as stored (for `constexpr_affine_dequantize`, without its
    /// axes of size 1).
    pub scale_shape: Vec<u64>,
    /// Bytes of quantized data.
    pub data_bytes: u64,
    /// Bytes of scales.
    pub scale_bytes: u64,
    /// Bytes of zero points this weight adds (0 when none, or when it shares an identical
    /// zero point written for an earlier weight).
    pub zero_point_bytes: u64,
    #[serde(skip)]
    pub(crate) detail: CompressedDetail,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CompressedDetail {
    pub grid: BlockGrid,
    pub bits: Bits,
    pub float: FloatType,
    /// The source blob: program file name and record offset.
    pub source_file: String,
    pub source_offset: u64,
    pub data: Slot,
    pub scale: Slot,
    pub zero_point: Slot,
    /// `constexpr_affine_dequantize`'s axis.
    pub axis: Option<i32>,
}

/// What happens to a weight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum WeightAction {
    Compressed(Box<CompressedWeight>),
    Kept(KeepReason),
}

/// One weight constant of the source program.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedWeight {
    /// The function it is in.
    pub function: String,
    /// Its name (the `const` operation's output name).
    pub name: String,
    /// `fp16`, `fp32`, ...
    pub data_type: String,
    pub shape: Vec<u64>,
    pub elements: u64,
    #[serde(flatten)]
    pub action: WeightAction,
}

impl PlannedWeight {
    pub fn compressed(&self) -> Option<&CompressedWeight> {
        match &self.action {
            WeightAction::Compressed(c) => Some(c),
            WeightAction::Kept(_) => None,
        }
    }
}

/// What a blob of the new file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "content", rename_all = "snake_case")]
pub enum BlobContent {
    /// A blob of the source file, copied (its record offset there).
    Copy { source_offset: u64 },
    /// The quantized data of planned weight `weight` (an index into
    /// [`CompressionPlan::weights`]).
    Data { weight: usize },
    /// Its scales.
    Scale { weight: usize },
    /// Its zero points (all zero).
    ZeroPoint { weight: usize },
}

/// One blob of a planned blob file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PlannedBlob {
    /// Offset of its 64-byte record (what the program refers to).
    pub metadata_offset: u64,
    #[serde(serialize_with = "blob_type_name")]
    pub data_type: BlobDataType,
    /// Bytes of data.
    pub size: u64,
    pub padding_bits: u64,
    #[serde(flatten)]
    pub content: BlobContent,
    /// Whether a weight constant (`const` or `constexpr_*`) refers to it: such blobs count in
    /// [`CompressionPlan::weights_bytes`].
    pub weight: bool,
}

fn blob_type_name<S: serde::Serializer>(t: &BlobDataType, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.name())
}

/// One blob file of the compressed package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedBlobFile {
    /// The name the program uses (`@model_path/weights/weight.bin`).
    pub program_name: String,
    /// Its path inside the package, `/`-separated.
    pub path: String,
    /// Blobs in file order.
    pub blobs: Vec<PlannedBlob>,
    /// Size of the file.
    pub bytes: u64,
}

/// The compressed package, planned from the source model alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CompressionPlan {
    #[serde(serialize_with = "format_name")]
    pub format: CompressionFormat,
    /// The block size of `int4`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u32>,
    /// The operation holding compressed weights (`None` for `f16`).
    pub op: Option<CompressionOp>,
    /// The model's deployment target (unchanged by compression).
    #[serde(serialize_with = "target_name")]
    pub deployment_target: DeploymentTarget,
    /// Every weight constant (`const` with a floating-point tensor), in program order.
    pub weights: Vec<PlannedWeight>,
    /// Parameters (the same as the source's).
    pub parameters: u64,
    /// Bytes of the blobs weight constants refer to.
    pub blob_bytes: u64,
    /// Bytes of the values stored in the program by weight constants.
    pub inline_bytes: u64,
    /// `blob_bytes + inline_bytes`: the stored bytes of the compressed model, by the rule the
    /// crate's facts use for any model ([`crate::ModelFacts::stored_bytes`]).
    pub weights_bytes: u64,
    /// The blob files, sorted by program name.
    pub files: Vec<PlannedBlobFile>,
    /// Total size of the blob files (`weight.bin`), headers, records and padding included.
    pub weight_bin_bytes: u64,
}

fn format_name<S: serde::Serializer>(f: &CompressionFormat, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(f.name())
}

fn target_name<S: serde::Serializer>(t: &DeploymentTarget, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(t)
}

impl CompressionPlan {
    /// Plans the compression of `model` (a `.mlpackage`) with `config`. Reads nothing but
    /// what `model` holds (the program and the blob records); fails with a typed error when
    /// the format does not fit the model ([`ErrorKind::TargetTooOld`],
    /// [`ErrorKind::Fp32Weights`], [`ErrorKind::NotCompressible`]).
    pub fn new(model: &CoreMlModel, config: &CompressionConfig) -> Result<Self, Error> {
        plan(model, config)
    }

    /// Number of weights compressed.
    pub fn compressed_count(&self) -> usize {
        self.weights
            .iter()
            .filter(|w| w.compressed().is_some())
            .count()
    }
}

/// The `/`-separated path of a file of the package, relative to the package folder.
fn package_relative(model: &CoreMlModel, path: &std::path::Path) -> Result<String, Error> {
    path.strip_prefix(&model.path)
        .ok()
        .and_then(|p| {
            p.components()
                .map(|c| c.as_os_str().to_str())
                .collect::<Option<Vec<_>>>()
        })
        .map(|parts| parts.join("/"))
        .ok_or_else(|| Error::new(path, ErrorKind::NonUtf8Name))
}

fn not_compressible(model: &CoreMlModel, why: impl Into<String>) -> Error {
    Error::new(&model.path, ErrorKind::NotCompressible(why.into()))
}

/// The `name` attribute of an operation (what coremltools calls the op), if it has one.
fn name_attribute(op: &spec::Operation) -> Option<&str> {
    use spec::immediate_value::Value as I;
    use spec::tensor_value::Value as T;
    let Some(spec::value::Value::ImmediateValue(iv)) = &op.attributes.get("name")?.value else {
        return None;
    };
    match &iv.value {
        Some(I::Tensor(spec::TensorValue {
            value: Some(T::Strings(s)),
        })) => s.values.first().map(String::as_str),
        _ => None,
    }
}

/// The planned blob files under construction.
struct Files<'m> {
    model: &'m CoreMlModel,
    files: BTreeMap<String, PlannedBlobFile>,
    /// Blobs of the source already placed: (file, offset) -> (file name, index).
    copied: HashMap<(String, u64), usize>,
}

impl<'m> Files<'m> {
    fn new(model: &'m CoreMlModel) -> Result<Self, Error> {
        let mut files = BTreeMap::new();
        for b in &model.blob_files {
            let path = package_relative(model, &b.path)?;
            files.insert(
                b.program_name.clone(),
                PlannedBlobFile {
                    program_name: b.program_name.clone(),
                    path,
                    blobs: Vec::new(),
                    bytes: 0,
                },
            );
        }
        Ok(Self {
            model,
            files,
            copied: HashMap::new(),
        })
    }

    fn file_index(&self, name: &str) -> usize {
        self.files
            .keys()
            .position(|k| k == name)
            .unwrap_or(usize::MAX)
    }

    fn push(&mut self, file: &str, blob: PlannedBlob) -> Result<usize, Error> {
        let f = self.files.get_mut(file).ok_or_else(|| {
            Error::new(
                &self.model.model_path,
                ErrorKind::Program(format!("blob file `{file}` was not indexed")),
            )
        })?;
        f.blobs.push(blob);
        Ok(f.blobs.len() - 1)
    }

    /// Places a blob of the source (once), marking it a weight blob when `weight`.
    fn copy(&mut self, file: &str, offset: u64, weight: bool, op: &str) -> Result<(), Error> {
        let key = (file.to_string(), offset);
        if let Some(&i) = self.copied.get(&key) {
            if weight && let Some(f) = self.files.get_mut(file) {
                f.blobs[i].weight = true;
            }
            return Ok(());
        }
        let record = self
            .model
            .blob_file(file)
            .and_then(|b| b.index.record_at(offset))
            .ok_or_else(|| {
                Error::new(
                    &self.model.model_path,
                    ErrorKind::MissingBlob {
                        operation: op.to_string(),
                        file_name: file.to_string(),
                        offset,
                    },
                )
            })?;
        let i = self.push(
            file,
            PlannedBlob {
                metadata_offset: 0,
                data_type: record.data_type,
                size: record.size,
                padding_bits: record.padding_bits,
                content: BlobContent::Copy {
                    source_offset: offset,
                },
                weight,
            },
        )?;
        self.copied.insert(key, i);
        Ok(())
    }

    /// Assigns every blob its offset; returns the files and their total size.
    fn finish(self) -> (Vec<PlannedBlobFile>, u64) {
        let mut total = 0;
        let files: Vec<PlannedBlobFile> = self
            .files
            .into_values()
            .map(|mut f| {
                let (offsets, end) = blob::layout(f.blobs.iter().map(|b| b.size));
                for (b, o) in f.blobs.iter_mut().zip(offsets) {
                    b.metadata_offset = o;
                }
                f.bytes = end;
                total += end;
                f
            })
            .collect();
        (files, total)
    }
}

fn mil_float(float: FloatType) -> MilDataType {
    match float {
        FloatType::F16 => MilDataType::FLOAT16,
        FloatType::F32 => MilDataType::FLOAT32,
    }
}

fn blob_float(float: FloatType) -> BlobDataType {
    match float {
        FloatType::F16 => BlobDataType::FLOAT16,
        FloatType::F32 => BlobDataType::FLOAT32,
    }
}

fn plan(model: &CoreMlModel, config: &CompressionConfig) -> Result<CompressionPlan, Error> {
    if model.manifest().is_none() {
        return Err(not_compressible(
            model,
            "it is a single .mlmodel file; omnipack compresses .mlpackage folders",
        ));
    }
    if let CompressionFormat::Int4 { block_size: 0 } = config.format {
        return Err(Error::new(&model.path, ErrorKind::InvalidBlockSize(0)));
    }
    let target = DeploymentTarget {
        specification_version: model.model.specification_version,
    };
    let facts = model.facts()?;
    let program = match &model.model.r#type {
        Some(spec::model::Type::MlProgram(p)) => Some(p),
        _ => None,
    };
    let (parameters, source_inline) = facts
        .weights
        .as_ref()
        .map_or((0, 0), |w| (w.parameters, w.inline_bytes));
    let Some(bits) = config.format.bits() else {
        return plan_f16(model, config, target, program, &facts);
    };
    let Some(program) = program else {
        return Err(not_compressible(
            model,
            format!(
                "it is a {} model; omnipack compresses ML programs",
                facts.model_type
            ),
        ));
    };
    if target.specification_version < config.format.minimum_specification_version() {
        return Err(Error::new(
            &model.path,
            ErrorKind::TargetTooOld {
                format: config.format.name(),
                needs: DeploymentTarget {
                    specification_version: config.format.minimum_specification_version(),
                },
                target,
            },
        ));
    }
    let op_kind = CompressionOp::for_target(target.specification_version);
    let block_size = config.format.block_size().map(u64::from);
    let mut files = Files::new(model)?;
    let mut weights = Vec::new();
    let mut new_inline = 0u64;
    // Zero points written so far, by (file, block scope, shape): coremltools' deduplication.
    let mut zero_points: HashMap<(String, usize, Vec<u64>), (usize, usize)> = HashMap::new();
    let mut scope = 0usize;
    let bad = |m: String| Error::new(&model.model_path, ErrorKind::Program(m));
    for (fname, function) in &program.functions {
        let view = select::FunctionView::new(fname, function, &mut scope).map_err(bad)?;
        let mut new_names = HashSet::new();
        for i in 0..view.ops.len() {
            let op = view.ops[i].op;
            let weight_op = op.r#type == "const" || op.r#type.starts_with("constexpr_");
            if let Some(c) = select::candidate(&view, i) {
                let decision = select::decide(&view, &c, &config.keep, block_size);
                let action = match decision {
                    Err(reason) => WeightAction::Kept(reason),
                    Ok(blocking) => {
                        let b = c.blob.expect("decide keeps inline weights");
                        let float = if c.data_type == MilDataType::FLOAT16 {
                            FloatType::F16
                        } else {
                            FloatType::F32
                        };
                        let record = model
                            .blob_file(&b.file_name)
                            .and_then(|f| f.index.record_at(b.offset))
                            .ok_or_else(|| {
                                bad(format!(
                                    "const `{}` refers to a blob at offset {} of `{}` that was not indexed",
                                    c.output, b.offset, b.file_name
                                ))
                            })?;
                        let expected = c.elements.checked_mul(float.bytes());
                        if record.data_type != blob_float(float) || Some(record.size) != expected {
                            return Err(bad(format!(
                                "const `{}` is {} {:?}, but its blob at offset {} of `{}` holds {} bytes of {}",
                                c.output,
                                c.data_type,
                                c.shape,
                                b.offset,
                                b.file_name,
                                record.size,
                                record.data_type.name()
                            )));
                        }
                        let dims: Option<Vec<usize>> =
                            c.shape.iter().map(|&d| usize::try_from(d).ok()).collect();
                        let blocks: Option<Vec<usize>> = blocking
                            .block_sizes
                            .iter()
                            .map(|&d| usize::try_from(d).ok())
                            .collect();
                        let grid = dims
                            .zip(blocks)
                            .and_then(|(d, bl)| BlockGrid::new(&d, &bl))
                            .ok_or_else(|| {
                                bad(format!(
                                    "const `{}` of shape {:?} cannot be cut into blocks {:?}",
                                    c.output, c.shape, blocking.block_sizes
                                ))
                            })?;
                        let cells: Vec<u64> =
                            grid.scale_shape().iter().map(|&x| x as u64).collect();
                        let cell_count = grid.scale_count() as u64;
                        let (scale_shape, axis) = match op_kind {
                            CompressionOp::ConstexprAffineDequantize => {
                                let kept: Vec<u64> =
                                    cells.iter().copied().filter(|&x| x > 1).collect();
                                let axis = cells.iter().position(|&x| x > 1).unwrap_or(0);
                                (kept, Some(axis as i32))
                            }
                            CompressionOp::ConstexprBlockwiseShiftScale => (cells.clone(), None),
                        };
                        let data_bytes = bits.data_bytes(c.elements);
                        let scale_bytes = cell_count * float.bytes();
                        let weight_index = weights.len();
                        let file = b.file_name.clone();
                        let data = files.push(
                            &file,
                            PlannedBlob {
                                metadata_offset: 0,
                                data_type: match bits {
                                    Bits::Int8 => BlobDataType::INT8,
                                    Bits::Int4 => BlobDataType::INT4,
                                },
                                size: data_bytes,
                                padding_bits: match bits {
                                    Bits::Int8 => 0,
                                    Bits::Int4 => blob::padding_bits(c.elements, 4),
                                },
                                content: BlobContent::Data {
                                    weight: weight_index,
                                },
                                weight: true,
                            },
                        )?;
                        let fi = files.file_index(&file);
                        let mut zero_point = Slot::Absent;
                        let mut zero_point_bytes = 0;
                        if op_kind == CompressionOp::ConstexprAffineDequantize {
                            if cell_count < BLOB_MIN_ELEMENTS {
                                zero_point = Slot::Inline;
                                new_inline += cell_count;
                            } else {
                                let key = (file.clone(), view.ops[i].scope, scale_shape.clone());
                                let shared = (cell_count >= DEDUPLICATION_THRESHOLD)
                                    .then(|| zero_points.get(&key).copied())
                                    .flatten();
                                if let Some((f, index)) = shared {
                                    zero_point = Slot::Blob { file: f, index };
                                } else {
                                    let index = files.push(
                                        &file,
                                        PlannedBlob {
                                            metadata_offset: 0,
                                            data_type: BlobDataType::INT8,
                                            size: cell_count,
                                            padding_bits: 0,
                                            content: BlobContent::ZeroPoint {
                                                weight: weight_index,
                                            },
                                            weight: true,
                                        },
                                    )?;
                                    zero_point = Slot::Blob { file: fi, index };
                                    zero_point_bytes = cell_count;
                                    if cell_count >= DEDUPLICATION_THRESHOLD {
                                        zero_points.insert(key, (fi, index));
                                    }
                                }
                            }
                        }
                        let scale = if cell_count < BLOB_MIN_ELEMENTS {
                            new_inline += scale_bytes;
                            Slot::Inline
                        } else {
                            let index = files.push(
                                &file,
                                PlannedBlob {
                                    metadata_offset: 0,
                                    data_type: blob_float(float),
                                    size: scale_bytes,
                                    padding_bits: 0,
                                    content: BlobContent::Scale {
                                        weight: weight_index,
                                    },
                                    weight: true,
                                },
                            )?;
                            Slot::Blob { file: fi, index }
                        };
                        if axis.is_some() {
                            new_inline += 4;
                        }
                        let base = name_attribute(op).unwrap_or(c.output);
                        let op_name = format!("{base}_quantized");
                        if view.defines(&op_name) || !new_names.insert(op_name.clone()) {
                            return Err(not_compressible(
                                model,
                                format!(
                                    "the compressed form of `{}` would be named `{op_name}`, a name function `{fname}` already has",
                                    c.output
                                ),
                            ));
                        }
                        WeightAction::Compressed(Box::new(CompressedWeight {
                            op: op_kind,
                            op_name,
                            output_axis: blocking.output_axis,
                            input_axis: blocking.input_axis,
                            block_sizes: blocking.block_sizes,
                            scale_shape,
                            data_bytes,
                            scale_bytes,
                            zero_point_bytes,
                            detail: CompressedDetail {
                                grid,
                                bits,
                                float,
                                source_file: file,
                                source_offset: b.offset,
                                data: Slot::Blob {
                                    file: fi,
                                    index: data,
                                },
                                scale,
                                zero_point,
                                axis,
                            },
                        }))
                    }
                };
                let compressed = matches!(action, WeightAction::Compressed(_));
                weights.push(PlannedWeight {
                    function: fname.clone(),
                    name: c.output.to_string(),
                    data_type: c.data_type.name(),
                    shape: c.shape.clone(),
                    elements: c.elements,
                    action,
                });
                if compressed {
                    continue;
                }
            }
            for (_, v) in package::op_values(op) {
                if let Some(spec::value::Value::BlobFileValue(b)) = &v.value {
                    files.copy(&b.file_name, b.offset, weight_op, package::op_name(op))?;
                }
            }
        }
    }
    let (files, weight_bin_bytes) = files.finish();
    let blob_bytes = files
        .iter()
        .flat_map(|f| &f.blobs)
        .filter(|b| b.weight)
        .map(|b| b.size)
        .sum();
    let inline_bytes = source_inline + new_inline;
    Ok(CompressionPlan {
        format: config.format,
        block_size: config.format.block_size(),
        op: Some(op_kind),
        deployment_target: target,
        weights,
        parameters,
        blob_bytes,
        inline_bytes,
        weights_bytes: blob_bytes + inline_bytes,
        files,
        weight_bin_bytes,
    })
}

/// `f16`: the model as it is; refused when it has fp32 weights in a blob file.
fn plan_f16(
    model: &CoreMlModel,
    config: &CompressionConfig,
    target: DeploymentTarget,
    program: Option<&spec::Program>,
    facts: &crate::ModelFacts,
) -> Result<CompressionPlan, Error> {
    let mut weights = Vec::new();
    let mut fp32 = Vec::new();
    if let Some(program) = program {
        let mut scope = 0;
        for (fname, function) in &program.functions {
            let view = select::FunctionView::new(fname, function, &mut scope)
                .map_err(|m| Error::new(&model.model_path, ErrorKind::Program(m)))?;
            for i in 0..view.ops.len() {
                if let Some(c) = select::candidate(&view, i) {
                    if c.data_type == MilDataType::FLOAT32 && c.blob.is_some() {
                        fp32.push(c.output.to_string());
                    }
                    weights.push(PlannedWeight {
                        function: fname.clone(),
                        name: c.output.to_string(),
                        data_type: c.data_type.name(),
                        shape: c.shape.clone(),
                        elements: c.elements,
                        action: WeightAction::Kept(KeepReason::Format),
                    });
                }
            }
        }
    }
    if let Some(first) = fp32.first() {
        return Err(Error::new(
            &model.path,
            ErrorKind::Fp32Weights {
                count: fp32.len(),
                first: first.clone(),
            },
        ));
    }
    // Blobs weight constants refer to.
    let mut weight_blobs = HashSet::new();
    for p in package::programs(&model.model) {
        let ops = package::operations(p)
            .map_err(|m| Error::new(&model.model_path, ErrorKind::Program(m)))?;
        for op in ops {
            if op.r#type == "const" || op.r#type.starts_with("constexpr_") {
                for (_, v) in package::op_values(op) {
                    if let Some(spec::value::Value::BlobFileValue(b)) = &v.value {
                        weight_blobs.insert((b.file_name.as_str(), b.offset));
                    }
                }
            }
        }
    }
    let mut files = Vec::new();
    for b in &model.blob_files {
        let path = package_relative(model, &b.path)?;
        files.push(PlannedBlobFile {
            program_name: b.program_name.clone(),
            path,
            blobs: b
                .index
                .records
                .iter()
                .map(|r| PlannedBlob {
                    metadata_offset: r.metadata_offset,
                    data_type: r.data_type,
                    size: r.size,
                    padding_bits: r.padding_bits,
                    content: BlobContent::Copy {
                        source_offset: r.metadata_offset,
                    },
                    weight: weight_blobs.contains(&(b.program_name.as_str(), r.metadata_offset)),
                })
                .collect(),
            bytes: b.index.len,
        });
    }
    let weight_bin_bytes = files.iter().map(|f| f.bytes).sum();
    let (parameters, blob_bytes, inline_bytes) = facts
        .weights
        .as_ref()
        .map_or((0, 0, 0), |w| (w.parameters, w.blob_bytes, w.inline_bytes));
    Ok(CompressionPlan {
        format: config.format,
        block_size: config.format.block_size(),
        op: None,
        deployment_target: target,
        weights,
        parameters,
        blob_bytes,
        inline_bytes,
        weights_bytes: facts.stored_bytes,
        files,
        weight_bin_bytes,
    })
}
