//! DPoP proofs (RFC 9449): a per-request signature by the key the access token is bound to, so a
//! token copied out of a log cannot be replayed without that key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::keys::key_from_jwk;
use super::token;

/// How far a proof's `iat` may be from the gateway's clock.
pub const PROOF_MAX_AGE: Duration = Duration::from_secs(60);
/// How long a proof's jti is remembered: longer than the whole span in which its `iat` is
/// accepted (twice the maximum age, with a margin for clock steps of a second).
const REPLAY_RETENTION: Duration = Duration::from_secs(2 * PROOF_MAX_AGE.as_secs() + 5);
/// `jti`s remembered for replay detection past which only callers holding less than an equal share
/// of them (this over the number of callers) may add theirs; the others are refused (fail closed,
/// as busy, not as a replay) until their old entries expire. So callers that fill it together
/// lock out none of the lighter ones.
pub const MAX_REPLAY_ENTRIES: usize = 1_000_000;
/// `jti`s remembered at most, whoever sends them: the memory bound (about 200 bytes each).
pub const REPLAY_HARD_LIMIT: usize = MAX_REPLAY_ENTRIES + MAX_REPLAY_ENTRIES / 4;
/// Algorithms accepted for proofs: asymmetric only.
pub const PROOF_ALGORITHMS: &[Algorithm] = &[
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::RS256,
    Algorithm::PS256,
    Algorithm::EdDSA,
];
/// The `algs` advertised in `WWW-Authenticate: DPoP`.
pub const PROOF_ALGS_HEADER: &str = "ES256 ES384 RS256 PS256 EdDSA";

/// Most `jti`s remembered for one caller (identity and token subject; about 800 proofs a second
/// over the retention), whatever number of proof keys it binds its tokens to: one agent, however
/// fast it sends fresh proofs, cannot fill the cache and lock every other out.
pub const MAX_REPLAY_PER_CALLER: usize = 100_000;

/// Remembers proof ids (by key thumbprint and `jti`) for the proof lifetime, oldest first, so
/// expiry costs nothing per proof and a full cache is never scanned.
#[derive(Debug)]
pub struct ReplayCache {
    state: Mutex<ReplayState>,
    limits: ReplayLimits,
}

/// [`MAX_REPLAY_ENTRIES`], [`REPLAY_HARD_LIMIT`] and [`MAX_REPLAY_PER_CALLER`], smaller in tests.
#[derive(Clone, Copy, Debug)]
struct ReplayLimits {
    shared: usize,
    hard: usize,
    per_caller: usize,
}

impl Default for ReplayCache {
    fn default() -> Self {
        Self {
            state: Mutex::default(),
            limits: ReplayLimits {
                shared: MAX_REPLAY_ENTRIES,
                hard: REPLAY_HARD_LIMIT,
                per_caller: MAX_REPLAY_PER_CALLER,
            },
        }
    }
}

#[derive(Debug, Default)]
struct ReplayState {
    /// SHA-256 of `thumbprint:jti` → when it was seen.
    seen: HashMap<[u8; 32], Instant>,
    /// The same, in the order seen (which is time order), with the caller and the last wall-clock
    /// second at which the proof's `iat` is accepted.
    order: std::collections::VecDeque<([u8; 32], Instant, Arc<str>, i64)>,
    /// Ids remembered per caller.
    per_caller: HashMap<Arc<str>, usize>,
}

fn replay_id(thumbprint: &str, jti: &str) -> [u8; 32] {
    Sha256::new()
        .chain_update(thumbprint.as_bytes())
        .chain_update(b":")
        .chain_update(jti.as_bytes())
        .finalize()
        .into()
}

impl ReplayCache {
    /// Tests: whether `jti` of the key `thumbprint` was recorded.
    #[cfg(test)]
    pub(crate) fn remembers(&self, thumbprint: &str, jti: &str) -> bool {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .seen
            .contains_key(&replay_id(thumbprint, jti))
    }

