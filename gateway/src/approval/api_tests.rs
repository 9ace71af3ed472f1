//! The approvals API against a real configuration, verifier and store.

use std::path::Path;
use std::time::{Duration, SystemTime};

use agentgate_crds::approval::{ApprovalPhase, OperationKind};
use agentgate_crds::policy::Grant;
use serde_json::json;

use super::*;
use crate::approval::{Ask, Ticket};
use crate::config::LoadOptions;
use crate::config::watch::Snapshot;
use crate::identity::mint::SigningKey;
use crate::metrics::Metrics;

const AGENT_ISS: &str = "https://agents.example/";
const HUMAN_ISS: &str = "https://login.example/";

struct Fixture {
    _dir: tempfile::TempDir,
    gateway: Arc<Gateway>,
    approvals: Arc<Approvals>,
    agent_key: SigningKey,
    human_key: SigningKey,
}

fn write_manifests(dir: &Path, agent_jwks: &Value, human_jwks: &Value) {
    write_manifests_with(
        dir,
        agent_jwks,
        human_jwks,
        "keys: {secretRef: {name: keys, key: humans}}",
    );
}

/// The manifests, with `approver_keys` the approvers' AgentIdentity's way of checking tokens.
fn write_manifests_with(dir: &Path, agent_jwks: &Value, human_jwks: &Value, approver_keys: &str) {
    let yaml = format!(
        r#"apiVersion: agentgate.dev/v1alpha1
kind: AgentGateway
metadata: {{name: gw, namespace: agents}}
spec:
  listeners: [{{name: http, protocol: HTTP, port: 18080, address: 127.0.0.1}}]
  recording: {{storage: {{local: {{path: sessions}}}}}}
  approvals: {{maxGrant: 1h}}
---
apiVersion: agentgate.dev/v1alpha1
kind: AgentIdentity
metadata: {{name: ci-agent, namespace: agents}}
spec:
  issuer: {AGENT_ISS}
  audiences: [agentgate]
  match: {{subject: ci}}
  groups: {{static: [dba]}}
  keys: {{secretRef: {{name: keys, key: agents}}}}
---
apiVersion: agentgate.dev/v1alpha1
kind: AgentIdentity
metadata: {{name: approvers, namespace: agents}}
spec:
  issuer: {HUMAN_ISS}
  audiences: [agentgate-approvals]
  match: {{claims: {{azp: approval-cli}}}}
  groups: {{claim: groups}}
  approver: true
  {approver_keys}
---
apiVersion: agentgate.dev/v1alpha1
kind: Connection
metadata: {{name: orders, namespace: agents}}
spec:
  type: HTTP
  endpoint: https://orders.example
  gatewayRef: {{name: gw}}
  route: {{pathPrefix: /orders}}
---
apiVersion: agentgate.dev/v1alpha1
kind: AccessPolicy
metadata: {{name: orders, namespace: agents}}
spec:
  subjects: {{identities: [ci-agent]}}
  connections: [orders]
  rules:
    - name: writes
      action: RequireApproval
      http: {{methods: [POST]}}
      approval: {{approvers: {{users: [alice], groups: [dba]}}, minApprovals: 2, grant: {{type: Window, duration: 30m}}}}
    - name: deletes
      action: RequireApproval
      http: {{methods: [DELETE]}}
      approval: {{approvers: {{users: [dave]}}}}
    - name: reads
      action: Allow
      http: {{methods: [GET]}}
---
apiVersion: v1
kind: Secret
metadata: {{name: keys, namespace: agents}}
stringData:
  agents: '{agent_jwks}'
  humans: '{human_jwks}'
  introspection: not-a-real-secret
"#
    );
    std::fs::write(dir.join("all.yaml"), yaml).unwrap();
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let agent_key = SigningKey::ec("agents-1").unwrap();
    let human_key = SigningKey::ec("humans-1").unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    write_manifests(
        &manifests,
        &SigningKey::jwks(&[&agent_key]),
        &SigningKey::jwks(&[&human_key]),
    );
    let config = crate::config::load(&LoadOptions {
        manifests: manifests.clone(),
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let gateway = Gateway::new(Metrics::new());
    gateway.install(Arc::new(Snapshot {
        generation: 1,
        config,
        loaded_at: SystemTime::now(),
    }));
    let approvals = Approvals::open(dir.path().join("approvals"), "agents").unwrap();
    Fixture {
        _dir: dir,
        gateway,
        approvals,
        agent_key,
        human_key,
    }
}

impl Fixture {
    fn human(&self, sub: &str, groups: &[&str]) -> String {
        let now = unix_now();
        self.human_key.sign(&json!({
            "iss": HUMAN_ISS, "sub": sub, "aud": "agentgate-approvals", "azp": "approval-cli",
            "groups": groups, "iat": now, "exp": now + 300,
        }))
    }

    fn agent(&self) -> String {
        let now = unix_now();
        self.agent_key.sign(&json!({
            "iss": AGENT_ISS, "sub": "ci", "aud": "agentgate", "iat": now, "exp": now + 300,
        }))
    }

    /// Whether no one has decided the request `name`.
    fn undecided(&self, name: &str) -> bool {
        self.approvals
            .get(name, unix_now())
            .unwrap()
            .spec
            .decisions
            .is_empty()
    }

    fn pending(&self) -> String {
        self.pending_for("writes")
    }

    fn pending_for(&self, rule: &str) -> String {
        let plane = self.gateway.plane().unwrap();
        let cfg = &plane.snapshot.config;
        let policy = cfg.policies.iter().find(|p| p.name == "orders").unwrap();
        let compiled = policy.rules.iter().find(|r| r.name == rule).unwrap();
        let ask = Ask {
            identity: "ci-agent".into(),
            requester: "ci".into(),
            connection: "orders".into(),
            kind: OperationKind::Http,
            summary: "POST /orders".into(),
            fingerprint: "ab12cd34".into(),
            detail: None,
            policy: "orders".into(),
            rule: rule.into(),
            rule_digest: crate::protocol::approval::rule_digest(
                policy,
                compiled,
                cfg.connections.get("orders"),
            ),
            grant: Grant {
                r#type: agentgate_crds::policy::GrantType::Window,
                duration: Some("30m".into()),
            },
            approvers: crate::protocol::approval::rule_spec(policy, compiled)
                .unwrap()
                .approvers
                .clone(),
            min_approvals: 2,
            reason: None,
            timeout: Duration::from_secs(600),
            grant_limit: Duration::from_secs(30 * 24 * 3600),
            unshown: None,
        };
        match self.approvals.request(&ask, unix_now()).unwrap() {
            Ticket::Pending { name, .. } => name,
            t => panic!("{t:?}"),
        }
    }

    async fn call(&self, method: &str, path: &str, token: Option<&str>, body: &str) -> (StatusCode, Value) {
        self.call_at("127.0.0.1:9464", method, path, token, body).await
    }

    async fn call_at(
        &self,
        host: &str,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &str,
    ) -> (StatusCode, Value) {
        let authorization = token.map(|t| HeaderValue::from_str(&format!("Bearer {t}")).unwrap());
        let headers: Vec<_> = authorization.into_iter().map(|v| ("authorization", v)).collect();
        self.call_with(host, method, path, &headers, body).await
    }

    async fn call_with(
        &self,
        host: &str,
        method: &str,
        path: &str,
        headers: &[(&str, HeaderValue)],
        body: &str,
    ) -> (StatusCode, Value) {
        let mut b = Request::builder().method(method).uri(path).header("host", host);
        for (name, value) in headers {
            b = b.header(*name, value.clone());
        }
        let req = b.body(Full::new(Bytes::from(body.to_string()))).unwrap();
        let resp = handle(Some(&self.approvals), Some(&self.gateway), req).await;
        let status = resp.status();
        let content_type = resp.headers()[CONTENT_TYPE].to_str().unwrap().to_string();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        if status.is_success() {
            assert_eq!(content_type, "application/json");
        } else {
            assert_eq!(content_type, "application/problem+json", "{v}");
            assert_eq!(v["status"], status.as_u16(), "{v}");
        }
        (status, v)
    }
}

#[tokio::test]
async fn approvers_list_show_and_decide() {
    let f = fixture();
    let name = f.pending();
    let alice = f.human("alice", &[]);
    let (status, list) = f.call("GET", "/approvals", Some(&alice), "").await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list["kind"], "ApprovalRequestList");
    assert_eq!(list["items"][0]["metadata"]["name"], name.as_str());
    let (status, one) = f
        .call("GET", &format!("/approvals/{name}"), Some(&alice), "")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["spec"]["operation"]["summary"], "POST /orders");

    let (status, r) = f
        .call(
            "POST",
            &format!("/approvals/{name}/approve"),
            Some(&alice),
            r#"{"reason": "INC-1"}"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{r}");
    assert_eq!(r["spec"]["decisions"]["alice"]["reason"], "INC-1");
    assert_eq!(r["status"]["phase"], "Pending", "two approvers are needed");
    // Alice again: refused.
    let (status, p) = f
        .call("POST", &format!("/approvals/{name}/approve"), Some(&alice), "")
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(p["type"], "https://agentgate.dev/problems/already-decided");
    // Bob, by group, with an empty body.
    let bob = f.human("bob", &["dba"]);
    let (status, r) = f
        .call("POST", &format!("/approvals/{name}/approve"), Some(&bob), "")
        .await;
    assert_eq!(status, StatusCode::OK, "{r}");
    assert_eq!(r["status"]["phase"], "Approved");
    assert_eq!(r["status"]["approvals"], 2);
    assert!(r["status"]["grantExpiresAt"].is_string());
    assert_eq!(
        f.approvals.get(&name, unix_now()).unwrap().status.unwrap().phase,
        ApprovalPhase::Approved
    );
    // Decided: no more approvals; a deny withdraws the unspent grant.
    let carol = f.human("carol", &["dba"]);
    let (status, p) = f
        .call("POST", &format!("/approvals/{name}/approve"), Some(&carol), "")
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(p["type"], "https://agentgate.dev/problems/not-pending");
    assert!(p["detail"].as_str().unwrap().contains("is Approved"), "{p}");
    let (status, r) = f
        .call("POST", &format!("/approvals/{name}/deny"), Some(&carol), "")
        .await;
    assert_eq!(status, StatusCode::OK, "{r}");
    assert_eq!(r["status"]["phase"], "Denied");
}

/// An approver reads the requests of the rules that list them, and those they decided; another
/// rule's requests are hidden from the list and answer 404, as a name that does not exist.
#[tokio::test]
async fn approvers_read_only_the_requests_of_their_rules() {
    let f = fixture();
    let write = f.pending();
    let delete = f.pending_for("deletes");
    let names = |list: &Value| -> Vec<String> {
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    for (who, groups, mine, theirs) in [
        ("alice", &[][..], &write, &delete),
        ("bob", &["dba"][..], &write, &delete),
        ("dave", &[][..], &delete, &write),
    ] {
        let token = f.human(who, groups);
        let (status, list) = f.call("GET", "/approvals", Some(&token), "").await;
        assert_eq!(status, StatusCode::OK, "{list}");
        assert_eq!(names(&list), std::slice::from_ref(mine), "{who}");
        let (status, _) = f
            .call("GET", &format!("/approvals/{mine}"), Some(&token), "")
            .await;
        assert_eq!(status, StatusCode::OK, "{who}");
        let (status, p) = f
            .call("GET", &format!("/approvals/{theirs}"), Some(&token), "")
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{who}: {p}");
        assert_eq!(p["type"], "https://agentgate.dev/problems/not-found");
        // Deciding it is not found either: no 403 or 409 tells that it exists, or its phase.
        let (status, p) = f
            .call("POST", &format!("/approvals/{theirs}/deny"), Some(&token), "")
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{who}: {p}");
    }
    assert!(f.undecided(&write));
    assert!(f.undecided(&delete));
}

/// A request is decided under the rule it was asked under: once the rule changes (here, an
/// approver added), deciding it is refused as `rule-gone` (its approval could never be used),
/// the newcomer cannot decide it at all, and the agent's next attempt asks anew under the rule
/// in force.
#[tokio::test]
async fn a_request_of_a_changed_rule_cannot_be_decided() {
    let f = fixture();
    let name = f.pending();
    let file = f._dir.path().join("manifests/all.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    let old = "approvers: {users: [alice], groups: [dba]}";
    assert!(text.contains(old));
    std::fs::write(
        &file,
        text.replace(old, "approvers: {users: [alice, mallory], groups: [dba]}"),
    )
    .unwrap();
    let config = crate::config::load(&LoadOptions {
        manifests: file.parent().unwrap().to_path_buf(),
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    f.gateway.install(Arc::new(Snapshot {
        generation: 2,
        config,
        loaded_at: SystemTime::now(),
    }));
    // Mallory, added since, is not among the approvers frozen on the request: not found for her.
    // Alice is, but the rule changed under the request.
    for (who, expected, problem) in [
        ("mallory", StatusCode::NOT_FOUND, "not-found"),
        ("alice", StatusCode::CONFLICT, "rule-gone"),
    ] {
        let (status, p) = f
            .call(
                "POST",
                &format!("/approvals/{name}/approve"),
                Some(&f.human(who, &[])),
                "",
            )
            .await;
        assert_eq!(status, expected, "{who}: {p}");
        assert_eq!(
            p["type"],
            format!("https://agentgate.dev/problems/{problem}"),
            "{p}"
        );
    }
    // Nor is it listed for her.
    let (status, list) = f
        .call("GET", "/approvals", Some(&f.human("mallory", &[])), "")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["items"], json!([]), "{list}");
    let (status, list) = f
        .call("GET", "/approvals", Some(&f.human("alice", &[])), "")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["items"][0]["metadata"]["name"], name.as_str(), "{list}");
    assert!(f.undecided(&name));
}

#[tokio::test]
async fn a_denial_denies() {
    let f = fixture();
    let name = f.pending();
    let (status, r) = f
        .call(
            "POST",
            &format!("/approvals/{name}/deny"),
            Some(&f.human("alice", &[])),
            r#"{"reason":"freeze"}"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{r}");
    assert_eq!(r["status"]["phase"], "Denied");
    assert_eq!(r["spec"]["decisions"]["alice"]["state"], "Denied");
}

#[tokio::test]
async fn callers_are_authenticated_and_authorized() {
    let f = fixture();
    let name = f.pending();
    let approve = format!("/approvals/{name}/approve");
    // No token, a bad token.
    let (status, p) = f.call("GET", "/approvals", None, "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(p["type"], "https://agentgate.dev/problems/unauthenticated");
    let (status, _) = f.call("POST", &approve, Some("not.a.token"), "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // A token of another audience.
    let now = unix_now();
    let wrong = f.human_key.sign(&json!({
        "iss": HUMAN_ISS, "sub": "alice", "aud": "elsewhere", "azp": "approval-cli", "iat": now, "exp": now + 60,
    }));
    let (status, _) = f.call("GET", "/approvals", Some(&wrong), "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // A Host that carries a path would make the URL a DPoP proof names read as another request's.
    let alice = f.human("alice", &[]);
    let host = format!("127.0.0.1:9464/approvals/{name}/deny?");
    let (status, p) = f.call_at(&host, "POST", &approve, Some(&alice), "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{p}");
    assert!(
        p["detail"].as_str().unwrap().contains("not a plain host[:port]"),
        "{p}"
    );
    // Authenticated but approves nothing: cannot even read.
    let mallory = f.human("mallory", &["dev"]);
    let (status, p) = f.call("GET", "/approvals", Some(&mallory), "").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(p["type"], "https://agentgate.dev/problems/not-an-approver");
    let (status, _) = f.call("POST", &approve, Some(&mallory), "").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // The agent is in group dba, but agents' identities are not approver identities: no agent
    // approves, or even reads, requests (its own or another agent's).
    for (method, path) in [("POST", approve.as_str()), ("GET", "/approvals")] {
        let (status, p) = f.call(method, path, Some(&f.agent()), "").await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{p}");
        assert_eq!(p["type"], "https://agentgate.dev/problems/not-an-approver");
        assert!(
            p["detail"]
                .as_str()
                .unwrap()
                .contains("tokens of AgentIdentity ci-agent cannot decide approvals"),
            "{p}"
        );
    }
    // A human whose subject is the requester's: self-approval too.
    let (status, p) = f.call("POST", &approve, Some(&f.human("ci", &["dba"])), "").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{p}");
    assert_eq!(p["type"], "https://agentgate.dev/problems/self-approval");
    let r = f.approvals.get(&name, unix_now()).unwrap();
    assert!(r.spec.decisions.is_empty());
}

/// One DPoP proof per request (RFC 9449 §4.3): a second header counts whether or not it is text.
#[tokio::test]
async fn approvers_dpop_proofs_come_one_to_a_request() {
    let f = fixture();
    f.pending();
    let client = SigningKey::ec("approver-device").unwrap();
    let now = unix_now();
    let token = f.human_key.sign(&json!({
        "iss": HUMAN_ISS, "sub": "alice", "aud": "agentgate-approvals", "azp": "approval-cli",
        "iat": now, "exp": now + 300, "cnf": {"jkt": client.thumbprint()},
    }));
    let proof = |jti: &str| {
        let p = client.dpop_proof("GET", "http://127.0.0.1:9464/approvals", &token, now, jti);
        HeaderValue::from_str(&p).unwrap()
    };
    let authorization = HeaderValue::from_str(&format!("DPoP {token}")).unwrap();
    let (status, list) = f
        .call_with(
            "127.0.0.1:9464",
            "GET",
            "/approvals",
            &[("authorization", authorization.clone()), ("dpop", proof("one"))],
            "",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let (status, p) = f
        .call_with(
            "127.0.0.1:9464",
            "GET",
            "/approvals",
            &[
                ("authorization", authorization),
                ("dpop", proof("two")),
                ("dpop", HeaderValue::from_bytes(b"\xff").unwrap()),
            ],
            "",
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{p}");
}

#[tokio::test]
async fn malformed_calls_are_refused_clearly() {
    let f = fixture();
    let name = f.pending();
    let alice = f.human("alice", &[]);
    let (status, p) = f.call("GET", "/approvals/nope-00000000", Some(&alice), "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(p["detail"], "ApprovalRequest nope-00000000 not found");
    let (status, _) = f
        .call("POST", "/approvals/nope-00000000/approve", Some(&alice), "")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, p) = f
        .call(
            "POST",
            &format!("/approvals/{name}/approve"),
            Some(&alice),
            r#"{"reasn":"x"}"#,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(p["detail"].as_str().unwrap().contains("reason"), "{p}");
    let long = format!(r#"{{"reason":"{}"}}"#, "x".repeat(2000));
    let (status, _) = f
        .call("POST", &format!("/approvals/{name}/approve"), Some(&alice), &long)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // A body past the cap is too large, as on the data plane.
    let huge = format!(r#"{{"reason":"{}"}}"#, "x".repeat(20_000));
    let (status, p) = f
        .call("POST", &format!("/approvals/{name}/approve"), Some(&alice), &huge)
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{p}");
    assert_eq!(p["type"], "https://agentgate.dev/problems/request-too-large");
    let (status, _) = f
        .call("DELETE", &format!("/approvals/{name}"), Some(&alice), "")
        .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let (status, _) = f
        .call("GET", &format!("/approvals/{name}/approve"), Some(&alice), "")
        .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let (status, _) = f
        .call("POST", &format!("/approvals/{name}/maybe"), Some(&alice), "")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Nothing was decided.
    assert!(f.undecided(&name));
}

#[tokio::test]
async fn without_store_or_configuration_the_api_says_why() {
    let f = fixture();
    let req = || {
        Request::builder()
            .uri("/approvals")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let resp = handle(None, Some(&f.gateway), req()).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let empty = Gateway::new(Metrics::new());
    let resp = handle(Some(&f.approvals), Some(&empty), req()).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[test]
fn rules_are_looked_up_as_configured() {
    let f = fixture();
    let plane = f.gateway.plane().unwrap();
    let cfg = &plane.snapshot.config;
    assert!(configured_rule(cfg, "orders", "writes").is_some());
    assert!(configured_rule(cfg, "orders", "reads").is_none());
    assert!(configured_rule(cfg, "other", "writes").is_none());
}

/// A refusal that is not the approver's token's fault is a 503 without a challenge, which would
/// send them for another token.
#[test]
fn an_unavailable_provider_or_full_replay_cache_is_no_401() {
    use crate::identity::{ErrorKind, IdentityError};
    for (kind, slug) in [
        (ErrorKind::ProofsBusy, "gateway-busy"),
        (ErrorKind::ProviderUnavailable, "identity-provider-unavailable"),
    ] {
        let resp = super::unauthenticated(&IdentityError::new(kind, "x"));
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE, "{slug}");
        assert!(
            resp.headers().get(hyper::header::WWW_AUTHENTICATE).is_none(),
            "{slug}"
        );
    }
    let resp = super::unauthenticated(&IdentityError::new(ErrorKind::Expired, "x"));
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(resp.headers().get(hyper::header::WWW_AUTHENTICATE).is_some());
}

/// A flood of junk tokens at the admin listener spends the share of the introspection budget
/// that its address has, as an agent's address would, not the whole provider budget that every
/// agent's opaque token needs too.
#[tokio::test]
async fn approver_tokens_from_one_address_take_that_address_s_introspection_share() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let idp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let idp_port = idp.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let idp_task = tokio::spawn(async move {
        while let Ok((stream, _)) = idp.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    counted.fetch_add(1, Ordering::SeqCst);
                    async {
                        let mut resp = Response::new(Full::new(Bytes::from_static(br#"{"active":false}"#)));
                        resp.headers_mut()
                            .insert(CONTENT_TYPE, "application/json".parse().unwrap());
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });

    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    let agent_key = SigningKey::ec("agents-1").unwrap();
    write_manifests_with(
        &manifests,
        &SigningKey::jwks(&[&agent_key]),
        &SigningKey::jwks(&[&agent_key]),
        &format!(
            "tokenType: Introspection\n  introspection: {{endpoint: 'http://127.0.0.1:{idp_port}/introspect', \
             clientId: agentgate, authMethod: client_secret_basic, secretRef: {{name: keys, key: introspection}}}}"
        ),
    );
    let config = crate::config::load(&LoadOptions {
        manifests,
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let snapshot = Arc::new(Snapshot {
        generation: 1,
        config,
        loaded_at: SystemTime::now(),
    });
    let gateway = Gateway::new(Metrics::new());
    gateway.install(snapshot.clone());
    let (_snapshots_tx, snapshots) = tokio::sync::watch::channel(Some(snapshot));
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let admin = crate::admin::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let admin_addr = admin.local_addr().unwrap();
    let state = crate::admin::AdminState {
        snapshots,
        metrics: Metrics::new(),
        approvals: Some(Approvals::open(dir.path().join("approvals"), "agents").unwrap()),
        gateway: Some(gateway),
    };
    let admin_task = tokio::spawn(crate::admin::serve(admin, state, shutdown));

    // Below the provider budget (50 a second), above an address's share of it (12).
    const FLOOD: usize = 40;
    let started = std::time::Instant::now();
    for i in 0..FLOOD {
        let mut conn = tokio::net::TcpStream::connect(admin_addr).await.unwrap();
        let request = format!(
            "GET /approvals HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer junk-opaque-token-{i:04}\r\nConnection: close\r\n\r\n"
        );
        conn.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).await.unwrap();
        assert!(!answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(
            !answer.contains("junk-opaque-token"),
            "the token is echoed: {answer}"
        );
    }
    let asked = hits.load(Ordering::SeqCst);
    assert!(asked >= 1, "the provider was never asked");
    // The share is a bucket of a second's calls, refilled as time passes: however slow the
    // machine, no more than that reach the provider.
    let share = f64::from(
        crate::identity::introspection::MAX_CALLS_PER_SECOND / crate::identity::introspection::PEER_SHARE,
    );
    let allowed = (share * (1.0 + started.elapsed().as_secs_f64())).ceil() as usize;
    assert!(
        asked <= allowed,
        "{asked} of {FLOOD} junk tokens reached the provider (the address's share allows {allowed})"
    );
    let _ = stop.send(true);
    let _ = admin_task.await;
    idp_task.abort();
}
