//! `agentgate validate`: the examples stay valid, and every class of bad manifest gets one clear
//! error line naming file, line, object and field, with exit code 1 and no panic.

use std::path::{Path, PathBuf};
use std::process::Command;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples")
}

/// A copy of the examples with `edit` applied, validated. Returns (exit code, stdout, stderr, dir).
fn validate_edited(edit: impl FnOnce(&Path)) -> (i32, String, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(examples()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    edit(dir.path());
    let out = Command::new(env!("CARGO_BIN_EXE_agentgate"))
        .args(["validate", "--manifests"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "{stderr}");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        stderr,
        dir,
    )
}

fn replace(dir: &Path, file: &str, from: &str, to: &str) {
    let path = dir.join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{from:?} not in {file}");
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
}

/// Asserts exactly one error line, containing every fragment.
fn assert_one_error(code: i32, stderr: &str, fragments: &[&str]) {
    assert_eq!(code, 1, "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "expected one error line:\n{stderr}");
    for f in fragments {
        assert!(errors[0].contains(f), "{f:?} missing from: {}", errors[0]);
    }
}

#[test]
fn the_examples_are_valid() {
    let out = Command::new(env!("CARGO_BIN_EXE_agentgate"))
        .args(["validate", "--manifests"])
        .arg(examples())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("valid (2 AccessPolicy, 1 AgentGateway, 1 AgentIdentity, 2 Connection"),
        "{stdout}"
    );
    assert!(
        stdout.contains("2 connection(s), 1 identity(ies), 2 policy(ies) with 7 rule(s)"),
        "{stdout}"
    );
}

#[test]
fn yaml_syntax_error() {
    let (code, _, err, _d) =
        validate_edited(|d| std::fs::write(d.join("99-bad.yaml"), "apiVersion: v1\nkind: [oops\n").unwrap());
    assert_one_error(code, &err, &["99-bad.yaml:2:", "YAML syntax error"]);
}

#[test]
fn unknown_kind() {
    let (code, _, err, _d) = validate_edited(|d| {
        std::fs::write(
            d.join("99-bad.yaml"),
            "apiVersion: agentgate.dev/v1alpha1\nkind: Gizmo\nmetadata: {name: g}\n",
        )
        .unwrap()
    });
    assert_one_error(
        code,
        &err,
        &[
            "99-bad.yaml:2:",
            "Gizmo default/g",
            "kind: Unsupported value: \"Gizmo\"",
        ],
    );
}

#[test]
fn unknown_api_version() {
    let (code, _, err, _d) = validate_edited(|d| {
        replace(
            d,
            "30-connections.yaml",
            "agentgate.dev/v1alpha1",
            "agentgate.dev/v1beta1",
        )
    });
    assert_one_error(
        code,
        &err,
        &[
            "30-connections.yaml:2:",
            "Connection agentgate/okta-admin",
            "apiVersion: Unsupported value",
        ],
    );
}

#[test]
fn unknown_field() {
    let (code, _, err, _d) = validate_edited(|d| {
        replace(
            d,
            "40-policies.yaml",
            "minApprovals: 1",
            "minApprovals: 1\n        colour: red",
        )
    });
    assert_one_error(
        code,
        &err,
        &[
            "40-policies.yaml:31:",
            "AccessPolicy agentgate/ci-agent-db",
            "spec.rules[2].approval.colour: unknown field",
        ],
    );
}

#[test]
fn wrong_type() {
    let (code, _, err, _d) =
        validate_edited(|d| replace(d, "10-gateway.yaml", "port: 8443", "port: \"8443\""));
    assert_one_error(
        code,
        &err,
        &[
            "10-gateway.yaml:16:",
            "AgentGateway agentgate/main",
            "spec.listeners[0].port",
            "must be of type integer",
        ],
    );
}

#[test]
fn object_storage_needs_credentials_and_a_secure_endpoint() {
    let s3 = |spec: &'static str| {
        validate_edited(move |d| {
            replace(
                d,
                "10-gateway.yaml",
                "      local:\n        path: .agentgate/sessions",
                spec,
            )
        })
    };
    let (code, _, err, _d) = s3("      s3: {bucket: agentgate-sessions, region: eu-west-1}");
    assert_one_error(
        code,
        &err,
        &[
            "10-gateway.yaml",
            "spec.recording.storage.s3.credentialsSecretRef",
            "Required value",
        ],
    );
    let (code, _, err, _d) = s3(
        "      s3: {bucket: agentgate-sessions, endpoint: \"http://s3.example.com\", credentialsSecretRef: {name: okta-admin-token, key: token}}",
    );
    assert!(
        err.contains("spec.recording.storage.s3.endpoint")
            && err.contains("must be https (http only to a loopback address)"),
        "{code:?}: {err}"
    );
    // A local directory (or, in a cluster, a volume) may be the spool of s3; not both.
    let (code, _, err, _d) = s3(
        "      local: {path: .agentgate/spool}\n      s3: {bucket: agentgate-sessions, credentialsSecretRef: {name: no-such-secret, key: accessKeyId}}",
    );
    assert_one_error(code, &err, &["Secret agentgate/no-such-secret not found"]);
    let (code, _, err, _d) = s3("      local: {path: .agentgate/spool}\n      volume: {claimName: sessions}");
    assert_one_error(
        code,
        &err,
        &["spec.recording.storage", "not local and volume together"],
    );
    let (code, _, err, _d) = s3(
        "      s3: {bucket: agentgate-sessions, credentialsSecretRef: {name: no-such-secret, key: accessKeyId}}",
    );
    assert_one_error(
        code,
        &err,
        &[
            "spec.recording.storage.s3.credentialsSecretRef",
            "Secret agentgate/no-such-secret not found",
        ],
    );
}

