//! One client session, start to end: authenticate the agent, connect the upstream as the
//! Connection's role, then relay messages both ways. Every statement is classified and decided
//! before it is forwarded; results are masked row by row and recorded.
//!
//! Refusals keep the session's protocol and transaction state exactly PostgreSQL's own: instead
//! of the refused message the gateway sends the upstream a message that is certain to fail
//! without side effects (a query that does not parse, or Execute of a portal that cannot
//! exist), and substitutes its own ErrorResponse for the upstream's. The upstream then skips to
//! the next Sync, aborts an open transaction, and answers ReadyForQuery, in the order the
//! client expects, whatever was pipelined around the refusal.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use agentgate_crds::approval::OperationKind;
use agentgate_crds::connection::ConnectionType;
use agentgate_crds::gateway::RecordingMode;
use agentgate_crds::policy::{Action, StatementKind};
use bytes::{Bytes, BytesMut};
use rustls::ClientConfig;
use serde_json::{Value, json};
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use super::binary;
use super::cancel::{self, CancelRegistry, CancelTarget};
use super::catalog::{self, MaskedColumns};
use super::classify::{Classified, Classifier, CursorsEnd, Statement};
use super::cursors::{CursorBook, MAX_TRACKED_CURSORS};
use super::follow;
use super::handshake::{self, Opening, StartupError};
use super::message::authentication::Authentication;
use super::message::bind::Bind;
use super::message::command_complete::CommandComplete;
use super::message::describe::Target;
use super::message::error_response::{ErrorResponse, sqlstate};
use super::message::execute::Execute;
use super::message::notification::Notification;
use super::message::parameter_description::ParameterDescription;
use super::message::parameter_status::ParameterStatus;
use super::message::parse::Parse;
use super::message::query::Query;
use super::message::ready_for_query::TransactionStatus;
use super::message::row_description::RowDescription;
use super::message::{Frame, FrameError, FrameReader, backend, frontend};
use super::rows::{MAX_RECORDED_VALUE, RowMasker};
use super::stream::Stream;
use super::upstream::{self, Upstream};
use crate::approval::unix_now;
use crate::config::CompiledConnection;
use crate::identity::dpop::RequestTarget;
use crate::identity::{ErrorKind, Presented};
use crate::masking::secret::SecretFinder;
use crate::masking::{MaskReport, MaskingPlan};
use crate::policy::index::Subject;
use crate::policy::operation::{Operation, SqlOperation};
use crate::protocol::approval;
use crate::protocol::http::plane::{Gateway, Plane};
use crate::recording::Session as Recording;

/// Result rows kept in the recording of each statement (after masking).
pub const MAX_RECORDED_ROWS: usize = 100;
/// Statement text kept in recordings and error messages.
pub const MAX_RECORDED_SQL: usize = 16 * 1024;

/// What refusals send upstream in place of a refused message: the simple-protocol query text
/// (a syntax error), and the start of the extended-protocol portal name.
const MARKER_PREFIX: &str = "agentgate_refused";

/// Most messages awaiting the server's answer, and most statement text (as recorded) their
/// answers are to be read by. After an error the server skips everything up to Sync without a
/// word: with no answers coming, a pipeline that never syncs would be held without end.
pub const MAX_AWAITING_MESSAGES: usize = 262_144;
pub const MAX_AWAITING_SQL_BYTES: usize = 64 * 1024 * 1024;

/// Whether `messages` and `bytes` of statements awaiting the server are within the caps; the
/// session-ending message otherwise, `why` saying how they piled up.
fn awaiting_within_caps(messages: usize, bytes: usize, why: &str) -> Result<(), String> {
    if messages > MAX_AWAITING_MESSAGES || bytes > MAX_AWAITING_SQL_BYTES {
        return Err(format!(
            "more than {MAX_AWAITING_MESSAGES} messages, or {MAX_AWAITING_SQL_BYTES} bytes of statements, await the server's answer {why}"
        ));
    }
    Ok(())
}

/// What the client side has queued for the server side and it has not taken in yet, held to
/// the same caps as [`Awaiting`] (an unbounded channel would otherwise hold whatever a client
/// sends while never reading).
#[derive(Debug, Default)]
struct Queued {
    messages: std::sync::atomic::AtomicUsize,
    sql_bytes: std::sync::atomic::AtomicUsize,
}

impl Queued {
    fn add(&self, p: &Pending) -> Result<(), String> {
        use std::sync::atomic::Ordering::Relaxed;
        // A Fatal ends the session; it is sent by several hands, and counted by none.
        if matches!(p, Pending::Fatal(_)) {
            return Ok(());
        }
        let messages = self.messages.fetch_add(1, Relaxed) + 1;
        let bytes = self.sql_bytes.fetch_add(Awaiting::sql_bytes(p), Relaxed) + Awaiting::sql_bytes(p);
        awaiting_within_caps(messages, bytes, "while the client reads none")
    }

    fn take(&self, p: &Pending) {
        use std::sync::atomic::Ordering::Relaxed;
        if matches!(p, Pending::Fatal(_)) {
            return;
        }
        self.messages.fetch_sub(1, Relaxed);
        self.sql_bytes.fetch_sub(Awaiting::sql_bytes(p), Relaxed);
    }
}

/// The messages forwarded upstream and not answered yet, in order, with the statement text
/// their plans hold (see [`MAX_AWAITING_MESSAGES`]).
#[derive(Debug, Default)]
struct Awaiting {
    items: VecDeque<Pending>,
    sql_bytes: usize,
}

impl Awaiting {
    fn sql_bytes(p: &Pending) -> usize {
        match p {
            Pending::Execute { plan, .. } => plan.sql.len(),
            Pending::Query { results, .. } => results.iter().map(|r| r.sql.len()).sum(),
            _ => 0,
        }
    }

    /// Appends `p`, or says why the session ends.
    fn push_back(&mut self, p: Pending) -> Result<(), String> {
        self.sql_bytes += Self::sql_bytes(&p);
        self.items.push_back(p);
        awaiting_within_caps(
            self.items.len(),
            self.sql_bytes,
            "(after an error it skips all up to Sync)",
        )
    }

    fn pop_front(&mut self) -> Option<Pending> {
        let p = self.items.pop_front()?;
        self.sql_bytes -= Self::sql_bytes(&p);
        Some(p)
    }

    fn remove(&mut self, i: usize) -> Option<Pending> {
        let p = self.items.remove(i)?;
        self.sql_bytes -= Self::sql_bytes(&p);
        Some(p)
    }

    fn front(&self) -> Option<&Pending> {
        self.items.front()
    }

    fn get(&self, i: usize) -> Option<&Pending> {
        self.items.get(i)
    }
}
/// Write buffer size at which the relay writes even if more messages are ready.
const FLUSH_BYTES: usize = 64 * 1024;
/// Distinct classified statements kept per gateway.
pub const CLASSIFIER_CAPACITY: usize = 16 * 1024;

/// What PostgreSQL sessions share across a gateway process.
#[derive(Debug)]
pub struct Context {
    pub gateway: Arc<Gateway>,
    pub cancels: Arc<CancelRegistry>,
    pub classifier: Classifier,
    /// By Connection, counts statements sent on that may define code under names the
    /// classifier trusts (see [`DEFINES_CODE`]): a session of that Connection whose catalog
    /// reading is older than the last one reads every call, and every read of a relation, as
    /// code that may read or write anything (another session's new `public.upper(int)`, or its
    /// view calling a function that deletes).
    code_generations: Mutex<HashMap<String, Arc<CodeCounts>>>,
    /// Upstream TLS configurations by connection, with the snapshot they were built for.
    tls: Mutex<HashMap<String, (usize, Arc<ClientConfig>)>>,
    /// Turns true when the gateway shuts down: sessions end then (FATAL 57P01, as PostgreSQL's
    /// own shutdown does), so their records are closed and shipped before the process goes.
    shutdown: tokio::sync::watch::Receiver<bool>,
}

impl Context {
    pub fn new(gateway: Arc<Gateway>) -> Arc<Self> {
        // Never shut down: the sender is dropped, and `changed` never fires on a closed channel
        // whose value stays false (see `shut_down`).
        Self::with_shutdown(gateway, tokio::sync::watch::channel(false).1)
    }

    /// A context whose sessions end when `shutdown` turns true.
    pub fn with_shutdown(gateway: Arc<Gateway>, shutdown: tokio::sync::watch::Receiver<bool>) -> Arc<Self> {
        Arc::new(Self {
            gateway,
            cancels: Arc::new(CancelRegistry::default()),
            classifier: Classifier::new(CLASSIFIER_CAPACITY),
            code_generations: Mutex::new(HashMap::new()),
            tls: Mutex::new(HashMap::new()),
            shutdown,
        })
    }

    fn upstream_tls(&self, plane: &Plane, conn: &CompiledConnection) -> Result<Arc<ClientConfig>, String> {
        let generation = Arc::as_ptr(&plane.snapshot) as usize;
        let mut cache = self.tls.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((g, c)) = cache.get(&conn.name)
            && *g == generation
        {
            return Ok(c.clone());
        }
        let cert = conn
            .credential
            .as_ref()
            .and_then(|c| c.client_certificate.as_ref());
        let config = crate::protocol::http::tls::client_config(&crate::protocol::http::tls::UpstreamTls {
            ca: conn.ca.as_ref(),
            insecure_skip_verify: conn.insecure_skip_verify,
            client_certificate: cert.map(|(c, k)| (c, k)),
        })?;
        let config = Arc::new(config);
        cache.insert(conn.name.clone(), (generation, config.clone()));
        Ok(config)
    }
}

/// Most (connection, unmatched rules) pairs remembered as already logged.
const MAX_UNMATCHED_LOGGED: usize = 1024;

/// Logs once per process that `connection`'s column rules `rules` match no column.
fn warn_unmatched_once(connection: &str, rules: &[String]) {
    static LOGGED: std::sync::Mutex<Vec<(String, Vec<String>)>> = std::sync::Mutex::new(Vec::new());
    let mut logged = LOGGED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if logged.iter().any(|(c, r)| c == connection && r == rules) {
        return;
    }
    if logged.len() >= MAX_UNMATCHED_LOGGED {
        logged.clear();
    }
    logged.push((connection.to_string(), rules.to_vec()));
    tracing::warn!(
        connection = %connection,
        rules = ?rules,
        "column masking rules match no column of the database, so they mask nothing: check the schema, table and column names"
    );
}

/// Serves one accepted TCP connection until it ends.
pub async fn serve(
    ctx: Arc<Context>,
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
) {
    let _ = tcp.set_nodelay(true);
    let opening = match tokio::time::timeout(
        handshake::STARTUP_TIMEOUT,
        handshake::open(tcp, acceptor.as_ref()),
    )
    .await
    {
        Ok(Ok(o)) => o,
        Ok(Err(StartupError::Drop(why))) => {
            tracing::debug!(%peer, why, "postgres connection dropped during startup");
            return;
        }
        Ok(Err(StartupError::Reject(e))) => {
            // Nothing negotiated yet: the error goes out in plaintext, as PostgreSQL does.
            tracing::info!(%peer, error = e.message().unwrap_or_default(), "postgres startup refused");
            return;
        }
        Err(_) => return,
    };
    let mut started = match opening {
        Opening::Cancel { pid, secret } => {
            if let Some(target) = ctx.cancels.cancel(pid, secret)
                && let Err(e) = cancel::send(target).await
            {
                tracing::warn!(error = %e, "forwarding a cancel request failed");
            }
            return;
        }
        Opening::Session(s) => *s,
    };
    match start(&ctx, &mut started, peer).await {
        Ok((session, up)) => {
            ctx.gateway
                .metrics
                .postgres_sessions
                .with_label_values(&["started"])
                .inc();
            session.run(up, started).await
        }
        Err(StartupError::Reject(e)) => {
            ctx.gateway
                .metrics
                .postgres_sessions
                .with_label_values(&[e.code().unwrap_or("unknown")])
                .inc();
            // Debug-quoted: the client chose them, and a line break would forge a log line.
            tracing::info!(%peer, user = ?started.user, database = ?started.database,
                code = e.code().unwrap_or_default(), error = ?e.message().unwrap_or_default(),
                "postgres session refused");
            let mut out = BytesMut::new();
            e.encode(&mut out);
            let _ = started.writer.write_all(&out).await;
            let _ = started.writer.shutdown().await;
        }
        Err(StartupError::Drop(why)) => tracing::debug!(%peer, why, "postgres connection dropped"),
    }
}

fn fatal(code: &str, message: impl Into<String>) -> StartupError {
    StartupError::Reject(ErrorResponse::fatal(code, message))
}

/// The planner's statistics: sampled values of every column.
const STATISTICS_RELATIONS: [&str; 6] = [
    "pg_catalog.pg_statistic",
    "pg_catalog.pg_statistic_ext",
    "pg_catalog.pg_statistic_ext_data",
    "pg_catalog.pg_stats",
    "pg_catalog.pg_stats_ext",
    "pg_catalog.pg_stats_ext_exprs",
];

/// Other sessions' statements as they were sent, with the values they wrote or looked up (an
/// `UPDATE customers SET email = '...'` of a session with no column rules): relations and the
/// functions behind them, refused where columns are masked. `pg_stat_statements` lives in the
/// schema its extension was made in, so it is matched by its own name.
const ACTIVITY_RELATIONS: [&str; 2] = ["pg_stat_activity", "pg_stat_statements"];
const ACTIVITY_FUNCTIONS: [&str; 3] = [
    "pg_stat_get_activity",
    "pg_stat_get_backend_activity",
    "pg_stat_statements",
];

/// What a notification's payload becomes where column masking applies.
const WITHHELD_PAYLOAD: &str = "[REDACTED]";

/// Statements that may define code a later call reaches under a name the classifier trusts
/// (a built-in function's or operator's): functions, procedures, aggregates, operators, casts
/// and extensions created, renamed or moved between schemas; or that a read of a relation
/// reaches: views and rules created or replaced, relations renamed (a view calling code that
/// writes, under a name the session's catalog reading knew as something else or not at all).
const DEFINES_CODE: &[&str] = &[
    "ViewStmt",
    "RuleStmt",
    "CreateFunctionStmt",
    "AlterFunctionStmt",
    "CreateExtensionStmt",
    "AlterExtensionStmt",
    "AlterExtensionContentsStmt",
    "DefineStmt",
    "CreateCastStmt",
    // A domain's checks run at every cast to it.
    "CreateDomainStmt",
    "AlterDomainStmt",
    "CreateTransformStmt",
    // Code that may run any of the above.
    "DoStmt",
    "CallStmt",
];

/// Statements sent on one Connection that may define code (see [`Context::code_generations`]).
#[derive(Debug, Default)]
struct CodeCounts {
    /// Of [`defines_code`].
    code: std::sync::atomic::AtomicU64,
    /// Of [`defines_write_code`].
    write_code: std::sync::atomic::AtomicU64,
}

impl CodeCounts {
    fn now(&self) -> [u64; 2] {
        use std::sync::atomic::Ordering::Relaxed;
        [self.code.load(Relaxed), self.write_code.load(Relaxed)]
    }
}

/// Whether `st` may make a write run code it does not name: a trigger (event triggers too,
/// which DDL runs); a table, column or index whose default, check, generated value, expression
/// or type calls the database's own code; or a relation that a write to another reaches (a
/// partition or inheritance child, a foreign key's cascade), which may have such code. Rules
/// and views are [`DEFINES_CODE`]'s. Counted apart: such code changes what writes run, not
/// what reads call.
fn defines_write_code(st: &Statement) -> bool {
    DEFINES_WRITE_CODE.contains(&st.node)
}

/// See [`defines_write_code`]: any table made or changed, since its columns' types and defaults
/// may call such code, and code that may define any of it.
const DEFINES_WRITE_CODE: &[&str] = &[
    "CreateTrigStmt",
    "CreateEventTrigStmt",
    "AlterEventTrigStmt",
    "CreateStmt",
    "CreateTableAsStmt",
    "AlterTableStmt",
    "IndexStmt",
    "AlterDomainStmt",
    "DoStmt",
    "CallStmt",
    "CreateExtensionStmt",
    "AlterExtensionStmt",
];

/// An Execute with a row count where a rowLimit applies: each Execute of a suspended portal
/// would count its rows afresh.
fn fetched_in_parts() -> ErrorResponse {
    ErrorResponse::new(
        sqlstate::INSUFFICIENT_PRIVILEGE,
        "where a rowLimit applies, a portal is executed whole (Execute with no row count); fetching it in parts is refused",
    )
}

/// Built-ins that run a type's input (a domain's CHECK) for a type named in a string, or for the
/// columns of a row they fill.
const TYPE_INPUT_FUNCTIONS: [&str; 7] = [
    "pg_input_is_valid",
    "pg_input_error_info",
    "json_populate_record",
    "jsonb_populate_record",
    "jsonb_populate_record_valid",
    "json_populate_recordset",
    "jsonb_populate_recordset",
];

/// Whether two group lists name the same groups, in any order.
fn same_groups(a: &[String], b: &[String]) -> bool {
    fn set(g: &[String]) -> std::collections::BTreeSet<&str> {
        g.iter().map(String::as_str).collect()
    }
    set(a) == set(b)
}

/// Whether `kind` is one that event triggers fire on (or may: `Other` is the grammar's rest).
fn is_ddl(kind: &StatementKind) -> bool {
    use StatementKind as K;
    matches!(
        kind,
        K::Ddl | K::Create | K::Alter | K::Drop | K::Truncate | K::Grant | K::Revoke | K::Other
    )
}

/// Whether `st` may define code (see [`DEFINES_CODE`]); a rename or move between schemas only
/// when it names a routine, an operator, a schema, a view or a table (`ALTER TABLE` renames
/// views too), not an index's or a type's.
fn defines_code(st: &Statement) -> bool {
    if DEFINES_CODE.contains(&st.node) {
        return true;
    }
    matches!(st.node, "RenameStmt" | "AlterObjectSchemaStmt") && {
        let text = st.text.to_ascii_uppercase();
        [
            "FUNCTION",
            "PROCEDURE",
            "ROUTINE",
            "AGGREGATE",
            "OPERATOR",
            "SCHEMA",
            "VIEW",
            "TABLE",
        ]
        .iter()
        .any(|w| {
            text.split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
                .any(|t| t == *w)
        })
    }
}

/// How often a session's token is verified again: an introspected token revoked at its provider
/// ends the session within the introspection cache's TTL and this, as it stops an HTTP request;
/// a JWT, once its issuer withdraws the key that signed it. (Between these, the verifier's
/// cache answers.)
pub const TOKEN_RECHECK: std::time::Duration = std::time::Duration::from_secs(5);

/// Rechecks in a row that may fail to reach the identity provider before the session ends
/// (a minute at [`TOKEN_RECHECK`]): what cannot be verified is not trusted for ever.
pub const TOKEN_UNSURE_LIMIT: u32 = 12;

/// Most named prepared statements one session keeps: each holds its classified statement, and
/// every agent's session shares the process.
const MAX_NAMED_STATEMENTS: usize = 4096;

/// Most text the named prepared statements of one session hold together: at 1 MiB each
/// ([`super::classify::MAX_CLASSIFIED_SQL`]), the count alone would let one session keep 4 GiB.
const MAX_NAMED_STATEMENT_BYTES: usize = 64 * 1024 * 1024;
/// Most portals one session keeps bound, and most bytes of parameter values they hold (kept
/// for an approval's fingerprint): past either, a Bind is refused until portals are closed or
/// the transaction ends.
const MAX_PORTALS: usize = 1024;
const MAX_BOUND_BYTES: usize = 256 * 1024 * 1024;

