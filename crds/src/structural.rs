//! Checks that a CRD schema is structural in Kubernetes' sense, so the API server accepts it and
//! pruning, defaulting and CEL all behave: every node typed, no `$ref`, no `additionalProperties`
//! beside `properties`, list-map keys required, `x-kubernetes-preserve-unknown-fields` only where the
//! caller allows it, and every CEL rule compiles.

use serde_json::Value;

/// Problems found, each naming the schema path.
pub fn check(schema: &Value, preserve_allowed: &[&str]) -> Vec<String> {
    let mut problems = Vec::new();
    walk(schema, "", preserve_allowed, &mut problems);
    problems
}

fn walk(node: &Value, path: &str, preserve_allowed: &[&str], problems: &mut Vec<String>) {
    let Some(obj) = node.as_object() else {
        problems.push(format!("{}: schema node is not an object", shown(path)));
        return;
    };
    for forbidden in ["$ref", "allOf", "oneOf", "anyOf", "not", "definitions", "$defs"] {
        // anyOf/oneOf are allowed by Kubernetes only as value validations without types; our
        // generator never needs them, so their presence means a schemars construct slipped through.
        if obj.contains_key(forbidden) {
            problems.push(format!(
                "{}: `{forbidden}` is not allowed in a structural schema",
                shown(path)
            ));
        }
    }
    let preserve = obj
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        == Some(true);
    if preserve && !preserve_allowed.contains(&path) {
        problems.push(format!(
            "{}: x-kubernetes-preserve-unknown-fields is only allowed where deliberate (allowed: {preserve_allowed:?})",
            shown(path)
        ));
    }
    if let Some(rules) = obj.get("x-kubernetes-validations").and_then(Value::as_array) {
        for rule in rules {
            match rule.get("rule").and_then(Value::as_str) {
                Some(text) => {
                    if let Err(e) = kube_cel::cel::Program::compile(text) {
                        problems.push(format!(
                            "{}: CEL rule {text:?} does not compile: {e}",
                            shown(path)
                        ));
                    }
                }
                None => problems.push(format!(
                    "{}: x-kubernetes-validations entry without a rule",
                    shown(path)
                )),
            }
        }
    }
    let int_or_string = obj.get("x-kubernetes-int-or-string").and_then(Value::as_bool) == Some(true);
    let ty = obj.get("type").and_then(Value::as_str);
    if ty.is_none() && !int_or_string && !preserve {
        problems.push(format!("{}: every node must have a type", shown(path)));
    }
    if obj.contains_key("properties") && obj.contains_key("additionalProperties") {
        problems.push(format!(
            "{}: additionalProperties and properties are mutually exclusive",
            shown(path)
        ));
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (name, child) in props {
            walk(child, &format!("{path}.{name}"), preserve_allowed, problems);
        }
        if let Some(required) = obj.get("required").and_then(Value::as_array) {
            for r in required.iter().filter_map(Value::as_str) {
                if !props.contains_key(r) {
                    problems.push(format!(
                        "{}: required field {r:?} is not a declared property",
                        shown(path)
                    ));
                }
            }
        }
    }
    if let Some(additional) = obj.get("additionalProperties")
        && additional.is_object()
    {
        walk(additional, &format!("{path}[*]"), preserve_allowed, problems);
    }
    if ty == Some("array") {
        match obj.get("items") {
            Some(items) => walk(items, &format!("{path}[]"), preserve_allowed, problems),
            None => problems.push(format!("{}: arrays must declare items", shown(path))),
        }
        if obj.get("x-kubernetes-list-type").and_then(Value::as_str) == Some("map") {
            let keys: Vec<&str> = obj
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(|k| k.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if keys.is_empty() {
                problems.push(format!(
                    "{}: a map list needs x-kubernetes-list-map-keys",
                    shown(path)
                ));
            }
            let required: Vec<&str> = obj
                .get("items")
                .and_then(|i| i.get("required"))
                .and_then(Value::as_array)
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            for k in keys {
                if !required.contains(&k) {
                    problems.push(format!(
                        "{}: list-map key {k:?} must be required in items",
                        shown(path)
                    ));
                }
            }
        }
    }
}

fn shown(path: &str) -> &str {
    if path.is_empty() { "<root>" } else { path }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn non_structural_schemas_are_named() {
        let schema = json!({
            "type": "object",
            "properties": {
                "a": {"description": "untyped"},
                "b": {"type": "object", "properties": {"x": {"type": "string"}}, "additionalProperties": {"type": "string"}},
                "c": {"$ref": "#/definitions/C", "type": "object"},
                "d": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                "e": {"type": "array"},
                "f": {"type": "string", "x-kubernetes-validations": [{"rule": "self ==="}]}
            }
        });
        let problems = check(&schema, &[]);
        let joined = problems.join("\n");
        assert!(joined.contains(".a: every node must have a type"), "{joined}");
        assert!(
            joined.contains(".b: additionalProperties and properties are mutually exclusive"),
            "{joined}"
        );
        assert!(joined.contains(".c: `$ref` is not allowed"), "{joined}");
        assert!(
            joined.contains(".d: x-kubernetes-preserve-unknown-fields is only allowed"),
            "{joined}"
        );
        assert!(joined.contains(".e: arrays must declare items"), "{joined}");
        assert!(
            joined.contains(".f: CEL rule \"self ===\" does not compile"),
            "{joined}"
        );
        assert!(check(&schema, &[".d"]).iter().all(|p| !p.contains(".d:")));
    }
}
