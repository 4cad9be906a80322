//! The decode-step contract: what an app's token loop binds, checked against a model.
//!
//! * `input_ids`: an int32 array of shape `[1, 1]` (Core ML has no int64 multi-arrays);
//! * for every layer `i` in `0..layers`: inputs `k_lat_{i}`, `v_lat_{i}` and outputs
//!   `nk_lat_{i}`, `nv_lat_{i}` of shape `[1, kv_heads, S, kv_head_dim]`, the sequence axis S
//!   flexible (a range or enumerated shapes; the inputs' upper bound at least the context
//!   the tiers use), all of the cache data type (`io_dtype`);
//! * `logits`: shape `[1, 1, vocab_size]` or `[1, vocab_size]`.
//!
//! The iOS 18 form keeps the caches as states named like the cache inputs (`k_lat_{i}`,
//! `v_lat_{i}`), of fixed shape `[1, kv_heads, T, kv_head_dim]` with T at least the context;
//! it has no cache outputs. Every expectation is optional: what is not given is read from the
//! model (and reported in [`DecodeStep`]), so `architecture` can come from the model itself.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::facts::{ArrayFeature, Axis, Feature, FeatureKind, ModelFacts};
use crate::types::ArrayDataType;

/// The names a decode step's features have; `{i}` stands for the layer index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecodeStepNames {
    pub input_ids: String,
    pub logits: String,
    /// Key and value cache inputs (and states, in the iOS 18 form).
    pub cache_inputs: [String; 2],
    /// Key and value cache outputs.
    pub cache_outputs: [String; 2],
}

impl Default for DecodeStepNames {
    fn default() -> Self {
        Self {
            input_ids: "input_ids".into(),
            logits: "logits".into(),
            cache_inputs: ["k_lat_{i}".into(), "v_lat_{i}".into()],
            cache_outputs: ["nk_lat_{i}".into(), "nv_lat_{i}".into()],
        }
    }
}

/// What the manifest expects; `None` = read it from the model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecodeStepExpectation {
    pub names: DecodeStepNames,
    pub layers: Option<u64>,
    pub kv_heads: Option<u64>,
    pub kv_head_dim: Option<u64>,
    pub vocab_size: Option<u64>,
    /// Data type of the cache inputs and outputs (`kv_cache.io_dtype`).
    pub io_dtype: Option<ArrayDataType>,
    /// The longest context a tier uses: the sequence axis must reach it.
    pub context: Option<u64>,
}

/// Which expectation a mismatch contradicts (the later wiring maps it to a manifest key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Subject {
    /// The `input_ids` input (name, type or shape).
    InputIds,
    /// The `logits` output (name or shape).
    Logits,
    /// The names of the cache inputs (or states).
    CacheInputs,
    /// The names of the cache outputs.
    CacheOutputs,
    /// A cache feature that is not an array of shape `[1, kv_heads, S, kv_head_dim]`.
    CacheShape,
    Layers,
    KvHeads,
    KvHeadDim,
    VocabSize,
    IoDtype,
    /// The sequence axis of the caches: not flexible, or its bound below the context.
    Context,
}

/// One way the model contradicts the contract or the expectation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mismatch {
    pub subject: Subject,
    /// What was expected, when the expectation was given (`4`, `fp16`, `int32 [1, 1]`).
    pub expected: Option<String>,
    /// What the model has, quoting it: "the model has cache inputs for 6 layers (`k_lat_0` …
    /// `k_lat_5`)".
    pub found: String,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.expected {
            Some(e) => write!(f, "expected {e}, but {}", self.found),
            None => f.write_str(&self.found),
        }
    }
}

/// How the caches travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheForm {
    /// Inputs `k_lat_i`/`v_lat_i`, outputs `nk_lat_i`/`nv_lat_i` (the app feeds them back).
    InputsOutputs,
    /// iOS 18 states updated in place.
    States,
}

/// The decode step as the model has it, and what contradicts the contract.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DecodeStep {
    pub form: CacheForm,
    /// Layers: the expectation, else the number of cache-input pairs the model has.
    pub layers: Option<u64>,
    pub kv_heads: Option<u64>,
    pub kv_head_dim: Option<u64>,
    pub vocab_size: Option<u64>,
    pub io_dtype: Option<String>,
    /// The smallest upper bound of the caches' sequence axes (`None`: unbounded or unknown).
    pub max_context: Option<u64>,
    pub mismatches: Vec<Mismatch>,
}

