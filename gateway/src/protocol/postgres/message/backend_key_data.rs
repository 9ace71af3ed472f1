//! BackendKeyData ('K'): the key a client uses to cancel its running query.

use bytes::{BufMut, BytesMut};

use super::{Cursor, FrameError, backend, frame};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BackendKeyData {
    pub pid: i32,
    pub secret: i32,
}

impl BackendKeyData {
    pub fn parse(body: &[u8]) -> Result<Self, FrameError> {
        let mut c = Cursor::new(body, "BackendKeyData");
        let pid = c.i32()?;
        // Protocol 3.2 allows longer secrets; the gateway speaks 3.0 upstream, so exactly 4 bytes.
        let secret = c.i32()?;
        c.finish()?;
        Ok(Self { pid, secret })
    }

    pub fn encode(&self, out: &mut BytesMut) {
        frame(out, backend::BACKEND_KEY_DATA, |b| {
            b.put_i32(self.pid);
            b.put_i32(self.secret);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let k = BackendKeyData {
            pid: 1234,
            secret: -99,
        };
        let mut b = BytesMut::new();
        k.encode(&mut b);
        assert_eq!(BackendKeyData::parse(&b[5..]).unwrap(), k);
        assert!(BackendKeyData::parse(&b[5..9]).is_err());
    }
}
