//! Which result columns a session's column masking rules cover, resolved once per session from
//! the upstream's catalog: a result field names its source by (table OID, attribute number), so
//! rules written as `schema.table.column` are turned into that form. Views resolve through
//! pg_depend to the masked columns they read, and through their definitions (parsed by
//! PostgreSQL's grammar) to which of their columns read them: a view column is masked when its
//! expression mentions a masked column it reads, under any name, or a whole row; every column
//! of a view whose columns cannot be traced by name (a subquery or CTE in its FROM) is masked;
//! and a rule may name a view's column itself.
//!
//! JSON field rules mask fields of the documents a result shows, but a value taken out of a
//! document (`doc->>'ssn'`, `doc::text`) is no longer one: where field rules apply, every column
//! holding JSON is traced the same way, so a document shown as it is has its fields masked and
//! anything computed from it (or an array or record holding it) is redacted.

use std::collections::{HashMap, HashSet};

use agentgate_crds::policy::MaskingStrategy;
use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use super::classify::ViewColumn;
use super::message::data_row::DataRow;
use super::message::error_response::ErrorResponse;
use super::message::query::Query;
use super::message::{FrameError, backend};
use super::upstream::Upstream;
use crate::masking::MaskingPlan;

/// Every column of every user relation, with its schema, table and type.
const COLUMNS_SQL: &str = "SELECT c.oid, n.nspname, c.relname, a.attnum, a.attname, c.relkind, a.atttypid \
     FROM pg_catalog.pg_attribute a \
     JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r','p','v','m','f') \
     AND n.nspname NOT IN ('pg_catalog','information_schema') AND n.nspname NOT LIKE 'pg_toast%'";

/// (view, base relation, base attribute) for what a view's rule reads (attribute 0: the relation
/// as a whole).
const VIEW_DEPENDENCIES_SQL: &str = "SELECT DISTINCT r.ev_class, d.refobjid, d.refobjsubid \
     FROM pg_catalog.pg_rewrite r \
     JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::regclass AND d.objid = r.oid \
     WHERE d.refclassid = 'pg_catalog.pg_class'::regclass AND d.refobjsubid >= 0 AND d.refobjid <> r.ev_class";

/// Every type that holds JSON, with whether its values are JSON documents themselves (`json`,
/// `jsonb` and domains over them: result fields of a domain carry its base type) or hold them
/// inside (arrays, composite types and table row types, ranges and multiranges, domains over
/// those), at any depth. (`pg_range.rngmultitypid` is read through `to_jsonb`: PostgreSQL 13
/// has no such column, nor multiranges.)
const JSON_TYPES_SQL: &str = "WITH RECURSIVE edge(child, parent, direct) AS ( \
       SELECT oid, typbasetype, true FROM pg_catalog.pg_type WHERE typtype = 'd' \
       UNION ALL SELECT typarray, oid, false FROM pg_catalog.pg_type WHERE typarray <> 0 \
       UNION ALL SELECT c.reltype, a.atttypid, false FROM pg_catalog.pg_attribute a \
         JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
         WHERE a.attnum > 0 AND NOT a.attisdropped AND c.reltype <> 0 \
       UNION ALL SELECT rngtypid, rngsubtype, false FROM pg_catalog.pg_range \
       UNION ALL SELECT (pg_catalog.to_jsonb(r) OPERATOR(pg_catalog.->>) 'rngmultitypid')::pg_catalog.oid, r.rngtypid, false \
         FROM pg_catalog.pg_range r WHERE pg_catalog.to_jsonb(r) OPERATOR(pg_catalog.?) 'rngmultitypid'), \
     holds(oid, direct) AS ( \
       VALUES ('pg_catalog.json'::pg_catalog.regtype::pg_catalog.oid, true), \
              ('pg_catalog.jsonb'::pg_catalog.regtype::pg_catalog.oid, true) \
       UNION SELECT e.child, h.direct AND e.direct FROM edge e JOIN holds h ON e.parent = h.oid) \
     SELECT oid, pg_catalog.bool_and(direct) FROM holds GROUP BY oid";

/// Rounds of tracing views of views; past this, the views still changing are masked whole.
const MAX_VIEW_ROUNDS: usize = 64;

/// (relation, column, column it is computed from) for generated columns: a column default's
/// dependencies on other columns of its relation are a generation expression's (a plain default
/// may name no column; it depends on its own).
const GENERATED_SQL: &str = "SELECT DISTINCT ad.adrelid, ad.adnum, d.refobjsubid \
     FROM pg_catalog.pg_attrdef ad \
     JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_attrdef'::regclass AND d.objid = ad.oid \
     WHERE d.refclassid = 'pg_catalog.pg_class'::regclass AND d.refobjid = ad.adrelid \
     AND d.refobjsubid > 0 AND d.refobjsubid <> ad.adnum";

/// Every inheritance edge (partitions included): (child, parent).
const INHERITANCE_SQL: &str = "SELECT inhrelid, inhparent FROM pg_catalog.pg_inherits";

