//! Reading `.mlpackage` folders and `.mlmodel` files.
//!
//! A package is `Manifest.json` (the items of the package keyed by identifier, and which item
//! is the root model) plus a `Data/` folder: `Data/com.apple.CoreML/model.mlmodel` (the
//! `CoreML.Specification.Model` protobuf) and, for an ML program,
//! `Data/com.apple.CoreML/weights/weight.bin` (MIL blob storage). Every file is read bounded:
//! regular files only, sizes checked against limits before reading, blob files indexed record
//! by record (their data is never read here).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use prost::Message;

use crate::blob::{BlobFile, BlobIndex, BlobIndexError};
use crate::error::{Error, ErrorKind};
use crate::spec;
use crate::wire;

/// Largest `Manifest.json` read.
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;
/// Largest `model.mlmodel` (or single `.mlmodel` file) read into memory: protobuf messages are
/// limited to 2 GiB; ML programs keep their weights in blob files, so theirs are small.
pub const MAX_MODEL_BYTES: u64 = 1 << 31;

/// The prefix of a blob file name in a program: the folder of `model.mlmodel`.
pub const MODEL_PATH_PREFIX: &str = "@model_path/";

/// One entry of `Manifest.json`'s `itemInfoEntries`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestItem {
    pub identifier: String,
    pub author: String,
    pub description: String,
    pub name: String,
    /// Path under the package's `Data/` folder (a file or a folder).
    pub path: String,
}

/// `Manifest.json` of a package.
#[derive(Debug, Clone, PartialEq)]
pub struct PackageManifest {
    pub file_format_version: String,
    /// Items by identifier.
    pub items: BTreeMap<String, ManifestItem>,
    pub root_model_identifier: String,
    /// The whole document (unknown keys included), as read.
    pub json: serde_json::Map<String, serde_json::Value>,
}

impl PackageManifest {
    /// Parses and checks a manifest (`path` names it in errors).
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self, Error> {
        let bad = |m: String| Error::new(path, ErrorKind::Manifest(m));
        let json: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        let serde_json::Value::Object(json) = json else {
            return Err(bad("the document is not a JSON object".into()));
        };
        let string = |obj: &serde_json::Map<String, serde_json::Value>, key: &str, what: &str| {
            obj.get(key)
                .and_then(|v| v.as_str())
                .map(str::to_string)
                .ok_or_else(|| bad(format!("{what} has no string `{key}`")))
        };
        let file_format_version = string(&json, "fileFormatVersion", "the manifest")?;
        let root_model_identifier = string(&json, "rootModelIdentifier", "the manifest")?;
        let Some(serde_json::Value::Object(entries)) = json.get("itemInfoEntries") else {
            return Err(bad("the manifest has no object `itemInfoEntries`".into()));
        };
        let mut items = BTreeMap::new();
        for (identifier, entry) in entries {
            let serde_json::Value::Object(entry) = entry else {
                return Err(bad(format!("item `{identifier}` is not an object")));
            };
            let what = format!("item `{identifier}`");
            let item = ManifestItem {
                identifier: identifier.clone(),
                author: string(entry, "author", &what)?,
                description: string(entry, "description", &what)?,
                name: string(entry, "name", &what)?,
                path: string(entry, "path", &what)?,
            };
            if !is_relative_inside(&item.path) {
                return Err(Error::new(
                    path,
                    ErrorKind::UnsafeItemPath {
                        identifier: identifier.clone(),
                        path: item.path,
                    },
                ));
            }
            items.insert(identifier.clone(), item);
        }
        if !items.contains_key(&root_model_identifier) {
            return Err(bad(format!(
                "`rootModelIdentifier` is `{root_model_identifier}`, which no item has"
            )));
        }
        Ok(Self {
            file_format_version,
            items,
            root_model_identifier,
            json,
        })
    }

    /// The root model's item.
    pub fn root_item(&self) -> &ManifestItem {
        &self.items[&self.root_model_identifier]
    }
}

/// Whether `p` is a non-empty relative path that stays inside its base (no `..`, no root).
pub(crate) fn is_relative_inside(p: &str) -> bool {
    let path = Path::new(p);
    !p.is_empty()
        && path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

/// How a model is stored.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelFormat {
    /// A `.mlpackage` folder.
    Package(PackageManifest),
    /// A single `.mlmodel` file (read for its description; its size is the file's).
    SingleFile,
}

/// A Core ML model as read from disk.
#[derive(Debug, Clone, PartialEq)]
pub struct CoreMlModel {
    /// The `.mlpackage` folder or `.mlmodel` file.
    pub path: PathBuf,
    pub format: ModelFormat,
    /// The `model.mlmodel` protobuf file (the `.mlmodel` itself for a single file).
    pub model_path: PathBuf,
    pub model_bytes: Vec<u8>,
    /// The typed view of `model_bytes`.
    pub model: spec::Model,
    /// The blob files the ML program refers to, each indexed and checked.
    pub blob_files: Vec<BlobFile>,
}

