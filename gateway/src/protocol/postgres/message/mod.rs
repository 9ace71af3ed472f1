//! PostgreSQL protocol 3.0 messages, one module per message, each with `parse` (from a frame body)
//! and `encode` (to a whole frame) and a round-trip test. Frames are read with a length cap so a
//! peer cannot make the gateway buffer unbounded data.

pub mod authentication;
pub mod backend_key_data;
pub mod bind;
pub mod close;
pub mod command_complete;
pub mod data_row;
pub mod describe;
pub mod error_response;
pub mod execute;
pub mod notification;
pub mod parameter_description;
pub mod parameter_status;
pub mod parse;
pub mod query;
pub mod ready_for_query;
pub mod row_description;
pub mod startup;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest message body accepted from either side. PostgreSQL's own limit for client messages is
/// 1 GiB; the gateway holds whole messages in memory (to decide, mask and record them), so it
/// allows less.
pub const MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;
/// Longest prepared-statement or portal name accepted. PostgreSQL keys both tables on the first
/// `NAMEDATALEN - 1` bytes, so two longer names that share them are one object to the server and
/// two to the gateway, which would decide one statement's text and run the other's.
pub const MAX_NAME_BYTES: usize = 63;
/// Most buffer grown ahead of the bytes of one large message.
const RESERVE_STEP_BYTES: usize = 1024 * 1024;
/// Largest startup packet (PostgreSQL's MAX_STARTUP_PACKET_LENGTH).
pub const MAX_STARTUP_BYTES: usize = 10_000;
/// Most bytes one read takes while no partial message is buffered; a partial one grows the
/// buffer by this much at a time (and by what its length asks, see [`RESERVE_STEP_BYTES`]).
pub const READ_BUFFER_BYTES: usize = 4 * 1024;

/// Frontend message tags.
pub mod frontend {
    pub const QUERY: u8 = b'Q';
    pub const PARSE: u8 = b'P';
    pub const BIND: u8 = b'B';
    pub const DESCRIBE: u8 = b'D';
    pub const EXECUTE: u8 = b'E';
    pub const CLOSE: u8 = b'C';
    pub const SYNC: u8 = b'S';
    pub const FLUSH: u8 = b'H';
    pub const TERMINATE: u8 = b'X';
    pub const FUNCTION_CALL: u8 = b'F';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    pub const COPY_FAIL: u8 = b'f';
    pub const PASSWORD: u8 = b'p';
}

/// Backend message tags.
pub mod backend {
    pub const AUTHENTICATION: u8 = b'R';
    pub const BACKEND_KEY_DATA: u8 = b'K';
    pub const PARAMETER_STATUS: u8 = b'S';
    pub const READY_FOR_QUERY: u8 = b'Z';
    pub const ROW_DESCRIPTION: u8 = b'T';
    pub const DATA_ROW: u8 = b'D';
    pub const COMMAND_COMPLETE: u8 = b'C';
    pub const EMPTY_QUERY: u8 = b'I';
    pub const ERROR_RESPONSE: u8 = b'E';
    pub const NOTICE_RESPONSE: u8 = b'N';
    pub const PARSE_COMPLETE: u8 = b'1';
    pub const BIND_COMPLETE: u8 = b'2';
    pub const CLOSE_COMPLETE: u8 = b'3';
    pub const NO_DATA: u8 = b'n';
    pub const PORTAL_SUSPENDED: u8 = b's';
    pub const PARAMETER_DESCRIPTION: u8 = b't';
    pub const COPY_IN: u8 = b'G';
    pub const COPY_OUT: u8 = b'H';
    pub const COPY_BOTH: u8 = b'W';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    pub const NOTIFICATION: u8 = b'A';
    pub const FUNCTION_CALL_RESPONSE: u8 = b'V';
    pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
}

/// What can go wrong reading or decoding a message.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection closed")]
    Closed,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("message length {0} is below the minimum of 4")]
    TooShort(i32),
    #[error("message length {len} exceeds the gateway's limit of {limit} bytes")]
    TooLong { len: usize, limit: usize },
    #[error("malformed {what} message: {problem}")]
    Malformed {
        what: &'static str,
        problem: &'static str,
    },
}

