//! Identity: who is calling. Verifies an agent's access token (and its DPoP proof) against the
//! configured AgentIdentities and returns one canonical [`Principal`], or an error that tells the
//! client what kind of problem it has without leaking anything, and tells the log the detail.

pub mod cache;
pub mod discovery;
pub mod dpop;
pub mod fetch;
pub mod introspection;
pub mod keys;
pub mod matching;
pub mod mint;
pub mod strict_json;
pub mod token;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentgate_crds::identity::{IdentityProvider, SigningAlgorithm, TokenType};
use jsonwebtoken::Algorithm;
use serde_json::Value;

use crate::config::CompiledIdentity;
use cache::VerificationCache;
use dpop::{Nonces, ReplayCache, RequestTarget};
use fetch::HttpFetcher;
use keys::{KeyError, KeySet, RemoteKeys};

/// Clock skew tolerated on `nbf` and `iat` (never on `exp`).
pub const MAX_CLOCK_SKEW: i64 = 30;
/// Longest lifetime (`exp - iat`) of a signed token whose identity sets no `maxTokenLifetime`.
pub const DEFAULT_MAX_TOKEN_LIFETIME: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Who is calling, as every later stage sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The AgentIdentity the token matched.
    pub identity: String,
    pub issuer: String,
    pub subject: String,
    pub groups: Vec<String>,
    /// `jti` when the token has one.
    pub token_id: Option<String>,
    /// Unix time the token expires.
    pub expires_at: i64,
    /// RFC 7638 thumbprint of the key the token is bound to (`cnf.jkt`).
    pub binding: Option<String>,
    /// Whether the identity requires DPoP.
    pub require_dpop: bool,
    /// Unix time until which this verification may be reused for the same token: its expiry, or
    /// sooner, when the key set that verified it goes stale (so a withdrawn key stops working for
    /// cached tokens too). Introspected tokens are not reused here (the introspector keeps its
    /// answers for its own `cacheTtl`, so a revocation shows within it).
    pub reuse_until: i64,
}

/// Category of an identity failure: what the client is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    MissingCredentials,
    MalformedToken,
    UnknownIssuer,
    InvalidSignature,
    Expired,
    NotYetValid,
    WrongAudience,
    WrongTokenType,
    NoMatchingIdentity,
    LifetimeTooLong,
    TokenInactive,
    /// A DPoP-bound token without a proof, or DPoP required and the token is not bound.
    BindingRequired,
    InvalidProof,
    /// A proof without a nonce this gateway process issued, where nonces are required: the
    /// client retries with the one it is given.
    UseDpopNonce,
    /// A proof's id cannot be remembered now (the replay cache is full), so the request is
    /// refused as busy, for a retry.
    ProofsBusy,
    ProviderUnavailable,
    /// The token verified and matched an identity that is suspended (`spec.suspend`).
    Suspended,
}

impl ErrorKind {
    /// A short, non-leaking description for the client.
    pub fn describe(self) -> &'static str {
        match self {
            Self::MissingCredentials => "an access token is required",
            Self::MalformedToken => "the access token is malformed",
            Self::UnknownIssuer => "the access token's issuer is not trusted here",
            Self::InvalidSignature => "the access token's signature does not verify",
            Self::Expired => "the access token has expired",
            Self::NotYetValid => "the access token is not valid yet",
            Self::WrongAudience => "the access token is not meant for this gateway",
            Self::WrongTokenType => "this kind of token is not accepted as an access token",
            Self::NoMatchingIdentity => "the access token matches no agent identity",
            Self::LifetimeTooLong => "the access token lives longer than this identity allows",
            Self::TokenInactive => "the access token is not active",
            Self::BindingRequired => "a DPoP-bound access token and a DPoP proof are required",
            Self::InvalidProof => "the DPoP proof is invalid",
            Self::UseDpopNonce => "the DPoP proof must carry the nonce given in the DPoP-Nonce header",
            Self::ProofsBusy => "the gateway cannot check DPoP proofs for replay now; retry shortly",
            Self::ProviderUnavailable => "the identity provider cannot be reached to verify the token",
            Self::Suspended => "the agent identity this token belongs to is suspended",
        }
    }

    /// A stable slug, used in problem types and metrics labels.
    pub fn slug(self) -> &'static str {
        match self {
            Self::MissingCredentials => "missing-credentials",
            Self::MalformedToken => "malformed-token",
            Self::UnknownIssuer => "unknown-issuer",
            Self::InvalidSignature => "invalid-signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not-yet-valid",
            Self::WrongAudience => "wrong-audience",
            Self::WrongTokenType => "wrong-token-type",
            Self::NoMatchingIdentity => "no-matching-identity",
            Self::LifetimeTooLong => "lifetime-too-long",
            Self::TokenInactive => "token-inactive",
            Self::BindingRequired => "token-binding",
            Self::InvalidProof => "invalid-dpop-proof",
            Self::UseDpopNonce => "use-dpop-nonce",
            Self::ProofsBusy => "dpop-proofs-busy",
            Self::ProviderUnavailable => "provider-unavailable",
            Self::Suspended => "identity-suspended",
        }
    }
}

