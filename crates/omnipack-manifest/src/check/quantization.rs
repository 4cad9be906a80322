//! Quantization rules: per-tier overrides name tiers that exist, a preference list does not
//! repeat a format, and omnipack's own integer layouts go only to the runtimes that load them.

use crate::check::typed::{TypedComponent, TypedManifest};
use crate::check::wording::{backticked, backticked_or};
use crate::diagnostic::{Diagnostic, Severity};
use crate::did_you_mean::nearest;
use crate::locate::{Locator, ManifestPath};
use crate::model::{Format, OneOrMany, Runtime};

/// Checks the quantization of `component`, the component at `at` of `manifest`.
pub(crate) fn check(
    manifest: &TypedManifest,
    component: &TypedComponent,
    at: &ManifestPath,
    locator: &Locator<'_>,
    out: &mut Vec<Diagnostic>,
) {
    let Some(q) = &component.written.quantization else {
        return;
    };
    let at = at.key("quantization");
    let mut format_lists = vec![(at.key("format"), &q.format)];
    for (tier, over) in q.tiers.iter().flatten() {
        let tier_at = at.key("tiers").key(tier);
        override_tier(manifest, component, tier, &tier_at, locator, out);
        if let Some(formats) = &over.format {
            format_lists.push((tier_at.key("format"), formats));
        }
    }
    let all_formats: Vec<Format> = format_lists.iter().flat_map(|(_, f)| f.to_vec()).collect();
    for (list_at, formats) in format_lists {
        format_list(component, formats, &list_at, locator, out);
    }
    method(component, &all_formats, &at, locator, out);
    let mut floors = vec![(at.key("min_sqnr_db"), q.min_sqnr_db)];
    for (tier, over) in q.tiers.iter().flatten() {
        floors.push((
            at.key("tiers").key(tier).key("min_sqnr_db"),
            over.min_sqnr_db,
        ));
    }
    for (floor_at, floor) in floors {
        if let Some(db) = floor {
            min_sqnr_db(component, db, &floor_at, locator, out);
        }
    }
}

/// Where a component's weights come from when omnipack does not write them itself: the
/// source key (`command` or `files`), `None` for a `safetensors` source.
fn not_quantized_by_omnipack(component: &TypedComponent) -> Option<&'static str> {
    let source = &component.written.source;
    if source.safetensors.is_some() {
        None
    } else if source.command.is_some() {
        Some("command")
    } else {
        Some("files")
    }
}

/// `method`, when written: the component has an MLX affine format omnipack quantizes.
fn method(
    component: &TypedComponent,
    formats: &[Format],
    at: &ManifestPath,
    locator: &Locator<'_>,
    out: &mut Vec<Diagnostic>,
) {
    let Some(method) = component
        .written
        .quantization
        .as_ref()
        .and_then(|q| q.method)
    else {
        return;
    };
    let name = &component.written.name;
    let at = at.key("method");
    if let Some(source) = not_quantized_by_omnipack(component) {
        out.push(
            locator
                .at(
                    &at,
                    Severity::Error,
                    format!(
                        "component `{name}`: `method: {method}` needs weights omnipack quantizes, not a `source.{source}`"
                    ),
                )
                .with_label("nothing to quantize")
                .with_help(
                    "remove `method`: an exporter's or a file's weights are packaged as they are",
                ),
        );
        return;
    }
    if formats.iter().any(|f| f.affine_bits().is_some()) {
        return;
    }
    let mut written: Vec<&str> = Vec::new();
    for f in formats {
        if !written.contains(&f.as_str()) {
            written.push(f.as_str());
        }
    }
    out.push(
        locator
            .at(
                &at,
                Severity::Error,
                format!(
                    "component `{name}`: `method: {method}` applies to the MLX affine formats (`int2` ... `int8`), and this component has none ({})",
                    backticked(&written)
                ),
            )
            .with_label("no affine format")
            .with_help(
                "remove `method`, or list an affine format such as `int4`: float casts and `nf4` have no scale and bias to choose",
            ),
    );
}

/// A `min_sqnr_db` floor: finite, and on weights omnipack writes (and so measures).
fn min_sqnr_db(
    component: &TypedComponent,
    db: f64,
    at: &ManifestPath,
    locator: &Locator<'_>,
    out: &mut Vec<Diagnostic>,
) {
    let name = &component.written.name;
    if !db.is_finite() {
        out.push(
            locator
                .at(
                    at,
                    Severity::Error,
                    format!("component `{name}`: `min_sqnr_db` must be a finite number of dB"),
                )
                .with_label("not finite")
                .with_help("write a number such as `20` (dB)"),
        );
    } else if let Some(source) = not_quantized_by_omnipack(component) {
        out.push(
            locator
                .at(
                    at,
                    Severity::Error,
                    format!(
                        "component `{name}`: `min_sqnr_db` needs weights omnipack quantizes and measures, not a `source.{source}`"
                    ),
                )
                .with_label("not measured")
                .with_help("remove `min_sqnr_db`: only weights omnipack writes have a measured quality"),
        );
    }
}

