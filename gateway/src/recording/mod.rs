//! Session recording: one JSON Lines file per session, each event chained to the previous one by
//! SHA-256 and the closing event signed with the gateway's Ed25519 key (DESIGN.md section 4).
//!
//! Layout: `<dir>/<yyyymmddThhmmssZ>-<session id>.jsonl`, 0600, in a 0700 directory. The start
//! event's data is the caller's plus `gateway` and `key_id`; by convention callers put the
//! principal's name under `identity` and the connection's under `connection`, which
//! `agentgate sessions list` shows and filters on.
//!
//! Signature scheme: `session.end`'s data carries `key_id` (first 16 hex digits of SHA-256 of the
//! raw public key) and `signature`, base64url Ed25519 over [`chain::signing_message`]: the end
//! event's `prev` in hex, which commits to every earlier event, its time, and its data but the
//! signature, so the signature vouches for the whole session and how it closed.
//!
//! A session's file is locked (`flock`) while the session is open; closing it, or the process
//! ending, releases the lock. It is created and locked as `.<name>.new`, then renamed, so no file
//! of a session's name is ever unlocked while its session is open.
//!
//! Callers mask secrets before recording; this module never logs what it records.

pub mod chain;
pub mod cli;
pub mod retention;
pub mod shipping;
pub mod verify;

use std::borrow::Cow;
use std::fs::{DirBuilder, File, OpenOptions};
use std::io::Write;
use std::ops::Range;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use agentgate_crds::gateway::RecordingMode;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use crate::masking::secret::SecretFinder;
use chain::{GENESIS, Timestamp, sha256_hex, signing_message};
pub use verify::{Event, VerifyError, VerifyReport, verify_events, verify_file};

/// Largest encoded line of one event; bigger data is truncated with a `"truncated": true` marker.
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;
/// What callers keep of a request or response body (see [`cap_body`]).
pub const MAX_RECORDED_BODY: usize = 64 * 1024;
/// Longest event type.
pub const MAX_KIND_BYTES: usize = 64;
/// Most events [`Session::record_deferred`] holds before writing them.
pub const MAX_DEFERRED: usize = 64;
/// Largest write buffer a session keeps between writes.
const KEPT_BUFFER: usize = 64 * 1024;
/// The first event of every session.
pub const START: &str = "session.start";
/// The last event of a closed session, signed.
pub const END: &str = "session.end";

/// Whether `path` is a session file as [`Recorder`] names them (`<yyyymmddThhmmssZ>-<32 hex>.jsonl`)
/// and a regular file, not a link: what the shipper and retention may upload or delete, however
/// the directory is shared.
pub fn is_session_file(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    is_session_file_name(name) && std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_file())
}

/// Whether `name` has a session file's shape.
fn is_session_file_name(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() == 16 + 1 + 32 + 6
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'T'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && b[15] == b'Z'
        && b[16] == b'-'
        && b[17..49]
            .iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
        && name.ends_with(".jsonl")
}

/// The staging name of session file `name`, which no sweep, prune or listing takes for a session.
fn staging_name(name: &str) -> String {
    format!(".{name}{STAGING_SUFFIX}")
}

/// What ends a session file's staging name.
const STAGING_SUFFIX: &str = ".new";

/// How long a staging file may stand unlocked before it counts as left by a crash between its
/// creation and its rename (which takes microseconds), and is removed.
pub const STAGING_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

/// Creates session file `name` in `dir`, locked. A session file is locked while its session is
/// open, so a shipper (see [`shipping`]) or retention can tell a file still being written from one
/// whose process died; created under its own name, it would stand unlocked between `open` and
/// `flock`, and a sweep then could ship (and remove) a session just starting. So it is created
/// and locked under a staging name, and renamed (the lock goes with the open file).
fn open_locked(dir: &Path, name: &str) -> std::io::Result<File> {
    let staging = dir.join(staging_name(name));
    let file = OpenOptions::new()
        .append(true)
        .create_new(true)
        .mode(0o600)
        .open(&staging)?;
    #[cfg(test)]
    tests::before_lock(dir);
    let renamed = file
        .try_lock()
        .map_err(std::io::Error::from)
        .and_then(|()| std::fs::rename(&staging, dir.join(name)));
    match renamed {
        Ok(()) => Ok(file),
        Err(e) => {
            let _ = std::fs::remove_file(&staging);
            Err(e)
        }
    }
}

/// Removes the staging files in `dir` (see [`open_locked`]) that are unlocked and were created
/// more than [`STAGING_GRACE`] before `now`: left by a process that died mid-creation. Returns
/// how many.
pub fn remove_stale_staging(dir: &Path, now: std::time::SystemTime) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        let staged = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix('.'))
            .and_then(|n| n.strip_suffix(STAGING_SUFFIX))
            .is_some_and(is_session_file_name);
        let stale = std::fs::symlink_metadata(&path).is_ok_and(|m| {
            m.file_type().is_file()
                && m.modified()
                    .is_ok_and(|t| now.duration_since(t).is_ok_and(|age| age >= STAGING_GRACE))
        });
        if staged && stale && !is_open(&path).unwrap_or(true) && std::fs::remove_file(&path).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Whether a process holds `file`'s lock: its session is open (see [`Recorder::start_session`]).
pub fn is_open(file: &Path) -> std::io::Result<bool> {
    match File::open(file)?.try_lock_shared() {
        Ok(()) => Ok(false),
        Err(std::fs::TryLockError::WouldBlock) => Ok(true),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

/// Why an event was not recorded. Messages carry file names and OS errors, never record contents.
#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    #[error("recording directory {}: {source}", path.display())]
    Directory { path: PathBuf, source: std::io::Error },
    #[error("creating session file {}: {source}", path.display())]
    Create { path: PathBuf, source: std::io::Error },
    #[error("writing session {session}: {source}")]
    Write { session: String, source: std::io::Error },
    #[error("syncing session {session}: {source}")]
    Sync { session: String, source: std::io::Error },
    #[error("session {0} has no file after an earlier failure")]
    Unavailable(String),
    #[error("session {0} is closed")]
    Closed(String),
    #[error(
        "event type must be 1 to {MAX_KIND_BYTES} characters of a-z, 0-9, '.', '_', '-' and not reserved"
    )]
    InvalidKind,
    #[error("event does not fit in {MAX_EVENT_BYTES} bytes even truncated")]
    EventTooLarge,
    #[error("event cannot be encoded as JSON")]
    Encode,
    #[error("signing key: {0}")]
    Key(&'static str),
}

/// Refuses a recording directory that another user may write to, where sessions could be
/// removed or planted before they are verified and shipped (see [`crate::private_dir`]).
fn check_private(dir: &Path) -> std::io::Result<()> {
    match crate::private_dir::check(dir)? {
        None => Ok(()),
        Some(why) => Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("refused: {why}"),
        )),
    }
}

/// Reads an Ed25519 private key from PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`, as
/// `openssl genpkey -algorithm ed25519` writes it) into the DER that [`Recorder::with_key`]
/// takes, with the base64url public key that verifies its signatures.
pub fn signing_key_from_pem(pem: &[u8]) -> Result<(Vec<u8>, String), &'static str> {
    use rustls::pki_types::PrivatePkcs8KeyDer;
    use rustls::pki_types::pem::PemObject;
    let der = PrivatePkcs8KeyDer::from_pem_slice(pem)
        .map_err(|_| "not a PKCS#8 PEM private key (-----BEGIN PRIVATE KEY-----)")?;
    let key = Ed25519KeyPair::from_pkcs8(der.secret_pkcs8_der()).map_err(|_| "not an Ed25519 private key")?;
    let public = URL_SAFE_NO_PAD.encode(key.public_key().as_ref());
    Ok((der.secret_pkcs8_der().to_vec(), public))
}

