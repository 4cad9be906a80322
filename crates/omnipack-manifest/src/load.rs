//! Loading a manifest: read with limits, parse with spans, merge `extends`, check the JSON
//! schema and the semantic rules, and apply defaults. Every problem is reported, located in
//! the file where the offending text really is.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use crate::check;
use crate::diagnostic::{Diagnostic, Diagnostics, Severity, SourceFile};
use crate::did_you_mean::nearest_in_folder;
use crate::lexical_path::normalize_str as normalize;
use crate::locate::Locator;
use crate::model::Manifest;
use crate::node::{self, Entry, Node, NodeValue};
use crate::rel_path::{self, is_absolute, join};
use crate::resolved::{ResolvedManifest, ResolvedSource, resolve};
use crate::units::format_bytes;

/// Longest `extends` chain.
const MAX_EXTENDS_DEPTH: usize = 16;

/// A manifest read from disk, with its `extends` chain merged and defaults applied.
#[derive(Debug, Clone)]
pub struct LoadedManifest {
    /// The manifest file as given.
    pub path: PathBuf,
    /// The folder of the manifest file; resolved paths are relative to it.
    pub dir: PathBuf,
    /// Files read, the manifest first, then its bases.
    pub files: Vec<PathBuf>,
    /// The merged manifest as written (before defaults), paths relative to `dir`.
    pub manifest: Manifest,
    /// The merged manifest as canonical JSON (sorted keys, no `extends`, paths relative to
    /// `dir`), for `manifest_sha256`.
    pub merged_json: Value,
    /// Defaults applied.
    pub resolved: ResolvedManifest,
    /// Warnings found while validating (the manifest is usable).
    pub warnings: Vec<Diagnostic>,
    /// The text of every file read, in the order of `files`.
    pub(crate) sources: Vec<Arc<SourceFile>>,
    /// The merged tree: every key and value with its file and byte span.
    pub(crate) tree: Arc<Node>,
}

impl LoadedManifest {
    /// True when the manifest has no tiers or no components: a valid base for `extends`,
    /// which `plan` and `build` cannot use.
    pub fn is_base_only(&self) -> bool {
        self.resolved.tiers.is_empty() || self.resolved.components.is_empty()
    }

    /// A diagnostic located at a manifest path such as `tiers[0].memory_limit` or
    /// `components[1].delivery`, in the file where that value is written. When the path does
    /// not exist in the files (a default value), it points at the nearest enclosing value
    /// that does, and `path` keeps what was asked for.
    pub fn diagnostic_at(
        &self,
        path: &str,
        severity: Severity,
        message: impl Into<String>,
        help: Option<String>,
    ) -> Diagnostic {
        let segments = node::parse_path(path).unwrap_or_default();
        let locator = Locator {
            sources: &self.sources,
            tree: &self.tree,
        };
        locator
            .at(&segments, severity, message)
            .with_path(path)
            .with_help_opt(help)
    }

    /// The manifest path of the tier called `name`, such as `tiers[2]`.
    pub fn tier_path(&self, name: &str) -> Option<String> {
        self.resolved
            .tiers
            .iter()
            .position(|t| t.name == name)
            .map(|i| format!("tiers[{i}]"))
    }

    /// The manifest path of the component called `name`, such as `components[0]`.
    pub fn component_path(&self, name: &str) -> Option<String> {
        self.resolved
            .components
            .iter()
            .position(|c| c.name == name)
            .map(|i| format!("components[{i}]"))
    }
}

