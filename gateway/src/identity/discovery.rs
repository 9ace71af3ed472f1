//! OpenID Connect / OAuth 2.0 authorization-server discovery, with the issuer pinned exactly.

use serde_json::Value;

use super::fetch::HttpFetcher;

/// What the gateway uses from a discovery document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metadata {
    pub issuer: String,
    pub jwks_uri: String,
    pub introspection_endpoint: Option<String>,
    pub token_endpoint: Option<String>,
}

/// Fetches `{issuer}/.well-known/openid-configuration`, falling back to the RFC 8414 document, and
/// refuses a document whose `issuer` differs from the configured one in any byte (a trailing slash
/// counts): otherwise one issuer's keys could vouch for another's tokens.
pub async fn discover(fetcher: &HttpFetcher, issuer: &str) -> Result<Metadata, String> {
    let base = issuer.trim_end_matches('/');
    let mut last_error = String::new();
    for path in [
        "/.well-known/openid-configuration",
        "/.well-known/oauth-authorization-server",
    ] {
        let url = format!("{base}{path}");
        match fetcher.get(&url).await {
            Ok(resp) if resp.status.is_success() => return parse(issuer, &resp.body),
            Ok(resp) => last_error = format!("{url} answered {}", resp.status),
            Err(e) => last_error = e,
        }
    }
    Err(format!("discovery for {issuer} failed: {last_error}"))
}

/// Parses and checks a discovery document.
pub fn parse(issuer: &str, body: &[u8]) -> Result<Metadata, String> {
    let doc = super::strict_json::parse(body).map_err(|e| format!("discovery document: {e}"))?;
    let field = |name: &str| doc.get(name).and_then(Value::as_str).map(str::to_string);
    let found = field("issuer").ok_or("discovery document has no issuer")?;
    if found != issuer {
        return Err(format!(
            "discovery document names issuer {found:?}, not the configured {issuer:?}"
        ));
    }
    let jwks_uri = field("jwks_uri").ok_or("discovery document has no jwks_uri")?;
    let introspection_endpoint = field("introspection_endpoint");
    let token_endpoint = field("token_endpoint");
    // Keys fetched, or tokens sent, in the clear could be swapped or read on the way.
    for (name, url) in [
        ("jwks_uri", Some(&jwks_uri)),
        ("introspection_endpoint", introspection_endpoint.as_ref()),
        ("token_endpoint", token_endpoint.as_ref()),
    ] {
        if let Some(url) = url
            && !is_secure_url(url)
        {
            return Err(format!(
                "discovery document's {name} {url:?} is not https (plain http only on loopback)"
            ));
        }
    }
    Ok(Metadata {
        issuer: found,
        jwks_uri,
        introspection_endpoint,
        token_endpoint,
    })
}

/// `https://...`, or `http://` to a loopback host (development): the rule for issuers, key sets
/// and introspection endpoints alike.
pub fn is_secure_url(url: &str) -> bool {
    if url.starts_with("https://") {
        return true;
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().map(|h| format!("[{h}]")),
        None => authority.split(':').next().map(str::to_string),
    };
    let port_ok = |after: &str| {
        after.is_empty()
            || after
                .strip_prefix(':')
                .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    };
    match host.as_deref() {
        // `get`: the host was rebuilt with a `]` that an unclosed `[::1` lacks.
        Some(h @ ("127.0.0.1" | "localhost" | "[::1]")) => authority.get(h.len()..).is_some_and(port_ok),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An unclosed IPv6 bracket once sliced past the end of the authority (a panic, from a
    /// discovery document's `jwks_uri` or from configuration).
    #[test]
    fn unclosed_ipv6_loopback_is_refused_not_a_panic() {
        for url in [
            "http://[::1",
            "http://[::1/keys",
            "http://[::1?x",
            "http://[::1:8080",
        ] {
            assert!(!is_secure_url(url), "{url}");
        }
        assert!(is_secure_url("http://[::1]:8080/keys"));
        let doc = br#"{"issuer":"https://idp.example/","jwks_uri":"http://[::1"}"#;
        assert!(parse("https://idp.example/", doc).is_err());
    }

    #[test]
    fn issuer_is_pinned_exactly() {
        let doc = br#"{"issuer":"https://idp.example/oauth2/default","jwks_uri":"https://idp.example/keys"}"#;
        assert!(parse("https://idp.example/oauth2/default", doc).is_ok());
        assert!(
            parse("https://idp.example/oauth2/default/", doc)
                .unwrap_err()
                .contains("not the configured")
        );
        assert!(parse("https://IDP.example/oauth2/default", doc).is_err());
        assert!(
            parse("https://idp.example", br#"{"issuer":"https://idp.example"}"#)
                .unwrap_err()
                .contains("jwks_uri")
        );
    }

    #[test]
    fn keys_and_introspection_are_fetched_over_https_or_loopback_only() {
        let doc = |jwks: &str, introspect: &str| {
            format!(
                r#"{{"issuer":"https://idp.example","jwks_uri":"{jwks}","introspection_endpoint":"{introspect}"}}"#
            )
        };
        let ok = [
            "https://idp.example/keys",
            "http://127.0.0.1:8080/keys",
            "http://localhost/keys",
            "http://[::1]:9/k",
        ];
        for url in ok {
            assert!(is_secure_url(url), "{url}");
            assert!(
                parse("https://idp.example", doc(url, url).as_bytes()).is_ok(),
                "{url}"
            );
        }
        for url in [
            "http://idp.example/keys",
            "http://127.0.0.1.evil.example/keys",
            "http://localhost.evil.example/keys",
            "http://127.0.0.1:80@evil.example/keys",
            "http://[::1].evil/keys",
            "ftp://idp.example/keys",
        ] {
            assert!(!is_secure_url(url), "{url}");
            assert!(
                parse(
                    "https://idp.example",
                    doc(url, "https://idp.example/i").as_bytes()
                )
                .unwrap_err()
                .contains("jwks_uri"),
                "{url}"
            );
            assert!(
                parse(
                    "https://idp.example",
                    doc("https://idp.example/k", url).as_bytes()
                )
                .unwrap_err()
                .contains("introspection_endpoint"),
                "{url}"
            );
        }
    }

    #[test]
    fn hostile_metadata_is_refused_without_panic() {
        let doc: &[u8] = br#"{"issuer":"https://idp.example/oauth2/default","jwks_uri":"https://idp.example/keys","introspection_endpoint":"https://idp.example/introspect"}"#;
        crate::mutate::each_mutant(&[doc], 3_000, |b| {
            let _ = parse("https://idp.example/oauth2/default", b);
        });
    }
}
