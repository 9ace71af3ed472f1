//! NotificationResponse ('A' from the server): a NOTIFY on a channel the session listens on.

use bytes::{BufMut, BytesMut};

use super::{Cursor, FrameError, backend, frame, put_cstr};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notification {
    /// The notifying backend's process id.
    pub pid: i32,
    pub channel: String,
    pub payload: String,
}

impl Notification {
    pub fn parse(body: &[u8]) -> Result<Self, FrameError> {
        let mut c = Cursor::new(body, "NotificationResponse");
        let pid = c.i32()?;
        let channel = c.cstr()?.to_string();
        let payload = c.cstr()?.to_string();
        c.finish()?;
        Ok(Self {
            pid,
            channel,
            payload,
        })
    }

    pub fn encode(&self, out: &mut BytesMut) {
        frame(out, backend::NOTIFICATION, |b| {
            b.put_i32(self.pid);
            put_cstr(b, &self.channel);
            put_cstr(b, &self.payload);
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
            channel: "customer_changes".into(),
            payload: r#"{"id": 1}"#.into(),
        };
        let mut b = BytesMut::new();
        n.encode(&mut b);
        assert_eq!(b[0], backend::NOTIFICATION);
        assert_eq!(Notification::parse(&b[5..]).unwrap(), n);
        assert!(Notification::parse(&b[5..b.len() - 1]).is_err());
    }
}
