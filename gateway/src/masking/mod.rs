//! Masking: what agents see of responses, and what logs and recordings keep of values.
//!
//! A [`MaskingPlan`] compiles the masking rules of the AccessPolicies that apply to a request:
//! JSON field selectors (`jsonFields`), content detectors, and result columns for the PostgreSQL
//! path. JSON bodies are rewritten in one streaming pass ([`MaskingPlan::mask_json`]); free text
//! (headers, log lines, SQL values) goes through the detectors alone ([`MaskingPlan::mask_text`]).
//! Anything the masker cannot read is an error, so callers can fail closed.

pub(crate) mod detectors;
mod json;
mod path;
pub mod secret;
mod strategy;

use std::borrow::Cow;
use std::sync::Arc;

use agentgate_crds::policy::{Detector, MaskingRule, MaskingStrategy, UnparseablePolicy};

use crate::policy::glob::Glob;
use detectors::DetectorSet;
use path::PathSet;
use strategy::FieldMask;

pub use detectors::{ALL_DETECTORS, label as detector_label};
pub use path::{MAX_FIELD_SELECTORS, MAX_PATH_INDEX, MAX_PATH_STEPS};
pub use strategy::{
    HASH_CHARS, HASH_PREFIX, HashKey, PARTIAL_KEEP, PARTIAL_MIN_LEN, REDACTED, SECRET_REDACTED,
};

/// Bodies bigger than this are refused when masking applies: the rewriter holds the whole body.
pub const MAX_MASKED_BODY: usize = 16 * 1024 * 1024;
/// Deepest nesting of objects and arrays accepted.
pub const MAX_JSON_DEPTH: usize = 128;

/// The annotations in which apply tools repeat a whole manifest, a Secret's data included: each
/// has a selector in [`KUBERNETES_SECRET_FIELDS`], and a JSON patch of a Secret may not copy out
/// of them.
pub const SECRET_COPY_ANNOTATIONS: [&str; 3] = [
    "kubectl.kubernetes.io/last-applied-configuration",
    "kapp.k14s.io/original",
    "objectset.rio.cattle.io/applied",
];

/// Selectors that hide the values of Kubernetes Secrets: each value of `data` and `stringData` at
/// any depth (a Secret, a SecretList, a watch event), as [`strategy::SECRET_REDACTED`] so the
/// object keeps its shape and typed clients still decode it, and the annotations in which
/// apply tools repeat the whole manifest, data included: kubectl's last-applied configuration,
/// kapp's original and Rancher's applied object set (gzipped, where detectors would not see it).
const KUBERNETES_SECRET_FIELDS: [(&str, FieldMask); 5] = [
    ("$..data.*", FieldMask::SecretValue),
    ("$..stringData.*", FieldMask::SecretValue),
    (
        "$..['kubectl.kubernetes.io/last-applied-configuration']",
        FieldMask::Strategy(MaskingStrategy::Redact),
    ),
    (
        "$..['kapp.k14s.io/original']",
        FieldMask::Strategy(MaskingStrategy::Redact),
    ),
    (
        "$..['objectset.rio.cattle.io/applied']",
        FieldMask::Strategy(MaskingStrategy::Redact),
    ),
];

/// What masking did to one body or text.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MaskReport {
    /// Values replaced because a `jsonFields` selector picked them.
    pub fields: u64,
    /// Spans (or card numbers) replaced because a detector found them.
    pub detections: u64,
    /// Detections per detector, in the order of [`ALL_DETECTORS`].
    pub by_detector: [u64; ALL_DETECTORS.len()],
}

impl MaskReport {
    /// Detections by one detector.
    pub fn detected(&self, d: Detector) -> u64 {
        self.by_detector[detectors::index(d)]
    }

    pub fn is_empty(&self) -> bool {
        self.fields == 0 && self.detections == 0
    }

    /// Adds another report (of the next chunk, the next value).
    pub fn add(&mut self, other: &MaskReport) {
        self.fields += other.fields;
        self.detections += other.detections;
        for (a, b) in self.by_detector.iter_mut().zip(other.by_detector) {
            *a += b;
        }
    }

