//! `omnipack inspect PATH`: describe a safetensors file or shard set (tensors, dtypes,
//! shapes, bytes, the quantization layout it recognises, and the `config.json` next to it), or
//! a Core ML model (deployment target, inputs, outputs and states, operations, weights).
//!
//! The input kind is detected first ([`FileKind`]) and each kind has its own branch.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use omnipack_manifest::{format_bytes, printable};
use omnipack_quant::{
    QuantizedLayout, SafetensorsFile, SourceLayout, TensorInfo, recognise_layout,
};

use super::CommandResult;

/// Arguments of `omnipack inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// A `.safetensors` file, a `*.safetensors.index.json` shard index, a bundle zip, a
    /// summary, or a Core ML `.mlpackage` folder or `.mlmodel` file.
    pub path: PathBuf,
}

/// What `inspect` was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A single safetensors file.
    Safetensors,
    /// A `*.safetensors.index.json` shard index.
    ShardIndex,
    /// A bundle zip.
    BundleZip,
    /// `mobile_packager_summary.json` (or a build output folder holding it).
    Summary,
    /// A Core ML `.mlpackage` folder or `.mlmodel` file.
    CoreMl,
}

/// Detects the kind of `path` from its name and first bytes.
pub fn detect(path: &Path) -> Result<FileKind, String> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    if ext == "mlpackage" || ext == "mlmodel" {
        return Ok(FileKind::CoreMl);
    }
    if path.is_dir() {
        return if path.join("mobile_packager_summary.json").is_file() {
            Ok(FileKind::Summary)
        } else {
            Err(format!(
                "{}: a folder without mobile_packager_summary.json",
                path.display()
            ))
        };
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name.ends_with(".index.json") {
        return Ok(FileKind::ShardIndex);
    }
    if name.ends_with(".json") {
        return Ok(FileKind::Summary);
    }
    let mut head = [0u8; 9];
    let (n, len) = {
        use std::io::Read;
        // A FIFO, socket or device is refused at once (reading it could block forever).
        let mut f =
            omnipack_fs::open_regular(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let len = f
            .metadata()
            .map_err(|e| format!("{}: {e}", path.display()))?
            .len();
        let n = f
            .read(&mut head)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        (n, len)
    };
    if n >= 4 && head[..4] == *b"PK\x03\x04" {
        return Ok(FileKind::BundleZip);
    }
    // A `.safetensors` name gets the reader's precise error; any other file must look like one.
    if name.ends_with(".safetensors") || looks_like_safetensors(&head[..n], len) {
        return Ok(FileKind::Safetensors);
    }
    Err(format!(
        "{}: not a safetensors file, bundle, summary or Core ML package",
        path.display()
    ))
}

/// Whether a file of `len` bytes starting with `head` can be safetensors: an 8-byte
/// little-endian header length that fits in the file, then the header's `{`.
pub(crate) fn looks_like_safetensors(head: &[u8], len: u64) -> bool {
    let Some(size) = head.get(..8) else {
        return false;
    };
    let header_len = u64::from_le_bytes(size.try_into().expect("8 bytes"));
    header_len >= 2 && header_len <= len.saturating_sub(8) && head.get(8) == Some(&b'{')
}

/// Runs `omnipack inspect`.
pub fn run(args: InspectArgs) -> CommandResult {
    let kind = detect(&args.path).map_err(|e| miette::miette!("{e}"))?;
    let text = match kind {
        FileKind::Safetensors => inspect_safetensors(&args.path),
        FileKind::ShardIndex => inspect_shard_index(&args.path),
        FileKind::BundleZip => omnipack_build::verify::describe_bundle(&args.path),
        // An output folder: its summary.
        FileKind::Summary if args.path.is_dir() => omnipack_build::verify::describe_summary(
            &args.path.join(omnipack_summary::SUMMARY_FILE),
        ),
        FileKind::Summary => omnipack_build::verify::describe_summary(&args.path),
        FileKind::CoreMl => inspect_coreml(&args.path),
    }
    .map_err(|e| miette::miette!("{e}"))?;
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

/// Widest column of the tensor table.
const MAX_COLUMN: usize = 80;

fn shape_str(shape: &[u64]) -> String {
    let s: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("[{}]", s.join(", "))
}

fn read_config(dir: &Path) -> Result<Option<(PathBuf, serde_json::Value)>, String> {
    let p = dir.join("config.json");
    if !p.is_file() {
        return Ok(None);
    }
    let bytes = omnipack_fs::read_capped(&p, omnipack_fs::MAX_DOCUMENT_BYTES)
        .map_err(|e| format!("{}: {e}", p.display()))?;
    let v = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{}: not valid JSON: {e}", p.display()))?;
    Ok(Some((p, v)))
}

fn config_lines(out: &mut String, config: &Option<(PathBuf, serde_json::Value)>) {
    let Some((path, v)) = config else {
        out.push_str("config.json: none next to the file\n");
        return;
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    out.push_str(&format!("{name}:\n"));
    if let Some(obj) = v.as_object() {
        for (k, val) in obj {
            let s = val.to_string();
            let s = if s.chars().count() > 100 {
                format!("{}...", s.chars().take(97).collect::<String>())
            } else {
                s
            };
            out.push_str(&format!("  {}: {}\n", printable(k), printable(&s)));
        }
    } else {
        out.push_str(&format!("  {}\n", printable(&v.to_string())));
    }
}

/// `parameters: N`, the quantized tensors counted at their true shape (as `omnipack plan`
/// counts them).
fn parameters_line(tensors: &[TensorInfo], source: &SourceLayout) -> String {
    let n: u64 = source
        .logical_tensors(tensors)
        .iter()
        .fold(0u64, |a, t| a.saturating_add(t.numel()));
    match source.describe() {
        Some(f) => format!(
            "parameters: {n} ({f} weights counted at their true shape, {} quantized)\n",
            source.groups().count()
        ),
        None => format!("parameters: {n}\n"),
    }
}

fn tensor_table(
    out: &mut String,
    tensors: &[(TensorInfo, Option<String>)],
    layout: &QuantizedLayout,
) {
    // Column widths come from untrusted names and shapes: capped (a longer cell just pushes
    // the rest of its row right), so no width passes what `format!` accepts.
    let w_name = tensors
        .iter()
        .map(|(t, _)| printable(&t.name).chars().count())
        .max()
        .unwrap_or(4)
        .clamp(6, MAX_COLUMN);
    let w_shape = tensors
        .iter()
        .map(|(t, _)| shape_str(&t.shape).len())
        .max()
        .unwrap_or(5)
        .clamp(5, MAX_COLUMN);
    out.push_str(&format!(
        "{:<w_name$}  {:<7}  {:<w_shape$}  {:>12}  {}\n",
        "tensor", "dtype", "shape", "bytes", "layout"
    ));
    for (t, shard) in tensors {
        let mut note = layout
            .quantized
            .get(&t.name)
            .or_else(|| layout.parts.get(&t.name))
            .cloned()
            .unwrap_or_default();
        if let Some(s) = shard {
            if !note.is_empty() {
                note.push_str("; ");
            }
            note.push_str(s);
        }
        let note = printable(&note);
        out.push_str(
            format!(
                "{:<w_name$}  {:<7}  {:<w_shape$}  {:>12}  {}",
                printable(&t.name),
                t.dtype.to_string(),
                shape_str(&t.shape),
                t.data_bytes(),
                note
            )
            .trim_end(),
        );
        out.push('\n');
    }
}

fn inspect_safetensors(path: &Path) -> Result<String, String> {
    let file = SafetensorsFile::open(path).map_err(|e| e.to_string())?;
    let header = file.header();
    let mut tensors: Vec<TensorInfo> = file.tensors().cloned().collect();
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    let dir = path.parent().unwrap_or(Path::new("."));
    let config = read_config(dir)?;
    let read_small = |name: &str| -> Option<Vec<u8>> {
        let e = file.entry(name).ok()?;
        (e.len <= 1 << 20).then(|| file.bytes(e).to_vec())
    };
    let layout = recognise_layout(&tensors, config.as_ref().map(|c| &c.1), &read_small);
    let source = SourceLayout::recognise(&tensors, config.as_ref().map(|c| &c.1), &read_small);
    let data: u64 = tensors.iter().map(|t| t.data_bytes()).sum();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut out = String::new();
    out.push_str(&format!(
        "{name}: safetensors, {} bytes ({}), header {} bytes, {} tensors, {} bytes of tensor data\n",
        header.file_size,
        format_bytes(header.file_size),
        header.data_start,
        tensors.len(),
        data
    ));
    let sha = omnipack_quant::sha256_file(path).map_err(|e| format!("{}: {e}", path.display()))?;
    out.push_str(&format!("sha256: {sha}\n"));
    out.push_str(&parameters_line(&tensors, &source));
    if !header.metadata.is_empty() {
        let m: Vec<String> = header
            .metadata
            .iter()
            .map(|(k, v)| format!("{}={}", printable(k), printable(v)))
            .collect();
        out.push_str(&format!("metadata: {}\n", m.join(", ")));
    }
    for line in &layout.summary {
        out.push_str(&format!("layout: {}\n", printable(line)));
    }
    config_lines(&mut out, &config);
    let rows: Vec<(TensorInfo, Option<String>)> = tensors.into_iter().map(|t| (t, None)).collect();
    tensor_table(&mut out, &rows, &layout);
    Ok(out)
}

fn inspect_shard_index(path: &Path) -> Result<String, String> {
    let shards = omnipack_quant::resolve_shards(path).map_err(|e| e.to_string())?;
    let all = omnipack_quant::read_shard_set(path).map_err(|e| e.to_string())?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let config = read_config(dir)?;
    let mut rows: Vec<(TensorInfo, Option<String>)> = all
        .iter()
        .map(|s| {
            let shard = s
                .file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            (s.info.clone(), Some(shard))
        })
        .collect();
    rows.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    let infos: Vec<TensorInfo> = rows.iter().map(|r| r.0.clone()).collect();
    let layout = recognise_layout(&infos, config.as_ref().map(|c| &c.1), &|_| None);
    let source = SourceLayout::recognise(&infos, config.as_ref().map(|c| &c.1), &|_| None);
    let data: u64 = infos.iter().map(|t| t.data_bytes()).sum();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut out = format!(
        "{name}: safetensors shard index, {} shards, {} tensors, {} bytes of tensor data ({})\n",
        shards.len(),
        infos.len(),
        data,
        format_bytes(data)
    );
    out.push_str(&parameters_line(&infos, &source));
    for line in &layout.summary {
        out.push_str(&format!("layout: {}\n", printable(line)));
    }
    config_lines(&mut out, &config);
    tensor_table(&mut out, &rows, &layout);
    Ok(out)
}

/// One feature line: `  name  fp16 [1, 4, 1..4096, 32]` (or its type when not an array).
fn feature_line(f: &omnipack_coreml::Feature, width: usize) -> String {
    use omnipack_coreml::FeatureKind;
    let what = match &f.kind {
        FeatureKind::MultiArray(a) | FeatureKind::State(a) => {
            format!("{} {}", a.data_type_text(), a.shape_text())
        }
        FeatureKind::Image {
            width,
            height,
            color_space,
        } => format!("image {width}x{height} (color space {color_space})"),
        other => serde_json::to_value(other)
            .ok()
            .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_string))
            .unwrap_or_else(|| "unknown".into()),
    };
    let optional = if f.optional { " (optional)" } else { "" };
    format!("  {:<width$}  {what}{optional}\n", f.name)
}

fn inspect_coreml(path: &Path) -> Result<String, String> {
    let model = omnipack_coreml::open(path).map_err(|e| e.to_string())?;
    let facts = model.facts().map_err(|e| e.to_string())?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut out = format!(
        "{name}: Core ML {} ({}), {} bytes of stored weights ({})\n",
        facts.format,
        facts.model_type,
        facts.stored_bytes,
        format_bytes(facts.stored_bytes)
    );
    out.push_str(&format!("deployment target: {}\n", facts.target()));
    for (k, v) in &facts.metadata {
        out.push_str(&format!("metadata: {k}={v}\n"));
    }
    let width = facts
        .inputs
        .iter()
        .chain(&facts.outputs)
        .chain(&facts.states)
        .map(|f| f.name.len())
        .max()
        .unwrap_or(0);
    for (title, list) in [
        ("inputs", &facts.inputs),
        ("outputs", &facts.outputs),
        ("states", &facts.states),
    ] {
        if list.is_empty() && title == "states" {
            continue;
        }
        out.push_str(&format!("{title} ({}):\n", list.len()));
        for f in list {
            out.push_str(&feature_line(f, width));
        }
    }
    if !facts.operations.is_empty() {
        let total: u64 = facts.operations.values().sum();
        out.push_str(&format!("operations ({total}):\n"));
        let w = facts.operations.keys().map(String::len).max().unwrap_or(0);
        for (op, n) in &facts.operations {
            out.push_str(&format!("  {op:<w$}  {n:>6}\n"));
        }
    }
    if let Some(weights) = &facts.weights {
        out.push_str(&format!(
            "weights: {} parameters in {} constants; {} bytes in blobs, {} bytes inline\n",
            weights.parameters,
            weights.constants.len(),
            weights.blob_bytes,
            weights.inline_bytes
        ));
        if !weights.blobs.is_empty() {
            out.push_str(&format!(
                "  {:<10}  {:>6}  {:>12}  {:>12}\n",
                "blob type", "blobs", "bytes", "elements"
            ));
            for (t, b) in &weights.blobs {
                out.push_str(&format!(
                    "  {t:<10}  {:>6}  {:>12}  {:>12}\n",
                    b.blobs, b.bytes, b.elements
                ));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_of_no_known_kind_are_named_and_refused() {
        let dir = tempfile::tempdir().unwrap();
        let passwd = dir.path().join("passwd");
        std::fs::write(&passwd, "root:x:0:0:root:/root:/bin/bash\n").unwrap();
        let e = detect(&passwd).unwrap_err();
        assert!(
            e.ends_with("passwd: not a safetensors file, bundle, summary or Core ML package"),
            "{e}"
        );
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "").unwrap();
        assert!(detect(&empty).is_err());
        // Named or not, something shaped like safetensors is read as one.
        let mut st = 2u64.to_le_bytes().to_vec();
        st.extend_from_slice(b"{}");
        let unnamed = dir.path().join("weights");
        std::fs::write(&unnamed, &st).unwrap();
        assert_eq!(detect(&unnamed), Ok(FileKind::Safetensors));
        let named = dir.path().join("junk.safetensors");
        std::fs::write(&named, "junk").unwrap();
        assert_eq!(detect(&named), Ok(FileKind::Safetensors));
    }
}
