//! The manifests `agentgate dev` runs: templates under `dev/manifests/`, filled in and written to a
//! directory the gateway then loads like any other, so development mode runs the production path.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::DevError;
use crate::config::SecretValue;

/// Namespace of every object.
pub const NAMESPACE: &str = "agentgate-dev";
/// The AgentGateway.
pub const GATEWAY: &str = "dev";
/// The AgentIdentity the printed token belongs to.
pub const IDENTITY: &str = "dev-agent";
/// Audience the identity accepts.
pub const AUDIENCE: &str = "api://agentgate-dev";
/// Claim and value the identity matches on.
pub const CLIENT_ID_CLAIM: (&str, &str) = ("client_id", "dev-agent");
/// The Connection to the demo upstream.
pub const CONNECTION: &str = "demo-okta";
/// Path prefix routing to the connection.
pub const ROUTE_PREFIX: &str = "/okta";
/// The AccessPolicy.
pub const POLICY: &str = "dev-agent-okta";
/// The identity's `maxTokenLifetime`, which bounds the printed token's lifetime.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// (file name, template). Placeholders are `{{NAME}}`.
const TEMPLATES: &[(&str, &str)] = &[
    ("00-namespace.yaml", include_str!("manifests/00-namespace.yaml")),
    ("10-gateway.yaml", include_str!("manifests/10-gateway.yaml")),
    ("20-identity.yaml", include_str!("manifests/20-identity.yaml")),
    ("30-connection.yaml", include_str!("manifests/30-connection.yaml")),
    ("40-policy.yaml", include_str!("manifests/40-policy.yaml")),
    ("50-secret.yaml", include_str!("manifests/50-secret.yaml")),
];

/// The file holding the Secret, written readable by the owner only.
const SECRET_FILE: &str = "50-secret.yaml";

/// What varies between runs.
#[derive(Debug)]
pub struct DevManifests {
    /// Port of the gateway's HTTP listener (on 127.0.0.1).
    pub listen_port: u16,
    /// URL of the development issuer.
    pub issuer: String,
    /// URL of the demo upstream.
    pub upstream: String,
    /// The demo upstream's API token.
    pub upstream_token: SecretValue,
    /// Where sessions are recorded (absolute, so the files do not depend on the working directory).
    pub sessions_dir: PathBuf,
}

impl DevManifests {
    /// The manifests as (file name, contents).
    pub fn render(&self) -> Result<Vec<(&'static str, String)>, DevError> {
        let token = std::str::from_utf8(self.upstream_token.expose())
            .map_err(|_| DevError::Render("the upstream token is not UTF-8".into()))?;
        let sessions = self
            .sessions_dir
            .to_str()
            .ok_or_else(|| DevError::Render("the sessions directory is not valid UTF-8".into()))?;
        let lifetime = format!("{}s", MAX_TOKEN_LIFETIME.as_secs());
        // Strings go in as JSON strings, which YAML reads as double-quoted scalars: no value can
        // break out of its field whatever characters a path holds.
        let values: [(&str, String); 6] = [
            ("LISTEN_PORT", self.listen_port.to_string()),
            ("SESSIONS_DIR", quote(sessions)),
            ("ISSUER", quote(&self.issuer)),
            ("UPSTREAM", quote(&self.upstream)),
            ("UPSTREAM_TOKEN", quote(token)),
            ("MAX_TOKEN_LIFETIME", quote(&lifetime)),
        ];
        TEMPLATES
            .iter()
            .map(|(name, template)| {
                let mut text = (*template).to_string();
                for (key, value) in &values {
                    text = text.replace(&format!("{{{{{key}}}}}"), value);
                }
                if text.contains("{{") {
                    return Err(DevError::Render(format!(
                        "{name}: a placeholder is left unfilled"
                    )));
                }
                Ok((*name, text))
            })
            .collect()
    }

