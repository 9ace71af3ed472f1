//! One HTTP request through the gateway, in order: refuse what cannot be proxied safely, route
//! to a Connection, verify the agent's token, normalize the target, derive the operation
//! (HTTP or Kubernetes), decide it, record it, forward it with the Connection's credential,
//! then mask and record the response. Every refusal is a problem+json document.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentgate_crds::approval::OperationKind;
use agentgate_crds::connection::ConnectionType;
use agentgate_crds::gateway::RecordingMode;
use agentgate_crds::policy::Action;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::http::request::Parts;
use hyper::http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use serde_json::{Value, json};

use super::body::{self, Body, BodyError, full};
use super::headers;
use super::method_override::{self, BodyKind};
use super::normalize;
use super::params;
use super::plane::{Gateway, Plane};
use super::problem::{self, Kind, Problem, StatusTarget};
use super::response::{self, ContentClass, MAX_MASKING_MEMORY, MaskFailure, RecordSink, Recorded};
use super::scrub;
use crate::approval::unix_now;
use crate::config::CompiledConnection;
use crate::identity::dpop::RequestTarget;
use crate::identity::{ErrorKind, Presented, Principal};
use crate::masking::{MAX_MASKED_BODY, MaskReport, MaskingPlan};
use crate::policy::{
    BodyParams, BodyView, Cause, Decision, HttpOperation, KubernetesOperation, Operation, Subject,
};
use crate::protocol::approval;
use crate::protocol::kubernetes::{self, request_info};
use crate::recording::MAX_RECORDED_BODY;
use crate::recording::Session;
use agentgate_crds::policy::UnparseablePolicy;

/// Largest request body read to evaluate `jsonBody` conditions.
pub const MAX_DECIDED_BODY: usize = 1024 * 1024;
/// Longest a request body read before the decision may take to arrive: a client trickling it
/// would otherwise hold its share of the body budget, and its task, for as long as it likes.
pub const REQUEST_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a retired session (rotated for its age or a recording change) waits for the requests
/// still using it before it is closed all the same; their later events are then counted lost.
const RETIRED_SESSION_WAIT: Duration = Duration::from_secs(3600);
/// Most recording sessions open on one downstream connection (one per identity, subject and
/// Connection): an agent backend multiplexing its users' tokens over one connection keeps this
/// many files open, the least recently used closed to make room.
const MAX_SESSIONS_PER_CONNECTION: usize = 32;
/// Largest request body forwarded at all.
pub const MAX_REQUEST_BODY: u64 = 64 * 1024 * 1024;

/// One downstream connection: its peer and the recording sessions opened on it, one per
/// identity, subject and connection, closed when the connection ends. The subject is part of the
/// key because one connection may carry tokens of several subjects of one identity (users of one
/// agent app), and a session's start names whose requests it records.
#[derive(Debug)]
pub struct ConnContext {
    pub peer: SocketAddr,
    pub tls: bool,
    pub listener: String,
    sessions: Mutex<Vec<(SessionKey, Arc<Session>)>>,
}

/// Whose requests to which Connection one recording session holds (with the key a DPoP-bound
/// token is bound to, which the session's start names).
#[derive(Debug)]
struct SessionKey {
    identity: String,
    subject: String,
    binding: Option<String>,
    connection: String,
}

impl ConnContext {
    pub fn new(peer: SocketAddr, tls: bool, listener: String) -> Self {
        Self {
            peer,
            tls,
            listener,
            sessions: Mutex::new(Vec::new()),
        }
    }

    /// Closes (signs and syncs) every session opened on this connection.
    pub fn close_sessions(&self) {
        let sessions = std::mem::take(&mut *self.sessions.lock().unwrap_or_else(|p| p.into_inner()));
        for (_, s) in sessions {
            if let Err(e) = s.close(json!({"reason": "connection closed"})) {
                tracing::warn!(error = %e, "closing a session record failed");
            }
        }
    }
}

/// What the request log and metrics need whatever the outcome.
struct Outcome {
    connection: String,
    identity: String,
    decision: &'static str,
    /// Set once the request is routed to a Kubernetes connection: refusals are then `Status`es,
    /// about this object when it is known.
    kubernetes: Option<Option<StatusTarget>>,
    /// The masking that applies, once known: the log masks the path and the refusal with it.
    plan: Option<MaskingPlan>,
    /// The DPoP nonce to hand the client (`DPoP-Nonce`), on any answer to a DPoP request where
    /// proofs must carry one: a client keeps the latest, and needs no retry when it turns.
    dpop_nonce: Option<String>,
}

/// hyper's entry point: never fails; every error is a response.
pub async fn handle(
    gw: Arc<Gateway>,
    conn: Arc<ConnContext>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let request_id = new_request_id();
    let mut outcome = Outcome {
        connection: "none".into(),
        identity: "none".into(),
        decision: "none",
        kubernetes: None,
        plan: None,
        dpop_nonce: None,
    };
    let problem_json = problem::accepts_problem_json(req.headers());
    let method = req.method().clone();
    // Shares the request's buffer; only a refusal's log line reads it.
    let uri_for_log = req.uri().clone();
    let mut upstream_time = None;
    let mut res = match proxy(
        &gw,
        &conn,
        req,
        &request_id,
        &mut outcome,
        &mut upstream_time,
        started,
    )
    .await
    {
        Ok(res) => res,
        Err(problem) => {
            gw.metrics
                .http_problems
                .with_label_values(&[problem.kind.slug()])
                .inc();
            // Logs are masked as recordings are: the path and the explanation quote what the
            // agent addressed (a user's email).
            let (path, detail) = match &outcome.plan {
                Some(plan) => (
                    plan.mask_escaped_text(uri_for_log.path(), false).0.into_owned(),
                    plan.mask_escaped_text(&problem.detail, false).0.into_owned(),
                ),
                None => {
                    let plan = MaskingPlan::every_detector();
                    (
                        plan.mask_escaped_text(uri_for_log.path(), false).0.into_owned(),
                        plan.mask_escaped_text(&problem.detail, false).0.into_owned(),
                    )
                }
            };
            tracing::info!(
                request_id = %request_id,
                method = %method,
                path = %path,
                connection = %outcome.connection,
                identity = %outcome.identity,
                problem = problem.kind.slug(),
                detail = %detail,
                "request refused"
            );
            match &outcome.kubernetes {
                Some(target) if !problem_json => {
                    problem.into_kubernetes_response(&request_id, target.as_ref())
                }
                _ => problem.into_response(&request_id),
            }
        }
    };
    if let Some(nonce) = outcome.dpop_nonce.take()
        && let Ok(v) = HeaderValue::from_str(&nonce)
    {
        res.headers_mut().insert("dpop-nonce", v);
    }
    let elapsed = started.elapsed();
    let status_class = match res.status().as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    let m = &gw.metrics;
    m.http_requests
        .with_label_values(&[
            &outcome.connection,
            &outcome.identity,
            outcome.decision,
            status_class,
        ])
        .inc();
    m.http_request_duration
        .with_label_values(&[&outcome.connection])
        .observe(elapsed.as_secs_f64());
    if let Some(up) = upstream_time {
        m.http_upstream_duration
            .with_label_values(&[&outcome.connection])
            .observe(up);
        m.http_gateway_overhead
            .with_label_values(&[&outcome.connection])
            .observe((elapsed.as_secs_f64() - up).max(0.0));
    }
    Ok(res)
}

/// Random request ids drawn from the generator this many at a time: one call per id was about
/// 1% of a request's CPU.
const REQUEST_IDS_PER_DRAW: usize = 256;

/// 24 random hex digits (unpredictable, so an id names one request and reveals no count).
/// The request header whose value the Kubernetes API server records as its audit event's ID.
const AUDIT_ID: header::HeaderName = header::HeaderName::from_static("audit-id");

fn new_request_id() -> String {
    thread_local! {
        static POOL: std::cell::RefCell<(Vec<u8>, usize)> = const { std::cell::RefCell::new((Vec::new(), 0)) };
    }
    POOL.with_borrow_mut(|(bytes, at)| {
        if *at + 12 > bytes.len() {
            bytes.resize(12 * REQUEST_IDS_PER_DRAW, 0);
            if aws_lc_rs::rand::fill(bytes).is_err() {
                bytes.clear();
                return "unknown".into();
            }
            *at = 0;
        }
        let id = crate::recording::chain::hex(&bytes[*at..*at + 12]);
        *at += 12;
        id
    })
}

fn bad_request(detail: impl Into<String>) -> Problem {
    Problem::new(Kind::BadRequest, detail)
}

/// Refuses requests that cannot be proxied without ambiguity, before anything else reads them.
/// (Upgrades are refused later, by [`refuse_upgrade`], once the request is decided and recorded.)
fn check_framing(req: &Parts) -> Result<(), Problem> {
    let h = &req.headers;
    if req.method == Method::CONNECT {
        return Err(Problem::new(Kind::UnsupportedUpgrade, "CONNECT is not supported"));
    }
    // Methods are case-sensitive, and policies name them in upper case; but many frameworks
    // upper-case what they receive, so `delete` would pass a rule about DELETE and run as one.
    if req.method.as_str().bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(bad_request(
            "method names must be sent in upper case (a policy decides on DELETE, not delete)",
        ));
    }
    if h.contains_key(header::TRANSFER_ENCODING) && h.contains_key(header::CONTENT_LENGTH) {
        return Err(bad_request(
            "a request must not carry both Transfer-Encoding and Content-Length",
        ));
    }
    if h.get_all(header::CONTENT_LENGTH).iter().count() > 1 {
        return Err(bad_request("a request must carry at most one Content-Length"));
    }
    if let Some(te) = h.get(header::TE)
        && !te.as_bytes().eq_ignore_ascii_case(b"trailers")
    {
        return Err(bad_request("the TE header may only be \"trailers\""));
    }
    // An upstream that ignores a GET body would read it as the next request on the pooled
    // connection: refuse rather than forward what may be parsed twice.
    if (req.method == Method::GET || req.method == Method::HEAD)
        && (h.contains_key(header::TRANSFER_ENCODING)
            || h.get(header::CONTENT_LENGTH)
                .is_some_and(|v| v.as_bytes() != b"0"))
    {
        return Err(bad_request("GET and HEAD requests must not carry a body"));
    }
    // HTTP/1 parsers trim a value's surrounding whitespace; HTTP/2 passes it through (RFC 9113
    // §8.2.1 calls such a request malformed). A rule would decide on ` production`, and the
    // HTTP/1 upstream read `production`.
    if let Some(name) = h
        .iter()
        .find(|(_, v)| {
            let b = v.as_bytes();
            matches!(b.first(), Some(b' ' | b'\t')) || matches!(b.last(), Some(b' ' | b'\t'))
        })
        .map(|(n, _)| n)
    {
        return Err(bad_request(format!(
            "the value of header {name} begins or ends with whitespace, which the upstream would read trimmed"
        )));
    }
    if h.get_all(header::HOST).iter().count() > 1 {
        return Err(bad_request("a request must carry at most one Host header"));
    }
    // Servers join repeated Content-Types (Apache: `a, b`) or take either: the body would be
    // read as a kind the gateway did not check it as.
    if h.get_all(header::CONTENT_TYPE).iter().count() > 1 {
        return Err(bad_request("a request must carry at most one Content-Type"));
    }
    // The gateway reads these as text to know what the body is (a JSON patch of a Secret, a
    // server-side apply, a form, a multipart body); a byte past ASCII would make it read none,
    // while the upstream reads the type before it (`application/json-patch+json;\xff`).
    for name in [header::CONTENT_TYPE, header::CONTENT_ENCODING] {
        if h.get_all(&name).iter().any(|v| {
            v.as_bytes()
                .iter()
                .any(|&b| !(b == b'\t' || (b' '..=b'~').contains(&b)))
        }) {
            return Err(bad_request(format!(
                "the {name} header may hold only visible ASCII characters"
            )));
        }
    }
    if let Some(token) = headers::connection_names_end_to_end(h) {
        return Err(bad_request(format!(
            "the Connection header may name only hop-by-hop headers, not {token:?}: a header it names would be removed after the decision read it"
        )));
    }
    if h.get_all(header::AUTHORIZATION).iter().count() > 1 {
        return Err(Problem::new(
            Kind::Unauthenticated,
            "send exactly one Authorization header",
        ));
    }
    if let Some(len) = declared_length(h)
        && len > MAX_REQUEST_BODY
    {
        return Err(Problem::new(
            Kind::RequestTooLarge,
            format!("the request body exceeds {MAX_REQUEST_BODY} bytes"),
        ));
    }
    Ok(())
}

fn method_override_refused() -> Problem {
    bad_request(
        "the request has a _method parameter (in a form, a multipart part or a JSON body), which would make the upstream run another method than the one decided; send the method itself",
    )
}

/// Whether a message's body is compressed or otherwise encoded (Content-Encoding other than
/// `identity`): bytes the gateway can neither check nor mask.
fn is_encoded(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
}

