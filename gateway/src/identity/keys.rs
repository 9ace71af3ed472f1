//! Verification keys: JWK sets filtered to what may verify signatures, and a per-issuer cache of
//! remote JWKS with single-flight refresh, a cooldown against unknown-`kid` floods, and last-good
//! keys kept while the identity provider is unreachable.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

use super::fetch::{self, HttpFetcher};

/// Shortest time fetched keys are trusted without a refetch, whatever Cache-Control says.
pub const MIN_KEYS_TTL: Duration = Duration::from_secs(60);
/// Longest time fetched keys are trusted without a refetch.
pub const MAX_KEYS_TTL: Duration = Duration::from_secs(24 * 3600);
/// Trust period when the provider sends no Cache-Control.
pub const DEFAULT_KEYS_TTL: Duration = Duration::from_secs(300);
/// Least time between two fetches triggered by unknown `kid`s (per issuer).
pub const DEFAULT_REFETCH_COOLDOWN: Duration = Duration::from_secs(30);
/// Smallest RSA modulus accepted.
pub const MIN_RSA_BITS: usize = 2048;

/// One key that may verify signatures.
#[derive(Clone)]
pub struct VerificationKey {
    pub kid: Option<String>,
    /// The `alg` the JWK is restricted to, if it names one.
    pub alg: Option<Algorithm>,
    family: Family,
    pub key: DecodingKey,
}

impl std::fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerificationKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl Family {
    fn fits(self, alg: Algorithm) -> bool {
        matches!(
            (self, alg),
            (
                Family::Rsa,
                Algorithm::RS256
                    | Algorithm::RS384
                    | Algorithm::RS512
                    | Algorithm::PS256
                    | Algorithm::PS384
                    | Algorithm::PS512
            ) | (Family::P256, Algorithm::ES256)
                | (Family::P384, Algorithm::ES384)
                | (Family::Ed25519, Algorithm::EdDSA)
        )
    }
}

/// A set of verification keys.
#[derive(Clone, Debug, Default)]
pub struct KeySet {
    keys: Vec<VerificationKey>,
}

impl KeySet {
    /// Parses a JWKS document, keeping only keys fit to verify signatures. Returns the set and why
    /// each dropped key was dropped.
    pub fn from_jwks(bytes: &[u8]) -> Result<(Self, Vec<String>), String> {
        let doc = super::strict_json::parse(bytes).map_err(|e| format!("JWKS is not valid JSON: {e}"))?;
        let entries = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or("JWKS has no keys array")?;
        let mut keys = Vec::new();
        let mut dropped = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            match key_from_jwk(entry) {
                Ok(k) => keys.push(k),
                Err(e) => dropped.push(format!("key {i}: {e}")),
            }
        }
        Ok((Self { keys }, dropped))
    }

    /// The key for a token: by `kid` when the token names one; without a `kid`, only when exactly one
    /// key fits the algorithm. The key must fit `alg` and, if it names an `alg`, name this one.
    pub fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<&VerificationKey> {
        let fits = |k: &&VerificationKey| k.family.fits(alg) && k.alg.is_none_or(|a| a == alg);
        match kid {
            Some(kid) => self
                .keys
                .iter()
                .filter(|k| k.kid.as_deref() == Some(kid))
                .find(fits),
            None => {
                let mut candidates = self.keys.iter().filter(fits);
                let first = candidates.next()?;
                candidates.next().is_none().then_some(first)
            }
        }
    }

    /// Whether a key with this `kid` exists at all.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// Number of usable keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is usable.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Builds a verification key from one JWK, or says why it is unfit.