    fn count(&mut self, d: Detector) {
        self.detections += 1;
        self.by_detector[detectors::index(d)] += 1;
    }
}

/// Why a body could not be masked. Messages never include body content.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MaskError {
    #[error("malformed JSON at byte {offset}: {reason}")]
    Malformed { offset: usize, reason: &'static str },
    #[error("JSON nested deeper than {MAX_JSON_DEPTH} levels")]
    TooDeep,
    #[error("body larger than {MAX_MASKED_BODY} bytes")]
    TooLarge,
}

/// A masking rule that cannot be compiled: the field (`masking[1].jsonFields[0]`) and the problem.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct MaskingConfigError {
    pub field: String,
    pub problem: String,
}

/// The compiled masking of one request: immutable, cheap to clone and share between tasks.
#[derive(Clone, Debug)]
pub struct MaskingPlan {
    inner: Arc<Inner>,
}

#[derive(Clone, Debug)]
struct Inner {
    paths: PathSet,
    /// The strategy of each detector in use, indexed like [`ALL_DETECTORS`].
    detectors: [Option<MaskingStrategy>; ALL_DETECTORS.len()],
    active: DetectorSet,
    columns: Vec<ColumnRule>,
    refuse: bool,
    /// Bodies are withheld from records whatever they hold (see [`MaskingPlan::withholding_bodies`]).
    withhold: bool,
    /// Kubernetes Secrets' values are masked (see [`MaskingPlan::with_kubernetes_secrets`]): a
    /// container a Hash rule selects is redacted instead, as its hash would be one of the values
    /// inside, which an agent could match against objects it makes (a ConfigMap of guesses).
    secret_values: bool,
    key: HashKey,
}

impl Inner {
    fn strategy_of(&self, d: Detector) -> MaskingStrategy {
        self.detectors[detectors::index(d)].unwrap_or(MaskingStrategy::Redact)
    }

    fn add_detector(&mut self, d: Detector, s: MaskingStrategy) {
        let slot = &mut self.detectors[detectors::index(d)];
        *slot = Some(slot.map_or(s, |t| strategy::strongest(t, s)));
        self.active.insert(d);
    }
}

/// `schema.table.column`, each part a glob.
#[derive(Clone, Debug)]
struct ColumnRule {
    /// As written, for saying which rule matches nothing.
    spec: String,
    schema: Glob,
    table: Glob,
    column: Glob,
    strategy: MaskingStrategy,
}

impl ColumnRule {
    fn parse(spec: &str, strategy: MaskingStrategy) -> Result<Self, String> {
        let parts: Vec<&str> = spec.split('.').collect();
        let [schema, table, column] = parts.as_slice() else {
            return Err(format!("{spec:?}: expected schema.table.column"));
        };
        let glob = |part: &str| {
            if part.is_empty() {
                return Err(format!("{spec:?}: expected schema.table.column"));
            }
            Glob::value(part).map_err(|e| format!("{spec:?}: {e}"))
        };
        Ok(Self {
            spec: spec.to_string(),
            schema: glob(schema)?,
            table: glob(table)?,
            column: glob(column)?,
            strategy,
        })
    }
}

impl MaskingPlan {
    /// A plan that masks nothing (yet): a base for [`with_kubernetes_secrets`](Self::with_kubernetes_secrets)
    /// and [`merge`](Self::merge).
    pub fn empty(key: HashKey) -> Self {
        Self {
            inner: Arc::new(Inner {
                paths: PathSet::default(),
                detectors: [None; ALL_DETECTORS.len()],
                active: DetectorSet::default(),
                columns: Vec::new(),
                refuse: false,
                withhold: false,
                secret_values: false,
                key,
            }),
        }
    }

