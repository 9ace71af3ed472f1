//! HTTP through the gateway, end to end: the real OIDC provider mints the agent's tokens (with
//! DPoP), the real curl calls the gateway, a real upstream (tests/upstream/echo.py) reports what
//! it received. Allowed, denied and approval-required requests, credential injection, header
//! stripping, masking, recording and metrics; and a canary secret searched for in every output.

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agentgate::identity::mint::SigningKey;
use agentgate_e2e::gateway::{EchoUpstream, Gateway, OktaSetup, okta_manifests};
use agentgate_e2e::oidc::OidcProvider;
use agentgate_e2e::{Reply, binary, curl, curl_get, wait_for};

/// The upstream's SSWS token: must never reach the agent, a log, a metric or a recording.
const CANARY: &str = "00CANARY-upstream-secret-7f3a9c";

/// The problem type of a refusal, checking the media type too.
trait ProblemType {
    fn problem_type(&self) -> String;
}

impl ProblemType for Reply {
    fn problem_type(&self) -> String {
        assert!(
            self.headers
                .to_ascii_lowercase()
                .contains("content-type: application/problem+json"),
            "{self:?}"
        );
        self.json()["type"].as_str().unwrap_or_default().to_string()
    }
}

fn sha256_hex(s: &str) -> String {
    let out = Command::new("python3")
        .args([
            "-c",
            "import hashlib,sys; print('sha256:' + hashlib.sha256(sys.argv[1].encode()).hexdigest())",
            s,
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

fn token(idp: &OidcProvider) -> String {
    let answer = idp.token("ci-agent", "api://agentgate", None);
    answer["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("{answer}"))
        .to_string()
}

struct Setup {
    idp: OidcProvider,
    upstream: EchoUpstream,
    gw: Gateway,
}

fn setup(require_dpop: bool) -> Setup {
    let idp = OidcProvider::start();
    let upstream = EchoUpstream::start();
    let gw = Gateway::start(&okta_manifests(&OktaSetup {
        issuer: &idp.issuer,
        upstream: &upstream.url(),
        upstream_token: CANARY,
        require_dpop,
    }));
    Setup { idp, upstream, gw }
}

#[test]
fn allowed_denied_and_approval_required_with_credential_injection_and_masking() {
    let mut s = setup(false);
    let tok = token(&s.idp);
    let auth = format!("Authorization: Bearer {tok}");

    // Allowed: the upstream gets the Connection's credential, not the agent's token, and none
    // of the identity headers the agent tried to set.
    let r = curl(
        &[
            "-H",
            &auth,
            "-H",
            "Impersonate-User: admin",
            "-H",
            "impersonate-group: system:masters",
            "-H",
            "X-Forwarded-User: root",
            "-H",
            "X-Remote-User: root",
            "-H",
            "Connection: Keep-Alive",
            "-H",
            "Keep-Alive: timeout=5",
            "-H",
            "Cookie: session=stolen",
        ],
        &s.gw.url("/okta/echo/a/b?x=1&y=two%20words"),
    );
    assert_eq!(r.status, 200, "{r:?}\n{}", s.gw.output());
    let echo = r.json();
    assert_eq!(echo["method"], "GET");
    assert_eq!(
        echo["path"], "/echo/a/b?x=1&y=two%20words",
        "prefix stripped, query kept"
    );
    let headers: Vec<(String, String)> = echo["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h[0].as_str().unwrap().to_string(),
                h[1].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let get = |n: &str| {
        headers
            .iter()
            .filter(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(get("authorization"), vec![sha256_hex(&format!("SSWS {CANARY}"))]);
    for gone in [
        "impersonate-user",
        "impersonate-group",
        "x-forwarded-user",
        "x-remote-user",
        "keep-alive",
        "cookie",
        "dpop",
    ] {
        assert!(get(gone).is_empty(), "{gone} reached the upstream: {headers:?}");
    }
    assert!(r.headers.to_ascii_lowercase().contains("x-request-id:"));

    // Masked: emails, phones and the card number never leave the gateway.
    let r = curl(&["-H", &auth], &s.gw.url("/okta/api/v1/users"));
    assert_eq!(r.status, 200, "{r:?}");
    for secret in [
        "alice@example.com",
        "bob@example.org",
        "4111 1111 1111 1111",
        "+1 415 555 0100",
    ] {
        assert!(!r.body.contains(secret), "{secret} leaked: {}", r.body);
    }
    let users = r.json();
    assert_eq!(users[0]["id"], "00u1alice", "unmasked fields are intact");
    assert_eq!(users[0]["profile"]["mobilePhone"], "[REDACTED]");
    // Header values and the recorded path are masked too: a Location naming a user, and a
    // path addressing one. The upstream's reason phrase, which names the user as well, is not
    // passed on: the agent reads the standard one.
    let r = curl(&["-H", &auth], &s.gw.url("/okta/echo/where"));
    assert_eq!(r.status, 302, "{r:?}");
    assert!(
        r.headers.contains("users/[REDACTED:EMAIL]")
            && !r.headers.contains("carol@")
            && r.headers.starts_with("HTTP/1.1 302 Found\r\n"),
        "{r:?}"
    );
    let r = curl(&["-H", &auth], &s.gw.url("/okta/echo/users/jane@example.com"));
    assert_eq!(r.status, 200, "{r:?}");
    assert!(!r.body.contains("jane@example.com"), "{r:?}");
    // Text is masked by detectors; a body the masker cannot read is refused (fail closed).
    let r = curl(&["-H", &auth], &s.gw.url("/okta/text"));
    assert_eq!(r.status, 200);
    assert!(!r.body.contains("carol@example.net"), "{}", r.body);
    let r = curl(&["-H", &auth], &s.gw.url("/okta/binary"));
    assert_eq!(
        (r.status, r.problem_type().as_str()),
        (502, "https://agentgate.dev/problems/masking-refused")
    );
    // Ranges are not asked for where masking applies (a value cut out of its document is valid
    // JSON that no field rule reaches), and a partial body is refused.
    let r = curl(
        &["-H", &auth, "-H", "Range: bytes=10-40", "-H", "If-Range: \"x\""],
        &s.gw.url("/okta/echo/ranged"),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let forwarded = r.json()["headers"].to_string().to_ascii_lowercase();
    assert!(
        !forwarded.contains("\"range\"") && !forwarded.contains("if-range"),
        "{forwarded}"
    );
    let r = curl(&["-H", &auth], &s.gw.url("/okta/partial"));
    assert_eq!(
        (r.status, r.problem_type().as_str()),
        (502, "https://agentgate.dev/problems/masking-refused"),
        "{r:?}"
    );
    assert!(!r.body.contains("alice@"), "{r:?}");

    // An upstream that reflects the injected credential does not hand it to the agent: the
    // header carrying it is dropped and the body has it overwritten (same length).
    let r = curl(&["-H", &auth], &s.gw.url("/okta/reflect"));
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        !r.headers.contains(CANARY) && !r.headers.to_ascii_lowercase().contains("x-debug-auth"),
        "{r:?}"
    );
    assert_eq!(r.json()["you_sent"], format!("SSWS {}", "*".repeat(CANARY.len())));

    // Denied: named rule and reason.
    let r = curl(&["-H", &auth], &s.gw.url("/okta/api/v1/api-tokens"));
    assert_eq!(r.status, 403);
    assert_eq!(
        r.problem_type(),
        "https://agentgate.dev/problems/denied-by-policy"
    );
    let p = r.json();
    assert_eq!(
        (p["policy"].as_str(), p["rule"].as_str()),
        (Some("ci-agent-okta"), Some("no-api-tokens"))
    );
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("Agents never manage Okta API tokens"),
        "{p}"
    );
    // Denied by a header condition; and by default (nothing allows it).
    let r = curl(&["-H", &auth, "-H", "X-Admin: 1"], &s.gw.url("/okta/echo/x"));
    assert_eq!(r.json()["rule"], "no-admin-header");
    let r = curl(&["-H", &auth], &s.gw.url("/okta/api/v1/apps"));
    assert_eq!(r.status, 403);
    assert!(r.json()["rule"].is_null());

    // Approval required.
    let r = curl(
        &[
            "-H",
            &auth,
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"profile":{"login":"dana"}}"#,
        ],
        &s.gw.url("/okta/api/v1/users"),
    );
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(
        r.problem_type(),
        "https://agentgate.dev/problems/approval-required"
    );
    assert_eq!(r.json()["rule"], "okta-user-admin");

    // Unauthenticated: no token, a garbage token, the upstream's own credential.
    for bad in [
        None,
        Some("Bearer not-a-token".to_string()),
        Some(format!("SSWS {CANARY}")),
    ] {
        let args: Vec<String> = bad
            .map(|b| vec!["-H".to_string(), format!("Authorization: {b}")])
            .unwrap_or_default();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = curl(&args, &s.gw.url("/okta/echo/x"));
        assert_eq!(r.status, 401, "{r:?}");
        assert_eq!(r.problem_type(), "https://agentgate.dev/problems/unauthenticated");
        assert!(r.headers.to_ascii_lowercase().contains("www-authenticate:"));
    }

    // No route.
    let r = curl(&["-H", &auth], &s.gw.url("/elsewhere/x"));
    assert_eq!(r.status, 404);

    // Metrics: decisions by connection and identity; problems by type; masking counts.
    let m = s.gw.metrics();
    assert!(m.contains(r#"agentgate_http_requests_total{connection="okta",decision="allow",identity="ci-agent",status="2xx"}"#), "{m}");
    assert!(m.contains(r#"decision="deny""#) && m.contains(r#"decision="require_approval""#));
    assert!(
        m.contains(r#"agentgate_http_problems_total{type="unauthenticated"} 3"#),
        "{m}"
    );
    assert!(
        m.contains("agentgate_masked_values_total{cause=\"EMAIL\",connection=\"okta\"}"),
        "{m}"
    );
    assert!(m.contains("agentgate_http_gateway_overhead_seconds_bucket"));

    // Logs are masked as recordings are: a refused request's path and explanation.
    let r = curl(
        &["-X", "DELETE", "-H", &auth],
        &s.gw.url("/okta/api/v1/api-tokens/logged.user@example.com"),
    );
    assert_eq!(r.status, 403, "{r:?}");
    assert!(
        r.body.contains("logged.user@example.com"),
        "the agent reads its own request"
    );
    let logged = s.gw.output();
    assert!(logged.contains("request refused"), "{logged}");
    assert!(!logged.contains("logged.user@example.com"), "{logged}");

    // Recordings: every decision with its rule, masked bodies; they verify after a clean stop.
    s.gw.stop();
    let rec = s.gw.recordings();
    assert!(rec.contains("\"rule\":\"no-api-tokens\""), "{rec}");
    assert!(rec.contains("\"rule\":\"okta-user-admin\""));
    assert!(rec.contains("\"type\":\"http.response\""));
    assert!(
        !rec.contains("alice@example.com"),
        "unmasked value in a recording"
    );
    assert!(
        !rec.contains("jane@example.com") && !rec.contains("carol@example.net"),
        "an addressed path or a header value unmasked in a recording"
    );
    assert!(rec.contains("/echo/users/[REDACTED:EMAIL]"), "{rec}");
    let files: Vec<_> = std::fs::read_dir(&s.gw.sessions)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(!files.is_empty());
    let out = Command::new(binary("agentgate"))
        .args(["sessions", "verify"])
        .args(&files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The canary never appears outside the upstream's own request.
    let outputs = [s.gw.output(), rec, m];
    for (i, text) in outputs.iter().enumerate() {
        assert!(
            !text.contains(CANARY),
            "the upstream credential leaked into output #{i}"
        );
        assert!(!text.contains(&tok), "the agent's token leaked into output #{i}");
    }
}

#[test]
fn dpop_bound_tokens_are_required_and_checked_per_request() {
    let s = setup(true);
    let key = SigningKey::ec("agent-key").unwrap();
    let proof = key.dpop_token_request_proof(&s.idp.token_endpoint(), now(), "tok-1");
    let answer = s.idp.token("ci-agent", "api://agentgate", Some(&proof));
    assert_eq!(answer["token_type"], "DPoP", "{answer}");
    let tok = answer["access_token"].as_str().unwrap().to_string();
    let url = s.gw.url("/okta/echo/dpop");
    let with_proof = |proof: &str| {
        let auth = format!("Authorization: DPoP {tok}");
        let dpop = format!("DPoP: {proof}");
        curl(&["-H", &auth, "-H", &dpop], &url)
    };

    let ok_proof = key.dpop_proof("GET", &url, &tok, now(), "req-1");
    let r = with_proof(&ok_proof);
    assert_eq!(r.status, 200, "{r:?}\n{}", s.gw.output());
    let echo = r.json();
    assert!(
        !echo.to_string().contains(&tok),
        "the agent's token was forwarded"
    );

    // The token alone (leaked into a log) is useless; so is a replayed proof or another key's.
    let r = curl(&["-H", &format!("Authorization: Bearer {tok}")], &url);
    assert_eq!(
        (r.status, r.problem_type().as_str()),
        (401, "https://agentgate.dev/problems/token-binding")
    );
    let r = with_proof(&ok_proof);
    assert_eq!(r.status, 401, "a replayed proof must fail");
    let thief = SigningKey::ec("thief").unwrap();
    let stolen = thief.dpop_proof("GET", &url, &tok, now(), "req-2");
    let r = with_proof(&stolen);
    assert_eq!(r.status, 401);
    // A proof for another URL.
    let other = key.dpop_proof("GET", &s.gw.url("/okta/echo/elsewhere"), &tok, now(), "req-3");
    let r = with_proof(&other);
    assert_eq!(r.status, 401);
    // Nor can a Host header carry the URL a proof names while the path says another: the
    // URL read as `.../elsewhere?/okta/echo/dpop` would match the proof.
    let elsewhere = s.gw.url("/okta/echo/elsewhere");
    let other = key.dpop_proof("GET", &elsewhere, &tok, now(), "req-4");
    let host = format!("Host: {}?", elsewhere.trim_start_matches("http://"));
    let r = curl(
        &[
            "-H",
            &format!("Authorization: DPoP {tok}"),
            "-H",
            &format!("DPoP: {other}"),
            "-H",
            &host,
        ],
        &url,
    );
    assert_eq!(
        (r.status, r.problem_type().as_str()),
        (400, "https://agentgate.dev/problems/bad-request"),
        "{r:?}"
    );
}

/// The Okta manifests with DPoP required and the AgentGateway's `dpop` settings.
fn dpop_manifests(idp: &OidcProvider, upstream: &EchoUpstream, dpop: &str) -> String {
    let yaml = okta_manifests(&OktaSetup {
        issuer: &idp.issuer,
        upstream: &upstream.url(),
        upstream_token: CANARY,
        require_dpop: true,
    })
    .replace(
        "  recording:\n    mode: Required",
        &format!("  dpop: {dpop}\n  recording:\n    mode: Required"),
    );
    assert!(yaml.contains("  dpop: "));
    yaml
}

/// An access token of `ci-agent` bound to `key`.
fn dpop_token(idp: &OidcProvider, key: &SigningKey) -> String {
    let proof = key.dpop_token_request_proof(&idp.token_endpoint(), now(), "tok-1");
    let answer = idp.token("ci-agent", "api://agentgate", Some(&proof));
    answer["access_token"].as_str().unwrap().to_string()
}

/// Two gateway processes behind one address (replicas), each with its own replay cache: with
/// `dpop.nonce: Required` a proof is good only at the process that issued its nonce, so a proof
/// captured on its way to one cannot be replayed at the other. The client learns the nonce from
/// a `401` with `use_dpop_nonce` and retries, as RFC 9449 clients do.
#[test]
fn dpop_nonces_stop_a_proof_replayed_at_another_replica() {
    let idp = OidcProvider::start();
    let upstream = EchoUpstream::start();
    let yaml = dpop_manifests(&idp, &upstream, "{nonce: Required}");
    let a = Gateway::start(&yaml);
    let b = Gateway::start(&yaml);
    let key = SigningKey::ec("agent-key").unwrap();
    let tok = dpop_token(&idp, &key);
    // Both replicas answer for one address: the client addresses A, whichever process gets it.
    let url = a.url("/okta/echo/dpop");
    let host = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let send = |gw: &Gateway, proof: &str| {
        curl(
            &[
                "-H",
                &format!("Authorization: DPoP {tok}"),
                "-H",
                &format!("DPoP: {proof}"),
                "-H",
                &format!("Host: {host}"),
            ],
            &gw.url("/okta/echo/dpop"),
        )
    };

    // No nonce yet: told to use the one given.
    let r = send(&a, &key.dpop_proof("GET", &url, &tok, now(), "req-1"));
    assert_eq!(
        (r.status, r.problem_type().as_str()),
        (401, "https://agentgate.dev/problems/token-binding"),
        "{r:?}"
    );
    assert_eq!(r.json()["reason"], "use-dpop-nonce");
    assert!(
        r.header("www-authenticate")
            .is_some_and(|w| w.starts_with("DPoP error=\"use_dpop_nonce\"")),
        "{r:?}"
    );
    let nonce_a = r.header("dpop-nonce").expect("a DPoP-Nonce header");

    // With it: through, and the answer hands the nonce on.
    let proof = key.dpop_proof_with_nonce(("GET", &url), &tok, now(), "req-2", &nonce_a);
    let r = send(&a, &proof);
    assert_eq!(r.status, 200, "{r:?}\n{}", a.output());
    assert!(r.header("dpop-nonce").is_some(), "{r:?}");
    // The same proof again, at A: a replay. At B, whose replay cache never saw it: refused too.
    assert_eq!(send(&a, &proof).status, 401);
    let r = send(&b, &proof);
    assert_eq!(r.status, 401, "replayed at the other replica: {r:?}");
    assert_eq!(r.json()["reason"], "use-dpop-nonce");
    let nonce_b = r.header("dpop-nonce").expect("B's nonce");
    assert_ne!(nonce_a, nonce_b);

    // The client's own retry at B, with B's nonce, goes through.
    let proof = key.dpop_proof_with_nonce(("GET", &url), &tok, now(), "req-3", &nonce_b);
    let r = send(&b, &proof);
    assert_eq!(r.status, 200, "{r:?}\n{}", b.output());
    // A refusal before identity (no route here) hands the nonce on too.
    let r = curl(
        &["-H", &format!("Authorization: DPoP {tok}"), "-H", "DPoP: x"],
        &a.url("/nowhere"),
    );
    assert_eq!(r.status, 404, "{r:?}");
    assert!(r.header("dpop-nonce").is_some(), "{r:?}");
    // So does the approvals API of the admin listener (an approver on DPoP).
    let r = curl(
        &["-H", &format!("Authorization: DPoP {tok}"), "-H", "DPoP: x"],
        &format!("http://127.0.0.1:{}/approvals", a.admin),
    );
    assert_eq!(r.status, 401, "{r:?}");
    assert!(r.header("dpop-nonce").is_some(), "{r:?}");
    let requests = upstream.requests();
    assert_eq!(
        requests.matches("/echo/dpop").count(),
        2,
        "only the two good proofs reached the upstream: {requests}"
    );
}

/// Required recording that cannot be written refuses the operation: the upstream never sees it.
/// The gateway reports itself not ready, saying why, so a Service sends traffic elsewhere.
#[test]
fn required_recording_that_cannot_be_written_refuses_requests() {
    let idp = OidcProvider::start();
    let upstream = EchoUpstream::start();
    let blocker = tempfile::NamedTempFile::new().unwrap();
    // The recording path is a regular file, so no session directory can be created there.
    let yaml = okta_manifests(&OktaSetup {
        issuer: &idp.issuer,
        upstream: &upstream.url(),
        upstream_token: CANARY,
        require_dpop: false,
    })
    .replace(
        "${SESSIONS}",
        &blocker.path().join("sessions").display().to_string(),
    );
    let gw = Gateway::start_unready(&yaml);
    let (status, body) = curl_get(&format!("http://127.0.0.1:{}/readyz", gw.admin));
    assert_eq!(status, 503, "{body}");
    assert!(
        body.starts_with("not ready: session recording (mode Required) is unavailable:")
            && body.contains("sessions"),
        "{body}"
    );
    let tok = token(&idp);
    let r = curl(
        &["-H", &format!("Authorization: Bearer {tok}")],
        &gw.url("/okta/echo/x"),
    );
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(
        r.problem_type(),
        "https://agentgate.dev/problems/recording-unavailable"
    );
    assert!(
        !upstream.requests().contains("/echo/x"),
        "{}",
        upstream.requests()
    );
    assert!(
        gw.metrics()
            .contains("agentgate_http_problems_total{type=\"recording-unavailable\"} 1")
    );
}

/// `recording.signingKeySecretRef`: every gateway run signs with the configured key, made by
/// OpenSSL, whose public key (`agentgate sessions public-key`) the auditor pins; a run without it
/// signs with a key of its own, which the pinned key rejects. The key is never logged.
#[test]
fn a_configured_signing_key_signs_the_sessions_of_every_run() {
    let idp = OidcProvider::start();
    let upstream = EchoUpstream::start();
    let keys = tempfile::tempdir().unwrap();
    let pem_file = keys.path().join("recording.pem");
    let made = Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(&pem_file)
        .status()
        .unwrap();
    assert!(made.success());
    let pem = std::fs::read_to_string(&pem_file).unwrap();
    let printed = Command::new(binary("agentgate"))
        .args(["sessions", "public-key"])
        .arg(&pem_file)
        .output()
        .unwrap();
    assert!(printed.status.success(), "{printed:?}");
    let public = String::from_utf8(printed.stdout).unwrap().trim().to_string();
    assert_eq!(public.len(), 43, "{public}");

    let base = okta_manifests(&OktaSetup {
        issuer: &idp.issuer,
        upstream: &upstream.url(),
        upstream_token: CANARY,
        require_dpop: false,
    });
    let keyed = base.replace(
        "    mode: Required\n",
        "    mode: Required\n    signingKeySecretRef: {name: recording-key, key: recording.pem}\n",
    ) + &format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: recording-key, namespace: e2e}}\nstringData:\n  recording.pem: |\n{}",
        pem.lines().map(|l| format!("    {l}\n")).collect::<String>()
    );
    assert!(
        keyed.contains("signingKeySecretRef"),
        "the recording block was not found"
    );
    let tok = token(&idp);
    let verify = |gw: &Gateway| {
        let files: Vec<_> = std::fs::read_dir(&gw.sessions)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(files.len(), 1, "{files:?}");
        Command::new(binary("agentgate"))
            .args(["sessions", "verify", "--require-closed", "--public-key", &public])
            .args(&files)
            .output()
            .unwrap()
    };
    for (yaml, signed) in [(&keyed, true), (&keyed, true), (&base, false)] {
        let mut gw = Gateway::start(yaml);
        let r = curl(
            &["-H", &format!("Authorization: Bearer {tok}")],
            &gw.url("/okta/echo/signed"),
        );
        assert_eq!(r.status, 200, "{r:?}");
        gw.stop();
        let out = verify(&gw);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.success(), signed, "{stdout}");
        if signed {
            assert!(stdout.contains("(closed, signature verified)"), "{stdout}");
            assert!(gw.output().contains(&format!("public_key={public}")));
        } else {
            assert!(stdout.contains("signed by another key"), "{stdout}");
        }
        let secret = pem.lines().nth(1).unwrap();
        assert!(!gw.output().contains(secret), "the signing key was logged");
    }
}

/// A gateway killed while a connection's session is open leaves its file unclosed; the next
/// process on the directory seals it with a signed end (`"reason": "cut off"`), so the auditor's
/// `verify --require-closed --public-key` passes without accepting open files.
#[test]
fn a_session_cut_off_by_a_crash_is_sealed_at_the_next_start() {
    use std::io::{Read, Write};
    let idp = OidcProvider::start();
    let upstream = EchoUpstream::start();
    let mut gw = Gateway::start(&okta_manifests(&OktaSetup {
        issuer: &idp.issuer,
        upstream: &upstream.url(),
        upstream_token: CANARY,
        require_dpop: false,
    }));
    let tok = token(&idp);
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        conn,
        "GET /okta/echo/kept-open HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {tok}\r\n\r\n"
    )
    .unwrap();
    let mut answer = [0u8; 12];
    conn.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"HTTP/1.1 200", "{}", String::from_utf8_lossy(&answer));
    let sessions = gw.sessions.clone();
    let files = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(&sessions)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    };
    let recorded = wait_for(Duration::from_secs(10), || {
        let f = files();
        (f.len() == 1 && std::fs::read_to_string(&f[0]).unwrap().contains("kept-open")).then_some(f)
    })
    .expect("the request is recorded");
    assert!(
        !std::fs::read_to_string(&recorded[0])
            .unwrap()
            .contains("session.end")
    );

    gw.crash_and_restart();
    drop(conn);
    // Sealed off the start's path: soon after it.
    wait_for(Duration::from_secs(10), || {
        gw.output().contains("were sealed").then_some(())
    })
    .expect("the cut-off session is sealed");
    let output = gw.output();
    let public = output
        .split("public_key=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect("the new process logs its public key")
        .to_string();
    assert_eq!(files(), recorded, "no other session");
    let text = std::fs::read_to_string(&recorded[0]).unwrap();
    let end = text.lines().last().unwrap();
    assert!(
        end.contains("\"type\":\"session.end\"") && end.contains("\"reason\":\"cut off\""),
        "{end}"
    );
    let out = Command::new(binary("agentgate"))
        .args(["sessions", "verify", "--require-closed", "--public-key", &public])
        .args(&recorded)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Told apart from a session its own process closed.
    assert!(
        stdout.contains("(cut off, sealed by a later gateway process; signature verified"),
        "{stdout}"
    );
    assert!(output.contains("were sealed"), "{output}");
}

/// `masking.hashKeySecretRef`: the Hash strategy turns one value into the same text in every run
/// of the gateway (as in every replica), so hashed fields join across sessions; a run without
/// the key hashes with a key of its own.
#[test]
fn a_configured_hash_key_hashes_alike_in_every_run() {
    let idp = OidcProvider::start();
    let upstream = EchoUpstream::start();
    let base = okta_manifests(&OktaSetup {
        issuer: &idp.issuer,
        upstream: &upstream.url(),
        upstream_token: CANARY,
        require_dpop: false,
    })
    .replace(
        "    - jsonFields: [\"$..profile.mobilePhone\"]\n      strategy: Redact\n",
        "    - jsonFields: [\"$..profile.mobilePhone\"]\n      strategy: Hash\n",
    );
    assert!(base.contains("strategy: Hash"), "the masking rule was not found");
    let key = "2f0c1c7e5d3b4a69f8e7d6c5b4a392817f6e5d4c3b2a1908";
    let keyed = base.replace(
        "  recording:\n    mode: Required\n",
        "  masking: {hashKeySecretRef: {name: hashing, key: key}}\n  recording:\n    mode: Required\n",
    ) + &format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: hashing, namespace: e2e}}\nstringData: {{key: {key}}}\n"
    );
    assert!(
        keyed.contains("hashKeySecretRef"),
        "the recording block was not found"
    );
    let tok = token(&idp);
    let phones = |yaml: &str| {
        let mut gw = Gateway::start(yaml);
        let r = curl(
            &["-H", &format!("Authorization: Bearer {tok}")],
            &gw.url("/okta/api/v1/users"),
        );
        assert_eq!(r.status, 200, "{r:?}");
        gw.stop();
        assert!(!gw.output().contains(key), "the hash key was logged");
        let users: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        let phones: Vec<String> = users
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["profile"]["mobilePhone"].as_str().unwrap().to_string())
            .collect();
        assert!(phones.iter().all(|p| p.starts_with("hash:")), "{phones:?}");
        assert!(!r.body.contains("555 0100"), "{}", r.body);
        phones
    };
    let first = phones(&keyed);
    assert_eq!(phones(&keyed), first, "a second run hashes alike");
    assert_ne!(phones(&base), first, "a run without the key hashes with its own");
}

/// A JSON response larger than the masking limit is withheld rather than passed unmasked; one
/// under the limit is masked whole.
#[test]
fn responses_over_the_masking_limit_are_refused() {
    let s = setup(false);
    let auth = format!("Authorization: Bearer {}", token(&s.idp));
    let r = curl(&["-H", &auth], &s.gw.url("/okta/big?bytes=1000000"));
    assert_eq!(r.status, 200, "{}", r.body.len());
    assert!(r.body.len() > 990_000, "{}", r.body.len());
    let limit = agentgate::masking::MAX_MASKED_BODY;
    let r = curl(
        &["-H", &auth],
        &s.gw.url(&format!("/okta/big?bytes={}", limit + 1024)),
    );
    assert_eq!(r.status, 502);
    assert_eq!(r.problem_type(), "https://agentgate.dev/problems/masking-refused");
    assert!(r.json()["detail"].as_str().unwrap().contains("masking limit"));
}

/// The upstream's own URLs (an Okta `Link` to the next page, a redirect, a `Content-Location`)
/// lead back through the gateway under the route's prefix: an agent following them neither
/// leaves the gateway for the upstream nor asks for a path outside the prefix. Absolute URLs
/// name the gateway only by a configured public origin (`dpop.origins`) for the request's
/// Host; without one they become paths, resolved against the URL the agent used.
#[test]
fn upstream_urls_in_links_and_redirects_lead_back_through_the_gateway() {
    let s = setup(false);
    let auth = format!("Authorization: Bearer {}", token(&s.idp));
    let r = curl(&["-H", &auth], &s.gw.url("/okta/api/v1/users?limit=2"));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.header("link").as_deref(),
        Some(
            r#"</okta/api/v1/users?limit=2>; rel="self", </okta/api/v1/users?after=00u2&limit=2>; rel="next""#
        ),
        "{r:?}"
    );
    // The next page, as a pagination client resolves it from the Link.
    let r = curl(&["-H", &auth], &s.gw.url("/okta/api/v1/users?after=00u2&limit=2"));
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        s.upstream
            .requests()
            .contains("GET /api/v1/users?after=00u2&limit=2"),
        "{}",
        s.upstream.requests()
    );

    let r = curl(&["-H", &auth], &s.gw.url("/okta/moved"));
    assert_eq!(r.status, 301, "{r:?}");
    for name in ["location", "content-location"] {
        assert_eq!(
            r.header(name).as_deref(),
            Some("/okta/api/v1/users/00u1"),
            "{name}: {r:?}"
        );
    }

    // With public origins configured: the one naming the request's Host, also where a proxy
    // in front terminates TLS.
    let yaml = okta_manifests(&OktaSetup {
        issuer: &s.idp.issuer,
        upstream: &s.upstream.url(),
        upstream_token: CANARY,
        require_dpop: false,
    })
    .replace(
        "  recording:\n    mode: Required",
        "  dpop: {origins: [\"http://127.0.0.1:${LISTEN_PORT}\", \"https://agents.example.com\"]}\n  recording:\n    mode: Required",
    );
    assert!(yaml.contains("agents.example.com"));
    let gw = Gateway::start(&yaml);
    let r = curl(&["-H", &auth], &gw.url("/okta/moved"));
    assert_eq!(
        r.header("location"),
        Some(gw.url("/okta/api/v1/users/00u1")),
        "{r:?}"
    );
    let r = curl(
        &["-H", &auth, "-H", "Host: agents.example.com"],
        &gw.url("/okta/api/v1/users?limit=2"),
    );
    assert_eq!(r.status, 200, "{r:?}\n{}", gw.output());
    assert!(
        r.header("link").is_some_and(|l| l.starts_with(
            "<https://agents.example.com/okta/api/v1/users?limit=2>; rel=\"self\", <https://agents.example.com/okta/"
        )),
        "{r:?}"
    );
}