    /// Tests: [`Self::remember`] with the wall clock kept out of it.
    #[cfg(test)]
    fn insert(&self, thumbprint: &str, jti: &str, caller: &str, now: Instant) -> Remembered {
        self.remember(
            thumbprint,
            jti,
            caller,
            now,
            Wall {
                now: 0,
                until: i64::MIN,
            },
        )
    }

    /// Records `jti` of the key `thumbprint`, sent by `caller`, at `now` (monotonic) and `wall`.
    fn remember(&self, thumbprint: &str, jti: &str, caller: &str, now: Instant, wall: Wall) -> Remembered {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let ReplayState {
            seen,
            order,
            per_caller,
        } = &mut *state;
        while let Some((id, at, key, until)) = order.front() {
            let kept = now.saturating_duration_since(*at);
            // A proof is judged by the wall clock (`iat`): stepped back, it could accept a proof
            // again after the retention, so an id stays while the wall clock still admits its
            // proof, up to a bounded extra time.
            if kept < REPLAY_RETENTION || (wall.now <= *until && kept < REPLAY_RETENTION + MAX_CLOCK_STEP) {
                break;
            }
            seen.remove(id);
            if let Some(n) = per_caller.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    per_caller.remove(key);
                }
            }
            order.pop_front();
        }
        if seen.capacity() > 4096 && seen.len() < seen.capacity() / 4 {
            // A flood passed: give most of its memory back (rarely: only after a fourfold fall).
            seen.shrink_to(seen.len() * 2);
            order.shrink_to(order.len() * 2);
            per_caller.shrink_to(per_caller.len() * 2);
        }
        let id = replay_id(thumbprint, jti);
        if seen.contains_key(&id) {
            return Remembered::Replayed;
        }
        let (key, held) = match per_caller.get_key_value(caller) {
            Some((k, n)) => (k.clone(), *n),
            None => (Arc::from(caller), 0),
        };
        let limits = self.limits;
        let share = limits.shared / (per_caller.len() + usize::from(held == 0)).max(1);
        if held >= limits.per_caller
            || seen.len() >= limits.hard
            || (seen.len() >= limits.shared && held >= share)
        {
            return Remembered::Full;
        }
        *per_caller.entry(key.clone()).or_insert(0) += 1;
        seen.insert(id, now);
        order.push_back((id, now, key, wall.until));
        Remembered::New
    }
}

/// The wall clock when a proof is remembered, and the last second at which its `iat` is accepted.
#[derive(Clone, Copy, Debug)]
struct Wall {
    now: i64,
    until: i64,
}

/// Longest extra time an id is kept for a wall clock stepped back (see [`ReplayCache::remember`]).
const MAX_CLOCK_STEP: Duration = Duration::from_secs(600);

/// What [`ReplayCache::remember`] did with a proof's id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Remembered {
    New,
    /// Seen before: a replay.
    Replayed,
    /// Not recorded: the caller holds its share of a full cache, or the cache is at its limit.
    Full,
}

/// How long one nonce is handed out; each is accepted for this period and the next, so a client
/// that took one just before the period turned has a full period to use it.
pub const NONCE_PERIOD: Duration = Duration::from_secs(60);
/// Bytes of a nonce before encoding: the period's number and the HMAC-SHA256 over it.
const NONCE_BYTES: usize = 8 + 32;

/// Server-issued DPoP nonces (RFC 9449 section 9) of one gateway process: a period number and
/// its HMAC under a key drawn at start and never shared, so no other process (another replica,
/// this one restarted) accepts them. A proof is signed over its nonce, so one captured here
/// cannot be replayed at a replica whose replay cache never saw it. Nothing is stored per nonce.
pub struct Nonces {
    key: aws_lc_rs::hmac::Key,
}

impl std::fmt::Debug for Nonces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Nonces")
    }
}

