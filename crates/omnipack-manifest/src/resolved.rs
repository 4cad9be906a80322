//! The manifest with every default applied, in this one place (docs/manifest.md lists them
//! in its table of keys).
//!
//! Planner and builder read only these types: no `Option` left that has a default.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{
    Architecture, ComputeUnits, Delivery, FloatDtype, Format, GroupSize, IoDtype, KvFormat,
    Manifest, Method, Package, Paging, Residency, Role, Runtime,
};
use crate::units::SizeUnits;

/// Default exporter timeout, in seconds.
pub const DEFAULT_EXPORTER_TIMEOUT_SECS: u64 = 3600;
/// Default KV-cache group size (capped by `kv_head_dim`).
pub const DEFAULT_KV_GROUP_SIZE: u64 = 32;
/// Default weight format when a component has no `quantization` block.
pub const DEFAULT_FORMAT: Format = Format::F16;

/// A manifest ready for planning: defaults applied, paths relative to the top manifest's folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResolvedManifest {
    /// Package identity.
    pub package: Package,
    /// App and runtime baseline counted in every tier, in bytes.
    pub runtime_overhead: u64,
    /// Tiers in manifest order.
    pub tiers: Vec<ResolvedTier>,
    /// Components in manifest order.
    pub components: Vec<ResolvedComponent>,
    /// The units the manifest's sizes are written in, for sizes omnipack suggests.
    #[serde(default)]
    pub size_units: SizeUnits,
}

/// A tier with defaults applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResolvedTier {
    pub name: String,
    pub device_memory: u64,
    pub memory_limit: u64,
    pub min_headroom: u64,
    pub max_seq_len: Option<u64>,
    /// Component names this tier ships, in manifest component order.
    pub components: Vec<String>,
}

/// A component with defaults applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResolvedComponent {
    pub name: String,
    pub role: Role,
    pub artifact: String,
    pub runtime: Runtime,
    pub compute_units: Option<ComputeUnits>,
    pub source: ResolvedSource,
    pub architecture: Option<Architecture>,
    pub max_seq_len: Option<u64>,
    pub delivery: Delivery,
    pub residency: Residency,
    pub activation_memory: Option<u64>,
    pub resident_memory: Option<u64>,
    pub size: Option<u64>,
    pub quantization: ResolvedQuantization,
    pub kv_cache: ResolvedKvCache,
    /// The feature names of a Core ML decode step (defaults applied).
    pub decode_step: ResolvedDecodeStepNames,
    /// What omnipack read from a `source.mlpackage` model when the manifest was loaded
    /// (`None` for other sources).
    pub coreml: Option<CoreMlSourceFacts>,
}

/// The feature names of a Core ML decode step (`{i}` stands for the layer index), with the
/// defaults the app's Swift loop binds.
pub use omnipack_coreml::DecodeStepNames as ResolvedDecodeStepNames;

/// Facts of a `source.mlpackage` model, read once when the manifest is loaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoreMlSourceFacts {
    /// `Model.specificationVersion`.
    pub specification_version: i32,
    /// The deployment target it implies, such as `iOS 16` (`None` when newer than omnipack knows).
    pub deployment_target: Option<String>,
    /// Elements of every weight constant.
    pub parameters: u64,
    /// Blob data plus inline constants.
    pub stored_bytes: u64,
    /// A decode step in the iOS 18 form: the bytes of its cache states at their full
    /// (declared) size, which Core ML allocates whatever the context used.
    pub state_bytes: Option<u64>,
}

/// Where a component comes from. Paths are relative to the top manifest's folder
/// (join them with [`crate::LoadedManifest::dir`] to open them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResolvedSource {
    Safetensors {
        shards: Vec<String>,
        prefix: String,
        /// `source.config`: a Hugging Face style `config.json` the bundle's config starts from.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        config: Option<String>,
    },
    Command {
        run: Vec<String>,
        inputs: Vec<String>,
        outputs: Vec<String>,
        timeout_secs: u64,
        /// Folder the exporter runs in, relative to the top manifest's folder: the folder of
        /// the manifest file that writes `run` (empty: the top manifest's own folder), so that
        /// relative paths in `run` mean what they meant where they were written.
        workdir: String,
    },
    Files {
        files: Vec<String>,
    },
    /// `source.mlpackage`: a Core ML `.mlpackage` folder or `.mlmodel` file.
    Mlpackage {
        path: String,
    },
}

