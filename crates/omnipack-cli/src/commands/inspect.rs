//! `omnipack inspect PATH`: describe a safetensors file or shard set (tensors, dtypes,
//! shapes, bytes, the quantization layout it recognises, and the `config.json` next to it).
//!
//! The input kind is detected first ([`FileKind`]) and each kind has its own branch.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use omnipack_manifest::format_bytes;
use omnipack_quant::{Dtype, SafetensorsFile, TensorInfo};

use super::CommandResult;

/// Arguments of `omnipack inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// A `.safetensors` file, a `*.safetensors.index.json` shard index, a bundle zip or a
    /// summary.
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
}

/// Detects the kind of `path` from its name and first bytes.
pub fn detect(path: &Path) -> Result<FileKind, String> {
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
    let mut magic = [0u8; 4];
    {
        use std::io::Read;
        let mut f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let n = f
            .read(&mut magic)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if n == 4 && magic == *b"PK\x03\x04" {
            return Ok(FileKind::BundleZip);
        }
    }
    Ok(FileKind::Safetensors)
}

/// Runs `omnipack inspect`.
pub fn run(args: InspectArgs) -> CommandResult {
    let kind = detect(&args.path).map_err(|e| miette::miette!("{e}"))?;
    let text = match kind {
        FileKind::Safetensors => inspect_safetensors(&args.path),
        FileKind::ShardIndex => inspect_shard_index(&args.path),
        FileKind::BundleZip => omnipack_build::verify::describe_bundle(&args.path),
        FileKind::Summary => omnipack_build::verify::describe_summary(&args.path),
    }
    .map_err(|e| miette::miette!("{e}"))?;
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

fn shape_str(shape: &[u64]) -> String {
    let s: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("[{}]", s.join(", "))
}

/// The quantization a set of tensors is recognised as.
#[derive(Debug, Default)]
struct Layout {
    /// `p.weight` -> description, for quantized tensors.
    quantized: BTreeMap<String, String>,
    /// Tensor names that are parts (scales, biases, absmax, ...) of a quantized tensor.
    parts: BTreeMap<String, String>,
    /// Summary lines.
    summary: Vec<String>,
}

fn config_quant(config: Option<&serde_json::Value>) -> (Option<u64>, Option<u64>) {
    let q = config.and_then(|c| {
        c.get("quantization")
            .or_else(|| c.get("quantization_config"))
    });
    (
        q.and_then(|q| q.get("group_size")).and_then(|v| v.as_u64()),
        q.and_then(|q| q.get("bits")).and_then(|v| v.as_u64()),
    )
}

fn recognise(
    tensors: &[TensorInfo],
    config: Option<&serde_json::Value>,
    read_small: &dyn Fn(&str) -> Option<Vec<u8>>,
) -> Layout {
    let by_name: BTreeMap<&str, &TensorInfo> =
        tensors.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut layout = Layout::default();
    let (cfg_group, cfg_bits) = config_quant(config);
    let mut affine: BTreeMap<(u64, u64), usize> = BTreeMap::new();
    let mut bnb: BTreeMap<String, usize> = BTreeMap::new();
    for t in tensors {
        if t.dtype == Dtype::U32 && t.shape.len() == 2 && t.name.ends_with("weight") {
            let p = &t.name[..t.name.len() - "weight".len()];
            let (s, b) = (format!("{p}scales"), format!("{p}biases"));
            if let (Some(st), Some(_)) = (by_name.get(s.as_str()), by_name.get(b.as_str()))
                && st.shape.len() == 2
                && st.shape[1] > 0
            {
                let (words, groups) = (t.shape[1], st.shape[1]);
                let candidates: Vec<u64> = match cfg_group {
                    Some(g) => vec![g],
                    None => vec![64, 32, 128],
                };
                let found = candidates.into_iter().find_map(|g| {
                    let cols = g * groups;
                    let bits = (words * 32).checked_div(cols)?;
                    let ok = bits * cols == words * 32
                        && matches!(bits, 2 | 3 | 4 | 6 | 8)
                        && cfg_bits.is_none_or(|cb| cb == bits);
                    ok.then_some((bits, g))
                });
                if let Some((bits, g)) = found {
                    *affine.entry((bits, g)).or_default() += 1;
                    layout.quantized.insert(
                        t.name.clone(),
                        format!("mlx affine int{bits} g{g}, {} x {}", t.shape[0], g * groups),
                    );
                    layout.parts.insert(s, format!("scales of {}", t.name));
                    layout.parts.insert(b, format!("biases of {}", t.name));
                }
            }
        }
        for qt in ["nf4", "fp4"] {
            let state_name = format!("{}.quant_state.bitsandbytes__{qt}", t.name);
            if by_name.contains_key(state_name.as_str()) {
                let state = read_small(&state_name)
                    .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
                let bs = state
                    .as_ref()
                    .and_then(|s| s.get("blocksize"))
                    .and_then(|v| v.as_u64())
                    .map(|b| b.to_string())
                    .unwrap_or_else(|| "?".into());
                let shape = state
                    .as_ref()
                    .and_then(|s| s.get("shape"))
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "?".into());
                let dtype = state
                    .as_ref()
                    .and_then(|s| s.get("dtype"))
                    .and_then(|v| v.as_str())
                    .unwrap_or("?")
                    .to_string();
                *bnb.entry(format!("{qt} blocksize {bs}")).or_default() += 1;
                layout.quantized.insert(
                    t.name.clone(),
                    format!("bitsandbytes {qt} blocksize {bs}, {dtype} {shape}"),
                );
                for part in [".absmax", ".quant_map"] {
                    layout.parts.insert(
                        format!("{}{part}", t.name),
                        format!("{qt} state of {}", t.name),
                    );
                }
                layout
                    .parts
                    .insert(state_name, format!("{qt} state of {}", t.name));
            }
        }
    }
    for ((bits, g), n) in &affine {
        let how = if cfg_group.is_some() {
            "from config.json"
        } else {
            "group size inferred from shapes, 64 assumed when ambiguous"
        };
        layout.summary.push(format!(
            "mlx affine int{bits}, group size {g}: {n} tensors ({how})"
        ));
    }
    for (what, n) in &bnb {
        layout
            .summary
            .push(format!("bitsandbytes {what}: {n} tensors"));
    }
    if layout.summary.is_empty() {
        let mut dts: BTreeMap<String, usize> = BTreeMap::new();
        for t in tensors {
            *dts.entry(t.dtype.to_string()).or_default() += 1;
        }
        let d: Vec<String> = dts.iter().map(|(k, v)| format!("{k} x{v}")).collect();
        layout
            .summary
            .push(format!("not quantized ({})", d.join(", ")));
    }
    layout
}

