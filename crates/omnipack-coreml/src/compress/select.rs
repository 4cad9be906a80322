//! Which `const` weights are compressed, and along which axes: coremltools 9.0's rules for
//! `linear_quantize_weights` with an `OpLinearQuantizerConfig` as the global config (see the
//! crate README, "Which weights are compressed").

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::package::op_name;
use crate::spec;
use crate::types::MilDataType;

/// coremltools' default `weight_threshold`: a weight is compressed only when it has MORE
/// elements than this.
pub const WEIGHT_THRESHOLD: u64 = 2048;

/// Why a weight constant stays as it is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum KeepReason {
    /// The format keeps every weight (`f16`).
    Format,
    /// Its name matches one of the configuration's `keep` globs.
    KeepGlob { glob: String },
    /// Its element type is not fp16 or fp32.
    ElementType { data_type: String },
    /// It has at most 2048 elements (coremltools' `weight_threshold`).
    Small { elements: u64 },
    /// It has fewer than two dimensions (coremltools does not compress 1-D tensors).
    OneDimensional,
    /// Its value is stored in the program, not in a blob file.
    Inline,
    /// No operation uses it (it is only a block output, or unused).
    Unused,
    /// It feeds a `constexpr_*` operation (it is part of an already compressed weight).
    FeedsConstexpr,
    /// It is also a block output (a `constexpr_*` operation cannot feed one).
    BlockOutput,
    /// The operations using it disagree on its output or input channel axis.
    AxisConflict,
    /// Its input axis is not a multiple of the block size.
    NotDivisible {
        axis: usize,
        size: u64,
        block_size: u64,
    },
}

impl std::fmt::Display for KeepReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Format => f.write_str("the format keeps every weight"),
            Self::KeepGlob { glob } => write!(f, "its name matches keep glob `{glob}`"),
            Self::ElementType { data_type } => {
                write!(f, "its element type {data_type} is not fp16 or fp32")
            }
            Self::Small { elements } => write!(
                f,
                "it has {elements} elements, not more than {WEIGHT_THRESHOLD}"
            ),
            Self::OneDimensional => f.write_str("it has fewer than two dimensions"),
            Self::Inline => f.write_str("its value is stored in the program, not in weight.bin"),
            Self::Unused => f.write_str("no operation uses it"),
            Self::FeedsConstexpr => f.write_str("it feeds a constexpr_* operation"),
            Self::BlockOutput => f.write_str("it is also a block output"),
            Self::AxisConflict => {
                f.write_str("the operations using it disagree on its channel axes")
            }
            Self::NotDivisible {
                axis,
                size,
                block_size,
            } => write!(
                f,
                "its input axis {axis} has {size} elements, not a multiple of the block size {block_size}"
            ),
        }
    }
}

/// One operation of a function, with the block (scope) it is in.
pub(crate) struct OpAt<'a> {
    pub op: &'a spec::Operation,
    /// Index of the block the operation is in (unique across the program).
    pub scope: usize,
}

/// The operations of one function and how they are connected.
pub(crate) struct FunctionView<'a> {
    pub name: &'a str,
    /// Operations in program order (nested blocks right after the operation that holds them).
    pub ops: Vec<OpAt<'a>>,
    /// For every variable, the operations using it (indices into `ops`) and the input name.
    consumers: HashMap<&'a str, Vec<(usize, &'a str)>>,
    /// Names that are outputs of some block.
    block_outputs: HashSet<&'a str>,
    /// `const` operations by output name.
    consts: HashMap<&'a str, usize>,
    /// Every name the function defines (inputs, block inputs, operation outputs).
    defined: HashSet<&'a str>,
}

impl<'a> FunctionView<'a> {
    /// The view of a function's block for its opset; `scope` numbers blocks across functions.
    pub fn new(
        name: &'a str,
        function: &'a spec::Function,
        scope: &mut usize,
    ) -> Result<Self, String> {
        let block = function
            .block_specializations
            .get(&function.opset)
            .ok_or_else(|| {
                format!(
                    "function `{name}` has no block for its opset `{}`",
                    function.opset
                )
            })?;
        let mut view = Self {
            name,
            ops: Vec::new(),
            consumers: HashMap::new(),
            block_outputs: HashSet::new(),
            consts: HashMap::new(),
            defined: HashSet::new(),
        };
        let mut defined: HashSet<&'a str> =
            function.inputs.iter().map(|i| i.name.as_str()).collect();
        view.walk(block, scope, &mut defined)?;
        view.defined = defined;
        Ok(view)
    }