impl DecodeStep {
    pub fn is_ok(&self) -> bool {
        self.mismatches.is_empty()
    }
}

/// `template` with `{i}` replaced.
fn name_of(template: &str, i: u64) -> String {
    template.replace("{i}", &i.to_string())
}

/// The layer index a name has under a template (`k_lat_{i}` and `k_lat_3` → 3).
fn index_of(template: &str, name: &str) -> Option<u64> {
    let (pre, post) = template.split_once("{i}")?;
    let digits = name.strip_prefix(pre)?.strip_suffix(post)?;
    if digits.is_empty()
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || (digits.len() > 1 && digits.starts_with('0'))
    {
        return None;
    }
    digits.parse().ok()
}

/// "`k_lat_0` … `k_lat_5`" or "`k_lat_0`, `k_lat_2`".
fn quote_names(names: &[String]) -> String {
    match names.len() {
        0 => "none".into(),
        1 | 2 => names
            .iter()
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", "),
        _ => format!("`{}` … `{}`", names[0], names[names.len() - 1]),
    }
}

fn plural(n: u64, one: &str, many: &str) -> String {
    if n == 1 {
        format!("{n} {one}")
    } else {
        format!("{n} {many}")
    }
}

fn describe(f: &Feature) -> String {
    match f.kind.array() {
        Some(a) => format!("`{}` is {} {}", f.name, a.data_type_text(), a.shape_text()),
        None => format!("`{}` is not a multi-array", f.name),
    }
}

