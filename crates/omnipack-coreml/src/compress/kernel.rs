//! Symmetric linear quantization of one weight, bit-exact with coremltools 9.0's
//! `linear_quantize_weights` in `mode="linear_symmetric"` for signed 8- and 4-bit data.
//!
//! The weight is cut into blocks: along each axis either the whole axis (block size 0) or
//! blocks of a given size; every block has one scale (per channel = block size 1 on the output
//! axis and 0 elsewhere; per block = 1 on the output axis and the block size on the input
//! axis). With `R` the largest magnitude in a block and `Q` = 254 (int8) or 14 (int4), all in
//! the weight's own float type (fp16 arithmetic rounds each result to fp16, to nearest even):
//!
//! * `scale = (R + R) / Q`;
//! * `q = clip(round_half_even(w / scale), -Q/2, Q/2)` (so -127..127 or -7..7), a NaN quotient
//!   (`0 / 0` in an all-zero block) giving 0;
//! * no zero point (signed symmetric data is centred on 0).
//!
//! Codes are stored in the weight's element order: int8 one byte each (two's complement),
//! int4 two per byte, the first element in the low nibble. Scales are stored in the weight's
//! float type, in the element order of the block grid.
//!
//! The work is split into independent pieces (blocks for the scales, runs of elements for the
//! codes) that rayon runs in parallel; every piece computes exactly what a sequential pass
//! would, so the result does not depend on the number of threads.

use half::f16;
use rayon::prelude::*;

/// Bits of the quantized data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bits {
    Int8,
    Int4,
}

impl Bits {
    /// The largest code magnitude (127 or 7).
    pub fn max_code(self) -> i8 {
        match self {
            Self::Int8 => 127,
            Self::Int4 => 7,
        }
    }

    /// `Q`: the width of the symmetric code range (254 or 14).
    fn range(self) -> f32 {
        2.0 * f32::from(self.max_code())
    }

    /// Bytes of packed data for `elements` codes.
    pub fn data_bytes(self, elements: u64) -> u64 {
        match self {
            Self::Int8 => elements,
            Self::Int4 => elements.div_ceil(2),
        }
    }
}

/// The float type of a weight (and of its scales).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FloatType {
    F16,
    F32,
}

impl FloatType {
    pub fn bytes(self) -> u64 {
        match self {
            Self::F16 => 2,
            Self::F32 => 4,
        }
    }
}

/// How a weight is cut into blocks: its shape and, per axis, the block size (0 = the whole
/// axis). Every block size divides its axis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockGrid {
    dims: Vec<usize>,
    blocks: Vec<usize>,
    /// Blocks per axis (the scale tensor's shape).
    cells: Vec<usize>,
}

impl BlockGrid {
    /// `None` when the ranks differ, an axis is empty, a block size does not divide its axis,
    /// or the element count does not fit in memory sizes.
    pub fn new(dims: &[usize], blocks: &[usize]) -> Option<Self> {
        if dims.len() != blocks.len() || dims.contains(&0) {
            return None;
        }
        let mut cells = Vec::with_capacity(dims.len());
        for (&d, &b) in dims.iter().zip(blocks) {
            if b == 0 {
                cells.push(1);
            } else if d % b == 0 {
                cells.push(d / b);
            } else {
                return None;
            }
        }
        dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d))?;
        Some(Self {
            dims: dims.to_vec(),
            blocks: blocks.to_vec(),
            cells,
        })
    }

    /// Elements of the weight.
    pub fn elements(&self) -> usize {
        self.dims.iter().product()
    }

    /// The scale tensor's shape: blocks per axis.
    pub fn scale_shape(&self) -> &[usize] {
        &self.cells
    }

    /// Number of blocks (= scales).
    pub fn scale_count(&self) -> usize {
        self.cells.iter().product()
    }

    /// Extent of a block along `axis`.
    fn extent(&self, axis: usize) -> usize {
        if self.blocks[axis] == 0 {
            self.dims[axis]
        } else {
            self.blocks[axis]
        }
    }

    /// The block of the element at multi-index `index`, as a flat index into the scales.
    fn cell_of(&self, index: &[usize]) -> usize {
        let mut cell = 0;
        for (a, &i) in index.iter().enumerate() {
            let c = i.checked_div(self.blocks[a]).unwrap_or(0);
            cell = cell * self.cells[a] + c;
        }
        cell
    }

    /// Calls `f(start, len)` for every contiguous run (along the last axis) of the elements of
    /// block `cell`, in element order.
    fn for_each_run(&self, cell: usize, mut f: impl FnMut(usize, usize)) {
        let rank = self.dims.len();
        // The block's first element along every axis.
        let mut origin = vec![0usize; rank];
        let mut rest = cell;
        for a in (0..rank).rev() {
            origin[a] = (rest % self.cells[a])
                * if self.blocks[a] == 0 {
                    0
                } else {
                    self.blocks[a]
                };
            rest /= self.cells[a];
        }
        let last = rank - 1;
        let run = self.extent(last);
        // Odometer over the block's extent on the axes before the last.
        let mut offset = vec![0usize; last];
        loop {
            let mut start = 0;
            for a in 0..rank {
                let i = origin[a] + if a < last { offset[a] } else { 0 };
                start = start * self.dims[a] + i;
            }
            f(start, run);
            let mut a = last;
            loop {
                if a == 0 {
                    return;
                }
                a -= 1;
                offset[a] += 1;
                if offset[a] < self.extent(a) {
                    break;
                }
                offset[a] = 0;
            }
        }
    }
}