pub fn key_from_jwk(entry: &Value) -> Result<VerificationKey, String> {
    let obj = entry.as_object().ok_or("not an object")?;
    for private in ["d", "p", "q", "dp", "dq", "qi", "k"] {
        if obj.contains_key(private) {
            return Err(format!("carries private or symmetric key material ({private})"));
        }
    }
    // `jwt-svid` is a SPIFFE bundle's signing use; its `x509-svid` keys sign certificates.
    if let Some(u) = obj.get("use")
        && u != "sig"
        && u != "jwt-svid"
    {
        return Err(format!("use is {u}, not sig"));
    }
    if let Some(ops) = obj.get("key_ops").and_then(Value::as_array)
        && !ops.iter().any(|o| o == "verify")
    {
        return Err("key_ops does not include verify".into());
    }
    let jwk: Jwk = serde_json::from_value(entry.clone()).map_err(|e| format!("not a supported JWK: {e}"))?;
    let family = match &jwk.algorithm {
        AlgorithmParameters::RSA(p) => {
            let n = base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, &p.n)
                .map_err(|_| "RSA modulus is not base64url")?;
            let bits = n.iter().skip_while(|b| **b == 0).count() * 8;
            if bits < MIN_RSA_BITS {
                return Err(format!("RSA key of {bits} bits is shorter than {MIN_RSA_BITS}"));
            }
            Family::Rsa
        }
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => Family::P256,
            EllipticCurve::P384 => Family::P384,
            _ => return Err("unsupported curve".into()),
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => Family::Ed25519,
        AlgorithmParameters::OctetKeyPair(_) => return Err("unsupported OKP curve".into()),
        AlgorithmParameters::OctetKey(_) => return Err("kty oct (symmetric) keys are never used".into()),
        _ => return Err("unsupported kty".into()),
    };
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(a) => Some(match a {
            KeyAlgorithm::RS256 => Algorithm::RS256,
            KeyAlgorithm::RS384 => Algorithm::RS384,
            KeyAlgorithm::RS512 => Algorithm::RS512,
            KeyAlgorithm::PS256 => Algorithm::PS256,
            KeyAlgorithm::PS384 => Algorithm::PS384,
            KeyAlgorithm::PS512 => Algorithm::PS512,
            KeyAlgorithm::ES256 => Algorithm::ES256,
            KeyAlgorithm::ES384 => Algorithm::ES384,
            KeyAlgorithm::EdDSA => Algorithm::EdDSA,
            other => return Err(format!("alg {other:?} is not an accepted signature algorithm")),
        }),
    };
    if let Some(a) = alg
        && !family.fits(a)
    {
        return Err(format!("alg {a:?} does not fit the key type"));
    }
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("unusable key: {e}"))?;
    Ok(VerificationKey {
        kid: jwk.common.key_id.clone(),
        alg,
        family,
        key,
    })
}

/// Why a key could not be had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    /// No key with that id (after at most one refetch).
    UnknownKey,
    /// The keys could never be fetched.
    Unavailable(String),
}

#[derive(Debug)]
struct Cached {
    keys: Arc<KeySet>,
    fresh_until: Instant,
}

/// The remote JWKS of one issuer: at a configured URI, or found by OIDC discovery.
#[derive(Debug)]
pub struct RemoteKeys {
    /// Set for discovery: the issuer, pinned byte for byte against the discovery document.
    discover_issuer: Option<String>,
    jwks_uri: RwLock<Option<String>>,
    fetcher: HttpFetcher,
    cooldown: Duration,
    cached: RwLock<Option<Cached>>,
    last_fetch: Mutex<Option<Instant>>,
    /// Held while fetching, so concurrent misses cause one fetch (single flight).
    fetching: tokio::sync::Mutex<()>,
    fetches: std::sync::atomic::AtomicU64,
}

impl RemoteKeys {
    /// Keys fetched from `jwks_uri`, refetched on unknown `kid` at most once per `cooldown`.
    pub fn new(jwks_uri: String, fetcher: HttpFetcher, cooldown: Duration) -> Self {
        Self::build(None, Some(jwks_uri), fetcher, cooldown)
    }

    /// Keys found through the issuer's discovery document.
    pub fn discover(issuer: String, fetcher: HttpFetcher, cooldown: Duration) -> Self {
        Self::build(Some(issuer), None, fetcher, cooldown)
    }