/// An identity failure: the kind for the client, the detail for the log (never the token).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityError {
    pub kind: ErrorKind,
    pub detail: String,
}

impl IdentityError {
    pub fn new(kind: ErrorKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
        }
    }

    /// The `WWW-Authenticate` header value for an HTTP 401.
    pub fn www_authenticate(&self) -> String {
        let desc = self.kind.describe();
        match self.kind {
            ErrorKind::MissingCredentials => format!("Bearer, DPoP algs=\"{}\"", dpop::PROOF_ALGS_HEADER),
            ErrorKind::InvalidProof | ErrorKind::BindingRequired => {
                format!(
                    "DPoP error=\"invalid_dpop_proof\", error_description=\"{desc}\", algs=\"{}\"",
                    dpop::PROOF_ALGS_HEADER
                )
            }
            ErrorKind::UseDpopNonce => format!(
                "DPoP error=\"use_dpop_nonce\", error_description=\"{desc}\", algs=\"{}\"",
                dpop::PROOF_ALGS_HEADER
            ),
            _ => format!("Bearer error=\"invalid_token\", error_description=\"{desc}\""),
        }
    }
}

impl fmt::Display for IdentityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.describe(), self.detail)
    }
}

impl std::error::Error for IdentityError {}

/// What a request presents.
#[derive(Clone, Debug)]
pub struct Presented<'a> {
    /// The `Authorization` header (or, for PostgreSQL, `Bearer <password>`).
    pub authorization: Option<&'a str>,
    /// Every `DPoP` header of the request.
    pub dpop: &'a [&'a str],
    /// The request, for `htm`/`htu`.
    pub target: RequestTarget<'a>,
    /// The client's address: an uncached introspection spends its share of the provider budget.
    pub peer: Option<std::net::IpAddr>,
}

/// Verification keys of one issuer.
#[derive(Debug)]
enum IssuerKeys {
    Static(KeySet),
    Remote(Arc<RemoteKeys>),
}

#[derive(Debug)]
struct Issuer {
    identities: Vec<Arc<CompiledIdentity>>,
    algorithms: Vec<Algorithm>,
    keys: Option<IssuerKeys>,
    introspector: Option<introspection::Introspector>,
    jwt_allowed: bool,
}

/// (issuer, configured JWKS URI or `None` for discovery).
type RemoteKeysId = (String, Option<String>);

/// Remote key caches that outlive configuration reloads, keyed by issuer and JWKS source: a
/// reload keeps the refetch cooldown and the last good keys (for a provider that is down), but
/// asks the provider again before trusting them (see [`KeyRegistry::reloaded`]).
#[derive(Debug, Default)]
pub struct KeyRegistry {
    remotes: Mutex<HashMap<RemoteKeysId, Arc<RemoteKeys>>>,
}

impl KeyRegistry {
    /// A new configuration uses the caches `used`. The others are dropped, so an issuer added
    /// back later starts afresh. The used ones turn stale: an operator who reloads after a
    /// provider withdrew a leaked key expects the key gone then, not when the provider's
    /// `max-age` (up to a day) runs out. A stale set is refetched on the next token, within the
    /// cooldown, and stands in only while the provider cannot answer.
    fn reloaded(&self, used: &[Arc<RemoteKeys>]) {
        let mut remotes = self.remotes.lock().unwrap_or_else(|p| p.into_inner());
        remotes.retain(|_, r| used.iter().any(|u| Arc::ptr_eq(u, r)));
        for r in remotes.values() {
            r.make_stale();
        }
    }

    fn get(
        &self,
        issuer: &str,
        jwks_uri: Option<&str>,
        fetcher: &HttpFetcher,
        cooldown: Duration,
    ) -> Arc<RemoteKeys> {
        let mut remotes = self.remotes.lock().unwrap_or_else(|p| p.into_inner());
        remotes
            .entry((issuer.to_string(), jwks_uri.map(str::to_string)))
            .or_insert_with(|| {
                Arc::new(match jwks_uri {
                    Some(uri) => RemoteKeys::new(uri.to_string(), fetcher.clone(), cooldown),
                    None => RemoteKeys::discover(issuer.to_string(), fetcher.clone(), cooldown),
                })
            })
            .clone()
    }
}

/// Settings of a verifier.
#[derive(Clone, Debug)]
pub struct VerifierOptions {
    /// Least time between JWKS refetches caused by unknown `kid`s.
    pub refetch_cooldown: Duration,
    /// Most tokens kept in the verification cache.
    pub cache_capacity: usize,
}

impl Default for VerifierOptions {
    fn default() -> Self {
        Self {
            refetch_cooldown: keys::DEFAULT_REFETCH_COOLDOWN,
            cache_capacity: cache::DEFAULT_CAPACITY,
        }
    }
}

/// Verifies tokens for one configuration snapshot.
#[derive(Debug)]
pub struct Verifier {
    issuers: HashMap<String, Issuer>,
    cache: VerificationCache,
    replay: Arc<ReplayCache>,
    /// This process's nonces, when proofs must carry one.
    nonces: Option<Arc<Nonces>>,
}

