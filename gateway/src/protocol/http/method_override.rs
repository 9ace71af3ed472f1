//! Method overrides. Rails (Rack), Laravel (Symfony), PHP frameworks and Express's
//! method-override read a request's "real" method from a parameter (`_method`) of the query, of a
//! form body, of a multipart part or (Laravel) of a JSON body, so a request decided as
//! `POST /users` could run upstream as `DELETE /users`. The headers of the same purpose are
//! stripped ([`super::headers`]); this module finds the parameters, spelled as those parsers read
//! them, so the proxy can refuse the request.
//!
//! Forms and JSON bodies are read (bounded) before the decision. Multipart bodies may be large
//! uploads, so they stream through [`MultipartScan`], which parses only the parts' headers and
//! makes the proxy cut the body off at an offending part, before the upstream has it whole (Rack,
//! PHP and nginx run no handler on a cut body).

use bytes::Bytes;
use hyper::http::{HeaderMap, Method, header};

use super::body::BodyError;

/// Parameter names read as the request's method.
const OVERRIDE_NAMES: &[&str] = &[
    "_method",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Longest header block of one multipart part; a longer one is refused rather than skipped.
pub const MAX_PART_HEADERS: usize = 16 * 1024;

/// Whether a parameter name, as a framework would read it, asks for another method. PHP trims
/// leading spaces and reads `.` and ` ` as `_`; Rack and `qs` read `[_method]` and `_method[]`
/// as `_method`.
pub fn is_override(name: &str) -> bool {
    // PHP reads a name up to a NUL (`_method%00=DELETE` is `_method`).
    let name = name.split('\0').next().unwrap_or(name);
    let name = name.trim_start().trim_start_matches('[');
    let base = name.split(['[', ']']).next().unwrap_or(name).trim_end();
    let base: String = base
        .chars()
        .map(|c| if c == '.' || c == ' ' { '_' } else { c })
        .collect();
    OVERRIDE_NAMES.iter().any(|p| base.eq_ignore_ascii_case(p))
}

/// What a request body is, as the frameworks that read overrides see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyKind {
    /// Parsed as `application/x-www-form-urlencoded`.
    Form,
    /// `multipart/*` with its boundary.
    Multipart,
    /// JSON: a Content-Type that mentions `json` anywhere (Laravel reads a JSON body's
    /// `_method` wherever `/json` or `+json` appears, `text/json` and parameters included).
    Json,
    /// A form whose Content-Type mentions `json` too: Rack reads it as a form, Laravel as JSON.
    FormOrJson,
    /// Nothing reads an override from it.
    Other,
}

/// The media type of a Content-Type value: up to the first `;`, `,` or whitespace (Rack splits on
/// `;` and `,`, PHP stops at either or at a space), lowercased.
fn media_type(value: &[u8]) -> String {
    let s = String::from_utf8_lossy(value);
    let s = s.trim_start();
    s.split([';', ',', ' ', '\t'])
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase()
}

/// The kind of a request's body. Only POST bodies carry overrides (Rack, Symfony and
/// method-override look nowhere else); a POST without a content type, or with an empty one, is
/// read as a form (Rack does).
pub fn body_kind(method: &Method, headers: &HeaderMap) -> BodyKind {
    if method != Method::POST {
        return BodyKind::Other;
    }
    match headers.get(header::CONTENT_TYPE) {
        Some(ct) => media_kind(ct.as_bytes()),
        None => BodyKind::Form,
    }
}

/// The kind of a body frameworks read parameters from, whatever the method: Rails and Symfony
/// (Laravel) parse a PUT, PATCH or DELETE form or JSON body as they parse a POST's.
pub fn params_kind(method: &Method, headers: &HeaderMap) -> BodyKind {
    match headers.get(header::CONTENT_TYPE) {
        _ if method == Method::POST => body_kind(method, headers),
        Some(ct) => media_kind(ct.as_bytes()),
        None => BodyKind::Other,
    }
}

fn media_kind(ct: &[u8]) -> BodyKind {
    let media = media_type(ct);
    let mentions_json = memchr::memmem::find(&ct.to_ascii_lowercase(), b"json").is_some();
    if media.is_empty() || media == "application/x-www-form-urlencoded" {
        if mentions_json {
            BodyKind::FormOrJson
        } else {
            BodyKind::Form
        }
    } else if media.starts_with("multipart/") {
        BodyKind::Multipart
    } else if mentions_json {
        BodyKind::Json
    } else {
        BodyKind::Other
    }
}

