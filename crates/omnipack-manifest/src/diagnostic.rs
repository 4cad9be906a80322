//! Located diagnostics: what is wrong, where (file, line, column, manifest path, byte span),
//! and how to fix it.
//!
//! A [`Diagnostic`] serialises to the JSON form of `omnipack validate --format json`
//! (`severity`, `message`, `file`, `line`, `column`, `path`, plus `help`), implements
//! [`miette::Diagnostic`] with its source attached (spans are byte offsets), and renders to
//! colourless fixed-width text with [`render`].

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use miette::{
    GraphicalReportHandler, GraphicalTheme, LabeledSpan, MietteError, MietteSpanContents,
    SourceCode, SourceSpan, SpanContents,
};
use serde::Serialize;

/// How bad a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The manifest cannot be used.
    Error,
    /// The manifest works, but probably not as intended.
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// One manifest source file, shared by every diagnostic pointing into it.
#[derive(Debug)]
pub struct SourceFile {
    /// The file name as shown to users (relative when the user gave a relative path).
    pub name: String,
    /// The full text.
    pub text: String,
    line_starts: Vec<usize>,
}

impl SourceFile {
    /// Wraps a file's text.
    pub fn new(name: impl Into<String>, text: String) -> Self {
        let name = name.into();
        let mut line_starts = vec![0];
        line_starts.extend(
            text.bytes()
                .enumerate()
                .filter(|(_, b)| *b == b'\n')
                .map(|(i, _)| i + 1),
        );
        SourceFile {
            name,
            text,
            line_starts,
        }
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = self.floor_char_boundary(offset.min(self.text.len()));
        let line = match self.line_starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i - 1,
        };
        let start = self.line_starts[line];
        let mut before = &self.text[start..offset];
        if line == 0 {
            // A byte order mark is not a column: editors show the first character at 1.
            before = before.strip_prefix('\u{feff}').unwrap_or(before);
        }
        let column = before.chars().count() + 1;
        (line + 1, column)
    }

    /// Byte offset of a 1-based line and character column (clamped to the text).
    pub fn offset_of(&self, line: usize, column: usize) -> usize {
        let Some(&start) = self.line_starts.get(line.saturating_sub(1)) else {
            return self.text.len();
        };
        let rest = &self.text[start..];
        let line_end = rest
            .find('\n')
            .map(|i| start + i)
            .unwrap_or(self.text.len());
        self.text[start..line_end]
            .char_indices()
            .nth(column.saturating_sub(1))
            .map(|(i, _)| start + i)
            .unwrap_or(line_end)
    }

    fn floor_char_boundary(&self, mut i: usize) -> usize {
        while i > 0 && !self.text.is_char_boundary(i) {
            i -= 1;
        }
        i
    }
}

/// A problem found in a manifest, located in the file where the offending text really is.
#[derive(Debug, Clone, Serialize)]
pub struct Diagnostic {
    /// `error` or `warning`.
    pub severity: Severity,
    /// What is wrong, in one sentence.
    pub message: String,
    /// The file the problem is in, as shown to users.
    pub file: String,
    /// 1-based line, when the problem has a location in the file.
    pub line: Option<usize>,
    /// 1-based column in characters, when the problem has a location in the file.
    pub column: Option<usize>,
    /// Manifest path of the offending value, such as `tiers[0].memory_limit` (empty for the
    /// whole file).
    pub path: String,
    /// How to fix it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
    /// Short text under the underline.
    #[serde(skip)]
    pub label: Option<String>,
    /// Byte span of the offending text in `file`.
    #[serde(skip)]
    pub span: Option<Range<usize>>,
    #[serde(skip)]
    source: Option<LocatedSource>,
}

/// The source as miette sees it: named `file:line:column` (columns in characters), so that
/// the snippet header agrees with the JSON form even on non-ASCII lines (miette itself counts
/// columns in bytes).
#[derive(Debug, Clone)]
struct LocatedSource {
    file: Arc<SourceFile>,
    name: String,
}

impl SourceCode for LocatedSource {
    fn read_span<'a>(
        &'a self,
        span: &SourceSpan,
        context_lines_before: usize,
        context_lines_after: usize,
    ) -> Result<Box<dyn SpanContents<'a> + 'a>, MietteError> {
        let inner = self
            .file
            .text
            .read_span(span, context_lines_before, context_lines_after)?;
        Ok(Box::new(MietteSpanContents::new_named(
            self.name.clone(),
            inner.data(),
            *inner.span(),
            inner.line(),
            inner.column(),
            inner.line_count(),
        )))
    }
}

