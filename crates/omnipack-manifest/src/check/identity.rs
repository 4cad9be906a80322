//! Identity rules: a manifest with tiers and components has a `package`, and tier and
//! component names are unique.

use crate::check::typed::TypedManifest;
use crate::diagnostic::{Diagnostic, Severity};
use crate::locate::{Locator, ManifestPath};

/// Checks the package and the names of `manifest`.
pub(crate) fn check(manifest: &TypedManifest, locator: &Locator<'_>, out: &mut Vec<Diagnostic>) {
    let root = ManifestPath::root();
    if !manifest.tiers.is_empty() && !manifest.components.is_empty() && !manifest.package_written {
        out.push(
            locator
                .at_key(
                    &root.key("package"),
                    Severity::Error,
                    "missing `package`: a manifest with tiers and components needs a package identity",
                )
                .with_label("this manifest has tiers and components")
                .with_path("package")
                .with_help(
                    "add `package: { name: myapp, version: 1.0.0, bundle_id: com.example.myapp }`",
                ),
        );
    }
    let tiers: Vec<Option<&str>> = manifest.tiers.iter().map(|t| t.name.as_deref()).collect();
    let components: Vec<Option<&str>> = manifest
        .components
        .iter()
        .map(|c| c.name.as_deref())
        .collect();
    unique_names(&tiers, "tier", &root.key("tiers"), locator, out);
    unique_names(
        &components,
        "component",
        &root.key("components"),
        locator,
        out,
    );
    for (names, what, list) in [
        (&tiers, "tier", "tiers"),
        (&components, "component", "components"),
    ] {
        same_asset_pack_ids(names, what, &root.key(list), locator, out);
    }
}

/// Reports every name of `names` that differs from an earlier one only by `_` against `-`:
/// asset-pack IDs turn `_` into `-`, so their bundles would get the same asset-pack ID.
fn same_asset_pack_ids(
    names: &[Option<&str>],
    what: &str,
    list: &ManifestPath,
    locator: &Locator<'_>,
    out: &mut Vec<Diagnostic>,
) {
    let mut seen: Vec<(&str, String, usize)> = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let Some(name) = *name else { continue };
        let hyphenated = name.replace('_', "-");
        match seen.iter().find(|(n, h, _)| *h == hyphenated && *n != name) {
            Some((other, _, first)) => {
                let first_loc = locator.location(&list.index(*first).key("name"));
                out.push(
                    locator
                        .at(
                            &list.index(i).key("name"),
                            Severity::Error,
                            format!(
                                "{what} names `{other}` and `{name}` give the same asset-pack IDs"
                            ),
                        )
                        .with_label("same as an earlier name once `_` becomes `-`")
                        .with_help(format!(
                            "asset-pack IDs turn `_` into `-` (App Store Connect accepts letters, digits and hyphens); rename one of them (the other is at {first_loc})"
                        )),
                );
            }
            None => seen.push((name, hyphenated, i)),
        }
    }
}

/// Reports every name of `names` (the items of the list at `list`) used by an earlier item.
fn unique_names(
    names: &[Option<&str>],
    what: &str,
    list: &ManifestPath,
    locator: &Locator<'_>,
    out: &mut Vec<Diagnostic>,
) {
    let mut seen: Vec<(&str, usize)> = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let Some(name) = *name else { continue };
        match seen.iter().find(|(n, _)| *n == name) {
            Some((_, first)) => {
                let first_loc = locator.location(&list.index(*first).key("name"));
                out.push(
                    locator
                        .at(
                            &list.index(i).key("name"),
                            Severity::Error,
                            format!("duplicate {what} name `{name}`"),
                        )
                        .with_label("used twice")
                        .with_help(format!(
                            "{what} names must be unique; the first `{name}` is at {first_loc}"
                        )),
                );
            }
            None => seen.push((name, i)),
        }
    }
}
