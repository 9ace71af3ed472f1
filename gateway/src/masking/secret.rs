//! A known secret found however a text spells it: the Connection's credential that an upstream
//! reflects (see `protocol::http::scrub`), and the agent's own token in what a recording or an
//! approval request keeps (see `recording`).
//!
//! Each byte of the secret may appear as itself or as any escape a decoder turns back into it, in
//! any mix and either hex case:
//! - JSON: `\/`, `\"`, `\\`, `\uXXXX`;
//! - URLs and forms: `%XX`, and `+` for a space;
//! - HTML: `&#N;`, `&#xH;` and the named references for ASCII punctuation.
//!
//! A list of whole encoded forms (the secret as each known encoder writes it) missed a secret
//! escaped in part by one encoder and in part by another: a percent-encoded URL inside PHP's
//! JSON, say, or an encoder that escapes more than the list expected.
//!
//! Text encoded twice escapes the first escape's introducer (`%`, `\`, `&`) again: `%252B`, JSON
//! in JSON's `\\u002b` and `\\\/`, `&amp;#43;`, a URL-encoded `\u002b` (`%5Cu002b`). Those are
//! read too. Not read: a third encoding, and a second that escapes the rest of an escape as well
//! (`%25%32%42`, every byte of `%2B` percent-encoded).

use std::ops::Range;
use std::sync::Arc;

/// Shortest secret searched for: shorter values would match ordinary text.
pub const MIN_SCRUBBED_SECRET: usize = 8;

/// How many of a secret's first bytes, raw, the search looks for; a reflection with an escape
/// among them is found by the escape. At most [`MIN_SCRUBBED_SECRET`].
const RAW_PREFIX: usize = 8;
const _: () = assert!(RAW_PREFIX <= MIN_SCRUBBED_SECRET);

/// Most digits read in an HTML numeric reference, leading zeros included (`&#0000043;`):
/// decoders read any number, but a reference this long is not an encoder's.
const MAX_ENTITY_DIGITS: usize = 32;

/// HTML's named references for ASCII characters, and whether HTML reads one without its `;`
/// too (the legacy ones). PHP's `htmlentities` with `ENT_HTML5` writes punctuation by name.
const NAMED_ENTITIES: [(&[u8], u8, bool); 33] = [
    (b"&amp;", b'&', true),
    (b"&AMP;", b'&', true),
    (b"&lt;", b'<', true),
    (b"&LT;", b'<', true),
    (b"&gt;", b'>', true),
    (b"&GT;", b'>', true),
    (b"&quot;", b'"', true),
    (b"&QUOT;", b'"', true),
    (b"&apos;", b'\'', false),
    (b"&plus;", b'+', false),
    (b"&sol;", b'/', false),
    (b"&equals;", b'=', false),
    (b"&period;", b'.', false),
    (b"&lowbar;", b'_', false),
    (b"&UnderBar;", b'_', false),
    (b"&colon;", b':', false),
    (b"&num;", b'#', false),
    (b"&percnt;", b'%', false),
    (b"&dollar;", b'$', false),
    (b"&excl;", b'!', false),
    (b"&quest;", b'?', false),
    (b"&comma;", b',', false),
    (b"&semi;", b';', false),
    (b"&lpar;", b'(', false),
    (b"&rpar;", b')', false),
    (b"&ast;", b'*', false),
    (b"&lsqb;", b'[', false),
    (b"&rsqb;", b']', false),
    (b"&lcub;", b'{', false),
    (b"&rcub;", b'}', false),
    (b"&verbar;", b'|', false),
    (b"&bsol;", b'\\', false),
    (b"&commat;", b'@', false),
];

/// The searcher for a few secrets in any spelling: a Connection's credential in each form it
/// travels in (the secret itself, and the Basic token the upstream receives), or an agent's
/// tokens. Built once per configuration or token, as building costs more than a search.
pub struct SecretFinder {
    secrets: Vec<Box<[u8]>>,
    /// Each secret's first [`RAW_PREFIX`] bytes, raw: where most reflections begin, found by
    /// SIMD search.
    prefixes: Vec<memchr::memmem::Finder<'static>>,
    /// The secrets' first bytes.
    first: [bool; 256],
    /// Whether a `+` (a form's space) can begin a reflection or follow its first byte.
    plus: bool,
}

