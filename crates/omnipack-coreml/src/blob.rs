//! MIL blob storage, version 2: the `weights/weight.bin` file of an ML program package.
//!
//! Layout (all integers little-endian, see the crate README for the sources of these facts):
//!
//! * a 64-byte header: `count: u32`, `version: u32` (= 2), then zeros;
//! * per blob, at the next 64-byte boundary, a 64-byte metadata record: `sentinel: u32`
//!   (= `0xDEADBEEF`), `data_type: u32`, `size_in_bytes: u64`, `data_offset: u64`,
//!   `padding_size_in_bits: u64` (unused bits of the last byte of sub-byte data), four reserved
//!   `u64`; the blob's data follows the record at once (`data_offset` = record offset + 64);
//! * zero padding up to the next 64-byte boundary before the next record; none after the last
//!   blob.
//!
//! A program refers to a blob by the offset of its metadata record. Sub-byte data (int4, uint1
//! to uint6) is packed LSB first: element `i` occupies bits `i * bits ..` of the byte stream.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Size of the file header and of every metadata record.
pub const RECORD_BYTES: u64 = 64;
/// Alignment of every metadata record (and so of every blob's data).
pub const ALIGNMENT: u64 = 64;
/// The value of every record's first four bytes.
pub const SENTINEL: u32 = 0xDEAD_BEEF;
/// The storage format version omnipack reads and writes.
pub const VERSION: u32 = 2;

/// The data type of a blob (`BlobDataType` in coremltools' MIL blob sources).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlobDataType(pub u32);

impl BlobDataType {
    pub const FLOAT16: Self = Self(1);
    pub const FLOAT32: Self = Self(2);
    pub const UINT8: Self = Self(3);
    pub const INT8: Self = Self(4);
    pub const BFLOAT16: Self = Self(5);
    pub const INT16: Self = Self(6);
    pub const UINT16: Self = Self(7);
    pub const INT4: Self = Self(8);
    pub const UINT1: Self = Self(9);
    pub const UINT2: Self = Self(10);
    pub const UINT4: Self = Self(11);
    pub const UINT3: Self = Self(12);
    pub const UINT6: Self = Self(13);
    pub const INT32: Self = Self(14);
    pub const UINT32: Self = Self(15);
    pub const FLOAT8_E4M3FN: Self = Self(16);
    pub const FLOAT8_E5M2: Self = Self(17);

    /// Bits per element, or `None` for a code omnipack does not know.
    pub fn bits(self) -> Option<u32> {
        Some(match self.0 {
            1 | 5 | 6 | 7 => 16,
            2 | 14 | 15 => 32,
            3 | 4 | 16 | 17 => 8,
            8 | 11 => 4,
            9 => 1,
            10 => 2,
            12 => 3,
            13 => 6,
            _ => return None,
        })
    }

    /// The lower-case name omnipack shows (`fp16`, `int4`, ...), or `type N` for unknown codes.
    pub fn name(self) -> String {
        let s = match self.0 {
            1 => "fp16",
            2 => "fp32",
            3 => "uint8",
            4 => "int8",
            5 => "bf16",
            6 => "int16",
            7 => "uint16",
            8 => "int4",
            9 => "uint1",
            10 => "uint2",
            11 => "uint4",
            12 => "uint3",
            13 => "uint6",
            14 => "int32",
            15 => "uint32",
            16 => "fp8e4m3fn",
            17 => "fp8e5m2",
            n => return format!("type {n}"),
        };
        s.to_string()
    }

    /// Whether elements are smaller than a byte (stored packed, LSB first).
    pub fn is_sub_byte(self) -> bool {
        self.bits().is_some_and(|b| b < 8)
    }
}

/// One blob's metadata record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobRecord {
    /// Offset of the metadata record: what a program's `BlobFileValue.offset` names.
    pub metadata_offset: u64,
    pub data_type: BlobDataType,
    /// Offset of the data (= `metadata_offset + 64`).
    pub data_offset: u64,
    /// Bytes of data.
    pub size: u64,
    /// Unused bits at the end of sub-byte data (0 otherwise).
    pub padding_bits: u64,
}

impl BlobRecord {
    /// Number of elements the data holds, when the data type is known.
    pub fn elements(&self) -> Option<u64> {
        let bits = u64::from(self.data_type.bits()?);
        Some((self.size * 8).saturating_sub(self.padding_bits) / bits)
    }
}

