//! `metadata.managedFields` and server-side apply.
//!
//! Ownership is tracked per leaf field: scalars, lists (atomic, as for `x-kubernetes-list-type: atomic`)
//! and empty maps; `metadata.labels`/`annotations` entries count as fields, the rest of `metadata`
//! does not. That is coarser than structured-merge-diff (which merges list-maps by key) but gives the
//! same ownership, conflicts and removals for objects whose lists are applied whole by one manager.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

type Path = Vec<String>;

/// One `managedFields` entry, decoded.
#[derive(Clone, Debug, PartialEq)]
struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    time: String,
    subresource: Option<String>,
    fields: BTreeSet<Path>,
}

/// A manager's claim that another manager's apply collides with.
#[derive(Clone, Debug, PartialEq)]
pub struct Conflict {
    /// The other manager.
    pub manager: String,
    /// Its apiVersion.
    pub api_version: String,
    /// The field, in the API server's `.spec.x` notation.
    pub field: String,
}

/// The leaf fields an object sets.
fn leaves(object: &Value) -> BTreeSet<Path> {
    let mut out = BTreeSet::new();
    let Some(map) = object.as_object() else { return out };
    for (k, v) in map {
        match k.as_str() {
            "apiVersion" | "kind" => {}
            "metadata" => {
                for sub in ["labels", "annotations"] {
                    if let Some(m) = v.get(sub).and_then(Value::as_object) {
                        for key in m.keys() {
                            out.insert(vec!["metadata".into(), sub.into(), key.clone()]);
                        }
                    }
                }
            }
            _ => walk(v, vec![k.clone()], &mut out),
        }
    }
    out
}

fn walk(v: &Value, path: Path, out: &mut BTreeSet<Path>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                let mut p = path.clone();
                p.push(k.clone());
                walk(child, p, out);
            }
        }
        Value::Null => {}
        _ => {
            out.insert(path);
        }
    }
}

fn lookup<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |node, seg| node.get(seg))
}

fn remove_path(v: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut node = v;
    for seg in parents {
        match node.get_mut(seg) {
            Some(n) => node = n,
            None => return,
        }
    }
    if let Some(m) = node.as_object_mut() {
        m.remove(last);
    }
}

fn to_fields_v1(fields: &BTreeSet<Path>) -> Value {
    let mut root = Map::new();
    for path in fields {
        let mut node = &mut root;
        for seg in path {
            node = node
                .entry(format!("f:{seg}"))
                .or_insert_with(|| Value::Object(Map::new()))
                .as_object_mut()
                .expect("only objects are inserted");
        }
    }
    Value::Object(root)
}

fn from_fields_v1(v: &Value, path: Path, out: &mut BTreeSet<Path>) {
    let children: Vec<(&String, &Value)> = v
        .as_object()
        .map(|m| m.iter().filter(|(k, _)| k.as_str() != ".").collect())
        .unwrap_or_default();
    if children.is_empty() {
        if !path.is_empty() {
            out.insert(path);
        }
        return;
    }
    for (k, child) in children {
        let mut p = path.clone();
        // `k:`/`v:` (list-map keys and set values) come from real clusters; the list is the leaf.
        match k.strip_prefix("f:") {
            Some(name) => {
                p.push(name.to_string());
                from_fields_v1(child, p, out);
            }
            None => {
                out.insert(path.clone());
            }
        }
    }
}

fn decode(object: &Value) -> Vec<Entry> {
    object["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let mut fields = BTreeSet::new();
            from_fields_v1(&e["fieldsV1"], Vec::new(), &mut fields);
            Entry {
                manager: e["manager"].as_str().unwrap_or_default().into(),
                operation: e["operation"].as_str().unwrap_or("Update").into(),
                api_version: e["apiVersion"].as_str().unwrap_or_default().into(),
                time: e["time"].as_str().unwrap_or_default().into(),
                subresource: e["subresource"].as_str().map(String::from),
                fields,
            }
        })
        .collect()
}

fn encode(object: &mut Value, entries: &[Entry]) {
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut v = json!({
                "manager": e.manager,
                "operation": e.operation,
                "apiVersion": e.api_version,
                "time": e.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": to_fields_v1(&e.fields),
            });
            if let Some(s) = &e.subresource {
                v["subresource"] = json!(s);
            }
            v
        })
        .collect();
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        if list.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), Value::Array(list));
        }
    }
}

