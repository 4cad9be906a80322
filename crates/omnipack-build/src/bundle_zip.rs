//! The deterministic bundle zip (docs/build.md, "Bundle zip"), written in one sequential pass.
//!
//! Entries are sorted by the bytes of their path with `bundle.json` first; everything is
//! stored uncompressed with a fixed timestamp (1980-01-01 00:00), Unix system and mode 0644;
//! weights and other large binaries start on a 16 KiB boundary so a runtime can memory-map
//! them from the zip; zip64 is used for entries of 4 GiB or more. The sha256 of every entry is
//! computed in the same pass that writes it and checked against the digest recorded when the
//! file was produced, and the sha256 of the whole zip is computed as it is written: no bundle
//! is read back.
//!
//! A zip writer usually seeks back to patch each entry's CRC-32 and sizes into its local
//! header once the data is written. Every entry here comes with its CRC-32 and size, computed
//! when the file was produced (the quantizer, the cache's digest of an exporter's outputs, the
//! digest of an input), so each header is final when written and the output is a plain stream.
//!
//! The layout is the one of the `zip` crate (which reads the bundles back) with the same
//! options, byte for byte; the tests below write the same entries with both.
//!
//! Format facts (PKWARE's APPNOTE): local header `PK\x03\x04`, central directory header
//! `PK\x01\x02`, end of central directory `PK\x05\x06`, zip64 end record `PK\x06\x06` and its
//! locator `PK\x06\x07`; the zip64 extra field (id 1) holds the 64-bit sizes (and, in the central
//! directory, the 64-bit offset) a header marks with `0xFFFFFFFF`; the data-stream alignment
//! extra field (id `0xa11e`: alignment, then zero padding) pads a local header so its data
//! starts on the alignment.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use zip::CompressionMethod;

use omnipack_quant::{DigestWriter, Digester, FileDigest, HASH_CHUNK as CHUNK};

/// Alignment of entry data for memory mapping.
pub const DATA_ALIGNMENT: u16 = 16384;

/// Name of the bundle's own manifest, always the first entry.
pub const BUNDLE_JSON: &str = "bundle.json";

/// Where the bytes of a bundle entry come from.
#[derive(Debug, Clone)]
pub enum EntrySource {
    /// A file on disk.
    File(PathBuf),
    /// Bytes generated in memory (sidecars, `config.json`, `bundle.json`).
    Bytes(Vec<u8>),
}

/// One file of a bundle, with the digest recorded when it was produced.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Path inside the bundle, `/`-separated.
    pub path: String,
    /// Its bytes.
    pub source: EntrySource,
    /// Its size, sha256 and CRC-32, recorded when it was produced.
    pub digest: FileDigest,
}

impl Entry {
    /// An in-memory entry; its digest computed here.
    pub fn bytes(path: impl Into<String>, bytes: Vec<u8>) -> Entry {
        Entry {
            path: path.into(),
            digest: FileDigest::of_bytes(&bytes),
            source: EntrySource::Bytes(bytes),
        }
    }
}

/// A zip written by [`write_zip`].
#[derive(Debug, Clone)]
pub struct ZipOutcome {
    /// Size of the zip.
    pub size: u64,
    /// sha256 of the zip.
    pub sha256: String,
    /// CRC-32 of the zip.
    pub crc32: u32,
}

/// Errors while writing a bundle zip.
#[derive(Debug, thiserror::Error)]
pub enum ZipError {
    /// An I/O error on a named file.
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    /// An entry's bytes differ from the digest recorded when it was produced.
    #[error(
        "{entry}: changed since it was produced (expected sha256 {expected}, read {actual}); rebuild"
    )]
    Changed {
        entry: String,
        expected: String,
        actual: String,
    },
    /// Two entries with one path, or an unsafe path.
    #[error("bundle entry `{0}`: duplicate or unsafe path")]
    BadPath(String),
    /// A name longer than [`MAX_NAME_BYTES`].
    #[error("bundle entry `{0}`: name longer than {MAX_NAME_BYTES} bytes")]
    NameTooLong(String),
}

