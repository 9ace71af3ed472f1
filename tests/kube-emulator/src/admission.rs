//! ValidatingAdmissionPolicy evaluation: policies bound (with the `Deny` action) to the request's
//! resource and operation have their `validations` evaluated with `object`, `oldObject`, `request`
//! and `namespaceObject` (through kube-cel's VAP evaluator), and a failing one refuses the request
//! with the API server's message. Not emulated: `paramKind`/params, `variables`, `auditAnnotations`,
//! the `Warn`/`Audit` actions, and the bindings' `matchResources`.

use serde_json::Value;

use kube_cel::{AdmissionRequest, GroupVersionKind, GroupVersionResource, VapEvaluator, VapExpression};

use crate::resources::ResourceType;
use crate::status::ApiError;
use crate::store::Store;

const GROUP: &str = "admissionregistration.k8s.io";

/// One write to admit.
#[derive(Debug)]
pub struct Admission<'a> {
    /// `CREATE`, `UPDATE` or `DELETE`.
    pub operation: &'a str,
    /// The resource.
    pub rt: &'a ResourceType,
    /// `status` for the subresource.
    pub subresource: Option<&'a str>,
    /// Namespace ("" for cluster-scoped).
    pub namespace: &'a str,
    /// Object name.
    pub name: &'a str,
    /// The object after the write (`None` for deletes).
    pub object: Option<&'a Value>,
    /// The object before it (`None` for creates).
    pub old: Option<&'a Value>,
    /// The requesting user.
    pub user: &'a str,
    /// Its groups.
    pub groups: &'a [String],
    /// `dryRun`.
    pub dry_run: bool,
}

fn strings(v: &Value) -> impl Iterator<Item = &str> {
    v.as_array().into_iter().flatten().filter_map(Value::as_str)
}

fn rule_matches(rule: &Value, a: &Admission<'_>) -> bool {
    let resource = match a.subresource {
        Some(sub) => format!("{}/{sub}", a.rt.plural),
        None => a.rt.plural.clone(),
    };
    strings(&rule["apiGroups"]).any(|g| g == "*" || g == a.rt.group)
        && strings(&rule["apiVersions"]).any(|v| v == "*" || v == a.rt.version)
        && strings(&rule["operations"]).any(|o| o == "*" || o == a.operation)
        && strings(&rule["resources"]).any(|r| r == "*" || r == resource)
}

fn policy_matches(policy: &Value, a: &Admission<'_>) -> bool {
    let constraints = &policy["spec"]["matchConstraints"];
    constraints["resourceRules"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|r| rule_matches(r, a))
        && !constraints["excludeResourceRules"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| rule_matches(r, a))
}

/// Admits the write or refuses it as the API server would.
pub fn admit(store: &Store, a: &Admission<'_>) -> Result<(), ApiError> {
    let bindings: Vec<&Value> = store
        .objects_of(GROUP, "validatingadmissionpolicybindings")
        .collect();
    if bindings.is_empty() {
        return Ok(());
    }
    let mut evaluator: Option<VapEvaluator> = None;
    for binding in bindings {
        let actions: Vec<&str> = strings(&binding["spec"]["validationActions"]).collect();
        if !actions.is_empty() && !actions.contains(&"Deny") {
            continue;
        }
        let policy_name = binding["spec"]["policyName"].as_str().unwrap_or_default();
        let Some(policy) = store
            .objects_of(GROUP, "validatingadmissionpolicies")
            .find(|p| p["metadata"]["name"].as_str() == Some(policy_name))
        else {
            continue;
        };
        if !policy_matches(policy, a) {
            continue;
        }
        let evaluator = evaluator.get_or_insert_with(|| build(store, a));
        let conditions: Vec<VapExpression> = policy["spec"]["matchConditions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| VapExpression {
                expression: c["expression"].as_str().unwrap_or("true").into(),
                message: None,
                message_expression: None,
            })
            .collect();
        if evaluator.evaluate(&conditions).iter().any(|r| !r.passed) {
            continue;
        }
        for validation in policy["spec"]["validations"].as_array().into_iter().flatten() {
            let expression = validation["expression"].as_str().unwrap_or("true").to_string();
            let message = validation["message"].as_str().map(String::from).or_else(|| {
                // Without a message the API server names the expression.
                validation["messageExpression"]
                    .is_null()
                    .then(|| format!("failed expression: {expression}"))
            });
            let check = VapExpression {
                expression,
                message,
                message_expression: validation["messageExpression"].as_str().map(String::from),
            };
            let result = evaluator.evaluate(std::slice::from_ref(&check));
            if let Some(failed) = result.iter().find(|r| !r.passed) {
                let why = format!(
                    "ValidatingAdmissionPolicy '{policy_name}' with binding '{}' denied request: {}",
                    binding["metadata"]["name"].as_str().unwrap_or_default(),
                    failed.message.clone().unwrap_or_default()
                );
                return Err(refusal(
                    a,
                    validation["reason"].as_str().unwrap_or("Invalid"),
                    &why,
                ));
            }
        }
    }
    Ok(())
}

fn build(store: &Store, a: &Admission<'_>) -> VapEvaluator {
    let mut groups = a.groups.to_vec();
    groups.push("system:authenticated".into());
    let request = AdmissionRequest {
        operation: a.operation.into(),
        username: a.user.into(),
        groups,
        name: a.name.into(),
        namespace: a.namespace.into(),
        dry_run: a.dry_run,
        kind: GroupVersionKind {
            group: a.rt.group.clone(),
            version: a.rt.version.clone(),
            kind: a.rt.kind.clone(),
        },
        resource: GroupVersionResource {
            group: a.rt.group.clone(),
            version: a.rt.version.clone(),
            resource: a.rt.plural.clone(),
        },
        ..Default::default()
    };
    let mut builder = VapEvaluator::builder()
        .request(request)
        .object(a.object.cloned().unwrap_or(Value::Null));
    if let Some(old) = a.old {
        builder = builder.old_object(old.clone());
    }
    if let Some(ns) = store
        .objects_of("", "namespaces")
        .find(|n| !a.namespace.is_empty() && n["metadata"]["name"].as_str() == Some(a.namespace))
    {
        builder = builder.namespace_object(ns.clone());
    }
    builder.build()
}

fn refusal(a: &Admission<'_>, reason: &str, why: &str) -> ApiError {
    let names = a.rt.names();
    match reason {
        // `field.Invalid` with an empty path (hence "is invalid: : ...") on the group/resource: kubectl
        // prints `The deployments "nginx" is invalid: : ValidatingAdmissionPolicy '...' ...`, as in
        // the Kubernetes documentation of ValidatingAdmissionPolicy.
        "Invalid" => {
            let mut e = ApiError::unprocessable(format!(
                "{} \"{}\" is invalid: : {why}",
                names.group_resource(),
                a.name
            ));
            e.details = Some(serde_json::json!({
                "name": a.name, "group": names.group, "kind": names.plural,
                "causes": [{"reason": "FieldValueInvalid", "message": why, "field": ""}],
            }));
            e
        }
        _ => ApiError::forbidden(names, a.name, why),
    }
}
