//! Describe ('D' from the client) and Close ('C' from the client) share one shape: a kind byte
//! ('S' statement or 'P' portal) and a name.

use bytes::{BufMut, BytesMut};

use super::{Cursor, FrameError, frame, put_cstr};

/// What a Describe or Close names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Statement(String),
    Portal(String),
}

impl Target {
    pub fn parse(body: &[u8], what: &'static str) -> Result<Self, FrameError> {
        let mut c = Cursor::new(body, what);
        let kind = c.u8()?;
        let name = c.name()?.to_string();
        c.finish()?;
        match kind {
            b'S' => Ok(Self::Statement(name)),
            b'P' => Ok(Self::Portal(name)),
            _ => Err(FrameError::malformed(what, "kind is neither 'S' nor 'P'")),
        }
    }

    pub fn encode(&self, tag: u8, out: &mut BytesMut) {
        frame(out, tag, |b| {
            let (kind, name) = match self {
                Self::Statement(n) => (b'S', n),
                Self::Portal(n) => (b'P', n),
            };
            b.put_u8(kind);
            put_cstr(b, name);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::super::frontend;
    use super::*;

    #[test]
    fn round_trip() {
        for t in [Target::Statement("s1".into()), Target::Portal(String::new())] {
            let mut b = BytesMut::new();
            t.encode(frontend::DESCRIBE, &mut b);
            assert_eq!(Target::parse(&b[5..], "Describe").unwrap(), t);
        }
        assert!(Target::parse(b"Xname\0", "Describe").is_err());
    }
}
