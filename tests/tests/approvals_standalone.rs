//! Standalone deciding: `agentgate approvals list|show|approve|deny` against a running gateway's
//! admin API, approvers authenticated by their OIDC tokens, decisions kept across a restart.
//! (Requests are put in the store the gateway opens; creating them from real operations is the
//! data paths' tests' part.)

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agentgate::approval::{Approvals, Ask, Ticket};
use agentgate::identity::mint::SigningKey;
use agentgate_crds::approval::{ApprovalPhase, DecisionState, OperationKind};
use agentgate_crds::policy::{Grant, GrantType};
use agentgate_e2e::binary;
use agentgate_e2e::gateway::Gateway;
use serde_json::json;

const HUMANS: &str = "https://login.example/";
const AGENTS: &str = "https://agents.example/";

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

fn manifests(state: &Path, humans: &SigningKey, agents: &SigningKey) -> String {
    format!(
        r#"apiVersion: agentgate.dev/v1alpha1
kind: AgentGateway
metadata: {{name: gw, namespace: e2e}}
spec:
  listeners:
    - {{name: http, protocol: HTTP, port: ${{LISTEN_PORT}}, address: 127.0.0.1}}
  recording: {{storage: {{local: {{path: "{sessions}"}}}}}}
  approvals: {{maxGrant: 1h}}
---
apiVersion: agentgate.dev/v1alpha1
kind: AgentIdentity
metadata: {{name: ci-agent, namespace: e2e}}
spec:
  issuer: {AGENTS}
  audiences: [agentgate]
  match: {{subject: ci}}
  groups: {{static: [dba]}}
  keys: {{secretRef: {{name: keys, key: agents}}}}
---
apiVersion: agentgate.dev/v1alpha1
kind: AgentIdentity
metadata: {{name: approvers, namespace: e2e}}
spec:
  issuer: {HUMANS}
  audiences: [agentgate-approvals]
  match: {{claims: {{azp: agentgate-cli}}}}
  groups: {{claim: groups}}
  approver: true
  keys: {{secretRef: {{name: keys, key: humans}}}}
---
apiVersion: agentgate.dev/v1alpha1
kind: Connection
metadata: {{name: orders, namespace: e2e}}
spec:
  gatewayRef: {{name: gw}}
  type: HTTP
  endpoint: http://127.0.0.1:9
  route: {{pathPrefix: /orders}}
---
apiVersion: agentgate.dev/v1alpha1
kind: AccessPolicy
metadata: {{name: orders, namespace: e2e}}
spec:
  subjects: {{identities: [ci-agent]}}
  connections: [orders]
  rules:
    - name: writes
      action: RequireApproval
      http: {{methods: [POST]}}
      approval: {{approvers: {{users: [alice], groups: [dba]}}, mode: Defer}}
    - name: bulk
      action: RequireApproval
      http: {{methods: [DELETE]}}
      approval: {{approvers: {{groups: [dba]}}, minApprovals: 2, grant: {{type: Window, duration: 30m}}}}
  masking:
    - detectors: [Email]
      strategy: Redact
---
apiVersion: v1
kind: Secret
metadata: {{name: keys, namespace: e2e}}
stringData:
  humans: '{humans_jwks}'
  agents: '{agents_jwks}'
"#,
        sessions = state.join("sessions").display(),
        humans_jwks = SigningKey::jwks(&[humans]),
        agents_jwks = SigningKey::jwks(&[agents]),
    )
}

/// What the gateway loads from `yaml`: a request carries its rule's digest and approvers as the
/// data path would have made it, or it cannot be decided.
struct Loaded(agentgate::config::GatewayConfig);

impl Loaded {
    fn new(yaml: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("all.yaml"),
            yaml.replace("${LISTEN_PORT}", "18080"),
        )
        .unwrap();
        let cfg = agentgate::config::load(&agentgate::config::LoadOptions {
            manifests: dir.path().to_path_buf(),
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("{e}"));
        Self(cfg)
    }

