//! Locating diagnostics: a manifest path such as `components[0].kv_cache.group_size` is looked
//! up in the merged spanned tree, and the diagnostic points at the file and byte span where that
//! value (or, for a value that is not written, the nearest enclosing one) really is.

use std::sync::Arc;

use crate::diagnostic::{Diagnostic, Severity, SourceFile};
use crate::node::{self, Node, Segment};

/// Builds located diagnostics for one loaded manifest: its files and its merged tree.
pub(crate) struct Locator<'a> {
    /// Every file read, indexed by [`Node::file`].
    pub sources: &'a [Arc<SourceFile>],
    /// The merged tree.
    pub tree: &'a Node,
}

impl Locator<'_> {
    /// A diagnostic at the value at `path` (or the nearest enclosing value that is written).
    pub(crate) fn at(
        &self,
        path: &[Segment],
        severity: Severity,
        message: impl Into<String>,
    ) -> Diagnostic {
        self.locate(path, false, severity, message.into())
    }

    /// A diagnostic at the key of the entry at `path` (an unknown key, a key that does not
    /// belong there).
    pub(crate) fn at_key(
        &self,
        path: &[Segment],
        severity: Severity,
        message: impl Into<String>,
    ) -> Diagnostic {
        self.locate(path, true, severity, message.into())
    }

    fn locate(
        &self,
        path: &[Segment],
        at_key: bool,
        severity: Severity,
        message: String,
    ) -> Diagnostic {
        let found = node::find(self.tree, path);
        let (file, span) = match found.entry {
            Some(e) if at_key && found.exact => (e.key_file, e.key_span.clone()),
            _ => node::point_span(&found),
        };
        let diag = match self.sources.get(file) {
            Some(src) => Diagnostic::located(severity, src, span, message),
            None => Diagnostic::new(severity, String::new(), message),
        };
        diag.with_path(node::format_path(path))
    }

    /// `file:line:column` of the value at `path`, for "the first one is at ...".
    pub(crate) fn location(&self, path: &[Segment]) -> String {
        self.at(path, Severity::Error, "").location()
    }

    /// The text of the value at `path` as written in its file.
    pub(crate) fn source_text(&self, path: &[Segment]) -> Option<String> {
        let found = node::find(self.tree, path);
        let src = self.sources.get(found.node.file)?;
        found
            .exact
            .then(|| src.text.get(found.node.span.clone()).map(str::to_string))
            .flatten()
    }

    /// True when the key at `path` is written in the top manifest file (not inherited from a
    /// base through `extends`).
    pub(crate) fn written_in_top_file(&self, path: &[Segment]) -> bool {
        node::find(self.tree, path)
            .entry
            .is_some_and(|e| e.key_file == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_value_points_at_its_nearest_written_parent() {
        let text = "omnipack: 1\ntiers:\n  - name: a\n".to_string();
        let src = Arc::new(SourceFile::new("m.yaml", text));
        let tree = node::parse(&src, 0).unwrap();
        let locator = Locator {
            sources: std::slice::from_ref(&src),
            tree: &tree,
        };
        let path = |p: &str| node::parse_path(p).unwrap();
        let d = locator.at(&path("tiers[0].memory_limit"), Severity::Error, "x");
        assert_eq!((d.line, d.column), (Some(3), Some(5)));
        assert_eq!(d.path, "tiers[0].memory_limit");
        assert_eq!(locator.location(&path("tiers[0].name")), "m.yaml:3:11");
        assert_eq!(
            locator.source_text(&path("tiers[0].name")).as_deref(),
            Some("a")
        );
        assert!(locator.written_in_top_file(&path("tiers[0].name")));
        assert!(!locator.written_in_top_file(&path("tiers[0].memory_limit")));
    }
}
