//! What a model declares and weighs: deployment target, inputs, outputs and states, operation
//! counts, weight constants and blobs.
//!
//! Sizing rule: the **parameters** of an ML program are the elements of its weight constants,
//! taken from their output types. A weight constant is a `constexpr_*` operation (a compressed
//! weight, counted once at its decompressed shape) or a `const` operation, except a `const`
//! whose output only feeds `constexpr_*` operations (it is part of a compressed weight: its
//! quantized data, scales or zero points). Only outputs of a floating-point type count (integer,
//! bool and string constants are shapes, axes and names, not weights). The **stored bytes** are
//! the data of every blob the program refers to plus the bytes of the immediate values of its
//! weight constants (`const` and `constexpr_*` operations; the `name` attribute excluded). A
//! single `.mlmodel` file is sized by the file.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

use crate::error::{Error, ErrorKind};
use crate::package::{self, CoreMlModel, ModelFormat};
use crate::spec;
use crate::types::{ArrayDataType, DeploymentTarget, MilDataType};
use crate::wire;

/// Everything omnipack reads from a model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelFacts {
    /// `mlpackage` or `mlmodel`.
    pub format: &'static str,
    pub specification_version: i32,
    /// The iOS release the specification version needs (`iOS 16`), when omnipack knows it.
    pub deployment_target: Option<&'static str>,
    /// The model kind, as the specification names its field (`mlProgram`, `neuralNetwork`, ...).
    pub model_type: String,
    pub inputs: Vec<Feature>,
    pub outputs: Vec<Feature>,
    pub states: Vec<Feature>,
    /// Metadata the model carries: author, license, version, short description and the
    /// user-defined entries, by key.
    pub metadata: BTreeMap<String, String>,
    /// Operations of the ML program(s) by type (empty for other model kinds).
    pub operations: BTreeMap<String, u64>,
    /// Weights of the ML program(s); `None` for other model kinds.
    pub weights: Option<WeightFacts>,
    /// Blob data plus inline constants (ML program) or the file size (single `.mlmodel`).
    pub stored_bytes: u64,
}

/// One input, output or state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Feature {
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub short_description: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
    #[serde(flatten)]
    pub kind: FeatureKind,
}

/// The type of a feature.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FeatureKind {
    MultiArray(ArrayFeature),
    /// A state (iOS 18): an array the model updates in place.
    State(ArrayFeature),
    Int64,
    Double,
    String,
    Image {
        width: i64,
        height: i64,
        color_space: i32,
    },
    Dictionary,
    Sequence,
    /// No type the specification defines.
    Unknown,
}

impl FeatureKind {
    /// The array of a multi-array or state feature.
    pub fn array(&self) -> Option<&ArrayFeature> {
        match self {
            Self::MultiArray(a) | Self::State(a) => Some(a),
            _ => None,
        }
    }
}

/// A multi-array as the model declares it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ArrayFeature {
    #[serde(serialize_with = "display")]
    pub data_type: ArrayDataType,
    /// The declared (default) shape; empty when the description gives none (flexible outputs).
    pub shape: Vec<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flexibility: Option<ShapeFlexibility>,
    /// The tensor type the ML program gives the same name (its function inputs, states and
    /// block outputs), when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub program: Option<ProgramTensor>,
}

fn display<T: std::fmt::Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// Flexible shapes of a multi-array.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ShapeFlexibility {
    /// One size range per axis.
    Ranges(Vec<AxisRange>),
    /// A list of allowed shapes.
    Enumerated(Vec<Vec<i64>>),
}

/// The sizes an axis may take: `lower..=upper` (`upper: None` = unbounded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct AxisRange {
    pub lower: u64,
    pub upper: Option<u64>,
}

/// A tensor type of the ML program.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProgramTensor {
    #[serde(serialize_with = "display")]
    pub data_type: MilDataType,
    /// Sizes; `None` for an unknown (flexible) dimension.
    pub dims: Vec<Option<u64>>,
}

/// The sizes one axis of an array may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Axis {
    Fixed(u64),
    Range(AxisRange),
    /// The axis sizes of the enumerated shapes (sorted, deduplicated).
    Enumerated(Vec<u64>),
    /// Flexible with no declared bound (an unknown dimension of the program).
    Unknown,
}

impl Axis {
    pub fn is_flexible(&self) -> bool {
        match self {
            Axis::Fixed(_) => false,
            Axis::Range(r) => r.upper != Some(r.lower),
            Axis::Enumerated(v) => v.len() > 1,
            Axis::Unknown => true,
        }
    }

