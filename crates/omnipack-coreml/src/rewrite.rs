//! Byte-reproducible packages: the same model converted twice gives the same bytes.
//!
//! coremltools writes three things that change from one conversion to the next: random item
//! identifiers (UUIDs) in `Manifest.json`, protobuf map entries in a per-process order, and the
//! conversion date (`com.github.apple.coremltools.conversion_date` in the user-defined
//! metadata). The rewrite
//!
//! * derives each item's identifier from the item (author, name, path, description) and a
//!   sha256 digest of its content (the rewritten model for the root model item; the files of a
//!   folder item by relative path), formatted as an upper-case UUID (version 8, RFC 9562);
//! * writes the entries of every protobuf map of the model (metadata, program functions and
//!   attributes, block specializations, operation inputs and attributes, tensor type
//!   attributes) in [`map_key_order`], recursively: the order protobuf's own deterministic
//!   serialization (upb, which coremltools uses) writes;
//! * drops the conversion-date entry: the date says when a conversion ran, not what the model
//!   is (the coremltools version and source entries stay);
//! * keeps every other byte: fields omnipack does not know are copied as they are, and the
//!   blob files (`weight.bin`) are not touched.
//!
//! `Manifest.json` is written as coremltools writes it (keys sorted, four-space indentation, a
//! final newline), with every key it had.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, ErrorKind};
use crate::package::{CoreMlModel, ModelFormat, PackageManifest};
use crate::wire::{self, Field, Value, WireError};

/// The user-defined metadata key the rewrite drops.
pub const CONVERSION_DATE_KEY: &str = "com.github.apple.coremltools.conversion_date";

/// Deepest message nesting the rewrite follows.
const MAX_DEPTH: u32 = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Model,
    PipelineWrapper,
    Pipeline,
    ModelDescription,
    Metadata,
    Program,
    Function,
    Block,
    Operation,
    Argument,
    Binding,
    NamedValueType,
    ValueType,
    TensorType,
    ListType,
    TupleType,
    DictionaryType,
    StateType,
    Value,
    ImmediateValue,
    ValueList,
    DictionaryValue,
    KeyValuePair,
}

#[derive(Debug, Clone, Copy)]
enum Child {
    Message(Kind),
    /// A `map<string, V>`: the value's kind, `None` for a scalar value.
    Map(Option<Kind>),
    /// `Metadata.userDefined`: a sorted string map without the conversion date.
    UserDefined,
}

/// The fields of each message kind that lead to a map (directly or further down).
fn child(kind: Kind, number: u32) -> Option<Child> {
    use Child::{Map, Message as M};
    use Kind::*;
    Some(match (kind, number) {
        (Model, 2) => M(ModelDescription),
        (Model, 200 | 201) => M(PipelineWrapper),
        (Model, 202) => M(Pipeline),
        (Model, 502) => M(Program),
        (PipelineWrapper, 1) => M(Pipeline),
        (Pipeline, 1) => M(Model),
        (ModelDescription, 100) => M(Metadata),
        (Metadata, 100) => Child::UserDefined,
        (Program, 2) => Map(Some(Function)),
        (Program, 4) => Map(Some(Value)),
        (Function, 1) => M(NamedValueType),
        (Function, 3) => Map(Some(Block)),
        (Function, 4) => Map(Some(Value)),
        (Block, 1) => M(NamedValueType),
        (Block, 3) => M(Operation),
        (Block, 4) => Map(Some(Value)),
        (Operation, 2) => Map(Some(Argument)),
        (Operation, 3) => M(NamedValueType),
        (Operation, 4) => M(Block),
        (Operation, 5) => Map(Some(Value)),
        (Argument, 1) => M(Binding),
        (Binding, 2) => M(Value),
        (NamedValueType, 2) => M(ValueType),
        (ValueType, 1) => M(TensorType),
        (ValueType, 2) => M(ListType),
        (ValueType, 3) => M(TupleType),
        (ValueType, 4) => M(DictionaryType),
        (ValueType, 5) => M(StateType),
        (TensorType, 4) => Map(Some(Value)),
        (ListType, 1) => M(ValueType),
        (TupleType, 1) => M(ValueType),
        (DictionaryType, 1 | 2) => M(ValueType),
        (StateType, 1) => M(ValueType),
        (Value, 2) => M(ValueType),
        (Value, 3) => M(ImmediateValue),
        (ImmediateValue, 2 | 3) => M(ValueList),
        (ImmediateValue, 4) => M(DictionaryValue),
        (ValueList, 1) => M(Value),
        (DictionaryValue, 1) => M(KeyValuePair),
        (KeyValuePair, 1 | 2) => M(Value),
        _ => return None,
    })
}

