//! Bundle manifests: the typed format, loading with `extends`, defaults, the JSON schema and
//! located diagnostics.
//!
//! Entry point: [`load`] returns a [`LoadedManifest`] or every problem found as
//! [`Diagnostics`]. Other crates report located problems with
//! [`LoadedManifest::diagnostic_at`] and print them with [`render`].
//!
//! Modules, each using only those listed before it (no two import each other):
//!
//! 1. leaves: [`units`] (sizes, durations), [`diagnostic`] (located problems and their
//!    rendering), `did_you_mean` (nearest names), `rel_path` (manifest-relative paths),
//!    [`canonical_json`] (sorted, stable JSON bytes), [`lexical_path`] (paths without touching
//!    the disk);
//! 2. `node`: the YAML tree with file and byte span on every key and value;
//! 3. [`model`]: the manifest as written; [`resolved`]: every default, in one place;
//!    [`schema`]: the JSON schema generated from the model;
//! 4. `locate`: manifest paths and the diagnostics located at them;
//! 5. `check`: the schema check and the semantic rules, one module per part of the manifest;
//! 6. [`load`]: reading, `extends`, validation and defaults;
//! 7. [`starter`]: the first manifest `omnipack init` writes for a checkpoint (uses only 1).

pub mod canonical_json;
mod check;
mod coreml_source;
pub mod diagnostic;
mod did_you_mean;
pub mod lexical_path;
pub mod load;
mod locate;
pub mod model;
mod node;
mod rel_path;
pub mod resolved;
pub mod schema;
pub mod starter;
pub mod units;

pub use check::compression_format;
pub use diagnostic::{Diagnostic, Diagnostics, Severity, SourceFile, render};
pub use load::{LoadedManifest, load};
pub use model::*;
pub use resolved::{
    CoreMlSourceFacts, ResolvedComponent, ResolvedDecodeStepNames, ResolvedKvCache,
    ResolvedManifest, ResolvedQuantization, ResolvedSource, ResolvedTier, resolve,
};
pub use schema::{manifest_schema, manifest_schema_json};
pub use units::{
    ByteSize, Duration, SizeUnits, counted, counted_as, format_bytes, format_mib,
    format_signed_bytes, parse_size, printable,
};
