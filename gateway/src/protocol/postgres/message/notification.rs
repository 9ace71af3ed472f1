//! NotificationResponse ('A' from the server): a NOTIFY on a channel the session listens on.

use bytes::{BufMut, BytesMut};

use super::{Cursor, FrameError, backend, frame};

/// Channel and payload are kept as bytes: they are in the server's encoding, which need not be
/// UTF-8 (SQL_ASCII), and a notification the gateway cannot read as text is still answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notification {
    /// The notifying backend's process id.
    pub pid: i32,
    pub channel: Vec<u8>,
    pub payload: Vec<u8>,
}

impl Notification {
    pub fn parse(body: &[u8]) -> Result<Self, FrameError> {
        let mut c = Cursor::new(body, "NotificationResponse");
        let pid = c.i32()?;
        let rest = c.rest();
        let missing = || FrameError::malformed("NotificationResponse", "missing string terminator");
        let end = memchr::memchr(0, rest).ok_or_else(missing)?;
        let channel = rest[..end].to_vec();
        let rest = &rest[end + 1..];
        let end = memchr::memchr(0, rest).ok_or_else(missing)?;
        let payload = rest[..end].to_vec();
        if end + 1 != rest.len() {
            return Err(FrameError::malformed("NotificationResponse", "trailing bytes"));
        }
        Ok(Self {
            pid,
            channel,
            payload,
        })
    }

    pub fn encode(&self, out: &mut BytesMut) {
        frame(out, backend::NOTIFICATION, |b| {
            b.put_i32(self.pid);
            for s in [&self.channel, &self.payload] {
                b.put_slice(s);
                b.put_u8(0);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let n = Notification {
            pid: 4242,
            channel: b"customer_changes".to_vec(),
            payload: b"{\"id\": 1, \"name\": \"Jos\xe9\"}".to_vec(),
        };
        let mut b = BytesMut::new();
        n.encode(&mut b);
        assert_eq!(b[0], backend::NOTIFICATION);
        assert_eq!(Notification::parse(&b[5..]).unwrap(), n);
        assert!(Notification::parse(&b[5..b.len() - 1]).is_err());
        let mut trailing = b[5..].to_vec();
        trailing.push(b'x');
        assert!(Notification::parse(&trailing).is_err());
    }
}
