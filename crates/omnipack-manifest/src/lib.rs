//! Bundle manifests: the typed format, loading with `extends`, defaults, the JSON schema and
//! located diagnostics.

pub mod model;
pub mod resolved;
pub mod units;

pub use model::*;
pub use resolved::{ResolvedComponent, ResolvedKvCache, ResolvedManifest, ResolvedQuantization, ResolvedSource, ResolvedTier, resolve};
pub use units::{ByteSize, Duration, format_bytes, format_signed_bytes};
pub mod load;
pub use load::{LoadError, LoadedManifest, load};
