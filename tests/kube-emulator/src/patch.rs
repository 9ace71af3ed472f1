//! JSON patch (RFC 6902), JSON merge patch (RFC 7386) and strategic merge patch (the subset kubectl
//! sends for built-in kinds: keyed list merging and the `$patch`/`$setElementOrder`/`$retainKeys`
//! directives).

use serde_json::{Map, Value};

/// RFC 6902; the error is the API server's wording for an unappliable patch.
pub fn json_patch(target: &Value, patch: &Value) -> Result<Value, String> {
    let patch: json_patch::Patch =
        serde_json::from_value(patch.clone()).map_err(|e| format!("error decoding patch: {e}"))?;
    let mut doc = target.clone();
    json_patch::patch(&mut doc, &patch).map_err(|e| e.to_string())?;
    Ok(doc)
}

/// RFC 7386.
pub fn merge_patch(target: &Value, patch: &Value) -> Value {
    let mut doc = target.clone();
    json_patch::merge(&mut doc, patch);
    doc
}

/// The merge key of a list field of the built-in kinds (`patchMergeKey` in their Go types), or `None`
/// for lists that are replaced as a whole.
fn merge_key(field: &str) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets"
        | "secrets" => "name",
        "ports" => "containerPort",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "conditions" => "type",
        "ownerReferences" => "uid",
        "hostAliases" => "ip",
        "topologySpreadConstraints" => "topologyKey",
        _ => return None,
    })
}

/// Lists of scalars the Go types mark `patchStrategy:"merge"` (union of values).
fn merges_scalars(field: &str) -> bool {
    matches!(field, "finalizers")
}

/// Strategic merge patch of `patch` onto `target`.
pub fn strategic_merge_patch(target: &Value, patch: &Value) -> Value {
    let mut doc = target.clone();
    smp_object(&mut doc, patch);
    doc
}

fn smp_object(target: &mut Value, patch: &Value) {
    let Some(patch) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if patch.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut replaced = patch.clone();
        replaced.remove("$patch");
        *target = Value::Object(strip_directives(&replaced));
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let retain: Option<Vec<String>> = patch
        .get("$retainKeys")
        .and_then(Value::as_array)
        .map(|keys| keys.iter().filter_map(|k| k.as_str().map(String::from)).collect());
    let object = target.as_object_mut().expect("made an object above");
    if let Some(retain) = retain {
        object.retain(|k, _| retain.contains(k));
    }
    for (key, value) in patch {
        if key.starts_with('$') {
            continue;
        }
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(list), Some(remove)) = (
                object.get_mut(field).and_then(Value::as_array_mut),
                value.as_array(),
            ) {
                list.retain(|v| !remove.contains(v));
            }
            continue;
        }
        match value {
            Value::Null => {
                object.remove(key);
            }
            Value::Object(inner) if inner.get("$patch").and_then(Value::as_str) == Some("delete") => {
                object.remove(key);
            }
            Value::Object(_) => smp_object(object.entry(key.clone()).or_insert(Value::Null), value),
            Value::Array(items) => {
                let merged = smp_list(key, object.get(key), items);
                object.insert(key.clone(), merged);
            }
            _ => {
                object.insert(key.clone(), value.clone());
            }
        }
    }
    // `$setElementOrder/<field>` only orders; the emulator keeps the patch's order of new entries.
    object.retain(|k, _| !k.starts_with("$setElementOrder/"));
}

fn smp_list(field: &str, current: Option<&Value>, items: &[Value]) -> Value {
    let current = current.and_then(Value::as_array).cloned().unwrap_or_default();
    if merges_scalars(field) {
        let mut out = current;
        for item in items {
            if !out.contains(item) {
                out.push(item.clone());
            }
        }
        return Value::Array(out);
    }
    let Some(key) = merge_key(field) else {
        return Value::Array(items.iter().map(strip_value).collect());
    };
    if items
        .iter()
        .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        return Value::Array(
            items
                .iter()
                .filter(|i| i.get("$patch").is_none())
                .map(strip_value)
                .collect(),
        );
    }
    let mut out = current;
    for item in items {
        let id = item.get(key);
        let position = out.iter().position(|c| id.is_some() && c.get(key) == id);
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (position, delete) {
            (Some(i), true) => {
                out.remove(i);
            }
            (Some(i), false) => smp_object(&mut out[i], item),
            (None, true) => {}
            (None, false) => out.push(strip_value(item)),
        }
    }
    Value::Array(out)
}

fn strip_value(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(strip_directives(m)),
        other => other.clone(),
    }
}

fn strip_directives(m: &Map<String, Value>) -> Map<String, Value> {
    m.iter()
        .filter(|(k, _)| !k.starts_with('$'))
        .map(|(k, v)| (k.clone(), strip_value(v)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_removes_nulls_and_merges_maps() {
        let doc = json!({"spec": {"a": 1, "b": {"c": 2}}});
        let out = merge_patch(&doc, &json!({"spec": {"a": null, "b": {"d": 3}}}));
        assert_eq!(out, json!({"spec": {"b": {"c": 2, "d": 3}}}));
    }

    #[test]
    fn json_patch_applies_and_reports_failed_tests() {
        let doc = json!({"spec": {"a": 1}});
        let out = json_patch(&doc, &json!([{"op": "replace", "path": "/spec/a", "value": 2}])).unwrap();
        assert_eq!(out["spec"]["a"], 2);
        assert!(json_patch(&doc, &json!([{"op": "test", "path": "/spec/a", "value": 5}])).is_err());
    }

    #[test]
    fn strategic_merge_merges_containers_by_name() {
        let doc = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "a", "image": "a:1"}, {"name": "b", "image": "b:1"}
        ]}}}});
        let patch = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
            "containers": [{"name": "b", "image": "b:2"}, {"name": "a", "$patch": "delete"}]
        }}}});
        let out = strategic_merge_patch(&doc, &patch);
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"],
            json!([{"name": "b", "image": "b:2"}])
        );
        assert!(
            out["spec"]["template"]["spec"]
                .get("$setElementOrder/containers")
                .is_none()
        );
    }

    #[test]
    fn strategic_merge_replaces_unkeyed_lists_and_unions_finalizers() {
        let doc = json!({"metadata": {"finalizers": ["a"]}, "rules": [1, 2]});
        let out = strategic_merge_patch(&doc, &json!({"metadata": {"finalizers": ["b"]}, "rules": [3]}));
        assert_eq!(out, json!({"metadata": {"finalizers": ["a", "b"]}, "rules": [3]}));
    }
}