/// Why a verifier would refuse a set of identities: the identity, its field and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub identity: String,
    pub field: &'static str,
    pub message: String,
}

/// Why `spec`'s matchers would admit tokens its author did not mean: none that its provider
/// reads (an identity would then accept every token its issuer mints for the audience), or one
/// its provider ignores (`spiffeId` under OIDC reads as a restriction and restricts nothing).
fn unmatched_tokens(spec: &agentgate_crds::identity::AgentIdentitySpec) -> Option<(&'static str, String)> {
    use agentgate_crds::identity::IdentityProvider as P;
    let m = &spec.r#match;
    if m.claims.as_ref().is_some_and(|c| c.is_empty()) {
        return Some((
            "spec.match.claims",
            "an empty claims matcher matches every token: name at least one claim".into(),
        ));
    }
    let provider = serde_json::to_value(spec.provider)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default();
    // The matcher each provider reads besides subject and claims, and which are set.
    let own = match spec.provider {
        P::Oidc | P::Okta => None,
        P::Kubernetes => Some("serviceAccount"),
        P::GitHubActions => Some("github"),
        P::Spiffe => Some("spiffeId"),
    };
    let specific = [
        (
            "serviceAccount",
            "spec.match.serviceAccount",
            m.service_account.is_some(),
        ),
        ("github", "spec.match.github", m.github.is_some()),
        ("spiffeId", "spec.match.spiffeId", m.spiffe_id.is_some()),
    ];
    if let Some((name, field, _)) = specific.iter().find(|(name, _, set)| *set && own != Some(*name)) {
        return Some((
            field,
            format!(
                "provider {provider} does not read {name}, so it would restrict nothing: set the provider that issues such tokens, or match on subject or claims"
            ),
        ));
    }
    match own.and_then(|own| specific.iter().find(|(name, _, _)| *name == own)) {
        Some((_, field, false)) => Some((field, format!("provider {provider} needs this matcher"))),
        None if m.subject.is_none() && m.claims.is_none() => Some((
            "spec.match",
            format!(
                "provider {provider} reads subject and claims: set one, or the identity accepts every token its issuer mints"
            ),
        )),
        _ => None,
    }
}

/// What [`Verifier::new`] refuses in a set of identities. The loader reports the same at load,
/// naming the field, so that a configuration it calls valid never leaves the gateway without a
/// verifier: identities of one issuer that name different keys or introspection settings (an
/// issuer has one of each), and static keys that do not parse.
pub fn refusals<'a>(identities: impl IntoIterator<Item = &'a CompiledIdentity>) -> Vec<Refusal> {
    let mut out = Vec::new();
    // Where each issuer's keys come from, and which identity said so.
    let mut key_origins: HashMap<&str, KeyOrigin> = HashMap::new();
    let mut introspection_origins: HashMap<&str, (&str, Option<&agentgate_crds::identity::Introspection>)> =
        HashMap::new();
    for identity in identities {
        let spec = &identity.spec;
        let refuse = |field, message| Refusal {
            identity: identity.name.clone(),
            field,
            message,
        };
        if let Some((field, message)) = unmatched_tokens(spec) {
            out.push(refuse(field, message));
        }
        if spec.token_type == TokenType::Jwt {
            let origin = KeyOrigin {
                identity: identity.name.clone(),
                jwks: identity.static_jwks.as_ref().map(|j| j.expose().to_vec()),
                uri: spec.keys.as_ref().and_then(|k| k.jwks_uri.clone()),
            };
            if let Some(jwks) = &identity.static_jwks
                && let Err(e) = KeySet::from_jwks(jwks.expose())
            {
                out.push(refuse("spec.keys.secretRef", format!("static keys: {e}")));
            }
            match key_origins.get(spec.issuer.as_str()) {
                Some(first) if (&first.jwks, &first.uri) != (&origin.jwks, &origin.uri) => {
                    out.push(refuse(
                        "spec.keys",
                        format!(
                            "issuer {} takes its keys from AgentIdentity {}'s keys; identities of one issuer must name the same keys",
                            spec.issuer, first.identity
                        ),
                    ));
                }
                Some(_) => {}
                None => {
                    key_origins.insert(&spec.issuer, origin);
                }
            }
        }
        // One introspector serves an issuer: identities that name other settings for it would
        // have them ignored, so they are refused as keys are.
        if spec.token_type == TokenType::Introspection {
            match introspection_origins.get(spec.issuer.as_str()) {
                Some((first, settings)) if *settings != spec.introspection.as_ref() => {
                    out.push(refuse(
                        "spec.introspection",
                        format!(
                            "issuer {} is introspected as AgentIdentity {first} says; identities of one issuer must name the same introspection settings",
                            spec.issuer
                        ),
                    ));
                }
                Some(_) => {}
                None => {
                    introspection_origins.insert(&spec.issuer, (&identity.name, spec.introspection.as_ref()));
                }
            }
        }
    }
    out
}

