//! Which result columns a session's column masking rules cover, resolved once per session from
//! the upstream's catalog: a result field names its source by (table OID, attribute number), so
//! rules written as `schema.table.column` are turned into that form. Views resolve through
//! pg_depend to the base columns they read: a view column is masked when it reads a masked base
//! column of the same name, or when a rule names the view's column itself.

use std::collections::{HashMap, HashSet};

use agentgate_crds::policy::MaskingStrategy;
use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use super::message::data_row::DataRow;
use super::message::error_response::ErrorResponse;
use super::message::query::Query;
use super::message::{FrameError, backend};
use super::upstream::Upstream;
use crate::masking::MaskingPlan;

/// Every column of every user relation, with its schema and table.
const COLUMNS_SQL: &str = "SELECT c.oid, n.nspname, c.relname, a.attnum, a.attname, c.relkind \
     FROM pg_catalog.pg_attribute a \
     JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r','p','v','m','f') \
     AND n.nspname NOT IN ('pg_catalog','information_schema') AND n.nspname NOT LIKE 'pg_toast%'";

/// (view, base table, base attribute) for every column a view's rule reads.
const VIEW_DEPENDENCIES_SQL: &str = "SELECT DISTINCT r.ev_class, d.refobjid, d.refobjsubid \
     FROM pg_catalog.pg_rewrite r \
     JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::regclass AND d.objid = r.oid \
     WHERE d.refclassid = 'pg_catalog.pg_class'::regclass AND d.refobjsubid > 0 AND d.refobjid <> r.ev_class";

/// The masked columns of one session.
#[derive(Debug, Default)]
pub struct MaskedColumns {
    by_field: HashMap<(u32, i16), MaskingStrategy>,
    /// Lowercase names of masked columns, for statements that compute over them.
    names: HashSet<String>,
    /// `schema.table` of relations with a masked column.
    tables: HashSet<String>,
}

impl MaskedColumns {
    pub fn is_empty(&self) -> bool {
        self.by_field.is_empty()
    }

    pub fn strategy(&self, table_oid: u32, column: i16) -> Option<MaskingStrategy> {
        self.by_field.get(&(table_oid, column)).copied()
    }

    pub fn is_masked_name(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    pub fn has_masked_table(&self, table: &str) -> bool {
        self.tables.contains(table)
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

/// Resolves the plan's column rules against the upstream's catalog.
pub async fn resolve(up: &mut Upstream, plan: &MaskingPlan) -> Result<MaskedColumns, CatalogError> {
    let mut masked = MaskedColumns::default();
    if !plan.has_column_rules() {
        return Ok(masked);
    }
    let columns = query(up, COLUMNS_SQL).await?;
    let mut names: HashMap<(u32, i16), String> = HashMap::new();
    for row in &columns {
        let [oid, schema, table, attnum, column, _kind] = row.as_slice() else {
            continue;
        };
        let (Ok(oid), Ok(attnum)) = (oid.parse::<u32>(), attnum.parse::<i16>()) else {
            continue;
        };
        names.insert((oid, attnum), column.clone());
        if let Some(s) = plan.column_strategy(schema, table, column) {
            masked.by_field.insert((oid, attnum), s);
            masked.names.insert(column.to_lowercase());
            masked.tables.insert(format!("{schema}.{table}"));
        }
    }
    let table_names: HashMap<u32, String> = columns
        .iter()
        .filter_map(|r| Some((r.first()?.parse().ok()?, format!("{}.{}", r.get(1)?, r.get(2)?))))
        .collect();
    for row in query(up, VIEW_DEPENDENCIES_SQL).await? {
        let [view, base, attnum] = row.as_slice() else {
            continue;
        };
        let (Ok(view), Ok(base), Ok(attnum)) =
            (view.parse::<u32>(), base.parse::<u32>(), attnum.parse::<i16>())
        else {
            continue;
        };
        let Some(strategy) = masked.by_field.get(&(base, attnum)).copied() else {
            continue;
        };
        let Some(base_name) = names.get(&(base, attnum)).cloned() else {
            continue;
        };
        // The view's columns of the same name read the masked base column.
        let view_columns: Vec<i16> = names
            .iter()
            .filter(|((oid, _), n)| *oid == view && **n == base_name)
            .map(|((_, a), _)| *a)
            .collect();
        for a in view_columns {
            masked.by_field.entry((view, a)).or_insert(strategy);
        }
        if let Some(t) = table_names.get(&view) {
            masked.tables.insert(t.clone());
        }
    }
    Ok(masked)
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
