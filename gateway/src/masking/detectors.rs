//! Content detectors: personal data and secrets found inside free text.
//!
//! Each detector is a hand-written scanner over bytes rather than a regex: candidates are found
//! with `memchr` on a literal (`@`, `AKIA`, `eyJ`, `-----BEGIN`) or at the start of a digit run,
//! and every candidate is checked with bounded work, so a scan is linear in the text whatever it
//! holds. All patterns are ASCII, so every span starts and ends on a character boundary.

use std::sync::LazyLock;

use agentgate_crds::policy::Detector;
use memchr::memchr_iter;
use memchr::memmem::{self, Finder};

/// Every detector, in the order of [`MaskReport::by_detector`](super::MaskReport::by_detector).
pub const ALL_DETECTORS: [Detector; 9] = [
    Detector::Email,
    Detector::Phone,
    Detector::CreditCard,
    Detector::Iban,
    Detector::AwsAccessKey,
    Detector::GcpApiKey,
    Detector::OktaApiToken,
    Detector::Jwt,
    Detector::PrivateKey,
];

/// Shortest text any detector can match (`a@b.io`).
pub(crate) const MIN_TEXT: usize = 6;
/// Digits a phone number, card or IBAN has at least.
const MIN_DIGITS: usize = 8;
/// Digits a card number has at least.
const MIN_CARD_DIGITS: usize = 13;
/// Longest label between `-----BEGIN ` and `-----` looked at.
const MAX_PEM_LABEL: usize = 64;
const PEM_BEGIN: &[u8] = b"-----BEGIN ";
/// Shortest PEM header of a private key, `-----BEGIN PRIVATE KEY-----`.
const MIN_PEM: usize = 27;

/// Searchers built once: building one per string would cost more than most searches.
static JWT_START: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"eyJ"));
static OKTA_START: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"00"));
static PEM_START: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(PEM_BEGIN));
/// `@` percent-encoded.
static PERCENT_AT: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"%40"));
/// An AWS secret access key or session token after its name (`aws_secret_access_key = ...`,
/// `"SecretAccessKey": "..."`, `AWS_SESSION_TOKEN=...`): unlike a key ID, the value has no
/// shape of its own (40 characters of base64), so its name is what finds it.
static AWS_SECRET: LazyLock<regex::bytes::Regex> = LazyLock::new(|| {
    regex::bytes::Regex::new(
        r#"(?i-u)(?:secret_?access_?key|session_?token)(?:["']?[ \t]*[:=][ \t]*["']?|>)([A-Za-z0-9/+=]{16,})"#,
    )
    .expect("a valid pattern")
});
/// What a JSON member's name says of AWS credentials.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AwsName {
    /// `AccessKeyId`, `aws_access_key_id`.
    KeyId,
    /// A secret access key or session token: `SecretAccessKey`, `aws_session_token`, ...
    Secret,
    /// `Token`: a session token beside a key (the metadata service's shape).
    Token,
}

/// Called for every member name where the AWS detector is on: no allocation, and most names
/// are told apart by their length and first letter.
pub(crate) fn aws_name(name: &[u8]) -> Option<AwsName> {
    // `token`, or 11 (`accesskeyid`) to 18 (`awssecretaccesskey`) letters and a few separators.
    if name.len() == 5 {
        return name.eq_ignore_ascii_case(b"token").then_some(AwsName::Token);
    }
    if !(11..=24).contains(&name.len()) || !matches!(name[0] | 0x20, b'a' | b's' | b'_' | b'-') {
        return None;
    }
    let mut buf = [0u8; 32];
    let folded = fold_name(name, &mut buf);
    let unprefixed = folded.strip_prefix(b"aws").unwrap_or(folded);
    match unprefixed {
        b"secretaccesskey" | b"sessiontoken" => Some(AwsName::Secret),
        b"accesskeyid" => Some(AwsName::KeyId),
        _ => None,
    }
}

/// `name` lower-cased without `_` and `-`, in `buf` (names of at most 32 bytes).
fn fold_name<'b>(name: &[u8], buf: &'b mut [u8; 32]) -> &'b [u8] {
    let mut n = 0;
    for &b in name.iter().take(32) {
        if b != b'_' && b != b'-' {
            buf[n] = b.to_ascii_lowercase();
            n += 1;
        }
    }
    &buf[..n]
}

/// Whether a JSON member's name is that of an AWS secret access key or session token
/// (`SecretAccessKey`, `aws_secret_access_key`, `sessionToken`, ...).
#[cfg(test)]
fn names_aws_secret(name: &[u8]) -> bool {
    aws_name(name) == Some(AwsName::Secret)
}

/// Whether `text` may hold what [`AWS_SECRET`] (ASCII case folding only, as here: with Unicode's,
/// the Kelvin sign would be a `k`) looks for, before the regex runs at all: a name
/// ending in `key` or `token` (any case) just before a separator (`:`, `=`, after an optional
/// quote and blanks; or `>`). Separators are rare in prose, where a scan for letters is not.
fn names_aws_secret_inside(text: &[u8]) -> bool {
    memchr::memchr3_iter(b':', b'=', b'>', text).any(|sep| {
        let mut end = sep;
        if text[sep] != b'>' {
            while end > 0 && matches!(text[end - 1], b' ' | b'\t') {
                end -= 1;
            }
            if end > 0 && matches!(text[end - 1], b'"' | b'\'') {
                end -= 1;
            }
        }
        let name = &text[..end];
        ends_with_ignoring_case(name, b"key") || ends_with_ignoring_case(name, b"token")
    })
}

fn ends_with_ignoring_case(text: &[u8], suffix: &[u8]) -> bool {
    text.len() >= suffix.len() && text[text.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
}

/// Shortest text [`AWS_SECRET`] can match in (`sessiontoken=` and 16 characters).
const MIN_AWS_SECRET_TEXT: usize = 29;
/// `@` percent-encoded twice (a link inside a query: `next=%2Fu%3Femail%3Dalice%2540x.com`).
static PERCENT_25_AT: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"%2540"));

/// Cheap facts about a text that rule most detectors out before any of them looks at the text:
/// most strings have no `@`, few digits, and no capital `A` or `J`. Gathered eight bytes at a time
/// (SWAR) by a [`FeatureScan`], in the same pass that finds where a JSON string ends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Features {
    digits: u32,
    marks: u8,
}

const MARK_AT: u8 = 1;
const MARK_CAPITAL_A: u8 = 2;
const MARK_CAPITAL_J: u8 = 4;
const MARK_DASH: u8 = 8;
const MARK_PERCENT: u8 = 16;

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// High bit set in the first byte of `x` below `n` (n <= 128), and possibly in later bytes: exact
/// as "any", and for the lowest set bit.
pub(crate) fn bytes_below(x: u64, n: u8) -> u64 {
    x.wrapping_sub(ONES * u64::from(n)) & !x & HIGHS
}

/// High bit set in the first byte of `x` equal to `c` (and possibly in later ones), as above.
pub(crate) fn bytes_equal(x: u64, c: u8) -> u64 {
    bytes_below(x ^ (ONES * u64::from(c)), 1)
}

/// High bit set in exactly the bytes of `x` that are ASCII digits. Adding to the low seven bits
/// never carries into the next byte, so every byte is judged on its own.
fn digit_bytes(x: u64) -> u64 {
    let low = x & !HIGHS;
    let at_least_0 = low + ONES * (0x80 - u64::from(b'0'));
    let above_9 = low + ONES * (0x7f - u64::from(b'9'));
    at_least_0 & !above_9 & !x & HIGHS
}

/// Gathers [`Features`] word by word.
#[derive(Default)]
pub(crate) struct FeatureScan {
    /// Per-byte-lane digit counts; a lane overflows after 255 words, so they are summed before.
    digit_lanes: u64,
    lane_words: u32,
    digits: u32,
    at: u64,
    capital_a: u64,
    capital_j: u64,
    dash: u64,
    percent: u64,
}

impl FeatureScan {
    /// Adds the bytes of the little-endian word `x` whose high bits are in `valid`.
    #[inline]
    pub fn add_word(&mut self, x: u64, valid: u64) {
        // Baseline x86-64 has no popcount instruction: one add per word, summed up later.
        self.digit_lanes += (digit_bytes(x) & valid) >> 7;
        self.lane_words += 1;
        if self.lane_words == 255 {
            self.sum_lanes();
        }
        self.at |= bytes_equal(x, b'@') & valid;
        self.capital_a |= bytes_equal(x, b'A') & valid;
        self.capital_j |= bytes_equal(x, b'J') & valid;
        self.dash |= bytes_equal(x, b'-') & valid;
        self.percent |= bytes_equal(x, b'%') & valid;
    }

    fn sum_lanes(&mut self) {
        const PAIRS: u64 = 0x00ff_00ff_00ff_00ff;
        let pairs = (self.digit_lanes & PAIRS) + ((self.digit_lanes >> 8) & PAIRS);
        self.digits += (pairs.wrapping_mul(0x0001_0001_0001_0001) >> 48) as u32;
        self.digit_lanes = 0;
        self.lane_words = 0;
    }

    #[inline]
    pub fn finish(mut self) -> Features {
        self.sum_lanes();
        let mark = |mask: u64, mark: u8| if mask != 0 { mark } else { 0 };
        Features {
            digits: self.digits,
            marks: mark(self.at, MARK_AT)
                | mark(self.capital_a, MARK_CAPITAL_A)
                | mark(self.capital_j, MARK_CAPITAL_J)
                | mark(self.dash, MARK_DASH)
                | mark(self.percent, MARK_PERCENT),
        }
    }
}

impl Features {
    /// The features of `text`.
    pub fn of(text: &[u8]) -> Self {
        let mut scan = FeatureScan::default();
        let mut words = text.chunks_exact(8);
        for word in &mut words {
            let mut x = [0u8; 8];
            x.copy_from_slice(word);
            scan.add_word(u64::from_le_bytes(x), HIGHS);
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            let mut x = [0u8; 8];
            x[..rest.len()].copy_from_slice(rest);
            scan.add_word(u64::from_le_bytes(x), HIGHS >> (8 * (8 - rest.len())));
        }
        scan.finish()
    }

    /// ASCII digits in the text.
    pub fn digits(self) -> usize {
        self.digits as usize
    }