/// What is wrong with a blob file.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum BlobError {
    #[error("{len} bytes is shorter than the 64-byte blob storage header")]
    ShortHeader { len: u64 },
    #[error("blob storage version {version}; omnipack reads version 2")]
    Version { version: u32 },
    #[error(
        "the header counts {count} blobs but a {len}-byte file holds at most {max} (each needs a 64-byte record)"
    )]
    CountTooLarge { count: u32, len: u64, max: u64 },
    #[error(
        "blob {index} of {count}: its record at byte {offset} is past the end of the file ({len} bytes): the file is truncated or a counted blob is missing"
    )]
    MissingRecord {
        index: u32,
        count: u32,
        offset: u64,
        len: u64,
    },
    #[error("blob {index}: record at byte {offset} has sentinel {found:#010x}, not 0xdeadbeef")]
    Sentinel { index: u32, offset: u64, found: u32 },
    #[error(
        "blob {index}: record at byte {offset} puts its data at byte {data_offset}, not right after the record (records out of order)"
    )]
    OutOfOrder {
        index: u32,
        offset: u64,
        data_offset: u64,
    },
    #[error(
        "blob {index}: {size} bytes of data at byte {data_offset} run past the end of the file ({len} bytes)"
    )]
    DataPastEnd {
        index: u32,
        data_offset: u64,
        size: u64,
        len: u64,
    },
    #[error("blob {index}: {padding_bits} bits of padding (a sub-byte blob has at most 7)")]
    Padding { index: u32, padding_bits: u64 },
}

/// The index of a blob storage file: its header and every record, validated against its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobIndex {
    /// Size of the file in bytes.
    pub len: u64,
    /// Records in file order.
    pub records: Vec<BlobRecord>,
    /// Bytes after the last blob's data (coremltools writes none).
    pub trailing_bytes: u64,
}

impl BlobIndex {
    /// Reads and validates the index of a blob file from `reader` of `len` bytes. Reads only
    /// the header and the records (64 bytes each), never the data; allocates nothing sized by
    /// the header's count before checking it against `len`.
    pub fn read<R: Read + Seek>(reader: &mut R, len: u64) -> Result<Self, BlobIndexError> {
        if len < RECORD_BYTES {
            return Err(BlobError::ShortHeader { len }.into());
        }
        let mut header = [0u8; RECORD_BYTES as usize];
        reader.seek(SeekFrom::Start(0))?;
        reader.read_exact(&mut header)?;
        let count = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
        let version = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
        if version != VERSION {
            return Err(BlobError::Version { version }.into());
        }
        let max = (len - RECORD_BYTES) / RECORD_BYTES;
        if u64::from(count) > max {
            return Err(BlobError::CountTooLarge { count, len, max }.into());
        }
        let mut records = Vec::with_capacity(count as usize);
        let mut offset = RECORD_BYTES;
        let mut end = RECORD_BYTES;
        for index in 0..count {
            if offset.checked_add(RECORD_BYTES).is_none_or(|e| e > len) {
                return Err(BlobError::MissingRecord {
                    index,
                    count,
                    offset,
                    len,
                }
                .into());
            }
            let mut rec = [0u8; RECORD_BYTES as usize];
            reader.seek(SeekFrom::Start(offset))?;
            reader.read_exact(&mut rec)?;
            let word = |i: usize| u64::from_le_bytes(rec[i..i + 8].try_into().expect("8 bytes"));
            let sentinel = u32::from_le_bytes(rec[0..4].try_into().expect("4 bytes"));
            if sentinel != SENTINEL {
                return Err(BlobError::Sentinel {
                    index,
                    offset,
                    found: sentinel,
                }
                .into());
            }
            let data_type =
                BlobDataType(u32::from_le_bytes(rec[4..8].try_into().expect("4 bytes")));
            let size = word(8);
            let data_offset = word(16);
            let padding_bits = word(24);
            if data_offset != offset + RECORD_BYTES {
                return Err(BlobError::OutOfOrder {
                    index,
                    offset,
                    data_offset,
                }
                .into());
            }
            end = match data_offset.checked_add(size) {
                Some(e) if e <= len => e,
                _ => {
                    return Err(BlobError::DataPastEnd {
                        index,
                        data_offset,
                        size,
                        len,
                    }
                    .into());
                }
            };
            if padding_bits >= 8 || (padding_bits > 0 && !data_type.is_sub_byte()) {
                return Err(BlobError::Padding {
                    index,
                    padding_bits,
                }
                .into());
            }
            records.push(BlobRecord {
                metadata_offset: offset,
                data_type,
                data_offset,
                size,
                padding_bits,
            });
            offset = align(end);
        }
        Ok(Self {
            len,
            records,
            trailing_bytes: len - end,
        })
    }