/// Key id of a raw Ed25519 public key: the first 16 hex digits of its SHA-256.
pub fn key_id(public_key: &[u8]) -> String {
    let mut id = sha256_hex(public_key);
    id.truncate(16);
    id
}

/// A body as recorded: `{"json": …}` for a complete JSON document (see [`CappedBody::json`]),
/// `{"text": …}` when the kept bytes are UTF-8, else `{"base64": …}`, with the total length and
/// whether it was cut to `max` bytes. Serialized straight from the bytes it borrows (or owns,
/// when they were masked first), so recording a body copies it once.
pub fn cap_body(bytes: &[u8], max: usize) -> CappedBody<'_> {
    CappedBody::new(Cow::Borrowed(bytes), max)
}

/// A body's own event (`http.request.body`, `http.response.body`). A typed event, serialized
/// within the record call (not through `json!`), so a hidden secret is replaced in a binary
/// body's bytes too.
#[derive(Serialize)]
pub struct BodyEvent<'a> {
    pub request_id: &'a str,
    pub bytes: u64,
    pub complete: bool,
    pub body: CappedBody<'a>,
}

/// See [`cap_body`].
#[derive(Clone, Debug)]
pub struct CappedBody<'a> {
    kept: Kept<'a>,
    total: usize,
    truncated: bool,
    /// The body stopped before its end (a peer gone mid-stream): what is kept ends where it
    /// stopped, as a cut would.
    unfinished: bool,
}

#[derive(Clone, Debug)]
enum Kept<'a> {
    /// Valid UTF-8.
    Text(Cow<'a, [u8]>),
    Binary(Cow<'a, [u8]>),
    /// One JSON value on one line, embedded as it is.
    Json(Box<RawValue>),
    /// Nothing kept, and why (a body that must be masked and cannot be).
    Withheld(&'static str),
}

impl<'a> CappedBody<'a> {
    /// Caps `bytes` (borrowed or owned) to `max`.
    pub fn new(bytes: Cow<'a, [u8]>, max: usize) -> Self {
        let total = bytes.len();
        let truncated = total > max;
        let keep = match std::str::from_utf8(&bytes[..total.min(max)]) {
            Ok(s) => Some(s.len()),
            // The cut went through a multi-byte character: that is still text, minus the fragment.
            Err(e) if truncated && e.error_len().is_none() => Some(e.valid_up_to()),
            Err(_) => None,
        };
        let (text, keep) = match keep {
            Some(n) => (true, n),
            None => (false, total.min(max)),
        };
        let kept = match bytes {
            Cow::Borrowed(b) => Cow::Borrowed(&b[..keep]),
            Cow::Owned(mut v) => {
                v.truncate(keep);
                Cow::Owned(v)
            }
        };
        Self {
            kept: if text {
                Kept::Text(kept)
            } else {
                Kept::Binary(kept)
            },
            total,
            truncated,
            unfinished: false,
        }
    }

    /// The record of a body of `total` bytes of which nothing is kept, saying `why`.
    pub fn withheld(total: usize, why: &'static str) -> Self {
        Self {
            kept: Kept::Withheld(why),
            total,
            truncated: total > 0,
            unfinished: false,
        }
    }

    /// The record of a body of which only a prefix was kept: `total` is the whole body's length,
    /// and the record says it was cut when that is more than was kept.
    pub fn of_total(mut self, total: usize) -> Self {
        if total > self.total {
            self.total = total;
            self.truncated = true;
        }
        self
    }

    /// The record of a body that stopped before its end when `unfinished`: a hidden secret
    /// the stop went through keeps none of its start, as at a cut.
    pub fn unfinished(mut self, unfinished: bool) -> Self {
        self.unfinished = unfinished;
        self
    }

    /// A JSON body recorded as JSON rather than as an escaped string (readable with any JSON
    /// tool, and no escaping cost): only when it is one valid JSON value, on one line, within
    /// `max` bytes. Anything else is recorded as [`CappedBody::new`] would.
    pub fn json(bytes: Cow<'a, [u8]>, max: usize) -> Self {
        let total = bytes.len();
        // A raw line break would split the event's line: such bodies stay text.
        if total > max || memchr::memchr2(b'\n', b'\r', &bytes).is_some() {
            return CappedBody::new(bytes, max);
        }
        // Parsed again here (into its own copy): the line must stay valid JSON whatever produced
        // the bytes.
        let raw = std::str::from_utf8(&bytes)
            .ok()
            .filter(|text| reader_parses(text))
            .and_then(|text| serde_json::from_str::<Box<RawValue>>(text).ok());
        match raw {
            Some(raw) => CappedBody {
                kept: Kept::Json(raw),
                total,
                truncated: false,
                unfinished: false,
            },
            None => CappedBody::new(bytes, max),
        }
    }
}

/// Deepest a body recorded as JSON may nest: the event around it takes a few of the 128 levels
/// the reader (serde_json) allows.
const MAX_RECORDED_JSON_DEPTH: usize = 96;

/// Whether `verify`, which reads each event into a `serde_json::Value`, reads `text` back inside
/// one. `RawValue` checks less: a lone surrogate escape (`"\ud800"`), a number out of range
/// (`1e400`) and any depth pass it, and the reader's refusal of one such body would make a whole
/// genuine file read as tampered, from that event on. Cheap searches send only bodies with
/// something of those (a `\u` escape of a surrogate, an exponent, a long run of digits, many
/// brackets) to the full checks; every body recorded as JSON goes through here.
fn reader_parses(text: &str) -> bool {
    let b = text.as_bytes();
    let many_brackets = memchr::memchr2_iter(b'{', b'[', b)
        .nth(MAX_RECORDED_JSON_DEPTH)
        .is_some();
    if many_brackets && nesting(b) > MAX_RECORDED_JSON_DEPTH {
        return false;
    }
    let surrogate =
        || memchr::memmem::find_iter(b, b"\\u").any(|i| matches!(b.get(i + 2), Some(b'd' | b'D')));
    // An exponent (`true` and `false` end in an `e` after a letter).
    let exponent = || {
        memchr::memchr2_iter(b'e', b'E', b).any(|i| i > 0 && (b[i - 1].is_ascii_digit() || b[i - 1] == b'.'))
    };
    let suspect = surrogate() || exponent() || long_digit_run(b);
    !suspect || serde_json::from_str::<Value>(text).is_ok()
}

/// Digits in a row past which a number is out of f64's range (about 10^308).
const MAX_DIGIT_RUN: usize = 300;

/// Whether `b` has more than [`MAX_DIGIT_RUN`] digits in a row. Such a run covers two samples
/// half a run apart, so only bytes at that stride are looked at first.
fn long_digit_run(b: &[u8]) -> bool {
    let stride = MAX_DIGIT_RUN / 2;
    (0..b.len()).step_by(stride).any(|i| {
        b[i].is_ascii_digit() && b.get(i + stride).is_some_and(u8::is_ascii_digit) && {
            let start = b[..i]
                .iter()
                .rposition(|c| !c.is_ascii_digit())
                .map_or(0, |p| p + 1);
            let end = b[i..]
                .iter()
                .position(|c| !c.is_ascii_digit())
                .map_or(b.len(), |p| i + p);
            end - start > MAX_DIGIT_RUN
        }
    })
}

/// How deep `b`'s arrays and objects nest, brackets inside strings not counted.
fn nesting(b: &[u8]) -> usize {
    let (mut depth, mut deepest, mut in_string, mut i) = (0usize, 0usize, false, 0);
    while i < b.len() {
        match (in_string, b[i]) {
            (true, b'\\') => i += 1,
            (true, b'"') | (false, b'"') => in_string = !in_string,
            (false, b'{' | b'[') => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            (false, b'}' | b']') => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    deepest
}

impl CappedBody<'_> {
    /// Why [`Self::for_reading`] is not the whole body, if it is not: it was cut, is not text,
    /// or was withheld.
    pub fn unreadable(&self) -> Option<String> {
        match &self.kept {
            Kept::Binary(_) => Some(format!("{} bytes, not text", self.total)),
            Kept::Withheld(why) => Some(format!("{} bytes, withheld: {why}", self.total)),
            _ if self.truncated => Some(format!("{} bytes, more than the record keeps", self.total)),
            _ => None,
        }
    }

    /// The body as a person reads it (an approver): text and JSON as they are, `…` where cut;
    /// binary and withheld bodies as a note of their size.
    pub fn for_reading(&self) -> String {
        let cut = if self.truncated { "…" } else { "" };
        match &self.kept {
            Kept::Text(text) => format!("{}{cut}", String::from_utf8_lossy(text)),
            Kept::Json(raw) => format!("{}{cut}", raw.get()),
            Kept::Binary(_) => format!("({} bytes, not text)", self.total),
            Kept::Withheld(why) => format!("({} bytes, withheld: {why})", self.total),
        }
    }
}

/// How many bytes at the end of `kept` could be the start of `secret`, raw or escaped (not the
/// whole secret, which the scrub finds): what a cut through the secret left. Begins on an ASCII
/// byte, so a cut there keeps text whole.
pub(crate) fn partial_secret_at_end(kept: &[u8], secret: &[u8]) -> usize {
    SecretFinder::new(&[secret]).map_or(0, |f| f.unfinished_at_end(kept))
}

/// `kept` without the start of a hidden secret that a cut left at its end.
fn without_partial_secret(kept: &[u8]) -> &[u8] {
    let cut = HIDING.with(|h| h.borrow().as_ref().map_or(0, |h| h.unfinished_at_end(kept)));
    &kept[..kept.len() - cut]
}

impl Serialize for CappedBody<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(3))?;
        // Cut before a hidden secret ended, its start would pass the scrub, which looks for it
        // whole. Secrets are printable ASCII, so text stays cut on a character boundary.
        fn kept(b: &[u8], cut: bool) -> &[u8] {
            if cut { without_partial_secret(b) } else { b }
        }
        let cut = self.truncated || self.unfinished;
        match &self.kept {
            Kept::Text(text) => {
                let text = std::str::from_utf8(kept(text, cut)).map_err(serde::ser::Error::custom)?;
                m.serialize_entry("text", text)?;
            }
            Kept::Binary(b) => {
                // Encoded, a hidden secret would pass the event's scrub: replaced in the bytes.
                let b = kept(b, cut);
                let scrubbed = HIDING.with(|h| h.borrow().as_ref().and_then(|h| h.replaced(b, REDACTED)));
                m.serialize_entry("base64", &STANDARD.encode(scrubbed.as_deref().unwrap_or(b)))?
            }
            Kept::Json(raw) => m.serialize_entry("json", raw)?,
            Kept::Withheld(why) => m.serialize_entry("withheld", why)?,
        }
        m.serialize_entry("bytes", &self.total)?;
        m.serialize_entry("truncated", &self.truncated)?;
        m.end()
    }
}