/// Whether a body read whole names a method override.
fn body_overrides(kind: BodyKind, boundary: Option<&[u8]>, bytes: &[u8]) -> bool {
    match (kind, boundary) {
        (BodyKind::Form, _) => method_override::form_overrides(bytes),
        (BodyKind::Json, _) => method_override::json_overrides(bytes),
        (BodyKind::FormOrJson, _) => {
            method_override::form_overrides(bytes) || method_override::json_overrides(bytes)
        }
        (BodyKind::Multipart, Some(b)) => method_override::MultipartScan::new(b).push(bytes).is_err(),
        _ => false,
    }
}

/// Reads a request body whole, at most [`MAX_DECIDED_BODY`] bytes within
/// [`REQUEST_BODY_TIMEOUT`], holding a share of the gateway's body budget (the one masking
/// draws on) for as long as the returned permit lives; `why` says why it is read.
async fn read_request_body(
    gw: &Gateway,
    body: Incoming,
    why: &str,
) -> Result<(Bytes, Option<tokio::sync::OwnedSemaphorePermit>), Problem> {
    let body: Body = body.map_err(|e| -> BodyError { Box::new(e) }).boxed();
    read_body_within(body, &gw.masking_budget, REQUEST_BODY_TIMEOUT, why).await
}

/// [`read_request_body`] of any body, with its budget and time limit.
async fn read_body_within(
    body: Body,
    budget: &Arc<tokio::sync::Semaphore>,
    timeout: Duration,
    why: &str,
) -> Result<(Bytes, Option<tokio::sync::OwnedSemaphorePermit>), Problem> {
    let read = response::read_within(body, MAX_DECIDED_BODY, Some(budget));
    let Ok(read) = tokio::time::timeout(timeout, read).await else {
        return Err(Problem::new(
            Kind::RequestTimeout,
            format!(
                "{why}, and the body did not arrive within {} ms",
                timeout.as_millis()
            ),
        ));
    };
    read.map_err(|e| match e {
        MaskFailure::TooLarge => Problem::new(
            Kind::RequestTooLarge,
            format!("{why} and must be at most {MAX_DECIDED_BODY} bytes"),
        ),
        MaskFailure::Busy => Problem::new(
            Kind::GatewayBusy,
            format!("the gateway already holds {MAX_MASKING_MEMORY} bytes of bodies; retry later"),
        ),
        _ => bad_request("the request body could not be read"),
    })
}

/// A body's JSON document for its parameters: the one parsed for the decision, or the body
/// parsed now (Laravel reads a body as JSON wherever its Content-Type mentions `json`).
fn body_json<'v>(bytes: &[u8], parsed: &'v Option<Value>) -> Option<std::borrow::Cow<'v, Value>> {
    match parsed {
        Some(v) => Some(std::borrow::Cow::Borrowed(v)),
        None => crate::identity::strict_json::parse(bytes)
            .ok()
            .map(std::borrow::Cow::Owned),
    }
}

/// Whether the request's body is a JSON patch (RFC 6902), as the API server reads its type.
fn is_json_patch(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(kubernetes::is_json_patch)
}

/// Refuses what the gateway does not proxy even when a policy allows it: Kubernetes exec, attach,
/// port-forward and proxy, and any protocol upgrade. Called after the decision is recorded, so a
/// policy's refusal (403, naming the rule) wins and an attempted shell leaves a record.
fn refuse_upgrade(headers: &HeaderMap, kube_info: Option<&request_info::RequestInfo>) -> Result<(), Problem> {
    if let Some(k) = kube_info
        && k.is_streaming()
    {
        let what = k.subresource.as_deref().unwrap_or(&k.verb);
        return Err(Problem::new(
            Kind::UnsupportedUpgrade,
            format!("{what} needs a streaming upgrade (SPDY or WebSocket), which the gateway does not proxy"),
        ));
    }
    if headers.contains_key(header::UPGRADE) {
        return Err(Problem::new(
            Kind::UnsupportedUpgrade,
            "protocol upgrades (WebSocket, SPDY, h2c) are not supported through the gateway",
        ));
    }
    Ok(())
}

/// Whether a Kubernetes request no policy verb describes is allowed: only discovery reads
/// ([`request_info::RequestInfo::is_discovery`]: `/api`, `/apis`, `/version`, `/openapi/...`), which
/// clients need and which carry no object data, by an identity some policy names on the
/// connection. Other non-resource paths (`/logs`, `/metrics`, `/debug/...`) and resource requests
/// without a policy verb (the deprecated `/proxy/` path verb) are never allowed.
fn non_resource_read_allowed(method: &Method, info: &request_info::RequestInfo, has_policy: bool) -> bool {
    let read = method == Method::GET || method == Method::HEAD;
    read && info.is_discovery() && has_policy
}

/// The authority the client addressed: `:authority`/absolute-form URI or Host, which must agree.
fn authority(req: &Parts) -> Result<String, Problem> {
    let host = match req.headers.get(header::HOST) {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| bad_request("the Host header is not valid"))?,
        ),
        None => None,
    };
    let uri_auth = req.uri.authority().map(|a| a.as_str());
    if uri_auth.or(host).is_some_and(|a| !headers::is_plain_authority(a)) {
        return Err(bad_request(
            "the request's authority (Host) is not a plain host[:port]",
        ));
    }
    match (uri_auth, host) {
        (Some(a), Some(h)) if !a.eq_ignore_ascii_case(h) => Err(bad_request(
            "the request URI's authority and the Host header disagree",
        )),
        (Some(a), _) => Ok(a.to_string()),
        (None, Some(h)) => Ok(h.to_string()),
        (None, None) => Err(bad_request("the request has no Host")),
    }
}

/// The origin the agent addressed, when the configuration names it: the public origin
/// (`dpop.origins`) whose host and port are the request's Host (default ports aside).
fn public_origin<'a>(authority: &str, configured: &'a [String]) -> Option<&'a str> {
    configured.iter().map(String::as_str).find(|o| {
        o.split_once("://").is_some_and(|(scheme, a)| {
            let default = if scheme.eq_ignore_ascii_case("https") {
                ":443"
            } else {
                ":80"
            };
            let bare = |x: &str| x.strip_suffix(default).unwrap_or(x).to_ascii_lowercase();
            bare(a) == bare(authority)
        })
    })
}

fn host_without_port(authority: &str) -> String {
    let host = if let Some(rest) = authority.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, p)| {
            if p.chars().all(|c| c.is_ascii_digit()) {
                h
            } else {
                authority
            }
        })
    };
    host.to_ascii_lowercase()
}