/// Names of the database's own that change what a statement calls or reads, as (name, why): `row`,
/// callable with one argument that a row can be (a composite type, or a pseudo-type such as
/// `record` or `anyelement`), which PostgreSQL runs for `o.name` or `(o).name` where the row
/// has no column of that name; `shadow`, named as a built-in function is, which a call of that
/// name may resolve to (`public.lower(int)` for `lower(1)`). And `pgrel`: a relation in `public`
/// named `pg_*` that `pg_catalog` has none of, which an unqualified name resolves to although
/// the classifier reads `pg_*` names as `pg_catalog`'s.
///
/// Code reached without a function's name, the database's own and not an extension's (which a
/// privileged user installed; an agent's `CREATE EXTENSION` trips [`super::session`]'s check of
/// code defined since): `operator`, an operator's symbol, which a built-in's use may resolve to
/// (`1 + 'x'::text` to `public.+(int, text)`); `type`, a type a value made into runs such code
/// for (the target of a cast with such a function, a domain whose checks call it or such an
/// operator, and what holds one: domains over it, arrays, ranges, composite types);
/// `implicit`, there is a cast with such code that PostgreSQL applies unwritten in any
/// expression (assignment casts run only where a statement writes); `view`, a view whose query
/// calls such code that may write (a volatile function, or an operator of one) or makes such a
/// type, itself or through the views it reads. (A view calling only stable code writes nothing; what it reads is masked as
/// an opaque view's, see [`OPAQUE_VIEWS_SQL`].) `view-any`, a view whose query calls any such
/// code, stable or not, itself or through the views it reads: code that may open and close
/// cursors by name, which PostgreSQL allows of stable and immutable functions too.
/// `written-code`, a relation whose writing may run code no statement names: it has a trigger
/// (a partition's copy of its parent's too, internal before PostgreSQL 15; not the foreign
/// keys' own), a rule (`DO ALSO`, `INSTEAD`), or a default, generated column, check or
/// exclusion constraint, index expression or column type that runs such code of its own, or a
/// write to it reaches one that has, through a foreign key's cascade, an inheritance or
/// partition child, or an updatable view's relations.
/// `event-trigger`: the database has event triggers, which DDL runs.
const SHADOWS_SQL: &str = "WITH RECURSIVE own_procs AS ( \
         SELECT p.oid, p.provolatile = 'v' AS volatile FROM pg_catalog.pg_proc p \
         JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
         WHERE n.nspname NOT IN ('pg_catalog','information_schema') \
         AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend e \
             WHERE e.classid = 'pg_catalog.pg_proc'::regclass AND e.objid = p.oid AND e.deptype = 'e')), \
     own_operators AS ( \
         SELECT o.oid, o.oprname, o.oprcode FROM pg_catalog.pg_operator o \
         JOIN pg_catalog.pg_namespace n ON n.oid = o.oprnamespace \
         WHERE n.nspname NOT IN ('pg_catalog','information_schema') \
         AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend e \
             WHERE e.classid = 'pg_catalog.pg_operator'::regclass AND e.objid = o.oid AND e.deptype = 'e')), \
     own_casts AS ( \
         SELECT c.casttarget, c.castcontext FROM pg_catalog.pg_cast c \
         WHERE c.castfunc IN (SELECT oid FROM own_procs)), \
     type_edges(holder, held) AS ( \
         SELECT oid, typbasetype FROM pg_catalog.pg_type WHERE typbasetype <> 0 \
         UNION ALL SELECT oid, typelem FROM pg_catalog.pg_type WHERE typelem <> 0 \
         UNION ALL SELECT t.oid, a.atttypid FROM pg_catalog.pg_type t \
             JOIN pg_catalog.pg_attribute a ON a.attrelid = t.typrelid \
             WHERE t.typrelid <> 0 AND a.attnum > 0 AND NOT a.attisdropped \
         UNION ALL SELECT rngtypid, rngsubtype FROM pg_catalog.pg_range \
         UNION ALL SELECT c.contypid, d.refobjid FROM pg_catalog.pg_constraint c \
             JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_constraint'::regclass AND d.objid = c.oid \
             WHERE c.contypid <> 0 AND d.refclassid = 'pg_catalog.pg_type'::regclass), \
     coded_types(oid) AS ( \
         SELECT c.contypid FROM pg_catalog.pg_constraint c \
         JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_constraint'::regclass AND d.objid = c.oid \
         WHERE c.contypid <> 0 \
         AND ((d.refclassid = 'pg_catalog.pg_proc'::regclass AND d.refobjid IN (SELECT oid FROM own_procs)) \
             OR (d.refclassid = 'pg_catalog.pg_operator'::regclass AND d.refobjid IN (SELECT oid FROM own_operators))) \
         UNION SELECT casttarget FROM own_casts \
         UNION SELECT e.holder FROM type_edges e JOIN coded_types c ON e.held = c.oid), \
     own_code(classid, oid) AS ( \
         SELECT 'pg_catalog.pg_proc'::regclass, oid FROM own_procs \
         UNION ALL SELECT 'pg_catalog.pg_operator'::regclass, oid FROM own_operators \
         UNION ALL SELECT 'pg_catalog.pg_type'::regclass, oid FROM coded_types), \
     view_deps(view_oid, classid, oid) AS ( \
         SELECT r.ev_class, d.refclassid, d.refobjid FROM pg_catalog.pg_rewrite r \
         JOIN pg_catalog.pg_class v ON v.oid = r.ev_class AND v.relkind = 'v' \
         JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::regclass AND d.objid = r.oid \
         WHERE r.ev_type = '1'), \
     coded_views(oid) AS ( \
         SELECT e.view_oid FROM view_deps e \
         WHERE (e.classid = 'pg_catalog.pg_proc'::regclass \
             AND e.oid IN (SELECT oid FROM own_procs WHERE volatile)) \
         OR (e.classid = 'pg_catalog.pg_operator'::regclass AND e.oid IN ( \
             SELECT o.oid FROM own_operators o JOIN own_procs p ON p.oid = o.oprcode::oid WHERE p.volatile)) \
         OR (e.classid = 'pg_catalog.pg_type'::regclass AND e.oid IN (SELECT oid FROM coded_types)) \
         UNION SELECT e.view_oid FROM view_deps e JOIN coded_views cv \
             ON e.classid = 'pg_catalog.pg_class'::regclass AND e.oid = cv.oid), \
     any_code_views(oid) AS ( \
         SELECT e.view_oid FROM view_deps e JOIN own_code c ON e.classid = c.classid AND e.oid = c.oid \
         UNION SELECT e.view_oid FROM view_deps e JOIN any_code_views cv \
             ON e.classid = 'pg_catalog.pg_class'::regclass AND e.oid = cv.oid), \
     relation_edges(source, reached) AS ( \
         SELECT c.confrelid, c.conrelid FROM pg_catalog.pg_constraint c \
         WHERE c.contype = 'f' AND (c.confdeltype IN ('c','n','d') OR c.confupdtype IN ('c','n','d')) \
         UNION ALL SELECT inhparent, inhrelid FROM pg_catalog.pg_inherits \
         UNION ALL SELECT r.ev_class, d.refobjid FROM pg_catalog.pg_rewrite r \
             JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::regclass AND d.objid = r.oid \
             WHERE d.refclassid = 'pg_catalog.pg_class'::regclass AND d.refobjid <> r.ev_class), \
     written_by_code(oid) AS ( \
         SELECT a.adrelid FROM pg_catalog.pg_attrdef a \
             JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_attrdef'::regclass AND d.objid = a.oid \
             JOIN own_code c ON d.refclassid = c.classid AND d.refobjid = c.oid \
         UNION SELECT k.conrelid FROM pg_catalog.pg_constraint k \
             JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_constraint'::regclass AND d.objid = k.oid \
             JOIN own_code c ON d.refclassid = c.classid AND d.refobjid = c.oid WHERE k.conrelid <> 0 \
         UNION SELECT i.indrelid FROM pg_catalog.pg_index i \
             JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = i.indexrelid \
             JOIN own_code c ON d.refclassid = c.classid AND d.refobjid = c.oid \
         UNION SELECT a.attrelid FROM pg_catalog.pg_attribute a JOIN coded_types t ON t.oid = a.atttypid \
             WHERE a.attnum > 0 AND NOT a.attisdropped), \
     written_code(oid) AS ( \
         SELECT tgrelid FROM pg_catalog.pg_trigger WHERE NOT tgisinternal OR tgconstraint = 0 \
         UNION SELECT ev_class FROM pg_catalog.pg_rewrite WHERE ev_type <> '1' \
         UNION SELECT oid FROM written_by_code \
         UNION SELECT e.source FROM relation_edges e JOIN written_code w ON e.reached = w.oid) \
     SELECT DISTINCT p.proname, 'row' \
     FROM pg_catalog.pg_proc p \
     JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
     JOIN pg_catalog.pg_type t ON t.oid = p.proargtypes[0] \
     WHERE p.pronargs >= 1 AND p.pronargs - p.pronargdefaults <= 1 \
     AND n.nspname NOT IN ('pg_catalog','information_schema') \
     AND (t.typtype IN ('c','p') OR t.typrelid <> 0) \
     UNION SELECT DISTINCT p.proname, 'shadow' \
     FROM pg_catalog.pg_proc p \
     JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
     WHERE n.nspname NOT IN ('pg_catalog','information_schema') \
     AND (EXISTS (SELECT 1 FROM pg_catalog.pg_proc b \
         WHERE b.pronamespace = 'pg_catalog'::regnamespace AND b.proname = p.proname) \
         OR p.proname = ANY ('{TRUSTED}'::text[])) \
     UNION SELECT c.relname, 'pgrel' \
     FROM pg_catalog.pg_class c \
     WHERE c.relnamespace = 'public'::regnamespace AND c.relname LIKE 'pg\\_%' \
     AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class b \
         WHERE b.relnamespace = 'pg_catalog'::regnamespace AND b.relname = c.relname) \
     UNION SELECT oprname, 'operator' FROM own_operators \
     UNION SELECT t.typname, 'type' FROM coded_types c JOIN pg_catalog.pg_type t ON t.oid = c.oid \
     UNION SELECT 'any', 'implicit' FROM own_casts WHERE castcontext = 'i' \
     UNION SELECT n.nspname || '.' || c.relname, 'view' FROM coded_views v \
         JOIN pg_catalog.pg_class c ON c.oid = v.oid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     UNION SELECT n.nspname || '.' || c.relname, 'view-any' FROM any_code_views v \
         JOIN pg_catalog.pg_class c ON c.oid = v.oid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     UNION SELECT n.nspname || '.' || c.relname, 'written-code' FROM written_code w \
         JOIN pg_catalog.pg_class c ON c.oid = w.oid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     UNION SELECT 'any', 'event-trigger' FROM pg_catalog.pg_event_trigger";

