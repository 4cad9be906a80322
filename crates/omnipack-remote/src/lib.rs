//! The shared stage cache on an S3-compatible object store (AWS S3, Cloudflare R2, MinIO,
//! Google Cloud Storage's S3 interface) through `object_store`.
//!
//! Layout under `s3://BUCKET/PREFIX`: `v1/blobs/<sha256>` holds a file's bytes, named by their
//! digest, and `v1/records/<kind>/<key>.json` a stage's [`Record`] (its files and metadata).
//! Blobs go up before the record, and a record is created only if absent, so every visible
//! record names complete blobs and two runners racing on one key both succeed. Every fetched
//! blob is hashed while it streams to disk and refused unless it matches its record.
//!
//! [`RemoteCache`] is synchronous: it owns a small tokio runtime and blocks the calling thread
//! (a build's worker thread) on each request. After the first transport or access error the
//! store counts as unavailable for the rest of the build ([`RemoteCache::unavailable`]).

use std::collections::BTreeSet;
use std::io::{Read as _, Write as _};
use std::path::Path as FsPath;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path;
use object_store::{
    ClientConfigKey, ObjectStore, ObjectStoreExt as _, PutMode, PutOptions, PutPayload,
    RetryConfig, WriteMultipart,
};
use omnipack_quant::{DigestWriter, FileDigest};

pub mod config;
pub mod record;

pub use config::{CacheUrl, ConfigError};
pub use record::{Record, RecordFile};

/// Smallest multipart part omnipack writes by default (S3 refuses parts under 5 MiB but the
/// last); [`RemoteCache::with_min_part_size`] changes it.
pub const MIN_PART: u64 = 8 << 20;
/// Parts of one upload in flight at once (memory is about this plus one times the part size).
const PARTS_IN_FLIGHT: usize = 4;
/// How long the first request may take before the store counts as unreachable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(15);

/// The store could not be used (unreachable, access refused, ...): the build goes on locally
/// unless the cache is required.
#[derive(Debug, Clone, thiserror::Error)]
#[error("remote cache {url} unavailable: {cause}")]
pub struct Unavailable {
    /// The cache URL.
    pub url: String,
    /// One line saying why (no credentials).
    pub cause: String,
}

/// What a record lookup found.
#[derive(Debug)]
pub enum Lookup {
    /// A valid record.
    Hit(Record),
    /// No record.
    Miss,
    /// A record that is not a valid omnipack record for this key: why. It is replaced when
    /// the stage is pushed.
    Corrupt(String),
}

/// The outcome of fetching one blob.
#[derive(Debug)]
pub enum Fetched {
    /// Written and equal to the record: the digest of what was written.
    Verified(FileDigest),
    /// Missing, truncated, or other bytes than recorded: why. The blob is replaced when the
    /// stage is pushed again.
    Rejected(String),
}