/// The part of `proxy` that can fail with a problem.
#[allow(clippy::too_many_arguments)]
async fn proxy(
    gw: &Gateway,
    conn: &ConnContext,
    req: Request<Incoming>,
    request_id: &str,
    outcome: &mut Outcome,
    upstream_time: &mut Option<f64>,
    started: Instant,
) -> Result<Response<Body>, Problem> {
    let (mut parts, body) = req.into_parts();
    // Shares of the body budget for the request body read before the decision; released when
    // the request has been forwarded or refused.
    let mut body_permits = Vec::new();
    check_framing(&parts)?;
    if (parts.method == Method::GET || parts.method == Method::HEAD)
        && !hyper::body::Body::is_end_stream(&body)
    {
        return Err(bad_request("GET and HEAD requests must not carry a body"));
    }
    let plane = gw.plane().ok_or_else(|| {
        Problem::new(
            Kind::ConfigurationUnavailable,
            "the gateway has no valid configuration loaded",
        )
    })?;
    // Every answer from here on hands a DPoP client the current nonce, refusals included.
    if let Ok(verifier) = &plane.verifier
        && headers::speaks_dpop(&parts.headers)
    {
        outcome.dpop_nonce = verifier.dpop_nonce(unix_now());
    }
    let authority = authority(&parts)?;
    let host = host_without_port(&authority);
    let raw_path = parts.uri.path().to_string();
    // The target the policy decides on and the upstream receives.
    let target = normalize::normalize(&raw_path, parts.uri.query()).map_err(|e| bad_request(e.0))?;
    let (connection, path, route_prefix) = plane
        .route(&host, &target.path)
        .ok_or_else(|| Problem::new(Kind::NoRoute, "no Connection is routed for this host or path"))?;
    outcome.connection = connection.name.clone();
    if connection.kind == ConnectionType::Kubernetes {
        outcome.kubernetes = Some(None);
    }

    // Identity, on the URL as the client addressed it (DPoP's htu).
    let principal = authenticate(&plane, conn, &parts, &authority, &raw_path).await?;
    outcome.identity = principal.identity.clone();
    let subject = Subject {
        identity: &principal.identity,
        groups: &principal.groups,
    };

    let cfg = &plane.snapshot.config;
    let applicable = cfg
        .policy_index
        .applicable(&cfg.policies, &connection.name, subject);
    let needs_body = applicable.iter().any(|p| p.reads_body);
    let needs_params = applicable.iter().any(|p| p.reads_params);
    // Bodies that frameworks read a method override from, and parameters (the Kubernetes API
    // server reads neither).
    let (kind, params_kind) = if connection.kind == ConnectionType::Kubernetes {
        (BodyKind::Other, BodyKind::Other)
    } else {
        (
            method_override::body_kind(&parts.method, &parts.headers),
            method_override::params_kind(&parts.method, &parts.headers),
        )
    };
    let bodiless = parts.method == Method::GET || parts.method == Method::HEAD;
    let encoded = is_encoded(&parts.headers);
    if kind != BodyKind::Other && encoded {
        return Err(bad_request(
            "a compressed (Content-Encoding) form, multipart or JSON POST body cannot be checked for a method override; send it uncompressed",
        ));
    }
    let boundary = match kind {
        BodyKind::Multipart => Some(
            method_override::boundary(&parts.headers)
                .ok_or_else(|| bad_request("a multipart body needs a boundary parameter in its Content-Type: without one, frameworks read it as a form, which may carry a method override"))?,
        ),
        _ => None,
    };
    // The body is read before the decision only when a rule reads it or its parameters, or when
    // it is a form or JSON, which may carry a method override (multipart bodies are scanned as
    // they stream).
    let form_or_json = |k| matches!(k, BodyKind::Form | BodyKind::Json | BodyKind::FormOrJson);
    let (mut read_body, mut body) = if (needs_body
        || form_or_json(kind)
        // Not a body declared past the cap: its fields count as unread, not refused.
        || (needs_params
            && form_or_json(params_kind)
            && !encoded
            && declared_length(&parts.headers).is_none_or(|n| n <= MAX_DECIDED_BODY as u64)))
        && !bodiless
    {
        let (bytes, permit) = read_request_body(
            gw,
            body,
            "request bodies on this connection are read to decide them",
        )
        .await?;
        body_permits.extend(permit);
        if body_overrides(kind, boundary.as_deref(), &bytes) {
            return Err(method_override_refused());
        }
        (Some(bytes), None)
    } else {
        (None, Some(body))
    };
    let parsed_body: Option<Value> = read_body.as_ref().and_then(|b| {
        let json_ct = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| response::classify(Some(ct)) == ContentClass::Json);
        if json_ct {
            crate::identity::strict_json::parse(b).ok()
        } else {
            None
        }
    });
    let body_view = body_view(read_body.as_deref(), parsed_body.as_ref(), bodiless, encoded);
    let body_fields = match (&read_body, params_kind) {
        // No rule reads them: not worth the flattening.
        _ if !needs_params => None,
        (Some(b), _) if b.is_empty() => Some(Vec::new()),
        // Compressed: its fields are what the upstream decompresses, not these bytes.
        _ if encoded => None,
        (Some(b), BodyKind::Form) => params::form_fields(b),
        // A JSON body that does not parse is left unread.
        (Some(b), BodyKind::Json) => body_json(b, &parsed_body).and_then(|v| params::json_fields(&v)),
        // Rack reads it as a form, Laravel as JSON (when it parses): the fields of both.
        (Some(b), BodyKind::FormOrJson) => params::form_fields(b).and_then(|mut f| {
            if let Some(v) = body_json(b, &parsed_body) {
                f.extend(params::json_fields(&v)?);
            }
            Some(f)
        }),
        _ => None,
    };
    let body_params = match (&body_fields, params_kind) {
        _ if bodiless => BodyParams::None,
        (_, BodyKind::Other) => BodyParams::None,
        (Some(f), _) => BodyParams::Read(f),
        (None, _) => BodyParams::Unread,
    };

    // The operation, as the upstream will understand it.
    let kube_info = if connection.kind == ConnectionType::Kubernetes {
        // Decided on the path as the API server reads it: decoded (a name `system%3Aedit` is
        // `system:edit` there).
        let info = request_info::derive(parts.method.as_str(), &normalize::decode(&path), &target.query)
            .map_err(|e| bad_request(e.to_string()))?;
        if info.is_resource_request {
            outcome.kubernetes = Some(Some(StatusTarget {
                group: info.api_group.clone(),
                resource: info.resource.clone(),
                name: info.name.clone(),
            }));
        }
        Some(info)
    } else {
        None
    };
    // Writes of a Secret the gateway refuses for how they are asked: refused once the request
    // and its decision are on record, so an attempt leaves evidence.
    let mut secret_refusal = None;
    if kube_info
        .as_ref()
        .is_some_and(|k| k.resource == "secrets" && k.subresource.is_none())
        && matches!(parts.method, Method::POST | Method::PUT | Method::PATCH)
    {
        let content_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        secret_refusal = kubernetes::secret_write_refusal(content_type, &target.query);
    }
    // A JSON patch can copy a Secret's values to fields that are not masked (annotations), or
    // test them one guess at a time: its operations are read before anything is forwarded.
    if kube_info.as_ref().is_some_and(|k| k.resource == "secrets") && is_json_patch(&parts.headers) {
        if read_body.is_none()
            && let Some(incoming) = body.take()
        {
            let (bytes, permit) =
                read_request_body(gw, incoming, "a JSON patch of a Secret is read whole").await?;
            body_permits.extend(permit);
            read_body = Some(bytes);
        }
        secret_refusal = secret_refusal.or(kubernetes::secret_patch_refusal(
            read_body.as_deref().unwrap_or_default(),
        ));
    }
    let op = if let Some(kube_info) = &kube_info {
        kubernetes_operation(kube_info).map(Operation::Kubernetes)
    } else {
        Some(Operation::Http(HttpOperation {
            method: parts.method.as_str(),
            path: &path,
            query: &target.query,
            headers: &parts.headers,
            body: body_view,
            params: body_params,
        }))
    };
    let now = unix_now();
    let mut approval_rule = None;
    // A server-side apply of an object that does not exist creates it, as does an update (PUT)
    // of the resources whose API allows create-on-update, and the API server authorizes that as
    // `create` too: so is it decided here, the stricter answer standing (a rule allowing `patch`
    // must not create what `create` needs approval for). The gateway cannot know whether the
    // object exists, so both are asked.
    let creating = match &op {
        Some(Operation::Kubernetes(k)) => also_creates(
            k,
            parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
        )
        .map(Operation::Kubernetes),
        _ => None,
    };
    let (action, decision_record, refusal) = match &op {
        Some(op) => {
            let d = cfg
                .policy_index
                .decide(&cfg.policies, &connection.name, subject, op, now);
            let (d, decided) = match &creating {
                Some(create) => stricter(
                    (d, op),
                    (
                        cfg.policy_index
                            .decide(&cfg.policies, &connection.name, subject, create, now),
                        create,
                    ),
                ),
                None => (d, op),
            };
            let explained = d.explain(decided);
            if let (Action::RequireApproval, Cause::Rule { policy, rule }) = (d.action, d.cause) {
                // Decided as the create it may be, it is still the update or apply it is: the
                // approver reads both.
                let summary = if std::ptr::eq(decided, op) {
                    op.summary()
                } else {
                    format!("{} (which creates it if it does not exist)", op.summary())
                };
                approval_rule = Some((policy, rule, summary));
            }
            let record = DecisionEvent::of(request_id, &d, explained.clone());
            (d.action, record, refusal_for(&d, explained))
        }
        None => {
            // Only Kubernetes requests have no operation (see `non_resource_read_allowed`).
            let allowed = kube_info.as_ref().is_some_and(|k| {
                non_resource_read_allowed(
                    &parts.method,
                    k,
                    cfg.policy_index.has_policy(&connection.name, subject),
                )
            });
            let explained = format!(
                "{} {path}: {}",
                parts.method,
                if allowed {
                    "allowed: API discovery"
                } else {
                    "denied: no AccessPolicy rule can allow this Kubernetes request"
                }
            );
            let action = if allowed { Action::Allow } else { Action::Deny };
            let refusal = (!allowed).then(|| Problem::new(Kind::DeniedByPolicy, explained.clone()));
            let rec = DecisionEvent {
                request_id,
                action: if allowed { "allow" } else { "deny" },
                reason: explained,
                policy: None,
                rule: None,
            };
            (action, rec, refusal)
        }
    };
    outcome.decision = match action {
        Action::Allow => "allow",
        Action::Deny => "deny",
        Action::RequireApproval => "require_approval",
    };

    // Masking plan and recording session, before anything is forwarded.
    // Secret masking by default on responses about Secrets (in any API group: a same-named
    // custom resource is as likely to hold secrets).
    let secrets = kube_info
        .as_ref()
        .is_some_and(|k| k.is_resource_request && k.resource == "secrets");
    let plan = plane.masking_plan(connection, &applicable, secrets);
    outcome.plan = Some(plan.clone());
    // `limitBytes` cuts a log at any byte: a card number cut before its check digit escapes the
    // detectors, and the digit is then the only one that passes Luhn's check.
    let log = kube_info
        .as_ref()
        .is_some_and(|k| k.resource == "pods" && k.subresource.as_deref() == Some("log"));
    if log
        && plan.has_detectors()
        && target
            .query
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("limitBytes"))
    {
        return Err(bad_request(
            "limitBytes may cut a value the detectors must see whole: limit a masked log by lines (tailLines) or time (sinceSeconds)",
        ));
    }
    // What the request's body is recorded under: a JSON patch of a Secret carries the value
    // under `value`, where no field rule looks, so such bodies are withheld from the record.
    // A TokenRequest's answer is a live token, and so is a TokenReview's spec, sent and echoed:
    // the agent has them, its record and its approver do not.
    let carries_token = kube_info.as_ref().is_some_and(|k| {
        k.is_resource_request
            && match (k.resource.as_str(), k.subresource.as_deref()) {
                ("serviceaccounts", Some("token")) => true,
                ("tokenreviews", None) => k.api_group == "authentication.k8s.io",
                _ => false,
            }
    });
    let request_plan = match &kube_info {
        Some(k) if k.resource == "secrets" && is_json_patch(&parts.headers) => {
            plan.clone().withholding_bodies()
        }
        Some(_) if carries_token => plan.clone().with_kubernetes_token(),
        _ => plan.clone(),
    };
    let session = session_for(&plane, gw, conn, &principal, connection)?;
    // The agent's token is redacted by header name; hidden by value too, wherever else the
    // client may have put it (another header, the query, the body, echoed in a response), in
    // the record and in what an approver reads.
    let agent_token = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .map(|(_, t)| t.trim());
    if let (Some(s), Some(token)) = (session.as_deref(), agent_token) {
        s.hide(token.as_bytes());
    }
    // The path names what the agent addressed (a user's email): masked like the query, as is
    // the decision's explanation, which quotes it.
    let mut decision_record = decision_record;
    // A form's text is read as decoded, `+` as a space, as its parser will.
    let form = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"));
    if let std::borrow::Cow::Owned(masked) = plan.mask_escaped_text(&decision_record.reason, false).0 {
        decision_record.reason = masked;
    }
    let request_event = RequestEvent {
        request_id,
        method: parts.method.as_str(),
        path: plan.mask_escaped_text(&path, false).0,
        host: &authority,
        peer: conn.peer,
        version: version_label(parts.version),
        headers: headers::for_record_masked(&parts.headers, &plan),
        // Query strings can carry secrets too.
        query: target
            .raw_query
            .as_deref()
            .map(|q| plan.mask_escaped_text(q, true).0),
        body: read_body
            .as_ref()
            .map(|b| response::body_for_record(Some(&request_plan), b, true, form)),
    };
    // The request and its decision are on record before anything is forwarded, in one write.
    // An allowed GET or HEAD changes nothing upstream, so its request and decision may wait for
    // its response and share that write, made before the response is sent: the agent still
    // learns nothing the record lacks, and a read costs one write instead of two.
    // Only a request that will be forwarded waits: one refused below (an upgrade, an upstream
    // not configured) is on record before its refusal is sent, as every refusal is.
    let mut unforwardable = unforwardable(&parts.headers, kube_info.as_ref(), &plane, connection).err();
    let with_response = refusal.is_none()
        && approval_rule.is_none()
        && secret_refusal.is_none()
        && (parts.method == Method::GET || parts.method == Method::HEAD)
        && unforwardable.is_none();
    if let Some(s) = session.as_deref() {
        settle(gw, &plane, s.record_deferred("http.request", &request_event))?;
    }
    match session.as_deref() {
        Some(s) if with_response => settle(gw, &plane, s.record_deferred("decision", &decision_record))?,
        _ => record(gw, &plane, session.as_deref(), "decision", &decision_record)?,
    }
    // It borrows the body read so far, which the approval path below may still extend.
    drop(request_event);
    // A policy's Deny is the answer where there is one; an approval is never asked for a write
    // refused anyway.
    if let Some(why) = secret_refusal
        && action != Action::Deny
    {
        return Err(bad_request(why));
    }

    let mut refusal = refusal;
    if let Some((policy, rule, summary)) = approval_rule {
        // What would be refused anyway is refused before an approver is asked: a Once grant
        // spent on an upgrade, or on an upstream not configured, would show as used with
        // nothing forwarded.
        if let Some(problem) = unforwardable.take() {
            return Err(problem);
        }
        // The exact operation, body included, is what an approval covers.
        if read_body.is_none()
            && has_body(&parts.headers, body.as_ref())
            && let Some(incoming) = body.take()
        {
            let (bytes, permit) =
                read_request_body(gw, incoming, "requests that need approval are read whole").await?;
            body_permits.extend(permit);
            // Read after the request went on record: its body goes on record now, before an
            // approver is asked and before anything is forwarded.
            let data = crate::recording::BodyEvent {
                request_id,
                bytes: bytes.len() as u64,
                complete: true,
                body: response::body_for_record(Some(&request_plan), &bytes, true, form),
            };
            record(gw, &plane, session.as_deref(), "http.request.body", data)?;
            if body_overrides(kind, boundary.as_deref(), &bytes) {
                return Err(method_override_refused());
            }
            read_body = Some(bytes);
        }
        // The body's type is part of the operation: the same bytes as a strategic-merge and as
        // a merge patch replace different things.
        let content_type = parts
            .headers
            .get_all(header::CONTENT_TYPE)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect::<Vec<_>>()
            .join(&b'\n');
        // So are the headers that may change what the upstream does (an S3 PUT with
        // `X-Amz-Copy-Source` is a copy of another object).
        let bound = headers::bound_for_approval(&parts.headers);
        let mut bound_bytes = Vec::new();
        for (name, value) in &bound {
            bound_bytes.extend_from_slice(name.as_bytes());
            bound_bytes.extend_from_slice(b": ");
            bound_bytes.extend_from_slice(value.as_bytes());
            bound_bytes.push(b'\n');
        }
        let fingerprint = approval::fingerprint(&[
            parts.method.as_str().as_bytes(),
            path.as_bytes(),
            target.raw_query.as_deref().unwrap_or_default().as_bytes(),
            read_body.as_deref().unwrap_or_default(),
            &content_type,
            &bound_bytes,
        ]);
        // What the approver sees beyond method and path, masked as the record is.
        let content_type = String::from_utf8_lossy(&content_type).into_owned();
        let shown_headers: Vec<String> = bound
            .iter()
            .map(|(name, value)| {
                let value = if headers::is_secret(name) {
                    "[REDACTED]".into()
                } else {
                    plan.mask_escaped_text(&String::from_utf8_lossy(value.as_bytes()), false)
                        .0
                        .into_owned()
                };
                format!("{name}: {value}")
            })
            .collect();
        let (detail, unshowable) = match approval_detail(
            agent_token,
            (!content_type.is_empty()).then_some(content_type.as_str()),
            &shown_headers,
            target
                .raw_query
                .as_deref()
                .map(|q| plan.mask_escaped_text(q, true).0),
            read_body
                .as_deref()
                .filter(|b| !b.is_empty())
                .map(|b| response::body_for_record(Some(&request_plan), b, true, form)),
        ) {
            Ok(detail) => (detail, None),
            Err(why) => (None, Some(why)),
        };
        // The agent's to write, so masked and token-free as the summary is.
        let reason = parts
            .headers
            .get("agentgate-reason")
            .and_then(|v| v.to_str().ok())
            .map(|r| approval::hide_token(plan.mask_escaped_text(r, false).0.into_owned(), agent_token));
        let still_current = || {
            gw.plane().is_some_and(|p| {
                approval::decides_alike(
                    cfg,
                    &p.snapshot.config,
                    &principal.identity,
                    &principal.groups,
                    &connection.name,
                )
            })
        };
        let question = approval::Question {
            cfg,
            still_current: approval::StillCurrent(&still_current),
            policy,
            rule,
            identity: &principal.identity,
            requester: &principal.subject,
            connection: &connection.name,
            kind: if kube_info.is_some() {
                OperationKind::Kubernetes
            } else {
                OperationKind::Http
            },
            summary: approval::hide_token(
                plan.mask_escaped_text(&summary, false).0.into_owned(),
                agent_token,
            ),
            fingerprint,
            detail,
            reason,
            unshown: unshowable,
            abandon: None,
        };
        // The clock is read again: the body read above may have taken up to its timeout, and a
        // grant's window or a request's expiry is judged when the approval is asked.
        let answer = approval::ask(gw.approvals.as_ref(), &gw.metrics, question, unix_now()).await;
        let decisions = approval::decisions(gw.approvals.as_ref(), answer.request()).await;
        record(
            gw,
            &plane,
            session.as_deref(),
            "approval",
            json!({
                "request_id": request_id,
                "outcome": answer.label(),
                "approval_request": answer.request(),
                "decisions": decisions,
            }),
        )?;
        let named = |kind: Kind, request: &str, what: String| {
            Problem::new(kind, what)
                .with("policy", policy.name.clone())
                .with("rule", rule.name.clone())
                .with("approvalRequest", request.to_string())
        };
        refusal = match answer {
            approval::Outcome::Granted { .. } => {
                outcome.decision = "allow";
                None
            }
            approval::Outcome::Pending { request, .. } => Some(named(
                Kind::ApprovalRequired,
                &request,
                format!(
                    "{summary}: needs approval by rule {:?} of AccessPolicy {:?}; ApprovalRequest {request} is pending; retry the identical request once it is approved",
                    rule.name, policy.name
                ),
            )),
            approval::Outcome::Denied { request } => Some(named(
                Kind::ApprovalDenied,
                &request,
                format!("{summary}: ApprovalRequest {request} was denied"),
            )),
            approval::Outcome::Expired { request } => Some(named(
                Kind::ApprovalExpired,
                &request,
                format!("{summary}: ApprovalRequest {request} was not decided in time"),
            )),
            approval::Outcome::Unavailable(why) => refusal.map(|p| p.with("approval", why)),
            // Not asked for here (`abandon: None`): a held request ends with its connection.
            approval::Outcome::Abandoned { request } => Some(named(
                Kind::ApprovalExpired,
                &request,
                format!("{summary}: the wait for ApprovalRequest {request} ended"),
            )),
        };
    }
    if let Some(problem) = refusal {
        return Err(problem);
    }
    if let Some(problem) = unforwardable {
        return Err(problem);
    }

    // Forward.
    let Some(Ok(upstream)) = plane.upstreams.get(&connection.name) else {
        return Err(upstream_not_configured());
    };
    let request_has_body = has_body(&parts.headers, body.as_ref());
    // The request's own headers, edited in place: nothing reads them after this.
    let mut out_headers = std::mem::take(&mut parts.headers);
    let removed = headers::sanitize_request(&mut out_headers);
    if !removed.is_empty() {
        tracing::debug!(request_id, removed = ?removed, "client identity headers removed");
    }
    // Masking and the credential scrub read whole bodies: a value cut out of its document by a
    // range escapes field rules and detectors alike, and a reflected credential asked for in
    // parts, the scrub.
    let whole_bodies = !plan.is_empty() || upstream.scrub.is_some();
    if whole_bodies {
        out_headers.remove(header::RANGE);
        out_headers.remove(header::IF_RANGE);
    }
    // A validator names the unmasked body: matched against a guess (`If-None-Match: "<hash of
    // the body with a guessed value>"`, 304 or 200) it confirms a masked value.
    // A write's conditions stay (`If-Match`, `If-None-Match: *` for create-only): they guard
    // the write, and what they reveal costs one.
    if !plan.is_empty() {
        let read = parts.method == Method::GET || parts.method == Method::HEAD;
        for name in headers::BODY_VALIDATORS_ASKED {
            if read || !name.as_str().starts_with("if-") {
                out_headers.remove(&name);
            }
        }
    }
    out_headers.remove(header::HOST);
    if let Ok(v) = HeaderValue::from_str(&upstream.authority) {
        out_headers.insert(header::HOST, v);
    }
    // The API server takes an Audit-ID as its audit event's: the agent's own would let it give
    // its actions another request's ID. The gateway's request ID links the two records instead.
    if kube_info.is_some()
        && let Ok(v) = HeaderValue::from_str(request_id)
    {
        out_headers.insert(AUDIT_ID, v);
    }
    // Resource responses must be JSON to be masked; discovery and OpenAPI documents carry no
    // object data and kubectl reads some of them only as protobuf.
    let kube_resource = kube_info.as_ref().is_some_and(|k| k.is_resource_request);
    if kube_resource {
        let accept = out_headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        // Table cells carry values without their field names, out of the field rules' reach.
        // A core Secret's cells are safe (name, type, a count of keys, age); a `secrets`
        // resource of another group is masked like one, but its printer columns may show data.
        let other_secrets = kube_info
            .as_ref()
            .is_some_and(|k| k.resource == "secrets" && !k.api_group.is_empty());
        let tables = !applicable.iter().any(|p| p.masking.has_field_rules()) && !other_secrets;
        if let Ok(v) = HeaderValue::from_str(&kubernetes::json_accept(accept.as_deref(), tables)) {
            out_headers.insert(header::ACCEPT, v);
        }
    }
    // A refusal from here on comes after the decision, which an allowed read defers to the
    // response's write: the refusal is that response, on record before it is sent.
    let refused_after_decision = |problem: Problem| {
        record_upstream_failure(
            gw,
            &plane,
            session.as_deref(),
            request_id,
            &problem,
            Instant::now(),
        );
        problem
    };
    headers::inject_credential(&mut out_headers, connection.credential.as_ref())
        .map_err(|e| refused_after_decision(Problem::new(Kind::UpstreamUnavailable, e.to_string())))?;
    let override_found = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let body_unrecorded = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let out_body: Body = match (read_body, body) {
        (Some(bytes), _) => full(bytes),
        (None, Some(incoming)) => {
            let limited = http_body_util::Limited::new(incoming, MAX_REQUEST_BODY as usize);
            let mut boxed: Body = limited.boxed();
            if let Some(b) = &boundary {
                let guard = method_override::Guard {
                    scan: method_override::MultipartScan::new(b),
                    found: override_found.clone(),
                };
                boxed = response::Rewritten::new(boxed, guard).boxed();
            }
            match &session {
                Some(s) if request_has_body => Recorded::new(
                    boxed,
                    Some(RecordSink {
                        session: s.clone(),
                        kind: "http.request.body",
                        request_id: request_id.to_string(),
                        plan: Some(request_plan.clone()),
                        declared: declared_length(&out_headers),
                        on_failure: failure_counter(gw, &plane),
                        required: required(&plane),
                        withheld: Some(body_unrecorded.clone()),
                    }),
                )
                .boxed(),
                _ => boxed,
            }
        }
        (None, None) => full(Bytes::new()),
    };
    let uri = upstream.uri(&path, target.raw_query.as_deref());
    let mut up_req = Request::builder()
        .method(parts.method.clone())
        .uri(&uri)
        .body(out_body)
        .map_err(|_| refused_after_decision(bad_request("the request cannot be forwarded")))?;
    *up_req.headers_mut() = out_headers;
    let sent = Instant::now();
    let up_res = match upstream.send(up_req).await {
        Ok(res) => res,
        Err(_) if override_found.load(std::sync::atomic::Ordering::Relaxed) => {
            let problem = method_override_refused();
            record_upstream_failure(gw, &plane, session.as_deref(), request_id, &problem, sent);
            return Err(problem);
        }
        // Its last bytes were held back: the upstream never had the request whole.
        Err(_) if body_unrecorded.load(std::sync::atomic::Ordering::Relaxed) => {
            return Err(Problem::new(
                Kind::RecordingUnavailable,
                "session recording is required and the request body could not be recorded; the request was not completed upstream",
            ));
        }
        Err(problem) => {
            record_upstream_failure(gw, &plane, session.as_deref(), request_id, &problem, sent);
            return Err(problem);
        }
    };
    *upstream_time = Some(sent.elapsed().as_secs_f64());
    // The request body has gone upstream: its share of the budget is free for responses.
    drop(body_permits);

    // The response: masked when a rule applies, recorded in any case.
    let (mut res_parts, res_body) = up_res.into_parts();
    // What hyper read beside the headers rides in the extensions, and its HTTP/1 server writes
    // one of them back: the upstream's reason phrase (`404 No user alice@example.com`), which
    // neither the masker nor the credential scrubber sees. The agent gets the standard phrase.
    res_parts.extensions = hyper::http::Extensions::new();
    // A transfer coding other than chunked (`gzip, chunked`) is left on the body by hyper, and
    // its header goes with the hop-by-hop ones: looked at before they are removed.
    let transfer_coded = res_parts
        .headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .any(|t| !t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
    headers::sanitize_response(&mut res_parts.headers);
    if headers::Rebase::wanted(&res_parts.headers) {
        headers::Rebase {
            upstream_origin: &upstream.origin,
            base_path: &upstream.base_path,
            public_origin: public_origin(&authority, &cfg.gateway.dpop_origins),
            prefix: route_prefix,
        }
        .apply(&mut res_parts.headers);
    }
    // Header values quote data too (a Location naming a user's email), and may echo the
    // credential the upstream was sent.
    let header_report = headers::mask_values(&mut res_parts.headers, &plan, upstream.scrub.as_deref());
    if !header_report.is_empty() {
        gw.metrics.count_masking(&connection.name, &header_report);
    }
    // The gateway asks for identity encoding and whole bodies; an upstream that compresses
    // anyway, or sends part of a body, sends bytes that neither the masker nor the credential
    // scrubber can read.
    let partial = res_parts.status == StatusCode::PARTIAL_CONTENT
        || res_parts.headers.contains_key(header::CONTENT_RANGE);
    if whole_bodies && (is_encoded(&res_parts.headers) || partial || transfer_coded) {
        let problem = Problem::new(
            Kind::MaskingRefused,
            if partial {
                "the upstream's response was withheld because it is part of a body (206 Partial Content), which the gateway cannot mask or scrub"
            } else if transfer_coded {
                "the upstream's response was withheld because it is compressed (a Transfer-Encoding other than chunked), which the gateway cannot mask or scrub"
            } else {
                "the upstream's response was withheld because it is compressed (Content-Encoding), which the gateway cannot mask or scrub"
            },
        );
        gw.metrics
            .masking_refusals
            .with_label_values(&[&connection.name])
            .inc();
        record_upstream_failure(gw, &plane, session.as_deref(), request_id, &problem, sent);
        return Err(problem);
    }
    let mut res_body: Body = body::until_expiry(
        res_body.map_err(|e| -> BodyError { Box::new(e) }).boxed(),
        principal.expires_at,
    );
    // An upstream that reflects the credential it was sent must not hand it to the agent.
    if let Some(finder) = &upstream.scrub {
        res_body = scrub::scrubbed(res_body, finder.clone()).boxed();
    }
    let class = response::masking_class(
        res_parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
        &plan,
    );
    let bodiless = parts.method == Method::HEAD
        || res_parts.status == StatusCode::NO_CONTENT
        || res_parts.status == StatusCode::NOT_MODIFIED
        || res_parts
            .headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v == "0");
    let is_watch = kube_info.as_ref().is_some_and(|k| k.verb == "watch");
    let connection_name = connection.name.clone();
    let meta = ResponseMeta {
        request_id,
        status: res_parts.status.as_u16(),
        upstream_us: sent.elapsed().as_micros() as u64,
        total_us: started.elapsed().as_micros() as u64,
    };
    let discovery = kube_info.as_ref().is_some_and(|k| !k.is_resource_request);
    let token_plan = carries_token.then(|| plan.clone().with_kubernetes_token());
    let declared = declared_length(&res_parts.headers);
    let unmasked = plan.is_empty() || bodiless || discovery;
    // They describe the body before masking: with the masked one, they let a masked value be
    // guessed offline (Express's ETag is a SHA-1 of the body). A HEAD's are its GET's. Where no
    // body is masked (a write's 201 or 204, say) they stay: clients need them (S3's part ETags).
    // A 304 to a masked read is the same body's: its validators too.
    let read = parts.method == Method::GET || parts.method == Method::HEAD;
    if !unmasked || (read && !plan.is_empty()) {
        headers::remove_body_validators(&mut res_parts.headers);
    }
    // A HEAD's length is its GET's unmasked body's, where the GET's would be masked (a type
    // the masker reads, within its limit).
    if parts.method == Method::HEAD
        && !plan.is_empty()
        && !discovery
        && class != ContentClass::Other
        && declared.is_none_or(|n| n <= MAX_MASKED_BODY as u64)
    {
        res_parts.headers.remove(header::CONTENT_LENGTH);
    }
    // An unmasked body small enough to be recorded whole, with its length declared, is read
    // before it is sent: it goes on record with its response, in the same write, before the
    // agent has it. Larger or unframed bodies stream, and a tee records their start.
    let recorded_whole = !bodiless && !is_watch && declared.is_some_and(|n| n <= MAX_RECORDED_BODY as u64);
    let body: Body = if unmasked && recorded_whole {
        let read = tokio::time::timeout(
            UPSTREAM_BODY_TIMEOUT,
            response::read_capped(res_body, MAX_RECORDED_BODY),
        );
        let bytes = match read.await {
            Ok(Ok(bytes)) => bytes,
            Err(_) => {
                let problem = body_stalled();
                record_upstream_failure(gw, &plane, session.as_deref(), request_id, &problem, sent);
                return Err(problem);
            }
            Ok(Err(e)) => {
                let problem = body_unread(e);
                record_upstream_failure(gw, &plane, session.as_deref(), request_id, &problem, sent);
                return Err(problem);
            }
        };
        let event = meta.event(
            &res_parts.headers,
            recorded_whole_body(class, &bytes, token_plan.as_ref()),
            None,
        );
        record(gw, &plane, session.as_deref(), "http.response", event)?;
        full(bytes)
    } else if unmasked {
        let event = meta.event(
            &res_parts.headers,
            ResponseBody::Note(json!({"streamed": true})),
            None,
        );
        record(gw, &plane, session.as_deref(), "http.response", event)?;
        tee(
            res_body,
            session.as_ref(),
            request_id,
            token_plan.clone(),
            declared,
            gw,
            &plane,
        )
    } else if (is_watch && class == ContentClass::Json) || (class == ContentClass::Text && declared.is_none())
    {
        // Streams are masked as each line completes: a watch event by event, unframed text (a
        // followed log, server-sent events) line by line, so a stream that never ends still
        // flows instead of waiting to be read whole.
        let per = if class == ContentClass::Json {
            "per event"
        } else {
            "per line"
        };
        let note = json!({"streamed": true, "masked": per});
        let event = meta.event(&res_parts.headers, ResponseBody::Note(note), None);
        record(gw, &plane, session.as_deref(), "http.response", event)?;
        res_parts.headers.remove(header::CONTENT_LENGTH);
        let metrics = gw.metrics.clone();
        let masked = response::masked_lines_within(
            res_body,
            plan.clone(),
            class,
            Arc::new(move |r: &MaskReport| metrics.count_masking(&connection_name, r)),
            Some(gw.masking_budget.clone()),
        )
        .boxed();
        tee(masked, session.as_ref(), request_id, None, None, gw, &plane)
    } else {
        match mask_response(&plan, class, declared, res_body, &gw.masking_budget).await {
            Ok(Masked::Done(bytes, report, held)) => {
                gw.metrics.count_masking(&connection_name, &report);
                res_parts.headers.remove(header::CONTENT_LENGTH);
                res_parts
                    .headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
                let body = recorded_whole_body(class, &bytes, token_plan.as_ref());
                let event = meta.event(&res_parts.headers, body, Some(&report));
                record(gw, &plane, session.as_deref(), "http.response", event)?;
                // The budget's share goes with the body, given back once it is sent: in frames
                // the client's reading paces, so a client that stops reading holds the share
                // (and the connection's stall limit ends it), not memory outside the budget.
                super::body::paced(bytes, held)
            }
            Ok(Masked::PassThrough(body)) => {
                let note = json!({"streamed": true, "masked": false});
                let event = meta.event(&res_parts.headers, ResponseBody::Note(note), None);
                record(gw, &plane, session.as_deref(), "http.response", event)?;
                tee(
                    body,
                    session.as_ref(),
                    request_id,
                    Some(plan.clone()),
                    declared,
                    gw,
                    &plane,
                )
            }
            Err(Withheld::Unread(problem)) => {
                record_upstream_failure(gw, &plane, session.as_deref(), request_id, &problem, sent);
                return Err(problem);
            }
            Err(Withheld::Refused(reason)) => {
                gw.metrics
                    .masking_refusals
                    .with_label_values(&[&connection_name])
                    .inc();
                let note = json!({"refused": reason});
                let event = meta.event(&res_parts.headers, ResponseBody::Note(note), None);
                let _ = record(gw, &plane, session.as_deref(), "http.response", event);
                return Err(Problem::new(
                    Kind::MaskingRefused,
                    format!("the upstream's response was withheld because masking applies and {reason}"),
                ));
            }
        }
    };
    res_parts.headers.insert(
        "x-request-id",
        HeaderValue::from_str(request_id).unwrap_or(HeaderValue::from_static("unknown")),
    );
    Ok(Response::from_parts(res_parts, body))
}