    /// The largest size the axis takes (`None`: unbounded or undeclared).
    pub fn upper_bound(&self) -> Option<u64> {
        match self {
            Axis::Fixed(n) => Some(*n),
            Axis::Range(r) => r.upper,
            Axis::Enumerated(v) => v.last().copied(),
            Axis::Unknown => None,
        }
    }
}

impl std::fmt::Display for Axis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Axis::Fixed(n) => write!(f, "{n}"),
            Axis::Range(AxisRange {
                lower,
                upper: Some(u),
            }) => write!(f, "{lower}..{u}"),
            Axis::Range(AxisRange { lower, upper: None }) => write!(f, "{lower}.."),
            Axis::Enumerated(v) => {
                let s: Vec<String> = v.iter().map(u64::to_string).collect();
                write!(f, "{{{}}}", s.join(", "))
            }
            Axis::Unknown => f.write_str("?"),
        }
    }
}

impl ArrayFeature {
    /// Number of axes (from the description, else from the program).
    pub fn rank(&self) -> usize {
        if !self.shape.is_empty() {
            return self.shape.len();
        }
        match &self.flexibility {
            Some(ShapeFlexibility::Ranges(r)) if !r.is_empty() => r.len(),
            Some(ShapeFlexibility::Enumerated(s)) if !s.is_empty() => s[0].len(),
            _ => self.program.as_ref().map_or(0, |p| p.dims.len()),
        }
    }

    /// The sizes axis `i` may take: the description's flexibility first, then its shape, then
    /// the program's type.
    pub fn axis(&self, i: usize) -> Axis {
        match &self.flexibility {
            Some(ShapeFlexibility::Ranges(r)) if i < r.len() => {
                let r = r[i];
                if r.upper == Some(r.lower) {
                    return Axis::Fixed(r.lower);
                }
                return Axis::Range(r);
            }
            Some(ShapeFlexibility::Enumerated(shapes)) if !shapes.is_empty() => {
                let sizes: BTreeSet<u64> = shapes
                    .iter()
                    .filter_map(|s| s.get(i))
                    .map(|&d| d.max(0) as u64)
                    .collect();
                if sizes.len() == 1 {
                    return Axis::Fixed(*sizes.first().expect("one"));
                }
                return Axis::Enumerated(sizes.into_iter().collect());
            }
            _ => {}
        }
        if let Some(&d) = self.shape.get(i) {
            return Axis::Fixed(d.max(0) as u64);
        }
        match self.program.as_ref().and_then(|p| p.dims.get(i)) {
            Some(Some(n)) => Axis::Fixed(*n),
            _ => Axis::Unknown,
        }
    }

    /// All axes.
    pub fn axes(&self) -> Vec<Axis> {
        (0..self.rank()).map(|i| self.axis(i)).collect()
    }

    /// The shape as omnipack shows it: `[1, 4, 1..4096, 32]`.
    pub fn shape_text(&self) -> String {
        let axes: Vec<String> = self.axes().iter().map(Axis::to_string).collect();
        format!("[{}]", axes.join(", "))
    }

    /// The data type as the model declares it, with the program's type for codes Core ML does
    /// not define (`int64` for a program input of that type).
    pub fn data_type_text(&self) -> String {
        match (self.data_type, &self.program) {
            (ArrayDataType::Unknown(c), Some(p)) => {
                format!("{} (array data type code {c})", p.data_type)
            }
            (t, _) => t.to_string(),
        }
    }
}

/// Weights of the ML program(s).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WeightFacts {
    /// Elements of every weight constant (see the module documentation).
    pub parameters: u64,
    /// Bytes of blob data the programs refer to.
    pub blob_bytes: u64,
    /// Bytes of the immediate values of weight constants.
    pub inline_bytes: u64,
    /// Referenced blobs by their stored data type (`fp16`, `int8`, `int4`, ...).
    pub blobs: BTreeMap<String, BlobTypeFacts>,
    /// Every weight constant, in program order.
    pub constants: Vec<WeightConstant>,
}

/// Blobs of one data type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct BlobTypeFacts {
    pub blobs: u64,
    pub bytes: u64,
    /// Elements stored (sub-byte padding excluded).
    pub elements: u64,
}

/// A weight constant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WeightConstant {
    /// Its output's name.
    pub name: String,
    /// `const` or the `constexpr_*` operation.
    pub operation: String,
    /// Its output's element type.
    pub data_type: String,
    pub shape: Vec<u64>,
    pub parameters: u64,
}