/// Everything a running session holds.
struct Live {
    ctx: Arc<Context>,
    /// The configuration the session was opened under: its upstream, identity and masking.
    opened: Arc<Plane>,
    /// The configuration its statements are decided by (see [`follow`]).
    current: Mutex<Arc<Current>>,
    /// The cursor names FETCH and MOVE may read (see [`CursorBook`]).
    cursors: Mutex<CursorBook>,
    connection: String,
    identity: String,
    /// The token's subject (never its own approver).
    subject: String,
    groups: Vec<String>,
    /// Unix time the token expires: the session ends then, as an HTTP request with it would
    /// be refused.
    token_expires_at: i64,
    /// The token itself, hidden from what approvers read (the recording hides it on its own),
    /// and its finder, built once.
    token: Arc<str>,
    token_finder: Option<Arc<SecretFinder>>,
    /// The startup packet's database and the client's address, as the token was verified for.
    database: String,
    peer: std::net::IpAddr,
    plan: MaskingPlan,
    masked: Arc<MaskedColumns>,
    /// The database's own functions that field notation (`o.name`) may call, or that a call of
    /// a built-in function's name may resolve to, and its `pg_*` relations in `public`; read at
    /// startup.
    shadows: catalog::Shadows,
    /// The Connection's count of statements that may define code (see
    /// [`Context::code_generations`]), and its values when `shadows` was read: once any session
    /// of the Connection (this one too) has sent such a statement since, a call may be that code
    /// under a built-in's name, and a relation read a view calling it.
    code_generation: (Arc<CodeCounts>, [u64; 2]),
    /// The session's recording, when it has one; replaced (see [`Live::recording`]) when it
    /// reaches its age limit or the recording configuration changes.
    recording: Option<Mutex<Arc<Recording>>>,
    /// The recording's `session.start` data, for the sessions that continue it.
    recording_start: Value,
    /// Recordings continued in a new file, with their end event: each is closed (signed) once
    /// no pending result will still be written to it.
    retiring: Mutex<Vec<(Arc<Recording>, Value)>>,
    cancel: cancel::Registration,
    /// The portal an extended-protocol refusal executes: unique per session and never shown to
    /// anyone (not even in `pg_stat_activity`), so no client can name a portal after it.
    marker: String,
    counters: Counters,
}

/// The configuration a session's statements are decided by.
struct Current {
    plane: Arc<Plane>,
    /// The applicable Allow rules that cap rows, as (policy, rule) indexes into `plane`'s
    /// configuration: found once per configuration, so each decision checks only these.
    row_limit_rules: Vec<(usize, usize)>,
    /// Why the session can no longer follow the configuration (it refuses every statement).
    stale: Option<String>,
}

/// The session's statement counters, looked up once.
struct Counters {
    allow: prometheus::IntCounter,
    deny: prometheus::IntCounter,
    approval: prometheus::IntCounter,
}

impl Counters {
    fn new(m: &crate::metrics::Metrics, connection: &str, identity: &str) -> Self {
        let c = |d: &str| {
            m.postgres_statements
                .with_label_values(&[connection, identity, d])
        };
        Self {
            allow: c("allow"),
            deny: c("deny"),
            approval: c("require_approval"),
        }
    }

    fn count(&self, a: Action) {
        match a {
            Action::Allow => self.allow.inc(),
            Action::Deny => self.deny.inc(),
            Action::RequireApproval => self.approval.inc(),
        }
    }
}

async fn start(
    ctx: &Arc<Context>,
    s: &mut handshake::Started,
    peer: SocketAddr,
) -> Result<(Live, Upstream), StartupError> {
    let plane = ctx
        .gateway
        .plane()
        .ok_or_else(|| fatal("57P03", "the gateway is starting up"))?;
    let token = handshake::read_token(s, peer).await?;
    let verifier = plane.verifier.as_ref().map_err(|_| {
        fatal(
            sqlstate::INVALID_AUTHORIZATION,
            "the gateway cannot verify tokens (configuration error)",
        )
    })?;
    let authorization = format!("Bearer {token}");
    let url = format!("postgres://gateway/{}", s.database);
    let presented = Presented {
        authorization: Some(&authorization),
        dpop: &[],
        target: RequestTarget::at("CONNECT", &url),
        peer: Some(peer.ip()),
    };
    let principal = verifier.verify(&presented, unix_now()).await.map_err(|e| {
        tracing::info!(%peer, error = %e, "postgres token refused");
        fatal(
            sqlstate::INVALID_AUTHORIZATION,
            format!("token refused: {}", e.kind.describe()),
        )
    })?;
    if principal.identity != s.user {
        return Err(fatal(
            sqlstate::INVALID_AUTHORIZATION,
            format!(
                "the token is for identity {:?}, not user {:?}: connect with user={}",
                principal.identity, s.user, principal.identity
            ),
        ));
    }
    let cfg = &plane.snapshot.config;
    let conn = cfg
        .connections
        .get(&s.database)
        .filter(|c| c.kind == ConnectionType::Postgres)
        .ok_or_else(|| {
            fatal(
                sqlstate::INVALID_CATALOG_NAME,
                format!(
                    "{:?} is not a Postgres connection served by this gateway",
                    s.database
                ),
            )
        })?;
    let subject = Subject {
        identity: &principal.identity,
        groups: &principal.groups,
    };
    let applicable = cfg.policy_index.applicable(&cfg.policies, &conn.name, subject);
    if applicable.is_empty() {
        return Err(fatal(
            sqlstate::INVALID_AUTHORIZATION,
            format!(
                "no AccessPolicy grants identity {} access to connection {}",
                principal.identity, conn.name
            ),
        ));
    }
    let plan = plane.masking_plan(conn, &applicable, false);
    let row_limit_rules = follow::row_limit_rules(cfg, &applicable);
    let tls = ctx.upstream_tls(&plane, conn).map_err(|e| {
        fatal(
            sqlstate::CONNECTION_FAILURE,
            format!("connection {}: upstream TLS: {e}", conn.name),
        )
    })?;
    let mut up = upstream::connect(conn, Some(tls), &s.params).await.map_err(|e| {
        tracing::warn!(connection = %conn.name, error = %e, "postgres upstream session failed");
        fatal(
            sqlstate::CONNECTION_FAILURE,
            format!("connection {}: {}", conn.name, e.for_client()),
        )
    })?;
    let catalog_failed = |e: &dyn std::fmt::Display| {
        tracing::warn!(connection = %conn.name, error = %e, "postgres upstream catalogue read failed");
        fatal(
            sqlstate::CONNECTION_FAILURE,
            format!(
                "connection {}: the gateway could not read the upstream database's catalogue (the gateway's log says why)",
                conn.name
            ),
        )
    };
    catalog::jit(&mut up, false)
        .await
        .map_err(|e| catalog_failed(&e))?;
    let masked = catalog::resolve(&mut up, &plan)
        .await
        .map_err(|e| catalog_failed(&e))?;
    // Read before the catalog: code defined while it is read makes this session strict.
    let code_generation = {
        let count = ctx
            .code_generations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(conn.name.clone())
            .or_default()
            .clone();
        let at = count.now();
        (count, at)
    };
    let shadows = catalog::shadows(&mut up).await.map_err(|e| catalog_failed(&e))?;
    catalog::jit(&mut up, true)
        .await
        .map_err(|e| catalog_failed(&e))?;
    let mode = cfg.gateway.recording.mode;
    let mut recording_start = json!({
        "identity": principal.identity,
        "connection": conn.name,
        "protocol": "postgres",
        "peer": peer.to_string(),
        "subject": principal.subject,
        "issuer": principal.issuer,
        // The client's own text, written before the session hides the token: hidden here.
        "application_name": s.params.iter().find(|(k, _)| k == "application_name")
            .map(|(_, v)| approval::hide_token(v.clone(), Some(token.as_str()))),
    });
    if !masked.unmatched.is_empty() {
        // A misspelt rule masks nothing: said in the log (once per connection and rules) and in
        // every session's recording, where an auditor reads what was masked.
        warn_unmatched_once(&conn.name, &masked.unmatched);
        recording_start["unmatched_column_rules"] = json!(masked.unmatched);
    }
    let recording = match &plane.recorder {
        Ok(r) => match r.start_session(recording_start.clone()) {
            Ok(session) => {
                // The token is the password: were it sent again in SQL (set_config, a comment),
                // the recording shows it redacted.
                session.hide(token.as_bytes());
                Some(Mutex::new(session))
            }
            Err(e) if mode == RecordingMode::Required => {
                tracing::error!(error = %e, "cannot start a session recording");
                return Err(fatal(
                    sqlstate::INTERNAL_ERROR,
                    "session recording is required and unavailable",
                ));
            }
            Err(_) => None,
        },
        Err(_) if mode == RecordingMode::Required => {
            return Err(fatal(
                sqlstate::INTERNAL_ERROR,
                "session recording is required and unavailable",
            ));
        }
        Err(_) => None,
    };
    let registration = ctx.cancels.register(CancelTarget {
        upstream: up.addr,
        key: up.key,
    });
    let mut raw = [0u8; 12];
    aws_lc_rs::rand::fill(&mut raw)
        .map_err(|_| fatal(sqlstate::INTERNAL_ERROR, "random generator failed"))?;
    let marker = format!("{MARKER_PREFIX}_{}", crate::recording::chain::hex(&raw));
    tracing::info!(identity = %principal.identity, connection = %conn.name, %peer, dropped_parameters = ?s.dropped,
        "postgres session started");
    Ok((
        Live {
            ctx: ctx.clone(),
            opened: plane.clone(),
            current: Mutex::new(Arc::new(Current {
                plane: plane.clone(),
                row_limit_rules,
                stale: None,
            })),
            cursors: Mutex::new(CursorBook::default()),
            connection: conn.name.clone(),
            identity: principal.identity.clone(),
            subject: principal.subject.clone(),
            groups: principal.groups.clone(),
            token_expires_at: principal.expires_at,
            token: token.as_str().into(),
            token_finder: approval::token_finder(Some(token.as_str())),
            database: s.database.clone(),
            peer: peer.ip(),
            plan,
            masked: Arc::new(masked),
            shadows,
            code_generation,
            recording,
            recording_start,
            retiring: Mutex::new(Vec::new()),
            cancel: registration,
            marker,
            counters: Counters::new(&ctx.gateway.metrics, &conn.name, &principal.identity),
        },
        up,
    ))
}

/// A refusal: the error the client gets in place of the upstream's answer to the marker.
#[derive(Debug, Clone)]
struct Refusal {
    error: ErrorResponse,
    /// The SQLSTATE the upstream answers the marker with.
    marker_code: &'static str,
}

/// What the server side needs to know about one statement's results.
#[derive(Debug, Clone, Default)]
struct ResultPlan {
    /// Summary for the recording.
    sql: String,
    row_limit: Option<u64>,
    /// Rule that set the row limit, for the notice.
    limit_rule: Option<String>,
    /// Mask computed columns entirely (the statement computes over masked columns).
    mask_computed: bool,
    /// Replace the server's error texts: they may quote masked values (the statement reads
    /// masked columns, or writes a relation with one: "Failing row contains (...)").
    withhold_errors: bool,
    /// COPY TO output passes through the detectors.
    copy_out: bool,
    /// The client side's number for this statement, when it is a COPY FROM STDIN (else 0).
    copy_from: u64,
    /// The recording the statement went into: its result goes there too, even when the session
    /// moved to a new file while the result was pending (a pipeline).
    recording: Option<Arc<Recording>>,
    /// Statement names the statement frees (DEALLOCATE, DISCARD ALL), forgotten when it was
    /// sent: if it fails or is skipped, the server may still hold them (see [`Prepared::unsure`]).
    freed: Vec<String>,
    /// The cursor a DECLARE makes, the configuration it is decided under, whether it is
    /// `WITH HOLD`, and the cursor book's epoch then; noted when the server completes it.
    declares: Option<(String, u64, bool, u64)>,
    /// How the statement ends cursors (see [`Statement::ends_cursors`]), applied again when
    /// the server completes it.
    ends_cursors: Option<CursorsEnd>,
    /// The cursor a CLOSE closes (`""`: all), forgotten when it is decided and again when the
    /// server completes it: a DECLARE of the name before it in the same text or pipeline is
    /// noted at its completion, which comes after the decision.
    closes: Option<String>,
}

/// One message forwarded upstream that the upstream will answer, in order. Kept small (the
/// large parts boxed): the queue to the server side allocates room for 32 of them per session.
#[derive(Debug)]
enum Pending {
    /// A simple Query (or its refusal marker): ends at ReadyForQuery. `copies`: the client
    /// side's count of COPY FROM STDIN statements when it sent this (its ReadyForQuery means each
    /// of them was answered).
    Query {
        results: Vec<ResultPlan>,
        refused: Option<Box<Refusal>>,
        copies: u64,
        /// The segment it ends (see [`Prepared::clear_portals_before`]).
        through: u64,
    },
    Parse {
        seq: u64,
    },
    /// A Bind of `portal`, the gateway's `id` for it (see [`Portal::id`]).
    Bind {
        portal: String,
        id: u64,
    },
    /// A Describe; `internal` ones were added by the gateway to learn a portal's columns.
    /// `statement`: the Parse number of the statement described, whose parameter types the
    /// answer's ParameterDescription gives.
    Describe {
        internal: bool,
        statement: Option<u64>,
    },
    Execute {
        plan: Box<ResultPlan>,
        refused: Option<Box<Refusal>>,
    },
    /// `freed`: the statement name a Close forgot when it was sent (see [`Prepared::unsure`]).
    Close {
        freed: Option<String>,
    },
    /// `in_copy`: sent while a COPY FROM STDIN may be running, when the server ignores a Sync.
    /// `copies` as for a Query.
    Sync {
        in_copy: bool,
        copies: u64,
        /// The segment it ends (see [`Prepared::clear_portals_before`]).
        through: u64,
    },
    /// Not an answer: the client side stopped the session with this error.
    Fatal(Fatal),
}

/// Prepared statements and portals, as the client side expects the upstream to hold them.
#[derive(Debug, Default, Clone)]
struct Prepared {
    seq: u64,
    /// Protocol-level statements: text classification and the Parse that registered it.
    statements: HashMap<String, Entry>,
    portals: HashMap<String, Portal>,
    /// Names of the portals Bind made since the transaction began, which SQL's FETCH and MOVE
    /// can run too (one namespace with cursors), past the decision at Execute.
    bound: HashMap<String, u64>,
    /// More than [`MAX_TRACKED_CURSORS`] were bound in the transaction: any cursor name the
    /// gateway did not see declared may be one.
    bound_overflow: bool,
    /// SQL-level `PREPARE name AS ...`.
    sql: HashMap<String, Option<Arc<Statement>>>,
    /// Counts the Sync and Query boundaries sent: after an error the server skips what follows
    /// it up to the next one, so what lies between two of them runs only together.
    segment: u64,
    /// Counts the Binds sent (see [`Portal::id`]).
    binds: u64,
    /// The segment of the latest Query or Sync sent, and of the latest the server answered
    /// (ReadyForQuery): while they differ, what is decided now runs after statements whose
    /// outcome the gateway has not seen.
    pushed_through: u64,
    answered_through: u64,
    /// A simple Query is being handled (see [`Prepared::answering`]).
    in_query: bool,
    /// Names a Close or DEALLOCATE freed that the server has not answered yet: the segment of
    /// the latest, and how many are unanswered.
    freeing: HashMap<String, (u64, u32)>,
}

#[derive(Debug, Clone)]
enum Entry {
    /// Registered by Parse number `seq`; `confirmed` once the upstream answered ParseComplete.
    Known {
        classified: Arc<Classified>,
        seq: u64,
        confirmed: bool,
        /// The segment the Parse was sent in (see [`Prepared::segment`]).
        segment: u64,
        /// Parameter types: as the Parse named them (0 = unspecified), then as the server's
        /// ParameterDescription resolved them. Binary parameters are read as text by them.
        param_types: Arc<[u32]>,
    },
    /// A named Parse while an earlier one with the name was unconfirmed: which one the upstream
    /// holds depends on answers not seen yet, so the name is refused until closed.
    Ambiguous,
}

#[derive(Debug, Clone)]
struct Portal {
    classified: Arc<Classified>,
    /// As recorded: masked, text cut short, binary values by size only.
    params: Vec<Value>,
    /// The exact bound values (format, NULL or bytes), for an approval's fingerprint: the
    /// recorded form cannot tell apart values an approver did and did not see. Shares the
    /// Bind message's buffer.
    bound: Arc<[(i16, Option<Bytes>)]>,
    /// The parameter types the statement had when bound (declared at Parse, or as the server
    /// described them): the same bytes are another value under another type (int8 -1 and a
    /// float8 NaN), so an approval's fingerprint covers them too.
    types: Arc<[u32]>,
    /// The segment it was bound in.
    segment: u64,
    /// The gateway's number for the Bind that made it, and whether the server answered that
    /// Bind with BindComplete: a Bind the server refused or skipped made nothing, and the
    /// server may hold an older portal of the name (bound before a savepoint rolled back to,
    /// or a cursor a DECLARE made).
    id: u64,
    confirmed: bool,
}

impl Prepared {
    /// The segment whose ReadyForQuery answers a message decided now: a Query's own, or the
    /// next Sync's (which counts one up as it is sent).
    fn answering(&self) -> u64 {
        if self.in_query {
            self.segment
        } else {
            self.segment + 1
        }
    }

    /// The server answered Bind `id` of `portal` (`made`), or refused or skipped it.
    fn bound_answered(&mut self, portal: &str, id: u64, made: bool) {
        match self.portals.get_mut(portal) {
            Some(p) if p.id == id && made => p.confirmed = true,
            Some(p) if p.id == id => {
                self.portals.remove(portal);
            }
            _ => {}
        }
    }

    /// Bind made the named portal `name`.
    fn bind_portal(&mut self, name: &str) {
        if self.bound.len() >= MAX_TRACKED_CURSORS {
            self.bound_overflow = true;
        } else {
            self.bound.insert(name.to_string(), self.segment);
        }
    }

    /// Forgets the portals bound before segment `through`, whose transaction a ReadyForQuery
    /// outside one has ended or failed. Portals bound after it (a pipeline sent ahead: a Bind in
    /// the next transaction, already handled) are the server's still, and stay known. What
    /// refuses FETCH of Bind's portals (`bound`) is forgotten only once the transaction is over
    /// (`idle`): a failed one may be rolled back to a savepoint made after the Bind, and the
    /// server's portal with it lives on.
    fn clear_portals_before(&mut self, through: u64, idle: bool) {
        self.portals.retain(|_, p| p.segment >= through);
        if idle {
            self.bound.retain(|_, segment| *segment >= through);
            if self.bound.is_empty() {
                self.bound_overflow = false;
            }
        }
    }

    /// Voids registrations by Parse messages the upstream skipped or refused (`seq` range).
    fn void(&mut self, seqs: &[u64]) {
        self.statements.retain(|_, e| match e {
            Entry::Known { seq, confirmed, .. } => *confirmed || !seqs.contains(seq),
            Entry::Ambiguous => true,
        });
    }

    /// The parameter types the server resolved for the statement Parse number `s` registered.
    fn describe_params(&mut self, s: u64, types: Vec<u32>) {
        for e in self.statements.values_mut() {
            if let Entry::Known { seq, param_types, .. } = e
                && *seq == s
            {
                *param_types = types.clone().into();
            }
        }
    }

    /// Names a DEALLOCATE, DISCARD ALL or Close freed when it was sent, which the server skipped
    /// or refused: it may still hold a statement by each, which neither Bind nor EXECUTE may be
    /// decided on (a PREPARE the server then refuses as a duplicate would name other text).
    ///
    /// The server decides which names end here, not the cap on PREPARE and Parse: a client can
    /// have it skip Closes of any number of names. Past the cap the session ends (`Err`), as
    /// its names would otherwise grow without bound.
    fn unsure(&mut self, names: Vec<String>) -> Result<(), String> {
        self.settle(&names);
        for name in names {
            self.sql.insert(name.clone(), None);
            self.statements.insert(name, Entry::Ambiguous);
        }
        if self.sql.len() + self.statements.len() > 2 * MAX_NAMED_STATEMENTS {
            return Err(format!(
                "more than {MAX_NAMED_STATEMENTS} prepared statement names are in doubt (closed or deallocated in what the server skipped)"
            ));
        }
        Ok(())
    }

    /// Text the named statements hold (Parse and SQL PREPARE), shared texts once per name.
    fn held_text_bytes(&self) -> usize {
        let parsed = self.statements.values().map(|e| match e {
            Entry::Known { classified, .. } => classified.statements.iter().map(|s| s.text.len()).sum(),
            Entry::Ambiguous => 0,
        });
        let prepared = self.sql.values().flatten().map(|s| s.text.len());
        parsed.chain(prepared).sum()
    }

    /// `name` is freed by a message sent now (see [`Prepared::freed_earlier`]).
    fn free(&mut self, name: &str) {
        let e = self.freeing.entry(name.to_string()).or_default();
        *e = (self.segment, e.1 + 1);
    }

