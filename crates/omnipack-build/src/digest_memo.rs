//! The digest memo that lets an unchanged rebuild skip reading its inputs, and the file stamps
//! it (and the cache) trust instead of re-reading a file. Hashing itself is
//! [`omnipack_quant::digest`].

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use omnipack_quant::FileDigest;
use serde::{Deserialize, Serialize};

/// What identifies a file's content without reading it: size, modification time, change time,
/// device and inode. Every write to a file updates its change time (ctime), which no program
/// can set back (`touch -r` restores the mtime, not the ctime; only changing the system clock
/// could), so a file edited in place with its size and mtime kept still gets a new stamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStamp {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i128,
    /// Change time (of the inode: content or attributes), nanoseconds since the epoch.
    pub ctime_ns: i128,
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
            ctime_ns: m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128,
            dev: m.dev(),
            ino: m.ino(),
        }
    }
}

/// Where a build reads the time (the digest memo's racy window depends on it): the system
/// clock, or a fake one in tests.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> SystemTime + Send + Sync>);

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock(Arc::new(SystemTime::now))
    }

    /// A clock that reads `now`.
    pub fn new(now: impl Fn() -> SystemTime + Send + Sync + 'static) -> Clock {
        Clock(Arc::new(now))
    }

    /// Nanoseconds since the epoch, now.
    pub fn now_ns(&self) -> i128 {
        (self.0)()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0)
    }
}

impl Default for Clock {
    fn default() -> Clock {
        Clock::system()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Clock")
    }
}

/// A file modified less than this long before it was hashed may change again within the same
/// timestamp tick without its stamp changing ("racy" entries are re-hashed once).
pub const RACY_NS: i128 = 2_000_000_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct MemoEntry {
    stamp: FileStamp,
    sha256: String,
    /// Absent in memos written before CRC-32s were recorded: such an entry is hashed again.
    #[serde(default)]
    crc32: Option<u32>,
    hashed_at_ns: i128,
}

/// Memoised file digests keyed by absolute path and validated by [`FileStamp`], persisted in
/// the cache folder so that an unchanged rebuild reads no weights.
#[derive(Debug, Default)]
pub struct DigestMemo {
    path: Option<PathBuf>,
    entries: Mutex<BTreeMap<PathBuf, MemoEntry>>,
    dirty: Mutex<bool>,
    clock: Clock,
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
    /// Loads the memo stored at `path` (an unreadable or corrupt memo is simply empty); `clock`
    /// says when a file is hashed.
    pub fn load(path: PathBuf, clock: Clock) -> DigestMemo {
        let entries = omnipack_fs::read_capped_nofollow(&path, omnipack_fs::MAX_DOCUMENT_BYTES)
            .ok()
            .and_then(|b| serde_json::from_slice::<BTreeMap<PathBuf, MemoEntry>>(&b).ok())
            .unwrap_or_default();
        DigestMemo {
            path: Some(path),
            entries: Mutex::new(entries),
            dirty: Mutex::new(false),
            clock,
        }
    }

    /// The digest of `path`, from the memo when its stamp is unchanged and it was hashed more
    /// than [`RACY_NS`] after its last modification.
    pub fn digest(&self, path: &Path, stats: &Mutex<MemoStats>) -> io::Result<FileDigest> {
        let abs = std::path::absolute(path)?;
        let stamp = FileStamp::of(&abs)?;
        if let Ok(map) = self.entries.lock()
            && let Some(e) = map.get(&abs)
            && e.stamp == stamp
            && e.hashed_at_ns - stamp.mtime_ns > RACY_NS
            && let Some(crc32) = e.crc32
        {
            if let Ok(mut s) = stats.lock() {
                s.memo_hits += 1;
            }
            return Ok(FileDigest {
                size: stamp.size,
                sha256: e.sha256.clone(),
                crc32,
            });
        }
        let hashed_at_ns = self.clock.now_ns();
        let d = omnipack_quant::digest_file(&abs)?;
        let after = FileStamp::of(&abs)?;
        if let Ok(mut s) = stats.lock() {
            s.bytes_hashed += d.size;
        }
        if after == stamp
            && let Ok(mut map) = self.entries.lock()
        {
            map.insert(
                abs,
                MemoEntry {
                    stamp,
                    sha256: d.sha256.clone(),
                    crc32: Some(d.crc32),
                    hashed_at_ns,
                },
            );
            if let Ok(mut d) = self.dirty.lock() {
                *d = true;
            }
        }
        Ok(d)
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
        let mut merged: BTreeMap<PathBuf, MemoEntry> =
            omnipack_fs::read_capped_nofollow(path, omnipack_fs::MAX_DOCUMENT_BYTES)
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
        omnipack_fs::write_atomic(path, &bytes)
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
        let memo = DigestMemo::load(dir.path().join("memo.json"), Clock::system());
        let stats = Mutex::new(MemoStats::default());
        assert_eq!(
            memo.digest(&f, &stats).unwrap().sha256,
            sha256_bytes(b"one")
        );
        std::fs::write(&f, b"two!").unwrap();
        assert_eq!(
            memo.digest(&f, &stats).unwrap().sha256,
            sha256_bytes(b"two!")
        );
        memo.save().unwrap();
        let again = DigestMemo::load(dir.path().join("memo.json"), Clock::system());
        assert_eq!(
            again.digest(&f, &stats).unwrap().sha256,
            sha256_bytes(b"two!")
        );
    }

    #[test]
    fn a_file_hashed_within_the_racy_window_is_hashed_again() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x");
        std::fs::write(&f, b"one").unwrap();
        let mtime = std::fs::metadata(&f).unwrap().modified().unwrap();
        let at = |secs: u64| Clock::new(move || mtime + std::time::Duration::from_secs(secs));
        let stats = Mutex::new(MemoStats::default());
        let read = |s: &Mutex<MemoStats>| s.lock().map(|s| (s.bytes_hashed, s.memo_hits)).unwrap();
        // Hashed 1 s after its last change: the file may still change within the same
        // timestamp tick, so the memo does not trust the entry.
        let memo = DigestMemo::load(dir.path().join("a.json"), at(1));
        memo.digest(&f, &stats).unwrap();
        memo.digest(&f, &stats).unwrap();
        assert_eq!(read(&stats), (6, 0));
        // Hashed 10 s after: the next lookup is a hit.
        let memo = DigestMemo::load(dir.path().join("b.json"), at(10));
        memo.digest(&f, &stats).unwrap();
        let d = memo.digest(&f, &stats).unwrap();
        assert_eq!(read(&stats), (9, 1));
        assert_eq!(d, omnipack_quant::FileDigest::of_bytes(b"one"));
    }
}