/// Loads `path`, merges its `extends` chain, validates it (schema and semantic rules) and
/// applies defaults. On failure, returns every problem found (warnings included).
pub fn load(path: &Path) -> Result<LoadedManifest, Diagnostics> {
    let mut loader = Loader::default();
    let display = path.to_string_lossy().to_string();
    let Some(tree) = loader.load_file(path, &display, String::new(), None) else {
        return Err(Diagnostics(loader.diags));
    };
    let mut tree = tree;
    rebase_paths(&mut tree, &loader.prefixes);
    let json = tree.to_json();
    let tree = Arc::new(tree);
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let locator = Locator {
        sources: &loader.sources,
        tree: &tree,
    };
    let validation = check::validate(&locator, &json, &dir);
    let mut diags = loader.diags;
    diags.extend(validation.diagnostics);
    dedup(&mut diags);
    // Reading order: by file (the manifest first, then its bases), then by position.
    let file_rank = |d: &Diagnostic| {
        loader
            .sources
            .iter()
            .position(|s| s.name == d.file)
            .unwrap_or(usize::MAX)
    };
    diags.sort_by_key(|d| (file_rank(d), d.span.as_ref().map(|r| r.start).unwrap_or(0)));
    if diags.iter().any(Diagnostic::is_error) {
        return Err(Diagnostics(diags));
    }
    let manifest = match validation.manifest {
        Ok(m) => m,
        Err(e) => {
            let d = locator.at(&[], Severity::Error, format!("invalid manifest: {e}"));
            diags.push(d);
            return Err(Diagnostics(diags));
        }
    };
    let mut resolved = resolve(&manifest);
    set_command_workdirs(&mut resolved, &tree, &loader.prefixes);
    if let Err(d) = read_coreml_models(&manifest, &mut resolved, &dir, &locator) {
        diags.push(*d);
        return Err(Diagnostics(diags));
    }
    Ok(LoadedManifest {
        path: path.to_path_buf(),
        dir,
        files: loader
            .sources
            .iter()
            .map(|s| PathBuf::from(&s.name))
            .collect(),
        manifest,
        merged_json: canonical(json),
        resolved,
        warnings: diags,
        sources: loader.sources,
        tree,
    })
}

/// Reads and parses ONE manifest file (same limits and diagnostics as [`load`], no
/// `extends`, no checks) into JSON: what an editor validates against the schema.
pub fn read_yaml_json(path: &Path) -> Result<Value, Diagnostics> {
    let mut loader = Loader::default();
    let display = path.to_string_lossy().to_string();
    match read_text(path, &display) {
        Ok(text) => {
            let src = Arc::new(SourceFile::new(display, text));
            node::parse(&src, 0)
                .map(|n| n.to_json())
                .map_err(|d| Diagnostics(vec![*d]))
        }
        Err(ReadError::Io(msg, help)) => {
            loader.error_at(
                &None,
                &display,
                format!("cannot read `{display}`: {msg}"),
                help,
            );
            Err(Diagnostics(loader.diags))
        }
        Err(ReadError::Utf8(..)) => Err(Diagnostics(vec![Diagnostic::error(
            display,
            "the manifest is not valid UTF-8",
        )])),
    }
}

fn dedup(diags: &mut Vec<Diagnostic>) {
    let mut seen = std::collections::HashSet::new();
    diags.retain(|d| {
        seen.insert((
            d.file.clone(),
            d.span.clone().map(|r| (r.start, r.end)),
            d.message.clone(),
        ))
    });
}

/// Sorted keys at every level: the canonical form hashed into `manifest_sha256`.
fn canonical(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut entries: Vec<(String, Value)> = m.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, canonical(v)))
                    .collect(),
            )
        }
        Value::Array(a) => Value::Array(a.into_iter().map(canonical).collect()),
        other => other,
    }
}

#[derive(Default)]
struct Loader {
    sources: Vec<Arc<SourceFile>>,
    /// Per file: the folder of that file relative to the top manifest's folder.
    prefixes: Vec<String>,
    /// Canonical paths of the files on the current `extends` chain, with display names.
    chain: Vec<(PathBuf, String)>,
    diags: Vec<Diagnostic>,
}

/// Where a base manifest is named, for errors about it.
struct NamedAt {
    file: usize,
    span: std::ops::Range<usize>,
}

impl Loader {
    fn error_at(
        &mut self,
        at: &Option<NamedAt>,
        display: &str,
        message: String,
        help: Option<String>,
    ) {
        let d = match at {
            Some(at) => Diagnostic::located(
                Severity::Error,
                &self.sources[at.file],
                at.span.clone(),
                message,
            )
            .with_path("extends")
            .with_label("this base manifest"),
            None => Diagnostic::error(display, message),
        };
        self.diags.push(d.with_help_opt(help));
    }

    /// A base that is not a manifest: said at the `extends` key naming it, never quoting it.
    fn not_a_manifest(&mut self, at: &Option<NamedAt>, display: &str, why: String) {
        self.error_at(
            at,
            display,
            format!("base manifest `{display}` is not a manifest: {why}"),
            Some("`extends` names a YAML bundle manifest (a mapping starting with `omnipack: 1`); its text is not shown".into()),
        );
    }