/// The order of map entries in canonical bytes, by key: byte order, except that a key comes
/// after the longer keys it begins (`pad_type` before `pad`). This is the order of protobuf's
/// deterministic serialization in upb, the protobuf runtime of Python (and so of coremltools):
/// it sorts keys by their common bytes, then by length, and writes the entries backwards.
pub fn map_key_order(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    let n = a.len().min(b.len());
    a[..n].cmp(&b[..n]).then(b.len().cmp(&a.len()))
}

/// The canonical bytes of an encoded `CoreML.Specification.Model`: maps in [`map_key_order`], the
/// conversion date dropped, every other byte kept. Canonical bytes map to themselves.
pub fn canonical_model_bytes(bytes: &[u8]) -> Result<Vec<u8>, WireError> {
    canonical(Kind::Model, bytes, 0)
}

fn canonical(kind: Kind, bytes: &[u8], depth: u32) -> Result<Vec<u8>, WireError> {
    if depth > MAX_DEPTH {
        return Err(WireError::TooDeep { offset: 0 });
    }
    let fields = wire::parse(bytes)?;
    // Map entries, rewritten and sorted per field number, handed out in order of their slots.
    let mut sorted: Vec<(u32, std::vec::IntoIter<Vec<u8>>)> = Vec::new();
    for f in &fields {
        let Some(Child::Map(_) | Child::UserDefined) = child(kind, f.number) else {
            continue;
        };
        if sorted.iter().any(|(n, _)| *n == f.number) {
            continue;
        }
        let c = child(kind, f.number).expect("a map");
        let mut entries: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        for e in fields.iter().filter(|g| g.number == f.number) {
            let Value::Bytes(payload) = e.value else {
                entries.push((Vec::new(), e.raw.to_vec()));
                continue;
            };
            let (key, entry) = map_entry(payload, c, depth)?;
            if matches!(c, Child::UserDefined) && key == CONVERSION_DATE_KEY.as_bytes() {
                continue;
            }
            let mut raw = Vec::new();
            if entry == payload {
                raw.extend_from_slice(e.raw);
            } else {
                wire::write_bytes_field(f.number, &entry, &mut raw);
            }
            entries.push((key, raw));
        }
        entries.sort_by(|a, b| map_key_order(&a.0, &b.0));
        let list: Vec<Vec<u8>> = entries.into_iter().map(|(_, r)| r).collect();
        sorted.push((f.number, list.into_iter()));
    }
    let mut out = Vec::with_capacity(bytes.len());
    for f in &fields {
        match child(kind, f.number) {
            Some(Child::Map(_) | Child::UserDefined) => {
                let it = &mut sorted
                    .iter_mut()
                    .find(|(n, _)| *n == f.number)
                    .expect("sorted")
                    .1;
                // Dropped entries leave their slots empty at the end.
                if let Some(raw) = it.next() {
                    out.extend_from_slice(&raw);
                }
            }
            Some(Child::Message(k)) => match f.value {
                Value::Bytes(payload) => {
                    let inner = canonical(k, payload, depth + 1)?;
                    if inner == payload {
                        out.extend_from_slice(f.raw);
                    } else {
                        wire::write_bytes_field(f.number, &inner, &mut out);
                    }
                }
                _ => out.extend_from_slice(f.raw),
            },
            None => out.extend_from_slice(f.raw),
        }
    }
    Ok(out)
}

