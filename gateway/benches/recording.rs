//! Recording costs: one event with a 1 KiB body, verifying a finished file, and opening plus
//! closing (signing and syncing) a session.
//!
//! Run: `cargo bench -p agentgate --bench recording -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;

use agentgate::recording::{Recorder, verify_file};
use agentgate_crds::gateway::RecordingMode;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;

fn recording(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let recorder = Recorder::new(dir.path(), RecordingMode::Required, "bench/gw").expect("recorder");
    let body = "x".repeat(1024);
    let session = recorder
        .start_session(json!({"identity": "ci-agent", "connection": "okta"}))
        .expect("session");
    c.bench_function("record_event_1kib", |b| {
        b.iter(|| {
            session
                .record("http.response", json!({"status": 200, "body": black_box(&body)}))
                .expect("recorded")
        })
    });
    session.close(json!({})).expect("closed");

    // A file of 2,000 such events, verified end to end.
    let file_session = recorder.start_session(json!({})).expect("session");
    for _ in 0..2000 {
        file_session
            .record("http.response", json!({"status": 200, "body": &body}))
            .expect("recorded");
    }
    file_session.close(json!({})).expect("closed");
    let path = file_session.path().to_path_buf();
    let bytes = std::fs::metadata(&path).expect("file").len();
    let mut group = c.benchmark_group("verify");
    group.throughput(Throughput::Bytes(bytes));
    group.bench_function("file_2000_events", |b| {
        b.iter(|| black_box(verify_file(&path, None).expect("verifies")))
    });
    group.finish();

    c.bench_function("session_start_and_signed_close", |b| {
        b.iter(|| {
            let s = recorder.start_session(json!({"identity": "a"})).expect("session");
            s.close(json!({})).expect("closed");
        })
    });
}

criterion_group!(benches, recording);
criterion_main!(benches);
