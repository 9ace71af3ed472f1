//! A real PostgreSQL server for the end-to-end tests: `initdb` into a temporary directory, the
//! postmaster on a free port of 127.0.0.1 with TLS on, two password roles for the gateway to use
//! as upstream credentials (one SCRAM-SHA-256, one md5), and a fixture schema for policy and
//! masking tests.
//!
//! Debian's server packages (`postgresql`, `postgresql-client`) are used from
//! `/usr/lib/postgresql/<newest>/bin` (or `$AGENTGATE_TEST_PG_BIN`), never from `PATH`. When the
//! tests run as root (CI), `initdb` and the postmaster run as `nobody` through
//! `setpriv --reuid --regid --clear-groups`, which execs, so the PID the harness holds is the
//! postmaster's. Nothing global is created: no user, no cluster, no file outside the temporary
//! directory. Dropping a [`PgServer`] stops the postmaster by PID and deletes the directory.
//!
//! Authentication (`pg_hba.conf`):
//! - the superuser ([`PgServer::superuser`]) is trusted on the Unix socket in the temporary
//!   directory only; the harness uses it for setup ([`PgServer::psql`]);
//! - [`PgServer::scram`] authenticates with `scram-sha-256` and [`PgServer::md5`] with `md5`, on
//!   127.0.0.1 over TLS (`hostssl`) and, unless [`PgOptions::tls_only`], in plaintext (`host`);
//! - everything else is refused.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::gateway::ServingCert;
use crate::{Process, free_port, wait_for};

/// The database the fixture lives in, and that [`PgServer::psql`] connects to.
pub const DATABASE: &str = "shop";
/// The bootstrap superuser (`initdb -U`).
pub const SUPERUSER: &str = "postgres";
/// The role that logs in with SCRAM-SHA-256.
pub const SCRAM_ROLE: &str = "gw_scram";
/// The role that logs in with md5 (its password is stored as an md5 hash).
pub const MD5_ROLE: &str = "gw_md5";

/// Directory of the newest installed PostgreSQL's binaries (`initdb`, `postgres`, `psql`,
/// `pgbench`): `$AGENTGATE_TEST_PG_BIN` when set, else the highest
/// `/usr/lib/postgresql/<version>/bin` that has `initdb`. Panics with what to install otherwise.
pub fn pg_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("AGENTGATE_TEST_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let e = e.ok()?;
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).unwrap_or_else(|| {
        panic!(
            "no PostgreSQL server under /usr/lib/postgresql/*/bin: install the Debian packages \
             `postgresql` and `postgresql-client` (scripts/test.sh does)"
        )
    })
}

/// A login role and its password.
#[derive(Clone, Debug)]
pub struct PgRole {
    pub name: String,
    pub password: String,
}

/// How [`PgOptions::start`] sets the server up. `PgOptions::default().start()` is
/// [`PgServer::start`].
#[derive(Clone, Debug)]
pub struct PgOptions {
    /// `max_connections` (benchmarks and pool tests open many clients). Default 200.
    pub max_connections: u32,
    /// `shared_buffers`. Default `32MB`.
    pub shared_buffers: String,
    /// Accept the password roles over TLS only (`hostssl` lines, no `host` lines), so a test can
    /// prove a client (the gateway) uses TLS. Default false.
    pub tls_only: bool,
    /// Create the fixture schema ([`FIXTURE_SQL`]) in [`DATABASE`]. Default true.
    pub fixture: bool,
    /// Extra `postgresql.conf` lines, e.g. `log_statement = 'all'`.
    pub extra_conf: Vec<String>,
}

impl Default for PgOptions {
    fn default() -> Self {
        Self {
            max_connections: 200,
            shared_buffers: "32MB".into(),
            tls_only: false,
            fixture: true,
            extra_conf: Vec::new(),
        }
    }
}

/// A running PostgreSQL postmaster on 127.0.0.1, stopped and deleted when dropped.
#[derive(Debug)]
pub struct PgServer {
    /// Always `127.0.0.1`.
    pub host: String,
    pub port: u16,
    /// The superuser, trusted on the Unix socket only.
    pub superuser: String,
    /// The fixture database, [`DATABASE`].
    pub database: String,
    /// Logs in with SCRAM-SHA-256 (over TLS or plaintext).
    pub scram: PgRole,
    /// Logs in with md5 (over TLS or plaintext).
    pub md5: PgRole,
    /// PEM of the CA that signed the server certificate (for `127.0.0.1` and `localhost`): what a
    /// client, or a Connection's `tls.caSecretRef`, verifies the server with.
    pub ca_pem: String,
    bin: PathBuf,
    /// The OS user the server runs as, when the tests run as root.
    run_as: Option<(u32, u32)>,
    process: Option<Process>,
    dir: tempfile::TempDir,
}

