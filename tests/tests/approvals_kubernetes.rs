//! Just-in-time approvals in Kubernetes mode, end to end. The gateway binary, configured by the
//! operator through the API server, creates ApprovalRequest objects for HTTP requests and SQL
//! statements; approvers decide with the real kubectl, through the `kubectl agentgate` plugin or
//! `kubectl patch`; the operator turns decisions into the phase; held and deferred operations
//! proceed, fail or wait accordingly, and a Once grant is marked Used by the gateway. Runs against
//! the API emulator, or a real cluster with `AGENTGATE_TEST_KUBECONFIG`.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use agentgate_e2e::gateway::EchoUpstream;
use agentgate_e2e::kubernetes::{KubeGateway, Operator};
use agentgate_e2e::oidc::OidcProvider;
use agentgate_e2e::postgres::{PgServer, connect, rt};
use agentgate_e2e::{Reply, binary, curl, free_port, latency_summary, wait_for};
use agentgate_kube_emulator::harness::{TestEnv, kubectl_binary};
use agentgate_kube_emulator::{Config, User};

/// The agent's token subject (oidc-provider's client-credentials tokens carry the client id), and
/// an emulator user of the same name: the requester trying to approve their own request.
const AGENT: &str = "ci-agent";
/// A Window grant's length in these tests (grants end on whole seconds, so one may be up to a
/// second shorter; the operations under it must fit on a busy machine).
const WINDOW_SECS: u64 = 6;
/// How long an operation is retried while the gateway's watch has not yet delivered an approval
/// the plugin has already seen.
const WATCH_LAG: Duration = Duration::from_secs(10);

/// The emulator, the operator, an OIDC provider, an HTTP upstream, PostgreSQL, and the gateway
/// in Kubernetes mode serving both.
struct Cluster {
    env: TestEnv,
    idp: OidcProvider,
    upstream: EchoUpstream,
    _pg: PgServer,
    data: tempfile::TempDir,
    op: Operator,
    gateway: KubeGateway,
    http: u16,
    sql: u16,
}