/// An HTTP or Kubernetes approval's detail: the body's type, the headers the approval binds,
/// the query and the body (the last three masked as the record is), one per line, without the
/// agent's token; `Ok(None)` when the request has none of them. An approval covers only what
/// its approver reads, so nothing is cut: a body that is not text, was withheld or is longer
/// than the record keeps is `Err` (why), and [`approval::ask`] refuses a detail longer than
/// the ApprovalRequest holds.
fn approval_detail(
    agent_token: Option<&str>,
    content_type: Option<&str>,
    bound_headers: &[String],
    query: Option<std::borrow::Cow<'_, str>>,
    body: Option<crate::recording::CappedBody<'_>>,
) -> Result<Option<String>, String> {
    let part = |text: String| approval::visible(&approval::hide_token(text, agent_token));
    let mut lines = Vec::new();
    if let Some(ct) = content_type {
        // Part of the operation: the same bytes as a merge and a strategic-merge patch differ.
        lines.push(part(format!("content-type: {ct}")));
    }
    lines.extend(bound_headers.iter().map(|h| part(h.clone())));
    lines.extend(query.map(|q| part(format!("query: {q}"))));
    if let Some(b) = body {
        if let Some(why) = b.unreadable() {
            return Err(format!(
                "an approver could not read this request's body ({why}), and an approval covers only what its approver reads"
            ));
        }
        lines.push(part(format!("body: {}", b.for_reading())));
    }
    Ok((!lines.is_empty()).then(|| lines.join("\n")))
}