impl FrameError {
    pub fn malformed(what: &'static str, problem: &'static str) -> Self {
        Self::Malformed { what, problem }
    }
}

/// One tagged message: its tag and body (without tag and length).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub tag: u8,
    pub body: Bytes,
}

impl Frame {
    /// The whole message as sent on the wire.
    pub fn encode(&self, out: &mut BytesMut) {
        out.reserve(5 + self.body.len());
        out.put_u8(self.tag);
        out.put_i32((self.body.len() + 4) as i32);
        out.put_slice(&self.body);
    }
}

/// Reads tagged messages from one side, buffering reads.
#[derive(Debug)]
pub struct FrameReader<R> {
    io: R,
    buf: BytesMut,
    /// The largest body accepted now ([`MAX_FRAME_BYTES`] unless lowered).
    limit: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(io: R) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
            limit: MAX_FRAME_BYTES,
        }
    }

    /// Accepts bodies of at most `limit` bytes (at most [`MAX_FRAME_BYTES`]) from now on: before
    /// authentication a client may send only a password message, which need not be large.
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit.min(MAX_FRAME_BYTES);
    }

    /// Bytes already read but not yet returned as frames (0 means a flush point: the peer has
    /// nothing more in flight that we know of).
    /// A reader that starts with bytes already read from `io`.
    pub fn with_buffer(io: R, buf: BytesMut) -> Self {
        Self {
            io,
            buf,
            limit: MAX_FRAME_BYTES,
        }
    }

    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.io
    }

    /// The next whole frame. A clean end of stream between frames is [`FrameError::Closed`].
    pub async fn next(&mut self) -> Result<Frame, FrameError> {
        loop {
            if let Some(frame) = self.try_frame()? {
                return Ok(frame);
            }
            let n = self.fill().await?;
            if n == 0 {
                return Err(if self.buf.is_empty() {
                    FrameError::Closed
                } else {
                    FrameError::Io(std::io::ErrorKind::UnexpectedEof.into())
                });
            }
        }
    }

    /// Reads what the peer sent into the buffer, for [`FrameReader::try_frame`] to take later,
    /// while fewer than `max` bytes are buffered (then it waits for ever): a way to see the
    /// peer leave while its messages wait. The end of stream is [`FrameError::Closed`] (also
    /// after a partial frame: nothing more can come).
    pub async fn read_ahead(&mut self, max: usize) -> Result<(), FrameError> {
        if self.buf.len() >= max {
            return std::future::pending().await;
        }
        match self.fill().await? {
            0 => Err(FrameError::Closed),
            _ => Ok(()),
        }
    }

    /// Reads more into the buffer. With nothing buffered, the read goes through the stack and
    /// the buffer is allocated for what arrived: a reader waiting on an idle peer holds no
    /// buffer (an idle PostgreSQL session has two readers; each held 4 to 8 KiB).
    async fn fill(&mut self) -> std::io::Result<usize> {
        if !self.buf.is_empty() {
            if self.buf.capacity() - self.buf.len() < READ_BUFFER_BYTES {
                self.buf.reserve(READ_BUFFER_BYTES);
            }
            return self.io.read_buf(&mut self.buf).await;
        }
        // Frames already returned keep their own references to the old allocation.
        self.buf = BytesMut::new();
        std::future::poll_fn(|cx| {
            let mut stack = [std::mem::MaybeUninit::<u8>::uninit(); READ_BUFFER_BYTES];
            let mut read = tokio::io::ReadBuf::uninit(&mut stack);
            std::task::ready!(std::pin::Pin::new(&mut self.io).poll_read(cx, &mut read))?;
            self.buf.extend_from_slice(read.filled());
            std::task::Poll::Ready(Ok(read.filled().len()))
        })
        .await
    }

    /// A frame if one is wholly buffered.
    pub fn try_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        let len = i32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
        if len < 4 {
            return Err(FrameError::TooShort(len));
        }
        let body_len = len as usize - 4;
        if body_len > self.limit {
            return Err(FrameError::TooLong {
                len: body_len,
                limit: self.limit,
            });
        }
        if self.buf.len() < 5 + body_len {
            // Room for what is declared, a megabyte at a time: memory follows the bytes that
            // arrive, not a length a client merely claims.
            self.buf
                .reserve((5 + body_len - self.buf.len()).min(RESERVE_STEP_BYTES));
            return Ok(None);
        }
        let mut whole = self.buf.split_to(5 + body_len);
        let tag = whole[0];
        let body = whole.split_off(5).freeze();
        Ok(Some(Frame { tag, body }))
    }

    /// Reads an untagged startup-phase packet (length then body), capped at `max`.
    pub async fn startup_packet(&mut self, max: usize) -> Result<Bytes, FrameError> {
        loop {
            if self.buf.len() >= 4 {
                let len = i32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
                if len < 8 {
                    return Err(FrameError::TooShort(len));
                }
                let len = len as usize;
                if len > max {
                    return Err(FrameError::TooLong { len, limit: max });
                }
                if self.buf.len() >= len {
                    let mut whole = self.buf.split_to(len);
                    return Ok(whole.split_off(4).freeze());
                }
            }
            // As frames are read: a whole startup packet in one read, not 64 bytes at a time.
            let n = self.fill().await?;
            if n == 0 {
                return Err(FrameError::Closed);
            }
        }
    }

    /// Hands back the stream and any bytes read past the last frame (used when switching to TLS;
    /// a client that pipelines data after SSLRequest gets it refused).
    pub fn into_parts(self) -> (R, BytesMut) {
        (self.io, self.buf)
    }
}

