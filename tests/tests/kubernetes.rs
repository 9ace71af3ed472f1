//! The Kubernetes API through the gateway, end to end: the real `kubectl` talks to the gateway's
//! TLS listener with an agent token from the real OIDC provider; the gateway decides each request
//! on its Kubernetes attributes, injects the `gateway` user's credential and forwards to the
//! Kubernetes API emulator (or, with AGENTGATE_TEST_KUBECONFIG, a real cluster: the Connection is
//! built from the kubeconfig, so nothing else changes). Allowed, denied, approval-required and exec
//! requests, Secret masking in gets, lists and watches, impersonation stripping, the Accept
//! rewrite, ambiguous queries, and the session record.
//!
//! The listener is TLS because kubectl sends a kubeconfig's token only over https.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use agentgate_e2e::gateway::{Gateway, ServingCert};
use agentgate_e2e::oidc::OidcProvider;
use agentgate_e2e::{Reply, binary, curl};
use agentgate_kube_emulator::harness::{Streaming, TestEnv, kubectl_binary};
use agentgate_kube_emulator::server::{Config, LOG_ANNOTATION};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};

/// A Secret value that must never reach the agent, a log or a recording.
const SECRET_VALUE: &str = "hunter2-kube-canary-5c1f";
/// The value it is changed to while a watch is open.
const SECRET_VALUE_2: &str = "swordfish-kube-canary-9e07";

/// What the gateway needs to reach the API server as a kubeconfig user.
struct Cluster {
    server: String,
    ca_pem: Option<String>,
    credential: Credential,
}

/// The kubeconfig user's credential: a token (the emulator, most clusters) or a client
/// certificate (kind, minikube).
enum Credential {
    Token(String),
    ClientCertificate { cert_pem: String, key_pem: String },
}

impl Cluster {
    /// The part of the credential that must never leave the gateway.
    fn secret(&self) -> &str {
        match &self.credential {
            Credential::Token(t) => t,
            Credential::ClientCertificate { key_pem, .. } => key_pem,
        }
    }
}

fn decoded_pem(b64: &Value) -> Option<String> {
    b64.as_str()
        .map(|b| String::from_utf8(BASE64.decode(b).expect("base64 PEM")).expect("PEM is text"))
}