struct Inner {
    dir: PathBuf,
    mode: RecordingMode,
    gateway: String,
    /// [`process_id`], which tests may stand in for another process's.
    process: String,
    /// When this process began recording (see [`process_started`]); in tests, when this
    /// recorder was made.
    started: std::time::SystemTime,
    key: Ed25519KeyPair,
    public_key: String,
    key_id: String,
    failures: AtomicU64,
    /// The sessions started here, so that shutdown can close those still open (see
    /// [`Recorder::close_open`]); dead entries are pruned as the list grows.
    open: Mutex<Vec<std::sync::Weak<Session>>>,
}

/// Opens sessions in one directory and signs them with one key.
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<Inner>,
}

/// Longest a data path keeps appending to one session before closing (signing) it and starting
/// the next: a session is signed, and can be shipped, only once closed, and an agent that keeps
/// one connection open for days would otherwise keep all it did unsigned and local.
pub const MAX_SESSION_AGE: std::time::Duration = std::time::Duration::from_secs(15 * 60);

impl Session {
    /// Whether the session has reached [`MAX_SESSION_AGE`].
    pub fn is_old(&self) -> bool {
        self.is_old_at(std::time::Instant::now())
    }

    fn is_old_at(&self, now: std::time::Instant) -> bool {
        now.saturating_duration_since(self.began) >= MAX_SESSION_AGE
    }
}

impl Recorder {
    /// Whether `session` was started by this recorder (and so records in its mode and place).
    pub fn started(&self, session: &Session) -> bool {
        Arc::ptr_eq(&self.inner, &session.inner)
    }
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("dir", &self.inner.dir)
            .field("mode", &self.inner.mode)
            .field("key_id", &self.inner.key_id)
            .finish_non_exhaustive()
    }
}

impl Recorder {
    /// Creates `dir` (mode 0700) if needed and a fresh signing key. `gateway` = "namespace/name",
    /// written into every session's start event.
    pub fn new(dir: impl Into<PathBuf>, mode: RecordingMode, gateway: &str) -> Result<Self, RecordingError> {
        let key = Ed25519KeyPair::generate().map_err(|_| RecordingError::Key("cannot generate"))?;
        Self::build(dir.into(), mode, gateway, key)
    }

    /// Like [`Recorder::new`], signing with a given Ed25519 key (PKCS#8 v1 or v2, DER; see
    /// [`signing_key_from_pem`]).
    pub fn with_key(
        dir: impl Into<PathBuf>,
        mode: RecordingMode,
        gateway: &str,
        pkcs8_der: &[u8],
    ) -> Result<Self, RecordingError> {
        let key = Ed25519KeyPair::from_pkcs8(pkcs8_der)
            .map_err(|_| RecordingError::Key("not an Ed25519 PKCS#8 key"))?;
        Self::build(dir.into(), mode, gateway, key)
    }

