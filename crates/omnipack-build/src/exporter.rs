//! Running an external exporter: argv without a shell, placeholders filled, its own stage
//! folder, a timeout that kills its whole process group, output and error kept in a log, and
//! declared outputs checked to exist and to stay inside the folder.

use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use omnipack_manifest::lexical_path::slash;

use omnipack_fs::is_normal_relative;

/// Why an external exporter failed.
#[derive(Debug, thiserror::Error)]
pub enum ExporterError {
    /// The command could not be started.
    #[error("could not start `{program}` (in {cwd}): {source}")]
    Spawn {
        program: String,
        cwd: String,
        source: io::Error,
    },
    /// Non-zero exit.
    #[error("exporter exited with {status}; its log ({log}):\n{tail}")]
    Failed {
        status: String,
        log: String,
        tail: String,
    },
    /// Timeout.
    #[error("exporter did not finish within {timeout}s and was killed; its log ({log}):\n{tail}")]
    Timeout {
        timeout: u64,
        log: String,
        tail: String,
    },
    /// A declared output is missing.
    #[error(
        "declared output `{output}` does not exist after the exporter ran (expected under {dir})"
    )]
    MissingOutput { output: String, dir: String },
    /// A declared output escapes the stage folder.
    #[error(
        "declared output `{0}` is not a relative path in normal form (`a/b`) inside the exporter's folder"
    )]
    UnsafeOutput(String),
    /// A symlink pointing out of the stage folder.
    #[error(
        "exporter output `{path}` is a symlink to `{target}` (outside the exporter's folder, or a folder): refused"
    )]
    SymlinkOut { path: String, target: String },
    /// A FIFO, socket or device among the outputs (reading it could block forever).
    #[error(
        "exporter output `{0}` is not a regular file or folder (a FIFO, socket or device): refused"
    )]
    NotAFile(String),
    /// A file name that is not UTF-8 (zip entry names and JSON paths must be).
    #[error("exporter output `{0}` has a file name that is not valid UTF-8: refused")]
    NonUtf8Name(String),
    /// Something written next to the stage folder.
    #[error("exporter wrote outside its folder: `{0}` (write only under {{out}})")]
    WroteOutside(String),
    /// Other I/O.
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    /// No command.
    #[error("exporter command is empty")]
    Empty,
}

/// Result of a successful exporter run.
#[derive(Debug)]
pub struct ExportRun {
    /// Files produced (relative to the out folder, `/`-separated), sorted, from the declared
    /// outputs (folders expanded).
    pub files: Vec<String>,
}

