//! RFC 9457 problem details: every refusal the gateway itself produces, with a stable `type` per
//! cause. Bodies carry the gateway's explanation only, never upstream internals, tokens or stack
//! traces.

use bytes::Bytes;
use hyper::http::{HeaderValue, Response, StatusCode, header};
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
    UpstreamUnavailable,
    UpstreamTls,
    UpstreamTimeout,
    MaskingRefused,
    RecordingUnavailable,
    BadRequest,
    NoRoute,
    RequestTooLarge,
    UnsupportedUpgrade,
    ConfigurationUnavailable,
    IdentityProviderUnavailable,
}

impl Kind {
    /// The last segment of the problem type; also the metrics label.
    pub fn slug(self) -> &'static str {
        match self {
            Kind::Unauthenticated => "unauthenticated",
            Kind::TokenBinding => "token-binding",
            Kind::DeniedByPolicy => "denied-by-policy",
            Kind::ApprovalRequired => "approval-required",
            Kind::UpstreamUnavailable => "upstream-unavailable",
            Kind::UpstreamTls => "upstream-tls",
            Kind::UpstreamTimeout => "upstream-timeout",
            Kind::MaskingRefused => "masking-refused",
            Kind::RecordingUnavailable => "recording-unavailable",
            Kind::BadRequest => "bad-request",
            Kind::NoRoute => "no-route",
            Kind::RequestTooLarge => "request-too-large",
            Kind::UnsupportedUpgrade => "unsupported-upgrade",
            Kind::ConfigurationUnavailable => "configuration-unavailable",
            Kind::IdentityProviderUnavailable => "identity-provider-unavailable",
        }
    }

    fn status(self) -> StatusCode {
        match self {
            Kind::Unauthenticated | Kind::TokenBinding => StatusCode::UNAUTHORIZED,
            Kind::DeniedByPolicy | Kind::ApprovalRequired => StatusCode::FORBIDDEN,
            Kind::UpstreamUnavailable | Kind::UpstreamTls | Kind::MaskingRefused => StatusCode::BAD_GATEWAY,
            Kind::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Kind::RecordingUnavailable
            | Kind::ConfigurationUnavailable
            | Kind::IdentityProviderUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Kind::BadRequest => StatusCode::BAD_REQUEST,
            Kind::NoRoute => StatusCode::NOT_FOUND,
            Kind::RequestTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Kind::UnsupportedUpgrade => StatusCode::NOT_IMPLEMENTED,
        }
    }

    fn title(self) -> &'static str {
        match self {
            Kind::Unauthenticated => "Authentication required",
            Kind::TokenBinding => "Token binding required",
            Kind::DeniedByPolicy => "Denied by policy",
            Kind::ApprovalRequired => "Approval required",
            Kind::UpstreamUnavailable => "Upstream unavailable",
            Kind::UpstreamTls => "Upstream TLS failure",
            Kind::UpstreamTimeout => "Upstream timed out",
            Kind::MaskingRefused => "Response refused by masking",
            Kind::RecordingUnavailable => "Recording unavailable",
            Kind::BadRequest => "Bad request",
            Kind::NoRoute => "No route",
            Kind::RequestTooLarge => "Request too large",
            Kind::UnsupportedUpgrade => "Protocol upgrade not supported",
            Kind::ConfigurationUnavailable => "Gateway not configured",
            Kind::IdentityProviderUnavailable => "Identity provider unavailable",
        }
    }
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

    /// The HTTP response; `request_id` becomes `instance` and the `X-Request-Id` header.
    pub fn into_response(self, request_id: &str) -> Response<Body> {
        let body = serde_json::to_vec(&self.to_json(Some(&format!("urn:agentgate:request:{request_id}"))))
            .unwrap_or_default();
        let mut res = Response::new(full(Bytes::from(body)));
        *res.status_mut() = self.status();
        let h = res.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
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
}
