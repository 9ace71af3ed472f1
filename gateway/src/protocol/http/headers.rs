//! Header handling on the way in and out. On the way in, everything that could speak for the
//! caller's identity or steer the proxy is removed (the agent's own credentials, hop-by-hop
//! headers and whatever `Connection` names, impersonation and client-set identity headers), and
//! only then is the Connection's credential added, so nothing the client sends can replace it
//! or make the gateway drop it.

use std::borrow::Cow;

use base64::Engine;
use hyper::http::{HeaderMap, HeaderName, HeaderValue, header};
use serde::Serialize;

use crate::config::compile::Credential;
use agentgate_crds::connection::CredentialScheme;

/// Whether a request speaks DPoP: a proof, or the DPoP scheme. Its answers then carry the
/// current `DPoP-Nonce` where nonces are required.
pub fn speaks_dpop(h: &HeaderMap) -> bool {
    h.contains_key("dpop")
        || h.get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().get(..5))
            .is_some_and(|s| s.eq_ignore_ascii_case(b"dpop "))
}

/// Whether `value` is a plain `host[:port]`, as Host and `:authority` must be (RFC 9110 §7.2):
/// no userinfo, path, query or fragment. The authority becomes part of the URL a DPoP proof must
/// name (`htu`): a Host of `gw/allowed/path?` would make the URL read as another path than the
/// one routed and forwarded.
pub fn is_plain_authority(value: &str) -> bool {
    let Ok(authority) = value.parse::<hyper::http::uri::Authority>() else {
        return false;
    };
    let host = authority.host();
    // The host is where the text starts, so what follows it is the port, if anything.
    let port = value.get(host.len()..).unwrap_or("x");
    !value.contains('@')
        && !host.is_empty()
        && value.starts_with(host)
        && (port.is_empty()
            || port
                .strip_prefix(':')
                .is_some_and(|p| (1..=5).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit())))
}

/// Response headers that describe a body's bytes: removed wherever masking may rewrite it.
/// Storage services and registries send their own (a GCS object's MD5 in `x-goog-hash`, S3's
/// `x-amz-checksum-*` when asked): each confirms a guessed masked value offline as an ETag does.
const BODY_VALIDATORS: [&str; 10] = [
    "etag",
    "content-md5",
    "digest",
    "repr-digest",
    "content-digest",
    "x-goog-hash",
    "x-goog-stored-content-length",
    "docker-content-digest",
    "x-ms-content-crc64",
    "x-ms-blob-content-md5",
];

/// Families of body validators named by prefix (`x-amz-checksum-crc32`, `-sha256`, ...).
const BODY_VALIDATOR_PREFIXES: [&str; 1] = ["x-amz-checksum-"];

/// Whether a response header describes the body's bytes (see [`BODY_VALIDATORS`]).
pub fn is_body_validator(name: &HeaderName) -> bool {
    let name = name.as_str();
    BODY_VALIDATORS.contains(&name) || BODY_VALIDATOR_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Removes the headers that describe the body's bytes.
pub fn remove_body_validators(headers: &mut HeaderMap) {
    let found: Vec<HeaderName> = headers.keys().filter(|n| is_body_validator(n)).cloned().collect();
    for name in found {
        headers.remove(name);
    }
}

/// Request headers that compare a body with a client's guess, or ask for its digest: removed
/// wherever masking applies.
pub const BODY_VALIDATORS_ASKED: [HeaderName; 8] = [
    header::IF_NONE_MATCH,
    header::IF_MATCH,
    // A 304 answers them with the unmasked body's validators.
    header::IF_MODIFIED_SINCE,
    header::IF_UNMODIFIED_SINCE,
    HeaderName::from_static("want-digest"),
    HeaderName::from_static("want-repr-digest"),
    HeaderName::from_static("want-content-digest"),
    // S3 answers it with the stored object's checksums.
    HeaderName::from_static("x-amz-checksum-mode"),
];

/// Hop-by-hop headers (RFC 9110 §7.6.1) and their common non-standard relatives.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "http2-settings",
];

/// Request headers that carry the caller's credentials or claims about who the caller is.
const IDENTITY_HEADERS: &[&str] = &[
    "authorization",
    "dpop",
    "cookie",
    "forwarded",
    "x-real-ip",
    "x-user",
    "x-user-id",
    "x-email",
    "x-groups",
    "x-client-cert",
    "x-ssl-client-cert",
    "x-ssl-client-dn",
    "ssl-client-cert",
    "x-goog-authenticated-user-email",
    "x-goog-authenticated-user-id",
    "x-goog-iap-jwt-assertion",
    "remote-user",
    "remote-groups",
    "remote-email",
    "remote-name",
    // Headers some frameworks honour to change the method or path after the gateway decided:
    // they would let a request allowed as `GET /a` act as `DELETE /b`.
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-url",
    "x-rewrite-url",
    "x-original-method",
    // The client's address as CDNs and load balancers assert it: frameworks that trust the
    // gateway's private address as a proxy take these for the caller's (Rails' remote_ip,
    // nginx's real_ip_header), so an agent could choose the address an allowlist or a log sees.
    "client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-client-ip",
    "x-cluster-client-ip",
    "x-originating-ip",
    "proxy-client-ip",
    "wl-proxy-client-ip",
];

/// Response headers that hand the agent a credential the upstream made from the injected one
/// (a session cookie, a Keystone token, Digest's next nonce): with it the agent could call the
/// upstream directly, past policy and recording. Through the gateway it is of no use anyway:
/// `Cookie` and `Authorization` are the gateway's to send.
const CREDENTIAL_RESPONSE_HEADERS: &[&str] = &[
    "set-cookie",
    "set-cookie2",
    "x-subject-token",
    "authentication-info",
    "proxy-authentication-info",
];

/// Prefixes of request headers that assert an identity (`Impersonate-User`,
/// `X-Remote-Group`, `X-Forwarded-User`, ...) or are the gateway's own.
const IDENTITY_PREFIXES: &[&str] = &[
    "impersonate-",
    "x-remote-",
    "x-forwarded-",
    "x-auth-request-",
    "x-authenticated-",
    "x-agentgate-",
    // Identity-aware proxies' own: AWS ALB, Azure App Service, Cloudflare Access, Kong,
    // Pomerium, Grafana's auth proxy.
    "x-amzn-oidc-",
    "x-ms-client-principal",
    "cf-access-",
    "x-consumer-",
    "x-pomerium-",
    "x-webauth-",
];

/// Header values never copied into recordings or logs.
const SECRET_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "dpop",
    "cookie",
    "set-cookie",
    "x-api-key",
    "x-auth-token",
    // OpenStack Keystone's issued token; HTTP Digest's next nonce and response.
    "x-subject-token",
    "authentication-info",
    "proxy-authentication-info",
];

