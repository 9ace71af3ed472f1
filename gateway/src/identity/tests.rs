//! The token attack catalogue (shared/SECURITY.md, "Tokens"), each case a test that fails if the
//! verifier accepts what it must refuse, plus the accepted shape of every kind of issuer.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use super::dpop::{ReplayCache, RequestTarget};
use super::fetch::HttpFetcher;
use super::mint::SigningKey;
use super::*;
use crate::config::{CompiledIdentity, SecretValue};

const NOW: i64 = 1_800_000_000;
const ISS: &str = "https://idp.example/oauth2/default";
const URL: &str = "https://gw.example/api/v1/users";

fn identity(name: &str, spec: Value, jwks: Option<&Value>) -> Arc<CompiledIdentity> {
    let spec: agentgate_crds::AgentIdentitySpec = serde_json::from_value(spec).expect("valid spec");
    Arc::new(CompiledIdentity {
        name: name.into(),
        max_token_lifetime: spec.max_token_lifetime.as_ref().map(|d| d.to_std().unwrap()),
        spec,
        static_jwks: jwks.map(|j| SecretValue::new(j.to_string().into_bytes())),
        introspection_secret: None,
    })
}

fn okta_spec() -> Value {
    json!({
        "provider": "Okta", "issuer": ISS, "audiences": ["api://agentgate"],
        "match": {"claims": {"cid": "0oa-agent"}}, "groups": {"claim": "groups", "static": ["ai-agents"]},
        "algorithms": ["RS256", "ES256"], "maxTokenLifetime": "1h",
        "keys": {"secretRef": {"name": "jwks", "key": "jwks.json"}}
    })
}

fn claims() -> Value {
    json!({
        "iss": ISS, "sub": "0oa-agent", "aud": "api://agentgate", "cid": "0oa-agent",
        "scp": ["users.read"], "groups": ["dba"], "iat": NOW - 10, "exp": NOW + 600, "jti": "t1"
    })
}

fn verifier(identities: Vec<Arc<CompiledIdentity>>) -> Verifier {
    verifier_with(identities, &KeyRegistry::default(), Duration::from_secs(30))
}

fn verifier_with(
    identities: Vec<Arc<CompiledIdentity>>,
    registry: &KeyRegistry,
    cooldown: Duration,
) -> Verifier {
    let options = VerifierOptions {
        refetch_cooldown: cooldown,
        cache_capacity: 1000,
    };
    Verifier::new(
        identities,
        registry,
        &HttpFetcher::new().unwrap(),
        Arc::new(ReplayCache::default()),
        &options,
    )
    .unwrap()
}

fn presented<'a>(authorization: &'a str, dpop: &'a [&'a str]) -> Presented<'a> {
    Presented {
        authorization: Some(authorization),
        dpop,
        target: RequestTarget::at("GET", URL),
        peer: None,
    }
}

async fn check(v: &Verifier, token: &str) -> Result<Arc<Principal>, IdentityError> {
    v.verify(&presented(&format!("Bearer {token}"), &[]), NOW).await
}

fn okta_setup() -> (SigningKey, Verifier) {
    let key = SigningKey::rsa("k1").unwrap();
    let jwks = SigningKey::jwks(&[&key]);
    let v = verifier(vec![identity("ci-agent", okta_spec(), Some(&jwks))]);
    (key, v)
}

async fn refused(v: &Verifier, token: &str, kind: ErrorKind) {
    let err = check(v, token).await.expect_err("must be refused");
    assert_eq!(err.kind, kind, "{err}");
}

#[tokio::test]
async fn a_valid_okta_token_maps_to_its_identity() {
    let (key, v) = okta_setup();
    let p = check(&v, &key.sign(&claims())).await.unwrap();
    assert_eq!(p.identity, "ci-agent");
    assert_eq!(p.subject, "0oa-agent");
    assert_eq!(p.groups, vec!["ai-agents".to_string(), "dba".to_string()]);
    assert_eq!(p.token_id.as_deref(), Some("t1"));
}

/// A prefix goes before the claim's groups, as a list or a space-separated string, and not
/// before the static ones: a policy for another issuer's `dba` does not take this one's.
#[tokio::test]
async fn claim_groups_take_the_identity_s_prefix_and_static_ones_do_not() {
    let key = SigningKey::rsa("k1").unwrap();
    let jwks = SigningKey::jwks(&[&key]);
    let mut spec = okta_spec();
    spec["groups"]["prefix"] = json!("okta:");
    let v = verifier(vec![identity("ci-agent", spec, Some(&jwks))]);
    let p = check(&v, &key.sign(&claims())).await.unwrap();
    assert_eq!(p.groups, ["ai-agents", "okta:dba"]);
    let mut spaced = claims();
    spaced["groups"] = json!("dba  ops");
    spaced["jti"] = json!("t2");
    let p = check(&v, &key.sign(&spaced)).await.unwrap();
    assert_eq!(p.groups, ["ai-agents", "okta:dba", "okta:ops"]);
}

/// A suspended identity's valid tokens are refused as suspended (and its bad ones as bad), and
/// another identity whose matchers also fit does not take them over.
#[tokio::test]
async fn a_suspended_identity_s_tokens_are_refused_and_not_taken_over() {
    let key = SigningKey::rsa("k1").unwrap();
    let jwks = SigningKey::jwks(&[&key]);
    let mut suspended = okta_spec();
    suspended["suspend"] = json!(true);
    let mut broad = okta_spec();
    broad["match"] = json!({"claims": {"scp": "users.read"}});
    let v = verifier(vec![identity("ci-agent", suspended.clone(), Some(&jwks))]);
    refused(&v, &key.sign(&claims()), ErrorKind::Suspended).await;
    let mut expired = claims();
    expired["exp"] = json!(NOW - 600);
    refused(&v, &key.sign(&expired), ErrorKind::Expired).await;
    // Both match: refused as ambiguous, never verified as the broader identity.
    let v = verifier(vec![
        identity("ci-agent", suspended, Some(&jwks)),
        identity("readers", broad, Some(&jwks)),
    ]);
    refused(&v, &key.sign(&claims()), ErrorKind::NoMatchingIdentity).await;
    // Lifting the suspension (a new configuration, so a new verifier) lets the token in again.
    let v = verifier(vec![identity("ci-agent", okta_spec(), Some(&jwks))]);
    assert_eq!(
        check(&v, &key.sign(&claims())).await.unwrap().identity,
        "ci-agent"
    );
}

#[tokio::test]
async fn alg_none_and_empty_signatures() {
    let (key, v) = okta_setup();
    let good = key.sign(&claims());
    let (h, c, _) = (
        good.split('.').next().unwrap(),
        good.split('.').nth(1).unwrap(),
        (),
    );
    for alg in ["none", "None", "NONE"] {
        let header = URL_SAFE_NO_PAD.encode(json!({"alg": alg, "kid": "k1"}).to_string());
        refused(&v, &format!("{header}.{c}."), ErrorKind::MalformedToken).await;
        refused(&v, &format!("{header}.{c}.AAAA"), ErrorKind::MalformedToken).await;
    }
    refused(&v, &format!("{h}.{c}."), ErrorKind::MalformedToken).await;
}

#[tokio::test]
async fn hmac_signed_with_the_public_key_is_refused() {
    let (key, v) = okta_setup();
    let jwk = key.public_jwk();
    let n = URL_SAFE_NO_PAD.decode(jwk["n"].as_str().unwrap()).unwrap();
    // Every encoding of the public key an attacker might try as the HMAC secret.
    for secret in [
        n.clone(),
        jwk.to_string().into_bytes(),
        b"-----BEGIN PUBLIC KEY-----".to_vec(),
    ] {
        let header = URL_SAFE_NO_PAD.encode(json!({"alg": "HS256", "kid": "k1"}).to_string());
        let body = URL_SAFE_NO_PAD.encode(claims().to_string());
        let msg = format!("{header}.{body}");
        let sig = jsonwebtoken::crypto::sign(
            msg.as_bytes(),
            &jsonwebtoken::EncodingKey::from_secret(&secret),
            jsonwebtoken::Algorithm::HS256,
        )
        .unwrap();
        refused(&v, &format!("{msg}.{sig}"), ErrorKind::MalformedToken).await;
    }
}

#[tokio::test]
async fn es256_with_zero_r_and_s_is_refused() {
    let key = SigningKey::ec("e1").unwrap();
    let v = verifier(vec![identity(
        "ci-agent",
        okta_spec(),
        Some(&SigningKey::jwks(&[&key])),
    )]);
    let token = key.sign(&claims());
    let prefix = token.rsplit_once('.').unwrap().0;
    refused(
        &v,
        &format!("{prefix}.{}", URL_SAFE_NO_PAD.encode([0u8; 64])),
        ErrorKind::MalformedToken,
    )
    .await;
    assert!(check(&v, &token).await.is_ok());
}

