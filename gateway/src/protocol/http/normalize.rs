//! Request-target normalization. The policy engine decides on the path this module returns and
//! the proxy forwards exactly that path, so what was decided is byte for byte what the upstream
//! receives. Anything that two parsers could read differently is refused rather than guessed:
//! encoded separators, dot segments, double encoding, matrix parameters, invalid or overlong
//! UTF-8, control characters.

/// Longest request path accepted.
pub const MAX_PATH_BYTES: usize = 8 * 1024;
/// Longest query string accepted.
pub const MAX_QUERY_BYTES: usize = 16 * 1024;
/// Most query parameters accepted.
pub const MAX_QUERY_PARAMS: usize = 256;

/// A normalized request target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Normalized path: starts with `/`, no empty or dot segments except a trailing `/`,
    /// characters that may stand raw in a segment (unreserved, sub-delims but `;`, `:`, `@`)
    /// decoded, other escapes kept with uppercase hex.
    pub path: String,
    /// The query as the client sent it (forwarded unchanged), without `?`.
    pub raw_query: Option<String>,
    /// Decoded query parameters in order, repeats kept (`+` is a space, as servers read forms).
    pub query: Vec<(String, String)>,
}

/// Why a request target was refused; the message is safe to show the client.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TargetError(pub String);

fn err(msg: impl Into<String>) -> TargetError {
    TargetError(msg.into())
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Characters allowed raw in a path segment (RFC 3986 pchar minus `;`, which some servers treat
/// as a parameter separator and others as data).
fn is_path_char(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b'=' | b':' | b'@'
        )
}

/// Normalizes `path` (origin-form, as received) and parses `query`.
pub fn normalize(path: &str, query: Option<&str>) -> Result<Target, TargetError> {
    if path.len() > MAX_PATH_BYTES {
        return Err(err(format!("the path is longer than {MAX_PATH_BYTES} bytes")));
    }
    if !path.starts_with('/') {
        return Err(err("the path must start with '/'"));
    }
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    // Decoded bytes of the whole path, only to check that escapes form valid UTF-8.
    let mut decoded: Vec<u8> = Vec::with_capacity(path.len());
    let mut segment_start = 0;
    let mut i = 0;
    out.push('/');
    i += 1;
    while i <= bytes.len() {
        let b = bytes.get(i).copied();
        match b {
            None | Some(b'/') => {
                // End of a segment: check it, then drop empty segments (`//` collapses).
                let seg = &out[segment_start + 1..];
                if seg == "." || seg == ".." {
                    return Err(err("the path must not contain '.' or '..' segments"));
                }
                if b.is_some() {
                    if seg.is_empty() {
                        // Collapse `//`.
                    } else {
                        out.push('/');
                        segment_start = out.len() - 1;
                    }
                }
                i += 1;
            }
            Some(b'%') => {
                let (h, l) = match (
                    bytes.get(i + 1).copied().and_then(hex_val),
                    bytes.get(i + 2).copied().and_then(hex_val),
                ) {
                    (Some(h), Some(l)) => (h, l),
                    _ => return Err(err("the path has an invalid percent-escape")),
                };
                let v = h << 4 | l;
                match v {
                    b'/' | b'\\' => return Err(err("the path must not contain an encoded '/' or '\\'")),
                    b'%' => return Err(err("the path must not contain an encoded '%' (double encoding)")),
                    b';' => return Err(err("the path must not contain ';'")),
                    0..=0x1f | 0x7f => return Err(err("the path must not contain control characters")),
                    _ => {}
                }
                decoded.push(v);
                // What may stand raw in a segment is written raw: `%3A` and `:` are one path to
                // an upstream, so they must be one path to a rule (`system:*`, `ceo@...`).
                if is_path_char(v) {
                    out.push(v as char);
                } else {
                    out.push('%');
                    out.push(char::from(b"0123456789ABCDEF"[(v >> 4) as usize]));
                    out.push(char::from(b"0123456789ABCDEF"[(v & 15) as usize]));
                }
                i += 3;
            }
            Some(b';') => return Err(err("the path must not contain ';' (matrix parameters)")),
            Some(b) if is_path_char(b) => {
                decoded.push(b);
                out.push(b as char);
                i += 1;
            }
            Some(_) => return Err(err("the path contains a character that must be percent-encoded")),
        }
    }
    if std::str::from_utf8(&decoded).is_err() {
        return Err(err("the path's escapes are not valid UTF-8"));
    }
    // `/a/` keeps its trailing slash; `/a//` collapsed to `/a/` above.
    let (raw_query, query) = match query {
        None => (None, Vec::new()),
        Some(q) => (Some(q.to_string()), parse_query(q)?),
    };
    if let Some((name, _)) = query.iter().find(|(k, _)| super::method_override::is_override(k)) {
        return Err(err(format!(
            "the query parameter {name:?} would make the upstream run another method than the one decided; send the method itself"
        )));
    }
    Ok(Target {
        path: out,
        raw_query,
        query,
    })
}

/// `path` (a [`Target::path`]) with its remaining escapes decoded: the path as an upstream that
/// decodes it reads it (Kubernetes' API server takes names from the decoded path). Normalizing
/// refused `%2F` and `%25` and checked the bytes are UTF-8, so this adds no segment and no escape.
pub fn decode(path: &str) -> std::borrow::Cow<'_, str> {
    if !path.contains('%') {
        return std::borrow::Cow::Borrowed(path);
    }
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex_val),
            b.get(i + 2).copied().and_then(hex_val),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push(h << 4 | l);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    std::borrow::Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// Parses a query string strictly: valid escapes, valid UTF-8, no `;` separators, no controls.
