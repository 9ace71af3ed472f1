//! The client side of connection start: TLS negotiation, the startup packet, and authentication
//! by the agent's token presented as the password.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;

use super::message::authentication::{Authentication, parse_password};
use super::message::error_response::{ErrorResponse, sqlstate};
use super::message::startup::StartupPacket;
use super::message::{FrameError, FrameReader, MAX_STARTUP_BYTES, frontend};
use super::stream::Stream;

/// Longest time from TCP accept to a completed startup packet and password.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);

/// Startup parameters passed on to the upstream (lowercase names). Everything else is dropped,
/// and `options` and `replication` are refused: they can change settings or the session kind
/// behind the policy's back.
pub const FORWARDED_PARAMETERS: &[&str] = &[
    "application_name",
    "datestyle",
    "timezone",
    "intervalstyle",
    "extra_float_digits",
    "statement_timeout",
    "lock_timeout",
    "idle_in_transaction_session_timeout",
];

/// Client encodings the gateway accepts: it reads statements and masks values as UTF-8.
const ACCEPTED_ENCODINGS: &[&str] = &["utf8", "unicode", "sqlascii"];

/// A client that sent a valid startup packet.
#[derive(Debug)]
pub struct Started {
    pub reader: FrameReader<ReadHalf<Stream>>,
    pub writer: WriteHalf<Stream>,
    pub tls: bool,
    /// The listener serves TLS: a client of it sends its token only over TLS, from loopback
    /// too (a sidecar forwards remote clients from a loopback address).
    pub listener_tls: bool,
    pub user: String,
    pub database: String,
    /// Allowlisted parameters, lowercase names.
    pub params: Vec<(String, String)>,
    /// Parameters dropped, for the log.
    pub dropped: Vec<String>,
}

/// What the first packets of a connection asked for.
#[derive(Debug)]
pub enum Opening {
    Session(Box<Started>),
    Cancel { pid: i32, secret: i32 },
}

/// Why a connection ended during startup; `Reject` carries the error to send.
#[derive(Debug)]
pub enum StartupError {
    /// Close without a word (garbage, a client that went away, a protocol violation during TLS).
    Drop(String),
    /// Send this FATAL error, then close.
    Reject(ErrorResponse),
}

impl From<FrameError> for StartupError {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::Closed | FrameError::Io(_) => StartupError::Drop(e.to_string()),
            other => StartupError::Reject(ErrorResponse::fatal(
                sqlstate::PROTOCOL_VIOLATION,
                format!("invalid startup packet: {other}"),
            )),
        }
    }
}

/// Reads the opening packets: SSLRequest (answered `S` when the listener has TLS, else `N`),
/// GSSENCRequest (always `N`), then a CancelRequest or a StartupMessage. A refused startup gets
/// its FATAL error here, before the connection is dropped.
pub async fn open(
    tcp: TcpStream,
    acceptor: Option<&tokio_rustls::TlsAcceptor>,
) -> Result<Opening, StartupError> {
    let mut slot = Some(FrameReader::new(Stream::Plain(tcp)));
    match negotiate(&mut slot, acceptor).await {
        Err(StartupError::Reject(e)) => {
            if let Some(reader) = slot.as_mut() {
                let mut out = BytesMut::new();
                e.encode(&mut out);
                let _ = reader.get_mut().write_all(&out).await;
                let _ = reader.get_mut().shutdown().await;
            }
            Err(StartupError::Drop(format!(
                "startup refused: {}",
                e.message().unwrap_or_default()
            )))
        }
        other => other,
    }
}