/// Cursor over a message body with checked reads.
#[derive(Debug)]
pub struct Cursor<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Cursor<'a> {
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Self { buf, what }
    }

    fn short(&self) -> FrameError {
        FrameError::malformed(self.what, "message ends early")
    }

    pub fn u8(&mut self) -> Result<u8, FrameError> {
        let (&b, rest) = self.buf.split_first().ok_or_else(|| self.short())?;
        self.buf = rest;
        Ok(b)
    }

    pub fn i16(&mut self) -> Result<i16, FrameError> {
        let b = self.bytes(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    pub fn i32(&mut self) -> Result<i32, FrameError> {
        let b = self.bytes(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A count field (Int16) that must not be negative.
    pub fn count(&mut self) -> Result<usize, FrameError> {
        usize::try_from(self.i16()?).map_err(|_| FrameError::malformed(self.what, "negative count"))
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.buf.len() < n {
            return Err(self.short());
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// A NUL-terminated string; must be UTF-8.
    pub fn cstr(&mut self) -> Result<&'a str, FrameError> {
        let end = memchr::memchr(0, self.buf)
            .ok_or_else(|| FrameError::malformed(self.what, "unterminated string"))?;
        let s = std::str::from_utf8(&self.buf[..end])
            .map_err(|_| FrameError::malformed(self.what, "string is not UTF-8"))?;
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }

    /// A prepared-statement or portal name: a string of at most [`MAX_NAME_BYTES`].
    pub fn name(&mut self) -> Result<&'a str, FrameError> {
        let s = self.cstr()?;
        if s.len() > MAX_NAME_BYTES {
            return Err(FrameError::malformed(
                self.what,
                "a statement or portal name is longer than 63 bytes (PostgreSQL reads only the first 63)",
            ));
        }
        Ok(s)
    }

    /// A NUL-terminated string of text the server wrote in its own encoding, which need not be
    /// UTF-8 (a `SQL_ASCII` database quotes stored bytes as they are): read with replacement
    /// characters, so the gateway still masks and forwards it rather than ending the session.
    pub fn cstr_lossy(&mut self) -> Result<String, FrameError> {
        let end = memchr::memchr(0, self.buf)
            .ok_or_else(|| FrameError::malformed(self.what, "unterminated string"))?;
        let s = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }

    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Fails unless the whole body was consumed (trailing garbage is a protocol violation).
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(FrameError::malformed(self.what, "trailing bytes"))
        }
    }
}

/// Writes a whole tagged frame whose body `f` appends.
pub fn frame(out: &mut BytesMut, tag: u8, f: impl FnOnce(&mut BytesMut)) {
    out.put_u8(tag);
    let at = out.len();
    out.put_i32(0);
    f(out);
    let len = (out.len() - at) as i32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

pub fn put_cstr(out: &mut BytesMut, s: &str) {
    out.put_slice(s.as_bytes());
    out.put_u8(0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn read_all(bytes: &[u8]) -> Vec<Result<Frame, String>> {
        let mut r = FrameReader::new(bytes);
        let mut out = Vec::new();
        loop {
            match r.next().await {
                Ok(f) => out.push(Ok(f)),
                Err(FrameError::Closed) => return out,
                Err(e) => {
                    out.push(Err(e.to_string()));
                    return out;
                }
            }
        }
    }

    #[tokio::test]
    async fn frames_split_and_hostile_lengths_are_refused() {
        let mut wire = BytesMut::new();
        frame(&mut wire, b'Q', |b| put_cstr(b, "SELECT 1"));
        frame(&mut wire, b'S', |_| {});
        let got = read_all(&wire).await;
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].as_ref().unwrap().body.as_ref(), b"SELECT 1\0");
        assert_eq!(got[1].as_ref().unwrap().tag, b'S');

        for len in [0i32, 3, -1, i32::MIN] {
            let mut bad = vec![b'Q'];
            bad.extend_from_slice(&len.to_be_bytes());
            let got = read_all(&bad).await;
            assert!(
                got[0].as_ref().unwrap_err().contains("below the minimum"),
                "{len}: {got:?}"
            );
        }
        let mut huge = vec![b'Q'];
        huge.extend_from_slice(&i32::MAX.to_be_bytes());
        let got = read_all(&huge).await;
        assert!(got[0].as_ref().unwrap_err().contains("exceeds"), "{got:?}");
        // A frame cut off mid-body is an error, not a clean close.
        let got = read_all(&wire[..wire.len() - 3]).await;
        assert!(got.last().unwrap().is_err());
    }

    #[test]
    fn cursor_refuses_short_and_trailing_data() {
        let mut c = Cursor::new(b"ab", "test");
        assert!(c.cstr().is_err());
        let mut c = Cursor::new(&[0, 1], "test");
        assert!(c.i32().is_err());
        let mut c = Cursor::new(&[0xff, 0xff], "test");
        assert!(c.count().is_err());
        let c = Cursor::new(b"x", "test");
        assert!(c.finish().is_err());
    }

    /// Builds a body from parts: `S` strings get their NUL, `I`/`H` are i32/i16 big-endian.
    enum P<'a> {
        S(&'a str),
        I(i32),
        H(i16),
        B(&'a [u8]),
    }

    fn body(parts: &[P<'_>]) -> Vec<u8> {
        let mut v = Vec::new();
        for p in parts {
            match p {
                P::S(s) => {
                    v.extend_from_slice(s.as_bytes());
                    v.push(0);
                }
                P::I(i) => v.extend_from_slice(&i.to_be_bytes()),
                P::H(h) => v.extend_from_slice(&h.to_be_bytes()),
                P::B(b) => v.extend_from_slice(b),
            }
        }
        v
    }

    #[test]
    fn hostile_message_bodies_are_refused_without_panic() {
        use P::*;
        let seeds: Vec<Vec<u8>> = vec![
            body(&[S("SELECT * FROM t WHERE id = $1")]),
            body(&[S("s1"), S("SELECT $1::int"), H(2), I(23), I(25)]),
            body(&[
                S("p"),
                S("s1"),
                H(2),
                H(0),
                H(1),
                H(2),
                I(2),
                B(b"42"),
                I(-1),
                H(1),
                H(1),
            ]),
            body(&[B(b"S"), S("s1")]),
            body(&[S("p"), I(100)]),
            body(&[
                I(196608),
                S("user"),
                S("agent"),
                S("database"),
                S("db"),
                S("options"),
                S("-c x=y"),
                B(&[0]),
            ]),
            body(&[I(80877102), I(1234), I(5678)]),
            body(&[I(80877103)]),
            body(&[S("token")]),
            body(&[I(10), S("SCRAM-SHA-256"), B(&[0])]),
            body(&[I(11), B(b"r=abc,s=c2FsdA==,i=4096")]),
            body(&[I(5), B(&[1, 2, 3, 4])]),
            body(&[I(42), I(7)]),
            body(&[S("server_version"), S("15.18")]),
            body(&[B(b"T")]),
            body(&[
                H(2),
                S("id"),
                I(100),
                H(1),
                I(23),
                H(4),
                I(-1),
                H(1),
                S("email"),
                I(100),
                H(2),
                I(25),
                H(-1),
                I(-1),
                H(0),
            ]),
            body(&[H(3), I(2), B(b"42"), I(-1), I(3), B(b"a@b")]),
            body(&[S("SELECT 3")]),
            body(&[H(2), I(23), I(3802)]),
            body(&[
                B(b"S"),
                S("ERROR"),
                B(b"C"),
                S("42501"),
                B(b"M"),
                S("denied"),
                B(&[0]),
            ]),
        ];
        let seeds: Vec<&[u8]> = seeds.iter().map(Vec::as_slice).collect();
        crate::mutate::each_mutant(&seeds, 1_500, |b| {
            let bytes = Bytes::copy_from_slice(b);
            let _ = query::Query::parse(b);
            let _ = parse::Parse::parse(b);
            let _ = bind::Bind::parse(&bytes);
            let _ = describe::Target::parse(b, "Describe");
            let _ = execute::Execute::parse(b);
            let _ = parameter_description::ParameterDescription::parse(b);
            let _ = startup::StartupPacket::parse(b);
            let _ = authentication::parse_password(b);
            let _ = authentication::Authentication::parse(b);
            let _ = backend_key_data::BackendKeyData::parse(b);
            let _ = parameter_status::ParameterStatus::parse(b);
            let _ = ready_for_query::TransactionStatus::parse(b);
            let _ = row_description::RowDescription::parse(b);
            let _ = data_row::DataRow::parse(b);
            let _ = data_row::validate(b);
            let _ = command_complete::CommandComplete::parse(b);
            let _ = error_response::ErrorResponse::parse(b);
        });
    }

    #[test]
    fn hostile_streams_give_frames_or_an_error_without_panic() {
        let mut stream = BytesMut::new();
        Frame {
            tag: b'Q',
            body: Bytes::from_static(b"SELECT 1\0"),
        }
        .encode(&mut stream);
        Frame {
            tag: b'S',
            body: Bytes::new(),
        }
        .encode(&mut stream);
        Frame {
            tag: b'X',
            body: Bytes::new(),
        }
        .encode(&mut stream);
        crate::mutate::each_mutant(&[&stream], 3_000, |b| {
            let mut r = FrameReader::with_buffer(&b[..0], BytesMut::from(b));
            // Each frame consumes at least its 5-byte header, so this ends.
            while let Ok(Some(f)) = r.try_frame() {
                assert!(f.body.len() <= MAX_FRAME_BYTES);
            }
        });
    }

    /// Reads a buffer in the pieces given (as TCP may deliver it).
    struct Trickle {
        data: Vec<u8>,
        at: usize,
        sizes: Vec<usize>,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let size = if self.sizes.is_empty() {
                usize::MAX
            } else {
                self.sizes.remove(0)
            };
            let n = size.min(buf.remaining()).min(self.data.len() - self.at);
            let at = self.at;
            buf.put_slice(&self.data[at..at + n]);
            self.at += n;
            std::task::Poll::Ready(Ok(()))
        }
    }

    /// Frames come out the same however the bytes arrive: split anywhere, a byte at a time, a
    /// large message across many reads, several messages in one.
    #[tokio::test]
    async fn frames_are_the_same_for_any_split_of_the_stream() {
        let bodies: [&[u8]; 4] = [b"SELECT 1\0", b"", &[7u8; 5000], b"s1\0SELECT $1\0\0\0"];
        let tags = [b'Q', b'S', b'd', b'P'];
        let mut rng = crate::mutate::Mutator::new(3);
        for _ in 0..300 * crate::mutate::scale() {
            let sent: Vec<Frame> = (0..1 + rng.below(8))
                .map(|_| {
                    let i = rng.below(bodies.len());
                    Frame {
                        tag: tags[i],
                        body: Bytes::copy_from_slice(bodies[i]),
                    }
                })
                .collect();
            let mut wire = BytesMut::new();
            sent.iter().for_each(|f| f.encode(&mut wire));
            let sizes = (0..wire.len())
                .map(|_| {
                    let scale = rng.below(8);
                    1 + rng.below(64 << scale)
                })
                .collect();
            let mut r = FrameReader::new(Trickle {
                data: wire.to_vec(),
                at: 0,
                sizes,
            });
            let mut got = Vec::new();
            loop {
                match r.next().await {
                    Ok(f) => got.push(f),
                    Err(FrameError::Closed) => break,
                    Err(e) => panic!("{e}"),
                }
            }
            assert_eq!(got, sent);
        }
    }

    /// Reading ahead keeps what arrives for `try_frame`, stops asking once `max` is buffered,
    /// and reports the peer's leaving.
    #[tokio::test]
    async fn reading_ahead_keeps_frames_and_sees_the_end() {
        let mut wire = BytesMut::new();
        for body in [&b"SELECT 1\0"[..], b"SELECT 2\0"] {
            Frame {
                tag: b'Q',
                body: Bytes::copy_from_slice(body),
            }
            .encode(&mut wire);
        }
        let mut r = FrameReader::new(Trickle {
            data: wire.to_vec(),
            at: 0,
            sizes: vec![7, 100],
        });
        r.read_ahead(1024).await.unwrap();
        assert_eq!(r.buffered(), 7);
        // Past `max`, nothing is read.
        let more = tokio::time::timeout(std::time::Duration::from_millis(20), r.read_ahead(7));
        assert!(more.await.is_err());
        r.read_ahead(1024).await.unwrap();
        assert_eq!(r.buffered(), wire.len());
        assert!(matches!(r.read_ahead(1024).await, Err(FrameError::Closed)));
        for want in [&b"SELECT 1\0"[..], b"SELECT 2\0"] {
            assert_eq!(r.try_frame().unwrap().unwrap().body, want);
        }
    }

    /// A startup packet that arrives whole is taken in one read (the second read here would
    /// find the stream's end).
    #[tokio::test]
    async fn a_startup_packet_is_taken_in_one_read() {
        let mut packet = vec![0u8; 4];
        packet.extend_from_slice(&196_608i32.to_be_bytes());
        packet.extend_from_slice(b"user\0ci-agent\0database\0shop\0application_name\0a-long-enough-name\0\0");
        let len = i32::try_from(packet.len()).unwrap();
        packet[..4].copy_from_slice(&len.to_be_bytes());
        assert!(packet.len() > 64);
        let mut r = FrameReader::new(Trickle {
            data: packet.clone(),
            at: 0,
            sizes: vec![usize::MAX, 0],
        });
        let body = r.startup_packet(MAX_STARTUP_BYTES).await.unwrap();
        assert_eq!(&body[..], &packet[4..]);
    }

    /// A reader waiting on a quiet peer holds no buffer, however much it read before; the
    /// frames it returned keep their bytes.
    #[tokio::test]
    async fn a_reader_waiting_on_a_quiet_peer_holds_no_buffer() {
        let (mut peer, ours) = tokio::io::duplex(64 * 1024);
        let mut r = FrameReader::new(ours);
        assert_eq!(r.buf.capacity(), 0);
        let mut wire = BytesMut::new();
        let big = Bytes::from(vec![b'x'; 3 * READ_BUFFER_BYTES]);
        for body in [Bytes::from_static(b"SELECT 1\0"), big.clone()] {
            Frame { tag: b'Q', body }.encode(&mut wire);
        }
        // Half of the second frame first: a partial frame is buffered and grown.
        let half = wire.len() - big.len() / 2;
        peer.write_all(&wire[..half]).await.unwrap();
        let first = r.next().await.unwrap();
        assert_eq!(&first.body[..], b"SELECT 1\0");
        let rest = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            peer.write_all(&wire[half..]).await.unwrap();
            peer
        });
        let second = r.next().await.unwrap();
        assert_eq!(second.body, big);
        let _peer = rest.await.unwrap();
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(20), r.next());
        assert!(waiting.await.is_err(), "the peer sent nothing more");
        assert_eq!(r.buf.capacity(), 0, "an idle reader keeps no buffer");
        assert_eq!(&first.body[..], b"SELECT 1\0");
        assert_eq!(second.body, big);
    }
}