pub fn parse_query(q: &str) -> Result<Vec<(String, String)>, TargetError> {
    if q.len() > MAX_QUERY_BYTES {
        return Err(err(format!("the query is longer than {MAX_QUERY_BYTES} bytes")));
    }
    if q.contains(';') {
        return Err(err("the query must not contain ';' (use '&' between parameters)"));
    }
    let mut out = Vec::new();
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        if out.len() == MAX_QUERY_PARAMS {
            return Err(err(format!(
                "the query has more than {MAX_QUERY_PARAMS} parameters"
            )));
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.push((decode_component(k)?, decode_component(v)?));
    }
    Ok(out)
}

fn decode_component(s: &str) -> Result<String, TargetError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let v = match (
                    b.get(i + 1).copied().and_then(hex_val),
                    b.get(i + 2).copied().and_then(hex_val),
                ) {
                    (Some(h), Some(l)) => h << 4 | l,
                    _ => return Err(err("the query has an invalid percent-escape")),
                };
                out.push(v);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c if c < 0x20 || c == 0x7f => return Err(err("the query must not contain control characters")),
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    let s = String::from_utf8(out).map_err(|_| err("the query is not valid UTF-8"))?;
    if s.chars().any(|c| c.is_control()) {
        return Err(err("the query must not contain control characters"));
    }
    Ok(s)
}

