//! A statement's text as its record and its approver see it: masked by the detectors one lexical
//! piece at a time (each string literal, quoted identifier, comment and stretch of code alone),
//! so that no match spans what the statement does. A private key runs from its BEGIN line to its
//! END line, or to the end of the text without one: read whole, `id = 1 /* -----BEGIN PRIVATE
//! KEY----- */ OR true /* ... */` would show the approver `id = 1 /* [REDACTED:PRIVATE_KEY]` and
//! hide the `OR true` that the approval then releases.
//!
//! The lexing is PostgreSQL's with `standard_conforming_strings` on (the gateway pins it): `''`
//! doubles a quote, backslashes escape only in `E'...'`, block comments nest, dollar quotes end
//! at their own tag. An unterminated piece runs to the end of the text.

use crate::masking::MaskingPlan;

/// `sql` with the plan's detectors applied to each of its pieces alone; delimiters stay as they
/// are.
pub fn mask(plan: &MaskingPlan, sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    for piece in pieces(sql) {
        out.push_str(&sql[piece.start..piece.inner.0]);
        out.push_str(
            &plan
                .mask_escaped_text(&sql[piece.inner.0..piece.inner.1], false)
                .0,
        );
        out.push_str(&sql[piece.inner.1..piece.end]);
    }
    out
}

/// One lexical piece: `start..end`, of which `inner` is what the detectors read (all of it for
/// code; between the delimiters for literals and comments).
#[derive(Debug, PartialEq, Eq)]
struct Piece {
    start: usize,
    end: usize,
    inner: (usize, usize),
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80
}

/// The pieces of `sql`, in order, covering it exactly.
fn pieces(sql: &str) -> Vec<Piece> {
    let t = sql.as_bytes();
    let mut out = Vec::new();
    let mut code_start = 0;
    let mut i = 0;
    while i < t.len() {
        let Some((open, inner_end, end)) = quoted_at(t, i) else {
            i += 1;
            continue;
        };
        if code_start < i {
            out.push(Piece {
                start: code_start,
                end: i,
                inner: (code_start, i),
            });
        }
        out.push(Piece {
            start: i,
            end,
            inner: (i + open, inner_end),
        });
        i = end;
        code_start = end;
    }
    if code_start < t.len() {
        out.push(Piece {
            start: code_start,
            end: t.len(),
            inner: (code_start, t.len()),
        });
    }
    out
}

