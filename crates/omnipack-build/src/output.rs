//! Output-folder safety: the lock, the staging tree and the swap.
//!
//! Everything omnipack needs besides the deliverables lives in `OUT/.omnipack/`. A build
//! assembles the complete new tree in `OUT/.omnipack/swap/new/`, writes the summary last,
//! then marks the tree complete by writing `OUT/.omnipack/swap/READY`, which records the
//! device and inode of each staged deliverable. Only then are the four deliverables
//! (`bundles/`, `asset-packs/`, `app/`, `mobile_packager_summary.json`) replaced, each by one
//! `renameat2(RENAME_EXCHANGE)` (or, where unsupported, by parking the old one in `swap/old/`
//! and moving the new one in). Until `READY` exists the previous output is untouched; once it
//! exists the swap is rolled forward, by this build or, after a kill, by the next one: a
//! deliverable whose inode is the recorded one is installed. The old tree is deleted only after
//! the swap.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use omnipack_fs::remove_any;

/// The deliverables, in the order they are swapped (the summary last).
pub const DELIVERABLES: [&str; 4] = [
    "bundles",
    "asset-packs",
    APP_DIR,
    omnipack_summary::SUMMARY_FILE,
];

/// The folder of what goes into the app itself: a copy of the summary (a bundle resource) and
/// its Swift `Codable` types.
pub const APP_DIR: &str = "app";

/// Name of the private folder inside the output folder.
pub const PRIVATE_DIR: &str = ".omnipack";

/// Errors of the output folder.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// Another build holds the lock.
    #[error(
        "another omnipack build is using {out}: it holds the lock {lock}{holder}; wait for it to finish or use another --out"
    )]
    Locked {
        out: String,
        lock: String,
        holder: String,
    },
    /// The output path exists and is not a folder.
    #[error(
        "{out}: the output path exists and is not a folder; give --out a folder (it is created when missing)"
    )]
    NotAFolder { out: String },
    /// The folder holds deliverable names but is not an omnipack output folder.
    #[error(
        "{out}: holds {names} but is not an omnipack output folder (no {PRIVATE_DIR}/, no readable summary); a build would replace them: move them away or choose another --out"
    )]
    Foreign { out: String, names: String },
    /// I/O on a named path.
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
}

/// A build replaces `OUT/bundles`, `OUT/asset-packs` and the summary wholesale. When `OUT` was
/// never an omnipack output (no `.omnipack/` folder and no readable summary), such entries are
/// someone else's files: refuse rather than delete them.
pub fn refuse_foreign_output(out: &Path) -> Result<(), OutputError> {
    if out.join(PRIVATE_DIR).is_dir()
        || omnipack_summary::read_summary(&out.join(omnipack_summary::SUMMARY_FILE)).is_ok()
    {
        return Ok(());
    }
    let foreign: Vec<&str> = DELIVERABLES
        .into_iter()
        .filter(|n| fs::symlink_metadata(out.join(n)).is_ok())
        .collect();
    if foreign.is_empty() {
        return Ok(());
    }
    Err(OutputError::Foreign {
        out: out.display().to_string(),
        names: foreign.join(", "),
    })
}

fn io_err(p: &Path) -> impl FnOnce(io::Error) -> OutputError + '_ {
    move |source| OutputError::Io {
        path: p.display().to_string(),
        source,
    }
}

/// How long a lock recorded by this process is waited for (see [`OutputLock::acquire`]).
const OWN_LOCK_WAIT: Duration = Duration::from_secs(5);

/// An exclusive lock on an output folder, released when dropped (or when the process dies).
#[derive(Debug)]
pub struct OutputLock {
    _file: File,
}

