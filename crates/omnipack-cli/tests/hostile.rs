//! Hostile folders and files, on the real binary: planted links, special files, files changed
//! behind omnipack's back, exporters that leave processes behind, amplification and panics.
//! Each test is the repro of one reported defect (see docs/security.md for the promises).

mod common;

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{bin, omnipack, repo, s, stderr, stdout, text, tree};

/// A project with the example checkpoint and a manifest whose `tok` component runs `script`
/// (POSIX sh, `$1` is `{out}`), with `inputs` for the exporter.
fn project(script: &str, inputs: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    fs::copy(
        repo().join("examples/omnicoder-tiny/model.safetensors"),
        d.path().join("model.safetensors"),
    )
    .unwrap();
    let script = script.replace('\'', "''");
    let m = format!(
        r#"omnipack: 1
package: {{ name: t, version: 1.0.0, bundle_id: com.example.t }}
runtime_overhead: 100MiB
tiers:
  - {{ name: small, device_memory: 4GiB, memory_limit: 2GiB }}
components:
  - name: text
    role: text_decode_step
    source: {{ safetensors: model.safetensors, prefix: text. }}
    architecture: {{ layers: 4, kv_heads: 4, kv_head_dim: 32, hidden_size: 128, vocab_size: 512 }}
    max_seq_len: 256
    quantization: {{ format: int4, group_size: 64 }}
  - name: tok
    role: data
    source:
      command:
        run: [sh, -c, '{script}', sh, "{{out}}"]
        inputs: {inputs}
        outputs: [tok.json]
        timeout: 20s
    size: 1KiB
"#
    );
    fs::write(d.path().join("omnipack.yaml"), m).unwrap();
    d
}

const GOOD: &str = r#"printf '{"v":1}\n' > "$1/tok.json""#;

fn build(dir: &Path, out: &Path, extra: &[&str]) -> Output {
    let m = dir.join("omnipack.yaml");
    let mut args = vec!["build", s(&m), "--out", s(out)];
    args.extend_from_slice(extra);
    omnipack(&args)
}

/// Runs omnipack with a deadline: a command that blocks on a special file fails the test
/// instead of hanging it.
fn omnipack_within(args: &[&str], secs: u64) -> Output {
    // Output goes to files: a pipe nobody reads until the end would block a long output.
    let (mut out, mut err) = (tempfile::tempfile().unwrap(), tempfile::tempfile().unwrap());
    let mut child = Command::new(bin())
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::from(out.try_clone().unwrap()))
        .stderr(Stdio::from(err.try_clone().unwrap()))
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let read = |f: &mut fs::File| {
                let mut v = Vec::new();
                f.seek(SeekFrom::Start(0)).unwrap();
                std::io::Read::read_to_end(f, &mut v).unwrap();
                v
            };
            return Output {
                status,
                stdout: read(&mut out),
                stderr: read(&mut err),
            };
        }
        if start.elapsed() > Duration::from_secs(secs) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("omnipack {args:?} still running after {secs}s (blocked?)");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn mkfifo(p: &Path) {
    assert!(Command::new("mkfifo").arg(p).status().unwrap().success());
}

fn file_under(dir: &Path, suffix: &str) -> PathBuf {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().ends_with(suffix) {
                return p;
            }
        }
    }
    panic!("no {suffix} under {}", dir.display())
}

/// Flips one byte of `p` in place (same size, same inode), then sets its mtime back.
fn flip_byte_keeping_mtime(p: &Path, at: u64) {
    let mtime = fs::metadata(p).unwrap().modified().unwrap();
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(p)
        .unwrap();
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(at)).unwrap();
    std::io::Read::read_exact(&mut f, &mut b).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&[b[0] ^ 0x5a]).unwrap();
    f.set_modified(mtime).unwrap();
    drop(f);
    assert_eq!(fs::metadata(p).unwrap().modified().unwrap(), mtime);
}

