//! Authentication requests ('R') and the client's answers ('p': password, SASL).

use bytes::{BufMut, BytesMut};

use super::{Cursor, FrameError, backend, frame, frontend, put_cstr};

/// An Authentication message from the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Authentication {
    Ok,
    CleartextPassword,
    Md5Password {
        salt: [u8; 4],
    },
    Sasl {
        mechanisms: Vec<String>,
    },
    SaslContinue(Vec<u8>),
    SaslFinal(Vec<u8>),
    /// Kerberos, GSS, SSPI: not supported towards upstreams.
    Other(i32),
}

impl Authentication {
    pub fn parse(body: &[u8]) -> Result<Self, FrameError> {
        let mut c = Cursor::new(body, "Authentication");
        Ok(match c.i32()? {
            0 => Self::Ok,
            3 => Self::CleartextPassword,
            5 => {
                let s = c.bytes(4)?;
                Self::Md5Password {
                    salt: [s[0], s[1], s[2], s[3]],
                }
            }
            10 => {
                let mut mechanisms = Vec::new();
                loop {
                    let m = c.cstr()?;
                    if m.is_empty() {
                        break;
                    }
                    mechanisms.push(m.to_string());
                }
                Self::Sasl { mechanisms }
            }
            11 => Self::SaslContinue(c.rest().to_vec()),
            12 => Self::SaslFinal(c.rest().to_vec()),
            other => Self::Other(other),
        })
    }

    pub fn encode(&self, out: &mut BytesMut) {
        frame(out, backend::AUTHENTICATION, |b| match self {
            Self::Ok => b.put_i32(0),
            Self::CleartextPassword => b.put_i32(3),
            Self::Md5Password { salt } => {
                b.put_i32(5);
                b.put_slice(salt);
            }
            Self::Sasl { mechanisms } => {
                b.put_i32(10);
                for m in mechanisms {
                    put_cstr(b, m);
                }
                b.put_u8(0);
            }
            Self::SaslContinue(d) => {
                b.put_i32(11);
                b.put_slice(d);
            }
            Self::SaslFinal(d) => {
                b.put_i32(12);
                b.put_slice(d);
            }
            Self::Other(code) => b.put_i32(*code),
        });
    }
}

/// A PasswordMessage with a cleartext password (the agent's token).
pub fn parse_password(body: &[u8]) -> Result<&str, FrameError> {
    let mut c = Cursor::new(body, "PasswordMessage");
    let p = c.cstr()?;
    c.finish()?;
    Ok(p)
}

/// A PasswordMessage (cleartext or md5 hash).
pub fn encode_password(out: &mut BytesMut, password: &str) {
    frame(out, frontend::PASSWORD, |b| put_cstr(b, password));
}

/// SASLInitialResponse.
pub fn encode_sasl_initial(out: &mut BytesMut, mechanism: &str, data: &[u8]) {
    frame(out, frontend::PASSWORD, |b| {
        put_cstr(b, mechanism);
        b.put_i32(data.len() as i32);
        b.put_slice(data);
    });
}

/// SASLResponse.
pub fn encode_sasl_response(out: &mut BytesMut, data: &[u8]) {
    frame(out, frontend::PASSWORD, |b| b.put_slice(data));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for a in [
            Authentication::Ok,
            Authentication::CleartextPassword,
            Authentication::Md5Password { salt: [1, 2, 3, 4] },
            Authentication::Sasl {
                mechanisms: vec!["SCRAM-SHA-256".into(), "SCRAM-SHA-256-PLUS".into()],
            },
            Authentication::SaslContinue(b"r=abc".to_vec()),
            Authentication::SaslFinal(b"v=xyz".to_vec()),
            Authentication::Other(7),
        ] {
            let mut b = BytesMut::new();
            a.encode(&mut b);
            assert_eq!(b[0], backend::AUTHENTICATION);
            assert_eq!(Authentication::parse(&b[5..]).unwrap(), a);
        }
        let mut b = BytesMut::new();
        encode_password(&mut b, "token");
        assert_eq!(parse_password(&b[5..]).unwrap(), "token");
        assert!(parse_password(b"no-nul").is_err());
    }
}