fn read_config(dir: &Path) -> Result<Option<(PathBuf, serde_json::Value)>, String> {
    let p = dir.join("config.json");
    if !p.is_file() {
        return Ok(None);
    }
    let bytes = std::fs::read(&p).map_err(|e| format!("{}: {e}", p.display()))?;
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
            out.push_str(&format!("  {k}: {s}\n"));
        }
    } else {
        out.push_str(&format!("  {v}\n"));
    }
}

fn tensor_table(out: &mut String, tensors: &[(TensorInfo, Option<String>)], layout: &Layout) {
    let w_name = tensors
        .iter()
        .map(|(t, _)| t.name.len())
        .max()
        .unwrap_or(4)
        .max(6);
    let w_shape = tensors
        .iter()
        .map(|(t, _)| shape_str(&t.shape).len())
        .max()
        .unwrap_or(5)
        .max(5);
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
        out.push_str(
            format!(
                "{:<w_name$}  {:<7}  {:<w_shape$}  {:>12}  {}",
                t.name,
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
    let layout = recognise(&tensors, config.as_ref().map(|c| &c.1), &read_small);
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
    if !header.metadata.is_empty() {
        let m: Vec<String> = header
            .metadata
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        out.push_str(&format!("metadata: {}\n", m.join(", ")));
    }
    for line in &layout.summary {
        out.push_str(&format!("layout: {line}\n"));
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
    let layout = recognise(&infos, config.as_ref().map(|c| &c.1), &|_| None);
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
    for line in &layout.summary {
        out.push_str(&format!("layout: {line}\n"));
    }
    config_lines(&mut out, &config);
    tensor_table(&mut out, &rows, &layout);
    Ok(out)
}
