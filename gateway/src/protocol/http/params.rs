//! Request parameters a form or JSON body carries, named as a query names them.
//!
//! Rails, Laravel, PHP's `$_REQUEST` and Flask's `request.values` merge a body's fields with the
//! query's, so `POST /users` with the form `force=true` is, to them, `?force=true`. The policy
//! engine reads these fields beside the query (see [`crate::policy::BodyParams`]).

use serde_json::Value;

/// Most fields read from one body; a body with more is left unread (restricting rules take it
/// to carry whatever they look for).
pub const MAX_BODY_PARAMS: usize = 10_000;

/// Deepest JSON nesting flattened into field names.
const MAX_DEPTH: usize = 32;

/// The fields of an `application/x-www-form-urlencoded` body, names and values percent-decoded
/// (`+` is a space), split at `&` and at `;` (which older Rack and Python read as `&`), or
/// `None` past [`MAX_BODY_PARAMS`]. Bad escapes are kept as they are, as frameworks keep them.
pub fn form_fields(body: &[u8]) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    for pair in body.split(|&b| b == b'&' || b == b';') {
        if pair.is_empty() {
            continue;
        }
        if out.len() == MAX_BODY_PARAMS {
            return None;
        }
        let (name, value) = match pair.iter().position(|&b| b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &b""[..]),
        };
        let text =
            |s: &[u8]| String::from_utf8_lossy(&super::method_override::percent_decode(s)).into_owned();
        out.push((text(name), text(value)));
    }
    Some(out)
}

/// The fields of a JSON body's top-level object, flattened as Rails and PHP name nested ones:
/// `{"user": {"role": "admin"}, "tags": ["a"]}` is `user[role]=admin` and `tags[]=a`. Scalars
/// other than strings stand as their JSON text. A body that is not an object has none; `None`
/// past [`MAX_BODY_PARAMS`] or [`MAX_DEPTH`].
pub fn json_fields(body: &Value) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    if let Value::Object(map) = body {
        for (k, v) in map {
            flatten(k.clone(), v, 1, &mut out)?;
        }
    }
    Some(out)
}

fn flatten(name: String, v: &Value, depth: usize, out: &mut Vec<(String, String)>) -> Option<()> {
    if depth > MAX_DEPTH {
        return None;
    }
    match v {
        Value::Object(map) => {
            for (k, x) in map {
                flatten(format!("{name}[{k}]"), x, depth + 1, out)?;
            }
        }
        Value::Array(items) => {
            for x in items {
                flatten(format!("{name}[]"), x, depth + 1, out)?;
            }
        }
        scalar => {
            if out.len() == MAX_BODY_PARAMS {
                return None;
            }
            let text = match scalar {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            out.push((name, text));
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn form_fields_are_decoded_as_frameworks_decode_them() {
        assert_eq!(
            form_fields(b"force=true&name=a+b%21;flag&&bad=%zz").unwrap(),
            pairs(&[("force", "true"), ("name", "a b!"), ("flag", ""), ("bad", "%zz")])
        );
        assert_eq!(form_fields(b"").unwrap(), pairs(&[]));
        let many = "a=1&".repeat(MAX_BODY_PARAMS + 1);
        assert!(form_fields(many.as_bytes()).is_none());
        assert_eq!(
            form_fields("a=1&".repeat(MAX_BODY_PARAMS).as_bytes())
                .unwrap()
                .len(),
            MAX_BODY_PARAMS
        );
    }

    #[test]
    fn json_fields_are_named_as_rails_names_nested_parameters() {
        let v = serde_json::json!({"force": true, "user": {"role": "admin", "ids": [1, "x"]}, "n": null});
        let mut got = json_fields(&v).unwrap();
        got.sort();
        assert_eq!(
            got,
            pairs(&[
                ("force", "true"),
                ("n", "null"),
                ("user[ids][]", "1"),
                ("user[ids][]", "x"),
                ("user[role]", "admin"),
            ])
        );
        assert_eq!(json_fields(&serde_json::json!([{"a": 1}])).unwrap(), pairs(&[]));
        let mut deep = serde_json::json!("x");
        for _ in 0..MAX_DEPTH + 1 {
            deep = serde_json::json!([deep]);
        }
        assert!(json_fields(&serde_json::json!({ "a": deep })).is_none());
        let wide = Value::Array(vec![Value::Bool(true); MAX_BODY_PARAMS + 1]);
        assert!(json_fields(&serde_json::json!({ "a": wide })).is_none());
    }
}
