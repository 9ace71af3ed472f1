//! The objects an AgentGateway owns, as server-side-apply documents: ServiceAccount, Role and
//! RoleBinding (what the gateway pods may read and write), the compiled configuration Secret,
//! Deployment, Service and PodDisruptionBudget. Each carries an ownerReference to the gateway, so
//! deleting the gateway deletes them (the API server's garbage collector), and the `managed-by`
//! label the operator's watches select on.

use agentgate_crds::AgentGateway;
use agentgate_crds::gateway::ListenerProtocol;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use kube::ResourceExt;
use serde_json::{Value, json};

use crate::MANAGER;
use crate::bundle::{GATEWAY_ADMIN_PORT, GATEWAY_DATA_DIR};

/// Label on every child: which gateway it belongs to.
pub const GATEWAY_LABEL: &str = "agentgate.dev/gateway";
/// The key of the compiled configuration in the Secret (the gateway reads the same constant).
pub use agentgate::config::kubernetes::CONFIG_KEY;
/// Annotation on the Secret: the hash of the configuration in it.
pub const HASH_ANNOTATION: &str = "agentgate.dev/config-hash";
/// Annotation on the Secret: the random key of that hash (see [`config_hash`]).
pub const SALT_ANNOTATION: &str = "agentgate.dev/config-hash-key";

/// A new key for [`config_hash`]: 32 random bytes, hex.
pub fn new_hash_key() -> Result<String, aws_lc_rs::error::Unspecified> {
    let mut raw = [0u8; 32];
    aws_lc_rs::rand::fill(&mut raw)?;
    Ok(raw.iter().map(|b| format!("{b:02x}")).collect())
}

/// The hash of a published configuration: HMAC-SHA-256 under a random key kept on the
/// configuration Secret, hex. The hash is public (the gateway's status, events) while the text
/// holds credentials: a plain digest would let anyone who reads the status test guesses of a
/// password offline; the key is readable only where the credentials already are.
pub fn config_hash(key: &str, manifests: &str) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key.as_bytes());
    aws_lc_rs::hmac::sign(&key, manifests.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Name of every child of gateway `gw` (the Secret adds `-config`).
pub fn child_name(gw: &str) -> String {
    format!("agentgate-{gw}")
}

/// Why gateway `gw`'s children cannot be named after it, if they cannot: its Service is
/// `agentgate-<name>`, which must be a DNS label (lower-case letters, digits and `-`, at most 63
/// characters), where an AgentGateway's name may hold dots and run to 253.
pub fn name_refusal(gw: &str) -> Option<String> {
    let child = child_name(gw);
    let label = child.len() <= 63
        && child
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !child.ends_with('-');
    (!label).then(|| {
        format!(
            "the gateway's name cannot name its Service ({child:?} must be a DNS label: lower-case letters, digits and '-', at most 63 characters, so the name at most 53, without dots); rename the gateway"
        )
    })
}

/// Name of the compiled configuration Secret.
pub fn config_secret_name(gw: &str) -> String {
    format!("agentgate-{gw}-config")
}

fn labels(gw: &str) -> Value {
    json!({
        "app.kubernetes.io/name": "agentgate-gateway",
        "app.kubernetes.io/instance": gw,
        "app.kubernetes.io/managed-by": MANAGER,
        GATEWAY_LABEL: gw,
    })
}

fn selector(gw: &str) -> Value {
    json!({"app.kubernetes.io/name": "agentgate-gateway", GATEWAY_LABEL: gw})
}

fn metadata(g: &AgentGateway, name: &str) -> Value {
    json!({
        "name": name,
        "namespace": g.namespace(),
        "labels": labels(&g.name_any()),
        "ownerReferences": [{
            "apiVersion": agentgate_crds::API_VERSION,
            "kind": "AgentGateway",
            "name": g.name_any(),
            "uid": g.uid().unwrap_or_default(),
            "controller": true,
            "blockOwnerDeletion": true,
        }],
    })
}

/// The gateway pods' identity.
pub fn service_account(g: &AgentGateway) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": metadata(g, &child_name(&g.name_any())),
    })
}

/// Least privilege: read its own configuration Secret, create and follow ApprovalRequests
/// (Kubernetes-mode approvals) and mark spent grants in their status, write Events. No patch or
/// update of a request itself: the gateway never writes decisions, so its token cannot either.
pub fn role(g: &AgentGateway) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": metadata(g, &child_name(&g.name_any())),
        "rules": [
            {"apiGroups": [""], "resources": ["secrets"], "resourceNames": [config_secret_name(&g.name_any())], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [agentgate_crds::GROUP], "resources": ["approvalrequests"], "verbs": ["get", "list", "watch", "create"]},
            {"apiGroups": [agentgate_crds::GROUP], "resources": ["approvalrequests/status"], "verbs": ["get", "patch"]},
            {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
        ],
    })
}

/// Binds [`role`] to [`service_account`].
pub fn role_binding(g: &AgentGateway) -> Value {
    let name = child_name(&g.name_any());
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": metadata(g, &name),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": g.namespace()}],
    })
}

