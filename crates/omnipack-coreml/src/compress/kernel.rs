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

    /// When every block is one contiguous run of elements (the axes before the first axis
    /// whose block size is not 1 all have block size 1, and the axes after it are whole), the
    /// length of that run: block `c` is elements `c * len .. (c + 1) * len`.
    fn contiguous_block_len(&self) -> Option<usize> {
        let first = self.blocks.iter().position(|&b| b != 1);
        let Some(a) = first else {
            return Some(1);
        };
        if self.blocks[a + 1..].iter().any(|&b| b != 0) {
            return None;
        }
        Some(self.extent(a) * self.dims[a + 1..].iter().product::<usize>())
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

/// Elements per parallel piece (even, so int4 pieces are whole bytes).
const PIECE: usize = 1 << 14;

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
    if let Some(len) = grid.contiguous_block_len() {
        return quantize_contiguous(data, grid.scale_count(), len, bits);
    }
    // Pass 1: the largest magnitude of every block, as the bits of a non-negative float
    // (whose integer order is the order of the values).
    let max_bits = general_maxima(data, grid);
    // Non-finite values have the largest magnitudes: report the first one.
    let limit = match data {
        FloatData::F16(_) => 0x7c00,
        FloatData::F32(_) => 0x7f80_0000,
    };
    if max_bits.iter().any(|&m| m >= limit) {
        return Err(KernelError::NonFinite(first_non_finite(data)));
    }
    // The scales, in the weight's float type (and as f32 for the code pass).
    let float = data.float_type();
    let mut scales = vec![0u8; max_bits.len() * width];
    let scale_f32: Vec<f32> = max_bits
        .iter()
        .zip(scales.chunks_exact_mut(width))
        .map(|(&m, out)| {
            let r = match float {
                FloatType::F16 => f16::from_bits(m as u16).to_f32(),
                FloatType::F32 => f32::from_bits(m),
            };
            scale_of(r, float, bits, out)
        })
        .collect();
    // Pass 2: the codes, in pieces of whole output bytes.
    let mut out = vec![0u8; bits.data_bytes(n as u64) as usize];
    let piece_bytes = match bits {
        Bits::Int8 => PIECE,
        Bits::Int4 => PIECE / 2,
    };
    out.par_chunks_mut(piece_bytes)
        .enumerate()
        .for_each(|(p, chunk)| {
            let start = p * PIECE;
            let end = (start + PIECE).min(n);
            codes(data, grid, &scale_f32, bits, start, end, chunk);
        });
    Ok(Quantized { data: out, scales })
}

/// The scale of a block whose largest magnitude is `r` (exact in f32): `(r + r) / Q` in the
/// weight's float type, written to `out` (little-endian) and returned as f32.
#[inline]
fn scale_of(r: f32, float: FloatType, bits: Bits, out: &mut [u8]) -> f32 {
    let q = bits.range();
    match float {
        FloatType::F16 => {
            let two_r = f16::from_f32(r + r).to_f32();
            let s = f16::from_f32(two_r / q);
            out.copy_from_slice(&s.to_bits().to_le_bytes());
            s.to_f32()
        }
        FloatType::F32 => {
            let s = (r + r) / q;
            out.copy_from_slice(&s.to_le_bytes());
            s
        }
    }
}