impl Verifier {
    /// Builds a verifier for `identities`. Remote keys come from `registry`, which it tells of
    /// the reload (see [`KeyRegistry`]).
    pub fn new(
        identities: impl IntoIterator<Item = Arc<CompiledIdentity>>,
        registry: &KeyRegistry,
        fetcher: &HttpFetcher,
        replay: Arc<ReplayCache>,
        options: &VerifierOptions,
    ) -> Result<Self, String> {
        let identities: Vec<Arc<CompiledIdentity>> = identities.into_iter().collect();
        if let Some(refusal) = refusals(identities.iter().map(Arc::as_ref)).into_iter().next() {
            return Err(format!("AgentIdentity {}: {}", refusal.identity, refusal.message));
        }
        let mut issuers: HashMap<String, Issuer> = HashMap::new();
        let mut remotes = Vec::new();
        for identity in identities {
            let spec = &identity.spec;
            let entry = issuers.entry(spec.issuer.clone()).or_insert_with(|| Issuer {
                identities: Vec::new(),
                algorithms: Vec::new(),
                keys: None,
                introspector: None,
                jwt_allowed: false,
            });
            for a in &spec.algorithms {
                let alg = algorithm(*a);
                if !entry.algorithms.contains(&alg) {
                    entry.algorithms.push(alg);
                }
            }
            match spec.token_type {
                TokenType::Jwt => {
                    entry.jwt_allowed = true;
                    if entry.keys.is_none() {
                        entry.keys = Some(
                            match (
                                &identity.static_jwks,
                                spec.keys.as_ref().and_then(|k| k.jwks_uri.as_deref()),
                            ) {
                                (Some(jwks), _) => {
                                    let (set, _) = KeySet::from_jwks(jwks.expose()).map_err(|e| {
                                        format!("AgentIdentity {}: static keys: {e}", identity.name)
                                    })?;
                                    IssuerKeys::Static(set)
                                }
                                (None, uri) => {
                                    let remote =
                                        registry.get(&spec.issuer, uri, fetcher, options.refetch_cooldown);
                                    remotes.push(remote.clone());
                                    IssuerKeys::Remote(remote)
                                }
                            },
                        );
                    }
                }
                TokenType::Introspection => {
                    if entry.introspector.is_none() {
                        entry.introspector =
                            Some(introspection::Introspector::new(&identity, fetcher.clone())?);
                    }
                }
            }
            entry.identities.push(identity);
        }
        registry.reloaded(&remotes);
        Ok(Self {
            issuers,
            cache: VerificationCache::new(options.cache_capacity),
            replay,
            nonces: None,
        })
    }

    /// The same verifier, requiring DPoP proofs to carry one of `nonces`.
    pub fn with_nonces(mut self, nonces: Arc<Nonces>) -> Self {
        self.nonces = Some(nonces);
        self
    }

    /// The nonce to hand a DPoP client at `now`, when proofs must carry one.
    pub fn dpop_nonce(&self, now: i64) -> Option<String> {
        self.nonces.as_ref().map(|n| n.current(now))
    }

    /// A verifier for every identity of a configuration snapshot.
    pub fn for_config(
        config: &crate::config::GatewayConfig,
        registry: &KeyRegistry,
        fetcher: &HttpFetcher,
        replay: Arc<ReplayCache>,
        options: &VerifierOptions,
    ) -> Result<Self, String> {
        Self::new(
            config.identities.values().cloned(),
            registry,
            fetcher,
            replay,
            options,
        )
    }

    /// Verifies what a request presents. `now` is the Unix time.
    pub async fn verify(&self, presented: &Presented<'_>, now: i64) -> Result<Arc<Principal>, IdentityError> {
        let authorization = presented
            .authorization
            .ok_or_else(|| IdentityError::new(ErrorKind::MissingCredentials, "no Authorization header"))?;
        let (scheme, token) = authorization.split_once(' ').ok_or_else(|| {
            IdentityError::new(
                ErrorKind::MalformedToken,
                "Authorization is not `<scheme> <token>`",
            )
        })?;
        let dpop_scheme = scheme.eq_ignore_ascii_case("DPoP");
        if !dpop_scheme && !scheme.eq_ignore_ascii_case("Bearer") {
            return Err(IdentityError::new(
                ErrorKind::MalformedToken,
                // Not echoed: a client that sends the token alone has it taken for the scheme.
                "unsupported scheme (only Bearer and DPoP)",
            ));
        }
        let token = token.trim();
        if token.is_empty() || token.len() > token::MAX_TOKEN_BYTES {
            return Err(IdentityError::new(
                ErrorKind::MalformedToken,
                "empty or oversized token",
            ));
        }
        if presented.dpop.len() > 1 {
            return Err(IdentityError::new(
                ErrorKind::InvalidProof,
                "several DPoP headers",
            ));
        }
        let principal = match self.cache.get(token, now) {
            Some(p) => p,
            None => {
                let p = Arc::new(self.verify_uncached(token, now, presented.peer).await?);
                if p.reuse_until > now {
                    self.cache.insert(token, p.clone());
                }
                p
            }
        };
        self.check_binding(&principal, dpop_scheme, token, presented, now)?;
        Ok(principal)
    }

