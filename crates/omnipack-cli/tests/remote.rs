//! The remote cache (`--cache-url`, `--only`, `--require-cache`) against a real S3 endpoint:
//! moto's S3 server on 127.0.0.1, one per test, found through `OMNIPACK_TEST_MOTO_SERVER`
//! (the `moto_server` program; `.ci/run` installs it and sets the variable). Without the
//! variable these tests print a notice and pass only outside CI: when `CI` is set they fail.
//! Tests that need no server (an unreachable endpoint, usage errors) always run.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{bin, repo, s, stderr, stdout, text, tree};

/// A moto S3 server on a free loopback port, stopped when dropped.
struct Moto {
    child: Child,
    port: u16,
}

impl Moto {
    /// Starts moto, or `None` (with a notice) when `OMNIPACK_TEST_MOTO_SERVER` is unset
    /// outside CI.
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
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start OMNIPACK_TEST_MOTO_SERVER={}: {e}",
                    Path::new(&server).display()
                )
            });
        let err = child.stderr.take().expect("piped stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads the port from "Running on http://127.0.0.1:PORT", then keeps draining the log.
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
        let port = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(p) => p,
            Err(_) => {
                let _ = child.kill();
                panic!("moto_server did not report its port within 60 s");
            }
        };
        let moto = Moto { child, port };
        let t0 = Instant::now();
        while moto.request("GET", "/", b"").is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "moto does not answer"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(moto)
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A raw, unsigned HTTP/1.1 request (moto does not check signatures): status and body.
    fn request(&self, method: &str, path: &str, body: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
        let mut c = TcpStream::connect(("127.0.0.1", self.port))?;
        c.set_read_timeout(Some(Duration::from_secs(30)))?;
        write!(
            c,
            // moto checks no signature, but treats a request without one as anonymous.
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\nAuthorization: AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0\r\nConnection: close\r\n\r\n",
            self.port,
            body.len()
        )?;
        c.write_all(body)?;
        let mut resp = Vec::new();
        c.read_to_end(&mut resp)?;
        let head_end = resp
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| std::io::Error::other("no HTTP header"))?;
        let head = String::from_utf8_lossy(&resp[..head_end]).into_owned();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other("no status"))?;
        let mut body = resp[head_end + 4..].to_vec();
        if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            body = dechunk(&body);
        }
        Ok((status, body))
    }

    /// A new bucket (moto creates it on an unsigned `PUT /BUCKET`).
    fn bucket(&self, name: &str) -> String {
        let (status, body) = self.request("PUT", &format!("/{name}"), b"").unwrap();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        name.to_string()
    }

    /// Every key of `bucket` with its size.
    fn keys(&self, bucket: &str) -> BTreeMap<String, u64> {
        let (status, body) = self
            .request("GET", &format!("/{bucket}?list-type=2&max-keys=1000"), b"")
            .unwrap();
        assert_eq!(status, 200);
        let xml = String::from_utf8_lossy(&body).into_owned();
        let mut out = BTreeMap::new();
        for part in xml.split("<Contents>").skip(1) {
            let tag = |t: &str| {
                part.split(&format!("<{t}>"))
                    .nth(1)
                    .and_then(|r| r.split(&format!("</{t}>")).next())
                    .unwrap_or_default()
                    .to_string()
            };
            out.insert(tag("Key"), tag("Size").parse().unwrap_or(0));
        }
        out
    }

    fn get(&self, bucket: &str, key: &str) -> Vec<u8> {
        let (status, body) = self
            .request("GET", &format!("/{bucket}/{key}"), b"")
            .unwrap();
        assert_eq!(status, 200, "{key}: {}", String::from_utf8_lossy(&body));
        body
    }

    fn put(&self, bucket: &str, key: &str, bytes: &[u8]) {
        let (status, _) = self
            .request("PUT", &format!("/{bucket}/{key}"), bytes)
            .unwrap();
        assert_eq!(status, 200, "{key}");
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = eol + 2;
        out.extend_from_slice(&b[start..start + size]);
        b = &b[start + size + 2..];
    }
    out
}