/// Server-sent events (text without a Content-Length) under masking stream through, masked line
/// by line: the first event reaches curl while the upstream still holds the second.
#[test]
fn server_sent_events_stream_masked_as_they_come() {
    let mut s = setup(false);
    let auth = format!("Authorization: Bearer {}", token(&s.idp));
    let url = s.gw.url("/okta/events");
    let first = curl(&["-N", "--max-time", "1.5", "-H", &auth], &url);
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(first.body, "data: first, from [REDACTED:EMAIL]\n\n");
    let whole = curl(&["-N", "-H", &auth], &url);
    assert_eq!(whole.status, 200, "{whole:?}");
    assert!(
        whole
            .body
            .starts_with("data: first, from [REDACTED:EMAIL]\n\ndata: second, card ")
            && !whole.body.contains("4111")
            && !whole.body.contains("555 0199")
            && !whole.body.contains("555 0177")
            && whole.body.ends_with(
                "data: {\"profile\": {\"mobilePhone\": \"[REDACTED]\"}}\n\n\
                 data: {\ndata:   \"profile\": {\"mobilePhone\": \"[REDACTED]\"}\ndata: }\n\n"
            ),
        "{whole:?}"
    );
    assert!(whole.content_type.starts_with("text/event-stream"), "{whole:?}");
    s.gw.stop();
    let rec = s.gw.recordings();
    assert!(rec.contains("\"masked\":\"per line\""), "{rec}");
    assert!(
        !rec.contains("dave@example.org") && !rec.contains("4111 1111"),
        "{rec}"
    );
}

