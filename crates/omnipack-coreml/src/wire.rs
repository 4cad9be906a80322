//! A generic protobuf wire-format layer: a message as a list of fields (number, wire type,
//! value) that keeps every field's exact bytes.
//!
//! prost decodes the typed views of a model but drops the fields it does not know, so a rewrite
//! never re-encodes a whole message from prost structs. It parses the message into [`Field`]s
//! here, changes only what must change (the order of map entries, one metadata entry) and copies
//! every other field's original bytes ([`Field::raw`]) as they are. Writing the fields of a
//! message back without changes gives the input bytes exactly.

use thiserror::Error;

/// Deepest nesting of groups this parser follows (protobuf's own default recursion limit).
pub const MAX_DEPTH: u32 = 100;

/// Why bytes are not a protobuf message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WireError {
    #[error("truncated varint at byte {offset}")]
    TruncatedVarint { offset: usize },
    #[error("varint longer than 10 bytes at byte {offset}")]
    VarintTooLong { offset: usize },
    #[error("field number 0 at byte {offset}")]
    FieldNumberZero { offset: usize },
    #[error("field number {number} at byte {offset} is larger than 2^29 - 1")]
    FieldNumberTooLarge { number: u64, offset: usize },
    #[error("unknown wire type {wire_type} at byte {offset}")]
    UnknownWireType { wire_type: u8, offset: usize },
    #[error("field {number} at byte {offset} needs {needed} bytes but only {available} remain")]
    Truncated {
        number: u32,
        offset: usize,
        needed: u64,
        available: usize,
    },
    #[error("group of field {number} at byte {offset} is not closed")]
    UnclosedGroup { number: u32, offset: usize },
    #[error("end of group {number} at byte {offset} without a matching start")]
    UnexpectedEndGroup { number: u32, offset: usize },
    #[error("groups nested deeper than {MAX_DEPTH} at byte {offset}")]
    TooDeep { offset: usize },
}

/// The value of one field, as the wire format carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    /// Wire type 0.
    Varint(u64),
    /// Wire type 1: eight little-endian bytes.
    Fixed64(u64),
    /// Wire type 2: a length-delimited payload (bytes, string, message, packed values).
    Bytes(&'a [u8]),
    /// Wire types 3 and 4: the bytes between a start-group and its end-group tag.
    Group(&'a [u8]),
    /// Wire type 5: four little-endian bytes.
    Fixed32(u32),
}

/// One field of a message: its number, value and the exact bytes it occupied (tag included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field<'a> {
    pub number: u32,
    pub value: Value<'a>,
    /// The field's bytes in the input, from its tag to the end of its value.
    pub raw: &'a [u8],
}

impl<'a> Field<'a> {
    /// The payload of a length-delimited field.
    pub fn bytes(&self) -> Option<&'a [u8]> {
        match self.value {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }
}

/// Reads a varint at `*pos`, advancing it.
pub fn read_varint(buf: &[u8], pos: &mut usize) -> Result<u64, WireError> {
    let start = *pos;
    let mut value: u64 = 0;
    for i in 0..10 {
        let Some(&b) = buf.get(*pos) else {
            return Err(WireError::TruncatedVarint { offset: start });
        };
        *pos += 1;
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(WireError::VarintTooLong { offset: start })
}

/// Appends `value` as a minimal varint.
pub fn write_varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Appends a length-delimited field (minimal tag and length).
pub fn write_bytes_field(number: u32, payload: &[u8], out: &mut Vec<u8>) {
    write_varint((u64::from(number) << 3) | 2, out);
    write_varint(payload.len() as u64, out);
    out.extend_from_slice(payload);
}

/// Parses the fields of one message. Never panics; allocates at most one entry per field
/// actually present in `buf`.
pub fn parse(buf: &[u8]) -> Result<Vec<Field<'_>>, WireError> {
    let mut fields = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        fields.push(next_field(buf, &mut pos)?);
    }
    Ok(fields)
}

/// Parses the field at `*pos` (which must not be an end-group tag at depth 0).
fn next_field<'a>(buf: &'a [u8], pos: &mut usize) -> Result<Field<'a>, WireError> {
    let start = *pos;
    let (number, wire_type) = read_tag(buf, pos)?;
    let value = read_value(buf, pos, number, wire_type, start, 0)?;
    Ok(Field {
        number,
        value,
        raw: &buf[start..*pos],
    })
}