/// A project with the example checkpoint: a text model (int4), an image decoder (int8) and
/// a data component written by a command.
fn project() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    fs::copy(
        repo().join("examples/omnicoder-tiny/model.safetensors"),
        d.path().join("model.safetensors"),
    )
    .unwrap();
    fs::write(
        d.path().join("omnipack.yaml"),
        r#"omnipack: 1
package: { name: t, version: 1.0.0, bundle_id: com.example.t }
runtime_overhead: 100MiB
tiers:
  - { name: small, device_memory: 4GiB, memory_limit: 2GiB }
components:
  - name: text
    role: text_decode_step
    source: { safetensors: model.safetensors, prefix: text. }
    architecture: { layers: 4, kv_heads: 4, kv_head_dim: 32, hidden_size: 128, vocab_size: 512 }
    max_seq_len: 256
    quantization: { format: int4, group_size: 64, keep: ["*norm*"] }
  - name: image_decoder
    role: image_decoder
    source: { safetensors: model.safetensors, prefix: image. }
    quantization: { format: int8 }
  - name: tok
    role: data
    source:
      command:
        run: [sh, -c, 'printf ''{"v":1}\n'' > "$1/tok.json"', sh, "{out}"]
        outputs: [tok.json]
        timeout: 10s
    size: 1KiB
"#,
    )
    .unwrap();
    d
}

/// `omnipack ARGS` in `dir` with the AWS environment of a test (static keys, no instance
/// metadata, no profile files) pointing at `endpoint`, plus `extra` variables.
fn omnipack_s3(dir: &Path, endpoint: &str, args: &[&str], extra: &[(&str, &str)]) -> Output {
    command(dir, endpoint, args, extra)
        .output()
        .expect("omnipack runs")
}

fn command(dir: &Path, endpoint: &str, args: &[&str], extra: &[(&str, &str)]) -> Command {
    let mut c = Command::new(bin());
    c.args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env("HOME", dir)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_METADATA_ENDPOINT", "http://127.0.0.1:9")
        .env_remove("OMNIPACK_CACHE_URL")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_ENDPOINT_URL_S3")
        .env_remove("AWS_ENDPOINT");
    for (k, v) in extra {
        c.env(k, v);
    }
    c
}

/// A local build without any remote cache, for comparison.
fn local_build(dir: &Path, out: &Path) -> BTreeMap<String, Vec<u8>> {
    let o = omnipack_s3(dir, "", &["build", "omnipack.yaml", "--out", s(out)], &[]);
    assert!(o.status.success(), "{}", text(&o));
    tree(out)
}

