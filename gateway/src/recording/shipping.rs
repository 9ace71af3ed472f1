//! Shipping sessions from the local spool to S3-compatible storage (`recording.storage.s3`).
//! DESIGN.md section 4: sessions are spooled durably to local disk first, then shipped.
//!
//! A task sweeps the spool every [`SWEEP_INTERVAL`]. A file is shipped once its session is closed
//! (its last line is the signed `session.end`), or once no process holds its lock and it has not
//! changed for [`CUT_OFF_GRACE`]: its session was cut off by a crash or a restart and will never
//! close, and shipping it still preserves everything up to the cut. Each file becomes the object
//! `<prefix><file name>`, streamed from disk with requests signed for [`URL_VALIDITY`] (SigV4, by
//! rusty-s3): one PUT up to [`PART_BYTES`], a multipart upload above (a long `kubectl exec` or
//! log stream can outgrow S3's 5 GiB limit for one PUT, and one part failing costs one part). A
//! file is removed from the spool only after the store confirmed the whole object. A failed
//! upload stays in the spool and is retried with backoff (an unfinished multipart upload is
//! aborted, so its parts are not left stored); until it is shipped the spool is the record, so
//! the recording mode's promise (Required: no record, no operation) holds whatever the store does.
//!
//! Objects are never deleted by the gateway: retention in the bucket is its lifecycle rule's job.

use std::collections::HashMap;
use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::Frame;
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::config::compile::ObjectStorage;
use crate::metrics::Metrics;

/// How long an unlocked, unclosed file must be left unchanged before it counts as cut off: a
/// session's file is locked before it takes its name, so this covers other writers of the spool.
pub const CUT_OFF_GRACE: Duration = Duration::from_secs(10);
/// How often the spool is swept for sessions to ship.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(2);
/// Longest wait between sweeps after failures.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How long a signed upload request stays valid.
pub const URL_VALIDITY: Duration = Duration::from_secs(15 * 60);
/// Longest time one request (a whole PUT, or one part) may take.
pub const UPLOAD_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// Files up to this size are sent in one PUT; larger ones in parts of this size (more when
/// [`MAX_PARTS`] would not do).
pub const PART_BYTES: u64 = 64 * 1024 * 1024;
/// S3's limits: parts but the last of at least 5 MiB, at most 10,000 parts, objects up to 5 TiB.
pub const MIN_PART_BYTES: u64 = 5 * 1024 * 1024;
pub const MAX_PARTS: u64 = 10_000;
pub const MAX_OBJECT_BYTES: u64 = 5 * 1024 * 1024 * 1024 * 1024;
/// Upload chunk size.
const CHUNK_BYTES: usize = 64 * 1024;
/// Most bytes read of an answer (an error's `<Code>`, a multipart upload's id or result).
const MAX_ANSWER_BODY: usize = 16 * 1024;
/// Uploads create objects and never replace one: a bucket's evidence is not overwritten by the
/// gateway's own credentials (a store without conditional writes ignores the header).
const NEW_OBJECT_ONLY: &[(&str, &str)] = &[("if-none-match", "*")];

/// Why a file was not shipped. Messages name the object and the store's error code, never a
/// signed URL or a credential.
#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    #[error("object storage settings: {0}")]
    Settings(String),
    #[error("{}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{} is {bytes} bytes, more than one object may hold ({MAX_OBJECT_BYTES})", path.display())]
    TooLarge { path: PathBuf, bytes: u64 },
    #[error("uploading {key}: the store answered {status} {code}")]
    Refused { key: String, status: u16, code: String },
    #[error("uploading {key}: {message}")]
    Transport { key: String, message: String },
    #[error("uploading {key}: timed out after {}s", UPLOAD_TIMEOUT.as_secs())]
    Timeout { key: String },
    #[error(
        "uploading {key}: another object ({stored} bytes) is at this key, and the file has {length}; both are left as they are"
    )]
    Conflict { key: String, stored: u64, length: u64 },
}

/// What ends the name of a spool file set aside because another object holds its key: no sweep,
/// prune or listing takes it for a session, and it waits for someone to compare the two.
pub const CONFLICT_SUFFIX: &str = ".conflict";

type UploadBody = BoxBody<Bytes, std::io::Error>;

/// What one sweep did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Sweep {
    pub shipped: usize,
    pub failed: usize,
    /// Files set aside ([`CONFLICT_SUFFIX`]): another object holds their key.
    pub set_aside: usize,
    /// Files left in the spool: open sessions and failed uploads.
    pub waiting: usize,
}