    /// The server answered (or skipped) the messages that freed `names`.
    fn settle(&mut self, names: &[String]) {
        for name in names {
            if let Some(e) = self.freeing.get_mut(name) {
                e.1 -= 1;
                if e.1 == 0 {
                    self.freeing.remove(name);
                }
            }
        }
    }

    /// Whether a statement prepared under `name` now may meet the old one still held: a Close
    /// or DEALLOCATE of it sent before the last boundary is unanswered, and if the server
    /// skipped it, it refuses the new statement as a duplicate and keeps the old. (One sent
    /// since the boundary runs only if the Close or DEALLOCATE did.)
    fn freed_earlier(&self, name: &str) -> bool {
        self.freeing
            .get(name)
            .is_some_and(|(segment, _)| *segment != self.segment)
    }

    fn confirm(&mut self, s: u64) {
        for e in self.statements.values_mut() {
            if let Entry::Known { seq, confirmed, .. } = e
                && *seq == s
            {
                *confirmed = true;
            }
        }
    }
}

type Shared = Arc<Mutex<Prepared>>;

fn lock(p: &Shared) -> std::sync::MutexGuard<'_, Prepared> {
    p.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Why `sql` cannot be shown to an approver whole, if it cannot: longer than a record keeps
/// (hiding the agent's token and masking may make the rest short, and hide what follows).
fn sql_unshown(sql: &str) -> Option<String> {
    (sql.len() > MAX_RECORDED_SQL).then(|| {
        format!(
            "the statement is {} bytes, and an approver is shown at most {MAX_RECORDED_SQL}: an approval covers only what its approver reads; send a shorter one",
            sql.len()
        )
    })
}

/// Most bytes of a bound value's text a record (and an approver) is shown.
const RECORDED_PARAM_BYTES: usize = 1024;

/// Why the values bound to a portal, as recorded, cannot be shown to an approver whole, if they
/// cannot: a binary value of a type the client did not name (the gateway cannot read it as
/// text), or one cut to [`RECORDED_PARAM_BYTES`].
fn params_unshown(params: &[Value]) -> Option<String> {
    params.iter().enumerate().find_map(|(i, p)| {
        let text = p.as_str()?;
        let n = i + 1;
        if text.starts_with("<binary, ") && !text.contains("withheld") {
            Some(format!(
                "parameter ${n} is binary, of a type the gateway was not told (name the parameter types in Parse, describe the statement first, or send the value as text): an approval covers only what its approver reads"
            ))
        } else if text.len() > RECORDED_PARAM_BYTES - 4 && text.ends_with('…') {
            Some(format!(
                "parameter ${n} is longer than the {RECORDED_PARAM_BYTES} bytes an approver is shown: an approval covers only what its approver reads"
            ))
        } else {
            None
        }
    })
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn kind_name(k: StatementKind) -> String {
    serde_json::to_value(k)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// One statement of a `pg.query` or `pg.execute` event: what it is and how it was decided.
#[derive(serde::Serialize)]
struct StatementRecord<'a> {
    kinds: &'a [StatementKind],
    tables: &'a [String],
    functions: &'a [String],
    decision: &'static str,
    rule: Option<&'a str>,
    /// Masked like the statement: a refusal's explanation quotes it.
    reason: Option<String>,
}

/// `pg.query` (simple protocol) and `pg.execute` (extended: with the bound parameters, masked).
#[derive(serde::Serialize)]
struct QueryEvent<'a> {
    sql: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    params: Option<&'a [Value]>,
    decision: &'static str,
    statements: Vec<StatementRecord<'a>>,
}

/// `pg.result`: what a statement returned, rows after masking and capped.
#[derive(serde::Serialize)]
struct ResultEvent<'a> {
    sql: &'a str,
    tag: Option<&'a str>,
    rows: u64,
    truncated: bool,
    columns: Option<&'a [String]>,
    data: &'a [Value],
    data_truncated: bool,
    /// The statement failed after these rows had gone to the client.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    failed: bool,
}

/// How one statement was decided.
struct Verdict {
    action: Action,
    rule: Option<String>,
    message: String,
    row_limit: Option<u64>,
    label: &'static str,
    /// (policy, rule) of a RequireApproval decision.
    approval: Option<(String, String)>,
    /// What runs reads masked columns: its computed result columns are masked whole.
    reads_masked: bool,
    /// What runs writes a relation with masked columns (its errors may quote a row), or runs
    /// code the gateway cannot read where columns are masked (its messages may quote them).
    writes_masked: bool,
    /// What runs reads a relation the session's catalog does not hold.
    untraced: bool,
    /// For a DECLARE: the cursor book's epoch when it was decided (see [`CursorBook::confirm`]),
    /// and the configuration generation it was decided under.
    cursor_epoch: u64,
    cursor_generation: u64,
}

impl Verdict {
    /// A refusal by the gateway itself, not by a policy rule.
    fn refused(message: impl Into<String>) -> Self {
        Self {
            action: Action::Deny,
            rule: None,
            message: message.into(),
            row_limit: None,
            label: "deny",
            approval: None,
            reads_masked: false,
            writes_masked: false,
            untraced: false,
            cursor_epoch: 0,
            cursor_generation: 0,
        }
    }

    /// The same decision once an approval let it through.
    fn approved(&mut self) {
        self.action = Action::Allow;
        self.label = "allow";
    }
}

impl Live {
    /// The configuration to decide by: the one in force, when the session can follow it there
    /// (see [`follow`]); else the session is stale from then on.
    fn current(&self) -> Arc<Current> {
        let latest = self.ctx.gateway.plane();
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(plane) = latest
            && !Arc::ptr_eq(&plane, &current.plane)
            && current.stale.is_none()
        {
            let subject = Subject {
                identity: &self.identity,
                groups: &self.groups,
            };
            let followed = follow::follow(
                &self.opened.snapshot.config,
                &plane.snapshot.config,
                &self.connection,
                subject,
            );
            if let Err(why) = &followed {
                tracing::info!(identity = %self.identity, connection = %self.connection, reason = %why,
                    "postgres session stale after a reload: its statements are refused");
            }
            let (row_limit_rules, stale) = match followed {
                Ok(rules) => (rules, None),
                Err(why) => (Vec::new(), Some(why)),
            };
            *current = Arc::new(Current {
                plane,
                row_limit_rules,
                stale,
            });
        }
        current.clone()
    }

    /// Recording mode Required, as configured now.
    fn required(&self) -> bool {
        let current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        current.plane.snapshot.config.gateway.recording.mode == RecordingMode::Required
    }

