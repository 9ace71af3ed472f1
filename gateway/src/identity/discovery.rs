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
    Ok(Metadata {
        issuer: found,
        jwks_uri,
        introspection_endpoint: field("introspection_endpoint"),
        token_endpoint: field("token_endpoint"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn hostile_metadata_is_refused_without_panic() {
        let doc: &[u8] = br#"{"issuer":"https://idp.example/oauth2/default","jwks_uri":"https://idp.example/keys","introspection_endpoint":"https://idp.example/introspect"}"#;
        crate::mutate::each_mutant(&[doc], 3_000, |b| {
            let _ = parse("https://idp.example/oauth2/default", b);
        });
    }
}