#[tokio::test]
async fn kids_are_exact_and_per_issuer() {
    let (key, v) = okta_setup();
    for kid in ["../../etc/passwd", "k1' OR '1'='1", &"k".repeat(5000), "K1"] {
        let token = key.sign_with_header(json!({"typ": "at+jwt", "kid": kid}), &claims());
        refused(&v, &token, ErrorKind::InvalidSignature).await;
    }
    // Another issuer's key, with its kid, cannot vouch for this issuer's tokens.
    let other = SigningKey::rsa("k-other").unwrap();
    let mut other_spec = okta_spec();
    other_spec["issuer"] = json!("https://other.example/oauth2/default");
    let both = verifier(vec![
        identity("ci-agent", okta_spec(), Some(&SigningKey::jwks(&[&key]))),
        identity("other", other_spec, Some(&SigningKey::jwks(&[&other]))),
    ]);
    refused(&both, &other.sign(&claims()), ErrorKind::InvalidSignature).await;
}

#[tokio::test]
async fn embedded_key_headers_are_never_trusted() {
    let (_, v) = okta_setup();
    let attacker = SigningKey::rsa("k1").unwrap();
    for header in [
        json!({"typ": "at+jwt", "kid": "k1", "jwk": attacker.public_jwk()}),
        json!({"typ": "at+jwt", "kid": "k1", "jku": "https://attacker.example/jwks"}),
        json!({"typ": "at+jwt", "kid": "k1", "x5u": "https://attacker.example/cert"}),
        json!({"typ": "at+jwt", "kid": "k1", "x5c": ["MIIB"]}),
    ] {
        refused(
            &v,
            &attacker.sign_with_header(header, &claims()),
            ErrorKind::InvalidSignature,
        )
        .await;
    }
}

#[tokio::test]
async fn unfit_jwks_entries_are_ignored_by_the_verifier() {
    let key = SigningKey::rsa("k1").unwrap();
    let mut enc = key.public_jwk().clone();
    enc["use"] = json!("enc");
    let v = verifier(vec![identity(
        "ci-agent",
        okta_spec(),
        Some(&json!({"keys": [enc]})),
    )]);
    refused(&v, &key.sign(&claims()), ErrorKind::InvalidSignature).await;
    let mut wrong_alg = key.public_jwk().clone();
    wrong_alg["alg"] = json!("RS384");
    let v = verifier(vec![identity(
        "ci-agent",
        okta_spec(),
        Some(&json!({"keys": [wrong_alg]})),
    )]);
    refused(&v, &key.sign(&claims()), ErrorKind::InvalidSignature).await;
}

#[tokio::test]
async fn crit_headers_are_refused() {
    let (key, v) = okta_setup();
    let token = key.sign_with_header(
        json!({"typ": "at+jwt", "kid": "k1", "crit": ["x-foo"], "x-foo": 1}),
        &claims(),
    );
    refused(&v, &token, ErrorKind::MalformedToken).await;
}

#[tokio::test]
async fn time_claims() {
    let (key, v) = okta_setup();
    let mut c = claims();
    c.as_object_mut().unwrap().remove("exp");
    refused(&v, &key.sign(&c), ErrorKind::MalformedToken).await;
    for (claim, value, kind) in [
        ("exp", NOW, ErrorKind::Expired),
        ("exp", NOW - 1, ErrorKind::Expired),
        ("nbf", NOW + 120, ErrorKind::NotYetValid),
        ("iat", NOW + 120, ErrorKind::NotYetValid),
    ] {
        let mut c = claims();
        c[claim] = json!(value);
        refused(&v, &key.sign(&c), kind).await;
    }
    // Within the skew, nbf and iat are fine.
    let mut c = claims();
    c["nbf"] = json!(NOW + 10);
    assert!(check(&v, &key.sign(&c)).await.is_ok());
}

#[tokio::test]
async fn lifetime_is_bounded() {
    let (key, v) = okta_setup();
    let mut c = claims();
    c["exp"] = json!(NOW + 7200);
    refused(&v, &key.sign(&c), ErrorKind::LifetimeTooLong).await;
    // An iat at the bottom of i64 once overflowed exp - iat (a panic in debug builds; in
    // release, a negative lifetime that passed the bound).
    let mut c = claims();
    c["iat"] = json!(i64::MIN);
    refused(&v, &key.sign(&c), ErrorKind::LifetimeTooLong).await;

    // Without maxTokenLifetime, signed tokens may live 24h: a year-long one (with or without
    // iat) is refused; a day's is not.
    let key = SigningKey::rsa("k1").unwrap();
    let mut spec = okta_spec();
    spec.as_object_mut().unwrap().remove("maxTokenLifetime");
    let v = verifier(vec![identity("ci-agent", spec, Some(&SigningKey::jwks(&[&key])))]);
    let mut c = claims();
    c["exp"] = json!(NOW + 365 * 86_400);
    refused(&v, &key.sign(&c), ErrorKind::LifetimeTooLong).await;
    c.as_object_mut().unwrap().remove("iat");
    refused(&v, &key.sign(&c), ErrorKind::LifetimeTooLong).await;
    c["exp"] = json!(NOW + 86_000);
    assert!(check(&v, &key.sign(&c)).await.is_ok());
}

#[tokio::test]
async fn audiences() {
    let (key, v) = okta_setup();
    let mut c = claims();
    c.as_object_mut().unwrap().remove("aud");
    refused(&v, &key.sign(&c), ErrorKind::WrongAudience).await;
    c["aud"] = json!("api://something-else");
    refused(&v, &key.sign(&c), ErrorKind::WrongAudience).await;
    c["aud"] = json!(["api://agentgate", "api://other"]);
    refused(&v, &key.sign(&c), ErrorKind::NoMatchingIdentity).await;
    c["azp"] = json!("0oa-someone-else");
    refused(&v, &key.sign(&c), ErrorKind::NoMatchingIdentity).await;
    c["azp"] = json!("0oa-agent");
    assert!(check(&v, &key.sign(&c)).await.is_ok());
    let huge: Vec<String> = (0..100).map(|i| format!("aud-{i}")).collect();
    c["aud"] = json!(huge);
    refused(&v, &key.sign(&c), ErrorKind::WrongAudience).await;
}

/// An ID token issued without `nonce` or `at_hash` (as on a refresh grant) has the audience and
/// subject that an app's own API may match: a plain JWT of an OIDC or Okta identity must carry a
/// claim only access tokens carry, unless the identity names its access-token type.
#[tokio::test]
async fn plain_jwts_without_access_token_claims_are_refused_as_id_tokens() {
    let key = SigningKey::rsa("entra").unwrap();
    let issuer = "https://login.microsoftonline.example/tenant/v2.0";
    let spec = json!({
        "issuer": issuer, "audiences": ["11111111-app"], "match": {"subject": "user-1"},
        "keys": {"secretRef": {"name": "entra", "key": "jwks"}}
    });
    let jwks = SigningKey::jwks(&[&key]);
    let v = verifier(vec![identity("app", spec.clone(), Some(&jwks))]);
    let id_token = json!({
        "iss": issuer, "sub": "user-1", "aud": "11111111-app", "oid": "user-1", "name": "A. User",
        "iat": NOW, "exp": NOW + 600
    });
    let jwt = |c: &Value| key.sign_with_header(json!({"typ": "JWT", "kid": "entra"}), c);
    refused(&v, &jwt(&id_token), ErrorKind::WrongTokenType).await;
    refused(
        &v,
        &key.sign_with_header(json!({"kid": "entra"}), &id_token),
        ErrorKind::WrongTokenType,
    )
    .await;
    for claim in ACCESS_TOKEN_CLAIMS {
        let mut c = id_token.clone();
        c[*claim] = json!("x");
        assert!(check(&v, &jwt(&c)).await.is_ok(), "{claim}");
    }
    for (claim, value) in [("typ", "Bearer"), ("token_use", "access")] {
        let mut c = id_token.clone();
        c[claim] = json!(value);
        assert!(check(&v, &jwt(&c)).await.is_ok(), "{claim}: {value}");
    }
    assert!(check(&v, &key.sign(&id_token)).await.is_ok(), "typ at+jwt");
    // An identity that names its access-token type takes that type as it is.
    let mut named = spec;
    named["accessTokenType"] = json!("JWT");
    let named = verifier(vec![identity("app", named, Some(&jwks))]);
    assert!(check(&named, &jwt(&id_token)).await.is_ok());
}

