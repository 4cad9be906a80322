//! Errors: every one names the file and the cause.

use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::blob::BlobError;
use crate::types::DeploymentTarget;
use crate::wire::WireError;

/// A Core ML file that cannot be read, checked or rewritten.
#[derive(Debug, Error)]
#[error("{}: {kind}", path.display())]
pub struct Error {
    /// The file (or package folder) at fault.
    pub path: PathBuf,
    pub kind: ErrorKind,
}

impl Error {
    pub fn new(path: impl AsRef<Path>, kind: ErrorKind) -> Self {
        Self {
            path: path.as_ref().to_path_buf(),
            kind,
        }
    }

    pub(crate) fn io(path: impl AsRef<Path>, e: io::Error) -> Self {
        Self::new(path, ErrorKind::Io(e))
    }
}

/// What is wrong.
#[derive(Debug, Error)]
pub enum ErrorKind {
    #[error("cannot read: {0}")]
    Io(io::Error),
    #[error("is not a regular file (symbolic links and special files are not read)")]
    NotRegularFile,
    #[error("is not a folder")]
    NotADirectory,
    #[error("is {size} bytes; omnipack reads at most {limit} bytes here")]
    TooLarge { size: u64, limit: u64 },
    #[error("is neither a `.mlpackage` folder nor a `.mlmodel` file")]
    UnknownFormat,
    #[error("is not a valid package manifest: {0}")]
    Manifest(String),
    #[error("item `{identifier}` has path `{path}`, which leaves the package's Data folder")]
    UnsafeItemPath { identifier: String, path: String },
    #[error("is not a protobuf message: {0}")]
    Wire(WireError),
    #[error("does not decode as a Core ML model: {0}")]
    Decode(prost::DecodeError),
    #[error("is not a valid MIL blob storage file: {0}")]
    Blob(BlobError),
    #[error(
        "operation `{operation}` refers to a blob at offset {offset} of `{file_name}`, but no blob record starts there"
    )]
    MissingBlob {
        operation: String,
        file_name: String,
        offset: u64,
    },
    #[error(
        "operation `{operation}` refers to blob file `{file_name}`, which is not inside the package"
    )]
    BlobFileOutside {
        operation: String,
        file_name: String,
    },
    #[error("invalid ML program: {0}")]
    Program(String),
    #[error("the package folder already exists")]
    OutputExists,
    #[error("has a name that is not UTF-8")]
    NonUtf8Name,
    #[error("entry path `{0}` is not a relative path inside the package")]
    UnsafeEntryPath(String),
    #[error("cannot be compressed: {0}")]
    NotCompressible(String),
    #[error(
        "`{format}` needs a deployment target of {needs} or later, but the model's is {target}"
    )]
    TargetTooOld {
        /// The format asked for (`int8`, `int4`).
        format: &'static str,
        /// The oldest target the format runs on.
        needs: DeploymentTarget,
        /// The model's target.
        target: DeploymentTarget,
    },
    #[error(
        "`f16` keeps the weights as they are, but {count} weight(s) are fp32 (the first is `{first}`); omnipack does not change a model's precision: convert it with coremltools' `compute_precision=ct.precision.FLOAT16`, or choose `int8` or `int4`"
    )]
    Fp32Weights { count: usize, first: String },
    #[error("block size {0} is not valid: it must be a positive number of elements")]
    InvalidBlockSize(u32),
    #[error(
        "weight `{name}` holds {} at element {index}; {}",
        if *nan { "NaN" } else { "an infinity" },
        if *nan { "omnipack does not quantize NaN: fix the model, or list the weight in `keep`" } else { "coremltools leaves such a weight uncompressed: list it in `keep` to do the same" }
    )]
    NonFiniteWeight {
        name: String,
        index: usize,
        nan: bool,
    },
}
