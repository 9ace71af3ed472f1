//! JSONPath-style field selectors, compiled into one small automaton so the streaming rewriter can
//! tell, member by member, whether a value is selected without building a tree.
//!
//! Supported: `$.a.b`, `$.a[0]`, `$.a[*]`, `$.*`, `$['key with.dots']`, `$..name` (any depth),
//! `$..*`, `$..['k']`, `$..[0]`, and combinations. Filters, slices, unions and scripts are refused.

use super::strategy::{FieldMask, strongest_field};

/// Most steps in one selector.
pub const MAX_PATH_STEPS: usize = 64;
/// Most selectors in one plan; each costs a comparison per member where it is live.
pub const MAX_FIELD_SELECTORS: usize = 4096;
/// Largest array index a selector may name.
pub const MAX_PATH_INDEX: u64 = u32::MAX as u64;

/// What one step selects among a value's children.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Selector {
    /// An object member, by its decoded name.
    Name(Box<[u8]>),
    /// An array element.
    Index(u64),
    /// Every member or element.
    Any,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Step {
    /// `..`: the step applies at any depth below the previous one.
    descend: bool,
    selector: Selector,
}

/// One parsed selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FieldPath(Vec<Step>);

/// A child of a JSON value, as steps see it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Label<'a> {
    Name(&'a [u8]),
    Index(u64),
}

impl Selector {
    fn matches(&self, label: Label<'_>) -> bool {
        match (self, label) {
            (Self::Any, _) => true,
            (Self::Name(n), Label::Name(l)) => **n == *l,
            (Self::Index(i), Label::Index(l)) => *i == l,
            // An array may arrive as an object keyed by its indexes (PHP's `json_encode` of a
            // sparse array does this), and a name of digits may meet an array: the rule still
            // names that place, so both read it. Masking more is the safe side.
            (Self::Index(i), Label::Name(l)) => index_name(l) == Some(*i),
            (Self::Name(n), Label::Index(l)) => index_name(n) == Some(l),
        }
    }
}

/// The index a member name spells in canonical decimal (`"0"`, `"17"`; not `"07"` or `"+1"`).
fn index_name(name: &[u8]) -> Option<u64> {
    match name {
        [b'0'] => Some(0),
        [b'1'..=b'9', rest @ ..] if rest.len() < 20 && rest.iter().all(u8::is_ascii_digit) => {
            std::str::from_utf8(name).ok()?.parse().ok()
        }
        _ => None,
    }
}

/// Parses a selector; the error names the character where it goes wrong.
pub(crate) fn parse(path: &str) -> Result<FieldPath, String> {
    let b = path.as_bytes();
    if b.first() != Some(&b'$') {
        return Err("must start with `$`".into());
    }
    let err = |i: usize, what: &str| Err(format!("{what} (at character {})", i + 1));
    let mut steps = Vec::new();
    let mut i = 1;
    while i < b.len() {
        let descend = b[i..].starts_with(b"..");
        let selector = match b[i] {
            b'.' => {
                i += if descend { 2 } else { 1 };
                match b.get(i) {
                    Some(b'*') => {
                        i += 1;
                        Selector::Any
                    }
                    Some(b'[') if descend => bracket(path, &mut i)?,
                    Some(&c) if is_name_byte(c) => {
                        let start = i;
                        while b.get(i).is_some_and(|&c| is_name_byte(c)) {
                            i += 1;
                        }
                        Selector::Name(path.as_bytes()[start..i].into())
                    }
                    None => return err(i, "a name or `*` must follow `.` or `..`"),
                    Some(_) => {
                        return err(
                            i,
                            "unexpected character; write names with other characters as ['...']",
                        );
                    }
                }
            }
            b'[' => bracket(path, &mut i)?,
            _ => return err(i, "expected `.`, `..` or `[`"),
        };
        steps.push(Step { descend, selector });
        if steps.len() > MAX_PATH_STEPS {
            return Err(format!("more than {MAX_PATH_STEPS} steps"));
        }
    }
    if steps.is_empty() {
        return Err("selects the whole document; name a field".into());
    }
    Ok(FieldPath(steps))
}

/// Letters, digits, `_`, `-` and any non-ASCII character (whole UTF-8 sequences, since every byte
/// of one is non-ASCII).
fn is_name_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'-' || !c.is_ascii()
}