/// One pass for grids whose block `c` is elements `c * len .. (c + 1) * len` (`linear`,
/// `gather` and `conv` weights): pieces of whole blocks in parallel, each decoded once (f16
/// through omnipack-quant's exact vectorised conversion), its blocks' maxima, scales and codes
/// computed in place.
fn quantize_contiguous(
    data: FloatData<'_>,
    cells: usize,
    len: usize,
    bits: Bits,
) -> Result<Quantized, KernelError> {
    use omnipack_quant::Dtype;
    use omnipack_quant::kernels::{decode_f32, encode_f32};
    let float = data.float_type();
    let width = float.bytes() as usize;
    let mut per = (PIECE / len).max(1);
    if bits == Bits::Int4 && len % 2 == 1 && per % 2 == 1 {
        // Pieces of an even number of elements are whole bytes of int4 codes.
        per += 1;
    }
    let n = cells * len;
    let mut out = vec![0u8; bits.data_bytes(n as u64) as usize];
    let mut scales = vec![0u8; cells * width];
    let piece_bytes = bits.data_bytes((per * len) as u64) as usize;
    let max_code = f32::from(bits.max_code());
    let finite = out
        .par_chunks_mut(piece_bytes)
        .zip(scales.par_chunks_mut(per * width))
        .enumerate()
        .map(|(p, (codes, scale_bytes))| {
            let blocks = scale_bytes.len() / width;
            let start = p * per * len;
            let end = start + blocks * len;
            let mut w = vec![0f32; end - start];
            match data {
                FloatData::F16(b) => decode_f32(&b[2 * start..2 * end], Dtype::F16, &mut w),
                FloatData::F32(b) => decode_f32(&b[4 * start..4 * end], Dtype::F32, &mut w),
            }
            for (block, out) in w
                .chunks_exact_mut(len)
                .zip(scale_bytes.chunks_exact_mut(width))
            {
                // Magnitudes as integers (below 2^31), so the maximum vectorises.
                let m = block
                    .iter()
                    .map(|x| (x.to_bits() & 0x7fff_ffff) as i32)
                    .fold(0, i32::max);
                if m >= 0x7f80_0000 {
                    return false;
                }
                let s = scale_of(f32::from_bits(m as u32), float, bits, out);
                for x in block.iter_mut() {
                    *x /= s;
                }
            }
            if float == FloatType::F16 {
                let mut h = vec![0u8; 2 * w.len()];
                encode_f32(&w, Dtype::F16, &mut h);
                decode_f32(&h, Dtype::F16, &mut w);
            }
            write_codes(&w, bits, max_code, codes);
            true
        })
        .reduce(|| true, |a, b| a && b);
    if !finite {
        return Err(KernelError::NonFinite(first_non_finite(data)));
    }
    Ok(Quantized { data: out, scales })
}

/// Codes of quotients `w` into `out` (int8 bytes, or int4 packed low nibble first).
fn write_codes(w: &[f32], bits: Bits, max_code: f32, out: &mut [u8]) {
    match bits {
        Bits::Int8 => {
            for (o, &x) in out.iter_mut().zip(w) {
                *o = code_of(x, max_code) as u8;
            }
        }
        Bits::Int4 => {
            let pairs = w.len() / 2;
            for (o, pair) in out.iter_mut().zip(w.chunks_exact(2)) {
                let lo = (code_of(pair[0], max_code) as u8) & 0x0f;
                let hi = (code_of(pair[1], max_code) as u8) & 0x0f;
                *o = lo | (hi << 4);
            }
            if w.len() % 2 == 1 {
                out[pairs] = (code_of(w[w.len() - 1], max_code) as u8) & 0x0f;
            }
        }
    }
}

/// The magnitude bits of element `i`.
#[inline(always)]
fn magnitude(data: FloatData<'_>, i: usize) -> u32 {
    match data {
        FloatData::F16(b) => u32::from(FloatData::f16_bits(b, i) & 0x7fff),
        FloatData::F32(b) => FloatData::f32_bits(b, i) & 0x7fff_ffff,
    }
}

/// Block maxima of any grid: slabs of the first axis in parallel, each into its own maxima,
/// merged (a maximum does not depend on the order).
fn general_maxima(data: FloatData<'_>, grid: &BlockGrid) -> Vec<u32> {
    let rows = grid.dims[0];
    let row_len = grid.elements() / rows;
    let slab = (PIECE / row_len).max(1);
    let slabs: Vec<usize> = (0..rows).step_by(slab).collect();
    slabs
        .into_par_iter()
        .map(|r0| {
            let mut max = vec![0u32; grid.scale_count()];
            let start = r0 * row_len;
            let end = ((r0 + slab).min(rows)) * row_len;
            for_each_element_cell(grid, start, end, |e, cell| {
                let m = magnitude(data, e);
                if m > max[cell] {
                    max[cell] = m;
                }
            });
            max
        })
        .reduce_with(|mut a, b| {
            for (x, y) in a.iter_mut().zip(b) {
                *x = (*x).max(y);
            }
            a
        })
        .unwrap_or_else(|| vec![0; grid.scale_count()])
}

/// Calls `f(element, block)` for elements `start..end`, in order.
fn for_each_element_cell(
    grid: &BlockGrid,
    start: usize,
    end: usize,
    mut f: impl FnMut(usize, usize),
) {
    let rank = grid.dims.len();
    let last = rank - 1;
    let row = grid.dims[last];
    let block = grid.blocks[last];
    let mut index = vec![0usize; rank];
    let mut e = start;
    while e < end {
        let mut rest = e;
        for a in (0..rank).rev() {
            index[a] = rest % grid.dims[a];
            rest /= grid.dims[a];
        }
        let i0 = index[last];
        let run_end = (e + (row - i0)).min(end);
        index[last] = 0;
        let base = grid.cell_of(&index);
        for (k, el) in (e..run_end).enumerate() {
            f(el, base + (i0 + k).checked_div(block).unwrap_or(0));
        }
        e = run_end;
    }
}