impl Nonces {
    /// Draws this process's key.
    pub fn new() -> Result<Self, String> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let key = aws_lc_rs::hmac::Key::generate(aws_lc_rs::hmac::HMAC_SHA256, &rng)
            .map_err(|_| "no random key for DPoP nonces".to_string())?;
        Ok(Self { key })
    }

    fn period(now_unix: i64) -> u64 {
        u64::try_from(now_unix).unwrap_or(0) / NONCE_PERIOD.as_secs()
    }

    /// The nonce handed out at `now_unix`.
    pub fn current(&self, now_unix: i64) -> String {
        let period = Self::period(now_unix).to_be_bytes();
        let tag = aws_lc_rs::hmac::sign(&self.key, &period);
        let mut raw = [0u8; NONCE_BYTES];
        raw[..8].copy_from_slice(&period);
        raw[8..].copy_from_slice(tag.as_ref());
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Whether `nonce` was handed out by this process in this period or the one before.
    pub fn accepts(&self, nonce: &str, now_unix: i64) -> bool {
        let Ok(raw) = URL_SAFE_NO_PAD.decode(nonce) else {
            return false;
        };
        if raw.len() != NONCE_BYTES {
            return false;
        }
        let (period, tag) = raw.split_at(8);
        let Ok(bytes) = <[u8; 8]>::try_from(period) else {
            return false;
        };
        let now = Self::period(now_unix);
        let issued = u64::from_be_bytes(bytes);
        (issued == now || issued.checked_add(1) == Some(now))
            && aws_lc_rs::hmac::verify(&self.key, period, tag).is_ok()
    }
}

/// Why a proof was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum ProofError {
    /// The proof is not acceptable as it is.
    Invalid(String),
    /// The proof is otherwise good but lacks a nonce this process issued (or its nonce
    /// expired): the client is to retry with the nonce it is given.
    UseNonce(&'static str),
    /// The proof's id cannot be remembered now (see [`MAX_REPLAY_ENTRIES`]), so it cannot be
    /// told from a replay: refused as the gateway being busy, for a retry later, not as a bad
    /// proof that would send the client for a new token.
    Busy,
}

impl From<String> for ProofError {
    fn from(e: String) -> Self {
        Self::Invalid(e)
    }
}

impl From<&str> for ProofError {
    fn from(e: &str) -> Self {
        Self::Invalid(e.to_string())
    }
}

/// What a request says about itself, for `htm`/`htu`.
#[derive(Debug, Clone)]
pub struct RequestTarget<'a> {
    pub method: &'a str,
    /// The request URL as the client addressed it (scheme, authority, path), without query.
    pub url: &'a str,
    /// Where a proxy in front changes the origin (`spec.dpop.origins`): the origins a proof may
    /// name instead, with `path`. Empty: `url` is the one.
    pub origins: &'a [String],
    /// The request's path, after one of `origins`.
    pub path: &'a str,
}

impl<'a> RequestTarget<'a> {
    /// A request whose origin is as it arrived (no `spec.dpop.origins`).
    pub fn at(method: &'a str, url: &'a str) -> Self {
        Self {
            method,
            url,
            origins: &[],
            path: "",
        }
    }

    /// Whether a proof's `htu` names this request.
    fn named_by(&self, htu: &str) -> bool {
        let Some(htu) = normalize_url(htu) else {
            return false;
        };
        if self.origins.is_empty() {
            return normalize_url(self.url).is_some_and(|u| u == htu);
        }
        self.origins
            .iter()
            .any(|o| normalize_url(&format!("{o}{}", self.path)).is_some_and(|u| u == htu))
    }
}

