//! PostgreSQL through the gateway, end to end: a real PostgreSQL (initdb by the harness), the
//! real OIDC provider minting the agent's token (presented as the password), and real clients
//! (psql, tokio-postgres, pgbench, and a raw socket for protocol abuse) talking to the gateway's
//! Postgres listeners. The upstream password is a canary searched for in every output.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use agentgate::identity::mint::SigningKey;
use agentgate_e2e::gateway::{Gateway, ServingCert};
use agentgate_e2e::oidc::OidcProvider;
use agentgate_e2e::postgres::{PgServer, connect, psql_conninfo, rt};
use agentgate_e2e::{binary, free_port};

/// The Connection's stored password: must never reach the agent, a log or a recording.
const CANARY: &str = "00CANARY-pg-password-5d1e";
/// Issuer of the human approvers' tokens (a static key).
const HUMANS: &str = "https://login.example/";

/// The approvers' signing key, the same for the whole test binary.
fn approver_key() -> &'static SigningKey {
    static KEY: std::sync::OnceLock<SigningKey> = std::sync::OnceLock::new();
    KEY.get_or_init(|| SigningKey::ec("humans").unwrap())
}

/// A human approver's token.
fn approver_token(sub: &str, groups: &[&str]) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    approver_key().sign(&serde_json::json!({
        "iss": HUMANS, "sub": sub, "aud": "agentgate-approvals", "azp": "agentgate-cli",
        "groups": groups, "iat": now, "exp": now + 600,
    }))
}

struct Setup {
    idp: OidcProvider,
    pg: PgServer,
    gw: Gateway,
    /// The plaintext listener (loopback only).
    plain: u16,
    dir: tempfile::TempDir,
}

fn manifests(
    issuer: &str,
    pg: &PgServer,
    cert: &ServingCert,
    plain: u16,
    role: &str,
    upstream_port: u16,
) -> String {
    let indent = |pem: &str| {
        pem.trim()
            .lines()
            .map(|l| format!("    {l}"))
            .collect::<Vec<_>>()
            .join("\n")
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
    - {{name: pg, protocol: Postgres, port: ${{LISTEN_PORT}}, address: 127.0.0.1, tls: {{secretName: gw-tls}}}}
    - {{name: pg-plain, protocol: Postgres, port: {plain}, address: 127.0.0.1}}
  recording:
    mode: Required
    storage: {{local: {{path: "${{SESSIONS}}"}}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: gw-tls, namespace: e2e}}
type: kubernetes.io/tls
stringData:
  tls.crt: |
{crt}
  tls.key: |
{key}
---
apiVersion: agentgate.dev/v1alpha1
kind: AgentIdentity
metadata: {{name: ci-agent, namespace: e2e}}
spec:
  issuer: {issuer}
  audiences: ["api://agentgate"]
  match: {{claims: {{client_id: ci-agent}}}}
  groups: {{static: [ai-agents]}}
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
  keys: {{secretRef: {{name: approver-keys, key: jwks}}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: approver-keys, namespace: e2e}}
stringData:
  jwks: '{approver_jwks}'
---
apiVersion: agentgate.dev/v1alpha1
kind: Connection
metadata: {{name: shop, namespace: e2e}}
spec:
  gatewayRef: {{name: gw}}
  type: Postgres
  endpoint: postgres://127.0.0.1:{upstream_port}/shop
  credentials:
    scheme: PostgresPassword
    username: {role}
    secretRef: {{name: shop-db, key: password}}
  tls:
    caSecretRef: {{name: shop-ca, key: ca.crt}}
---
apiVersion: v1
kind: Secret
metadata: {{name: shop-db, namespace: e2e}}
stringData: {{password: "{CANARY}"}}
---
apiVersion: v1
kind: Secret
metadata: {{name: shop-ca, namespace: e2e}}
stringData:
  ca.crt: |
{ca}
---
apiVersion: agentgate.dev/v1alpha1
kind: AccessPolicy
metadata: {{name: ci-agent-shop, namespace: e2e}}
spec:
  subjects: {{identities: [ci-agent]}}
  connections: [shop]
  rules:
    - name: read-public
      action: Allow
      sql:
        statements: [Select, Transaction, Show, Explain, Prepare, Execute, Deallocate, Set, Listen]
        tables: ["public.*"]
    - name: big-capped
      action: Allow
      sql:
        statements: [Select, Copy]
        tables: ["public.big_capped"]
        rowLimit: 1000
    - name: write-orders
      action: Allow
      sql:
        statements: [Insert, Update, Copy]
        tables: ["public.orders"]
    - name: pgbench
      action: Allow
      sql:
        statements: [Select, Insert, Update, Transaction]
        tables: ["public.pgbench_*"]
    - name: no-unbounded-writes
      action: Deny
      description: UPDATE and DELETE need a WHERE clause.
      sql:
        withoutWhere: true
    - name: no-billing
      action: Deny
      description: Agents never touch billing.
      sql:
        tables: ["billing.*"]
    - name: read-catalog
      action: Allow
      sql:
        statements: [Select]
        tables: ["pg_catalog.*"]
    - name: no-pg-secret
      action: Deny
      sql:
        tables: ["public.pg_secret"]
    - name: deletes-need-approval
      action: RequireApproval
      sql:
        statements: [Delete]
        tables: ["public.orders"]
      approval:
        approvers: {{groups: [dba]}}
        mode: Defer
    - name: truncate-held
      action: RequireApproval
      sql:
        statements: [Truncate]
        tables: ["public.big_capped"]
      approval:
        approvers: {{groups: [dba]}}
        mode: Hold
        timeout: 30s
    - name: copy-in-approval
      action: RequireApproval
      sql:
        statements: [Copy]
        tables: ["public.suppliers"]
      approval:
        approvers: {{groups: [dba]}}
        mode: Defer
    - name: customer-window
      action: RequireApproval
      sql:
        statements: [Insert]
        tables: ["public.customers"]
      approval:
        approvers: {{groups: [dba]}}
        mode: Defer
        grant: {{type: Window, duration: 6s}}
  masking:
    - columns: ["public.customers.email"]
      strategy: Redact
    - columns: ["public.leads_eu.contact"]
      strategy: Redact
    - detectors: [CreditCard]
      strategy: Redact
    - jsonFields: ["$..ssn"]
      strategy: Redact
"#,
        crt = indent(&cert.cert_pem),
        key = indent(&cert.key_pem),
        ca = indent(&pg.ca_pem),
        approver_jwks = SigningKey::jwks(&[approver_key()]),
    )
}

fn set_password(pg: &PgServer, role: &str) {
    // The harness gives the roles their own passwords; the test plants the canary instead.
    pg.psql(&format!(
        "SET password_encryption = '{}'; ALTER ROLE {role} PASSWORD '{CANARY}';",
        if role == pg.md5.name {
            "md5"
        } else {
            "scram-sha-256"
        }
    ));
}

fn setup_with(role_md5: bool) -> Setup {
    let idp = OidcProvider::start();
    let pg = PgServer::start();
    let role = if role_md5 {
        pg.md5.name.clone()
    } else {
        pg.scram.name.clone()
    };
    set_password(&pg, &role);
    pg.psql(&format!(
        "CREATE TABLE public.big_capped AS SELECT g AS id FROM generate_series(1, 5000) g;
         GRANT ALL ON ALL TABLES IN SCHEMA public, billing TO {role};
         GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role};
         GRANT USAGE, CREATE ON SCHEMA public, billing TO {role};"
    ));
    let cert = ServingCert::generate();
    let plain = free_port();
    let gw = Gateway::start(&manifests(&idp.issuer, &pg, &cert, plain, &role, pg.port));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), &cert.ca_pem).unwrap();
    Setup {
        idp,
        pg,
        gw,
        plain,
        dir,
    }
}

fn token(idp: &OidcProvider) -> String {
    let answer = idp.token("ci-agent", "api://agentgate", None);
    answer["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("{answer}"))
        .to_string()
}

impl Setup {
    /// psql over TLS, verifying the gateway's certificate.
    fn psql(&self, sql: &str) -> Result<String, String> {
        let conninfo = format!(
            "host=127.0.0.1 port={} dbname=shop user=ci-agent sslmode=verify-full sslrootcert={}",
            self.gw.port,
            self.dir.path().join("ca.pem").display()
        );
        psql_conninfo(&conninfo, Some(&token(&self.idp)), sql)
    }

    fn plain_conninfo(&self, token: &str) -> String {
        format!(
            "host=127.0.0.1 port={} dbname=shop user=ci-agent password={token} sslmode=disable",
            self.plain
        )
    }

    /// Everything a secret could leak into.
    fn assert_no_canary(&self) {
        let out = self.gw.output();
        assert!(!out.contains(CANARY), "canary in the gateway log");
        assert!(!self.gw.recordings().contains(CANARY), "canary in a recording");
        assert!(!self.gw.metrics().contains(CANARY), "canary in metrics");
    }
}

/// What a simple query returns: each row's values joined by `|` (NULL as nothing), rows by
/// newlines.
async fn simple_rows(c: &tokio_postgres::Client, sql: &str) -> String {
    let rows = c.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("").to_string())
                    .collect::<Vec<_>>()
                    .join("|"),
            ),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs `sql` until it succeeds: the manifest edit that allows it takes effect with the