    fn ask(&self, rule: &str, fingerprint: &str, summary: &str) -> Ask {
        use agentgate::protocol::approval::{rule_digest, rule_spec};
        let policy = self.0.policies.iter().find(|p| p.name == "orders").unwrap();
        let compiled = policy.rules.iter().find(|r| r.name == rule).unwrap();
        Ask {
            rule_digest: rule_digest(policy, compiled, self.0.connections.get("orders")),
            approvers: rule_spec(policy, compiled).unwrap().approvers.clone(),
            ..ask(rule, fingerprint, summary)
        }
    }
}

fn ask(rule: &str, fingerprint: &str, summary: &str) -> Ask {
    Ask {
        identity: "ci-agent".into(),
        requester: "ci".into(),
        connection: "orders".into(),
        kind: OperationKind::Http,
        summary: summary.into(),
        fingerprint: fingerprint.into(),
        detail: None,
        policy: "orders".into(),
        rule: rule.into(),
        rule_digest: "0".repeat(32),
        grant: if rule == "bulk" {
            Grant {
                r#type: GrantType::Window,
                duration: Some("30m".into()),
            }
        } else {
            Grant::default()
        },
        approvers: agentgate_crds::policy::Approvers {
            users: vec![],
            groups: vec!["dba".into()],
        },
        min_approvals: 1,
        reason: Some("nightly sync".into()),
        timeout: Duration::from_secs(3600),
        grant_limit: Duration::from_secs(3600),
        unshown: None,
    }
}

