//! The streaming JSON rewriter. One pass over the bytes validates strict JSON (RFC 8259), keeps
//! the selector states of each open container, runs the detectors on strings, and copies every
//! untouched run of input to the output with one `extend_from_slice`: output is only written
//! where something is replaced, so an unmasked body costs one copy.

use std::ops::Range;

use agentgate_crds::policy::{Detector, MaskingStrategy};
use memchr::memchr;

use super::detectors::{self, FeatureScan, Features, Span};
use super::path::Label;
use super::strategy::{self, FieldMask};
use super::{Inner, MAX_JSON_DEPTH, MAX_MASKED_BODY, MaskError, MaskReport};

/// Rewrites `input` into `out` (appended); on error `out` is left as it was.
pub(super) fn rewrite(plan: &Inner, input: &[u8], out: &mut Vec<u8>) -> Result<MaskReport, MaskError> {
    if input.len() > MAX_MASKED_BODY {
        return Err(MaskError::TooLarge);
    }
    // Validating UTF-8 once up front (a fast, vectorised check) lets every later slice between
    // ASCII delimiters be used as `str` without checking again.
    let text = std::str::from_utf8(input).map_err(|e| malformed(e.valid_up_to(), "invalid UTF-8"))?;
    let mark = out.len();
    let mut r = Rewriter::new(plan, text, out, false);
    let result = r.document().map(|()| {
        r.out.extend_from_slice(&input[r.copied..]);
        r.report
    });
    if result.is_err() {
        out.truncate(mark);
    }
    result
}

/// Rewrites the first bytes of a JSON text that was cut (a recording's capped prefix): every
/// value that ends before the cut is masked as in [`rewrite`], and the output stops after the
/// last of them. The value the cut went through is left out: a number cut short, or a string
/// whose end would have made it a detector's find, could not be judged. Returns the report and
/// how many bytes of `input` the output stands for; an error when the text is not JSON cut
/// short (it fails before its last bytes), for the caller to read it as text.
pub(super) fn rewrite_prefix(
    plan: &Inner,
    input: &[u8],
    out: &mut Vec<u8>,
) -> Result<(MaskReport, usize), MaskError> {
    /// The longest token a cut can leave failing: a surrogate pair's `\uD83D\uDE00`.
    const LONGEST_TOKEN: usize = 12;
    if input.len() > MAX_MASKED_BODY {
        return Err(MaskError::TooLarge);
    }
    // A cut may split a character; invalid UTF-8 before the last one is not a cut.
    let text = match std::str::from_utf8(input) {
        Ok(t) => t,
        Err(e) if e.error_len().is_none() => {
            std::str::from_utf8(&input[..e.valid_up_to()]).unwrap_or_default()
        }
        Err(e) => return Err(malformed(e.valid_up_to(), "invalid UTF-8")),
    };
    let mark = out.len();
    let mut r = Rewriter::new(plan, text, out, true);
    match r.document() {
        Ok(()) => {}
        Err(MaskError::Malformed { offset, reason })
            if reason == "unterminated string"
                || reason == NUMBER_CUT
                || offset + LONGEST_TOKEN >= text.len() => {}
        Err(e) => {
            out.truncate(mark);
            return Err(e);
        }
    }
    let end = r.settled;
    if r.copied < end {
        r.out.extend_from_slice(&r.input[r.copied..end]);
    }
    Ok((r.report, end.max(r.copied)))
}

/// Why a number running to the end of a cut text is not read: it may go on.
const NUMBER_CUT: &str = "a number cut short";

fn malformed(offset: usize, reason: &'static str) -> MaskError {
    MaskError::Malformed { offset, reason }
}

/// An open object or array.
struct Frame {
    object: bool,
    /// Its selector states, in `Rewriter::states`.
    states: Range<usize>,
    /// Elements seen so far (arrays).
    index: u64,
    /// Where it starts and how it is masked, when a selector picked it.
    replace: Option<(usize, FieldMask)>,
    /// An object that named AWS credentials (`AccessKeyId`, `SecretAccessKey`): its `Token` is
    /// their session token (the metadata service's shape).
    aws: bool,
}

struct Rewriter<'p, 'i, 'o> {
    plan: &'p Inner,
    /// The input is a cut prefix: a number that runs to its end may go on.
    prefix: bool,
    /// `input[..settled]` is whole values (and the containers open around them), masked.
    settled: usize,
    text: &'i str,
    input: &'i [u8],
    pos: usize,
    out: &'o mut Vec<u8>,
    /// `input[..copied]` has been written (or replaced) already.
    copied: usize,
    report: MaskReport,
    frames: Vec<Frame>,
    states: Vec<u32>,
    /// Open containers that are being replaced whole: inside them only validation happens.
    quiet: usize,
    /// Scratch buffers, reused from string to string.
    decoded: String,
    masked: String,
    spans: Vec<Span>,
}

impl<'p, 'i, 'o> Rewriter<'p, 'i, 'o> {
    fn new(plan: &'p Inner, text: &'i str, out: &'o mut Vec<u8>, prefix: bool) -> Self {
        out.reserve(text.len());
        Rewriter {
            plan,
            prefix,
            settled: 0,
            text,
            input: text.as_bytes(),
            pos: 0,
            out,
            copied: 0,
            report: MaskReport::default(),
            frames: Vec::new(),
            states: Vec::new(),
            quiet: 0,
            decoded: String::new(),
            masked: String::new(),
            spans: Vec::new(),
        }
    }

    /// Everything read so far is whole and masked, unless a selected container is still open
    /// (its masked form is written only when it closes).
    fn settle(&mut self) {
        if self.quiet == 0 {
            self.settled = self.pos;
        }
    }
}