    fn walk(
        &mut self,
        block: &'a spec::Block,
        scope: &mut usize,
        defined: &mut HashSet<&'a str>,
    ) -> Result<(), String> {
        let here = *scope;
        *scope += 1;
        for input in &block.inputs {
            defined.insert(input.name.as_str());
        }
        for o in &block.outputs {
            self.block_outputs.insert(o.as_str());
        }
        for op in &block.operations {
            let index = self.ops.len();
            self.ops.push(OpAt { op, scope: here });
            for (key, arg) in &op.inputs {
                for b in &arg.arguments {
                    if let Some(spec::binding::Binding::Name(n)) = &b.binding {
                        self.consumers
                            .entry(n.as_str())
                            .or_default()
                            .push((index, key.as_str()));
                    }
                }
            }
            for o in &op.outputs {
                if !defined.insert(o.name.as_str()) {
                    return Err(format!(
                        "`{}` is defined twice in function `{}`",
                        o.name, self.name
                    ));
                }
            }
            if op.r#type == "const"
                && let Some(o) = op.outputs.first()
            {
                self.consts.insert(o.name.as_str(), index);
            }
            for b in &op.blocks {
                self.walk(b, scope, defined)?;
            }
        }
        Ok(())
    }

    /// The operations that use variable `name`, with the input they bind it to.
    pub fn users(&self, name: &str) -> &[(usize, &'a str)] {
        self.consumers.get(name).map_or(&[], Vec::as_slice)
    }

    /// Whether the function already defines `name`.
    pub fn defines(&self, name: &str) -> bool {
        self.defined.contains(name)
    }

    pub fn is_block_output(&self, name: &str) -> bool {
        self.block_outputs.contains(name)
    }

    /// The bool a `const` named `name` holds (`None` when there is no such bool constant).
    fn const_bool(&self, name: &str) -> Option<bool> {
        let op = self.ops[*self.consts.get(name)?].op;
        let v = op.attributes.get("val")?;
        immediate_bool(v)
    }

    /// The variable bound to input `key` of operation `op`, when bound by name.
    fn bound_name<'o>(op: &'o spec::Operation, key: &str) -> Option<&'o str> {
        op.inputs
            .get(key)?
            .arguments
            .iter()
            .find_map(|b| match &b.binding {
                Some(spec::binding::Binding::Name(n)) => Some(n.as_str()),
                _ => None,
            })
    }

    /// A bool input of `op` (`transpose_x`, ...): its constant value, false when absent or not
    /// a constant (as coremltools reads it).
    fn bool_input(&self, op: &spec::Operation, key: &str) -> bool {
        let Some(arg) = op.inputs.get(key) else {
            return false;
        };
        arg.arguments.iter().any(|b| match &b.binding {
            Some(spec::binding::Binding::Name(n)) => self.const_bool(n) == Some(true),
            Some(spec::binding::Binding::Value(v)) => immediate_bool(v) == Some(true),
            None => false,
        })
    }

    /// coremltools' `select_input_output_channel_axis`: the (input, output) channel axes of a
    /// weight of rank `rank` named `name` from the operations using it; `None` for an axis on
    /// which they disagree.
    pub fn channel_axes(&self, name: &str, rank: usize) -> (Option<usize>, Option<usize>) {
        let mut outs = BTreeSet::new();
        let mut ins = BTreeSet::new();
        let rank = rank as i64;
        for &(i, _) in self.users(name) {
            let user = self.ops[i].op;
            let (out, inp): (i64, i64) = match user.r#type.as_str() {
                "conv_transpose" => (1, 0),
                "matmul" => {
                    if Self::bound_name(user, "y") == Some(name) {
                        if self.bool_input(user, "transpose_y") {
                            (-2, -1)
                        } else {
                            (-1, -2)
                        }
                    } else if self.bool_input(user, "transpose_x") {
                        (-1, -2)
                    } else {
                        (-2, -1)
                    }
                }
                _ => (0, 1),
            };
            outs.insert(if out < 0 { out + rank } else { out });
            ins.insert(if inp < 0 { inp + rank } else { inp });
        }
        let one = |s: BTreeSet<i64>, default: usize| -> Option<usize> {
            match s.len() {
                0 => Some(default),
                1 => s.into_iter().next().and_then(|a| usize::try_from(a).ok()),
                _ => None,
            }
        };
        (one(ins, 1), one(outs, 0))
    }
}

