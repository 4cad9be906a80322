//! A stage's record in the remote cache: `PREFIX/v1/records/<kind>/<key>.json` lists the
//! files of the cache entry (path, size, sha256) and the stage's metadata. The files
//! themselves are blobs named by their sha256 (`PREFIX/v1/blobs/<sha256>`). Nothing read back
//! is trusted: a record is validated here, and every blob is checked against the record's
//! digest while it is downloaded.

use std::collections::BTreeSet;

use omnipack_quant::is_sha256;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Version of the remote layout and record format.
pub const CACHE_FORMAT: u32 = 1;

/// Largest record read (a record lists a few files; anything larger is foreign).
pub const MAX_RECORD_BYTES: u64 = 1 << 20;

/// One file of a stage's cache entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordFile {
    /// Path inside the entry, `/`-separated.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// sha256 (lowercase hex): also the blob's name.
    pub sha256: String,
}

/// What a stage produced, as published in the remote cache.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// [`CACHE_FORMAT`].
    pub cache_format: u32,
    /// The stage's cache kind (`select`, `export`, `quantize`, `package`).
    pub kind: String,
    /// The stage's cache key.
    pub key: String,
    /// The entry's files, sorted by path.
    pub files: Vec<RecordFile>,
    /// The stage's metadata.
    pub meta: Value,
}

impl Record {
    /// Parses and validates a record read from `kind/key`: its format, kind and key, and every
    /// file's path (relative, plain names, no duplicates) and digest.
    pub fn parse(bytes: &[u8], kind: &str, key: &str) -> Result<Record, String> {
        let r: Record =
            serde_json::from_slice(bytes).map_err(|e| format!("not an omnipack record: {e}"))?;
        if r.cache_format != CACHE_FORMAT {
            return Err(format!(
                "cache_format {} (this omnipack reads {CACHE_FORMAT})",
                r.cache_format
            ));
        }
        if r.kind != kind || r.key != key {
            return Err(format!(
                "the record is for {}/{}, not {kind}/{key}",
                r.kind, r.key
            ));
        }
        // Compared without case: on the file systems that ignore it (macOS, Windows), two
        // names that differ only in case are one file.
        let folded: Vec<String> = r.files.iter().map(|f| f.path.to_lowercase()).collect();
        let mut seen = BTreeSet::new();
        for (f, name) in r.files.iter().zip(&folded) {
            if !safe_path(&f.path) {
                return Err(format!("unsafe file path `{}`", f.path.escape_default()));
            }
            if !seen.insert(name.as_str()) {
                return Err(format!("file `{}` listed twice", f.path));
            }
            if !is_sha256(&f.sha256) {
                return Err(format!("file `{}`: sha256 is not 64 hex digits", f.path));
            }
        }
        // A file may not also be a folder of another (`a` and `a/b`).
        for name in &folded {
            let mut folder = name.as_str();
            while let Some((parent, _)) = folder.rsplit_once('/') {
                if seen.contains(parent) {
                    return Err(format!("`{parent}` is both a file and a folder"));
                }
                folder = parent;
            }
        }
        Ok(r)
    }
}

/// A relative `/`-separated path of plain names (no `.`, `..`, empty or hidden control
/// characters, no backslash), and not the local cache's own `entry.json`.
pub fn safe_path(p: &str) -> bool {
    omnipack_fs::is_normal_relative(p)
        && p != "entry.json"
        && p.len() <= 1024
        && !p.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(files: Value) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "cache_format": 1, "kind": "quantize", "key": "k", "files": files, "meta": {}
        }))
        .unwrap()
    }

    #[test]
    fn valid_record() {
        let sha = "a".repeat(64);
        let r = Record::parse(
            &rec(serde_json::json!([{"path": "pack/a/w.bin", "size": 3, "sha256": sha}])),
            "quantize",
            "k",
        )
        .unwrap();
        assert_eq!(r.files[0].size, 3);
    }

    #[test]
    fn foreign_or_hostile_records_are_refused() {
        let sha = "a".repeat(64);
        for (files, why) in [
            (
                serde_json::json!([{"path": "../x", "size": 1, "sha256": sha}]),
                "unsafe",
            ),
            (
                serde_json::json!([{"path": "/etc/x", "size": 1, "sha256": sha}]),
                "unsafe",
            ),
            (
                serde_json::json!([{"path": "entry.json", "size": 1, "sha256": sha}]),
                "unsafe",
            ),
            (
                serde_json::json!([{"path": "a", "size": 1, "sha256": sha}, {"path": "a", "size": 1, "sha256": sha}]),
                "twice",
            ),
            (
                serde_json::json!([{"path": "a", "size": 1, "sha256": "ABC"}]),
                "hex",
            ),
            (
                serde_json::json!([{"path": "bundle.zip", "size": 1, "sha256": sha}, {"path": "BUNDLE.ZIP", "size": 1, "sha256": sha}]),
                "twice",
            ),
            (
                serde_json::json!([{"path": "pack/A", "size": 1, "sha256": sha}, {"path": "pack/a/b.json", "size": 1, "sha256": sha}]),
                "both a file and a folder",
            ),
        ] {
            let e = Record::parse(&rec(files), "quantize", "k").unwrap_err();
            assert!(e.contains(why), "{e}");
        }
        let e = Record::parse(&rec(serde_json::json!([])), "quantize", "other").unwrap_err();
        assert!(e.contains("not quantize/other"), "{e}");
        assert!(Record::parse(b"{}", "quantize", "k").is_err());
        assert!(Record::parse(b"\xff", "quantize", "k").is_err());
    }
}