/// Longest entry name (a header, its name and its extra fields must fit in 64 KiB).
pub const MAX_NAME_BYTES: usize = 4096;

/// Sizes and offsets from this value up are written in zip64 extra fields.
const ZIP64_THRESHOLD: u64 = u32::MAX as u64;
/// Entry counts above this are written in the zip64 end record only.
const ZIP64_MAX_ENTRIES: usize = u16::MAX as usize;
/// "Version needed to extract" of a stored entry, and of a zip64 one.
const VERSION_STORED: u16 = 10;
const VERSION_ZIP64: u16 = 45;
/// "Version made by": the high byte names the system, 3 for Unix.
const MADE_BY_UNIX: u16 = 3 << 8;
/// General-purpose flag: the name is UTF-8 (set for names that are not ASCII).
const FLAG_UTF8: u16 = 1 << 11;
/// MS-DOS date of 1980-01-01 (time 00:00 is 0).
const DOS_DATE_1980_01_01: u16 = (1 << 5) | 1;
/// External attributes: a regular file with mode 0644, in the high 16 bits.
const UNIX_REGULAR_0644: u32 = (0o100_000 | 0o644) << 16;
const ZIP64_EXTRA_ID: u16 = 0x0001;
const ALIGNMENT_EXTRA_ID: u16 = 0xa11e;
const LOCAL_HEADER_LEN: u64 = 30;

/// Whether an entry's data starts on a [`DATA_ALIGNMENT`] boundary: weights, binaries and any
/// entry of 64 KiB or more.
fn aligned(path: &str, size: u64) -> bool {
    path.ends_with(".safetensors") || path.ends_with(".bin") || size >= 64 * 1024
}

/// Sorts entries: `bundle.json` first, then by the bytes of the path.
pub fn sort_entries(entries: &mut [Entry]) {
    entries.sort_by(|a, b| {
        let ka = (a.path != BUNDLE_JSON, a.path.as_bytes());
        let kb = (b.path != BUNDLE_JSON, b.path.as_bytes());
        ka.cmp(&kb)
    });
}

/// Writes `entries` (sorted here) into a new zip at `out` in one pass, checking each entry's
/// digest while writing it and digesting the zip as it is written. `on_bytes` is told the
/// entry bytes written as they go.
pub fn write_zip(
    out: &Path,
    entries: Vec<Entry>,
    on_bytes: &dyn Fn(u64),
) -> Result<ZipOutcome, ZipError> {
    write_zip_with(out, entries, on_bytes, false)
}

/// What the central directory needs of an entry written.
struct Written {
    name: Vec<u8>,
    crc32: u32,
    size: u64,
    header_start: u64,
    zip64: bool,
}

impl Written {
    fn version_needed(&self) -> u16 {
        if self.zip64 {
            VERSION_ZIP64
        } else {
            VERSION_STORED
        }
    }

    fn flags(&self) -> u16 {
        if self.name.is_ascii() { 0 } else { FLAG_UTF8 }
    }
}