/// Ships one spool directory to one bucket.
pub struct Shipper {
    dir: PathBuf,
    bucket: Bucket,
    credentials: Credentials,
    prefix: String,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, UploadBody>,
    /// Unclosed files by length, so an unchanged file's end is not read again.
    open: HashMap<PathBuf, Seen>,
    /// See [`PART_BYTES`].
    part_bytes: u64,
    /// The gateway whose sessions are shipped (`namespace/name`), and whether each file's start
    /// names another (a spool shared by two: not this one's to ship), read once per file; `None`:
    /// every session found.
    owner: Option<(String, HashMap<PathBuf, bool>)>,
}

impl std::fmt::Debug for Shipper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shipper")
            .field("dir", &self.dir)
            .field("bucket", &self.bucket.name())
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Shipper {
    /// A shipper of `dir` to `storage`.
    pub fn new(dir: &Path, storage: &ObjectStorage) -> Result<Self, ShipError> {
        let (endpoint, style) = match &storage.endpoint {
            Some(url) => (url.clone(), UrlStyle::Path),
            None => (
                format!("https://s3.{}.amazonaws.com", storage.region),
                UrlStyle::VirtualHost,
            ),
        };
        let endpoint = endpoint
            .parse()
            .map_err(|e| ShipError::Settings(format!("endpoint {endpoint:?}: {e}")))?;
        let bucket = Bucket::new(endpoint, style, storage.bucket.clone(), storage.region.clone())
            .map_err(|e| ShipError::Settings(format!("bucket {:?}: {e}", storage.bucket)))?;
        let text = |v: &crate::config::SecretValue| String::from_utf8_lossy(v.expose()).into_owned();
        let credentials = Credentials::new(text(&storage.access_key_id), text(&storage.secret_access_key));
        let connector = crate::identity::fetch::native_roots_connector().map_err(ShipError::Settings)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            bucket,
            credentials,
            prefix: storage.prefix.clone(),
            client: Client::builder(TokioExecutor::new()).build(connector),
            open: HashMap::new(),
            part_bytes: PART_BYTES,
            owner: None,
        })
    }

    /// Ships only the sessions whose start names `gateway` (`namespace/name`): in a spool shared
    /// with another gateway, that one's sessions go to its own store.
    pub fn for_gateway(mut self, gateway: &str) -> Self {
        self.owner = Some((gateway.to_string(), HashMap::new()));
        self
    }

    /// Uses parts of `bytes` (at least S3's minimum) instead of [`PART_BYTES`].
    pub fn with_part_bytes(mut self, bytes: u64) -> Self {
        self.part_bytes = bytes.max(MIN_PART_BYTES);
        self
    }

    /// The object key of a spooled file.
    pub fn key_of(&self, file: &Path) -> String {
        let name = file.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
        format!("{}{name}", self.prefix)
    }

    /// One pass over the spool: ships every file that is ready, oldest name first.
    pub async fn sweep(&mut self) -> Sweep {
        self.sweep_with(CUT_OFF_GRACE).await
    }

    /// The last pass before this process exits: its own sessions are closed by then, so an
    /// unlocked file needs no grace.
    pub async fn final_sweep(&mut self) -> Sweep {
        self.sweep_with(Duration::ZERO).await
    }

    async fn sweep_with(&mut self, grace: Duration) -> Sweep {
        // Listing the spool and reading the ends of its files is blocking I/O, over as many files
        // as the store has missed: off the async workers, which serve the data path.
        let dir = self.dir.clone();
        let mut open = std::mem::take(&mut self.open);
        let mut owner = self.owner.take();
        let Ok((scan, open, owner)) = tokio::task::spawn_blocking(move || {
            let scan = scan(&dir, &mut open, grace, owner.as_mut());
            (scan, open, owner)
        })
        .await
        else {
            return Sweep::default();
        };
        self.open = open;
        self.owner = owner;
        let mut report = Sweep {
            waiting: scan.waiting,
            failed: scan.failed,
            ..Sweep::default()
        };
        for file in scan.ready {
            // Held shared from the upload's first read to the removal: a sealer (which locks it
            // exclusively) cannot change the file under the upload. Taken by someone since the
            // scan: left for the next sweep.
            let Ok(held) = std::fs::File::open(&file)
                .and_then(|f| f.try_lock_shared().map(|()| f).map_err(std::io::Error::from))
            else {
                report.waiting += 1;
                continue;
            };
            let shipped = self.upload(&file).await;
            let _held = held;
            match shipped {
                Ok(key) => {
                    // Shipped: the spool copy goes. If it cannot, it is shipped again next time
                    // (the same bytes to the same key).
                    if let Err(e) = tokio::fs::remove_file(&file).await {
                        tracing::warn!(file = %file.display(), error = %e, "shipped session not removed from the spool");
                    }
                    tracing::info!(object = %key, bucket = %self.bucket.name(), "session shipped");
                    self.open.remove(&file);
                    report.shipped += 1;
                }
                // Retrying cannot help, and would hold every other file at the longest backoff.
                Err(e @ ShipError::Conflict { .. }) => {
                    let mut aside = file.clone().into_os_string();
                    aside.push(CONFLICT_SUFFIX);
                    match tokio::fs::rename(&file, &aside).await {
                        Ok(()) => {
                            tracing::error!(error = %e, file = %std::path::Path::new(&aside).display(), "session set aside: compare it with the object at its key");
                            self.open.remove(&file);
                            report.set_aside += 1;
                        }
                        Err(rename) => {
                            tracing::error!(error = %e, %rename, "session not shipped, nor set aside; it stays in the spool");
                            report.failed += 1;
                            report.waiting += 1;
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "session not shipped; it stays in the spool");
                    report.failed += 1;
                    report.waiting += 1;
                }
            }
        }
        report
    }

    #[cfg(test)]
    fn ready(&mut self, file: &Path, grace: Duration) -> Result<bool, ShipError> {
        ready(&mut self.open, file, grace)
    }

    /// Uploads `file`, streamed from disk: one PUT, or a multipart upload when it is larger than
    /// one part.
    async fn upload(&self, file: &Path) -> Result<String, ShipError> {
        let key = self.key_of(file);
        let read_err = |source| ShipError::Read {
            path: file.to_path_buf(),
            source,
        };
        let length = tokio::fs::metadata(file).await.map_err(read_err)?.len();
        if length > MAX_OBJECT_BYTES {
            return Err(ShipError::TooLarge {
                path: file.to_path_buf(),
                bytes: length,
            });
        }
        let stored = if length <= self.part_bytes {
            let url = rusty_s3::actions::PutObject::new(&self.bucket, Some(&self.credentials), &key)
                .sign(URL_VALIDITY);
            let body = file_range(file, 0, length).await.map_err(read_err)?;
            self.exchange(&key, Method::PUT, url.as_str(), body, length, NEW_OBJECT_ONLY)
                .await
                .map(|_| ())
        } else {
            self.upload_in_parts(file, &key, length).await
        };
        let conflict = match stored {
            Ok(()) => false,
            // An object is at the key already: this file, when an earlier sweep's answer or
            // removal was lost (the key names a session, each of which is unique); anything else
            // is left as it is, and the file stays.
            Err(ShipError::Refused { status: 412, .. }) => true,
            Err(e) => return Err(e),
        };
        // The spool copy goes only once the store shows an object of the file's length: a 2xx
        // whose answer was cut off, or an `<Error>` the store wrote after it, is not enough.
        match self.stored_length(&key).await {
            Ok(Some(n)) if n == length => Ok(key),
            Ok(Some(stored)) if conflict => Err(ShipError::Conflict { key, stored, length }),
            Ok(stored) => Err(ShipError::Transport {
                key,
                message: match stored {
                    Some(n) => format!("the store holds {n} bytes at this key, the file {length}; the file stays in the spool"),
                    None => "the store did not say how long the stored object is".into(),
                },
            }),
            // Credentials that may write but not read: the upload's own whole 2xx answer is
            // taken as it is, and said once.
            Err(ShipError::Refused { status: 403, .. }) if !conflict => {
                static SAID: std::sync::Once = std::sync::Once::new();
                SAID.call_once(|| {
                    tracing::warn!(bucket = %self.bucket.name(), "the store refuses to show uploaded objects (HEAD): uploads are not checked against the spooled files; grant s3:GetObject on the prefix");
                });
                Ok(key)
            }
            Err(ShipError::Refused { status: 403, .. }) => Err(ShipError::Transport {
                key,
                message: "an object is already at this key and the store refuses to show it (HEAD), so it cannot be compared with the file, which stays in the spool; grant s3:GetObject on the prefix".into(),
            }),
            Err(e) => Err(e),
        }
    }

    /// How long the object at `key` is, as a HEAD says.
    async fn stored_length(&self, key: &str) -> Result<Option<u64>, ShipError> {
        let url =
            rusty_s3::actions::HeadObject::new(&self.bucket, Some(&self.credentials), key).sign(URL_VALIDITY);
        let (headers, _) = self
            .exchange(key, Method::HEAD, url.as_str(), empty(), 0, &[])
            .await?;
        Ok(headers
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok()))
    }

    /// Uploads `file` as a multipart upload, aborted when it cannot be completed.
    async fn upload_in_parts(&self, file: &Path, key: &str, length: u64) -> Result<(), ShipError> {
        let key = key.to_string();
        let url = rusty_s3::actions::CreateMultipartUpload::new(&self.bucket, Some(&self.credentials), &key)
            .sign(URL_VALIDITY);
        let (_, answer) = self
            .exchange(&key, Method::POST, url.as_str(), empty(), 0, &[])
            .await?;
        let created = std::str::from_utf8(&answer)
            .ok()
            .and_then(|a| rusty_s3::actions::CreateMultipartUpload::parse_response(a).ok())
            .ok_or_else(|| ShipError::Transport {
                key: key.clone(),
                message: "the store did not answer with an upload id".into(),
            })?;
        let upload_id = created.upload_id();
        let result = self.upload_parts(file, &key, upload_id, length).await;
        if result.is_err() {
            // Parts of an unfinished upload stay stored (and billed) until it is aborted; the
            // next sweep starts a new upload.
            let url = rusty_s3::actions::AbortMultipartUpload::new(
                &self.bucket,
                Some(&self.credentials),
                &key,
                upload_id,
            )
            .sign(URL_VALIDITY);
            if let Err(e) = self
                .exchange(&key, Method::DELETE, url.as_str(), empty(), 0, &[])
                .await
            {
                tracing::warn!(error = %e, "an unfinished multipart upload could not be aborted");
            }
        }
        result
    }

    /// Sends `file` as the parts of upload `upload_id`, in order, then completes the upload.
    async fn upload_parts(
        &self,
        file: &Path,
        key: &str,
        upload_id: &str,
        length: u64,
    ) -> Result<(), ShipError> {
        let part = self.part_bytes.max(length.div_ceil(MAX_PARTS));
        let transport = |message: &str| ShipError::Transport {
            key: key.to_string(),
            message: message.to_string(),
        };
        let mut etags = Vec::new();
        let mut offset = 0;
        while offset < length {
            let size = part.min(length - offset);
            let number = u16::try_from(etags.len() + 1).map_err(|_| transport("too many parts"))?;
            let url = rusty_s3::actions::UploadPart::new(
                &self.bucket,
                Some(&self.credentials),
                key,
                number,
                upload_id,
            )
            .sign(URL_VALIDITY);
            let body = file_range(file, offset, size)
                .await
                .map_err(|source| ShipError::Read {
                    path: file.to_path_buf(),
                    source,
                })?;
            let (headers, _) = self
                .exchange(key, Method::PUT, url.as_str(), body, size, &[])
                .await?;
            let etag = headers
                .get(hyper::header::ETAG)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| transport("the store answered a part without an ETag"))?;
            etags.push(etag.to_string());
            offset += size;
        }
        let complete = rusty_s3::actions::CompleteMultipartUpload::new(
            &self.bucket,
            Some(&self.credentials),
            key,
            upload_id,
            etags.iter().map(String::as_str),
        );
        let url = complete.sign(URL_VALIDITY);
        let xml = Bytes::from(complete.body());
        let len = xml.len() as u64;
        let body = BodyExt::boxed(Full::new(xml).map_err(|never| match never {}));
        let (_, answer) = self
            .exchange(key, Method::POST, url.as_str(), body, len, NEW_OBJECT_ONLY)
            .await?;
        // S3 may answer 200 and report a failure in the body, as an `<Error>` document. (The
        // success document's root is not checked: moto names it differently from AWS.)
        if memchr::memmem::find(&answer, b"<Error>").is_some() {
            return Err(ShipError::Refused {
                key: key.to_string(),
                status: 200,
                code: error_code(&answer),
            });
        }
        Ok(())
    }

    /// One request to the store: the answer's headers and (capped) body when it is 2xx.
    async fn exchange(
        &self,
        key: &str,
        method: Method,
        url: &str,
        body: UploadBody,
        length: u64,
        headers: &[(&str, &str)],
    ) -> Result<(hyper::HeaderMap, Bytes), ShipError> {
        let transport = |message: &str| ShipError::Transport {
            key: key.to_string(),
            message: message.to_string(),
        };
        let uri: Uri = url
            .parse()
            .map_err(|_| transport("the signed URL is not a valid URI"))?;
        let head_only = method == Method::HEAD;
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header(hyper::header::CONTENT_LENGTH, length)
            .header(hyper::header::CONTENT_TYPE, "application/x-ndjson");
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let req = req
            .body(body)
            .map_err(|_| transport("the request cannot be built"))?;
        let exchange = async {
            // The client's errors can quote the URI, whose query holds the signature: only their
            // kind is kept.
            let resp = self.client.request(req).await.map_err(|e| {
                transport(if e.is_connect() {
                    "cannot connect to the store"
                } else {
                    "the request failed before an answer"
                })
            })?;
            let (head, body) = resp.into_parts();
            if head_only {
                return if head.status.is_success() {
                    Ok((head.headers, Bytes::new()))
                } else {
                    Err(ShipError::Refused {
                        key: key.to_string(),
                        status: head.status.as_u16(),
                        code: String::new(),
                    })
                };
            }
            let body = Limited::new(body, MAX_ANSWER_BODY)
                .collect()
                .await
                .map(|b| b.to_bytes());
            if head.status.is_success() {
                // A success whose answer cannot be read whole may hide an error the store
                // wrote after its status line.
                let body = body.map_err(|_| transport("the store's answer was cut off or too long"))?;
                Ok((head.headers, body))
            } else {
                let body = body.unwrap_or_default();
                Err(ShipError::Refused {
                    key: key.to_string(),
                    status: head.status.as_u16(),
                    code: error_code(&body),
                })
            }
        };
        tokio::time::timeout(UPLOAD_TIMEOUT, exchange)
            .await
            .map_err(|_| ShipError::Timeout { key: key.to_string() })?
    }

    /// Sweeps until the task is aborted, backing off while uploads fail.
    pub async fn run(mut self, metrics: Metrics) {
        let mut wait = SWEEP_INTERVAL;
        loop {
            let sweep = self.sweep().await;
            metrics
                .recording_uploads
                .with_label_values(&["shipped"])
                .inc_by(sweep.shipped as u64);
            metrics
                .recording_uploads
                .with_label_values(&["failed"])
                .inc_by(sweep.failed as u64);
            metrics
                .recording_uploads
                .with_label_values(&["set_aside"])
                .inc_by(sweep.set_aside as u64);
            metrics.recording_upload_backlog.set(sweep.waiting as i64);
            wait = if sweep.failed > 0 {
                (wait * 2).min(MAX_BACKOFF)
            } else {
                SWEEP_INTERVAL
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// What one look at the spool found.
struct Scan {
    /// Files to ship now, oldest name first.
    ready: Vec<PathBuf>,
    waiting: usize,
    failed: usize,
}

/// Lists the spool's session files and sorts out those ready to ship; `open` remembers the
/// lengths of unclosed files, so an unchanged file's end is not read again, and forgets files
/// that are gone. With `owner` (a gateway, and the files known to be another's), only that
/// gateway's sessions are considered.
fn scan(
    dir: &Path,
    open: &mut HashMap<PathBuf, Seen>,
    grace: Duration,
    owner: Option<&mut (String, HashMap<PathBuf, bool>)>,
) -> Scan {
    let mut out = Scan {
        ready: Vec::new(),
        waiting: 0,
        failed: 0,
    };
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| super::is_session_file(p))
            .collect(),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "session spool cannot be read");
            return out;
        }
    };
    files.sort();
    super::remove_stale_staging(dir, std::time::SystemTime::now());
    open.retain(|p, _| files.binary_search(p).is_ok());
    if let Some((gateway, theirs)) = owner {
        theirs.retain(|p, _| files.binary_search(p).is_ok());
        files.retain(|p| match theirs.get(p) {
            Some(another) => !another,
            // A start not yet readable is looked at again in the next sweep.
            None => match super::started_by_another(p, gateway) {
                Ok(Some(another)) => {
                    theirs.insert(p.clone(), another);
                    !another
                }
                Ok(None) | Err(_) => true,
            },
        });
    }
    for file in files {
        match ready(open, &file, grace) {
            Ok(true) => out.ready.push(file),
            Ok(false) => out.waiting += 1,
            Err(e) => {
                tracing::warn!(error = %e, "spooled session cannot be read");
                out.waiting += 1;
                out.failed += 1;
            }
        }
    }
    out
}

