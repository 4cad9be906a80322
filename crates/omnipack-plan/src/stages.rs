//! The stage graph and each stage's parameters: export per component (per tier for `{tier}`
//! exporters), quantize per native variant, package per bundle, in a valid execution order.
//! Everything a build needs to run a stage is decided here.

use std::collections::{BTreeMap, BTreeSet};

use omnipack_manifest::canonical_json::canonical;
use omnipack_manifest::lexical_path::normalize_or_dot;
use omnipack_manifest::{Format, ResolvedComponent, ResolvedManifest, ResolvedSource, Role};
use serde_json::{Map, Value, json};

use crate::memory;
use crate::model::BundlePlan;
use crate::sizing::ComponentSizer;
use crate::stage::{
    AssetPackParams, BundleContents, ConfigJson, DecodeStepSidecars, ExportParams, ExportSource,
    PackageParams, QualityFloor, QuantizeParams, Stage, StageKind,
};

/// `export:<component>` or `export:<component>:<tier>`.
pub fn export_stage_id(component: &str, tier: Option<&str>) -> String {
    match tier {
        Some(t) => format!("export:{component}:{t}"),
        None => format!("export:{component}"),
    }
}

/// The asset-pack ID of a bundle: the bundle id with `_` turned into `-`, after
/// `<asset_pack_prefix>-` when there is a prefix. Letters, digits and hyphens only, since App
/// Store Connect refuses dots in asset-pack identifiers (docs/build.md).
pub fn asset_pack_id(asset_pack_prefix: Option<&str>, bundle_id: &str) -> String {
    let id = bundle_id.replace('_', "-");
    match asset_pack_prefix {
        Some(p) => format!("{p}-{id}"),
        None => id,
    }
}

/// Fills the placeholders of an exporter argv (`{tier}`, `{out}`, ...) named in `values`, each
/// argument left to right in the order of the names.
pub fn fill_placeholders(run: &[String], values: &BTreeMap<&str, String>) -> Vec<String> {
    run.iter()
        .map(|a| {
            let mut s = a.clone();
            for (k, v) in values {
                s = s.replace(&format!("{{{k}}}"), v);
            }
            s
        })
        .collect()
}

/// Keys of a `source.config` that describe the source checkpoint, not the bundle's weights.
const CONFIG_KEYS_REPLACED: [&str; 3] = ["quantization", "quantization_config", "torch_dtype"];

/// Every stage of the plan, exports first, then quantizations, then packages.
pub(crate) fn stages(
    m: &ResolvedManifest,
    sizers: &[ComponentSizer],
    bundles: &[BundlePlan],
) -> Vec<Stage> {
    let exports = export_stages(m, sizers, bundles);
    let mut quantizes = Vec::new();
    let mut packages = Vec::new();
    for b in bundles {
        let Some(c) = m.components.iter().find(|c| c.name == b.component) else {
            continue;
        };
        let export = export_stage_id(&c.name, b.tier.as_deref());
        let package_dep = if matches!(c.source, ResolvedSource::Safetensors { .. }) {
            let ci = m.components.iter().position(|x| x.name == c.name);
            let config = ci.and_then(|i| sizers[i].config_quantization()).cloned();
            let q = quantize_stage(m, c, b, export, config);
            let id = q.id.clone();
            quantizes.push(q);
            id
        } else {
            export
        };
        packages.push(package_stage(m, c, b, package_dep));
    }
    exports
        .into_iter()
        .chain(quantizes)
        .chain(packages)
        .collect()
}

/// One export per component some bundle uses; per tier for `{tier}` exporters.
fn export_stages(
    m: &ResolvedManifest,
    sizers: &[ComponentSizer],
    bundles: &[BundlePlan],
) -> Vec<Stage> {
    let mut exports = Vec::new();
    for (i, c) in m.components.iter().enumerate() {
        let mine: Vec<&BundlePlan> = bundles.iter().filter(|b| b.component == c.name).collect();
        if mine.is_empty() {
            continue;
        }
        let tiers: Vec<Option<&str>> = if c.source.is_per_tier() {
            let mut seen = BTreeSet::new();
            m.tiers
                .iter()
                .map(|t| t.name.as_str())
                .filter(|t| mine.iter().any(|b| b.tier.as_deref() == Some(t)) && seen.insert(*t))
                .map(Some)
                .collect()
        } else {
            vec![None]
        };
        for tier in tiers {
            exports.push(Stage {
                id: export_stage_id(&c.name, tier),
                kind: StageKind::Export(ExportParams {
                    component: c.name.clone(),
                    tier: tier.map(str::to_string),
                    source: export_source(m, c, &sizers[i], bundles, tier),
                }),
                depends_on: Vec::new(),
            });
        }
    }
    exports
}