/// Records what came of a decided request that got no upstream response: an upstream that
/// failed, or a refusal after the decision, as the response. The problem is the answer either
/// way, so a failure to record it changes nothing.
fn record_upstream_failure(
    gw: &Gateway,
    plane: &Plane,
    session: Option<&Session>,
    request_id: &str,
    problem: &Problem,
    sent: Instant,
) {
    let event = json!({
        "request_id": request_id,
        "status": problem.status().as_u16(),
        "problem": problem.kind.slug(),
        "upstream_us": sent.elapsed().as_micros() as u64,
    });
    let _ = record(gw, plane, session, "http.response", event);
}

/// A whole response body as its `http.response` event records it: as JSON when it is JSON
/// (already masked, when masking applies), else as text or base64, up to the recording cap;
/// masked again under `for_record` when the record must hide more than the agent's copy.
fn recorded_whole_body<'a>(
    class: ContentClass,
    bytes: &'a [u8],
    for_record: Option<&MaskingPlan>,
) -> ResponseBody<'a> {
    if let Some(plan) = for_record {
        return ResponseBody::Recorded(response::body_for_record(Some(plan), bytes, true, false));
    }
    ResponseBody::Recorded(if class == ContentClass::Json {
        crate::recording::CappedBody::json(bytes.into(), MAX_RECORDED_BODY)
    } else {
        response::body_for_record(None, bytes, true, false)
    })
}

/// The `Content-Length` of a message, when it has one.
fn declared_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// Whether a message has a body: framed by its headers, or (HTTP/2, which needs no
/// Content-Length) a stream that did not end with its headers.
fn has_body(h: &HeaderMap, body: Option<&Incoming>) -> bool {
    h.contains_key(header::TRANSFER_ENCODING)
        || h.get(header::CONTENT_LENGTH).is_some_and(|v| v != "0")
        || body.is_some_and(|b| !hyper::body::Body::is_end_stream(b))
}

enum Masked {
    /// Masked, with the share of the masking budget the body holds until it is sent.
    Done(Bytes, MaskReport, Option<tokio::sync::OwnedSemaphorePermit>),
    /// The masker could not read it and the rules let it through unmasked.
    PassThrough(Body),
}

/// Longest the gateway waits for an upstream body it reads whole (to mask it, or to record it
/// before sending): a stalled upstream would hold its share of the masking budget for ever.
pub const UPSTREAM_BODY_TIMEOUT: Duration = Duration::from_secs(120);

async fn mask_response(
    plan: &MaskingPlan,
    class: ContentClass,
    declared: Option<u64>,
    body: Body,
    budget: &Arc<tokio::sync::Semaphore>,
) -> Result<Masked, Withheld> {
    let allow_unmasked = plan.on_unparseable() == UnparseablePolicy::Allow;
    // A type the masker cannot parse, let through, still meets the detectors when it is text
    // (XML, CSV, YAML): read whole when its declared length is within the limit.
    let readable_other = class == ContentClass::Other
        && allow_unmasked
        && plan.has_detectors()
        && declared.is_some_and(|n| n <= MAX_MASKED_BODY as u64);
    if !readable_other
        && (class == ContentClass::Other || declared.is_some_and(|n| n > MAX_MASKED_BODY as u64))
    {
        return if allow_unmasked {
            Ok(Masked::PassThrough(body))
        } else if class == ContentClass::Other {
            Err(Withheld::Refused("its content type cannot be masked".into()))
        } else {
            Err(Withheld::Refused(format!(
                "it is larger than the masking limit of {MAX_MASKED_BODY} bytes"
            )))
        };
    }
    // Held until the masked body is sent (or dropped): a client reading slowly holds it.
    let read = tokio::time::timeout(
        UPSTREAM_BODY_TIMEOUT,
        response::read_within(body, MAX_MASKED_BODY, Some(budget)),
    );
    // An upstream that stalls or breaks off its body is the upstream's failure, answered as
    // the same failure of a body passed through is (504, 502), not as masking's refusal.
    let Ok(read) = read.await else {
        return Err(Withheld::Unread(body_stalled()));
    };
    let (bytes, held) = match read {
        Ok(b) => b,
        Err(MaskFailure::TooLarge) => {
            return Err(Withheld::Refused(format!(
                "it is larger than the masking limit of {MAX_MASKED_BODY} bytes"
            )));
        }
        Err(e) => return Err(Withheld::Unread(body_unread(e))),
    };
    match response::mask_whole(plan, class, &bytes) {
        Ok((out, report)) => Ok(Masked::Done(Bytes::from(out), report, held)),
        // Passed unparsed, text still meets the detectors: one value the parser refuses (a
        // lone surrogate, a Latin-1 byte) must not unmask every other value of the body. A type
        // the masker does not read is text only when all of it is (not an image's bytes).
        Err(MaskFailure::Unparseable(_))
            if allow_unmasked
                && plan.has_detectors()
                && (class != ContentClass::Other || std::str::from_utf8(&bytes).is_ok()) =>
        {
            let (masked, report) = response::mask_text_pieces(plan, &bytes);
            Ok(Masked::Done(Bytes::from(masked), report, held))
        }
        Err(MaskFailure::Unparseable(why)) if allow_unmasked => {
            tracing::debug!(why, "response passed unmasked as the masking rules allow");
            Ok(Masked::PassThrough(full(bytes)))
        }
        Err(MaskFailure::Unparseable(why)) => Err(Withheld::Refused(why.to_string())),
        Err(_) => Err(Withheld::Refused("the body could not be masked".into())),
    }
}

/// Why a decided request cannot be forwarded, whatever its decision: an upgrade, or an
/// upstream not configured. (A credential that cannot be sent is refused when the
/// configuration is loaded.)
fn unforwardable(
    headers: &HeaderMap,
    kube_info: Option<&request_info::RequestInfo>,
    plane: &Plane,
    connection: &CompiledConnection,
) -> Result<(), Problem> {
    refuse_upgrade(headers, kube_info)?;
    match plane.upstreams.get(&connection.name) {
        Some(Ok(_)) => Ok(()),
        _ => Err(upstream_not_configured()),
    }
}

fn upstream_not_configured() -> Problem {
    Problem::new(
        Kind::UpstreamUnavailable,
        "the Connection's upstream client is not configured",
    )
}

/// The request body as body conditions see it.
fn body_view<'a>(
    read: Option<&[u8]>,
    parsed: Option<&'a Value>,
    bodiless: bool,
    encoded: bool,
) -> BodyView<'a> {
    match (read, parsed) {
        // GET and HEAD bodies are refused before.
        (None, _) if bodiless => BodyView::Empty,
        (None, _) => BodyView::NotRead,
        (Some([]), _) => BodyView::Empty,
        // Compressed: its document is what the upstream decompresses, not these bytes, even
        // where they parse.
        (Some(_), _) if encoded => BodyView::NotRead,
        (Some(_), Some(v)) => BodyView::Json(v),
        (Some(_), None) => BodyView::NotJson,
    }
}

/// Why a response to be masked was not sent.
#[derive(Debug)]
enum Withheld {
    /// Masking refused it (type, size, parse): `masking-refused`, the reason completing
    /// "withheld because masking applies and ...".
    Refused(String),
    /// Its body was not read whole ([`body_unread`]; or the upstream stalled).
    Unread(Problem),
}

/// The answer to a response body the upstream did not finish within [`UPSTREAM_BODY_TIMEOUT`].
fn body_stalled() -> Problem {
    Problem::new(
        Kind::UpstreamTimeout,
        format!(
            "the upstream did not send its response body within {} s",
            UPSTREAM_BODY_TIMEOUT.as_secs()
        ),
    )
}

/// The answer to a response body that could not be read whole, by whose doing: the upstream's
/// (broken off), the agent's token's (it expired meanwhile), the gateway's (its memory for bodies
/// is spent), never masking's.
fn body_unread(e: MaskFailure) -> Problem {
    match e {
        MaskFailure::Expired => Problem::new(
            Kind::Unauthenticated,
            "the access token expired while the response was being read",
        ),
        MaskFailure::Busy => Problem::new(
            Kind::GatewayBusy,
            format!("the gateway already holds {MAX_MASKING_MEMORY} bytes of responses to mask; retry later"),
        ),
        MaskFailure::TooLarge => Problem::new(
            Kind::UpstreamUnavailable,
            "the upstream's response body is too large",
        ),
        MaskFailure::Upstream(_) | MaskFailure::Unparseable(_) => Problem::new(
            Kind::UpstreamUnavailable,
            "the upstream's response body could not be read",
        ),
    }
}