fn immediate_bool(v: &spec::Value) -> Option<bool> {
    use spec::immediate_value::Value as I;
    use spec::tensor_value::Value as T;
    let Some(spec::value::Value::ImmediateValue(iv)) = &v.value else {
        return None;
    };
    match &iv.value {
        Some(I::Tensor(t)) => match &t.value {
            Some(T::Bools(b)) => b.values.first().copied(),
            _ => None,
        },
        _ => None,
    }
}

/// A candidate weight: a `const` with a floating-point tensor output of known shape.
pub(crate) struct Candidate<'a> {
    pub output: &'a str,
    pub data_type: MilDataType,
    pub shape: Vec<u64>,
    pub elements: u64,
    /// Its value, when stored in a blob file.
    pub blob: Option<&'a spec::BlobFileValue>,
}

/// The candidate weight of operation `i`, if it is one. Constants whose every user is a
/// `constexpr_*` operation are parts of a compressed weight, not weights, and are left out.
pub(crate) fn candidate<'a>(view: &FunctionView<'a>, i: usize) -> Option<Candidate<'a>> {
    let op = view.ops[i].op;
    if op.r#type != "const" {
        return None;
    }
    let out = op.outputs.first()?;
    let Some(spec::value_type::Type::TensorType(t)) = out.r#type.as_ref()?.r#type.as_ref() else {
        return None;
    };
    let data_type = MilDataType(t.data_type);
    if !data_type.is_float() {
        return None;
    }
    let shape = t
        .dimensions
        .iter()
        .map(|d| match &d.dimension {
            Some(spec::dimension::Dimension::Constant(c)) => Some(c.size),
            _ => None,
        })
        .collect::<Option<Vec<u64>>>()?;
    let elements = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d))?;
    let users = view.users(&out.name);
    if !users.is_empty()
        && users
            .iter()
            .all(|&(u, _)| view.ops[u].op.r#type.starts_with("constexpr_"))
    {
        return None;
    }
    let blob = match op.attributes.get("val").and_then(|v| v.value.as_ref()) {
        Some(spec::value::Value::BlobFileValue(b)) => Some(b),
        _ => None,
    };
    Some(Candidate {
        output: op_name(op),
        data_type,
        shape,
        elements,
        blob,
    })
}

/// How a selected weight is cut into blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Blocking {
    pub output_axis: usize,
    pub input_axis: usize,
    /// Block size per axis (0 = the whole axis).
    pub block_sizes: Vec<u64>,
}

/// coremltools' decision for one candidate: compress it with this blocking, or keep it.
/// `block_size` is `None` for per-channel, the block size for per-block.
pub(crate) fn decide(
    view: &FunctionView<'_>,
    c: &Candidate<'_>,
    keep: &[String],
    block_size: Option<u64>,
) -> Result<Blocking, KeepReason> {
    if let Some(glob) = keep
        .iter()
        .find(|g| omnipack_quant::glob_match(g, c.output))
    {
        return Err(KeepReason::KeepGlob { glob: glob.clone() });
    }
    if c.data_type != MilDataType::FLOAT16 && c.data_type != MilDataType::FLOAT32 {
        return Err(KeepReason::ElementType {
            data_type: c.data_type.name(),
        });
    }
    if c.elements <= WEIGHT_THRESHOLD {
        return Err(KeepReason::Small {
            elements: c.elements,
        });
    }
    if c.shape.len() <= 1 {
        return Err(KeepReason::OneDimensional);
    }
    if c.blob.is_none() {
        return Err(KeepReason::Inline);
    }
    let users = view.users(c.output);
    if users.is_empty() {
        return Err(KeepReason::Unused);
    }
    if users
        .iter()
        .any(|&(u, _)| view.ops[u].op.r#type.starts_with("constexpr_"))
    {
        return Err(KeepReason::FeedsConstexpr);
    }
    if view.is_block_output(c.output) {
        return Err(KeepReason::BlockOutput);
    }
    let rank = c.shape.len();
    let (Some(input_axis), Some(output_axis)) = view.channel_axes(c.output, rank) else {
        return Err(KeepReason::AxisConflict);
    };
    if input_axis >= rank || output_axis >= rank {
        return Err(KeepReason::AxisConflict);
    }
    let mut block_sizes = vec![0u64; rank];
    if let Some(b) = block_size {
        block_sizes[input_axis] = b;
    }
    block_sizes[output_axis] = 1;
    if let Some(b) = block_size
        && input_axis != output_axis
        && !c.shape[input_axis].is_multiple_of(b)
    {
        return Err(KeepReason::NotDivisible {
            axis: input_axis,
            size: c.shape[input_axis],
            block_size: b,
        });
    }
    Ok(Blocking {
        output_axis,
        input_axis,
        block_sizes,
    })
}