/// Never the secrets: they are the credential.
impl std::fmt::Debug for SecretFinder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretFinder({} forms)", self.secrets.len())
    }
}

/// What reading one byte of a secret at a position found.
enum Unit {
    /// The byte, written in this many input bytes.
    Len(usize),
    /// Not the byte.
    No,
    /// The input ends before it can tell.
    More,
}

impl Unit {
    /// The same, `n` bytes longer: with what came before it.
    fn after(self, n: usize) -> Unit {
        match self {
            Unit::Len(k) => Unit::Len(k + n),
            other => other,
        }
    }
}

/// What matching a whole secret from a position found.
enum Attempt {
    /// The secret, ending here (exclusive).
    Found(usize),
    No,
    /// The input ends before it can tell.
    More,
}

impl SecretFinder {
    /// A searcher for the `forms` long enough to scrub without mangling ordinary text; `None`
    /// when there is none.
    pub fn new(forms: &[&[u8]]) -> Option<Arc<Self>> {
        let mut secrets: Vec<Box<[u8]>> = forms
            .iter()
            .filter(|f| f.len() >= MIN_SCRUBBED_SECRET)
            .map(|f| Box::from(*f))
            .collect();
        secrets.sort_unstable();
        secrets.dedup();
        let mut first = [false; 256];
        for s in &secrets {
            first[usize::from(s[0])] = true;
        }
        let prefixes = secrets
            .iter()
            .map(|s| memchr::memmem::Finder::new(&s[..RAW_PREFIX]).into_owned())
            .collect();
        let plus = secrets.iter().any(|s| s[..RAW_PREFIX].contains(&b' '));
        (!secrets.is_empty()).then(|| {
            Arc::new(Self {
                secrets,
                prefixes,
                first,
                plus,
            })
        })
    }

    /// Whether a reflection occurs in `haystack`, a whole value (a header's, say).
    pub fn found_in(&self, haystack: &[u8]) -> bool {
        !self.matches(haystack, true).0.is_empty()
    }

    /// `text` with every spelling of a secret replaced by `with`, or `None` when there is none
    /// (the common case, which copies nothing). Where `with` and what surrounds a spelling would
    /// spell a secret again (one ending in `[` before `[REDACTED]`), all of `text` is `with`.
    pub fn replaced(&self, text: &[u8], with: &[u8]) -> Option<Vec<u8>> {
        let (found, _) = self.matches(text, true);
        if found.is_empty() {
            return None;
        }
        Some(self.replace_ranges(text, &found, with))
    }

    /// `text` with each of `found` (spellings, in order) replaced by `with`; all of it `with`
    /// where that would spell a secret again.
    pub(crate) fn replace_ranges(&self, text: &[u8], found: &[Range<usize>], with: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(text.len());
        let mut from = 0;
        for r in found {
            out.extend_from_slice(&text[from..r.start]);
            out.extend_from_slice(with);
            from = r.end;
        }
        out.extend_from_slice(&text[from..]);
        if self.found_in(&out) { with.to_vec() } else { out }
    }

    /// How many bytes at the end of `text` could be the start of a secret's spelling that a cut
    /// left unfinished: what must go too when `text` is a prefix, as the rest of the secret,
    /// which would have made it found, is gone. Begins on an ASCII byte.
    pub fn unfinished_at_end(&self, text: &[u8]) -> usize {
        text.len() - self.matches(text, false).1
    }

    /// Overwrites every reflection in a whole `buf` with `*` of the same length (so framing and
    /// Content-Length stay valid); returns whether there was one.
    pub fn overwrite(&self, buf: &mut [u8]) -> bool {
        self.overwrite_until(buf, true).0
    }

    /// Overwrites the reflections of `buf` that end before anything that could begin one the
    /// input cuts short (unless `complete`, when the input is all there is); returns whether it
    /// overwrote one and how many leading bytes are final (all of them when `complete`).
    pub(crate) fn overwrite_until(&self, buf: &mut [u8], complete: bool) -> (bool, usize) {
        let (found, safe) = self.matches(buf, complete);
        for r in &found {
            buf[r.clone()].fill(b'*');
        }
        (!found.is_empty(), safe)
    }

