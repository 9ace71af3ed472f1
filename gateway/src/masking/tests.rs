//! Plan-level tests: compiling rules, merging, columns, Kubernetes Secrets, free text, and a
//! property-style loop over generated documents.

use agentgate_crds::policy::MaskingStrategy::{Hash, Partial, Redact};
use serde_json::{Value, json};

use super::*;

fn rules(value: Value) -> Vec<MaskingRule> {
    serde_json::from_value(value).unwrap()
}

fn compile(value: Value) -> Result<MaskingPlan, MaskingConfigError> {
    let rules = rules(value);
    MaskingPlan::compile(&rules.iter().collect::<Vec<_>>(), HashKey::from_bytes([3; 32]))
}

fn mask(plan: &MaskingPlan, input: &str) -> Value {
    let mut out = Vec::new();
    plan.mask_json(input.as_bytes(), &mut out).unwrap();
    serde_json::from_slice(&out).unwrap()
}

const ALL: [&str; 9] = [
    "Email",
    "Phone",
    "CreditCard",
    "IBAN",
    "AwsAccessKey",
    "GcpApiKey",
    "OktaApiToken",
    "JWT",
    "PrivateKey",
];

#[test]
fn compile_errors_name_the_rule_and_field() {
    let err =
        compile(json!([{"detectors": ["Email"]}, {"jsonFields": ["$.ok", "$.items[?(@.x)]"]}])).unwrap_err();
    assert_eq!(err.field, "masking[1].jsonFields[1]");
    let text = err.to_string();
    assert!(
        text.starts_with("masking[1].jsonFields[1]: \"$.items[?(@.x)]\": filter"),
        "{text}"
    );
    let err = compile(json!([{"columns": ["public.users"]}])).unwrap_err();
    assert_eq!(err.field, "masking[0].columns[0]");
    assert!(compile(json!([{"columns": ["a..b"]}])).is_err());
    // The rules of deploy/examples/40-policies.yaml.
    let examples = compile(json!([
        {"columns": ["public.payments.card_number"], "strategy": "Partial"},
        {"detectors": ["CreditCard", "Email"]},
        {"jsonFields": ["$..profile.email", "$..profile.mobilePhone"]},
        {"detectors": ["Email", "OktaApiToken", "JWT"]}
    ]));
    assert!(examples.is_ok());
    assert!(compile(json!([{"columns": ["a.b.c.d"]}])).is_err());
}

/// A rule matching no column of the database is named, as written, so a misspelling is seen.
#[test]
fn column_rules_matching_nothing_are_named() {
    let plan = compile(json!([
        {"columns": ["public.users.email", "public.user.ssn", "billing.*.card_*", "*.*.emial"]}
    ]))
    .unwrap();
    let columns = [
        ("public", "users", "email"),
        ("public", "users", "ssn"),
        ("billing", "invoices", "card_number"),
    ];
    assert_eq!(
        plan.unmatched_column_rules(columns),
        vec!["*.*.emial".to_string(), "public.user.ssn".to_string()]
    );
    assert_eq!(plan.unmatched_column_rules([]).len(), 4);
    assert!(
        compile(json!([{"detectors": ["Email"]}]))
            .unwrap()
            .unmatched_column_rules([])
            .is_empty()
    );
}

#[test]
fn columns_match_by_glob_and_the_strongest_wins() {
    let plan = compile(json!([
        {"columns": ["public.users.email", "billing.*.card_*"], "strategy": "Partial"},
        {"columns": ["*.*.ssn", "public.users.e*"], "strategy": "Hash"}
    ]))
    .unwrap();
    assert_eq!(plan.column_strategy("public", "users", "email"), Some(Hash));
    assert_eq!(plan.column_strategy("public", "users", "name"), None);
    assert_eq!(
        plan.column_strategy("billing", "invoices", "card_number"),
        Some(Partial)
    );
    assert_eq!(plan.column_strategy("billing", "invoices", "cardholder"), None);
    assert_eq!(plan.column_strategy("hr", "people", "ssn"), Some(Hash));
    assert!(!plan.is_empty());
}

