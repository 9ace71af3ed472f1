//! Masking throughput: an Okta-style users list (~1 MB) with all nine detectors and two field
//! rules, the same shape with nothing to mask, one log line through the detectors, and the
//! response credential scrub over the list.
//!
//! Run: `cargo bench -p agentgate --bench masking -- --warm-up-time 1 --measurement-time 3`.

use std::fmt::Write;
use std::hint::black_box;

use agentgate::masking::secret::SecretFinder;
use agentgate::masking::{HashKey, MaskingPlan};
use agentgate_crds::policy::MaskingRule;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;

const TARGET_BYTES: usize = 1 << 20;

const FIRST: [&str; 8] = [
    "Isabella",
    "Mateo",
    "Aiko",
    "Noah",
    "Fatima",
    "Liam",
    "Chloé",
    "Oluwaseun",
];
const LAST: [&str; 8] = [
    "Hernandez",
    "Rossi",
    "Tanaka",
    "Schmidt",
    "Khan",
    "O'Brien",
    "Dubois",
    "Adeyemi",
];
const DEPARTMENTS: [&str; 5] = ["Engineering", "Finance", "Sales", "Support", "People Operations"];

fn plan() -> MaskingPlan {
    let rules: Vec<MaskingRule> = serde_json::from_value(json!([
        {"detectors": ["Email", "Phone", "CreditCard", "IBAN", "AwsAccessKey", "GcpApiKey", "OktaApiToken", "JWT", "PrivateKey"]},
        {"jsonFields": ["$[*].profile.mobilePhone"], "strategy": "Partial"},
        {"jsonFields": ["$..credentials"]}
    ]))
    .unwrap();
    MaskingPlan::compile(&rules.iter().collect::<Vec<_>>(), HashKey::from_bytes([7; 32])).unwrap()
}

/// A users list as Okta's `/api/v1/users` returns it. With `hits` off, the same shape carries no
/// personal data and no field a rule selects.
fn users(hits: bool) -> Vec<u8> {
    let mut doc = String::from("[");
    let mut i = 0usize;
    while doc.len() < TARGET_BYTES {
        let (first, last) = (FIRST[i % 8], LAST[(i / 8) % 8]);
        let id = format!("00u{:017x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 4);
        let login = format!(
            "{}.{}{i}",
            first.to_lowercase(),
            last.to_lowercase().replace('\'', "")
        );
        let (email, phone, secrets) = if hits {
            (
                format!("\"{login}@example.com\""),
                format!("\"+1 415 555 {:04}\"", i % 10_000),
                "credentials",
            )
        } else {
            ("null".to_string(), "null".to_string(), "factors")
        };
        let login = if hits {
            format!("{login}@example.com")
        } else {
            login
        };
        let phone_field = if hits { "mobilePhone" } else { "mobileDevice" };
        write!(
            doc,
            r#"{}{{"id":"{id}","status":"ACTIVE","created":"2023-04-12T18:22:31.000Z","activated":"2023-04-12T18:25:02.000Z","statusChanged":"2024-09-30T07:01:44.000Z","lastLogin":"2026-01-20T09:14:55.000Z","lastUpdated":"2025-11-03T16:40:12.000Z","passwordChanged":"2025-06-17T11:05:39.000Z","type":{{"id":"oty1b2c3d4e5f6g7h8i9"}},"profile":{{"firstName":"{first}","lastName":"{last}","{phone_field}":{phone},"secondEmail":null,"login":"{login}","email":{email},"department":"{}","title":"Senior Software Engineer","employeeNumber":"{}","city":"San Francisco","notes":"Prefers chat over calls. Working on the platform migration; escalations go to the on-call rotation first, then to the team lead."}},"{secrets}":{{"password":{{}},"provider":{{"type":"OKTA","name":"OKTA"}}}},"_links":{{"self":{{"href":"https://example.okta.com/api/v1/users/{id}"}}}}}}"#,
            if i == 0 { "" } else { "," },
            DEPARTMENTS[i % 5],
            10_000 + i,
        )
        .unwrap();
        i += 1;
    }
    doc.push(']');
    doc.into_bytes()
}

fn bench(c: &mut Criterion) {
    let plan = plan();
    let mut group = c.benchmark_group("mask_json");
    for (name, doc) in [
        ("users_1mb_all_detectors", users(true)),
        ("no_hits_1mb", users(false)),
    ] {
        let mut out = Vec::with_capacity(doc.len() * 2);
        let report = plan.mask_json(&doc, &mut out).unwrap();
        assert!(serde_json::from_slice::<serde_json::Value>(&out).is_ok());
        eprintln!("{name}: {} bytes, {report:?}", doc.len());
        group.throughput(Throughput::Bytes(doc.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                black_box(plan.mask_json(black_box(&doc), &mut out).unwrap())
            })
        });
    }
    group.finish();

    // The credential scrub reads every response of a Connection with a credential, masked or
    // not: a Basic secret and its token, over the list with nothing to find.
    let finders = SecretFinder::new(&[
        b"s3cr3t-PASSWORD+/value",
        b"c3ZjLWFnZW50Z2F0ZTpzM2NyM3QtUEFTU1dPUkQrL3ZhbHVl",
    ])
    .unwrap();
    let mut group = c.benchmark_group("credential_scrub");
    let doc = users(false);
    group.throughput(Throughput::Bytes(doc.len() as u64));
    let mut buf = doc.clone();
    group.bench_function("no_hits_1mb", |b| {
        b.iter(|| {
            buf.copy_from_slice(&doc);
            black_box(finders.overwrite(black_box(&mut buf)))
        })
    });
    group.finish();

    let line = "2026-01-20T09:14:55.123Z INFO request_id=7f3a9c2e-1b4d-4e8f-9a6b-2c5d8e1f3a7b \
        user=isabella.hernandez@example.com ip=10.20.30.40 path=/api/v1/users/00u1a2b3c4d5e6f7g8h9 \
        status=200 latency_ms=42 auth=\"Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIwMHUxIn0.c2lnbmF0dXJl\"";
    let mut group = c.benchmark_group("mask_text");
    group.throughput(Throughput::Bytes(line.len() as u64));
    group.bench_function("log_line", |b| {
        b.iter(|| black_box(plan.mask_text(black_box(line))))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