/// [`write_zip`], with every entry in zip64 form when `force_zip64` (how the tests check the
/// zip64 layout without writing 4 GiB).
fn write_zip_with(
    out: &Path,
    mut entries: Vec<Entry>,
    on_bytes: &dyn Fn(u64),
    force_zip64: bool,
) -> Result<ZipOutcome, ZipError> {
    sort_entries(&mut entries);
    for (i, e) in entries.iter().enumerate() {
        let duplicate = entries.get(i + 1).is_some_and(|n| n.path == e.path);
        if duplicate || !omnipack_fs::is_safe_relative(&e.path) {
            return Err(ZipError::BadPath(e.path.clone()));
        }
        if e.path.len() > MAX_NAME_BYTES {
            return Err(ZipError::NameTooLong(e.path.clone()));
        }
    }
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ZipError::Io { path, source }
    };
    let file = File::create(out).map_err(io_err(out))?;
    let mut w = DigestWriter::new(BufWriter::with_capacity(CHUNK, file));
    let mut written = Vec::with_capacity(entries.len());
    let mut buf = vec![0u8; CHUNK];
    for e in &entries {
        let entry = Written {
            name: e.path.as_bytes().to_vec(),
            crc32: e.digest.crc32,
            size: e.digest.size,
            header_start: w.written(),
            zip64: force_zip64 || e.digest.size >= ZIP64_THRESHOLD,
        };
        w.write_all(&local_header(&entry, aligned(&e.path, e.digest.size)))
            .map_err(io_err(out))?;
        let d = copy_data(e, &mut w, &mut buf, out, on_bytes)?;
        // The header already holds the recorded CRC-32: it must be the data's too.
        if d != e.digest {
            return Err(ZipError::Changed {
                entry: e.path.clone(),
                expected: e.digest.sha256.clone(),
                actual: d.sha256,
            });
        }
        written.push(entry);
    }
    let central_start = w.written();
    for entry in &written {
        w.write_all(&central_header(entry)).map_err(io_err(out))?;
    }
    let central_size = w.written() - central_start;
    w.write_all(&end_records(&written, central_start, central_size))
        .map_err(io_err(out))?;
    let (digest, buffered) = w.finish();
    // Not synced here: the cache checks an entry's files by their stamps (re-hashing a changed
    // one) before using it, as for every other file of the cache.
    buffered
        .into_inner()
        .map_err(|e| e.into_error())
        .map_err(io_err(out))?;
    Ok(ZipOutcome {
        size: digest.size,
        sha256: digest.sha256,
        crc32: digest.crc32,
    })
}

/// Copies an entry's bytes into the zip, digesting them on the way.
fn copy_data(
    e: &Entry,
    w: &mut impl Write,
    buf: &mut [u8],
    out: &Path,
    on_bytes: &dyn Fn(u64),
) -> Result<FileDigest, ZipError> {
    let mut d = Digester::new();
    match &e.source {
        EntrySource::Bytes(b) => {
            d.update(b);
            w.write_all(b).map_err(|source| ZipError::Io {
                path: out.to_path_buf(),
                source,
            })?;
            on_bytes(b.len() as u64);
        }
        EntrySource::File(p) => {
            let read_err = |source| ZipError::Io {
                path: p.clone(),
                source,
            };
            let mut f = omnipack_fs::open_regular(p).map_err(read_err)?;
            loop {
                let n = match f.read(buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(read_err(e)),
                };
                d.update(&buf[..n]);
                w.write_all(&buf[..n]).map_err(|source| ZipError::Io {
                    path: out.to_path_buf(),
                    source,
                })?;
                on_bytes(n as u64);
            }
        }
    }
    Ok(d.finish())
}

/// Little-endian field writers.
trait Le {
    fn u16(&mut self, v: u16);
    fn u32(&mut self, v: u32);
    fn u64(&mut self, v: u64);
}

impl Le for Vec<u8> {
    fn u16(&mut self, v: u16) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.extend_from_slice(&v.to_le_bytes());
    }
}

/// A 32-bit size or offset field: the value, or `0xFFFFFFFF` when it is in the zip64 field.
fn field32(v: u64, in_zip64: bool) -> u32 {
    if in_zip64 {
        u32::MAX
    } else {
        v.min(ZIP64_THRESHOLD) as u32
    }
}