/// A response streams while the token it was asked with is valid: the event the upstream sends
/// after the token expired does not reach the agent (the stream is cut), as a PostgreSQL session
/// ends with its token.
#[test]
fn a_stream_ends_when_its_token_expires() {
    let s = setup(false);
    // The gateway fetches the issuer's keys on its first request: not on the short token's clock.
    let warm = curl(
        &["-H", &format!("Authorization: Bearer {}", token(&s.idp))],
        &s.gw.url("/okta/users"),
    );
    assert_eq!(warm.status, 403, "verified, then denied: {warm:?}");
    let answer = s.idp.token("ci-agent", "api://agentgate-short", None);
    let short = answer["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("{answer}"));
    // Events now and in 4.5 seconds; the token lives 3 (2 to 3 from now, by its whole seconds).
    let r = curl(
        &["-N", "-H", &format!("Authorization: Bearer {short}")],
        &s.gw.url("/okta/events?gap_ms=4500"),
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, "data: first, from [REDACTED:EMAIL]\n\n", "{r:?}");
}

/// `spec.suspend` on the AgentIdentity cuts its agent off on the next request, with a 403 that
/// names the cause (not a 401, which would send the agent to fetch another token); lifting it
/// lets the same token in again.
#[test]
fn a_suspended_identity_is_refused_until_the_suspension_is_lifted() {
    let s = setup(false);
    let tok = token(&s.idp);
    let auth = format!("Authorization: Bearer {tok}");
    let get = || curl(&["-H", &auth], &s.gw.url("/okta/echo/suspend"));
    assert_eq!(get().status, 200);
    let file = s.gw.manifests().join("all.yaml");
    let edit = |from: &str, to: &str| {
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.contains(from), "{from:?} is not in the manifests");
        let staged = s.gw.manifests().with_extension("staged");
        std::fs::write(&staged, text.replacen(from, to, 1)).unwrap();
        std::fs::rename(&staged, &file).unwrap();
    };
    edit("requireDPoP: false\n", "requireDPoP: false\n  suspend: true\n");
    let refused = agentgate_e2e::wait_for(std::time::Duration::from_secs(15), || {
        let r = get();
        (r.status != 200).then_some(r)
    })
    .unwrap_or_else(|| panic!("still allowed after suspension\n{}", s.gw.output()));
    assert_eq!(refused.status, 403, "{refused:?}");
    let problem = refused.json();
    assert_eq!(
        problem["type"], "https://agentgate.dev/problems/identity-suspended",
        "{problem}"
    );
    assert!(
        problem["detail"].as_str().unwrap().contains("suspended"),
        "{problem}"
    );
    assert!(
        !refused.body.contains(&tok) && !refused.headers.contains(&tok),
        "the token was echoed"
    );
    edit("  suspend: true\n", "");
    let back = agentgate_e2e::wait_for(std::time::Duration::from_secs(15), || {
        (get().status == 200).then_some(())
    });
    assert!(back.is_some(), "still refused after lifting\n{}", s.gw.output());
}

