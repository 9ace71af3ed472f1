//! RFC 9457 problem details: every refusal the gateway itself produces, with a stable `type` per
//! cause. Bodies carry the gateway's explanation only, never upstream internals, tokens or stack
//! traces. On Kubernetes connections the same problem is written as a Kubernetes `Status`, the only
//! error body Kubernetes clients read (kubectl prints anything else as "unknown").

use bytes::Bytes;
use hyper::http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use serde_json::{Value, json};

use super::body::{Body, full};

/// Base of every problem `type`.
pub const TYPE_BASE: &str = "https://agentgate.dev/problems/";

/// The causes a client can tell apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Unauthenticated,
    TokenBinding,
    DeniedByPolicy,
    ApprovalRequired,
    /// Hold mode: an approver denied the held operation.
    ApprovalDenied,
    /// Hold mode: nobody decided before the rule's timeout.
    ApprovalExpired,
    UpstreamUnavailable,
    UpstreamTls,
    UpstreamTimeout,
    MaskingRefused,
    RecordingUnavailable,
    BadRequest,
    NoRoute,
    RequestTooLarge,
    /// A request body read before the decision did not arrive in time.
    RequestTimeout,
    /// The gateway holds as many bodies as its memory budget allows.
    GatewayBusy,
    UnsupportedUpgrade,
    ConfigurationUnavailable,
    IdentityProviderUnavailable,
    /// The token is valid but its AgentIdentity is suspended (`spec.suspend`).
    IdentitySuspended,
}

impl Kind {
    /// The last segment of the problem type; also the metrics label.
    pub fn slug(self) -> &'static str {
        match self {
            Kind::Unauthenticated => "unauthenticated",
            Kind::TokenBinding => "token-binding",
            Kind::DeniedByPolicy => "denied-by-policy",
            Kind::ApprovalRequired => "approval-required",
            Kind::ApprovalDenied => "approval-denied",
            Kind::ApprovalExpired => "approval-expired",
            Kind::UpstreamUnavailable => "upstream-unavailable",
            Kind::UpstreamTls => "upstream-tls",
            Kind::UpstreamTimeout => "upstream-timeout",
            Kind::MaskingRefused => "masking-refused",
            Kind::RecordingUnavailable => "recording-unavailable",
            Kind::BadRequest => "bad-request",
            Kind::NoRoute => "no-route",
            Kind::RequestTooLarge => "request-too-large",
            Kind::RequestTimeout => "request-timeout",
            Kind::GatewayBusy => "gateway-busy",
            Kind::UnsupportedUpgrade => "unsupported-upgrade",
            Kind::ConfigurationUnavailable => "configuration-unavailable",
            Kind::IdentityProviderUnavailable => "identity-provider-unavailable",
            Kind::IdentitySuspended => "identity-suspended",
        }
    }

    fn status(self) -> StatusCode {
        match self {
            Kind::Unauthenticated | Kind::TokenBinding => StatusCode::UNAUTHORIZED,
            Kind::DeniedByPolicy
            | Kind::ApprovalRequired
            | Kind::ApprovalDenied
            | Kind::ApprovalExpired
            | Kind::IdentitySuspended => StatusCode::FORBIDDEN,
            Kind::UpstreamUnavailable | Kind::UpstreamTls | Kind::MaskingRefused => StatusCode::BAD_GATEWAY,
            Kind::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Kind::RecordingUnavailable
            | Kind::ConfigurationUnavailable
            | Kind::IdentityProviderUnavailable
            | Kind::GatewayBusy => StatusCode::SERVICE_UNAVAILABLE,
            Kind::BadRequest => StatusCode::BAD_REQUEST,
            Kind::NoRoute => StatusCode::NOT_FOUND,
            Kind::RequestTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Kind::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Kind::UnsupportedUpgrade => StatusCode::NOT_IMPLEMENTED,
        }
    }

    /// The Kubernetes `Status` reason: the API server's reason for the same status code
    /// (kubectl prints it as `Error from server (<reason>)`, client-go's `IsForbidden` and the like
    /// test it), or a plain name for the two codes the API server has no reason for.
    fn kubernetes_reason(self) -> &'static str {
        match self.status() {
            StatusCode::BAD_REQUEST => "BadRequest",
            StatusCode::UNAUTHORIZED => "Unauthorized",
            StatusCode::FORBIDDEN => "Forbidden",
            StatusCode::NOT_FOUND => "NotFound",
            StatusCode::PAYLOAD_TOO_LARGE => "RequestEntityTooLarge",
            StatusCode::REQUEST_TIMEOUT => "Timeout",
            StatusCode::SERVICE_UNAVAILABLE => "ServiceUnavailable",
            StatusCode::GATEWAY_TIMEOUT => "Timeout",
            StatusCode::NOT_IMPLEMENTED => "NotImplemented",
            StatusCode::BAD_GATEWAY => "BadGateway",
            _ => "InternalError",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Kind::Unauthenticated => "Authentication required",
            Kind::TokenBinding => "Token binding required",
            Kind::DeniedByPolicy => "Denied by policy",
            Kind::ApprovalRequired => "Approval required",
            Kind::ApprovalDenied => "Approval denied",
            Kind::ApprovalExpired => "Approval timed out",
            Kind::UpstreamUnavailable => "Upstream unavailable",
            Kind::UpstreamTls => "Upstream TLS failure",
            Kind::UpstreamTimeout => "Upstream timed out",
            Kind::MaskingRefused => "Response refused by masking",
            Kind::RecordingUnavailable => "Recording unavailable",
            Kind::BadRequest => "Bad request",
            Kind::NoRoute => "No route",
            Kind::RequestTooLarge => "Request too large",
            Kind::RequestTimeout => "Request body timed out",
            Kind::GatewayBusy => "Gateway busy",
            Kind::UnsupportedUpgrade => "Protocol upgrade not supported",
            Kind::ConfigurationUnavailable => "Gateway not configured",
            Kind::IdentityProviderUnavailable => "Identity provider unavailable",
            Kind::IdentitySuspended => "Identity suspended",
        }
    }
}