impl PgServer {
    /// `initdb`, start, create the roles and the fixture schema; waits until it accepts
    /// connections. Panics with the server's log when it cannot.
    pub fn start() -> Self {
        PgOptions::default().start()
    }

    /// Options to start a server with, e.g. `PgServer::options().tls_only(true).start()`.
    pub fn options() -> PgOptions {
        PgOptions::default()
    }

    /// The postmaster's process id.
    pub fn pid(&self) -> u32 {
        self.process.as_ref().expect("running").pid()
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("pg/data")
    }

    /// The directory of the server's Unix socket (a libpq `host`).
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("pg/socket")
    }

    /// A file holding [`PgServer::ca_pem`] (for libpq's `sslrootcert`).
    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// Path of one of the server's client binaries, e.g. `pgbench`.
    pub fn bin(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }

    /// Everything the server logged so far.
    pub fn output(&self) -> String {
        self.process.as_ref().map(Process::output).unwrap_or_default()
    }

    /// `postgres://127.0.0.1:<port>/shop`: a Connection's endpoint.
    pub fn endpoint(&self) -> String {
        format!("postgres://{}:{}/{}", self.host, self.port, self.database)
    }

    /// A libpq/tokio-postgres key-value connection string for `role` over TCP with `sslmode`
    /// (`disable`, `require`, `verify-full`, ...; `verify-*` also set `sslrootcert`).
    pub fn conninfo(&self, role: &PgRole, sslmode: &str) -> String {
        format!(
            "{} password={}",
            self.tcp_conninfo(&role.name, sslmode),
            role.password
        )
    }

    /// [`PgServer::conninfo`] without the password.
    fn tcp_conninfo(&self, user: &str, sslmode: &str) -> String {
        let mut s = format!(
            "host={} port={} dbname={} user={user} sslmode={sslmode}",
            self.host, self.port, self.database
        );
        if sslmode.starts_with("verify") {
            s.push_str(&format!(" sslrootcert={}", self.ca_path().display()));
        }
        s
    }

    /// The superuser's connection string over the Unix socket (tokio-postgres accepts a
    /// directory as `host`).
    pub fn superuser_conninfo(&self) -> String {
        format!(
            "host={} port={} dbname={} user={}",
            self.socket_dir().display(),
            self.port,
            self.database,
            self.superuser
        )
    }

    /// Runs `sql` (any number of statements, `ON_ERROR_STOP`) with the real `psql` as the
    /// superuser over the Unix socket, in [`DATABASE`]; returns its unaligned, tuples-only
    /// output without the last newline. Panics when psql fails.
    pub fn psql(&self, sql: &str) -> String {
        self.try_psql(sql)
            .unwrap_or_else(|e| panic!("psql failed: {e}\n--- sql ---\n{sql}"))
    }

    /// [`PgServer::psql`] that returns psql's stderr instead of panicking.
    pub fn try_psql(&self, sql: &str) -> Result<String, String> {
        self.psql_in(&self.database, sql)
    }

    /// [`PgServer::try_psql`] in another database.
    pub fn psql_in(&self, database: &str, sql: &str) -> Result<String, String> {
        let conninfo = format!(
            "host={} port={} dbname={database} user={}",
            self.socket_dir().display(),
            self.port,
            self.superuser
        );
        run_psql(&self.bin.join("psql"), &conninfo, None, sql)
    }

    /// Runs `sql` with the real `psql` as `role` over TCP (`sslmode` as in
    /// [`PgServer::conninfo`]); Err carries psql's stderr (e.g. a failed login).
    pub fn psql_as(&self, role: &PgRole, sslmode: &str, sql: &str) -> Result<String, String> {
        let conninfo = self.tcp_conninfo(&role.name, sslmode);
        run_psql(&self.bin.join("psql"), &conninfo, Some(&role.password), sql)
    }

    /// Creates `table` (in `public`, readable and writable by both roles) with `rows` rows made
    /// by `generate_series`: `id bigint` (1..=rows), `email`, `phone`, `card_number` (a
    /// Luhn-valid test number) and `note` (32 hex characters); about 130 bytes a row. A million
    /// rows take a couple of seconds.
    pub fn generate_rows(&self, table: &str, rows: u64) {
        self.psql(&format!(
            "CREATE TABLE {table} AS
               SELECT g::bigint AS id,
                      'user' || g || '@example.com' AS email,
                      '+1-202-555-' || lpad((g % 10000)::text, 4, '0') AS phone,
                      '4111 1111 1111 1111'::text AS card_number,
                      md5(g::text) AS note
               FROM generate_series(1, {rows}) AS g;
             ALTER TABLE {table} ADD PRIMARY KEY (id);
             GRANT ALL ON {table} TO {SCRAM_ROLE}, {MD5_ROLE};
             ANALYZE {table};"
        ));
    }

    fn stop(&mut self) {
        let Some(mut process) = self.process.take() else {
            return;
        };
        // SIGINT is PostgreSQL's fast shutdown (what `pg_ctl stop` sends): it disconnects clients
        // and exits. SIGTERM (smart shutdown) would wait for every client, e.g. a gateway's pool.
        if process.signal("INT", Duration::from_secs(15)).is_none() {
            eprintln!("postgres {} did not stop on SIGINT; killing it", process.pid());
        }
        // Dropping the Process SIGKILLs it if it is still running.
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}

