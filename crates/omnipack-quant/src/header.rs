//! Reading and validating safetensors headers, single files and shard sets.
//!
//! A safetensors file is an 8-byte little-endian header length `N`, `N` bytes of JSON
//! (`{"__metadata__": {...}, "<name>": {"dtype", "shape", "data_offsets": [begin, end]}}`),
//! then the tensor data. Nothing in the header is trusted before it is checked: the length
//! against a cap and the file size, every dtype, every shape product against overflow, and
//! the offsets against the shape, each other and the data size.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use crate::dtype::{Dtype, TensorInfo};
use crate::error::QuantError;

/// The largest header omnipack accepts (100 MiB), as the reference implementation does.
pub const MAX_HEADER_BYTES: u64 = 100 * 1024 * 1024;

/// One validated tensor entry: its description and where its bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorEntry {
    /// Name, dtype and shape.
    pub info: TensorInfo,
    /// Byte offset of the tensor data from the start of the file.
    pub offset: u64,
    /// Byte length of the tensor data (`numel * dtype size`).
    pub len: u64,
}

/// A validated safetensors header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Tensors in file order (by data offset).
    pub tensors: Vec<TensorEntry>,
    /// The `__metadata__` map (empty when absent or `null`, as `mx.save_safetensors` writes
    /// it without metadata).
    pub metadata: BTreeMap<String, String>,
    /// Byte offset where tensor data starts (8 + header length).
    pub data_start: u64,
    /// Total file size.
    pub file_size: u64,
}

impl Header {
    /// Looks a tensor up by name.
    pub fn get(&self, name: &str) -> Option<&TensorEntry> {
        self.tensors.iter().find(|t| t.info.name == name)
    }
}

/// Reads and validates only the header of a safetensors file (no tensor data is read or
/// mapped). Tensors are returned in file order.
pub fn read_header(path: impl AsRef<Path>) -> Result<Vec<TensorInfo>, QuantError> {
    Ok(read_full_header(path)?
        .tensors
        .into_iter()
        .map(|t| t.info)
        .collect())
}

/// Like [`read_header`], also returning offsets and metadata.
pub fn read_full_header(path: impl AsRef<Path>) -> Result<Header, QuantError> {
    let path = path.as_ref();
    let mut file = omnipack_fs::open_regular(path).map_err(|e| QuantError::io(path, e))?;
    let file_size = file.metadata().map_err(|e| QuantError::io(path, e))?.len();
    let mut len_bytes = [0u8; 8];
    if file_size < 8 {
        return Err(QuantError::header(
            path,
            format!(
                "file is {file_size} bytes, too short for the 8-byte header length (truncated?)"
            ),
        ));
    }
    file.read_exact(&mut len_bytes)
        .map_err(|e| QuantError::io(path, e))?;
    let n = check_header_len(path, u64::from_le_bytes(len_bytes), file_size)?;
    let mut json = vec![0u8; n as usize];
    file.read_exact(&mut json)
        .map_err(|e| QuantError::io(path, e))?;
    parse_header(path, &json, file_size)
}

fn check_header_len(path: &Path, n: u64, file_size: u64) -> Result<u64, QuantError> {
    if n > MAX_HEADER_BYTES {
        return Err(QuantError::header(
            path,
            format!("declared header length {n} bytes exceeds the {MAX_HEADER_BYTES}-byte limit"),
        ));
    }
    if n > file_size - 8 {
        return Err(QuantError::header(
            path,
            format!(
                "declared header length {n} bytes runs past the end of the {file_size}-byte file (truncated?)"
            ),
        ));
    }
    if n < 2 {
        return Err(QuantError::header(
            path,
            format!("header length {n} is too short"),
        ));
    }
    Ok(n)
}

/// The first key that a JSON object repeats, if any (its values are skipped, not built).
struct TopLevelKeys(Option<String>);

impl<'de> serde::Deserialize<'de> for TopLevelKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = TopLevelKeys;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<TopLevelKeys, A::Error> {
                let mut seen = std::collections::BTreeSet::new();
                let mut dup = None;
                while let Some(k) = map.next_key::<String>()? {
                    map.next_value::<serde::de::IgnoredAny>()?;
                    if dup.is_none() && !seen.insert(k.clone()) {
                        dup = Some(k);
                    }
                }
                Ok(TopLevelKeys(dup))
            }
        }
        d.deserialize_map(V)
    }
}