    fn has(self, mark: u8) -> bool {
        self.marks & mark != 0
    }

    /// Whether the text holds a `%`.
    pub fn has_percent(self) -> bool {
        self.has(MARK_PERCENT)
    }

    /// Whether any detector in `set` might find something in a text of `len` bytes with these
    /// features; a cheap inline check that spares most strings a call to [`find`].
    #[inline]
    pub fn worth_scanning(self, len: usize, set: DetectorSet) -> bool {
        let digits = self.digits();
        !set.is_empty()
            && len >= MIN_TEXT
            && (self.has(MARK_AT)
                || digits >= MIN_DIGITS
                || (self.has(MARK_CAPITAL_A) && len >= AWS_KEY_LEN)
                || (self.has(MARK_CAPITAL_J) && len >= MIN_JWT)
                || (self.has(MARK_DASH) && len >= MIN_PEM)
                || (len >= OKTA_TOKEN_LEN && digits >= 2)
                // A percent-encoded address (`%40`) has no `@`.
                || (self.has(MARK_PERCENT) && digits >= 2 && set.contains(Detector::Email)))
    }

    /// The features of two texts together (runs of one string between escapes).
    pub fn add(self, other: Self) -> Self {
        Self {
            digits: self.digits + other.digits,
            marks: self.marks | other.marks,
        }
    }
}

pub(crate) const fn index(d: Detector) -> usize {
    match d {
        Detector::Email => 0,
        Detector::Phone => 1,
        Detector::CreditCard => 2,
        Detector::Iban => 3,
        Detector::AwsAccessKey => 4,
        Detector::GcpApiKey => 5,
        Detector::OktaApiToken => 6,
        Detector::Jwt => 7,
        Detector::PrivateKey => 8,
    }
}

/// The marker name of a detector, as in `[REDACTED:EMAIL]`.
pub fn label(d: Detector) -> &'static str {
    match d {
        Detector::Email => "EMAIL",
        Detector::Phone => "PHONE",
        Detector::CreditCard => "CREDIT_CARD",
        Detector::Iban => "IBAN",
        Detector::AwsAccessKey => "AWS_ACCESS_KEY",
        Detector::GcpApiKey => "GCP_API_KEY",
        Detector::OktaApiToken => "OKTA_API_TOKEN",
        Detector::Jwt => "JWT",
        Detector::PrivateKey => "PRIVATE_KEY",
    }
}

/// A set of detectors, one bit each.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct DetectorSet(u16);

impl DetectorSet {
    pub const ALL: Self = Self((1 << ALL_DETECTORS.len()) - 1);

    pub fn insert(&mut self, d: Detector) {
        self.0 |= 1 << index(d);
    }

    pub fn contains(self, d: Detector) -> bool {
        self.0 & (1 << index(d)) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// A detected span, in bytes of the text scanned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Span {
    pub start: usize,
    pub end: usize,
    pub detector: Detector,
}

/// Finds what the detectors in `set` detect in `text` into `out` (cleared first), sorted and with
/// overlapping spans merged so every detected byte is covered exactly once. `features` is
/// [`Features::of`] `text`, which callers usually have already.
pub(crate) fn find(text: &[u8], features: Features, set: DetectorSet, out: &mut Vec<Span>) {
    out.clear();
    let len = text.len();
    if len < MIN_TEXT || set.is_empty() {
        return;
    }
    if set.contains(Detector::Email) {
        if features.has(MARK_AT) {
            emails(text, memchr_iter(b'@', text).map(|at| (at, 1)), out);
        }
        // In a URL or a query (`?email=alice%40example.com`, a link's search filter).
        if features.has(MARK_PERCENT) && features.digits() >= 2 {
            emails(text, PERCENT_AT.find_iter(text).map(|at| (at, 3)), out);
            if features.digits() >= 4 {
                emails(text, PERCENT_25_AT.find_iter(text).map(|at| (at, 5)), out);
            }
        }
    }
    let digits = features.digits();
    if digits >= MIN_DIGITS
        && (set.contains(Detector::Phone)
            || set.contains(Detector::CreditCard)
            || set.contains(Detector::Iban))
    {
        numbers(text, set, digits, out);
    }
    if features.has(MARK_CAPITAL_A)
        && ((set.contains(Detector::AwsAccessKey) && len >= AWS_KEY_LEN)
            || (set.contains(Detector::GcpApiKey) && len >= GCP_KEY_LEN))
    {
        cloud_keys(text, set, out);
    }
    if set.contains(Detector::AwsAccessKey) && len >= MIN_AWS_SECRET_TEXT && names_aws_secret_inside(text) {
        for found in AWS_SECRET.captures_iter(text) {
            if let Some(value) = found.get(1) {
                out.push(Span {
                    start: value.start(),
                    end: value.end(),
                    detector: Detector::AwsAccessKey,
                });
            }
        }
    }
    if set.contains(Detector::OktaApiToken) && len >= OKTA_TOKEN_LEN && digits >= 2 {
        okta_tokens(text, out);
    }
    if set.contains(Detector::Jwt) && features.has(MARK_CAPITAL_J) && len >= MIN_JWT {
        jwts(text, out);
    }
    if set.contains(Detector::PrivateKey) && features.has(MARK_DASH) && len >= MIN_PEM {
        private_keys(text, out);
    }
    if set.contains(Detector::PrivateKey) && features.has(MARK_CAPITAL_J) && len >= MIN_PEM {
        encoded_private_keys(text, out);
    }
    if out.len() > 1 {
        merge_overlaps(out);
    }
}

/// Sorts spans and merges overlapping ones; the merged span takes the detector of the longest part.
pub(crate) fn merge_overlaps(spans: &mut Vec<Span>) {
    spans.sort_unstable_by_key(|s| (s.start, s.end));
    let mut kept = 0;
    let mut longest = 0;
    for i in 0..spans.len() {
        let s = spans[i];
        if kept > 0 && s.start < spans[kept - 1].end {
            let last = &mut spans[kept - 1];
            if s.end - s.start > longest {
                longest = s.end - s.start;
                last.detector = s.detector;
            }
            last.end = last.end.max(s.end);
        } else {
            spans[kept] = s;
            longest = s.end - s.start;
            kept += 1;
        }
    }
    spans.truncate(kept);
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Base64url and the characters of API tokens.
fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// Whether a number may start at `i`: not inside a word, nor continuing one through `-` or `.`
/// (the tail of a UUID, the fraction of a decimal, the last part of a version or address).
fn starts_number(t: &[u8], i: usize) -> bool {
    match i.checked_sub(1).and_then(|p| t.get(p)) {
        None => true,
        Some(&b) if is_word(b) => false,
        Some(b'-' | b'.') => !i
            .checked_sub(2)
            .and_then(|p| t.get(p))
            .is_some_and(u8::is_ascii_alphanumeric),
        Some(_) => true,
    }
}

/// Whether a number may end at `j` (exclusive), by the same rule as [`starts_number`].
fn ends_number(t: &[u8], j: usize) -> bool {
    match t.get(j) {
        None => true,
        Some(&b) if is_word(b) => false,
        Some(b'-' | b'.') => !t.get(j + 1).is_some_and(u8::is_ascii_alphanumeric),
        Some(_) => true,
    }
}

// ---- Email ------------------------------------------------------------------------------------

/// A byte of an address's local part; non-ASCII bytes are taken in for internationalized
/// addresses, and [`idn_start`] keeps only letters and digits among them.
fn is_local(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-') || !b.is_ascii()
}

/// A byte of a domain, IDN labels included (see [`idn_end`]).
fn is_domain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-') || !b.is_ascii()
}

/// Where a local part ending at `at` starts when it reaches back to `start` over non-ASCII
/// bytes: after the last non-ASCII character that is not a letter or digit (an ellipsis or a
/// dash glued to the address); in text that is not UTF-8, after the last non-ASCII byte.
fn idn_start(t: &[u8], start: usize, at: usize) -> usize {
    let part = &t[start..at];
    if part.is_ascii() {
        return start;
    }
    match std::str::from_utf8(part) {
        Ok(text) => text
            .char_indices()
            .rev()
            .find(|&(_, c)| !c.is_ascii() && !c.is_alphanumeric() && !is_invisible(c))
            .map_or(start, |(k, c)| start + k + c.len_utf8()),
        Err(_) => at - part.iter().rev().take_while(|b| b.is_ascii()).count(),
    }
}

/// Characters that print as nothing (zero-width spaces and joiners, the word joiner, a byte
/// order mark, a soft hyphen): inside an address they hide it from a reader of bytes, not from a
/// person, so they are taken as part of it.
fn is_invisible(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200D}' | '\u{2060}' | '\u{FEFF}' | '\u{00AD}')
}

/// Where a domain starting at `from` ends when it runs on to `end` over non-ASCII bytes, by the
/// rule of [`idn_start`].
fn idn_end(t: &[u8], from: usize, end: usize) -> usize {
    let part = &t[from..end];
    if part.is_ascii() {
        return end;
    }
    match std::str::from_utf8(part) {
        Ok(text) => text
            .char_indices()
            .find(|&(_, c)| !c.is_ascii() && !c.is_alphanumeric() && !is_invisible(c))
            .map_or(end, |(k, _)| from + k),
        Err(_) => from + part.iter().take_while(|b| b.is_ascii()).count(),
    }
}

/// Addresses around each separator (`@`, or `%40` percent-encoded) at the positions given,
/// each with its length.
fn emails(t: &[u8], separators: impl Iterator<Item = (usize, usize)>, out: &mut Vec<Span>) {
    let mut resume = 0;
    // Where the previous separator ended: no local part reaches back past it.
    let mut floor = 0;
    for (at, sep) in separators {
        let previous = std::mem::replace(&mut floor, at + sep);
        if at < resume {
            continue;
        }
        // Expansion stops at the neighbouring separator on either side (a `%` is no domain
        // byte), so each byte is visited at most twice over the whole text.
        let mut start = at;
        while start > previous && is_local(t[start - 1]) {
            start -= 1;
        }
        start = idn_start(t, start, at);
        if sep > 1 {
            // Encoded text: the escape of a byte no local part holds (`%20` a space, `%22` a
            // quote, `%3D` an equals sign; `%2520` encoded twice) ends what comes before it.
            let mut k = start;
            while k + 3 <= at {
                for width in [3, 5] {
                    if k + width <= at && escaped_byte(&t[k..k + width]).is_some_and(|b| !is_local(b)) {
                        start = k + width;
                    }
                }
                k += 1;
            }
        }
        while start < at && t[start] == b'.' {
            start += 1;
        }
        let from = at + sep;
        let mut end = from;
        while end < t.len() && is_domain(t[end]) {
            end += 1;
        }
        end = idn_end(t, from, end);
        while end > from && matches!(t[end - 1], b'.' | b'-') {
            end -= 1;
        }
        if start < at && valid_domain(&t[from..end]) {
            out.push(Span {
                start,
                end,
                detector: Detector::Email,
            });
            resume = end;
        }
    }
}