/// A weight's data: little-endian fp16 or fp32 values.
#[derive(Debug, Clone, Copy)]
pub enum FloatData<'a> {
    F16(&'a [u8]),
    F32(&'a [u8]),
}

impl FloatData<'_> {
    pub fn float_type(&self) -> FloatType {
        match self {
            Self::F16(_) => FloatType::F16,
            Self::F32(_) => FloatType::F32,
        }
    }

    fn f16_bits(b: &[u8], i: usize) -> u16 {
        u16::from_le_bytes([b[2 * i], b[2 * i + 1]])
    }

    fn f32_bits(b: &[u8], i: usize) -> u32 {
        u32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])
    }
}

/// A value that is not finite, found while quantizing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NonFinite {
    /// Flat index of the first such element.
    pub index: usize,
    /// True for NaN, false for an infinity.
    pub nan: bool,
}

/// Why a weight cannot be quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelError {
    /// The data holds a different number of elements than the grid.
    Length { expected: usize, found: usize },
    /// A NaN or an infinity (coremltools leaves a weight with an infinity uncompressed and
    /// quantizes NaN to meaningless scales; omnipack asks the user instead).
    NonFinite(NonFinite),
}

/// A quantized weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quantized {
    /// Codes: int8 bytes, or int4 packed two per byte (low nibble first).
    pub data: Vec<u8>,
    /// Scales, little-endian, in the weight's float type, in block-grid order.
    pub scales: Vec<u8>,
}

/// Elements per parallel piece of the code pass (even, so int4 pieces are whole bytes).
const CODE_PIECE: usize = 1 << 16;

/// Quantizes `data` on `grid` to `bits` (see the module docs for the rule).
pub fn quantize(
    data: FloatData<'_>,
    grid: &BlockGrid,
    bits: Bits,
) -> Result<Quantized, KernelError> {
    let n = grid.elements();
    let raw = match data {
        FloatData::F16(b) | FloatData::F32(b) => b.len(),
    };
    let width = data.float_type().bytes() as usize;
    if n.checked_mul(width) != Some(raw) {
        return Err(KernelError::Length {
            expected: n,
            found: raw / width,
        });
    }
    let cells = grid.scale_count();
    // Pass 1: the largest magnitude of every block, as bits of a non-negative float (whose
    // order is the order of the values), and the first non-finite element.
    let min_len = (4096 / (n / cells).max(1)).max(1);
    let maxima: Vec<Result<u32, NonFinite>> = (0..cells)
        .into_par_iter()
        .with_min_len(min_len)
        .map(|cell| block_max(data, grid, cell))
        .collect();
    let mut max_bits = Vec::with_capacity(cells);
    let mut first: Option<NonFinite> = None;
    for m in maxima {
        match m {
            Ok(b) => max_bits.push(b),
            Err(e) => {
                if first.is_none_or(|f| e.index < f.index) {
                    first = Some(e);
                }
                max_bits.push(0);
            }
        }
    }
    if let Some(e) = first {
        return Err(KernelError::NonFinite(e));
    }
    // The scales, in the weight's float type (and as f32 for the code pass).
    let q = bits.range();
    let (scales, scale_f32): (Vec<u8>, Vec<f32>) = match data {
        FloatData::F16(_) => {
            let mut bytes = Vec::with_capacity(2 * cells);
            let mut f = Vec::with_capacity(cells);
            for &m in &max_bits {
                let r = f16::from_bits(m as u16).to_f32();
                let two_r = f16::from_f32(r + r).to_f32();
                let s = f16::from_f32(two_r / q);
                bytes.extend_from_slice(&s.to_bits().to_le_bytes());
                f.push(s.to_f32());
            }
            (bytes, f)
        }
        FloatData::F32(_) => {
            let mut bytes = Vec::with_capacity(4 * cells);
            let mut f = Vec::with_capacity(cells);
            for &m in &max_bits {
                let r = f32::from_bits(m);
                let s = (r + r) / q;
                bytes.extend_from_slice(&s.to_le_bytes());
                f.push(s);
            }
            (bytes, f)
        }
    };
    // Pass 2: the codes, in pieces of whole output bytes.
    let max_code = f32::from(bits.max_code());
    let mut out = vec![0u8; bits.data_bytes(n as u64) as usize];
    let piece_bytes = match bits {
        Bits::Int8 => CODE_PIECE,
        Bits::Int4 => CODE_PIECE / 2,
    };
    out.par_chunks_mut(piece_bytes)
        .enumerate()
        .for_each(|(p, chunk)| {
            let start = p * CODE_PIECE;
            let end = (start + CODE_PIECE).min(n);
            codes(data, grid, &scale_f32, max_code, bits, start, end, chunk);
        });
    Ok(Quantized { data: out, scales })
}