fn human(key: &SigningKey, sub: &str, groups: &[&str]) -> String {
    let now = now();
    key.sign(&json!({
        "iss": HUMANS, "sub": sub, "aud": "agentgate-approvals", "azp": "agentgate-cli",
        "groups": groups, "iat": now, "exp": now + 600,
    }))
}

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn cli(gw: &Gateway, token: Option<&str>, args: &[&str]) -> Run {
    let mut cmd = Command::new(binary("agentgate"));
    cmd.arg("approvals")
        .args(args)
        .args(["--admin-addr", &format!("127.0.0.1:{}", gw.admin)])
        .env_remove("AGENTGATE_TOKEN");
    if let Some(t) = token {
        cmd.env("AGENTGATE_TOKEN", t);
    }
    let out = cmd.output().expect("agentgate runs");
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn pending(t: Ticket) -> String {
    match t {
        Ticket::Pending { name, .. } => name,
        t => panic!("{t:?}"),
    }
}

#[test]
fn approvers_list_approve_and_deny_with_the_cli_and_decisions_survive_a_restart() {
    let state = tempfile::tempdir().unwrap();
    let humans = SigningKey::ec("humans").unwrap();
    let agents = SigningKey::ec("agents").unwrap();
    let yaml = manifests(state.path(), &humans, &agents);
    let loaded = Loaded::new(&yaml);
    let ask = |rule: &str, fingerprint: &str, summary: &str| loaded.ask(rule, fingerprint, summary);
    // Requests waiting before the gateway starts (as after a restart).
    let (once, other, window) = {
        let store = Approvals::open(state.path().join("approvals"), "e2e").unwrap();
        (
            pending(
                store
                    .request(&ask("writes", "aaaa1111", "POST /orders/v1/orders"), now())
                    .unwrap(),
            ),
            pending(
                store
                    .request(&ask("writes", "bbbb2222", "POST /orders/v1/refunds"), now())
                    .unwrap(),
            ),
            pending(
                store
                    .request(&ask("bulk", "cccc3333", "DELETE /orders/v1/orders/7"), now())
                    .unwrap(),
            ),
        )
    };
    let mut gw = Gateway::start(&yaml);
    let alice = human(&humans, "alice", &[]);
    let bob = human(&humans, "bob", &["dba"]);
    let carol = human(&humans, "carol", &["dba"]);

    // Bob (group dba) approves for both rules and lists all three; Alice, listed by name for
    // `writes` only, does not see the `bulk` request.
    let list = cli(&gw, Some(&bob), &["list"]);
    assert!(list.ok, "{}{}\n{}", list.stdout, list.stderr, gw.output());
    let lines: Vec<&str> = list.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{}", list.stdout);
    assert!(lines[0].starts_with("NAME"), "{}", list.stdout);
    for name in [&once, &other, &window] {
        let line = lines.iter().find(|l| l.starts_with(name.as_str())).unwrap();
        assert!(
            line.contains("Pending") && line.contains("ci-agent") && line.contains("orders"),
            "{line}"
        );
    }
    assert!(list.stdout.contains("POST /orders/v1/orders"), "{}", list.stdout);
    assert!(list.stdout.contains("Window 30m"), "{}", list.stdout);
    let list = cli(&gw, Some(&alice), &["list"]);
    assert!(list.ok, "{}", list.stderr);
    assert_eq!(list.stdout.lines().count(), 3, "{}", list.stdout);
    assert!(!list.stdout.contains(window.as_str()), "{}", list.stdout);

    // Alice approves the first request (a listed user).
    let r = cli(&gw, Some(&alice), &["approve", &once, "--reason", "INC-1234"]);
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("now Approved"), "{}", r.stdout);
    // Bob denies the second (by group).
    let r = cli(&gw, Some(&bob), &["deny", &other, "--reason", "not today"]);
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("now Denied"), "{}", r.stdout);
    // The window needs two approvers: Alice is not one for that rule (to her it does not
    // exist); Bob, then Carol.
    let r = cli(&gw, Some(&alice), &["approve", &window]);
    assert!(!r.ok);
    assert!(
        r.stderr.contains("404") && r.stderr.contains("not found"),
        "{}",
        r.stderr
    );
    let r = cli(&gw, Some(&bob), &["approve", &window]);
    assert!(r.ok, "{}", r.stderr);
    assert!(
        r.stdout.contains("still Pending (1 approval so far"),
        "{}",
        r.stdout
    );
    let r = cli(&gw, Some(&bob), &["approve", &window]);
    assert!(!r.ok);
    assert!(
        r.stderr.contains("409") && r.stderr.contains("bob has already decided"),
        "{}",
        r.stderr
    );

    // Refusals: self-approval (the requester's subject, even in an approver group), a token the
    // gateway does not accept, no token, a decided request.
    let agent_as_human = human(&humans, "ci", &["dba"]);
    let r = cli(&gw, Some(&agent_as_human), &["approve", &window]);
    assert!(!r.ok);
    assert!(r.stderr.contains("cannot decide its own request"), "{}", r.stderr);
    let forged = SigningKey::ec("humans").unwrap();
    let r = cli(
        &gw,
        Some(&human(&forged, "carol", &["dba"])),
        &["approve", &window],
    );
    assert!(!r.ok);
    assert!(r.stderr.contains("401"), "{}", r.stderr);
    let r = cli(&gw, None, &["list"]);
    assert!(!r.ok);
    assert!(r.stderr.contains("AGENTGATE_TOKEN"), "{}", r.stderr);
    let r = cli(&gw, Some(&carol), &["approve", &once]);
    assert!(!r.ok);
    assert!(
        r.stderr.contains("409") && r.stderr.contains("is Approved"),
        "{}",
        r.stderr
    );

    let r = cli(
        &gw,
        Some(&carol),
        &["approve", &window, "--reason", "change CHG-9"],
    );
    assert!(r.ok, "{}", r.stderr);
    assert!(
        r.stdout.contains("now Approved, access window until"),
        "{}",
        r.stdout
    );

    let show = cli(&gw, Some(&carol), &["show", &once]);
    assert!(show.ok, "{}", show.stderr);
    let shown: serde_json::Value = serde_json::from_str(&show.stdout).unwrap();
    assert_eq!(shown["spec"]["decisions"]["alice"]["reason"], "INC-1234");
    assert_eq!(shown["status"]["phase"], "Approved");

    let pending_only = cli(&gw, Some(&carol), &["list", "--pending"]);
    assert_eq!(pending_only.stdout, "No approval requests.\n");

    // After a restart the store has every decision, and the grants still work.
    gw.stop();
    drop(gw);
    let store = Approvals::open(state.path().join("approvals"), "e2e").unwrap();
    let phase = |n: &str| store.get(n, now()).unwrap().status.unwrap().phase;
    assert_eq!(phase(&once), ApprovalPhase::Approved);
    assert_eq!(phase(&other), ApprovalPhase::Denied);
    assert_eq!(phase(&window), ApprovalPhase::Approved);
    let w = store.get(&window, now()).unwrap();
    assert_eq!(w.spec.decisions.len(), 2);
    assert!(
        w.spec
            .decisions
            .values()
            .all(|d| d.state == DecisionState::Approved)
    );
    assert_eq!(
        store
            .request(&ask("writes", "aaaa1111", "POST /orders/v1/orders"), now())
            .unwrap(),
        Ticket::Granted { name: once.clone() }
    );
    assert_eq!(
        store
            .request(&ask("bulk", "dddd4444", "DELETE /orders/v1/orders/8"), now())
            .unwrap(),
        Ticket::Granted { name: window.clone() }
    );
    drop(store);

    // And a restarted gateway serves them.
    let gw = Gateway::start(&yaml);
    let list = cli(&gw, Some(&alice), &["list"]);
    assert!(list.ok, "{}", list.stderr);
    let used = list
        .stdout
        .lines()
        .find(|l| l.starts_with(once.as_str()))
        .unwrap();
    assert!(used.contains("Used"), "{}", list.stdout);
}

