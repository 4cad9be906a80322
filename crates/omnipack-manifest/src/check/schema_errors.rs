//! The JSON schema check, with every error mapped back to the YAML location of the offending
//! value and turned into advice: the valid values or keys (with "did you mean"), the unit
//! syntax of sizes and durations, what a missing key is for.

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use jsonschema::error::{TypeKind, ValidationErrorKind};
use serde_json::Value;

use crate::check::wording::{backticked, show};
use crate::diagnostic::{Diagnostic, Severity};
use crate::did_you_mean::nearest;
use crate::locate::Locator;
use crate::node::{self, Segment};
use crate::schema::SCHEMA;
use crate::units::{DURATION_SYNTAX, SIZE_SYNTAX, parse_size};

/// What the schema check found.
pub(crate) struct SchemaReport {
    /// One diagnostic per problem.
    pub diagnostics: Vec<Diagnostic>,
    /// JSON pointers of every value an error was raised at, inside `anyOf`/`oneOf` branches
    /// too: other checks skip them.
    pub reported: HashSet<String>,
    /// Keys the schema does not know, with the JSON pointer of the mapping that holds them.
    pub unknown_keys: Vec<(String, Vec<String>)>,
    /// The manifest paths of those keys, such as `components[0].qunatization`.
    pub unknown_key_paths: HashSet<String>,
}

static VALIDATOR: LazyLock<Result<jsonschema::Validator, String>> = LazyLock::new(|| {
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft7)
        .build(&SCHEMA)
        .map_err(|e| e.to_string())
});

/// Checks `json` against the manifest schema.
pub(crate) fn check(locator: &Locator<'_>, json: &Value) -> SchemaReport {
    let validator = match &*VALIDATOR {
        Ok(v) => v,
        Err(e) => {
            return SchemaReport {
                diagnostics: vec![Diagnostic::error(
                    "",
                    format!("internal error: the manifest schema does not compile: {e}"),
                )],
                reported: HashSet::new(),
                unknown_keys: Vec::new(),
                unknown_key_paths: HashSet::new(),
            };
        }
    };
    let errors: Vec<jsonschema::ValidationError<'_>> = validator.iter_errors(json).collect();
    let mut diagnostics = Vec::new();
    map_errors(locator, errors.iter(), &mut diagnostics);
    let mut reported = HashSet::new();
    let mut unknown_keys = Vec::new();
    collect(errors.iter(), &mut reported, &mut unknown_keys);
    let unknown_key_paths = unknown_keys
        .iter()
        .flat_map(|(pointer, keys)| {
            let mapping = node::pointer_segments(locator.tree, pointer);
            keys.iter().map(move |k| {
                let mut path = mapping.clone();
                path.push(Segment::Key(k.clone()));
                node::format_path(&path)
            })
        })
        .collect();
    SchemaReport {
        diagnostics,
        reported,
        unknown_keys,
        unknown_key_paths,
    }
}

/// The instance paths of `errors` and of the errors inside their `anyOf`/`oneOf` branches, and
/// the unknown keys they name.
fn collect<'e, 'v: 'e>(
    errors: impl Iterator<Item = &'e jsonschema::ValidationError<'v>>,
    paths: &mut HashSet<String>,
    unknown_keys: &mut Vec<(String, Vec<String>)>,
) {
    for e in errors {
        paths.insert(e.instance_path().as_str().to_string());
        match e.kind() {
            ValidationErrorKind::AdditionalProperties { unexpected } => {
                unknown_keys.push((e.instance_path().as_str().to_string(), unexpected.clone()));
            }
            ValidationErrorKind::AnyOf { context }
            | ValidationErrorKind::OneOfNotValid { context } => {
                for branch in context {
                    collect(branch.iter(), paths, unknown_keys);
                }
            }
            _ => {}
        }
    }
}