/// The compiled configuration. Data is base64, as the API takes it.
pub fn config_secret(g: &AgentGateway, compressed: &[u8], hash: &str, hash_key: &str) -> Value {
    let mut meta = metadata(g, &config_secret_name(&g.name_any()));
    meta["annotations"] = json!({ HASH_ANNOTATION: hash, SALT_ANNOTATION: hash_key });
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": meta,
        "type": "Opaque",
        "data": { CONFIG_KEY: STANDARD.encode(compressed) },
    })
}

/// The image a gateway runs: the operator's, or `spec.image` when it is that one or one the
/// operator allows (`--allowed-gateway-image`: an exact reference, or a prefix ending in `/`, `:`
/// or `@`). Otherwise whoever may write an AgentGateway would choose the code that runs with the
/// gateway's service account and reads its configuration, credentials included.
pub fn gateway_image(g: &AgentGateway, default: &str, allowed: &[String]) -> Result<String, String> {
    match &g.spec.image {
        None => Ok(default.to_string()),
        Some(image)
            if image == default
                || allowed.iter().any(|a| {
                    image == a || (a.ends_with(['/', ':', '@']) && image.starts_with(a.as_str()))
                }) =>
        {
            Ok(image.clone())
        }
        Some(image) => Err(format!(
            "spec.image: {image:?} is not allowed: gateways run {default:?} or an image the operator's --allowed-gateway-image names"
        )),
    }
}

/// The gateway Deployment: non-root, read-only root file system, no capabilities, RuntimeDefault
/// seccomp; probes on the admin listener; rolling updates that keep every replica serving. The
/// configuration is watched through the API, so a change needs no rollout.
pub fn deployment(g: &AgentGateway, image: &str) -> Value {
    let gw = g.name_any();
    let name = child_name(&gw);
    let mut ports: Vec<Value> = g
        .spec
        .listeners
        .iter()
        .map(|l| json!({"name": port_name(&l.name), "containerPort": l.port, "protocol": "TCP"}))
        .collect();
    ports.push(json!({"name": agentgate::config::compile::ADMIN_PORT_NAME, "containerPort": GATEWAY_ADMIN_PORT, "protocol": "TCP"}));
    let mut volumes = vec![json!({"name": "data", "emptyDir": {}})];
    let mut mounts = vec![json!({"name": "data", "mountPath": GATEWAY_DATA_DIR})];
    if let Some(volume) = g.spec.recording.storage.as_ref().and_then(|s| s.volume.as_ref()) {
        volumes.push(json!({"name": "sessions", "persistentVolumeClaim": {"claimName": volume.claim_name}}));
        mounts.push(
            json!({"name": "sessions", "mountPath": agentgate::config::compile::SESSIONS_VOLUME_MOUNT}),
        );
    }
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(g, &name),
        "spec": {
            "replicas": g.spec.replicas,
            "selector": {"matchLabels": selector(&gw)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": labels(&gw)},
                "spec": {
                    "serviceAccountName": name,
                    "securityContext": {
                        "runAsNonRoot": true,
                        "runAsUser": 65532,
                        "runAsGroup": 65532,
                        "fsGroup": 65532,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [{
                        "name": "gateway",
                        "image": image,
                        "args": [
                            "run",
                            "--config-secret", config_secret_name(&gw),
                            "--gateway", gw,
                            "--admin-addr", format!("0.0.0.0:{GATEWAY_ADMIN_PORT}"),
                            "--data-dir", GATEWAY_DATA_DIR,
                        ],
                        "env": [{"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}],
                        "ports": ports,
                        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "admin"}, "periodSeconds": 10},
                        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "admin"}, "periodSeconds": 5},
                        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "1Gi"}},
                        "securityContext": {
                            "allowPrivilegeEscalation": false,
                            "readOnlyRootFilesystem": true,
                            "runAsNonRoot": true,
                            "capabilities": {"drop": ["ALL"]},
                            "seccompProfile": {"type": "RuntimeDefault"},
                        },
                        "volumeMounts": mounts,
                    }],
                    "volumes": volumes,
                },
            },
        },
    })
}

/// One port per listener.
pub fn service(g: &AgentGateway) -> Value {
    let gw = g.name_any();
    let ports: Vec<Value> = g
        .spec
        .listeners
        .iter()
        .map(|l| {
            let mut p = json!({"name": port_name(&l.name), "port": l.port, "targetPort": port_name(&l.name), "protocol": "TCP"});
            if l.protocol == ListenerProtocol::Postgres {
                p["appProtocol"] = json!("postgresql");
            }
            p
        })
        .collect();
    let mut spec = json!({"type": "ClusterIP", "selector": selector(&gw), "ports": ports});
    if g.spec.dpop_nonce_required(true) {
        // A DPoP nonce is good only at the pod that issued it: each client keeps to one pod.
        spec["sessionAffinity"] = json!("ClientIP");
    }
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(g, &child_name(&gw)),
        "spec": spec,
    })
}

/// At most one gateway pod down at a time during voluntary disruptions.
pub fn pod_disruption_budget(g: &AgentGateway) -> Value {
    let gw = g.name_any();
    json!({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(g, &child_name(&gw)),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(&gw)}},
    })
}