/// `[0]`, `[*]`, `['name']` or `["name"]`, starting at `*i` (the `[`).
fn bracket(path: &str, i: &mut usize) -> Result<Selector, String> {
    let b = path.as_bytes();
    let at = |i: usize, what: &str| format!("{what} (at character {})", i + 1);
    *i += 1;
    let selector = match b.get(*i) {
        Some(b'*') => {
            *i += 1;
            Selector::Any
        }
        Some(&q @ (b'\'' | b'"')) => {
            *i += 1;
            let mut name = Vec::new();
            loop {
                match b.get(*i) {
                    None => return Err(at(*i, "unterminated quoted name")),
                    Some(&c) if c == q => break,
                    Some(b'\\') => match b.get(*i + 1) {
                        Some(&e @ (b'\\' | b'\'' | b'"')) => {
                            name.push(e);
                            *i += 1;
                        }
                        _ => return Err(at(*i, "only \\\\, \\' and \\\" escapes are supported")),
                    },
                    Some(&c) => name.push(c),
                }
                *i += 1;
            }
            *i += 1;
            Selector::Name(name.into())
        }
        Some(b'0'..=b'9') => {
            let start = *i;
            while b.get(*i).is_some_and(u8::is_ascii_digit) {
                *i += 1;
            }
            let digits = &path[start..*i];
            if digits.len() > 1 && digits.starts_with('0') {
                return Err(at(start, "index with a leading zero"));
            }
            match digits.parse::<u64>() {
                Ok(n) if n <= MAX_PATH_INDEX => Selector::Index(n),
                _ => return Err(at(start, "index too large")),
            }
        }
        Some(b'-') => return Err(at(*i, "negative indexes are not supported")),
        Some(b'?') => return Err(at(*i, "filter expressions are not supported")),
        Some(b'(') => return Err(at(*i, "script expressions are not supported")),
        Some(b':') => return Err(at(*i, "slices are not supported")),
        _ => return Err(at(*i, "expected an index, `*` or a quoted name after `[`")),
    };
    match b.get(*i) {
        Some(b']') => {
            *i += 1;
            Ok(selector)
        }
        Some(b',') => Err(at(*i, "unions are not supported; write one selector per field")),
        Some(b':') => Err(at(*i, "slices are not supported")),
        _ => Err(at(*i, "expected `]`")),
    }
}

/// A position of the automaton: a step still to match, or a selector matched in full.
#[derive(Clone, Debug)]
enum Node {
    Step(Step),
    Accept(FieldMask),
}

/// All selectors of a plan as one automaton. A value's state is the set of positions live at it
/// (sorted, no duplicates); a child's set follows from its parent's set and its label alone, so
/// the rewriter keeps one set per open container and never looks back.
#[derive(Clone, Debug, Default)]
pub(crate) struct PathSet {
    rules: Vec<(FieldPath, FieldMask)>,
    nodes: Vec<Node>,
    roots: Vec<u32>,
}

impl PathSet {
    /// Builds the automaton; the same selector twice keeps the strongest strategy.
    pub fn new(rules: impl IntoIterator<Item = (FieldPath, FieldMask)>) -> Self {
        let mut deduped: Vec<(FieldPath, FieldMask)> = Vec::new();
        for (path, strategy) in rules {
            match deduped.iter_mut().find(|(p, _)| *p == path) {
                Some((_, s)) => *s = strongest_field(*s, strategy),
                None => deduped.push((path, strategy)),
            }
        }
        let mut nodes = Vec::new();
        let mut roots = Vec::new();
        for (FieldPath(steps), strategy) in &deduped {
            roots.push(nodes.len() as u32);
            nodes.extend(steps.iter().cloned().map(Node::Step));
            nodes.push(Node::Accept(*strategy));
        }
        Self {
            rules: deduped,
            nodes,
            roots,
        }
    }