/// Parses and validates header JSON bytes (the `N` bytes after the length prefix) for a
/// file of `file_size` bytes.
pub fn parse_header(path: &Path, json: &[u8], file_size: u64) -> Result<Header, QuantError> {
    let data_start = 8 + json.len() as u64;
    let value: serde_json::Value = serde_json::from_slice(json)
        .map_err(|e| QuantError::header(path, format!("header is not valid JSON: {e}")))?;
    let serde_json::Value::Object(map) = value else {
        return Err(QuantError::header(path, "header is not a JSON object"));
    };
    // serde_json keeps the last of duplicate keys; a tensor named twice is a hostile header.
    if let Ok(TopLevelKeys(Some(dup))) = serde_json::from_slice::<TopLevelKeys>(json) {
        return Err(QuantError::tensor(
            path,
            dup,
            "named twice in the header (duplicate tensor name)",
        ));
    }
    let data_len = file_size - data_start;
    let mut metadata = BTreeMap::new();
    let mut tensors: Vec<(u64, u64, TensorInfo)> = Vec::with_capacity(map.len());
    for (name, v) in &map {
        if name == "__metadata__" {
            // `mx.save_safetensors` without metadata writes `null`: no metadata.
            let m = match v {
                serde_json::Value::Object(m) => m,
                serde_json::Value::Null => continue,
                _ => {
                    return Err(QuantError::header(
                        path,
                        "`__metadata__` is not an object (or null)",
                    ));
                }
            };
            for (k, v) in m {
                let serde_json::Value::String(s) = v else {
                    return Err(QuantError::header(
                        path,
                        format!("`__metadata__.{k}` is not a string"),
                    ));
                };
                metadata.insert(k.clone(), s.clone());
            }
            continue;
        }
        let bad = |reason: String| QuantError::tensor(path, name.clone(), reason);
        let serde_json::Value::Object(entry) = v else {
            return Err(bad("entry is not an object".into()));
        };
        for key in entry.keys() {
            if !matches!(key.as_str(), "dtype" | "shape" | "data_offsets") {
                return Err(bad(format!("unknown key `{key}`")));
            }
        }
        let dtype_name = entry
            .get("dtype")
            .and_then(|d| d.as_str())
            .ok_or_else(|| bad("missing or non-string `dtype`".into()))?;
        let dtype = Dtype::from_safetensors_name(dtype_name)
            .ok_or_else(|| bad(format!("unknown dtype `{dtype_name}`")))?;
        let shape_v = entry
            .get("shape")
            .and_then(|s| s.as_array())
            .ok_or_else(|| bad("missing or non-array `shape`".into()))?;
        let mut shape = Vec::with_capacity(shape_v.len().min(64));
        let mut numel: u64 = 1;
        for d in shape_v {
            let d = d
                .as_u64()
                .ok_or_else(|| bad(format!("shape entry {d} is not a non-negative integer")))?;
            numel = numel
                .checked_mul(d)
                .ok_or_else(|| bad("shape product overflows".into()))?;
            shape.push(d);
        }
        let nbytes = numel
            .checked_mul(dtype.size_bytes())
            .ok_or_else(|| bad("shape x dtype size overflows".into()))?;
        let offs = entry
            .get("data_offsets")
            .and_then(|o| o.as_array())
            .filter(|o| o.len() == 2)
            .ok_or_else(|| bad("missing `data_offsets` [begin, end]".into()))?;
        let (Some(begin), Some(end)) = (offs[0].as_u64(), offs[1].as_u64()) else {
            return Err(bad("`data_offsets` are not non-negative integers".into()));
        };
        if end < begin {
            return Err(bad(format!(
                "data_offsets [{begin}, {end}] end before they begin"
            )));
        }
        if end > data_len {
            return Err(bad(format!(
                "data_offsets [{begin}, {end}] run past the {data_len} bytes of tensor data (truncated or lying header)"
            )));
        }
        if end - begin != nbytes {
            return Err(bad(format!(
                "data_offsets [{begin}, {end}] span {} bytes but shape {shape:?} x {dtype} needs {nbytes}",
                end - begin
            )));
        }
        tensors.push((
            begin,
            end,
            TensorInfo {
                name: name.clone(),
                dtype,
                shape,
            },
        ));
    }
    tensors.sort_by(|a, b| (a.0, a.1, &a.2.name).cmp(&(b.0, b.1, &b.2.name)));
    let mut expected = 0u64;
    for (begin, end, info) in &tensors {
        if *begin != expected {
            let reason = if *begin < expected {
                format!(
                    "data_offsets [{begin}, {end}] overlap the previous tensor (ends at {expected})"
                )
            } else {
                format!("data_offsets [{begin}, {end}] leave a gap after byte {expected}")
            };
            return Err(QuantError::tensor(path, info.name.clone(), reason));
        }
        expected = *end;
    }
    if expected != data_len {
        return Err(QuantError::header(
            path,
            format!("tensors cover {expected} bytes but the file has {data_len} bytes of data"),
        ));
    }
    Ok(Header {
        tensors: tensors
            .into_iter()
            .map(|(begin, end, info)| TensorEntry {
                info,
                offset: data_start + begin,
                len: end - begin,
            })
            .collect(),
        metadata,
        data_start,
        file_size,
    })
}