/// What the database's own functions and relations make of names the classifier reads otherwise:
/// see [`SHADOWS_SQL`]. Read for every session, column rules or not: such a call may write, or
/// read what a rule masks, under a column's or a built-in function's name, and such a relation
/// is ruled by policies on `public`, not the catalog.
#[derive(Debug, Default)]
pub struct Shadows {
    /// Callable by field notation (`o.name`).
    pub by_field: HashSet<String>,
    /// Named as built-in functions are.
    pub shadowing: HashSet<String>,
    /// Relations in `public` named `pg_*`: an unqualified name is theirs, not `pg_catalog`'s.
    pub public_pg_relations: HashSet<String>,
    /// The database's own operators' symbols.
    pub operators: HashSet<String>,
    /// Types a cast to or from runs the database's own code for.
    pub coded_types: HashSet<String>,
    /// A cast that runs the database's own code is applied unwritten (implicit or on
    /// assignment): any expression may call it.
    pub implicit_casts: bool,
    /// Views that call the database's own code that may write (`schema.view`).
    pub code_views: HashSet<String>,
    /// Views that call any of the database's own code (`schema.view`).
    pub any_code_views: HashSet<String>,
    /// Relations whose writing may run triggers or rules (`schema.relation`).
    pub written_code: HashSet<String>,
    /// The database has event triggers: DDL may run code.
    pub event_triggers: bool,
}

