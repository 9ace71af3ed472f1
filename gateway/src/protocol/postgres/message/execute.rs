//! Execute ('E' from the client): runs a portal, optionally up to a row count.

use bytes::{BufMut, BytesMut};

use super::{Cursor, FrameError, frame, frontend, put_cstr};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Execute {
    pub portal: String,
    /// 0 means no limit.
    pub max_rows: i32,
}

impl Execute {
    pub fn parse(body: &[u8]) -> Result<Self, FrameError> {
        let mut c = Cursor::new(body, "Execute");
        let portal = c.name()?.to_string();
        let max_rows = c.i32()?;
        c.finish()?;
        Ok(Self { portal, max_rows })
    }

    pub fn encode(&self, out: &mut BytesMut) {
        frame(out, frontend::EXECUTE, |b| {
            put_cstr(b, &self.portal);
            b.put_i32(self.max_rows);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let e = Execute {
            portal: "p".into(),
            max_rows: 10,
        };
        let mut b = BytesMut::new();
        e.encode(&mut b);
        assert_eq!(Execute::parse(&b[5..]).unwrap(), e);
    }
}