/// Runs `argv` in `cwd` with `{out}` = `stage/out`. `stage` must be an empty, dedicated folder.
pub fn run_exporter(
    argv: &[String],
    cwd: &Path,
    stage: &Path,
    outputs: &[String],
    timeout: Duration,
    log_path: &Path,
) -> Result<ExportRun, ExporterError> {
    let io_err = |p: &Path| {
        let path = p.display().to_string();
        move |source| ExporterError::Io { path, source }
    };
    let (program, args) = argv.split_first().ok_or(ExporterError::Empty)?;
    for o in outputs {
        if !is_normal_relative(o) {
            return Err(ExporterError::UnsafeOutput(o.clone()));
        }
    }
    let out_dir = stage.join("out");
    fs::create_dir_all(&out_dir).map_err(io_err(&out_dir))?;
    if let Some(p) = log_path.parent() {
        fs::create_dir_all(p).map_err(io_err(p))?;
    }
    // The log is omnipack's own file: a link planted in its place is removed, never followed.
    if fs::symlink_metadata(log_path).is_ok_and(|m| m.file_type().is_symlink()) {
        fs::remove_file(log_path).map_err(io_err(log_path))?;
    }
    let log = omnipack_fs::create_regular_nofollow(log_path, true).map_err(io_err(log_path))?;
    let token = next_token();
    let mut cmd = Command::new(program);
    cmd.args(args)
        .current_dir(cwd)
        .env(TOKEN_VAR, &token)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    cmd.process_group(0);
    // SAFETY: setsid, prctl and close_range are async-signal-safe. setsid puts the exporter in
    // a session and process group of its own (its pid is both ids), away from omnipack's
    // terminal and signals; PR_SET_PDEATHSIG asks the kernel to kill the exporter when the
    // build dies (for example by SIGKILL); close_range closes every descriptor above stdio, so
    // the exporter inherits nothing else from omnipack (Linux only).
    #[cfg(any(target_os = "linux", target_os = "android"))]
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|source| ExporterError::Spawn {
        program: program.clone(),
        cwd: cwd.display().to_string(),
        source,
    })?;
    let pid = child.id() as i32;
    // From here on, every exit path kills every process the exporter started (its group, and
    // any that left the group with `setsid` or a double fork, found by their token).
    let _reaper = Reaper { pgid: pid, token };
    let capture = LogCapture::start(&mut child, log);
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) => {}
            Err(e) => return Err(io_err(log_path)(e)),
        }
        if start.elapsed() >= timeout {
            kill_all(pid, &_reaper.token);
            let _ = child.wait();
            capture.finish();
            return Err(ExporterError::Timeout {
                timeout: timeout.as_secs(),
                log: log_path.display().to_string(),
                tail: log_tail(log_path),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // Children left behind must not outlive the stage, on success too.
    kill_all(pid, &_reaper.token);
    capture.finish();
    if !status.success() {
        return Err(ExporterError::Failed {
            status: status.to_string(),
            log: log_path.display().to_string(),
            tail: log_tail(log_path),
        });
    }
    // Nothing may appear next to `out` in the stage folder.
    let mut extra: Vec<String> = fs::read_dir(stage)
        .map_err(io_err(stage))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "out")
        .collect();
    extra.sort();
    if let Some(x) = extra.first() {
        return Err(ExporterError::WroteOutside(
            stage.join(x).display().to_string(),
        ));
    }
    let files = collect_outputs(&out_dir, outputs)?;
    Ok(ExportRun { files })
}

/// Checks declared outputs under `out_dir` (exist, no symlink leaves the folder) and lists
/// their files.
pub fn collect_outputs(out_dir: &Path, outputs: &[String]) -> Result<Vec<String>, ExporterError> {
    let root = fs::canonicalize(out_dir).map_err(|source| ExporterError::Io {
        path: out_dir.display().to_string(),
        source,
    })?;
    let mut files = Vec::new();
    let mut links = Vec::new();
    for o in outputs {
        if !is_normal_relative(o) {
            return Err(ExporterError::UnsafeOutput(o.clone()));
        }
        let p = out_dir.join(o);
        if fs::symlink_metadata(&p).is_err() {
            return Err(ExporterError::MissingOutput {
                output: o.clone(),
                dir: out_dir.display().to_string(),
            });
        }
        check_inside(&root, &p, o)?;
        let meta = fs::metadata(&p).map_err(|source| ExporterError::Io {
            path: p.display().to_string(),
            source,
        })?;
        if meta.is_dir() {
            let mut stack = vec![p.clone()];
            while let Some(d) = stack.pop() {
                let rd = fs::read_dir(&d).map_err(|source| ExporterError::Io {
                    path: d.display().to_string(),
                    source,
                })?;
                for e in rd {
                    let e = e.map_err(|source| ExporterError::Io {
                        path: d.display().to_string(),
                        source,
                    })?;
                    let ep = e.path();
                    let rel = slash(ep.strip_prefix(out_dir).unwrap_or(&ep));
                    if e.file_name().to_str().is_none() {
                        return Err(ExporterError::NonUtf8Name(rel));
                    }
                    check_inside(&root, &ep, &rel)?;
                    let m = fs::metadata(&ep).map_err(|source| ExporterError::Io {
                        path: ep.display().to_string(),
                        source,
                    })?;
                    let link = e.file_type().map(|t| t.is_symlink()).unwrap_or(false);
                    if m.is_dir() && link {
                        // A linked folder could loop or duplicate files: refuse it.
                        return Err(ExporterError::SymlinkOut {
                            path: rel,
                            target: fs::read_link(&ep)
                                .map(|t| t.display().to_string())
                                .unwrap_or_default(),
                        });
                    } else if m.is_dir() {
                        stack.push(ep);
                    } else {
                        regular_file(&ep, &m, &rel, &mut links)?;
                        files.push(rel);
                    }
                }
            }
        } else {
            regular_file(&p, &meta, o, &mut links)?;
            files.push(slash(Path::new(o)));
        }
    }
    for l in &links {
        materialize(l)?;
    }
    files.sort();
    files.dedup();
    Ok(files)
}

/// Checks that an output file (`meta` follows symlinks) is a regular file; a symlink (to a
/// file inside the folder, as checked before) is noted in `links`.
fn regular_file(
    p: &Path,
    meta: &fs::Metadata,
    rel: &str,
    links: &mut Vec<PathBuf>,
) -> Result<(), ExporterError> {
    if !meta.is_file() {
        return Err(ExporterError::NotAFile(rel.to_string()));
    }
    let link = fs::symlink_metadata(p).map_err(|source| ExporterError::Io {
        path: p.display().to_string(),
        source,
    })?;
    if link.file_type().is_symlink() {
        links.push(p.to_path_buf());
    }
    Ok(())
}

/// Replaces a symlink by a copy of its target: the stage folder is cached and packaged file by
/// file, where a relative link would dangle.
fn materialize(p: &Path) -> Result<(), ExporterError> {
    let io = |source| ExporterError::Io {
        path: p.display().to_string(),
        source,
    };
    let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = p.with_file_name(format!(".{}.omnipack-copy", name.unwrap_or_default()));
    fs::copy(p, &tmp).map_err(io)?;
    fs::rename(&tmp, p).map_err(io)
}

fn check_inside(root: &Path, p: &Path, rel: &str) -> Result<(), ExporterError> {
    let is_link = fs::symlink_metadata(p)
        .map(|m| m.file_type().is_symlink())
        .unwrap_or(false);
    match fs::canonicalize(p) {
        Ok(real) if real.starts_with(root) => Ok(()),
        Ok(real) => Err(ExporterError::SymlinkOut {
            path: rel.to_string(),
            target: real.display().to_string(),
        }),
        Err(_) if is_link => Err(ExporterError::SymlinkOut {
            path: rel.to_string(),
            target: fs::read_link(p)
                .map(|t| t.display().to_string())
                .unwrap_or_default(),
        }),
        Err(source) => Err(ExporterError::Io {
            path: p.display().to_string(),
            source,
        }),
    }
}

/// Most bytes of an exporter's standard output and error kept in its log (the rest is read and
/// dropped, so the exporter never blocks on a full pipe): 8 MiB.
pub const MAX_LOG_BYTES: u64 = 8 << 20;

/// The environment variable that marks every process an exporter starts (inherited through
/// `fork`, `setsid` and `exec`), so that omnipack finds and kills them when the exporter ends.
pub const TOKEN_VAR: &str = "OMNIPACK_EXPORTER_RUN";

fn next_token() -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}-{n}", std::process::id())
}

