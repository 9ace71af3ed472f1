//! Hostile HTTP against the real gateway (SECURITY.md, section "HTTP"): request smuggling, path
//! confusion, `Connection`-named and client-sent identity headers, CRLF and authority tricks,
//! protocol upgrades, slow and oversized requests; and the TLS listener with HTTP/2 and HTTP/1.1.
//!
//! Malformed requests are written on raw sockets (curl would refuse or repair them), path tricks
//! go through curl `--path-as-is`. Every request carries a real token from the OIDC provider, so a
//! refusal is the gateway's doing and not a missing credential. Each case checks the gateway's
//! answer and that nothing it refused, or that was hidden inside another request, reached the echo
//! upstream (which logs one `METHOD path` line per request it answers).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use agentgate::protocol::http::proxy::MAX_REQUEST_BODY;
use agentgate::protocol::http::server::{HEADER_READ_TIMEOUT, MAX_HEADER_BYTES};
use agentgate_e2e::gateway::{EchoUpstream, Gateway, OktaSetup, okta_manifests};
use agentgate_e2e::oidc::OidcProvider;
use agentgate_e2e::{Reply, curl, wait_for};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The upstream's SSWS token, which the gateway injects.
const CANARY: &str = "00CANARY-hostile-upstream-secret-4d2e";
const PROBLEM: &str = "https://agentgate.dev/problems/";
/// How long a raw exchange waits for more bytes before taking the gateway's answer as complete.
const QUIET: Duration = Duration::from_millis(1000);
/// How long it waits for the first byte: a first request fetches the issuer's keys, and a busy
/// machine can stall longer than [`QUIET`] (still below the gateway's header read timeout).
const FIRST_BYTE: Duration = Duration::from_secs(5);
/// Slack on top of the header read timeout for a slow client to be cut off.
const SLACK: Duration = Duration::from_secs(3);

// ---------------------------------------------------------------------------------------------
// Harness: the processes, curl, raw sockets.

struct Setup {
    _idp: OidcProvider,
    upstream: EchoUpstream,
    gw: Gateway,
    token: String,
}

fn setup() -> Setup {
    start(CANARY, |yaml| yaml)
}

/// The OIDC provider, the echo upstream and a gateway on `okta_manifests` (edited by `edit`).
fn start(upstream_token: &str, edit: impl FnOnce(String) -> String) -> Setup {
    let idp = OidcProvider::start();
    let upstream = EchoUpstream::start();
    let yaml = okta_manifests(&OktaSetup {
        issuer: &idp.issuer,
        upstream: &upstream.url(),
        upstream_token,
        require_dpop: false,
    });
    let gw = Gateway::start(&edit(yaml));
    let answer = idp.token("ci-agent", "api://agentgate", None);
    let token = answer["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("{answer}"))
        .to_string();
    Setup {
        _idp: idp,
        upstream,
        gw,
        token,
    }
}

impl Setup {
    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.gw.port)
    }

    fn auth(&self) -> String {
        format!("Authorization: Bearer {}", self.token)
    }

    /// The `Host` and `Authorization` lines of a raw request, CRLF-terminated.
    fn creds(&self) -> String {
        format!("Host: {}\r\n{}\r\n", self.host(), self.auth())
    }

    fn raw(&self, request: impl AsRef<[u8]>) -> Exchange {
        exchange(self.gw.port, request.as_ref())
    }

    /// curl with the agent's token and `--path-as-is`, so the path goes out exactly as written.
    fn curl(&self, args: &[&str], path: &str) -> Reply {
        let auth = self.auth();
        let mut all = vec!["--path-as-is", "-H", &auth];
        all.extend_from_slice(args);
        curl(&all, &self.gw.url(path))
    }

    /// Sends `request` raw and asserts a 400 `bad-request` that did not reach the upstream (its
    /// path contains `marker`).
    fn assert_bad_request(&self, request: String, marker: &str) {
        let r = self.raw(request);
        let res = r.only();
        assert_eq!(
            (res.status, res.problem()),
            (400, problem("bad-request")),
            "{}",
            r.text()
        );
        self.assert_not_forwarded(marker);
    }

    /// Asserts that no request whose path contains `marker` reached the upstream.
    fn assert_not_forwarded(&self, marker: &str) {
        let seen = self.upstream.requests();
        // Its readiness probe shows the log is being read at all.
        assert!(
            seen.contains("GET /ready"),
            "no request log from the upstream:\n{seen}"
        );
        assert!(!seen.contains(marker), "{marker} reached the upstream:\n{seen}");
    }

    /// Neither the agent's token nor the upstream credential in the gateway's log or recordings
    /// (a failure shows the line, with the token replaced).
    fn assert_no_secrets(&self) {
        for (what, text) in [("log", self.gw.output()), ("recordings", self.gw.recordings())] {
            assert!(!text.contains(CANARY), "the upstream credential is in the {what}");
            if let Some(i) = text.find(&self.token) {
                let line_start = text[..i].rfind('\n').map_or(0, |j| j + 1);
                let line_end = text[i..].find('\n').map_or(text.len(), |j| i + j);
                let line = text[line_start..line_end].replace(&self.token, "<TOKEN>");
                panic!("the agent's token is in the {what}: {line}");
            }
        }
    }
}

/// What the hostile tests read off a reply.
trait ReplyExt {
    /// The problem type, checking the media type too.
    fn problem(&self) -> String;
    /// The echo upstream's account of what it received.
    fn echo(&self) -> Echo;
}

impl ReplyExt for Reply {
    fn problem(&self) -> String {
        problem_type(&self.headers, self.body.as_bytes())
    }

    fn echo(&self) -> Echo {
        assert_eq!(self.status, 200, "{self:?}");
        Echo(self.json())
    }
}

fn problem_type(head: &str, body: &[u8]) -> String {
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/problem+json"),
        "not a problem document:\n{head}\n{}",
        String::from_utf8_lossy(body)
    );
    let doc: Value = serde_json::from_slice(body).expect("problem JSON");
    doc["type"].as_str().unwrap_or_default().to_string()
}

fn problem(slug: &str) -> String {
    format!("{PROBLEM}{slug}")
}

/// What the echo upstream says it received.
#[derive(Debug)]
struct Echo(Value);

impl Echo {
    fn path(&self) -> &str {
        self.0["path"].as_str().unwrap_or_default()
    }

    fn body(&self) -> &str {
        self.0["body"].as_str().unwrap_or_default()
    }