#[test]
fn injected_credentials_travel_over_tls_or_loopback_only() {
    // Unbound from its origin (the example binds it to https://example.okta.com), so that the
    // plaintext check speaks alone.
    let endpoint = |to: &'static str| {
        validate_edited(move |d| {
            replace(
                d,
                "50-secrets.yaml",
                "  annotations: {agentgate.dev/credential-endpoints: \"https://example.okta.com\"}\n",
                "",
            );
            replace(d, "30-connections.yaml", "endpoint: https://example.okta.com", to)
        })
    };
    let (code, _, err, _d) = endpoint("endpoint: http://example.okta.com");
    assert_one_error(
        code,
        &err,
        &[
            "30-connections.yaml",
            "Connection agentgate/okta-admin",
            "spec.endpoint",
            "the credential would be sent in plaintext",
        ],
    );
    let (code, _, err, _d) = endpoint("endpoint: http://127.0.0.1:8080");
    assert_eq!(code, 0, "loopback is not a network: {err}");
    let (code, _, err, _d) =
        endpoint("endpoint: http://127.0.0.1:8080\n  tls: {serverName: okta.example.com}");
    assert_one_error(code, &err, &["okta-admin", "spec.tls", "http:// endpoint"]);
}

#[test]
fn key_sets_are_fetched_over_https_or_loopback_only() {
    let (code, _, err, _d) = validate_edited(|d| {
        replace(
            d,
            "20-identities.yaml",
            "  issuer: https://example.okta.com/oauth2/default\n",
            "  issuer: https://example.okta.com/oauth2/default\n  keys: {jwksUri: http://example.okta.com/keys}\n",
        )
    });
    assert_one_error(
        code,
        &err,
        &["20-identities.yaml", "spec.keys.jwksUri", "should match"],
    );
}

#[test]
fn enum_violation() {
    let (code, _, err, _d) =
        validate_edited(|d| replace(d, "40-policies.yaml", "action: Deny", "action: Maybe"));
    assert_one_error(
        code,
        &err,
        &[
            "40-policies.yaml:14:",
            "spec.rules[0].action: Unsupported value: \"Maybe\"",
            "\"Allow\", \"RequireApproval\", \"Deny\"",
        ],
    );
}

#[test]
fn pattern_violation() {
    let (code, _, err, _d) =
        validate_edited(|d| replace(d, "10-gateway.yaml", "maxGrant: 8h", "maxGrant: 8 hours"));
    assert_one_error(
        code,
        &err,
        &[
            "10-gateway.yaml:32:",
            "spec.approvals.maxGrant: Invalid value: \"8 hours\"",
            "should match",
        ],
    );
}

#[test]
fn bound_violation() {
    let (code, _, err, _d) =
        validate_edited(|d| replace(d, "40-policies.yaml", "minApprovals: 1", "minApprovals: 9"));
    assert_one_error(
        code,
        &err,
        &[
            "40-policies.yaml:30:",
            "spec.rules[2].approval.minApprovals: Invalid value: 9",
            "less than or equal to 5",
        ],
    );
}

#[test]
fn cel_rule_violation() {
    let (code, _, err, _d) = validate_edited(|d| {
        replace(
            d,
            "40-policies.yaml",
            "grant: {type: Window, duration: 30m}",
            "grant: {type: Window}",
        )
    });
    assert_one_error(
        code,
        &err,
        &[
            "40-policies.yaml:",
            "AccessPolicy agentgate/ci-agent-okta",
            "spec.rules[1].approval.grant",
            "a Window grant needs a duration",
        ],
    );
}

