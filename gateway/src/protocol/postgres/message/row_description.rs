//! RowDescription ('T'): the columns of the rows that follow, with each column's source table
//! and attribute (what column masking resolves through) and format.

use bytes::{BufMut, BytesMut};

use super::{Cursor, FrameError, backend, frame, put_cstr};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    /// OID of the table the column comes from, 0 for computed columns.
    pub table_oid: u32,
    /// Attribute number in that table, 0 for computed columns.
    pub column: i16,
    pub type_oid: u32,
    pub type_size: i16,
    pub type_modifier: i32,
    /// 0 text, 1 binary.
    pub format: i16,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RowDescription {
    pub fields: Vec<Field>,
}

impl RowDescription {
    pub fn parse(body: &[u8]) -> Result<Self, FrameError> {
        let mut c = Cursor::new(body, "RowDescription");
        let n = c.count()?;
        let mut fields = Vec::with_capacity(n.min(1664));
        for _ in 0..n {
            fields.push(Field {
                name: c.cstr()?.to_string(),
                table_oid: c.i32()? as u32,
                column: c.i16()?,
                type_oid: c.i32()? as u32,
                type_size: c.i16()?,
                type_modifier: c.i32()?,
                format: c.i16()?,
            });
        }
        c.finish()?;
        Ok(Self { fields })
    }

    pub fn encode(&self, out: &mut BytesMut) {
        frame(out, backend::ROW_DESCRIPTION, |b| {
            b.put_i16(self.fields.len() as i16);
            for f in &self.fields {
                put_cstr(b, &f.name);
                b.put_u32(f.table_oid);
                b.put_i16(f.column);
                b.put_u32(f.type_oid);
                b.put_i16(f.type_size);
                b.put_i32(f.type_modifier);
                b.put_i16(f.format);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let r = RowDescription {
            fields: vec![
                Field {
                    name: "email".into(),
                    table_oid: 16384,
                    column: 2,
                    type_oid: 25,
                    type_size: -1,
                    type_modifier: -1,
                    format: 0,
                },
                Field {
                    name: "?column?".into(),
                    table_oid: 0,
                    column: 0,
                    type_oid: 23,
                    type_size: 4,
                    type_modifier: -1,
                    format: 1,
                },
            ],
        };
        let mut b = BytesMut::new();
        r.encode(&mut b);
        assert_eq!(RowDescription::parse(&b[5..]).unwrap(), r);
        assert!(RowDescription::parse(&b[5..b.len() - 1]).is_err());
    }
}