/// Words that make a header name a secret's wherever they stand in it (`X-Vault-Token`,
/// `Private-Token`, `X-Amz-Security-Token`, `X-Client-Secret`): a value no
/// detector recognises is withheld by name.
const SECRET_NAME_WORDS: &[&str] = &["token", "secret", "passw", "apikey", "api-key", "credential"];

/// Query parameters of a URL header (`Location`) that carry OAuth codes and tokens, in a query or
/// a fragment.
const SECRET_URL_PARAMS: &[&str] = &[
    "code",
    "access_token",
    "id_token",
    "refresh_token",
    "token",
    "client_secret",
];

/// Request headers an approval does not cover: credentials (the agent's, replaced on the way
/// out), framing, the body's type (covered on its own), the agent's reason, and values a client
/// draws afresh for every request (tracing ids, kubectl's session), which a retry after the
/// approval would not repeat.
const UNBOUND_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "dpop",
    "cookie",
    "host",
    "content-length",
    "content-type",
    "expect",
    "agentgate-reason",
    "user-agent",
    // `Accept` is bound: APIs pick a version or a preview by it (GitHub's `vnd.github.*`).
    "accept-encoding",
    "accept-language",
    "date",
    "traceparent",
    "tracestate",
    "baggage",
    "b3",
    "sentry-trace",
    "x-request-id",
    "x-correlation-id",
    "x-amzn-trace-id",
    "x-cloud-trace-context",
    "kubectl-session",
    "kubectl-command",
    // SDKs' own per-request and per-attempt ids: AWS (`attempt=2; max=3` on a retry), Azure,
    // and generic ones.
    "amz-sdk-invocation-id",
    "amz-sdk-request",
    "x-ms-client-request-id",
    "x-client-request-id",
    "request-id",
];
/// Prefixes of headers drawn afresh per request or describing the client, not the operation:
/// tracing, and the Stainless-generated SDKs' (OpenAI's, Anthropic's) `X-Stainless-Retry-Count`,
/// `-Timeout`, `-Lang` and the like.
const UNBOUND_PREFIXES: &[&str] = &["x-b3-", "x-datadog-", "x-stainless-"];

/// The request headers an approval covers, sorted by name (repeats in order): every forwarded
/// one that may change what the upstream does (`X-Amz-Copy-Source`, `Destination`, `If-Match`),
/// which is all but [`UNBOUND_HEADERS`] and the hop-by-hop and identity headers the gateway
/// never forwards.
pub fn bound_for_approval(headers: &HeaderMap) -> Vec<(&str, &HeaderValue)> {
    let mut bound: Vec<(&str, &HeaderValue)> = headers
        .iter()
        .filter(|(n, _)| {
            let d = dashed(n.as_str());
            !UNBOUND_HEADERS.contains(&&*d)
                && !UNBOUND_PREFIXES.iter().any(|p| d.starts_with(p))
                && !is_hop_by_hop(n.as_str())
                && !is_identity_header(n.as_str())
        })
        .map(|(n, v)| (n.as_str(), v))
        .collect();
    bound.sort_by(|a, b| a.0.cmp(b.0));
    bound
}

/// Whether a header's values are secrets, shown `[REDACTED]` wherever they are shown.
pub fn is_secret(name: &str) -> bool {
    let name = dashed(name);
    SECRET_HEADERS.contains(&&*name) || has_secret_word(name.as_bytes()) || names_a_key(&name)
}

/// Whether one of [`SECRET_NAME_WORDS`] stands anywhere in `name`, in any case: one pass that
/// compares words only where a byte can begin one (a header is checked on every recorded request).
fn has_secret_word(name: &[u8]) -> bool {
    (0..name.len()).any(|i| {
        SECRET_WORD_STARTS[usize::from(name[i] | 0x20)]
            && SECRET_NAME_WORDS.iter().any(|w| {
                name[i..]
                    .get(..w.len())
                    .is_some_and(|r| r.eq_ignore_ascii_case(w.as_bytes()))
            })
    })
}

/// The first letters of [`SECRET_NAME_WORDS`] (lower case), indexed by byte.
const SECRET_WORD_STARTS: [bool; 256] = {
    let mut starts = [false; 256];
    let mut i = 0;
    while i < SECRET_NAME_WORDS.len() {
        starts[SECRET_NAME_WORDS[i].as_bytes()[0] as usize] = true;
        i += 1;
    }
    starts
};

/// A header name with a `key` word not followed by `id` or `name`: encryption keys
/// (`X-Amz-Server-Side-Encryption-Customer-Key`, `X-Goog-Encryption-Key`, `X-Ms-Encryption-Key`,
/// and the key's `-Key-MD5`), API keys (`Ocp-Apim-Subscription-Key`, `X-Functions-Key`). Not
/// `Idempotency-Key`, an id the client draws, or a key's id (`...-Aws-Kms-Key-Id`).
fn names_a_key(dashed: &str) -> bool {
    if dashed == "idempotency-key" {
        return false;
    }
    let mut words = dashed.split('-').peekable();
    while let Some(w) = words.next() {
        if w == "key" && !matches!(words.peek(), Some(&("id" | "name"))) {
            return true;
        }
    }
    false
}

/// A URL with the values of its [`SECRET_URL_PARAMS`] (in the query or the fragment) replaced by
/// `[REDACTED]`.
fn redact_url_params(url: &str) -> Cow<'_, str> {
    let mut out = String::with_capacity(url.len());
    let mut changed = false;
    let mut rest = url;
    while let Some(i) = rest.find(['?', '#', '&']) {
        out.push_str(&rest[..=i]);
        rest = &rest[i + 1..];
        let end = rest.find(['&', '#']).unwrap_or(rest.len());
        let (pair, after) = rest.split_at(end);
        match pair.split_once('=') {
            Some((k, _)) if SECRET_URL_PARAMS.iter().any(|p| k.eq_ignore_ascii_case(p)) => {
                out.push_str(k);
                out.push_str("=[REDACTED]");
                changed = true;
            }
            _ => out.push_str(pair),
        }
        rest = after;
    }
    if !changed {
        return Cow::Borrowed(url);
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// `name` with `_` read as `-`: CGI-style upstreams (WSGI, PHP, Rack) read `X_Forwarded_User`
/// and `X-Forwarded-User`, or `Transfer_Encoding` and `Transfer-Encoding`, as the same variable,
/// so every list of header names here is checked in both spellings.
fn dashed(name: &str) -> Cow<'_, str> {
    if name.contains('_') {
        Cow::Owned(name.replace('_', "-"))
    } else {
        Cow::Borrowed(name)
    }
}

fn is_identity_header(name: &str) -> bool {
    let name = dashed(name);
    IDENTITY_HEADERS.contains(&&*name) || IDENTITY_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Whether `name` (lowercase) is hop-by-hop, in either spelling.
fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.contains(&&*dashed(name))
}