/// Validates one field; returns its start offset and, for an end-group tag, its number.
fn parse_field(buf: &[u8], pos: &mut usize, depth: u32) -> Result<(usize, Option<u32>), WireError> {
    let start = *pos;
    let (number, wire_type) = read_tag(buf, pos)?;
    if wire_type == 4 {
        return Ok((start, Some(number)));
    }
    read_value(buf, pos, number, wire_type, start, depth)?;
    Ok((start, None))
}

fn read_tag(buf: &[u8], pos: &mut usize) -> Result<(u32, u8), WireError> {
    let start = *pos;
    let tag = read_varint(buf, pos)?;
    let number = tag >> 3;
    let wire_type = (tag & 7) as u8;
    if number == 0 {
        return Err(WireError::FieldNumberZero { offset: start });
    }
    if number > (1 << 29) - 1 {
        return Err(WireError::FieldNumberTooLarge {
            number,
            offset: start,
        });
    }
    if wire_type > 5 {
        return Err(WireError::UnknownWireType {
            wire_type,
            offset: start,
        });
    }
    Ok((number as u32, wire_type))
}

fn take<'a>(
    buf: &'a [u8],
    pos: &mut usize,
    n: u64,
    number: u32,
    start: usize,
) -> Result<&'a [u8], WireError> {
    let available = buf.len() - *pos;
    if n > available as u64 {
        return Err(WireError::Truncated {
            number,
            offset: start,
            needed: n,
            available,
        });
    }
    let s = &buf[*pos..*pos + n as usize];
    *pos += n as usize;
    Ok(s)
}

fn read_value<'a>(
    buf: &'a [u8],
    pos: &mut usize,
    number: u32,
    wire_type: u8,
    start: usize,
    depth: u32,
) -> Result<Value<'a>, WireError> {
    Ok(match wire_type {
        0 => Value::Varint(read_varint(buf, pos)?),
        1 => {
            let b = take(buf, pos, 8, number, start)?;
            Value::Fixed64(u64::from_le_bytes(b.try_into().expect("8 bytes")))
        }
        2 => {
            let len = read_varint(buf, pos)?;
            Value::Bytes(take(buf, pos, len, number, start)?)
        }
        3 => {
            if depth >= MAX_DEPTH {
                return Err(WireError::TooDeep { offset: start });
            }
            let body_start = *pos;
            loop {
                if *pos >= buf.len() {
                    return Err(WireError::UnclosedGroup {
                        number,
                        offset: start,
                    });
                }
                let inner_start = *pos;
                let (_, end) = parse_field(buf, pos, depth + 1)?;
                if let Some(end_number) = end {
                    if end_number != number {
                        return Err(WireError::UnexpectedEndGroup {
                            number: end_number,
                            offset: inner_start,
                        });
                    }
                    break Value::Group(&buf[body_start..inner_start]);
                }
            }
        }
        4 => {
            return Err(WireError::UnexpectedEndGroup {
                number,
                offset: start,
            });
        }
        5 => {
            let b = take(buf, pos, 4, number, start)?;
            Value::Fixed32(u32::from_le_bytes(b.try_into().expect("4 bytes")))
        }
        _ => {
            return Err(WireError::UnknownWireType {
                wire_type,
                offset: start,
            });
        }
    })
}