    /// The session's recording. With `rotate` (before a statement, so a statement and its
    /// result share a file), a recording that reached its age limit, or that the recorder in
    /// force did not start (the recording directory, mode or key changed), is closed (signed)
    /// and a new one continues it, naming it: a connection held open for days does not keep its
    /// evidence unsigned. Should the new one fail to start, the old one goes on.
    fn recording(&self, rotate: bool) -> Option<Arc<Recording>> {
        let slot = self.recording.as_ref()?;
        if rotate {
            self.close_retired(false);
        }
        let mut session = slot.lock().unwrap_or_else(PoisonError::into_inner);
        if rotate {
            let recorder = self.current().plane.recorder.clone();
            let reason = match &recorder {
                Ok(r) if !r.started(&session) => Some("recording configuration changed"),
                Ok(_) if session.is_old() => Some("session age limit"),
                _ => None,
            };
            if let (Some(reason), Ok(recorder)) = (reason, recorder) {
                let mut start = self.recording_start.clone();
                if let Some(o) = start.as_object_mut() {
                    o.insert("continues".into(), json!(session.id()));
                }
                match recorder.start_session(start) {
                    Ok(next) => {
                        next.hide(self.token.as_bytes());
                        let old = std::mem::replace(&mut *session, next);
                        let end = json!({"reason": reason, "continued_by": session.id()});
                        self.retiring
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push((old, end));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, reason, "a postgres session's recording could not be continued in a new one")
                    }
                }
            }
        }
        Some(session.clone())
    }

    /// Closes (signs) the continued recordings that no pending result holds any more, or, at the
    /// session's end (`all`), every one; off the async worker, as closing fsyncs.
    fn close_retired(&self, all: bool) -> Option<tokio::task::JoinHandle<()>> {
        let mut retiring = self.retiring.lock().unwrap_or_else(PoisonError::into_inner);
        let (done, held): (Vec<_>, Vec<_>) = std::mem::take(&mut *retiring)
            .into_iter()
            .partition(|(r, _)| all || Arc::strong_count(r) == 1);
        *retiring = held;
        if done.is_empty() {
            return None;
        }
        Some(tokio::task::spawn_blocking(move || {
            for (r, end) in done {
                if let Err(e) = r.close(end) {
                    tracing::warn!(error = %e, "closing a session record failed");
                }
            }
        }))
    }

    /// Verifies the session's token again every [`TOKEN_RECHECK`], as the current configuration
    /// verifies; returns why once it is refused (or names another agent).
    async fn token_refused(self: Arc<Self>) -> String {
        let mut every = tokio::time::interval(TOKEN_RECHECK);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await;
        let authorization = format!("Bearer {}", self.token);
        let url = format!("postgres://gateway/{}", self.database);
        // Rechecks in a row that could not reach the provider.
        let mut unsure = 0;
        loop {
            every.tick().await;
            let Some(plane) = self.ctx.gateway.plane() else {
                continue;
            };
            let Ok(verifier) = plane.verifier.as_ref() else {
                return "the gateway cannot verify tokens (configuration error)".into();
            };
            let presented = Presented {
                authorization: Some(&authorization),
                dpop: &[],
                target: RequestTarget::at("CONNECT", &url),
                peer: Some(self.peer),
            };
            match verifier.verify(&presented, unix_now()).await {
                Ok(p) if p.identity == self.identity && p.subject == self.subject => {
                    // Policies name groups: an introspected token whose groups changed at the
                    // provider would keep the session's startup groups, which HTTP requests,
                    // verified one by one, lose at once.
                    if !same_groups(&p.groups, &self.groups) {
                        return "its groups changed".into();
                    }
                    unsure = 0;
                }
                Ok(_) => return "it now names another agent".into(),
                // The provider out of reach (or its budget spent) says nothing of the token: a
                // blip ends no session, a provider gone for TOKEN_UNSURE_LIMIT rechecks does.
                Err(e) if e.kind == ErrorKind::ProviderUnavailable && unsure + 1 < TOKEN_UNSURE_LIMIT => {
                    unsure += 1;
                }
                Err(e) => return e.kind.describe().into(),
            }
        }
    }

    /// Decides one statement (after resolving SQL-level EXECUTE to its prepared statement).
    fn decide(&self, statement: &Statement, prepared: &Prepared) -> Verdict {
        let v = self.decide_once(statement, prepared);
        if v.action != Action::Deny && defines_code(statement) {
            // Sent on, whether or not it succeeds: the calls decided after it (in this query
            // too, and in every session of the Connection open now) are read the stricter way.
            self.code_generation
                .0
                .code
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if v.action != Action::Deny && defines_write_code(statement) {
            self.code_generation
                .0
                .write_code
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        v
    }

    fn decide_once(&self, statement: &Statement, prepared: &Prepared) -> Verdict {
        let target: Arc<Statement>;
        let resolved_target: Arc<Statement>;
        let mut st = statement;
        if let Some(name) = &statement.execute {
            // A protocol-level statement of the name (one namespace with PREPARE) may be what runs.
            let sql = (!prepared.statements.contains_key(name) && !prepared.freed_earlier(name))
                .then(|| prepared.sql.get(name))
                .flatten();
            match sql {
                // `CREATE TABLE t AS EXECUTE p` and `EXPLAIN [ANALYZE] EXECUTE p` run (or plan)
                // the prepared statement inside their own: decided as both.
                Some(Some(inner)) if statement.node != "ExecuteStmt" => {
                    target = Arc::new(statement.running(inner));
                    st = &target;
                }
                // EXECUTE's own arguments are evaluated too (any function, volatile ones
                // included): decided with the prepared statement, as what runs.
                Some(Some(inner)) => {
                    let mut running = statement.running(inner);
                    running.node = inner.node;
                    target = Arc::new(running);
                    st = &target;
                }
                _ => {
                    return Verdict::refused(format!(
                        "EXECUTE {name}: the gateway does not know what the prepared statement {name:?} does (prepare it in this session, by name, once)"
                    ));
                }
            }
        }
        if let Some(resolved) = self.resolve_names(st) {
            resolved_target = Arc::new(resolved);
            st = &resolved_target;
        }
        if let Some((name, _)) = upstream::PINNED_SETTINGS
            .iter()
            .find(|(name, _)| st.settings.iter().any(|s| s == name))
        {
            return Verdict::refused(format!(
                "changing {name} is refused by the gateway: policies read statements with the value it pins"
            ));
        }
        if st.copy.is_some_and(|c| !c.from && c.reshapes_text) && self.plan.has_detectors() {
            return Verdict::refused(
                "COPY TO with an unusual DELIMITER, QUOTE or ESCAPE is refused where masking detectors apply (the server escapes that character inside values, which hides them from the detectors); use a tab, comma, | or ; and the usual quotes",
            );
        }
        if st.copy.is_some_and(|c| !c.from && c.binary) && self.plan.has_detectors() {
            return Verdict::refused(
                "COPY TO in binary format is refused where masking detectors apply (they read COPY output as text); use FORMAT text or csv",
            );
        }
        // COPY's rows are read by the detectors alone: wherever a SELECT of the same would mask
        // by column (a masked table, a relation made since the catalog was read, code that may
        // read a masked column), COPY is refused.
        if st.copy.is_some_and(|c| !c.from)
            && (st.tables.iter().any(|t| self.masked.has_masked_table(t))
                || self.computes_over_masked(st)
                || self.reads_untraced(st))
        {
            return Verdict::refused(
                "COPY TO is refused where it reads columns the gateway masks, or may (a table with masked columns, a relation made since the session began, a function of the database's own); use SELECT",
            );
        }
        // Result masking covers what leaves in results: a statement that keeps a masked column's
        // values elsewhere (another column or table, a setting, a function's doing) would let
        // a later, plain read of them through.
        // A view made here is not traced until the next session: reads through it would not
        // know its columns for masked ones.
        if (st.stores || st.makes_view) && self.reads_masked_names(st) {
            return Verdict::refused(
                "a statement that writes (or makes a view) and reads a masked column is refused where column masking applies (it could copy the column's values where masking cannot follow); select the rows' keys, then write by key",
            );
        }
        // The session's masking was resolved from names and definitions: changing them under it
        // (or under another session of this agent) would turn its column rules aside.
        if st.reshapes
            && !self.masked.is_empty()
            && (st.tables.is_empty() || st.tables.iter().any(|t| self.masked.has_masked_table(t)))
        {
            return Verdict::refused(
                "renaming, altering, replacing or attaching rules or triggers to a relation with masked columns is refused where column masking applies (masking was resolved from their names and definitions); change the schema through a connection without column rules",
            );
        }
        if !self.masked.is_empty() {
            let relation = st
                .tables
                .iter()
                .find(|t| ACTIVITY_RELATIONS.contains(&t.rsplit('.').next().unwrap_or_default()));
            let function = st
                .functions
                .iter()
                .find(|f| ACTIVITY_FUNCTIONS.contains(&f.as_str()));
            if let Some(name) = relation.or(function) {
                return Verdict::refused(format!(
                    "{name} is refused where columns are masked: it shows other sessions' statements with the values they carried"
                ));
            }
            // Anonymous code is not parsed: what it reads and where it writes are unknown.
            if st.kinds.contains(&StatementKind::Do) {
                return Verdict::refused(
                    "DO is refused where column masking applies: its code could copy a masked column's values where masking cannot follow",
                );
            }
        }
        // The planner's statistics hold sampled values of every column, masked ones included.
        if !self.masked.is_empty()
            && let Some(t) = st
                .tables
                .iter()
                .find(|t| STATISTICS_RELATIONS.contains(&t.as_str()))
        {
            return Verdict::refused(format!(
                "{t} is refused where columns are masked: it holds sampled values of every column"
            ));
        }
        let current = self.current();
        if let Some(why) = &current.stale
            && st.node != "TransactionStmt"
        {
            return Verdict::refused(format!(
                "this session can no longer be decided by the gateway's configuration: {why} since it was opened; connect again"
            ));
        }
        let generation = current.plane.snapshot.generation;
        let capped = !current.row_limit_rules.is_empty();
        let mut book = self.cursors.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(name) = &st.cursor {
            match st.node {
                "FetchStmt" => {
                    // A portal Bind made runs its statement under FETCH or MOVE too, which
                    // the gateway decided only for Execute (and which may never have been
                    // allowed): it is read by Execute alone.
                    if prepared.bound.contains_key(name.as_str())
                        || (prepared.bound_overflow && book.get(name).is_none())
                    {
                        return Verdict::refused(format!(
                            "FETCH and MOVE of {name:?}, a portal made by the extended protocol's Bind, are refused: the gateway decides its statement at Execute; use Execute"
                        ));
                    }
                    // Nor does a row cap reach rows fetched from a cursor the gateway did not
                    // see declared (a function's refcursor). Sent before the answers to what
                    // came before it, it may find a cursor made after a DECLARE failed or
                    // a transaction ended, under the declared one's name.
                    if capped && prepared.answered_through < prepared.pushed_through {
                        return Verdict::refused(format!(
                            "FETCH and MOVE of {name:?} are refused where a rowLimit applies while statements sent before them are unanswered: the gateway did not see declared the cursor they would read then; send them after those answers"
                        ));
                    }
                    if book.get(name).is_none() && capped {
                        return Verdict::refused(format!(
                            "FETCH and MOVE of {name:?}, a cursor the gateway did not see declared, are refused where a rowLimit applies (its rows would not be counted)"
                        ));
                    }
                    // Unknown cursors (a function's refcursor) are read only while the
                    // configuration is the one the session opened under.
                    let declared = book.get(name).unwrap_or(self.opened.snapshot.generation);
                    if declared != generation {
                        return Verdict::refused(format!(
                            "cursor {name:?} was declared under an earlier configuration of the gateway; declare it again"
                        ));
                    }
                }
                "ClosePortalStmt" => book.close(name, false),
                _ => {}
            }
        }
        // For the statements after it in the same text or pipeline.
        if let Some(end) = st.ends_cursors {
            book.end(end, false);
        }
        // Code the gateway cannot read can close a cursor by name and open another under it,
        // over a capped table.
        if capped && self.may_run_unread_code(st) {
            if st.node == "DeclareCursorStmt" {
                return Verdict::refused(
                    "a cursor over code the gateway cannot read is refused where a rowLimit applies: each FETCH would run it, and it may close or open other cursors",
                );
            }
            book.forget_all(false);
        }
        let cursor_epoch = book.epoch();
        drop(book);
        let cfg = &current.plane.snapshot.config;
        let op = Operation::Sql(SqlOperation { statement: st });
        let subject = Subject {
            identity: &self.identity,
            groups: &self.groups,
        };
        let d = cfg
            .policy_index
            .decide(&cfg.policies, &self.connection, subject, &op, unix_now());
        // Every Allow rule that matches restricts: the smallest row cap among them applies, not
        // only the cap of the rule that decided. Also to what needs approval: an approval lifts
        // its rule, not the caps of the tables the statement reads.
        let mut row_limit: Option<u64> = None;
        if matches!(d.action, Action::Allow | Action::RequireApproval) && !current.row_limit_rules.is_empty()
        {
            let t = unix_now();
            for &(pi, ri) in &current.row_limit_rules {
                let r = &cfg.policies[pi].rules[ri];
                // A capped rule reaches every statement that reads one of its tables, whatever
                // else it reads (a join or UNION with a table another rule allows uncapped).
                if let Some(limit) = r.matcher.row_limit()
                    && r.matcher.reaches(&op, t)
                {
                    row_limit = Some(row_limit.map_or(limit, |l| l.min(limit)));
                }
            }
        }
        if row_limit.is_some() && st.node == "DeclareCursorStmt" {
            return Verdict::refused(
                "cursors are refused where a rowLimit applies (FETCH would read past it); use SELECT",
            );
        }
        if row_limit.is_some() && st.copy.is_some_and(|c| !c.from) {
            return Verdict::refused(
                "COPY TO is refused where a rowLimit applies (its rows are not counted); use SELECT",
            );
        }
        // An approval covers the statement as the approver saw it; the rows COPY FROM STDIN
        // loads come after, unseen and unbounded.
        if d.action == Action::RequireApproval && st.copy.is_some_and(|c| c.from) {
            return Verdict::refused(
                "COPY FROM cannot be approved: the rows it loads arrive after the statement an approver would see; load them with INSERT statements",
            );
        }
        self.counters.count(d.action);
        if st.node == "DeclareCursorStmt"
            && let Some(name) = &st.cursor
        {
            // Known from here for the statements after it in the same text; a name known already
            // keeps its configuration until the server confirms a new cursor of it (a DECLARE
            // the server refuses, of a name in use, must not pass an old cursor off as new).
            if d.action == Action::Allow {
                self.cursors
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .declare(name, generation, prepared.answering(), st.cursor_hold);
            }
        }
        // Judged on what runs: EXECUTE's prepared statement. A FETCH names only its cursor,
        // whose query the gateway does not keep: where any column is masked, its computed
        // columns are masked whole.
        let reads_masked =
            self.computes_over_masked(st) || (st.node == "FetchStmt" && !self.masked.is_empty());
        // Code the gateway cannot read (a trigger or rule a write runs, one defined since the
        // catalog was read, a function of the database's own) may quote masked values where
        // columns are masked (`RAISE NOTICE '%', (SELECT email ...)`): its messages are
        // withheld too.
        let writes_masked = (st.writes && st.tables.iter().any(|t| self.masked.holds_masked_rows(t)))
            || (!self.masked.is_empty() && self.may_run_unread_code(st));
        Verdict {
            reads_masked,
            writes_masked,
            untraced: self.reads_untraced(st),
            action: d.action,
            rule: d.rule_ref(),
            // Explanations are for refusals; an allowed statement's record names its rule.
            message: if d.action == Action::Allow {
                String::new()
            } else {
                d.explain(&op)
            },
            row_limit,
            label: d.label(),
            approval: match d.cause {
                crate::policy::index::Cause::Rule { policy, rule } if d.action == Action::RequireApproval => {
                    Some((policy.name.clone(), rule.name.clone()))
                }
                _ => None,
            },
            cursor_epoch,
            cursor_generation: generation,
        }
    }

    /// Records an event before the statement runs. `Err` means the statement must be refused
    /// (mode Required and the event is not on record).
    fn record(&self, kind: &str, data: impl serde::Serialize) -> Result<(), ()> {
        let required = self.required();
        let result = match self.recording(true) {
            // A session begun under BestEffort swallows its write failures: while Required is
            // in force it cannot carry a statement's record (its successor could not be started).
            Some(r) if required && r.mode() != RecordingMode::Required => Err(()),
            Some(r) => r.record(kind, data).map_err(|e| self.recording_failed(&e)),
            None => Err(()),
        };
        if required { result } else { Ok(()) }
    }

    /// Records an event that follows what it records (a result already sent): written with the
    /// next event, in one system call. Failures are counted, never refuse (the rows are gone).
    fn record_after(&self, into: Option<&Arc<Recording>>, kind: &str, data: impl serde::Serialize) {
        if let Some(r) = into.cloned().or_else(|| self.recording(false))
            && let Err(e) = r.record_deferred(kind, data)
        {
            self.recording_failed(&e);
        }
    }

    fn recording_failed(&self, e: &crate::recording::RecordingError) {
        let mode = if self.required() {
            "required"
        } else {
            "best_effort"
        };
        self.ctx
            .gateway
            .metrics
            .recording_failures
            .with_label_values(&[mode])
            .inc();
        tracing::error!(error = %e, "recording a postgres event failed");
    }

    /// Whether computed result columns of `st` must be masked: it reads masked columns by name,
    /// by `*`, or as whole rows, or calls code that may read them (a function of the
    /// database's own, as a view calling one is masked whole).
    fn computes_over_masked(&self, st: &Statement) -> bool {
        self.names_masked(st) || ((st.opaque_calls || self.calls_hidden_code(st)) && !self.masked.is_empty())
    }

    /// Whether `st` may run code the gateway cannot read (a function of the database's own,
    /// stable ones included, DO, CALL, a view calling such code, a write that fires a trigger or
    /// rule, DDL where there are event triggers), which can close a cursor by name and open
    /// another under it.
    fn may_run_unread_code(&self, st: &Statement) -> bool {
        let sh = &self.shadows;
        // Triggers, rules, partitions or cascades defined since the catalog was read.
        let new_write_code = || self.code_generation.0.now()[1] != self.code_generation.1[1];
        st.opaque_calls
            || matches!(st.node, "DoStmt" | "CallStmt")
            || st.tables.iter().any(|t| sh.any_code_views.contains(t))
            || (st.writes && (st.tables.iter().any(|t| sh.written_code.contains(t)) || new_write_code()))
            // `TRUNCATE ... CASCADE` empties every referencing table, whatever its key's action.
            || (st.node == "TruncateStmt" && !sh.written_code.is_empty())
            || ((sh.event_triggers || new_write_code()) && st.kinds.iter().any(is_ddl))
            || self.calls_hidden_code(st)
    }

    /// Whether `st` calls code of the database's own that the classifier took for something
    /// else: `o.name` where `name` is a function taking a row (PostgreSQL calls `name(o)` unless
    /// `o` has such a column), a built-in function's name or operator symbol that one of its own
    /// may answer, a cast that runs its code, or a view that calls it.
    fn calls_hidden_code(&self, st: &Statement) -> bool {
        let sh = &self.shadows;
        let expressions = !st.functions.is_empty()
            || !st.fields.is_empty()
            || !st.operators.is_empty()
            || !st.types.is_empty();
        st.fields.iter().any(|f| sh.by_field.contains(f))
            || st.functions.iter().any(|f| sh.shadowing.contains(f))
            // A type named in a string, or a row's columns filled: their input runs a domain's
            // CHECK, with no type name in the statement to see.
            || st.functions.iter().any(|f| self.runs_type_input(f))
            || st.operators.iter().any(|o| sh.operators.contains(o))
            || st.types.iter().any(|t| sh.coded_types.contains(t))
            || st.tables.iter().any(|t| sh.code_views.contains(t))
            || (sh.implicit_casts && (expressions || !st.tables.is_empty()))
            || ((expressions || !st.tables.is_empty())
                && self.code_generation.0.now()[0] != self.code_generation.1[0])
    }

    /// Whether calling `f` runs a type's input (a domain's CHECK) where the database has such
    /// code: [`TYPE_INPUT_FUNCTIONS`], which name no type in the statement.
    fn runs_type_input(&self, f: &str) -> bool {
        !self.shadows.coded_types.is_empty() && TYPE_INPUT_FUNCTIONS.contains(&f)
    }

    /// What [`Self::calls_hidden_code`] finds, by name, for the functions a rule lists: each
    /// hidden call is named (a field or operator as itself, other code by what reaches it), so a
    /// rule that lists functions allows none of it unless it names it.
    fn hidden_code_names(&self, st: &Statement) -> Vec<String> {
        let sh = &self.shadows;
        let mut names: Vec<String> = st
            .fields
            .iter()
            .filter(|f| sh.by_field.contains(*f))
            .chain(st.operators.iter().filter(|o| sh.operators.contains(*o)))
            .cloned()
            .collect();
        names.extend(
            st.types
                .iter()
                .filter(|t| sh.coded_types.contains(*t))
                .map(|t| format!("(the cast to {t})")),
        );
        names.extend(
            st.tables
                .iter()
                .filter(|t| sh.code_views.contains(*t))
                .map(|t| format!("(the code of view {t})")),
        );
        // Code no name in the statement shows: a built-in's name its own function answers, a
        // type's input run from a string, an implicit cast, code defined since the session began.
        let unnamed = st
            .functions
            .iter()
            .any(|f| sh.shadowing.contains(f) || self.runs_type_input(f));
        if unnamed || names.is_empty() {
            names.push("(the database's own code)".into());
        }
        names
    }

    /// `st` as the session's database reads it, where that differs from the classifier's
    /// reading: hidden calls (see [`Self::calls_hidden_code`]) are code that may write, and an
    /// unqualified `pg_*` name that only `public` has is `public`'s relation, not the catalog's.
    fn resolve_names(&self, st: &Statement) -> Option<Statement> {
        let in_public = |t: &String| {
            t.strip_prefix("pg_catalog.")
                .is_some_and(|name| self.shadows.public_pg_relations.contains(name))
        };
        let calls = self.calls_hidden_code(st);
        if !calls && !st.tables.iter().any(in_public) {
            return None;
        }
        let mut resolved = st.clone();
        if calls {
            // Listed with the functions, as operators that are not built in are, so a rule can
            // name or deny them, and a rule that lists functions does not allow what it does not
            // name.
            for f in self.hidden_code_names(st) {
                if !resolved.functions.contains(&f) {
                    resolved.functions.push(f);
                }
            }
            resolved.writes = true;
            resolved.stores = true;
            resolved.opaque_calls = true;
        }
        for t in &mut resolved.tables {
            if in_public(t) {
                *t = format!("public.{}", &t["pg_catalog.".len()..]);
            }
        }
        Some(resolved)
    }

    /// Whether `st` reads a relation made since the catalog was read (or one that does not
    /// exist): it cannot be traced, so its results are redacted whole, computed columns
    /// included, until the client reconnects.
    fn reads_untraced(&self, st: &Statement) -> bool {
        !self.masked.is_empty() && st.tables.iter().any(|t| self.masked.is_unknown(t))
    }

    /// Whether `st` names a masked column (read or written), by `*`, or as a whole row.
    fn names_masked(&self, st: &Statement) -> bool {
        self.masked_name_among(st, |_| true)
    }

    /// Whether `st` reads a masked column by name, by `*`, or as a whole row (writing one,
    /// `SET email = 'x'`, is not reading it).
    fn reads_masked_names(&self, st: &Statement) -> bool {
        self.masked_name_among(st, |c| !st.assigned_only.iter().any(|a| a == c))
    }

    /// Only a statement that touches a relation with masked columns can read one: a masked
    /// column's name elsewhere (`suppliers.email`) is another column. `read` tells whether a
    /// masked name counts (asked only of masked names).
    fn masked_name_among(&self, st: &Statement, read: impl Fn(&str) -> bool) -> bool {
        if self.masked.is_empty() {
            return false;
        }
        let masked_table = st.tables.iter().any(|t| self.masked.has_masked_table(t));
        // A relation made since the catalog was read (another client's view of `email`, a new
        // partition) may hold masked columns under their names.
        if !masked_table && !st.tables.iter().any(|t| self.masked.is_unknown(t)) {
            return false;
        }
        // PostgreSQL 18 reads `old` and `new` in RETURNING as the written row before and after
        // (`RETURNING row_to_json(old)`, `old.email`), which the parser, of an older grammar,
        // takes for a column and a relation: whole rows of the masked table here.
        let row_alias = |c: &str| matches!(c, "old" | "new") && masked_table;
        st.columns.iter().any(|c| {
            (self.masked.is_masked_name(c) && read(c))
                || (c == "*" && masked_table)
                || (row_alias(c) && read(c))
                || self.masked_relations(st, c).next().is_some()
        }) || st.qualified.iter().any(|(rel, name)| {
            (row_alias(rel) && self.masked.is_masked_name(name))
                || self
                    .masked_relations(st, rel)
                    .any(|t| !self.masked.has_column(t, name))
        })
    }

    /// The relations of `st` with masked columns that a bare relation name may be.
    fn masked_relations<'a>(&'a self, st: &'a Statement, rel: &'a str) -> impl Iterator<Item = &'a String> {
        st.tables
            .iter()
            .filter(move |t| t.rsplit('.').next() == Some(rel) && self.masked.has_masked_table(t))
    }

    /// `sql`: the statement as recorded, from [`LiveSession::masked_sql`] (passwords and
    /// detected values out, like every other event's SQL).
    fn result_plan(&self, sql: String, st: &Statement, v: &Verdict) -> ResultPlan {
        let declares = (st.node == "DeclareCursorStmt")
            .then(|| st.cursor.clone())
            .flatten()
            .map(|name| (name, v.cursor_generation, st.cursor_hold, v.cursor_epoch));
        ResultPlan {
            declares,
            ends_cursors: st.ends_cursors,
            closes: (st.node == "ClosePortalStmt")
                .then(|| st.cursor.clone())
                .flatten(),
            sql,
            row_limit: v.row_limit,
            limit_rule: v.rule.clone(),
            mask_computed: v.reads_masked
                || v.untraced
                || self.computes_over_masked(st)
                || self.reads_untraced(st),
            withhold_errors: v.reads_masked || v.writes_masked || self.computes_over_masked(st),
            copy_out: st.copy.is_some_and(|c| !c.from),
            copy_from: 0,
            recording: self.recording(false),
            freed: Vec::new(),
        }
    }

    fn masked_sql(&self, sql: &str) -> String {
        // Only what a record keeps is masked: normalizing parses the text, which may be 64 MiB.
        let mut end = sql.len().min(MAX_RECORDED_SQL);
        while !sql.is_char_boundary(end) {
            end -= 1;
        }
        // A cut through the agent's token would keep its start, which hiding (of the whole
        // token) does not find: cut before it (the token is ASCII, so on a character boundary).
        if end < sql.len()
            && let Some(finder) = &self.token_finder
        {
            end -= finder.unfinished_at_end(&sql.as_bytes()[..end]);
        }
        let kept = approval::hide_spellings(sql[..end].to_string(), self.token_finder.as_deref());
        let mut masked = truncate(
            &super::statement_text::mask(&self.plan, &without_passwords(&kept)),
            MAX_RECORDED_SQL,
        );
        if end < sql.len() && !masked.ends_with('…') {
            masked.push('…');
        }
        masked
    }

    /// A bound parameter as recorded (and shown to approvers): masked as text is, cut. A bytea
    /// in hex (`\x6164...`) hides its bytes from the detectors: they read the bytes, and a find
    /// withholds the value.
    fn recorded_param(&self, text: &str) -> Value {
        if let Some(bytes) = super::rows::bytea_hex(text.as_bytes())
            && !self
                .plan
                .mask_escaped_text(&String::from_utf8_lossy(&bytes), false)
                .1
                .is_empty()
        {
            return Value::String(format!(
                "<bytea, {} bytes, withheld by the detectors>",
                bytes.len()
            ));
        }
        Value::String(self.cut_hiding(&self.plan.mask_escaped_text(text, false).0, RECORDED_PARAM_BYTES))
    }

    /// `text` cut to `max` bytes with the agent's token hidden first: cut first, the start of a
    /// token the cut went through would stay.
    fn cut_hiding(&self, text: &str, max: usize) -> String {
        truncate(
            &approval::hide_spellings(text.to_string(), self.token_finder.as_deref()),
            max,
        )
    }

    /// The recorded reason for refusing `sql` that does not parse. The parser's message quotes
    /// the text where it failed (`... at or near "'hunter2"`), so it is masked, and withheld
    /// when the statement may carry a password.
    fn unparseable(&self, sql: &str, e: &impl std::fmt::Display) -> String {
        if mentions_password(sql) {
            return "unparseable: [parser message withheld: the statement may carry a password]".into();
        }
        truncate(
            &self.plan.mask_escaped_text(&format!("unparseable: {e}"), false).0,
            MAX_RECORDED_SQL,
        )
    }

    async fn run(self, up: Upstream, started: handshake::Started) {
        let handshake::Started {
            reader: client_reader,
            writer: mut client_writer,
            ..
        } = started;
        // The client learns the session is ready only now: the upstream accepted the gateway.
        let mut out = BytesMut::new();
        Authentication::Ok.encode(&mut out);
        for p in &up.params {
            p.encode(&mut out);
        }
        self.cancel.key.encode(&mut out);
        TransactionStatus::Idle.encode(&mut out);
        if client_writer.write_all(&out).await.is_err() || client_writer.flush().await.is_err() {
            return;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(Queued::default());
        let (copy_tx, copy_rx) = watch::channel(CopyProgress::default());
        let shared: Shared = Arc::new(Mutex::new(Prepared::default()));
        let Upstream {
            reader: up_reader,
            writer: up_writer,
            ..
        } = up;
        let this = Arc::new(self);
        let down = ServerSide {
            live: this.clone(),
            queue: rx,
            queued: queued.clone(),
            front: Awaiting::default(),
            shared: shared.clone(),
            result: None,
            query_index: 0,
            next_rows: None,
            out: BytesMut::new(),
            report: MaskReport::default(),
            copy_progress: copy_tx,
            answered_with_query: 0,
        };
        let mut down_task = tokio::spawn(down.run(up_reader, client_writer));
        let stop = tx.clone();
        let client_side = ClientSide {
            live: this.clone(),
            queue: tx,
            queued,
            shared,
            out: BytesMut::new(),
            copy_in: false,
            copies: 0,
            copy_batch: 0,
            copy_sent: false,
            copy_ended: false,
            copy_progress: copy_rx,
            described: None,
            unsynced: false,
        }
        .run(client_reader, up_writer);
        // Bounded: a token may claim any expiry (tokio's sleep saturates too).
        let left = u64::try_from(this.token_expires_at.saturating_sub(unix_now()))
            .unwrap_or(0)
            .min(10 * 365 * 24 * 3600);
        let expiry = tokio::time::sleep(std::time::Duration::from_secs(left));
        let refused = this.clone().token_refused();
        let reason = tokio::select! {
            reason = client_side => reason,
            why = refused => {
                let _ = stop.send(Pending::Fatal(Fatal(ErrorResponse::fatal(
                    sqlstate::INVALID_AUTHORIZATION,
                    format!("the token this session was opened with is no longer accepted: {why}; connect again with a fresh one"),
                ))));
                "token refused".to_string()
            }
            () = expiry => {
                let _ = stop.send(Pending::Fatal(Fatal(ErrorResponse::fatal(
                    sqlstate::INVALID_AUTHORIZATION,
                    "the token this session was opened with has expired; connect again with a fresh one",
                ))));
                "token expired".to_string()
            }
            () = shut_down(this.ctx.shutdown.clone()) => {
                let _ = stop.send(Pending::Fatal(Fatal(ErrorResponse::fatal(
                    sqlstate::ADMIN_SHUTDOWN,
                    "terminating connection because the gateway is shutting down",
                ))));
                "gateway shutdown".to_string()
            }
        };
        // The server side ends when every sender is gone (the client side's went with it).
        drop(stop);
        // The server side ends when the upstream closes or the client writer fails.
        let down_reason = match tokio::time::timeout(std::time::Duration::from_secs(5), &mut down_task).await
        {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => "aborted".to_string(),
            Err(_) => {
                // Stuck writing to a client that stopped reading: dropping the handle would
                // leave the task running, holding the upstream session (its transaction and
                // locks) and writing to a recording about to be closed.
                down_task.abort();
                let _ = down_task.await;
                "aborted".to_string()
            }
        };
        if let Some(r) = this.recording(false) {
            // Closing signs and fsyncs the file: off the async worker, which other sessions share
            // (an fsync takes milliseconds on network block storage).
            let end = json!({ "reason": reason, "upstream": down_reason });
            let _ = tokio::task::spawn_blocking(move || r.close(end)).await;
        }
        if let Some(closing) = this.close_retired(true) {
            let _ = closing.await;
        }
        tracing::info!(identity = %this.identity, connection = %this.connection, reason, "postgres session ended");
    }
}

