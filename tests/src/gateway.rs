//! The gateway as a real process on a directory of manifests, and the real upstreams the
//! end-to-end tests put behind it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::{Process, binary, curl_get, free_port, wait_for, workspace_root};

/// The echo upstream (`tests/upstream/echo.py`): answers every request with a JSON description
/// of what it received.
#[derive(Debug)]
pub struct EchoUpstream {
    pub port: u16,
    process: Process,
}

impl EchoUpstream {
    pub fn start() -> Self {
        let port = free_port();
        let mut cmd = Command::new("python3");
        cmd.arg(workspace_root().join("tests/upstream/echo.py"))
            .env("PORT", port.to_string());
        let process = Process::start("echo-upstream", cmd);
        let url = format!("http://127.0.0.1:{port}/ready");
        let up = wait_for(Duration::from_secs(20), || {
            (curl_get(&url).0 == 200).then_some(())
        });
        assert!(up.is_some(), "echo upstream did not start:\n{}", process.output());
        Self { port, process }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// What the upstream logged so far: one `METHOD path` line per request it answered, so a
    /// test can tell whether a request reached it at all.
    pub fn requests(&self) -> String {
        self.process.output()
    }

    /// Stops it (SIGTERM), so its port refuses connections.
    pub fn stop(&mut self) {
        self.process.terminate(Duration::from_secs(5));
    }
}

/// `agentgate run` on a temporary directory of manifests.
#[derive(Debug)]
pub struct Gateway {
    /// The HTTP listener's port.
    pub port: u16,
    pub admin: u16,
    pub sessions: PathBuf,
    dir: tempfile::TempDir,
    process: Process,
}

impl Gateway {
    /// Writes `yaml` (where `${LISTEN_PORT}` and `${SESSIONS}` are replaced) and starts the
    /// gateway on it, waiting until the listener accepts connections and it reports ready.
    pub fn start(yaml: &str) -> Self {
        Self::launch(yaml, true)
    }

    /// Like [`Gateway::start`], for a gateway that is expected to serve but not to report ready
    /// (it would refuse every operation): waits for the listener and any readiness answer.
    pub fn start_unready(yaml: &str) -> Self {
        Self::launch(yaml, false)
    }

    fn launch(yaml: &str, until_ready: bool) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let admin = free_port();
        let sessions = dir.path().join("sessions");
        let manifests = dir.path().join("manifests");
        std::fs::create_dir_all(&manifests).expect("manifests dir");
        let text = yaml
            .replace("${LISTEN_PORT}", &port.to_string())
            .replace("${SESSIONS}", &sessions.display().to_string());
        std::fs::write(manifests.join("all.yaml"), text).expect("write manifests");
        let process = Self::run(&manifests, port, admin, until_ready);
        Self {
            port,
            admin,
            sessions,
            dir,
            process,
        }
    }

    /// Kills the process (SIGKILL: nothing is closed or flushed) and starts another on the same
    /// manifests, ports and sessions directory, as a crashed pod's restart does.
    pub fn crash_and_restart(&mut self) {
        self.process.signal("KILL", Duration::from_secs(10));
        self.process = Self::run(&self.manifests(), self.port, self.admin, true);
    }

    fn run(manifests: &Path, port: u16, admin: u16, until_ready: bool) -> Process {
        let mut cmd = Command::new(binary("agentgate"));
        cmd.args(["run", "--manifests"])
            .arg(manifests)
            .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
            .env("AGENTGATE_LOG", "info,agentgate=debug");
        let process = Process::start("agentgate", cmd);
        let ready = wait_for(Duration::from_secs(30), || {
            let status = curl_get(&format!("http://127.0.0.1:{admin}/readyz")).0;
            let ok = (status == 200 || (!until_ready && status == 503))
                && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
            ok.then_some(())
        });
        assert!(
            ready.is_some(),
            "gateway did not become ready:\n{}",
            process.output()
        );
        process
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The gateway process's id (for RSS measurements).
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Everything the gateway logged so far.
    pub fn output(&self) -> String {
        self.process.output()
    }

    /// The manifests directory (to edit for reload tests).
    pub fn manifests(&self) -> PathBuf {
        self.dir.path().join("manifests")
    }

    /// The Prometheus text of the admin listener.
    pub fn metrics(&self) -> String {
        curl_get(&format!("http://127.0.0.1:{}/metrics", self.admin)).1
    }

    /// Every session file's content, concatenated.
    pub fn recordings(&self) -> String {
        read_all(&self.sessions)
    }

    /// Stops the process (SIGTERM), so sessions are closed and signed.
    /// SIGTERM, and SIGKILL if the gateway has not exited after its connection drain (10 s) and
    /// spool drain (15 s).
    pub fn stop(&mut self) {
        self.process.terminate(Duration::from_secs(30));
    }
}

fn read_all(dir: &Path) -> String {
    let mut out = String::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for p in paths {
            out.push_str(&std::fs::read_to_string(&p).unwrap_or_default());
        }
    }
    out
}