/// The first token of the `Connection` header that is neither `close` nor a hop-by-hop header's
/// name. Such a header would be decided on and then removed before forwarding (`Connection:
/// x-dry-run` would strip the `X-Dry-Run: true` an Allow rule required), so it is refused.
pub fn connection_names_end_to_end(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(|t| String::from_utf8_lossy(t).trim().to_ascii_lowercase())
        .find(|t| !t.is_empty() && t != "close" && !is_hop_by_hop(t))
}

/// Removes hop-by-hop headers, including every header the `Connection` header names.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    // Look before removing: most messages carry none of these, and a removal by name parses
    // and hashes the name whether it is there or not.
    let present: Vec<HeaderName> = headers
        .keys()
        .filter(|n| is_hop_by_hop(n.as_str()))
        .cloned()
        .collect();
    for n in present {
        headers.remove(n);
    }
}

/// Cleans a request's headers for forwarding: hop-by-hop first, then identity headers.
/// Returns the names removed as identity headers (for the recording).
pub fn sanitize_request(headers: &mut HeaderMap) -> Vec<String> {
    remove_hop_by_hop(headers);
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|n| is_identity_header(n.as_str()))
        .cloned()
        .collect();
    let mut removed: Vec<String> = Vec::with_capacity(doomed.len());
    for n in doomed {
        headers.remove(&n);
        if !removed.iter().any(|r| r == n.as_str()) {
            removed.push(n.as_str().to_string());
        }
    }
    // The gateway reads bodies to mask and record them; compressed bodies would hide them.
    headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("identity"));
    removed
}

/// The credential cannot be expressed as a header value (a Secret with a line break, say).
#[derive(Debug, thiserror::Error)]
#[error("the Connection's credential cannot be sent as an HTTP header")]
pub struct CredentialError;

/// Adds the Connection's credential. Client certificates are injected by the TLS layer.
pub fn inject_credential(
    headers: &mut HeaderMap,
    credential: Option<&Credential>,
) -> Result<(), CredentialError> {
    let Some(c) = credential else { return Ok(()) };
    let secret = c.secret.as_ref().map(|s| s.expose()).unwrap_or_default();
    let value = match c.scheme {
        CredentialScheme::Bearer => [b"Bearer ".as_slice(), secret].concat(),
        CredentialScheme::Ssws => [b"SSWS ".as_slice(), secret].concat(),
        CredentialScheme::Basic => [b"Basic ".as_slice(), &basic_token(c).unwrap_or_default()].concat(),
        CredentialScheme::ClientCertificate | CredentialScheme::PostgresPassword => return Ok(()),
    };
    let mut v = HeaderValue::from_bytes(&value).map_err(|_| CredentialError)?;
    v.set_sensitive(true);
    headers.insert(header::AUTHORIZATION, v);
    Ok(())
}

/// The token of a Basic credential, `base64(user:secret)`; `None` for other schemes.
pub fn basic_token(c: &Credential) -> Option<Vec<u8>> {
    if c.scheme != CredentialScheme::Basic {
        return None;
    }
    let secret = c.secret.as_ref().map(|s| s.expose()).unwrap_or_default();
    let user = c.username.as_deref().unwrap_or_default();
    let raw = [user.as_bytes(), b":", secret].concat();
    Some(base64::engine::general_purpose::STANDARD.encode(raw).into_bytes())
}

/// Cleans an upstream response's headers before they go to the client.
pub fn sanitize_response(headers: &mut HeaderMap) {
    // Transfer-Encoding overrides Content-Length (RFC 9112 6.3), and hyper reads the body by it;
    // a Content-Length left beside it would describe the body wrongly once Transfer-Encoding
    // (hop-by-hop) is gone, e.g. `0` for a body that has data and so skips masking.
    if headers.contains_key(header::TRANSFER_ENCODING) {
        headers.remove(header::CONTENT_LENGTH);
    }
    remove_hop_by_hop(headers);
    for name in CREDENTIAL_RESPONSE_HEADERS {
        headers.remove(*name);
    }
}

/// Where an upstream's own URLs lead through the gateway: its origin and base path are the
/// gateway's public origin and the route's path prefix. Without this an agent following a
/// redirect or an Okta `Link: <...>; rel="next"` page would leave the gateway for the upstream
/// itself, or, on a prefix route, ask the gateway for a path outside the prefix.
#[derive(Clone, Copy, Debug)]
pub struct Rebase<'a> {
    /// The upstream's `scheme://host:port` (see [`super::upstream::Upstream::origin`]).
    pub upstream_origin: &'a str,
    /// The upstream's base path, no trailing slash (`""` for none).
    pub base_path: &'a str,
    /// `scheme://authority` the agent addressed the gateway by, when it is known (a configured
    /// public origin naming the request's Host): the upstream's absolute URLs become absolute
    /// URLs there. Otherwise they become path-absolute references, which the client resolves
    /// against the URL it used; the listener's own scheme and Host would name the gateway as a
    /// proxy in front reaches it (`http://agentgate.ns.svc:8080`), not as the agent does.
    pub public_origin: Option<&'a str>,
    /// The route's path prefix, no trailing slash (`""` for a route by host).
    pub prefix: &'a str,
}

/// Whether a path segment is `.` or `..`, also percent-encoded.
fn is_dot_segment(segment: &str) -> bool {
    let dot = |s: &str| s == "." || s.eq_ignore_ascii_case("%2e");
    dot(segment)
        || (1..segment.len()).any(|i| segment.is_char_boundary(i) && dot(&segment[..i]) && dot(&segment[i..]))
}

/// Response headers whose URLs [`Rebase`] rewrites (`Link` holds them in `<...>`, `Refresh`
/// after `url=`).
const REBASED: [HeaderName; 4] = [
    header::LOCATION,
    header::CONTENT_LOCATION,
    header::LINK,
    header::REFRESH,
];