/// The byte a percent-escape stands for: `%2B`, or `%252B` encoded twice.
pub(crate) fn escaped_byte(e: &[u8]) -> Option<u8> {
    let hex = |b: u8| (b as char).to_digit(16);
    match e {
        [b'%', hi, lo] | [b'%', b'2', b'5', hi, lo] => Some((hex(*hi)? * 16 + hex(*lo)?) as u8),
        _ => None,
    }
}

fn valid_domain(d: &[u8]) -> bool {
    let Some(dot) = d.iter().rposition(|&b| b == b'.') else {
        return false;
    };
    let tld = &d[dot + 1..];
    // Letters, an internationalized name, or its punycode form (`xn--p1ai`).
    let punycode = tld.len() > 4
        && tld[..4].eq_ignore_ascii_case(b"xn--")
        && tld[4..].iter().all(u8::is_ascii_alphanumeric);
    tld.len() >= 2
        && (tld.iter().all(|b| b.is_ascii_alphabetic() || !b.is_ascii()) || punycode)
        && d.split(|&b| b == b'.')
            .all(|label| !label.is_empty() && label[0] != b'-')
}

// ---- Phone numbers, cards, IBANs ---------------------------------------------------------------

/// Most digit groups a phone number is read in.
const MAX_PHONE_GROUPS: usize = 8;

/// Phone numbers, card numbers and IBANs, in one pass: each can only start where a word starts
/// (a phone number also at `+` or `(`), so the rest of every word is skipped.
fn numbers(t: &[u8], set: DetectorSet, digits: usize, out: &mut Vec<Span>) {
    let phones = set.contains(Detector::Phone);
    let cards = set.contains(Detector::CreditCard) && digits >= MIN_CARD_DIGITS;
    let ibans = set.contains(Detector::Iban);
    let mut i = 0;
    while i < t.len() {
        let b = t[i];
        let found = if b.is_ascii_alphanumeric() {
            if i > 0 && t[i - 1] == b'_' && b.is_ascii_digit() {
                // A card number glued to a name by `_` (`card_4111…`): cards only, whose length
                // and Luhn check keep identifiers like `build_20261124` out.
                (cards && matches!(b, b'2'..=b'6'))
                    .then(|| card_at(t, i))
                    .flatten()
                    .map(|end| (end, Detector::CreditCard))
            } else if !starts_number(t, i) {
                None
            } else if b.is_ascii_digit() {
                if let Some(end) = datetime_at(t, i) {
                    // Dates and times are never phone or card numbers, and are everywhere.
                    i = end;
                    continue;
                }
                // Payment cards start with 2–6 (Mastercard 2-series through Discover and
                // UnionPay); this keeps millisecond timestamps (13 digits from 1) from being cards.
                let card = (cards && matches!(b, b'2'..=b'6'))
                    .then(|| card_at(t, i).or_else(|| float_card_at(t, i)))
                    .flatten();
                card.map(|end| (end, Detector::CreditCard)).or_else(|| {
                    phones
                        .then(|| phone_at(t, i))
                        .flatten()
                        .map(|end| (end, Detector::Phone))
                })
            } else if ibans && b.is_ascii_alphabetic() {
                iban_at(t, i).map(|end| (end, Detector::Iban))
            } else {
                None
            }
        } else if phones && matches!(b, b'+' | b'(') && (i == 0 || !is_word(t[i - 1])) {
            phone_at(t, i).map(|end| (end, Detector::Phone))
        } else {
            None
        };
        match found {
            Some((end, detector)) => {
                out.push(Span {
                    start: i,
                    end,
                    detector,
                });
                i = end;
            }
            // Nothing starts inside a word.
            None if b.is_ascii_alphanumeric() => {
                i += 1;
                while i < t.len() && t[i].is_ascii_alphanumeric() {
                    i += 1;
                }
            }
            None => i += 1,
        }
    }
}

/// An ISO 8601 date (`2026-11-24`) at `i`, with the time and offset that may follow it
/// (`T10:30:00.000Z`, ` 10:30+02:00`); returns its end.
pub(crate) fn datetime_at(t: &[u8], i: usize) -> Option<usize> {
    // Each pattern byte is a digit (`9`) or a literal.
    let matches = |at: usize, pattern: &[u8]| {
        t.get(at..at + pattern.len()).is_some_and(|s| {
            s.iter()
                .zip(pattern)
                .all(|(&c, &p)| if p == b'9' { c.is_ascii_digit() } else { c == p })
        })
    };
    if !matches(i, b"9999-99-99") {
        return None;
    }
    let mut end = i + 10;
    if matches!(t.get(end), Some(b'T' | b' ')) && matches(end + 1, b"99:99") {
        end += 6;
        if matches(end, b":99") {
            end += 3;
            if t.get(end) == Some(&b'.') && t.get(end + 1).is_some_and(u8::is_ascii_digit) {
                end = skip_digits(t, end + 1);
            }
        }
        if t.get(end) == Some(&b'Z') {
            end += 1;
        } else if matches!(t.get(end), Some(b'+' | b'-')) && matches(end + 1, b"99:99") {
            end += 6;
        }
    }
    Some(end)
}

fn skip_digits(t: &[u8], mut i: usize) -> usize {
    while t.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    i
}

/// A phone number starting at `i`: E.164 (`+` then 8–15 digits, in groups with single spaces,
/// dashes or dots, one parenthesised group allowed), or a North American national number
/// `(415) 555-0132`, `415-555-0132`, `415.555.0132`, `415 555 0132`, `1-415-555-0132`.
/// Dates (4-2-2), times, UUIDs and plain digit runs have none of these shapes. When more groups
/// follow (another number after a space), the longest run of whole groups that fits is taken.
fn phone_at(t: &[u8], i: usize) -> Option<usize> {
    let plus = t[i] == b'+';
    let mut j = i + usize::from(plus);
    // Per group: digits, end, and the separator before it (0 for none).
    let mut groups = [(0usize, 0usize, 0u8); MAX_PHONE_GROUPS];
    let mut n = 0;
    let mut paren_group = None;
    let mut digits = 0;
    let mut sep = 0;
    while n < MAX_PHONE_GROUPS {
        let paren = t.get(j) == Some(&b'(') && paren_group.is_none();
        let start = j + usize::from(paren);
        let end = skip_digits(t, start);
        let len = end - start;
        // A national number starts with a group of 1 or 3 digits (3 in parentheses): a date's
        // or time's first group ends the attempt here.
        if n == 0 && !plus && (len == 2 || len > 3 || (paren && len != 3)) {
            return None;
        }
        if len == 0 || digits + len > 15 || (paren && t.get(end) != Some(&b')')) {
            break;
        }
        j = end + usize::from(paren);
        if paren {
            paren_group = Some(n);
        }
        digits += len;
        groups[n] = (len, j, sep);
        n += 1;
        sep = match t.get(j) {
            Some(&s @ (b' ' | b'-' | b'.')) => s,
            _ if paren => 0,
            _ => break,
        };
        let next = j + usize::from(sep != 0);
        if !matches!(t.get(next), Some(b'0'..=b'9' | b'(')) {
            break;
        }
        j = next;
    }
    (1..=n).rev().find_map(|k| {
        let groups = &groups[..k];
        let end = groups[k - 1].1;
        let shaped = if plus {
            let digits: usize = groups.iter().map(|g| g.0).sum();
            (8..=15).contains(&digits) && t.get(i + 1) != Some(&b'0')
        } else {
            national_shape(groups, paren_group.filter(|&p| p < k))
        };
        (shaped && ends_number(t, end)).then_some(end)
    })
}

/// `(415) 555-0132`, `415-555-0132` (one separator throughout), `1-415-555-0132`.
fn national_shape(groups: &[(usize, usize, u8)], paren_group: Option<usize>) -> bool {
    let seps = |k: usize| groups.get(k).map_or(0, |g| g.2);
    match (paren_group, groups.len()) {
        (Some(0), 3) => {
            groups[0].0 == 3
                && groups[1].0 == 3
                && groups[2].0 == 4
                && matches!(seps(1), 0 | b' ')
                && seps(2) != 0
        }
        (None, 3) => {
            groups[0].0 == 3 && groups[1].0 == 3 && groups[2].0 == 4 && seps(1) != 0 && seps(1) == seps(2)
        }
        (None, 4) => {
            groups[0].0 == 1
                && groups[1].0 == 3
                && groups[2].0 == 3
                && groups[3].0 == 4
                && matches!(seps(1), b'-' | b'.')
                && seps(2) == seps(1)
                && seps(3) == seps(1)
        }
        _ => false,
    }
}

// ---- Credit card ------------------------------------------------------------------------------

