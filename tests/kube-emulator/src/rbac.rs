//! RBAC authorization from the stored Roles, ClusterRoles, RoleBindings and ClusterRoleBindings, as
//! the API server's RBAC authorizer decides (allow-only rules, `*` wildcards, `resourceNames`,
//! subresources as `resource/subresource`). Off unless `Config::authorization` is set.

use serde_json::Value;

use crate::auth::User;
use crate::resources::ResourceType;
use crate::status::ApiError;
use crate::store::Store;

/// One request to authorize.
#[derive(Debug)]
pub struct Request<'a> {
    /// Who.
    pub user: &'a User,
    /// The Kubernetes verb (`get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, ...).
    pub verb: &'a str,
    /// The resource.
    pub rt: &'a ResourceType,
    /// The subresource (`status`, `log`), if one.
    pub subresource: Option<&'a str>,
    /// The namespace, if namespaced.
    pub namespace: Option<&'a str>,
    /// The object's name, if one.
    pub name: Option<&'a str>,
}

const RBAC: &str = "rbac.authorization.k8s.io";

fn strings(v: &Value) -> impl Iterator<Item = &str> {
    v.as_array().into_iter().flatten().filter_map(Value::as_str)
}

fn subject_matches(subject: &Value, user: &User) -> bool {
    let name = subject["name"].as_str().unwrap_or_default();
    match subject["kind"].as_str() {
        Some("User") => name == user.name,
        Some("Group") => name == "system:authenticated" || user.groups.iter().any(|g| g == name),
        Some("ServiceAccount") => {
            let ns = subject["namespace"].as_str().unwrap_or_default();
            user.name == format!("system:serviceaccount:{ns}:{name}")
        }
        _ => false,
    }
}

fn rule_allows(rule: &Value, req: &Request<'_>) -> bool {
    let resource = match req.subresource {
        Some(sub) => format!("{}/{sub}", req.rt.plural),
        None => req.rt.plural.clone(),
    };
    let verb = strings(&rule["verbs"]).any(|v| v == "*" || v == req.verb);
    let group = strings(&rule["apiGroups"]).any(|g| g == "*" || g == req.rt.group);
    let res = strings(&rule["resources"])
        .any(|r| r == "*" || r == resource || req.subresource.is_some_and(|sub| r == format!("*/{sub}")));
    let names: Vec<&str> = strings(&rule["resourceNames"]).collect();
    let name = names.is_empty() || req.name.is_some_and(|n| names.contains(&n));
    verb && group && res && name
}

fn role_rules<'a>(store: &'a Store, role_ref: &Value, binding_ns: Option<&str>) -> Vec<&'a Value> {
    let name = role_ref["name"].as_str().unwrap_or_default();
    let (plural, ns) = match role_ref["kind"].as_str() {
        Some("ClusterRole") => ("clusterroles", None),
        _ => ("roles", binding_ns),
    };
    store
        .objects_of(RBAC, plural)
        .filter(|r| r["metadata"]["name"].as_str() == Some(name))
        .filter(|r| ns.is_none() || r["metadata"]["namespace"].as_str() == ns)
        .flat_map(|r| r["rules"].as_array().into_iter().flatten())
        .collect()
}

/// Allows the request or says why not, in the API server's words.
pub fn authorize(store: &Store, req: &Request<'_>) -> Result<(), ApiError> {
    if req.user.groups.iter().any(|g| g == "system:masters") {
        return Ok(());
    }
    let bound = |binding: &Value| {
        binding["subjects"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| subject_matches(s, req.user))
    };
    let mut rules: Vec<&Value> = Vec::new();
    for binding in store.objects_of(RBAC, "clusterrolebindings").filter(|b| bound(b)) {
        rules.extend(role_rules(store, &binding["roleRef"], None));
    }
    if let Some(ns) = req.namespace {
        for binding in store
            .objects_of(RBAC, "rolebindings")
            .filter(|b| b["metadata"]["namespace"].as_str() == Some(ns))
            .filter(|b| bound(b))
        {
            rules.extend(role_rules(store, &binding["roleRef"], Some(ns)));
        }
    }
    if rules.iter().any(|r| rule_allows(r, req)) {
        return Ok(());
    }
    let resource = match req.subresource {
        Some(sub) => format!("{}/{sub}", req.rt.plural),
        None => req.rt.plural.clone(),
    };
    let scope = match req.namespace {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".to_string(),
    };
    let why = format!(
        "User \"{}\" cannot {} resource \"{resource}\" in API group \"{}\" {scope}",
        req.user.name, req.verb, req.rt.group
    );
    Err(ApiError::forbidden_by_rbac(req.rt.names(), req.name, &why))
}
