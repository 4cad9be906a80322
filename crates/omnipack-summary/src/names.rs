//! The names shared by manifests, plans, `bundle.json` and the summary: one Rust enum per
//! closed set of values, so the JSON schemas list them as real `enum`s and code generated from
//! the schemas gets enums, not strings. `omnipack-manifest` re-exports them.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Gives a unit-only enum `ALL` (every value, in declaration order), `as_str` (its name in
/// manifests, plans and summaries, identical to its serde name) and `Display`. The one home of
/// these names: other crates call `as_str` instead of spelling them.
#[macro_export]
macro_rules! named_enum {
    ($ty:ident { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            /// Every value, in declaration order.
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];

            /// The name written in manifests, plans and summaries.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $name),+
                }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

named_enum!(Role { TextDecodeStep => "text_decode_step", ImageDecoder => "image_decoder", VideoDecoder => "video_decoder", ImageEncoder => "image_encoder", AudioEncoder => "audio_encoder", Data => "data" });
named_enum!(Runtime { Mlx => "mlx", Coreml => "coreml", Mlc => "mlc", LlamaCpp => "llama_cpp", Custom => "custom" });
named_enum!(Delivery { Essential => "essential", Prefetch => "prefetch", OnDemand => "on_demand" });
named_enum!(Residency { Always => "always", Lazy => "lazy" });
named_enum!(Format { F32 => "f32", F16 => "f16", Bf16 => "bf16", Int2 => "int2", Int3 => "int3", Int4 => "int4", Int6 => "int6", Int8 => "int8", Nf4 => "nf4" });
named_enum!(KvFormat { F16 => "f16", U8 => "u8", Nf4 => "nf4" });
named_enum!(QuantMode { Affine => "affine", Nf4 => "nf4", LinearSymmetric => "linear_symmetric" });
named_enum!(Method { Rtn => "rtn", Mse => "mse" });

/// What a component is, which decides its defaults and sidecars.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The text model's decode step, loaded at launch by default; its bundle gets the
    /// `.kvq.json` and `.kv_paging.json` sidecars (the KV cache's format and paging), plus the
    /// `.io.json` of its cache inputs when the runtime is Core ML.
    TextDecodeStep,
    /// An image decoder, loaded on demand.
    ImageDecoder,
    /// A video decoder, loaded on demand.
    VideoDecoder,
    /// An image encoder of a multimodal model (pixels to embeddings), loaded on demand like
    /// the decoders.
    ImageEncoder,
    /// An audio encoder of a multimodal model (audio to embeddings), loaded on demand like the
    /// decoders.
    AudioEncoder,
    /// Tokenizers, configs or any other files shipped as they are.
    Data,
}

/// The runtime that loads a component on device; drives the memory model.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Runtime {
    /// MLX / MLX Swift: weights resident as stored, MLX affine quantization.
    Mlx,
    /// Core ML: weights decompressed to f16 at load unless running on the Neural Engine.
    Coreml,
    /// MLC-LLM: weights resident as stored, f16 paged KV cache.
    Mlc,
    /// llama.cpp: weights resident as stored.
    LlamaCpp,
    /// Your own runtime: weights resident as stored; every native format allowed.
    Custom,
}

/// When the App Store delivers a component's asset pack.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// Downloaded with the app, before first launch.
    Essential,
    /// Downloaded in the background right after install.
    Prefetch,
    /// Downloaded only when the app asks for it.
    OnDemand,
}

/// Whether a component stays in memory.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Residency {
    /// Loaded at launch and kept resident.
    Always,
    /// Loaded when needed, one lazy component at a time.
    Lazy,
}

/// A weight format.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// 32-bit IEEE float.
    F32,
    /// 16-bit IEEE float.
    F16,
    /// bfloat16.
    Bf16,
    /// MLX affine 2-bit (mlx and custom runtimes only).
    Int2,
    /// MLX affine 3-bit (mlx and custom runtimes only).
    Int3,
    /// MLX affine 4-bit (mlx and custom runtimes only).
    Int4,
    /// MLX affine 6-bit (mlx and custom runtimes only).
    Int6,
    /// MLX affine 8-bit (mlx and custom runtimes only).
    Int8,
    /// bitsandbytes NF4 (custom runtime only).
    Nf4,
}

impl Format {
    /// Bits per code for MLX affine formats, `None` otherwise.
    pub fn affine_bits(self) -> Option<u32> {
        match self {
            Format::Int2 => Some(2),
            Format::Int3 => Some(3),
            Format::Int4 => Some(4),
            Format::Int6 => Some(6),
            Format::Int8 => Some(8),
            _ => None,
        }
    }

    /// True for formats that use a group size (affine and NF4).
    pub fn is_grouped(self) -> bool {
        self.affine_bits().is_some() || self == Format::Nf4
    }
}

/// KV-cache storage format.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum KvFormat {
    /// 16-bit floats: `2 * g` bytes per group.
    F16,
    /// 8-bit affine with an f16 scale and zero point per group: `g + 4` bytes per group.
    U8,
    /// NF4 with an f16 absmax per group: `g / 2 + 2` bytes per group.
    Nf4,
}

/// How integer codes map back to values.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum QuantMode {
    /// MLX affine: `scale * code + bias` per group.
    Affine,
    /// bitsandbytes NF4: a 16-entry code book times the group's absmax.
    Nf4,
    /// Core ML int8 and int4: `scale * code`, symmetric, no offset.
    LinearSymmetric,
}

/// Quantization method of the MLX affine formats. Both write exactly the MLX layout (codes,
/// scales, biases); only the numbers differ.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Round to nearest between each group's minimum and maximum, bit-exact with
    /// `mx.quantize` (the default).
    #[default]
    Rtn,
    /// Error-minimising: each group's scale and bias are searched for the smallest squared
    /// error after MLX dequantization, never worse than `rtn` on any group.
    Mse,
}
