//! The streaming, parallel quantizer.
//!
//! The output layout (and so the file size) is planned up front, so the temporary output
//! file is sized once and memory-mapped: the kernels write codes, scales and biases straight
//! into their final place (no intermediate buffers, no copy through `write`). Each tensor is
//! produced in row chunks, rayon across row blocks; a hashing thread follows behind in file
//! order, computing the sha256 in the same pass, and releases the output pages it has hashed.
//! Input pages are released as soon as a chunk is consumed, so the resident set stays at a
//! few chunks however large the model is. The kernels measure each tensor's error while they
//! write it (see [`crate::quality`]); the work is split into tasks independently of the thread
//! count and their statistics summed in task order, so the numbers are the same for any
//! number of threads.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use rayon::prelude::*;

use crate::digest::{Digester, FileDigest};
use crate::dtype::{Dtype, TensorInfo};
use crate::error::QuantError;
use crate::header::{SafetensorsFile, TensorEntry};
use crate::kernels::{self, Bnb4, ErrorStats};
use crate::quality::{self, Quality};
use crate::source::{QuantizedGroup, SourceFormat, SourceLayout, Treatment};
use crate::spec::{
    Method, OutputKind, OutputTensor, QuantSpec, WeightFormat, bnb_quant_state_json, data_bytes,
    header_bytes, plan_outputs,
};

const PAGE: usize = 4096;

/// Input bytes processed per chunk (one rayon fan-out, one write).
const CHUNK_BYTES: u64 = 8 << 20;

/// Rayon tasks per chunk (see `Job::task_rows`).
const TASKS_PER_CHUNK: usize = 32;

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

/// Quality of one quantized or cast tensor against its source, measured on the values its
/// consumer dequantizes (see [`crate::quality`]).
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

impl TensorReport {
    /// SQNR in dB; `None` for an exact reconstruction (infinite SQNR).
    pub fn sqnr_db(&self) -> Option<f64> {
        quality::sqnr_db_or_exact(&self.stats)
    }

    /// Relative RMS error (0 when exact).
    pub fn rel_rms_error(&self) -> f64 {
        self.stats.rel_rms_error()
    }
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
    /// CRC-32 of the file, computed in the same pass (what a zip entry of it records).
    pub crc32: u32,
    /// Tensor data bytes: the README's "weight bytes" (the header excluded).
    pub data_bytes: u64,
    /// Number of parameters (elements of all input tensors).
    pub parameters: u64,
    /// The output tensors, in file order.
    pub outputs: Vec<OutputTensor>,
    /// The quality of every quantized or cast tensor, in file order (tensors copied unchanged
    /// are exact and not listed).
    pub tensors: Vec<TensorReport>,
    /// All listed tensors together.
    pub overall: ErrorStats,
    /// The file's quality: overall SQNR, worst tensor, relative RMS error.
    pub quality: Quality,
}

/// Quantizes a whole file (or a `model.safetensors.index.json` shard set), every tensor,
/// sorted by name, with the metadata the format needs.
pub fn quantize_file(
    input: &Path,
    out: &Path,
    spec: &QuantSpec,
) -> Result<QuantizeOutcome, QuantError> {
    let mut selected = Vec::new();
    for shard in crate::header::resolve_shards(input)? {
        let file = Arc::new(SafetensorsFile::open(&shard)?);
        selected.extend(SelectedTensor::with_prefix(&file, ""));
    }
    selected.sort_by(|a, b| a.output_name.cmp(&b.output_name));
    quantize_to_file(&selected, spec, out, &spec.format.metadata())
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
            // file mapping keeps the data in the page cache.
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

#[cfg(unix)]
const DONTNEED: i32 = libc::MADV_DONTNEED;
#[cfg(not(unix))]
const DONTNEED: i32 = -1;

/// Digests finished regions (file order: sha256 and CRC-32) by reading them back through a
/// read-only map of the output (the page cache: no copy), and releases the pages behind it.
fn hash_thread(rx: Receiver<(usize, usize)>, map: &memmap2::Mmap) -> FileDigest {
    let mut hasher = Digester::new();
    let base = map.as_ptr() as usize;
    let mut released = 0usize;
    for (offset, len) in rx {
        hasher.update(&map[offset..offset + len]);
        let end = offset + len;
        if end - released >= 4 << 20 {
            advise(base + released, base + end, DONTNEED);
            released = end / page_size() * page_size();
        }
    }
    hasher.finish()
}

#[cfg(unix)]
fn write_at(file: &File, buf: &[u8], offset: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.write_all_at(buf, offset)
}

#[cfg(windows)]
fn write_at(file: &File, mut buf: &[u8], mut offset: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        let n = file.seek_write(buf, offset)?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        buf = &buf[n..];
        offset += n as u64;
    }
    Ok(())
}