/// Reads `user`'s kubeconfig as kubectl resolves it (current context, files inlined), so a real
/// cluster's kubeconfig works as the emulator's does.
fn cluster_of(env: &TestEnv, user: &str) -> Cluster {
    let out = Command::new(kubectl_binary())
        .args(["config", "view", "--raw", "--minify", "--flatten", "-o", "json"])
        .arg("--kubeconfig")
        .arg(env.kubeconfig(user))
        .output()
        .expect("kubectl runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let config: Value = serde_json::from_slice(&out.stdout).expect("kubectl prints JSON");
    let cluster = &config["clusters"][0]["cluster"];
    let user = &config["users"][0]["user"];
    let credential = match (
        user["token"].as_str(),
        decoded_pem(&user["client-certificate-data"]),
        decoded_pem(&user["client-key-data"]),
    ) {
        (Some(token), _, _) => Credential::Token(token.to_string()),
        (None, Some(cert_pem), Some(key_pem)) => Credential::ClientCertificate { cert_pem, key_pem },
        _ => panic!(
            "the kubeconfig user needs a token or a client certificate (exec plugins are not supported here)"
        ),
    };
    Cluster {
        server: cluster["server"].as_str().expect("server").to_string(),
        ca_pem: decoded_pem(&cluster["certificate-authority-data"]),
        credential,
    }
}

/// One gateway with a TLS listener and two Connections to the same API server: `kube`, routed by
/// the path prefix `/k8s`, and `kube-by-host`, routed by the host `localhost`.
fn manifests(issuer: &str, cluster: &Cluster, serving: &ServingCert, ns: &str) -> String {
    let tls = if cluster.ca_pem.is_some() {
        "tls: {caSecretRef: {name: kube-ca, key: ca.crt}}"
    } else {
        ""
    };
    let (credentials, credential_secret) = match &cluster.credential {
        Credential::Token(token) => (
            "{scheme: Bearer, secretRef: {name: kube-credential, key: token}}",
            format!("stringData: {{token: {}}}", json!(token)),
        ),
        Credential::ClientCertificate { cert_pem, key_pem } => (
            "{scheme: ClientCertificate, certificateSecretRef: {name: kube-credential}}",
            format!(
                "type: kubernetes.io/tls\nstringData: {{tls.crt: {}, tls.key: {}}}",
                json!(cert_pem),
                json!(key_pem)
            ),
        ),
    };
    let connection = |name: &str, route: &str| {
        format!(
            r#"apiVersion: agentgate.dev/v1alpha1
kind: Connection
metadata: {{name: {name}, namespace: e2e}}
spec:
  gatewayRef: {{name: gw}}
  type: Kubernetes
  endpoint: {server}
  credentials: {credentials}
  {tls}
  route: {route}
"#,
            server = cluster.server
        )
    };
    format!(
        r#"apiVersion: v1
kind: Namespace
metadata: {{name: e2e}}
---
apiVersion: agentgate.dev/v1alpha1
kind: AgentGateway
metadata: {{name: gw, namespace: e2e}}
spec:
  listeners:
    - name: https
      protocol: HTTP
      port: ${{LISTEN_PORT}}
      address: 127.0.0.1
      tls: {{secretName: gateway-tls}}
  recording:
    mode: Required
    storage: {{local: {{path: "${{SESSIONS}}"}}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: gateway-tls, namespace: e2e}}
type: kubernetes.io/tls
stringData:
  tls.crt: {gw_crt}
  tls.key: {gw_key}
---
apiVersion: agentgate.dev/v1alpha1
kind: AgentIdentity
metadata: {{name: ci-agent, namespace: e2e}}
spec:
  issuer: {issuer}
  audiences: ["api://agentgate"]
  match: {{claims: {{client_id: ci-agent}}}}
---
{by_prefix}---
{by_host}---
apiVersion: v1
kind: Secret
metadata: {{name: kube-credential, namespace: e2e}}
{credential_secret}
---
apiVersion: v1
kind: Secret
metadata: {{name: kube-ca, namespace: e2e}}
stringData: {{ca.crt: {ca}}}
---
apiVersion: agentgate.dev/v1alpha1
kind: AccessPolicy
metadata: {{name: ci-agent-kube, namespace: e2e}}
spec:
  subjects: {{identities: [ci-agent]}}
  connections: [kube, kube-by-host]
  rules:
    - name: read-workloads
      action: Allow
      kubernetes:
        verbs: [get, list, watch]
        apiGroups: [""]
        resources: [pods, configmaps, secrets]
        namespaces: [{ns}]
    - name: write-agent-secrets
      action: Allow
      kubernetes:
        verbs: [create, patch]
        apiGroups: [""]
        resources: [secrets]
        namespaces: [{ns}]
    - name: read-secrets-elsewhere
      action: Allow
      kubernetes:
        verbs: [list]
        apiGroups: [""]
        resources: [secrets]
        namespaces: [{ns}-other]
    - name: configmaps-need-approval
      action: RequireApproval
      kubernetes:
        verbs: [create]
        apiGroups: [""]
        resources: [configmaps]
        namespaces: [{ns}]
      approval:
        approvers: {{groups: [platform-team]}}
        mode: Defer
    - name: patch-applied-configmaps
      action: Allow
      kubernetes:
        verbs: [patch]
        apiGroups: [""]
        resources: [configmaps]
        namespaces: [{ns}]
        names: ["applied-*"]
    - name: read-clusterroles
      action: Allow
      kubernetes:
        verbs: [get]
        apiGroups: [rbac.authorization.k8s.io]
        resources: [clusterroles]
    - name: no-system-roles
      action: Deny
      description: Built-in roles are not the agent's to change.
      kubernetes:
        verbs: ["*"]
        apiGroups: [rbac.authorization.k8s.io]
        resources: [clusterroles]
        names: ["system:*"]
    - name: never-delete
      action: Deny
      description: Agents never delete cluster objects.
      kubernetes:
        verbs: [delete, deletecollection]
    - name: no-shells
      action: Deny
      description: No shells into application pods.
      kubernetes:
        verbs: ["*"]
        apiGroups: [""]
        resources: [pods]
        subresources: [exec, attach]
        names: ["app-*"]
    - name: read-app-logs
      action: Allow
      kubernetes:
        verbs: [get]
        apiGroups: [""]
        resources: [pods]
        subresources: [log]
        names: ["app-*"]
    - name: sandbox-shells
      action: Allow
      kubernetes:
        verbs: [get, create]
        apiGroups: [""]
        resources: [pods]
        subresources: [exec]
        names: ["sandbox-*"]
    - name: whoami
      action: Allow
      kubernetes:
        verbs: [create]
        apiGroups: [authentication.k8s.io]
        resources: [selfsubjectreviews]
    - name: token-reviews
      action: Allow
      kubernetes:
        verbs: [create]
        apiGroups: [authentication.k8s.io]
        resources: [tokenreviews]
  masking:
    - detectors: [Email]
      strategy: Redact
"#,
        by_prefix = connection("kube", "{pathPrefix: /k8s}"),
        by_host = connection("kube-by-host", "{host: localhost}"),
        ca = json!(cluster.ca_pem.clone().unwrap_or_default()),
        gw_crt = json!(serving.cert_pem),
        gw_key = json!(serving.key_pem),
    )
}

/// The emulator (or cluster), the OIDC provider, the gateway, and kubeconfigs for the agent.
struct Kube {
    env: TestEnv,
    cluster: Cluster,
    _idp: OidcProvider,
    gw: Gateway,
    agent_token: String,
    /// Agent kubeconfigs: by path prefix, by host.
    by_prefix: PathBuf,
    by_host: PathBuf,
    gateway_ca: PathBuf,
    dir: tempfile::TempDir,
}

impl Kube {
    fn start() -> Self {
        Self::with(TestEnv::start())
    }

    fn with(env: TestEnv) -> Self {
        let cluster = cluster_of(&env, "gateway");
        let idp = OidcProvider::start();
        let serving = ServingCert::generate();
        let gw = Gateway::start(&manifests(&idp.issuer, &cluster, &serving, env.namespace()));
        let answer = idp.token("ci-agent", "api://agentgate", None);
        let agent_token = answer["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("{answer}"))
            .to_string();
        let dir = tempfile::tempdir().expect("temp dir");
        let gateway_ca = dir.path().join("gateway-ca.crt");
        std::fs::write(&gateway_ca, &serving.ca_pem).expect("write CA");
        let kubeconfig = |name: &str, server: String| {
            let config = json!({
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "gateway", "cluster": {
                    "server": server,
                    "certificate-authority-data": BASE64.encode(&serving.ca_pem),
                }}],
                "users": [{"name": "agent", "user": {"token": agent_token}}],
                "contexts": [{"name": "agent", "context": {
                    "cluster": "gateway", "user": "agent", "namespace": env.namespace(),
                }}],
                "current-context": "agent",
            });
            let path = dir.path().join(name);
            std::fs::write(&path, config.to_string()).expect("write kubeconfig");
            path
        };
        // kubectl keeps the server's path as a prefix of every request; the gateway strips it.
        let by_prefix = kubeconfig("prefix.kubeconfig", format!("https://127.0.0.1:{}/k8s", gw.port));
        let by_host = kubeconfig("host.kubeconfig", format!("https://localhost:{}", gw.port));
        Self {
            env,
            cluster,
            _idp: idp,
            gw,
            agent_token,
            by_prefix,
            by_host,
            gateway_ca,
            dir,
        }
    }

    fn ns(&self) -> &str {
        self.env.namespace()
    }

    /// kubectl as the agent, through the gateway (routed by path prefix).
    fn agent_command(&self, args: &[&str]) -> Command {
        self.agent_command_with(&self.by_prefix, args)
    }

    fn agent_command_with(&self, kubeconfig: &Path, args: &[&str]) -> Command {
        let mut command = Command::new(kubectl_binary());
        command
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--cache-dir")
            .arg(self.dir.path().join("kube-cache"))
            .args(args)
            .stdin(Stdio::null());
        command
    }

    fn agent(&self, args: &[&str]) -> Output {
        self.agent_command(args).output().expect("kubectl runs")
    }

    fn agent_ok(&self, args: &[&str]) -> String {
        let out = self.agent(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}\n{}",
            show(&out),
            self.gw.output()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs kubectl as the agent, asserts it failed and returns what it printed (stdout and stderr).
    fn agent_err(&self, args: &[&str]) -> String {
        let out = self.agent(args);
        assert!(
            !out.status.success(),
            "kubectl {args:?} succeeded: {}",
            show(&out)
        );
        agentgate_e2e::printed(&out)
    }

    /// The real curl as the agent, through the gateway.
    fn curl(&self, path: &str, headers: &[&str]) -> Reply {
        let mut args = vec!["--cacert".to_string(), self.gateway_ca.display().to_string()];
        args.extend([
            "-H".to_string(),
            format!("Authorization: Bearer {}", self.agent_token),
        ]);
        for h in headers {
            args.extend(["-H".to_string(), h.to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        curl(&args, &format!("https://127.0.0.1:{}/k8s{path}", self.gw.port))
    }

    /// The real curl as the `gateway` user, straight to the API server.
    fn curl_direct(&self, path: &str, headers: &[&str]) -> Reply {
        let file = |name: &str, text: &str| {
            let path = self.dir.path().join(name);
            std::fs::write(&path, text).expect("write a PEM file");
            path.display().to_string()
        };
        let mut args = match &self.cluster.credential {
            Credential::Token(token) => vec!["-H".to_string(), format!("Authorization: Bearer {token}")],
            Credential::ClientCertificate { cert_pem, key_pem } => vec![
                "--cert".to_string(),
                file("client.crt", cert_pem),
                "--key".to_string(),
                file("client.key", key_pem),
            ],
        };
        if let Some(ca) = &self.cluster.ca_pem {
            args.extend(["--cacert".to_string(), file("cluster-ca.crt", ca)]);
        }
        for h in headers {
            args.extend(["-H".to_string(), h.to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        curl(
            &args,
            &format!("{}{path}", self.cluster.server.trim_end_matches('/')),
        )
    }

    /// Stops the gateway (closing and signing its sessions) and returns the recordings, after
    /// checking that they verify and hold neither token.
    fn stop_and_read_recordings(&mut self) -> String {
        self.gw.stop();
        let files: Vec<PathBuf> = std::fs::read_dir(&self.gw.sessions)
            .expect("sessions directory")
            .map(|e| e.expect("dir entry").path())
            .collect();
        assert!(!files.is_empty(), "no session was recorded");
        let out = Command::new(binary("agentgate"))
            .args(["sessions", "verify"])
            .args(&files)
            .output()
            .expect("agentgate runs");
        assert!(out.status.success(), "{}", show(&out));
        let recordings = self.gw.recordings();
        let log = self.gw.output();
        for text in [&recordings, &log] {
            assert!(
                !text.contains(self.cluster.secret()),
                "the gateway's Kubernetes credential leaked"
            );
            assert!(!text.contains(&self.agent_token), "the agent's token leaked");
        }
        recordings
    }
}

fn show(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Creates pods `app-1` (no shells) and `sandbox-1` (shells allowed, but not proxied) as admin.
/// What each test pod's container prints: to its log on a real cluster; the emulator, which runs
/// no containers, serves its log from an annotation.
const POD_LOG: &str = "ready; paging ops@example.com";

fn create_pods(k: &Kube) {
    for name in ["app-1", "sandbox-1"] {
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "annotations": {LOG_ANNOTATION: format!("{POD_LOG}\n")}},
            "spec": {"containers": [{
                "name": "main", "image": "busybox",
                "command": ["sh", "-c", format!("echo '{POD_LOG}'; sleep 3600")],
            }]},
        });
        let file = k.env.file(&format!("{name}.json"), &pod.to_string());
        k.env.kubectl_ok("admin", &["apply", "-f", &file]);
    }
}

#[test]
fn kubectl_is_allowed_denied_and_asked_for_approval_as_the_policy_says() {
    let mut k = Kube::start();
    let ns = k.ns().to_string();
    create_pods(&k);
    k.env.kubectl_ok(
        "admin",
        &["create", "configmap", "settings", "--from-literal=mode=fast"],
    );

    // Allowed: reads in the namespace, by path prefix and by host.
    let pods = k.agent_ok(&["get", "pods", "-o", "name"]);
    assert_eq!(pods.lines().collect::<Vec<_>>(), ["pod/app-1", "pod/sandbox-1"]);
    let table = k.agent_ok(&["get", "pods"]);
    assert!(
        table.starts_with("NAME") && table.contains("sandbox-1"),
        "{table}"
    );
    let by_host = k
        .agent_command_with(&k.by_host, &["get", "pods", "-o", "name"])
        .output()
        .expect("kubectl runs");
    assert!(by_host.status.success(), "{}", show(&by_host));
    assert_eq!(String::from_utf8_lossy(&by_host.stdout), pods);
    let stored = json_of(
        &k.env
            .kubectl_ok("admin", &["get", "configmap", "settings", "-o", "json"]),
    );
    let cm = json_of(&k.agent_ok(&["get", "configmap", "settings", "-o", "json"]));
    assert_eq!(cm["kind"], "ConfigMap");
    assert_eq!(cm["metadata"]["uid"], stored["metadata"]["uid"]);
    assert_eq!(cm["metadata"]["namespace"], ns.as_str());
    // Secret masking applies to Secrets only: a ConfigMap's data is configuration, served and
    // recorded as it is (no rule of this policy masks it).
    assert_eq!(stored["data"]["mode"], "fast");
    assert_eq!(cm["data"], json!({"mode": "fast"}));

    // Logs: allowed by a rule for pods/log, streamed as text and masked by the policy's
    // detectors (the container's output, which a real cluster has once the pod runs).
    // (On a real cluster kubectl fails while the container starts: retried.)
    let mut log = k.agent(&["logs", "app-1"]);
    for _ in 0..120 {
        if log.status.success() && !log.stdout.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
        log = k.agent(&["logs", "app-1"]);
    }
    assert!(log.status.success(), "{}", show(&log));
    assert_eq!(
        String::from_utf8_lossy(&log.stdout),
        "ready; paging [REDACTED:EMAIL]\n"
    );
    // Followed, the log streams (no Content-Length) and is masked line by line as it comes,
    // not held until the stream ends, which it does not while the container runs.
    let follow = Streaming::spawn(k.agent_command(&["logs", "-f", "app-1"]));
    let out = follow.wait_for("the followed log line", |o| o.contains('\n'));
    drop(follow);
    assert_eq!(out, "ready; paging [REDACTED:EMAIL]\n");
    // Cut at a byte count, a value could escape the detectors.
    let err = k.agent_err(&["logs", "app-1", "--limit-bytes=20"]);
    assert!(err.contains("limitBytes may cut a value"), "{err}");
    let tail = k.agent_ok(&["logs", "app-1", "--tail=1"]);
    assert_eq!(tail, "ready; paging [REDACTED:EMAIL]\n");
    let err = k.agent_err(&["logs", "sandbox-1"]);
    assert_eq!(
        err.trim(),
        format!(
            "Error from server (Forbidden): get pods/log in namespace {ns} named sandbox-1: denied: no rule of the AccessPolicies that apply allows it"
        )
    );

    // Denied: kubectl prints the gateway's reason; the object is still there.
    let err = k.agent_err(&["delete", "configmap", "settings"]);
    assert_eq!(
        err.trim(),
        format!(
            "Error from server (Forbidden): delete configmaps in namespace {ns} named settings: denied by rule \"never-delete\" of AccessPolicy \"ci-agent-kube\": Agents never delete cluster objects."
        )
    );
    k.env.kubectl_ok("admin", &["get", "configmap", "settings"]);
    // Outside the policy's namespace nothing is allowed (no rule matches).
    let err = k.agent_err(&["get", "pods", "-n", "kube-system"]);
    assert_eq!(
        err.trim(),
        "Error from server (Forbidden): list pods in namespace kube-system: denied: no rule of the AccessPolicies that apply allows it"
    );

    // Discovery and /version are allowed, as kubectl needs them. The API server's own logs,
    // metrics, profiles and health checks are not discovery: no rule can allow them.
    let version = k.curl("/version", &[]);
    assert_eq!(version.status, 200, "{}", version.body);
    assert!(
        json_of(&version.body)["gitVersion"].is_string(),
        "{}",
        version.body
    );
    for path in [
        "/metrics",
        "/logs/kube-apiserver.log",
        "/debug/pprof/heap",
        "/healthz",
    ] {
        let r = k.curl(path, &[]);
        assert_eq!(r.status, 403, "{path}: {}", r.body);
        assert!(
            r.body
                .contains("no AccessPolicy rule can allow this Kubernetes request"),
            "{path}: {}",
            r.body
        );
    }

    // Approval required (Defer): refused at once, naming the ApprovalRequest; nothing created,
    // whether by `create` or `apply`.
    let err = k.agent_err(&["create", "configmap", "new", "--from-literal=a=b"]);
    let expected = format!(
        "error: failed to create configmap: create configmaps in namespace {ns}: needs approval by rule \"configmaps-need-approval\" of AccessPolicy \"ci-agent-kube\"; ApprovalRequest "
    );
    assert!(
        err.trim().starts_with(&expected)
            && err
                .trim()
                .ends_with("is pending; retry the identical request once it is approved"),
        "{err}"
    );
    let manifest =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "new"}, "data": {"a": "b"}});
    let file = k.env.file("new.json", &manifest.to_string());
    let err = k.agent_err(&["apply", "-f", &file]);
    assert!(
        err.contains("Error from server (Forbidden): error when creating")
            && err.contains("needs approval by rule \"configmaps-need-approval\""),
        "{err}"
    );
    let missing = k.env.kubectl_err("admin", &["get", "configmap", "new"]);
    assert!(missing.contains("NotFound"), "{missing}");

    // exec: denied by a rule (403 naming it), or allowed by one and still refused because the
    // gateway does not proxy streams (501). kubectl tries WebSocket, then SPDY.
    let err = k.agent_err(&["exec", "app-1", "--", "ls"]);
    assert_eq!(
        err.trim(),
        format!(
            "Error from server (Forbidden): create pods/exec in namespace {ns} named app-1: denied by rule \"no-shells\" of AccessPolicy \"ci-agent-kube\": No shells into application pods."
        )
    );
    let err = k.agent_err(&["exec", "sandbox-1", "--", "ls"]);
    assert_eq!(
        err.trim(),
        "Error from server (NotImplemented): exec needs a streaming upgrade (SPDY or WebSocket), which the gateway does not proxy"
    );
    let err = k.agent_err(&["attach", "app-1"]);
    assert!(err.contains("denied by rule \"no-shells\""), "{err}");

    // The record: every decision with its rule; discovery allowed as such.
    let rec = k.stop_and_read_recordings();
    let decisions: Vec<Value> = rec
        .lines()
        .map(json_of)
        .filter(|e| e["type"] == "decision")
        .map(|e| e["data"].clone())
        .collect();
    let with_rule = |rule: &str| decisions.iter().filter(|d| d["rule"] == rule).count();
    assert!(with_rule("read-workloads") >= 3, "{decisions:?}");
    assert_eq!(with_rule("never-delete"), 1);
    assert_eq!(with_rule("configmaps-need-approval"), 2);
    // kubectl tries each exec and attach twice (WebSocket GET, then SPDY POST); each is decided.
    assert_eq!(with_rule("no-shells"), 4, "{decisions:?}");
    assert_eq!(with_rule("sandbox-shells"), 2, "{decisions:?}");
    assert!(
        decisions
            .iter()
            .all(|d| d["policy"].is_null() || d["policy"] == "ci-agent-kube")
    );
    assert!(
        decisions.iter().any(|d| d["reason"]
            .as_str()
            .is_some_and(|r| r.ends_with("allowed: API discovery"))),
        "{decisions:?}"
    );
    assert!(
        rec.contains("\"mode\":\"fast\""),
        "ConfigMap data is not in the recording"
    );
    // (Secret values become "REDACTED"; the agent's own token, "[REDACTED]", is still hidden.)
    assert!(!rec.contains("\"REDACTED\""), "a value was masked: {rec}");
}

/// Secret values the agent writes stay out of the recording too: a JSON body is masked by the
/// Secret field rules, and bodies those rules cannot read are withheld (their size kept): YAML
/// (or protobuf), and a JSON patch, whose value sits under `value`.
#[test]
fn secret_values_an_agent_writes_are_not_recorded() {
    let mut k = Kube::start();
    let ns = k.env.namespace().to_string();
    let values = [
        "applied-kube-canary-71d0",
        "json-patched-kube-canary-2b9e",
        "merged-kube-canary-c44a",
        "yaml-posted-kube-canary-0e5b",
    ];
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "agent-one"},
        "stringData": {"password": values[0]},
    });
    k.agent_ok(&["apply", "-f", &k.env.file("agent-one.json", &secret.to_string())]);
    let patch = json!([{"op": "replace", "path": "/data/password", "value": BASE64.encode(values[1])}]);
    k.agent_ok(&[
        "patch",
        "secret",
        "agent-one",
        "--type=json",
        "-p",
        &patch.to_string(),
    ]);
    let merge = json!({"data": {"password": BASE64.encode(values[2])}});
    k.agent_ok(&[
        "patch",
        "secret",
        "agent-one",
        "--type=merge",
        "-p",
        &merge.to_string(),
    ]);
    let stored = json_of(
        &k.env
            .kubectl_ok("admin", &["get", "secret", "agent-one", "-o", "json"]),
    );
    assert_eq!(stored["data"]["password"], BASE64.encode(values[2]).as_str());
    let yaml = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: agent-two}}\nstringData: {{password: {}}}\n",
        values[3]
    );
    let auth = format!("Authorization: Bearer {}", k.agent_token);
    let cacert = k.gateway_ca.display().to_string();
    let posted = curl(
        &[
            "--cacert",
            &cacert,
            "-H",
            &auth,
            "-H",
            "Content-Type: application/yaml",
            "--data-binary",
            &yaml,
        ],
        &format!(
            "https://127.0.0.1:{}/k8s/api/v1/namespaces/{ns}/secrets",
            k.gw.port
        ),
    );
    assert_ne!(posted.status, 403, "{posted:?}");

    let rec = k.stop_and_read_recordings();
    for v in values {
        assert!(
            !rec.contains(v) && !rec.contains(&BASE64.encode(v)),
            "{v} is in the recording:\n{rec}"
        );
    }
    assert!(rec.contains("this body is not JSON the masker can read"), "{rec}");
    assert!(rec.contains("a Secret's patch"), "{rec}");
}