/// The largest magnitude in block `cell`, or its first non-finite element.
fn block_max(data: FloatData<'_>, grid: &BlockGrid, cell: usize) -> Result<u32, NonFinite> {
    let mut max = 0u32;
    let mut bad: Option<NonFinite> = None;
    match data {
        FloatData::F16(b) => grid.for_each_run(cell, |start, len| {
            for i in start..start + len {
                let m = u32::from(FloatData::f16_bits(b, i) & 0x7fff);
                if m >= 0x7c00 {
                    if bad.is_none() {
                        bad = Some(NonFinite {
                            index: i,
                            nan: m > 0x7c00,
                        });
                    }
                } else if m > max {
                    max = m;
                }
            }
        }),
        FloatData::F32(b) => grid.for_each_run(cell, |start, len| {
            for i in start..start + len {
                let m = FloatData::f32_bits(b, i) & 0x7fff_ffff;
                if m >= 0x7f80_0000 {
                    if bad.is_none() {
                        bad = Some(NonFinite {
                            index: i,
                            nan: m > 0x7f80_0000,
                        });
                    }
                } else if m > max {
                    max = m;
                }
            }
        }),
    }
    match bad {
        Some(e) => Err(e),
        None => Ok(max),
    }
}

/// One code: `clip(round_half_even(t), -max, max)`, NaN giving 0.
fn code_of(t: f32, max_code: f32) -> i8 {
    // `as` saturates and maps NaN to 0, as numpy's cast does here.
    t.round_ties_even().clamp(-max_code, max_code) as i8
}

/// Codes of elements `start..end` into `out` (whose first byte holds element `start`).
#[allow(clippy::too_many_arguments)]
fn codes(
    data: FloatData<'_>,
    grid: &BlockGrid,
    scales: &[f32],
    max_code: f32,
    bits: Bits,
    start: usize,
    end: usize,
    out: &mut [u8],
) {
    let rank = grid.dims.len();
    let last = rank - 1;
    let row = grid.dims[last];
    let mut index = vec![0usize; rank];
    let mut e = start;
    while e < end {
        // Multi-index of `e`.
        let mut rest = e;
        for a in (0..rank).rev() {
            index[a] = rest % grid.dims[a];
            rest /= grid.dims[a];
        }
        let i0 = index[last];
        let run_end = (e + (row - i0)).min(end);
        index[last] = 0;
        let base = grid.cell_of(&index);
        let block = grid.blocks[last];
        for (k, el) in (e..run_end).enumerate() {
            let j = i0 + k;
            let cell = base + j.checked_div(block).unwrap_or(0);
            let s = scales[cell];
            let code = match data {
                FloatData::F16(b) => {
                    let w = f16::from_bits(FloatData::f16_bits(b, el)).to_f32();
                    code_of(f16::from_f32(w / s).to_f32(), max_code)
                }
                FloatData::F32(b) => {
                    let w = f32::from_bits(FloatData::f32_bits(b, el));
                    code_of(w / s, max_code)
                }
            };
            let o = el - start;
            match bits {
                Bits::Int8 => out[o] = code as u8,
                Bits::Int4 => out[o / 2] |= ((code as u8) & 0x0f) << (4 * (o % 2)),
            }
        }
        e = run_end;
    }
}

/// The values the codes stand for (`code * scale`, in f64), for checks.
pub fn dequantize(q: &Quantized, grid: &BlockGrid, float: FloatType, bits: Bits) -> Vec<f64> {
    let n = grid.elements();
    let scale = |cell: usize| -> f64 {
        match float {
            FloatType::F16 => f64::from(
                f16::from_bits(u16::from_le_bytes([
                    q.scales[2 * cell],
                    q.scales[2 * cell + 1],
                ]))
                .to_f32(),
            ),
            FloatType::F32 => f64::from(f32::from_le_bytes(
                q.scales[4 * cell..4 * cell + 4]
                    .try_into()
                    .expect("4 bytes"),
            )),
        }
    };
    let rank = grid.dims.len();
    let mut index = vec![0usize; rank];
    (0..n)
        .map(|e| {
            let mut rest = e;
            for a in (0..rank).rev() {
                index[a] = rest % grid.dims[a];
                rest /= grid.dims[a];
            }
            f64::from(code_at(q, bits, e)) * scale(grid.cell_of(&index))
        })
        .collect()
}

/// The code of element `e`.
pub fn code_at(q: &Quantized, bits: Bits, e: usize) -> i8 {
    match bits {
        Bits::Int8 => q.data[e] as i8,
        Bits::Int4 => {
            let nibble = (q.data[e / 2] >> (4 * (e % 2))) & 0x0f;
            ((nibble << 4) as i8) >> 4
        }
    }
}
