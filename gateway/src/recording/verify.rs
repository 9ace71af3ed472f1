//! Reading a session file back and verifying its chain and closing signature.
//!
//! Every complete line must hash to its `hash`, carry the next `seq`, the session's id and the
//! previous line's hash as `prev`; the first is `session.start` and nothing follows `session.end`.
//! A final line without its newline is what a crash mid-write leaves: it counts if it verifies
//! and is otherwise ignored, so a cut-off file verifies up to its last complete event. After
//! `session.end` nothing at all may follow, not even a partial line.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use aws_lc_rs::signature::{ED25519, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::Value;

use super::chain::{GENESIS, HASH_MARKER, HASH_SUFFIX_LEN, sha256_hex, signing_message};
use super::{END, MAX_EVENT_BYTES, START, key_id};

/// What a verified file holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    pub session: String,
    /// Complete, verified events.
    pub events: u64,
    pub last_hash: String,
    /// The file ends with `session.end`.
    pub closed: bool,
    /// A public key was given and the closing signature verified against it.
    pub signed: bool,
    /// The closing event was written by a later gateway process that found the session cut off
    /// (see [`super::Recorder::seal_cut_off`]): the signature vouches for the file as that process
    /// found it, not as the events were recorded.
    pub recovered: bool,
    /// Bytes of the verified events from the file's start, their newlines included: where a
    /// partial last line (a write cut off by a crash) begins, if there is one.
    pub bytes: u64,
    /// The last verified event is whole but lacks its newline (the crash came between them).
    pub unterminated: bool,
}

/// Why a file does not verify. Reasons never quote record contents.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct VerifyError {
    /// 1-based; 0 when the file cannot be read at all.
    pub line: u64,
    pub reason: String,
}

fn fail(line: u64, reason: impl Into<String>) -> VerifyError {
    VerifyError {
        line,
        reason: reason.into(),
    }
}

/// One event as read back.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    pub seq: u64,
    pub ts: String,
    pub session: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub data: Value,
    pub prev: String,
    pub hash: String,
}

/// Verifies `path`; with `public_key` (base64url Ed25519), also the closing signature.
pub fn verify_file(path: &Path, public_key: Option<&str>) -> Result<VerifyReport, VerifyError> {
    verify_events(path, public_key, |_| {})
}

/// Verifies `path`, handing each verified event to `visit` in order.
pub fn verify_events(
    path: &Path,
    public_key: Option<&str>,
    visit: impl FnMut(&Event),
) -> Result<VerifyReport, VerifyError> {
    verify_with_keys(path, public_key.as_slice(), visit)
}

/// Like [`verify_events`], with the closing signature checked against whichever of `public_keys`
/// it names (archives span processes, each with its key, and key rotations); none: the chain only.
pub fn verify_with_keys(
    path: &Path,
    public_keys: &[&str],
    mut visit: impl FnMut(&Event),
) -> Result<VerifyReport, VerifyError> {
    let keys: Vec<Vec<u8>> = public_keys
        .iter()
        .map(|k| decode_key(k))
        .collect::<Result<_, _>>()
        .map_err(|r| fail(0, r))?;
    let file = File::open(path).map_err(|e| fail(0, format!("cannot open: {e}")))?;
    let mut reader = BufReader::new(file);
    let mut state = Chain::default();
    let mut buf = Vec::new();
    let (mut bytes, mut unterminated) = (0u64, false);
    for line_no in 1u64.. {
        buf.clear();
        // One byte over the limit plus the newline tells "too long" from "last line".
        (&mut reader)
            .take(MAX_EVENT_BYTES as u64 + 2)
            .read_until(b'\n', &mut buf)
            .map_err(|e| fail(line_no, format!("cannot read: {e}")))?;
        if buf.is_empty() {
            break;
        }
        let complete = buf.last() == Some(&b'\n');
        let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
        if line.len() > MAX_EVENT_BYTES {
            return Err(fail(line_no, "line longer than the event limit"));
        }
        match state.check(line_no, line, &keys) {
            Ok(event) => {
                bytes += buf.len() as u64;
                unterminated = !complete;
                visit(&event);
            }
            // A partial last line is a write the gateway never finished, not an edit; but the
            // gateway writes nothing after session.end, so bytes there are an edit.
            Err(_) if !complete && !state.closed => break,
            Err(e) => return Err(e),
        }
        if !complete {
            break;
        }
    }
    let session = state.session.ok_or_else(|| fail(1, "no complete event"))?;
    Ok(VerifyReport {
        session,
        events: state.events,
        last_hash: state.prev,
        closed: state.closed,
        signed: state.signed,
        recovered: state.recovered,
        bytes,
        unterminated,
    })
}

fn decode_key(key: &str) -> Result<Vec<u8>, String> {
    let bytes = URL_SAFE_NO_PAD
        .decode(key.trim().trim_end_matches('='))
        .map_err(|_| "public key is not base64url".to_string())?;
    if bytes.len() != 32 {
        return Err("public key is not a 32-byte Ed25519 key".into());
    }
    Ok(bytes)
}

