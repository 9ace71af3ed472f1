//! JSON parsing for untrusted token parts: duplicate member names are refused (two parsers reading
//! `{"sub":"a","sub":"b"}` differently is a classic confusion), and nesting depth is bounded.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Deepest nesting accepted in a token header or claims set.
pub const MAX_DEPTH: usize = 16;

/// Parses `bytes` as one JSON value with the rules above.
pub fn parse(bytes: &[u8]) -> Result<Value, String> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = Seed { depth: 0 }
        .deserialize(&mut de)
        .map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(value)
}

#[derive(Clone, Copy)]
struct Seed {
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for Seed {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        if self.depth > MAX_DEPTH {
            return Err(de::Error::custom(format!(
                "JSON nested deeper than {MAX_DEPTH} levels"
            )));
        }
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Seed {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(Seed {
            depth: self.depth + 1,
        })? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value_seed(Seed {
                depth: self.depth + 1,
            })?;
            if out.insert(key.clone(), value).is_some() {
                return Err(de::Error::custom(format!("duplicate member {key:?}")));
            }
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_depth_and_trailing_data_are_refused() {
        assert!(parse(br#"{"a":1,"b":[1,2]}"#).is_ok());
        assert!(
            parse(br#"{"sub":"a","sub":"b"}"#)
                .unwrap_err()
                .contains("duplicate")
        );
        assert!(
            parse(br#"{"x":{"y":{"a":1,"a":2}}}"#)
                .unwrap_err()
                .contains("duplicate")
        );
        let deep = "[".repeat(40) + &"]".repeat(40);
        assert!(parse(deep.as_bytes()).unwrap_err().contains("deeper"));
        assert!(parse(br#"{"a":1} x"#).is_err());
    }

    #[test]
    fn hostile_documents_are_refused_without_panic() {
        let seeds: [&[u8]; 2] = [
            br#"{"keys":[{"kty":"EC","crv":"P-256","x":"fHE2","y":"7iTF","kid":"k1","alg":"ES256"}],"n":-1.5e300}"#,
            "{\"a\":[[[[{}]]]],\"\\u00e9\":\"\\ud83d\\ude00\",\"b\":null,\"c\":true}".as_bytes(),
        ];
        crate::mutate::each_mutant(&seeds, 4_000, |b| {
            if let Ok(v) = parse(b) {
                // Whatever it accepts is JSON serde_json reads the same way.
                let plain: serde_json::Value = serde_json::from_slice(b).expect("accepted input is JSON");
                assert_eq!(v, plain);
            }
        });
    }
}
