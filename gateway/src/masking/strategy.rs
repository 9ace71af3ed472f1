//! Masking strategies: what a masked value, or a detected span inside a value, becomes.

use std::fmt;

use agentgate_crds::policy::{Detector, MaskingStrategy};
use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::detectors::{self, DetectorSet, Features};

/// What Redact puts in place of a whole value.
pub const REDACTED: &str = "[REDACTED]";
/// Prefix of Hash output.
pub const HASH_PREFIX: &str = "hash:";
/// Base64url characters of the HMAC kept (132 bits).
pub const HASH_CHARS: usize = 22;
/// Under Partial, values at least this long keep their last [`PARTIAL_KEEP`] characters; shorter
/// ones are starred entirely, since four characters of a short value are most of it.
pub const PARTIAL_MIN_LEN: usize = 12;
pub const PARTIAL_KEEP: usize = 4;

/// The key of the Hash strategy: HMAC-SHA256, so hashes cannot be reversed by hashing guesses
/// without the key. One key per gateway keeps hashes joinable across responses; a configured key
/// (`masking.hashKeySecretRef`) keeps them joinable across replicas and restarts.
#[derive(Clone)]
pub struct HashKey(hmac::Key);

impl HashKey {
    /// A fresh random key.
    pub fn random() -> Self {
        let mut bytes = [0u8; 32];
        // A gateway without a working system RNG cannot run TLS either; there is nothing to
        // fall back to.
        aws_lc_rs::rand::fill(&mut bytes).expect("system random number generator");
        Self::from_bytes(bytes)
    }

    /// The key this process uses for every plan, so equal values hash equally across requests,
    /// connections and configuration reloads. Replicas each draw their own.
    pub fn process() -> Self {
        static KEY: std::sync::OnceLock<HashKey> = std::sync::OnceLock::new();
        KEY.get_or_init(HashKey::random).clone()
    }

    /// A configured key (`masking.hashKeySecretRef`), so replicas and restarts hash alike.
    pub fn from_secret(bytes: &[u8]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, bytes))
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, &bytes))
    }

    /// Appends `hash:` and the truncated base64url HMAC of `value`.
    pub(crate) fn hash_into(&self, value: &[u8], out: &mut String) {
        let tag = hmac::sign(&self.0, value);
        let mut encoded = [0u8; 44];
        let len = URL_SAFE_NO_PAD
            .encode_slice(tag.as_ref(), &mut encoded)
            .unwrap_or(0);
        out.push_str(HASH_PREFIX);
        out.extend(encoded[..len.min(HASH_CHARS)].iter().map(|&b| char::from(b)));
    }
}

impl fmt::Debug for HashKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HashKey(..)")
    }
}

/// Order of strength: Redact hides most, then Hash (equality survives), then Partial.
fn rank(s: MaskingStrategy) -> u8 {
    match s {
        MaskingStrategy::Partial => 0,
        MaskingStrategy::Hash => 1,
        MaskingStrategy::Redact => 2,
    }
}

/// The stronger of two strategies, for a value two rules select.
pub(crate) fn strongest(a: MaskingStrategy, b: MaskingStrategy) -> MaskingStrategy {
    if rank(a) >= rank(b) { a } else { b }
}

/// What a field selected by a path becomes: a policy's strategy, or, for the values of a
/// Kubernetes Secret, [`SECRET_REDACTED`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FieldMask {
    Strategy(MaskingStrategy),
    SecretValue,
}

impl From<MaskingStrategy> for FieldMask {
    fn from(s: MaskingStrategy) -> Self {
        Self::Strategy(s)
    }
}

/// What a Kubernetes Secret's value becomes: a redaction that is also valid base64 (eight
/// letters), so that typed clients (`kubectl describe`, client-go) still decode the object, where
/// `[REDACTED]` in place of `data` or of a value made them fail.
pub const SECRET_REDACTED: &str = "REDACTED";

/// The stronger of two field masks: a Secret's value hides as much as Redact, and keeps the
/// object decodable.
pub(crate) fn strongest_field(a: FieldMask, b: FieldMask) -> FieldMask {
    match (a, b) {
        (FieldMask::SecretValue, _) | (_, FieldMask::SecretValue) => FieldMask::SecretValue,
        (FieldMask::Strategy(a), FieldMask::Strategy(b)) => FieldMask::Strategy(strongest(a, b)),
    }
}

/// Appends the masked form of a selected field (see [`mask_whole`]).
pub(crate) fn mask_field(mask: FieldMask, value: &str, container: bool, key: &HashKey, out: &mut String) {
    match mask {
        FieldMask::Strategy(s) => mask_whole(s, value, container, key, out),
        FieldMask::SecretValue => out.push_str(SECRET_REDACTED),
    }
}