/// The object a refusal on a Kubernetes connection concerns, for the `Status`'s `details`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatusTarget {
    /// API group, `""` for core.
    pub group: String,
    /// Resource (plural), e.g. `configmaps`: the API server puts it in `details.kind` too.
    pub resource: String,
    pub name: Option<String>,
}

/// Whether the client's `Accept` names `application/problem+json` (it then gets the problem
/// document even on a Kubernetes connection).
pub fn accepts_problem_json(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|range| {
            range
                .split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .eq_ignore_ascii_case("application/problem+json")
        })
}

/// One problem response, built up then rendered.
#[derive(Clone, Debug)]
pub struct Problem {
    pub kind: Kind,
    pub detail: String,
    /// Extension members (`policy`, `rule`, `connection`, ...).
    pub extensions: serde_json::Map<String, Value>,
    pub www_authenticate: Option<String>,
}

impl Problem {
    pub fn new(kind: Kind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
            extensions: serde_json::Map::new(),
            www_authenticate: None,
        }
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extensions.insert(key.to_string(), value.into());
        self
    }

    pub fn status(&self) -> StatusCode {
        self.kind.status()
    }

    /// The JSON document.
    pub fn to_json(&self, instance: Option<&str>) -> Value {
        let mut doc = json!({
            "type": format!("{TYPE_BASE}{}", self.kind.slug()),
            "title": self.kind.title(),
            "status": self.status().as_u16(),
            "detail": self.detail,
        });
        if let Some(i) = instance {
            doc["instance"] = Value::String(i.to_string());
        }
        if let Value::Object(map) = &mut doc {
            for (k, v) in &self.extensions {
                map.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        doc
    }

    /// The problem as a Kubernetes `Status` (`v1`): `message` is the detail, `reason` and `code`
    /// follow the status, and `details.causes` carry the problem's members (`type`, `policy`,
    /// `rule`, ..., `instance`), each as a cause whose `reason` is the member name.
    pub fn to_kubernetes_status(&self, instance: &str, target: Option<&StatusTarget>) -> Value {
        let mut causes =
            vec![json!({"reason": "type", "message": format!("{TYPE_BASE}{}", self.kind.slug())})];
        for (k, v) in &self.extensions {
            let message = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            causes.push(json!({"reason": k, "message": message}));
        }
        causes.push(json!({"reason": "instance", "message": instance}));
        let mut details = json!({"causes": causes});
        if let Some(t) = target {
            details["group"] = Value::String(t.group.clone());
            details["kind"] = Value::String(t.resource.clone());
            if let Some(n) = &t.name {
                details["name"] = Value::String(n.clone());
            }
        }
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.detail,
            "reason": self.kind.kubernetes_reason(),
            "details": details,
            "code": self.status().as_u16(),
        })
    }

    /// The HTTP response; `request_id` becomes `instance` and the `X-Request-Id` header.
    pub fn into_response(self, request_id: &str) -> Response<Body> {
        let body = serde_json::to_vec(&self.to_json(Some(&instance(request_id)))).unwrap_or_default();
        self.respond(body, "application/problem+json", request_id)
    }

    /// The HTTP response for a Kubernetes client: the [`Status`](Self::to_kubernetes_status) as
    /// `application/json`, with the same status code and headers as [`into_response`](Self::into_response).
    pub fn into_kubernetes_response(self, request_id: &str, target: Option<&StatusTarget>) -> Response<Body> {
        let body =
            serde_json::to_vec(&self.to_kubernetes_status(&instance(request_id), target)).unwrap_or_default();
        self.respond(body, "application/json", request_id)
    }

    fn respond(self, body: Vec<u8>, content_type: &'static str, request_id: &str) -> Response<Body> {
        let mut res = Response::new(full(Bytes::from(body)));
        *res.status_mut() = self.status();
        let h = res.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Ok(v) = HeaderValue::from_str(request_id) {
            h.insert("x-request-id", v);
        }
        if let Some(w) = self
            .www_authenticate
            .as_deref()
            .and_then(|w| HeaderValue::from_str(w).ok())
        {
            h.insert(header::WWW_AUTHENTICATE, w);
        }
        res
    }
}

