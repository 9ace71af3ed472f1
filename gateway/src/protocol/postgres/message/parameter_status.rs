//! ParameterStatus ('S' from the server): a run-time setting the client should know.

use bytes::BytesMut;

use super::{Cursor, FrameError, backend, frame, put_cstr};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParameterStatus {
    pub name: String,
    pub value: String,
}

impl ParameterStatus {
    pub fn parse(body: &[u8]) -> Result<Self, FrameError> {
        let mut c = Cursor::new(body, "ParameterStatus");
        let name = c.cstr()?.to_string();
        let value = c.cstr()?.to_string();
        c.finish()?;
        Ok(Self { name, value })
    }

    pub fn encode(&self, out: &mut BytesMut) {
        frame(out, backend::PARAMETER_STATUS, |b| {
            put_cstr(b, &self.name);
            put_cstr(b, &self.value);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let p = ParameterStatus {
            name: "server_version".into(),
            value: "15.18".into(),
        };
        let mut b = BytesMut::new();
        p.encode(&mut b);
        assert_eq!(ParameterStatus::parse(&b[5..]).unwrap(), p);
    }
}