/// Opens a `.mlpackage` folder or a `.mlmodel` file.
pub fn open(path: &Path) -> Result<CoreMlModel, Error> {
    let meta = fs::symlink_metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        open_package(path)
    } else if meta.is_file() {
        open_model_file(path)
    } else {
        Err(Error::new(path, ErrorKind::UnknownFormat))
    }
}

/// Reads a regular file of at most `limit` bytes.
pub(crate) fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, Error> {
    let meta = fs::symlink_metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(Error::new(path, ErrorKind::NotRegularFile));
    }
    if meta.len() > limit {
        return Err(Error::new(
            path,
            ErrorKind::TooLarge {
                size: meta.len(),
                limit,
            },
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    File::open(path)
        .and_then(|f| f.take(limit + 1).read_to_end(&mut bytes))
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > limit {
        return Err(Error::new(
            path,
            ErrorKind::TooLarge {
                size: bytes.len() as u64,
                limit,
            },
        ));
    }
    Ok(bytes)
}

/// `base/rel`, after checking that no folder on the way from `base` is a symbolic link (a
/// package cannot lead the reader out of itself).
fn no_links_below(base: &Path, rel: &Path) -> Result<PathBuf, Error> {
    let mut p = base.to_path_buf();
    let parts: Vec<_> = rel.components().collect();
    for (i, c) in parts.iter().enumerate() {
        p.push(c);
        if i + 1 < parts.len() {
            let meta = fs::symlink_metadata(&p).map_err(|e| Error::io(&p, e))?;
            if !meta.is_dir() {
                return Err(Error::new(&p, ErrorKind::NotADirectory));
            }
        }
    }
    Ok(p)
}

/// Decodes model bytes (`path` names the file in errors). The wire layer runs first so a
/// malformed message is reported with its byte offset.
pub fn decode_model(bytes: &[u8], path: &Path) -> Result<spec::Model, Error> {
    wire::parse(bytes).map_err(|e| Error::new(path, ErrorKind::Wire(e)))?;
    spec::Model::decode(bytes).map_err(|e| Error::new(path, ErrorKind::Decode(e)))
}

/// Opens a single `.mlmodel` file.
pub fn open_model_file(path: &Path) -> Result<CoreMlModel, Error> {
    let model_bytes = read_bounded(path, MAX_MODEL_BYTES)?;
    let model = decode_model(&model_bytes, path)?;
    Ok(CoreMlModel {
        path: path.to_path_buf(),
        format: ModelFormat::SingleFile,
        model_path: path.to_path_buf(),
        model_bytes,
        model,
        blob_files: Vec::new(),
    })
}

/// Opens a `.mlpackage` folder: its manifest, root model and blob files.
pub fn open_package(path: &Path) -> Result<CoreMlModel, Error> {
    let meta = fs::symlink_metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_dir() {
        return Err(Error::new(path, ErrorKind::NotADirectory));
    }
    let manifest_path = path.join("Manifest.json");
    let manifest = PackageManifest::parse(
        &read_bounded(&manifest_path, MAX_MANIFEST_BYTES)?,
        &manifest_path,
    )?;
    let model_path = no_links_below(path, &Path::new("Data").join(&manifest.root_item().path))?;
    let model_bytes = read_bounded(&model_path, MAX_MODEL_BYTES)?;
    let model = decode_model(&model_bytes, &model_path)?;
    let model_dir = model_path.parent().unwrap_or(path).to_path_buf();
    let blob_files = index_blob_files(&model, &model_path, &model_dir)?;
    Ok(CoreMlModel {
        path: path.to_path_buf(),
        format: ModelFormat::Package(manifest),
        model_path,
        model_bytes,
        model,
        blob_files,
    })
}

/// A reference from an operation to a blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobReference {
    /// The name of the operation's (first) output.
    pub operation: String,
    pub file_name: String,
    pub offset: u64,
}

/// The ML programs of a model: the model's own and those of pipeline members.
pub fn programs(model: &spec::Model) -> Vec<&spec::Program> {
    let mut out = Vec::new();
    collect_programs(model, &mut out);
    out
}

fn collect_programs<'a>(model: &'a spec::Model, out: &mut Vec<&'a spec::Program>) {
    match &model.r#type {
        Some(spec::model::Type::MlProgram(p)) => out.push(p),
        Some(spec::model::Type::Pipeline(p)) => {
            p.models.iter().for_each(|m| collect_programs(m, out))
        }
        Some(
            spec::model::Type::PipelineClassifier(w) | spec::model::Type::PipelineRegressor(w),
        ) => {
            if let Some(p) = &w.pipeline {
                p.models.iter().for_each(|m| collect_programs(m, out));
            }
        }
        None => {}
    }
}

/// Every operation of a program (nested blocks included), in program order, each with the
/// block it is in. Functions come in name order; each function's block for its own opset.
pub fn operations(program: &spec::Program) -> Result<Vec<&spec::Operation>, String> {
    let mut out = Vec::new();
    for (name, function) in &program.functions {
        let block = function
            .block_specializations
            .get(&function.opset)
            .ok_or_else(|| {
                format!(
                    "function `{name}` has no block for its opset `{}`",
                    function.opset
                )
            })?;
        collect_ops(block, &mut out);
    }
    Ok(out)
}

