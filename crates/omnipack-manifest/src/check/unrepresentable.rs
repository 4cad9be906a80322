//! Values the JSON schema accepts but the typed manifest cannot hold: a decimal number with no
//! fraction (`2048.0`, `1e3`) or an integer beyond 64 bits where a whole number is expected
//! (JSON Schema counts both as integers), and size or duration strings that match the unit
//! syntax but overflow.

use std::collections::HashSet;

use serde_json::Value;

use crate::check::schema_errors::{last_key, size_error, subschema};
use crate::diagnostic::{Diagnostic, Severity};
use crate::locate::Locator;
use crate::node;
use crate::units::{DURATION_SYNTAX, parse_duration, parse_size};

/// Every value of `json` the typed manifest cannot hold, except those in `reported` (JSON
/// pointers the schema check already reported).
pub(crate) fn check(
    locator: &Locator<'_>,
    json: &Value,
    reported: &HashSet<String>,
) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    walk(locator, json, &mut String::new(), reported, &mut out);
    out
}

/// Checks `v`, the value at JSON pointer `pointer`, and everything inside it.
fn walk(
    locator: &Locator<'_>,
    v: &Value,
    pointer: &mut String,
    reported: &HashSet<String>,
    out: &mut Vec<Diagnostic>,
) {
    match v {
        Value::Object(m) => {
            for (k, item) in m {
                let len = pointer.len();
                pointer.push('/');
                pointer.push_str(&k.replace('~', "~0").replace('/', "~1"));
                walk(locator, item, pointer, reported, out);
                pointer.truncate(len);
            }
            return;
        }
        Value::Array(a) => {
            for (i, item) in a.iter().enumerate() {
                let len = pointer.len();
                pointer.push_str(&format!("/{i}"));
                walk(locator, item, pointer, reported, out);
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