    /// Every detector, redacting: for text logged before the plan that applies is known (a
    /// refused request's path), which may name what a policy would have masked.
    pub fn every_detector() -> &'static MaskingPlan {
        static PLAN: std::sync::OnceLock<MaskingPlan> = std::sync::OnceLock::new();
        PLAN.get_or_init(|| {
            let rule: MaskingRule = serde_json::from_value(serde_json::json!({"detectors": [
                "Email", "Phone", "CreditCard", "IBAN", "AwsAccessKey", "GcpApiKey", "OktaApiToken", "JWT", "PrivateKey"
            ]}))
            .expect("a valid rule");
            Self::compile(&[&rule], HashKey::process()).unwrap_or_else(|_| Self::empty(HashKey::process()))
        })
    }

    /// Compiles the masking rules of several AccessPolicies. Errors name the rule index and field,
    /// e.g. `masking[1].jsonFields[0]: ...`.
    pub fn compile(rules: &[&MaskingRule], key: HashKey) -> Result<Self, MaskingConfigError> {
        let mut inner = Arc::unwrap_or_clone(Self::empty(key).inner);
        let mut selectors = Vec::new();
        for (i, rule) in rules.iter().enumerate() {
            let error = |list: &str, j: usize, problem: String| MaskingConfigError {
                field: format!("masking[{i}].{list}[{j}]"),
                problem,
            };
            for (j, field) in rule.json_fields.iter().enumerate() {
                let parsed =
                    path::parse(field).map_err(|p| error("jsonFields", j, format!("{field:?}: {p}")))?;
                selectors.push((parsed, FieldMask::from(rule.strategy)));
            }
            for (j, column) in rule.columns.iter().enumerate() {
                let compiled =
                    ColumnRule::parse(column, rule.strategy).map_err(|p| error("columns", j, p))?;
                inner.columns.push(compiled);
            }
            for &d in &rule.detectors {
                inner.add_detector(d, rule.strategy);
            }
            inner.refuse |= rule.on_unparseable == UnparseablePolicy::Refuse;
        }
        if selectors.len() > MAX_FIELD_SELECTORS {
            return Err(MaskingConfigError {
                field: "masking".into(),
                problem: format!("more than {MAX_FIELD_SELECTORS} jsonFields in all"),
            });
        }
        inner.paths = PathSet::new(selectors);
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// Redacts the values of Kubernetes Secrets (`$..data`, `$..stringData`, and the
    /// last-applied-configuration annotation), failing closed on bodies that cannot be read.
    pub fn with_kubernetes_secrets(self) -> Self {
        let mut inner = Arc::unwrap_or_clone(self.inner);
        let secrets = KUBERNETES_SECRET_FIELDS
            .iter()
            .filter_map(|(p, mask)| Some((path::parse(p).ok()?, *mask)));
        inner.paths = PathSet::new(inner.paths.rules().iter().cloned().chain(secrets));
        inner.refuse = true;
        inner.secret_values = true;
        Self {
            inner: Arc::new(inner),
        }
    }

    /// This plan, also redacting the tokens of Kubernetes token requests and reviews: the one
    /// a TokenRequest answers with (`status.token`) and the one a TokenReview sends and gets
    /// back (`spec.token`). For records and approvers: the agent that sent or asked for a token
    /// has it, but no live token may sit in a recording.
    pub fn with_kubernetes_token(self) -> Self {
        let mut inner = Arc::unwrap_or_clone(self.inner);
        let tokens = ["$.status.token", "$.spec.token"]
            .into_iter()
            .filter_map(|p| Some((path::parse(p).ok()?, FieldMask::Strategy(MaskingStrategy::Redact))));
        inner.paths = PathSet::new(inner.paths.rules().iter().cloned().chain(tokens));
        inner.refuse = true;
        Self {
            inner: Arc::new(inner),
        }
    }

    /// This plan, for a body whose secrets sit where no rule can find them (a JSON patch of a
    /// Kubernetes Secret puts the value under `value`, not `data`): records keep its size only.
    pub fn withholding_bodies(self) -> Self {
        let mut inner = Arc::unwrap_or_clone(self.inner);
        inner.withhold = true;
        Self {
            inner: Arc::new(inner),
        }
    }

    /// Whether records keep bodies' sizes only (see [`MaskingPlan::withholding_bodies`]).
    pub fn withholds_bodies(&self) -> bool {
        self.inner.withhold
    }

    /// Both plans' masking, the strongest strategy winning where they overlap. The hash key is
    /// `self`'s.
    pub fn merge(&self, other: &MaskingPlan) -> MaskingPlan {
        let (a, b) = (&self.inner, &other.inner);
        let mut inner = Inner::clone(a);
        inner.paths = PathSet::new(a.paths.rules().iter().chain(b.paths.rules()).cloned());
        for (d, s) in ALL_DETECTORS.iter().zip(b.detectors) {
            if let Some(s) = s {
                inner.add_detector(*d, s);
            }
        }
        inner.columns.extend(b.columns.iter().cloned());
        inner.refuse |= b.refuse;
        inner.withhold |= b.withhold;
        inner.secret_values |= b.secret_values;
        Self {
            inner: Arc::new(inner),
        }
    }

    /// No field selectors, no detectors, no column rules.
    pub fn is_empty(&self) -> bool {
        self.inner.paths.is_empty() && self.inner.active.is_empty() && self.inner.columns.is_empty()
    }

    /// Whether any JSON field rule applies.
    pub fn has_field_rules(&self) -> bool {
        !self.inner.paths.is_empty()
    }

    /// Whether any rule masks result columns (PostgreSQL).
    pub fn has_column_rules(&self) -> bool {
        !self.inner.columns.is_empty()
    }

    /// Whether any content detector is active.
    pub fn has_detectors(&self) -> bool {
        !self.inner.active.is_empty()
    }

    /// Refuse if any contributing rule says Refuse.
    pub fn on_unparseable(&self) -> UnparseablePolicy {
        if self.inner.refuse {
            UnparseablePolicy::Refuse
        } else {
            UnparseablePolicy::Allow
        }
    }

    /// Rewrites one JSON text, or several top-level values separated by whitespace (NDJSON,
    /// Kubernetes watch streams), appending to `out`. Input must be strict JSON (RFC 8259);
    /// anything else is an error and `out` is left unchanged, so the caller can fail closed.
    /// Whitespace-only input has nothing to mask and is copied. Output is valid JSON: selected
    /// values of any type become strings, detected spans are replaced inside their strings, and
    /// everything else is copied byte for byte.
    pub fn mask_json(&self, input: &[u8], out: &mut Vec<u8>) -> Result<MaskReport, MaskError> {
        json::rewrite(&self.inner, input, out)
    }

    /// Masks the first bytes of a JSON text that was cut (see `json::rewrite_prefix`): the
    /// output covers the values that ended before the cut. Returns how many input bytes it
    /// covers, 0 when the text does not start as JSON does or no value ended.
    pub fn mask_json_prefix(
        &self,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(MaskReport, usize), MaskError> {
        json::rewrite_prefix(&self.inner, input, out)
    }

    /// Masks the first bytes of a text that was cut: the detectors, as decoded too (see
    /// [`MaskingPlan::mask_escaped_text`]), over the text up to its last separator. The word the
    /// cut went through is left out: `4111 1111 1111 111` is no card to a detector, and one
    /// more digit makes it one.
    pub fn mask_text_prefix<'a>(&self, input: &'a str, url_encoded: bool) -> (Cow<'a, str>, MaskReport) {
        let whole = input
            .rfind(|c: char| {
                matches!(
                    c,
                    '\n' | '\r'
                        | '"'
                        | '\''
                        | ','
                        | ';'
                        | '&'
                        | '='
                        | '<'
                        | '>'
                        | '{'
                        | '}'
                        | '['
                        | ']'
                        | '|'
                        | '\t'
                )
            })
            .map_or(0, |i| i + 1);
        self.mask_escaped_text(&input[..whole], url_encoded)
    }

    /// What the plan's detectors find in `text`, sorted and merged.
    fn find(&self, text: &[u8]) -> Vec<detectors::Span> {
        let mut spans = Vec::new();
        detectors::find(text, detectors::Features::of(text), self.inner.active, &mut spans);
        spans
    }

    /// Runs the detectors over free text (bodies a rule lets through unparsed, header values, SQL
    /// values, log lines). Borrows the input when nothing is found.
    pub fn mask_text<'a>(&self, input: &'a str) -> (Cow<'a, str>, MaskReport) {
        let spans = self.find(input.as_bytes());
        self.replace_spans(input, &spans, |found| Cow::Borrowed(found))
    }

    /// `input` with each of `spans` (sorted, not overlapping) masked as the value `value` reads
    /// from its text; borrowed when there are none.
    fn replace_spans<'a>(
        &self,
        input: &'a str,
        spans: &[detectors::Span],
        value: impl Fn(&str) -> Cow<'_, str>,
    ) -> (Cow<'a, str>, MaskReport) {
        let mut report = MaskReport::default();
        if spans.is_empty() {
            return (Cow::Borrowed(input), report);
        }
        let mut out = String::with_capacity(input.len());
        let mut prev = 0;
        for span in spans {
            // Spans start and end on ASCII bytes or whole escapes, so `get` always succeeds.
            out.push_str(input.get(prev..span.start).unwrap_or_default());
            let found = value(input.get(span.start..span.end).unwrap_or_default());
            let strategy = self.inner.strategy_of(span.detector);
            strategy::mask_span(strategy, span.detector, &found, &self.inner.key, &mut out);
            report.count(span.detector);
            prev = span.end;
        }
        out.push_str(input.get(prev..).unwrap_or_default());
        (Cow::Owned(out), report)
    }

    /// Runs the detectors over text as written and as unescaped: percent escapes (and `+` as a
    /// space when `plus_is_space`, as in a query or a form) and JSON string escapes (JSON the
    /// masker could not parse). A card sent as `4111+1111+1111+1111`, `card%3A4111111111111111`
    /// or `"\n4111111111111111"`, or an address as `a\u0040b.com`, hides from a scan of the
    /// bytes alone. A value found unescaped replaces the escapes it came from, masked as decoded.
    pub fn mask_escaped_text<'a>(&self, input: &'a str, plus_is_space: bool) -> (Cow<'a, str>, MaskReport) {
        if self.inner.active.is_empty() {
            return (Cow::Borrowed(input), MaskReport::default());
        }
        let bytes = input.as_bytes();
        if !bytes
            .iter()
            .any(|&b| b == b'%' || b == b'\\' || (plus_is_space && b == b'+'))
        {
            return self.mask_text(input);
        }
        let spans = escaped_spans(&self.inner, bytes, plus_is_space);
        self.replace_spans(input, &spans, |raw| {
            Cow::Owned(String::from_utf8_lossy(&unescaped(raw.as_bytes(), plus_is_space)).into_owned())
        })
    }

    /// The strategy for a result column, if a column rule matches it (the strongest, if several do).
    pub fn column_strategy(&self, schema: &str, table: &str, column: &str) -> Option<MaskingStrategy> {
        self.inner
            .columns
            .iter()
            .filter(|r| r.schema.matches(schema) && r.table.matches(table) && r.column.matches(column))
            .map(|r| r.strategy)
            .reduce(strategy::strongest)
    }

    /// The column rules, as written, that match none of `columns` (schema, table, column): a
    /// misspelt name masks nothing, silently unless someone is told.
    pub fn unmatched_column_rules<'a>(
        &self,
        columns: impl IntoIterator<Item = (&'a str, &'a str, &'a str)>,
    ) -> Vec<String> {
        let rules = &self.inner.columns;
        let mut matched = vec![false; rules.len()];
        for (schema, table, column) in columns {
            for (hit, r) in matched.iter_mut().zip(rules) {
                *hit =
                    *hit || (r.schema.matches(schema) && r.table.matches(table) && r.column.matches(column));
            }
            if matched.iter().all(|m| *m) {
                break;
            }
        }
        let mut unmatched: Vec<String> = rules
            .iter()
            .zip(matched)
            .filter(|(_, m)| !m)
            .map(|(r, _)| r.spec.clone())
            .collect();
        unmatched.sort();
        unmatched.dedup();
        unmatched
    }

    /// Applies a strategy to a whole value (a masked column): `[REDACTED]`, the Partial form, or
    /// the keyed hash.
    pub fn mask_value(&self, strategy: MaskingStrategy, value: &str) -> String {
        let mut out = String::new();
        strategy::mask_whole(strategy, value, false, &self.inner.key, &mut out);
        out
    }
}