    fn build(
        dir: PathBuf,
        mode: RecordingMode,
        gateway: &str,
        key: Ed25519KeyPair,
    ) -> Result<Self, RecordingError> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .and_then(|()| check_private(&dir))
            .map_err(|source| RecordingError::Directory {
                path: dir.clone(),
                source,
            })?;
        let public = key.public_key().as_ref();
        let inner = Arc::new(Inner {
            public_key: URL_SAFE_NO_PAD.encode(public),
            key_id: key_id(public),
            dir,
            mode,
            gateway: gateway.to_string(),
            #[cfg(not(test))]
            process: process_id().to_string(),
            #[cfg(test)]
            process: tests::process_id_for_new_recorders(),
            #[cfg(not(test))]
            started: process_started(),
            #[cfg(test)]
            started: std::time::SystemTime::now(),
            key,
            failures: AtomicU64::new(0),
            open: Mutex::new(Vec::new()),
        });
        register_sealer(&inner);
        Ok(Self { inner })
    }

    pub fn mode(&self) -> RecordingMode {
        self.inner.mode
    }

    /// The base64url Ed25519 public key that verifies closing signatures.
    pub fn public_key(&self) -> &str {
        &self.inner.public_key
    }

    /// Events that could not be recorded so far (start, record and close), for a metric.
    pub fn failures(&self) -> u64 {
        self.inner.failures.load(Ordering::Relaxed)
    }

    /// Opens a new session file and writes its `session.start` event with `start` as data.
    ///
    /// In `BestEffort` mode a session whose file cannot be created is still returned: its events
    /// are counted as failures and dropped, so callers need no second code path.
    pub fn start_session(&self, start: Value) -> Result<Arc<Session>, RecordingError> {
        let mut raw = [0u8; 16];
        aws_lc_rs::rand::fill(&mut raw).map_err(|_| RecordingError::Key("random generator failed"))?;
        let id = chain::hex(&raw);
        let name = format!("{}-{id}.jsonl", Timestamp::now().compact());
        let path = self.inner.dir.join(&name);
        let opened = open_locked(&self.inner.dir, &name);
        let (file, error) = match opened {
            Ok(file) => (Some(file), None),
            Err(source) => (
                None,
                Some(RecordingError::Create {
                    path: path.clone(),
                    source,
                }),
            ),
        };
        let session = Session {
            inner: self.inner.clone(),
            id,
            path,
            began: std::time::Instant::now(),
            state: Mutex::new(State::at(file, 0, GENESIS.to_string(), 0)),
        };
        let mut data = into_object(start);
        data.insert("gateway".into(), json!(self.inner.gateway));
        data.insert("process".into(), json!(self.inner.process));
        data.insert("key_id".into(), json!(self.inner.key_id));
        let created = error.is_none();
        let result = match error {
            Some(e) => Err(e),
            None => {
                let mut state = session.lock();
                #[cfg(test)]
                tests::before_start(&mut state);
                session.append(&mut state, START, &Value::Object(data))
            }
        };
        if result.is_err() {
            // A file without its start would read as tampered evidence, and events after it as
            // a chain without a start: it goes (its lock is still held, so no sweep has taken
            // it), and BestEffort counts the session's events as lost.
            let mut state = session.lock();
            if created && state.len == 0 {
                // Removed before the handle (and with it the lock) goes.
                let _ = std::fs::remove_file(&session.path);
                state.file = None;
            }
        }
        if let Err(e) = session.settle(START, result) {
            // Nothing to close: the caller refuses the operation and drops the session.
            session.lock().closed = true;
            return Err(e);
        }
        let session = Arc::new(session);
        let mut open = self.inner.open.lock().unwrap_or_else(PoisonError::into_inner);
        if open.len() == open.capacity() {
            // Before the list would grow: amortized, so starting a session stays O(1).
            open.retain(|s| s.strong_count() > 0);
        }
        open.push(Arc::downgrade(&session));
        Ok(session)
    }

    /// A handle that does not keep this recorder alive: a recorder replaced on reload lives on
    /// only as long as the sessions it opened, and shutdown must still find those.
    pub fn downgrade(&self) -> WeakRecorder {
        WeakRecorder(Arc::downgrade(&self.inner))
    }

    /// Closes every session of this recorder that is still open, with `data` as the closing
    /// event's (signed, and synced like any close). At shutdown, once connections have had their
    /// time: a session cut off later would close only when the process drops it ("dropped"),
    /// after the spool has been shipped. Returns how many were closed.
    pub fn close_open(&self, data: &Value) -> usize {
        let open: Vec<Arc<Session>> = self
            .inner
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .collect();
        let mut closed = 0;
        for s in open {
            let was_open = !s.lock().closed;
            if was_open && s.close(data.clone()).is_ok() {
                closed += 1;
            }
        }
        closed
    }
}

/// What [`Recorder::seal_cut_off`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Sealed {
    /// Cut-off sessions now closed with a signed end.
    pub sealed: usize,
    /// Unclosed files that do not verify, left as they are: sealing them would vouch for edits.
    pub unverifiable: usize,
}

impl Recorder {
    /// Closes, with a signed `session.end` (`"reason": "cut off"`), every session file of this
    /// recorder's directory that no process holds and that never closed: what a crash or a kill
    /// leaves. Without it such a file is vouched for by nothing, and an auditor has to accept open
    /// files (`verify --allow-open`), which accepts invented ones too. A partial last line (the
    /// write the crash interrupted) is cut off first, and the end says how many bytes went
    /// (`recovery.dropped_bytes`). Only files whose chain verifies are sealed, and the end says
    /// the recovering gateway sealed it (`recovery`), not the one that recorded it.
    pub fn seal_cut_off(&self) -> Sealed {
        let mut out = Sealed::default();
        let Ok(entries) = std::fs::read_dir(&self.inner.dir) else {
            return out;
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_session_file(p))
            .collect();
        files.sort();
        for path in files {
            match self.seal(&path) {
                Ok(Seal::Sealed) => out.sealed += 1,
                Ok(_) => {}
                Err(e) => {
                    out.unverifiable += 1;
                    tracing::error!(file = %path.display(), error = %e, "a cut-off session file does not verify; left unsealed");
                }
            }
        }
        out
    }

