//! The attributes of a Kubernetes API request (verb, group, version, namespace, resource,
//! subresource, name), derived from its method, path and query exactly as the API server's
//! `RequestInfoFactory` derives them (k8s.io/apiserver, `pkg/endpoints/request/requestinfo.go`).
//! The API server authorizes and serves a request on these attributes, so the policy must decide on
//! the same ones: a gateway that read `GET /api/v1/pods?watch=yes` as a `list` would let through a
//! watch the policy never allowed.
//!
//! Where the API server is lenient in ways an attacker can use, this module refuses instead:
//! repeated query parameters, `;` in the query, empty and dot path segments, and field selectors,
//! integers or `watch` values that the API server could read two ways. Every such request is one
//! the API server would reject or that no honest client sends.

use std::collections::HashSet;

use agentgate_crds::policy::KubernetesVerb;

/// Path prefixes of API groups: `/api` holds the core group (no group segment), `/apis` the others.
const CORE_PREFIX: &str = "api";
const GROUP_PREFIX: &str = "apis";

/// Verbs that can be given as the first segment after the version instead of by the method
/// (`/api/v1/watch/pods`, the deprecated `/api/v1/proxy/nodes/n1/...`).
const PATH_VERBS: &[&str] = &[WATCH_VERB, PROXY_VERB];

/// A path verb, and the verb of a list that asks to watch.
const WATCH_VERB: &str = "watch";

/// The path verb after which the API server reads no subresource: everything after the name is the
/// proxied path.
const PROXY_VERB: &str = "proxy";

/// Subresources of a namespace. `namespaces/<ns>/<x>` is the resource `x` in namespace `ns`, except
/// for these, which act on the namespace object itself.
const NAMESPACE_SUBRESOURCES: &[&str] = &["status", "finalize"];

/// List parameters the API server decodes as 64-bit integers: a request with an unparseable one is
/// refused by the API server too.
const INTEGER_LIST_PARAMETERS: &[&str] = &["limit", "timeoutSeconds"];

/// The field a field selector pins an object name with.
const NAME_FIELD: &str = "metadata.name";

/// What a request to a Kubernetes API server asks for, in the API server's own terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestInfo {
    /// Whether the request is for an API resource (or subresource). Other requests (`/version`,
    /// `/healthz`, `/openapi/v2`, discovery under `/api` and `/apis`) are authorized by path and verb.
    pub is_resource_request: bool,
    /// The path given.
    pub path: String,
    /// For resource requests: `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`,
    /// `deletecollection`, `proxy` (the deprecated `/proxy/` path prefix), or `""` for a method
    /// the API server has no verb for. For other requests: the HTTP method in lower case.
    pub verb: String,
    /// `api` or `apis` for resource requests; `""` for other requests, except `apis` for the group
    /// version discovery path `/apis/<group>/<version>` (the API server fills it in before it finds
    /// that the path is too short to name a resource).
    pub api_prefix: String,
    /// `""` for the core group.
    pub api_group: String,
    pub api_version: String,
    /// The namespace, for requests in one; for `namespaces/<name>` itself, that name.
    pub namespace: Option<String>,
    /// The resource (plural, as in the path), e.g. `pods`.
    pub resource: String,
    pub subresource: Option<String>,
    /// The object name, from the path or, for a list or watch, from a `metadata.name` field selector.
    pub name: Option<String>,
}

impl RequestInfo {
    /// Whether this is a discovery request: API discovery (`/api`, `/api/<version>`, `/apis`,
    /// `/apis/<group>`, `/apis/<group>/<version>`), `/version` or the OpenAPI documents
    /// (`/openapi/v2`, `/openapi/v3` and below). Clients need these and they carry no object
    /// data. Other non-resource paths (`/logs`, `/metrics`, `/debug/pprof`, `/healthz`, ...) are not.
    pub fn is_discovery(&self) -> bool {
        if self.is_resource_request {
            return false;
        }
        let Ok(segments) = split_path(&self.path) else {
            return false;
        };
        matches!(
            segments.as_slice(),
            [CORE_PREFIX]
                | [CORE_PREFIX, _]
                | [GROUP_PREFIX]
                | [GROUP_PREFIX, _]
                | [GROUP_PREFIX, _, _]
                | ["version"]
                | ["openapi", "v2"]
                | ["openapi", "v3", ..]
        )
    }

    /// The verb as the policy names it: `None` for non-resource requests and for verbs outside the
    /// eight the policy knows (`proxy`, or none at all); a policy never allows those.
    pub fn policy_verb(&self) -> Option<KubernetesVerb> {
        if !self.is_resource_request {
            return None;
        }
        Some(match self.verb.as_str() {
            "get" => KubernetesVerb::Get,
            "list" => KubernetesVerb::List,
            "watch" => KubernetesVerb::Watch,
            "create" => KubernetesVerb::Create,
            "update" => KubernetesVerb::Update,
            "patch" => KubernetesVerb::Patch,
            "delete" => KubernetesVerb::Delete,
            "deletecollection" => KubernetesVerb::Deletecollection,
            _ => return None,
        })
    }

    /// Whether the request opens a stream or tunnel (exec, attach, port-forward, proxy) rather than
    /// reading or writing objects: a streaming subresource, or the deprecated `/proxy/` path verb.
    pub fn is_streaming(&self) -> bool {
        self.is_resource_request
            && (self.verb == PROXY_VERB
                || self
                    .subresource
                    .as_deref()
                    .is_some_and(super::is_streaming_subresource))
    }
}