/// [`SHADOWS_SQL`] with the names the classifier trusts: a function of the database's own named
/// as one is not the built-in, whether or not this server's catalog has that built-in.
fn shadows_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        let names: Vec<&str> = super::classify::trusted_function_names()
            .inspect(|n| {
                debug_assert!(
                    n.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                )
            })
            .collect();
        SHADOWS_SQL.replace("{TRUSTED}", &format!("{{{}}}", names.join(",")))
    })
}

pub async fn shadows(up: &mut Upstream) -> Result<Shadows, CatalogError> {
    let mut out = Shadows::default();
    for row in query(up, shadows_sql()).await? {
        if let [name, why] = row.as_slice() {
            match why.as_str() {
                "row" => out.by_field.insert(name.clone()),
                "pgrel" => out.public_pg_relations.insert(name.clone()),
                "operator" => out.operators.insert(name.clone()),
                "type" => out.coded_types.insert(name.clone()),
                "implicit" => {
                    out.implicit_casts = true;
                    true
                }
                "view" => out.code_views.insert(name.clone()),
                "view-any" => out.any_code_views.insert(name.clone()),
                "written-code" => out.written_code.insert(name.clone()),
                "event-trigger" => {
                    out.event_triggers = true;
                    true
                }
                _ => out.shadowing.insert(name.clone()),
            };
        }
    }
    Ok(out)
}

/// Views whose columns cannot be traced from their text: they call a function that is not
/// built in (which may read any table), or read the planner's statistics (which hold sampled
/// values of every column).
const OPAQUE_VIEWS_SQL: &str = "SELECT DISTINCT r.ev_class \
     FROM pg_catalog.pg_rewrite r \
     JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::regclass AND d.objid = r.oid \
     WHERE d.refclassid = 'pg_catalog.pg_proc'::regclass \
     OR (d.refclassid = 'pg_catalog.pg_class'::regclass AND d.refobjid IN ( \
         SELECT c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = 'pg_catalog' AND c.relname LIKE 'pg\\_stat%'))";

/// How one column's values are masked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Mask {
    /// Entirely: by its column rule's strategy, or redacted when computed over masked values.
    Whole(MaskingStrategy),
    /// A JSON document shown as it is: the field rules mask its fields, as they do every
    /// document in a result.
    Fields,
}