/// A JSON patch may copy or move a Secret's value into an annotation, which masking does not
/// cover, and `test` confirms a guessed value: such patches are refused before they are sent.
#[test]
fn secret_values_cannot_be_patched_out_of_masking() {
    let mut k = Kube::start();
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "agent-three"},
        "stringData": {"password": SECRET_VALUE},
    });
    k.agent_ok(&[
        "apply",
        "-f",
        &k.env.file("agent-three.json", &secret.to_string()),
    ]);
    let patch = |ops: Value| {
        k.agent(&[
            "patch",
            "secret",
            "agent-three",
            "--type=json",
            "-p",
            &ops.to_string(),
        ])
    };
    let refused = [
        (
            json!([{"op": "add", "path": "/metadata/annotations", "value": {}},
                   {"op": "copy", "from": "/data/password", "path": "/metadata/annotations/x"}]),
            "may not copy or move",
        ),
        (
            json!([{"op": "move", "from": "/data", "path": "/metadata/labels"}]),
            "may not copy or move",
        ),
        (
            json!([{"op": "copy", "from": "", "path": "/metadata/annotations/all"}]),
            "may not copy or move",
        ),
        (
            json!([{"op": "test", "path": "/data/password", "value": BASE64.encode(SECRET_VALUE)}]),
            "may not test",
        ),
        // A copy is a value to write guesses over, each confirmed by an unchanged
        // resourceVersion.
        (
            json!([{"op": "copy", "from": "/data/password", "path": "/data/probe"}]),
            "may not copy its data",
        ),
        // The API server drops whatever precedes a pointer's first `/`.
        (
            json!([{"op": "add", "path": "/metadata/annotations", "value": {}},
                   {"op": "copy", "from": "x/data/password", "path": "/metadata/annotations/y"}]),
            "may not copy or move",
        ),
        (
            json!([{"op": "test", "path": "x/data/password", "value": BASE64.encode(SECRET_VALUE)}]),
            "may not test",
        ),
        // `kubectl apply` repeated the data in its annotation, masked by that key only.
        (
            json!([{"op": "copy",
                    "from": "/metadata/annotations/kubectl.kubernetes.io~1last-applied-configuration",
                    "path": "/metadata/annotations/leak"}]),
            "may not copy or move",
        ),
        (
            json!([{"op": "move", "from": "/metadata/annotations", "path": "/metadata/labels"}]),
            "may not copy or move",
        ),
    ];
    let refused_count = refused.len();
    for (ops, why) in refused {
        let out = patch(ops.clone());
        let text = show(&out);
        assert!(!out.status.success() && text.contains(why), "{ops}: {text}");
    }
    // Within data, a move stays masked and goes on.
    let out = patch(json!([{"op": "move", "from": "/data/password", "path": "/data/backup"}]));
    assert!(out.status.success(), "{}", show(&out));
    let stored = json_of(
        &k.env
            .kubectl_ok("admin", &["get", "secret", "agent-three", "-o", "json"]),
    );
    assert_eq!(stored["data"]["backup"], BASE64.encode(SECRET_VALUE).as_str());
    assert!(stored["data"].get("password").is_none(), "{stored}");
    assert!(
        stored["metadata"]
            .get("annotations")
            .is_none_or(|a| a.get("x").is_none()),
        "{stored}"
    );
    assert!(stored["metadata"].get("labels").is_none(), "{stored}");
    // Each refused attempt is on record, its request and decision, without the value.
    let rec = k.stop_and_read_recordings();
    let attempts = rec
        .lines()
        .filter(|l| {
            l.contains("\"type\":\"http.request\"") && l.contains("PATCH") && l.contains("agent-three")
        })
        .count();
    assert!(
        attempts > refused_count,
        "{attempts} PATCH requests on record\n{rec}"
    );
    assert!(!rec.contains(SECRET_VALUE) && !rec.contains(BASE64.encode(SECRET_VALUE).as_str()));
}