    /// Seals one file if it is cut off and this gateway's (its start names it).
    fn seal(&self, path: &Path) -> Result<Seal, String> {
        // Cheap first: a closed file's last line says so, without reading the rest.
        if last_line_closes(path).unwrap_or(false) {
            return Ok(Seal::Left);
        }
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("cannot open: {e}"))?;
        // Held: a live session, another sealer, or a shipper uploading it.
        if file.try_lock().is_err() {
            return Ok(Seal::Held);
        }
        let mut start: Option<(Option<String>, Option<String>)> = None;
        let report = verify::verify_events(path, None, |e| {
            if start.is_none() {
                start = Some((verify::text(&e.data, "gateway"), verify::text(&e.data, "process")));
            }
        })
        .map_err(|e| e.to_string())?;
        if report.closed {
            return Ok(Seal::Left);
        }
        let (gateway, process) = start.unwrap_or_default();
        // A directory shared by gateways (one volume for several): each seals its own.
        if gateway.as_deref() != Some(self.inner.gateway.as_str()) {
            return Ok(Seal::Left);
        }
        // This process closes every session it starts, so one of its own found unclosed either
        // failed to close (a full disk) or had its signed end cut away since: sealing it would
        // sign whatever was left. It stays unclosed, for `verify` to report.
        if process.as_deref() == Some(self.inner.process.as_str()) {
            tracing::error!(file = %path.display(), "a session of this process is unclosed and unlocked: its close failed, or its end was cut off since; left unsealed");
            return Ok(Seal::Refused);
        }
        // Nor does it seal what changed while it ran (its status change time, which no one sets
        // at will): a crash of another replica on the same volume, which a process started
        // later seals, or a cut or an edit (the start rewritten to name another process), which
        // a seal would sign.
        let meta = file.metadata().map_err(|e| format!("cannot stat: {e}"))?;
        let changed = std::time::UNIX_EPOCH
            + std::time::Duration::new(
                u64::try_from(meta.ctime()).unwrap_or(0),
                u32::try_from(meta.ctime_nsec()).unwrap_or(0),
            );
        if changed + CTIME_SLACK >= self.inner.started {
            tracing::warn!(file = %path.display(), "an unclosed session file changed while this process ran: left for a process started later to seal");
            return Ok(Seal::Refused);
        }
        // Stat'ed above, under the lock: nothing has changed it since.
        let length = meta.len();
        let dropped = length.saturating_sub(report.bytes);
        file.set_len(report.bytes)
            .map_err(|e| format!("cannot cut the partial line: {e}"))?;
        let mut len = report.bytes;
        if report.unterminated {
            (&file)
                .write_all(b"\n")
                .map_err(|e| format!("cannot write: {e}"))?;
            len += 1;
        }
        let session = Session {
            inner: self.inner.clone(),
            id: report.session,
            path: path.to_path_buf(),
            began: std::time::Instant::now(),
            state: Mutex::new(State::at(Some(file), report.events, report.last_hash, len)),
        };
        let end = json!({
            "reason": "cut off",
            "recovery": {"gateway": self.inner.gateway, "process": self.inner.process, "dropped_bytes": dropped},
        });
        let sealed = session.close_inner(end).map_err(|e| e.to_string());
        // Not closed again when dropped, as "dropped": the file stays as the failure left it.
        session.lock().closed = true;
        sealed.map(|()| Seal::Sealed)
    }
}

/// This process's id in the recordings (`process` in each start and in a seal's `recovery`):
/// random, so that a process can tell its own sessions from those a crash of an earlier one cut
/// off, and `verify` can refuse a seal made by the process that recorded the session.
pub(crate) fn process_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let mut raw = [0u8; 8];
        // A failed generator leaves zeros: a weaker id, never a refusal to record.
        let _ = aws_lc_rs::rand::fill(&mut raw);
        chain::hex(&raw)
    })
}

/// How far a file's times may lag the clock: the kernel stamps them from a coarse clock, a tick
/// behind. A file changed this close before a process began counts as changed since.
const CTIME_SLACK: std::time::Duration = std::time::Duration::from_millis(20);

/// When this process made its first recorder: files a crash cut off are older.
#[cfg(not(test))]
fn process_started() -> std::time::SystemTime {
    static STARTED: std::sync::OnceLock<std::time::SystemTime> = std::sync::OnceLock::new();
    *STARTED.get_or_init(std::time::SystemTime::now)
}

/// What sealing a file did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Seal {
    Sealed,
    /// Closed already, another gateway's, or no recorder of its directory here.
    Left,
    /// Cut off, but not for this process to seal: its own session (a close failed, or its end
    /// was cut since), or changed while this process ran (another replica's crash, or an edit).
    Refused,
    /// Someone holds its lock (a live session, another sealer, a shipper uploading it).
    Held,
}

/// Recorders by directory, so that whoever finds a cut-off session file (the shipper) can have
/// it sealed by a recorder of its directory.
static SEALERS: Mutex<Vec<(PathBuf, std::sync::Weak<Inner>)>> = Mutex::new(Vec::new());

fn register_sealer(inner: &Arc<Inner>) {
    let mut sealers = SEALERS.lock().unwrap_or_else(PoisonError::into_inner);
    sealers.retain(|(_, w)| w.strong_count() > 0);
    sealers.push((inner.dir.clone(), Arc::downgrade(inner)));
}

/// Seals `file` (see [`Recorder::seal_cut_off`]) with the latest live recorder of its directory.
pub(crate) fn seal_found(file: &Path) -> Seal {
    let Some(dir) = file.parent() else {
        return Seal::Left;
    };
    let recorder = SEALERS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .rev()
        .find_map(|(d, w)| (d == dir).then(|| w.upgrade()).flatten());
    let Some(inner) = recorder else {
        return Seal::Left;
    };
    match (Recorder { inner }).seal(file) {
        Ok(outcome) => outcome,
        Err(e) => {
            tracing::error!(file = %file.display(), error = %e, "a cut-off session file does not verify; left unsealed");
            Seal::Left
        }
    }
}

/// Whether `file`'s start event names a gateway other than `gateway`: a spool shared by two
/// gateways holds the other's sessions, which are not this one's to ship or prune. `None` while
/// its first line is not complete.
pub(crate) fn started_by_another(file: &Path, gateway: &str) -> std::io::Result<Option<bool>> {
    use std::io::{BufRead, Read};
    let mut line = Vec::new();
    std::io::BufReader::new(File::open(file)?.take(TAIL_BYTES)).read_until(b'\n', &mut line)?;
    if line.last() != Some(&b'\n') {
        return Ok(None);
    }
    let start: serde_json::Value = serde_json::from_slice(&line).unwrap_or_default();
    Ok(Some(
        start["data"]["gateway"].as_str().is_some_and(|g| g != gateway),
    ))
}

/// Bytes read from a file's end to find its last line (longer lines are events with large
/// bodies, which are never the closing event).
const TAIL_BYTES: u64 = 64 * 1024;

/// Whether the file's last complete line is a `session.end` event (cheap: reads the tail only).
/// A partial last line (no newline) means the session did not close.
pub(crate) fn last_line_closes(file: &Path) -> std::io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = File::open(file)?;
    let len = f.metadata()?.len();
    let start = len.saturating_sub(TAIL_BYTES);
    f.seek(SeekFrom::Start(start))?;
    let mut tail = Vec::with_capacity((len - start) as usize);
    f.read_to_end(&mut tail)?;
    let Some(body) = tail.strip_suffix(b"\n") else {
        return Ok(false);
    };
    let line = match memchr::memrchr(b'\n', body) {
        Some(i) => &body[i + 1..],
        // The whole tail is one line: only trustworthy when it is the whole file.
        None if start == 0 => body,
        None => return Ok(false),
    };
    let event: serde_json::Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        Err(_) => return Ok(false),
    };
    Ok(event["type"] == END)
}

/// How often [`close_when_released`] looks whether the last other holder is done.
const RELEASE_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// Closes `session` with `end` (off the async workers) once nothing else holds it, or after
/// `limit` all the same: a session retired while requests still use it (other HTTP/2 streams, a
/// watch) takes their events first instead of refusing them as closed.
pub async fn close_when_released(session: Arc<Session>, end: Value, limit: std::time::Duration) {
    let mut waited = std::time::Duration::ZERO;
    while Arc::strong_count(&session) > 1 && waited < limit {
        tokio::time::sleep(RELEASE_POLL).await;
        waited += RELEASE_POLL;
    }
    let _ = tokio::task::spawn_blocking(move || {
        if let Err(e) = session.close(end) {
            tracing::warn!(error = %e, "closing a session record failed");
        }
    })
    .await;
}

/// See [`Recorder::downgrade`].
#[derive(Clone, Debug)]
pub struct WeakRecorder(std::sync::Weak<Inner>);

impl WeakRecorder {
    /// The recorder, while any session it opened (or any other handle) is alive.
    pub fn upgrade(&self) -> Option<Recorder> {
        self.0.upgrade().map(|inner| Recorder { inner })
    }
}