/// Why a blob could not be fetched (a blob the store has but that is not as recorded is
/// [`Fetched::Rejected`] instead).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The store failed: see [`Unavailable`].
    #[error(transparent)]
    Store(#[from] Unavailable),
    /// The local file could not be written (a full disk, say): not the store's fault.
    #[error("{}: {source}", path.display())]
    Local {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// Counters for the build's summary line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Stages whose record and files came from the store.
    pub hits: u64,
    /// Records published by this build.
    pub pushed: u64,
    /// Bytes downloaded (verified or not).
    pub bytes_down: u64,
    /// Bytes uploaded.
    pub bytes_up: u64,
    /// Records or blobs refused.
    pub rejected: u64,
    /// Blobs (files) downloaded.
    pub blobs_fetched: u64,
}

/// A remote cache: the store, the key prefix and what this build learnt about them.
pub struct RemoteCache {
    rt: tokio::runtime::Runtime,
    store: Arc<dyn ObjectStore>,
    root: String,
    url: String,
    down: Mutex<Option<String>>,
    /// Why pushes stopped (credentials that may read but not write): lookups go on.
    writes_refused: Mutex<Option<String>>,
    bad_blobs: Mutex<BTreeSet<String>>,
    bad_records: Mutex<BTreeSet<String>>,
    hits: AtomicU64,
    pushed: AtomicU64,
    bytes_down: AtomicU64,
    bytes_up: AtomicU64,
    rejected: AtomicU64,
    blobs_fetched: AtomicU64,
    min_part: u64,
}

// The store's builder would print keys: show only the URL.
impl std::fmt::Debug for RemoteCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteCache")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// Makes ring this process's TLS provider (omnipack builds reqwest without a provider of its
/// own, see the workspace Cargo.toml). [`RemoteCache::connect`] calls it; call it before
/// building any other S3 store. Calling it again does nothing.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl RemoteCache {
    /// The cache at `url` (`s3://BUCKET/PREFIX`), reached with the AWS settings of this
    /// process's environment (and profile files when the environment has no key). Nothing is
    /// requested yet: see [`RemoteCache::probe`].
    pub fn connect(url: &str) -> Result<RemoteCache, ConfigError> {
        let parsed = CacheUrl::parse(url)?;
        let env = |k: &str| std::env::var(k).ok();
        let mut b = AmazonS3Builder::from_env().with_bucket_name(&parsed.bucket);
        let profile = if env("AWS_ACCESS_KEY_ID").is_none() {
            config::profile_settings(&env)?
        } else {
            Default::default()
        };
        config::check_endpoint(&env, profile.endpoint_url.as_deref())?;
        config::check_credentials(&env, &profile)?;
        if let (Some(id), Some(secret)) = (profile.access_key_id, profile.secret_access_key) {
            b = b.with_access_key_id(id).with_secret_access_key(secret);
            // Long-term keys have no token; an empty one would be sent, and refused by S3.
            if let Some(token) = profile.session_token.filter(|t| !t.is_empty()) {
                b = b.with_token(token);
            }
        }
        if env("AWS_REGION").is_none()
            && env("AWS_DEFAULT_REGION").is_none()
            && let Some(r) = profile.region
        {
            b = b.with_region(r);
        }
        let env_endpoint = ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT"]
            .iter()
            .any(|v| env(v).is_some_and(|s| !s.is_empty()));
        if !env_endpoint && let Some(e) = profile.endpoint_url {
            b = b.with_endpoint(e);
        }
        // Fail fast: a dead endpoint costs seconds, not minutes. Set through `with_config`
        // so the `AWS_ALLOW_HTTP` read from the environment is kept.
        b = b
            .with_config(
                AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
                "3s",
            )
            // A whole request, body included: a 100 GB blob takes long on a slow link, so
            // this bound is only there to end a request that never ends; a stall is caught
            // by the read timeout below.
            .with_config(AmazonS3ConfigKey::Client(ClientConfigKey::Timeout), "24h")
            .with_config(
                AmazonS3ConfigKey::Client(ClientConfigKey::ReadTimeout),
                "30s",
            )
            .with_retry(RetryConfig {
                max_retries: 3,
                retry_timeout: Duration::from_secs(30),
                ..Default::default()
            });
        install_tls_provider();
        let store = b.build().map_err(|e| ConfigError::Url {
            url: parsed.display(),
            why: match e {
                object_store::Error::Generic { .. } => {
                    "the AWS settings of the environment are incomplete (an access key without its secret?)"
                }
                _ => "the AWS settings of the environment are not usable",
            },
        })?;
        RemoteCache::with_store(Arc::new(store), &parsed)
    }

    /// A remote cache on any `object_store` store (tests use an in-memory one).
    pub fn with_store(
        store: Arc<dyn ObjectStore>,
        url: &CacheUrl,
    ) -> Result<RemoteCache, ConfigError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("omnipack-remote")
            .enable_all()
            .build()
            .map_err(|e| ConfigError::Runtime(e.to_string()))?;
        let root = if url.prefix.is_empty() {
            "v1".to_string()
        } else {
            format!("{}/v1", url.prefix)
        };
        Ok(RemoteCache {
            rt,
            store,
            root,
            url: url.display(),
            down: Mutex::new(None),
            writes_refused: Mutex::new(None),
            bad_blobs: Mutex::default(),
            bad_records: Mutex::default(),
            hits: AtomicU64::new(0),
            pushed: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
            bytes_up: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            blobs_fetched: AtomicU64::new(0),
            min_part: MIN_PART,
        })
    }

    /// The same cache with another smallest multipart part: a file larger than the part
    /// size goes up as a multipart upload of parts of at least `bytes` (more when the file
    /// needs more than 9,000 parts), with memory bounded by a few parts. S3 itself refuses
    /// parts under 5 MiB (but the last): smaller parts are for test servers.
    pub fn with_min_part_size(mut self, bytes: u64) -> RemoteCache {
        self.min_part = bytes.max(1);
        self
    }

    /// The cache URL, for messages.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// What this build moved so far.
    pub fn stats(&self) -> Stats {
        Stats {
            hits: self.hits.load(Ordering::Relaxed),
            pushed: self.pushed.load(Ordering::Relaxed),
            bytes_down: self.bytes_down.load(Ordering::Relaxed),
            bytes_up: self.bytes_up.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            blobs_fetched: self.blobs_fetched.load(Ordering::Relaxed),
        }
    }

    /// Why the store stopped being used, once a request failed for a reason other than a
    /// missing object.
    pub fn unavailable(&self) -> Option<Unavailable> {
        self.down.lock().ok()?.clone().map(|cause| Unavailable {
            url: self.url.clone(),
            cause,
        })
    }

    /// One request to tell a usable store from a missing bucket, refused access or an
    /// unreachable endpoint, before any stage work.
    pub fn probe(&self) -> Result<(), Unavailable> {
        self.check()?;
        let prefix = Path::from(self.root.as_str());
        let r = self.rt.block_on(async {
            tokio::time::timeout(PROBE_TIMEOUT, self.store.list_with_delimiter(Some(&prefix))).await
        });
        match r {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(self.fail(&e)),
            Err(_) => Err(self.fail_with(format!("no answer within {}s", PROBE_TIMEOUT.as_secs()))),
        }
    }

    /// Why this build stopped pushing, once the store refused a write (read-only
    /// credentials, say); lookups go on.
    pub fn writes_refused(&self) -> Option<String> {
        self.writes_refused.lock().ok()?.clone()
    }

    /// A failed write: refused access stops pushes only (the store may still be read), any
    /// other failure stops the store.
    fn fail_write(&self, cause: String) -> Unavailable {
        if !cause.starts_with(ACCESS_DENIED) {
            return self.fail_with(cause);
        }
        let cause = format!("writes refused: {cause}");
        if let Ok(mut w) = self.writes_refused.lock()
            && w.is_none()
        {
            *w = Some(cause.clone());
        }
        Unavailable {
            url: self.url.clone(),
            cause,
        }
    }

    fn check(&self) -> Result<(), Unavailable> {
        match self.unavailable() {
            Some(u) => Err(u),
            None => Ok(()),
        }
    }

    fn fail(&self, e: &object_store::Error) -> Unavailable {
        self.fail_with(cause(e))
    }

    fn fail_with(&self, cause: String) -> Unavailable {
        if let Ok(mut d) = self.down.lock()
            && d.is_none()
        {
            *d = Some(cause);
        }
        self.unavailable().unwrap_or(Unavailable {
            url: self.url.clone(),
            cause: "unavailable".into(),
        })
    }

    fn record_path(&self, kind: &str, key: &str) -> Path {
        Path::from(format!("{}/records/{kind}/{key}.json", self.root))
    }

    fn blob_path(&self, sha256: &str) -> Path {
        Path::from(format!("{}/blobs/{sha256}", self.root))
    }

    /// The record of `kind/key`, validated.
    /// An entry this build refused (a bad record or blob) is a miss: its stage runs again.
    pub fn lookup(&self, kind: &str, key: &str) -> Result<Lookup, Unavailable> {
        self.check()?;
        if self.is_bad_record(kind, key) {
            return Ok(Lookup::Miss);
        }
        let path = self.record_path(kind, key);
        let got = self.rt.block_on(async {
            let r = self.store.get(&path).await?;
            if r.meta.size > record::MAX_RECORD_BYTES {
                return Ok(Err(r.meta.size));
            }
            r.bytes().await.map(Ok)
        });
        let corrupt = |why: String| {
            self.rejected.fetch_add(1, Ordering::Relaxed);
            self.reject_entry(kind, key);
            Ok(Lookup::Corrupt(why))
        };
        match got {
            Ok(Ok(bytes)) => {
                self.bytes_down
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                match Record::parse(&bytes, kind, key) {
                    Ok(r) => Ok(Lookup::Hit(r)),
                    Err(why) => corrupt(why),
                }
            }
            Ok(Err(size)) => corrupt(format!("a record of {size} bytes")),
            Err(object_store::Error::NotFound { .. }) => Ok(Lookup::Miss),
            Err(e) => Err(self.fail(&e)),
        }
    }

    /// Marks the entry `kind/key` as rejected (one of its blobs was): its next push uploads
    /// every blob and replaces the record.
    pub fn reject_entry(&self, kind: &str, key: &str) {
        if let Ok(mut b) = self.bad_records.lock() {
            b.insert(format!("{kind}/{key}"));
        }
    }

    /// Counts a record whose files were all fetched and verified.
    pub fn count_hit(&self) {
        self.hits.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether a record of `kind/key` exists (a local hit is pushed when it does not).
    pub fn has_record(&self, kind: &str, key: &str) -> Result<bool, Unavailable> {
        self.check()?;
        if self.is_bad_record(kind, key) {
            return Ok(false);
        }
        match self
            .rt
            .block_on(self.store.head(&self.record_path(kind, key)))
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.fail(&e)),
        }
    }

    fn is_bad_record(&self, kind: &str, key: &str) -> bool {
        self.bad_records
            .lock()
            .is_ok_and(|b| b.contains(&format!("{kind}/{key}")))
    }

    /// Downloads the blob of `file` into `dest` (created), hashing it as it streams, and
    /// checks it against the record: a size that differs is refused before any byte is read.
    /// `moved` gets the bytes written so far.
    pub fn fetch(
        &self,
        file: &RecordFile,
        dest: &FsPath,
        moved: &dyn Fn(u64),
    ) -> Result<Fetched, FetchError> {
        self.check()?;
        let reject = |why: String| {
            self.rejected.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut b) = self.bad_blobs.lock() {
                b.insert(file.sha256.clone());
            }
            Ok(Fetched::Rejected(format!("{}: {why}", file.path)))
        };
        let r = match self
            .rt
            .block_on(self.store.get(&self.blob_path(&file.sha256)))
        {
            Ok(r) => {
                self.blobs_fetched.fetch_add(1, Ordering::Relaxed);
                r
            }
            Err(object_store::Error::NotFound { .. }) => {
                return reject(format!("blob {} is missing", file.sha256));
            }
            Err(e) => return Err(self.fail(&e).into()),
        };
        if r.meta.size != file.size {
            return reject(format!(
                "blob of {} bytes, the record says {}",
                r.meta.size, file.size
            ));
        }
        let local = |path: &FsPath| {
            let path = path.to_path_buf();
            move |source| FetchError::Local { path, source }
        };
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(local(parent))?;
        }
        // Never over a file already written: on a file system that ignores case (or
        // normalises accents), two names of one record could be one file, and the second
        // blob would replace the first after it was verified.
        let out = match std::fs::File::create_new(dest) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return reject(
                    "another file of the record has the same name on this file system".into(),
                );
            }
            Err(e) => return Err(local(dest)(e)),
        };
        let mut out = DigestWriter::new(out);
        let mut stream = r.into_stream();
        let res: Result<Option<String>, FetchError> = self.rt.block_on(async {
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| self.fail(&e))?;
                self.bytes_down
                    .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                if out.written() + chunk.len() as u64 > file.size {
                    return Ok(Some(format!("more than the {} bytes recorded", file.size)));
                }
                out.write_all(&chunk).map_err(local(dest))?;
                moved(out.written());
            }
            Ok(None)
        });
        // What was written of a refused blob is not left behind.
        let refuse_written = |why: String| {
            let _ = std::fs::remove_file(dest);
            reject(why)
        };
        if let Some(why) = res.inspect_err(|_| {
            let _ = std::fs::remove_file(dest);
        })? {
            return refuse_written(why);
        }
        let (got, out) = out.finish();
        out.sync_all().map_err(local(dest))?;
        if got.size != file.size || got.sha256 != file.sha256 {
            return refuse_written(format!(
                "{} bytes with sha256 {}, expected {} bytes with sha256 {}",
                got.size, got.sha256, file.size, file.sha256
            ));
        }
        Ok(Fetched::Verified(got))
    }

    /// Publishes a stage's entry: every blob not already in the store (or found bad by this
    /// build) from `dir/<path>`, then the record, created only if absent (a racing runner's
    /// record for the same key is as good) or replacing a corrupt one. `moved` gets the bytes
    /// uploaded so far. Returns the bytes uploaded.
    pub fn push(
        &self,
        record: &Record,
        dir: &FsPath,
        moved: &dyn Fn(u64),
    ) -> Result<u64, Unavailable> {
        self.check()?;
        if let Some(cause) = self.writes_refused() {
            return Err(Unavailable {
                url: self.url.clone(),
                cause,
            });
        }
        // An entry rejected by this build is pushed whole: any of its blobs may be bad.
        let replace = self.is_bad_record(&record.kind, &record.key);
        let mut sent = 0u64;
        let mut done = BTreeSet::new();
        for f in &record.files {
            if !done.insert(f.sha256.as_str()) {
                continue;
            }
            let bad = replace || self.bad_blobs.lock().is_ok_and(|b| b.contains(&f.sha256));
            let path = self.blob_path(&f.sha256);
            if !bad {
                match self.rt.block_on(self.store.head(&path)) {
                    Ok(m) if m.size == f.size => continue,
                    Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(self.fail(&e)),
                }
            }
            let local = dir.join(&f.path);
            let base = sent;
            sent += self
                .upload(&path, &local, f.size, &|n| moved(base + n))
                .map_err(|cause| self.fail_write(cause))?;
            if let Ok(mut b) = self.bad_blobs.lock() {
                b.remove(&f.sha256);
            }
        }
        let body = serde_json::to_vec_pretty(record)
            .map_err(|e| self.fail_with(format!("cannot encode the record: {e}")))?;
        let path = self.record_path(&record.kind, &record.key);
        let mode = if replace {
            PutMode::Overwrite
        } else {
            PutMode::Create
        };
        let put = |mode: PutMode| {
            self.rt.block_on(self.store.put_opts(
                &path,
                PutPayload::from(body.clone()),
                PutOptions::from(mode),
            ))
        };
        match put(mode) {
            Ok(_) => {
                self.pushed.fetch_add(1, Ordering::Relaxed);
            }
            // Another runner published this key first: its record is as good as ours.
            Err(object_store::Error::AlreadyExists { .. }) => {}
            // A store without conditional writes: check, then write.
            Err(object_store::Error::NotImplemented { .. })
            | Err(object_store::Error::NotSupported { .. }) => {
                match self.rt.block_on(self.store.head(&path)) {
                    Ok(_) => {}
                    Err(object_store::Error::NotFound { .. }) => {
                        put(PutMode::Overwrite).map_err(|e| self.fail_write(cause(&e)))?;
                        self.pushed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => return Err(self.fail(&e)),
                }
            }
            Err(e) => return Err(self.fail_write(cause(&e))),
        }
        if let Ok(mut b) = self.bad_records.lock() {
            b.remove(&format!("{}/{}", record.kind, record.key));
        }
        self.bytes_up.fetch_add(sent, Ordering::Relaxed);
        Ok(sent)
    }

    /// Uploads `local` (`size` bytes): one request when small, else a multipart upload of
    /// parts of at least 8 MiB with at most [`PARTS_IN_FLIGHT`] in flight, read from the file
    /// piece by piece (memory does not grow with the file).
    fn upload(
        &self,
        path: &Path,
        local: &FsPath,
        size: u64,
        moved: &dyn Fn(u64),
    ) -> Result<u64, String> {
        let part = part_size(size, self.min_part);
        let mut file =
            std::fs::File::open(local).map_err(|e| format!("{}: {e}", local.display()))?;
        let read_err = |e: std::io::Error| format!("{}: {e}", local.display());
        if size <= part {
            let mut buf = Vec::with_capacity(size as usize);
            file.read_to_end(&mut buf).map_err(read_err)?;
            let n = buf.len() as u64;
            self.rt
                .block_on(self.store.put(path, PutPayload::from(buf)))
                .map_err(|e| cause(&e))?;
            moved(n);
            return Ok(n);
        }
        self.rt.block_on(async {
            let upload = self
                .store
                .put_multipart(path)
                .await
                .map_err(|e| cause(&e))?;
            let mut w = WriteMultipart::new_with_chunk_size(upload, part as usize);
            let mut buf = vec![0u8; 1 << 20];
            let mut n = 0u64;
            loop {
                let k = match file.read(&mut buf) {
                    Ok(0) => break,
                    Ok(k) => k,
                    Err(e) => {
                        let _ = w.abort().await;
                        return Err(read_err(e));
                    }
                };
                if let Err(e) = w.wait_for_capacity(PARTS_IN_FLIGHT).await {
                    let _ = w.abort().await;
                    return Err(cause(&e));
                }
                w.write(&buf[..k]);
                n += k as u64;
                moved(n);
            }
            w.finish().await.map_err(|e| cause(&e))?;
            Ok(n)
        })
    }
}