/// Maps errors, skipping an `anyOf`/`oneOf` failure when a plainer error (such as "not one of
/// the valid values") was reported for the same value.
fn map_errors<'e, 'v: 'e>(
    locator: &Locator<'_>,
    errors: impl Iterator<Item = &'e jsonschema::ValidationError<'v>> + Clone,
    out: &mut Vec<Diagnostic>,
) {
    let simple_paths: HashSet<String> = errors
        .clone()
        .filter(|e| !is_combinator(e.kind()))
        .map(|e| e.instance_path().as_str().to_string())
        .collect();
    // Unknown keys per mapping: a missing key with a misspelt twin is reported once, as the
    // misspelling.
    let mut unknown: HashMap<String, Vec<String>> = HashMap::new();
    for e in errors.clone() {
        if let ValidationErrorKind::AdditionalProperties { unexpected } = e.kind() {
            unknown
                .entry(e.instance_path().as_str().to_string())
                .or_default()
                .extend(unexpected.iter().cloned());
        }
    }
    for err in errors {
        if is_combinator(err.kind()) && simple_paths.contains(err.instance_path().as_str()) {
            continue;
        }
        if let ValidationErrorKind::Required { property } = err.kind()
            && let Some(keys) = unknown.get(err.instance_path().as_str())
            && let Some(prop) = property.as_str()
            && keys.iter().any(|k| nearest(k, [prop]).is_some())
        {
            continue;
        }
        map_error(locator, err, out);
    }
}

/// True for `anyOf`/`oneOf` failures, whose branches hold the real errors.
fn is_combinator(kind: &ValidationErrorKind) -> bool {
    matches!(
        kind,
        ValidationErrorKind::AnyOf { .. }
            | ValidationErrorKind::OneOfNotValid { .. }
            | ValidationErrorKind::OneOfMultipleValid { .. }
    )
}

/// The schema describing the value at `path`, and the name of the last `$ref` followed
/// (`ByteSize`, `Duration`, ...).
pub(crate) fn subschema<'a>(path: &[Segment]) -> (Option<&'a Value>, Option<&'a str>) {
    let root: &'a Value = &SCHEMA;
    let mut s = root;
    let mut last_ref = None;
    let deref = |mut s: &'a Value, last_ref: &mut Option<&'a str>| {
        for _ in 0..16 {
            if let Some(r) = s.get("$ref").and_then(Value::as_str) {
                *last_ref = r.rsplit('/').next();
                match r.strip_prefix('#').and_then(|p| root.pointer(p)) {
                    Some(t) => s = t,
                    None => break,
                }
                continue;
            }
            // `allOf: [x]` (a described `$ref`) and `anyOf: [x, null]` (an `Option`).
            if let Some(Value::Array(all)) = s.get("allOf")
                && all.len() == 1
            {
                s = &all[0];
                continue;
            }
            if let Some(Value::Array(any)) = s.get("anyOf") {
                let non_null: Vec<&Value> = any
                    .iter()
                    .filter(|b| b.get("type") != Some(&Value::from("null")))
                    .collect();
                if non_null.len() == 1 && any.len() == 2 {
                    s = non_null[0];
                    continue;
                }
            }
            break;
        }
        s
    };
    s = deref(s, &mut last_ref);
    for seg in path {
        let mut candidates: Vec<&'a Value> = vec![s];
        for k in ["anyOf", "oneOf"] {
            if let Some(Value::Array(branches)) = s.get(k) {
                candidates.extend(branches.iter().map(|b| deref(b, &mut None)));
            }
        }
        let next = candidates.iter().find_map(|c| match seg {
            Segment::Key(k) => c
                .get("properties")
                .and_then(|p| p.get(k))
                .or_else(|| c.get("additionalProperties").filter(|a| a.is_object())),
            Segment::Index(_) => c.get("items").filter(|a| a.is_object()),
        });
        match next {
            Some(n) => {
                last_ref = None;
                s = deref(n, &mut last_ref);
            }
            None => return (None, None),
        }
    }
    (Some(s), last_ref)
}

