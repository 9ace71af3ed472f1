//! The approvals part of the admin API (standalone mode):
//!
//! - `GET /approvals`: the ApprovalRequests the caller may read (those whose rule lists them, and
//!   those they decided), oldest first, as an `ApprovalRequestList`;
//! - `GET /approvals/{name}`: one of them (404 for any other);
//! - `POST /approvals/{name}/approve` and `POST /approvals/{name}/deny`, body `{"reason": "..."}`
//!   (optional): the caller's decision; answers the updated ApprovalRequest.
//!
//! Approvers authenticate with a bearer token (or DPoP) verified exactly like an agent's: by the
//! gateway's AgentIdentities, of which only those with `spec.approver: true` may decide (agents'
//! identities do not, so an agent cannot approve another agent's request whatever its groups).
//! The approver's user name is the token's `sub`, their groups are the identity's group mapping
//! (`spec.groups`), and `approvers.users`/`approvers.groups` of the rule name them. So a human approver signs in at an OIDC provider that an AgentIdentity
//! trusts (for instance an `approvers` identity matching the provider's issuer and the
//! audience of the approval tool), and nothing about approvers is configured twice.
//!
//! Refused: a caller whose token does not verify (401); a caller whose identity is not an
//! approver identity, or who approves no rule at all (403, also for reading); a caller not listed for the request's rule, the requester (same
//! subject), or anyone authenticated as the identity that asked (403); a request that is
//! unknown (404), no longer pending, already decided by the caller, or whose rule no longer
//! requires approval (409). Every error is `application/problem+json`.

use std::sync::Arc;
use std::time::Duration;

use agentgate_crds::ApprovalRequest;
use agentgate_crds::approval::DecisionState;
use agentgate_crds::policy::{Action, ApprovalRule};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Approvals, Approver, DecideError, unix_now};
use crate::config::GatewayConfig;
use crate::identity::dpop::RequestTarget;
use crate::identity::{IdentityError, Presented, Principal};
use crate::protocol::http::Gateway;

/// Path prefix of the approvals API.
pub const PREFIX: &str = "/approvals";
/// Largest decision body.
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// Longest time to receive a decision body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest reason (the ApprovalRequest schema's bound).
pub const MAX_REASON_BYTES: usize = 1024;
/// Base of problem types.
pub const PROBLEM_BASE: &str = "https://agentgate.dev/problems/";

/// A decision's body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionBody {
    #[serde(default)]
    pub reason: Option<String>,
}

/// Whether `path` is served here.
pub fn handles(path: &str) -> bool {
    path == PREFIX || path.starts_with("/approvals/")
}

/// Serves one approvals request. `approvals` is `None` when the store could not be opened;
/// `gateway` gives the configuration and token verifier in force.
pub async fn handle<B>(
    approvals: Option<&Arc<Approvals>>,
    gateway: Option<&Arc<Gateway>>,
    req: Request<B>,
) -> Response<Full<Bytes>>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // An approver on DPoP is handed the current nonce with every answer, as an agent is.
    let nonce = gateway
        .and_then(|g| g.plane())
        .filter(|_| crate::protocol::http::headers::speaks_dpop(req.headers()))
        .and_then(|p| p.verifier.as_ref().ok()?.dpop_nonce(unix_now()))
        .and_then(|n| HeaderValue::from_str(&n).ok());
    let mut resp = answer(approvals, gateway, req).await;
    if let Some(n) = nonce {
        resp.headers_mut().insert("dpop-nonce", n);
    }
    resp
}

