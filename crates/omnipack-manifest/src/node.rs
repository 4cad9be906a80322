//! A YAML tree in which every key and value remembers its file and byte span.
//!
//! serde-saphyr parses the text (with resource limits) into [`Spanned`] raw nodes through a
//! hand-written visitor, so locations survive (no untagged enums or `flatten` in the way);
//! the raw tree is then converted to [`Node`]s with byte spans. `extends` is merged on this
//! tree, it is converted to JSON for the schema check, and JSON-pointer paths from schema
//! errors are mapped back to nodes by comparing mapping keys as strings.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use serde_saphyr::{Location, Spanned};

use crate::diagnostic::{Diagnostic, Severity, SourceFile};

/// Resource limits for one manifest file.
pub const MAX_FILE_BYTES: u64 = 4 << 20;
const MAX_DEPTH: usize = 32;
const MAX_NODES: usize = 100_000;
const MAX_EVENTS: usize = 200_000;
const MAX_ALIASES: usize = 1_000;
const MAX_SCALAR_BYTES: usize = 4 << 20;

/// A value in the tree.
#[derive(Debug, Clone)]
pub enum NodeValue {
    /// `~`, `null` or nothing.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// A negative integer.
    Int(i64),
    /// A non-negative integer.
    UInt(u64),
    /// A float.
    Float(f64),
    /// A string.
    Str(String),
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in file order.
    Map(Vec<Entry>),
}

/// A located value.
#[derive(Debug, Clone)]
pub struct Node {
    /// The value.
    pub value: NodeValue,
    /// Index of the file in the loaded manifest's `sources`.
    pub file: usize,
    /// Byte span of the value's text (for containers: their first line's content).
    pub span: Range<usize>,
}

/// A mapping entry: a located key and its value.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The key as a string (numbers and booleans as written).
    pub key: String,
    /// File of the key.
    pub key_file: usize,
    /// Byte span of the key.
    pub key_span: Range<usize>,
    /// The value.
    pub value: Node,
}

impl Node {
    /// The entries when this is a mapping.
    pub fn as_map(&self) -> Option<&[Entry]> {
        match &self.value {
            NodeValue::Map(m) => Some(m),
            _ => None,
        }
    }

    /// The value of mapping key `key`.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.entry(key).map(|e| &e.value)
    }

    /// The entry of mapping key `key`.
    pub fn entry(&self, key: &str) -> Option<&Entry> {
        self.as_map()?.iter().find(|e| e.key == key)
    }

    /// The string when this is a string.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            NodeValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Converts to JSON (mapping order kept).
    pub fn to_json(&self) -> Value {
        match &self.value {
            NodeValue::Null => Value::Null,
            NodeValue::Bool(b) => Value::Bool(*b),
            NodeValue::Int(i) => Value::from(*i),
            NodeValue::UInt(u) => Value::from(*u),
            NodeValue::Float(f) => serde_json::Number::from_f64(*f)
                .map(Value::Number)
                .unwrap_or(Value::Null),
            NodeValue::Str(s) => Value::String(s.clone()),
            NodeValue::Seq(v) => Value::Array(v.iter().map(Node::to_json).collect()),
            NodeValue::Map(m) => Value::Object(
                m.iter()
                    .map(|e| (e.key.clone(), e.value.to_json()))
                    .collect(),
            ),
        }
    }

    /// Short description of the kind of value, for messages.
    pub fn kind_name(&self) -> &'static str {
        match &self.value {
            NodeValue::Null => "nothing (null)",
            NodeValue::Bool(_) => "a boolean",
            NodeValue::Int(_) | NodeValue::UInt(_) => "an integer",
            NodeValue::Float(_) => "a number",
            NodeValue::Str(_) => "a string",
            NodeValue::Seq(_) => "a list",
            NodeValue::Map(_) => "a mapping",
        }
    }
}

/// One step of a manifest path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// A mapping key.
    Key(String),
    /// A list index.
    Index(usize),
}

