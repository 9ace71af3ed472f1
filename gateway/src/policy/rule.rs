//! One policy rule compiled into a matcher over [`Operation`]s.
//!
//! Conditions that read request data the gateway could not interpret (a body that is not JSON, a
//! repeated query parameter) are resolved against the rule's action: an Allow rule does not match
//! what it cannot read, a Deny or RequireApproval rule does. Ambiguity never widens access.

use agentgate_crds::policy::{
    Action, HttpMatch, HttpMethod, KubernetesMatch, KubernetesVerb, PolicyRule, SqlMatch, StatementKind,
};
use serde_json::Value;

use super::glob::Glob;
use super::operation::{BodyParams, BodyView, HttpOperation, KubernetesOperation, Operation};
use super::schedule::Schedule;
use crate::protocol::postgres::classify::Statement;

/// A compiled rule matcher: exactly one protocol.
#[derive(Debug)]
pub enum Matcher {
    Http(HttpMatcher),
    Kubernetes(KubernetesMatcher),
    Sql(SqlMatcher),
}

/// A compiled rule: matcher, schedule and action.
#[derive(Debug)]
pub struct CompiledMatcher {
    pub matcher: Matcher,
    pub schedule: Option<Schedule>,
}

/// Problems found while compiling, as (field path below the rule, message).
pub type RuleErrors = Vec<(String, String)>;

/// Compiles `rule`; field paths in errors are relative to the rule (`http.paths[0]`).
pub fn compile(rule: &PolicyRule) -> Result<CompiledMatcher, RuleErrors> {
    let mut errors = RuleErrors::new();
    let matcher = if let Some(http) = &rule.http {
        Matcher::Http(HttpMatcher::compile(http, &mut errors))
    } else if let Some(k) = &rule.kubernetes {
        Matcher::Kubernetes(KubernetesMatcher::compile(k, &mut errors))
    } else if let Some(sql) = &rule.sql {
        Matcher::Sql(SqlMatcher::compile(sql, rule.action, &mut errors))
    } else {
        errors.push((String::new(), "set exactly one of http, kubernetes or sql".into()));
        Matcher::Sql(SqlMatcher::compile(
            &SqlMatch::default(),
            rule.action,
            &mut errors,
        ))
    };
    let schedule = match rule.schedule.as_ref().map(Schedule::compile).transpose() {
        Ok(s) => s,
        Err(e) => {
            errors.push(("schedule".into(), e));
            None
        }
    };
    if errors.is_empty() {
        Ok(CompiledMatcher { matcher, schedule })
    } else {
        Err(errors)
    }
}

impl CompiledMatcher {
    /// Whether the rule matches `op` at Unix time `now`, given the rule's `action`.
    pub fn matches(&self, action: Action, op: &Operation<'_>, now: i64) -> bool {
        if let Some(s) = &self.schedule
            && !s.in_force(now)
        {
            return false;
        }
        match (&self.matcher, op) {
            (Matcher::Http(m), Operation::Http(op)) => m.matches(action, op),
            (Matcher::Kubernetes(m), Operation::Kubernetes(op)) => m.matches(action, op),
            (Matcher::Sql(m), Operation::Sql(op)) => m.matches(action, op.statement),
            _ => false,
        }
    }

    /// Whether matching needs the request body parsed.
    pub fn needs_body(&self) -> bool {
        matches!(&self.matcher, Matcher::Http(m) if !m.json_body.is_empty())
    }

    /// Whether matching needs the parameters of a form or JSON body ([`BodyParams`]): a query
    /// condition reads them, and so does a JSON-body condition.
    pub fn needs_params(&self) -> bool {
        matches!(&self.matcher, Matcher::Http(m) if !m.query.is_empty() || !m.json_body.is_empty())
    }

    /// Whether an Allow rule's row cap reaches `op` at Unix time `now`: the statement reads one
    /// of the rule's tables or calls one of its functions, whatever its kind (the cap of a rule
    /// listing only SELECT also bounds `COPY t TO STDOUT` and `UPDATE t ... RETURNING *`) and
    /// whatever else it reads. A rule naming neither reaches every statement.
    pub fn reaches(&self, op: &Operation<'_>, now: i64) -> bool {
        if let Some(s) = &self.schedule
            && !s.in_force(now)
        {
            return false;
        }
        match (&self.matcher, op) {
            (Matcher::Sql(m), Operation::Sql(q)) => m.reaches(q.statement),
            _ => self.matches(Action::Deny, op, now),
        }
    }

    /// The row limit of an Allow rule's `sql.rowLimit`.
    pub fn row_limit(&self) -> Option<u64> {
        match &self.matcher {
            Matcher::Sql(m) => m.row_limit,
            _ => None,
        }
    }
}

/// Bit per method, so a set test is one AND.
fn method_bit(m: &str) -> u8 {
    match m {
        "GET" => 1,
        "HEAD" => 2,
        "POST" => 4,
        "PUT" => 8,
        "PATCH" => 16,
        "DELETE" => 32,
        "OPTIONS" => 64,
        // Any other method is matched only by rules that list no methods.
        _ => 128,
    }
}

fn method_name(m: HttpMethod) -> &'static str {
    match m {
        HttpMethod::GET => "GET",
        HttpMethod::HEAD => "HEAD",
        HttpMethod::POST => "POST",
        HttpMethod::PUT => "PUT",
        HttpMethod::PATCH => "PATCH",
        HttpMethod::DELETE => "DELETE",
        HttpMethod::OPTIONS => "OPTIONS",
    }
}

/// One step of a JSON body path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

/// HTTP conditions, compiled.
#[derive(Debug)]
pub struct HttpMatcher {
    /// 0 means any method.
    methods: u8,
    pub(crate) paths: Vec<Glob>,
    query: Vec<(String, Glob)>,
    /// Lowercase header names.
    headers: Vec<(String, Glob)>,
    json_body: Vec<(Vec<Step>, Vec<Glob>)>,
}

impl HttpMatcher {
    fn compile(h: &HttpMatch, errors: &mut RuleErrors) -> Self {
        let methods = h
            .methods
            .iter()
            .fold(0, |acc, m| acc | method_bit(method_name(*m)));
        fn glob(errors: &mut RuleErrors, field: String, r: Result<Glob, String>) -> Option<Glob> {
            r.map_err(|e| errors.push((field, e))).ok()
        }
        let paths = (h.paths.iter().enumerate())
            .filter_map(|(i, p)| glob(errors, format!("http.paths[{i}]"), normalized_path_glob(p)))
            .collect();
        let query = (h.query.iter())
            .filter_map(|(k, v)| {
                Some((
                    k.clone(),
                    glob(errors, format!("http.query.{k}"), Glob::value(v))?,
                ))
            })
            .collect();
        let headers = (h.headers.iter())
            .filter_map(|(k, v)| {
                Some((
                    k.to_ascii_lowercase(),
                    glob(errors, format!("http.headers.{k}"), Glob::value(v))?,
                ))
            })
            .collect();
        let mut json_body = Vec::new();
        for (i, c) in h.json_body.iter().enumerate() {
            let Some(path) = parse_json_path(&c.path) else {
                errors.push((
                    format!("http.jsonBody[{i}].path"),
                    format!("{:?} is not a path like $.a.b or $.items[0]", c.path),
                ));
                continue;
            };
            let values = (c.values.iter().enumerate())
                .filter_map(|(j, v)| glob(errors, format!("http.jsonBody[{i}].values[{j}]"), Glob::value(v)))
                .collect();
            json_body.push((path, values));
        }
        Self {
            methods,
            paths,
            query,
            headers,
            json_body,
        }
    }

    fn matches(&self, action: Action, op: &HttpOperation<'_>) -> bool {
        // Deny and RequireApproval match on any matching value; Allow needs all of them to match.
        let strict = action == Action::Allow;
        // Servers run GET's handler for HEAD (its effects and headers): a rule that restricts
        // GET restricts HEAD too. Allow grants only the methods it names.
        let mut bits = method_bit(op.method);
        if !strict && bits == method_bit("HEAD") {
            bits |= method_bit("GET");
        }
        // A method outside the standard ones (WebDAV's MOVE and COPY, OData's MERGE, PURGE) is
        // a write to whoever serves it: a restricting rule that names any write method names it.
        const WRITES: u8 = 4 | 8 | 16 | 32;
        if !strict && bits == method_bit("OTHER") && self.methods & WRITES != 0 {
            bits |= self.methods & WRITES;
        }
        if self.methods != 0 && self.methods & bits == 0 {
            return false;
        }
        if !self.paths.is_empty() && !self.paths.iter().any(|g| path_matches(g, op.path, strict)) {
            return false;
        }
        for (name, glob) in &self.query {
            // Every key an upstream may read as this one counts as a repeat of it. A condition
            // that names a bracketed key (`page[size]`) means that key, not its siblings, but
            // also its array and map forms (`page[size][]`, `page[size][0]`), which qs and Rack
            // read as holding its value.
            let brackets = name.contains('[');
            let wanted = query_key(name, !brackets);
            // (Past a key's last `]`, PHP and qs drop what follows: `filter[deleted]x` is
            // `filter[deleted]` to them.)
            let named = |k: &str| {
                k == name
                    || query_key(k, !brackets) == wanted
                    || (name.ends_with(']')
                        && k.len() > name.len()
                        && k.is_char_boundary(name.len())
                        && query_key(&k[..name.len()], false) == wanted)
            };
            let in_query = (op.query.iter())
                .filter(|(k, _)| named(k))
                .map(|(_, v)| v.as_str());
            // Frameworks that merge a body's fields with the query's read `force=true` in a form
            // as `?force=true` (and let it override the query's): repeats of it, too.
            let body: &[(String, String)] = match op.params {
                BodyParams::None => &[],
                BodyParams::Read(p) => p,
                BodyParams::Unread if strict => return false,
                BodyParams::Unread => continue,
            };
            let mut in_body = (body.iter()).filter(|(k, _)| named(k)).map(|(_, v)| v.as_str());
            let holds = if strict {
                values_match(in_query, glob, true) && in_body.all(|v| glob.matches(v))
            } else {
                values_match(in_query.chain(in_body), glob, false)
            };
            if !holds {
                return false;
            }
        }
        for (name, glob) in &self.headers {
            // `X_Dry_Run` is `X-Dry-Run` to a CGI-style upstream (Rack, PHP): a repeat of it.
            let values = op
                .headers
                .iter()
                .filter(|(k, _)| {
                    k.as_str() == name || (k.as_str().contains('_') && k.as_str().replace('_', "-") == *name)
                })
                .map(|(_, v)| header_text(v));
            if !values_match(values, glob, strict) {
                return false;
            }
        }
        if !self.json_body.is_empty() {
            let body = match op.body {
                BodyView::Json(v) => Some(v),
                // A body the gateway could not read matches only rules that restrict.
                BodyView::NotJson | BodyView::NotRead => return !strict,
                BodyView::Empty => None,
            };
            for (path, globs) in &self.json_body {
                let found = match body.map(|b| lookup(b, path)) {
                    Some(Lookup::Found(v)) => Some(v),
                    Some(Lookup::Missing) | None => None,
                    // Two keys an upstream could take for this one: Deny still matches.
                    Some(Lookup::Ambiguous) => return !strict,
                };
                // Where Rails would wrap the body under the path's first key (none spelt
                // exactly so), a restricting rule reads it so too.
                let wrapped = match body.map(|b| wrapped_lookup(b, path)) {
                    _ if strict => None,
                    Some(Lookup::Found(v)) => Some(v),
                    Some(Lookup::Missing) | None => None,
                    Some(Lookup::Ambiguous) => return true,
                };
                if wrapped.is_some_and(|v| json_value_matches(v, globs, false) != Some(false)) {
                    continue;
                }
                // Rails and Laravel read `?role=admin` (or a form field) as the body's `role`
                // where the body has none, and Flask's merged values prefer the query's.
                let param_matches = |t: &str| {
                    globs.is_empty()
                        || globs
                            .iter()
                            .any(|g| g.matches(t) || (!strict && restricting_match(g, t)))
                };
                let mut named = named_params(path, op).map(|(_, v)| v.as_str());
                let holds = match found {
                    Some(v) if strict => {
                        json_value_matches(v, globs, true) == Some(true) && named.all(param_matches)
                    }
                    // A structure never equals a scalar glob; Deny still matches what it cannot
                    // compare.
                    Some(v) => json_value_matches(v, globs, false) != Some(false) || named.any(param_matches),
                    None if strict => false,
                    None => matches!(op.params, BodyParams::Unread) || named.any(param_matches),
                };
                if !holds {
                    return false;
                }
            }
        }
        true
    }
}

