//! The content-addressed stage cache.
//!
//! An entry lives in `<cache>/<kind>/<key>/`: its files plus `entry.json` (written last) with
//! each file's size, sha256, CRC-32 and [`FileStamp`], and stage-specific metadata. The key is the
//! sha256 of the stage's input digests, its parameters and the omnipack version. A hit is
//! validated without reading the files when their stamps are unchanged; a changed stamp means
//! the file is re-hashed, and a truncated or modified entry is deleted and rebuilt.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use omnipack_fs::{remove_any, write_atomic};
use omnipack_quant::{FileDigest, digest_file, sha256_bytes};

use crate::digest_memo::FileStamp;

/// A file of a cache entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CachedFile {
    /// Path inside the entry folder, `/`-separated.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// sha256 (hex).
    pub sha256: String,
    /// CRC-32 (what a zip entry of the file records).
    pub crc32: u32,
    /// Stamp when written (so a valid entry is checked without reading it).
    pub stamp: FileStamp,
}

impl CachedFile {
    /// The file's digest as recorded.
    pub fn digest(&self) -> FileDigest {
        FileDigest {
            size: self.size,
            sha256: self.sha256.clone(),
            crc32: self.crc32,
        }
    }
}

/// `entry.json` of a cache entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EntryRecord {
    /// The key.
    pub key: String,
    /// Files of the entry, sorted by path.
    pub files: Vec<CachedFile>,
    /// Stage-specific results (sizes, parameters, ...).
    pub meta: Value,
}

/// A validated cache entry.
#[derive(Debug, Clone)]
pub struct CacheEntry {
    /// Folder of the entry.
    pub dir: PathBuf,
    /// Its record.
    pub record: EntryRecord,
}

impl CacheEntry {
    /// Absolute path of a file of the entry.
    pub fn file(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// The record of file `rel`.
    pub fn get(&self, rel: &str) -> Option<&CachedFile> {
        self.record.files.iter().find(|f| f.path == rel)
    }
}

/// What a lookup found.
#[derive(Debug)]
pub enum Lookup {
    /// A valid entry.
    Hit(CacheEntry),
    /// No entry.
    Miss,
    /// An entry that failed validation (and was removed): why.
    Corrupt(String),
}

/// The cache folder.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
    /// `kind/key` of every entry this build used (hit or committed).
    used: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
}

/// What a cache entry holds, one folder each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheKind {
    /// A tensor selection (no files: the record says the selection was made before).
    Select,
    /// An exporter's outputs.
    Export,
    /// A quantized weights file.
    Quantize,
    /// A bundle zip and its asset-pack folder.
    Package,
}

impl CacheKind {
    /// Every kind.
    pub const ALL: [CacheKind; 4] = [
        CacheKind::Select,
        CacheKind::Export,
        CacheKind::Quantize,
        CacheKind::Package,
    ];

    /// The folder name of the kind.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheKind::Select => "select",
            CacheKind::Export => "export",
            CacheKind::Quantize => "quantize",
            CacheKind::Package => "package",
        }
    }
}

/// Version of the entry format (`entry.json`), part of every key: entries of another format
/// are never looked up.
const ENTRY_FORMAT: u32 = 3;

/// An I/O error of the cache, naming the path.
#[derive(Debug, thiserror::Error)]
#[error("cache {}: {source}", path.display())]
pub struct CacheError {
    /// The file or folder.
    pub path: PathBuf,
    /// What failed.
    pub source: io::Error,
}

fn cache_err(path: &Path) -> impl FnOnce(io::Error) -> CacheError + '_ {
    move |source| CacheError {
        path: path.to_path_buf(),
        source,
    }
}

/// Key material: hashed as canonical JSON together with the omnipack version and the entry
/// format.
pub fn key_of(kind: CacheKind, material: &Value) -> String {
    let v = serde_json::json!({
        "kind": kind.as_str(),
        "omnipack": env!("CARGO_PKG_VERSION"),
        "entry_format": ENTRY_FORMAT,
        "material": material,
    });
    sha256_bytes(&omnipack_manifest::canonical_json::to_canonical_compact(&v))
}

impl Cache {
    /// A cache rooted at `root` (created on demand).
    pub fn new(root: PathBuf) -> Cache {
        Cache {
            root,
            used: Default::default(),
        }
    }

    /// Makes the folders of every kind (and `tmp`) real folders: a link planted in their place
    /// is removed, never followed, so no listing, write or deletion of the cache leaves it.
    pub fn prepare(&self) -> Result<(), CacheError> {
        for name in CacheKind::ALL
            .map(CacheKind::as_str)
            .into_iter()
            .chain(["tmp"])
        {
            let d = self.root.join(name);
            omnipack_fs::private_dir(&d).map_err(cache_err(&d))?;
        }
        Ok(())
    }

