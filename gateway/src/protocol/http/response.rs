//! Response bodies on their way back: masked whole when a masking rule applies (bounded by the
//! masking cap), masked line by line for watch streams, or streamed untouched; and a tee that
//! records the first bytes of whatever passes.

use std::borrow::Cow;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use super::body::{Body, BodyError};
use crate::masking::{MAX_MASKED_BODY, MaskReport, MaskingPlan};
use crate::recording::{CappedBody, MAX_RECORDED_BODY, Session, cap_body};
use agentgate_crds::policy::UnparseablePolicy;

/// What a content type lets the masker do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentClass {
    Json,
    Text,
    Other,
}

/// Classifies a `Content-Type`. JSON includes `+json` suffixes and NDJSON; YAML, protobuf, CBOR
/// and anything else the masker cannot parse is `Other`.
pub fn classify(content_type: Option<&str>) -> ContentClass {
    let Some(ct) = content_type else {
        return ContentClass::Other;
    };
    let essence = ct.split(';').next().unwrap_or("").trim();
    let is = |name: &str| essence.eq_ignore_ascii_case(name);
    let ends = |suffix: &str| {
        essence.len() >= suffix.len()
            && essence.as_bytes()[essence.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
    };
    if is("application/json") || ends("+json") || is("application/x-ndjson") || is("application/jsonl") {
        ContentClass::Json
    } else if essence.len() >= 5 && essence.as_bytes()[..5].eq_ignore_ascii_case(b"text/") {
        ContentClass::Text
    } else {
        ContentClass::Other
    }
}

/// The class a response is masked as under `plan`: [`classify`]'s, unless the masker would read
/// it wrongly. A charset that is not ASCII-compatible (UTF-16 text of ASCII letters is valid
/// UTF-8 with a NUL between them, where no detector finds anything) is `Other`; so is text other
/// than `text/plain` and `text/event-stream` when field rules apply and unreadable bodies are
/// refused: a CSV, YAML, XML or HTML body carries its fields where no JSON rule reaches them.
pub fn masking_class(content_type: Option<&str>, plan: &MaskingPlan) -> ContentClass {
    let class = classify(content_type);
    let ct = content_type.unwrap_or_default();
    let mut params = ct.split(';');
    let essence = params.next().unwrap_or_default().trim();
    let charset_ok = params
        .filter_map(|p| p.split_once('='))
        .filter(|(k, _)| k.trim().eq_ignore_ascii_case("charset"))
        .all(|(_, v)| {
            let v = v.trim().trim_matches('"').to_ascii_lowercase();
            !NOT_ASCII_COMPATIBLE.iter().any(|c| v.starts_with(c))
        });
    let plain = ["text/plain", "text/event-stream"]
        .iter()
        .any(|t| essence.eq_ignore_ascii_case(t));
    match class {
        ContentClass::Other => ContentClass::Other,
        _ if !charset_ok => ContentClass::Other,
        ContentClass::Text
            if !plain && plan.has_field_rules() && plan.on_unparseable() == UnparseablePolicy::Refuse =>
        {
            ContentClass::Other
        }
        c => c,
    }
}

/// Charsets in which ASCII text is not the same bytes (UTF-16 and -32, UCS-2 and -4, UTF-7,
/// EBCDIC code pages), by the start of their labels: the masker would read such text wrongly.
/// Others (UTF-8, ASCII, the ISO-8859 and Windows code pages, KOI8) keep ASCII as it is, and
/// their other bytes are not UTF-8, which the masker refuses.
const NOT_ASCII_COMPATIBLE: &[&str] = &[
    "utf-16", "utf16", "utf-32", "utf32", "ucs-2", "ucs2", "ucs-4", "ucs4", "utf-7", "utf7", "unicode",
    "cp037", "ibm037", "cp500", "ibm500", "cp1026", "ibm1026", "cp875", "ebcdic",
];

/// Why a body was not masked.
#[derive(Debug)]
pub enum MaskFailure {
    TooLarge,
    Unparseable(&'static str),
    Upstream(String),
    /// The agent's token expired while the body was read ([`super::body::until_expiry`]).
    Expired,
    /// The gateway holds [`MAX_MASKING_MEMORY`] of bodies already.
    Busy,
}

/// Most body bytes held at once, over all requests, to be masked whole: without a bound, 256
/// HTTP/2 streams of a connection, each asking for a 16 MiB list, would hold 4 GiB.
pub const MAX_MASKING_MEMORY: usize = 512 * 1024 * 1024;

/// The bytes of bodies held for masking, one permit per KiB (see [`MAX_MASKING_MEMORY`]).
pub fn masking_budget() -> Arc<tokio::sync::Semaphore> {
    Arc::new(tokio::sync::Semaphore::new(MAX_MASKING_MEMORY / 1024))
}

/// Reads a whole body, at most `cap` bytes.
pub async fn read_capped(body: Body, cap: usize) -> Result<Bytes, MaskFailure> {
    read_within(body, cap, None).await.map(|(bytes, _)| bytes)
}

/// Reads a whole body, at most `cap` bytes, holding a share of `budget` for the bytes read
/// (returned, to be dropped once they are); [`MaskFailure::Busy`] when the budget is spent.
pub async fn read_within(
    mut body: Body,
    cap: usize,
    budget: Option<&Arc<tokio::sync::Semaphore>>,
) -> Result<(Bytes, Option<tokio::sync::OwnedSemaphorePermit>), MaskFailure> {
    // Most bodies arrive in one frame, which is then the body itself, not copied.
    let mut first: Option<Bytes> = None;
    let mut buf = BytesMut::new();
    let mut held_permit: Option<tokio::sync::OwnedSemaphorePermit> = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            if e.is::<super::body::TokenExpired>() {
                MaskFailure::Expired
            } else {
                MaskFailure::Upstream(e.to_string())
            }
        })?;
        let Ok(data) = frame.into_data() else { continue };
        let held = first.as_ref().map_or(buf.len(), Bytes::len);
        if held + data.len() > cap {
            return Err(MaskFailure::TooLarge);
        }
        if let Some(budget) = budget {
            let have = held_permit.as_ref().map_or(0, |p| p.num_permits());
            let need = (held + data.len()).div_ceil(1024).saturating_sub(have);
            if need > 0 {
                let more = u32::try_from(need)
                    .ok()
                    .and_then(|n| budget.clone().try_acquire_many_owned(n).ok())
                    .ok_or(MaskFailure::Busy)?;
                match &mut held_permit {
                    Some(p) => p.merge(more),
                    None => held_permit = Some(more),
                }
            }
        }
        match first.take() {
            Some(f) => {
                buf.reserve(f.len() + data.len());
                buf.extend_from_slice(&f);
                buf.extend_from_slice(&data);
            }
            None if buf.is_empty() => first = Some(data),
            None => buf.extend_from_slice(&data),
        }
    }
    Ok((first.unwrap_or_else(|| buf.freeze()), held_permit))
}

/// Text the masker could not parse, let through as the rules allow, after the detectors: each
/// run of valid UTF-8 meets them and the bytes between pass as they are, so a stray byte (a
/// Latin-1 `é`, a NUL) does not carry the values beside it out unread.
pub fn mask_text_pieces(plan: &MaskingPlan, bytes: &[u8]) -> (Vec<u8>, MaskReport) {
    mask_pieces(plan, bytes, true, false)
}

/// [`mask_text_pieces`]; a `complete: false` body was cut, so its last run is masked as a
/// prefix (a value cut at the end is masked too), and `url_encoded` reads `+` as a space.
fn mask_pieces(plan: &MaskingPlan, bytes: &[u8], complete: bool, url_encoded: bool) -> (Vec<u8>, MaskReport) {
    let mut out = Vec::with_capacity(bytes.len());
    let mut report = MaskReport::default();
    let mut pieces = bytes.utf8_chunks().peekable();
    while let Some(piece) = pieces.next() {
        let last = pieces.peek().is_none();
        // A character the cut went through is left out, as a cut text's record leaves it.
        let cut_char =
            last && !complete && std::str::from_utf8(piece.invalid()).is_err_and(|e| e.error_len().is_none());
        // Only text that runs to the cut may end in a cut value.
        let (masked, r) = if last && !complete && (piece.invalid().is_empty() || cut_char) {
            plan.mask_text_prefix(piece.valid(), url_encoded)
        } else {
            plan.mask_escaped_text(piece.valid(), url_encoded)
        };
        report.add(&r);
        out.extend_from_slice(masked.as_bytes());
        if !cut_char {
            out.extend_from_slice(piece.invalid());
        }
    }
    (out, report)
}

/// Masks a whole body of class `class`.
pub fn mask_whole(
    plan: &MaskingPlan,
    class: ContentClass,
    input: &[u8],
) -> Result<(Vec<u8>, MaskReport), MaskFailure> {
    match class {
        ContentClass::Json => {
            let mut out = Vec::with_capacity(input.len());
            let report = plan
                .mask_json(input, &mut out)
                .map_err(|_| MaskFailure::Unparseable("the response is not valid JSON"))?;
            Ok((out, report))
        }
        ContentClass::Text => {
            let text = std::str::from_utf8(input)
                .map_err(|_| MaskFailure::Unparseable("the response text is not UTF-8"))?;
            // UTF-16 text read as bytes: a NUL between letters hides every value from the
            // detectors.
            if input.contains(&0) {
                return Err(MaskFailure::Unparseable("the response text contains NUL bytes"));
            }
            // JSON inside text (an event stream's `data: {...}`, NDJSON as text/plain) is read
            // as JSON even by the detectors alone: scanned raw, an escape glued to a value
            // (`"Ada\t4111..."`, `\u00e4`) would make it one word with the letter before it.
            if plan.has_field_rules() || plan.has_detectors() {
                let (out, report, unreadable) = mask_text_with_json(plan, text);
                // Its lines would get the detectors alone, not the field rules (without field
                // rules, the detectors have read them as text already).
                if let Some(why) = unreadable
                    && plan.has_field_rules()
                    && plan.on_unparseable() == UnparseablePolicy::Refuse
                {
                    return Err(MaskFailure::Unparseable(why));
                }
                return Ok((out, report));
            }
            let (masked, report) = plan.mask_escaped_text(text, false);
            Ok((masked.into_owned().into_bytes(), report))
        }
        ContentClass::Other => Err(MaskFailure::Unparseable(
            "the masker cannot read this content type",
        )),
    }
}

