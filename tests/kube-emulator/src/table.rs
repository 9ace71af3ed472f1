//! Server-side printing: `meta.k8s.io/v1 Table` responses for kubectl (`Accept: ...;as=Table`), with
//! the CRD's `additionalPrinterColumns` evaluated like the API server does (a JSONPath subset:
//! fields, indexes and `[?(@.field=="value")]` filters; `date` columns shown as ages).

use serde_json::{Value, json};

use crate::resources::ResourceType;

fn column(name: &str, ty: &str, format: &str, description: &str, priority: i64) -> Value {
    json!({"name": name, "type": ty, "format": format, "description": description, "priority": priority})
}

fn columns(rt: &ResourceType) -> Vec<Value> {
    let mut out = vec![column(
        "Name",
        "string",
        "name",
        "Name must be unique within a namespace. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names",
        0,
    )];
    if rt.is_custom() {
        for c in &rt.printer_columns {
            out.push(column(
                c["name"].as_str().unwrap_or_default(),
                c["type"].as_str().unwrap_or("string"),
                c["format"].as_str().unwrap_or_default(),
                c["description"].as_str().unwrap_or_default(),
                c["priority"].as_i64().unwrap_or(0),
            ));
        }
        if rt.printer_columns.is_empty() {
            out.push(column("Age", "date", "", "", 0));
        }
    } else {
        if rt.plural == "namespaces" {
            out.push(column("Status", "string", "", "The status of the namespace", 0));
        }
        out.push(column("Age", "date", "", "", 0));
    }
    out
}

/// Evaluates `.a.b[0].c` and `.a[?(@.k=="v")].b`; the first match, if any.
pub fn json_path<'a>(object: &'a Value, path: &str) -> Option<&'a Value> {
    let mut nodes = vec![object];
    let mut rest = path
        .trim()
        .trim_start_matches('{')
        .trim_end_matches('}')
        .trim_start_matches('$');
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('.') {
            let end = after.find(['.', '[']).unwrap_or(after.len());
            let field = &after[..end];
            nodes = nodes.into_iter().filter_map(|n| n.get(field)).collect();
            rest = &after[end..];
        } else if let Some(after) = rest.strip_prefix('[') {
            let end = after.find(']')?;
            let inner = &after[..end];
            rest = &after[end + 1..];
            if let Some(filter) = inner.strip_prefix("?(@.").and_then(|f| f.strip_suffix(')')) {
                let (field, value) = filter.split_once("==")?;
                let value = value.trim().trim_matches(|c| c == '"' || c == '\'');
                nodes = nodes
                    .into_iter()
                    .flat_map(|n| n.as_array().into_iter().flatten())
                    .filter(|item| {
                        item.get(field.trim()).is_some_and(|v| match v {
                            Value::String(s) => s == value,
                            other => *other == value,
                        })
                    })
                    .collect();
            } else if inner == "*" {
                nodes = nodes
                    .into_iter()
                    .flat_map(|n| n.as_array().into_iter().flatten())
                    .collect();
            } else {
                let index: usize = inner.parse().ok()?;
                nodes = nodes.into_iter().filter_map(|n| n.get(index)).collect();
            }
        } else {
            return None;
        }
    }
    nodes.into_iter().next()
}

/// `5s`, `3m`, `2h`, `4d`, as kubectl prints ages (`duration.HumanDuration`, simplified).
fn age(timestamp: &str) -> String {
    let Ok(then) = timestamp.parse::<jiff::Timestamp>() else {
        return "<unknown>".into();
    };
    let secs = (jiff::Timestamp::now().as_second() - then.as_second()).max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 3600 * 3 => format!("{}m", s / 60),
        s if s < 86400 * 2 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

fn row(rt: &ResourceType, object: &Value) -> Value {
    let defs = columns(rt);
    let mut cells = vec![object["metadata"]["name"].clone()];
    let paths: Vec<String> = if rt.is_custom() && !rt.printer_columns.is_empty() {
        rt.printer_columns
            .iter()
            .map(|c| c["jsonPath"].as_str().unwrap_or_default().to_string())
            .collect()
    } else if rt.plural == "namespaces" {
        vec![".status.phase".into(), ".metadata.creationTimestamp".into()]
    } else {
        vec![".metadata.creationTimestamp".into()]
    };
    for (def, path) in defs.iter().skip(1).zip(paths) {
        let value = json_path(object, &path).cloned().unwrap_or(Value::Null);
        let cell = match (def["type"].as_str(), &value) {
            (Some("date"), Value::String(s)) => json!(age(s)),
            (_, Value::Null) => json!("<none>"),
            _ => value,
        };
        cells.push(cell);
    }
    let mut metadata = object["metadata"].clone();
    if let Some(m) = metadata.as_object_mut() {
        m.remove("managedFields");
    }
    json!({
        "cells": cells,
        "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": metadata},
    })
}

/// A Table of one object.
pub fn from_object(rt: &ResourceType, object: &Value) -> Value {
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": object["metadata"]["resourceVersion"].clone()},
        "columnDefinitions": columns(rt),
        "rows": [row(rt, object)],
    })
}

/// A Table of a list.
pub fn from_list(rt: &ResourceType, list: &Value) -> Value {
    let rows: Vec<Value> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| row(rt, o))
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list["metadata"].clone(),
        "columnDefinitions": columns(rt),
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_path_fields_indexes_and_filters() {
        let obj = json!({"spec": {"a": [{"b": 1}]}, "status": {"conditions": [
            {"type": "Synced", "status": "False"}, {"type": "Ready", "status": "True"}
        ]}});
        assert_eq!(json_path(&obj, ".spec.a[0].b"), Some(&json!(1)));
        assert_eq!(
            json_path(&obj, ".status.conditions[?(@.type==\"Ready\")].status"),
            Some(&json!("True"))
        );
        assert_eq!(json_path(&obj, ".spec.missing"), None);
    }
}