impl<'i> Rewriter<'_, 'i, '_> {
    /// Whitespace-separated top-level values (one JSON text, NDJSON, a watch stream).
    fn document(&mut self) -> Result<(), MaskError> {
        let mut first = true;
        // Whether the last top-level value was a number or literal: one on a line with another
        // value is not JSON's but text's (`4111 1111 1111 1111` would be four numbers, none a
        // card), for the caller to read as text. One per line is NDJSON's.
        let mut bare = false;
        loop {
            let gap = self.pos;
            self.skip_ws();
            if self.pos == self.input.len() {
                return Ok(());
            }
            if !first && self.pos == gap {
                return Err(malformed(self.pos, "unexpected characters after a value"));
            }
            let was_bare = std::mem::replace(&mut bare, !matches!(self.input[self.pos], b'{' | b'[' | b'"'));
            if !first
                && (bare || was_bare)
                && !self.input[gap..self.pos]
                    .iter()
                    .any(|&b| b == b'\n' || b == b'\r')
            {
                return Err(malformed(
                    self.pos,
                    "a number or literal on a line with another value",
                ));
            }
            first = false;
            self.states.clear();
            self.states.extend_from_slice(self.plan.paths.roots());
            self.value(0..self.states.len())?;
        }
    }

    /// One top-level value, iteratively (depth lives in `frames`, not on the call stack).
    fn value(&mut self, root: Range<usize>) -> Result<(), MaskError> {
        let mut selected = None;
        let mut states = root;
        'value: loop {
            let start = self.pos;
            match self.input.get(start) {
                Some(&open @ (b'{' | b'[')) => {
                    if self.frames.len() >= MAX_JSON_DEPTH {
                        return Err(MaskError::TooDeep);
                    }
                    self.pos += 1;
                    if selected.is_some() {
                        self.quiet += 1;
                        states = states.start..states.start;
                    }
                    let object = open == b'{';
                    self.frames.push(Frame {
                        object,
                        states,
                        index: 0,
                        replace: selected.map(|s| (start, s)),
                        aws: false,
                    });
                    self.settle();
                    self.skip_ws();
                    if self.input.get(self.pos) == Some(if object { &b'}' } else { &b']' }) {
                        self.pos += 1;
                        self.close()?;
                        self.settle();
                    } else {
                        (selected, states) = self.child()?;
                        continue 'value;
                    }
                }
                Some(b'"') => self.string(selected)?,
                Some(b'-' | b'0'..=b'9') => self.number(selected)?,
                Some(b't') => self.literal(b"true", selected)?,
                Some(b'f') => self.literal(b"false", selected)?,
                Some(b'n') => self.literal(b"null", selected)?,
                _ => return Err(malformed(start, "expected a value")),
            }
            // A value is complete: close containers until one has a next child.
            self.settle();
            loop {
                let Some(frame) = self.frames.last() else {
                    return Ok(());
                };
                let object = frame.object;
                self.skip_ws();
                match self.input.get(self.pos) {
                    Some(b',') => {
                        self.pos += 1;
                        self.skip_ws();
                        (selected, states) = self.child()?;
                        continue 'value;
                    }
                    Some(b'}') if object => {
                        self.pos += 1;
                        self.close()?;
                        self.settle();
                    }
                    Some(b']') if !object => {
                        self.pos += 1;
                        self.close()?;
                        self.settle();
                    }
                    _ if object => return Err(malformed(self.pos, "expected `,` or `}`")),
                    _ => return Err(malformed(self.pos, "expected `,` or `]`")),
                }
            }
        }
    }

    /// Reads up to the next child of the innermost container (for an object, its member name and
    /// colon). Returns whether a selector picks the child, and the child's selector states.
    fn child(&mut self) -> Result<(Option<FieldMask>, Range<usize>), MaskError> {
        let input = self.input;
        let Some(frame) = self.frames.last_mut() else {
            return Err(malformed(self.pos, "expected a value"));
        };
        let parent = frame.states.clone();
        let object = frame.object;
        let index = frame.index;
        frame.index += 1;
        self.states.truncate(parent.end);
        let first = self.states.len();
        let selected = if object {
            if input.get(self.pos) != Some(&b'"') {
                return Err(malformed(self.pos, "expected a member name"));
            }
            let (content, escaped, features) = self.scan_string()?;
            let mut selected = if parent.is_empty() {
                None
            } else if escaped {
                self.decode(content.clone())?;
                self.plan
                    .paths
                    .step(&mut self.states, parent, Label::Name(self.decoded.as_bytes()))
            } else {
                self.plan
                    .paths
                    .step(&mut self.states, parent, Label::Name(&input[content.clone()]))
            };
            // An AWS secret access key or session token has no shape a detector knows: its
            // member's name says what it is (`SecretAccessKey`, `aws_session_token`).
            if self.quiet == 0 && self.plan.active.contains(Detector::AwsAccessKey) {
                let name = if escaped {
                    self.decode(content.clone())?;
                    self.decoded.as_bytes()
                } else {
                    &input[content.clone()]
                };
                let aws = detectors::aws_name(name);
                if let Some(frame) = self.frames.last_mut() {
                    let secret = match aws {
                        Some(detectors::AwsName::Secret) => true,
                        Some(detectors::AwsName::Token) => frame.aws,
                        _ => false,
                    };
                    frame.aws |= matches!(aws, Some(detectors::AwsName::KeyId | detectors::AwsName::Secret));
                    if secret && selected.is_none() {
                        selected = Some(FieldMask::Strategy(self.plan.strategy_of(Detector::AwsAccessKey)));
                    }
                }
            }
            // Names are scanned too: a map keyed by email addresses leaks them as surely as values.
            if self.quiet == 0 {
                self.detect(content, escaped, features)?;
            }
            self.skip_ws();
            if input.get(self.pos) != Some(&b':') {
                return Err(malformed(self.pos, "expected `:`"));
            }
            self.pos += 1;
            self.skip_ws();
            selected
        } else if parent.is_empty() {
            None
        } else {
            self.plan
                .paths
                .step(&mut self.states, parent, Label::Index(index))
        };
        Ok((selected, first..self.states.len()))
    }

    /// Closes the innermost container (its closing bracket just read).
    fn close(&mut self) -> Result<(), MaskError> {
        let Some(frame) = self.frames.pop() else {
            return Ok(());
        };
        self.states.truncate(frame.states.start);
        if let Some((start, mut strategy)) = frame.replace {
            self.quiet -= 1;
            if self.plan.secret_values && strategy == FieldMask::Strategy(MaskingStrategy::Hash) {
                strategy = FieldMask::Strategy(MaskingStrategy::Redact);
            }
            let raw = self.str_at(start..self.pos)?;
            self.replace(start..self.pos, strategy, raw, true);
        }
        Ok(())
    }

    fn string(&mut self, selected: Option<FieldMask>) -> Result<(), MaskError> {
        let start = self.pos;
        let (content, escaped, features) = self.scan_string()?;
        if let Some(strategy) = selected {
            let decoded = if escaped {
                self.decode(content.clone())?;
                std::mem::take(&mut self.decoded)
            } else {
                String::new()
            };
            let value = if escaped {
                decoded.as_str()
            } else {
                self.str_at(content)?
            };
            self.replace(start..self.pos, strategy, value, false);
            self.decoded = decoded;
        } else if self.quiet == 0 {
            self.detect(content, escaped, features)?;
        }
        Ok(())
    }

    fn number(&mut self, selected: Option<FieldMask>) -> Result<(), MaskError> {
        let start = self.pos;
        // A negative number holds the same digits: its sign does not hide a card.
        self.scan_number()?;
        if self.prefix && self.pos == self.input.len() {
            return Err(malformed(start, NUMBER_CUT));
        }
        let range = start..self.pos;
        let raw = self.str_at(range.clone())?;
        if let Some(strategy) = selected {
            self.replace(range, strategy, raw, false);
        } else if self.quiet == 0
            && self.plan.active.contains(Detector::CreditCard)
            && detectors::is_card_number(raw.as_bytes())
        {
            // A card number stored as a JSON number becomes a masked string.
            self.out.extend_from_slice(&self.input[self.copied..start]);
            self.masked.clear();
            let strategy = self.plan.strategy_of(Detector::CreditCard);
            strategy::mask_span(
                strategy,
                Detector::CreditCard,
                raw,
                &self.plan.key,
                &mut self.masked,
            );
            write_json_string(self.out, &self.masked);
            self.copied = range.end;
            self.report.count(Detector::CreditCard);
        }
        Ok(())
    }

    fn literal(&mut self, literal: &'static [u8], selected: Option<FieldMask>) -> Result<(), MaskError> {
        let start = self.pos;
        if self.input.get(start..start + literal.len()) != Some(literal) {
            return Err(malformed(start, "invalid literal"));
        }
        self.pos += literal.len();
        if let Some(strategy) = selected {
            let raw = self.str_at(start..self.pos)?;
            self.replace(start..self.pos, strategy, raw, false);
        }
        Ok(())
    }

    /// Writes the masked form of the selected value at `range` (whose value is `value`).
    fn replace(&mut self, range: Range<usize>, mask: FieldMask, value: &str, container: bool) {
        self.masked.clear();
        strategy::mask_field(mask, value, container, &self.plan.key, &mut self.masked);
        self.out.extend_from_slice(&self.input[self.copied..range.start]);
        write_json_string(self.out, &self.masked);
        self.copied = range.end;
        self.report.fields += 1;
    }

    /// Runs the detectors on the string whose content is at `content`, replacing what they find.
    fn detect(&mut self, content: Range<usize>, escaped: bool, features: Features) -> Result<(), MaskError> {
        // A value inside a URL (`search=card%20eq%20%224111...%22`, `%2B1415...`) is
        // percent-encoded in the string: read as decoded too, as text is.
        // (Gathered in the string's one scan: no second pass over it.)
        let percent = features.has_percent();
        // An escape can hide any character, so only unescaped text is ruled out by its raw
        // features; decoding only shortens text, so a short raw string is short decoded too.
        let worth = if escaped || percent {
            !self.plan.active.is_empty() && content.len() >= detectors::MIN_TEXT
        } else {
            features.worth_scanning(content.len(), self.plan.active)
        };
        if !worth {
            return Ok(());
        }
        let mut spans = std::mem::take(&mut self.spans);
        if escaped || percent {
            // Detect on the decoded text, so `\u0040` cannot hide an `@`.
            let decoded = if escaped {
                self.decode(content.clone())?;
                std::mem::take(&mut self.decoded)
            } else {
                let mut raw = std::mem::take(&mut self.decoded);
                raw.clear();
                raw.push_str(self.str_at(content.clone())?);
                raw
            };
            let bytes = decoded.as_bytes();
            if percent {
                spans = super::escaped_spans(self.plan, bytes, false);
            } else {
                detectors::find(bytes, Features::of(bytes), self.plan.active, &mut spans);
            }
            if !spans.is_empty() {
                self.out
                    .extend_from_slice(&self.input[self.copied..content.start]);
                self.write_masked(&decoded, &spans, true, percent);
                self.copied = content.end;
            }
            self.decoded = decoded;
        } else {
            detectors::find(
                &self.input[content.clone()],
                features,
                self.plan.active,
                &mut spans,
            );
            if !spans.is_empty() {
                self.out
                    .extend_from_slice(&self.input[self.copied..content.start]);
                let text = self.str_at(content.clone())?;
                self.write_masked(text, &spans, false, false);
                self.copied = content.end;
            }
        }
        self.spans = spans;
        Ok(())
    }

    /// Writes string content: `text` with `spans` masked. Unescaped text is copied as it is;
    /// decoded text (`escape`) is escaped again. Found values are masked as percent-decoded
    /// when `percent` (a Hash of `a%40b.com` is the hash of `a@b.com`).
    fn write_masked(&mut self, text: &str, spans: &[Span], escape: bool, percent: bool) {
        let mut prev = 0;
        let copy = |out: &mut Vec<u8>, s: &str| {
            if escape {
                write_escaped(out, s);
            } else {
                out.extend_from_slice(s.as_bytes());
            }
        };
        for span in spans {
            // Spans start and end on ASCII bytes, so `get` always succeeds.
            copy(self.out, text.get(prev..span.start).unwrap_or_default());
            self.masked.clear();
            let found = text.get(span.start..span.end).unwrap_or_default();
            let decoded;
            let found = if percent {
                decoded = String::from_utf8_lossy(&super::unescaped(found.as_bytes(), false)).into_owned();
                decoded.as_str()
            } else {
                found
            };
            let strategy = self.plan.strategy_of(span.detector);
            strategy::mask_span(strategy, span.detector, found, &self.plan.key, &mut self.masked);
            write_escaped(self.out, &self.masked);
            self.report.count(span.detector);
            prev = span.end;
        }
        copy(self.out, text.get(prev..).unwrap_or_default());
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.input.get(self.pos) {
            self.pos += 1;
        }
    }

    /// Input text between two char boundaries (every position the parser stops at is one).
    fn str_at(&self, range: Range<usize>) -> Result<&'i str, MaskError> {
        let start = range.start;
        self.text
            .get(range)
            .ok_or(malformed(start, "not at a character boundary"))
    }

    /// Validates the string whose opening quote is at `pos` and moves past it. Returns the range
    /// of its content, whether it has escapes, and its raw detector [`Features`] (gathered in the
    /// same pass as the control-character check).
    fn scan_string(&mut self) -> Result<(Range<usize>, bool, Features), MaskError> {
        let input = self.input;
        let start = self.pos + 1;
        let mut i = start;
        let mut escaped = false;
        let mut features = Features::default();
        loop {
            let (end, run) = scan_run(input, i);
            features = features.add(run);
            match input.get(end) {
                Some(b'"') => {
                    self.pos = end + 1;
                    return Ok((start..end, escaped, features));
                }
                Some(b'\\') => {
                    escaped = true;
                    i = unescape(input, end)?.1;
                }
                Some(_) => return Err(malformed(end, "control character in string")),
                None => return Err(malformed(self.pos, "unterminated string")),
            }
        }
    }

    /// Decodes the escaped string content at `range` into `self.decoded`.
    fn decode(&mut self, range: Range<usize>) -> Result<(), MaskError> {
        let input = self.input;
        self.decoded.clear();
        let mut i = range.start;
        while i < range.end {
            let run_end = memchr(b'\\', &input[i..range.end]).map_or(range.end, |k| i + k);
            self.decoded.push_str(self.str_at(i..run_end)?);
            if run_end == range.end {
                break;
            }
            let (c, next) = unescape(input, run_end)?;
            self.decoded.push(c);
            i = next;
        }
        Ok(())
    }

    /// Validates the number at `pos` and moves past it.
    fn scan_number(&mut self) -> Result<(), MaskError> {
        let b = self.input;
        let mut i = self.pos;
        let negative = b.get(i) == Some(&b'-');
        i += usize::from(negative);
        match b.get(i) {
            Some(b'0') => {
                i += 1;
                if b.get(i).is_some_and(u8::is_ascii_digit) {
                    return Err(malformed(i, "leading zero in number"));
                }
            }
            Some(b'1'..=b'9') => i = skip_digits(b, i),
            _ => return Err(malformed(i, "expected a digit")),
        }
        if b.get(i) == Some(&b'.') {
            let j = skip_digits(b, i + 1);
            if j == i + 1 {
                return Err(malformed(j, "expected a digit after `.`"));
            }
            i = j;
        }
        if let Some(b'e' | b'E') = b.get(i) {
            i += 1;
            if let Some(b'+' | b'-') = b.get(i) {
                i += 1;
            }
            let j = skip_digits(b, i);
            if j == i {
                return Err(malformed(j, "expected a digit in the exponent"));
            }
            i = j;
        }
        self.pos = i;
        Ok(())
    }
}