/// Resolves once `shutdown` is true; never, if its sender is gone while it is false.
async fn shut_down(mut shutdown: tokio::sync::watch::Receiver<bool>) {
    if shutdown.wait_for(|down| *down).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Writes buffered bytes and flushes them (TLS keeps records in its buffer until flushed).
async fn flush(w: &mut WriteHalf<Stream>, out: &mut BytesMut) -> std::io::Result<()> {
    if !out.is_empty() {
        w.write_all(out).await?;
        out.clear();
        w.flush().await?;
    }
    Ok(())
}

/// Why the client side stopped.
type Stop = String;

/// How much of a client's next messages is read while a FETCH waits for earlier answers.
const READ_AHEAD_BYTES: usize = 64 * 1024;

/// Reads client messages, decides them and forwards them (or refusal markers) upstream.
struct ClientSide {
    live: Arc<Live>,
    queue: mpsc::UnboundedSender<Pending>,
    /// What sits in `queue` (messages, statement bytes), shared with the server side.
    queued: Arc<Queued>,
    shared: Shared,
    out: BytesMut,
    /// A forwarded statement may start COPY FROM STDIN, so CopyData is expected.
    copy_in: bool,
    /// COPY FROM STDIN statements forwarded so far (the last one's number, for `copy_progress`).
    copies: u64,
    /// COPY FROM STDIN statements in the last message that had any (a Query may hold several).
    copy_batch: u64,
    /// Whether the client sent COPY data (or its end) since then, and whether the last such
    /// message ended a copy (CopyDone, CopyFail).
    copy_sent: bool,
    copy_ended: bool,
    /// How far the server side has seen the upstream answer them.
    copy_progress: watch::Receiver<CopyProgress>,
    /// The portal the client's previous message described: an Execute of it right after needs
    /// no Describe from the gateway (libpq describes every portal it executes). Anything in
    /// between (a DECLARE or CLOSE of the name, a new Bind) could change what it describes.
    described: Option<String>,
    /// Extended-protocol messages were sent since the last Sync. The server then skips a simple
    /// Query after an error, as it skips everything up to Sync: a Query there is refused.
    unsynced: bool,
}

/// A message that stops the session: sent to the client by the server side, which owns the
/// client's write half.
#[derive(Debug)]
struct Fatal(ErrorResponse);

impl ClientSide {
    async fn run(mut self, mut reader: FrameReader<ReadHalf<Stream>>, mut up: WriteHalf<Stream>) -> String {
        loop {
            let frame = match reader.try_frame() {
                Ok(Some(f)) => f,
                Ok(None) => {
                    if flush(&mut up, &mut self.out).await.is_err() {
                        return "upstream write failed".into();
                    }
                    match reader.next().await {
                        Ok(f) => f,
                        Err(FrameError::Closed) => return "client closed the connection".into(),
                        Err(FrameError::Io(e)) => return format!("client i/o: {e}"),
                        Err(e) => return self.violation(format!("{e}")),
                    }
                }
                Err(e) => return self.violation(format!("{e}")),
            };
            if self.copy_in
                && !matches!(
                    frame.tag,
                    frontend::COPY_DATA
                        | frontend::COPY_DONE
                        | frontend::COPY_FAIL
                        | frontend::FLUSH
                        | frontend::SYNC
                        | frontend::TERMINATE
                )
            {
                if flush(&mut up, &mut self.out).await.is_err() {
                    return "upstream write failed".into();
                }
                if let Err(stop) = self.copy_settled(frame.tag).await {
                    return stop;
                }
            }
            // A statement may be held for approval: the client is watched while it waits.
            let watch = matches!(frame.tag, frontend::QUERY | frontend::EXECUTE)
                && self.live.current().plane.snapshot.config.asks_approval;
            let mut handled = self.handle_watching(frame, &mut reader, watch).await;
            if let Ok(Next::Again(frame)) = handled {
                if let Err(stop) = self.answers_settled(&mut up, &mut reader).await {
                    return stop;
                }
                handled = self.handle_watching(frame, &mut reader, watch).await;
            }
            match handled {
                Ok(Next::Continue) => {}
                Ok(Next::Flush) => {
                    if flush(&mut up, &mut self.out).await.is_err() {
                        return "upstream write failed".into();
                    }
                }
                Ok(Next::Terminate) => {
                    let _ = flush(&mut up, &mut self.out).await;
                    let _ = up.shutdown().await;
                    return "client terminated".into();
                }
                // Answered: it is not asked for twice.
                Ok(Next::Again(_)) => return self.violation("a message waited for answers twice".into()),
                Err(stop) => return stop,
            }
            if self.out.len() >= FLUSH_BYTES && flush(&mut up, &mut self.out).await.is_err() {
                return "upstream write failed".into();
            }
        }
    }

    /// Whether `statements` read a cursor (FETCH, MOVE) where a rowLimit applies while a Query
    /// or Sync sent before them is unanswered: what that did (a DECLARE that failed, a
    /// transaction ended, a function's cursor opened under a closed one's name) decides which
    /// cursor the name reads and whether its rows are counted, so they wait for the answers.
    /// Clients commonly send their next statement on CommandComplete, before ReadyForQuery.
    fn fetch_waits(&self, statements: &[Statement]) -> bool {
        statements.iter().any(|st| st.node == "FetchStmt")
            && !self.live.current().row_limit_rules.is_empty()
            && {
                let p = lock(&self.shared);
                p.answered_through < p.pushed_through
            }
    }

    /// [`Self::handle`], watching the client meanwhile when `watch`: a statement held for
    /// approval must not run for a client that is gone, so its leaving ends the wait (the
    /// request stays unspent; see [`approval::Abandon`]). What is past the wait (an approval
    /// being spent) goes on. The client's next messages are read ahead meanwhile (up to
    /// [`READ_AHEAD_BYTES`]).
    async fn handle_watching(
        &mut self,
        frame: Frame,
        reader: &mut FrameReader<ReadHalf<Stream>>,
        watch: bool,
    ) -> Result<Next, Stop> {
        if !watch {
            return self.handle(frame).await;
        }
        let abandon = self.live.cancel.abandon.clone();
        let handling = self.handle(frame);
        tokio::pin!(handling);
        let mut reading = true;
        loop {
            tokio::select! {
                biased;
                handled = &mut handling => return handled,
                read = reader.read_ahead(READ_AHEAD_BYTES), if reading => {
                    if read.is_err() {
                        // Gone (or its connection broken): the next read ends the session.
                        abandon.leave();
                        reading = false;
                    }
                }
            }
        }
    }

    /// Sends what is buffered and waits until the server has answered every Query and Sync sent
    /// (see [`ClientSide::fetch_waits`]). Meanwhile the client's next messages are read ahead
    /// (up to [`READ_AHEAD_BYTES`]), so a client that leaves ends the session now, not when a
    /// long statement ahead of the wait ends.
    async fn answers_settled(
        &mut self,
        up: &mut WriteHalf<Stream>,
        reader: &mut FrameReader<ReadHalf<Stream>>,
    ) -> Result<(), Stop> {
        if flush(up, &mut self.out).await.is_err() {
            return Err("upstream write failed".into());
        }
        let sent = lock(&self.shared).pushed_through;
        // Until the client's end is read: what it sent before leaving (a COMMIT, a Terminate)
        // is still handled, as PostgreSQL handles it.
        let mut reading = true;
        loop {
            let read = tokio::select! {
                answered = self.copy_progress.wait_for(|p| p.through >= sent) => {
                    return match answered {
                        Ok(_) => Ok(()),
                        Err(_) => Err("server side ended".into()),
                    };
                }
                read = reader.read_ahead(READ_AHEAD_BYTES), if reading => read,
            };
            match read {
                Ok(()) => {}
                Err(FrameError::Closed) if reader.buffered() > 0 => reading = false,
                Err(FrameError::Closed) => return Err("client closed the connection".into()),
                Err(e) => return Err(format!("client i/o: {e}")),
            }
        }
    }

    /// Before a message that is not COPY data, after a COPY FROM STDIN was forwarded: waits
    /// until the upstream has answered that COPY. Had it started copying, the message would
    /// end the copy with an error, and a server before PostgreSQL 14 then drops the message
    /// (a Query, say) without an answer: every later answer would be matched to the wrong
    /// statement. So the session ends then; when the COPY failed, or ended, the message goes on.
    async fn copy_settled(&mut self, tag: u8) -> Result<(), Stop> {
        // Before Sync the server may never answer (after an error it waits for Sync).
        if self.unsynced {
            return Err(self.violation(format!(
                "message type {:?} after an Execute of COPY FROM STDIN (send Sync, then the COPY data)",
                tag as char
            )));
        }
        let copy = self.copies;
        let copying = match self.copy_progress.wait_for(|p| p.answered >= copy).await {
            Ok(p) => p.copying,
            Err(_) => return Err("server side ended".into()),
        };
        if copying {
            return Err(self.violation(format!(
                "message type {:?} during COPY FROM STDIN (send CopyDone or CopyFail first)",
                tag as char
            )));
        }
        self.copy_in = false;
        Ok(())
    }

    /// Whether a Sync sent now reaches the server while it copies, which ignores it then. Only
    /// where that cannot depend on timing: before any COPY data (the server reads the Sync after
    /// starting the copy, and the copy ends only with data yet to come), or after the end of the
    /// only copy the message started (the server has left copy mode when it reads the Sync). In
    /// between, a bad row or CopyFail may end the copy before or after the server reads it.
    fn sync_in_copy(&mut self) -> Result<bool, Stop> {
        if !self.copy_in {
            Ok(false)
        } else if !self.copy_sent {
            Ok(true)
        } else if self.copy_ended && self.copy_batch == 1 {
            Ok(false)
        } else {
            Err(self.violation(
                "Sync during COPY FROM STDIN data (send it before the data, or after the CopyDone of a message with one COPY, or once the server has answered)".into(),
            ))
        }
    }

    /// When `st` is a COPY FROM STDIN about to be forwarded: numbers it, and expects its data.
    fn number_copy(&mut self, plan: &mut ResultPlan, st: &Statement) {
        if st.copy.is_some_and(|c| c.from_stdin()) {
            if !self.copy_in {
                self.copy_batch = 0;
            }
            self.copies += 1;
            self.copy_batch += 1;
            self.copy_in = true;
            self.copy_sent = false;
            plan.copy_from = self.copies;
        }
    }

    /// Ends the session with a protocol-violation error (nothing more is forwarded).
    fn violation(&mut self, what: String) -> Stop {
        tracing::info!(identity = %self.live.identity, what, "postgres protocol violation");
        let _ = self.queue.send(Pending::Fatal(Fatal(ErrorResponse::fatal(
            sqlstate::PROTOCOL_VIOLATION,
            format!("protocol violation: {what}"),
        ))));
        format!("protocol violation: {what}")
    }

    fn push(&mut self, p: Pending) -> Result<(), Stop> {
        // The server side counts what it has taken in against the caps; what waits in the
        // channel (while it is blocked writing to a client that does not read) counts here.
        if let Err(why) = self.queued.add(&p) {
            return Err(self.violation(why));
        }
        if let Pending::Query { through, .. } | Pending::Sync { through, .. } = &p {
            lock(&self.shared).pushed_through = *through;
        }
        self.queue.send(p).map_err(|_| "server side ended".to_string())
    }

    fn forward(&mut self, frame: &Frame) {
        frame.encode(&mut self.out);
    }

    async fn handle(&mut self, frame: Frame) -> Result<Next, Stop> {
        let malformed = |s: &mut Self, e: FrameError| s.violation(e.to_string());
        let described = self.described.take();
        if matches!(
            frame.tag,
            frontend::PARSE | frontend::BIND | frontend::DESCRIBE | frontend::EXECUTE | frontend::CLOSE
        ) {
            self.unsynced = true;
        }
        match frame.tag {
            frontend::QUERY if self.unsynced => {
                return Err(self.violation(
                    "a simple Query inside an extended-protocol pipeline (send Sync first)".into(),
                ));
            }
            frontend::QUERY => {
                let q = Query::parse(&frame.body).map_err(|e| malformed(self, e))?;
                // Classified here only where it may matter (large texts are not cached).
                if !self.live.current().row_limit_rules.is_empty()
                    && let Ok(c) = self.live.ctx.classifier.classify(&q.sql)
                    && self.fetch_waits(&c.statements)
                {
                    return Ok(Next::Again(frame));
                }
                // A Query is a segment of its own (see `Prepared::segment`).
                {
                    let mut p = lock(&self.shared);
                    p.segment += 1;
                    p.in_query = true;
                }
                self.query(&frame, &q.sql).await?;
                let mut p = lock(&self.shared);
                p.segment += 1;
                p.in_query = false;
            }
            frontend::PARSE => {
                let p = Parse::parse(&frame.body).map_err(|e| malformed(self, e))?;
                self.parse(&frame, p)?;
            }
            frontend::BIND => {
                let b = Bind::parse(&frame.body).map_err(|e| malformed(self, e))?;
                self.bind(&frame, b)?;
            }
            frontend::DESCRIBE => {
                let t = Target::parse(&frame.body, "Describe").map_err(|e| malformed(self, e))?;
                let statement = match &t {
                    Target::Statement(name) => match lock(&self.shared).statements.get(name) {
                        Some(Entry::Known { seq, .. }) => Some(*seq),
                        _ => None,
                    },
                    Target::Portal(_) => None,
                };
                self.described = match t {
                    Target::Portal(name) => Some(name),
                    Target::Statement(_) => None,
                };
                self.forward(&frame);
                self.push(Pending::Describe {
                    internal: false,
                    statement,
                })?;
            }
            frontend::EXECUTE => {
                let e = Execute::parse(&frame.body).map_err(|e| malformed(self, e))?;
                self.described = described;
                let portal = lock(&self.shared).portals.get(&e.portal).cloned();
                if portal.is_some_and(|p| self.fetch_waits(&p.classified.statements)) {
                    return Ok(Next::Again(frame));
                }
                self.execute(&frame, e).await?;
            }
            frontend::CLOSE => {
                let t = Target::parse(&frame.body, "Close").map_err(|e| malformed(self, e))?;
                let freed = {
                    let mut p = lock(&self.shared);
                    match t {
                        // One namespace with SQL PREPARE: the name is free on both sides after
                        // (unless the server skips the Close).
                        Target::Statement(n) => {
                            p.sql.remove(&n);
                            p.statements.remove(&n);
                            p.free(&n);
                            Some(n)
                        }
                        Target::Portal(n) => {
                            // A cursor is a portal: Close ends a DECLAREd one too.
                            self.live
                                .cursors
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .close(&n, false);
                            p.portals.remove(&n);
                            None
                        }
                    }
                };
                self.forward(&frame);
                self.push(Pending::Close { freed })?;
            }
            frontend::SYNC => {
                let in_copy = self.sync_in_copy()?;
                self.unsynced = false;
                lock(&self.shared).segment += 1;
                self.forward(&frame);
                let through = lock(&self.shared).segment;
                self.push(Pending::Sync {
                    in_copy,
                    copies: self.copies,
                    through,
                })?;
            }
            frontend::FLUSH => {
                self.forward(&frame);
                return Ok(Next::Flush);
            }
            frontend::TERMINATE => {
                self.forward(&frame);
                return Ok(Next::Terminate);
            }
            // Its refusal is a simple-protocol round trip, which a pipeline after an error
            // would skip up to Sync: the answers would then be matched to the wrong messages.
            frontend::FUNCTION_CALL if self.unsynced => {
                return Err(self.violation(
                    "a FunctionCall inside an extended-protocol pipeline (send Sync first)".into(),
                ));
            }
            frontend::FUNCTION_CALL => {
                let _ = self.live.record(
                    "pg.function_call",
                    json!({"decision": "deny", "reason": "the FunctionCall message is refused"}),
                );
                let error = ErrorResponse::new(
                    sqlstate::INSUFFICIENT_PRIVILEGE,
                    "the FunctionCall message (calling server functions by OID) is refused by the gateway",
                );
                self.refuse_simple(error)?;
            }
            frontend::COPY_DATA | frontend::COPY_DONE | frontend::COPY_FAIL if self.copy_in => {
                self.copy_sent = true;
                self.copy_ended = frame.tag != frontend::COPY_DATA;
                // Another COPY FROM STDIN of the same Query may follow this one: the data is
                // still expected until the server has answered the last.
                if frame.tag != frontend::COPY_DATA && self.copy_progress.borrow().answered >= self.copies {
                    self.copy_in = false;
                }
                self.forward(&frame);
            }
            frontend::COPY_DATA | frontend::COPY_DONE | frontend::COPY_FAIL => {
                return Err(self.violation("COPY data outside a COPY FROM STDIN the gateway allowed".into()));
            }
            other => {
                return Err(self.violation(format!("unexpected message type {:?}", other as char)));
            }
        }
        Ok(Next::Continue)
    }

    /// Refuses a simple-protocol message: the upstream gets a query that cannot parse. Its text
    /// is the same in every session: `pg_stat_activity` shows it to other sessions.
    fn refuse_simple(&mut self, error: ErrorResponse) -> Result<(), Stop> {
        Query {
            sql: MARKER_PREFIX.to_string(),
        }
        .encode(&mut self.out);
        let through = lock(&self.shared).segment;
        self.push(Pending::Query {
            results: Vec::new(),
            refused: Some(Box::new(Refusal {
                error,
                marker_code: sqlstate::SYNTAX_ERROR,
            })),
            copies: self.copies,
            through,
        })
    }

    /// Refuses an extended-protocol message: the upstream gets Execute of a portal that cannot
    /// exist, fails it, and skips to Sync as it would for the refused message.
    fn refuse_extended(&mut self, error: ErrorResponse) -> Result<(), Stop> {
        Execute {
            portal: self.live.marker.clone(),
            max_rows: 0,
        }
        .encode(&mut self.out);
        self.push(Pending::Execute {
            plan: Box::default(),
            refused: Some(Box::new(Refusal {
                error,
                marker_code: sqlstate::INVALID_CURSOR_NAME,
            })),
        })
    }

    fn refusal_error(v: &Verdict, index: usize, count: usize, st: &Statement) -> ErrorResponse {
        let mut e = ErrorResponse::new(sqlstate::INSUFFICIENT_PRIVILEGE, v.message.clone());
        if count > 1 {
            e = e.with(
                b'D',
                format!(
                    "statement {} of {count} ({}); no statement of this query was run",
                    index + 1,
                    kind_name(st.kind())
                ),
            );
        }
        if v.action == Action::RequireApproval {
            e = e.with(b'H', "this statement needs a human's approval");
        }
        e
    }

    fn statement_record<'a>(live: &Live, st: &'a Statement, v: &'a Verdict) -> StatementRecord<'a> {
        StatementRecord {
            kinds: &st.kinds,
            tables: &st.tables,
            functions: &st.functions,
            decision: v.label,
            rule: v.rule.as_deref(),
            reason: (!v.message.is_empty()).then(|| live.masked_sql(&v.message)),
        }
    }

    async fn query(&mut self, frame: &Frame, sql: &str) -> Result<(), Stop> {
        let live = self.live.clone();
        let classified = match live.ctx.classifier.classify(sql) {
            Ok(c) => c,
            Err(e) => {
                let _ = live.record(
                    "pg.query",
                    json!({"sql": live.masked_sql(sql), "decision": "deny", "reason": live.unparseable(sql, &e)}),
                );
                return self.refuse_simple(ErrorResponse::new(
                    sqlstate::SYNTAX_ERROR,
                    format!("the gateway refuses a statement it cannot parse: {e}"),
                ));
            }
        };
        let count = classified.statements.len();
        {
            // SQL-level PREPARE shares the protocol's namespace, and its cap.
            let prepared = lock(&self.shared);
            let prepares = || classified.statements.iter().filter(|st| st.prepare.is_some());
            let new_names = prepares()
                .filter_map(|st| st.prepare.as_ref())
                .filter(|(name, _)| {
                    !prepared.sql.contains_key(name) && !prepared.statements.contains_key(name)
                })
                .count();
            let text: usize = prepares().map(|st| st.text.len()).sum();
            if (new_names > 0
                && prepared.sql.len() + prepared.statements.len() + new_names > MAX_NAMED_STATEMENTS)
                || (text > 0 && prepared.held_text_bytes() + text > MAX_NAMED_STATEMENT_BYTES)
            {
                drop(prepared);
                return self.refuse_simple(ErrorResponse::new(
                    sqlstate::PROGRAM_LIMIT_EXCEEDED,
                    format!(
                        "the gateway keeps at most {MAX_NAMED_STATEMENTS} named prepared statements, of {} MiB of text in all, per session; DEALLOCATE some first",
                        MAX_NAMED_STATEMENT_BYTES >> 20
                    ),
                ));
            }
        }
        let mut verdicts: Vec<Verdict> =
            in_order(&lock(&self.shared), &classified.statements, |st, prepared| {
                live.decide(st, prepared)
            });
        // Statements that need approval go ahead only once approved (one request covers the
        // exact query text); a denied statement refuses the query whatever else is approved.
        let mut approval_error = None;
        if !verdicts.iter().any(|v| v.action == Action::Deny)
            && let Some(v) = verdicts.iter().find(|v| v.action == Action::RequireApproval)
        {
            // One request is asked, under the first such statement's rule: statements held by
            // other rules (other approvers, other counts) would ride on its grant.
            let other_rule = verdicts
                .iter()
                .find(|w| w.action == Action::RequireApproval && w.approval != v.approval);
            // An EXECUTE names a prepared statement: what it runs is part of the operation, bound
            // and shown (a name prepared anew before the grant is spent is another operation).
            let executed: Vec<(String, String)> =
                in_order(&lock(&self.shared), &classified.statements, |st, prepared| {
                    let name = st.execute.as_ref()?;
                    let inner = prepared.sql.get(name)?.as_ref()?;
                    Some((name.clone(), inner.text.clone()))
                })
                .into_iter()
                .flatten()
                .collect();
            let mut parts: Vec<&[u8]> = vec![b"simple", sql.as_bytes()];
            for (name, text) in &executed {
                parts.extend([name.as_bytes(), text.as_bytes()]);
            }
            let fingerprint = approval::fingerprint(&parts);
            let detail = (!executed.is_empty()).then(|| {
                let shown: Vec<String> = executed
                    .iter()
                    .map(|(name, text)| format!("prepared {name}: {}", live.masked_sql(text)))
                    .collect();
                approval::detail_hiding(&shown.join("\n"), Some(&live.token))
            });
            let answer = match other_rule {
                Some(w) => Err(ErrorResponse::new(
                    sqlstate::INSUFFICIENT_PRIVILEGE,
                    format!(
                        "statements of this query need approval under different rules ({} and {}); send them as separate queries",
                        rule_name(v),
                        rule_name(w)
                    ),
                )),
                None => {
                    let unshown = executed.iter().find_map(|(_, text)| sql_unshown(text));
                    self.approve(v, sql, fingerprint, detail, approval::sql_reason(sql), unshown)
                        .await
                }
            };
            match answer {
                Ok(()) => verdicts
                    .iter_mut()
                    .filter(|v| v.action == Action::RequireApproval)
                    .for_each(Verdict::approved),
                Err(e) => approval_error = Some(e),
            }
        }
        let refusal = approval_error.or_else(|| {
            let mut refused = classified.statements.iter().zip(&verdicts).enumerate();
            // A denial explains more than a pending approval.
            let first = refused
                .clone()
                .find(|(_, (_, v))| v.action == Action::Deny)
                .or_else(|| refused.find(|(_, (_, v))| v.action != Action::Allow));
            first.map(|(i, (st, v))| Self::refusal_error(v, i, count, st))
        });
        let masked = live.masked_sql(sql);
        let recorded = live.record(
            "pg.query",
            QueryEvent {
                sql: masked.clone(),
                params: None,
                decision: if refusal.is_some() { "deny" } else { "allow" },
                statements: classified
                    .statements
                    .iter()
                    .zip(&verdicts)
                    .map(|(st, v)| Self::statement_record(&live, st, v))
                    .collect(),
            },
        );
        if let Some(error) = refusal {
            return self.refuse_simple(error);
        }
        if recorded.is_err() {
            return self.refuse_simple(ErrorResponse::new(
                sqlstate::INTERNAL_ERROR,
                "the statement was not run: session recording is required and failed",
            ));
        }
        let mut results: Vec<ResultPlan> = classified
            .statements
            .iter()
            .zip(&verdicts)
            .map(|(st, v)| {
                // One statement: its result is recorded with the query's text, masked once.
                let sql = match count {
                    1 => masked.clone(),
                    _ => live.masked_sql(&st.text),
                };
                live.result_plan(sql, st, v)
            })
            .collect();
        {
            let mut prepared = lock(&self.shared);
            for (plan, st) in results.iter_mut().zip(&classified.statements) {
                plan.freed = apply_effects(&mut prepared, st);
            }
        }
        // Numbered per statement: a Query may hold several, one copy after another.
        for (plan, st) in results.iter_mut().zip(&classified.statements) {
            self.number_copy(plan, st);
        }
        self.forward(frame);
        let through = lock(&self.shared).segment;
        self.push(Pending::Query {
            results,
            refused: None,
            copies: self.copies,
            through,
        })
    }

    /// Asks for approval of a statement a RequireApproval rule matched; `Err` is the error the
    /// client gets instead (pending in Defer mode, denied or timed out in Hold mode).
    async fn approve(
        &self,
        v: &Verdict,
        sql: &str,
        fingerprint: String,
        detail: Option<String>,
        reason: Option<String>,
        unshown: Option<String>,
    ) -> Result<(), ErrorResponse> {
        let live = &self.live;
        let current = live.current();
        let cfg = &current.plane.snapshot.config;
        let found = v.approval.as_ref().and_then(|(p, r)| {
            let policy = cfg.policies.iter().find(|x| &x.name == p)?;
            Some((policy, policy.rules.iter().find(|x| &x.name == r)?))
        });
        let Some((policy, rule)) = found else {
            return Err(ErrorResponse::new(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                v.message.clone(),
            ));
        };
        let still_current = || {
            live.ctx.gateway.plane().is_some_and(|p| {
                approval::decides_alike(
                    cfg,
                    &p.snapshot.config,
                    &live.identity,
                    &live.groups,
                    &live.connection,
                )
            })
        };
        let question = approval::Question {
            cfg,
            still_current: approval::StillCurrent(&still_current),
            policy,
            rule,
            identity: &live.identity,
            requester: &live.subject,
            connection: &live.connection,
            kind: OperationKind::Sql,
            // Whole: a statement longer than an approver is shown is not asked (a second
            // statement after a long comment would hide past a cut).
            summary: approval::hide_spellings(live.masked_sql(sql), live.token_finder.as_deref()),
            fingerprint,
            detail: detail.map(|d| approval::hide_spellings(d, live.token_finder.as_deref())),
            reason: reason
                .map(|r| approval::hide_spellings(live.masked_sql(&r), live.token_finder.as_deref())),
            unshown: sql_unshown(sql).or(unshown),
            // A cancel, or the client leaving, ends a wait for approval as it ends a statement:
            // the request stays unspent.
            abandon: Some(&live.cancel.abandon),
        };
        let outcome = approval::ask(
            live.ctx.gateway.approvals.as_ref(),
            &live.ctx.gateway.metrics,
            question,
            unix_now(),
        )
        .await;
        let decisions = approval::decisions(live.ctx.gateway.approvals.as_ref(), outcome.request()).await;
        let _ = live.record(
            "pg.approval",
            json!({
                "outcome": outcome.label(),
                "approval_request": outcome.request(),
                "rule": v.rule,
                "decisions": decisions,
            }),
        );
        let rule_ref = v.rule.clone().unwrap_or_default();
        match outcome {
            approval::Outcome::Granted { .. } => Ok(()),
            approval::Outcome::Pending { request, .. } => Err(ErrorResponse::new(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                format!("{}; ApprovalRequest {request} is pending", v.message),
            )
            .with(b'D', format!("approval request: {request}; rule: {rule_ref}"))
            .with(
                b'H',
                format!("retry the identical statement once an approver has run: agentgate approvals approve {request}"),
            )),
            approval::Outcome::Denied { request } => Err(ErrorResponse::new(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                format!("ApprovalRequest {request} was denied ({rule_ref})"),
            )),
            approval::Outcome::Expired { request } => Err(ErrorResponse::new(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                format!("ApprovalRequest {request} was not decided in time ({rule_ref})"),
            )),
            approval::Outcome::Abandoned { request } => Err(ErrorResponse::new(
                sqlstate::QUERY_CANCELED,
                format!("canceling statement due to user request: it was waiting for ApprovalRequest {request} and was not run; the request stays unspent"),
            )),
            approval::Outcome::Unavailable(why) => Err(ErrorResponse::new(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                v.message.clone(),
            )
            .with(b'H', why)),
        }
    }

    fn parse(&mut self, frame: &Frame, p: Parse) -> Result<(), Stop> {
        let classified = match self.live.ctx.classifier.classify(&p.sql) {
            Ok(c) if c.statements.len() > 1 => {
                return self.refuse_extended(ErrorResponse::new(
                    sqlstate::SYNTAX_ERROR,
                    "cannot insert multiple commands into a prepared statement",
                ));
            }
            Ok(c) => c,
            Err(e) => {
                let _ = self.live.record(
                    "pg.parse",
                    json!({"sql": self.live.masked_sql(&p.sql), "decision": "deny", "reason": self.live.unparseable(&p.sql, &e)}),
                );
                return self.refuse_extended(ErrorResponse::new(
                    sqlstate::SYNTAX_ERROR,
                    format!("the gateway refuses a statement it cannot parse: {e}"),
                ));
            }
        };
        if !p.name.is_empty() {
            let prepared = lock(&self.shared);
            let text: usize = classified.statements.iter().map(|s| s.text.len()).sum();
            let too_many = !prepared.statements.contains_key(&p.name)
                && !prepared.sql.contains_key(&p.name)
                && prepared.statements.len() + prepared.sql.len() >= MAX_NAMED_STATEMENTS;
            if too_many || prepared.held_text_bytes() + text > MAX_NAMED_STATEMENT_BYTES {
                drop(prepared);
                return self.refuse_extended(ErrorResponse::new(
                    sqlstate::PROGRAM_LIMIT_EXCEEDED,
                    format!(
                        "the gateway keeps at most {MAX_NAMED_STATEMENTS} named prepared statements, of {} MiB of text in all, per session; close some first",
                        MAX_NAMED_STATEMENT_BYTES >> 20
                    ),
                ));
            }
        }
        let seq = {
            let mut prepared = lock(&self.shared);
            prepared.seq += 1;
            let seq = prepared.seq;
            let known = Entry::Known {
                classified,
                seq,
                confirmed: false,
                segment: prepared.segment,
                param_types: p.param_types.clone().into(),
            };
            if p.name.is_empty() {
                prepared.statements.insert(String::new(), known);
            } else {
                match prepared.statements.get(&p.name) {
                    // A SQL PREPARE used the name (one namespace): the server holds that statement
                    // if the PREPARE succeeded, else this one. Neither Bind nor EXECUTE knows which.
                    _ if prepared.sql.contains_key(&p.name) => {
                        prepared.sql.insert(p.name.clone(), None);
                        prepared.statements.insert(p.name.clone(), Entry::Ambiguous);
                    }
                    _ if prepared.freed_earlier(&p.name) => {
                        prepared.statements.insert(p.name.clone(), Entry::Ambiguous);
                    }
                    // The upstream refuses a duplicate name and keeps the statement it has.
                    Some(Entry::Known { confirmed: true, .. }) | Some(Entry::Ambiguous) => {}
                    Some(Entry::Known { confirmed: false, .. }) => {
                        prepared.statements.insert(p.name.clone(), Entry::Ambiguous);
                    }
                    None => {
                        prepared.statements.insert(p.name.clone(), known);
                    }
                }
            }
            seq
        };
        self.forward(frame);
        self.push(Pending::Parse { seq })
    }

    fn bind(&mut self, frame: &Frame, b: Bind) -> Result<(), Stop> {
        if b.portal.starts_with(MARKER_PREFIX) {
            return Err(self.violation(format!(
                "portal names starting with {MARKER_PREFIX:?} are the gateway's own"
            )));
        }
        let entry = {
            let prepared = lock(&self.shared);
            match prepared.statements.get(&b.statement) {
                // Freed before the last boundary and not yet answered: what a Parse since then
                // registered runs only if the server ran the Close or DEALLOCATE.
                _ if prepared.freed_earlier(&b.statement) => Some(Entry::Ambiguous),
                // The unnamed statement parsed before the last boundary, unanswered: if the
                // server skipped that Parse (after an error), it holds the one before.
                Some(Entry::Known {
                    confirmed: false,
                    segment,
                    ..
                }) if b.statement.is_empty() && *segment != prepared.segment => Some(Entry::Ambiguous),
                e => e.cloned(),
            }
        };
        let (classified, types) = match entry {
            Some(Entry::Known {
                classified,
                param_types,
                ..
            }) => (classified, param_types),
            Some(Entry::Ambiguous) => {
                return self.refuse_extended(ErrorResponse::new(
                    sqlstate::INVALID_SQL_STATEMENT_NAME,
                    format!(
                        "the gateway cannot tell which statement the server holds as {:?} (it was prepared twice without an answer in between, or freed by a message the server did not run or has not answered yet); wait for the server's answers, or close it and prepare it again",
                        b.statement
                    ),
                ));
            }
            None => {
                return self.refuse_extended(ErrorResponse::new(
                    sqlstate::INVALID_SQL_STATEMENT_NAME,
                    format!("prepared statement {:?} does not exist", b.statement),
                ));
            }
        };
        // Planning runs code too (immutable functions on constants), which may close and open
        // cursors by name: where a rowLimit applies, the names known are forgotten.
        if let Some(st) = classified.statements.first()
            && !self.live.current().row_limit_rules.is_empty()
            && self.live.may_run_unread_code(st)
        {
            self.live
                .cursors
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .forget_all(false);
        }
        // Bind plans the statement, and planning runs the immutable functions it calls on
        // constants (whose errors may quote what they read): a statement that calls functions
        // and that policy denies is refused here, before the server plans it. (RequireApproval
        // is asked at Execute, where every statement is decided.)
        if let Some(st) = classified.statements.first()
            && (!st.functions.is_empty() || self.live.calls_hidden_code(st))
            && st.cursor.is_none()
        {
            let live = self.live.clone();
            let v = live.decide(st, &lock(&self.shared));
            if v.action == Action::Deny {
                lock(&self.shared).portals.remove(&b.portal);
                let _ = live.record(
                    "pg.bind",
                    QueryEvent {
                        sql: live.masked_sql(&st.text),
                        params: None,
                        decision: v.label,
                        statements: vec![Self::statement_record(&live, st, &v)],
                    },
                );
                return self.refuse_extended(Self::refusal_error(&v, 0, 1, st));
            }
        }
        let params = b
            .params
            .iter()
            .enumerate()
            .map(|(i, p)| match p {
                None => Value::Null,
                Some(v) if b.param_format(i) == 0 => self.live.recorded_param(&String::from_utf8_lossy(v)),
                // Read as text by the statement's parameter types (a client that sends binary
                // parameters learned them from a Describe), then masked as text is.
                Some(v) => match types
                    .get(i)
                    .filter(|_| v.len() <= MAX_RECORDED_VALUE)
                    .and_then(|t| binary::to_text(*t, v))
                {
                    Some(text) => self.live.recorded_param(&text),
                    // Raw bytes of a type the gateway does not read still meet the detectors.
                    None if self
                        .live
                        .plan
                        .mask_escaped_text(&String::from_utf8_lossy(v), false)
                        .1
                        .is_empty() =>
                    {
                        Value::String(format!("<binary, {} bytes>", v.len()))
                    }
                    None => Value::String(format!("<binary, {} bytes, withheld by the detectors>", v.len())),
                },
            })
            .collect();
        let bound: Arc<[(i16, Option<Bytes>)]> = (0..b.params.len())
            .map(|i| (b.param_format(i), b.params[i].clone()))
            .collect();
        let mut prepared = lock(&self.shared);
        let size = |values: &[(i16, Option<Bytes>)]| {
            values
                .iter()
                .map(|(_, v)| v.as_ref().map_or(0, Bytes::len))
                .sum::<usize>()
        };
        let others = prepared.portals.iter().filter(|(name, _)| **name != b.portal);
        let (count, held) = others.fold((0, 0), |(n, bytes), (_, p)| (n + 1, bytes + size(&p.bound)));
        if count >= MAX_PORTALS || held + size(&bound) > MAX_BOUND_BYTES {
            drop(prepared);
            return self.refuse_extended(ErrorResponse::new(
                sqlstate::PROGRAM_LIMIT_EXCEEDED,
                format!(
                    "the gateway keeps at most {MAX_PORTALS} portals and {MAX_BOUND_BYTES} bytes of their parameters per session; close portals or end the transaction first"
                ),
            ));
        }
        if !b.portal.is_empty() {
            prepared.bind_portal(&b.portal);
        }
        let segment = prepared.segment;
        prepared.binds += 1;
        let id = prepared.binds;
        prepared.portals.insert(
            b.portal.clone(),
            Portal {
                classified,
                params,
                bound,
                types,
                segment,
                id,
                confirmed: false,
            },
        );
        drop(prepared);
        self.described = None;
        self.forward(frame);
        self.push(Pending::Bind { portal: b.portal, id })
    }

    async fn execute(&mut self, frame: &Frame, e: Execute) -> Result<(), Stop> {
        let live = self.live.clone();
        let portal = lock(&self.shared).portals.get(&e.portal).cloned();
        let Some(portal) = portal else {
            return self.refuse_extended(ErrorResponse::new(
                sqlstate::INVALID_CURSOR_NAME,
                format!("portal {:?} does not exist", e.portal),
            ));
        };
        if !portal.confirmed && portal.segment != lock(&self.shared).segment {
            return self.refuse_extended(ErrorResponse::new(
                sqlstate::INVALID_CURSOR_NAME,
                format!(
                    "portal {:?} was bound before the last Sync and the server has not answered that Bind yet: if it refused or skipped it, it may hold another portal of the name; wait for the server's answers before executing it",
                    e.portal
                ),
            ));
        }
        let Some(st) = portal.classified.statements.first() else {
            // An empty query: nothing to decide; the upstream answers EmptyQueryResponse.
            self.forward(frame);
            return self.push(Pending::Execute {
                plan: Box::default(),
                refused: None,
            });
        };
        let mut v = {
            let prepared = lock(&self.shared);
            live.decide(st, &prepared)
        };
        let mut approval_error = None;
        // What would be refused anyway is refused before an approver is asked: a Once grant
        // spent on it would show as used with nothing run.
        if v.action == Action::RequireApproval && v.row_limit.is_some() && e.max_rows > 0 {
            approval_error = Some(fetched_in_parts());
        } else if v.action == Action::RequireApproval {
            // The exact statement with its bound values is what an approval covers.
            let types: Vec<u8> = portal.types.iter().flat_map(|t| t.to_be_bytes()).collect();
            let mut parts: Vec<&[u8]> = vec![b"extended", st.text.as_bytes(), &types];
            let formats: Vec<[u8; 2]> = portal.bound.iter().map(|(f, _)| f.to_be_bytes()).collect();
            for ((_, value), format) in portal.bound.iter().zip(&formats) {
                // NULL and an empty value differ by the part that says which.
                parts.push(format);
                parts.push(if value.is_some() { b"v" } else { b"n" });
                parts.push(value.as_deref().unwrap_or_default());
            }
            // A SQL-level EXECUTE runs what its name was prepared as in this session: that is
            // part of the operation, bound and shown, as on the simple path (the same name
            // prepared otherwise in another session is another operation).
            let executed: Option<(String, String)> = st.execute.as_ref().and_then(|name| {
                let prepared = lock(&self.shared);
                let inner = prepared.sql.get(name)?.as_ref()?;
                Some((name.clone(), inner.text.clone()))
            });
            if let Some((name, text)) = &executed {
                parts.extend([b"prepared".as_slice(), name.as_bytes(), text.as_bytes()]);
            }
            let fingerprint = approval::fingerprint(&parts);
            // The approver reads the values too, as recorded (masked, long text cut).
            let mut shown = Vec::new();
            if let Some((name, text)) = &executed {
                shown.push(format!("prepared {name}: {}", live.masked_sql(text)));
            }
            if !portal.params.is_empty() {
                let params = serde_json::to_string(&portal.params).unwrap_or_default();
                shown.push(format!("params: {params}"));
            }
            let detail = (!shown.is_empty())
                .then(|| approval::detail_hiding(&shown.join("\n"), Some(&self.live.token)));
            let unshown = params_unshown(&portal.params)
                .or_else(|| executed.as_ref().and_then(|(_, text)| sql_unshown(text)));
            let answer = self
                .approve(
                    &v,
                    &st.text,
                    fingerprint,
                    detail,
                    approval::sql_reason(&st.text),
                    unshown,
                )
                .await;
            match answer {
                Ok(()) => v.approved(),
                Err(e) => approval_error = Some(e),
            }
        }
        let masked = live.masked_sql(&st.text);
        let recorded = live.record(
            "pg.execute",
            QueryEvent {
                sql: masked.clone(),
                params: Some(&portal.params),
                decision: v.label,
                statements: vec![Self::statement_record(&live, st, &v)],
            },
        );
        if let Some(error) = approval_error {
            return self.refuse_extended(error);
        }
        if v.action != Action::Allow {
            return self.refuse_extended(Self::refusal_error(&v, 0, 1, st));
        }
        if recorded.is_err() {
            return self.refuse_extended(ErrorResponse::new(
                sqlstate::INTERNAL_ERROR,
                "the statement was not run: session recording is required and failed",
            ));
        }
        if v.row_limit.is_some() && e.max_rows > 0 {
            return self.refuse_extended(fetched_in_parts());
        }
        let freed = apply_effects(&mut lock(&self.shared), st);
        let mut plan = live.result_plan(masked, st, &v);
        plan.freed = freed;
        self.number_copy(&mut plan, st);
        // Learn the portal's columns (and formats) for masking, unless the client just asked.
        if self.described.take().as_ref() != Some(&e.portal) {
            Target::Portal(e.portal.clone()).encode(frontend::DESCRIBE, &mut self.out);
            self.push(Pending::Describe {
                internal: true,
                statement: None,
            })?;
        }
        self.forward(frame);
        self.push(Pending::Execute {
            plan: Box::new(plan),
            refused: None,
        })
    }
}

/// `rule "R" of AccessPolicy "P"`, for messages.
fn rule_name(v: &Verdict) -> String {
    match &v.approval {
        Some((policy, rule)) => format!("rule {rule:?} of AccessPolicy {policy:?}"),
        None => "a rule".into(),
    }
}

/// `sql` with every literal replaced by `$n` when it may carry a password (`ALTER ROLE ...
/// PASSWORD '...'`, psql's `\password`, user mappings, connection strings): for recordings and
/// approval summaries, which approvers and auditors read. It then says so in front, so that an
/// approver never takes `SET role = $1` for the whole of what they approve. Other text is
/// returned as it is.
fn without_passwords(sql: &str) -> std::borrow::Cow<'_, str> {
    if !mentions_password(sql) {
        return std::borrow::Cow::Borrowed(sql);
    }
    const WITHHELD: &str = "[statement withheld: it may carry a password]";
    match pg_query::normalize(sql) {
        // Some statements (`ALTER SERVER ... OPTIONS (password '...')`) keep their literals:
        // libpg_query's normalizer walks only some node types, and passes others over whole.
        Ok(normalized) if keeps_a_literal(&normalized) => std::borrow::Cow::Borrowed(WITHHELD),
        Ok(normalized) => std::borrow::Cow::Owned(format!(
            "[values withheld: the statement may carry a password] {normalized}"
        )),
        Err(_) => std::borrow::Cow::Borrowed(WITHHELD),
    }
}

