//! ParameterDescription ('t'): the server's answer to a Describe of a statement, naming the type
//! of each parameter (resolved by the server even when the client's Parse left it unspecified).

use bytes::{BufMut, BytesMut};

use super::{Cursor, FrameError, backend, frame};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParameterDescription {
    pub type_oids: Vec<u32>,
}

impl ParameterDescription {
    pub fn parse(body: &[u8]) -> Result<Self, FrameError> {
        let mut c = Cursor::new(body, "ParameterDescription");
        let n = c.count()?;
        // The count is checked against the bytes there, not trusted for the allocation.
        let mut type_oids = Vec::with_capacity(n.min(body.len() / 4));
        for _ in 0..n {
            type_oids.push(c.i32()? as u32);
        }
        c.finish()?;
        Ok(Self { type_oids })
    }

    pub fn encode(&self, out: &mut BytesMut) {
        frame(out, backend::PARAMETER_DESCRIPTION, |b| {
            b.put_i16(self.type_oids.len() as i16);
            for t in &self.type_oids {
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
        let d = ParameterDescription {
            type_oids: vec![23, 25, 3802],
        };
        let mut b = BytesMut::new();
        d.encode(&mut b);
        assert_eq!(b[0], b't');
        assert_eq!(ParameterDescription::parse(&b[5..]).unwrap(), d);
        // A count the bytes do not back, and trailing bytes, are refused.
        assert!(ParameterDescription::parse(&b[5..b.len() - 2]).is_err());
        let mut longer = b[5..].to_vec();
        longer.push(0);
        assert!(ParameterDescription::parse(&longer).is_err());
        assert!(ParameterDescription::parse(&[0x7f, 0xff]).is_err());
    }
}