struct State {
    /// None once closed, or when the file was lost to a failure it could not be repaired from.
    file: Option<File>,
    seq: u64,
    prev: String,
    /// Bytes of complete events: a failed write is cut back to this.
    len: u64,
    closed: bool,
    /// Deferred events (kind, timestamp, data as JSON), written with the next event.
    deferred: Vec<(String, String, String)>,
    /// The lines of one write, kept between writes so an event allocates no buffer.
    buf: Vec<u8>,
    /// The data of the event being appended, kept likewise.
    json: Vec<u8>,
    /// The secrets replaced by `[REDACTED]` wherever they appear in an event, however spelled
    /// (see [`Session::hide`]), and their finder, built once per secret added.
    hidden: Vec<Box<[u8]>>,
    hider: Option<Arc<SecretFinder>>,
    /// Events that never reached the file: failed writes (refused in Required mode, swallowed in
    /// BestEffort), deferred events dropped past [`MAX_DEFERRED`], events after the close. The
    /// signed end says how many (`unrecorded_events`), so the chain's unbroken `seq` does not
    /// vouch for a session with holes.
    lost: u64,
}

impl State {
    /// A session's state with `len` bytes of events written, the last `seq - 1` hashing to
    /// `prev`.
    fn at(file: Option<File>, seq: u64, prev: String, len: u64) -> Self {
        Self {
            file,
            seq,
            prev,
            len,
            closed: false,
            deferred: Vec::new(),
            buf: Vec::new(),
            json: Vec::new(),
            hidden: Vec::new(),
            hider: None,
            lost: 0,
        }
    }
}

/// One recorded session. Shared by a connection's tasks; events are appended in lock order.
pub struct Session {
    inner: Arc<Inner>,
    id: String,
    path: PathBuf,
    /// When the session began (see [`MAX_SESSION_AGE`]).
    began: std::time::Instant,
    state: Mutex<State>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// The mode of the recorder that started the session.
    pub fn mode(&self) -> RecordingMode {
        self.inner.mode
    }

    /// 32 random hex digits.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The session's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// From now on, writes `secret` as `[REDACTED]` wherever it appears in an event of this
    /// session: the agent's own token, which a client may also send in a header of another
    /// name, a query or a body, where no rule would know it for a secret, and an upstream may
    /// echo escaped (`%2B`, `&#43;`, `\u002b`: see [`SecretFinder`]). Only secrets of at least
    /// [`MIN_HIDDEN_BYTES`] printable ASCII characters that JSON writes as they are (no `"` or
    /// `\`), as bearer tokens are; the last [`MAX_HIDDEN`] given are kept.
    pub fn hide(&self, secret: &[u8]) {
        let mut state = self.lock();
        // Every request of a connection presents the same token: the common case is a compare.
        if state.hidden.iter().any(|h| **h == *secret) {
            return;
        }
        let fits = secret.len() >= MIN_HIDDEN_BYTES
            && secret.len() <= MAX_EVENT_BYTES
            && secret
                .iter()
                .all(|b| b.is_ascii_graphic() && *b != b'"' && *b != b'\\');
        if !fits {
            return;
        }
        if state.hidden.len() >= MAX_HIDDEN {
            state.hidden.remove(0);
        }
        state.hidden.push(Box::from(secret));
        let secrets: Vec<&[u8]> = state.hidden.iter().map(|s| &**s).collect();
        state.hider = SecretFinder::new(&secrets);
    }

    /// Appends one event, written to the OS before returning. `Required`: an error means the
    /// event is not on record and the caller must refuse the operation. `BestEffort`: failures are
    /// logged and counted, and `Ok` returned.
    pub fn record(&self, kind: &str, data: impl Serialize) -> Result<(), RecordingError> {
        let result = if kind == START || kind == END {
            Err(RecordingError::InvalidKind)
        } else {
            self.append(&mut self.lock(), kind, &data)
        };
        self.settle(kind, result)
    }

    /// Queues one event to be written with the next [`record`](Self::record) (or the close),
    /// in one write: for events that follow what they record (a result already sent), so a
    /// statement and the previous statement's result cost one system call. Its timestamp is
    /// taken now. At most [`MAX_DEFERRED`] events wait; then they are written at once.
    pub fn record_deferred(&self, kind: &str, data: impl Serialize) -> Result<(), RecordingError> {
        let result = if kind == START || kind == END || !valid_kind(kind) {
            Err(RecordingError::InvalidKind)
        } else {
            let ts = Timestamp::now().rfc3339();
            let hidden = self.lock().hider.clone();
            let mut json = Vec::new();
            let json = encode_hidden(&hidden, &data, &mut json)
                .and_then(|()| String::from_utf8(json).map_err(|_| RecordingError::Encode));
            let mut state = self.lock();
            if state.closed {
                Err(RecordingError::Closed(self.id.clone()))
            } else {
                json.and_then(|json| {
                    state.deferred.push((kind.to_string(), ts, json));
                    if state.deferred.len() >= MAX_DEFERRED {
                        self.write_deferred(&mut state)
                    } else {
                        Ok(())
                    }
                })
            }
        };
        self.settle(kind, result)
    }

    /// Writes the signed `session.end` event with `data`, then fsyncs the file and its directory.
    /// Idempotent; done with `{"reason":"dropped"}` on drop if the caller did not.
    pub fn close(&self, data: Value) -> Result<(), RecordingError> {
        let result = self.close_inner(data);
        self.settle(END, result)
    }

    fn close_inner(&self, data: Value) -> Result<(), RecordingError> {
        let mut state = self.lock();
        if state.closed {
            return Ok(());
        }
        // Deferred events go before the end, so the signature covers them. Ones that cannot be
        // written are dropped, and the end says how many: written later, after the end's
        // signature was made over the chain without them, they would break a genuine file.
        if let Err(e) = self.write_deferred(&mut state) {
            self.inner.failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(session = %self.id, error = %e, "deferred session events not recorded");
            // Kept in the state: should the end fail too, a later close still counts them.
            state.lost += std::mem::take(&mut state.deferred).len() as u64;
        }
        let lost = state.lost;
        let mut data = into_object(data);
        if lost > 0 {
            data.insert("unrecorded_events".into(), json!(lost));
        }
        data.insert("key_id".into(), json!(self.inner.key_id));
        // Signed as it will be written: with the session's secrets hidden, as every event is.
        let mut data = match serde_json::from_slice(&self.encode_data(&mut state, &Value::Object(data))?) {
            Ok(Value::Object(map)) => map,
            _ => return Err(RecordingError::Encode),
        };
        let ts = Timestamp::now().rfc3339();
        let signature = self
            .inner
            .key
            .try_sign(&signing_message(&state.prev, &ts, &data))
            .map_err(|_| RecordingError::Key("signing failed"))?;
        data.insert(
            "signature".into(),
            json!(URL_SAFE_NO_PAD.encode(signature.as_ref())),
        );
        // Hidden already: scrubbed again, the line could differ from what was signed (a secret
        // ending in `[` finds itself anew before `[REDACTED]`).
        let hider = state.hider.take();
        let appended = self.append_at(&mut state, END, &Value::Object(data), Some(ts));
        state.hider = hider;
        appended?;
        state.closed = true;
        let sync = |e| RecordingError::Sync {
            session: self.id.clone(),
            source: e,
        };
        if let Some(file) = state.file.take() {
            file.sync_all().map_err(sync)?;
        }
        // The file's directory entry must survive a crash too.
        File::open(&self.inner.dir)
            .and_then(|d| d.sync_all())
            .map_err(sync)
    }

