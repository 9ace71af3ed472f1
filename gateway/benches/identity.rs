//! Token verification costs: RS256 and ES256 with cached keys (verification cache off), a repeated
//! token served by the verification cache, and what one token of an unknown-`kid` flood costs once
//! the refetch cooldown holds (no fetch, an immediate refusal).
//!
//! Run: `cargo bench -p agentgate --bench identity`.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use agentgate::config::{CompiledIdentity, SecretValue};
use agentgate::identity::dpop::{ReplayCache, RequestTarget};
use agentgate::identity::fetch::HttpFetcher;
use agentgate::identity::mint::SigningKey;
use agentgate::identity::{KeyRegistry, Presented, Verifier, VerifierOptions};
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;

const NOW: i64 = 1_800_000_000;
const ISS: &str = "https://idp.example/oauth2/default";

fn verifier(key: &SigningKey, cache_capacity: usize) -> Verifier {
    let spec = serde_json::from_value(json!({
        "provider": "Okta", "issuer": ISS, "audiences": ["api://agentgate"], "match": {"claims": {"cid": "agent"}},
        "algorithms": ["RS256", "ES256"], "keys": {"secretRef": {"name": "k", "key": "jwks"}}
    }))
    .unwrap();
    let identity = Arc::new(CompiledIdentity {
        name: "agent".into(),
        spec,
        max_token_lifetime: None,
        static_jwks: Some(SecretValue::new(
            SigningKey::jwks(&[key]).to_string().into_bytes(),
        )),
        introspection_secret: None,
    });
    let options = VerifierOptions {
        refetch_cooldown: Duration::from_secs(3600),
        cache_capacity,
    };
    Verifier::new(
        [identity],
        &KeyRegistry::default(),
        &HttpFetcher::new().unwrap(),
        Arc::new(ReplayCache::default()),
        &options,
    )
    .unwrap()
}

fn token(key: &SigningKey) -> String {
    key.sign(&json!({
        "iss": ISS, "sub": "agent", "aud": "api://agentgate", "cid": "agent", "scp": ["orders.read"],
        "iat": NOW - 10, "exp": NOW + 600, "jti": "bench"
    }))
}

/// Verification with static keys never waits on I/O, so one poll completes it; polling directly
/// keeps executor overhead out of the figures.
fn run<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("verification with static keys does not wait"),
    }
}

fn bench(c: &mut Criterion) {
    let target = RequestTarget::at("GET", "https://gw.example/api/v1/users");
    for (name, key) in [
        ("rs256", SigningKey::rsa("k1").unwrap()),
        ("es256", SigningKey::ec("k1").unwrap()),
    ] {
        let v = verifier(&key, 0);
        let auth = format!("Bearer {}", token(&key));
        let presented = Presented {
            authorization: Some(&auth),
            dpop: &[],
            target: target.clone(),
            peer: None,
        };
        assert!(run(v.verify(&presented, NOW)).is_ok());
        c.bench_function(&format!("verify/{name}/cached-keys"), |b| {
            b.iter(|| run(v.verify(&presented, NOW)).unwrap())
        });
    }

    let key = SigningKey::rsa("k1").unwrap();
    let v = verifier(&key, 10_000);
    let auth = format!("Bearer {}", token(&key));
    let presented = Presented {
        authorization: Some(&auth),
        dpop: &[],
        target: target.clone(),
        peer: None,
    };
    run(v.verify(&presented, NOW)).unwrap();
    c.bench_function("verify/repeated-token/verification-cache", |b| {
        b.iter(|| run(v.verify(&presented, NOW)).unwrap())
    });

    let flood = format!(
        "Bearer {}",
        key.sign_with_header(
            json!({"typ": "at+jwt", "kid": "random-kid-4711"}),
            &json!({"iss": ISS, "sub": "x", "aud": "api://agentgate", "exp": NOW + 600})
        )
    );
    let presented = Presented {
        authorization: Some(&flood),
        dpop: &[],
        target,
        peer: None,
    };
    c.bench_function("verify/unknown-kid/refused", |b| {
        b.iter(|| run(v.verify(&presented, NOW)).unwrap_err())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