impl Rebase<'_> {
    /// Whether `headers` hold any URL [`Rebase::apply`] may rewrite.
    pub fn wanted(headers: &HeaderMap) -> bool {
        REBASED.iter().any(|n| headers.contains_key(n))
    }

    /// Rewrites the upstream's URLs in `Location`, `Content-Location`, `Link` and `Refresh`. URLs of other
    /// origins, relative ones (`next`, `?page=2`: they resolve against the gateway's URL as
    /// they would against the upstream's), and paths outside the base path stay as they are.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in REBASED {
            let header::Entry::Occupied(mut values) = headers.entry(name.clone()) else {
                continue;
            };
            for v in values.iter_mut() {
                let Ok(text) = v.to_str() else { continue };
                let rebased = if name == header::LINK {
                    self.link(text)
                } else if name == header::REFRESH {
                    self.refresh(text)
                } else {
                    self.url(text)
                };
                if let Some(new) = rebased.and_then(|n| HeaderValue::from_str(&n).ok()) {
                    *v = new;
                }
            }
        }
    }

    /// A URI reference as the agent reaches it, if it names the upstream and changes.
    fn url(&self, reference: &str) -> Option<String> {
        let (absolute, rest) = if reference.starts_with('/') && !reference.starts_with("//") {
            (false, reference)
        } else {
            let (scheme, after) = match reference.strip_prefix("//") {
                // A network-path reference takes the scheme of the response's URL.
                Some(after) => (self.upstream_origin.split(':').next()?, after),
                None => {
                    let (scheme, after) = reference.split_once("://")?;
                    (scheme, after)
                }
            };
            let end = after.find(['/', '?', '#']).unwrap_or(after.len());
            if !self.names_upstream(scheme, &after[..end]) {
                return None;
            }
            (true, &after[end..])
        };
        // Dot segments and backslashes would be resolved by the client after the rewrite,
        // perhaps out of the prefix (`/base/../../other`, `/base/\evil.example`): left alone.
        let path = &rest[..rest.find(['?', '#']).unwrap_or(rest.len())];
        if path.contains('\\') || path.split('/').any(is_dot_segment) {
            return None;
        }
        let rest = match self.base_path {
            "" => rest,
            base => rest
                .strip_prefix(base)
                .filter(|r| r.is_empty() || r.starts_with(['/', '?', '#']))?,
        };
        let origin = match (absolute, self.public_origin) {
            (true, Some(origin)) => origin,
            _ => "",
        };
        let mut out = String::with_capacity(origin.len() + self.prefix.len() + rest.len() + 1);
        out.push_str(origin);
        out.push_str(self.prefix);
        if !rest.starts_with('/') {
            out.push('/');
        }
        out.push_str(rest);
        // A reference that starts `//` names a host (`/base//evil.example/x` less its base).
        if out.starts_with("//") {
            return None;
        }
        (out != reference).then_some(out)
    }

    /// Whether `scheme://authority` is the upstream's origin (case and default ports aside).
    fn names_upstream(&self, scheme: &str, authority: &str) -> bool {
        let default_port = match scheme.to_ascii_lowercase().as_str() {
            "http" => "80",
            "https" => "443",
            _ => return false,
        };
        if authority.contains('@') {
            return false;
        }
        // The port follows the last `:` unless that is inside an IPv6 literal's brackets.
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !p.contains(']') => (h, p),
            _ => (authority, default_port),
        };
        let Some(upstream) = self.upstream_origin.split_once("://") else {
            return false;
        };
        upstream.0.eq_ignore_ascii_case(scheme)
            && upstream
                .1
                .rsplit_once(':')
                .is_some_and(|(h, p)| h.eq_ignore_ascii_case(host) && p == port)
    }

    /// A `Refresh` value (`5; url=https://upstream/next`) with its URL rebased, the URL found as
    /// browsers find it (HTML's shared declarative refresh steps): after the delay, an optional
    /// `;` or `,`, an optional `url=` in any case, the URL perhaps quoted, else the rest.
    fn refresh(&self, value: &str) -> Option<String> {
        // Header values that are text are visible ASCII, spaces and tabs: byte offsets are
        // character boundaries.
        let b = value.as_bytes();
        let ws = |mut i: usize| {
            while b.get(i).is_some_and(|c| c.is_ascii_whitespace()) {
                i += 1;
            }
            i
        };
        let mut i = ws(0);
        let delay = i;
        while b.get(i).is_some_and(|c| c.is_ascii_digit() || *c == b'.') {
            i += 1;
        }
        if i == delay {
            return None;
        }
        i = ws(i);
        if matches!(b.get(i), Some(b';' | b',')) {
            i = ws(i + 1);
        }
        let mut start = i;
        if b.get(i..i + 3).is_some_and(|n| n.eq_ignore_ascii_case(b"url")) {
            let eq = ws(i + 3);
            if b.get(eq) == Some(&b'=') {
                start = ws(eq + 1);
            }
        }
        let (start, end) = match b.get(start) {
            None => return None,
            Some(&q @ (b'"' | b'\'')) => {
                let inner = &value[start + 1..];
                (
                    start + 1,
                    start + 1 + inner.find(char::from(q)).unwrap_or(inner.len()),
                )
            }
            Some(_) => (start, value.trim_end().len()),
        };
        let new = self.url(&value[start..end])?;
        Some(format!("{}{new}{}", &value[..start], &value[end..]))
    }

    /// A `Link` value with each `<target>` that names the upstream rebased; `<` inside a quoted
    /// parameter (`title="a<b"`) is not a target.
    fn link(&self, value: &str) -> Option<String> {
        let bytes = value.as_bytes();
        let (mut out, mut copied) = (String::new(), 0);
        let (mut quoted, mut escaped) = (false, false);
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if quoted {
                match b {
                    _ if escaped => escaped = false,
                    b'\\' => escaped = true,
                    b'"' => quoted = false,
                    _ => {}
                }
            } else if b == b'"' {
                quoted = true;
            } else if b == b'<' {
                // An unclosed target: the rest is passed on as it is.
                let Some(close) = value[i + 1..].find('>') else {
                    break;
                };
                let end = i + 1 + close;
                if let Some(new) = self.url(&value[i + 1..end]) {
                    out.push_str(&value[copied..=i]);
                    out.push_str(&new);
                    copied = end;
                }
                i = end;
            }
            i += 1;
        }
        (copied > 0).then(|| {
            out.push_str(&value[copied..]);
            out
        })
    }
}

/// Drops every header that carries the Connection's credential (an upstream echoing what it
/// was sent), then runs the detectors over the values left (a `Location` naming a user's email,
/// a debug header echoing a key), replacing what they find; a value that cannot hold its masked
/// form becomes `[REDACTED]` whole. Returns what was masked.
///
/// The credential goes first: a Partial mask would leave text the scrub no longer finds, with
/// the credential's last characters in it.
pub fn mask_values(
    headers: &mut HeaderMap,
    plan: &crate::masking::MaskingPlan,
    scrub: Option<&crate::masking::secret::SecretFinder>,
) -> crate::masking::MaskReport {
    if let Some(finder) = scrub {
        let echoes: Vec<HeaderName> = headers
            .iter()
            .filter(|(_, v)| finder.found_in(v.as_bytes()))
            .map(|(n, _)| n.clone())
            .collect();
        for name in echoes {
            headers.remove(name);
        }
    }
    let mut report = crate::masking::MaskReport::default();
    if !plan.has_detectors() {
        return report;
    }
    // In place, one look per value; order and repeats stay as they were.
    for (name, v) in headers.iter_mut() {
        let text = String::from_utf8_lossy(v.as_bytes());
        let (masked, r) = mask_value(plan, name.as_str(), &text);
        if r.is_empty() {
            continue;
        }
        report.add(&r);
        let masked = HeaderValue::from_str(&masked).unwrap_or(HeaderValue::from_static("[REDACTED]"));
        *v = masked;
    }
    report
}

