//! Globs used by policy rules, compiled once at configuration load.
//!
//! Path globs are segment-aware: `*` matches within one segment, `**` across segments, `?` one
//! character. Value globs (header values, table names, namespaces) treat `*` as any run of characters.

use regex::Regex;

/// Longest glob accepted; longer patterns are configuration errors.
pub const MAX_GLOB_LEN: usize = 1024;

/// A compiled glob.
#[derive(Clone, Debug)]
pub struct Glob {
    source: String,
    /// `None` for patterns without wildcards, compared as plain strings (the common case, and
    /// several times faster than a regex).
    regex: Option<Regex>,
    /// The regex ignoring ASCII case, for [`Glob::matches_ignoring_case`] (path globs only).
    folded: Option<Regex>,
}

impl Glob {
    /// A glob over `/`-separated paths.
    pub fn path(pattern: &str) -> Result<Self, String> {
        Self::build(pattern, Some('/'))
    }

    /// A glob over `.`-separated qualified names (`schema.table`), where `*` stays within one part.
    pub fn qualified(pattern: &str) -> Result<Self, String> {
        Self::build(pattern, Some('.'))
    }

    /// A glob over plain values, where `*` matches anything.
    pub fn value(pattern: &str) -> Result<Self, String> {
        Self::build(pattern, None)
    }

    fn build(pattern: &str, separator: Option<char>) -> Result<Self, String> {
        if pattern.len() > MAX_GLOB_LEN {
            return Err(format!("glob longer than {MAX_GLOB_LEN} characters"));
        }
        if pattern.contains("***") {
            return Err(format!("invalid glob {pattern:?}: `***` is ambiguous; use `**`"));
        }
        if !pattern.contains(['*', '?']) {
            return Ok(Self {
                source: pattern.to_string(),
                regex: None,
                folded: None,
            });
        }
        let mut re = String::with_capacity(pattern.len() * 2 + 2);
        re.push('^');
        let mut chars = pattern.chars().peekable();
        while let Some(c) = chars.next() {
            match (c, separator) {
                ('*', Some(sep)) if chars.peek() == Some(&'*') => {
                    chars.next();
                    // `/**/` also matches `/`, so `/a/**/b` covers `/a/b`.
                    if chars.peek() == Some(&sep) && re.ends_with(&regex::escape(&sep.to_string())) {
                        chars.next();
                        re.push_str(&format!("(?:.*{})?", regex::escape(&sep.to_string())));
                    } else {
                        re.push_str(".*");
                    }
                }
                ('*', Some(sep)) => re.push_str(&format!("[^{}]*", regex::escape(&sep.to_string()))),
                ('*', None) => re.push_str(".*"),
                ('?', Some(sep)) => re.push_str(&format!("[^{}]", regex::escape(&sep.to_string()))),
                ('?', None) => re.push('.'),
                _ => re.push_str(&regex::escape(&c.to_string())),
            }
        }
        re.push('$');
        // `*` and `?` match line breaks too: a value `DROP TABLE users\n` is `*DROP*`.
        let build = |case_insensitive: bool| {
            regex::RegexBuilder::new(&re)
                .dot_matches_new_line(true)
                .case_insensitive(case_insensitive)
                .build()
                .map_err(|e| format!("invalid glob {pattern:?}: {e}"))
        };
        let regex = build(false)?;
        // Restricting rules match paths and values without regard to ASCII case.
        let folded = match separator {
            Some('/') | None => Some(build(true)?),
            _ => None,
        };
        Ok(Self {
            source: pattern.to_string(),
            regex: Some(regex),
            folded,
        })
    }

    /// Whether `s` matches when ASCII case is ignored (path and value globs; qualified names
    /// compare exactly).
    pub fn matches_ignoring_case(&self, s: &str) -> bool {
        match (&self.regex, &self.folded) {
            (None, _) => self.source.eq_ignore_ascii_case(s),
            (Some(_), Some(folded)) => folded.is_match(s),
            (Some(re), None) => re.is_match(s),
        }
    }

    /// Whether `s` matches.
    pub fn matches(&self, s: &str) -> bool {
        match &self.regex {
            Some(re) => re.is_match(s),
            None => self.source == s,
        }
    }

    /// The literal text before the first wildcard (all of it for a literal pattern).
    pub fn literal_prefix(&self) -> &str {
        let end = self.source.find(['*', '?']).unwrap_or(self.source.len());
        &self.source[..end]
    }

    /// Whether the pattern has no wildcards.
    pub fn is_literal(&self) -> bool {
        self.regex.is_none()
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_globs_respect_segments() {
        let g = Glob::path("/api/v1/users/*").unwrap();
        assert!(g.matches("/api/v1/users/00u1"));
        assert!(!g.matches("/api/v1/users/00u1/lifecycle/activate"));
        let g = Glob::path("/api/v1/users/**").unwrap();
        assert!(g.matches("/api/v1/users/00u1/lifecycle/activate"));
        assert!(!g.matches("/api/v1/groups/x"));
        let g = Glob::path("/a/**/b").unwrap();
        assert!(g.matches("/a/b") && g.matches("/a/x/y/b") && !g.matches("/a/xb"));
    }

    #[test]
    fn qualified_and_value_globs() {
        let g = Glob::qualified("billing.*").unwrap();
        assert!(g.matches("billing.invoices") && !g.matches("public.billing") && !g.matches("billing.a.b"));
        assert!(Glob::value("dblink*").unwrap().matches("dblink_exec"));
        assert!(Glob::value("a.b").unwrap().matches("a.b") && !Glob::value("a.b").unwrap().matches("axb"));
        assert!(Glob::path("/***").is_err());
    }

    /// A value's line breaks are characters like any other: `DROP TABLE users\n` is `*DROP*`,
    /// and `?` stands for a line break too.
    #[test]
    fn value_globs_match_across_line_breaks() {
        let g = Glob::value("*DROP*").unwrap();
        assert!(g.matches("DROP TABLE users\n") && g.matches("x\nDROP\ny"));
        assert!(g.matches_ignoring_case("select 1;\ndrop table users"));
        assert!(Glob::value("a?b").unwrap().matches("a\nb"));
        assert!(
            Glob::value("*@admin.example*")
                .unwrap()
                .matches("eve@admin.example\n")
        );
    }
}
