//! Validation of an object against a CRD's `openAPIV3Schema`, the way the Kubernetes API server does
//! it: defaults, then the structural checks (types, required fields, unknown fields, enums, patterns,
//! bounds, list uniqueness), then the CEL `x-kubernetes-validations` rules (evaluated by `kube-cel`).
//!
//! Errors carry a field path and read like the API server's (`spec.port: Invalid value: 0: ...`), so
//! the standalone loader and the test API-server emulator report bad objects the way a cluster would.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::Mutex;

use kube_cel::{CompiledSchema, Validator};
use regex::Regex;
use serde_json::{Map, Value};

/// Kubernetes' `field.ErrorType`, which decides the wording of the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldErrorKind {
    /// A required field is missing.
    Required,
    /// A value of the wrong type or shape.
    TypeInvalid,
    /// A value outside an enum.
    NotSupported,
    /// A value that breaks a bound, a pattern or a CEL rule.
    Invalid,
    /// A field the schema does not declare.
    UnknownField,
    /// A repeated entry in a set or map list.
    Duplicate,
    /// A string or list over its maximum size.
    TooLong,
    /// A list with too many items.
    TooMany,
}

impl FieldErrorKind {
    /// The reason Kubernetes puts in `Status.details.causes[].reason`.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Required => "FieldValueRequired",
            Self::TypeInvalid => "FieldValueTypeInvalid",
            Self::NotSupported => "FieldValueNotSupported",
            Self::Invalid => "FieldValueInvalid",
            Self::UnknownField => "FieldValueInvalid",
            Self::Duplicate => "FieldValueDuplicate",
            Self::TooLong => "FieldValueTooLong",
            Self::TooMany => "FieldValueTooMany",
        }
    }
}

/// One problem with one field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field, e.g. `spec.rules[0].action`.
    pub path: String,
    /// What kind of problem.
    pub kind: FieldErrorKind,
    /// The complete message after the path, in the API server's wording.
    pub detail: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.detail)
        } else {
            write!(f, "{}: {}", self.path, self.detail)
        }
    }
}

/// A validator for one kind, built once from its `openAPIV3Schema`.
pub struct SchemaValidator {
    schema: Value,
    compiled: CompiledSchema,
    cel: Validator,
    patterns: Mutex<HashMap<String, Option<Regex>>>,
}

impl fmt::Debug for SchemaValidator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SchemaValidator").finish_non_exhaustive()
    }
}

impl SchemaValidator {
    /// Builds a validator. CEL rules that do not compile surface as errors on every validated object
    /// (fail closed); `crate::structural::check` refuses such schemas up front.
    pub fn new(schema: Value) -> Self {
        let compiled = kube_cel::compile_schema(&schema);
        Self {
            schema,
            compiled,
            cel: Validator::new(),
            patterns: Mutex::new(HashMap::new()),
        }
    }

    /// The schema this validator checks against.
    pub fn schema(&self) -> &Value {
        &self.schema
    }

    /// Applies the schema's defaults to `object`, as the API server does before storing it.
    pub fn apply_defaults(&self, object: &Value) -> Value {
        kube_cel::apply_defaults(&self.schema, object)
    }

    /// Validates a whole object (apiVersion, kind, metadata, spec, status). `old` enables transition
    /// rules (`oldSelf`) on updates. Defaults are applied before checking.
    pub fn validate(&self, object: &Value, old: Option<&Value>) -> Vec<FieldError> {
        let defaulted = self.apply_defaults(object);
        let mut errors = Vec::new();
        self.walk(&self.schema, &defaulted, "", true, &mut errors);
        if errors.is_empty() {
            // CEL rules are evaluated only on structurally valid objects: on a wrongly typed field the
            // API server skips them too, and their messages would only repeat the type error.
            if let Err(cel_errors) = self.cel.validate_compiled(&self.compiled, &defaulted, old) {
                for e in cel_errors.into_vec() {
                    errors.push(cel_error(&e, &defaulted));
                }
            }
        }
        errors
    }