/// Text under rules with JSON fields: JSON labelled as text, the JSON lines of a text stream (an
/// event stream's `data: {...}`, NDJSON sent as text/plain), and JSON documents spread over lines
/// (pretty-printed) get the field rules as JSON does; the other lines get the detectors, a run of
/// them at a time (a private key spans lines). Also says why the field rules could not reach a
/// document: one that never closes, or one that starts as JSON does but does not parse (`NaN`,
/// a lone surrogate, an event's document split over `data:` lines). Linear: a bracketed span
/// that is not JSON is passed over whole, and after an unclosed one no line is looked ahead
/// from again.
fn mask_text_with_json(plan: &MaskingPlan, text: &str) -> (Vec<u8>, MaskReport, Option<&'static str>) {
    let mut out = Vec::with_capacity(text.len());
    let mut report = MaskReport::default();
    if let Ok(r) = plan.mask_json(text.as_bytes(), &mut out) {
        return (out, r, None);
    }
    let mut unclosed = false;
    let mut malformed = false;
    // A line whose prefix pushed a document past the brackets looked at.
    let mut unlooked = false;
    // Where the last event whose data lines were joined ends.
    let mut joined_until = 0;
    out.clear();
    let mut run_start: Option<usize> = None;
    let flush_run = |out: &mut Vec<u8>, report: &mut MaskReport, run: &str| {
        let (masked, r) = plan.mask_escaped_text(run, false);
        report.add(&r);
        out.extend_from_slice(masked.as_bytes());
    };
    let bytes = text.as_bytes();
    let mut at = 0;
    // The line being read (start, end), found once however many documents it holds.
    let mut line_at = (0, 0);
    // Where documents found after a line's prefix, and any after them on that line, end
    // being read on their line alone: text that merely holds a bracket is not held or
    // refused for it.
    let mut embedded_until = 0;
    while at < text.len() {
        let start = at;
        line_at = line_around(bytes, line_at, start);
        let line_end = line_at.1;
        // Read again from inside the line: after a document on it, or at one after its prefix.
        let mid = start > line_at.0;
        let embedded = start < embedded_until;
        at = line_end;
        let line = &text[start..line_end];
        let body = line.trim_end_matches(['\n', '\r']);
        let (prefix, payload) = match body.strip_prefix("data:") {
            Some(rest) => {
                let rest_trimmed = rest.trim_start_matches([' ', '\t']);
                (&body[..body.len() - rest_trimmed.len()], rest_trimmed)
            }
            None => {
                let mut trimmed = body.trim_start_matches([' ', '\t']);
                // A log line stamped by its collector (`kubectl logs --timestamps`): the
                // document after the stamp is the payload.
                if !mid
                    && let Some(end) = crate::masking::detectors::datetime_at(trimmed.as_bytes(), 0)
                    && trimmed[end..].starts_with(' ')
                {
                    let rest = trimmed[end..].trim_start_matches([' ', '\t']);
                    if rest.starts_with(['{', '[']) {
                        trimmed = rest;
                    }
                }
                (&body[..body.len() - trimmed.len()], trimmed)
            }
        };
        let data_line = bytes[line_at.0..].starts_with(b"data:");
        // A carriage return alone ends a line for an event stream's client, not for this
        // reading: such data is not what the client will see.
        if data_line && !mid && body.contains('\r') {
            malformed = true;
        }
        let looks_json = payload.starts_with('{') || payload.starts_with('[');
        let mut masked_json = Vec::new();
        if !looks_json {
            run_start.get_or_insert(start);
            // A document after the line's own prefix (`[INFO] {...}`, `body={...}`): read from
            // its start as one more line, the prefix staying in the run of text.
            if !data_line {
                match embedded_doc(&bytes[start + prefix.len()..], payload.len()) {
                    Some(k) => {
                        at = start + prefix.len() + k;
                        embedded_until = line_end;
                    }
                    None => unlooked |= beyond_looks(&bytes[start + prefix.len()..], payload.len()),
                }
            }
            continue;
        }
        // Inside a line, the rest of it is not tried whole: many documents on one line cost
        // each its own length, not the line's.
        let parsed = if mid {
            None
        } else {
            plan.mask_json(payload.as_bytes(), &mut masked_json).ok()
        };
        // An event's document that does not close on its `data:` line: the client joins the
        // event's data lines into one value (a server splits a pretty-printed document so), so
        // they are masked as one. Tried once per event: its other lines are read one by one.
        if parsed.is_none()
            && data_line
            && !mid
            && at > joined_until
            && json_close(payload.as_bytes()).is_none()
        {
            let end = event_end(bytes, line_end);
            joined_until = end;
            match mask_event(plan, &text[start..end]) {
                Ok((masked, r)) => {
                    if let Some(from) = run_start.take() {
                        flush_run(&mut out, &mut report, &text[from..start]);
                    }
                    report.add(&r);
                    out.extend_from_slice(&masked);
                    at = end;
                    continue;
                }
                Err(like_json) => malformed |= like_json,
            }
        }
        // The document: this line's payload, or what it opens up to where that closes: on the
        // line (text may follow it), or (not on `data:` lines, each its own event) as many
        // lines below as it takes.
        let from = start + prefix.len();
        let (doc_end, rest) = match parsed {
            Some(r) => (Some(from + payload.len()), Some(r)),
            None if unclosed => (None, None),
            None => {
                // A document after a line's prefix is read on its line alone, unless its bracket
                // ends the line (`body={` over a pretty-printed document): a bracket anyone
                // can put in a logged value must neither hold a followed log nor refuse it.
                let line_bound =
                    data_line || (embedded && !opens_over_lines(&bytes[from..start + body.len()]));
                let scope = if line_bound {
                    &bytes[from..start + body.len()]
                } else {
                    &bytes[from..]
                };
                match json_close(scope) {
                    Some(n) => {
                        masked_json.clear();
                        let doc = &bytes[from..from + n];
                        (Some(from + n), plan.mask_json(doc, &mut masked_json).ok())
                    }
                    None if line_bound => (None, None),
                    None => {
                        unclosed = true;
                        (None, None)
                    }
                }
            }
        };
        let Some(doc_end) = doc_end else {
            malformed |= !embedded && !unclosed && json_like(&bytes[from..]);
            run_start.get_or_insert(start);
            continue;
        };
        // The line the document closed on (a later one, for a document over lines).
        line_at = line_around(bytes, line_at, doc_end);
        let after = line_at.1;
        let Some(r) = rest else {
            if embedded && doc_end > line_end {
                // After a prefix, a bracket that ends its line and closes lines below around
                // no document: those lines are read one by one, each document on them masked
                // (a logged `[` must not turn the field rules off until a `]`).
                run_start.get_or_insert(start);
                continue;
            }
            // Brackets that close but hold no JSON (code, say): text, passed over whole.
            malformed |= !embedded && json_like(&bytes[from..]);
            run_start.get_or_insert(start);
            at = after;
            if !data_line {
                match embedded_doc(&bytes[doc_end..], after - doc_end) {
                    Some(k) => {
                        at = doc_end + k;
                        embedded_until = after;
                    }
                    None => unlooked |= beyond_looks(&bytes[doc_end..], after - doc_end),
                }
            }
            continue;
        };
        if let Some(from) = run_start.take() {
            flush_run(&mut out, &mut report, &text[from..start]);
        }
        report.add(&r);
        out.extend_from_slice(prefix.as_bytes());
        out.extend_from_slice(&masked_json);
        // What follows the document on its last line is text like any other.
        if text[doc_end..after].trim().is_empty() {
            out.extend_from_slice(&bytes[doc_end..after]);
        } else if text[doc_end..after]
            .trim_start_matches([' ', '\t'])
            .starts_with(['{', '['])
        {
            // Another document on the line: read from its start as one more line.
            at = doc_end;
            continue;
        } else {
            run_start = Some(doc_end);
            if !data_line {
                match embedded_doc(&bytes[doc_end..], after - doc_end) {
                    Some(k) => {
                        at = doc_end + k;
                        embedded_until = after;
                        continue;
                    }
                    None => unlooked |= beyond_looks(&bytes[doc_end..], after - doc_end),
                }
            }
        }
        at = at.max(after);
    }
    if let Some(from) = run_start {
        flush_run(&mut out, &mut report, &text[from..]);
    }
    let unreadable = if unclosed {
        Some("a JSON document in the text never closes")
    } else if malformed {
        Some("a JSON document in the text does not parse")
    } else if unlooked {
        Some("a line holds an object after more brackets than the masker looks through")
    } else {
        None
    };
    (out, report, unreadable)
}

/// The line (start, end after its newline) holding byte `i` of `bytes`: `known` when `i` lies
/// in it.
fn line_around(bytes: &[u8], known: (usize, usize), i: usize) -> (usize, usize) {
    if (known.0..known.1).contains(&i) {
        return known;
    }
    let start = memchr::memrchr(b'\n', &bytes[..i]).map_or(0, |k| k + 1);
    let end = memchr::memchr(b'\n', &bytes[i..]).map_or(bytes.len(), |k| i + k + 1);
    (start, end)
}

/// Where the event whose lines run from `from` ends: at its blank line (which dispatches it),
/// or at the end of `text`. Comments and other fields between its data lines do not end it.
fn event_end(text: &[u8], mut from: usize) -> usize {
    while from < text.len() {
        let line_end = memchr::memchr(b'\n', &text[from..]).map_or(text.len(), |i| from + i + 1);
        if matches!(&text[from..line_end], b"\n" | b"\r\n") {
            return from;
        }
        from = line_end;
    }
    from
}

/// A data line's value: after `data:` and a space, or after all blanks on the event's first
/// data line (blanks before a document are nothing to it). `None` for other lines.
fn data_value(body: &str, first: bool) -> Option<&str> {
    let rest = body.strip_prefix("data:")?;
    Some(if first {
        rest.trim_start_matches([' ', '\t'])
    } else {
        rest.strip_prefix(' ').unwrap_or(rest)
    })
}

/// One event (its lines up to its blank line) with its `data:` lines masked as the one
/// document their values join into (`\n` between them, as a client joins them). Each data line
/// keeps its prefix and ending; where a rule replaced a whole object or array, the document has
/// fewer lines and the last data lines go, so the client still joins exactly the masked
/// document. Other lines (comments, `id:`) pass as they are. `Err` says whether the joined
/// value looked like JSON that does not parse.
fn mask_event(plan: &MaskingPlan, event: &str) -> Result<(Vec<u8>, MaskReport), bool> {
    let mut joined = String::with_capacity(event.len());
    let mut first = true;
    for line in event.split_inclusive('\n') {
        if let Some(v) = data_value(line.trim_end_matches(['\n', '\r']), first) {
            if !first {
                joined.push('\n');
            }
            joined.push_str(v);
            first = false;
        }
    }
    let mut masked = Vec::with_capacity(joined.len());
    let report = plan
        .mask_json(joined.as_bytes(), &mut masked)
        .map_err(|_| json_like(joined.as_bytes()))?;
    // The masker copies all but the values it replaces, and a replacement holds no line break.
    let mut pieces = masked.split(|&b| b == b'\n');
    let mut out = Vec::with_capacity(event.len());
    first = true;
    for line in event.split_inclusive('\n') {
        let body = line.trim_end_matches(['\n', '\r']);
        let Some(v) = data_value(body, first) else {
            out.extend_from_slice(line.as_bytes());
            continue;
        };
        let Some(piece) = pieces.next() else {
            continue;
        };
        first = false;
        out.extend_from_slice(&body.as_bytes()[..body.len() - v.len()]);
        out.extend_from_slice(piece);
        out.extend_from_slice(&line.as_bytes()[body.len()..]);
    }
    if pieces.next().is_some() {
        return Err(true);
    }
    Ok((out, report))
}

/// Whether `text`, which opens a bracket, goes on as a JSON document does: an object's first
/// key (`{"id":`), or an array's first element followed by a comma (`[1,`, `["a",`, `[null,`),
/// inside any number of arrays, across blank space and lines. Not code, a log line's `[INFO]`
/// or `[2026-12-05 …]`, TOML's `[[package]]`, Python's `[{'id': 1}]`, Ruby's `{"a"=>1}`, nor
/// an event stream's `[DONE]`.
fn json_like(text: &[u8]) -> bool {
    json_like_so_far(text) == Some(true)
}

/// [`json_like`], or `None` when `text` (shorter than the window) ends before it can tell: a
/// streamed document's next line may not have arrived yet.
fn json_like_so_far(text: &[u8]) -> Option<bool> {
    // Read within a window, so a run of brackets costs each line a bounded look.
    let cut = text.len() > JSON_LIKE_WINDOW;
    let text = &text[..text.len().min(JSON_LIKE_WINDOW)];
    // Ran out of text before an answer: undecided, unless the window cut it.
    let ran_out = if cut { Some(false) } else { None };
    let skip_blank = |i: usize| i + text[i..].iter().take_while(|b| b.is_ascii_whitespace()).count();
    // The index after a JSON string starting at `i` (a quote), within a line's reach: `Err`
    // with whether it ran out of text rather than reach a line break or its length limit.
    let string_end = |i: usize| {
        let mut escaped = false;
        for (k, &b) in text.iter().enumerate().skip(i + 1).take(MAX_JSON_LIKE_KEY) {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => return Ok(k + 1),
                b'\n' => return Err(false),
                _ => {}
            }
        }
        Err(text.len() - i - 1 < MAX_JSON_LIKE_KEY)
    };
    // What follows a key or an element must be `want`.
    let followed_by = |e: usize, want: u8| {
        let k = skip_blank(e);
        match text.get(k) {
            Some(&b) => Some(b == want),
            None => ran_out,
        }
    };
    // A string at `i` followed by `want`.
    let string_then = |i: usize, want: u8| match string_end(i) {
        Ok(e) => followed_by(e, want),
        Err(true) => ran_out,
        Err(false) => Some(false),
    };
    let mut i = 0;
    let mut in_array = false;
    while text.get(i) == Some(&b'[') {
        in_array = true;
        i = skip_blank(i + 1);
    }
    match text.get(i) {
        None => ran_out,
        Some(b'{') => {
            let k = skip_blank(i + 1);
            match text.get(k) {
                None => ran_out,
                Some(b'"') => string_then(k, b':'),
                Some(_) => Some(false),
            }
        }
        Some(b'"') if in_array => string_then(i, b','),
        Some(_) if in_array => {
            let scalar = text[i..]
                .iter()
                .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'+' | b'.'))
                .count();
            if i + scalar == text.len() {
                return ran_out;
            }
            let word = &text[i..i + scalar];
            if json_number(word) || matches!(word, b"true" | b"false" | b"null") {
                followed_by(i + scalar, b',')
            } else {
                Some(false)
            }
        }
        _ => Some(false),
    }
}

/// Brackets of a line [`embedded_doc`] tries, so a line of code full of them costs a bounded look.
const MAX_EMBEDDED_LOOKS: usize = 8;

/// Where a document starts inside a line of text, after what the line's writer put before it
/// (`[INFO] {"ssn": ...}`, `level=info body={...}`, `web-1 | {...}`): the first `{` or `[`
/// of `text`'s first `line_len` bytes at which [`json_like`] holds (reading on past the line
/// for a bracket that ends it), of the first [`MAX_EMBEDDED_LOOKS`]. Its field rules reach it
/// there as on a line of its own; brackets that do not open JSON (`{}` templates, `a[i]`) are
/// text.
fn embedded_doc(text: &[u8], line_len: usize) -> Option<usize> {
    memchr::memchr2_iter(b'{', b'[', &text[..line_len])
        .take(MAX_EMBEDDED_LOOKS)
        .find(|&i| json_like(&text[i..]))
}

/// Whether a line holds an object's start (`{`, blanks, `"`) after the first
/// [`MAX_EMBEDDED_LOOKS`] brackets, which [`embedded_doc`] tries: a document pushed out of its
/// reach by a prefix of brackets, which a logged value can supply. Linear.
fn beyond_looks(text: &[u8], line_len: usize) -> bool {
    let line = &text[..line_len];
    let Some(past) = memchr::memchr2_iter(b'{', b'[', line).nth(MAX_EMBEDDED_LOOKS) else {
        return false;
    };
    memchr::memchr_iter(b'{', &line[past..])
        .any(|i| line[past + i + 1..].iter().find(|b| !matches!(b, b' ' | b'\t')) == Some(&b'"'))
}

/// Whether the bracket that `line` (without its line break) starts with ends it: a document
/// written over the lines below, as pretty-printers do (`body={`), which the masker reads over
/// lines even after a prefix.
fn opens_over_lines(line: &[u8]) -> bool {
    line[1..].iter().all(|b| matches!(b, b' ' | b'\t' | b'\r'))
}