/// Whether a JSON value matches a condition's globs (any; no globs: it exists). `None` for a
/// structure, which never equals a scalar glob.
fn json_value_matches(value: &Value, globs: &[Glob], strict: bool) -> Option<bool> {
    if globs.is_empty() {
        return Some(true);
    }
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Null | Value::Bool(_) | Value::Number(_) => value.to_string(),
        _ => return None,
    };
    // A number an upstream reads as a float (JavaScript, Python, Go's `interface{}`) is one value
    // however written: `1e3` and `1000.0` are `1000` to a restricting rule; .NET reads an enum
    // case-insensitively.
    let integral = (!strict)
        .then(|| value.as_f64())
        .flatten()
        .filter(|f| f.fract() == 0.0 && f.abs() < 9.007_199_254_740_992e15)
        .map(|f| format!("{f:.0}"));
    // An Allow rule's `true` or `false` is a JSON boolean: the string `"false"` is truthy to
    // JavaScript and Python handlers.
    let string_boolean = strict && matches!(value, Value::String(s) if boolean_of(s).is_some());
    let matches = |t: &str| {
        globs.iter().any(|g| {
            if string_boolean && boolean_of(g.as_str()).is_some() && g.is_literal() {
                return false;
            }
            g.matches(t) || (!strict && restricting_match(g, t))
        })
    };
    Some(matches(&text) || integral.as_deref().is_some_and(matches))
}

/// Whether a restricting rule's value `glob` matches `v` as some upstream reads `v`: whatever
/// its case (.NET enums, case-insensitive collations), and as a boolean however spelt (see
/// [`boolean_readings`]).
fn restricting_match(glob: &Glob, v: &str) -> bool {
    if glob.matches_ignoring_case(v) {
        return true;
    }
    match (
        glob.is_literal().then(|| boolean_of(glob.as_str())).flatten(),
        boolean_readings(v),
    ) {
        (Some(wanted), (as_true, as_false)) => (wanted && as_true) || (!wanted && as_false),
        _ => false,
    }
}

/// The boolean a spelling stands for to the frameworks that agree on it (Spring's
/// StringToBoolean, Go's ParseBool, Laravel's `boolean()`, PHP's FILTER_VALIDATE_BOOLEAN), blanks
/// around it trimmed as they trim them; `None` for anything else.
fn boolean_of(v: &str) -> Option<bool> {
    match v
        .trim_matches([' ', '\t', '\n', '\r'])
        .to_ascii_lowercase()
        .as_str()
    {
        "true" | "1" | "yes" | "on" | "t" | "y" => Some(true),
        "false" | "0" | "no" | "off" | "f" | "n" => Some(false),
        _ => None,
    }
}

/// Which booleans some framework reads `v` as: (true, false). Rails' cast reads as false only
/// `0 f F false FALSE off OFF`, so `no`, `n` and `False` are true to it and false to the rest.
fn boolean_readings(v: &str) -> (bool, bool) {
    const RAILS_FALSE: [&str; 7] = ["0", "f", "F", "false", "FALSE", "off", "OFF"];
    match boolean_of(v) {
        Some(true) => (true, false),
        Some(false) => (
            !RAILS_FALSE.contains(&v.trim_matches([' ', '\t', '\n', '\r'])),
            true,
        ),
        None => (false, false),
    }
}

/// The query parameters and body fields a framework reads as the JSON path `path`: `$.role` is
/// `role` (and `role[]`), `$.profile.login` is `profile[login]`, `$.items[0].id` `items[0][id]`.
fn named_params<'o>(path: &[Step], op: &'o HttpOperation<'_>) -> impl Iterator<Item = &'o (String, String)> {
    let mut name = String::new();
    for (i, step) in path.iter().enumerate() {
        match (i, step) {
            (0, Step::Key(k)) => name.push_str(k),
            (_, Step::Key(k)) => name.push_str(&format!("[{k}]")),
            (_, Step::Index(n)) => name.push_str(&format!("[{n}]")),
        }
    }
    let single = path.len() == 1;
    let wanted = query_key(&name, single);
    let body: &'o [(String, String)] = match op.params {
        BodyParams::Read(p) => p,
        _ => &[],
    };
    op.query.iter().chain(body).filter(move |(k, _)| {
        let k = if single {
            k.as_str()
        } else {
            k.strip_suffix("[]").unwrap_or(k)
        };
        query_key(k, single) == wanted
    })
}

/// A path glob, which must be written as request paths are decided: normalized (see
/// `protocol::http::normalize`). Written otherwise (`%40` for `@`, a raw `é`, `//`, a dot
/// segment) it would never match, and a Deny rule that never matches fails open.
fn normalized_path_glob(pattern: &str) -> Result<Glob, String> {
    // Wildcards stand as a character normalization leaves alone.
    let probe = pattern.replace("**", "x").replace(['*', '?'], "x");
    match crate::protocol::http::normalize::normalize(&probe, None) {
        Ok(t) if t.path == probe => Glob::path(pattern),
        Ok(t) => Err(format!(
            "path glob {pattern:?} is not written as request paths are decided (normalized: percent-escapes of characters that may stand raw decoded, others in upper-case hex, no empty or dot segments), so it would never match; its literal parts normalize to {:?}",
            t.path
        )),
        Err(e) => Err(format!(
            "path glob {pattern:?} can never match: no request path that reaches a policy looks like it ({})",
            e.0
        )),
    }
}

/// Whether a path glob matches. Allow rules match the path exactly as it is forwarded. Many
/// upstreams route paths ignoring case (Express, ASP.NET), a trailing slash (Express, Laravel)
/// or a format suffix (Rails' `(.:format)`, Spring's suffix matching), so for Deny and
/// RequireApproval rules `/api/v1/Users/1/` and `/api/v1/users/1.json` are also
/// `/api/v1/users/1` and `/api/v1/users/1/`: an ambiguity never widens access.
fn path_matches(glob: &Glob, path: &str, strict: bool) -> bool {
    if glob.matches(path) {
        return true;
    }
    if strict {
        return false;
    }
    let trimmed = match path.trim_end_matches('/') {
        "" => "/",
        t => t,
    };
    let slashed = |p: &str| glob.matches_ignoring_case(&format!("{}/", p.trim_end_matches('/')));
    glob.matches_ignoring_case(path)
        || glob.matches_ignoring_case(trimmed)
        || slashed(trimmed)
        || without_format(trimmed).any(|p| glob.matches_ignoring_case(p) || slashed(p))
}

/// `path` without a format suffix on its last segment (`/users/1.json` is `/users/1`): what
/// follows its first dot, as Rails' `(.:format)` (a segment is `[^./?]+`, its format anything
/// after) and Spring's suffix match read it (`roles.a_b`, `roles.x.y` are `roles`), and what
/// follows its last (`x.tar.gz` is `x.tar` too); each after a non-empty name.
pub fn without_format(path: &str) -> impl Iterator<Item = &str> {
    let last = path.rfind('/').map_or(0, |i| i + 1);
    let name = &path[last..];
    // A dot ending the segment too: Spring's `{x}.*` takes an empty suffix.
    let stem = |dot: Option<usize>| dot.filter(|&d| d > 0).map(|d| &path[..last + d]);
    let first = stem(name.find('.'));
    let second = stem(name.rfind('.')).filter(|s| Some(*s) != first);
    first.into_iter().chain(second)
}