fn skip_digits(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    i
}

/// Finds the end of the run of plain string content from `i`: the first quote, backslash or control
/// character (or the end of input), eight bytes at a time, gathering detector features on the way.
fn scan_run(b: &[u8], mut i: usize) -> (usize, Features) {
    let mut features = FeatureScan::default();
    loop {
        let (x, available) = match b.get(i..i + 8) {
            Some(chunk) => {
                let mut word = [0u8; 8];
                word.copy_from_slice(chunk);
                (u64::from_le_bytes(word), 8)
            }
            None => {
                // The last few bytes, padded with a byte that is neither a stop nor a feature.
                let rest = b.get(i..).unwrap_or_default();
                let mut word = [b'x'; 8];
                word[..rest.len()].copy_from_slice(rest);
                (u64::from_le_bytes(word), rest.len())
            }
        };
        let stop = detectors::bytes_equal(x, b'"')
            | detectors::bytes_equal(x, b'\\')
            | detectors::bytes_below(x, 0x20);
        if stop == 0 {
            features.add_word(x, u64::MAX);
            if available < 8 {
                // Padding is neutral for features; the string is unterminated.
                return (b.len(), features.finish());
            }
            i += 8;
            continue;
        }
        // Bytes before the first stop byte; the lowest set bit of `stop` is exact.
        let bits = stop.trailing_zeros();
        features.add_word(x, (1u64 << (bits - 7)) - 1);
        return ((i + (bits / 8) as usize).min(b.len()), features.finish());
    }
}