impl OutputLock {
    /// Takes the lock `OUT/.omnipack/lock` without waiting for another build.
    pub fn acquire(out: &Path) -> Result<OutputLock, OutputError> {
        if fs::metadata(out).is_ok_and(|m| !m.is_dir()) {
            return Err(OutputError::NotAFolder {
                out: out.display().to_string(),
            });
        }
        let private = out.join(PRIVATE_DIR);
        // `.omnipack` is omnipack's own: a link planted there is removed, never followed.
        omnipack_fs::private_dir(&private).map_err(io_err(&private))?;
        let path = private.join("lock");
        // Never through a link (the pid would overwrite the file it points to).
        let mut file = omnipack_fs::create_regular_nofollow(&path, false).map_err(io_err(&path))?;
        let mut waited = Duration::ZERO;
        loop {
            // SAFETY: flock on a file descriptor we own.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                break;
            }
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(io_err(&path)(err));
            }
            let mut holder = String::new();
            let _ = file
                .seek(SeekFrom::Start(0))
                .and_then(|_| file.read_to_string(&mut holder));
            let holder = holder.trim();
            // Recorded by this very process: a lock it has released can stay held for a moment
            // by a child forked (in another thread) between its fork and its exec, which closes
            // the descriptor. Wait for that, briefly; any other holder is a concurrent build.
            if holder == std::process::id().to_string() && waited < OWN_LOCK_WAIT {
                std::thread::sleep(Duration::from_millis(20));
                waited += Duration::from_millis(20);
                continue;
            }
            return Err(OutputError::Locked {
                out: out.display().to_string(),
                lock: path.display().to_string(),
                holder: if holder.is_empty() {
                    String::new()
                } else {
                    format!(" (pid {holder})")
                },
            });
        }
        file.set_len(0).map_err(io_err(&path))?;
        let _ = write!(file, "{}", std::process::id());
        Ok(OutputLock { _file: file })
    }
}

/// Paths of the swap area.
#[derive(Debug, Clone)]
pub struct SwapArea {
    out: PathBuf,
    root: PathBuf,
}

impl SwapArea {
    /// The swap area of `out`.
    pub fn new(out: &Path) -> SwapArea {
        SwapArea {
            out: out.to_path_buf(),
            root: out.join(PRIVATE_DIR).join("swap"),
        }
    }

    /// Where the new tree is assembled.
    pub fn new_tree(&self) -> PathBuf {
        self.root.join("new")
    }

    fn old_tree(&self) -> PathBuf {
        self.root.join("old")
    }

    fn ready(&self) -> PathBuf {
        self.root.join("READY")
    }

    /// Called under the lock before a build: finishes an interrupted swap whose new tree was
    /// complete, and removes an incomplete one. Returns a note when something was recovered.
    pub fn recover(&self) -> Result<Option<String>, OutputError> {
        if self.ready().exists() {
            self.roll_forward()?;
            return Ok(Some(format!(
                "finished installing the complete output of an interrupted build into {}",
                self.out.display()
            )));
        }
        if self.root.exists() {
            remove_any(&self.root).map_err(io_err(&self.root))?;
            return Ok(Some(
                "removed the incomplete staging tree of an interrupted build".into(),
            ));
        }
        Ok(None)
    }

    /// Prepares an empty staging tree.
    pub fn prepare(&self) -> Result<PathBuf, OutputError> {
        remove_any(&self.root).map_err(io_err(&self.root))?;
        let n = self.new_tree();
        fs::create_dir_all(&n).map_err(io_err(&n))?;
        Ok(n)
    }

    /// Marks the staged tree complete and installs it.
    pub fn commit(&self) -> Result<(), OutputError> {
        let new = self.new_tree();
        // READY records the identity (device, inode) of each staged deliverable, so that a
        // resumed swap knows which ones are installed even after atomic exchanges.
        let mut ids = std::collections::BTreeMap::new();
        for name in DELIVERABLES {
            let p = new.join(name);
            if let Ok(m) = fs::symlink_metadata(&p) {
                ids.insert(name.to_string(), (m.dev(), m.ino()));
            }
        }
        sync_dir(&new);
        let ready =
            serde_json::to_vec(&ids).map_err(|e| io_err(&self.ready())(io::Error::other(e)))?;
        omnipack_fs::write_atomic(&self.ready(), &ready).map_err(io_err(&self.ready()))?;
        sync_dir(&self.root);
        self.roll_forward()
    }

    fn roll_forward(&self) -> Result<(), OutputError> {
        let new = self.new_tree();
        let old = self.old_tree();
        let ids: std::collections::BTreeMap<String, (u64, u64)> =
            omnipack_fs::read_capped_nofollow(&self.ready(), omnipack_fs::MAX_DOCUMENT_BYTES)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default();
        let id_of = |p: &Path| fs::symlink_metadata(p).ok().map(|m| (m.dev(), m.ino()));
        fs::create_dir_all(&old).map_err(io_err(&old))?;
        for name in DELIVERABLES {
            let Some(&want) = ids.get(name) else { continue };
            let staged = new.join(name);
            let dest = self.out.join(name);
            if id_of(&dest) == Some(want) {
                continue; // installed (the old one, if exchanged, is in `new/` and goes below)
            }
            if id_of(&staged) != Some(want) {
                continue; // nothing of ours to install
            }
            if fs::symlink_metadata(&dest).is_ok() {
                // One atomic step where the file system allows it; else park and move.
                if exchange(&staged, &dest).is_err() {
                    let parked = old.join(name);
                    remove_any(&parked).map_err(io_err(&parked))?;
                    fs::rename(&dest, &parked).map_err(io_err(&dest))?;
                    fs::rename(&staged, &dest).map_err(io_err(&staged))?;
                }
            } else {
                fs::rename(&staged, &dest).map_err(io_err(&staged))?;
            }
        }
        sync_dir(&self.out);
        fs::remove_file(self.ready()).map_err(io_err(&self.ready()))?;
        // Stale files of the previous output go only now.
        remove_any(&self.root).map_err(io_err(&self.root))?;
        Ok(())
    }
}

