//! Strict parsing of compact JWS tokens (access tokens, DPoP proofs) before any key is looked up.
//!
//! Everything here is about refusing malformed or dangerous input early and explicitly: size caps,
//! base64url without padding, duplicate JSON members, `alg: none` in any spelling, symmetric
//! algorithms, unknown `crit` extensions, empty or degenerate signatures.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde_json::Value;

use super::strict_json;

/// Largest access token accepted (bytes). Real tokens are a few hundred bytes to a few KiB.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Most entries in an `aud` array.
pub const MAX_AUDIENCES: usize = 16;

/// A parsed, not yet verified, compact JWS.
#[derive(Debug, Clone)]
pub struct Jws<'a> {
    pub header: Value,
    pub claims: Value,
    pub alg: Algorithm,
    /// `base64url(header) . base64url(claims)`: what the signature covers.
    pub signing_input: &'a str,
    /// The base64url signature.
    pub signature: &'a str,
}

impl Jws<'_> {
    /// `kid` header, if any.
    pub fn kid(&self) -> Option<&str> {
        self.header.get("kid").and_then(Value::as_str)
    }

    /// `typ` header, if any.
    pub fn typ(&self) -> Option<&str> {
        self.header.get("typ").and_then(Value::as_str)
    }
}

/// Whether `token` looks like a compact JWS (three dot-separated parts).
pub fn looks_like_jwt(token: &str) -> bool {
    token.bytes().filter(|b| *b == b'.').count() == 2
}

/// Parses and checks the structure of a compact JWS. `allowed` are the algorithms acceptable here.
pub fn parse<'a>(token: &'a str, allowed: &[Algorithm]) -> Result<Jws<'a>, String> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(format!("token larger than {MAX_TOKEN_BYTES} bytes"));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err("not a compact JWS (expected three dot-separated parts)".into());
    };
    if s.is_empty() {
        return Err("empty signature".into());
    }
    let header = decode_json(h).map_err(|e| format!("header: {e}"))?;
    let claims = decode_json(c).map_err(|e| format!("claims: {e}"))?;
    if !header.is_object() || !claims.is_object() {
        return Err("header and claims must be JSON objects".into());
    }
    let alg_name = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or("header has no alg")?;
    let alg = asymmetric_algorithm(alg_name)?;
    if !allowed.contains(&alg) {
        return Err(format!("algorithm {alg_name} is not allowed for this issuer"));
    }
    if header.get("crit").is_some() {
        // We implement no JWS extensions, so any critical one must be refused (RFC 7515 §4.1.11).
        return Err("critical header extensions are not supported".into());
    }
    let signature = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| "signature is not base64url".to_string())?;
    check_signature_shape(alg, &signature)?;
    let signing_input = &token[..h.len() + 1 + c.len()];
    Ok(Jws {
        header,
        claims,
        alg,
        signing_input,
        signature: s,
    })
}

fn decode_json(part: &str) -> Result<Value, String> {
    if part.is_empty() {
        return Err("empty".into());
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| "not base64url (without padding)".to_string())?;
    strict_json::parse(&bytes)
}

/// Maps an `alg` header to an asymmetric algorithm; `none` (any case) and HMAC are refused.
pub fn asymmetric_algorithm(name: &str) -> Result<Algorithm, String> {
    if name.eq_ignore_ascii_case("none") {
        return Err("unsigned tokens (alg none) are refused".into());
    }
    match name {
        "RS256" => Ok(Algorithm::RS256),
        "RS384" => Ok(Algorithm::RS384),
        "RS512" => Ok(Algorithm::RS512),
        "PS256" => Ok(Algorithm::PS256),
        "PS384" => Ok(Algorithm::PS384),
        "PS512" => Ok(Algorithm::PS512),
        "ES256" => Ok(Algorithm::ES256),
        "ES384" => Ok(Algorithm::ES384),
        "EdDSA" => Ok(Algorithm::EdDSA),
        "HS256" | "HS384" | "HS512" => Err(format!("symmetric algorithm {name} is refused")),
        other => Err(format!("unsupported algorithm {other:?}")),
    }
}