/// Name of a `Model` field number in the specification (`mlProgram` for 502).
pub fn model_type_name(field: u32) -> String {
    let s = match field {
        200 => "pipelineClassifier",
        201 => "pipelineRegressor",
        202 => "pipeline",
        300 => "glmRegressor",
        301 => "supportVectorRegressor",
        302 => "treeEnsembleRegressor",
        303 => "neuralNetworkRegressor",
        304 => "bayesianProbitRegressor",
        400 => "glmClassifier",
        401 => "supportVectorClassifier",
        402 => "treeEnsembleClassifier",
        403 => "neuralNetworkClassifier",
        404 => "kNearestNeighborsClassifier",
        500 => "neuralNetwork",
        501 => "itemSimilarityRecommender",
        502 => "mlProgram",
        555 => "customModel",
        556 => "linkedModel",
        560 => "classConfidenceThresholding",
        600 => "oneHotEncoder",
        601 => "imputer",
        602 => "featureVectorizer",
        603 => "dictVectorizer",
        604 => "scaler",
        606 => "categoricalMapping",
        607 => "normalizer",
        609 => "arrayFeatureExtractor",
        610 => "nonMaximumSuppression",
        900 => "identity",
        2000 => "textClassifier",
        2001 => "wordTagger",
        2002 => "visionFeaturePrint",
        2003 => "soundAnalysisPreprocessing",
        2004 => "gazetteer",
        2005 => "wordEmbedding",
        2006 => "audioFeaturePrint",
        3000 => "serializedModel",
        n => return format!("model type field {n}"),
    };
    s.to_string()
}

/// The model kind of encoded model bytes: the last `Model` field numbered 200 or above.
fn model_type(bytes: &[u8]) -> String {
    let field = wire::parse(bytes).ok().and_then(|fields| {
        fields
            .iter()
            .rev()
            .find(|f| f.number >= 200)
            .map(|f| f.number)
    });
    field.map_or_else(|| "none".to_string(), model_type_name)
}

fn array_feature(a: &spec::ArrayFeatureType) -> ArrayFeature {
    use spec::array_feature_type::ShapeFlexibility as F;
    ArrayFeature {
        data_type: ArrayDataType::from_code(a.data_type),
        shape: a.shape.clone(),
        flexibility: a.shape_flexibility.as_ref().map(|f| match f {
            F::ShapeRange(r) => ShapeFlexibility::Ranges(
                r.size_ranges
                    .iter()
                    .map(|s| AxisRange {
                        lower: s.lower_bound,
                        upper: u64::try_from(s.upper_bound).ok(),
                    })
                    .collect(),
            ),
            F::EnumeratedShapes(e) => {
                ShapeFlexibility::Enumerated(e.shapes.iter().map(|s| s.shape.clone()).collect())
            }
        }),
        program: None,
    }
}

fn feature(f: &spec::FeatureDescription) -> Feature {
    use spec::feature_type::Type as T;
    let kind = match f.r#type.as_ref().and_then(|t| t.r#type.as_ref()) {
        Some(T::MultiArrayType(a)) => FeatureKind::MultiArray(array_feature(a)),
        Some(T::StateType(s)) => match &s.array_type {
            Some(a) => FeatureKind::State(array_feature(a)),
            None => FeatureKind::Unknown,
        },
        Some(T::Int64Type(_)) => FeatureKind::Int64,
        Some(T::DoubleType(_)) => FeatureKind::Double,
        Some(T::StringType(_)) => FeatureKind::String,
        Some(T::ImageType(i)) => FeatureKind::Image {
            width: i.width,
            height: i.height,
            color_space: i.color_space,
        },
        Some(T::DictionaryType(_)) => FeatureKind::Dictionary,
        Some(T::SequenceType(_)) => FeatureKind::Sequence,
        None => FeatureKind::Unknown,
    };
    Feature {
        name: f.name.clone(),
        short_description: f.short_description.clone(),
        optional: f.r#type.as_ref().is_some_and(|t| t.is_optional),
        kind,
    }
}

/// The tensor type a value type names (unwrapping a state).
fn tensor_of(t: Option<&spec::ValueType>) -> Option<ProgramTensor> {
    use spec::value_type::Type as V;
    match t?.r#type.as_ref()? {
        V::TensorType(t) => Some(ProgramTensor {
            data_type: MilDataType(t.data_type),
            dims: t
                .dimensions
                .iter()
                .map(|d| match &d.dimension {
                    Some(spec::dimension::Dimension::Constant(c)) => Some(c.size),
                    _ => None,
                })
                .collect(),
        }),
        V::StateType(s) => tensor_of(s.wrapped_type.as_deref()),
        _ => None,
    }
}