/// What a sweep remembers of an unclosed file.
#[derive(Clone, Copy, Debug)]
struct Seen {
    /// Its length when last read: an unchanged file's end is not read again.
    len: u64,
    /// When this process's recorder first refused to seal it (see [`super::Seal::Refused`]).
    refused: Option<std::time::Instant>,
}

/// How long a cut-off file this process may not seal (another replica's on a shared volume,
/// or one changed while this process ran) waits in the spool for a process started later to
/// seal it, before it is shipped as it is, unsealed.
pub const UNSEALED_WAIT: Duration = Duration::from_secs(3600);

/// Whether `file` is ready to ship: closed, or cut off (unlocked and left unchanged).
fn ready(open: &mut HashMap<PathBuf, Seen>, file: &Path, grace: Duration) -> Result<bool, ShipError> {
    let read_err = |source| ShipError::Read {
        path: file.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(file).map_err(read_err)?;
    if open.get(file).map(|s| s.len) != Some(meta.len()) {
        if super::last_line_closes(file).map_err(read_err)? {
            return Ok(true);
        }
        let seen = Seen {
            len: meta.len(),
            refused: None,
        };
        open.insert(file.to_path_buf(), seen);
    }
    let settled = meta
        .modified()
        .map_err(read_err)?
        .elapsed()
        .is_ok_and(|age| age >= grace);
    if !settled || super::is_open(file).map_err(read_err)? {
        return Ok(false);
    }
    // Refused a seal here: it waits for a process started later, from when it was first
    // refused (its times say when it was last written, not when it was cut off), then goes as it
    // is; at once in the last sweep before this process exits, as the spool may go with it.
    let waited = |since: std::time::Instant| grace.is_zero() || since.elapsed() >= UNSEALED_WAIT;
    if let Some(since) = open.get(file).and_then(|s| s.refused) {
        return Ok(waited(since));
    }
    // Cut off by a crash: sealed first by a recorder of this directory, when this process has
    // one, so that the archive holds a signed close; shipped as it is otherwise. One being
    // sealed elsewhere is left for the next sweep.
    match super::seal_found(file) {
        super::Seal::Sealed => {
            open.remove(file);
            Ok(true)
        }
        super::Seal::Held => Ok(false),
        super::Seal::Refused => {
            let now = std::time::Instant::now();
            if let Some(seen) = open.get_mut(file) {
                seen.refused = Some(now);
            }
            Ok(waited(now))
        }
        super::Seal::Left => Ok(true),
    }
}

/// `length` bytes of `file` from `offset`, read as they are sent, never whole into memory. Only
/// `length` bytes are read, so the body cannot disagree with its Content-Length.
async fn file_range(file: &Path, offset: u64, length: u64) -> std::io::Result<UploadBody> {
    let mut handle = tokio::fs::File::open(file).await?;
    handle.seek(SeekFrom::Start(offset)).await?;
    let chunks =
        futures_util::stream::try_unfold((handle.take(length), length), |(mut f, left)| async move {
            if left == 0 {
                return Ok(None);
            }
            let mut buf = vec![0u8; CHUNK_BYTES.min(left as usize)];
            let n = f.read(&mut buf).await?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the file shrank while it was uploaded",
                ));
            }
            buf.truncate(n);
            Ok(Some((Frame::data(Bytes::from(buf)), (f, left - n as u64))))
        });
    Ok(BodyExt::boxed(StreamBody::new(chunks)))
}