/// A literal or comment starting at `i`: the length of its opening delimiter, where its content
/// ends, and where it ends.
fn quoted_at(t: &[u8], i: usize) -> Option<(usize, usize, usize)> {
    let after_ident = i > 0 && is_ident(t[i - 1]);
    match t[i] {
        b'-' if t.get(i + 1) == Some(&b'-') => {
            let end = memchr::memchr(b'\n', &t[i..]).map_or(t.len(), |k| i + k);
            Some((2, end, end))
        }
        b'/' if t.get(i + 1) == Some(&b'*') => {
            // Block comments nest.
            let mut depth = 0usize;
            let mut k = i;
            while k + 1 < t.len() {
                match (t[k], t[k + 1]) {
                    (b'/', b'*') => {
                        depth += 1;
                        k += 2;
                    }
                    (b'*', b'/') => {
                        depth -= 1;
                        k += 2;
                        if depth == 0 {
                            return Some((2, k - 2, k));
                        }
                    }
                    _ => k += 1,
                }
            }
            Some((2, t.len(), t.len()))
        }
        b'\'' => {
            // `E'...'` (any case, not the end of a longer name) takes backslash escapes.
            let escapes = i > 0 && matches!(t[i - 1], b'E' | b'e') && (i < 2 || !is_ident(t[i - 2]));
            let mut k = i + 1;
            while k < t.len() {
                match t[k] {
                    b'\\' if escapes => k += 2,
                    b'\'' if t.get(k + 1) == Some(&b'\'') => k += 2,
                    b'\'' => return Some((1, k, k + 1)),
                    _ => k += 1,
                }
            }
            Some((1, t.len(), t.len()))
        }
        b'"' => {
            let mut k = i + 1;
            while k < t.len() {
                match t[k] {
                    b'"' if t.get(k + 1) == Some(&b'"') => k += 2,
                    b'"' => return Some((1, k, k + 1)),
                    _ => k += 1,
                }
            }
            Some((1, t.len(), t.len()))
        }
        // `$tag$ ... $tag$`; not `$1` (a parameter) nor a `$` inside a name.
        b'$' if !after_ident => {
            let tag_len = t[i + 1..].iter().take_while(|&&b| is_ident(b)).count();
            let tag_end = i + 1 + tag_len;
            if t.get(tag_end) != Some(&b'$') || t.get(i + 1).is_some_and(u8::is_ascii_digit) {
                return None;
            }
            let tag = &t[i..=tag_end];
            let body = tag_end + 1;
            match memchr::memmem::find(&t[body..], tag) {
                Some(k) => Some((tag.len(), body + k, body + k + tag.len())),
                None => Some((tag.len(), t.len(), t.len())),
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::masking::HashKey;

    fn plan() -> MaskingPlan {
        let rules: Vec<agentgate_crds::policy::MaskingRule> =
            serde_json::from_value(serde_json::json!([{"detectors": ["PrivateKey", "Email", "CreditCard"]}]))
                .unwrap();
        MaskingPlan::compile(&rules.iter().collect::<Vec<_>>(), HashKey::process()).unwrap()
    }

    fn kinds(sql: &str) -> Vec<&str> {
        pieces(sql).iter().map(|p| &sql[p.start..p.end]).collect()
    }

    #[test]
    fn pieces_follow_postgresql_lexing() {
        assert_eq!(
            kinds(
                "SELECT 'it''s', E'a\\'b', \"x\"\"y\" -- c\nFROM t /* a /* b */ c */ WHERE $q$ '$ $q$ = $1"
            ),
            [
                "SELECT ",
                "'it''s'",
                ", E",
                "'a\\'b'",
                ", ",
                "\"x\"\"y\"",
                " ",
                "-- c",
                "\nFROM t ",
                "/* a /* b */ c */",
                " WHERE ",
                "$q$ '$ $q$",
                " = $1",
            ]
        );
        // Unterminated pieces run to the end; `a$b` and `$1` are no dollar quotes.
        assert_eq!(kinds("SELECT a$b$ FROM 'open"), ["SELECT a$b$ FROM ", "'open"]);
        assert_eq!(kinds("/* open"), ["/* open"]);
        // Pieces cover the text exactly, whatever it is.
        for sql in ["", "'", "$", "$$", "--", "/*/", "E'\\", "x'y'z\"", "é'ü'"] {
            assert_eq!(kinds(sql).concat(), sql);
        }
    }

    /// A private key's match ends with the piece it starts in: what lies between two comments
    /// (or literals) stays in sight.
    #[test]
    fn a_match_never_spans_what_the_statement_does() {
        let p = plan();
        let sql = "DELETE FROM orders WHERE id = 1 /* -----BEGIN PRIVATE KEY----- */ OR true /* -----END PRIVATE KEY----- */";
        let masked = mask(&p, sql);
        assert!(masked.contains("*/ OR true /*"), "{masked}");
        assert!(masked.contains("[REDACTED:PRIVATE_KEY]"), "{masked}");
        let sql = "DELETE FROM t WHERE id = 1 -- -----BEGIN PRIVATE KEY-----\nOR true";
        assert!(mask(&p, sql).ends_with("\nOR true"), "{}", mask(&p, sql));
        let sql =
            "UPDATE t SET k = '-----BEGIN PRIVATE KEY-----\nMIIE\n', v = 'ada@example.com' WHERE id = 2";
        let masked = mask(&p, sql);
        assert!(
            !masked.contains("MIIE") && !masked.contains("ada@example.com"),
            "{masked}"
        );
        assert!(
            masked.ends_with("', v = '[REDACTED:EMAIL]' WHERE id = 2"),
            "{masked}"
        );
    }
}
