//! The remote half of a cached stage (`--cache-url`): after a local miss, fetch the stage's
//! entry from the remote cache (every file verified against its record before the entry is
//! committed locally); after a local build, or a local hit the store lacks, push it.
//!
//! A store that fails is a warning, once, and the build goes on locally; with
//! `--require-cache` it fails the stage instead. A rejected record or blob is a warning and
//! the stage is rebuilt; its push then replaces what was rejected.

use std::cell::Cell;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use omnipack_fs::remove_any;
use omnipack_quant::FileDigest;
use omnipack_remote::{Fetched, Lookup, Record, RecordFile, RemoteCache, Unavailable};

use crate::cache::{CacheEntry, CacheError, CacheKind};
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
        let work = self.cache.work_dir(kind, key)?;
        let total: u64 = record.files.iter().map(|f| f.size).sum();
        let mut files = Vec::with_capacity(record.files.len());
        let mut before = 0u64;
        let last = Cell::new(Instant::now());
        for f in &record.files {
            let moved = |n: u64| {
                self.transfer(&name, false, before + n, total, &last);
            };
            match remote.fetch(f, &work.join(&f.path), &moved) {
                Ok(Fetched::Verified(d)) => files.push((
                    f.path.clone(),
                    Some(FileDigest {
                        size: d.size,
                        sha256: d.sha256,
                        crc32: d.crc32,
                    }),
                )),
                Ok(Fetched::Rejected(why)) => {
                    let _ = remove_any(&work);
                    remote.reject_entry(kind.as_str(), key);
                    self.progress.event(Event::Warning(format!(
                        "remote cache: {name}: {why}; rebuilding locally"
                    )));
                    return Ok(None);
                }
                Err(u) => {
                    let _ = remove_any(&work);
                    return self.remote_unavailable(u).map(|()| None);
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
            .commit(kind, key, &work, files, record.meta)
            .inspect_err(|_| {
                let _ = remove_any(&work);
            })?;
        remote.count_hit();
        Ok(Some(entry))
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
        let total: u64 = record.files.iter().map(|f| f.size).sum();
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
            Err(u) => self.remote_unavailable(u),
        }
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

/// `kind/key` with the key shortened, for messages.
fn entry_name(kind: CacheKind, key: &str) -> String {
    format!("{}/{}", kind.as_str(), key.get(..12).unwrap_or(key))
}

/// The store of a build, for the summary line.
pub(crate) fn unavailable(remote: Option<&RemoteCache>) -> Option<String> {
    remote.and_then(|r| r.unavailable()).map(|u| u.cause)
}