fn export_source(
    m: &ResolvedManifest,
    c: &ResolvedComponent,
    sizer: &ComponentSizer,
    bundles: &[BundlePlan],
    tier: Option<&str>,
) -> ExportSource {
    match &c.source {
        ResolvedSource::Safetensors { shards, prefix, .. } => ExportSource::Safetensors {
            shards: sizer
                .resolved_shards()
                .map(<[String]>::to_vec)
                .unwrap_or_else(|| shards.clone()),
            prefix: prefix.clone(),
        },
        ResolvedSource::Command {
            run,
            inputs,
            outputs,
            timeout_secs,
            workdir,
        } => ExportSource::Command {
            argv: exporter_argv(m, c, run, bundles, tier),
            workdir: normalize_or_dot(workdir),
            timeout_secs: *timeout_secs,
            inputs: inputs.iter().map(|i| normalize_or_dot(i)).collect(),
            outputs: outputs.clone(),
        },
        ResolvedSource::Files { files } => ExportSource::Files {
            files: files.clone(),
        },
    }
}

/// The exporter's argv with `{tier} {format} {group_size} {max_seq_len} {component}` filled
/// (`{out}` is left for the build). `{max_seq_len}` is the context the tier allows the
/// component, empty when neither caps it.
fn exporter_argv(
    m: &ResolvedManifest,
    c: &ResolvedComponent,
    run: &[String],
    bundles: &[BundlePlan],
    tier: Option<&str>,
) -> Vec<String> {
    let b = bundles
        .iter()
        .find(|b| b.component == c.name && b.tier.as_deref() == tier);
    let tier_max = tier
        .and_then(|t| m.tiers.iter().find(|x| x.name == t))
        .and_then(|t| t.max_seq_len);
    let max_seq = memory::kv_tokens(c.max_seq_len, tier_max, None);
    let values: BTreeMap<&str, String> = BTreeMap::from([
        ("tier", tier.unwrap_or("").to_string()),
        ("component", c.name.clone()),
        (
            "format",
            b.map(|b| b.format)
                .unwrap_or(c.quantization.formats[0])
                .as_str()
                .to_string(),
        ),
        (
            "group_size",
            b.and_then(|b| b.group_size)
                .unwrap_or(c.quantization.group_size)
                .to_string(),
        ),
        (
            "max_seq_len",
            max_seq.map(|m| m.to_string()).unwrap_or_default(),
        ),
    ]);
    fill_placeholders(run, &values)
}

fn quantize_stage(
    m: &ResolvedManifest,
    c: &ResolvedComponent,
    b: &BundlePlan,
    export: String,
    source_quantization: Option<Value>,
) -> Stage {
    Stage {
        id: format!("quantize:{}", b.id),
        kind: StageKind::Quantize(QuantizeParams {
            component: c.name.clone(),
            bundle: b.id.clone(),
            format: b.format,
            group_size: b.group_size,
            keep: c.quantization.keep.clone(),
            keep_dtype: c.quantization.keep_dtype,
            requantize: c.quantization.requantize,
            source_quantization,
            method: c.quantization.method,
            quality_floors: quality_floors(m, c, b),
        }),
        depends_on: vec![export],
    }
}

/// The `min_sqnr_db` floors of the tiers that use bundle `b`, one per manifest key that sets
/// them (tiers in manifest order, floors in the order of their first tier).
pub(crate) fn quality_floors(
    m: &ResolvedManifest,
    c: &ResolvedComponent,
    b: &BundlePlan,
) -> Vec<QualityFloor> {
    let Some(index) = m.components.iter().position(|x| x.name == c.name) else {
        return Vec::new();
    };
    let mut floors: Vec<QualityFloor> = Vec::new();
    for tier in &b.used_by {
        let tq = c.quantization.for_tier(tier);
        let Some(db) = tq.min_sqnr_db else {
            continue;
        };
        let path = if tq.min_sqnr_db_overridden {
            format!("components[{index}].quantization.tiers.{tier}.min_sqnr_db")
        } else {
            format!("components[{index}].quantization.min_sqnr_db")
        };
        match floors.iter_mut().find(|f| f.manifest_path == path) {
            Some(f) => f.tiers.push(tier.clone()),
            None => floors.push(QualityFloor {
                min_sqnr_db: db,
                tiers: vec![tier.clone()],
                manifest_path: path,
                checked_at: "build".into(),
            }),
        }
    }
    floors
}