    /// Writes the deferred events alone.
    fn write_deferred(&self, state: &mut State) -> Result<(), RecordingError> {
        self.write_events(state, None, None)
    }

    /// `data` as JSON with the session's secrets hidden: what an event's line carries.
    fn encode_data(&self, state: &mut State, data: &impl Serialize) -> Result<Vec<u8>, RecordingError> {
        let mut json = Vec::new();
        encode_hidden(&state.hider, data, &mut json)?;
        Ok(json)
    }

    fn append(&self, state: &mut State, kind: &str, data: &impl Serialize) -> Result<(), RecordingError> {
        self.append_at(state, kind, data, None)
    }

    /// Appends an event stamped `ts` (now when `None`).
    fn append_at(
        &self,
        state: &mut State,
        kind: &str,
        data: &impl Serialize,
        ts: Option<String>,
    ) -> Result<(), RecordingError> {
        if !valid_kind(kind) {
            return Err(RecordingError::InvalidKind);
        }
        if state.closed {
            return Err(RecordingError::Closed(self.id.clone()));
        }
        // Encoded into a buffer the session keeps: growing a fresh String to a response body's
        // size took several allocations per event.
        let mut json = std::mem::take(&mut state.json);
        json.clear();
        let result = encode_hidden(&state.hider.clone(), data, &mut json)
            .and_then(|()| std::str::from_utf8(&json).map_err(|_| RecordingError::Encode))
            .and_then(|text| self.write_events(state, Some((kind, text)), ts));
        if json.capacity() <= KEPT_BUFFER {
            state.json = json;
        }
        result
    }

    /// Encodes the deferred events, then `event`, chained in that order, and writes them in one
    /// system call. The chain advances only once the bytes are written.
    fn write_events(
        &self,
        state: &mut State,
        event: Option<(&str, &str)>,
        ts: Option<String>,
    ) -> Result<(), RecordingError> {
        let deferred = std::mem::take(&mut state.deferred);
        if deferred.is_empty() && event.is_none() {
            return Ok(());
        }
        if state.file.is_none() {
            return Err(RecordingError::Unavailable(self.id.clone()));
        }
        let (mut seq, mut prev) = (state.seq, state.prev.clone());
        let mut lines = std::mem::take(&mut state.buf);
        lines.clear();
        let now = event.map(|_| ts.unwrap_or_else(|| Timestamp::now().rfc3339()));
        let pending = deferred
            .iter()
            .map(|(kind, ts, data)| (kind.as_str(), ts.as_str(), data.as_str()));
        let last = event
            .zip(now.as_deref())
            .map(|((kind, data), ts)| (kind, ts, data));
        let encoded = pending.chain(last).try_for_each(|(kind, ts, data)| {
            let head = chain::EventHead {
                seq,
                ts,
                session: &self.id,
                kind,
                prev: &prev,
            };
            prev = head.encode(data, &mut lines)?;
            seq += 1;
            Ok(())
        });
        let written = encoded.and_then(|()| self.write_lines(state, &lines));
        // Keep the buffer for the next write unless one large event grew it.
        if lines.capacity() <= KEPT_BUFFER {
            state.buf = lines;
        }
        if written.is_err() {
            if deferred.len() < MAX_DEFERRED {
                // The chain did not advance: the deferred events wait for the next write
                // (another request's on a shared session may succeed) rather than being lost
                // with this one; bounded, so a file that keeps failing does not hold them forever.
                state.deferred = deferred;
            } else {
                state.lost += deferred.len() as u64;
            }
        }
        written?;
        state.seq = seq;
        state.prev = prev;
        Ok(())
    }

    /// Writes whole lines to the file, or cuts the file back to its last whole line.
    fn write_lines(&self, state: &mut State, lines: &[u8]) -> Result<(), RecordingError> {
        if lines.is_empty() {
            return Ok(());
        }
        let Some(file) = state.file.as_mut() else {
            return Err(RecordingError::Unavailable(self.id.clone()));
        };
        if let Err(source) = file.write_all(lines) {
            // A partial line would make every later event unverifiable: cut it off, or stop
            // writing to this file at all.
            if file.set_len(state.len).is_err() {
                state.file = None;
            }
            return Err(RecordingError::Write {
                session: self.id.clone(),
                source,
            });
        }
        state.len += lines.len() as u64;
        Ok(())
    }

    /// Applies the recording mode to an outcome.
    fn settle(&self, kind: &str, result: Result<(), RecordingError>) -> Result<(), RecordingError> {
        let Err(error) = result else { return Ok(()) };
        self.inner.failures.fetch_add(1, Ordering::Relaxed);
        if kind != END {
            self.lock().lost += 1;
        }
        let kind = if matches!(error, RecordingError::InvalidKind) {
            "invalid"
        } else {
            kind
        };
        tracing::warn!(session = %self.id, event = kind, %error, "session event not recorded");
        match self.inner.mode {
            RecordingMode::Required => Err(error),
            RecordingMode::BestEffort => Ok(()),
        }
    }

    /// Points the open session at /dev/full, where every write fails with ENOSPC, even for root.
    #[cfg(test)]
    pub(crate) fn break_disk(&self) {
        self.lock().file = Some(
            std::fs::OpenOptions::new()
                .append(true)
                .open("/dev/full")
                .unwrap(),
        );
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; should that change, the state is still whole.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if !self.lock().closed {
            let _ = self.close(json!({"reason": "dropped"}));
        }
    }
}

/// Shortest secret [`Session::hide`] takes: shorter ones would match ordinary text.
pub const MIN_HIDDEN_BYTES: usize = 16;
/// Secrets a session hides at once (a connection's agent refreshing its token keeps a few).
pub const MAX_HIDDEN: usize = 4;

thread_local! {
    /// The secrets of the session whose event is being encoded on this thread (see [`hiding`]).
    static HIDING: std::cell::RefCell<Option<Arc<SecretFinder>>> = const { std::cell::RefCell::new(None) };
}

/// Runs `encode` with `hidden` as the secrets [`CappedBody`] replaces in binary bodies before
/// encoding them (base64 hides a secret from the scrub of the encoded event).
fn hiding<T>(hidden: &Option<Arc<SecretFinder>>, encode: impl FnOnce() -> T) -> T {
    let Some(hidden) = hidden else {
        return encode();
    };
    /// Restores the thread's previous secrets, even when encoding panics.
    struct Restore(Option<Arc<SecretFinder>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let before = self.0.take();
            HIDING.with(|h| *h.borrow_mut() = before);
        }
    }
    let _restore = Restore(HIDING.with(|h| h.replace(Some(hidden.clone()))));
    encode()
}

/// What a hidden secret is written as.
const REDACTED: &[u8] = b"[REDACTED]";
/// A JSON value replaced whole.
const REDACTED_VALUE: &[u8] = b"\"[REDACTED]\"";