impl Diagnostic {
    /// A diagnostic without a location in a file (for example a file that cannot be read).
    pub fn new(severity: Severity, file: impl Into<String>, message: impl Into<String>) -> Self {
        Diagnostic {
            severity,
            message: message.into(),
            file: file.into(),
            line: None,
            column: None,
            path: String::new(),
            help: None,
            label: None,
            span: None,
            source: None,
        }
    }

    /// An error without a location in a file.
    pub fn error(file: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(Severity::Error, file, message)
    }

    /// A diagnostic at byte span `span` of `source`.
    pub fn located(
        severity: Severity,
        source: &Arc<SourceFile>,
        span: Range<usize>,
        message: impl Into<String>,
    ) -> Self {
        // Clamp to the text and to character boundaries, whatever the caller passed.
        let start = source.floor_char_boundary(span.start.min(source.text.len()));
        let end = source
            .floor_char_boundary(span.end.clamp(start, source.text.len()))
            .max(start);
        let (line, column) = source.line_col(start);
        Diagnostic {
            severity,
            message: message.into(),
            file: source.name.clone(),
            line: Some(line),
            column: Some(column),
            path: String::new(),
            help: None,
            label: None,
            span: Some(start..end),
            source: Some(LocatedSource {
                file: source.clone(),
                name: format!("{}:{line}:{column}", source.name),
            }),
        }
    }

    /// Sets the manifest path.
    pub fn with_path(mut self, path: impl Into<String>) -> Self {
        self.path = path.into();
        self
    }

    /// Sets the help text.
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        let help = help.into();
        self.help = (!help.is_empty()).then_some(help);
        self
    }

    /// Sets the help text when there is one.
    pub fn with_help_opt(mut self, help: Option<String>) -> Self {
        if let Some(h) = help {
            self = self.with_help(h);
        }
        self
    }

    /// Sets the text shown under the underline.
    pub fn with_label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    /// True for errors.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// The source file the span points into, if any.
    pub fn source_file(&self) -> Option<&Arc<SourceFile>> {
        self.source.as_ref().map(|s| &s.file)
    }

    /// `file:line:column`, or just `file` without a location.
    pub fn location(&self) -> String {
        match (self.line, self.column) {
            (Some(l), Some(c)) => format!("{}:{l}:{c}", self.file),
            _ => self.file.clone(),
        }
    }

    /// Colourless fixed-width rendering of this diagnostic (see [`render`]).
    pub fn render(&self) -> String {
        render(std::slice::from_ref(self))
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location(), self.message)
    }
}

impl std::error::Error for Diagnostic {}

/// The message as miette shows it: the text without the location (shown in the snippet header).
struct Headline<'a>(&'a Diagnostic);

impl fmt::Debug for Headline<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Headline<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.0.source, &self.0.span) {
            (Some(_), Some(_)) => f.write_str(&self.0.message),
            _ => write!(f, "{}: {}", self.0.location(), self.0.message),
        }
    }
}

impl std::error::Error for Headline<'_> {}

impl miette::Diagnostic for Headline<'_> {
    fn severity(&self) -> Option<miette::Severity> {
        miette::Diagnostic::severity(self.0)
    }
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        miette::Diagnostic::help(self.0)
    }
    fn source_code(&self) -> Option<&dyn SourceCode> {
        miette::Diagnostic::source_code(self.0)
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        miette::Diagnostic::labels(self.0)
    }
}