/// What the detectors find in `bytes` as written and as unescaped (see
/// [`MaskingPlan::mask_escaped_text`]), as spans of `bytes`, sorted, overlaps merged.
fn escaped_spans(inner: &Inner, bytes: &[u8], plus_is_space: bool) -> Vec<detectors::Span> {
    let find = |text: &[u8]| {
        let mut spans = Vec::new();
        detectors::find(text, detectors::Features::of(text), inner.active, &mut spans);
        spans
    };
    let decoded = unescaped(bytes, plus_is_space);
    let mut spans = find(bytes);
    let found = find(&decoded);
    // Where each find's ends fall in the text as written, in one more pass over it: a table
    // of every byte's origin would cost eight bytes per byte of a 16 MiB body.
    let points: Vec<usize> = found.iter().flat_map(|s| [s.start, s.end]).collect();
    let origin = source_offsets(bytes, plus_is_space, &points);
    spans.extend(
        found
            .iter()
            .zip(origin.chunks_exact(2))
            .map(|(s, o)| detectors::Span {
                start: o[0],
                end: o[1],
                detector: s.detector,
            }),
    );
    // Overlapping finds of the two views are masked as one.
    detectors::merge_overlaps(&mut spans);
    spans
}

/// `bytes` with percent escapes and JSON string escapes decoded, and `+` read as a space when
/// asked. What is not a whole escape stays as it is.
fn unescaped(bytes: &[u8], plus_is_space: bool) -> Vec<u8> {
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let (len, unit, n) = escape_at(bytes, i, plus_is_space);
        decoded.extend_from_slice(&unit[..n]);
        i += len;
    }
    decoded
}