    fn walk(&self, schema: &Value, value: &Value, path: &str, root: bool, errors: &mut Vec<FieldError>) {
        let Some(schema) = schema.as_object() else { return };
        if value.is_null() {
            if schema.get("nullable").and_then(Value::as_bool) == Some(true) {
                return;
            }
            // `null` for an optional field means "not set" in apply; treat it like the API server,
            // which drops nulls of non-nullable fields before validation.
            return;
        }
        let int_or_string = schema.get("x-kubernetes-int-or-string").and_then(Value::as_bool) == Some(true);
        let ty = schema.get("type").and_then(Value::as_str);
        if int_or_string {
            if !(value.is_string() || value.is_i64() || value.is_u64()) {
                errors.push(type_error(path, value, "integer or string"));
            }
            return;
        }
        match ty {
            Some("object") => self.walk_object(schema, value, path, root, errors),
            Some("array") => self.walk_array(schema, value, path, errors),
            Some("string") => self.check_string(schema, value, path, errors),
            Some("integer") => {
                if value.is_i64() || value.is_u64() {
                    check_number_bounds(schema, value, path, errors);
                } else {
                    errors.push(type_error(path, value, "integer"));
                }
            }
            Some("number") => {
                if value.is_number() {
                    check_number_bounds(schema, value, path, errors);
                } else {
                    errors.push(type_error(path, value, "number"));
                }
            }
            Some("boolean") if !value.is_boolean() => errors.push(type_error(path, value, "boolean")),
            _ => {}
        }
        check_enum(schema, value, path, errors);
    }

    fn walk_object(
        &self,
        schema: &Map<String, Value>,
        value: &Value,
        path: &str,
        root: bool,
        errors: &mut Vec<FieldError>,
    ) {
        let Some(object) = value.as_object() else {
            errors.push(type_error(path, value, "object"));
            return;
        };
        let properties = schema.get("properties").and_then(Value::as_object);
        let preserve = schema
            .get("x-kubernetes-preserve-unknown-fields")
            .and_then(Value::as_bool)
            == Some(true);
        let embedded = schema
            .get("x-kubernetes-embedded-resource")
            .and_then(Value::as_bool)
            == Some(true);
        if let Some(required) = schema.get("required").and_then(Value::as_array) {
            for name in required.iter().filter_map(Value::as_str) {
                if object.get(name).is_none_or(Value::is_null) {
                    errors.push(FieldError {
                        path: join(path, name),
                        kind: FieldErrorKind::Required,
                        detail: "Required value".into(),
                    });
                }
            }
        }
        if let Some(max) = schema.get("maxProperties").and_then(Value::as_u64)
            && object.len() as u64 > max
        {
            errors.push(FieldError {
                path: path.to_string(),
                kind: FieldErrorKind::TooMany,
                detail: format!("Too many: {}: must have at most {max} items", object.len()),
            });
        }
        for (name, child) in object {
            let child_path = join(path, name);
            // The API server owns these; the CRD schema only says `type: object` for metadata.
            if (root || embedded) && matches!(name.as_str(), "apiVersion" | "kind" | "metadata") {
                continue;
            }
            if let Some(child_schema) = properties.and_then(|p| p.get(name)) {
                self.walk(child_schema, child, &child_path, false, errors);
            } else if let Some(additional) = schema.get("additionalProperties") {
                match additional {
                    Value::Bool(true) => {}
                    Value::Bool(false) => errors.push(unknown_field(&child_path)),
                    other => self.walk(other, child, &child_path, false, errors),
                }
            } else if !preserve {
                // The API server prunes undeclared fields silently; strict field validation (what
                // `kubectl apply --validate=strict` asks for) refuses them, and so do we.
                errors.push(unknown_field(&child_path));
            }
        }
    }

