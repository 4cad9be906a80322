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
                    config_agrees(component, &json, config, dir, component_at, locator, out)
                }
            }
        }
    }
    for (j, shard) in shard_paths(source) {
        if let Some(problem) = shards.check(dir, shard) {
            let shard_at = at.key("safetensors").maybe_index(j);
            out.push(file_problem(name, problem, &shard_at, locator));
        }
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
