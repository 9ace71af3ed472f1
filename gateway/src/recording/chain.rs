//! Event encoding and hashing: one compact JSON line per event, chained by SHA-256.
//!
//! A line is `{"seq":N,"ts":"…","session":"…","type":"…","data":{…},"prev":"<hex>"` followed by
//! `,"hash":"<hex>"}` where the hash is SHA-256 of every byte before `,"hash":"`. Hashing the bytes
//! as written (not a re-serialisation) keeps verification byte-exact whatever JSON library reads
//! the file back.

use std::time::{SystemTime, UNIX_EPOCH};

#[cfg(test)]
use serde_json::Value;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{MAX_EVENT_BYTES, RecordingError};

/// `prev` of a session's first event.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What closes every line: `,"hash":"` + 64 hex digits + `"}`.
pub(crate) const HASH_MARKER: &[u8] = b",\"hash\":\"";
pub(crate) const HASH_SUFFIX_LEN: usize = HASH_MARKER.len() + 64 + 2;

/// Domain separation for the closing signature, so the key signs nothing else by accident. v2
/// signs the end event's own time and data too; v1 signed `prev` alone, which left the close's
/// `reason` and `unrecorded_events` editable under a valid signature.
pub const SIGNING_CONTEXT: &[u8] = b"agentgate-recording-v2:";
/// The v1 context, recognised only to say why such a file is not accepted as signed.
pub const SIGNING_CONTEXT_V1: &[u8] = b"agentgate-recording-v1:";

/// The message the closing event's signature covers: the context; the end event's `prev` (hex),
/// which commits to every earlier event of the session; its `ts`; and its data without
/// `signature`, as canonical JSON (object keys sorted at every level), which a verifier rebuilds
/// from the parsed line whatever order a JSON library keeps keys in.
pub fn signing_message(prev: &str, ts: &str, data: &serde_json::Map<String, serde_json::Value>) -> Vec<u8> {
    let mut out = [SIGNING_CONTEXT, prev.as_bytes(), b"\n", ts.as_bytes(), b"\n"].concat();
    canonical(&serde_json::Value::Object(data.clone()), &mut out);
    out
}

/// Compact JSON with every object's keys in byte order.
fn canonical(value: &serde_json::Value, out: &mut Vec<u8>) {
    match value {
        serde_json::Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                // Strings and numbers serialise infallibly.
                out.extend(serde_json::to_vec(k).unwrap_or_default());
                out.push(b':');
                canonical(v, out);
            }
            out.push(b'}');
        }
        serde_json::Value::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical(v, out);
            }
            out.push(b']');
        }
        scalar => out.extend(serde_json::to_vec(scalar).unwrap_or_default()),
    }
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    // Bytes first, then one ASCII check: pushing chars encodes each as UTF-8.
    let mut out = vec![0u8; bytes.len() * 2];
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0xf)];
    }
    String::from_utf8(out).unwrap_or_default()
}

/// Hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// An encoded event: the line (with its newline) and its hash.
#[cfg(test)]
pub(crate) struct Encoded {
    pub line: Vec<u8>,
    pub hash: String,
}

/// Encodes one event (see [`EventHead::encode`]).
#[cfg(test)]
pub(crate) fn encode(
    seq: u64,
    ts: &str,
    session: &str,
    kind: &str,
    data: &Value,
    prev: &str,
) -> Result<Encoded, RecordingError> {
    let body = serde_json::to_string(data).map_err(|_| RecordingError::Encode)?;
    let mut line = Vec::new();
    let head = EventHead {
        seq,
        ts,
        session,
        kind,
        prev,
    };
    let hash = head.encode(&body, &mut line)?;
    Ok(Encoded { line, hash })
}

/// Everything of an event's line but its data and hash.
pub(crate) struct EventHead<'a> {
    pub seq: u64,
    pub ts: &'a str,
    pub session: &'a str,
    pub kind: &'a str,
    /// The previous event's hash.
    pub prev: &'a str,
}