/// An array sent as an object keyed by its indexes (as PHP encodes sparse arrays) keeps the
/// masking its rule names, and so does a rule that spells an index as a name.
#[test]
fn indexes_and_digit_names_select_each_other() {
    let plan = compile(json!([{"jsonFields": ["$.items[1].ssn", "$.rows.0.pin"]}])).unwrap();
    assert_eq!(
        mask(
            &plan,
            r#"{"items":{"0":{"ssn":"a"},"1":{"ssn":"b"}},"rows":[{"pin":"1234"}]}"#
        ),
        json!({"items":{"0":{"ssn":"a"},"1":{"ssn":REDACTED}},"rows":[{"pin":REDACTED}]})
    );
}

#[test]
fn strategies_apply_to_whole_values() {
    let plan = MaskingPlan::empty(HashKey::from_bytes([3; 32]));
    assert_eq!(plan.mask_value(Redact, "john@example.com"), REDACTED);
    assert_eq!(plan.mask_value(Partial, "john@example.com"), "j***@example.com");
    assert_eq!(
        plan.mask_value(Partial, "4111 1111 1111 1111"),
        "**** **** **** 1111"
    );
    assert_eq!(plan.mask_value(Partial, "secret"), "******");
    let hash = plan.mask_value(Hash, "john@example.com");
    assert_eq!(hash, plan.mask_value(Hash, "john@example.com"));
    let other = MaskingPlan::empty(HashKey::from_bytes([4; 32]));
    assert_ne!(hash, other.mask_value(Hash, "john@example.com"));
}

#[test]
fn the_strongest_strategy_wins_across_rules() {
    let plan = compile(json!([
        {"detectors": ["Email"], "jsonFields": ["$..id"], "strategy": "Partial", "onUnparseable": "Allow"},
        {"detectors": ["Email"], "jsonFields": ["$.user.id"], "strategy": "Hash", "onUnparseable": "Allow"}
    ]))
    .unwrap();
    let out = mask(
        &plan,
        r#"{"user":{"id":"0123456789abcdef"},"other":{"id":"0123456789abcdef"},"e":"a@b.io"}"#,
    );
    assert_eq!(out["user"]["id"], plan.mask_value(Hash, "0123456789abcdef"));
    assert_eq!(out["other"]["id"], "************cdef");
    assert_eq!(out["e"], plan.mask_value(Hash, "a@b.io"));
    assert_eq!(plan.on_unparseable(), UnparseablePolicy::Allow);
}

