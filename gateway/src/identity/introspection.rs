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
    calls: Mutex<Budgets>,
    /// When the full answer cache was last swept (Unix seconds): at most once a second.
    swept_at: std::sync::atomic::AtomicI64,
}

/// A client address's share of the provider budget: a quarter of its calls a second and of
/// those in flight. A client sending a fresh junk token with each request spends its own share,
/// not every agent's (behind one address translation, or an ingress, clients share one share);
/// it takes three such addresses to spend the three quarters that addresses not proven share.
pub const PEER_SHARE: u32 = 4;
/// Most client addresses tracked (an IPv6 /64 is one). Idle ones are forgotten to make room;
/// while all are busy, a new address's uncached tokens are refused.
pub const MAX_PEERS: usize = 10_000;

/// A token bucket of calls a second, and a count of calls in flight.
#[derive(Debug)]
struct CallBudget {
    tokens: f64,
    refilled: std::time::Instant,
    in_flight: usize,
    rate: f64,
    max_in_flight: usize,
}

impl CallBudget {
    fn new(now: std::time::Instant, rate: u32, max_in_flight: usize) -> Self {
        Self {
            tokens: f64::from(rate),
            refilled: now,
            in_flight: 0,
            rate: f64::from(rate),
            max_in_flight,
        }
    }

    /// Whether a call may start now (refilling first).
    fn admits(&mut self, now: std::time::Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.refilled = now;
        self.tokens >= 1.0 && self.in_flight < self.max_in_flight
    }

    /// Takes one call if the budget allows it.
    fn take(&mut self, now: std::time::Instant) -> bool {
        if !self.admits(now) {
            return false;
        }
        self.tokens -= 1.0;
        self.in_flight += 1;
        true
    }

    /// Full again and nothing in flight: forgetting it changes nothing.
    fn idle(&mut self, now: std::time::Instant) -> bool {
        self.admits(now) && self.in_flight == 0 && self.tokens >= self.rate
    }
}

/// How long a client address whose token introspection said active counts as proven.
pub const PROVEN_FOR: Duration = Duration::from_secs(3600);

/// The provider budget, each client address's share of it, and the part of it that addresses
/// not proven may spend.
#[derive(Debug)]
struct Budgets {
    all: CallBudget,
    /// Three quarters of the budget: what addresses that sent no active token lately may spend
    /// together, so a few addresses flooding junk tokens (each within its share) leave a quarter
    /// to agents whose tokens introspected active before, renewing theirs.
    unproven: CallBudget,
    peers: HashMap<std::net::IpAddr, CallBudget>,
    /// Addresses whose token introspected active, until when they count as proven.
    proven: HashMap<std::net::IpAddr, std::time::Instant>,
}

impl Budgets {
    fn new(now: std::time::Instant) -> Self {
        Self {
            all: CallBudget::new(now, MAX_CALLS_PER_SECOND, MAX_CALLS_IN_FLIGHT),
            unproven: CallBudget::new(now, MAX_CALLS_PER_SECOND * 3 / 4, MAX_CALLS_IN_FLIGHT * 3 / 4),
            peers: HashMap::new(),
            proven: HashMap::new(),
        }
    }

    fn is_proven(&self, peer: std::net::IpAddr, now: std::time::Instant) -> bool {
        self.proven.get(&peer).is_some_and(|until| *until > now)
    }

    /// `peer` sent a token the provider said is active.
    fn prove(&mut self, peer: Option<std::net::IpAddr>, now: std::time::Instant) {
        let Some(peer) = peer.map(peer_key) else {
            return;
        };
        if !self.proven.contains_key(&peer) && self.proven.len() >= MAX_PEERS {
            self.proven.retain(|_, until| *until > now);
            if self.proven.len() >= MAX_PEERS {
                return;
            }
        }
        self.proven.insert(peer, now + PROVEN_FOR);
    }

    /// Takes one call for `peer` (its share, the unproven part unless it is proven, and the
    /// whole budget), if all allow it. Answers whether the call took from the unproven part.
    fn take(&mut self, peer: Option<std::net::IpAddr>, now: std::time::Instant) -> Option<bool> {
        let Some(peer) = peer.map(peer_key) else {
            return self.all.take(now).then_some(false);
        };
        if !self.peers.contains_key(&peer) && self.peers.len() >= MAX_PEERS {
            self.peers.retain(|_, b| !b.idle(now));
            if self.peers.len() >= MAX_PEERS {
                return None;
            }
        }
        let unproven = !self.is_proven(peer, now);
        let share = self.peers.entry(peer).or_insert_with(|| {
            CallBudget::new(
                now,
                MAX_CALLS_PER_SECOND / PEER_SHARE,
                MAX_CALLS_IN_FLIGHT / PEER_SHARE as usize,
            )
        });
        if !share.admits(now) || (unproven && !self.unproven.admits(now)) || !self.all.take(now) {
            return None;
        }
        if unproven {
            self.unproven.take(now);
        }
        share.take(now).then_some(unproven)
    }

    /// A call of `peer` ended (`unproven`: it took from the unproven part).
    fn done(&mut self, peer: Option<std::net::IpAddr>, unproven: bool) {
        self.all.in_flight = self.all.in_flight.saturating_sub(1);
        if unproven {
            self.unproven.in_flight = self.unproven.in_flight.saturating_sub(1);
        }
        if let Some(b) = peer.and_then(|p| self.peers.get_mut(&peer_key(p))) {
            b.in_flight = b.in_flight.saturating_sub(1);
        }
    }
}