/// Reads one HTTP/1.1 reply framed by Content-Length off a kept-alive connection; its status line.
fn read_reply(reader: &mut impl std::io::BufRead) -> String {
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    status
}

/// A session records in the mode and place of the recording configuration it began under, so a
/// connection kept open across a reload that changes them gets a new session: one begun under
/// BestEffort would otherwise go on swallowing failures after Required was set.
#[test]
fn a_reload_of_the_recording_configuration_starts_new_sessions_on_open_connections() {
    use std::io::{BufReader, Write};
    let s = setup(false);
    let tok = token(&s.idp);
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", s.gw.port)).unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut get = |path: &str| {
        write!(
            conn,
            "GET /okta/echo/{path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {tok}\r\n\r\n"
        )
        .unwrap();
        let status = read_reply(&mut reader);
        assert!(status.contains(" 200 "), "{status}");
    };
    get("before-reload");
    let reloaded = || {
        s.gw.metrics()
            .lines()
            .find(|l| l.starts_with("agentgate_config_last_reload_timestamp_seconds "))
            .map(str::to_string)
    };
    let before = reloaded();
    let file = s.gw.manifests().join("all.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("mode: Required"));
    // Staged outside the watched directory, so the rename is the one change the watch sees.
    let staged = s.gw.manifests().with_extension("staged");
    std::fs::write(&staged, text.replacen("mode: Required", "mode: BestEffort", 1)).unwrap();
    std::fs::rename(&staged, &file).unwrap();
    let changed = agentgate_e2e::wait_for(std::time::Duration::from_secs(15), || {
        (reloaded() != before).then_some(())
    });
    assert!(changed.is_some(), "no reload:\n{}", s.gw.output());
    let file_with = |needle: &str| {
        std::fs::read_dir(&s.gw.sessions)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| std::fs::read_to_string(p).unwrap_or_default().contains(needle))
    };
    let first = file_with("/echo/before-reload").expect("recorded");
    // Once the new configuration is in force, the same connection's next request goes into a
    // new session (the watch may also have seen an earlier event of the edit).
    let mut n = 0;
    let moved = agentgate_e2e::wait_for(std::time::Duration::from_secs(10), || {
        n += 1;
        let path = format!("after-reload-{n}");
        get(&path);
        let second = file_with(&format!("/echo/{path}")).expect("recorded");
        (second != first).then_some(())
    });
    assert!(
        moved.is_some(),
        "the requests after the reload stayed in the old session"
    );
    let closed = agentgate_e2e::wait_for(std::time::Duration::from_secs(10), || {
        std::fs::read_to_string(&first)
            .unwrap_or_default()
            .contains("recording configuration changed")
            .then_some(())
    });
    assert!(closed.is_some(), "the old session was not closed");
    // The two are chained: the old one's signed end names its successor, which names it.
    let old = std::fs::read_to_string(&first).unwrap();
    let id_of = |text: &str| -> String {
        let start: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        start["session"]
            .as_str()
            .unwrap_or_else(|| panic!("{start}"))
            .to_string()
    };
    let successor = std::fs::read_dir(&s.gw.sessions)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .find(|t| t.contains(&format!("\"continues\":\"{}\"", id_of(&old))))
        .expect("a session that continues the old one");
    assert!(
        old.contains(&format!("\"continued_by\":\"{}\"", id_of(&successor))),
        "{old}"
    );
}