/// A map entry's key bytes and its payload with the value made canonical.
fn map_entry(payload: &[u8], c: Child, depth: u32) -> Result<(Vec<u8>, Vec<u8>), WireError> {
    let fields: Vec<Field<'_>> = wire::parse(payload)?;
    let key = fields
        .iter()
        .rev()
        .find(|f| f.number == 1)
        .and_then(Field::bytes)
        .unwrap_or_default()
        .to_vec();
    let Child::Map(Some(kind)) = c else {
        return Ok((key, payload.to_vec()));
    };
    let mut out = Vec::with_capacity(payload.len());
    for f in &fields {
        match (f.number, f.value) {
            (2, Value::Bytes(v)) => {
                let inner = canonical(kind, v, depth + 1)?;
                if inner == v {
                    out.extend_from_slice(f.raw);
                } else {
                    wire::write_bytes_field(2, &inner, &mut out);
                }
            }
            _ => out.extend_from_slice(f.raw),
        }
    }
    Ok((key, out))
}

/// Where the bytes of a package entry come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntrySource {
    /// Bytes the rewrite produced (`Manifest.json`, `model.mlmodel`).
    Bytes(Vec<u8>),
    /// A file of the input package, to be copied as it is (`weight.bin`).
    File(PathBuf),
}

/// One file of a rewritten package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageEntry {
    /// Path inside the package folder, `/`-separated (`Data/com.apple.CoreML/model.mlmodel`).
    pub path: String,
    pub source: EntrySource,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn sha256_file(path: &Path) -> Result<[u8; 32], Error> {
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}

/// Every regular file below `dir`, as (`/`-separated relative path, path), sorted by the
/// relative path's bytes. Symbolic links and special files are errors.
pub(crate) fn files_below(dir: &Path) -> Result<Vec<(String, PathBuf)>, Error> {
    let mut out = Vec::new();
    let mut stack = vec![(String::new(), dir.to_path_buf())];
    while let Some((rel, path)) = stack.pop() {
        let rd = fs::read_dir(&path).map_err(|e| Error::io(&path, e))?;
        for entry in rd {
            let entry = entry.map_err(|e| Error::io(&path, e))?;
            let p = entry.path();
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                return Err(Error::new(&p, ErrorKind::NonUtf8Name));
            };
            let r = if rel.is_empty() {
                name.to_string()
            } else {
                format!("{rel}/{name}")
            };
            let meta = fs::symlink_metadata(&p).map_err(|e| Error::io(&p, e))?;
            if meta.is_dir() {
                stack.push((r, p));
            } else if meta.is_file() {
                out.push((r, p));
            } else {
                return Err(Error::new(&p, ErrorKind::NotRegularFile));
            }
        }
    }
    out.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    Ok(out)
}

/// An upper-case UUID (version 8, RFC 9562 variant) from the first 16 bytes of a digest.
fn uuid_from(digest: &[u8; 32]) -> String {
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest[..16]);
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex(&b).to_uppercase();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The identifier of an item: a digest of its fields and content.
pub fn item_identifier(
    author: &str,
    name: &str,
    path: &str,
    description: &str,
    content: &[u8; 32],
) -> String {
    let mut h = Sha256::new();
    h.update(b"omnipack mlpackage item v1\0");
    for s in [author, name, path, description] {
        h.update((s.len() as u64).to_le_bytes());
        h.update(s.as_bytes());
    }
    h.update(content);
    uuid_from(&h.finalize().into())
}

/// JSON with object keys sorted (recursively), as coremltools' manifest writer orders them.
fn sorted_json(v: &serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            serde_json::Value::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), sorted_json(&m[k])))
                    .collect(),
            )
        }
        serde_json::Value::Array(a) => {
            serde_json::Value::Array(a.iter().map(sorted_json).collect())
        }
        other => other.clone(),
    }
}

/// Pretty JSON with four-space indentation and a final newline.
fn manifest_json(v: &serde_json::Value) -> Vec<u8> {
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    serde::Serialize::serialize(v, &mut ser).expect("JSON values serialize");
    out.push(b'\n');
    out
}

