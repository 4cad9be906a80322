//! Paths worked out lexically (without touching the file system): the one place omnipack
//! normalises a path, makes it relative to a folder and writes it with `/`.
//!
//! Manifests, plans and summaries hold paths relative to the manifest's folder, so these
//! functions never resolve symlinks: `a/../b` is `b` even when `a` is a link.

use std::path::{Component, Path, PathBuf};

/// Lexically normalises `p`: drops `.` and empty parts, folds `a/..`; keeps leading `..` of a
/// relative path and drops `..` right after the root of an absolute one (`/..` is `/`).
pub fn normalize(p: &Path) -> PathBuf {
    let mut out: Vec<Component> = Vec::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => match out.last() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                Some(Component::RootDir) | Some(Component::Prefix(_)) => {}
                _ => out.push(c),
            },
            other => out.push(other),
        }
    }
    out.iter().collect()
}

/// [`normalize`] of a `/`-separated path, `/`-separated (empty for the folder itself).
pub fn normalize_str(p: &str) -> String {
    slash(&normalize(Path::new(p)))
}

/// [`normalize_str`], with `.` for the folder itself (how plans and summaries write paths).
pub fn normalize_or_dot(p: &str) -> String {
    let n = normalize_str(p);
    if n.is_empty() { ".".into() } else { n }
}

/// The `/`-separated form of a path (a leading `/` kept for an absolute path).
pub fn slash(p: &Path) -> String {
    let mut out = String::new();
    for c in p.components() {
        match c {
            Component::RootDir => out.push('/'),
            other => {
                if !out.is_empty() && !out.ends_with('/') {
                    out.push('/');
                }
                out.push_str(&other.as_os_str().to_string_lossy());
            }
        }
    }
    out
}

/// `p` made absolute against the current folder (lexically: no symlink is resolved).
pub fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// `path` relative to `base`, lexically (both made absolute and normalised first).
pub fn relative_to(path: &Path, base: &Path) -> PathBuf {
    let path = normalize(&absolute(path));
    let base = normalize(&absolute(base));
    let pc: Vec<_> = path.components().collect();
    let bc: Vec<_> = base.components().collect();
    let common = pc.iter().zip(&bc).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..bc.len() {
        out.push("..");
    }
    for c in &pc[common..] {
        out.push(c.as_os_str());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_paths() {
        assert_eq!(normalize(Path::new("a/./b/../c")), PathBuf::from("a/c"));
        assert_eq!(normalize(Path::new("../x/../y")), PathBuf::from("../y"));
        assert_eq!(normalize_str("a/./b/../c"), "a/c");
        assert_eq!(normalize_str("../x/../../y"), "../../y");
        assert_eq!(normalize_str("/a/../../b"), "/b");
        assert_eq!(normalize_str("a//b/"), "a/b");
        assert_eq!(normalize_str("./"), "");
        assert_eq!(normalize_str("a/.."), "");
        assert_eq!(
            normalize_str("../../manifests/../examples/m.safetensors"),
            "../../examples/m.safetensors"
        );
        assert_eq!(
            relative_to(Path::new("/a/b/c"), Path::new("/a/d")),
            PathBuf::from("../b/c")
        );
        assert_eq!(slash(Path::new("/a/b")), "/a/b");
        assert_eq!(slash(Path::new("a/b")), "a/b");
    }
}
