//! TLS configuration (rustls on aws-lc-rs): the listener's server side, and the client side
//! towards each upstream with its CA, server name and client certificate.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::config::SecretValue;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn certs(pem: &SecretValue, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.expose())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{what}: not a PEM certificate list: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{what}: no certificate found"));
    }
    Ok(certs)
}

fn key(pem: &SecretValue, what: &str) -> Result<PrivateKeyDer<'static>, String> {
    // The error never includes key material.
    PrivateKeyDer::from_pem_slice(pem.expose()).map_err(|_| format!("{what}: not a PEM private key"))
}

/// The listener's server configuration, offering HTTP/2 and HTTP/1.1 by ALPN.
pub fn server_config(cert_pem: &SecretValue, key_pem: &SecretValue) -> Result<Arc<ServerConfig>, String> {
    server_config_with_alpn(cert_pem, key_pem, vec![b"h2".to_vec(), b"http/1.1".to_vec()])
}

/// A server configuration offering `alpn` (PostgreSQL listeners offer `postgresql`, which libpq
/// 17 and later ask for; older clients send no ALPN at all).
pub fn server_config_with_alpn(
    cert_pem: &SecretValue,
    key_pem: &SecretValue,
    alpn: Vec<Vec<u8>>,
) -> Result<Arc<ServerConfig>, String> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs(cert_pem, "tls.crt")?, key(key_pem, "tls.key")?)
        .map_err(|e| format!("listener certificate: {e}"))?;
    config.alpn_protocols = alpn;
    Ok(Arc::new(config))
}

/// What the upstream side needs to know.
#[derive(Debug, Default)]
pub struct UpstreamTls<'a> {
    pub ca: Option<&'a SecretValue>,
    pub insecure_skip_verify: bool,
    pub client_certificate: Option<(&'a SecretValue, &'a SecretValue)>,
}

/// The client configuration towards one upstream: its CA (else the platform's roots), or no
/// verification at all when the Connection says so (loudly logged at load), plus a client
/// certificate when the Connection's credential is one. ALPN is set by the connector.
pub fn client_config(t: &UpstreamTls<'_>) -> Result<ClientConfig, String> {
    client_config_from(t, true)
}

/// Whether [`client_config`] would build, without reading the platform's roots: the loader's
/// check of a Connection's CA bundle and client certificate.
pub fn check_client_config(t: &UpstreamTls<'_>) -> Result<(), String> {
    client_config_from(t, false).map(|_| ())
}

fn client_config_from(t: &UpstreamTls<'_>, platform_roots: bool) -> Result<ClientConfig, String> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = if t.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider())))
    } else {
        let mut roots = RootCertStore::empty();
        match t.ca {
            Some(ca) => {
                for c in certs(ca, "CA bundle")? {
                    roots.add(c).map_err(|e| format!("CA bundle: {e}"))?;
                }
            }
            None if !platform_roots => {}
            None => {
                let found = rustls_native_certs::load_native_certs();
                for c in found.certs {
                    // Platform bundles carry the odd unparsable certificate; skip it.
                    let _ = roots.add(c);
                }
            }
        }
        builder.with_root_certificates(roots)
    };
    let config = match t.client_certificate {
        Some((crt, k)) => builder
            .with_client_auth_cert(certs(crt, "client tls.crt")?, key(k, "client tls.key")?)
            .map_err(|e| format!("client certificate: {e}"))?,
        None => builder.with_no_client_auth(),
    };
    Ok(config)
}

/// Accepts any server certificate: only for `tls.insecureSkipVerify: true`.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
