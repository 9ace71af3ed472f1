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

/// Most bytes of names and values flattened from one JSON body. Each nested value's name repeats
/// its parents' names, so a long key over a wide array would otherwise grow to the key's length
/// times the array's (a 1 MiB body to gigabytes); past this the body is left unread.
pub const MAX_JSON_FIELD_BYTES: usize = 4 << 20;

/// The fields of an `application/x-www-form-urlencoded` body, names and values percent-decoded
/// (`+` is a space), split at `&` and at `;` (which older Rack and Python read as `&`), or
/// `None` past [`MAX_BODY_PARAMS`]. A name with a NUL is also read as PHP reads it, cut there
/// (`dryRun%00=false` is its `dryRun`). Bad escapes are kept as they are, as frameworks keep
/// them.
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
        let (name, value) = (text(name), text(value));
        if let Some(cut) = name.split_once('\0').map(|(cut, _)| cut.to_string()) {
            out.push((cut, value.clone()));
        }
        out.push((name, value));
    }
    Some(out)
}

/// The fields of a JSON body's top-level object, flattened as Rails and PHP name nested ones:
/// `{"user": {"role": "admin"}, "tags": ["a"]}` is `user[role]=admin` and `tags[]=a`. Scalars
/// other than strings stand as their JSON text. A body that is not an object has none; `None`
/// past [`MAX_BODY_PARAMS`], [`MAX_DEPTH`] or [`MAX_JSON_FIELD_BYTES`].
pub fn json_fields(body: &Value) -> Option<Vec<(String, String)>> {
    let mut fields = Fields {
        out: Vec::new(),
        bytes: 0,
    };
    if let Value::Object(map) = body {
        for (k, v) in map {
            fields.flatten(&mut k.clone(), v, 1)?;
        }
    }
    Some(fields.out)
}

/// The fields flattened so far and their size in bytes.
struct Fields {
    out: Vec<(String, String)>,
    bytes: usize,
}

impl Fields {
    /// Adds the fields under `name`; `name` is one buffer, extended for each child and cut back
    /// after it, so nothing is allocated for a name the budget refuses.
    fn flatten(&mut self, name: &mut String, v: &Value, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        let parent = name.len();
        match v {
            Value::Object(map) => {
                for (k, x) in map {
                    name.push('[');
                    name.push_str(k);
                    name.push(']');
                    self.flatten(name, x, depth + 1)?;
                    name.truncate(parent);
                }
            }
            Value::Array(items) => {
                for x in items {
                    name.push_str("[]");
                    self.flatten(name, x, depth + 1)?;
                    name.truncate(parent);
                }
            }
            scalar => {
                let text = match scalar {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                self.bytes = self.bytes.saturating_add(name.len() + text.len());
                if self.out.len() == MAX_BODY_PARAMS || self.bytes > MAX_JSON_FIELD_BYTES {
                    return None;
                }
                self.out.push((name.clone(), text));
            }
        }
        Some(())
    }
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
        // A name PHP reads up to its NUL is that name too.
        assert_eq!(
            form_fields(b"dryRun=true&dryRun%00x=false").unwrap(),
            pairs(&[("dryRun", "true"), ("dryRun", "false"), ("dryRun\0x", "false")])
        );
        assert_eq!(form_fields(b"a%0Ab=1").unwrap(), pairs(&[("a\nb", "1")]));
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

    /// A long key over a wide array names every element after the key: a 1 MiB body would have
    /// flattened to 10,000 names of 1 MB each. Past the byte budget it is left unread, having
    /// allocated no more than the budget.
    #[test]
    fn repeated_long_names_are_bounded_by_the_byte_budget() {
        let key = "A".repeat(1_000_000);
        let body = serde_json::json!({ key.clone(): vec![0; 10_000] });
        assert!(json_fields(&body).is_none());
        // Within the budget the same shape is read.
        let body = serde_json::json!({ "A".repeat(100): vec![0; 1_000] });
        let fields = json_fields(&body).unwrap();
        assert_eq!(fields.len(), 1_000);
        assert_eq!(fields[0], (format!("{}[]", "A".repeat(100)), "0".to_string()));
    }
}