    /// Reads the index of the blob file at `path`.
    pub fn open(path: &Path) -> Result<Self, BlobIndexError> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        Self::read(&mut file, len)
    }

    /// The record whose metadata starts at `metadata_offset`.
    pub fn record_at(&self, metadata_offset: u64) -> Option<&BlobRecord> {
        self.records
            .binary_search_by_key(&metadata_offset, |r| r.metadata_offset)
            .ok()
            .map(|i| &self.records[i])
    }

    /// Total bytes of blob data.
    pub fn data_bytes(&self) -> u64 {
        self.records.iter().map(|r| r.size).sum()
    }
}

/// A blob file that cannot be read: an I/O error or a format error.
#[derive(Debug, Error)]
pub enum BlobIndexError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Format(#[from] BlobError),
}

/// Rounds `offset` up to the next multiple of 64.
pub fn align(offset: u64) -> u64 {
    offset.div_ceil(ALIGNMENT) * ALIGNMENT
}

/// The unused bits at the end of `elements` values of `bits` bits each, packed.
pub fn padding_bits(elements: u64, bits: u32) -> u64 {
    let rem = (elements * u64::from(bits)) % 8;
    if rem == 0 { 0 } else { 8 - rem }
}

/// Where each blob of the given data sizes goes, and the file's total size: the layout a
/// [`BlobWriter`] produces (metadata offsets, in order).
pub fn layout(sizes: impl IntoIterator<Item = u64>) -> (Vec<u64>, u64) {
    let mut offsets = Vec::new();
    let mut end = RECORD_BYTES;
    for size in sizes {
        let record = align(end);
        offsets.push(record);
        end = record + RECORD_BYTES + size;
    }
    (offsets, end)
}

/// Packs sub-byte values LSB first (value `i` at bits `i * bits ..` of the stream). Each value
/// keeps its low `bits` bits.
pub fn pack_sub_byte(values: &[u8], bits: u32) -> Vec<u8> {
    assert!((1..8).contains(&bits), "sub-byte width must be 1..=7 bits");
    let total = (values.len() as u64 * u64::from(bits)).div_ceil(8) as usize;
    let mut out = vec![0u8; total];
    let mask = ((1u16 << bits) - 1) as u8;
    for (i, &v) in values.iter().enumerate() {
        let bit = i * bits as usize;
        let (byte, shift) = (bit / 8, bit % 8);
        let v = u16::from(v & mask) << shift;
        out[byte] |= v as u8;
        if shift + bits as usize > 8 {
            out[byte + 1] |= (v >> 8) as u8;
        }
    }
    out
}

/// Unpacks `count` sub-byte values (LSB first); returns `None` when `data` is too short.
pub fn unpack_sub_byte(data: &[u8], bits: u32, count: usize) -> Option<Vec<u8>> {
    if !(1..8).contains(&bits) || (count as u64 * u64::from(bits)).div_ceil(8) > data.len() as u64 {
        return None;
    }
    let mask = (1u16 << bits) - 1;
    Some(
        (0..count)
            .map(|i| {
                let bit = i * bits as usize;
                let (byte, shift) = (bit / 8, bit % 8);
                let lo = u16::from(data[byte]);
                let hi = u16::from(data.get(byte + 1).copied().unwrap_or(0));
                (((hi << 8 | lo) >> shift) & mask) as u8
            })
            .collect(),
    )
}

/// Writes a blob storage file in one pass, byte for byte as coremltools does: the header with
/// the final count first (so the count is given up front), then each blob's record at the next
/// 64-byte boundary followed by its data, zero padding in between, nothing after the last blob.
pub struct BlobWriter<W: Write> {
    out: W,
    pos: u64,
    count: u32,
    written: u32,
}

/// A [`BlobWriter`] used wrongly.
#[derive(Debug, Error)]
pub enum BlobWriteError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("{written} blobs written but the header promised {count}")]
    Count { count: u32, written: u32 },
    #[error("{padding_bits} bits of padding for {size} bytes of {data_type}")]
    Padding {
        padding_bits: u64,
        size: u64,
        data_type: String,
    },
}

impl<W: Write> BlobWriter<W> {
    /// Starts a file that will hold exactly `count` blobs.
    pub fn new(mut out: W, count: u32) -> Result<Self, BlobWriteError> {
        let mut header = [0u8; RECORD_BYTES as usize];
        header[0..4].copy_from_slice(&count.to_le_bytes());
        header[4..8].copy_from_slice(&VERSION.to_le_bytes());
        out.write_all(&header)?;
        Ok(Self {
            out,
            pos: RECORD_BYTES,
            count,
            written: 0,
        })
    }

