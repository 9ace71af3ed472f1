//! DataRow ('D' from the server): one result row, each value NULL or bytes in its column's format.

use bytes::{BufMut, BytesMut};

use super::{Cursor, FrameError, backend, frame};

/// Borrowed view of a DataRow body: the values as ranges into it.
#[derive(Debug)]
pub struct DataRow<'a> {
    pub values: Vec<Option<&'a [u8]>>,
}

impl<'a> DataRow<'a> {
    pub fn parse(body: &'a [u8]) -> Result<Self, FrameError> {
        let mut c = Cursor::new(body, "DataRow");
        let n = c.count()?;
        let mut values = Vec::with_capacity(n.min(1664));
        for _ in 0..n {
            let len = c.i32()?;
            values.push(if len < 0 {
                None
            } else {
                Some(c.bytes(len as usize)?)
            });
        }
        c.finish()?;
        Ok(Self { values })
    }
}

/// Checks a DataRow body's structure without collecting its values; returns the column count.
pub fn validate(body: &[u8]) -> Result<usize, FrameError> {
    let mut c = Cursor::new(body, "DataRow");
    let n = c.count()?;
    for _ in 0..n {
        let len = c.i32()?;
        if len >= 0 {
            c.bytes(len as usize)?;
        }
    }
    c.finish()?;
    Ok(n)
}

/// Encodes a row from owned or borrowed values.
pub fn encode<V: AsRef<[u8]>>(out: &mut BytesMut, values: &[Option<V>]) {
    frame(out, backend::DATA_ROW, |b| {
        b.put_i16(values.len() as i16);
        for v in values {
            match v {
                None => b.put_i32(-1),
                Some(v) => {
                    let v = v.as_ref();
                    b.put_i32(v.len() as i32);
                    b.put_slice(v);
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let values: Vec<Option<&[u8]>> = vec![Some(b"1"), None, Some(b"")];
        let mut b = BytesMut::new();
        encode(&mut b, &values);
        let row = DataRow::parse(&b[5..]).unwrap();
        assert_eq!(row.values, values);
        assert!(DataRow::parse(&b[5..b.len() - 1]).is_err());
        assert_eq!(validate(&b[5..]).unwrap(), 3);
        assert!(validate(&b[5..b.len() - 1]).is_err());
    }
}