    fn walk_array(
        &self,
        schema: &Map<String, Value>,
        value: &Value,
        path: &str,
        errors: &mut Vec<FieldError>,
    ) {
        let Some(items) = value.as_array() else {
            errors.push(type_error(path, value, "array"));
            return;
        };
        if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
            && (items.len() as u64) < min
        {
            errors.push(FieldError {
                path: path.to_string(),
                kind: FieldErrorKind::Invalid,
                detail: format!(
                    "Invalid value: {}: {path} in body should have at least {min} items",
                    items.len()
                ),
            });
        }
        if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
            && items.len() as u64 > max
        {
            errors.push(FieldError {
                path: path.to_string(),
                kind: FieldErrorKind::TooMany,
                detail: format!("Too many: {}: must have at most {max} items", items.len()),
            });
        }
        if let Some(item_schema) = schema.get("items") {
            for (i, item) in items.iter().enumerate() {
                self.walk(item_schema, item, &format!("{path}[{i}]"), false, errors);
            }
        }
        match schema.get("x-kubernetes-list-type").and_then(Value::as_str) {
            Some("set") => {
                let mut seen = BTreeSet::new();
                for (i, item) in items.iter().enumerate() {
                    let key = item.to_string();
                    if !seen.insert(key) {
                        errors.push(FieldError {
                            path: format!("{path}[{i}]"),
                            kind: FieldErrorKind::Duplicate,
                            detail: format!("Duplicate value: {item}"),
                        });
                    }
                }
            }
            Some("map") => {
                let keys: Vec<&str> = schema
                    .get("x-kubernetes-list-map-keys")
                    .and_then(Value::as_array)
                    .map(|k| k.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                let mut seen = BTreeSet::new();
                for (i, item) in items.iter().enumerate() {
                    let key: Vec<String> = keys
                        .iter()
                        .map(|k| item.get(*k).map(Value::to_string).unwrap_or_default())
                        .collect();
                    if !seen.insert(key.clone()) {
                        let shown: Vec<String> = keys
                            .iter()
                            .zip(&key)
                            .map(|(k, v)| format!("\"{k}\":{v}"))
                            .collect();
                        errors.push(FieldError {
                            path: format!("{path}[{i}]"),
                            kind: FieldErrorKind::Duplicate,
                            detail: format!(
                                "Duplicate value: map[string]interface {{}}{{{}}}",
                                shown.join(", ")
                            ),
                        });
                    }
                }
            }
            _ => {}
        }
    }

    fn check_string(
        &self,
        schema: &Map<String, Value>,
        value: &Value,
        path: &str,
        errors: &mut Vec<FieldError>,
    ) {
        let Some(s) = value.as_str() else {
            errors.push(type_error(path, value, "string"));
            return;
        };
        let len = s.chars().count() as u64;
        if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
            && len > max
        {
            errors.push(FieldError {
                path: path.to_string(),
                kind: FieldErrorKind::TooLong,
                detail: format!("Too long: may not be more than {max} bytes"),
            });
        }
        if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
            && len < min
        {
            errors.push(FieldError {
                path: path.to_string(),
                kind: FieldErrorKind::Invalid,
                detail: format!(
                    "Invalid value: {}: {path} in body should be at least {min} chars long",
                    quoted(value)
                ),
            });
        }
        if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
            let mut cache = self.patterns.lock().unwrap_or_else(|e| e.into_inner());
            let re = cache
                .entry(pattern.to_string())
                .or_insert_with(|| Regex::new(pattern).ok());
            let matched = re.as_ref().map(|re| re.is_match(s));
            if matched != Some(true) {
                errors.push(FieldError {
                    path: path.to_string(),
                    kind: FieldErrorKind::Invalid,
                    detail: format!(
                        "Invalid value: {}: {path} in body should match '{pattern}'",
                        quoted(value)
                    ),
                });
            }
        }
        if schema.get("format").and_then(Value::as_str) == Some("date-time") && !is_rfc3339(s) {
            errors.push(FieldError {
                path: path.to_string(),
                kind: FieldErrorKind::Invalid,
                detail: format!("Invalid value: {value}: {path} in body must be of type date-time"),
            });
        }
    }
}

