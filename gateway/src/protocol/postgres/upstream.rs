//! The upstream side: connect to the Connection's database, negotiate TLS (verified; refused
//! downgrades), start up as the Connection's stored role and answer SCRAM-SHA-256, md5 or
//! cleartext authentication with the stored password, which the agent never sees.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use rustls::ClientConfig;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::message::authentication::{
    Authentication, encode_password, encode_sasl_initial, encode_sasl_response,
};
use super::message::backend_key_data::BackendKeyData;
use super::message::error_response::ErrorResponse;
use super::message::parameter_status::ParameterStatus;
use super::message::startup::StartupPacket;
use super::message::{FrameReader, backend};
use super::stream::Stream;
use crate::config::CompiledConnection;

/// Settings every upstream session starts with; statements that change them are refused.
pub const PINNED_SETTINGS: [(&str, &str); 2] =
    [("search_path", "public"), ("standard_conforming_strings", "on")];

/// Why a setting the server reports (ParameterStatus) breaks what the gateway pins, if it does:
/// the pinned settings and the client encoding, UTF8.
pub fn unpinned(status: &ParameterStatus) -> Option<String> {
    let name = status.name.to_ascii_lowercase();
    let pinned = match name.as_str() {
        "client_encoding" => "UTF8",
        _ => PINNED_SETTINGS.iter().find(|(n, _)| *n == name)?.1,
    };
    (!status.value.eq_ignore_ascii_case(pinned)).then(|| {
        format!(
            "the server reports {name} changed from {pinned}: the gateway reads statements with it pinned, so the session ends"
        )
    })
}

/// Longest wait for the upstream's TCP connect, TLS handshake and authentication together.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the upstream could not be reached or refused the gateway. Messages name the connection and
/// the upstream's own error text, never the stored password.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot reach {addr}: {source}")]
    Unreachable { addr: String, source: std::io::Error },
    #[error("timed out connecting to the upstream database")]
    Timeout,
    #[error(
        "the upstream database does not offer TLS, which the gateway requires (the Connection sets spec.tls, or the server is not on loopback)"
    )]
    TlsRefused,
    #[error("TLS with the upstream database failed: {0}")]
    Tls(String),
    #[error("the upstream database refused the gateway: {0}")]
    Refused(String),
    #[error("upstream authentication failed: {0}")]
    Auth(String),
    #[error("upstream protocol error: {0}")]
    Protocol(String),
}

impl UpstreamError {
    /// What the agent is told: the kind of failure, not the upstream's address, role, TLS
    /// details or server text, which the gateway's log keeps.
    pub fn for_client(&self) -> &'static str {
        match self {
            UpstreamError::Unreachable { .. } => "the upstream database cannot be reached",
            UpstreamError::Timeout => "timed out connecting to the upstream database",
            UpstreamError::TlsRefused => {
                "the upstream database does not offer TLS, which the gateway requires (the Connection sets spec.tls, or the server is not on loopback)"
            }
            UpstreamError::Tls(_) => "TLS with the upstream database failed (the gateway's log says why)",
            UpstreamError::Refused(_) => {
                "the upstream database refused the gateway (the gateway's log says why)"
            }
            UpstreamError::Auth(_) => {
                "the gateway could not authenticate to the upstream database (the gateway's log says why)"
            }
            UpstreamError::Protocol(_) => {
                "the upstream database broke the protocol (the gateway's log says why)"
            }
        }
    }
}

impl From<super::message::FrameError> for UpstreamError {
    fn from(e: super::message::FrameError) -> Self {
        UpstreamError::Protocol(e.to_string())
    }
}

/// An authenticated upstream session, ready for queries.
#[derive(Debug)]
pub struct Upstream {
    pub reader: FrameReader<tokio::io::ReadHalf<Stream>>,
    pub writer: tokio::io::WriteHalf<Stream>,
    /// The upstream backend's cancel key (kept inside the gateway).
    pub key: BackendKeyData,
    /// Parameter statuses to pass to the client.
    pub params: Vec<ParameterStatus>,
    pub addr: SocketAddr,
}

/// Connects and authenticates. `params` are the client's allowlisted startup parameters.
pub async fn connect(
    conn: &CompiledConnection,
    tls: Option<Arc<ClientConfig>>,
    params: &[(String, String)],
) -> Result<Upstream, UpstreamError> {
    tokio::time::timeout(CONNECT_TIMEOUT, connect_inner(conn, tls, params))
        .await
        .map_err(|_| UpstreamError::Timeout)?
}