fn instance(request_id: &str) -> String {
    format!("urn:agentgate:request:{request_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_have_stable_types_and_extensions() {
        let p = Problem::new(Kind::DeniedByPolicy, "GET /x: denied")
            .with("policy", "p")
            .with("rule", "r")
            .with("type", "must not override");
        let doc = p.to_json(Some("urn:x"));
        assert_eq!(doc["type"], "https://agentgate.dev/problems/denied-by-policy");
        assert_eq!(doc["status"], 403);
        assert_eq!(doc["rule"], "r");
        assert_eq!(doc["instance"], "urn:x");
        let res = p.into_response("abc");
        assert_eq!(res.status(), 403);
        assert_eq!(res.headers()[header::CONTENT_TYPE], "application/problem+json");
    }

    #[test]
    fn kubernetes_clients_get_a_status_they_can_print() {
        let p = Problem::new(
            Kind::DeniedByPolicy,
            "delete configmaps settings: denied by rule \"never-delete\"",
        )
        .with("policy", "p")
        .with("rule", "never-delete");
        let target = StatusTarget {
            group: String::new(),
            resource: "configmaps".into(),
            name: Some("settings".into()),
        };
        let status = p.to_kubernetes_status("urn:x", Some(&target));
        assert_eq!(
            status,
            json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "delete configmaps settings: denied by rule \"never-delete\"",
                "reason": "Forbidden", "code": 403,
                "details": {"group": "", "kind": "configmaps", "name": "settings", "causes": [
                    {"reason": "type", "message": "https://agentgate.dev/problems/denied-by-policy"},
                    {"reason": "policy", "message": "p"},
                    {"reason": "rule", "message": "never-delete"},
                    {"reason": "instance", "message": "urn:x"},
                ]},
            })
        );
        let mut unauthenticated = Problem::new(Kind::Unauthenticated, "an access token is required");
        unauthenticated.www_authenticate = Some("Bearer".into());
        let res = unauthenticated.into_kubernetes_response("abc", None);
        assert_eq!(res.status(), 401);
        assert_eq!(res.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(res.headers()[header::WWW_AUTHENTICATE], "Bearer");
        assert_eq!(res.headers()["x-request-id"], "abc");
        for (kind, reason) in [
            (Kind::BadRequest, "BadRequest"),
            (Kind::Unauthenticated, "Unauthorized"),
            (Kind::ApprovalRequired, "Forbidden"),
            (Kind::UnsupportedUpgrade, "NotImplemented"),
            (Kind::UpstreamTimeout, "Timeout"),
            (Kind::RecordingUnavailable, "ServiceUnavailable"),
            (Kind::MaskingRefused, "BadGateway"),
        ] {
            assert_eq!(kind.kubernetes_reason(), reason, "{kind:?}");
        }
    }

    #[test]
    fn problem_json_only_when_asked_for() {
        let accept = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(header::ACCEPT, HeaderValue::from_str(v).unwrap());
            }
            accepts_problem_json(&h)
        };
        assert!(!accept(&[]));
        assert!(!accept(&["*/*"]));
        assert!(!accept(&["application/json, */*"]));
        assert!(!accept(&[
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
        ]));
        assert!(!accept(&["application/problem+jsonx"]));
        assert!(accept(&["application/problem+json"]));
        assert!(accept(&["application/json", "Application/Problem+JSON; q=0.5"]));
        assert!(accept(&["application/json, application/problem+json"]));
    }
}