/// Port names are at most 15 characters (IANA_SVC_NAME).
/// A listener's port name is its name: the loader refuses, in a cluster, names that are not
/// valid port names, so two listeners never share one.
fn port_name(listener: &str) -> String {
    listener.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_names_must_make_a_service_name() {
        assert_eq!(name_refusal("main"), None);
        assert_eq!(name_refusal(&"a".repeat(53)), None);
        for bad in ["team.prod", &"a".repeat(54)] {
            let why = name_refusal(bad).unwrap();
            assert!(why.contains("DNS label"), "{why}");
        }
    }
    use crate::fixtures;

    /// The published hash is keyed: stable under one key, different under another, and not the
    /// plain SHA-256 of the text (which would let a reader of the status test password guesses).
    #[test]
    fn the_configuration_hash_is_keyed() {
        use sha2::Digest;
        let (a, b) = (new_hash_key().unwrap(), new_hash_key().unwrap());
        assert!(a.len() == 64 && a != b);
        let text = "stringData: {password: hunter2}";
        assert_eq!(config_hash(&a, text), config_hash(&a, text));
        assert_ne!(config_hash(&a, text), config_hash(&b, text));
        let plain: String = sha2::Sha256::digest(text)
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect();
        assert_ne!(config_hash(&a, text), plain);
        let secret = config_secret(&fixtures::gateway("team", "main"), b"x", "h", &a);
        assert_eq!(secret["metadata"]["annotations"][SALT_ANNOTATION], a);
    }

    #[test]
    fn every_child_is_owned_by_the_gateway_and_labelled() {
        let g = fixtures::gateway("team", "main");
        for child in [
            service_account(&g),
            role(&g),
            role_binding(&g),
            config_secret(&g, b"x", "h", "k"),
            deployment(&g, "img"),
            service(&g),
            pod_disruption_budget(&g),
        ] {
            let owner = &child["metadata"]["ownerReferences"][0];
            assert_eq!(owner["kind"], "AgentGateway");
            assert_eq!(owner["uid"], "uid-AgentGateway-main");
            assert_eq!(owner["controller"], true);
            assert_eq!(
                child["metadata"]["labels"]["app.kubernetes.io/managed-by"],
                MANAGER
            );
            assert_eq!(child["metadata"]["namespace"], "team");
        }
    }

    /// Gateway-issued DPoP nonces are good at one pod only, so the Service keeps each client
    /// on one pod while they are required.
    #[test]
    fn the_service_is_sticky_while_dpop_nonces_are_required() {
        let mut g = fixtures::gateway("team", "main");
        assert_eq!(service(&g)["spec"]["sessionAffinity"], "ClientIP");
        g.spec.dpop = Some(agentgate_crds::gateway::GatewayDpop {
            nonce: agentgate_crds::gateway::DpopNonce::Disabled,
            origins: Vec::new(),
        });
        assert!(service(&g)["spec"].get("sessionAffinity").is_none());
    }

    #[test]
    fn only_allowed_images_run() {
        let mut g = fixtures::gateway("team", "main");
        let default = "ghcr.io/agentgate/agentgate:1";
        assert_eq!(gateway_image(&g, default, &[]).unwrap(), default);
        g.spec.image = Some("evil.example/backdoor:latest".into());
        let e = gateway_image(&g, default, &[]).unwrap_err();
        assert!(
            e.starts_with("spec.image: \"evil.example/backdoor:latest\" is not allowed"),
            "{e}"
        );
        let allowed = [
            "registry.internal/agentgate/".to_string(),
            "ghcr.io/agentgate/agentgate@".to_string(),
        ];
        assert!(gateway_image(&g, default, &allowed).is_err());
        for ok in [
            "registry.internal/agentgate/agentgate:2",
            "ghcr.io/agentgate/agentgate@sha256:ab",
            default,
        ] {
            g.spec.image = Some(ok.into());
            assert_eq!(gateway_image(&g, default, &allowed).unwrap(), ok);
        }
        g.spec.image = Some("registry.internal/agentgate-fork:1".into());
        assert!(
            gateway_image(&g, default, &allowed).is_err(),
            "a prefix is a whole path segment"
        );
    }

    #[test]
    fn the_deployment_has_secure_defaults_and_admin_probes() {
        let g = fixtures::gateway("team", "main");
        let d = deployment(&g, "ghcr.io/agentgate/agentgate:test");
        let pod = &d["spec"]["template"]["spec"];
        let c = &pod["containers"][0];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
        assert_eq!(c["securityContext"]["capabilities"]["drop"][0], "ALL");
        assert_eq!(c["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(c["image"], "ghcr.io/agentgate/agentgate:test");
        assert_eq!(d["spec"]["replicas"], 2);
        let args: Vec<&str> = c["args"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(
            args.windows(2)
                .any(|w| w == ["--config-secret", "agentgate-main-config"])
        );
    }

    #[test]
    fn the_role_reads_only_its_own_secret() {
        let g = fixtures::gateway("team", "main");
        let r = role(&g);
        assert_eq!(r["rules"][0]["resourceNames"], json!(["agentgate-main-config"]));
    }
}