/// The negotiation itself; `slot` holds the connection's reader between steps (it is replaced
/// when TLS starts, and taken when the session starts).
async fn negotiate(
    slot: &mut Option<FrameReader<Stream>>,
    acceptor: Option<&tokio_rustls::TlsAcceptor>,
) -> Result<Opening, StartupError> {
    let mut tls = false;
    let mut gss_declined = false;
    loop {
        let reader = slot
            .as_mut()
            .ok_or_else(|| StartupError::Drop("no connection".into()))?;
        let body = reader.startup_packet(MAX_STARTUP_BYTES).await?;
        let packet = StartupPacket::parse(&body)?;
        let encryption = matches!(packet, StartupPacket::SslRequest | StartupPacket::GssEncRequest);
        if encryption && (tls || (gss_declined && packet == StartupPacket::GssEncRequest)) {
            return Err(StartupError::Reject(ErrorResponse::fatal(
                sqlstate::PROTOCOL_VIOLATION,
                "encryption negotiated twice",
            )));
        }
        if encryption {
            let (stream, rest) = slot
                .take()
                .map(FrameReader::into_parts)
                .ok_or_else(|| StartupError::Drop("no connection".into()))?;
            // Bytes after the request would be read as if they came over TLS (CVE-2021-23222).
            if !rest.is_empty() {
                return Err(StartupError::Drop(
                    "data pipelined after an encryption request".into(),
                ));
            }
            let Stream::Plain(mut tcp) = stream else {
                return Err(StartupError::Drop("encryption request inside TLS".into()));
            };
            match (packet, acceptor) {
                (StartupPacket::SslRequest, Some(acceptor)) => {
                    tcp.write_all(b"S")
                        .await
                        .map_err(|e| StartupError::Drop(e.to_string()))?;
                    let s = acceptor
                        .accept(tcp)
                        .await
                        .map_err(|e| StartupError::Drop(format!("TLS handshake: {e}")))?;
                    *slot = Some(FrameReader::new(Stream::ServerTls(Box::new(s))));
                    tls = true;
                }
                (p, _) => {
                    gss_declined |= p == StartupPacket::GssEncRequest;
                    tcp.write_all(b"N")
                        .await
                        .map_err(|e| StartupError::Drop(e.to_string()))?;
                    *slot = Some(FrameReader::new(Stream::Plain(tcp)));
                }
            }
            continue;
        }
        match packet {
            StartupPacket::Cancel { pid, secret } => return Ok(Opening::Cancel { pid, secret }),
            StartupPacket::Startup { minor: _, params } => {
                let (stream, rest) = slot
                    .take()
                    .map(FrameReader::into_parts)
                    .ok_or_else(|| StartupError::Drop("no connection".into()))?;
                let (read, writer) = tokio::io::split(stream);
                let reader = FrameReader::with_buffer(read, rest);
                return match started(reader, writer, (tls, acceptor.is_some()), params) {
                    Ok(s) => Ok(Opening::Session(Box::new(s))),
                    Err((StartupError::Reject(e), mut writer)) => {
                        let mut out = BytesMut::new();
                        e.encode(&mut out);
                        let _ = writer.write_all(&out).await;
                        let _ = writer.shutdown().await;
                        Err(StartupError::Drop(format!(
                            "startup refused: {}",
                            e.message().unwrap_or_default()
                        )))
                    }
                    Err((e, _)) => Err(e),
                };
            }
            StartupPacket::SslRequest | StartupPacket::GssEncRequest => return unreachable_encryption(),
        }
    }
}

/// Encryption requests are handled before the match above.
fn unreachable_encryption() -> Result<Opening, StartupError> {
    Err(StartupError::Drop("encryption request".into()))
}

fn started(
    reader: FrameReader<ReadHalf<Stream>>,
    writer: WriteHalf<Stream>,
    (tls, listener_tls): (bool, bool),
    params: Vec<(String, String)>,
) -> Result<Started, (StartupError, WriteHalf<Stream>)> {
    match check_parameters(params) {
        Ok((user, database, params, dropped)) => Ok(Started {
            reader,
            writer,
            tls,
            listener_tls,
            user,
            database,
            params,
            dropped,
        }),
        Err(e) => Err((e, writer)),
    }
}

type Parameters = (String, String, Vec<(String, String)>, Vec<String>);

fn check_parameters(params: Vec<(String, String)>) -> Result<Parameters, StartupError> {
    let reject = |code: &str, m: String| StartupError::Reject(ErrorResponse::fatal(code, m));
    let mut user = None;
    let mut database = None;
    let mut forwarded = Vec::new();
    let mut dropped = Vec::new();
    for (name, value) in params {
        let lower = name.to_ascii_lowercase();
        match lower.as_str() {
            "user" => user = Some(value),
            "database" => database = Some(value),
            "options" | "replication" => {
                return Err(reject(
                    sqlstate::CONNECTION_REJECTED,
                    format!("the startup parameter {lower:?} is refused by the gateway"),
                ));
            }
            "client_encoding" => {
                let norm: String = value
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric())
                    .collect::<String>()
                    .to_ascii_lowercase();
                if !ACCEPTED_ENCODINGS.contains(&norm.as_str()) {
                    return Err(reject(
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        format!("client_encoding {value:?} is not supported by the gateway; use UTF8"),
                    ));
                }
            }
            n if FORWARDED_PARAMETERS.contains(&n) => forwarded.push((lower, value)),
            _ => dropped.push(name),
        }
    }
    let user = user.filter(|u| !u.is_empty()).ok_or_else(|| {
        reject(
            sqlstate::INVALID_AUTHORIZATION,
            "no user in the startup packet".into(),
        )
    })?;
    // libpq defaults the database to the user name; the gateway needs the Connection's name.
    let database = database.filter(|d| !d.is_empty()).unwrap_or_else(|| user.clone());
    forwarded.push(("client_encoding".into(), "UTF8".into()));
    Ok((user, database, forwarded, dropped))
}

