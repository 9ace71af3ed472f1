//! RFC 7662 token introspection: for opaque tokens and for issuers whose tokens must not be
//! validated locally (Okta's org authorization server). Answers are cached by token hash, never
//! beyond the token's `exp` nor the configured TTL; "not active" answers for [`NEGATIVE_TTL`], so
//! that replaying a dead token does not make the gateway call the provider each time. The
//! discovered endpoint is kept for [`DISCOVERY_TTL`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use agentgate_crds::identity::ClientAuthMethod;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::fetch::HttpFetcher;
use super::{ErrorKind, IdentityError};
use crate::config::{CompiledIdentity, SecretValue};

/// Default longest time an introspection answer is reused.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(60);
/// Most answers cached.
pub const MAX_CACHED: usize = 100_000;
/// Most "not active" answers kept, apart from the active ones: anyone can make the gateway ask
/// about junk tokens, so they must not push out the answers for live ones.
pub const MAX_CACHED_INACTIVE: usize = 10_000;
/// How long a "not active" answer is reused (never longer than the configured TTL).
pub const NEGATIVE_TTL: Duration = Duration::from_secs(10);
/// How long a discovered introspection endpoint is reused.
pub const DISCOVERY_TTL: Duration = Duration::from_secs(3600);
/// Most calls to the provider per second, on average (a burst may use a second's worth at
/// once). Any client can send a fresh junk token with each request, which no cache answers: the
/// gateway must not pass that flood on, or the provider rate-limits it and every agent's new
/// token fails.
pub const MAX_CALLS_PER_SECOND: u32 = 50;
/// Most calls to the provider waiting for an answer at once.
pub const MAX_CALLS_IN_FLIGHT: usize = 32;

/// A cached answer for an active token: its claims, reused until a unix time.
type Answer = (Value, i64);

/// Introspects tokens of one issuer.
#[derive(Debug)]
pub struct Introspector {
    issuer: String,
    endpoint: Option<String>,
    client_id: String,
    method: ClientAuthMethod,
    secret: SecretValue,
    ttl: Duration,
    fetcher: HttpFetcher,
    cache: Mutex<HashMap<[u8; 32], Answer>>,
    /// Token hash -> reuse "not active" until unix time.
    inactive: Mutex<HashMap<[u8; 32], i64>>,
    /// The endpoint found by discovery, and until when it is reused.
    discovered: Mutex<Option<(String, i64)>>,
    calls: Mutex<CallBudget>,
}

/// The provider calls allowed now: a token bucket refilled at [`MAX_CALLS_PER_SECOND`], and a
/// count of calls in flight.
#[derive(Debug)]
struct CallBudget {
    tokens: f64,
    refilled: std::time::Instant,
    in_flight: usize,
}

impl CallBudget {
    fn new(now: std::time::Instant) -> Self {
        Self {
            tokens: f64::from(MAX_CALLS_PER_SECOND),
            refilled: now,
            in_flight: 0,
        }
    }

    /// Takes one call if the budget allows it.
    fn take(&mut self, now: std::time::Instant) -> bool {
        let rate = f64::from(MAX_CALLS_PER_SECOND);
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        self.refilled = now;
        if self.tokens < 1.0 || self.in_flight >= MAX_CALLS_IN_FLIGHT {
            return false;
        }
        self.tokens -= 1.0;
        self.in_flight += 1;
        true
    }
}

/// A call in flight; counted out when dropped.
struct Call<'a>(&'a Mutex<CallBudget>);

impl Drop for Call<'_> {
    fn drop(&mut self) {
        let mut b = self.0.lock().unwrap_or_else(|p| p.into_inner());
        b.in_flight = b.in_flight.saturating_sub(1);
    }
}

impl Introspector {
    /// Built from an identity with an `introspection` block and its resolved secret.
    pub fn new(identity: &CompiledIdentity, fetcher: HttpFetcher) -> Result<Self, String> {
        let spec = identity
            .spec
            .introspection
            .as_ref()
            .ok_or_else(|| format!("AgentIdentity {}: no introspection block", identity.name))?;
        let secret = identity.introspection_secret.clone().ok_or_else(|| {
            format!(
                "AgentIdentity {}: introspection secret not resolved",
                identity.name
            )
        })?;
        let ttl = spec
            .cache_ttl
            .as_ref()
            .and_then(|d| d.to_std().ok())
            .unwrap_or(DEFAULT_CACHE_TTL);
        Ok(Self {
            issuer: identity.spec.issuer.clone(),
            endpoint: spec.endpoint.clone(),
            client_id: spec.client_id.clone(),
            method: spec.auth_method,
            secret,
            ttl,
            fetcher,
            cache: Mutex::new(HashMap::new()),
            inactive: Mutex::new(HashMap::new()),
            discovered: Mutex::new(None),
            calls: Mutex::new(CallBudget::new(std::time::Instant::now())),
        })
    }