impl PgOptions {
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n;
        self
    }

    pub fn tls_only(mut self, yes: bool) -> Self {
        self.tls_only = yes;
        self
    }

    pub fn fixture(mut self, yes: bool) -> Self {
        self.fixture = yes;
        self
    }

    pub fn conf(mut self, line: &str) -> Self {
        self.extra_conf.push(line.to_string());
        self
    }

    /// Starts the server; see [`PgServer::start`].
    pub fn start(self) -> PgServer {
        let bin = pg_bin_dir();
        let run_as = if is_root() { Some(nobody()) } else { None };
        let dir = temp_dir_for(run_as.is_some());
        let pg = dir.path().join("pg");
        let data = pg.join("data");
        let socket = pg.join("socket");
        std::fs::create_dir(&pg).expect("pg dir");
        std::fs::create_dir(&socket).expect("socket dir");
        if let Some((uid, gid)) = run_as {
            // The temp dir stays root's, searchable (0711) so that nobody reaches pg/, which it
            // owns: initdb creates data/ there, and the server its socket in socket/.
            set_mode(dir.path(), 0o711);
            for d in [&pg, &socket] {
                std::os::unix::fs::chown(d, Some(uid), Some(gid)).expect("chown to nobody");
            }
        }

        let initdb = {
            let mut cmd = as_user(run_as, &bin.join("initdb"));
            cmd.arg("-D")
                .arg(&data)
                .args([
                    "-U",
                    SUPERUSER,
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                ])
                .current_dir(dir.path());
            cmd.output().expect("initdb runs")
        };
        assert!(
            initdb.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&initdb.stdout),
            String::from_utf8_lossy(&initdb.stderr)
        );

        // TLS: a certificate for 127.0.0.1 and localhost, signed by a throwaway CA.
        let cert = ServingCert::generate();
        let write_owned = |name: &str, text: &str, mode: u32| {
            let path = data.join(name);
            std::fs::write(&path, text).expect("write into the data dir");
            set_mode(&path, mode);
            if let Some((uid, gid)) = run_as {
                std::os::unix::fs::chown(&path, Some(uid), Some(gid)).expect("chown");
            }
        };
        write_owned("server.crt", &cert.cert_pem, 0o644);
        write_owned("server.key", &cert.key_pem, 0o600);
        std::fs::write(dir.path().join("ca.crt"), &cert.ca_pem).expect("write ca.crt");
        set_mode(&dir.path().join("ca.crt"), 0o644);

        let scram = PgRole {
            name: SCRAM_ROLE.into(),
            password: format!("scram-{}", random_hex(12)),
        };
        let md5 = PgRole {
            name: MD5_ROLE.into(),
            password: format!("md5-{}", random_hex(12)),
        };

        let mut conf = vec![
            "listen_addresses = '127.0.0.1'".to_string(),
            format!("unix_socket_directories = '{}'", socket.display()),
            "unix_socket_permissions = 0700".into(),
            format!("max_connections = {}", self.max_connections),
            format!("shared_buffers = '{}'", self.shared_buffers),
            "fsync = off".into(),
            "synchronous_commit = off".into(),
            "full_page_writes = off".into(),
            "wal_level = minimal".into(),
            "max_wal_senders = 0".into(),
            "ssl = on".into(),
            "ssl_cert_file = 'server.crt'".into(),
            "ssl_key_file = 'server.key'".into(),
            "password_encryption = 'scram-sha-256'".into(),
            "log_min_messages = warning".into(),
            "log_connections = off".into(),
        ];
        conf.extend(self.extra_conf.iter().cloned());
        append(&data.join("postgresql.conf"), &conf.join("\n"));

        let mut hba = format!("local all {SUPERUSER} trust\n");
        for (role, method) in [(SCRAM_ROLE, "scram-sha-256"), (MD5_ROLE, "md5")] {
            hba.push_str(&format!("hostssl all {role} 127.0.0.1/32 {method}\n"));
            if !self.tls_only {
                hba.push_str(&format!("host all {role} 127.0.0.1/32 {method}\n"));
            }
        }
        std::fs::write(data.join("pg_hba.conf"), hba).expect("write pg_hba.conf");

        let mut server = PgServer {
            host: "127.0.0.1".into(),
            port: 0,
            superuser: SUPERUSER.into(),
            database: DATABASE.into(),
            scram,
            md5,
            ca_pem: cert.ca_pem,
            bin,
            run_as,
            process: None,
            dir,
        };
        server.launch();
        server.setup(self.fixture);
        server
    }
}