fn tee(
    body: Body,
    session: Option<&Arc<Session>>,
    request_id: &str,
    plan: Option<MaskingPlan>,
    declared: Option<u64>,
    gw: &Gateway,
    plane: &Plane,
) -> Body {
    match session {
        Some(s) => Recorded::new(
            body,
            Some(RecordSink {
                session: s.clone(),
                kind: "http.response.body",
                request_id: request_id.to_string(),
                plan,
                declared,
                on_failure: failure_counter(gw, plane),
                required: required(plane),
                withheld: None,
            }),
        )
        .boxed(),
        None => body,
    }
}

fn failure_counter(gw: &Gateway, plane: &Plane) -> Arc<dyn Fn() + Send + Sync> {
    let counter = gw
        .metrics
        .recording_failures
        .with_label_values(&[mode_label(plane)]);
    Arc::new(move || counter.inc())
}

fn mode_label(plane: &Plane) -> &'static str {
    match plane.snapshot.config.gateway.recording.mode {
        RecordingMode::Required => "required",
        RecordingMode::BestEffort => "best_effort",
    }
}

fn required(plane: &Plane) -> bool {
    plane.snapshot.config.gateway.recording.mode == RecordingMode::Required
}

/// Writes one event; in Required mode a failure refuses the operation.
fn record(
    gw: &Gateway,
    plane: &Plane,
    session: Option<&Session>,
    kind: &str,
    data: impl serde::Serialize,
) -> Result<(), Problem> {
    let Some(session) = session else {
        return if required(plane) {
            Err(Problem::new(
                Kind::RecordingUnavailable,
                "session recording is required and unavailable",
            ))
        } else {
            Ok(())
        };
    };
    settle(gw, plane, session.record(kind, data))
}

/// Applies the recording mode to the outcome of writing an event.
fn settle(
    gw: &Gateway,
    plane: &Plane,
    result: Result<(), crate::recording::RecordingError>,
) -> Result<(), Problem> {
    match result {
        Ok(()) => Ok(()),
        Err(e) => {
            gw.metrics
                .recording_failures
                .with_label_values(&[mode_label(plane)])
                .inc();
            tracing::error!(error = %e, "recording an event failed");
            if required(plane) {
                Err(Problem::new(
                    Kind::RecordingUnavailable,
                    "session recording is required and failed",
                ))
            } else {
                Ok(())
            }
        }
    }
}

/// The session of (identity, connection) on this downstream connection, opened on first use.
fn session_for(
    plane: &Plane,
    gw: &Gateway,
    conn: &ConnContext,
    principal: &Principal,
    connection: &CompiledConnection,
) -> Result<Option<Arc<Session>>, Problem> {
    let required = required(plane);
    let recorder = match &plane.recorder {
        Ok(r) => r,
        Err(_) if required => {
            return Err(Problem::new(
                Kind::RecordingUnavailable,
                "session recording is required and unavailable",
            ));
        }
        Err(_) => return Ok(None),
    };
    let mut sessions = conn.sessions.lock().unwrap_or_else(|p| p.into_inner());
    let mut retired = None;
    // Compared in place: every request looks its session up, and only a new one needs a key.
    let is_ours = |k: &SessionKey| {
        k.identity == principal.identity
            && k.subject == principal.subject
            && k.binding == principal.binding
            && k.connection == connection.name
    };
    if let Some(at) = sessions.iter().position(|(k, _)| is_ours(k)) {
        let current = &sessions[at].1;
        let reason = if !recorder.started(current) {
            // The recording configuration changed (mode or directory) since this connection's
            // session began: a session keeps its recorder's mode, so one begun under BestEffort
            // would go on swallowing failures under Required.
            "recording configuration changed"
        } else if current.is_old() {
            // Signed and shippable only once closed: a connection held open for days must not
            // keep its evidence unsigned that long.
            "session age limit"
        } else {
            // Kept in the order of use, so the least recently used is first.
            let entry = sessions.remove(at);
            let current = entry.1.clone();
            sessions.push(entry);
            return Ok(Some(current));
        };
        // A new one begins, naming the one it continues; the old one is closed (signed,
        // synced) off the request's thread, naming its successor, so a file removed from the
        // middle of a long connection's chain shows.
        let (_, old) = sessions.swap_remove(at);
        retired = Some((old, reason));
    }
    // Other sessions of the connection past their age limit, and beyond the limit of open
    // sessions the least recently used, are closed: one whose subject never comes back would
    // otherwise stay open, and unsigned, as long as the connection.
    let mut at = 0;
    while at < sessions.len() {
        let too_many = sessions.len() >= MAX_SESSIONS_PER_CONNECTION;
        if too_many || sessions[at].1.is_old() {
            let (_, idle) = sessions.remove(at);
            let reason = if too_many {
                "session limit of the connection"
            } else {
                "session age limit"
            };
            tokio::spawn(crate::recording::close_when_released(
                idle,
                json!({"reason": reason}),
                RETIRED_SESSION_WAIT,
            ));
        } else {
            at += 1;
        }
    }
    let mut start = json!({
        "identity": principal.identity,
        "subject": principal.subject,
        "issuer": principal.issuer,
        "groups": principal.groups,
        "connection": connection.name,
        "protocol": "http",
        "listener": conn.listener,
        "peer": conn.peer.to_string(),
        "tls": conn.tls,
        "dpop_bound": principal.binding.is_some(),
        "config_generation": plane.snapshot.generation,
    });
    if let (Some((old, _)), Some(o)) = (&retired, start.as_object_mut()) {
        o.insert("continues".into(), json!(old.id()));
    }
    let started = recorder.start_session(start);
    if let Some((old, reason)) = retired {
        let end = match &started {
            Ok(next) => json!({"reason": reason, "continued_by": next.id()}),
            Err(_) => json!({"reason": reason}),
        };
        // Requests still in flight on the connection (other HTTP/2 streams, a watch) hold the
        // old session and record their responses into it: it is closed once they are done, so
        // their events are neither refused nor lost.
        tokio::spawn(crate::recording::close_when_released(
            old,
            end,
            RETIRED_SESSION_WAIT,
        ));
    }
    match started {
        Ok(s) => {
            let key = SessionKey {
                identity: principal.identity.clone(),
                subject: principal.subject.clone(),
                binding: principal.binding.clone(),
                connection: connection.name.clone(),
            };
            sessions.push((key, s.clone()));
            Ok(Some(s))
        }
        Err(e) => {
            gw.metrics
                .recording_failures
                .with_label_values(&[mode_label(plane)])
                .inc();
            tracing::error!(error = %e, "opening a session record failed");
            if required {
                Err(Problem::new(
                    Kind::RecordingUnavailable,
                    "session recording is required and failed",
                ))
            } else {
                Ok(None)
            }
        }
    }
}

async fn authenticate(
    plane: &Plane,
    conn: &ConnContext,
    req: &Parts,
    authority: &str,
    raw_path: &str,
) -> Result<Arc<Principal>, Problem> {
    let verifier = plane.verifier.as_ref().map_err(|_| {
        Problem::new(
            Kind::IdentityProviderUnavailable,
            "token verification is not available",
        )
    })?;
    let authorization = match req.headers.get(header::AUTHORIZATION) {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| Problem::new(Kind::Unauthenticated, "the Authorization header is not valid"))?,
        ),
        None => None,
    };
    let dpop: Vec<&str> = req
        .headers
        .get_all("dpop")
        .iter()
        .map(|v| v.to_str().unwrap_or("\u{fffd}"))
        .collect();
    let scheme = if conn.tls { "https" } else { "http" };
    let url = format!("{scheme}://{authority}{raw_path}");
    let presented = Presented {
        authorization,
        dpop: &dpop,
        target: RequestTarget {
            method: req.method.as_str(),
            url: &url,
            origins: &plane.snapshot.config.gateway.dpop_origins,
            path: raw_path,
        },
        peer: Some(conn.peer.ip()),
    };
    let now = unix_now();
    verifier.verify(&presented, now).await.map_err(|e| {
        tracing::info!(reason = e.kind.slug(), detail = %e.detail, "token refused");
        let kind = match e.kind {
            ErrorKind::BindingRequired | ErrorKind::InvalidProof | ErrorKind::UseDpopNonce => {
                Kind::TokenBinding
            }
            ErrorKind::ProviderUnavailable => Kind::IdentityProviderUnavailable,
            // Not the agent's fault: a 401 would send it for a new token, which would not help.
            ErrorKind::ProofsBusy => {
                return Problem::new(Kind::GatewayBusy, e.kind.describe()).with("reason", e.kind.slug());
            }
            // Authenticated, and refused: a 401 would send the agent to fetch another token.
            ErrorKind::Suspended => {
                return Problem::new(Kind::IdentitySuspended, e.kind.describe())
                    .with("reason", e.kind.slug());
            }
            _ => Kind::Unauthenticated,
        };
        let mut p = Problem::new(kind, e.kind.describe()).with("reason", e.kind.slug());
        p.www_authenticate = Some(e.www_authenticate());
        p
    })
}

/// Of two decisions on one request (as an update and as the create it may be), the stricter:
/// Deny over RequireApproval over Allow. Two approvals under different rules conflict (one
/// approval must not stand in for the other's approvers): refused, naming both.
fn stricter<'p, 'o>(
    first: (Decision<'p>, &'o Operation<'o>),
    second: (Decision<'p>, &'o Operation<'o>),
) -> (Decision<'p>, &'o Operation<'o>) {
    if let (
        Action::RequireApproval,
        Action::RequireApproval,
        Cause::Rule { policy, rule },
        Cause::Rule {
            policy: other_policy,
            rule: other_rule,
        },
    ) = (first.0.action, second.0.action, first.0.cause, second.0.cause)
        && !(std::ptr::eq(policy, other_policy) && std::ptr::eq(rule, other_rule))
    {
        return (
            Decision::approval_conflict(policy, rule, other_policy, other_rule),
            first.1,
        );
    }
    if crate::policy::index::rank(second.0.action) < crate::policy::index::rank(first.0.action) {
        second
    } else {
        first
    }
}

/// The `decision` event.
#[derive(serde::Serialize)]
struct DecisionEvent<'a> {
    request_id: &'a str,
    action: &'static str,
    reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    policy: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rule: Option<&'a str>,
}

impl<'a> DecisionEvent<'a> {
    fn of(request_id: &'a str, d: &Decision<'a>, reason: String) -> Self {
        let (policy, rule) = match d.cause {
            Cause::Rule { policy, rule } => (Some(policy.name.as_str()), Some(rule.name.as_str())),
            _ => (None, None),
        };
        Self {
            request_id,
            action: d.label(),
            reason,
            policy,
            rule,
        }
    }
}

/// The `http.request` event: the request as forwarded, secrets redacted, body masked.
#[derive(serde::Serialize)]
struct RequestEvent<'a> {
    request_id: &'a str,
    method: &'a str,
    path: std::borrow::Cow<'a, str>,
    host: &'a str,
    peer: SocketAddr,
    version: &'static str,
    headers: headers::Recorded<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    query: Option<std::borrow::Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<crate::recording::CappedBody<'a>>,
}

/// The `http.response` event.
#[derive(serde::Serialize)]
struct ResponseEvent<'a> {
    request_id: &'a str,
    status: u16,
    headers: headers::Recorded<'a>,
    upstream_us: u64,
    total_us: u64,
    body: ResponseBody<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    masked: Option<MaskedCounts>,
}

#[derive(serde::Serialize)]
#[serde(untagged)]
enum ResponseBody<'a> {
    /// The masked body itself.
    Recorded(crate::recording::CappedBody<'a>),
    /// What happened to a body that is not recorded here (streamed, refused).
    Note(Value),
}

#[derive(serde::Serialize)]
struct MaskedCounts {
    fields: u64,
    detections: u64,
}

/// What every `http.response` event of one request carries.
#[derive(Clone, Copy)]
struct ResponseMeta<'a> {
    request_id: &'a str,
    status: u16,
    upstream_us: u64,
    total_us: u64,
}

impl<'a> ResponseMeta<'a> {
    fn event(
        self,
        headers: &'a HeaderMap,
        body: ResponseBody<'a>,
        masked: Option<&MaskReport>,
    ) -> ResponseEvent<'a> {
        ResponseEvent {
            request_id: self.request_id,
            status: self.status,
            headers: headers::for_record(headers),
            upstream_us: self.upstream_us,
            total_us: self.total_us,
            body,
            masked: masked.map(|r| MaskedCounts {
                fields: r.fields,
                detections: r.detections,
            }),
        }
    }
}

/// HTTP version as recorded.
fn version_label(v: hyper::http::Version) -> &'static str {
    match v {
        hyper::http::Version::HTTP_09 => "HTTP/0.9",
        hyper::http::Version::HTTP_10 => "HTTP/1.0",
        hyper::http::Version::HTTP_11 => "HTTP/1.1",
        hyper::http::Version::HTTP_2 => "HTTP/2.0",
        hyper::http::Version::HTTP_3 => "HTTP/3.0",
        _ => "unknown",
    }
}

