//! The streaming, parallel quantizer.
//!
//! The output layout (and so the file size) is planned up front, so the temporary output
//! file is sized once and memory-mapped: the kernels write codes, scales and biases straight
//! into their final place (no intermediate buffers, no copy through `write`). Each tensor is
//! produced in row chunks, rayon across row blocks; a hashing thread follows behind in file
//! order, computing the sha256 in the same pass, and releases the output pages it has hashed.
//! Input pages are released as soon as a chunk is consumed, so the resident set stays at a
//! few chunks however large the model is.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
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

const PAGE: usize = 4096;

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

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        s.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    s
}

fn page_size() -> usize {
    #[cfg(unix)]
    {
        // SAFETY: sysconf has no preconditions.
        let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if p > 0 {
            return p as usize;
        }
    }
    PAGE
}

/// madvise on the whole pages inside `[start, end)` (absolute addresses); errors ignored
/// (the advice is an optimisation).
fn advise(start: usize, end: usize, advice: i32) {
    #[cfg(unix)]
    {
        let page = page_size();
        let s = start.div_ceil(page) * page;
        let e = end / page * page;
        if e > s {
            // SAFETY: callers pass ranges inside a live mapping they own; DONTNEED on a
            // shared file mapping keeps the data in the page cache, POPULATE_WRITE only
            // faults pages in.
            unsafe {
                libc::madvise(s as *mut libc::c_void, e - s, advice);
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (start, end, advice);
    }
}

#[cfg(target_os = "linux")]
const POPULATE_WRITE: i32 = libc::MADV_POPULATE_WRITE;
#[cfg(not(target_os = "linux"))]
const POPULATE_WRITE: i32 = -1;
#[cfg(unix)]
const DONTNEED: i32 = libc::MADV_DONTNEED;
#[cfg(not(unix))]
const DONTNEED: i32 = -1;

/// Faults a region of the output map in for writing in one call (much cheaper than one
/// page fault per page from the kernels).
fn populate(region: &[u8]) {
    if region.len() >= 64 << 10 {
        let p = region.as_ptr() as usize;
        advise(p, p + region.len(), POPULATE_WRITE);
    }
}

/// Hashes finished regions in file order and releases the output pages behind it.
fn hash_thread(rx: Receiver<&[u8]>, base: usize) -> String {
    let mut hasher = Sha256::new();
    let mut released = base;
    for chunk in rx {
        hasher.update(chunk);
        let end = chunk.as_ptr() as usize + chunk.len();
        // Release in slices so pages leave the resident set while we go.
        if end - released >= 4 << 20 {
            advise(released, end, DONTNEED);
            released = end / page_size() * page_size();
        }
    }
    hex(&hasher.finalize())
}

/// The not-yet-produced rest of the mapped output file.
struct Output<'s> {
    rest: &'s mut [u8],
    tx: SyncSender<&'s [u8]>,
}

impl<'s> Output<'s> {
    /// The next `len` bytes of the file.
    fn take(&mut self, len: usize) -> &'s mut [u8] {
        let rest = std::mem::take(&mut self.rest);
        let (head, tail) = rest.split_at_mut(len);
        self.rest = tail;
        head
    }

    /// Hands a finished region (in file order) to the hashing thread.
    fn done(&self, region: &'s mut [u8]) -> Result<(), QuantError> {
        self.tx
            .send(region)
            .map_err(|_| QuantError::Spec("internal error: the hashing thread stopped".to_string()))
    }
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
    let planned_usize = usize::try_from(planned)
        .map_err(|_| QuantError::Spec(format!("output of {planned} bytes is too large")))?;

    let tmp = temp_path(out);
    let cleanup = |e: QuantError| {
        let _ = std::fs::remove_file(&tmp);
        Err(e)
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| QuantError::io(&tmp, e))?;
    if let Err(e) = file.set_len(planned) {
        return cleanup(QuantError::io(&tmp, e));
    }
    // SAFETY: the file was just created by us under a unique temporary name; nothing else
    // maps or resizes it while we write.
    let mut map = match unsafe { memmap2::MmapMut::map_mut(&file) } {
        Ok(m) => m,
        Err(e) => return cleanup(QuantError::io(&tmp, e)),
    };
    let base = map.as_ptr() as usize;
    let result = std::thread::scope(|scope| {
        let (tx, rx) = sync_channel::<&[u8]>(8);
        let hasher = scope.spawn(move || hash_thread(rx, base));
        let mut o = Output {
            rest: &mut map[..planned_usize],
            tx,
        };
        let produced = (|| -> Result<(Vec<TensorReport>, ErrorStats), QuantError> {
            let h = o.take(header.len());
            h.copy_from_slice(&header);
            o.done(h)?;
            let mut reports = Vec::new();
            let mut overall = ErrorStats::default();
            let mut oi = 0;
            for ((sel, entry), info) in inputs.iter().zip(&entries).zip(&infos) {
                let start = oi;
                while oi < outputs.len() && outputs[oi].source == info.name {
                    oi += 1;
                }
                let job = Job {
                    file: &sel.file,
                    entry,
                    info,
                    spec,
                    report: options.report,
                };
                let outs = &outputs[start..oi];
                if let Some(stats) = job.run(outs, &mut o)?
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
            if !o.rest.is_empty() {
                return Err(QuantError::Spec(format!(
                    "internal error: {} planned bytes were not produced",
                    o.rest.len()
                )));
            }
            Ok((reports, overall))
        })();
        drop(o);
        let sha = hasher.join();
        (produced, sha)
    });
    let (produced, sha) = result;
    let flushed = map.flush_async();
    drop(map);
    drop(file);
    let (reports, overall) = match produced {
        Ok(r) => r,
        Err(e) => return cleanup(e),
    };
    let sha256 = match sha {
        Ok(s) => s,
        Err(_) => {
            return cleanup(QuantError::Spec(
                "internal error: the hashing thread panicked".into(),
            ));
        }
    };
    if let Err(e) = flushed {
        return cleanup(QuantError::io(&tmp, e));
    }
    if let Err(e) = std::fs::rename(&tmp, out) {
        return cleanup(QuantError::io(out, e));
    }
    Ok(QuantizeOutcome {
        path: out.to_path_buf(),
        file_bytes: planned,
        sha256,
        data_bytes: data_bytes(&outputs),
        parameters: infos.iter().map(|i| i.numel()).sum(),
        outputs,
        tensors: reports,
        overall,
    })
}

struct Job<'a> {
    file: &'a SafetensorsFile,
    entry: &'a TensorEntry,
    info: &'a TensorInfo,
    spec: &'a QuantSpec,
    report: bool,
}