/// One header value through the detectors, as unescaped too; a URL's query (`Location`,
/// `Referer`) with `+` read as a space, as its server reads it.
fn mask_value<'a>(
    plan: &crate::masking::MaskingPlan,
    name: &str,
    text: &'a str,
) -> (Cow<'a, str>, crate::masking::MaskReport) {
    let url = matches!(
        name,
        "location" | "content-location" | "refresh" | "referer" | "link"
    );
    match text.split_once('?') {
        Some((path, query)) if url => {
            let (p, mut report) = plan.mask_escaped_text(path, false);
            let (q, r) = plan.mask_escaped_text(query, true);
            report.add(&r);
            if matches!((&p, &q), (Cow::Borrowed(_), Cow::Borrowed(_))) {
                (Cow::Borrowed(text), report)
            } else {
                (Cow::Owned(format!("{p}?{q}")), report)
            }
        }
        _ => plan.mask_escaped_text(text, false),
    }
}

/// Headers as a JSON object for a recording: names lowercased, repeats as arrays, secret values
/// replaced.
pub fn for_record(headers: &HeaderMap) -> Recorded<'_> {
    Recorded(headers, None)
}

/// [`for_record`], every value that is shown also masked under `plan` (a `Referer` naming an
/// email, a debug header carrying a key).
pub fn for_record_masked<'a>(headers: &'a HeaderMap, plan: &'a crate::masking::MaskingPlan) -> Recorded<'a> {
    Recorded(headers, Some(plan))
}

/// Headers as recorded: name to value, or to an array of values when repeated; secret ones
/// `[REDACTED]`. Serialized straight from the map.
#[derive(Clone, Copy, Debug)]
pub struct Recorded<'a>(&'a HeaderMap, Option<&'a crate::masking::MaskingPlan>);