    /// The reflections in `buf`, leftmost first, and how many leading bytes are final: at a
    /// position where a secret could begin but the input ends before it can tell, the search
    /// stops (unless `complete`), so a reflection split across chunks is found whole once the
    /// next arrives and the result never depends on where the input was cut.
    pub(crate) fn matches(&self, buf: &[u8], complete: bool) -> (Vec<Range<usize>>, usize) {
        let (mut frontier, mut next) = (Vec::new(), Vec::new());
        let mut found = Vec::new();
        // On the stack for the usual one or two forms: headers are searched one by one.
        let (mut inline, mut heap) = ([None; 2], Vec::new());
        let raw = if self.prefixes.len() <= inline.len() {
            &mut inline[..self.prefixes.len()]
        } else {
            heap.resize(self.prefixes.len(), None);
            &mut heap[..]
        };
        let mut ahead = Ahead {
            escape: None,
            plus: None,
            raw,
        };
        let mut p = 0;
        while p < buf.len() {
            p = self.next_candidate(buf, p, &mut ahead);
            if p == buf.len() {
                break;
            }
            let mut end: Option<usize> = None;
            for secret in &self.secrets {
                match attempt(secret, buf, p, complete, &mut frontier, &mut next) {
                    Attempt::Found(e) => end = Some(end.map_or(e, |x| x.max(e))),
                    Attempt::More => return (found, p),
                    Attempt::No => {}
                }
            }
            match end {
                Some(e) => {
                    found.push(p..e);
                    p = e;
                }
                None => p += 1,
            }
        }
        (found, buf.len())
    }

    /// The first position from `p` where a reflection could begin, or `buf.len()`. A
    /// reflection's first [`RAW_PREFIX`] bytes are either all raw (a search for the secret's
    /// first bytes finds them), or one of them begins an escape: then it begins with a secret's
    /// first byte (or that escape) fewer than [`RAW_PREFIX`] bytes before an escape, or before
    /// the input's end. memchr finds the searched bytes many at a time; `ahead` keeps what
    /// earlier calls found past `p`, so each byte is searched once.
    fn next_candidate(&self, buf: &[u8], p: usize, ahead: &mut Ahead<'_>) -> usize {
        let stale = |at: Option<usize>| at.is_none_or(|at| at < p);
        let after = |i: Option<usize>| Some(i.map_or(buf.len(), |i| p + i));
        if stale(ahead.escape) {
            ahead.escape = after(memchr::memchr3(b'\\', b'%', b'&', &buf[p..]));
        }
        if self.plus && stale(ahead.plus) {
            ahead.plus = after(memchr::memchr(b'+', &buf[p..]));
        }
        // The escape (or the end) and the first bytes just before it.
        let plus = if self.plus { ahead.plus } else { None };
        let esc = ahead.escape.unwrap_or(buf.len()).min(plus.unwrap_or(buf.len()));
        let near = (p.max((esc + 1).saturating_sub(RAW_PREFIX))..esc)
            .find(|&c| self.first[usize::from(buf[c])])
            .unwrap_or(esc);
        let mut best = near;
        for (prefix, raw) in self.prefixes.iter().zip(ahead.raw.iter_mut()) {
            if stale(*raw) {
                *raw = Some(prefix.find(&buf[p..]).map_or(buf.len(), |i| p + i));
            }
            best = best.min(raw.unwrap_or(buf.len()));
        }
        best
    }
}

/// The next escape (`\\`, `%`, `&`) and the next raw prefix of each secret at or after where the search last
/// looked, absolute; `None` before the first look.
struct Ahead<'a> {
    escape: Option<usize>,
    /// A `+`, searched for only where a secret has a space among its first bytes.
    plus: Option<usize>,
    raw: &'a mut [Option<usize>],
}