#[test]
fn cache_pruning_never_follows_a_planted_link() {
    let p = project(GOOD, "[]");
    let out = p.path().join("OUT");
    assert!(build(p.path(), &out, &[]).status.success());
    let v = p.path().join("V");
    fs::create_dir_all(v.join("keep")).unwrap();
    let select = out.join(".omnipack/cache/select");
    fs::remove_dir_all(&select).unwrap();
    symlink("../../../V", &select).unwrap();
    let o = build(p.path(), &out, &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        v.join("keep").is_dir(),
        "the build deleted outside its output folder"
    );
    // The same with the whole private folder replaced by a link.
    let private = out.join(".omnipack");
    fs::rename(&private, p.path().join("moved")).unwrap();
    symlink(&v, &private).unwrap();
    let o = build(p.path(), &out, &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(v.join("keep").is_dir());
    assert_eq!(
        fs::read_dir(&v).unwrap().count(),
        1,
        "wrote into the link's target"
    );
}

#[test]
fn lock_and_log_links_are_never_followed() {
    let p = project(GOOD, "[]");
    let out = p.path().join("OUT");
    assert!(build(p.path(), &out, &[]).status.success());
    let victim = p.path().join("victim.txt");
    fs::write(&victim, "precious").unwrap();
    // The log of the exporter: a link is replaced by omnipack's own file.
    let logs = out.join(".omnipack/logs");
    let log = fs::read_dir(&logs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("tok"))
        .expect("the exporter's log");
    fs::remove_file(&log).unwrap();
    symlink(&victim, &log).unwrap();
    let o = build(p.path(), &out, &["--no-cache"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
    // The lock: refused, naming it, and the file it points to is untouched.
    let lock = out.join(".omnipack/lock");
    fs::remove_file(&lock).unwrap();
    symlink(&victim, &lock).unwrap();
    let o = build(p.path(), &out, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("lock"), "{}", text(&o));
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
}

#[test]
fn a_cache_file_changed_in_place_with_its_mtime_kept_is_never_shipped() {
    let p = project(GOOD, "[]");
    let out = p.path().join("OUT");
    assert!(build(p.path(), &out, &[]).status.success());
    let good = tree(&out);
    let w = file_under(&out.join(".omnipack/cache/quantize"), "weights.safetensors");
    let len = fs::metadata(&w).unwrap().len();
    flip_byte_keeping_mtime(&w, len - 3);
    // An unchanged rebuild: the entry is proven bad (its ctime moved) and rebuilt.
    let o = build(p.path(), &out, &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(good == tree(&out), "bad bytes shipped");
    assert!(omnipack(&["verify", s(&out)]).status.success());
    // A shipped file (a hard link of the cache) changed the same way: repaired too, and
    // `--no-cache` replaces entries rather than keeping a bad one.
    let shipped = file_under(&out.join("asset-packs"), "weights.safetensors");
    flip_byte_keeping_mtime(&shipped, len - 3);
    let o = build(p.path(), &out, &["--no-cache"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(good == tree(&out), "bad bytes shipped after --no-cache");
    let o = build(p.path(), &out, &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(good == tree(&out));
}

#[test]
fn an_input_edited_in_place_with_size_and_mtime_kept_is_hashed_again() {
    let p = project(GOOD, "[]");
    let out = p.path().join("OUT");
    assert!(build(p.path(), &out, &[]).status.success());
    let summary = || fs::read_to_string(out.join("mobile_packager_summary.json")).unwrap();
    let before = summary();
    let model = p.path().join("model.safetensors");
    let len = fs::metadata(&model).unwrap().len();
    flip_byte_keeping_mtime(&model, len - 5);
    let o = build(p.path(), &out, &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert_ne!(before, summary(), "the summary records the old sha256");
}

#[test]
fn special_files_are_refused_at_once() {
    let p = project(GOOD, "[]");
    let out = p.path().join("OUT");
    assert!(build(p.path(), &out, &[]).status.success());
    let summary = out.join("mobile_packager_summary.json");
    let saved = fs::read(&summary).unwrap();
    // Summary a link to /dev/zero, then a FIFO.
    fs::remove_file(&summary).unwrap();
    symlink("/dev/zero", &summary).unwrap();
    let o = omnipack_within(&["verify", s(&out)], 20);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    fs::remove_file(&summary).unwrap();
    mkfifo(&summary);
    let o = omnipack_within(&["verify", s(&out)], 20);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let o = omnipack_within(&["inspect", s(&out)], 20);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    fs::remove_file(&summary).unwrap();
    fs::write(&summary, &saved).unwrap();
    // A pack's Manifest.json a FIFO.
    let manifest = file_under(&out.join("asset-packs"), "Manifest.json");
    fs::remove_file(&manifest).unwrap();
    mkfifo(&manifest);
    let o = omnipack_within(&["verify", s(&out)], 20);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    // inspect and quantize of a FIFO.
    let fifo = p.path().join("w.safetensors");
    mkfifo(&fifo);
    let o = omnipack_within(&["inspect", s(&fifo)], 20);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let q = p.path().join("q.safetensors");
    let o = omnipack_within(&["quantize", s(&fifo), "-o", s(&q), "--format", "int8"], 20);
    assert_ne!(o.status.code(), Some(0), "{}", text(&o));
    assert_ne!(o.status.code(), Some(101), "{}", text(&o));
    // `extends:` a FIFO, and `extends: /dev/zero`.
    for target in [s(&fifo), "/dev/zero"] {
        let m = p.path().join("e.yaml");
        fs::write(&m, format!("omnipack: 1\nextends: {target}\n")).unwrap();
        let o = omnipack_within(&["validate", s(&m)], 20);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    }
    // An exporter input that is /dev/zero.
    let z = project(GOOD, "[zero]");
    symlink("/dev/zero", z.path().join("zero")).unwrap();
    let m = z.path().join("omnipack.yaml");
    let zout = z.path().join("OUT");
    let o = omnipack_within(&["build", s(&m), "--out", s(&zout)], 60);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("not a regular file"), "{}", text(&o));
}

#[test]
fn quantize_never_replaces_a_special_file() {
    let d = tempfile::tempdir().unwrap();
    let input = repo().join("examples/omnicoder-tiny/model.safetensors");
    let fifo = d.path().join("out.safetensors");
    mkfifo(&fifo);
    let o = omnipack_within(
        &["quantize", s(&input), "-o", s(&fifo), "--format", "int8"],
        60,
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("a FIFO"), "{}", text(&o));
    use std::os::unix::fs::FileTypeExt;
    assert!(fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
}

#[test]
fn extends_never_prints_a_file_that_is_not_a_manifest() {
    let d = tempfile::tempdir().unwrap();
    let secret = d.path().join("id_ed25519");
    fs::write(
        &secret,
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA: [secret\n-----END OPENSSH PRIVATE KEY-----\n",
    )
    .unwrap();
    let passwd = d.path().join("passwd");
    fs::write(
        &passwd,
        "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1::/usr/sbin\n",
    )
    .unwrap();
    for (target, secret_text) in [(&secret, "b3BlbnNzaC1rZXkt"), (&passwd, "root:x:0:0")] {
        let m = d.path().join("m.yaml");
        fs::write(&m, format!("omnipack: 1\nextends: {}\n", target.display())).unwrap();
        let o = omnipack(&["validate", s(&m)]);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert!(text(&o).contains("is not a manifest"), "{}", text(&o));
        assert!(!text(&o).contains(secret_text), "{}", text(&o));
        let o = omnipack(&["validate", "--format", "json", s(&m)]);
        assert!(!text(&o).contains(secret_text), "{}", text(&o));
    }
}

#[test]
fn exporter_processes_that_leave_the_group_are_killed_and_outputs_are_copies() {
    // A `setsid` grandchild holding the output open appends to it after the exporter exits.
    let script = r#"printf '{"v":1}\n' > "$1/tok.json"; setsid sh -c 'exec 3>>"$0"; sleep 1; echo evil >&3' "$1/tok.json" & sleep 0.2"#;
    let p = project(script, "[]");
    let out = p.path().join("OUT");
    let o = build(p.path(), &out, &[]);
    assert!(o.status.success(), "{}", text(&o));
    std::thread::sleep(Duration::from_millis(1800));
    let tok = file_under(&out.join("asset-packs"), "tok.json");
    assert_eq!(fs::read_to_string(&tok).unwrap(), "{\"v\":1}\n");
    let o = omnipack(&["verify", s(&out)]);
    assert!(o.status.success(), "{}", text(&o));
    // The shipped file shares no inode with the exporter's cache entry.
    use std::os::unix::fs::MetadataExt;
    let cached = file_under(&out.join(".omnipack/cache/export"), "tok.json");
    assert_ne!(
        fs::metadata(&cached).unwrap().ino(),
        fs::metadata(&tok).unwrap().ino()
    );
}

#[test]
fn exporter_logs_are_capped() {
    let script = r#"head -c 12000000 /dev/zero | tr '\0' x; printf '{"v":1}\n' > "$1/tok.json""#;
    let p = project(script, "[]");
    let out = p.path().join("OUT");
    let o = build(p.path(), &out, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let log = fs::read_dir(out.join(".omnipack/logs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("tok"))
        .unwrap();
    let len = fs::metadata(&log).unwrap().len();
    assert!(len <= (8 << 20) + 200, "{len}");
    assert!(fs::read_to_string(&log).unwrap().ends_with("dropped]\n"));
}

#[test]
fn verify_refuses_symlinks() {
    let p = project(GOOD, "[]");
    let out = p.path().join("OUT");
    assert!(build(p.path(), &out, &[]).status.success());
    let copy = p.path().join("copy");
    fs::create_dir_all(&copy).unwrap();
    // A pack file, then the `bundles/` folder, pointing outside (with the same bytes).
    let tok = file_under(&out.join("asset-packs"), "tok.json");
    fs::copy(&tok, copy.join("tok.json")).unwrap();
    fs::remove_file(&tok).unwrap();
    symlink(copy.join("tok.json"), &tok).unwrap();
    let o = omnipack(&["verify", s(&out)]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("symlink"), "{}", text(&o));
    fs::remove_file(&tok).unwrap();
    fs::copy(copy.join("tok.json"), &tok).unwrap();
    assert!(omnipack(&["verify", s(&out)]).status.success());
    let moved = p.path().join("bundles-elsewhere");
    fs::rename(out.join("bundles"), &moved).unwrap();
    symlink(&moved, out.join("bundles")).unwrap();
    let o = omnipack(&["verify", s(&out)]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("symlink"), "{}", text(&o));
}

/// A safetensors file of F32 tensors, each given as (name, shape) with zero-filled data.
fn write_safetensors(path: &Path, tensors: &[(String, Vec<u64>)]) {
    let mut header = serde_json::Map::new();
    let mut at = 0u64;
    for (name, shape) in tensors {
        let n: u64 = shape.iter().product::<u64>() * 4;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [at, at + n]}),
        );
        at += n;
    }
    let json = serde_json::to_vec(&header).unwrap();
    let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&json);
    bytes.resize(bytes.len() + at as usize, 0);
    fs::write(path, bytes).unwrap();
}

#[test]
fn inspect_never_panics_and_escapes_names() {
    let d = tempfile::tempdir().unwrap();
    let long = d.path().join("long.safetensors");
    write_safetensors(&long, &[("n".repeat(65_536), vec![1])]);
    let o = omnipack(&["inspect", s(&long)]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let dims = d.path().join("dims.safetensors");
    write_safetensors(&dims, &[("w".into(), vec![1; 22_000])]);
    let o = omnipack(&["inspect", s(&dims)]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let ansi = d.path().join("ansi.safetensors");
    write_safetensors(&ansi, &[("a\u{1b}[2J\u{1b}[31mred".into(), vec![1])]);
    let o = omnipack(&["inspect", s(&ansi)]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!stdout(&o).contains('\u{1b}'), "{}", stdout(&o));
    assert!(stdout(&o).contains("a\\u{1b}[2J"), "{}", stdout(&o));
    // 0 rows and 2^61 columns: sizes checked, not wrapped.
    let wide = d.path().join("wide.safetensors");
    write_safetensors(&wide, &[("w.weight".into(), vec![0, 1 << 61])]);
    let q = d.path().join("q.safetensors");
    let o = omnipack(&["quantize", s(&wide), "-o", s(&q), "--format", "int4"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
}

#[test]
fn a_closed_stderr_or_stdout_ends_with_1_not_101() {
    // Pipes whose read end is closed before the child starts: its first write fails (EPIPE)
    // whatever the timing, however little it prints.
    let closed_pipe = || {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        Stdio::from(writer)
    };
    let bad = repo().join("manifests/errors/bad-size.yaml");
    let status = Command::new(bin())
        .args(["plan", s(&bad)])
        .stdout(Stdio::null())
        .stderr(closed_pipe())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(1));
    let status = Command::new(bin())
        .args(["schema"])
        .current_dir(repo())
        .stdout(closed_pipe())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(1));
}

/// A stored zip whose central directory lists `records` entries of distinct names, all
/// pointing at one local entry of `data`.
fn overlapping_zip(data: &[u8], records: usize) -> Vec<u8> {
    let crc = crc32(data);
    let name = b"00000";
    let mut z = Vec::new();
    let local = |z: &mut Vec<u8>| {
        z.extend_from_slice(&0x04034b50u32.to_le_bytes());
        z.extend_from_slice(&[20, 0, 0, 0, 0, 0, 0, 0, 0x21, 0]);
        z.extend_from_slice(&crc.to_le_bytes());
        z.extend_from_slice(&(data.len() as u32).to_le_bytes());
        z.extend_from_slice(&(data.len() as u32).to_le_bytes());
        z.extend_from_slice(&(name.len() as u16).to_le_bytes());
        z.extend_from_slice(&0u16.to_le_bytes());
        z.extend_from_slice(name);
    };
    local(&mut z);
    z.extend_from_slice(data);
    let cd_start = z.len();
    for i in 0..records {
        let name = format!("{i:05}");
        let name = name.as_bytes();
        z.extend_from_slice(&0x02014b50u32.to_le_bytes());
        z.extend_from_slice(&[20, 3, 20, 0, 0, 0, 0, 0, 0, 0, 0x21, 0]);
        z.extend_from_slice(&crc.to_le_bytes());
        z.extend_from_slice(&(data.len() as u32).to_le_bytes());
        z.extend_from_slice(&(data.len() as u32).to_le_bytes());
        z.extend_from_slice(&(name.len() as u16).to_le_bytes());
        z.extend_from_slice(&[0; 8]);
        z.extend_from_slice(&0u32.to_le_bytes());
        z.extend_from_slice(&0u32.to_le_bytes());
        z.extend_from_slice(name);
    }
    let cd_len = z.len() - cd_start;
    z.extend_from_slice(&0x06054b50u32.to_le_bytes());
    z.extend_from_slice(&[0; 4]);
    z.extend_from_slice(&(records as u16).to_le_bytes());
    z.extend_from_slice(&(records as u16).to_le_bytes());
    z.extend_from_slice(&(cd_len as u32).to_le_bytes());
    z.extend_from_slice(&(cd_start as u32).to_le_bytes());
    z.extend_from_slice(&0u16.to_le_bytes());
    z
}

fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

#[test]
fn overlapping_zip_entries_and_shared_bundle_files_are_bounded_work() {
    let d = tempfile::tempdir().unwrap();
    let zip = d.path().join("bomb.zip");
    fs::write(&zip, overlapping_zip(&[7u8; 4096], 1000)).unwrap();
    let o = omnipack_within(&["inspect", s(&zip)], 20);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("overlap"), "{}", text(&o));
    // A summary listing many bundles that share one zip: each file is hashed once.
    let p = project(GOOD, "[]");
    let out = p.path().join("OUT");
    assert!(build(p.path(), &out, &[]).status.success());
    let path = out.join("mobile_packager_summary.json");
    let mut v: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    let first = v["bundles"][0].clone();
    let bundles = v["bundles"].as_array_mut().unwrap();
    for i in 0..5000 {
        let mut b = first.clone();
        b["id"] = serde_json::json!(format!("copy-{i}"));
        bundles.push(b);
    }
    fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
    let o = omnipack_within(&["verify", s(&out)], 60);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("the file of another bundle"),
        "{}",
        text(&o)
    );
}

#[test]
fn inspect_of_an_output_folder_describes_its_summary() {
    let p = project(GOOD, "[]");
    let out = p.path().join("OUT");
    assert!(build(p.path(), &out, &[]).status.success());
    let o = omnipack(&["inspect", s(&out)]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(stdout(&o).contains("summary v"), "{}", stdout(&o));
}

#[test]
fn verify_checks_the_form_of_inputs_and_manifest_sha256() {
    let p = project(GOOD, "[]");
    let out = p.path().join("OUT");
    assert!(build(p.path(), &out, &[]).status.success());
    let path = out.join("mobile_packager_summary.json");
    let saved = fs::read(&path).unwrap();
    for (field, value) in [
        ("manifest_sha256", serde_json::json!("not-a-digest")),
        (
            "inputs",
            serde_json::json!([{"path": "/etc/passwd", "sha256": "00"}]),
        ),
    ] {
        let mut v: serde_json::Value = serde_json::from_slice(&saved).unwrap();
        v[field] = value;
        fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
        let o = omnipack(&["verify", s(&out)]);
        assert_eq!(o.status.code(), Some(1), "{field}: {}", text(&o));
    }
}

#[test]
fn inputs_dot_skips_every_omnipack_output_folder() {
    let p = project(GOOD, r#"["."]"#);
    // A sibling output folder from another build (another --out) next to the manifest.
    let sibling = p.path().join("old-dist");
    fs::create_dir_all(sibling.join(".omnipack")).unwrap();
    fs::write(sibling.join("mobile_packager_summary.json"), "{}").unwrap();
    let out = p.path().join("OUT");
    let o = build(p.path(), &out, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let summary = fs::read_to_string(out.join("mobile_packager_summary.json")).unwrap();
    assert!(!summary.contains("old-dist"), "{summary}");
}