/// A token of the app identity `ci-agent` of `issuer`, for the user `sub`.
fn app_token(key: &SigningKey, issuer: &str, sub: &str) -> String {
    key.sign(&serde_json::json!({
        "iss": issuer, "sub": sub, "aud": "api://agentgate", "client_id": "ci-agent",
        "iat": now(), "exp": now() + 300,
    }))
}

/// Manifests whose identity `ci-agent` of `issuer` is checked with `key` (so tests mint tokens
/// of any subject).
fn app_manifests(upstream: &EchoUpstream, key: &SigningKey, issuer: &str) -> String {
    let yaml = okta_manifests(&OktaSetup {
        issuer,
        upstream: &upstream.url(),
        upstream_token: CANARY,
        require_dpop: false,
    })
    .replace(
        "  groups: {static: [ai-agents]}\n",
        "  groups: {static: [ai-agents]}\n  keys: {secretRef: {name: app-keys, key: jwks}}\n",
    );
    format!(
        "{yaml}\n---\napiVersion: v1\nkind: Secret\nmetadata: {{name: app-keys, namespace: e2e}}\nstringData:\n  jwks: '{}'\n",
        SigningKey::jwks(&[key])
    )
}

/// One keep-alive connection may carry tokens of several subjects of one identity (the users of
/// one agent app): each subject's requests go into a session whose start names that subject,
/// never into the session of whoever came first.
#[test]
fn each_subject_on_one_connection_is_recorded_in_its_own_session() {
    use std::io::{Read, Write};
    let upstream = EchoUpstream::start();
    let key = SigningKey::ec("app-key").unwrap();
    let issuer = "https://idp.example/app";
    let mut gw = Gateway::start(&app_manifests(&upstream, &key, issuer));
    let token = |sub: &str| app_token(&key, issuer, sub);
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        conn,
        "GET /okta/echo/by-alice HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\n\r\n\
         GET /okta/echo/by-bob HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        token("alice"),
        token("bob"),
    )
    .unwrap();
    let mut answers = String::new();
    conn.read_to_string(&mut answers).unwrap();
    assert_eq!(answers.matches("HTTP/1.1 200 OK").count(), 2, "{answers}");
    gw.stop();
    let mut subjects = Vec::new();
    for entry in std::fs::read_dir(&gw.sessions).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        let start: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        let subject = start["data"]["subject"]
            .as_str()
            .unwrap_or_else(|| panic!("{start}"));
        let mine = format!("/echo/by-{subject}");
        let other = if subject == "alice" {
            "/echo/by-bob"
        } else {
            "/echo/by-alice"
        };
        assert!(text.contains(&mine) && !text.contains(other), "{text}");
        subjects.push(subject.to_string());
    }
    subjects.sort();
    assert_eq!(subjects, ["alice", "bob"]);
}

