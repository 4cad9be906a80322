//! `omnipack plan MANIFEST [--tier NAME]... [--format json]`: each tier's memory budget, the
//! chosen variants and the stages, computed from headers only.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use omnipack_manifest::diagnostic::{Diagnostic, render};
use omnipack_manifest::{format_bytes, format_mib, format_signed_bytes};
use omnipack_plan::{Plan, PlanFailure, StageKind, TierPlan};

use super::CommandResult;

/// Output format of `omnipack plan`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PlanFormat {
    /// Tables for people (`human`, its earlier name, is accepted too).
    #[value(alias = "human")]
    Text,
    /// The Plan as JSON on stdout (tiers[] with the summary's field names).
    Json,
}

/// Arguments of `omnipack plan`.
#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// The bundle manifest.
    pub manifest: PathBuf,
    /// Plan only this tier (repeatable). Default: every tier.
    #[arg(long = "tier", value_name = "NAME")]
    pub tiers: Vec<String>,
    /// `text` (tables for people) or `json` (the plan, the input of `omnipack build --plan`),
    /// the same words as `omnipack validate --format`.
    #[arg(long, value_enum, default_value_t = PlanFormat::Text)]
    pub format: PlanFormat,
}

/// Runs `omnipack plan`.
pub fn run(args: PlanArgs) -> CommandResult {
    let loaded = match omnipack_manifest::load(&args.manifest) {
        Ok(l) => l,
        Err(diags) => {
            eprint!("{}", diags.render());
            return Ok(ExitCode::from(1));
        }
    };
    let mut stderr = render(&loaded.warnings);
    let (plan, failure) = match omnipack_plan::plan(&loaded, &args.tiers) {
        Ok(p) => (Some(p), None),
        Err(f) => {
            let PlanFailure { diagnostics, plan } = f;
            (plan.map(|b| *b), Some(diagnostics))
        }
    };
    if let Some(plan) = &plan {
        let warnings: Vec<Diagnostic> = plan
            .warnings
            .iter()
            .map(|w| w.to_diagnostic(&loaded))
            .collect();
        stderr.push_str(&render(&warnings));
        match args.format {
            PlanFormat::Json => {
                let json = serde_json::to_string_pretty(plan)
                    .map_err(|e| miette::miette!("cannot serialize the plan: {e}"))?;
                println!("{json}");
            }
            PlanFormat::Text => print!("{}", human(plan)),
        }
    }
    if let Some(errors) = &failure {
        let diags: Vec<Diagnostic> = errors.iter().map(|d| d.to_diagnostic(&loaded)).collect();
        stderr.push_str(&render(&diags));
    }
    eprint!("{stderr}");
    Ok(if failure.is_some() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// The human report: one table per tier, then the stages.
pub fn human(plan: &Plan) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "plan for {} {} ({} tier{}, {} bundle{}, {} stage{})",
        plan.package.name,
        plan.package.version,
        plan.tiers.len(),
        if plan.tiers.len() == 1 { "" } else { "s" },
        plan.bundles.len(),
        if plan.bundles.len() == 1 { "" } else { "s" },
        plan.stages.len(),
        if plan.stages.len() == 1 { "" } else { "s" },
    );
    let sizes: Vec<String> = plan
        .components
        .iter()
        .map(|c| {
            let source = c
                .source_format
                .as_ref()
                .map(|f| format!(", source quantized {f}"))
                .unwrap_or_default();
            if c.parameters > 0 {
                format!(
                    "{} ({}, {} parameters{source})",
                    c.component.name, c.size_source, c.parameters
                )
            } else {
                format!("{} ({})", c.component.name, c.size_source)
            }
        })
        .collect();
    let _ = writeln!(s, "sizes from: {}", sizes.join(", "));
    for b in &plan.bundles {
        let what = match b.source_treatment.as_deref() {
            Some("pass_through") => "the source's format: its tensors pass through byte for byte",
            Some("dequantize") => "dequantizes the source exactly as MLX does",
            Some("requantize") => {
                "dequantizes the source and quantizes it again (the error compounds)"
            }
            _ => continue,
        };
        let _ = writeln!(s, "  {}: {what}", b.id);
    }
    for t in &plan.tiers {
        s.push('\n');
        tier_table(&mut s, plan, t);
    }
    quality_floors(&mut s, plan);
    let _ = writeln!(s, "\nstages, in execution order:");
    for (i, st) in plan.stages.iter().enumerate() {
        let deps = if st.depends_on.is_empty() {
            String::new()
        } else {
            format!("  (after {})", st.depends_on.join(", "))
        };
        let _ = writeln!(s, "  {:>3}. {}{deps}", i + 1, st.id);
    }
    s
}

