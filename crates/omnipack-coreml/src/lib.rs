//! Core ML packages: read, check, size and rewrite ML programs, byte-reproducibly.
//!
//! * [`open`] reads a `.mlpackage` folder (manifest, `model.mlmodel`, MIL blob storage files,
//!   all validated and bounded) or a single `.mlmodel` file;
//! * [`CoreMlModel::facts`] gives its deployment target, inputs, outputs and states, operation
//!   counts, parameters and stored bytes;
//! * [`check_decode_step`] checks the decode-step contract an app's token loop relies on;
//! * [`CoreMlModel::reproducible_entries`] gives the package's files with content-derived
//!   identifiers, sorted protobuf maps and no conversion date, every other byte kept;
//! * [`blob`] reads and writes MIL blob storage (version 2) byte for byte as coremltools does;
//! * [`CompressionPlan::new`] and [`compress`] plan and write int8 / int4 compressions of an ML
//!   program exactly as coremltools 9.0's `linear_quantize_weights` does.
//!
//! The format facts this crate relies on (field numbers, enums, the blob layout, the manifest)
//! are listed with their sources in the crate's README.md. Nothing here prints.

pub mod blob;
pub mod compress;
pub mod contract;
pub mod error;
pub mod facts;
pub mod package;
pub mod rewrite;
pub mod spec;
pub mod types;
pub mod wire;

pub use compress::{
    BlobContent, CompressedWeight, CompressionConfig, CompressionFormat, CompressionOp,
    CompressionPlan, KeepReason, PlannedBlob, PlannedBlobFile, PlannedWeight, WeightAction,
    compress,
};
pub use contract::{
    CacheForm, DecodeStep, DecodeStepExpectation, DecodeStepNames, Mismatch, Subject,
    check_decode_step,
};
pub use error::{Error, ErrorKind};
pub use facts::{
    ArrayFeature, Axis, AxisRange, Feature, FeatureKind, ModelFacts, ShapeFlexibility, WeightFacts,
};
pub use package::{CoreMlModel, ModelFormat, PackageManifest, open, open_model_file, open_package};
pub use rewrite::{
    CONVERSION_DATE_KEY, EntrySource, PackageEntry, canonical_model_bytes, map_key_order,
    write_package,
};
pub use types::{ArrayDataType, DeploymentTarget, MilDataType};
