//! Validation: the JSON schema (with errors mapped back to YAML locations and turned into
//! advice), then the semantic rules no schema can express. Both run on the merged tree and
//! report every problem they find.

use std::io::Read;
use std::path::Path;
use std::sync::LazyLock;

use jsonschema::error::{TypeKind, ValidationErrorKind};
use serde_json::Value;

use crate::diagnostic::{Diagnostic, Severity};
use crate::did_you_mean::{nearest, nearest_in_folder};
use crate::locate::Locator;
use crate::node::{self, Segment};
use crate::rel_path::{self, is_absolute, normalize, shown};
use crate::schema::SCHEMA;
use crate::units::{DURATION_SYNTAX, SIZE_SYNTAX, parse_duration, parse_size};

static VALIDATOR: LazyLock<Result<jsonschema::Validator, String>> = LazyLock::new(|| {
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft7)
        .build(&SCHEMA)
        .map_err(|e| e.to_string())
});

/// Checks `json` against the manifest schema.
pub(crate) fn schema_diagnostics(locator: &Locator<'_>, json: &Value) -> Vec<Diagnostic> {
    let validator = match &*VALIDATOR {
        Ok(v) => v,
        Err(e) => {
            return vec![Diagnostic::error(
                "",
                format!("internal error: the manifest schema does not compile: {e}"),
            )];
        }
    };
    let errors: Vec<jsonschema::ValidationError<'_>> = validator.iter_errors(json).collect();
    let mut out = Vec::new();
    map_errors(locator, errors.iter(), &mut out);
    let mut reported = std::collections::HashSet::new();
    error_paths(errors.iter(), &mut reported);
    unrepresentable_values(locator, json, &mut String::new(), &reported, &mut out);
    out
}

/// The instance paths of `errors` and of the errors inside their `anyOf`/`oneOf` branches.
fn error_paths<'e, 'v: 'e>(
    errors: impl Iterator<Item = &'e jsonschema::ValidationError<'v>>,
    out: &mut std::collections::HashSet<String>,
) {
    for e in errors {
        out.insert(e.instance_path().as_str().to_string());
        if let ValidationErrorKind::AnyOf { context }
        | ValidationErrorKind::OneOfNotValid { context } = e.kind()
        {
            for branch in context {
                error_paths(branch.iter(), out);
            }
        }
    }
}

/// The same value without mapping entries whose value is null (list items are kept, so
/// indices, and therefore locations, do not change).
pub(crate) fn without_null_entries(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_null_entries(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(without_null_entries).collect()),
        other => other.clone(),
    }
}

/// Values the JSON schema accepts but the typed manifest cannot hold: a decimal number with
/// no fraction (`2048.0`, `1e3`) or an integer beyond 64 bits where a whole number is
/// expected (JSON Schema counts both as integers), and size or duration strings that match
/// the unit syntax but overflow. Values the schema already reported are skipped.
fn unrepresentable_values(
    locator: &Locator<'_>,
    v: &Value,
    pointer: &mut String,
    reported: &std::collections::HashSet<String>,
    out: &mut Vec<Diagnostic>,
) {
    match v {
        Value::Object(m) => {
            for (k, item) in m {
                let len = pointer.len();
                pointer.push('/');
                pointer.push_str(&k.replace('~', "~0").replace('/', "~1"));
                unrepresentable_values(locator, item, pointer, reported, out);
                pointer.truncate(len);
            }
            return;
        }
        Value::Array(a) => {
            for (i, item) in a.iter().enumerate() {
                let len = pointer.len();
                pointer.push_str(&format!("/{i}"));
                unrepresentable_values(locator, item, pointer, reported, out);
                pointer.truncate(len);
            }
            return;
        }
        _ => {}
    }
    if reported.contains(pointer.as_str()) {
        return;
    }
    let path = node::pointer_segments(locator.tree, pointer);
    let (schema, ref_name) = subschema(&path);
    let what = last_key(&path).unwrap_or("value");
    match v {
        Value::Number(n) => {
            let Some(f) = n.as_f64().filter(|_| n.is_f64()) else {
                return;
            };
            let integer_only = schema.and_then(|s| s.get("type")).is_some_and(|t| {
                let has = |name: &str| match t {
                    Value::String(s) => s == name,
                    Value::Array(a) => a.iter().any(|x| x == name),
                    _ => false,
                };
                has("integer") && !has("number")
            });
            // A size may be written as a number with a fraction; it is rounded down.
            let in_range = (0.0..18_446_744_073_709_551_616.0).contains(&f);
            if !integer_only || (ref_name == Some("ByteSize") && in_range) {
                return;
            }
            let written = locator.source_text(&path).unwrap_or_else(|| n.to_string());
            let d = if in_range || f < 0.0 && f >= i64::MIN as f64 {
                locator
                    .at(
                        &path,
                        Severity::Error,
                        format!("`{what}` must be a whole number, not `{written}`"),
                    )
                    .with_label("not a whole number")
                    .with_help(format!(
                        "write it without a decimal point or exponent, such as `{what}: {}`",
                        f as i128
                    ))
            } else {
                locator
                    .at(
                        &path,
                        Severity::Error,
                        format!("`{what}`: `{written}` is too large"),
                    )
                    .with_label("too large")
                    .with_help(format!("the largest value is {}", u64::MAX))
            };
            out.push(d.with_path(node::format_path(&path)));
        }
        Value::String(s) => {
            if ref_name == Some("ByteSize") && parse_size(s).is_err() {
                out.push(size_error(locator, &path, what, v).with_path(node::format_path(&path)));
            } else if ref_name == Some("Duration") && parse_duration(s).is_err() {
                out.push(
                    locator
                        .at(
                            &path,
                            Severity::Error,
                            format!("`{what}`: `{s}` is too long a duration"),
                        )
                        .with_label("too long")
                        .with_help(DURATION_SYNTAX)
                        .with_path(node::format_path(&path)),
                );
            }
        }
        _ => {}
    }
}