/// Kills every process of an exporter run when dropped (every exit path, panics included).
struct Reaper {
    pgid: i32,
    token: String,
}

impl Drop for Reaper {
    fn drop(&mut self) {
        kill_all(self.pgid, &self.token);
    }
}

/// Kills the exporter's process group, then every process carrying its token (those that left
/// the group with `setsid`), until none is left (at most about a second of rounds).
fn kill_all(pgid: i32, token: &str) {
    // SAFETY: killpg on the process group we created for the exporter; ESRCH when it is gone.
    unsafe {
        libc::killpg(pgid, libc::SIGKILL);
    }
    let needle = format!("{TOKEN_VAR}={token}");
    for _ in 0..200 {
        let found = processes_with(&needle);
        if found.is_empty() {
            return;
        }
        for pid in found {
            // SAFETY: kill of a process that carries this run's token.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Live processes (not zombies) whose initial environment holds `needle` (`NAME=value`).
fn processes_with(needle: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for e in rd.filter_map(|e| e.ok()) {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(mut f) = fs::File::open(e.path().join("environ")) else {
            continue;
        };
        let mut env = Vec::new();
        if (&mut f).take(1 << 20).read_to_end(&mut env).is_err() {
            continue;
        }
        if env.split(|&b| b == 0).any(|kv| kv == needle.as_bytes()) {
            found.push(pid);
        }
    }
    found
}

/// Copies an exporter's standard output and error into its log, up to [`MAX_LOG_BYTES`].
struct LogCapture {
    done: std::sync::mpsc::Receiver<()>,
    readers: usize,
}

impl LogCapture {
    fn start(child: &mut std::process::Child, log: fs::File) -> LogCapture {
        use std::sync::{Arc, Mutex};
        let log = Arc::new(Mutex::new((log, 0u64)));
        let (tx, done) = std::sync::mpsc::channel();
        let mut readers = 0;
        let pipes: Vec<Box<dyn Read + Send>> = [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        .collect();
        for mut pipe in pipes {
            let (log, tx) = (log.clone(), tx.clone());
            readers += 1;
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 << 10];
                loop {
                    let n = match pipe.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(_) => break,
                    };
                    if let Ok(mut g) = log.lock() {
                        let (file, written) = &mut *g;
                        let room = MAX_LOG_BYTES.saturating_sub(*written);
                        let take = (n as u64).min(room) as usize;
                        if take > 0 && file.write_all(&buf[..take]).is_ok() {
                            *written += take as u64;
                            if *written == MAX_LOG_BYTES {
                                let _ = writeln!(
                                    file,
                                    "\n[omnipack: log cut at {MAX_LOG_BYTES} bytes; the rest was dropped]"
                                );
                            }
                        }
                    }
                }
                let _ = tx.send(());
            });
        }
        LogCapture { done, readers }
    }

    /// Waits (briefly: every writer was killed) until the log holds everything kept.
    fn finish(self) {
        for _ in 0..self.readers {
            if self.done.recv_timeout(Duration::from_secs(2)).is_err() {
                return;
            }
        }
    }
}

