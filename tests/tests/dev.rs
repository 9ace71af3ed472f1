//! `agentgate dev`: the real binary with free ports and a temporary state directory, driven with
//! the real curl the way its banner tells a newcomer to.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use agentgate_e2e::{Process, binary, curl, curl_get, free_port, wait_for};
use serde_json::Value;

struct Dev {
    process: Process,
    listen: u16,
    issuer: u16,
    upstream: u16,
    admin: u16,
    token: String,
    state_dir: tempfile::TempDir,
}

impl Dev {
    fn start() -> Self {
        let state = tempfile::tempdir().expect("temp dir");
        let (listen, issuer, upstream, admin) = (free_port(), free_port(), free_port(), free_port());
        let mut cmd = Command::new(binary("agentgate"));
        cmd.arg("dev")
            .args(["--listen-port", &listen.to_string()])
            .args(["--issuer-port", &issuer.to_string()])
            .args(["--upstream-port", &upstream.to_string()])
            .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
            .arg("--state-dir")
            .arg(state.path());
        let process = Process::start("agentgate dev", cmd);
        let token = wait_for(Duration::from_secs(30), || {
            process
                .output()
                .lines()
                .find_map(|l| l.strip_prefix("export AGENTGATE_TOKEN='")?.strip_suffix('\''))
                .map(str::to_string)
        })
        .unwrap_or_else(|| panic!("no token printed\n{}", process.output()));
        Self {
            process,
            listen,
            issuer,
            upstream,
            admin,
            token,
            state_dir: state,
        }
    }

    fn state(&self) -> &Path {
        self.state_dir.path()
    }

    fn gateway(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/okta{path}", self.listen)
    }

    fn bearer(&self) -> String {
        format!("Authorization: Bearer {}", self.token)
    }
}

/// Everything up to the gateway's data plane: the issuer, the upstream, the manifests, readiness,
/// and a clean stop.
#[test]
fn dev_starts_issuer_upstream_and_a_ready_gateway() {
    let mut dev = Dev::start();
    let output = dev.process.output();
    assert!(
        output.contains("DEVELOPMENT ISSUER — NOT FOR PRODUCTION"),
        "{output}"
    );
    assert!(output.contains("agentgate sessions list --dir"), "{output}");

    // The issuer serves discovery for itself and its keys.
    let issuer = format!("http://127.0.0.1:{}", dev.issuer);
    let (code, body) = curl_get(&format!("{issuer}/.well-known/openid-configuration"));
    assert_eq!(code, 200, "{body}");
    let doc: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["issuer"], issuer.as_str());
    let (code, body) = curl_get(doc["jwks_uri"].as_str().unwrap());
    assert_eq!(code, 200);
    let jwks: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(jwks["keys"][0]["alg"], "ES256");

    // The upstream refuses everyone but the holder of its SSWS token: not the agent.
    let upstream = format!("http://127.0.0.1:{}/api/v1/users", dev.upstream);
    assert_eq!(curl(&[], &upstream).status, 401);
    let direct = curl(&["-H", &dev.bearer()], &upstream);
    assert_eq!(direct.status, 401, "{direct:?}");
    assert_eq!(direct.json()["errorCode"], "E0000011");

    // The written manifests are valid and loaded.
    let manifests = dev.state().join("manifests");
    let validate = Command::new(binary("agentgate"))
        .args(["validate", "--manifests"])
        .arg(&manifests)
        .output()
        .unwrap();
    assert!(
        validate.status.success(),
        "{}",
        String::from_utf8_lossy(&validate.stderr)
    );
    let ready = wait_for(Duration::from_secs(20), || {
        let (code, body) = curl_get(&format!("http://127.0.0.1:{}/readyz", dev.admin));
        (code == 200).then_some(body)
    });
    assert!(ready.is_some(), "{}", dev.process.output());

    // The upstream's credential is on disk for the gateway only, never in the output.
    let secret = std::fs::read_to_string(manifests.join("50-secret.yaml")).unwrap();
    let credential = secret.rsplit("token: ").next().unwrap().trim().trim_matches('"');
    assert_eq!(credential.len(), 42);
    assert!(!dev.process.output().contains(credential));

    let status = dev.process.terminate(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{}", dev.process.output());
    // Stopped with it: the issuer no longer answers.
    assert_eq!(curl_get(&format!("{issuer}/keys")).0, 0);
}

/// What the banner promises through the gateway: allow with masking, deny, approval required,
/// unauthenticated, and a recording. Needs the HTTP data plane.
#[test]
fn dev_shows_allow_deny_approval_and_masking_through_the_gateway() {
    let dev = Dev::start();
    let up = wait_for(Duration::from_secs(20), || {
        (curl(&[], &dev.gateway("/api/v1/users")).status != 0).then_some(())
    });
    assert!(
        up.is_some(),
        "the gateway does not listen\n{}",
        dev.process.output()
    );
    let bearer = dev.bearer();

    let users = curl(&["-H", &bearer], &dev.gateway("/api/v1/users"));
    assert_eq!(users.status, 200, "{users:?}\n{}", dev.process.output());
    assert!(users.content_type.starts_with("application/json"), "{users:?}");
    let list = users.json();
    assert_eq!(list.as_array().map(Vec::len), Some(3), "{users:?}");
    assert_eq!(list[0]["profile"]["firstName"], "Alice");
    for leaked in ["@example", "4111"] {
        assert!(
            !users.body.contains(leaked),
            "{leaked} not masked: {}",
            users.body
        );
    }

    let denied = curl(&["-H", &bearer], &dev.gateway("/api/v1/api-tokens"));
    assert_eq!(denied.status, 403, "{denied:?}");
    assert!(
        denied.content_type.starts_with("application/problem+json"),
        "{denied:?}"
    );
    let problem = denied.json();
    assert!(
        problem["type"]
            .as_str()
            .unwrap_or_default()
            .ends_with("denied-by-policy"),
        "{problem}"
    );

    let create = curl(
        &[
            "-X",
            "POST",
            "-H",
            &bearer,
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"profile":{"firstName":"Dana","lastName":"Lee","email":"dana.lee@example.com","login":"dana.lee@example.com"}}"#,
        ],
        &dev.gateway("/api/v1/users"),
    );
    assert_eq!(create.status, 403, "{create:?}");
    assert!(
        create.content_type.starts_with("application/problem+json"),
        "{create:?}"
    );
    let problem = create.json();
    assert!(
        problem["type"]
            .as_str()
            .unwrap_or_default()
            .ends_with("approval-required"),
        "{problem}"
    );

    let anonymous = curl(&[], &dev.gateway("/api/v1/users"));
    assert_eq!(anonymous.status, 401, "{anonymous:?}");
    assert!(
        anonymous.content_type.starts_with("application/problem+json"),
        "{anonymous:?}"
    );
    let problem = anonymous.json();
    assert!(
        problem["type"]
            .as_str()
            .unwrap_or_default()
            .ends_with("unauthenticated"),
        "{problem}"
    );

    // Every request above is on record.
    let recorded = wait_for(Duration::from_secs(10), || {
        let n = std::fs::read_dir(dev.state().join("sessions"))
            .ok()?
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "jsonl"))
            .count();
        (n > 0).then_some(n)
    });
    assert!(
        recorded.is_some(),
        "no session recorded\n{}",
        dev.process.output()
    );
}