/// Removes a route's path prefix (`/okta`) from a normalized path: `/okta` and `/okta/x` match,
/// `/oktax` does not. Returns the rest, always starting with `/`.
pub fn strip_prefix<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        return Some(path);
    }
    let rest = path.strip_prefix(prefix)?;
    if rest.is_empty() {
        Some("/")
    } else if rest.starts_with('/') {
        Some(rest)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: &str) -> Result<String, TargetError> {
        normalize(p, None).map(|t| t.path)
    }

    #[test]
    fn ordinary_paths_are_unchanged() {
        for p in [
            "/",
            "/api/v1/users",
            "/api/v1/users/",
            "/api/v1/users/00u1%20x",
            "/a/b:c@d",
            "/%C3%A9t%C3%A9",
        ] {
            assert_eq!(path(p).as_deref(), Ok(p), "{p}");
        }
    }

    /// `%3A` and `:` reach an upstream as one path, so a rule sees one spelling: a Deny on
    /// `/users/ceo@example.com/**` is not passed by `ceo%40example.com`.
    #[test]
    fn escapes_of_characters_allowed_raw_are_decoded() {
        assert_eq!(
            path("/api/v1/users/ceo%40example.com/lifecycle").unwrap(),
            "/api/v1/users/ceo@example.com/lifecycle"
        );
        assert_eq!(
            path("/roles/system%3aedit%2C%21%24%26%27%28%29%2A%2B%3D").unwrap(),
            "/roles/system:edit,!$&'()*+="
        );
        // Characters that may not stand raw stay escaped; `;` stays refused either way.
        assert_eq!(path("/a%20b%3Fc%23d%5B").unwrap(), "/a%20b%3Fc%23d%5B");
        assert!(path("/a%3Bb").is_err());
        assert_eq!(decode("/a%20b%3Fc/%C3%A9"), "/a b?c/é");
        assert_eq!(decode("/plain"), "/plain");
    }

    #[test]
    fn unreserved_escapes_are_decoded_and_hex_uppercased() {
        assert_eq!(path("/api/v1/%75sers").unwrap(), "/api/v1/users");
        assert_eq!(path("/a%2db/%c3%a9").unwrap(), "/a-b/%C3%A9");
        assert_eq!(path("//api///v1//users").unwrap(), "/api/v1/users");
    }

    #[test]
    fn confusing_paths_are_refused() {
        for p in [
            "/api/v1/users/../api-tokens",
            "/api/v1/%2e%2e/api-tokens",
            "/api/v1/%2E./x",
            "/api/./v1",
            "/api/v1/users%2f..%2fapi-tokens",
            "/api/v1/users%5c..",
            "/api/v1/users;x=1",
            "/api/v1/users%3bx",
            "/api/v1/%252e%252e/x",
            "/api/v1/%c0%ae%c0%ae/x",
            "/api/v1/%ff",
            "/api/v1/%00",
            "/api/v1/%0d%0aX-Injected:%201",
            "/api/v1/%",
            "/api/v1/%zz",
            "/api/v1/\\..",
            "api/v1",
            "/..",
        ] {
            assert!(path(p).is_err(), "{p} should be refused");
        }
    }

    #[test]
    fn queries_are_decoded_strictly() {
        let t = normalize("/x", Some("a=1&b=x%20y&b=z+w&flag&=e")).unwrap();
        assert_eq!(
            t.query,
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "x y".into()),
                ("b".into(), "z w".into()),
                ("flag".into(), "".into()),
                ("".into(), "e".into())
            ]
        );
        assert_eq!(t.raw_query.as_deref(), Some("a=1&b=x%20y&b=z+w&flag&=e"));
        for q in ["a=1;b=2", "a=%zz", "a=%0d%0a", "a=%ff"] {
            assert!(normalize("/x", Some(q)).is_err(), "{q}");
        }
    }

    #[test]
    fn method_overrides_are_refused_in_the_query() {
        for q in [
            "_method=DELETE",
            "a=1&_METHOD=delete",
            "%5Fmethod=DELETE",
            "_method%5B%5D=DELETE",
            "%5B_method%5D=DELETE",
            ".method=DELETE",
            "X-HTTP-Method-Override=PUT",
            "+_method=DELETE",
        ] {
            let e = normalize("/api/v1/users", Some(q)).unwrap_err();
            assert!(e.0.contains("another method"), "{q}: {e}");
        }
        assert!(normalize("/x", Some("method=DELETE&my_method=x&_methods=1")).is_ok());
    }

    #[test]
    fn route_prefixes_match_whole_segments() {
        assert_eq!(strip_prefix("/okta/api/v1", "/okta"), Some("/api/v1"));
        assert_eq!(strip_prefix("/okta", "/okta/"), Some("/"));
        assert_eq!(strip_prefix("/oktax/api", "/okta"), None);
        assert_eq!(strip_prefix("/x", "/"), Some("/x"));
    }

    /// What the policy decides on is what the upstream gets: a normalized path normalizes to
    /// itself, so the upstream's own normalization cannot turn it into another path.
    #[test]
    fn hostile_targets_are_refused_or_normalized_to_a_fixpoint() {
        let seeds: [&[u8]; 4] = [
            b"/okta/api/v1/users/00u1/lifecycle/activate?sendEmail=true&x=%2F&y=a+b",
            b"/a/./b/../%2e%2E/c%41%2f//d/?q=a+b&q=%ZZ&&=&k",
            b"/api/v1/namespaces/default/pods/web-0/exec?command=sh&stdin=true&tty=true",
            "/%C3%A9t%C3%A9/\u{e9}/~user/a;b/%00/%u002e".as_bytes(),
        ];
        crate::mutate::each_mutant(&seeds, 3_000, |b| {
            let s = String::from_utf8_lossy(b);
            let (path, query) = match s.split_once('?') {
                Some((p, q)) => (p, Some(q)),
                None => (&*s, None),
            };
            if let Ok(t) = normalize(path, query) {
                assert!(t.path.starts_with('/'), "{:?}", t.path);
                let again = normalize(&t.path, None).expect("a normalized path is accepted");
                assert_eq!(again.path, t.path);
                assert_eq!(t.raw_query.as_deref(), query);
            }
            if let Some(q) = query {
                let _ = parse_query(q);
            }
        });
    }
}