    /// Loads one file and, recursively, its bases; returns the merged tree.
    fn load_file(
        &mut self,
        fs_path: &Path,
        display: &str,
        prefix: String,
        named_at: Option<NamedAt>,
    ) -> Option<Node> {
        let canon = std::fs::canonicalize(fs_path).unwrap_or_else(|_| fs_path.to_path_buf());
        if let Some(pos) = self.chain.iter().position(|(p, _)| *p == canon) {
            let mut names: Vec<&str> = self.chain[pos..].iter().map(|(_, n)| n.as_str()).collect();
            names.push(display);
            let chain = names.join(" -> ");
            self.error_at(
                &named_at,
                display,
                format!("`extends` cycle: {chain}"),
                Some("a manifest cannot extend itself, directly or through its bases: remove one `extends`".into()),
            );
            return None;
        }
        if self.chain.len() >= MAX_EXTENDS_DEPTH {
            self.error_at(
                &named_at,
                display,
                format!("`extends` chain is longer than {MAX_EXTENDS_DEPTH} files"),
                None,
            );
            return None;
        }
        let text = match read_text(fs_path, display) {
            Ok(t) => t,
            Err(ReadError::Io(msg, help)) => {
                let message = if named_at.is_some() {
                    format!("cannot read base manifest `{display}`: {msg}")
                } else {
                    format!("cannot read the manifest: {msg}")
                };
                let help = help.or_else(|| similar_manifest(fs_path));
                self.error_at(&named_at, display, message, help);
                return None;
            }
            Err(ReadError::Utf8(..)) if named_at.is_some() => {
                self.not_a_manifest(&named_at, display, "it is not UTF-8 text".into());
                return None;
            }
            Err(ReadError::Utf8(text, at)) => {
                let src = Arc::new(SourceFile::new(display, text));
                let end = src.text[at..]
                    .chars()
                    .next()
                    .map(|c| at + c.len_utf8())
                    .unwrap_or(at);
                self.diags.push(
                    Diagnostic::located(
                        Severity::Error,
                        &src,
                        at..end,
                        "the manifest is not valid UTF-8",
                    )
                    .with_label("invalid byte sequence")
                    .with_help("save the file as UTF-8"),
                );
                self.sources.push(src);
                self.prefixes.push(prefix);
                return None;
            }
        };
        let file = self.sources.len();
        let src = Arc::new(SourceFile::new(display, text));
        let mut tree = match node::parse(&src, file) {
            Ok(t) => t,
            Err(d) if named_at.is_some() => {
                // A base that is not YAML is not shown: `extends` may name any file (a key, a
                // password file), and its text must not end up in a CI log.
                let at = match (d.line, d.column) {
                    (Some(l), Some(c)) => format!(" (line {l}, column {c})"),
                    _ => String::new(),
                };
                self.not_a_manifest(&named_at, display, format!("it is not valid YAML{at}"));
                return None;
            }
            Err(d) => {
                self.sources.push(src.clone());
                self.prefixes.push(prefix.clone());
                self.diags.push(*d);
                return None;
            }
        };
        if named_at.is_some() && !matches!(tree.value, NodeValue::Map(_)) {
            let what = format!(
                "its top level is {}, not a mapping of keys",
                tree.kind_name()
            );
            self.not_a_manifest(&named_at, display, what);
            return None;
        }
        self.sources.push(src.clone());
        self.prefixes.push(prefix.clone());
        match &tree.value {
            NodeValue::Map(_) => {}
            NodeValue::Null => {
                self.diags.push(
                    Diagnostic::error(display, "the manifest is empty")
                        .with_help("a manifest starts with `omnipack: 1`; see docs/manifest.md"),
                );
                return None;
            }
            _ => {
                // Underline the rest of the first line: a zero-width span says little.
                let start = tree.span.start;
                let end = src.text[start..]
                    .find('\n')
                    .map(|i| start + i)
                    .unwrap_or(src.text.len());
                let d = Diagnostic::located(
                    Severity::Error,
                    &src,
                    start..end.max(tree.span.end),
                    format!("a manifest is a mapping of keys, not {}", tree.kind_name()),
                )
                .with_help("a manifest starts with `omnipack: 1`; see docs/manifest.md");
                self.diags.push(d);
                return None;
            }
        }
        // Take `extends` out of the tree: it is not part of the merged manifest.
        let extends = match &mut tree.value {
            NodeValue::Map(entries) => entries
                .iter()
                .position(|e| e.key == "extends")
                .map(|i| entries.remove(i)),
            _ => None,
        };
        let Some(ext) = extends else {
            return Some(tree);
        };
        let Some(base_rel) = ext.value.as_str().map(str::to_string) else {
            self.diags.push(
                Diagnostic::located(
                    Severity::Error,
                    &src,
                    ext.value.span.clone(),
                    format!("`extends` must be a path, not {}", ext.value.kind_name()),
                )
                .with_path("extends")
                .with_help("write the base manifest's path relative to this file, for example `extends: base.yaml`"),
            );
            return Some(tree);
        };
        let parent = fs_path.parent().unwrap_or(Path::new(""));
        let base_fs = parent.join(&base_rel);
        let display_parent = rel_path::parent(display);
        let base_display = normalize(&join(&display_parent, &base_rel));
        let base_prefix = normalize(&join(&prefix, &rel_path::parent(&base_rel)));
        self.chain.push((canon, display.to_string()));
        let base = self.load_file(
            &base_fs,
            &base_display,
            base_prefix,
            Some(NamedAt {
                file,
                span: ext.value.span.clone(),
            }),
        );
        self.chain.pop();
        let base = base?;
        Some(merge(base, tree))
    }
}