/// An override written in the top manifest names one of its tiers. A base shared by
/// manifests with different tiers may carry overrides for tiers this manifest does not have.
fn override_tier(
    manifest: &TypedManifest,
    component: &TypedComponent,
    tier: &str,
    at: &ManifestPath,
    locator: &Locator<'_>,
    out: &mut Vec<Diagnostic>,
) {
    let tiers = manifest.tier_names();
    if manifest.tiers.is_empty() || tiers.contains(&tier) || !locator.written_in_top_file(at) {
        return;
    }
    let mut help = format!("tiers: {}", backticked(&tiers));
    if let Some(n) = nearest(tier, tiers.iter().copied()) {
        help = format!("did you mean `{n}`? {help}");
    }
    let name = &component.written.name;
    out.push(
        locator
            .at_key(
                at,
                Severity::Error,
                format!("component `{name}`: quantization override for unknown tier `{tier}`"),
            )
            .with_label("no such tier")
            .with_help(help),
    );
}

/// The runtimes that load `format` as omnipack writes it natively.
fn native_runtimes(format: Format) -> Vec<Runtime> {
    if format == Format::Nf4 {
        vec![Runtime::Custom]
    } else if format.affine_bits().is_some() {
        vec![Runtime::Mlx, Runtime::Custom]
    } else {
        Runtime::ALL.to_vec()
    }
}

/// One format or preference list: no format twice, and each loadable by the runtime.
fn format_list(
    component: &TypedComponent,
    formats: &OneOrMany<Format>,
    at: &ManifestPath,
    locator: &Locator<'_>,
    out: &mut Vec<Diagnostic>,
) {
    let name = &component.written.name;
    let runtime = component.resolved.runtime;
    // An exporter's quantization is declarative (passed to it as `{format}`, used by the
    // memory model): only omnipack's own native layouts are limited to the runtimes that
    // load them.
    let exporter = component.written.source.command.is_some();
    // A Core ML model omnipack reads itself is compressed natively to int8 or int4 (the Core
    // ML rules check its deployment target).
    let coreml_model = component.written.source.mlpackage.is_some() && runtime == Runtime::Coreml;
    let items: Vec<(Option<usize>, Format)> = match formats {
        OneOrMany::One(f) => vec![(None, *f)],
        OneOrMany::Many(list) => list
            .iter()
            .enumerate()
            .map(|(j, f)| (Some(j), *f))
            .collect(),
    };
    let mut seen = Vec::new();
    for (j, format) in items {
        let item_at = at.maybe_index(j);
        if seen.contains(&format) {
            out.push(
                locator
                    .at(
                        &item_at,
                        Severity::Warning,
                        format!("component `{name}`: format `{format}` is listed twice"),
                    )
                    .with_label("repeated"),
            );
        }
        seen.push(format);
        let loaders = native_runtimes(format);
        let exported = exporter && format.affine_bits().is_some();
        let coreml_native = coreml_model && matches!(format, Format::Int8 | Format::Int4);
        if loaders.contains(&runtime) || exported || coreml_native {
            continue;
        }
        let loaders: Vec<&str> = loaders.iter().map(|r| r.as_str()).collect();
        let allowed = backticked_or(&loaders);
        let floats: Vec<&str> = Format::ALL
            .iter()
            .filter(|f| !f.is_grouped())
            .map(|f| f.as_str())
            .collect();
        let exporter_hint = if format == Format::Nf4 {
            ""
        } else if runtime == Runtime::Coreml && matches!(format, Format::Int8 | Format::Int4) {
            ", or give the Core ML model as `source.mlpackage`: omnipack compresses it to int8 or int4 itself"
        } else {
            ", or produce the weights with an exporter (`source.command`), which receives the format as `{format}`"
        };
        out.push(
            locator
                .at(&item_at, Severity::Error, format!("component `{name}`: format `{format}` needs runtime {allowed}, not `{runtime}`"))
                .with_label(format!("not loadable by {runtime}"))
                .with_help(format!(
                    "{format} is a native layout only {allowed} load; with runtime `{runtime}` use {} (its exporter does its own compression){exporter_hint}",
                    backticked_or(&floats)
                )),
        );
    }
}