fn merge(mut a: ErrorStats, b: ErrorStats) -> ErrorStats {
    a.merge(&b);
    a
}

impl Job<'_> {
    fn run<'s>(
        &self,
        outs: &[OutputTensor],
        o: &mut Output<'s>,
    ) -> Result<Option<ErrorStats>, QuantError> {
        match outs[0].kind {
            OutputKind::Kept => {
                self.copy(o)?;
                Ok(None)
            }
            OutputKind::Cast => self.cast(outs[0].dtype, o).map(Some),
            OutputKind::AffineCodes => self.affine(outs, o).map(Some),
            _ => self.bnb4(outs, o).map(Some),
        }
    }

    fn bytes(&self) -> &[u8] {
        self.file.bytes(self.entry)
    }

    fn release(&self, byte_start: u64, byte_len: u64) {
        self.file.release(self.entry.offset + byte_start, byte_len);
    }

    fn copy(&self, o: &mut Output<'_>) -> Result<(), QuantError> {
        for (i, c) in self.bytes().chunks(CHUNK_BYTES as usize).enumerate() {
            let dst = o.take(c.len());
            populate(dst);
            dst.copy_from_slice(c);
            o.done(dst)?;
            self.release(i as u64 * CHUNK_BYTES, c.len() as u64);
        }
        Ok(())
    }

    fn cast(&self, to: Dtype, o: &mut Output<'_>) -> Result<ErrorStats, QuantError> {
        let from = self.info.dtype;
        let (fs, ts) = (from.size_bytes() as usize, to.size_bytes() as usize);
        let elems_per_chunk = (CHUNK_BYTES as usize / fs).max(1);
        let sub = 16 * 1024;
        let mut total = ErrorStats::default();
        let report = self.report;
        for (ci, c) in self.bytes().chunks(elems_per_chunk * fs).enumerate() {
            let n = c.len() / fs;
            let out = o.take(n * ts);
            populate(out);
            let stats = out
                .par_chunks_mut(sub * ts)
                .zip(c.par_chunks(sub * fs))
                .map(|(dst, src)| {
                    let k = src.len() / fs;
                    let mut w = vec![0f32; k];
                    kernels::decode_f32(src, from, &mut w);
                    kernels::encode_f32(&w, to, dst);
                    if !report {
                        return ErrorStats::default();
                    }
                    let mut r = vec![0f32; k];
                    kernels::decode_f32(dst, to, &mut r);
                    // Kept/cast tensors may hold infinities (masks): compare finite only.
                    let (wf, rf): (Vec<f32>, Vec<f32>) = w
                        .iter()
                        .zip(&r)
                        .filter(|(a, _)| a.is_finite())
                        .map(|(a, b)| (*a, *b))
                        .unzip();
                    kernels::error_stats(&wf, &rf)
                })
                .reduce(ErrorStats::default, merge);
            total.merge(&stats);
            o.done(out)?;
            self.release((ci * elems_per_chunk * fs) as u64, c.len() as u64);
        }
        Ok(total)
    }

    fn rows_per_chunk(&self, cols: u64) -> usize {
        let row_bytes = cols * self.info.dtype.size_bytes();
        (CHUNK_BYTES / row_bytes.max(1)).max(1) as usize
    }

    /// Rows per rayon task: enough tasks to balance two or more threads.
    fn task_rows(&self, rows_per_chunk: usize) -> usize {
        let threads = rayon::current_num_threads().max(1);
        rows_per_chunk.div_ceil(threads * 4).max(1)
    }

    fn non_finite(&self, flat: u64) -> QuantError {
        let cols = self.info.shape[1].max(1);
        let es = self.info.dtype.size_bytes() as usize;
        let at = flat as usize * es;
        let mut v = [0f32; 1];
        kernels::decode_f32(&self.bytes()[at..at + es], self.info.dtype, &mut v);
        QuantError::NonFinite {
            path: self.file.path().to_path_buf(),
            tensor: self.entry.info.name.clone(),
            index: vec![flat / cols, flat % cols],
            value: v[0],
        }
    }

    fn affine(&self, outs: &[OutputTensor], o: &mut Output<'_>) -> Result<ErrorStats, QuantError> {
        let WeightFormat::Affine { bits } = self.spec.format else {
            return Err(QuantError::Spec(
                "internal error: not an affine format".into(),
            ));
        };
        let (rows, cols) = (self.info.shape[0] as usize, self.info.shape[1] as usize);
        let g = self.spec.group_size as usize;
        let dt = self.info.dtype;
        let es = dt.size_bytes() as usize;
        let code_row = cols * bits as usize / 8;
        let sb_row = cols / g * es;
        let rpc = self.rows_per_chunk(cols as u64);
        let task = self.task_rows(rpc);
        let codes_len = outs[0].data_bytes() as usize;
        let sb_len = outs[1].data_bytes() as usize;
        let mut codes = o.take(codes_len);
        let scales = o.take(sb_len);
        let biases = o.take(sb_len);
        let (mut sc, mut bc) = (&mut scales[..], &mut biases[..]);
        let bytes = self.bytes();
        let report = self.report;
        let mut total = ErrorStats::default();
        let mut r0 = 0;
        while r0 < rows {
            let nr = rpc.min(rows - r0);
            let input = &bytes[r0 * cols * es..(r0 + nr) * cols * es];
            let (c_chunk, c_rest) = std::mem::take(&mut codes).split_at_mut(nr * code_row);
            codes = c_rest;
            populate(c_chunk);
            let (s_chunk, s_rest) = std::mem::take(&mut sc).split_at_mut(nr * sb_row);
            sc = s_rest;
            let (b_chunk, b_rest) = std::mem::take(&mut bc).split_at_mut(nr * sb_row);
            bc = b_rest;
            let res = c_chunk
                .par_chunks_mut(task * code_row)
                .zip(s_chunk.par_chunks_mut(task * sb_row))
                .zip(b_chunk.par_chunks_mut(task * sb_row))
                .zip(input.par_chunks(task * cols * es))
                .enumerate()
                .map(|(ti, (((c, s), b), i))| {
                    let mut st = ErrorStats::default();
                    kernels::affine_quantize_bytes(
                        i,
                        dt,
                        cols,
                        g,
                        bits,
                        c,
                        s,
                        b,
                        report.then_some(&mut st),
                    )
                    .map(|()| st)
                    .map_err(|at| (ti * task * cols + at) as u64)
                })
                .try_reduce(ErrorStats::default, |a, b| Ok(merge(a, b)));
            match res {
                Ok(st) => total.merge(&st),
                Err(at) => return Err(self.non_finite((r0 * cols) as u64 + at)),
            }
            o.done(c_chunk)?;
            self.release((r0 * cols * es) as u64, input.len() as u64);
            r0 += nr;
        }
        o.done(scales)?;
        o.done(biases)?;
        Ok(total)
    }

    fn bnb4(&self, outs: &[OutputTensor], o: &mut Output<'_>) -> Result<ErrorStats, QuantError> {
        let kind = if self.spec.format == WeightFormat::Fp4 {
            Bnb4::Fp4
        } else {
            Bnb4::Nf4
        };
        let (rows, cols) = (self.info.shape[0] as usize, self.info.shape[1] as usize);
        let block = self.spec.group_size as usize;
        let dt = self.info.dtype;
        let es = dt.size_bytes() as usize;
        let packed_row = cols / 2;
        let am_row = cols / block * 4;
        let rpc = self.rows_per_chunk(cols as u64);
        let task = self.task_rows(rpc);
        let mut packed = o.take(outs[0].data_bytes() as usize);
        let absmax = o.take(outs[1].data_bytes() as usize);
        let mut ac = &mut absmax[..];
        let bytes = self.bytes();
        let report = self.report;
        let mut total = ErrorStats::default();
        let mut r0 = 0;
        while r0 < rows {
            let nr = rpc.min(rows - r0);
            let input = &bytes[r0 * cols * es..(r0 + nr) * cols * es];
            let (p_chunk, p_rest) = std::mem::take(&mut packed).split_at_mut(nr * packed_row);
            packed = p_rest;
            populate(p_chunk);
            let (a_chunk, a_rest) = std::mem::take(&mut ac).split_at_mut(nr * am_row);
            ac = a_rest;
            let res = p_chunk
                .par_chunks_mut(task * packed_row)
                .zip(a_chunk.par_chunks_mut(task * am_row))
                .zip(input.par_chunks(task * cols * es))
                .enumerate()
                .map(|(ti, ((p, a), i))| {
                    let mut st = ErrorStats::default();
                    kernels::bnb4_quantize_bytes(
                        i,
                        dt,
                        block,
                        kind,
                        p,
                        a,
                        report.then_some(&mut st),
                    )
                    .map(|()| st)
                    .map_err(|at| (ti * task * cols + at) as u64)
                })
                .try_reduce(ErrorStats::default, |a, b| Ok(merge(a, b)));
            match res {
                Ok(st) => total.merge(&st),
                Err(at) => return Err(self.non_finite((r0 * cols) as u64 + at)),
            }
            o.done(p_chunk)?;
            self.release((r0 * cols * es) as u64, input.len() as u64);
            r0 += nr;
        }
        o.done(absmax)?;
        let qm = o.take(64);
        kernels::encode_f32(kind.code(), Dtype::F32, qm);
        o.done(qm)?;
        let state = bnb_quant_state_json(self.spec.format, self.spec.group_size, self.info);
        let st = o.take(state.len());
        st.copy_from_slice(state.as_bytes());
        o.done(st)?;
        Ok(total)
    }
}
