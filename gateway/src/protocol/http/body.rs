//! The one body type the proxy hands hyper: boxed, so upstream streams, buffered (masked)
//! bodies and gateway-made problem documents share a type.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};

/// Errors a body stream can end with.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// The proxy's body type.
pub type Body = BoxBody<Bytes, BodyError>;

/// A complete body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

/// An empty body.
pub fn empty() -> Body {
    full(Bytes::new())
}

/// Frames a body read whole (to mask it) is sent in. hyper asks for a body's next frame once it
/// has written the last, so the client's reading paces them; one frame of the whole body would
/// be taken at once, and the body (with its share of the masking budget) dropped before a byte
/// reached a client that never reads.
pub const WHOLE_BODY_FRAME: usize = 64 * 1024;

/// `bytes` as a body of [`WHOLE_BODY_FRAME`] frames that keeps `held` (a budget share) until
/// the body is done or dropped.
pub fn paced<T: Send + Sync + 'static>(bytes: Bytes, held: T) -> Body {
    let len = bytes.len();
    let frames = (0..len).step_by(WHOLE_BODY_FRAME).map(move |at| {
        let end = (at + WHOLE_BODY_FRAME).min(len);
        Ok::<_, BodyError>(hyper::body::Frame::data(bytes.slice(at..end)))
    });
    http_body_util::StreamBody::new(futures_util::stream::iter(frames))
        .map_frame(move |frame| {
            let _ = &held;
            frame
        })
        .boxed()
}

/// `body`, ended with an error at its first frame once `expires_at` (Unix seconds) has passed:
/// a watch or a followed log streams for as long as the client keeps it, but what a token was
/// verified for is read only while it is valid (a PostgreSQL session ends then too). A client
/// then sees the response cut, as an upstream failing mid-body.
pub fn until_expiry(body: Body, expires_at: i64) -> Body {
    UntilExpiry {
        inner: body,
        expires_at,
    }
    .boxed()
}

struct UntilExpiry {
    inner: Body,
    expires_at: i64,
}

/// Why a response stopped: the token it was asked with expired.
#[derive(Debug)]
pub struct TokenExpired;

impl std::fmt::Display for TokenExpired {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the token the request was made with expired while its response was streaming")
    }
}

impl std::error::Error for TokenExpired {}

impl hyper::body::Body for UntilExpiry {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BodyError>>> {
        let polled = std::task::ready!(std::pin::Pin::new(&mut self.inner).poll_frame(cx));
        if matches!(polled, Some(Ok(_))) && crate::approval::time::unix_now() >= self.expires_at {
            return std::task::Poll::Ready(Some(Err(Box::new(TokenExpired))));
        }
        std::task::Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames pass while the token is valid; the first one after it expires ends the body
    /// with an error instead.
    #[tokio::test]
    async fn bodies_end_when_the_token_expires() {
        let now = crate::approval::time::unix_now();
        let mut valid = until_expiry(full("still valid"), now + 60);
        let frame = valid.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "still valid");
        assert!(valid.frame().await.is_none());
        let mut expired = until_expiry(full("too late"), now);
        let err = expired.frame().await.unwrap().unwrap_err();
        assert!(err.is::<TokenExpired>(), "{err}");
        assert!(err.to_string().contains("expired"));
    }

    /// A whole body goes in bounded frames, all of it, and what it holds stays until its end.
    #[tokio::test]
    async fn paced_bodies_are_sent_in_bounded_frames_holding_their_share() {
        let bytes = Bytes::from(vec![7u8; 3 * WHOLE_BODY_FRAME + 5]);
        let share = std::sync::Arc::new(());
        let mut body = paced(bytes.clone(), share.clone());
        let mut sizes = Vec::new();
        while let Some(frame) = body.frame().await {
            let data = frame.unwrap().into_data().unwrap();
            sizes.push(data.len());
            assert_eq!(
                std::sync::Arc::strong_count(&share),
                2,
                "held while frames remain"
            );
        }
        assert_eq!(sizes, [WHOLE_BODY_FRAME, WHOLE_BODY_FRAME, WHOLE_BODY_FRAME, 5]);
        drop(body);
        assert_eq!(std::sync::Arc::strong_count(&share), 1);
        let mut empty = paced(Bytes::new(), ());
        assert!(empty.frame().await.is_none());
    }
}