/// Part size for a multipart upload of `size` bytes: at least `min_part`, and large enough
/// to stay under S3's 10,000 parts (rounded up to a MiB when that decides).
fn part_size(size: u64, min_part: u64) -> u64 {
    let need = size.div_ceil(9000);
    if need > min_part {
        need.div_ceil(1 << 20) << 20
    } else {
        min_part
    }
}

/// The class of a store error that refused the credentials.
const ACCESS_DENIED: &str = "access denied";

/// One line about a store error: its class, then the store's own words (which name the
/// endpoint, bucket and key, never credentials), shortened.
fn cause(e: &object_store::Error) -> String {
    let text = e.to_string();
    let text = text.lines().next().unwrap_or_default();
    let detail: String = text.chars().take(240).collect();
    let class = match e {
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => ACCESS_DENIED,
        object_store::Error::NotFound { .. } => "not found",
        _ if text.contains("NoSuchBucket") => "the bucket does not exist",
        _ if text.contains("403 Forbidden")
            || text.contains("AccessDenied")
            || text.contains("InvalidAccessKeyId")
            || text.contains("SignatureDoesNotMatch") =>
        {
            ACCESS_DENIED
        }
        _ if text.contains("error sending request") || text.contains("connect") => "cannot connect",
        _ if text.contains("timed out") || text.contains("timeout") => "timed out",
        _ => "request failed",
    };
    format!("{class} ({detail})")
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    fn cache() -> (RemoteCache, Arc<InMemory>) {
        let mem = Arc::new(InMemory::new());
        let url = CacheUrl::parse("s3://b/team").unwrap();
        (RemoteCache::with_store(mem.clone(), &url).unwrap(), mem)
    }

    fn entry(dir: &FsPath, files: &[(&str, &[u8])]) -> Record {
        let mut recs = Vec::new();
        for (p, bytes) in files {
            let f = dir.join(p);
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(&f, bytes).unwrap();
            recs.push(RecordFile {
                path: p.to_string(),
                size: bytes.len() as u64,
                sha256: omnipack_quant::sha256_bytes(bytes),
            });
        }
        Record {
            cache_format: record::CACHE_FORMAT,
            kind: "package".into(),
            key: "k1".into(),
            files: recs,
            meta: serde_json::json!({"n": 1}),
        }
    }

    /// A store that may be read but refuses every write, as with read-only credentials.
    #[derive(Debug)]
    struct ReadOnly(Arc<InMemory>);

    impl std::fmt::Display for ReadOnly {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "ReadOnly")
        }
    }

    fn refused(path: &Path) -> object_store::Error {
        object_store::Error::PermissionDenied {
            path: path.to_string(),
            source: "403 Forbidden: AccessDenied".into(),
        }
    }

    #[async_trait::async_trait]
    impl ObjectStore for ReadOnly {
        async fn put_opts(
            &self,
            location: &Path,
            _: PutPayload,
            _: PutOptions,
        ) -> object_store::Result<object_store::PutResult> {
            Err(refused(location))
        }
        async fn put_multipart_opts(
            &self,
            location: &Path,
            _: object_store::PutMultipartOptions,
        ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
            Err(refused(location))
        }
        async fn get_opts(
            &self,
            location: &Path,
            options: object_store::GetOptions,
        ) -> object_store::Result<object_store::GetResult> {
            self.0.get_opts(location, options).await
        }
        fn delete_stream(
            &self,
            locations: futures::stream::BoxStream<'static, object_store::Result<Path>>,
        ) -> futures::stream::BoxStream<'static, object_store::Result<Path>> {
            self.0.delete_stream(locations)
        }
        fn list(
            &self,
            prefix: Option<&Path>,
        ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>>
        {
            self.0.list(prefix)
        }
        async fn list_with_delimiter(
            &self,
            prefix: Option<&Path>,
        ) -> object_store::Result<object_store::ListResult> {
            self.0.list_with_delimiter(prefix).await
        }
        async fn copy_opts(
            &self,
            from: &Path,
            _: &Path,
            _: object_store::CopyOptions,
        ) -> object_store::Result<()> {
            Err(refused(from))
        }
    }

    #[test]
    fn refused_writes_stop_pushes_but_not_lookups() {
        let (writer, mem) = cache();
        let d = tempfile::tempdir().unwrap();
        let rec = entry(d.path(), &[("bundle.zip", b"hello")]);
        writer.push(&rec, d.path(), &|_| {}).unwrap();
        let url = CacheUrl::parse("s3://b/team").unwrap();
        let reader = RemoteCache::with_store(Arc::new(ReadOnly(mem)), &url).unwrap();
        let mut other = rec.clone();
        other.key = "k2".into();
        let e = reader.push(&other, d.path(), &|_| {}).unwrap_err();
        assert!(e.cause.starts_with("writes refused: access denied"), "{e}");
        assert!(reader.unavailable().is_none());
        assert_eq!(reader.writes_refused(), Some(e.cause.clone()));
        // The store is still read: the first entry is a hit.
        assert!(matches!(
            reader.lookup("package", "k1").unwrap(),
            Lookup::Hit(_)
        ));
        // And no second write is tried.
        assert_eq!(
            reader.push(&other, d.path(), &|_| {}).unwrap_err().cause,
            e.cause
        );
    }

    #[test]
    fn push_then_fetch_verified() {
        let (c, mem) = cache();
        let d = tempfile::tempdir().unwrap();
        let rec = entry(
            d.path(),
            &[("a.bin", b"hello"), ("pack/x/b.bin", b"world!")],
        );
        assert!(matches!(c.lookup("package", "k1").unwrap(), Lookup::Miss));
        assert!(!c.has_record("package", "k1").unwrap());
        assert_eq!(c.push(&rec, d.path(), &|_| {}).unwrap(), 11);
        // Layout: blobs by digest, records by kind and key, under the prefix.
        let paths: Vec<String> = c.rt.block_on(async {
            mem.list(None)
                .map(|m| m.unwrap().location.to_string())
                .collect()
                .await
        });
        assert!(paths.contains(&format!(
            "team/v1/blobs/{}",
            omnipack_quant::sha256_bytes(b"hello")
        )));
        assert!(paths.contains(&"team/v1/records/package/k1.json".to_string()));
        // Pushing again uploads nothing (blobs present, record created once).
        assert_eq!(c.push(&rec, d.path(), &|_| {}).unwrap(), 0);
        let Lookup::Hit(got) = c.lookup("package", "k1").unwrap() else {
            panic!("expected a hit")
        };
        assert_eq!(got, rec);
        let out = tempfile::tempdir().unwrap();
        let dest = out.path().join("pack/x/b.bin");
        let Fetched::Verified(f) = c.fetch(&got.files[1], &dest, &|_| {}).unwrap() else {
            panic!("expected verified")
        };
        assert_eq!(f.size, 6);
        assert_eq!(f.crc32, FileDigest::of_bytes(b"world!").crc32);
        assert_eq!(std::fs::read(&dest).unwrap(), b"world!");
        let s = c.stats();
        assert_eq!((s.pushed, s.bytes_up), (1, 11));
    }

    #[test]
    fn tampered_blobs_are_rejected_then_replaced_by_the_next_push() {
        let (c, mem) = cache();
        let d = tempfile::tempdir().unwrap();
        let rec = entry(d.path(), &[("a.bin", b"hello")]);
        c.push(&rec, d.path(), &|_| {}).unwrap();
        let blob = Path::from(format!("team/v1/blobs/{}", rec.files[0].sha256));
        let out = tempfile::tempdir().unwrap();
        let dest = out.path().join("a.bin");
        // Same size, other bytes.
        c.rt.block_on(mem.put(&blob, PutPayload::from_static(b"HELLO")))
            .unwrap();
        let Fetched::Rejected(why) = c.fetch(&rec.files[0], &dest, &|_| {}).unwrap() else {
            panic!("a tampered blob must be rejected")
        };
        assert!(why.contains("expected 5 bytes with sha256"), "{why}");
        // Truncated: refused by its size.
        c.rt.block_on(mem.put(&blob, PutPayload::from_static(b"hel")))
            .unwrap();
        let Fetched::Rejected(why) = c.fetch(&rec.files[0], &dest, &|_| {}).unwrap() else {
            panic!("a truncated blob must be rejected")
        };
        assert!(why.contains("blob of 3 bytes"), "{why}");
        // The rebuilt entry's push replaces the bad blob even though one exists.
        c.push(&rec, d.path(), &|_| {}).unwrap();
        let Fetched::Verified(_) = c.fetch(&rec.files[0], &dest, &|_| {}).unwrap() else {
            panic!("the replaced blob verifies")
        };
        // A missing blob is a rejection, not an outage.
        c.rt.block_on(mem.delete(&blob)).unwrap();
        assert!(matches!(
            c.fetch(&rec.files[0], &dest, &|_| {}).unwrap(),
            Fetched::Rejected(_)
        ));
        assert!(c.unavailable().is_none());
    }

    #[test]
    fn a_corrupt_record_is_reported_and_overwritten() {
        let (c, mem) = cache();
        let d = tempfile::tempdir().unwrap();
        let rec = entry(d.path(), &[("a.bin", b"hello")]);
        let path = Path::from("team/v1/records/package/k1.json");
        c.rt.block_on(mem.put(&path, PutPayload::from_static(b"{\"key\": \"k2\"}")))
            .unwrap();
        assert!(matches!(
            c.lookup("package", "k1").unwrap(),
            Lookup::Corrupt(_)
        ));
        assert!(!c.has_record("package", "k1").unwrap());
        c.push(&rec, d.path(), &|_| {}).unwrap();
        assert!(matches!(c.lookup("package", "k1").unwrap(), Lookup::Hit(_)));
    }

    #[test]
    fn racing_pushes_of_one_key_all_succeed() {
        let (c, _mem) = cache();
        let d = tempfile::tempdir().unwrap();
        let rec = entry(d.path(), &[("a.bin", b"same bytes")]);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| c.push(&rec, d.path(), &|_| {}).unwrap());
            }
        });
        assert_eq!(c.stats().pushed, 1);
        assert!(matches!(c.lookup("package", "k1").unwrap(), Lookup::Hit(_)));
    }

    #[test]
    fn part_sizes_stay_within_s3_limits() {
        assert_eq!(part_size(1, MIN_PART), MIN_PART);
        assert_eq!(part_size(70 << 30, MIN_PART), MIN_PART);
        assert_eq!(part_size(1 << 20, 64 << 10), 64 << 10);
        let big = 140_000_000_000u64;
        let p = part_size(big, MIN_PART);
        assert!(
            big.div_ceil(p) <= 10_000 && p.is_multiple_of(1 << 20),
            "{p}"
        );
    }
}