impl PgServer {
    /// Starts the postmaster on a free port, retrying with another port when the one picked was
    /// taken in the meantime.
    fn launch(&mut self) {
        for _attempt in 0..5 {
            let port = free_port();
            let mut cmd = as_user(self.run_as, &self.bin.join("postgres"));
            cmd.arg("-D")
                .arg(self.data_dir())
                .args(["-p", &port.to_string()])
                .current_dir(self.dir.path());
            let mut process = Process::start("postgres", cmd);
            self.port = port;
            let ready = wait_for(Duration::from_secs(30), || {
                if !process.is_running() {
                    return Some(false);
                }
                self.psql_in("postgres", "SELECT 1").is_ok().then_some(true)
            });
            match ready {
                Some(true) => {
                    self.process = Some(process);
                    self.check_postmaster();
                    return;
                }
                Some(false) if process.output().contains("could not bind") => {
                    eprintln!("port {port} was taken; retrying:\n{}", process.output());
                    continue;
                }
                _ => panic!("PostgreSQL did not start:\n{}", process.output()),
            }
        }
        panic!("PostgreSQL could not bind a free port in 5 attempts");
    }

    /// The PID we hold is the postmaster (setpriv exec'ed it), running as the intended user.
    fn check_postmaster(&self) {
        let pid = self.pid();
        let pidfile =
            std::fs::read_to_string(self.data_dir().join("postmaster.pid")).expect("postmaster.pid");
        assert_eq!(
            pidfile.lines().next().map(str::trim),
            Some(pid.to_string().as_str()),
            "the process the harness started is not the postmaster"
        );
        if let Some((uid, _)) = self.run_as {
            assert_eq!(
                process_uid(pid),
                Some(uid),
                "the postmaster does not run as nobody"
            );
        }
    }

    fn setup(&self, fixture: bool) {
        let (scram, md5) = (&self.scram, &self.md5);
        self.psql_in(
            "postgres",
            &format!(
                "SET password_encryption = 'scram-sha-256';
                 CREATE ROLE {s} LOGIN PASSWORD '{sp}';
                 SET password_encryption = 'md5';
                 CREATE ROLE {m} LOGIN PASSWORD '{mp}';
                 RESET password_encryption;
                 CREATE DATABASE {DATABASE};",
                s = scram.name,
                sp = scram.password,
                m = md5.name,
                mp = md5.password,
            ),
        )
        .unwrap_or_else(|e| panic!("creating the roles failed: {e}"));
        self.psql(&format!(
            "CREATE SCHEMA billing;
             GRANT ALL ON SCHEMA public, billing TO {s}, {m};
             ALTER DEFAULT PRIVILEGES IN SCHEMA public, billing GRANT ALL ON TABLES TO {s}, {m};
             ALTER DEFAULT PRIVILEGES IN SCHEMA public, billing GRANT ALL ON SEQUENCES TO {s}, {m};",
            s = scram.name,
            m = md5.name,
        ));
        if fixture {
            self.psql(FIXTURE_SQL);
        }
    }
}