/// Verifies one DPoP proof for `access_token` and returns the key's RFC 7638 thumbprint. With
/// `nonces`, the proof must carry one of them. `caller` (the token's identity and subject) is
/// charged for its place in the replay cache.
#[allow(clippy::too_many_arguments)]
pub fn verify_proof(
    proof: &str,
    access_token: &str,
    target: &RequestTarget<'_>,
    now_unix: i64,
    replay: &ReplayCache,
    nonces: Option<&Nonces>,
    bound_to: &str,
    caller: &str,
) -> Result<String, ProofError> {
    let jws = token::parse(proof, PROOF_ALGORITHMS)?;
    if jws.typ() != Some("dpop+jwt") {
        return Err("proof typ must be dpop+jwt".into());
    }
    let jwk = jws.header.get("jwk").ok_or("proof header has no jwk")?;
    let key = key_from_jwk(jwk).map_err(|e| format!("proof jwk: {e}"))?;
    if key.alg.is_some_and(|a| a != jws.alg) {
        return Err("proof jwk alg differs from the header alg".into());
    }
    let valid = jsonwebtoken::crypto::verify(jws.signature, jws.signing_input.as_bytes(), &key.key, jws.alg)
        .map_err(|e| format!("proof signature: {e}"))?;
    if !valid {
        return Err("proof signature does not verify".into());
    }
    let claims = &jws.claims;
    let jti = claims
        .get("jti")
        .and_then(Value::as_str)
        .ok_or("proof has no jti")?;
    if jti.is_empty() || jti.len() > 256 {
        return Err("proof jti must be 1 to 256 characters".into());
    }
    let htm = claims
        .get("htm")
        .and_then(Value::as_str)
        .ok_or("proof has no htm")?;
    if htm != target.method {
        return Err("proof htm does not match the request method".into());
    }
    let htu = claims
        .get("htu")
        .and_then(Value::as_str)
        .ok_or("proof has no htu")?;
    if !target.named_by(htu) {
        return Err("proof htu does not match the request URL".into());
    }
    let iat = token::numeric_date(claims, "iat")?.ok_or("proof has no iat")?;
    if now_unix.abs_diff(iat) > PROOF_MAX_AGE.as_secs() {
        return Err("proof iat is outside the accepted window".into());
    }
    let ath = claims
        .get("ath")
        .and_then(Value::as_str)
        .ok_or("proof has no ath")?;
    if ath != URL_SAFE_NO_PAD.encode(Sha256::digest(access_token.as_bytes())) {
        return Err("proof ath does not match the access token".into());
    }
    let thumbprint = thumbprint(jwk)?;
    // Before the jti is remembered: proofs by keys the token is not bound to must not fill the
    // replay cache, which every client shares.
    if thumbprint != bound_to {
        return Err("proof key is not the key the token is bound to".into());
    }
    // Also before the jti is remembered: the retry with the nonce reuses nothing of this proof,
    // but a proof refused here must not spend a place in the cache.
    if let Some(nonces) = nonces {
        match claims.get("nonce") {
            None => return Err(ProofError::UseNonce("proof has no nonce")),
            Some(Value::String(n)) if nonces.accepts(n, now_unix) => {}
            Some(Value::String(_)) => {
                return Err(ProofError::UseNonce(
                    "proof nonce was not issued by this gateway process, or has expired",
                ));
            }
            Some(_) => return Err("proof nonce is not a string".into()),
        }
    }
    let wall = Wall {
        now: now_unix,
        until: iat.saturating_add(PROOF_MAX_AGE.as_secs() as i64),
    };
    match replay.remember(&thumbprint, jti, caller, Instant::now(), wall) {
        Remembered::New => {}
        Remembered::Replayed => return Err("proof jti was already used".into()),
        Remembered::Full => return Err(ProofError::Busy),
    }
    Ok(thumbprint)
}

/// RFC 7638 thumbprint (SHA-256) of a public JWK.
pub fn thumbprint(jwk: &Value) -> Result<String, String> {
    let field = |name: &str| {
        jwk.get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("jwk has no {name}"))
    };
    let canonical = match jwk.get("kty").and_then(Value::as_str) {
        Some("EC") => format!(
            r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
            field("crv")?,
            field("x")?,
            field("y")?
        ),
        Some("RSA") => format!(r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#, field("e")?, field("n")?),
        Some("OKP") => format!(
            r#"{{"crv":"{}","kty":"OKP","x":"{}"}}"#,
            field("crv")?,
            field("x")?
        ),
        _ => return Err("unsupported jwk kty".into()),
    };
    Ok(URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes())))
}