/// Matches `secret` at `start`, following every way the input can spell each byte (a raw `%`
/// and an escape beginning with one can both be right): `frontier` and `next` hold the
/// positions reached so far, reused across calls.
fn attempt(
    secret: &[u8],
    buf: &[u8],
    start: usize,
    complete: bool,
    frontier: &mut Vec<usize>,
    next: &mut Vec<usize>,
) -> Attempt {
    frontier.clear();
    frontier.push(start);
    let mut more = false;
    for &want in secret {
        next.clear();
        for &at in frontier.iter() {
            for unit in units(buf, at, want, complete) {
                match unit {
                    Unit::Len(n) => next.push(at + n),
                    Unit::More => more = true,
                    Unit::No => {}
                }
            }
        }
        if next.is_empty() {
            frontier.clear();
            break;
        }
        next.sort_unstable();
        next.dedup();
        std::mem::swap(frontier, next);
    }
    match frontier.last() {
        // A spelling the input cut short could still end elsewhere: wait for the rest, so the
        // outcome is the same however the body was split.
        _ if more && !complete => Attempt::More,
        Some(&end) => Attempt::Found(end),
        None => Attempt::No,
    }
}

/// The ways `buf` spells the byte `want` at `at`: raw, as the escape that begins there, and as
/// an escape of an escape.
fn units(buf: &[u8], at: usize, want: u8, complete: bool) -> [Unit; 4] {
    let Some(&b) = buf.get(at) else {
        return [Unit::More, Unit::No, Unit::No, Unit::No];
    };
    let raw = if b == want { Unit::Len(1) } else { Unit::No };
    let [nested, nested_too] = nested(buf, at, want, complete);
    [raw, escape(buf, at, want, complete), nested, nested_too]
}

/// The escape at `at` (a raw `\`, `%`, `&` or `+`) that spells `want`.
fn escape(buf: &[u8], at: usize, want: u8, complete: bool) -> Unit {
    match buf.get(at) {
        Some(b'\\') if want.is_ascii() => json_escape(buf, at + 1, want, false, complete).after(1),
        Some(b'%') => hex_is(buf, at + 1, 2, u32::from(want)).then_len(3),
        Some(b'+') if want == b' ' => Unit::Len(1),
        Some(b'&') if want.is_ascii() => html_entity(buf, at + 1, want, complete).after(1),
        _ => Unit::No,
    }
}

/// An escape whose introducer is escaped in turn, as encoding twice writes it: `%252B`,
/// `\\u002b` and `\\\/` (JSON in JSON), `&amp;#43;`, `%5Cu002b`, `\u0026#43;`. What follows
/// the introducer is read raw, but for a JSON escape's second character (`%5C%2F`). Two
/// readings for a `\\` wanted after an escaped backslash (`\\\\` is a raw one or begins `\\\\\\\\`).
fn nested(buf: &[u8], at: usize, want: u8, complete: bool) -> [Unit; 2] {
    if !matches!(buf.get(at), Some(b'\\' | b'%' | b'&')) {
        return [Unit::No, Unit::No];
    }
    let mut more = false;
    for introducer in [b'%', b'\\', b'&', b'+'] {
        if introducer == b'+' && want != b' ' {
            continue;
        }
        let n = match escape(buf, at, introducer, complete) {
            Unit::Len(n) => n,
            Unit::More => {
                more = true;
                continue;
            }
            Unit::No => continue,
        };
        let rest = at + n;
        let unit = match introducer {
            b'%' => hex_is(buf, rest, 2, u32::from(want)).then_len(2),
            b'\\' if want.is_ascii() => json_escape(buf, rest, want, true, complete),
            b'&' if want.is_ascii() => html_entity(buf, rest, want, complete),
            b'+' if want == b' ' => Unit::Len(0),
            _ => Unit::No,
        };
        // Only one introducer is spelled at a position.
        let too = match (introducer, &unit) {
            (b'\\', Unit::Len(1)) if want == b'\\' => escape(buf, rest, want, complete),
            _ => Unit::No,
        };
        match unit {
            Unit::Len(k) => return [Unit::Len(n + k), too.after(n)],
            Unit::More => more = true,
            Unit::No => {}
        }
    }
    [if more { Unit::More } else { Unit::No }, Unit::No]
}