fn collect_ops<'a>(block: &'a spec::Block, out: &mut Vec<&'a spec::Operation>) {
    for op in &block.operations {
        out.push(op);
        for b in &op.blocks {
            collect_ops(b, out);
        }
    }
}

/// The name an operation is known by: its first output's name.
pub fn op_name(op: &spec::Operation) -> &str {
    op.outputs.first().map_or("", |o| o.name.as_str())
}

/// The values an operation carries itself: its attributes and the values bound to its inputs.
pub fn op_values(op: &spec::Operation) -> impl Iterator<Item = (&str, &spec::Value)> {
    op.attributes
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .chain(op.inputs.iter().flat_map(|(k, arg)| {
            arg.arguments.iter().filter_map(move |b| match &b.binding {
                Some(spec::binding::Binding::Value(v)) => Some((k.as_str(), v)),
                _ => None,
            })
        }))
}

/// Every blob reference of the model's programs.
pub fn blob_references(model: &spec::Model) -> Result<Vec<BlobReference>, String> {
    let mut refs = Vec::new();
    for program in programs(model) {
        for op in operations(program)? {
            for (_, v) in op_values(op) {
                if let Some(spec::value::Value::BlobFileValue(b)) = &v.value {
                    refs.push(BlobReference {
                        operation: op_name(op).to_string(),
                        file_name: b.file_name.clone(),
                        offset: b.offset,
                    });
                }
            }
        }
    }
    Ok(refs)
}

/// Indexes every blob file the programs refer to and checks that each reference names a
/// record.
fn index_blob_files(
    model: &spec::Model,
    model_path: &Path,
    model_dir: &Path,
) -> Result<Vec<BlobFile>, Error> {
    let refs = blob_references(model).map_err(|m| Error::new(model_path, ErrorKind::Program(m)))?;
    let names: BTreeSet<&str> = refs.iter().map(|r| r.file_name.as_str()).collect();
    let mut files = Vec::new();
    for name in names {
        let first = refs
            .iter()
            .find(|r| r.file_name == name)
            .expect("a reference");
        let rel = name
            .strip_prefix(MODEL_PATH_PREFIX)
            .filter(|r| is_relative_inside(r));
        let Some(rel) = rel else {
            return Err(Error::new(
                model_path,
                ErrorKind::BlobFileOutside {
                    operation: first.operation.clone(),
                    file_name: name.to_string(),
                },
            ));
        };
        let path = no_links_below(model_dir, Path::new(rel))?;
        let meta = fs::symlink_metadata(&path).map_err(|e| Error::io(&path, e))?;
        if !meta.is_file() {
            return Err(Error::new(&path, ErrorKind::NotRegularFile));
        }
        let index = BlobIndex::open(&path).map_err(|e| match e {
            BlobIndexError::Io(e) => Error::io(&path, e),
            BlobIndexError::Format(e) => Error::new(&path, ErrorKind::Blob(e)),
        })?;
        for r in refs.iter().filter(|r| r.file_name == name) {
            if index.record_at(r.offset).is_none() {
                return Err(Error::new(
                    &path,
                    ErrorKind::MissingBlob {
                        operation: r.operation.clone(),
                        file_name: name.to_string(),
                        offset: r.offset,
                    },
                ));
            }
        }
        files.push(BlobFile {
            program_name: name.to_string(),
            path,
            index,
        });
    }
    Ok(files)
}

impl CoreMlModel {
    /// The blob file a program names.
    pub fn blob_file(&self, program_name: &str) -> Option<&BlobFile> {
        self.blob_files
            .iter()
            .find(|b| b.program_name == program_name)
    }

    /// The package manifest, for a package.
    pub fn manifest(&self) -> Option<&PackageManifest> {
        match &self.format {
            ModelFormat::Package(m) => Some(m),
            ModelFormat::SingleFile => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_paths_stay_inside() {
        assert!(is_relative_inside("com.apple.CoreML/model.mlmodel"));
        assert!(!is_relative_inside("../x"));
        assert!(!is_relative_inside("/etc/passwd"));
        assert!(!is_relative_inside("a/../../b"));
        assert!(!is_relative_inside(""));
    }

    #[test]
    fn manifest_errors_name_the_cause() {
        let p = Path::new("M.json");
        let e = PackageManifest::parse(b"[]", p).unwrap_err();
        assert_eq!(
            e.to_string(),
            "M.json: is not a valid package manifest: the document is not a JSON object"
        );
        let e = PackageManifest::parse(
            br#"{"fileFormatVersion":"1.0.0","rootModelIdentifier":"A","itemInfoEntries":{"A":{"author":"a","description":"d","name":"n","path":"../../x"}}}"#,
            p,
        )
        .unwrap_err();
        assert!(matches!(e.kind, ErrorKind::UnsafeItemPath { .. }), "{e}");
        let e = PackageManifest::parse(
            br#"{"fileFormatVersion":"1.0.0","rootModelIdentifier":"B","itemInfoEntries":{}}"#,
            p,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("`rootModelIdentifier` is `B`, which no item has"),
            "{e}"
        );
    }
}