/// A card number starting at `i`: 13–19 digits, single spaces or dashes allowed between groups,
/// passing Luhn. When the groups run on (a CVV or a year after the number), shorter runs of whole
/// groups are tried, longest first.
fn card_at(t: &[u8], i: usize) -> Option<usize> {
    let mut ends = [(0usize, 0usize); 20];
    let mut n = 0;
    let mut j = i;
    let mut digits = 0;
    let mut whole_run = true;
    // The separator of the groups so far, once one is seen: the same one throughout.
    let mut separator: Option<&[u8]> = None;
    let mut group_start = i;
    loop {
        while j < t.len() && t[j].is_ascii_digit() {
            j += 1;
            digits += 1;
            if digits > 19 {
                whole_run = false;
                break;
            }
        }
        if !whole_run {
            break;
        }
        ends[n] = (j, digits);
        n += 1;
        let Some(sep) = card_separator(&t[j..]) else {
            break;
        };
        // Spaces and dashes separate groups of any length (Amex's 4-6-5); the others only
        // groups of four, as printed cards have them, so decimals and versions stay numbers.
        let loose = matches!(sep, b" " | b"-");
        let continues = separator.is_none_or(|s| s == sep)
            && (loose || j - group_start == 4)
            && t.get(j + sep.len()).is_some_and(u8::is_ascii_digit)
            && n < ends.len();
        if !continues {
            break;
        }
        separator = Some(sep);
        j += sep.len();
        group_start = j;
    }
    // A strict separator's last group is four digits or fewer.
    if separator.is_some_and(|s| !matches!(s, b" " | b"-")) && j - group_start > 4 {
        return None;
    }
    ends[..n].iter().rev().find_map(|&(end, d)| {
        let bounded = if whole_run && end == ends[n - 1].0 {
            card_ends(t, end)
        } else {
            // A shorter run ends at a separator followed by another group.
            true
        };
        (issued_length(t[i], d) && bounded && luhn(&t[i..end])).then_some(end)
    })
}

/// The separator between two groups of a card number at the start of `t`: a space, a dash, a
/// no-break or thin space (as formatters print them), or a dot, underscore or slash.
fn card_separator(t: &[u8]) -> Option<&'static [u8]> {
    const SEPARATORS: [&[u8]; 8] = [
        b" ",
        b"-",
        b".",
        b"_",
        b"/",
        "\u{a0}".as_bytes(),
        "\u{2009}".as_bytes(),
        "\u{202f}".as_bytes(),
    ];
    SEPARATORS.into_iter().find(|s| t.starts_with(s))
}

/// Whether card numbers of `digits` digits are issued starting with `first`: 13 for Visa's
/// old cards (4) and Maestro (5, 6), 14 and 15 for Diners Club and American Express (3) and
/// Maestro (5, 6), 16 to 19 for the schemes of 2–6 (Mir's 2 included). Keeps timestamps
/// (`20261124153002`) and other digit runs that pass Luhn by chance out.
fn issued_length(first: u8, digits: usize) -> bool {
    match digits {
        13 => matches!(first, b'4'..=b'6'),
        14 | 15 => matches!(first, b'3' | b'5' | b'6'),
        16..=19 => matches!(first, b'2'..=b'6'),
        _ => false,
    }
}

/// Whether a card number may end at `j`: where a number may ([`ends_number`]), before `_` (a
/// name glued on), or before a zero fraction (`4111111111111111.0`, a card held as a float).
fn card_ends(t: &[u8], j: usize) -> bool {
    match t.get(j) {
        Some(b'_') => true,
        Some(b'.') if t.get(j + 1) == Some(&b'0') => {
            let k = j + 1 + t[j + 1..].iter().take_while(|&&b| b == b'0').count();
            ends_number(t, k)
        }
        _ => ends_number(t, j),
    }
}

/// The digits of a whole number printed as a float in exponent form (`4.111111111111111e+15`,
/// as PostgreSQL's float8 and Java print a card number held as a double).
fn exponent_digits(w: &[u8]) -> Option<Vec<u8>> {
    let e = w.iter().position(|&b| b == b'e' || b == b'E')?;
    let (mantissa, exp) = (&w[..e], &w[e + 1..]);
    let exp = exp.strip_prefix(b"+").unwrap_or(exp);
    if exp.is_empty() || exp.len() > 2 || !exp.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = exp.iter().fold(0usize, |n, d| n * 10 + usize::from(d - b'0'));
    let (int, frac) = match memchr::memchr(b'.', mantissa) {
        Some(dot) => (&mantissa[..dot], &mantissa[dot + 1..]),
        None => (mantissa, &[][..]),
    };
    // A card held as a double prints nearly all its digits (`4.2e+15` is a measure, not one).
    if int.len() != 1
        || !int[0].is_ascii_digit()
        || !frac.iter().all(u8::is_ascii_digit)
        || frac.len() > n
        || frac.len() + 3 < n
    {
        return None;
    }
    let mut digits = Vec::with_capacity(1 + n);
    digits.extend_from_slice(int);
    digits.extend_from_slice(frac);
    digits.resize(1 + n, b'0');
    Some(digits)
}

/// A card number at `i` printed as a float in exponent form; returns its end.
fn float_card_at(t: &[u8], i: usize) -> Option<usize> {
    let mut len = t[i..]
        .iter()
        .take(MAX_FLOAT_CARD)
        .take_while(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+'))
        .count();
    // A full stop after the number ends the sentence, not the number.
    if len > 0 && t[i + len - 1] == b'.' {
        len -= 1;
    }
    let end = i + len;
    let digits = exponent_digits(&t[i..end])?;
    (ends_number(t, end) && issued_length(digits[0], digits.len()) && luhn(&digits)).then_some(end)
}

/// Longest float form of a card number read: 19 digits, a dot, `e+18`.
const MAX_FLOAT_CARD: usize = 24;

/// Whether a JSON number is a card number (same rules as in text): any JSON number whose value
/// is a whole number of a card's digits, whatever its form (`4111111111111111`, `-4111...`,
/// `4111111111111111.0`, `4.111111111111111e15`, `41111111111111110e-1`).
pub(crate) fn is_card_number(number: &[u8]) -> bool {
    // Most numbers are short and plain: too few digits for a card, whatever their exponent.
    let exponent = memchr::memchr2(b'e', b'E', number);
    let mantissa_digits = number[..exponent.unwrap_or(number.len())]
        .iter()
        .filter(|b| b.is_ascii_digit())
        .count();
    if exponent.is_none() && mantissa_digits < MIN_CARD_DIGITS || mantissa_digits < 2 {
        return false;
    }
    whole_number_digits(number).is_some_and(|d| issued_length(d[0], d.len()) && luhn(&d))
}

/// The decimal digits of a JSON number's value, sign dropped, when it is a whole number of at
/// most 19 digits; `None` otherwise (a fraction, or out of a card number's range). Zeros that
/// do not change the value (`e0015`, `4111….000…`, `0.41…e16`) do not count against the bounds:
/// JSON allows them, and a wide `numeric` column prints them.
fn whole_number_digits(number: &[u8]) -> Option<Vec<u8>> {
    let number = number.strip_prefix(b"-").unwrap_or(number);
    let (mantissa, exp) = match number.iter().position(|&b| b == b'e' || b == b'E') {
        Some(e) => (&number[..e], &number[e + 1..]),
        None => (number, &b"0"[..]),
    };
    let (negative, exp) = match exp.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some((b'+', rest)) => (false, rest),
        _ => (false, exp),
    };
    if exp.is_empty() || !exp.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let exp = &exp[exp.iter().position(|&d| d != b'0').unwrap_or(exp.len())..];
    // Beyond this the value is no card number anyway.
    if exp.len() > 3 {
        return None;
    }
    let exp = exp.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0'));
    let exp = if negative { -exp } else { exp };
    let (int, frac) = match memchr::memchr(b'.', mantissa) {
        Some(dot) => (&mantissa[..dot], &mantissa[dot + 1..]),
        None => (mantissa, &[][..]),
    };
    if int.is_empty() || !int.iter().chain(frac).all(u8::is_ascii_digit) {
        return None;
    }
    // The significant digits, and where the point falls after the first of them.
    let all: Vec<u8> = int.iter().chain(frac).copied().collect();
    let first = all.iter().position(|&d| d != b'0')?;
    let last = all.iter().rposition(|&d| d != b'0')?;
    let significant = &all[first..=last];
    if significant.len() > 19 {
        return None;
    }
    let point = i64::try_from(int.len()).ok()? + exp - i64::try_from(first).ok()?;
    let point = usize::try_from(point).ok()?;
    // A non-zero digit after the point is a fraction; more than 19 places is out of range.
    if point < significant.len() || point > 19 {
        return None;
    }
    let mut digits = significant.to_vec();
    digits.resize(point, b'0');
    Some(digits)
}

/// The Luhn checksum over the digits of `s` (separators skipped).
pub(crate) fn luhn(s: &[u8]) -> bool {
    let mut sum = 0u32;
    for (k, d) in s
        .iter()
        .rev()
        .filter(|b| b.is_ascii_digit())
        .map(|b| u32::from(b - b'0'))
        .enumerate()
    {
        sum += if k % 2 == 1 {
            let x = d * 2;
            if x > 9 { x - 9 } else { x }
        } else {
            d
        };
    }
    sum.is_multiple_of(10)
}

// ---- IBAN -------------------------------------------------------------------------------------

/// IBAN length per country, from the SWIFT IBAN registry: `CCnn` entries, sorted.
const IBAN_LENGTHS: &str = concat!(
    "AD24 AE23 AL28 AT20 AZ28 BA20 BE16 BG22 BH22 BI27 BR29 BY28 CH21 CR22 CY28 CZ24 ",
    "DE22 DJ27 DK18 DO28 EE20 EG29 ES24 FI18 FK18 FO18 FR27 GB22 GE22 GI23 GL18 GR27 ",
    "GT28 HN28 HR21 HU28 IE22 IL23 IQ23 IS26 IT27 JO30 KW30 KZ20 LB28 LC32 LI21 LT20 ",
    "LU20 LV21 LY25 MC27 MD24 ME22 MK19 MN20 MR27 MT31 MU30 NI28 NL18 NO15 OM23 PK24 ",
    "PL28 PS29 PT25 QA29 RO24 RS22 RU33 SA24 SC31 SD18 SE24 SI19 SK24 SM27 SO23 ST25 ",
    "SV28 TL23 TN24 TR26 UA29 VA22 VG24 XK20 YE30 ",
);

fn iban_length(country: [u8; 2]) -> Option<usize> {
    let entry = IBAN_LENGTHS.as_bytes().chunks(5).find(|e| e[..2] == country)?;
    Some(usize::from(entry[2] - b'0') * 10 + usize::from(entry[3] - b'0'))
}