/// The keys a mapping described by `schema` may have.
fn valid_keys(schema: Option<&Value>) -> Vec<String> {
    schema
        .and_then(|s| s.get("properties"))
        .and_then(Value::as_object)
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
}

/// The last mapping key of `path`: what a message calls the value.
pub(crate) fn last_key(path: &[Segment]) -> Option<&str> {
    path.iter().rev().find_map(|s| match s {
        Segment::Key(k) => Some(k.as_str()),
        Segment::Index(_) => None,
    })
}

/// The description of `schema` (the doc comment of the Rust type or field).
fn describe(schema: Option<&Value>) -> Option<String> {
    schema
        .and_then(|s| s.get("description"))
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// A value the schema rejected: where it is, and what the schema says about that place.
struct Rejected<'a> {
    /// Its manifest path.
    path: Vec<Segment>,
    /// The value.
    value: &'a Value,
    /// The schema that describes it.
    schema: Option<&'static Value>,
    /// The name of the definition that schema follows (`ByteSize`, `Duration`, ...).
    definition: Option<&'static str>,
}

impl Rejected<'_> {
    /// What messages call the value: its key.
    fn what(&self) -> &str {
        last_key(&self.path).unwrap_or("value")
    }

    /// An error at the value.
    fn error(&self, locator: &Locator<'_>, message: String) -> Diagnostic {
        locator.at(&self.path, Severity::Error, message)
    }
}

/// Turns one schema error into diagnostics at the offending value.
fn map_error(
    locator: &Locator<'_>,
    err: &jsonschema::ValidationError<'_>,
    out: &mut Vec<Diagnostic>,
) {
    let path = node::pointer_segments(locator.tree, err.instance_path().as_str());
    let (schema, definition) = subschema(&path);
    let value: &Value = err.instance();
    let site = Rejected {
        path,
        value,
        schema,
        definition,
    };
    if let Some(d) = unit_error(locator, &site, err.kind()) {
        out.push(d);
        return;
    }
    let d = match err.kind() {
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            out.extend(unknown_keys(locator, &site, unexpected));
            return;
        }
        ValidationErrorKind::AnyOf { context } | ValidationErrorKind::OneOfNotValid { context } => {
            alternatives(locator, &site, err, context, out);
            return;
        }
        ValidationErrorKind::Required { property } => missing_key(locator, &site, property),
        ValidationErrorKind::Enum { options } => {
            let values: Vec<String> = options
                .as_array()
                .map(|a| a.iter().map(show).collect())
                .unwrap_or_default();
            enum_error(locator, &site, &values)
        }
        ValidationErrorKind::Type { kind } => wrong_type(locator, &site, kind),
        ValidationErrorKind::Minimum { limit }
        | ValidationErrorKind::ExclusiveMinimum { limit } => too_small(locator, &site, limit),
        ValidationErrorKind::Maximum { limit }
        | ValidationErrorKind::ExclusiveMaximum { limit } => site
            .error(
                locator,
                format!(
                    "`{}` must be at most {limit}, not {}",
                    site.what(),
                    show(site.value)
                ),
            )
            .with_label("too large"),
        ValidationErrorKind::MinItems { limit } => too_few_items(locator, &site, *limit),
        ValidationErrorKind::Pattern { .. } => bad_pattern(locator, &site),
        ValidationErrorKind::Constant { expected_value } => site
            .error(
                locator,
                format!("`{}` must be `{}`", site.what(), show(expected_value)),
            )
            .with_label("unexpected value"),
        _ => site
            .error(
                locator,
                format!("`{}`: {err}", node::format_path(&site.path)),
            )
            .with_help_opt(describe(site.schema)),
    };
    out.push(d);
}