/// Appends `data` as JSON to `json` with the session's secrets `hidden`: hidden from binary
/// bodies before they are encoded (see [`hiding`]), then from the encoded text's strings.
fn encode_hidden(
    hidden: &Option<Arc<SecretFinder>>,
    data: &impl Serialize,
    json: &mut Vec<u8>,
) -> Result<(), RecordingError> {
    hiding(hidden, || serde_json::to_writer(&mut *json, data)).map_err(|_| RecordingError::Encode)?;
    if let Some(scrubbed) = hidden.as_ref().and_then(|h| scrub(json, h)) {
        *json = scrubbed;
    }
    Ok(())
}

/// `json` (as serde_json wrote it) with every spelling of a secret `hidden` finds inside a string
/// replaced by `[REDACTED]`, or `None` when there is none (the common case, which copies nothing).
/// A string with an escaped backslash is searched decoded: encoded, an escape the text already
/// held is escaped again (`\u002b` as `\\u002b`), which the search does not read back, or reads
/// from its second backslash on; so is a string with escapes where one is found. Other escapes
/// serde_json writes (`\"`, `\n`, `\u0001`) spell nothing a secret holds. A secret holds no
/// `"`, so each spelling found in the whole lies inside one string or between strings (in a
/// number), and the result stays valid JSON.
fn scrub(json: &[u8], hidden: &SecretFinder) -> Option<Vec<u8>> {
    let (found, _) = hidden.matches(json, true);
    // Without escapes that hide a spelling the search of the whole tells.
    if found.is_empty() && !memchr::memchr_iter(b'\\', json).any(|i| hides_spelling(&json[i..])) {
        return None;
    }
    // Each spelling found lies in one string or gap, visited in order: `next` is the first not
    // yet taken.
    let mut next = 0;
    let mut out: Option<Vec<u8>> = None;
    // Bytes of `json` before this are in `out`.
    let mut copied = 0;
    let mut at = 0;
    while at < json.len() {
        let open = memchr::memchr(b'"', &json[at..]).map_or(json.len(), |i| at + i);
        // Between strings: numbers, literals and punctuation. A secret found there is a number
        // or a run of them (an all-digit token): each value it touches becomes a string.
        let in_gap = taken(&found, &mut next, open);
        if !in_gap.is_empty() {
            let out = out.get_or_insert_with(|| Vec::with_capacity(json.len()));
            out.extend_from_slice(&json[copied..at]);
            values_hiding(&json[at..open], at, in_gap, out);
            copied = open;
        }
        if open == json.len() {
            break;
        }
        // Whether the string has escapes, and one among them that may hide a spelling.
        let (mut close, mut escapes, mut hiding) = (open + 1, false, false);
        loop {
            match json
                .get(close..)
                .and_then(|rest| memchr::memchr2(b'"', b'\\', rest))
            {
                Some(i) if json[close + i] == b'\\' => {
                    escapes = true;
                    hiding |= hides_spelling(&json[close + i..]);
                    close += i + 2;
                }
                Some(i) => {
                    close += i;
                    break;
                }
                // Not serde_json's: nothing can be told of the rest, so none of it is kept.
                None => {
                    let out = out.get_or_insert_with(Vec::new);
                    out.extend_from_slice(&json[copied..open]);
                    out.extend_from_slice(REDACTED_VALUE);
                    return Some(std::mem::take(out));
                }
            }
        }
        let in_string = taken(&found, &mut next, close);
        // A spelling found in the encoded string may begin inside an escape (`\nsecret`, for a
        // secret beginning with `n`): replaced there, the string would not be JSON.
        let scrubbed = if hiding || escapes && !in_string.is_empty() {
            // Decoded, searched, and encoded again when a secret was there.
            serde_json::from_slice::<String>(&json[open..=close])
                .map(|text| {
                    hidden.replaced(text.as_bytes(), REDACTED).map(|t| {
                        // Spellings begin and end on ASCII bytes: the text stays UTF-8.
                        let t = String::from_utf8_lossy(&t);
                        serde_json::to_vec(&t).unwrap_or_else(|_| REDACTED_VALUE.to_vec())
                    })
                })
                .unwrap_or_else(|_| Some(REDACTED_VALUE.to_vec()))
        } else if !in_string.is_empty() {
            let at = |r: &Range<usize>| r.start - open..r.end - open;
            let ranges: Vec<Range<usize>> = in_string.iter().map(at).collect();
            let text = hidden.replace_ranges(&json[open..=close], &ranges, REDACTED);
            // Replaced whole, the string's quotes went with it.
            Some(if text.first() == Some(&b'"') {
                text
            } else {
                REDACTED_VALUE.to_vec()
            })
        } else {
            None
        };
        if let Some(scrubbed) = scrubbed {
            let out = out.get_or_insert_with(|| Vec::with_capacity(json.len()));
            out.extend_from_slice(&json[copied..open]);
            out.extend_from_slice(&scrubbed);
            copied = close + 1;
        }
        at = close + 1;
    }
    out.map(|mut out| {
        out.extend_from_slice(&json[copied..]);
        out
    })
}

/// Whether the escape `escape` begins with may hide a spelling from a search of the encoded
/// text: an escaped backslash (`\\u002b` is an escape of the text's own), or a `\u` escape of a
/// printable character (a raw JSON body's own, which decoded may begin or end an escape of the
/// text: Go writes `&` as `\u0026`). serde_json's others (`\"`, `\n`, `\u001f`) spell a quote
/// or a control character, neither of which a secret or an escape holds.
fn hides_spelling(escape: &[u8]) -> bool {
    match escape.get(1) {
        Some(b'\\') => true,
        Some(b'u') => !matches!(escape.get(2..5), Some(b"000" | b"001")),
        _ => false,
    }
}

/// The ranges of `found` from `*next` that begin before `to`, and `*next` moved past them.
fn taken<'a>(found: &'a [Range<usize>], next: &mut usize, to: usize) -> &'a [Range<usize>] {
    let first = *next;
    while found.get(*next).is_some_and(|r| r.start < to) {
        *next += 1;
    }
    &found[first..*next]
}

/// Appends `gap` (JSON between strings, at `offset` in the event) to `out` with each number or
/// literal that one of `found` (ranges in the event) overlaps written as `"[REDACTED]"`.
fn values_hiding(gap: &[u8], offset: usize, found: &[Range<usize>], out: &mut Vec<u8>) {
    let punctuation = |b: &u8| b"{}[],: \t\r\n".contains(b);
    let (mut i, mut k) = (0, 0);
    while i < gap.len() {
        if punctuation(&gap[i]) {
            out.push(gap[i]);
            i += 1;
            continue;
        }
        let end = gap[i..].iter().position(punctuation).map_or(gap.len(), |n| i + n);
        // Both in order: ranges that ended before this value are done with.
        while found.get(k).is_some_and(|r| r.end <= offset + i) {
            k += 1;
        }
        if found.get(k).is_some_and(|r| r.start < offset + end) {
            out.extend_from_slice(REDACTED_VALUE);
        } else {
            out.extend_from_slice(&gap[i..end]);
        }
        i = end;
    }
}

/// An event type: 1 to [`MAX_KIND_BYTES`] of a-z, 0-9, '.', '_', '-'.
fn valid_kind(kind: &str) -> bool {
    let valid = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b);
    !kind.is_empty() && kind.len() <= MAX_KIND_BYTES && kind.bytes().all(valid)
}

fn into_object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        Value::Null => Map::new(),
        other => Map::from_iter([("value".to_string(), other)]),
    }
}

#[cfg(test)]
mod tests;
