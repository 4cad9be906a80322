//! KV-cache rules of a decode step: the group size divides `kv_head_dim` (and is even for
//! `nf4`), `mlc` keeps an f16 cache, and the context has a length limit.

use crate::check::typed::{TypedComponent, TypedManifest};
use crate::diagnostic::{Diagnostic, Severity};
use crate::locate::{Locator, ManifestPath};
use crate::model::{KvFormat, Role, Runtime};

/// Largest divisor suggested for a group size.
const MAX_SUGGESTED_GROUP: u64 = 256;

/// Checks the KV cache of `component`, the component at `at` of `manifest`.
pub(crate) fn check(
    manifest: &TypedManifest,
    component: &TypedComponent,
    at: &ManifestPath,
    locator: &Locator<'_>,
    out: &mut Vec<Diagnostic>,
) {
    group_size(component, at, locator, out);
    runtime_support(component, at, locator, out);
    context_limit(manifest, component, at, locator, out);
}

/// The group size (written, or the default) divides `kv_head_dim`; `nf4` needs an even one.
fn group_size(
    component: &TypedComponent,
    at: &ManifestPath,
    locator: &Locator<'_>,
    out: &mut Vec<Diagnostic>,
) {
    let name = &component.written.name;
    let Some(head_dim) = component
        .written
        .architecture
        .map(|a| a.kv_head_dim)
        .filter(|d| *d > 0)
    else {
        return;
    };
    let kv = &component.resolved.kv_cache;
    let written_group = component
        .written
        .kv_cache
        .as_ref()
        .and_then(|k| k.group_size);
    let quantized = kv.format != KvFormat::F16;
    match written_group {
        Some(g) if g > 0 && head_dim % g != 0 => {
            let divisors: Vec<String> = (1..=head_dim.min(MAX_SUGGESTED_GROUP))
                .rev()
                .filter(|d| head_dim % d == 0)
                .take(4)
                .map(|d| d.to_string())
                .collect();
            out.push(
                locator
                    .at(&at.key("kv_cache").key("group_size"), Severity::Error, format!("component `{name}`: `kv_cache.group_size` {g} does not divide `kv_head_dim` {head_dim}"))
                    .with_label("does not divide kv_head_dim")
                    .with_help(format!("groups run along kv_head_dim: use a divisor of {head_dim}, such as {}", divisors.join(", "))),
            );
        }
        None if quantized && head_dim % kv.group_size != 0 => {
            out.push(
                locator
                    .at(&at.key("kv_cache"), Severity::Error, format!("component `{name}`: the default KV group size {} does not divide `kv_head_dim` {head_dim}", kv.group_size))
                    .with_help("set `kv_cache.group_size` to a divisor of kv_head_dim"),
            );
        }
        _ => {}
    }
    if kv.format == KvFormat::Nf4 && kv.group_size % 2 == 1 {
        out.push(
            locator
                .at(
                    &at.key("kv_cache").key("group_size"),
                    Severity::Error,
                    format!(
                        "component `{name}`: an {} KV cache needs an even group size",
                        KvFormat::Nf4
                    ),
                )
                .with_help(format!("{} packs two codes per byte", KvFormat::Nf4)),
        );
    }
}

/// `mlc` keeps an f16 paged KV cache: it cannot use a quantized one.
fn runtime_support(
    component: &TypedComponent,
    at: &ManifestPath,
    locator: &Locator<'_>,
    out: &mut Vec<Diagnostic>,
) {
    let name = &component.written.name;
    let format = component.resolved.kv_cache.format;
    let (mlc, f16) = (Runtime::Mlc, KvFormat::F16);
    if component.resolved.runtime == mlc && format != f16 {
        out.push(
            locator
                .at(&at.key("kv_cache").key("format"), Severity::Error, format!("component `{name}`: runtime `{mlc}` keeps an {f16} paged KV cache; it cannot use `{format}`"))
                .with_label(format!("not supported by {mlc}"))
                .with_help(format!("use `kv_cache.format: {f16}` (or remove it) with runtime `{mlc}`")),
        );
    }
}

/// A decode step's cache has a length limit: its own `max_seq_len`, paging, or `max_seq_len`
/// on every tier that ships it.
fn context_limit(
    manifest: &TypedManifest,
    component: &TypedComponent,
    at: &ManifestPath,
    locator: &Locator<'_>,
    out: &mut Vec<Diagnostic>,
) {
    let written = &component.written;
    if written.role != Role::TextDecodeStep || manifest.tiers.is_empty() {
        return;
    }
    let name = &written.name;
    // Only the tiers that ship this component need to cap its context (a tier that does not
    // deserialise is left out: its problems are reported already).
    let ships = |components: &Option<Vec<String>>| {
        components
            .as_ref()
            .is_none_or(|list| list.iter().any(|n| n == name))
    };
    let bounded = written.max_seq_len.is_some()
        || component.resolved.kv_cache.paging.is_some()
        || manifest
            .typed_tiers()
            .filter(|(_, t)| ships(&t.components))
            .all(|(_, t)| t.max_seq_len.is_some());
    if !bounded {
        out.push(
            locator
                .at(&at.key("role"), Severity::Error, format!("component `{name}`: the KV cache has no length limit"))
                .with_label("unbounded context")
                .with_help("set the component's `max_seq_len`, `kv_cache.paging`, or `max_seq_len` on every tier that ships it"),
        );
    }
}