/// The last 40 lines (at most 8 KiB) of a log.
pub fn log_tail(path: &Path) -> String {
    let mut f = match omnipack_fs::open_regular_nofollow(path) {
        Ok(f) => f,
        Err(_) => return String::new(),
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(8192);
    let _ = f.seek(SeekFrom::Start(start));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(40);
    let tail = lines[from..]
        .iter()
        .map(|l| format!("  | {l}"))
        .collect::<Vec<_>>()
        .join("\n");
    if tail.is_empty() {
        "  | (empty)".into()
    } else {
        tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use omnipack_manifest::lexical_path::absolute;

    fn sh(script: &str) -> Vec<String> {
        vec!["sh".into(), "-c".into(), script.into()]
    }

    #[test]
    fn the_exporter_runs_in_a_session_and_group_of_its_own() {
        let d = tempfile::tempdir().unwrap();
        let stage = d.path().join("st");
        let out = absolute(&stage.join("out"));
        // /proc/self/stat: pid (comm) state ppid pgrp session ...
        let argv = sh(&format!(
            "read -r pid comm state ppid pgrp sid rest < /proc/self/stat; echo \"$pid $pgrp $sid\" > {}/ids",
            out.display()
        ));
        run_exporter(
            &argv,
            d.path(),
            &stage,
            &["ids".into()],
            Duration::from_secs(10),
            &d.path().join("l.log"),
        )
        .unwrap();
        let ids: Vec<i32> = fs::read_to_string(out.join("ids"))
            .unwrap()
            .split_whitespace()
            .map(|x| x.parse().unwrap())
            .collect();
        assert_eq!(ids[0], ids[1], "process group");
        assert_eq!(ids[0], ids[2], "session");
        // SAFETY: getsid(0) only reads the calling process's session id.
        assert_ne!(ids[2], unsafe { libc::getsid(0) });
    }

    #[test]
    fn runs_and_collects() {
        let d = tempfile::tempdir().unwrap();
        let stage = d.path().join("st");
        let out = absolute(&stage.join("out"));
        let argv = sh(&format!(
            "mkdir -p {0}/pkg && echo hi > {0}/pkg/a && echo x > {0}/b && echo log",
            out.display()
        ));
        let r = run_exporter(
            &argv,
            d.path(),
            &stage,
            &["pkg".into(), "b".into()],
            Duration::from_secs(10),
            &d.path().join("l.log"),
        )
        .unwrap();
        assert_eq!(r.files, ["b", "pkg/a"]);
    }

    #[test]
    fn fifo_output_is_refused_and_inner_links_become_files() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("l.log");
        // Reading a FIFO to hash it would block the build forever.
        let s1 = absolute(&d.path().join("s1"));
        let e = run_exporter(
            &sh(&format!("mkfifo {}/out/x", s1.display())),
            d.path(),
            &s1,
            &["x".into()],
            Duration::from_secs(10),
            &log,
        )
        .unwrap_err();
        assert!(matches!(e, ExporterError::NotAFile(_)), "{e}");
        // A relative link to a file inside the folder is packaged as that file's bytes.
        let s2 = absolute(&d.path().join("s2"));
        let r = run_exporter(
            &sh(&format!(
                "mkdir {0}/out/p && echo a > {0}/out/p/real && ln -s real {0}/out/p/x && ln -s p/real {0}/out/y",
                s2.display()
            )),
            d.path(),
            &s2,
            &["p".into(), "y".into()],
            Duration::from_secs(10),
            &log,
        )
        .unwrap();
        assert_eq!(r.files, ["p/real", "p/x", "y"]);
        // A name that is not UTF-8 cannot be a zip entry or a JSON path.
        let s3 = absolute(&d.path().join("s3"));
        let e = run_exporter(
            &sh(&format!(
                "mkdir {0}/out/p && echo a > \"{0}/out/p/$(printf '\\377')x\"",
                s3.display()
            )),
            d.path(),
            &s3,
            &["p".into()],
            Duration::from_secs(10),
            &log,
        )
        .unwrap_err();
        assert!(matches!(e, ExporterError::NonUtf8Name(_)), "{e}");
        for f in &r.files {
            let p = s2.join("out").join(f);
            assert!(!fs::symlink_metadata(&p).unwrap().is_symlink(), "{f}");
            assert_eq!(fs::read(&p).unwrap(), b"a\n", "{f}");
        }
    }

    #[test]
    fn failure_timeout_outside_symlink() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("l.log");
        let e = run_exporter(
            &sh("echo boom >&2; exit 3"),
            d.path(),
            &d.path().join("s1"),
            &[],
            Duration::from_secs(10),
            &log,
        )
        .unwrap_err();
        assert!(e.to_string().contains("boom"), "{e}");
        let t0 = Instant::now();
        let e = run_exporter(
            &sh("sleep 30 & sleep 30"),
            d.path(),
            &d.path().join("s2"),
            &[],
            Duration::from_millis(300),
            &log,
        )
        .unwrap_err();
        assert!(matches!(e, ExporterError::Timeout { .. }), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(10));
        let s3 = absolute(&d.path().join("s3"));
        let e = run_exporter(
            &sh(&format!("echo x > {}/evil", s3.display())),
            d.path(),
            &s3,
            &[],
            Duration::from_secs(10),
            &log,
        )
        .unwrap_err();
        assert!(matches!(e, ExporterError::WroteOutside(_)), "{e}");
        let s4 = absolute(&d.path().join("s4"));
        let e = run_exporter(
            &sh(&format!("ln -s /etc/passwd {}/out/p", s4.display())),
            d.path(),
            &s4,
            &["p".into()],
            Duration::from_secs(10),
            &log,
        )
        .unwrap_err();
        assert!(matches!(e, ExporterError::SymlinkOut { .. }), "{e}");
        let s7 = absolute(&d.path().join("s7"));
        let e = run_exporter(
            &sh(&format!(
                "mkdir -p {0}/out/pkg && ln -s .. {0}/out/pkg/loop",
                s7.display()
            )),
            d.path(),
            &s7,
            &["pkg".into()],
            Duration::from_secs(10),
            &log,
        )
        .unwrap_err();
        assert!(matches!(e, ExporterError::SymlinkOut { .. }), "{e}");
        let e = run_exporter(
            &sh("true"),
            d.path(),
            &d.path().join("s5"),
            &["missing".into()],
            Duration::from_secs(10),
            &log,
        )
        .unwrap_err();
        assert!(matches!(e, ExporterError::MissingOutput { .. }), "{e}");
        let e = run_exporter(
            &sh("true"),
            d.path(),
            &d.path().join("s6"),
            &["../x".into()],
            Duration::from_secs(10),
            &log,
        )
        .unwrap_err();
        assert!(matches!(e, ExporterError::UnsafeOutput(_)), "{e}");
    }
}