/// The shard files of a checkpoint: a `*.safetensors.index.json` (its `weight_map` values,
/// relative to the index, sorted and deduplicated) or a single `.safetensors` file.
pub fn resolve_shards(path: impl AsRef<Path>) -> Result<Vec<PathBuf>, QuantError> {
    let path = path.as_ref();
    let is_index = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with(".json"));
    if !is_index {
        return Ok(vec![path.to_path_buf()]);
    }
    let size = std::fs::metadata(path)
        .map_err(|e| QuantError::io(path, e))?
        .len();
    if size > MAX_HEADER_BYTES {
        return Err(QuantError::header(
            path,
            format!("shard index is {size} bytes, over the {MAX_HEADER_BYTES}-byte limit"),
        ));
    }
    let bytes =
        omnipack_fs::read_capped(path, MAX_HEADER_BYTES).map_err(|e| QuantError::io(path, e))?;
    let v: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| QuantError::header(path, format!("shard index is not valid JSON: {e}")))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| QuantError::header(path, "shard index has no `weight_map` object"))?;
    let dir = path.parent().unwrap_or(Path::new(""));
    let mut files = std::collections::BTreeSet::new();
    for (tensor, file) in map {
        let file = file.as_str().ok_or_else(|| {
            QuantError::tensor(path, tensor.clone(), "weight_map value is not a string")
        })?;
        let rel = Path::new(file);
        if !rel
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(QuantError::tensor(
                path,
                tensor.clone(),
                format!("shard path `{file}` must be relative and stay inside the index's folder"),
            ));
        }
        files.insert(dir.join(rel));
    }
    Ok(files.into_iter().collect())
}

/// A tensor of a shard set and the shard that holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceTensor {
    /// The shard file.
    pub file: PathBuf,
    /// Name, dtype, shape.
    pub info: TensorInfo,
}

/// Reads the headers of a shard set (see [`resolve_shards`]); a tensor name present in two
/// shards is an error. Tensors are returned shard by shard, each in file order.
///
/// For an index, every `weight_map` entry must name a tensor present in the shard it points to.
pub fn read_shard_set(path: impl AsRef<Path>) -> Result<Vec<SourceTensor>, QuantError> {
    let path = path.as_ref();
    let tensors = read_headers(&resolve_shards(path)?)?;
    if path.extension().is_some_and(|e| e == "json") {
        // resolve_shards validated the index; read the map again to cross-check it.
        let bytes = omnipack_fs::read_capped(path, MAX_HEADER_BYTES)
            .map_err(|e| QuantError::io(path, e))?;
        let v: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| QuantError::header(path, format!("shard index is not valid JSON: {e}")))?;
        let dir = path.parent().unwrap_or(Path::new(""));
        let found: BTreeMap<&str, &Path> = tensors
            .iter()
            .map(|t| (t.info.name.as_str(), t.file.as_path()))
            .collect();
        if let Some(map) = v.get("weight_map").and_then(|m| m.as_object()) {
            for (tensor, file) in map {
                let want = dir.join(file.as_str().unwrap_or_default());
                if found.get(tensor.as_str()) != Some(&want.as_path()) {
                    return Err(QuantError::tensor(
                        path,
                        tensor.clone(),
                        format!(
                            "listed in weight_map for {} but not found there",
                            want.display()
                        ),
                    ));
                }
            }
        }
    }
    Ok(tensors)
}