/// Why a parallel task failed.
enum TaskError {
    /// Flat element index (within the task) of a non-finite value.
    NonFinite(usize),
    /// Writing the output failed.
    Io(std::io::Error),
}

/// The output file: regions are reserved in file order, written at their offsets by any
/// thread, and reported complete (in file order) to the hashing thread.
struct Output<'a> {
    file: &'a File,
    path: &'a Path,
    next: u64,
    tx: SyncSender<(usize, usize)>,
}

impl Output<'_> {
    /// Reserves the next `len` bytes of the file; returns their offset.
    fn take(&mut self, len: u64) -> u64 {
        let at = self.next;
        self.next += len;
        at
    }

    fn write(&self, buf: &[u8], offset: u64) -> Result<(), QuantError> {
        write_at(self.file, buf, offset).map_err(|e| QuantError::io(self.path, e))
    }

    /// Reports `[offset, offset+len)` written; regions must be reported in file order.
    fn done(&self, offset: u64, len: u64) -> Result<(), QuantError> {
        self.tx
            .send((offset as usize, len as usize))
            .map_err(|_| QuantError::Spec("internal error: the hashing thread stopped".into()))
    }
}

/// Quantizes `inputs` (in this order) under `spec` into the safetensors file `out`, with
/// `metadata` as `__metadata__` (see [`WeightFormat::metadata`]), measuring the quality of
/// every quantized or cast tensor while writing it. Writes a temporary file next to `out` and
/// renames it.
pub fn quantize_to_file(
    inputs: &[SelectedTensor],
    spec: &QuantSpec,
    out: &Path,
    metadata: &BTreeMap<String, String>,
) -> Result<QuantizeOutcome, QuantError> {
    let infos = output_infos(inputs)?;
    let outputs = plan_outputs(&infos, spec)?;
    write_planned(inputs, outputs, spec, out, metadata)
}

/// The tensors of `inputs` under their output names.
fn output_infos(inputs: &[SelectedTensor]) -> Result<Vec<TensorInfo>, QuantError> {
    inputs
        .iter()
        .map(|sel| {
            let entry = sel.file.entry(&sel.tensor)?;
            Ok(TensorInfo {
                name: sel.output_name.clone(),
                dtype: entry.info.dtype,
                shape: entry.info.shape.clone(),
            })
        })
        .collect()
}

/// Like [`quantize_to_file`], for a source whose tensors may already be quantized (`layout`,
/// recognised on the output names; see [`crate::source`]): the groups in `spec`'s own format
/// pass through byte for byte; the groups `spec` stores in float are dequantized exactly as
/// their consumer does; the groups `spec` quantizes to another format are dequantized and
/// quantized again when `requantize` allows it, else the result is
/// [`QuantError::AlreadyQuantized`]. The reports of the tensors quantized again measure their
/// error against the dequantized source.
///
/// Dequantized weights are written to a temporary file next to `out` (their float size),
/// removed before returning.
pub fn quantize_source_to_file(
    inputs: &[SelectedTensor],
    layout: &SourceLayout,
    requantize: bool,
    spec: &QuantSpec,
    out: &Path,
    metadata: &BTreeMap<String, String>,
) -> Result<QuantizeOutcome, QuantError> {
    let infos = output_infos(inputs)?;
    layout.check_requantize(&infos, spec, requantize)?;
    let outputs = layout.plan_outputs(&infos, spec)?;
    let dequantized: Vec<&QuantizedGroup> = infos
        .iter()
        .filter_map(|t| layout.group_of(&t.name).filter(|g| g.weight == t.name))
        .filter(|g| SourceLayout::treatment(g, spec) != Treatment::PassThrough)
        .collect();
    if dequantized.is_empty() {
        return write_planned(inputs, outputs, spec, out, metadata);
    }
    let tmp = temp_path(out).with_extension("dequantized.tmp");
    let result = (|| {
        let file = Arc::new(write_dequantized(inputs, &dequantized, &tmp)?);
        let mut selected = Vec::with_capacity(inputs.len());
        for sel in inputs {
            match layout.group_of(&sel.output_name) {
                Some(g) if SourceLayout::treatment(g, spec) != Treatment::PassThrough => {
                    if g.weight == sel.output_name {
                        selected.push(SelectedTensor::new(&file, g.weight.clone()));
                    }
                }
                _ => selected.push(sel.clone()),
            }
        }
        write_planned(&selected, outputs, spec, out, metadata)
    })();
    let _ = std::fs::remove_file(&tmp);
    result
}

