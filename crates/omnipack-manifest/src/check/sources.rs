//! Source rules: exactly one kind of source (a `source.mlpackage` model is read by the Core ML
//! rules); `prefix` and `config` only with `safetensors`; the
//! config agrees with `architecture`; shards and files exist (and files do not share a name).

use std::path::Path;

use serde_json::Value;

use crate::check::files::{self, CheckedShards, FileProblem};
use crate::check::typed::TypedComponent;
use crate::diagnostic::{Diagnostic, Severity};
use crate::locate::{Locator, ManifestPath};
use crate::model::{Architecture, OneOrMany, Source};
use crate::rel_path::shown;

/// Checks the source of `component`, the component at `at`; paths are relative to `dir`.
/// `shards` remembers the checkpoints read so far.
pub(crate) fn check(
    component: &TypedComponent,
    at: &ManifestPath,
    dir: &Path,
    shards: &mut CheckedShards,
    locator: &Locator<'_>,
    out: &mut Vec<Diagnostic>,
) {
    let name = &component.written.name;
    let source = &component.written.source;
    let component_at = at;
    let at = at.key("source");
    one_kind(name, source, &at, locator, out);
    if source.prefix.is_some() && source.safetensors.is_none() {
        out.push(
            locator
                .at_key(
                    &at.key("prefix"),
                    Severity::Error,
                    format!("component `{name}`: `prefix` only applies to `safetensors`"),
                )
                .with_label("no safetensors to select from")
                .with_help("remove `prefix`, or take the weights from a safetensors checkpoint"),
        );
    }
    let mut config_read = None;
    if let Some(config) = &source.config {
        let config_at = at.key("config");
        if source.safetensors.is_none() {
            out.push(
                locator
                    .at_key(
                        &config_at,
                        Severity::Error,
                        format!("component `{name}`: `config` only applies to `safetensors`"),
                    )
                    .with_label("no safetensors to describe")
                    .with_help(
                        "remove `config`, or take the weights from a safetensors checkpoint",
                    ),
            );
        } else {
            match files::config_json(dir, config) {
                Err(problem) => out.push(file_problem(name, problem, &config_at, locator)),
                Ok(json) => {
                    config_agrees(component, &json, config, dir, component_at, locator, out);
                    config_read = Some(Value::Object(json));
                }
            }
        }
    }
    let mut readable = true;
    for (j, shard) in shard_paths(source) {
        if let Some(problem) = shards.check(dir, shard) {
            let shard_at = at.key("safetensors").maybe_index(j);
            out.push(file_problem(name, problem, &shard_at, locator));
            readable = false;
        }
    }
    if readable
        && source.safetensors.is_some()
        && (source.config.is_none() || config_read.is_some())
    {
        quantized_source(component, component_at, dir, config_read, locator, out);
    }
    if let Some(list) = &source.files {
        copied_files(name, list, &at.key("files"), dir, locator, out);
    }
}

/// `component `x`: <message>` at `at`, with the help.
fn file_problem(
    name: &str,
    problem: FileProblem,
    at: &ManifestPath,
    locator: &Locator<'_>,
) -> Diagnostic {
    locator
        .at(
            at,
            Severity::Error,
            format!("component `{name}`: {}", problem.message),
        )
        .with_label("here")
        .with_help(problem.help)
}

/// Exactly one of `safetensors`, `command` and `files`.
fn one_kind(
    name: &str,
    source: &Source,
    at: &ManifestPath,
    locator: &Locator<'_>,
    out: &mut Vec<Diagnostic>,
) {
    let kinds: Vec<&str> = [
        ("safetensors", source.safetensors.is_some()),
        ("mlpackage", source.mlpackage.is_some()),
        ("command", source.command.is_some()),
        ("files", source.files.is_some()),
    ]
    .into_iter()
    .filter(|(_, given)| *given)
    .map(|(kind, _)| kind)
    .collect();
    match kinds.as_slice() {
        [] => out.push(
            locator
                .at(at, Severity::Error, format!("component `{name}`: `source` needs one of `safetensors`, `mlpackage`, `command` or `files`"))
                .with_label("no source given")
                .with_help("for example `source: { safetensors: model.safetensors, prefix: text. }`"),
        ),
        [_] => {}
        [first, second, ..] => out.push(
            locator
                .at_key(
                    &at.key(second),
                    Severity::Error,
                    format!("component `{name}`: `source` has both `{first}` and `{second}`"),
                )
                .with_label("second source")
                .with_help("give exactly one of `safetensors`, `mlpackage`, `command` or `files`"),
        ),
    }
}