/// Options of [`okta_manifests`].
#[derive(Clone, Debug)]
pub struct OktaSetup<'a> {
    pub issuer: &'a str,
    pub upstream: &'a str,
    /// The SSWS token the gateway injects (tests plant a canary here).
    pub upstream_token: &'a str,
    pub require_dpop: bool,
}

/// A gateway with one HTTP Connection `okta` (route prefix `/okta`) to `upstream`, the identity
/// `ci-agent` of `issuer`, and a policy like the examples' Okta policy.
pub fn okta_manifests(o: &OktaSetup<'_>) -> String {
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
    - {{name: http, protocol: HTTP, port: ${{LISTEN_PORT}}, address: 127.0.0.1}}
  recording:
    mode: Required
    storage: {{local: {{path: "${{SESSIONS}}"}}}}
---
apiVersion: agentgate.dev/v1alpha1
kind: AgentIdentity
metadata: {{name: ci-agent, namespace: e2e}}
spec:
  issuer: {issuer}
  audiences: ["api://agentgate"]
  match: {{claims: {{client_id: ci-agent}}}}
  groups: {{static: [ai-agents]}}
  requireDPoP: {dpop}
---
apiVersion: agentgate.dev/v1alpha1
kind: Connection
metadata: {{name: okta, namespace: e2e}}
spec:
  gatewayRef: {{name: gw}}
  type: HTTP
  endpoint: {upstream}
  credentials:
    scheme: SSWS
    secretRef: {{name: okta-token, key: token}}
  route: {{pathPrefix: /okta}}
---
apiVersion: v1
kind: Secret
metadata: {{name: okta-token, namespace: e2e, labels: {{agentgate.dev/credential: "true"}}}}
stringData: {{token: "{token}"}}
---
apiVersion: agentgate.dev/v1alpha1
kind: AccessPolicy
metadata: {{name: ci-agent-okta, namespace: e2e}}
spec:
  subjects: {{identities: [ci-agent]}}
  connections: [okta]
  rules:
    - name: read-directory
      action: Allow
      http:
        methods: [GET, HEAD]
        paths: ["/api/v1/users", "/api/v1/users/**", "/echo/**", "/text", "/export", "/events", "/binary", "/big", "/reflect", "/gzip-reflect", "/te-gzip-reflect", "/lying-length", "/cut-short", "/partial", "/moved"]
    - name: writes-echo
      action: Allow
      http:
        methods: [POST, PUT, PATCH]
        paths: ["/echo/**"]
    - name: okta-user-admin
      action: RequireApproval
      http:
        methods: [POST, PUT, DELETE]
        paths: ["/api/v1/users", "/api/v1/users/**"]
      approval:
        approvers: {{groups: [identity-team]}}
        mode: Defer
    - name: no-api-tokens
      action: Deny
      description: Agents never manage Okta API tokens.
      http:
        paths: ["/api/v1/api-tokens", "/api/v1/api-tokens/**"]
    - name: no-admin-header
      action: Deny
      http:
        headers: {{X-Admin: "*"}}
  masking:
    - jsonFields: ["$..profile.mobilePhone"]
      strategy: Redact
    - detectors: [Email, CreditCard, OktaApiToken, JWT]
      strategy: Redact
"#,
        issuer = o.issuer,
        upstream = o.upstream,
        token = o.upstream_token,
        dpop = o.require_dpop,
    )
}

/// A throwaway CA and a serving certificate for `127.0.0.1` and `localhost` signed by it, for a
/// TLS listener (clients such as kubectl send credentials only over TLS).
#[derive(Clone, Debug)]
pub struct ServingCert {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl ServingCert {
    pub fn generate() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "agentgate-e2e-ca");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let ca_key = KeyPair::generate().expect("CA key");
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca_params, ca_key);
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, "agentgate-e2e");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &issuer).expect("leaf certificate");
        Self {
            ca_pem: ca_cert.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}
