//! Locating diagnostics: a manifest path such as `components[0].kv_cache.group_size` is looked
//! up in the merged spanned tree, and the diagnostic points at the file and byte span where that
//! value (or, for a value that is not written, the nearest enclosing one) really is.

use std::ops::Deref;
use std::sync::Arc;

use crate::diagnostic::{Diagnostic, Severity, SourceFile};
use crate::node::{self, Node, Segment};

/// A path into the manifest, built step by step: `ManifestPath::root().key("tiers").index(0)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ManifestPath(Vec<Segment>);

impl ManifestPath {
    /// The whole manifest.
    pub(crate) fn root() -> Self {
        ManifestPath(Vec::new())
    }

    /// This path followed by mapping key `key`.
    pub(crate) fn key(&self, key: &str) -> Self {
        let mut next = self.clone();
        next.0.push(Segment::Key(key.to_string()));
        next
    }

    /// This path followed by list index `index`.
    pub(crate) fn index(&self, index: usize) -> Self {
        let mut next = self.clone();
        next.0.push(Segment::Index(index));
        next
    }

    /// This path, followed by `index` when there is one (an item of a value that may be one
    /// value or a list).
    pub(crate) fn maybe_index(&self, index: Option<usize>) -> Self {
        match index {
            Some(i) => self.index(i),
            None => self.clone(),
        }
    }
}

impl Deref for ManifestPath {
    type Target = [Segment];
    fn deref(&self) -> &[Segment] {
        &self.0
    }
}

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
    fn paths_build_step_by_step() {
        let p = ManifestPath::root()
            .key("components")
            .index(0)
            .key("quantization")
            .key("format")
            .maybe_index(Some(1));
        assert_eq!(
            node::format_path(&p),
            "components[0].quantization.format[1]"
        );
        assert_eq!(p.maybe_index(None), p);
    }

    #[test]
    fn a_missing_value_points_at_its_nearest_written_parent() {
        let text = "omnipack: 1\ntiers:\n  - name: a\n".to_string();
        let src = Arc::new(SourceFile::new("m.yaml", text));
        let tree = node::parse(&src, 0).unwrap();
        let locator = Locator {
            sources: std::slice::from_ref(&src),
            tree: &tree,
        };
        let tier = ManifestPath::root().key("tiers").index(0);
        let d = locator.at(&tier.key("memory_limit"), Severity::Error, "x");
        assert_eq!((d.line, d.column), (Some(3), Some(5)));
        assert_eq!(d.path, "tiers[0].memory_limit");
        assert_eq!(locator.location(&tier.key("name")), "m.yaml:3:11");
        assert_eq!(locator.source_text(&tier.key("name")).as_deref(), Some("a"));
        assert!(locator.written_in_top_file(&tier.key("name")));
        assert!(!locator.written_in_top_file(&tier.key("memory_limit")));
    }
}
