//! Bundle manifests: the typed format, loading with `extends`, defaults, the JSON schema and
//! located diagnostics.
//!
//! Entry point: [`load`] returns a [`LoadedManifest`] or every problem found as
//! [`Diagnostics`]. Other crates report located problems with
//! [`LoadedManifest::diagnostic_at`] and print them with [`render`].

pub mod canonical_json;
mod check;
pub mod diagnostic;
pub mod lexical_path;
pub mod load;
pub mod model;
pub mod node;
pub mod resolved;
pub mod schema;
pub mod units;

pub use diagnostic::{Diagnostic, Diagnostics, Severity, SourceFile, render};
pub use load::{LoadedManifest, load};
pub use model::*;
pub use resolved::{
    ResolvedComponent, ResolvedKvCache, ResolvedManifest, ResolvedQuantization, ResolvedSource,
    ResolvedTier, resolve,
};
pub use schema::{manifest_schema, manifest_schema_json};
pub use units::{ByteSize, Duration, format_bytes, format_mib, format_signed_bytes};
