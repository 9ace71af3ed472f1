//! Decoding of the few protobuf request bodies kubectl's typed commands send (`kubectl create
//! namespace|configmap|secret|serviceaccount`): the `k8s\0` envelope and those kinds' fields. Responses
//! are always JSON, which those clients accept. Other kinds in protobuf get 415.

use base64::Engine as _;
use serde_json::{Map, Value, json};

enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

fn varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut out = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos)?;
        *pos += 1;
        out |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(out);
        }
    }
    None
}

fn fields(buf: &[u8]) -> Option<Vec<(u64, Wire<'_>)>> {
    let mut pos = 0;
    let mut out = Vec::new();
    while pos < buf.len() {
        let tag = varint(buf, &mut pos)?;
        let value = match tag & 7 {
            0 => Wire::Varint(varint(buf, &mut pos)?),
            1 => {
                pos += 8;
                Wire::Fixed
            }
            2 => {
                let len = usize::try_from(varint(buf, &mut pos)?).ok()?;
                let bytes = buf.get(pos..pos.checked_add(len)?)?;
                pos += len;
                Wire::Bytes(bytes)
            }
            5 => {
                pos += 4;
                Wire::Fixed
            }
            _ => return None,
        };
        out.push((tag >> 3, value));
    }
    (pos == buf.len()).then_some(out)
}

fn text(bytes: &[u8]) -> Value {
    json!(String::from_utf8_lossy(bytes))
}

/// A `map<string, string>` (or `map<string, bytes>` as base64) entry into `map`.
fn map_entry(bytes: &[u8], map: &mut Map<String, Value>, base64_values: bool) -> Option<()> {
    let mut key = String::new();
    let mut value = Value::String(String::new());
    for (n, w) in fields(bytes)? {
        match (n, w) {
            (1, Wire::Bytes(b)) => key = String::from_utf8_lossy(b).into_owned(),
            (2, Wire::Bytes(b)) if base64_values => {
                value = json!(base64::engine::general_purpose::STANDARD.encode(b));
            }
            (2, Wire::Bytes(b)) => value = text(b),
            _ => {}
        }
    }
    map.insert(key, value);
    Some(())
}

fn object_meta(bytes: &[u8]) -> Option<Value> {
    let mut meta = Map::new();
    let mut labels = Map::new();
    let mut annotations = Map::new();
    let mut finalizers = Vec::new();
    for (n, w) in fields(bytes)? {
        match (n, w) {
            (1, Wire::Bytes(b)) => _ = meta.insert("name".into(), text(b)),
            (2, Wire::Bytes(b)) => _ = meta.insert("generateName".into(), text(b)),
            (3, Wire::Bytes(b)) => _ = meta.insert("namespace".into(), text(b)),
            (6, Wire::Bytes(b)) => _ = meta.insert("resourceVersion".into(), text(b)),
            (11, Wire::Bytes(b)) => map_entry(b, &mut labels, false)?,
            (12, Wire::Bytes(b)) => map_entry(b, &mut annotations, false)?,
            (14, Wire::Bytes(b)) => finalizers.push(text(b)),
            _ => {}
        }
    }
    if !labels.is_empty() {
        meta.insert("labels".into(), Value::Object(labels));
    }
    if !annotations.is_empty() {
        meta.insert("annotations".into(), Value::Object(annotations));
    }
    if !finalizers.is_empty() {
        meta.insert("finalizers".into(), Value::Array(finalizers));
    }
    Some(Value::Object(meta))
}

/// Decodes a protobuf body of `kind` (the envelope names the kind too), or `None` if unsupported.
pub fn decode(body: &[u8]) -> Option<Value> {
    let envelope = body.strip_prefix(b"k8s\0")?;
    let mut api_version = String::new();
    let mut kind = String::new();
    let mut raw: &[u8] = &[];
    for (n, w) in fields(envelope)? {
        match (n, w) {
            (1, Wire::Bytes(type_meta)) => {
                for (m, v) in fields(type_meta)? {
                    match (m, v) {
                        (1, Wire::Bytes(b)) => api_version = String::from_utf8_lossy(b).into_owned(),
                        (2, Wire::Bytes(b)) => kind = String::from_utf8_lossy(b).into_owned(),
                        _ => {}
                    }
                }
            }
            (2, Wire::Bytes(b)) => raw = b,
            _ => {}
        }
    }
    let mut object = Map::new();
    object.insert("apiVersion".into(), json!(api_version));
    object.insert("kind".into(), json!(kind));
    let mut data = Map::new();
    let mut string_data = Map::new();
    let mut binary_data = Map::new();
    for (n, w) in fields(raw)? {
        let Wire::Bytes(b) = w else {
            if let (Wire::Varint(v), "ConfigMap", 4) | (Wire::Varint(v), "Secret", 5) = (&w, kind.as_str(), n)
            {
                object.insert("immutable".into(), json!(*v != 0));
            }
            continue;
        };
        match (kind.as_str(), n) {
            (_, 1) => _ = object.insert("metadata".into(), object_meta(b)?),
            ("Namespace" | "ServiceAccount", _) => {}
            ("ConfigMap", 2) => map_entry(b, &mut data, false)?,
            ("ConfigMap", 3) => map_entry(b, &mut binary_data, true)?,
            ("Secret", 2) => map_entry(b, &mut data, true)?,
            ("Secret", 3) => _ = object.insert("type".into(), text(b)),
            ("Secret", 4) => map_entry(b, &mut string_data, false)?,
            _ => return None,
        }
    }
    if !matches!(
        kind.as_str(),
        "Namespace" | "ServiceAccount" | "ConfigMap" | "Secret"
    ) {
        return None;
    }
    for (name, map) in [
        ("data", data),
        ("stringData", string_data),
        ("binaryData", binary_data),
    ] {
        if !map.is_empty() {
            object.insert(name.into(), Value::Object(map));
        }
    }
    Some(Value::Object(object))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(n: u8, bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![(n << 3) | 2, u8::try_from(bytes.len()).unwrap()];
        out.extend_from_slice(bytes);
        out
    }

    #[test]
    fn decodes_a_config_map() {
        let meta = [
            field(1, b"cm"),
            field(11, &[field(1, b"app"), field(2, b"x")].concat()),
        ]
        .concat();
        let raw = [
            field(1, &meta),
            field(2, &[field(1, b"k"), field(2, b"v")].concat()),
        ]
        .concat();
        let type_meta = [field(1, b"v1"), field(2, b"ConfigMap")].concat();
        let body = [b"k8s\0".to_vec(), field(1, &type_meta), field(2, &raw)].concat();
        let object = decode(&body).unwrap();
        assert_eq!(
            object,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm", "labels": {"app": "x"}}, "data": {"k": "v"}})
        );
    }
}