#[test]
fn secrets_never_leave_the_gateway_unmasked() {
    let mut k = Kube::start();
    let encoded = BASE64.encode(SECRET_VALUE);
    let encoded_2 = BASE64.encode(SECRET_VALUE_2);
    let leaks = |text: &str| {
        [SECRET_VALUE, encoded.as_str(), SECRET_VALUE_2, encoded_2.as_str()]
            .into_iter()
            .find(|v| text.contains(v))
            .map(str::to_string)
    };
    // Applied by the admin: the last-applied annotation repeats the value.
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"},
        "stringData": {"password": SECRET_VALUE},
    });
    k.env.kubectl_ok(
        "admin",
        &["apply", "-f", &k.env.file("db.json", &secret.to_string())],
    );
    let stored = json_of(&k.env.kubectl_ok("admin", &["get", "secret", "db", "-o", "json"]));
    assert_eq!(stored["data"]["password"], encoded.as_str());
    let annotations = &stored["metadata"]["annotations"];
    assert!(
        annotations["kubectl.kubernetes.io/last-applied-configuration"]
            .as_str()
            .is_some_and(|a| a.contains(SECRET_VALUE)),
        "{stored}"
    );

    let got = k.agent_ok(&["get", "secret", "db", "-o", "json"]);
    assert_eq!(leaks(&got), None, "{got}");
    let got = json_of(&got);
    assert_eq!(got["metadata"]["uid"], stored["metadata"]["uid"]);
    assert_eq!(got["data"], json!({"password": "REDACTED"}));
    assert_eq!(
        got["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"],
        "[REDACTED]"
    );
    for args in [
        &["get", "secret", "db", "-o", "yaml"][..],
        &["get", "secrets", "-o", "json"],
        &["get", "secrets", "-o", "yaml"],
        &["get", "secrets"],
        &["get", "secret", "db", "-o", "jsonpath={.data.password}"],
        // Typed decoding: a string where the data map belongs made these fail.
        &["describe", "secret", "db"],
    ] {
        let out = k.agent_ok(args);
        assert_eq!(leaks(&out), None, "kubectl {args:?}: {out}");
    }
    let described = k.agent_ok(&["describe", "secret", "db"]);
    assert!(described.contains("password:  6 bytes"), "{described}");
    let list = json_of(&k.agent_ok(&["get", "secrets", "-o", "json"]));
    assert_eq!(list["items"][0]["metadata"]["name"], "db");
    assert_eq!(list["items"][0]["data"]["password"], "REDACTED");

    // A ConfigMap is no Secret: its data and last-applied annotation reach the agent as they
    // are, so client-side apply works through the gateway.
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "applied-cm"}, "data": {"k": "v1"}});
    let file = k.env.file("applied-cm.json", &cm.to_string());
    k.env.kubectl_ok("admin", &["apply", "-f", &file]);
    let got = json_of(&k.agent_ok(&["get", "configmap", "applied-cm", "-o", "json"]));
    assert_eq!(got["data"]["k"], "v1");
    assert!(
        got["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
            .as_str()
            .is_some_and(|a| a.contains("\"v1\"")),
        "{got}"
    );
    let cm2 = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "applied-cm"}, "data": {"k": "v2"}});
    let file = k.env.file("applied-cm-2.json", &cm2.to_string());
    let out = k.agent_ok(&["apply", "-f", &file]);
    assert_eq!(out.trim(), "configmap/applied-cm configured");
    let stored = json_of(
        &k.env
            .kubectl_ok("admin", &["get", "configmap", "applied-cm", "-o", "json"]),
    );
    assert_eq!(stored["data"]["k"], "v2");
    // A server-side apply of a ConfigMap that does not exist would create it: decided as create
    // too, which needs approval, however patch is allowed.
    let new_cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "applied-new"}, "data": {"k": "v"}});
    let file = k.env.file("applied-new.json", &new_cm.to_string());
    let err = k.agent_err(&["apply", "--server-side", "-f", &file]);
    assert!(
        err.contains("needs approval by rule \"configmaps-need-approval\""),
        "{err}"
    );
    assert!(
        !k.env
            .kubectl("admin", &["get", "configmap", "applied-new"])
            .status
            .success(),
        "the ConfigMap was created"
    );

    // A Secret's annotation repeats its data, so it is masked: client-side apply of a Secret
    // through the gateway fails (kubectl needs the annotation to compute its patch), and
    // server-side apply works (forced: the field is client-side apply's).
    let applied = |value: &str| {
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "applied-secret"}, "stringData": {"token": value}})
            .to_string()
    };
    let file = k.env.file("applied-secret.json", &applied(SECRET_VALUE));
    k.env.kubectl_ok("admin", &["apply", "-f", &file]);
    let file = k.env.file("applied-secret-2.json", &applied(SECRET_VALUE_2));
    let err = k.agent_err(&["apply", "-f", &file]);
    assert!(
        err.contains("creating patch with:\noriginal:\n[REDACTED]\n"),
        "{err}"
    );
    // Unforced, or as a dry run, its answer would tell a guessed value from another: refused.
    for args in [
        &["apply", "--server-side", "-f", &file][..],
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--dry-run=server",
            "-f",
            &file,
        ][..],
    ] {
        let err = k.agent_err(args);
        assert!(err.contains("of a Secret"), "{args:?}: {err}");
    }
    let out = k.agent_ok(&["apply", "--server-side", "--force-conflicts", "-f", &file]);
    assert_eq!(out.trim(), "secret/applied-secret serverside-applied");
    let stored = json_of(
        &k.env
            .kubectl_ok("admin", &["get", "secret", "applied-secret", "-o", "json"]),
    );
    assert_eq!(stored["data"]["token"], encoded_2.as_str());

    // Watch: the first object comes from the list, the next from the watch stream; both masked.
    let watch = Streaming::spawn(k.agent_command(&["get", "secrets", "-w", "-o", "json"]));
    watch.wait_for("the listed Secret", |out| out.contains("\"name\": \"db\""));
    let patch = json!({"stringData": {"password": SECRET_VALUE_2}}).to_string();
    k.env.kubectl_ok(
        "admin",
        &["patch", "secret", "db", "--type", "merge", "-p", &patch],
    );
    let out = watch.wait_for("the modified Secret", |out| {
        out.matches("\"name\": \"db\"").count() >= 2
    });
    drop(watch);
    assert_eq!(leaks(&out), None, "{out}");
    assert!(out.contains("\"password\": \"REDACTED\""), "{out}");

    let rec = k.stop_and_read_recordings();
    assert_eq!(leaks(&rec), None, "a Secret value in a recording");
    assert_eq!(leaks(&k.gw.output()), None, "a Secret value in the gateway's log");
    assert!(
        rec.contains("\"masked\":\"per event\""),
        "the watch was not recorded as masked"
    );
}

