//! Builders of valid objects for tests and benchmarks: each starts from a minimal valid spec, so a
//! test states only what it is about.

use std::collections::BTreeMap;

use agentgate_crds::{AccessPolicy, AgentGateway, AgentIdentity, Connection};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Value, json};

fn object<K: serde::de::DeserializeOwned>(kind: &str, ns: &str, name: &str, spec: Value) -> K {
    serde_json::from_value(json!({
        "apiVersion": agentgate_crds::API_VERSION,
        "kind": kind,
        "metadata": {"name": name, "namespace": ns, "generation": 1, "uid": format!("uid-{kind}-{name}")},
        "spec": spec,
    }))
    .expect("fixture matches the type")
}

/// A gateway with one HTTP and one PostgreSQL listener.
pub fn gateway(ns: &str, name: &str) -> AgentGateway {
    object(
        "AgentGateway",
        ns,
        name,
        json!({
            "replicas": 2,
            "listeners": [
                {"name": "https", "protocol": "HTTP", "port": 8443},
                {"name": "postgres", "protocol": "Postgres", "port": 15432},
            ],
            "recording": {"mode": "Required", "retention": "90d"},
            "approvals": {"defaultTimeout": "15m", "maxGrant": "8h"},
        }),
    )
}

/// An HTTP connection of `gateway` with a Bearer credential from Secret `<name>-token`.
pub fn connection(ns: &str, name: &str, gateway: &str) -> Connection {
    object(
        "Connection",
        ns,
        name,
        json!({
            "gatewayRef": {"name": gateway},
            "type": "HTTP",
            "endpoint": format!("https://{name}.example.com"),
            "credentials": {"scheme": "Bearer", "secretRef": {"name": format!("{name}-token"), "key": "token"}},
            "route": {"pathPrefix": format!("/{name}")},
        }),
    )
}

/// An Okta-style JWT identity.
pub fn identity(ns: &str, name: &str) -> AgentIdentity {
    object(
        "AgentIdentity",
        ns,
        name,
        json!({
            "provider": "Okta",
            "issuer": "https://example.okta.com/oauth2/default",
            "audiences": ["api://agentgate"],
            "tokenType": "JWT",
            "match": {"claims": {"cid": name}},
            "algorithms": ["RS256"],
        }),
    )
}

/// A policy letting `identity` GET everything on `connection`.
pub fn allow_policy(ns: &str, name: &str, identity: &str, connection: &str) -> AccessPolicy {
    one_rule_policy(ns, name, identity, connection, ("reads", "Allow", "GET"))
}

/// A policy denying DELETE to `identity` on `connection`.
pub fn deny_policy(ns: &str, name: &str, identity: &str, connection: &str) -> AccessPolicy {
    one_rule_policy(ns, name, identity, connection, ("no-deletes", "Deny", "DELETE"))
}

/// A policy with one HTTP rule `(name, action, method)` on every path.
fn one_rule_policy(
    ns: &str,
    name: &str,
    identity: &str,
    connection: &str,
    (rule, action, method): (&str, &str, &str),
) -> AccessPolicy {
    object(
        "AccessPolicy",
        ns,
        name,
        json!({
            "subjects": {"identities": [identity]},
            "connections": [connection],
            "rules": [{"name": rule, "action": action, "http": {"methods": [method], "paths": ["/**"]}}],
        }),
    )
}

/// An Opaque Secret with one key, labelled for gateways' use.
pub fn secret(ns: &str, name: &str, key: &str, value: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            labels: Some(BTreeMap::from([(
                agentgate_crds::CREDENTIAL_LABEL.to_string(),
                "true".to_string(),
            )])),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            key.to_string(),
            ByteString(value.as_bytes().to_vec()),
        )])),
        type_: Some("Opaque".into()),
        ..Secret::default()
    }
}

/// A namespace with one gateway `main`, `connections` connections (each with its Secret),
/// `identities` identities and `policies` allow policies spread over them.
pub fn namespace(
    ns: &str,
    connections: usize,
    identities: usize,
    policies: usize,
) -> crate::bundle::Namespace {
    let mut n = crate::bundle::Namespace {
        name: ns.into(),
        gateways: vec![gateway(ns, "main")],
        ..Default::default()
    };
    for c in 0..connections {
        let name = format!("conn-{c}");
        n.secrets
            .push(secret(ns, &format!("{name}-token"), "token", "s3cret"));
        n.connections.push(connection(ns, &name, "main"));
    }
    for i in 0..identities {
        n.identities.push(identity(ns, &format!("agent-{i}")));
    }
    for p in 0..policies {
        n.policies.push(allow_policy(
            ns,
            &format!("policy-{p}"),
            &format!("agent-{}", p % identities.max(1)),
            &format!("conn-{}", p % connections.max(1)),
        ));
    }
    n
}