    /// Writes the manifests into `dir` (created 0700 if missing), replacing files of the same names
    /// and leaving any others. Returns the paths written.
    pub fn write(&self, dir: &Path) -> Result<Vec<PathBuf>, DevError> {
        let files = self.render()?;
        create_private_dir(dir)?;
        let mut written = Vec::new();
        for (name, text) in files {
            let path = dir.join(name);
            write_file(&path, text.as_bytes(), name == SECRET_FILE)?;
            written.push(path);
        }
        Ok(written)
    }
}

fn quote(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// Creates `dir` and its parents; `dir` itself is made 0700 on Unix (it holds a Secret).
pub fn create_private_dir(dir: &Path) -> Result<(), DevError> {
    let io = |source| DevError::Io {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
    }
    Ok(())
}

/// Replaces `path`: removed first, so a private file never inherits an older file's mode.
fn write_file(path: &Path, bytes: &[u8], private: bool) -> Result<(), DevError> {
    use std::io::Write;
    let io = |source| DevError::Io {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(path).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{LoadOptions, load};
    use crate::masking::{HashKey, MaskingPlan};
    use agentgate_crds::policy::Action;

    pub(crate) fn sample(sessions: &Path) -> DevManifests {
        DevManifests {
            listen_port: 18080,
            issuer: "http://127.0.0.1:18081".into(),
            upstream: "http://127.0.0.1:18082".into(),
            upstream_token: SecretValue::new(b"00abcdefghijklmnopqrstuvwxyz0123456789ABCD".to_vec()),
            sessions_dir: sessions.to_path_buf(),
        }
    }

    fn load_dir(dir: &Path) -> crate::config::GatewayConfig {
        load(&LoadOptions {
            manifests: dir.to_path_buf(),
            secrets_dir: None,
            gateway: Some(GATEWAY.into()),
            reserved_ports: vec![9464],
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn rendered_manifests_load_and_say_what_the_dev_command_relies_on() {
        let tmp = tempfile::tempdir().unwrap();
        let sessions = tmp.path().join("state dir \"quoted\"").join("sessions");
        let dir = tmp.path().join("manifests");
        let written = sample(&sessions).write(&dir).unwrap();
        assert_eq!(written.len(), TEMPLATES.len());
        let cfg = load_dir(&dir);

        assert_eq!(cfg.gateway.name, GATEWAY);
        assert_eq!(cfg.gateway.namespace, NAMESPACE);
        assert_eq!(cfg.gateway.listeners.len(), 1);
        assert_eq!(cfg.gateway.listeners[0].port, 18080);
        assert_eq!(cfg.gateway.listeners[0].address.as_deref(), Some("127.0.0.1"));
        let storage = cfg.gateway.recording.storage.as_ref().unwrap();
        assert_eq!(storage.local.as_ref().unwrap().path, sessions.to_str().unwrap());
        assert_eq!(
            cfg.gateway.recording.mode,
            agentgate_crds::gateway::RecordingMode::Required
        );

        let identity = &cfg.identities[IDENTITY];
        assert_eq!(identity.spec.issuer, "http://127.0.0.1:18081");
        assert_eq!(identity.spec.audiences, [AUDIENCE]);
        assert!(!identity.spec.require_dpop);
        assert_eq!(identity.max_token_lifetime, Some(MAX_TOKEN_LIFETIME));
        let claims = identity.spec.r#match.claims.as_ref().unwrap();
        assert_eq!(
            claims.get(CLIENT_ID_CLAIM.0).map(String::as_str),
            Some(CLIENT_ID_CLAIM.1)
        );

        let conn = &cfg.connections[CONNECTION];
        assert_eq!(conn.route_path_prefix.as_deref(), Some(ROUTE_PREFIX));
        assert_eq!(
            (conn.endpoint.host.as_str(), conn.endpoint.port),
            ("127.0.0.1", 18082)
        );
        let cred = conn.credential.as_ref().unwrap();
        assert_eq!(cred.scheme, agentgate_crds::connection::CredentialScheme::Ssws);
        assert_eq!(
            cred.secret.as_ref().unwrap().expose(),
            b"00abcdefghijklmnopqrstuvwxyz0123456789ABCD"
        );

        assert_eq!(cfg.policies.len(), 1);
        assert_eq!(cfg.policies[0].name, POLICY);
    }

    /// Which rule decides each demo request, by the real decision engine: this pins the policy
    /// the banner describes.
    #[test]
    fn the_policy_sorts_the_demo_requests_as_the_banner_says() {
        use crate::policy::{BodyParams, BodyView, HttpOperation, Operation, Subject};
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("m");
        sample(&tmp.path().join("s")).write(&dir).unwrap();
        let cfg = load_dir(&dir);
        let headers = hyper::HeaderMap::new();
        let groups = vec!["ai-agents".to_string()];
        let who = Subject {
            identity: IDENTITY,
            groups: &groups,
        };
        let decide = |method: &str, path: &str| -> (Option<String>, Action) {
            let op = Operation::Http(HttpOperation {
                method,
                path,
                query: &[],
                headers: &headers,
                body: BodyView::NotRead,
                params: BodyParams::None,
            });
            let d = cfg.policy_index.decide(&cfg.policies, CONNECTION, who, &op, 0);
            (
                d.rule_ref()
                    .map(|r| r.rsplit('/').next().unwrap_or_default().to_string()),
                d.action,
            )
        };
        let rule = |r: &str| Some(r.to_string());
        assert_eq!(
            decide("GET", "/api/v1/users"),
            (rule("read-directory"), Action::Allow)
        );
        assert_eq!(
            decide("GET", "/api/v1/users/00udevalice000000001"),
            (rule("read-directory"), Action::Allow)
        );
        assert_eq!(
            decide("POST", "/api/v1/users"),
            (rule("okta-user-admin"), Action::RequireApproval)
        );
        assert_eq!(
            decide("DELETE", "/api/v1/users/x"),
            (rule("okta-user-admin"), Action::RequireApproval)
        );
        assert_eq!(
            decide("GET", "/api/v1/api-tokens"),
            (rule("no-api-tokens"), Action::Deny)
        );
        assert_eq!(
            decide("DELETE", "/api/v1/api-tokens/00T1"),
            (rule("no-api-tokens"), Action::Deny)
        );
        assert_eq!(decide("GET", "/api/v1/apps"), (None, Action::Deny));
    }

    /// The policy's masking, applied to what the demo upstream serves, leaves no email, phone or
    /// card number: the allow request of the banner shows masking at work.
    #[tokio::test]
    async fn the_policy_masks_everything_sensitive_the_demo_serves() {
        use http_body_util::BodyExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("m");
        sample(&tmp.path().join("s")).write(&dir).unwrap();
        let cfg = load_dir(&dir);
        let rules: Vec<_> = cfg.policies[0].spec.masking.iter().collect();
        let plan = MaskingPlan::compile(&rules, HashKey::random()).unwrap();

        let token = SecretValue::new(b"00abcdefghijklmnopqrstuvwxyz0123456789ABCD".to_vec());
        let state = super::super::demo_upstream::DemoState::new(token);
        let req = hyper::Request::builder()
            .uri("/api/v1/users")
            .header("authorization", "SSWS 00abcdefghijklmnopqrstuvwxyz0123456789ABCD")
            .body(hyper::body::Bytes::new())
            .unwrap();
        let body = state.handle(&req).into_body().collect().await.unwrap().to_bytes();
        let mut out = Vec::new();
        let report = plan.mask_json(&body, &mut out).unwrap();
        assert!(!report.is_empty());
        let text = String::from_utf8(out).unwrap();
        for leaked in ["@example", "4111", "+1 415", "+44 20"] {
            assert!(!text.contains(leaked), "{leaked} in {text}");
        }
        let users: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(users[0]["profile"]["firstName"], "Alice", "the rest is untouched");
        assert_eq!(users[0]["profile"]["email"], crate::masking::REDACTED);
    }

    #[test]
    fn values_cannot_break_out_of_their_fields() {
        let tmp = tempfile::tempdir().unwrap();
        let sessions = tmp.path().join("s\nkind: Secret\n");
        let mut m = sample(&sessions);
        m.issuer = "http://127.0.0.1:1\"\nrequireDPoP: true".into();
        let files = m.render().unwrap();
        let parsed = |name: &str| -> serde_json::Value {
            let text = &files.iter().find(|(n, _)| *n == name).unwrap().1;
            serde_saphyr::from_str(text).unwrap()
        };
        let gateway = parsed("10-gateway.yaml");
        assert_eq!(gateway["kind"], "AgentGateway");
        assert_eq!(
            gateway["spec"]["recording"]["storage"]["local"]["path"],
            sessions.to_str().unwrap()
        );
        let identity = parsed("20-identity.yaml");
        assert_eq!(identity["spec"]["issuer"], m.issuer.as_str());
        assert_eq!(identity["spec"]["requireDPoP"], false);
        // And the loader refuses the odd issuer by its schema rather than reinterpreting it.
        let dir = tmp.path().join("m");
        m.write(&dir).unwrap();
        let errors = load(&LoadOptions {
            manifests: dir,
            ..LoadOptions::default()
        })
        .unwrap_err();
        assert!(errors.to_string().contains("spec.issuer"), "{errors}");
    }

    #[cfg(unix)]
    #[test]
    fn the_secret_is_private_and_rewrites_replace_files() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("m");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(SECRET_FILE), "old").unwrap();
        std::fs::set_permissions(dir.join(SECRET_FILE), std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(dir.join("90-mine.yaml"), "# kept\n").unwrap();
        sample(&tmp.path().join("s")).write(&dir).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.join(SECRET_FILE)), 0o600);
        assert_eq!(mode(&dir), 0o700);
        assert!(
            std::fs::read_to_string(dir.join(SECRET_FILE))
                .unwrap()
                .contains("00abcdefghij")
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("90-mine.yaml")).unwrap(),
            "# kept\n"
        );
    }

    /// Config errors name their file and never a secret: mutants of each manifest either load
    /// or are refused with errors that all point into the manifests directory, and none of them
    /// quotes the upstream token (even when the edit lands in the Secret). Nothing panics.
    #[test]
    fn hostile_edits_of_the_manifests_are_located_and_never_echo_the_secret() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("manifests");
        let manifests = sample(&tmp.path().join("sessions"));
        let token = String::from_utf8(manifests.upstream_token.expose().to_vec()).unwrap();
        manifests.write(&dir).unwrap();
        let options = LoadOptions {
            manifests: dir.clone(),
            secrets_dir: None,
            gateway: Some(GATEWAY.into()),
            reserved_ports: vec![9464],
            ..Default::default()
        };
        let (mut loaded, mut refused) = (0, 0);
        for (name, _) in TEMPLATES {
            let path = dir.join(name);
            let original = std::fs::read(&path).unwrap();
            crate::mutate::each_mutant(&[&original], 25, |bytes| {
                std::fs::write(&path, bytes).unwrap();
                match load(&options) {
                    Ok(_) => loaded += 1,
                    Err(errors) => {
                        refused += 1;
                        assert!(!errors.0.is_empty());
                        for e in &errors.0 {
                            assert!(e.file.starts_with(&dir), "{e}");
                            assert!(!e.to_string().contains(&token), "{e}");
                        }
                    }
                }
            });
            std::fs::write(&path, &original).unwrap();
        }
        assert!(loaded > 0 && refused > 0, "{loaded} loaded, {refused} refused");
    }
}
