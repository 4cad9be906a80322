//! `omnipack init CHECKPOINT [--config config.json] [--out FILE]`: writes a first, commented
//! manifest for a checkpoint. The grouping and guessing live in `omnipack_manifest::starter`;
//! this module finds the files, reads the headers (with omnipack-quant's checked reader, as
//! `inspect` and `plan` do), writes the manifest without ever replacing a file, and says what
//! it guessed.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use omnipack_manifest::lexical_path::{relative_to, slash};
use omnipack_manifest::starter::{StarterOptions, guess_components, render_manifest};
use omnipack_quant::{SourceLayout, TensorInfo};

use super::CommandResult;

/// Arguments of `omnipack init`.
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// A `.safetensors` file, a `*.safetensors.index.json` shard index, or a folder holding
    /// `model.safetensors.index.json`, `model.safetensors`, or exactly one of either kind.
    pub checkpoint: PathBuf,
    /// The model's Hugging Face style `config.json` [default: `config.json` next to the
    /// checkpoint, when there is one].
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Where to write the manifest; an existing file is never replaced. `-` prints it on
    /// standard output (paths then relative to the current folder).
    #[arg(long, default_value = "omnipack.yaml")]
    pub out: PathBuf,
}

/// Runs `omnipack init`.
pub fn run(args: InitArgs) -> CommandResult {
    let to_stdout = args.out.as_os_str() == "-";
    if !to_stdout && std::fs::symlink_metadata(&args.out).is_ok() {
        return Err(miette::miette!(
            help = "choose another --out, or remove the file first",
            "{}: already exists; omnipack init never replaces a file",
            args.out.display()
        ));
    }
    let checkpoint = find_checkpoint(&args.checkpoint).map_err(|e| miette::miette!("{e}"))?;
    let shards = omnipack_quant::read_shard_set(&checkpoint).map_err(|e| miette::miette!("{e}"))?;
    let infos: Vec<TensorInfo> = shards.into_iter().map(|s| s.info).collect();
    let config_path = match &args.config {
        Some(p) => Some(p.clone()),
        None => {
            let next_to = parent_or_dot(&checkpoint).join("config.json");
            next_to.is_file().then_some(next_to)
        }
    };
    let config = match &config_path {
        Some(p) => Some(read_config(p).map_err(|e| miette::miette!("{e}"))?),
        None => None,
    };
    // A quantized checkpoint: shapes at their true size, and its own format proposed.
    let layout = SourceLayout::recognise(&infos, config.as_ref(), &|_| None);
    let logical = layout.logical_tensors(&infos);
    let source_format = layout
        .formats()
        .into_iter()
        .next()
        .map(|f| (f.weight_format().name(), f.group_size()));
    let components = guess_components(&logical, config.as_ref())
        .map_err(|e| miette::miette!("{}: {e}", checkpoint.display()))?;

    let manifest_dir = if to_stdout {
        PathBuf::from(".")
    } else {
        parent_or_dot(&args.out).to_path_buf()
    };
    let rel = |p: &Path| slash(&relative_to(p, &manifest_dir));
    // `source.safetensors` takes the shard files themselves, not the index.
    let shard_files =
        omnipack_quant::resolve_shards(&checkpoint).map_err(|e| miette::miette!("{e}"))?;
    let shards_rel: Vec<String> = shard_files.iter().map(|p| rel(p)).collect();
    let config_rel = config_path.as_deref().map(rel);
    let checkpoint_name = checkpoint
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let options = StarterOptions {
        package_name: package_name(&checkpoint),
        shards: &shards_rel,
        checkpoint_name: &checkpoint_name,
        config: config_rel.as_deref(),
        max_position_embeddings: config
            .as_ref()
            .and_then(|c| c.get("max_position_embeddings"))
            .and_then(|v| v.as_u64()),
        source_format,
    };
    let text = render_manifest(&components, &options);
    if to_stdout {
        print!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    write_new(&args.out, text.as_bytes())
        .map_err(|e| miette::miette!("{}: {e}", args.out.display()))?;
    let mut report = format!(
        "wrote {}: {} from {}, tiers iphone-3gb and iphone-6gb\n",
        args.out.display(),
        omnipack_manifest::counted(components.len(), "component"),
        checkpoint.display()
    );
    for c in &components {
        let prefix = c
            .prefix
            .as_deref()
            .map(|p| format!("prefix `{p}`"))
            .unwrap_or_else(|| "every tensor".into());
        report.push_str(&format!(
            "  {}: {} ({prefix}, {} tensors), role guessed: {}\n",
            c.name, c.role, c.tensors, c.reason
        ));
        if let Some(a) = &c.architecture {
            for n in &a.notes {
                report.push_str(&format!("    architecture {n}\n"));
            }
        }
    }
    report.push_str(&format!(
        "review the guesses, then: omnipack validate {}\n",
        args.out.display()
    ));
    eprint!("{report}");
    Ok(ExitCode::SUCCESS)
}

fn parent_or_dot(p: &Path) -> &Path {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// The checkpoint file: `path` itself, or the one a folder holds.
fn find_checkpoint(path: &Path) -> Result<PathBuf, String> {
    let meta =
        std::fs::metadata(path).map_err(|e| format!("{}: cannot read it: {e}", path.display()))?;
    if meta.is_dir() {
        for name in ["model.safetensors.index.json", "model.safetensors"] {
            if path.join(name).is_file() {
                return Ok(path.join(name));
            }
        }
        let mut indexes = Vec::new();
        let mut files = Vec::new();
        let entries = std::fs::read_dir(path).map_err(|e| format!("{}: {e}", path.display()))?;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".safetensors.index.json") {
                indexes.push(e.path());
            } else if name.ends_with(".safetensors") {
                files.push(e.path());
            }
        }
        indexes.sort();
        files.sort();
        return match (indexes.as_slice(), files.as_slice()) {
            ([one], _) | ([], [one]) => Ok(one.clone()),
            ([], []) => Err(format!(
                "{}: a folder without a .safetensors file or a shard index",
                path.display()
            )),
            _ => Err(format!(
                "{}: a folder with several checkpoints; name the file (or its shard index)",
                path.display()
            )),
        };
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name.ends_with(".json") || name.ends_with(".safetensors") {
        return Ok(path.to_path_buf());
    }
    // Any other name must start like safetensors: an 8-byte header length, then `{`.
    let mut head = [0u8; 9];
    let mut f = omnipack_fs::open_regular(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let len = f
        .metadata()
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len();
    let n = f
        .read(&mut head)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if super::inspect::looks_like_safetensors(&head[..n], len) {
        Ok(path.to_path_buf())
    } else {
        Err(format!(
            "{}: not a safetensors file or a shard index",
            path.display()
        ))
    }
}

fn read_config(path: &Path) -> Result<serde_json::Value, String> {
    let bytes = omnipack_fs::read_capped(path, omnipack_fs::MAX_DOCUMENT_BYTES)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let v: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{}: not valid JSON: {e}", path.display()))?;
    if !v.is_object() {
        return Err(format!("{}: not a JSON object", path.display()));
    }
    Ok(v)
}

/// The package name: the checkpoint's folder name (its file stem for a bare `model.*` in the
/// current folder), made a valid name.
fn package_name(checkpoint: &Path) -> String {
    let dir = std::path::absolute(checkpoint)
        .ok()
        .and_then(|p| p.parent().and_then(|d| d.file_name()).map(|n| n.to_owned()));
    let stem = checkpoint
        .file_name()
        .map(|n| {
            n.to_string_lossy()
                .split('.')
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default();
    let candidates = [
        dir.map(|d| d.to_string_lossy().into_owned())
            .unwrap_or_default(),
        stem,
    ];
    candidates
        .iter()
        .map(|c| omnipack_manifest::starter::component_name(c))
        .find(|n| !n.is_empty())
        .unwrap_or_else(|| "model".into())
}

/// Writes `bytes` to `path`, which must not exist: a temporary file next to it is filled, then
/// linked to `path` (which fails if something appeared there meanwhile) and removed.
fn write_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let (mut f, tmp) = omnipack_fs::create_temp_next_to(path)?;
    let r = f
        .write_all(bytes)
        .and_then(|()| f.sync_all())
        .and_then(|()| std::fs::hard_link(&tmp, path));
    let _ = std::fs::remove_file(&tmp);
    match r {
        // A file system without hard links: create the file exclusively and write it.
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists && !path.exists() => {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .map_err(|_| e)?;
            f.write_all(bytes)
        }
        r => r,
    }
}