/// A size or duration with the wrong syntax, reported with the unit syntax whatever the
/// schema's way of saying so.
fn unit_error(
    locator: &Locator<'_>,
    site: &Rejected<'_>,
    kind: &ValidationErrorKind,
) -> Option<Diagnostic> {
    match site.definition {
        Some("ByteSize")
            if matches!(
                kind,
                ValidationErrorKind::Minimum { .. }
                    | ValidationErrorKind::Pattern { .. }
                    | ValidationErrorKind::Type { .. }
                    | ValidationErrorKind::AnyOf { .. }
                    | ValidationErrorKind::OneOfNotValid { .. }
            ) =>
        {
            Some(size_error(locator, &site.path, site.what(), site.value))
        }
        Some("Duration")
            if matches!(
                kind,
                ValidationErrorKind::Pattern { .. }
                    | ValidationErrorKind::Type { .. }
                    | ValidationErrorKind::AnyOf { .. }
            ) =>
        {
            Some(
                site.error(
                    locator,
                    format!(
                        "`{}`: `{}` is not a duration",
                        site.what(),
                        show(site.value)
                    ),
                )
                .with_label("not a duration")
                .with_help(DURATION_SYNTAX),
            )
        }
        _ => None,
    }
}

/// Unknown keys of a mapping, each at the key, with the valid keys and "did you mean".
fn unknown_keys(
    locator: &Locator<'_>,
    site: &Rejected<'_>,
    unexpected: &[String],
) -> Vec<Diagnostic> {
    let keys = valid_keys(site.schema);
    let list = format!("valid keys here: {}", backticked(&keys));
    unexpected
        .iter()
        .map(|key| {
            let mut key_path = site.path.clone();
            key_path.push(Segment::Key(key.clone()));
            let d = locator
                .at_key(&key_path, Severity::Error, format!("unknown key `{key}`"))
                .with_label("unknown key");
            match nearest(key, keys.iter().map(String::as_str)) {
                Some(n) => {
                    let mut d = d.with_help(format!("rename it to `{n}`; {list}"));
                    d.message = format!("unknown key `{key}`, did you mean `{n}`?");
                    d
                }
                None => d.with_help(list.clone()),
            }
        })
        .collect()
}

/// A required key that is missing, with what it is for.
fn missing_key(locator: &Locator<'_>, site: &Rejected<'_>, property: &Value) -> Diagnostic {
    let prop = show(property);
    let prop_schema = site
        .schema
        .and_then(|s| s.get("properties"))
        .and_then(|p| p.get(&prop));
    let help = if prop == "omnipack" {
        "add `omnipack: 1` as the first key".to_string()
    } else {
        match describe(prop_schema) {
            Some(desc) => format!("add `{prop}:`. {desc}"),
            None => format!("add `{prop}:`"),
        }
    };
    let where_ = if site.path.is_empty() {
        "the manifest".to_string()
    } else {
        format!("`{}`", node::format_path(&site.path))
    };
    site.error(
        locator,
        format!("missing required key `{prop}` in {where_}"),
    )
    .with_label(format!("`{prop}` missing here"))
    .with_help(help)
}

/// A value that matches none of the alternatives (`anyOf`/`oneOf`): a documented enum, or the
/// errors of the alternative that has the value's shape.
fn alternatives(
    locator: &Locator<'_>,
    site: &Rejected<'_>,
    err: &jsonschema::ValidationError<'_>,
    context: &[Vec<jsonschema::ValidationError<'_>>],
    out: &mut Vec<Diagnostic>,
) {
    // A documented enum: `oneOf` of `const`s.
    let consts: Option<Vec<String>> = context
        .iter()
        .map(|branch| match branch.as_slice() {
            [one] => match one.kind() {
                ValidationErrorKind::Constant { expected_value } => Some(show(expected_value)),
                _ => None,
            },
            _ => None,
        })
        .collect();
    if let Some(values) = consts.filter(|v| !v.is_empty()) {
        out.push(enum_error(locator, site, &values));
        return;
    }
    // Pick the alternative that matches the value's shape and report its errors.
    let here = err.instance_path().as_str();
    // Prefer an alternative whose errors are all inside the value (the value has its
    // shape), then one without a type mismatch at the value itself.
    let deeper =
        |b: &jsonschema::ValidationError<'_>| b.instance_path().as_str().len() > here.len();
    // A failed enum (`oneOf` of constants) at the value is a mismatch of shape too.
    let shape_mismatch = |b: &jsonschema::ValidationError<'_>| {
        b.instance_path().as_str() == here
            && (matches!(b.kind(), ValidationErrorKind::Type { .. }) || is_combinator(b.kind()))
    };
    let best = context
        .iter()
        .find(|branch| !branch.is_empty() && branch.iter().all(deeper))
        .or_else(|| {
            context
                .iter()
                .find(|branch| !branch.is_empty() && !branch.iter().any(shape_mismatch))
        })
        .or_else(|| {
            context.iter().find(|branch| {
                !branch.is_empty()
                    && !branch.iter().any(|b| {
                        b.instance_path().as_str() == here
                            && matches!(b.kind(), ValidationErrorKind::Type { .. })
                    })
            })
        });
    match best {
        Some(branch) => map_errors(locator, branch.iter(), out),
        None => out.push(
            site.error(
                locator,
                format!("`{}` cannot be {}", site.what(), kind_of(site.value)),
            )
            .with_label("wrong kind of value")
            .with_help_opt(describe(site.schema)),
        ),
    }
}