/// Whether normalized SQL still holds a string literal: a quote, or a dollar quote (`$$`,
/// `$tag$`; `$1` is a parameter).
fn keeps_a_literal(sql: &str) -> bool {
    let b = sql.as_bytes();
    b.contains(&b'\'')
        || memchr::memchr_iter(b'$', b).any(|i| {
            b.get(i + 1)
                .is_some_and(|c| *c == b'$' || c.is_ascii_alphabetic() || *c == b'_')
        })
}

/// Whether `sql` may carry a password: the word outside comments, as a keyword, a name or in a
/// literal (a connection string). A comment carries nothing the statement does, and an agent's
/// `-- password reset` must not withhold the values an approver needs. Text that does not scan
/// (an unterminated literal) counts whole.
fn mentions_password(sql: &str) -> bool {
    fn has_word(text: &str) -> bool {
        let b = text.as_bytes();
        memchr::memchr2_iter(b'p', b'P', b).any(|i| {
            b.get(i..i + 8)
                .is_some_and(|w| w.eq_ignore_ascii_case(b"password"))
        })
    }
    if !has_word(sql) {
        return false;
    }
    use pg_query::protobuf::Token;
    match pg_query::scan(sql) {
        Ok(scanned) => scanned.tokens.iter().any(|t| {
            !matches!(t.token(), Token::SqlComment | Token::CComment)
                && usize::try_from(t.start)
                    .ok()
                    .zip(usize::try_from(t.end).ok())
                    .and_then(|(start, end)| sql.get(start..end))
                    .is_none_or(has_word)
        }),
        Err(_) => true,
    }
}