/// Whether `w` is a JSON number: `-?int(.digits)?([eE][+-]?digits)?` (not a date's `2026-12-05`).
fn json_number(w: &[u8]) -> bool {
    let digits = |i: usize| w[i..].iter().take_while(|b| b.is_ascii_digit()).count();
    let mut i = usize::from(w.first() == Some(&b'-'));
    let n = digits(i);
    if n == 0 {
        return false;
    }
    i += n;
    if w.get(i) == Some(&b'.') {
        let n = digits(i + 1);
        if n == 0 {
            return false;
        }
        i += 1 + n;
    }
    if matches!(w.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(w.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let n = digits(i);
        if n == 0 {
            return false;
        }
        i += n;
    }
    i == w.len()
}

/// Bytes [`json_like`] reads of a text.
const JSON_LIKE_WINDOW: usize = 1024;

/// Bytes a key or string element is read for by [`json_like`].
const MAX_JSON_LIKE_KEY: usize = 256;

/// Where the JSON value that `text` opens (with `{` or `[`) closes: the index after its last
/// bracket, or `None` when `text` ends first. Brackets inside strings do not count.
fn json_close(text: &[u8]) -> Option<usize> {
    JsonScan::default().feed(text)
}

/// What a streamed text holds back for the JSON field rules, carried from one look to the next:
/// a document open since its first byte, with its scan so far and where the text is held from
/// (the start of the line it, or a document before it on that line, opened on); an event whose
/// `data:` lines have not ended, from its first line's start, with how far its lines were
/// checked.
#[derive(Clone, Copy, Debug, Default)]
struct Held {
    doc: Option<(usize, JsonScan, usize)>,
    event: Option<(usize, usize)>,
}

impl Held {
    /// The buffer now starts `by` bytes later: what is held starts at or after that, or was
    /// passed on (at the stream's end) and nothing is held any more.
    fn shift(&mut self, by: usize) {
        match &mut self.doc {
            Some((start, _, from)) if *from >= by => {
                *start -= by;
                *from -= by;
            }
            _ => self.doc = None,
        }
        match &mut self.event {
            Some((start, checked)) if *start >= by => {
                *start -= by;
                *checked -= by;
            }
            _ => self.event = None,
        }
    }
}

/// A bracket count over a JSON value that may arrive in pieces.
#[derive(Clone, Copy, Debug, Default)]
struct JsonScan {
    depth: usize,
    in_string: bool,
    escaped: bool,
    /// Bytes of the value scanned so far.
    scanned: usize,
}

impl JsonScan {
    /// Scans `value` (the whole value from its first byte) past what was scanned before: where
    /// it closes, or `None` while it is still open.
    fn feed(&mut self, value: &[u8]) -> Option<usize> {
        for (i, &b) in value.iter().enumerate().skip(self.scanned) {
            self.scanned = i + 1;
            if self.in_string {
                match b {
                    _ if self.escaped => self.escaped = false,
                    b'\\' => self.escaped = true,
                    b'"' => self.in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    self.depth = self.depth.saturating_sub(1);
                    if self.depth == 0 {
                        return Some(i + 1);
                    }
                }
                _ => {}
            }
        }
        None
    }
}

/// Where whole lines of streamed `text` may be masked up to under JSON field rules: before the
/// first line that opens a JSON document that has not closed yet, where the masker would read
/// one over lines: `{` or `[` after optional blanks (or a collector's timestamp), or right
/// after another document on its line, or after the line's prefix where its bracket ends the
/// line (`body={`). Masked line by line, its inner lines (`  "ssn": "..."`) would get the
/// detectors only. Any other document after a line's prefix is read on its line alone, so it
/// holds nothing. `open` carries a held document's start and scan from
/// one look to the next, so a large one arriving in many pieces is scanned once.
fn json_safe_end(text: &[u8], open: &mut Held, at_end: bool) -> usize {
    let line_after = |i: usize| memchr::memchr(b'\n', &text[i..]).map_or(text.len(), |k| i + k + 1);
    let mut at = 0;
    if let Some((start, checked)) = open.event.take() {
        let end = event_end(text, checked);
        if end == text.len() && !at_end {
            open.event = Some((start, end));
            return start;
        }
        at = end;
    }
    let mut resumed = open.doc.take();
    loop {
        // The document to scan, its scan so far, where to hold from, and the end of the line
        // being read (0: not found yet).
        let (mut doc, mut scan, hold_from, mut line_end) = match resumed.take() {
            Some((start, scan, from)) => (Some(NextDoc::OverLines(start)), scan, from, 0),
            None if at < text.len() => {
                let line_end = line_after(at);
                // An event's data that opens a document it does not close on its line: held
                // until the event's blank line, so its data lines are masked together (a
                // server splits a pretty-printed document line by line).
                if let Some(rest) = text[at..line_end].strip_prefix(b"data:") {
                    if let Some(k) = rest.iter().position(|b| !matches!(b, b' ' | b'\t'))
                        && matches!(rest[k], b'{' | b'[')
                        && json_close(&rest[k..]).is_none()
                    {
                        let end = event_end(text, line_end);
                        if end == text.len() && !at_end {
                            open.event = Some((at, end));
                            return at;
                        }
                        at = end;
                    } else {
                        at = line_end;
                    }
                    continue;
                }
                match next_doc(text, at, line_end, true, at_end) {
                    NextDoc::Pending => return at,
                    next => (Some(next), JsonScan::default(), at, line_end),
                }
            }
            None => break,
        };
        while let Some(next) = doc.take() {
            // A document read on its line alone that does not close there is text.
            let (from, on_line) = match next {
                NextDoc::OverLines(from) => (from, false),
                NextDoc::OnLine(from) => (from, true),
                NextDoc::None => break,
                NextDoc::Pending => return hold_from,
            };
            let scope = if on_line {
                &text[from..line_end]
            } else {
                &text[from..]
            };
            match scan.feed(scope) {
                None if on_line => break,
                None => {
                    open.doc = Some((from, scan, hold_from));
                    return hold_from;
                }
                Some(n) => {
                    // What follows it on the line it closed on is read as the masker reads it.
                    let close = from + n;
                    if close >= line_end {
                        line_end = line_after(close);
                    }
                    scan = JsonScan::default();
                    doc = Some(next_doc(text, close, line_end, false, at_end));
                }
            }
        }
        at = line_end;
    }
    text.len()
}

/// The next document in (the rest of) a line of a streamed text, as the masker reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NextDoc {
    None,
    /// Starting here, read over as many lines as it takes.
    OverLines(usize),
    /// Starting here after the line's prefix, read on its line alone.
    OnLine(usize),
    /// A bracket ends the text's last line and nothing follows yet: whether a document opens
    /// there shows with the next line.
    Pending,
}

/// The next document in `text[from..line_end]` (`line_start`: `from` starts the line): where
/// [`line_doc`] finds one, or after the line's own prefix where [`embedded_doc`] does.
fn next_doc(text: &[u8], from: usize, line_end: usize, line_start: bool, at_end: bool) -> NextDoc {
    let line = &text[from..line_end];
    if let Some(k) = line_doc(line, line_start) {
        return NextDoc::OverLines(from + k);
    }
    let content = line.len() - line.iter().rev().take_while(|&&b| b == b'\n').count();
    for i in memchr::memchr2_iter(b'{', b'[', &line[..content]).take(MAX_EMBEDDED_LOOKS) {
        let over_lines = opens_over_lines(&line[i..content]);
        match json_like_so_far(&text[from + i..]) {
            Some(true) if over_lines => return NextDoc::OverLines(from + i),
            Some(true) => return NextDoc::OnLine(from + i),
            // Only a bracket that ends its line reads on into lines yet to come.
            None if over_lines && !at_end => return NextDoc::Pending,
            _ => {}
        }
    }
    NextDoc::None
}

/// Where a document the masker reads over lines starts in (the rest of) a line: at its first
/// byte after blanks, or, at a line's start, after a collector's timestamp.
fn line_doc(line: &[u8], line_start: bool) -> Option<usize> {
    let blanks = |i: usize| i + line[i..].iter().take_while(|b| matches!(b, b' ' | b'\t')).count();
    let mut i = blanks(0);
    if line_start
        && let Some(end) = crate::masking::detectors::datetime_at(&line[i..], 0)
        && line.get(i + end) == Some(&b' ')
    {
        let j = blanks(i + end);
        if matches!(line.get(j), Some(b'{' | b'[')) {
            i = j;
        }
    }
    matches!(line.get(i), Some(b'{' | b'[')).then_some(i)
}

/// A body for a recording: capped text (base64 when not UTF-8), masked under `plan` when one
/// applies (whole JSON when the body is complete and parses, else detectors over its text).
/// When the plan has JSON field rules and fails closed (`Refuse`, as on Kubernetes connections,
/// whose Secret values only field rules find), a body that is not complete JSON is withheld
/// instead: detectors over its text would pass a Secret's value in YAML or protobuf. JSON is kept as text rather than
/// parsed into the event: parsing and copying the tree cost more than the rest of the recording
/// (profiled with `bench/http.sh`), and the text is exactly what crossed the gateway.
///
/// `url_encoded` says the body is a form: its text is scanned as decoded too, `+` as a space.
pub fn body_for_record<'a>(
    plan: Option<&MaskingPlan>,
    bytes: &'a [u8],
    complete: bool,
    url_encoded: bool,
) -> CappedBody<'a> {
    if plan.is_some_and(MaskingPlan::withholds_bodies) {
        return CappedBody::withheld(bytes.len(), "this body cannot be masked (a Secret's patch)");
    }
    let Some(plan) = plan.filter(|p| !p.is_empty()) else {
        return cap_body(bytes, MAX_RECORDED_BODY);
    };
    let mut out = Vec::new();
    if complete && plan.mask_json(bytes, &mut out).is_ok() {
        return CappedBody::json(Cow::Owned(out), MAX_RECORDED_BODY);
    }
    // Field rules cannot reach into other formats; detectors alone read text as well as JSON.
    if plan.has_field_rules() && plan.on_unparseable() == UnparseablePolicy::Refuse {
        let why = if complete {
            "this body is not JSON the masker can read"
        } else {
            "this body was cut before its end, so it cannot be masked whole"
        };
        return CappedBody::withheld(bytes.len(), why);
    }
    // A cut JSON text: its whole values, masked, as text (it no longer parses).
    if !complete
        && matches!(bytes.iter().find(|b| !b.is_ascii_whitespace()), Some(b'{' | b'['))
        && let Ok((_, covered)) = plan.mask_json_prefix(bytes, &mut out)
        && covered > 0
    {
        return CappedBody::new(Cow::Owned(out), MAX_RECORDED_BODY);
    }
    // Escaped values (`%0A4111…`) hide from a scan of the bytes; a `%` in other text decodes
    // to nothing a detector reads differently. Bytes that are not text stay as they are, so
    // the body stays binary: read as text, CBOR's `true` and `false` would both show as U+FFFD
    // to an approver, who is told instead that it is not text.
    let (masked, _) = mask_pieces(plan, bytes, complete, url_encoded);
    CappedBody::new(Cow::Owned(masked), MAX_RECORDED_BODY)
}

/// A rewrite of a body's data, chunk by chunk, that may hold bytes back until the next chunk
/// (a partial line, the start of a credential). Errors end the stream: the client sees a cut
/// body, never an unrewritten one.
pub trait Rewrite: Send + Sync + Unpin + 'static {
    /// Takes the next chunk; returns what can be sent now.
    fn chunk(&mut self, data: Bytes) -> Result<Option<Bytes>, BodyError>;
    /// The body ended; returns what was held back.
    fn end(&mut self) -> Result<Option<Bytes>, BodyError>;
    /// Bytes it holds back (and bills to the masking budget): see [`HELD_LIMIT`].
    fn held(&self) -> usize {
        0
    }
    /// [`HELD_LIMIT`] passed: what can go on instead of what it holds (lines held behind an
    /// unclosed document, as text, where the rules allow it), or the error that ends the stream.
    fn stalled(&mut self) -> Result<Option<Bytes>, BodyError> {
        Err(Box::new(HeldTooLong))
    }
    /// Lets go of what it holds (and the budget share that holds): the stream was cut.
    fn abandon(&mut self) {}
}

/// Longest a rewrite may hold [`HELD_MIN`] bytes or more while it sends nothing and what it
/// holds grows by less than [`HELD_MIN`]: a line that never ends, or lines held behind a
/// document that never closes (an upstream, or a followed pod's log, that writes them and
/// stops), would keep their share of the masking budget for as long as the stream stays open,
/// and enough such streams would refuse every masked response. Then held lines go on as text
/// where the rules allow it, and otherwise the stream is cut. Lines that keep going out, a long
/// line still arriving, a short hold (a prompt, `Waiting for DB...`), and a quiet stream holding
/// nothing (a watch between events) are never cut.
pub const HELD_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Least held bytes [`HELD_LIMIT`] applies to, and the growth that counts as progress: 64 of
/// the budget's KiB.
pub const HELD_MIN: usize = 64 * 1024;

/// The error a stream ends with when [`HELD_LIMIT`] passed and nothing could go on.
#[derive(Debug, thiserror::Error)]
#[error("the upstream left a long line or document unfinished for {} s: the stream was cut, since the masker cannot send a value it has not seen whole", HELD_LIMIT.as_secs())]
pub struct HeldTooLong;

/// A body whose data passes through a [`Rewrite`]; other frames (trailers) pass unchanged.
pub struct Rewritten<R> {
    inner: Body,
    rewrite: R,
    done: bool,
    /// When what the rewrite holds must have gone out by (see [`HELD_LIMIT`]).
    held_until: Option<Pin<Box<tokio::time::Sleep>>>,
    /// What it held when the limit was armed.
    held_then: usize,
}

impl<R: Rewrite> Rewritten<R> {
    pub fn new(inner: Body, rewrite: R) -> Self {
        Self {
            inner,
            rewrite,
            done: false,
            held_until: None,
            held_then: 0,
        }
    }

    /// Arms the limit while [`HELD_MIN`] bytes or more are held, restarts it when they grew by
    /// [`HELD_MIN`], disarms it when less is held (sending something disarms it too). Returns
    /// whether it has passed.
    fn held_too_long(&mut self, cx: &mut Context<'_>) -> bool {
        let held = self.rewrite.held();
        if held < HELD_MIN || held >= self.held_then.saturating_add(HELD_MIN) {
            self.held_until = None;
            self.held_then = held;
            if held < HELD_MIN {
                return false;
            }
        }
        let deadline = self
            .held_until
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(HELD_LIMIT)));
        deadline.as_mut().poll(cx).is_ready()
    }

    /// [`HELD_LIMIT`] passed: what the rewrite can send instead, or the end of the stream.
    fn stalled(&mut self) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.held_until = None;
        match self.rewrite.stalled() {
            Ok(Some(b)) => Poll::Ready(Some(Ok(Frame::data(b)))),
            Ok(None) => self.cut(Box::new(HeldTooLong)),
            Err(e) => self.cut(e),
        }
    }

    fn cut(&mut self, e: BodyError) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.done = true;
        self.rewrite.abandon();
        Poll::Ready(Some(Err(e)))
    }
}