fn agent_token(key: &SigningKey) -> String {
    let now = now();
    key.sign(&json!({
        "iss": AGENTS, "sub": "ci", "aud": "agentgate", "iat": now, "exp": now + 600,
    }))
}

/// What the data-path tests share: manifests for a gateway in front of a real upstream with the
/// `held` rule (Hold on PUT, `hold_timeout`) beside the Defer rule `writes`, the agent's
/// Authorization header, and Alice's approver token.
struct DataPath {
    state: tempfile::TempDir,
    upstream: agentgate_e2e::gateway::EchoUpstream,
    yaml: String,
    auth: String,
    alice: String,
}

fn data_path(hold_timeout: &str) -> DataPath {
    let state = tempfile::tempdir().unwrap();
    let humans = SigningKey::ec("humans").unwrap();
    let agents = SigningKey::ec("agents").unwrap();
    let upstream = agentgate_e2e::gateway::EchoUpstream::start();
    let held = format!(
        "    - name: held\n      action: RequireApproval\n      http: {{methods: [PUT]}}\n      approval: {{approvers: {{users: [alice]}}, mode: Hold, timeout: {hold_timeout}}}\n    - name: bulk\n"
    );
    let yaml = manifests(state.path(), &humans, &agents)
        .replace("http://127.0.0.1:9", &upstream.url())
        .replace("    - name: bulk\n", &held);
    DataPath {
        auth: format!("Authorization: Bearer {}", agent_token(&agents)),
        alice: human(&humans, "alice", &[]),
        state,
        upstream,
        yaml,
    }
}

