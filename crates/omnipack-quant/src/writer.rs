//! The streaming, parallel quantizer: plans the output, writes the header, then produces
//! each tensor's data in row chunks (rayon across row blocks) while a writer thread hashes
//! and writes the previous chunk. Mapped input pages are released as soon as a chunk is
//! consumed, so peak memory is a few chunks plus the scales of one tensor.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::dtype::{Dtype, TensorInfo};
use crate::error::QuantError;
use crate::header::{SafetensorsFile, TensorEntry};
use crate::kernels::{self, Bnb4, ErrorStats};
use crate::spec::{
    OutputKind, OutputTensor, QuantSpec, WeightFormat, bnb_quant_state_json, data_bytes,
    header_bytes, plan_outputs,
};

/// Input bytes processed per chunk (one rayon fan-out, one write).
const CHUNK_BYTES: u64 = 16 << 20;

/// A tensor to quantize: a tensor of an opened source file, and its name in the output
/// (for example with the component prefix stripped).
#[derive(Debug, Clone)]
pub struct SelectedTensor {
    /// The opened source file.
    pub file: Arc<SafetensorsFile>,
    /// The tensor's name in `file`.
    pub tensor: String,
    /// The tensor's name in the output.
    pub output_name: String,
}

impl SelectedTensor {
    /// Selects `tensor` of `file` under its own name.
    pub fn new(file: &Arc<SafetensorsFile>, tensor: impl Into<String>) -> SelectedTensor {
        let tensor = tensor.into();
        SelectedTensor {
            file: Arc::clone(file),
            output_name: tensor.clone(),
            tensor,
        }
    }

    /// Every tensor of `file` whose name starts with `prefix`, with the prefix stripped,
    /// sorted by output name.
    pub fn with_prefix(file: &Arc<SafetensorsFile>, prefix: &str) -> Vec<SelectedTensor> {
        let mut v: Vec<SelectedTensor> = file
            .tensors()
            .filter_map(|t| {
                t.name.strip_prefix(prefix).map(|rest| SelectedTensor {
                    file: Arc::clone(file),
                    tensor: t.name.clone(),
                    output_name: rest.to_string(),
                })
            })
            .collect();
        v.sort_by(|a, b| a.output_name.cmp(&b.output_name));
        v
    }
}

/// Quality of one quantized or cast tensor against its source.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorReport {
    /// Output name of the source tensor.
    pub name: String,
    /// Source dtype.
    pub source_dtype: Dtype,
    /// Shape.
    pub shape: Vec<u64>,
    /// What happened to it (`AffineCodes`, `Nf4Packed` or `Cast`).
    pub kind: OutputKind,
    /// Error statistics.
    pub stats: ErrorStats,
}

/// The result of writing a quantized file.
#[derive(Debug, Clone)]
pub struct QuantizeOutcome {
    /// The file written.
    pub path: PathBuf,
    /// Its size in bytes (header + data), equal to [`crate::file_bytes`] of `outputs`.
    pub file_bytes: u64,
    /// Lowercase hex sha256 of the file, computed while writing.
    pub sha256: String,
    /// Tensor data bytes (DESIGN "weight bytes").
    pub data_bytes: u64,
    /// Number of parameters (elements of all input tensors).
    pub parameters: u64,
    /// The output tensors, in file order.
    pub outputs: Vec<OutputTensor>,
    /// Per quantized or cast tensor quality (empty when the report was not requested).
    pub tensors: Vec<TensorReport>,
    /// All reported tensors together.
    pub overall: ErrorStats,
}

/// Options of [`quantize_to_file_with`].
#[derive(Debug, Clone, Copy)]
pub struct QuantizeOptions {
    /// Compute the per-tensor quality report (costs a dequantization pass in the kernels).
    pub report: bool,
}

/// Quantizes `inputs` (in this order) under `spec` into the safetensors file `out`, with
/// `metadata` as `__metadata__` (see [`WeightFormat::metadata`]), including the quality
/// report. Writes a temporary file next to `out` and renames it.
pub fn quantize_to_file(
    inputs: &[SelectedTensor],
    spec: &QuantSpec,
    out: &Path,
    metadata: &BTreeMap<String, String>,
) -> Result<QuantizeOutcome, QuantError> {
    quantize_to_file_with(
        inputs,
        spec,
        out,
        metadata,
        QuantizeOptions { report: true },
    )
}