#[test]
fn merge_empty_and_unparseable_policy() {
    let key = HashKey::from_bytes([3; 32]);
    let empty = MaskingPlan::empty(key.clone());
    assert!(empty.is_empty());
    assert_eq!(empty.on_unparseable(), UnparseablePolicy::Allow);
    assert!(compile(json!([])).unwrap().is_empty());

    let allow =
        compile(json!([{"detectors": ["Email"], "strategy": "Partial", "onUnparseable": "Allow"}])).unwrap();
    let refuse =
        compile(json!([{"jsonFields": ["$.s"], "detectors": ["Email"], "columns": ["a.b.c"]}])).unwrap();
    assert_eq!(allow.on_unparseable(), UnparseablePolicy::Allow);
    assert_eq!(refuse.on_unparseable(), UnparseablePolicy::Refuse);
    let merged = empty.merge(&allow).merge(&refuse);
    assert!(!merged.is_empty());
    assert_eq!(merged.on_unparseable(), UnparseablePolicy::Refuse);
    assert_eq!(merged.column_strategy("a", "b", "c"), Some(Redact));
    let out = mask(&merged, r#"{"s":1,"e":"mail a@b.io"}"#);
    assert_eq!(out, json!({"s": "[REDACTED]", "e": "mail [REDACTED:EMAIL]"}));
    // Plans are shared between tasks.
    fn shareable<T: Send + Sync + Clone>(_: &T) {}
    shareable(&merged);
}

#[test]
fn kubernetes_secrets_are_redacted() {
    let plan = MaskingPlan::empty(HashKey::from_bytes([3; 32])).with_kubernetes_secrets();
    assert!(!plan.is_empty());
    assert_eq!(plan.on_unparseable(), UnparseablePolicy::Refuse);

    let secret = json!({
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": "db", "namespace": "prod", "annotations": {
            "kubectl.kubernetes.io/last-applied-configuration": "{\"data\":{\"password\":\"aHVudGVyMg==\"}}",
            "kapp.k14s.io/original": "{\"kind\":\"Secret\",\"data\":{\"password\":\"aHVudGVyMg==\"}}",
            "objectset.rio.cattle.io/applied": "H4sIAAAAAAAA/6pWSkksSVSyUlAqSs1JTC4tSk1RqgUAAAD//w==",
            "team": "payments"}},
        "data": {"password": "aHVudGVyMg=="},
        "stringData": {"user": "admin"}
    });
    let out = mask(&plan, &secret.to_string());
    // Each value, not the map: the object keeps its shape, and `REDACTED` is valid base64, so
    // typed clients (kubectl describe, client-go) still decode it.
    assert_eq!(out["data"], json!({"password": "REDACTED"}));
    assert_eq!(out["stringData"], json!({"user": "REDACTED"}));
    use base64::Engine;
    assert!(
        base64::engine::general_purpose::STANDARD
            .decode(SECRET_REDACTED)
            .is_ok()
    );
    assert_eq!(
        out["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"],
        "[REDACTED]"
    );
    for key in ["kapp.k14s.io/original", "objectset.rio.cattle.io/applied"] {
        assert_eq!(out["metadata"]["annotations"][key], "[REDACTED]", "{key}");
    }
    assert_eq!(out["metadata"]["annotations"]["team"], "payments");
    assert_eq!(out["metadata"]["name"], "db");

    // A policy's Hash of a container above the data would be a comparable hash of its values
    // (to a ConfigMap of guesses): redacted instead, where Secrets' values are masked.
    let hashing = compile(json!([{"jsonFields": ["$..data", "$.metadata"], "strategy": "Hash"}])).unwrap();
    let out = mask(&plan.merge(&hashing), &secret.to_string());
    assert_eq!(out["data"], "[REDACTED]");
    assert_eq!(out["metadata"], "[REDACTED]");
    let out = mask(&hashing, &json!({"data": {"k": "v"}}).to_string());
    assert!(
        out["data"].as_str().is_some_and(|h| h.starts_with(HASH_PREFIX)),
        "elsewhere a container still hashes: {out}"
    );

    let list = json!({"kind": "SecretList", "items": [secret.clone(), {"kind": "Secret", "data": {"token": "eA=="}}]});
    let text = list.to_string();
    let out = mask(&plan, &text);
    assert_eq!(out["items"][0]["data"]["password"], SECRET_REDACTED);
    assert_eq!(out["items"][1]["data"]["token"], SECRET_REDACTED);
    assert!(!serde_json::to_string(&out).unwrap().contains("aHVudGVyMg"));

    let watch = format!(
        "{}\n{}\n",
        json!({"type": "ADDED", "object": secret}),
        json!({"type": "MODIFIED", "object": {"kind": "Secret", "data": {"k": "dg=="}}})
    );
    let mut out = Vec::new();
    let report = plan.mask_json(watch.as_bytes(), &mut out).unwrap();
    let out = String::from_utf8(out).unwrap();
    assert_eq!(out.lines().count(), 2);
    assert!(!out.contains("aHVudGVyMg") && !out.contains("dg=="), "{out}");
    // data, stringData, three annotations; then data.
    assert_eq!(report.fields, 6);
}