/// The local header of `e` (its data follows), padded with an alignment field so the data
/// starts on [`DATA_ALIGNMENT`] when `align`.
fn local_header(e: &Written, align: bool) -> Vec<u8> {
    let mut extra = Vec::new();
    if e.zip64 {
        extra.u16(ZIP64_EXTRA_ID);
        extra.u16(16);
        extra.u64(e.size); // uncompressed
        extra.u64(e.size); // compressed (stored)
    }
    if align {
        let a = u64::from(DATA_ALIGNMENT);
        let data_start =
            e.header_start + LOCAL_HEADER_LEN + e.name.len() as u64 + extra.len() as u64;
        let misalignment = data_start % a;
        if misalignment != 0 {
            // The field is at least 6 bytes: its id, its length and the alignment itself.
            let mut pad = a - misalignment;
            while pad < 6 {
                pad += a;
            }
            extra.u16(ALIGNMENT_EXTRA_ID);
            extra.u16((pad - 4) as u16);
            extra.u16(DATA_ALIGNMENT);
            extra.resize(extra.len() + (pad - 6) as usize, 0);
        }
    }
    let mut h = Vec::with_capacity(LOCAL_HEADER_LEN as usize + e.name.len() + extra.len());
    h.u32(0x0403_4b50);
    h.u16(e.version_needed());
    h.u16(e.flags());
    h.u16(0); // stored
    h.u16(0); // 00:00
    h.u16(DOS_DATE_1980_01_01);
    h.u32(e.crc32);
    h.u32(field32(e.size, e.zip64));
    h.u32(field32(e.size, e.zip64));
    h.u16(e.name.len() as u16);
    h.u16(extra.len() as u16);
    h.extend_from_slice(&e.name);
    h.extend_from_slice(&extra);
    h
}

/// The central directory header of `e`.
fn central_header(e: &Written) -> Vec<u8> {
    let offset_in_zip64 = e.header_start >= ZIP64_THRESHOLD;
    let mut extra = Vec::new();
    if e.zip64 || offset_in_zip64 {
        extra.u16(ZIP64_EXTRA_ID);
        extra.u16(if e.zip64 { 16 } else { 0 } + if offset_in_zip64 { 8 } else { 0 });
        if e.zip64 {
            extra.u64(e.size);
            extra.u64(e.size);
        }
        if offset_in_zip64 {
            extra.u64(e.header_start);
        }
    }
    let mut h = Vec::with_capacity(46 + e.name.len() + extra.len());
    h.u32(0x0201_4b50);
    h.u16(MADE_BY_UNIX | e.version_needed());
    h.u16(e.version_needed());
    h.u16(e.flags());
    h.u16(0); // stored
    h.u16(0); // 00:00
    h.u16(DOS_DATE_1980_01_01);
    h.u32(e.crc32);
    h.u32(field32(e.size, e.zip64));
    h.u32(field32(e.size, e.zip64));
    h.u16(e.name.len() as u16);
    h.u16(extra.len() as u16);
    h.u16(0); // comment
    h.u16(0); // disk
    h.u16(0); // internal attributes
    h.u32(UNIX_REGULAR_0644);
    h.u32(field32(e.header_start, offset_in_zip64));
    h.extend_from_slice(&e.name);
    h.extend_from_slice(&extra);
    h
}

/// The end of the central directory: the zip64 end record and its locator when an offset,
/// the directory's size or the entry count needs them, then the classic record.
fn end_records(written: &[Written], central_start: u64, central_size: u64) -> Vec<u8> {
    let n = written.len();
    let zip64 = n > ZIP64_MAX_ENTRIES || central_size.max(central_start) > ZIP64_THRESHOLD;
    let mut h = Vec::new();
    if zip64 {
        let version = written
            .iter()
            .map(Written::version_needed)
            .fold(VERSION_STORED, u16::max);
        h.u32(0x0606_4b50);
        h.u64(44); // size of the rest of this record
        h.u16(version); // made by
        h.u16(version); // needed
        h.u32(0); // this disk
        h.u32(0); // disk of the central directory
        h.u64(n as u64);
        h.u64(n as u64);
        h.u64(central_size);
        h.u64(central_start);
        h.u32(0x0706_4b50);
        h.u32(0); // disk of the zip64 end record
        h.u64(central_start + central_size);
        h.u32(1); // disks
    }
    let count = n.min(ZIP64_MAX_ENTRIES) as u16;
    h.u32(0x0605_4b50);
    h.u16(0);
    h.u16(0);
    h.u16(count);
    h.u16(count);
    h.u32(if zip64 {
        u32::MAX
    } else {
        central_size.min(ZIP64_THRESHOLD) as u32
    });
    h.u32(central_start.min(ZIP64_THRESHOLD) as u32);
    h.u16(0); // comment
    h
}