fn package_stage(
    m: &ResolvedManifest,
    c: &ResolvedComponent,
    b: &BundlePlan,
    dependency: String,
) -> Stage {
    let contents = if matches!(c.source, ResolvedSource::Safetensors { .. }) {
        BundleContents::QuantizedWeights {
            config_json: config_json(c, b.format, b.group_size),
        }
    } else {
        BundleContents::ExportedFiles
    };
    Stage {
        id: format!("package:{}", b.id),
        kind: StageKind::Package(Box::new(PackageParams {
            bundle: b.id.clone(),
            component: c.name.clone(),
            role: c.role,
            runtime: (c.role != Role::Data).then_some(c.runtime),
            quantization: b.quantization.clone(),
            contents,
            decode_step: decode_step_sidecars(c),
            asset_pack: AssetPackParams {
                id: asset_pack_id(m.package.asset_pack_prefix.as_deref(), &b.id),
                delivery: b.delivery,
            },
        })),
        depends_on: vec![dependency],
    }
}

/// `config.json` of a native variant: the architecture in the names mlx-lm reads, and for MLX
/// affine formats `"quantization": {"group_size", "bits", "mode": "affine"}`.
///
/// With the component's `source.config` as base, an affine `quantization` is also written as
/// `quantization_config` (as mlx-lm's own conversion does), and the base's quantization keys
/// (for example the checkpoint's own `quantization_config`) are dropped.
pub fn config_json(c: &ResolvedComponent, format: Format, group_size: Option<u32>) -> ConfigJson {
    let base = match &c.source {
        ResolvedSource::Safetensors { config, .. } => config.clone(),
        _ => None,
    };
    let mut m = Map::new();
    m.insert("omnipack_component".into(), json!(c.name));
    m.insert("omnipack_role".into(), json!(c.role.as_str()));
    if let Some(a) = c.architecture {
        m.insert("num_hidden_layers".into(), json!(a.layers));
        m.insert("num_key_value_heads".into(), json!(a.kv_heads));
        m.insert("head_dim".into(), json!(a.kv_head_dim));
        m.insert("hidden_size".into(), json!(a.hidden_size));
        m.insert("vocab_size".into(), json!(a.vocab_size));
    }
    if let Some(t) = c.max_seq_len {
        m.insert("max_position_embeddings".into(), json!(t));
    }
    if let (Some(bits), Some(g)) = (format.affine_bits(), group_size) {
        let q = json!({"group_size": g, "bits": bits, "mode": "affine"});
        if base.is_some() {
            m.insert("quantization_config".into(), q.clone());
        }
        m.insert("quantization".into(), q);
    }
    if format == Format::Nf4 {
        m.insert(
            "quantization_config".into(),
            json!({"quant_method": "bitsandbytes", "load_in_4bit": true, "bnb_4bit_quant_type": "nf4",
                   "bnb_4bit_blocksize": group_size}),
        );
    }
    if matches!(format, Format::F32 | Format::F16 | Format::Bf16) {
        m.insert(
            "torch_dtype".into(),
            json!(match format {
                Format::F32 => "float32",
                Format::Bf16 => "bfloat16",
                _ => "float16",
            }),
        );
    }
    let set = match canonical(Value::Object(m)) {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    ConfigJson {
        base,
        remove: CONFIG_KEYS_REPLACED.iter().map(|k| k.to_string()).collect(),
        set,
    }
}

/// The sidecars of a text decode step with an architecture (none otherwise).
pub fn decode_step_sidecars(c: &ResolvedComponent) -> Option<DecodeStepSidecars> {
    if c.role != Role::TextDecodeStep {
        return None;
    }
    Some(DecodeStepSidecars {
        artifact: c.artifact.clone(),
        architecture: c.architecture?,
        max_seq_len: c.max_seq_len,
        cache_tokens: memory::kv_tokens(c.max_seq_len, None, c.kv_cache.paging),
        io_dtype: c.kv_cache.io_dtype,
        kv_format: c.kv_cache.format,
        kv_group_size: c.kv_cache.group_size,
        paging: c.kv_cache.paging,
    })
}