/// What follows a JSON escape's backslash at `from` for `want` (`/`, `"`, `\\` or `uXXXX`), its
/// length from there; `nested`: the second character may be escaped itself.
fn json_escape(buf: &[u8], from: usize, want: u8, nested: bool, complete: bool) -> Unit {
    match buf.get(from) {
        None => Unit::More,
        Some(&c @ (b'/' | b'"' | b'\\')) if c == want => Unit::Len(1),
        Some(b'u') => hex_is(buf, from + 1, 4, u32::from(want)).then_len(5),
        Some(_) if nested && matches!(want, b'/' | b'"' | b'\\') => escape(buf, from, want, complete),
        Some(_) => Unit::No,
    }
}

/// What follows an HTML reference's `&` at `from` for `want` (`#N;`, `#xH;` or a name), its
/// length from there; `complete`: the input ends where `buf` does.
fn html_entity(buf: &[u8], from: usize, want: u8, complete: bool) -> Unit {
    match buf.get(from) {
        None => Unit::More,
        Some(b'#') => {
            let (radix, first) = match buf.get(from + 1) {
                None => return Unit::More,
                Some(b'x' | b'X') => (16, from + 2),
                Some(_) => (10, from + 1),
            };
            let want = u32::from(want);
            let mut value = 0u32;
            for i in first..=first + MAX_ENTITY_DIGITS {
                let Some(&b) = buf.get(i) else {
                    // The input's end ends a reference HTML reads without its `;`.
                    return match complete {
                        true if i > first && value == want => Unit::Len(i - from),
                        true => Unit::No,
                        false => Unit::More,
                    };
                };
                match (b as char).to_digit(radix) {
                    Some(v) if i < first + MAX_ENTITY_DIGITS => {
                        value = value * radix + v;
                        // More digits lead to `want` only from its leading digits (or zeros).
                        if !leads_to(value, want, radix) {
                            return Unit::No;
                        }
                    }
                    Some(_) => return Unit::No,
                    // It ends at its `;`, or (as HTML reads it) before any other byte.
                    None if i > first && value == want => {
                        return Unit::Len(i - from + usize::from(b == b';'));
                    }
                    None => return Unit::No,
                }
            }
            Unit::No
        }
        Some(_) => {
            // Names spelling `want`: the first that matches, or waits for more input, decides.
            let rest = &buf[from..];
            let mut unit = Unit::No;
            for &(name, _, bare_too) in NAMED_ENTITIES.iter().filter(|(_, c, _)| *c == want) {
                let name = &name[1..];
                let bare = &name[..name.len() - 1];
                if rest.starts_with(name) {
                    return Unit::Len(name.len());
                } else if name.starts_with(rest) && !(complete && bare_too && rest == bare) {
                    unit = Unit::More;
                } else if bare_too && rest.starts_with(bare) {
                    return Unit::Len(bare.len());
                }
            }
            unit
        }
    }
}

/// Whether digits read so far, `value`, are `want`'s leading digits in `radix` (or all zeros).
fn leads_to(value: u32, want: u32, radix: u32) -> bool {
    let mut w = want;
    while w > value {
        w /= radix;
    }
    value == 0 || w == value
}

/// What reading hex digits found.
enum Hex {
    Is,
    Not,
    More,
}

impl Hex {
    fn then_len(self, len: usize) -> Unit {
        match self {
            Hex::Is => Unit::Len(len),
            Hex::Not => Unit::No,
            Hex::More => Unit::More,
        }
    }
}

