//! Loading a manifest file and its `extends` chain.
//!
//! INTERIM: the manifest front-end work replaces this with span-tracking loading, schema
//! validation and located diagnostics; the public signatures below stay.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::model::Manifest;
use crate::resolved::{ResolvedManifest, resolve};

/// A manifest read from disk, with its `extends` chain merged and defaults applied.
#[derive(Debug, Clone)]
pub struct LoadedManifest {
    /// The manifest file as given.
    pub path: PathBuf,
    /// The folder of the manifest file; resolved paths are relative to it.
    pub dir: PathBuf,
    /// Files read, the manifest first, then its bases.
    pub files: Vec<PathBuf>,
    /// The merged manifest as written (before defaults).
    pub manifest: Manifest,
    /// The merged manifest as canonical JSON (for `manifest_sha256`).
    pub merged_json: Value,
    /// Defaults applied.
    pub resolved: ResolvedManifest,
}

/// Why a manifest could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct LoadError {
    pub file: PathBuf,
    pub message: String,
}

/// Loads `path`, merges its `extends` chain and applies defaults.
pub fn load(path: &Path) -> Result<LoadedManifest, LoadError> {
    let mut files = Vec::new();
    let merged = load_value(path, &mut files)?;
    let manifest: Manifest = serde_json::from_value(merged.clone()).map_err(|e| LoadError {
        file: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let resolved = resolve(&manifest);
    Ok(LoadedManifest {
        path: path.to_path_buf(),
        dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
        files,
        manifest,
        merged_json: merged,
        resolved,
    })
}

fn load_value(path: &Path, files: &mut Vec<PathBuf>) -> Result<Value, LoadError> {
    let err = |message: String| LoadError {
        file: path.to_path_buf(),
        message,
    };
    if files.iter().any(|f| f == path) {
        return Err(err("extends cycle".into()));
    }
    files.push(path.to_path_buf());
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let mut value: Value = serde_saphyr::from_str(&text).map_err(|e| err(e.to_string()))?;
    if let Some(Value::String(base)) = value.get("extends").cloned() {
        let base_path = path.parent().unwrap_or(Path::new("")).join(&base);
        let mut base_value = load_value(&base_path, files)?;
        if let Value::Object(m) = &mut value {
            m.remove("extends");
        }
        merge(&mut base_value, value);
        value = base_value;
    }
    Ok(value)
}

/// Maps merge key by key; anything else (lists included) replaces.
fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}