/// ECDSA signatures are fixed-size `r || s`; a zero `r` or `s` is never valid (the "psychic
/// signatures" bug accepted r = s = 0). Checked here so no backend quirk can matter.
fn check_signature_shape(alg: Algorithm, sig: &[u8]) -> Result<(), String> {
    let half = match alg {
        Algorithm::ES256 => 32,
        Algorithm::ES384 => 48,
        _ => {
            return if sig.is_empty() {
                Err("empty signature".into())
            } else {
                Ok(())
            };
        }
    };
    if sig.len() != 2 * half {
        return Err(format!("ECDSA signature must be {} bytes", 2 * half));
    }
    if sig[..half].iter().all(|b| *b == 0) || sig[half..].iter().all(|b| *b == 0) {
        return Err("ECDSA signature with r or s equal to zero".into());
    }
    Ok(())
}

/// A NumericDate claim: must be a JSON integer (not a string, not a float).
pub fn numeric_date(claims: &Value, name: &str) -> Result<Option<i64>, String> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => v
            .as_i64()
            .map(Some)
            .ok_or_else(|| format!("claim {name} must be an integer NumericDate")),
    }
}

/// The `aud` claim as a list (a single string counts as a list of one).
pub fn audiences(claims: &Value) -> Result<Vec<&str>, String> {
    match claims.get("aud") {
        None => Err("claim aud is missing".into()),
        Some(Value::String(s)) => Ok(vec![s.as_str()]),
        Some(Value::Array(items)) => {
            if items.is_empty() || items.len() > MAX_AUDIENCES {
                return Err(format!("claim aud must hold 1 to {MAX_AUDIENCES} audiences"));
            }
            items
                .iter()
                .map(|v| {
                    v.as_str()
                        .ok_or_else(|| "claim aud must hold strings".to_string())
                })
                .collect()
        }
        Some(_) => Err("claim aud must be a string or an array of strings".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(v: &str) -> String {
        URL_SAFE_NO_PAD.encode(v)
    }

    fn token(header: &str, claims: &str, sig: &[u8]) -> String {
        format!("{}.{}.{}", b64(header), b64(claims), URL_SAFE_NO_PAD.encode(sig))
    }

    const ALL: &[Algorithm] = &[Algorithm::RS256, Algorithm::ES256];

    #[test]
    fn alg_none_in_any_case_and_hmac_are_refused() {
        for alg in ["none", "None", "NONE", "nOnE"] {
            let t = token(&format!(r#"{{"alg":"{alg}"}}"#), r#"{"sub":"a"}"#, b"x");
            assert!(parse(&t, ALL).unwrap_err().contains("alg none"), "{alg}");
        }
        let unsigned = format!("{}.{}.", b64(r#"{"alg":"RS256"}"#), b64(r#"{"sub":"a"}"#));
        assert!(parse(&unsigned, ALL).unwrap_err().contains("empty signature"));
        let t = token(r#"{"alg":"HS256"}"#, r#"{"sub":"a"}"#, b"x");
        assert!(parse(&t, ALL).unwrap_err().contains("symmetric"));
    }

    #[test]
    fn structural_problems_are_refused() {
        assert!(parse("a.b", ALL).is_err());
        assert!(parse("a.b.c.d", ALL).is_err());
        let big = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert!(parse(&big, ALL).unwrap_err().contains("larger"));
        let dup = token(r#"{"alg":"RS256","alg":"none"}"#, r#"{"sub":"a"}"#, b"x");
        assert!(parse(&dup, ALL).unwrap_err().contains("duplicate"));
        let dup_claim = token(r#"{"alg":"RS256"}"#, r#"{"sub":"a","sub":"b"}"#, b"x");
        assert!(parse(&dup_claim, ALL).unwrap_err().contains("duplicate"));
        let crit = token(
            r#"{"alg":"RS256","crit":["exp"],"exp":1}"#,
            r#"{"sub":"a"}"#,
            b"x",
        );
        assert!(parse(&crit, ALL).unwrap_err().contains("critical"));
        let padded = format!("{}=.{}.{}", b64(r#"{"alg":"RS256"}"#), b64("{}"), b64("x"));
        assert!(parse(&padded, ALL).is_err());
        let not_allowed = token(r#"{"alg":"PS256"}"#, r#"{"sub":"a"}"#, b"x");
        assert!(parse(&not_allowed, ALL).unwrap_err().contains("not allowed"));
    }

    #[test]
    fn zero_ecdsa_signatures_are_refused() {
        let t = token(r#"{"alg":"ES256"}"#, r#"{"sub":"a"}"#, &[0u8; 64]);
        assert!(parse(&t, ALL).unwrap_err().contains("zero"));
        let short = token(r#"{"alg":"ES256"}"#, r#"{"sub":"a"}"#, &[1u8; 10]);
        assert!(parse(&short, ALL).unwrap_err().contains("64 bytes"));
    }

    #[test]
    fn numeric_claims_must_be_integers() {
        let claims: Value = serde_json::json!({"exp": "1700000000", "nbf": 1.5, "iat": 1700000000});
        assert!(numeric_date(&claims, "exp").is_err());
        assert!(numeric_date(&claims, "nbf").is_err());
        assert_eq!(numeric_date(&claims, "iat").unwrap(), Some(1_700_000_000));
        assert_eq!(numeric_date(&claims, "missing").unwrap(), None);
    }

    #[test]
    fn audience_shapes() {
        assert_eq!(audiences(&serde_json::json!({"aud": "a"})).unwrap(), vec!["a"]);
        assert!(audiences(&serde_json::json!({})).is_err());
        assert!(audiences(&serde_json::json!({"aud": []})).is_err());
        let many: Vec<String> = (0..100).map(|i| i.to_string()).collect();
        assert!(audiences(&serde_json::json!({ "aud": many })).is_err());
        assert!(audiences(&serde_json::json!({"aud": [1]})).is_err());
    }

    #[test]
    fn hostile_tokens_are_refused_without_panic() {
        let seeds: [&[u8]; 3] = [
            b"eyJhbGciOiJFUzI1NiIsInR5cCI6ImF0K2p3dCIsImtpZCI6ImsxIn0.eyJpc3MiOiJodHRwczovL2lkcC5leGFtcGxlIiwiYXVkIjpbImEiLCJiIl0sImV4cCI6MTgwMDAwMDAwMCwiY25mIjp7ImprdCI6IngifX0.c2lnbmF0dXJl",
            b"eyJhbGciOiJub25lIn0.e30.",
            b"eyJhbGciOiJSUzI1NiIsImNyaXQiOlsiZXhwIl0sImtpZCI6IlxcdTAwMDAifQ.eyJhdWQiOiJ4IiwibmJmIjoxLjV9.AAAA",
        ];
        let allowed = [Algorithm::ES256, Algorithm::RS256];
        crate::mutate::each_mutant(&seeds, 3_000, |b| {
            let s = String::from_utf8_lossy(b);
            if let Ok(jws) = parse(&s, &allowed) {
                let _ = jws.kid();
            }
        });
        // Past the base64 layer: mutants of the header and claims JSON, encoded properly.
        let header: &[u8] = br#"{"alg":"ES256","typ":"at+jwt","kid":"k1","crit":[]}"#;
        let claims: &[u8] =
            br#"{"iss":"https://idp.example","aud":["a","b"],"exp":1800000000,"cnf":{"jkt":"x"}}"#;
        let e = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
        crate::mutate::each_mutant(&[header], 2_000, |h| {
            let _ = parse(&format!("{}.{}.c2ln", e(h), e(claims)), &allowed);
        });
        crate::mutate::each_mutant(&[claims], 2_000, |c| {
            let _ = parse(&format!("{}.{}.c2ln", e(header), e(c)), &allowed);
        });
    }
}
