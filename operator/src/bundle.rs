//! Compiling one gateway's configuration from the objects of its namespace.
//!
//! The operator runs the gateway's own loader and compiler ([`agentgate::config`]) on the objects it
//! would publish, so what it calls Ready is exactly what a gateway accepts. Objects the compiler
//! refuses are left out, one wave at a time, and the rest is compiled again, so one bad object does
//! not stop the others. Leaving an object out must never widen access:
//! - a Connection or Secret left out only removes reachability;
//! - an AgentIdentity left out stays as a suspended stand-in (its issuer, audiences and
//!   matchers), so its tokens are refused as its and not taken over by an identity it overlaps;
//! - an allow-only AccessPolicy left out only removes access;
//! - an AccessPolicy that restricts (Deny or RequireApproval rules, or masking) cannot be left out
//!   alone, since that would lift its restriction: its Connections are quarantined with it
//!   (left out, so every operation on them fails closed) until the policy is fixed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use agentgate::config::manifest::Manifest;
use agentgate::config::{ConfigError, LoadOptions, compile_manifests};
use agentgate_crds::policy::Action as RuleAction;
use agentgate_crds::{AccessPolicy, AgentGateway, AgentIdentity, Connection};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use k8s_openapi::api::core::v1::Secret;
use serde::Serialize;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

/// The admin port of gateway pods (probes, metrics); listeners may not use it.
pub const GATEWAY_ADMIN_PORT: u16 = 9090;
/// Where gateway pods keep writable state: relative recording paths and the approval store.
pub const GATEWAY_DATA_DIR: &str = "/var/lib/agentgate";
/// Largest compiled configuration, compressed and base64-encoded: a Secret must stay under the API
/// server's 1 MiB object limit, with room for metadata.
pub const MAX_CONFIG_BYTES: usize = 1_000_000;

/// An object of the namespace, by kind and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub kind: &'static str,
    pub name: String,
}

impl ObjectKey {
    fn new(kind: &'static str, name: &str) -> Self {
        Self {
            kind,
            name: name.to_string(),
        }
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.kind, self.name)
    }
}

/// The objects of one namespace, as the operator's caches hold them.
#[derive(Clone, Debug, Default)]
pub struct Namespace {
    pub name: String,
    pub gateways: Vec<AgentGateway>,
    pub connections: Vec<Connection>,
    pub identities: Vec<AgentIdentity>,
    pub policies: Vec<AccessPolicy>,
    pub secrets: Vec<Secret>,
}

/// Whether an object made it into a gateway's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Ready,
    /// Refused; the message names the field or the missing reference.
    Invalid(String),
    /// Valid itself, but left out because a restricting AccessPolicy on it is invalid.
    Quarantined(String),
}

/// The configuration published for a gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    /// The manifests, as the gateway loads them.
    pub manifests: String,
    /// `manifests` compressed, as the configuration Secret carries them.
    pub compressed: Vec<u8>,
    /// SHA-256 of `manifests`, hex; the reconciler replaces it with the keyed hash it publishes
    /// (`children::config_hash`), as the text holds credentials.
    pub hash: String,
    pub connections: usize,
    pub identities: usize,
    pub policies: usize,
}

/// The outcome of compiling one gateway.
#[derive(Clone, Debug)]
pub struct Compiled {
    /// The configuration, or why the gateway itself cannot be configured.
    pub gateway: Result<Published, String>,
    /// Verdicts on the objects this gateway uses: its Connections, and every AgentIdentity and
    /// AccessPolicy of the namespace.
    pub verdicts: BTreeMap<ObjectKey, Verdict>,
}

struct Candidate {
    key: ObjectKey,
    value: Value,
}