/// Behind a TLS-terminating ingress the gateway is reached over plain HTTP at an inner address,
/// while the agent signs its proofs for the public origin: `spec.dpop.origins` names it, and a
/// proof for the address the gateway itself sees is then refused.
#[test]
fn dpop_proofs_name_the_public_origin_a_proxy_in_front_serves() {
    let idp = OidcProvider::start();
    let upstream = EchoUpstream::start();
    let gw = Gateway::start(&dpop_manifests(
        &idp,
        &upstream,
        "{origins: [\"https://agents.example.com\"]}",
    ));
    let key = SigningKey::ec("agent-key").unwrap();
    let tok = dpop_token(&idp, &key);
    let url = gw.url("/okta/echo/behind-ingress");
    let with_proof = |htu: &str, jti: &str| {
        let proof = key.dpop_proof("GET", htu, &tok, now(), jti);
        curl(
            &[
                "-H",
                &format!("Authorization: DPoP {tok}"),
                "-H",
                &format!("DPoP: {proof}"),
            ],
            &url,
        )
    };
    let r = with_proof("https://agents.example.com/okta/echo/behind-ingress", "p-1");
    assert_eq!(r.status, 200, "{r:?}\n{}", gw.output());
    let r = with_proof(&url, "p-2");
    assert_eq!(
        (r.status, r.problem_type().as_str()),
        (401, "https://agentgate.dev/problems/token-binding"),
        "{r:?}"
    );
}