/// The `min_sqnr_db` floors: quality is measured while quantizing, so the build checks them.
fn quality_floors(s: &mut String, plan: &Plan) {
    let floors: Vec<(&str, &omnipack_plan::QualityFloor)> = plan
        .stages
        .iter()
        .filter_map(|st| match &st.kind {
            StageKind::Quantize(q) => Some((q.bundle.as_str(), &q.quality_floors)),
            _ => None,
        })
        .flat_map(|(b, fs)| fs.iter().map(move |f| (b, f)))
        .collect();
    if floors.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "\nquality floors (min_sqnr_db), checked at build time once each variant is quantized:"
    );
    for (bundle, f) in floors {
        let _ = writeln!(
            s,
            "  {bundle}: at least {} dB SQNR (tier{} {}; {})",
            f.min_sqnr_db,
            if f.tiers.len() == 1 { "" } else { "s" },
            f.tiers.join(", "),
            f.manifest_path
        );
    }
}

fn tier_table(s: &mut String, plan: &Plan, t: &TierPlan) {
    let e = &t.entry;
    let m = &e.memory;
    let _ = writeln!(
        s,
        "tier {}: device_memory {}, memory_limit {}{}",
        e.name,
        format_bytes(e.device_memory_bytes),
        format_bytes(e.memory_limit_bytes),
        if t.min_headroom_bytes > 0 {
            format!(", min_headroom {}", format_bytes(t.min_headroom_bytes))
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        s,
        "  {:<16} {:<32} {:<8} {:<10} {:>14} {:>14} {:>12}",
        "component", "bundle", "format", "residency", "weights", "resident", "preference"
    );
    for c in &t.choices {
        let b = plan.bundle(&c.bundle);
        let comp = plan.resolved_component(&c.component);
        let ranks = comp
            .map(|rc| rc.quantization.for_tier(&e.name).formats.len())
            .unwrap_or(1);
        let _ = writeln!(
            s,
            "  {:<16} {:<32} {:<8} {:<10} {:>14} {:>14} {:>12}",
            c.component,
            c.bundle,
            // A data bundle ships its files as they are: no format.
            match b {
                Some(b) if b.quantization.is_none() => "-",
                _ => c.format.as_str(),
            },
            b.map(|b| match b.residency {
                omnipack_manifest::Residency::Always => "always",
                omnipack_manifest::Residency::Lazy => "lazy",
            })
            .unwrap_or("?"),
            b.map(|b| b.weights_bytes).unwrap_or(0),
            b.map(|b| b.resident_bytes).unwrap_or(0),
            format!("{} of {}", c.preference_rank + 1, ranks),
        );
    }
    let _ = writeln!(s, "  {:<26} {:>14} {:>10}", "memory", "bytes", "MiB");
    let kv_note = match &e.kv_cache {
        Some(kv) => {
            let paging = kv
                .paging
                .as_ref()
                .map(|p| format!(", paged {}x{}", p.page_len, p.resident_pages))
                .unwrap_or_default();
            format!("  {} tokens, {}{paging}", kv.tokens, kv.format)
        }
        None => String::new(),
    };
    for (name, v, note) in [
        (
            "runtime_overhead_bytes",
            m.runtime_overhead_bytes,
            String::new(),
        ),
        (
            "weights_resident_bytes",
            m.weights_resident_bytes,
            String::new(),
        ),
        ("activations_bytes", m.activations_bytes, String::new()),
        ("kv_cache_bytes", m.kv_cache_bytes, kv_note),
        ("lazy_peak_bytes", m.lazy_peak_bytes, String::new()),
        ("peak_bytes", m.peak_bytes, String::new()),
        ("memory_limit_bytes", e.memory_limit_bytes, String::new()),
        ("min_headroom_bytes", m.min_headroom_bytes, String::new()),
        (
            "required_bytes",
            e.required_bytes,
            "  peak + min_headroom: what the app compares".to_string(),
        ),
    ] {
        let _ = writeln!(s, "  {name:<26} {v:>14} {:>10}{note}", format_mib(v.into()));
    }
    let _ = writeln!(
        s,
        "  {:<26} {:>14} {:>10}",
        "headroom_bytes",
        m.headroom_bytes,
        format_mib(m.headroom_bytes.into())
    );
    let _ = writeln!(
        s,
        "  fits: {} (headroom {}{})",
        if e.fits { "yes" } else { "NO" },
        format_signed_bytes(m.headroom_bytes),
        if t.min_headroom_bytes > 0 {
            format!(", min_headroom {}", format_bytes(t.min_headroom_bytes))
        } else {
            String::new()
        }
    );
    if e.fits {
        let _ = writeln!(
            s,
            "  rank sum: {} ({})",
            t.rank_sum,
            if t.rank_sum == 0 {
                "every component at its first preference"
            } else {
                "steps down the preference lists"
            }
        );
        for u in &t.step_ups {
            let _ = writeln!(
                s,
                "  step up `{}` {} -> {}: exceeds the limit by {} ({} bytes)",
                u.component,
                u.format.as_str(),
                u.step_up_format.as_str(),
                format_bytes(u.over_bytes),
                u.over_bytes
            );
        }
    }
    let _ = writeln!(s, "  load order: {}", e.bundles.join(", "));
}