    fn build(
        discover_issuer: Option<String>,
        jwks_uri: Option<String>,
        fetcher: HttpFetcher,
        cooldown: Duration,
    ) -> Self {
        Self {
            discover_issuer,
            jwks_uri: RwLock::new(jwks_uri),
            fetcher,
            cooldown,
            cached: RwLock::new(None),
            last_fetch: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
            fetches: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Number of JWKS fetches made so far.
    pub fn fetch_count(&self) -> u64 {
        self.fetches.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The key for (`kid`, `alg`), fetching or refetching as the rules above allow.
    pub async fn key(&self, kid: Option<&str>, alg: Algorithm) -> Result<VerificationKey, KeyError> {
        let now = Instant::now();
        let (known, fresh) = self.lookup(kid, alg, now);
        if let Some(k) = &known
            && fresh
        {
            return Ok(k.clone());
        }
        // Either stale (refresh, but fall back to the last good key) or unknown (one refetch).
        if self.may_fetch(now) {
            let _guard = self.fetching.lock().await;
            // Another caller may have fetched while we waited.
            if let (Some(k), true) = self.lookup(kid, alg, Instant::now()) {
                return Ok(k);
            }
            if self.may_fetch(Instant::now())
                && let Err(e) = self.refresh().await
            {
                tracing::warn!(error = %e, "JWKS fetch failed; keeping last good keys");
                if known.is_none() && self.cached.read().unwrap_or_else(|p| p.into_inner()).is_none() {
                    return Err(KeyError::Unavailable(e));
                }
            }
            // A fresh key set (this caller's fetch or another's) is the provider's answer: a key
            // it no longer lists is withdrawn. Last-good keys stand in only while it cannot answer.
            let (after, fresh) = self.lookup(kid, alg, Instant::now());
            if fresh && after.is_none() && self.discover_issuer.is_some() {
                // A key the provider's answer lacks: it may have moved its keys while the old
                // address still answers, so the next fetch (a cooldown later) reads the
                // discovery document again.
                *self.jwks_uri.write().unwrap_or_else(|p| p.into_inner()) = None;
            }
            return if fresh { after } else { after.or(known) }.ok_or(KeyError::UnknownKey);
        }
        known.ok_or(KeyError::UnknownKey)
    }

    /// The cached key set is stale from now on: the next key wanted refetches (within the
    /// cooldown), and the set stands in only while the provider cannot answer.
    pub(crate) fn make_stale(&self) {
        if let Some(c) = self.cached.write().unwrap_or_else(|p| p.into_inner()).as_mut() {
            c.fresh_until = Instant::now();
        }
    }

    /// Seconds the current key set stays fresh (0 when stale or never fetched): how long a
    /// verification with one of its keys may be reused before the keys are asked for again.
    pub fn fresh_for(&self) -> u64 {
        let cached = self.cached.read().unwrap_or_else(|p| p.into_inner());
        cached.as_ref().map_or(0, |c| {
            c.fresh_until.saturating_duration_since(Instant::now()).as_secs()
        })
    }

    fn lookup(&self, kid: Option<&str>, alg: Algorithm, now: Instant) -> (Option<VerificationKey>, bool) {
        let cached = self.cached.read().unwrap_or_else(|p| p.into_inner());
        match cached.as_ref() {
            Some(c) => (c.keys.find(kid, alg).cloned(), now < c.fresh_until),
            None => (None, false),
        }
    }

    fn may_fetch(&self, now: Instant) -> bool {
        let last = self.last_fetch.lock().unwrap_or_else(|p| p.into_inner());
        last.is_none_or(|t| now.duration_since(t) >= self.cooldown)
    }

    /// Fetches the JWKS now (used at startup and by `key`).
    pub async fn refresh(&self) -> Result<usize, String> {
        *self.last_fetch.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        self.fetches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let known_uri = self.jwks_uri.read().unwrap_or_else(|p| p.into_inner()).clone();
        let jwks_uri = match (known_uri, &self.discover_issuer) {
            (Some(uri), _) => uri,
            (None, Some(issuer)) => {
                let uri = super::discovery::discover(&self.fetcher, issuer).await?.jwks_uri;
                *self.jwks_uri.write().unwrap_or_else(|p| p.into_inner()) = Some(uri.clone());
                uri
            }
            (None, None) => return Err("no JWKS URI configured".into()),
        };
        let fetched = match self.fetcher.get(&jwks_uri).await {
            Ok(resp) if resp.status.is_success() => KeySet::from_jwks(&resp.body).map(|k| (k, resp)),
            Ok(resp) => Err(format!("{jwks_uri} answered {}", resp.status)),
            Err(e) => Err(e),
        };
        let ((keys, dropped), resp) = match fetched {
            Ok(f) => f,
            Err(e) => {
                if self.discover_issuer.is_some() {
                    // The provider may have moved its keys: the next fetch reads its discovery
                    // document again, rather than asking a dead address for good.
                    *self.jwks_uri.write().unwrap_or_else(|p| p.into_inner()) = None;
                }
                return Err(e);
            }
        };
        for d in dropped {
            tracing::debug!(%jwks_uri, "ignored JWK: {d}");
        }
        let ttl = fetch::max_age(resp.cache_control.as_deref())
            .unwrap_or(DEFAULT_KEYS_TTL)
            .clamp(MIN_KEYS_TTL, MAX_KEYS_TTL);
        let n = keys.len();
        *self.cached.write().unwrap_or_else(|p| p.into_inner()) = Some(Cached {
            keys: Arc::new(keys),
            fresh_until: Instant::now() + ttl,
        });
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rsa_jwk() -> Value {
        // A 2048-bit modulus shape (all 0xff bytes) is enough for the filtering rules; signature
        // verification with real keys is covered by the verifier's tests.
        let n = base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, [0xffu8; 256]);
        json!({"kty": "RSA", "kid": "r1", "use": "sig", "alg": "RS256", "n": n, "e": "AQAB"})
    }

    #[test]
    fn unfit_jwks_entries_are_ignored() {
        let short_n = base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, [0xffu8; 64]);
        let mut enc = rsa_jwk();
        enc["use"] = json!("enc");
        enc["kid"] = json!("enc");
        let mut wrong_alg = rsa_jwk();
        wrong_alg["alg"] = json!("ES256");
        wrong_alg["kid"] = json!("wrong");
        let mut private = rsa_jwk();
        private["d"] = json!("AQAB");
        private["kid"] = json!("priv");
        let doc = json!({"keys": [
            rsa_jwk(),
            {"kty": "oct", "kid": "sym", "k": "c2VjcmV0"},
            enc,
            wrong_alg,
            private,
            {"kty": "RSA", "kid": "short", "n": short_n, "e": "AQAB"},
        ]});
        let (set, dropped) = KeySet::from_jwks(doc.to_string().as_bytes()).unwrap();
        assert_eq!(set.len(), 1, "{dropped:?}");
        assert_eq!(dropped.len(), 5, "{dropped:?}");
        assert!(set.find(Some("r1"), Algorithm::RS256).is_some());
        // The header's alg must agree with the key's.
        assert!(set.find(Some("r1"), Algorithm::RS384).is_none());
        assert!(set.find(Some("r1"), Algorithm::ES256).is_none());
        assert!(set.find(Some("sym"), Algorithm::RS256).is_none());
        assert!(set.find(None, Algorithm::RS256).is_some());
    }

    /// A provider that moved its keys is asked for its discovery document again, so its new keys
    /// are found rather than the last good ones standing in for good: whether the old address
    /// now answers 404, or still answers with the old keys.
    #[tokio::test]
    async fn a_moved_jwks_address_is_discovered_again() {
        use std::collections::HashMap;
        use std::sync::Arc;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        for old_address_stays in [false, true] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = format!("http://{}", listener.local_addr().unwrap());
            let mut r2 = rsa_jwk();
            r2["kid"] = json!("r2");
            // The address discovery names, and what each address serves.
            type Served = (&'static str, HashMap<&'static str, Value>);
            let state: Arc<Mutex<Served>> = Arc::new(Mutex::new((
                "/jwks-a",
                HashMap::from([("/jwks-a", json!({"keys": [rsa_jwk()]}))]),
            )));
            let served = state.clone();
            let issuer = base.clone();
            let server = tokio::spawn(async move {
                loop {
                    let (mut stream, _) = listener.accept().await.unwrap();
                    let mut buf = vec![0; 4096];
                    let n = stream.read(&mut buf).await.unwrap();
                    let line = String::from_utf8_lossy(&buf[..n]).to_string();
                    let path = line.split(' ').nth(1).unwrap_or("").to_string();
                    let (current, by_path) = served.lock().unwrap().clone();
                    let body = if path == "/.well-known/openid-configuration" {
                        Some(json!({"issuer": issuer, "jwks_uri": format!("{issuer}{current}")}))
                    } else {
                        by_path.get(path.as_str()).cloned()
                    };
                    let answer = match body {
                        Some(b) => {
                            let b = b.to_string();
                            format!(
                                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{b}",
                                b.len()
                            )
                        }
                        None => {
                            "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".into()
                        }
                    };
                    let _ = stream.write_all(answer.as_bytes()).await;
                }
            });
            let keys = RemoteKeys::discover(base.clone(), HttpFetcher::new().unwrap(), Duration::ZERO);
            assert!(keys.key(Some("r1"), Algorithm::RS256).await.is_ok());
            {
                let mut s = state.lock().unwrap();
                s.0 = "/jwks-b";
                s.1.insert("/jwks-b", json!({"keys": [rsa_jwk(), r2.clone()]}));
                if !old_address_stays {
                    s.1.remove("/jwks-a");
                }
            }
            // The old address fails (the last good keys stand in) or lacks the new key; either
            // way the next fetch reads the discovery document again.
            keys.make_stale();
            let _ = keys
                .key(
                    Some(if old_address_stays { "r2" } else { "r1" }),
                    Algorithm::RS256,
                )
                .await;
            assert!(
                keys.key(Some("r2"), Algorithm::RS256).await.is_ok(),
                "old address stays: {old_address_stays}"
            );
            server.abort();
        }
    }

    #[test]
    fn kid_lookup_is_exact() {
        let doc = json!({"keys": [rsa_jwk()]});
        let (set, _) = KeySet::from_jwks(doc.to_string().as_bytes()).unwrap();
        for kid in ["../r1", "r1' OR '1'='1", "R1", &"r".repeat(10_000)] {
            assert!(set.find(Some(kid), Algorithm::RS256).is_none(), "{kid}");
        }
    }
}
