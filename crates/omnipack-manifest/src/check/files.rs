//! Files a manifest names: a path that does not exist (with "did you mean"), a `source.config`
//! that must hold one JSON object, a safetensors checkpoint (checked cheaply: the weights are
//! not read).

use std::io::Read;
use std::path::Path;

use serde_json::Value;

use crate::did_you_mean::nearest_in_folder;
use crate::rel_path::{self, shown};

/// Largest `source.config` file accepted (a config.json is a few KiB).
const MAX_CONFIG_JSON_BYTES: u64 = 16 * 1024 * 1024;

/// What is wrong with a file, and how to fix it.
pub(crate) struct FileProblem {
    pub message: String,
    pub help: String,
}

impl FileProblem {
    fn new(message: String, help: impl Into<String>) -> Self {
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
    let text = std::fs::read(&full).map_err(|err| {
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

/// Checks cheaply that a shard exists and looks like safetensors: an 8-byte little-endian
/// header length that fits the file, then `{`.
pub(crate) fn safetensors(dir: &Path, rel: &str) -> Option<FileProblem> {
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
    let not_st = |why: String| {
        Some(FileProblem::new(
            format!("`{shown}` is not a safetensors file: {why}"),
            "give a checkpoint saved with safetensors",
        ))
    };
    let mut head = [0u8; 9];
    let read = std::fs::File::open(&full).and_then(|mut f| {
        let mut n = 0;
        while n < head.len() {
            let k = f.read(&mut head[n..])?;
            if k == 0 {
                break;
            }
            n += k;
        }
        Ok(n)
    });
    let n = match read {
        Ok(n) => n,
        Err(err) => {
            return Some(FileProblem::new(
                format!("cannot read `{shown}`: {err}"),
                "check the file's permissions",
            ));
        }
    };
    if n < 9 {
        return not_st(format!("it is only {} bytes long", meta.len()));
    }
    let header_len = u64::from_le_bytes([
        head[0], head[1], head[2], head[3], head[4], head[5], head[6], head[7],
    ]);
    if header_len < 2 || header_len > meta.len() - 8 {
        return not_st(format!(
            "its header length {header_len} does not fit the file ({} bytes)",
            meta.len()
        ));
    }
    if head[8] != b'{' {
        return not_st("its header is not JSON".into());
    }
    None
}
