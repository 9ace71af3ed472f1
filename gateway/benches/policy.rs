//! Policy decisions as the number of rules grows: 10, 1,000 and 10,000 rules, all naming the same
//! identity on the same connection (the worst case for the index: nothing is ruled out by who is
//! asking), over distinct API paths, with a few path-less rules that every decision evaluates.
//!
//! Run: `cargo bench -p agentgate --bench policy -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;

use agentgate::config::CompiledPolicy;
use agentgate::policy::{BodyParams, BodyView, HttpOperation, Operation, PolicyIndex, Subject};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use hyper::http::HeaderMap;

const RULES_PER_POLICY: usize = 10;

/// `rules` rules in policies of ten: per service, reads allowed, writes held for approval, a
/// deny on its admin paths, and header and query conditions; plus five path-less rules.
fn policies(rules: usize) -> Vec<CompiledPolicy> {
    let mut out = Vec::new();
    out.push(
        CompiledPolicy::from_spec(
            "global",
            serde_saphyr::from_str(
                "subjects: {groups: [ai-agents]}\nconnections: [api]\nrules:\n\
                 - {name: no-trace, action: Deny, http: {methods: [OPTIONS]}}\n\
                 - {name: no-debug, action: Deny, http: {headers: {X-Debug: '*'}}}\n\
                 - {name: no-bulk, action: Deny, http: {query: {bulk: 'true'}}}\n\
                 - {name: head, action: Allow, http: {methods: [HEAD]}}\n\
                 - {name: no-purge, action: Deny, http: {methods: [DELETE], query: {purge: '*'}}}\n",
            )
            .expect("global policy parses"),
        )
        .expect("global policy compiles"),
    );
    for p in 0..rules.div_ceil(RULES_PER_POLICY) {
        let mut yaml = String::from("subjects: {identities: [ci-agent]}\nconnections: [api]\nrules:\n");
        for r in 0..RULES_PER_POLICY {
            let svc = format!("/api/v1/svc{p}/res{r}");
            let rule = match r % 4 {
                0 => format!(
                    "- {{name: r{r}, action: Allow, http: {{methods: [GET], paths: ['{svc}', '{svc}/*']}}}}\n"
                ),
                1 => format!(
                    "- name: r{r}\n  action: RequireApproval\n  http: {{methods: [POST, PUT, DELETE], paths: ['{svc}/**']}}\n  approval: {{approvers: {{groups: [ops]}}}}\n"
                ),
                2 => format!("- {{name: r{r}, action: Deny, http: {{paths: ['{svc}/admin/**']}}}}\n"),
                _ => format!(
                    "- {{name: r{r}, action: Allow, http: {{methods: [GET], paths: ['{svc}/items/*'], query: {{limit: '?', expand: 'no*'}}}}}}\n"
                ),
            };
            yaml.push_str(&rule);
        }
        let spec = serde_saphyr::from_str(&yaml).expect("generated policy parses");
        out.push(CompiledPolicy::from_spec(&format!("p{p}"), spec).expect("generated policy compiles"));
    }
    out
}

fn decisions(c: &mut Criterion) {
    let headers = HeaderMap::new();
    let groups = vec!["ai-agents".to_string(), "ci".to_string()];
    let who = Subject {
        identity: "ci-agent",
        groups: &groups,
    };
    let mut group = c.benchmark_group("policy_decide");
    for rules in [10usize, 1_000, 10_000] {
        let policies = policies(rules);
        let index = PolicyIndex::build(&policies, ["api"]);
        let last = rules / RULES_PER_POLICY - 1;
        let allowed_path = format!("/api/v1/svc{last}/res0/42");
        let write_path = format!("/api/v1/svc{last}/res1/items/7");
        let unmatched_path = format!("/api/v1/svc{last}/unknown/1");
        let cases = [
            ("allow", "GET", allowed_path.as_str()),
            ("require_approval", "POST", write_path.as_str()),
            ("default_deny", "GET", unmatched_path.as_str()),
        ];
        for (label, method, path) in cases {
            let op = Operation::Http(HttpOperation {
                method,
                path,
                query: &[],
                headers: &headers,
                body: BodyView::NotRead,
                params: BodyParams::None,
            });
            let expected = index.decide(&policies, "api", who, &op, 0).label();
            assert_eq!(
                expected,
                match label {
                    "allow" => "allow",
                    "require_approval" => "require_approval",
                    _ => "deny",
                },
                "{label} at {rules} rules"
            );
            group.bench_with_input(BenchmarkId::new(label, rules), &rules, |b, _| {
                b.iter(|| black_box(index.decide(&policies, "api", who, black_box(&op), 0).action))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, decisions);
criterion_main!(benches);