impl miette::Diagnostic for Diagnostic {
    fn severity(&self) -> Option<miette::Severity> {
        Some(match self.severity {
            Severity::Error => miette::Severity::Error,
            Severity::Warning => miette::Severity::Warning,
        })
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn SourceCode> {
        match (&self.source, &self.span) {
            (Some(s), Some(_)) => Some(s as &dyn SourceCode),
            _ => None,
        }
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let span = self.span.clone()?;
        self.source.as_ref()?;
        let len = span.end.saturating_sub(span.start);
        Some(Box::new(std::iter::once(
            LabeledSpan::new_primary_with_span(self.label.clone(), (span.start, len)),
        )))
    }
}

/// Longest source line shown in a snippet, in bytes.
const MAX_SNIPPET_LINE: usize = 400;

impl Diagnostic {
    /// Length of the longest source line the snippet would show.
    fn snippet_line_len(&self) -> Option<usize> {
        let src = &self.source.as_ref()?.file.text;
        let span = self.span.clone()?;
        let start = src[..span.start.min(src.len())]
            .rfind('\n')
            .map(|i| i + 1)
            .unwrap_or(0);
        let end = src[span.end.min(src.len())..]
            .find('\n')
            .map(|i| i + span.end)
            .unwrap_or(src.len());
        Some(src[start..end].split('\n').map(str::len).max().unwrap_or(0))
    }
}

/// Width of rendered diagnostics, in columns.
pub const RENDER_WIDTH: usize = 100;

/// Renders diagnostics as colourless fixed-width text (what the CLI prints on stderr and
/// what the snapshot tests compare): the message, `file:line:column`, the offending line
/// with the text underlined, and the help.
pub fn render(diagnostics: &[Diagnostic]) -> String {
    let handler = GraphicalReportHandler::new_themed(GraphicalTheme::unicode_nocolor())
        .with_width(RENDER_WIDTH)
        .with_links(false)
        .with_context_lines(1)
        .without_primary_span_start()
        // Unwrapped: textwrap would split paths at hyphens, breaking copy and paste.
        .with_wrap_lines(false)
        .without_syntax_highlighting();
    let mut out = String::new();
    for d in diagnostics {
        let mut one = String::new();
        // A snippet of a huge line (minified or hostile input) helps nobody: show the
        // location only.
        let plain;
        let d = if d.snippet_line_len().is_some_and(|n| n > MAX_SNIPPET_LINE) {
            plain = Diagnostic {
                source: None,
                ..d.clone()
            };
            &plain
        } else {
            d
        };
        if handler.render_report(&mut one, &Headline(d)).is_err() {
            one = format!("{}: {}\n", d.severity, d);
        }
        // miette pads lines to the terminal width in places; trailing spaces only add noise.
        for line in one.lines() {
            out.push_str(line.trim_end());
            out.push('\n');
        }
    }
    out
}

/// Every problem found while loading a manifest (errors, and warnings found alongside them).
#[derive(Debug, Clone, Default)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    /// The diagnostics.
    pub fn iter(&self) -> std::slice::Iter<'_, Diagnostic> {
        self.0.iter()
    }
    /// Number of errors.
    pub fn error_count(&self) -> usize {
        self.0.iter().filter(|d| d.is_error()).count()
    }
    /// Colourless fixed-width rendering (see [`render`]).
    pub fn render(&self) -> String {
        render(&self.0)
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.error_count();
        match self.0.iter().find(|d| d.is_error()) {
            Some(first) if n == 1 => write!(f, "{first}"),
            Some(first) => write!(f, "{first} (and {} more errors)", n - 1),
            None => f.write_str("no errors"),
        }
    }
}

impl std::error::Error for Diagnostics {}

impl miette::Diagnostic for Diagnostics {
    fn related<'a>(&'a self) -> Option<Box<dyn Iterator<Item = &'a dyn miette::Diagnostic> + 'a>> {
        Some(Box::new(
            self.0.iter().map(|d| d as &dyn miette::Diagnostic),
        ))
    }
}

impl IntoIterator for Diagnostics {
    type Item = Diagnostic;
    type IntoIter = std::vec::IntoIter<Diagnostic>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_characters_and_spans_are_bytes() {
        let src = Arc::new(SourceFile::new(
            "x.yaml",
            "name: \"héllo\"\nbad: é x\n".to_string(),
        ));
        let off = src.text.find("x\n").unwrap();
        let d =
            Diagnostic::located(Severity::Error, &src, off..off + 1, "boom").with_help("fix it");
        assert_eq!((d.line, d.column), (Some(2), Some(8)));
        assert_eq!(src.offset_of(2, 8), off);
        let text = d.render();
        assert!(text.contains("x.yaml:2:8"), "{text}");
        // A span inside a multi-byte character or past the end is clamped, never a panic.
        let odd = Diagnostic::located(Severity::Error, &src, 9..1000, "odd");
        let span = odd.span.clone().unwrap();
        assert!(src.text.is_char_boundary(span.start) && span.end == src.text.len());
        assert!(!odd.render().is_empty());
        assert!(text.contains("fix it"), "{text}");
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(json["line"], 2);
        assert_eq!(json["severity"], "error");
    }

    #[test]
    fn a_byte_order_mark_is_not_a_column() {
        let src = SourceFile::new("x.yaml", "\u{feff}omnipak: 1\nb: 2\n".to_string());
        assert_eq!(src.line_col(3), (1, 1));
        assert_eq!(src.line_col(src.text.find("ak").unwrap()), (1, 6));
        assert_eq!(src.line_col(src.text.find("b:").unwrap()), (2, 1));
    }
}