/// The first NaN or infinity, in element order.
fn first_non_finite(data: FloatData<'_>) -> NonFinite {
    let (n, limit) = match data {
        FloatData::F16(b) => (b.len() / 2, 0x7c00),
        FloatData::F32(b) => (b.len() / 4, 0x7f80_0000),
    };
    let index = (0..n)
        .into_par_iter()
        .find_first(|&i| magnitude(data, i) >= limit)
        .unwrap_or(0);
    NonFinite {
        index,
        nan: magnitude(data, index) > limit,
    }
}

/// Codes of elements `start..end` of any grid into `out` (whose first byte holds element
/// `start`): `w / scale` in f32 (rounded to fp16 for fp16 weights, through omnipack-quant's
/// exact vectorised conversions), then rounded half to even and clipped.
fn codes(
    data: FloatData<'_>,
    grid: &BlockGrid,
    scales: &[f32],
    bits: Bits,
    start: usize,
    end: usize,
    out: &mut [u8],
) {
    use omnipack_quant::Dtype;
    use omnipack_quant::kernels::{decode_f32, encode_f32};
    let n = end - start;
    let mut w = vec![0f32; n];
    match data {
        FloatData::F16(b) => decode_f32(&b[2 * start..2 * end], Dtype::F16, &mut w),
        FloatData::F32(b) => decode_f32(&b[4 * start..4 * end], Dtype::F32, &mut w),
    }
    for_each_element_cell(grid, start, end, |e, cell| w[e - start] /= scales[cell]);
    if let FloatData::F16(_) = data {
        let mut h = vec![0u8; 2 * n];
        encode_f32(&w, Dtype::F16, &mut h);
        decode_f32(&h, Dtype::F16, &mut w);
    }
    write_codes(&w, bits, f32::from(bits.max_code()), out);
}

