//! Component rules that follow from its role and runtime: a `text_decode_step` has an
//! `architecture`, other roles ignore `kv_cache` and `architecture`, a `data` component ships
//! files as they are (no `quantization`, no `runtime`, no `safetensors` source), and
//! `compute_units` belongs to Core ML.

use crate::check::typed::TypedComponent;
use crate::diagnostic::{Diagnostic, Severity};
use crate::locate::{Locator, ManifestPath};
use crate::model::{Role, Runtime};

/// Checks `component`, the component at `at`.
pub(crate) fn check(
    component: &TypedComponent,
    at: &ManifestPath,
    locator: &Locator<'_>,
    out: &mut Vec<Diagnostic>,
) {
    let written = &component.written;
    let name = &written.name;
    let role = written.role;
    // A Core ML decode step read from `source.mlpackage` has its architecture read from the
    // model (the Core ML rules check it).
    let from_model =
        written.source.mlpackage.is_some() && component.resolved.runtime == Runtime::Coreml;
    if role == Role::TextDecodeStep && written.architecture.is_none() && !from_model {
        out.push(
            locator
                .at(&at.key("role"), Severity::Error, format!("component `{name}`: a `{role}` needs `architecture`"))
                .with_label("needs architecture")
                .with_help("add `architecture: { layers: .., kv_heads: .., kv_head_dim: .., hidden_size: .., vocab_size: .. }`: the memory model sizes the KV cache and activations from it"),
        );
    }
    if role != Role::TextDecodeStep {
        let ignored = [
            ("kv_cache", written.kv_cache.is_some()),
            ("architecture", written.architecture.is_some()),
        ];
        for (key, _) in ignored.into_iter().filter(|(_, given)| *given) {
            out.push(
                locator
                    .at_key(
                        &at.key(key),
                        Severity::Warning,
                        format!("component `{name}`: `{key}` is ignored for role `{role}`"),
                    )
                    .with_label("ignored")
                    .with_help(format!("only a `{}` has a KV cache", Role::TextDecodeStep)),
            );
        }
    }
    if role == Role::Data {
        let not_for_data = [
            (
                "quantization",
                written.quantization.is_some(),
                "data files are shipped as they are: remove `quantization` (or give the component a model role)",
            ),
            (
                "runtime",
                written.runtime.is_some(),
                "no runtime loads a `data` bundle: remove `runtime` (the app reads the files itself)",
            ),
            (
                "source.safetensors",
                written.source.safetensors.is_some(),
                "a `data` component ships files as they are: list the file under `source.files`, or give the component a model role to quantize it",
            ),
        ];
        for (key, _, help) in not_for_data.into_iter().filter(|(_, given, _)| *given) {
            let path = match key {
                "source.safetensors" => at.key("source").key("safetensors"),
                k => at.key(k),
            };
            out.push(
                locator
                    .at_key(
                        &path,
                        Severity::Error,
                        format!("component `{name}`: `{key}` does not apply to role `{role}`"),
                    )
                    .with_label(format!("not for `{role}`"))
                    .with_help(help),
            );
        }
    }
    let runtime = component.resolved.runtime;
    if written.compute_units.is_some() && runtime != Runtime::Coreml {
        let coreml = Runtime::Coreml;
        out.push(
            locator
                .at_key(&at.key("compute_units"), Severity::Error, format!("component `{name}`: `compute_units` only applies to runtime `{coreml}` (this is `{runtime}`)"))
                .with_label(format!("only for {coreml}"))
                .with_help(format!("remove `compute_units`, or set `runtime: {coreml}`")),
        );
    }
}