    fn check_binding(
        &self,
        principal: &Principal,
        dpop_scheme: bool,
        token: &str,
        presented: &Presented<'_>,
        now: i64,
    ) -> Result<(), IdentityError> {
        match (&principal.binding, dpop_scheme) {
            (Some(_), false) => Err(IdentityError::new(
                ErrorKind::BindingRequired,
                "a DPoP-bound token was presented with the Bearer scheme",
            )),
            (None, true) => Err(IdentityError::new(
                ErrorKind::BindingRequired,
                "DPoP scheme with a token that is not DPoP-bound",
            )),
            (None, false) if principal.require_dpop => Err(IdentityError::new(
                ErrorKind::BindingRequired,
                format!("identity {} requires DPoP", principal.identity),
            )),
            (None, false) => Ok(()),
            (Some(jkt), true) => {
                let proof = presented
                    .dpop
                    .first()
                    .ok_or_else(|| IdentityError::new(ErrorKind::BindingRequired, "no DPoP proof"))?;
                let nonces = self.nonces.as_deref();
                let caller = format!("{}\u{0}{}", principal.identity, principal.subject);
                dpop::verify_proof(
                    proof,
                    token,
                    &presented.target,
                    now,
                    &self.replay,
                    nonces,
                    jkt,
                    &caller,
                )
                .map_err(|e| match e {
                    dpop::ProofError::Invalid(e) => IdentityError::new(ErrorKind::InvalidProof, e),
                    dpop::ProofError::UseNonce(e) => IdentityError::new(ErrorKind::UseDpopNonce, e),
                    dpop::ProofError::Busy => IdentityError::new(
                        ErrorKind::ProofsBusy,
                        "too many DPoP proofs are remembered for replay detection; refused until older ones expire",
                    ),
                })?;
                Ok(())
            }
        }
    }

    async fn verify_uncached(
        &self,
        token: &str,
        now: i64,
        peer: Option<std::net::IpAddr>,
    ) -> Result<Principal, IdentityError> {
        if !token::looks_like_jwt(token) {
            return self.introspect_any(token, now, peer).await;
        }
        let jws = token::parse(token, ALL_ALGORITHMS)
            .map_err(|e| IdentityError::new(ErrorKind::MalformedToken, e))?;
        let iss_claim = match jws.claims.get("iss") {
            None => None,
            Some(Value::String(iss)) => Some(iss.as_str()),
            // Not read as missing: that is the path of SPIFFE tokens without an issuer.
            Some(_) => {
                return Err(IdentityError::new(
                    ErrorKind::MalformedToken,
                    "claim iss is not a string",
                ));
            }
        };
        let missing_iss = || IdentityError::new(ErrorKind::MalformedToken, "claim iss is missing");
        // A JWT-SVID need not carry `iss` (SPIRE leaves it out unless configured to set one):
        // the trust domain of its SPIFFE ID names the issuer then, for SPIFFE identities only.
        let from_sub = match iss_claim {
            Some(_) => None,
            None => Some(spiffe_trust_domain(&jws.claims).ok_or_else(missing_iss)?),
        };
        let iss = iss_claim.or(from_sub.as_deref()).unwrap_or_default();
        let issuer = self
            .issuers
            .get(iss)
            .ok_or_else(|| IdentityError::new(ErrorKind::UnknownIssuer, format!("issuer {iss:?}")))?;
        if from_sub.is_some()
            && !issuer
                .identities
                .iter()
                .all(|i| i.spec.provider == IdentityProvider::Spiffe)
        {
            return Err(missing_iss());
        }
        if !issuer.jwt_allowed {
            // Okta org authorization servers and opaque-token issuers are only ever introspected.
            return match &issuer.introspector {
                Some(i) => self.finish_introspection(issuer, i, token, now, peer).await,
                None => Err(IdentityError::new(
                    ErrorKind::UnknownIssuer,
                    "issuer accepts no JWTs",
                )),
            };
        }
        if !issuer.algorithms.contains(&jws.alg) {
            return Err(IdentityError::new(
                ErrorKind::MalformedToken,
                format!("algorithm {:?} not allowed for {iss}", jws.alg),
            ));
        }
        let mut keys_fresh_for = None;
        let key = match issuer.keys.as_ref() {
            Some(IssuerKeys::Static(set)) => {
                set.find(jws.kid(), jws.alg).cloned().ok_or(KeyError::UnknownKey)
            }
            Some(IssuerKeys::Remote(remote)) => {
                let key = remote.key(jws.kid(), jws.alg).await;
                keys_fresh_for = Some(remote.fresh_for());
                key
            }
            None => Err(KeyError::UnknownKey),
        }
        .map_err(|e| match e {
            KeyError::UnknownKey => IdentityError::new(
                ErrorKind::InvalidSignature,
                format!("no key {:?} for {iss}", jws.kid()),
            ),
            KeyError::Unavailable(e) => IdentityError::new(ErrorKind::ProviderUnavailable, e),
        })?;
        let valid =
            jsonwebtoken::crypto::verify(jws.signature, jws.signing_input.as_bytes(), &key.key, jws.alg)
                .map_err(|e| IdentityError::new(ErrorKind::InvalidSignature, e.to_string()))?;
        if !valid {
            return Err(IdentityError::new(
                ErrorKind::InvalidSignature,
                "signature does not verify",
            ));
        }
        let typ = check_type(&jws, issuer)?;
        let mut principal =
            principal_from_claims(issuer, &jws.claims, iss, Verified::Jwt(jws.alg, typ), now)?;
        if let Some(secs) = keys_fresh_for {
            let until = now.saturating_add(i64::try_from(secs).unwrap_or(i64::MAX));
            principal.reuse_until = principal.reuse_until.min(until);
        }
        Ok(principal)
    }