/// Maps errors, skipping an `anyOf`/`oneOf` failure when a plainer error (such as "not one of
/// the valid values") was reported for the same value.
fn map_errors<'e, 'v: 'e>(
    locator: &Locator<'_>,
    errors: impl Iterator<Item = &'e jsonschema::ValidationError<'v>> + Clone,
    out: &mut Vec<Diagnostic>,
) {
    let simple_paths: std::collections::HashSet<String> = errors
        .clone()
        .filter(|e| !is_combinator(e.kind()))
        .map(|e| e.instance_path().as_str().to_string())
        .collect();
    // Unknown keys per mapping: a missing key with a misspelt twin is reported once, as the
    // misspelling.
    let mut unknown: std::collections::HashMap<String, Vec<String>> =
        std::collections::HashMap::new();
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

fn is_combinator(kind: &ValidationErrorKind) -> bool {
    matches!(
        kind,
        ValidationErrorKind::AnyOf { .. }
            | ValidationErrorKind::OneOfNotValid { .. }
            | ValidationErrorKind::OneOfMultipleValid { .. }
    )
}

/// The schema describing the value at `path`, and the name of the last `$ref` followed.
fn subschema<'a>(path: &[Segment]) -> (Option<&'a Value>, Option<&'a str>) {
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

fn valid_keys(schema: Option<&Value>) -> Vec<String> {
    schema
        .and_then(|s| s.get("properties"))
        .and_then(Value::as_object)
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
}

fn backticked(items: &[String]) -> String {
    items
        .iter()
        .map(|i| format!("`{i}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn last_key(path: &[Segment]) -> Option<&str> {
    path.iter().rev().find_map(|s| match s {
        Segment::Key(k) => Some(k.as_str()),
        Segment::Index(_) => None,
    })
}

fn describe(schema: Option<&Value>) -> Option<String> {
    schema
        .and_then(|s| s.get("description"))
        .and_then(Value::as_str)
        .map(str::to_string)
}

fn map_error(
    locator: &Locator<'_>,
    err: &jsonschema::ValidationError<'_>,
    out: &mut Vec<Diagnostic>,
) {
    let path = node::pointer_segments(locator.tree, err.instance_path().as_str());
    let shown = node::format_path(&path);
    let instance: &Value = err.instance();
    let (schema, ref_name) = subschema(&path);
    let what = last_key(&path).unwrap_or("value");
    let e = Severity::Error;
    if ref_name == Some("ByteSize")
        && matches!(
            err.kind(),
            ValidationErrorKind::Minimum { .. }
                | ValidationErrorKind::Pattern { .. }
                | ValidationErrorKind::Type { .. }
        )
    {
        out.push(size_error(locator, &path, what, instance));
        return;
    }
    if ref_name == Some("Duration")
        && matches!(
            err.kind(),
            ValidationErrorKind::Pattern { .. }
                | ValidationErrorKind::Type { .. }
                | ValidationErrorKind::AnyOf { .. }
        )
    {
        out.push(
            locator
                .at(
                    &path,
                    e,
                    format!("`{what}`: `{}` is not a duration", show(instance)),
                )
                .with_label("not a duration")
                .with_help(DURATION_SYNTAX),
        );
        return;
    }
    match err.kind() {
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            let keys = valid_keys(schema);
            for key in unexpected {
                let mut key_path = path.clone();
                key_path.push(Segment::Key(key.clone()));
                let mut d = locator
                    .at_key(&key_path, e, format!("unknown key `{key}`"))
                    .with_label("unknown key");
                let list = format!("valid keys here: {}", backticked(&keys));
                d = match nearest(key, keys.iter().map(String::as_str)) {
                    Some(n) => {
                        d.message = format!("unknown key `{key}`, did you mean `{n}`?");
                        d.with_help(format!("rename it to `{n}`; {list}"))
                    }
                    None => d.with_help(list),
                };
                out.push(d);
            }
        }
        ValidationErrorKind::Required { property } => {
            let prop = show(property);
            let prop_schema = schema
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
            let where_ = if path.is_empty() {
                "the manifest".to_string()
            } else {
                format!("`{shown}`")
            };
            out.push(
                locator
                    .at(
                        &path,
                        e,
                        format!("missing required key `{prop}` in {where_}"),
                    )
                    .with_label(format!("`{prop}` missing here"))
                    .with_help(help),
            );
        }
        ValidationErrorKind::Enum { options } => {
            let values: Vec<String> = options
                .as_array()
                .map(|a| a.iter().map(show).collect())
                .unwrap_or_default();
            out.push(enum_error(locator, &path, what, instance, &values));
        }
        ValidationErrorKind::AnyOf { context } | ValidationErrorKind::OneOfNotValid { context } => {
            if ref_name == Some("ByteSize") {
                out.push(size_error(locator, &path, what, instance));
                return;
            }
            // A documented enum: `oneOf` of `const`s.
            let consts: Option<Vec<String>> = context
                .iter()
                .map(|branch| match branch.as_slice() {
                    [one] => match one.kind() {
                        ValidationErrorKind::Constant { expected_value } => {
                            Some(show(expected_value))
                        }
                        _ => None,
                    },
                    _ => None,
                })
                .collect();
            if let Some(values) = consts.filter(|v| !v.is_empty()) {
                out.push(enum_error(locator, &path, what, instance, &values));
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
                    && (matches!(b.kind(), ValidationErrorKind::Type { .. })
                        || is_combinator(b.kind()))
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
                    locator
                        .at(
                            &path,
                            e,
                            format!("`{what}` cannot be {}", kind_of(instance)),
                        )
                        .with_label("wrong kind of value")
                        .with_help_opt(describe(schema)),
                ),
            }
        }
        ValidationErrorKind::Type { kind } => {
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
            let mut d = locator
                .at(
                    &path,
                    e,
                    format!("`{what}` must be {expected}, not {}", kind_of(instance)),
                )
                .with_label(format!("expected {expected}"));
            if ref_name == Some("Duration") {
                d = d.with_help(DURATION_SYNTAX);
            } else if expected == "a string"
                && matches!(instance, Value::Number(_) | Value::Bool(_))
            {
                let written = locator.source_text(&path).unwrap_or_else(|| show(instance));
                d = d.with_help(format!("quote it: `{what}: \"{written}\"`"));
            } else if let Some(desc) = describe(schema) {
                d = d.with_help(format!("`{what}`: {desc}"));
            }
            out.push(d);
        }
        ValidationErrorKind::Minimum { limit }
        | ValidationErrorKind::ExclusiveMinimum { limit } => {
            let negative = instance.as_i64().is_some_and(|v| v < 0)
                || instance.as_f64().is_some_and(|v| v < 0.0);
            let msg = if negative {
                format!("`{what}` cannot be negative ({})", show(instance))
            } else {
                format!("`{what}` must be at least {limit}, not {}", show(instance))
            };
            out.push(
                locator
                    .at(&path, e, msg)
                    .with_label("too small")
                    .with_help(format!("use a whole number of at least {limit}")),
            );
        }
        ValidationErrorKind::Maximum { limit }
        | ValidationErrorKind::ExclusiveMaximum { limit } => {
            out.push(
                locator
                    .at(
                        &path,
                        e,
                        format!("`{what}` must be at most {limit}, not {}", show(instance)),
                    )
                    .with_label("too large"),
            );
        }
        ValidationErrorKind::MinItems { limit } => {
            let msg = if *limit == 1 {
                format!("`{what}` cannot be empty")
            } else {
                format!("`{what}` needs at least {limit} items")
            };
            out.push(
                locator
                    .at(&path, e, msg)
                    .with_label("empty list")
                    .with_help_opt(if ref_name.is_some_and(|r| r.starts_with("OneOrMany")) {
                        Some(format!(
                            "give `{what}` one value, or a list of at least one value"
                        ))
                    } else {
                        describe(schema)
                    }),
            );
        }
        ValidationErrorKind::Pattern { .. } => {
            let got = show(instance);
            let (msg, help) = match (ref_name, what) {
                (Some("Duration"), _) | (_, "timeout") => (format!("`{got}` is not a duration"), DURATION_SYNTAX.to_string()),
                (_, "bundle_id") => (
                    format!("`{got}` is not a valid bundle id"),
                    "use a reverse-DNS name of letters, digits and `-` separated by dots, such as `com.example.app`".to_string(),
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
            out.push(
                locator
                    .at(&path, e, msg)
                    .with_label("not allowed here")
                    .with_help(help),
            );
        }
        ValidationErrorKind::Constant { expected_value } => {
            out.push(
                locator
                    .at(
                        &path,
                        e,
                        format!("`{what}` must be `{}`", show(expected_value)),
                    )
                    .with_label("unexpected value"),
            );
        }
        _ => {
            out.push(
                locator
                    .at(&path, e, format!("`{shown}`: {err}"))
                    .with_help_opt(describe(schema)),
            );
        }
    }
}

fn enum_error(
    locator: &Locator<'_>,
    path: &[Segment],
    what: &str,
    instance: &Value,
    values: &[String],
) -> Diagnostic {
    let got = show(instance);
    if what == "omnipack" {
        return locator
            .at(
                path,
                Severity::Error,
                format!("unsupported manifest version `{got}`"),
            )
            .with_label("not a known version")
            .with_help("this omnipack reads `omnipack: 1`");
    }
    let mut help = format!("valid values: {}", backticked(values));
    if let Some(n) = nearest(&got, values.iter().map(String::as_str)) {
        help = format!("did you mean `{n}`? {help}");
    }
    locator
        .at(
            path,
            Severity::Error,
            format!("`{got}` is not a valid `{what}`"),
        )
        .with_label("not one of the valid values")
        .with_help(help)
}

fn article(t: &str) -> String {
    match t {
        "integer" => "an integer".into(),
        "object" => "a mapping".into(),
        "array" => "a list".into(),
        "null" => "empty".into(),
        other => format!("a {other}"),
    }
}

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

fn size_error(locator: &Locator<'_>, path: &[Segment], what: &str, instance: &Value) -> Diagnostic {
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

// ---------------------------------------------------------------------------------------
// Semantic rules.

fn key(k: &str) -> Segment {
    Segment::Key(k.to_string())
}

fn as_list(v: Option<&Value>) -> Vec<(Option<usize>, &Value)> {
    match v {
        Some(Value::Array(a)) => a.iter().enumerate().map(|(i, v)| (Some(i), v)).collect(),
        Some(other) => vec![(None, other)],
        None => Vec::new(),
    }
}

fn size_of(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => parse_size(s).ok(),
        _ => None,
    }
}

const INT_FORMATS: [&str; 5] = ["int2", "int3", "int4", "int6", "int8"];

/// Every semantic rule (docs/manifest.md, "Rules beyond the schema"); paths in `json` are
/// relative to `dir`.
pub(crate) fn semantic_diagnostics(
    locator: &Locator<'_>,
    dir: &Path,
    json: &Value,
) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let e = Severity::Error;
    let w = Severity::Warning;
    let empty = Vec::new();
    let tiers = json
        .get("tiers")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    let comps = json
        .get("components")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    let name_of = |v: &Value| v.get("name").and_then(Value::as_str).map(str::to_string);
    let tier_names: Vec<String> = tiers.iter().filter_map(name_of).collect();
    let comp_names: Vec<String> = comps.iter().filter_map(name_of).collect();

    if !tiers.is_empty() && !comps.is_empty() && json.get("package").is_none() {
        out.push(
            locator.at_key(
                &[key("package")],
                e,
                "missing `package`: a manifest with tiers and components needs a package identity",
            )
            .with_label("this manifest has tiers and components")
            .with_path("package")
            .with_help(
                "add `package: { name: myapp, version: 1.0.0, bundle_id: com.example.myapp }`",
            ),
        );
    }

    // Unique names.
    for (list, what, section) in [(tiers, "tier", "tiers"), (comps, "component", "components")] {
        let mut seen: Vec<(String, usize)> = Vec::new();
        for (i, item) in list.iter().enumerate() {
            let Some(name) = name_of(item) else { continue };
            if let Some((_, first)) = seen.iter().find(|(n, _)| *n == name) {
                let first_loc =
                    locator.location(&[key(section), Segment::Index(*first), key("name")]);
                out.push(
                    locator
                        .at(
                            &[key(section), Segment::Index(i), key("name")],
                            e,
                            format!("duplicate {what} name `{name}`"),
                        )
                        .with_label("used twice")
                        .with_help(format!(
                            "{what} names must be unique; the first `{name}` is at {first_loc}"
                        )),
                );
            } else {
                seen.push((name, i));
            }
        }
    }

    // Tiers.
    for (i, t) in tiers.iter().enumerate() {
        let base = [key("tiers"), Segment::Index(i)];
        let tname = name_of(t).unwrap_or_default();
        if let Some(Value::Array(list)) = t.get("components") {
            if list.is_empty() {
                out.push(
                    locator
                        .at(
                            &[&base[..], &[key("components")]].concat(),
                            w,
                            format!("tier `{tname}` ships no components"),
                        )
                        .with_help(
                            "list the components it ships, or remove `components` to ship them all",
                        ),
                );
            }
            for (j, c) in list.iter().enumerate() {
                let Some(c) = c.as_str() else { continue };
                if !comp_names.iter().any(|n| n == c) {
                    let mut help = format!("components: {}", backticked(&comp_names));
                    if let Some(n) = nearest(c, comp_names.iter().map(String::as_str)) {
                        help = format!("did you mean `{n}`? {help}");
                    }
                    out.push(
                        locator
                            .at(
                                &[&base[..], &[key("components"), Segment::Index(j)]].concat(),
                                e,
                                format!("tier `{tname}` names unknown component `{c}`"),
                            )
                            .with_label("no such component")
                            .with_help(help),
                    );
                }
            }
        }
        let device = size_of(t.get("device_memory"));
        let limit = size_of(t.get("memory_limit"));
        let headroom = size_of(t.get("min_headroom"));
        if let (Some(d), Some(l)) = (device, limit)
            && l > d
        {
            out.push(
                locator
                    .at(
                        &[&base[..], &[key("memory_limit")]].concat(),
                        e,
                        format!("tier `{tname}`: `memory_limit` is larger than `device_memory`"),
                    )
                    .with_label("more than the device has")
                    .with_help(format!(
                        "iOS lets an app use only part of the device's memory: use at most {}",
                        crate::units::format_bytes(d)
                    )),
            );
        }
        if let (Some(h), Some(l)) = (headroom, limit)
            && h >= l
        {
            out.push(
                locator.at(
                    &[&base[..], &[key("min_headroom")]].concat(),
                    e,
                    format!("tier `{tname}`: `min_headroom` leaves no memory for the app"),
                )
                .with_label("not below memory_limit")
                .with_help(
                    "min_headroom is a safety margin kept free below memory_limit: make it smaller",
                ),
            );
        }
    }

    // Components.
    for (i, c) in comps.iter().enumerate() {
        let base = [key("components"), Segment::Index(i)];
        let at = |rest: &[Segment]| [&base[..], rest].concat();
        let cname = name_of(c).unwrap_or_default();
        let role = c.get("role").and_then(Value::as_str).unwrap_or("");
        let runtime = c.get("runtime").and_then(Value::as_str).unwrap_or("mlx");
        // Rules that depend on the runtime only make sense for a runtime that exists (a
        // misspelt one is already reported by the schema).
        let known_runtime = ["mlx", "coreml", "mlc", "llama_cpp", "custom"].contains(&runtime);
        let arch = c.get("architecture");

        // Source: exactly one kind.
        if let Some(src) = c.get("source").and_then(Value::as_object) {
            let kinds: Vec<&str> = ["safetensors", "command", "files"]
                .into_iter()
                .filter(|k| src.contains_key(*k))
                .collect();
            if kinds.is_empty() {
                out.push(
                    locator.at(&at(&[key("source")]), e, format!("component `{cname}`: `source` needs one of `safetensors`, `command` or `files`"))
                        .with_label("no source given")
                        .with_help("for example `source: { safetensors: model.safetensors, prefix: text. }`"),
                );
            } else if kinds.len() > 1 {
                out.push(
                    locator
                        .at_key(
                            &at(&[key("source"), key(kinds[1])]),
                            e,
                            format!(
                                "component `{cname}`: `source` has both `{}` and `{}`",
                                kinds[0], kinds[1]
                            ),
                        )
                        .with_label("second source")
                        .with_help("give exactly one of `safetensors`, `command` or `files`"),
                );
            }
            if src.contains_key("prefix") && !src.contains_key("safetensors") {
                out.push(
                    locator
                        .at_key(
                            &at(&[key("source"), key("prefix")]),
                            e,
                            format!("component `{cname}`: `prefix` only applies to `safetensors`"),
                        )
                        .with_label("no safetensors to select from")
                        .with_help(
                            "remove `prefix`, or take the weights from a safetensors checkpoint",
                        ),
                );
            }
            if let Some(cfg) = src.get("config") {
                let cp = at(&[key("source"), key("config")]);
                if !src.contains_key("safetensors") {
                    out.push(
                        locator.at_key(
                            &cp,
                            e,
                            format!("component `{cname}`: `config` only applies to `safetensors`"),
                        )
                        .with_label("no safetensors to describe")
                        .with_help(
                            "remove `config`, or take the weights from a safetensors checkpoint",
                        ),
                    );
                } else if let Some(rel) = cfg.as_str() {
                    match check_config_json(dir, rel) {
                        Err((msg, help)) => out.push(
                            locator
                                .at(&cp, e, format!("component `{cname}`: {msg}"))
                                .with_label("here")
                                .with_help(help),
                        ),
                        Ok(obj) => {
                            // The bundle's config.json takes the architecture from the
                            // manifest: a config that says otherwise describes another model.
                            for (ak, ck) in CONFIG_ARCHITECTURE_KEYS {
                                let (Some(want), Some(got)) = (
                                    arch.and_then(|a| a.get(ak)).and_then(Value::as_u64),
                                    obj.get(ck).and_then(Value::as_u64),
                                ) else {
                                    continue;
                                };
                                if want != got {
                                    out.push(
                                        locator.at(
                                            &at(&[key("architecture"), key(ak)]),
                                            e,
                                            format!(
                                                "component `{cname}`: `architecture.{ak}` is {want} but `{ck}` in `{}` is {got}",
                                                shown(dir, rel)
                                            ),
                                        )
                                        .with_label("disagrees with the config")
                                        .with_help(format!(
                                            "make them agree: the bundle's config.json takes `{ck}` from `architecture.{ak}`"
                                        )),
                                    );
                                }
                            }
                        }
                    }
                }
            }
            for (j, shard) in as_list(src.get("safetensors")) {
                let Some(rel) = shard.as_str() else { continue };
                let mut sp = at(&[key("source"), key("safetensors")]);
                if let Some(j) = j {
                    sp.push(Segment::Index(j));
                }
                if let Some((msg, help)) = check_safetensors(dir, rel) {
                    out.push(
                        locator
                            .at(&sp, e, format!("component `{cname}`: {msg}"))
                            .with_label("here")
                            .with_help(help),
                    );
                }
            }
            if let Some(Value::Array(files)) = src.get("files") {
                let mut names: Vec<(String, usize)> = Vec::new();
                for (j, f) in files.iter().enumerate() {
                    let Some(rel) = f.as_str() else { continue };
                    let full = dir.join(rel);
                    let shown = shown(dir, rel);
                    // Files are packaged flat, under their own names.
                    let base = rel.rsplit(['/', '\\']).next().unwrap_or(rel).to_string();
                    if let Some((_, first)) = names.iter().find(|(n, _)| *n == base) {
                        let first_loc = locator.location(&at(&[
                            key("source"),
                            key("files"),
                            Segment::Index(*first),
                        ]));
                        out.push(
                            locator.at(
                                &at(&[key("source"), key("files"), Segment::Index(j)]),
                                e,
                                format!("component `{cname}`: two files named `{base}`"),
                            )
                            .with_label("same file name")
                            .with_help(format!(
                                "files are packaged under their own names, so `{base}` (also at {first_loc}) would be overwritten: rename one"
                            )),
                        );
                    }
                    names.push((base, j));
                    let sp = at(&[key("source"), key("files"), Segment::Index(j)]);
                    match std::fs::metadata(&full) {
                        Ok(m) if m.is_file() => {}
                        Ok(_) => out.push(
                            locator
                                .at(
                                    &sp,
                                    e,
                                    format!("component `{cname}`: `{shown}` is not a file"),
                                )
                                .with_label("not a file")
                                .with_help("list the files to ship one by one"),
                        ),
                        Err(_) => out.push(
                            locator
                                .at(
                                    &sp,
                                    e,
                                    format!("component `{cname}`: `{shown}` does not exist"),
                                )
                                .with_label("file not found")
                                .with_help("paths are relative to the manifest that names them"),
                        ),
                    }
                }
            }
            if let Some(cmd) = src.get("command").and_then(Value::as_object) {
                if let Some(Value::Array(run)) = cmd.get("run") {
                    for (j, arg) in run.iter().enumerate() {
                        let Some(arg) = arg.as_str() else { continue };
                        let sp =
                            at(&[key("source"), key("command"), key("run"), Segment::Index(j)]);
                        if j == 0 && arg.trim().is_empty() {
                            out.push(
                                locator.at(&sp, e, format!("component `{cname}`: the exporter command is empty"))
                                    .with_label("no program")
                                    .with_help("the first item of `run` is the program, for example `python3` or `sh`"),
                            );
                        }
                        for name in placeholders(arg) {
                            if PLACEHOLDERS.contains(&name) {
                                continue;
                            }
                            let list = PLACEHOLDERS
                                .iter()
                                .map(|p| format!("`{{{p}}}`"))
                                .collect::<Vec<_>>()
                                .join(" ");
                            let similar = nearest(name, PLACEHOLDERS).or_else(|| {
                                PLACEHOLDERS
                                    .into_iter()
                                    .find(|p| name.starts_with(p) || p.starts_with(name))
                            });
                            let help = match similar {
                                Some(n) => format!("did you mean `{{{n}}}`? placeholders: {list}"),
                                None => format!("placeholders: {list}"),
                            };
                            out.push(
                                locator.at(&sp, e, format!("component `{cname}`: unknown placeholder `{{{name}}}` in the exporter command"))
                                    .with_label("unknown placeholder")
                                    .with_help(help),
                            );
                        }
                    }
                }
                if let Some(Value::Array(inputs)) = cmd.get("inputs") {
                    for (j, f) in inputs.iter().enumerate() {
                        let Some(rel) = f.as_str() else { continue };
                        if std::fs::metadata(dir.join(rel)).is_err() {
                            out.push(
                                locator.at(
                                    &at(&[key("source"), key("command"), key("inputs"), Segment::Index(j)]),
                                    e,
                                    format!("component `{cname}`: exporter input `{}` does not exist", shown(dir, rel)),
                                )
                                .with_label("not found")
                                .with_help("inputs are hashed into the cache key, so they must exist; paths are relative to the manifest that names them"),
                            );
                        }
                    }
                }
                if let Some(Value::Array(outputs)) = cmd.get("outputs") {
                    for (j, o) in outputs.iter().enumerate() {
                        let Some(o) = o.as_str() else { continue };
                        if let Some(problem) = output_problem(o) {
                            out.push(
                                locator.at(
                                    &at(&[key("source"), key("command"), key("outputs"), Segment::Index(j)]),
                                    e,
                                    format!("component `{cname}`: exporter output `{o}` {problem}"),
                                )
                                .with_label("outside the stage folder")
                                .with_help("outputs are paths relative to the exporter's `{out}` folder, such as `model.mlpackage` or `tokenizer/tokenizer.json`"),
                            );
                        }
                    }
                }
            }
        }

        // Architecture and KV cache.
        if role == "text_decode_step" && arch.is_none() {
            out.push(
                locator.at(&at(&[key("role")]), e, format!("component `{cname}`: a `text_decode_step` needs `architecture`"))
                    .with_label("needs architecture")
                    .with_help("add `architecture: { layers: .., kv_heads: .., kv_head_dim: .., hidden_size: .., vocab_size: .. }`: the memory model sizes the KV cache and activations from it"),
            );
        }
        if ["image_decoder", "video_decoder", "data"].contains(&role) {
            for k in ["kv_cache", "architecture"] {
                if c.get(k).is_some() {
                    out.push(
                        locator
                            .at_key(
                                &at(&[key(k)]),
                                w,
                                format!("component `{cname}`: `{k}` is ignored for role `{role}`"),
                            )
                            .with_label("ignored")
                            .with_help("only a `text_decode_step` has a KV cache"),
                    );
                }
            }
        }
        let kv = c.get("kv_cache");
        let kv_format = kv
            .and_then(|k| k.get("format"))
            .and_then(Value::as_str)
            .unwrap_or("f16");
        let kv_group = kv.and_then(|k| k.get("group_size")).and_then(Value::as_u64);
        if let Some(head_dim) = arch
            .and_then(|a| a.get("kv_head_dim"))
            .and_then(Value::as_u64)
            && head_dim > 0
        {
            let quantized = kv_format != "f16";
            match kv_group {
                Some(g) if g > 0 && head_dim % g != 0 => {
                    let divisors: Vec<String> = (1..=head_dim.min(256))
                        .rev()
                        .filter(|d| head_dim % d == 0)
                        .take(4)
                        .map(|d| d.to_string())
                        .collect();
                    out.push(
                        locator.at(&at(&[key("kv_cache"), key("group_size")]), e, format!("component `{cname}`: `kv_cache.group_size` {g} does not divide `kv_head_dim` {head_dim}"))
                            .with_label("does not divide kv_head_dim")
                            .with_help(format!("groups run along kv_head_dim: use a divisor of {head_dim}, such as {}", divisors.join(", "))),
                    );
                }
                None if quantized && head_dim % head_dim.min(32) != 0 => {
                    out.push(
                        locator.at(&at(&[key("kv_cache")]), e, format!("component `{cname}`: the default KV group size 32 does not divide `kv_head_dim` {head_dim}"))
                            .with_help("set `kv_cache.group_size` to a divisor of kv_head_dim"),
                    );
                }
                _ => {}
            }
            if kv_format == "nf4" && kv_group.unwrap_or(head_dim.min(32)) % 2 == 1 {
                out.push(
                    locator
                        .at(
                            &at(&[key("kv_cache"), key("group_size")]),
                            e,
                            format!(
                                "component `{cname}`: an nf4 KV cache needs an even group size"
                            ),
                        )
                        .with_help("nf4 packs two codes per byte"),
                );
            }
        }
        if runtime == "mlc" && (kv_format == "u8" || kv_format == "nf4") {
            out.push(
                locator.at(&at(&[key("kv_cache"), key("format")]), e, format!("component `{cname}`: runtime `mlc` keeps an f16 paged KV cache; it cannot use `{kv_format}`"))
                    .with_label("not supported by mlc")
                    .with_help("use `kv_cache.format: f16` (or remove it) with runtime `mlc`"),
            );
        }
        if role == "text_decode_step" && !tiers.is_empty() {
            // Only the tiers that ship this component need to cap its context.
            let ships = |t: &&Value| match t.get("components") {
                Some(Value::Array(list)) => list.iter().any(|n| n.as_str() == Some(&cname)),
                _ => true,
            };
            let bounded = c.get("max_seq_len").is_some()
                || kv.and_then(|k| k.get("paging")).is_some()
                || tiers
                    .iter()
                    .filter(ships)
                    .all(|t| t.get("max_seq_len").is_some());
            if !bounded {
                out.push(
                    locator.at(&at(&[key("role")]), e, format!("component `{cname}`: the KV cache has no length limit"))
                        .with_label("unbounded context")
                        .with_help("set the component's `max_seq_len`, `kv_cache.paging`, or `max_seq_len` on every tier that ships it"),
                );
            }
        }

        // compute_units only for coreml.
        if c.get("compute_units").is_some() && known_runtime && runtime != "coreml" {
            out.push(
                locator.at_key(&at(&[key("compute_units")]), e, format!("component `{cname}`: `compute_units` only applies to runtime `coreml` (this is `{runtime}`)"))
                    .with_label("only for coreml")
                    .with_help("remove `compute_units`, or set `runtime: coreml`"),
            );
        }

        // Formats allowed by the runtime.
        let exporter = c.get("source").and_then(|s| s.get("command")).is_some();
        if let Some(q) = c.get("quantization") {
            let mut format_sites: Vec<(Vec<Segment>, &Value)> = vec![(
                at(&[key("quantization"), key("format")]),
                q.get("format").unwrap_or(&Value::Null),
            )];
            if let Some(Value::Object(ov)) = q.get("tiers") {
                for (tier, o) in ov {
                    let op = at(&[key("quantization"), key("tiers"), key(tier)]);
                    // A base shared by manifests with different tiers may carry overrides
                    // for tiers this manifest does not have: only overrides written in the
                    // top file must name one of its tiers.
                    let in_top_file = locator.written_in_top_file(&op);
                    if !tiers.is_empty() && in_top_file && !tier_names.iter().any(|n| n == tier) {
                        let mut help = format!("tiers: {}", backticked(&tier_names));
                        if let Some(n) = nearest(tier, tier_names.iter().map(String::as_str)) {
                            help = format!("did you mean `{n}`? {help}");
                        }
                        out.push(
                            locator.at_key(&op, e, format!("component `{cname}`: quantization override for unknown tier `{tier}`"))
                                .with_label("no such tier")
                                .with_help(help),
                        );
                    }
                    if let Some(f) = o.get("format") {
                        format_sites.push(([&op[..], &[key("format")]].concat(), f));
                    }
                }
            }
            for (site, fv) in format_sites {
                let mut seen = Vec::new();
                for (j, f) in as_list(Some(fv)) {
                    let Some(f) = f.as_str() else { continue };
                    let mut sp = site.clone();
                    if let Some(j) = j {
                        sp.push(Segment::Index(j));
                    }
                    if seen.contains(&f) {
                        out.push(
                            locator
                                .at(
                                    &sp,
                                    w,
                                    format!("component `{cname}`: format `{f}` is listed twice"),
                                )
                                .with_label("repeated"),
                        );
                    }
                    seen.push(f);
                    // An exporter's quantization is declarative (passed to it as `{format}`,
                    // used by the memory model): only omnipack's own native layouts are
                    // limited to the runtimes that load them.
                    let bad = known_runtime
                        && ((INT_FORMATS.contains(&f)
                            && runtime != "mlx"
                            && runtime != "custom"
                            && !exporter)
                            || (f == "nf4" && runtime != "custom"));
                    if bad {
                        let allowed = if f == "nf4" {
                            "`custom`"
                        } else {
                            "`mlx` or `custom`"
                        };
                        out.push(
                            locator.at(&sp, e, format!("component `{cname}`: format `{f}` needs runtime {allowed}, not `{runtime}`"))
                                .with_label(format!("not loadable by {runtime}"))
                                .with_help(format!(
                                    "{} is a native layout only {allowed} load; with runtime `{runtime}` use `f32`, `f16` or `bf16` (its exporter does its own compression){}",
                                    f,
                                    if f == "nf4" {
                                        ""
                                    } else {
                                        ", or produce the weights with an exporter (`source.command`), which receives the format as `{format}`"
                                    }
                                )),
                        );
                    }
                }
            }
        }
    }
    out
}

/// The placeholders of an exporter's argv.
const PLACEHOLDERS: [&str; 6] = [
    "out",
    "tier",
    "format",
    "group_size",
    "max_seq_len",
    "component",
];

/// The `{name}` placeholders in one argument (lowercase identifiers only, so JSON such as
/// `{"a": 1}` is left alone).
fn placeholders(arg: &str) -> Vec<&str> {
    let mut found = Vec::new();
    let mut rest = arg;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let len = after
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(after.len());
        if len > 0 && after[len..].starts_with('}') {
            found.push(&after[..len]);
        }
        rest = after;
    }
    found
}

/// Why an exporter output path is not inside the stage folder, if it is not.
fn output_problem(o: &str) -> Option<&'static str> {
    if o.trim().is_empty() {
        return Some("is empty");
    }
    if is_absolute(o) {
        return Some("is an absolute path");
    }
    if o.split(['/', '\\']).any(|part| part == "..") {
        return Some("leaves the stage folder (`..`)");
    }
    if normalize(o).is_empty() {
        return Some("is the stage folder itself");
    }
    None
}