fn refusal_for(d: &Decision<'_>, explained: String) -> Option<Problem> {
    let kind = match d.action {
        Action::Allow => return None,
        Action::Deny => Kind::DeniedByPolicy,
        Action::RequireApproval => Kind::ApprovalRequired,
    };
    let mut p = Problem::new(kind, explained);
    if let Cause::Rule { policy, rule } = d.cause {
        p = p
            .with("policy", policy.name.clone())
            .with("rule", rule.name.clone());
    }
    Some(p)
}

/// What a Kubernetes API request is decided as: `None` for what no rule can allow (a request for
/// no resource, a verb the policy does not know). A create of an object itself names none: its
/// name is in the body, and a custom resource's API creates the body's name when the path names
/// another (`POST .../databases/dev-x` with `metadata.name: prod-main`), where a built-in
/// resource's answers 405.
fn kubernetes_operation(info: &request_info::RequestInfo) -> Option<KubernetesOperation<'_>> {
    let verb = info.policy_verb()?;
    let creates_object = verb == agentgate_crds::policy::KubernetesVerb::Create && info.subresource.is_none();
    Some(KubernetesOperation {
        verb,
        api_group: &info.api_group,
        api_version: &info.api_version,
        resource: &info.resource,
        subresource: info.subresource.as_deref(),
        namespace: info.namespace.as_deref(),
        name: if creates_object {
            None
        } else {
            info.name.as_deref()
        },
    })
}