fn check_number_bounds(schema: &Map<String, Value>, value: &Value, path: &str, errors: &mut Vec<FieldError>) {
    let Some(n) = value.as_f64() else { return };
    if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
        let exclusive = schema.get("exclusiveMaximum").and_then(Value::as_bool) == Some(true);
        if n > max || (exclusive && n == max) {
            let op = if exclusive {
                "less than"
            } else {
                "less than or equal to"
            };
            errors.push(FieldError {
                path: path.to_string(),
                kind: FieldErrorKind::Invalid,
                detail: format!(
                    "Invalid value: {value}: {path} in body should be {op} {}",
                    num(max)
                ),
            });
        }
    }
    if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
        let exclusive = schema.get("exclusiveMinimum").and_then(Value::as_bool) == Some(true);
        if n < min || (exclusive && n == min) {
            let op = if exclusive {
                "greater than"
            } else {
                "greater than or equal to"
            };
            errors.push(FieldError {
                path: path.to_string(),
                kind: FieldErrorKind::Invalid,
                detail: format!(
                    "Invalid value: {value}: {path} in body should be {op} {}",
                    num(min)
                ),
            });
        }
    }
}

fn num(f: f64) -> String {
    if f.fract() == 0.0 && f.abs() < 1e15 {
        format!("{}", f as i64)
    } else {
        f.to_string()
    }
}

fn check_enum(schema: &Map<String, Value>, value: &Value, path: &str, errors: &mut Vec<FieldError>) {
    let Some(allowed) = schema.get("enum").and_then(Value::as_array) else {
        return;
    };
    if !allowed.contains(value) {
        let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
        errors.push(FieldError {
            path: path.to_string(),
            kind: FieldErrorKind::NotSupported,
            detail: format!(
                "Unsupported value: {value}: supported values: {}",
                list.join(", ")
            ),
        });
    }
}

fn type_error(path: &str, value: &Value, expected: &str) -> FieldError {
    let found = match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    FieldError {
        path: path.to_string(),
        kind: FieldErrorKind::TypeInvalid,
        detail: format!("Invalid value: \"{found}\": {path} in body must be of type {expected}: \"{found}\""),
    }
}

/// A value as errors quote it (JSON), a URL's user info (`user:password@`) replaced by `***`:
/// an endpoint refused by a rule must not put its password in an error, a log or a status.
fn quoted(value: &Value) -> String {
    match value.as_str().and_then(|s| s.split_once("://")) {
        Some((scheme, rest)) if rest.contains('@') => {
            let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
            Value::String(format!("{scheme}://***@{host}")).to_string()
        }
        _ => value.to_string(),
    }
}

fn unknown_field(path: &str) -> FieldError {
    FieldError {
        path: path.to_string(),
        kind: FieldErrorKind::UnknownField,
        detail: format!("unknown field \"{path}\""),
    }
}

fn cel_error(e: &kube_cel::ValidationError, object: &Value) -> FieldError {
    let path = e.field_path.clone();
    let shown = match lookup(object, &path) {
        Some(Value::Object(_)) | None => "\"object\"".to_string(),
        Some(Value::Array(_)) => "\"array\"".to_string(),
        Some(v) => quoted(v),
    };
    let kind = match e.reason.as_deref() {
        Some("FieldValueRequired") => FieldErrorKind::Required,
        Some("FieldValueDuplicate") => FieldErrorKind::Duplicate,
        Some("FieldValueForbidden") | Some("FieldValueInvalid") | None | Some(_) => FieldErrorKind::Invalid,
    };
    let message = match e.kind {
        kube_cel::ErrorKind::ValidationFailure => e.message.clone(),
        _ => format!("rule {:?} could not be evaluated: {}", e.rule, e.message),
    };
    FieldError {
        path,
        kind,
        detail: format!("Invalid value: {shown}: {message}"),
    }
}

/// Follows a path like `spec.rules[0].approval` through a value.
fn lookup<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    let mut current = value;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (name, indices) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !name.is_empty() {
            current = current.get(name)?;
        }
        for index in indices.split('[').filter(|s| !s.is_empty()) {
            let index = index.trim_end_matches(']');
            current = match index.parse::<usize>() {
                Ok(i) => current.get(i)?,
                Err(_) => current.get(index.trim_matches('"'))?,
            };
        }
    }
    Some(current)
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