/// The shards of a safetensors source, with their index when written as a list.
fn shard_paths(source: &Source) -> Vec<(Option<usize>, &str)> {
    match &source.safetensors {
        Some(OneOrMany::One(path)) => vec![(None, path.as_str())],
        Some(OneOrMany::Many(paths)) => paths
            .iter()
            .enumerate()
            .map(|(j, p)| (Some(j), p.as_str()))
            .collect(),
        None => Vec::new(),
    }
}

/// `architecture` keys, the Hugging Face config keys omnipack writes them as, and their values.
fn config_keys(a: &Architecture) -> [(&'static str, &'static str, u64); 5] {
    [
        ("layers", "num_hidden_layers", a.layers),
        ("kv_heads", "num_key_value_heads", a.kv_heads),
        ("kv_head_dim", "head_dim", a.kv_head_dim),
        ("hidden_size", "hidden_size", a.hidden_size),
        ("vocab_size", "vocab_size", a.vocab_size),
    ]
}

/// The bundle's config.json takes the architecture from the manifest: a `source.config`
/// (`config`, read from `rel`) that says otherwise describes another model.
fn config_agrees(
    component: &TypedComponent,
    config: &serde_json::Map<String, Value>,
    rel: &str,
    dir: &Path,
    at: &ManifestPath,
    locator: &Locator<'_>,
    out: &mut Vec<Diagnostic>,
) {
    let Some(architecture) = &component.written.architecture else {
        return;
    };
    let name = &component.written.name;
    let arch_at = at.key("architecture");
    for (key, config_key, want) in config_keys(architecture) {
        let Some(got) = config.get(config_key).and_then(Value::as_u64) else {
            continue;
        };
        if want != got {
            out.push(
                locator
                    .at(
                        &arch_at.key(key),
                        Severity::Error,
                        format!(
                            "component `{name}`: `architecture.{key}` is {want} but `{config_key}` in `{}` is {got}",
                            shown(dir, rel)
                        ),
                    )
                    .with_label("disagrees with the config")
                    .with_help(format!(
                        "make them agree: the bundle's config.json takes `{config_key}` from `architecture.{key}`"
                    )),
            );
        }
    }
}

/// `source.files`: each exists and is a file, and no two share a file name (they are
/// packaged flat, under their own names).
fn copied_files(
    name: &str,
    list: &[String],
    at: &ManifestPath,
    dir: &Path,
    locator: &Locator<'_>,
    out: &mut Vec<Diagnostic>,
) {
    let mut names: Vec<(&str, usize)> = Vec::new();
    for (j, rel) in list.iter().enumerate() {
        let file_at = at.index(j);
        let base = rel.rsplit(['/', '\\']).next().unwrap_or(rel);
        if let Some((_, first)) = names.iter().find(|(n, _)| *n == base) {
            let first_loc = locator.location(&at.index(*first));
            out.push(
                locator
                    .at(
                        &file_at,
                        Severity::Error,
                        format!("component `{name}`: two files named `{base}`"),
                    )
                    .with_label("same file name")
                    .with_help(format!(
                        "files are packaged under their own names, so `{base}` (also at {first_loc}) would be overwritten: rename one"
                    )),
            );
        }
        names.push((base, j));
        let shown = shown(dir, rel);
        match std::fs::metadata(dir.join(rel)) {
            Ok(m) if m.is_file() => {}
            Ok(_) => out.push(
                locator
                    .at(
                        &file_at,
                        Severity::Error,
                        format!("component `{name}`: `{shown}` is not a file"),
                    )
                    .with_label("not a file")
                    .with_help("list the files to ship one by one"),
            ),
            Err(_) => out.push(
                locator
                    .at(
                        &file_at,
                        Severity::Error,
                        format!("component `{name}`: `{shown}` does not exist"),
                    )
                    .with_label("file not found")
                    .with_help("paths are relative to the manifest that names them"),
            ),
        }
    }
}