async fn answer<B>(
    approvals: Option<&Arc<Approvals>>,
    gateway: Option<&Arc<Gateway>>,
    req: Request<B>,
) -> Response<Full<Bytes>>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let path = req.uri().path().to_string();
    let rest = path.strip_prefix(PREFIX).unwrap_or_default();
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let route = match (req.method(), segments.as_slice()) {
        (&Method::GET, []) => Route::List,
        (&Method::GET, [name]) => Route::Get(name.to_string()),
        (&Method::POST, [name, "approve"]) => Route::Decide(name.to_string(), DecisionState::Approved),
        (&Method::POST, [name, "deny"]) => Route::Decide(name.to_string(), DecisionState::Denied),
        (_, [] | [_]) | (_, [_, "approve" | "deny"]) => {
            let mut resp = problem(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
                format!("{} is not served on {path}", req.method()),
            );
            let allow = if segments.len() == 2 { "POST" } else { "GET" };
            resp.headers_mut()
                .insert(hyper::header::ALLOW, HeaderValue::from_static(allow));
            return resp;
        }
        _ => {
            return problem(
                StatusCode::NOT_FOUND,
                "not-found",
                "Not found",
                "the approvals API serves GET /approvals, GET /approvals/NAME, POST /approvals/NAME/approve and POST /approvals/NAME/deny".into(),
            );
        }
    };
    let Some(approvals) = approvals else {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "approvals-unavailable",
            "Approvals unavailable",
            "the approval store could not be opened; see the gateway's log".into(),
        );
    };
    let Some(plane) = gateway.and_then(|g| g.plane()) else {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "configuration-unavailable",
            "Configuration unavailable",
            "no valid configuration is loaded, so approvers cannot be authenticated".into(),
        );
    };
    let cfg = &plane.snapshot.config;
    let principal = match authenticate(&plane.verifier, &req).await {
        Ok(p) => p,
        Err(resp) => return resp,
    };
    if !cfg
        .identities
        .get(&principal.identity)
        .is_some_and(|i| i.spec.approver)
    {
        tracing::info!(identity = %principal.identity, "approvals API refused: not an approver identity");
        return problem(
            StatusCode::FORBIDDEN,
            "not-an-approver",
            "Not an approver",
            format!(
                "tokens of AgentIdentity {} cannot decide approvals; approvers sign in through an identity with spec.approver: true",
                principal.identity
            ),
        );
    }
    let approver = Approver {
        user: principal.subject.clone(),
        groups: principal.groups.clone(),
        subject: principal.subject.clone(),
    };
    if !approves_anything(cfg, &approver) {
        tracing::info!(user = %approver.user, identity = %principal.identity, "approvals API refused: not an approver of any rule");
        return problem(
            StatusCode::FORBIDDEN,
            "not-an-approver",
            "Not an approver",
            format!(
                "{} is not an approver of any rule: no approval rule lists this user or one of its groups",
                approver.user
            ),
        );
    }
    let now = unix_now();
    match route {
        Route::List => {
            let mut items = match approvals.list_async(now).await {
                Ok(items) => items,
                Err(e) => return decide_problem(&DecideError::Store(e)),
            };
            items.retain(|r| may_read(cfg, &approver, r));
            json_response(
                StatusCode::OK,
                &json!({
                    "apiVersion": agentgate_crds::API_VERSION,
                    "kind": "ApprovalRequestList",
                    "items": items,
                }),
            )
        }
        Route::Get(name) => match approvals.get_async(&name, now).await {
            Ok(Some(r)) if may_read(cfg, &approver, &r) => json_response(StatusCode::OK, &r),
            // Not found either way, so names of hidden requests cannot be probed.
            Ok(_) => decide_problem(&DecideError::NotFound { name }),
            Err(e) => decide_problem(&DecideError::Store(e)),
        },
        Route::Decide(name, state) => {
            let body = match read_body(req).await {
                Ok(b) => b,
                Err(resp) => return resp,
            };
            // Read again: the body may have taken seconds, and a decision is timed when made.
            let now = unix_now();
            let request = match approvals.get_async(&name, now).await {
                Ok(Some(r)) if may_read(cfg, &approver, &r) => r,
                // A hidden request is not found here either, so its phase cannot be probed.
                Ok(_) => return decide_problem(&DecideError::NotFound { name }),
                Err(e) => return decide_problem(&DecideError::Store(e)),
            };
            if principal.identity == request.spec.identity {
                return problem(
                    StatusCode::FORBIDDEN,
                    "self-approval",
                    "Self-approval refused",
                    format!(
                        "the caller is authenticated as AgentIdentity {}, which asked for this operation: it cannot decide its own request",
                        principal.identity
                    ),
                );
            }
            let rule = rule_in_force(cfg, &request);
            let decided = approvals
                .decide_async(
                    &name,
                    &approver,
                    state,
                    body.reason.clone(),
                    rule,
                    cfg.gateway.approvals.max_grant,
                    now,
                )
                .await;
            match decided {
                Ok(r) => {
                    let status = r.status.clone().unwrap_or_default();
                    if let Some(gw) = gateway {
                        let created = r.metadata.creation_timestamp.as_ref().map(|t| t.0.as_second());
                        if let Some(created) = created {
                            let label = if state == DecisionState::Approved {
                                "approved"
                            } else {
                                "denied"
                            };
                            gw.metrics
                                .approval_decision_seconds
                                .with_label_values(&[label])
                                .observe((now - created).max(0) as f64);
                        }
                        if let Ok(pending) = approvals.pending_async().await {
                            gw.metrics.approvals_pending.set(pending as i64);
                        }
                    }
                    tracing::info!(
                        request = %name,
                        approver = %approver.user,
                        decision = ?state,
                        reason = body.reason.as_deref().unwrap_or(""),
                        phase = ?status.phase,
                        approvals = status.approvals.unwrap_or(0),
                        "approval decision"
                    );
                    json_response(StatusCode::OK, &r)
                }
                Err(e) => {
                    tracing::info!(request = %name, approver = %approver.user, error = %e, "approval decision refused");
                    decide_problem(&e)
                }
            }
        }
    }
}