/// Writes the logical weights of `groups` (their parts among `inputs`, by output name) to a
/// safetensors file at `path`, dequantized exactly as their consumer does, and opens it.
fn write_dequantized(
    inputs: &[SelectedTensor],
    groups: &[&QuantizedGroup],
    path: &Path,
) -> Result<SafetensorsFile, QuantError> {
    use std::io::Write;
    let by_name: BTreeMap<&str, &SelectedTensor> =
        inputs.iter().map(|s| (s.output_name.as_str(), s)).collect();
    fn find<'a>(
        by_name: &BTreeMap<&str, &'a SelectedTensor>,
        name: &str,
    ) -> Result<(&'a SafetensorsFile, &'a TensorEntry), QuantError> {
        let sel: &'a SelectedTensor = by_name
            .get(name)
            .ok_or_else(|| QuantError::Spec(format!("internal error: no input `{name}`")))?;
        let file: &'a SafetensorsFile = &sel.file;
        Ok((file, file.entry(&sel.tensor)?))
    }
    let part = |name: &str| find(&by_name, name);
    let logical: Vec<OutputTensor> = groups
        .iter()
        .map(|g| OutputTensor {
            name: g.weight.clone(),
            dtype: g.dtype,
            shape: g.shape.clone(),
            source: g.weight.clone(),
            kind: OutputKind::Kept,
        })
        .collect();
    let file = File::create(path).map_err(|e| QuantError::io(path, e))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    let io = |e| QuantError::io(path, e);
    w.write_all(&header_bytes(&logical, &BTreeMap::new()))
        .map_err(io)?;
    for g in groups {
        let (rows, cols) = (g.shape[0] as usize, g.shape[1] as usize);
        let es = g.dtype.size_bytes() as usize;
        let mut row = vec![0f32; cols];
        let mut bytes = vec![0u8; cols * es];
        match g.format {
            SourceFormat::Affine { bits, group_size } => {
                let gs = group_size as usize;
                let (cf, ce) = part(&g.parts[0])?;
                let (sf, se) = part(&g.parts[1])?;
                let (bf, be) = part(&g.parts[2])?;
                let (codes, scales, biases) = (cf.bytes(ce), sf.bytes(se), bf.bytes(be));
                let words = cols * bits as usize / 32;
                let sd = se.info.dtype;
                let ses = sd.size_bytes() as usize;
                let (mut cw, mut sc, mut bi) = (
                    vec![0u32; words],
                    vec![0f32; cols / gs],
                    vec![0f32; cols / gs],
                );
                for r in 0..rows {
                    for (i, w) in cw.iter_mut().enumerate() {
                        let at = (r * words + i) * 4;
                        *w = u32::from_le_bytes([
                            codes[at],
                            codes[at + 1],
                            codes[at + 2],
                            codes[at + 3],
                        ]);
                    }
                    let srow = r * (cols / gs) * ses..(r + 1) * (cols / gs) * ses;
                    kernels::decode_f32(&scales[srow.clone()], sd, &mut sc);
                    kernels::decode_f32(&biases[srow], sd, &mut bi);
                    quality::mlx_affine_dequantize(&cw, &sc, &bi, gs, bits, g.dtype, &mut row);
                    kernels::encode_f32(&row, g.dtype, &mut bytes);
                    w.write_all(&bytes).map_err(io)?;
                }
            }
            SourceFormat::Bnb4 { fp4, blocksize } => {
                let bs = blocksize as usize;
                let kind = if fp4 { Bnb4::Fp4 } else { Bnb4::Nf4 };
                let (pf, pe) = part(&g.parts[0])?;
                let (af, ae) = part(&g.parts[1])?;
                let packed = pf.bytes(pe);
                let mut absmax = vec![0f32; ae.info.numel() as usize];
                kernels::decode_f32(af.bytes(ae), Dtype::F32, &mut absmax);
                // Whole blocks of elements at a time (an even count: two codes a byte), about
                // two rows' worth.
                let n = rows * cols;
                let step = cols.div_ceil(bs).max(1) * bs * 2;
                let mut out = vec![0f32; step];
                bytes.resize(step * es, 0);
                let mut start = 0;
                while start < n {
                    let len = step.min(n - start);
                    let o = &mut out[..len];
                    quality::bnb4_dequantize_as(
                        &packed[start / 2..(start + len).div_ceil(2)],
                        &absmax[start / bs..(start + len).div_ceil(bs)],
                        bs,
                        kind,
                        g.dtype,
                        o,
                    );
                    let chunk = &mut bytes[..len * es];
                    kernels::encode_f32(o, g.dtype, chunk);
                    w.write_all(chunk).map_err(io)?;
                    start += len;
                }
            }
        }
    }
    let file = w
        .into_inner()
        .map_err(|e| QuantError::io(path, e.into_error()))?;
    file.sync_all().map_err(io)?;
    drop(file);
    SafetensorsFile::open(path)
}

