//! Operations: what a protocol module hands the policy engine to decide.

use agentgate_crds::policy::KubernetesVerb;
use hyper::http::HeaderMap;
use serde_json::Value;

/// One operation, in protocol terms.
#[derive(Debug)]
pub enum Operation<'a> {
    Http(HttpOperation<'a>),
    Kubernetes(KubernetesOperation<'a>),
}

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
        }
    }
}