/// The `boundary` parameter of a multipart Content-Type (quoted or not).
/// Only one, and only of the characters clients put in one (letters, digits, `-_.+/=:?()`):
/// parsers split a boundary differently at quotes, backslashes, commas and blanks (Rack at `,`
/// and `\`, PHP at the first `boundary` it finds, even inside another parameter's name), and
/// a body split on another boundary than the gateway's hides its parts from the scan.
pub fn boundary(headers: &HeaderMap) -> Option<Vec<u8>> {
    let ct = headers.get(header::CONTENT_TYPE)?.as_bytes();
    if memchr::memmem::find_iter(&ct.to_ascii_lowercase(), b"boundary").count() != 1 {
        return None;
    }
    let text = String::from_utf8_lossy(ct);
    params(&text)
        .into_iter()
        .find(|(k, _)| k == "boundary")
        .map(|(_, v)| v.into_bytes())
        .filter(|b| !b.is_empty() && b.len() <= 200)
        .filter(|b| {
            b.iter()
                .all(|c| c.is_ascii_alphanumeric() || b"-_.+/=:?()".contains(c))
        })
}

/// Whether an urlencoded form body has an override field. Names are decoded leniently (a bad
/// escape is kept as it is), as the frameworks that honour them do.
pub fn form_overrides(body: &[u8]) -> bool {
    body.split(|&b| b == b'&' || b == b';').any(|pair| {
        let name = pair.split(|&b| b == b'=').next().unwrap_or(pair);
        is_override(&String::from_utf8_lossy(&percent_decode(name)))
    })
}

/// Whether a JSON body's top-level object has an override key. A body that does not parse is
/// judged by its bytes: one that mentions `method` at all is taken to.
pub fn json_overrides(body: &[u8]) -> bool {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(map)) => map.keys().any(|k| is_override(k)),
        Ok(_) => false,
        Err(_) => memchr::memmem::find(&body.to_ascii_lowercase(), b"method").is_some(),
    }
}

pub(crate) fn percent_decode(s: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                s.get(i + 1).copied().and_then(hex),
                s.get(i + 2).copied().and_then(hex),
            ) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// `key=value` parameters after the first `;` of a header value, keys lowercased, values
/// unquoted (double or single quotes, backslash escapes removed, as Rack and PHP read them).
fn params(value: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let bytes = value.as_bytes();
    let mut i = match value.find(';') {
        Some(i) => i + 1,
        None => return out,
    };
    while i < bytes.len() {
        while i < bytes.len() && matches!(bytes[i], b' ' | b'\t' | b';' | b'\r' | b'\n') {
            i += 1;
        }
        let key_start = i;
        while i < bytes.len() && !matches!(bytes[i], b'=' | b';') {
            i += 1;
        }
        let key = value[key_start..i].trim().to_ascii_lowercase();
        if i >= bytes.len() || bytes[i] == b';' {
            continue;
        }
        i += 1;
        while i < bytes.len() && matches!(bytes[i], b' ' | b'\t') {
            i += 1;
        }
        let mut v = Vec::new();
        if i < bytes.len() && (bytes[i] == b'"' || bytes[i] == b'\'') {
            let quote = bytes[i];
            i += 1;
            while i < bytes.len() && bytes[i] != quote {
                if bytes[i] == b'\\' && i + 1 < bytes.len() {
                    i += 1;
                }
                v.push(bytes[i]);
                i += 1;
            }
            i += 1;
        } else {
            while i < bytes.len() && bytes[i] != b';' {
                v.push(bytes[i]);
                i += 1;
            }
            while v.last().is_some_and(|b| b.is_ascii_whitespace()) {
                v.pop();
            }
        }
        let mut v = String::from_utf8_lossy(&v).into_owned();
        if let Some(base) = key.strip_suffix('*') {
            // RFC 2231: `charset'language'percent-encoded`.
            if let Some((_, encoded)) = v.split_once('\'').and_then(|(_, r)| r.split_once('\'')) {
                v = String::from_utf8_lossy(&percent_decode(encoded.as_bytes())).into_owned();
            }
            out.push((base.to_string(), v));
        } else {
            out.push((key, v));
        }
    }
    out
}

