//! Data types and deployment targets, named as omnipack shows them.

use std::fmt;

/// The data type of a multi-array feature (`ArrayFeatureType.ArrayDataType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ArrayDataType {
    Float32,
    Double,
    Int32,
    Int8,
    Float16,
    /// A code Core ML does not define (for example `0x20000 | 64`, an "int64" no runtime has).
    Unknown(i32),
}

// `ArrayDataType` codes: a kind (0x10000 float, 0x20000 integer) or-ed with the bits.
const FLOAT32: i32 = 0x10000 | 32;
const DOUBLE: i32 = 0x10000 | 64;
const INT32: i32 = 0x20000 | 32;
const INT8: i32 = 0x20000 | 8;
const FLOAT16: i32 = 0x10000 | 16;

impl ArrayDataType {
    pub fn from_code(code: i32) -> Self {
        match code {
            FLOAT32 => Self::Float32,
            DOUBLE => Self::Double,
            INT32 => Self::Int32,
            INT8 => Self::Int8,
            FLOAT16 => Self::Float16,
            c => Self::Unknown(c),
        }
    }

    pub fn code(self) -> i32 {
        match self {
            Self::Float32 => FLOAT32,
            Self::Double => DOUBLE,
            Self::Int32 => INT32,
            Self::Int8 => INT8,
            Self::Float16 => FLOAT16,
            Self::Unknown(c) => c,
        }
    }

    /// Bytes per element (`None` for unknown codes).
    pub fn bytes(self) -> Option<u64> {
        match self {
            Self::Float32 | Self::Int32 => Some(4),
            Self::Double => Some(8),
            Self::Int8 => Some(1),
            Self::Float16 => Some(2),
            Self::Unknown(_) => None,
        }
    }
}

impl fmt::Display for ArrayDataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Float32 => f.write_str("fp32"),
            Self::Double => f.write_str("fp64"),
            Self::Int32 => f.write_str("int32"),
            Self::Int8 => f.write_str("int8"),
            Self::Float16 => f.write_str("fp16"),
            Self::Unknown(c) => write!(f, "unknown array data type {c}"),
        }
    }
}

/// A MIL tensor element type (`MILSpec.DataType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MilDataType(pub i32);

impl MilDataType {
    pub const BOOL: Self = Self(1);
    pub const STRING: Self = Self(2);
    pub const FLOAT16: Self = Self(10);
    pub const FLOAT32: Self = Self(11);
    pub const FLOAT64: Self = Self(12);
    pub const BFLOAT16: Self = Self(13);
    pub const INT8: Self = Self(21);
    pub const INT16: Self = Self(22);
    pub const INT32: Self = Self(23);
    pub const INT64: Self = Self(24);
    pub const INT4: Self = Self(25);
    pub const UINT8: Self = Self(31);
    pub const UINT16: Self = Self(32);
    pub const UINT32: Self = Self(33);
    pub const UINT64: Self = Self(34);
    pub const UINT4: Self = Self(35);
    pub const UINT2: Self = Self(36);
    pub const UINT1: Self = Self(37);
    pub const UINT6: Self = Self(38);
    pub const UINT3: Self = Self(39);
    pub const FLOAT8E4M3FN: Self = Self(40);
    pub const FLOAT8E5M2: Self = Self(41);

    /// Bits per element (`None` for strings and unknown codes).
    pub fn bits(self) -> Option<u32> {
        Some(match self.0 {
            1 | 21 | 31 | 40 | 41 => 8,
            10 | 13 | 22 | 32 => 16,
            11 | 23 | 33 => 32,
            12 | 24 | 34 => 64,
            25 | 35 => 4,
            36 => 2,
            37 => 1,
            38 => 6,
            39 => 3,
            _ => return None,
        })
    }

    /// Whether this is a floating-point type (the element type of a weight).
    pub fn is_float(self) -> bool {
        matches!(self.0, 10..=13 | 40 | 41)
    }

    /// The lower-case name (`fp16`, `int32`, ...).
    pub fn name(self) -> String {
        let s = match self.0 {
            0 => "unused",
            1 => "bool",
            2 => "string",
            10 => "fp16",
            11 => "fp32",
            12 => "fp64",
            13 => "bf16",
            21 => "int8",
            22 => "int16",
            23 => "int32",
            24 => "int64",
            25 => "int4",
            31 => "uint8",
            32 => "uint16",
            33 => "uint32",
            34 => "uint64",
            35 => "uint4",
            36 => "uint2",
            37 => "uint1",
            38 => "uint6",
            39 => "uint3",
            40 => "fp8e4m3fn",
            41 => "fp8e5m2",
            n => return format!("MIL data type {n}"),
        };
        s.to_string()
    }
}

impl fmt::Display for MilDataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// The oldest OS release that runs a model of a specification version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeploymentTarget {
    pub specification_version: i32,
}

impl DeploymentTarget {
    /// The iOS release (`"iOS 16"`), or `None` for a version omnipack does not know.
    pub fn ios(self) -> Option<&'static str> {
        Some(match self.specification_version {
            1 => "iOS 11",
            2 => "iOS 11.2",
            3 => "iOS 12",
            4 => "iOS 13",
            5 => "iOS 14",
            6 => "iOS 15",
            7 => "iOS 16",
            8 => "iOS 17",
            9 => "iOS 18",
            10 => "iOS 26",
            _ => return None,
        })
    }

    /// The iOS major version number (16 for `iOS 16`).
    pub fn ios_major(self) -> Option<u32> {
        Some(match self.specification_version {
            1 | 2 => 11,
            3 => 12,
            4 => 13,
            5 => 14,
            6 => 15,
            7 => 16,
            8 => 17,
            9 => 18,
            10 => 26,
            _ => return None,
        })
    }
}

impl fmt::Display for DeploymentTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ios() {
            Some(ios) => write!(
                f,
                "{ios} (specification version {})",
                self.specification_version
            ),
            None => write!(
                f,
                "specification version {} (newer than omnipack knows)",
                self.specification_version
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(ArrayDataType::from_code(65552), ArrayDataType::Float16);
        assert_eq!(ArrayDataType::from_code(131104).to_string(), "int32");
        assert_eq!(ArrayDataType::Float16.code(), 65552);
        assert_eq!(
            ArrayDataType::from_code(131136),
            ArrayDataType::Unknown(131136)
        );
        assert_eq!(MilDataType::INT64.to_string(), "int64");
        assert!(MilDataType::FLOAT16.is_float() && !MilDataType::INT8.is_float());
        let t = DeploymentTarget {
            specification_version: 7,
        };
        assert_eq!(t.to_string(), "iOS 16 (specification version 7)");
        assert_eq!(
            DeploymentTarget {
                specification_version: 9
            }
            .ios_major(),
            Some(18)
        );
        assert_eq!(
            DeploymentTarget {
                specification_version: 11
            }
            .ios(),
            None
        );
    }
}