/// Quantizes a whole file (or a `model.safetensors.index.json` shard set), every tensor,
/// sorted by name, with the metadata the format needs.
pub fn quantize_file(
    input: &Path,
    out: &Path,
    spec: &QuantSpec,
    report: bool,
) -> Result<QuantizeOutcome, QuantError> {
    let mut selected = Vec::new();
    for shard in crate::header::resolve_shards(input)? {
        let file = Arc::new(SafetensorsFile::open(&shard)?);
        selected.extend(SelectedTensor::with_prefix(&file, ""));
    }
    selected.sort_by(|a, b| a.output_name.cmp(&b.output_name));
    quantize_to_file_with(
        &selected,
        spec,
        out,
        &spec.format.metadata(),
        QuantizeOptions { report },
    )
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn temp_path(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    out.with_file_name(format!(".{name}.{}.{n}.tmp", std::process::id()))
}

/// A chunk of output bytes for the writer thread.
enum Chunk {
    Bytes(Vec<u8>),
    Words(Vec<u32>),
}

impl Chunk {
    fn as_bytes(&self) -> std::borrow::Cow<'_, [u8]> {
        match self {
            Chunk::Bytes(b) => std::borrow::Cow::Borrowed(b),
            Chunk::Words(w) => words_as_bytes(w),
        }
    }
}

#[cfg(target_endian = "little")]
fn words_as_bytes(w: &[u32]) -> std::borrow::Cow<'_, [u8]> {
    // SAFETY: u32 has no padding and u8 has alignment 1; on a little-endian target the
    // in-memory bytes are exactly the little-endian encoding.
    std::borrow::Cow::Borrowed(unsafe {
        std::slice::from_raw_parts(w.as_ptr().cast::<u8>(), std::mem::size_of_val(w))
    })
}

#[cfg(not(target_endian = "little"))]
fn words_as_bytes(w: &[u32]) -> std::borrow::Cow<'_, [u8]> {
    std::borrow::Cow::Owned(w.iter().flat_map(|x| x.to_le_bytes()).collect())
}