/// The rewritten `Manifest.json` of a package whose root model's content digest is
/// `model_digest`; other items are digested from their files under `data_dir`.
pub(crate) fn rewrite_manifest(
    manifest: &PackageManifest,
    data_dir: &Path,
    model_digest: &[u8; 32],
    known: &std::collections::HashMap<PathBuf, [u8; 32]>,
) -> Result<Vec<u8>, Error> {
    let mut entries = serde_json::Map::new();
    let mut root = String::new();
    for (id, item) in &manifest.items {
        let digest = if *id == manifest.root_model_identifier {
            *model_digest
        } else {
            let p = data_dir.join(&item.path);
            let meta = fs::symlink_metadata(&p).map_err(|e| Error::io(&p, e))?;
            if meta.is_dir() {
                let mut h = Sha256::new();
                for (rel, file) in files_below(&p)? {
                    h.update((rel.len() as u64).to_le_bytes());
                    h.update(rel.as_bytes());
                    match known.get(&file) {
                        Some(d) => h.update(d),
                        None => h.update(sha256_file(&file)?),
                    }
                }
                h.finalize().into()
            } else if meta.is_file() {
                match known.get(&p) {
                    Some(d) => *d,
                    None => sha256_file(&p)?,
                }
            } else {
                return Err(Error::new(&p, ErrorKind::NotRegularFile));
            }
        };
        let new_id = item_identifier(
            &item.author,
            &item.name,
            &item.path,
            &item.description,
            &digest,
        );
        if *id == manifest.root_model_identifier {
            root = new_id.clone();
        }
        let original = manifest.json["itemInfoEntries"][id].clone();
        entries.insert(new_id, original);
    }
    let mut doc = manifest.json.clone();
    doc.insert("itemInfoEntries".into(), serde_json::Value::Object(entries));
    doc.insert(
        "rootModelIdentifier".into(),
        serde_json::Value::String(root),
    );
    Ok(manifest_json(&sorted_json(&serde_json::Value::Object(doc))))
}

impl CoreMlModel {
    /// The files of the byte-reproducible form of this package, sorted by path: the rewritten
    /// `Manifest.json` and `model.mlmodel` as bytes, every other file of the package folder
    /// (the blob files) as a source file to copy unchanged.
    pub fn reproducible_entries(&self) -> Result<Vec<PackageEntry>, Error> {
        let ModelFormat::Package(manifest) = &self.format else {
            let bytes = canonical_model_bytes(&self.model_bytes)
                .map_err(|e| Error::new(&self.model_path, ErrorKind::Wire(e)))?;
            let name = self
                .path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("model.mlmodel");
            return Ok(vec![PackageEntry {
                path: name.to_string(),
                source: EntrySource::Bytes(bytes),
            }]);
        };
        let model = canonical_model_bytes(&self.model_bytes)
            .map_err(|e| Error::new(&self.model_path, ErrorKind::Wire(e)))?;
        let digest: [u8; 32] = Sha256::digest(&model).into();
        let manifest_bytes = rewrite_manifest(
            manifest,
            &self.path.join("Data"),
            &digest,
            &Default::default(),
        )?;
        let mut entries = Vec::new();
        for (rel, file) in files_below(&self.path)? {
            let source = if rel == "Manifest.json" {
                EntrySource::Bytes(manifest_bytes.clone())
            } else if file == self.model_path {
                EntrySource::Bytes(model.clone())
            } else {
                EntrySource::File(file)
            };
            entries.push(PackageEntry { path: rel, source });
        }
        Ok(entries)
    }
}

/// A package folder being written: a temporary sibling of its final path, renamed into place
/// by [`Staging::commit`], removed if dropped before.
pub(crate) struct Staging {
    tmp: PathBuf,
    out: PathBuf,
    committed: bool,
}