#[tokio::test]
async fn id_tokens_and_other_types_are_refused() {
    let (key, v) = okta_setup();
    let mut c = claims();
    c["nonce"] = json!("n-0S6_WzA2Mj");
    refused(&v, &key.sign(&c), ErrorKind::WrongTokenType).await;
    // Keycloak's and Cognito's own words for ID and refresh tokens, in the payload.
    for (claim, value) in [
        ("typ", "ID"),
        ("typ", "Refresh"),
        ("typ", "Offline"),
        ("token_use", "id"),
        ("token_use", "refresh"),
    ] {
        let mut c = claims();
        c[claim] = json!(value);
        refused(&v, &key.sign(&c), ErrorKind::WrongTokenType).await;
    }
    for (claim, value) in [("typ", "Bearer"), ("token_use", "access")] {
        let mut c = claims();
        c[claim] = json!(value);
        assert!(check(&v, &key.sign(&c)).await.is_ok(), "{claim}: {value}");
    }
    for typ in ["dpop+jwt", "logout+jwt", "secevent+jwt", "id_token"] {
        refused(
            &v,
            &key.sign_with_header(json!({"typ": typ, "kid": "k1"}), &claims()),
            ErrorKind::WrongTokenType,
        )
        .await;
    }
    // An issuer that declares its access-token type gets exactly that.
    let mut spec = okta_spec();
    spec["accessTokenType"] = json!("at+jwt");
    let strict = verifier(vec![identity("ci-agent", spec, Some(&SigningKey::jwks(&[&key])))]);
    refused(
        &strict,
        &key.sign_with_header(json!({"typ": "JWT", "kid": "k1"}), &claims()),
        ErrorKind::WrongTokenType,
    )
    .await;
    assert!(check(&strict, &key.sign(&claims())).await.is_ok());
    // Each identity of the issuer gets its own: the strict one's type is not relaxed by a lax
    // neighbour, nor the lax one's narrowed by the strict one.
    let mut strict_spec = okta_spec();
    strict_spec["accessTokenType"] = json!("at+jwt");
    let mut lax_spec = okta_spec();
    lax_spec["match"] = json!({"claims": {"cid": "0oa-other"}});
    let jwks = SigningKey::jwks(&[&key]);
    let both = verifier(vec![
        identity("ci-agent", strict_spec, Some(&jwks)),
        identity("other", lax_spec, Some(&jwks)),
    ]);
    let jwt = json!({"typ": "JWT", "kid": "k1"});
    refused(
        &both,
        &key.sign_with_header(jwt.clone(), &claims()),
        ErrorKind::WrongTokenType,
    )
    .await;
    let mut other = claims();
    other["cid"] = json!("0oa-other");
    let p = check(&both, &key.sign_with_header(jwt, &other)).await.unwrap();
    assert_eq!(p.identity, "other");
    assert_eq!(
        check(&both, &key.sign(&claims())).await.unwrap().identity,
        "ci-agent"
    );
}

#[tokio::test]
async fn duplicate_members_oversize_nesting_and_number_shapes() {
    let (key, v) = okta_setup();
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","kid":"k1","kid":"k2"}"#);
    let body = URL_SAFE_NO_PAD.encode(claims().to_string());
    refused(&v, &format!("{header}.{body}.AAAA"), ErrorKind::MalformedToken).await;
    let dup_claims = r#"{"iss":"https://idp.example/oauth2/default","sub":"a","sub":"0oa-agent"}"#;
    let token = format!(
        "{}.{}.AAAA",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","kid":"k1"}"#),
        URL_SAFE_NO_PAD.encode(dup_claims)
    );
    refused(&v, &token, ErrorKind::MalformedToken).await;
    let mut c = claims();
    c["pad"] = json!("x".repeat(10_000));
    refused(&v, &key.sign(&c), ErrorKind::MalformedToken).await;
    let mut c = claims();
    let mut deep = json!(1);
    for _ in 0..40 {
        deep = json!([deep]);
    }
    c["deep"] = deep;
    refused(&v, &key.sign(&c), ErrorKind::MalformedToken).await;
    for (claim, value) in [
        ("exp", json!((NOW + 600).to_string())),
        ("exp", json!((NOW + 600) as f64 + 0.5)),
        ("iat", json!("now")),
    ] {
        let mut c = claims();
        c[claim] = value;
        refused(&v, &key.sign(&c), ErrorKind::MalformedToken).await;
    }
}

#[tokio::test]
async fn okta_org_server_tokens_are_never_validated_locally() {
    let key = SigningKey::rsa("k1").unwrap();
    let mut spec = okta_spec();
    spec["issuer"] = json!("https://example.okta.com");
    let v = verifier(vec![identity("org", spec, Some(&SigningKey::jwks(&[&key])))]);
    let mut c = claims();
    c["iss"] = json!("https://example.okta.com");
    refused(&v, &key.sign(&c), ErrorKind::UnknownIssuer).await;
}

#[test]
fn identities_whose_matchers_restrict_nothing_are_refused() {
    let refused = |provider: &str, matcher: Value| {
        let mut spec = okta_spec();
        spec["provider"] = json!(provider);
        spec["match"] = matcher;
        let refusals = refusals([identity("id", spec, Some(&json!({"keys": []}))).as_ref()]);
        refusals
            .into_iter()
            .find(|r| r.field.starts_with("spec.match"))
            .map(|r| (r.field, r.message))
    };
    // Nothing its provider reads: every token of the issuer for the audience would match.
    let (field, message) = refused("Okta", json!({"claims": {}})).expect("empty claims");
    assert_eq!(field, "spec.match.claims");
    assert!(message.contains("matches every token"), "{message}");
    let (field, message) = refused("OIDC", json!({"spiffeId": "spiffe://example.org/ns/x/sa/agent"}))
        .expect("spiffeId under OIDC");
    assert_eq!(field, "spec.match.spiffeId");
    assert!(
        message.contains("provider OIDC does not read spiffeId"),
        "{message}"
    );
    let (field, _) = refused(
        "Okta",
        json!({"serviceAccount": {"namespace": "ci", "name": "a"}, "subject": "x"}),
    )
    .expect("serviceAccount under Okta");
    assert_eq!(field, "spec.match.serviceAccount");
    let (field, _) = refused(
        "Spiffe",
        json!({"github": {"repositoryId": "1"}, "spiffeId": "spiffe://example.org/a"}),
    )
    .expect("github under Spiffe");
    assert_eq!(field, "spec.match.github");
    // A provider's own matcher is needed, not just allowed.
    let (field, message) = refused("Kubernetes", json!({"subject": "system:serviceaccount:ci:agent"}))
        .expect("Kubernetes without serviceAccount");
    assert_eq!(field, "spec.match.serviceAccount");
    assert!(message.contains("needs this matcher"), "{message}");
    assert_eq!(
        refused("GitHubActions", json!({"claims": {"ref": "refs/heads/main"}})).map(|r| r.0),
        Some("spec.match.github")
    );
    // Matchers the provider reads pass.
    assert_eq!(refused("Okta", json!({"claims": {"cid": "0oa-agent"}})), None);
    assert_eq!(refused("OIDC", json!({"subject": "agent"})), None);
    assert_eq!(
        refused("Spiffe", json!({"spiffeId": "spiffe://example.org/a"})),
        None
    );
    assert_eq!(
        refused(
            "Kubernetes",
            json!({"serviceAccount": {"namespace": "ci", "name": "a"}, "claims": {"x": "y"}})
        ),
        None
    );
}

fn k8s_spec(audience: &str) -> Value {
    json!({
        "provider": "Kubernetes", "issuer": "https://kubernetes.default.svc.cluster.local",
        "audiences": [audience], "match": {"serviceAccount": {"namespace": "ci", "name": "agent"}},
        "keys": {"secretRef": {"name": "sa-keys", "key": "jwks"}}
    })
}

fn k8s_claims(aud: &str) -> Value {
    json!({
        "iss": "https://kubernetes.default.svc.cluster.local", "sub": "system:serviceaccount:ci:agent",
        "aud": [aud], "iat": NOW - 10, "nbf": NOW - 10, "exp": NOW + 600,
        "kubernetes.io": {"namespace": "ci", "serviceaccount": {"name": "agent", "uid": "u1"}, "pod": {"name": "p", "uid": "u2"}}
    })
}