/// Decodes the escape at `i` (a backslash): the character and the index after the escape.
/// Lone surrogates are refused, as RFC 8259 text cannot carry them into UTF-8.
pub(super) fn unescape(b: &[u8], i: usize) -> Result<(char, usize), MaskError> {
    let simple = match b.get(i + 1) {
        Some(b'"') => '"',
        Some(b'\\') => '\\',
        Some(b'/') => '/',
        Some(b'b') => '\u{8}',
        Some(b'f') => '\u{c}',
        Some(b'n') => '\n',
        Some(b'r') => '\r',
        Some(b't') => '\t',
        Some(b'u') => {
            let hi = hex4(b, i + 2).ok_or(malformed(i, "invalid \\u escape"))?;
            let (code, next) = match hi {
                0xD800..=0xDBFF => {
                    let lo = match b.get(i + 6..i + 8) {
                        Some(b"\\u") => hex4(b, i + 8),
                        _ => None,
                    };
                    match lo {
                        Some(lo @ 0xDC00..=0xDFFF) => {
                            (0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00), i + 12)
                        }
                        _ => return Err(malformed(i, "lone surrogate in \\u escape")),
                    }
                }
                0xDC00..=0xDFFF => return Err(malformed(i, "lone surrogate in \\u escape")),
                _ => (hi, i + 6),
            };
            let c = char::from_u32(code).ok_or(malformed(i, "invalid \\u escape"))?;
            return Ok((c, next));
        }
        _ => return Err(malformed(i, "invalid escape")),
    };
    Ok((simple, i + 2))
}