enum Route {
    List,
    Get(String),
    Decide(String, DecisionState),
}

/// The approval block configured now for `policy`/`rule`, when the rule still requires approval.
pub fn configured_rule<'a>(cfg: &'a GatewayConfig, policy: &str, rule: &str) -> Option<&'a ApprovalRule> {
    cfg.policies
        .iter()
        .find(|p| p.name == policy)?
        .spec
        .rules
        .iter()
        .find(|r| r.name == rule && r.action == Action::RequireApproval)?
        .approval
        .as_ref()
}

/// Whether any approval rule of the configuration lists `approver`.
pub fn approves_anything(cfg: &GatewayConfig, approver: &Approver) -> bool {
    cfg.policies
        .iter()
        .flat_map(|p| p.spec.rules.iter())
        .filter(|r| r.action == Action::RequireApproval)
        .filter_map(|r| r.approval.as_ref())
        .any(|a| approver.is_listed(&a.approvers))
}

/// Whether `approver` may read `request`: its approvers (frozen on it when it was made; for a
/// request made before they were, its rule's as configured now) list them, or they decided it.
/// Other approvers' requests (their operations, reasons and requesters) stay hidden.
fn may_read(cfg: &GatewayConfig, approver: &Approver, request: &ApprovalRequest) -> bool {
    let policy = &request.spec.policy;
    let listed = match &request.spec.approvers {
        Some(frozen) => approver.is_listed(frozen),
        None => configured_rule(cfg, &policy.name, &policy.rule)
            .is_some_and(|rule| approver.is_listed(&rule.approvers)),
    };
    listed || request.spec.decisions.contains_key(&approver.user)
}

/// The approval block of `request`'s rule when the rule in force is the one it was asked under
/// (same digest: conditions, approval terms and what the connection leads to). Deciding under a
/// changed rule would let approvers added since count, and its approval could never be used.
fn rule_in_force<'a>(cfg: &'a GatewayConfig, request: &ApprovalRequest) -> Option<&'a ApprovalRule> {
    let asked = &request.spec.policy;
    let policy = cfg.policies.iter().find(|p| p.name == asked.name)?;
    let rule = policy
        .rules
        .iter()
        .find(|r| r.name == asked.rule && r.action == Action::RequireApproval)?;
    let digest =
        crate::protocol::approval::rule_digest(policy, rule, cfg.connections.get(&request.spec.connection));
    if asked.digest.as_deref() != Some(digest.as_str()) {
        return None;
    }
    crate::protocol::approval::rule_spec(policy, rule)
}

async fn authenticate<B>(
    verifier: &Result<crate::identity::Verifier, String>,
    req: &Request<B>,
) -> Result<Arc<Principal>, Response<Full<Bytes>>> {
    let verifier = verifier.as_ref().map_err(|e| {
        tracing::error!(error = %e, "approvals API: no token verifier");
        problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "identity-provider-unavailable",
            "Token verification unavailable",
            "approver tokens cannot be verified with the configuration in force".into(),
        )
    })?;
    let headers = req.headers();
    let authorization = match headers.get_all(hyper::header::AUTHORIZATION).iter().count() {
        0 => None,
        1 => headers
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
        _ => {
            return Err(unauthenticated(&IdentityError::new(
                crate::identity::ErrorKind::MalformedToken,
                "several Authorization headers",
            )));
        }
    };
    let dpop: Vec<&str> = headers
        .get_all("dpop")
        .iter()
        // Counted, not dropped: a second DPoP header that is not text still makes two.
        .map(|v| v.to_str().unwrap_or("\u{fffd}"))
        .collect();
    let host = headers
        .get(hyper::header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost");
    // The Host is part of the URL a DPoP proof names: anything but host[:port] could make it
    // read as another path than this request's.
    if !crate::protocol::http::headers::is_plain_authority(host) {
        return Err(problem(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "Bad request",
            "the Host header is not a plain host[:port]".into(),
        ));
    }
    let url = format!("http://{host}{}", req.uri().path());
    let presented = Presented {
        authorization,
        dpop: &dpop,
        target: RequestTarget::at(req.method().as_str(), &url),
        // Its own share of the introspection budget, as an agent's address has: a flood of
        // junk tokens at the admin listener must not spend every agent's.
        peer: req.extensions().get::<crate::admin::PeerIp>().map(|p| p.0),
    };
    verifier.verify(&presented, unix_now()).await.map_err(|e| {
        tracing::info!(error = %e, "approvals API: token refused");
        unauthenticated(&e)
    })
}

