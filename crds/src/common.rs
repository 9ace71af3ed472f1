//! Types shared by several kinds: conditions, references, durations.

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// Pattern of every duration field: one or more `<integer><unit>` groups, units ms, s, m, h, d.
/// `d` is accepted (retention periods are naturally in days), which Go's duration syntax lacks.
pub const DURATION_PATTERN: &str = r"^([0-9]{1,9}(ms|s|m|h|d))+$";

/// Pattern of names that become DNS labels (listener names, rule names, references to objects).
pub const DNS_LABEL_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// Pattern of references to namespaced objects by name (DNS-1123 subdomain).
pub const DNS_SUBDOMAIN_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// A duration such as `30s`, `15m`, `1h30m` or `90d`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DurationString(pub String);

impl DurationString {
    /// Parses the duration. The schema pattern already guarantees the shape; this also guards overflow.
    pub fn to_std(&self) -> Result<std::time::Duration, String> {
        parse_duration(&self.0)
    }
}

impl From<&str> for DurationString {
    fn from(s: &str) -> Self {
        Self(s.to_string())
    }
}

impl JsonSchema for DurationString {
    fn schema_name() -> Cow<'static, str> {
        "DurationString".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "maxLength": 32,
        })
    }
}

/// Parses `1h30m`, `90d`, `250ms`. Returns a message naming what was expected on failure.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let expected = || {
        format!("invalid duration {s:?}: expected groups like 30s, 15m, 1h30m, 90d (units ms, s, m, h, d)")
    };
    if s.is_empty() {
        return Err(expected());
    }
    let mut total: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 9 {
            return Err(expected());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| expected())?;
        rest = &rest[digits..];
        let (unit_ms, len) = if rest.starts_with("ms") {
            (1, 2)
        } else if rest.starts_with('s') {
            (1_000, 1)
        } else if rest.starts_with('m') {
            (60_000, 1)
        } else if rest.starts_with('h') {
            (3_600_000, 1)
        } else if rest.starts_with('d') {
            (86_400_000, 1)
        } else {
            return Err(expected());
        };
        rest = &rest[len..];
        total = n
            .checked_mul(unit_ms)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(expected)?;
    }
    Ok(std::time::Duration::from_millis(total))
}

/// One observation of an object's state, in the shape every Kubernetes controller uses
/// (`metav1.Condition`), so `kubectl wait --for=condition=Ready` works.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Type of the condition, e.g. `Ready`.
    #[schemars(length(min = 1, max = 316))]
    pub r#type: String,
    /// Status of the condition: `True`, `False` or `Unknown`.
    pub status: ConditionStatus,
    /// The `metadata.generation` the condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub observed_generation: Option<i64>,
    /// When the status last changed (RFC 3339).
    pub last_transition_time: String,
    /// Machine-readable reason in CamelCase, e.g. `MissingSecret`.
    #[schemars(length(min = 1, max = 1024))]
    pub reason: String,
    /// Human-readable message; for Invalid objects it names the bad field or missing reference.
    #[serde(default)]
    #[schemars(length(max = 32768))]
    pub message: String,
}

/// Status of a condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl From<bool> for ConditionStatus {
    fn from(b: bool) -> Self {
        if b { Self::True } else { Self::False }
    }
}

/// Marks a `Vec<Condition>` field as a list-map keyed by `type`, as Kubernetes does for conditions,
/// so server-side apply merges conditions by type instead of replacing the list.
pub fn conditions_schema(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = <Vec<Condition>>::json_schema(generator);
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert("x-kubernetes-list-map-keys".into(), serde_json::json!(["type"]));
    schema
}

/// The status every agentgate kind carries, apart from kind-specific additions.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommonStatus {
    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Current conditions of the object; `Ready` is always present once reconciled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}

/// A reference to one key of a Secret in the same namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret. In a cluster it must be labelled `agentgate.dev/credential: "true"`. In
    /// standalone mode: a `Secret` manifest in the manifests directory, or a directory
    /// `<secrets-dir>/<name>/` holding one file per key (the layout of a mounted Secret volume).
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN_PATTERN))]
    pub name: String,
    /// Key within the Secret.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

/// A reference to a Secret in the same namespace, by name only (the keys are implied by its use).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Name of the Secret. In a cluster it must be labelled `agentgate.dev/credential: "true"`.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN_PATTERN))]
    pub name: String,
}

/// A reference to another agentgate object in the same namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalRef {
    /// Name of the referenced object.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN_PATTERN))]
    pub name: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("15m").unwrap().as_secs(), 900);
        assert_eq!(parse_duration("1h30m").unwrap().as_secs(), 5400);
        assert_eq!(parse_duration("90d").unwrap().as_secs(), 90 * 86400);
        assert_eq!(parse_duration("250ms").unwrap().as_millis(), 250);
        for bad in ["", "15", "m", "1.5h", "1w", "-1s", "1h 30m", "9999999999s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn duration_pattern_agrees_with_parser() {
        let re = regex::Regex::new(DURATION_PATTERN).unwrap();
        for s in ["15m", "1h30m", "90d", "250ms", "1d2h3m4s5ms"] {
            assert!(re.is_match(s) && parse_duration(s).is_ok(), "{s}");
        }
        for s in ["", "1.5h", "1w", "h"] {
            assert!(!re.is_match(s) && parse_duration(s).is_err(), "{s}");
        }
    }
}