/// Scheme and host lowercased, default port dropped, query and fragment removed (RFC 9449 §4.3).
pub fn normalize_url(url: &str) -> Option<String> {
    let url = url.split(['?', '#']).next()?;
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut authority = authority.to_ascii_lowercase();
    let default_port = if scheme == "https" {
        ":443"
    } else if scheme == "http" {
        ":80"
    } else {
        ""
    };
    if !default_port.is_empty() && authority.ends_with(default_port) {
        authority.truncate(authority.len() - default_port.len());
    }
    Some(format!("{scheme}://{authority}{path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_normalize() {
        assert_eq!(
            normalize_url("HTTPS://GW.example:443/a?b=1").unwrap(),
            "https://gw.example/a"
        );
        assert_eq!(
            normalize_url("http://127.0.0.1:8080").unwrap(),
            "http://127.0.0.1:8080/"
        );
        assert!(normalize_url("no-scheme").is_none());
    }

    /// Behind a TLS-terminating ingress the gateway sees `http://` and an inner Host, while the
    /// client signed the public origin: `spec.dpop.origins` names what proofs may say, and
    /// then only that (a proof for the inner address, or for another host, is refused).
    #[test]
    fn proofs_name_the_configured_origins_when_a_proxy_changes_them() {
        let direct = RequestTarget::at("GET", "http://10.0.0.5:8080/okta/api/v1/users");
        assert!(direct.named_by("http://10.0.0.5:8080/okta/api/v1/users"));
        assert!(!direct.named_by("https://agents.example.com/okta/api/v1/users"));
        let origins = [
            "https://agents.example.com".to_string(),
            "https://agents.internal:8443".to_string(),
        ];
        let behind = RequestTarget {
            origins: &origins,
            path: "/okta/api/v1/users",
            ..direct
        };
        assert!(behind.named_by("https://agents.example.com/okta/api/v1/users"));
        assert!(behind.named_by("HTTPS://Agents.Example.com:443/okta/api/v1/users?x=1"));
        assert!(behind.named_by("https://agents.internal:8443/okta/api/v1/users"));
        assert!(!behind.named_by("http://10.0.0.5:8080/okta/api/v1/users"));
        assert!(!behind.named_by("https://agents.example.com/okta/api/v1/groups"));
        assert!(!behind.named_by("https://evil.example/okta/api/v1/users"));
        assert!(!behind.named_by("not a url"));
    }

    /// The wall clock stepped back after a proof was seen: its id is kept while the clock still
    /// admits the proof's `iat`, so the proof cannot pass again once the retention has run.
    #[test]
    fn a_wall_clock_stepped_back_does_not_let_a_proof_pass_again() {
        let cache = ReplayCache::default();
        let t0 = Instant::now();
        let iat = 1_000_050; // The client's clock is 50 s fast.
        let until = iat + PROOF_MAX_AGE.as_secs() as i64;
        let seen = |mono: Instant, wall: i64| cache.remember("k", "1", "c", mono, Wall { now: wall, until });
        assert_eq!(seen(t0, 1_000_000), Remembered::New);
        // 125 monotonic seconds later the wall clock, stepped back 20 s, reads 1_000_105: the
        // proof's iat is still within 60 s of it.
        assert_eq!(seen(t0 + REPLAY_RETENTION, 1_000_105), Remembered::Replayed);
        // Once the wall clock is past the proof's window it goes, as without a step.
        let later = t0 + REPLAY_RETENTION + Duration::from_secs(10);
        assert_eq!(seen(later, until + 1), Remembered::New);
    }

    #[test]
    fn replays_are_detected() {
        use Remembered::*;
        let cache = ReplayCache::default();
        let now = Instant::now();
        assert_eq!(cache.insert("k", "1", "c", now), New);
        assert_eq!(cache.insert("k", "1", "c", now), Replayed);
        assert_eq!(cache.insert("k", "2", "c", now), New);
        // Another key's proof may use the same jti.
        assert_eq!(cache.insert("other", "1", "c", now), New);
        // Forgotten once the retention has passed.
        assert_eq!(cache.insert("k", "1", "c", now + REPLAY_RETENTION), New);
    }

    /// A nonce is good at the process that issued it, for its period and the next; another
    /// process (a replica, or this one restarted) and a forged or altered one are refused.
    #[test]
    fn nonces_are_accepted_only_where_and_while_issued() {
        let here = Nonces::new().unwrap();
        let replica = Nonces::new().unwrap();
        let t = 1_800_000_000;
        let n = here.current(t);
        assert!(here.accepts(&n, t));
        assert!(here.accepts(&n, t + NONCE_PERIOD.as_secs() as i64));
        assert!(
            !here.accepts(&n, t + 2 * NONCE_PERIOD.as_secs() as i64),
            "expired"
        );
        assert!(
            !here.accepts(&n, t - NONCE_PERIOD.as_secs() as i64),
            "from the future"
        );
        assert!(!replica.accepts(&n, t), "another process's nonce");
        // The period alone changed: the HMAC no longer fits.
        let mut raw = URL_SAFE_NO_PAD.decode(&n).unwrap();
        raw[7] ^= 1;
        assert!(!here.accepts(&URL_SAFE_NO_PAD.encode(&raw), t));
        for junk in ["", "x", "!!!!", &n[..n.len() - 1], &format!("{n}A")] {
            assert!(!here.accepts(junk, t), "{junk:?}");
        }
    }

    /// One caller sending fresh proofs as fast as it can, over as many keys as it likes (a
    /// client may bind each token to a new key), fills its own share, not the cache: another
    /// caller's proofs still pass, and the share frees as its ids expire.
    #[test]
    fn one_caller_cannot_fill_the_replay_cache() {
        use Remembered::*;
        let cache = ReplayCache::default();
        let now = Instant::now();
        for i in 0..MAX_REPLAY_PER_CALLER {
            let key = format!("key-{}", i % 10);
            assert_eq!(cache.insert(&key, &i.to_string(), "greedy", now), New);
        }
        assert_eq!(cache.insert("key-new", "one-more", "greedy", now), Full);
        assert_eq!(cache.insert("key-new", "1", "modest", now), New);
        assert_eq!(
            cache.insert("key-new", "one-more", "greedy", now + REPLAY_RETENTION),
            New
        );
    }

    /// Callers that fill the shared part together (ten at their own limit, or many subjects
    /// of one identity) are refused past their equal share, and a light caller still gets in;
    /// only the hard limit refuses everyone.
    #[test]
    fn callers_filling_the_cache_together_lock_out_no_lighter_one() {
        use Remembered::*;
        let cache = ReplayCache {
            state: Mutex::default(),
            limits: ReplayLimits {
                shared: 100,
                hard: 125,
                // Above what any caller here holds: the share alone refuses them.
                per_caller: 50,
            },
        };
        let now = Instant::now();
        for caller in 0..10 {
            for i in 0..10 {
                assert_eq!(
                    cache.insert("k", &format!("{caller}-{i}"), &caller.to_string(), now),
                    New
                );
            }
        }
        // Full: the heavy callers hold their share (100 / 11 for a newcomer's sake) and are
        // refused as busy, not as replays; a newcomer passes, up to its share.
        assert_eq!(cache.insert("k", "0-x", "0", now), Full);
        for i in 0..9 {
            assert_eq!(cache.insert("k", &format!("new-{i}"), "new", now), New, "{i}");
        }
        assert_eq!(cache.insert("k", "new-9", "new", now), Full);
        assert_eq!(cache.insert("k", "0-1", "0", now), Replayed);
        // Newcomers fill the rest up to the hard limit; past it nobody gets in.
        for n in 0..16 {
            let _ = cache.insert("k", &format!("more-{n}"), &format!("more-{n}"), now);
        }
        assert_eq!(cache.state.lock().unwrap().seen.len(), 125);
        assert_eq!(cache.insert("k", "late", "late", now), Full);
        // As they expire, everyone gets in again.
        assert_eq!(cache.insert("k", "0-x", "0", now + REPLAY_RETENTION), New);
    }
}