/// Why a request's attributes cannot be derived. The messages name query keys but never values.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestInfoError {
    #[error("the request path must start with '/'")]
    RelativePath,
    #[error("the request path has an empty segment ('//' or a trailing '/')")]
    EmptyPathSegment,
    #[error("the request path has a '.' or '..' segment")]
    DotSegment,
    #[error("the path names the verb {verb:?} but no resource after it")]
    MissingResource { verb: &'static str },
    #[error("query parameter {key:?} is given more than once")]
    DuplicateQueryParameter { key: String },
    #[error("query parameter {key:?} contains ';', which the API server reads as a broken pair and drops")]
    SemicolonInQuery { key: String },
    #[error("query parameter {key:?} is not a 64-bit decimal integer")]
    InvalidInteger { key: &'static str },
    #[error("query parameter \"watch\" has a non-ASCII value, which the API server can read two ways")]
    AmbiguousWatch,
    #[error("invalid fieldSelector: {reason}")]
    InvalidFieldSelector { reason: &'static str },
}

/// Derives the attributes of a request to a Kubernetes API server.
///
/// `path` is the normalized, percent-decoded path; `query` the decoded query pairs in order. Any
/// query key given twice is refused, on every request: the API server reads the first value of a
/// repeated parameter and a component in front of it may read another.
pub fn derive(method: &str, path: &str, query: &[(String, String)]) -> Result<RequestInfo, RequestInfoError> {
    check_query(query)?;
    let segments = split_path(path)?;

    let mut info = RequestInfo {
        is_resource_request: false,
        path: path.to_owned(),
        verb: method.to_ascii_lowercase(),
        api_prefix: String::new(),
        api_group: String::new(),
        api_version: String::new(),
        namespace: None,
        resource: String::new(),
        subresource: None,
        name: None,
    };

    // A resource path has at least a prefix, a version and a resource (and a group under /apis).
    let [prefix, rest @ ..] = segments.as_slice() else {
        return Ok(info);
    };
    if rest.len() < 2 {
        return Ok(info);
    }
    let grouped = match *prefix {
        CORE_PREFIX => false,
        GROUP_PREFIX => true,
        _ => return Ok(info),
    };
    info.api_prefix = (*prefix).to_owned();
    let mut rest = rest;
    if grouped {
        let [group, tail @ ..] = rest else {
            return Ok(info);
        };
        if tail.len() < 2 {
            return Ok(info);
        }
        info.api_group = (*group).to_owned();
        rest = tail;
    }
    let [version, rest @ ..] = rest else {
        return Ok(info);
    };
    info.is_resource_request = true;
    info.api_version = (*version).to_owned();

    // `/<verb>/...` names the verb in the path; otherwise the method does.
    let path_verb = rest
        .first()
        .and_then(|first| PATH_VERBS.iter().copied().find(|v| v == first));
    let (mut verb, rest) = match (path_verb, rest) {
        (Some(verb), [_]) => return Err(RequestInfoError::MissingResource { verb }),
        (Some(verb), [_, tail @ ..]) => (verb, tail),
        _ => (method_verb(method), rest),
    };

    // `namespaces/<ns>/<resource>/...` is a resource in a namespace, but `namespaces`,
    // `namespaces/<ns>` and `namespaces/<ns>/{status,finalize}` are the namespace resource itself.
    let parts = match rest {
        ["namespaces", namespace, tail @ ..] => {
            info.namespace = Some((*namespace).to_owned());
            match tail {
                [next, ..] if !NAMESPACE_SUBRESOURCES.contains(next) => tail,
                _ => rest,
            }
        }
        _ => rest,
    };

    // resource / name / subresource / anything further, which the API server does not interpret.
    let mut parts = parts.iter();
    info.resource = parts.next().map(|s| (*s).to_owned()).unwrap_or_default();
    info.name = parts.next().map(|s| (*s).to_owned());
    if verb != PROXY_VERB {
        info.subresource = parts.next().map(|s| (*s).to_owned());
    }

    let lists = verb == "get" && info.name.is_none();
    if lists || path_verb == Some(WATCH_VERB) {
        let list = decode_list_query(query)?;
        if lists {
            verb = if list.watch { WATCH_VERB } else { "list" };
            // A field selector narrows only lists and watches that did not name the verb in the path.
            info.name = list.selected_name;
        }
    }
    if verb == "delete" && info.name.is_none() {
        verb = "deletecollection";
    }
    info.verb = verb.to_owned();
    Ok(info)
}

/// The API server's verb for a method, before it looks at the path. Methods are case-sensitive.
fn method_verb(method: &str) -> &'static str {
    match method {
        "POST" => "create",
        "GET" | "HEAD" => "get",
        "PUT" => "update",
        "PATCH" => "patch",
        "DELETE" => "delete",
        _ => "",
    }
}

/// The segments of an absolute path; `/` has none. The HTTP layer removes dot segments; one left
/// here would be read as a name by the API server and resolved by any hop that cleans paths, so it
/// is refused.
fn split_path(path: &str) -> Result<Vec<&str>, RequestInfoError> {
    let rest = path.strip_prefix('/').ok_or(RequestInfoError::RelativePath)?;
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    let segments: Vec<&str> = rest.split('/').collect();
    for segment in &segments {
        match *segment {
            "" => return Err(RequestInfoError::EmptyPathSegment),
            "." | ".." => return Err(RequestInfoError::DotSegment),
            _ => {}
        }
    }
    Ok(segments)
}

/// Refuses repeated keys, and `;` anywhere: Go's query parser drops a whole `key=value` pair that
/// holds a raw `;`, so the API server would not see a pair the gateway decided on. (A decoded `;`
/// may have been `%3B`, which Go keeps; the refusal errs on the safe side.)
fn check_query(query: &[(String, String)]) -> Result<(), RequestInfoError> {
    let mut seen = HashSet::with_capacity(query.len());
    for (key, value) in query {
        if key.contains(';') || value.contains(';') {
            return Err(RequestInfoError::SemicolonInQuery { key: key.clone() });
        }
        if !seen.insert(key.as_str()) {
            return Err(RequestInfoError::DuplicateQueryParameter { key: key.clone() });
        }
    }
    Ok(())
}

fn query_value<'q>(query: &'q [(String, String)], key: &str) -> Option<&'q str> {
    query.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// What the API server's decoding of list options makes of a query.
struct ListQuery {
    watch: bool,
    /// The object name a `metadata.name=` field selector pins, when it is a valid path segment.
    selected_name: Option<String>,
}