/// At least one value must exist; then any (restricting rules) or all (Allow) must match.
fn values_match<V: AsRef<str>>(values: impl Iterator<Item = V>, glob: &Glob, all: bool) -> bool {
    let mut seen = false;
    for v in values {
        let v = v.as_ref();
        seen = true;
        // A restricting rule's value matches whatever its case: `?role=Admin` is `admin` to an
        // upstream that compares without it (.NET enums, case-insensitive collations); and a
        // boolean however spelt (`?force=1` is `true` to Spring, Go, Rails and Laravel).
        let m = glob.matches(v) || (!all && restricting_match(glob, v));
        if all && !m {
            return false;
        }
        if !all && m {
            return true;
        }
    }
    seen && all
}

fn parse_json_path(p: &str) -> Option<Vec<Step>> {
    let mut rest = p.strip_prefix('$')?;
    let mut steps = Vec::new();
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            if end == 0 {
                return None;
            }
            steps.push(Step::Key(r[..end].to_string()));
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']')?;
            steps.push(Step::Index(r[..end].parse().ok()?));
            rest = &r[end + 1..];
        } else {
            return None;
        }
    }
    (!steps.is_empty()).then_some(steps)
}

enum Lookup<'v> {
    Found(&'v Value),
    Missing,
    Ambiguous,
}

/// The value at `path`, with keys matched as Go's `encoding/json` and ASP.NET Core match them:
/// case-insensitively (`{"ROLE":"admin"}` sets a Go upstream's `role`). An exact key alone is
/// found directly; several keys that fold to the step's are ambiguous.
/// `path` as Rails' ParamsWrapper reads a JSON body without its first key (`{"role": "admin"}`
/// is `params[:user][:role]` where the body has no `user`, spelt so exactly): the rest of the
/// path, looked up in the body itself.
fn wrapped_lookup<'v>(body: &'v Value, path: &[Step]) -> Lookup<'v> {
    match (path.first(), body.as_object()) {
        (Some(Step::Key(first)), Some(object)) if path.len() > 1 && !object.contains_key(first) => {
            lookup(body, &path[1..])
        }
        _ => Lookup::Missing,
    }
}

fn lookup<'v>(mut v: &'v Value, path: &[Step]) -> Lookup<'v> {
    for step in path {
        let next = match step {
            Step::Key(k) => {
                let Some(object) = v.as_object() else {
                    return Lookup::Missing;
                };
                let folded = fold_case(k);
                let mut matches = object.iter().filter(|(key, _)| fold_case(key) == folded);
                match (matches.next(), matches.next()) {
                    (Some((_, value)), None) => Some(value),
                    (Some(_), Some(_)) => return Lookup::Ambiguous,
                    (None, _) => None,
                }
            }
            Step::Index(i) => v.as_array().and_then(|a| a.get(*i)),
        };
        match next {
            Some(n) => v = n,
            None => return Lookup::Missing,
        }
    }
    Lookup::Found(v)
}

/// A query key as the frameworks an upstream may run on read it: case-insensitively (ASP.NET
/// Core), with a bracketed suffix dropped (`a[]`, `a[0]`, `a[x]` are all `a`, as an array or map,
/// to PHP, Rack and Express's `qs`), leading brackets and a stray `]` after the name dropped
/// (`[force]` and `force]` are `force` to Rack and `qs`), and with `.`, space and an unclosed
/// `[` read as `_` and leading spaces dropped (PHP, which makes `?include.deleted=1` its
/// `include_deleted`).
fn query_key(k: &str, strip_brackets: bool) -> String {
    let k = k.trim_start_matches(' ');
    let base = if strip_brackets {
        let k = k.trim_start_matches(['[', ']']);
        match k.find('[') {
            Some(i) if k[i..].contains(']') => k[..i].trim_end_matches(']'),
            Some(_) => k,
            None => k.trim_end_matches(']'),
        }
    } else {
        k
    };
    fold_case(base)
        .chars()
        .map(|c| if matches!(c, '.' | ' ' | '[') { '_' } else { c })
        .collect()
}

/// A header value as text: bytes past ASCII read as Latin-1, as Node and Python's WSGI read
/// them, so `production\xA0` is judged as what such an upstream sees (which `.strip()` makes
/// `production`), not as a replacement character no rule names.
fn header_text(v: &hyper::header::HeaderValue) -> std::borrow::Cow<'_, str> {
    match v.to_str() {
        Ok(s) => s.into(),
        Err(_) => v.as_bytes().iter().map(|&b| b as char).collect::<String>().into(),
    }
}

/// Case folding as Go's `strings.EqualFold` needs it here: lowercase, and the long s and the
/// Kelvin sign, which fold to `s` and `k`.
fn fold_case(s: &str) -> String {
    s.chars()
        .flat_map(char::to_lowercase)
        .map(|c| if c == '\u{17F}' { 's' } else { c })
        .collect()
}

/// Kubernetes conditions, compiled, in RBAC's terms.
#[derive(Debug)]
pub struct KubernetesMatcher {
    /// Empty means every verb.
    verbs: Vec<KubernetesVerb>,
    /// `None` means any group.
    api_groups: Option<Vec<String>>,
    pub(crate) resources: Vec<Glob>,
    /// `None`: only requests without a subresource. `Some(empty)`: any subresource, or none.
    subresources: Option<Vec<String>>,
    /// Of the subresources an Allow grants only by name, those named next to `*`.
    named_with_any: Vec<String>,
    namespaces: Vec<Glob>,
    names: Vec<Glob>,
}

impl KubernetesMatcher {
    fn compile(k: &KubernetesMatch, errors: &mut RuleErrors) -> Self {
        let verbs = if k.verbs.contains(&KubernetesVerb::Any) {
            Vec::new()
        } else {
            k.verbs.clone()
        };
        let api_groups = (!k.api_groups.is_empty() && !k.api_groups.iter().any(|g| g == "*"))
            .then(|| k.api_groups.clone());
        let subresources = if k.subresources.is_empty() {
            None
        } else if k.subresources.iter().any(|s| s == "*") {
            Some(Vec::new())
        } else {
            Some(k.subresources.clone())
        };
        let named_with_any = k
            .subresources
            .iter()
            .filter(|s| crate::protocol::kubernetes::NAMED_ONLY_SUBRESOURCES.contains(&s.as_str()))
            .cloned()
            .collect();
        for (i, r) in k.resources.iter().enumerate() {
            // RBAC writes `deployments/scale`; here the subresource has its own field, and such
            // an entry would match nothing (a Deny written so would do nothing).
            if let Some((resource, sub)) = r.split_once('/') {
                errors.push((
                    format!("kubernetes.resources[{i}]"),
                    format!(
                        "{r:?} names a subresource: write resources: [{resource}] and subresources: [{sub}]"
                    ),
                ));
            }
        }
        let mut globs = |field: &str, list: &[String]| -> Vec<Glob> {
            let mut out = Vec::new();
            for (i, v) in list.iter().enumerate() {
                match Glob::value(v) {
                    Ok(g) => out.push(g),
                    Err(e) => errors.push((format!("kubernetes.{field}[{i}]"), e)),
                }
            }
            out
        };
        let resources = globs("resources", &k.resources);
        let namespaces = globs("namespaces", &k.namespaces);
        let names = globs("names", &k.names);
        Self {
            verbs,
            api_groups,
            resources,
            subresources,
            named_with_any,
            namespaces,
            names,
        }
    }

    fn matches(&self, action: Action, op: &KubernetesOperation<'_>) -> bool {
        if !self.verbs.is_empty() && !self.verbs.contains(&op.verb) {
            return false;
        }
        if let Some(groups) = &self.api_groups
            && !groups.iter().any(|g| g == op.api_group)
        {
            return false;
        }
        if !self.resources.is_empty() && !self.resources.iter().any(|g| g.matches(op.resource)) {
            return false;
        }
        // A Deny or RequireApproval over every resource covers their subresources too, as RBAC's
        // `*` does: `resources: ['*']` in kube-system must stop `pods/exec` there.
        let every_resource = self.resources.is_empty() || self.resources.iter().any(|g| g.as_str() == "*");
        match (&self.subresources, op.subresource) {
            (None, Some(_)) if action == Action::Allow || !every_resource => return false,
            (Some(list), Some(sub)) if !list.is_empty() && !list.iter().any(|s| s == sub) => return false,
            (Some(list), Some(sub))
                if list.is_empty()
                    && action == Action::Allow
                    && crate::protocol::kubernetes::NAMED_ONLY_SUBRESOURCES.contains(&sub)
                    && !self.named_with_any.iter().any(|s| s == sub) =>
            {
                return false;
            }
            // Named subresources only: `pods` itself is not `pods/exec`.
            (Some(list), None) if !list.is_empty() => return false,
            _ => {}
        }
        // A Deny or RequireApproval that names namespaces or names also covers a request that
        // names none: a list or watch across all namespaces, a collection's list, watch or
        // delete, a create (its name is in the body) reach the very objects the rule names, and
        // ambiguity never widens access. A built-in resource that lives in no namespace is in
        // none of the rule's.
        let widen = action != Action::Allow;
        if !self.namespaces.is_empty() {
            match op.namespace {
                Some(ns) if self.namespaces.iter().any(|g| g.matches(ns)) => {}
                None if widen
                    && !crate::protocol::kubernetes::is_cluster_scoped(op.api_group, op.resource) => {}
                _ => return false,
            }
        }
        if !self.names.is_empty() {
            match op.name {
                Some(n) if self.names.iter().any(|g| g.matches(n)) => {}
                None if widen => {}
                _ => return false,
            }
        }
        true
    }
}

/// SQL conditions, compiled. An Allow rule needs every kind, table and function of the statement
/// to be listed; a Deny or RequireApproval rule needs one of them.
#[derive(Debug)]
pub struct SqlMatcher {
    /// Expanded (`Ddl` is Create, Alter, Drop, Truncate, Grant, Revoke); empty means any.
    pub(crate) statements: Vec<StatementKind>,
    /// (schema, table) globs; an unqualified pattern is in `public`.
    tables: Vec<(Glob, Glob)>,
    functions: Vec<Glob>,
    without_where: bool,
    writes: bool,
    row_limit: Option<u64>,
}

/// Statement kinds that do not write by themselves.
pub const READING_KINDS: [StatementKind; 9] = [
    StatementKind::Select,
    StatementKind::Show,
    StatementKind::Explain,
    StatementKind::Transaction,
    StatementKind::Prepare,
    StatementKind::Execute,
    StatementKind::Deallocate,
    StatementKind::Listen,
    StatementKind::Set,
];