#[test]
fn mask_text_masks_a_log_line() {
    let plan = compile(json!([{"detectors": ALL}, {"detectors": ["Email"], "strategy": "Partial"}])).unwrap();
    let line = "2026-01-20T09:14:55Z INFO user=john@example.com card=4111-1111-1111-1111 \
        key=AKIAIOSFODNN7EXAMPLE id=123e4567-e89b-12d3-a456-426614174000 status=200";
    let (masked, report) = plan.mask_text(line);
    assert_eq!(
        masked,
        "2026-01-20T09:14:55Z INFO user=[REDACTED:EMAIL] card=[REDACTED:CREDIT_CARD] \
        key=[REDACTED:AWS_ACCESS_KEY] id=123e4567-e89b-12d3-a456-426614174000 status=200"
    );
    assert_eq!(report.detections, 3);
    assert_eq!(report.detected(Detector::CreditCard), 1);
    let plain = "GET /healthz 200 3ms";
    assert!(matches!(plan.mask_text(plain), (Cow::Borrowed(s), r) if s == plain && r.is_empty()));
    // Without detectors nothing is masked.
    let fields_only = compile(json!([{"jsonFields": ["$.a"]}])).unwrap();
    assert!(matches!(fields_only.mask_text(line).0, Cow::Borrowed(_)));
}

/// Queries and form bodies are scanned as decoded too: escapes and `+` hide values from a
/// scan of their bytes.
#[test]
fn url_encoded_values_are_found_as_decoded() {
    let plan = compile(json!([{"detectors": ALL}])).unwrap();
    for (query, hidden) in [
        ("card=4111+1111+1111+1111&x=1", "1111+1111"),
        ("card=4111%201111%201111%201111", "1111%201111"),
        ("q=card%3A4111111111111111", "4111111111111111"),
        ("note=x%0A4111111111111111", "4111111111111111"),
        ("phone=%2B14155550132", "4155550132"),
        ("iban=DE89%203704%200044%200532%200130%2000", "3704%200044"),
        ("e=alice%2540example.com", "example.com"),
        ("n=%204111111111111111", "4111111111111111"),
    ] {
        let (masked, report) = plan.mask_escaped_text(query, true);
        assert!(
            !masked.contains(hidden) && report.detections == 1,
            "{query}: {masked}"
        );
        assert_eq!(
            masked.split('=').next(),
            query.split('=').next(),
            "{query}: {masked}"
        );
    }
    assert_eq!(
        plan.mask_escaped_text("card=4111+1111+1111+1111&x=1", true).0,
        "card=[REDACTED:CREDIT_CARD]&x=1"
    );
    // A value found in both views is masked once; the raw view's finds stay found.
    let (masked, report) = plan.mask_escaped_text("a=bob%40example.org&b=carol@example.org%20x", true);
    assert_eq!(masked, "a=[REDACTED:EMAIL]&b=[REDACTED:EMAIL]%20x");
    assert_eq!(report.detections, 2);
    // In a path `+` is itself; nothing found leaves the text borrowed.
    let (masked, _) = plan.mask_escaped_text("/v1/a+b/100%25", false);
    assert!(matches!(masked, Cow::Borrowed("/v1/a+b/100%25")));
    // Equal values hash equal whatever their escaping.
    let hashed = compile(json!([{"detectors": ["CreditCard"], "strategy": "Hash"}])).unwrap();
    assert_eq!(
        hashed.mask_escaped_text("c=4111%201111%201111%201111", true).0,
        hashed.mask_text("c=4111 1111 1111 1111").0
    );
}

/// JSON that the masker could not parse is scanned with its escapes decoded.
#[test]
fn json_escapes_do_not_hide_values_from_text_scans() {
    let plan = compile(json!([{"detectors": ALL}])).unwrap();
    let text = r#"{"note":"card\n4111111111111111","e":"a\u0040b.com","bad":"\ud800"}"#;
    let (masked, report) = plan.mask_escaped_text(text, false);
    assert_eq!(
        masked,
        r#"{"note":"card\n[REDACTED:CREDIT_CARD]","e":"[REDACTED:EMAIL]","bad":"\ud800"}"#
    );
    assert_eq!(report.detections, 2);
    // Escapes that decode to several bytes, before and inside a find, map back to whole escapes.
    // (The scan of the bytes as written reads `%C3%A9` after an address as more of its domain.)
    let (masked, _) = plan.mask_escaped_text(
        r#""\u00e9\u00e9 bob\u0040x.io \u00e9" %C3%A9 carol%40x.io%C3%A9"#,
        false,
    );
    assert_eq!(
        masked,
        r#""\u00e9\u00e9 [REDACTED:EMAIL] \u00e9" %C3%A9 [REDACTED:EMAIL]"#
    );
    // A `%` or `\` that starts no escape is text.
    let (masked, _) = plan.mask_escaped_text(r"100% \q \u12 dave@x.io", false);
    assert_eq!(masked, r"100% \q \u12 [REDACTED:EMAIL]");
}

