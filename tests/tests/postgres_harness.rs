//! The PostgreSQL harness itself: a real server started as a non-root user, whose SCRAM and md5
//! roles log in over TLS (the real psql with `sslmode=verify-full` against the harness's CA) and
//! in plaintext (tokio-postgres), and refuse a wrong password.

use agentgate_e2e::postgres::{FIXTURE_CARDS, FIXTURE_CUSTOMERS, PgRole, PgServer, process_uid};
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;

async fn connect(conninfo: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(conninfo, NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

#[test]
fn starts_as_non_root_postmaster_and_stops_on_drop() {
    let pg = PgServer::start();
    let pid = pg.pid();
    let uid = process_uid(pid).expect("the postmaster is running");
    assert_ne!(uid, 0, "the postmaster runs as root");
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).expect("comm");
    assert_eq!(comm.trim(), "postgres", "the PID held is not postgres itself");
    // The server agrees: its postmaster.pid names the PID we hold.
    let data_dir = pg.psql("SHOW data_directory");
    assert_eq!(data_dir, pg.data_dir().display().to_string());
    assert_eq!(pg.psql("SHOW max_connections"), "200");
    assert_eq!(pg.psql("SHOW ssl"), "on");
    assert_eq!(pg.psql("SHOW listen_addresses"), "127.0.0.1");

    let dir = pg.data_dir();
    drop(pg);
    // Stopped by PID (a zombie until its parent, this test, reaps it; Process::signal does).
    let gone = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.split_whitespace().nth(2) == Some("Z"))
        .unwrap_or(true);
    assert!(gone, "postgres {pid} still runs after drop");
    assert!(!dir.exists(), "the data directory was not removed");
}

#[test]
fn roles_store_the_password_hashes_they_authenticate_with() {
    let pg = PgServer::start();
    let hashes = pg.psql(&format!(
        "SELECT rolname || ' ' || split_part(rolpassword, '$', 1) FROM pg_authid \
         WHERE rolname IN ('{}', '{}') ORDER BY rolname",
        pg.md5.name, pg.scram.name
    ));
    let lines: Vec<&str> = hashes.lines().collect();
    assert_eq!(lines.len(), 2, "{hashes}");
    assert!(lines[0].starts_with(&format!("{} md5", pg.md5.name)), "{hashes}");
    assert_eq!(lines[1], format!("{} SCRAM-SHA-256", pg.scram.name), "{hashes}");
}