/// For each offset in `points` (ascending) into `unescaped(bytes)`, the offset in `bytes` of the
/// escape or byte it decodes from (`bytes.len()` at its end).
fn source_offsets(bytes: &[u8], plus_is_space: bool, points: &[usize]) -> Vec<usize> {
    let mut out = Vec::with_capacity(points.len());
    let (mut i, mut d) = (0, 0);
    for &p in points {
        while i < bytes.len() {
            let (len, _, n) = escape_at(bytes, i, plus_is_space);
            if d + n > p {
                break;
            }
            i += len;
            d += n;
        }
        out.push(i);
    }
    out
}

/// The escape or byte at `i`: how many bytes of `bytes` it takes, what it decodes to, and how
/// many bytes of that. A `\u` escape of a lone surrogate is no escape here, as in JSON.
fn escape_at(bytes: &[u8], i: usize, plus_is_space: bool) -> (usize, [u8; 4], usize) {
    let one = |b: u8| (1, [b, 0, 0, 0], 1);
    match bytes[i] {
        b'%' => match bytes.get(i..i + 3).and_then(detectors::escaped_byte) {
            Some(b) => (3, [b, 0, 0, 0], 1),
            None => one(b'%'),
        },
        b'+' if plus_is_space => one(b' '),
        b'\\' => match json::unescape(bytes, i) {
            Ok((c, next)) => {
                let mut unit = [0; 4];
                let n = c.encode_utf8(&mut unit).len();
                (next - i, unit, n)
            }
            Err(_) => one(b'\\'),
        },
        b => one(b),
    }
}

#[cfg(test)]
mod tests;