impl EventHead<'_> {
    /// Appends the event's line (with its newline) to `out` and returns its hash; `body` is the
    /// event's data, already JSON. Data whose line would exceed [`MAX_EVENT_BYTES`] is replaced by
    /// `{"truncated":true,"bytes":<its JSON length>,"text":<as much of its JSON as fits>}`: one
    /// event stays one line, so the chain never depends on how a reader reassembles pieces. On
    /// error `out` is as it was.
    pub(crate) fn encode(&self, body: &str, out: &mut Vec<u8>) -> Result<String, RecordingError> {
        let start = out.len();
        let result = self.write_line(body, out);
        if result.is_err() {
            out.truncate(start);
        }
        result
    }

    fn write_line(&self, body: &str, out: &mut Vec<u8>) -> Result<String, RecordingError> {
        let start = out.len();
        self.prefix(body, out)?;
        if out.len() - start + HASH_SUFFIX_LEN > MAX_EVENT_BYTES {
            let marker = |text: &str, out: &mut Vec<u8>| {
                out.truncate(start);
                let m = json!({"truncated": true, "bytes": body.len(), "text": text});
                let m = serde_json::to_string(&m).map_err(|_| RecordingError::Encode)?;
                self.prefix(&m, out)?;
                Ok::<usize, RecordingError>(out.len() - start)
            };
            // Keep as much of the text as fits once escaped again inside the marker.
            let budget = MAX_EVENT_BYTES.saturating_sub(marker("", out)? + HASH_SUFFIX_LEN);
            let mut used = 0;
            let mut cut = body
                .char_indices()
                .find(|&(_, c)| {
                    used += escaped_len(c);
                    used > budget
                })
                .map_or(body.len(), |(i, _)| i);
            // The count above is exact for serde_json; the loop only guards against it not being.
            let mut fitted = false;
            for _ in 0..8 {
                let len = marker(&body[..cut], out)? + HASH_SUFFIX_LEN;
                if len <= MAX_EVENT_BYTES {
                    fitted = true;
                    break;
                }
                cut = body.floor_char_boundary(cut.saturating_sub(len - MAX_EVENT_BYTES));
            }
            if !fitted {
                return Err(RecordingError::EventTooLarge);
            }
        }
        let hash = sha256_hex(&out[start..]);
        out.extend_from_slice(HASH_MARKER);
        out.extend_from_slice(hash.as_bytes());
        out.extend_from_slice(b"\"}\n");
        Ok(hash)
    }

    /// Everything before `,"hash":"`.
    fn prefix(&self, body: &str, out: &mut Vec<u8>) -> Result<(), RecordingError> {
        // Every string is JSON-encoded; only `body` is already JSON. The usual ones (hex
        // digests, timestamps, event types) need no escaping and are copied between quotes.
        let s = |key: &[u8], v: &str, out: &mut Vec<u8>| {
            out.extend_from_slice(key);
            // Without early exit, so the check runs on whole vectors.
            let special = v
                .bytes()
                .fold(false, |any, b| any | (b < 0x20) | (b == b'"') | (b == b'\\'));
            if !special {
                out.push(b'"');
                out.extend_from_slice(v.as_bytes());
                out.push(b'"');
                Ok(())
            } else {
                serde_json::to_writer(&mut *out, v).map_err(|_| RecordingError::Encode)
            }
        };
        out.extend_from_slice(b"{\"seq\":");
        // Formatted into the line itself: a String per event is a measurable share of an event.
        std::io::Write::write_fmt(out, format_args!("{}", self.seq)).map_err(|_| RecordingError::Encode)?;
        s(b",\"ts\":", self.ts, out)?;
        s(b",\"session\":", self.session, out)?;
        s(b",\"type\":", self.kind, out)?;
        out.extend_from_slice(b",\"data\":");
        out.extend_from_slice(body.as_bytes());
        s(b",\"prev\":", self.prev, out)
    }
}

/// Length of `c` inside a JSON string as serde_json writes it.
fn escaped_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        c if u32::from(c) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

/// A point in time, UTC, to the microsecond.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timestamp {
    secs: i64,
    micros: u32,
}

impl Timestamp {
    pub fn now() -> Self {
        Self::from(SystemTime::now())
    }

    /// RFC 3339 with microseconds: `2025-01-31T23:59:59.123456Z`.
    pub fn rfc3339(&self) -> String {
        let (y, mo, d, h, mi, s) = self.civil();
        if !(0..=9999).contains(&y) {
            return format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{:06}Z", self.micros);
        }
        // Written digit by digit: three of these per HTTP request, and `format!` costs more
        // than the rest of an event's framing.
        let mut out = [0u8; 27];
        let mut put = |at: usize, width: usize, mut v: u64| {
            for i in (at..at + width).rev() {
                out[i] = b'0' + (v % 10) as u8;
                v /= 10;
            }
        };
        put(0, 4, y as u64);
        put(5, 2, u64::from(mo));
        put(8, 2, u64::from(d));
        put(11, 2, h as u64);
        put(14, 2, mi as u64);
        put(17, 2, s as u64);
        put(20, 6, u64::from(self.micros));
        for (i, c) in [
            (4, b'-'),
            (7, b'-'),
            (10, b'T'),
            (13, b':'),
            (16, b':'),
            (19, b'.'),
            (26, b'Z'),
        ] {
            out[i] = c;
        }
        std::str::from_utf8(&out).unwrap_or_default().to_string()
    }