impl<R: Rewrite> HttpBody for Rewritten<R> {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            let step = match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending if self.held_too_long(cx) => return self.stalled(),
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    self.done = true;
                    self.rewrite.end()
                }
                Poll::Ready(Some(Err(e))) => Err(e),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => self.rewrite.chunk(data),
                    // Trailers (HTTP/2 forwards them) are neither masked nor scrubbed: dropped.
                    Err(_) => continue,
                },
            };
            match step {
                Ok(Some(b)) => {
                    // Something went out: what is held now waits afresh.
                    self.held_until = None;
                    return Poll::Ready(Some(Ok(Frame::data(b))));
                }
                // A trickle of bytes that sends nothing is no progress.
                Ok(None) if self.held_too_long(cx) => return self.stalled(),
                Ok(None) => continue,
                Err(e) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

/// Masks a stream line by line: newline-separated JSON values (a watch) value by value, or
/// text (a followed log, server-sent events) by detectors as each line completes. A line longer
/// than the masking cap, a JSON line that does not parse, or text that is not UTF-8 ends the
/// stream with an error.
pub struct LineMasker {
    plan: MaskingPlan,
    class: ContentClass,
    buf: BytesMut,
    /// How much of `buf` was searched for line breaks already.
    scanned: usize,
    /// Where the complete lines held back (a private key awaiting its END) end, relative to
    /// the buffer's start: still complete lines when no new break arrives.
    ended: usize,
    /// A JSON document held open in `buf` (see [`json_safe_end`]).
    open_json: Held,
    /// Lines held behind an unclosed document go on as text at the next drain (see
    /// [`HELD_LIMIT`]).
    release_held: bool,
    on_report: Arc<dyn Fn(&MaskReport) + Send + Sync>,
    /// The gateway's masking budget, and the share of it `buf` holds (one permit per KiB): a
    /// long line waiting for its end is memory like a whole body being masked.
    budget: Option<(
        Arc<tokio::sync::Semaphore>,
        Option<tokio::sync::OwnedSemaphorePermit>,
    )>,
}

/// `inner` masked line by line under `plan` as `class` (JSON or text); `on_report` counts what
/// was masked.
pub fn masked_lines(
    inner: Body,
    plan: MaskingPlan,
    class: ContentClass,
    on_report: Arc<dyn Fn(&MaskReport) + Send + Sync>,
) -> Rewritten<LineMasker> {
    masked_lines_within(inner, plan, class, on_report, None)
}

/// [`masked_lines`], the bytes it holds back drawn from `budget` (see [`MAX_MASKING_MEMORY`]).
pub fn masked_lines_within(
    inner: Body,
    plan: MaskingPlan,
    class: ContentClass,
    on_report: Arc<dyn Fn(&MaskReport) + Send + Sync>,
    budget: Option<Arc<tokio::sync::Semaphore>>,
) -> Rewritten<LineMasker> {
    Rewritten::new(
        inner,
        LineMasker {
            plan,
            class,
            buf: BytesMut::new(),
            scanned: 0,
            ended: 0,
            open_json: Held::default(),
            release_held: false,
            on_report,
            budget: budget.map(|b| (b, None)),
        },
    )
}

/// Most bytes of complete lines held back for one JSON document spread over lines of a streamed
/// text: past this the stream is cut (or, where the rules allow it, the lines go on as text).
pub const MAX_JSON_HOLD: usize = 1024 * 1024;

/// Opens and closes a PEM block; a private key's is the one detected value that spans lines.
const PEM_BEGIN: &[u8] = b"-----BEGIN ";
const PEM_END: &[u8] = b"-----END ";
const PRIVATE_KEY: &[u8] = b"PRIVATE KEY";
/// Most bytes of complete lines held back for one private key awaiting its END line (a real key
/// is under 10 KiB): past this the stream is cut rather than the key passed in parts.
pub const MAX_PEM_HOLD: usize = 64 * 1024;

impl LineMasker {
    /// Masks every complete line in the buffer (everything when `all`).
    fn drain(&mut self, all: bool) -> Result<Option<Bytes>, BodyError> {
        let lines_end = if all {
            self.buf.len()
        } else {
            // Only what arrived since the last look can hold a new line break.
            let found = memchr::memrchr(b'\n', &self.buf[self.scanned..]).map(|i| self.scanned + i + 1);
            self.scanned = self.buf.len();
            found.unwrap_or(self.ended)
        };
        let mut end = lines_end;
        if !all && self.class == ContentClass::Text {
            end = pem_safe_end(&self.buf[..lines_end]);
            if lines_end - end > MAX_PEM_HOLD {
                return Err("a private key in a streamed text did not end within the hold limit".into());
            }
        }
        if self.class == ContentClass::Text && (self.plan.has_field_rules() || self.plan.has_detectors()) {
            let json_end = json_safe_end(&self.buf[..lines_end], &mut self.open_json, all);
            let refuse =
                self.plan.has_field_rules() && self.plan.on_unparseable() == UnparseablePolicy::Refuse;
            if all && json_end < lines_end && refuse {
                return Err("a JSON document in a streamed text ended unfinished".into());
            }
            let release = std::mem::take(&mut self.release_held);
            if !all && json_end < lines_end && (release || lines_end - json_end > MAX_JSON_HOLD) {
                if refuse {
                    return Err(
                        "a JSON document in a streamed text did not close within the hold limit".into(),
                    );
                }
                // Where the rules allow it, the held lines go on as text rather than stall.
                self.open_json = Held::default();
            } else if !all {
                end = end.min(json_end);
            }
        }
        self.ended = lines_end - end;
        if end == 0 {
            if self.buf.len() > MAX_MASKED_BODY {
                return Err("a streamed line exceeds the masking limit".into());
            }
            return Ok(None);
        }
        let chunk = self.buf.split_to(end);
        self.scanned = self.buf.len();
        self.open_json.shift(end);
        let (out, report) = match mask_whole(&self.plan, self.class, &chunk) {
            Ok(masked) => masked,
            // Text the masker cannot read (not UTF-8) passes as it is only where every rule
            // says so, as a whole body would.
            // Its text still meets the detectors, the bytes that are not text passing as they
            // are: a NUL or a stray byte must not carry the values beside it out unread.
            Err(_) if self.plan.on_unparseable() == UnparseablePolicy::Allow => {
                mask_text_pieces(&self.plan, &chunk)
            }
            Err(_) => return Err("a streamed line could not be masked".into()),
        };
        (self.on_report)(&report);
        Ok(Some(Bytes::from(out)))
    }
}

/// Where whole lines of `text` may be masked up to: before the line of the first private key
/// whose END line has not arrived, which is held until it does (line by line, the detector
/// would see neither its start nor its end with the key between). Other PEM blocks
/// (certificates) hold nothing.
fn pem_safe_end(text: &[u8]) -> usize {
    let line_end = |from: usize| memchr::memchr(b'\n', &text[from..]).map_or(text.len(), |i| from + i);
    let mut from = 0;
    while let Some(i) = memchr::memmem::find(&text[from..], PEM_BEGIN) {
        let begin = from + i;
        let header_end = line_end(begin);
        from = header_end;
        if memchr::memmem::find(&text[begin..header_end], PRIVATE_KEY).is_none() {
            continue;
        }
        // Its END: the END line right after what reads as a key's body, if it names a private
        // key; where the body ends before the text does, the key's match has ended there, and
        // nothing is held for it.
        let label = begin + PEM_BEGIN.len();
        let marker_end =
            memchr::memmem::find(&text[label..header_end], b"-----").map_or(header_end, |k| label + k + 5);
        let body_end = crate::masking::detectors::pem_body_end(text, begin, marker_end);
        let closed = text[body_end..]
            .starts_with(PEM_END)
            .then(|| line_end(body_end))
            .filter(|&end_line| memchr::memmem::find(&text[body_end..end_line], PRIVATE_KEY).is_some());
        match closed {
            Some(after) => from = after,
            None if body_end < text.len() => from = body_end.max(header_end),
            None => return memchr::memrchr(b'\n', &text[..begin]).map_or(0, |i| i + 1),
        }
    }
    text.len()
}

impl LineMasker {
    /// Holds as much of the budget as `buf` now takes: more as it grows, the rest given back.
    fn charge(&mut self) -> Result<(), BodyError> {
        let Some((budget, held)) = &mut self.budget else {
            return Ok(());
        };
        let need = self.buf.len().div_ceil(1024);
        let have = held.as_ref().map_or(0, |p| p.num_permits());
        if need > have {
            let more = u32::try_from(need - have)
                .ok()
                .and_then(|n| budget.clone().try_acquire_many_owned(n).ok())
                .ok_or_else(|| -> BodyError {
                    format!("the gateway already holds {MAX_MASKING_MEMORY} bytes of bodies to mask").into()
                })?;
            match held {
                Some(p) => p.merge(more),
                None => *held = Some(more),
            }
        } else if need < have
            && let Some(p) = held
        {
            drop(p.split(have - need));
        }
        Ok(())
    }
}

impl Rewrite for LineMasker {
    fn chunk(&mut self, data: Bytes) -> Result<Option<Bytes>, BodyError> {
        self.buf.extend_from_slice(&data);
        // Charged for what stays held once the complete lines are out.
        let out = self.drain(false);
        self.charge()?;
        out
    }

    fn end(&mut self) -> Result<Option<Bytes>, BodyError> {
        self.drain(true)
    }

    fn held(&self) -> usize {
        self.buf.len()
    }

    fn stalled(&mut self) -> Result<Option<Bytes>, BodyError> {
        // Complete lines held behind a document that has not closed go on as text where the
        // rules allow it, as past the hold limit; an unfinished line or a private key cannot.
        self.release_held = true;
        let out = self.drain(false);
        self.release_held = false;
        match out? {
            Some(out) => {
                self.charge()?;
                Ok(Some(out))
            }
            None => Err(Box::new(HeldTooLong)),
        }
    }

    fn abandon(&mut self) {
        self.buf = BytesMut::new();
        self.scanned = 0;
        self.ended = 0;
        self.open_json = Held::default();
        if let Some((_, held)) = &mut self.budget {
            *held = None;
        }
    }
}

/// Passes a body through while keeping its first [`MAX_RECORDED_BODY`] bytes; when the body
/// ends (or is dropped) the kept bytes are recorded as one event. The event is written before
/// the body's last frame (or its end) is passed on: when recording is required and the write
/// fails, the body ends in an error instead, so its receiver never has it whole (hyper aborts
/// the message: an upstream never sees a complete request, an agent a complete response).
pub struct Recorded {
    inner: Body,
    kept: Vec<u8>,
    total: u64,
    finished: bool,
    sink: Option<RecordSink>,
    withheld: Option<Arc<std::sync::atomic::AtomicBool>>,
}

/// Where a [`Recorded`] body writes its event.
pub struct RecordSink {
    pub session: Arc<Session>,
    pub kind: &'static str,
    pub request_id: String,
    /// Masks what was kept before it is written (`None`: write as is).
    pub plan: Option<MaskingPlan>,
    /// The body's declared length (`Content-Length`, when the bytes keep it): a body that reached
    /// it is complete, though hyper stops reading there and drops it without an end of stream.
    pub declared: Option<u64>,
    pub on_failure: Arc<dyn Fn() + Send + Sync>,
    /// Recording mode Required: a failed write fails the body.
    pub required: bool,
    /// Set when the body was failed for that reason (its last frame withheld).
    pub withheld: Option<Arc<std::sync::atomic::AtomicBool>>,
}

/// The error a [`Recorded`] body ends with when its required record could not be written.
#[derive(Debug, thiserror::Error)]
#[error("the body's session record could not be written, and recording is required")]
pub struct RecordingFailed;

impl Recorded {
    pub fn new(inner: Body, sink: Option<RecordSink>) -> Self {
        Self {
            inner,
            kept: Vec::new(),
            total: 0,
            finished: false,
            withheld: sink.as_ref().and_then(|s| s.withheld.clone()),
            sink,
        }
    }

    /// Writes the event once; false when the write failed and recording is required.
    fn flush(&mut self) -> bool {
        let Some(sink) = self.sink.take() else { return true };
        let finished = self.finished || sink.declared == Some(self.total);
        let complete = finished && self.total as usize == self.kept.len();
        // Only a prefix is kept of a long body: the record says how long it was.
        let body = body_for_record(sink.plan.as_ref(), &self.kept, complete, false)
            .of_total(self.total as usize)
            .unfinished(!finished);
        let data = crate::recording::BodyEvent {
            request_id: &sink.request_id,
            bytes: self.total,
            complete: finished,
            body,
        };
        if sink.session.record(sink.kind, data).is_err() {
            (sink.on_failure)();
            return !sink.required;
        }
        true
    }
}

impl Drop for Recorded {
    fn drop(&mut self) {
        // Too late to fail anything: the failure is counted.
        self.flush();
    }
}

impl HttpBody for Recorded {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        // hyper stops polling a body once it has what ends it: its declared length, a frame after
        // which the body says it is at its end, or trailers. Such a frame is its last.
        let last = match &polled {
            Poll::Ready(Some(Ok(frame))) => match frame.data_ref() {
                Some(d) => {
                    self.total += d.len() as u64;
                    if self.sink.is_some() {
                        let room = MAX_RECORDED_BODY.saturating_sub(self.kept.len());
                        let take = room.min(d.len());
                        self.kept.extend_from_slice(&d[..take]);
                    }
                    self.sink.as_ref().is_some_and(|s| s.declared == Some(self.total))
                        || self.inner.is_end_stream()
                }
                // Trailers.
                None => {
                    self.finished = true;
                    true
                }
            },
            Poll::Ready(None) => {
                self.finished = true;
                true
            }
            _ => false,
        };
        if last && !self.flush() {
            if let Some(w) = &self.withheld {
                w.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            return Poll::Ready(Some(Err(Box::new(RecordingFailed))));
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        // Not before the record is written: hyper would end the message without polling again.
        self.sink.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::masking::HashKey;
    use crate::protocol::http::body::full;
    use serde_json::json;

    #[test]
    fn content_types_are_classified() {
        assert_eq!(
            classify(Some("application/json; charset=utf-8")),
            ContentClass::Json
        );
        assert_eq!(classify(Some("application/merge-patch+json")), ContentClass::Json);
        assert_eq!(classify(Some("text/plain")), ContentClass::Text);
        assert_eq!(
            classify(Some("application/vnd.kubernetes.protobuf")),
            ContentClass::Other
        );
        assert_eq!(classify(None), ContentClass::Other);
        assert_eq!(classify(Some(" Application/JSON ")), ContentClass::Json);
        assert_eq!(
            classify(Some("application/APPLY-PATCH+YAML")),
            ContentClass::Other
        );
        assert_eq!(classify(Some("application/Foo+JSON;v=1")), ContentClass::Json);
        assert_eq!(classify(Some("TEXT/csv")), ContentClass::Text);
        assert_eq!(classify(Some("text")), ContentClass::Other);
        assert_eq!(classify(Some("+json")), ContentClass::Json);
    }

    /// A body cut at the recording's cap is recorded as far as it could be judged: a cut JSON
    /// text as its whole values masked (escapes decoded), other text up to the word the cut
    /// went through, a form as decoded.
    #[test]
    fn cut_and_encoded_bodies_are_recorded_masked() {
        let plan = MaskingPlan::compile(
            &[&serde_json::from_value(json!({"detectors": ["Email", "CreditCard"]})).unwrap()],
            HashKey::from_bytes([1; 32]),
        )
        .unwrap();
        let recorded = |bytes: &[u8], complete: bool, form: bool| {
            serde_json::to_string(&body_for_record(Some(&plan), bytes, complete, form)).unwrap()
        };
        let json = recorded(
            br#"{"a":"x\u0040y.com","n":"card\n4111111111111111","m":"4111 1111 1111 111"#,
            false,
            false,
        );
        assert!(
            json.contains("[REDACTED:EMAIL]") && json.contains("[REDACTED:CREDIT_CARD]"),
            "{json}"
        );
        assert!(!json.contains("1111 111") && !json.contains("u0040y"), "{json}");
        let log = recorded(
            b"[INFO] paid with 4111 1111 1111 1111 by x@y.io\n[INFO] next lin",
            false,
            false,
        );
        assert!(
            log.contains("[INFO] paid with [REDACTED:CREDIT_CARD] by [REDACTED:EMAIL]"),
            "{log}"
        );
        let csv = recorded(b"id,card\n1,4111 1111 1111 111", false, false);
        assert!(!csv.contains("1111 111"), "{csv}");
        let form = recorded(b"card=4111+1111+1111+1111&to=a%40b.io", true, true);
        assert!(!form.contains("4111") && !form.contains("a%40b"), "{form}");
        // A cut through a multi-byte character leaves text: the fragment is dropped.
        let cut = body_for_record(
            Some(&plan),
            "line one\nJos\u{e9}".as_bytes().split_last().unwrap().1,
            false,
            false,
        );
        assert_eq!(cut.unreadable(), None);
        assert!(cut.for_reading().starts_with("line one"), "{}", cut.for_reading());
    }

    /// A body that is not text stays binary under a masking plan, so an approver is told it is
    /// not text rather than shown U+FFFD where CBOR's `true` (0xf5) or `false` (0xf4) was; the
    /// record keeps its bytes with each run of text in them masked.
    #[test]
    fn binary_bodies_stay_binary_under_masking() {
        let plan = MaskingPlan::compile(
            &[&serde_json::from_value(json!({"detectors": ["Email"]})).unwrap()],
            HashKey::from_bytes([1; 32]),
        )
        .unwrap();
        for complete in [true, false] {
            for cbor in [&b"\xa1\x6aprivileged\xf5"[..], &b"\xa1\x6aprivileged\xf4"[..]] {
                let body = body_for_record(Some(&plan), cbor, complete, false);
                assert!(
                    body.unreadable().is_some_and(|why| why.contains("not text")),
                    "{complete}"
                );
            }
            let mixed = body_for_record(Some(&plan), b"\x00\x01to ada@example.com\xff", complete, false);
            let recorded = serde_json::to_value(&mixed).unwrap();
            let kept = base64::Engine::decode(
                &base64::engine::general_purpose::STANDARD,
                recorded["base64"].as_str().unwrap(),
            )
            .unwrap();
            assert_eq!(kept, b"\x00\x01to [REDACTED:EMAIL]\xff", "{complete}");
        }
    }

    fn frames(chunks: &[&'static str]) -> Body {
        let frames: Vec<Result<Frame<Bytes>, BodyError>> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes()))))
            .collect();
        http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed()
    }

    #[tokio::test]
    async fn a_body_is_read_whole_from_one_frame_or_many_up_to_the_cap() {
        let one = read_capped(frames(&["{\"a\":1}"]), 7).await.unwrap();
        assert_eq!(&one[..], b"{\"a\":1}");
        let many = read_capped(frames(&["", "{\"a\"", ":", "1}"]), 7).await.unwrap();
        assert_eq!(&many[..], b"{\"a\":1}");
        assert_eq!(&read_capped(frames(&[]), 7).await.unwrap()[..], b"");
        assert!(matches!(
            read_capped(frames(&["{\"a\":1}", " "]), 7).await,
            Err(MaskFailure::TooLarge)
        ));
        assert!(matches!(
            read_capped(frames(&["abcd", "efgh"]), 7).await,
            Err(MaskFailure::TooLarge)
        ));
        assert!(matches!(
            read_capped(frames(&["12345678"]), 7).await,
            Err(MaskFailure::TooLarge)
        ));
    }

    fn sink(session: &Arc<crate::recording::Session>, declared: Option<u64>, required: bool) -> RecordSink {
        RecordSink {
            session: session.clone(),
            kind: "http.request.body",
            request_id: "r1".into(),
            plan: None,
            declared,
            on_failure: Arc::new(|| {}),
            required,
            withheld: None,
        }
    }

    /// Polls a body to its end: the data passed on, then how it ended.
    async fn drain(mut body: Body) -> (Vec<u8>, Result<(), String>) {
        let mut data = Vec::new();
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => data.extend_from_slice(f.data_ref().map_or(&[][..], |d| &d[..])),
                Err(e) => return (data, Err(e.to_string())),
            }
        }
        (data, Ok(()))
    }

    /// A session recorded in Required mode, in a directory kept as long as the guard.
    fn required_session() -> (tempfile::TempDir, Arc<crate::recording::Session>) {
        let dir = tempfile::tempdir().unwrap();
        let rec = crate::recording::Recorder::new(
            dir.path().join("spool"),
            agentgate_crds::gateway::RecordingMode::Required,
            "team/gw",
        )
        .unwrap();
        let s = rec.start_session(json!({})).unwrap();
        (dir, s)
    }

    /// A streamed body's record hides the agent's token in bytes that are not text, which
    /// are recorded in base64 (where the event's scrub cannot see it).
    #[tokio::test]
    async fn a_recorded_binary_body_hides_the_token() {
        let (_dir, s) = required_session();
        let token = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhZ2VudCJ9.c2lnbmF0dXJl";
        s.hide(token.as_bytes());
        let mut bytes = vec![0xffu8, 0xfe];
        bytes.extend_from_slice(token.as_bytes());
        let body: Body = http_body_util::Full::new(Bytes::from(bytes))
            .map_err(|e| -> BodyError { match e {} })
            .boxed();
        let body = Recorded::new(body, Some(sink(&s, None, true))).boxed();
        assert!(drain(body).await.1.is_ok());
        s.close(json!({})).unwrap();
        let written = std::fs::read_to_string(s.path()).unwrap();
        let event: serde_json::Value = written
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|e| e["type"] == "http.request.body")
            .unwrap_or_else(|| panic!("{written}"));
        let b64 = event["data"]["body"]["base64"]
            .as_str()
            .unwrap_or_else(|| panic!("{event}"));
        use base64::Engine;
        let kept = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
        assert_eq!(kept, b"\xff\xfe[REDACTED]");
    }

    /// The record is written before a body's last frame is passed on; when recording is
    /// required and that write fails, the last frame is withheld and the body fails, so the
    /// receiver never gets it whole. Best effort passes it on.
    #[tokio::test]
    async fn a_body_whose_required_record_fails_is_never_passed_on_whole() {
        let (_dir, s) = required_session();
        // Recorded: the whole body is passed on, and its record is on disk.
        for declared in [Some(6), None] {
            let body = Recorded::new(frames(&["abc", "def"]), Some(sink(&s, declared, true))).boxed();
            assert_eq!(drain(body).await, (b"abcdef".to_vec(), Ok(())));
        }
        let written = std::fs::read_to_string(s.path()).unwrap();
        assert_eq!(written.matches("\"text\":\"abcdef\"").count(), 2, "{written}");

        s.break_disk();
        // Framed by a declared length: the frame that completes it is withheld.
        let body = Recorded::new(frames(&["abc", "def"]), Some(sink(&s, Some(6), true))).boxed();
        let (data, end) = drain(body).await;
        assert_eq!(data, b"abc");
        assert!(end.unwrap_err().contains("could not be written"));
        // Unframed: the end of the stream becomes an error.
        let body = Recorded::new(frames(&["abc", "def"]), Some(sink(&s, None, true))).boxed();
        let (data, end) = drain(body).await;
        assert_eq!(data, b"abcdef");
        assert!(end.is_err());
        // Best effort: passed on whole; the failure is only counted.
        let body = Recorded::new(frames(&["abc", "def"]), Some(sink(&s, Some(6), false))).boxed();
        assert_eq!(drain(body).await, (b"abcdef".to_vec(), Ok(())));

        // A body that says it has ended with its last frame (hyper then polls it no further):
        // that frame is withheld, and the wrapper does not claim the end before its record.
        let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut failing = sink(&s, None, true);
        failing.withheld = Some(flag.clone());
        let wrapped = Recorded::new(full(Bytes::from_static(b"abcdef")), Some(failing));
        assert!(
            !wrapped.is_end_stream(),
            "the end is claimed before the record is written"
        );
        let (data, end) = drain(wrapped.boxed()).await;
        assert!(data.is_empty() && end.is_err(), "{data:?} {end:?}");
        assert!(flag.load(std::sync::atomic::Ordering::Relaxed));
        // Trailers end a body too: withheld when the record before them fails.
        let with_trailers: Vec<Result<Frame<Bytes>, BodyError>> = vec![
            Ok(Frame::data(Bytes::from_static(b"abc"))),
            Ok(Frame::trailers(hyper::HeaderMap::new())),
        ];
        let body = http_body_util::StreamBody::new(futures_util::stream::iter(with_trailers)).boxed();
        let mut body = Recorded::new(body, Some(sink(&s, None, true))).boxed();
        assert!(body.frame().await.unwrap().unwrap().is_data());
        assert!(
            body.frame().await.unwrap().is_err(),
            "the trailers were passed on"
        );
        // Best effort does not report a withheld body.
        let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut lenient = sink(&s, None, false);
        lenient.withheld = Some(flag.clone());
        let body = Recorded::new(full(Bytes::from_static(b"abcdef")), Some(lenient)).boxed();
        assert_eq!(drain(body).await, (b"abcdef".to_vec(), Ok(())));
        assert!(!flag.load(std::sync::atomic::Ordering::Relaxed));
    }

    /// A watch stream masks the same however its events are split into chunks.
    #[tokio::test]
    async fn watch_lines_mask_the_same_for_any_chunking() {
        let plan = MaskingPlan::empty(HashKey::from_bytes([3; 32]))
            .with_kubernetes_secrets()
            .merge(
                &MaskingPlan::compile(
                    &[&serde_json::from_value(serde_json::json!({"detectors": ["Email"]})).unwrap()],
                    HashKey::from_bytes([3; 32]),
                )
                .unwrap(),
            );
        let events: [&[u8]; 3] = [
            b"{\"type\":\"ADDED\",\"object\":{\"kind\":\"Secret\",\"data\":{\"k\":\"c2VjcmV0\"}}}\n",
            b"{\"type\":\"MODIFIED\",\"object\":{\"kind\":\"ConfigMap\",\"data\":{\"owner\":\"a@example.com\"}}}\n",
            b"{\"type\":\"BOOKMARK\",\"object\":{\"metadata\":{\"resourceVersion\":\"12\"}}}\n",
        ];
        let mut rng = crate::mutate::Mutator::new(9);
        for _ in 0..200 * crate::mutate::scale() {
            let body: Vec<u8> = (0..1 + rng.below(6))
                .flat_map(|_| rng.pick(&events).to_vec())
                .collect();
            let mut whole = Vec::new();
            plan.mask_json(&body, &mut whole).unwrap();
            let mut frames = Vec::new();
            let mut rest = &body[..];
            while !rest.is_empty() {
                let n = 1 + rng.below(rest.len().min(90));
                frames.push(Ok(Frame::data(Bytes::copy_from_slice(&rest[..n]))));
                rest = &rest[n..];
            }
            let stream: Body = http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed();
            let out = masked_lines(
                stream,
                plan.clone(),
                ContentClass::Json,
                Arc::new(|_: &MaskReport| {}),
            )
            .collect()
            .await
            .unwrap()
            .to_bytes();
            assert_eq!(&out[..], &whole[..]);
            let text = String::from_utf8_lossy(&out);
            assert!(
                !text.contains("c2VjcmV0") && !text.contains("a@example.com"),
                "{text}"
            );
        }
    }

    #[test]
    fn masking_class_refuses_what_the_masker_would_misread() {
        let fields: Vec<agentgate_crds::policy::MaskingRule> =
            serde_json::from_value(json!([{"jsonFields": ["$..ssn"]}, {"detectors": ["Email"]}])).unwrap();
        let fields = MaskingPlan::compile(&fields.iter().collect::<Vec<_>>(), HashKey::process()).unwrap();
        let detectors = text_plan();
        let class = |ct: &str, plan: &MaskingPlan| masking_class(Some(ct), plan);
        // Text formats whose fields no JSON rule reaches, where field rules apply.
        for ct in ["text/csv", "text/html; charset=utf-8", "text/yaml", "text/xml"] {
            assert_eq!(class(ct, &fields), ContentClass::Other, "{ct}");
            assert_eq!(class(ct, &detectors), ContentClass::Text, "{ct}");
        }
        for ct in ["text/plain", "Text/Event-Stream", "text/plain; charset=\"UTF-8\""] {
            assert_eq!(class(ct, &fields), ContentClass::Text, "{ct}");
        }
        // Charsets in which ASCII is not itself.
        for ct in [
            "text/plain; charset=utf-16le",
            "application/json; charset=UTF-16",
            "text/plain;charset=utf-7",
        ] {
            assert_eq!(class(ct, &detectors), ContentClass::Other, "{ct}");
        }
        assert_eq!(
            class("application/json; charset=iso-8859-1", &detectors),
            ContentClass::Json
        );
        for ct in [
            "text/plain; charset=latin-1",
            "text/plain; charset=cp1252",
            "text/plain; charset=KOI8-R",
        ] {
            assert_eq!(class(ct, &detectors), ContentClass::Text, "{ct}");
        }
        // A document pushed past the brackets looked at by a prefix the agent can write.
        let pushed = "GET /q=[][][][][][][][] user={\"ssn\":\"078-05-1120\"}\n";
        assert!(matches!(
            mask_whole(&fields, ContentClass::Text, pushed.as_bytes()),
            Err(MaskFailure::Unparseable(_))
        ));
        let (out, _) = mask_whole(
            &fields,
            ContentClass::Text,
            b"GET /q=[1] user={\"ssn\":\"078-05-1120\"}\n",
        )
        .unwrap();
        assert!(!String::from_utf8(out).unwrap().contains("078-05"));
        let code = "let v = [a[0], b[1], c[2], d[3], e[4], f[5], g[6], h[7], i[8]]; // {x}\n";
        assert!(mask_whole(&fields, ContentClass::Text, code.as_bytes()).is_ok());
        // UTF-16 without a charset: NUL bytes.
        let utf16: Vec<u8> = "a@example.com"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        assert!(matches!(
            mask_whole(&detectors, ContentClass::Text, &utf16),
            Err(MaskFailure::Unparseable(_))
        ));
    }

    /// A text body of digit groups is the detectors' text, with field rules or without: read
    /// as a sequence of JSON numbers, each group alone was no card.
    #[test]
    fn digit_groups_in_text_are_found_by_the_detectors() {
        let rules: Vec<agentgate_crds::policy::MaskingRule> =
            serde_json::from_value(json!([{"detectors": ["CreditCard", "Phone"]}])).unwrap();
        let detectors = MaskingPlan::compile(&rules.iter().collect::<Vec<_>>(), HashKey::process()).unwrap();
        let rules: Vec<agentgate_crds::policy::MaskingRule> =
            serde_json::from_value(json!([{"jsonFields": ["$..ssn"]}, {"detectors": ["CreditCard"]}]))
                .unwrap();
        let fields = MaskingPlan::compile(&rules.iter().collect::<Vec<_>>(), HashKey::process()).unwrap();
        for plan in [&detectors, &fields] {
            for body in [
                "4111 1111 1111 1111\n",
                "4111 1111 1111 1111\n3782 822463 10005\n",
                "{\"ssn\":\"078-05-1120\"}\n4111 1111 1111 1111\n",
            ] {
                let (out, report) = mask_whole(plan, ContentClass::Text, body.as_bytes()).unwrap();
                let out = String::from_utf8(out).unwrap();
                assert!(!out.contains("1111 1111"), "{body:?} -> {out:?}");
                assert!(report.detections >= 1, "{body:?}");
            }
        }
        let (out, _) = mask_whole(&detectors, ContentClass::Text, b"415 555 0132\n").unwrap();
        assert!(!String::from_utf8(out).unwrap().contains("555 0132"));
        // Labelled JSON, such a body is not JSON: refused as unreadable, not passed on.
        assert!(matches!(
            mask_whole(&detectors, ContentClass::Json, b"4111 1111 1111 1111"),
            Err(MaskFailure::Unparseable(_))
        ));
    }

    fn text_plan() -> MaskingPlan {
        let rules: Vec<agentgate_crds::policy::MaskingRule> =
            serde_json::from_value(serde_json::json!([{"detectors": ["Email", "PrivateKey"]}])).unwrap();
        MaskingPlan::compile(&rules.iter().collect::<Vec<_>>(), HashKey::process()).unwrap()
    }

    #[test]
    fn text_under_field_rules_masks_its_json_lines_as_json() {
        let rules: Vec<agentgate_crds::policy::MaskingRule> = serde_json::from_value(serde_json::json!([
            {"jsonFields": ["$..phone"]},
            {"detectors": ["Email", "PrivateKey"]}
        ]))
        .unwrap();
        let plan = MaskingPlan::compile(&rules.iter().collect::<Vec<_>>(), HashKey::process()).unwrap();
        // JSON labelled text/plain: the field rule applies.
        let (out, report) =
            mask_whole(&plan, ContentClass::Text, br#"{"phone": "+1 415 555 0199"}"#).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), r#"{"phone": "[REDACTED]"}"#);
        assert_eq!(report.fields, 1);
        // An event stream: JSON data lines by field rules, other lines by detectors, and a
        // private key across lines still found whole.
        let text = "event: a\ndata: {\"phone\": \"555 0199\", \"to\": \"e@example.com\"}\r\n\n: note f@example.com\n-----BEGIN PRIVATE KEY-----\nMIIEv\n-----END PRIVATE KEY-----\ndata: [1]\n";
        let (out, report) = mask_whole(&plan, ContentClass::Text, text.as_bytes()).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(
            out.starts_with(
                "event: a\ndata: {\"phone\": \"[REDACTED]\", \"to\": \"[REDACTED:EMAIL]\"}\r\n\n"
            ),
            "{out}"
        );
        assert!(
            !out.contains("555 0199") && !out.contains("f@example.com") && !out.contains("MIIEv"),
            "{out}"
        );
        assert!(out.ends_with("data: [1]\n"), "{out}");
        assert_eq!((report.fields, report.detections), (1, 3));
        // Without field rules text is the detectors' alone, byte for byte elsewhere.
        let (out, _) = mask_whole(&text_plan(), ContentClass::Text, b"data: {\"phone\": 1}\n").unwrap();
        assert_eq!(out, b"data: {\"phone\": 1}\n");
        // The detectors read JSON in text as JSON: an escape glued to a value (`\t4111...`) is
        // not a letter of it.
        let rules: Vec<agentgate_crds::policy::MaskingRule> = serde_json::from_value(serde_json::json!([
            {"detectors": ["CreditCard", "AwsAccessKey", "Email"]}
        ]))
        .unwrap();
        let plan = MaskingPlan::compile(&rules.iter().collect::<Vec<_>>(), HashKey::process()).unwrap();
        let event = b"data: {\"t\":\"Ada\\t4111111111111111\\nAKIAIOSFODNN7EXAMPLE\\tada@example.com\"}\n\n";
        let (out, report) = mask_whole(&plan, ContentClass::Text, event).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(
            !out.contains("4111111111111111")
                && !out.contains("AKIAIOSFODNN7EXAMPLE")
                && !out.contains("ada@"),
            "{out}"
        );
        assert_eq!(report.detections, 3, "{out}");
        serde_json::from_str::<serde_json::Value>(out.trim().strip_prefix("data: ").unwrap())
            .expect("still JSON");
    }

    fn phone_plan(on_unparseable: &str) -> MaskingPlan {
        let rules: Vec<agentgate_crds::policy::MaskingRule> = serde_json::from_value(serde_json::json!([
            {"jsonFields": ["$..phone"], "onUnparseable": on_unparseable},
            {"detectors": ["Email"], "onUnparseable": on_unparseable}
        ]))
        .unwrap();
        MaskingPlan::compile(&rules.iter().collect::<Vec<_>>(), HashKey::process()).unwrap()
    }

    /// A pretty-printed document in text (`?pretty=true` from an upstream that labels it
    /// text/plain) gets the field rules, whole or streamed: line by line, `  "phone": ...` would
    /// meet the detectors alone.
    #[tokio::test]
    async fn json_documents_over_several_lines_of_text_keep_their_field_rules() {
        let text = "start e@example.com\n  {\n  \"phone\": \"+1 415 555 0199\",\n  \"tags\": [\"}\", 1]\n} tail f@example.com\nend\n";
        let (out, report) = mask_whole(&phone_plan("Refuse"), ContentClass::Text, text.as_bytes()).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(
            !out.contains("555 0199") && !out.contains("@example.com"),
            "{out}"
        );
        assert!(out.contains("\"phone\": \"[REDACTED]\""), "{out}");
        assert!(
            out.starts_with("start [REDACTED:EMAIL]\n  {") && out.ends_with("tail [REDACTED:EMAIL]\nend\n"),
            "{out}"
        );
        assert_eq!((report.fields, report.detections), (1, 2));
        // Streamed, with the document's end arriving last and no final newline.
        let out = masked_text(
            phone_plan("Refuse"),
            &["{\n", "  \"phone\": \"+1 415 555 0199\",\n", "  \"n\": 1\n", "}"],
        )
        .await
        .unwrap();
        assert!(!out.contains("555 0199") && out.contains("[REDACTED]"), "{out}");
        // A document that never closes is not passed line by line: under Refuse the stream is
        // cut; where the rules allow it, its lines get the detectors at the end.
        let open = ["log\n", "{\n", "  \"phone\": \"+1 415 555 0199\",\n"];
        assert!(masked_text(phone_plan("Refuse"), &open).await.is_err());
        let allowed = masked_text(phone_plan("Allow"), &open).await.unwrap();
        assert!(allowed.starts_with("log\n{\n"), "{allowed}");
        assert_eq!(json_close(br#"{"a": "]}", "b": [1, {"c": "\""}]} x"#), Some(34));
        assert_eq!(json_close(b"{\"a\": [1, 2"), None);
        assert_eq!(
            json_safe_end(b"x\n{\"a\":1}\n[\n1\n", &mut Held::default(), false),
            10
        );
        // Resumed where it stopped: the held document closes in a later piece.
        let mut open = Held::default();
        let text = b"x\n  {\"a\": \"}\n";
        assert_eq!(json_safe_end(text, &mut open, false), 2);
        assert_eq!(
            open.doc.map(|(start, scan, from)| (start, scan.scanned, from)),
            Some((4, 9, 2))
        );
        // Still open on the next look: held from its line's start again, blanks included.
        let still = b"x\n  {\"a\": \"}\n1\n";
        assert_eq!(json_safe_end(still, &mut open, false), 2);
        let more = b"x\n  {\"a\": \"}\n1\n\"}\nnext\n";
        assert_eq!(json_safe_end(more, &mut open, false), more.len());
        assert!(open.doc.is_none());
        // An event's data lines that open a document are held until a line that is not one.
        let event = b"id: 1\ndata: {\ndata:   \"phone\": 1\n";
        assert_eq!(json_safe_end(event, &mut open, false), 6);
        assert_eq!(open.event, Some((6, event.len())));
        let ended = b"id: 1\ndata: {\ndata:   \"phone\": 1\ndata: }\n\n";
        assert_eq!(json_safe_end(ended, &mut open, false), ended.len());
        assert!(open.event.is_none());
        // At the stream's end an event is as complete as it will be.
        assert_eq!(json_safe_end(event, &mut Held::default(), true), event.len());
        // Data that opens no document holds nothing.
        let plain = b"data: hello\n";
        assert_eq!(json_safe_end(plain, &mut Held::default(), false), plain.len());
    }

    /// Lines that open brackets they never close, or close only far below (code, nested
    /// blocks), cost one look each, not a scan to the end per line; under Refuse a text holding
    /// an unclosed document is refused whole, as its stream would be cut.
    /// Log lines stamped by their collector (`kubectl logs --timestamps`) keep their JSON's
    /// field rules.
    #[test]
    fn timestamped_json_log_lines_get_the_field_rules() {
        let plan = phone_plan("Refuse");
        let text =
            "2026-12-05T10:00:00.123456789Z {\"phone\": \"x\", \"ok\": 1}\n2026-12-05T10:00:01Z plain\n";
        let (out, report) = mask_whole(&plan, ContentClass::Text, text.as_bytes()).unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "2026-12-05T10:00:00.123456789Z {\"phone\": \"[REDACTED]\", \"ok\": 1}\n2026-12-05T10:00:01Z plain\n"
        );
        assert_eq!(report.fields, 1);
        // Two documents on one line: each gets the rules, and text after them stays.
        let text = "{\"id\": 1} {\"phone\": \"x\"}  [{\"phone\": \"y\"}] done\n";
        let (out, report) = mask_whole(&plan, ContentClass::Text, text.as_bytes()).unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "{\"id\": 1} {\"phone\": \"[REDACTED]\"}  [{\"phone\": \"[REDACTED]\"}] done\n"
        );
        assert_eq!(report.fields, 2);
    }

    /// JSON after what a log line's writer put before it (a level, a key, a container's name)
    /// gets the field rules as on a line of its own, whole or streamed in any pieces; the prefix
    /// and any text after the document stay as they are.
    #[tokio::test]
    async fn json_after_a_prefix_on_its_line_gets_the_field_rules() {
        let lines = [
            "[INFO] {\"phone\": \"x\"}\n",
            "INFO request {\"user\": {\"phone\": \"x\"}} done\n",
            "level=info body={\"phone\": \"x\"}\n",
            "web-1  | [{\"phone\": \"x\"}, 2]\n",
            "2026-12-05T10:00:00Z INFO {\"phone\": \"x\"}\n",
            "{\"id\": 1} then {\"phone\": \"x\"}\n",
            "[1] {\"phone\": \"x\"}\n",
            "see a[i] and {} then {\"phone\": \"x\"} end\n",
        ];
        for line in lines {
            let want = line.replace("\"x\"", "\"[REDACTED]\"");
            let (out, report) = mask_whole(&phone_plan("Refuse"), ContentClass::Text, line.as_bytes())
                .unwrap_or_else(|e| panic!("{line}: {e:?}"));
            assert_eq!(std::str::from_utf8(&out).unwrap(), want);
            assert_eq!(report.fields, 1, "{line}");
            // Streamed, cut inside the document, and after a closed one on the same line.
            let at = line.find("\"x").unwrap();
            let pieces: [&'static str; 2] = [
                String::leak(line[..at].to_string()),
                String::leak(line[at..].to_string()),
            ];
            assert_eq!(masked_text(phone_plan("Refuse"), &pieces).await.unwrap(), want);
        }
        // Streamed: a closed document, then one still open on the same line, then its end.
        let out = masked_text(
            phone_plan("Refuse"),
            &["a {\"id\": 1} b {\"phone\":", " \"x\"} c\n"],
        )
        .await
        .unwrap();
        assert_eq!(out, "a {\"id\": 1} b {\"phone\": \"[REDACTED]\"} c\n");
        // After a prefix a document is read on its line alone: brackets there that open no
        // document, or one that does not close or parse, are text (a bracket anyone can put in
        // a logged value neither holds a followed log nor refuses it).
        for text in [
            "INFO {\"phone\": \"x\", \"n\": NaN}\n",
            "INFO {\"phone\":\n\"x\"}\n",
            "ua=\"[1, {\\\"a\\\":\" rest\n",
            "use {} and {name} or a[i]\n",
            "x {'a': 1}\n",
            "{{ .Values.x }}\n",
        ] {
            let (out, _) = mask_whole(&phone_plan("Refuse"), ContentClass::Text, text.as_bytes())
                .unwrap_or_else(|e| panic!("{text}: {e:?}"));
            assert_eq!(std::str::from_utf8(&out).unwrap(), text);
            let at = text.len() / 2;
            let pieces = [
                String::leak(text[..at].to_string()) as &'static str,
                String::leak(text[at..].to_string()),
            ];
            assert_eq!(masked_text(phone_plan("Refuse"), &pieces).await.unwrap(), text);
        }
        // What follows a document over lines on the line it closes on is read as the masker
        // reads it, streamed too: a document there is held until it closes.
        for pieces in [
            ["{\"a\": 1,\n", "\"b\": 2} {\"phone\":\n", "\"x\"}\n"],
            ["{\"a\":\n", "1} {\"phone\":\n", "\"x\"}\n"],
            ["2026-12-05T10:00:00Z {\n", "  \"phone\": \"x\"\n", "}\n"],
        ] {
            let text = pieces.concat();
            let want = text.replace("\"x\"", "\"[REDACTED]\"");
            let (out, _) = mask_whole(&phone_plan("Refuse"), ContentClass::Text, text.as_bytes()).unwrap();
            assert_eq!(std::str::from_utf8(&out).unwrap(), want);
            assert_eq!(masked_text(phone_plan("Refuse"), &pieces).await.unwrap(), want);
        }
        // A bracket that ends its line after the line's prefix opens a document written over
        // the lines below (a logger's pretty-printed body): it is read over lines, whole and
        // streamed a line at a time.
        for pieces in [
            ["DEBUG body={\n", "  \"phone\": \"x\"\n", "}\n"],
            ["INFO payload=[\n", "  {\"phone\": \"x\"}\n", "] done\n"],
            [
                "2026-12-05T10:00:00Z INFO {\"id\": 1} then {\n",
                "  \"phone\": \"x\"\n",
                "}\n",
            ],
        ] {
            let text = pieces.concat();
            let want = text.replace("\"x\"", "\"[REDACTED]\"");
            let (out, report) = mask_whole(&phone_plan("Refuse"), ContentClass::Text, text.as_bytes())
                .unwrap_or_else(|e| panic!("{text}: {e:?}"));
            assert_eq!(std::str::from_utf8(&out).unwrap(), want);
            assert_eq!(report.fields, 1, "{text}");
            assert_eq!(masked_text(phone_plan("Refuse"), &pieces).await.unwrap(), want);
        }
        // Such a document that never closes is unreadable to the field rules, as one at a
        // line's start is; a bracket ending a line that opens no document is text, held only
        // until the next line shows it.
        let unclosed = ["DEBUG body={\n", "  \"phone\": \"x\"\n"];
        assert!(
            mask_whole(
                &phone_plan("Refuse"),
                ContentClass::Text,
                unclosed.concat().as_bytes()
            )
            .is_err()
        );
        assert!(masked_text(phone_plan("Refuse"), &unclosed).await.is_err());
        let allowed = masked_text(phone_plan("Allow"), &unclosed).await.unwrap();
        assert_eq!(allowed, unclosed.concat());
        let code = ["if (ok) {\n", "  run();\n", "}\n"];
        assert_eq!(
            masked_text(phone_plan("Refuse"), &code).await.unwrap(),
            code.concat()
        );
        // A logged `[` that ends its line and a `]` lines below, around no document, do not
        // turn the field rules off for the documents between: their lines are read one by one.
        let between = ["note: [\n", "{\"phone\": \"x\"}\n", "{\"phone\": \"y\"}\n", "]\n"];
        let want = "note: [\n{\"phone\": \"[REDACTED]\"}\n{\"phone\": \"[REDACTED]\"}\n]\n";
        let (out, _) = mask_whole(
            &phone_plan("Refuse"),
            ContentClass::Text,
            between.concat().as_bytes(),
        )
        .unwrap();
        assert_eq!(std::str::from_utf8(&out).unwrap(), want);
        assert_eq!(masked_text(phone_plan("Refuse"), &between).await.unwrap(), want);
        // A rule by path reads the document as a whole, streamed a line at a time too: the
        // line after the bracket may not yet tell whether a document opens there.
        let plan = || {
            let rules: Vec<agentgate_crds::policy::MaskingRule> =
                serde_json::from_value(serde_json::json!([{"jsonFields": ["$[*].phone"]}])).unwrap();
            MaskingPlan::compile(&rules.iter().collect::<Vec<_>>(), HashKey::process()).unwrap()
        };
        let pieces = [
            "INFO payload=[\n",
            "  {\n",
            "    \"phone\": \"x\"\n",
            "  }\n",
            "]\n",
        ];
        let want = pieces.concat().replace("\"x\"", "\"[REDACTED]\"");
        let (out, _) = mask_whole(&plan(), ContentClass::Text, pieces.concat().as_bytes()).unwrap();
        assert_eq!(std::str::from_utf8(&out).unwrap(), want);
        assert_eq!(masked_text(plan(), &pieces).await.unwrap(), want);
        // Many documents on one long line cost each its own length, not the line's.
        let started = std::time::Instant::now();
        for unit in ["x {\"a\":1} ", "x {\"a\":b} ", "{\"a\":1} ", "a[i] {x} "] {
            let line = format!("{}\n", unit.repeat(100_000));
            let (out, _) = mask_whole(&phone_plan("Refuse"), ContentClass::Text, line.as_bytes()).unwrap();
            assert_eq!(out.len(), line.len());
        }
        assert!(started.elapsed().as_secs() < 3, "{:?}", started.elapsed());
    }

    #[test]
    fn text_with_unclosed_or_nested_brackets_stays_linear() {
        // A document that starts as JSON but does not parse is as unreadable to the field rules.
        for text in [
            "data: [{\"name\":\"agent\",\"score\":NaN},{\"ssn\":\"123-45-6789\"}]\n\n",
            "data: {\"a\":\"\\ud800\",\"ssn\":\"123-45-6789\"}\n\n",
            "data: {\"ssn\":\ndata: NaN}\n\n",
            "data: {\ndata:   \"ssn\": \"123-45-6789\",\ndata: }\n\n",
            "log line\n{\n  \"ssn\": \"123-45-6789\",\n  \"score\": NaN\n}\n",
            "[1, {\"ssn\": \"123-45-6789\"}, NaN]\n",
            "[null, {\"ssn\": \"123-45-6789\"}, NaN]\n",
            "[\"a\", {\"ssn\": \"123-45-6789\"}, NaN]\n",
        ] {
            let refused = mask_whole(&phone_plan("Refuse"), ContentClass::Text, text.as_bytes());
            assert!(refused.is_err(), "{text}");
            mask_whole(&phone_plan("Allow"), ContentClass::Text, text.as_bytes()).unwrap();
        }
        // Brackets that do not start JSON are text, and a document followed by text on its
        // line is masked as JSON all the same.
        for text in [
            "[INFO] started\n",
            "[2026-12-05 10:00:00] ok {not json}\n",
            "[2026-12-05, 10:00] ok\n",
            "data: [DONE]\n\n",
            "fn main() {\n    run();\n}\n",
            "{\n{\n}\n}\n",
            "[{'id': 1}]\n",
            "{\"name\"=>\"x\"}\n",
            "[[package]]\nname = \"x\"\n",
            "{\"a\":1} done\n",
        ] {
            mask_whole(&phone_plan("Refuse"), ContentClass::Text, text.as_bytes())
                .unwrap_or_else(|e| panic!("{text}: {e:?}"));
        }
        let nested = format!("{}{}", "{\n".repeat(100_000), "}\n".repeat(100_000));
        for (text, unclosed) in [
            ("[\n".repeat(200_000), true),
            ("{\"x\n".repeat(200_000), true),
            (nested, false),
        ] {
            let started = std::time::Instant::now();
            let refused = mask_whole(&phone_plan("Refuse"), ContentClass::Text, text.as_bytes());
            assert_eq!(refused.is_err(), unclosed);
            let (out, _) = mask_whole(&phone_plan("Allow"), ContentClass::Text, text.as_bytes()).unwrap();
            assert_eq!(out.len(), text.len());
            assert!(started.elapsed().as_secs() < 3, "{:?}", &text[..4]);
        }
    }

    /// An event whose data a server split over `data:` lines (a pretty-printed document) is the
    /// one document the client joins them into: the field rules reach into it, whole or
    /// streamed in any pieces, and each line keeps its prefix and ending.
    #[tokio::test]
    async fn an_event_split_over_data_lines_is_masked_as_one_document() {
        let event = "event: user\r\ndata: {\r\ndata:   \"name\": \"x\",\r\ndata:   \"phone\": \"+1 415 555 0199\"\r\ndata: }\r\n\r\ndata: {\"phone\": 2}\n\n";
        let want = "event: user\r\ndata: {\r\ndata:   \"name\": \"x\",\r\ndata:   \"phone\": \"[REDACTED]\"\r\ndata: }\r\n\r\ndata: {\"phone\": \"[REDACTED]\"}\n\n";
        let (out, report) = mask_whole(&phone_plan("Refuse"), ContentClass::Text, event.as_bytes()).unwrap();
        assert_eq!(std::str::from_utf8(&out).unwrap(), want);
        assert_eq!(report.fields, 2);
        // Streamed, cut anywhere: held until the event's lines end, then masked together.
        for cut in [1, 7, 20, 33, 50, event.len() - 3] {
            let pieces = [&event[..cut], &event[cut..]];
            let out = masked_text(phone_plan("Refuse"), &pieces).await.unwrap();
            assert_eq!(out, want, "cut at {cut}");
        }
        // Lines that join into no JSON stay refused where the rules say so.
        let bad = "data: {\ndata:   \"phone\": \"555 0199\",\ndata: }\n\n";
        assert!(mask_whole(&phone_plan("Refuse"), ContentClass::Text, bad.as_bytes()).is_err());
        assert!(masked_text(phone_plan("Refuse"), &[bad]).await.is_err());
        // A comment or another field between the data lines does not end the event.
        let (out, _) = mask_whole(
            &phone_plan("Refuse"),
            ContentClass::Text,
            b"data: {\n: ping\nid: 7\ndata:   \"phone\": \"x\"\ndata: }\n\n",
        )
        .unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "data: {\n: ping\nid: 7\ndata:   \"phone\": \"[REDACTED]\"\ndata: }\n\n"
        );
        // A rule that replaces a whole object leaves fewer lines: the last data lines go, and
        // the client joins exactly the masked document.
        let nested = "data: {\ndata:   \"phone\": {\ndata:     \"n\": 1\ndata:   }\ndata: }\n\n";
        let want = "data: {\ndata:   \"phone\": \"[REDACTED]\"\ndata: }\n\n";
        let (out, _) = mask_whole(&phone_plan("Refuse"), ContentClass::Text, nested.as_bytes()).unwrap();
        assert_eq!(std::str::from_utf8(&out).unwrap(), want);
        assert_eq!(masked_text(phone_plan("Refuse"), &[nested]).await.unwrap(), want);
        // Documents each whole on their data line are masked line by line, held for nothing:
        // a stream of them without blank lines still flows.
        let lines = "data: {\"phone\": \"1\"}\ndata: {\"phone\": \"2\"}\n";
        let mut open = Held::default();
        assert_eq!(json_safe_end(lines.as_bytes(), &mut open, false), lines.len());
        assert_eq!(
            masked_text(phone_plan("Refuse"), &[lines]).await.unwrap(),
            "data: {\"phone\": \"[REDACTED]\"}\ndata: {\"phone\": \"[REDACTED]\"}\n"
        );
        // A carriage return alone ends lines for the client, not for this reading: refused.
        let cr = "data: {\rdata: \"phone\": \"x\"\rdata: }\n\n";
        assert!(mask_whole(&phone_plan("Refuse"), ContentClass::Text, cr.as_bytes()).is_err());
    }

    /// A body fed chunk by chunk through the sender, open until the sender is dropped.
    fn channel_body() -> (tokio::sync::mpsc::UnboundedSender<Bytes>, Body) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|b| (Ok(Frame::data(b)), rx))
        });
        (tx, http_body_util::StreamBody::new(stream).boxed())
    }

    /// A text stream fed through the sender, masked line by line under
    /// `phone_plan(on_unparseable)`, drawing on `budget` when given.
    fn line_stream(
        on_unparseable: &str,
        budget: Option<Arc<tokio::sync::Semaphore>>,
    ) -> (
        tokio::sync::mpsc::UnboundedSender<Bytes>,
        Pin<Box<Rewritten<LineMasker>>>,
    ) {
        let (tx, inner) = channel_body();
        let body = masked_lines_within(
            inner,
            phone_plan(on_unparseable),
            ContentClass::Text,
            Arc::new(|_: &MaskReport| {}),
            budget,
        );
        (tx, Box::pin(body))
    }

    /// The stream's next frame.
    async fn next_frame(
        body: &mut Pin<Box<Rewritten<LineMasker>>>,
    ) -> Option<Result<Frame<Bytes>, BodyError>> {
        use hyper::body::Body as _;
        std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await
    }

    /// A line held back until its end draws on the gateway's masking budget, as a whole body
    /// does: past what is left of it the stream is cut, and what it held is given back.
    #[tokio::test]
    async fn a_long_line_held_back_draws_on_the_masking_budget() {
        let budget = Arc::new(tokio::sync::Semaphore::new(2));
        let (tx, mut body) = line_stream("Refuse", Some(budget.clone()));
        let wait = std::time::Duration::from_secs(10);
        // A KiB of an unfinished line is held: one permit.
        tx.send(Bytes::from(vec![b'a'; 1000])).unwrap();
        tx.send(Bytes::from_static(b"\nrest")).unwrap();
        let first = tokio::time::timeout(wait, next_frame(&mut body))
            .await
            .unwrap()
            .unwrap()
            .unwrap()
            .into_data()
            .unwrap();
        assert_eq!(first.len(), 1001);
        assert_eq!(budget.available_permits(), 1, "the unfinished `rest` holds one");
        // Past the budget: cut.
        tx.send(Bytes::from(vec![b'b'; 4096])).unwrap();
        let cut = tokio::time::timeout(wait, next_frame(&mut body))
            .await
            .unwrap()
            .unwrap();
        assert!(cut.is_err());
        drop(body);
        assert_eq!(budget.available_permits(), 2);
    }

    /// A long line that never ends, whether the upstream goes quiet or trickles bytes that end
    /// no line, is cut [`HELD_LIMIT`] after it began waiting, and gives back its share of the
    /// masking budget at once.
    #[tokio::test(start_paused = true)]
    async fn a_long_line_that_never_ends_is_cut_at_the_held_limit() {
        for trickle in [false, true] {
            let budget = Arc::new(tokio::sync::Semaphore::new(100));
            let (tx, mut body) = line_stream("Refuse", Some(budget.clone()));
            tx.send(Bytes::from_static(b"done\n")).unwrap();
            let next = next_frame(&mut body).await;
            assert_eq!(next.unwrap().unwrap().into_data().unwrap(), "done\n");
            let start = tokio::time::Instant::now();
            tx.send(Bytes::from(vec![b'a'; HELD_MIN])).unwrap();
            let feeder = trickle.then(|| {
                let tx = tx.clone();
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(std::time::Duration::from_secs(10)).await;
                        if tx.send(Bytes::from_static(b"a")).is_err() {
                            break;
                        }
                    }
                })
            });
            let cut = tokio::time::timeout(std::time::Duration::from_secs(3600), next_frame(&mut body))
                .await
                .expect("the held line was never cut")
                .unwrap();
            let err = cut.unwrap_err();
            assert!(err.is::<HeldTooLong>(), "{err}");
            assert!(err.to_string().contains("60 s"), "{err}");
            let waited = start.elapsed();
            assert!(
                waited >= HELD_LIMIT && waited < HELD_LIMIT + std::time::Duration::from_secs(1),
                "trickle {trickle}: cut after {waited:?}"
            );
            assert_eq!(
                budget.available_permits(),
                100,
                "the cut stream still holds its share"
            );
            if let Some(f) = feeder {
                f.abort();
            }
        }
    }

    /// Lines that keep going out are progress, whatever each chunk leaves unfinished, and so is
    /// a long line still arriving; lines held behind a document that never closes go on as
    /// text at the limit (under Allow); a short line waiting (a prompt) and a quiet stream
    /// holding nothing (a watch between events) are never cut.
    #[tokio::test(start_paused = true)]
    async fn streams_whose_lines_complete_or_stay_short_are_not_cut() {
        let long = || "x".repeat(HELD_MIN + 10);
        // Each chunk ends the long line before it and leaves another waiting.
        let sent: Vec<String> = std::iter::once(long())
            .chain((0..5).map(|_| format!(" ends\n{}", long())))
            .chain([" ends\n".to_string(), "Waiting for the database...".to_string()])
            .collect();
        // A document opened and never closed holds the complete lines after it.
        let held: Vec<String> = std::iter::once("{\"level\":\"info\",\"msg\":\"cut off\n".to_string())
            .chain((0..6).map(|i| format!("{{\"line\":{i},\"pad\":\"{}\"}}\n", "y".repeat(20_000))))
            .collect();
        // A long line still arriving, 70 KB every 30 s, then its end.
        let growing: Vec<String> = (0..4)
            .map(|_| "z".repeat(70_000))
            .chain(["\n".to_string()])
            .collect();
        for (chunks, out) in [(sent, 6), (held, 7), (growing, 1)] {
            let (tx, mut body) = line_stream("Allow", None);
            let feeder = tokio::spawn(async move {
                for c in chunks {
                    tx.send(Bytes::from(c)).unwrap();
                    tokio::time::sleep(std::time::Duration::from_secs(40)).await;
                }
                // Quiet, the stream still open.
                tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
                drop(tx);
            });
            let mut lines = 0;
            while lines < out {
                let frame = next_frame(&mut body).await;
                let data = frame
                    .unwrap()
                    .expect("cut while lines kept completing")
                    .into_data()
                    .unwrap();
                lines += data.iter().filter(|&&b| b == b'\n').count();
            }
            let quiet =
                tokio::time::timeout(std::time::Duration::from_secs(900), next_frame(&mut body)).await;
            assert!(quiet.is_err(), "cut, or ended: {quiet:?}");
            feeder.abort();
        }
    }

    /// Under Allow a document that does not close within the hold limit goes on as text, so a
    /// followed log with one cut-off line does not stall; under Refuse the stream is cut.
    #[tokio::test]
    async fn a_held_document_is_released_or_cut_at_the_hold_limit() {
        let filler: &'static str = Box::leak(format!("{}\n", "a".repeat(1000)).into_boxed_str());
        let mut chunks = vec!["{\"msg\": \"cut off\n"];
        chunks.extend(std::iter::repeat_n(filler, MAX_JSON_HOLD / 1000 + 2));
        assert!(masked_text(phone_plan("Refuse"), &chunks).await.is_err());
        // Under Allow the lines flow once past the limit, while the stream is still open.
        use hyper::body::Body as _;
        let (tx, inner) = channel_body();
        let mut body = std::pin::pin!(masked_lines(
            inner,
            phone_plan("Allow"),
            ContentClass::Text,
            Arc::new(|_: &MaskReport| {})
        ));
        for c in &chunks {
            tx.send(Bytes::from_static(c.as_bytes())).unwrap();
        }
        let next = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx));
        let first = tokio::time::timeout(std::time::Duration::from_secs(10), next)
            .await
            .expect("the held lines stalled the stream")
            .unwrap()
            .unwrap()
            .into_data()
            .unwrap();
        assert!(first.starts_with(b"{\"msg\": \"cut off\n"));
        drop(tx);
    }

    #[tokio::test]
    async fn streamed_text_is_masked_as_each_line_completes() {
        use hyper::body::Body as _;
        let (tx, inner) = channel_body();
        let mut body = std::pin::pin!(masked_lines(
            inner,
            text_plan(),
            ContentClass::Text,
            Arc::new(|_: &MaskReport| {})
        ));
        let mut next = async || {
            std::future::poll_fn(|cx| body.as_mut().poll_frame(cx))
                .await
                .map(|f| f.unwrap().into_data().unwrap())
        };
        // A line flows once complete, while the stream is still open; a partial one waits.
        tx.send(Bytes::from_static(b"data: ready, ops@exa")).unwrap();
        tx.send(Bytes::from_static(b"mple.com\ndata: ne")).unwrap();
        assert_eq!(next().await.unwrap(), "data: ready, [REDACTED:EMAIL]\n");
        // A private key spans lines: held from its BEGIN line until its END line.
        tx.send(Bytes::from_static(b"xt\n-----BEGIN PRIVATE KEY-----\n"))
            .unwrap();
        assert_eq!(next().await.unwrap(), "data: next\n");
        tx.send(Bytes::from_static(b"MIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n"))
            .unwrap();
        tx.send(Bytes::from_static(b"-----END PRIVATE KEY-----\nbye"))
            .unwrap();
        let key = next().await.unwrap();
        assert!(!String::from_utf8_lossy(&key).contains("MIIEvQ"), "{key:?}");
        assert!(key.ends_with(b"\n"), "{key:?}");
        drop(tx);
        assert_eq!(next().await.unwrap(), "bye");
        assert!(next().await.is_none());
    }

    /// `chunks` through a text line masker, one frame each.
    async fn masked_text(plan: MaskingPlan, chunks: &[&'static str]) -> Result<String, BodyError> {
        let out = masked_lines(
            frames(chunks),
            plan,
            ContentClass::Text,
            Arc::new(|_: &MaskReport| {}),
        )
        .collect()
        .await?
        .to_bytes();
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    #[tokio::test]
    async fn a_private_key_is_held_until_its_own_end_and_certificates_hold_nothing() {
        // A key's lines, one frame each, are held until its END line arrives.
        let line = |tag: &str| -> &'static str {
            Box::leak(format!("KEYPART{tag}{}\n", "A".repeat(57 - tag.len())).into_boxed_str())
        };
        let out = masked_text(
            text_plan(),
            &[
                "-----BEGIN PRIVATE KEY-----\n",
                line("ONE"),
                line("TWO"),
                "-----END PRIVATE KEY-----\nafter\n",
            ],
        )
        .await
        .unwrap();
        assert!(!out.contains("KEYPART"), "{out}");
        assert_eq!(out, "[REDACTED:PRIVATE_KEY]\nafter\n");
        // What is not key body (a certificate's BEGIN line) ends the key's match and its hold:
        // the certificate flows on, with the key's lines before it masked.
        let out = masked_text(
            text_plan(),
            &[
                "-----BEGIN PRIVATE KEY-----\n",
                line("ONE"),
                "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
            ],
        )
        .await
        .unwrap();
        assert_eq!(
            out,
            "[REDACTED:PRIVATE_KEY]-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
        );
        // A certificate alone flows line by line: nothing to hold.
        let a = super::pem_safe_end(b"-----BEGIN CERTIFICATE-----\nMIIB\n");
        assert_eq!(a, "-----BEGIN CERTIFICATE-----\nMIIB\n".len());
        // Two keys: held from the second, unended one.
        let two = b"x\n-----BEGIN EC PRIVATE KEY-----\nA\n-----END EC PRIVATE KEY-----\ny\n-----BEGIN PRIVATE KEY-----\nB\n";
        let held = super::pem_safe_end(two);
        assert_eq!(&two[held..], b"-----BEGIN PRIVATE KEY-----\nB\n");
        // A key that never ends is not held forever: the stream is cut.
        let filler: &'static str = Box::leak(format!("{}\n", "A".repeat(1000)).into_boxed_str());
        let mut chunks = vec!["-----BEGIN PRIVATE KEY-----\n"];
        chunks.extend(std::iter::repeat_n(filler, MAX_PEM_HOLD / 1000 + 2));
        assert!(masked_text(text_plan(), &chunks).await.is_err());
        // A BEGIN line followed by what no key's body holds ends its match there: nothing
        // after it is held, however long the text goes on without an END line.
        let text = b"-----BEGIN PRIVATE KEY----- */ OR true\nnext\n";
        assert_eq!(super::pem_safe_end(text), text.len());
        let log: &'static str = Box::leak("log line; ok\n".repeat(MAX_PEM_HOLD / 10).into_boxed_str());
        let out = masked_text(text_plan(), &["-----BEGIN PRIVATE KEY----- */ OR true\n", log])
            .await
            .unwrap();
        assert!(
            out.starts_with("[REDACTED:PRIVATE_KEY]*/ OR true\nlog line; ok\n"),
            "{}",
            &out[..60]
        );
    }

    #[tokio::test]
    async fn unreadable_streamed_text_passes_only_where_the_rules_allow() {
        let allow_plan = || {
            let rules: Vec<agentgate_crds::policy::MaskingRule> = serde_json::from_value(
                serde_json::json!([{"detectors": ["Email"], "onUnparseable": "Allow"}]),
            )
            .unwrap();
            MaskingPlan::compile(&rules.iter().collect::<Vec<_>>(), HashKey::process()).unwrap()
        };
        let allow = allow_plan();
        let bad = || {
            http_body_util::StreamBody::new(futures_util::stream::iter([
                Ok(Frame::data(Bytes::from_static(b"a@example.com\n"))),
                Ok(Frame::data(Bytes::from_static(b"caf\xc3(\n"))),
            ]))
            .boxed()
        };
        let out = masked_lines(bad(), allow, ContentClass::Text, Arc::new(|_: &MaskReport| {}))
            .collect()
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(&out[..], b"[REDACTED:EMAIL]\ncaf\xc3(\n");
        // A NUL (or a stray byte) beside a value does not carry it out unread.
        let nul = http_body_util::StreamBody::new(futures_util::stream::iter([Ok::<_, BodyError>(
            Frame::data(Bytes::from_static(b"b@example.com \x00 caf\xc3(\n")),
        )]))
        .boxed();
        let out = masked_lines(
            nul,
            allow_plan(),
            ContentClass::Text,
            Arc::new(|_: &MaskReport| {}),
        )
        .collect()
        .await
        .unwrap()
        .to_bytes();
        assert_eq!(&out[..], b"[REDACTED:EMAIL] \x00 caf\xc3(\n");
        let refused = masked_lines(
            bad(),
            text_plan(),
            ContentClass::Text,
            Arc::new(|_: &MaskReport| {}),
        );
        assert!(refused.collect().await.is_err());
    }

    #[tokio::test]
    async fn streamed_text_fails_closed() {
        // Not UTF-8: the masker cannot read it, so the stream is cut.
        let bad = http_body_util::StreamBody::new(futures_util::stream::iter([Ok(Frame::data(
            Bytes::from_static(b"caf\xc3(\n"),
        ))]))
        .boxed();
        let out = masked_lines(
            bad,
            text_plan(),
            ContentClass::Text,
            Arc::new(|_: &MaskReport| {}),
        );
        assert!(out.collect().await.is_err());
        // A PEM block that never ends is held to the stream's end, then masked to it.
        let key: &'static str = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n";
        let text = masked_text(text_plan(), &["before\n", key]).await.unwrap();
        assert!(text.starts_with("before\n") && !text.contains("MIIEvQ"), "{text}");
    }

    #[tokio::test]
    async fn watch_lines_are_masked_one_by_one() {
        let plan = MaskingPlan::empty(HashKey::process()).with_kubernetes_secrets();
        let events = b"{\"type\":\"ADDED\",\"object\":{\"kind\":\"Secret\",\"data\":{\"k\":\"c2VjcmV0\"}}}\n{\"type\":\"MODIFIED\",\"object\":{\"data\":{\"k\":\"b3RoZXI=\"}}}\n";
        let seen = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let s = seen.clone();
        let body = masked_lines(
            full(Bytes::from_static(events)),
            plan,
            ContentClass::Json,
            Arc::new(move |r: &MaskReport| {
                s.fetch_add(r.fields, std::sync::atomic::Ordering::Relaxed);
            }),
        );
        let out = body.collect().await.unwrap().to_bytes();
        let text = std::str::from_utf8(&out).unwrap();
        assert!(!text.contains("c2VjcmV0") && !text.contains("b3RoZXI="), "{text}");
        assert_eq!(text.lines().count(), 2);
        assert!(seen.load(std::sync::atomic::Ordering::Relaxed) >= 2);
        // A line that is not JSON cuts the stream.
        let body = masked_lines(
            full(Bytes::from_static(b"{\"data\":1}\nnot json\n")),
            MaskingPlan::empty(HashKey::process()).with_kubernetes_secrets(),
            ContentClass::Json,
            Arc::new(|_: &MaskReport| {}),
        );
        assert!(body.collect().await.is_err());
    }
}