/// The largest password message accepted: a token of the largest size verified, and its NUL.
pub const MAX_PASSWORD_MESSAGE_BYTES: usize = crate::identity::token::MAX_TOKEN_BYTES + 1;

/// Asks for the password (the agent's token) and returns it. Cleartext passwords are accepted
/// only over TLS, or from a loopback peer of a listener without TLS.
pub async fn read_token(s: &mut Started, peer: SocketAddr) -> Result<String, StartupError> {
    if !s.tls && (s.listener_tls || !peer.ip().is_loopback()) {
        return Err(StartupError::Reject(ErrorResponse::fatal(
            sqlstate::INVALID_AUTHORIZATION,
            "the gateway accepts tokens only over TLS on this listener (use sslmode=verify-full with sslrootcert naming the gateway's CA: require does not check the certificate, and the token is sent as a password)",
        )));
    }
    let mut out = BytesMut::new();
    Authentication::CleartextPassword.encode(&mut out);
    s.writer
        .write_all(&out)
        .await
        .map_err(|e| StartupError::Drop(e.to_string()))?;
    s.writer
        .flush()
        .await
        .map_err(|e| StartupError::Drop(e.to_string()))?;
    // Unauthenticated: a token and its NUL, not the 64 MiB an authenticated session may send
    // (PostgreSQL itself caps messages before authentication).
    s.reader.set_limit(MAX_PASSWORD_MESSAGE_BYTES);
    let frame = tokio::time::timeout(STARTUP_TIMEOUT, s.reader.next())
        .await
        .map_err(|_| StartupError::Drop("timed out waiting for the password".into()))??;
    s.reader.set_limit(super::message::MAX_FRAME_BYTES);
    if frame.tag != frontend::PASSWORD {
        return Err(StartupError::Reject(ErrorResponse::fatal(
            sqlstate::PROTOCOL_VIOLATION,
            "expected a password message",
        )));
    }
    let token = parse_password(&frame.body)?;
    Ok(token.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn refused(pairs: &[(&str, &str)]) -> (String, String) {
        match check_parameters(params(pairs)) {
            Err(StartupError::Reject(e)) => (
                e.code().unwrap_or_default().to_string(),
                e.message().unwrap_or_default().to_string(),
            ),
            other => panic!("{pairs:?} was not refused: {other:?}"),
        }
    }

    /// SECURITY.md, startup: `options` (`-c role=...`) and `replication` (a walsender that reads
    /// everything) are refused in any case; settings that change who or where the session is
    /// (`role`, `search_path`, `session_authorization`, protocol extensions) are dropped, never
    /// forwarded; only a short list of client-presentation settings passes.
    #[test]
    fn startup_parameters_are_checked() {
        for (name, value) in [
            ("options", "-c role=postgres"),
            ("Options", "-c search_path=billing"),
            ("replication", "database"),
            ("REPLICATION", "true"),
        ] {
            let (code, message) = refused(&[("user", "agent"), (name, value)]);
            assert_eq!(code, sqlstate::CONNECTION_REJECTED, "{name}");
            assert!(
                message.contains(&format!("{:?}", name.to_ascii_lowercase())),
                "{message}"
            );
        }
        let (user, database, forwarded, dropped) = check_parameters(params(&[
            ("user", "agent"),
            ("role", "postgres"),
            ("search_path", "billing"),
            ("session_authorization", "postgres"),
            ("_pq_.compression", "on"),
            ("application_name", "psql"),
            ("TimeZone", "UTC"),
            ("client_encoding", "utf-8"),
        ]))
        .unwrap();
        assert_eq!(
            (user.as_str(), database.as_str()),
            ("agent", "agent"),
            "libpq's default database"
        );
        assert_eq!(
            forwarded,
            params(&[
                ("application_name", "psql"),
                ("timezone", "UTC"),
                ("client_encoding", "UTF8")
            ])
        );
        assert_eq!(
            dropped,
            ["role", "search_path", "session_authorization", "_pq_.compression"]
        );
        assert_eq!(
            refused(&[("user", "agent"), ("client_encoding", "LATIN1")]).0,
            sqlstate::FEATURE_NOT_SUPPORTED
        );
        assert_eq!(
            refused(&[("database", "shop")]).0,
            sqlstate::INVALID_AUTHORIZATION
        );
        assert_eq!(
            refused(&[("user", ""), ("database", "shop")]).0,
            sqlstate::INVALID_AUTHORIZATION
        );
    }
}