/// A client certificate to PostgreSQL names the role it logs in as: without one the gateway
/// would ask for `postgres`, the superuser.
#[test]
fn a_postgres_client_certificate_names_its_role() {
    let (code, _, err, _d) = validate_edited(|d| {
        replace(
            d,
            "30-connections.yaml",
            "scheme: PostgresPassword\n    username: agent_rw\n    secretRef: {name: orders-db-credentials, key: password}",
            "scheme: ClientCertificate\n    certificateSecretRef: {name: orders-db-credentials}",
        )
    });
    assert_one_error(
        code,
        &err,
        &[
            "30-connections.yaml:",
            "Connection agentgate/orders-db",
            "spec.credentials.username",
            "names the role it logs in as",
        ],
    );
}

/// A Postgres Connection without credentials would log in under a default role: refused.
#[test]
fn a_postgres_connection_names_its_credentials() {
    let (code, _, err, _d) = validate_edited(|d| {
        replace(
            d,
            "30-connections.yaml",
            "  credentials:\n    scheme: PostgresPassword\n    username: agent_rw\n    secretRef: {name: orders-db-credentials, key: password}\n",
            "",
        )
    });
    assert_one_error(
        code,
        &err,
        &[
            "Connection agentgate/orders-db",
            "spec.credentials",
            "Postgres connections take credentials",
        ],
    );
}

#[test]
fn require_approval_needs_an_approval_block() {
    let (code, _, err, _d) = validate_edited(|d| {
        replace(
            d,
            "40-policies.yaml",
            "      approval:\n        approvers: {groups: [dba]}\n        minApprovals: 1\n        mode: Hold\n        grant: {type: Once}\n        timeout: 10m\n",
            "",
        )
    });
    assert_one_error(
        code,
        &err,
        &[
            "spec.rules[2].approval",
            "a RequireApproval rule needs an approval block",
        ],
    );
}

#[test]
fn dangling_reference() {
    let (code, _, err, _d) = validate_edited(|d| {
        replace(
            d,
            "40-policies.yaml",
            "connections: [orders-db]",
            "connections: [orders]",
        )
    });
    assert_one_error(
        code,
        &err,
        &[
            "40-policies.yaml:11:",
            "AccessPolicy agentgate/ci-agent-db",
            "spec.connections[0]: Connection agentgate/orders not found",
        ],
    );
}

#[test]
fn missing_secret_key() {
    let (code, _, err, _d) =
        validate_edited(|d| replace(d, "30-connections.yaml", "key: token}", "key: api-token}"));
    assert_one_error(
        code,
        &err,
        &[
            "30-connections.yaml:",
            "Connection agentgate/okta-admin",
            "spec.credentials.secretRef",
            "has no key \"api-token\"",
        ],
    );
}

#[test]
fn duplicate_object() {
    let (code, _, err, _d) = validate_edited(|d| {
        std::fs::write(d.join("35-dup.yaml"), "apiVersion: agentgate.dev/v1alpha1\nkind: AgentIdentity\nmetadata: {name: ci-agent, namespace: agentgate}\nspec: {issuer: https://x.example/oauth2/default, audiences: [a], match: {subject: s}}\n").unwrap()
    });
    assert_one_error(
        code,
        &err,
        &[
            "35-dup.yaml:3:",
            "AgentIdentity agentgate/ci-agent",
            "metadata.name: Duplicate value",
            "20-identities.yaml:",
        ],
    );
}

#[test]
fn unreadable_file() {
    let (code, _, err, _d) = validate_edited(|d| {
        std::os::unix::fs::symlink("/nonexistent/agentgate", d.join("99-gone.yaml")).unwrap()
    });
    assert_one_error(code, &err, &["99-gone.yaml", "cannot read file"]);
}

#[test]
fn duplicate_listener_ports() {
    let (code, _, err, _d) = validate_edited(|d| replace(d, "10-gateway.yaml", "port: 15432", "port: 8443"));
    assert_one_error(
        code,
        &err,
        &[
            "10-gateway.yaml:",
            "spec.listeners",
            "listener ports must be unique",
        ],
    );
}

#[test]
fn secrets_are_never_echoed() {
    let canary = "canary-7f3a9c-secret";
    let (code, out, err, _d) = validate_edited(|d| {
        replace(d, "50-secrets.yaml", "replace-with-an-okta-api-token", canary);
        std::fs::write(d.join("51-bad.yaml"), format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: bad, namespace: agentgate}}\ndata:\n  k: \"{canary}!\"\n")).unwrap();
    });
    assert_one_error(code, &err, &["51-bad.yaml:5:", "data.k", "base64"]);
    assert!(
        !out.contains(canary) && !err.contains(canary),
        "a secret value was printed:\n{out}\n{err}"
    );
}

#[test]
fn empty_directory() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_agentgate"))
        .args(["validate", "-m"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no *.yaml or *.yml manifests found"));
}
