//! The manifest's JSON schema, generated from [`crate::model`] (draft-07, for the widest
//! editor support) and committed at `schemas/omnipack-manifest.schema.json`.

use std::sync::LazyLock;

use schemars::generate::SchemaSettings;
use serde_json::Value;

use crate::model::Manifest;

/// The `$id`-less schema as a JSON value.
pub fn manifest_schema() -> Value {
    let generator = SchemaSettings::draft07().into_generator();
    let schema = generator.into_root_schema_for::<Manifest>();
    // Documented enums come out as `oneOf` of `const` + `description`: editors complete
    // them and show each value's description, and report one error for a wrong value.
    schema.to_value()
}

/// The schema as committed: pretty JSON with a trailing newline.
pub fn manifest_schema_json() -> String {
    let mut s = serde_json::to_string_pretty(&manifest_schema()).unwrap_or_default();
    s.push('\n');
    s
}

/// The schema, generated once per process.
pub(crate) static SCHEMA: LazyLock<Value> = LazyLock::new(manifest_schema);

#[cfg(test)]
mod tests {
    use super::*;

    fn walk(v: &Value, path: &str, missing: &mut Vec<String>) {
        if let Value::Object(m) = v {
            if let Some(Value::Object(props)) = m.get("properties") {
                for (k, p) in props {
                    let has = p.get("description").is_some()
                        || p.get("$ref").is_some() && p.get("description").is_some();
                    if !has {
                        missing.push(format!("{path}/properties/{k}"));
                    }
                }
            }
            if let Some(Value::Array(choices)) = m.get("oneOf") {
                for (i, c) in choices.iter().enumerate() {
                    if c.get("const").is_some() && c.get("description").is_none() {
                        missing.push(format!("{path}/oneOf/{i}"));
                    }
                }
            }
            for (k, child) in m {
                walk(child, &format!("{path}/{k}"), missing);
            }
        } else if let Value::Array(a) = v {
            for (i, child) in a.iter().enumerate() {
                walk(child, &format!("{path}/{i}"), missing);
            }
        }
    }

    #[test]
    fn every_property_and_enum_value_is_described() {
        let schema = manifest_schema();
        assert_eq!(schema["$schema"], "http://json-schema.org/draft-07/schema#");
        let mut missing = Vec::new();
        walk(&schema, "", &mut missing);
        assert!(missing.is_empty(), "undocumented: {missing:?}");
        assert_eq!(schema["additionalProperties"], false);
    }
}
