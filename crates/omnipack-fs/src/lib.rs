//! The one file-system layer every omnipack command uses: no links followed inside the output
//! folder, regular files only, bounded reads, atomic writes over regular files only.
//!
//! * Reading: [`open_regular`] opens without blocking (`O_NONBLOCK`), then refuses anything
//!   `fstat` does not call a regular file (a FIFO, socket, device or folder) before a byte is
//!   read; [`read_capped`] reads at most a stated number of bytes. The `_nofollow` variants also
//!   refuse a symlink as the last path component (`O_NOFOLLOW`), for files inside an output
//!   folder.
//! * Writing: [`create_regular_nofollow`] creates or truncates a regular file without following
//!   a link; [`write_atomic`] writes a temporary file next to the target and renames it over a
//!   regular file (or a symlink, which the rename replaces: its target is never touched), never
//!   over a device, FIFO, socket or folder.
//! * Deleting: [`remove_any`] never follows a link (a link is removed, not what it points to;
//!   folder trees are removed with `openat`/`unlinkat` relative to folder descriptors by the
//!   standard library); [`private_dir`] makes a folder of omnipack's own that is a real folder.
//! * Walking: [`walk_files`] lists regular files without entering linked folders.
//!
//! Linux is the platform; the checks use `libc` and `std::os::unix`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Component, Path};

/// Cap on any JSON or YAML document omnipack reads whole (manifests and what they `extends`,
/// `mobile_packager_summary.json`, `bundle.json`, `Manifest.json`, `config.json`, cache
/// records, the digest memo): 64 MiB.
pub const MAX_DOCUMENT_BYTES: u64 = 64 << 20;

/// Cap on a bundle manifest or a file it `extends`: 4 MiB (a manifest is a few KiB).
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;

/// What kind of file system object `m` is, in words.
pub fn kind_of(m: &fs::Metadata) -> &'static str {
    let t = m.file_type();
    if t.is_file() {
        "a regular file"
    } else if t.is_dir() {
        "a folder"
    } else if t.is_symlink() {
        "a symlink"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else {
        "not a regular file"
    }
}

fn not_regular(m: &fs::Metadata) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("not a regular file ({}): refused", kind_of(m)),
    )
}

fn open_read(path: &Path, nofollow: bool) -> io::Result<File> {
    let mut flags = libc::O_NONBLOCK | libc::O_CLOEXEC;
    if nofollow {
        flags |= libc::O_NOFOLLOW;
    }
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)
        .map_err(|e| link_error(e, nofollow))?;
    let m = f.metadata()?;
    if !m.is_file() {
        return Err(not_regular(&m));
    }
    clear_nonblock(&f)?;
    Ok(f)
}

/// `O_NOFOLLOW` on a symlink fails with ELOOP: say what it means.
fn link_error(e: io::Error, nofollow: bool) -> io::Error {
    if nofollow && e.raw_os_error() == Some(libc::ELOOP) {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "a symlink where omnipack expects its own regular file: refused (links are never followed inside an output folder)",
        )
    } else {
        e
    }
}

