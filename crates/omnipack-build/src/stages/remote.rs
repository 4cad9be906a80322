//! The remote half of a cached stage (`--cache-url`): after a local miss, fetch the stage's
//! entry from the remote cache (every file verified against its record before the entry is
//! committed locally); after a local build, or a local hit the store lacks, push it.
//!
//! Only what a build reads is downloaded. The entries of export and quantize stages are read
//! by package stages alone: on a remote hit their record is enough to go on (the package's
//! key needs only their digests), and their files are downloaded when a package stage that
//! misses actually zips them ([`BuildContext::materialize`]). A build whose bundles are all
//! remote hits downloads the bundles and nothing else.
//!
//! A store that fails is a warning, once, and the build goes on locally; with
//! `--require-cache` it fails the stage instead. A rejected record or blob is a warning and
//! the stage is rebuilt; its push then replaces what was rejected.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use omnipack_fs::remove_any;
use omnipack_remote::{FetchError, Fetched, Lookup, Record, RecordFile, RemoteCache, Unavailable};

use crate::cache::{CacheEntry, CacheError, CacheKind, CachedFile, EntryRecord};
use crate::digest_memo::FileStamp;
use crate::progress::Event;
use crate::stages::BuildContext;

/// How often a transfer reports its bytes.
const REPORT_EVERY: Duration = Duration::from_millis(200);