#[tokio::test]
async fn kubernetes_service_account_tokens() {
    let key = SigningKey::rsa("sa").unwrap();
    let jwks = SigningKey::jwks(&[&key]);
    let v = verifier(vec![identity("ci-sa", k8s_spec("agentgate"), Some(&jwks))]);
    let sign = |c: &Value| key.sign_with_header(json!({"kid": "sa"}), c);
    assert_eq!(
        check(&v, &sign(&k8s_claims("agentgate"))).await.unwrap().identity,
        "ci-sa"
    );
    // A generic identity does not take a service-account token: it would skip the pod binding.
    let mut generic = k8s_spec("agentgate");
    generic["provider"] = json!("OIDC");
    generic["match"] = json!({"subject": "system:serviceaccount:ci:agent"});
    let lax = verifier(vec![identity("any-sa", generic, Some(&jwks))]);
    let err = check(&lax, &sign(&k8s_claims("agentgate"))).await.unwrap_err();
    assert!(err.detail.contains("provider: Kubernetes"), "{err}");
    // The API server's default audience is never enough, even if configured.
    let default_aud = verifier(vec![identity(
        "ci-sa",
        k8s_spec("https://kubernetes.default.svc"),
        Some(&jwks),
    )]);
    refused(
        &default_aud,
        &sign(&k8s_claims("https://kubernetes.default.svc")),
        ErrorKind::NoMatchingIdentity,
    )
    .await;
    // Without `--api-audiences` (GKE, say) the default audience is the issuer itself.
    let gke = "https://container.googleapis.com/v1/projects/p/locations/l/clusters/c";
    let mut spec = k8s_spec(gke);
    spec["issuer"] = json!(gke);
    let issuer_aud = verifier(vec![identity("ci-sa", spec, Some(&jwks))]);
    let mut c = k8s_claims(gke);
    c["iss"] = json!(gke);
    refused(&issuer_aud, &sign(&c), ErrorKind::NoMatchingIdentity).await;
    // Legacy secret-based token shape.
    let legacy = json!({
        "iss": "https://kubernetes.default.svc.cluster.local", "sub": "system:serviceaccount:ci:agent", "aud": ["agentgate"],
        "exp": NOW + 600, "kubernetes.io/serviceaccount/namespace": "ci", "kubernetes.io/serviceaccount/service-account.name": "agent"
    });
    refused(&v, &sign(&legacy), ErrorKind::NoMatchingIdentity).await;
    let mut other = k8s_claims("agentgate");
    other["sub"] = json!("system:serviceaccount:ci:other");
    refused(&v, &sign(&other), ErrorKind::NoMatchingIdentity).await;
    // `kubectl create token` without a bound object: no pod, or a secret bound instead.
    let mut unbound = k8s_claims("agentgate");
    unbound["kubernetes.io"].as_object_mut().unwrap().remove("pod");
    refused(&v, &sign(&unbound), ErrorKind::NoMatchingIdentity).await;
    unbound["kubernetes.io"]["secret"] = json!({"name": "s", "uid": "u3"});
    refused(&v, &sign(&unbound), ErrorKind::NoMatchingIdentity).await;
    let mut nameless = k8s_claims("agentgate");
    nameless["kubernetes.io"]["pod"] = json!({"name": "", "uid": "u2"});
    refused(&v, &sign(&nameless), ErrorKind::NoMatchingIdentity).await;
}

#[tokio::test]
async fn github_actions_tokens_match_numeric_ids_not_names() {
    let key = SigningKey::rsa("gh").unwrap();
    let spec = json!({
        "provider": "GitHubActions", "issuer": "https://token.actions.githubusercontent.com", "audiences": ["agentgate"],
        "match": {"github": {"repositoryId": "123456", "repositoryOwnerId": "42", "jobWorkflowRef": "octo/deploy/.github/workflows/ci.yml@refs/heads/main"}},
        "keys": {"secretRef": {"name": "gh", "key": "jwks"}}
    });
    let v = verifier(vec![identity("deploy", spec, Some(&SigningKey::jwks(&[&key])))]);
    let base = json!({
        "iss": "https://token.actions.githubusercontent.com", "sub": "repo:octo/deploy:ref:refs/heads/main", "aud": "agentgate",
        "iat": NOW - 10, "exp": NOW + 300, "repository": "octo/deploy", "repository_id": "123456", "repository_owner": "octo",
        "repository_owner_id": "42", "job_workflow_ref": "octo/deploy/.github/workflows/ci.yml@refs/heads/main"
    });
    let sign = |c: &Value| key.sign_with_header(json!({"typ": "JWT", "kid": "gh"}), c);
    assert!(check(&v, &sign(&base)).await.is_ok());
    // A re-registered repository with the same name has another id.
    let mut renamed = base.clone();
    renamed["repository_id"] = json!("999999");
    refused(&v, &sign(&renamed), ErrorKind::NoMatchingIdentity).await;
    // Under a generic identity (another issuer URL, say GitHub Enterprise Server's), the same
    // token would be matched by name alone: it matches only provider GitHubActions.
    let generic = json!({
        "issuer": "https://token.actions.githubusercontent.com", "audiences": ["agentgate"],
        "match": {"claims": {"repository": "octo/deploy"}}, "keys": {"secretRef": {"name": "gh", "key": "jwks"}}
    });
    let v = verifier(vec![identity(
        "by-name",
        generic,
        Some(&SigningKey::jwks(&[&key])),
    )]);
    let err = check(&v, &sign(&base)).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::NoMatchingIdentity);
    assert!(err.detail.contains("provider: GitHubActions"), "{err}");
}

#[tokio::test]
async fn spiffe_jwt_svids() {
    let key = SigningKey::ec("bundle").unwrap();
    let spec = json!({
        "provider": "Spiffe", "issuer": "spiffe://prod.example", "audiences": ["agentgate"],
        "match": {"spiffeId": "spiffe://prod.example/ns/agents/sa/*"}, "keys": {"secretRef": {"name": "bundle", "key": "jwks"}}
    });
    let v = verifier(vec![identity("agents", spec, Some(&SigningKey::jwks(&[&key])))]);
    let svid = json!({"iss": "spiffe://prod.example", "sub": "spiffe://prod.example/ns/agents/sa/coder", "aud": ["agentgate"], "exp": NOW + 300, "iat": NOW});
    let sign = |c: &Value| key.sign_with_header(json!({"typ": "JWT", "kid": "bundle"}), c);
    assert!(check(&v, &sign(&svid)).await.is_ok());
    let mut other = svid.clone();
    other["sub"] = json!("spiffe://prod.example/ns/other/sa/coder");
    refused(&v, &sign(&other), ErrorKind::NoMatchingIdentity).await;
    let mut no_aud = svid.clone();
    no_aud.as_object_mut().unwrap().remove("aud");
    refused(&v, &sign(&no_aud), ErrorKind::WrongAudience).await;
    // As SPIRE serves them: the bundle's keys marked `use: jwt-svid` (its `x509-svid` keys are
    // not for JWTs), and SVIDs without `iss`, whose trust domain names the issuer.
    let mut bundle = SigningKey::jwks(&[&key]);
    bundle["keys"][0]["use"] = json!("jwt-svid");
    let mut x509 = bundle["keys"][0].clone();
    x509["use"] = json!("x509-svid");
    x509["kid"] = json!("x509");
    bundle["keys"].as_array_mut().unwrap().push(x509);
    let spec = json!({
        "provider": "Spiffe", "issuer": "spiffe://prod.example", "audiences": ["agentgate"],
        "match": {"spiffeId": "spiffe://prod.example/ns/agents/sa/*"}, "keys": {"secretRef": {"name": "bundle", "key": "jwks"}}
    });
    let spire = verifier(vec![identity("agents", spec, Some(&bundle))]);
    let mut no_iss = svid.clone();
    no_iss.as_object_mut().unwrap().remove("iss");
    let p = check(&spire, &sign(&no_iss)).await.unwrap();
    assert_eq!(
        (p.identity.as_str(), p.issuer.as_str()),
        ("agents", "spiffe://prod.example")
    );
    let x509_signed = key.sign_with_header(json!({"typ": "JWT", "kid": "x509"}), &svid);
    refused(&spire, &x509_signed, ErrorKind::InvalidSignature).await;
    // Another trust domain, or a token that is not an SVID, has no issuer to be checked by.
    let mut elsewhere = no_iss.clone();
    elsewhere["sub"] = json!("spiffe://other.example/ns/agents/sa/coder");
    refused(&spire, &sign(&elsewhere), ErrorKind::UnknownIssuer).await;
    let mut plain = no_iss.clone();
    plain["sub"] = json!("coder");
    refused(&spire, &sign(&plain), ErrorKind::MalformedToken).await;
    // An `iss` that is there but not a string is malformed, not missing.
    let mut numeric_iss = svid.clone();
    numeric_iss["iss"] = json!(7);
    refused(&spire, &sign(&numeric_iss), ErrorKind::MalformedToken).await;
}