/// Atomically exchanges two paths: `renameat2(RENAME_EXCHANGE)` on Linux,
/// `renamex_np(RENAME_SWAP)` on macOS; elsewhere unsupported (the caller falls back).
fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let ca = std::ffi::CString::new(a.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let cb = std::ffi::CString::new(b.as_os_str().as_bytes()).map_err(io::Error::other)?;
    #[cfg(any(target_os = "linux", target_os = "android"))]
    // SAFETY: two valid NUL-terminated paths relative to the current directory.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    #[cfg(target_vendor = "apple")]
    // SAFETY: two valid NUL-terminated paths.
    let rc = unsafe { libc::renamex_np(ca.as_ptr(), cb.as_ptr(), libc::RENAME_SWAP) };
    #[cfg(not(any(target_os = "linux", target_os = "android", target_vendor = "apple")))]
    let rc = {
        let _ = (ca, cb);
        return Err(io::Error::from(io::ErrorKind::Unsupported));
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn sync_dir(p: &Path) {
    if let Ok(f) = File::open(p) {
        let _ = f.sync_all();
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn an_output_path_that_is_a_file_is_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("dist");
        fs::write(&file, b"not a folder").unwrap();
        let err = OutputLock::acquire(&file).unwrap_err();
        assert!(matches!(err, OutputError::NotAFolder { .. }), "{err}");
        assert!(err.to_string().contains("is not a folder"));
        assert_eq!(fs::read(&file).unwrap(), b"not a folder");
    }

    use super::*;

    #[test]
    fn lock_excludes_second_holder() {
        let d = tempfile::tempdir().unwrap();
        let l = OutputLock::acquire(d.path()).unwrap();
        let e = OutputLock::acquire(d.path()).unwrap_err();
        assert!(e.to_string().contains("lock"), "{e}");
        drop(l);
        OutputLock::acquire(d.path()).unwrap();
    }

    #[test]
    fn swap_and_recovery() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path();
        fs::create_dir_all(out.join("bundles")).unwrap();
        fs::write(out.join("bundles/old.zip"), b"old").unwrap();
        fs::write(out.join(omnipack_summary::SUMMARY_FILE), b"old").unwrap();
        let s = SwapArea::new(out);
        // An incomplete staging tree is discarded; the output is untouched.
        let n = s.prepare().unwrap();
        fs::create_dir_all(n.join("bundles")).unwrap();
        assert!(s.recover().unwrap().is_some());
        assert_eq!(fs::read(out.join("bundles/old.zip")).unwrap(), b"old");
        // A complete one interrupted after installing `bundles` is rolled forward.
        let n = s.prepare().unwrap();
        fs::create_dir_all(n.join("bundles")).unwrap();
        fs::create_dir_all(n.join("asset-packs")).unwrap();
        fs::create_dir_all(n.join(APP_DIR)).unwrap();
        fs::write(n.join("bundles/new.zip"), b"new").unwrap();
        fs::write(n.join(omnipack_summary::SUMMARY_FILE), b"new").unwrap();
        let mut ids = std::collections::BTreeMap::new();
        for name in DELIVERABLES {
            let m = fs::symlink_metadata(n.join(name)).unwrap();
            ids.insert(name.to_string(), (m.dev(), m.ino()));
        }
        fs::write(s.ready(), serde_json::to_vec(&ids).unwrap()).unwrap();
        exchange(&n.join("bundles"), &out.join("bundles")).unwrap();
        assert!(s.recover().unwrap().is_some());
        assert!(!out.join("bundles/old.zip").exists());
        assert_eq!(fs::read(out.join("bundles/new.zip")).unwrap(), b"new");
        assert_eq!(
            fs::read(out.join(omnipack_summary::SUMMARY_FILE)).unwrap(),
            b"new"
        );
        assert!(!out.join(PRIVATE_DIR).join("swap").exists());
    }
}
