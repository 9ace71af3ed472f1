//! ErrorResponse ('E') and NoticeResponse ('N'): typed fields (severity, SQLSTATE, message, ...).

use bytes::{BufMut, BytesMut};

use super::{Cursor, FrameError, backend, frame, put_cstr};

/// SQLSTATE codes the gateway itself sends.
pub mod sqlstate {
    /// A statement a policy denies, or that the gateway refuses.
    pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
    /// A statement that does not parse.
    pub const SYNTAX_ERROR: &str = "42601";
    /// Bad token, or a startup the gateway refuses.
    pub const INVALID_AUTHORIZATION: &str = "28000";
    pub const INVALID_PASSWORD: &str = "28P01";
    /// The upstream database cannot be reached or failed.
    pub const CONNECTION_FAILURE: &str = "08006";
    pub const CONNECTION_REJECTED: &str = "08004";
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    /// A row cap was reached.
    pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
    pub const INVALID_CATALOG_NAME: &str = "3D000";
    pub const INTERNAL_ERROR: &str = "XX000";
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    pub const QUERY_CANCELED: &str = "57014";
    pub const INVALID_SQL_STATEMENT_NAME: &str = "26000";
    pub const INVALID_CURSOR_NAME: &str = "34000";
    pub const IN_FAILED_TRANSACTION: &str = "25P02";
}

/// An error or notice, as (field code, value) pairs in wire order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorResponse {
    pub fields: Vec<(u8, String)>,
}

impl ErrorResponse {
    /// A gateway error: severity ERROR, the SQLSTATE, message and optional detail and hint.
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self {
            fields: vec![
                (b'S', "ERROR".into()),
                (b'V', "ERROR".into()),
                (b'C', code.into()),
                (b'M', message.into()),
            ],
        }
    }

    /// The same with severity FATAL (the connection closes after it).
    pub fn fatal(code: &str, message: impl Into<String>) -> Self {
        let mut e = Self::new(code, message);
        e.fields[0].1 = "FATAL".into();
        e.fields[1].1 = "FATAL".into();
        e
    }

    pub fn with(mut self, field: u8, value: impl Into<String>) -> Self {
        self.fields.push((field, value.into()));
        self
    }

    pub fn field(&self, code: u8) -> Option<&str> {
        self.fields
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, v)| v.as_str())
    }

    pub fn code(&self) -> Option<&str> {
        self.field(b'C')
    }

    pub fn message(&self) -> Option<&str> {
        self.field(b'M')
    }

    pub fn parse(body: &[u8]) -> Result<Self, FrameError> {
        let mut c = Cursor::new(body, "ErrorResponse");
        let mut fields = Vec::new();
        loop {
            let code = c.u8()?;
            if code == 0 {
                break;
            }
            fields.push((code, c.cstr_lossy()?));
        }
        c.finish()?;
        Ok(Self { fields })
    }

    /// Encodes as ErrorResponse.
    pub fn encode(&self, out: &mut BytesMut) {
        self.encode_as(backend::ERROR_RESPONSE, out);
    }

    /// Encodes as NoticeResponse.
    pub fn encode_notice(&self, out: &mut BytesMut) {
        self.encode_as(backend::NOTICE_RESPONSE, out);
    }

    fn encode_as(&self, tag: u8, out: &mut BytesMut) {
        frame(out, tag, |b| {
            for (code, value) in &self.fields {
                b.put_u8(*code);
                // A value with NUL would end the field early and desynchronise the client.
                put_cstr(b, &value.replace('\0', " "));
            }
            b.put_u8(0);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let e = ErrorResponse::new(sqlstate::INSUFFICIENT_PRIVILEGE, "denied").with(b'D', "by rule x");
        let mut b = BytesMut::new();
        e.encode(&mut b);
        assert_eq!(b[0], b'E');
        let back = ErrorResponse::parse(&b[5..]).unwrap();
        assert_eq!(back, e);
        assert_eq!(back.code(), Some("42501"));
        assert_eq!(back.field(b'D'), Some("by rule x"));
        assert!(ErrorResponse::parse(b"Mno terminator").is_err());
        // A SQL_ASCII database quotes stored Latin-1 bytes in its messages as they are.
        let latin1 = ErrorResponse::parse(b"SERROR\0C22P02\0Minvalid input: \"caf\xe9\"\0\0").unwrap();
        assert_eq!(latin1.message(), Some("invalid input: \"caf\u{fffd}\""));
        assert_eq!(latin1.code(), Some("22P02"));
        let f = ErrorResponse::fatal("28000", "bad");
        assert_eq!(f.field(b'S'), Some("FATAL"));
    }
}