/// An introspection answer for a refresh token or an ID token is active, and no access token.
#[test]
fn introspected_refresh_and_id_tokens_are_not_access_tokens() {
    for refused in [
        json!({"active": true, "token_type": "refresh_token"}),
        json!({"active": true, "token_type": "urn:ietf:params:oauth:token-type:refresh_token"}),
        json!({"active": true, "token_type": "ID_TOKEN"}),
        json!({"active": true, "typ": "Refresh"}),
        json!({"active": true, "typ": "Offline"}),
        json!({"active": true, "nonce": "n-0S6"}),
    ] {
        assert!(not_an_access_token(&refused).is_some(), "{refused}");
    }
    for accepted in [
        json!({"active": true, "token_type": "Bearer"}),
        json!({"active": true, "token_type": "DPoP"}),
        json!({"active": true, "typ": "Bearer"}),
        json!({"active": true}),
    ] {
        assert_eq!(not_an_access_token(&accepted), None, "{accepted}");
    }
}

/// Only SPIFFE identities take a token without `iss`: an OIDC issuer named like a trust
/// domain does not.
#[tokio::test]
async fn tokens_without_iss_are_svids_or_nothing() {
    let key = SigningKey::ec("k").unwrap();
    let spec = json!({
        "issuer": "spiffe://prod.example", "audiences": ["agentgate"],
        "match": {"subject": "spiffe://prod.example/ns/agents/sa/coder"}, "keys": {"secretRef": {"name": "k", "key": "jwks"}}
    });
    let v = verifier(vec![identity("oidc", spec, Some(&SigningKey::jwks(&[&key])))]);
    let claims = json!({"sub": "spiffe://prod.example/ns/agents/sa/coder", "aud": ["agentgate"], "exp": NOW + 300, "iat": NOW});
    let token = key.sign_with_header(json!({"typ": "JWT", "kid": "k"}), &claims);
    refused(&v, &token, ErrorKind::MalformedToken).await;
}

#[tokio::test]
async fn generic_oidc_app_tokens_with_claim_mapping() {
    let key = SigningKey::rsa("entra").unwrap();
    let spec = json!({
        "issuer": "https://login.microsoftonline.example/tenant/v2.0", "audiences": ["api://agentgate"],
        "match": {"claims": {"azp": "11111111-app", "idtyp": "app"}}, "groups": {"claim": "roles"},
        "keys": {"secretRef": {"name": "entra", "key": "jwks"}}
    });
    let v = verifier(vec![identity(
        "entra-app",
        spec,
        Some(&SigningKey::jwks(&[&key])),
    )]);
    let c = json!({
        "iss": "https://login.microsoftonline.example/tenant/v2.0", "sub": "oid-1", "aud": "api://agentgate", "azp": "11111111-app",
        "idtyp": "app", "roles": ["Orders.Read"], "iat": NOW, "exp": NOW + 600
    });
    let p = check(
        &v,
        &key.sign_with_header(json!({"typ": "JWT", "kid": "entra"}), &c),
    )
    .await
    .unwrap();
    assert_eq!(p.groups, vec!["Orders.Read".to_string()]);
}

// --- DPoP -----------------------------------------------------------------------------------

fn dpop_setup(require: bool) -> (SigningKey, SigningKey, Verifier) {
    let issuer_key = SigningKey::rsa("k1").unwrap();
    let client_key = SigningKey::ec("client").unwrap();
    let v = dpop_verifier(&issuer_key, require);
    (issuer_key, client_key, v)
}

/// A verifier (one gateway process, with its own replay cache) of tokens `issuer_key` signs.
fn dpop_verifier(issuer_key: &SigningKey, require: bool) -> Verifier {
    let mut spec = okta_spec();
    spec["requireDPoP"] = json!(require);
    verifier(vec![identity(
        "ci-agent",
        spec,
        Some(&SigningKey::jwks(&[issuer_key])),
    )])
}

fn bound_token(issuer: &SigningKey, client: &SigningKey) -> String {
    let mut c = claims();
    c["cnf"] = json!({"jkt": client.thumbprint()});
    issuer.sign(&c)
}

async fn with_proof(
    v: &Verifier,
    scheme: &str,
    token: &str,
    proofs: &[&str],
) -> Result<Arc<Principal>, IdentityError> {
    v.verify(&presented(&format!("{scheme} {token}"), proofs), NOW)
        .await
}

#[tokio::test]
async fn dpop_bound_tokens_need_a_valid_proof() {
    let (issuer, client, v) = dpop_setup(true);
    let token = bound_token(&issuer, &client);
    let proof = client.dpop_proof("GET", URL, &token, NOW, "j1");
    let p = with_proof(&v, "DPoP", &token, &[&proof]).await.unwrap();
    assert_eq!(p.binding.as_deref(), Some(client.thumbprint().as_str()));
    // Replay of the same proof.
    let err = with_proof(&v, "DPoP", &token, &[&proof]).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidProof);
    assert!(
        err.www_authenticate()
            .starts_with("DPoP error=\"invalid_dpop_proof\"")
    );
    // A bound token presented as Bearer, with or without a proof.
    let p2 = client.dpop_proof("GET", URL, &token, NOW, "j2");
    assert_eq!(
        with_proof(&v, "Bearer", &token, &[&p2]).await.unwrap_err().kind,
        ErrorKind::BindingRequired
    );
    assert_eq!(
        with_proof(&v, "DPoP", &token, &[]).await.unwrap_err().kind,
        ErrorKind::BindingRequired
    );
    // Two DPoP headers.
    let (a, b) = (
        client.dpop_proof("GET", URL, &token, NOW, "j3"),
        client.dpop_proof("GET", URL, &token, NOW, "j4"),
    );
    assert_eq!(
        with_proof(&v, "DPoP", &token, &[&a, &b]).await.unwrap_err().kind,
        ErrorKind::InvalidProof
    );
    // An unbound token where DPoP is required: leaked bearer tokens are useless.
    let unbound = issuer.sign(&claims());
    assert_eq!(
        with_proof(&v, "Bearer", &unbound, &[]).await.unwrap_err().kind,
        ErrorKind::BindingRequired
    );
}

/// What `v` says of the bound `token` with `proof` at `now`.
async fn verdict(v: &Verifier, token: &str, proof: String, now: i64) -> Result<(), ErrorKind> {
    v.verify(&presented(&format!("DPoP {token}"), &[&proof]), now)
        .await
        .map(|_| ())
        .map_err(|e| e.kind)
}

