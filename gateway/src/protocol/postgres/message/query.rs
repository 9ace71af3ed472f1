//! Query ('Q'): a simple-protocol query string, possibly several statements.

use bytes::BytesMut;

use super::{Cursor, FrameError, frame, frontend, put_cstr};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    pub sql: String,
}

impl Query {
    pub fn parse(body: &[u8]) -> Result<Self, FrameError> {
        let mut c = Cursor::new(body, "Query");
        let sql = c.cstr()?.to_string();
        c.finish()?;
        Ok(Self { sql })
    }

    pub fn encode(&self, out: &mut BytesMut) {
        frame(out, frontend::QUERY, |b| put_cstr(b, &self.sql));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let q = Query {
            sql: "SELECT 1; SELECT 'é'".into(),
        };
        let mut b = BytesMut::new();
        q.encode(&mut b);
        assert_eq!(Query::parse(&b[5..]).unwrap(), q);
        // An embedded NUL ends the string early: the rest is trailing garbage, refused.
        assert!(Query::parse(b"SELECT 1\0; DROP TABLE t\0").is_err());
        assert!(Query::parse(b"\xff\0").is_err());
    }
}