/// The tensors a safetensors source selects (prefix stripped) and their quantized groups,
/// recognised with `config` (`source.config`), else a `config.json` next to the first shard.
/// `None` when a shard cannot be read (reported by the shard checks).
fn source_layout(
    source: &Source,
    dir: &Path,
    config: Option<Value>,
) -> Option<(
    Vec<omnipack_quant::TensorInfo>,
    omnipack_quant::SourceLayout,
)> {
    let prefix = source.prefix.as_deref().unwrap_or("");
    let mut files = Vec::new();
    for (_, shard) in shard_paths(source) {
        for f in omnipack_quant::resolve_shards(dir.join(shard)).ok()? {
            files.push(omnipack_quant::SafetensorsFile::open(f).ok()?);
        }
    }
    let mut tensors = Vec::new();
    for f in &files {
        for t in f.tensors() {
            if let Some(rest) = t.name.strip_prefix(prefix) {
                let mut t = t.clone();
                t.name = rest.to_string();
                tensors.push(t);
            }
        }
    }
    let config = config.or_else(|| {
        let (_, first) = *shard_paths(source).first()?;
        let next_to = dir.join(first).parent()?.join("config.json");
        serde_json::from_slice(&std::fs::read(next_to).ok()?).ok()
    });
    let read_small = |name: &str| -> Option<Vec<u8>> {
        let full = format!("{prefix}{name}");
        files.iter().find_map(|f| {
            let e = f.entry(&full).ok()?;
            (e.len <= 1 << 20).then(|| f.bytes(e).to_vec())
        })
    };
    let layout = omnipack_quant::SourceLayout::recognise(&tensors, config.as_ref(), &read_small);
    Some((tensors, layout))
}

/// A source that is already quantized (MLX affine, bitsandbytes 4-bit) cannot be quantized
/// again to another format without `quantization.requantize: true`: each such format of a
/// preference list is an error at that format, naming the source's format and both ways out.
fn quantized_source(
    component: &TypedComponent,
    at: &ManifestPath,
    dir: &Path,
    config: Option<Value>,
    locator: &Locator<'_>,
    out: &mut Vec<Diagnostic>,
) {
    let Some(written) = &component.written.quantization else {
        return;
    };
    let q = &component.resolved.quantization;
    if q.requantize {
        return;
    }
    let Some((tensors, layout)) = source_layout(&component.written.source, dir, config) else {
        return;
    };
    let Some(source_format) = layout.describe() else {
        return;
    };
    let q_at = at.key("quantization");
    // (where the list is written, whether it is a list, formats, group size)
    let mut lists = vec![(
        q_at.key("format"),
        matches!(written.format, OneOrMany::Many(_)),
        q.formats.clone(),
        q.group_size,
    )];
    for (tier, over) in written.tiers.iter().flatten() {
        let Some(tq) = q.tiers.get(tier) else {
            continue;
        };
        let tier_at = q_at.key("tiers").key(tier);
        let (list_at, many) = match &over.format {
            Some(f) => (tier_at.key("format"), matches!(f, OneOrMany::Many(_))),
            None => (tier_at.key("group_size"), false),
        };
        lists.push((list_at, many, tq.formats.clone(), tq.group_size));
    }
    let name = &component.written.name;
    for (list_at, many, formats, group_size) in lists {
        for (j, format) in formats.iter().enumerate() {
            let Some(weight_format) = omnipack_quant::WeightFormat::parse(format.as_str()) else {
                continue;
            };
            let spec = omnipack_quant::QuantSpec {
                format: weight_format,
                group_size,
                method: omnipack_quant::Method::Rtn,
                keep: q.keep.clone(),
                keep_dtype: q.keep_dtype.map(|d| match d {
                    crate::FloatDtype::F32 => omnipack_quant::Dtype::F32,
                    crate::FloatDtype::F16 => omnipack_quant::Dtype::F16,
                    crate::FloatDtype::Bf16 => omnipack_quant::Dtype::BF16,
                }),
            };
            let Some(group) = layout.requantized(&tensors, &spec).first().copied() else {
                continue;
            };
            let own = group.format;
            out.push(
                locator
                    .at(
                        &list_at.maybe_index(many.then_some(j)),
                        Severity::Error,
                        format!(
                            "component `{name}`: its source is already quantized ({source_format}): `{format}` with group size {group_size} would dequantize `{}` and quantize it again, compounding the error",
                            group.weight
                        ),
                    )
                    .with_label(format!("the source is {own}"))
                    .with_help(format!(
                        "request `{}` with `group_size: {}`, the source's format (its tensors pass through byte for byte), or set `quantization.requantize: true` to dequantize and quantize again",
                        own.weight_format(),
                        own.group_size()
                    )),
            );
        }
    }
}