#[test]
fn impersonation_headers_never_reach_the_api_server() {
    // RBAC on: the gateway user may read its namespace and may impersonate anyone, so only the
    // gateway's stripping of Impersonate-* stands between the agent and system:masters.
    let env = TestEnv::start_configured(true, |c: &mut Config| c.authorization = true);
    let k = Kube::with(env);
    let ns = k.ns().to_string();
    let other = format!("{ns}-other");
    if k.env.is_emulated() {
        let rbac = format!(
            r#"apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: gateway, namespace: {ns}}}
rules:
  - apiGroups: [""]
    resources: [pods, configmaps, secrets]
    verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: gateway, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: gateway}}
subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: gateway}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: impersonator}}
rules:
  - apiGroups: [""]
    resources: [users, groups]
    verbs: [impersonate]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: gateway-impersonates}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: impersonator}}
subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: gateway}}]
"#
        );
        k.env
            .kubectl_ok("admin", &["apply", "-f", &k.env.file("rbac.yaml", &rbac)]);
        k.env.kubectl_ok("admin", &["create", "namespace", &other]);
        k.env.kubectl_ok(
            "admin",
            &["create", "secret", "generic", "elsewhere", "-n", &other],
        );
        // The control: straight to the API server, impersonation would widen the gateway user's
        // access to the other namespace.
        let denied = k.env.kubectl_err("gateway", &["get", "secrets", "-n", &other]);
        assert!(denied.contains("User \"gateway\" cannot list"), "{denied}");
        let widened = k.env.kubectl_ok(
            "gateway",
            &[
                "get",
                "secrets",
                "-n",
                &other,
                "--as=admin",
                "--as-group=system:masters",
                "-o",
                "name",
            ],
        );
        assert_eq!(widened.trim(), "secret/elsewhere");

        // Through the gateway (whose policy allows listing there) the API server sees the gateway
        // user alone, and refuses.
        k.agent_ok(&["get", "secrets"]);
        let err = k.agent_err(&[
            "get",
            "secrets",
            "-n",
            &other,
            "--as=admin",
            "--as-group=system:masters",
        ]);
        assert_eq!(
            err.trim(),
            format!(
                "Error from server (Forbidden): secrets is forbidden: User \"gateway\" cannot list resource \"secrets\" in API group \"\" in the namespace \"{other}\""
            )
        );
    }

    // The API server's audit event takes the gateway's request ID, not one the agent names.
    let r = k.curl(
        &format!("/api/v1/namespaces/{ns}/pods"),
        &["Audit-ID: 3f1e0c4a-another-request"],
    );
    assert_eq!(r.status, 200, "{r:?}");
    let audit_id = r.header("audit-id");
    assert!(
        audit_id.is_some() && audit_id == r.header("x-request-id"),
        "{r:?}"
    );

    // Who the API server thinks the agent is: the gateway's user, whatever the agent asks for.
    let direct = json_of(&k.env.kubectl_ok("gateway", &["auth", "whoami", "-o", "json"]));
    let through = json_of(&k.agent_ok(&[
        "auth",
        "whoami",
        "--as=admin",
        "--as-group=system:masters",
        "-o",
        "json",
    ]));
    assert_eq!(through["status"]["userInfo"], direct["status"]["userInfo"]);
    let groups = through["status"]["userInfo"]["groups"].to_string();
    assert!(!groups.contains("system:masters"), "{through}");
    if k.env.is_emulated() {
        assert_eq!(through["status"]["userInfo"]["username"], "gateway");
    }
}