fn unauthenticated(e: &IdentityError) -> Response<Full<Bytes>> {
    use crate::identity::ErrorKind;
    // Not the approver's token at fault: a 401 would send them for another, which would not help.
    let unavailable = match e.kind {
        ErrorKind::ProviderUnavailable => {
            Some(("identity-provider-unavailable", "Identity provider unavailable"))
        }
        ErrorKind::ProofsBusy => Some(("gateway-busy", "Gateway busy")),
        _ => None,
    };
    if let Some((slug, title)) = unavailable {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            slug,
            title,
            e.kind.describe().into(),
        );
    }
    let mut resp = problem(
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
        "Unauthenticated",
        format!(
            "{}; approvers authenticate with a token an AgentIdentity of this gateway accepts",
            e.kind.describe()
        ),
    );
    if let Ok(v) = HeaderValue::from_str(&e.www_authenticate()) {
        resp.headers_mut().insert(WWW_AUTHENTICATE, v);
    }
    resp
}

async fn read_body<B>(req: Request<B>) -> Result<DecisionBody, Response<Full<Bytes>>>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let bad = |detail: String| problem(StatusCode::BAD_REQUEST, "bad-request", "Bad request", detail);
    let collected = tokio::time::timeout(
        BODY_TIMEOUT,
        Limited::new(req.into_body(), MAX_BODY_BYTES).collect(),
    )
    .await
    .map_err(|_| {
        problem(
            StatusCode::REQUEST_TIMEOUT,
            "request-timeout",
            "Request timeout",
            format!("the body did not arrive within {} s", BODY_TIMEOUT.as_secs()),
        )
    })?
    .map_err(|e| {
        if e.is::<http_body_util::LengthLimitError>() {
            problem(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request-too-large",
                "Request too large",
                format!("the body is larger than {MAX_BODY_BYTES} bytes"),
            )
        } else {
            bad(format!("the body cannot be read: {e}"))
        }
    })?
    .to_bytes();
    if collected.iter().all(u8::is_ascii_whitespace) {
        return Ok(DecisionBody::default());
    }
    let body: DecisionBody = serde_json::from_slice(&collected)
        .map_err(|e| bad(format!("expected {{\"reason\": \"...\"}}: {e}")))?;
    if body.reason.as_ref().is_some_and(|r| r.len() > MAX_REASON_BYTES) {
        return Err(bad(format!("reason is longer than {MAX_REASON_BYTES} bytes")));
    }
    Ok(body)
}

fn decide_problem(e: &DecideError) -> Response<Full<Bytes>> {
    let (status, title) = match e {
        DecideError::NotFound { .. } => (StatusCode::NOT_FOUND, "Approval request not found"),
        DecideError::NotPending { .. } => (StatusCode::CONFLICT, "Approval request not pending"),
        DecideError::RuleGone { .. } => (StatusCode::CONFLICT, "Approval rule gone"),
        DecideError::NotAnApprover { .. } => (StatusCode::FORBIDDEN, "Not an approver"),
        DecideError::SelfApproval { .. } => (StatusCode::FORBIDDEN, "Self-approval refused"),
        DecideError::AlreadyDecided { .. } => (StatusCode::CONFLICT, "Already decided"),
        DecideError::Store(_) => (StatusCode::SERVICE_UNAVAILABLE, "Approval store unavailable"),
        DecideError::KubernetesMode { .. } => (StatusCode::CONFLICT, "Decided on the Kubernetes object"),
    };
    problem(status, e.slug(), title, e.to_string())
}

/// An RFC 9457 problem.
pub fn problem(status: StatusCode, slug: &str, title: &str, detail: String) -> Response<Full<Bytes>> {
    let body = json!({
        "type": format!("{PROBLEM_BASE}{slug}"),
        "title": title,
        "status": status.as_u16(),
        "detail": detail,
    });
    let mut resp = json_response(status, &body);
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
    resp
}

fn json_response(status: StatusCode, body: &impl serde::Serialize) -> Response<Full<Bytes>> {
    let mut bytes = serde_json::to_vec_pretty(body).unwrap_or_else(|_| b"{}".to_vec());
    bytes.push(b'\n');
    let mut resp = Response::new(Full::new(Bytes::from(bytes)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// A problem body's `detail`, for clients.
pub fn problem_detail(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    v.get("detail")?.as_str().map(str::to_string)
}

#[cfg(test)]
#[path = "api_tests.rs"]
mod tests;