fn entry_mut<'a>(
    entries: &'a mut Vec<Entry>,
    manager: &str,
    operation: &str,
    api_version: &str,
    subresource: Option<&str>,
) -> &'a mut Entry {
    let pos = entries.iter().position(|e| {
        e.manager == manager && e.operation == operation && e.subresource.as_deref() == subresource
    });
    match pos {
        Some(i) => &mut entries[i],
        None => {
            entries.push(Entry {
                manager: manager.into(),
                operation: operation.into(),
                api_version: api_version.into(),
                time: String::new(),
                subresource: subresource.map(String::from),
                fields: BTreeSet::new(),
            });
            entries.last_mut().expect("just pushed")
        }
    }
}

/// Records a non-apply write (create, update, patch) by `manager`: it takes the fields it changed
/// from everyone else, and removed fields leave every manager.
pub fn record_update(
    new: &mut Value,
    old: Option<&Value>,
    manager: &str,
    api_version: &str,
    subresource: Option<&str>,
    now: &str,
) {
    let mut entries = old.map(decode).unwrap_or_default();
    let new_leaves = leaves(new);
    let changed: BTreeSet<Path> = new_leaves
        .iter()
        .filter(|p| old.and_then(|o| lookup(o, p)) != lookup(new, p))
        .cloned()
        .collect();
    for e in entries.iter_mut() {
        e.fields
            .retain(|p| new_leaves.contains(p) && !changed.contains(p));
    }
    if !changed.is_empty() {
        let entry = entry_mut(&mut entries, manager, "Update", api_version, subresource);
        entry.fields.extend(changed);
        entry.time = now.into();
        entry.api_version = api_version.into();
    }
    encode(new, &entries);
}

fn overlaps(a: &[String], b: &[String]) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// An empty map in an applied configuration owns the map, not the entries others put in it.
fn sets_only_the_map(applied: &Value, mine: &[String], theirs: &[String]) -> bool {
    theirs.len() > mine.len()
        && theirs.starts_with(mine)
        && lookup(applied, mine)
            .and_then(Value::as_object)
            .is_some_and(Map::is_empty)
}

fn dotted(path: &[String]) -> String {
    path.iter().map(|s| format!(".{s}")).collect()
}