#[derive(Default)]
struct Chain {
    session: Option<String>,
    events: u64,
    prev: String,
    closed: bool,
    signed: bool,
    recovered: bool,
    /// The recording process's id, as the start names it.
    process: Option<String>,
}

impl Chain {
    fn check(&mut self, n: u64, line: &[u8], keys: &[Vec<u8>]) -> Result<Event, VerifyError> {
        if self.closed {
            return Err(fail(n, "event after session.end"));
        }
        let Some(split) = line.len().checked_sub(HASH_SUFFIX_LEN) else {
            return Err(fail(n, "not an event line"));
        };
        let (prefix, suffix) = line.split_at(split);
        if !suffix.starts_with(HASH_MARKER) || !suffix.ends_with(b"\"}") {
            return Err(fail(n, "not an event line"));
        }
        let claimed = &suffix[HASH_MARKER.len()..HASH_MARKER.len() + 64];
        if sha256_hex(prefix).as_bytes() != claimed {
            return Err(fail(n, "hash mismatch: event altered"));
        }
        let event: Event = serde_json::from_slice(line)
            .map_err(|e| fail(n, format!("not a valid event (column {})", e.column())))?;
        if event.hash.as_bytes() != claimed {
            return Err(fail(n, "hash field does not match the line's hash"));
        }
        if event.seq != self.events {
            return Err(fail(
                n,
                format!(
                    "seq {} where {} was expected: event deleted, inserted or reordered",
                    event.seq, self.events
                ),
            ));
        }
        let expected_prev = if self.events == 0 {
            GENESIS
        } else {
            self.prev.as_str()
        };
        if event.prev != expected_prev {
            return Err(fail(
                n,
                "prev does not match the previous event's hash: event deleted, inserted or reordered",
            ));
        }
        match &self.session {
            None if event.kind != START => return Err(fail(n, "first event is not session.start")),
            None => {
                self.session = Some(event.session.clone());
                self.process = text(&event.data, "process");
            }
            Some(s) if *s != event.session => return Err(fail(n, "event from another session")),
            Some(_) if event.kind == START => return Err(fail(n, "second session.start")),
            Some(_) => {}
        }
        if event.kind == END {
            // The signature covers the data as parsed, where a repeated name keeps its last
            // value; a reader keeping the first would see another close under the same signature.
            if crate::identity::strict_json::parse(line).is_err() {
                return Err(fail(n, "session.end repeats a name or nests too deep"));
            }
            if !keys.is_empty() {
                check_signature(&event, keys).map_err(|r| fail(n, r))?;
                self.signed = true;
            }
            // A process closes its own sessions; a seal of one by the process that recorded it
            // vouches for a cut made since (the gateway refuses to make one).
            if let Some(recovery) = event.data.get("recovery") {
                if self.process.is_some() && text(recovery, "process") == self.process {
                    return Err(fail(n, "sealed as cut off by the process that recorded it"));
                }
                self.recovered = true;
            }
            self.closed = true;
        }
        self.events += 1;
        self.prev = event.hash.clone();
        Ok(event)
    }
}

/// The string `data` holds under `name`, if any.
pub(crate) fn text(data: &Value, name: &str) -> Option<String> {
    data.get(name).and_then(Value::as_str).map(String::from)
}

/// The end event's data as it was signed: without its `signature`.
fn signed_data(end: &Event) -> serde_json::Map<String, Value> {
    let mut data = end.data.as_object().cloned().unwrap_or_default();
    data.remove("signature");
    data
}

/// Checks the end's signature with the one of `keys` its `key_id` names.
fn check_signature(end: &Event, keys: &[Vec<u8>]) -> Result<(), String> {
    let signature = end
        .data
        .get("signature")
        .and_then(Value::as_str)
        .ok_or("session.end is not signed")?;
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| "signature is not base64url")?;
    let named = end.data.get("key_id").and_then(Value::as_str);
    let Some(key) = keys.iter().find(|k| named == Some(key_id(k).as_str())) else {
        let want: Vec<String> = keys.iter().map(|k| key_id(k)).collect();
        return Err(format!(
            "signed by another key (expected key id {})",
            want.join(" or ")
        ));
    };
    UnparsedPublicKey::new(&ED25519, key)
        .verify(
            &signing_message(&end.prev, &end.ts, &signed_data(end)),
            &signature,
        )
        .map_err(|_| {
            // Told apart from tampering: a file closed before v2 signed its events, not its close.
            let v1 = [super::chain::SIGNING_CONTEXT_V1, end.prev.as_bytes()].concat();
            if UnparsedPublicKey::new(&ED25519, key).verify(&v1, &signature).is_ok() {
                "signed under the v1 scheme, which covers the events but not the close itself: not accepted as signed".to_string()
            } else {
                "signature does not verify".to_string()
            }
        })
}
