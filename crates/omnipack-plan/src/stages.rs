//! The stage graph and each stage's parameters: export per component (per tier for `{tier}`
//! exporters), quantize per native variant, package per bundle, in a valid execution order.
//! Everything a build needs to run a stage is decided here.

use std::collections::{BTreeMap, BTreeSet};

use omnipack_manifest::canonical_json::canonical;
use omnipack_manifest::lexical_path::normalize_or_dot;
use omnipack_manifest::{
    Format, ResolvedComponent, ResolvedManifest, ResolvedSource, Role, Runtime,
};
use serde_json::{Map, Value, json};

use crate::memory;
use crate::model::BundlePlan;
use crate::sizing::ComponentSizer;
use crate::stage::{
    AssetPackParams, BundleContents, ConfigJson, CoreMlFeature, CoreMlIo, CoreMlVariant,
    DecodeStepContract, DecodeStepSidecars, ExportParams, ExportSource, FlexibleAxis,
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
        let Some(i) = m.components.iter().position(|c| c.name == b.component) else {
            continue;
        };
        let c = &m.components[i];
        let export = export_stage_id(&c.name, b.tier.as_deref());
        let package_dep = if matches!(
            c.source,
            ResolvedSource::Safetensors { .. } | ResolvedSource::Mlpackage { .. }
        ) {
            let config = sizers[i].config_quantization().cloned();
            let q = quantize_stage(m, c, b, export, config, &sizers[i]);
            let id = q.id.clone();
            quantizes.push(q);
            id
        } else {
            export
        };
        packages.push(package_stage(m, c, b, package_dep, &sizers[i]));
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
            coreml_contract: (c.runtime == Runtime::Coreml
                && outputs.iter().any(|o| is_coreml_path(o)))
            .then(|| decode_step_contract(m, c))
            .flatten(),
        },
        ResolvedSource::Files { files } => ExportSource::Files {
            files: files.clone(),
        },
        ResolvedSource::Mlpackage { path } => ExportSource::Mlpackage {
            path: normalize_or_dot(path),
            contract: decode_step_contract(m, c),
        },
    }
}

/// True for a path naming a Core ML model (`.mlpackage` or `.mlmodel`).
pub fn is_coreml_path(path: &str) -> bool {
    let p = path.trim_end_matches('/');
    p.ends_with(".mlpackage") || p.ends_with(".mlmodel")
}

/// The decode-step contract of a Core ML text decode step (none for other components): the
/// names, the architecture and cache type as resolved, and the longest context a tier uses.
pub fn decode_step_contract(
    m: &ResolvedManifest,
    c: &ResolvedComponent,
) -> Option<DecodeStepContract> {
    if c.role != Role::TextDecodeStep || c.runtime != Runtime::Coreml {
        return None;
    }
    let mut context = None;
    for t in m.tiers.iter().filter(|t| t.components.contains(&c.name)) {
        match memory::kv_tokens(c.max_seq_len, t.max_seq_len, None) {
            Some(n) => context = Some(context.map_or(n, |x: u64| x.max(n))),
            None => {
                context = None;
                break;
            }
        }
    }
    let a = c.architecture;
    let n = &c.decode_step;
    Some(DecodeStepContract {
        input_ids: n.input_ids.clone(),
        logits: n.logits.clone(),
        cache_inputs: n.cache_inputs.clone(),
        cache_outputs: n.cache_outputs.clone(),
        layers: a.map(|a| a.layers),
        kv_heads: a.map(|a| a.kv_heads),
        kv_head_dim: a.map(|a| a.kv_head_dim),
        vocab_size: a.map(|a| a.vocab_size),
        io_dtype: Some(c.kv_cache.io_dtype),
        context,
    })
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
    sizer: &ComponentSizer,
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
            coreml: coreml_variant(c, b, sizer),
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

/// The Core ML variant a quantize stage writes (none for other sources).
fn coreml_variant(
    c: &ResolvedComponent,
    b: &BundlePlan,
    sizer: &ComponentSizer,
) -> Option<CoreMlVariant> {
    let ResolvedSource::Mlpackage { .. } = &c.source else {
        return None;
    };
    let group = b.group_size.unwrap_or(c.quantization.group_size);
    let plan = match sizer.coreml_plan(b.format, group) {
        Some(Ok(plan)) => plan,
        // A single `.mlmodel` file: written as it is.
        _ => {
            return Some(CoreMlVariant {
                output: format!("{}.mlmodel", c.artifact),
                compression: b.format.as_str().to_string(),
                block_size: None,
                operation: None,
                deployment_target: c
                    .coreml
                    .as_ref()
                    .and_then(|f| f.deployment_target.clone())
                    .unwrap_or_default(),
                compressed_weights: 0,
                weights: 0,
                weights_bytes: b.weights_bytes,
                weight_bin_bytes: 0,
            });
        }
    };
    Some(CoreMlVariant {
        output: format!("{}.mlpackage", c.artifact),
        compression: plan.format.name().to_string(),
        block_size: plan.block_size,
        operation: plan.op.map(|o| o.name().to_string()),
        deployment_target: crate::bundles::deployment_target_text(plan.deployment_target),
        compressed_weights: plan.compressed_count() as u64,
        weights: plan.weights.len() as u64,
        weights_bytes: plan.weights_bytes,
        weight_bin_bytes: plan.weight_bin_bytes,
    })
}

fn package_stage(
    m: &ResolvedManifest,
    c: &ResolvedComponent,
    b: &BundlePlan,
    dependency: String,
    sizer: &ComponentSizer,
) -> Stage {
    let contents = if matches!(c.source, ResolvedSource::Mlpackage { .. }) {
        BundleContents::CoreMlModel
    } else if matches!(c.source, ResolvedSource::Safetensors { .. }) {
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
            decode_step: decode_step_sidecars(c).map(|mut s| {
                s.coreml_io = sizer.coreml_model().and_then(|m| coreml_io(m.as_ref()));
                s
            }),
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
        coreml_io: None,
    })
}

