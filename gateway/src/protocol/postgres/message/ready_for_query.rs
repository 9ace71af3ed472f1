//! ReadyForQuery ('Z'): the end of a response cycle, with the transaction status.

use bytes::{BufMut, BytesMut};

use super::{Cursor, FrameError, backend, frame};

/// Transaction status after a response cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransactionStatus {
    Idle,
    InTransaction,
    Failed,
}

impl TransactionStatus {
    pub fn parse(body: &[u8]) -> Result<Self, FrameError> {
        let mut c = Cursor::new(body, "ReadyForQuery");
        let s = match c.u8()? {
            b'I' => Self::Idle,
            b'T' => Self::InTransaction,
            b'E' => Self::Failed,
            _ => return Err(FrameError::malformed("ReadyForQuery", "unknown status")),
        };
        c.finish()?;
        Ok(s)
    }

    pub fn encode(self, out: &mut BytesMut) {
        frame(out, backend::READY_FOR_QUERY, |b| {
            b.put_u8(match self {
                Self::Idle => b'I',
                Self::InTransaction => b'T',
                Self::Failed => b'E',
            })
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for s in [
            TransactionStatus::Idle,
            TransactionStatus::InTransaction,
            TransactionStatus::Failed,
        ] {
            let mut b = BytesMut::new();
            s.encode(&mut b);
            assert_eq!(TransactionStatus::parse(&b[5..]).unwrap(), s);
        }
        assert!(TransactionStatus::parse(b"X").is_err());
    }
}