/// Appends the masked form of a span `detector` found.
pub(crate) fn mask_span(
    strategy: MaskingStrategy,
    detector: Detector,
    span: &str,
    key: &HashKey,
    out: &mut String,
) {
    match strategy {
        MaskingStrategy::Redact => redact_span(detector, out),
        // A percent-encoded address hashes as the address it encodes, so hashes still join.
        MaskingStrategy::Hash if detector == Detector::Email => {
            let (local, domain) = email_parts(span);
            let mut canonical = String::with_capacity(span.len());
            canonical.push_str(local);
            canonical.push('@');
            canonical.push_str(domain);
            key.hash_into(canonical.as_bytes(), out)
        }
        MaskingStrategy::Hash => key.hash_into(span.as_bytes(), out),
        MaskingStrategy::Partial => match detector {
            Detector::Email => partial_email(span, out),
            Detector::Phone | Detector::CreditCard | Detector::Iban => partial_digits(span, out),
            // Any part of a key block is a secret.
            Detector::PrivateKey => redact_span(detector, out),
            _ => partial_generic(span, out),
        },
    }
}

fn redact_span(detector: Detector, out: &mut String) {
    out.push_str("[REDACTED:");
    out.push_str(detectors::label(detector));
    out.push(']');
}

/// Appends the masked form of a whole value: a field a rule selects, or a column. `container`
/// says the value is a JSON object or array (given as its JSON text).
pub(crate) fn mask_whole(
    strategy: MaskingStrategy,
    value: &str,
    container: bool,
    key: &HashKey,
    out: &mut String,
) {
    match strategy {
        MaskingStrategy::Redact => out.push_str(REDACTED),
        MaskingStrategy::Hash => key.hash_into(value.as_bytes(), out),
        // The tail of a JSON text could be the tail of any value inside it.
        MaskingStrategy::Partial if container => out.push_str(REDACTED),
        MaskingStrategy::Partial => {
            // A value that is exactly an email, phone, card or IBAN keeps that kind's readable shape.
            let mut spans = Vec::new();
            let bytes = value.as_bytes();
            detectors::find(bytes, Features::of(bytes), DetectorSet::ALL, &mut spans);
            match spans.as_slice() {
                [only] if only.start == 0 && only.end == value.len() => {
                    mask_span(MaskingStrategy::Partial, only.detector, value, key, out);
                }
                _ => partial_generic(value, out),
            }
        }
    }
}

/// The local part and domain of an address the Email detector found, whose separator is `@`,
/// or `%40` / `%2540` when the address sits percent-encoded (once or twice) in a URL or query.
fn email_parts(email: &str) -> (&str, &str) {
    if let Some(at) = email.rfind('@') {
        return (&email[..at], &email[at + 1..]);
    }
    for sep in ["%2540", "%40"] {
        if let Some(at) = email.rfind(sep) {
            return (&email[..at], &email[at + sep.len()..]);
        }
    }
    (email, "")
}

/// `j***@example.com`: the first character of the local part and the domain, with the
/// separator as it was written.
fn partial_email(email: &str, out: &mut String) {
    let (local, _) = email_parts(email);
    match local.chars().next() {
        // A local part of one or two characters would be shown whole, or nearly.
        Some(_) if local.len() < email.len() && local.chars().count() <= 2 => {
            out.push_str("***");
            out.push_str(&email[local.len()..]);
        }
        Some(first) if local.len() < email.len() => {
            out.push(first);
            out.push_str("***");
            out.push_str(&email[local.len()..]);
        }
        _ => partial_generic(email, out),
    }
}

/// Letters and digits starred except the last four (two of fewer than ten, none of fewer than
/// six: never near half of a short number); separators kept (`**** **** **** 1111`).
fn partial_digits(s: &str, out: &mut String) {
    let total = s.chars().filter(char::is_ascii_alphanumeric).count();
    let keep = match total {
        0..6 => 0,
        6..10 => 2,
        _ => PARTIAL_KEEP,
    };
    let mut seen = 0;
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            seen += 1;
            out.push(if seen + keep > total { c } else { '*' });
        } else {
            out.push(c);
        }
    }
}

/// Long values keep their last four characters, short ones none.
fn partial_generic(s: &str, out: &mut String) {
    let len = s.chars().count();
    let keep = if len >= PARTIAL_MIN_LEN { PARTIAL_KEEP } else { 0 };
    out.extend(std::iter::repeat_n('*', len - keep));
    out.extend(s.chars().skip(len - keep));
}

#[cfg(test)]
mod tests {
    use super::*;
    use MaskingStrategy::*;