/// One code: `clip(round_half_even(t), -max, max)`, a NaN giving 0 (as numpy's cast of NaN
/// does here). Clipping to the integer bounds first gives the same result. Adding 1.5 * 2^23
/// rounds any |t| <= 2^22 to an integer, ties to even, in the low bits of the sum, which are
/// read without a float-to-int conversion (so the loop vectorises).
#[inline(always)]
fn code_of(t: f32, max: f32) -> i8 {
    const MAGIC: f32 = 12_582_912.0;
    let t = if t.is_nan() { 0.0 } else { t };
    let c = if t > max {
        max
    } else if t < -max {
        -max
    } else {
        t
    };
    ((c + MAGIC).to_bits() as i32 - MAGIC.to_bits() as i32) as i8
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn f16_bytes(v: &[f32]) -> Vec<u8> {
        v.iter()
            .flat_map(|&x| f16::from_f32(x).to_bits().to_le_bytes())
            .collect()
    }

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn codes_of(q: &Quantized, bits: Bits, n: usize) -> Vec<i8> {
        (0..n).map(|e| code_at(q, bits, e)).collect()
    }

    /// Rows: a scale that underflows to 0 (so codes from +-inf and 0/0), an ordinary row, a
    /// row whose `R + R` overflows (scale +inf, codes 0), a constant row. Expected values from
    /// coremltools 9.0 (`compute_qparams_by_dtype`, mode LINEAR_SYMMETRIC, block sizes [1, 0]).
    const ROWS: [f32; 16] = [
        6e-8, 0.0, -6e-8, 0.0, 0.1, -0.25, 0.3333, 1.0, 65504.0, -65504.0, 1.0, 0.0, 3.0, 3.0, 3.0,
        3.0,
    ];

    #[test]
    fn fp16_edge_rows_match_coremltools() {
        let grid = BlockGrid::new(&[4, 4], &[1, 0]).unwrap();
        let data = f16_bytes(&ROWS);
        for (bits, codes, scales) in [
            (
                Bits::Int8,
                [
                    127, 0, -127, 0, 13, -32, 42, 127, 0, 0, 0, 0, 127, 127, 127, 127,
                ],
                [0u16, 8200, 31744, 9740],
            ),
            (
                Bits::Int4,
                [7, 0, -7, 0, 1, -2, 2, 7, 0, 0, 0, 0, 7, 7, 7, 7],
                [0, 12434, 31744, 14043],
            ),
        ] {
            let q = quantize(FloatData::F16(&data), &grid, bits).unwrap();
            assert_eq!(codes_of(&q, bits, 16), codes.to_vec(), "{bits:?}");
            let s: Vec<u16> = q
                .scales
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect();
            assert_eq!(s, scales.to_vec(), "{bits:?}");
        }
    }

    #[test]
    fn fp32_edge_rows_match_coremltools() {
        let mut rows: Vec<f32> = ROWS.iter().map(|&x| f16::from_f32(x).to_f32()).collect();
        rows[8..12].copy_from_slice(&[3.0e38, -3.0e38, 1.0, 0.0]);
        let grid = BlockGrid::new(&[4, 4], &[1, 0]).unwrap();
        let data = f32_bytes(&rows);
        let q = quantize(FloatData::F32(&data), &grid, Bits::Int8).unwrap();
        assert_eq!(
            codes_of(&q, Bits::Int8, 16),
            vec![
                127, 0, -127, 0, 13, -32, 42, 127, 0, 0, 0, 0, 127, 127, 127, 127
            ]
        );
        let s: Vec<u32> = q
            .scales
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(s, vec![805372420, 1006699012, 2139095040, 1019314950]);
    }

    #[test]
    fn int4_packs_low_nibble_first() {
        let grid = BlockGrid::new(&[1, 3], &[1, 0]).unwrap();
        let data = f16_bytes(&[1.0, -1.0, 0.5]);
        let q = quantize(FloatData::F16(&data), &grid, Bits::Int4).unwrap();
        // codes 7, -7 (0b1001), 4 (0.5 / (2/14) = 3.5 -> 4 half to even); padding nibble 0.
        assert_eq!(q.data, vec![0x97, 0x04]);
    }

    #[test]
    fn non_finite_values_are_reported_first_in_element_order() {
        let grid = BlockGrid::new(&[2, 4], &[1, 0]).unwrap();
        let mut v = vec![1.0f32; 8];
        v[6] = f32::NAN;
        v[2] = f32::INFINITY;
        for data in [f16_bytes(&v), f32_bytes(&v)] {
            let d = if data.len() == 16 {
                FloatData::F16(&data)
            } else {
                FloatData::F32(&data)
            };
            assert_eq!(
                quantize(d, &grid, Bits::Int8),
                Err(KernelError::NonFinite(NonFinite {
                    index: 2,
                    nan: false
                }))
            );
        }
        let short = f16_bytes(&[1.0; 7]);
        assert!(matches!(
            quantize(FloatData::F16(&short), &grid, Bits::Int8),
            Err(KernelError::Length { .. })
        ));
    }

    #[test]
    fn grids_refuse_what_does_not_divide() {
        assert!(BlockGrid::new(&[4, 6], &[1, 4]).is_none());
        assert!(BlockGrid::new(&[4, 0], &[1, 0]).is_none());
        assert!(BlockGrid::new(&[4], &[1, 0]).is_none());
        let g = BlockGrid::new(&[4, 8, 3], &[1, 4, 0]).unwrap();
        assert_eq!(g.scale_shape(), &[4, 2, 1]);
        assert_eq!(g.scale_count(), 8);
    }

    /// A weight of about 300k elements quantized with 1, 2 and 4 threads.
    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let n = 96 * 3200;
        let v: Vec<f32> = (0..n)
            .map(|i| ((i as f32 * 0.618_034).fract() - 0.5) * (1.0 + (i % 97) as f32))
            .collect();
        let data = f16_bytes(&v);
        for (dims, blocks, bits) in [
            (vec![96, 3200], vec![1, 0], Bits::Int8),
            (vec![96, 3200], vec![1, 32], Bits::Int4),
            (vec![3200, 96], vec![0, 1], Bits::Int8),
            (vec![32, 3, 100, 32], vec![1, 3, 0, 0], Bits::Int4),
        ] {
            let grid = BlockGrid::new(&dims, &blocks).unwrap();
            let run = |threads: usize| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap()
                    .install(|| quantize(FloatData::F16(&data), &grid, bits).unwrap())
            };
            let one = run(1);
            assert_eq!(run(2), one, "{dims:?} {blocks:?}");
            assert_eq!(run(4), one, "{dims:?} {blocks:?}");
        }
    }

    /// Thread pools of one and three threads, built once.
    fn pools() -> &'static [rayon::ThreadPool; 2] {
        static POOLS: std::sync::OnceLock<[rayon::ThreadPool; 2]> = std::sync::OnceLock::new();
        POOLS.get_or_init(|| {
            [1, 3].map(|n| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .build()
                    .unwrap()
            })
        })
    }

    /// A shape of rank 2 to 4 with a block size per axis that divides it.
    fn arb_grid() -> impl Strategy<Value = (Vec<usize>, Vec<usize>)> {
        (
            proptest::collection::vec((1usize..6, 0usize..4), 2..5),
            1usize..400,
        )
            .prop_map(|(axes, rows)| {
                let mut dims = Vec::new();
                let mut blocks = Vec::new();
                for (i, (n, b)) in axes.into_iter().enumerate() {
                    // Axis 0 per channel, the others whole, in blocks of 1, 2 or `n`.
                    let block = if i == 0 { 1 } else { [0, 1, 2, 0][b] };
                    // The first axis sometimes long, so the work splits into several pieces.
                    let d = if i == 0 {
                        n * rows
                    } else if block == 2 {
                        2 * n
                    } else {
                        n + 1
                    };
                    dims.push(d);
                    blocks.push(block);
                }
                (dims, blocks)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn codes_are_in_range_and_errors_bounded(
            (dims, blocks) in arb_grid(),
            seed in any::<u64>(),
            int4 in any::<bool>(),
            fp32 in any::<bool>(),
            scale_exp in -8i32..8,
        ) {
            let grid = BlockGrid::new(&dims, &blocks).unwrap();
            let n = grid.elements();
            let mut x = seed;
            let values: Vec<f32> = (0..n).map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (((x >> 40) as f32 / (1u64 << 24) as f32) - 0.5) * 2f32.powi(scale_exp)
            }).collect();
            let (bytes, float) = if fp32 {
                (f32_bytes(&values), FloatType::F32)
            } else {
                (f16_bytes(&values), FloatType::F16)
            };
            let stored: Vec<f64> = if fp32 {
                values.iter().map(|&v| f64::from(v)).collect()
            } else {
                values.iter().map(|&v| f64::from(f16::from_f32(v).to_f32())).collect()
            };
            let data = if fp32 { FloatData::F32(&bytes) } else { FloatData::F16(&bytes) };
            let bits = if int4 { Bits::Int4 } else { Bits::Int8 };
            let q = quantize(data, &grid, bits).unwrap();
            prop_assert_eq!(q.data.len() as u64, bits.data_bytes(n as u64));
            prop_assert_eq!(q.scales.len() as u64, grid.scale_count() as u64 * float.bytes());
            let max = bits.max_code();
            for e in 0..n {
                let c = code_at(&q, bits, e);
                prop_assert!((-max..=max).contains(&c), "code {} out of range", c);
            }
            let back = dequantize(&q, &grid, float, bits);
            // Per block: |w - q s| <= 0.7 s (rounding to the code, the fp16 quotient and the
            // rounded scale together) plus, for a scale in fp16's subnormal range (where its
            // rounding error is up to 2^-25 absolute), what that error costs on the largest code.
            let slack = match float {
                FloatType::F16 => f64::from(max) * 2f64.powi(-25),
                FloatType::F32 => 0.0,
            };
            let rank = dims.len();
            let mut index = vec![0usize; rank];
            for e in 0..n {
                let mut rest = e;
                for a in (0..rank).rev() {
                    index[a] = rest % dims[a];
                    rest /= dims[a];
                }
                let cell = grid.cell_of(&index);
                let s = match float {
                    FloatType::F16 => f64::from(f16::from_bits(u16::from_le_bytes([q.scales[2 * cell], q.scales[2 * cell + 1]])).to_f32()),
                    FloatType::F32 => f64::from(f32::from_le_bytes(q.scales[4 * cell..4 * cell + 4].try_into().unwrap())),
                };
                let err = (stored[e] - back[e]).abs();
                prop_assert!(err <= 0.7 * s + slack, "element {}: {} vs {} (scale {})", e, stored[e], back[e], s);
            }
            // The same bytes with one thread and with three.
            for pool in pools() {
                prop_assert_eq!(pool.install(|| quantize(data, &grid, bits)).unwrap(), q.clone());
            }
        }
    }
}