/// An IBAN starting at `i`: its country's length in letters of one case and digits, compact or
/// in groups of four separated by single spaces, with check digits that make it 1 modulo 97.
fn iban_at(t: &[u8], i: usize) -> Option<usize> {
    let head = t.get(i..i + 4)?;
    let lower = head[0].is_ascii_lowercase();
    let letter = |b: &u8| {
        if lower {
            b.is_ascii_lowercase()
        } else {
            b.is_ascii_uppercase()
        }
    };
    if !(letter(&head[0]) && letter(&head[1]) && head[2].is_ascii_digit() && head[3].is_ascii_digit()) {
        return None;
    }
    let country = [head[0].to_ascii_uppercase(), head[1].to_ascii_uppercase()];
    let len = iban_length(country)?;
    let mut chars = [0u8; 34];
    let mut count = 0;
    let mut j = i;
    while count < len {
        match t.get(j) {
            Some(&b) if letter(&b) || b.is_ascii_digit() => {
                chars[count] = b.to_ascii_uppercase();
                count += 1;
                j += 1;
            }
            Some(b' ') if count.is_multiple_of(4) && t.get(j + 1).is_some_and(u8::is_ascii_alphanumeric) => {
                j += 1
            }
            _ => return None,
        }
    }
    if t.get(j).is_some_and(u8::is_ascii_alphanumeric) {
        return None;
    }
    let chars = &chars[..len];
    let mut rem = 0u32;
    for &b in chars[4..].iter().chain(&chars[..4]) {
        rem = if b.is_ascii_digit() {
            (rem * 10 + u32::from(b - b'0')) % 97
        } else {
            (rem * 100 + u32::from(b - b'A') + 10) % 97
        };
    }
    (rem == 1).then_some(j)
}

// ---- Cloud and identity-provider keys ---------------------------------------------------------

const AWS_PREFIXES: [&[u8; 4]; 8] = [
    b"AKIA", b"ASIA", b"AGPA", b"AIDA", b"AROA", b"ANPA", b"ANVA", b"AIPA",
];
const AWS_KEY_LEN: usize = 20;
const GCP_KEY_LEN: usize = 39;
const OKTA_TOKEN_LEN: usize = 42;

/// AWS access key ids and Google API keys, which both start with `A`.
fn cloud_keys(t: &[u8], set: DetectorSet, out: &mut Vec<Span>) {
    let mut resume = 0;
    for i in memchr_iter(b'A', t) {
        if i < resume || (i > 0 && t[i - 1].is_ascii_alphanumeric()) {
            continue;
        }
        let rest = &t[i..];
        let found = if set.contains(Detector::AwsAccessKey)
            && rest.len() >= AWS_KEY_LEN
            && AWS_PREFIXES.iter().any(|p| rest.starts_with(*p))
            && rest[4..AWS_KEY_LEN]
                .iter()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
            && !rest.get(AWS_KEY_LEN).is_some_and(u8::is_ascii_alphanumeric)
        {
            Some((AWS_KEY_LEN, Detector::AwsAccessKey))
        } else if set.contains(Detector::GcpApiKey)
            && rest.len() >= GCP_KEY_LEN
            && rest.starts_with(b"AIza")
            && rest[4..GCP_KEY_LEN].iter().all(|&b| is_token(b))
            && (i == 0 || !is_token(t[i - 1]))
        {
            Some((GCP_KEY_LEN, Detector::GcpApiKey))
        } else {
            None
        };
        if let Some((len, detector)) = found {
            out.push(Span {
                start: i,
                end: i + len,
                detector,
            });
            resume = i + len;
        }
    }
}

/// Okta API tokens: `00` and 40 more token characters, standing alone.
fn okta_tokens(t: &[u8], out: &mut Vec<Span>) {
    if t.len() < OKTA_TOKEN_LEN {
        return;
    }
    let mut resume = 0;
    for i in OKTA_START.find_iter(t) {
        if i < resume || (i > 0 && is_token(t[i - 1])) {
            continue;
        }
        let end = i + OKTA_TOKEN_LEN;
        if end <= t.len()
            && t[i..end].iter().all(|&b| is_token(b))
            && !t.get(end).is_some_and(|&b| is_token(b))
        {
            out.push(Span {
                start: i,
                end,
                detector: Detector::OktaApiToken,
            });
            resume = end;
        }
    }
}

/// Shortest JWT header (`{"alg":"x"}` is 15 characters encoded) and payload accepted.
const MIN_JWT_HEADER: usize = 10;
const MIN_JWT_PAYLOAD: usize = 4;
const MIN_JWT: usize = MIN_JWT_HEADER + 1 + MIN_JWT_PAYLOAD + 1;

/// JWTs (JWS with three parts, JWE with five): `eyJ` then base64url parts joined by dots. The
/// signature may be empty (an unsecured token still carries its claims).
fn jwts(t: &[u8], out: &mut Vec<Span>) {
    let mut resume = 0;
    for i in JWT_START.find_iter(t) {
        if i < resume || (i > 0 && is_token(t[i - 1])) {
            continue;
        }
        // A part may carry base64 padding, which JWS omits but some encoders keep.
        let run = |from: usize| {
            let end = from + t[from..].iter().take_while(|&&b| is_token(b)).count();
            end + t[end..].iter().take(2).take_while(|&&b| b == b'=').count()
        };
        let header_end = run(i);
        resume = header_end;
        if header_end - i < MIN_JWT_HEADER || t.get(header_end) != Some(&b'.') {
            continue;
        }
        let payload_end = run(header_end + 1);
        resume = payload_end;
        if payload_end - header_end - 1 < MIN_JWT_PAYLOAD || t.get(payload_end) != Some(&b'.') {
            continue;
        }
        let mut end = run(payload_end + 1);
        // JWE: two more non-empty parts.
        for _ in 0..2 {
            if t.get(end) == Some(&b'.') && t.get(end + 1).is_some_and(|&b| is_token(b)) {
                end = run(end + 1);
            }
        }
        out.push(Span {
            start: i,
            end,
            detector: Detector::Jwt,
        });
        resume = end;
    }
}

/// Shortest run of base64 a key's body line holds, but its last: encoders wrap at 64 (PEM),
/// 70 (OpenSSH) or 76 (MIME) characters. A shorter word amid a "body" is text, not key.
const MIN_PEM_CHUNK: usize = 16;

/// The encapsulated headers an encrypted PEM key may carry before its base64.
const PEM_HEADERS: [&[u8]; 2] = [b"Proc-Type:", b"DEK-Info:"];

/// The armor headers an OpenPGP key block may carry before its base64 (RFC 4880, 6.2), whose
/// values are free text (`Version: GnuPG v1`, `Comment: https://...`) to the end of the line.
const ARMOR_HEADERS: [&[u8]; 5] = [b"Version:", b"Comment:", b"Hash:", b"Charset:", b"MessageID:"];

/// Longest armor header value taken in as the key's, and most armor header lines.
const MAX_ARMOR_HEADER: usize = 512;
const MAX_ARMOR_HEADER_LINES: usize = 8;

/// What an escape at `i` (a run of backslashes, for text escaped once or more) stands for,
/// and where it ends: `\n`, `\r`, `\t` and a backslash before a real line break (a
/// continued line) as `\n`; `\/` as `/`; `\uXXXX` as its character (.NET writes `+` as
/// `\u002B`, Gson `=` as `\u003d`).
fn pem_escape(t: &[u8], i: usize) -> Option<(u8, usize)> {
    let slashes = t[i..].iter().take_while(|&&b| b == b'\\').count();
    if slashes == 0 {
        return None;
    }
    let at = i + slashes;
    match *t.get(at)? {
        b'n' | b'r' | b't' | b'\n' => Some((b'\n', at + 1)),
        b'\r' if t.get(at + 1) == Some(&b'\n') => Some((b'\n', at + 2)),
        b'\r' => Some((b'\n', at + 1)),
        b'/' => Some((b'/', at + 1)),
        b'u' => {
            let hex = t.get(at + 1..at + 5)?;
            let code = u8::from_str_radix(std::str::from_utf8(hex).ok()?.strip_prefix("00")?, 16).ok()?;
            Some((
                if matches!(code, b'\r' | b'\t') {
                    b'\n'
                } else {
                    code
                },
                at + 5,
            ))
        }
        _ => None,
    }
}

/// The end of the separators at `i`: blanks, line breaks, escaped line breaks (see
/// [`pem_escape`]), and after a line break `prefix`, what the BEGIN line had before it (an
/// event stream's `data: `, a comment's `# `), which each line of such a key repeats.
fn pem_separators_end(t: &[u8], mut i: usize, prefix: &[u8]) -> usize {
    loop {
        let after_break = match t.get(i) {
            Some(b' ' | b'\t' | b'\r') => {
                i += 1;
                false
            }
            Some(b'\n') => {
                i += 1;
                true
            }
            Some(b'\\') => match pem_escape(t, i) {
                Some((b' ' | b'\n', next)) => {
                    i = next;
                    true
                }
                _ => return i,
            },
            _ => return i,
        };
        if after_break && !prefix.is_empty() && t[i..].starts_with(prefix) {
            i += prefix.len();
        }
    }
}

/// The end of the run of base64 at `i` (escaped characters too; `=` pads its end only), and
/// whether it is padded.
fn pem_chunk_end(t: &[u8], mut i: usize) -> (usize, bool) {
    let mut padded = false;
    while let Some(&b) = t.get(i) {
        let (c, next) = if b == b'\\' {
            match pem_escape(t, i) {
                Some(e) => e,
                None => break,
            }
        } else {
            (b, i + 1)
        };
        match c {
            b'=' => padded = true,
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'+' | b'/' if !padded => {}
            _ => break,
        }
        i = next;
    }
    (i, padded)
}

