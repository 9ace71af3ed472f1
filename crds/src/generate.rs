//! The CRDs generated from the Rust types, as objects, YAML files and per-kind validators.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use serde_json::Value;

use crate::validation::SchemaValidator;
use crate::{AccessPolicy, AgentGateway, AgentIdentity, ApprovalRequest, Connection};

/// Header of every generated file.
pub const GENERATED_HEADER: &str =
    "# Generated from the Rust types in crds/src by `agentgate-operator crds --out-dir crds`. Do not edit.\n";

/// Paths (in `structural::check` notation) where unknown fields are deliberately preserved. None:
/// every agentgate field is declared, so typos are refused instead of silently dropped.
pub const PRESERVE_UNKNOWN_FIELDS_ALLOWED: &[&str] = &[];

/// Every agentgate CRD, in a stable order (dependencies first: gateways, then what refers to them).
pub fn all_crds() -> Vec<CustomResourceDefinition> {
    vec![
        AgentGateway::crd(),
        Connection::crd(),
        AgentIdentity::crd(),
        AccessPolicy::crd(),
        ApprovalRequest::crd(),
    ]
}

/// File name of a CRD's YAML: `agentgate.dev_<plural>.yaml`, the convention of controller-gen.
pub fn file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}_{}.yaml", crd.spec.group, crd.spec.names.plural)
}

/// One CRD as YAML, with the generated-file header.
pub fn to_yaml(crd: &CustomResourceDefinition) -> String {
    let body = serde_saphyr::to_string(crd).expect("a CRD always serializes");
    format!("{GENERATED_HEADER}{body}")
}

/// All CRDs as one multi-document YAML stream.
pub fn all_yaml() -> String {
    all_crds().iter().map(to_yaml).collect::<Vec<_>>().join("---\n")
}

/// The `openAPIV3Schema` of a CRD's first version.
pub fn schema_of(crd: &CustomResourceDefinition) -> Value {
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("generated CRDs carry a schema");
    serde_json::to_value(schema).expect("schemas serialize")
}

/// A validator per kind, keyed by kind name.
pub fn validators() -> Vec<(String, SchemaValidator)> {
    all_crds()
        .iter()
        .map(|crd| (crd.spec.names.kind.clone(), SchemaValidator::new(schema_of(crd))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::structural;

    #[test]
    fn every_schema_is_structural() {
        for crd in all_crds() {
            let problems = structural::check(&schema_of(&crd), PRESERVE_UNKNOWN_FIELDS_ALLOWED);
            assert!(problems.is_empty(), "{}: {problems:#?}", crd.spec.names.kind);
        }
    }

    #[test]
    fn every_kind_has_status_conditions_and_observed_generation() {
        for crd in all_crds() {
            let schema = schema_of(&crd);
            let status = &schema["properties"]["status"]["properties"];
            assert!(
                status["observedGeneration"].is_object(),
                "{}",
                crd.spec.names.kind
            );
            let conditions = &status["conditions"];
            assert_eq!(
                conditions["x-kubernetes-list-type"], "map",
                "{}",
                crd.spec.names.kind
            );
            assert_eq!(
                conditions["x-kubernetes-list-map-keys"],
                serde_json::json!(["type"])
            );
            let version = &crd.spec.versions[0];
            assert!(
                version
                    .subresources
                    .as_ref()
                    .and_then(|s| s.status.as_ref())
                    .is_some()
            );
            assert!(
                version
                    .additional_printer_columns
                    .as_ref()
                    .is_some_and(|c| !c.is_empty())
            );
            assert!(crd.spec.names.short_names.as_ref().is_some_and(|s| !s.is_empty()));
        }
    }

    #[test]
    fn every_field_is_documented() {
        fn walk(node: &Value, path: &str, missing: &mut Vec<String>) {
            if let Some(props) = node.get("properties").and_then(Value::as_object) {
                for (name, child) in props {
                    let p = format!("{path}.{name}");
                    let top = path.is_empty() && matches!(name.as_str(), "apiVersion" | "kind" | "metadata");
                    if !top
                        && child
                            .get("description")
                            .and_then(Value::as_str)
                            .is_none_or(str::is_empty)
                    {
                        missing.push(p.clone());
                    }
                    walk(child, &p, missing);
                }
            }
            if let Some(items) = node.get("items") {
                walk(items, &format!("{path}[]"), missing);
            }
            if let Some(additional) = node.get("additionalProperties") {
                walk(additional, &format!("{path}[*]"), missing);
            }
        }
        for crd in all_crds() {
            let mut missing = Vec::new();
            walk(&schema_of(&crd), "", &mut missing);
            assert!(
                missing.is_empty(),
                "{} fields without a description: {missing:#?}",
                crd.spec.names.kind
            );
        }
    }
}
