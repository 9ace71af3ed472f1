//! Pooled clients towards each Connection's endpoint, and the classification of their failures
//! into what the client is told (unavailable, TLS, timeout) without upstream internals.

use std::sync::Arc;
use std::time::Duration;

use hyper::http::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::body::Body;
use super::headers;
use super::problem::{Kind, Problem};
use super::tls::{UpstreamTls, client_config};
use crate::config::CompiledConnection;

/// Longest wait for a TCP (and TLS) connection to an upstream.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for an upstream's response head once the request is sent. Bodies (watches,
/// logs) may stream for longer.
pub const RESPONSE_HEAD_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle pooled connections are closed after this long.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Most idle pooled connections kept per upstream.
pub const POOL_MAX_IDLE: usize = 256;

/// The pooled client of one Connection.
#[derive(Clone, Debug)]
pub struct Upstream {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>,
    /// `scheme://host:port`, no trailing slash.
    pub origin: String,
    /// The endpoint's base path without a trailing slash (`""` for none).
    pub base_path: String,
    /// The `Host` header sent upstream.
    pub authority: String,
    /// The searcher for the Connection's credential in responses (see [`super::scrub::Scrubber`]).
    pub scrub: Option<Arc<crate::masking::secret::SecretFinder>>,
}

impl Upstream {
    /// Builds the client for `c`; errors name the problem, never secret material.
    pub fn new(c: &CompiledConnection) -> Result<Self, String> {
        let tls = UpstreamTls {
            ca: c.ca.as_ref(),
            insecure_skip_verify: c.insecure_skip_verify,
            client_certificate: c
                .credential
                .as_ref()
                .and_then(|cred| cred.client_certificate.as_ref())
                .map(|(crt, key)| (crt, key)),
        };
        let config = client_config(&tls)?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        http.set_nodelay(true);
        let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config);
        let builder = if c.endpoint.scheme == "https" {
            builder.https_only()
        } else {
            builder.https_or_http()
        };
        let builder = match &c.server_name {
            Some(name) => {
                let sn = rustls::pki_types::ServerName::try_from(name.clone())
                    .map_err(|_| format!("tls.serverName {name:?} is not a valid server name"))?;
                builder.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(sn))
            }
            None => builder,
        };
        let connector = builder.enable_http1().wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(POOL_MAX_IDLE)
            .build(connector);
        let default_port = if c.endpoint.scheme == "https" { 443 } else { 80 };
        let host = if c.endpoint.host.contains(':') {
            format!("[{}]", c.endpoint.host)
        } else {
            c.endpoint.host.clone()
        };
        let authority = if c.endpoint.port == default_port {
            host.clone()
        } else {
            format!("{host}:{}", c.endpoint.port)
        };
        Ok(Self {
            client,
            origin: format!("{}://{host}:{}", c.endpoint.scheme, c.endpoint.port),
            base_path: c.endpoint.path.trim_end_matches('/').to_string(),
            authority,
            scrub: c.credential.as_ref().and_then(|cred| {
                let secret = cred.secret.as_ref()?.expose();
                // Basic sends base64(user:secret): an upstream reflecting its Authorization
                // header hands the agent that token, which decodes to the secret.
                let token = headers::basic_token(cred);
                crate::masking::secret::SecretFinder::new(&[secret, token.as_deref().unwrap_or_default()])
            }),
        })
    }

    /// The URI for a normalized path and raw query.
    pub fn uri(&self, path: &str, raw_query: Option<&str>) -> String {
        let mut uri = format!("{}{}{}", self.origin, self.base_path, path);
        if let Some(q) = raw_query {
            uri.push('?');
            uri.push_str(q);
        }
        uri
    }

    /// Sends `req`, waiting at most [`RESPONSE_HEAD_TIMEOUT`] for the response head.
    pub async fn send(&self, req: Request<Body>) -> Result<Response<hyper::body::Incoming>, Problem> {
        match tokio::time::timeout(RESPONSE_HEAD_TIMEOUT, self.client.request(req)).await {
            Err(_) => Err(Problem::new(
                Kind::UpstreamTimeout,
                "the upstream did not answer in time",
            )),
            Ok(Ok(res)) => Ok(res),
            Ok(Err(e)) => Err(classify(&e)),
        }
    }
}

/// Turns a client error into a problem: TLS failures are told apart (a wrong CA is a
/// configuration problem worth naming); the error text itself stays in the log.
fn classify(e: &hyper_util::client::legacy::Error) -> Problem {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut tls = false;
    while let Some(s) = source {
        if s.downcast_ref::<rustls::Error>().is_some() {
            tls = true;
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && io.get_ref().is_some_and(|inner| inner.is::<rustls::Error>())
        {
            tls = true;
        }
        source = s.source();
    }
    tracing::warn!(error = %error_chain(e), "upstream request failed");
    if tls {
        Problem::new(Kind::UpstreamTls, "the upstream's TLS handshake failed")
    } else if e.is_connect() {
        Problem::new(Kind::UpstreamUnavailable, "the upstream cannot be reached")
    } else {
        Problem::new(
            Kind::UpstreamUnavailable,
            "the upstream closed the connection without an answer",
        )
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
