//! File and byte digests: the one place omnipack hashes bytes.
//!
//! A [`FileDigest`] is a file's size, sha256 and CRC-32, computed in one pass. The sha256 is
//! what outputs, caches and summaries record; the CRC-32 is what a zip entry header needs, so a
//! bundle zip can be written in one sequential pass from digests computed when each file was
//! produced.

use std::io::{self, Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

/// Size of the read buffer when hashing a file.
pub const HASH_CHUNK: usize = 1 << 20;

/// Lowercase hex of `bytes` (sha2 0.11 digests do not format with `{:x}`).
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        s.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    s
}

/// Whether `s` is a sha256 as omnipack writes them: 64 lowercase hex digits.
pub fn is_sha256(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// sha256 of a byte slice, lowercase hex.
pub fn sha256_bytes(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// What identifies a file's bytes: size, sha256 (lowercase hex) and CRC-32 (the zip checksum).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDigest {
    /// Size in bytes.
    pub size: u64,
    /// sha256, lowercase hex.
    pub sha256: String,
    /// CRC-32 (IEEE, as in zip and gzip).
    pub crc32: u32,
}

impl FileDigest {
    /// The digest of bytes in memory.
    pub fn of_bytes(bytes: &[u8]) -> FileDigest {
        let mut d = Digester::new();
        d.update(bytes);
        d.finish()
    }
}

/// Computes a [`FileDigest`] incrementally.
#[derive(Clone, Default)]
pub struct Digester {
    sha256: Sha256,
    crc32: crc32fast::Hasher,
    size: u64,
}

impl std::fmt::Debug for Digester {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Digester")
            .field("size", &self.size)
            .finish()
    }
}

impl Digester {
    /// An empty digester.
    pub fn new() -> Digester {
        Digester::default()
    }

    /// Adds `bytes`.
    pub fn update(&mut self, bytes: &[u8]) {
        self.sha256.update(bytes);
        self.crc32.update(bytes);
        self.size += bytes.len() as u64;
    }

    /// Bytes added so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The digest of everything added.
    pub fn finish(self) -> FileDigest {
        FileDigest {
            size: self.size,
            sha256: hex(&self.sha256.finalize()),
            crc32: self.crc32.finalize(),
        }
    }
}

/// The digest of a file, read sequentially (not memory-mapped: a file truncated by someone else
/// while it is hashed gives a wrong digest or an error, never a crash).
pub fn digest_file(path: &Path) -> io::Result<FileDigest> {
    // A FIFO, socket or device is refused before a byte is read (never blocks).
    let mut f = omnipack_fs::open_regular(path)?;
    let mut d = Digester::new();
    let mut buf = vec![0u8; HASH_CHUNK];
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        d.update(&buf[..n]);
    }
    Ok(d.finish())
}

/// The sha256 (lowercase hex) of a file: [`digest_file`]'s sha256.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    digest_file(path).map(|d| d.sha256)
}

/// A writer that digests everything written through it.
#[derive(Debug)]
pub struct DigestWriter<W> {
    inner: W,
    digest: Digester,
}

impl<W: Write> DigestWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        DigestWriter {
            inner,
            digest: Digester::new(),
        }
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.digest.size()
    }

    /// The inner writer.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// The digest of everything written, and the inner writer.
    pub fn finish(self) -> (FileDigest, W) {
        (self.digest.finish(), self.inner)
    }
}

impl<W: Write> Write for DigestWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.digest.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_sha256_and_crc32() {
        assert_eq!(hex(&[0, 15, 255]), "000fff");
        assert_eq!(
            sha256_bytes(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        // The CRC-32 check value of the IEEE polynomial.
        assert_eq!(FileDigest::of_bytes(b"123456789").crc32, 0xcbf4_3926);
    }

    #[test]
    fn writer_file_and_bytes_agree() {
        let mut w = DigestWriter::new(Vec::new());
        w.write_all(b"ab").unwrap();
        w.write_all(b"c").unwrap();
        let (d, inner) = w.finish();
        assert_eq!(inner, b"abc");
        assert_eq!(d, FileDigest::of_bytes(b"abc"));
        assert_eq!(d.size, 3);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(digest_file(&p).unwrap(), d);
        assert_eq!(sha256_file(&p).unwrap(), d.sha256);
    }
}