    fn key(b: u8) -> HashKey {
        HashKey::from_bytes([b; 32])
    }

    fn span(strategy: MaskingStrategy, d: Detector, s: &str) -> String {
        let mut out = String::new();
        mask_span(strategy, d, s, &key(1), &mut out);
        out
    }

    fn whole(strategy: MaskingStrategy, s: &str) -> String {
        let mut out = String::new();
        mask_whole(strategy, s, false, &key(1), &mut out);
        out
    }

    #[test]
    fn redact() {
        assert_eq!(span(Redact, Detector::Email, "a@b.io"), "[REDACTED:EMAIL]");
        assert_eq!(
            span(Redact, Detector::CreditCard, "4111111111111111"),
            "[REDACTED:CREDIT_CARD]"
        );
        assert_eq!(whole(Redact, "anything"), REDACTED);
    }

    #[test]
    fn partial() {
        assert_eq!(
            span(Partial, Detector::Email, "john@example.com"),
            "j***@example.com"
        );
        assert_eq!(
            span(Partial, Detector::Email, "john%40example.com"),
            "j***%40example.com"
        );
        assert_eq!(
            span(Partial, Detector::Email, "john%2540example.com"),
            "j***%2540example.com"
        );
        assert_eq!(
            span(Partial, Detector::CreditCard, "4111 1111 1111 1111"),
            "**** **** **** 1111"
        );
        assert_eq!(span(Partial, Detector::Phone, "(415) 555-0132"), "(***) ***-0132");
        assert_eq!(
            span(Partial, Detector::Iban, "GB82 WEST 1234 5698 7654 32"),
            "**** **** **** **** **54 32"
        );
        assert_eq!(
            span(Partial, Detector::AwsAccessKey, "AKIAIOSFODNN7EXAMPLE"),
            "****************MPLE"
        );
        assert_eq!(
            span(Partial, Detector::PrivateKey, "-----BEGIN PRIVATE KEY-----"),
            "[REDACTED:PRIVATE_KEY]"
        );
        assert_eq!(whole(Partial, "short"), "*****");
        // Short values show little: a one- or two-letter local part none of it, a short
        // number two digits.
        assert_eq!(span(Partial, Detector::Email, "a@corp.com"), "***@corp.com");
        assert_eq!(span(Partial, Detector::Email, "al@corp.com"), "***@corp.com");
        assert_eq!(span(Partial, Detector::Phone, "+12345678"), "+******78");
        assert_eq!(whole(Partial, "a long value here"), "*************here");
        assert_eq!(whole(Partial, "jane@example.org"), "j***@example.org");
        assert_eq!(whole(Partial, "415-555-0132"), "***-***-0132");
        assert_eq!(whole(Partial, "ünïcödé välüé"), "*********älüé");
        let mut out = String::new();
        mask_whole(Partial, r#"{"password":"hunter2"}"#, true, &key(1), &mut out);
        assert_eq!(out, REDACTED);
    }

    #[test]
    fn hash_is_keyed_and_stable() {
        let h = whole(Hash, "john@example.com");
        assert!(
            h.starts_with(HASH_PREFIX) && h.len() == HASH_PREFIX.len() + HASH_CHARS,
            "{h}"
        );
        assert!(
            h[HASH_PREFIX.len()..]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(h, whole(Hash, "john@example.com"));
        assert_eq!(h, span(Hash, Detector::Email, "john@example.com"));
        // An address percent-encoded once or twice (in a URL, a query) joins its plain form.
        assert_eq!(h, span(Hash, Detector::Email, "john%40example.com"));
        assert_eq!(h, span(Hash, Detector::Email, "john%2540example.com"));
        assert_ne!(h, span(Hash, Detector::Email, "john%40example.org"));
        assert_ne!(h, whole(Hash, "john@example.org"));
        let mut other = String::new();
        mask_whole(Hash, "john@example.com", false, &key(2), &mut other);
        assert_ne!(h, other);
    }

    #[test]
    fn strongest_wins() {
        assert_eq!(strongest(Partial, Hash), Hash);
        assert_eq!(strongest(Redact, Hash), Redact);
        assert_eq!(strongest(Partial, Redact), Redact);
        assert_eq!(strongest(Partial, Partial), Partial);
    }

    #[test]
    fn debug_hides_the_key() {
        assert_eq!(format!("{:?}", key(7)), "HashKey(..)");
        let (a, b) = (HashKey::random(), HashKey::random());
        let (mut x, mut y) = (String::new(), String::new());
        a.hash_into(b"v", &mut x);
        b.hash_into(b"v", &mut y);
        assert_ne!(x, y);
    }
}