impl ResolvedSource {
    /// True for an external exporter whose argv mentions `{tier}`: one bundle per tier.
    pub fn is_per_tier(&self) -> bool {
        match self {
            ResolvedSource::Command { run, .. } => run.iter().any(|a| a.contains("{tier}")),
            _ => false,
        }
    }
}

/// Weight quantization with defaults applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResolvedQuantization {
    /// Preference list, best quality first (one entry for a single format).
    pub formats: Vec<Format>,
    pub group_size: u32,
    pub keep: Vec<String>,
    /// `None`: each kept tensor stays in its source dtype.
    pub keep_dtype: Option<FloatDtype>,
    /// `requantize`: a quantized source may be quantized again to another format.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub requantize: bool,
    /// How the MLX affine variants are quantized (default `rtn`).
    #[serde(default)]
    pub method: Method,
    /// The component's quality floor in dB SQNR, checked at build time.
    #[serde(default)]
    pub min_sqnr_db: Option<f64>,
    /// Per-tier overrides (already merged with the component-level values).
    pub tiers: BTreeMap<String, TierQuantization>,
}

/// The formats, group size and quality floor a tier uses for one component.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TierQuantization {
    pub formats: Vec<Format>,
    pub group_size: u32,
    /// The quality floor in dB SQNR for this tier (the tier's own or the component's).
    #[serde(default)]
    pub min_sqnr_db: Option<f64>,
    /// True when the tier's override writes `min_sqnr_db` itself (so a failure is located at
    /// `quantization.tiers.<tier>.min_sqnr_db`, not at the component's key).
    #[serde(default)]
    pub min_sqnr_db_overridden: bool,
}

impl ResolvedQuantization {
    /// The preference list and group size that apply to `tier`.
    pub fn for_tier(&self, tier: &str) -> TierQuantization {
        self.tiers
            .get(tier)
            .cloned()
            .unwrap_or_else(|| TierQuantization {
                formats: self.formats.clone(),
                group_size: self.group_size,
                min_sqnr_db: self.min_sqnr_db,
                min_sqnr_db_overridden: false,
            })
    }
}

/// KV cache with defaults applied.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ResolvedKvCache {
    pub format: KvFormat,
    pub group_size: u64,
    pub io_dtype: IoDtype,
    pub paging: Option<Paging>,
}

/// Applies every default (see the module documentation). `package` must be present
/// (validation checks it before planning); a manifest without it gets an empty package.
pub fn resolve(m: &Manifest) -> ResolvedManifest {
    let components: Vec<ResolvedComponent> = m
        .components
        .iter()
        .flatten()
        .map(resolve_component)
        .collect();
    let all_names: Vec<String> = components.iter().map(|c| c.name.clone()).collect();
    let tiers = m
        .tiers
        .iter()
        .flatten()
        .map(|t| ResolvedTier {
            name: t.name.clone(),
            device_memory: t.device_memory.bytes(),
            memory_limit: t.memory_limit.bytes(),
            min_headroom: t.min_headroom.map(|b| b.bytes()).unwrap_or(0),
            max_seq_len: t.max_seq_len,
            components: match &t.components {
                // Keep manifest component order so load order is stable.
                Some(list) => all_names
                    .iter()
                    .filter(|n| list.contains(n))
                    .cloned()
                    .collect(),
                None => all_names.clone(),
            },
        })
        .collect();
    let written = m
        .runtime_overhead
        .into_iter()
        .chain(
            m.tiers
                .iter()
                .flatten()
                .flat_map(|t| [Some(t.device_memory), Some(t.memory_limit), t.min_headroom])
                .flatten(),
        )
        .chain(
            m.components
                .iter()
                .flatten()
                .flat_map(|c| [c.activation_memory, c.resident_memory, c.size])
                .flatten(),
        )
        .map(|b| b.bytes());
    let size_units = SizeUnits::of(written);
    ResolvedManifest {
        size_units,
        package: m.package.clone().unwrap_or(Package {
            name: String::new(),
            version: String::new(),
            bundle_id: String::new(),
            asset_pack_prefix: None,
        }),
        runtime_overhead: m.runtime_overhead.map(|b| b.bytes()).unwrap_or(0),
        tiers,
        components,
    }
}

