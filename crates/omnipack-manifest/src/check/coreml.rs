//! Core ML source rules: `source.mlpackage` goes with `runtime: coreml`, the model reads, a
//! decode step keeps the contract the app's token loop binds (every mismatch at the manifest
//! key it contradicts, quoting the model), and a compressed format runs on the model's
//! deployment target. `decode_step` names belong to a Core ML decode step.

use std::path::Path;

use omnipack_coreml::{CompressionFormat, Mismatch, Subject};

use crate::check::typed::{TypedComponent, TypedManifest};
use crate::coreml_source::{self, ContextFrom};
use crate::diagnostic::{Diagnostic, Severity};
use crate::locate::{Locator, ManifestPath};
use crate::model::{Format, OneOrMany, Role, Runtime};

/// Checks the Core ML side of `component`, the component at `at` of `manifest`; paths are
/// relative to `dir`.
pub(crate) fn check(
    manifest: &TypedManifest,
    component: &TypedComponent,
    at: &ManifestPath,
    dir: &Path,
    locator: &Locator<'_>,
    out: &mut Vec<Diagnostic>,
) {
    let written = &component.written;
    let name = &written.name;
    let runtime = component.resolved.runtime;
    let coreml = Runtime::Coreml;
    if written.decode_step.is_some() && (runtime != coreml || written.role != Role::TextDecodeStep)
    {
        out.push(
            locator
                .at_key(
                    &at.key("decode_step"),
                    Severity::Warning,
                    format!(
                        "component `{name}`: `decode_step` is ignored: it names the features of a `{}` on runtime `{coreml}`",
                        Role::TextDecodeStep
                    ),
                )
                .with_label("ignored"),
        );
    }
    let Some(rel) = &written.source.mlpackage else {
        return;
    };
    let model_at = at.key("source").key("mlpackage");
    if runtime != coreml {
        out.push(
            locator
                .at_key(
                    &model_at,
                    Severity::Error,
                    format!("component `{name}`: `source.mlpackage` needs runtime `{coreml}` (this is `{runtime}`)"),
                )
                .with_label(format!("only for {coreml}"))
                .with_help(format!("add `runtime: {coreml}` to the component")),
        );
        return;
    }
    let tiers: Vec<_> = manifest.typed_tiers().collect();
    let context = coreml_source::required_context(written, &tiers);
    let reading = match coreml_source::read(dir, rel, written, context.map(|c| c.0)) {
        Ok(r) => r,
        Err(problem) => {
            out.push(
                locator
                    .at(
                        &model_at,
                        Severity::Error,
                        format!("component `{name}`: {}", problem.message),
                    )
                    .with_label("here")
                    .with_help(problem.help),
            );
            return;
        }
    };
    if let Some(step) = &reading.decode_step {
        for m in &step.mismatches {
            out.push(mismatch(component, m, at, context.map(|c| c.1), locator));
        }
        if step.is_ok() && written.architecture.is_none() && reading.architecture().is_none() {
            out.push(
                locator
                    .at(&at.key("role"), Severity::Error, format!("component `{name}`: the model does not say its hidden size (no weight of shape [vocab_size, H]): `architecture` is needed"))
                    .with_label("needs architecture")
                    .with_help("add `architecture: { layers: .., kv_heads: .., kv_head_dim: .., hidden_size: .., vocab_size: .. }`"),
            );
        }
    }
    // Compressed formats need the deployment target their operation exists on.
    let target = reading.facts.target();
    let q_at = at.key("quantization");
    let mut lists = Vec::new();
    if let Some(q) = &written.quantization {
        lists.push((q_at.key("format"), &q.format));
        for (tier, over) in q.tiers.iter().flatten() {
            if let Some(f) = &over.format {
                lists.push((q_at.key("tiers").key(tier).key("format"), f));
            }
        }
    }
    for (list_at, formats) in lists {
        let items: Vec<(Option<usize>, Format)> = match formats {
            OneOrMany::One(f) => vec![(None, *f)],
            OneOrMany::Many(l) => l.iter().enumerate().map(|(j, f)| (Some(j), *f)).collect(),
        };
        for (j, format) in items {
            let Some(cf) = compression_format(format, 32) else {
                continue;
            };
            let needs = cf.minimum_specification_version();
            if target.specification_version >= needs {
                continue;
            }
            let needs_target = omnipack_coreml::DeploymentTarget {
                specification_version: needs,
            };
            out.push(
                locator
                    .at(
                        &list_at.maybe_index(j),
                        Severity::Error,
                        format!(
                            "component `{name}`: format `{format}` needs a Core ML model for {} or later, but `{rel}` targets {target}",
                            needs_target.ios().unwrap_or("a newer iOS")
                        ),
                    )
                    .with_label(format!("needs {}", needs_target.ios().unwrap_or("a newer iOS")))
                    .with_help(format!(
                        "convert the model with `minimum_deployment_target=ct.target.{}` or drop `{format}` from the list",
                        needs_target.ios().unwrap_or("iOS18").replace(' ', "")
                    )),
            );
        }
    }
}