#[test]
fn both_roles_log_in_over_tls_with_a_verified_certificate() {
    let pg = PgServer::start();
    for role in [&pg.scram, &pg.md5] {
        let out = pg
            .psql_as(
                role,
                "verify-full",
                "SELECT current_user || ' ' || ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            )
            .unwrap_or_else(|e| panic!("{} over TLS: {e}\n{}", role.name, pg.output()));
        assert_eq!(out, format!("{} true", role.name));
    }
    // The CA the harness exposes is what verifies it: another CA does not.
    let other = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(
        other.path(),
        agentgate_e2e::gateway::ServingCert::generate().ca_pem,
    )
    .expect("write");
    let conninfo = format!(
        "host=127.0.0.1 port={} dbname={} user={} sslmode=verify-full sslrootcert={}",
        pg.port,
        pg.database,
        pg.scram.name,
        other.path().display()
    );
    let err = agentgate_e2e::postgres::psql_conninfo(&conninfo, Some(&pg.scram.password), "SELECT 1")
        .expect_err("a certificate from another CA verified");
    // Same CA name, other key: OpenSSL reports a failed signature check ("EVP lib") or a failed
    // verification, depending on the version.
    assert!(
        err.contains("certificate verify failed") || err.contains("SSL error"),
        "{err}"
    );
}

#[tokio::test]
async fn both_roles_log_in_in_plaintext_and_read_the_fixture() {
    let pg = PgServer::start();
    for role in [&pg.scram, &pg.md5] {
        let client = connect(&pg.conninfo(role, "disable"))
            .await
            .unwrap_or_else(|e| panic!("{} in plaintext: {e}\n{}", role.name, pg.output()));
        let row = client
            .query_one(
                "SELECT current_user::text, (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid())",
                &[],
            )
            .await
            .expect("query");
        assert_eq!(row.get::<_, String>(0), role.name);
        assert!(!row.get::<_, bool>(1), "expected a plaintext session");

        let emails: Vec<String> = client
            .query("SELECT email FROM customer_contacts ORDER BY id", &[])
            .await
            .expect("view")
            .iter()
            .map(|r| r.get(0))
            .collect();
        let want: Vec<String> = FIXTURE_CUSTOMERS.iter().map(|c| c.1.to_string()).collect();
        assert_eq!(emails, want);
        let cards: Vec<String> = client
            .query("SELECT card_number FROM orders ORDER BY id", &[])
            .await
            .expect("orders")
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(cards, FIXTURE_CARDS);
        // The roles may write, and the fixture's write paths work.
        client
            .batch_execute(
                "BEGIN; SELECT billing.mark_paid(2); CALL billing.archive_paid(); \
                 INSERT INTO billing.invoices (order_id, amount, iban) VALUES (2, 1, 'x'); ROLLBACK",
            )
            .await
            .expect("writes");
    }
}

#[tokio::test]
async fn wrong_passwords_and_other_users_are_refused() {
    let pg = PgServer::start();
    for role in [&pg.scram, &pg.md5] {
        let wrong = PgRole {
            name: role.name.clone(),
            password: format!("{}x", role.password),
        };
        let err = connect(&pg.conninfo(&wrong, "disable"))
            .await
            .err()
            .unwrap_or_else(|| panic!("{} logged in with a wrong password", role.name));
        assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD), "{err}");
        let err = pg
            .psql_as(&wrong, "verify-full", "SELECT 1")
            .expect_err("a wrong password over TLS");
        assert!(err.contains("password authentication failed"), "{err}");
    }
    // The other role's password is not this role's.
    let swapped = PgRole {
        name: pg.scram.name.clone(),
        password: pg.md5.password.clone(),
    };
    assert!(connect(&pg.conninfo(&swapped, "disable")).await.is_err());
    // The superuser is trusted on the Unix socket only, never over TCP.
    let su = PgRole {
        name: pg.superuser.clone(),
        password: "any".into(),
    };
    let err = connect(&pg.conninfo(&su, "disable"))
        .await
        .expect_err("the superuser logged in over TCP");
    assert_eq!(
        err.code(),
        Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION),
        "{err}"
    );
}

#[tokio::test]
async fn tls_only_refuses_plaintext() {
    let pg = PgServer::options().tls_only(true).start();
    let err = connect(&pg.conninfo(&pg.scram, "disable"))
        .await
        .expect_err("plaintext login on a TLS-only server");
    assert_eq!(
        err.code(),
        Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION),
        "{err}"
    );
    let out = pg
        .psql_as(
            &pg.md5,
            "verify-full",
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        )
        .expect("TLS login");
    assert_eq!(out, "t");
}

#[test]
fn generates_many_rows_quickly() {
    let pg = PgServer::start();
    let start = std::time::Instant::now();
    pg.generate_rows("events", 200_000);
    let took = start.elapsed();
    assert_eq!(pg.psql("SELECT count(*), max(id) FROM events"), "200000|200000");
    assert_eq!(
        pg.psql("SELECT email || ' ' || phone FROM events WHERE id = 42"),
        "user42@example.com +1-202-555-0042"
    );
    let out = pg
        .psql_as(&pg.scram, "disable", "SELECT count(*) FROM events WHERE id <= 10")
        .expect("the roles can read generated tables");
    assert_eq!(out, "10");
    eprintln!("200,000 rows in {took:?}");
}