/// Reads the headers of several shards; a tensor name present in two shards is an error.
pub fn read_headers(shards: &[PathBuf]) -> Result<Vec<SourceTensor>, QuantError> {
    let mut seen: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut out = Vec::new();
    for shard in shards {
        for info in read_header(shard)? {
            if let Some(prev) = seen.insert(info.name.clone(), shard.clone()) {
                return Err(QuantError::tensor(
                    shard,
                    info.name,
                    format!("also present in {}", prev.display()),
                ));
            }
            out.push(SourceTensor {
                file: shard.clone(),
                info,
            });
        }
    }
    Ok(out)
}

/// An opened, memory-mapped, validated safetensors file.
#[derive(Debug)]
pub struct SafetensorsFile {
    path: PathBuf,
    header: Header,
    mmap: memmap2::Mmap,
}

impl SafetensorsFile {
    /// Opens and validates a file and maps it read-only.
    pub fn open(path: impl AsRef<Path>) -> Result<SafetensorsFile, QuantError> {
        let path = path.as_ref().to_path_buf();
        let header = read_full_header(&path)?;
        let file = omnipack_fs::open_regular(&path).map_err(|e| QuantError::io(&path, e))?;
        // SAFETY: the map is read-only; like every mmap-based reader we assume the file is not
        // truncated while mapped. Its size is checked against the header right after.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| QuantError::io(&path, e))?;
        if mmap.len() as u64 != header.file_size {
            return Err(QuantError::header(
                &path,
                "file changed size while being opened",
            ));
        }
        Ok(SafetensorsFile { path, header, mmap })
    }

    /// The file path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The validated header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Tensors in file order.
    pub fn tensors(&self) -> impl Iterator<Item = &TensorInfo> {
        self.header.tensors.iter().map(|t| &t.info)
    }

    /// The entry of a tensor.
    pub fn entry(&self, name: &str) -> Result<&TensorEntry, QuantError> {
        self.header
            .get(name)
            .ok_or_else(|| QuantError::tensor(&self.path, name, "no such tensor in this file"))
    }

    /// The raw bytes of a tensor.
    pub fn bytes(&self, entry: &TensorEntry) -> &[u8] {
        &self.mmap[entry.offset as usize..(entry.offset + entry.len) as usize]
    }

    /// Maps `[offset, offset+len)` (file offsets) into our page tables in one call
    /// (`MADV_POPULATE_READ`), cheaper than taking the page faults one by one.
    pub(crate) fn populate(&self, offset: u64, len: u64) {
        #[cfg(target_os = "linux")]
        {
            let page = 4096u64;
            let start = offset / page * page;
            let end = (offset + len).min(self.mmap.len() as u64);
            if end > start && len >= 64 << 10 {
                // SAFETY: the range is inside the map; POPULATE_READ only faults pages in.
                unsafe {
                    libc::madvise(
                        self.mmap.as_ptr().add(start as usize) as *mut libc::c_void,
                        (end - start) as usize,
                        libc::MADV_POPULATE_READ,
                    );
                }
            }
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = (offset, len);
        }
    }

    /// Tells the kernel we no longer need the mapped pages of `[offset, offset+len)` (file
    /// offsets), so they stop counting in our resident set; the page cache keeps them.
    pub(crate) fn release(&self, offset: u64, len: u64) {
        #[cfg(unix)]
        {
            // SAFETY: sysconf has no preconditions.
            let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
                p if p > 0 => p as u64,
                _ => 4096,
            };
            let start = offset.div_ceil(page) * page;
            let end = ((offset + len) / page) * page;
            if end > start && end <= self.mmap.len() as u64 {
                // SAFETY: the range is inside the map; the map is a read-only private file
                // mapping, so dropped pages are re-read from the file if touched again.
                let _ = unsafe {
                    self.mmap.unchecked_advise_range(
                        memmap2::UncheckedAdvice::DontNeed,
                        start as usize,
                        (end - start) as usize,
                    )
                };
            }
        }
        #[cfg(not(unix))]
        {
            let _ = (offset, len);
        }
    }
}