/// The Core ML compression of a manifest format (`group_size` is int4's block size), `None`
/// for formats Core ML variants cannot have.
pub fn compression_format(format: Format, group_size: u32) -> Option<CompressionFormat> {
    match format {
        Format::F16 => Some(CompressionFormat::F16),
        Format::Int8 => Some(CompressionFormat::Int8),
        Format::Int4 => Some(CompressionFormat::Int4 {
            block_size: group_size,
        }),
        _ => None,
    }
}

/// One contract mismatch, located at the manifest key it contradicts.
fn mismatch(
    component: &TypedComponent,
    m: &Mismatch,
    at: &ManifestPath,
    context_from: Option<ContextFrom>,
    locator: &Locator<'_>,
) -> Diagnostic {
    let written = &component.written;
    let name = &written.name;
    let model_at = at.key("source").key("mlpackage");
    let names_at = |key: &str| {
        let given = match key {
            "input_ids" => written
                .decode_step
                .as_ref()
                .is_some_and(|d| d.input_ids.is_some()),
            "logits" => written
                .decode_step
                .as_ref()
                .is_some_and(|d| d.logits.is_some()),
            "cache_inputs" => written
                .decode_step
                .as_ref()
                .is_some_and(|d| d.cache_inputs.is_some()),
            _ => written
                .decode_step
                .as_ref()
                .is_some_and(|d| d.cache_outputs.is_some()),
        };
        given.then(|| (at.key("decode_step").key(key), format!("decode_step.{key}")))
    };
    let arch_at = |key: &str| {
        written.architecture.is_some().then(|| {
            (
                at.key("architecture").key(key),
                format!("architecture.{key}"),
            )
        })
    };
    let located: Option<(ManifestPath, String)> = match m.subject {
        Subject::InputIds => names_at("input_ids"),
        Subject::Logits => names_at("logits"),
        Subject::CacheInputs => names_at("cache_inputs"),
        Subject::CacheOutputs => names_at("cache_outputs"),
        Subject::CacheShape => None,
        Subject::Layers => arch_at("layers"),
        Subject::KvHeads => arch_at("kv_heads"),
        Subject::KvHeadDim => arch_at("kv_head_dim"),
        Subject::VocabSize => arch_at("vocab_size"),
        Subject::IoDtype => written.kv_cache.as_ref().and_then(|k| k.io_dtype).map(|_| {
            (
                at.key("kv_cache").key("io_dtype"),
                "kv_cache.io_dtype".to_string(),
            )
        }),
        Subject::Context => match context_from {
            Some(ContextFrom::Component) => {
                Some((at.key("max_seq_len"), "max_seq_len".to_string()))
            }
            Some(ContextFrom::Tier(j)) => Some((
                ManifestPath::root()
                    .key("tiers")
                    .index(j)
                    .key("max_seq_len"),
                format!("tiers[{j}].max_seq_len"),
            )),
            None => None,
        },
    };
    let written_value = |path: &ManifestPath| locator.source_text(path);
    let (path, message, label) = match located {
        Some((path, key)) => {
            let value = match m.subject {
                Subject::IoDtype
                | Subject::Context
                | Subject::Layers
                | Subject::KvHeads
                | Subject::KvHeadDim
                | Subject::VocabSize => {
                    written_value(&path).map(|v| format!("`{key}` is {v} but "))
                }
                _ => None,
            };
            let message = match value {
                Some(v) => format!("component `{name}`: {v}{}", m.found),
                None => format!("component `{name}`: `{key}`: {m}"),
            };
            (path, message, "the model disagrees")
        }
        None => (
            model_at,
            format!("component `{name}`: the decode step breaks the contract: {m}"),
            "this model",
        ),
    };
    let help = match m.subject {
        Subject::IoDtype => {
            "set `kv_cache.io_dtype` to the model's cache type, or re-export the model with caches of that type"
        }
        Subject::Context => {
            "lower `max_seq_len` to what the model's sequence axis reaches, or re-export the model with a larger bound (`ct.RangeDim(1, N)`)"
        }
        Subject::InputIds => {
            "the token input must be an int32 array of shape [1, 1] (cast the ids to int32 in the exported program)"
        }
        Subject::Layers | Subject::KvHeads | Subject::KvHeadDim | Subject::VocabSize => {
            "make `architecture` say what the model has, or leave `architecture` out: omnipack reads it from the model"
        }
        _ => {
            "a Core ML decode step has `input_ids`, `logits` and per layer `k_lat_{i}`/`v_lat_{i}` in and `nk_lat_{i}`/`nv_lat_{i}` out (or the caches as states); `decode_step` renames them (docs/manifest.md)"
        }
    };
    locator
        .at(&path, Severity::Error, message)
        .with_label(label)
        .with_help(help)
}