/// The program's types of the main function's inputs and block outputs, by name.
fn program_types(model: &spec::Model) -> HashMap<String, ProgramTensor> {
    let mut out = HashMap::new();
    let Some(spec::model::Type::MlProgram(program)) = &model.r#type else {
        return out;
    };
    let function = program
        .functions
        .get("main")
        .or_else(|| program.functions.values().next());
    let Some(function) = function else { return out };
    for input in &function.inputs {
        if let Some(t) = tensor_of(input.r#type.as_ref()) {
            out.insert(input.name.clone(), t);
        }
    }
    if let Some(block) = function.block_specializations.get(&function.opset) {
        let wanted: BTreeSet<&str> = block.outputs.iter().map(String::as_str).collect();
        for op in &block.operations {
            for o in &op.outputs {
                if wanted.contains(o.name.as_str())
                    && let Some(t) = tensor_of(o.r#type.as_ref())
                {
                    out.insert(o.name.clone(), t);
                }
            }
        }
    }
    out
}

/// Bytes of an immediate value as stored.
fn immediate_bytes(v: &spec::Value) -> u64 {
    use spec::immediate_value::Value as I;
    use spec::tensor_value::Value as T;
    let Some(spec::value::Value::ImmediateValue(i)) = &v.value else {
        return 0;
    };
    match &i.value {
        Some(I::Tensor(t)) => match &t.value {
            Some(T::Floats(x)) => 4 * x.values.len() as u64,
            Some(T::Ints(x)) => 4 * x.values.len() as u64,
            Some(T::Bools(x)) => x.values.len() as u64,
            Some(T::Strings(x)) => x.values.iter().map(|s| s.len() as u64).sum(),
            Some(T::LongInts(x)) => 8 * x.values.len() as u64,
            Some(T::Doubles(x)) => 8 * x.values.len() as u64,
            Some(T::Bytes(x)) => x.values.len() as u64,
            None => 0,
        },
        Some(I::Tuple(l) | I::List(l)) => l.values.iter().map(immediate_bytes).sum(),
        Some(I::Dictionary(d)) => d
            .values
            .iter()
            .map(|kv| {
                kv.key.as_ref().map_or(0, immediate_bytes)
                    + kv.value.as_ref().map_or(0, immediate_bytes)
            })
            .sum(),
        None => 0,
    }
}

fn is_weight_op(op_type: &str) -> bool {
    op_type == "const" || op_type.starts_with("constexpr_")
}

/// Weights of the programs of a model whose blob files are indexed.
fn weight_facts(model: &CoreMlModel) -> Result<WeightFacts, Error> {
    let bad = |m: String| Error::new(&model.model_path, ErrorKind::Program(m));
    let mut facts = WeightFacts {
        parameters: 0,
        blob_bytes: 0,
        inline_bytes: 0,
        blobs: BTreeMap::new(),
        constants: Vec::new(),
    };
    let mut seen_blobs = BTreeSet::new();
    for program in package::programs(&model.model) {
        let ops = package::operations(program).map_err(bad)?;
        // Consumers of every variable: are they all constexpr ops?
        let mut feeds_only_constexpr: HashMap<&str, bool> = HashMap::new();
        for op in &ops {
            let constexpr = op.r#type.starts_with("constexpr_");
            for arg in op.inputs.values() {
                for b in &arg.arguments {
                    if let Some(spec::binding::Binding::Name(n)) = &b.binding {
                        let e = feeds_only_constexpr.entry(n.as_str()).or_insert(true);
                        *e &= constexpr;
                    }
                }
            }
        }
        for op in &ops {
            if !is_weight_op(&op.r#type) {
                continue;
            }
            for (key, v) in package::op_values(op) {
                if key == "name" {
                    continue;
                }
                match &v.value {
                    Some(spec::value::Value::BlobFileValue(b))
                        if seen_blobs.insert((b.file_name.clone(), b.offset)) =>
                    {
                        let record = model
                                .blob_file(&b.file_name)
                                .and_then(|f| f.index.record_at(b.offset))
                                .ok_or_else(|| {
                                    bad(format!(
                                        "operation `{}` refers to a blob at offset {} of `{}` that was not indexed",
                                        package::op_name(op),
                                        b.offset,
                                        b.file_name
                                    ))
                                })?;
                        let e = facts.blobs.entry(record.data_type.name()).or_default();
                        e.blobs += 1;
                        e.bytes += record.size;
                        e.elements += record.elements().unwrap_or(0);
                        facts.blob_bytes += record.size;
                    }
                    Some(spec::value::Value::ImmediateValue(_)) => {
                        facts.inline_bytes += immediate_bytes(v)
                    }
                    _ => {}
                }
            }
            let Some(out) = op.outputs.first() else {
                continue;
            };
            if op.r#type == "const" && feeds_only_constexpr.get(out.name.as_str()) == Some(&true) {
                continue;
            }
            let Some(t) = tensor_of(out.r#type.as_ref()) else {
                continue;
            };
            if !t.data_type.is_float() {
                continue;
            }
            let Some(shape) = t.dims.iter().copied().collect::<Option<Vec<u64>>>() else {
                continue;
            };
            let parameters = shape
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d))
                .ok_or_else(|| {
                    bad(format!(
                        "weight `{}` has shape {shape:?}, more elements than fit in 64 bits",
                        out.name
                    ))
                })?;
            facts.parameters = facts.parameters.saturating_add(parameters);
            facts.constants.push(WeightConstant {
                name: out.name.clone(),
                operation: op.r#type.clone(),
                data_type: t.data_type.name(),
                shape,
                parameters,
            });
        }
    }
    Ok(facts)
}