/// Advice for a path that does not exist: a similar name in the same folder, if any.
fn missing_help(dir: &Path, rel: &str) -> String {
    let full = dir.join(rel);
    let general = "paths are relative to the manifest that names them";
    let (Some(folder), Some(name)) = (full.parent(), full.file_name().and_then(|n| n.to_str()))
    else {
        return general.to_string();
    };
    match nearest_in_folder(folder, name, |_| true) {
        Ok(Some(n)) => format!("did you mean `{n}`? {general}"),
        Ok(None) => general.to_string(),
        Err(_) => format!(
            "{general}; the folder `{}` does not exist",
            shown(dir, &rel_path::parent(rel))
        ),
    }
}

/// `architecture` keys and the Hugging Face config keys omnipack writes them as.
const CONFIG_ARCHITECTURE_KEYS: [(&str, &str); 5] = [
    ("layers", "num_hidden_layers"),
    ("kv_heads", "num_key_value_heads"),
    ("kv_head_dim", "head_dim"),
    ("hidden_size", "hidden_size"),
    ("vocab_size", "vocab_size"),
];

/// Checks that a `source.config` file exists and holds one JSON object, and returns it.
fn check_config_json(
    dir: &Path,
    rel: &str,
) -> Result<serde_json::Map<String, Value>, (String, String)> {
    let shown = shown(dir, rel);
    let full = dir.join(rel);
    let help = "give a Hugging Face style config.json: one JSON object such as `{\"model_type\": \"llama\", ...}`";
    let meta = match std::fs::metadata(&full) {
        Ok(m) => m,
        Err(_) => {
            return Err((
                format!("config file `{shown}` does not exist"),
                missing_help(dir, rel),
            ));
        }
    };
    if !meta.is_file() {
        return Err((format!("`{shown}` is not a file"), help.into()));
    }
    if meta.len() > MAX_CONFIG_JSON_BYTES {
        return Err((
            format!(
                "config file `{shown}` is {} bytes, more than the {MAX_CONFIG_JSON_BYTES} a config.json may have",
                meta.len()
            ),
            help.into(),
        ));
    }
    let text = match std::fs::read(&full) {
        Ok(t) => t,
        Err(err) => {
            return Err((
                format!("cannot read `{shown}`: {err}"),
                "check the file's permissions".into(),
            ));
        }
    };
    match serde_json::from_slice::<Value>(&text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => {
            let kind = match other {
                Value::Null => "null",
                Value::Bool(_) => "a boolean",
                Value::Number(_) => "a number",
                Value::String(_) => "a string",
                Value::Array(_) => "an array",
                Value::Object(_) => "an object",
            };
            Err((
                format!("config file `{shown}` holds {kind}, not a JSON object"),
                help.into(),
            ))
        }
        Err(err) => Err((
            format!("config file `{shown}` is not valid JSON: {err}"),
            help.into(),
        )),
    }
}

