//! The deterministic bundle zip (docs/build.md, "Bundle zip").
//!
//! Entries are sorted by the bytes of their path with `bundle.json` first; everything is
//! stored uncompressed with a fixed timestamp (1980-01-01), Unix system and mode 0644;
//! weights and other large binaries start on a 16 KiB boundary so a runtime can memory-map
//! them from the zip; zip64 is used for entries of 4 GiB or more. The sha256 of every entry is
//! computed in the same pass that writes it and checked against the digest recorded when the
//! file was produced.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, DateTime, System, ZipWriter};

use omnipack_quant::{DigestWriter, FileDigest, HASH_CHUNK as CHUNK, digest_file};

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
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// The zip library refused something.
    #[error("{path}: zip: {source}")]
    Zip {
        path: PathBuf,
        source: zip::result::ZipError,
    },
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
}

fn aligned(path: &str, size: u64) -> bool {
    path.ends_with(".safetensors") || path.ends_with(".bin") || size >= 64 * 1024
}

fn options(path: &str, size: u64) -> SimpleFileOptions {
    let mut o = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Stored)
        .last_modified_time(DateTime::default())
        .system(System::Unix)
        .unix_permissions(0o644)
        .large_file(size >= u32::MAX as u64);
    if aligned(path, size) {
        o = o.with_alignment(DATA_ALIGNMENT);
    }
    o
}

/// Sorts entries: `bundle.json` first, then by the bytes of the path.
pub fn sort_entries(entries: &mut [Entry]) {
    entries.sort_by(|a, b| {
        let ka = (a.path != BUNDLE_JSON, a.path.as_bytes());
        let kb = (b.path != BUNDLE_JSON, b.path.as_bytes());
        ka.cmp(&kb)
    });
}

/// Writes `entries` (sorted here) into a new zip at `out`, checking each entry's digest while
/// writing it, then digests the finished zip.
pub fn write_zip(
    out: &Path,
    mut entries: Vec<Entry>,
    on_bytes: &dyn Fn(u64),
) -> Result<ZipOutcome, ZipError> {
    sort_entries(&mut entries);
    for w in entries.windows(2) {
        if w[0].path == w[1].path {
            return Err(ZipError::BadPath(w[0].path.clone()));
        }
    }
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ZipError::Io { path, source }
    };
    let zip_err = |source| ZipError::Zip {
        path: out.to_path_buf(),
        source,
    };
    let file = File::create(out).map_err(io_err(out))?;
    let mut zip = ZipWriter::new(BufWriter::with_capacity(CHUNK, file));
    let mut buf = vec![0u8; CHUNK];
    for e in &entries {
        if !crate::fsutil::is_safe_relative(&e.path) {
            return Err(ZipError::BadPath(e.path.clone()));
        }
        zip.start_file(e.path.as_str(), options(&e.path, e.digest.size))
            .map_err(zip_err)?;
        let mut w = DigestWriter::new(&mut zip);
        match &e.source {
            EntrySource::Bytes(b) => {
                w.write_all(b).map_err(io_err(out))?;
                on_bytes(b.len() as u64);
            }
            EntrySource::File(p) => {
                let mut f = File::open(p).map_err(io_err(p))?;
                loop {
                    let n = f.read(&mut buf).map_err(io_err(p))?;
                    if n == 0 {
                        break;
                    }
                    w.write_all(&buf[..n]).map_err(io_err(out))?;
                    on_bytes(n as u64);
                }
            }
        }
        let (d, _) = w.finish();
        if d.sha256 != e.digest.sha256 || d.size != e.digest.size {
            return Err(ZipError::Changed {
                entry: e.path.clone(),
                expected: e.digest.sha256.clone(),
                actual: d.sha256,
            });
        }
    }
    let w = zip.finish().map_err(zip_err)?;
    w.into_inner()
        .map_err(|e| e.into_error())
        .and_then(|f| f.sync_data())
        .map_err(io_err(out))?;
    let d = digest_file(out).map_err(io_err(out))?;
    Ok(ZipOutcome {
        size: d.size,
        sha256: d.sha256,
        crc32: d.crc32,
    })
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

/// Reads every entry of a zip in order, hashing its contents.
pub fn read_zip_entries(path: &Path) -> Result<Vec<ReadEntry>, String> {
    let f = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut z = zip::ZipArchive::new(io::BufReader::new(f))
        .map_err(|e| format!("{}: not a readable zip: {e}", path.display()))?;
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
    let f = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
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

    /// Writes a 4 GiB + 1 MiB entry (zip64); slow and disk-hungry, so run it by hand:
    /// `cargo test -p omnipack-build --release -- --ignored zip64`.
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
        write_zip(&z, entries, &|_| {}).unwrap();
        let read = read_zip_entries(&z).unwrap();
        assert_eq!(read[1].size, size);
        assert_eq!(read[1].sha256, sha);
        assert_eq!(read[1].data_start % DATA_ALIGNMENT as u64, 0);
        assert_eq!(read[2].path, "z.json");
    }
}
