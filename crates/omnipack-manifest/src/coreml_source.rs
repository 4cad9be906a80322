//! A `source.mlpackage` model read for the manifest: its facts, the decode-step contract
//! checked against what the manifest says, and what `architecture` and `kv_cache.io_dtype`
//! are when the manifest leaves them to the model. Validation reports the mismatches;
//! loading fills the resolved component from the same reading.

use std::path::Path;

use omnipack_coreml::{ArrayDataType, CacheForm, DecodeStep, DecodeStepExpectation, ModelFacts};

use crate::check::files::{FileProblem, missing_help};
use crate::model::{Architecture, Component, IoDtype, Tier};
use crate::rel_path::shown;
use crate::resolved::{CoreMlSourceFacts, resolve_decode_step};

/// What omnipack read from a Core ML model.
pub(crate) struct Reading {
    pub facts: ModelFacts,
    /// The decode-step contract (only for a `text_decode_step`).
    pub decode_step: Option<DecodeStep>,
}

/// Where the longest context a tier uses comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ContextFrom {
    /// The component's `max_seq_len`.
    Component,
    /// `tiers[j].max_seq_len`.
    Tier(usize),
}

/// The longest context (tokens) a tier shipping `component` uses:
/// `min(component max_seq_len, tier max_seq_len)` over the tiers, and where it comes from.
/// `None` when a tier leaves it unbounded (nothing to check).
pub(crate) fn required_context(
    component: &Component,
    tiers: &[(usize, &Tier)],
) -> Option<(u64, ContextFrom)> {
    let mut best: Option<(u64, ContextFrom)> = None;
    let shipping = tiers.iter().filter(|(_, t)| {
        t.components
            .as_ref()
            .is_none_or(|list| list.contains(&component.name))
    });
    let mut any = false;
    for (j, t) in shipping {
        any = true;
        let ctx = match (component.max_seq_len, t.max_seq_len) {
            (Some(c), Some(t)) if t < c => (t, ContextFrom::Tier(*j)),
            (Some(c), _) => (c, ContextFrom::Component),
            (None, Some(t)) => (t, ContextFrom::Tier(*j)),
            (None, None) => return None,
        };
        if best.is_none_or(|(b, _)| ctx.0 > b) {
            best = Some(ctx);
        }
    }
    if !any {
        return component.max_seq_len.map(|c| (c, ContextFrom::Component));
    }
    best
}

/// The Core ML data type of a `kv_cache.io_dtype`.
pub(crate) fn array_dtype(io: IoDtype) -> ArrayDataType {
    match io {
        IoDtype::F32 => ArrayDataType::Float32,
        IoDtype::F16 => ArrayDataType::Float16,
    }
}

/// Reads the model `rel` (relative to `dir`) of `component` and checks its decode step
/// against what the manifest writes; `context` is the longest context a tier uses.
pub(crate) fn read(
    dir: &Path,
    rel: &str,
    component: &Component,
    context: Option<u64>,
) -> Result<Reading, FileProblem> {
    let shown_path = shown(dir, rel);
    let full = dir.join(rel);
    if std::fs::symlink_metadata(&full).is_err() {
        return Err(FileProblem::new(
            format!("Core ML model `{shown_path}` does not exist"),
            missing_help(dir, rel),
        ));
    }
    let help = "give an `.mlpackage` folder or an `.mlmodel` file as coremltools saves it (`omnipack inspect PATH` shows what omnipack reads)";
    let model = omnipack_coreml::open(&full).map_err(|e| {
        FileProblem::new(
            format!(
                "cannot read Core ML model `{shown_path}`: {}",
                error_text(&full, &shown_path, &e)
            ),
            help,
        )
    })?;
    let facts = model.facts().map_err(|e| {
        FileProblem::new(
            format!(
                "cannot read Core ML model `{shown_path}`: {}",
                error_text(&full, &shown_path, &e)
            ),
            help,
        )
    })?;
    let decode_step = (component.role == crate::model::Role::TextDecodeStep).then(|| {
        let arch = component.architecture;
        let expect = DecodeStepExpectation {
            names: resolve_decode_step(component.decode_step.as_ref()),
            layers: arch.map(|a| a.layers),
            kv_heads: arch.map(|a| a.kv_heads),
            kv_head_dim: arch.map(|a| a.kv_head_dim),
            vocab_size: arch.map(|a| a.vocab_size),
            io_dtype: component
                .kv_cache
                .as_ref()
                .and_then(|k| k.io_dtype)
                .map(array_dtype),
            context,
        };
        omnipack_coreml::check_decode_step(&facts, &expect)
    });
    Ok(Reading { facts, decode_step })
}

/// The library's error with the model's path shown as the manifest writes it.
fn error_text(full: &Path, shown_path: &str, e: &omnipack_coreml::Error) -> String {
    match e.path.strip_prefix(full) {
        Ok(inner) if inner.as_os_str().is_empty() => e.kind.to_string(),
        Ok(inner) => format!("`{shown_path}/{}`: {}", inner.to_string_lossy(), e.kind),
        Err(_) => e.to_string(),
    }
}

impl Reading {
    /// The hidden size: the other axis of the weight of shape `[vocab_size, H]` or
    /// `[H, vocab_size]` (the embedding or the output projection).
    pub(crate) fn hidden_size(&self, vocab_size: u64) -> Option<u64> {
        let weights = self.facts.weights.as_ref()?;
        weights
            .constants
            .iter()
            .find_map(|w| match w.shape.as_slice() {
                [v, h] if *v == vocab_size => Some(*h),
                [h, v] if *v == vocab_size => Some(*h),
                _ => None,
            })
    }

    /// `architecture` as the model has it, when the contract holds and every value is known.
    pub(crate) fn architecture(&self) -> Option<Architecture> {
        let d = self.decode_step.as_ref().filter(|d| d.is_ok())?;
        let vocab_size = d.vocab_size?;
        Some(Architecture {
            layers: d.layers?,
            kv_heads: d.kv_heads?,
            kv_head_dim: d.kv_head_dim?,
            hidden_size: self.hidden_size(vocab_size)?,
            vocab_size,
        })
    }

    /// The cache data type the model uses, as a `kv_cache.io_dtype`.
    pub(crate) fn io_dtype(&self) -> Option<IoDtype> {
        match self.decode_step.as_ref()?.io_dtype.as_deref()? {
            "fp16" => Some(IoDtype::F16),
            "fp32" => Some(IoDtype::F32),
            _ => None,
        }
    }

    /// The facts the planner reads from the resolved component.
    pub(crate) fn source_facts(&self) -> CoreMlSourceFacts {
        let target = self.facts.target();
        let state_bytes = self
            .decode_step
            .as_ref()
            .filter(|d| d.form == CacheForm::States)
            .map(|_| {
                self.facts.states.iter().fold(0u64, |sum, s| {
                    let bytes = s.kind.array().map_or(0, |a| {
                        a.shape
                            .iter()
                            .fold(a.data_type.bytes().unwrap_or(0), |p, d| {
                                p.saturating_mul((*d).max(0) as u64)
                            })
                    });
                    sum.saturating_add(bytes)
                })
            });
        CoreMlSourceFacts {
            specification_version: target.specification_version,
            deployment_target: target.ios().map(str::to_string),
            parameters: self.facts.weights.as_ref().map_or(0, |w| w.parameters),
            stored_bytes: self.facts.stored_bytes,
            state_bytes,
        }
    }
}
