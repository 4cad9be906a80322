//! Tier rules: a tier names components that exist, and its memory limits make sense
//! (`memory_limit` at most `device_memory`, `min_headroom` below `memory_limit`).

use crate::check::typed::TypedManifest;
use crate::check::wording::backticked;
use crate::diagnostic::{Diagnostic, Severity};
use crate::did_you_mean::nearest;
use crate::locate::{Locator, ManifestPath};
use crate::model::Tier;
use crate::units::format_bytes;

/// Checks every tier of `manifest` that deserialises.
pub(crate) fn check(manifest: &TypedManifest, locator: &Locator<'_>, out: &mut Vec<Diagnostic>) {
    let components = manifest.component_names();
    for (i, tier) in manifest.typed_tiers() {
        let at = ManifestPath::root().key("tiers").index(i);
        shipped_components(tier, &components, &at, locator, out);
        memory_limits(tier, &at, locator, out);
    }
}

/// `components` of a tier: not empty (a warning), and only names of components that exist.
fn shipped_components(
    tier: &Tier,
    known: &[&str],
    at: &ManifestPath,
    locator: &Locator<'_>,
    out: &mut Vec<Diagnostic>,
) {
    let Some(list) = &tier.components else {
        return;
    };
    let name = &tier.name;
    if list.is_empty() {
        out.push(
            locator
                .at(
                    &at.key("components"),
                    Severity::Warning,
                    format!("tier `{name}` ships no components"),
                )
                .with_help("list the components it ships, or remove `components` to ship them all"),
        );
    }
    for (j, component) in list.iter().enumerate() {
        if known.contains(&component.as_str()) {
            continue;
        }
        let mut help = format!("components: {}", backticked(known));
        if let Some(n) = nearest(component, known.iter().copied()) {
            help = format!("did you mean `{n}`? {help}");
        }
        out.push(
            locator
                .at(
                    &at.key("components").index(j),
                    Severity::Error,
                    format!("tier `{name}` names unknown component `{component}`"),
                )
                .with_label("no such component")
                .with_help(help),
        );
    }
}

/// `memory_limit` at most `device_memory`; `min_headroom`, when given, below `memory_limit`.
fn memory_limits(tier: &Tier, at: &ManifestPath, locator: &Locator<'_>, out: &mut Vec<Diagnostic>) {
    let name = &tier.name;
    let device = tier.device_memory.bytes();
    let limit = tier.memory_limit.bytes();
    if limit > device {
        out.push(
            locator
                .at(
                    &at.key("memory_limit"),
                    Severity::Error,
                    format!("tier `{name}`: `memory_limit` is larger than `device_memory`"),
                )
                .with_label("more than the device has")
                .with_help(format!(
                    "iOS lets an app use only part of the device's memory: use at most {}",
                    format_bytes(device)
                )),
        );
    }
    if tier.min_headroom.is_some_and(|h| h.bytes() >= limit) {
        out.push(
            locator
                .at(
                    &at.key("min_headroom"),
                    Severity::Error,
                    format!("tier `{name}`: `min_headroom` leaves no memory for the app"),
                )
                .with_label("not below memory_limit")
                .with_help(
                    "min_headroom is a safety margin kept free below memory_limit: make it smaller",
                ),
        );
    }
}