    /// Appends one blob; returns the offset of its metadata record (for `BlobFileValue`).
    /// `padding_bits` is the number of unused bits at the end of sub-byte data.
    pub fn write_blob(
        &mut self,
        data_type: BlobDataType,
        data: &[u8],
        padding_bits: u64,
    ) -> Result<u64, BlobWriteError> {
        if self.written == self.count {
            return Err(BlobWriteError::Count {
                count: self.count,
                written: self.written + 1,
            });
        }
        if padding_bits >= 8 || (padding_bits > 0 && (!data_type.is_sub_byte() || data.is_empty()))
        {
            return Err(BlobWriteError::Padding {
                padding_bits,
                size: data.len() as u64,
                data_type: data_type.name(),
            });
        }
        let record = align(self.pos);
        self.out
            .write_all(&[0u8; ALIGNMENT as usize][..(record - self.pos) as usize])?;
        let mut meta = [0u8; RECORD_BYTES as usize];
        meta[0..4].copy_from_slice(&SENTINEL.to_le_bytes());
        meta[4..8].copy_from_slice(&data_type.0.to_le_bytes());
        meta[8..16].copy_from_slice(&(data.len() as u64).to_le_bytes());
        meta[16..24].copy_from_slice(&(record + RECORD_BYTES).to_le_bytes());
        meta[24..32].copy_from_slice(&padding_bits.to_le_bytes());
        self.out.write_all(&meta)?;
        self.out.write_all(data)?;
        self.pos = record + RECORD_BYTES + data.len() as u64;
        self.written += 1;
        Ok(record)
    }

    /// Checks the count and returns the writer and the file's size.
    pub fn finish(mut self) -> Result<(W, u64), BlobWriteError> {
        if self.written != self.count {
            return Err(BlobWriteError::Count {
                count: self.count,
                written: self.written,
            });
        }
        self.out.flush()?;
        Ok((self.out, self.pos))
    }
}

/// Reads one blob's data (bounded by the record, which [`BlobIndex::read`] checked).
pub fn read_blob_data<R: Read + Seek>(reader: &mut R, record: &BlobRecord) -> io::Result<Vec<u8>> {
    reader.seek(SeekFrom::Start(record.data_offset))?;
    let mut data = Vec::new();
    reader.take(record.size).read_to_end(&mut data)?;
    if data.len() as u64 != record.size {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "blob data shorter than its record says",
        ));
    }
    Ok(data)
}

