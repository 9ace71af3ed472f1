//! Close ('C' from the client): drops a prepared statement or portal. Same shape as Describe.

pub use super::describe::Target as Close;

#[cfg(test)]
mod tests {
    use super::super::frontend;
    use super::*;
    use bytes::BytesMut;

    #[test]
    fn round_trip() {
        let c = Close::Statement("s9".into());
        let mut b = BytesMut::new();
        c.encode(frontend::CLOSE, &mut b);
        assert_eq!(b[0], b'C');
        assert_eq!(Close::parse(&b[5..], "Close").unwrap(), c);
    }
}