/// Formats a path as `tiers[0].memory_limit`.
pub fn format_path(path: &[Segment]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Segment::Index(i) => out.push_str(&format!("[{i}]")),
            Segment::Key(k) => {
                let plain = !k.is_empty()
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                if !plain {
                    out.push_str(&format!("[{}]", serde_json::Value::String(k.clone())));
                } else {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(k);
                }
            }
        }
    }
    out
}

/// Parses `tiers[0].memory_limit` or `quantization.tiers["a.b"]` into segments.
pub fn parse_path(path: &str) -> Option<Vec<Segment>> {
    let mut out = Vec::new();
    let b = path.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'.' => i += 1,
            b'[' if b.get(i + 1) == Some(&b'"') => {
                // A JSON string key.
                let rest = &path[i + 1..];
                let mut de = serde_json::Deserializer::from_str(rest).into_iter::<String>();
                let key = de.next()?.ok()?;
                let used = de.byte_offset();
                i += 1 + used;
                if b.get(i) != Some(&b']') {
                    return None;
                }
                i += 1;
                out.push(Segment::Key(key));
            }
            b'[' => {
                let end = path[i..].find(']')? + i;
                out.push(Segment::Index(path[i + 1..end].parse().ok()?));
                i = end + 1;
            }
            _ => {
                let end = path[i..]
                    .find(['.', '['])
                    .map(|e| e + i)
                    .unwrap_or(path.len());
                out.push(Segment::Key(path[i..end].to_string()));
                i = end;
            }
        }
    }
    Some(out)
}

/// Parses a JSON pointer (`/tiers/0/name`) into segments, reading numbers as indices only
/// where the tree has a list.
pub fn pointer_segments(root: &Node, pointer: &str) -> Vec<Segment> {
    let mut out = Vec::new();
    let mut node = Some(root);
    for raw in pointer.split('/').skip(1) {
        let key = raw.replace("~1", "/").replace("~0", "~");
        let seg = match node.map(|n| &n.value) {
            Some(NodeValue::Seq(_)) => match key.parse::<usize>() {
                Ok(i) => Segment::Index(i),
                Err(_) => Segment::Key(key),
            },
            _ => Segment::Key(key),
        };
        node = node.and_then(|n| step(n, &seg));
        out.push(seg);
    }
    out
}

fn step<'a>(node: &'a Node, seg: &Segment) -> Option<&'a Node> {
    match (seg, &node.value) {
        (Segment::Key(k), NodeValue::Map(_)) => node.get(k),
        (Segment::Index(i), NodeValue::Seq(v)) => v.get(*i),
        _ => None,
    }
}

/// Where a path points to.
#[derive(Debug, Clone, Copy)]
pub struct Found<'a> {
    /// The deepest node reached.
    pub node: &'a Node,
    /// The entry whose value is `node`, when reached through a mapping key.
    pub entry: Option<&'a Entry>,
    /// True when the whole path was found.
    pub exact: bool,
}

/// Follows `path` from `root`; stops at the deepest node that exists.
pub fn find<'a>(root: &'a Node, path: &[Segment]) -> Found<'a> {
    let mut found = Found {
        node: root,
        entry: None,
        exact: true,
    };
    for seg in path {
        let next = match (seg, &found.node.value) {
            (Segment::Key(k), NodeValue::Map(_)) => {
                found.node.entry(k).map(|e| (&e.value, Some(e)))
            }
            (Segment::Index(i), NodeValue::Seq(v)) => v.get(*i).map(|n| (n, None)),
            _ => None,
        };
        match next {
            Some((node, entry)) => {
                found.node = node;
                found.entry = entry;
            }
            None => {
                found.exact = false;
                break;
            }
        }
    }
    found
}