/// The fixture schema, in [`DATABASE`] (both roles may read and write all of it):
///
/// - `public.customers (id, name, email, phone, created_at)`: the three rows of
///   [`FIXTURE_CUSTOMERS`];
/// - `public.orders (id, customer_id, total, card_number, status, created_at)`: four orders, with
///   Luhn-valid test card numbers ([`FIXTURE_CARDS`]);
/// - `public.customer_contacts`: a view of customers' names, emails and phones;
/// - `public.order_totals`: a materialized view of totals per customer;
/// - `public.order_count()`: a STABLE SQL function;
/// - `billing.invoices (id, order_id, amount, iban, paid)` and
///   `billing.payment_methods (id, customer_id, card_number, expires)`;
/// - `billing.mark_paid(invoice int)`: a VOLATILE function that UPDATEs (a write behind a SELECT);
/// - `billing.archive_paid()`: a procedure that DELETEs paid invoices (for `CALL`).
pub const FIXTURE_SQL: &str = r#"
CREATE TABLE public.customers (
    id serial PRIMARY KEY,
    name text NOT NULL,
    email text NOT NULL,
    phone text,
    created_at timestamptz NOT NULL DEFAULT '2026-01-01T00:00:00Z'
);
INSERT INTO public.customers (name, email, phone) VALUES
    ('Ada Lovelace', 'ada@example.com', '+44 20 7946 0018'),
    ('Grace Hopper', 'grace.hopper@example.org', '+1-202-555-0143'),
    ('Alan Turing', 'alan.turing@example.net', '+44 161 496 0321');

CREATE TABLE public.orders (
    id serial PRIMARY KEY,
    customer_id int NOT NULL REFERENCES public.customers (id),
    total numeric(10, 2) NOT NULL,
    card_number text,
    status text NOT NULL DEFAULT 'new',
    created_at timestamptz NOT NULL DEFAULT '2026-01-02T00:00:00Z'
);
INSERT INTO public.orders (customer_id, total, card_number, status) VALUES
    (1, 120.50, '4111 1111 1111 1111', 'paid'),
    (1, 75.00, '4111111111111111', 'new'),
    (2, 310.99, '5555 5555 5555 4444', 'shipped'),
    (3, 42.00, '3782 822463 10005', 'new');

CREATE VIEW public.customer_contacts AS
    SELECT id, name, email, phone FROM public.customers;

CREATE MATERIALIZED VIEW public.order_totals AS
    SELECT customer_id, sum(total) AS total, count(*) AS orders FROM public.orders GROUP BY customer_id;

CREATE FUNCTION public.order_count() RETURNS bigint
    LANGUAGE sql STABLE AS 'SELECT count(*) FROM public.orders';

CREATE TABLE billing.invoices (
    id serial PRIMARY KEY,
    order_id int NOT NULL REFERENCES public.orders (id),
    amount numeric(10, 2) NOT NULL,
    iban text NOT NULL,
    paid boolean NOT NULL DEFAULT false
);
INSERT INTO billing.invoices (order_id, amount, iban, paid) VALUES
    (1, 120.50, 'DE89 3704 0044 0532 0130 00', true),
    (3, 310.99, 'GB82 WEST 1234 5698 7654 32', false);

CREATE TABLE billing.payment_methods (
    id serial PRIMARY KEY,
    customer_id int NOT NULL REFERENCES public.customers (id),
    card_number text NOT NULL,
    expires text NOT NULL
);
INSERT INTO billing.payment_methods (customer_id, card_number, expires) VALUES
    (1, '4111 1111 1111 1111', '12/30'),
    (2, '5555 5555 5555 4444', '01/29');

CREATE FUNCTION billing.mark_paid(invoice int) RETURNS void
    LANGUAGE sql VOLATILE AS 'UPDATE billing.invoices SET paid = true WHERE id = invoice';

CREATE PROCEDURE billing.archive_paid()
    LANGUAGE sql AS 'DELETE FROM billing.invoices WHERE paid';

ANALYZE;
"#;