/// The stage ids of the project's plan (`omnipack plan --format json`, `stages[].id`).
fn stage_ids(dir: &Path) -> Vec<String> {
    let o = omnipack_s3(dir, "", &["plan", "omnipack.yaml", "--format", "json"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    plan["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

fn build_with(dir: &Path, endpoint: &str, url: &str, out: &Path, more: &[&str]) -> Output {
    let mut args = vec![
        "build",
        "omnipack.yaml",
        "--out",
        s(out),
        "--cache-url",
        url,
    ];
    args.extend_from_slice(more);
    omnipack_s3(dir, endpoint, &args, &[])
}

/// A project built once with the remote cache `s3://<new bucket named after name>/c`: the
/// project, the bucket, the URL and the output's files.
fn published(
    moto: &Moto,
    name: &str,
) -> (tempfile::TempDir, String, String, BTreeMap<String, Vec<u8>>) {
    let p = project();
    let bucket = moto.bucket(name);
    let url = format!("s3://{bucket}/c");
    let first = p.path().join("first");
    let o = build_with(p.path(), &moto.endpoint(), &url, &first, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let reference = tree(&first);
    (p, bucket, url, reference)
}

/// A third machine (empty output and cache) takes every stage from the store, rejects
/// nothing, and writes `reference`.
fn assert_every_stage_remote(
    p: &tempfile::TempDir,
    moto: &Moto,
    url: &str,
    reference: &BTreeMap<String, Vec<u8>>,
) {
    let third = p.path().join("third");
    let o = build_with(p.path(), &moto.endpoint(), url, &third, &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(stdout(&o).contains(" 0 stages ran"), "{}", text(&o));
    assert!(!stderr(&o).contains("rebuilding"), "{}", text(&o));
    assert!(tree(&third) == *reference);
}

#[test]
fn a_build_from_an_empty_machine_takes_every_stage_from_the_remote_cache() {
    let Some(moto) = Moto::start() else { return };
    let p = project();
    let bucket = moto.bucket("hit");
    let url = format!("s3://{bucket}/team/omnipack");
    let first = p.path().join("first");
    let o = build_with(p.path(), &moto.endpoint(), &url, &first, &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(stdout(&o).contains("0 remote hits"), "{}", stdout(&o));
    assert!(stderr(&o).contains("remote: pushed "), "{}", stderr(&o));
    let keys = moto.keys(&bucket);
    assert!(
        keys.keys()
            .any(|k| k.starts_with("team/omnipack/v1/blobs/"))
            && keys
                .keys()
                .any(|k| k.starts_with("team/omnipack/v1/records/package/")),
        "{keys:?}"
    );
    // Another machine: empty output and cache folders. Nothing runs.
    let second = p.path().join("second");
    let o = build_with(p.path(), &moto.endpoint(), &url, &second, &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(stdout(&o).contains(" 0 stages ran"), "{}", stdout(&o));
    assert!(stderr(&o).contains("remote: fetched "), "{}", stderr(&o));
    assert!(!stdout(&o).contains(" 0 remote hits"), "{}", stdout(&o));
    // Same bytes as the first machine and as a build that never saw a remote cache.
    let t = tree(&second);
    assert!(t.len() > 10, "{:?}", t.keys());
    assert!(t == tree(&first), "remote-assembled output differs");
    assert!(
        t == local_build(p.path(), &p.path().join("local")),
        "differs from a local build"
    );
    let v = omnipack_s3(p.path(), "", &["verify", s(&second)], &[]);
    assert!(v.status.success(), "{}", text(&v));
}

#[test]
fn only_on_two_runners_then_an_assemble_job_equals_a_local_build() {
    let Some(moto) = Moto::start() else { return };
    let p = project();
    let bucket = moto.bucket("runners");
    let url = format!("s3://{bucket}/ci");
    let ids = stage_ids(p.path());
    assert!(ids.len() >= 4, "{ids:?}");
    // Quantize and package stages spread over two runners with their own caches, at once.
    let work: Vec<&String> = ids
        .iter()
        .filter(|i| i.starts_with("quantize:") || i.starts_with("package:"))
        .collect();
    let (a, b) = work.split_at(work.len() / 2);
    let runner = |name: &str, part: &[&String]| {
        let dir = p.path().join(name);
        fs::create_dir_all(&dir).unwrap();
        let mut args = vec![
            "build".to_string(),
            "omnipack.yaml".into(),
            "--cache-url".into(),
            url.clone(),
            "--cache-dir".into(),
            s(&dir.join("cache")).into(),
        ];
        for id in part {
            args.push("--only".into());
            args.push(id.to_string());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        command(p.path(), &moto.endpoint(), &args, &[])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (ra, rb) = (runner("runner-a", a), runner("runner-b", b));
    for r in [ra, rb] {
        let o = r.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", text(&o));
        assert!(stdout(&o).contains("ran --only "), "{}", stdout(&o));
    }
    // --only writes no output folder.
    assert!(!p.path().join("dist").exists());
    // The assemble job: a fresh machine, every stage found.
    let out = p.path().join("assembled");
    let o = build_with(p.path(), &moto.endpoint(), &url, &out, &["--require-cache"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(stdout(&o).contains(" 0 stages ran"), "{}", stdout(&o));
    // It downloads what assembling reads, the packaged bundles, and no intermediate object
    // (the quantized weights and exported files stay in the store).
    let keys = moto.keys(&bucket);
    let package_files: usize = keys
        .keys()
        .filter(|k| k.contains("/records/package/"))
        .map(|k| {
            let rec: serde_json::Value = serde_json::from_slice(&moto.get(&bucket, k)).unwrap();
            rec["files"].as_array().unwrap().len()
        })
        .sum();
    assert!(package_files >= 3, "{keys:?}");
    assert!(
        stdout(&o).contains(&format!("; {package_files} files fetched,")),
        "expected only the {package_files} files of the package entries to be fetched: {}",
        stdout(&o)
    );
    let fetched = stderr(&o);
    assert!(
        !fetched.contains("remote: fetched quantize/")
            && !fetched.contains("remote: fetched export/"),
        "{fetched}"
    );
    assert!(
        tree(&out) == local_build(p.path(), &p.path().join("local")),
        "assembled output differs from a local build"
    );
}

#[test]
fn a_package_that_misses_downloads_only_the_weights_it_zips() {
    let Some(moto) = Moto::start() else { return };
    let p = project();
    let bucket = moto.bucket("lazy");
    let url = format!("s3://{bucket}/l");
    let ids = stage_ids(p.path());
    // One runner quantizes every component; nothing is packaged yet.
    let mut args = vec![
        "build".to_string(),
        "omnipack.yaml".into(),
        "--cache-url".into(),
        url.clone(),
    ];
    for id in ids.iter().filter(|i| i.starts_with("quantize:")) {
        args.push("--only".into());
        args.push(id.clone());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = omnipack_s3(p.path(), &moto.endpoint(), &args, &[]);
    assert!(o.status.success(), "{}", text(&o));
    // The final build packages: it downloads the quantized weights its package stages zip,
    // runs no quantization, and builds the same bytes as a local build.
    let out = p.path().join("out");
    let o = build_with(p.path(), &moto.endpoint(), &url, &out, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let err = stderr(&o);
    assert_eq!(err.matches("remote: fetched quantize/").count(), 2, "{err}");
    assert!(!err.contains("ran    quantize:"), "{err}");
    assert!(
        tree(&out) == local_build(p.path(), &p.path().join("local")),
        "output differs from a local build"
    );
}

#[test]
fn a_tampered_object_is_rebuilt_replaced_and_never_shipped() {
    let Some(moto) = Moto::start() else { return };
    let (p, bucket, url, reference) = published(&moto, "tamper");
    // Flip one byte of every blob (same size), and make one record foreign.
    let keys = moto.keys(&bucket);
    let blobs: Vec<&String> = keys.keys().filter(|k| k.contains("/blobs/")).collect();
    assert!(!blobs.is_empty());
    let mut tampered = 0;
    for k in &blobs {
        let (status, mut bytes) = moto.request("GET", &format!("/{bucket}/{k}"), b"").unwrap();
        if status != 200 || bytes.is_empty() {
            continue;
        }
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x01;
        moto.put(&bucket, k, &bytes);
        tampered += 1;
    }
    assert!(
        tampered >= 2,
        "{tampered} blobs tampered of {}",
        blobs.len()
    );
    let record = keys
        .keys()
        .find(|k| k.contains("/records/quantize/"))
        .unwrap();
    let mut rec: serde_json::Value = serde_json::from_slice(&moto.get(&bucket, record)).unwrap();
    rec["key"] = "0".repeat(64).into();
    moto.put(&bucket, record, &serde_json::to_vec(&rec).unwrap());

    let second = p.path().join("second");
    let o = build_with(
        p.path(),
        &moto.endpoint(),
        &url,
        &second,
        &["--require-cache"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let err = stderr(&o);
    assert!(err.contains("rebuilding locally"), "{err}");
    assert!(err.contains("record refused"), "{err}");
    // A quantize entry with a valid record but a tampered blob is found, its download deferred,
    // refused when its package is built, and the stage runs again.
    assert!(
        err.contains("again: its output in the remote cache could not be used"),
        "{err}"
    );
    assert!(
        tree(&second) == reference,
        "a tampered object reached the output"
    );
    // The store was repaired.
    assert_every_stage_remote(&p, &moto, &url, &reference);
}

#[test]
fn a_valid_record_the_stage_cannot_use_is_rebuilt_not_a_failure() {
    let Some(moto) = Moto::start() else { return };
    let (p, bucket, url, reference) = published(&moto, "unusable");
    // Records that parse, for the right key, with verified blobs, but without the quality
    // every quantize stage records.
    let keys = moto.keys(&bucket);
    let mut changed = 0;
    for k in keys.keys().filter(|k| k.contains("/records/quantize/")) {
        let mut rec: serde_json::Value = serde_json::from_slice(&moto.get(&bucket, k)).unwrap();
        rec["meta"].as_object_mut().unwrap().remove("quality");
        moto.put(&bucket, k, &serde_json::to_vec(&rec).unwrap());
        changed += 1;
    }
    assert!(changed >= 2, "{changed} quantize records");
    let second = p.path().join("second");
    let o = build_with(
        p.path(),
        &moto.endpoint(),
        &url,
        &second,
        &["--require-cache"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let err = stderr(&o);
    assert!(err.contains("not usable"), "{err}");
    assert!(err.contains("rebuilding locally"), "{err}");
    assert!(tree(&second) == reference, "{}", text(&o));
    // The pushes replaced them.
    assert_every_stage_remote(&p, &moto, &url, &reference);
}

#[test]
fn concurrent_pushes_of_one_key_both_succeed() {
    let Some(moto) = Moto::start() else { return };
    let p = project();
    let bucket = moto.bucket("race");
    let url = format!("s3://{bucket}/r");
    let ids = stage_ids(p.path());
    let pkg = ids.iter().find(|i| i.starts_with("package:")).unwrap();
    let runs: Vec<Child> = (0..3)
        .map(|i| {
            let cache = p.path().join(format!("cache-{i}"));
            command(
                p.path(),
                &moto.endpoint(),
                &[
                    "build",
                    "omnipack.yaml",
                    "--cache-url",
                    &url,
                    "--cache-dir",
                    s(&cache),
                    "--only",
                    pkg,
                ],
                &[],
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    for r in runs {
        let o = r.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", text(&o));
    }
    let keys = moto.keys(&bucket);
    let records = keys
        .keys()
        .filter(|k| k.contains("/records/package/"))
        .count();
    assert_eq!(records, 1, "{keys:?}");
    // The published entry is complete and valid: a fresh build takes it.
    let out = p.path().join("out");
    let o = build_with(p.path(), &moto.endpoint(), &url, &out, &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!stderr(&o).contains("rebuilding"), "{}", text(&o));
}

#[test]
fn an_unreachable_store_warns_and_builds_locally_unless_the_cache_is_required() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let p = project();
    let url = "s3://nowhere/x";
    let out = p.path().join("out");
    let t0 = Instant::now();
    let o = build_with(p.path(), &endpoint, url, &out, &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        stderr(&o).contains("remote cache s3://nowhere/x unavailable"),
        "{}",
        text(&o)
    );
    assert_eq!(stderr(&o).matches("unavailable").count(), 1, "{}", text(&o));
    assert!(
        stdout(&o).contains("built locally: remote cache s3://nowhere/x unavailable"),
        "{}",
        stdout(&o)
    );
    assert!(t0.elapsed() < Duration::from_secs(60), "not failing fast");
    assert!(tree(&out) == local_build(p.path(), &p.path().join("local")));
    // Required: exit 1 before any work, naming the URL.
    let out2 = p.path().join("out2");
    let o = build_with(p.path(), &endpoint, url, &out2, &["--require-cache"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        stderr(&o).contains("s3://nowhere/x unavailable"),
        "{}",
        text(&o)
    );
    assert!(!out2.join("mobile_packager_summary.json").exists());
    let o = omnipack_s3(
        p.path(),
        &endpoint,
        &[
            "build",
            "omnipack.yaml",
            "--cache-url",
            url,
            "--only",
            "export:text",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
}

#[test]
fn cache_url_usage_and_configuration_errors_are_clear() {
    let p = project();
    // --only and --require-cache need a URL.
    for args in [
        &["build", "omnipack.yaml", "--only", "export:text"][..],
        &["build", "omnipack.yaml", "--require-cache"][..],
    ] {
        let o = omnipack_s3(p.path(), "", args, &[]);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(stderr(&o).contains("needs a remote cache"), "{}", text(&o));
    }
    // Plain HTTP needs AWS_ALLOW_HTTP=true.
    let o = omnipack_s3(
        p.path(),
        "http://127.0.0.1:9",
        &["build", "omnipack.yaml", "--cache-url", "s3://b/p"],
        &[("AWS_ALLOW_HTTP", "false")],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(stderr(&o).contains("AWS_ALLOW_HTTP=true"), "{}", text(&o));
    // Not an s3:// URL; the environment variable is read too.
    let o = omnipack_s3(
        p.path(),
        "",
        &["build", "omnipack.yaml"],
        &[("OMNIPACK_CACHE_URL", "https://example.invalid/x")],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(stderr(&o).contains("only s3:// URLs"), "{}", text(&o));
    // An unknown stage id.
    let o = omnipack_s3(
        p.path(),
        "http://127.0.0.1:9",
        &[
            "build",
            "omnipack.yaml",
            "--cache-url",
            "s3://b/p",
            "--only",
            "quantize:nope",
        ],
        &[("AWS_SECRET_ACCESS_KEY", "s3cr3t-never-printed")],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(stderr(&o).contains("no such stage"), "{}", text(&o));
    assert!(!stderr(&o).contains("--only failed"), "{}", text(&o));
    // The secret never appears.
    assert!(!text(&o).contains("s3cr3t"), "{}", text(&o));
    // Nor does a key written into the URL by mistake.
    let o = omnipack_s3(
        p.path(),
        "",
        &["build", "omnipack.yaml"],
        &[(
            "OMNIPACK_CACHE_URL",
            "https://AKIAEXAMPLE:s3cr3t@example.invalid/x",
        )],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        stderr(&o).contains("https://***@example.invalid/x"),
        "{}",
        text(&o)
    );
    assert!(!text(&o).contains("s3cr3t"), "{}", text(&o));
    // A credential that cannot go into a header is refused by name, not by value.
    let o = omnipack_s3(
        p.path(),
        "http://127.0.0.1:9",
        &["build", "omnipack.yaml", "--cache-url", "s3://b/p"],
        &[("AWS_SESSION_TOKEN", "s3cr3t\nwith a line break")],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        stderr(&o).contains("AWS_SESSION_TOKEN contains"),
        "{}",
        text(&o)
    );
    assert!(!text(&o).contains("s3cr3t"), "{}", text(&o));
}