/// A value of the wrong type, with the expected one and how to write it.
fn wrong_type(locator: &Locator<'_>, site: &Rejected<'_>, kind: &TypeKind) -> Diagnostic {
    let what = site.what();
    let expected = match kind {
        TypeKind::Single(t) => article(&t.to_string()),
        TypeKind::Multiple(ts) => ts
            .iter()
            .map(|t| t.to_string())
            .filter(|t| t != "null")
            .map(|t| article(&t))
            .collect::<Vec<_>>()
            .join(" or "),
    };
    let d = site
        .error(
            locator,
            format!("`{what}` must be {expected}, not {}", kind_of(site.value)),
        )
        .with_label(format!("expected {expected}"));
    if site.definition == Some("Duration") {
        d.with_help(DURATION_SYNTAX)
    } else if expected == "a string" && matches!(site.value, Value::Number(_) | Value::Bool(_)) {
        let written = locator
            .source_text(&site.path)
            .unwrap_or_else(|| show(site.value));
        d.with_help(format!("quote it: `{what}: \"{written}\"`"))
    } else {
        d.with_help_opt(describe(site.schema).map(|desc| format!("`{what}`: {desc}")))
    }
}

/// A number below the minimum (negative, or zero where at least 1 is needed).
fn too_small(locator: &Locator<'_>, site: &Rejected<'_>, limit: &Value) -> Diagnostic {
    let (what, value) = (site.what(), site.value);
    let negative = value.as_i64().is_some_and(|v| v < 0) || value.as_f64().is_some_and(|v| v < 0.0);
    let msg = if negative {
        format!("`{what}` cannot be negative ({})", show(value))
    } else {
        format!("`{what}` must be at least {limit}, not {}", show(value))
    };
    site.error(locator, msg)
        .with_label("too small")
        .with_help(format!("use a whole number of at least {limit}"))
}

/// A list shorter than allowed (an empty preference list or shard list).
fn too_few_items(locator: &Locator<'_>, site: &Rejected<'_>, limit: u64) -> Diagnostic {
    let what = site.what();
    let msg = if limit == 1 {
        format!("`{what}` cannot be empty")
    } else {
        format!("`{what}` needs at least {limit} items")
    };
    let help = if site.definition.is_some_and(|r| r.starts_with("OneOrMany")) {
        Some(format!(
            "give `{what}` one value, or a list of at least one value"
        ))
    } else {
        describe(site.schema)
    };
    site.error(locator, msg)
        .with_label("empty list")
        .with_help_opt(help)
}