fn resolve_component(c: &crate::model::Component) -> ResolvedComponent {
    let (delivery, residency) = match c.role {
        Role::TextDecodeStep | Role::Data => (Delivery::Essential, Residency::Always),
        Role::ImageDecoder | Role::VideoDecoder | Role::ImageEncoder | Role::AudioEncoder => {
            (Delivery::OnDemand, Residency::Lazy)
        }
    };
    let q = c.quantization.as_ref();
    let formats = q
        .map(|q| q.format.to_vec())
        .unwrap_or_else(|| vec![DEFAULT_FORMAT]);
    let group_size = q
        .and_then(|q| q.group_size)
        .unwrap_or(GroupSize::DEFAULT)
        .get();
    let min_sqnr_db = q.and_then(|q| q.min_sqnr_db);
    let tiers = q
        .and_then(|q| q.tiers.as_ref())
        .map(|ov| {
            ov.iter()
                .map(|(tier, o)| {
                    let tq = TierQuantization {
                        formats: o
                            .format
                            .as_ref()
                            .map(|f| f.to_vec())
                            .unwrap_or_else(|| formats.clone()),
                        group_size: o.group_size.map(|g| g.get()).unwrap_or(group_size),
                        min_sqnr_db: o.min_sqnr_db.or(min_sqnr_db),
                        min_sqnr_db_overridden: o.min_sqnr_db.is_some(),
                    };
                    (tier.clone(), tq)
                })
                .collect()
        })
        .unwrap_or_default();
    let kv = c.kv_cache.as_ref();
    let kv_group_default = c
        .architecture
        .map(|a| a.kv_head_dim.min(DEFAULT_KV_GROUP_SIZE))
        .unwrap_or(DEFAULT_KV_GROUP_SIZE);
    let source = if let Some(st) = &c.source.safetensors {
        ResolvedSource::Safetensors {
            shards: st.to_vec(),
            prefix: c.source.prefix.clone().unwrap_or_default(),
            config: c.source.config.clone(),
        }
    } else if let Some(cmd) = &c.source.command {
        ResolvedSource::Command {
            run: cmd.run.clone(),
            inputs: cmd.inputs.clone().unwrap_or_default(),
            outputs: cmd.outputs.clone(),
            timeout_secs: cmd
                .timeout
                .map(|d| d.seconds())
                .unwrap_or(DEFAULT_EXPORTER_TIMEOUT_SECS),
            workdir: String::new(),
        }
    } else if let Some(path) = &c.source.mlpackage {
        ResolvedSource::Mlpackage { path: path.clone() }
    } else {
        ResolvedSource::Files {
            files: c.source.files.clone().unwrap_or_default(),
        }
    };
    ResolvedComponent {
        name: c.name.clone(),
        role: c.role,
        artifact: c.artifact.clone().unwrap_or_else(|| c.name.clone()),
        runtime: c.runtime.unwrap_or(Runtime::Mlx),
        compute_units: c.compute_units,
        source,
        architecture: c.architecture,
        max_seq_len: c.max_seq_len,
        delivery: c.delivery.unwrap_or(delivery),
        residency: c.residency.unwrap_or(residency),
        activation_memory: c.activation_memory.map(|b| b.bytes()),
        resident_memory: c.resident_memory.map(|b| b.bytes()),
        size: c.size.map(|b| b.bytes()),
        quantization: ResolvedQuantization {
            formats,
            group_size,
            keep: q.and_then(|q| q.keep.clone()).unwrap_or_default(),
            keep_dtype: q.and_then(|q| q.keep_dtype),
            requantize: q.and_then(|q| q.requantize).unwrap_or(false),
            method: q.and_then(|q| q.method).unwrap_or_default(),
            min_sqnr_db,
            tiers,
        },
        kv_cache: ResolvedKvCache {
            format: kv.and_then(|k| k.format).unwrap_or(KvFormat::F16),
            group_size: kv.and_then(|k| k.group_size).unwrap_or(kv_group_default),
            io_dtype: kv.and_then(|k| k.io_dtype).unwrap_or(IoDtype::F32),
            paging: kv.and_then(|k| k.paging),
        },
        decode_step: resolve_decode_step(c.decode_step.as_ref()),
        coreml: None,
    }
}

/// The decode-step names with their defaults.
pub fn resolve_decode_step(
    names: Option<&crate::model::DecodeStepNames>,
) -> ResolvedDecodeStepNames {
    let mut out = ResolvedDecodeStepNames::default();
    let Some(n) = names else {
        return out;
    };
    if let Some(v) = &n.input_ids {
        out.input_ids = v.clone();
    }
    if let Some(v) = &n.logits {
        out.logits = v.clone();
    }
    if let Some([k, v]) = n.cache_inputs.as_deref() {
        out.cache_inputs = [k.0.clone(), v.0.clone()];
    }
    if let Some([k, v]) = n.cache_outputs.as_deref() {
        out.cache_outputs = [k.0.clone(), v.0.clone()];
    }
    out
}
