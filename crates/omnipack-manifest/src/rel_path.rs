//! Helpers for the paths written in manifests (normalising is `lexical_path`): `/`-separated, relative to the manifest
//! that names them (absolute paths pass through). Nothing here touches the file system.

use std::path::Path;

/// True for `/x`, `\x` and `C:...` paths.
pub(crate) fn is_absolute(p: &str) -> bool {
    p.starts_with('/') || p.starts_with('\\') || p.as_bytes().get(1) == Some(&b':')
}

/// The folder part of `p`: `a/b` for `a/b/c`, empty for a bare name, `/` for `/c`.
pub(crate) fn parent(p: &str) -> String {
    match p.rfind('/') {
        Some(0) => "/".into(),
        Some(i) => p[..i].to_string(),
        None => String::new(),
    }
}

/// `b` relative to folder `a` (`b` itself when it is absolute or `a` is empty).
pub(crate) fn join(a: &str, b: &str) -> String {
    if a.is_empty() || is_absolute(b) {
        b.to_string()
    } else if a.ends_with('/') {
        format!("{a}{b}")
    } else {
        format!("{a}/{b}")
    }
}

/// How a path written in a manifest in folder `dir` is shown to users: joined to `dir` and
/// normalised (`.` for the folder itself), as the user would type it from where they ran
/// omnipack.
pub(crate) fn shown(dir: &Path, rel: &str) -> String {
    if is_absolute(rel) {
        return rel.to_string();
    }
    let d = dir.to_string_lossy();
    let n = crate::lexical_path::normalize_str(&join(&d, rel));
    if n.is_empty() { ".".into() } else { n }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lexical_path::normalize_str as normalize;

    #[test]
    fn normalizes_paths() {
        assert_eq!(normalize("a/./b/../c"), "a/c");
        assert_eq!(normalize("../x/../../y"), "../../y");
        assert_eq!(normalize("/a/../../b"), "/b");
        assert_eq!(
            normalize(&join("../../manifests", "../examples/m.safetensors")),
            "../../examples/m.safetensors"
        );
        assert_eq!(parent("manifests/base.yaml"), "manifests");
        assert_eq!(parent("base.yaml"), "");
        assert_eq!(parent("/base.yaml"), "/");
    }

    #[test]
    fn shows_paths_from_where_omnipack_ran() {
        let dir = Path::new("manifests/errors");
        assert_eq!(
            shown(dir, "../../examples/m.safetensors"),
            "examples/m.safetensors"
        );
        assert_eq!(shown(dir, "/abs/m"), "/abs/m");
        assert_eq!(shown(Path::new(""), ""), ".");
        assert_eq!(shown(Path::new("a"), ".."), ".");
    }
}