/// One entry read back from a zip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadEntry {
    /// Path inside the zip.
    pub path: String,
    /// Uncompressed size.
    pub size: u64,
    /// sha256 of the contents.
    pub sha256: String,
    /// Offset of the entry's data in the zip file.
    pub data_start: u64,
    /// True when stored uncompressed.
    pub stored: bool,
}

/// Most entries a zip read by omnipack may have (a bundle holds a few files per component).
pub const MAX_ZIP_ENTRIES: usize = 65_535;

/// Reads every entry of a zip in order, hashing its contents. Entries must not overlap (each
/// byte of the file belongs to at most one entry), so the bytes hashed never exceed the file's
/// size: a central directory whose records all point at one entry is refused.
pub fn read_zip_entries(path: &Path) -> Result<Vec<ReadEntry>, String> {
    let f = omnipack_fs::open_regular(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let file_len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let mut z = zip::ZipArchive::new(io::BufReader::new(f))
        .map_err(|e| format!("{}: not a readable zip: {e}", path.display()))?;
    if z.len() > MAX_ZIP_ENTRIES {
        return Err(format!(
            "{}: {} entries, more than the {MAX_ZIP_ENTRIES} omnipack reads",
            path.display(),
            z.len()
        ));
    }
    let mut spans = Vec::with_capacity(z.len());
    for i in 0..z.len() {
        let e = z
            .by_index_raw(i)
            .map_err(|e| format!("{}: entry {i}: {e}", path.display()))?;
        let start = e.header_start();
        let end = e
            .data_start()
            .unwrap_or(start)
            .checked_add(e.compressed_size())
            .filter(|&end| end <= file_len)
            .ok_or_else(|| {
                format!(
                    "{}: entry {i} ends past the end of the file",
                    path.display()
                )
            })?;
        spans.push((start, end.max(start + 1), i));
    }
    spans.sort_unstable();
    for w in spans.windows(2) {
        if w[1].0 < w[0].1 {
            return Err(format!(
                "{}: entries {} and {} overlap (one stored entry listed twice?): not a bundle zip",
                path.display(),
                w[0].2,
                w[1].2
            ));
        }
    }
    let mut out = Vec::with_capacity(z.len());
    let mut buf = vec![0u8; CHUNK];
    for i in 0..z.len() {
        let mut e = z
            .by_index(i)
            .map_err(|e| format!("{}: entry {i}: {e}", path.display()))?;
        let name = e
            .name()
            .map_err(|err| format!("{}: entry {i}: {err}", path.display()))?
            .to_string();
        let data_start = e.data_start().unwrap_or(0);
        let stored = e.compression() == CompressionMethod::Stored;
        let mut w = DigestWriter::new(io::sink());
        loop {
            let n = e
                .read(&mut buf)
                .map_err(|err| format!("{}: {name}: {err}", path.display()))?;
            if n == 0 {
                break;
            }
            let _ = w.write_all(&buf[..n]);
        }
        let (d, _) = w.finish();
        let (sha256, size) = (d.sha256, d.size);
        out.push(ReadEntry {
            path: name,
            size,
            sha256,
            data_start,
            stored,
        });
    }
    Ok(out)
}

/// Reads one entry's bytes (for `bundle.json`), refusing entries larger than `limit`.
pub fn read_zip_entry(path: &Path, name: &str, limit: u64) -> Result<Vec<u8>, String> {
    let f = omnipack_fs::open_regular(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut z = zip::ZipArchive::new(io::BufReader::new(f))
        .map_err(|e| format!("{}: not a readable zip: {e}", path.display()))?;
    let e = z
        .by_name(name)
        .map_err(|e| format!("{}: {name}: {e}", path.display()))?;
    if e.size() > limit {
        return Err(format!(
            "{}: {name} is {} bytes, more than the {limit} allowed",
            path.display(),
            e.size()
        ));
    }
    let mut v = Vec::with_capacity(e.size() as usize);
    e.take(limit)
        .read_to_end(&mut v)
        .map_err(|err| format!("{}: {name}: {err}", path.display()))?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use omnipack_quant::digest_file;
    use zip::write::SimpleFileOptions;
    use zip::{DateTime, System, ZipWriter};

    /// The reference: the `zip` crate's writer with the options bundles are written with
    /// (stored, 1980-01-01, Unix, 0644, 16 KiB alignment, zip64 for entries of 4 GiB).
    fn reference_zip(out: &Path, mut entries: Vec<Entry>, force_zip64: bool) {
        sort_entries(&mut entries);
        let mut zip = ZipWriter::new(BufWriter::new(File::create(out).unwrap()));
        for e in &entries {
            let size = e.digest.size;
            let mut o = SimpleFileOptions::default()
                .compression_method(CompressionMethod::Stored)
                .last_modified_time(DateTime::default())
                .system(System::Unix)
                .unix_permissions(0o644)
                .large_file(force_zip64 || size >= u32::MAX as u64);
            if aligned(&e.path, size) {
                o = o.with_alignment(DATA_ALIGNMENT);
            }
            zip.start_file(e.path.as_str(), o).unwrap();
            match &e.source {
                EntrySource::Bytes(b) => zip.write_all(b).unwrap(),
                EntrySource::File(p) => {
                    io::copy(&mut File::open(p).unwrap(), &mut zip).unwrap();
                }
            }
        }
        zip.finish().unwrap().flush().unwrap();
    }

    /// Random bundles (sizes around the alignment and the 64 KiB threshold, names that need
    /// the UTF-8 flag, files and bytes), written by both writers: the same bytes, with and
    /// without zip64 headers.
    #[test]
    fn one_pass_writer_writes_the_zip_crates_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let names = [
            "weights.safetensors",
            "config.json",
            "a.bin",
            "tok/vocab.txt",
            "zz.mlpackage/Data/weight.bin",
            "naïve/ünïcode.json",
            "omnicoder_decode_step.io.json",
            "B.json",
        ];
        let sizes = [
            0u64, 1, 7, 4095, 16_378, 16_384, 65_535, 65_536, 70_001, 200_000,
        ];
        for round in 0..24 {
            let mut entries = vec![Entry::bytes(BUNDLE_JSON, b"{\"a\": 1}\n".to_vec())];
            for (i, name) in names.iter().enumerate() {
                if next() % 3 == 0 {
                    continue;
                }
                let size = sizes[(next() % sizes.len() as u64) as usize] as usize;
                let bytes: Vec<u8> = (0..size).map(|_| next() as u8).collect();
                if i % 2 == 0 {
                    let p = dir.path().join(format!("src-{round}-{i}"));
                    std::fs::write(&p, &bytes).unwrap();
                    entries.push(Entry {
                        path: name.to_string(),
                        source: EntrySource::File(p.clone()),
                        digest: digest_file(&p).unwrap(),
                    });
                } else {
                    entries.push(Entry::bytes(*name, bytes));
                }
            }
            for force_zip64 in [false, true] {
                let ours = dir.path().join("ours.zip");
                let theirs = dir.path().join("theirs.zip");
                let o = write_zip_with(&ours, entries.clone(), &|_| {}, force_zip64).unwrap();
                reference_zip(&theirs, entries.clone(), force_zip64);
                let (a, b) = (
                    std::fs::read(&ours).unwrap(),
                    std::fs::read(&theirs).unwrap(),
                );
                assert!(
                    a == b,
                    "round {round}, zip64 {force_zip64}: the zips differ"
                );
                assert_eq!(FileDigest::of_bytes(&a).sha256, o.sha256);
                assert_eq!(a.len() as u64, o.size);
                // And the zip crate reads it back: every entry, aligned where it should be.
                let read = read_zip_entries(&ours).unwrap();
                assert_eq!(read.len(), entries.len());
                for (r, e) in read.iter().zip({
                    let mut s = entries.clone();
                    sort_entries(&mut s);
                    s
                }) {
                    assert_eq!(
                        (r.path.as_str(), &r.sha256),
                        (e.path.as_str(), &e.digest.sha256)
                    );
                    if aligned(&e.path, e.digest.size) {
                        assert_eq!(r.data_start % u64::from(DATA_ALIGNMENT), 0, "{}", e.path);
                    }
                }
            }
        }
    }

    #[test]
    fn deterministic_sorted_aligned() {
        let dir = tempfile::tempdir().unwrap();
        let weights = dir.path().join("w");
        std::fs::write(&weights, vec![7u8; 100_000]).unwrap();
        let wd = digest_file(&weights).unwrap();
        let wsha = wd.sha256.clone();
        let entries = || {
            vec![
                Entry::bytes("z.json", b"{}".to_vec()),
                Entry {
                    path: "weights.safetensors".into(),
                    source: EntrySource::File(weights.clone()),
                    digest: wd.clone(),
                },
                Entry::bytes("B.json", b"[]".to_vec()),
                Entry::bytes(BUNDLE_JSON, b"{\"a\":1}".to_vec()),
            ]
        };
        let a = dir.path().join("a.zip");
        let b = dir.path().join("b.zip");
        let oa = write_zip(&a, entries(), &|_| {}).unwrap();
        let ob = write_zip(&b, entries(), &|_| {}).unwrap();
        assert_eq!(oa.sha256, ob.sha256);
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        let read = read_zip_entries(&a).unwrap();
        let names: Vec<_> = read.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            names,
            ["bundle.json", "B.json", "weights.safetensors", "z.json"]
        );
        let w = &read[2];
        assert!(w.stored);
        assert_eq!(w.data_start % DATA_ALIGNMENT as u64, 0);
        assert_eq!(w.sha256, wsha);
        assert_eq!(read_zip_entry(&a, BUNDLE_JSON, 100).unwrap(), b"{\"a\":1}");
    }

    #[test]
    fn changed_entry_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut e = Entry::bytes("x", b"abc".to_vec());
        e.digest.sha256 = "00".repeat(32);
        let err = write_zip(&dir.path().join("a.zip"), vec![e], &|_| {}).unwrap_err();
        assert!(err.to_string().contains("changed since"), "{err}");
    }

    /// Writes a 4 GiB + 1 MiB entry (zip64 sizes) followed by a small one (a zip64 offset,
    /// and a zip64 end record), with both writers; slow and disk-hungry (8.6 GB), so run it
    /// by hand: `cargo test -p omnipack-build --release -- --ignored zip64`.
    #[test]
    #[ignore]
    fn zip64_entry_over_4gib() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.safetensors");
        let f = File::create(&big).unwrap();
        f.set_len((4u64 << 30) + (1 << 20)).unwrap();
        drop(f);
        let d = digest_file(&big).unwrap();
        let (sha, size) = (d.sha256.clone(), d.size);
        let entries = vec![
            Entry::bytes(BUNDLE_JSON, b"{}".to_vec()),
            Entry {
                path: "weights.safetensors".into(),
                source: EntrySource::File(big.clone()),
                digest: d,
            },
            Entry::bytes("z.json", b"[]".to_vec()),
        ];
        let z = dir.path().join("b.zip");
        let ours = write_zip(&z, entries.clone(), &|_| {}).unwrap();
        let theirs = dir.path().join("c.zip");
        reference_zip(&theirs, entries, false);
        assert_eq!(digest_file(&theirs).unwrap().sha256, ours.sha256);
        std::fs::remove_file(&theirs).unwrap();
        let read = read_zip_entries(&z).unwrap();
        assert_eq!(read[1].size, size);
        assert_eq!(read[1].sha256, sha);
        assert_eq!(read[1].data_start % DATA_ALIGNMENT as u64, 0);
        assert_eq!(read[2].path, "z.json");
    }
}