/// Why the session ends when an upstream answer is not the one the next pending message expects.
fn out_of_step(answer: &str, front: Option<&Pending>) -> String {
    let expected = match front {
        None => "nothing",
        Some(Pending::Query { .. }) => "a Query",
        Some(Pending::Parse { .. }) => "a Parse",
        Some(Pending::Bind { .. }) => "a Bind",
        Some(Pending::Describe { .. }) => "a Describe",
        Some(Pending::Execute { .. }) => "an Execute",
        Some(Pending::Close { .. }) => "a Close",
        Some(Pending::Sync { .. }) => "a Sync",
        Some(Pending::Fatal(_)) => "a stop",
    };
    format!("the upstream answered {answer} where the gateway expected the answer to {expected}")
}

/// What the relay does after a client message.
enum Next {
    Continue,
    Flush,
    Terminate,
    /// Send what is buffered, wait until the server has answered every Query and Sync sent,
    /// then handle the message again (see [`ClientSide::fetch_waits`]).
    Again(Frame),
}

/// `f` of each statement of one query against the prepared statements the statements before it
/// leave: they run in order, so an EXECUTE after a PREPARE or DEALLOCATE of its name runs what
/// those leave, not what the name meant before. A copy is replayed only where that can matter.
fn in_order<T>(
    prepared: &Prepared,
    statements: &[Statement],
    mut f: impl FnMut(&Statement, &Prepared) -> T,
) -> Vec<T> {
    let renames = statements.len() > 1
        && statements
            .iter()
            .any(|st| st.prepare.is_some() || st.deallocate.is_some());
    if !renames {
        return statements.iter().map(|st| f(st, prepared)).collect();
    }
    let mut scratch = prepared.clone();
    statements
        .iter()
        .map(|st| {
            let v = f(st, &scratch);
            apply_effects(&mut scratch, st);
            v
        })
        .collect()
}

/// SQL-level PREPARE and DEALLOCATE change what EXECUTE (and Bind) run; DECLARE and CLOSE
/// change what a portal name means. The server keeps SQL and protocol-level prepared
/// statements under one namespace, so a name either side has used is unknown to the other:
/// refused rather than decided on a text the server may not hold. Returns the names freed, for
/// [`Prepared::unsure`] should the statement not run.
fn apply_effects(prepared: &mut Prepared, st: &Statement) -> Vec<String> {
    if let Some((name, inner)) = &st.prepare {
        let entry = if prepared.sql.contains_key(name)
            || prepared.statements.contains_key(name)
            || prepared.freed_earlier(name)
        {
            // A second PREPARE of a name fails upstream only if the first succeeded: unknown.
            prepared.statements.insert(name.clone(), Entry::Ambiguous);
            None
        } else {
            Some(Arc::new((**inner).clone()))
        };
        prepared.sql.insert(name.clone(), entry);
    }
    let freed = match &st.deallocate {
        Some(Some(name)) => {
            prepared.sql.remove(name);
            prepared.statements.remove(name);
            vec![name.clone()]
        }
        // DEALLOCATE ALL and DISCARD ALL drop every named statement (not the unnamed one).
        Some(None) => {
            let mut names: Vec<String> = prepared.sql.drain().map(|(name, _)| name).collect();
            names.extend(prepared.statements.keys().filter(|n| !n.is_empty()).cloned());
            prepared.statements.retain(|name, _| name.is_empty());
            names.sort_unstable();
            names.dedup();
            names
        }
        None => Vec::new(),
    };
    for name in &freed {
        prepared.free(name);
    }
    if matches!(st.node, "DeclareCursorStmt" | "ClosePortalStmt") || st.deallocate == Some(None) {
        // A cursor is a portal: its name now means what DECLARE says (or nothing). Cursor
        // names are never empty, so the unnamed portal stays.
        prepared.portals.retain(|name, _| name.is_empty());
    }
    if st.drops_portals {
        // Upstream, the transaction's portals are gone while it stays 'T' to ReadyForQuery.
        prepared.portals.clear();
    }
    freed
}

/// Reads upstream messages and writes them (masked, or substituted) to the client.
struct ServerSide {
    live: Arc<Live>,
    queue: mpsc::UnboundedReceiver<Pending>,
    queued: Arc<Queued>,
    front: Awaiting,
    shared: Shared,
    /// The result being streamed: its masker, limits and captured rows.
    result: Option<Streaming>,
    /// Index of the current statement within the front Query.
    query_index: usize,
    /// Columns of the next Execute, learned from a Describe.
    next_rows: Option<Option<RowDescription>>,
    out: BytesMut,
    report: MaskReport,
    /// How far the upstream answered the client side's COPY FROM STDIN statements, for the
    /// client side; `copying`: it sent CopyInResponse, and ignores Sync until the copy ends.
    copy_progress: watch::Sender<CopyProgress>,
    /// The latest Sync sent during a simple Query's COPY, which the server ignored: answered
    /// with that Query's ReadyForQuery, whose statements after the COPY are still to run.
    answered_with_query: u64,
}

/// How far the upstream answered the client side's COPY FROM STDIN statements (numbered from 1).
#[derive(Clone, Copy, Debug, Default)]
struct CopyProgress {
    /// The last one it answered, by starting the copy or by ReadyForQuery after it.
    answered: u64,
    /// The segment of the last Query or Sync the server answered (see
    /// [`Prepared::answered_through`]).
    through: u64,
    /// It is copying now (between CopyInResponse and the copy's end).
    copying: bool,
}

struct Streaming {
    plan: ResultPlan,
    masker: Option<RowMasker>,
    rows: u64,
    captured: Vec<Value>,
    /// About how much `captured` holds: capture stops at an event's size.
    captured_bytes: usize,
    truncated: bool,
}

impl ServerSide {
    async fn run(
        mut self,
        mut reader: FrameReader<ReadHalf<Stream>>,
        mut client: WriteHalf<Stream>,
    ) -> String {
        loop {
            let frame = match reader.try_frame() {
                Ok(Some(f)) => f,
                Ok(None) => {
                    if flush(&mut client, &mut self.out).await.is_err() {
                        return "client write failed".into();
                    }
                    tokio::select! {
                        f = reader.next() => match f {
                            Ok(f) => f,
                            Err(FrameError::Closed) => {
                                self.fatal(&mut client, ErrorResponse::fatal(sqlstate::CONNECTION_FAILURE, "the upstream database closed the connection")).await;
                                return "upstream closed".into();
                            }
                            Err(e) => {
                                self.fatal(&mut client, ErrorResponse::fatal(sqlstate::CONNECTION_FAILURE, format!("upstream: {e}"))).await;
                                return format!("upstream: {e}");
                            }
                        },
                        item = self.queue.recv() => match item.inspect(|p| self.queued.take(p)) {
                            Some(Pending::Fatal(Fatal(e))) => {
                                self.fatal(&mut client, e).await;
                                return "client protocol violation".into();
                            }
                            Some(p) => {
                                if let Err(why) = self.front.push_back(p) {
                                    self.fatal(&mut client, ErrorResponse::fatal(sqlstate::PROTOCOL_VIOLATION, why.clone())).await;
                                    return why;
                                }
                                continue;
                            }
                            None => return "client side ended".into(),
                        },
                    }
                }
                Err(e) => {
                    self.fatal(
                        &mut client,
                        ErrorResponse::fatal(sqlstate::CONNECTION_FAILURE, format!("upstream: {e}")),
                    )
                    .await;
                    return format!("upstream: {e}");
                }
            };
            while let Ok(p) = self.queue.try_recv() {
                self.queued.take(&p);
                if let Pending::Fatal(Fatal(e)) = p {
                    self.fatal(&mut client, e).await;
                    return "client protocol violation".into();
                }
                if let Err(why) = self.front.push_back(p) {
                    self.fatal(
                        &mut client,
                        ErrorResponse::fatal(sqlstate::PROTOCOL_VIOLATION, why.clone()),
                    )
                    .await;
                    return why;
                }
            }
            if let Err(why) = self.handle(frame) {
                self.fatal(
                    &mut client,
                    ErrorResponse::fatal(sqlstate::PROTOCOL_VIOLATION, why.clone()),
                )
                .await;
                return why;
            }
            if self.out.len() >= FLUSH_BYTES && flush(&mut client, &mut self.out).await.is_err() {
                return "client write failed".into();
            }
        }
    }

    async fn fatal(&mut self, client: &mut WriteHalf<Stream>, e: ErrorResponse) {
        e.encode(&mut self.out);
        let _ = flush(client, &mut self.out).await;
        let _ = client.shutdown().await;
    }

    fn handle(&mut self, frame: Frame) -> Result<(), String> {
        let bad = |e: FrameError| format!("upstream sent a malformed message: {e}");
        match frame.tag {
            backend::ERROR_RESPONSE => self.on_error(frame)?,
            backend::READY_FOR_QUERY => {
                let status = TransactionStatus::parse(&frame.body).map_err(bad)?;
                // Messages still pending here were skipped: after an error the server ignores
                // everything up to Sync, including what the client sent once it had read the
                // error. A skipped Parse registered nothing.
                let (mut void, mut unsure, mut unbound) = (Vec::new(), Vec::new(), Vec::new());
                // Unanswered by any Query or Sync (it should not be): every portal is forgotten.
                let mut ended = u64::MAX;
                while let Some(p) = self.front.pop_front() {
                    match p {
                        Pending::Query { copies, through, .. } | Pending::Sync { copies, through, .. } => {
                            ended = through;
                            self.copy_progress.send_if_modified(|p| {
                                let later = copies > p.answered;
                                p.answered = p.answered.max(copies);
                                later
                            });
                            break;
                        }
                        Pending::Parse { seq } => void.push(seq),
                        Pending::Bind { portal, id } => unbound.push((portal, id)),
                        Pending::Close { freed } => unsure.extend(freed),
                        Pending::Execute { plan, .. } => unsure.extend(plan.freed),
                        _ => {}
                    }
                }
                let mut prepared = lock(&self.shared);
                if !void.is_empty() {
                    prepared.void(&void);
                }
                for (portal, id) in unbound {
                    prepared.bound_answered(&portal, id, false);
                }
                prepared.unsure(unsure)?;
                // Portals live until their transaction ends, and a failed one runs none: what a
                // skipped Bind would have named must not be taken for the server's.
                if status != TransactionStatus::InTransaction {
                    prepared.clear_portals_before(ended, status == TransactionStatus::Idle);
                }
                drop(prepared);
                self.live
                    .cursors
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .at_ready(ended, status == TransactionStatus::Idle);
                // Last: a FETCH decided after this answer is decided on all of the above.
                let ended = ended.max(std::mem::take(&mut self.answered_with_query));
                if ended != u64::MAX {
                    self.answered_through(ended);
                }
                self.result = None;
                self.query_index = 0;
                frame.encode(&mut self.out);
            }
            // An answer to another message than the one expected means the gateway's picture of
            // the server's statements is wrong: the session ends rather than deciding on it.
            backend::PARSE_COMPLETE => {
                match self.front.pop_front() {
                    Some(Pending::Parse { seq }) => lock(&self.shared).confirm(seq),
                    other => return Err(out_of_step("ParseComplete", other.as_ref())),
                }
                frame.encode(&mut self.out);
            }
            backend::BIND_COMPLETE => {
                match self.front.pop_front() {
                    Some(Pending::Bind { portal, id }) => {
                        lock(&self.shared).bound_answered(&portal, id, true)
                    }
                    other => return Err(out_of_step("BindComplete", other.as_ref())),
                }
                frame.encode(&mut self.out);
            }
            backend::CLOSE_COMPLETE => {
                match self.front.pop_front() {
                    Some(Pending::Close { freed }) => lock(&self.shared).settle(freed.as_slice()),
                    other => return Err(out_of_step("CloseComplete", other.as_ref())),
                }
                frame.encode(&mut self.out);
            }
            backend::COPY_IN => {
                let copy = match self.front.front() {
                    Some(Pending::Query { results, .. }) => {
                        results.get(self.query_index).map_or(0, |r| r.copy_from)
                    }
                    Some(Pending::Execute { plan, .. }) => plan.copy_from,
                    _ => 0,
                };
                self.copy_progress.send_modify(|p| {
                    p.answered = p.answered.max(copy);
                    p.copying = true;
                });
                frame.encode(&mut self.out);
            }
            backend::ROW_DESCRIPTION => {
                let rows = RowDescription::parse(&frame.body).map_err(bad)?;
                match self.front.front() {
                    Some(Pending::Query { results, .. }) => {
                        let plan = results.get(self.query_index).cloned().unwrap_or_default();
                        self.result = Some(self.streaming(plan, Some(&rows)));
                        frame.encode(&mut self.out);
                    }
                    Some(Pending::Describe { internal, .. }) => {
                        let internal = *internal;
                        self.front.pop_front();
                        self.next_rows = Some(Some(rows));
                        if !internal {
                            frame.encode(&mut self.out);
                        }
                    }
                    _ => frame.encode(&mut self.out),
                }
            }
            backend::NO_DATA => {
                if let Some(Pending::Describe { internal, .. }) = self.front.front() {
                    let internal = *internal;
                    self.front.pop_front();
                    self.next_rows = Some(None);
                    if internal {
                        return Ok(());
                    }
                }
                frame.encode(&mut self.out);
            }
            backend::DATA_ROW => self.on_row(frame)?,
            backend::COMMAND_COMPLETE | backend::EMPTY_QUERY | backend::PORTAL_SUSPENDED => {
                self.on_complete(frame)?
            }
            backend::COPY_DATA => {
                self.ensure_streaming();
                let copy_out = self.result.as_ref().is_some_and(|s| s.plan.copy_out);
                if copy_out && self.live.plan.has_detectors() {
                    let text = String::from_utf8_lossy(&frame.body);
                    let (masked, report) = self.live.plan.mask_escaped_text(&text, false);
                    self.report.add(&report);
                    Frame {
                        tag: frame.tag,
                        body: Bytes::from(masked.into_owned()),
                    }
                    .encode(&mut self.out);
                } else {
                    frame.encode(&mut self.out);
                }
            }
            backend::PARAMETER_DESCRIPTION => {
                let described = ParameterDescription::parse(&frame.body).map_err(bad)?;
                if let Some(Pending::Describe {
                    statement: Some(seq), ..
                }) = self.front.front()
                {
                    lock(&self.shared).describe_params(*seq, described.type_oids);
                }
                frame.encode(&mut self.out);
            }
            backend::NOTICE_RESPONSE => {
                let notice = ErrorResponse::parse(&frame.body).map_err(bad)?;
                self.masked_server_message(notice).encode_notice(&mut self.out);
            }
            backend::PARAMETER_STATUS => {
                // A setting the gateway pins changed all the same (a function's set_config, say):
                // statements would no longer be read as the server reads them.
                let status = ParameterStatus::parse(&frame.body).map_err(bad)?;
                if let Some(why) = upstream::unpinned(&status) {
                    return Err(why);
                }
                frame.encode(&mut self.out);
            }
            backend::NOTIFICATION => {
                // A payload is whatever a trigger or another session sent (`pg_notify(ch,
                // row_to_json(NEW)::text)`): where column rules apply it may quote masked columns,
                // which nothing in it names, so it is withheld; elsewhere it meets the detectors.
                let mut n = Notification::parse(&frame.body).map_err(bad)?;
                if !self.live.masked.is_empty() {
                    n.payload = WITHHELD_PAYLOAD.as_bytes().to_vec();
                } else if self.live.plan.has_detectors() {
                    let text = String::from_utf8_lossy(&n.payload).into_owned();
                    let (masked, report) = self.live.plan.mask_escaped_text(&text, false);
                    if !report.is_empty() {
                        self.report.add(&report);
                        n.payload = masked.into_owned().into_bytes();
                    }
                }
                n.encode(&mut self.out);
            }
            backend::COPY_OUT | backend::COPY_DONE => frame.encode(&mut self.out),
            other => {
                return Err(format!(
                    "unexpected message {:?} from the upstream",
                    other as char
                ));
            }
        }
        Ok(())
    }

    fn streaming(&self, plan: ResultPlan, rows: Option<&RowDescription>) -> Streaming {
        let masked = &self.live.masked;
        let mask_computed = plan.mask_computed;
        let masker = rows.map(|rows| {
            RowMasker::new(&self.live.plan, self.live.plan.has_detectors(), rows, |f| {
                if f.table_oid != 0 {
                    masked.strategy(f.table_oid, f.column)
                } else if mask_computed {
                    Some(agentgate_crds::policy::MaskingStrategy::Redact)
                } else {
                    None
                }
            })
            .hiding(self.live.token.clone())
        });
        Streaming {
            plan,
            masker,
            rows: 0,
            captured: Vec::new(),
            captured_bytes: 0,
            truncated: false,
        }
    }

