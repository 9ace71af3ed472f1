//! CommandComplete ('C' from the server): a statement finished, with its tag (`SELECT 3`).

use bytes::BytesMut;

use super::{Cursor, FrameError, backend, frame, put_cstr};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandComplete {
    pub tag: String,
}

impl CommandComplete {
    pub fn parse(body: &[u8]) -> Result<Self, FrameError> {
        let mut c = Cursor::new(body, "CommandComplete");
        let tag = c.cstr()?.to_string();
        c.finish()?;
        Ok(Self { tag })
    }

    /// Rows the command returned or affected, from the tag's last word.
    pub fn rows(&self) -> Option<u64> {
        self.tag.rsplit(' ').next()?.parse().ok()
    }

    pub fn encode(&self, out: &mut BytesMut) {
        frame(out, backend::COMMAND_COMPLETE, |b| put_cstr(b, &self.tag));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let c = CommandComplete {
            tag: "INSERT 0 5".into(),
        };
        let mut b = BytesMut::new();
        c.encode(&mut b);
        let back = CommandComplete::parse(&b[5..]).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.rows(), Some(5));
        assert_eq!(CommandComplete { tag: "BEGIN".into() }.rows(), None);
    }
}