fn writer_thread(file: File, rx: Receiver<Chunk>) -> std::io::Result<(u64, String)> {
    let mut f = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    for chunk in rx {
        let bytes = chunk.as_bytes();
        hasher.update(&bytes);
        f.write_all(&bytes)?;
        total += bytes.len() as u64;
    }
    f.flush()?;
    let digest = hasher.finalize();
    let mut hex = String::with_capacity(64);
    for b in digest.iter() {
        hex.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        hex.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    Ok((total, hex))
}

/// [`quantize_to_file`] with options.
pub fn quantize_to_file_with(
    inputs: &[SelectedTensor],
    spec: &QuantSpec,
    out: &Path,
    metadata: &BTreeMap<String, String>,
    options: QuantizeOptions,
) -> Result<QuantizeOutcome, QuantError> {
    let mut entries = Vec::with_capacity(inputs.len());
    let mut infos = Vec::with_capacity(inputs.len());
    for sel in inputs {
        let entry = sel.file.entry(&sel.tensor)?;
        entries.push(entry);
        infos.push(TensorInfo {
            name: sel.output_name.clone(),
            dtype: entry.info.dtype,
            shape: entry.info.shape.clone(),
        });
    }
    let outputs = plan_outputs(&infos, spec)?;
    let header = header_bytes(&outputs, metadata);
    let planned = header.len() as u64 + data_bytes(&outputs);

    let tmp = temp_path(out);
    let file = File::create(&tmp).map_err(|e| QuantError::io(&tmp, e))?;
    let (tx, rx) = sync_channel::<Chunk>(2);
    let writer = std::thread::spawn(move || writer_thread(file, rx));

    let result = (|| -> Result<(Vec<TensorReport>, ErrorStats), QuantError> {
        send(&tx, Chunk::Bytes(header))?;
        let mut reports = Vec::new();
        let mut overall = ErrorStats::default();
        let mut oi = 0;
        for ((sel, entry), info) in inputs.iter().zip(&entries).zip(&infos) {
            let start = oi;
            while oi < outputs.len() && outputs[oi].source == info.name {
                oi += 1;
            }
            let outs = &outputs[start..oi];
            let job = Job {
                file: &sel.file,
                entry,
                info,
                spec,
                report: options.report,
                tx: &tx,
            };
            if let Some(stats) = job.run(outs)?
                && options.report
            {
                overall.merge(&stats);
                reports.push(TensorReport {
                    name: info.name.clone(),
                    source_dtype: info.dtype,
                    shape: info.shape.clone(),
                    kind: outs[0].kind,
                    stats,
                });
            }
        }
        Ok((reports, overall))
    })();
    drop(tx);
    let written = writer.join();
    let cleanup = |e: QuantError| {
        let _ = std::fs::remove_file(&tmp);
        Err(e)
    };
    let (reports, overall) = match result {
        Ok(r) => r,
        Err(e) => return cleanup(e),
    };
    let (total, sha256) = match written {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return cleanup(QuantError::io(out, e)),
        Err(_) => {
            return cleanup(QuantError::io(
                out,
                std::io::Error::other("the writer thread panicked"),
            ));
        }
    };
    if total != planned {
        return cleanup(QuantError::io(
            out,
            std::io::Error::other(format!(
                "internal error: wrote {total} bytes, planned {planned}"
            )),
        ));
    }
    if let Err(e) = std::fs::rename(&tmp, out) {
        return cleanup(QuantError::io(out, e));
    }
    Ok(QuantizeOutcome {
        path: out.to_path_buf(),
        file_bytes: total,
        sha256,
        data_bytes: data_bytes(&outputs),
        parameters: infos.iter().map(|i| i.numel()).sum(),
        outputs,
        tensors: reports,
        overall,
    })
}

fn send(tx: &SyncSender<Chunk>, chunk: Chunk) -> Result<(), QuantError> {
    // A send only fails when the writer thread stopped on an I/O error; that error is
    // reported from the join, so here it is enough to stop producing.
    tx.send(chunk)
        .map_err(|_| QuantError::Spec("the output writer stopped (see the I/O error)".to_string()))
}

struct Job<'a> {
    file: &'a SafetensorsFile,
    entry: &'a TensorEntry,
    info: &'a TensorInfo,
    spec: &'a QuantSpec,
    report: bool,
    tx: &'a SyncSender<Chunk>,
}