/// RFC 3339 `date-time`, e.g. `2026-11-24T15:00:00Z` or with an offset and fraction.
pub fn is_rfc3339(s: &str) -> bool {
    static RE: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])[Tt]([01]\d|2[0-3]):[0-5]\d:([0-5]\d|60)(\.\d+)?([Zz]|[+-]([01]\d|2[0-3]):[0-5]\d)$")
            .expect("static regex")
    })
    .is_match(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn validator() -> SchemaValidator {
        SchemaValidator::new(json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["port", "mode"],
                    "properties": {
                        "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                        "mode": {"type": "string", "enum": ["A", "B"]},
                        "name": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 5},
                        "tags": {"type": "array", "items": {"type": "string"}, "x-kubernetes-list-type": "set"},
                        "window": {"type": "string", "nullable": true}
                    },
                    "x-kubernetes-validations": [
                        {"rule": "self.mode != 'B' || has(self.window)", "message": "mode B needs a window"}
                    ]
                }
            }
        }))
    }

    fn messages(errors: &[FieldError]) -> Vec<String> {
        errors.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_valid_object_passes() {
        let errors = validator().validate(&json!({"spec": {"port": 80, "mode": "A", "name": "abc"}}), None);
        assert!(errors.is_empty(), "{errors:?}");
    }

    #[test]
    fn structural_errors_name_the_field() {
        let errors = validator().validate(
            &json!({"spec": {"port": 0, "mode": "C", "name": "ABCDEFG", "extra": 1, "tags": ["a", "a"]}}),
            None,
        );
        let m = messages(&errors);
        assert!(
            m.contains(
                &"spec.port: Invalid value: 0: spec.port in body should be greater than or equal to 1"
                    .to_string()
            ),
            "{m:?}"
        );
        assert!(
            m.contains(&"spec.mode: Unsupported value: \"C\": supported values: \"A\", \"B\"".to_string()),
            "{m:?}"
        );
        assert!(m.iter().any(|e| e.starts_with("spec.name: Too long")), "{m:?}");
        assert!(m.iter().any(|e| e.starts_with("spec.name: Invalid value: \"ABCDEFG\"") && e.contains("should match")), "{m:?}");
        assert!(
            m.contains(&"spec.extra: unknown field \"spec.extra\"".to_string()),
            "{m:?}"
        );
        assert!(
            m.contains(&"spec.tags[1]: Duplicate value: \"a\"".to_string()),
            "{m:?}"
        );
    }

    #[test]
    fn missing_and_mistyped_fields_are_reported() {
        let m = messages(&validator().validate(&json!({"spec": {"port": "eighty"}}), None));
        assert!(m.contains(&"spec.mode: Required value".to_string()), "{m:?}");
        assert!(
            m.iter()
                .any(|e| e.starts_with("spec.port: Invalid value: \"string\"")
                    && e.contains("must be of type integer")),
            "{m:?}"
        );
    }

    #[test]
    fn cel_rules_run_on_structurally_valid_objects() {
        let m = messages(&validator().validate(&json!({"spec": {"port": 80, "mode": "B"}}), None));
        assert_eq!(
            m,
            vec!["spec: Invalid value: \"object\": mode B needs a window".to_string()]
        );
        let ok = validator().validate(&json!({"spec": {"port": 80, "mode": "B", "window": "1h"}}), None);
        assert!(ok.is_empty(), "{ok:?}");
    }

    #[test]
    fn urls_are_quoted_without_their_user_info() {
        let m = messages(&validator().validate(
            &json!({"spec": {"port": 80, "mode": "A", "name": "postgres://app:hunter2/x@db/orders"}}),
            None,
        ));
        assert!(
            m.iter().any(|e| e.contains("\"postgres://***@db/orders\"")),
            "{m:?}"
        );
        assert!(m.iter().all(|e| !e.contains("hunter2")), "{m:?}");
        assert_eq!(quoted(&json!("https://host/a")), "\"https://host/a\"");
    }

    #[test]
    fn rfc3339() {
        assert!(is_rfc3339("2026-11-24T15:00:00Z"));
        assert!(is_rfc3339("2026-11-24T15:00:00.123+02:00"));
        assert!(!is_rfc3339("2026-11-24 15:00:00"));
        assert!(!is_rfc3339("yesterday"));
    }
}