/// The create a request may also be, which the API server authorizes as `create` too: a
/// server-side apply of an object that does not exist, or an update of one where its resource's
/// API creates on update. Its name is the path's, which the body's must equal.
fn also_creates<'a>(
    k: &KubernetesOperation<'a>,
    content_type: Option<&str>,
) -> Option<KubernetesOperation<'a>> {
    use agentgate_crds::policy::KubernetesVerb::{Create, Patch, Update};
    let creates = k.subresource.is_none()
        && ((k.verb == Update && kubernetes::creates_on_update(k.api_group, k.resource))
            || (k.verb == Patch && content_type.is_some_and(kubernetes::is_apply_patch)));
    creates.then(|| KubernetesOperation {
        verb: Create,
        ..k.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upstream that stops sending a body read whole to be masked is answered, after
    /// [`UPSTREAM_BODY_TIMEOUT`] and not before, as the upstream's timeout (504), and the share
    /// of the masking budget the body held is returned: a stalled upstream cannot hold it.
    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_to_mask_times_out_and_returns_its_budget() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|b| (Ok(hyper::body::Frame::data(b)), rx))
        });
        let body: Body = http_body_util::StreamBody::new(stream).boxed();
        // More than a KiB, so the read holds budget; the sender stays open and silent.
        tx.send(Bytes::from(format!("{{\"users\":[\"{}", "x".repeat(4000))))
            .unwrap();
        let budget = Arc::new(tokio::sync::Semaphore::new(64));
        let began = tokio::time::Instant::now();
        let plan = MaskingPlan::every_detector();
        let masking = mask_response(plan, ContentClass::Json, None, body, &budget);
        tokio::pin!(masking);
        // Just before the limit it is still waiting, holding its share.
        let early = tokio::time::timeout(UPSTREAM_BODY_TIMEOUT - Duration::from_secs(1), &mut masking);
        assert!(early.await.is_err(), "gave up before the limit");
        assert_eq!(budget.available_permits(), 64 - 4);
        let limit = tokio::time::timeout(UPSTREAM_BODY_TIMEOUT * 2, masking).await;
        let problem = match limit.expect("no answer well past the limit") {
            Err(Withheld::Unread(problem)) => problem,
            Err(other) => panic!("{other:?}"),
            Ok(_) => panic!("a body that never ended was masked"),
        };
        assert!(began.elapsed() >= UPSTREAM_BODY_TIMEOUT);
        assert_eq!(
            problem.status(),
            hyper::StatusCode::GATEWAY_TIMEOUT,
            "{problem:?}"
        );
        assert!(problem.detail.contains("within 120 s"), "{}", problem.detail);
        assert_eq!(budget.available_permits(), 64, "the budget share is returned");
        drop(tx);
    }

    /// The approver reads every part an approval covers, whole: every bound header, the query
    /// and the body, control characters written out; a body it could not read is refused.
    #[test]
    fn approval_details_show_every_part_whole() {
        let query = format!("note={}", "x".repeat(5000));
        let body = br#"{"name":"bob","role":"admin"}"#;
        let headers: Vec<String> = (0..6).map(|i| format!("x-h{i}: v")).collect();
        let detail = approval_detail(
            None,
            Some("application/json"),
            &headers,
            Some(std::borrow::Cow::Borrowed(query.as_str())),
            Some(crate::recording::CappedBody::json(
                std::borrow::Cow::Borrowed(&body[..]),
                4096,
            )),
        )
        .unwrap()
        .unwrap();
        assert!(detail.contains(&query) && detail.contains("x-h5: v"), "{detail}");
        assert!(
            detail.ends_with(r#"body: {"name":"bob","role":"admin"}"#),
            "{detail}"
        );
        let tabs = format!("{{{}}}", "\t".repeat(10));
        let detail = approval_detail(
            None,
            None,
            &[],
            None,
            Some(crate::recording::CappedBody::json(
                std::borrow::Cow::Borrowed(tabs.as_bytes()),
                8192,
            )),
        )
        .unwrap()
        .unwrap();
        assert!(detail.starts_with("body: {\\u{9}"), "{detail}");
        // Longer than the record keeps, or not text: not shown, so not asked.
        let long = format!(r#"{{"note":"{}"}}"#, "y".repeat(3500));
        for capped in [
            crate::recording::CappedBody::json(std::borrow::Cow::Borrowed(long.as_bytes()), 1024),
            crate::recording::CappedBody::new(std::borrow::Cow::Borrowed(&[0xff, 0xfe, 0][..]), 1024),
        ] {
            let why = approval_detail(None, None, &[], None, Some(capped)).unwrap_err();
            assert!(why.contains("could not read this request's body"), "{why}");
        }
        assert_eq!(approval_detail(None, None, &[], None, None).unwrap(), None);
    }

    /// A request body read before the decision is bounded in time (a client that sends part of
    /// it and stalls gets 408) and in memory (the gateway's body budget spent: 503); one within
    /// both is read whole and holds its share of the budget until the permit is dropped.
    #[tokio::test]
    async fn request_bodies_read_to_decide_are_bounded_in_time_and_memory() {
        let frame = || Ok::<_, BodyError>(hyper::body::Frame::data(Bytes::from_static(b"{\"a\":")));
        let stalled = || -> Body {
            let frames = futures_util::StreamExt::chain(
                futures_util::stream::iter([frame()]),
                futures_util::stream::pending(),
            );
            http_body_util::StreamBody::new(frames).boxed()
        };
        let budget = response::masking_budget();
        let wait = Duration::from_millis(100);
        let e = read_body_within(stalled(), &budget, wait, "read")
            .await
            .unwrap_err();
        assert_eq!(
            (e.kind, e.status()),
            (Kind::RequestTimeout, StatusCode::REQUEST_TIMEOUT)
        );
        assert!(e.detail.contains("did not arrive within 100 ms"), "{}", e.detail);
        let spent = Arc::new(tokio::sync::Semaphore::new(0));
        let e = read_body_within(full(Bytes::from_static(b"{}")), &spent, wait, "read")
            .await
            .unwrap_err();
        assert_eq!(
            (e.kind, e.status()),
            (Kind::GatewayBusy, StatusCode::SERVICE_UNAVAILABLE)
        );
        let (bytes, permit) = read_body_within(full(Bytes::from(vec![b' '; 4096])), &budget, wait, "read")
            .await
            .unwrap();
        assert_eq!(bytes.len(), 4096);
        assert_eq!(budget.available_permits(), MAX_MASKING_MEMORY / 1024 - 4);
        drop(permit);
        assert_eq!(budget.available_permits(), MAX_MASKING_MEMORY / 1024);
    }

    /// A compressed body's conditions see it unread: an Allow on `$.dryRun` does not match the
    /// bytes the upstream will decompress into something else.
    #[test]
    fn a_compressed_body_is_not_judged_as_its_bytes() {
        let v = json!({"dryRun": true});
        let bytes = br#"{"dryRun":true}"#;
        assert!(matches!(
            body_view(Some(bytes), Some(&v), false, false),
            BodyView::Json(_)
        ));
        assert!(matches!(
            body_view(Some(bytes), Some(&v), false, true),
            BodyView::NotRead
        ));
        assert!(matches!(body_view(Some(b""), None, false, true), BodyView::Empty));
    }

    /// Under `onUnparseable: Allow`, JSON the parser refuses passes unparsed, yet its text still
    /// gets the detectors.
    #[tokio::test]
    async fn unparseable_json_let_through_still_meets_the_detectors() {
        let rules: Vec<agentgate_crds::policy::MaskingRule> =
            serde_json::from_value(json!([{"detectors": ["Email"], "onUnparseable": "Allow"}])).unwrap();
        let plan = MaskingPlan::compile(
            &rules.iter().collect::<Vec<_>>(),
            crate::masking::HashKey::process(),
        )
        .unwrap();
        let body = br#"[{"note":"\ud800"},{"email":"ada@example.com"}]"#;
        assert!(
            response::mask_whole(&plan, ContentClass::Json, body).is_err(),
            "the parser refuses it"
        );
        let budget = response::masking_budget();
        let masked = mask_response(
            &plan,
            ContentClass::Json,
            None,
            full(Bytes::from_static(body)),
            &budget,
        )
        .await
        .unwrap();
        let Masked::Done(out, report, held) = masked else {
            panic!("passed through unmasked");
        };
        drop(held);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"[{"note":"\ud800"},{"email":"[REDACTED:EMAIL]"}]"#
        );
        assert_eq!(report.detections, 1);
        // A type the masker cannot parse (XML, CSV), let through, meets the detectors when it
        // is text of a declared length within the limit; bytes that are not text pass as sent.
        let xml = b"<user><email>ada@example.com</email></user>";
        let masked = mask_response(
            &plan,
            ContentClass::Other,
            Some(xml.len() as u64),
            full(Bytes::from_static(xml)),
            &budget,
        )
        .await
        .unwrap();
        let Masked::Done(out, _, held) = masked else {
            panic!("passed through unmasked");
        };
        drop(held);
        assert_eq!(out, "<user><email>[REDACTED:EMAIL]</email></user>");
        let binary = b"\xff\x00ada@example.com";
        let passed = mask_response(
            &plan,
            ContentClass::Other,
            Some(binary.len() as u64),
            full(Bytes::from_static(binary)),
            &budget,
        )
        .await
        .unwrap();
        assert!(matches!(passed, Masked::PassThrough(_)));
        // One byte that is not UTF-8 (a Latin-1 export's `é`) in text the masker reads does not
        // carry the rest of the body out unread: the bytes pass, the values meet the detectors.
        for (class, body, want) in [
            (
                ContentClass::Text,
                &b"name,email\nJos\xe9,ada@example.com\n"[..],
                &b"name,email\nJos\xe9,[REDACTED:EMAIL]\n"[..],
            ),
            (
                ContentClass::Json,
                &b"{\"n\":\"\xff\",\"email\":\"ada@example.com\"}"[..],
                &b"{\"n\":\"\xff\",\"email\":\"[REDACTED:EMAIL]\"}"[..],
            ),
        ] {
            let masked = mask_response(
                &plan,
                class,
                Some(body.len() as u64),
                full(Bytes::copy_from_slice(body)),
                &budget,
            )
            .await
            .unwrap();
            let Masked::Done(out, report, held) = masked else {
                panic!("{class:?} passed through unmasked");
            };
            drop(held);
            assert_eq!((&out[..], report.detections), (want, 1), "{class:?}");
        }
        // Bytes held for masking count against the gateway's budget, and are given back.
        let held = budget.available_permits();
        assert_eq!(held, response::MAX_MASKING_MEMORY / 1024);
        let small = Arc::new(tokio::sync::Semaphore::new(1));
        let two_kib = Bytes::from(vec![b'a'; 2048]);
        let busy = mask_response(
            &plan,
            ContentClass::Text,
            Some(2048),
            full(two_kib.clone()),
            &small,
        )
        .await;
        assert!(busy.is_err_and(|why| matches!(why, Withheld::Unread(p) if p.kind == Kind::GatewayBusy)));
        // A token that expires while the body is read is the agent's to renew, not the
        // upstream's failure nor masking's refusal.
        let expired = body::until_expiry(full(Bytes::from_static(b"[]")), crate::approval::time::unix_now());
        let unread = mask_response(&plan, ContentClass::Json, Some(2), expired, &budget).await;
        assert!(
            unread.is_err_and(|why| matches!(why, Withheld::Unread(p) if p.kind == Kind::Unauthenticated)),
        );
        assert_eq!(small.available_permits(), 1);
        let roomy = Arc::new(tokio::sync::Semaphore::new(2));
        let masked = mask_response(&plan, ContentClass::Text, Some(2048), full(two_kib), &roomy)
            .await
            .unwrap();
        // Held while the masked body waits to be sent, given back with it.
        assert_eq!(roomy.available_permits(), 0);
        drop(masked);
        assert_eq!(roomy.available_permits(), 2);
    }

    #[test]
    fn a_token_request_answer_is_recorded_without_its_token() {
        let body = br#"{"kind":"TokenRequest","status":{"token":"eyJhbGciOi.live.token","expirationTimestamp":"2026-12-04T21:00:00Z"}}"#;
        let plan = MaskingPlan::empty(crate::masking::HashKey::process()).with_kubernetes_token();
        let ResponseBody::Recorded(recorded) = recorded_whole_body(ContentClass::Json, body, Some(&plan))
        else {
            panic!("recorded");
        };
        let text = serde_json::to_string(&recorded).unwrap();
        assert!(
            !text.contains("live.token") && text.contains("expirationTimestamp"),
            "{text}"
        );
        // Other answers are recorded as they were sent.
        let ResponseBody::Recorded(plain) = recorded_whole_body(ContentClass::Json, body, None) else {
            panic!("recorded");
        };
        assert!(serde_json::to_string(&plain).unwrap().contains("live.token"));
    }

    #[test]
    fn hosts_lose_their_port_and_case() {
        assert_eq!(
            host_without_port("Okta.Gateway.Internal:8443"),
            "okta.gateway.internal"
        );
        assert_eq!(host_without_port("[::1]:8443"), "::1");
        assert_eq!(host_without_port("example.com"), "example.com");
    }

    fn kube(method: &str, path_and_query: &str) -> request_info::RequestInfo {
        let (path, query) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));
        let target = normalize::normalize(path, (!query.is_empty()).then_some(query)).unwrap();
        request_info::derive(method, &target.path, &target.query).unwrap()
    }

    /// A create names no object, whatever the path says: a custom resource's API creates the
    /// body's name. A subresource's create (an eviction) is of the object the path names.
    #[test]
    fn creates_are_decided_on_no_name() {
        let decided = |method: &str, path: &str| {
            let info = kube(method, path);
            let op = kubernetes_operation(&info).unwrap();
            (
                op.verb,
                op.name.map(str::to_string),
                op.subresource.map(str::to_string),
            )
        };
        use agentgate_crds::policy::KubernetesVerb::*;
        assert_eq!(
            decided(
                "POST",
                "/apis/db.example.com/v1/namespaces/a/databases/dev-scratch"
            ),
            (Create, None, None)
        );
        assert_eq!(
            decided("POST", "/api/v1/namespaces/a/pods/p1/eviction"),
            (Create, Some("p1".into()), Some("eviction".into()))
        );
        assert_eq!(
            decided(
                "PUT",
                "/apis/db.example.com/v1/namespaces/a/databases/dev-scratch"
            ),
            (Update, Some("dev-scratch".into()), None)
        );
        assert!(kubernetes_operation(&kube("GET", "/api/v1/proxy/namespaces/a/pods/p")).is_none());
    }

    /// An update where the resource's API creates on update, or a server-side apply, is also
    /// decided as a create of the object the path names.
    #[test]
    fn updates_that_may_create_are_also_creates() {
        let also = |method: &str, path: &str, content_type: Option<&str>| {
            let info = kube(method, path);
            let op = kubernetes_operation(&info).unwrap();
            also_creates(&op, content_type).map(|c| (c.verb, c.name.map(str::to_string)))
        };
        let create = |name: &str| {
            Some((
                agentgate_crds::policy::KubernetesVerb::Create,
                Some(name.to_string()),
            ))
        };
        for path in [
            "/api/v1/namespaces/a/services/new-lb",
            "/api/v1/namespaces/a/endpoints/new-lb",
            "/apis/rbac.authorization.k8s.io/v1/clusterroles/new-lb",
            "/apis/node.k8s.io/v1/runtimeclasses/new-lb",
            "/apis/coordination.k8s.io/v1beta1/namespaces/a/leasecandidates/new-lb",
        ] {
            assert_eq!(also("PUT", path, None), create("new-lb"), "{path}");
        }
        for path in [
            "/api/v1/namespaces/a/configmaps/new-lb",
            "/apis/db.example.com/v1/namespaces/a/databases/new-lb",
            "/api/v1/namespaces/a/services/new-lb/status",
        ] {
            assert_eq!(also("PUT", path, None), None, "{path}");
        }
        let cm = "/api/v1/namespaces/a/configmaps/new-lb";
        assert_eq!(
            also("PATCH", cm, Some("application/apply-patch+yaml")),
            create("new-lb")
        );
        assert_eq!(also("PATCH", cm, Some("application/merge-patch+json")), None);
    }

    #[test]
    fn lower_case_methods_are_refused() {
        for m in ["delete", "Post", "pUT", "purge"] {
            let (parts, ()) = Request::builder()
                .method(m)
                .uri("/api/v1/users/1")
                .header(header::HOST, "gw")
                .body(())
                .unwrap()
                .into_parts();
            assert_eq!(check_framing(&parts).unwrap_err().kind, Kind::BadRequest, "{m}");
        }
        let (parts, ()) = Request::builder()
            .method("PURGE")
            .uri("/api/v1/users/1")
            .header(header::HOST, "gw")
            .body(())
            .unwrap()
            .into_parts();
        assert!(
            check_framing(&parts).is_ok(),
            "an upper-case extension method is decided"
        );
    }

    /// HTTP/2 carries a value's surrounding whitespace, which an HTTP/1 upstream trims: a rule
    /// on `x-environment: prod*` would decide on ` production` and the upstream act on
    /// `production`.
    #[test]
    fn header_values_with_surrounding_whitespace_are_refused() {
        for value in [" production", "production\t", "\tproduction ", " "] {
            let (parts, ()) = Request::builder()
                .method("POST")
                .version(hyper::Version::HTTP_2)
                .uri("/deploy/api/v1/deploy")
                .header(header::HOST, "gw")
                .header("x-environment", value)
                .body(())
                .unwrap()
                .into_parts();
            let refused = check_framing(&parts).unwrap_err();
            assert_eq!(refused.kind, Kind::BadRequest, "{value:?}");
            assert!(refused.detail.contains("x-environment"), "{}", refused.detail);
        }
        let (parts, ()) = Request::builder()
            .method("POST")
            .uri("/deploy/api/v1/deploy")
            .header(header::HOST, "gw")
            .header("x-environment", "prod uction")
            .body(())
            .unwrap()
            .into_parts();
        assert!(
            check_framing(&parts).is_ok(),
            "inner whitespace is the value's own"
        );
    }

    /// A Content-Type the gateway cannot read as text would hide a JSON patch of a Secret, a
    /// server-side apply or a multipart body from its checks; the upstream reads it up to `;`.
    #[test]
    fn content_types_past_ascii_are_refused() {
        for (name, value) in [
            (header::CONTENT_TYPE, &b"application/json-patch+json;\xff"[..]),
            (header::CONTENT_TYPE, b"application/apply-patch+yaml; x=\xc3\xa9"),
            (header::CONTENT_ENCODING, b"gzip\x80"),
        ] {
            let (parts, ()) = Request::builder()
                .method("PATCH")
                .uri("/api/v1/namespaces/a/secrets/db")
                .header(header::HOST, "gw")
                .header(&name, HeaderValue::from_bytes(value).unwrap())
                .body(())
                .unwrap()
                .into_parts();
            let refused = check_framing(&parts).unwrap_err();
            assert_eq!(refused.kind, Kind::BadRequest, "{value:?}");
            assert!(refused.detail.contains("visible ASCII"), "{}", refused.detail);
        }
        let (parts, ()) = Request::builder()
            .method("PATCH")
            .uri("/api/v1/namespaces/a/secrets/db")
            .header(header::HOST, "gw")
            .header(
                header::CONTENT_TYPE,
                "application/merge-patch+json; charset=utf-8",
            )
            .body(())
            .unwrap()
            .into_parts();
        assert!(check_framing(&parts).is_ok());
    }

    #[test]
    fn upgrades_are_refused_after_the_decision_not_before() {
        // kubectl exec sends an upgrade: framing lets it through so the policy decides (and the
        // record shows) the attempt; only then is it refused.
        let (parts, ()) = Request::builder()
            .method("GET")
            .uri("/api/v1/namespaces/a/pods/p/exec?command=ls")
            .header(header::HOST, "gw")
            .header(header::UPGRADE, "websocket")
            .header(header::CONNECTION, "Upgrade")
            .body(())
            .unwrap()
            .into_parts();
        assert!(check_framing(&parts).is_ok());
        let exec = kube("GET", "/api/v1/namespaces/a/pods/p/exec?command=ls");
        let refused = refuse_upgrade(&parts.headers, Some(&exec)).unwrap_err();
        assert_eq!(refused.kind, Kind::UnsupportedUpgrade);
        assert!(
            refused.detail.starts_with("exec needs a streaming upgrade"),
            "{}",
            refused.detail
        );
        // Without an Upgrade header too (SPDY clients may send it later, proxies may strip it).
        let none = HeaderMap::new();
        for (method, path) in [
            ("POST", "/api/v1/namespaces/a/pods/p/exec?command=ls"),
            ("POST", "/api/v1/namespaces/a/pods/p/attach"),
            ("POST", "/api/v1/namespaces/a/pods/p/portforward"),
            ("GET", "/api/v1/namespaces/a/services/s/proxy/x"),
            ("GET", "/api/v1/proxy/namespaces/a/pods/p"),
        ] {
            let info = kube(method, path);
            assert_eq!(
                refuse_upgrade(&none, Some(&info)).map_err(|p| p.kind),
                Err(Kind::UnsupportedUpgrade),
                "{method} {path}"
            );
        }
        // Ordinary requests pass; an upgrade on an HTTP connection is refused.
        assert!(refuse_upgrade(&none, Some(&kube("GET", "/api/v1/namespaces/a/pods/p/log"))).is_ok());
        assert!(refuse_upgrade(&none, None).is_ok());
        assert_eq!(
            refuse_upgrade(&parts.headers, None).map_err(|p| p.kind),
            Err(Kind::UnsupportedUpgrade)
        );
    }

    #[test]
    fn only_non_resource_reads_are_allowed_without_a_rule() {
        for path in [
            "/api",
            "/api/v1",
            "/apis",
            "/apis/apps",
            "/apis/apps/v1",
            "/version",
            "/openapi/v2",
            "/openapi/v3",
            "/openapi/v3/apis/apps/v1",
        ] {
            assert!(
                non_resource_read_allowed(&Method::GET, &kube("GET", path), true),
                "{path}"
            );
            assert!(
                !non_resource_read_allowed(&Method::GET, &kube("GET", path), false),
                "{path}"
            );
            assert!(
                !non_resource_read_allowed(&Method::POST, &kube("POST", path), true),
                "{path}"
            );
        }
        // Other non-resource paths are the API server's own logs, metrics, profiles and health:
        // no rule can name them, so nobody gets them.
        for path in [
            "/",
            "/logs",
            "/logs/kube-apiserver.log",
            "/metrics",
            "/debug/pprof/heap",
            "/healthz",
            "/livez/etcd",
            "/openapi",
            "/openid/v1/jwks",
            "/versions",
        ] {
            let info = kube("GET", path);
            assert!(!info.is_resource_request, "{path}");
            assert!(!non_resource_read_allowed(&Method::GET, &info, true), "{path}");
        }
        // The deprecated proxy path verb is a resource request no policy verb names: a GET of
        // it is not discovery.
        let proxy = kube("GET", "/api/v1/proxy/namespaces/a/pods/p/metrics");
        assert!(proxy.is_resource_request && proxy.policy_verb().is_none());
        assert!(!non_resource_read_allowed(&Method::GET, &proxy, true));
    }

    /// The agent's origin is a configured public origin naming the request's Host, default
    /// ports aside; without one it is unknown (the listener's view may be a proxy's).
    #[test]
    fn the_public_origin_is_the_configured_one_naming_the_host() {
        let configured = [
            "https://agents.example.com".to_string(),
            "http://gw.local:8080".to_string(),
        ];
        for (host, origin) in [
            ("agents.example.com", Some("https://agents.example.com")),
            ("AGENTS.example.com:443", Some("https://agents.example.com")),
            ("gw.local:8080", Some("http://gw.local:8080")),
            ("agents.example.com:8443", None),
            ("gw.local", None),
            ("agentgate.agentgate-system.svc:8080", None),
        ] {
            assert_eq!(public_origin(host, &configured), origin, "{host}");
        }
        assert_eq!(public_origin("agents.example.com", &[]), None);
    }

    #[test]
    fn request_ids_are_unique_hex() {
        let ids: std::collections::BTreeSet<String> =
            (0..3 * REQUEST_IDS_PER_DRAW).map(|_| new_request_id()).collect();
        assert_eq!(ids.len(), 3 * REQUEST_IDS_PER_DRAW, "ids repeat across draws");
        assert!(
            ids.iter()
                .all(|id| id.len() == 24 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        );
    }
}