#[test]
fn http_defer_then_retry_and_hold_through_the_data_path() {
    let DataPath {
        state,
        upstream,
        yaml,
        auth,
        alice,
    } = data_path("30s");
    let gw = Gateway::start(&yaml);
    // POST /orders with the agent's token, `headers` and `body`.
    let post_with = |headers: &[&str], body: &str| {
        let mut args = vec!["-X", "POST", "-H", auth.as_str()];
        for h in headers {
            args.extend(["-H", h]);
        }
        args.extend(["--data", body]);
        agentgate_e2e::curl(&args, &gw.url("/orders/echo/orders"))
    };
    let post_as =
        |content_type: &str, body: &str| post_with(&[&format!("Content-Type: {content_type}")], body);
    let post = |body: &str| post_as("application/json", body);

    // Defer: refused at once with the request's name; approved, the identical request passes once.
    let r = post(r#"{"id": 1}"#);
    assert_eq!(r.status, 403, "{r:?}\n{}", gw.output());
    let problem = r.json();
    assert_eq!(
        problem["type"],
        "https://agentgate.dev/problems/approval-required"
    );
    let name = problem["approvalRequest"]
        .as_str()
        .expect("names the request")
        .to_string();
    // The approver reads what the approval covers, body included, masked as the record is.
    let detail = |name: &str| {
        let shown = cli(&gw, Some(&alice), &["show", name]);
        assert!(shown.ok, "{}", shown.stderr);
        let shown: serde_json::Value = serde_json::from_str(&shown.stdout).unwrap();
        assert_eq!(shown["spec"]["operation"]["summary"], "POST /echo/orders");
        shown["spec"]["operation"]["detail"].clone()
    };
    assert_eq!(
        detail(&name),
        "content-type: application/json\naccept: */*\nbody: {\"id\": 1}"
    );
    let owned = post(r#"{"id": 5, "owner": "ops@example.com"}"#);
    let owned = owned.json()["approvalRequest"].as_str().unwrap().to_string();
    assert_eq!(
        detail(&owned),
        "content-type: application/json\naccept: */*\nbody: {\"id\": 5, \"owner\": \"[REDACTED:EMAIL]\"}"
    );
    // Nor what would be refused anyway: a grant for an upgrade would be spent on nothing.
    let upgrade = post_with(
        &[
            "Content-Type: application/json",
            "Connection: Upgrade",
            "Upgrade: websocket",
        ],
        r#"{"id": 9}"#,
    );
    assert_eq!(
        (
            upgrade.status,
            upgrade.json()["type"].as_str().unwrap_or_default()
        ),
        (501, "https://agentgate.dev/problems/unsupported-upgrade"),
        "{upgrade:?}"
    );
    assert!(upgrade.json().get("approvalRequest").is_none(), "{upgrade:?}");
    // What an approver could not read whole is not asked: a body past what it is shown.
    let long = post(&format!(
        r#"{{"id": 7, "memo": "{}", "id": 8}}"#,
        "a".repeat(9000)
    ));
    assert_eq!(long.status, 403, "{long:?}");
    let problem = long.json();
    assert!(problem.get("approvalRequest").is_none(), "{problem}");
    assert!(
        problem["approval"]
            .as_str()
            .is_some_and(|why| why.contains("an approver is shown at most")),
        "{problem}"
    );
    // The agent's own token, sent in the body, is hidden from the approver too.
    let bearer = auth.trim_start_matches("Authorization: Bearer ").to_string();
    let leaky = post(&format!(r#"{{"id": 6, "note": "{bearer}"}}"#));
    let leaky = leaky.json()["approvalRequest"].as_str().unwrap().to_string();
    let shown = detail(&leaky);
    assert!(
        shown
            .as_str()
            .is_some_and(|d| !d.contains(&bearer) && d.contains("[REDACTED]")),
        "{shown}"
    );
    // The agent's stated reason is its to write, but masked and token-free like the rest.
    let reason = format!("Agentgate-Reason: ask ops@example.com, key {bearer}");
    let r = post_with(&[&reason, "Content-Type: application/json"], r#"{"id": 7}"#);
    let reasoned = r.json()["approvalRequest"].as_str().unwrap().to_string();
    let shown = cli(&gw, Some(&alice), &["show", &reasoned]);
    let shown: serde_json::Value = serde_json::from_str(&shown.stdout).unwrap();
    let stated = shown["spec"]["reason"].as_str().unwrap_or_default();
    assert!(
        stated.starts_with("ask [REDACTED:EMAIL], key ") && !stated.contains(&bearer),
        "{shown}"
    );
    let r = cli(&gw, Some(&alice), &["approve", &name, "--reason", "INC-7"]);
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
    let other = post(r#"{"id": 2}"#);
    assert_eq!(other.status, 403, "a different body is a different operation");
    assert_ne!(other.json()["approvalRequest"].as_str(), Some(name.as_str()));
    // The same bytes of another type (a merge patch where a strategic merge was approved) are
    // another operation too.
    let retyped = post_as("application/merge-patch+json", r#"{"id": 1}"#);
    assert_eq!(retyped.status, 403, "{retyped:?}");
    assert_ne!(retyped.json()["approvalRequest"].as_str(), Some(name.as_str()));
    // A header that may change what the upstream does is part of the operation, shown to the
    // approver; one a client draws afresh for each request (a trace id) is not.
    let with_header = |h: &str| post_with(&["Content-Type: application/json", h], r#"{"id": 1}"#);
    let copied = with_header("X-Amz-Copy-Source: /secret/obj");
    assert_eq!(copied.status, 403, "{copied:?}");
    let copied = copied.json()["approvalRequest"].as_str().unwrap().to_string();
    assert_ne!(copied, name);
    assert_eq!(
        detail(&copied),
        "content-type: application/json\naccept: */*\nx-amz-copy-source: /secret/obj\nbody: {\"id\": 1}"
    );
    let r = with_header("traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        upstream.requests().matches("POST /echo/orders").count(),
        1,
        "{}",
        upstream.requests()
    );
    let r = post(r#"{"id": 1}"#);
    assert_eq!(r.status, 403, "a Once grant is used once");
    // HTTP/2 needs no Content-Length: a body sent without one is part of the operation too.
    let h2 = |body: &str| {
        agentgate_e2e::curl(
            &[
                "--http2-prior-knowledge",
                "-X",
                "POST",
                "-H",
                &auth,
                "-H",
                "Content-Type: application/json",
                "-H",
                "Transfer-Encoding: chunked",
                "--data-binary",
                body,
            ],
            &gw.url("/orders/echo/orders"),
        )
    };
    let r = h2(r#"{"id": 3}"#);
    assert_eq!((r.status, r.version.as_str()), (403, "2"), "{r:?}");
    let name3 = r.json()["approvalRequest"]
        .as_str()
        .expect("names the request")
        .to_string();
    let r = cli(&gw, Some(&alice), &["approve", &name3]);
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
    let r = h2(r#"{"id": 4}"#);
    assert_eq!(
        r.status, 403,
        "a different body over HTTP/2 is a different operation: {r:?}"
    );
    let r = h2(r#"{"id": 3}"#);
    assert_eq!(r.status, 200, "{r:?}");

    // Hold: the request waits and goes through when approved.
    // PUT `path` with `body` in a thread, held under rule `held`; its request's name once listed.
    let hold = |path: &str, body: &str| {
        let (url, auth2, body) = (gw.url(path), auth.clone(), body.to_string());
        let held = std::thread::spawn(move || {
            agentgate_e2e::curl(
                &["-X", "PUT", "-H", &auth2, "--data", &body, "--max-time", "40"],
                &url,
            )
        });
        let name = agentgate_e2e::wait_for(Duration::from_secs(20), || {
            let out = cli(&gw, Some(&alice), &["list", "--pending"]).stdout;
            out.lines()
                .find(|l| l.contains("orders/held"))
                .and_then(|l| l.split_whitespace().next())
                .map(str::to_string)
        })
        .expect("the held request is listed");
        (held, name)
    };
    let (held, name) = hold("/orders/echo/held", "x");
    let started = std::time::Instant::now();
    let r = cli(&gw, Some(&alice), &["approve", &name]);
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
    let r = held.join().unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    eprintln!(
        "approval to release: {:?} (including the CLI process)",
        started.elapsed()
    );
    let rec = std::fs::read_dir(state.path().join("sessions"))
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.unwrap().path()).ok())
        .collect::<String>();
    assert!(
        rec.contains("\"approval\"") && rec.contains("\"granted\""),
        "approvals are recorded"
    );
    // The bodies of the operations approvers were asked about are on record, as forwarded.
    let bodies: Vec<serde_json::Value> = rec
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        // A form's body is read before the decision (for a method override), so it is in the
        // request event itself; streamed bodies follow in their own event.
        .filter(|e| e["type"] == "http.request.body" || e["type"] == "http.request")
        .map(|e| e["data"]["body"].clone())
        .filter(|b| !b.is_null())
        .collect();
    for id in [1, 3] {
        let recorded = |b: &&serde_json::Value| {
            b["json"] == json!({"id": id}) || b["text"] == format!("{{\"id\": {id}}}")
        };
        assert!(bodies.iter().any(|b| recorded(&b)), "{id}: {bodies:?}");
    }
    assert!(bodies.iter().any(|b| b["text"] == "x"), "{bodies:?}");

    // Held across a reload: released not under the configuration it was decided by (a
    // suspension or a new Deny there would not apply to it), but refused, the grant unspent;
    // sent again, it is decided anew and the approval lets it through.
    let (held, name) = hold("/orders/echo/held-2", "y");
    let reloaded = || {
        gw.metrics()
            .lines()
            .find(|l| l.starts_with("agentgate_config_generation "))
            .map(str::to_string)
    };
    let before = reloaded();
    let file = gw.manifests().join("all.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    let changed = text.replacen(
        "    - name: held\n",
        "    - name: heads\n      action: Allow\n      http: {methods: [HEAD]}\n    - name: held\n",
        1,
    );
    assert_ne!(changed, text);
    let staged = gw.manifests().with_extension("staged");
    std::fs::write(&staged, changed).unwrap();
    std::fs::rename(&staged, &file).unwrap();
    agentgate_e2e::wait_for(Duration::from_secs(15), || (reloaded() != before).then_some(()))
        .expect("the gateway reloads");
    // In force once the new rule answers (the plane is built after the load is counted).
    agentgate_e2e::wait_for(Duration::from_secs(15), || {
        let r = agentgate_e2e::curl(&["-I", "-H", &auth], &gw.url("/orders/echo/head"));
        (r.status == 200).then_some(())
    })
    .expect("the new rule applies");
    let r = cli(&gw, Some(&alice), &["approve", &name]);
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
    let r = held.join().unwrap();
    assert_eq!(r.status, 403, "{r:?}");
    assert!(
        r.body
            .contains("configuration for this identity changed while the operation was held"),
        "{r:?}"
    );
    let again = agentgate_e2e::curl(
        &["-X", "PUT", "-H", &auth, "--data", "y"],
        &gw.url("/orders/echo/held-2"),
    );
    assert_eq!(again.status, 200, "{again:?}");
}

#[test]
fn a_hold_times_out_and_a_grant_survives_a_gateway_restart() {
    let DataPath {
        state: _state,
        upstream: _upstream,
        yaml,
        auth,
        alice,
    } = data_path("2s");
    let mut gw = Gateway::start(&yaml);

    // Nobody decides: the held request is refused when the rule's timeout ends.
    let started = std::time::Instant::now();
    let r = agentgate_e2e::curl(
        &["-X", "PUT", "-H", &auth, "--data", "x"],
        &gw.url("/orders/echo/held"),
    );
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(
        r.json()["type"],
        "https://agentgate.dev/problems/approval-expired"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(10),
        "{waited:?}"
    );

    // Deferred and approved before a restart: the new process honours the grant, once.
    let post = |gw: &Gateway| {
        agentgate_e2e::curl(
            &[
                "-X",
                "POST",
                "-H",
                &auth,
                "-H",
                "Content-Type: application/json",
                "--data",
                "{}",
            ],
            &gw.url("/orders/echo/restart"),
        )
    };
    let r = post(&gw);
    assert_eq!(r.status, 403);
    let name = r.json()["approvalRequest"].as_str().unwrap().to_string();
    assert!(cli(&gw, Some(&alice), &["approve", &name]).ok);
    gw.stop();
    let gw = Gateway::start(&yaml);
    assert_eq!(post(&gw).status, 200, "{}", gw.output());
    assert_eq!(post(&gw).status, 403, "used once");
}
