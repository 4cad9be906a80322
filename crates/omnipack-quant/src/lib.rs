//! omnipack-quant: safetensors I/O and bit-exact weight quantization.
//!
//! * [`read_header`], [`read_shard_set`], [`resolve_shards`]: header-only reading, validated.
//! * [`plan_outputs`], [`data_bytes`], [`file_bytes`]: the exact output layout of a
//!   [`QuantSpec`] as a pure function of input headers (used by the planner and the writer).
//! * [`quantize_to_file`], [`quantize_file`]: the streaming, parallel quantizer.
//! * [`kernels`]: MLX affine (`mx.quantize`, and the error-minimising `mse` method),
//!   bitsandbytes NF4/FP4 and float casts.
//! * [`quality`]: the error of every written tensor, measured as its consumer dequantizes it.
//! * [`source`]: quantized sources (MLX affine, bitsandbytes 4-bit) as logical weights:
//!   passed through, dequantized, or quantized again with permission
//!   ([`quantize_source_to_file`]).
//! * [`digest`]: sha256 and CRC-32 of files and bytes, the one place omnipack hashes bytes.

pub mod digest;
mod dtype;
mod error;
mod header;
pub mod kernels;
mod layout;
pub mod quality;
pub mod source;
mod spec;
mod writer;

pub use digest::{
    DigestWriter, Digester, FileDigest, HASH_CHUNK, digest_file, hex, is_sha256, sha256_bytes,
    sha256_file,
};
pub use dtype::{Dtype, TensorInfo};
pub use error::QuantError;
pub use header::{
    Header, MAX_HEADER_BYTES, SafetensorsFile, SourceTensor, TensorEntry, parse_header,
    read_full_header, read_header, read_headers, read_shard_set, resolve_shards,
};
pub use kernels::ErrorStats;
pub use layout::{QuantizedLayout, recognise_layout};
pub use quality::Quality;
pub use source::{QuantizedGroup, SourceFormat, SourceLayout, Treatment};
pub use spec::{
    Method, OutputKind, OutputTensor, QuantSpec, WeightFormat, bnb_quant_state_json, data_bytes,
    file_bytes, glob_match, header_bytes, plan_outputs,
};
pub use writer::{
    QuantizeOutcome, SelectedTensor, TensorReport, quantize_file, quantize_source_to_file,
    quantize_to_file,
};