/// The masked columns of one session.
#[derive(Debug, Default)]
pub struct MaskedColumns {
    by_field: HashMap<(u32, i16), Mask>,
    /// Names of masked columns (as the catalog spells them, as the parser reads identifiers),
    /// for statements that compute over them.
    names: HashSet<String>,
    /// `schema.table` of relations with a masked column.
    tables: HashSet<String>,
    /// Every column name of each relation with a masked column, by `schema.table`.
    columns_of: HashMap<String, HashSet<String>>,
    /// Relations with a masked column, by OID.
    relations: HashSet<u32>,
    /// `schema.table` of every user relation the catalog held when it was read.
    known_names: HashSet<String>,
    /// `schema.table` of the views that read a relation with masked columns, at any depth
    /// (through an updatable one a write reaches the row).
    over_masked: HashSet<String>,
    /// The user relations the catalog held when it was read (only when column or field rules
    /// apply).
    known: HashSet<u32>,
    /// JSON field rules apply: a relation made since the catalog was read may hold documents,
    /// so the session's guards are on even when nothing was masked when it was read.
    fields: bool,
    /// Column rules (as written) that matched no column of the database when it was read.
    pub unmatched: Vec<String>,
}

/// A table's system columns (negative attribute numbers, no row data; `oid` is not one since
/// PostgreSQL 12). Views have none: there `v.xmin` is a function call over the row.
const SYSTEM_COLUMNS: &[(i16, &str)] = &[
    (-1, "ctid"),
    (-2, "xmin"),
    (-3, "cmin"),
    (-4, "xmax"),
    (-5, "cmax"),
    (-6, "tableoid"),
];

/// PostgreSQL's FirstNormalObjectId: lower OIDs are the system's own (initdb's), never a user
/// relation.
const FIRST_USER_OID: u32 = 16384;

impl MaskedColumns {
    /// Whether the session traces relations by the catalog it read (column or field rules
    /// apply): one it did not hold then cannot be traced.
    fn traced(&self) -> bool {
        !self.known.is_empty() || self.fields
    }

    /// Nothing is masked by column, and no field rule applies.
    pub fn is_empty(&self) -> bool {
        self.by_field.is_empty() && !self.fields
    }

    /// How a result column read from `(table_oid, column)` is masked. A user relation the
    /// catalog did not hold when the session read it (a temporary table or view made since, say
    /// `CREATE TEMP VIEW v AS SELECT email AS x ...`) cannot be traced: its columns are redacted
    /// wherever column or field rules apply, until the client connects again.
    pub fn strategy(&self, table_oid: u32, column: i16) -> Option<MaskingStrategy> {
        match self.by_field.get(&(table_oid, column)) {
            Some(Mask::Whole(s)) => Some(*s),
            Some(Mask::Fields) => None,
            // Column 0: the whole row (`SELECT c FROM customers c`), masked columns included.
            None if column == 0 && self.relations.contains(&table_oid) => Some(MaskingStrategy::Redact),
            None if self.traced() && table_oid >= FIRST_USER_OID && !self.known.contains(&table_oid) => {
                Some(MaskingStrategy::Redact)
            }
            None => None,
        }
    }

