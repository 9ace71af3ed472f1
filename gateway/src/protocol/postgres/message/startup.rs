//! The untagged startup-phase packets: StartupMessage, SSLRequest, GSSENCRequest, CancelRequest.

use bytes::{BufMut, BytesMut};

use super::{Cursor, FrameError, put_cstr};

pub const PROTOCOL_3_0: i32 = 196_608;
pub const SSL_REQUEST: i32 = 80_877_103;
pub const GSSENC_REQUEST: i32 = 80_877_104;
pub const CANCEL_REQUEST: i32 = 80_877_102;

/// The first packet of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartupPacket {
    SslRequest,
    GssEncRequest,
    Cancel {
        pid: i32,
        secret: i32,
    },
    /// Protocol 3.x with its parameters, in order.
    Startup {
        minor: u16,
        params: Vec<(String, String)>,
    },
}

impl StartupPacket {
    /// Decodes a packet body (after the length word).
    pub fn parse(body: &[u8]) -> Result<Self, FrameError> {
        let mut c = Cursor::new(body, "startup");
        let code = c.i32()?;
        match code {
            SSL_REQUEST => {
                c.finish()?;
                Ok(Self::SslRequest)
            }
            GSSENC_REQUEST => {
                c.finish()?;
                Ok(Self::GssEncRequest)
            }
            CANCEL_REQUEST => {
                let pid = c.i32()?;
                let secret = c.i32()?;
                c.finish()?;
                Ok(Self::Cancel { pid, secret })
            }
            v if v >> 16 == 3 => {
                let mut params = Vec::new();
                loop {
                    let name = c.cstr()?;
                    if name.is_empty() {
                        break;
                    }
                    let value = c.cstr()?;
                    if params.iter().any(|(n, _)| n == name) {
                        return Err(FrameError::malformed("startup", "repeated parameter"));
                    }
                    params.push((name.to_string(), value.to_string()));
                }
                c.finish()?;
                Ok(Self::Startup {
                    minor: (v & 0xffff) as u16,
                    params,
                })
            }
            _ => Err(FrameError::malformed("startup", "unsupported protocol version")),
        }
    }

    /// The whole packet, length included.
    pub fn encode(&self, out: &mut BytesMut) {
        let at = out.len();
        out.put_i32(0);
        match self {
            Self::SslRequest => out.put_i32(SSL_REQUEST),
            Self::GssEncRequest => out.put_i32(GSSENC_REQUEST),
            Self::Cancel { pid, secret } => {
                out.put_i32(CANCEL_REQUEST);
                out.put_i32(*pid);
                out.put_i32(*secret);
            }
            Self::Startup { minor, params } => {
                out.put_i32(PROTOCOL_3_0 | i32::from(*minor));
                for (k, v) in params {
                    put_cstr(out, k);
                    put_cstr(out, v);
                }
                out.put_u8(0);
            }
        }
        let len = (out.len() - at) as i32;
        out[at..at + 4].copy_from_slice(&len.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for p in [
            StartupPacket::SslRequest,
            StartupPacket::GssEncRequest,
            StartupPacket::Cancel { pid: 42, secret: -7 },
            StartupPacket::Startup {
                minor: 0,
                params: vec![
                    ("user".into(), "agent".into()),
                    ("database".into(), "orders".into()),
                ],
            },
        ] {
            let mut b = BytesMut::new();
            p.encode(&mut b);
            assert_eq!(StartupPacket::parse(&b[4..]).unwrap(), p);
        }
    }

    #[test]
    fn hostile_packets_are_refused() {
        // Repeated parameter, missing terminator, unknown protocol, trailing bytes.
        let mut b = BytesMut::new();
        b.put_i32(PROTOCOL_3_0);
        put_cstr(&mut b, "user");
        put_cstr(&mut b, "a");
        put_cstr(&mut b, "user");
        put_cstr(&mut b, "b");
        b.put_u8(0);
        assert!(StartupPacket::parse(&b).is_err());
        let mut b = BytesMut::new();
        b.put_i32(PROTOCOL_3_0);
        put_cstr(&mut b, "user");
        assert!(StartupPacket::parse(&b).is_err());
        assert!(StartupPacket::parse(&2_i32.to_be_bytes()).is_err());
        let mut b = BytesMut::new();
        b.put_i32(SSL_REQUEST);
        b.put_u8(1);
        assert!(StartupPacket::parse(&b).is_err());
    }
}