/// "did you mean" for a manifest that does not exist: a YAML file with a similar name beside it.
fn similar_manifest(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let yaml = |n: &str| n.ends_with(".yaml") || n.ends_with(".yml");
    nearest_in_folder(dir, name, yaml)
        .ok()
        .flatten()
        .map(|n| format!("did you mean `{n}`?"))
}

enum ReadError {
    Io(String, Option<String>),
    /// Lossy text and the byte offset of the first invalid byte.
    Utf8(String, usize),
}

fn read_text(path: &Path, display: &str) -> Result<String, ReadError> {
    let meta = std::fs::metadata(path).map_err(|e| ReadError::Io(io_reason(&e), None))?;
    if meta.is_dir() {
        return Err(ReadError::Io(
            "it is a directory, not a manifest file".into(),
            Some(format!(
                "give the path of a YAML manifest inside it, such as `{display}/release.yaml`"
            )),
        ));
    }
    let limit = node::MAX_FILE_BYTES;
    let too_big = |n: u64| {
        ReadError::Io(
            format!(
                "the file is {} ({n} bytes); a manifest may be at most {}",
                format_bytes(n),
                format_bytes(limit)
            ),
            Some("a manifest describes a model; it does not contain one: give weights as `source` paths".into()),
        )
    };
    if meta.len() > limit {
        return Err(too_big(meta.len()));
    }
    // A FIFO, socket or device is refused at once: opening or reading it could block forever.
    let file = omnipack_fs::open_regular(path).map_err(|e| ReadError::Io(io_reason(&e), None))?;
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ReadError::Io(io_reason(&e), None))?;
    if bytes.len() as u64 > limit {
        return Err(too_big(bytes.len() as u64));
    }
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let lossy = String::from_utf8_lossy(e.as_bytes()).into_owned();
        ReadError::Utf8(lossy, at)
    })
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

/// Maps merge key by key (the child's value wins); anything else, lists included, replaces.
fn merge(base: Node, over: Node) -> Node {
    match (base.value, over.value) {
        (NodeValue::Map(mut b), NodeValue::Map(o)) => {
            for entry in o {
                match b.iter().position(|e| e.key == entry.key) {
                    Some(i) => {
                        let old = std::mem::replace(
                            &mut b[i].value,
                            Node {
                                value: NodeValue::Null,
                                file: 0,
                                span: 0..0,
                            },
                        );
                        b[i] = Entry {
                            value: merge(old, entry.value),
                            ..entry
                        };
                    }
                    None => b.push(entry),
                }
            }
            Node {
                value: NodeValue::Map(b),
                file: base.file,
                span: base.span,
            }
        }
        (_, value) => Node {
            value,
            file: over.file,
            span: over.span,
        },
    }
}

