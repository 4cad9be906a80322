//! Files a manifest names: a path that does not exist (with "did you mean"), a `source.config`
//! that must hold one JSON object, a safetensors checkpoint whose header omnipack-quant reads and
//! validates (the weights are not read).

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

use crate::did_you_mean::nearest_in_folder;
use crate::rel_path::{self, shown};

/// Largest `source.config` file accepted (a config.json is a few KiB).
const MAX_CONFIG_JSON_BYTES: u64 = 16 * 1024 * 1024;

/// What is wrong with a file, and how to fix it.
#[derive(Clone)]
pub(crate) struct FileProblem {
    pub message: String,
    pub help: String,
}

impl FileProblem {
    pub(crate) fn new(message: String, help: impl Into<String>) -> Self {
        FileProblem {
            message,
            help: help.into(),
        }
    }
}

/// Advice for a path `rel` (relative to `dir`) that does not exist: a similar name in the same
/// folder, if any, or that the folder itself is missing.
pub(crate) fn missing_help(dir: &Path, rel: &str) -> String {
    let full = dir.join(rel);
    let general = "paths are relative to the manifest that names them";
    let (Some(folder), Some(name)) = (full.parent(), full.file_name().and_then(|n| n.to_str()))
    else {
        return general.to_string();
    };
    match nearest_in_folder(folder, name, |_| true) {
        Ok(Some(n)) => format!("did you mean `{n}`? {general}"),
        Ok(None) => general.to_string(),
        Err(_) => format!(
            "{general}; the folder `{}` does not exist",
            shown(dir, &rel_path::parent(rel))
        ),
    }
}

/// Checks that a `source.config` file exists and holds one JSON object, and returns it.
pub(crate) fn config_json(
    dir: &Path,
    rel: &str,
) -> Result<serde_json::Map<String, Value>, FileProblem> {
    let shown = shown(dir, rel);
    let full = dir.join(rel);
    let help = "give a Hugging Face style config.json: one JSON object such as `{\"model_type\": \"llama\", ...}`";
    let Ok(meta) = std::fs::metadata(&full) else {
        return Err(FileProblem::new(
            format!("config file `{shown}` does not exist"),
            missing_help(dir, rel),
        ));
    };
    if !meta.is_file() {
        return Err(FileProblem::new(format!("`{shown}` is not a file"), help));
    }
    if meta.len() > MAX_CONFIG_JSON_BYTES {
        return Err(FileProblem::new(
            format!(
                "config file `{shown}` is {} bytes, more than the {MAX_CONFIG_JSON_BYTES} a config.json may have",
                meta.len()
            ),
            help,
        ));
    }
    let text = omnipack_fs::read_capped(&full, MAX_CONFIG_JSON_BYTES).map_err(|err| {
        FileProblem::new(
            format!("cannot read `{shown}`: {err}"),
            "check the file's permissions",
        )
    })?;
    match serde_json::from_slice::<Value>(&text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => {
            let kind = match other {
                Value::Null => "null",
                Value::Bool(_) => "a boolean",
                Value::Number(_) => "a number",
                Value::String(_) => "a string",
                Value::Array(_) => "an array",
                Value::Object(_) => "an object",
            };
            Err(FileProblem::new(
                format!("config file `{shown}` holds {kind}, not a JSON object"),
                help,
            ))
        }
        Err(err) => Err(FileProblem::new(
            format!("config file `{shown}` is not valid JSON: {err}"),
            help,
        )),
    }
}

/// The safetensors shards checked during one validation, by the path shown to users: a
/// checkpoint that several components select from (one `prefix` each) is read once.
#[derive(Default)]
pub(crate) struct CheckedShards(HashMap<String, Option<FileProblem>>);

impl CheckedShards {
    /// What is wrong with shard `rel` (relative to `dir`), if anything.
    pub(crate) fn check(&mut self, dir: &Path, rel: &str) -> Option<FileProblem> {
        self.0
            .entry(shown(dir, rel))
            .or_insert_with(|| safetensors(dir, rel))
            .clone()
    }
}

/// Checks that a shard exists and has a valid safetensors header (read and validated by
/// omnipack-quant, as `build` reads it; the tensor data is not read).
fn safetensors(dir: &Path, rel: &str) -> Option<FileProblem> {
    let shown = shown(dir, rel);
    let full = dir.join(rel);
    let Ok(meta) = std::fs::metadata(&full) else {
        return Some(FileProblem::new(
            format!("safetensors file `{shown}` does not exist"),
            missing_help(dir, rel),
        ));
    };
    if !meta.is_file() {
        return Some(FileProblem::new(
            format!("`{shown}` is not a file"),
            "give the path of a .safetensors file",
        ));
    }
    let not_safetensors = "give a checkpoint saved with safetensors";
    match omnipack_quant::read_full_header(&full) {
        Ok(_) => None,
        Err(omnipack_quant::QuantError::Header { reason, .. }) => Some(FileProblem::new(
            format!("`{shown}` is not a safetensors file: {reason}"),
            not_safetensors,
        )),
        Err(omnipack_quant::QuantError::Tensor { tensor, reason, .. }) => Some(FileProblem::new(
            format!("`{shown}` is not a valid safetensors file: tensor `{tensor}`: {reason}"),
            not_safetensors,
        )),
        Err(omnipack_quant::QuantError::Io { source, .. }) => Some(FileProblem::new(
            format!("cannot read `{shown}`: {source}"),
            "check the file's permissions",
        )),
        Err(other) => Some(FileProblem::new(
            format!("cannot read `{shown}` as safetensors: {other}"),
            not_safetensors,
        )),
    }
}
