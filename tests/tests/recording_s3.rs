//! Sessions shipped to S3-compatible storage: moto's server on 127.0.0.1, the gateway with
//! `recording.storage.s3`, curl as the agent. A session closed while the store is down stays in
//! the spool and is shipped once it is back; what arrives in the bucket verifies with the
//! gateway's key, and the spool is emptied behind it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use agentgate_e2e::gateway::{EchoUpstream, Gateway, OktaSetup, okta_manifests};
use agentgate_e2e::oidc::OidcProvider;
use agentgate_e2e::{Process, binary, curl, curl_get, free_port, wait_for};

const BUCKET: &str = "agentgate-sessions";
const PREFIX: &str = "e2e/gw";
const SECRET_ACCESS_KEY: &str = "s3-secret-canary-5f2c9d";

/// moto's S3 server.
struct Moto {
    port: u16,
    _process: Process,
}

impl Moto {
    fn start_on(port: u16) -> Self {
        let mut cmd = Command::new("python3");
        cmd.args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()]);
        let process = Process::start("moto", cmd);
        let up = wait_for(Duration::from_secs(60), || {
            (curl_get(&format!("http://127.0.0.1:{port}/")).0 == 200).then_some(())
        });
        assert!(up.is_some(), "moto did not start:\n{}", process.output());
        Self {
            port,
            _process: process,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The bucket, for signing requests to it.
    fn bucket(&self) -> rusty_s3::Bucket {
        rusty_s3::Bucket::new(
            self.url("").parse().unwrap(),
            rusty_s3::UrlStyle::Path,
            BUCKET,
            "us-east-1",
        )
        .unwrap()
    }

    /// What a gateway's `recording.storage.s3` compiles to for this store.
    fn storage(&self) -> agentgate::config::compile::ObjectStorage {
        agentgate::config::compile::ObjectStorage {
            bucket: BUCKET.into(),
            prefix: format!("{PREFIX}/"),
            endpoint: Some(self.url("")),
            region: "us-east-1".into(),
            access_key_id: agentgate::config::SecretValue::new(b"AKIAAGENTGATETEST".to_vec()),
            secret_access_key: agentgate::config::SecretValue::new(SECRET_ACCESS_KEY.as_bytes().to_vec()),
        }
    }

    /// A Required recorder of the spool `dir`, as the gateway `e2e/gw`.
    fn recorder(&self, dir: &Path) -> agentgate::recording::Recorder {
        agentgate::recording::Recorder::new(dir, agentgate_crds::gateway::RecordingMode::Required, "e2e/gw")
            .unwrap()
    }

    fn create_bucket(&self) {
        let r = curl(&["-X", "PUT"], &self.url(&format!("/{BUCKET}")));
        assert_eq!(r.status, 200, "{r:?}");
    }

    /// The bucket's keys under `PREFIX`.
    fn keys(&self) -> Vec<String> {
        let (status, body) = curl_get(&self.url(&format!("/{BUCKET}?list-type=2&prefix={PREFIX}/")));
        assert_eq!(status, 200, "{body}");
        body.split("<Key>")
            .skip(1)
            .filter_map(|s| s.split_once("</Key>").map(|(k, _)| k.to_string()))
            .collect()
    }

    /// An object, read with a signed request (moto refuses anonymous reads of objects).
    fn object(&self, key: &str) -> String {
        use rusty_s3::S3Action;
        let bucket = self.bucket();
        let reader = rusty_s3::Credentials::new("AKIAREADER", "reader-secret");
        let url =
            rusty_s3::actions::GetObject::new(&bucket, Some(&reader), key).sign(Duration::from_secs(60));
        let (status, body) = curl_get(url.as_str());
        assert_eq!(status, 200, "{key}: {body}");
        body
    }
}

fn spooled(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
                .collect()
        })
        .unwrap_or_default()
}

