//! Token verification against a real OpenID Connect provider (`oidc-provider` on 127.0.0.1):
//! discovery, JWT access tokens with groups, DPoP binding, introspection of opaque tokens, key
//! rotation and an outage of the provider.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agentgate::config::{CompiledIdentity, SecretValue};
use agentgate::identity::dpop::{ReplayCache, RequestTarget};
use agentgate::identity::fetch::HttpFetcher;
use agentgate::identity::mint::SigningKey;
use agentgate::identity::{ErrorKind, KeyRegistry, Presented, Verifier, VerifierOptions};
use agentgate_e2e::oidc::OidcProvider;
use serde_json::{Value, json};

const URL: &str = "https://gateway.test/api/v1/users";

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

fn identity(name: &str, spec: Value, introspection_secret: Option<&str>) -> Arc<CompiledIdentity> {
    let spec: agentgate_crds::AgentIdentitySpec = serde_json::from_value(spec).expect("valid spec");
    Arc::new(CompiledIdentity {
        name: name.into(),
        max_token_lifetime: spec.max_token_lifetime.as_ref().map(|d| d.to_std().unwrap()),
        spec,
        static_jwks: None,
        introspection_secret: introspection_secret.map(|s| SecretValue::new(s.as_bytes().to_vec())),
    })
}

fn jwt_identity(issuer: &str, require_dpop: bool) -> Arc<CompiledIdentity> {
    identity(
        "ci-agent",
        json!({
            "issuer": issuer, "audiences": ["api://agentgate"], "match": {"claims": {"client_id": "ci-agent"}},
            "groups": {"claim": "groups"}, "accessTokenType": "at+jwt", "requireDPoP": require_dpop, "maxTokenLifetime": "15m"
        }),
        None,
    )
}

fn introspection_identity(
    issuer: &str,
    client_id: &str,
    method: &str,
    secret: &str,
) -> Arc<CompiledIdentity> {
    identity(
        "opaque-agent",
        json!({
            "issuer": issuer, "audiences": ["api://opaque"], "tokenType": "Introspection",
            "match": {"claims": {"client_id": "ci-agent"}},
            "introspection": {"clientId": client_id, "authMethod": method, "secretRef": {"name": "idp", "key": "secret"}}
        }),
        Some(secret),
    )
}

fn verifier(identities: Vec<Arc<CompiledIdentity>>, cooldown: Duration) -> Verifier {
    let options = VerifierOptions {
        refetch_cooldown: cooldown,
        cache_capacity: 1000,
    };
    Verifier::new(
        identities,
        &KeyRegistry::default(),
        &HttpFetcher::new().unwrap(),
        Arc::new(ReplayCache::default()),
        &options,
    )
    .unwrap()
}

async fn verify(
    v: &Verifier,
    authorization: &str,
    dpop: &[&str],
) -> Result<Arc<agentgate::identity::Principal>, agentgate::identity::IdentityError> {
    v.verify(
        &Presented {
            authorization: Some(authorization),
            dpop,
            target: RequestTarget::at("GET", URL),
            peer: None,
        },
        now(),
    )
    .await
}