    pub fn rules(&self) -> &[(FieldPath, FieldMask)] {
        &self.rules
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The set of a top-level value.
    pub fn roots(&self) -> &[u32] {
        &self.roots
    }

    /// Appends to `states` the set of the child `label` of the value whose set is
    /// `states[parent]`, and returns the strategy when the child is selected (the strongest, if
    /// several selectors end there). Accepting positions are not kept: a selected value is
    /// replaced whole, so nothing below it is looked at.
    pub fn step(
        &self,
        states: &mut Vec<u32>,
        parent: std::ops::Range<usize>,
        label: Label<'_>,
    ) -> Option<FieldMask> {
        let first = states.len();
        let mut selected = None;
        for k in parent {
            let p = states[k];
            let Some(Node::Step(step)) = self.nodes.get(p as usize) else {
                continue;
            };
            // Parent sets are sorted, and each position yields itself then its successor, so
            // the new set comes out sorted and duplicates are adjacent.
            let push = |q: u32, states: &mut Vec<u32>| {
                if states.len() == first || states.last() != Some(&q) {
                    states.push(q);
                }
            };
            if step.descend {
                push(p, states);
            }
            if step.selector.matches(label) {
                match self.nodes.get(p as usize + 1) {
                    Some(Node::Accept(s)) => selected = Some(selected.map_or(*s, |t| strongest_field(t, *s))),
                    Some(Node::Step(_)) => push(p + 1, states),
                    None => {}
                }
            }
        }
        selected
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentgate_crds::policy::MaskingStrategy::{self, *};

    /// Walks `labels` from the root and returns the strategy of the last one, if selected; `None`
    /// also when an earlier label is already selected (its value would have been replaced).
    fn select(paths: &[(&str, MaskingStrategy)], labels: &[Label<'_>]) -> Option<MaskingStrategy> {
        let set = PathSet::new(
            paths
                .iter()
                .map(|(p, s)| (parse(p).unwrap(), FieldMask::from(*s))),
        );
        let mut states = set.roots().to_vec();
        let mut parent = 0..states.len();
        for (k, label) in labels.iter().enumerate() {
            let start = states.len();
            let selected = set.step(&mut states, parent.clone(), *label);
            if k + 1 == labels.len() {
                return selected.map(|m| match m {
                    FieldMask::Strategy(s) => s,
                    FieldMask::SecretValue => unreachable!("only strategies are given here"),
                });
            }
            if selected.is_some() {
                return None;
            }
            parent = start..states.len();
        }
        None
    }

    fn n(s: &str) -> Label<'_> {
        Label::Name(s.as_bytes())
    }

    #[test]
    fn every_form_parses_and_selects() {
        let r = Some(Redact);
        assert_eq!(select(&[("$.a.b", Redact)], &[n("a"), n("b")]), r);
        assert_eq!(select(&[("$.a.b", Redact)], &[n("a"), n("c")]), None);
        assert_eq!(select(&[("$.a.b", Redact)], &[n("x"), n("a"), n("b")]), None);
        assert_eq!(select(&[("$.a[1]", Redact)], &[n("a"), Label::Index(1)]), r);
        assert_eq!(select(&[("$.a[1]", Redact)], &[n("a"), Label::Index(0)]), None);
        assert_eq!(select(&[("$.a[*]", Redact)], &[n("a"), Label::Index(7)]), r);
        assert_eq!(select(&[("$.*", Redact)], &[n("zz")]), r);
        assert_eq!(select(&[("$.*", Redact)], &[Label::Index(3)]), r);
        assert_eq!(
            select(&[("$['key with.dots']", Redact)], &[n("key with.dots")]),
            r
        );
        assert_eq!(select(&[(r#"$["it's"].x"#, Redact)], &[n("it's"), n("x")]), r);
        assert_eq!(select(&[(r"$['a\'b']", Redact)], &[n("a'b")]), r);
        assert_eq!(
            select(&[("$.a[*].b", Redact)], &[n("a"), Label::Index(2), n("b")]),
            r
        );
        assert_eq!(select(&[("$.a[*].b", Redact)], &[n("a"), n("k"), n("b")]), r);
        assert_eq!(select(&[("$.naïve", Redact)], &[n("naïve")]), r);
        assert_eq!(select(&[("$[0]", Redact)], &[Label::Index(0)]), r);
        // Indexes and names of canonical digits read each other's places.
        assert_eq!(select(&[("$[0]", Redact)], &[n("0")]), r);
        assert_eq!(
            select(&[("$.items[1].ssn", Redact)], &[n("items"), n("1"), n("ssn")]),
            r
        );
        assert_eq!(select(&[("$.a.2", Redact)], &[n("a"), Label::Index(2)]), r);
        assert_eq!(select(&[("$['3']", Redact)], &[Label::Index(3)]), r);
        assert_eq!(select(&[("$[0]", Redact)], &[n("00")]), None);
        assert_eq!(select(&[("$[1]", Redact)], &[n("+1")]), None);
        assert_eq!(select(&[("$[1]", Redact)], &[n("01")]), None);
        assert_eq!(select(&[("$.a.1", Redact)], &[n("a"), Label::Index(2)]), None);
    }

    #[test]
    fn recursive_descent() {
        let r = Some(Redact);
        let email = [("$..email", Redact)];
        assert_eq!(select(&email, &[n("email")]), r);
        assert_eq!(select(&email, &[n("a"), Label::Index(4), n("b"), n("email")]), r);
        assert_eq!(select(&email, &[n("a"), n("emails")]), None);
        let creds = [("$..credentials.*", Redact)];
        assert_eq!(select(&creds, &[n("x"), n("credentials"), n("password")]), r);
        assert_eq!(select(&creds, &[n("credentials")]), None);
        assert_eq!(
            select(
                &[("$.items[*].profile.email", Redact)],
                &[n("items"), Label::Index(0), n("profile"), n("email")]
            ),
            r
        );
        assert_eq!(
            select(&[("$..a..b", Redact)], &[n("a"), n("x"), n("y"), n("b")]),
            r
        );
        assert_eq!(select(&[("$..a..b", Redact)], &[n("b")]), None);
        assert_eq!(select(&[("$..['x.y']", Redact)], &[n("q"), n("x.y")]), r);
        assert_eq!(select(&[("$..[1]", Redact)], &[n("q"), Label::Index(1)]), r);
        assert_eq!(select(&[("$..*", Redact)], &[n("q")]), r);
    }

    #[test]
    fn strongest_of_several_selectors_wins() {
        let rules = [
            ("$..email", Partial),
            ("$.user.email", Hash),
            ("$..email", Partial),
        ];
        assert_eq!(select(&rules, &[n("user"), n("email")]), Some(Hash));
        assert_eq!(select(&rules, &[n("other"), n("email")]), Some(Partial));
        let set = PathSet::new(
            rules
                .iter()
                .map(|(p, s)| (parse(p).unwrap(), FieldMask::from(*s))),
        );
        assert_eq!(set.rules().len(), 2);
    }

    #[test]
    fn states_stay_deduplicated() {
        let set = PathSet::new([(parse("$..a..a..a").unwrap(), FieldMask::from(Redact))]);
        let mut states = set.roots().to_vec();
        let mut parent = 0..states.len();
        let labels = [n("a"), n("a")]
            .into_iter()
            .chain(std::iter::repeat_n(n("x"), 50));
        for label in labels {
            let start = states.len();
            assert_eq!(set.step(&mut states, parent, label), None);
            parent = start..states.len();
            assert!(parent.len() <= 3, "{:?}", &states[parent]);
        }
    }

    #[test]
    fn unsupported_syntax_is_refused() {
        for (bad, why) in [
            ("a.b", "must start with `$`"),
            ("$", "whole document"),
            ("$.", "must follow"),
            ("$..", "must follow"),
            ("$.a..", "must follow"),
            ("$.a b", "expected `.`"),
            ("$.a[?(@.x==1)]", "filter"),
            ("$.a[0:2]", "slices"),
            ("$.a[-1]", "negative"),
            ("$.a[0,1]", "unions"),
            ("$['a','b']", "unions"),
            ("$.a[(@.length-1)]", "script"),
            ("$['a", "unterminated"),
            ("$.a[01]", "leading zero"),
            ("$.a[99999999999]", "too large"),
            ("$.a[x]", "expected an index"),
            ("$.a[0", "expected `]`"),
            ("$.@", "unexpected character"),
        ] {
            let err = parse(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
        assert!(parse(&format!("${}", ".a".repeat(MAX_PATH_STEPS + 1))).is_err());
        assert!(parse(&format!("${}", ".a".repeat(MAX_PATH_STEPS))).is_ok());
    }
}
