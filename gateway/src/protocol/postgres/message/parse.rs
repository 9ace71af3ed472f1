//! Parse ('P'): registers a statement text under a name (extended protocol).

use bytes::{BufMut, BytesMut};

use super::{Cursor, FrameError, frame, frontend, put_cstr};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parse {
    /// Empty for the unnamed statement.
    pub name: String,
    pub sql: String,
    pub param_types: Vec<u32>,
}

#[allow(clippy::self_named_constructors)] // `parse` decodes, as on every message.
impl Parse {
    pub fn parse(body: &[u8]) -> Result<Self, FrameError> {
        let mut c = Cursor::new(body, "Parse");
        let name = c.name()?.to_string();
        let sql = c.cstr()?.to_string();
        let n = c.count()?;
        let mut param_types = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            param_types.push(c.i32()? as u32);
        }
        c.finish()?;
        Ok(Self {
            name,
            sql,
            param_types,
        })
    }

    pub fn encode(&self, out: &mut BytesMut) {
        frame(out, frontend::PARSE, |b| {
            put_cstr(b, &self.name);
            put_cstr(b, &self.sql);
            b.put_i16(self.param_types.len() as i16);
            for t in &self.param_types {
                b.put_u32(*t);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let p = Parse {
            name: "s1".into(),
            sql: "SELECT $1::int".into(),
            param_types: vec![23, 0],
        };
        let mut b = BytesMut::new();
        p.encode(&mut b);
        assert_eq!(Parse::parse(&b[5..]).unwrap(), p);
        assert!(Parse::parse(&b[5..b.len() - 2]).is_err());
    }
}