/// Largest `source.config` file accepted (a config.json is a few KiB).
pub const MAX_CONFIG_JSON_BYTES: u64 = 16 * 1024 * 1024;

/// Checks cheaply that a shard exists and looks like safetensors: an 8-byte little-endian
/// header length that fits the file, then `{`.
fn check_safetensors(dir: &Path, rel: &str) -> Option<(String, String)> {
    let shown = shown(dir, rel);
    let full = dir.join(rel);
    let meta = match std::fs::metadata(&full) {
        Ok(m) => m,
        Err(_) => {
            return Some((
                format!("safetensors file `{shown}` does not exist"),
                missing_help(dir, rel),
            ));
        }
    };
    if !meta.is_file() {
        return Some((
            format!("`{shown}` is not a file"),
            "give the path of a .safetensors file".into(),
        ));
    }
    let not_st = |why: String| {
        Some((
            format!("`{shown}` is not a safetensors file: {why}"),
            "give a checkpoint saved with safetensors".into(),
        ))
    };
    let mut head = [0u8; 9];
    let read = std::fs::File::open(&full).and_then(|mut f| {
        let mut n = 0;
        while n < head.len() {
            let k = f.read(&mut head[n..])?;
            if k == 0 {
                break;
            }
            n += k;
        }
        Ok(n)
    });
    let n = match read {
        Ok(n) => n,
        Err(err) => {
            return Some((
                format!("cannot read `{shown}`: {err}"),
                "check the file's permissions".into(),
            ));
        }
    };
    if n < 9 {
        return not_st(format!("it is only {} bytes long", meta.len()));
    }
    let header_len = u64::from_le_bytes([
        head[0], head[1], head[2], head[3], head[4], head[5], head[6], head[7],
    ]);
    if header_len < 2 || header_len > meta.len() - 8 {
        return not_st(format!(
            "its header length {header_len} does not fit the file ({} bytes)",
            meta.len()
        ));
    }
    if head[8] != b'{' {
        return not_st("its header is not JSON".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_placeholders() {
        assert_eq!(placeholders("{out}/x-{tier}.bin"), ["out", "tier"]);
        assert_eq!(placeholders("--cfg={\"a\": 1}"), Vec::<&str>::new());
        assert_eq!(placeholders("{outdir}"), ["outdir"]);
    }

    #[test]
    fn outputs_stay_inside() {
        assert!(output_problem("../x").is_some());
        assert!(output_problem("a/../../x").is_some());
        assert!(output_problem("/etc/passwd").is_some());
        assert!(output_problem("").is_some());
        assert!(output_problem(".").is_some());
        assert!(output_problem("model.mlpackage").is_none());
        assert!(output_problem("tok/tokenizer.json").is_none());
    }

    #[test]
    fn subschema_follows_refs() {
        let (s, r) = subschema(&[key("tiers"), Segment::Index(0), key("memory_limit")]);
        assert!(s.is_some());
        assert_eq!(r, Some("ByteSize"));
        let (s, _) = subschema(&[key("components"), Segment::Index(0)]);
        assert!(valid_keys(s).contains(&"quantization".to_string()));
    }
}