/// Span used to point at a node: a scalar's own text; for a container the key that names
/// it, or else its first entry.
pub fn point_span(found: &Found<'_>) -> (usize, Range<usize>) {
    match &found.node.value {
        NodeValue::Map(_) | NodeValue::Seq(_) => {
            if let Some(e) = found.entry {
                return (e.key_file, e.key_span.clone());
            }
            match &found.node.value {
                NodeValue::Map(m) if !m.is_empty() => (m[0].key_file, m[0].key_span.clone()),
                NodeValue::Seq(v) if !v.is_empty() => {
                    let first = Found {
                        node: &v[0],
                        entry: None,
                        exact: true,
                    };
                    point_span(&first)
                }
                _ => (found.node.file, found.node.span.clone()),
            }
        }
        _ => (found.node.file, found.node.span.clone()),
    }
}

/// A problem found while parsing one file.
pub(crate) fn parse_error(source: &Arc<SourceFile>, err: &serde_saphyr::Error) -> Diagnostic {
    let rendered = err.render_with_options(serde_saphyr::render_options! {
        snippets: serde_saphyr::SnippetMode::Off,
        formatter: &serde_saphyr::UserMessageFormatter,
    });
    let mut message = match rendered.find(" at line ") {
        Some(i) => rendered[..i].to_string(),
        None => rendered.trim().to_string(),
    };
    let mut help = None;
    if message.contains("Documents {") {
        message = "the manifest holds more than one YAML document".to_string();
        help = Some(
            "a manifest is one YAML document: remove this `---` and what follows, or put it in its own file"
                .to_string(),
        );
    } else if message.contains("limits breached") || message.contains("recursion limit") {
        let detail = message
            .rsplit("limits breached: ")
            .next()
            .unwrap_or(&message)
            .to_string();
        message = format!(
            "the manifest is too deeply nested, too large or uses too many aliases ({detail})"
        );
        help = Some(format!(
            "a manifest may nest at most {MAX_DEPTH} levels, hold at most {MAX_NODES} values and use at most {MAX_ALIASES} aliases"
        ));
    } else if message.contains("tab") {
        help = Some("indent YAML with spaces, not tabs".to_string());
    } else if message.contains("duplicate mapping key") {
        help =
            Some("each key may appear once per mapping: remove or rename one of them".to_string());
    }
    let acronym = message.chars().nth(1).is_some_and(char::is_uppercase);
    if !message.starts_with(char::is_lowercase) && !message.is_empty() && !acronym {
        // Keep messages in one style.
        let mut c = message.chars();
        if let Some(first) = c.next() {
            message = first.to_lowercase().collect::<String>() + c.as_str();
        }
    }
    let text = &source.text;
    let diag = match err.location() {
        Some(loc) if loc.line() > 0 => {
            let mut start = byte_start(source, &loc);
            let mut end = next_char_end(text, start);
            let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
            let indent = &text[line_start..start];
            if message.contains("tab")
                && indent.contains('\t')
                && indent.chars().all(|c| c == ' ' || c == '\t')
            {
                // The scanner stopped after a tab in this line's indentation: point at it.
                start = line_start + indent.rfind('\t').unwrap_or(0);
                end = start + 1;
            } else if message.contains("tab") {
                // Point at the tab itself, not at the token the scanner was reading.
                if let Some(t) = text[start..].find('\t') {
                    start += t;
                    end = start + 1;
                }
            } else if message.contains("more than one YAML document") {
                if text[start..].starts_with("---") {
                    end = start + 3;
                }
            } else if message.contains("duplicate mapping key") {
                // Underline the whole key.
                let rest = &text[start..];
                let len = rest.find([':', '\n']).unwrap_or(rest.len());
                end = start + rest[..len].trim_end().len().max(1);
            } else if help.is_none() {
                help = unclosed_bracket(text, start).or_else(|| {
                    Some("check the indentation and the `key: value` syntax on this line and the one before".to_string())
                });
            }
            Diagnostic::located(
                Severity::Error,
                source,
                start..end,
                format!("invalid YAML: {message}"),
            )
        }
        _ => Diagnostic::error(source.name.clone(), format!("invalid YAML: {message}")),
    };
    diag.with_help_opt(help)
}

