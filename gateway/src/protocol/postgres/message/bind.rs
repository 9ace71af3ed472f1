//! Bind ('B'): binds parameters to a prepared statement, creating a portal.

use bytes::{BufMut, Bytes, BytesMut};

use super::{Cursor, FrameError, frame, frontend, put_cstr};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bind {
    pub portal: String,
    pub statement: String,
    /// 0 = text, 1 = binary; empty means all text, one entry applies to all.
    pub param_formats: Vec<i16>,
    /// `None` is SQL NULL.
    pub params: Vec<Option<Bytes>>,
    pub result_formats: Vec<i16>,
}

impl Bind {
    pub fn parse(body: &Bytes) -> Result<Self, FrameError> {
        let mut c = Cursor::new(body, "Bind");
        let portal = c.name()?.to_string();
        let statement = c.name()?.to_string();
        let n = c.count()?;
        let mut param_formats = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            param_formats.push(c.i16()?);
        }
        let n = c.count()?;
        let mut params = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            let len = c.i32()?;
            if len < 0 {
                params.push(None);
            } else {
                let v = c.bytes(len as usize)?;
                // Copies: a portal keeps its values, and a slice would keep the whole read buffer
                // the frame came in (up to a frame's 64 MiB) alive with it.
                params.push(Some(Bytes::copy_from_slice(v)));
            }
        }
        let n = c.count()?;
        let mut result_formats = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            result_formats.push(c.i16()?);
        }
        c.finish()?;
        Ok(Self {
            portal,
            statement,
            param_formats,
            params,
            result_formats,
        })
    }

    /// Format of parameter `i` (0 text, 1 binary).
    pub fn param_format(&self, i: usize) -> i16 {
        match self.param_formats.len() {
            0 => 0,
            1 => self.param_formats[0],
            _ => self.param_formats.get(i).copied().unwrap_or(0),
        }
    }

    pub fn encode(&self, out: &mut BytesMut) {
        frame(out, frontend::BIND, |b| {
            put_cstr(b, &self.portal);
            put_cstr(b, &self.statement);
            b.put_i16(self.param_formats.len() as i16);
            for f in &self.param_formats {
                b.put_i16(*f);
            }
            b.put_i16(self.params.len() as i16);
            for p in &self.params {
                match p {
                    None => b.put_i32(-1),
                    Some(v) => {
                        b.put_i32(v.len() as i32);
                        b.put_slice(v);
                    }
                }
            }
            b.put_i16(self.result_formats.len() as i16);
            for f in &self.result_formats {
                b.put_i16(*f);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let m = Bind {
            portal: String::new(),
            statement: "s1".into(),
            param_formats: vec![0, 1],
            params: vec![Some(Bytes::from_static(b"42")), None],
            result_formats: vec![1],
        };
        let mut b = BytesMut::new();
        m.encode(&mut b);
        let body = b.freeze().slice(5..);
        assert_eq!(Bind::parse(&body).unwrap(), m);
        assert_eq!(m.param_format(1), 1);
        // A parameter length past the end of the message.
        let mut bad = BytesMut::new();
        put_cstr(&mut bad, "");
        put_cstr(&mut bad, "");
        bad.put_i16(0);
        bad.put_i16(1);
        bad.put_i32(1000);
        assert!(Bind::parse(&bad.freeze()).is_err());
    }
}