fn manifests(ns: &str, c: &Cluster0<'_>) -> String {
    let indent = |pem: &str| {
        pem.trim()
            .lines()
            .map(|l| format!("    {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let approval =
        |mode: &str, extra: &str| format!("{{approvers: {{groups: [approvers]}}, mode: {mode}{extra}}}");
    format!(
        r#"apiVersion: agentgate.dev/v1alpha1
kind: AgentGateway
metadata: {{name: gw, namespace: {ns}}}
spec:
  listeners:
    - {{name: http, protocol: HTTP, port: {http}, address: 127.0.0.1}}
    - {{name: pg, protocol: Postgres, port: {sql}, address: 127.0.0.1}}
  recording:
    mode: Required
    storage: {{local: {{path: "{sessions}"}}}}
  approvals: {{defaultTimeout: 60s, maxGrant: 1h}}
---
apiVersion: agentgate.dev/v1alpha1
kind: AgentIdentity
metadata: {{name: ci-agent, namespace: {ns}}}
spec:
  issuer: {issuer}
  audiences: ["api://agentgate"]
  match: {{claims: {{client_id: ci-agent}}}}
---
apiVersion: agentgate.dev/v1alpha1
kind: Connection
metadata: {{name: api, namespace: {ns}}}
spec:
  gatewayRef: {{name: gw}}
  type: HTTP
  endpoint: {upstream}
  credentials: {{scheme: Bearer, secretRef: {{name: api-token, key: token}}}}
  route: {{pathPrefix: /api}}
---
apiVersion: v1
kind: Secret
metadata: {{name: api-token, namespace: {ns}, labels: {{agentgate.dev/credential: "true"}}}}
stringData: {{token: upstream-token}}
---
apiVersion: agentgate.dev/v1alpha1
kind: Connection
metadata: {{name: shop, namespace: {ns}}}
spec:
  gatewayRef: {{name: gw}}
  type: Postgres
  endpoint: postgres://127.0.0.1:{pg_port}/shop
  credentials:
    scheme: PostgresPassword
    username: {role}
    secretRef: {{name: shop-db, key: password}}
  tls:
    caSecretRef: {{name: shop-ca, key: ca.crt}}
---
apiVersion: v1
kind: Secret
metadata: {{name: shop-db, namespace: {ns}, labels: {{agentgate.dev/credential: "true"}}}}
stringData: {{password: "{password}"}}
---
apiVersion: v1
kind: Secret
metadata: {{name: shop-ca, namespace: {ns}, labels: {{agentgate.dev/credential: "true"}}}}
stringData:
  ca.crt: |
{ca}
---
apiVersion: agentgate.dev/v1alpha1
kind: AccessPolicy
metadata: {{name: ci-agent-api, namespace: {ns}}}
spec:
  subjects: {{identities: [ci-agent]}}
  connections: [api]
  rules:
    - {{name: read, action: Allow, http: {{methods: [GET]}}}}
    - name: create-users
      action: RequireApproval
      http: {{methods: [POST], paths: ["/users"]}}
      approval: {defer}
    - name: delete-users-held
      action: RequireApproval
      http: {{methods: [DELETE], paths: ["/users/**"]}}
      approval: {hold}
    - name: delete-groups-briefly
      action: RequireApproval
      http: {{methods: [DELETE], paths: ["/groups/**"]}}
      approval: {hold_short}
    - name: edit-window
      action: RequireApproval
      http: {{methods: [PUT], paths: ["/users/**"]}}
      approval: {window}
    - name: patch-two-approvers
      action: RequireApproval
      http: {{methods: [PATCH], paths: ["/users/**"]}}
      approval: {two}
    - name: group-members-window
      action: RequireApproval
      http: {{methods: [POST], paths: ["/groups/**"]}}
      approval: {long_window}
---
apiVersion: agentgate.dev/v1alpha1
kind: AccessPolicy
metadata: {{name: ci-agent-shop, namespace: {ns}}}
spec:
  subjects: {{identities: [ci-agent]}}
  connections: [shop]
  rules:
    - name: read-public
      action: Allow
      sql: {{statements: [Select, Transaction, Set, Show], tables: ["public.*"]}}
    - name: deletes
      action: RequireApproval
      sql: {{statements: [Delete], tables: ["public.orders", "public.scratch"]}}
      approval: {defer}
    - name: truncate-held
      action: RequireApproval
      sql: {{statements: [Truncate], tables: ["public.scratch"]}}
      approval: {hold}
    - name: truncate-customers-briefly
      action: RequireApproval
      sql: {{statements: [Truncate], tables: ["public.customers"]}}
      approval: {hold_short}
    - name: customer-window
      action: RequireApproval
      sql: {{statements: [Insert], tables: ["public.customers"]}}
      approval: {window}
"#,
        http = c.http,
        sql = c.sql,
        sessions = c.sessions.display(),
        issuer = c.issuer,
        upstream = c.upstream,
        pg_port = c.pg.port,
        role = c.pg.scram.name,
        password = c.pg.scram.password,
        ca = indent(&c.pg.ca_pem),
        defer = approval("Defer", ""),
        hold = approval("Hold", ", timeout: 20s"),
        hold_short = approval("Hold", ", timeout: 2s"),
        window = approval(
            "Defer",
            &format!(", grant: {{type: Window, duration: {WINDOW_SECS}s}}")
        ),
        two = approval("Defer", ", minApprovals: 2"),
        long_window = approval("Defer", ", grant: {type: Window, duration: 10m}"),
    )
}

/// What the manifests are made of.
struct Cluster0<'a> {
    http: u16,
    sql: u16,
    sessions: PathBuf,
    issuer: &'a str,
    upstream: String,
    pg: &'a PgServer,
}

impl Cluster {
    fn start() -> Self {
        let env = TestEnv::start_configured(true, |c: &mut Config| {
            for name in ["alice", "bob", AGENT] {
                c.users.push(User::new(name));
            }
        });
        let ns = env.namespace().to_string();
        let idp = OidcProvider::start();
        let upstream = EchoUpstream::start();
        let pg = PgServer::start();
        pg.psql(&format!(
            "CREATE TABLE public.scratch AS SELECT g AS id FROM generate_series(1, 3) g;
             GRANT ALL ON ALL TABLES IN SCHEMA public TO {role};
             GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role};",
            role = pg.scram.name
        ));
        let data = tempfile::tempdir().expect("temp dir");
        let parts = Cluster0 {
            http: free_port(),
            sql: free_port(),
            sessions: data.path().join("sessions"),
            issuer: &idp.issuer,
            upstream: upstream.url(),
            pg: &pg,
        };
        let (http, sql) = (parts.http, parts.sql);
        let file = env.file("objects.yaml", &manifests(&ns, &parts));
        env.kubectl_ok("admin", &["apply", "-f", &file]);
        // The gateway runs here, outside a pod, listening on loopback as tests do.
        let op = Operator::start_with(
            &env.kubeconfig("operator"),
            &ns,
            "operator-a",
            &["--allow-loopback-listeners"],
            &[],
        );
        let published = wait_for(Duration::from_secs(60), || {
            (jsonpath(
                &env,
                "agentgateway",
                "gw",
                "{.status.conditions[?(@.type==\"Ready\")].status}",
            ) == "True")
                .then_some(())
        });
        assert!(published.is_some(), "no configuration:\n{}", op.process.output());
        let gateway = KubeGateway::start(&env.kubeconfig("gateway"), &ns, "gw", data.path());
        Self {
            env,
            idp,
            upstream,
            _pg: pg,
            data,
            op,
            gateway,
            http,
            sql,
        }
    }

    fn logs(&self) -> String {
        format!(
            "--- gateway\n{}\n--- operator\n{}",
            self.gateway.process.output(),
            self.op.process.output()
        )
    }

    fn token(&self) -> String {
        let answer = self.idp.token("ci-agent", "api://agentgate", None);
        answer["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("{answer}"))
            .to_string()
    }

    /// An HTTP request through the gateway as the agent.
    fn http(&self, method: &str, path: &str, body: Option<&str>) -> Reply {
        let auth = format!("Authorization: Bearer {}", self.token());
        let mut args = vec!["-X", method, "-H", &auth, "-H", "agentgate-reason: INC-7 cleanup"];
        if let Some(b) = body {
            args.extend(["-H", "content-type: application/json", "--data", b]);
        }
        curl(&args, &format!("http://127.0.0.1:{}/api{path}", self.http))
    }

    /// [`Cluster::http`], retried while it is refused for want of the approval of `name`: the
    /// plugin returns once the operator has set Approved, which the gateway learns by its watch.
    fn http_approved(&self, name: &str, method: &str, path: &str, body: Option<&str>) -> Reply {
        let end = Instant::now() + WATCH_LAG;
        loop {
            let r = self.http(method, path, body);
            let waiting = r.status == 403 && problem(&r)["approvalRequest"].as_str() == Some(name);
            if !waiting || Instant::now() > end {
                return r;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn sql_conninfo(&self) -> String {
        format!(
            "host=127.0.0.1 port={} dbname=shop user=ci-agent password={} sslmode=disable",
            self.sql,
            self.token()
        )
    }

    fn get(&self, name: &str, path: &str) -> String {
        jsonpath(&self.env, "approvalrequest", name, path)
    }

    fn phase(&self, name: &str) -> String {
        self.get(name, "{.status.phase}")
    }

    fn eventually(&self, what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
        let ok = wait_for(timeout, || check().then_some(()));
        assert!(ok.is_some(), "timed out waiting for {what}\n{}", self.logs());
    }

    /// `kubectl agentgate ARGS` as `user`: kubectl finds the plugin on the PATH.
    fn plugin(&self, user: &str, args: &[&str]) -> (bool, String) {
        let bin = binary("kubectl-agentgate");
        let dir = bin.parent().expect("target directory");
        let path = format!("{}:{}", dir.display(), std::env::var("PATH").unwrap_or_default());
        let out = Command::new(kubectl_binary())
            .arg("agentgate")
            .args(args)
            .arg("--kubeconfig")
            .arg(self.env.kubeconfig(user))
            .args(["-n", self.env.namespace()])
            .env("PATH", path)
            .output()
            .expect("kubectl runs");
        (out.status.success(), agentgate_e2e::printed(&out))
    }

    fn approve(&self, user: &str, name: &str) -> String {
        let (ok, out) = self.plugin(user, &["approvals", "approve", name, "--reason", "INC-7"]);
        assert!(ok, "approve {name} as {user}: {out}\n{}", self.logs());
        out
    }

    /// A decision keyed by `user`, written directly with `kubectl patch` (as an administrator).
    fn patch_decision(&self, name: &str, user: &str, state: &str) {
        let patch = format!(r#"{{"spec":{{"decisions":{{"{user}":{{"state":"{state}"}}}}}}}}"#);
        self.env.kubectl_ok(
            "admin",
            &["patch", "approvalrequest", name, "--type", "merge", "-p", &patch],
        );
    }

    /// The pending request whose summary contains `needle`, once the gateway has created it.
    fn pending_request(&self, needle: &str) -> String {
        let mut found = String::new();
        self.eventually(
            &format!("a pending request for {needle}"),
            Duration::from_secs(15),
            || {
                let out = self.env.kubectl_ok(
                    "admin",
                    &[
                        "get",
                        "approvalrequests",
                        "-o",
                        "jsonpath={range .items[*]}{.metadata.name} {.status.phase} {.spec.operation.summary}{\"\\n\"}{end}",
                    ],
                );
                // `name phase summary`; the phase is empty until the operator has written it.
                let waiting = out.lines().find_map(|l| {
                    let mut fields = l.splitn(3, ' ');
                    let (name, phase, summary) = (fields.next()?, fields.next()?, fields.next()?);
                    (matches!(phase, "" | "Pending") && summary.contains(needle)).then_some(name)
                });
                match waiting {
                    Some(name) => {
                        found = name.to_string();
                        true
                    }
                    None => false,
                }
            },
        );
        found
    }
}

fn jsonpath(env: &TestEnv, kind: &str, name: &str, path: &str) -> String {
    let out = env.kubectl("admin", &["get", kind, name, "-o", &format!("jsonpath={path}")]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn problem(r: &Reply) -> serde_json::Value {
    serde_json::from_str(&r.body).unwrap_or_else(|_| panic!("not problem+json: {} {}", r.status, r.body))
}

fn request_of(r: &Reply) -> String {
    problem(r)["approvalRequest"]
        .as_str()
        .unwrap_or_else(|| panic!("no approvalRequest in {}", r.body))
        .to_string()
}

fn slug(r: &Reply) -> String {
    problem(r)["type"]
        .as_str()
        .unwrap_or_default()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn http_requests_wait_for_decisions_made_with_kubectl() {
    let c = Cluster::start();
    assert_eq!(c.http("GET", "/users", None).status, 200, "{}", c.logs());

    // Defer: refused at once, naming the ApprovalRequest object the gateway created.
    let create = r#"{"profile":{"login":"eve"}}"#;
    let r = c.http("POST", "/users", Some(create));
    assert_eq!(
        (r.status, slug(&r)),
        (403, "approval-required".into()),
        "{}",
        r.body
    );
    let name = request_of(&r);
    assert_eq!(c.get(&name, "{.spec.identity}"), "ci-agent");
    assert_eq!(c.get(&name, "{.spec.reason}"), "INC-7 cleanup");
    assert_eq!(c.get(&name, "{.spec.policy.rule}"), "create-users");
    assert_eq!(c.get(&name, "{.metadata.labels.agentgate\\.dev/gateway}"), "gw");
    c.eventually("the operator's Pending", Duration::from_secs(10), || {
        c.phase(&name) == "Pending"
    });
    // The identical request again collapses onto the same request.
    assert_eq!(request_of(&c.http("POST", "/users", Some(create))), name);
    let (ok, listed) = c.plugin("approver", &["approvals", "list"]);
    assert!(
        ok && listed.contains(&name) && listed.contains("POST"),
        "{listed}"
    );

    // The requester cannot approve: the plugin refuses, and a decision written under the
    // requester's name anyway is not counted by the operator.
    if c.env.is_emulated() {
        let (ok, out) = c.plugin(AGENT, &["approvals", "approve", &name]);
        assert!(!ok && out.contains("cannot decide its own request"), "{out}");
    }
    c.patch_decision(&name, AGENT, "Approved");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(c.phase(&name), "Pending");
    assert_eq!(c.http("POST", "/users", Some(create)).status, 403);

    // A different operation is a different request; the approved one passes once, then is Used.
    let other = c.http("POST", "/users", Some(r#"{"profile":{"login":"mallory"}}"#));
    assert_ne!(request_of(&other), name);
    let out = c.approve("approver", &name);
    assert!(out.contains("Approved"), "{out}");
    let r = c.http_approved(&name, "POST", "/users", Some(create));
    assert_eq!(r.status, 200, "{}\n{}", r.body, c.logs());
    assert!(c.upstream.requests().contains("POST /users"));
    c.eventually("Used", Duration::from_secs(5), || c.phase(&name) == "Used");
    assert!(!c.get(&name, "{.status.usedAt}").is_empty());
    let again = c.http("POST", "/users", Some(create));
    assert_eq!(again.status, 403, "a Once grant is spent");
    assert_ne!(request_of(&again), name);

    // Hold, approved: the request waits and then goes through.
    let held = {
        let (port, token) = (c.http, c.token());
        std::thread::spawn(move || {
            let auth = format!("Authorization: Bearer {token}");
            curl(
                &["-X", "DELETE", "-H", &auth, "--max-time", "30"],
                &format!("http://127.0.0.1:{port}/api/users/00u1"),
            )
        })
    };
    let name = c.pending_request("DELETE /users/00u1");
    let decided = Instant::now();
    c.approve("alice", &name);
    let r = held.join().expect("held request");
    assert_eq!(r.status, 200, "{}\n{}", r.body, c.logs());
    eprintln!(
        "held request released {:?} after kubectl agentgate approve started",
        decided.elapsed()
    );

    // Hold, denied.
    let held = {
        let (port, token) = (c.http, c.token());
        std::thread::spawn(move || {
            let auth = format!("Authorization: Bearer {token}");
            curl(
                &["-X", "DELETE", "-H", &auth, "--max-time", "30"],
                &format!("http://127.0.0.1:{port}/api/users/00u2"),
            )
        })
    };
    let name = c.pending_request("DELETE /users/00u2");
    let (ok, out) = c.plugin("bob", &["approvals", "deny", &name, "--reason", "not today"]);
    assert!(ok && out.contains("Denied"), "{out}");
    let r = held.join().expect("held request");
    assert_eq!(
        (r.status, slug(&r)),
        (403, "approval-denied".into()),
        "{}",
        r.body
    );
    assert_eq!(c.get(&name, "{.spec.decisions.bob.reason}"), "not today");

    // Hold, nobody decides within the rule's 2 s.
    let started = Instant::now();
    let r = c.http("DELETE", "/groups/g1", None);
    assert_eq!(
        (r.status, slug(&r)),
        (403, "approval-expired".into()),
        "{}",
        r.body
    );
    assert!(started.elapsed() >= Duration::from_secs(2));

    // Two approvers: one approval leaves it pending, the second approves.
    let r = c.http("PATCH", "/users/00u3", Some("{}"));
    let name = request_of(&r);
    c.patch_decision(&name, "alice", "Approved");
    c.eventually("one counted approval", Duration::from_secs(10), || {
        c.get(&name, "{.status.approvals}") == "1"
    });
    assert_eq!(c.phase(&name), "Pending");
    assert_eq!(c.http("PATCH", "/users/00u3", Some("{}")).status, 403);
    c.patch_decision(&name, "bob", "Approved");
    c.eventually("Approved", Duration::from_secs(10), || {
        c.phase(&name) == "Approved"
    });
    c.eventually("the gateway to see it", Duration::from_secs(5), || {
        c.http("PATCH", "/users/00u3", Some("{}")).status == 200
    });

    // Window: any PUT under the rule passes until the window ends, then a new request is needed.
    let r = c.http("PUT", "/users/00u4", Some("{}"));
    let name = request_of(&r);
    c.approve("approver", &name);
    assert_eq!(
        c.http_approved(&name, "PUT", "/users/00u4", Some("{}")).status,
        200,
        "{}",
        c.logs()
    );
    assert_eq!(c.http("PUT", "/users/00u5", Some("{}")).status, 200);
    std::thread::sleep(Duration::from_secs(WINDOW_SECS + 1));
    let r = c.http("PUT", "/users/00u4", Some("{}"));
    assert_eq!(r.status, 403);
    assert_ne!(request_of(&r), name, "after the window a new approval is needed");
    c.eventually("the window's expiry", Duration::from_secs(10), || {
        c.phase(&name) == "Expired"
    });

    // Withdrawal: the approver's own deny ends a Window at once, and nothing approves it again.
    let r = c.http("POST", "/groups/g2/members", Some("{}"));
    let name = request_of(&r);
    c.approve("approver", &name);
    assert_eq!(
        c.http_approved(&name, "POST", "/groups/g2/members", Some("{}"))
            .status,
        200,
        "{}",
        c.logs()
    );
    let (ok, out) = c.plugin("approver", &["approvals", "approve", &name]);
    assert!(!ok && out.contains("`deny` withdraws the grant"), "{out}");
    let (ok, out) = c.plugin("approver", &["approvals", "deny", &name, "--reason", "revoked"]);
    assert!(ok && out.contains("approval withdrawn; now Denied"), "{out}");
    assert_eq!(c.get(&name, "{.spec.decisions.approver.reason}"), "revoked");
    c.eventually("the gateway to see the withdrawal", WATCH_LAG, || {
        let r = c.http("POST", "/groups/g3/members", Some("{}"));
        r.status == 403 && request_of(&r) != name
    });
    let (ok, out) = c.plugin("bob", &["approvals", "approve", &name]);
    assert!(!ok && out.contains("is Denied"), "{out}");

    // Decisions are counted in the gateway's metrics.
    let metrics = c.gateway.metrics();
    assert!(
        metrics.contains("approval_decision_seconds_count{decision=\"approved\"}"),
        "{metrics}"
    );
    assert!(
        !c.gateway.process.output().contains("upstream-token"),
        "the upstream credential leaked into the log"
    );
}

/// The SQLSTATE and message of a refused statement, and the ApprovalRequest it names.
/// Runs `sql`, retried while it is refused for want of the approval of `name` (see
/// [`Cluster::http_approved`]).
async fn execute_approved(
    db: &tokio_postgres::Client,
    name: &str,
    sql: &str,
) -> Result<(), tokio_postgres::Error> {
    let end = Instant::now() + WATCH_LAG;
    loop {
        match db.batch_execute(sql).await {
            Err(e) if Instant::now() < end && e.as_db_error().is_some() && refused(&e).1 == name => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            r => return r,
        }
    }
}

fn refused(e: &tokio_postgres::Error) -> (String, String) {
    let d = e
        .as_db_error()
        .unwrap_or_else(|| panic!("not a database error: {e}"));
    let name = d
        .message()
        .split("ApprovalRequest ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_default()
        .to_string();
    (d.code().code().to_string(), name)
}

#[test]
fn sql_statements_wait_for_decisions_and_survive_a_gateway_restart() {
    let mut c = Cluster::start();
    let conninfo = c.sql_conninfo();
    rt().block_on(async {
        let db = connect(&conninfo).await;
        let count = |sql: &'static str| {
            let db = &db;
            async move { db.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
        };
        let orders = count("SELECT count(*) FROM orders").await;

        // Defer, then retry: the approved statement runs once; a different one is not covered.
        let sql = "/* reason: INC-9 */ DELETE FROM orders WHERE id = 4";
        let (code, name) = refused(&db.batch_execute(sql).await.unwrap_err());
        assert_eq!(code, "42501");
        assert_eq!(c.get(&name, "{.spec.reason}"), "INC-9");
        assert_eq!(c.get(&name, "{.spec.operation.kind}"), "SQL");
        c.approve("approver", &name);
        let (_, other) = refused(
            &db.batch_execute("DELETE FROM orders WHERE id = 3")
                .await
                .unwrap_err(),
        );
        assert_ne!(other, name, "a different statement needs its own approval");
        execute_approved(&db, &name, sql)
            .await
            .unwrap_or_else(|e| panic!("approved statement refused: {e}\n{}", c.logs()));
        assert_eq!(count("SELECT count(*) FROM orders").await, orders - 1);
        let (code, again) = refused(&db.batch_execute(sql).await.unwrap_err());
        assert_eq!(code, "42501", "a Once grant is used once");
        assert_ne!(again, name);
        c.eventually("Used", Duration::from_secs(5), || c.phase(&name) == "Used");

        // Window, expiring mid-session.
        let insert = "INSERT INTO customers (name, email) VALUES ('W', 'w@example.com')";
        let (_, name) = refused(&db.batch_execute(insert).await.unwrap_err());
        c.approve("approver", &name);
        execute_approved(&db, &name, insert).await.unwrap();
        db.batch_execute(insert).await.unwrap();
        tokio::time::sleep(Duration::from_secs(WINDOW_SECS + 1)).await;
        let (_, after) = refused(&db.batch_execute(insert).await.unwrap_err());
        assert_ne!(after, name, "after the window a new approval is needed");
        // The session stays usable after every refusal.
        assert_eq!(count("SELECT 1::bigint").await, 1);

        // Hold, nobody decides within 2 s: a clear error, and the session goes on.
        let e = db.batch_execute("TRUNCATE customers").await.unwrap_err();
        let message = e
            .as_db_error()
            .map(|d| d.message().to_string())
            .unwrap_or_default();
        assert!(
            message.contains("not decided in time") || message.contains("expired"),
            "{message}"
        );
        assert_eq!(count("SELECT 1::bigint").await, 1);
    });

    // Hold, approved and denied, on separate sessions while an approver decides.
    for (approve, user) in [(true, "alice"), (false, "bob")] {
        let conninfo = c.sql_conninfo();
        let held = std::thread::spawn(move || {
            rt().block_on(async {
                let db = connect(&conninfo).await;
                let r = db.batch_execute("TRUNCATE scratch").await.map_err(|e| {
                    e.as_db_error()
                        .map(|d| d.message().to_string())
                        .unwrap_or_default()
                });
                let usable = db.query_one("SELECT 1", &[]).await.is_ok();
                (r, usable)
            })
        });
        let name = c.pending_request("TRUNCATE scratch");
        if approve {
            c.approve(user, &name);
        } else {
            let (ok, out) = c.plugin(user, &["approvals", "deny", &name]);
            assert!(ok, "{out}");
        }
        let (result, usable) = held.join().expect("held session");
        assert!(usable, "the session is usable after the held statement");
        match (approve, result) {
            (true, Ok(())) => {}
            (false, Err(m)) => assert!(m.contains("denied"), "{m}"),
            (a, r) => panic!("approve={a}: {r:?}\n{}", c.logs()),
        }
    }

    // A restart keeps a pending and a granted request: they live in the API server.
    let conninfo = c.sql_conninfo();
    let (pending, granted) = rt().block_on(async {
        let db = connect(&conninfo).await;
        let (_, pending) = refused(
            &db.batch_execute("DELETE FROM scratch WHERE id = 2")
                .await
                .unwrap_err(),
        );
        let (_, granted) = refused(
            &db.batch_execute("DELETE FROM scratch WHERE id = 1")
                .await
                .unwrap_err(),
        );
        (pending, granted)
    });
    c.approve("approver", &granted);
    c.gateway.process.terminate(Duration::from_secs(10));
    c.gateway = KubeGateway::start(
        &c.env.kubeconfig("gateway"),
        c.env.namespace(),
        "gw",
        c.data.path(),
    );
    let (ok, listed) = c.plugin("approver", &["approvals", "list"]);
    assert!(ok && listed.contains(&pending), "{listed}");
    let conninfo = c.sql_conninfo();
    rt().block_on(async {
        let db = connect(&conninfo).await;
        execute_approved(&db, &granted, "DELETE FROM scratch WHERE id = 1")
            .await
            .unwrap_or_else(|e| panic!("the grant did not survive the restart: {e}\n{}", c.logs()));
        let (_, same) = refused(
            &db.batch_execute("DELETE FROM scratch WHERE id = 2")
                .await
                .unwrap_err(),
        );
        assert_eq!(same, pending, "the pending request survived the restart");
        c.approve("approver", &pending);
        execute_approved(&db, &pending, "DELETE FROM scratch WHERE id = 2")
            .await
            .unwrap();
    });
}

/// Benchmark (run by `bench/approvals.sh`, not in CI): decision → held operation released in
/// Kubernetes mode, over many rounds. The clock starts when `kubectl patch` writing the decision
/// starts, so the figure includes kubectl's own start-up, the operator's evaluation and the
/// gateway's watch.
#[test]
#[ignore = "benchmark: bench/approvals.sh runs it"]
fn kubernetes_decision_to_release_latency() {
    let rounds: usize = std::env::var("AGENTGATE_APPROVAL_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let c = Cluster::start();
    let mut samples = Vec::new();
    for i in 0..rounds {
        let (port, token) = (c.http, c.token());
        let (tx, rx) = std::sync::mpsc::channel();
        let held = std::thread::spawn(move || {
            let auth = format!("Authorization: Bearer {token}");
            let r = curl(
                &["-X", "DELETE", "-H", &auth, "--max-time", "30"],
                &format!("http://127.0.0.1:{port}/api/users/bench-{i}"),
            );
            let _ = tx.send(Instant::now());
            r
        });
        let name = c.pending_request(&format!("DELETE /users/bench-{i}"));
        let started = Instant::now();
        c.patch_decision(&name, "alice", "Approved");
        let released = rx.recv_timeout(Duration::from_secs(30)).expect("released");
        assert_eq!(held.join().expect("held").status, 200);
        samples.push(released.duration_since(started));
    }
    println!(
        "kubernetes approvals: {} decisions; decision -> release {} (includes kubectl's own run time)",
        samples.len(),
        latency_summary(&mut samples)
    );
}

/// What a data path asks for a DELETE under a Once rule.
fn once_ask() -> agentgate::approval::Ask {
    use agentgate_crds::approval::OperationKind;
    use agentgate_crds::policy::Grant;
    agentgate::approval::Ask {
        identity: "ci-agent".into(),
        requester: AGENT.into(),
        connection: "api".into(),
        kind: OperationKind::Http,
        summary: "DELETE /users/00u9".into(),
        fingerprint: "5eed5eed5eed5eed".into(),
        detail: Some("query: force=true".into()),
        policy: "ci-agent-api".into(),
        rule: "delete-users-held".into(),
        rule_digest: "0".repeat(32),
        grant: Grant::default(),
        approvers: agentgate_crds::policy::Approvers {
            users: vec![],
            groups: vec!["approvers".into()],
        },
        min_approvals: 1,
        reason: None,
        timeout: Duration::from_secs(60),
        grant_limit: Duration::from_secs(3600),
        unshown: None,
    }
}

/// Two gateway replicas (two stores following the same API server) see one approved Once grant;
/// asked at the same moment, exactly one may spend it: the Used write is conditional on the
/// version each read, so the loser gets a conflict and a new request instead.
#[test]
fn two_replicas_cannot_both_spend_one_once_grant() {
    use agentgate::approval::{Approvals, Ticket, kubernetes, unix_now};
    let env = TestEnv::start();
    let ns = env.namespace().to_string();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let (a, b) = runtime.block_on(async {
        let kubeconfig = kube::config::Kubeconfig::read_from(env.kubeconfig("gateway")).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .unwrap();
        let client = kube::Client::try_from(config).unwrap();
        let a = Approvals::kubernetes(client.clone(), &ns, "gw");
        let b = Approvals::kubernetes(client, &ns, "gw");
        for store in [&a, &b] {
            let metrics = agentgate::metrics::Metrics::new();
            tokio::spawn(kubernetes::sync(store.clone(), metrics, shutdown.clone()));
        }
        (a, b)
    });
    let ask = once_ask();
    let first = runtime.block_on(a.ask(&ask, unix_now())).unwrap();
    let Ticket::Pending { name, created: true } = first else {
        panic!("expected a new request, got {first:?}");
    };
    // Replica b collapses onto the same request once its watch has it.
    let seen = wait_for(Duration::from_secs(10), || b.get(&name, unix_now()).map(|_| ()));
    assert!(seen.is_some(), "replica b never saw {name}");
    // The detail an approver reads is stored with the request (the schema keeps it).
    let stored = env.kubectl_ok(
        "admin",
        &[
            "get",
            "approvalrequest",
            &name,
            "-o",
            "jsonpath={.spec.operation.detail}",
        ],
    );
    assert_eq!(stored, "query: force=true");
    assert_eq!(
        runtime.block_on(b.ask(&ask, unix_now())).unwrap(),
        Ticket::Pending {
            name: name.clone(),
            created: false
        }
    );
    // A verdict alone, which any writer of the status subresource (another gateway's service
    // account) could set, grants nothing: the request's decisions must back it.
    let until = agentgate::approval::format_time(unix_now() + 600);
    let status = format!(r#"{{"status":{{"phase":"Approved","approvals":1,"grantExpiresAt":"{until}"}}}}"#);
    let patch_status = |patch: &str| {
        env.kubectl_ok(
            "admin",
            &[
                "patch",
                "approvalrequest",
                &name,
                "--subresource",
                "status",
                "--type",
                "merge",
                "-p",
                patch,
            ],
        )
    };
    let set_status = || patch_status(&status);
    set_status();
    let forged = wait_for(Duration::from_secs(10), || {
        a.get(&name, unix_now())
            .and_then(|r| r.status)
            .is_some_and(|st| st.phase == agentgate_crds::approval::ApprovalPhase::Approved)
            .then_some(())
    });
    assert!(forged.is_some(), "replica a never saw the verdict");
    let t = runtime.block_on(a.ask(&ask, unix_now())).unwrap();
    assert!(
        !matches!(t, Ticket::Granted { .. }),
        "a bare verdict granted: {t:?}"
    );
    // The request goes back to Pending (the CRD admits no approval added to an Approved one),
    // an approver decides (admission would check who may write it; no chart here), then the
    // operator's verdict again.
    patch_status(r#"{"status":{"phase":"Pending"}}"#);
    env.kubectl_ok(
        "admin",
        &[
            "patch",
            "approvalrequest",
            &name,
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"decisions":{"alice":{"state":"Approved"}}}}"#,
        ],
    );
    set_status();
    let approved = |s: &Approvals| {
        s.get(&name, unix_now()).is_some_and(|r| {
            !r.spec.decisions.is_empty()
                && r.status
                    .is_some_and(|st| st.phase == agentgate_crds::approval::ApprovalPhase::Approved)
        })
    };
    let both = wait_for(Duration::from_secs(10), || {
        (approved(&a) && approved(&b)).then_some(())
    });
    assert!(both.is_some(), "the replicas did not both see the approval");
    let (ra, rb) = runtime.block_on(async {
        let now = unix_now();
        tokio::join!(a.ask(&ask, now), b.ask(&ask, now))
    });
    let granted = [ra.unwrap(), rb.unwrap()]
        .into_iter()
        .filter(|t| matches!(t, Ticket::Granted { name: n } if *n == name))
        .count();
    assert_eq!(granted, 1, "a Once grant was spent by both replicas, or by none");
    assert_eq!(
        jsonpath(&env, "approvalrequest", &name, "{.status.phase}"),
        "Used"
    );
    let _ = stop.send(true);
}