/// Two replicas each remember only the proofs they saw: without nonces, a proof captured on its
/// way to one is good once more at the other. With nonces, a proof is good only at the process
/// that issued its nonce, and only while the nonce lasts.
#[tokio::test]
async fn dpop_nonces_keep_a_proof_to_the_process_that_issued_its_nonce() {
    let (issuer, client, _) = dpop_setup(true);
    let token = bound_token(&issuer, &client);
    // Nonces off: the replica that did not see the proof accepts it.
    let (a, b) = (dpop_verifier(&issuer, true), dpop_verifier(&issuer, true));
    assert_eq!(a.dpop_nonce(NOW), None);
    let proof = client.dpop_proof("GET", URL, &token, NOW, "j1");
    assert_eq!(verdict(&a, &token, proof.clone(), NOW).await, Ok(()));
    assert_eq!(
        verdict(&b, &token, proof, NOW).await,
        Ok(()),
        "the gap nonces close"
    );

    let a = dpop_verifier(&issuer, true).with_nonces(Arc::new(dpop::Nonces::new().unwrap()));
    let b = dpop_verifier(&issuer, true).with_nonces(Arc::new(dpop::Nonces::new().unwrap()));
    // No nonce: told to use one, and the refused proof spends nothing (its jti may come again).
    let bare = client.dpop_proof("GET", URL, &token, NOW, "j1");
    assert_eq!(
        verdict(&a, &token, bare.clone(), NOW).await,
        Err(ErrorKind::UseDpopNonce)
    );
    let err = a
        .verify(&presented(&format!("DPoP {token}"), &[&bare]), NOW)
        .await
        .unwrap_err();
    assert!(
        err.www_authenticate()
            .starts_with("DPoP error=\"use_dpop_nonce\""),
        "{}",
        err.www_authenticate()
    );
    let nonce_a = a.dpop_nonce(NOW).unwrap();
    let proof = client.dpop_proof_with_nonce(("GET", URL), &token, NOW, "j1", &nonce_a);
    assert_eq!(verdict(&a, &token, proof.clone(), NOW).await, Ok(()));
    assert_eq!(
        verdict(&a, &token, proof.clone(), NOW).await,
        Err(ErrorKind::InvalidProof),
        "a replay"
    );
    assert_eq!(
        verdict(&b, &token, proof, NOW).await,
        Err(ErrorKind::UseDpopNonce),
        "replayed at the other replica"
    );
    let nonce_b = b.dpop_nonce(NOW).unwrap();
    let proof = client.dpop_proof_with_nonce(("GET", URL), &token, NOW, "j2", &nonce_b);
    assert_eq!(verdict(&b, &token, proof, NOW).await, Ok(()));
    // Two periods on, the nonce has expired; the current one works.
    let later = NOW + 2 * dpop::NONCE_PERIOD.as_secs() as i64;
    let old = client.dpop_proof_with_nonce(("GET", URL), &token, later, "j3", &nonce_a);
    assert_eq!(
        verdict(&a, &token, old, later).await,
        Err(ErrorKind::UseDpopNonce)
    );
    let fresh = a.dpop_nonce(later).unwrap();
    assert_ne!(fresh, nonce_a);
    let proof = client.dpop_proof_with_nonce(("GET", URL), &token, later, "j3", &fresh);
    assert_eq!(verdict(&a, &token, proof, later).await, Ok(()));
    // A nonce that is not a string is a malformed proof, not a missing nonce.
    let ath = URL_SAFE_NO_PAD.encode(<sha2::Sha256 as sha2::Digest>::digest(token.as_bytes()));
    let odd = client.sign_with_header(
        json!({"typ": "dpop+jwt", "jwk": client.public_jwk()}),
        &json!({"jti": "j4", "htm": "GET", "htu": URL, "iat": NOW, "ath": ath, "nonce": 7}),
    );
    assert_eq!(verdict(&a, &token, odd, NOW).await, Err(ErrorKind::InvalidProof));
}

#[tokio::test]
async fn dpop_proof_catalogue() {
    let (issuer, client, v) = dpop_setup(true);
    let token = bound_token(&issuer, &client);
    let ath = URL_SAFE_NO_PAD.encode(<sha2::Sha256 as sha2::Digest>::digest(token.as_bytes()));
    let good_claims = |jti: &str| json!({"jti": jti, "htm": "GET", "htu": URL, "iat": NOW, "ath": ath});
    let mut cases: Vec<(&str, String)> = Vec::new();
    cases.push((
        "wrong typ",
        client.sign_with_header(
            json!({"typ": "JWT", "jwk": client.public_jwk()}),
            &good_claims("a"),
        ),
    ));
    let mut private = client.public_jwk().clone();
    private["d"] = json!("AAAA");
    cases.push((
        "private key in jwk",
        client.sign_with_header(json!({"typ": "dpop+jwt", "jwk": private}), &good_claims("b")),
    ));
    cases.push(("wrong htm", client.dpop_proof("POST", URL, &token, NOW, "c")));
    cases.push((
        "wrong htu",
        client.dpop_proof("GET", "https://gw.example/other", &token, NOW, "d"),
    ));
    cases.push(("stale iat", client.dpop_proof("GET", URL, &token, NOW - 600, "e")));
    cases.push((
        "future iat",
        client.dpop_proof("GET", URL, &token, NOW + 600, "f"),
    ));
    cases.push((
        "wrong ath",
        client.dpop_proof("GET", URL, "another-token", NOW, "g"),
    ));
    let mut no_ath = good_claims("h");
    no_ath.as_object_mut().unwrap().remove("ath");
    cases.push((
        "missing ath",
        client.sign_with_header(json!({"typ": "dpop+jwt", "jwk": client.public_jwk()}), &no_ath),
    ));
    let other = SigningKey::ec("other").unwrap();
    cases.push(("cnf.jkt mismatch", other.dpop_proof("GET", URL, &token, NOW, "i")));
    cases.push((
        "iat at the end of i64",
        client.dpop_proof("GET", URL, &token, i64::MIN, "i-min"),
    ));
    // Symmetric proof algorithm.
    let header = URL_SAFE_NO_PAD
        .encode(json!({"typ": "dpop+jwt", "alg": "HS256", "jwk": client.public_jwk()}).to_string());
    let body = URL_SAFE_NO_PAD.encode(good_claims("j").to_string());
    cases.push(("symmetric alg", format!("{header}.{body}.AAAA")));
    for (what, proof) in cases {
        let err = with_proof(&v, "DPoP", &token, &[&proof]).await.expect_err(what);
        assert_eq!(err.kind, ErrorKind::InvalidProof, "{what}: {err}");
    }
    // The valid proof still works after all of that.
    let ok = client.dpop_proof("GET", URL, &token, NOW, "k");
    assert!(with_proof(&v, "DPoP", &token, &[&ok]).await.is_ok());
    // A proof by a key the token is not bound to is refused before its jti is remembered: such
    // proofs cannot fill the replay cache that every client shares.
    let jti_of_other = other.dpop_proof("GET", URL, &token, NOW, "shared-jti");
    assert!(with_proof(&v, "DPoP", &token, &[&jti_of_other]).await.is_err());
    assert!(!v.replay.remembers(&other.thumbprint(), "shared-jti"));
}

// --- Remote keys: cache, flood, outage ---------------------------------------------------------

/// A real JWKS endpoint on 127.0.0.1 whose keys and availability the test controls.
struct JwksServer {
    port: u16,
    body: Arc<std::sync::Mutex<String>>,
    up: Arc<AtomicBool>,
    hits: Arc<AtomicU64>,
}