    /// For file names, which sort chronologically: `20250131T235959Z`.
    pub fn compact(&self) -> String {
        let (y, mo, d, h, mi, s) = self.civil();
        format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}Z")
    }

    fn civil(&self) -> (i64, u32, u32, i64, i64, i64) {
        let (days, rem) = (self.secs.div_euclid(86_400), self.secs.rem_euclid(86_400));
        let (y, m, d) = civil_from_days(days);
        (y, m, d, rem / 3600, rem % 3600 / 60, rem % 60)
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Self {
        // A clock before 1970 is a broken clock; clamp rather than fail a recording over it.
        let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        Self {
            secs: i64::try_from(since.as_secs()).unwrap_or(i64::MAX / 2),
            micros: since.subsec_micros(),
        }
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(secs: u64, micros: u64) -> Timestamp {
        Timestamp::from(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros))
    }

    #[test]
    fn timestamps() {
        assert_eq!(at(0, 0).rfc3339(), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(951_782_400, 7).rfc3339(), "2000-02-29T00:00:00.000007Z");
        assert_eq!(
            at(1_738_367_999, 123_456).rfc3339(),
            "2025-01-31T23:59:59.123456Z"
        );
        assert_eq!(at(4_107_542_400, 0).compact(), "21000301T000000Z");
        assert_eq!(at(1_738_367_999, 0).compact(), "20250131T235959Z");
        let before = Timestamp::from(UNIX_EPOCH - Duration::from_secs(5));
        assert_eq!(before.rfc3339(), "1970-01-01T00:00:00.000000Z");
    }

    #[test]
    fn line_layout_and_hash() {
        let e = encode(0, "t", "s", "x.y", &json!({"b": 1, "a": "\n"}), GENESIS).unwrap();
        let line = std::str::from_utf8(&e.line).unwrap();
        let expected_prefix = format!(
            r#"{{"seq":0,"ts":"t","session":"s","type":"x.y","data":{{"a":"\n","b":1}},"prev":"{GENESIS}""#
        );
        assert_eq!(line, format!("{expected_prefix},\"hash\":\"{}\"}}\n", e.hash));
        assert_eq!(e.hash, sha256_hex(expected_prefix.as_bytes()));
        assert_eq!(e.line.len() - 1, expected_prefix.len() + HASH_SUFFIX_LEN);
    }

    #[test]
    fn hex_and_sequence_numbers() {
        assert_eq!(hex(&[]), "");
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let e = encode(u64::MAX, "t", "s", "k", &json!({}), GENESIS).unwrap();
        assert!(e.line.starts_with(b"{\"seq\":18446744073709551615,\"ts\""));
    }

    #[test]
    fn framing_strings_are_encoded_as_serde_json_would() {
        for ts in [
            "2025-01-31T23:59:59.123456Z",
            "a\"b",
            "a\\b",
            "tab\there",
            "\u{1}",
            "é",
            "",
        ] {
            let e = encode(0, ts, "s", "k", &json!({}), GENESIS).unwrap();
            let expected = format!("{{\"seq\":0,\"ts\":{}", serde_json::to_string(ts).unwrap());
            assert!(e.line.starts_with(expected.as_bytes()), "{ts:?}");
            let v: Value = serde_json::from_slice(&e.line).unwrap();
            assert_eq!(v["ts"], ts);
        }
    }

    #[test]
    fn oversized_data_is_truncated_to_one_line() {
        // Quotes double in size when escaped: the worst case for the fitting loop.
        let big = "\"é\u{1}".repeat(MAX_EVENT_BYTES / 2);
        let e = encode(3, "t", "s", "k", &json!({ "body": big }), GENESIS).unwrap();
        assert!(e.line.len() - 1 <= MAX_EVENT_BYTES);
        assert!(
            e.line.len() > MAX_EVENT_BYTES - 8,
            "fills the budget: {}",
            e.line.len()
        );
        let v: Value = serde_json::from_slice(&e.line).unwrap();
        assert_eq!(v["data"]["truncated"], true);
        assert_eq!(
            v["data"]["bytes"],
            serde_json::to_string(&json!({ "body": big })).unwrap().len()
        );
        assert!(
            v["data"]["text"]
                .as_str()
                .unwrap()
                .starts_with("{\"body\":\"\\\"é")
        );
    }
}