/// Checks the decode-step contract on a model's facts.
pub fn check_decode_step(facts: &ModelFacts, expect: &DecodeStepExpectation) -> DecodeStep {
    let names = &expect.names;
    let mut mismatches = Vec::new();
    let mut push = |subject, expected: Option<String>, found: String| {
        mismatches.push(Mismatch {
            subject,
            expected,
            found,
        })
    };

    // input_ids: int32 [1, 1].
    match facts.inputs.iter().find(|f| f.name == names.input_ids) {
        None => push(
            Subject::InputIds,
            Some(format!("an input `{}`", names.input_ids)),
            format!(
                "the model has no input `{}` (its inputs: {})",
                names.input_ids,
                quote_names(
                    &facts
                        .inputs
                        .iter()
                        .map(|f| f.name.clone())
                        .collect::<Vec<_>>()
                )
            ),
        ),
        Some(f) => {
            let ok = matches!(&f.kind, FeatureKind::MultiArray(a)
                if a.data_type == ArrayDataType::Int32 && a.axes() == [Axis::Fixed(1), Axis::Fixed(1)]);
            if !ok {
                push(
                    Subject::InputIds,
                    Some("int32 [1, 1] (Core ML has no int64 multi-arrays)".into()),
                    format!("the model's {}", describe(f)),
                );
            }
        }
    }

    // Cache features: states (iOS 18 form) or inputs + outputs.
    let k_template = &names.cache_inputs[0];
    let stateful = facts
        .states
        .iter()
        .any(|s| index_of(k_template, &s.name).is_some());
    let form = if stateful {
        CacheForm::States
    } else {
        CacheForm::InputsOutputs
    };
    let (in_list, in_word) = if stateful {
        (&facts.states, "states")
    } else {
        (&facts.inputs, "inputs")
    };
    let mut families: Vec<(&String, &Vec<Feature>, &str, Subject)> = names
        .cache_inputs
        .iter()
        .map(|t| (t, in_list, in_word, Subject::CacheInputs))
        .collect();
    if !stateful {
        families.extend(
            names
                .cache_outputs
                .iter()
                .map(|t| (t, &facts.outputs, "outputs", Subject::CacheOutputs)),
        );
    }
    // Indices present per family.
    let present: Vec<BTreeSet<u64>> = families
        .iter()
        .map(|(t, list, _, _)| list.iter().filter_map(|f| index_of(t, &f.name)).collect())
        .collect();
    let found_layers = present[0].iter().next_back().map(|m| m + 1);
    if present[0].is_empty() {
        push(
            Subject::CacheInputs,
            expect.layers.map(|l| {
                format!(
                    "cache {in_word} `{k_template}` for {}",
                    plural(l, "layer", "layers")
                )
            }),
            format!(
                "the model has no cache {in_word} named `{k_template}` (its {in_word}: {})",
                quote_names(&in_list.iter().map(|f| f.name.clone()).collect::<Vec<_>>())
            ),
        );
    }
    if let (Some(l), Some(f)) = (expect.layers, found_layers)
        && l != f
    {
        let listed: Vec<String> = present[0].iter().map(|&i| name_of(k_template, i)).collect();
        push(
            Subject::Layers,
            Some(l.to_string()),
            format!(
                "the model has cache {in_word} for {} ({})",
                plural(f, "layer", "layers"),
                quote_names(&listed)
            ),
        );
    }
    let layers = expect.layers.or(found_layers);
    // Names missing below the layer count both sides agree on.
    let agreed = match (expect.layers, found_layers) {
        (Some(l), Some(f)) => l.min(f),
        (_, f) => f.unwrap_or(0),
    };
    for ((template, list, word, subject), have) in families.iter().zip(&present) {
        let missing: Vec<String> = (0..agreed)
            .filter(|i| !have.contains(i))
            .map(|i| name_of(template, i))
            .collect();
        if missing.is_empty() {
            continue;
        }
        let singular = word.trim_end_matches('s');
        let has: Vec<String> = list
            .iter()
            .filter(|f| index_of(template, &f.name).is_some())
            .map(|f| format!("`{}`", f.name))
            .collect();
        push(
            *subject,
            Some(format!(
                "{word} `{template}` for every layer i in 0..{agreed}"
            )),
            format!(
                "the model has no {singular} {} (it has {})",
                missing
                    .iter()
                    .map(|n| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
                if has.is_empty() {
                    "none".to_string()
                } else {
                    has.join(", ")
                }
            ),
        );
    }

    // Shapes and data types of every cache feature present.
    let mut caches: Vec<(&Feature, bool)> = Vec::new(); // (feature, is an input or state)
    for ((template, list, _, subject), _) in families.iter().zip(&present) {
        for f in list.iter() {
            if let Some(i) = index_of(template, &f.name)
                && layers.is_none_or(|l| i < l)
            {
                caches.push((f, *subject == Subject::CacheInputs));
            }
        }
    }
    let mut heads = expect.kv_heads;
    let mut head_dim = expect.kv_head_dim;
    let mut io_dtype = expect.io_dtype;
    let mut max_context: Option<u64> = None;
    let mut reported = BTreeSet::new();
    for (f, is_input) in &caches {
        let Some(a) = f.kind.array() else {
            if reported.insert(Subject::CacheShape) {
                push(
                    Subject::CacheShape,
                    Some("caches of shape [1, kv_heads, S, kv_head_dim]".into()),
                    format!("the model's {}", describe(f)),
                );
            }
            continue;
        };
        let axes = a.axes();
        if axes.len() != 4 || axes[0] != Axis::Fixed(1) {
            if reported.insert(Subject::CacheShape) {
                push(
                    Subject::CacheShape,
                    Some("caches of shape [1, kv_heads, S, kv_head_dim]".into()),
                    format!("the model's {}", describe(f)),
                );
            }
            continue;
        }
        let mut check_dim = |axis: &Axis, want: &mut Option<u64>, subject: Subject, what: &str| {
            let got = match axis {
                Axis::Fixed(n) => Some(*n),
                _ => None,
            };
            match (*want, got) {
                (None, Some(n)) => *want = Some(n),
                (Some(w), g) if g != Some(w) && reported.insert(subject) => {
                    let expected = if expect_given(subject, expect) {
                        Some(w.to_string())
                    } else {
                        None
                    };
                    push(
                        subject,
                        expected,
                        format!(
                            "the model's caches have {what} {axis} (the model's {})",
                            describe(f)
                        ),
                    );
                }
                _ => {}
            }
        };
        check_dim(&axes[1], &mut heads, Subject::KvHeads, "kv_heads");
        check_dim(&axes[3], &mut head_dim, Subject::KvHeadDim, "kv_head_dim");
        // Data type.
        match io_dtype {
            None => io_dtype = Some(a.data_type),
            Some(t) if t != a.data_type && reported.insert(Subject::IoDtype) => {
                push(
                    Subject::IoDtype,
                    if expect.io_dtype.is_some() {
                        Some(t.to_string())
                    } else {
                        None
                    },
                    format!("the model's {}", describe(f)),
                );
            }
            _ => {}
        }
        // Sequence axis.
        let seq = &axes[2];
        if stateful {
            let len = seq.upper_bound();
            if let Some(n) = len {
                max_context = Some(max_context.map_or(n, |m| m.min(n)));
            }
            if let (Some(ctx), Some(n)) = (expect.context, len)
                && n < ctx
                && reported.insert(Subject::Context)
            {
                push(
                    Subject::Context,
                    Some(format!("a context of {ctx} tokens")),
                    format!(
                        "the model's cache states hold {n} tokens (the model's {})",
                        describe(f)
                    ),
                );
            }
            continue;
        }
        if !seq.is_flexible() {
            if reported.insert(Subject::Context) {
                push(
                    Subject::Context,
                    Some("a flexible sequence axis (a range or enumerated shapes)".into()),
                    format!(
                        "the model's sequence axis is fixed (the model's {})",
                        describe(f)
                    ),
                );
            }
            continue;
        }
        if *is_input && let Some(n) = seq.upper_bound() {
            {
                max_context = Some(max_context.map_or(n, |m| m.min(n)));
                if let Some(ctx) = expect.context
                    && n < ctx
                    && reported.insert(Subject::Context)
                {
                    push(
                        Subject::Context,
                        Some(format!("a context of {ctx} tokens")),
                        format!(
                            "the model's sequence axis reaches only {n} (the model's {})",
                            describe(f)
                        ),
                    );
                }
            }
        }
    }

    // logits: [1, 1, vocab] or [1, vocab].
    let mut vocab = expect.vocab_size;
    match facts.outputs.iter().find(|f| f.name == names.logits) {
        None => push(
            Subject::Logits,
            Some(format!("an output `{}`", names.logits)),
            format!(
                "the model has no output `{}` (its outputs: {})",
                names.logits,
                quote_names(
                    &facts
                        .outputs
                        .iter()
                        .map(|f| f.name.clone())
                        .collect::<Vec<_>>()
                )
            ),
        ),
        Some(f) => {
            let axes = f.kind.array().map(ArrayFeature::axes).unwrap_or_default();
            let last = match axes.as_slice() {
                [Axis::Fixed(1), Axis::Fixed(1), Axis::Fixed(v)]
                | [Axis::Fixed(1), Axis::Fixed(v)] => Some(*v),
                _ => None,
            };
            match (last, vocab) {
                (None, _) => push(
                    Subject::Logits,
                    Some("logits of shape [1, 1, vocab_size] or [1, vocab_size]".into()),
                    format!("the model's {}", describe(f)),
                ),
                (Some(v), None) => vocab = Some(v),
                (Some(v), Some(w)) if v != w => push(
                    Subject::VocabSize,
                    Some(w.to_string()),
                    format!(
                        "the model's logits have {v} entries (the model's {})",
                        describe(f)
                    ),
                ),
                _ => {}
            }
        }
    }

    DecodeStep {
        form,
        layers,
        kv_heads: heads,
        kv_head_dim: head_dim,
        vocab_size: vocab,
        io_dtype: io_dtype.map(|t| t.to_string()),
        max_context,
        mismatches,
    }
}

fn expect_given(subject: Subject, expect: &DecodeStepExpectation) -> bool {
    match subject {
        Subject::KvHeads => expect.kv_heads.is_some(),
        Subject::KvHeadDim => expect.kv_head_dim.is_some(),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::{AxisRange, ProgramTensor, ShapeFlexibility};
    use crate::types::MilDataType;

    fn array(
        name: &str,
        data_type: ArrayDataType,
        shape: &[i64],
        flex: Option<ShapeFlexibility>,
    ) -> Feature {
        Feature {
            name: name.into(),
            short_description: String::new(),
            optional: false,
            kind: FeatureKind::MultiArray(ArrayFeature {
                data_type,
                shape: shape.to_vec(),
                flexibility: flex,
                program: None,
            }),
        }
    }

    /// A decode step with `layers` layers whose cache inputs have enumerated sequence lengths.
    fn enumerated(layers: u64, lengths: &[i64]) -> ModelFacts {
        let shapes =
            ShapeFlexibility::Enumerated(lengths.iter().map(|&s| vec![1, 4, s, 32]).collect());
        let mut inputs = vec![array("input_ids", ArrayDataType::Int32, &[1, 1], None)];
        let mut outputs = vec![array("logits", ArrayDataType::Float16, &[1, 512], None)];
        for i in 0..layers {
            for p in ["k", "v"] {
                inputs.push(array(
                    &format!("{p}_lat_{i}"),
                    ArrayDataType::Float16,
                    &[1, 4, lengths[0], 32],
                    Some(shapes.clone()),
                ));
                let mut out = array(&format!("n{p}_lat_{i}"), ArrayDataType::Float16, &[], None);
                if let FeatureKind::MultiArray(a) = &mut out.kind {
                    a.program = Some(ProgramTensor {
                        data_type: MilDataType::FLOAT16,
                        dims: vec![Some(1), Some(4), None, Some(32)],
                    });
                }
                outputs.push(out);
            }
        }
        ModelFacts {
            format: "mlpackage",
            specification_version: 7,
            deployment_target: Some("iOS 16"),
            model_type: "mlProgram".into(),
            inputs,
            outputs,
            states: Vec::new(),
            metadata: Default::default(),
            operations: Default::default(),
            weights: None,
            stored_bytes: 0,
        }
    }

    #[test]
    fn enumerated_shapes_are_a_flexible_sequence_axis() {
        let facts = enumerated(2, &[512, 1024, 4096]);
        let k = facts.feature("k_lat_0").unwrap().kind.array().unwrap();
        assert_eq!(k.shape_text(), "[1, 4, {512, 1024, 4096}, 32]");
        let d = check_decode_step(
            &facts,
            &DecodeStepExpectation {
                context: Some(4096),
                ..Default::default()
            },
        );
        assert!(d.is_ok(), "{:?}", d.mismatches);
        assert_eq!(
            (
                d.layers,
                d.kv_heads,
                d.kv_head_dim,
                d.vocab_size,
                d.max_context
            ),
            (Some(2), Some(4), Some(32), Some(512), Some(4096))
        );
        let d = check_decode_step(
            &facts,
            &DecodeStepExpectation {
                context: Some(8192),
                ..Default::default()
            },
        );
        assert_eq!(d.mismatches.len(), 1);
        assert_eq!(d.mismatches[0].subject, Subject::Context);
        // One enumerated shape only: the axis is fixed.
        let d = check_decode_step(&enumerated(1, &[4096]), &DecodeStepExpectation::default());
        assert_eq!(
            d.mismatches[0].to_string(),
            "expected a flexible sequence axis (a range or enumerated shapes), but the model's sequence axis is fixed (the model's `k_lat_0` is fp16 [1, 4, 4096, 32])"
        );
    }

    #[test]
    fn caches_of_another_rank() {
        let mut facts = enumerated(1, &[1, 8]);
        facts.inputs[1] = array("k_lat_0", ArrayDataType::Float16, &[4, 8, 32], None);
        let d = check_decode_step(&facts, &DecodeStepExpectation::default());
        assert_eq!(d.mismatches.len(), 1, "{:?}", d.mismatches);
        assert_eq!(d.mismatches[0].subject, Subject::CacheShape);
        assert_eq!(
            d.mismatches[0].to_string(),
            "expected caches of shape [1, kv_heads, S, kv_head_dim], but the model's `k_lat_0` is fp16 [4, 8, 32]"
        );
    }

    #[test]
    fn unbounded_ranges_reach_any_context() {
        let mut facts = enumerated(1, &[1]);
        for f in &mut facts.inputs {
            if let FeatureKind::MultiArray(a) = &mut f.kind
                && f.name != "input_ids"
            {
                let r = |l: u64, u: Option<u64>| AxisRange { lower: l, upper: u };
                a.flexibility = Some(ShapeFlexibility::Ranges(vec![
                    r(1, Some(1)),
                    r(4, Some(4)),
                    r(1, None),
                    r(32, Some(32)),
                ]));
            }
        }
        let d = check_decode_step(
            &facts,
            &DecodeStepExpectation {
                context: Some(1 << 20),
                ..Default::default()
            },
        );
        assert!(d.is_ok(), "{:?}", d.mismatches);
        assert_eq!(d.max_context, None);
        assert_eq!(
            facts
                .feature("k_lat_0")
                .unwrap()
                .kind
                .array()
                .unwrap()
                .shape_text(),
            "[1, 4, 1.., 32]"
        );
    }

    #[test]
    fn templates() {
        assert_eq!(index_of("k_lat_{i}", "k_lat_12"), Some(12));
        assert_eq!(index_of("k_lat_{i}", "nk_lat_1"), None);
        assert_eq!(index_of("k_lat_{i}", "k_lat_01"), None);
        assert_eq!(index_of("k_lat_{i}", "k_lat_"), None);
        assert_eq!(index_of("cache.{i}.k", "cache.3.k"), Some(3));
        assert_eq!(name_of("v_lat_{i}", 2), "v_lat_2");
        assert_eq!(
            quote_names(&["k_lat_0".into(), "k_lat_1".into(), "k_lat_5".into()]),
            "`k_lat_0` … `k_lat_5`"
        );
    }
}