/// The line of a `[` or `{` opened before `offset` and never closed, as advice.
fn unclosed_bracket(text: &str, offset: usize) -> Option<String> {
    let mut stack: Vec<(char, usize)> = Vec::new();
    let mut line = 1;
    let mut quote: Option<char> = None;
    let mut comment = false;
    for c in text[..offset.min(text.len())].chars() {
        match c {
            '\n' => {
                line += 1;
                comment = false;
                if quote == Some('\'') {
                    quote = None;
                }
            }
            _ if comment => {}
            '"' | '\'' if quote.is_none() => quote = Some(c),
            c2 if Some(c2) == quote => quote = None,
            _ if quote.is_some() => {}
            '#' => comment = true,
            '[' | '{' => stack.push((c, line)),
            ']' | '}' => {
                stack.pop();
            }
            _ => {}
        }
    }
    stack.last().map(|(c, l)| {
        let close = if *c == '[' { ']' } else { '}' };
        format!("the `{c}` opened on line {l} is never closed: add `{close}`")
    })
}

fn next_char_end(text: &str, start: usize) -> usize {
    text[start.min(text.len())..]
        .chars()
        .next()
        .filter(|c| *c != '\n')
        .map(|c| start + c.len_utf8())
        .unwrap_or(start)
}

fn byte_start(source: &SourceFile, loc: &Location) -> usize {
    match loc.span().byte_offset() {
        Some(b)
            if (b as usize) <= source.text.len() && source.text.is_char_boundary(b as usize) =>
        {
            b as usize
        }
        _ => source.offset_of(loc.line() as usize, loc.column() as usize),
    }
}

fn byte_range(source: &SourceFile, loc: &Location) -> Range<usize> {
    let start = byte_start(source, loc);
    let span = loc.span();
    let len = match span.byte_len() {
        Some(l) if span.byte_offset().is_some() => l as usize,
        _ => {
            // Character count to bytes.
            let n = span.len() as usize;
            source.text[start..]
                .char_indices()
                .nth(n)
                .map(|(i, _)| i)
                .unwrap_or(source.text.len() - start)
        }
    };
    start..(start + len).min(source.text.len())
}

/// Parses one file's text into a located tree.
pub(crate) fn parse(source: &Arc<SourceFile>, file: usize) -> Result<Node, Box<Diagnostic>> {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_depth = MAX_DEPTH;
    budget.max_nodes = MAX_NODES;
    budget.max_events = MAX_EVENTS;
    budget.max_aliases = MAX_ALIASES;
    budget.max_anchors = MAX_ALIASES;
    budget.max_total_scalar_bytes = MAX_SCALAR_BYTES;
    budget.max_documents = 1;
    let options = serde_saphyr::options! {
        budget: Some(budget),
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::Error,
    };
    let raw: Spanned<Raw> = serde_saphyr::from_str_with_options(&source.text, options)
        .map_err(|e| Box::new(parse_error(source, &e)))?;
    convert(source, file, raw)
}

fn convert(
    source: &Arc<SourceFile>,
    file: usize,
    raw: Spanned<Raw>,
) -> Result<Node, Box<Diagnostic>> {
    let span = byte_range(source, &raw.referenced);
    let value = match raw.value {
        Raw::Null => NodeValue::Null,
        Raw::Bool(b) => NodeValue::Bool(b),
        Raw::Int(i) => NodeValue::Int(i),
        Raw::UInt(u) => NodeValue::UInt(u),
        Raw::Float(f) => NodeValue::Float(f),
        Raw::Str(s) => NodeValue::Str(s),
        Raw::Seq(items) => NodeValue::Seq(
            items
                .into_iter()
                .map(|n| convert(source, file, n))
                .collect::<Result<_, _>>()?,
        ),
        Raw::Map(entries) => {
            let mut out = Vec::with_capacity(entries.len());
            for (k, v) in entries {
                let key_span = byte_range(source, &k.referenced);
                let key = match k.value {
                    Raw::Str(s) => s,
                    Raw::UInt(u) => u.to_string(),
                    Raw::Int(i) => i.to_string(),
                    Raw::Bool(b) => b.to_string(),
                    Raw::Float(_) | Raw::Null | Raw::Seq(_) | Raw::Map(_) => {
                        return Err(Box::new(
                            Diagnostic::located(
                                Severity::Error,
                                source,
                                key_span,
                                "a mapping key must be a name",
                            )
                            .with_label("not a plain name")
                            .with_help("write keys as plain words such as `name:`"),
                        ));
                    }
                };
                out.push(Entry {
                    key,
                    key_file: file,
                    key_span,
                    value: convert(source, file, v)?,
                });
            }
            NodeValue::Map(out)
        }
    };
    Ok(Node { value, file, span })
}