/// Writes `outputs` (planned from `inputs` under their output names) to `out`.
fn write_planned(
    inputs: &[SelectedTensor],
    outputs: Vec<OutputTensor>,
    spec: &QuantSpec,
    out: &Path,
    metadata: &BTreeMap<String, String>,
) -> Result<QuantizeOutcome, QuantError> {
    let mut entries = Vec::with_capacity(inputs.len());
    let infos = output_infos(inputs)?;
    for sel in inputs {
        entries.push(sel.file.entry(&sel.tensor)?);
    }
    let header = header_bytes(&outputs, metadata);
    let planned = header.len() as u64 + data_bytes(&outputs);
    if usize::try_from(planned).is_err() {
        return Err(QuantError::Spec(format!(
            "output of {planned} bytes is too large"
        )));
    }

    // Only a regular file (or a link, which the rename replaces) is ever replaced: never a
    // device such as `/dev/null`, a FIFO or a folder.
    omnipack_fs::check_replaceable(out).map_err(|e| QuantError::io(out, e))?;
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
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .map_err(|e| QuantError::io(out, e))?;
    if let Err(e) = file.set_len(planned) {
        return cleanup(QuantError::io(&tmp, e));
    }
    // SAFETY: the file was just created by us under a unique temporary name and keeps its
    // size; the map is only read, for regions already written.
    let map = match unsafe { memmap2::Mmap::map(&file) } {
        Ok(m) => m,
        Err(e) => return cleanup(QuantError::io(&tmp, e)),
    };
    let (produced, sha) = std::thread::scope(|scope| {
        let (tx, rx) = sync_channel::<(usize, usize)>(64);
        let map = &map;
        let hasher = scope.spawn(move || hash_thread(rx, map));
        let mut o = Output {
            file: &file,
            path: &tmp,
            next: 0,
            tx,
        };
        let produced = (|| -> Result<(Vec<TensorReport>, ErrorStats), QuantError> {
            let h = o.take(header.len() as u64);
            o.write(&header, h)?;
            o.done(h, header.len() as u64)?;
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
                };
                let outs = &outputs[start..oi];
                if let Some(stats) = job.run(outs, &mut o)? {
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
            if o.next != planned {
                return Err(QuantError::Spec(format!(
                    "internal error: produced {} bytes, planned {planned}",
                    o.next
                )));
            }
            Ok((reports, overall))
        })();
        drop(o);
        (produced, hasher.join())
    });
    drop(map);
    drop(file);
    let (reports, overall) = match produced {
        Ok(r) => r,
        Err(e) => return cleanup(e),
    };
    let Ok(digest) = sha else {
        return cleanup(QuantError::Spec(
            "internal error: the hashing thread panicked".into(),
        ));
    };
    if let Err(e) = omnipack_fs::check_replaceable(out).and_then(|()| std::fs::rename(&tmp, out)) {
        return cleanup(QuantError::io(out, e));
    }
    let quality = Quality::of(reports.iter().map(|t| (t.name.as_str(), &t.stats)));
    Ok(QuantizeOutcome {
        path: out.to_path_buf(),
        file_bytes: planned,
        sha256: digest.sha256,
        crc32: digest.crc32,
        data_bytes: data_bytes(&outputs),
        parameters: infos.iter().map(|i| i.numel()).sum(),
        outputs,
        tensors: reports,
        overall,
        quality,
    })
}

struct Job<'a> {
    file: &'a SafetensorsFile,
    entry: &'a TensorEntry,
    info: &'a TensorInfo,
    spec: &'a QuantSpec,
}