impl Job<'_> {
    fn run(&self, outs: &[OutputTensor]) -> Result<Option<ErrorStats>, QuantError> {
        match outs[0].kind {
            OutputKind::Kept => {
                self.copy()?;
                Ok(None)
            }
            OutputKind::Cast => self.cast(outs[0].dtype).map(Some),
            OutputKind::AffineCodes => self.affine(outs).map(Some),
            _ => self.bnb4(outs).map(Some),
        }
    }

    fn bytes(&self) -> &[u8] {
        self.file.bytes(self.entry)
    }

    fn release(&self, byte_start: u64, byte_len: u64) {
        self.file.release(self.entry.offset + byte_start, byte_len);
    }

    fn prefetch(&self, byte_start: u64, byte_len: u64) {
        self.file.prefetch(self.entry.offset + byte_start, byte_len);
    }

    fn copy(&self) -> Result<(), QuantError> {
        let bytes = self.bytes();
        for (i, c) in bytes.chunks(CHUNK_BYTES as usize).enumerate() {
            send(self.tx, Chunk::Bytes(c.to_vec()))?;
            self.release(i as u64 * CHUNK_BYTES, c.len() as u64);
        }
        Ok(())
    }

    fn cast(&self, to: Dtype) -> Result<ErrorStats, QuantError> {
        let from = self.info.dtype;
        let (fs, ts) = (from.size_bytes() as usize, to.size_bytes() as usize);
        let elems_per_chunk = (CHUNK_BYTES as usize / fs).max(1);
        let sub = 64 * 1024;
        let bytes = self.bytes();
        let mut total = ErrorStats::default();
        for (ci, c) in bytes.chunks(elems_per_chunk * fs).enumerate() {
            let n = c.len() / fs;
            let mut out = vec![0u8; n * ts];
            let report = self.report;
            let stats = out
                .par_chunks_mut(sub * ts)
                .zip(c.par_chunks(sub * fs))
                .map(|(o, i)| {
                    let k = i.len() / fs;
                    let mut w = vec![0f32; k];
                    kernels::decode_f32(i, from, &mut w);
                    kernels::encode_f32(&w, to, o);
                    let mut st = ErrorStats::default();
                    if report {
                        let mut r = vec![0f32; k];
                        kernels::decode_f32(o, to, &mut r);
                        // Kept/cast tensors may hold infinities (masks): compare finite only.
                        let (wf, rf): (Vec<f32>, Vec<f32>) = w
                            .iter()
                            .zip(&r)
                            .filter(|(a, _)| a.is_finite())
                            .map(|(a, b)| (*a, *b))
                            .unzip();
                        st = kernels::error_stats(&wf, &rf);
                    }
                    st
                })
                .reduce(ErrorStats::default, |mut a, b| {
                    a.merge(&b);
                    a
                });
            total.merge(&stats);
            send(self.tx, Chunk::Bytes(out))?;
            self.release((ci * elems_per_chunk * fs) as u64, c.len() as u64);
        }
        Ok(total)
    }

    fn rows_per_chunk(&self, cols: u64) -> u64 {
        let row_bytes = cols * self.info.dtype.size_bytes();
        (CHUNK_BYTES / row_bytes.max(1)).max(1)
    }

    fn non_finite(&self, flat: u64) -> QuantError {
        let cols = self.info.shape[1];
        let row = flat / cols;
        let col = flat % cols;
        let bytes = self.bytes();
        let es = self.info.dtype.size_bytes() as usize;
        let at = flat as usize * es;
        let mut v = [0f32; 1];
        kernels::decode_f32(&bytes[at..at + es], self.info.dtype, &mut v);
        QuantError::NonFinite {
            path: self.file.path().to_path_buf(),
            tensor: self.entry.info.name.clone(),
            index: vec![row, col],
            value: v[0],
        }
    }

    /// Runs `f` over row blocks of a chunk in parallel; returns merged stats or the flat
    /// index (within the chunk) of the first non-finite element.
    fn affine(&self, outs: &[OutputTensor]) -> Result<ErrorStats, QuantError> {
        let WeightFormat::Affine { bits } = self.spec.format else {
            return Err(QuantError::Spec(
                "internal error: not an affine format".into(),
            ));
        };
        let (rows, cols) = (self.info.shape[0], self.info.shape[1]);
        let g = self.spec.group_size as usize;
        let dt = self.info.dtype;
        let es = dt.size_bytes() as usize;
        let cols_u = cols as usize;
        let words_per_row = cols_u * bits as usize / 32;
        let groups_per_row = cols_u / g;
        let rpc = self.rows_per_chunk(cols);
        let task_rows = (rpc as usize / 16).max(1);
        let mut scales = vec![0f32; rows as usize * groups_per_row];
        let mut biases = vec![0f32; rows as usize * groups_per_row];
        let bytes = self.bytes();
        let mut total = ErrorStats::default();
        let report = self.report;
        let mut r0 = 0u64;
        while r0 < rows {
            let nr = rpc.min(rows - r0) as usize;
            let in_start = r0 as usize * cols_u * es;
            let input = &bytes[in_start..in_start + nr * cols_u * es];
            if r0 + (nr as u64) < rows {
                let next = (rpc.min(rows - r0 - nr as u64)) as usize * cols_u * es;
                self.prefetch((in_start + input.len()) as u64, next as u64);
            }
            let mut codes = vec![0u32; nr * words_per_row];
            let gs = r0 as usize * groups_per_row;
            let sc = &mut scales[gs..gs + nr * groups_per_row];
            let bc = &mut biases[gs..gs + nr * groups_per_row];
            let res = codes
                .par_chunks_mut(task_rows * words_per_row)
                .zip(sc.par_chunks_mut(task_rows * groups_per_row))
                .zip(bc.par_chunks_mut(task_rows * groups_per_row))
                .zip(input.par_chunks(task_rows * cols_u * es))
                .enumerate()
                .map(|(ti, (((c, s), b), i))| {
                    let mut w = vec![0f32; i.len() / es];
                    kernels::decode_f32(i, dt, &mut w);
                    let mut st = ErrorStats::default();
                    kernels::affine_quantize(
                        &w,
                        cols_u,
                        g,
                        bits,
                        dt,
                        c,
                        s,
                        b,
                        report.then_some(&mut st),
                    )
                    .map(|()| st)
                    .map_err(|at| (ti * task_rows * cols_u + at) as u64)
                })
                .try_reduce(ErrorStats::default, |mut a, b| {
                    a.merge(&b);
                    Ok(a)
                });
            match res {
                Ok(st) => total.merge(&st),
                Err(at) => return Err(self.non_finite(r0 * cols + at)),
            }
            send(self.tx, Chunk::Words(codes))?;
            self.release(in_start as u64, input.len() as u64);
            r0 += nr as u64;
        }
        for (o, v) in outs[1..3].iter().zip([scales, biases]) {
            let mut b = vec![0u8; v.len() * o.dtype.size_bytes() as usize];
            kernels::encode_f32(&v, o.dtype, &mut b);
            send(self.tx, Chunk::Bytes(b))?;
        }
        Ok(total)
    }

    fn bnb4(&self, outs: &[OutputTensor]) -> Result<ErrorStats, QuantError> {
        let kind = if self.spec.format == WeightFormat::Fp4 {
            Bnb4::Fp4
        } else {
            Bnb4::Nf4
        };
        let (rows, cols) = (self.info.shape[0], self.info.shape[1]);
        let block = self.spec.group_size as usize;
        let dt = self.info.dtype;
        let es = dt.size_bytes() as usize;
        let cols_u = cols as usize;
        let blocks_per_row = cols_u / block;
        let rpc = self.rows_per_chunk(cols);
        let task_rows = (rpc as usize / 16).max(1);
        let mut absmax = vec![0f32; rows as usize * blocks_per_row];
        let bytes = self.bytes();
        let mut total = ErrorStats::default();
        let report = self.report;
        let mut r0 = 0u64;
        while r0 < rows {
            let nr = rpc.min(rows - r0) as usize;
            let in_start = r0 as usize * cols_u * es;
            let input = &bytes[in_start..in_start + nr * cols_u * es];
            let mut packed = vec![0u8; nr * cols_u / 2];
            let gs = r0 as usize * blocks_per_row;
            let am = &mut absmax[gs..gs + nr * blocks_per_row];
            let res = packed
                .par_chunks_mut(task_rows * cols_u / 2)
                .zip(am.par_chunks_mut(task_rows * blocks_per_row))
                .zip(input.par_chunks(task_rows * cols_u * es))
                .enumerate()
                .map(|(ti, ((p, a), i))| {
                    let mut w = vec![0f32; i.len() / es];
                    kernels::decode_f32(i, dt, &mut w);
                    let mut st = ErrorStats::default();
                    kernels::bnb4_quantize(&w, block, kind, p, a, report.then_some(&mut st))
                        .map(|()| st)
                        .map_err(|at| (ti * task_rows * cols_u + at) as u64)
                })
                .try_reduce(ErrorStats::default, |mut a, b| {
                    a.merge(&b);
                    Ok(a)
                });
            match res {
                Ok(st) => total.merge(&st),
                Err(at) => return Err(self.non_finite(r0 * cols + at)),
            }
            send(self.tx, Chunk::Bytes(packed))?;
            self.release(in_start as u64, input.len() as u64);
            r0 += nr as u64;
        }
        let mut b = vec![0u8; absmax.len() * 4];
        kernels::encode_f32(&absmax, Dtype::F32, &mut b);
        send(self.tx, Chunk::Bytes(b))?;
        let mut qm = vec![0u8; 64];
        kernels::encode_f32(kind.code(), Dtype::F32, &mut qm);
        send(self.tx, Chunk::Bytes(qm))?;
        let state = bnb_quant_state_json(self.spec.format, self.spec.group_size, self.info);
        debug_assert_eq!(outs[3].data_bytes(), state.len() as u64);
        send(self.tx, Chunk::Bytes(state.into_bytes()))?;
        Ok(total)
    }
}