fn deep_merge(target: &mut Value, applied: &Value) {
    match (target.as_object_mut(), applied.as_object()) {
        (Some(t), Some(a)) => {
            for (k, v) in a {
                if v.is_null() {
                    continue;
                }
                deep_merge(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        _ => *target = applied.clone(),
    }
}

/// Server-side apply of `applied` by `manager` onto `live` (`None`: the object is being created).
/// Returns the merged object with `managedFields` updated, or the conflicts when `force` is off.
pub fn apply(
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
    subresource: Option<&str>,
    now: &str,
) -> Result<Value, Vec<Conflict>> {
    let api_version = applied["apiVersion"].as_str().unwrap_or_default();
    let mut entries = live.map(decode).unwrap_or_default();
    let applied_leaves = leaves(applied);
    let mut conflicts = Vec::new();
    for e in &entries {
        if e.manager == manager && e.operation == "Apply" {
            continue;
        }
        for theirs in &e.fields {
            for mine in &applied_leaves {
                if sets_only_the_map(applied, mine, theirs) {
                    continue;
                }
                let differs = live.and_then(|l| lookup(l, mine)) != lookup(applied, mine);
                if overlaps(theirs, mine) && differs {
                    conflicts.push(Conflict {
                        manager: e.manager.clone(),
                        api_version: e.api_version.clone(),
                        field: dotted(theirs),
                    });
                }
            }
        }
    }
    conflicts.dedup();
    if !conflicts.is_empty() && !force {
        return Err(conflicts);
    }
    // Fields the applier no longer sets are removed, unless someone else also owns them.
    let previous: BTreeSet<Path> = entries
        .iter()
        .find(|e| e.manager == manager && e.operation == "Apply" && e.subresource.as_deref() == subresource)
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    let mut merged = live.cloned().unwrap_or_else(|| json!({}));
    for gone in previous.difference(&applied_leaves) {
        let owned_elsewhere = entries.iter().any(|e| {
            !(e.manager == manager && e.operation == "Apply") && e.fields.iter().any(|p| overlaps(p, gone))
        });
        if !owned_elsewhere {
            remove_path(&mut merged, gone);
        }
    }
    let mut applied_body = applied.clone();
    if let Some(m) = applied_body.as_object_mut() {
        // Identity metadata of the live object wins; labels and annotations merge like any field.
        if let Some(meta) = m.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.retain(|k, _| {
                matches!(
                    k.as_str(),
                    "labels" | "annotations" | "name" | "namespace" | "finalizers" | "ownerReferences"
                )
            });
        }
    }
    deep_merge(&mut merged, &applied_body);
    for e in entries.iter_mut() {
        if !(e.manager == manager && e.operation == "Apply") {
            e.fields.retain(|p| {
                !applied_leaves
                    .iter()
                    .any(|mine| overlaps(p, mine) && !sets_only_the_map(applied, mine, p))
            });
        }
    }
    let entry = entry_mut(&mut entries, manager, "Apply", api_version, subresource);
    entry.fields = applied_leaves;
    entry.time = now.into();
    entry.api_version = api_version.into();
    encode(&mut merged, &entries);
    Ok(merged)
}

/// The API server's message for apply conflicts.
pub fn conflict_message(conflicts: &[Conflict]) -> String {
    let n = conflicts.len();
    let plural = if n == 1 { "conflict" } else { "conflicts" };
    let list: Vec<String> = conflicts
        .iter()
        .map(|c| {
            format!(
                "conflict with \"{}\" using {}: {}",
                c.manager, c.api_version, c.field
            )
        })
        .collect();
    if n == 1 {
        format!("Apply failed with 1 conflict: {}", list[0])
    } else {
        format!("Apply failed with {n} {plural}: {}", list.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(spec: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": spec})
    }

    #[test]
    fn apply_owns_fields_and_removes_what_it_stops_setting() {
        let first = apply(None, &obj(json!({"a": "1", "b": "2"})), "me", false, None, "t").unwrap();
        let fields = &first["metadata"]["managedFields"][0];
        assert_eq!(fields["manager"], "me");
        assert_eq!(fields["fieldsV1"], json!({"f:data": {"f:a": {}, "f:b": {}}}));
        let second = apply(Some(&first), &obj(json!({"a": "1"})), "me", false, None, "t").unwrap();
        assert_eq!(second["data"], json!({"a": "1"}));
    }

    #[test]
    fn another_manager_conflicts_unless_forced() {
        let first = apply(None, &obj(json!({"a": "1"})), "me", false, None, "t").unwrap();
        let err = apply(Some(&first), &obj(json!({"a": "2"})), "you", false, None, "t").unwrap_err();
        assert_eq!(
            conflict_message(&err),
            "Apply failed with 1 conflict: conflict with \"me\" using v1: .data.a"
        );
        // Same value: shared ownership, no conflict.
        assert!(apply(Some(&first), &obj(json!({"a": "1"})), "you", false, None, "t").is_ok());
        let forced = apply(Some(&first), &obj(json!({"a": "2"})), "you", true, None, "t").unwrap();
        assert_eq!(forced["data"]["a"], "2");
        let managers: Vec<&str> = forced["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["manager"].as_str().unwrap())
            .collect();
        assert_eq!(managers, ["you"]);
    }

    #[test]
    fn updates_take_changed_fields() {
        let mut first = obj(json!({"a": "1", "b": "2"}));
        record_update(&mut first, None, "creator", "v1", None, "t");
        let mut second = obj(json!({"a": "9", "b": "2"}));
        second["metadata"]["managedFields"] = first["metadata"]["managedFields"].clone();
        record_update(&mut second, Some(&first), "editor", "v1", None, "t");
        let entries = decode(&second);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].manager, "editor");
        assert!(
            entries[1]
                .fields
                .contains(&vec!["data".to_string(), "a".to_string()])
        );
        assert!(
            !entries[0]
                .fields
                .contains(&vec!["data".to_string(), "a".to_string()])
        );
    }
}
