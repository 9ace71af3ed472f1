//! Operations: what a protocol module hands the policy engine to decide.

use agentgate_crds::policy::KubernetesVerb;
use hyper::http::HeaderMap;
use serde_json::Value;

use crate::protocol::postgres::classify::Statement;

/// One operation, in protocol terms.
#[derive(Debug)]
pub enum Operation<'a> {
    Http(HttpOperation<'a>),
    Kubernetes(KubernetesOperation<'a>),
    Sql(SqlOperation<'a>),
}

/// One SQL statement on a Postgres connection, as classified. A multi-statement text is decided
/// statement by statement.
#[derive(Clone, Copy, Debug)]
pub struct SqlOperation<'a> {
    pub statement: &'a Statement,
}

/// Characters of statement text kept in a summary.
const SUMMARY_SQL_CHARS: usize = 200;

/// An HTTP request on an HTTP connection, after normalization.
#[derive(Debug)]
pub struct HttpOperation<'a> {
    pub method: &'a str,
    /// The normalized path, exactly as it is forwarded (route prefix removed).
    pub path: &'a str,
    /// Query parameters, percent-decoded, in order, repeats kept.
    pub query: &'a [(String, String)],
    pub headers: &'a HeaderMap,
    pub body: BodyView<'a>,
    /// Parameters the upstream may read from the body alongside the query.
    pub params: BodyParams<'a>,
}

/// Parameters a request body carries as frameworks read them: Rails, Laravel, PHP's `$_REQUEST`
/// and Flask's `request.values` merge a form or JSON body's fields with the query's, so a query
/// condition must see them too (and a JSON-body condition the query).
#[derive(Clone, Copy, Debug)]
pub enum BodyParams<'a> {
    /// The body carries none: there is none, or no framework reads parameters from its type.
    None,
    /// The body's fields, named as in a query (`user[role]`, `tags[]`), in order.
    Read(&'a [(String, String)]),
    /// A body that may carry parameters the gateway did not read (multipart, or a form or JSON
    /// body it could not parse): restricting rules take it to, Allow rules to hold other values.
    Unread,
}

/// What the engine may read of a request body.
#[derive(Clone, Copy, Debug)]
pub enum BodyView<'a> {
    /// No body.
    Empty,
    /// The body parsed as JSON.
    Json(&'a Value),
    /// A body that is not (strict) JSON.
    NotJson,
    /// A body that was not read because no rule needed it.
    NotRead,
}

/// A Kubernetes API request, with attributes derived as the API server derives them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubernetesOperation<'a> {
    /// Never [`KubernetesVerb::Any`].
    pub verb: KubernetesVerb,
    /// `""` for the core group.
    pub api_group: &'a str,
    pub api_version: &'a str,
    pub resource: &'a str,
    pub subresource: Option<&'a str>,
    pub namespace: Option<&'a str>,
    pub name: Option<&'a str>,
}

impl Operation<'_> {
    /// A one-line summary for logs, errors and recordings (no bodies, no header values).
    pub fn summary(&self) -> String {
        match self {
            Operation::Http(h) => format!("{} {}", h.method, h.path),
            Operation::Kubernetes(k) => {
                let verb = serde_json::to_value(k.verb)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                let mut s = format!("{verb} ");
                if !k.api_group.is_empty() {
                    s.push_str(k.api_group);
                    s.push('/');
                }
                s.push_str(k.resource);
                if let Some(sub) = k.subresource {
                    s.push('/');
                    s.push_str(sub);
                }
                if let Some(ns) = k.namespace {
                    s.push_str(&format!(" in namespace {ns}"));
                }
                if let Some(n) = k.name {
                    s.push_str(&format!(" named {n}"));
                }
                s
            }
            Operation::Sql(q) => {
                let st = q.statement;
                let mut s = format!("{:?} ", st.kind());
                // One line: control characters (newlines, tabs) become spaces.
                let mut chars = st.text.chars().map(|c| if c.is_control() { ' ' } else { c });
                s.extend(chars.by_ref().take(SUMMARY_SQL_CHARS));
                if chars.next().is_some() {
                    s.push('…');
                }
                s
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sql_summaries_are_one_short_line() {
        let c = crate::protocol::postgres::classify::classify(&format!(
            "SELECT a,\n\tb FROM t WHERE c = '{}'",
            "x".repeat(300)
        ))
        .unwrap();
        let s = Operation::Sql(SqlOperation {
            statement: &c.statements[0],
        })
        .summary();
        assert!(s.starts_with("Select SELECT a,  b FROM t WHERE c = 'xxx"), "{s}");
        assert!(s.ends_with('…') && !s.contains('\n'));
        assert_eq!(s.chars().count(), "Select ".len() + SUMMARY_SQL_CHARS + 1);
    }
}