/// The fixture's customers: (name, email, phone).
pub const FIXTURE_CUSTOMERS: &[(&str, &str, &str)] = &[
    ("Ada Lovelace", "ada@example.com", "+44 20 7946 0018"),
    ("Grace Hopper", "grace.hopper@example.org", "+1-202-555-0143"),
    ("Alan Turing", "alan.turing@example.net", "+44 161 496 0321"),
];

/// The card numbers in `orders` and `billing.payment_methods`, as stored.
pub const FIXTURE_CARDS: &[&str] = &[
    "4111 1111 1111 1111",
    "4111111111111111",
    "5555 5555 5555 4444",
    "3782 822463 10005",
];

/// Runs the real `psql` on a libpq connection string (password in `PGPASSWORD`), with the
/// script on stdin, `ON_ERROR_STOP`, no psqlrc, unaligned tuples-only output. Works against any
/// PostgreSQL endpoint, the gateway's listener included.
pub fn psql_conninfo(conninfo: &str, password: Option<&str>, sql: &str) -> Result<String, String> {
    run_psql(&pg_bin_dir().join("psql"), conninfo, password, sql)
}

fn run_psql(psql: &Path, conninfo: &str, password: Option<&str>, sql: &str) -> Result<String, String> {
    use std::io::Write;
    let mut cmd = Command::new(psql);
    for var in [
        "PGHOST",
        "PGHOSTADDR",
        "PGPORT",
        "PGUSER",
        "PGDATABASE",
        "PGPASSWORD",
        "PGPASSFILE",
        "PGSERVICE",
        "PGSERVICEFILE",
        "PGOPTIONS",
        "PGSSLMODE",
        "PGSSLROOTCERT",
        "PGCONNECT_TIMEOUT",
    ] {
        cmd.env_remove(var);
    }
    if let Some(password) = password {
        cmd.env("PGPASSWORD", password);
    }
    cmd.env("PGCONNECT_TIMEOUT", "10")
        .args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            conninfo,
            "-f",
            "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", psql.display()));
    let mut stdin = child.stdin.take().expect("stdin");
    let script = sql.to_string();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(script.as_bytes());
    });
    let out = child.wait_with_output().expect("psql output");
    let _ = writer.join();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if out.status.success() {
        Ok(stdout.strip_suffix('\n').unwrap_or(&stdout).to_string())
    } else {
        Err(format!("{}{}", stdout, String::from_utf8_lossy(&out.stderr)))
    }
}

/// `program` run directly, or, when `run_as` is set, as that uid/gid through `setpriv`, which
/// execs it (so the child's PID is the program's).
fn as_user(run_as: Option<(u32, u32)>, program: &Path) -> Command {
    match run_as {
        None => Command::new(program),
        Some((uid, gid)) => {
            let mut cmd = Command::new("setpriv");
            cmd.args([
                &format!("--reuid={uid}"),
                &format!("--regid={gid}"),
                "--clear-groups",
                "--",
            ])
            .arg(program)
            .env("HOME", "/");
            cmd
        }
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// uid and primary gid of `nobody`, from /etc/passwd.
fn nobody() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("/etc/passwd");
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&"nobody") && f.len() > 3)
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
                .flatten()
        })
        .expect("the user nobody exists (initdb refuses to run as root)")
}

/// The real uid of a process.
pub fn process_uid(pid: u32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A temporary directory; as root, one that `nobody` can reach (every ancestor searchable by
/// others), else under /tmp.
fn temp_dir_for(other_user: bool) -> tempfile::TempDir {
    let base = std::env::temp_dir();
    let reachable = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        p.ancestors().all(|a| {
            std::fs::metadata(a)
                .map(|m| m.permissions().mode() & 0o001 != 0)
                .unwrap_or(false)
        })
    };
    let base = if other_user && !reachable(&base) {
        PathBuf::from("/tmp")
    } else {
        base
    };
    tempfile::Builder::new()
        .prefix("agentgate-pg-")
        .tempdir_in(base)
        .expect("temp dir")
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open for append");
    writeln!(f, "\n# agentgate e2e harness\n{text}").expect("append");
}

/// `n` random bytes from the kernel, hex-encoded.
fn random_hex(n: usize) -> String {
    use std::io::Read;
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("/dev/urandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// A current-thread runtime for a test's client code.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

/// A tokio-postgres client in plaintext (its connection driven in a task); panics when refused.
pub async fn connect(conninfo: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}