/// An agent backend sending many users' tokens over one connection keeps at most 32 sessions
/// open on it: the least recently used are closed (signed) while the connection goes on.
#[test]
fn many_subjects_on_one_connection_keep_a_bounded_number_of_sessions_open() {
    use std::io::{BufReader, Write};
    let upstream = EchoUpstream::start();
    let key = SigningKey::ec("app-key").unwrap();
    let issuer = "https://idp.example/app";
    let gw = Gateway::start(&app_manifests(&upstream, &key, issuer));
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    for n in 0..40 {
        write!(
            conn,
            "GET /okta/echo/user-{n} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\n\r\n",
            app_token(&key, issuer, &format!("user-{n}"))
        )
        .unwrap();
        let status = read_reply(&mut reader);
        assert!(status.contains(" 200 "), "{status}");
    }
    // The connection is still open: the first eight subjects' sessions are closed and signed.
    let closed = |text: &str| text.contains("\"type\":\"session.end\"");
    let ended = wait_for(Duration::from_secs(10), || {
        let files: Vec<String> = std::fs::read_dir(&gw.sessions)
            .unwrap()
            .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
            .collect();
        let done: Vec<&String> = files.iter().filter(|t| closed(t)).collect();
        (files.len() == 40 && done.len() == 8).then(|| done.iter().map(|t| t.to_string()).collect::<Vec<_>>())
    });
    let ended = ended.unwrap_or_else(|| panic!("{}", gw.output()));
    for n in 0..8 {
        let mine = format!("/echo/user-{n}\"");
        assert!(
            ended.iter().any(|t| t.contains(&mine)),
            "user-{n} not among the closed"
        );
    }
    assert!(
        ended
            .iter()
            .all(|t| t.contains("session limit of the connection"))
    );
    drop(reader);
    drop(conn);
}