    fn note_used(&self, kind: CacheKind, key: &str) {
        if let Ok(mut u) = self.used.lock() {
            u.insert(format!("{}/{key}", kind.as_str()));
        }
    }

    /// Records the entries this build used and deletes every entry used by none of the last
    /// `keep_builds` builds (this one included). Returns how many entries were deleted.
    /// Only for a cache private to one output folder: a shared cache is never pruned.
    pub fn prune(&self, keep_builds: usize) -> io::Result<usize> {
        let recent_path = self.root.join("recent.json");
        let mut recent: Vec<Vec<String>> =
            omnipack_fs::read_capped_nofollow(&recent_path, omnipack_fs::MAX_DOCUMENT_BYTES)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default();
        let used: Vec<String> = self
            .used
            .lock()
            .map(|u| u.iter().cloned().collect())
            .unwrap_or_default();
        recent.push(used);
        let skip = recent.len().saturating_sub(keep_builds.max(1));
        recent.drain(..skip);
        write_atomic(
            &recent_path,
            &serde_json::to_vec(&recent).map_err(io::Error::other)?,
        )?;
        let keep: std::collections::BTreeSet<&str> =
            recent.iter().flatten().map(String::as_str).collect();
        let mut removed = 0;
        for kind in CacheKind::ALL {
            let dir = self.root.join(kind.as_str());
            // Never list (and delete in) what a link planted as a kind folder points to.
            let Ok(rd) = omnipack_fs::read_dir_nofollow(&dir) else {
                if fs::symlink_metadata(&dir).is_ok_and(|m| !m.is_dir()) {
                    remove_any(&dir)?;
                }
                continue;
            };
            for e in rd.filter_map(|e| e.ok()) {
                let name = format!("{}/{}", kind.as_str(), e.file_name().to_string_lossy());
                if !keep.contains(name.as_str()) {
                    remove_any(&e.path())?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// Records the current stamps of the files of every entry this build used, where only their
    /// change time moved (size, mtime, device and inode unchanged). Linking a file of an entry
    /// into the output, and removing the previous output's link, change the file's ctime; the
    /// entries were validated when looked up and the build holds the output lock since, so
    /// this keeps the next unchanged build from re-hashing them. A file whose bytes changed
    /// outside the build keeps its old stamp and is re-hashed (and repaired) by the next lookup.
    pub fn restamp_used(&self) -> io::Result<()> {
        let used: Vec<String> = self
            .used
            .lock()
            .map(|u| u.iter().cloned().collect())
            .unwrap_or_default();
        for name in used {
            let dir = self.root.join(&name);
            let rec_path = dir.join("entry.json");
            let Ok(bytes) =
                omnipack_fs::read_capped_nofollow(&rec_path, omnipack_fs::MAX_DOCUMENT_BYTES)
            else {
                continue;
            };
            let Ok(mut record) = serde_json::from_slice::<EntryRecord>(&bytes) else {
                continue;
            };
            let mut changed = false;
            for f in &mut record.files {
                let p = dir.join(&f.path);
                let Ok(m) = fs::symlink_metadata(&p) else {
                    continue;
                };
                let now = FileStamp::from_metadata(&m);
                let was = f.stamp;
                if m.is_file()
                    && now != was
                    && (now.size, now.mtime_ns, now.dev, now.ino)
                        == (was.size, was.mtime_ns, was.dev, was.ino)
                {
                    f.stamp = now;
                    changed = true;
                }
            }
            if changed {
                write_atomic(
                    &rec_path,
                    &serde_json::to_vec_pretty(&record).map_err(io::Error::other)?,
                )?;
            }
        }
        Ok(())
    }

    /// The root folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The folder of the entry `kind/key` (whether it exists or not).
    pub(crate) fn entry_dir(&self, kind: CacheKind, key: &str) -> PathBuf {
        self.root.join(kind.as_str()).join(key)
    }

    /// Looks up and validates an entry.
    pub fn lookup(&self, kind: CacheKind, key: &str) -> Lookup {
        let dir = self.entry_dir(kind, key);
        let rec_path = dir.join("entry.json");
        let bytes =
            match omnipack_fs::read_capped_nofollow(&rec_path, omnipack_fs::MAX_DOCUMENT_BYTES) {
                Ok(b) => b,
                Err(_) => {
                    if dir.exists() {
                        let _ = remove_any(&dir);
                        return Lookup::Corrupt(format!("{}: incomplete entry", dir.display()));
                    }
                    return Lookup::Miss;
                }
            };
        let record: EntryRecord = match serde_json::from_slice(&bytes) {
            Ok(r) => r,
            Err(e) => {
                let _ = remove_any(&dir);
                return Lookup::Corrupt(format!(
                    "{}: unreadable entry.json: {e}",
                    rec_path.display()
                ));
            }
        };
        for f in &record.files {
            let p = dir.join(&f.path);
            if !omnipack_fs::is_safe_relative(&f.path)
                || !fs::symlink_metadata(&p).is_ok_and(|m| m.is_file())
            {
                let _ = remove_any(&dir);
                return Lookup::Corrupt(format!(
                    "{}: not a regular file of the entry",
                    p.display()
                ));
            }
            match FileStamp::of(&p) {
                Ok(s) if s == f.stamp => continue,
                Ok(_) => match digest_file(&p) {
                    Ok(d) if d.sha256 == f.sha256 && d.size == f.size => continue,
                    Ok(d) => {
                        let (sha, size) = (d.sha256, d.size);
                        let _ = remove_any(&dir);
                        return Lookup::Corrupt(format!(
                            "{}: {} bytes with sha256 {sha}, expected {} bytes with sha256 {}",
                            p.display(),
                            size,
                            f.size,
                            f.sha256
                        ));
                    }
                    Err(e) => {
                        let _ = remove_any(&dir);
                        return Lookup::Corrupt(format!("{}: {e}", p.display()));
                    }
                },
                Err(e) => {
                    let _ = remove_any(&dir);
                    return Lookup::Corrupt(format!("{}: {e}", p.display()));
                }
            }
        }
        self.note_used(kind, key);
        Lookup::Hit(CacheEntry { dir, record })
    }

    /// A fresh, empty work folder for producing an entry (unique to this process and call,
    /// so builds sharing the cache never share one).
    pub fn work_dir(&self, kind: CacheKind, key: &str) -> Result<PathBuf, CacheError> {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let d = self.root.join("tmp").join(format!(
            "{}-{key}-{}-{n}",
            kind.as_str(),
            std::process::id()
        ));
        remove_any(&d).map_err(cache_err(&d))?;
        fs::create_dir_all(&d).map_err(cache_err(&d))?;
        Ok(d)
    }

    /// Turns a work folder into the entry `kind/key`: records the listed files (their digests
    /// known from writing them, or computed here when `None`) and renames it into place.
    pub fn commit(
        &self,
        kind: CacheKind,
        key: &str,
        work: &Path,
        files: Vec<(String, Option<FileDigest>)>,
        meta: Value,
    ) -> Result<CacheEntry, CacheError> {
        self.commit_with(kind, key, work, files, meta, false)
    }

    /// [`Cache::commit`]; with `replace` (`--no-cache`) an existing entry under the key is
    /// replaced by the new one instead of being kept.
    pub fn commit_with(
        &self,
        kind: CacheKind,
        key: &str,
        work: &Path,
        files: Vec<(String, Option<FileDigest>)>,
        meta: Value,
        replace: bool,
    ) -> Result<CacheEntry, CacheError> {
        let mut recs = Vec::with_capacity(files.len());
        for (rel, known) in files {
            let p = work.join(&rel);
            let d = match known {
                Some(d) => d,
                None => digest_file(&p).map_err(cache_err(&p))?,
            };
            let stamp = FileStamp::of(&p).map_err(cache_err(&p))?;
            recs.push(CachedFile {
                path: rel,
                size: d.size,
                sha256: d.sha256,
                crc32: d.crc32,
                stamp,
            });
        }
        recs.sort_by(|a, b| a.path.cmp(&b.path));
        let record = EntryRecord {
            key: key.to_string(),
            files: recs,
            meta,
        };
        let dir = self.entry_dir(kind, key);
        // Stamps include the inode and mtime, which a rename keeps.
        let record_path = work.join("entry.json");
        write_atomic(
            &record_path,
            &serde_json::to_vec_pretty(&record)
                .map_err(io::Error::other)
                .map_err(cache_err(&record_path))?,
        )
        .map_err(cache_err(&record_path))?;
        if let Some(p) = dir.parent() {
            fs::create_dir_all(p).map_err(cache_err(p))?;
        }
        // Never delete a valid entry first: another build sharing this cache may have committed
        // the same key meanwhile and be linking its files right now.
        if replace && fs::symlink_metadata(&dir).is_ok() {
            // Set the old entry aside first: the rename below then puts the new one in place.
            let old = self.root.join("tmp").join(format!(
                "replaced-{}-{key}-{}",
                kind.as_str(),
                std::process::id()
            ));
            remove_any(&old).map_err(cache_err(&old))?;
            if let Some(p) = old.parent() {
                fs::create_dir_all(p).map_err(cache_err(p))?;
            }
            if fs::rename(&dir, &old).is_ok() {
                let _ = remove_any(&old);
            }
        }
        if fs::rename(work, &dir).is_err() {
            if let Lookup::Hit(entry) = self.lookup(kind, key) {
                let _ = remove_any(work);
                return Ok(entry);
            }
            // A corrupt or incomplete leftover (lookup removed it): take its place.
            remove_any(&dir).map_err(cache_err(&dir))?;
            fs::rename(work, &dir).map_err(cache_err(&dir))?;
        }
        self.note_used(kind, key);
        Ok(CacheEntry { dir, record })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_lookup_and_corruption() {
        let d = tempfile::tempdir().unwrap();
        let c = Cache::new(d.path().to_path_buf());
        assert!(matches!(c.lookup(CacheKind::Quantize, "k"), Lookup::Miss));
        let w = c.work_dir(CacheKind::Quantize, "k").unwrap();
        fs::write(w.join("a.bin"), b"hello").unwrap();
        c.commit(
            CacheKind::Quantize,
            "k",
            &w,
            vec![("a.bin".into(), None)],
            serde_json::json!({"n": 1}),
        )
        .unwrap();
        let Lookup::Hit(e) = c.lookup(CacheKind::Quantize, "k") else {
            panic!("expected hit")
        };
        assert_eq!(e.record.meta["n"], 1);
        // Same bytes, new stamp: still valid.
        fs::write(e.file("a.bin"), b"hello").unwrap();
        assert!(matches!(c.lookup(CacheKind::Quantize, "k"), Lookup::Hit(_)));
        // Truncated: corrupt, removed.
        fs::write(e.file("a.bin"), b"hell").unwrap();
        assert!(matches!(
            c.lookup(CacheKind::Quantize, "k"),
            Lookup::Corrupt(_)
        ));
        assert!(matches!(c.lookup(CacheKind::Quantize, "k"), Lookup::Miss));
        assert_ne!(
            key_of(CacheKind::Select, &serde_json::json!(1)),
            key_of(CacheKind::Select, &serde_json::json!(2))
        );
    }

    #[test]
    fn committing_a_key_already_committed_keeps_the_first_entry() {
        // Two builds sharing a cache produce the same key: the second must not delete the
        // entry the first is linking from.
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let c = Cache::new(d.path().to_path_buf());
        let w = c.work_dir(CacheKind::Quantize, "k").unwrap();
        fs::write(w.join("a.bin"), b"hello").unwrap();
        let first = c
            .commit(
                CacheKind::Quantize,
                "k",
                &w,
                vec![("a.bin".into(), None)],
                serde_json::json!({}),
            )
            .unwrap();
        let ino = fs::metadata(first.file("a.bin")).unwrap().ino();
        let w2 = d.path().join("tmp").join("other-build");
        fs::create_dir_all(&w2).unwrap();
        fs::write(w2.join("a.bin"), b"hello").unwrap();
        let second = c
            .commit(
                CacheKind::Quantize,
                "k",
                &w2,
                vec![("a.bin".into(), None)],
                serde_json::json!({}),
            )
            .unwrap();
        assert_eq!(fs::metadata(first.file("a.bin")).unwrap().ino(), ino);
        assert_eq!(second.file("a.bin"), first.file("a.bin"));
        assert!(!w2.exists());
        // A corrupt leftover under the key is replaced.
        fs::write(first.file("a.bin"), b"hell").unwrap();
        let w3 = d.path().join("tmp").join("third-build");
        fs::create_dir_all(&w3).unwrap();
        fs::write(w3.join("a.bin"), b"hello").unwrap();
        c.commit(
            CacheKind::Quantize,
            "k",
            &w3,
            vec![("a.bin".into(), None)],
            serde_json::json!({}),
        )
        .unwrap();
        assert!(matches!(c.lookup(CacheKind::Quantize, "k"), Lookup::Hit(_)));
        assert_eq!(fs::read(first.file("a.bin")).unwrap(), b"hello");
    }

    #[test]
    fn prune_keeps_entries_of_recent_builds() {
        let d = tempfile::tempdir().unwrap();
        let make = |key: &str| {
            let c = Cache::new(d.path().to_path_buf());
            let w = c.work_dir(CacheKind::Quantize, key).unwrap();
            fs::write(w.join("f"), key).unwrap();
            c.commit(
                CacheKind::Quantize,
                key,
                &w,
                vec![("f".into(), None)],
                serde_json::json!({}),
            )
            .unwrap();
            c
        };
        assert_eq!(make("a").prune(2).unwrap(), 0);
        assert_eq!(make("b").prune(2).unwrap(), 0);
        // A third build using only `c`: `a` was last used two builds ago and goes.
        assert_eq!(make("c").prune(2).unwrap(), 1);
        let c = Cache::new(d.path().to_path_buf());
        assert!(matches!(c.lookup(CacheKind::Quantize, "a"), Lookup::Miss));
        assert!(matches!(c.lookup(CacheKind::Quantize, "b"), Lookup::Hit(_)));
    }
}