async fn jwks_server(initial: Value) -> JwksServer {
    use http_body_util::Full;
    use hyper::body::Bytes;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let body = Arc::new(std::sync::Mutex::new(initial.to_string()));
    let up = Arc::new(AtomicBool::new(true));
    let hits = Arc::new(AtomicU64::new(0));
    let (b, u, h) = (body.clone(), up.clone(), hits.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (b, u, h) = (b.clone(), u.clone(), h.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    h.fetch_add(1, Ordering::SeqCst);
                    let (status, text) = if u.load(Ordering::SeqCst) {
                        (200, b.lock().unwrap().clone())
                    } else {
                        (503, "down".to_string())
                    };
                    async move {
                        let mut resp = hyper::Response::new(Full::new(Bytes::from(text)));
                        *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    JwksServer { port, body, up, hits }
}

fn remote_spec(port: u16) -> Value {
    let mut spec = okta_spec();
    spec["keys"] = json!({"jwksUri": format!("http://127.0.0.1:{port}/keys")});
    spec
}

#[tokio::test]
async fn unknown_kid_floods_cause_at_most_one_fetch_per_cooldown() {
    let key = SigningKey::rsa("k1").unwrap();
    let server = jwks_server(SigningKey::jwks(&[&key])).await;
    let v = Arc::new(verifier_with(
        vec![identity("ci-agent", remote_spec(server.port), None)],
        &KeyRegistry::default(),
        Duration::from_secs(3600),
    ));
    assert!(check(&v, &key.sign(&claims())).await.is_ok());
    assert_eq!(server.hits.load(Ordering::SeqCst), 1);
    let mut tasks = Vec::new();
    for i in 0..200 {
        let (v, key) = (
            v.clone(),
            key.sign_with_header(json!({"typ": "at+jwt", "kid": format!("random-{i}")}), &claims()),
        );
        tasks.push(tokio::spawn(async move { check(&v, &key).await.map(|_| ()) }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap_err().kind, ErrorKind::InvalidSignature);
    }
    // The first miss may refetch once; everything else waits out the cooldown.
    assert!(
        server.hits.load(Ordering::SeqCst) <= 2,
        "{} fetches",
        server.hits.load(Ordering::SeqCst)
    );
}

#[tokio::test]
async fn outage_keeps_last_good_keys_and_recovery_picks_up_new_ones() {
    let old = SigningKey::rsa("old").unwrap();
    let server = jwks_server(SigningKey::jwks(&[&old])).await;
    let v = verifier_with(
        vec![identity("ci-agent", remote_spec(server.port), None)],
        &KeyRegistry::default(),
        Duration::from_millis(100),
    );
    assert!(check(&v, &old.sign(&claims())).await.is_ok());
    server.up.store(false, Ordering::SeqCst);
    // A different token (not in the verification cache) still verifies with the cached key.
    let mut c = claims();
    c["jti"] = json!("t2");
    assert!(check(&v, &old.sign(&c)).await.is_ok());
    // A new key cannot be fetched: fail closed.
    let new = SigningKey::rsa("new").unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    refused(&v, &new.sign(&claims()), ErrorKind::InvalidSignature).await;
    // The provider comes back with a rotated key set.
    *server.body.lock().unwrap() = SigningKey::jwks(&[&old, &new]).to_string();
    server.up.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let mut c = claims();
    c["jti"] = json!("t3");
    assert!(check(&v, &new.sign(&c)).await.is_ok());
}

/// A key the provider stopped listing (rotated out after a leak) verifies nothing once the
/// provider has said so: neither new tokens nor tokens verified, and cached, before.
#[tokio::test]
async fn a_withdrawn_key_verifies_nothing_once_the_provider_answers() {
    let (old, new) = (SigningKey::rsa("old").unwrap(), SigningKey::rsa("new").unwrap());
    let server = jwks_server(SigningKey::jwks(&[&old])).await;
    let v = verifier_with(
        vec![identity("ci-agent", remote_spec(server.port), None)],
        &KeyRegistry::default(),
        Duration::from_millis(100),
    );
    let token = old.sign(&claims());
    let auth = format!("Bearer {token}");
    assert!(check(&v, &token).await.is_ok());
    *server.body.lock().unwrap() = SigningKey::jwks(&[&new]).to_string();
    let Some(IssuerKeys::Remote(remote)) = v.issuers[ISS].keys.as_ref() else {
        unreachable!("remote keys")
    };
    // Reused while the key set that verified it is fresh, as any uncached token would be.
    let fresh_for = i64::try_from(remote.fresh_for()).unwrap();
    assert!(fresh_for > 0);
    assert!(
        v.verify(&presented(&auth, &[]), NOW + fresh_for - 5)
            .await
            .is_ok()
    );
    remote.make_stale();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let mut c = claims();
    c["jti"] = json!("t2");
    refused(&v, &old.sign(&c), ErrorKind::InvalidSignature).await;
    assert_eq!(
        v.verify(&presented(&auth, &[]), NOW + fresh_for + 1)
            .await
            .unwrap_err()
            .kind,
        ErrorKind::InvalidSignature
    );
    assert!(check(&v, &new.sign(&c)).await.is_ok());
}

/// A reload asks the provider again: an operator who reloads after the provider withdrew a
/// leaked key need not wait out the cached set's `max-age`. The set still stands in while the
/// provider is down, and an issuer the new configuration drops starts afresh when it returns.
#[tokio::test]
async fn a_reload_refetches_keys_before_trusting_them_again() {
    let (old, new) = (SigningKey::rsa("old").unwrap(), SigningKey::rsa("new").unwrap());
    let server = jwks_server(SigningKey::jwks(&[&old])).await;
    let registry = KeyRegistry::default();
    let cooldown = Duration::from_millis(100);
    let build = |registry: &KeyRegistry| {
        verifier_with(
            vec![identity("ci-agent", remote_spec(server.port), None)],
            registry,
            cooldown,
        )
    };
    let with_jti = |key: &SigningKey, jti: &str| {
        let mut c = claims();
        c["jti"] = json!(jti);
        key.sign(&c)
    };
    assert!(check(&build(&registry), &old.sign(&claims())).await.is_ok());
    assert_eq!(server.hits.load(Ordering::SeqCst), 1);

    // Reloaded while the provider is down: the last good keys stand in.
    server.up.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(check(&build(&registry), &with_jti(&old, "t2")).await.is_ok());
    assert_eq!(server.hits.load(Ordering::SeqCst), 2);

    // The provider withdraws the key and is back: the next reload's first token asks it.
    *server.body.lock().unwrap() = SigningKey::jwks(&[&new]).to_string();
    server.up.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let v = build(&registry);
    refused(&v, &with_jti(&old, "t3"), ErrorKind::InvalidSignature).await;
    assert!(check(&v, &with_jti(&new, "t4")).await.is_ok());
    let hits = server.hits.load(Ordering::SeqCst);

    // A configuration without the issuer drops its cache; one that names it again fetches.
    let other = SigningKey::rsa("other").unwrap();
    drop(verifier_with(
        vec![identity(
            "ci-agent",
            okta_spec(),
            Some(&SigningKey::jwks(&[&other])),
        )],
        &registry,
        cooldown,
    ));
    assert!(check(&build(&registry), &with_jti(&new, "t5")).await.is_ok());
    assert_eq!(server.hits.load(Ordering::SeqCst), hits + 1);
}

/// Identities of one issuer share its keys, not their rules: a JWT checked locally never matches
/// an identity that wants its tokens introspected, and each identity accepts only its own
/// algorithms.
#[tokio::test]
async fn identities_of_one_issuer_keep_their_own_token_type_and_algorithms() {
    let key = SigningKey::rsa("k1").unwrap();
    let ec = SigningKey::ec("e1").unwrap();
    let jwks = SigningKey::jwks(&[&key, &ec]);
    let mut introspected = okta_spec();
    introspected["tokenType"] = json!("Introspection");
    introspected["introspection"] = json!({
        "clientId": "agentgate", "authMethod": "client_secret_basic",
        "secretRef": {"name": "idp", "key": "secret"}, "endpoint": "https://idp.example/introspect"
    });
    introspected.as_object_mut().unwrap().remove("keys");
    let mut introspected = Arc::try_unwrap(identity("okta-org", introspected, None)).unwrap();
    introspected.introspection_secret = Some(SecretValue::new(b"s".to_vec()));
    let mut local = okta_spec();
    local["match"] = json!({"claims": {"cid": "0oa-other"}});
    local["algorithms"] = json!(["ES256"]);
    let v = verifier(vec![
        Arc::new(introspected),
        identity("local", local, Some(&jwks)),
    ]);
    // The introspecting identity's token, signed with the issuer's key: no local match.
    refused(&v, &key.sign(&claims()), ErrorKind::NoMatchingIdentity).await;
    // The local identity's token: only with its own algorithm.
    let mut c = claims();
    c["cid"] = json!("0oa-other");
    c["jti"] = json!("rs");
    refused(&v, &key.sign(&c), ErrorKind::MalformedToken).await;
    c["jti"] = json!("es");
    assert_eq!(check(&v, &ec.sign(&c)).await.unwrap().identity, "local");
    // Two identities of one issuer naming different keys: refused, not the first one's keys used.
    let other = SigningKey::jwks(&[&SigningKey::ec("e2").unwrap()]);
    let mut second = okta_spec();
    second["match"] = json!({"claims": {"cid": "0oa-second"}});
    let refused = Verifier::new(
        vec![
            identity("first", okta_spec(), Some(&jwks)),
            identity("second", second, Some(&other)),
        ],
        &KeyRegistry::default(),
        &HttpFetcher::new().unwrap(),
        Arc::new(ReplayCache::default()),
        &VerifierOptions::default(),
    );
    let Err(err) = refused else {
        panic!("two key sets for one issuer accepted")
    };
    assert!(err.contains("must name the same keys"), "{err}");
    // Likewise two identities introspected at one issuer with other settings (another
    // endpoint, client or secret): refused, not the first one's settings used for both.
    let introspected_as = |name: &str, client: &str| {
        let mut spec = okta_spec();
        spec["tokenType"] = json!("Introspection");
        spec["match"] = json!({"claims": {"cid": name}});
        spec["introspection"] = json!({
            "clientId": client, "authMethod": "client_secret_basic",
            "secretRef": {"name": "idp", "key": "secret"}, "endpoint": "https://idp.example/introspect"
        });
        spec.as_object_mut().unwrap().remove("keys");
        let mut i = Arc::try_unwrap(identity(name, spec, None)).unwrap();
        i.introspection_secret = Some(SecretValue::new(b"s".to_vec()));
        Arc::new(i)
    };
    let build = |second_client: &str| {
        Verifier::new(
            vec![
                introspected_as("one", "agentgate"),
                introspected_as("two", second_client),
            ],
            &KeyRegistry::default(),
            &HttpFetcher::new().unwrap(),
            Arc::new(ReplayCache::default()),
            &VerifierOptions::default(),
        )
    };
    let Err(err) = build("someone-else") else {
        panic!("two introspection settings for one issuer accepted")
    };
    assert!(err.contains("must name the same introspection settings"), "{err}");
    assert!(build("agentgate").is_ok());
}

#[tokio::test]
async fn an_unreachable_provider_without_cached_keys_fails_closed() {
    let key = SigningKey::rsa("k1").unwrap();
    let port = crate::identity::tests::unused_port();
    let v = verifier(vec![identity("ci-agent", remote_spec(port), None)]);
    refused(&v, &key.sign(&claims()), ErrorKind::ProviderUnavailable).await;
}

fn unused_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn repeated_tokens_come_from_the_cache_and_errors_never_echo_the_token() {
    let (key, v) = okta_setup();
    let token = key.sign(&claims());
    let first = check(&v, &token).await.unwrap();
    assert_eq!(check(&v, &token).await.unwrap(), first);
    assert_eq!(v.cache.len(), 1);
    let mut c = claims();
    c["exp"] = json!(NOW - 5);
    let expired = key.sign(&c);
    let err = check(&v, &expired).await.unwrap_err();
    for shown in [err.to_string(), err.www_authenticate()] {
        assert!(
            !shown.contains(&expired) && !shown.contains(expired.split('.').nth(1).unwrap()),
            "{shown}"
        );
    }
    assert_eq!(
        v.verify(
            &Presented {
                authorization: None,
                dpop: &[],
                target: RequestTarget::at("GET", URL),
                peer: None,
            },
            NOW
        )
        .await
        .unwrap_err()
        .kind,
        ErrorKind::MissingCredentials
    );
}

#[test]
fn a_verifier_builds_from_the_example_configuration_without_network() {
    // Building fetches nothing (keys are fetched on first use), so this never leaves the machine.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
    let config = crate::config::load(&crate::config::LoadOptions {
        manifests: dir,
        ..Default::default()
    })
    .unwrap();
    let fetcher = HttpFetcher::new().unwrap();
    let v = Verifier::for_config(
        &config,
        &KeyRegistry::default(),
        &fetcher,
        Arc::new(ReplayCache::default()),
        &VerifierOptions::default(),
    )
    .unwrap();
    assert_eq!(v.issuers.len(), 1);
    assert!(v.issuers.contains_key("https://example.okta.com/oauth2/default"));
}

/// The signature proves who wrote a token, not that its claims are acceptable: tokens signed by
/// the trusted key over thousands of mutants of the claims (and of the header) are accepted only
/// when the claims pass every check, so no edit the issuer could be tricked into signing (a
/// duplicated member, a number where a string goes, a nested aud) slips through.
#[tokio::test]
async fn signed_mutants_of_the_claims_are_accepted_only_when_every_check_passes() {
    let key = SigningKey::ec("k1").unwrap();
    let jwks = SigningKey::jwks(&[&key]);
    let v = verifier(vec![identity("ci-agent", okta_spec(), Some(&jwks))]);
    let header = json!({"alg": "ES256", "typ": "at+jwt", "kid": "k1"}).to_string();
    let claims = claims().to_string();
    assert!(
        check(&v, &key.sign_raw(header.as_bytes(), claims.as_bytes()))
            .await
            .is_ok()
    );
    let mut candidates = Vec::new();
    crate::mutate::each_mutant(&[claims.as_bytes()], 1_500, |c| {
        candidates.push((header.as_bytes().to_vec(), c.to_vec()));
    });
    crate::mutate::each_mutant(&[header.as_bytes()], 500, |h| {
        candidates.push((h.to_vec(), claims.as_bytes().to_vec()));
    });
    let mut accepted = 0;
    for (h, c) in &candidates {
        let Ok(p) = check(&v, &key.sign_raw(h, c)).await else {
            continue;
        };
        accepted += 1;
        let header = strict_json::parse(h).expect("an accepted header is strict JSON");
        assert_eq!(header["alg"], "ES256");
        // A header without kid is tried against the issuer's keys; one with a kid names it.
        assert!(header.get("kid").is_none_or(|k| k == "k1"), "{header}");
        // With no accessTokenType configured, typ is absent, JWT (Okta's) or at+jwt.
        let typ = header
            .get("typ")
            .map(|t| t.as_str().expect("typ is a string").to_ascii_lowercase());
        let typ = typ
            .as_deref()
            .map(|t| t.strip_prefix("application/").unwrap_or(t));
        assert!(matches!(typ, None | Some("jwt" | "at+jwt")), "{header}");
        let c = strict_json::parse(c).expect("accepted claims are strict JSON");
        let num = |k: &str| c[k].as_i64();
        assert_eq!(c["iss"], ISS);
        let aud_ok = c["aud"] == "api://agentgate"
            || c["aud"]
                .as_array()
                .is_some_and(|a| a.contains(&json!("api://agentgate")));
        assert!(aud_ok, "{c}");
        assert_eq!(c["cid"], "0oa-agent");
        assert!(num("exp").is_some_and(|e| e > NOW), "{c}");
        assert!(
            num("exp").unwrap() - num("iat").expect("iat bounds the lifetime") <= 3600,
            "{c}"
        );
        assert!(num("iat").unwrap() <= NOW + MAX_CLOCK_SKEW, "{c}");
        assert!(
            c.get("nbf")
                .is_none_or(|n| n.as_i64().is_some_and(|n| n <= NOW + MAX_CLOCK_SKEW)),
            "{c}"
        );
        assert_eq!(Some(p.subject.as_str()), c["sub"].as_str());
        assert_eq!(p.identity, "ci-agent");
    }
    assert!(
        accepted > 0,
        "some mutants (of values that do not matter) are still valid"
    );
}

/// The same for DPoP proofs: proofs signed by the client's key over mutants of their header and
/// claims are accepted only when typ, the key (by thumbprint, as the token binds it), htm, htu,
/// iat, ath and a fresh jti all pass.
#[tokio::test]
async fn signed_mutants_of_a_dpop_proof_are_accepted_only_when_every_check_passes() {
    use super::dpop::{PROOF_MAX_AGE, normalize_url, thumbprint};
    let (issuer, client, v) = dpop_setup(true);
    let token = bound_token(&issuer, &client);
    let ath = URL_SAFE_NO_PAD.encode(<sha2::Sha256 as sha2::Digest>::digest(token.as_bytes()));
    let header = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": client.public_jwk()}).to_string();
    let claims = json!({"jti": "j-0", "htm": "GET", "htu": URL, "iat": NOW, "ath": ath}).to_string();
    let mut candidates = Vec::new();
    crate::mutate::each_mutant(&[claims.as_bytes()], 1_500, |c| {
        candidates.push((header.as_bytes().to_vec(), c.to_vec()));
    });
    crate::mutate::each_mutant(&[header.as_bytes()], 1_000, |h| {
        // A fresh jti each, so a mutant is not refused merely as a replay.
        let fresh = claims.replace("j-0", &format!("h-{}", candidates.len()));
        candidates.push((h.to_vec(), fresh.into_bytes()));
    });
    let mut jtis = std::collections::HashSet::new();
    for (h, c) in &candidates {
        let proof = client.sign_raw(h, c);
        if with_proof(&v, "DPoP", &token, &[&proof]).await.is_err() {
            continue;
        }
        let header = strict_json::parse(h).expect("an accepted header is strict JSON");
        assert_eq!(header["typ"], "dpop+jwt", "{header}");
        assert_eq!(
            thumbprint(&header["jwk"]).unwrap(),
            client.thumbprint(),
            "{header}"
        );
        let c = strict_json::parse(c).expect("accepted claims are strict JSON");
        assert_eq!(c["htm"], "GET", "{c}");
        assert_eq!(
            normalize_url(c["htu"].as_str().unwrap()),
            normalize_url(URL),
            "{c}"
        );
        let iat = c["iat"].as_i64().expect("iat is an integer");
        assert!((NOW - iat).unsigned_abs() <= PROOF_MAX_AGE.as_secs(), "{c}");
        assert_eq!(c["ath"], ath.as_str(), "{c}");
        assert!(
            jtis.insert(c["jti"].as_str().unwrap().to_string()),
            "jti reused: {c}"
        );
    }
    assert!(!jtis.is_empty(), "some mutants (of the jti, say) are still valid");
}

/// A client that sends `Authorization: <token> <something>` has its token taken for the scheme:
/// the refusal (logged by the data paths) must not quote it.
#[tokio::test]
async fn an_unsupported_scheme_is_not_echoed() {
    let (key, v) = okta_setup();
    let token = key.sign(&claims());
    let err = v
        .verify(&presented(&format!("{token} extra"), &[]), NOW)
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::MalformedToken);
    let shown = format!("{err} {err:?} {}", err.www_authenticate());
    assert!(!shown.contains(&token[..20]), "{shown}");
}