async fn connect_inner(
    conn: &CompiledConnection,
    tls: Option<Arc<ClientConfig>>,
    params: &[(String, String)],
) -> Result<Upstream, UpstreamError> {
    let ep = &conn.endpoint;
    let target = format!("{}:{}", ep.host, ep.port);
    let unreachable = |source| UpstreamError::Unreachable {
        addr: target.clone(),
        source,
    };
    let mut tcp = TcpStream::connect(&target).await.map_err(unreachable)?;
    let _ = tcp.set_nodelay(true);
    let addr = tcp.peer_addr().map_err(unreachable)?;

    // TLS first: SSLRequest, then a one-byte answer read without buffering (CVE-2021-23222).
    let mut packet = BytesMut::new();
    StartupPacket::SslRequest.encode(&mut packet);
    tcp.write_all(&packet).await.map_err(unreachable)?;
    let mut answer = [0u8; 1];
    tokio::io::AsyncReadExt::read_exact(&mut tcp, &mut answer)
        .await
        .map_err(unreachable)?;
    let stream = match (answer[0], tls) {
        (b'S', Some(config)) => {
            let name = conn.server_name.clone().unwrap_or_else(|| ep.host.clone());
            let name = rustls::pki_types::ServerName::try_from(name)
                .map_err(|_| UpstreamError::Tls("invalid server name".into()))?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| UpstreamError::Tls(e.to_string()))?;
            Stream::ClientTls(Box::new(tls))
        }
        (b'S', None) => return Err(UpstreamError::Tls("no TLS configuration".into())),
        // Plaintext only where it does not cross a network, and only if the Connection did
        // not ask for TLS (a server that declines it is then not the one configured).
        (b'N', _) if ep.is_loopback() && !conn.tls_required => Stream::Plain(tcp),
        (b'N', _) => return Err(UpstreamError::TlsRefused),
        _ => return Err(UpstreamError::Protocol("unexpected answer to SSLRequest".into())),
    };
    let encrypted = stream.is_tls();
    let (read, mut write) = tokio::io::split(stream);
    let mut reader = FrameReader::new(read);

    let credential = conn.credential.as_ref();
    // Never a default (`postgres` is the superuser): the Connection names its role.
    let user = credential
        .and_then(|c| c.username.clone())
        .ok_or_else(|| UpstreamError::Auth("the Connection names no role to log in as".into()))?;
    let password = credential.and_then(|c| c.secret.as_ref());
    let mut startup = vec![
        ("user".to_string(), user.clone()),
        ("database".to_string(), ep.path.clone()),
    ];
    startup.extend(
        params
            .iter()
            .filter(|(k, _)| !PINNED_SETTINGS.iter().any(|(p, _)| k.eq_ignore_ascii_case(p)))
            .cloned(),
    );
    // The classifier resolves unqualified names in `public` and reads string literals as
    // standard SQL does: the session must too, whatever the role or database defaults say
    // (startup parameters override `ALTER ROLE ... SET` and `ALTER DATABASE ... SET`).
    startup.extend(
        PINNED_SETTINGS
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let mut out = BytesMut::new();
    StartupPacket::Startup {
        minor: 0,
        params: startup,
    }
    .encode(&mut out);
    write.write_all(&out).await.map_err(unreachable)?;
    write.flush().await.map_err(unreachable)?;

    let mut scram: Option<ScramSha256> = None;
    let mut key = None;
    let mut statuses = Vec::new();
    loop {
        let frame = reader.next().await?;
        out.clear();
        match frame.tag {
            backend::AUTHENTICATION => match Authentication::parse(&frame.body)? {
                Authentication::Ok => {}
                Authentication::CleartextPassword => {
                    // Sent in clear, the password is the server's to keep: only a server whose
                    // certificate was verified gets it (a process squatting a loopback port, or
                    // a server behind insecureSkipVerify, does not).
                    if !encrypted || conn.insecure_skip_verify {
                        return Err(UpstreamError::Auth(
                            "the upstream asks for the password in cleartext, which is sent only over verified TLS (use scram-sha-256)".into(),
                        ));
                    }
                    let p = password.ok_or_else(|| UpstreamError::Auth("no password configured".into()))?;
                    encode_password(&mut out, &String::from_utf8_lossy(p.expose()));
                }
                Authentication::Md5Password { salt } => {
                    let p = password.ok_or_else(|| UpstreamError::Auth("no password configured".into()))?;
                    let hash = postgres_protocol::authentication::md5_hash(user.as_bytes(), p.expose(), salt);
                    encode_password(&mut out, &hash);
                }
                Authentication::Sasl { mechanisms } => {
                    if !mechanisms.iter().any(|m| m == "SCRAM-SHA-256") {
                        return Err(UpstreamError::Auth(format!(
                            "unsupported SASL mechanisms {mechanisms:?}"
                        )));
                    }
                    let p = password.ok_or_else(|| UpstreamError::Auth("no password configured".into()))?;
                    let s = ScramSha256::new(p.expose(), ChannelBinding::unsupported());
                    encode_sasl_initial(&mut out, "SCRAM-SHA-256", s.message());
                    scram = Some(s);
                }
                Authentication::SaslContinue(data) => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| UpstreamError::Protocol("SASL continue before start".into()))?;
                    s.update(&data).map_err(|e| UpstreamError::Auth(e.to_string()))?;
                    encode_sasl_response(&mut out, s.message());
                }
                Authentication::SaslFinal(data) => {
                    let mut s = scram
                        .take()
                        .ok_or_else(|| UpstreamError::Protocol("SASL final before start".into()))?;
                    // Verifies the server's signature: the server proved it knows the password too.
                    s.finish(&data).map_err(|e| UpstreamError::Auth(e.to_string()))?;
                }
                Authentication::Other(code) => {
                    return Err(UpstreamError::Auth(format!(
                        "unsupported authentication method {code}"
                    )));
                }
            },
            backend::PARAMETER_STATUS => statuses.push(ParameterStatus::parse(&frame.body)?),
            backend::BACKEND_KEY_DATA => key = Some(BackendKeyData::parse(&frame.body)?),
            backend::NOTICE_RESPONSE | backend::NEGOTIATE_PROTOCOL_VERSION => {}
            backend::ERROR_RESPONSE => {
                let e = ErrorResponse::parse(&frame.body)?;
                let code = e.code().unwrap_or("?").to_string();
                let message = e.message().unwrap_or("no message").to_string();
                return Err(UpstreamError::Refused(format!("{message} (SQLSTATE {code})")));
            }
            backend::READY_FOR_QUERY => {
                // A SASL exchange that began ends with the server's signature (SASLFinal, which
                // takes `scram`): a server that skips it has not proved it knows the password.
                if scram.is_some() {
                    return Err(UpstreamError::Auth(
                        "the upstream ended SCRAM without proving it knows the password".into(),
                    ));
                }
                let key = key.ok_or_else(|| UpstreamError::Protocol("no BackendKeyData".into()))?;
                // A server that reports a pinned setting otherwise did not take it.
                for st in &statuses {
                    if let Some((name, want)) = PINNED_SETTINGS.iter().find(|(n, _)| *n == st.name)
                        && st.value != *want
                    {
                        return Err(UpstreamError::Protocol(format!(
                            "the server reports {name} = {:?}; the gateway needs {want:?}",
                            st.value
                        )));
                    }
                }
                return Ok(Upstream {
                    reader,
                    writer: write,
                    key,
                    params: statuses,
                    addr,
                });
            }
            other => {
                return Err(UpstreamError::Protocol(format!(
                    "unexpected message {:?} during startup",
                    other as char
                )));
            }
        }
        if !out.is_empty() {
            write.write_all(&out).await.map_err(unreachable)?;
            write.flush().await.map_err(unreachable)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SecretValue;
    use crate::config::compile::{Credential, Endpoint};
    use agentgate_crds::connection::{ConnectionType, CredentialScheme};
    use tokio::io::AsyncReadExt;

    fn connection(port: u16) -> CompiledConnection {
        CompiledConnection {
            name: "db".into(),
            kind: ConnectionType::Postgres,
            endpoint: Endpoint {
                scheme: "postgres".into(),
                host: "127.0.0.1".into(),
                port,
                path: "app".into(),
            },
            credential: Some(Credential {
                scheme: CredentialScheme::PostgresPassword,
                username: Some("app".into()),
                secret: Some(SecretValue::new(PASSWORD.to_vec())),
                client_certificate: None,
            }),
            credential_source: None,
            ca: None,
            server_name: None,
            insecure_skip_verify: false,
            tls_required: false,
            route_host: None,
            route_path_prefix: None,
        }
    }

    const PASSWORD: &[u8] = b"stored-pa55word";

    /// One backend message.
    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    fn auth(code: i32, data: &[u8]) -> Vec<u8> {
        let mut body = code.to_be_bytes().to_vec();
        body.extend_from_slice(data);
        message(b'R', &body)
    }

    /// Reads one frontend message (tag, length, body).
    async fn read_message(s: &mut TcpStream) -> Vec<u8> {
        let mut head = [0u8; 5];
        s.read_exact(&mut head).await.unwrap();
        let len = i32::from_be_bytes(head[1..5].try_into().unwrap()) as usize;
        let mut body = vec![0u8; len - 4];
        s.read_exact(&mut body).await.unwrap();
        body
    }

    /// A server on loopback that declines TLS, reads the startup packet and plays `script`;
    /// answers what the gateway then sent, until it closed.
    async fn fake_upstream<F, Fut>(script: F) -> (u16, tokio::task::JoinHandle<Vec<u8>>)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = TcpStream> + Send,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut ssl = [0u8; 8];
            s.read_exact(&mut ssl).await.unwrap();
            s.write_all(b"N").await.unwrap();
            let mut len = [0u8; 4];
            s.read_exact(&mut len).await.unwrap();
            let mut startup = vec![0u8; i32::from_be_bytes(len) as usize - 4];
            s.read_exact(&mut startup).await.unwrap();
            let mut s = script(s).await;
            let mut rest = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
            rest
        });
        (port, task)
    }

    /// A server that asks for the password in clear over plaintext gets no password, on loopback
    /// too: a process squatting the port would keep it.
    #[tokio::test]
    async fn the_password_is_never_sent_in_clear_over_plaintext() {
        let (port, server) = fake_upstream(|mut s| async move {
            s.write_all(&auth(3, b"")).await.unwrap();
            s
        })
        .await;
        let err = connect(&connection(port), None, &[]).await.unwrap_err();
        assert!(
            matches!(&err, UpstreamError::Auth(why) if why.contains("cleartext")),
            "{err:?}"
        );
        let sent = server.await.unwrap();
        assert!(
            !sent.windows(PASSWORD.len()).any(|w| w == PASSWORD),
            "the password was sent"
        );
    }

    /// A server that takes the client's SCRAM proof and answers AuthenticationOk without its
    /// own signature (SASLFinal), or goes on to the session with no answer at all, has not
    /// proved it knows the password: refused.
    #[tokio::test]
    async fn scram_without_the_servers_signature_is_refused() {
        for skip_ok in [false, true] {
            scram_ended_early(skip_ok).await;
        }
    }

    async fn scram_ended_early(skip_ok: bool) {
        let (port, _server) = fake_upstream(move |mut s| async move {
            s.write_all(&auth(10, b"SCRAM-SHA-256\0\0")).await.unwrap();
            let initial = read_message(&mut s).await;
            let text = String::from_utf8_lossy(&initial).into_owned();
            // All after the first `r=`: the nonce itself may hold `r=`.
            let nonce = text.split_once("r=").unwrap().1.to_string();
            let first = format!("r={nonce}fake,s=c2FsdHNhbHRzYWx0c2FsdA==,i=4096");
            s.write_all(&auth(11, first.as_bytes())).await.unwrap();
            read_message(&mut s).await;
            let mut rest = if skip_ok { Vec::new() } else { auth(0, b"") };
            rest.extend(message(b'K', &[0, 0, 0, 1, 0, 0, 0, 2]));
            rest.extend(message(b'Z', b"I"));
            s.write_all(&rest).await.unwrap();
            s
        })
        .await;
        let err = connect(&connection(port), None, &[]).await.unwrap_err();
        assert!(
            matches!(&err, UpstreamError::Auth(why) if why.contains("without proving")),
            "{skip_ok}: {err:?}"
        );
    }

    #[test]
    fn a_pinned_setting_reported_changed_ends_the_session() {
        let status = |name: &str, value: &str| ParameterStatus {
            name: name.into(),
            value: value.into(),
        };
        for (name, value) in [
            ("standard_conforming_strings", "off"),
            ("client_encoding", "SJIS"),
            ("search_path", "billing, public"),
        ] {
            let why = unpinned(&status(name, value)).expect(name);
            assert!(why.contains(name), "{why}");
        }
        for (name, value) in [
            ("standard_conforming_strings", "on"),
            ("client_encoding", "UTF8"),
            ("search_path", "public"),
            ("TimeZone", "UTC"),
            ("application_name", "x"),
        ] {
            assert_eq!(unpinned(&status(name, value)), None, "{name}");
        }
    }
}