fn clear_nonblock(f: &File) -> io::Result<()> {
    let fd = f.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Opens `path` for reading (following symlinks) if it is a regular file; a FIFO, socket,
/// device or folder is refused at once, without blocking.
pub fn open_regular(path: &Path) -> io::Result<File> {
    open_read(path, false)
}

/// Like [`open_regular`], but a symlink as the last component is refused too.
pub fn open_regular_nofollow(path: &Path) -> io::Result<File> {
    open_read(path, true)
}

fn read_all_capped(mut f: File, cap: u64) -> io::Result<Vec<u8>> {
    let len = f.metadata()?.len();
    if len > cap {
        return Err(too_big(len, cap));
    }
    let mut buf = Vec::with_capacity(len as usize);
    (&mut f).take(cap + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > cap {
        return Err(too_big(buf.len() as u64, cap));
    }
    Ok(buf)
}

fn too_big(len: u64, cap: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{len} bytes, more than the {cap} bytes omnipack reads from such a file: refused"),
    )
}

/// Reads the regular file `path` (following symlinks) whole, refusing one of more than `cap`
/// bytes and anything that is not a regular file.
pub fn read_capped(path: &Path, cap: u64) -> io::Result<Vec<u8>> {
    read_all_capped(open_regular(path)?, cap)
}

/// Like [`read_capped`], but a symlink as the last component is refused.
pub fn read_capped_nofollow(path: &Path, cap: u64) -> io::Result<Vec<u8>> {
    read_all_capped(open_regular_nofollow(path)?, cap)
}

/// [`read_capped`] into a string (invalid UTF-8 is an error).
pub fn read_to_string_capped(path: &Path, cap: u64) -> io::Result<String> {
    String::from_utf8(read_capped(path, cap)?)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Opens (creating it when missing) the regular file `path` for writing, never following a
/// symlink and never opening a FIFO, socket or device; `truncate` empties it.
pub fn create_regular_nofollow(path: &Path, truncate: bool) -> io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .mode(0o644)
        .open(path)
        .map_err(|e| link_error(e, true))?;
    let m = f.metadata()?;
    if !m.is_file() {
        return Err(not_regular(&m));
    }
    clear_nonblock(&f)?;
    if truncate {
        f.set_len(0)?;
    }
    Ok(f)
}

/// Refuses to replace `path` when it exists and is not a regular file or a symlink (a rename
/// over a symlink replaces the link itself).
pub fn check_replaceable(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_file() || m.file_type().is_symlink() => Ok(()),
        Ok(m) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "is {}: omnipack writes only regular files and will not replace it",
                kind_of(&m)
            ),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// A fresh temporary file next to `path` (created exclusively, so never through a link).
pub fn create_temp_next_to(path: &Path) -> io::Result<(File, std::path::PathBuf)> {
    let parent = parent_of(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    loop {
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = parent.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_CLOEXEC)
            .mode(0o644)
            .open(&tmp)
        {
            Ok(f) => return Ok((f, tmp)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Writes `bytes` to a temporary file next to `path` and renames it into place. `path` must be
/// absent, a regular file or a symlink (the link is replaced, its target untouched); a device,
/// FIFO, socket or folder is refused.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    check_replaceable(path)?;
    fs::create_dir_all(parent_of(path))?;
    let (mut f, tmp) = create_temp_next_to(path)?;
    let r = f.write_all(bytes).and_then(|()| {
        drop(f);
        check_replaceable(path)?;
        fs::rename(&tmp, path)
    });
    if r.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    r
}

/// Copies the regular file `src` (following links) to a new file `dst`, replacing a regular
/// file or link at `dst` (never writing through it). The copy shares nothing with `src`.
pub fn copy_file(src: &Path, dst: &Path) -> io::Result<u64> {
    let mut from = open_regular(src)?;
    check_replaceable(dst)?;
    if let Some(p) = dst.parent() {
        fs::create_dir_all(p)?;
    }
    let (mut to, tmp) = create_temp_next_to(dst)?;
    let r = io::copy(&mut from, &mut to).and_then(|n| {
        drop(to);
        fs::rename(&tmp, dst).map(|()| n)
    });
    if r.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    r
}

/// Hard-links `src` to `dst` (same file system), else copies it. Only for files omnipack
/// itself wrote and closed: no other process can still write them.
pub fn link_or_copy(src: &Path, dst: &Path) -> io::Result<()> {
    let m = fs::symlink_metadata(src)?;
    if !m.is_file() {
        return Err(not_regular(&m));
    }
    if let Some(p) = dst.parent() {
        fs::create_dir_all(p)?;
    }
    match fs::hard_link(src, dst) {
        Ok(()) => Ok(()),
        Err(_) => copy_file(src, dst).map(|_| ()),
    }
}

/// Removes a file, a link (never what it points to) or a folder tree if it exists.
pub fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        // `remove_dir_all` works through folder descriptors and never follows a link.
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Makes `path`, a folder of omnipack's own (inside an output folder or a cache), a real
/// folder: whatever else stands there (a symlink planted to redirect omnipack, a file) is
/// removed first, never followed. Its parent is created when missing.
pub fn private_dir(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => fs::remove_file(path)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if let Some(p) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(p)?;
    }
    match fs::create_dir(path) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => match fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => Ok(()),
            _ => Err(e),
        },
        r => r,
    }
}

/// The entries of the real folder `dir`, refusing a symlinked folder (`ELOOP`) so that a
/// planted link never turns a listing (and the deletions that follow it) elsewhere.
pub fn read_dir_nofollow(dir: &Path) -> io::Result<fs::ReadDir> {
    let m = fs::symlink_metadata(dir)?;
    if !m.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("is {}, not a folder: refused", kind_of(&m)),
        ));
    }
    fs::read_dir(dir)
}

