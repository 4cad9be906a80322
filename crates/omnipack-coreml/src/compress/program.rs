//! The compressed program: new `constexpr_*` operations, and the edit of the model's protobuf
//! bytes that puts them in place of the `const` weights and points every blob reference at its
//! new offset. Everything else keeps its bytes (the wire layer copies fields it does not edit).

use std::collections::HashMap;

use prost::Message;

use crate::spec;
use crate::types::MilDataType;
use crate::wire::{self, Value as W, WireError};

fn tensor_type(data_type: MilDataType, dims: &[u64]) -> spec::ValueType {
    spec::ValueType {
        r#type: Some(spec::value_type::Type::TensorType(spec::TensorType {
            data_type: data_type.0,
            rank: dims.len() as i64,
            dimensions: dims
                .iter()
                .map(|&size| spec::Dimension {
                    dimension: Some(spec::dimension::Dimension::Constant(
                        spec::ConstantDimension { size },
                    )),
                })
                .collect(),
            attributes: Default::default(),
        })),
    }
}

/// A value stored in a blob file.
pub(crate) fn blob_value(
    data_type: MilDataType,
    dims: &[u64],
    file_name: &str,
    offset: u64,
) -> spec::Value {
    spec::Value {
        doc_string: String::new(),
        r#type: Some(tensor_type(data_type, dims)),
        value: Some(spec::value::Value::BlobFileValue(spec::BlobFileValue {
            file_name: file_name.to_string(),
            offset,
        })),
    }
}

fn immediate(data_type: MilDataType, dims: &[u64], v: spec::tensor_value::Value) -> spec::Value {
    spec::Value {
        doc_string: String::new(),
        r#type: Some(tensor_type(data_type, dims)),
        value: Some(spec::value::Value::ImmediateValue(spec::ImmediateValue {
            value: Some(spec::immediate_value::Value::Tensor(spec::TensorValue {
                value: Some(v),
            })),
        })),
    }
}

/// An immediate value as coremltools writes one: fp16, int8 and int4 as raw bytes, fp32 as
/// floats, int32 as ints. `le_bytes` holds the values little-endian.
pub(crate) fn immediate_value(
    data_type: MilDataType,
    dims: &[u64],
    le_bytes: &[u8],
) -> spec::Value {
    use spec::tensor_value::Value as T;
    let v = if data_type == MilDataType::FLOAT32 {
        T::Floats(spec::RepeatedFloats {
            values: le_bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect(),
        })
    } else if data_type == MilDataType::INT32 {
        T::Ints(spec::RepeatedInts {
            values: le_bytes
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect(),
        })
    } else {
        T::Bytes(spec::RepeatedBytes {
            values: le_bytes.to_vec(),
        })
    };
    immediate(data_type, dims, v)
}

fn string_value(s: &str) -> spec::Value {
    immediate(
        MilDataType::STRING,
        &[],
        spec::tensor_value::Value::Strings(spec::RepeatedStrings {
            values: vec![s.to_string()],
        }),
    )
}

/// The encoded `constexpr_*` operation named `name` with output type `output` (the weight's
/// float type and shape), taking `values` either as attributes (iOS 16/17 ops) or as inputs
/// (iOS 18 ops).
pub(crate) fn constexpr_op(
    op_type: &str,
    name: &str,
    output: (MilDataType, &[u64]),
    values: Vec<(&str, spec::Value)>,
    as_inputs: bool,
) -> Vec<u8> {
    let mut op = spec::Operation {
        r#type: op_type.to_string(),
        inputs: Default::default(),
        outputs: vec![spec::NamedValueType {
            name: name.to_string(),
            r#type: Some(tensor_type(output.0, output.1)),
        }],
        blocks: Vec::new(),
        attributes: Default::default(),
    };
    op.attributes.insert("name".to_string(), string_value(name));
    for (key, value) in values {
        if as_inputs {
            op.inputs.insert(
                key.to_string(),
                spec::Argument {
                    arguments: vec![spec::Binding {
                        binding: Some(spec::binding::Binding::Value(value)),
                    }],
                },
            );
        } else {
            op.attributes.insert(key.to_string(), value);
        }
    }
    op.encode_to_vec()
}

/// What the edit changes.
pub(crate) struct ModelEdits {
    /// New operation bytes for the `const` operations compressed, by (function, output name).
    pub replace: HashMap<(String, String), Vec<u8>>,
    /// The new offset of every blob reference kept, by (file name, old offset).
    pub offsets: HashMap<(String, u64), u64>,
    /// Names operations bind that now name the compressed operation's output, by (function,
    /// old name).
    pub renames: HashMap<(String, String), String>,
}

/// Why the edit failed.
#[derive(Debug)]
pub(crate) enum EditError {
    Wire(WireError),
    /// A blob reference the plan did not see (outside the operations of a function's block).
    UnplannedBlob {
        file_name: String,
        offset: u64,
    },
}

impl From<WireError> for EditError {
    fn from(e: WireError) -> Self {
        Self::Wire(e)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Model,
    Program,
    FunctionEntry,
    Function,
    BlockEntry,
    Block,
    Operation,
    ArgumentEntry,
    Argument,
    Binding,
    ValueEntry,
    Value,
    ImmediateValue,
    ValueList,
    DictionaryValue,
    KeyValuePair,
    BlobFileValue,
}

#[derive(Clone, Copy)]
struct Ctx<'a> {
    function: &'a str,
    /// The opset of the function being edited.
    opset: &'a [u8],
    /// Whether the block being edited is the function's block for its opset.
    in_opset_block: bool,
}