    pub fn is_masked_name(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    pub fn has_masked_table(&self, table: &str) -> bool {
        self.tables.contains(table)
    }

    /// Whether `column` is a column of `table`, a relation with a masked column (a table's
    /// system columns included).
    pub fn has_column(&self, table: &str, column: &str) -> bool {
        self.columns_of.get(table).is_some_and(|c| c.contains(column))
    }

    /// Whether `table` is a user relation the catalog did not hold when it was read (only
    /// known when column or field rules apply).
    pub fn is_unknown(&self, table: &str) -> bool {
        self.traced()
            && !self.known_names.contains(table)
            && !table.starts_with("pg_catalog.")
            && !table.starts_with("information_schema.")
    }

    /// Whether rows of `table` hold masked columns: it has one, or is a view over one.
    pub fn holds_masked_rows(&self, table: &str) -> bool {
        self.tables.contains(table) || self.over_masked.contains(table)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("reading the upstream catalog: {0}")]
    Frame(#[from] FrameError),
    #[error("reading the upstream catalog: {0}")]
    Io(#[from] std::io::Error),
    #[error("the upstream refused the catalog query: {0}")]
    Refused(String),
}

/// Resolves the plan's column rules, and its JSON field rules' reach, against the upstream's
/// catalog.
pub async fn resolve(up: &mut Upstream, plan: &MaskingPlan) -> Result<MaskedColumns, CatalogError> {
    let mut masked = MaskedColumns::default();
    if !plan.has_column_rules() && !plan.has_field_rules() {
        return Ok(masked);
    }
    // Type OID -> whether its values are documents (else they hold documents inside).
    let mut json_types: HashMap<u32, bool> = HashMap::new();
    masked.fields = plan.has_field_rules();
    if masked.fields {
        for row in query(up, JSON_TYPES_SQL).await? {
            if let [oid, direct] = row.as_slice()
                && let Ok(oid) = oid.parse()
            {
                json_types.insert(oid, direct == "t");
            }
        }
    }
    let columns = query(up, COLUMNS_SQL).await?;
    masked.unmatched = plan.unmatched_column_rules(columns.iter().filter_map(|row| match row.as_slice() {
        [_, schema, table, _, column, ..] => Some((schema.as_str(), table.as_str(), column.as_str())),
        _ => None,
    }));
    let mut names: HashMap<(u32, i16), String> = HashMap::new();
    for row in &columns {
        let [oid, schema, table, attnum, column, kind, type_oid] = row.as_slice() else {
            continue;
        };
        let (Ok(oid), Ok(attnum)) = (oid.parse::<u32>(), attnum.parse::<i16>()) else {
            continue;
        };
        names.insert((oid, attnum), column.clone());
        masked.known.insert(oid);
        if kind != "v" && !names.contains_key(&(oid, -1)) {
            for (a, system) in SYSTEM_COLUMNS {
                names.insert((oid, *a), (*system).to_string());
            }
        }
        let mask = match plan.column_strategy(schema, table, column) {
            Some(s) => Some(Mask::Whole(s)),
            None => match type_oid.parse().ok().and_then(|t: u32| json_types.get(&t)) {
                Some(true) => Some(Mask::Fields),
                // An array or record of documents: field rules do not reach inside.
                Some(false) => Some(Mask::Whole(MaskingStrategy::Redact)),
                None => None,
            },
        };
        if let Some(mask) = mask {
            masked.by_field.insert((oid, attnum), mask);
            masked.names.insert(column.clone());
            masked.tables.insert(format!("{schema}.{table}"));
        }
    }
    let table_names: HashMap<u32, String> = columns
        .iter()
        .filter_map(|r| Some((r.first()?.parse().ok()?, format!("{}.{}", r.get(1)?, r.get(2)?))))
        .collect();
    // Each relation's columns, by name and in order, looked up per relation below.
    let mut by_name: HashMap<(u32, &str), i16> = HashMap::new();
    let mut by_relation: HashMap<u32, Vec<i16>> = HashMap::new();
    for ((oid, a), n) in names.iter().filter(|((_, a), _)| *a > 0) {
        by_name.insert((*oid, n.as_str()), *a);
        by_relation.entry(*oid).or_default().push(*a);
    }
    for columns in by_relation.values_mut() {
        columns.sort_unstable();
    }
    // Partitions and inheritance children hold the parent's rows under the same column names
    // (readable by naming them): they are masked as their parent is, at any depth. A parent
    // shows its children's rows too: a column masked on a partition or child is masked on its
    // ancestors.
    let mut children: Vec<(u32, u32)> = Vec::new();
    for row in query(up, INHERITANCE_SQL).await? {
        if let [child, parent] = row.as_slice()
            && let (Ok(child), Ok(parent)) = (child.parse(), parent.parse())
        {
            children.push((child, parent));
        }
    }
    // A generated column computed from a masked one holds its value, or part of it
    // (`lower(email)`): redacted, as a view's computed column is.
    let mut generated: Vec<(u32, i16, i16)> = Vec::new();
    for row in query(up, GENERATED_SQL).await? {
        if let [rel, column, source] = row.as_slice()
            && let (Ok(rel), Ok(column), Ok(source)) = (rel.parse(), column.parse(), source.parse())
        {
            generated.push((rel, column, source));
        }
    }
    loop {
        let mut found = Vec::new();
        for &(rel, column, source) in &generated {
            if masked.by_field.contains_key(&(rel, source)) {
                found.push((rel, column, Mask::Whole(MaskingStrategy::Redact)));
            }
        }
        for &(child, parent) in &children {
            for (from, to) in [(parent, child), (child, parent)] {
                for ((oid, a), strategy) in &masked.by_field {
                    let Some(name) = (*oid == from).then(|| names.get(&(*oid, *a))).flatten() else {
                        continue;
                    };
                    if let Some(c) = by_name.get(&(to, name.as_str())) {
                        found.push((to, *c, *strategy));
                    }
                }
            }
        }
        if !mask_all(&mut masked, found, &names, &table_names) {
            break;
        }
    }

    // (view, relation it reads).
    let mut dependencies: HashSet<(u32, u32)> = HashSet::new();
    for row in query(up, VIEW_DEPENDENCIES_SQL).await? {
        if let [view, base, _] = row.as_slice()
            && let (Ok(view), Ok(base)) = (view.parse(), base.parse())
        {
            dependencies.insert((view, base));
        }
    }
    // Views whose columns' sources cannot be told from their text: masked whole.
    let mut definitions: HashMap<u32, Option<Vec<ViewColumn>>> = HashMap::new();
    for row in query(up, OPAQUE_VIEWS_SQL).await? {
        if let Some(Ok(view)) = row.first().map(|v| v.parse::<u32>()) {
            definitions.insert(view, None);
        }
    }
    let opaque: Vec<u32> = definitions.keys().copied().collect();
    // Views of views: each round masks the views that read what the last one masked, until
    // nothing changes (strategies only ever strengthen, so this ends).
    let mut rounds = 0;
    loop {
        rounds += 1;
        // The masked columns each view reads, by name.
        let mut sources: HashMap<u32, HashMap<&str, Mask>> = HashMap::new();
        for view in &opaque {
            sources.entry(*view).or_default();
        }
        // Every masked column of a relation the view reads at all: a whole-row reference
        // (`c.*`) is recorded only as a dependency on the columns named beside it, if any.
        for (view, base) in &dependencies {
            for ((oid, a), s) in &masked.by_field {
                if oid == base
                    && let Some(name) = names.get(&(*oid, *a))
                {
                    let entry = sources.entry(*view).or_default();
                    let combined = entry.get(name.as_str()).map_or(*s, |e| strongest([*e, *s]));
                    entry.insert(name, combined);
                }
            }
        }
        let unread: Vec<u32> = sources
            .keys()
            .filter(|v| !definitions.contains_key(v))
            .copied()
            .collect();
        if !unread.is_empty() {
            let list: Vec<String> = unread.iter().map(u32::to_string).collect();
            let sql = format!(
                "SELECT c.oid, pg_catalog.pg_get_viewdef(c.oid) FROM pg_catalog.pg_class c WHERE c.oid IN ({})",
                list.join(",")
            );
            for row in query(up, &sql).await? {
                if let [oid, definition] = row.as_slice()
                    && let Ok(oid) = oid.parse()
                {
                    definitions.insert(oid, super::classify::view_column_sources(definition));
                }
            }
            // A view whose definition was not returned is read as one that cannot be traced.
            for v in unread {
                definitions.entry(v).or_insert(None);
            }
        }
        let mut found = Vec::new();
        for (view, read) in &sources {
            let traced = definitions.get(view).and_then(Option::as_ref);
            let columns = by_relation.get(view).map_or(&[][..], Vec::as_slice);
            match traced {
                // Untraceable (or past any sensible depth): every column of the view, redacted.
                Some(_) if rounds > MAX_VIEW_ROUNDS => {
                    found.extend(columns.iter().map(|a| (*view, *a, REDACT)));
                }
                None => found.extend(columns.iter().map(|a| (*view, *a, REDACT))),
                Some(outputs) => {
                    for (i, column) in outputs.iter().enumerate() {
                        let whole_row = column.mentions.iter().any(|m| m == "*");
                        let hits: Vec<Mask> = column
                            .mentions
                            .iter()
                            .filter_map(|m| read.get(m.as_str()).copied())
                            .collect();
                        if !whole_row && hits.is_empty() {
                            continue;
                        }
                        // A column shown as it is keeps its rule's strategy (a document, its
                        // field rules); one computed over masked values (or a whole row) is
                        // redacted, as computed columns are in results: a partial mask of
                        // `reverse(card)` shows what it hides, `doc->>'ssn'` a masked field.
                        let s = if column.bare && !whole_row {
                            strongest(hits)
                        } else {
                            REDACT
                        };
                        if let Ok(a) = i16::try_from(i + 1) {
                            found.push((*view, a, s));
                        }
                    }
                }
            }
        }
        if !mask_all(&mut masked, found, &names, &table_names) || rounds > MAX_VIEW_ROUNDS {
            break;
        }
    }
    masked.relations = masked.by_field.keys().map(|(oid, _)| *oid).collect();
    let mut over: HashSet<u32> = masked.relations.clone();
    loop {
        let before = over.len();
        for (view, base) in &dependencies {
            if over.contains(base) {
                over.insert(*view);
            }
        }
        if over.len() == before {
            break;
        }
    }
    masked.over_masked = over
        .iter()
        .filter(|oid| !masked.relations.contains(oid))
        .filter_map(|oid| table_names.get(oid).cloned())
        .collect();
    masked.known_names = table_names.values().cloned().collect();
    // The classifier reads an unqualified `pg_x` as `pg_catalog.pg_x`, which PostgreSQL searches
    // first; a user relation `public.pg_x` is what it finds when the catalog has none.
    for set in [
        &mut masked.tables,
        &mut masked.over_masked,
        &mut masked.known_names,
    ] {
        let aliases: Vec<String> = set
            .iter()
            .filter_map(|t| {
                t.strip_prefix("public.pg_")
                    .map(|rest| format!("pg_catalog.pg_{rest}"))
            })
            .collect();
        set.extend(aliases);
    }
    for ((oid, _), name) in &names {
        if masked.relations.contains(oid)
            && let Some(t) = table_names.get(oid)
        {
            masked
                .columns_of
                .entry(t.clone())
                .or_default()
                .insert(name.clone());
        }
    }
    let aliases: Vec<(String, HashSet<String>)> = masked
        .columns_of
        .iter()
        .filter_map(|(t, c)| {
            Some((
                format!("pg_catalog.pg_{}", t.strip_prefix("public.pg_")?),
                c.clone(),
            ))
        })
        .collect();
    masked.columns_of.extend(aliases);
    Ok(masked)
}

const REDACT: Mask = Mask::Whole(MaskingStrategy::Redact);

/// The strongest of several masks for one value: their common one, else Redact.
fn strongest(masks: impl IntoIterator<Item = Mask>) -> Mask {
    let all: HashSet<Mask> = masks.into_iter().collect();
    match all.len() {
        1 => all.into_iter().next().unwrap_or(REDACT),
        _ => REDACT,
    }
}

/// Masks each (relation, column) with its strategy, strengthening an existing one that differs;
/// whether anything changed.
fn mask_all(
    masked: &mut MaskedColumns,
    found: Vec<(u32, i16, Mask)>,
    names: &HashMap<(u32, i16), String>,
    table_names: &HashMap<u32, String>,
) -> bool {
    let mut changed = false;
    for (oid, a, s) in found {
        let existing = masked.by_field.get(&(oid, a)).copied();
        let next = existing.map_or(s, |e| strongest([e, s]));
        if existing == Some(next) {
            continue;
        }
        masked.by_field.insert((oid, a), next);
        changed = true;
        if let Some(n) = names.get(&(oid, a)) {
            // A statement computing over this column computes over masked data.
            masked.names.insert(n.clone());
        }
        if let Some(t) = table_names.get(&oid) {
            masked.tables.insert(t.clone());
        }
    }
    changed
}

/// Turns the server's JIT compilation off while the catalog is read (`false`), and back to the
/// session's own setting after (`true`). The catalog queries join large catalogs, whose cost
/// estimates pass `jit_above_cost` on big schemas: compiling them took 1.5 s of every session's
/// start, where running them takes milliseconds.
pub async fn jit(up: &mut Upstream, restore: bool) -> Result<(), CatalogError> {
    // Through pg_settings: servers before 11 have no `jit`, and `SET` would fail there.
    let sql = if restore {
        "SELECT pg_catalog.set_config(name, reset_val, false) FROM pg_catalog.pg_settings WHERE name = 'jit'"
    } else {
        "SELECT pg_catalog.set_config(name, 'off', false) FROM pg_catalog.pg_settings WHERE name = 'jit'"
    };
    query(up, sql).await.map(drop)
}

/// Runs one simple query during session setup and returns its rows as text.
async fn query(up: &mut Upstream, sql: &str) -> Result<Vec<Vec<String>>, CatalogError> {
    let mut out = BytesMut::new();
    Query { sql: sql.into() }.encode(&mut out);
    up.writer.write_all(&out).await?;
    up.writer.flush().await?;
    let mut rows = Vec::new();
    let mut error = None;
    loop {
        let f = up.reader.next().await?;
        match f.tag {
            backend::DATA_ROW => {
                let row = DataRow::parse(&f.body)?;
                rows.push(
                    row.values
                        .iter()
                        .map(|v| {
                            v.map(|b| String::from_utf8_lossy(b).into_owned())
                                .unwrap_or_default()
                        })
                        .collect(),
                );
            }
            backend::ERROR_RESPONSE => {
                let e = ErrorResponse::parse(&f.body)?;
                error = Some(e.message().unwrap_or("error").to_string());
            }
            backend::READY_FOR_QUERY => break,
            _ => {}
        }
    }
    match error {
        Some(e) => Err(CatalogError::Refused(e)),
        None => Ok(rows),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A document shown as it is keeps the field rules; combined with anything else, or with a
    /// column rule, the value is redacted; a column rule's own strategy stands alone.
    #[test]
    fn masks_combine_to_the_strongest() {
        let partial = Mask::Whole(MaskingStrategy::Partial);
        assert_eq!(strongest([Mask::Fields, Mask::Fields]), Mask::Fields);
        assert_eq!(strongest([partial, partial]), partial);
        assert_eq!(strongest([Mask::Fields, partial]), REDACT);
        assert_eq!(strongest([partial, Mask::Whole(MaskingStrategy::Hash)]), REDACT);
        assert_eq!(strongest([]), REDACT);
    }

    /// Field-masked documents are left to the field rules (no whole-value strategy), but their
    /// relation counts as masked: its whole rows are redacted and its columns' names are known.
    #[test]
    fn documents_are_masked_by_their_fields_and_their_rows_whole() {
        let mut masked = MaskedColumns::default();
        masked.by_field.insert((20000, 2), Mask::Fields);
        masked.by_field.insert((20000, 3), REDACT);
        masked.relations.insert(20000);
        masked.known.insert(20000);
        assert!(!masked.is_empty());
        assert_eq!(masked.strategy(20000, 2), None);
        assert_eq!(masked.strategy(20000, 3), Some(MaskingStrategy::Redact));
        assert_eq!(masked.strategy(20000, 1), None);
        assert_eq!(masked.strategy(20000, 0), Some(MaskingStrategy::Redact));
        // A relation made since the catalog was read is redacted whole.
        assert_eq!(masked.strategy(20001, 1), Some(MaskingStrategy::Redact));
    }

    /// Where field rules apply, a database that held no document when the session read it
    /// still has its guards on: a relation made since may hold documents.
    #[test]
    fn field_rules_keep_the_guards_on_with_nothing_masked_yet() {
        let mut masked = MaskedColumns::default();
        assert!(masked.is_empty());
        assert!(!masked.is_unknown("public.later"));
        masked.fields = true;
        assert!(!masked.is_empty());
        assert!(masked.is_unknown("public.later"));
        assert!(!masked.is_unknown("pg_catalog.pg_class"));
        assert_eq!(masked.strategy(20001, 1), Some(MaskingStrategy::Redact));
        assert_eq!(masked.strategy(1259, 1), None);
    }
}