    /// An opaque token names no issuer. It goes to the one issuer that introspects, never to
    /// several in turn: each would learn (and could replay) tokens other issuers gave out.
    async fn introspect_any(
        &self,
        token: &str,
        now: i64,
        peer: Option<std::net::IpAddr>,
    ) -> Result<Principal, IdentityError> {
        let mut introspecting = self
            .issuers
            .values()
            .filter_map(|issuer| issuer.introspector.as_ref().map(|i| (issuer, i)));
        match (introspecting.next(), introspecting.next()) {
            (Some((issuer, i)), None) => self.finish_introspection(issuer, i, token, now, peer).await,
            (None, _) => Err(IdentityError::new(
                ErrorKind::MalformedToken,
                "opaque token and no issuer introspects",
            )),
            (Some(_), Some(_)) => Err(IdentityError::new(
                ErrorKind::UnknownIssuer,
                "an opaque token names no issuer, and several issuers introspect: the gateway sends a token to no issuer that may not have issued it (use JWT access tokens, or one introspecting issuer per gateway)",
            )),
        }
    }

    async fn finish_introspection(
        &self,
        issuer: &Issuer,
        introspector: &introspection::Introspector,
        token: &str,
        now: i64,
        peer: Option<std::net::IpAddr>,
    ) -> Result<Principal, IdentityError> {
        let mut claims = introspector.introspect(token, now, peer).await?;
        // RFC 7662 makes `sub` optional; a client-credentials token's subject is its client.
        if claims.get("sub").is_none()
            && let Some(client) = claims.get("client_id").cloned()
        {
            claims["sub"] = client;
        }
        let iss = claims
            .get("iss")
            .and_then(Value::as_str)
            .unwrap_or(introspector.issuer())
            .to_string();
        if iss != introspector.issuer() {
            return Err(IdentityError::new(
                ErrorKind::UnknownIssuer,
                "introspection names another issuer",
            ));
        }
        if let Some(why) = not_an_access_token(&claims) {
            return Err(IdentityError::new(ErrorKind::WrongTokenType, why));
        }
        let mut principal = principal_from_claims(issuer, &claims, &iss, Verified::Introspected, now)?;
        principal.reuse_until = now;
        // Only now, matched to an identity that is not suspended, does the address count as an
        // agent's for the introspection budget.
        introspector.prove(peer);
        Ok(principal)
    }
}

const ALL_ALGORITHMS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

fn algorithm(a: SigningAlgorithm) -> Algorithm {
    match a {
        SigningAlgorithm::RS256 => Algorithm::RS256,
        SigningAlgorithm::RS384 => Algorithm::RS384,
        SigningAlgorithm::RS512 => Algorithm::RS512,
        SigningAlgorithm::PS256 => Algorithm::PS256,
        SigningAlgorithm::PS384 => Algorithm::PS384,
        SigningAlgorithm::PS512 => Algorithm::PS512,
        SigningAlgorithm::ES256 => Algorithm::ES256,
        SigningAlgorithm::ES384 => Algorithm::ES384,
        SigningAlgorithm::EdDSA => Algorithm::EdDSA,
    }
}

/// Why an introspection answer is for some other kind of token than an access token: the
/// provider answers "active" for any of its tokens, and a refresh token lives for days. Known by
/// RFC 7662's `token_type` (or RFC 8693's URN for it), Keycloak's `typ`, or ID-token claims; a
/// provider that says nothing (oidc-provider omits `token_type` for refresh tokens) cannot be
/// told apart here.
fn not_an_access_token(claims: &Value) -> Option<String> {
    if let Some(t) = claim_text(claims, "token_type") {
        let kind = t.rsplit(':').next().unwrap_or_default();
        if matches!(kind, "refresh_token" | "id_token") {
            return Some(format!("introspection says this is a {kind}"));
        }
    }
    payload_says_not_access(claims)
}

/// Claims by which a token says it is not an access token, whether read from a JWT or from an
/// introspection answer: Keycloak's `typ` (`ID`, `Refresh`, `Offline`), Cognito's `token_use`
/// (`id`), and the claims only ID tokens carry. An ID token often has the right `aud` (the
/// client's id), and for Cognito it is the only token that has one.
fn payload_says_not_access(claims: &Value) -> Option<String> {
    if let Some(t) = claim_text(claims, "typ")
        && matches!(t.as_str(), "refresh" | "offline" | "id")
    {
        return Some(format!("the token's typ claim is {t}"));
    }
    if let Some(t) = claim_text(claims, "token_use")
        && t != "access"
    {
        return Some(format!("the token's token_use is {t}, not access"));
    }
    ["nonce", "at_hash", "c_hash"]
        .into_iter()
        .find(|c| claims.get(*c).is_some())
        .map(|c| format!("token carries {c}: an ID token"))
}