/// A blob file's path together with its index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobFile {
    /// The path the program names (`@model_path/weights/weight.bin`).
    pub program_name: String,
    /// Where it is on disk.
    pub path: PathBuf,
    pub index: BlobIndex,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Cursor;

    fn write_file(blobs: &[(BlobDataType, Vec<u8>, u64)]) -> Vec<u8> {
        let mut w = BlobWriter::new(Vec::new(), blobs.len() as u32).unwrap();
        for (t, d, p) in blobs {
            w.write_blob(*t, d, *p).unwrap();
        }
        w.finish().unwrap().0
    }

    #[test]
    fn writes_the_documented_layout() {
        let f = write_file(&[
            (BlobDataType::FLOAT16, vec![1; 6], 0),
            (BlobDataType::INT4, vec![0x21; 3], 4),
        ]);
        assert_eq!(&f[0..8], &[2, 0, 0, 0, 2, 0, 0, 0]);
        assert_eq!(&f[64..68], &SENTINEL.to_le_bytes());
        assert_eq!(f.len(), 192 + 64 + 3);
        let idx = BlobIndex::read(&mut Cursor::new(&f), f.len() as u64).unwrap();
        assert_eq!(idx.records.len(), 2);
        assert_eq!(idx.records[0].metadata_offset, 64);
        assert_eq!(idx.records[0].data_offset, 128);
        assert_eq!(idx.records[1].metadata_offset, 192);
        assert_eq!(idx.records[1].elements(), Some(5));
        assert_eq!(idx.trailing_bytes, 0);
        assert_eq!(layout([6, 3]), (vec![64, 192], f.len() as u64));
    }

    #[test]
    fn rejects_hostile_files() {
        let good = write_file(&[
            (BlobDataType::FLOAT16, vec![1; 100], 0),
            (BlobDataType::INT8, vec![2; 10], 0),
        ]);
        let read = |b: &[u8]| BlobIndex::read(&mut Cursor::new(b), b.len() as u64);
        assert!(matches!(
            read(&good[..10]),
            Err(BlobIndexError::Format(BlobError::ShortHeader { .. }))
        ));
        // Truncated: the second record is gone.
        assert!(matches!(
            read(&good[..260]),
            Err(BlobIndexError::Format(BlobError::MissingRecord {
                index: 1,
                ..
            }))
        ));
        // Truncated inside the first blob's data.
        let one = write_file(&[(BlobDataType::FLOAT16, vec![1; 100], 0)]);
        assert!(matches!(
            read(&one[..150]),
            Err(BlobIndexError::Format(BlobError::DataPastEnd {
                index: 0,
                ..
            }))
        ));
        // Too short for the records the header counts.
        assert!(matches!(
            read(&good[..150]),
            Err(BlobIndexError::Format(BlobError::CountTooLarge {
                count: 2,
                ..
            }))
        ));
        let mut bad = good.clone();
        bad[4] = 1;
        assert!(matches!(
            read(&bad),
            Err(BlobIndexError::Format(BlobError::Version { version: 1 }))
        ));
        let mut bad = good.clone();
        bad[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            read(&bad),
            Err(BlobIndexError::Format(BlobError::CountTooLarge { .. }))
        ));
        let mut bad = good.clone();
        bad[64] = 0;
        assert!(matches!(
            read(&bad),
            Err(BlobIndexError::Format(BlobError::Sentinel { .. }))
        ));
        let mut bad = good.clone();
        bad[80..88].copy_from_slice(&640u64.to_le_bytes());
        assert!(matches!(
            read(&bad),
            Err(BlobIndexError::Format(BlobError::OutOfOrder { .. }))
        ));
        let mut bad = good.clone();
        bad[72..80].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            read(&bad),
            Err(BlobIndexError::Format(BlobError::DataPastEnd { .. }))
        ));
        let mut bad = good.clone();
        bad[88] = 3;
        assert!(matches!(
            read(&bad),
            Err(BlobIndexError::Format(BlobError::Padding { .. }))
        ));
    }

    #[test]
    fn writer_checks_its_count() {
        let w = BlobWriter::new(Vec::new(), 1).unwrap();
        assert!(matches!(
            w.finish(),
            Err(BlobWriteError::Count {
                count: 1,
                written: 0
            })
        ));
        let mut w = BlobWriter::new(Vec::new(), 0).unwrap();
        assert!(w.write_blob(BlobDataType::INT8, &[1], 0).is_err());
    }

    #[test]
    fn sub_byte_packing_is_lsb_first() {
        assert_eq!(pack_sub_byte(&[1, 2, 3], 4), vec![0x21, 0x03]);
        assert_eq!(
            pack_sub_byte(&[1, 0, 1, 1, 0, 0, 0, 0, 1], 1),
            vec![0b0000_1101, 1]
        );
        // 3-bit values straddle bytes: 7 at bits 0-2, 5 at 3-5, 6 at 6-8.
        assert_eq!(pack_sub_byte(&[7, 5, 6], 3), vec![0b1010_1111, 0b0000_0001]);
        assert_eq!(padding_bits(3, 4), 4);
        assert_eq!(padding_bits(8, 1), 0);
        assert_eq!(padding_bits(3, 3), 7);
    }

    proptest! {
        #[test]
        fn sub_byte_round_trip(bits in 1u32..8, values in proptest::collection::vec(any::<u8>(), 0..100)) {
            let mask = ((1u16 << bits) - 1) as u8;
            let v: Vec<u8> = values.iter().map(|x| x & mask).collect();
            let packed = pack_sub_byte(&v, bits);
            prop_assert_eq!(unpack_sub_byte(&packed, bits, v.len()).unwrap(), v);
        }

        #[test]
        fn arbitrary_blob_files_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600), count in 0u32..6) {
            let mut b = bytes;
            if b.len() >= 8 {
                b[0..4].copy_from_slice(&count.to_le_bytes());
                b[4..8].copy_from_slice(&2u32.to_le_bytes());
            }
            let _ = BlobIndex::read(&mut Cursor::new(&b), b.len() as u64);
        }

        #[test]
        fn written_files_read_back(sizes in proptest::collection::vec(0usize..200, 0..6)) {
            let blobs: Vec<_> = sizes.iter().map(|&n| (BlobDataType::UINT8, vec![7u8; n], 0)).collect();
            let f = write_file(&blobs);
            let idx = BlobIndex::read(&mut Cursor::new(&f), f.len() as u64).unwrap();
            let (offsets, len) = layout(sizes.iter().map(|&n| n as u64));
            prop_assert_eq!(idx.records.iter().map(|r| r.metadata_offset).collect::<Vec<_>>(), offsets);
            prop_assert_eq!(len, f.len() as u64);
            for (r, &n) in idx.records.iter().zip(&sizes) {
                prop_assert_eq!(read_blob_data(&mut Cursor::new(&f), r).unwrap(), vec![7u8; n]);
            }
        }
    }
}