    /// Starts the result of the front Execute from the columns its Describe returned.
    fn ensure_streaming(&mut self) {
        if self.result.is_some() {
            return;
        }
        let plan = match self.front.front() {
            Some(Pending::Execute { plan, .. }) => ResultPlan::clone(plan),
            Some(Pending::Query { results, .. }) => {
                results.get(self.query_index).cloned().unwrap_or_default()
            }
            _ => ResultPlan::default(),
        };
        let rows = match self.front.front() {
            Some(Pending::Execute { .. }) => self.next_rows.take().flatten(),
            _ => None,
        };
        self.result = Some(self.streaming(plan, rows.as_ref()));
    }

    fn on_row(&mut self, frame: Frame) -> Result<(), String> {
        self.ensure_streaming();
        let recording = self.live.recording.is_some();
        let needs_masking = !self.live.plan.is_empty();
        let Some(s) = self.result.as_mut() else {
            return Err("a row arrived outside a result".into());
        };
        s.rows += 1;
        if s.plan.row_limit.is_some_and(|limit| s.rows > limit) {
            // Rows past the cap are read and dropped: memory stays flat whatever the upstream sends.
            s.truncated = true;
            return Ok(());
        }
        let record = recording
            && s.captured.len() < MAX_RECORDED_ROWS
            && s.captured_bytes < crate::recording::MAX_EVENT_BYTES;
        match &s.masker {
            Some(m) => match m.mask(&frame.body, &mut self.out, &mut self.report, record) {
                Ok(Some(values)) => {
                    s.captured_bytes += values
                        .iter()
                        .map(|v| v.as_str().map_or(4, str::len) + 4)
                        .sum::<usize>();
                    s.captured.push(Value::Array(values));
                }
                Ok(None) => {}
                Err(e) => {
                    return Err(format!(
                        "a result row could not be masked, so the session is closed: {e}"
                    ));
                }
            },
            None if needs_masking => {
                return Err(
                    "a result row arrived without its column description, so it cannot be masked".into(),
                );
            }
            None => {
                frame.encode(&mut self.out);
                if record {
                    s.captured
                        .push(Value::String(format!("<{} bytes>", frame.body.len())));
                }
            }
        }
        Ok(())
    }

    /// An error or notice from the server as the client may read it. Messages quote values
    /// (`invalid input syntax for type integer: "ada@example.com"`, a unique violation's
    /// `Key (email)=(...)`, a function's RAISE): the detectors run over their text, and when the
    /// statement reads masked columns, whose values no detector may recognise, the texts are
    /// withheld and only the SQLSTATE, position and object names remain.
    fn masked_server_message(&self, mut e: ErrorResponse) -> ErrorResponse {
        // Fields that carry free text; the others are severity, code, position, source location
        // and object names.
        const TEXT: &[u8] = b"MDHWq";
        // A constraint checked late (DEFERRABLE, at COMMIT, Sync's implicit commit, SET
        // CONSTRAINTS, PREPARE TRANSACTION) quotes the row an earlier statement wrote, under a
        // statement that reads nothing masked: class 23 quotes values wherever columns are masked.
        let late_constraint = e.code().is_some_and(|c| c.starts_with("23")) && !self.live.masked.is_empty();
        let reads_masked = late_constraint
            || match self.front.front() {
                Some(Pending::Query { results, .. }) => results.iter().any(|r| r.withhold_errors),
                Some(Pending::Execute { plan, .. }) => plan.withhold_errors,
                _ => false,
            };
        if reads_masked {
            let code = e.code().unwrap_or("?").to_string();
            e.fields.retain(|(f, _)| !TEXT.contains(f));
            e.fields.push((
                b'M',
                format!(
                    "the statement failed with SQLSTATE {code}; the server's message is withheld by the gateway because the statement reads masked columns or writes a table with them, whose values it may quote"
                ),
            ));
            return e;
        }
        for (f, value) in e.fields.iter_mut() {
            if TEXT.contains(f) {
                let (masked, report) = self.live.plan.mask_escaped_text(value, false);
                if !report.is_empty() {
                    *value = masked.into_owned();
                }
            }
        }
        e
    }

    /// The COPY FROM STDIN in progress ended (CommandComplete or ErrorResponse): the Syncs the
    /// client sent during it, which the server ignored, expect no answer.
    fn end_copy(&mut self) {
        if !self
            .copy_progress
            .send_if_modified(|p| std::mem::take(&mut p.copying))
        {
            return;
        }
        while let Some(Pending::Sync {
            in_copy: true,
            through,
            ..
        }) = self.front.get(1)
        {
            // Answered by none: the ReadyForQuery to come answers them too. An Execute's
            // segment may hold more for the client to send before its Sync: they count as
            // answered now, or a FETCH there would wait for its own Sync.
            let through = *through;
            if matches!(self.front.front(), Some(Pending::Query { .. })) {
                self.answered_with_query = self.answered_with_query.max(through);
                self.front.remove(1);
                continue;
            }
            self.answered_through(through);
            self.front.remove(1);
        }
    }

    /// Every Query and Sync up to segment `through` is answered: for the client side's
    /// decisions (`Prepared::answered_through`) and for a FETCH waiting on it
    /// ([`CopyProgress::through`]).
    fn answered_through(&mut self, through: u64) {
        let mut prepared = lock(&self.shared);
        prepared.answered_through = prepared.answered_through.max(through);
        drop(prepared);
        self.copy_progress.send_if_modified(|p| {
            let later = through > p.through;
            p.through = p.through.max(through);
            later
        });
    }

    fn on_complete(&mut self, frame: Frame) -> Result<(), String> {
        self.end_copy();
        self.ensure_streaming();
        let s = self.result.take();
        let mut tag = None;
        if frame.tag == backend::COMMAND_COMPLETE {
            tag = Some(
                CommandComplete::parse(&frame.body)
                    .map_err(|e| format!("upstream sent a malformed message: {e}"))?
                    .tag,
            );
        }
        if let Some(t) = &tag {
            let mut book = self.live.cursors.lock().unwrap_or_else(PoisonError::into_inner);
            let plan = s.as_ref().map(|s| &s.plan);
            if t.starts_with("DECLARE CURSOR")
                && let Some((name, generation, hold, epoch)) = plan.and_then(|p| p.declares.as_ref())
            {
                book.confirm(name, *generation, *hold, *epoch);
            }
            if t.starts_with("CLOSE CURSOR")
                && let Some(name) = plan.and_then(|p| p.closes.as_ref())
            {
                book.close(name, true);
            }
            // ROLLBACK is also the tag of a COMMIT of a failed transaction, and of ROLLBACK TO
            // SAVEPOINT; COMMIT that of END and COMMIT AND CHAIN; PREPARE TRANSACTION fails
            // where a cursor WITH HOLD was made, and closes the others.
            let ends = match t.as_str() {
                "COMMIT" => Some(CursorsEnd::Commit),
                "ROLLBACK" | "PREPARE TRANSACTION" => Some(CursorsEnd::Rollback),
                "DISCARD ALL" => Some(CursorsEnd::Discard),
                _ => plan.and_then(|p| p.ends_cursors),
            };
            if let Some(end) = ends {
                book.end(end, true);
            }
        }
        let mut forwarded = false;
        if !self.report.is_empty() {
            self.live
                .ctx
                .gateway
                .metrics
                .count_masking(&self.live.connection, &self.report);
            self.report = MaskReport::default();
        }
        if let Some(s) = &s {
            if s.truncated {
                let limit = s.plan.row_limit.unwrap_or(0);
                ErrorResponse {
                    fields: vec![
                        (b'S', "WARNING".into()),
                        (b'V', "WARNING".into()),
                        (b'C', "01000".into()),
                        (
                            b'M',
                            format!(
                                "result truncated to {limit} rows by {} (rowLimit); {} rows were withheld",
                                s.plan.limit_rule.as_deref().unwrap_or("policy"),
                                s.rows - limit
                            ),
                        ),
                    ],
                }
                .encode_notice(&mut self.out);
                if let Some(t) = &tag
                    && t.starts_with("SELECT ")
                {
                    let t = format!("SELECT {limit}");
                    CommandComplete { tag: t.clone() }.encode(&mut self.out);
                    tag = Some(t);
                    forwarded = true;
                }
            }
            self.record_result(s, tag.as_deref(), false);
        }
        if !forwarded {
            frame.encode(&mut self.out);
        }
        match self.front.front() {
            Some(Pending::Query { results, .. }) => {
                if let Some(r) = results.get(self.query_index)
                    && !r.freed.is_empty()
                {
                    lock(&self.shared).settle(&r.freed);
                }
                self.query_index += 1;
            }
            Some(Pending::Execute { .. }) => {
                if let Some(Pending::Execute { plan, .. }) = self.front.pop_front()
                    && !plan.freed.is_empty()
                {
                    lock(&self.shared).settle(&plan.freed);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Records what a statement returned (`pg.result`), rows after masking and capped.
    fn record_result(&self, s: &Streaming, tag: Option<&str>, failed: bool) {
        if self.live.recording.is_none() {
            return;
        }
        let columns = s.masker.as_ref().map(|m| m.names());
        let rows = s.rows.min(s.plan.row_limit.unwrap_or(u64::MAX));
        self.live.record_after(
            s.plan.recording.as_ref(),
            "pg.result",
            ResultEvent {
                sql: &s.plan.sql,
                tag,
                rows,
                truncated: s.truncated,
                columns,
                data: &s.captured,
                data_truncated: s.captured.len() < rows as usize,
                failed,
            },
        );
    }

    fn on_error(&mut self, frame: Frame) -> Result<(), String> {
        let e = ErrorResponse::parse(&frame.body)
            .map_err(|e| format!("upstream sent a malformed message: {e}"))?;
        self.end_copy();
        // Rows that reached the client before the statement failed are on record too: an
        // auditor reading only the error would take it that nothing was returned.
        if let Some(s) = self.result.take()
            && s.rows > 0
        {
            self.record_result(&s, None, true);
        }
        let code = e.code().unwrap_or_default().to_string();
        // The transaction (explicit or implicit) the error happened in ends undone.
        self.live
            .cursors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .end(CursorsEnd::Rollback, true);
        let substitute = match self.front.front() {
            Some(Pending::Query { refused: Some(r), .. })
            | Some(Pending::Execute { refused: Some(r), .. })
                if code == r.marker_code =>
            {
                Some(r.error.clone())
            }
            _ => None,
        };
        match substitute {
            Some(ours) => ours.encode(&mut self.out),
            None => {
                let e = self.masked_server_message(e);
                e.encode(&mut self.out);
                let _ = self.live.record(
                    "pg.error",
                    json!({"code": code, "message": e.message().map(|m| self.live.masked_sql(m))}),
                );
            }
        }
        // A Query's failed statement and those after it did not run. A DEALLOCATE that failed
        // because the server holds no such statement leaves nothing unsure.
        if let Some(Pending::Query { results, .. }) = self.front.front() {
            self.live
                .cursors
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .failed(
                    results
                        .iter()
                        .skip(self.query_index)
                        .filter_map(|r| r.declares.as_ref().map(|d| d.0.as_str())),
                );
            let mut rest = results.iter().skip(self.query_index);
            let mut prepared = lock(&self.shared);
            if code == sqlstate::INVALID_SQL_STATEMENT_NAME
                && let Some(failed) = rest.next()
            {
                prepared.settle(&failed.freed);
            }
            let freed: Vec<String> = rest.flat_map(|r| r.freed.iter().cloned()).collect();
            if !freed.is_empty() {
                prepared.unsure(freed)?;
            }
        }
        // In the extended protocol the upstream now skips to Sync: so do the pending answers,
        // registrations by skipped Parse messages are void, and names freed by what failed or
        // was skipped are unsure.
        if !matches!(
            self.front.front(),
            None | Some(Pending::Query { .. }) | Some(Pending::Sync { .. })
        ) {
            let (mut void, mut unsure, mut settled) = (Vec::new(), Vec::new(), Vec::new());
            let (mut unbound, mut undeclared) = (Vec::new(), Vec::new());
            // The first is the message that failed, as above.
            let mut failed = code == sqlstate::INVALID_SQL_STATEMENT_NAME;
            while let Some(p) = self.front.front() {
                if matches!(p, Pending::Sync { .. } | Pending::Query { .. }) {
                    break;
                }
                match self.front.pop_front() {
                    Some(Pending::Parse { seq }) => void.push(seq),
                    Some(Pending::Bind { portal, id }) => unbound.push((portal, id)),
                    Some(Pending::Close { freed }) => unsure.extend(freed),
                    Some(Pending::Execute { plan, .. }) => {
                        undeclared.extend(plan.declares.map(|d| d.0));
                        if failed {
                            settled.extend(plan.freed)
                        } else {
                            unsure.extend(plan.freed)
                        }
                    }
                    _ => {}
                }
                failed = false;
            }
            self.next_rows = None;
            self.live
                .cursors
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .failed(undeclared.iter().map(String::as_str));
            let mut prepared = lock(&self.shared);
            if !void.is_empty() {
                prepared.void(&void);
            }
            for (portal, id) in unbound {
                prepared.bound_answered(&portal, id, false);
            }
            prepared.settle(&settled);
            prepared.unsure(unsure)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A recheck ends the session when the token's groups changed, not when the provider
    /// lists the same groups in another order.
    #[test]
    fn groups_compare_as_sets() {
        let g = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(same_groups(&g(&["dba", "ai-agents"]), &g(&["ai-agents", "dba"])));
        assert!(!same_groups(&g(&["ai-agents"]), &g(&["ai-agents", "dba"])));
        assert!(!same_groups(&g(&["ai-agents", "dba"]), &g(&["ai-agents"])));
    }

    /// The queue to the server side allocates room for 32 messages per session at its start,
    /// the queue of awaited answers for 4 at its first: a large `Pending` made every idle
    /// session 7 KiB heavier.
    #[test]
    fn pending_messages_stay_small() {
        assert!(
            std::mem::size_of::<Pending>() <= 64,
            "{}",
            std::mem::size_of::<Pending>()
        );
    }

    /// A statement longer than a record keeps is not shown cut: hiding the agent's token in it
    /// could leave a short text ahead of what the cut hides.
    #[test]
    fn statements_longer_than_a_record_keeps_are_not_shown() {
        assert_eq!(sql_unshown("DELETE FROM t WHERE id = 1"), None);
        assert_eq!(sql_unshown(&"x".repeat(MAX_RECORDED_SQL)), None);
        let why = sql_unshown(&format!(
            "SELECT 1; /* {} */ DELETE FROM t",
            "a".repeat(MAX_RECORDED_SQL)
        ))
        .unwrap();
        assert!(why.contains("send a shorter one"), "{why}");
    }

    /// What may make a later write run code no statement names, and what event triggers fire
    /// on.
    #[test]
    fn statements_that_give_writes_code_to_run() {
        let first = |sql: &str| {
            super::super::classify::classify(sql)
                .unwrap()
                .statements
                .remove(0)
        };
        for sql in [
            "CREATE TRIGGER t BEFORE UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION f()",
            "CREATE EVENT TRIGGER e ON ddl_command_start EXECUTE FUNCTION f()",
            "ALTER EVENT TRIGGER e ENABLE",
            "CREATE TABLE p1 PARTITION OF p FOR VALUES IN (1)",
            "CREATE TABLE plain (id int)",
            "ALTER TABLE orders ADD COLUMN note text",
            "CREATE INDEX ON orders (lower(status))",
            "DO $$ BEGIN NULL; END $$",
            "CREATE TABLE c () INHERITS (p)",
            "CREATE TABLE r (id int REFERENCES orders ON DELETE CASCADE)",
            "ALTER TABLE p ATTACH PARTITION p2 FOR VALUES IN (2)",
            "ALTER TABLE orders ENABLE TRIGGER t",
            "ALTER TABLE c INHERIT p",
            "ALTER TABLE r ADD FOREIGN KEY (id) REFERENCES orders ON DELETE CASCADE",
        ] {
            assert!(defines_write_code(&first(sql)), "{sql}");
        }
        for sql in [
            "UPDATE orders SET total = 1 WHERE id = 1",
            "CREATE VIEW v AS SELECT 1",
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        ] {
            assert!(!defines_write_code(&first(sql)), "{sql}");
        }
        let ddl = |sql: &str| first(sql).kinds.iter().any(is_ddl);
        assert!(ddl("CREATE TABLE x (id int)"));
        assert!(ddl("GRANT SELECT ON orders TO PUBLIC"));
        assert!(ddl("COMMENT ON TABLE orders IS 'x'"));
        assert!(!ddl("SELECT 1"));
        assert!(!ddl("UPDATE orders SET total = 1 WHERE id = 1"));
    }

    /// Bound values an approver would read as their size, or cut, are named as the reason no
    /// approval is asked; values read whole, withheld ones and NULLs are not.
    #[test]
    fn values_an_approver_cannot_read_whole_are_named() {
        let shown = |v: Vec<Value>| params_unshown(&v);
        assert_eq!(
            shown(vec![
                Value::Null,
                "42".into(),
                "<binary, 16 bytes, withheld by the detectors>".into()
            ]),
            None
        );
        let why = shown(vec!["1".into(), "<binary, 4 bytes>".into()]).unwrap();
        assert!(why.starts_with("parameter $2 is binary"), "{why}");
        let cut = truncate(&"x".repeat(5000), RECORDED_PARAM_BYTES);
        let why = shown(vec![cut.into()]).unwrap();
        assert!(why.contains("longer than the 1024 bytes"), "{why}");
        assert_eq!(shown(vec!["x".repeat(RECORDED_PARAM_BYTES).into()]), None);
    }

    /// The server decides which names a skipped Close leaves in doubt, so no cap on PREPARE or
    /// Parse bounds them: past the cap the session ends. The text named statements hold is
    /// counted too, each name once.
    #[test]
    fn names_in_doubt_and_the_text_of_named_statements_are_bounded() {
        let mut p = Prepared::default();
        let names: Vec<String> = (0..MAX_NAMED_STATEMENTS).map(|i| format!("n{i}")).collect();
        assert!(p.unsure(names.clone()).is_ok());
        // The same names again hold nothing more.
        assert!(p.unsure(names).is_ok());
        let e = p.unsure(vec!["one more".into()]).unwrap_err();
        assert!(e.contains("in doubt"), "{e}");

        let mut p = Prepared::default();
        let sql = format!("SELECT '{}'", "x".repeat(1000));
        let classified = Arc::new(super::super::classify::classify(&sql).unwrap());
        for (i, name) in ["a", "b"].into_iter().enumerate() {
            let known = Entry::Known {
                classified: classified.clone(),
                seq: i as u64,
                confirmed: true,
                segment: 0,
                param_types: Arc::from([]),
            };
            p.statements.insert(name.into(), known);
        }
        p.sql
            .insert("c".into(), Some(Arc::new(classified.statements[0].clone())));
        p.sql.insert("d".into(), None);
        assert_eq!(p.held_text_bytes(), 3 * sql.len());
    }

    #[test]
    fn passwords_are_kept_out_of_recorded_statements() {
        assert_eq!(
            without_passwords("ALTER ROLE app PASSWORD 'hunter2'"),
            "[values withheld: the statement may carry a password] ALTER ROLE app PASSWORD $1"
        );
        // A mention in a comment withholds nothing: the approver sees the values.
        let commented = "UPDATE users SET role = 'admin' WHERE email = 'm@x' -- password-reset ticket 42";
        assert_eq!(without_passwords(commented), commented);
        let commented = "/* password */ SELECT 'a'";
        assert_eq!(without_passwords(commented), commented);
        // In a literal, a name or a keyword it counts; so does text that does not scan.
        for sql in [
            "SELECT dblink_connect('host=db password=hunter2')",
            "UPDATE users SET password = 'hunter2'",
            "SELECT 'hunter2' AS \"Password\"",
            "SELECT 'unterminated password",
        ] {
            assert!(mentions_password(sql), "{sql}");
            assert!(!without_passwords(sql).contains("hunter2"), "{sql}");
        }
        // The normalizer passes some statements over with their literals: withheld whole.
        for sql in [
            "ALTER SERVER s OPTIONS (ADD password 'hunter2')",
            "COMMENT ON TABLE t IS 'the password is hunter2'",
            "DO $pw$ BEGIN PERFORM set_config('x.password', 'hunter2', false); END $pw$",
        ] {
            let shown = without_passwords(sql);
            assert!(!shown.contains("hunter2"), "{sql}: {shown}");
        }
        assert_eq!(without_passwords("SELECT 1"), "SELECT 1");
        assert!(!keeps_a_literal("SELECT $1, $2") && keeps_a_literal("SELECT $$x$$"));
    }
}