impl BuildContext<'_> {
    /// The entry `kind/key` from the remote cache, verified and committed to the local cache;
    /// `None` on a miss, a rejected object or an unavailable store (unless required).
    pub(crate) fn remote_fetch(
        &self,
        kind: CacheKind,
        key: &str,
    ) -> Result<Option<CacheEntry>, CacheError> {
        let Some(remote) = self.remote else {
            return Ok(None);
        };
        if self.no_cache {
            return Ok(None);
        }
        let name = entry_name(kind, key);
        let record = match remote.lookup(kind.as_str(), key) {
            Ok(Lookup::Hit(r)) => r,
            Ok(Lookup::Miss) => return Ok(None),
            Ok(Lookup::Corrupt(why)) => {
                self.progress.event(Event::Warning(format!(
                    "remote cache: {name}: record refused ({why}); rebuilding locally"
                )));
                return Ok(None);
            }
            Err(u) => return self.remote_unavailable(u).map(|()| None),
        };
        if deferred(kind) {
            remote.count_hit();
            return Ok(Some(self.defer(kind, key, record)));
        }
        let entry = self.download(kind, key, &record)?;
        if entry.is_some() {
            remote.count_hit();
        }
        Ok(entry)
    }

    /// Downloads the files of `record` into a work folder, verifying each, and commits them
    /// as the local entry `kind/key`; `None` when a file is refused (the entry is marked bad
    /// and its stage is rebuilt) or the store is unavailable (unless required).
    fn download(
        &self,
        kind: CacheKind,
        key: &str,
        record: &Record,
    ) -> Result<Option<CacheEntry>, CacheError> {
        let Some(remote) = self.remote else {
            return Ok(None);
        };
        let name = entry_name(kind, key);
        let work = self.cache.work_dir(kind, key)?;
        let total: u64 = record
            .files
            .iter()
            .fold(0u64, |t, f| t.saturating_add(f.size));
        let mut files = Vec::with_capacity(record.files.len());
        let mut before = 0u64;
        let last = Cell::new(Instant::now());
        for f in &record.files {
            let moved = |n: u64| {
                self.transfer(&name, false, before + n, total, &last);
            };
            match remote.fetch(f, &work.join(&f.path), &moved) {
                Ok(Fetched::Verified(d)) => files.push((f.path.clone(), Some(d))),
                Ok(Fetched::Rejected(why)) => {
                    let _ = remove_any(&work);
                    remote.reject_entry(kind.as_str(), key);
                    self.progress.event(Event::Warning(format!(
                        "remote cache: {name}: {why}; rebuilding locally"
                    )));
                    return Ok(None);
                }
                Err(FetchError::Store(u)) => {
                    let _ = remove_any(&work);
                    return self.remote_unavailable(u).map(|()| None);
                }
                Err(FetchError::Local { path, source }) => {
                    let _ = remove_any(&work);
                    return Err(CacheError { path, source });
                }
            }
            before += f.size;
        }
        self.progress.event(Event::Transfer {
            entry: name,
            upload: false,
            done: total,
            total,
        });
        let entry = self
            .cache
            .commit(kind, key, &work, files, record.meta.clone())
            .inspect_err(|_| {
                let _ = remove_any(&work);
            })?;
        Ok(Some(entry))
    }

    /// The entry `kind/key` as its remote record describes it, at the folder the local cache
    /// will hold it in, without its files: they are downloaded by [`BuildContext::materialize`]
    /// when a stage reads them. Its CRC-32s are unknown until then (zero).
    fn defer(&self, kind: CacheKind, key: &str, record: Record) -> CacheEntry {
        let dir = self.cache.entry_dir(kind, key);
        let files = record
            .files
            .iter()
            .map(|f| CachedFile {
                path: f.path.clone(),
                size: f.size,
                sha256: f.sha256.clone(),
                crc32: 0,
                stamp: FileStamp {
                    size: f.size,
                    mtime_ns: 0,
                    ctime_ns: 0,
                    dev: 0,
                    ino: 0,
                },
            })
            .collect();
        let entry = CacheEntry {
            dir: dir.clone(),
            record: EntryRecord {
                key: key.to_string(),
                files,
                meta: record.meta.clone(),
            },
        };
        if let Ok(mut p) = self.remote_deferred.lock() {
            p.entry(dir).or_insert_with(|| {
                Arc::new(Deferred {
                    kind,
                    key: key.to_string(),
                    record: Mutex::new(Some(record)),
                })
            });
        }
        entry
    }

    /// Makes the file at `path` local: when it belongs to an entry whose download was
    /// deferred, downloads and verifies that entry now (once, whoever asks first).
    pub(crate) fn materialize(&self, path: &Path) -> Result<Materialized, CacheError> {
        let found = self.remote_deferred.lock().ok().and_then(|p| {
            p.iter()
                .find(|(dir, _)| path.starts_with(dir))
                .map(|(_, d)| d.clone())
        });
        let Some(d) = found else {
            return Ok(Materialized::Local);
        };
        let Ok(mut record) = d.record.lock() else {
            return Ok(Materialized::Lost {
                kind: d.kind,
                key: d.key.clone(),
            });
        };
        let Some(r) = record.take() else {
            // Downloaded by another stage (or lost: then the local lookup misses).
            return Ok(match self.cache.lookup(d.kind, &d.key) {
                crate::cache::Lookup::Hit(e) => Materialized::Fetched(e),
                _ => Materialized::Lost {
                    kind: d.kind,
                    key: d.key.clone(),
                },
            });
        };
        Ok(match self.download(d.kind, &d.key, &r)? {
            Some(e) => Materialized::Fetched(e),
            None => Materialized::Lost {
                kind: d.kind,
                key: d.key.clone(),
            },
        })
    }

    /// Publishes `entry` to the remote cache; with `only_if_missing` (a local hit) only when
    /// the store has no record of it.
    pub(crate) fn remote_push(
        &self,
        kind: CacheKind,
        entry: &CacheEntry,
        only_if_missing: bool,
    ) -> Result<(), CacheError> {
        let Some(remote) = self.remote else {
            return Ok(());
        };
        let key = entry.record.key.as_str();
        if only_if_missing {
            match remote.has_record(kind.as_str(), key) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(u) => return self.remote_unavailable(u),
            }
        }
        let record = Record {
            cache_format: omnipack_remote::record::CACHE_FORMAT,
            kind: kind.as_str().to_string(),
            key: key.to_string(),
            files: entry
                .record
                .files
                .iter()
                .map(|f| RecordFile {
                    path: f.path.clone(),
                    size: f.size,
                    sha256: f.sha256.clone(),
                })
                .collect(),
            meta: entry.record.meta.clone(),
        };
        let name = entry_name(kind, key);
        let total: u64 = record
            .files
            .iter()
            .fold(0u64, |t, f| t.saturating_add(f.size));
        let last = Cell::new(Instant::now());
        let moved = |n: u64| self.transfer(&name, true, n, total, &last);
        match remote.push(&record, &entry.dir, &moved) {
            Ok(sent) => {
                self.progress.event(Event::Transfer {
                    entry: name,
                    upload: true,
                    done: sent,
                    total: sent,
                });
                Ok(())
            }
            // Refused writes (read-only credentials) leave the store readable: warn once,
            // keep using its hits.
            Err(u) if remote.unavailable().is_none() && !self.require_remote => {
                if !self.remote_push_warned.swap(true, Ordering::Relaxed) {
                    self.progress.event(Event::Warning(format!(
                        "remote cache {}: {}; its entries are still used, but nothing this build makes is published",
                        u.url, u.cause
                    )));
                }
                Ok(())
            }
            Err(u) => self.remote_unavailable(u),
        }
    }

    /// Refuses the entry `kind/key` found in the remote cache because its stage could not
    /// use it (a record whose files or metadata are not what the stage wrote): a warning, the
    /// local copy (or its deferred download) is dropped, and the entry is marked so that the
    /// stage's push replaces it.
    pub(crate) fn refuse_remote_entry(&self, kind: CacheKind, key: &str, why: &str) {
        let Some(remote) = self.remote else {
            return;
        };
        let dir = self.cache.entry_dir(kind, key);
        if let Ok(mut p) = self.remote_deferred.lock() {
            p.remove(&dir);
        }
        let _ = remove_any(&dir);
        remote.reject_entry(kind.as_str(), key);
        self.progress.event(Event::Warning(format!(
            "remote cache: {}: not usable ({why}); rebuilding locally",
            entry_name(kind, key)
        )));
    }

    /// A progress event for a transfer, at most every [`REPORT_EVERY`].
    fn transfer(&self, name: &str, upload: bool, done: u64, total: u64, last: &Cell<Instant>) {
        if last.get().elapsed() >= REPORT_EVERY {
            last.set(Instant::now());
            self.progress.event(Event::Transfer {
                entry: name.to_string(),
                upload,
                done,
                total,
            });
        }
    }

    /// The store failed: an error when it is required, else one warning for the build.
    fn remote_unavailable(&self, u: Unavailable) -> Result<(), CacheError> {
        if self.require_remote {
            return Err(CacheError {
                path: u.url.clone().into(),
                source: std::io::Error::other(format!(
                    "remote cache unavailable: {} (required by --require-cache or --only)",
                    u.cause
                )),
            });
        }
        if !self.remote_warned.swap(true, Ordering::Relaxed) {
            self.progress
                .event(Event::Warning(format!("{u}; building locally")));
        }
        Ok(())
    }
}