/// Decodes the list options that decide the verb and name of a list or watch.
///
/// The API server falls back to "no name" when any list option fails to decode, and then refuses
/// the list itself with 400; here a bad field selector or integer is refused at once. An invalid
/// `labelSelector` is not checked: the API server then ignores the field selector when it derives
/// the name but refuses the request before serving it, so no data flows on the name derived here.
fn decode_list_query(query: &[(String, String)]) -> Result<ListQuery, RequestInfoError> {
    let watch = match query_value(query, "watch") {
        Some(value) => go_bool(value)?,
        None => false,
    };
    for key in INTEGER_LIST_PARAMETERS {
        if let Some(value) = query_value(query, key) {
            // Rust and Go (`strconv.ParseInt(s, 10, 64)`) accept the same strings: an optional sign
            // and ASCII digits, in range.
            value
                .parse::<i64>()
                .map_err(|_| RequestInfoError::InvalidInteger { key })?;
        }
    }
    let selected_name = match query_value(query, "fieldSelector") {
        Some(selector) => selector_exact_match(selector, NAME_FIELD)?
            .filter(|name| !name.is_empty() && is_path_segment_name(name)),
        None => None,
    };
    Ok(ListQuery { watch, selected_name })
}

/// A boolean query parameter as the API server reads it: false for `0` and any case of `false`,
/// true for anything else, the empty string included. A non-ASCII value is refused: the API
/// server compares it with Unicode case folding in one code path (where `falſe` is false) and after
/// lower-casing in another (where it is true).
fn go_bool(value: &str) -> Result<bool, RequestInfoError> {
    if !value.is_ascii() {
        return Err(RequestInfoError::AmbiguousWatch);
    }
    Ok(!(value == "0" || value.eq_ignore_ascii_case("false")))
}

/// Whether a name can stand as a path segment: the API server takes a field-selected name only then.
fn is_path_segment_name(name: &str) -> bool {
    name != "." && name != ".." && !name.contains('/') && !name.contains('%')
}

/// Parses a field selector as `fields.ParseSelector` does and returns the value its first (in the
/// sorted order of the terms' text) `field=value` or `field==value` term requires.
///
/// Grammar: terms separated by unescaped `,`; each term is `field op value` with op the first of
/// `!=`, `==`, `=` found scanning left to right; fields have no escapes; values escape `\`, `,` and
/// `=` with a backslash and may contain no other escape and no unescaped `,` or `=`. Empty terms are
/// skipped; an empty selector selects everything.
fn selector_exact_match(selector: &str, field: &str) -> Result<Option<String>, RequestInfoError> {
    let mut terms = split_terms(selector);
    terms.sort_unstable();
    let mut found = None;
    for term in terms.into_iter().filter(|t| !t.is_empty()) {
        let (lhs, equals, rhs) = split_term(term).ok_or(RequestInfoError::InvalidFieldSelector {
            reason: "a term has no operator (=, == or !=)",
        })?;
        let value = unescape_value(rhs)?;
        if equals && lhs == field && found.is_none() {
            found = Some(value);
        }
    }
    Ok(found)
}

/// Splits on the commas that are not escaped by a backslash; escapes stay in the terms.
fn split_terms(selector: &str) -> Vec<&str> {
    if selector.is_empty() {
        return Vec::new();
    }
    let mut terms = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (i, c) in selector.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == ',' {
            terms.push(&selector[start..i]);
            start = i + 1;
        }
    }
    terms.push(&selector[start..]);
    terms
}

/// Splits a term at its first operator: `(field, is_equality, raw value)`.
fn split_term(term: &str) -> Option<(&str, bool, &str)> {
    let bytes = term.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        match (b, bytes.get(i + 1)) {
            (b'!', Some(b'=')) => return Some((&term[..i], false, &term[i + 2..])),
            (b'=', Some(b'=')) => return Some((&term[..i], true, &term[i + 2..])),
            (b'=', _) => return Some((&term[..i], true, &term[i + 1..])),
            _ => {}
        }
    }
    None
}