/// A cut body is recorded up to what could be judged whole.
#[test]
fn cut_prefixes_leave_out_the_value_the_cut_went_through() {
    let plan = compile(json!([{"detectors": ALL}, {"jsonFields": ["$.items[*].secret"]}])).unwrap();
    let prefix = |text: &str| {
        let mut out = Vec::new();
        let (_, covered) = plan.mask_json_prefix(text.as_bytes(), &mut out).unwrap();
        (String::from_utf8(out).unwrap(), covered)
    };
    // A number that ran to the cut may go on: 15 digits of a card and Luhn give the 16th.
    assert_eq!(
        prefix(r#"{"items":[{"n":1},{"n":411111111111111"#),
        (r#"{"items":[{"n":1},{"#.to_string(), 19)
    );
    // Whole strings are masked by detectors and field rules; a selected value still open is
    // not written at all.
    let (out, _) = prefix(r#"{"e":"a\u0040b.com","card":"x\n4111111111111111","items":[{"secret":{"k":"v""#);
    assert_eq!(
        out,
        r#"{"e":"[REDACTED:EMAIL]","card":"x\n[REDACTED:CREDIT_CARD]","items":[{"#
    );
    let (out, _) = prefix(r#"{"items":[{"secret":{"k":"v"}},{"secret":"#);
    assert_eq!(out, r#"{"items":[{"secret":"[REDACTED]"},{"#);
    // A string cut open is left out whole, and so is a character the cut split.
    let (out, _) = prefix("{\"a\":\"alice@example.co");
    assert_eq!(out, "{");
    let cut = "[\"é\",\"é".as_bytes();
    let mut out = Vec::new();
    plan.mask_json_prefix(&cut[..cut.len() - 1], &mut out).unwrap();
    assert_eq!(String::from_utf8(out).unwrap(), "[\"é\"");
    // Text that starts as JSON does but fails before its end is no cut JSON: the caller reads
    // it as text.
    let mut out = Vec::new();
    assert!(
        plan.mask_json_prefix(b"[INFO] card 4111 1111 1111 1111 and much more text", &mut out)
            .is_err()
    );
    assert!(
        plan.mask_json_prefix(b"[2025-01-01T00:00:00Z] started, and more text follows", &mut out)
            .is_err()
    );
    assert!(
        plan.mask_json_prefix(b"{\"a\":\"\xe9\"} and more text follows here", &mut out)
            .is_err()
    );
    assert!(out.is_empty());
    // Text: the word the cut went through is left out.
    let (masked, _) = plan.mask_text_prefix("id,card\n1,4111 1111 1111 111", false);
    assert_eq!(masked, "id,card\n1,");
    let (masked, _) = plan.mask_text_prefix("to=alice.smith@example", true);
    assert_eq!(masked, "to=");
}

#[test]
fn every_detector_is_reported_by_name() {
    let plan = compile(json!([{"detectors": ALL}])).unwrap();
    let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
    let doc = json!({
        "email": "john@example.com", "phone": "+44 20 7946 0958", "card": "4111 1111 1111 1111",
        "iban": "DE89 3704 0044 0532 0130 00", "aws": "AKIAIOSFODNN7EXAMPLE",
        "gcp": "AIzaSyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQe", "okta": "00QCjAl4MlV-WPXM-ABCDEFGHIJKLMNOPQRSTUVWXY",
        "jwt": jwt, "pem": "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk=\n-----END OPENSSH PRIVATE KEY-----"
    });
    let mut out = Vec::new();
    let report = plan.mask_json(doc.to_string().as_bytes(), &mut out).unwrap();
    let out: Value = serde_json::from_slice(&out).unwrap();
    for (field, label) in [
        ("email", "EMAIL"),
        ("phone", "PHONE"),
        ("card", "CREDIT_CARD"),
        ("iban", "IBAN"),
        ("aws", "AWS_ACCESS_KEY"),
        ("gcp", "GCP_API_KEY"),
        ("okta", "OKTA_API_TOKEN"),
        ("jwt", "JWT"),
        ("pem", "PRIVATE_KEY"),
    ] {
        assert_eq!(out[field], format!("[REDACTED:{label}]"), "{field}");
    }
    assert_eq!(report.detections, 9);
    assert!(report.by_detector.iter().all(|&n| n == 1));
}

/// A tiny xorshift generator: reproducible documents without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

/// Sensitive values the generator plants; none may survive masking.
const SECRETS: [&str; 8] = [
    "john.doe@example.com",
    "4111111111111111",
    "5555 5555 5555 4444",
    "(415) 555-0132",
    "GB82 WEST 1234 5698 7654 32",
    "AKIAIOSFODNN7EXAMPLE",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlLXZhbHVl",
    "00QCjAl4MlV-WPXM-ABCDEFGHIJKLMNOPQRSTUVWXY",
];

/// Pieces of JSON string content, escapes included.
const PIECES: [&str; 14] = [
    "hello",
    "ünïcödé",
    "中文",
    "😀",
    "\\n",
    "\\\"quoted\\\"",
    "\\\\",
    "\\u00e9",
    "\\ud83d\\ude00",
    "\\t",
    "2026-11-24",
    "123e4567-e89b-12d3-a456-426614174000",
    "v1.2.3",
    "42",
];

const KEYS: [&str; 9] = [
    "email",
    "profile",
    "items",
    "credentials",
    "id",
    "x y",
    "data",
    "n\\u0061me",
    "a.b",
];

fn string(rng: &mut Rng, out: &mut String) {
    out.push('"');
    for k in 0..rng.below(4) {
        if k > 0 {
            out.push(' ');
        }
        if rng.below(3) == 0 {
            let secret = rng.pick(&SECRETS);
            // Some secrets hide behind escapes.
            out.push_str(&secret.replace('@', if rng.below(2) == 0 { "@" } else { "\\u0040" }));
        } else {
            out.push_str(rng.pick(&PIECES));
        }
    }
    out.push('"');
}

fn value(rng: &mut Rng, depth: usize, out: &mut String) {
    match rng.below(if depth > 5 { 3 } else { 6 }) {
        0 => string(rng, out),
        1 => out.push_str(rng.pick(&[
            "0",
            "-1.5e3",
            "4111111111111111",
            "1700000000000",
            "true",
            "false",
            "null",
        ])),
        2 => string(rng, out),
        3 | 4 => {
            out.push('{');
            for k in 0..rng.below(5) {
                if k > 0 {
                    out.push(',');
                }
                out.push_str(&format!("\"{}\"", rng.pick(&KEYS)));
                out.push_str(if rng.below(2) == 0 { ":" } else { " : " });
                value(rng, depth + 1, out);
            }
            out.push('}');
        }
        _ => {
            out.push('[');
            for k in 0..rng.below(5) {
                if k > 0 {
                    out.push_str(", ");
                }
                value(rng, depth + 1, out);
            }
            out.push(']');
        }
    }
}

/// Bytes that break JSON in interesting ways.
const DAMAGE: &[u8] = b"{}[]\",:\\ x0-\xff\x01";

#[test]
fn generated_documents_mask_to_valid_json() {
    let plan = compile(json!([
        {"detectors": ALL},
        {"jsonFields": ["$..email", "$.items[*].id"], "strategy": "Hash"},
        {"jsonFields": ["$..credentials.*", "$['a.b']"], "strategy": "Partial"},
        {"jsonFields": ["$[0]", "$..data"]}
    ]))
    .unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut masked_something = 0;
    for round in 0..400 {
        let mut doc = String::new();
        let values = 1 + rng.below(3);
        for _ in 0..values {
            value(&mut rng, 0, &mut doc);
            doc.push('\n');
        }
        let mut out = Vec::new();
        let report = plan
            .mask_json(doc.as_bytes(), &mut out)
            .unwrap_or_else(|e| panic!("round {round}: {e}\n{doc}"));
        masked_something += usize::from(!report.is_empty());
        let parsed: Vec<Value> = serde_json::Deserializer::from_slice(&out)
            .into_iter()
            .collect::<Result<_, _>>()
            .unwrap_or_else(|e| panic!("round {round}: {e}\n{doc}\n{}", String::from_utf8_lossy(&out)));
        assert_eq!(parsed.len(), values, "round {round}");
        let text = String::from_utf8(out).unwrap();
        for secret in SECRETS {
            assert!(
                !text.contains(secret),
                "round {round}: {secret} survived\n{doc}\n{text}"
            );
        }
        // The same document, damaged: never a panic, and whatever is accepted re-parses.
        for _ in 0..4 {
            let mut bytes = doc.clone().into_bytes();
            let at = rng.below(bytes.len());
            match rng.below(3) {
                0 => bytes.truncate(at),
                1 => bytes[at] = DAMAGE[rng.below(DAMAGE.len())],
                _ => bytes.insert(at, DAMAGE[rng.below(DAMAGE.len())]),
            }
            let mut out = Vec::new();
            let ours = plan.mask_json(&bytes, &mut out);
            if ours.is_ok() {
                let reparsed: Result<Vec<Value>, _> =
                    serde_json::Deserializer::from_slice(&out).into_iter().collect();
                assert!(
                    reparsed.is_ok(),
                    "round {round}: {}",
                    String::from_utf8_lossy(&bytes)
                );
            }
            if serde_json::from_slice::<Value>(&bytes).is_ok() {
                assert!(
                    ours.is_ok(),
                    "round {round}: serde_json accepts what we refuse: {}",
                    String::from_utf8_lossy(&bytes)
                );
            }
        }
    }
    assert!(masked_something > 250, "{masked_something}");
}

/// Addresses percent-encoded in links and queries (Okta's `search` filter, a `next` link, the
/// query of a recorded request) are found inside JSON strings and in text.
#[test]
fn percent_encoded_emails_are_masked() {
    let plan = compile(json!([{"detectors": ["Email"]}])).unwrap();
    let doc = r#"{"_links":{"next":{"href":"https://acme.okta.com/api/v1/users?search=profile.email%20eq%20%22alice%40example.com%22&limit=2"}},"n":"a%40b.io"}"#;
    let masked = mask(&plan, doc);
    assert_eq!(
        masked["_links"]["next"]["href"],
        "https://acme.okta.com/api/v1/users?search=profile.email%20eq%20%22[REDACTED:EMAIL]%22&limit=2"
    );
    assert_eq!(masked["n"], "[REDACTED:EMAIL]");
    let (text, report) = plan.mask_text("email=alice%40example.com&page=2");
    assert_eq!(text, "email=[REDACTED:EMAIL]&page=2");
    assert_eq!(report.detected(Detector::Email), 1);
}

#[test]
fn every_detector_masks_what_any_policy_could() {
    let plan = MaskingPlan::every_detector();
    let (out, report) = plan.mask_text("/users/alice@example.com/cards/4111111111111111");
    assert!(
        !out.contains("alice@example.com") && !out.contains("4111111111111111"),
        "{out}"
    );
    assert_eq!(report.detections, 2);
}

/// Every annotation a Secret patch may not copy from is one the Secret masking hides.
#[test]
fn the_annotations_patches_may_not_copy_from_are_the_masked_ones() {
    for annotation in SECRET_COPY_ANNOTATIONS {
        let selector = format!("$..['{annotation}']");
        assert!(
            KUBERNETES_SECRET_FIELDS.iter().any(|(s, _)| *s == selector),
            "{annotation} is not masked"
        );
    }
}