/// A string that does not match its pattern: a name, a bundle id, an artifact, a duration.
fn bad_pattern(locator: &Locator<'_>, site: &Rejected<'_>) -> Diagnostic {
    let what = site.what();
    let got = show(site.value);
    let (msg, help) = match (site.definition, what) {
        (Some("Duration"), _) | (_, "timeout") => (format!("`{got}` is not a duration"), DURATION_SYNTAX.to_string()),
        (_, "bundle_id") => (
            format!("`{got}` is not a valid bundle id"),
            "use a reverse-DNS name of letters, digits and `-` separated by dots, such as `com.example.app`".to_string(),
        ),
        (_, "asset_pack_prefix") => (
            format!("`{got}` is not a valid asset-pack prefix"),
            "use letters, digits and single `-` between them, such as `omnicoder` (App Store Connect refuses `.` in asset-pack IDs; see docs/build.md)".to_string(),
        ),
        (_, "artifact") => (
            format!("`{got}` is not a valid artifact name"),
            "use letters, digits, `_`, `-` and `.`, starting with a letter or digit (it names files in the bundle)"
                .to_string(),
        ),
        _ => (
            format!("`{got}` is not a valid `{what}`"),
            "use lowercase letters, digits, `_` and `-`, starting with a letter or digit (names become file names and bundle ids)"
                .to_string(),
        ),
    };
    site.error(locator, msg)
        .with_label("not allowed here")
        .with_help(help)
}

/// A value that is not one of the valid ones, with the list and "did you mean".
fn enum_error(locator: &Locator<'_>, site: &Rejected<'_>, values: &[String]) -> Diagnostic {
    let got = show(site.value);
    let what = site.what();
    if what == "omnipack" {
        return site
            .error(locator, format!("unsupported manifest version `{got}`"))
            .with_label("not a known version")
            .with_help("this omnipack reads `omnipack: 1`");
    }
    let mut help = format!("valid values: {}", backticked(values));
    if let Some(n) = nearest(&got, values.iter().map(String::as_str)) {
        help = format!("did you mean `{n}`? {help}");
    }
    site.error(locator, format!("`{got}` is not a valid `{what}`"))
        .with_label("not one of the valid values")
        .with_help(help)
}

/// `an integer`, `a mapping`, ... for a JSON Schema type name.
fn article(t: &str) -> String {
    match t {
        "integer" => "an integer".into(),
        "object" => "a mapping".into(),
        "array" => "a list".into(),
        "null" => "empty".into(),
        other => format!("a {other}"),
    }
}

/// What kind of value `v` is, for "must be X, not Y".
fn kind_of(v: &Value) -> String {
    match v {
        Value::Null => "empty".into(),
        Value::Bool(b) => format!("a boolean (`{b}`)"),
        Value::Number(n) if n.is_f64() => format!("a decimal number (`{n}`)"),
        Value::Number(n) => format!("an integer (`{n}`)"),
        Value::String(s) => format!("a string (`{s}`)"),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a mapping".into(),
    }
}

/// A value that is not a size, with the reason when it looks like one, and the unit syntax.
pub(crate) fn size_error(
    locator: &Locator<'_>,
    path: &[Segment],
    what: &str,
    instance: &Value,
) -> Diagnostic {
    let got = show(instance);
    let reason = match instance {
        Value::String(s) => parse_size(s).err().map(|e| e.0),
        Value::Number(n)
            if n.as_i64().is_some_and(|v| v < 0) || n.as_f64().is_some_and(|v| v < 0.0) =>
        {
            Some(format!("a size cannot be negative ({n})"))
        }
        _ => None,
    };
    let message = match reason {
        Some(r) => format!("`{what}`: {r}"),
        None => format!("`{what}`: `{got}` is not a size"),
    };
    locator
        .at(path, Severity::Error, message)
        .with_label("not a size")
        .with_help(SIZE_SYNTAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subschema_follows_refs() {
        let key = |k: &str| Segment::Key(k.to_string());
        let (s, r) = subschema(&[key("tiers"), Segment::Index(0), key("memory_limit")]);
        assert!(s.is_some());
        assert_eq!(r, Some("ByteSize"));
        let (s, _) = subschema(&[key("components"), Segment::Index(0)]);
        assert!(valid_keys(s).contains(&"quantization".to_string()));
    }
}