/// Whether the `n` hex digits at `from` (either case) are `want`, checked digit by digit, so a
/// cut-short escape that cannot be `want` is told apart at once.
fn hex_is(buf: &[u8], from: usize, n: usize, want: u32) -> Hex {
    for i in 0..n {
        let Some(&d) = buf.get(from + i) else {
            return Hex::More;
        };
        let expected = (want >> (4 * (n - 1 - i))) & 0xf;
        if (d as char).to_digit(16) != Some(expected) {
            return Hex::Not;
        }
    }
    Hex::Is
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn finders(forms: &[&[u8]]) -> Arc<SecretFinder> {
        SecretFinder::new(forms).expect("long enough")
    }

    #[test]
    fn only_what_could_begin_a_reflection_waits_for_the_next_chunk() {
        let f = finders(&[b"00CANARY-secret"]);
        let safe = |buf: &[u8]| f.matches(buf, false).1;
        assert_eq!(safe(b"abc 00CAN"), 4);
        assert_eq!(safe(b"abc\n"), 4);
        // An escape cut short is held while it could still spell the next byte...
        assert_eq!(safe(b"abc 00CANARY%2"), 4);
        assert_eq!(safe(b"abc 00CANARY\\u00"), 4);
        assert_eq!(safe(b"x %3"), 2);
        assert_eq!(safe(b"x &#4"), 2);
        // ... and not once it cannot.
        assert_eq!(safe(b"abc 00CANARY%41"), 15);
        assert_eq!(safe(b"x %4"), 4);
        assert_eq!(safe(b"x &#5"), 5);
        // Digits that cannot lead to a byte of the secret (`&#1` to 10 and up is no `0`, `-`).
        assert_eq!(safe(b"x &#1"), 5);
        assert_eq!(safe(b"x &lt"), 5);
    }

    /// Each byte as itself or in any escape a decoder reads back, mixed within one reflection:
    /// the forms one list of whole encodings missed are the first four.
    #[test]
    fn reflections_are_found_in_any_mix_of_escapes() {
        let token = b"c3Zj+OjAw/Q0FOQVJZ==";
        let f = finders(&[token]);
        for reflected in [
            // A percent-encoded URL (Python's quote keeps `/`) inside PHP's JSON (`\/`).
            &br#"{"next":"https:\/\/cb?t=c3Zj%2BOjAw\/Q0FOQVJZ%3D%3D"}"#[..],
            // Every byte percent-encoded, letters too: decoders read it back all the same.
            b"t=%63%33%5a%6A%2B%4F%6A%41%77%2F%51%30%46%4F%51%56%4A%5A%3D%3D",
            // HTML entities, numeric and hex, in an error page.
            b"<p>Basic c3Zj&#43;OjAw&#x2f;Q0FOQVJZ&#61;&#x003D;</p>",
            // A `\u` escape beside a raw byte and a percent escape.
            br#"c3Zj\u002BOjAw%2fQ0FOQVJZ=\u003d"#,
            // The forms single encoders write.
            br#"{"auth":"Basic c3Zj+OjAw\/Q0FOQVJZ=="}"#,
            br#"{"auth":"Basic c3Zj\u002bOjAw\u002fQ0FOQVJZ\u003d\u003d"}"#,
            br#"{"auth":"Basic c3Zj\u002BOjAw\u002FQ0FOQVJZ\u003D\u003D"}"#,
            b"Location: /cb?t=c3Zj%2bOjAw%2fQ0FOQVJZ%3d%3d",
        ] {
            let text = String::from_utf8_lossy(reflected);
            assert!(f.found_in(reflected), "{text}");
            let mut buf = reflected.to_vec();
            assert!(f.overwrite(&mut buf), "{text}");
            assert!(!f.found_in(&buf), "{text}");
            assert_eq!(buf.len(), reflected.len());
        }
        let f = finders(&[b"00CANARY-secret"]);
        for reflected in [
            &b"00CANARY%2Dsecret"[..],
            br"00CANARY\u002dsecret",
            b"00CANARY&#45;secret",
            b"%30%30CANARY-secret",
        ] {
            assert!(f.found_in(reflected), "{}", String::from_utf8_lossy(reflected));
        }
        // The raw pair begins right before a first byte that an escape follows.
        let f9 = finders(&[b"aaaaaaaaa"]);
        assert!(f9.found_in(b"aa%61%61%61%61%61%61%61"));
        let found = f9.matches(b"xaa%61%61%61%61%61%61%61", true).0;
        assert_eq!((found.len(), found.first()), (1, Some(&(1..24))));
        // HTML reads leading zeros, and a numeric or legacy named reference without its `;`.
        let f = finders(&[b"c3Zj+OjAw/Q0FOQVJZ=="]);
        assert!(f.found_in(b"c3Zj&#00000043;OjAw&#x0000002f;Q0FOQVJZ&#61&#x3D"));
        assert!(f.found_in(b"c3Zj&#43OjAw/Q0FOQVJZ=="));
        assert!(!f.found_in(b"c3Zj&#430jAw/Q0FOQVJZ=="));
        assert!(finders(&[b"a&b<c>d\"e"]).found_in(b"a&ampb&ltc&gtd&quote"));
        assert!(finders(&[b"a&b<c>d\"e"]).found_in(b"a&AMP;b&LTc&GT;d&QUOTe"));
        // PHP's htmlentities with ENT_HTML5 names punctuation.
        assert!(f.found_in(b"c3Zj&plus;OjAw&sol;Q0FOQVJZ&equals;&equals;"));
        assert!(finders(&[b"key_with.dots:1"]).found_in(b"key&lowbar;with&period;dots&colon;1"));
        assert!(!finders(&[b"it's-a-secret"]).found_in(b"it&aposs-a-secret"));
        // A space may be a `+` in a form body; named entities spell what HTML escapes.
        assert!(finders(&[b"pass word&<1>"]).found_in(b"pass+word&amp;&lt;1&gt;"));
        for near_miss in [
            &b"00CANARY-secreT"[..],
            b"00CANARY%2Esecret",
            br"00CANARY\u002Xsecret",
            b"00CANARY&#46;secret",
            b"00CANARY-secre",
            b"00CANARY%25252Dsecret",
            b"00CANARY%25%32%44secret",
            b"00CANARY%2%44secret",
        ] {
            let f = finders(&[b"00CANARY-secret"]);
            assert!(!f.found_in(near_miss), "{}", String::from_utf8_lossy(near_miss));
        }
    }

    /// Text encoded twice: the first escape's introducer escaped again, by the same encoder or
    /// another, mixed with the first encoding's escapes and raw bytes.
    #[test]
    fn reflections_encoded_twice_are_found() {
        let f = finders(&[b"c3Zj+OjAw/Q0FOQVJZ=="]);
        for reflected in [
            // A callback URL percent-encoded again inside another URL.
            &b"next=https%3A%2F%2Fcb%3Ft%3Dc3Zj%252BOjAw%252FQ0FOQVJZ%253D%253D"[..],
            // JSON inside a JSON string: the inner escapes' backslashes escaped.
            br#"{"log":"{\"t\":\"c3Zj\\u002bOjAw\\\/Q0FOQVJZ\\u003d=\"}"}"#,
            // HTML escaped twice, and an entity in Go's JSON (which writes `&` as `\u0026`).
            b"c3Zj&amp;#43;OjAw&amp;#x2F;Q0FOQVJZ&amp;#61;&AMP;#61;",
            br"c3Zj\u0026#43;OjAw\u0026#47;Q0FOQVJZ==",
            // A JSON string percent-encoded into a query, and the reverse.
            b"q=c3Zj%5Cu002bOjAw%5C%2FQ0FOQVJZ%5cu003d%3D",
            br"c3Zj\u00252BOjAw&#37;2FQ0FOQVJZ&percnt;3D%3D",
        ] {
            let text = String::from_utf8_lossy(reflected);
            assert!(f.found_in(reflected), "{text}");
            let mut buf = reflected.to_vec();
            assert!(f.overwrite(&mut buf), "{text}");
            assert!(!f.found_in(&buf), "{text}");
        }
        let f = finders(&[b"00CANARY-secret"]);
        for reflected in [
            &b"00CANARY%252Dsecret"[..],
            br"00CANARY\\u002dsecret",
            b"00CANARY&#045secret",
        ] {
            assert!(f.found_in(reflected), "{}", String::from_utf8_lossy(reflected));
        }
        // A backslash of the secret after an escaped one: JSON in JSON writes it `\\\\`.
        let f = finders(&[br"pa\ss-word-1"]);
        assert!(f.found_in(br#""\"pa\\\\ss-word-1\"""#));
        assert!(f.found_in(br"pa\u005c\u005css-word-1"));
        // A space as a form's `+`, percent-encoded again.
        assert!(finders(&[b"pass word 12"]).found_in(b"pass%2Bword%2B12"));
    }

    /// A raw `%` of the secret and an escape beginning with one can both be right: both are
    /// followed.
    #[test]
    fn a_secret_with_escape_characters_is_found_raw_and_escaped() {
        let f = finders(&[b"p%25\\&amp;word"]);
        assert!(f.found_in(b"x p%25\\&amp;word y"));
        assert!(f.found_in(b"x p%2525%5C&amp;amp;word y"));
        assert!(f.found_in(br"x p\u002525\\&#38;amp;word y"));
    }

    /// Every form is scrubbed, whichever comes first; a short one is left alone.
    #[test]
    fn every_form_is_scrubbed() {
        let f = finders(&[b"00CANARY-secret", b"c3ZjOjAwQ0FOQVJZLXNlY3JldA==", b"ab"]);
        let mut buf = b"Basic c3ZjOjAwQ0FOQVJZLXNlY3JldA== and 00CANARY-secret, ab".to_vec();
        assert!(f.overwrite(&mut buf));
        assert!(!f.found_in(&buf));
        assert!(buf.ends_with(b", ab"));
        assert_eq!(f.matches(b"x c3ZjOjAw", false).1, 2);
        // More forms than the search keeps on the stack.
        let f = finders(&[b"first-secret", b"second-secret", b"third%2Dsecret"]);
        // (The third's own `%` may be spelled `%25`; a `-` is not it.)
        let mut buf = b"third-secret, third%252Dsecret, second%2Dsecret, first-secret".to_vec();
        assert!(f.overwrite(&mut buf));
        assert_eq!(
            &buf,
            b"third-secret, ****************, ***************, ************"
        );
    }

    /// What an attempt at every position finds, leftmost first: what the search for candidates
    /// must find too.
    fn every_position(f: &SecretFinder, buf: &[u8]) -> Vec<Range<usize>> {
        let (mut frontier, mut next) = (Vec::new(), Vec::new());
        let (mut found, mut p) = (Vec::new(), 0);
        while p < buf.len() {
            let end = f
                .secrets
                .iter()
                .filter_map(|s| match attempt(s, buf, p, true, &mut frontier, &mut next) {
                    Attempt::Found(e) => Some(e),
                    _ => None,
                })
                .max();
            match end {
                Some(e) => {
                    found.push(p..e);
                    p = e;
                }
                None => p += 1,
            }
        }
        found
    }

    /// The candidate search finds what an attempt at every position finds, secrets that overlap
    /// themselves and escapes anywhere included.
    #[test]
    fn the_search_finds_what_every_position_finds() {
        let mut rng = crate::mutate::Mutator::new(5);
        for secret in SECRETS {
            let f = finders(&[secret]);
            for _ in 0..300 * crate::mutate::scale() {
                let body = random_body(&mut rng, secret);
                assert_eq!(
                    f.matches(&body, true).0,
                    every_position(&f, &body),
                    "{}",
                    String::from_utf8_lossy(&body)
                );
            }
        }
    }

    /// Secrets for random tests: with escape characters, and overlapping themselves.
    pub(crate) const SECRETS: [&[u8]; 5] = [
        b"00CANARY-secret",
        b"abababab",
        b"aaaaaaaaa",
        b"abc%abcabd",
        br"ab\ab\ab",
    ];

    /// A random mix of pieces that hold `secret` in many spellings, whole and in part.
    pub(crate) fn random_body(rng: &mut crate::mutate::Mutator, secret: &[u8]) -> Vec<u8> {
        let pieces: [&[u8]; 14] = [
            secret,
            &secret[..secret.len() / 2],
            &secret[secret.len() / 2..],
            b"a",
            b"b",
            b"x ",
            b"%61",
            b"\\u0062",
            b"&#x25;",
            b"%61%61%61%61%61%61%61",
            b"%2561",
            b"\\\\u0062",
            b"&amp;#x25;",
            br"\\",
        ];
        (0..rng.below(12))
            .flat_map(|_| rng.pick(&pieces).to_vec())
            .collect()
    }
}