/// gateway's next reload. Fails after 30 s, naming `what` never applied.
async fn once_reloaded(c: &tokio_postgres::Client, sql: &str, what: &str) {
    let until = Instant::now() + Duration::from_secs(30);
    while let Err(e) = c.batch_execute(sql).await {
        assert!(Instant::now() < until, "{what} never applied: {e}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn db_error(e: &tokio_postgres::Error) -> (String, String) {
    let d = e
        .as_db_error()
        .unwrap_or_else(|| panic!("not a database error: {e}"));
    (d.code().code().to_string(), d.message().to_string())
}

/// A `SQL_ASCII` (legacy) database holding Latin-1 bytes, through the gateway, which pins the
/// client encoding to UTF8: the server itself refuses to send bytes that are not UTF-8 (22021),
/// and the error reaches the client as the server's, with the session kept usable. (The
/// gateway reads a server message that is not UTF-8 with replacement characters all the same:
/// `error_response`'s unit test.)
#[test]
fn a_sql_ascii_database_holding_latin1_bytes_keeps_the_session() {
    let idp = OidcProvider::start();
    let pg = PgServer::start();
    let role = pg.scram.name.clone();
    set_password(&pg, &role);
    pg.psql_in(
        "postgres",
        &format!(
            "CREATE DATABASE legacy ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' \
             TEMPLATE template0 OWNER {role}"
        ),
    )
    .unwrap();
    pg.psql_in(
        "legacy",
        &format!(
            "CREATE TABLE public.notes (body text);
             INSERT INTO public.notes VALUES (E'caf\\xe9 4111 1111 1111 1111');
             GRANT ALL ON public.notes TO {role};"
        ),
    )
    .unwrap();
    let cert = ServingCert::generate();
    let plain = free_port();
    let manifests = manifests(&idp.issuer, &pg, &cert, plain, &role, pg.port);
    let gw =
        Gateway::start(&manifests.replace(&format!("{}/shop\n", pg.port), &format!("{}/legacy\n", pg.port)));
    let tok = token(&idp);
    let conninfo =
        format!("host=127.0.0.1 port={plain} dbname=shop user=ci-agent password={tok} sslmode=disable");
    rt().block_on(async {
        let c = connect(&conninfo).await;
        let e = c.simple_query("SELECT body FROM notes").await.unwrap_err();
        let (code, message) = db_error(&e);
        assert_eq!(code, "22021", "{e}");
        assert!(message.contains("invalid byte sequence"), "{message}");
        assert_eq!(simple_rows(&c, "SELECT count(*) FROM notes").await, "1");
        assert_eq!(
            simple_rows(&c, "SELECT octet_length(body) FROM notes").await,
            "24"
        );
    });
    assert!(gw.recordings().contains("22021"));
}

/// SECURITY.md, SSL negotiation: a server on loopback that declines TLS is used in plaintext
/// only when the Connection does not ask for TLS; where it sets `spec.tls`, the answer `N` is a
/// downgrade (or another server on the port) and the session is refused.
#[test]
fn a_server_declining_tls_is_refused_where_the_connection_asks_for_it() {
    let idp = OidcProvider::start();
    let pg = PgServer::options().conf("ssl = off").start();
    let role = pg.scram.name.clone();
    set_password(&pg, &role);
    let cert = ServingCert::generate();
    let tok = token(&idp);
    let tls_block = "  tls:\n    caSecretRef: {name: shop-ca, key: ca.crt}\n";
    for refused in [true, false] {
        let plain = free_port();
        let mut manifest = manifests(&idp.issuer, &pg, &cert, plain, &role, pg.port);
        assert!(manifest.contains(tls_block), "{manifest}");
        if !refused {
            manifest = manifest.replace(tls_block, "");
        }
        let gw = Gateway::start(&manifest);
        let conninfo = format!("host=127.0.0.1 port={plain} dbname=shop user=ci-agent sslmode=disable");
        let answer = psql_conninfo(&conninfo, Some(&tok), "SELECT count(*) FROM orders");
        if refused {
            let err = answer.expect_err("plaintext to a Connection that sets spec.tls");
            assert!(err.contains("does not offer TLS"), "{err}\n{}", gw.output());
        } else {
            assert_eq!(answer.unwrap_or_else(|e| panic!("{e}\n{}", gw.output())), "4");
        }
        assert!(!gw.output().contains(CANARY));
    }
}

#[test]
fn psql_over_tls_decides_masks_and_records() {
    let s = setup_with(false);
    // Allowed read: the email column is masked by column rule, card numbers by detector.
    let out = s
        .psql("SELECT name, email FROM customers ORDER BY id")
        .unwrap_or_else(|e| panic!("{e}\n{}", s.gw.output()));
    assert!(out.contains("Ada Lovelace"), "{out}");
    assert!(!out.contains("ada@example.com"), "column rule masks email: {out}");
    let out = s.psql("SELECT card_number FROM orders ORDER BY id").unwrap();
    assert!(
        !out.contains("4111 1111 1111 1111") && !out.contains("4111111111111111"),
        "{out}"
    );
    // Through a view, an expression and a star the email column stays masked.
    for sql in [
        "SELECT email FROM customer_contacts",
        "SELECT email || '' AS e FROM customers",
        "SELECT upper(email) FROM customers",
        "SELECT * FROM customers",
        "SELECT row_to_json(c) FROM customers c",
    ] {
        let out = s.psql(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert!(
            !out.to_lowercase().contains("ada@example.com"),
            "{sql} leaked the masked column: {out}"
        );
    }
    // JSON field rules reach json and jsonb values in psql's text format.
    for cast in ["json", "jsonb"] {
        let sql = format!(r#"SELECT '{{"name": "Ada", "ids": {{"ssn": "078-05-1120"}}}}'::{cast} AS doc"#);
        let out = s.psql(&sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert!(
            out.contains("Ada") && !out.contains("078-05-1120"),
            "{sql}: {out}"
        );
    }
    // Denied: the error names policy and rule, SQLSTATE 42501.
    let err = s.psql("UPDATE orders SET status = 'x'").unwrap_err();
    assert!(
        err.contains("ci-agent-shop") && err.contains("no-unbounded-writes"),
        "{err}"
    );
    let err = s.psql("SELECT * FROM billing.invoices").unwrap_err();
    assert!(err.contains("no-billing"), "{err}");
    // Unqualified names are decided as public.*, and the session resolves them there too,
    // whatever search_path the connection's role has (else this would read billing.invoices).
    s.pg.psql(&format!(
        "ALTER ROLE {} SET search_path = billing, public",
        s.pg.scram.name
    ));
    let err = s.psql("SELECT * FROM invoices").unwrap_err();
    assert!(err.contains("does not exist"), "{err}");
    s.pg.psql(&format!("ALTER ROLE {} RESET search_path", s.pg.scram.name));
    // Cursors and SQL-level prepared statements: FETCH and EXECUTE name no column, yet what
    // they return is masked as the query they stand for.
    for sql in [
        "BEGIN; DECLARE c CURSOR FOR SELECT email || '' AS e FROM customers; FETCH ALL FROM c; COMMIT;",
        "BEGIN; DECLARE c CURSOR WITH HOLD FOR SELECT lower(email) FROM customers; COMMIT; FETCH 2 FROM c; MOVE ABSOLUTE 0 IN c; FETCH c;",
        "PREPARE p AS SELECT email || '' AS e FROM customers; EXECUTE p;",
    ] {
        let out = s.psql(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert!(
            !out.contains("@example.com"),
            "{sql} leaked the masked column: {out}"
        );
        assert!(out.contains("REDACTED"), "{sql}: {out}");
    }
    // Server messages quote values: masked by the detectors, and withheld when the statement
    // reads a masked column (a column rule's values may match no detector).
    let err = s
        .psql("SELECT email::int FROM customers WHERE id = 1")
        .unwrap_err();
    assert!(
        err.contains("22P02") || err.contains("withheld"),
        "the SQLSTATE or the reason remains: {err}"
    );
    assert!(!err.contains("ada@example.com"), "{err}");
    let err = s
        .psql("SELECT name::int + 0 * length(email) FROM customers WHERE id = 1")
        .unwrap_err();
    assert!(!err.contains("Ada Lovelace") && err.contains("withheld"), "{err}");
    let err = s.psql("SELECT '4111 1111 1111 1111'::int").unwrap_err();
    // (psql then quotes its own statement, by the error's position.)
    let message = err.lines().find(|l| l.contains("ERROR")).unwrap_or_default();
    assert!(
        !message.contains("4111 1111") && message.contains("REDACTED"),
        "{err}"
    );
    let err = s.psql("DELETE FROM orders WHERE id = 1").unwrap_err();
    assert!(
        err.contains("deletes-need-approval") && err.to_lowercase().contains("approv"),
        "{err}"
    );
    // Nothing reached the database.
    assert_eq!(s.pg.psql("SELECT count(*) FROM orders WHERE status = 'x'"), "0");
    assert_eq!(s.pg.psql("SELECT count(*) FROM orders"), "4");
    // Unparseable statements are refused, not forwarded.
    let err = s.psql("SELEC 1").unwrap_err();
    assert!(err.contains("cannot parse"), "{err}");

    // COPY: FROM STDIN on an allowed table works; TO STDOUT passes the detectors; a table with
    // masked columns cannot be copied out; COPY PROGRAM is refused.
    let csv = s.dir.path().join("orders.csv");
    std::fs::write(&csv, "1,1.50\n2,2.50\n").unwrap();
    s.psql(&format!(
        "\\copy orders (customer_id, total) FROM '{}' WITH (FORMAT csv)",
        csv.display()
    ))
    .unwrap_or_else(|e| panic!("{e}\n{}", s.gw.output()));
    assert_eq!(s.pg.psql("SELECT count(*) FROM orders"), "6");
    let out = s
        .psql("COPY (SELECT card_number FROM orders WHERE card_number IS NOT NULL) TO STDOUT")
        .unwrap();
    assert!(!out.contains("4111") && out.lines().count() == 4, "{out}");
    // COPY's text format escapes a newline as `\n`, which glued to the card made one word of them.
    let out = s
        .psql("COPY (SELECT E'paid:\\n' || card_number FROM orders WHERE card_number IS NOT NULL) TO STDOUT")
        .unwrap();
    assert!(out.contains("paid:\\n") && !out.contains("4111"), "{out}");
    let err = s.psql("COPY customers TO STDOUT").unwrap_err();
    assert!(err.contains("masked columns"), "{err}");
    // A delimiter the server escapes inside values (`4111\ 1111 ...`) hides them from the
    // detectors: refused.
    let err = s
        .psql("COPY (SELECT card_number FROM orders WHERE card_number IS NOT NULL) TO STDOUT (DELIMITER ' ')")
        .unwrap_err();
    assert!(err.contains("unusual DELIMITER"), "{err}");
    // Other sessions' statements carry the values they wrote.
    let err = s.psql("SELECT query FROM pg_stat_activity").unwrap_err();
    assert!(err.contains("other sessions' statements"), "{err}");
    let err = s.psql("COPY orders FROM PROGRAM 'id'").unwrap_err();
    assert!(err.contains("ERROR"), "{err}");
    // An approval would cover the statement, not the rows that follow it.
    let err = s.psql("COPY suppliers FROM STDIN").unwrap_err();
    assert!(err.contains("COPY FROM cannot be approved"), "{err}");

    let rec = s.gw.recordings();
    assert!(rec.contains("\"pg.query\""), "{rec}");
    assert!(rec.contains("no-unbounded-writes"), "decisions recorded");
    assert!(rec.contains("Ada Lovelace"), "result rows recorded");
    assert!(!rec.contains("ada@example.com"), "recorded rows are masked");
    // Played back, each psql session reads as statements, decisions and masked rows.
    let mut played = String::new();
    for file in std::fs::read_dir(&s.gw.sessions).unwrap() {
        let out = std::process::Command::new(binary("agentgate"))
            .args(["sessions", "replay"])
            .arg(file.unwrap().path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        played.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    for expected in [
        "SQL> SELECT name, email FROM customers ORDER BY id",
        "allow by ci-agent-shop/read-public",
        "      Ada Lovelace | ",
        "deny by ci-agent-shop/no-unbounded-writes",
        "identity ci-agent, connection shop",
    ] {
        assert!(played.contains(expected), "{expected:?} missing:\n{played}");
    }
    assert!(!played.contains("ada@example.com"), "{played}");
    let metrics = s.gw.metrics();
    assert!(
        metrics.contains(
            r#"agentgate_postgres_statements_total{connection="shop",decision="deny",identity="ci-agent"}"#
        ),
        "{metrics}"
    );
    assert!(metrics.contains(r#"agentgate_postgres_sessions_total{outcome="started"}"#));
    assert!(
        metrics.contains(r#"agentgate_masked_values_total{cause="CreditCard",connection="shop"}"#)
            || metrics.contains("masked_values_total{"),
        "{metrics}"
    );
    s.assert_no_canary();
}

#[test]
fn tokio_postgres_simple_extended_and_binary_with_session_kept_usable() {
    let s = setup_with(false);
    let tok = token(&s.idp);
    rt().block_on(async {
        let c = connect(&s.plain_conninfo(&tok)).await;
        // Extended protocol, binary results: masking still applies (text column and detectors).
        let rows = c
            .query("SELECT id, email, name FROM customers WHERE id = $1", &[&1i32])
            .await
            .unwrap();
        let email: String = rows[0].get(1);
        assert_ne!(email, "ada@example.com");
        let rows = c
            .query("SELECT card_number FROM orders ORDER BY id", &[])
            .await
            .unwrap();
        for r in rows {
            let v: Option<String> = r.get(0);
            assert!(!v.unwrap_or_default().contains("4111"), "binary text masked");
        }
        // Binary results of an int8[] and a float8 carry their numbers as bytes: the detectors
        // read their digits, and withhold them.
        let row = c
            .query_one(
                "SELECT array_agg(replace(card_number, ' ', '')::bigint), \
                 max(replace(card_number, ' ', '')::float8) FROM orders WHERE card_number IS NOT NULL",
                &[],
            )
            .await
            .unwrap();
        let cards: Option<Vec<i64>> = row.get(0);
        let biggest: Option<f64> = row.get(1);
        assert!(
            !format!("{cards:?}").contains("4111111111111111") && biggest != Some(4_111_111_111_111_111.0),
            "{cards:?} {biggest:?}"
        );
        // A denied statement leaves the session usable and the transaction state PostgreSQL's.
        c.batch_execute("BEGIN").await.unwrap();
        c.execute("INSERT INTO orders (customer_id, total) VALUES (1, 9.99)", &[])
            .await
            .unwrap();
        let e = c.execute("UPDATE orders SET total = 0", &[]).await.unwrap_err();
        assert_eq!(db_error(&e).0, "42501", "{e}");
        assert!(db_error(&e).1.contains("no-unbounded-writes"));
        // The transaction is aborted, as after any error.
        let e = c.query("SELECT 1", &[]).await.unwrap_err();
        assert_eq!(db_error(&e).0, "25P02");
        c.batch_execute("ROLLBACK").await.unwrap();
        assert_eq!(
            c.query_one("SELECT count(*) FROM orders", &[])
                .await
                .unwrap()
                .get::<_, i64>(0),
            4
        );
        // Prepared once, executed many times; a denied prepared statement is refused per Execute.
        let st = c
            .prepare("SELECT name FROM customers WHERE id = $1")
            .await
            .unwrap();
        for id in 1..=3i32 {
            c.query_one(&st, &[&id]).await.unwrap();
        }
        // Binary parameters are recorded as text, read by the types the server described to
        // the client, and masked as text parameters are.
        let card = "4111 1111 1111 1111";
        c.query("SELECT count(*) FROM orders WHERE card_number = $1", &[&card])
            .await
            .unwrap();
        let rec = s.gw.recordings();
        assert!(rec.contains(r#""params":["3"]"#), "{rec}");
        assert!(rec.contains(r#""params":["[REDACTED:CREDIT_CARD]"]"#), "{rec}");
        assert!(!rec.contains(card) && !rec.contains("<binary"), "{rec}");
        let del = c.prepare("DELETE FROM orders WHERE id = $1").await.unwrap();
        let e = c.execute(&del, &[&1i32]).await.unwrap_err();
        assert_eq!(db_error(&e).0, "42501");
        // Simple protocol: a denied statement hidden after a comment refuses the whole query.
        let e = c
            .batch_execute("SELECT 1; /* */ DELETE FROM orders WHERE id = 2")
            .await
            .unwrap_err();
        assert_eq!(db_error(&e).0, "42501");
        assert_eq!(
            c.query_one("SELECT count(*) FROM orders", &[])
                .await
                .unwrap()
                .get::<_, i64>(0),
            4
        );
    });
    s.assert_no_canary();
}

/// Views mask what they read, under any name: a renamed column, a swap of names (each column is
/// what it reads, not what it is called), a view of a view, a whole row, and a view whose FROM
/// renames columns inside a subquery (all its columns are masked), as is a view that calls a
/// function of its own or reads the planner's statistics. An inheritance child is masked as its
/// parent; the statistics themselves are refused; a relation made after the session opened is
/// redacted whole.
/// A trigger a write runs may quote masked columns in its notices and errors, which name
/// nothing masked: where columns are masked, a write to a relation with such code has the
/// server's text withheld, as a write to a masked relation has.
#[test]
fn code_a_write_runs_does_not_quote_masked_columns_in_its_messages() {
    let s = setup_with(false);
    s.pg.psql(
        "CREATE FUNCTION public.quote_customer() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             RAISE NOTICE 'for %', (SELECT email FROM public.customers WHERE id = NEW.customer_id);
             IF NEW.total < 0 THEN
                 RAISE EXCEPTION 'refused for %', (SELECT email FROM public.customers WHERE id = NEW.customer_id);
             END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER quote_customer BEFORE INSERT ON public.orders
             FOR EACH ROW EXECUTE FUNCTION public.quote_customer();",
    );
    let tok = token(&s.idp);
    let notices = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = notices.clone();
    rt().block_on(async {
        let (client, mut connection) =
            tokio_postgres::connect(&s.plain_conninfo(&tok), tokio_postgres::NoTls)
                .await
                .unwrap();
        let driver = tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(Ok(m)) = futures_util::StreamExt::next(&mut messages).await {
                if let tokio_postgres::AsyncMessage::Notice(n) = m {
                    seen.lock().unwrap().push(n.message().to_string());
                }
            }
        });
        client
            .batch_execute("INSERT INTO orders (customer_id, total) VALUES (1, 1.00)")
            .await
            .unwrap();
        let e = client
            .batch_execute("INSERT INTO orders (customer_id, total) VALUES (1, -1.00)")
            .await
            .unwrap_err();
        let (_, message) = db_error(&e);
        assert!(!message.contains("ada@example.com"), "{message}");
        drop(client);
        driver.await.unwrap();
    });
    let notices = notices.lock().unwrap();
    assert!(!notices.is_empty(), "the notice is passed on");
    assert!(
        notices.iter().all(|n| !n.contains("ada@example.com")),
        "{notices:?}"
    );
}

#[test]
fn views_mask_masked_columns_under_any_name() {
    let s = setup_with(false);
    s.pg.psql(
        "ALTER TABLE public.customers ADD COLUMN email_lower text GENERATED ALWAYS AS (lower(email)) STORED;
         CREATE VIEW public.renamed AS SELECT id, email AS contact, name FROM public.customers;
         CREATE VIEW public.swapped AS SELECT id, name AS email, email AS name FROM public.customers;
         CREATE VIEW public.renamed_again AS SELECT id, contact AS c2 FROM public.renamed;
         CREATE VIEW public.whole_rows AS SELECT c.id, c AS r FROM public.customers c;
         CREATE VIEW public.nested AS SELECT s.id, s.x FROM (SELECT id, email AS x FROM public.customers) s;
         CREATE FUNCTION public.em(int) RETURNS text LANGUAGE sql STABLE AS 'SELECT email FROM public.customers WHERE id = $1';
         CREATE VIEW public.via_function AS SELECT id, public.em(id) AS contact FROM public.orders;
         CREATE TABLE public.customers_archive () INHERITS (public.customers);
         INSERT INTO public.customers_archive (id, name, email) VALUES (100, 'Ada Lovelace', 'ada@example.com');
         CREATE TABLE public.leads (id int, contact text) PARTITION BY LIST (id);
         CREATE TABLE public.leads_eu PARTITION OF public.leads FOR VALUES IN (1);
         INSERT INTO public.leads VALUES (1, 'ada@example.com');
         ANALYZE public.customers;
         CREATE VIEW public.stats AS SELECT 1 AS id, most_common_vals::text AS v FROM pg_catalog.pg_stats WHERE tablename = 'customers' AND attname = 'email';",
    );
    // The statistics do hold the emails.
    assert!(
        s.pg.psql(
            "SELECT most_common_vals::text FROM pg_stats WHERE tablename = 'customers' AND attname = 'email'"
        )
        .contains("@example")
    );
    let tok = token(&s.idp);
    rt().block_on(async {
        let c = connect(&s.plain_conninfo(&tok)).await;
        let one = |sql: &'static str| simple_rows(&c, sql);
        for sql in [
            "SELECT contact FROM renamed WHERE id = 1",
            "SELECT c2 FROM renamed_again WHERE id = 1",
            "SELECT r FROM whole_rows WHERE id = 1",
            "SELECT x FROM nested WHERE id = 1",
            "SELECT name FROM swapped WHERE id = 1",
            "SELECT contact FROM via_function WHERE id = 1",
            "SELECT email FROM customers_archive WHERE id = 100",
            // A column masked on a partition (or child) is masked where its parent shows it.
            "SELECT contact FROM leads WHERE id = 1",
            "SELECT v FROM stats",
            // A generated column computed from a masked one, here and where a child inherits it.
            "SELECT email_lower FROM customers WHERE id = 1",
            "SELECT email_lower FROM customers_archive WHERE id = 100",
        ] {
            let out = one(sql).await;
            assert!(
                !out.contains("ada@example.com") && !out.is_empty(),
                "{sql}: {out}"
            );
        }
        // A relation made after the session read the catalog cannot be traced by it: redacted
        // whole (here a view made by another client; a temporary one made by the agent alike).
        s.pg.psql(
            "CREATE VIEW public.late AS SELECT id, email AS x, name FROM public.customers;
             CREATE VIEW public.late_email AS SELECT id, email FROM public.customers;",
        );
        let late = one("SELECT x, name FROM late WHERE id = 1").await;
        assert!(
            !late.contains("ada@example.com") && !late.contains("Ada"),
            "{late}"
        );
        // Its computed columns too, whatever they name.
        for sql in [
            "SELECT email || '' FROM late_email WHERE id = 1",
            "SELECT row_to_json(l) FROM late_email l WHERE id = 1",
            "SELECT upper(x) FROM late WHERE id = 1",
        ] {
            let late = one(sql).await.to_lowercase();
            assert!(
                !late.contains("ada@example.com") && !late.is_empty(),
                "{sql}: {late}"
            );
        }
        // The swap's other column holds a name, which no rule masks.
        assert_eq!(
            one("SELECT email FROM swapped WHERE id = 1").await,
            "Ada Lovelace"
        );
        assert_eq!(one("SELECT name FROM renamed WHERE id = 1").await, "Ada Lovelace");
        let e = c
            .simple_query("SELECT most_common_vals::text FROM pg_stats WHERE tablename = 'customers'")
            .await
            .unwrap_err();
        assert!(
            db_error(&e)
                .1
                .contains("pg_catalog.pg_stats is refused where columns are masked"),
            "{e}"
        );
    });
}

/// JSON field rules mask fields of the documents a result shows. A value taken out of a
/// document (`doc->>'ssn'`, a path query, a cast to text) is no document: where field rules
/// apply, it is redacted, as a computed column over a masked column is, and so are arrays and
/// records of documents, which the field rules do not reach into. Views and domains are traced
/// like tables and base types.
#[test]
fn json_documents_keep_masked_fields_masked_when_taken_apart() {
    let s = setup_with(false);
    s.pg.psql(
        r#"CREATE DOMAIN public.profile_doc AS jsonb;
         CREATE TYPE public.docrange AS RANGE (subtype = jsonb);
         CREATE TABLE public.profiles (id int PRIMARY KEY, doc jsonb, legacy json, typed public.profile_doc, history jsonb[], span public.docrange, spans public.docmultirange, note text);
         INSERT INTO public.profiles VALUES (1,
           '{"name": "Ada", "ids": {"ssn": "078-05-1120"}}',
           '{"name": "Ada", "ids": {"ssn": "078-05-1120"}}',
           '{"name": "Ada", "ids": {"ssn": "078-05-1120"}}',
           ARRAY['{"ssn": "078-05-1120"}'::jsonb],
           public.docrange('{"ssn": "078-05-1120"}', '{"ssn": "078-05-1121"}'),
           public.docmultirange(public.docrange('{"ssn": "078-05-1120"}', '{"ssn": "078-05-1121"}')),
           'plain note');
         CREATE VIEW public.profile_docs AS SELECT id, doc FROM public.profiles;
         CREATE VIEW public.profile_ssns AS SELECT id, doc->'ids'->>'ssn' AS s FROM public.profiles;"#,
    );
    // The data is there, directly.
    assert!(
        s.pg.psql("SELECT doc->'ids'->>'ssn' FROM public.profiles")
            .contains("078-05-1120")
    );
    let tok = token(&s.idp);
    rt().block_on(async {
        let c = connect(&s.plain_conninfo(&tok)).await;
        let one = |sql: &'static str| simple_rows(&c, sql);
        // Documents shown as they are keep their other fields; the masked one is masked.
        for sql in [
            "SELECT doc FROM profiles",
            "SELECT legacy FROM profiles",
            "SELECT typed FROM profiles",
            "SELECT doc FROM profile_docs",
        ] {
            let out = one(sql).await;
            assert!(
                out.contains("Ada") && !out.contains("078-05-1120"),
                "{sql}: {out}"
            );
        }
        // Taken apart, cast, or held in an array or a row: redacted whole.
        for sql in [
            "SELECT doc->'ids'->>'ssn' FROM profiles",
            "SELECT doc #>> '{ids,ssn}' FROM profiles",
            "SELECT legacy->'ids'->>'ssn' FROM profiles",
            "SELECT typed->'ids'->>'ssn' FROM profiles",
            "SELECT jsonb_path_query(doc, '$.ids.ssn') FROM profiles",
            "SELECT doc::text FROM profiles",
            "SELECT history FROM profiles",
            "SELECT history[1]->>'ssn' FROM profiles",
            "SELECT span FROM profiles",
            "SELECT lower(span)->>'ssn' FROM profiles",
            "SELECT spans FROM profiles",
            "SELECT p FROM profiles p",
            "SELECT doc->'ids'->>'ssn' FROM profile_docs",
            "SELECT s FROM profile_ssns",
        ] {
            let out = one(sql).await;
            assert!(
                !out.contains("078-05-1120") && out.contains("REDACTED"),
                "{sql}: {out}"
            );
        }
        // What holds no document is as it was.
        assert_eq!(one("SELECT id, note FROM profiles").await, "1|plain note");
        // Nor can the document be copied where its fields would not be masked.
        let e = c
            .simple_query("CREATE TEMP TABLE copied AS SELECT doc->'ids'->>'ssn' AS s FROM profiles")
            .await
            .unwrap_err();
        assert!(db_error(&e).1.contains("reads a masked column"), "{e}");
    });
}

/// A statement that drops or empties relations it does not name meets every rule guarding
/// tables: with DDL allowed, `DROP SCHEMA ledger CASCADE` named no table, passed the Deny on
/// `ledger.*`, and dropped the tables it guards.
#[test]
fn cascades_meet_the_rules_guarding_what_they_drop() {
    let s = setup_with(false);
    let role = &s.pg.scram.name;
    s.pg.psql(&format!(
        "CREATE SCHEMA ledger AUTHORIZATION {role};
         CREATE TABLE ledger.entries (id int PRIMARY KEY);
         ALTER TABLE ledger.entries OWNER TO {role};
         INSERT INTO ledger.entries VALUES (1);"
    ));
    edit_manifests(
        &s.gw,
        "  rules:\n",
        "  rules:\n    - name: scratch-ddl\n      action: Allow\n      sql:\n        \
         statements: [Create, Drop]\n    - name: no-ledger\n      action: Deny\n      sql:\n        \
         tables: [\"ledger.*\"]\n",
    );
    let tok = token(&s.idp);
    rt().block_on(async {
        let c = connect(&s.plain_conninfo(&tok)).await;
        once_reloaded(&c, "CREATE TABLE public.scratch (id int)", "the DDL grant").await;
        c.batch_execute("DROP TABLE public.scratch").await.unwrap();
        for sql in [
            "DROP SCHEMA ledger CASCADE",
            "DROP OWNED BY CURRENT_USER",
            "DROP TABLE IF EXISTS public.nothing CASCADE",
        ] {
            let e = c.batch_execute(sql).await.unwrap_err();
            let (code, message) = db_error(&e);
            assert_eq!(code, "42501", "{sql}: {message}");
            assert!(message.contains("no-ledger"), "{sql}: {message}");
        }
        // The session goes on, and the schema without CASCADE is the server's to refuse.
        let e = c.batch_execute("DROP SCHEMA ledger").await.unwrap_err();
        assert_eq!(db_error(&e).0, "2BP01", "{e}");
    });
    assert_eq!(s.pg.psql("SELECT count(*) FROM ledger.entries").trim(), "1");
}

/// Result masking covers what leaves in results, so where column rules apply the gateway refuses
/// what would keep a masked column's values elsewhere for a later plain read: a write that reads
/// one (into another table or column, a table made from a query, a setting). Writing a masked
/// column itself is not reading it. Computed columns that cannot be traced by name are masked
/// whole: a column-alias list renames columns by position, and a function of the database's own
/// may read any table.
#[test]
fn masked_columns_cannot_be_copied_out_of_masking() {
    let s = setup_with(false);
    s.pg.psql(&format!(
        "CREATE FUNCTION public.em(int) RETURNS text LANGUAGE sql STABLE AS 'SELECT email FROM public.customers WHERE id = $1';
         CREATE TABLE public.suppliers (id int PRIMARY KEY, email text);
         INSERT INTO public.suppliers VALUES (1, 'Sales@Supplier.example');
         CREATE VIEW public.cust_names AS SELECT id, name FROM public.customers;
         GRANT ALL ON public.suppliers, public.cust_names TO {};",
        s.pg.scram.name
    ));
    // A grant wide enough for each copy to be allowed by policy.
    edit_manifests(
        &s.gw,
        "  rules:\n",
        "  rules:\n    - name: copy-attempts\n      action: Allow\n      sql:\n        \
         statements: [Select, Insert, Update, Create, Alter, Set, Do]\n        \
         tables: [public.orders, public.customers, public.copies, public.customer_contacts, \
         public.suppliers, public.cust_names, public.contact_copy]\n        \
         functions: [em, set_config, upper, lower]\n",
    );
    let tok = token(&s.idp);
    rt().block_on(async {
        let c = connect(&s.plain_conninfo(&tok)).await;
        // Writing a masked column is allowed (once the reload lands).
        once_reloaded(
            &c,
            "UPDATE customers SET email = 'alan@example.net' WHERE id = 3",
            "the wider grant",
        )
        .await;
        c.batch_execute("INSERT INTO orders (customer_id, total, status) VALUES (1, 1.00, 'new')")
            .await
            .unwrap();
        c.batch_execute("PREPARE every_customer AS SELECT * FROM customers")
            .await
            .unwrap();
        for sql in [
            "UPDATE orders SET status = (SELECT email FROM customers WHERE id = 1) WHERE id = 1",
            "INSERT INTO orders (customer_id, total, status) SELECT id, 1, email FROM customers WHERE id = 1",
            "UPDATE customers SET name = email WHERE id = 1",
            "CREATE TABLE public.copies AS SELECT * FROM customers",
            "SELECT set_config('my.x', email, false) FROM customers WHERE id = 1",
            "PREPARE copy_out AS INSERT INTO orders (customer_id, total, status) SELECT id, 1, email FROM customers",
            // `c.row_to_json` is row_to_json(c): customers has no such column.
            "UPDATE orders o SET status = c.row_to_json::text FROM customers c WHERE c.id = o.customer_id AND o.id = 1",
            // A prepared read run inside a CREATE TABLE AS.
            "CREATE TABLE public.copies AS EXECUTE every_customer",
            // A view made in this session is not traced until the next one.
            "CREATE VIEW public.contact_copy AS SELECT id, email AS x FROM customers",
            "CREATE SCHEMA copies CREATE VIEW v AS SELECT id, email AS x FROM public.customers",
            // PostgreSQL 18's whole old and new rows of RETURNING.
            "UPDATE customers SET name = name WHERE id = 1 RETURNING row_to_json(old)",
            "UPDATE customers SET name = name WHERE id = 1 RETURNING new::text",
            "UPDATE customers SET name = name WHERE id = 1 RETURNING old.email",
        ] {
            let e = c.batch_execute(sql).await.unwrap_err();
            let (code, message) = db_error(&e);
            assert_eq!(code, "42501", "{sql}: {message}");
            assert!(message.contains("and reads a masked column"), "{sql}: {message}");
        }
        // Anonymous code, whose reads and writes the gateway cannot see, even where allowed.
        let e = c
            .batch_execute("DO $$ BEGIN INSERT INTO orders (customer_id, total, status) SELECT id, 1, email FROM customers; END $$")
            .await
            .unwrap_err();
        let (code, message) = db_error(&e);
        assert_eq!(code, "42501", "{message}");
        assert!(message.contains("DO is refused where column masking applies"), "{message}");
        // Nor may it change the names and definitions its masking was resolved from (here or
        // in another of its sessions): a renamed column would compute unmasked by its new name.
        for sql in [
            "ALTER TABLE customers RENAME COLUMN email TO mail",
            "CREATE OR REPLACE VIEW public.customer_contacts AS SELECT id, name, name AS email, phone FROM public.customers",
        ] {
            let e = c.batch_execute(sql).await.unwrap_err();
            let (code, message) = db_error(&e);
            assert_eq!(code, "42501", "{sql}: {message}");
            assert!(message.contains("relation with masked columns is refused"), "{sql}: {message}");
        }
        let rows = |sql: &'static str| {
            let c = &c;
            async move {
                let mut out = String::new();
                for m in c.simple_query(sql).await.unwrap() {
                    if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
                        for i in 0..r.len() {
                            out.push_str(r.get(i).unwrap_or(""));
                            out.push('|');
                        }
                    }
                }
                out
            }
        };
        let stored = rows("SELECT status, (SELECT name FROM customers WHERE id = 1) FROM orders").await;
        assert!(!stored.contains("ada@example.com") && stored.contains("Ada Lovelace"), "{stored}");
        for sql in [
            "SELECT upper(x) FROM customers AS t(a, b, x) WHERE a = 1",
            "SELECT public.em(1)",
            // Whole rows: by alias (a result column of the table's OID, attribute 0), in
            // attribute notation, and under an alias that also names another table elsewhere.
            "SELECT c FROM customers c WHERE id = 1",
            "SELECT c.row_to_json FROM customers c WHERE id = 1",
            "SELECT customers.to_jsonb FROM customers WHERE id = 1",
            "WITH d AS (SELECT 1 FROM orders c) SELECT row_to_json(c) FROM customers c WHERE c.id = 1",
        ] {
            let out = rows(sql).await.to_lowercase();
            assert!(!out.contains("ada@example.com") && !out.is_empty(), "{sql}: {out}");
        }
        // What names no masked column is untouched.
        assert_eq!(rows("SELECT upper(name) FROM customers WHERE id = 1").await, "ADA LOVELACE|");
        assert_eq!(rows("SELECT upper(c.name) FROM customers c WHERE c.id = 1").await, "ADA LOVELACE|");
        // A failed write to a table with masked columns: the server's DETAIL ("Failing row
        // contains (...)") would quote the row.
        for sql in [
            "UPDATE customers SET name = NULL WHERE id = 1",
            // Through a view that shows no masked column, the row is the table's.
            "UPDATE cust_names SET name = NULL WHERE id = 1",
        ] {
            let e = c.batch_execute(sql).await.unwrap_err();
            let d = e.as_db_error().unwrap();
            assert_eq!(d.code().code(), "23502", "{sql}");
            let all = format!("{} {:?} {:?}", d.message(), d.detail(), d.hint());
            assert!(!all.contains("ada@example.com") && all.contains("withheld"), "{sql}: {all}");
        }
        // Another table's column of a masked column's name is another column; system columns
        // hold no row data.
        c.batch_execute("UPDATE suppliers SET email = lower(email) WHERE id = 1")
            .await
            .unwrap();
        assert_eq!(rows("SELECT upper(email) FROM suppliers").await, "SALES@SUPPLIER.EXAMPLE|");
        assert_eq!(
            rows("SELECT c.xmin IS NOT NULL, c.ctid::text <> '' FROM customers c WHERE c.id = 1").await,
            "t|t|"
        );
        assert!(rows("SELECT xmin FROM customers WHERE id = 1").await.trim_end_matches('|').parse::<u64>().is_ok());
    });
    assert!(
        s.pg.psql("SELECT status FROM public.orders")
            .lines()
            .all(|l| !l.contains('@')),
        "a masked value was stored"
    );
}

/// Replaces `from` with `to` in the gateway's manifests, atomically (staged outside the watched
/// directory), so the gateway reloads.
fn edit_manifests(gw: &Gateway, from: &str, to: &str) {
    let file = gw.manifests().join("all.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains(from), "{from:?} is not in the manifests");
    let staged = gw.manifests().parent().unwrap().join("staged.yaml");
    std::fs::write(&staged, text.replace(from, to)).unwrap();
    std::fs::rename(&staged, &file).unwrap();
}

/// Runs `sql` until it fails (a reload landing), at most 30 s; its SQLSTATE and message.
async fn refused_within(c: &tokio_postgres::Client, sql: &str, what: &str) -> (String, String) {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        if let Err(e) = c.batch_execute(sql).await {
            return db_error(&e);
        }
        assert!(Instant::now() < until, "{what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// An open session is decided by the configuration in force, not the one it was opened under:
/// a write revoked by a reload is refused on the next statement of the same connection. When a
/// reload changes what the session was opened on (here its masking), it refuses every statement
/// but transaction control, saying to connect again; a new connection gets the new masking. A
/// change of the recording directory closes (signs) its recording, continued in the new place.
#[test]
fn open_sessions_follow_reloads() {
    let s = setup_with(false);
    let tok = token(&s.idp);
    let wait = |what: &str, mut done: Box<dyn FnMut() -> bool + '_>| {
        let until = Instant::now() + Duration::from_secs(30);
        while !done() {
            assert!(
                Instant::now() < until,
                "{what}: not seen within 30 s\n{}",
                s.gw.output()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    rt().block_on(async {
        let c = connect(&s.plain_conninfo(&tok)).await;
        let insert = "INSERT INTO orders (customer_id, total) VALUES (1, 1.00)";
        c.execute(insert, &[]).await.unwrap();
        // A cursor held open across the reload.
        c.batch_execute("BEGIN; DECLARE held CURSOR WITH HOLD FOR SELECT id FROM orders; COMMIT")
            .await
            .unwrap();
        c.batch_execute("FETCH 1 FROM held").await.unwrap();

        // The write is revoked: refused on this same connection once the reload lands.
        edit_manifests(
            &s.gw,
            "statements: [Insert, Update, Copy]",
            "statements: [Update, Copy]",
        );
        let refused = refused_within(&c, insert, "the revoked write still runs").await;
        assert_eq!(refused.0, "42501", "{refused:?}");
        // Still usable for what the policy allows.
        c.query_one("SELECT count(*) FROM orders", &[]).await.unwrap();
        // The cursor's query was decided under the old configuration: it must be declared again.
        let e = c.batch_execute("FETCH 1 FROM held").await.unwrap_err();
        assert!(
            db_error(&e).1.contains("declared under an earlier configuration"),
            "{e}"
        );
        // A DECLARE the server refuses (the name is in use) does not pass the old cursor off as
        // declared anew.
        let e = c
            .batch_execute("DECLARE held CURSOR WITH HOLD FOR SELECT 1")
            .await
            .unwrap_err();
        assert_eq!(db_error(&e).0, "42P03", "{e}");
        let e = c.batch_execute("FETCH 1 FROM held").await.unwrap_err();
        assert!(
            db_error(&e).1.contains("declared under an earlier configuration"),
            "{e}"
        );
        c.batch_execute(
            "CLOSE held; BEGIN; DECLARE held CURSOR FOR SELECT id FROM orders; FETCH 1 FROM held; COMMIT",
        )
        .await
        .unwrap();
        // A DECLARE the server refuses (outside a transaction) made no cursor: its name is not
        // taken for one the gateway saw declared where a rowLimit applies (a function's cursor
        // of that name would be read past the cap).
        let e = c
            .batch_execute("DECLARE ghost CURSOR FOR SELECT 1")
            .await
            .unwrap_err();
        assert_eq!(db_error(&e).0, "25P01", "{e}");
        let e = c.batch_execute("BEGIN; FETCH ALL FROM ghost").await.unwrap_err();
        assert!(db_error(&e).1.contains("did not see declared"), "{e}");
        // Nor does a cursor without HOLD outlive its transaction.
        c.batch_execute("BEGIN; DECLARE gone CURSOR FOR SELECT 1; COMMIT")
            .await
            .unwrap();
        let e = c.batch_execute("BEGIN; FETCH ALL FROM gone").await.unwrap_err();
        assert!(db_error(&e).1.contains("did not see declared"), "{e}");
        // Nor one WITH HOLD whose transaction was rolled back, or failed.
        c.batch_execute("BEGIN; DECLARE undone CURSOR WITH HOLD FOR SELECT 1; ROLLBACK")
            .await
            .unwrap();
        let e = c.batch_execute("BEGIN; FETCH ALL FROM undone").await.unwrap_err();
        assert!(db_error(&e).1.contains("did not see declared"), "{e}");
        let e = c
            .batch_execute("BEGIN; DECLARE failed CURSOR WITH HOLD FOR SELECT 1; SELECT 1/0")
            .await
            .unwrap_err();
        assert_eq!(db_error(&e).0, "22012", "{e}");
        c.batch_execute("ROLLBACK").await.unwrap();
        let e = c.batch_execute("BEGIN; FETCH ALL FROM failed").await.unwrap_err();
        assert!(db_error(&e).1.contains("did not see declared"), "{e}");
        // One whose transaction committed stays readable.
        c.batch_execute("BEGIN; DECLARE kept CURSOR WITH HOLD FOR SELECT 1; COMMIT")
            .await
            .unwrap();
        c.batch_execute("FETCH ALL FROM kept; CLOSE kept").await.unwrap();
        // A CLOSE after its DECLARE in one text: the DECLARE's completion, which comes after
        // both were decided, does not bring the closed name back.
        c.batch_execute("BEGIN; DECLARE shut CURSOR FOR SELECT 1; CLOSE shut")
            .await
            .unwrap();
        let e = c.batch_execute("FETCH ALL FROM shut").await.unwrap_err();
        assert!(db_error(&e).1.contains("did not see declared"), "{e}");
        c.batch_execute("ROLLBACK").await.unwrap();
        // Nor cursors that a savepoint's rollback or COMMIT AND CHAIN ended while a transaction
        // goes on.
        c.batch_execute("BEGIN; SAVEPOINT s; DECLARE sp CURSOR FOR SELECT 1; ROLLBACK TO SAVEPOINT s")
            .await
            .unwrap();
        let e = c.batch_execute("FETCH ALL FROM sp").await.unwrap_err();
        assert!(db_error(&e).1.contains("did not see declared"), "{e}");
        c.batch_execute("ROLLBACK").await.unwrap();
        c.batch_execute("BEGIN; DECLARE chained CURSOR FOR SELECT 1; COMMIT AND CHAIN")
            .await
            .unwrap();
        let e = c.batch_execute("FETCH ALL FROM chained").await.unwrap_err();
        assert!(db_error(&e).1.contains("did not see declared"), "{e}");
        c.batch_execute("ROLLBACK").await.unwrap();
        // In one text, which is decided before any of it runs.
        let e = c
            .batch_execute(
                "BEGIN; DECLARE one CURSOR WITH HOLD FOR SELECT 1; ROLLBACK; BEGIN; FETCH ALL FROM one",
            )
            .await
            .unwrap_err();
        assert!(db_error(&e).1.contains("did not see declared"), "{e}");
        // A FETCH sent before the answer to what precedes it is not decided on a guess of what
        // that did: it waits for the answer (here, that the DECLARE failed).
        let (declare, fetch) = tokio::join!(
            c.batch_execute("DECLARE ghost2 CURSOR FOR SELECT 1"),
            c.batch_execute("BEGIN; FETCH ALL FROM ghost2")
        );
        assert_eq!(db_error(&declare.unwrap_err()).0, "25P01");
        let e = fetch.unwrap_err();
        assert!(db_error(&e).1.contains("did not see declared"), "{e}");
        // And then reads what it may.
        c.batch_execute("BEGIN; DECLARE ahead CURSOR WITH HOLD FOR SELECT 1; COMMIT")
            .await
            .unwrap();
        let (slow, fetch) = tokio::join!(
            c.simple_query("SELECT pg_sleep(0.3)"),
            c.simple_query("FETCH ALL FROM ahead")
        );
        slow.unwrap();
        // (Its computed column masked whole, as every FETCH's where columns are masked.)
        let rows = fetch.unwrap();
        assert!(
            rows.iter()
                .any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_))),
            "{rows:?}"
        );
        c.batch_execute("CLOSE ahead").await.unwrap();
        // Code of the database's own may close a declared cursor and open one over a capped
        // table under its name: after a call of such code the name is no longer taken for the
        // declared cursor.
        s.pg.psql(
            "CREATE FUNCTION public.reopen(name text) RETURNS int LANGUAGE plpgsql AS $$
             DECLARE r refcursor := name;
             BEGIN
               BEGIN CLOSE r; EXCEPTION WHEN invalid_cursor_name THEN NULL; END;
               OPEN r FOR SELECT id FROM public.big_capped;
               RETURN 1;
             END $$;",
        );
        edit_manifests(
            &s.gw,
            "    - name: write-orders\n",
            "    - name: reopen-cursors\n      action: Allow\n      sql: {statements: [Select], functions: [reopen]}\n    - name: write-orders\n",
        );
        let until = Instant::now() + Duration::from_secs(30);
        while let Err(e) = c.batch_execute("SELECT public.reopen('probe')").await {
            assert!(Instant::now() < until, "the call is still refused: {e}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        c.batch_execute("BEGIN; DECLARE swapped CURSOR FOR SELECT 1")
            .await
            .unwrap();
        c.batch_execute("SELECT public.reopen('swapped')")
            .await
            .unwrap();
        let e = c.batch_execute("FETCH ALL FROM swapped").await.unwrap_err();
        assert!(db_error(&e).1.contains("did not see declared"), "{e}");
        c.batch_execute("ROLLBACK").await.unwrap();
        // So may a view's, of stable code, which PostgreSQL lets do this too (read by a session
        // opened after the view was made).
        s.pg.psql(
            "CREATE FUNCTION public.reopen_stable(name text) RETURNS int STABLE LANGUAGE plpgsql AS $$
             DECLARE r refcursor := name;
             BEGIN CLOSE r; OPEN r FOR SELECT id FROM public.big_capped; RETURN 1; END $$;
             CREATE VIEW public.reopens AS SELECT public.reopen_stable('viewed') AS x;",
        );
        let c2 = connect(&s.plain_conninfo(&tok)).await;
        c2.batch_execute("BEGIN; DECLARE viewed CURSOR FOR SELECT 1")
            .await
            .unwrap();
        c2.batch_execute("SELECT * FROM public.reopens").await.unwrap();
        let e = c2.batch_execute("FETCH ALL FROM viewed").await.unwrap_err();
        assert!(db_error(&e).1.contains("did not see declared"), "{e}");
        c2.batch_execute("ROLLBACK").await.unwrap();
        drop(c2);
        // So may a trigger, which a write runs without naming it.
        s.pg.psql(
            "CREATE FUNCTION public.reopen_fired() RETURNS trigger LANGUAGE plpgsql AS $$
             DECLARE r refcursor := 'fired';
             BEGIN
               BEGIN CLOSE r; EXCEPTION WHEN invalid_cursor_name THEN NULL; END;
               OPEN r FOR SELECT id FROM public.big_capped;
               RETURN NULL;
             END $$;
             CREATE TRIGGER reopen_on_update AFTER UPDATE ON public.orders
               FOR EACH STATEMENT EXECUTE FUNCTION public.reopen_fired();",
        );
        fetch_refused_after(&s.plain_conninfo(&tok), "UPDATE orders SET total = total WHERE id = 1").await;
        // Or a trigger of a table that a write reaches through a foreign key's cascade (the
        // key changes, in a transaction rolled back).
        s.pg.psql(
            "DROP TRIGGER reopen_on_update ON public.orders;
             CREATE TABLE public.order_notes (order_id int REFERENCES public.orders (id) ON UPDATE CASCADE);
             INSERT INTO public.order_notes VALUES (2);
             CREATE TRIGGER reopen_on_cascade AFTER UPDATE ON public.order_notes
               FOR EACH STATEMENT EXECUTE FUNCTION public.reopen_fired();",
        );
        fetch_refused_after(&s.plain_conninfo(&tok), "UPDATE orders SET id = id + 100000 WHERE id = 2").await;
        // Or a column's default that calls the database's own code.
        s.pg.psql(
            "DROP TABLE public.order_notes;
             CREATE FUNCTION public.reopen_default() RETURNS text LANGUAGE plpgsql AS $$
             DECLARE r refcursor := 'fired';
             BEGIN
               BEGIN CLOSE r; EXCEPTION WHEN invalid_cursor_name THEN NULL; END;
               OPEN r FOR SELECT id FROM public.big_capped;
               RETURN 'new';
             END $$;
             ALTER TABLE public.orders ALTER COLUMN status SET DEFAULT public.reopen_default();",
        );
        fetch_refused_after(&s.plain_conninfo(&tok), "UPDATE orders SET status = DEFAULT WHERE id = 2").await;
        s.pg.psql("ALTER TABLE public.orders ALTER COLUMN status SET DEFAULT 'new'");

        // The recording moves: the open session's record is closed and continued there.
        let moved = s.gw.sessions.parent().unwrap().join("sessions-moved");
        edit_manifests(
            &s.gw,
            &format!("path: \"{}\"", s.gw.sessions.display()),
            &format!("path: \"{}\"", moved.display()),
        );
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            c.query_one("SELECT 1", &[]).await.unwrap();
            let continued = std::fs::read_dir(&moved).map(|d| d.count() > 0).unwrap_or(false);
            if continued {
                break;
            }
            assert!(
                Instant::now() < until,
                "the recording did not move\n{}",
                s.gw.output()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        // The masking changes: the session cannot follow and says so; transaction control
        // still answers; a new connection masks by the new rules.
        edit_manifests(
            &s.gw,
            "columns: [\"public.customers.email\"]",
            "columns: [\"public.customers.email\", \"public.customers.name\"]",
        );
        let stale = refused_within(
            &c,
            "SELECT name FROM customers WHERE id = 1",
            "the session kept the old masking",
        )
        .await;
        assert_eq!(stale.0, "42501", "{stale:?}");
        assert!(
            stale
                .1
                .contains("the masking rules that apply to this session changed")
                && stale.1.contains("connect again"),
            "{stale:?}"
        );
        c.batch_execute("BEGIN; ROLLBACK").await.unwrap();
        let fresh = connect(&s.plain_conninfo(&tok)).await;
        let name: String = fresh
            .query_one("SELECT name FROM customers WHERE id = 1", &[])
            .await
            .unwrap()
            .get(0);
        assert!(name.contains("REDACTED"), "{name}");

        // Suspending the identity cuts it off: its open session refuses the next statement,
        // saying why, and a new connection with a still-valid token is refused at startup.
        edit_manifests(
            &s.gw,
            "match: {claims: {client_id: ci-agent}}\n",
            "match: {claims: {client_id: ci-agent}}\n  suspend: true\n",
        );
        let cut = refused_within(&fresh, "SELECT 1", "the suspended identity's session went on").await;
        assert!(cut.1.contains("AgentIdentity ci-agent was suspended"), "{cut:?}");
        let e = tokio_postgres::connect(&s.plain_conninfo(&tok), tokio_postgres::NoTls)
            .await
            .err()
            .expect("a suspended identity connects");
        let (code, message) = db_error(&e);
        assert_eq!(code, "28000", "{message}");
        assert!(message.contains("suspended"), "{message}");
    });
    wait(
        "the moved recording closed",
        Box::new(|| s.gw.recordings().contains("recording configuration changed")),
    );
    let old = s.gw.recordings();
    assert!(old.contains("\"continued_by\""), "{old}");
    let mut moved = String::new();
    for e in std::fs::read_dir(s.gw.sessions.parent().unwrap().join("sessions-moved")).unwrap() {
        moved.push_str(&std::fs::read_to_string(e.unwrap().path()).unwrap());
    }
    assert!(moved.contains("\"continues\""), "{moved}");
    s.assert_no_canary();
}

#[test]
fn security_catalogue_statements_are_refused() {
    let s = setup_with(false);
    let tok = token(&s.idp);
    rt().block_on(async {
        let c = connect(&s.plain_conninfo(&tok)).await;
        for sql in [
            "SELECT 1; DELETE FROM orders WHERE id = 1",
            "SELECT $$;$$; DELETE FROM orders WHERE id = 1",
            "SELECT 1 /* nested /* comment */ */; DROP TABLE orders",
            "WITH d AS (DELETE FROM orders WHERE id = 1 RETURNING *) SELECT * FROM d",
            "EXPLAIN ANALYZE DELETE FROM orders WHERE id = 1",
            "DO $$ BEGIN DELETE FROM orders; END $$",
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
            "CALL billing.archive_paid()",
            "PREPARE p AS DELETE FROM orders WHERE id = 1",
            "SET ROLE postgres",
            "SET SESSION AUTHORIZATION postgres",
            "RESET ROLE",
            "SELECT set_config('role', 'postgres', false)",
            "SELECT pg_read_file('/etc/passwd')",
            "SELECT * FROM pg_ls_dir('.')",
            "SELECT lo_import('/etc/passwd')",
            "COPY orders TO PROGRAM 'id'",
            "ALTER SYSTEM SET work_mem = '1GB'",
            "CREATE EXTENSION dblink",
            "LOAD 'auto_explain'",
            "SELECT billing.mark_paid(1)",
            "select * from \"billing\".invoices",
            "SELECT * FROM U&\"billin\\0067\".invoices",
            "DeLeTe\tFROM\norders",
            "SET search_path = billing, public",
            "SELECT set_config('search_path', 'billing', false)",
            "PREPARE pinned AS SELECT set_config('search_path', 'billing', false)",
            "BEGIN; DECLARE c CURSOR FOR SELECT id FROM big_capped",
            "SELECT * FROM orders FOR UPDATE",
            // write-orders names orders; the function writes billing, where no-billing cannot see.
            "UPDATE orders SET total = total FROM (SELECT billing.mark_paid(2)) x WHERE orders.id = 1",
        ] {
            let e = match c.batch_execute(sql).await {
                Ok(()) => panic!("{sql} was allowed; recordings:\n{}", s.gw.recordings()),
                Err(e) => e,
            };
            let (code, message) = db_error(&e);
            assert!(code == "42501", "{sql}: {code} {message}");
        }
        // Nothing happened.
        assert_eq!(
            c.query_one("SELECT count(*) FROM orders", &[])
                .await
                .unwrap()
                .get::<_, i64>(0),
            4
        );
        // SQL-level PREPARE of an allowed read, then EXECUTE, works; EXECUTE of an unknown name does not.
        c.batch_execute("PREPARE q AS SELECT name FROM customers")
            .await
            .unwrap();
        c.batch_execute("EXECUTE q").await.unwrap();
        let e = c.batch_execute("EXECUTE never_prepared").await.unwrap_err();
        assert_eq!(db_error(&e).0, "42501");
        // In one query, an EXECUTE after a DEALLOCATE and PREPARE of its name runs the new
        // statement: decided (and masked, and capped) as that, not as what the name meant before.
        for (first, again) in [
            ("SELECT 1", "SELECT email || '' AS e FROM customers"),
            ("SELECT 1", "SELECT * FROM big_capped"),
        ] {
            c.batch_execute(&format!("PREPARE renamed AS {first}"))
                .await
                .unwrap();
            let sql = format!("DEALLOCATE renamed; PREPARE renamed AS {again}; EXECUTE renamed");
            match c.simple_query(&sql).await {
                Ok(messages) => {
                    let rows: Vec<String> = messages
                        .iter()
                        .filter_map(|m| match m {
                            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                            _ => None,
                        })
                        .collect();
                    assert!(
                        rows.iter().all(|r| !r.contains("@example.com")),
                        "{sql}: {rows:?}"
                    );
                    assert!(rows.len() <= 1000, "{sql}: {} rows past the cap", rows.len());
                }
                Err(e) => assert_eq!(db_error(&e).0, "42501", "{sql}"),
            }
            let _ = c.batch_execute("DEALLOCATE ALL").await;
        }
        // EXECUTE's own arguments run too: decided with the statement, not dropped for it.
        c.batch_execute("PREPARE echo(text) AS SELECT $1").await.unwrap();
        c.batch_execute("EXECUTE echo('plain')").await.unwrap();
        for sql in [
            "EXECUTE echo(billing.mark_paid(2)::text)",
            "EXECUTE echo(pg_read_file('/etc/passwd'))",
            "EXECUTE echo(set_config('search_path', 'billing', false))",
            "EXPLAIN EXECUTE echo(billing.mark_paid(2)::text)",
        ] {
            let e = c.batch_execute(sql).await.unwrap_err();
            assert_eq!(db_error(&e).0, "42501", "{sql}");
        }
    });
    assert_eq!(s.pg.psql("SELECT count(*) FROM orders"), "4");
    assert_eq!(s.pg.psql("SELECT count(*) FROM billing.invoices"), "2");
    assert_eq!(s.pg.psql("SELECT paid FROM billing.invoices WHERE id = 2"), "f");
}

/// On a new connection: declares the cursor `fired`, runs `write` (which code of the database's
/// own may make close `fired` and open another over a capped table), and checks that a FETCH
/// of the name is then refused.
async fn fetch_refused_after(conninfo: &str, write: &str) {
    let c = connect(conninfo).await;
    c.batch_execute("BEGIN; DECLARE fired CURSOR FOR SELECT 1")
        .await
        .unwrap();
    c.batch_execute(write).await.unwrap();
    let e = c.batch_execute("FETCH ALL FROM fired").await.unwrap_err();
    assert!(db_error(&e).1.contains("did not see declared"), "{write}: {e}");
    c.batch_execute("ROLLBACK").await.unwrap();
}

/// A FETCH waiting for earlier answers does not keep the gateway from seeing its client leave.
#[test]
fn a_client_that_leaves_while_a_fetch_waits_ends_its_session_at_once() {
    let s = setup_with(false);
    let tok = token(&s.idp);
    let mut r = Raw::login(s.plain, &tok);
    r.send(b'Q', b"BEGIN; DECLARE waiting CURSOR FOR SELECT 1\0");
    r.until_ready();
    // The FETCH waits for the sleep's answer (a rowLimit applies); the client leaves.
    r.send(b'Q', b"SELECT pg_sleep(60)\0");
    r.send(b'Q', b"FETCH ALL FROM waiting\0");
    std::thread::sleep(Duration::from_millis(300));
    drop(r);
    // The session's record is closed well before the sleep would end (the gateway gives the
    // server side 5 s to finish once the client side is gone).
    let until = Instant::now() + Duration::from_secs(20);
    while !s.gw.recordings().contains("client closed the connection") {
        assert!(
            Instant::now() < until,
            "the session did not end\n{}",
            s.gw.output()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    s.pg.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)'");
}

/// A client that sends ahead past a failure must not have the gateway decide on what the server
/// skipped: a Parse of the unnamed statement or a Bind the server did not run leaves the older
/// one in place, which would then run under the newer one's decision.
#[test]
fn pipelined_messages_after_a_failure_are_not_decided_on_guesses() {
    let s = setup_with(false);
    let tok = token(&s.idp);
    let before = s.pg.psql("SELECT count(*) FROM orders");
    let errors_in = |msgs: &[(u8, Vec<u8>)]| -> Vec<String> {
        msgs.iter()
            .filter(|(t, _)| *t == b'E')
            .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
            .collect()
    };
    // The answers up to `n` ReadyForQuery messages, and whether an error among them says `why`.
    let answers =
        |r: &mut Raw, n: usize| -> Vec<(u8, Vec<u8>)> { (0..n).flat_map(|_| r.until_ready()).collect() };
    let refused = |msgs: &[(u8, Vec<u8>)], why: &str| errors_in(msgs).iter().any(|e| e.contains(why));
    // The unnamed statement: a DELETE parsed, then (after a failure, so skipped) a SELECT.
    let mut r = Raw::login(s.plain, &tok);
    r.send(b'P', &parse("", "DELETE FROM orders WHERE id = 1"));
    r.send(b'S', b"");
    r.send(b'E', &execute_rows("nope", 0));
    r.send(b'P', &parse("", "SELECT 1"));
    r.send(b'S', b"");
    r.send(b'B', &bind("", ""));
    r.send(b'E', &execute_rows("", 0));
    r.send(b'S', b"");
    let msgs = answers(&mut r, 3);
    // Refused by the gateway, or, when the server's answer voiding the skipped Parse was read
    // before the Bind was decided, by the server (the refusal's marker left it no unnamed
    // statement): either way nothing runs.
    assert!(
        refused(&msgs, "cannot tell which statement")
            || refused(&msgs, "prepared statement \"\" does not exist"),
        "{msgs:?}"
    );
    assert!(msgs.iter().all(|(t, _)| *t != b'C'), "nothing ran: {msgs:?}");
    assert_eq!(s.pg.psql("SELECT count(*) FROM orders"), before);

    // A portal: a DELETE bound (not run), a savepoint, a Bind of the name the server refuses,
    // a rollback to the savepoint (which keeps the DELETE's portal) and an Execute of the name.
    let mut r = Raw::login(s.plain, &tok);
    r.send(b'Q', b"BEGIN\0");
    r.until_ready();
    r.send(b'P', &parse("s", "DELETE FROM orders WHERE id = 1 RETURNING id"));
    r.send(b'B', &bind("p", "s"));
    r.send(b'S', b"");
    let msgs = r.until_ready();
    assert!(errors_in(&msgs).is_empty(), "{msgs:?}");
    r.send(b'Q', b"SAVEPOINT sp\0");
    r.until_ready();
    r.send(b'P', &parse("", "SELECT 1"));
    r.send(b'B', &bind("p", ""));
    r.send(b'S', b"");
    r.send(b'Q', b"ROLLBACK TO SAVEPOINT sp\0");
    r.send(b'E', &execute_rows("p", 0));
    r.send(b'S', b"");
    let msgs = answers(&mut r, 3);
    assert!(refused(&msgs, "has not answered that Bind yet"), "{msgs:?}");
    assert!(
        !msgs.iter().any(|(t, b)| *t == b'C' && b.starts_with(b"DELETE")),
        "{msgs:?}"
    );
    r.send(b'Q', b"COMMIT\0");
    r.until_ready();
    assert_eq!(s.pg.psql("SELECT count(*) FROM orders"), before);
}

/// A Parse message body: statement name, text, no parameter types.
fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(name.as_bytes());
    b.push(0);
    b.extend_from_slice(sql.as_bytes());
    b.push(0);
    b.extend_from_slice(&0i16.to_be_bytes());
    b
}

/// A Bind message body: portal, statement, no parameters, default result formats.
fn bind(portal: &str, statement: &str) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(portal.as_bytes());
    b.push(0);
    b.extend_from_slice(statement.as_bytes());
    b.push(0);
    b.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    b
}

/// A Bind message body of the unnamed portal: statement, one text parameter, default result
/// formats.
fn bind_text(statement: &str, value: &str) -> Vec<u8> {
    let mut b = vec![0];
    b.extend_from_slice(statement.as_bytes());
    b.push(0);
    b.extend_from_slice(&0i16.to_be_bytes());
    b.extend_from_slice(&1i16.to_be_bytes());
    b.extend_from_slice(&(value.len() as i32).to_be_bytes());
    b.extend_from_slice(value.as_bytes());
    b.extend_from_slice(&0i16.to_be_bytes());
    b
}

/// An Execute message body: portal and row count (0: all).
fn execute_rows(portal: &str, max_rows: i32) -> Vec<u8> {
    let mut b = portal.as_bytes().to_vec();
    b.push(0);
    b.extend_from_slice(&max_rows.to_be_bytes());
    b
}

/// The SQLSTATEs of the errors among `msgs`.
fn errors(msgs: &[(u8, Vec<u8>)]) -> Vec<String> {
    msgs.iter()
        .filter(|(t, _)| *t == b'E')
        .map(|(_, b)| sqlstate(b))
        .collect()
}

/// Minimal raw client for protocol abuse.
struct Raw(TcpStream, (i32, i32));

impl Raw {
    fn login(port: u16, token: &str) -> Raw {
        Raw::login_as(port, "ci-agent", token)
    }

    fn login_as(port: u16, user: &str, token: &str) -> Raw {
        Raw::login_with(port, user, token, &[])
    }

    /// Logged in with `params` in the startup packet besides `user` and `database`.
    fn login_with(port: u16, user: &str, token: &str, params: &[(&str, &str)]) -> Raw {
        let mut raw = Raw::startup_with(port, user, params);
        let mut pw = token.as_bytes().to_vec();
        pw.push(0);
        raw.send(b'p', &pw);
        loop {
            let (tag, body) = raw.read();
            assert_ne!(tag, b'E', "{}", String::from_utf8_lossy(&body));
            if tag == b'K' {
                let int = |i: usize| i32::from_be_bytes([body[i], body[i + 1], body[i + 2], body[i + 3]]);
                raw.1 = (int(0), int(4));
            }
            if tag == b'Z' {
                return raw;
            }
        }
    }

    /// Connected and started up, asked for the password.
    fn startup(port: u16) -> Raw {
        Raw::startup_as(port, "ci-agent")
    }

    fn startup_as(port: u16, user: &str) -> Raw {
        Raw::startup_with(port, user, &[])
    }

    fn startup_with(port: u16, user: &str, params: &[(&str, &str)]) -> Raw {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut body = Vec::new();
        body.extend_from_slice(&196608i32.to_be_bytes());
        for &(k, v) in [("user", user), ("database", "shop")].iter().chain(params) {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut packet = ((body.len() + 4) as i32).to_be_bytes().to_vec();
        packet.extend(body);
        s.write_all(&packet).unwrap();
        let mut raw = Raw(s, (0, 0));
        let (tag, _) = raw.read();
        assert_eq!(tag, b'R');
        raw
    }

    fn send(&mut self, tag: u8, body: &[u8]) {
        let mut m = vec![tag];
        m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        m.extend_from_slice(body);
        self.0.write_all(&m).unwrap();
    }

    fn read(&mut self) -> (u8, Vec<u8>) {
        let mut head = [0u8; 5];
        self.0.read_exact(&mut head).unwrap();
        let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0u8; len - 4];
        self.0.read_exact(&mut body).unwrap();
        (head[0], body)
    }

    /// Reads until ReadyForQuery or end of stream; returns the messages' tags and bodies.
    fn until_ready(&mut self) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        loop {
            let mut head = [0u8; 5];
            if self.0.read_exact(&mut head).is_err() {
                return out;
            }
            let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
            let mut body = vec![0u8; len.saturating_sub(4)];
            if self.0.read_exact(&mut body).is_err() {
                return out;
            }
            out.push((head[0], body));
            if head[0] == b'Z' {
                return out;
            }
        }
    }
}

/// Whether any DataRow among `msgs` holds an `@` (an email that masking should have stopped).
fn rows_hold_an_email(msgs: &[(u8, Vec<u8>)]) -> bool {
    msgs.iter().any(|(t, b)| *t == b'D' && b.contains(&b'@'))
}

fn sqlstate(body: &[u8]) -> String {
    let mut i = 0;
    while i < body.len() && body[i] != 0 {
        let code = body[i];
        let end = body[i + 1..]
            .iter()
            .position(|b| *b == 0)
            .map(|p| i + 1 + p)
            .unwrap_or(body.len());
        if code == b'C' {
            return String::from_utf8_lossy(&body[i + 1..end]).into_owned();
        }
        i = end + 1;
    }
    String::new()
}

#[test]
fn protocol_abuse_is_refused_and_the_gateway_survives() {
    let s = setup_with(true); // the md5 role this time
    let tok = token(&s.idp);
    // FunctionCall ('F') is refused; the session stays usable.
    let mut r = Raw::login(s.plain, &tok);
    let mut f = Vec::new();
    f.extend_from_slice(&2619i32.to_be_bytes()); // pg_read_file's OID in the catalogue of many versions
    f.extend_from_slice(&0i16.to_be_bytes());
    f.extend_from_slice(&0i16.to_be_bytes());
    f.extend_from_slice(&0i16.to_be_bytes());
    r.send(b'F', &f);
    let msgs = r.until_ready();
    assert_eq!(msgs[0].0, b'E');
    assert_eq!(sqlstate(&msgs[0].1), "42501");
    r.send(b'Q', b"SELECT 1\0");
    let msgs = r.until_ready();
    assert!(msgs.iter().any(|(t, _)| *t == b'D'), "session still usable");
    // Portals kept bound hold their parameters for the session: past 1024 in one transaction a
    // Bind is refused (54000), and the session goes on.
    r.send(b'Q', b"BEGIN\0");
    r.until_ready();
    r.send(b'P', &parse("one", "SELECT 1"));
    r.send(b'S', b"");
    assert!(errors(&r.until_ready()).is_empty());
    let mut binds = Vec::new();
    for i in 0..1025 {
        binds.push((b'B', bind(&format!("p{i}"), "one")));
    }
    binds.push((b'S', Vec::new()));
    let frames: Vec<(u8, &[u8])> = binds.iter().map(|(t, b)| (*t, b.as_slice())).collect();
    r.0.write_all(&pipeline(&frames)).unwrap();
    let msgs = r.until_ready();
    assert_eq!(errors(&msgs), ["54000"], "the 1025th portal");
    assert_eq!(msgs.iter().filter(|(t, _)| *t == b'2').count(), 1024);
    r.send(b'Q', b"ROLLBACK\0");
    assert!(errors(&r.until_ready()).is_empty());
    // Inside a pipeline that failed, the server skips everything up to Sync, the refusal's own
    // round trip included: the gateway would then match each later answer to the statement
    // before it (an unmasked `upper(email)`, a row cap not applied). It is a protocol violation.
    let mut failed = Raw::login(s.plain, &tok);
    let mut pipeline = Vec::new();
    for (tag, body) in [
        (b'E', execute_rows("no_such_portal", 0)),
        (b'F', f.clone()),
        (b'S', Vec::new()),
    ] {
        pipeline.push(tag);
        pipeline.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        pipeline.extend_from_slice(&body);
    }
    failed.0.write_all(&pipeline).unwrap(); // in one write: the gateway closes once it reads F
    let msgs = failed.until_ready();
    assert!(
        msgs.iter().any(|(t, b)| *t == b'E' && sqlstate(b) == "08P01"),
        "{msgs:?}"
    );
    assert!(
        msgs.iter().all(|(t, _)| *t != b'Z'),
        "the session ended: {msgs:?}"
    );

    // Extended protocol: named Parse accepted, later Bind/Execute decided on the registered text;
    // Close and re-Parse of the unnamed statement are tracked.
    let execute = |portal: &str| execute_rows(portal, 0);
    r.send(b'P', &parse("del", "DELETE FROM orders WHERE id = 1"));
    r.send(b'S', b"");
    let msgs = r.until_ready();
    assert_eq!(msgs[0].0, b'1', "parse itself is accepted");
    r.send(b'B', &bind("", "del"));
    r.send(b'E', &execute(""));
    r.send(b'S', b"");
    let msgs = r.until_ready();
    let err = msgs.iter().find(|(t, _)| *t == b'E').expect("refused");
    assert_eq!(sqlstate(&err.1), "42501");
    // A binary value of a type the client never named reads to the approver as its size only:
    // no approval is asked for what the approver cannot read (the server takes it as int4).
    r.send(b'P', &parse("below", "DELETE FROM orders WHERE id < $1"));
    let mut b = vec![0];
    b.extend_from_slice(b"below\0");
    b.extend_from_slice(&1i16.to_be_bytes());
    b.extend_from_slice(&1i16.to_be_bytes());
    b.extend_from_slice(&1i16.to_be_bytes());
    b.extend_from_slice(&4i32.to_be_bytes());
    b.extend_from_slice(&i32::MAX.to_be_bytes());
    b.extend_from_slice(&0i16.to_be_bytes());
    r.send(b'B', &b);
    r.send(b'E', &execute(""));
    r.send(b'S', b"");
    let msgs = r.until_ready();
    let err = msgs.iter().find(|(t, _)| *t == b'E').expect("refused");
    let text = String::from_utf8_lossy(&err.1);
    assert_eq!(sqlstate(&err.1), "42501", "{text}");
    assert!(
        text.contains("parameter $1 is binary") && !text.contains("ApprovalRequest"),
        "{text}"
    );
    // Unnamed: allowed text, then Close, then re-Parse with a write: the write is decided.
    r.send(b'P', &parse("", "SELECT 1"));
    r.send(b'C', b"S\0");
    r.send(b'P', &parse("", "DELETE FROM orders WHERE id = 2"));
    r.send(b'B', &bind("", ""));
    r.send(b'E', &execute(""));
    r.send(b'S', b"");
    let msgs = r.until_ready();
    let err = msgs.iter().find(|(t, _)| *t == b'E').expect("refused");
    assert_eq!(sqlstate(&err.1), "42501");
    assert_eq!(s.pg.psql("SELECT count(*) FROM orders"), "4");

    // Hostile frames: length below 4, huge, unknown type, COPY data out of state: error and close.
    for (tag, len) in [(b'Q', 0i32), (b'Q', 3), (b'Q', 0x7fff_ffff), (b'?', 4), (b'd', 4)] {
        let mut r = Raw::login(s.plain, &tok);
        let mut m = vec![tag];
        m.extend_from_slice(&len.to_be_bytes());
        r.0.write_all(&m).unwrap();
        let msgs = r.until_ready();
        assert!(
            msgs.first()
                .is_some_and(|(t, b)| *t == b'E' && sqlstate(b) == "08P01"),
            "{} {len}: {msgs:?}",
            tag as char
        );
    }
    // Statements held by different rules in one query: one approval would have covered both
    // (asked under the first rule only); the query is refused and nothing is asked or run.
    let mut r = Raw::login(s.plain, &tok);
    r.send(
        b'Q',
        b"DELETE FROM orders WHERE id = 3; INSERT INTO customers (name, email) VALUES ('x', 'x@example.com')\0",
    );
    let msgs = r.until_ready();
    let err = msgs.iter().find(|(t, _)| *t == b'E').expect("refused");
    let text = String::from_utf8_lossy(&err.1);
    assert!(
        sqlstate(&err.1) == "42501" && text.contains("need approval under different rules"),
        "{text}"
    );
    assert_eq!(s.pg.psql("SELECT count(*) FROM orders"), "4");
    assert_eq!(s.pg.psql("SELECT count(*) FROM customers"), "3");

    // A statement text over the classification cap is refused before it is parsed, and the
    // session goes on.
    let mut r = Raw::login(s.plain, &tok);
    let huge = format!("SELECT 1 /*{}*/\0", "x".repeat(2 * 1024 * 1024));
    r.send(b'Q', huge.as_bytes());
    let msgs = r.until_ready();
    let err = msgs.iter().find(|(t, _)| *t == b'E').expect("refused");
    assert!(
        String::from_utf8_lossy(&err.1).contains("load bulk data with COPY"),
        "{}",
        String::from_utf8_lossy(&err.1)
    );
    r.send(b'Q', b"SELECT 1\0");
    assert!(r.until_ready().iter().any(|(t, _)| *t == b'D'));

    // Before authentication only a token-sized password message is read: one declared at 64
    // MiB is refused at once (it was buffered for up to the startup timeout, by any client).
    let mut r = Raw::startup(s.plain);
    let started = std::time::Instant::now();
    let mut m = vec![b'p'];
    m.extend_from_slice(&0x0400_0004i32.to_be_bytes());
    m.extend_from_slice(&[b'x'; 1024]);
    r.0.write_all(&m).unwrap();
    let msgs = r.until_ready();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed after {:?}: {msgs:?}",
        started.elapsed()
    );
    assert!(
        msgs.iter().all(|(t, b)| *t == b'E' && sqlstate(b) == "08P01"),
        "{msgs:?}"
    );
    // Still serving.
    let mut r = Raw::login(s.plain, &tok);
    r.send(b'Q', b"SELECT 1\0");
    assert!(r.until_ready().iter().any(|(t, _)| *t == b'D'));
    s.assert_no_canary();
}

/// A notification's payload is data a trigger or another session chose (a changed row, say):
/// where column rules apply it is withheld, since it may quote masked columns by value.
#[test]
fn notification_payloads_are_withheld_where_columns_are_masked() {
    let s = setup_with(false);
    let tok = token(&s.idp);
    let mut r = Raw::login(s.plain, &tok);
    r.send(b'Q', b"LISTEN customer_changes\0");
    assert!(errors(&r.until_ready()).is_empty());
    s.pg.psql(
        "SELECT pg_notify('customer_changes', (SELECT row_to_json(c)::text FROM customers c ORDER BY id LIMIT 1))",
    );
    let (tag, body) = r.read();
    assert_eq!(tag, b'A', "{:?}", String::from_utf8_lossy(&body));
    // After the sender's process ID, whose four bytes may hold an `@`.
    let text = String::from_utf8_lossy(&body[4..]);
    assert!(text.contains("customer_changes"), "{text:?}");
    assert!(text.ends_with("[REDACTED]\0"), "{text:?}");
    assert!(!text.contains('@'), "{text:?}");
    // Without column (or json field) rules a payload is passed, through the detectors.
    edit_manifests(
        &s.gw,
        "    - columns: [\"public.customers.email\"]\n      strategy: Redact\n",
        "",
    );
    edit_manifests(
        &s.gw,
        "    - jsonFields: [\"$..ssn\"]\n      strategy: Redact\n",
        "",
    );
    let until = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let mut r = Raw::login(s.plain, &tok);
        r.send(b'Q', b"LISTEN customer_changes\0");
        // A session opened between the two reloads is stale after the second: open another.
        if !errors(&r.until_ready()).is_empty() && Instant::now() < until {
            continue;
        }
        s.pg.psql("NOTIFY customer_changes, 'paid with 4111 1111 1111 1111'");
        let (tag, body) = r.read();
        assert_eq!(tag, b'A');
        let text = String::from_utf8_lossy(&body).into_owned();
        if !text.ends_with("[REDACTED]\0") || Instant::now() > until {
            break text;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        text.ends_with("paid with [REDACTED:CREDIT_CARD]\0"),
        "{text:?}\n{}",
        s.gw.output()
    );
}

/// A column rule that matches no column of the database (a misspelt table) masks nothing: the
/// gateway says so in its log, once, and in the recording of every session it applies to.
#[test]
fn a_column_rule_matching_nothing_is_reported() {
    let s = setup_with(false);
    let tok = token(&s.idp);
    edit_manifests(
        &s.gw,
        "    - columns: [\"public.customers.email\"]\n",
        "    - columns: [\"public.customers.email\", \"public.customer.phone\"]\n",
    );
    let warned = |output: &str| {
        output
            .lines()
            .filter(|l| {
                l.contains("column masking rules match no column") && l.contains("public.customer.phone")
            })
            .count()
    };
    let until = Instant::now() + Duration::from_secs(30);
    while warned(&s.gw.output()) == 0 {
        assert!(Instant::now() < until, "no warning:\n{}", s.gw.output());
        let mut r = Raw::login(s.plain, &tok);
        r.send(b'Q', b"SELECT 1\0");
        r.until_ready();
        std::thread::sleep(Duration::from_millis(200));
    }
    let output = s.gw.output();
    let warning = output
        .lines()
        .find(|l| l.contains("public.customer.phone"))
        .unwrap();
    assert!(!warning.contains("public.customers.email"), "{warning}");
    // Logged once, however many sessions start.
    let mut r = Raw::login(s.plain, &tok);
    r.send(b'Q', b"SELECT 1\0");
    r.until_ready();
    assert_eq!(warned(&s.gw.output()), 1);
    let recordings = s.gw.recordings();
    let named = recordings
        .lines()
        .filter(|l| l.contains("\"unmatched_column_rules\":[") && l.contains("\"public.customer.phone\""))
        .count();
    assert!(named >= 2, "the recordings do not name the rule");
}

/// PostgreSQL keeps SQL PREPARE and protocol-level statements under one name space, runs
/// nothing after an extended-protocol error until Sync (a simple Query included), and lets SQL
/// DECLARE and CLOSE replace a portal. None of these may run a statement other than the one
/// decided, or return what masking and row caps should have stopped.
#[test]
fn shared_names_and_pipelines_cannot_run_what_was_not_decided() {
    let s = setup_with(false);
    let tok = token(&s.idp);
    let orders = || s.pg.psql("SELECT count(*) FROM orders");
    let before = orders();

    // A protocol statement, then a SQL PREPARE of its name (which the server refuses): EXECUTE
    // must not be decided on the PREPARE's text.
    let mut r = Raw::login(s.plain, &tok);
    r.send(b'P', &parse("s", "DELETE FROM orders"));
    r.send(b'S', b"");
    assert_eq!(r.until_ready()[0].0, b'1');
    r.send(b'Q', b"PREPARE s AS SELECT 1\0");
    assert_eq!(errors(&r.until_ready()), ["42P05"]);
    r.send(b'Q', b"EXECUTE s\0");
    assert_eq!(errors(&r.until_ready()), ["42501"]);
    // A SQL PREPARE that never ran (its query failed first), then a protocol statement of its
    // name: neither Bind nor EXECUTE may take the PREPARE's text for it.
    r.send(b'Q', b"SELECT 1/0; PREPARE t AS SELECT 1\0");
    assert_eq!(errors(&r.until_ready()), ["22012"]);
    r.send(b'P', &parse("t", "DELETE FROM orders"));
    r.send(b'B', &bind("", "t"));
    r.send(b'E', &execute_rows("", 0));
    r.send(b'S', b"");
    assert!(!errors(&r.until_ready()).is_empty());
    r.send(b'Q', b"EXECUTE t\0");
    assert_eq!(errors(&r.until_ready()), ["42501"]);
    // Closing a protocol statement frees the name on both sides: a new PREPARE is known again.
    r.send(b'C', b"St\0");
    r.send(b'S', b"");
    r.until_ready();
    r.send(b'Q', b"PREPARE t AS SELECT 7\0");
    assert!(errors(&r.until_ready()).is_empty());
    r.send(b'Q', b"EXECUTE t\0");
    let msgs = r.until_ready();
    assert!(errors(&msgs).is_empty(), "{msgs:?}");
    assert!(msgs.iter().any(|(t, b)| *t == b'D' && b.ends_with(b"7")));
    assert_eq!(orders(), before);

    // A Close or DEALLOCATE the server did not run (skipped after an error, or in a Query that
    // failed first) leaves it holding the statement: a PREPARE of the name, which the server
    // then refuses as a duplicate, must not be what EXECUTE is decided on.
    let mut r = Raw::login(s.plain, &tok);
    for name in ["u1", "u2"] {
        r.send(b'P', &parse(name, "DELETE FROM orders"));
        r.send(b'S', b"");
        assert_eq!(r.until_ready()[0].0, b'1');
    }
    r.send(b'E', &execute_rows("nope", 0));
    r.send(b'C', b"Su1\0");
    r.send(b'S', b"");
    assert_eq!(errors(&r.until_ready()), ["34000"]);
    r.send(b'Q', b"SELECT 1/0; DEALLOCATE u2\0");
    assert_eq!(errors(&r.until_ready()), ["22012"]);
    for name in ["u1", "u2"] {
        r.send(b'Q', format!("PREPARE {name} AS SELECT 1\0").as_bytes());
        assert_eq!(errors(&r.until_ready()), ["42P05"], "{name}");
        r.send(b'Q', format!("EXECUTE {name}\0").as_bytes());
        let msgs = r.until_ready();
        assert_eq!(errors(&msgs), ["42501"], "{name}: {msgs:?}");
    }
    assert_eq!(orders(), before);
    // The same, pipelined: the PREPARE and EXECUTE are decided before the server has answered
    // the DEALLOCATE or Close, so a name freed in an earlier segment is not free yet.
    for name in ["u3", "u4", "u5", "u6", "u7", "u8"] {
        r.send(b'P', &parse(name, "DELETE FROM orders"));
    }
    r.send(b'S', b"");
    assert!(errors(&r.until_ready()).is_empty());
    r.send(b'Q', b"SELECT 1/0; DEALLOCATE u3\0");
    r.send(b'Q', b"PREPARE u3 AS SELECT 1\0");
    r.send(b'Q', b"EXECUTE u3\0");
    assert_eq!(errors(&r.until_ready()), ["22012"]);
    assert_eq!(errors(&r.until_ready()), ["42P05"]);
    assert_eq!(errors(&r.until_ready()), ["42501"]);
    r.send(b'E', &execute_rows("nope", 0));
    r.send(b'C', b"Su4\0");
    r.send(b'S', b"");
    r.send(b'P', &parse("u4", "SELECT 1"));
    r.send(b'S', b"");
    r.send(b'B', &bind("", "u4"));
    r.send(b'E', &execute_rows("", 0));
    r.send(b'S', b"");
    assert_eq!(errors(&r.until_ready()), ["34000"]);
    assert_eq!(errors(&r.until_ready()), ["42P05"]);
    assert_eq!(errors(&r.until_ready()), ["26000"]);
    // Freed and prepared again in one segment, then used in the next before any answer: the
    // new text runs only if the server ran the Close or DEALLOCATE, which it skipped.
    r.send(b'E', &execute_rows("nope", 0));
    r.send(b'C', b"Su7\0");
    r.send(b'P', &parse("u7", "SELECT 1"));
    r.send(b'S', b"");
    r.send(b'B', &bind("", "u7"));
    r.send(b'E', &execute_rows("", 0));
    r.send(b'S', b"");
    assert_eq!(errors(&r.until_ready()), ["34000"]);
    assert_eq!(errors(&r.until_ready()), ["26000"]);
    r.send(b'Q', b"SELECT 1/0; DEALLOCATE u8; PREPARE u8 AS SELECT 1\0");
    r.send(b'Q', b"EXECUTE u8\0");
    assert_eq!(errors(&r.until_ready()), ["22012"]);
    assert_eq!(errors(&r.until_ready()), ["42501"]);
    // A DEALLOCATE after one that failed for want of its statement did not run either.
    r.send(b'Q', b"DEALLOCATE nothing_here; DEALLOCATE u5\0");
    assert_eq!(errors(&r.until_ready()), ["26000"]);
    r.send(b'Q', b"PREPARE u5 AS SELECT 1\0");
    assert_eq!(errors(&r.until_ready()), ["42P05"]);
    r.send(b'Q', b"EXECUTE u5\0");
    assert_eq!(errors(&r.until_ready()), ["42501"]);
    assert_eq!(orders(), before);
    // Closing and preparing a name again in one segment (a driver's statement cache) works:
    // the new statement runs only if the Close did.
    r.send(b'C', b"Su6\0");
    r.send(b'P', &parse("u6", "SELECT 6"));
    r.send(b'B', &bind("", "u6"));
    r.send(b'E', &execute_rows("", 0));
    r.send(b'S', b"");
    let msgs = r.until_ready();
    assert!(errors(&msgs).is_empty(), "{msgs:?}");
    assert!(msgs.iter().any(|(t, b)| *t == b'D' && b.ends_with(b"6")));
    // Freeing them for real makes the names usable again; so does a DEALLOCATE of a name the
    // server never held.
    r.send(b'Q', b"DEALLOCATE u1; DEALLOCATE nothing_here\0");
    assert_eq!(errors(&r.until_ready()), ["26000"]);
    for name in ["u1", "nothing_here"] {
        r.send(b'Q', format!("PREPARE {name} AS SELECT 8\0").as_bytes());
        assert!(errors(&r.until_ready()).is_empty(), "{name}");
        r.send(b'Q', format!("EXECUTE {name}\0").as_bytes());
        let msgs = r.until_ready();
        assert!(errors(&msgs).is_empty(), "{name}: {msgs:?}");
        assert!(msgs.iter().any(|(t, b)| *t == b'D' && b.ends_with(b"8")));
    }

    // After an extended-protocol error the server skips a simple Query up to Sync; the gateway
    // would count an answer too many. Such a Query ends the session instead.
    let mut r = Raw::login(s.plain, &tok);
    r.send(b'E', &execute_rows("nope", 0));
    r.send(b'Q', b"SELECT 1\0");
    r.send(b'S', b"");
    let msgs = r.until_ready();
    assert!(errors(&msgs).contains(&"08P01".to_string()), "{msgs:?}");

    // After an error the server skips everything up to Sync, also what the client sends once
    // it has read the error: a skipped Close and Parse must not rename a statement the server
    // still holds (named or unnamed), nor a skipped Bind a portal.
    for name in ["s1", ""] {
        let mut r = Raw::login(s.plain, &tok);
        // Denied by policy, and it would delete nothing: only its command tag tells it ran.
        r.send(b'P', &parse(name, "DELETE FROM orders WHERE id = -1"));
        r.send(b'S', b"");
        assert!(errors(&r.until_ready()).is_empty());
        r.send(b'E', &execute_rows("nope", 0));
        r.send(b'H', b"");
        while r.read().0 != b'E' {}
        if !name.is_empty() {
            r.send(b'C', format!("S{name}\0").as_bytes());
        }
        r.send(b'P', &parse(name, "SELECT 1"));
        r.send(b'S', b"");
        r.until_ready();
        r.send(b'B', &bind("", name));
        r.send(b'E', &execute_rows("", 0));
        r.send(b'S', b"");
        let msgs = r.until_ready();
        // The gateway knows of no statement by the name: the skipped Parse registered none.
        assert_eq!(errors(&msgs), ["26000"], "{name:?}: {msgs:?}");
        assert!(!msgs.iter().any(|(t, b)| *t == b'C' && b.starts_with(b"DELETE")));
        assert_eq!(orders(), before, "statement {name:?}");
    }
    let mut r = Raw::login(s.plain, &tok);
    r.send(b'Q', b"BEGIN\0");
    r.until_ready();
    r.send(b'P', &parse("del", "DELETE FROM orders"));
    r.send(b'P', &parse("sel", "SELECT 1"));
    r.send(b'E', &execute_rows("nope", 0));
    r.send(b'H', b"");
    while r.read().0 != b'E' {}
    r.send(b'B', &bind("p", "sel"));
    r.send(b'S', b"");
    r.until_ready();
    r.send(b'Q', b"ROLLBACK\0");
    r.until_ready();
    r.send(b'E', &execute_rows("p", 0));
    r.send(b'S', b"");
    assert!(
        !errors(&r.until_ready()).is_empty(),
        "a skipped Bind made no portal"
    );
    assert_eq!(orders(), before);

    // A portal described, then replaced by a SQL cursor of its name: its Execute is refused
    // (the gateway decided and described another statement), and no email leaves unmasked.
    let mut r = Raw::login(s.plain, &tok);
    r.send(b'Q', b"BEGIN\0");
    r.until_ready();
    r.send(b'P', &parse("", "SELECT 'x'::text"));
    r.send(b'B', &bind("p", ""));
    r.send(b'D', b"Pp\0");
    r.send(b'S', b"");
    r.until_ready();
    r.send(
        b'Q',
        b"CLOSE p; DECLARE p CURSOR FOR SELECT email || '' FROM customers\0",
    );
    assert!(errors(&r.until_ready()).is_empty());
    r.send(b'E', &execute_rows("p", 0));
    r.send(b'S', b"");
    let msgs = r.until_ready();
    assert!(!errors(&msgs).is_empty(), "{msgs:?}");
    assert!(!rows_hold_an_email(&msgs), "{msgs:?}");

    // A row cap is not reset by fetching a portal in parts.
    let mut r = Raw::login(s.plain, &tok);
    r.send(b'Q', b"BEGIN\0");
    r.until_ready();
    r.send(b'P', &parse("", "SELECT id FROM big_capped"));
    r.send(b'B', &bind("q", ""));
    r.send(b'E', &execute_rows("q", 800));
    r.send(b'E', &execute_rows("q", 800));
    r.send(b'S', b"");
    let msgs = r.until_ready();
    let rows = msgs.iter().filter(|(t, _)| *t == b'D').count();
    assert!(rows <= 1000, "{rows} rows past the cap of 1000");
    assert_eq!(
        errors(&msgs).first().map(String::as_str),
        Some("42501"),
        "{msgs:?}"
    );

    // Detectors read COPY output as text: binary COPY TO would carry card numbers as integers.
    let mut r = Raw::login(s.plain, &tok);
    r.send(b'Q', b"COPY (SELECT replace(card_number, ' ', '')::bigint FROM orders WHERE id = 2) TO STDOUT (FORMAT binary)\0");
    let msgs = r.until_ready();
    assert_eq!(errors(&msgs), ["42501"], "{msgs:?}");
    assert!(!msgs.iter().any(|(t, _)| *t == b'd'));

    // A message other than COPY data during COPY FROM STDIN ends the copy with an error, and a
    // server before PostgreSQL 14 drops the message unanswered: the gateway, an answer short,
    // would decide later results by the wrong statement. So the gateway itself ends the session
    // (it does not rely on the server's version), whether the message came after the server
    // started copying or was sent before it could know.
    for wait in [true, false] {
        let mut r = Raw::login(s.plain, &tok);
        r.send(b'Q', b"COPY orders (customer_id, total) FROM STDIN\0");
        if wait {
            while r.read().0 != b'G' {}
        }
        r.send(b'Q', b"SELECT 1\0");
        r.send(b'Q', b"SELECT email || '' FROM customers\0");
        // Were the session to go on, a later cycle would carry the SELECT's rows.
        let mut msgs = r.until_ready();
        msgs.extend(r.until_ready());
        let fatal = msgs
            .iter()
            .find(|(t, b)| *t == b'E' && b.windows(5).any(|w| w == b"FATAL"))
            .unwrap_or_else(|| panic!("{msgs:?}"));
        assert_eq!(sqlstate(&fatal.1), "08P01", "{msgs:?}");
        assert!(
            String::from_utf8_lossy(&fatal.1).contains("during COPY FROM STDIN"),
            "{msgs:?}"
        );
        assert!(!rows_hold_an_email(&msgs), "{msgs:?}");
    }
    // A COPY that fails before copying (or during it) ends its cycle: the session goes on, even
    // when the next query was sent before the answer came.
    let mut r = Raw::login(s.plain, &tok);
    r.send(b'Q', b"COPY orders (no_such_column) FROM STDIN\0");
    r.send(b'Q', b"SELECT 41 + 1\0");
    assert_eq!(errors(&r.until_ready()), ["42703"]);
    let msgs = r.until_ready();
    assert!(
        errors(&msgs).is_empty() && msgs.iter().any(|(t, b)| *t == b'D' && b.ends_with(b"42")),
        "{msgs:?}"
    );
    r.send(b'Q', b"COPY orders (no_such_column) FROM STDIN\0");
    assert_eq!(errors(&r.until_ready()), ["42703"]);
    // Two copies in one Query, one after the other (as psql runs them; rolled back here); a
    // message sent between them, before the second could start, waits for it and ends the
    // session when it starts.
    let two = b"BEGIN; COPY orders (customer_id, total) FROM STDIN; COPY orders (customer_id, total) FROM STDIN; ROLLBACK\0";
    for interloper in [false, true] {
        let mut r = Raw::login(s.plain, &tok);
        r.send(b'Q', two);
        while r.read().0 != b'G' {}
        r.send(b'd', b"1\t1.00\n");
        r.send(b'c', b"");
        if interloper {
            r.send(b'Q', b"SELECT email || '' FROM customers\0");
            let msgs = r.until_ready();
            assert!(
                msgs.iter().any(|(t, b)| *t == b'E'
                    && sqlstate(b) == "08P01"
                    && String::from_utf8_lossy(b).contains("during COPY FROM STDIN")),
                "{msgs:?}"
            );
            assert!(!rows_hold_an_email(&msgs), "{msgs:?}");
            continue;
        }
        while r.read().0 != b'G' {}
        r.send(b'd', b"1\t2.00\n");
        r.send(b'c', b"");
        let msgs = r.until_ready();
        assert!(errors(&msgs).is_empty(), "{msgs:?}");
        // The second COPY's CommandComplete and the ROLLBACK's.
        assert_eq!(msgs.iter().filter(|(t, _)| *t == b'C').count(), 2, "{msgs:?}");
    }
    r.send(b'Q', b"COPY orders (customer_id, total) FROM STDIN\0");
    while r.read().0 != b'G' {}
    r.send(b'd', b"not a number\tx\n");
    r.send(b'c', b"");
    assert_eq!(errors(&r.until_ready()), ["22P02"]);
    r.send(b'Q', b"SELECT 1\0");
    let msgs = r.until_ready();
    assert!(errors(&msgs).is_empty(), "{msgs:?}");
    assert_eq!(orders(), before);

    // COPY FROM STDIN through tokio-postgres (Bind, Execute, Sync, data, CopyDone, Sync: the
    // server ignores the first Sync), then masked reads: the session stays in step.
    rt().block_on(async {
        let c = connect(&s.plain_conninfo(&tok)).await;
        let sink = c
            .copy_in::<_, &'static [u8]>("COPY orders (customer_id, total) FROM STDIN")
            .await
            .unwrap();
        futures_util::pin_mut!(sink);
        use futures_util::SinkExt;
        sink.send(&b"1\t9.50\n"[..]).await.unwrap();
        assert_eq!(sink.finish().await.unwrap(), 1);
        for _ in 0..3 {
            let rows = c.query("SELECT email FROM customers", &[]).await.unwrap();
            assert!(!rows.is_empty());
            assert!(rows.iter().all(|r| r.get::<_, String>(0) == "[REDACTED]"));
        }
    });
    s.assert_no_canary();
}

/// Messages in one write, as a pipelining client sends them.
fn pipeline(msgs: &[(u8, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (tag, body) in msgs {
        out.push(*tag);
        out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        out.extend_from_slice(body);
    }
    out
}

/// Whether `msgs` end the session with a FATAL 08P01 whose text mentions `what`.
fn ended_with_violation(msgs: &[(u8, Vec<u8>)], what: &str) -> bool {
    msgs.iter()
        .any(|(t, b)| *t == b'E' && sqlstate(b) == "08P01" && String::from_utf8_lossy(b).contains(what))
        && msgs.iter().all(|(t, _)| *t != b'Z')
}

/// The server's view of names, pipelines and copies, where it differs from a naive proxy's:
/// PostgreSQL reads 63 bytes of a statement or portal name; a refusal's marker must not be
/// something a client can name or see; a Sync after a pipelined CopyDone is answered; a
/// pipeline after an error is skipped without answers; a deferred constraint quotes a row at
/// COMMIT.
#[test]
fn names_markers_copies_and_pipelines_keep_the_session_in_step() {
    let s = setup_with(false);
    let tok = token(&s.idp);
    let before = s.pg.psql("SELECT count(*) FROM orders");

    // Two names sharing their first 63 bytes are one statement upstream.
    let long = format!("{}1", "a".repeat(63));
    let mut r = Raw::login(s.plain, &tok);
    r.send(b'P', &parse(&long, "SELECT 1"));
    assert!(ended_with_violation(&r.until_ready(), "63 bytes"));
    let mut r = Raw::login(s.plain, &tok);
    r.send(b'B', &bind(&long, ""));
    assert!(ended_with_violation(&r.until_ready(), "63 bytes"));

    // A refused query leaves only a constant text in pg_stat_activity, and no client portal may
    // take the refusal marker's name.
    let mut r = Raw::login(s.plain, &tok);
    r.send(b'Q', b"DELETE FROM orders\0");
    assert_eq!(errors(&r.until_ready()), ["42501"]);
    assert_eq!(
        s.pg.psql("SELECT string_agg(query, ',') FROM pg_stat_activity WHERE query LIKE 'agentgate%'"),
        "agentgate_refused"
    );
    r.send(b'P', &parse("", "SELECT 1"));
    r.send(b'B', &bind("agentgate_refused_0123", ""));
    assert!(ended_with_violation(&r.until_ready(), "gateway's own"));

    // COPY data, CopyDone and Sync in one write, before the server could start the copy: the
    // server answers that Sync (it has left copy mode when it reads it), and later results are
    // masked by their own statements.
    let mut r = Raw::login(s.plain, &tok);
    r.send(b'Q', b"BEGIN\0");
    r.until_ready();
    let mut msgs: Vec<(u8, &[u8])> = vec![(b'Q', b"COPY orders (customer_id, total) FROM STDIN\0")];
    msgs.extend(std::iter::repeat_n((b'd', &b"1\t1.00\n"[..]), 3));
    msgs.extend([(b'c', &b""[..]), (b'S', &b""[..])]);
    r.0.write_all(&pipeline(&msgs)).unwrap();
    let copied = r.until_ready();
    assert!(errors(&copied).is_empty(), "{copied:?}");
    assert!(
        copied.iter().any(|(t, b)| *t == b'C' && b.starts_with(b"COPY 3")),
        "{copied:?}"
    );
    // Sent before the Sync's answer is read: were that answer taken for the first SELECT's, its
    // rows would be masked by the plan of the second, which computes over nothing masked.
    r.send(b'Q', b"SELECT upper(email) FROM customers\0");
    r.send(b'Q', b"SELECT 1\0");
    assert_eq!(r.until_ready().len(), 1, "the Sync's answer alone");
    let rows = r.until_ready();
    assert!(rows.iter().any(|(t, _)| *t == b'D'), "{rows:?}");
    assert!(!rows_hold_an_email(&rows), "{rows:?}");
    r.until_ready();
    r.send(b'Q', b"ROLLBACK\0");
    r.until_ready();
    // A Sync between COPY data: whether the server ignores it depends on when a bad row ends the
    // copy.
    let mut r = Raw::login(s.plain, &tok);
    r.send(b'Q', b"COPY orders (customer_id, total) FROM STDIN\0");
    while r.read().0 != b'G' {}
    r.0.write_all(&pipeline(&[(b'd', b"x\ty\n"), (b'S', b""), (b'c', b"")]))
        .unwrap();
    let mut msgs = r.until_ready();
    msgs.extend(r.until_ready());
    assert!(ended_with_violation(&msgs, "Sync during COPY"), "{msgs:?}");

    // A long batch under one Sync (asyncpg's executemany, pgx's batches), answered as it goes,
    // is not cut off.
    let mut r = Raw::login(s.plain, &tok);
    let (b, e) = (bind("", ""), execute_rows("", 0));
    let mut batch: Vec<(u8, &[u8])> = Vec::new();
    let select = parse("", "SELECT 1");
    batch.push((b'P', &select));
    for _ in 0..40_000 {
        batch.extend([(b'B', &b[..]), (b'E', &e[..])]);
    }
    batch.push((b'S', b""));
    let bytes = pipeline(&batch);
    let mut writer = r.0.try_clone().unwrap();
    let sender = std::thread::spawn(move || writer.write_all(&bytes).unwrap());
    let answers = r.until_ready();
    sender.join().unwrap();
    assert!(errors(&answers).is_empty(), "{:?}", answers.last());
    assert_eq!(answers.iter().filter(|(t, _)| *t == b'C').count(), 40_000);

    // After an error the server skips everything up to Sync without a word: a pipeline that
    // never syncs is cut off, not queued without end.
    let mut r = Raw::login(s.plain, &tok);
    let describe: &[u8] = b"Sno_such_statement\0";
    let msgs = vec![(b'D', describe); 2 * agentgate::protocol::postgres::session::MAX_AWAITING_MESSAGES];
    // The gateway cuts the session off while the rest is still being sent: the sender's write
    // may then fail, and only what the reader gets counts.
    let mut writer = r.0.try_clone().unwrap();
    let bytes = pipeline(&msgs);
    let sender = std::thread::spawn(move || {
        let _ = writer.write_all(&bytes);
    });
    let answers = r.until_ready();
    sender.join().unwrap();
    assert!(
        ended_with_violation(&answers, "await the server"),
        "{:?}",
        answers.last()
    );

    // A deferred unique constraint fails at COMMIT, quoting the row an INSERT wrote earlier: the
    // text is withheld where columns are masked.
    s.pg.psql("ALTER TABLE orders ADD CONSTRAINT total_once UNIQUE (total) DEFERRABLE INITIALLY DEFERRED");
    let mut r = Raw::login(s.plain, &tok);
    r.send(
        b'Q',
        b"BEGIN; INSERT INTO orders (customer_id, total) VALUES (2, 75.00)\0",
    );
    assert!(errors(&r.until_ready()).is_empty());
    r.send(b'Q', b"COMMIT\0");
    let msgs = r.until_ready();
    assert_eq!(errors(&msgs), ["23505"], "{msgs:?}");
    let text: String = msgs
        .iter()
        .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
        .collect();
    assert!(!text.contains("75.00") && text.contains("withheld"), "{text}");
    assert_eq!(s.pg.psql("SELECT count(*) FROM orders"), before);
    s.assert_no_canary();
}

/// A password in SQL (ALTER ROLE, psql's \\password) and the agent's own token, sent back in a
/// statement, never reach a recording: approvers and auditors read those.
#[test]
fn passwords_and_the_token_never_reach_a_recording() {
    let s = setup_with(false);
    let tok = token(&s.idp);
    let mut r = Raw::login(s.plain, &tok);
    for sql in [
        "ALTER ROLE ci PASSWORD 'Hunter2-Password-Canary'".to_string(),
        "alter user ci with encrypted password 'SCRAM-SHA-256$4096:c2FsdA==$Hunter2Verifier'".to_string(),
        format!("SELECT '{tok}'::text AS echoed"),
        // Unparseable: the parser's message quotes where it failed.
        "ALTER ROLE ci PASSWORD 'Hunter2-Unterminated".to_string(),
        "ALTER ROLE ci PASSWORD Hunter2Unquoted".to_string(),
    ] {
        r.send(b'Q', format!("{sql}\0").as_bytes());
        r.until_ready();
    }
    // Allowed statements are recorded twice, as the query and with their result: both masked
    // (the result's event once carried the statement's raw text).
    let insert =
        |card: &str| format!("INSERT INTO orders (customer_id, total, card_number) VALUES (1, 1, '{card}')");
    r.send(b'Q', format!("{}\0", insert("5500 0000 0000 0004")).as_bytes());
    assert!(errors(&r.until_ready()).is_empty());
    r.send(b'P', &parse("", &insert("4012 8888 8888 1881")));
    r.send(b'B', &bind("", ""));
    r.send(b'E', &execute_rows("", 0));
    r.send(b'S', b"");
    assert!(errors(&r.until_ready()).is_empty());
    // Where a record cuts a long text, the token across the cut leaves none of itself: a
    // statement past the recorded length, a parameter past its 1 KiB, a value past its 4 KiB.
    r.send(
        b'Q',
        format!("SELECT '{}{tok}' AS long\0", "y".repeat(16 * 1024 - 20)).as_bytes(),
    );
    assert!(errors(&r.until_ready()).is_empty());
    for pad in [1000, 4090] {
        let value = format!("{}{tok}", "x".repeat(pad));
        r.send(b'P', &parse("", "SELECT $1::text AS echoed"));
        r.send(b'B', &bind_text("", &value));
        r.send(b'E', &execute_rows("", 0));
        r.send(b'S', b"");
        assert!(errors(&r.until_ready()).is_empty());
    }
    // A bytea parameter in hex hides a card number from the detectors, unless they read its
    // bytes.
    let hex: String = "4111 1111 1111 1111"
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect();
    r.send(b'P', &parse("", "SELECT length($1::bytea) AS n"));
    r.send(b'B', &bind_text("", &format!("\\x{hex}")));
    r.send(b'E', &execute_rows("", 0));
    r.send(b'S', b"");
    assert!(errors(&r.until_ready()).is_empty());
    r.send(b'X', b"");
    // A client's application_name is on record from the session's start: the token there too.
    let mut named = Raw::login_with(s.plain, "ci-agent", &tok, &[("application_name", &tok)]);
    named.send(b'X', b"");
    std::thread::sleep(Duration::from_millis(500));
    let recorded = s.gw.recordings();
    assert!(recorded.contains("ALTER ROLE ci PASSWORD $1"), "{recorded}");
    assert!(
        recorded.contains(r#""application_name":"[REDACTED]""#),
        "{recorded}"
    );
    assert!(
        !recorded.contains(&hex) && recorded.contains("withheld by the detectors"),
        "{recorded}"
    );
    assert_eq!(recorded.matches(r#""type":"pg.result""#).count(), 7, "{recorded}");
    for secret in ["Hunter2", &tok, &tok[..16], "5500 0000", "4012 8888"] {
        assert!(
            !recorded.contains(secret),
            "a password or the token in a recording"
        );
    }
    assert!(recorded.contains("[REDACTED]"));
}

/// Rows that reached the client before their statement failed are on record, masked, with the
/// failure: an auditor reading only the error would take it that nothing was returned.
#[test]
fn rows_sent_before_a_statement_fails_are_recorded() {
    let s = setup_with(false);
    let tok = token(&s.idp);
    let mut r = Raw::login(s.plain, &tok);
    // The second branch fails at run time, after the first has streamed its rows.
    r.send(
        b'Q',
        b"SELECT email FROM customers UNION ALL SELECT (1 / (random() * 0)::int)::text\0",
    );
    let msgs = r.until_ready();
    assert_eq!(errors(&msgs), ["22012"], "{msgs:?}");
    let sent = msgs.iter().filter(|(tag, _)| *tag == b'D').count();
    assert!(sent > 0, "{msgs:?}");
    r.send(b'X', b"");
    std::thread::sleep(Duration::from_millis(500));
    let recorded = s.gw.recordings();
    let result = recorded
        .lines()
        .find(|l| l.contains(r#""type":"pg.result""#))
        .unwrap_or_else(|| panic!("no pg.result: {recorded}"));
    let event: serde_json::Value = serde_json::from_str(result).unwrap();
    assert_eq!(event["data"]["failed"], true, "{event}");
    assert_eq!(event["data"]["rows"], sent as u64, "{event}");
    assert!(!result.contains("@example.com"), "masked as sent: {result}");
    let error = recorded.find(r#""type":"pg.error""#).unwrap();
    assert!(recorded.find(r#""type":"pg.result""#).unwrap() < error);
}

/// A session opened with an introspected token ends once the provider revokes it (within the
/// introspection cache's TTL and the gateway's recheck), as an HTTP request with it would be
/// refused: the token's expiry, hours away, is no bound for a revoked token.
#[test]
fn a_session_ends_when_its_introspected_token_is_revoked() {
    let idp = OidcProvider::start();
    let pg = PgServer::start();
    let role = pg.scram.name.clone();
    set_password(&pg, &role);
    pg.psql(&format!("GRANT ALL ON ALL TABLES IN SCHEMA public TO {role};"));
    let cert = ServingCert::generate();
    let plain = free_port();
    let opaque = r#"---
apiVersion: agentgate.dev/v1alpha1
kind: AgentIdentity
metadata: {name: opaque-agent, namespace: e2e}
spec:
  issuer: ISSUER
  audiences: ["api://opaque"]
  tokenType: Introspection
  match: {claims: {client_id: ci-agent}}
  introspection:
    clientId: agentgate
    authMethod: client_secret_basic
    secretRef: {name: idp, key: secret}
    cacheTtl: 1s
---
apiVersion: v1
kind: Secret
metadata: {name: idp, namespace: e2e}
stringData: {secret: agentgate-introspection-secret}
---
apiVersion: agentgate.dev/v1alpha1
kind: AccessPolicy
metadata: {name: opaque-agent-shop, namespace: e2e}
spec:
  subjects: {identities: [opaque-agent]}
  connections: [shop]
  rules:
    - {name: select, action: Allow, sql: {statements: [Select]}}
"#
    .replace("ISSUER", &idp.issuer);
    let base = manifests(&idp.issuer, &pg, &cert, plain, &role, pg.port);
    let gw = Gateway::start(&format!("{base}\n{opaque}"));
    let answer = idp.token("ci-agent", "api://opaque", None);
    let token = answer["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("{answer}"))
        .to_string();
    let mut r = Raw::login_as(plain, "opaque-agent", &token);
    r.send(b'Q', b"SELECT 1\0");
    assert!(r.until_ready().iter().any(|(t, _)| *t == b'D'));
    idp.revoke("ci-agent", &token);
    // The cache's second and the gateway's recheck, with room to spare.
    std::thread::sleep(Duration::from_secs(8));
    let msgs = r.until_ready();
    assert_eq!(errors(&msgs), ["28000"], "{msgs:?}\n{}", gw.output());
    let error = msgs.iter().find(|(t, _)| *t == b'E').unwrap();
    let text = String::from_utf8_lossy(&error.1).into_owned();
    assert!(
        text.contains("no longer accepted") && !text.contains(&token),
        "{text}"
    );
}

/// A session lasts as long as the token it was opened with, as an HTTP request with that token
/// would be refused after.
#[test]
fn a_session_ends_when_its_token_expires() {
    let s = setup_with(false);
    // The gateway fetches the issuer's keys on its first login: not on the short token's clock.
    drop(Raw::login(s.plain, &token(&s.idp)));
    let answer = s.idp.token("ci-agent", "api://agentgate-short", None);
    let short = answer["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("{answer}"))
        .to_string();
    let mut r = Raw::login(s.plain, &short);
    r.send(b'Q', b"SELECT 1\0");
    assert!(r.until_ready().iter().any(|(t, _)| *t == b'D'));
    std::thread::sleep(Duration::from_secs(5));
    let msgs = r.until_ready();
    assert_eq!(errors(&msgs), ["28000"], "{msgs:?}");
    // The connection is closed: nothing more is served on it.
    let mut m = vec![b'Q'];
    m.extend_from_slice(&13i32.to_be_bytes());
    m.extend_from_slice(b"SELECT 1\0");
    let _ = r.0.write_all(&m);
    assert!(r.until_ready().is_empty());
}

/// Stopping the gateway ends its PostgreSQL sessions as PostgreSQL's own shutdown does (FATAL
/// 57P01), so each record is closed and signed (and shipped, with s3) before the process goes.
#[test]
fn sessions_end_with_57p01_and_a_closed_record_when_the_gateway_stops() {
    let mut s = setup_with(false);
    let mut r = Raw::login(s.plain, &token(&s.idp));
    r.send(b'Q', b"SELECT 1\0");
    assert!(r.until_ready().iter().any(|(t, _)| *t == b'D'));
    s.gw.stop();
    let msgs = r.until_ready();
    assert_eq!(errors(&msgs), ["57P01"], "{msgs:?}");
    let recorded = s.gw.recordings();
    let end = recorded
        .lines()
        .filter(|l| l.contains("\"type\":\"session.end\""))
        .find(|l| l.contains("gateway shutdown"));
    assert!(end.is_some(), "no session closed by the shutdown:\n{recorded}");
}

#[test]
fn authentication_and_startup_are_strict() {
    let s = setup_with(false);
    let tok = token(&s.idp);
    let try_login = |conninfo: String| {
        rt().block_on(async {
            match tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await {
                Ok(_) => panic!("login succeeded: {conninfo}"),
                Err(e) => db_error(&e),
            }
        })
    };
    let (code, msg) = try_login(s.plain_conninfo("not-a-token"));
    assert_eq!(code, "28000", "{msg}");
    // The TLS listener takes no token in plaintext, from loopback either.
    let (code, msg) = try_login(
        s.plain_conninfo(&tok)
            .replace(&format!("port={}", s.plain), &format!("port={}", s.gw.port)),
    );
    assert_eq!(code, "28000", "{msg}");
    assert!(msg.contains("only over TLS on this listener"), "{msg}");
    let (code, _) = try_login(
        s.plain_conninfo(&tok)
            .replace("user=ci-agent", "user=someone-else"),
    );
    assert_eq!(code, "28000");
    let (code, msg) = try_login(format!("{} options='-c role=postgres'", s.plain_conninfo(&tok)));
    assert_eq!(code, "08004", "{msg}");
    let (code, _) = try_login(s.plain_conninfo(&tok).replace("dbname=shop", "dbname=nope"));
    assert_eq!(code, "3D000");
    // A valid login works and the token never shows in the log.
    rt().block_on(async {
        let c = connect(&s.plain_conninfo(&tok)).await;
        c.query_one("SELECT 1", &[]).await.unwrap();
    });
    assert!(!s.gw.output().contains(&tok), "token in the log");
    s.assert_no_canary();
}

#[test]
fn cancel_requests_reach_only_the_right_backend() {
    let s = setup_with(false);
    let tok = token(&s.idp);
    rt().block_on(async {
        let c = connect(&s.plain_conninfo(&tok)).await;
        let other = connect(&s.plain_conninfo(&tok)).await;
        let token_c = c.cancel_token();
        let slow = tokio::spawn(async move { c.batch_execute("SELECT pg_sleep(20) FROM customers").await });
        // A cancel reaching a backend before its query does cancels nothing.
        let active = "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE 'SELECT pg_sleep(20)%'";
        let waiting_since = Instant::now();
        while s.pg.psql(active) != "1" {
            assert!(waiting_since.elapsed() < Duration::from_secs(10), "the slow query never started");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let started = Instant::now();
        token_c.cancel_query(tokio_postgres::NoTls).await.unwrap();
        let e = slow.await.unwrap().unwrap_err();
        assert_eq!(db_error(&e).0, "57014", "{e}");
        assert!(started.elapsed() < Duration::from_secs(10));
        other.query_one("SELECT 1", &[]).await.unwrap();
    });
    // A CancelRequest with the right process id and a wrong secret cancels nothing.
    let mut r = Raw::login(s.plain, &tok);
    let (pid, secret) = r.1;
    r.send(b'Q', b"SELECT pg_sleep(1.5)\0");
    std::thread::sleep(Duration::from_millis(300));
    let mut cancel = TcpStream::connect(("127.0.0.1", s.plain)).unwrap();
    let mut packet = 16i32.to_be_bytes().to_vec();
    packet.extend_from_slice(&80877102i32.to_be_bytes());
    packet.extend_from_slice(&pid.to_be_bytes());
    packet.extend_from_slice(&secret.wrapping_add(1).to_be_bytes());
    cancel.write_all(&packet).unwrap();
    let msgs = r.until_ready();
    assert!(
        msgs.iter().any(|(t, _)| *t == b'C'),
        "the query completed: {msgs:?}"
    );
    assert!(!msgs.iter().any(|(t, _)| *t == b'E'));
}

/// A session in a transaction with portal `p` bound to a DELETE, which policy holds for
/// approval had it come to Execute (Bind asks no approver).
fn delete_bound_in_a_transaction(port: u16, token: &str) -> Raw {
    let mut r = Raw::login(port, token);
    r.send(b'Q', b"BEGIN\0");
    r.until_ready();
    r.send(b'P', &parse("s", "DELETE FROM orders WHERE id = 1 RETURNING id"));
    r.send(b'B', &bind("p", "s"));
    r.send(b'S', b"");
    let msgs = r.until_ready();
    assert!(errors(&msgs).is_empty(), "{msgs:?}");
    r
}

/// What the gateway decides at Execute, a SQL FETCH or MOVE of the portal (one namespace with
/// cursors) would run undecided; a row cap reaches a statement that joins its table with
/// another; COPY TO is refused wherever a SELECT of the same would mask by column.
#[test]
fn fetch_joins_and_copy_do_not_step_around_decisions_caps_or_masking() {
    let s = setup_with(false);
    let tok = token(&s.idp);
    let billed = || s.pg.psql("SELECT sum(amount) FROM billing.invoices");
    let before = billed();
    let orders = || s.pg.psql("SELECT count(*) FROM orders");
    let orders_before = orders();
    // A statement that calls functions and that policy denies is refused at Bind, before the
    // server plans it (planning runs the immutable functions it calls on constants).
    let mut r = Raw::login(s.plain, &tok);
    r.send(b'P', &parse("s", "SELECT length(pg_read_file('/etc/hostname'))"));
    r.send(b'B', &bind("p", "s"));
    r.send(b'S', b"");
    let msgs = r.until_ready();
    assert_eq!(errors(&msgs), ["42501"], "{msgs:?}");
    assert!(msgs.iter().all(|(t, _)| *t != b'2'), "no BindComplete: {msgs:?}");
    assert_eq!(billed(), before);
    for (between, sql) in [
        ("", "FETCH ALL FROM p"),
        ("", "MOVE ALL IN p"),
        // A DECLARE in between does not make the gateway forget the portal.
        ("DECLARE x CURSOR FOR SELECT 1", "FETCH ALL FROM p"),
    ] {
        let mut r = delete_bound_in_a_transaction(s.plain, &tok);
        if !between.is_empty() {
            r.send(b'Q', format!("{between}\0").as_bytes());
            let msgs = r.until_ready();
            assert!(errors(&msgs).is_empty(), "{between}: {msgs:?}");
        }
        r.send(b'Q', format!("{sql}\0").as_bytes());
        let msgs = r.until_ready();
        assert_eq!(errors(&msgs), ["42501"], "{sql}: {msgs:?}");
        let detail = msgs
            .iter()
            .find(|(t, _)| *t == b'E')
            .map(|(_, b)| String::from_utf8_lossy(b).into_owned());
        assert!(
            detail.as_deref().unwrap_or_default().contains("Bind"),
            "{detail:?}"
        );
        r.send(b'Q', b"COMMIT\0");
        r.until_ready();
        assert_eq!(orders(), orders_before, "{sql} ran the portal's DELETE");
    }
    // A failed transaction rolled back to a savepoint made after the Bind keeps the server's
    // portal: the gateway does not forget it either.
    let mut r = delete_bound_in_a_transaction(s.plain, &tok);
    r.send(b'Q', b"SAVEPOINT sp\0");
    assert!(errors(&r.until_ready()).is_empty());
    // The server refuses a cursor of the portal's name (42P03), which fails the transaction.
    r.send(b'Q', b"DECLARE p CURSOR FOR SELECT 1\0");
    assert_eq!(errors(&r.until_ready()), ["42P03"]);
    r.send(b'Q', b"ROLLBACK TO SAVEPOINT sp\0");
    assert!(errors(&r.until_ready()).is_empty());
    r.send(b'Q', b"FETCH ALL FROM p\0");
    let msgs = r.until_ready();
    assert_eq!(errors(&msgs), ["42501"], "{msgs:?}");
    r.send(b'Q', b"ROLLBACK\0");
    r.until_ready();
    assert_eq!(
        orders(),
        orders_before,
        "the portal's DELETE ran after the savepoint"
    );
    // A pipeline sent ahead: the Bind is handled before the server answers the Query before it,
    // whose ReadyForQuery (outside a transaction) ends only the portals bound before it. The
    // name was a declared cursor once, which a FETCH may read.
    let mut r = Raw::login(s.plain, &tok);
    r.send(b'Q', b"BEGIN; DECLARE p CURSOR FOR SELECT 1; COMMIT\0");
    r.until_ready();
    let delete = parse("s", "DELETE FROM orders WHERE id = 1 RETURNING id");
    let portal = bind("p", "s");
    let ahead: Vec<(u8, &[u8])> = vec![
        (b'Q', b"SELECT 1\0"),
        (b'Q', b"BEGIN\0"),
        (b'P', &delete),
        (b'B', &portal),
        (b'S', b""),
    ];
    r.0.write_all(&pipeline(&ahead)).unwrap();
    for _ in 0..3 {
        let msgs = r.until_ready();
        assert!(errors(&msgs).is_empty(), "{msgs:?}");
    }
    r.send(b'Q', b"FETCH ALL FROM p\0");
    let msgs = r.until_ready();
    assert_eq!(errors(&msgs), ["42501"], "{msgs:?}");
    r.send(b'Q', b"ROLLBACK\0");
    r.until_ready();
    assert_eq!(orders(), orders_before, "the pipelined portal's DELETE ran");
    // The cap of the rule on big_capped reaches a UNION with a table it does not name.
    let out = s
        .psql("SELECT id FROM big_capped UNION ALL SELECT id FROM orders WHERE false")
        .unwrap();
    assert_eq!(out.lines().count(), 1000, "stopped at big-capped's rowLimit");
    // COPY TO of code that may read a masked column: its output meets the detectors alone.
    s.pg.psql(
        "CREATE FUNCTION public.contact_of(int) RETURNS text STABLE LANGUAGE sql
         AS 'SELECT email FROM public.customers WHERE id = $1'",
    );
    let e = s
        .psql("COPY (SELECT id, contact_of(customer_id) FROM orders) TO STDOUT")
        .unwrap_err();
    assert!(e.contains("COPY TO is refused"), "{e}");
    assert!(!e.contains("@example"), "{e}");
    // Field notation calls a function that takes the row (`o.f` is `f(o)`): code the gateway
    // cannot read, which may write, or read a masked column, under a column's name.
    s.pg.psql(
        "CREATE FUNCTION public.mark_shipped(o public.orders) RETURNS text LANGUAGE sql
         AS 'UPDATE public.orders SET status = ''shipped'' WHERE id = o.id RETURNING status';
         CREATE FUNCTION public.contact(o public.orders) RETURNS text STABLE LANGUAGE sql
         AS 'SELECT email FROM public.customers WHERE id = o.customer_id';",
    );
    let status = || s.pg.psql("SELECT status FROM orders WHERE id = 4");
    let before = status();
    for sql in [
        "SELECT o.mark_shipped FROM orders o WHERE o.id = 4",
        "SELECT (o).mark_shipped FROM orders o WHERE o.id = 4",
        "SELECT orders.contact FROM orders WHERE id = 1",
        "SELECT (o).contact FROM orders o WHERE o.id = 1",
    ] {
        let out = s.psql(sql);
        assert!(out.is_err(), "{sql}: {out:?}");
        assert!(!format!("{out:?}").contains("@example"), "{sql}: {out:?}");
    }
    assert_eq!(status(), before, "the UPDATE behind o.mark_shipped ran");
    // A function of the database's own named as a built-in one answers the call it fits best
    // (`lower(4)` is `public.lower(int)`): code the gateway cannot read, not the built-in.
    s.pg.psql(
        "CREATE FUNCTION public.lower(i int) RETURNS text LANGUAGE sql
         AS 'UPDATE public.orders SET status = ''lowered'' WHERE id = i RETURNING status'",
    );
    let out = s.psql("SELECT lower(4)");
    assert!(out.is_err(), "{out:?}");
    assert_eq!(status(), before, "the UPDATE behind lower(4) ran");
    // A relation of `public` named `pg_*` that the catalog lacks is what an unqualified name
    // reads: its rules apply, not the catalog's.
    s.pg.psql("CREATE TABLE public.pg_secret (v text); INSERT INTO public.pg_secret VALUES ('s3cr3t-row')");
    let out = s.psql("SELECT v FROM pg_secret");
    assert!(out.as_ref().is_err_and(|e| e.contains("no-pg-secret")), "{out:?}");
    // The catalog itself is read as before.
    assert_eq!(s.psql("SELECT count(*) > 0 FROM pg_class").as_deref(), Ok("t"));
    // Any call of the name may be either, so any is decided as such a call.
    assert!(s.psql("SELECT lower('ABC')").is_err());
}

#[test]
fn row_cap_streams_and_upstream_down_is_prompt() {
    let s = setup_with(false);
    let tok = token(&s.idp);
    rt().block_on(async {
        let c = connect(&s.plain_conninfo(&tok)).await;
        let rows = c.query("SELECT id FROM big_capped", &[]).await.unwrap();
        assert_eq!(rows.len(), 1000, "stopped at the rule's rowLimit");
    });
    let out = s.psql("SELECT id FROM big_capped").unwrap();
    assert_eq!(out.lines().count(), 1000);
    // COPY TO's rows are not counted: refused under the cap rather than streamed whole.
    for sql in [
        "COPY big_capped TO STDOUT",
        "COPY (SELECT id FROM big_capped) TO STDOUT",
    ] {
        let e = s.psql(sql).unwrap_err();
        assert!(e.contains("rowLimit"), "{sql}: {e}");
    }
    let conninfo = s.plain_conninfo(&tok);
    drop(s.pg);
    let started = Instant::now();
    let err = rt().block_on(async {
        match tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await {
            Ok(_) => panic!("connected to a stopped database"),
            Err(e) => db_error(&e),
        }
    });
    assert_eq!(err.0, "08006", "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// The gateway's resident set size in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_million_rows_stream_through_with_flat_memory() {
    let s = setup_with(false);
    s.pg.generate_rows("public.million", 1_000_000);
    s.pg.psql(&format!("GRANT SELECT ON public.million TO {}", s.pg.scram.name));
    let tok = token(&s.idp);
    let pid = s.gw.pid();
    let (rows, masked, peak, base) = rt().block_on(async {
        use futures_util::StreamExt;
        let c = connect(&s.plain_conninfo(&tok)).await;
        c.query_one("SELECT 1", &[]).await.unwrap();
        let base = rss_kib(pid);
        let stream = c
            .query_raw(
                "SELECT id, card_number, note FROM million",
                std::iter::empty::<i32>(),
            )
            .await
            .unwrap();
        futures_util::pin_mut!(stream);
        let (mut rows, mut masked, mut peak) = (0u64, 0u64, base);
        while let Some(row) = stream.next().await {
            let row = row.unwrap();
            let card: Option<String> = row.get(1);
            if !card.unwrap_or_default().contains("4111") {
                masked += 1;
            }
            rows += 1;
            if rows % 50_000 == 0 {
                peak = peak.max(rss_kib(pid));
            }
        }
        (rows, masked, peak, base)
    });
    assert_eq!(rows, 1_000_000);
    assert_eq!(masked, rows, "every card number masked");
    // A buffered result would be well over 50 MiB; streaming keeps the growth to buffers.
    let grown = peak.saturating_sub(base);
    eprintln!("gateway RSS: {base} KiB before, {peak} KiB peak while streaming 1,000,000 rows");
    assert!(grown < 32 * 1024, "gateway grew by {grown} KiB while streaming");
    // The result event is written with the session's close, once the gateway sees the client go.
    let recorded = agentgate_e2e::wait_for(Duration::from_secs(15), || {
        s.gw.recordings().contains("\"rows\":1000000").then_some(())
    });
    assert!(recorded.is_some(), "the row count is recorded");
}

#[test]
fn pgbench_runs_through_the_gateway() {
    let s = setup_with(false);
    let role = s.pg.scram.name.clone();
    let pgbench = s.pg.bin("pgbench");
    let init = std::process::Command::new(&pgbench)
        .args(["-i", "-s", "1", "-q", "-h"])
        .arg(s.pg.socket_dir())
        .args(["-p", &s.pg.port.to_string(), "-U", &s.pg.superuser, "shop"])
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    s.pg.psql(&format!("GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}"));
    for args in [
        &["-S"][..],
        &["-S", "-M", "prepared"],
        &["-b", "tpcb-like", "-M", "extended"],
    ] {
        let out = std::process::Command::new(&pgbench)
            .args(["-n", "-T", "2", "-c", "4", "-j", "2", "-h", "127.0.0.1"])
            .args(["-p", &s.plain.to_string(), "-U", "ci-agent", "shop"])
            .args(args)
            .env("PGPASSWORD", token(&s.idp))
            .env("PGSSLMODE", "disable")
            .output()
            .unwrap();
        let text = agentgate_e2e::printed(&out);
        assert!(
            out.status.success(),
            "pgbench {args:?}:\n{text}\n{}",
            s.gw.output()
        );
        assert!(text.contains("number of failed transactions: 0"), "{text}");
        let processed = text
            .lines()
            .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
            .and_then(|v| v.split('/').next())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        assert!(processed > 0, "{text}");
    }
    s.assert_no_canary();
}

/// `agentgate approvals ARGS` against the gateway's admin API as `token`'s approver.
fn approvals(gw: &Gateway, token: &str, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(binary("agentgate"))
        .arg("approvals")
        .args(args)
        .args(["--admin-addr", &format!("127.0.0.1:{}", gw.admin)])
        .env("AGENTGATE_TOKEN", token)
        .output()
        .unwrap();
    (out.status.success(), agentgate_e2e::printed(&out))
}

/// The ApprovalRequest an error message names.
fn request_name(message: &str) -> String {
    message
        .split("ApprovalRequest ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no ApprovalRequest in {message:?}"))
        .to_string()
}

/// An approval lifts the RequireApproval rule it answers, not the rowLimit of the Allow rules
/// whose tables the statement reads: the approved statement's result is capped as any other.
#[test]
fn an_approved_statement_keeps_the_row_cap() {
    let s = setup_with(false);
    let tok = token(&s.idp);
    let alice = approver_token("alice", &["dba"]);
    rt().block_on(async {
        let c = connect(&s.plain_conninfo(&tok)).await;
        // A DELETE that removes nothing asks for approval; the SELECT reads the capped table.
        let sql = "WITH d AS (DELETE FROM orders WHERE false RETURNING 1) SELECT id FROM big_capped";
        let e = c.simple_query(sql).await.unwrap_err();
        let (code, message) = db_error(&e);
        assert_eq!(code, "42501", "{message}");
        let (ok, out) = approvals(&s.gw, &alice, &["approve", &request_name(&message)]);
        assert!(ok, "{out}");
        let rows = c
            .simple_query(sql)
            .await
            .unwrap_or_else(|e| panic!("approved statement refused: {e}"));
        let rows = rows
            .iter()
            .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
            .count();
        assert_eq!(rows, 1000, "stopped at big-capped's rowLimit");
        // A cursor over it is refused where the cap applies, approved or not.
        let cursor = "BEGIN; DECLARE c CURSOR FOR WITH d AS (DELETE FROM orders WHERE false RETURNING 1) SELECT id FROM big_capped";
        let e = c.batch_execute(cursor).await.unwrap_err();
        assert!(db_error(&e).1.contains("rowLimit"), "{e:?}");
    });
}

#[test]
fn approvals_defer_hold_once_window_and_self_approval_for_sql() {
    let s = setup_with(false);
    let tok = token(&s.idp);
    let alice = approver_token("alice", &["dba"]);
    rt().block_on(async {
        let c = connect(&s.plain_conninfo(&tok)).await;
        // Defer: refused at once, naming the request; the same statement passes once approved,
        // once; a different statement is not covered.
        let sql = "/* reason: INC-42 cleanup */ DELETE FROM orders WHERE id = 4";
        let e = c.batch_execute(sql).await.unwrap_err();
        let (code, message) = db_error(&e);
        assert_eq!(code, "42501", "{message}");
        let name = request_name(&message);
        let (_, listed) = approvals(&s.gw, &alice, &["list"]);
        assert!(listed.contains(&name) && listed.contains("Pending"), "{listed}");
        // Self-approval is refused: the agent's own subject cannot approve.
        let (ok, out) = approvals(&s.gw, &approver_token("ci-agent", &["dba"]), &["approve", &name]);
        assert!(!ok, "self-approval accepted: {out}");
        // Someone outside the approver groups cannot either.
        let (ok, _) = approvals(&s.gw, &approver_token("mallory", &["dev"]), &["approve", &name]);
        assert!(!ok);
        let (ok, out) = approvals(&s.gw, &alice, &["approve", &name, "--reason", "INC-42"]);
        assert!(ok, "{out}");
        let other = c
            .batch_execute("DELETE FROM orders WHERE id = 3")
            .await
            .unwrap_err();
        assert_ne!(
            request_name(&db_error(&other).1),
            name,
            "a different statement needs its own approval"
        );
        c.batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("approved statement refused: {e}"));
        let again = c.batch_execute(sql).await.unwrap_err();
        assert_eq!(db_error(&again).0, "42501", "a Once grant is used once");
        assert_eq!(
            c.query_one("SELECT count(*) FROM orders", &[])
                .await
                .unwrap()
                .get::<_, i64>(0),
            3
        );

        // Extended protocol: an approval covers the exact bound values, binary ones included,
        // which the approver reads as text.
        let delete = c.prepare("DELETE FROM orders WHERE id = $1").await.unwrap();
        let e = c.execute(&delete, &[&2i32]).await.unwrap_err();
        let (code, message) = db_error(&e);
        assert_eq!(code, "42501", "{message}");
        let for_two = request_name(&message);
        let (ok, shown) = approvals(&s.gw, &alice, &["show", &for_two]);
        assert!(ok, "{shown}");
        let shown: serde_json::Value = serde_json::from_str(&shown).unwrap();
        assert_eq!(
            shown["spec"]["operation"]["summary"],
            "DELETE FROM orders WHERE id = $1"
        );
        // The approver reads the bound values as the record has them: this binary int4 as 2.
        assert_eq!(shown["spec"]["operation"]["detail"], r#"params: ["2"]"#);
        assert!(approvals(&s.gw, &alice, &["approve", &for_two]).0);
        let e = c.execute(&delete, &[&1i32]).await.unwrap_err();
        let (code, message) = db_error(&e);
        assert_eq!(code, "42501", "another value is another operation: {message}");
        assert_ne!(request_name(&message), for_two);
        assert_eq!(c.execute(&delete, &[&2i32]).await.unwrap(), 1);
        // The same bytes under another type are another value: an approval of `id < $1` with
        // int8 -1 does not release float8 NaN (the same eight bytes), below which every id is.
        use tokio_postgres::types::Type;
        let below = "DELETE FROM orders WHERE id < $1";
        let as_int8 = c.prepare_typed(below, &[Type::INT8]).await.unwrap();
        let e = c.execute(&as_int8, &[&-1i64]).await.unwrap_err();
        let for_minus_one = request_name(&db_error(&e).1);
        assert!(approvals(&s.gw, &alice, &["approve", &for_minus_one]).0);
        let as_float8 = c.prepare_typed(below, &[Type::FLOAT8]).await.unwrap();
        let nan = f64::from_bits(u64::MAX);
        let e = c.execute(&as_float8, &[&nan]).await.unwrap_err();
        let (code, message) = db_error(&e);
        assert_eq!(code, "42501", "{message}");
        assert_ne!(request_name(&message), for_minus_one);
        assert_eq!(c.execute(&as_int8, &[&-1i64]).await.unwrap(), 0);

        // SQL-level EXECUTE: the approver reads the prepared statement it runs, which the
        // approval binds.
        let prepare = "PREPARE del(int) AS DELETE FROM orders WHERE id = $1";
        let e = c.batch_execute(prepare).await.unwrap_err();
        assert!(approvals(&s.gw, &alice, &["approve", &request_name(&db_error(&e).1)]).0);
        c.batch_execute(prepare).await.unwrap();
        let e = c.batch_execute("EXECUTE del(99)").await.unwrap_err();
        let (ok, shown) = approvals(&s.gw, &alice, &["show", &request_name(&db_error(&e).1)]);
        assert!(ok, "{shown}");
        let shown: serde_json::Value = serde_json::from_str(&shown).unwrap();
        assert_eq!(
            shown["spec"]["operation"]["detail"],
            "prepared del: DELETE FROM orders WHERE id = $1"
        );
        // The same EXECUTE through the extended protocol: bound and shown alike.
        let e = c.execute("EXECUTE del(99)", &[]).await.unwrap_err();
        let (code, message) = db_error(&e);
        assert_eq!(code, "42501", "{message}");
        let (ok, shown) = approvals(&s.gw, &alice, &["show", &request_name(&message)]);
        assert!(ok, "{shown}");
        let shown: serde_json::Value = serde_json::from_str(&shown).unwrap();
        assert_eq!(
            shown["spec"]["operation"]["detail"],
            "prepared del: DELETE FROM orders WHERE id = $1"
        );

        // What would be refused anyway is not asked: a read of big_capped (rowLimit 1000) that
        // needs approval (it deletes an order), fetched in parts, which a cap refuses.
        let mut r = Raw::login(s.plain, &tok);
        r.send(
            b'P',
            &parse(
                "",
                "WITH d AS (DELETE FROM orders WHERE id = 2 RETURNING id) SELECT b.id FROM big_capped b, d WHERE b.id = d.id",
            ),
        );
        r.send(b'B', &bind("q", ""));
        r.send(b'E', &execute_rows("q", 10));
        r.send(b'S', b"");
        let msgs = r.until_ready();
        let refusal = msgs.iter().find(|(t, _)| *t == b'E').map(|(_, b)| String::from_utf8_lossy(b));
        assert!(
            refusal.as_ref().is_some_and(|m| m.contains("fetching it in parts") && !m.contains("ApprovalRequest")),
            "{msgs:?}"
        );
        let (_, listed) = approvals(&s.gw, &alice, &["list"]);
        assert!(!listed.contains("big_capped"), "an approver was asked: {listed}");

        // Window: approved once, then matching statements pass until it ends, mid-session.
        let e = c
            .batch_execute("INSERT INTO customers (name, email) VALUES ('W1', 'w1@example.com')")
            .await
            .unwrap_err();
        let name = request_name(&db_error(&e).1);
        assert!(approvals(&s.gw, &alice, &["approve", &name]).0);
        c.batch_execute("INSERT INTO customers (name, email) VALUES ('W1', 'w1@example.com')")
            .await
            .unwrap();
        c.batch_execute("INSERT INTO customers (name, email) VALUES ('W2', 'w2@example.com')")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(7)).await;
        let e = c
            .batch_execute("INSERT INTO customers (name, email) VALUES ('W3', 'w3@example.com')")
            .await
            .unwrap_err();
        assert_ne!(
            request_name(&db_error(&e).1),
            name,
            "after the window a new approval is needed"
        );
    });

    // Hold: the statement waits; approved, it runs and the session answers; denied, it fails.
    let conninfo = s.plain_conninfo(&tok);
    let held = std::thread::spawn(move || {
        rt().block_on(async {
            let c = connect(&conninfo).await;
            let first = c
                .batch_execute("TRUNCATE big_capped")
                .await
                .map_err(|e| db_error(&e));
            let after = c
                .query_one("SELECT count(*) FROM big_capped", &[])
                .await
                .map(|r| r.get::<_, i64>(0));
            c.batch_execute("INSERT INTO big_capped VALUES (1)").await.err();
            let second = c
                .batch_execute("TRUNCATE big_capped")
                .await
                .map_err(|e| db_error(&e));
            (first, after.ok(), second)
        })
    });
    let decide = |verb: &str| {
        let name = agentgate_e2e::wait_for(Duration::from_secs(20), || {
            let (_, out) = approvals(&s.gw, &alice, &["list", "--pending"]);
            out.lines()
                .find(|l| l.contains("truncate-held"))
                .and_then(|l| l.split_whitespace().next())
                .map(str::to_string)
        })
        .expect("a held request appears");
        let (ok, out) = approvals(&s.gw, &alice, &[verb, &name]);
        assert!(ok, "{out}");
    };
    decide("approve");
    decide("deny");
    let (first, after, second) = held.join().unwrap();
    assert!(first.is_ok(), "held statement ran once approved: {first:?}");
    assert_eq!(after, Some(0));
    let (code, message) = second.unwrap_err();
    assert_eq!(code, "42501");
    assert!(message.contains("denied"), "{message}");

    // A cancel ends the wait: approved later, the statement does not run. Nor does one whose
    // client left while it waited.
    // (Other spellings: the one denied above is answered as denied.)
    s.pg.psql("INSERT INTO big_capped VALUES (1), (2)");
    let rows = || s.pg.psql("SELECT count(*) FROM big_capped").trim().to_string();
    let before = rows();
    assert_ne!(before, "0");
    let pending = || {
        agentgate_e2e::wait_for(Duration::from_secs(20), || {
            let (_, out) = approvals(&s.gw, &alice, &["list", "--pending"]);
            out.lines()
                .find(|l| l.contains("truncate-held"))
                .and_then(|l| l.split_whitespace().next())
                .map(str::to_string)
        })
        .expect("a held request appears")
    };
    let conninfo = s.plain_conninfo(&tok);
    let (tx, rx) = std::sync::mpsc::channel();
    let cancelled = std::thread::spawn(move || {
        rt().block_on(async {
            let c = connect(&conninfo).await;
            tx.send(c.cancel_token()).unwrap();
            c.batch_execute("TRUNCATE TABLE big_capped")
                .await
                .map_err(|e| db_error(&e))
        })
    });
    let name = pending();
    // A cancel ends a wait in progress (the request is listed just before the wait begins, so
    // it is sent until the statement ends).
    let canceller = rx.recv().unwrap();
    for _ in 0..20 {
        rt().block_on(canceller.cancel_query(tokio_postgres::NoTls))
            .unwrap();
        std::thread::sleep(Duration::from_millis(250));
        if cancelled.is_finished() {
            break;
        }
    }
    let (code, message) = cancelled.join().unwrap().unwrap_err();
    assert_eq!(code, "57014", "{message}");
    assert!(approvals(&s.gw, &alice, &["approve", &name]).0);
    let mut r = Raw::login(s.plain, &tok);
    r.send(b'Q', b"TRUNCATE ONLY big_capped\0");
    let name = pending();
    drop(r);
    // The session records the wait's end once it sees the client gone.
    agentgate_e2e::wait_for(Duration::from_secs(20), || {
        (s.gw.recordings().matches("\"abandoned\"").count() >= 2).then_some(())
    })
    .expect("the wait ends when the client leaves");
    assert!(approvals(&s.gw, &alice, &["approve", &name]).0);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(rows(), before, "a held statement ran for a client that was gone");

    let rec = s.gw.recordings();
    assert!(
        rec.contains("\"pg.approval\"") && rec.contains("\"granted\""),
        "approvals are recorded"
    );
}

/// Random damage to whole client sessions, end to end: a script of frames (simple queries,
/// Parse/Bind/Execute, COPY, function calls, all aimed at what the policy denies) is mutated
/// byte by byte and sent raw, then the client hangs up. Whatever the bytes, the denied schema
/// is untouched in the real database, the gateway keeps serving, and it never panics.
#[test]
fn mutated_sessions_never_reach_what_policy_denies_nor_hurt_the_gateway() {
    let s = setup_with(false);
    let tok = token(&s.idp);
    let billing =
        "SELECT string_agg(id || ':' || amount || ':' || paid, ',' ORDER BY id) FROM billing.invoices";
    let before = s.pg.psql(billing);

    let mut script = Vec::new();
    let mut frame = |tag: u8, body: &[u8]| {
        script.push(tag);
        script.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        script.extend_from_slice(body);
    };
    frame(
        b'Q',
        b"SELECT id FROM orders; DELETE FROM billing.invoices WHERE id = 1\0",
    );
    frame(
        b'P',
        b"s1\0UPDATE billing.invoices SET amount = 0 WHERE id = $1\0\0\x01\0\0\0\x17",
    );
    frame(b'B', b"\0s1\0\0\0\0\x01\0\0\0\x011\0\0");
    frame(b'E', b"\0\0\0\0\0");
    frame(b'S', b"");
    frame(
        b'Q',
        b"SELECT billing.mark_paid(2); CALL billing.archive_paid()\0",
    );
    frame(
        b'Q',
        b"COPY billing.invoices (order_id, amount, iban) FROM STDIN\0",
    );
    frame(b'd', b"1\t0\tX\n");
    frame(b'c', b"");
    frame(
        b'Q',
        b"WITH d AS (DELETE FROM billing.invoices RETURNING *) SELECT count(*) FROM d\0",
    );
    frame(b'Q', b"DROP TABLE billing.invoices\0");
    frame(b'X', b"");

    let mut m = agentgate_e2e::mutate::Mutator::new(0x9e37_79b9_7f4a_7c15);
    for round in 0..150 {
        let bytes = m.mutate(&script, b"\0\x01\xff';()$*x9 ");
        let mut r = Raw::login(s.plain, &tok);
        let _ = r.0.write_all(&bytes);
        let _ = r.0.shutdown(std::net::Shutdown::Write);
        // The gateway answers what it understood and closes: read to the end.
        let mut sink = Vec::new();
        let read = r.0.read_to_end(&mut sink);
        assert!(
            read.is_ok(),
            "round {round}: the gateway did not close the session: {read:?}"
        );
    }
    assert_eq!(s.pg.psql(billing), before, "the denied schema changed");
    let mut r = Raw::login(s.plain, &tok);
    r.send(b'Q', b"SELECT 1\0");
    assert!(r.until_ready().iter().any(|(t, _)| *t == b'D'), "still serving");
    let log = s.gw.output();
    assert!(!log.contains("panicked"), "the gateway panicked:\n{log}");
    s.assert_no_canary();
}

/// Code of the database's own reached without calling it by name is not trusted: an operator
/// under a built-in's symbol, a cast to a domain whose check calls a function, a view calling
/// a volatile function. Each reads as code that may write, so rules that allow only reads
/// refuse it, and the DELETE the code holds never runs.
#[test]
fn operators_casts_and_views_that_run_database_code_are_not_trusted() {
    let s = setup_with(false);
    s.pg.psql(&format!(
        "CREATE FUNCTION public.plus_text(int, text) RETURNS int LANGUAGE sql \
             AS 'DELETE FROM public.orders RETURNING 1'; \
         CREATE OPERATOR public.+ (LEFTARG = int, RIGHTARG = text, FUNCTION = public.plus_text); \
         CREATE FUNCTION public.eq_text(int, text) RETURNS bool LANGUAGE sql \
             AS 'DELETE FROM public.orders RETURNING true'; \
         CREATE OPERATOR public.= (LEFTARG = int, RIGHTARG = text, FUNCTION = public.eq_text); \
         CREATE DOMAIN public.checked AS int CHECK (public.plus_text(VALUE, 'x') IS NULL OR true); \
         CREATE DOMAIN public.by_operator AS int CHECK ((VALUE + 'x'::text) IS NULL OR true); \
         CREATE DOMAIN public.nested AS int CHECK ((VALUE::public.checked) IS NOT NULL); \
         CREATE VIEW public.deleting AS SELECT public.plus_text(1, 'x') AS n; \
         GRANT SELECT ON public.deleting TO {0}; \
         CREATE FUNCTION public.date_add(int) RETURNS int LANGUAGE sql \
             AS 'DELETE FROM public.orders RETURNING 1'; \
         CREATE FUNCTION public.minus_imm(int, text) RETURNS int LANGUAGE sql IMMUTABLE \
             AS 'SELECT public.plus_text($1, $2)'; \
         CREATE OPERATOR public.- (LEFTARG = int, RIGHTARG = text, FUNCTION = public.minus_imm); \
         CREATE TABLE public.marks (n int); GRANT INSERT ON public.marks TO {0}; \
         CREATE FUNCTION public.mark(int) RETURNS bool LANGUAGE sql \
             AS 'INSERT INTO public.marks VALUES ($1) RETURNING true'; \
         CREATE DOMAIN public.marked AS int CHECK (public.mark(VALUE)); \
         CREATE TABLE public.guarded (c public.marked); INSERT INTO public.guarded VALUES (1); \
         GRANT SELECT ON public.guarded TO {0}",
        s.pg.scram.name
    ));
    let before = s.pg.psql("SELECT count(*) FROM orders");
    let marks = || s.pg.psql("SELECT count(*) FROM marks");
    let marks_before = marks();
    let tok = token(&s.idp);
    rt().block_on(async {
        let c = connect(&s.plain_conninfo(&tok)).await;
        c.simple_query("PREPARE p(int) AS SELECT $1").await.unwrap();
        for sql in [
            "SELECT 1 + 'x'::text",
            "SELECT 1 IN (SELECT 'x'::text)",
            "SELECT 1::checked",
            "SELECT CAST(2 AS public.checked)",
            "SELECT '{1}'::_checked",
            "SELECT * FROM jsonb_to_record('{\"c\": 1}') AS x(c checked)",
            "SELECT 1::by_operator",
            "SELECT 1::nested",
            "SELECT n FROM deleting",
            // Run by EXECUTE's arguments, and by what EXPLAIN evaluates.
            "EXECUTE p(1 + 'x'::text)",
            "EXPLAIN EXECUTE p(1::checked)",
            // Its own function under a built-in's name this server lacks (PostgreSQL 16's).
            "SELECT date_add(1)",
            // A domain's CHECK run for a type named in a string, or a row's columns filled.
            "SELECT pg_input_is_valid('1', 'marked')",
            "SELECT jsonb_populate_record(g, '{\"c\": 2}') FROM guarded g",
        ] {
            let e = c.simple_query(sql).await.unwrap_err();
            assert_eq!(db_error(&e).0, "42501", "{sql}: {e}");
        }
        // Bind plans, and planning runs an immutable operator's code on constants: refused
        // there, with no Execute.
        let mut r = Raw::login(s.plain, &tok);
        r.send(b'P', &parse("", "SELECT 1 - 'x'::text"));
        r.send(b'B', &bind("", ""));
        r.send(b'S', b"");
        let msgs = r.until_ready();
        assert_eq!(errors(&msgs), ["42501"], "{msgs:?}");
        drop(r);
        // The catalog was read with JIT off; the session has the server's setting back.
        let shown = c.simple_query("SHOW jit").await.unwrap();
        let jit = shown.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(String::from),
            _ => None,
        });
        assert_eq!(jit.as_deref(), Some(s.pg.psql("SHOW jit").trim()));
        // What calls none of it still runs (`=` is the database's own here too).
        c.simple_query("SELECT id FROM orders ORDER BY id LIMIT 1")
            .await
            .unwrap();
        // A rule that lists functions allows no hidden code it does not name.
        edit_manifests(
            &s.gw,
            "  rules:\n",
            "  rules:\n    - name: counting\n      action: Allow\n      sql:\n        statements: [Select]\n        tables: [\"public.*\"]\n        functions: [count, txid_current]\n",
        );
        once_reloaded(&c, "SELECT txid_current() FROM orders LIMIT 0", "the counting rule").await;
        for sql in ["SELECT count(*) FROM deleting", "SELECT count(*), 1::checked"] {
            let e = c.simple_query(sql).await.unwrap_err();
            assert_eq!(db_error(&e).0, "42501", "{sql}: {e}");
        }
    });
    assert_eq!(s.pg.psql("SELECT count(*) FROM orders"), before);
    assert_eq!(marks(), marks_before);
}

/// A view made after a session read its catalog may call code that writes, which that reading
/// never saw: once any session of the Connection creates a view, the older sessions (and it)
/// read every relation as code that may write, until they reconnect.
#[test]
fn a_view_made_after_a_session_began_is_not_trusted() {
    let s = setup_with(false);
    s.pg.psql(&format!(
        "CREATE FUNCTION public.wipe_orders() RETURNS int LANGUAGE sql VOLATILE \
           AS 'DELETE FROM public.orders RETURNING 1'; \
         GRANT CREATE ON SCHEMA public TO {0}; GRANT EXECUTE ON FUNCTION public.wipe_orders() TO {0}",
        s.pg.scram.name
    ));
    edit_manifests(
        &s.gw,
        "  rules:\n",
        "  rules:\n    - name: define-views\n      action: Allow\n      sql:\n        statements: [Create]\n",
    );
    let before = s.pg.psql("SELECT count(*) FROM orders");
    let tok = token(&s.idp);
    rt().block_on(async {
        // Open before the view exists: its catalog reading knows nothing of it.
        let older = connect(&s.plain_conninfo(&tok)).await;
        older.simple_query("SELECT 1").await.unwrap();
        let c = connect(&s.plain_conninfo(&tok)).await;
        let define = "CREATE VIEW public.later AS SELECT public.wipe_orders() AS n";
        once_reloaded(&c, define, "the rule").await;
        for session in [&older, &c] {
            let e = session.simple_query("SELECT n FROM later").await.unwrap_err();
            assert_eq!(db_error(&e).0, "42501", "{e}");
        }
        // A session opened since reads the view from its catalog: still refused.
        let newer = connect(&s.plain_conninfo(&tok)).await;
        let e = newer.simple_query("SELECT n FROM later").await.unwrap_err();
        assert_eq!(db_error(&e).0, "42501", "{e}");
    });
    assert_eq!(s.pg.psql("SELECT count(*) FROM orders"), before);
}

/// A function the session itself defines under a built-in's name (`upper`) is its own code, not
/// the built-in the classifier trusts: the names were read from the catalog when the session
/// began, so once it defines code, its calls are read as code that may read anything.
#[test]
fn code_a_session_defines_under_a_built_in_name_is_not_trusted() {
    let s = setup_with(false);
    s.pg.psql(&format!("GRANT CREATE ON SCHEMA public TO {}", s.pg.scram.name));
    edit_manifests(
        &s.gw,
        "  rules:\n",
        "  rules:\n    - name: define-code\n      action: Allow\n      sql:\n        statements: [Select, Create]\n",
    );
    let tok = token(&s.idp);
    rt().block_on(async {
        let c = connect(&s.plain_conninfo(&tok)).await;
        // A session open before the function exists, whose catalog reading knows nothing of it.
        let other = connect(&s.plain_conninfo(&tok)).await;
        let define = "CREATE FUNCTION public.upper(int) RETURNS text LANGUAGE sql \
                      AS 'SELECT email FROM public.customers WHERE id = $1'";
        once_reloaded(&c, define, "the grant").await;
        for session in [&c, &other] {
            match session.simple_query("SELECT upper(1)").await {
                Ok(messages) => {
                    for m in messages {
                        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
                            let value = r.get(0).unwrap_or_default().to_string();
                            assert!(!value.contains("@example"), "unmasked: {value}");
                        }
                    }
                }
                Err(e) => assert_eq!(db_error(&e).0, "42501", "{e}"),
            }
        }
    });
    s.pg.psql("DROP FUNCTION public.upper(int)");
}