fn hex4(b: &[u8], i: usize) -> Option<u32> {
    b.get(i..i + 4)?
        .iter()
        .try_fold(0u32, |acc, &c| Some(acc * 16 + char::from(c).to_digit(16)?))
}

/// Writes `s` as a JSON string, quotes included.
pub(super) fn write_json_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    write_escaped(out, s);
    out.push(b'"');
}

/// Writes `s` as JSON string content: quote, backslash and control characters escaped.
fn write_escaped(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let b = s.as_bytes();
    let mut run = 0;
    for (i, &c) in b.iter().enumerate() {
        let short: &[u8] = match c {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => &[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(c >> 4)],
                HEX[usize::from(c & 15)],
            ],
            _ => continue,
        };
        out.extend_from_slice(&b[run..i]);
        out.extend_from_slice(short);
        run = i + 1;
    }
    out.extend_from_slice(&b[run..]);
}

#[cfg(test)]
mod tests {
    use agentgate_crds::policy::{Detector, MaskingRule, MaskingStrategy};
    use serde_json::json;

    use super::super::{HashKey, MAX_JSON_DEPTH, MAX_MASKED_BODY, MaskError, MaskingPlan};

    fn plan(rules: serde_json::Value) -> MaskingPlan {
        let rules: Vec<MaskingRule> = serde_json::from_value(rules).unwrap();
        MaskingPlan::compile(&rules.iter().collect::<Vec<_>>(), HashKey::from_bytes([9; 32])).unwrap()
    }

    fn all_detectors() -> MaskingPlan {
        plan(
            json!([{"detectors": ["Email", "Phone", "CreditCard", "IBAN", "AwsAccessKey", "GcpApiKey",
            "OktaApiToken", "JWT", "PrivateKey"]}]),
        )
    }

    fn mask(plan: &MaskingPlan, input: &str) -> Result<String, MaskError> {
        let mut out = Vec::new();
        plan.mask_json(input.as_bytes(), &mut out)?;
        Ok(String::from_utf8(out).unwrap())
    }

    #[test]
    fn untouched_input_is_copied_byte_for_byte() {
        let p = all_detectors().merge(&plan(json!([{"jsonFields": ["$.absent", "$..nope"]}])));
        let input = " {\"a\" : [1, -2.5e+3, true, false, null, \"t\\u00e9\\n\\\"x\\\"\", {}, []],\r\n\t\"\u{e9}\": \"\u{1F600}\"} \n";
        assert_eq!(mask(&p, input).unwrap(), input);
    }

    /// Numbers side by side are text's, not JSON's: `4111 1111 1111 1111` read as four numbers
    /// holds no card, so a number or literal on a line with another value is left to the
    /// caller's text reading; one such value alone or on its own line, and documents side by
    /// side, are JSON.
    #[test]
    fn a_number_among_several_values_is_not_read_as_json() {
        let p = all_detectors();
        for input in [
            "4111 1111 1111 1111\n",
            "{\"a\":1} 4111 1111 1111 1111",
            "[1]\n415 555 0132",
            "true 4111111111111111",
        ] {
            assert!(
                matches!(mask(&p, input), Err(MaskError::Malformed { .. })),
                "{input}"
            );
        }
        assert_eq!(
            mask(&p, " 4111111111111111 ").unwrap(),
            " \"[REDACTED:CREDIT_CARD]\" "
        );
        assert_eq!(mask(&p, "7\n").unwrap(), "7\n");
        // One per line, as NDJSON has them: each is its own value.
        assert_eq!(
            mask(&p, "4111\n1111\r\n[1]\ntrue").unwrap(),
            "4111\n1111\r\n[1]\ntrue"
        );
        assert_eq!(
            mask(&p, "{\"a\":1}\n[2]\n\"x\"\n").unwrap(),
            "{\"a\":1}\n[2]\n\"x\"\n"
        );
    }

