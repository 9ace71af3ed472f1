//! The development token issuer of `agentgate dev`. DEVELOPMENT ISSUER — NOT FOR PRODUCTION.
//!
//! It serves an OpenID Connect discovery document and a JWKS on a loopback address, so the gateway
//! verifies its tokens exactly as it verifies a real provider's (discovery, issuer pinning, JWKS
//! fetch). Its ES256 key is generated at start and lives only in this process; tokens are minted
//! in-process by [`DevIssuer::mint`] (there is no token endpoint, so nothing on the machine can ask
//! it for tokens).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper::{Method, StatusCode};
use serde_json::{Map, Value, json};

use super::DevError;
use super::server::{self, DevRequest, DevResponse, Server};
use crate::identity::mint::SigningKey;

/// Said wherever the issuer shows itself: logs, banner, discovery document, its own home page.
pub const WARNING: &str = "DEVELOPMENT ISSUER — NOT FOR PRODUCTION";
/// Path of the JWKS.
pub const JWKS_PATH: &str = "/keys";
/// Longest lifetime of a minted token: a development token should die with the afternoon.
pub const MAX_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Claims [`DevIssuer::mint`] sets itself and callers may not override.
pub const RESERVED_CLAIMS: &[&str] = &["iss", "sub", "iat", "nbf", "exp", "jti"];

/// A running development issuer.
pub struct DevIssuer {
    server: Server,
    url: String,
    key: Arc<SigningKey>,
}

impl std::fmt::Debug for DevIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevIssuer")
            .field("url", &self.url)
            .field("key", &self.key)
            .finish()
    }
}

impl DevIssuer {
    /// Generates a key and serves discovery and JWKS on `addr`, which must be 127.0.0.1 or ::1
    /// (port 0 picks a free port). Other addresses are refused: the AgentIdentity schema accepts
    /// `http://` issuers only on loopback, and a development issuer must not be reachable from
    /// another machine.
    pub async fn start(addr: SocketAddr) -> Result<Self, DevError> {
        if !server::is_canonical_loopback(addr.ip()) {
            return Err(DevError::NotLoopback { addr });
        }
        let (listener, bound) = server::bind_loopback(addr).await?;
        let url = format!("http://{}", server::url_host(bound));
        let kid = format!("dev-{}", server::hex(&server::random_bytes::<8>()?));
        let key = Arc::new(SigningKey::ec(&kid).map_err(DevError::Key)?);
        let discovery = discovery_document(&url).to_string();
        let jwks = SigningKey::jwks(&[&key]).to_string();
        let handler = Arc::new(move |req: &DevRequest| route(req, &discovery, &jwks));
        let server = Server::spawn(listener, bound, "dev-issuer", handler);
        tracing::warn!(issuer = %url, kid = %kid, "{WARNING}: ephemeral ES256 key, loopback only");
        Ok(Self { server, url, key })
    }

    /// The issuer URL (`iss` of every token, and what the AgentIdentity names).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// The JWKS the issuer serves.
    pub fn jwks(&self) -> Value {
        SigningKey::jwks(&[&self.key])
    }

    /// Signs an access token (`typ: at+jwt`) for `subject` with `claims` (audience, client id, ...)
    /// living `lifetime` from now. `iss`, `sub`, `iat`, `nbf`, `exp` and `jti` are set here and may
    /// not be in `claims`.
    pub fn mint(
        &self,
        subject: &str,
        claims: &Map<String, Value>,
        lifetime: Duration,
    ) -> Result<String, DevError> {
        if subject.is_empty() {
            return Err(DevError::Mint("the subject is empty".into()));
        }
        if lifetime.is_zero() || lifetime > MAX_LIFETIME {
            return Err(DevError::Mint(format!(
                "lifetime {}s is outside 1s..={}s",
                lifetime.as_secs(),
                MAX_LIFETIME.as_secs()
            )));
        }
        if let Some(name) = RESERVED_CLAIMS.iter().find(|c| claims.contains_key(**c)) {
            return Err(DevError::Mint(format!("claim {name} is set by the issuer")));
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| DevError::Mint("the system clock is before 1970".into()))?
            .as_secs();
        let mut body = claims.clone();
        body.insert("iss".into(), json!(self.url));
        body.insert("sub".into(), json!(subject));
        body.insert("iat".into(), json!(now));
        body.insert("nbf".into(), json!(now));
        body.insert("exp".into(), json!(now + lifetime.as_secs()));
        body.insert("jti".into(), json!(server::hex(&server::random_bytes::<16>()?)));
        Ok(self.key.sign(&Value::Object(body)))
    }
}

