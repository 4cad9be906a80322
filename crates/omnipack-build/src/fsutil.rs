//! Small file-system helpers: atomic writes, hard links with a copy fallback, folder walks.
//! (Lexical path work is [`omnipack_manifest::lexical_path`].)

use std::fs;
use std::io::{self, Write};
use std::path::{Component, Path};

use omnipack_manifest::lexical_path::slash;

/// Writes `bytes` to a temporary file next to `path` and renames it into place.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let parent = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = parent.join(format!(".{name}.{}.tmp", std::process::id()));
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
    }
    fs::rename(&tmp, path).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

/// Hard-links `src` to `dst` (same file system), else copies it.
pub fn link_or_copy(src: &Path, dst: &Path) -> io::Result<()> {
    if let Some(p) = dst.parent() {
        fs::create_dir_all(p)?;
    }
    match fs::hard_link(src, dst) {
        Ok(()) => Ok(()),
        Err(_) => fs::copy(src, dst).map(|_| ()),
    }
}

/// Removes a file or a folder tree if it exists.
pub fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
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

/// Every regular file under `root` (following no symlinks), as `/`-separated paths relative
/// to `root`, sorted by bytes. Symlinks are reported as errors by the caller's checks.
pub fn walk_files(root: &Path) -> io::Result<Vec<String>> {
    walk_files_skipping(root, &[])
}

/// The (device, inode) identity of a folder, for [`walk_files_skipping`].
#[cfg(unix)]
pub fn dir_identity(path: &Path) -> io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(path)?;
    Ok((m.dev(), m.ino()))
}

/// Like [`walk_files`], but skips the folders whose (device, inode) is in `skip` (omnipack's
/// own output and cache folders when they lie inside an exporter's input folder).
pub fn walk_files_skipping(root: &Path, skip: &[(u64, u64)]) -> io::Result<Vec<String>> {
    let mut out = Vec::new();
    fn skipped(p: &Path, skip: &[(u64, u64)]) -> bool {
        #[cfg(unix)]
        {
            !skip.is_empty() && dir_identity(p).is_ok_and(|id| skip.contains(&id))
        }
        #[cfg(not(unix))]
        {
            let _ = (p, skip);
            false
        }
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

    #[test]
    fn safe_relative_paths() {
        assert!(is_safe_relative("a/b.txt"));
        assert!(!is_safe_relative("../x"));
        assert!(!is_safe_relative("/etc/passwd"));
        assert!(!is_safe_relative("a/../../x"));
        assert!(!is_safe_relative(""));
    }
}
