//! Small helpers that keep the wording of diagnostics in one style.

use serde_json::Value;

/// `` `a`, `b`, `c` ``.
pub(crate) fn backticked<S: AsRef<str>>(items: &[S]) -> String {
    items
        .iter()
        .map(|i| format!("`{}`", i.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `` `a` ``, `` `a` or `b` ``, `` `a`, `b` or `c` ``.
pub(crate) fn backticked_or<S: AsRef<str>>(items: &[S]) -> String {
    match items {
        [] => String::new(),
        [one] => format!("`{}`", one.as_ref()),
        [rest @ .., last] => format!("{} or `{}`", backticked(rest), last.as_ref()),
    }
}

/// A JSON value as written in a message: strings without quotes.
pub(crate) fn show(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_read_as_sentences() {
        assert_eq!(backticked(&["a", "b"]), "`a`, `b`");
        assert_eq!(backticked_or(&["mlx"]), "`mlx`");
        assert_eq!(backticked_or(&["mlx", "custom"]), "`mlx` or `custom`");
        assert_eq!(
            backticked_or(&["f32", "f16", "bf16"]),
            "`f32`, `f16` or `bf16`"
        );
        assert_eq!(show(&Value::from("x")), "x");
        assert_eq!(show(&Value::from(3)), "3");
    }
}