fn unescape_value(raw: &str) -> Result<String, RequestInfoError> {
    let mut value = String::with_capacity(raw.len());
    let mut escaped = false;
    for c in raw.chars() {
        if escaped {
            if !matches!(c, '\\' | ',' | '=') {
                return Err(RequestInfoError::InvalidFieldSelector {
                    reason: "a value has an escape other than \\\\, \\, or \\=",
                });
            }
            value.push(c);
            escaped = false;
        } else {
            match c {
                '\\' => escaped = true,
                ',' | '=' => {
                    return Err(RequestInfoError::InvalidFieldSelector {
                        reason: "a value has an unescaped ',' or '='",
                    });
                }
                _ => value.push(c),
            }
        }
    }
    if escaped {
        return Err(RequestInfoError::InvalidFieldSelector {
            reason: "a value ends with a lone backslash",
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Derives the attributes of `"METHOD /path?key=value&key=value"`. Query values are taken
    /// literally (split at the first `=`), as the HTTP layer would hand them over decoded.
    fn run(request: &str) -> Result<RequestInfo, RequestInfoError> {
        let (method, target) = request.split_once(' ').expect("METHOD TARGET");
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let query: Vec<(String, String)> = query
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (k.to_owned(), v.to_owned())
            })
            .collect();
        derive(method, path, &query)
    }

    /// One line per request, e.g. `get api:/v1 ns=default pods/log name=p1`, or `non-resource get`.
    fn summary(info: &RequestInfo) -> String {
        if !info.is_resource_request {
            return format!("non-resource {}", info.verb);
        }
        let mut out = format!(
            "{} {}:{}/{}",
            info.verb, info.api_prefix, info.api_group, info.api_version
        );
        if let Some(ns) = &info.namespace {
            out.push_str(&format!(" ns={ns}"));
        }
        out.push(' ');
        out.push_str(&info.resource);
        if let Some(sub) = &info.subresource {
            out.push_str(&format!("/{sub}"));
        }
        if let Some(name) = &info.name {
            out.push_str(&format!(" name={name}"));
        }
        out
    }

    /// Each case is `"METHOD /path?query => summary"`.
    fn check(cases: &[&str]) {
        for case in cases {
            let (request, want) = case.split_once(" => ").expect("REQUEST => SUMMARY");
            let info = run(request).unwrap_or_else(|e| panic!("{request}: unexpected error: {e}"));
            assert_eq!(summary(&info), want, "{request}");
            assert_eq!(info.path, request.split([' ', '?']).nth(1).unwrap(), "{request}");
        }
    }

    #[test]
    fn core_and_group_resources() {
        check(&[
            "GET /api/v1/namespaces/default/pods => list api:/v1 ns=default pods",
            "GET /api/v1/namespaces/default/pods/p1 => get api:/v1 ns=default pods name=p1",
            "HEAD /api/v1/namespaces/default/pods/p1 => get api:/v1 ns=default pods name=p1",
            "HEAD /api/v1/namespaces/default/pods => list api:/v1 ns=default pods",
            "POST /api/v1/namespaces/default/pods => create api:/v1 ns=default pods",
            "PUT /api/v1/namespaces/default/pods/p1 => update api:/v1 ns=default pods name=p1",
            "PATCH /api/v1/namespaces/default/pods/p1 => patch api:/v1 ns=default pods name=p1",
            "DELETE /api/v1/namespaces/default/pods/p1 => delete api:/v1 ns=default pods name=p1",
            "GET /api/v1/pods => list api:/v1 pods",
            "GET /api/v1/secrets?limit=500&continue=abc => list api:/v1 secrets",
            "GET /api/v1/namespaces/kube-system/secrets/tok => get api:/v1 ns=kube-system secrets name=tok",
            "GET /apis/apps/v1/deployments => list apis:apps/v1 deployments",
            "GET /apis/apps/v1/namespaces/prod/deployments/web \
             => get apis:apps/v1 ns=prod deployments name=web",
            "POST /apis/batch/v1/namespaces/prod/jobs?dryRun=All => create apis:batch/v1 ns=prod jobs",
            "PATCH /apis/apps/v1/namespaces/prod/deployments/web?fieldManager=kubectl&force=true \
             => patch apis:apps/v1 ns=prod deployments name=web",
            "GET /apis/example.com/v1alpha1/namespaces/a/widgets \
             => list apis:example.com/v1alpha1 ns=a widgets",
            // The API server only records what the path says: a POST with a name is still create.
            "POST /api/v1/namespaces/default/pods/p1 => create api:/v1 ns=default pods name=p1",
            // A resource may be called `api` or `v1`; only the first segments are special.
            "GET /api/v1/api/v1 => get api:/v1 api name=v1",
        ]);
        assert_eq!(
            run("GET /apis/apps/v1/namespaces/prod/deployments/web").unwrap(),
            RequestInfo {
                is_resource_request: true,
                path: "/apis/apps/v1/namespaces/prod/deployments/web".into(),
                verb: "get".into(),
                api_prefix: "apis".into(),
                api_group: "apps".into(),
                api_version: "v1".into(),
                namespace: Some("prod".into()),
                resource: "deployments".into(),
                subresource: None,
                name: Some("web".into()),
            }
        );
    }

    #[test]
    fn cluster_scoped_resources() {
        check(&[
            "GET /api/v1/nodes => list api:/v1 nodes",
            "GET /api/v1/nodes/n1 => get api:/v1 nodes name=n1",
            "PATCH /api/v1/nodes/n1/status => patch api:/v1 nodes/status name=n1",
            "GET /api/v1/persistentvolumes => list api:/v1 persistentvolumes",
            "GET /apis/rbac.authorization.k8s.io/v1/clusterroles \
             => list apis:rbac.authorization.k8s.io/v1 clusterroles",
            "PUT /apis/rbac.authorization.k8s.io/v1/clusterroles/admin \
             => update apis:rbac.authorization.k8s.io/v1 clusterroles name=admin",
            "POST /apis/rbac.authorization.k8s.io/v1/clusterrolebindings \
             => create apis:rbac.authorization.k8s.io/v1 clusterrolebindings",
            "DELETE /apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.example.com \
             => delete apis:apiextensions.k8s.io/v1 customresourcedefinitions name=widgets.example.com",
        ]);
    }

    #[test]
    fn namespaces_are_both_scope_and_resource() {
        check(&[
            "GET /api/v1/namespaces => list api:/v1 namespaces",
            "POST /api/v1/namespaces => create api:/v1 namespaces",
            "DELETE /api/v1/namespaces => deletecollection api:/v1 namespaces",
            // The namespace object lives in its own namespace as far as authorization goes.
            "GET /api/v1/namespaces/foo => get api:/v1 ns=foo namespaces name=foo",
            "DELETE /api/v1/namespaces/foo => delete api:/v1 ns=foo namespaces name=foo",
            "PUT /api/v1/namespaces/foo/status => update api:/v1 ns=foo namespaces/status name=foo",
            "PUT /api/v1/namespaces/foo/finalize => update api:/v1 ns=foo namespaces/finalize name=foo",
            "GET /api/v1/namespaces/foo/status/extra => get api:/v1 ns=foo namespaces/status name=foo",
            // Anything else after the namespace name is a resource in it.
            "GET /api/v1/namespaces/foo/pods => list api:/v1 ns=foo pods",
            "GET /api/v1/namespaces/foo/configmaps/status => get api:/v1 ns=foo configmaps name=status",
            "GET /api/v1/namespaces/status/pods => list api:/v1 ns=status pods",
            "GET /api/v1/namespaces/foo/namespaces => list api:/v1 ns=foo namespaces",
            // The rule is the same under a group, and after the `watch` path verb.
            "GET /apis/apps/v1/namespaces/foo => get apis:apps/v1 ns=foo namespaces name=foo",
            "GET /api/v1/watch/namespaces => watch api:/v1 namespaces",
            "GET /api/v1/watch/namespaces/foo => watch api:/v1 ns=foo namespaces name=foo",
        ]);
    }

    #[test]
    fn subresources() {
        check(&[
            "POST /api/v1/namespaces/default/pods/p1/exec?command=sh&stdin=true \
             => create api:/v1 ns=default pods/exec name=p1",
            "GET /api/v1/namespaces/default/pods/p1/exec?command=sh \
             => get api:/v1 ns=default pods/exec name=p1",
            "POST /api/v1/namespaces/default/pods/p1/attach => create api:/v1 ns=default pods/attach name=p1",
            "POST /api/v1/namespaces/default/pods/p1/portforward?ports=8080 \
             => create api:/v1 ns=default pods/portforward name=p1",
            "GET /api/v1/namespaces/default/pods/p1/log?follow=true \
             => get api:/v1 ns=default pods/log name=p1",
            "PUT /api/v1/namespaces/default/pods/p1/status => update api:/v1 ns=default pods/status name=p1",
            "PATCH /api/v1/namespaces/default/pods/p1/ephemeralcontainers \
             => patch api:/v1 ns=default pods/ephemeralcontainers name=p1",
            "POST /api/v1/namespaces/default/pods/p1/eviction \
             => create api:/v1 ns=default pods/eviction name=p1",
            "POST /api/v1/namespaces/default/pods/p1/binding \
             => create api:/v1 ns=default pods/binding name=p1",
            "POST /api/v1/namespaces/default/serviceaccounts/sa/token \
             => create api:/v1 ns=default serviceaccounts/token name=sa",
            "GET /apis/apps/v1/namespaces/prod/deployments/web/scale \
             => get apis:apps/v1 ns=prod deployments/scale name=web",
            "PUT /apis/apps/v1/namespaces/prod/deployments/web/scale \
             => update apis:apps/v1 ns=prod deployments/scale name=web",
            "GET /api/v1/namespaces/default/services/svc:80/proxy \
             => get api:/v1 ns=default services/proxy name=svc:80",
            "POST /api/v1/namespaces/default/services/https:svc:443/proxy/api/v2/items \
             => create api:/v1 ns=default services/proxy name=https:svc:443",
            "GET /api/v1/namespaces/default/pods/p1/proxy/metrics \
             => get api:/v1 ns=default pods/proxy name=p1",
            // Everything after the subresource is the proxied path, not interpreted.
            "GET /api/v1/nodes/n1/proxy/some/path => get api:/v1 nodes/proxy name=n1",
            "DELETE /api/v1/nodes/n1/proxy/configz => delete api:/v1 nodes/proxy name=n1",
            "GET /api/v1/nodes/n1/proxy/namespaces/x/pods => get api:/v1 nodes/proxy name=n1",
            "GET /api/v1/namespaces/a/pods/p1/status/x/y => get api:/v1 ns=a pods/status name=p1",
        ]);
    }

    #[test]
    fn deprecated_proxy_verb_takes_no_subresource() {
        check(&[
            "GET /api/v1/proxy/nodes/n1 => proxy api:/v1 nodes name=n1",
            "GET /api/v1/proxy/nodes/n1/some/path => proxy api:/v1 nodes name=n1",
            "POST /api/v1/proxy/namespaces/default/pods/p1/exec => proxy api:/v1 ns=default pods name=p1",
            "DELETE /api/v1/proxy/namespaces/default/services => proxy api:/v1 ns=default services",
        ]);
        let info = run("GET /api/v1/proxy/nodes/n1/x").unwrap();
        assert_eq!(info.policy_verb(), None);
        assert!(info.is_streaming());
    }

    #[test]
    fn watch_path_prefix() {
        check(&[
            "GET /api/v1/watch/pods => watch api:/v1 pods",
            "GET /api/v1/watch/namespaces/x/pods => watch api:/v1 ns=x pods",
            "GET /api/v1/watch/namespaces/x/pods/p1 => watch api:/v1 ns=x pods name=p1",
            "GET /api/v1/watch/namespaces/x/pods/p1/status => watch api:/v1 ns=x pods/status name=p1",
            "GET /apis/apps/v1/watch/namespaces/x/deployments => watch apis:apps/v1 ns=x deployments",
            // The path verb wins over the method and the query.
            "GET /api/v1/watch/pods?watch=false => watch api:/v1 pods",
            "POST /api/v1/watch/pods => watch api:/v1 pods",
            "DELETE /api/v1/watch/namespaces/x/pods => watch api:/v1 ns=x pods",
            // A field selector does not name the object on the path-verb form.
            "GET /api/v1/watch/namespaces/x/secrets?fieldSelector=metadata.name=s1 \
             => watch api:/v1 ns=x secrets",
        ]);
        // The selector is still checked: the API server refuses the request when it is malformed.
        assert!(matches!(
            run("GET /api/v1/watch/pods?fieldSelector=nonsense"),
            Err(RequestInfoError::InvalidFieldSelector { .. })
        ));
    }

    #[test]
    fn watch_query_parameter() {
        check(&[
            "GET /api/v1/namespaces/default/pods?watch=true => watch api:/v1 ns=default pods",
            "GET /api/v1/namespaces/default/pods?watch=1 => watch api:/v1 ns=default pods",
            "GET /api/v1/namespaces/default/pods?watch=TRUE => watch api:/v1 ns=default pods",
            // Go's parameter decoding: anything but 0 and false (any case) is true, even "" and "no".
            "GET /api/v1/namespaces/default/pods?watch= => watch api:/v1 ns=default pods",
            "GET /api/v1/namespaces/default/pods?watch => watch api:/v1 ns=default pods",
            "GET /api/v1/namespaces/default/pods?watch=no => watch api:/v1 ns=default pods",
            "GET /api/v1/namespaces/default/pods?watch=false%20 => watch api:/v1 ns=default pods",
            "GET /api/v1/namespaces/default/pods?watch=false  => watch api:/v1 ns=default pods",
            "GET /api/v1/namespaces/default/pods?watch=00 => watch api:/v1 ns=default pods",
            "GET /api/v1/namespaces/default/pods?watch=false => list api:/v1 ns=default pods",
            "GET /api/v1/namespaces/default/pods?watch=False => list api:/v1 ns=default pods",
            "GET /api/v1/namespaces/default/pods?watch=FALSE => list api:/v1 ns=default pods",
            "GET /api/v1/namespaces/default/pods?watch=0 => list api:/v1 ns=default pods",
            // Keys are case-sensitive: the API server ignores `Watch`.
            "GET /api/v1/namespaces/default/pods?Watch=true => list api:/v1 ns=default pods",
            "HEAD /api/v1/namespaces/default/pods?watch=true => watch api:/v1 ns=default pods",
            "GET /api/v1/namespaces/default/pods?watch=1&resourceVersion=100&allowWatchBookmarks=true\
             &timeoutSeconds=300 => watch api:/v1 ns=default pods",
            "GET /api/v1/namespaces/default/pods?watch=true&sendInitialEvents=true\
             &resourceVersionMatch=NotOlderThan => watch api:/v1 ns=default pods",
            // Only a get without a name becomes list or watch.
            "GET /api/v1/namespaces/default/pods/p1?watch=true => get api:/v1 ns=default pods name=p1",
            "DELETE /api/v1/namespaces/default/pods?watch=true => deletecollection api:/v1 ns=default pods",
            "POST /api/v1/namespaces/default/pods?watch=true => create api:/v1 ns=default pods",
        ]);
        // A non-ASCII value would be read as false by one of the API server's code paths and true by
        // the other...
        for value in ["fal\u{17f}e", "tru\u{e9}"] {
            let request = format!("GET /api/v1/namespaces/default/pods?watch={value}");
            assert_eq!(run(&request), Err(RequestInfoError::AmbiguousWatch), "{request}");
        }
        // ... but only where the API server reads it.
        assert!(run("GET /api/v1/namespaces/default/pods/p1?watch=fal\u{17f}e").is_ok());
    }

    #[test]
    fn deletecollection() {
        check(&[
            "DELETE /api/v1/namespaces/default/pods => deletecollection api:/v1 ns=default pods",
            "DELETE /api/v1/namespaces/default/pods?labelSelector=app=web \
             => deletecollection api:/v1 ns=default pods",
            // A field selector never names the object of a deletecollection.
            "DELETE /api/v1/namespaces/default/secrets?fieldSelector=metadata.name=s1 \
             => deletecollection api:/v1 ns=default secrets",
            "DELETE /apis/apps/v1/deployments => deletecollection apis:apps/v1 deployments",
            "DELETE /api/v1/nodes => deletecollection api:/v1 nodes",
        ]);
    }

    #[test]
    fn field_selector_names_the_object_of_lists_and_watches() {
        check(&[
            "GET /api/v1/namespaces/a/secrets?fieldSelector=metadata.name=s1 \
             => list api:/v1 ns=a secrets name=s1",
            "GET /api/v1/namespaces/a/secrets?fieldSelector=metadata.name==s1 \
             => list api:/v1 ns=a secrets name=s1",
            // `kubectl get secret s1 -w`.
            "GET /api/v1/namespaces/a/secrets?fieldSelector=metadata.name=s1&watch=true \
             => watch api:/v1 ns=a secrets name=s1",
            "GET /api/v1/namespaces/a/secrets?fieldSelector=metadata.name=s1,type=Opaque \
             => list api:/v1 ns=a secrets name=s1",
            "GET /api/v1/namespaces/a/secrets?fieldSelector=type=Opaque,metadata.name=s1 \
             => list api:/v1 ns=a secrets name=s1",
            "GET /api/v1/namespaces/a/secrets?fieldSelector=metadata.name!=s1 => list api:/v1 ns=a secrets",
            "GET /api/v1/namespaces/a/secrets?fieldSelector=metadata.name!=s1,metadata.name=s2 \
             => list api:/v1 ns=a secrets name=s2",
            "GET /api/v1/namespaces/a/secrets?fieldSelector=type=Opaque => list api:/v1 ns=a secrets",
            "GET /api/v1/namespaces/a/secrets?fieldSelector=metadata.namespace=a \
             => list api:/v1 ns=a secrets",
            "GET /api/v1/namespaces/a/secrets?fieldSelector= => list api:/v1 ns=a secrets",
            "GET /api/v1/namespaces/a/secrets?fieldSelector=metadata.name= => list api:/v1 ns=a secrets",
            "GET /api/v1/namespaces/a/secrets?fieldSelector=,, => list api:/v1 ns=a secrets",
            // Terms are sorted before the first match is taken.
            "GET /api/v1/namespaces/a/secrets?fieldSelector=metadata.name=b,metadata.name=a \
             => list api:/v1 ns=a secrets name=a",
            // Fields are not trimmed: this term is about the field "metadata.name ".
            "GET /api/v1/namespaces/a/secrets?fieldSelector=metadata.name = s1 => list api:/v1 ns=a secrets",
            "GET /api/v1/namespaces/a/secrets?fieldSelector=Metadata.Name=s1 => list api:/v1 ns=a secrets",
            // Escapes in values.
            "GET /api/v1/namespaces/a/secrets?fieldSelector=metadata.name=a\\,b\\=c\\\\d \
             => list api:/v1 ns=a secrets name=a,b=c\\d",
            // Names that are not valid path segments are ignored, as the API server ignores them.
            "GET /api/v1/namespaces/a/secrets?fieldSelector=metadata.name=a/b => list api:/v1 ns=a secrets",
            "GET /api/v1/namespaces/a/secrets?fieldSelector=metadata.name=a%2Fb => list api:/v1 ns=a secrets",
            "GET /api/v1/namespaces/a/secrets?fieldSelector=metadata.name=.. => list api:/v1 ns=a secrets",
            "GET /api/v1/namespaces/a/secrets?fieldSelector=metadata.name=. => list api:/v1 ns=a secrets",
            "GET /api/v1/namespaces/a/secrets?fieldSelector=metadata.name=... \
             => list api:/v1 ns=a secrets name=...",
            // Cluster-wide and cluster-scoped lists too.
            "GET /api/v1/secrets?fieldSelector=metadata.name=s1 => list api:/v1 secrets name=s1",
            "GET /api/v1/namespaces?fieldSelector=metadata.name=kube-system \
             => list api:/v1 namespaces name=kube-system",
            // A named get ignores the selector; so does every other verb.
            "GET /api/v1/namespaces/a/secrets/s1?fieldSelector=metadata.name=s2 \
             => get api:/v1 ns=a secrets name=s1",
            "GET /api/v1/namespaces/a/secrets/s1?fieldSelector=garbage => get api:/v1 ns=a secrets name=s1",
            "POST /api/v1/namespaces/a/secrets?fieldSelector=metadata.name=s1 => create api:/v1 ns=a secrets",
            "PATCH /api/v1/namespaces/a/secrets?fieldSelector=garbage => patch api:/v1 ns=a secrets",
        ]);
    }

    #[test]
    fn malformed_list_options_are_refused() {
        for selector in [
            "nonsense",
            "metadata.name",
            "metadata.name=a=b",
            "metadata.name=s1,type",
            r"metadata.name=s1\",
            r"metadata.name=s1\x",
            "metadata.name=!=s1",
            "metadata.name!==s1",
            "a=b,metadata.name=s1,c",
        ] {
            for watch in ["false", "true"] {
                let request = format!("GET /api/v1/secrets?fieldSelector={selector}&watch={watch}");
                let got = run(&request);
                assert!(
                    matches!(got, Err(RequestInfoError::InvalidFieldSelector { .. })),
                    "{request}: {got:?}"
                );
            }
        }
        for query in [
            "limit=abc",
            "limit=",
            "limit",
            "limit=1.5",
            "limit=0x10",
            "limit= 1",
            "limit=99999999999999999999",
            "timeoutSeconds=5s",
            "watch=1&timeoutSeconds=",
        ] {
            let request = format!("GET /api/v1/secrets?{query}");
            assert!(
                matches!(run(&request), Err(RequestInfoError::InvalidInteger { .. })),
                "{request}"
            );
        }
        for query in [
            "limit=0",
            "limit=-1",
            "limit=+500",
            "limit=9223372036854775807",
            "timeoutSeconds=-5",
        ] {
            assert!(run(&format!("GET /api/v1/secrets?{query}")).is_ok(), "{query}");
        }
        // Only lists and watches decode list options.
        assert!(run("GET /api/v1/namespaces/a/secrets/s1?limit=abc").is_ok());
        assert!(run("DELETE /api/v1/namespaces/a/secrets?limit=abc").is_ok());
    }

    #[test]
    fn non_resource_requests() {
        for request in [
            "GET /",
            "GET /version",
            "GET /healthz",
            "GET /livez/etcd",
            "GET /readyz?verbose",
            "GET /metrics",
            "GET /openapi/v2",
            "GET /openapi/v3/apis/apps/v1?hash=ABC&watch=true",
            "GET /logs/kube-apiserver.log",
            "GET /api",
            "GET /api/v1",
            "GET /apis",
            "GET /apis/apps",
            "GET /apis/apps/v1",
            "POST /api/v1",
            "DELETE /healthz",
            "PATCH /version",
            "OPTIONS /version",
            // Prefixes are case-sensitive.
            "GET /API/v1/pods",
            "GET /Apis/apps/v1/deployments",
            "GET /apiss/apps/v1/deployments",
            "GET /prefix/api/v1/pods",
        ] {
            let info = run(request).unwrap();
            let (method, _) = request.split_once(' ').unwrap();
            assert_eq!(
                summary(&info),
                format!("non-resource {}", method.to_ascii_lowercase())
            );
            assert_eq!(info.policy_verb(), None, "{request}");
            assert!(!info.is_streaming());
            assert!(info.api_group.is_empty() && info.api_version.is_empty() && info.resource.is_empty());
            assert!(info.namespace.is_none() && info.name.is_none() && info.subresource.is_none());
        }
        // As in the API server, the group version discovery path keeps the prefix it had read.
        assert_eq!(run("GET /apis/apps/v1").unwrap().api_prefix, "apis");
        assert_eq!(run("GET /apis/apps").unwrap().api_prefix, "");
        assert_eq!(run("GET /api/v1").unwrap().api_prefix, "");
    }

    #[test]
    fn methods_without_a_verb() {
        for method in ["OPTIONS", "CONNECT", "TRACE", "get", "Post", "PROPFIND"] {
            let info = run(&format!("{method} /api/v1/namespaces/default/pods")).unwrap();
            assert!(info.is_resource_request);
            assert_eq!(info.verb, "", "{method}");
            assert_eq!(info.policy_verb(), None, "{method}");
        }
        check(&["OPTIONS /api/v1/namespaces/default/pods/p1 =>  api:/v1 ns=default pods name=p1"]);
    }

    #[test]
    fn policy_verbs() {
        use KubernetesVerb::*;
        for (request, verb) in [
            ("GET /api/v1/pods", List),
            ("GET /api/v1/pods?watch=1", Watch),
            ("GET /api/v1/watch/pods", Watch),
            ("GET /api/v1/namespaces/a/pods/p", Get),
            ("POST /api/v1/namespaces/a/pods", Create),
            ("PUT /api/v1/namespaces/a/pods/p", Update),
            ("PATCH /api/v1/namespaces/a/pods/p", Patch),
            ("DELETE /api/v1/namespaces/a/pods/p", Delete),
            ("DELETE /api/v1/namespaces/a/pods", Deletecollection),
        ] {
            assert_eq!(run(request).unwrap().policy_verb(), Some(verb), "{request}");
        }
    }

    #[test]
    fn streaming_requests() {
        for request in [
            "POST /api/v1/namespaces/a/pods/p/exec",
            "GET /api/v1/namespaces/a/pods/p/exec",
            "POST /api/v1/namespaces/a/pods/p/attach",
            "GET /api/v1/namespaces/a/pods/p/portforward",
            "GET /api/v1/namespaces/a/pods/p/proxy/x",
            "GET /api/v1/namespaces/a/services/s/proxy",
            "GET /api/v1/nodes/n1/proxy/some/path",
            "GET /api/v1/proxy/nodes/n1",
        ] {
            assert!(run(request).unwrap().is_streaming(), "{request}");
        }
        for request in [
            "GET /api/v1/namespaces/a/pods/p/log",
            "PATCH /api/v1/namespaces/a/pods/p/ephemeralcontainers",
            "GET /api/v1/namespaces/a/pods/exec",
            "GET /api/v1/namespaces/a/exec",
            "GET /healthz",
        ] {
            assert!(!run(request).unwrap().is_streaming(), "{request}");
        }
    }

    #[test]
    fn repeated_query_parameters_are_refused() {
        for (request, key) in [
            ("GET /api/v1/namespaces/a/pods?watch=false&watch=true", "watch"),
            ("GET /api/v1/namespaces/a/pods?watch=true&watch=true", "watch"),
            (
                "GET /api/v1/namespaces/a/pods?fieldSelector=metadata.name=a&fieldSelector=metadata.name=b",
                "fieldSelector",
            ),
            (
                "GET /api/v1/namespaces/a/pods?limit=1&continue=x&limit=2",
                "limit",
            ),
            ("POST /api/v1/namespaces/a/pods?dryRun=All&dryRun=", "dryRun"),
            (
                "PATCH /api/v1/namespaces/a/pods/p1?fieldManager=a&fieldManager=b",
                "fieldManager",
            ),
            (
                "POST /api/v1/namespaces/a/pods/p1/exec?command=ls&command=-l",
                "command",
            ),
            ("GET /openapi/v2?x=1&x=1", "x"),
            ("GET /api/v1/namespaces/a/pods?=&=", ""),
        ] {
            assert_eq!(
                run(request),
                Err(RequestInfoError::DuplicateQueryParameter { key: key.to_owned() }),
                "{request}"
            );
        }
        // Different case, different key, as in Go's url.Values.
        assert!(run("GET /api/v1/namespaces/a/pods?watch=false&Watch=true").is_ok());
    }

    #[test]
    fn semicolons_in_the_query_are_refused() {
        for request in [
            "GET /api/v1/namespaces/a/pods?watch=true;x",
            "GET /api/v1/namespaces/a/pods?watch;x=true",
            "GET /api/v1/namespaces/a/pods?limit=1&a=;",
            "GET /healthz?x=;",
        ] {
            assert!(
                matches!(run(request), Err(RequestInfoError::SemicolonInQuery { .. })),
                "{request}"
            );
        }
    }

    #[test]
    fn malformed_paths_are_refused() {
        for path in [
            "//api/v1/pods",
            "/api//v1/pods",
            "/api/v1//pods",
            "/api/v1/pods/",
            "/api/v1/namespaces//pods",
            "/api/v1/namespaces/default/pods//",
            "/healthz/",
            "//",
        ] {
            assert_eq!(
                derive("GET", path, &[]),
                Err(RequestInfoError::EmptyPathSegment),
                "{path}"
            );
        }
        for path in [
            "/api/v1/namespaces/a/secrets/../configmaps",
            "/api/v1/namespaces/a/pods/..",
            "/api/./v1/pods",
            "/..",
            "/healthz/.",
        ] {
            assert_eq!(
                derive("GET", path, &[]),
                Err(RequestInfoError::DotSegment),
                "{path}"
            );
        }
        // Dots inside a segment are names like any other.
        check(&["GET /api/v1/namespaces/a/configmaps/...x => get api:/v1 ns=a configmaps name=...x"]);
        for path in ["", "api/v1/pods", "*", "http://host/api/v1/pods"] {
            assert_eq!(
                derive("GET", path, &[]),
                Err(RequestInfoError::RelativePath),
                "{path}"
            );
        }
        for (path, verb) in [
            ("/api/v1/watch", "watch"),
            ("/api/v1/proxy", "proxy"),
            ("/apis/apps/v1/watch", "watch"),
        ] {
            assert_eq!(
                derive("GET", path, &[]),
                Err(RequestInfoError::MissingResource { verb }),
                "{path}"
            );
        }
    }

    #[test]
    fn errors_name_keys_but_not_values() {
        let err = run("GET /api/v1/secrets?fieldSelector=metadata.name=hunter2=x").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let err = run("GET /api/v1/secrets?limit=hunter2").unwrap_err();
        assert_eq!(
            err.to_string(),
            "query parameter \"limit\" is not a 64-bit decimal integer"
        );
        let query = [
            ("dryRun\n".to_owned(), "a".to_owned()),
            ("dryRun\n".to_owned(), "b".to_owned()),
        ];
        let err = derive("POST", "/api/v1/pods", &query).unwrap_err();
        assert_eq!(
            err.to_string(),
            "query parameter \"dryRun\\n\" is given more than once"
        );
    }

    #[test]
    fn selector_parsing_matches_fields_parse_selector() {
        // (selector, the metadata.name it requires; Err for a parse error)
        for (selector, want) in [
            ("", Ok(None)),
            ("metadata.name=a", Ok(Some("a"))),
            ("metadata.name==a", Ok(Some("a"))),
            ("metadata.name!=a", Ok(None)),
            ("=", Ok(None)),
            ("==", Ok(None)),
            ("!=", Ok(None)),
            ("x!y=1,metadata.name=z", Ok(Some("z"))),
            ("metadata.name=\u{e9}t\u{e9}", Ok(Some("\u{e9}t\u{e9}"))),
            (r"metadata.name=\\", Ok(Some(r"\"))),
            (r"a=\,,metadata.name=n", Ok(Some("n"))),
            (r"metadata.name=x\,y", Ok(Some("x,y"))),
            (r"metadata.name\=x=y", Err(())),
            ("metadata.name=a,", Ok(Some("a"))),
            (",metadata.name=a", Ok(Some("a"))),
            ("metadata.name", Err(())),
            ("a!b", Err(())),
        ] {
            let got = selector_exact_match(selector, NAME_FIELD).map_err(|_| ());
            assert_eq!(got, want.map(|o| o.map(str::to_owned)), "{selector:?}");
        }
    }

    #[test]
    fn hostile_paths_and_queries_are_refused_or_derived_without_panic() {
        let seeds: [&[u8]; 4] = [
            b"/api/v1/namespaces/default/pods/web-0/exec?command=sh&stdin=true&container=app",
            b"/apis/apps/v1/namespaces/prod/deployments/web/scale?dryRun=All&fieldManager=x",
            b"/api/v1/pods?watch=true&labelSelector=app%3Dweb&fieldSelector=metadata.name%3Dx,spec.nodeName!%3Dn",
            b"/apis/rbac.authorization.k8s.io/v1/clusterroles/admin/status?resourceVersion=1&limit=5",
        ];
        crate::mutate::each_mutant(&seeds, 2_000, |b| {
            let s = String::from_utf8_lossy(b);
            let (path, query) = match s.split_once('?') {
                Some((p, q)) => (p, Some(q)),
                None => (&*s, None),
            };
            let Ok(target) = crate::protocol::http::normalize::normalize(path, query) else {
                return;
            };
            for method in ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
                if let Ok(info) = derive(method, &target.path, &target.query) {
                    let _ = info.policy_verb();
                    let _ = info.is_streaming();
                }
            }
        });
    }
}
