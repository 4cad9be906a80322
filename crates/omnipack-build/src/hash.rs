//! The digest memo that lets an unchanged rebuild skip reading its inputs, and the file stamps
//! it (and the cache) trust instead of re-reading a file. Hashing itself is
//! [`omnipack_quant::digest`].

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// What identifies a file's content without reading it: size, modification time, inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStamp {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i128,
    /// Device id.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
}

impl FileStamp {
    /// The stamp of `path` (following symlinks).
    pub fn of(path: &Path) -> io::Result<FileStamp> {
        let m = std::fs::metadata(path)?;
        Ok(FileStamp::from_metadata(&m))
    }

    /// The stamp from metadata.
    pub fn from_metadata(m: &std::fs::Metadata) -> FileStamp {
        FileStamp {
            size: m.size(),
            mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
            dev: m.dev(),
            ino: m.ino(),
        }
    }
}

/// Nanoseconds since the epoch, now.
fn now_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

/// A file modified less than this long before it was hashed may change again within the same
/// timestamp tick without its stamp changing ("racy" entries are re-hashed once).
const RACY_NS: i128 = 2_000_000_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct MemoEntry {
    stamp: FileStamp,
    sha256: String,
    hashed_at_ns: i128,
}

/// Memoised file digests keyed by absolute path and validated by [`FileStamp`], persisted in
/// the cache folder so that an unchanged rebuild reads no weights.
#[derive(Debug, Default)]
pub struct DigestMemo {
    path: Option<PathBuf>,
    entries: Mutex<BTreeMap<PathBuf, MemoEntry>>,
    dirty: Mutex<bool>,
}

/// Bytes read to compute digests (for reporting).
#[derive(Debug, Default, Clone, Copy)]
pub struct MemoStats {
    /// Files whose digest came from the memo.
    pub memo_hits: u64,
    /// Bytes hashed because the memo had no valid entry.
    pub bytes_hashed: u64,
}

impl DigestMemo {
    /// Loads the memo stored at `path` (an unreadable or corrupt memo is simply empty).
    pub fn load(path: PathBuf) -> DigestMemo {
        let entries = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<BTreeMap<PathBuf, MemoEntry>>(&b).ok())
            .unwrap_or_default();
        DigestMemo {
            path: Some(path),
            entries: Mutex::new(entries),
            dirty: Mutex::new(false),
        }
    }

    /// An in-memory memo that is never saved.
    pub fn ephemeral() -> DigestMemo {
        DigestMemo::default()
    }

    /// sha256 (hex) and size of `path`, from the memo when its stamp is unchanged.
    pub fn digest(&self, path: &Path, stats: &Mutex<MemoStats>) -> io::Result<(String, u64)> {
        let abs = std::path::absolute(path)?;
        let stamp = FileStamp::of(&abs)?;
        if let Ok(map) = self.entries.lock()
            && let Some(e) = map.get(&abs)
            && e.stamp == stamp
            && e.hashed_at_ns - stamp.mtime_ns > RACY_NS
        {
            if let Ok(mut s) = stats.lock() {
                s.memo_hits += 1;
            }
            return Ok((e.sha256.clone(), stamp.size));
        }
        let hashed_at_ns = now_ns();
        let d = omnipack_quant::digest_file(&abs)?;
        let (sha, size) = (d.sha256, d.size);
        let after = FileStamp::of(&abs)?;
        if let Ok(mut s) = stats.lock() {
            s.bytes_hashed += size;
        }
        if after == stamp
            && let Ok(mut map) = self.entries.lock()
        {
            map.insert(
                abs,
                MemoEntry {
                    stamp,
                    sha256: sha.clone(),
                    hashed_at_ns,
                },
            );
            if let Ok(mut d) = self.dirty.lock() {
                *d = true;
            }
        }
        Ok((sha, size))
    }

    /// Writes the memo back (temp file and rename) when it changed.
    pub fn save(&self) -> io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        if !self.dirty.lock().map(|d| *d).unwrap_or(false) {
            return Ok(());
        }
        // Merge with entries another build may have saved meanwhile (shared cache dirs).
        let mut merged: BTreeMap<PathBuf, MemoEntry> = std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        if let Ok(map) = self.entries.lock() {
            for (k, v) in map.iter() {
                merged.insert(k.clone(), v.clone());
            }
        }
        merged.retain(|k, _| k.exists());
        let bytes = serde_json::to_vec(&merged).map_err(io::Error::other)?;
        crate::fsutil::write_atomic(path, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use omnipack_quant::sha256_bytes;

    #[test]
    fn memo_detects_changes() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x");
        std::fs::write(&f, b"one").unwrap();
        let memo = DigestMemo::load(dir.path().join("memo.json"));
        let stats = Mutex::new(MemoStats::default());
        assert_eq!(memo.digest(&f, &stats).unwrap().0, sha256_bytes(b"one"));
        std::fs::write(&f, b"two!").unwrap();
        assert_eq!(memo.digest(&f, &stats).unwrap().0, sha256_bytes(b"two!"));
        memo.save().unwrap();
        let again = DigestMemo::load(dir.path().join("memo.json"));
        assert_eq!(again.digest(&f, &stats).unwrap().0, sha256_bytes(b"two!"));
    }
}