/// Compiles the configuration of gateway `gateway` of `ns`; `in_cluster`: for pods behind a
/// Service, where a loopback listener is an error.
pub fn compile(ns: &Namespace, gateway: &str, in_cluster: bool) -> Compiled {
    let ours: BTreeSet<&str> = ns
        .connections
        .iter()
        .filter(|c| c.spec.gateway_ref.name == gateway)
        .filter_map(|c| c.metadata.name.as_deref())
        .collect();
    let mut candidates = Vec::new();
    let mut referenced_secrets = BTreeSet::new();
    push_all(&mut candidates, "AgentGateway", &ns.gateways);
    push_all(&mut candidates, "Connection", &ns.connections);
    push_all(&mut candidates, "AgentIdentity", &ns.identities);
    push_all(&mut candidates, "AccessPolicy", &ns.policies);
    for c in &candidates {
        let relevant = match c.key.kind {
            "AgentGateway" => c.key.name == gateway,
            "Connection" => ours.contains(c.key.name.as_str()),
            _ => true,
        };
        if relevant {
            secret_refs(&c.value, &mut referenced_secrets);
        }
    }
    // Referenced, but not opted in: left out, and the references say why.
    let mut unlabelled = BTreeSet::new();
    for s in &ns.secrets {
        let Some(name) = s.metadata.name.as_deref() else {
            continue;
        };
        if !referenced_secrets.contains(name) {
            continue;
        }
        if !is_credential(s) {
            unlabelled.insert(name);
        } else {
            candidates.push(Candidate {
                key: ObjectKey::new("Secret", name),
                value: secret_value(&ns.name, s),
            });
        }
    }
    let restricting: BTreeMap<&str, &AccessPolicy> = ns
        .policies
        .iter()
        .filter(|p| restricts(p))
        .filter_map(|p| Some((p.metadata.name.as_deref()?, p)))
        .collect();

    let options = LoadOptions {
        manifests: PathBuf::from(GATEWAY_DATA_DIR),
        secrets_dir: None,
        gateway: Some(gateway.to_string()),
        reserved_ports: vec![GATEWAY_ADMIN_PORT],
        withheld_secrets: unlabelled
            .iter()
            .map(|name| {
                let why = format!(
                    "is not labelled {}: \"true\"; gateways are given only Secrets so labelled",
                    agentgate_crds::CREDENTIAL_LABEL
                );
                ((ns.name.to_string(), name.to_string()), why)
            })
            .collect(),
        in_cluster,
        replicated: true,
        loopback_only: false,
    };
    let mut excluded: BTreeMap<ObjectKey, Verdict> = BTreeMap::new();
    // Left-out identities whose stand-in was refused too: left out bare.
    let mut bare: BTreeSet<ObjectKey> = BTreeSet::new();
    let source = format!("namespace/{}", ns.name);
    let outcome = loop {
        let values: Vec<Value> = candidates
            .iter()
            .filter_map(|c| match excluded.contains_key(&c.key) {
                false => prune_references(c, &excluded),
                true if c.key.kind == "AgentIdentity" && !bare.contains(&c.key) => {
                    stand_in(c, &candidates, &excluded)
                }
                true => None,
            })
            .collect();
        let manifests: Vec<Manifest> = values
            .iter()
            .map(|v| Manifest::from_value(&source, v.clone()))
            .collect();
        let errors = match compile_manifests(manifests, &options) {
            Ok(config) => {
                let text = published_text(values, &ns.name, &config.secret_keys_used);
                break Ok(Published {
                    hash: hex(&Sha256::digest(text.as_bytes())),
                    compressed: agentgate::config::kubernetes::encode_config(&text),
                    connections: config.connections.len(),
                    identities: config.identities.len(),
                    policies: config.policies.len(),
                    manifests: text,
                });
            }
            Err(errors) => errors.0.into_iter().collect::<Vec<_>>(),
        };
        let mut gateway_errors = Vec::new();
        let before = excluded.len() + bare.len();
        for e in &errors {
            match attribute(e) {
                Some(key) if excluded.contains_key(&key) => {
                    // Its stand-in's error: only an identity left out has one.
                    bare.insert(key);
                }
                Some(key) if !(key.kind == "AgentGateway" && key.name == gateway) => {
                    let message = describe(e);
                    if key.kind == "AccessPolicy"
                        && let Some(policy) = restricting.get(key.name.as_str())
                    {
                        for conn in &policy.spec.connections {
                            let hit: Vec<&str> = if conn == "*" {
                                ours.iter().copied().collect()
                            } else {
                                ours.iter().copied().filter(|c| *c == conn).collect()
                            };
                            for c in hit {
                                excluded.entry(ObjectKey::new("Connection", c)).or_insert_with(|| {
                                    Verdict::Quarantined(format!(
                                        "quarantined: AccessPolicy {} restricts this connection and is invalid: {message}",
                                        key.name
                                    ))
                                });
                            }
                        }
                    }
                    excluded.entry(key).or_insert(Verdict::Invalid(message));
                }
                _ => gateway_errors.push(describe(e)),
            }
        }
        if !gateway_errors.is_empty() {
            break Err(gateway_errors.join("; "));
        }
        if excluded.len() + bare.len() == before {
            // Nothing attributable left out: the error is the gateway's to report.
            break Err(errors.iter().map(describe).collect::<Vec<_>>().join("; "));
        }
    };
    let gateway_result = outcome.and_then(|p| {
        let encoded = p.compressed.len().div_ceil(3) * 4;
        if encoded > MAX_CONFIG_BYTES {
            Err(format!(
                "the compiled configuration is {encoded} bytes compressed, over the {MAX_CONFIG_BYTES}-byte limit of one Secret; split the namespace's objects across gateways in several namespaces"
            ))
        } else {
            Ok(p)
        }
    });
    let mut verdicts = BTreeMap::new();
    for c in &candidates {
        let relevant = match c.key.kind {
            "Connection" => ours.contains(c.key.name.as_str()),
            "AgentIdentity" | "AccessPolicy" => true,
            _ => false,
        };
        if relevant {
            let verdict = excluded.get(&c.key).cloned().unwrap_or(Verdict::Ready);
            verdicts.insert(c.key.clone(), verdict);
        }
    }
    Compiled {
        gateway: gateway_result,
        verdicts,
    }
}