/// Claims that access tokens carry and ID tokens do not: the scope (RFC 9068's `scope`, Okta's
/// and Entra's `scp`), the client (`client_id`, Okta's `cid`, Entra v1's `appid`, Auth0's grant
/// type `gty`), and Entra's `azpacr`, `appidacr` and `idtyp`.
const ACCESS_TOKEN_CLAIMS: &[&str] = &[
    "scope",
    "scp",
    "client_id",
    "cid",
    "appid",
    "gty",
    "azpacr",
    "appidacr",
    "idtyp",
];

/// Whether a plain JWT's claims say it is an access token: one of [`ACCESS_TOKEN_CLAIMS`], or
/// Keycloak's `typ: Bearer`, or Cognito's `token_use: access`.
fn says_access(claims: &Value) -> bool {
    ACCESS_TOKEN_CLAIMS.iter().any(|c| claims.get(*c).is_some())
        || claim_text(claims, "typ").as_deref() == Some("bearer")
        || claim_text(claims, "token_use").as_deref() == Some("access")
}

/// A string claim, lower-case.
fn claim_text(claims: &Value, name: &str) -> Option<String> {
    claims
        .get(name)
        .and_then(Value::as_str)
        .map(str::to_ascii_lowercase)
}

/// `spiffe://<trust domain>` of a token whose `sub` is a SPIFFE ID.
fn spiffe_trust_domain(claims: &Value) -> Option<String> {
    let sub = claims.get("sub")?.as_str()?;
    let domain = sub.strip_prefix("spiffe://")?.split('/').next()?;
    (!domain.is_empty()).then(|| format!("spiffe://{domain}"))
}

/// Access tokens must not be ID tokens or other kinds of JWT (RFC 8725 §3.11). The `typ` must
/// suit some identity of the issuer (the one the token matches is checked once it is known);
/// returns it, lower-case and without `application/`.
fn check_type(jws: &token::Jws<'_>, issuer: &Issuer) -> Result<Option<String>, IdentityError> {
    let typ = jws.typ().map(|t| {
        let t = t.to_ascii_lowercase();
        t.strip_prefix("application/").map(str::to_string).unwrap_or(t)
    });
    if !issuer.identities.iter().any(|i| type_fits(i, typ.as_deref())) {
        return Err(IdentityError::new(
            ErrorKind::WrongTokenType,
            format!("typ {typ:?} is not an access token type here"),
        ));
    }
    if let Some(why) = payload_says_not_access(&jws.claims) {
        return Err(IdentityError::new(ErrorKind::WrongTokenType, why));
    }
    Ok(typ)
}

/// Whether a JWT `typ` (normalized as [`check_type`] returns it) is an access token type for
/// `identity`: its `accessTokenType`, else absent, `JWT` or `at+jwt`.
fn type_fits(identity: &CompiledIdentity, typ: Option<&str>) -> bool {
    match &identity.spec.access_token_type {
        Some(expected) => typ.is_some_and(|t| expected.eq_ignore_ascii_case(t)),
        None => matches!(typ, None | Some("jwt") | Some("at+jwt")),
    }
}

/// Time, subject and identity checks on verified claims (from a JWT or an introspection answer).
/// Where an issuer's keys come from (a static JWKS, a URI, or discovery when neither), and which
/// identity named them first.
struct KeyOrigin {
    identity: String,
    jwks: Option<Vec<u8>>,
    uri: Option<String>,
}

/// How a token's claims were established.
#[derive(Clone, Debug)]
enum Verified {
    /// A JWT checked here, signed with this algorithm, of this `typ` (see [`check_type`]).
    Jwt(Algorithm, Option<String>),
    /// Claims from the issuer's introspection endpoint.
    Introspected,
}