/// A TokenReview sends a live token in its spec, and the API server answers with it echoed: the
/// agent gets its answer whole, the recording neither the token sent nor the one echoed.
#[test]
fn a_token_review_is_recorded_without_its_token() {
    let mut k = Kube::start();
    let token = format!("canary-review-{}", std::process::id());
    let file = k.dir.path().join("review.json");
    let review = json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": token},
    });
    std::fs::write(&file, review.to_string()).expect("write the review");
    let answer = json_of(&k.agent_ok(&["create", "-f", &file.display().to_string(), "-o", "json"]));
    assert_eq!(answer["spec"]["token"], token.as_str(), "{answer}");
    assert_eq!(answer["status"]["authenticated"], false, "{answer}");
    let rec = k.stop_and_read_recordings();
    assert!(rec.contains("tokenreviews"), "the review is on record");
    assert!(!rec.contains(&token), "a reviewed token is on record");
}

#[test]
fn protobuf_never_reaches_the_agent_and_ambiguous_requests_are_refused() {
    let k = Kube::start();
    let ns = k.ns().to_string();
    create_pods(&k);
    let pods_path = format!("/api/v1/namespaces/{ns}/pods");

    // A name is decided as the API server reads it, decoded: `system%3Aedit` is `system:edit`.
    for name in ["system:edit", "system%3Aedit", "system%3aedit"] {
        let r = k.curl(
            &format!("/apis/rbac.authorization.k8s.io/v1/clusterroles/{name}"),
            &[],
        );
        assert!(
            r.status == 403 && r.body.contains("no-system-roles"),
            "{name}: {r:?}"
        );
    }
    let r = k.curl("/apis/rbac.authorization.k8s.io/v1/clusterroles/agent-role", &[]);
    assert_ne!(r.status, 403, "{r:?}");

    // kubectl asks for protobuf first for built-in kinds; the gateway rewrites Accept to JSON.
    let list = json_of(&k.agent_ok(&["get", "pods", "-o", "json"]));
    assert_eq!(list["items"].as_array().map(Vec::len), Some(2), "{list}");
    let protobuf = "Accept: application/vnd.kubernetes.protobuf";
    let direct = k.curl_direct(&pods_path, &[protobuf]);
    // The control: asked directly, the API server answers in protobuf (the emulator, which
    // writes only JSON, refuses with 406).
    assert!(
        direct.content_type.contains("protobuf") || direct.status == 406,
        "{direct:?}"
    );
    let r = k.curl(&pods_path, &[protobuf]);
    assert_eq!(
        (r.status, r.content_type.as_str()),
        (200, "application/json"),
        "{r:?}"
    );
    assert_eq!(r.json()["kind"], "PodList");
    let r = k.curl(
        &format!("{pods_path}/app-1"),
        &["Accept: application/vnd.kubernetes.protobuf, */*"],
    );
    assert_eq!(
        (r.status, r.json()["metadata"]["name"].as_str()),
        (200, Some("app-1"))
    );

    // Duplicate query parameters: the gateway cannot tell which one the API server reads.
    let watch = format!("{pods_path}?watch=true&watch=false");
    let r = k.curl(&watch, &["Accept: application/problem+json"]);
    assert_eq!(
        (r.status, r.content_type.as_str()),
        (400, "application/problem+json")
    );
    let p = r.json();
    assert_eq!(p["type"], "https://agentgate.dev/problems/bad-request");
    assert_eq!(p["detail"], "query parameter \"watch\" is given more than once");
    // Kubernetes clients get the same refusal as a Status.
    let r = k.curl(&watch, &["Accept: application/json"]);
    assert_eq!((r.status, r.content_type.as_str()), (400, "application/json"));
    let status = r.json();
    assert_eq!(
        (
            status["kind"].as_str(),
            status["reason"].as_str(),
            status["code"].as_u64()
        ),
        (Some("Status"), Some("BadRequest"), Some(400))
    );
    assert_eq!(status["message"], p["detail"]);
    assert_eq!(
        status["details"]["causes"][0],
        json!({"reason": "type", "message": "https://agentgate.dev/problems/bad-request"})
    );

    // The deprecated proxy path verb is a resource request no rule can allow, not discovery.
    let r = k.curl(&format!("/api/v1/proxy/namespaces/{ns}/pods/app-1"), &[]);
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(
        r.json()["details"]["causes"][0]["message"],
        "https://agentgate.dev/problems/denied-by-policy"
    );
}