/// Whether leaving the policy out would lift a restriction: masking, a Deny or RequireApproval
/// rule, or a row cap (which restricts every matching Allow, other policies' too).
fn restricts(p: &AccessPolicy) -> bool {
    !p.spec.masking.is_empty()
        || p.spec
            .rules
            .iter()
            .any(|r| r.action != RuleAction::Allow || r.sql.as_ref().is_some_and(|s| s.row_limit.is_some()))
}

fn push_all<K: Serialize + kube::Resource>(out: &mut Vec<Candidate>, kind: &'static str, objects: &[K]) {
    let mut sorted: Vec<&K> = objects.iter().collect();
    sorted.sort_by(|a, b| a.meta().name.cmp(&b.meta().name));
    for o in sorted {
        let Some(name) = o.meta().name.as_deref() else {
            continue;
        };
        let Ok(mut value) = serde_json::to_value(o) else {
            continue;
        };
        // Compiled and published alike without nulls: the gateway refuses nulls it reads.
        agentgate::config::manifest::drop_nulls(&mut value);
        if let Some(obj) = value.as_object_mut() {
            obj.remove("status");
            obj.insert(
                "metadata".into(),
                json!({"name": name, "namespace": o.meta().namespace}),
            );
        }
        out.push(Candidate {
            key: ObjectKey::new(kind, name),
            value,
        });
    }
}

/// Whether the Secret's owner opted it in for gateways ([`agentgate_crds::CREDENTIAL_LABEL`]).
fn is_credential(s: &Secret) -> bool {
    s.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(agentgate_crds::CREDENTIAL_LABEL))
        .is_some_and(|v| v == "true")
}

/// A Secret as the loader takes it: only its name, type and data (k8s-openapi decoded the data;
/// the loader takes it base64, as the API serves it).
fn secret_value(namespace: &str, s: &Secret) -> Value {
    let data: Map<String, Value> = s
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), Value::String(STANDARD.encode(&v.0))))
        .collect();
    let mut v = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": s.metadata.name, "namespace": namespace},
        "data": data,
    });
    if let Some(t) = &s.type_ {
        v["type"] = Value::String(t.clone());
    }
    // The origins its owner bound it to travel with it: the gateway's loader enforces them.
    let bound = agentgate_crds::CREDENTIAL_ENDPOINTS_ANNOTATION;
    if let Some(origins) = s.metadata.annotations.as_ref().and_then(|a| a.get(bound)) {
        v["metadata"]["annotations"] = json!({ bound: origins });
    }
    v
}

/// The objects as compiled, of each Secret only the keys the configuration looked up: the rest
/// of a Secret (its other keys, or a Secret only a left-out object named) never reaches the gateway.
fn published_text(values: Vec<Value>, namespace: &str, used: &BTreeSet<(String, String, String)>) -> String {
    values
        .into_iter()
        .filter_map(|mut value| {
            if value["kind"] == "Secret" {
                let name = value["metadata"]["name"].as_str().unwrap_or_default().to_string();
                let data = value["data"].as_object_mut()?;
                data.retain(|k, _| used.contains(&(namespace.to_string(), name.clone(), k.clone())));
                if data.is_empty() {
                    return None;
                }
            }
            Some(yaml_printable(value.to_string()))
        })
        .collect::<Vec<_>>()
        .join("\n---\n")
}