impl Staging {
    /// Starts writing the package `out`, which must not exist.
    pub(crate) fn new(out: &Path) -> Result<Self, Error> {
        if fs::symlink_metadata(out).is_ok() {
            return Err(Error::new(out, ErrorKind::OutputExists));
        }
        let name = out
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("package");
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = out.with_file_name(format!(".{name}.tmp-{}-{n}", std::process::id()));
        if fs::symlink_metadata(&tmp).is_ok() {
            fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        Ok(Self {
            tmp,
            out: out.to_path_buf(),
            committed: false,
        })
    }

    /// Where an entry of the package goes (its parent folders created).
    pub(crate) fn entry_path(&self, rel: &str) -> Result<PathBuf, Error> {
        if !crate::package::is_relative_inside(rel) {
            return Err(Error::new(
                &self.out,
                ErrorKind::UnsafeEntryPath(rel.to_string()),
            ));
        }
        let dest = self.tmp.join(rel);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(|err| Error::io(parent, err))?;
        }
        Ok(dest)
    }

    /// The temporary folder.
    pub(crate) fn path(&self) -> &Path {
        &self.tmp
    }

    /// Renames the finished package into place.
    pub(crate) fn commit(mut self) -> Result<(), Error> {
        fs::rename(&self.tmp, &self.out).map_err(|e| Error::io(&self.out, e))?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.tmp);
        }
    }
}

/// Copies the file `src` to `dest`.
pub(crate) fn copy_file(src: &Path, dest: &Path) -> Result<(), Error> {
    let mut from = File::open(src).map_err(|err| Error::io(src, err))?;
    let mut to = File::create(dest).map_err(|err| Error::io(dest, err))?;
    io::copy(&mut from, &mut to).map_err(|err| Error::io(dest, err))?;
    Ok(())
}