/// A counter's value in the Prometheus text, 0 when absent.
fn counter(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn closed_sessions_are_shipped_once_the_store_is_reachable_and_verify_there() {
    let idp = OidcProvider::start();
    let upstream = EchoUpstream::start();
    let moto_port = free_port();
    let yaml = okta_manifests(&OktaSetup {
        issuer: &idp.issuer,
        upstream: &upstream.url(),
        upstream_token: "okta-token",
        require_dpop: false,
    })
    .replace(
        r#"storage: {local: {path: "${SESSIONS}"}}"#,
        &format!(
            "storage: {{s3: {{bucket: {BUCKET}, prefix: {PREFIX}, endpoint: \"http://127.0.0.1:{moto_port}\", credentialsSecretRef: {{name: s3-credentials, key: accessKeyId}}}}}}"
        ),
    ) + &format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: s3-credentials, namespace: e2e}}\nstringData: {{accessKeyId: AKIAAGENTGATETEST, secretAccessKey: {SECRET_ACCESS_KEY}}}\n"
    );
    assert!(yaml.contains("s3: {bucket"), "the storage line was not replaced");
    let gw = Gateway::start(&yaml);
    let spool = gw.manifests().join(".agentgate/sessions");
    let token = idp.token("ci-agent", "api://agentgate", None)["access_token"]
        .as_str()
        .expect("token")
        .to_string();
    let auth = format!("Authorization: Bearer {token}");
    let call = |path: &str| {
        let r = curl(&["-H", &auth], &gw.url(path));
        assert_eq!(r.status, 200, "{r:?}");
    };

    // The store is down: the closed session stays in the spool and the failure is counted.
    call("/okta/echo/while-down");
    let failed = wait_for(Duration::from_secs(30), || {
        (counter(
            &gw.metrics(),
            "agentgate_recording_uploads_total{result=\"failed\"}",
        ) >= 1.0)
            .then_some(())
    });
    assert!(failed.is_some(), "no failed upload counted:\n{}", gw.metrics());
    assert_eq!(spooled(&spool).len(), 1, "the session must stay in the spool");

    // The store comes up: the session is shipped and leaves the spool.
    let moto = Moto::start_on(moto_port);
    moto.create_bucket();
    let shipped = wait_for(Duration::from_secs(60), || {
        (moto.keys().len() == 1 && spooled(&spool).is_empty()).then_some(())
    });
    assert!(
        shipped.is_some(),
        "not shipped: keys {:?}, spool {:?}\n{}",
        moto.keys(),
        spooled(&spool),
        gw.output()
    );

    // Another session, with the store up, follows within a few sweeps.
    call("/okta/echo/while-up");
    let keys = wait_for(Duration::from_secs(30), || {
        let keys = moto.keys();
        (keys.len() == 2).then_some(keys)
    })
    .expect("the second session was not shipped");
    assert!(
        counter(
            &gw.metrics(),
            "agentgate_recording_uploads_total{result=\"shipped\"}"
        ) >= 2.0
    );
    drop(keys);

    // A session still open when the gateway stops is closed and shipped on the way out: in a
    // cluster the spool is the pod's scratch space. Its connection stays open until the stop.
    let mut held = std::net::TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    std::io::Write::write_all(
        &mut held,
        format!(
            "GET /okta/echo/at-shutdown HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    let mut answer = [0u8; 12];
    std::io::Read::read_exact(&mut held, &mut answer).unwrap();
    assert_eq!(&answer, b"HTTP/1.1 200");
    let mut gw = gw;
    gw.stop();
    drop(held);
    let keys = moto.keys();
    assert_eq!(
        keys.len(),
        3,
        "the last session was not shipped at exit: {keys:?}\n{}",
        gw.output()
    );
    assert!(spooled(&spool).is_empty(), "{:?}", spooled(&spool));

    // What is in the bucket is the signed session, and verifies as such.
    let log = gw.output();
    let public_key: String = log
        .split("public_key=")
        .nth(1)
        .expect("the gateway logs its recording key")
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let mut texts = String::new();
    for key in &keys {
        assert!(
            key.starts_with(&format!("{PREFIX}/")) && key.ends_with(".jsonl"),
            "{key}"
        );
        let text = moto.object(key);
        let file = dir.path().join(key.rsplit('/').next().unwrap());
        std::fs::write(&file, &text).unwrap();
        let out = Command::new(binary("agentgate"))
            .args([
                "sessions",
                "verify",
                "--require-closed",
                "--public-key",
                &public_key,
            ])
            .arg(&file)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{key}: {stdout}{}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("(closed, signature verified)"), "{stdout}");
        texts.push_str(&text);
    }
    assert!(
        texts.contains("/echo/while-down")
            && texts.contains("/echo/while-up")
            && texts.contains("/echo/at-shutdown")
    );
    // Neither the secret key nor a signed URL is ever logged.
    for leak in [SECRET_ACCESS_KEY, "X-Amz-Signature", &token] {
        assert!(!log.contains(leak), "{leak} is in the gateway's log");
    }
}

