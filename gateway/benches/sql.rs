//! SQL classification cost: PostgreSQL's own parser through pg_query, the classifier's cache, and
//! sqlparser-rs for comparison, on a few representative statements. Also the pieces a cache key
//! could be built from: `pg_query::parse` alone, `pg_query::fingerprint`, and a SipHash of the text.
//!
//! Run: `CARGO_TARGET_DIR=target-bench cargo bench -p agentgate --bench sql -- --quick`.

use std::hash::{BuildHasher, RandomState};
use std::hint::black_box;

use agentgate::protocol::postgres::classify::{Classifier, classify};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

const STATEMENTS: &[(&str, &str)] = &[
    (
        "pgbench_select",
        "SELECT abalance FROM pgbench_accounts WHERE aid = 12345;",
    ),
    (
        "cte_join",
        "WITH recent AS (SELECT customer_id, sum(total) AS total FROM orders \
         WHERE created_at > now() - interval '7 days' GROUP BY customer_id) \
         SELECT c.id, c.name, c.email, r.total FROM customers c JOIN recent r ON r.customer_id = c.id \
         WHERE c.status = 'active' AND c.id IN (SELECT customer_id FROM vip) ORDER BY r.total DESC LIMIT 50",
    ),
    (
        "pgbench_update",
        "UPDATE pgbench_accounts SET abalance = abalance + -4321 WHERE aid = 12345;",
    ),
    (
        "three_statements",
        "UPDATE pgbench_tellers SET tbalance = tbalance + -4321 WHERE tid = 7; \
         SELECT abalance FROM pgbench_accounts WHERE aid = 12345; \
         INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (7, 1, 12345, -4321, CURRENT_TIMESTAMP);",
    ),
];

fn sql(c: &mut Criterion) {
    let mut group = c.benchmark_group("sql");
    let cache = Classifier::new(1024);
    let hasher = RandomState::new();
    for (name, text) in STATEMENTS {
        // Every statement classifies, and sqlparser reads it too.
        let classified = classify(text).expect("classifies");
        assert!(!classified.statements.is_empty());
        Parser::parse_sql(&PostgreSqlDialect {}, text).expect("sqlparser parses");
        cache.classify(text).expect("cached");

        group.bench_with_input(BenchmarkId::new("classify_uncached", name), text, |b, t| {
            b.iter(|| black_box(classify(black_box(t)).expect("classifies")))
        });
        group.bench_with_input(BenchmarkId::new("classify_cache_hit", name), text, |b, t| {
            b.iter(|| black_box(cache.classify(black_box(t)).expect("classifies")))
        });
        group.bench_with_input(BenchmarkId::new("pg_query_parse", name), text, |b, t| {
            b.iter(|| black_box(pg_query::parse(black_box(t)).expect("parses")))
        });
        group.bench_with_input(BenchmarkId::new("pg_query_fingerprint", name), text, |b, t| {
            b.iter(|| black_box(pg_query::fingerprint(black_box(t)).expect("fingerprints").value))
        });
        group.bench_with_input(BenchmarkId::new("text_hash", name), text, |b, t| {
            b.iter(|| black_box(hasher.hash_one(black_box(*t))))
        });
        group.bench_with_input(BenchmarkId::new("sqlparser_parse", name), text, |b, t| {
            b.iter(|| black_box(Parser::parse_sql(&PostgreSqlDialect {}, black_box(t)).expect("parses")))
        });
    }
    group.finish();
}

criterion_group!(benches, sql);
criterion_main!(benches);