/// The discovery document: what the gateway reads (`issuer`, `jwks_uri`) plus the members OpenID
/// Connect Discovery requires, and the warning for anyone who finds it.
fn discovery_document(url: &str) -> Value {
    json!({
        "issuer": url,
        "jwks_uri": format!("{url}{JWKS_PATH}"),
        "response_types_supported": ["token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
        "agentgate_warning": WARNING,
    })
}

fn route(req: &DevRequest, discovery: &str, jwks: &str) -> DevResponse {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return server::text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET and HEAD are served here\n",
        );
    }
    let body = match req.uri().path() {
        "/.well-known/openid-configuration" | "/.well-known/oauth-authorization-server" => discovery,
        JWKS_PATH => jwks,
        "/" => {
            return server::text(
                StatusCode::OK,
                &format!(
                    "{WARNING}\nagentgate dev's token issuer: keys live in memory only and die with the process.\n"
                ),
            );
        }
        _ => return server::text(StatusCode::NOT_FOUND, "not found\n"),
    };
    let mut resp = server::text(StatusCode::OK, body);
    let headers = resp.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    // The key never rotates while the process lives; a few minutes of caching is right.
    headers.insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("public, max-age=300"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::fetch::HttpFetcher;
    use jsonwebtoken::jwk::Jwk;
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};

    fn local() -> SocketAddr {
        "127.0.0.1:0".parse().unwrap()
    }

    #[tokio::test]
    async fn serves_discovery_and_jwks_and_minted_tokens_verify_against_them() {
        let issuer = DevIssuer::start(local()).await.unwrap();
        assert!(issuer.url().starts_with("http://127.0.0.1:"));
        let fetcher = HttpFetcher::new().unwrap();

        // The gateway's own discovery client accepts the document (issuer pinned byte for byte).
        let meta = crate::identity::discovery::discover(&fetcher, issuer.url())
            .await
            .unwrap();
        assert_eq!(meta.jwks_uri, format!("{}/keys", issuer.url()));

        let served = fetcher.get(&meta.jwks_uri).await.unwrap();
        assert_eq!(served.status, StatusCode::OK);
        let jwks: Value = serde_json::from_slice(&served.body).unwrap();
        assert_eq!(jwks, issuer.jwks());
        let jwk: Jwk = serde_json::from_value(jwks["keys"][0].clone()).unwrap();
        assert!(
            jwks["keys"][0].get("d").is_none(),
            "no private material is served"
        );

        let mut claims = Map::new();
        claims.insert("aud".into(), json!("api://test"));
        claims.insert("client_id".into(), json!("dev-agent"));
        let token = issuer
            .mint("dev-agent", &claims, Duration::from_secs(3600))
            .unwrap();

        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, Algorithm::ES256);
        assert_eq!(header.typ.as_deref(), Some("at+jwt"));
        assert_eq!(header.kid.as_deref(), jwks["keys"][0]["kid"].as_str());
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_audience(&["api://test"]);
        validation.set_issuer(&[issuer.url()]);
        validation.leeway = 0;
        let decoded =
            jsonwebtoken::decode::<Value>(&token, &DecodingKey::from_jwk(&jwk).unwrap(), &validation)
                .unwrap();
        let c = decoded.claims;
        assert_eq!(c["sub"], "dev-agent");
        assert_eq!(c["client_id"], "dev-agent");
        assert_eq!(c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(), 3600);
        assert_eq!(c["jti"].as_str().unwrap().len(), 32);

        // Another issuer's key does not verify it: the key is per process.
        let other = DevIssuer::start(local()).await.unwrap();
        let other_jwk: Jwk = serde_json::from_value(other.jwks()["keys"][0].clone()).unwrap();
        let mut any_issuer = Validation::new(Algorithm::ES256);
        any_issuer.set_audience(&["api://test"]);
        assert!(
            jsonwebtoken::decode::<Value>(&token, &DecodingKey::from_jwk(&other_jwk).unwrap(), &any_issuer)
                .is_err()
        );
    }

    #[tokio::test]
    async fn says_what_it_is_and_serves_nothing_else() {
        let issuer = DevIssuer::start(local()).await.unwrap();
        let fetcher = HttpFetcher::new().unwrap();
        let home = fetcher.get(&format!("{}/", issuer.url())).await.unwrap();
        assert!(String::from_utf8_lossy(&home.body).contains(WARNING));
        let doc = fetcher
            .get(&format!("{}/.well-known/openid-configuration", issuer.url()))
            .await
            .unwrap();
        assert!(String::from_utf8_lossy(&doc.body).contains("NOT FOR PRODUCTION"));
        assert_eq!(doc.cache_control.as_deref(), Some("public, max-age=300"));
        for path in ["/token", "/authorize", "/keys/../token"] {
            let r = fetcher.get(&format!("{}{path}", issuer.url())).await.unwrap();
            assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
        }
        let r = fetcher
            .post_form(
                &format!("{}/keys", issuer.url()),
                &[],
                "grant_type=client_credentials",
            )
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    }

    #[tokio::test]
    async fn refuses_non_loopback_addresses() {
        for addr in ["0.0.0.0:0", "[::]:0", "192.0.2.10:0", "127.0.0.2:0"] {
            let err = DevIssuer::start(addr.parse().unwrap()).await.unwrap_err();
            assert!(matches!(err, DevError::NotLoopback { .. }), "{addr}: {err}");
            assert!(err.to_string().contains("loopback"), "{err}");
        }
        let v6 = DevIssuer::start("[::1]:0".parse().unwrap()).await;
        // Hosts without IPv6 cannot bind ::1; where they can, the URL brackets the address.
        if let Ok(v6) = v6 {
            assert!(v6.url().starts_with("http://[::1]:"), "{}", v6.url());
        }
    }

    #[tokio::test]
    async fn mint_refuses_what_it_should_not_sign() {
        let issuer = DevIssuer::start(local()).await.unwrap();
        let none = Map::new();
        assert!(issuer.mint("", &none, Duration::from_secs(60)).is_err());
        assert!(issuer.mint("a", &none, Duration::ZERO).is_err());
        assert!(
            issuer
                .mint("a", &none, MAX_LIFETIME + Duration::from_secs(1))
                .is_err()
        );
        for claim in RESERVED_CLAIMS {
            let mut claims = Map::new();
            claims.insert((*claim).into(), json!("x"));
            let err = issuer.mint("a", &claims, Duration::from_secs(60)).unwrap_err();
            assert!(err.to_string().contains(claim), "{err}");
        }
    }
}
