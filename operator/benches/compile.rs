//! Compiling one gateway's configuration at scale: 5,000 AccessPolicies and 1,000 AgentIdentities
//! (target: under 1 s), and the cost of one more policy (no quadratic work on a single change).

use std::hint::black_box;
use std::time::Duration;

use agentgate_operator::{bundle, fixtures};
use criterion::{Criterion, criterion_group, criterion_main};

fn compile(c: &mut Criterion) {
    let mut group = c.benchmark_group("operator_compile");
    group.sample_size(10).measurement_time(Duration::from_secs(20));
    for (connections, identities, policies) in [(10, 100, 500), (50, 1_000, 5_000)] {
        let ns = fixtures::namespace("bench", connections, identities, policies);
        group.bench_function(format!("{policies}_policies_{identities}_identities"), |b| {
            b.iter(|| {
                let compiled = bundle::compile(black_box(&ns), "main", true);
                assert!(compiled.gateway.is_ok());
                compiled
            })
        });
    }
    group.finish();
}

criterion_group!(benches, compile);
criterion_main!(benches);