    /// The issuer this introspector serves.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The claims of an active token, or an error (inactive tokens are `TokenInactive`).
    pub async fn introspect(&self, token: &str, now: i64) -> Result<Value, IdentityError> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let inactive = || {
            IdentityError::new(
                ErrorKind::TokenInactive,
                "introspection says the token is not active",
            )
        };
        if let Some((claims, until)) = self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(&key)
            && *until > now
        {
            return Ok(claims.clone());
        }
        if self
            .inactive
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .is_some_and(|until| *until > now)
        {
            return Err(inactive());
        }
        let unavailable = |e: String| IdentityError::new(ErrorKind::ProviderUnavailable, e);
        let admitted = self
            .calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(std::time::Instant::now());
        if !admitted {
            return Err(unavailable(format!(
                "too many token introspections at once (at most {MAX_CALLS_PER_SECOND} a second, {MAX_CALLS_IN_FLIGHT} waiting); retry shortly"
            )));
        }
        let _call = Call(&self.calls);
        let endpoint = match &self.endpoint {
            Some(e) => e.clone(),
            None => self.discovered_endpoint(now).await.map_err(unavailable)?,
        };
        let mut form = format!("token={}&token_type_hint=access_token", form_encode(token));
        let mut headers = Vec::new();
        match self.method {
            ClientAuthMethod::ClientSecretBasic => {
                let secret = String::from_utf8_lossy(self.secret.expose());
                let creds = format!("{}:{}", form_encode(&self.client_id), form_encode(&secret));
                headers.push(("authorization", format!("Basic {}", STANDARD.encode(creds))));
            }
            ClientAuthMethod::PrivateKeyJwt => {
                let assertion = self.client_assertion(&endpoint, now).map_err(unavailable)?;
                form.push_str(
                    "&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer",
                );
                form.push_str(&format!(
                    "&client_assertion={}&client_id={}",
                    form_encode(&assertion),
                    form_encode(&self.client_id)
                ));
            }
        }
        let resp = self
            .fetcher
            .post_form(&endpoint, &headers, &form)
            .await
            .map_err(unavailable)?;
        if !resp.status.is_success() {
            return Err(unavailable(format!("introspection answered {}", resp.status)));
        }
        let claims = super::strict_json::parse(&resp.body)
            .map_err(|e| unavailable(format!("introspection answer: {e}")))?;
        let ttl = self.ttl.as_secs() as i64;
        if claims.get("active") != Some(&Value::Bool(true)) {
            let until = now + ttl.min(NEGATIVE_TTL.as_secs() as i64);
            let mut inactive_cache = self.inactive.lock().unwrap_or_else(|p| p.into_inner());
            if inactive_cache.len() >= MAX_CACHED_INACTIVE {
                inactive_cache.retain(|_, u| *u > now);
                if inactive_cache.len() >= MAX_CACHED_INACTIVE {
                    inactive_cache.clear();
                }
            }
            inactive_cache.insert(key, until);
            return Err(inactive());
        }
        let exp = claims.get("exp").and_then(Value::as_i64).unwrap_or(now);
        let until = exp.min(now + ttl);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_CACHED {
            cache.retain(|_, (_, u)| *u > now);
        }
        if cache.len() < MAX_CACHED {
            cache.insert(key, (claims.clone(), until));
        }
        Ok(claims)
    }

    /// The introspection endpoint named by the issuer's discovery document, fetched at most once
    /// per [`DISCOVERY_TTL`].
    async fn discovered_endpoint(&self, now: i64) -> Result<String, String> {
        if let Some((endpoint, until)) = &*self.discovered.lock().unwrap_or_else(|p| p.into_inner())
            && *until > now
        {
            return Ok(endpoint.clone());
        }
        let endpoint = super::discovery::discover(&self.fetcher, &self.issuer)
            .await?
            .introspection_endpoint
            .ok_or("discovery names no introspection_endpoint")?;
        *self.discovered.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((endpoint.clone(), now + DISCOVERY_TTL.as_secs() as i64));
        Ok(endpoint)
    }

    /// RFC 7523 client assertion signed with the private key held in the secret (PEM).
    fn client_assertion(&self, audience: &str, now: i64) -> Result<String, String> {
        let pem = self.secret.expose();
        let (key, alg) = match EncodingKey::from_rsa_pem(pem) {
            Ok(k) => (k, Algorithm::RS256),
            Err(_) => (
                EncodingKey::from_ec_pem(pem)
                    .map_err(|_| "introspection key is neither an RSA nor an EC PEM key")?,
                Algorithm::ES256,
            ),
        };
        let jti: [u8; 16] =
            Sha256::digest(format!("{}{now}{:?}", self.client_id, std::time::Instant::now()).as_bytes())
                [..16]
                .try_into()
                .expect("16 bytes");
        let claims = json!({
            "iss": self.client_id, "sub": self.client_id, "aud": audience,
            "iat": now, "exp": now + 60, "jti": jti.iter().map(|b| format!("{b:02x}")).collect::<String>(),
        });
        jsonwebtoken::encode(&Header::new(alg), &claims, &key)
            .map_err(|e| format!("signing the client assertion: {e}"))
    }
}

/// `application/x-www-form-urlencoded` encoding of one value.
pub fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn provider_calls_are_budgeted_per_second_and_in_flight() {
        let t0 = Instant::now();
        let mut b = CallBudget::new(t0);
        for _ in 0..MAX_CALLS_IN_FLIGHT {
            assert!(b.take(t0));
        }
        assert!(!b.take(t0), "no more in flight");
        b.in_flight = 0;
        for _ in MAX_CALLS_IN_FLIGHT..MAX_CALLS_PER_SECOND as usize {
            assert!(b.take(t0));
            b.in_flight = 0;
        }
        assert!(!b.take(t0), "a second's calls are spent");
        let soon = t0 + Duration::from_millis(25);
        assert!(b.take(soon), "refilled at 50 a second: one per 20 ms");
        b.in_flight = 0;
        assert!(!b.take(soon));
        let later = t0 + Duration::from_secs(10);
        let burst = (0..200)
            .take_while(|_| {
                let ok = b.take(later);
                b.in_flight = 0;
                ok
            })
            .count();
        assert_eq!(
            burst, MAX_CALLS_PER_SECOND as usize,
            "a burst is at most a second's worth"
        );
    }
}