/// The value as serde-saphyr hands it over, before byte spans are computed.
enum Raw {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Seq(Vec<Spanned<Raw>>),
    Map(Vec<(Spanned<Raw>, Spanned<Raw>)>),
}

impl<'de> serde::Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Raw;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any YAML value")
            }
            fn visit_unit<E>(self) -> Result<Raw, E> {
                Ok(Raw::Null)
            }
            fn visit_none<E>(self) -> Result<Raw, E> {
                Ok(Raw::Null)
            }
            fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Raw, D2::Error> {
                <Raw as serde::Deserialize>::deserialize(d)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Raw, E> {
                Ok(Raw::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Raw, E> {
                Ok(if v >= 0 {
                    Raw::UInt(v as u64)
                } else {
                    Raw::Int(v)
                })
            }
            fn visit_u64<E>(self, v: u64) -> Result<Raw, E> {
                Ok(Raw::UInt(v))
            }
            fn visit_i128<E: de::Error>(self, v: i128) -> Result<Raw, E> {
                i64::try_from(v)
                    .map(Raw::Int)
                    .map_err(|_| E::custom("integer out of range"))
            }
            fn visit_u128<E: de::Error>(self, v: u128) -> Result<Raw, E> {
                u64::try_from(v)
                    .map(Raw::UInt)
                    .map_err(|_| E::custom("integer out of range"))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Raw, E> {
                Ok(Raw::Float(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Raw, E> {
                Ok(Raw::Str(v.to_string()))
            }
            fn visit_string<E>(self, v: String) -> Result<Raw, E> {
                Ok(Raw::Str(v))
            }
            fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Raw, E> {
                Err(E::custom("binary values are not allowed in a manifest"))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Raw, A::Error> {
                let mut v = Vec::new();
                while let Some(e) = s.next_element()? {
                    v.push(e);
                }
                Ok(Raw::Seq(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Raw, A::Error> {
                let mut v = Vec::new();
                while let Some(k) = m.next_key()? {
                    let val = m.next_value()?;
                    v.push((k, val));
                }
                Ok(Raw::Map(v))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_round_trip() {
        for p in [
            "tiers[0].memory_limit",
            "components[2].quantization.tiers.iphone-3gb.format[1]",
            "a[\"x.y\"].b",
        ] {
            let segs = parse_path(p).unwrap();
            assert_eq!(format_path(&segs), p);
        }
    }

    #[test]
    fn spans_are_bytes_and_numeric_keys_are_strings() {
        let text = "name: \"héllo\"\ntiers:\n  3gb: 1\n  4: 2\nlist: [a, é, c]\n".to_string();
        let src = Arc::new(SourceFile::new("t.yaml", text.clone()));
        let root = parse(&src, 0).unwrap();
        let segs = pointer_segments(&root, "/tiers/4");
        assert_eq!(
            segs,
            vec![Segment::Key("tiers".into()), Segment::Key("4".into())]
        );
        let f = find(&root, &segs);
        assert!(f.exact);
        assert_eq!(&text[f.node.span.clone()], "2");
        let f = find(&root, &parse_path("list[2]").unwrap());
        assert_eq!(&text[f.node.span.clone()], "c");
        let f = find(&root, &parse_path("name").unwrap());
        assert_eq!(&text[f.node.span.clone()], "\"héllo\"");
    }
}