/// JSON text the gateway's YAML parser reads back as the same value. JSON escapes only control
/// characters below U+0020; YAML refuses DEL and the C1 controls in any scalar (one such
/// character in a description would make every gateway refuse the configuration while the
/// operator called it Ready), and YAML 1.1 readers break lines at NEL, U+2028 and U+2029. Such
/// characters appear only inside strings, where `\uXXXX` means the same in both languages.
fn yaml_printable(text: String) -> String {
    let unsafe_char = |c: char| {
        matches!(
            c,
            '\u{7f}'..='\u{9f}' | '\u{2028}' | '\u{2029}' | '\u{feff}' | '\u{fffe}' | '\u{ffff}'
        )
    };
    if !text.contains(unsafe_char) {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if unsafe_char(c) {
            out.push_str(&format!("\\u{:04x}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

/// Names of the Secrets an object's spec refers to (`*SecretRef.name`, `secretRef.name`,
/// `secretName`), wherever they sit, so new reference fields need no change here.
fn secret_refs(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                if k == "secretName" {
                    if let Some(s) = child.as_str() {
                        out.insert(s.to_string());
                    }
                } else if (k == "secretRef" || k.ends_with("SecretRef"))
                    && let Some(s) = child.get("name").and_then(Value::as_str)
                {
                    out.insert(s.to_string());
                }
                secret_refs(child, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|i| secret_refs(i, out)),
        _ => {}
    }
}

/// A policy's references to objects that exist but were left out are dropped rather than reported
/// again (the object's own status says why). A policy left with no connection or no subject applies
/// to nothing and is left out too (`None`).
fn prune_references(c: &Candidate, excluded: &BTreeMap<ObjectKey, Verdict>) -> Option<Value> {
    if c.key.kind != "AccessPolicy" {
        return Some(c.value.clone());
    }
    let mut value = c.value.clone();
    let gone = |kind: &'static str, name: &str| excluded.contains_key(&ObjectKey::new(kind, name));
    let spec = value.get_mut("spec")?;
    let mut changed_to_empty = false;
    if let Some(list) = spec.get_mut("connections").and_then(Value::as_array_mut) {
        let before = list.len();
        list.retain(|n| n.as_str().is_none_or(|n| !gone("Connection", n)));
        changed_to_empty |= before > 0 && list.is_empty();
    }
    if let Some(subjects) = spec.get_mut("subjects") {
        let groups = subjects
            .get("groups")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        if let Some(list) = subjects.get_mut("identities").and_then(Value::as_array_mut) {
            let before = list.len();
            list.retain(|n| n.as_str().is_none_or(|n| !gone("AgentIdentity", n)));
            changed_to_empty |= before > 0 && list.is_empty() && groups == 0;
        }
    }
    (!changed_to_empty).then_some(value)
}

/// What stands in for a left-out AgentIdentity: its issuer, audiences, provider and matchers,
/// suspended, with the keys of an identity of its issuer that stays. Left out bare, its tokens
/// would match only the other identities, and one that overlapped it (refused as ambiguous
/// until then) would take them over with its own policies; suspended, they are refused as its.
/// None when no identity of its issuer stays (then none can take its tokens).
fn stand_in(
    c: &Candidate,
    candidates: &[Candidate],
    excluded: &BTreeMap<ObjectKey, Verdict>,
) -> Option<Value> {
    let spec = c.value.get("spec")?;
    let issuer = spec.get("issuer")?;
    let sibling = candidates.iter().find(|o| {
        o.key.kind == "AgentIdentity"
            && !excluded.contains_key(&o.key)
            && o.value["spec"]["issuer"] == *issuer
    })?;
    let mut stand_in = sibling.value["spec"].as_object()?.clone();
    for field in ["audiences", "provider", "match"] {
        match spec.get(field) {
            Some(v) => stand_in.insert(field.to_string(), v.clone()),
            None => stand_in.remove(field),
        };
    }
    stand_in.insert("suspend".into(), Value::Bool(true));
    Some(json!({
        "apiVersion": c.value["apiVersion"],
        "kind": "AgentIdentity",
        "metadata": {"name": c.key.name, "namespace": c.value["metadata"]["namespace"]},
        "spec": stand_in,
    }))
}

/// The object an error is about, from its `Kind namespace/name`.
fn attribute(e: &ConfigError) -> Option<ObjectKey> {
    let object = e.object.as_deref()?;
    let (kind, rest) = object.split_once(' ')?;
    let name = rest.rsplit('/').next()?;
    let kind = match kind {
        "AgentGateway" => "AgentGateway",
        "Connection" => "Connection",
        "AgentIdentity" => "AgentIdentity",
        "AccessPolicy" => "AccessPolicy",
        "Secret" => "Secret",
        _ => return None,
    };
    Some(ObjectKey::new(kind, name))
}

/// `field.path: message`, without the file and line (the object is the status's owner).
fn describe(e: &ConfigError) -> String {
    match &e.path {
        Some(path) if !e.message.starts_with(path.as_str()) => format!("{path}: {}", e.message),
        _ => e.message.clone(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests;