fn principal_from_claims(
    issuer: &Issuer,
    claims: &Value,
    iss: &str,
    verified: Verified,
    now: i64,
) -> Result<Principal, IdentityError> {
    let malformed = |e: String| IdentityError::new(ErrorKind::MalformedToken, e);
    let exp = token::numeric_date(claims, "exp")
        .map_err(malformed)?
        .ok_or_else(|| malformed("claim exp is missing".into()))?;
    if exp <= now {
        return Err(IdentityError::new(
            ErrorKind::Expired,
            format!("expired at {exp}"),
        ));
    }
    if let Some(nbf) = token::numeric_date(claims, "nbf").map_err(malformed)?
        && nbf > now + MAX_CLOCK_SKEW
    {
        return Err(IdentityError::new(
            ErrorKind::NotYetValid,
            format!("nbf {nbf} is in the future"),
        ));
    }
    let iat = token::numeric_date(claims, "iat").map_err(malformed)?;
    if let Some(iat) = iat
        && iat > now + MAX_CLOCK_SKEW
    {
        return Err(IdentityError::new(
            ErrorKind::NotYetValid,
            format!("iat {iat} is in the future"),
        ));
    }
    let subject = claims
        .get("sub")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty());
    let subject = subject
        .ok_or_else(|| malformed("claim sub is missing".into()))?
        .to_string();
    let audiences = token::audiences(claims).map_err(|e| IdentityError::new(ErrorKind::WrongAudience, e))?;
    // Identities of one issuer share its keys, but each says how its tokens are checked: an
    // identity that introspects never matches a token checked locally (an Okta org server's
    // JWT, say), nor the other way round; and each accepts only its own algorithms.
    let candidates: Vec<Arc<CompiledIdentity>> = issuer
        .identities
        .iter()
        .filter(|i| match verified {
            Verified::Jwt(..) => i.spec.token_type == TokenType::Jwt,
            Verified::Introspected => i.spec.token_type == TokenType::Introspection,
        })
        .cloned()
        .collect();
    let identity = matching::select(&candidates, claims, &audiences)?;
    if let Verified::Jwt(alg, _) = verified
        && !identity.spec.algorithms.iter().any(|a| algorithm(*a) == alg)
    {
        return Err(IdentityError::new(
            ErrorKind::MalformedToken,
            format!("algorithm {alg:?} is not allowed for identity {}", identity.name),
        ));
    }
    if let Verified::Jwt(_, typ) = &verified
        && !type_fits(identity, typ.as_deref())
    {
        return Err(IdentityError::new(
            ErrorKind::WrongTokenType,
            format!(
                "typ {typ:?} is not an access token type of identity {}",
                identity.name
            ),
        ));
    }
    if let Verified::Jwt(_, typ) = &verified
        && matches!(
            identity.spec.provider,
            IdentityProvider::Oidc | IdentityProvider::Okta
        )
        && identity.spec.access_token_type.is_none()
        && typ.as_deref() != Some("at+jwt")
        && !says_access(claims)
    {
        // An ID token issued without `nonce` or `at_hash` (a refresh grant's, say) looks like a
        // plain JWT: only what access tokens carry tells them apart.
        return Err(IdentityError::new(
            ErrorKind::WrongTokenType,
            format!(
                "a token of typ {typ:?} without a claim only access tokens carry ({}) may be an ID token; \
                 set spec.accessTokenType on identity {} if this issuer's access tokens carry none",
                ACCESS_TOKEN_CLAIMS.join(", "),
                identity.name
            ),
        ));
    }
    if let Some(max) = identity.max_token_lifetime {
        let issued = iat
            .ok_or_else(|| IdentityError::new(ErrorKind::LifetimeTooLong, "no iat to bound the lifetime"))?;
        // Saturating: an `iat` far in the past (i64::MIN) must not wrap the lifetime negative.
        let lifetime = exp.saturating_sub(issued);
        if lifetime > max.as_secs() as i64 {
            return Err(IdentityError::new(
                ErrorKind::LifetimeTooLong,
                format!("lifetime {lifetime}s"),
            ));
        }
    } else if matches!(verified, Verified::Jwt(..)) {
        // Unset, a signed token is still short-lived: a year-long service account token or a
        // forgotten long-lived one is exactly what leaks. Without `iat`, what is left of it counts.
        let lifetime = exp.saturating_sub(iat.unwrap_or(now));
        if lifetime > DEFAULT_MAX_TOKEN_LIFETIME.as_secs() as i64 {
            return Err(IdentityError::new(
                ErrorKind::LifetimeTooLong,
                format!(
                    "lifetime {lifetime}s, past the default {}s (set spec.maxTokenLifetime to allow longer)",
                    DEFAULT_MAX_TOKEN_LIFETIME.as_secs()
                ),
            ));
        }
    }
    if identity.spec.provider == IdentityProvider::Okta
        && identity.spec.token_type == TokenType::Jwt
        && !iss.contains("/oauth2/")
    {
        return Err(IdentityError::new(
            ErrorKind::UnknownIssuer,
            "Okta org authorization server tokens must be introspected",
        ));
    }
    let binding = match claims.get("cnf") {
        None => None,
        Some(cnf) => Some(
            cnf.get("jkt")
                .and_then(Value::as_str)
                .ok_or_else(|| malformed("cnf without jkt: only DPoP key binding is supported".into()))?
                .to_string(),
        ),
    };
    // Last, so a suspended identity's bad tokens are still told what is wrong with them; never
    // cached, so lifting the suspension takes effect with the configuration that lifts it.
    if identity.spec.suspend {
        return Err(IdentityError::new(
            ErrorKind::Suspended,
            format!("AgentIdentity {} is suspended (spec.suspend)", identity.name),
        ));
    }
    Ok(Principal {
        identity: identity.name.clone(),
        issuer: iss.to_string(),
        subject,
        groups: matching::groups(identity, claims),
        token_id: claims.get("jti").and_then(Value::as_str).map(str::to_string),
        expires_at: exp,
        binding,
        require_dpop: identity.spec.require_dpop,
        reuse_until: exp,
    })
}

#[cfg(test)]
mod tests;