    #[test]
    fn selected_values_of_any_type_become_strings() {
        let p = plan(json!([{"jsonFields": ["$.s", "$.n", "$.b", "$.z", "$.o", "$.a"]}]));
        let out = mask(
            &p,
            r#"{"s":"x","n":-1.5,"b":true,"z":null,"o":{"k":[1,{"d":2}]},"a":[1,"2"],"keep":1}"#,
        )
        .unwrap();
        assert_eq!(
            out,
            r#"{"s":"[REDACTED]","n":"[REDACTED]","b":"[REDACTED]","z":"[REDACTED]","o":"[REDACTED]","a":"[REDACTED]","keep":1}"#
        );
        let mut buf = Vec::new();
        let report = p.mask_json(br#"{"o":{"x":1},"s":"a"}"#, &mut buf).unwrap();
        assert_eq!((report.fields, report.detections), (2, 0));
    }

    #[test]
    fn hash_of_a_container_hashes_its_json_text() {
        let p = plan(json!([{"jsonFields": ["$.o", "$.s"], "strategy": "Hash"}]));
        let out: serde_json::Value =
            serde_json::from_str(&mask(&p, r#"{"o":{"k": [1]},"s":"a\u0040b"}"#).unwrap()).unwrap();
        assert_eq!(out["o"], p.mask_value(MaskingStrategy::Hash, r#"{"k": [1]}"#));
        // Strings are hashed decoded, as columns are.
        assert_eq!(out["s"], p.mask_value(MaskingStrategy::Hash, "a@b"));
    }

    #[test]
    fn detections_are_replaced_inside_strings() {
        let p = all_detectors();
        assert_eq!(
            mask(
                &p,
                r#"{"note":"mail john@example.com or call (415) 555-0132, ok"}"#
            )
            .unwrap(),
            r#"{"note":"mail [REDACTED:EMAIL] or call [REDACTED:PHONE], ok"}"#
        );
        // A map keyed by addresses leaks them too.
        assert_eq!(
            mask(&p, r#"{"john@example.com":1}"#).unwrap(),
            r#"{"[REDACTED:EMAIL]":1}"#
        );
        assert_eq!(
            mask(&p, r#""AKIAIOSFODNN7EXAMPLE""#).unwrap(),
            r#""[REDACTED:AWS_ACCESS_KEY]""#
        );
    }

    /// A value percent-encoded inside a string (a link's query) is found as decoded, as in text;
    /// the rest of the string stays as written.
    #[test]
    fn percent_encoded_values_inside_strings_are_found() {
        let p = all_detectors();
        let out = mask(
            &p,
            r#"{"href":"https://acme.okta.com/api/v1/users?search=profile.card%20eq%20%224111111111111111%22"}"#,
        )
        .unwrap();
        assert_eq!(
            out,
            r#"{"href":"https://acme.okta.com/api/v1/users?search=profile.card%20eq%20%22[REDACTED:CREDIT_CARD]%22"}"#
        );
        for (input, gone) in [
            (r#"{"u":"tel=%2B14155550132"}"#, "4155550132"),
            (r#"{"u":"next%3DAKIAIOSFODNN7EXAMPLE"}"#, "AKIAIOSFODNN7EXAMPLE"),
            (r#"{"u":"a\/b?x=1&card%3A4111111111111111"}"#, "4111111111111111"),
            (r#"{"u":"mail=john%40example.com"}"#, "example.com"),
        ] {
            let out = mask(&p, input).unwrap();
            assert!(
                !out.contains(gone) && out.contains("[REDACTED:"),
                "{input} -> {out}"
            );
            serde_json::from_str::<serde_json::Value>(&out).unwrap();
        }
        // Hashed as decoded: equal values compare equal however they were encoded.
        let h = plan(json!([{"detectors": ["Email"], "strategy": "Hash"}]));
        let encoded: serde_json::Value =
            serde_json::from_str(&mask(&h, r#"{"u":"john%40example.com"}"#).unwrap()).unwrap();
        let plain: serde_json::Value =
            serde_json::from_str(&mask(&h, r#"{"u":"john@example.com"}"#).unwrap()).unwrap();
        assert_eq!(encoded, plain);
    }

    /// An AWS secret access key or session token is masked by its member's name (the shape
    /// the metadata service and STS give them), under the AWS detector.
    #[test]
    fn aws_secrets_are_masked_by_their_member_names() {
        let p = all_detectors();
        let input = r#"{"Code":"Success","AccessKeyId":"ASIAIOSFODNN7EXAMPLE","SecretAccessKey":"wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY","Session\u0054oken":"IQoJb3JpZ2luX2Vj","Expiration":"2026-12-06T23:00:00Z"}"#;
        let out: serde_json::Value = serde_json::from_str(&mask(&p, input).unwrap()).unwrap();
        assert_eq!(out["AccessKeyId"], "[REDACTED:AWS_ACCESS_KEY]");
        assert_eq!(out["SecretAccessKey"], "[REDACTED]");
        assert_eq!(out["SessionToken"], "[REDACTED]");
        assert_eq!(out["Expiration"], "2026-12-06T23:00:00Z");
        // The metadata service names the session token `Token`, beside the key.
        let imds = r#"{"Code":"Success","AccessKeyId":"ASIAIOSFODNN7EXAMPLE","Token":"IQoJb3JpZ2luX2Vj","Expiration":"x"}"#;
        let out: serde_json::Value = serde_json::from_str(&mask(&p, imds).unwrap()).unwrap();
        assert_eq!(out["Token"], "[REDACTED]");
        // A `Token` of anything else is not taken for one.
        let other = r#"{"Token":"page-2","items":[]}"#;
        assert_eq!(mask(&p, other).unwrap(), other);
        // Without the AWS detector, the names mean nothing.
        let email = plan(json!([{"detectors": ["Email"]}]));
        assert_eq!(mask(&email, input).unwrap(), input);
    }

    #[test]
    fn escapes_are_decoded_before_detection() {
        let p = all_detectors();
        assert_eq!(
            mask(&p, r#"{"e":"a\u0040b.com"}"#).unwrap(),
            r#"{"e":"[REDACTED:EMAIL]"}"#
        );
        // Unmasked text around a detection is re-escaped as needed.
        assert_eq!(
            mask(&p, r#"["\"q\"\tjohn\u0040example.com \u00e9 \ud83d\ude00"]"#).unwrap(),
            "[\"\\\"q\\\"\\tjohn[REDACTED:EMAIL] \u{e9} \u{1F600}\"]".replace("john", "")
        );
        let pem = r#""-----BEGIN EC PRIVATE KEY-----\nMHcCAQEE\n-----END EC PRIVATE KEY-----\n""#;
        assert_eq!(mask(&p, pem).unwrap(), r#""[REDACTED:PRIVATE_KEY]\n""#);
    }

    #[test]
    fn card_numbers_stored_as_numbers() {
        let p = all_detectors();
        assert_eq!(
            mask(&p, r#"[4111111111111111, 4111111111111112, 1700000000000, -4111111111111111, 4.111111111111111e15, 4.111111111111112E+15, 1e5]"#).unwrap(),
            r#"["[REDACTED:CREDIT_CARD]", 4111111111111112, 1700000000000, "[REDACTED:CREDIT_CARD]", "[REDACTED:CREDIT_CARD]", 4.111111111111112E+15, 1e5]"#
        );
        // Any form of the same value: its exponent, a fraction of zeros, a negative exponent.
        assert_eq!(
            mask(&p, r#"[4111111111111111e0, 4.1111111111111110e15, 41111111111111110e-1, 4.111111111111111e015, 411111111111111.1e1, 4111111111111111e-1]"#).unwrap(),
            r#"["[REDACTED:CREDIT_CARD]", "[REDACTED:CREDIT_CARD]", "[REDACTED:CREDIT_CARD]", "[REDACTED:CREDIT_CARD]", "[REDACTED:CREDIT_CARD]", 4111111111111111e-1]"#
        );
        // A card held as a float prints with a zero fraction; any other fraction is a measure.
        assert_eq!(
            mask(
                &p,
                r#"[4111111111111111.0, 4111111111111111.00, 4111111111111111.5, 4111111111111111.05]"#
            )
            .unwrap(),
            r#"["[REDACTED:CREDIT_CARD]", "[REDACTED:CREDIT_CARD]", 4111111111111111.5, 4111111111111111.05]"#
        );
        // Zeros that do not change the value do not hide it: an exponent's leading zeros, the
        // long zero fraction of a wide numeric column, leading zeros before a small exponent.
        let wide = format!("4111111111111111.{}", "0".repeat(60));
        let many_zeros =
            format!("[4.111111111111111e0015, 4111111111111111e0000, {wide}, 0.4111111111111111e16, 41e00]");
        assert_eq!(
            mask(&p, &many_zeros).unwrap(),
            r#"["[REDACTED:CREDIT_CARD]", "[REDACTED:CREDIT_CARD]", "[REDACTED:CREDIT_CARD]", "[REDACTED:CREDIT_CARD]", 41e00]"#
        );
        // Still not cards: a value past 19 digits, a real fraction far out.
        let long_fraction = format!("4111111111111111.{}1", "0".repeat(60));
        assert_eq!(
            mask(&p, &format!("[4111111111111111e10, {long_fraction}]")).unwrap(),
            format!("[4111111111111111e10, {long_fraction}]")
        );
    }

    #[test]
    fn several_top_level_values() {
        let p = all_detectors().merge(&plan(json!([{"jsonFields": ["$.k"], "strategy": "Partial"}])));
        let mut out = Vec::new();
        let input = "{\"k\":\"0123456789abcdef\",\"e\":\"x@y.io\"}\n{\"k\":true}\n\n\"z@y.io\"\n7\n";
        let report = p.mask_json(input.as_bytes(), &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"k\":\"************cdef\",\"e\":\"[REDACTED:EMAIL]\"}\n{\"k\":\"****\"}\n\n\"[REDACTED:EMAIL]\"\n7\n"
        );
        assert_eq!(
            (report.fields, report.detections, report.detected(Detector::Email)),
            (2, 2, 2)
        );
        assert!(mask(&p, "  \n").unwrap() == "  \n");
    }

    #[test]
    fn malformed_input_is_refused_and_output_left_alone() {
        let p = all_detectors().merge(&plan(json!([{"jsonFields": ["$..s"]}])));
        let cases: &[&[u8]] = &[
            b"{",
            b"[",
            b"{\"a\":}",
            b"{\"a\" 1}",
            b"{\"a\":1,}",
            b"{,}",
            b"{1:2}",
            b"[1,]",
            b"[1 2]",
            b"[1]]",
            b"\"abc",
            b"\"a\\x\"",
            b"\"\\u12\"",
            b"\"\\ud800\"",
            b"\"\\udc00\"",
            b"\"\\ud800\\u0041\"",
            b"\"a\x01b\"",
            b"01",
            b"-",
            b"-a",
            b"1.",
            b"1.e5",
            b"1e",
            b"1e+",
            b"NaN",
            b"Infinity",
            b"tru",
            b"nul",
            b"[1]x",
            b"{}{}",
            b"\xef\xbb\xbf{}",
            b"\"\xff\"",
            b"{\"s\":{\"a\":[1,]}}",
            b"{\"s\":\"unterminated}",
        ];
        for case in cases {
            let mut out = b"keep".to_vec();
            let err = p.mask_json(case, &mut out).unwrap_err();
            assert!(
                matches!(err, MaskError::Malformed { .. }),
                "{:?}: {err}",
                String::from_utf8_lossy(case)
            );
            assert_eq!(out, b"keep");
            assert!(serde_json::from_slice::<serde_json::Value>(case).is_err() || case == b"{}{}");
        }
        let err = p
            .mask_json(b"{\"a\":\"secret \x01\"}", &mut Vec::new())
            .unwrap_err();
        assert!(!err.to_string().contains("secret"), "{err}");
    }

    #[test]
    fn depth_and_size_are_bounded() {
        let p = plan(json!([{"jsonFields": ["$.s"]}]));
        let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(mask(&p, &nested(MAX_JSON_DEPTH)).is_ok());
        assert_eq!(mask(&p, &nested(MAX_JSON_DEPTH + 1)), Err(MaskError::TooDeep));
        assert_eq!(mask(&p, &"[".repeat(1_000_000)), Err(MaskError::TooDeep));
        // A selected value is validated, and bounded, like any other.
        assert_eq!(
            mask(&p, &format!("{{\"s\":{}}}", nested(MAX_JSON_DEPTH))),
            Err(MaskError::TooDeep)
        );
        assert_eq!(
            mask(&p, &format!("{{\"s\":{}}}", nested(MAX_JSON_DEPTH - 1))).unwrap(),
            r#"{"s":"[REDACTED]"}"#
        );
        let mut big = vec![b' '; MAX_MASKED_BODY + 1];
        big[0] = b'1';
        assert_eq!(p.mask_json(&big, &mut Vec::new()), Err(MaskError::TooLarge));
        big.truncate(MAX_MASKED_BODY);
        assert!(p.mask_json(&big, &mut Vec::new()).is_ok());
    }

    #[test]
    fn hostile_strings_and_objects_stay_linear() {
        let p = all_detectors().merge(&plan(json!([{"jsonFields": ["$..a..b", "$..c.*"]}])));
        let docs = [
            format!("\"{}\"", "\\u0040a".repeat(300_000)),
            format!("\"{}\"", "1 ".repeat(500_000)),
            format!(
                "{{{}\"z\":0}}",
                (0..100_000)
                    .map(|i| format!("\"a{i}\":{{\"a\":[]}},"))
                    .collect::<String>()
            ),
            format!("[{}0]", "{\"a\":{\"x\":{\"a\":{\"y\":1}}}},".repeat(50_000)),
        ];
        for doc in docs {
            let started = std::time::Instant::now();
            mask(&p, &doc).unwrap();
            assert!(started.elapsed().as_secs() < 3);
        }
    }

    /// Fail closed on malformed JSON, and never emit malformed JSON: on mutants of valid
    /// documents the masker accepts nothing serde_json refuses, its output always parses, and
    /// masking the output again changes nothing (no detection left behind).
    #[test]
    fn hostile_documents_are_refused_or_masked_into_valid_json() {
        let p = all_detectors().merge(&plan(
            json!([{"jsonFields": ["$..profile.email", "$.data.*", "$.items[*].token"]}]),
        ));
        let seeds: [&[u8]; 5] = [
            br#"{"id":"00u1","profile":{"email":"a@example.com","mobilePhone":"+1 415 555 0100","n":-1.5e3},"ok":true}"#,
            br#"{"kind":"Secret","data":{"password":"c2VjcmV0"},"stringData":{"k":"v"},"items":[{"token":"00abcdefghijklmnopqrstuvwxyz0123456789ABCD"},null]}"#,
            "[\"t\\u00e9\\n\\\"x\\\" \\ud83d\\ude00\", 4111111111111111, {\"\\u0065mail\": \"b@example.org\"}, [], {}]".as_bytes(),
            b" 12 \"card 4111 1111 1111 1111\" false\n",
            "{\"iban\":\"DE89 3704 0044 0532 0130 00\",\"\u{e9}\":\"\u{1F600}\",\"jwt\":\"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln\"}".as_bytes(),
        ];
        let parses = |b: &[u8]| {
            serde_json::Deserializer::from_slice(b)
                // Grammar only: a number out of f64's range is still JSON.
                .into_iter::<serde::de::IgnoredAny>()
                .all(|v| v.is_ok())
        };
        crate::mutate::each_mutant(&seeds, 4_000, |input| {
            let mut out = Vec::new();
            // Refusing is always safe; it may be stricter than serde_json's stream (which takes
            // `{}0` as two values), never looser.
            if p.mask_json(input, &mut out).is_ok() {
                assert!(parses(input), "accepted malformed input");
                assert!(parses(&out), "emitted malformed output");
                let mut again = Vec::new();
                p.mask_json(&out, &mut again).expect("masked output masks again");
                assert_eq!(again, out, "masking is not a fixpoint");
            }
        });
    }

    /// A value inside JSON is masked exactly as the same text outside it: the detectors see the
    /// decoded string whatever escapes carry it (the features that pick which detectors run are
    /// gathered from the escaped bytes, so an escaped `@` or digit must still count).
    #[test]
    fn strings_are_masked_as_their_decoded_text_whatever_the_escaping() {
        let p = all_detectors();
        let pieces = [
            "a@example.com",
            "bob.smith+x@mail.example.org",
            "4111 1111 1111 1111",
            "4111111111111111",
            "+1 415 555 0100",
            "(415) 555-0100",
            "DE89 3704 0044 0532 0130 00",
            "AKIAIOSFODNN7EXAMPLE",
            "AIzaSyA1234567890abcdefghijklmnopqrstu",
            "00abcdefghijklmnopqrstuvwxyz0123456789ABCD",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
            "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----",
            "2026-12-03T07:15:02Z",
            " ",
            "x",
            "é",
            "😀",
            "\n",
            "\"",
            "\\",
            "@",
            ".",
            "-",
            "1",
            "00",
        ];
        let mut rng = crate::mutate::Mutator::new(11);
        for _ in 0..3_000 * crate::mutate::scale() {
            let text: String = (0..1 + rng.below(6)).map(|_| rng.pick(&pieces)).collect();
            // JSON-encode it, each character raw or as a \u escape at random (raw only where
            // JSON allows it).
            let mut encoded = String::from("{\"k\":\"");
            for c in text.chars() {
                let must = c == '"' || c == '\\' || c < ' ';
                if must || rng.below(4) == 0 {
                    let mut units = [0u16; 2];
                    for u in c.encode_utf16(&mut units) {
                        encoded.push_str(&format!("\\u{u:04x}"));
                    }
                } else {
                    encoded.push(c);
                }
            }
            encoded.push_str("\"}");
            let masked = mask(&p, &encoded).unwrap_or_else(|e| panic!("{encoded}: {e}"));
            let value: serde_json::Value = serde_json::from_str(&masked).unwrap();
            let (want, _) = p.mask_text(&text);
            assert_eq!(value["k"].as_str(), Some(&*want), "{encoded}");
        }
    }
}