/// Rewrites source paths written in base files so that they are relative to the top
/// manifest's folder.
fn rebase_paths(tree: &mut Node, prefixes: &[String]) {
    let rebase = |n: &mut Node| {
        let prefix = prefixes.get(n.file).map(String::as_str).unwrap_or("");
        if let NodeValue::Str(s) = &mut n.value
            && !prefix.is_empty()
            && !is_absolute(s)
        {
            *s = normalize(&join(prefix, s));
        }
    };
    let Some(NodeValue::Seq(components)) = tree_get_mut(tree, "components").map(|n| &mut n.value)
    else {
        return;
    };
    for comp in components {
        let Some(source) = tree_get_mut(comp, "source") else {
            continue;
        };
        if let Some(st) = tree_get_mut(source, "safetensors") {
            match &mut st.value {
                NodeValue::Seq(items) => items.iter_mut().for_each(rebase),
                _ => rebase(st),
            }
        }
        if let Some(cfg) = tree_get_mut(source, "config") {
            rebase(cfg);
        }
        if let Some(model) = tree_get_mut(source, "mlpackage") {
            rebase(model);
        }
        if let Some(NodeValue::Seq(items)) = tree_get_mut(source, "files").map(|n| &mut n.value) {
            items.iter_mut().for_each(rebase);
        }
        if let Some(cmd) = tree_get_mut(source, "command")
            && let Some(NodeValue::Seq(items)) = tree_get_mut(cmd, "inputs").map(|n| &mut n.value)
        {
            items.iter_mut().for_each(rebase);
        }
    }
}

/// An exporter runs in the folder of the manifest file that writes its `run`: a base in another
/// folder keeps its relative program paths.
fn set_command_workdirs(resolved: &mut ResolvedManifest, tree: &Node, prefixes: &[String]) {
    let Some(NodeValue::Seq(components)) = tree_get(tree, "components").map(|n| &n.value) else {
        return;
    };
    for (comp, node) in resolved.components.iter_mut().zip(components) {
        let run_file = tree_get(node, "source")
            .and_then(|s| tree_get(s, "command"))
            .and_then(|c| tree_get(c, "run"))
            .map(|r| r.file);
        if let (ResolvedSource::Command { workdir, .. }, Some(file)) = (&mut comp.source, run_file)
        {
            let prefix = prefixes.get(file).map(String::as_str).unwrap_or("");
            *workdir = normalize(prefix.trim_end_matches('/'));
        }
    }
}

fn tree_get<'a>(n: &'a Node, key: &str) -> Option<&'a Node> {
    match &n.value {
        NodeValue::Map(m) => m.iter().find(|e| e.key == key).map(|e| &e.value),
        _ => None,
    }
}

fn tree_get_mut<'a>(n: &'a mut Node, key: &str) -> Option<&'a mut Node> {
    match &mut n.value {
        NodeValue::Map(m) => m.iter_mut().find(|e| e.key == key).map(|e| &mut e.value),
        _ => None,
    }
}

/// Fills what the manifest leaves to a `source.mlpackage` model: its facts, and for a decode
/// step `architecture`, `kv_cache.io_dtype` (and the KV group size that defaults from the
/// architecture) when not written. Validation has read and checked the same model.
fn read_coreml_models(
    manifest: &Manifest,
    resolved: &mut crate::resolved::ResolvedManifest,
    dir: &Path,
    locator: &Locator<'_>,
) -> Result<(), Box<Diagnostic>> {
    let tiers: Vec<(usize, &crate::model::Tier)> =
        manifest.tiers.iter().flatten().enumerate().collect();
    for (i, (written, comp)) in manifest
        .components
        .iter()
        .flatten()
        .zip(resolved.components.iter_mut())
        .enumerate()
    {
        let crate::resolved::ResolvedSource::Mlpackage { path } = &comp.source else {
            continue;
        };
        let context = crate::coreml_source::required_context(written, &tiers);
        let reading = crate::coreml_source::read(dir, path, written, context.map(|c| c.0))
            .map_err(|p| {
                let at = crate::locate::ManifestPath::root()
                    .key("components")
                    .index(i)
                    .key("source")
                    .key("mlpackage");
                Box::new(
                    locator
                        .at(
                            &at,
                            Severity::Error,
                            format!("component `{}`: {}", written.name, p.message),
                        )
                        .with_help(p.help),
                )
            })?;
        comp.coreml = Some(reading.source_facts());
        if comp.architecture.is_none()
            && let Some(arch) = reading.architecture()
        {
            comp.architecture = Some(arch);
            if written
                .kv_cache
                .as_ref()
                .and_then(|k| k.group_size)
                .is_none()
            {
                comp.kv_cache.group_size =
                    arch.kv_head_dim.min(crate::resolved::DEFAULT_KV_GROUP_SIZE);
            }
        }
        if written.kv_cache.as_ref().and_then(|k| k.io_dtype).is_none()
            && let Some(io) = reading.io_dtype()
        {
            comp.kv_cache.io_dtype = io;
        }
    }
    Ok(())
}