/// Every input, output and state of a Core ML model as it declares them.
pub fn coreml_io(model: &omnipack_coreml::CoreMlModel) -> Option<CoreMlIo> {
    let facts = model.facts().ok()?;
    let list =
        |features: &[omnipack_coreml::Feature]| features.iter().map(coreml_feature).collect();
    Some(CoreMlIo {
        inputs: list(&facts.inputs),
        outputs: list(&facts.outputs),
        states: list(&facts.states),
    })
}

/// One feature as the `.io.json` lists it.
pub fn coreml_feature(f: &omnipack_coreml::Feature) -> CoreMlFeature {
    use omnipack_coreml::{ArrayDataType, Axis, FeatureKind, ShapeFlexibility};
    let kind = match &f.kind {
        FeatureKind::MultiArray(_) => "multi_array",
        FeatureKind::State(_) => "state",
        FeatureKind::Int64 => "int64",
        FeatureKind::Double => "double",
        FeatureKind::String => "string",
        FeatureKind::Image { .. } => "image",
        FeatureKind::Dictionary => "dictionary",
        FeatureKind::Sequence => "sequence",
        FeatureKind::Unknown => "unknown",
    };
    let mut out = CoreMlFeature {
        name: f.name.clone(),
        kind: kind.to_string(),
        dtype: None,
        shape: Vec::new(),
        flexible_axes: Vec::new(),
        enumerated_shapes: Vec::new(),
        optional: f.optional,
    };
    let Some(a) = f.kind.array() else {
        return out;
    };
    out.dtype = Some(match a.data_type {
        ArrayDataType::Float16 => "float16".to_string(),
        ArrayDataType::Float32 => "float32".to_string(),
        ArrayDataType::Double => "float64".to_string(),
        ArrayDataType::Int32 => "int32".to_string(),
        ArrayDataType::Int8 => "int8".to_string(),
        ArrayDataType::Unknown(_) => a.data_type_text(),
    });
    for (i, axis) in a.axes().iter().enumerate() {
        match axis {
            Axis::Fixed(n) => out.shape.push(i64::try_from(*n).unwrap_or(i64::MAX)),
            Axis::Range(r) => {
                out.shape.push(-1);
                out.flexible_axes.push(FlexibleAxis {
                    axis: i as u32,
                    lower: r.lower,
                    upper: r.upper,
                });
            }
            Axis::Enumerated(_) | Axis::Unknown => out.shape.push(-1),
        }
    }
    if let Some(ShapeFlexibility::Enumerated(shapes)) = &a.flexibility {
        out.enumerated_shapes = shapes.clone();
    }
    out
}