fn access_token(answer: &Value) -> String {
    answer["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no access token in {answer}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn jwt_access_tokens_with_groups_via_discovery() {
    let idp = OidcProvider::start();
    let v = verifier(vec![jwt_identity(&idp.issuer, false)], Duration::from_secs(30));
    let token = access_token(&idp.token("ci-agent", "api://agentgate", None));
    let p = verify(&v, &format!("Bearer {token}"), &[]).await.unwrap();
    assert_eq!(
        (p.identity.as_str(), p.subject.as_str(), p.issuer.as_str()),
        ("ci-agent", "ci-agent", idp.issuer.as_str())
    );
    assert_eq!(p.groups, vec!["ai-agents".to_string(), "dba".to_string()]);
    // Another client of the same issuer is not this identity.
    let other = access_token(&idp.token("other-agent", "api://agentgate", None));
    assert_eq!(
        verify(&v, &format!("Bearer {other}"), &[])
            .await
            .unwrap_err()
            .kind,
        ErrorKind::NoMatchingIdentity
    );
    // A token for another audience of the same issuer is refused.
    let mut wrong = jwt_identity(&idp.issuer, false).spec.clone();
    wrong.audiences = vec!["api://elsewhere".into()];
    let v2 = verifier(
        vec![identity("ci-agent", serde_json::to_value(wrong).unwrap(), None)],
        Duration::from_secs(30),
    );
    assert_eq!(
        verify(&v2, &format!("Bearer {token}"), &[])
            .await
            .unwrap_err()
            .kind,
        ErrorKind::WrongAudience
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn dpop_bound_tokens_from_the_provider() {
    let idp = OidcProvider::start();
    let v = verifier(vec![jwt_identity(&idp.issuer, true)], Duration::from_secs(30));
    let client_key = SigningKey::ec("agent-key").unwrap();
    let proof = client_key.dpop_token_request_proof(&idp.token_endpoint(), now(), "token-req-1");
    let answer = idp.token("ci-agent", "api://agentgate", Some(&proof));
    assert_eq!(answer["token_type"], "DPoP", "{answer}");
    let token = access_token(&answer);
    let request_proof = client_key.dpop_proof("GET", URL, &token, now(), "req-1");
    let p = verify(&v, &format!("DPoP {token}"), &[&request_proof])
        .await
        .unwrap();
    assert_eq!(p.binding.as_deref(), Some(client_key.thumbprint().as_str()));
    // The same token copied out of a log, without the key: as Bearer, or with a proof by another key.
    assert_eq!(
        verify(&v, &format!("Bearer {token}"), &[])
            .await
            .unwrap_err()
            .kind,
        ErrorKind::BindingRequired
    );
    let thief = SigningKey::ec("thief").unwrap();
    let stolen = thief.dpop_proof("GET", URL, &token, now(), "req-2");
    let err = verify(&v, &format!("DPoP {token}"), &[&stolen])
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidProof);
    assert!(err.www_authenticate().starts_with("DPoP "));
    // Replay of a used proof.
    assert_eq!(
        verify(&v, &format!("DPoP {token}"), &[&request_proof])
            .await
            .unwrap_err()
            .kind,
        ErrorKind::InvalidProof
    );
    // An unbound token where the identity requires DPoP.
    let bearer = access_token(&idp.token("ci-agent", "api://agentgate", None));
    assert_eq!(
        verify(&v, &format!("Bearer {bearer}"), &[])
            .await
            .unwrap_err()
            .kind,
        ErrorKind::BindingRequired
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn opaque_tokens_are_introspected() {
    let idp = OidcProvider::start();
    let identity = introspection_identity(
        &idp.issuer,
        "agentgate",
        "client_secret_basic",
        "agentgate-introspection-secret",
    );
    let v = verifier(vec![identity], Duration::from_secs(30));
    let token = access_token(&idp.token("ci-agent", "api://opaque", None));
    assert!(!token.contains('.'), "expected an opaque token: {token}");
    let p = verify(&v, &format!("Bearer {token}"), &[]).await.unwrap();
    assert_eq!(
        (p.identity.as_str(), p.subject.as_str()),
        ("opaque-agent", "ci-agent")
    );
    assert_eq!(
        verify(&v, "Bearer not-a-real-token", &[]).await.unwrap_err().kind,
        ErrorKind::TokenInactive
    );
    // Both answers are kept a while: with the provider gone, the live token still verifies and
    // the dead one is still refused as inactive, without a call (a replayed dead token must not
    // make the gateway call the provider each time).
    let mut idp = idp;
    idp.stop();
    assert!(verify(&v, &format!("Bearer {token}"), &[]).await.is_ok());
    assert_eq!(
        verify(&v, "Bearer not-a-real-token", &[]).await.unwrap_err().kind,
        ErrorKind::TokenInactive
    );
    assert_eq!(
        verify(&v, "Bearer another-unknown-token", &[])
            .await
            .unwrap_err()
            .kind,
        ErrorKind::ProviderUnavailable
    );
}

/// With two introspecting issuers, an opaque token (which names none) goes to neither: each would
/// learn the other's tokens.
#[tokio::test(flavor = "multi_thread")]
async fn opaque_tokens_are_not_sent_to_several_issuers() {
    let (one, two) = (OidcProvider::start(), OidcProvider::start());
    let spec = |issuer: &str| {
        json!({
            "issuer": issuer, "audiences": ["api://opaque"], "tokenType": "Introspection",
            "match": {"claims": {"client_id": "ci-agent"}},
            "introspection": {"clientId": "agentgate", "authMethod": "client_secret_basic",
                              "secretRef": {"name": "idp", "key": "secret"}}
        })
    };
    let v = verifier(
        vec![
            identity("one", spec(&one.issuer), Some("agentgate-introspection-secret")),
            identity("two", spec(&two.issuer), Some("agentgate-introspection-secret")),
        ],
        Duration::from_secs(30),
    );
    let token = access_token(&one.token("ci-agent", "api://opaque", None));
    let e = verify(&v, &format!("Bearer {token}"), &[]).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::UnknownIssuer, "{e}");
    assert!(e.to_string().contains("several issuers introspect"), "{e}");
}

/// A revoked token stops working once the introspection answer's `cacheTtl` has passed: no
/// other cache keeps it alive until its expiry.
#[tokio::test(flavor = "multi_thread")]
async fn revoked_opaque_tokens_stop_working_within_the_cache_ttl() {
    let idp = OidcProvider::start();
    let identity = identity(
        "opaque-agent",
        json!({
            "issuer": idp.issuer, "audiences": ["api://opaque"], "tokenType": "Introspection",
            "match": {"claims": {"client_id": "ci-agent"}},
            "introspection": {"clientId": "agentgate", "authMethod": "client_secret_basic",
                              "secretRef": {"name": "idp", "key": "secret"}, "cacheTtl": "1s"}
        }),
        Some("agentgate-introspection-secret"),
    );
    let v = verifier(vec![identity], Duration::from_secs(30));
    let token = access_token(&idp.token("ci-agent", "api://opaque", None));
    let auth = format!("Bearer {token}");
    assert!(verify(&v, &auth, &[]).await.is_ok());
    assert!(verify(&v, &auth, &[]).await.is_ok());
    idp.revoke("ci-agent", &token);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        verify(&v, &auth, &[]).await.unwrap_err().kind,
        ErrorKind::TokenInactive
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn introspection_with_private_key_jwt_client_authentication() {
    let gateway_key = SigningKey::ec("gateway-client").unwrap();
    let idp = OidcProvider::start_with_client_keys(Some(&SigningKey::jwks(&[&gateway_key])));
    let identity = introspection_identity(
        &idp.issuer,
        "agentgate-pkjwt",
        "private_key_jwt",
        gateway_key.private_pem(),
    );
    let v = verifier(vec![identity], Duration::from_secs(30));
    let token = access_token(&idp.token("ci-agent", "api://opaque", None));
    assert_eq!(
        verify(&v, &format!("Bearer {token}"), &[])
            .await
            .unwrap()
            .identity,
        "opaque-agent"
    );
    // A gateway holding the wrong private key is not let in by the provider: fail closed.
    let wrong_key = SigningKey::ec("wrong").unwrap();
    let identity = introspection_identity(
        &idp.issuer,
        "agentgate-pkjwt",
        "private_key_jwt",
        wrong_key.private_pem(),
    );
    let v2 = verifier(vec![identity], Duration::from_secs(30));
    let token2 = access_token(&idp.token("ci-agent", "api://opaque", None));
    assert_eq!(
        verify(&v2, &format!("Bearer {token2}"), &[])
            .await
            .unwrap_err()
            .kind,
        ErrorKind::ProviderUnavailable
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn key_rotation_and_provider_outage() {
    let mut idp = OidcProvider::start();
    let v = verifier(vec![jwt_identity(&idp.issuer, false)], Duration::from_millis(200));
    let first = access_token(&idp.token("ci-agent", "api://agentgate", None));
    let second = access_token(&idp.token("ci-agent", "api://agentgate", None));
    assert!(verify(&v, &format!("Bearer {first}"), &[]).await.is_ok());

    // Outage: keys fetched before keep working for tokens not seen yet.
    idp.stop();
    assert!(verify(&v, &format!("Bearer {second}"), &[]).await.is_ok());

    // Back with a rotated key: the unknown kid triggers one refetch, and new tokens verify.
    idp.restart(true);
    tokio::time::sleep(Duration::from_millis(250)).await;
    let rotated = access_token(&idp.token("ci-agent", "api://agentgate", None));
    assert_ne!(kid(&rotated), kid(&first));
    assert!(verify(&v, &format!("Bearer {rotated}"), &[]).await.is_ok());
}

fn kid(token: &str) -> String {
    use base64::Engine;
    let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.split('.').next().unwrap())
        .unwrap();
    serde_json::from_slice::<Value>(&header).unwrap()["kid"]
        .as_str()
        .unwrap()
        .to_string()
}