    /// Every header (name lowercased by the echo) as received.
    fn headers(&self) -> Vec<(String, String)> {
        self.0["headers"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|h| {
                        (
                            h[0].as_str().unwrap_or_default().to_string(),
                            h[1].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn header(&self, name: &str) -> Vec<String> {
        self.headers()
            .into_iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v)
            .collect()
    }
}

/// The echo's report of an `Authorization` value: its SHA-256.
fn hashed(value: &str) -> String {
    let digest = Sha256::digest(value.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// What came back on one raw connection.
#[derive(Debug)]
struct Exchange {
    bytes: Vec<u8>,
    /// The gateway closed the connection (rather than leaving it idle).
    closed: bool,
}

impl Exchange {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    fn responses(&self) -> Vec<RawResponse> {
        parse_responses(&self.bytes)
    }

    /// The one response on the connection; a second would mean a hidden request was answered.
    fn only(&self) -> RawResponse {
        let mut all = self.responses();
        assert_eq!(all.len(), 1, "expected exactly one response:\n{}", self.text());
        all.remove(0)
    }
}

#[derive(Debug)]
struct RawResponse {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl RawResponse {
    fn problem(&self) -> String {
        problem_type(&self.head, &self.body)
    }

    fn echo(&self) -> Echo {
        assert_eq!(self.status, 200, "{self:?}");
        Echo(serde_json::from_slice(&self.body).expect("echo JSON"))
    }
}

/// Writes `request` on a fresh connection, then reads until the gateway closes it or, once it has
/// answered, stays quiet for [`QUIET`].
fn exchange(port: u16, request: &[u8]) -> Exchange {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the gateway");
    s.set_read_timeout(Some(FIRST_BYTE)).unwrap();
    // The gateway may stop reading early (an oversized head): a failed write is an answer too.
    let _ = s.write_all(request);
    let mut bytes = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let closed = loop {
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => {
                bytes.extend_from_slice(&buf[..n]);
                s.set_read_timeout(Some(QUIET)).unwrap();
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break false;
            }
            // Reset: closed, whatever was unread.
            Err(_) => break true,
        }
    };
    Exchange { bytes, closed }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn header_in(head: &str, name: &str) -> Option<String> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

/// Splits a byte stream into HTTP/1.1 responses (Content-Length or chunked bodies).
fn parse_responses(mut rest: &[u8]) -> Vec<RawResponse> {
    let mut out = Vec::new();
    while let Some(end) = find(rest, b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&rest[..end]).into_owned();
        let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let after = &rest[end + 4..];
        let (body, used) =
            if let Some(len) = header_in(&head, "content-length").and_then(|v| v.parse::<usize>().ok()) {
                let len = len.min(after.len());
                (after[..len].to_vec(), len)
            } else if header_in(&head, "transfer-encoding").is_some_and(|v| v.contains("chunked")) {
                dechunk(after)
            } else {
                (after.to_vec(), after.len())
            };
        out.push(RawResponse { status, head, body });
        rest = &after[used..];
    }
    out
}

/// A chunked body's data and how many bytes it took (no trailers).
fn dechunk(mut b: &[u8]) -> (Vec<u8>, usize) {
    let total = b.len();
    let mut data = Vec::new();
    while let Some(eol) = find(b, b"\r\n") {
        let size_text = String::from_utf8_lossy(&b[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
        b = &b[eol + 2..];
        if size == 0 {
            b = b.get(2..).unwrap_or_default();
            break;
        }
        let take = size.min(b.len());
        data.extend_from_slice(&b[..take]);
        b = b.get(take + 2..).unwrap_or_default();
    }
    (data, total - b.len())
}

// ---------------------------------------------------------------------------------------------
// Request smuggling.

/// A complete request the smuggler hides in another one's body; `marker` makes it findable.
fn hidden(s: &Setup, marker: &str) -> String {
    format!("GET /okta/echo/{marker} HTTP/1.1\r\n{}\r\n", s.creds())
}

#[test]
fn content_length_with_transfer_encoding_is_read_as_chunked_and_the_connection_closed() {
    let s = setup();

    // CL.TE: a front end trusting Content-Length would pass the hidden request along as body.
    // The gateway reads the chunked framing (RFC 9112 §6.3), answers, and closes the
    // connection, so the rest is never read as a request.
    let body = format!("3\r\nabc\r\n0\r\n\r\n{}", hidden(&s, "smuggled-clte"));
    let r = s.raw(format!(
        "POST /okta/echo/clte HTTP/1.1\r\n{}Content-Type: text/plain\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n{body}",
        s.creds(),
        body.len()
    ));
    let echo = r.only().echo();
    assert_eq!((echo.path(), echo.body()), ("/echo/clte", "abc"));
    assert!(r.closed, "the connection stays open after an ambiguous request");
    s.assert_not_forwarded("smuggled-clte");

    // TE.CL: a short Content-Length after Transfer-Encoding. An upstream trusting it would read
    // the chunk as a request of its own (one needing no token); the gateway re-frames the body,
    // so the upstream gets it only as body bytes.
    let chunk = format!(
        "GET /okta/echo/smuggled-tecl HTTP/1.1\r\nHost: {}\r\n\r\n",
        s.host()
    );
    let r = s.raw(format!(
        "POST /okta/echo/tecl HTTP/1.1\r\n{}Content-Type: text/plain\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        s.creds(),
        chunk.len()
    ));
    let echo = r.only().echo();
    assert_eq!((echo.path(), echo.body()), ("/echo/tecl", chunk.as_str()));
    assert!(echo.header("content-length").iter().all(|v| v != "4"), "{echo:?}");
    assert!(r.closed);
    s.assert_not_forwarded("smuggled-tecl");
    s.assert_no_secrets();
}

#[test]
fn duplicate_content_lengths_are_refused_unless_identical() {
    let s = setup();
    for (i, lengths) in [
        "Content-Length: 3\r\nContent-Length: 60\r\n",
        "Content-Length: 3, 60\r\n",
        "Content-Length: +3\r\n",
        "Content-Length: 3\r\nContent-length: 03x\r\n",
    ]
    .iter()
    .enumerate()
    {
        let marker = format!("smuggled-dupcl-{i}");
        let r = s.raw(format!(
            "POST /okta/echo/dupcl-{i} HTTP/1.1\r\n{}{lengths}\r\nabc{}",
            s.creds(),
            hidden(&s, &marker)
        ));
        let res = r.only();
        assert_eq!(res.status, 400, "{lengths:?}: {}", r.text());
        assert!(r.closed, "{lengths:?}");
        s.assert_not_forwarded(&format!("dupcl-{i}"));
    }
    // Identical repeats are one length: exactly the three bytes are the body.
    let r = s.raw(format!(
        "POST /okta/echo/dupcl-same HTTP/1.1\r\n{}Content-Length: 3\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
        s.creds()
    ));
    assert_eq!(r.only().echo().body(), "abc");
    // Two Content-Types: servers join them (Apache) or take either, so the body's kind, and
    // the method override it may carry, would be read otherwise than the gateway checked it.
    let r = s.raw(format!(
        "POST /okta/echo/dup-ct HTTP/1.1\r\n{}Content-Type: text/plain\r\nContent-Type: application/json\r\nContent-Length: 20\r\nConnection: close\r\n\r\n{{\"_method\":\"DELETE\"}}",
        s.creds()
    ));
    assert_eq!(r.only().status, 400, "{}", r.text());
    s.assert_not_forwarded("dup-ct");
    s.assert_no_secrets();
}

#[test]
fn obfuscated_transfer_encodings_are_refused() {
    let s = setup();
    for (i, te) in [
        "Transfer-Encoding: xchunked\r\n",
        "Transfer-Encoding: chunk\r\n",
        "Transfer-Encoding: \"chunked\"\r\n",
        "Transfer-Encoding: chunked, identity\r\n",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
        "Transfer-Encoding : chunked\r\n",
        "Transfer-Encoding:\x0bchunked\r\n",
        "X-Pad: 1\r\n Transfer-Encoding: chunked\r\n",
        "X-Pad: 1\r\n\tTransfer-Encoding: chunked\r\n",
    ]
    .iter()
    .enumerate()
    {
        let marker = format!("smuggled-te-{i}");
        let body = format!("3\r\nabc\r\n0\r\n\r\n{}", hidden(&s, &marker));
        let r = s.raw(format!(
            "POST /okta/echo/te-{i} HTTP/1.1\r\n{}Content-Length: {}\r\n{te}\r\n{body}",
            s.creds(),
            body.len()
        ));
        let res = r.only();
        assert_eq!(res.status, 400, "{te:?}: {}", r.text());
        assert!(r.closed, "{te:?}");
        s.assert_not_forwarded(&format!("te-{i}"));
    }
    // Transfer-Encoding in HTTP/1.0, which has no chunked coding.
    let r = s.raw(format!(
        "POST /okta/echo/te-http10 HTTP/1.0\r\n{}Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        s.creds()
    ));
    assert_eq!(r.only().status, 400, "{}", r.text());
    s.assert_not_forwarded("te-http10");
    // TE (the hop-by-hop request header, not Transfer-Encoding) may only say "trailers".
    s.assert_bad_request(
        format!(
            "GET /okta/echo/te-hop HTTP/1.1\r\n{}TE: chunked\r\n\r\n",
            s.creds()
        ),
        "te-hop",
    );
    // Connection may name only hop-by-hop headers: a header it names is removed before
    // forwarding, after the decision read it (a required `X-Dry-Run: true` would vanish).
    s.assert_bad_request(
        format!(
            "GET /okta/echo/connection-named HTTP/1.1\r\n{}Connection: keep-alive, X-Dry-Run\r\nX-Dry-Run: true\r\n\r\n",
            s.creds()
        ),
        "connection-named",
    );
    let r = s.raw(format!(
        "GET /okta/echo/connection-hop HTTP/1.1\r\n{}Connection: keep-alive, TE, close\r\nTE: trailers\r\n\r\n",
        s.creds()
    ));
    assert_eq!(r.only().status, 200, "{}", r.text());
    s.assert_no_secrets();
}

#[test]
fn bare_line_feeds_cannot_hide_framing_or_requests() {
    let s = setup();
    // A head with LF line endings only is read as a head (RFC 9112 §2.2 lets a recipient) and
    // forwarded once, re-framed by the gateway.
    let r = s.raw(format!(
        "GET /okta/echo/bare-lf HTTP/1.1\nHost: {}\n{}\nConnection: close\n\n",
        s.host(),
        s.auth()
    ));
    let echo = r.only().echo();
    assert_eq!(echo.path(), "/echo/bare-lf");
    assert_eq!(echo.header("authorization"), [hashed(&format!("SSWS {CANARY}"))]);
    assert_eq!(s.upstream.requests().matches("/echo/bare-lf").count(), 1);

    // A Transfer-Encoding after a bare LF inside a CRLF head, where a CRLF-only parser sees a
    // header `X-Pad` and a Content-Length body holding a hidden request: the gateway takes the
    // chunked framing and closes the connection, like any request with both.
    let body = format!("3\r\nabc\r\n0\r\n\r\n{}", hidden(&s, "smuggled-lf-te"));
    let r = s.raw(format!(
        "POST /okta/echo/lf-te HTTP/1.1\r\n{}X-Pad: 1\nTransfer-Encoding: chunked\r\nContent-Length: {}\r\n\r\n{body}",
        s.creds(),
        body.len()
    ));
    let echo = r.only().echo();
    assert_eq!((echo.path(), echo.body()), ("/echo/lf-te", "abc"));
    assert!(r.closed);
    s.assert_not_forwarded("smuggled-lf-te");

    // A bare LF ending the head early: what follows is a request of its own, which a CRLF-only
    // parser would have taken for header lines. It carries no token and gets no credential.
    let r = s.raw(format!(
        "GET /okta/echo/lf-early HTTP/1.1\r\n{}X-Pad: 1\n\nGET /okta/echo/smuggled-lf-early HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        s.creds(),
        s.host()
    ));
    let res = r.responses();
    let statuses: Vec<u16> = res.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 401], "{}", r.text());
    assert_eq!(res[1].problem(), problem("unauthenticated"));
    s.assert_not_forwarded("smuggled-lf-early");
    s.assert_no_secrets();
}

// ---------------------------------------------------------------------------------------------
// Path confusion, and the path decided being the path forwarded.

#[test]
fn confusing_paths_are_refused_and_never_forwarded() {
    let s = setup();
    for path in [
        "/okta/echo/confuse/%2e%2e/%2e%2e/api/v1/api-tokens",
        "/okta/echo/confuse/%2E%2E/x",
        "/okta/echo/confuse/.%2e/x",
        "/okta/echo/confuse/../../api/v1/api-tokens",
        "/okta/echo/confuse/./x",
        "/okta/echo/confuse%2f..%2f..%2fapi/v1/api-tokens",
        "/okta%2fecho/confuse",
        "/okta/echo/confuse%5c..%5capi",
        "/okta/echo/confuse\\..\\x",
        "/okta/echo/confuse;jsessionid=1",
        "/okta/echo/confuse/..;/api/v1/api-tokens",
        "/okta/echo/confuse%3bx=1",
        "/okta/echo/confuse/%252e%252e/x",
        "/okta/echo/confuse/%25%32%65",
        "/okta/echo/confuse/%c0%ae%c0%ae/x",
        "/okta/echo/confuse/%e0%80%ae",
        "/okta/echo/confuse/%ff",
        "/okta/echo/confuse/%00",
        "/okta/echo/confuse/%",
        "/okta/echo/confuse/%zz",
    ] {
        let r = s.curl(&[], path);
        assert_eq!(
            (r.status, r.problem()),
            (400, problem("bad-request")),
            "{path}: {r:?}"
        );
    }
    // Raw bytes curl would not send: UTF-8 the gateway wants percent-encoded; an overlong
    // encoding and a DEL, which hyper refuses before the gateway sees them.
    for (raw, gateway_problem) in [
        (&b"/okta/echo/confuse/\xc3\xa9"[..], true),
        (b"/okta/echo/confuse/\xc0\xae", false),
        (b"/okta/echo/confuse/\x7f", false),
    ] {
        let mut req = b"GET ".to_vec();
        req.extend_from_slice(raw);
        req.extend_from_slice(format!(" HTTP/1.1\r\n{}Connection: close\r\n\r\n", s.creds()).as_bytes());
        let r = s.raw(req);
        let res = r.only();
        assert_eq!(res.status, 400, "{}", r.text());
        if gateway_problem {
            assert_eq!(res.problem(), problem("bad-request"));
        }
    }
    s.assert_not_forwarded("confuse");
    s.assert_no_secrets();
}

#[test]
fn the_path_decided_on_is_byte_for_byte_the_path_forwarded() {
    let mut s = setup();
    for (sent, forwarded) in [
        ("/okta//echo/%75sers", "/echo/users"),
        ("/okta/echo///a//b/", "/echo/a/b/"),
        ("/okta/echo/%7e%41%2d/%c3%a9", "/echo/~A-/%C3%A9"),
        ("/okta/echo/sp%20ace/x:y@z", "/echo/sp%20ace/x:y@z"),
        (
            "/okta/echo/q?x=%2e%2e&y=a%20b&z=%2F",
            "/echo/q?x=%2e%2e&y=a%20b&z=%2F",
        ),
    ] {
        let r = s.curl(&[], sent);
        assert_eq!(r.echo().path(), forwarded, "{sent}");
    }
    // A fragment has no place in a request target (curl never sends one): it is dropped, so
    // neither the policy nor the upstream sees it.
    let r = s.raw(format!(
        "GET /okta/echo/frag#/../../api/v1/api-tokens HTTP/1.1\r\n{}Connection: close\r\n\r\n",
        s.creds()
    ));
    assert_eq!(r.only().echo().path(), "/echo/frag");
    // The policy sees the same normalized path: these are the denied /api/v1/api-tokens.
    for sent in [
        "/okta/api/v1/%61pi-tokens",
        "/okta/api/v1//api-tokens",
        "/okta//api/v1/api-tokens/",
        "/okta/api/%76%31/api-tokens/00T1",
    ] {
        let r = s.curl(&[], sent);
        assert_eq!(
            (r.status, r.problem()),
            (403, problem("denied-by-policy")),
            "{sent}: {r:?}"
        );
        assert_eq!(r.json()["rule"], "no-api-tokens", "{sent}");
    }
    s.assert_not_forwarded("api-tokens");

    // The recording holds the decided path of each request: the forwarded ones and the denied.
    s.gw.stop();
    let mut recorded: Vec<String> =
        s.gw.recordings()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| e["type"] == "http.request")
            .map(|e| e["data"]["path"].as_str().unwrap_or_default().to_string())
            .collect();
    // One session per connection; the files come in no particular order.
    recorded.sort();
    assert_eq!(
        recorded,
        [
            "/api/v1/api-tokens",
            "/api/v1/api-tokens",
            "/api/v1/api-tokens/",
            "/api/v1/api-tokens/00T1",
            "/echo/a/b/",
            "/echo/frag",
            "/echo/q",
            "/echo/sp%20ace/x:y@z",
            "/echo/users",
            "/echo/~A-/%C3%A9",
        ]
    );
    s.assert_no_secrets();
}

// ---------------------------------------------------------------------------------------------
// Headers: Connection, client-sent identity, CRLF.

#[test]
fn connection_cannot_remove_what_the_gateway_adds() {
    let s = setup();
    let injected = hashed(&format!("SSWS {CANARY}"));
    // Connection may name only hop-by-hop headers: naming Authorization, Host or anything else
    // end to end is refused before a decision, so it can neither strip what the gateway adds nor
    // what a rule read.
    let r = s.curl(
        &[
            "-H",
            "Connection: Authorization, Host, Accept-Encoding, Content-Length, X-Drop",
            "-H",
            "X-Drop: 1",
            "-H",
            "Content-Type: text/plain",
            "--data-binary",
            "hello",
        ],
        "/okta/echo/conn",
    );
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.body.contains("may name only hop-by-hop headers"), "{r:?}");
    s.assert_not_forwarded("conn");

    // Naming the body's framing (hop-by-hop): the body still arrives whole, re-framed, and the
    // gateway's credential is there.
    let r = s.raw(format!(
        "POST /okta/echo/conn-te HTTP/1.1\r\n{}Connection: Transfer-Encoding, TE\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        s.creds()
    ));
    let echo = r.only().echo();
    assert_eq!(echo.body(), "hello world");
    assert_eq!(echo.header("authorization"), [injected]);
    assert!(echo.header("connection").is_empty());
    s.assert_no_secrets();
}

#[test]
fn client_sent_identity_headers_never_reach_the_upstream() {
    let s = setup();
    let sent = [
        "X-Forwarded-User: root",
        "x-forwarded-user: root2",
        "X-FORWARDED-HOST: evil.example",
        "X-Forwarded-For: 10.0.0.1",
        "X-Forwarded-Proto: https",
        "X-Forwarded-Groups: system:masters",
        "X-Forwarded-Email: root@example.com",
        "Forwarded: for=10.0.0.1;host=evil.example;proto=https",
        "forwarded: for=10.0.0.2",
        "X-Real-IP: 10.0.0.1",
        "Impersonate-User: admin",
        "IMPERSONATE-GROUP: system:masters",
        "impersonate-group: system:nodes",
        "Impersonate-Uid: 0",
        "Impersonate-Extra-Scopes: all",
        "X-Remote-User: root",
        "x-remote-group: system:masters",
        "X-Auth-Request-User: root",
        "X-Auth-Request-Email: root@example.com",
        "X-Authenticated-User: root",
        "X-AgentGate-Identity: admin",
        "X_Forwarded_User: root",
        "Impersonate_User: admin",
        "X-Benign: kept",
    ];
    let mut args = Vec::new();
    for h in &sent {
        args.extend(["-H", h]);
    }
    let echo = s.curl(&args, "/okta/echo/identity").echo();
    assert_eq!(echo.header("x-benign"), ["kept"], "not every header is dropped");
    let leaked: Vec<_> = echo
        .headers()
        .into_iter()
        .filter(|(k, _)| {
            // Upstreams that map headers to variables (CGI, WSGI) read `_` as `-`.
            let k = k.replace('_', "-");
            k == "forwarded"
                || k == "x-real-ip"
                || [
                    "x-forwarded-",
                    "impersonate-",
                    "x-remote-",
                    "x-auth-request-",
                    "x-authenticated-",
                    "x-agentgate-",
                ]
                .iter()
                .any(|p| k.starts_with(p))
        })
        .collect();
    assert!(
        leaked.is_empty(),
        "identity headers reached the upstream: {leaked:?}"
    );
    assert_eq!(echo.header("authorization"), [hashed(&format!("SSWS {CANARY}"))]);
    s.assert_no_secrets();
}

/// `_method` in the query or a form makes Rails, Laravel or Express run another method than the
/// one decided: a POST allowed on `/echo/` would be a DELETE upstream.
#[test]
fn method_overrides_in_the_query_or_a_form_are_refused() {
    let s = setup();
    let form = "Content-Type: application/x-www-form-urlencoded";
    let cases: [(&[&str], &str); 12] = [
        (
            &["-X", "POST", "--data", "x"],
            "/okta/echo/override-q?_method=DELETE",
        ),
        (
            &["-H", form, "--data", "name=x&_method=DELETE"],
            "/okta/echo/override-form",
        ),
        (
            &[
                "-H",
                "content-type: Application/X-WWW-Form-Urlencoded; charset=utf-8",
                "--data",
                "%5Fmethod=PUT",
            ],
            "/okta/echo/override-case",
        ),
        // Rack parses a POST without a content type as a form.
        (
            &["-H", "Content-Type:", "--data-binary", "a=1&_METHOD=delete"],
            "/okta/echo/override-bare",
        ),
        // Rack splits the media type on `,` as well as `;`; PHP stops at a space too.
        (
            &[
                "-H",
                "Content-Type: application/x-www-form-urlencoded, x",
                "--data",
                ".method=DELETE",
            ],
            "/okta/echo/override-comma",
        ),
        // Laravel reads `_method` from a JSON body.
        (
            &[
                "-H",
                "Content-Type: application/json",
                "--data",
                r#"{"name":"x","_method":"DELETE"}"#,
            ],
            "/okta/echo/override-json",
        ),
        // Rack reads a multipart body without a boundary as urlencoded.
        (
            &[
                "-H",
                "Content-Type: multipart/form-data",
                "--data",
                "_method=DELETE",
            ],
            "/okta/echo/override-noboundary",
        ),
        // A compressed body cannot be checked.
        (
            &[
                "-H",
                "Content-Encoding: gzip",
                "-H",
                "Content-Type: application/x-www-form-urlencoded",
                "--data",
                "x",
            ],
            "/okta/echo/override-gzip",
        ),
        (
            &["-H", form, "--data", "%5B_method%5D=DELETE"],
            "/okta/echo/override-bracket",
        ),
        // PHP reads a name up to a NUL.
        (
            &["-H", form, "--data", "_method%00=DELETE"],
            "/okta/echo/override-nul",
        ),
        // Laravel reads JSON wherever `/json` appears in the Content-Type.
        (
            &[
                "-H",
                "Content-Type: text/json",
                "--data",
                r#"{"_method":"DELETE"}"#,
            ],
            "/okta/echo/override-text-json",
        ),
        (
            &[
                "-H",
                "Content-Type: application/x-www-form-urlencoded; a=/json",
                "--data",
                r#"{"_method":"DELETE"}"#,
            ],
            "/okta/echo/override-form-json",
        ),
    ];
    for (args, path) in cases {
        let r = s.curl(args, path);
        assert_eq!(r.status, 400, "{path}: {r:?}");
        assert_eq!(r.problem(), problem("bad-request"), "{path}");
        assert!(
            r.body.contains("another method") || r.body.contains("method override"),
            "{path}: {}",
            r.body
        );
    }
    // Multipart forms are streamed, not held: a part named `_method` cuts the body off before
    // the upstream has it whole, and the agent is told why.
    let dir = tempfile::tempdir().unwrap();
    let upload = dir.path().join("upload.bin");
    std::fs::write(&upload, "x".repeat(256 * 1024)).unwrap();
    let upload = format!("upload=@{}", upload.display());
    for (fields, path) in [
        (
            vec!["-F", "name=x", "-F", "_method=DELETE"],
            "/okta/echo/cut-multipart",
        ),
        (
            vec!["-F", &*upload, "-F", "_METHOD=DELETE"],
            "/okta/echo/cut-late-part",
        ),
    ] {
        let r = s.curl(&fields, path);
        assert_eq!(r.status, 400, "{path}: {r:?}");
        assert!(r.body.contains("another method"), "{path}: {}", r.body);
    }
    // Only part headers are read: an uploaded page that has a `_method` field in it passes.
    let page = dir.path().join("edit.html");
    std::fs::write(
        &page,
        "<form><input type=\"hidden\" name=\"_method\" value=\"patch\"></form>\r\n\r\nname=\"_method\"\r\n",
    )
    .unwrap();
    let page = format!("page=@{}", page.display());
    let echo = s.curl(&["-F", &page], "/okta/echo/upload-page").echo();
    assert!(echo.body().contains("value=\"patch\""), "{}", echo.body());
    let echo = s
        .curl(&["-F", "name=x", "-F", "method=DELETE"], "/okta/echo/multipart")
        .echo();
    assert!(echo.body().contains("name=\"method\""), "{}", echo.body());
    s.assert_not_forwarded("/echo/override-");
    // The upstream may see the start of a cut body (`CUT` in its log), never all of it.
    let seen = s.upstream.requests();
    assert!(
        !seen.contains("POST /echo/cut-"),
        "a cut body was answered:\n{seen}"
    );
    // Forms without an override pass, byte for byte.
    let echo = s
        .curl(
            &["-H", form, "--data", "method=DELETE&my_method=x"],
            "/okta/echo/form",
        )
        .echo();
    assert_eq!(echo.body(), "method=DELETE&my_method=x");
    s.assert_no_secrets();
}

/// Rails, Laravel and PHP's `$_REQUEST` merge a form or JSON body's fields with the query's: a
/// query condition is not escaped by moving the parameter into the body, nor a JSON-body
/// condition by moving the field into the query.
#[test]
fn parameters_are_decided_wherever_the_upstream_reads_them() {
    let s = start(CANARY, |yaml| {
        yaml.replace(
            "    - name: no-admin-header\n",
            r#"    - name: no-forced-writes
      action: Deny
      http:
        paths: ["/echo/forced/**"]
        query: {force: "true"}
    - name: no-admin-role
      action: Deny
      http:
        paths: ["/echo/roles/**"]
        jsonBody:
        - path: $.role
          values: [admin]
    - name: no-admin-header
"#,
        )
    });
    let form = "Content-Type: application/x-www-form-urlencoded";
    let json = "Content-Type: application/json";
    let cases: [(&str, &[&str], &str); 7] = [
        (
            "no-forced-writes",
            &["--data", "name=x&force=true"],
            "/okta/echo/forced/form",
        ),
        (
            "no-forced-writes",
            &["-X", "PUT", "-H", json, "--data", r#"{"force":true}"#],
            "/okta/echo/forced/put-json",
        ),
        (
            "no-forced-writes",
            &["-X", "PATCH", "-H", form, "--data", "Force=true"],
            "/okta/echo/forced/patch-form",
        ),
        (
            "no-forced-writes",
            &["-H", json, "--data", r#"{"force":"true","name":"x"}"#],
            "/okta/echo/forced/json",
        ),
        // A multipart body's fields are not read: it may carry the parameter, so it is refused.
        (
            "no-forced-writes",
            &["-F", "name=x"],
            "/okta/echo/forced/multipart",
        ),
        (
            "no-admin-role",
            &["-H", json, "--data", "{}"],
            "/okta/echo/roles/query?role=admin",
        ),
        (
            "no-admin-role",
            &["-X", "POST"],
            "/okta/echo/roles/empty?role%5B%5D=Admin",
        ),
    ];
    for (rule, args, path) in cases {
        let r = s.curl(args, path);
        assert_eq!(
            (r.status, r.problem()),
            (403, problem("denied-by-policy")),
            "{path}: {r:?}"
        );
        assert_eq!(r.json()["rule"], rule, "{path}");
    }
    s.assert_not_forwarded("/echo/forced/");
    s.assert_not_forwarded("/echo/roles/");
    // Other values pass, byte for byte.
    let echo = s
        .curl(
            &["-H", form, "--data", "name=x&force=false"],
            "/okta/echo/forced/ok",
        )
        .echo();
    assert_eq!(echo.body(), "name=x&force=false");
    let echo = s
        .curl(
            &["-H", json, "--data", r#"{"role":"viewer"}"#],
            "/okta/echo/roles/ok?role=viewer",
        )
        .echo();
    assert_eq!(echo.body(), r#"{"role":"viewer"}"#);
    s.assert_no_secrets();
}

#[test]
fn crlf_cannot_be_injected_into_forwarded_headers() {
    let s = setup();
    // Encoded CR LF in the path or the query, which the gateway copies into the request line.
    for path in [
        "/okta/echo/crlf%0d%0aX-Injected:%20yes",
        "/okta/echo/crlf%0aX-Injected:%20yes",
        "/okta/echo/crlf-q?x=%0d%0aX-Injected:%201",
        "/okta/echo/crlf-q?x=1%0d%0a%0d%0aGET%20/smuggled",
    ] {
        let r = s.curl(&[], path);
        assert_eq!(
            (r.status, r.problem()),
            (400, problem("bad-request")),
            "{path}: {r:?}"
        );
    }
    s.assert_not_forwarded("crlf");
    // A bare CR or a NUL inside a header value: refused before the gateway reads it.
    for (i, bad) in ["X-Note: a\rX-Injected: yes\r\n", "X-Note: a\0b\r\n"]
        .iter()
        .enumerate()
    {
        let r = s.raw(format!(
            "GET /okta/echo/crlf-raw-{i} HTTP/1.1\r\n{}{bad}\r\n",
            s.creds()
        ));
        assert_eq!(r.only().status, 400, "{bad:?}: {}", r.text());
        assert!(r.closed);
    }
    s.assert_not_forwarded("crlf-raw");
    // A bare LF ends the header line: what follows is a header of its own, and one that claims
    // an identity is removed like any other.
    let r = s.raw(format!(
        "GET /okta/echo/lf-header HTTP/1.1\r\n{}X-Note: a\nImpersonate-User: admin\r\nConnection: close\r\n\r\n",
        s.creds()
    ));
    let echo = r.only().echo();
    assert_eq!(echo.header("x-note"), ["a"]);
    assert!(echo.header("impersonate-user").is_empty(), "{echo:?}");
    // ... and a second Authorization smuggled that way is refused, not chosen between.
    let r = s.raw(format!(
        "GET /okta/echo/lf-auth HTTP/1.1\r\n{}X-Note: a\nAuthorization: SSWS forged\r\nConnection: close\r\n\r\n",
        s.creds()
    ));
    let res = r.only();
    assert_eq!((res.status, res.problem()), (401, problem("unauthenticated")));
    s.assert_not_forwarded("lf-auth");
    s.assert_no_secrets();
}

#[test]
fn a_credential_with_a_line_break_is_never_sent() {
    // The Secret's value is copied into the upstream's Authorization header: a CR LF in it
    // must not become a header of its own (YAML decodes the escapes to real CR LF). Such a
    // value cannot be sent at all, so the configuration that holds it is refused, naming the
    // field and not quoting the value.
    let yaml = okta_manifests(&OktaSetup {
        issuer: "https://idp.example",
        upstream: "http://127.0.0.1:9",
        upstream_token: "tok\\r\\nX-Injected: yes",
        require_dpop: false,
    });
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("all.yaml"),
        yaml.replace("${LISTEN_PORT}", "18080")
            .replace("${SESSIONS}", &dir.path().join("sessions").display().to_string()),
    )
    .unwrap();
    let out = Command::new(agentgate_e2e::binary("agentgate"))
        .args(["validate", "--manifests"])
        .arg(dir.path())
        .output()
        .unwrap();
    let text = agentgate_e2e::printed(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("spec.credentials.secretRef") && text.contains("control character"),
        "{text}"
    );
    assert!(!text.contains("X-Injected"), "the credential is quoted: {text}");
}

/// An upstream that reflects a Basic credential hands back base64(user:secret), and one that
/// compresses whatever the client accepts hides the credential from a byte search: neither
/// reaches the agent.
#[test]
fn reflected_basic_tokens_and_compressed_bodies_never_reach_the_agent() {
    use base64::Engine;
    let s = start(CANARY, |yaml| {
        yaml.replace("scheme: SSWS", "scheme: Basic\n    username: svc-agentgate")
    });
    let token = base64::engine::general_purpose::STANDARD.encode(format!("svc-agentgate:{CANARY}"));
    let r = s.curl(&[], "/okta/reflect");
    assert_eq!(r.status, 200, "{r:?}");
    for leak in [token.as_str(), CANARY] {
        assert!(
            !r.body.contains(leak) && !r.headers.contains(leak),
            "{leak} reached the agent: {r:?}"
        );
    }
    assert_eq!(r.json()["you_sent"], format!("Basic {}", "*".repeat(token.len())));
    // Spelled in escapes a decoder reads back (every byte `%XX`, `&#N;`, `\u00XX`), the token
    // is overwritten all the same, escapes and all.
    let r = s.curl(&[], "/okta/reflect?encoded");
    assert_eq!(r.status, 200, "{r:?}");
    let spelled = |f: &dyn Fn(u8) -> String| token.bytes().map(f).collect::<String>();
    let stars = |f: &dyn Fn(u8) -> String| "*".repeat(spelled(f).len());
    let percent = |b: u8| format!("%{b:02X}");
    let entity = |b: u8| format!("&#{b};");
    let escaped = |b: u8| format!("\\u{b:04x}");
    let body = r.json();
    assert_eq!(
        body["every_byte"],
        format!("%42%61%73%69%63%20{}", stars(&percent)),
        "{r:?}"
    );
    assert_eq!(
        body["html"],
        format!("&#66;&#97;&#115;&#105;&#99;&#32;{}", stars(&entity)),
        "{r:?}"
    );
    assert_eq!(body["json_u"], format!("Basic {}", stars(&escaped)), "{r:?}");
    // Percent-encoded twice (`%2542`): the escapes' own `%` escaped again.
    let twice = |b: u8| format!("%25{b:02X}");
    assert_eq!(
        body["twice"],
        format!("%2542%2561%2573%2569%2563%2520{}", stars(&twice)),
        "{r:?}"
    );
    let r = s.curl(&[], "/okta/gzip-reflect");
    assert_eq!(
        (r.status, r.problem()),
        (502, problem("masking-refused")),
        "{r:?}"
    );
    assert!(r.body.contains("compressed"), "{}", r.body);
    let r = s.curl(&[], "/okta/te-gzip-reflect");
    assert_eq!(
        (r.status, r.problem()),
        (502, problem("masking-refused")),
        "{r:?}"
    );
    assert!(r.body.contains("Transfer-Encoding"), "{}", r.body);
    s.assert_no_secrets();
}

/// An agent that sends its own token where an upstream echoes it back escaped (every byte
/// `%XX`, `&#N;`, `\u00XX`) does not get it into the recording: the recording's hiding of the
/// agent's token reads escapes too.
#[test]
fn the_agents_token_echoed_in_escapes_is_not_recorded() {
    let s = start(CANARY, |yaml| yaml.to_string());
    let header = format!("X-Agent-Echo: {}", s.token);
    let r = s.curl(
        &["-H", &header, "-H", "X-Reflect-Header: X-Agent-Echo"],
        "/okta/reflect?encoded",
    );
    let spelled = |f: &dyn Fn(u8) -> String| s.token.bytes().map(f).collect::<String>();
    let forms = [
        spelled(&|b| format!("%{b:02X}")),
        spelled(&|b| format!("&#{b};")),
        spelled(&|b| format!("\\u{b:04x}")),
    ];
    // The upstream did echo it: the agent, which holds the token, reads it back where the JWT
    // detector (which reads `%XX`) did not mask it.
    assert_eq!(r.json()["html"], forms[1].as_str(), "{r:?}");
    let recorded = s.gw.recordings();
    assert!(recorded.contains(r#""path":"/reflect""#), "{recorded}");
    // The echo is on record as the agent got it: the JWT detector reads `%XX` and `\u00XX` and
    // masks those; the references it does not read are hidden by value.
    assert!(recorded.contains(r#""html": "[REDACTED]""#), "{recorded}");
    for form in forms.iter().chain([&forms[2].replace('\\', "\\\\")]) {
        assert!(
            !recorded.contains(form.as_str()),
            "{form} is recorded: {recorded}"
        );
    }
    s.assert_no_secrets();
}

/// An ETag or digest of the unmasked body, beside the masked one, lets a masked value be
/// guessed offline; `If-None-Match` with a guess confirms it online (304 or 200).
#[test]
fn validators_of_unmasked_bodies_are_not_passed_on() {
    let s = setup();
    let r = s.curl(&[], "/okta/api/v1/users");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("[REDACTED"), "{r:?}");
    let head = r.headers.to_ascii_lowercase();
    assert!(
        !head.contains("etag:") && !head.contains("repr-digest:"),
        "{head}"
    );
    let echo = s
        .curl(
            &[
                "-H",
                "If-None-Match: \"guess\"",
                "-H",
                "If-Match: *",
                "-H",
                "Want-Repr-Digest: sha-256=1",
                "-H",
                "If-Modified-Since: Sun, 06 Dec 2026 00:00:00 GMT",
            ],
            "/okta/echo/validators",
        )
        .echo();
    // (A 304 to If-Modified-Since would carry the unmasked body's ETag.)
    for gone in [
        "if-none-match",
        "if-match",
        "want-repr-digest",
        "if-modified-since",
    ] {
        assert!(echo.header(gone).is_empty(), "{gone} forwarded");
    }
    // A write keeps its conditions: they guard the write.
    let echo = s
        .curl(
            &[
                "-X",
                "PUT",
                "-H",
                "If-Match: \"v1\"",
                "-H",
                "If-None-Match: *",
                "--data",
                "x",
            ],
            "/okta/echo/validators",
        )
        .echo();
    assert_eq!(echo.header("if-match"), ["\"v1\""]);
    assert_eq!(echo.header("if-none-match"), ["*"]);
    // Nor do a HEAD's (its GET's body's), or a 304's to a masked read (the same body's), sent
    // whatever the conditions.
    let r = s.curl(&["-I"], "/okta/echo/validated");
    assert_eq!(r.status, 200, "{r:?}");
    let r304 = s.curl(&[], "/okta/echo/validated?not-modified");
    assert_eq!(r304.status, 304, "{r304:?}");
    for r in [r, r304] {
        let head = r.headers.to_ascii_lowercase();
        assert!(
            !head.contains("etag:") && !head.contains("repr-digest:"),
            "{head}"
        );
    }
    // Where no body is masked, the validators stay.
    let r = s.curl(&["-X", "POST", "--data", "x"], "/okta/echo/created");
    assert_eq!(r.status, 201, "{r:?}");
    assert!(
        r.headers.to_ascii_lowercase().contains("etag: \"part-1\""),
        "{r:?}"
    );
}

/// Text the masker would read wrongly is refused where a field rule applies: a CSV export's
/// `mobilePhone` column, which no JSON rule reaches, and UTF-16 text, whose letters the detectors
/// read with a NUL between each (declared by its charset or not).
#[test]
fn text_the_masker_cannot_read_is_refused() {
    let s = setup();
    for query in [
        "type=text/csv",
        "type=text/html",
        "type=text/plain%3B%20charset=utf-16le&enc=utf-16le",
        "type=application/json%3B%20charset=%22UTF-16%22&enc=utf-16",
        "type=text/plain&enc=utf-16le",
    ] {
        let r = s.curl(&[], &format!("/okta/export?{query}"));
        assert_eq!(
            (r.status, r.problem()),
            (502, problem("masking-refused")),
            "{query}: {r:?}"
        );
        assert!(
            // Not a bare "555": the problem's random request id may hold it.
            !r.body.contains("555 0100") && !r.body.contains("5\u{0}5\u{0}5") && !r.body.contains("erin"),
            "{query}: {r:?}"
        );
    }
    // Plain text in an ASCII-compatible charset is masked as text.
    let r = s.curl(&[], "/okta/export?type=text/plain%3B%20charset=ISO-8859-1");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.body.contains("id,mobilePhone") && !r.body.contains("erin@example.com"),
        "{r:?}"
    );
    s.assert_no_secrets();
}

/// An upstream that frames a body with Transfer-Encoding and also says `Content-Length: 0` (or
/// adds trailers) must not get that body past masking, to the agent or into the recording.
#[test]
fn a_lying_content_length_does_not_skip_masking() {
    let mut s = setup();
    for http2 in [false, true] {
        let args: &[&str] = if http2 { &["--http2-prior-knowledge"] } else { &[] };
        let r = s.curl(args, "/okta/lying-length");
        assert_eq!(r.status, 200, "{r:?}");
        assert!(!r.body.contains("alice@example.com"), "{r:?}");
        assert!(r.body.contains("[REDACTED]"), "the body is there, masked: {r:?}");
    }
    s.gw.stop();
    let recorded = s.gw.recordings();
    assert!(recorded.contains("lying-length"), "{recorded}");
    assert!(
        !recorded.contains("alice@example.com"),
        "unmasked in the recording"
    );
}

/// An upstream that breaks off a body the gateway must mask is the upstream's failure (502
/// upstream-unavailable, as for a body passed through), not masking's refusal; and nothing of the
/// half-sent document reaches the agent.
#[test]
fn a_body_cut_short_upstream_is_an_upstream_failure() {
    let mut s = setup();
    for http2 in [false, true] {
        let args: &[&str] = if http2 { &["--http2-prior-knowledge"] } else { &[] };
        let r = s.curl(args, "/okta/cut-short");
        assert_eq!(
            (r.status, r.problem()),
            (502, problem("upstream-unavailable")),
            "{r:?}"
        );
        assert!(!r.body.contains("example.com"), "{r:?}");
    }
    s.gw.stop();
    let events = request_events(&s.gw.recordings());
    let failures: Vec<_> = events
        .iter()
        .filter(|e| e["type"] == "http.response")
        .map(|e| (e["data"]["status"].as_u64(), e["data"]["problem"].as_str()))
        .collect();
    assert_eq!(
        failures,
        [(Some(502), Some("upstream-unavailable")); 2],
        "{events:?}"
    );
    s.assert_no_secrets();
}

/// The events of the recordings that are about requests (session start and end left out).
fn request_events(recordings: &str) -> Vec<Value> {
    recordings
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["type"] != "session.start" && e["type"] != "session.end")
        .collect()
}

#[test]
fn an_upstream_that_is_down_is_a_clear_error_and_on_record() {
    let mut s = setup();
    s.upstream.stop();
    let r = s.curl(&[], "/okta/echo/down");
    assert_eq!(
        (r.status, r.problem()),
        (502, problem("upstream-unavailable")),
        "{r:?}"
    );
    assert!(!r.body.contains("127.0.0.1"), "upstream internals: {r:?}");
    // The read's request and decision wait for its response; the failure is that response.
    s.gw.stop();
    let events = request_events(&s.gw.recordings());
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["http.request", "decision", "http.response"], "{events:?}");
    assert_eq!(events[1]["data"]["action"], "allow");
    let response = &events[2]["data"];
    assert_eq!(
        (response["status"].as_u64(), response["problem"].as_str()),
        (Some(502), Some("upstream-unavailable")),
        "{response}"
    );
    let ids: Vec<&Value> = events.iter().map(|e| &e["data"]["request_id"]).collect();
    assert!(ids.iter().all(|id| *id == ids[0] && id.is_string()), "{ids:?}");
}

/// A write is on record before the upstream sees it; an allowed read waits for its response and
/// goes on record with it, before the agent gets it.
#[test]
fn writes_are_recorded_before_forwarding_and_reads_with_their_response() {
    let s = setup();
    // Sends one request that the upstream holds for a while; returns what was on record while
    // the upstream held it, then the reply.
    let in_flight = |method: &str, marker: &str| -> (String, Reply) {
        let mut args = vec!["-X".to_string(), method.to_string(), "-H".to_string(), s.auth()];
        if method != "GET" {
            args.extend(["-H", "Content-Type: application/json", "-d", "{}"].map(String::from));
        }
        let url = s.gw.url(&format!("/okta/echo/{marker}?delay_ms=2000"));
        let client = std::thread::spawn(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            curl(&args, &url)
        });
        let held = format!("HELD /echo/{marker}");
        let seen = wait_for(Duration::from_secs(20), || {
            s.upstream.requests().contains(&held).then_some(())
        });
        assert!(seen.is_some(), "{}", s.upstream.requests());
        let on_record = s.gw.recordings();
        (on_record, client.join().unwrap())
    };

    let (during, reply) = in_flight("POST", "write-1");
    assert_eq!(reply.status, 200, "{reply:?}");
    let on_record = |kind: &str| {
        during
            .lines()
            .any(|l| l.contains(&format!(r#""type":"{kind}""#)) && l.contains("/echo/write-1"))
    };
    assert!(on_record("http.request") && on_record("decision"), "{during}");

    let (during, reply) = in_flight("GET", "read-1");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(
        !during.contains("/echo/read-1"),
        "a read on record before its response: {during}"
    );
    let after = s.gw.recordings();
    let events = request_events(&after);
    let read_id = events
        .iter()
        .find(|e| e["type"] == "http.request" && e["data"]["path"] == "/echo/read-1")
        .map(|e| e["data"]["request_id"].clone())
        .unwrap_or_else(|| panic!("{after}"));
    let kinds: Vec<&str> = events
        .iter()
        .filter(|e| e["data"]["request_id"] == read_id)
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["http.request", "decision", "http.response"], "{after}");
}

/// A connection still open when the gateway's connection drain limit passes is cut, and its
/// session is closed (signed, "gateway shutdown") before the process goes, not dropped with it:
/// with S3 storage only a closed session is shipped before the pod's spool goes.
#[test]
fn a_session_still_open_at_the_drain_limit_is_closed_before_exit() {
    let mut s = setup();
    let url = s.gw.url("/okta/echo/outlives-the-drain?delay_ms=20000");
    let auth = s.auth();
    let client = std::thread::spawn(move || curl(&["-H", &auth, "--max-time", "40"], &url));
    let seen = wait_for(Duration::from_secs(20), || {
        s.upstream
            .requests()
            .contains("HELD /echo/outlives-the-drain")
            .then_some(())
    });
    assert!(seen.is_some(), "{}", s.upstream.requests());
    s.gw.stop();
    let _ = client.join();
    let recorded = s.gw.recordings();
    let ends: Vec<&str> = recorded
        .lines()
        .filter(|l| l.contains(r#""type":"session.end""#))
        .collect();
    assert_eq!(ends.len(), 1, "{recorded}");
    assert!(
        ends[0].contains(r#""reason":"gateway shutdown""#) && ends[0].contains("drain limit"),
        "{recorded}\n{}",
        s.gw.output()
    );
}

/// Stopping the gateway lets a request in flight finish: the agent gets its answer and the
/// record has it, before the process goes.
#[test]
fn a_request_in_flight_when_the_gateway_stops_is_answered_and_recorded() {
    let mut s = setup();
    let url = s.gw.url("/okta/echo/at-shutdown?delay_ms=2000");
    let auth = s.auth();
    let client = std::thread::spawn(move || curl(&["-H", &auth], &url));
    let seen = wait_for(Duration::from_secs(20), || {
        s.upstream
            .requests()
            .contains("HELD /echo/at-shutdown")
            .then_some(())
    });
    assert!(seen.is_some(), "{}", s.upstream.requests());
    s.gw.stop();
    let reply = client.join().unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    let after = s.gw.recordings();
    let events = request_events(&after);
    let id = events
        .iter()
        .find(|e| e["type"] == "http.request" && e["data"]["path"] == "/echo/at-shutdown")
        .map(|e| e["data"]["request_id"].clone())
        .unwrap_or_else(|| panic!("{after}"));
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "http.response" && e["data"]["request_id"] == id),
        "{after}"
    );
}

/// Without masking, a small body with a declared length is on record in its response's event
/// (one write, made before the agent has it); a body too large to record whole still streams,
/// and its start is recorded when it ends.
#[test]
fn unmasked_bodies_are_recorded_whole_when_small_and_streamed_when_large() {
    const MASKING: &str = "  masking:\n    - jsonFields: [\"$..profile.mobilePhone\"]\n      strategy: Redact\n    - detectors: [Email, CreditCard, OktaApiToken, JWT]\n      strategy: Redact\n";
    let mut s = start(CANARY, |yaml| {
        assert!(yaml.contains(MASKING), "the masking rules moved: {yaml}");
        yaml.replace(MASKING, "")
    });
    let small = s.curl(&[], "/okta/api/v1/users");
    assert_eq!(small.status, 200, "{small:?}");
    assert!(
        small.body.contains("alice@example.com"),
        "no masking applies: {small:?}"
    );
    let large = s.curl(&[], "/okta/big?bytes=200000");
    assert_eq!(large.status, 200, "{large:?}");
    // More than the 64 KiB a recording keeps of a body.
    assert!(large.body.len() > 150_000, "{}", large.body.len());
    s.gw.stop();
    let recordings = s.gw.recordings();
    let events = request_events(&recordings);
    let of = |path: &str| -> Vec<&Value> {
        let id = events
            .iter()
            .find(|e| e["type"] == "http.request" && e["data"]["path"] == path)
            .map(|e| e["data"]["request_id"].clone())
            .unwrap_or_else(|| panic!("no request to {path}: {recordings}"));
        events.iter().filter(|e| e["data"]["request_id"] == id).collect()
    };
    let kinds = |evs: &[&Value]| -> Vec<String> {
        evs.iter()
            .map(|e| e["type"].as_str().unwrap().to_string())
            .collect()
    };

    let small_events = of("/api/v1/users");
    assert_eq!(
        kinds(&small_events),
        ["http.request", "decision", "http.response"]
    );
    let body = &small_events[2]["data"]["body"];
    let sent: Value = serde_json::from_str(&small.body).unwrap();
    assert_eq!(body["json"], sent, "{body}");
    assert_eq!(body["bytes"].as_u64(), Some(small.body.len() as u64));
    assert_eq!(body["truncated"], false);

    let large_events = of("/big");
    assert_eq!(
        kinds(&large_events),
        ["http.request", "decision", "http.response", "http.response.body"]
    );
    assert_eq!(large_events[2]["data"]["body"]["streamed"], true);
    let tee = &large_events[3]["data"];
    assert_eq!(tee["bytes"].as_u64(), Some(large.body.len() as u64), "{tee}");
    assert_eq!(tee["complete"], true);
    assert_eq!(tee["body"]["truncated"], true);
}

#[test]
fn absolute_form_must_agree_with_host_and_x_forwarded_host_is_ignored() {
    let s = setup();
    let host = s.host();
    let auth = s.auth();
    // The URI names another authority than Host.
    let r = s.raw(format!(
        "GET http://evil.example/okta/echo/abs-mismatch HTTP/1.1\r\nHost: {host}\r\n{auth}\r\n\r\n"
    ));
    let res = r.only();
    assert_eq!((res.status, res.problem()), (400, problem("bad-request")));
    // Two Host headers.
    let r = s.raw(format!(
        "GET /okta/echo/abs-twohosts HTTP/1.1\r\nHost: {host}\r\nHost: evil.example\r\n{auth}\r\n\r\n"
    ));
    let res = r.only();
    assert_eq!((res.status, res.problem()), (400, problem("bad-request")));
    s.assert_not_forwarded("abs-mismatch");
    s.assert_not_forwarded("abs-twohosts");
    // Agreeing absolute-form is proxied like origin-form; X-Forwarded-Host changes nothing.
    let r = s.raw(format!(
        "GET http://{host}/okta/echo/abs-ok HTTP/1.1\r\nHost: {host}\r\n{auth}\r\nX-Forwarded-Host: evil.example\r\nConnection: close\r\n\r\n"
    ));
    let echo = r.only().echo();
    assert_eq!(echo.path(), "/echo/abs-ok");
    assert_eq!(echo.header("host"), [format!("127.0.0.1:{}", s.upstream.port)]);
    assert!(echo.header("x-forwarded-host").is_empty());
    s.assert_no_secrets();
}

// ---------------------------------------------------------------------------------------------
// Upgrades, slow and oversized requests.

#[test]
fn upgrades_are_refused_and_never_reach_the_upstream() {
    let s = setup();
    for (marker, upgrade) in [
        (
            "upgrade-h2c",
            "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
        ),
        (
            "upgrade-ws",
            "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
        ),
        ("upgrade-bare", "Upgrade: websocket\r\n"),
    ] {
        let r = s.raw(format!(
            "GET /okta/echo/{marker} HTTP/1.1\r\n{}{upgrade}\r\n",
            s.creds()
        ));
        let res = r.only();
        assert_eq!(
            (res.status, res.problem()),
            (501, problem("unsupported-upgrade")),
            "{marker}: {}",
            r.text()
        );
        s.assert_not_forwarded(marker);
    }
    // The refusal of an allowed GET's upgrade is on record before it is answered, not held
    // for the response a forwarded read would have shared its write with: read while the
    // connection (and so its session) is still open.
    let mut open = TcpStream::connect(("127.0.0.1", s.gw.port)).unwrap();
    open.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    open.write_all(
        format!(
            "GET /okta/echo/upgrade-on-record HTTP/1.1\r\n{}Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            s.creds()
        )
        .as_bytes(),
    )
    .unwrap();
    let mut answer = [0u8; 64];
    let n = open.read(&mut answer).unwrap();
    assert!(
        answer[..n].starts_with(b"HTTP/1.1 501"),
        "{}",
        String::from_utf8_lossy(&answer[..n])
    );
    let recorded = s.gw.recordings();
    assert!(
        recorded.contains("\"path\":\"/echo/upgrade-on-record\"")
            && recorded.contains("GET /echo/upgrade-on-record: allowed"),
        "the refused upgrade is not on record yet:\n{recorded}"
    );
    drop(open);
    // CONNECT would make the gateway a tunnel to anywhere.
    let target = format!("127.0.0.1:{}", s.upstream.port);
    let r = s.raw(format!(
        "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{}\r\n\r\n",
        s.auth()
    ));
    let res = r.only();
    assert_eq!((res.status, res.problem()), (501, problem("unsupported-upgrade")));
    s.assert_not_forwarded("CONNECT");
    // A lower-case method would escape rules that name DELETE or POST, and frameworks that
    // upper-case it would run it as one (`_method` bodies are only looked for in POSTs too).
    for (method, marker) in [("delete", "lower-delete"), ("post", "lower-post")] {
        let r = s.raw(format!(
            "{method} /okta/echo/{marker} HTTP/1.1\r\n{}Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 14\r\n\r\n_method=DELETE",
            s.creds()
        ));
        let res = r.only();
        assert_eq!(
            (res.status, res.problem()),
            (400, problem("bad-request")),
            "{method}: {}",
            r.text()
        );
        s.assert_not_forwarded(marker);
    }
    s.assert_no_secrets();
}

/// How long until the gateway closes a connection on which `dribble` is sent one byte at a time
/// every `every` (after `first` is sent at once); `None` if still open after `give_up`.
fn time_to_close(
    port: u16,
    first: &[u8],
    dribble: &[u8],
    every: Duration,
    give_up: Duration,
) -> Option<Duration> {
    let started = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(every)).unwrap();
    let _ = s.write_all(first);
    let mut next = dribble.iter().cycle();
    let mut buf = [0u8; 4096];
    while started.elapsed() < give_up {
        match s.read(&mut buf) {
            // Whatever the gateway says (a 408, say), it must then close.
            Ok(n) if n > 0 => continue,
            Ok(_) => return Some(started.elapsed()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if !dribble.is_empty() && s.write_all(&[*next.next().unwrap_or(&b'a')]).is_err() {
                    return Some(started.elapsed());
                }
            }
            Err(_) => return Some(started.elapsed()),
        }
    }
    None
}

#[test]
fn slow_heads_are_cut_off_after_the_header_read_timeout() {
    let s = setup();
    let port = s.gw.port;
    let limit = HEADER_READ_TIMEOUT + SLACK;
    let give_up = limit + Duration::from_secs(5);
    let partial = format!("GET /okta/echo/slow-partial HTTP/1.1\r\n{}", s.creds());
    let drip_head = format!("GET /okta/echo/slow-drip HTTP/1.1\r\n{}X-Pad: ", s.creds());
    // All at once, so the test waits for the timeout once.
    let cases: Vec<(&str, Vec<u8>, Vec<u8>)> = vec![
        ("partial head, then silence", partial.into_bytes(), vec![]),
        (
            "a header value one byte at a time",
            drip_head.into_bytes(),
            b"a".to_vec(),
        ),
        ("nothing at all", vec![], vec![]),
        (
            "part of the HTTP/2 preface",
            b"PRI * HTTP/2.0\r\n".to_vec(),
            vec![],
        ),
        (
            "the HTTP/2 preface and no request",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00".to_vec(),
            vec![],
        ),
    ];
    let threads: Vec<_> = cases
        .into_iter()
        .map(|(what, first, dribble)| {
            std::thread::spawn(move || {
                (
                    what,
                    time_to_close(port, &first, &dribble, Duration::from_millis(500), give_up),
                )
            })
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    for (what, closed) in &results {
        assert!(
            closed.is_some_and(|after| after <= limit),
            "{what}: not closed within {limit:?}: {results:?}"
        );
    }
    s.assert_not_forwarded("slow-");
}

#[test]
fn oversized_heads_and_bodies_are_refused() {
    let s = setup();
    // One header larger than the whole head may be.
    let big = "a".repeat(MAX_HEADER_BYTES + 1024);
    let r = s.raw(format!(
        "GET /okta/echo/big-header HTTP/1.1\r\n{}X-Big: {big}\r\n\r\n",
        s.creds()
    ));
    let statuses: Vec<u16> = r.responses().iter().map(|r| r.status).collect();
    assert!(r.closed, "{statuses:?}");
    assert!(statuses.is_empty() || statuses == [431], "{statuses:?}");
    // Many small headers adding up to more.
    let many: String = (0..2000)
        .map(|i| format!("X-H{i}: {}\r\n", "b".repeat(40)))
        .collect();
    let r = s.raw(format!(
        "GET /okta/echo/many-headers HTTP/1.1\r\n{}{many}\r\n",
        s.creds()
    ));
    let statuses: Vec<u16> = r.responses().iter().map(|r| r.status).collect();
    assert!(r.closed, "{statuses:?}");
    assert!(statuses.is_empty() || statuses == [431], "{statuses:?}");
    // More headers than the parser takes, each small.
    let count: String = (0..150).map(|i| format!("X-N{i}: 1\r\n")).collect();
    let r = s.raw(format!(
        "GET /okta/echo/header-count HTTP/1.1\r\n{}{count}\r\n",
        s.creds()
    ));
    let statuses: Vec<u16> = r.responses().iter().map(|r| r.status).collect();
    assert!(r.closed, "{statuses:?}");
    assert!(statuses.is_empty() || statuses == [431], "{statuses:?}");
    s.assert_not_forwarded("big-header");
    s.assert_not_forwarded("many-headers");
    s.assert_not_forwarded("header-count");

    // A declared body over the limit is refused before a byte of it is read or forwarded.
    let r = s.raw(format!(
        "POST /okta/echo/big-body HTTP/1.1\r\n{}Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        s.creds(),
        MAX_REQUEST_BODY + 1
    ));
    let res = r.only();
    assert_eq!((res.status, res.problem()), (413, problem("request-too-large")));
    s.assert_not_forwarded("big-body");
    s.assert_no_secrets();
}

// ---------------------------------------------------------------------------------------------
// The TLS listener.

/// A CA and a server certificate for 127.0.0.1 signed by it: (CA PEM, certificate PEM, key PEM).
fn certificates() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "agentgate-e2e-ca");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let mut server = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    server
        .distinguished_name
        .push(DnType::CommonName, "agentgate-e2e");
    server.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().unwrap();
    let cert = server.signed_by(&key, &issuer).unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

#[test]
fn the_tls_listener_serves_http2_and_http11_with_a_bearer_token() {
    let (ca, crt, key) = certificates();
    let mut s = start(CANARY, |yaml| {
        let listener = "- {name: http, protocol: HTTP, port: ${LISTEN_PORT}, address: 127.0.0.1}";
        assert!(yaml.contains(listener));
        let yaml = yaml.replace(
            listener,
            "- {name: http, protocol: HTTP, port: ${LISTEN_PORT}, address: 127.0.0.1, tls: {secretName: gw-tls}}",
        );
        format!(
            "{yaml}---\napiVersion: v1\nkind: Secret\nmetadata: {{name: gw-tls, namespace: e2e}}\ntype: kubernetes.io/tls\nstringData: {{tls.crt: {}, tls.key: {}}}\n",
            serde_json::to_string(&crt).unwrap(),
            serde_json::to_string(&key).unwrap()
        )
    });
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca).unwrap();
    let ca_file = ca_file.to_str().unwrap();
    let url = |path: &str| format!("https://127.0.0.1:{}{path}", s.gw.port);
    let auth = s.auth();

    for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let r = curl(&["--cacert", ca_file, flag, "-H", &auth], &url("/okta/echo/tls"));
        assert_eq!(
            (r.status, r.version.as_str()),
            (200, version),
            "{flag}: {r:?}\n{}",
            s.gw.output()
        );
        let echo = r.echo();
        assert_eq!(echo.path(), "/echo/tls");
        assert_eq!(echo.header("authorization"), [hashed(&format!("SSWS {CANARY}"))]);
        // Over HTTP/2 too, the same normalization applies.
        let r = curl(
            &["--cacert", ca_file, flag, "--path-as-is", "-H", &auth],
            &url("/okta/echo/tls-confuse/%2e%2e/x"),
        );
        assert_eq!((r.status, r.problem()), (400, problem("bad-request")), "{flag}");
    }
    // Without the CA curl refuses the certificate; plaintext on the TLS port gets no answer.
    let r = curl(&["-H", &auth], &url("/okta/echo/tls-untrusted"));
    assert_eq!(r.status, 0, "{r:?}");
    let r = curl(&["-H", &auth], &s.gw.url("/okta/echo/tls-plaintext"));
    assert_eq!(r.status, 0, "{r:?}");
    s.assert_not_forwarded("tls-");

    s.gw.stop();
    let rec = s.gw.recordings();
    assert!(rec.contains(r#""tls":true"#), "{rec}");
    s.assert_no_secrets();
}

/// A GET with a body is refused: an upstream that ignores GET bodies would parse the body as the
/// next request on the pooled connection.
#[test]
fn get_requests_with_a_body_are_refused() {
    let idp = OidcProvider::start();
    let upstream = EchoUpstream::start();
    let gw = Gateway::start(&okta_manifests(&OktaSetup {
        issuer: &idp.issuer,
        upstream: &upstream.url(),
        upstream_token: "get-body-test-token",
        require_dpop: false,
    }));
    let tok = idp.token("ci-agent", "api://agentgate", None)["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let hidden = "GET /echo/hidden-in-get-body HTTP/1.1\r\nHost: x\r\n\r\n";
    for http2 in [false, true] {
        let out = Command::new("curl")
            .args([
                "-s",
                "-o",
                "-",
                "-w",
                "\n%{http_code}",
                "-X",
                "GET",
                "--data-binary",
                hidden,
            ])
            .args(if http2 {
                vec!["--http2-prior-knowledge"]
            } else {
                vec![]
            })
            .args(["-H", &format!("Authorization: Bearer {tok}")])
            .arg(gw.url("/okta/echo/x"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        // Over HTTP/2 the gateway answers before curl has sent the DATA frames and resets the
        // stream, which curl sometimes reports as a failed transfer instead of the 400.
        let reset = http2 && text.trim() == "000";
        assert!(reset || text.ends_with("400"), "http2={http2}: {text}");
        assert!(reset || text.contains("bad-request"), "{text}");
    }
    let log = upstream.requests();
    assert!(
        !log.contains("hidden-in-get-body") && !log.contains("/echo/x"),
        "{log}"
    );
}

/// Random damage to pipelined requests, end to end: a script of requests (allowed, denied by
/// path, by method, awaiting approval, a request hidden in a body, chunked framing, dot
/// segments) is mutated byte by byte, everywhere but the token, and sent raw. Whatever the
/// bytes, every request the upstream ever answers is one the policy allows, the gateway never
/// panics, keeps serving, and no secret reaches its log or recordings.
#[test]
fn mutated_request_streams_reach_the_upstream_only_as_allowed_requests() {
    let s = setup();
    let script = concat!(
        "GET /okta/echo/a?x=1 HTTP/1.1\r\nHost: H\r\nAuthorization: Bearer {T}\r\n\r\n",
        "GET /okta/api/v1/api-tokens/t1 HTTP/1.1\r\nHost: H\r\nAuthorization: Bearer {T}\r\n\r\n",
        "DELETE /okta/api/v1/users/00u1 HTTP/1.1\r\nHost: H\r\nAuthorization: Bearer {T}\r\n\r\n",
        "POST /okta/echo/b HTTP/1.1\r\nHost: H\r\nAuthorization: Bearer {T}\r\nContent-Length: 42\r\n\r\n",
        "GET /okta/api/v1/api-tokens/t2 HTTP/1.1\r\n\r\n",
        "POST /okta/echo/c HTTP/1.1\r\nHost: H\r\nAuthorization: Bearer {T}\r\nTransfer-Encoding: chunked\r\n\r\n",
        "5\r\nhello\r\n0\r\n\r\n",
        "GET /okta/echo/../api/v1/api-tokens HTTP/1.1\r\nHost: H\r\nAuthorization: Bearer {T}\r\n\r\n",
        "GET /okta/echo/d HTTP/1.1\r\nHost: H\r\nX-Admin: 1\r\nAuthorization: Bearer {T}\r\n\r\n",
        "PUT /okta/api/v1/users HTTP/1.1\r\nHost: H\r\nAuthorization: Bearer {T}\r\nContent-Length: 2\r\n\r\n{}",
    )
    .as_bytes();
    // Found by the mutation below: the agent's token under a header name no rule knows (or in
    // the query, or a body the upstream echoes) was recorded as it was. It is hidden by value.
    let token_header = format!("X-Token: {}", s.token);
    let query = format!("/okta/echo/token-elsewhere?t={}", s.token);
    let r = s.curl(&["-H", &token_header, "--data", &s.token], &query);
    assert_eq!(r.status, 200);
    s.assert_no_secrets();

    let mut m = agentgate_e2e::mutate::Mutator::new(0x2545_f491_4f6c_dd1d);
    for _ in 0..150 {
        // Every byte but the token's: mutants of the token would only be refused as 401.
        let bytes = m.mutate(script, b"\r\n :/.%?#-0A\0\x7f");
        let text = String::from_utf8_lossy(&bytes).replace("{T}", &s.token);
        let mut c = TcpStream::connect(("127.0.0.1", s.gw.port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let _ = c.write_all(text.as_bytes());
        let _ = c.shutdown(std::net::Shutdown::Write);
        let mut sink = Vec::new();
        let _ = c.read_to_end(&mut sink);
    }
    // The policy: GET/HEAD on the users directory, /echo/** and a few fixtures; writes on
    // /echo/** only. Nothing else may have been answered upstream.
    let allowed = |method: &str, path: &str| {
        let path = path.split('?').next().unwrap_or_default();
        let reads = path == "/api/v1/users"
            || path.starts_with("/api/v1/users/")
            || path.starts_with("/echo/")
            || [
                "/text",
                "/binary",
                "/big",
                "/reflect",
                "/gzip-reflect",
                "/te-gzip-reflect",
                "/lying-length",
            ]
            .contains(&path);
        (matches!(method, "GET" | "HEAD") && reads)
            || (matches!(method, "POST" | "PUT" | "PATCH") && path.starts_with("/echo/"))
    };
    let seen = s.upstream.requests();
    let mut answered = 0;
    for line in seen.lines() {
        let Some((method, path)) = line.split_once(' ') else {
            continue;
        };
        if method == "HELD" || method == "CUT" || line == "GET /ready" || !path.starts_with('/') {
            continue;
        }
        answered += 1;
        assert!(allowed(method, path), "the upstream answered {line:?}");
    }
    assert!(
        answered > 50,
        "too few requests got through to test anything: {answered}"
    );
    let log = s.gw.output();
    assert!(!log.contains("panicked"), "the gateway panicked:\n{log}");
    let r = s.curl(&[], "/okta/echo/still-serving");
    assert_eq!(r.status, 200);
    s.assert_no_secrets();
}