/// Where the body of the PEM block whose BEGIN line starts at `begin` and ends at `from` ends:
/// what follows is its END line, if it has one. A body is what an encoder writes: base64 in
/// runs of at least [`MIN_PEM_CHUNK`] characters but the last, separated by (escaped) line
/// breaks, each maybe after the prefix its BEGIN line had, and blanks of indentation or of a
/// key flattened onto one line, after an encrypted key's headers. So no private key's match,
/// nor the streamed masker's hold for one, takes in text that is not key (`*/ OR true`,
/// `&role=admin`, `OR true` on the next line), END line or not. A body that reaches the end of
/// `t` ends there: more of it may follow.
pub(crate) fn pem_body_end(t: &[u8], begin: usize, from: usize) -> usize {
    let line_start = memchr::memrchr(b'\n', &t[..begin]).map_or(0, |k| k + 1);
    let prefix = &t[line_start..begin];
    // A blank prefix is indentation, taken as blanks are.
    let prefix = if prefix.iter().all(|b| matches!(b, b' ' | b'\t')) {
        &[][..]
    } else {
        prefix
    };
    let separators_end = |i: usize| pem_separators_end(t, i, prefix);
    let mut i = from;
    let mut in_headers = true;
    let mut armor_lines = 0;
    loop {
        let j = separators_end(i);
        if j == t.len() {
            return j;
        }
        if in_headers && PEM_HEADERS.iter().any(|h| t[j..].starts_with(h)) {
            let value = t[j..]
                .iter()
                .take_while(|&&b| b.is_ascii_alphanumeric() || matches!(b, b':' | b',' | b'-' | b' '))
                .count();
            i = j + value;
            continue;
        }
        if in_headers && ARMOR_HEADERS.iter().any(|h| t[j..].starts_with(h)) {
            // A line of its own, written or escaped (a key in a JSON string), of text no query
            // or form could go on in (`Comment: x&role=admin` ends the key before it): what a
            // match takes in stays what a key's armor holds.
            let broke = t[i..j].contains(&b'\n')
                || t[i..j]
                    .windows(2)
                    .any(|w| w[0] == b'\\' && matches!(w[1], b'n' | b'r'));
            let value = t[j..]
                .iter()
                .take(MAX_ARMOR_HEADER)
                .take_while(|&&b| {
                    (b' '..=b'~').contains(&b)
                        && !matches!(b, b'&' | b'=' | b';' | b'"' | b'\'' | b'<' | b'>' | b'\\')
                })
                .count();
            let end = j + value;
            let line_ends = match t.get(end) {
                None | Some(b'\n' | b'\r') => true,
                Some(b'\\') => pem_escape(t, end).is_some_and(|(c, _)| c == b'\n'),
                Some(_) => false,
            };
            if !broke || !line_ends || armor_lines == MAX_ARMOR_HEADER_LINES {
                return j;
            }
            armor_lines += 1;
            i = end;
            continue;
        }
        in_headers = false;
        let (c, padded) = pem_chunk_end(t, j);
        if c == j {
            return j;
        }
        // Glued to what follows (the END line, `&`, `*/`, the end of `t`): the last run.
        let next = separators_end(c);
        if next == c {
            return c;
        }
        let last = next == t.len() || t[next..].starts_with(b"-----END ");
        if c - j < MIN_PEM_CHUNK && !last {
            // A padded run ends a body: the key's last line, with text after it.
            return if padded { c } else { j };
        }
        i = c;
    }
}

/// PEM private keys, from the BEGIN line through the matching END line; without one (a
/// truncated key is still a secret), through as much as reads as a key's body. Nor does a match
/// run past what a key's body may hold to reach an END line (see [`pem_body_end`]): text that is
/// not key is never hidden with one, from an approver above all.
fn private_keys(t: &[u8], out: &mut Vec<Span>) {
    let mut from = 0;
    while let Some(k) = PEM_START.find(&t[from..]) {
        let start = from + k;
        let label_start = start + PEM_BEGIN.len();
        let window = &t[label_start..t.len().min(label_start + MAX_PEM_LABEL)];
        let Some(label_len) = memmem::find(window, b"-----") else {
            from = label_start;
            continue;
        };
        let label = &window[..label_len];
        let header_end = label_start + label_len + 5;
        if memmem::find(label, b"PRIVATE KEY").is_none() {
            from = header_end;
            continue;
        }
        let mut end_line = Vec::with_capacity(label.len() + 14);
        end_line.extend_from_slice(b"-----END ");
        end_line.extend_from_slice(label);
        end_line.extend_from_slice(b"-----");
        let body_end = pem_body_end(t, start, header_end);
        let end = if t[body_end..].starts_with(&end_line) {
            body_end + end_line.len()
        } else {
            body_end
        };
        out.push(Span {
            start,
            end,
            detector: Detector::PrivateKey,
        });
        from = end;
    }
}

/// `-----BEGIN` as base64 encodes it at the start of a file: a whole PEM file carried base64
/// encoded (a repository's contents API, a Helm value, a ConfigMap's binaryData).
static ENCODED_PEM_START: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"LS0tLS1CRUdJTi"));

/// Base64 characters decoded after [`ENCODED_PEM_START`] to read the BEGIN line's label.
const ENCODED_LABEL_CHARS: usize = 64;