fn child(kind: Kind, number: u32) -> Option<Kind> {
    use Kind::*;
    Some(match (kind, number) {
        (Model, 502) => Program,
        (Program, 2) => FunctionEntry,
        (Program, 4) => ValueEntry,
        (FunctionEntry, 2) => Function,
        (Function, 3) => BlockEntry,
        (Function, 4) => ValueEntry,
        (BlockEntry, 2) => Block,
        (Block, 3) => Operation,
        (Block, 4) => ValueEntry,
        (Operation, 2) => ArgumentEntry,
        (Operation, 4) => Block,
        (Operation, 5) => ValueEntry,
        (ArgumentEntry, 2) => Argument,
        (Argument, 1) => Binding,
        (Binding, 2) => Value,
        (ValueEntry, 2) => Value,
        (Value, 3) => ImmediateValue,
        (Value, 5) => BlobFileValue,
        (ImmediateValue, 2 | 3) => ValueList,
        (ImmediateValue, 4) => DictionaryValue,
        (ValueList, 1) => Value,
        (DictionaryValue, 1) => KeyValuePair,
        (KeyValuePair, 1 | 2) => Value,
        _ => return None,
    })
}

/// The model bytes with the edits applied (maps not yet sorted: the caller makes the result
/// canonical).
pub(crate) fn edit_model(bytes: &[u8], edits: &ModelEdits) -> Result<Vec<u8>, EditError> {
    let ctx = Ctx {
        function: "",
        opset: b"",
        in_opset_block: false,
    };
    edit(Kind::Model, bytes, edits, ctx, 0)
}

fn string_field<'a>(fields: &[wire::Field<'a>], number: u32) -> &'a [u8] {
    fields
        .iter()
        .rev()
        .find(|f| f.number == number)
        .and_then(wire::Field::bytes)
        .unwrap_or_default()
}

fn edit(
    kind: Kind,
    bytes: &[u8],
    edits: &ModelEdits,
    ctx: Ctx<'_>,
    depth: u32,
) -> Result<Vec<u8>, EditError> {
    if depth > wire::MAX_DEPTH {
        return Err(WireError::TooDeep { offset: 0 }.into());
    }
    let fields = wire::parse(bytes)?;
    if kind == Kind::BlobFileValue {
        let file_name = String::from_utf8_lossy(string_field(&fields, 1)).into_owned();
        let offset = fields
            .iter()
            .rev()
            .find_map(|f| match (f.number, f.value) {
                (2, W::Varint(v)) => Some(v),
                _ => None,
            })
            .unwrap_or(0);
        let Some(&new) = edits.offsets.get(&(file_name.clone(), offset)) else {
            return Err(EditError::UnplannedBlob { file_name, offset });
        };
        let mut out = Vec::with_capacity(bytes.len() + 4);
        let mut written = false;
        for f in &fields {
            if f.number == 2 {
                if !written {
                    wire::write_varint(2 << 3, &mut out);
                    wire::write_varint(new, &mut out);
                    written = true;
                }
            } else {
                out.extend_from_slice(f.raw);
            }
        }
        if !written && new != 0 {
            wire::write_varint(2 << 3, &mut out);
            wire::write_varint(new, &mut out);
        }
        return Ok(out);
    }
    // The name of the function (its map key), its opset and which of its blocks is the one
    // for that opset, read before the fields below them are edited.
    let function_name = match kind {
        Kind::FunctionEntry => String::from_utf8_lossy(string_field(&fields, 1)).into_owned(),
        _ => String::new(),
    };
    let opset = match kind {
        Kind::Function => string_field(&fields, 2),
        _ => ctx.opset,
    };
    let ctx = Ctx {
        function: if kind == Kind::FunctionEntry {
            &function_name
        } else {
            ctx.function
        },
        opset,
        in_opset_block: match kind {
            Kind::BlockEntry => string_field(&fields, 1) == ctx.opset,
            _ => ctx.in_opset_block,
        },
    };
    if kind == Kind::Operation && ctx.in_opset_block && string_field(&fields, 1) == b"const" {
        let output = fields
            .iter()
            .find(|f| f.number == 3)
            .and_then(wire::Field::bytes);
        let name = match output {
            Some(o) => string_field(&wire::parse(o)?, 1).to_vec(),
            None => Vec::new(),
        };
        let key = (
            ctx.function.to_string(),
            String::from_utf8_lossy(&name).into_owned(),
        );
        if let Some(new) = edits.replace.get(&key) {
            return Ok(new.clone());
        }
    }
    let mut out = Vec::with_capacity(bytes.len());
    for f in &fields {
        if kind == Kind::Binding
            && f.number == 1
            && let W::Bytes(name) = f.value
        {
            let key = (
                ctx.function.to_string(),
                String::from_utf8_lossy(name).into_owned(),
            );
            if let Some(new) = edits.renames.get(&key) {
                wire::write_bytes_field(1, new.as_bytes(), &mut out);
                continue;
            }
        }
        match (child(kind, f.number), f.value) {
            (Some(k), W::Bytes(payload)) => {
                let inner = edit(k, payload, edits, ctx, depth + 1)?;
                if inner == payload {
                    out.extend_from_slice(f.raw);
                } else {
                    wire::write_bytes_field(f.number, &inner, &mut out);
                }
            }
            _ => out.extend_from_slice(f.raw),
        }
    }
    Ok(out)
}