/// A client's address as budgets count it: IPv4 (IPv4-mapped IPv6 too), or an IPv6 /64, which
/// one host may hold whole.
fn peer_key(ip: std::net::IpAddr) -> std::net::IpAddr {
    use std::net::{IpAddr, Ipv6Addr};
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// A call in flight; counted out when dropped.
struct Call<'a>(&'a Mutex<Budgets>, Option<std::net::IpAddr>, bool);

impl Drop for Call<'_> {
    fn drop(&mut self) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .done(self.1, self.2);
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
            calls: Mutex::new(Budgets::new(std::time::Instant::now())),
            swept_at: std::sync::atomic::AtomicI64::new(i64::MIN),
        })
    }

    /// `peer` sent a token that introspected active and matched an identity that is not
    /// suspended: its address counts as an agent's for an hour ([`PROVEN_FOR`]).
    pub fn prove(&self, peer: Option<std::net::IpAddr>) {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .prove(peer, std::time::Instant::now());
    }

    /// The issuer this introspector serves.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The claims of an active token, or an error (inactive tokens are `TokenInactive`). `peer`
    /// is the client's address, whose share of the provider budget an uncached token spends.
    pub async fn introspect(
        &self,
        token: &str,
        now: i64,
        peer: Option<std::net::IpAddr>,
    ) -> Result<Value, IdentityError> {
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
            .take(peer, std::time::Instant::now());
        let Some(unproven) = admitted else {
            return Err(unavailable(format!(
                "too many token introspections at once (at most {MAX_CALLS_PER_SECOND} a second, {MAX_CALLS_IN_FLIGHT} waiting, a quarter of each per client address, three quarters of each for addresses that sent no active token lately); retry shortly"
            )));
        };
        let _call = Call(&self.calls, peer, unproven);
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
        // A discovered endpoint that is gone (refused, or answering that no such resource is
        // there) is looked up again next time: the provider may have moved it.
        let forget = || {
            if self.endpoint.is_none() {
                *self.discovered.lock().unwrap_or_else(|p| p.into_inner()) = None;
            }
        };
        let resp = match self.fetcher.post_form(&endpoint, &headers, &form).await {
            Ok(resp) => resp,
            Err(e) => {
                forget();
                return Err(unavailable(e));
            }
        };
        if !resp.status.is_success() {
            if matches!(resp.status.as_u16(), 404 | 405 | 410) {
                forget();
            }
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
        if !cache.contains_key(&key) {
            super::cache::make_room(&mut cache, MAX_CACHED, &self.swept_at, now, |_, (_, u)| *u > now);
        }
        cache.insert(key, (claims.clone(), until));
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
        let mut b = CallBudget::new(t0, MAX_CALLS_PER_SECOND, MAX_CALLS_IN_FLIGHT);
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

    /// One client address flooding junk tokens spends its quarter of the provider budget; an
    /// agent at another address still gets its new token introspected.
    #[test]
    fn one_client_address_cannot_spend_the_whole_budget() {
        let t0 = Instant::now();
        let mut b = Budgets::new(t0);
        let flood: std::net::IpAddr = "10.0.0.9".parse().unwrap();
        let share =
            (MAX_CALLS_IN_FLIGHT / PEER_SHARE as usize).min((MAX_CALLS_PER_SECOND / PEER_SHARE) as usize);
        let taken = (0..100).take_while(|_| b.take(Some(flood), t0).is_some()).count();
        assert_eq!(taken, share);
        // Its other addresses in the same IPv6 /64 are the same client.
        let v6a: std::net::IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let v6b: std::net::IpAddr = "2001:db8:1:2::ffff".parse().unwrap();
        let v6_taken = (0..100)
            .take_while(|i| b.take(Some(if i % 2 == 0 { v6a } else { v6b }), t0).is_some())
            .count();
        assert_eq!(v6_taken, share);
        let agent: std::net::IpAddr = "10.0.0.7".parse().unwrap();
        assert!(b.take(Some(agent), t0).is_some());
        // Calls ending give the share back.
        for _ in 0..share {
            b.done(Some(flood), true);
        }
        assert!(b.take(Some(flood), t0 + Duration::from_secs(1)).is_some());
        assert_eq!(peer_key("::ffff:10.0.0.9".parse().unwrap()), flood);
    }

    /// Three addresses flooding junk tokens, each within its share, spend at most the unproven
    /// three quarters of the budget: an agent whose earlier token introspected active still gets
    /// its new one introspected, while a newcomer waits with the flood.
    #[test]
    fn a_few_flooding_addresses_leave_proven_agents_their_quarter() {
        let t0 = Instant::now();
        let mut b = Budgets::new(t0);
        let agent: std::net::IpAddr = "10.0.0.7".parse().unwrap();
        assert_eq!(b.take(Some(agent), t0), Some(true));
        b.done(Some(agent), true);
        b.prove(Some(agent), t0);
        let mut flooded = 0;
        for n in 1..=3u8 {
            let peer = std::net::IpAddr::from([10, 0, 1, n]);
            while b.take(Some(peer), t0).is_some() {
                flooded += 1;
            }
        }
        assert!(flooded <= (MAX_CALLS_PER_SECOND * 3 / 4) as usize, "{flooded}");
        assert_eq!(
            b.take(Some("10.0.2.1".parse().unwrap()), t0),
            None,
            "a newcomer waits"
        );
        assert_eq!(b.take(Some(agent), t0), Some(false), "the proven agent does not");
        // Proof lapses.
        let later = t0 + PROVEN_FOR + Duration::from_secs(1);
        assert!(!b.is_proven(peer_key(agent), later));
    }
}