impl<'a> Serialize for Recorded<'a> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.keys_len()))?;
        for name in self.0.keys() {
            let secret = is_secret(name.as_str());
            let url = matches!(name.as_str(), "location" | "content-location" | "refresh");
            let shown = |v: &'a HeaderValue| -> Cow<'a, str> {
                if secret {
                    Cow::Borrowed("[REDACTED]")
                } else {
                    let text = String::from_utf8_lossy(v.as_bytes());
                    let text = match url {
                        true => Cow::Owned(redact_url_params(&text).into_owned()),
                        false => text,
                    };
                    match self.1.map(|plan| mask_value(plan, name.as_str(), &text).0) {
                        Some(Cow::Owned(masked)) => Cow::Owned(masked),
                        _ => text,
                    }
                }
            };
            let mut values = self.0.get_all(name).iter();
            match (values.next(), values.next()) {
                (Some(only), None) => m.serialize_entry(name.as_str(), &shown(only))?,
                _ => {
                    let all: Vec<_> = self.0.get_all(name).iter().map(shown).collect();
                    m.serialize_entry(name.as_str(), &all)?;
                }
            }
        }
        m.end()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_a_plain_host_and_port_is_an_authority() {
        for ok in [
            "gw.example",
            "gw.example:8443",
            "127.0.0.1:1",
            "[::1]:8080",
            "[::1]",
            "GW.Example",
        ] {
            assert!(super::is_plain_authority(ok), "{ok}");
        }
        for bad in [
            "",
            "gw.example/okta/x?",
            "gw.example?x",
            "gw.example#x",
            "user@gw.example",
            "gw.example:",
            "gw.example:http",
            "gw.example:123456",
            ":8080",
            "gw example",
        ] {
            assert!(!super::is_plain_authority(bad), "{bad}");
        }
    }

    use super::*;
    use crate::config::SecretValue;

    const PREFIXED: Rebase<'static> = Rebase {
        upstream_origin: "https://acme.okta.com:443",
        base_path: "",
        public_origin: Some("https://gw.example:8443"),
        prefix: "/okta",
    };

    /// The upstream's own URLs lead back through the gateway, under the route's prefix; other
    /// origins, relative references and lookalikes stay as they are.
    #[test]
    fn upstream_urls_are_rebased_onto_the_gateway() {
        let r = PREFIXED;
        for (from, to) in [
            (
                "https://acme.okta.com/api/v1/users/00u1?x=1#f",
                Some("https://gw.example:8443/okta/api/v1/users/00u1?x=1#f"),
            ),
            (
                "HTTPS://ACME.okta.com:443/a",
                Some("https://gw.example:8443/okta/a"),
            ),
            ("https://acme.okta.com", Some("https://gw.example:8443/okta/")),
            ("https://acme.okta.com?q", Some("https://gw.example:8443/okta/?q")),
            ("//acme.okta.com/a", Some("https://gw.example:8443/okta/a")),
            ("/api/v1/users", Some("/okta/api/v1/users")),
            ("/", Some("/okta/")),
            // Not the upstream: another host, scheme or port, userinfo, a lookalike host.
            ("https://developer.okta.com/docs", None),
            ("http://acme.okta.com/a", None),
            ("https://acme.okta.com:8443/a", None),
            ("https://u@acme.okta.com/a", None),
            ("https://acme.okta.com.evil.example/a", None),
            ("ftp://acme.okta.com/a", None),
            // Relative references resolve against the gateway's URL as they would upstream.
            ("users/1", None),
            ("?after=2", None),
        ] {
            assert_eq!(r.url(from).as_deref(), to, "{from}");
        }
        // A route by host keeps paths; only absolute URLs change.
        let by_host = Rebase { prefix: "", ..r };
        assert_eq!(by_host.url("/api/v1/users"), None);
        assert_eq!(
            by_host.url("https://acme.okta.com/api").as_deref(),
            Some("https://gw.example:8443/api")
        );
        // Where the agent's origin is not known, an absolute URL becomes a path-absolute one
        // (never the listener's own scheme and Host, which a proxy in front may hide).
        let unknown = Rebase {
            public_origin: None,
            ..r
        };
        assert_eq!(
            unknown.url("https://acme.okta.com/api?x#y").as_deref(),
            Some("/okta/api?x#y")
        );
        let unknown_by_host = Rebase {
            prefix: "",
            ..unknown
        };
        assert_eq!(
            unknown_by_host.url("https://acme.okta.com/api").as_deref(),
            Some("/api")
        );
        // ... but not one that would name a host.
        assert_eq!(unknown_by_host.url("https://acme.okta.com//evil.example/x"), None);
    }

    /// Nothing the client would resolve out of the prefix, or read as another host, is made:
    /// dot segments and backslashes are left alone, and so is a base path's rest that starts
    /// `//`.
    #[test]
    fn rebased_urls_cannot_climb_out_of_the_prefix_or_name_a_host() {
        let r = Rebase {
            base_path: "/base",
            prefix: "",
            ..PREFIXED
        };
        for from in [
            "/base//evil.example/x",
            "https://acme.okta.com/base//evil.example/x",
            "/base/\\evil.example",
            "/base/../../other/x",
            "https://acme.okta.com/base/%2E%2e/other",
            "/base/./x",
            "/base/.%2E/x",
        ] {
            let rebased = Rebase {
                public_origin: None,
                ..r
            }
            .url(from);
            assert_eq!(rebased, None, "{from}");
        }
        let prefixed = Rebase { prefix: "/okta", ..r };
        assert_eq!(prefixed.url("/base/../../other/x"), None);
        assert_eq!(prefixed.url("/base/\\x"), None);
        // Under a prefix, `//` inside the path is a path.
        assert_eq!(
            prefixed.url("/base//evil.example/x").as_deref(),
            Some("/okta//evil.example/x")
        );
        // Dots inside a segment, and in the query, are ordinary.
        assert_eq!(r.url("/base/a..b/x?..").as_deref(), Some("/a..b/x?.."));
        assert!(!is_dot_segment("a.") && !is_dot_segment("...") && is_dot_segment("%2e."));
    }

    /// The upstream's base path is what the route's prefix stands for; paths outside it cannot
    /// be reached through the gateway and stay as they are.
    #[test]
    fn the_base_path_is_replaced_by_the_prefix() {
        let r = Rebase {
            upstream_origin: "http://[::1]:8080",
            base_path: "/base",
            ..PREFIXED
        };
        for (from, to) in [
            (
                "http://[::1]:8080/base/x?y",
                Some("https://gw.example:8443/okta/x?y"),
            ),
            ("http://[::1]:8080/base", Some("https://gw.example:8443/okta/")),
            ("/base/x", Some("/okta/x")),
            ("/base?q", Some("/okta/?q")),
            ("/basement/x", None),
            ("/other", None),
            ("http://[::1]/base/x", None),
        ] {
            assert_eq!(r.url(from).as_deref(), to, "{from}");
        }
    }

    /// Every `<target>` of a Link value is rebased; a `<` inside a quoted parameter is not one.
    #[test]
    fn link_targets_are_rebased_and_quoted_text_is_not() {
        let r = PREFIXED;
        let mut h = map(&[
            (
                "link",
                r#"<https://acme.okta.com/api/v1/users?limit=2>; rel="self", <https://acme.okta.com/api/v1/users?after=00u2&limit=2>; rel="next""#,
            ),
            (
                "link",
                r#"<https://developer.okta.com/docs>; rel="help"; title="a \"<b>\" <https://acme.okta.com/x>""#,
            ),
            ("location", "https://acme.okta.com/api/v1/users/00u3"),
            ("content-location", "/api/v1/users/00u3"),
            ("refresh", "0; url=https://acme.okta.com/"),
        ]);
        assert!(Rebase::wanted(&h));
        r.apply(&mut h);
        let links: Vec<_> = h.get_all("link").iter().map(|v| v.to_str().unwrap()).collect();
        assert_eq!(
            links,
            [
                r#"<https://gw.example:8443/okta/api/v1/users?limit=2>; rel="self", <https://gw.example:8443/okta/api/v1/users?after=00u2&limit=2>; rel="next""#,
                r#"<https://developer.okta.com/docs>; rel="help"; title="a \"<b>\" <https://acme.okta.com/x>""#,
            ]
        );
        assert_eq!(h["location"], "https://gw.example:8443/okta/api/v1/users/00u3");
        assert_eq!(h["content-location"], "/okta/api/v1/users/00u3");
        assert_eq!(h["refresh"], "0; url=https://gw.example:8443/okta/");
        // An unclosed target is passed on as it is; the targets before it are rebased.
        assert_eq!(r.link("<https://acme.okta.com/a"), None);
        assert_eq!(
            r.link("<https://acme.okta.com/a>; rel=x, <https://acme.okta.com/b")
                .as_deref(),
            Some("<https://gw.example:8443/okta/a>; rel=x, <https://acme.okta.com/b")
        );
        assert!(!Rebase::wanted(&map(&[("content-type", "application/json")])));
    }

    /// A `Refresh` URL is found as browsers find it, quoted or not, and the rest kept as it was.
    #[test]
    fn refresh_urls_are_rebased() {
        let r = PREFIXED;
        for (from, to) in [
            (
                "5; url=https://acme.okta.com/next",
                Some("5; url=https://gw.example:8443/okta/next"),
            ),
            ("5,URL = '/next?a=1'", Some("5,URL = '/okta/next?a=1'")),
            ("0;url=\"/x\" ", Some("0;url=\"/okta/x\" ")),
            ("0; url=https://other.example/x", None),
            ("0; uri=/x", None),
            ("5", None),
            ("0; url=", None),
            // Without `url=`, or without the separator: the rest is the URL.
            (
                "5; https://acme.okta.com/next",
                Some("5; https://gw.example:8443/okta/next"),
            ),
            ("5 url=/next", Some("5 url=/okta/next")),
            ("5 /next", Some("5 /okta/next")),
            ("url=/next", None),
        ] {
            assert_eq!(r.refresh(from).as_deref(), to, "{from}");
        }
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn a_content_length_beside_transfer_encoding_does_not_reach_the_client() {
        let mut h = map(&[
            ("transfer-encoding", "chunked"),
            ("content-length", "0"),
            ("content-type", "application/json"),
        ]);
        sanitize_response(&mut h);
        assert!(h.get(header::CONTENT_LENGTH).is_none() && h.get(header::TRANSFER_ENCODING).is_none());
        assert_eq!(h.get(header::CONTENT_TYPE).unwrap(), "application/json");
        let mut h = map(&[("content-length", "12")]);
        sanitize_response(&mut h);
        assert_eq!(h.get(header::CONTENT_LENGTH).unwrap(), "12");
    }

    #[test]
    fn identity_and_hop_by_hop_headers_go_before_injection() {
        let mut h = map(&[
            ("Authorization", "Bearer agent-token"),
            ("DPoP", "proof"),
            ("Impersonate-User", "admin"),
            ("impersonate-group", "system:masters"),
            ("Impersonate-Extra-Scopes", "x"),
            ("X-Forwarded-User", "root"),
            ("X-Remote-User", "root"),
            ("Connection", "close, X-Keep-Me-Not, Authorization"),
            ("X-Keep-Me-Not", "1"),
            ("Keep-Alive", "timeout=5"),
            ("Accept", "application/json"),
            ("Accept-Encoding", "gzip"),
            ("X-HTTP-Method-Override", "DELETE"),
            ("X-Original-URL", "/admin"),
        ]);
        let removed = sanitize_request(&mut h);
        assert!(removed.contains(&"impersonate-user".to_string()));
        let cred = Credential {
            scheme: CredentialScheme::Ssws,
            username: None,
            secret: Some(SecretValue::new(b"okta-secret".to_vec())),
            client_certificate: None,
        };
        inject_credential(&mut h, Some(&cred)).unwrap();
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), 3, "{names:?}");
        assert_eq!(h["authorization"], "SSWS okta-secret");
        assert!(h["authorization"].is_sensitive());
        assert_eq!(h["accept-encoding"], "identity");
        assert_eq!(h["accept"], "application/json");
    }

    #[test]
    fn identity_headers_spelled_with_underscores_go_too() {
        let mut h = map(&[
            ("X_Forwarded_User", "root"),
            ("impersonate_group", "system:masters"),
            ("X-Remote_User", "root"),
            ("x_real_ip", "10.0.0.1"),
            ("X_Trace_Id", "kept"),
        ]);
        let removed = sanitize_request(&mut h);
        assert_eq!(removed.len(), 4, "{removed:?}");
        assert_eq!(h["x_trace_id"], "kept");
    }

    #[test]
    fn basic_and_unsendable_credentials() {
        let mut h = HeaderMap::new();
        let cred = Credential {
            scheme: CredentialScheme::Basic,
            username: Some("svc".into()),
            secret: Some(SecretValue::new(b"pw".to_vec())),
            client_certificate: None,
        };
        inject_credential(&mut h, Some(&cred)).unwrap();
        assert_eq!(h["authorization"], "Basic c3ZjOnB3");
        let bad = Credential {
            scheme: CredentialScheme::Bearer,
            username: None,
            secret: Some(SecretValue::new(b"tok\r\nX-Evil: 1".to_vec())),
            client_certificate: None,
        };
        assert!(inject_credential(&mut h, Some(&bad)).is_err());
    }

    /// An approval covers the headers that may change what the upstream does, sorted; not
    /// credentials, framing, per-request tracing, or what the gateway never forwards.
    #[test]
    fn approvals_cover_the_headers_that_change_the_operation() {
        let h = map(&[
            ("x-amz-copy-source", "/secret/obj"),
            ("authorization", "Bearer t"),
            ("traceparent", "00-ab-cd-01"),
            ("x_request_id", "r1"),
            ("x-b3-traceid", "1"),
            ("amz-sdk-request", "attempt=2; max=3"),
            ("amz-sdk-invocation-id", "5e1c"),
            ("x-stainless-retry-count", "1"),
            ("idempotency-key", "k-1"),
            ("if-match", "\"v2\""),
            ("connection", "keep-alive"),
            ("x-forwarded-user", "admin"),
            ("destination", "/b"),
            ("content-type", "application/json"),
        ]);
        let bound: Vec<(&str, &str)> = bound_for_approval(&h)
            .into_iter()
            .map(|(n, v)| (n, v.to_str().unwrap()))
            .collect();
        assert_eq!(
            bound,
            [
                ("destination", "/b"),
                ("idempotency-key", "k-1"),
                ("if-match", "\"v2\""),
                ("x-amz-copy-source", "/secret/obj")
            ]
        );
        assert!(is_secret("x_api_key") && !is_secret("destination"));
        for name in [
            "x-vault-token",
            "private-token",
            "x-amz-security-token",
            "x-subject-token",
            "x-client-secret",
            "x-amz-server-side-encryption-customer-key",
            "x-amz-server-side-encryption-customer-key-md5",
            "x-amz-copy-source-server-side-encryption-customer-key",
            "x-goog-encryption-key",
            "x-ms-encryption-key",
            "ocp-apim-subscription-key",
            "x-functions-key",
        ] {
            assert!(is_secret(name), "{name}");
        }
        // Every word, wherever it stands, in any case.
        for word in SECRET_NAME_WORDS {
            for name in [word.to_string(), format!("x-{}-v", word.to_uppercase())] {
                assert!(is_secret(&name), "{name}");
            }
        }
        for name in [
            "x-request-id",
            "content-type",
            "etag",
            "location",
            "x-ratelimit-remaining",
            "idempotency-key",
            "x-amz-server-side-encryption-aws-kms-key-id",
            "x-keyboard",
            "monkey",
        ] {
            assert!(!is_secret(name), "{name}");
        }
        assert_eq!(
            redact_url_params("https://app/cb?state=s1&code=abc123#access_token=eyJ.x&token_type=bearer"),
            "https://app/cb?state=s1&code=[REDACTED]#access_token=[REDACTED]&token_type=bearer"
        );
        assert!(matches!(redact_url_params("/users/42?page=2"), Cow::Borrowed(_)));
        let h = map(&[("location", "/cb?CODE=zz9"), ("x-vault-token", "hvs.1")]);
        let recorded = serde_json::to_string(&for_record(&h)).unwrap();
        assert!(
            !recorded.contains("zz9") && !recorded.contains("hvs.1"),
            "{recorded}"
        );
        // Under a plan, shown values meet its detectors too.
        let rules: Vec<agentgate_crds::policy::MaskingRule> =
            serde_json::from_value(serde_json::json!([{"detectors": ["Email"]}])).unwrap();
        let plan = crate::masking::MaskingPlan::compile(
            &rules.iter().collect::<Vec<_>>(),
            crate::masking::HashKey::process(),
        )
        .unwrap();
        let h = map(&[
            ("referer", "https://app/users/alice@example.com"),
            ("accept", "*/*"),
        ]);
        let recorded = serde_json::to_string(&for_record_masked(&h, &plan)).unwrap();
        assert!(
            !recorded.contains("alice@example.com") && recorded.contains("*/*"),
            "{recorded}"
        );
    }

    /// A URL's query is read as its server reads it (`+` a space); every value as unescaped.
    #[test]
    fn header_values_are_masked_as_unescaped() {
        let rules: Vec<agentgate_crds::policy::MaskingRule> =
            serde_json::from_value(serde_json::json!([{"detectors": ["Email", "CreditCard"]}])).unwrap();
        let plan = crate::masking::MaskingPlan::compile(
            &rules.iter().collect::<Vec<_>>(),
            crate::masking::HashKey::process(),
        )
        .unwrap();
        let mut h = map(&[
            ("location", "/r?card=4111+1111+1111+1111&to=a%40b.io"),
            ("x-note", "card%3A4111111111111111"),
            ("x-plain", "a+b"),
        ]);
        let recorded = serde_json::to_string(&for_record_masked(&h, &plan)).unwrap();
        assert!(
            !recorded.contains("4111") && !recorded.contains("a%40b"),
            "{recorded}"
        );
        let report = mask_values(&mut h, &plan, None);
        assert_eq!(report.detections, 3);
        assert_eq!(
            h["location"],
            "/r?card=[REDACTED:CREDIT_CARD]&to=[REDACTED:EMAIL]"
        );
        assert_eq!(h["x-note"], "card%3A[REDACTED:CREDIT_CARD]");
        assert_eq!(h["x-plain"], "a+b");
    }

    /// A header echoing the credential is dropped before a Partial mask could leave its tail.
    #[test]
    fn credential_echoes_go_before_masking() {
        let rules: Vec<agentgate_crds::policy::MaskingRule> = serde_json::from_value(
            serde_json::json!([{"detectors": ["OktaApiToken"], "strategy": "Partial"}]),
        )
        .unwrap();
        let plan = crate::masking::MaskingPlan::compile(
            &rules.iter().collect::<Vec<_>>(),
            crate::masking::HashKey::process(),
        )
        .unwrap();
        let credential = "00aB3dE5fG7hI9jK1lM3nO5pQ7rS9tU1vW3xY5zA7b";
        let other = "00zY9xW7vU5tS3rQ1pO9nM7lK5jI3hG1fE9dC7bA5x";
        let finder = crate::masking::secret::SecretFinder::new(&[credential.as_bytes()]).unwrap();
        let mut h = map(&[
            ("x-debug-auth", &format!("SSWS {credential}")),
            ("x-other-token", other),
        ]);
        mask_values(&mut h, &plan, Some(&finder));
        assert!(!h.contains_key("x-debug-auth"), "{h:?}");
        let masked = h["x-other-token"].to_str().unwrap();
        assert!(
            masked != other && masked.ends_with(&other[other.len() - 4..]),
            "{masked}"
        );
    }

    #[test]
    fn vendor_digests_are_body_validators() {
        for name in [
            "etag",
            "content-md5",
            "content-digest",
            "x-goog-hash",
            "x-goog-stored-content-length",
            "docker-content-digest",
            "x-amz-checksum-sha256",
            "x-amz-checksum-crc64nvme",
            "x-ms-content-crc64",
        ] {
            assert!(super::is_body_validator(&HeaderName::from_static(name)), "{name}");
        }
        for name in [
            "content-type",
            "x-amz-request-id",
            "last-modified",
            "x-goog-generation",
        ] {
            assert!(
                !super::is_body_validator(&HeaderName::from_static(name)),
                "{name}"
            );
        }
        let mut h = map(&[
            ("x-goog-hash", "md5=abc"),
            ("x-goog-hash", "crc32c=x"),
            ("x-kept", "1"),
        ]);
        super::remove_body_validators(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(
            BODY_VALIDATORS_ASKED.iter().any(|n| n == "x-amz-checksum-mode"),
            "S3 is not asked for the stored object's checksums"
        );
    }

    #[test]
    fn recorded_headers_hide_secrets() {
        let h = map(&[
            ("authorization", "SSWS s3cr3t"),
            ("set-cookie", "sid=1"),
            ("x-a", "1"),
            ("x-a", "2"),
            ("X_Api_Key", "k3y"),
        ]);
        let v = serde_json::to_value(for_record(&h)).unwrap();
        assert_eq!(v["authorization"], "[REDACTED]");
        assert_eq!(v["x-a"], serde_json::json!(["1", "2"]));
        assert_eq!(v["x_api_key"], "[REDACTED]", "either spelling");
        assert!(!v.to_string().contains("s3cr3t") && !v.to_string().contains("k3y"));
    }

    /// On random header sets (names in any case, with `_` for `-`, repeated, named in
    /// `Connection`), what is forwarded holds no identity, method-override or hop-by-hop header,
    /// nothing `Connection` named, and exactly one Authorization: the injected credential.
    #[test]
    fn no_client_identity_survives_sanitizing_in_any_spelling() {
        let names = [
            "Authorization",
            "DPoP",
            "Cookie",
            "Forwarded",
            "X-Real-IP",
            "X-Forwarded-For",
            "X-Forwarded-User",
            "Impersonate-User",
            "Impersonate-Group",
            "Impersonate-Extra-Scopes",
            "Impersonate-Uid",
            "X-Remote-User",
            "X-Remote-Extra-Team",
            "X-Auth-Request-Email",
            "X-Authenticated-Userid",
            "X-Agentgate-Identity",
            "X-HTTP-Method-Override",
            "X-Original-URL",
            "X-Ms-Client-Principal",
            "X-Ms-Client-Principal-Name",
            "X-Amzn-Oidc-Identity",
            "Remote-User",
            "Remote-Groups",
            "Cf-Access-Authenticated-User-Email",
            "X-Consumer-Username",
            "X-Pomerium-Claim-Email",
            "X-Webauth-User",
            "Proxy-Authorization",
            "TE",
            "Upgrade",
            "Keep-Alive",
            "Trailer",
            "Accept",
            "Content-Type",
            "X-Request-Id",
            "X-Custom",
        ];
        let cred = Credential {
            scheme: CredentialScheme::Bearer,
            username: None,
            secret: Some(SecretValue::new(b"upstream-secret".to_vec())),
            client_certificate: None,
        };
        let mut rng = crate::mutate::Mutator::new(17);
        for _ in 0..2_000 * crate::mutate::scale() {
            let mut h = HeaderMap::new();
            let mut listed = Vec::new();
            for _ in 0..rng.below(12) {
                let mut name: String = rng
                    .pick(&names)
                    .chars()
                    .map(|c| {
                        if rng.below(2) == 0 {
                            c.to_ascii_uppercase()
                        } else {
                            c.to_ascii_lowercase()
                        }
                    })
                    .collect();
                if rng.below(4) == 0 {
                    name = name.replace('-', "_");
                }
                let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
                h.append(name.clone(), HeaderValue::from_static("v"));
                if rng.below(5) == 0 {
                    listed.push(name.as_str().to_string());
                }
            }
            if !listed.is_empty() {
                h.append(
                    header::CONNECTION,
                    HeaderValue::from_str(&listed.join(", ")).unwrap(),
                );
            }
            sanitize_request(&mut h);
            inject_credential(&mut h, Some(&cred)).unwrap();
            for name in h.keys() {
                let n = dashed(name.as_str()); // header names are lowercase already
                assert!(n == "authorization" || !is_identity_header(&n), "{n} forwarded");
                assert!(!is_hop_by_hop(&n), "{n} forwarded");
                // (Authorization is the injected one, added after the client's went.)
                let named = listed.iter().any(|l| l == name.as_str());
                assert!(n == "authorization" || !named, "{n} was named in Connection");
            }
            let auth: Vec<_> = h.get_all(header::AUTHORIZATION).iter().collect();
            assert_eq!(auth, [&HeaderValue::from_static("Bearer upstream-secret")]);
        }
        // Identity-aware proxies' headers, which upstreams behind one trust, are the client's
        // claims here.
        for n in [
            "x-ms-client-principal-name",
            "x-amzn-oidc-identity",
            "remote-user",
            "remote-groups",
            "cf-access-authenticated-user-email",
            "x-consumer-username",
            "x-pomerium-claim-email",
            "x-webauth-user",
            "x-goog-iap-jwt-assertion",
            "true-client-ip",
            "cf-connecting-ip",
            "client-ip",
        ] {
            assert!(is_identity_header(n), "{n}");
        }
    }

    /// What an upstream made from the injected credential does not reach the agent.
    #[test]
    fn credentials_an_upstream_issues_are_not_passed_on() {
        let mut h = map(&[
            ("set-cookie", "JSESSIONID=4F1C; HttpOnly"),
            ("Set-Cookie", "b=2"),
            ("x-subject-token", "gAAAAAB"),
            ("authentication-info", "nextnonce=\"abc\""),
            ("content-type", "application/json"),
            ("location", "/users/1"),
        ]);
        sanitize_response(&mut h);
        let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-type", "location"]);
    }
}