impl CoreMlModel {
    /// Reads the model's facts.
    pub fn facts(&self) -> Result<ModelFacts, Error> {
        let description = self.model.description.clone().unwrap_or_default();
        let (inputs, outputs, states) = if description.input.is_empty()
            && description.output.is_empty()
            && !description.functions.is_empty()
        {
            // A multi-function model: the default function's features.
            let f = description
                .functions
                .iter()
                .find(|f| f.name == description.default_function_name)
                .unwrap_or(&description.functions[0]);
            (f.input.clone(), f.output.clone(), f.state.clone())
        } else {
            (description.input, description.output, description.state)
        };
        let types = program_types(&self.model);
        let convert = |list: &[spec::FeatureDescription]| -> Vec<Feature> {
            list.iter()
                .map(|f| {
                    let mut feat = feature(f);
                    if let FeatureKind::MultiArray(a) | FeatureKind::State(a) = &mut feat.kind {
                        a.program = types.get(&f.name).cloned();
                    }
                    feat
                })
                .collect()
        };
        let mut metadata = BTreeMap::new();
        if let Some(m) = &description.metadata {
            for (k, v) in [
                ("author", &m.author),
                ("license", &m.license),
                ("short_description", &m.short_description),
                ("version", &m.version_string),
            ] {
                if !v.is_empty() {
                    metadata.insert(k.to_string(), v.clone());
                }
            }
            for (k, v) in &m.user_defined {
                metadata.insert(k.clone(), v.clone());
            }
        }
        let programs = package::programs(&self.model);
        let mut operations = BTreeMap::new();
        for p in &programs {
            for op in package::operations(p)
                .map_err(|m| Error::new(&self.model_path, ErrorKind::Program(m)))?
            {
                *operations.entry(op.r#type.clone()).or_insert(0) += 1;
            }
        }
        let (weights, stored_bytes) = match (&self.format, programs.is_empty()) {
            (ModelFormat::Package(_), false) => {
                let w = weight_facts(self)?;
                let stored = w.blob_bytes + w.inline_bytes;
                (Some(w), stored)
            }
            _ => (None, self.model_bytes.len() as u64),
        };
        let target = DeploymentTarget {
            specification_version: self.model.specification_version,
        };
        Ok(ModelFacts {
            format: match self.format {
                ModelFormat::Package(_) => "mlpackage",
                ModelFormat::SingleFile => "mlmodel",
            },
            specification_version: self.model.specification_version,
            deployment_target: target.ios(),
            model_type: model_type(&self.model_bytes),
            inputs: convert(&inputs),
            outputs: convert(&outputs),
            states: convert(&states),
            metadata,
            operations,
            weights,
            stored_bytes,
        })
    }
}

impl ModelFacts {
    /// The input, output or state of that name.
    pub fn feature(&self, name: &str) -> Option<&Feature> {
        self.inputs
            .iter()
            .chain(&self.outputs)
            .chain(&self.states)
            .find(|f| f.name == name)
    }

    /// The deployment target.
    pub fn target(&self) -> DeploymentTarget {
        DeploymentTarget {
            specification_version: self.specification_version,
        }
    }
}
