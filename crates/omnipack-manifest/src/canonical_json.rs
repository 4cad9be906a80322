//! Canonical JSON: every object's keys sorted by their bytes, at every level. The one form
//! omnipack hashes (`manifest_sha256`, cache keys) and writes for the JSON files it generates
//! (sidecars, `config.json`, asset-pack manifests), so equal values give equal bytes whatever
//! order their keys were built in.

use serde_json::{Map, Value};

/// `v` with every object's keys sorted by their bytes, at every level.
pub fn canonical(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut entries: Vec<(String, Value)> = m.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, canonical(v)))
                    .collect::<Map<String, Value>>(),
            )
        }
        Value::Array(a) => Value::Array(a.into_iter().map(canonical).collect()),
        other => other,
    }
}

/// Compact canonical JSON (no whitespace): the form that is hashed.
pub fn to_canonical_compact(v: &Value) -> Vec<u8> {
    serde_json::to_vec(&canonical(v.clone())).unwrap_or_default()
}

/// Canonical JSON with two-space indentation and a final newline: the form of generated files.
pub fn to_canonical_pretty(v: &Value) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(&canonical(v.clone())).unwrap_or_default();
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_are_sorted_at_every_level() {
        let v = json!({"b": 1, "a": {"d": 2, "c": [ {"z": 1, "y": 2} ]}});
        assert_eq!(
            String::from_utf8(to_canonical_compact(&v)).unwrap(),
            r#"{"a":{"c":[{"y":2,"z":1}],"d":2},"b":1}"#
        );
        assert_eq!(
            String::from_utf8(to_canonical_pretty(&json!({"b": 1, "a": 2}))).unwrap(),
            "{\n  \"a\": 2,\n  \"b\": 1\n}\n"
        );
        // Byte order: upper case before lower case.
        let keys: Vec<String> = canonical(json!({"b": 1, "B": 2, "a": 3}))
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        assert_eq!(keys, ["B", "a", "b"]);
    }
}