/// A session larger than one part is shipped as a multipart upload (a single PUT is capped at
/// 5 GiB by S3, and a long exec or log stream can outgrow that): the object is the file byte for
/// byte, its ETag is a multipart one, and no upload is left unfinished. With the bucket missing,
/// the upload is refused with the store's code and the file stays in the spool.
#[tokio::test]
async fn a_session_larger_than_one_part_is_shipped_in_parts() {
    use agentgate::recording::shipping::{MIN_PART_BYTES, Shipper, Sweep};
    let moto = Moto::start_on(free_port());
    let spool = tempfile::tempdir().unwrap();
    let recorder = moto.recorder(spool.path());
    let session = recorder.start_session(serde_json::json!({})).unwrap();
    let mut n = 0u64;
    while std::fs::metadata(session.path()).unwrap().len() < 2 * MIN_PART_BYTES + MIN_PART_BYTES / 2 {
        // Text that does not repeat from event to event, so no layer can shrink it.
        let body: String = (0..2_000)
            .map(|i| format!("{:x}", (n * 2_000 + i) * 2_654_435_761 % 1_000_003))
            .collect();
        session
            .record("http.response", serde_json::json!({"n": n, "body": body}))
            .unwrap();
        n += 1;
    }
    session.close(serde_json::json!({"reason": "done"})).unwrap();
    let file = session.path().to_path_buf();
    let bytes = std::fs::read(&file).unwrap();

    let storage = moto.storage();
    let mut shipper = Shipper::new(spool.path(), &storage)
        .unwrap()
        .with_part_bytes(MIN_PART_BYTES);

    // No bucket yet: refused, and the file stays.
    assert_eq!(
        shipper.final_sweep().await,
        Sweep {
            shipped: 0,
            failed: 1,
            waiting: 1,
            set_aside: 0,
        }
    );
    assert!(file.exists());

    moto.create_bucket();
    assert_eq!(
        shipper.final_sweep().await,
        Sweep {
            shipped: 1,
            failed: 0,
            waiting: 0,
            set_aside: 0,
        }
    );
    assert!(!file.exists(), "shipped, so gone from the spool");
    let key = shipper.key_of(&file);
    assert_eq!(moto.keys(), vec![key.clone()]);
    let object = moto.object(&key);
    assert!(
        object.as_bytes() == bytes,
        "the object differs from the spooled file ({} vs {} bytes)",
        object.len(),
        bytes.len()
    );
    let (_, listing) = curl_get(&moto.url(&format!("/{BUCKET}?list-type=2&prefix={PREFIX}/")));
    assert!(
        listing.contains("-3&#34;</ETag>")
            || listing.contains("-3&quot;</ETag>")
            || listing.contains("-3\"</ETag>"),
        "not a three-part object: {listing}"
    );
    let (_, uploads) = curl_get(&moto.url(&format!("/{BUCKET}?uploads")));
    assert!(
        !uploads.contains("<UploadId>"),
        "an upload was left unfinished: {uploads}"
    );

    let copy = spool.path().join("copy.jsonl");
    std::fs::write(&copy, &object).unwrap();
    let report = agentgate::recording::verify_file(&copy, Some(recorder.public_key())).unwrap();
    assert!(report.closed && report.signed, "{report:?}");
    std::fs::remove_file(&copy).unwrap();

    // The spool removal was lost (a crash after the upload): the file is shipped again, the
    // store refuses to replace the object, and the object of the file's length is taken as it.
    std::fs::write(&file, &bytes).unwrap();
    assert_eq!(
        shipper.final_sweep().await,
        Sweep {
            shipped: 1,
            failed: 0,
            waiting: 0,
            set_aside: 0,
        }
    );
    assert!(!file.exists());
    let (_, uploads) = curl_get(&moto.url(&format!("/{BUCKET}?uploads")));
    assert!(!uploads.contains("<UploadId>"), "{uploads}");
}

/// An upload never replaces an object: another object at a session's key (an attacker's, or a
/// store's stale copy) stays as it is, and the session stays in the spool, with the reason.
#[tokio::test]
async fn an_upload_does_not_replace_an_object_at_its_key() {
    use agentgate::recording::shipping::{Shipper, Sweep};
    use rusty_s3::S3Action;
    let moto = Moto::start_on(free_port());
    moto.create_bucket();
    let spool = tempfile::tempdir().unwrap();
    let recorder = moto.recorder(spool.path());
    let session = recorder.start_session(serde_json::json!({})).unwrap();
    session.close(serde_json::json!({"reason": "done"})).unwrap();
    let file = session.path().to_path_buf();
    let storage = moto.storage();
    let mut shipper = Shipper::new(spool.path(), &storage).unwrap();
    let key = shipper.key_of(&file);
    let bucket = moto.bucket();
    let writer = rusty_s3::Credentials::new("AKIAWRITER", "writer-secret");
    let url = rusty_s3::actions::PutObject::new(&bucket, Some(&writer), &key).sign(Duration::from_secs(60));
    // A form content type would have moto's web framework take the body as form fields.
    let r = curl(
        &[
            "-X",
            "PUT",
            "-H",
            "content-type: application/octet-stream",
            "--data-binary",
            "planted",
        ],
        url.as_str(),
    );
    assert_eq!(r.status, 200, "{r:?}");

    // Set aside, so that it does not hold every other upload at the longest backoff.
    assert_eq!(
        shipper.final_sweep().await,
        Sweep {
            shipped: 0,
            failed: 0,
            waiting: 0,
            set_aside: 1,
        }
    );
    let aside = file.with_file_name(format!(
        "{}{}",
        file.file_name().unwrap().to_str().unwrap(),
        agentgate::recording::shipping::CONFLICT_SUFFIX
    ));
    assert!(!file.exists() && aside.exists(), "not shipped, so kept aside");
    assert_eq!(moto.object(&key), "planted");
    // Nothing is left to ship, and the next sweep leaves the file where it is.
    assert_eq!(shipper.final_sweep().await, Sweep::default());
    assert!(aside.exists());
}