/// True when `p` is relative and stays inside its base: no root, no `..`, not empty.
pub fn is_safe_relative(p: &str) -> bool {
    let path = Path::new(p);
    !p.is_empty()
        && path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        && path.components().any(|c| matches!(c, Component::Normal(_)))
}

/// True when `p` is a relative path in normal form: `/`-separated parts, none of them empty,
/// `.` or `..`, and no `\\` (so each file has exactly one spelling).
pub fn is_normal_relative(p: &str) -> bool {
    !p.is_empty()
        && !p.contains('\\')
        && !p.starts_with('/')
        && p.split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
}

/// `p` with `/` separators.
fn slash(p: &Path) -> String {
    p.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// Every file under `root` that is not a folder, as `/`-separated paths relative to `root`,
/// sorted by bytes. Linked folders are never entered (a link is listed like a file, for the
/// caller to refuse).
pub fn walk_files(root: &Path) -> io::Result<Vec<String>> {
    walk_files_skipping(root, &[])
}

/// The (device, inode) identity of a folder, for [`walk_files_skipping`].
pub fn dir_identity(path: &Path) -> io::Result<(u64, u64)> {
    let m = fs::metadata(path)?;
    Ok((m.dev(), m.ino()))
}

/// Name of omnipack's private folder inside an output folder.
pub const PRIVATE_DIR: &str = ".omnipack";

/// Like [`walk_files`], but skips the folders whose (device, inode) is in `skip`, and every
/// omnipack output folder (a folder holding [`PRIVATE_DIR`]): an input folder never takes in
/// build outputs, this build's or a sibling's.
pub fn walk_files_skipping(root: &Path, skip: &[(u64, u64)]) -> io::Result<Vec<String>> {
    let mut out = Vec::new();
    fn skipped(p: &Path, skip: &[(u64, u64)]) -> bool {
        (!skip.is_empty() && dir_identity(p).is_ok_and(|id| skip.contains(&id)))
            || fs::symlink_metadata(p.join(PRIVATE_DIR)).is_ok_and(|m| m.is_dir())
    }
    fn rec(root: &Path, dir: &Path, skip: &[(u64, u64)], out: &mut Vec<String>) -> io::Result<()> {
        let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let ft = e.file_type()?;
            if ft.is_dir() {
                if !skipped(&p, skip) {
                    rec(root, &p, skip, out)?;
                }
            } else {
                let rel = p.strip_prefix(root).map_err(io::Error::other)?;
                out.push(slash(rel));
            }
        }
        Ok(())
    }
    if fs::metadata(root)?.is_dir() {
        rec(root, root, skip, &mut out)?;
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn mkfifo(p: &Path) {
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    }

    #[test]
    fn safe_relative_paths() {
        assert!(is_safe_relative("a/b.txt"));
        assert!(!is_safe_relative("../x"));
        assert!(!is_safe_relative("/etc/passwd"));
        assert!(!is_safe_relative("a/../../x"));
        assert!(!is_safe_relative(""));
        assert!(is_normal_relative("a/b.txt"));
        for odd in ["./t.json", "a//b", "d/", "/x", "a/../b", "a\\b", ""] {
            assert!(!is_normal_relative(odd), "{odd}");
        }
    }

    #[test]
    fn special_files_are_refused_at_once_never_read() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("fifo");
        mkfifo(&fifo);
        // Opening a FIFO without a writer would block; reading /dev/zero never ends.
        let e = read_capped(&fifo, 10).unwrap_err();
        assert!(e.to_string().contains("a FIFO"), "{e}");
        let e = read_capped(Path::new("/dev/zero"), 10).unwrap_err();
        assert!(e.to_string().contains("a device"), "{e}");
        let z = d.path().join("z");
        symlink("/dev/zero", &z).unwrap();
        assert!(read_capped(&z, 10).is_err());
        assert!(read_capped(d.path(), 10).is_err());
        let f = d.path().join("f");
        fs::write(&f, b"0123456789ab").unwrap();
        assert!(
            read_capped(&f, 10)
                .unwrap_err()
                .to_string()
                .contains("12 bytes")
        );
        assert_eq!(read_capped(&f, 12).unwrap(), b"0123456789ab");
        let l = d.path().join("l");
        symlink(&f, &l).unwrap();
        assert_eq!(read_capped(&l, 12).unwrap().len(), 12);
        assert!(read_capped_nofollow(&l, 12).is_err());
    }

    #[test]
    fn create_never_follows_a_link() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        fs::write(&victim, b"keep").unwrap();
        let l = d.path().join("lock");
        symlink(&victim, &l).unwrap();
        let e = create_regular_nofollow(&l, true).unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
        assert_eq!(fs::read(&victim).unwrap(), b"keep");
        let fifo = d.path().join("fifo");
        mkfifo(&fifo);
        assert!(create_regular_nofollow(&fifo, true).is_err());
    }

    #[test]
    fn atomic_writes_replace_only_regular_files_and_links() {
        let d = tempfile::tempdir().unwrap();
        // Never over a device (`quantize -o /dev/null` run as root would replace it).
        let e = write_atomic(Path::new("/dev/null"), b"x").unwrap_err();
        assert!(e.to_string().contains("a device"), "{e}");
        let fifo = d.path().join("fifo");
        mkfifo(&fifo);
        assert!(write_atomic(&fifo, b"x").is_err());
        assert!(write_atomic(d.path(), b"x").is_err());
        // A link is replaced, its target untouched.
        let victim = d.path().join("victim");
        fs::write(&victim, b"keep").unwrap();
        let l = d.path().join("l");
        symlink(&victim, &l).unwrap();
        write_atomic(&l, b"new").unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"keep");
        assert_eq!(fs::read(&l).unwrap(), b"new");
        assert!(!fs::symlink_metadata(&l).unwrap().file_type().is_symlink());
    }

    #[test]
    fn private_folders_and_listings_never_follow_links() {
        let d = tempfile::tempdir().unwrap();
        let v = d.path().join("V");
        fs::create_dir_all(v.join("keep")).unwrap();
        let c = d.path().join("cache");
        fs::create_dir_all(&c).unwrap();
        symlink(&v, c.join("select")).unwrap();
        assert!(read_dir_nofollow(&c.join("select")).is_err());
        private_dir(&c.join("select")).unwrap();
        assert!(fs::symlink_metadata(c.join("select")).unwrap().is_dir());
        assert!(v.join("keep").is_dir());
        symlink(&v, c.join("link")).unwrap();
        remove_any(&c.join("link")).unwrap();
        assert!(v.join("keep").is_dir());
    }

    #[test]
    fn walks_skip_every_output_folder() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("sib/.omnipack")).unwrap();
        fs::write(d.path().join("sib/x.zip"), b"x").unwrap();
        fs::write(d.path().join("a.txt"), b"a").unwrap();
        assert_eq!(walk_files(d.path()).unwrap(), vec!["a.txt".to_string()]);
    }
}