/// Whether one part's header block names an override: its Content-Disposition `name` (or
/// `name*`), or its Content-ID (Rack 2 names a part without a name by it).
fn part_overrides(block: &[u8]) -> bool {
    mentions_override(block) || named_override(block)
}

/// Whether an override's name stands as a word anywhere in a part's header block: Rack 2 finds
/// a part's name with an unanchored pattern (`x="a;name=_method"` names it `_method`), so the
/// block is not trusted to parse as the gateway parses it.
fn mentions_override(block: &[u8]) -> bool {
    let text: Vec<u8> = block
        .iter()
        .map(|b| match b.to_ascii_lowercase() {
            b'.' => b'_',
            b => b,
        })
        .collect();
    let word = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
    OVERRIDE_NAMES.iter().any(|name| {
        memchr::memmem::find_iter(&text, name.as_bytes())
            .any(|i| !word(i.checked_sub(1).and_then(|j| text.get(j))) && !word(text.get(i + name.len())))
    })
}

/// Whether a part's Content-Disposition `name` (or `name*`), or its Content-ID, names an
/// override, parsed as PHP and Symfony read them.
fn named_override(block: &[u8]) -> bool {
    let text = String::from_utf8_lossy(block);
    // Unfold continuation lines.
    let mut lines: Vec<String> = Vec::new();
    for line in text.split('\n') {
        let line = line.trim_end_matches('\r');
        match lines.last_mut() {
            Some(last) if line.starts_with([' ', '\t']) => last.push_str(line),
            _ => lines.push(line.to_string()),
        }
    }
    lines.iter().any(|line| {
        let Some((name, value)) = line.split_once(':') else {
            return false;
        };
        match name.trim().to_ascii_lowercase().as_str() {
            "content-disposition" => params(value).iter().any(|(k, v)| k == "name" && is_override(v)),
            "content-id" => is_override(value.trim().trim_matches(['<', '>'])),
            _ => false,
        }
    })
}

/// Finds multipart parts named like an override in a body seen chunk by chunk. Only the parts'
/// header blocks are read (file contents may say anything); at most the boundary's length is held
/// between chunks, plus one header block.
#[derive(Debug)]
pub struct MultipartScan {
    /// `\n--<boundary>`: a delimiter line, with the line break before it.
    delimiter: Vec<u8>,
    /// Bytes not yet judged: the end of the body data (a delimiter may start there), or the
    /// header block being read.
    held: Vec<u8>,
    in_headers: bool,
}

impl MultipartScan {
    pub fn new(boundary: &[u8]) -> Self {
        let mut delimiter = b"\n--".to_vec();
        delimiter.extend_from_slice(boundary);
        // The body may start with the first delimiter: read it as if a line ended before it.
        Self {
            delimiter,
            held: b"\n".to_vec(),
            in_headers: false,
        }
    }