/// Sums per-task statistics in task order (rayon's `collect` keeps it). Tasks are a fixed
/// split of the work, so the total does not depend on the thread count.
fn sum_in_order(parts: Vec<ErrorStats>) -> ErrorStats {
    let mut total = ErrorStats::default();
    for s in &parts {
        total.merge(s);
    }
    total
}

/// A reusable per-task output buffer (one per rayon split).
fn buf() -> Vec<u8> {
    Vec::new()
}

fn sized(v: &mut Vec<u8>, len: usize) -> &mut [u8] {
    v.resize(len, 0);
    &mut v[..len]
}

impl Job<'_> {
    fn run(
        &self,
        outs: &[OutputTensor],
        o: &mut Output<'_>,
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

    fn populate(&self, input: &[u8]) {
        let start = input.as_ptr() as usize - self.bytes().as_ptr() as usize;
        self.file
            .populate(self.entry.offset + start as u64, input.len() as u64);
    }

    fn copy(&self, o: &mut Output<'_>) -> Result<(), QuantError> {
        for (i, c) in self.bytes().chunks(CHUNK_BYTES as usize).enumerate() {
            let at = o.take(c.len() as u64);
            o.write(c, at)?;
            o.done(at, c.len() as u64)?;
            self.release(i as u64 * CHUNK_BYTES, c.len() as u64);
        }
        Ok(())
    }

    fn task_result(
        &self,
        r: Result<Vec<ErrorStats>, (usize, TaskError)>,
        o: &Output<'_>,
        chunk_first: usize,
    ) -> Result<ErrorStats, QuantError> {
        match r {
            Ok(s) => Ok(sum_in_order(s)),
            Err((_, TaskError::Io(e))) => Err(QuantError::io(o.path, e)),
            Err((task_first, TaskError::NonFinite(at))) => {
                // Tasks run in parallel: report the first non-finite element of the tensor,
                // whichever task stopped first.
                let found = (chunk_first + task_first + at) as u64;
                Err(self.non_finite(self.first_non_finite().unwrap_or(found)))
            }
        }
    }

    fn cast(&self, to: Dtype, o: &mut Output<'_>) -> Result<ErrorStats, QuantError> {
        let from = self.info.dtype;
        let (fs, ts) = (from.size_bytes() as usize, to.size_bytes() as usize);
        let elems_per_chunk = (CHUNK_BYTES as usize / fs).max(1);
        let sub = 32 * 1024;
        let mut total = ErrorStats::default();
        for (ci, c) in self.bytes().chunks(elems_per_chunk * fs).enumerate() {
            let n = c.len() / fs;
            let at = o.take((n * ts) as u64);
            // Sub-chunks have a fixed size, so the per-sub-chunk statistics (summed in order)
            // do not depend on the thread count.
            let stats = c
                .par_chunks(sub * fs)
                .enumerate()
                .map_init(
                    || (Vec::new(), buf()),
                    |(w, b), (ti, src)| {
                        let k = src.len() / fs;
                        w.resize(k, 0f32);
                        kernels::decode_f32(src, from, w);
                        let dst = sized(b, k * ts);
                        kernels::encode_f32(w, to, dst);
                        write_at(o.file, dst, at + (ti * sub * ts) as u64)
                            .map_err(|e| (0, TaskError::Io(e)))?;
                        // Kept/cast tensors may hold infinities (masks): measured on finite only.
                        Ok(quality::cast_error_stats(w, to))
                    },
                )
                .collect();
            total.merge(&self.task_result(stats, o, 0)?);
            o.done(at, (n * ts) as u64)?;
            self.release((ci * elems_per_chunk * fs) as u64, c.len() as u64);
        }
        Ok(total)
    }

    fn rows_per_chunk(&self, cols: u64) -> usize {
        let row_bytes = cols * self.info.dtype.size_bytes();
        (CHUNK_BYTES / row_bytes.max(1)).max(1) as usize
    }

    /// Rows per rayon task: a fixed split of each chunk into [`TASKS_PER_CHUNK`] tasks, enough
    /// to balance many threads. It does not depend on the thread count, so neither do the
    /// per-task statistics nor their sum (taken in task order).
    fn task_rows(&self, rows_per_chunk: usize) -> usize {
        rows_per_chunk.div_ceil(TASKS_PER_CHUNK).max(1)
    }

    /// Flat index of the first non-finite element of the tensor (error path only).
    fn first_non_finite(&self) -> Option<u64> {
        let dt = self.info.dtype;
        let es = dt.size_bytes() as usize;
        let mut w = vec![0f32; 64 * 1024];
        for (ci, c) in self.bytes().chunks(w.len() * es).enumerate() {
            let n = c.len() / es;
            kernels::decode_f32(c, dt, &mut w[..n]);
            if let Some(i) = kernels::first_non_finite(&w[..n]) {
                return Some((ci * 64 * 1024 + i) as u64);
            }
        }
        None
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
        let codes_at = o.take(outs[0].data_bytes());
        let scales_at = o.take(outs[1].data_bytes());
        let biases_at = o.take(outs[2].data_bytes());
        let bytes = self.bytes();
        let quantize = match self.spec.method {
            Method::Rtn => kernels::affine_quantize_bytes,
            Method::Mse => kernels::affine_quantize_mse_bytes,
        };
        let mut total = ErrorStats::default();
        let mut r0 = 0;
        while r0 < rows {
            let nr = rpc.min(rows - r0);
            let input = &bytes[r0 * cols * es..(r0 + nr) * cols * es];
            self.populate(input);
            let res = input
                .par_chunks(task * cols * es)
                .enumerate()
                .map_init(
                    || (buf(), buf(), buf()),
                    |(cb, sbuf, bbuf), (ti, i)| {
                        let n = i.len() / (cols * es);
                        let (c, s, b) = (
                            sized(cb, n * code_row),
                            sized(sbuf, n * sb_row),
                            sized(bbuf, n * sb_row),
                        );
                        let mut st = ErrorStats::default();
                        quantize(i, dt, cols, g, bits, c, s, b, Some(&mut st))
                            .map_err(|at| (ti * task * cols, TaskError::NonFinite(at)))?;
                        let row = (r0 + ti * task) as u64;
                        let io = |e| (0, TaskError::Io(e));
                        write_at(o.file, c, codes_at + row * code_row as u64).map_err(io)?;
                        write_at(o.file, s, scales_at + row * sb_row as u64).map_err(io)?;
                        write_at(o.file, b, biases_at + row * sb_row as u64).map_err(io)?;
                        Ok(st)
                    },
                )
                .collect();
            total.merge(&self.task_result(res, o, r0 * cols)?);
            o.done(codes_at + (r0 * code_row) as u64, (nr * code_row) as u64)?;
            self.release((r0 * cols * es) as u64, input.len() as u64);
            r0 += nr;
        }
        o.done(scales_at, outs[1].data_bytes())?;
        o.done(biases_at, outs[2].data_bytes())?;
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
        let packed_at = o.take(outs[0].data_bytes());
        let absmax_at = o.take(outs[1].data_bytes());
        let bytes = self.bytes();
        let mut total = ErrorStats::default();
        let mut r0 = 0;
        while r0 < rows {
            let nr = rpc.min(rows - r0);
            let input = &bytes[r0 * cols * es..(r0 + nr) * cols * es];
            self.populate(input);
            let res = input
                .par_chunks(task * cols * es)
                .enumerate()
                .map_init(
                    || (buf(), buf()),
                    |(pb, ab), (ti, i)| {
                        let n = i.len() / (cols * es);
                        let (p, a) = (sized(pb, n * packed_row), sized(ab, n * am_row));
                        let mut st = ErrorStats::default();
                        kernels::bnb4_quantize_bytes(i, dt, block, kind, p, a, Some(&mut st))
                            .map_err(|at| (ti * task * cols, TaskError::NonFinite(at)))?;
                        let row = (r0 + ti * task) as u64;
                        let io = |e| (0, TaskError::Io(e));
                        write_at(o.file, p, packed_at + row * packed_row as u64).map_err(io)?;
                        write_at(o.file, a, absmax_at + row * am_row as u64).map_err(io)?;
                        Ok(st)
                    },
                )
                .collect();
            total.merge(&self.task_result(res, o, r0 * cols)?);
            o.done(
                packed_at + (r0 * packed_row) as u64,
                (nr * packed_row) as u64,
            )?;
            self.release((r0 * cols * es) as u64, input.len() as u64);
            r0 += nr;
        }
        o.done(absmax_at, outs[1].data_bytes())?;
        let mut qm = [0u8; 64];
        kernels::encode_f32(kind.code(), Dtype::F32, &mut qm);
        let at = o.take(64);
        o.write(&qm, at)?;
        o.done(at, 64)?;
        let state = bnb_quant_state_json(self.spec.format, self.spec.group_size, self.info);
        let at = o.take(state.len() as u64);
        o.write(state.as_bytes(), at)?;
        o.done(at, state.len() as u64)?;
        Ok(total)
    }
}
