//! Errors of the quantization crate: every one names the file (and the tensor) concerned.

use std::path::PathBuf;

/// An error reading, planning or writing quantized safetensors.
#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    /// An I/O operation on a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The safetensors header (or a shard index) is malformed or hostile.
    #[error("{}: invalid safetensors file: {reason}", path.display())]
    Header {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A tensor entry in a header is invalid, or a tensor cannot be processed.
    #[error("{}: tensor `{tensor}`: {reason}", path.display())]
    Tensor {
        /// The file.
        path: PathBuf,
        /// The tensor name.
        tensor: String,
        /// What is wrong.
        reason: String,
    },
    /// A tensor that is being quantized holds NaN or infinity.
    #[error(
        "{}: tensor `{tensor}` holds a non-finite value ({value}) at index {index:?}: cannot quantize it (keep it with a `keep` glob or fix the checkpoint)",
        path.display()
    )]
    NonFinite {
        /// The file.
        path: PathBuf,
        /// The tensor name.
        tensor: String,
        /// Multi-dimensional index of the first non-finite element.
        index: Vec<u64>,
        /// The offending value.
        value: f32,
    },
    /// The quantization spec or the tensor selection is invalid.
    #[error("{0}")]
    Spec(String),
    /// A tensor of the source is already quantized in another format than the one asked
    /// for, and quantizing it again was not allowed.
    #[error(
        "tensor `{tensor}` is already quantized ({source_format}): writing it as {requested} would dequantize it and quantize it again, compounding the error; request {source_format}, the source's format (its tensors pass through byte for byte), or allow requantization (`quantization.requantize: true` in a manifest, `--requantize` for `omnipack quantize`)"
    )]
    AlreadyQuantized {
        /// The logical weight's name.
        tensor: String,
        /// The source's format, for example `int4 g64`.
        source_format: String,
        /// The format asked for, for example `int8 g64`.
        requested: String,
    },
}

impl QuantError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        QuantError::Io {
            path: path.into(),
            source,
        }
    }
    pub(crate) fn header(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        QuantError::Header {
            path: path.into(),
            reason: reason.into(),
        }
    }
    pub(crate) fn tensor(
        path: impl Into<PathBuf>,
        tensor: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        QuantError::Tensor {
            path: path.into(),
            tensor: tensor.into(),
            reason: reason.into(),
        }
    }
}
