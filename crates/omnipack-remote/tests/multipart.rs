//! Large objects against a real S3 endpoint (moto's S3 server on 127.0.0.1, found through
//! `OMNIPACK_TEST_MOTO_SERVER`, which `.ci/run` sets; without it the test prints a notice and
//! passes only outside CI): a file larger than the part size goes up as a multipart upload of
//! parts of that size, and comes back as a stream, verified.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt as _};
use omnipack_quant::sha256_bytes;
use omnipack_remote::{CacheUrl, Fetched, Record, RecordFile, RemoteCache};

/// A moto S3 server on a free loopback port that accepts small multipart parts, stopped when
/// dropped.
struct Moto {
    child: Child,
    port: u16,
}

impl Moto {
    fn start() -> Option<Moto> {
        let Some(server) = std::env::var_os("OMNIPACK_TEST_MOTO_SERVER") else {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI is set but OMNIPACK_TEST_MOTO_SERVER is not: the S3 tests must run in CI (.ci/run sets it)"
            );
            eprintln!(
                "notice: S3 test skipped: set OMNIPACK_TEST_MOTO_SERVER to a moto_server program (run .ci/run, which installs one)"
            );
            return None;
        };
        let mut child = Command::new(&server)
            .args(["-H", "127.0.0.1", "-p", "0"])
            // Real S3 refuses parts under 5 MiB but the last; moto lowers that on request.
            .env("S3_UPLOAD_PART_MIN_SIZE", "1024")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("OMNIPACK_TEST_MOTO_SERVER starts");
        let err = child.stderr.take().expect("piped stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("http://127.0.0.1:").nth(1) {
                    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                    if let (Some(t), Ok(p)) = (tx.take(), digits.parse::<u16>()) {
                        let _ = t.send(p);
                    }
                }
            }
        });
        let Ok(port) = rx.recv_timeout(Duration::from_secs(60)) else {
            let _ = child.kill();
            panic!("moto_server did not report its port within 60 s");
        };
        let moto = Moto { child, port };
        let t0 = Instant::now();
        while moto.create_bucket("probe").is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "moto does not answer"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(moto)
    }

    /// Creates a bucket with an unsigned `PUT /BUCKET` (moto checks no signature); its status.
    fn create_bucket(&self, name: &str) -> std::io::Result<u16> {
        let mut c = TcpStream::connect(("127.0.0.1", self.port))?;
        c.set_read_timeout(Some(Duration::from_secs(30)))?;
        write!(
            c,
            "PUT /{name} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nAuthorization: AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0\r\nConnection: close\r\n\r\n",
            self.port
        )?;
        let mut resp = String::new();
        c.read_to_string(&mut resp)?;
        resp.split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other("no status"))
    }

    fn store(&self, bucket: &str) -> Arc<dyn ObjectStore> {
        omnipack_remote::install_tls_provider();
        Arc::new(
            AmazonS3Builder::new()
                .with_endpoint(format!("http://127.0.0.1:{}", self.port))
                .with_allow_http(true)
                .with_bucket_name(bucket)
                .with_region("us-east-1")
                .with_access_key_id("testing")
                .with_secret_access_key("testing")
                .build()
                .unwrap(),
        )
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_large_file_goes_up_in_parts_and_comes_back_streamed_and_verified() {
    let Some(moto) = Moto::start() else { return };
    assert_eq!(moto.create_bucket("big").unwrap(), 200);
    let store = moto.store("big");
    let part = 64 << 10;
    let cache = RemoteCache::with_store(store.clone(), &CacheUrl::parse("s3://big/p").unwrap())
        .unwrap()
        .with_min_part_size(part);
    // Bytes that differ from part to part (a part sent twice or out of order shows).
    let size = 17 * part as usize + 123;
    let mut x = 0x9e37_79b9_u32;
    let bytes: Vec<u8> = (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("weights.safetensors"), &bytes).unwrap();
    let file = RecordFile {
        path: "weights.safetensors".into(),
        size: size as u64,
        sha256: sha256_bytes(&bytes),
    };
    let record = Record {
        cache_format: omnipack_remote::record::CACHE_FORMAT,
        kind: "quantize".into(),
        key: "k".into(),
        files: vec![file.clone()],
        meta: serde_json::json!({}),
    };
    let up = Mutex::new(Vec::new());
    let sent = cache
        .push(&record, dir.path(), &|n| up.lock().unwrap().push(n))
        .unwrap();
    assert_eq!(sent, size as u64);
    let up = up.into_inner().unwrap();
    assert!(up.len() > 1, "upload progress in steps: {up:?}");
    assert!(up.windows(2).all(|w| w[0] <= w[1]), "{up:?}");
    assert_eq!(up.last(), Some(&(size as u64)));
    // A multipart object's ETag ends in its number of parts.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let meta = rt
        .block_on(store.head(&Path::from(format!("p/v1/blobs/{}", file.sha256))))
        .unwrap();
    let etag = meta.e_tag.unwrap_or_default();
    assert!(
        etag.trim_matches('"')
            .ends_with(&format!("-{}", size.div_ceil(part as usize))),
        "not a multipart upload of {} parts: ETag {etag}",
        size.div_ceil(part as usize)
    );
    // Down again: streamed to disk piece by piece, hashed on the way, verified.
    let down = Mutex::new(Vec::new());
    let dest = dir.path().join("again/weights.safetensors");
    let got = cache
        .fetch(&file, &dest, &|n| down.lock().unwrap().push(n))
        .unwrap();
    let Fetched::Verified(f) = got else {
        panic!("expected a verified download: {got:?}")
    };
    assert_eq!(f.size, size as u64);
    assert_eq!(std::fs::read(&dest).unwrap(), bytes);
    let down = down.into_inner().unwrap();
    assert!(down.len() > 1, "download progress in steps: {down:?}");
    assert_eq!(down.last(), Some(&(size as u64)));
    let stats = cache.stats();
    assert_eq!((stats.bytes_up, stats.blobs_fetched), (size as u64, 1));
}