/// Writes entries as a new package folder `out` (which must not exist): into a temporary
/// sibling folder first, renamed into place when complete.
pub fn write_package(entries: &[PackageEntry], out: &Path) -> Result<(), Error> {
    let staging = Staging::new(out)?;
    for e in entries {
        let dest = staging.entry_path(&e.path)?;
        match &e.source {
            EntrySource::Bytes(b) => {
                let mut f = File::create(&dest).map_err(|err| Error::io(&dest, err))?;
                f.write_all(b).map_err(|err| Error::io(&dest, err))?;
            }
            EntrySource::File(src) => copy_file(src, &dest)?,
        }
    }
    staging.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, value: &[u8]) -> Vec<u8> {
        let mut e = Vec::new();
        wire::write_bytes_field(1, key.as_bytes(), &mut e);
        wire::write_bytes_field(2, value, &mut e);
        e
    }

    #[test]
    fn sorts_metadata_and_drops_the_date() {
        // Model { description { metadata { userDefined: b, conversion_date, a } }, unknown 7 }
        let mut md = Vec::new();
        wire::write_bytes_field(3, b"author", &mut md);
        for (k, v) in [("b", "2"), (CONVERSION_DATE_KEY, "2026-01-01"), ("a", "1")] {
            wire::write_bytes_field(100, &entry(k, v.as_bytes()), &mut md);
        }
        let mut desc = Vec::new();
        wire::write_bytes_field(100, &md, &mut desc);
        let mut model = vec![0x08, 0x07];
        wire::write_bytes_field(2, &desc, &mut model);
        model.extend_from_slice(&[0x38, 0x2a]); // field 7 = 42, unknown to omnipack
        let out = canonical_model_bytes(&model).unwrap();

        let mut md2 = Vec::new();
        wire::write_bytes_field(3, b"author", &mut md2);
        for (k, v) in [("a", "1"), ("b", "2")] {
            wire::write_bytes_field(100, &entry(k, v.as_bytes()), &mut md2);
        }
        let mut desc2 = Vec::new();
        wire::write_bytes_field(100, &md2, &mut desc2);
        let mut want = vec![0x08, 0x07];
        wire::write_bytes_field(2, &desc2, &mut want);
        want.extend_from_slice(&[0x38, 0x2a]);
        assert_eq!(out, want);
        assert_eq!(canonical_model_bytes(&out).unwrap(), out);
    }

    /// A program `{ functions: { name: Function { opset, attributes: {..} } } }` with its map
    /// entries in the given order.
    /// Functions by name, each with its attributes (name, docString bytes).
    type Functions = Vec<(String, Vec<(String, Vec<u8>)>)>;

    fn program_model(functions: &Functions) -> Vec<u8> {
        let mut program = Vec::new();
        for (name, attrs) in functions {
            let mut function = Vec::new();
            wire::write_bytes_field(2, b"CoreML7", &mut function);
            for (k, v) in attrs {
                let mut value = Vec::new();
                wire::write_bytes_field(1, v, &mut value); // docString
                wire::write_bytes_field(4, &entry(k, &value), &mut function);
            }
            wire::write_bytes_field(2, &entry(name, &function), &mut program);
        }
        let mut model = vec![0x08, 0x08];
        wire::write_bytes_field(502, &program, &mut model);
        model
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            if let Ok(c) = canonical_model_bytes(&bytes) {
                proptest::prop_assert_eq!(canonical_model_bytes(&c).unwrap(), c);
            }
            let _ = crate::package::decode_model(&bytes, Path::new("m"));
        }

        #[test]
        fn map_order_does_not_matter(
            functions in proptest::collection::btree_map(
                "[a-z]{1,6}",
                proptest::collection::btree_map("[a-z]{1,6}", proptest::collection::vec(0u8..255, 0..8), 0..5),
                1..5,
            ),
            seed in 0u64..1000,
        ) {
            let mut sorted: Functions =
                functions.iter().map(|(k, v)| (k.clone(), v.iter().map(|(a, b)| (a.clone(), b.clone())).collect())).collect();
            sorted.sort_by(|a, b| map_key_order(a.0.as_bytes(), b.0.as_bytes()));
            for (_, attrs) in &mut sorted {
                attrs.sort_by(|a, b| map_key_order(a.0.as_bytes(), b.0.as_bytes()));
            }
            // A deterministic shuffle of both levels.
            let mut shuffled = sorted.clone();
            let n = shuffled.len();
            shuffled.rotate_left((seed as usize) % n);
            for (_, attrs) in &mut shuffled {
                attrs.reverse();
            }
            let a = canonical_model_bytes(&program_model(&shuffled)).unwrap();
            let b = canonical_model_bytes(&program_model(&sorted)).unwrap();
            proptest::prop_assert_eq!(&a, &b);
            // Already sorted input is left byte for byte.
            proptest::prop_assert_eq!(b, program_model(&sorted));
        }
    }

    #[test]
    fn map_keys_are_in_upb_order() {
        // What Python protobuf 7 (upb) writes for these keys with deterministic=True.
        let mut keys = vec![
            "x", "", "pad", "ab", "b", "abd", "aa", "a", "ba", "x_", "pad_type", "abc",
        ];
        keys.sort_by(|a, b| map_key_order(a.as_bytes(), b.as_bytes()));
        assert_eq!(
            keys,
            [
                "aa", "abc", "abd", "ab", "a", "ba", "b", "pad_type", "pad", "x_", "x", ""
            ]
        );
    }

    #[test]
    fn uuids_are_upper_case_version_8() {
        let id = item_identifier(
            "com.apple.CoreML",
            "model.mlmodel",
            "com.apple.CoreML/model.mlmodel",
            "d",
            &[0; 32],
        );
        assert_eq!(id.len(), 36);
        assert_eq!(id, id.to_uppercase());
        assert_eq!(&id[14..15], "8");
        assert!(matches!(&id[19..20], "8" | "9" | "A" | "B"));
    }

    #[test]
    fn manifest_json_matches_the_coremltools_layout() {
        let v = serde_json::json!({"b": {"y": "1", "x": "2"}, "a": "s"});
        let s = String::from_utf8(manifest_json(&sorted_json(&v))).unwrap();
        assert_eq!(
            s,
            "{\n    \"a\": \"s\",\n    \"b\": {\n        \"x\": \"2\",\n        \"y\": \"1\"\n    }\n}\n"
        );
    }
}
