//! The one cached-stage sequence every stage uses: key, lookup (local, then remote), work
//! folder, run, commit, push (remote: `remote.rs`).

use std::path::Path;

use omnipack_quant::FileDigest;
use serde_json::Value;

use crate::cache::{CacheEntry, CacheError, CacheKind, Lookup, key_of};
use crate::progress::Event;
use crate::stages::BuildContext;
use omnipack_fs::remove_any;

/// What a stage's work left in its work folder: the files to record, each with its digest
/// when the stage computed it while writing (else the cache computes it), and the
/// stage's metadata.
pub(crate) struct Produced {
    pub files: Vec<(String, Option<FileDigest>)>,
    pub meta: Value,
}

/// A value read from a cache entry, and whether the entry was already there.
pub(crate) struct Cached<T> {
    pub value: T,
    pub from_cache: bool,
}

impl BuildContext<'_> {
    /// The cache entry of `kind` keyed by `material` (with the omnipack version): a valid
    /// existing entry unless `--no-cache` (a remote one that `read` refuses is rebuilt); else `produce` fills a fresh work folder, which is
    /// committed as the entry (and deleted when `produce` fails). `read` turns the entry into
    /// the stage's value. A corrupt entry is reported, deleted and produced again.
    pub(crate) fn cached<T, E: From<CacheError> + std::fmt::Display>(
        &self,
        kind: CacheKind,
        material: &Value,
        produce: impl FnOnce(&Path) -> Result<Produced, E>,
        read: impl Fn(&CacheEntry) -> Result<T, E>,
    ) -> Result<Cached<T>, E> {
        let key = key_of(kind, material);
        if let Some(entry) = self.lookup(kind, &key) {
            self.remote_push(kind, &entry, true)?;
            return Ok(Cached {
                value: read(&entry)?,
                from_cache: true,
            });
        }
        if let Some(entry) = self.remote_fetch(kind, &key)? {
            // Its files were verified against the record, but the record itself may not be
            // what this stage writes: then the stage runs here, as for any refused entry.
            match read(&entry) {
                Ok(value) => {
                    return Ok(Cached {
                        value,
                        from_cache: true,
                    });
                }
                Err(e) => self.refuse_remote_entry(kind, &key, &e.to_string()),
            }
        }
        let work = self.cache.work_dir(kind, &key)?;
        let produced = match produce(&work) {
            Ok(p) => p,
            Err(e) => {
                let _ = remove_any(&work);
                return Err(e);
            }
        };
        let entry = self
            .cache
            .commit_with(
                kind,
                &key,
                &work,
                produced.files,
                produced.meta,
                self.no_cache,
            )
            .inspect_err(|_| {
                let _ = remove_any(&work);
            })?;
        self.remote_push(kind, &entry, false)?;
        Ok(Cached {
            value: read(&entry)?,
            from_cache: false,
        })
    }

    fn lookup(&self, kind: CacheKind, key: &str) -> Option<CacheEntry> {
        if self.no_cache {
            return None;
        }
        match self.cache.lookup(kind, key) {
            Lookup::Hit(e) => Some(e),
            Lookup::Miss => None,
            Lookup::Corrupt(why) => {
                self.progress
                    .event(Event::Note(format!("cache entry rebuilt: {why}")));
                None
            }
        }
    }
}