/// PEM private keys carried base64 encoded, whole: from `LS0tLS1CRUdJTi` through the base64
/// that follows (over line breaks, raw or escaped), when the decoded BEGIN line names a private
/// key (certificates, also carried so, stay).
fn encoded_private_keys(t: &[u8], out: &mut Vec<Span>) {
    use base64::Engine;
    let is_b64 = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=');
    let mut from = 0;
    while let Some(k) = ENCODED_PEM_START.find(&t[from..]) {
        let start = from + k;
        // Not the middle of a longer base64 run: that would decode at another alignment.
        if start > 0 && is_b64(t[start - 1]) {
            from = start + 1;
            continue;
        }
        let head: Vec<u8> = t[start..]
            .iter()
            .copied()
            .take_while(|&b| is_b64(b) && b != b'=')
            .take(ENCODED_LABEL_CHARS)
            .collect();
        let usable = head.len() / 4 * 4;
        let names_a_key = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(&head[..usable])
            .is_ok_and(|d| memmem::find(&d, b"PRIVATE KEY").is_some());
        let mut end = start;
        loop {
            while end < t.len() && is_b64(t[end]) {
                end += 1;
            }
            // A wrapped line: `\n`, `\r\n`, or the escaped `\\n` of a JSON string.
            let wrap = [&b"\r\n"[..], b"\n", b"\\r\\n", b"\\n"]
                .into_iter()
                .find(|w| t[end..].starts_with(w))
                .map_or(0, <[u8]>::len);
            if wrap == 0 || !t.get(end + wrap).is_some_and(|&b| is_b64(b)) {
                break;
            }
            end += wrap;
        }
        if names_a_key {
            out.push(Span {
                start,
                end,
                detector: Detector::PrivateKey,
            });
        }
        from = end.max(start + 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detect(text: &str) -> Vec<(Detector, &str)> {
        let mut out = Vec::new();
        let features = Features::of(text.as_bytes());
        find(text.as_bytes(), features, DetectorSet::ALL, &mut out);
        // The inline prefilter never rules out text a detector matches.
        assert!(
            out.is_empty() || features.worth_scanning(text.len(), DetectorSet::ALL),
            "{text}"
        );
        out.iter().map(|s| (s.detector, &text[s.start..s.end])).collect()
    }

    fn only(text: &str, d: Detector) -> Vec<&str> {
        detect(text)
            .into_iter()
            .filter(|(x, _)| *x == d)
            .map(|(_, s)| s)
            .collect()
    }

    #[test]
    fn emails() {
        assert_eq!(
            only("mail john.doe+x@example.co.uk.", Detector::Email),
            ["john.doe+x@example.co.uk"]
        );
        assert_eq!(only("a@b.io and c@d.org", Detector::Email), ["a@b.io", "c@d.org"]);
        for no in [
            "user@localhost",
            "@example.com",
            "a@b.c",
            "a@.com",
            "a@b..com",
            "x@1.23",
        ] {
            assert!(only(no, Detector::Email).is_empty(), "{no}");
        }
        // Characters that print as nothing are part of the address they hide in.
        for yes in [
            "ada\u{200b}@example.com",
            "ada@ex\u{200d}ample.com",
            "a\u{ad}da@example.com",
        ] {
            assert_eq!(
                only(&format!("to {yes}, thanks"), Detector::Email),
                [yes],
                "{yes:?}"
            );
        }
        // Internationalized addresses are whole, and punctuation glued to them stays out.
        for yes in [
            "jürgen@exämple.de",
            "почта@пример.рф",
            "user@example.xn--p1ai",
            "李@例子.中国",
        ] {
            assert_eq!(only(&format!("to {yes}, thanks"), Detector::Email), [yes]);
        }
        assert_eq!(
            only("…bob@example.com—thanks", Detector::Email),
            ["bob@example.com"]
        );
        // Percent-encoded, in a query or a link: the address, not the escapes around it.
        assert_eq!(
            only("/users?email=alice%40example.com&x=1", Detector::Email),
            ["alice%40example.com"]
        );
        assert_eq!(
            only(
                "filter=profile.email%20eq%20%22bob.k%2Bx%40example.org%22",
                Detector::Email
            ),
            ["bob.k%2Bx%40example.org"]
        );
        assert_eq!(only("a%40b.io", Detector::Email), ["a%40b.io"]);
        // Encoded twice, in a link inside a query.
        assert_eq!(
            only(
                "next=%2Fu%3Femail%3Dalice%2540example.com%26a%3D1",
                Detector::Email
            ),
            ["alice%2540example.com"]
        );
        // A dot after an escape that ends the text before the address is not the address's.
        assert_eq!(only("%22.bob%40x.com", Detector::Email), ["bob%40x.com"]);
        for no in [
            "100%40 of them",
            "ratio%40",
            "%40example.com",
            "q=%20%40example.com",
        ] {
            assert!(only(no, Detector::Email).is_empty(), "{no}");
        }
        // Text that is not UTF-8 keeps to the ASCII around the `@`.
        let mut out = Vec::new();
        let text = b"x\xffbob@example.com\xfe.de";
        find(text, Features::of(text), DetectorSet::ALL, &mut out);
        assert_eq!(
            out.iter().map(|s| &text[s.start..s.end]).collect::<Vec<_>>(),
            [b"bob@example.com".as_slice()]
        );
    }

    /// Separators that find no address do not make later ones look back over them: a string of
    /// them costs a bounded look each, not a walk back to its start.
    #[test]
    fn runs_of_encoded_separators_stay_linear() {
        for unit in ["x%40", "a%40x.com%2C", "%2540a", "@a"] {
            let text = unit.repeat(250_000);
            let started = std::time::Instant::now();
            let mut out = Vec::new();
            find(
                text.as_bytes(),
                Features::of(text.as_bytes()),
                DetectorSet::ALL,
                &mut out,
            );
            assert!(started.elapsed().as_secs() < 2, "{unit}: {:?}", started.elapsed());
        }
    }

    #[test]
    fn phones() {
        for yes in [
            "+14155550132",
            "+1 415 555 0132",
            "+1 (415) 555-0132",
            "+44 20 7946 0958",
            "(415) 555-0132",
            "415-555-0132",
            "415.555.0132",
            "1-415-555-0132",
        ] {
            assert_eq!(only(&format!("call {yes}, thanks"), Detector::Phone), [yes]);
            // A number after a national one is not part of it (an E.164 one may take it in).
            if !yes.starts_with('+') {
                assert_eq!(only(&format!("{yes} 42"), Detector::Phone), [yes]);
            }
        }
        // Another number after an E.164 one that would make it too long.
        assert_eq!(
            only("+44 20 7946 0958 1234 5678", Detector::Phone),
            ["+44 20 7946 0958"]
        );
        for no in [
            "2026-11-24",
            "2026-11-24T10:30:00.000Z",
            "123e4567-e89b-12d3-a456-426614174000",
            "4155550132",
            "12345678",
            "+1234567",
            "10.120.200.1",
            "415-555-0132-99",
            "v415-555-0132",
            "415-555.0132",
        ] {
            assert!(only(no, Detector::Phone).is_empty(), "{no}");
        }
    }

    #[test]
    fn credit_cards() {
        for yes in [
            "4111111111111111",
            "4111 1111 1111 1111",
            "5555-5555-5555-4444",
            "378282246310005",
        ] {
            assert_eq!(only(&format!("card: {yes}."), Detector::CreditCard), [yes]);
        }
        // Glued to a name by `_`, or held as a float with a zero fraction.
        for (text, card) in [
            ("card_4111111111111111", "4111111111111111"),
            ("4111111111111111_exp", "4111111111111111"),
            ("pan=4111111111111111.0;", "4111111111111111"),
            ("4111111111111111.00.", "4111111111111111"),
            ("visa 4222222222222 old", "4222222222222"),
            ("diners 36227206271667", "36227206271667"),
            // A double printed by PostgreSQL's float8 or Java.
            ("amount 4.111111111111111e+15 due", "4.111111111111111e+15"),
            ("4.111111111111111E15", "4.111111111111111E15"),
            ("card 4.111111111111111e+15.", "4.111111111111111e+15"),
        ] {
            assert_eq!(only(text, Detector::CreditCard), [card], "{text}");
        }
        // A CVV after the number is not part of it.
        assert_eq!(
            only("4111 1111 1111 1111 123", Detector::CreditCard),
            ["4111 1111 1111 1111"]
        );
        // Groups of four by other separators, one separator throughout.
        for card in [
            "4111.1111.1111.1111",
            "4111_1111_1111_1111",
            "4111/1111/1111/1111",
            "4111\u{a0}1111\u{a0}1111\u{a0}1111",
            "4111\u{2009}1111\u{2009}1111\u{2009}1111",
        ] {
            assert_eq!(
                only(&format!("pan {card} ok"), Detector::CreditCard),
                [card],
                "{card}"
            );
        }
        // Not groups of four, or separators mixed: a decimal, a version, a path.
        for no in [
            "4111111111111.111",
            "4111.1111_1111.1111",
            "41111.1111.1111.111",
            "4111/1111/1111/11111",
        ] {
            assert!(only(no, Detector::CreditCard).is_empty(), "{no}");
        }
        for no in [
            "4111111111111112",
            "4111 1111 1111 1112",
            "41111111111111110000",
            "1700000000007",
            "123e4567-e89b-12d3-a456-426614174000",
            "4111111111111111.5",
            "4111111111111111.05",
            "4111111111111111.0.1",
            "a4111111111111111",
            "build_20261124",
            // A compact timestamp that passes Luhn: no card is issued in 14 digits from 2.
            "build_20261124153002",
            // Passes Luhn, but no 13-digit card starts with 3.
            "3000000000007",
            // A measure printed as a float, which pads with zeros into a Luhn-valid number.
            "4.2e+15",
            "4.111111111111112e+15",
            "4.1111111111111111e+15",
            "4.111111111111111e+15.5",
        ] {
            assert!(only(no, Detector::CreditCard).is_empty(), "{no}");
        }
    }

    #[test]
    fn ibans() {
        for yes in [
            "GB82WEST12345698765432",
            "GB82 WEST 1234 5698 7654 32",
            "DE89370400440532013000",
            "NO9386011117947",
            "de89370400440532013000",
            "gb82 west 1234 5698 7654 32",
        ] {
            assert_eq!(only(&format!("pay to {yes} today"), Detector::Iban), [yes]);
        }
        for no in [
            "gb82WEST12345698765432",
            "Gb82west12345698765432",
            "gb83west12345698765432",
            "GB83WEST12345698765432",
            "GB82WEST1234569876543",
            "XX82WEST12345698765432",
            "GB82WEST123456987654321",
        ] {
            assert!(only(no, Detector::Iban).is_empty(), "{no}");
        }
        let entries: Vec<&[u8]> = IBAN_LENGTHS.as_bytes().chunks(5).collect();
        assert!(entries.windows(2).all(|w| w[0][..2] < w[1][..2]) && entries.len() == 89);
        assert_eq!(
            (iban_length(*b"NO"), iban_length(*b"RU"), iban_length(*b"ZZ")),
            (Some(15), Some(33), None)
        );
    }

    #[test]
    fn cloud_and_idp_keys() {
        assert_eq!(
            only("key=AKIAIOSFODNN7EXAMPLE;", Detector::AwsAccessKey),
            ["AKIAIOSFODNN7EXAMPLE"]
        );
        assert_eq!(
            only("ASIAY34FZKBOKMUTVV7A", Detector::AwsAccessKey),
            ["ASIAY34FZKBOKMUTVV7A"]
        );
        assert!(only("AKIAIOSFODNN7EXAMPLE1", Detector::AwsAccessKey).is_empty());
        assert!(only("XAKIAIOSFODNN7EXAMPLE", Detector::AwsAccessKey).is_empty());
        assert!(only("AKIAiosfodnn7example", Detector::AwsAccessKey).is_empty());

        let gcp = "AIzaSyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQe";
        assert_eq!(gcp.len(), GCP_KEY_LEN);
        assert_eq!(only(&format!("?key={gcp}&x"), Detector::GcpApiKey), [gcp]);
        assert!(only(&gcp[..38], Detector::GcpApiKey).is_empty());

        let okta = "00QCjAl4MlV-WPXM-ABCDEFGHIJKLMNOPQRSTUVWXY";
        assert_eq!(okta.len(), OKTA_TOKEN_LEN);
        assert_eq!(only(&format!("SSWS {okta}"), Detector::OktaApiToken), [okta]);
        assert!(only(&format!("{okta}Z"), Detector::OktaApiToken).is_empty());
        assert!(only(&format!("x{okta}"), Detector::OktaApiToken).is_empty());
        assert!(only("00u1abcdEFGHijklMNOP", Detector::OktaApiToken).is_empty());
    }

    #[test]
    fn jwts() {
        let jwt = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
        assert_eq!(only(&format!("Bearer {jwt}"), Detector::Jwt), [jwt]);
        let unsigned = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.";
        assert_eq!(only(unsigned, Detector::Jwt), [unsigned]);
        assert!(only("eyJhbGciOiJIUzI1NiJ9 only a header", Detector::Jwt).is_empty());
        assert!(only("xeyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.sig", Detector::Jwt).is_empty());
        // Base64 padding on a part does not end the token there.
        let padded = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0=.c2lnbmF0dXJl==";
        assert_eq!(only(&format!("token={padded}&x=1"), Detector::Jwt), [padded]);
    }

    /// An AWS secret access key or session token is found by the name before it, in the
    /// shapes credentials files, environments and JSON written as text give it.
    #[test]
    fn aws_secrets_are_found_by_their_names() {
        let secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
        for text in [
            format!(
                "[default]\naws_access_key_id = AKIAIOSFODNN7EXAMPLE\naws_secret_access_key = {secret}\n"
            ),
            format!("export AWS_SECRET_ACCESS_KEY={secret}"),
            format!("{{\"AccessKeyId\":\"x\",\"SecretAccessKey\" : \"{secret}\"}}"),
            format!("secretAccessKey: '{secret}'"),
            // STS's query API answers in XML.
            format!("<Credentials><SecretAccessKey>{secret}</SecretAccessKey>"),
        ] {
            let found = only(&text, Detector::AwsAccessKey);
            assert!(found.contains(&secret), "{text}: {found:?}");
        }
        let token = "IQoJb3JpZ2luX2VjEJr//////////wEaCXVzLWVhc3QtMSJHMEUCIQ";
        assert_eq!(
            only(&format!("AWS_SESSION_TOKEN={token}\n"), Detector::AwsAccessKey),
            [token]
        );
        // Named, but no value of a key's characters; or a value without its name.
        assert!(
            only(
                "the secret_access_key is: rotated yesterday",
                Detector::AwsAccessKey
            )
            .is_empty()
        );
        assert!(only(&format!("password = {secret}"), Detector::AwsAccessKey).is_empty());
        for name in [
            "SecretAccessKey",
            "aws_secret_access_key",
            "sessionToken",
            "AWS-SESSION-TOKEN",
        ] {
            assert!(names_aws_secret(name.as_bytes()), "{name}");
        }
        for name in ["Token", "secret", "AccessKeyId", "secretAccessKeyId"] {
            assert!(!names_aws_secret(name.as_bytes()), "{name}");
        }
        assert!(names_aws_secret_inside(b"x aws_secret_access_key = y"));
        assert!(names_aws_secret_inside(b"AWS_SESSION_TOKEN=y"));
        assert!(names_aws_secret_inside(b"<SecretAccessKey>y"));
        // The shortest text the regex finds a secret in is found.
        let shortest = "sessiontoken=AAAAAAAAAAAAAAAA";
        assert_eq!(shortest.len(), MIN_AWS_SECRET_TEXT);
        assert_eq!(only(shortest, Detector::AwsAccessKey), ["AAAAAAAAAAAAAAAA"]);
        assert!(names_aws_secret_inside(b"{\"SecretAccessKey\" \t: \"y\"}"));
        assert!(!names_aws_secret_inside(
            b"nothing to see here, a perfectly plain line"
        ));
        assert!(!names_aws_secret_inside(
            b"session secrets: https://example.com/a=b"
        ));
        assert_eq!(aws_name(b"token"), Some(AwsName::Token));
        assert_eq!(aws_name(b"aws_access_key_id"), Some(AwsName::KeyId));
        assert_eq!(aws_name(b"SessionToken"), Some(AwsName::Secret));
        assert_eq!(aws_name(b"nextToken"), None);
    }

    #[test]
    fn private_keys() {
        let pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----";
        assert_eq!(
            only(&format!("key:\n{pem}\ntrailer"), Detector::PrivateKey),
            [pem]
        );
        let open = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADAN";
        assert_eq!(only(&format!("x {open}"), Detector::PrivateKey), [open]);
        // In JSON text (escaped line breaks), and encrypted with its headers.
        let escaped = "-----BEGIN PRIVATE KEY-----\\nMIIE\\/x+\\n-----END PRIVATE KEY-----";
        assert_eq!(
            only(&format!("{{\"k\":\"{escaped}\\n\"}}"), Detector::PrivateKey),
            [escaped]
        );
        let encrypted = "-----BEGIN RSA PRIVATE KEY-----\r\nProc-Type: 4,ENCRYPTED\r\nDEK-Info: AES-128-CBC,0A1B\r\n\r\n  MIIE==\r\n-----END RSA PRIVATE KEY-----";
        assert_eq!(only(&format!("{encrypted}\n"), Detector::PrivateKey), [encrypted]);
        // An OpenPGP key block's armor headers hold free text (GnuPG 1.x, BouncyCastle).
        let line = "lQOYBF2x3kEBCADKz1Ln8JfF0Qk7oYw2vXxq9dJ0b8rT3yUe1sWkR5mNpLhZcA4gBt";
        let pgp = format!(
            "-----BEGIN PGP PRIVATE KEY BLOCK-----\nVersion: GnuPG v1 (https://gnupg.org)\nComment: BCPG C# v1.6.1.0\n\n{line}\n{line}\n"
        );
        let text = format!("{pgp}=AbCd\n-----END PGP PRIVATE KEY BLOCK-----\n");
        let found = only(&text, Detector::PrivateKey);
        assert_eq!(found.len(), 1);
        assert!(found[0].starts_with(&pgp[..pgp.len() - 1]), "{found:?}");
        // Not on the BEGIN line, nor holding what a query or form goes on with.
        for text in [
            "-----BEGIN PGP PRIVATE KEY BLOCK----- Comment: x&role=admin",
            "-----BEGIN PGP PRIVATE KEY BLOCK-----\nComment: x&role=admin\n",
        ] {
            let found = only(text, Detector::PrivateKey);
            assert!(
                found.len() == 1 && !found[0].contains("Comment"),
                "{text:?}: {found:?}"
            );
        }
        let escaped = pgp.replace('\n', "\\n");
        let text = format!("{{\"key\":\"{escaped}\"}}");
        let found = only(&text, Detector::PrivateKey);
        assert!(found.len() == 1 && found[0].contains(&line[..20]), "{found:?}");
        // Nothing a key's body cannot hold is taken in, END line or not.
        assert_eq!(
            only(
                "id = 1 /* -----BEGIN PRIVATE KEY----- */ OR true /* -----END PRIVATE KEY----- */",
                Detector::PrivateKey
            ),
            ["-----BEGIN PRIVATE KEY----- "]
        );
        assert_eq!(
            only(
                "k=-----BEGIN PRIVATE KEY-----\nMIIE&role=admin",
                Detector::PrivateKey
            ),
            ["-----BEGIN PRIVATE KEY-----\nMIIE"]
        );
        assert!(
            only(
                "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----",
                Detector::PrivateKey
            )
            .is_empty()
        );
        // Words on the lines after a BEGIN line are not a key's body: a body's runs of base64
        // are a line's length (64 here), but its last.
        let line = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj";
        assert_eq!(line.len(), 64);
        assert_eq!(
            only(
                "-----BEGIN PRIVATE KEY-----\nOR true\n-----END PRIVATE KEY-----",
                Detector::PrivateKey
            ),
            ["-----BEGIN PRIVATE KEY-----\n"]
        );
        let open = format!("-----BEGIN PRIVATE KEY-----\n{line}\n");
        assert_eq!(
            only(&format!("{open}OR true\nnext"), Detector::PrivateKey),
            [open.as_str()]
        );
        // Flattened onto one line, escaped twice, or padded and followed by text: still a key.
        let flat = format!("-----BEGIN PRIVATE KEY----- {line} {line} AB== -----END PRIVATE KEY-----");
        assert_eq!(
            only(&format!("KEY=\"{flat}\""), Detector::PrivateKey),
            [flat.as_str()]
        );
        let twice = format!("-----BEGIN PRIVATE KEY-----\\\\n{line}\\\\nAB\\\\n-----END PRIVATE KEY-----");
        assert_eq!(
            only(&format!("{{\"k\":\"{twice}\"}}"), Detector::PrivateKey),
            [twice.as_str()]
        );
        let padded = format!("-----BEGIN PRIVATE KEY-----\n{line}\nAB==");
        assert_eq!(
            only(&format!("{padded}\nremoved the key\n"), Detector::PrivateKey),
            [padded.as_str()]
        );
        let openssh = format!(
            "-----BEGIN OPENSSH PRIVATE KEY-----\n{line}AAAAAA\nAAAA\n-----END OPENSSH PRIVATE KEY-----"
        );
        assert_eq!(only(&openssh, Detector::PrivateKey), [openssh.as_str()]);
        // A whole key file carried base64 encoded, wrapped or not; a certificate so carried stays.
        let key_file = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj\n-----END PRIVATE KEY-----\n";
        let encoded = {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode(key_file)
        };
        let wrapped = format!("{}\\n{}", &encoded[..60], &encoded[60..]);
        for body in [encoded.clone(), wrapped] {
            assert_eq!(
                only(&format!("{{\"content\":\"{body}\"}}"), Detector::PrivateKey),
                [body.as_str()]
            );
        }
        let cert = {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .encode("-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUJ\n-----END CERTIFICATE-----\n")
        };
        assert!(only(&format!("ca: {cert}"), Detector::PrivateKey).is_empty());
        // Escaped as .NET and Gson write JSON (`\u002B`, `\u003d`), continued lines, and each
        // line after the BEGIN line's own prefix (an event stream's `data: `).
        let plus = "MIIEvQIBADAN+gkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8/Kj";
        let dotnet = format!(
            "-----BEGIN PRIVATE KEY-----\\n{}\\nAB\\u003d\\u003D\\n-----END PRIVATE KEY-----",
            plus.replace('+', "\\u002B").replace('/', "\\/")
        );
        assert_eq!(
            only(&format!("{{\"k\":\"{dotnet}\"}}"), Detector::PrivateKey),
            [dotnet.as_str()]
        );
        let continued = format!("-----BEGIN PRIVATE KEY-----\\\n{plus}\\\n-----END PRIVATE KEY-----");
        assert_eq!(
            only(&format!("key={continued}\n"), Detector::PrivateKey),
            [continued.as_str()]
        );
        let event =
            format!("-----BEGIN PRIVATE KEY-----\ndata: {plus}\ndata: AB==\ndata: -----END PRIVATE KEY-----");
        assert_eq!(
            only(&format!("data: {event}\n\n"), Detector::PrivateKey),
            [event.as_str()]
        );
    }

    #[test]
    fn overlapping_spans_merge() {
        let mut spans = vec![
            Span {
                start: 5,
                end: 9,
                detector: Detector::Phone,
            },
            Span {
                start: 0,
                end: 7,
                detector: Detector::Email,
            },
            Span {
                start: 8,
                end: 20,
                detector: Detector::CreditCard,
            },
            Span {
                start: 30,
                end: 31,
                detector: Detector::Jwt,
            },
        ];
        merge_overlaps(&mut spans);
        assert_eq!(
            spans,
            [
                Span {
                    start: 0,
                    end: 20,
                    detector: Detector::CreditCard
                },
                Span {
                    start: 30,
                    end: 31,
                    detector: Detector::Jwt
                }
            ]
        );
    }

    #[test]
    fn features_match_a_plain_count() {
        let text = b"a@b 0123456789 AJ-x\x00\xff\xc3\xa9/:9";
        for end in 0..text.len() {
            let t = &text[..end];
            let f = Features::of(t);
            assert_eq!(
                f.digits(),
                t.iter().filter(|b| b.is_ascii_digit()).count(),
                "{end}"
            );
            assert_eq!(f.has(MARK_AT), t.contains(&b'@'));
            assert_eq!(f.has(MARK_CAPITAL_A), t.contains(&b'A'));
            assert_eq!(f.has(MARK_CAPITAL_J), t.contains(&b'J'));
            assert_eq!(f.has(MARK_DASH), t.contains(&b'-'));
            assert_eq!(f.has(MARK_PERCENT), t.contains(&b'%'));
        }
        let long = "7a".repeat(5000);
        assert_eq!(Features::of(long.as_bytes()).digits(), 5000);
        for b in 0..=255u8 {
            let x = u64::from_le_bytes([b, b'x', b'x', b'x', b'x', b'x', b'x', b'x']);
            assert_eq!(digit_bytes(x) != 0, b.is_ascii_digit(), "{b}");
            assert_eq!(bytes_below(x, 0x20) != 0, b < 0x20, "{b}");
            assert_eq!(bytes_equal(x, b'"') != 0, b == b'"', "{b}");
        }
    }

    #[test]
    fn scans_stay_linear_on_hostile_text() {
        for unit in ["@a", "eyJ.", "00", "A", "1 ", "+1", "-----BEGIN ", "GB82 "] {
            let text = unit.repeat(200_000);
            let started = std::time::Instant::now();
            let _ = detect(&text);
            assert!(started.elapsed().as_secs() < 2, "{unit:?}");
        }
    }
}