/// What `Ddl` stands for in a rule.
pub const DDL_KINDS: [StatementKind; 6] = [
    StatementKind::Create,
    StatementKind::Alter,
    StatementKind::Drop,
    StatementKind::Truncate,
    StatementKind::Grant,
    StatementKind::Revoke,
];

impl SqlMatcher {
    fn compile(m: &SqlMatch, action: Action, errors: &mut RuleErrors) -> Self {
        let mut statements = Vec::new();
        for k in &m.statements {
            let expanded: &[StatementKind] = if *k == StatementKind::Ddl {
                &DDL_KINDS
            } else {
                std::slice::from_ref(k)
            };
            for e in expanded {
                if !statements.contains(e) {
                    statements.push(*e);
                }
            }
        }
        let mut tables = Vec::new();
        for (i, t) in m.tables.iter().enumerate() {
            let (schema, table) = t.split_once('.').unwrap_or(("public", t));
            match (Glob::value(schema), Glob::value(table)) {
                (Ok(s), Ok(t)) if !table.is_empty() && !schema.is_empty() => tables.push((s, t)),
                (Err(e), _) | (_, Err(e)) => errors.push((format!("sql.tables[{i}]"), e)),
                _ => errors.push((
                    format!("sql.tables[{i}]"),
                    format!("{t:?} is not a table pattern like orders, public.orders or billing.*"),
                )),
            }
        }
        let mut functions = Vec::new();
        for (i, f) in m.functions.iter().enumerate() {
            match Glob::value(f) {
                Ok(g) => functions.push(g),
                Err(e) => errors.push((format!("sql.functions[{i}]"), e)),
            }
        }
        if m.row_limit.is_some() && action != Action::Allow {
            errors.push((
                "sql.rowLimit".into(),
                "rowLimit only applies to Allow rules".into(),
            ));
        }
        let row_limit = match m.row_limit.map(u64::try_from) {
            Some(Ok(n)) if n > 0 => Some(n),
            Some(_) => {
                errors.push(("sql.rowLimit".into(), "rowLimit must be at least 1".into()));
                None
            }
            None => None,
        };
        Self {
            statements,
            tables,
            functions,
            without_where: m.without_where,
            writes: m.writes,
            row_limit,
        }
    }

    fn matches(&self, action: Action, st: &Statement) -> bool {
        // Allow needs every element to match, Deny and RequireApproval any one.
        let all = action == Action::Allow;
        if self.without_where && !st.without_where {
            return false;
        }
        // An Allow rule that lists only reading kinds does not allow a statement that may write
        // (a SELECT calling a volatile function, SELECT ... FOR UPDATE): the kind alone would
        // hide the write. A rule that lists functions has named every function it allows.
        if all
            && st.writes
            && self.functions.is_empty()
            && !self.statements.is_empty()
            && self.statements.iter().all(|k| READING_KINDS.contains(k))
        {
            return false;
        }
        // Likewise a rule scoped to tables does not allow a write whose tables the gateway cannot
        // see: a statement that names no table, or one calling code that is not built in and
        // read-only (`UPDATE orders ... FROM (SELECT billing.mark_paid(1)) x` writes billing).
        if all
            && st.writes
            && (st.tables.is_empty() || st.opaque_calls)
            && !self.tables.is_empty()
            && self.functions.is_empty()
        {
            return false;
        }
        if self.writes && !st.writes {
            return false;
        }
        // A change of role (`SET ROLE`, `RESET ROLE`, `SET SESSION AUTHORIZATION`) names no
        // table or function, yet changes what every later statement may do: a rule scoped to
        // tables or functions allows it only by listing it. `DISCARD ALL` and `RESET ALL`
        // (which pools send to reset a connection) return to the login role, if anything.
        if all
            && self.statements.is_empty()
            && (!self.tables.is_empty() || !self.functions.is_empty())
            && st.kinds.contains(&StatementKind::SetRole)
            && !st.settings.iter().any(|s| s == "*")
        {
            return false;
        }
        fn listed(all: bool, mut items: impl Iterator<Item = bool>) -> bool {
            if all { items.all(|m| m) } else { items.any(|m| m) }
        }
        if !self.statements.is_empty() && !listed(all, st.kinds.iter().map(|k| self.statements.contains(k))) {
            return false;
        }
        if !self.tables.is_empty() {
            // A statement that changes relations it does not name (`DROP SCHEMA billing
            // CASCADE`) may change the rule's: no Allow allows it, whatever functions it names,
            // and a Deny or RequireApproval reaches it.
            if st.unnamed_tables {
                if all {
                    return false;
                }
            } else if !listed(all, st.tables.iter().map(|t| self.table_matches(t, all))) {
                return false;
            }
        }
        if !self.functions.is_empty()
            && !listed(
                all,
                st.functions
                    .iter()
                    .map(|f| self.functions.iter().any(|g| g.matches(f))),
            )
        {
            return false;
        }
        true
    }

    /// See [`CompiledMatcher::reaches`].
    fn reaches(&self, st: &Statement) -> bool {
        if self.tables.is_empty() && self.functions.is_empty() {
            return true;
        }
        st.tables.iter().any(|t| self.table_matches(t, false))
            || st
                .functions
                .iter()
                .any(|f| self.functions.iter().any(|g| g.matches(f)))
    }

    /// `schema.table`, where a quoted name may itself contain dots: every way of splitting the
    /// name must match for an Allow rule, one for the others.
    fn table_matches(&self, name: &str, all: bool) -> bool {
        let mut splits = name
            .match_indices('.')
            .map(|(i, _)| (&name[..i], &name[i + 1..]))
            .map(|(s, t)| self.tables.iter().any(|(gs, gt)| gs.matches(s) && gt.matches(t)));
        if all {
            let mut any = false;
            for m in splits {
                if !m {
                    return false;
                }
                any = true;
            }
            any
        } else {
            splits.any(|m| m)
        }
    }

