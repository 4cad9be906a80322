//! Validation of a merged manifest, in two steps that both report every problem they find:
//!
//! 1. the JSON schema ([`schema_errors`], then [`unrepresentable`] for values the schema
//!    accepts but the Rust types cannot hold), on the merged tree;
//! 2. the semantic rules no schema can express, one module per part of the manifest
//!    ([`identity`], [`tiers`], [`sources`], [`exporter`], [`components`], [`kv_cache`],
//!    [`quantization`], [`coreml`]; [`files`] reads what the manifest names on disk). They read the typed
//!    manifest ([`typed`]), never the raw tree: tier by tier and component by component, so
//!    that a broken item does not hide the problems of the others.
//!
//! Diagnostics are located with [`Locator`]; the caller sorts them into reading order.

mod components;
mod coreml;
mod exporter;
pub(crate) mod files;
mod identity;
mod kv_cache;
mod quantization;
mod schema_errors;
mod sources;
mod tiers;
mod typed;
mod unrepresentable;
mod wording;

use std::path::Path;

use serde_json::Value;

use crate::diagnostic::Diagnostic;
use crate::locate::{Locator, ManifestPath};
use crate::model::Manifest;

pub use coreml::compression_format;

/// What validation found.
pub(crate) struct Validation {
    /// Every problem, schema errors first, in the order the checks found them.
    pub diagnostics: Vec<Diagnostic>,
    /// The typed manifest, or why it does not deserialise.
    pub manifest: Result<Manifest, serde_json::Error>,
}

/// Validates the merged manifest `json` (located with `locator`; paths in it are relative to
/// `dir`).
pub(crate) fn validate(locator: &Locator<'_>, json: &Value, dir: &Path) -> Validation {
    let schema = schema_errors::check(locator, json);
    let mut diagnostics = schema.diagnostics;
    diagnostics.extend(unrepresentable::check(locator, json, &schema.reported));
    // The values the schema rejected; unknown keys are left out of the typed manifest instead.
    let rejected: Vec<String> = diagnostics
        .iter()
        .map(|d| d.path.clone())
        .filter(|p| !schema.unknown_key_paths.contains(p))
        .collect();
    let manifest = typed::TypedManifest::new(json, &schema.unknown_keys, &rejected);
    identity::check(&manifest, locator, &mut diagnostics);
    tiers::check(&manifest, locator, &mut diagnostics);
    let mut shards = files::CheckedShards::default();
    for (i, component) in manifest.typed_components() {
        let at = ManifestPath::root().key("components").index(i);
        let out = &mut diagnostics;
        sources::check(component, &at, dir, &mut shards, locator, out);
        exporter::check(component, &at, dir, locator, out);
        components::check(component, &at, locator, out);
        kv_cache::check(&manifest, component, &at, locator, out);
        quantization::check(&manifest, component, &at, locator, out);
        coreml::check(&manifest, component, &at, dir, locator, out);
    }
    Validation {
        diagnostics,
        manifest: manifest.whole,
    }
}
