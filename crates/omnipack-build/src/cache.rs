//! The content-addressed stage cache.
//!
//! An entry lives in `<cache>/<kind>/<key>/`: its files plus `entry.json` (written last) with
//! each file's size, sha256 and [`FileStamp`], and stage-specific metadata. The key is the
//! sha256 of the stage's input digests, its parameters and the omnipack version. A hit is
//! validated without reading the files when their stamps are unchanged; a changed stamp means
//! the file is re-hashed, and a truncated or modified entry is deleted and rebuilt.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::fsutil::{remove_any, write_atomic};
use omnipack_quant::{digest_file, sha256_bytes};

use crate::hash::FileStamp;

/// A file of a cache entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CachedFile {
    /// Path inside the entry folder, `/`-separated.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// sha256 (hex).
    pub sha256: String,
    /// Stamp when written (so a valid entry is checked without reading it).
    pub stamp: FileStamp,
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

/// Entry kinds, one folder each.
pub const KINDS: [&str; 4] = ["select", "export", "quantize", "package"];

/// Key material: hashed as canonical JSON together with the omnipack version.
pub fn key_of(kind: &str, material: &Value) -> String {
    let v = serde_json::json!({
        "kind": kind,
        "omnipack": env!("CARGO_PKG_VERSION"),
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

    fn note_used(&self, kind: &str, key: &str) {
        if let Ok(mut u) = self.used.lock() {
            u.insert(format!("{kind}/{key}"));
        }
    }

    /// Records the entries this build used and deletes every entry used by none of the last
    /// `keep_builds` builds (this one included). Returns how many entries were deleted.
    /// Only for a cache private to one output folder: a shared cache is never pruned.
    pub fn prune(&self, keep_builds: usize) -> io::Result<usize> {
        let recent_path = self.root.join("recent.json");
        let mut recent: Vec<Vec<String>> = fs::read(&recent_path)
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
        for kind in KINDS {
            let Ok(rd) = fs::read_dir(self.root.join(kind)) else {
                continue;
            };
            for e in rd.filter_map(|e| e.ok()) {
                let name = format!("{kind}/{}", e.file_name().to_string_lossy());
                if !keep.contains(name.as_str()) {
                    remove_any(&e.path())?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// The root folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn entry_dir(&self, kind: &str, key: &str) -> PathBuf {
        self.root.join(kind).join(key)
    }

    /// Looks up and validates an entry.
    pub fn lookup(&self, kind: &str, key: &str) -> Lookup {
        let dir = self.entry_dir(kind, key);
        let rec_path = dir.join("entry.json");
        let bytes = match fs::read(&rec_path) {
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

    /// A fresh, empty work folder for producing an entry.
    pub fn work_dir(&self, kind: &str, key: &str) -> io::Result<PathBuf> {
        let d = self
            .root
            .join("tmp")
            .join(format!("{kind}-{key}-{}", std::process::id()));
        remove_any(&d)?;
        fs::create_dir_all(&d)?;
        Ok(d)
    }

    /// Turns a work folder into the entry `kind/key`: records the listed files (their digests
    /// known from writing them, or computed here when `None`) and renames it into place.
    pub fn commit(
        &self,
        kind: &str,
        key: &str,
        work: &Path,
        files: Vec<(String, Option<(String, u64)>)>,
        meta: Value,
    ) -> io::Result<CacheEntry> {
        let mut recs = Vec::with_capacity(files.len());
        for (rel, known) in files {
            let p = work.join(&rel);
            let (sha256, size) = match known {
                Some(k) => k,
                None => {
                    let d = digest_file(&p)?;
                    (d.sha256, d.size)
                }
            };
            let stamp = FileStamp::of(&p)?;
            recs.push(CachedFile {
                path: rel,
                size,
                sha256,
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
        write_atomic(
            &work.join("entry.json"),
            &serde_json::to_vec_pretty(&record).map_err(io::Error::other)?,
        )?;
        if let Some(p) = dir.parent() {
            fs::create_dir_all(p)?;
        }
        // Never delete a valid entry first: another build sharing this cache may have committed
        // the same key meanwhile and be linking its files right now.
        if fs::rename(work, &dir).is_err() {
            if let Lookup::Hit(entry) = self.lookup(kind, key) {
                let _ = remove_any(work);
                return Ok(entry);
            }
            // A corrupt or incomplete leftover (lookup removed it): take its place.
            remove_any(&dir)?;
            fs::rename(work, &dir)?;
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
        assert!(matches!(c.lookup("q", "k"), Lookup::Miss));
        let w = c.work_dir("q", "k").unwrap();
        fs::write(w.join("a.bin"), b"hello").unwrap();
        c.commit(
            "q",
            "k",
            &w,
            vec![("a.bin".into(), None)],
            serde_json::json!({"n": 1}),
        )
        .unwrap();
        let Lookup::Hit(e) = c.lookup("q", "k") else {
            panic!("expected hit")
        };
        assert_eq!(e.record.meta["n"], 1);
        // Same bytes, new stamp: still valid.
        fs::write(e.file("a.bin"), b"hello").unwrap();
        assert!(matches!(c.lookup("q", "k"), Lookup::Hit(_)));
        // Truncated: corrupt, removed.
        fs::write(e.file("a.bin"), b"hell").unwrap();
        assert!(matches!(c.lookup("q", "k"), Lookup::Corrupt(_)));
        assert!(matches!(c.lookup("q", "k"), Lookup::Miss));
        assert_ne!(
            key_of("a", &serde_json::json!(1)),
            key_of("a", &serde_json::json!(2))
        );
    }

    #[test]
    fn committing_a_key_already_committed_keeps_the_first_entry() {
        // Two builds sharing a cache produce the same key: the second must not delete the
        // entry the first is linking from.
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let c = Cache::new(d.path().to_path_buf());
        let w = c.work_dir("q", "k").unwrap();
        fs::write(w.join("a.bin"), b"hello").unwrap();
        let first = c
            .commit(
                "q",
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
                "q",
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
            "q",
            "k",
            &w3,
            vec![("a.bin".into(), None)],
            serde_json::json!({}),
        )
        .unwrap();
        assert!(matches!(c.lookup("q", "k"), Lookup::Hit(_)));
        assert_eq!(fs::read(first.file("a.bin")).unwrap(), b"hello");
    }

    #[test]
    fn prune_keeps_entries_of_recent_builds() {
        let d = tempfile::tempdir().unwrap();
        let make = |key: &str| {
            let c = Cache::new(d.path().to_path_buf());
            let w = c.work_dir("quantize", key).unwrap();
            fs::write(w.join("f"), key).unwrap();
            c.commit(
                "quantize",
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
        assert!(matches!(c.lookup("quantize", "a"), Lookup::Miss));
        assert!(matches!(c.lookup("quantize", "b"), Lookup::Hit(_)));
    }
}
