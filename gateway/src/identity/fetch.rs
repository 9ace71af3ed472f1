//! HTTP(S) fetches of discovery documents, JWKS and introspection results: bounded in time and
//! size, TLS through rustls (aws-lc-rs) with the platform's roots.

use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Largest response body read from an identity provider.
pub const MAX_RESPONSE_BYTES: usize = 512 * 1024;
/// Longest time one request to an identity provider may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A response from the identity provider.
#[derive(Debug)]
pub struct Fetched {
    pub status: StatusCode,
    pub cache_control: Option<String>,
    pub body: Bytes,
}

/// An HTTP/1 connector for https (rustls on aws-lc-rs, the platform's roots) and plain http:
/// for the services the gateway calls itself (identity providers, object storage).
pub fn native_roots_connector() -> Result<hyper_rustls::HttpsConnector<HttpConnector>, String> {
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .map_err(|e| format!("cannot load the platform's root certificates: {e}"))?
        .https_or_http()
        .enable_http1()
        .build())
}

/// The client used for every identity-provider call.
#[derive(Clone, Debug)]
pub struct HttpFetcher {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl HttpFetcher {
    /// A client trusting the platform's root certificates.
    pub fn new() -> Result<Self, String> {
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(native_roots_connector()?),
        })
    }

    /// GET `url`.
    pub async fn get(&self, url: &str) -> Result<Fetched, String> {
        let req = Request::builder()
            .method(Method::GET)
            .uri(url)
            .header("accept", "application/json")
            .body(Full::new(Bytes::new()))
            .map_err(|e| format!("invalid URL {url:?}: {e}"))?;
        self.send(req).await
    }

    /// POST a form to `url` with optional extra headers (client authentication).
    pub async fn post_form(
        &self,
        url: &str,
        headers: &[(&str, String)],
        form: &str,
    ) -> Result<Fetched, String> {
        let mut builder = Request::builder()
            .method(Method::POST)
            .uri(url)
            .header("accept", "application/json")
            .header("content-type", "application/x-www-form-urlencoded");
        for (name, value) in headers {
            builder = builder.header(*name, value.as_str());
        }
        let req = builder
            .body(Full::new(Bytes::from(form.to_string())))
            .map_err(|e| format!("invalid request: {e}"))?;
        self.send(req).await
    }

    async fn send(&self, req: Request<Full<Bytes>>) -> Result<Fetched, String> {
        let uri = req.uri().clone();
        let fut = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| format!("{uri}: {e}"))?;
            let status = resp.status();
            let cache_control = resp
                .headers()
                .get("cache-control")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let body = Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| {
                    format!(
                        "{uri}: reading the response failed or it exceeds {MAX_RESPONSE_BYTES} bytes: {e}"
                    )
                })?
                .to_bytes();
            Ok(Fetched {
                status,
                cache_control,
                body,
            })
        };
        tokio::time::timeout(REQUEST_TIMEOUT, fut)
            .await
            .map_err(|_| format!("{uri}: timed out"))?
    }
}

/// `max-age` from a Cache-Control header.
pub fn max_age(cache_control: Option<&str>) -> Option<Duration> {
    let cc = cache_control?;
    if cc.split(',').any(|d| matches!(d.trim(), "no-store" | "no-cache")) {
        return Some(Duration::ZERO);
    }
    cc.split(',')
        .filter_map(|d| d.trim().strip_prefix("max-age="))
        .find_map(|v| v.trim_matches('"').parse::<u64>().ok())
        .map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_max_age() {
        assert_eq!(
            max_age(Some("public, max-age=300")),
            Some(Duration::from_secs(300))
        );
        assert_eq!(max_age(Some("no-store")), Some(Duration::ZERO));
        assert_eq!(max_age(Some("public")), None);
        assert_eq!(max_age(None), None);
    }
}