/// Writes fields back: their original bytes, in order.
pub fn write(fields: &[Field<'_>], out: &mut Vec<u8>) {
    for f in fields {
        out.extend_from_slice(f.raw);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_every_wire_type() {
        // 1: varint 150, 2: "hi", 3: fixed32, 4: fixed64, 5: group { 1: varint 1 }
        let mut b = vec![0x08, 0x96, 0x01, 0x12, 0x02, b'h', b'i'];
        b.extend_from_slice(&[0x1d, 1, 0, 0, 0]);
        b.extend_from_slice(&[0x21, 2, 0, 0, 0, 0, 0, 0, 0]);
        b.extend_from_slice(&[0x2b, 0x08, 0x01, 0x2c]);
        let f = parse(&b).unwrap();
        assert_eq!(f.len(), 5);
        assert_eq!(f[0].value, Value::Varint(150));
        assert_eq!(f[1].value, Value::Bytes(b"hi"));
        assert_eq!(f[2].value, Value::Fixed32(1));
        assert_eq!(f[3].value, Value::Fixed64(2));
        assert_eq!(f[4].value, Value::Group(&[0x08, 0x01]));
        let mut out = Vec::new();
        write(&f, &mut out);
        assert_eq!(out, b);
    }

    #[test]
    fn rejects_malformed_input() {
        assert!(matches!(
            parse(&[0x08]),
            Err(WireError::TruncatedVarint { .. })
        ));
        assert!(matches!(
            parse(&[0x12, 0x05, 1]),
            Err(WireError::Truncated { .. })
        ));
        assert!(matches!(
            parse(&[0x00]),
            Err(WireError::FieldNumberZero { .. })
        ));
        assert!(matches!(
            parse(&[0x0e]),
            Err(WireError::UnknownWireType { .. })
        ));
        assert!(matches!(
            parse(&[0x0c]),
            Err(WireError::UnexpectedEndGroup { .. })
        ));
        assert!(matches!(
            parse(&[0x0b, 0x08, 0x01]),
            Err(WireError::UnclosedGroup { .. })
        ));
        assert!(matches!(
            parse(&[0x0b, 0x14]),
            Err(WireError::UnexpectedEndGroup { .. })
        ));
        assert!(matches!(
            parse(&[0xff; 11]),
            Err(WireError::VarintTooLong { .. })
        ));
        let deep: Vec<u8> = std::iter::repeat_n(0x0b, 200).collect();
        assert!(matches!(parse(&deep), Err(WireError::TooDeep { .. })));
    }

    #[test]
    fn minimal_varints() {
        for v in [0u64, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            let mut b = Vec::new();
            write_varint(v, &mut b);
            let mut pos = 0;
            assert_eq!(read_varint(&b, &mut pos).unwrap(), v);
            assert_eq!(pos, b.len());
        }
    }

    /// A random message tree, encoded with arbitrary (valid) field numbers and wire types.
    fn arb_message() -> impl Strategy<Value = Vec<u8>> {
        let leaf = prop_oneof![
            (1u32..2000, any::<u64>()).prop_map(|(n, v)| {
                let mut b = Vec::new();
                write_varint(u64::from(n) << 3, &mut b);
                write_varint(v, &mut b);
                b
            }),
            (1u32..2000, proptest::collection::vec(any::<u8>(), 0..20)).prop_map(|(n, p)| {
                let mut b = Vec::new();
                write_bytes_field(n, &p, &mut b);
                b
            }),
            (1u32..2000, any::<u32>()).prop_map(|(n, v)| {
                let mut b = Vec::new();
                write_varint((u64::from(n) << 3) | 5, &mut b);
                b.extend_from_slice(&v.to_le_bytes());
                b
            }),
            (1u32..2000, any::<u64>()).prop_map(|(n, v)| {
                let mut b = Vec::new();
                write_varint((u64::from(n) << 3) | 1, &mut b);
                b.extend_from_slice(&v.to_le_bytes());
                b
            }),
        ];
        let field = leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                (1u32..2000, proptest::collection::vec(inner.clone(), 0..6)).prop_map(|(n, fs)| {
                    let mut b = Vec::new();
                    write_bytes_field(n, &fs.concat(), &mut b);
                    b
                }),
                (1u32..2000, proptest::collection::vec(inner, 0..6)).prop_map(|(n, fs)| {
                    let mut b = Vec::new();
                    write_varint((u64::from(n) << 3) | 3, &mut b);
                    b.extend(fs.concat());
                    write_varint((u64::from(n) << 3) | 4, &mut b);
                    b
                }),
            ]
        });
        proptest::collection::vec(field, 0..12).prop_map(|fs| fs.concat())
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(fields) = parse(&bytes) {
                // Whatever parses writes back to the same bytes.
                let mut out = Vec::new();
                write(&fields, &mut out);
                prop_assert_eq!(out, bytes);
            }
        }

        #[test]
        fn parse_then_write_is_the_identity(bytes in arb_message()) {
            let fields = parse(&bytes).unwrap();
            let mut out = Vec::new();
            write(&fields, &mut out);
            prop_assert_eq!(out, bytes);
        }

        #[test]
        fn nested_payloads_parse(bytes in arb_message()) {
            // Every length-delimited payload either parses as a message or is rejected cleanly.
            for f in parse(&bytes).unwrap() {
                if let Some(p) = f.bytes() {
                    let _ = parse(p);
                }
            }
        }
    }
}