    /// Whether the rule lists `function` by its exact name (a glob without wildcards): what lifts
    /// a guardrail.
    pub fn names_function(&self, function: &str) -> bool {
        self.functions
            .iter()
            .any(|g| g.is_literal() && g.as_str() == function)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::http::HeaderMap;

    fn rule(yaml: &str) -> PolicyRule {
        serde_saphyr::from_str(yaml).unwrap()
    }

    fn http<'a>(
        method: &'a str,
        path: &'a str,
        query: &'a [(String, String)],
        headers: &'a HeaderMap,
    ) -> Operation<'a> {
        Operation::Http(HttpOperation {
            method,
            path,
            query,
            headers,
            body: BodyView::Empty,
            params: BodyParams::None,
        })
    }

    /// RBAC's `deployments/scale` matches nothing here (the subresource has its own field): a
    /// Deny written so would do nothing, so it is refused, saying how to write it.
    #[test]
    fn a_resource_naming_a_subresource_is_refused() {
        let errors = compile(&rule(
            "name: r\naction: Deny\nkubernetes:\n  resources: [pods, deployments/scale]\n",
        ))
        .unwrap_err();
        let (field, message) = &errors[0];
        assert_eq!(field, "kubernetes.resources[1]");
        assert!(
            message.contains("resources: [deployments] and subresources: [scale]"),
            "{message}"
        );
    }

    #[test]
    fn http_methods_paths_and_query() {
        let r = rule(
            "name: r\naction: Allow\nhttp:\n  methods: [GET]\n  paths: [/api/v1/users/*]\n  query: {limit: '1?'}\n",
        );
        let m = compile(&r).unwrap();
        let h = HeaderMap::new();
        let q = vec![("limit".to_string(), "10".to_string())];
        assert!(m.matches(Action::Allow, &http("GET", "/api/v1/users/00u1", &q, &h), 0));
        assert!(!m.matches(Action::Allow, &http("POST", "/api/v1/users/00u1", &q, &h), 0));
        assert!(!m.matches(Action::Allow, &http("GET", "/api/v1/users/00u1/x", &q, &h), 0));
        assert!(!m.matches(Action::Allow, &http("GET", "/api/v1/users/00u1", &[], &h), 0));
        // HEAD runs GET's handler: restricting GET restricts HEAD; allowing GET allows only GET.
        assert!(!m.matches(Action::Allow, &http("HEAD", "/api/v1/users/00u1", &q, &h), 0));
        for action in [Action::Deny, Action::RequireApproval] {
            assert!(m.matches(action, &http("HEAD", "/api/v1/users/00u1", &q, &h), 0));
            assert!(!m.matches(action, &http("OPTIONS", "/api/v1/users/00u1", &q, &h), 0));
        }
        // A method no list names is a write to whoever serves it: a restricting rule that names
        // writes names it too; one that names only reads, or an Allow, does not.
        let writes = compile(&rule(
            "name: r\naction: Deny\nhttp:\n  methods: [POST, PUT, PATCH, DELETE]\n",
        ))
        .unwrap();
        let reads = compile(&rule("name: r\naction: Deny\nhttp:\n  methods: [GET]\n")).unwrap();
        let allow = compile(&rule("name: r\naction: Allow\nhttp:\n  methods: [DELETE]\n")).unwrap();
        for method in ["MOVE", "COPY", "MERGE", "PURGE"] {
            let op = http(method, "/files/a", &[], &h);
            assert!(writes.matches(Action::Deny, &op, 0), "{method}");
            assert!(!reads.matches(Action::Deny, &op, 0), "{method}");
            assert!(!allow.matches(Action::Allow, &op, 0), "{method}");
        }
        // A repeated parameter: Allow needs every value to match, Deny any.
        let dup = vec![
            ("limit".to_string(), "10".to_string()),
            ("limit".to_string(), "500".to_string()),
        ];
        assert!(!m.matches(Action::Allow, &http("GET", "/api/v1/users/00u1", &dup, &h), 0));
        assert!(m.matches(Action::Deny, &http("GET", "/api/v1/users/00u1", &dup, &h), 0));
        // Keys another framework reads as `limit` are repeats of it: `LIMIT` (ASP.NET Core).
        let variant = vec![
            ("limit".to_string(), "10".to_string()),
            ("LIMIT".to_string(), "500".to_string()),
        ];
        assert!(!m.matches(Action::Allow, &http("GET", "/api/v1/users/00u1", &variant, &h), 0));
        assert!(m.matches(Action::Deny, &http("GET", "/api/v1/users/00u1", &variant, &h), 0));
        // PHP reads `.`, space and `[` in a key as `_`: a Deny is not escaped by spelling.
        let deny = compile(&rule(
            "name: r\naction: Deny\nhttp:\n  query: {include_deleted: 'true'}\n",
        ))
        .unwrap();
        let php = vec![("include.deleted".to_string(), "true".to_string())];
        assert!(deny.matches(Action::Deny, &http("GET", "/api/v1/users", &php, &h), 0));
        // Nor by the value's case (an upstream may compare without it); an Allow still must
        // match as written.
        let shouted = vec![("include_deleted".to_string(), "TRUE".to_string())];
        assert!(deny.matches(Action::Deny, &http("GET", "/api/v1/users", &shouted, &h), 0));
        let allow = compile(&rule(
            "name: r\naction: Allow\nhttp:\n  query: {include_deleted: 'true'}\n",
        ))
        .unwrap();
        assert!(!allow.matches(Action::Allow, &http("GET", "/api/v1/users", &shouted, &h), 0));
        assert_eq!(query_key(" include.deleted", true), "include_deleted");
        assert_eq!(query_key("Dry Run", true), "dry_run");
        assert_eq!(query_key("a[b", true), "a_b");
        // Leading brackets, and a stray `]` after the name, are read as nothing (Rack, `qs`).
        assert_eq!(query_key("[x]", true), "x");
        assert_eq!(query_key("x]", true), "x");
        assert_eq!(query_key("[[x]][y]", true), "x");
        for key in [
            "include_deleted[]",
            "include_deleted[0]",
            "Include.Deleted[x][y]",
            "[include_deleted]",
            "include_deleted]",
            "[Include.Deleted][]",
        ] {
            let q = vec![(key.to_string(), "true".to_string())];
            assert!(deny.matches(Action::Deny, &http("GET", "/x", &q, &h), 0), "{key}");
        }
        // A condition naming a bracketed key means that key alone (JSON:API's `page[size]`).
        let page = compile(&rule(
            "name: r\naction: Allow\nhttp:\n  query: {'page[size]': '1?'}\n",
        ))
        .unwrap();
        let q = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let ok = q(&[("page[size]", "10"), ("page[number]", "200")]);
        assert!(page.matches(Action::Allow, &http("GET", "/x", &ok, &h), 0));
        let big = q(&[("page[size]", "10"), ("PAGE[SIZE]", "500")]);
        assert!(!page.matches(Action::Allow, &http("GET", "/x", &big, &h), 0));
        // Its array and map forms hold its value too (qs, Rack).
        for key in ["page[size][]", "page[size][0]", "Page[Size][x]"] {
            let nested = q(&[("page[size]", "10"), (key, "500")]);
            assert!(
                !page.matches(Action::Allow, &http("GET", "/x", &nested, &h), 0),
                "{key}"
            );
        }
        let deleted = compile(&rule(
            "name: r\naction: Deny\nhttp:\n  query: {'filter[deleted]': 'true'}\n",
        ))
        .unwrap();
        for key in [
            "filter[deleted][]",
            "filter[deleted]x",
            "filter[deleted]]",
            "Filter[Deleted]x[]",
        ] {
            let nested = q(&[(key, "true")]);
            assert!(
                deleted.matches(Action::Deny, &http("GET", "/x", &nested, &h), 0),
                "{key}"
            );
        }
        let trailing = q(&[("page[size]", "10"), ("page[size]x", "500")]);
        assert!(!page.matches(Action::Allow, &http("GET", "/x", &trailing, &h), 0));
        let sibling = q(&[("filter[deletedAt]", "true")]);
        assert!(!deleted.matches(Action::Deny, &http("GET", "/x", &sibling, &h), 0));
    }

    /// A boolean is one value however a framework spells it: `?force=1`, `on`, `yes` are `true`
    /// to a restricting rule (Spring, Go, Rails, Laravel), JSON `1` too; an Allow rule's
    /// `false` is a JSON boolean, not the string `"false"`, which handlers take as truthy.
    #[test]
    fn booleans_match_however_spelt() {
        let h = HeaderMap::new();
        let deny = compile(&rule("name: r\naction: Deny\nhttp:\n  query: {force: 'true'}\n")).unwrap();
        // Whether `m` matches `DELETE /x?force=<spelt>`.
        let deletes = |m: &CompiledMatcher, spelt: &str| {
            let query = [("force".to_string(), spelt.to_string())];
            m.matches(
                Action::Deny,
                &Operation::Http(HttpOperation {
                    method: "DELETE",
                    path: "/x",
                    query: &query,
                    headers: &h,
                    body: BodyView::Empty,
                    params: BodyParams::None,
                }),
                0,
            )
        };
        // `no` and `False` are true to Rails' cast.
        for spelt in [
            "true", "TRUE", "1", "on", "yes", "t", "Y", " true", "true\t", "no", "False",
        ] {
            assert!(deletes(&deny, spelt), "{spelt}");
        }
        for spelt in ["off", "false", "0", "F"] {
            assert!(!deletes(&deny, spelt), "{spelt}");
        }
        // The rule's own spelling is read as its boolean too (an HTML checkbox sends `on`).
        let checkbox = compile(&rule("name: r\naction: Deny\nhttp:\n  query: {force: 'on'}\n")).unwrap();
        for spelt in ["true", "1", "on"] {
            assert!(deletes(&checkbox, spelt), "{spelt}");
        }
        let json_op = |b| {
            Operation::Http(HttpOperation {
                method: "POST",
                path: "/x",
                query: &[],
                headers: &h,
                body: BodyView::Json(b),
                params: BodyParams::None,
            })
        };
        let admin = compile(&rule(
            "name: r\naction: Deny\nhttp:\n  jsonBody:\n  - path: $.admin\n    values: ['true']\n",
        ))
        .unwrap();
        let (one, yes, zero) = (
            serde_json::json!({"admin": 1}),
            serde_json::json!({"admin": "yes"}),
            serde_json::json!({"admin": 0}),
        );
        assert!(admin.matches(Action::Deny, &json_op(&one), 0));
        assert!(admin.matches(Action::Deny, &json_op(&yes), 0));
        assert!(!admin.matches(Action::Deny, &json_op(&zero), 0));
        // In the query, which Rails and Laravel merge into the body's parameters.
        let query = [("admin".to_string(), "1".to_string())];
        let merged = Operation::Http(HttpOperation {
            method: "POST",
            path: "/x",
            query: &query,
            headers: &h,
            body: BodyView::Empty,
            params: BodyParams::None,
        });
        assert!(admin.matches(Action::Deny, &merged, 0));
        let allow = compile(&rule(
            "name: r\naction: Allow\nhttp:\n  jsonBody:\n  - path: $.admin\n    values: ['false']\n",
        ))
        .unwrap();
        let (typed, text) = (
            serde_json::json!({"admin": false}),
            serde_json::json!({"admin": "false"}),
        );
        assert!(allow.matches(Action::Allow, &json_op(&typed), 0));
        assert!(!allow.matches(Action::Allow, &json_op(&text), 0));
    }

    /// Rails wraps a JSON body's keys under the controller's (`{"role": "admin"}` is
    /// `params[:user][:role]` where the body has no `user`): a restricting rule on `$.user.role`
    /// reads it so; where the body has `user`, only that.
    #[test]
    fn wrapped_json_parameters_meet_restricting_rules() {
        let h = HeaderMap::new();
        let deny = compile(&rule(
            "name: r\naction: Deny\nhttp:\n  jsonBody:\n  - path: $.user.role\n    values: [admin]\n",
        ))
        .unwrap();
        let op = |b| {
            Operation::Http(HttpOperation {
                method: "POST",
                path: "/users",
                query: &[],
                headers: &h,
                body: BodyView::Json(b),
                params: BodyParams::None,
            })
        };
        let (bare, nested, both, cased) = (
            serde_json::json!({"role": "admin"}),
            serde_json::json!({"user": {"role": "admin"}}),
            serde_json::json!({"user": {"role": "viewer"}, "role": "admin"}),
            // Rails looks for `user` exactly: `User` does not stop it wrapping.
            serde_json::json!({"User": {"role": "viewer"}, "role": "admin"}),
        );
        assert!(deny.matches(Action::Deny, &op(&bare), 0));
        assert!(deny.matches(Action::Deny, &op(&nested), 0));
        assert!(!deny.matches(Action::Deny, &op(&both), 0));
        assert!(deny.matches(Action::Deny, &op(&cased), 0));
        let allow = compile(&rule(
            "name: r\naction: Allow\nhttp:\n  jsonBody:\n  - path: $.user.role\n    values: [admin]\n",
        ))
        .unwrap();
        assert!(!allow.matches(Action::Allow, &op(&bare), 0));
    }

    #[test]
    fn json_body_conditions_fail_towards_restriction() {
        let r = rule(
            "name: r\naction: Deny\nhttp:\n  jsonBody:\n  - path: $.profile.login\n    values: ['*@admin.example']\n",
        );
        let m = compile(&r).unwrap();
        let h = HeaderMap::new();
        let body: Value = serde_json::json!({"profile": {"login": "eve@admin.example"}});
        let op = |b| {
            Operation::Http(HttpOperation {
                method: "POST",
                path: "/api/v1/users",
                query: &[],
                headers: &h,
                body: b,
                params: BodyParams::None,
            })
        };
        assert!(m.matches(Action::Deny, &op(BodyView::Json(&body)), 0));
        // Whatever the case of the value, under a wildcard too.
        let shouted: Value = serde_json::json!({"profile": {"login": "eve@ADMIN.EXAMPLE"}});
        assert!(m.matches(Action::Deny, &op(BodyView::Json(&shouted)), 0));
        let other: Value = serde_json::json!({"profile": {"login": "bob@example.com"}});
        assert!(!m.matches(Action::Deny, &op(BodyView::Json(&other)), 0));
        assert!(m.matches(Action::Deny, &op(BodyView::NotJson), 0));
        assert!(!m.matches(Action::Allow, &op(BodyView::NotJson), 0));
        assert!(m.needs_body());
        // Keys are matched as Go and ASP.NET Core upstreams match them, case-insensitively: a
        // Deny is not escaped by `Login`, and two spellings are ambiguous.
        let folded = [
            serde_json::json!({"Profile": {"LOGIN": "eve@admin.example"}}),
            serde_json::json!({"profile": {"LOGIN": "x", "login": "bob@example.com"}}),
        ];
        for body in &folded {
            assert!(m.matches(Action::Deny, &op(BodyView::Json(body)), 0), "{body}");
        }
        let allow = compile(&rule(
            "name: r\naction: Allow\nhttp:\n  jsonBody:\n  - path: $.role\n    values: [viewer]\n",
        ))
        .unwrap();
        let both: Value = serde_json::json!({"role": "viewer", "ROLE": "admin"});
        let one: Value = serde_json::json!({"Role": "viewer"});
        assert!(!allow.matches(Action::Allow, &op(BodyView::Json(&both)), 0));
        assert!(allow.matches(Action::Allow, &op(BodyView::Json(&one)), 0));
        // The long s folds to `s`, as in Go.
        assert_eq!(fold_case("\u{17F}TATU\u{17F}"), "status");
        // Values as upstreams read them: numbers as floats, enums case-insensitively (.NET), for
        // a restricting rule; an Allow rule compares exactly.
        let limit = compile(&rule(
            "name: r\naction: Deny\nhttp:\n  jsonBody:\n  - path: $.amount\n    values: ['1000']\n  - path: $.role\n    values: [admin]\n",
        ))
        .unwrap();
        let spellings = [
            serde_json::json!({"amount": 1e3, "role": "Admin"}),
            serde_json::json!({"amount": 1000.0, "role": "ADMIN"}),
            serde_json::json!({"amount": 1000, "role": "admin"}),
        ];
        for body in &spellings {
            assert!(
                limit.matches(Action::Deny, &op(BodyView::Json(body)), 0),
                "{body}"
            );
        }
        let below = serde_json::json!({"amount": 999.5, "role": "admin"});
        assert!(!limit.matches(Action::Deny, &op(BodyView::Json(&below)), 0));
        let exact = compile(&rule(
            "name: r\naction: Allow\nhttp:\n  jsonBody:\n  - path: $.role\n    values: [viewer]\n",
        ))
        .unwrap();
        let shouted = serde_json::json!({"role": "VIEWER"});
        assert!(!exact.matches(Action::Allow, &op(BodyView::Json(&shouted)), 0));
    }

    #[test]
    fn query_conditions_read_body_fields_and_body_conditions_the_query() {
        let h = HeaderMap::new();
        let op = |query, body, params| post(query, body, params, &h);
        let deny = compile(&rule("name: r\naction: Deny\nhttp:\n  query: {force: 'true'}\n")).unwrap();
        assert!(deny.needs_params() && !deny.needs_body());
        // Rails reads a form's `force=true` (or a JSON body's) as `?force=true`.
        let form = pairs(&[("name", "x"), ("Force", "true")]);
        assert!(deny.matches(
            Action::Deny,
            &op(&[], BodyView::NotJson, BodyParams::Read(&form)),
            0
        ));
        let other = pairs(&[("force", "false")]);
        assert!(!deny.matches(
            Action::Deny,
            &op(&[], BodyView::NotJson, BodyParams::Read(&other)),
            0
        ));
        assert!(!deny.matches(Action::Deny, &op(&[], BodyView::Empty, BodyParams::None), 0));
        // A body that may carry it unread (multipart) is taken to.
        assert!(deny.matches(Action::Deny, &op(&[], BodyView::NotRead, BodyParams::Unread), 0));
        // Allow: the query must carry it, and the body may not hold another value.
        let allow = compile(&rule(
            "name: r\naction: Allow\nhttp:\n  query: {dryRun: 'true'}\n",
        ))
        .unwrap();
        let dry = pairs(&[("dryRun", "true")]);
        let wet = pairs(&[("dryRun", "false")]);
        let allows = |query, params| allow.matches(Action::Allow, &op(query, BodyView::NotJson, params), 0);
        assert!(allows(&dry, BodyParams::None));
        assert!(allows(&dry, BodyParams::Read(&dry)));
        assert!(!allows(&dry, BodyParams::Read(&wet)));
        assert!(!allows(&dry, BodyParams::Unread));
        assert!(!allows(&[], BodyParams::Read(&dry)));

        // A JSON-body Deny is not escaped by `?role=admin` (or a form field) where the body has none.
        let role = compile(&rule(
            "name: r\naction: Deny\nhttp:\n  jsonBody:\n  - path: $.role\n    values: [admin]\n  - path: $.profile.login\n",
        ))
        .unwrap();
        let body = serde_json::json!({"profile": {"login": "eve"}});
        let denies = |query, body| role.matches(Action::Deny, &op(query, body, BodyParams::None), 0);
        let (admin, viewer) = (pairs(&[("role[]", "Admin")]), pairs(&[("role", "viewer")]));
        assert!(denies(&admin, BodyView::Json(&body)));
        assert!(!denies(&viewer, BodyView::Json(&body)));
        let both = pairs(&[("role", "admin"), ("profile[login]", "eve")]);
        assert!(denies(&both, BodyView::Empty));
        assert!(!denies(&admin, BodyView::Empty));
        let form = pairs(&[("role", "admin"), ("profile[login]", "eve")]);
        assert!(role.matches(
            Action::Deny,
            &op(&[], BodyView::Empty, BodyParams::Read(&form)),
            0
        ));
        // Allow: a query value of the body's name must match as the body's does.
        let viewer_only = compile(&rule(
            "name: r\naction: Allow\nhttp:\n  jsonBody:\n  - path: $.role\n    values: [viewer]\n",
        ))
        .unwrap();
        let as_viewer = serde_json::json!({"role": "viewer"});
        let allows = |query| {
            viewer_only.matches(
                Action::Allow,
                &op(query, BodyView::Json(&as_viewer), BodyParams::None),
                0,
            )
        };
        assert!(allows(&[]));
        assert!(!allows(&pairs(&[("role", "admin")])));
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn post<'a>(
        query: &'a [(String, String)],
        body: BodyView<'a>,
        params: BodyParams<'a>,
        headers: &'a HeaderMap,
    ) -> Operation<'a> {
        Operation::Http(HttpOperation {
            method: "POST",
            path: "/api/v1/users",
            query,
            headers,
            body,
            params,
        })
    }

    #[test]
    fn headers_are_case_insensitive() {
        let r = rule("name: r\naction: Allow\nhttp:\n  headers: {X-Tenant: acme}\n");
        let m = compile(&r).unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-tenant", "acme".parse().unwrap());
        assert!(m.matches(Action::Allow, &http("GET", "/", &[], &h), 0));
        h.append("x-tenant", "other".parse().unwrap());
        assert!(!m.matches(Action::Allow, &http("GET", "/", &[], &h), 0));
        // An underscore spelling is the same header to a CGI-style upstream: a repeat of it.
        let mut h = HeaderMap::new();
        h.insert("x-tenant", "acme".parse().unwrap());
        h.insert("x_tenant", "other".parse().unwrap());
        assert!(!m.matches(Action::Allow, &http("GET", "/", &[], &h), 0));
    }

    /// A value past ASCII is judged as Latin-1 text, as Node reads it: `production\xA0` still
    /// holds `prod`.
    #[test]
    fn header_values_past_ascii_are_read_as_latin_1() {
        let deny = compile(&rule(
            "name: r\naction: Deny\nhttp:\n  headers: {X-Target-Env: '*prod*'}\n",
        ))
        .unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            "x-target-env",
            hyper::header::HeaderValue::from_bytes(b"production\xa0").unwrap(),
        );
        assert!(deny.matches(Action::Deny, &http("GET", "/", &[], &h), 0));
        assert_eq!(header_text(&h["x-target-env"]), "production\u{a0}");
    }

    fn kube<'a>(
        verb: KubernetesVerb,
        resource: &'a str,
        sub: Option<&'a str>,
        ns: Option<&'a str>,
        name: Option<&'a str>,
    ) -> Operation<'a> {
        Operation::Kubernetes(KubernetesOperation {
            verb,
            api_group: "",
            api_version: "v1",
            resource,
            subresource: sub,
            namespace: ns,
            name,
        })
    }

    /// A Deny or RequireApproval scoped by namespace or name covers the requests that name
    /// none but reach its objects (all namespaces, collections, creates); an Allow scoped so
    /// grants none of them. Built-in cluster-scoped resources are in no namespace.
    #[test]
    fn scoped_denials_cover_requests_that_name_no_namespace_or_name() {
        use KubernetesVerb::*;
        let ns_deny = compile(&rule(
            "name: r\naction: Deny\nkubernetes:\n  resources: ['*']\n  namespaces: [kube-system]\n",
        ))
        .unwrap();
        let names_held = compile(&rule(
            "name: r\naction: RequireApproval\nkubernetes:\n  resources: [pods]\n  names: [prod-*]\n",
        ))
        .unwrap();
        let every_ns = kube(List, "configmaps", None, None, None);
        assert!(ns_deny.matches(Action::Deny, &every_ns, 0));
        assert!(ns_deny.matches(Action::Deny, &kube(Watch, "secrets", None, None, None), 0));
        assert!(!ns_deny.matches(
            Action::Deny,
            &kube(List, "configmaps", None, Some("apps"), None),
            0
        ));
        assert!(!ns_deny.matches(Action::Deny, &kube(List, "nodes", None, None, None), 0));
        assert!(!ns_deny.matches(
            Action::Deny,
            &kube(Get, "persistentvolumes", None, None, Some("pv")),
            0
        ));
        for op in [
            kube(Deletecollection, "pods", None, Some("ns"), None),
            kube(List, "pods", None, Some("ns"), None),
            kube(Create, "pods", None, Some("ns"), None),
            kube(Patch, "pods", None, Some("ns"), Some("prod-api")),
        ] {
            assert!(names_held.matches(Action::RequireApproval, &op, 0), "{op:?}");
        }
        assert!(!names_held.matches(
            Action::RequireApproval,
            &kube(Patch, "pods", None, Some("ns"), Some("dev")),
            0
        ));
        // The same scopes on an Allow grant only what they name.
        let ns_allow = compile(&rule(
            "name: r\naction: Allow\nkubernetes:\n  resources: ['*']\n  namespaces: [apps]\n  names: [web-*]\n",
        ))
        .unwrap();
        assert!(!ns_allow.matches(Action::Allow, &every_ns, 0));
        assert!(!ns_allow.matches(Action::Allow, &kube(List, "pods", None, Some("apps"), None), 0));
        assert!(ns_allow.matches(
            Action::Allow,
            &kube(Get, "pods", None, Some("apps"), Some("web-1")),
            0
        ));
    }

    #[test]
    fn kubernetes_subresources_are_explicit() {
        let r = rule(
            "name: r\naction: Allow\nkubernetes:\n  verbs: [get, list]\n  apiGroups: ['']\n  resources: [pods]\n  namespaces: [team-*]\n",
        );
        let m = compile(&r).unwrap();
        let get = KubernetesVerb::Get;
        assert!(m.matches(
            Action::Allow,
            &kube(get, "pods", None, Some("team-a"), Some("p")),
            0
        ));
        assert!(!m.matches(
            Action::Allow,
            &kube(get, "pods", Some("exec"), Some("team-a"), Some("p")),
            0
        ));
        assert!(!m.matches(
            Action::Allow,
            &kube(get, "pods", None, Some("kube-system"), None),
            0
        ));
        assert!(!m.matches(Action::Allow, &kube(get, "pods", None, None, None), 0));
        assert!(!m.matches(
            Action::Allow,
            &kube(KubernetesVerb::Delete, "pods", None, Some("team-a"), None),
            0
        ));
        // A restricting rule over every resource covers its subresources, named or not; one over
        // named resources covers them without subresources only, as an Allow does.
        let every = compile(&rule(
            "name: r\naction: Deny\nkubernetes:\n  resources: ['*']\n  namespaces: [kube-system]\n",
        ))
        .unwrap();
        let exec = kube(
            KubernetesVerb::Create,
            "pods",
            Some("exec"),
            Some("kube-system"),
            Some("p"),
        );
        assert!(every.matches(Action::Deny, &exec, 0));
        assert!(!every.matches(Action::Allow, &exec, 0));
        let pods = compile(&rule("name: r\naction: Deny\nkubernetes:\n  resources: [pods]\n")).unwrap();
        assert!(!pods.matches(Action::Deny, &exec, 0));
        let r = rule("name: r\naction: Deny\nkubernetes:\n  resources: ['*']\n  subresources: ['*']\n");
        let m = compile(&r).unwrap();
        assert!(m.matches(
            Action::Deny,
            &kube(KubernetesVerb::Create, "pods", Some("exec"), Some("x"), Some("p")),
            0
        ));
        assert!(m.matches(
            Action::Deny,
            &kube(KubernetesVerb::Create, "pods", None, Some("x"), None),
            0
        ));
        // SECURITY.md: ephemeral containers execute. A Deny's `*` covers them; an Allow's does
        // not, only an Allow that names them.
        let patch = kube(
            KubernetesVerb::Patch,
            "pods",
            Some("ephemeralcontainers"),
            Some("x"),
            Some("p"),
        );
        assert!(m.matches(Action::Deny, &patch, 0));
        let any = "name: r\naction: Allow\nkubernetes:\n  resources: [pods]\n  subresources: ['*']\n";
        let m = compile(&rule(any)).unwrap();
        assert!(!m.matches(Action::Allow, &patch, 0));
        assert!(m.matches(
            Action::Allow,
            &kube(
                KubernetesVerb::Patch,
                "pods",
                Some("status"),
                Some("x"),
                Some("p")
            ),
            0
        ));
        let named = any.replace("['*']", "[ephemeralcontainers]");
        assert!(compile(&rule(&named)).unwrap().matches(Action::Allow, &patch, 0));
        let both = any.replace("['*']", "['*', ephemeralcontainers]");
        assert!(compile(&rule(&both)).unwrap().matches(Action::Allow, &patch, 0));
        // A TokenRequest mints a credential for another identity; approving a CSR issues one.
        let token = kube(
            KubernetesVerb::Create,
            "serviceaccounts",
            Some("token"),
            Some("ci"),
            Some("deployer"),
        );
        let any_sa = "name: r\naction: Allow\nkubernetes:\n  resources: ['*']\n  subresources: ['*']\n";
        assert!(!compile(&rule(any_sa)).unwrap().matches(Action::Allow, &token, 0));
        let named = any_sa.replace("subresources: ['*']", "subresources: [token]");
        assert!(compile(&rule(&named)).unwrap().matches(Action::Allow, &token, 0));
        let approval = kube(
            KubernetesVerb::Update,
            "certificatesigningrequests",
            Some("approval"),
            None,
            Some("csr-1"),
        );
        assert!(
            !compile(&rule(any_sa))
                .unwrap()
                .matches(Action::Allow, &approval, 0)
        );
        let deny_any = any_sa.replace("Allow", "Deny");
        assert!(
            compile(&rule(&deny_any))
                .unwrap()
                .matches(Action::Deny, &token, 0)
        );
    }

    fn sql_matches(yaml_rule: &str, sql: &str) -> bool {
        let r = rule(yaml_rule);
        let m = compile(&r).unwrap();
        let c = crate::protocol::postgres::classify::classify(sql).unwrap();
        assert_eq!(c.statements.len(), 1, "{sql}");
        let op = Operation::Sql(crate::policy::operation::SqlOperation {
            statement: &c.statements[0],
        });
        m.matches(r.action, &op, 0)
    }

    /// A statement that may change relations it does not name (CASCADE, DROP OWNED) is reached
    /// by every rule guarding tables and allowed by none scoped to them.
    #[test]
    fn cascades_reach_table_guards() {
        let guard = "name: r\naction: Deny\nsql:\n  tables: [public.users]\n";
        for sql in [
            "DROP SCHEMA public CASCADE",
            "TRUNCATE orders CASCADE",
            "DROP TABLE orders CASCADE",
            "DROP TYPE mood CASCADE",
            "DROP FUNCTION f() CASCADE",
            "ALTER TABLE orders DROP COLUMN note CASCADE",
            "DROP OWNED BY someone",
            "DROP EXTENSION postgis",
            "ALTER DOMAIN positive DROP CONSTRAINT p CASCADE",
            // Renamed, every relation of the schema escapes rules on its old name.
            "ALTER SCHEMA public RENAME TO p2",
            "ALTER EXTENSION postgis SET SCHEMA elsewhere",
        ] {
            assert!(sql_matches(guard, sql), "{sql}");
        }
        assert!(!sql_matches(guard, "ALTER TABLE orders RENAME TO o2"));
        for sql in [
            "DROP SCHEMA public",
            "TRUNCATE orders",
            "DROP TABLE orders",
            "DROP TYPE mood",
            "ALTER TABLE orders DROP COLUMN note",
        ] {
            assert!(!sql_matches(guard, sql), "{sql}");
        }
        let allow = "name: r\naction: Allow\nsql:\n  statements: [Truncate, Drop]\n  tables: [orders]\n";
        assert!(sql_matches(allow, "TRUNCATE orders"));
        assert!(sql_matches(allow, "DROP TABLE orders"));
        assert!(!sql_matches(allow, "TRUNCATE orders CASCADE"));
        assert!(!sql_matches(allow, "DROP TABLE orders CASCADE"));
        let with_functions = "name: r\naction: Allow\nsql:\n  statements: [Truncate, Drop]\n  tables: [orders]\n  functions: [nextval]\n";
        assert!(sql_matches(with_functions, "TRUNCATE orders"));
        assert!(!sql_matches(with_functions, "TRUNCATE orders CASCADE"));
        // Unscoped rules decide by kind, as before.
        assert!(sql_matches(
            "name: r\naction: Allow\nsql:\n  statements: [Drop]\n",
            "DROP SCHEMA public CASCADE"
        ));
    }

    /// A change of role names no table, yet changes what every later statement may do: a rule
    /// scoped to tables or functions allows it only by listing it.
    #[test]
    fn role_changes_are_allowed_only_by_name() {
        for sql in [
            "SET ROLE app_owner",
            "RESET ROLE",
            "SET SESSION AUTHORIZATION app_owner",
        ] {
            for scoped in [
                "name: r\naction: Allow\nsql:\n  tables: [orders]\n",
                "name: r\naction: Allow\nsql:\n  functions: [count]\n",
            ] {
                assert!(!sql_matches(scoped, sql), "{scoped}: {sql}");
            }
            assert!(
                sql_matches("name: r\naction: Allow\nsql:\n  statements: [SetRole]\n", sql),
                "{sql}"
            );
        }
        // Resetting everything, as pools do, returns to the login role: as before.
        for sql in ["DISCARD ALL", "RESET ALL"] {
            assert!(
                sql_matches("name: r\naction: Allow\nsql:\n  tables: [orders]\n", sql),
                "{sql}"
            );
        }
        // Other settings stay as they were under a table-scoped rule.
        assert!(sql_matches(
            "name: r\naction: Allow\nsql:\n  tables: [orders]\n",
            "SET statement_timeout = 5"
        ));
    }

    /// A row cap reaches every statement that reads the rule's tables, whatever kinds the rule
    /// lists: COPY TO and RETURNING return rows as SELECT does.
    #[test]
    fn a_row_cap_reaches_its_tables_under_any_statement_kind() {
        let capped = rule(
            "name: r\naction: Allow\nsql:\n  statements: [Select]\n  tables: [public.big_capped]\n  rowLimit: 1000\n",
        );
        let m = compile(&capped).unwrap();
        let reaches = |sql: &str| {
            let c = crate::protocol::postgres::classify::classify(sql).unwrap();
            let op = Operation::Sql(crate::policy::operation::SqlOperation {
                statement: &c.statements[0],
            });
            m.reaches(&op, 0)
        };
        for sql in [
            "SELECT * FROM big_capped",
            "COPY big_capped TO STDOUT",
            "COPY (SELECT * FROM big_capped) TO STDOUT",
            "UPDATE big_capped SET id = id WHERE id > 0 RETURNING *",
            "SELECT * FROM orders JOIN big_capped USING (id)",
        ] {
            assert!(reaches(sql), "{sql}");
        }
        assert!(!reaches("COPY orders TO STDOUT"));
        assert!(!reaches("SELECT * FROM orders"));
    }

    #[test]
    fn sql_allow_needs_every_kind_deny_any() {
        let allow = "name: r\naction: Allow\nsql:\n  statements: [Select]\n";
        let deny = "name: r\naction: Deny\nsql:\n  statements: [Delete]\n";
        assert!(sql_matches(allow, "SELECT * FROM orders"));
        // A read hiding a write: the Allow rule does not cover the DELETE, the Deny rule does.
        let cte = "WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d";
        assert!(!sql_matches(allow, cte));
        assert!(sql_matches(deny, cte));
        assert!(sql_matches(deny, "EXPLAIN ANALYZE DELETE FROM orders"));
        assert!(!sql_matches(deny, "EXPLAIN DELETE FROM orders"));
        assert!(sql_matches(deny, "PREPARE p AS DELETE FROM orders"));
        // Ddl stands for every DDL kind.
        let ddl = "name: r\naction: Allow\nsql:\n  statements: [Ddl]\n";
        for sql in [
            "DROP TABLE t",
            "CREATE TABLE t (a int)",
            "COMMENT ON TABLE t IS 'x'",
            "TRUNCATE t",
            "GRANT SELECT ON t TO x",
        ] {
            assert!(sql_matches(ddl, sql), "{sql}");
        }
        assert!(!sql_matches(ddl, "SELECT 1"));
        assert!(!sql_matches(ddl, "SELECT * INTO t2 FROM t"));
        // No statements listed: any kind.
        assert!(sql_matches("name: r\naction: Allow\nsql: {}\n", "VACUUM"));
        // A reading-only Allow rule does not cover a SELECT that may write.
        assert!(!sql_matches(allow, "SELECT billing.mark_paid(1)"));
        assert!(!sql_matches(allow, "SELECT * FROM orders FOR UPDATE"));
        assert!(sql_matches(allow, "SELECT lower(name) FROM orders"));
        let writes_too = "name: r\naction: Allow\nsql:\n  statements: [Select, Update]\n";
        assert!(sql_matches(writes_too, "SELECT billing.mark_paid(1)"));
        let scoped = "name: r\naction: Allow\nsql:\n  statements: [Select, Update]\n  tables: [orders]\n";
        assert!(
            !sql_matches(scoped, "SELECT billing.mark_paid(1)"),
            "a write to unseen tables"
        );
        assert!(sql_matches(scoped, "SELECT 1"));
        assert!(sql_matches(scoped, "UPDATE orders SET total = 1 WHERE id = 2"));
        // Naming a listed table does not make a call's writes visible.
        for sql in [
            "UPDATE orders SET total = total FROM (SELECT billing.mark_paid(1)) x WHERE orders.id = 1",
            "SELECT billing.mark_paid(id) FROM orders",
            "UPDATE orders SET total = total + 1 WHERE id = 2 AND total ### 1",
        ] {
            assert!(!sql_matches(scoped, sql), "{sql}");
        }
        assert!(sql_matches(
            scoped,
            "UPDATE orders SET status = lower(status), total = round(total * random()) WHERE id = 2"
        ));
        // A rule that lists functions has named what may run.
        let named = "name: r\naction: Allow\nsql:\n  tables: [orders]\n  functions: [nextval]\n";
        assert!(sql_matches(
            named,
            "INSERT INTO orders (id) VALUES (nextval('orders_id_seq'))"
        ));
        assert!(!sql_matches(
            "name: r\naction: Allow\nsql:\n  tables: [orders]\n",
            "INSERT INTO orders (id) VALUES (nextval('orders_id_seq'))"
        ));
        // Operators that are not built in are named like functions: listing one allows it, and
        // listing functions does not let an unlisted operator through.
        let vector = "name: r\naction: Allow\nsql:\n  tables: [docs]\n  functions: ['<=>']\n";
        assert!(sql_matches(
            vector,
            "SELECT id FROM docs ORDER BY embedding <=> '[1,2]' LIMIT 5"
        ));
        assert!(!sql_matches(
            named,
            "INSERT INTO orders (id) SELECT 1 WHERE 1 ### 2"
        ));
        assert!(sql_matches(
            "name: r\naction: Deny\nsql:\n  functions: ['###']\n",
            "SELECT 1 FROM orders WHERE 1 ### 2"
        ));
    }

    #[test]
    fn sql_tables_and_functions() {
        let allow = "name: r\naction: Allow\nsql:\n  tables: [orders, 'billing.*']\n";
        assert!(sql_matches(
            allow,
            "SELECT * FROM orders JOIN billing.invoices ON true"
        ));
        assert!(sql_matches(allow, "SELECT * FROM public.orders"));
        assert!(sql_matches(allow, "SELECT 1"));
        assert!(!sql_matches(allow, "SELECT * FROM orders JOIN secrets ON true"));
        assert!(!sql_matches(allow, "SELECT * FROM other.orders"));
        // A CTE name is not a table; the tables it reads are.
        assert!(sql_matches(
            allow,
            "WITH s AS (SELECT * FROM orders) SELECT * FROM s"
        ));
        assert!(!sql_matches(
            allow,
            "WITH s AS (SELECT * FROM secrets) SELECT * FROM s"
        ));
        let deny = "name: r\naction: Deny\nsql:\n  tables: ['*.secret*']\n";
        assert!(sql_matches(deny, "SELECT * FROM orders, billing.secrets"));
        assert!(sql_matches(deny, "SELECT * FROM (SELECT * FROM secret) s"));
        assert!(!sql_matches(deny, "SELECT * FROM orders"));
        // A quoted name with a dot: Allow needs every reading to match, Deny one.
        let dotted = "SELECT * FROM \"a.b\"";
        assert!(sql_matches(
            "name: r\naction: Deny\nsql: {tables: ['public.*']}\n",
            dotted
        ));
        assert!(!sql_matches(
            "name: r\naction: Allow\nsql: {tables: ['public.a']}\n",
            dotted
        ));
        assert!(sql_matches(
            "name: r\naction: Allow\nsql: {tables: ['*.*']}\n",
            dotted
        ));
        let funcs = "name: r\naction: Allow\nsql:\n  functions: [count, 'json*']\n";
        assert!(sql_matches(funcs, "SELECT count(*), json_agg(x) FROM t"));
        assert!(!sql_matches(funcs, "SELECT count(*), lower(x) FROM t"));
        let deny = "name: r\naction: Deny\nsql:\n  functions: ['dblink*']\n";
        assert!(sql_matches(deny, "SELECT lower(x), ext.dblink_exec('x') FROM t"));
        assert!(!sql_matches(deny, "SELECT lower(x) FROM t"));
    }

    #[test]
    fn sql_without_where_writes_and_row_limit() {
        let ww = "name: r\naction: Deny\nsql:\n  withoutWhere: true\n";
        assert!(sql_matches(ww, "DELETE FROM t"));
        assert!(sql_matches(
            ww,
            "WITH x AS (UPDATE t SET a = 1 RETURNING 1) SELECT 1"
        ));
        assert!(!sql_matches(ww, "DELETE FROM t WHERE id = 1"));
        assert!(!sql_matches(ww, "SELECT * FROM t"));
        let ro = "name: r\naction: Deny\nsql:\n  writes: true\n";
        for sql in [
            "INSERT INTO t VALUES (1)",
            "SELECT nextval('s')",
            "SELECT * FROM t FOR UPDATE",
            "COPY t FROM STDIN",
        ] {
            assert!(sql_matches(ro, sql), "{sql}");
        }
        for sql in [
            "SELECT * FROM t",
            "COPY t TO STDOUT",
            "EXPLAIN DELETE FROM t",
            "SHOW work_mem",
        ] {
            assert!(!sql_matches(ro, sql), "{sql}");
        }
        let limited = compile(&rule("name: r\naction: Allow\nsql:\n  rowLimit: 1000\n")).unwrap();
        assert_eq!(limited.row_limit(), Some(1000));
        let e = compile(&rule("name: r\naction: Deny\nsql:\n  rowLimit: 10\n")).unwrap_err();
        assert_eq!(e[0].0, "sql.rowLimit");
        let e = compile(&rule(
            "name: r\naction: Allow\nsql:\n  tables: [ok, 'a.***']\n  functions: ['f***']\n",
        ))
        .unwrap_err();
        assert_eq!(
            e.iter().map(|(f, _)| f.as_str()).collect::<Vec<_>>(),
            vec!["sql.tables[1]", "sql.functions[0]"]
        );
        assert!(compile(&rule("name: r\naction: Allow\nsql:\n  tables: ['.x']\n")).is_err());
    }

    #[test]
    fn path_globs_must_be_written_normalized() {
        for ok in [
            "/api/v1/users/*",
            "/**",
            "/a/**/b",
            "/users/ceo@example.com/**",
            "/x/caf%C3%A9",
            "/t/",
        ] {
            assert!(normalized_path_glob(ok).is_ok(), "{ok}");
        }
        for bad in [
            "/api/v1/users/ceo%40example.com/**",
            "/x/café",
            "/x/caf%c3%a9",
            "/a//b",
            "/a/./b",
            "/a/../b",
        ] {
            let e = normalized_path_glob(bad).unwrap_err();
            assert!(e.contains("never match"), "{bad}: {e}");
        }
    }

    #[test]
    fn bad_paths_are_reported_with_their_field() {
        let mut r = rule("name: r\naction: Allow\nhttp:\n  paths: ['/a/***']\n");
        let e = compile(&r).unwrap_err();
        assert_eq!(e[0].0, "http.paths[0]");
        r.http = None;
        assert!(compile(&r).is_err());
        assert_eq!(
            parse_json_path("$.a[2].b"),
            Some(vec![Step::Key("a".into()), Step::Index(2), Step::Key("b".into())])
        );
        assert_eq!(parse_json_path("$"), None);
    }
}