/// Whether the files of a `kind` entry found in the remote cache are downloaded only when
/// read: export and quantize entries, which only package stages read.
fn deferred(kind: CacheKind) -> bool {
    matches!(kind, CacheKind::Export | CacheKind::Quantize)
}

/// An entry found in the remote cache whose files are not downloaded yet.
pub(crate) struct Deferred {
    kind: CacheKind,
    key: String,
    /// Its record until the files are downloaded (then `None`).
    record: Mutex<Option<Record>>,
}

/// The entries of a build whose download is deferred, by their folder in the local cache.
pub(crate) type DeferredEntries = Mutex<std::collections::BTreeMap<PathBuf, Arc<Deferred>>>;

/// Where a file read by a stage is.
pub(crate) enum Materialized {
    /// In the local cache already (or not a cache file).
    Local,
    /// Its entry was just downloaded and verified (or by another stage).
    Fetched(CacheEntry),
    /// Its entry could not be downloaded (refused or store unavailable): the stage that made
    /// it must run again.
    Lost { kind: CacheKind, key: String },
}

/// `kind/key` with the key shortened, for messages.
fn entry_name(kind: CacheKind, key: &str) -> String {
    format!("{}/{}", kind.as_str(), key.get(..12).unwrap_or(key))
}

/// The store of a build, for the summary line.
pub(crate) fn unavailable(remote: Option<&RemoteCache>) -> Option<String> {
    remote.and_then(|r| r.unavailable()).map(|u| u.cause)
}