fn empty() -> UploadBody {
    BodyExt::boxed(http_body_util::Empty::new().map_err(|never| match never {}))
}

/// The `<Code>` of an S3 error document, or `-`.
fn error_code(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    text.split_once("<Code>")
        .and_then(|(_, rest)| rest.split_once("</Code>"))
        .map(|(code, _)| {
            code.chars()
                .filter(|c| c.is_ascii_alphanumeric())
                .take(64)
                .collect()
        })
        .unwrap_or_else(|| "-".into())
}

/// Starts shipping `dir` to `storage` on the current runtime.
pub fn spawn(
    dir: &Path,
    storage: &ObjectStorage,
    gateway: &str,
    metrics: Metrics,
) -> Result<tokio::task::AbortHandle, ShipError> {
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|_| ShipError::Settings("no async runtime to ship sessions on".into()))?;
    let shipper = Shipper::new(dir, storage)?.for_gateway(gateway);
    tracing::info!(dir = %dir.display(), bucket = %storage.bucket, prefix = %storage.prefix, "shipping closed sessions to object storage");
    Ok(runtime.spawn(shipper.run(metrics)).abort_handle())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage(endpoint: Option<&str>, prefix: &str) -> ObjectStorage {
        ObjectStorage {
            bucket: "sessions".into(),
            prefix: prefix.into(),
            endpoint: endpoint.map(Into::into),
            region: "eu-west-1".into(),
            access_key_id: crate::config::SecretValue::new(b"AKIDEXAMPLE".to_vec()),
            secret_access_key: crate::config::SecretValue::new(b"wJalrXUtnFEMI/K7MDENG".to_vec()),
        }
    }

    fn recorder(dir: &Path) -> super::super::Recorder {
        super::super::Recorder::new(dir, agentgate_crds::gateway::RecordingMode::Required, "ns/gw").unwrap()
    }

    #[test]
    fn keys_and_urls() {
        let dir = tempfile::tempdir().unwrap();
        let s = Shipper::new(dir.path(), &storage(Some("http://127.0.0.1:9000"), "gw/main/")).unwrap();
        assert_eq!(
            s.key_of(&dir.path().join("20261203T120000Z-ab.jsonl")),
            "gw/main/20261203T120000Z-ab.jsonl"
        );
        let url = rusty_s3::actions::PutObject::new(&s.bucket, Some(&s.credentials), "k").sign(URL_VALIDITY);
        let url = url.as_str();
        assert!(url.starts_with("http://127.0.0.1:9000/sessions/k?"), "{url}");
        assert!(
            url.contains("X-Amz-Credential=AKIDEXAMPLE%2F")
                && url.contains("%2Feu-west-1%2Fs3%2Faws4_request"),
            "{url}"
        );
        assert!(
            url.contains("X-Amz-Signature=") && !url.contains("wJalr"),
            "{url}"
        );
        assert!(!format!("{s:?}").contains("AKID"));

        let aws = Shipper::new(dir.path(), &storage(None, "")).unwrap();
        let url =
            rusty_s3::actions::PutObject::new(&aws.bucket, Some(&aws.credentials), "k").sign(URL_VALIDITY);
        assert!(
            url.as_str()
                .starts_with("https://sessions.s3.eu-west-1.amazonaws.com/k?"),
            "{url}"
        );
    }

    /// Longer than the recorder's allowance for coarse file times.
    const CTIME_TICK: Duration = Duration::from_millis(50);

    #[test]
    fn closed_or_cut_off_files_are_ready_open_ones_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let earlier = super::super::tests::as_earlier_process(|| recorder(dir.path()));
        let rec = recorder(dir.path());
        let open = rec.start_session(serde_json::json!({})).unwrap();
        open.record("x", serde_json::json!({"big": "y".repeat(40_000)}))
            .unwrap();
        let closed = earlier.start_session(serde_json::json!({})).unwrap();
        closed
            .record("x", serde_json::json!({"big": "y".repeat(40_000)}))
            .unwrap();
        closed.close(serde_json::json!({})).unwrap();
        let stray = dir
            .path()
            .join(format!("19700101T000000Z-{}.jsonl", "c".repeat(32)));
        std::fs::write(&stray, b"{\"type\":\"session.end\"").unwrap();
        let age_by = |p: &Path, by: Duration| {
            let old = std::time::SystemTime::now() - by;
            std::fs::File::options()
                .append(true)
                .open(p)
                .unwrap()
                .set_modified(old)
                .unwrap();
        };
        let age = |p: &Path| age_by(p, UNSEALED_WAIT);

        let mut s = Shipper::new(dir.path(), &storage(Some("http://127.0.0.1:9"), "")).unwrap();
        assert!(s.ready(closed.path(), CUT_OFF_GRACE).unwrap());
        // Open and recent; then open and old: the lock says it is still being written.
        assert!(!s.ready(open.path(), CUT_OFF_GRACE).unwrap());
        assert!(s.open.contains_key(open.path()));
        age(open.path());
        assert!(!s.ready(open.path(), CUT_OFF_GRACE).unwrap());
        // Cut off mid-line by a process that is gone: shipped once it has settled.
        assert!(!s.ready(&stray, CUT_OFF_GRACE).unwrap());
        age(&stray);
        assert!(s.ready(&stray, CUT_OFF_GRACE).unwrap());
        // A whole file nobody holds, unclosed: cut off too.
        let left = dir
            .path()
            .join(format!("19700101T000001Z-{}.jsonl", "1".repeat(32)));
        std::fs::write(&left, b"{\"type\":\"session.start\"}\n").unwrap();
        age(&left);
        assert!(s.ready(&left, CUT_OFF_GRACE).unwrap());
        // A session of this gateway that a crash of an earlier process cut off is sealed by this
        // process's recorder before it is shipped.
        let whole = std::fs::read(closed.path()).unwrap();
        let cut = dir
            .path()
            .join(format!("19700101T000003Z-{}.jsonl", "3".repeat(32)));
        let second_line = memchr::memchr_iter(b'\n', &whole).nth(1).unwrap() + 1;
        std::fs::write(&cut, &whole[..second_line + 10]).unwrap();
        age(&cut);
        // The next process's recorder seals what was cut before it began...
        std::thread::sleep(CTIME_TICK);
        let sealer = recorder(dir.path());
        std::thread::sleep(CTIME_TICK);
        // ...not what changed while it ran (another replica's crash, or a cut or an edit since):
        // that waits for a process started later to seal it, then is shipped as it is.
        let copy = dir
            .path()
            .join(format!("19700101T000004Z-{}.jsonl", "4".repeat(32)));
        std::fs::write(&copy, &whole[..second_line + 10]).unwrap();
        age_by(&copy, 2 * CUT_OFF_GRACE);
        assert!(!s.ready(&copy, CUT_OFF_GRACE).unwrap());
        // Its last write long ago (an idle session) does not shorten the wait: it runs from the
        // refusal.
        age(&copy);
        assert!(!s.ready(&copy, CUT_OFF_GRACE).unwrap());
        let refused_long_ago = std::time::Instant::now() - UNSEALED_WAIT;
        s.open.get_mut(&copy).unwrap().refused = Some(refused_long_ago);
        assert!(s.ready(&copy, CUT_OFF_GRACE).unwrap());
        assert!(!super::super::verify_file(&copy, None).unwrap().closed);
        assert!(s.ready(&cut, CUT_OFF_GRACE).unwrap());
        let report = super::super::verify_file(&cut, Some(sealer.public_key())).unwrap();
        assert!(report.closed && report.signed && report.recovered, "{report:?}");
        assert_eq!(report.events, 3);
        // One of this process's own, found without its end (cut since): shipped as it is,
        // unsealed, since this process's seal would vouch for the cut.
        let own = rec.start_session(serde_json::json!({})).unwrap();
        own.record("x", serde_json::json!({})).unwrap();
        own.close(serde_json::json!({})).unwrap();
        let own_whole = std::fs::read(own.path()).unwrap();
        let own_cut = memchr::memchr_iter(b'\n', &own_whole).nth(1).unwrap() + 1;
        std::fs::write(own.path(), &own_whole[..own_cut]).unwrap();
        age_by(own.path(), 2 * CUT_OFF_GRACE);
        assert!(!s.ready(own.path(), CUT_OFF_GRACE).unwrap());
        // The last sweep before the process exits ships it at once.
        assert!(s.ready(own.path(), Duration::ZERO).unwrap());
        let report = super::super::verify_file(own.path(), None).unwrap();
        assert!(!report.closed && report.events == 2, "{report:?}");
        // A staging file left by a crash mid-creation is never shipped; the sweep removes it.
        let staging = dir
            .path()
            .join(format!(".19700101T000002Z-{}.jsonl.new", "2".repeat(32)));
        std::fs::write(&staging, b"").unwrap();
        age(&staging);
        let listed = scan(dir.path(), &mut HashMap::new(), Duration::ZERO, None);
        assert!(!listed.ready.contains(&staging) && !staging.exists());
        assert!(listed.ready.contains(&left));
    }

    /// A spool shared with another gateway: only this gateway's sessions are shipped; the
    /// other's are remembered and not read again.
    #[test]
    fn another_gateways_sessions_are_not_shipped() {
        let dir = tempfile::tempdir().unwrap();
        let ours = recorder(dir.path()).start_session(serde_json::json!({})).unwrap();
        ours.close(serde_json::json!({})).unwrap();
        let other = super::super::Recorder::new(
            dir.path(),
            agentgate_crds::gateway::RecordingMode::Required,
            "ns/other",
        )
        .unwrap();
        let theirs = other.start_session(serde_json::json!({})).unwrap();
        theirs.close(serde_json::json!({})).unwrap();
        let mut owner = ("ns/gw".to_string(), HashMap::new());
        let listed = scan(dir.path(), &mut HashMap::new(), Duration::ZERO, Some(&mut owner));
        assert_eq!(listed.ready, [ours.path().to_path_buf()]);
        assert_eq!(owner.1.get(theirs.path()), Some(&true));
        assert_eq!(owner.1.get(ours.path()), Some(&false));
        // Without a gateway named, every session is shipped (as tools that ship a copied spool do).
        let listed = scan(dir.path(), &mut HashMap::new(), Duration::ZERO, None);
        assert_eq!(listed.ready.len(), 2);
        // A file gone is forgotten.
        std::fs::remove_file(theirs.path()).unwrap();
        scan(dir.path(), &mut HashMap::new(), Duration::ZERO, Some(&mut owner));
        assert_eq!(owner.1.get(theirs.path()), None);
    }

    #[test]
    fn store_errors_show_their_code_only() {
        assert_eq!(
            error_code(b"<?xml version=\"1.0\"?><Error><Code>SignatureDoesNotMatch</Code><StringToSign>AWS4</StringToSign></Error>"),
            "SignatureDoesNotMatch"
        );
        assert_eq!(error_code(b"<Code><script>x</script></Code>"), "scriptxscript");
        assert_eq!(error_code(b"gateway timeout"), "-");
    }

    /// Nothing listens on the port: the file stays, the failure is counted, and the message holds
    /// neither the signature nor the key.
    #[tokio::test]
    async fn a_failed_upload_leaves_the_file_in_the_spool() {
        let dir = tempfile::tempdir().unwrap();
        let rec = recorder(dir.path());
        let s1 = rec.start_session(serde_json::json!({})).unwrap();
        s1.close(serde_json::json!({})).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut s = Shipper::new(
            dir.path(),
            &storage(Some(&format!("http://127.0.0.1:{port}")), ""),
        )
        .unwrap();
        let err = s.upload(s1.path()).await.unwrap_err().to_string();
        assert!(err.contains("cannot connect to the store"), "{err}");
        assert!(!err.contains("Signature") && !err.contains("AKID"), "{err}");
        assert_eq!(
            s.sweep().await,
            Sweep {
                shipped: 0,
                failed: 1,
                waiting: 1,
                set_aside: 0,
            }
        );
        assert!(s1.path().exists());
    }
}