    /// Takes the next chunk; `Err` with the reason once an offending or unreadable part is seen.
    pub fn push(&mut self, data: &[u8]) -> Result<(), &'static str> {
        self.held.extend_from_slice(data);
        loop {
            if self.in_headers {
                // A blank line of a bare LF ends a part's headers for PHP, not for Rack, which
                // reads on to CRLF CRLF: the headers of one would be the body of the other.
                let crlf = memchr::memmem::find(&self.held, b"\r\n\r\n");
                if memchr::memmem::find(&self.held, b"\n\n").is_some_and(|i| crlf.is_none_or(|c| i < c)) {
                    return Err(
                        "a multipart part's headers end with a bare line feed, which parsers read differently",
                    );
                }
                let end = crlf.map(|i| (i, 4));
                match end {
                    Some((i, sep)) => {
                        if part_overrides(&self.held[..i]) {
                            return Err("a multipart part is named like a method override");
                        }
                        self.held.drain(..i + sep);
                        self.in_headers = false;
                    }
                    None if self.held.len() > MAX_PART_HEADERS => {
                        return Err("a multipart part's headers are too long");
                    }
                    None => return Ok(()),
                }
            } else {
                match memchr::memmem::find(&self.held, &self.delimiter) {
                    Some(i) => {
                        // The rest of the delimiter line (`--` closes; transport padding) ends
                        // at its line break; the part's headers follow.
                        let after = i + self.delimiter.len();
                        match memchr::memchr(b'\n', &self.held[after..]) {
                            Some(nl) => {
                                self.held.drain(..after + nl + 1);
                                self.in_headers = true;
                            }
                            None => {
                                self.held.drain(..i);
                                return Ok(());
                            }
                        }
                    }
                    None => {
                        let keep = (self.delimiter.len() - 1).min(self.held.len());
                        let cut = self.held.len() - keep;
                        self.held.drain(..cut);
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// Cuts a streamed multipart body off at a part named like an override, and says so through
/// `found`.
pub struct Guard {
    pub scan: MultipartScan,
    pub found: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl super::response::Rewrite for Guard {
    fn chunk(&mut self, data: Bytes) -> Result<Option<Bytes>, BodyError> {
        if let Err(why) = self.scan.push(&data) {
            self.found.store(true, std::sync::atomic::Ordering::Relaxed);
            return Err(why.into());
        }
        Ok(Some(data))
    }

    fn end(&mut self) -> Result<Option<Bytes>, BodyError> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::http::HeaderValue;

    fn headers(ct: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(ct) = ct {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
        }
        h
    }

    #[test]
    fn names_are_read_as_the_frameworks_read_them() {
        for n in [
            "_method",
            "_METHOD",
            "_method[]",
            "[_method]",
            " _method",
            ".method",
            "X-HTTP-Method-Override",
        ] {
            assert!(is_override(n), "{n:?}");
        }
        for n in [
            "method",
            " method",
            "my_method",
            "_methods",
            "user[_method]x",
            "methods",
        ] {
            assert!(!is_override(n), "{n:?}");
        }
    }

    #[test]
    fn body_kinds_follow_the_content_type_as_parsers_split_it() {
        let post = Method::POST;
        for (ct, kind) in [
            (None, BodyKind::Form),
            (Some(""), BodyKind::Form),
            (Some("application/x-www-form-urlencoded"), BodyKind::Form),
            (
                Some("Application/X-WWW-Form-Urlencoded; charset=utf-8"),
                BodyKind::Form,
            ),
            (Some("application/x-www-form-urlencoded, x"), BodyKind::Form),
            (Some("application/x-www-form-urlencoded x"), BodyKind::Form),
            (Some("multipart/form-data; boundary=x"), BodyKind::Multipart),
            (Some("multipart/mixed"), BodyKind::Multipart),
            (Some("application/json"), BodyKind::Json),
            (Some("application/merge-patch+json"), BodyKind::Json),
            // Laravel reads JSON wherever `/json` or `+json` appears in the header.
            (Some("text/json"), BodyKind::Json),
            (Some("text/plain; x=/json"), BodyKind::Json),
            (
                Some("application/x-www-form-urlencoded; a=/json"),
                BodyKind::FormOrJson,
            ),
            (Some("text/plain"), BodyKind::Other),
        ] {
            assert_eq!(body_kind(&post, &headers(ct)), kind, "{ct:?}");
        }
        assert_eq!(body_kind(&Method::PUT, &headers(None)), BodyKind::Other);
        assert_eq!(
            boundary(&headers(Some("multipart/form-data; boundary=\"a-b_c.1\""))).as_deref(),
            Some(&b"a-b_c.1"[..])
        );
        assert_eq!(boundary(&headers(Some("multipart/form-data"))), None);
        // Where parsers would split on another boundary than the gateway's: none is taken.
        for ct in [
            "multipart/form-data; boundary=\"AAA\\\"BBB\"",
            "multipart/form-data; boundary=AAA,BBB",
            "multipart/form-data; boundary=\"a b\"",
            "multipart/form-data; xboundary=AAA; boundary=BBB",
            "multipart/form-data; boundary=AAA; boundary=BBB",
        ] {
            assert_eq!(boundary(&headers(Some(ct))), None, "{ct}");
        }
    }

    #[test]
    fn forms_and_json_bodies() {
        for body in [
            &b"_method=DELETE"[..],
            b"profile%5Bname%5D=x&_method=delete",
            b"%5f%6Dethod=PUT",
            b"_method[]=DELETE",
            b"x=%zz&+_method+=PATCH",
            b"%5B_method%5D=DELETE",
            b".method=DELETE",
            b"a=1;_method=DELETE",
            // PHP reads a name up to a NUL.
            b"_method%00=DELETE",
        ] {
            assert!(form_overrides(body), "{}", String::from_utf8_lossy(body));
        }
        for body in [&b""[..], b"method=DELETE", b"a=_method", b"_method_x=1", b"%"] {
            assert!(!form_overrides(body), "{}", String::from_utf8_lossy(body));
        }
        assert!(json_overrides(br#"{"name": "x", "_method": "DELETE"}"#));
        assert!(json_overrides(br#"{"\u005fmethod": "DELETE"}"#));
        assert!(
            json_overrides(br#"{"_method": 1, "_method": 2"#),
            "unparsable, mentions it"
        );
        assert!(!json_overrides(
            br#"{"user": {"_method": "x"}, "method": "DELETE"}"#
        ));
        assert!(!json_overrides(b"[1, 2]"));
    }

    fn part(name_header: &str, content: &str) -> String {
        format!("--XyZ\r\n{name_header}\r\nContent-Type: text/plain\r\n\r\n{content}\r\n")
    }

    fn scan_all(body: &str) -> Result<(), &'static str> {
        MultipartScan::new(b"XyZ").push(body.as_bytes())
    }

    #[test]
    fn multipart_part_headers_are_read_across_chunks_and_contents_are_not() {
        let body = part("Content-Disposition: form-data; name=\"user[name]\"", "x")
            + &part("Content-Disposition: form-data; name=\"_method\"", "DELETE")
            + "--XyZ--\r\n";
        for split in 0..body.len() {
            let mut scan = MultipartScan::new(b"XyZ");
            let found = scan
                .push(&body.as_bytes()[..split])
                .and_then(|()| scan.push(&body.as_bytes()[split..]));
            assert!(found.is_err(), "split at {split}");
        }
        for header in [
            "content-disposition: form-data; NAME=_METHOD",
            "Content-Disposition: form-data; name = \"_method[]\"",
            "Content-Disposition: form-data; name='_method'",
            "Content-Disposition: form-data; name=\"\\_method\"",
            "Content-Disposition: form-data; name*=UTF-8''%5Fmethod",
            "Content-Disposition: form-data;\r\n name=\"X-HTTP-Method-Override\"",
            "Content-ID: <_method>",
            // Rack 2 finds `name=` anywhere in the header.
            "Content-Disposition: form-data; x=\"a;name=_method\"",
            "X-Note: Content-Disposition: x; name=_method\r\nContent-Disposition: form-data; name=\"a\"",
        ] {
            assert!(scan_all(&part(header, "DELETE")).is_err(), "{header}");
        }
        // Whitespace before the value, however long, is inside one header block.
        let padded = format!(
            "Content-Disposition: form-data; name={}\"_method\"",
            " ".repeat(200)
        );
        let body = part(&padded, "DELETE");
        let mut scan = MultipartScan::new(b"XyZ");
        let mut result = Ok(());
        for chunk in body.as_bytes().chunks(7) {
            result = result.and_then(|()| scan.push(chunk));
        }
        assert!(result.is_err());
        // A file that contains a form with `_method` (a Rails page) is content, not a part name.
        let page = "<input type=\"hidden\" name=\"_method\" value=\"patch\">\r\n\r\nname=\"_method\"";
        let upload = part(
            "Content-Disposition: form-data; name=\"file\"; filename=\"_method.html\"",
            page,
        ) + &part("Content-Disposition: form-data; name=\"method\"", "x")
            + "--XyZ--\r\n";
        assert_eq!(scan_all(&upload), Ok(()));
        // A blank line of a bare line feed ends headers for PHP, not for Rack: refused, however
        // the body arrives.
        let lf =
            "--XyZ\r\nX: 1\n\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--XyZ--\r\n";
        assert!(scan_all(lf).is_err());
        let mut scan = MultipartScan::new(b"XyZ");
        assert!(scan.push(b"--XyZ\r\nX: 1\n\n").is_err());
        // A header block that never ends is refused.
        let endless = format!("--XyZ\r\nX-Pad: {}", "a".repeat(MAX_PART_HEADERS + 1));
        assert!(scan_all(&endless).is_err());
    }
}
