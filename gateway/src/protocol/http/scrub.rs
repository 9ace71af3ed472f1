//! The Connection's credential kept out of responses: an upstream that reflects what it was sent
//! (a debug echo, an error page, a callback URL) must not hand it to the agent. Found however the
//! upstream wrote it back (see [`SecretFinder`]), and overwritten as the body streams.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::body::{Body, BodyError};
use super::response::{Rewrite, Rewritten};
use crate::masking::secret::SecretFinder;

/// Overwrites every reflection of the Connection's credential in a response body as it streams.
/// Holds back only a chunk's end that could begin a reflection, so one split across chunks is
/// still found and nothing else is delayed.
pub struct Scrubber {
    finders: Arc<SecretFinder>,
    held: BytesMut,
}

/// `inner` with every reflection `finders` search for scrubbed.
pub fn scrubbed(inner: Body, finders: Arc<SecretFinder>) -> Rewritten<Scrubber> {
    Rewritten::new(
        inner,
        Scrubber {
            finders,
            held: BytesMut::new(),
        },
    )
}

impl Rewrite for Scrubber {
    fn chunk(&mut self, data: Bytes) -> Result<Option<Bytes>, BodyError> {
        self.held.extend_from_slice(&data);
        let mut buf = std::mem::take(&mut self.held);
        let (_, safe) = self.finders.overwrite_until(&mut buf, false);
        self.held = buf.split_off(safe);
        Ok((!buf.is_empty()).then(|| buf.freeze()))
    }

    fn end(&mut self) -> Result<Option<Bytes>, BodyError> {
        let mut rest = std::mem::take(&mut self.held);
        self.finders.overwrite(&mut rest);
        Ok((!rest.is_empty()).then(|| rest.freeze()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::masking::secret::tests::{SECRETS, finders, random_body};
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::Frame;

    #[tokio::test]
    async fn a_reflected_credential_is_overwritten_even_across_chunks() {
        let secret = b"00CANARY-secret";
        let chunks: Vec<Result<Frame<Bytes>, BodyError>> = [
            "{\"auth\":\"SSWS 00CAN",
            "ARY-secret\",\"again\":\"00CANARY-secret\"}",
        ]
        .into_iter()
        .map(|c| Ok(Frame::data(Bytes::from(c))))
        .collect();
        let body: Body = StreamBody::new(futures_util::stream::iter(chunks)).boxed();
        let out = scrubbed(body, finders(&[secret]))
            .collect()
            .await
            .unwrap()
            .to_bytes();
        let text = std::str::from_utf8(&out).unwrap();
        assert_eq!(
            text,
            "{\"auth\":\"SSWS ***************\",\"again\":\"***************\"}"
        );
        assert!(SecretFinder::new(&[b"short"]).is_none());
    }

    /// However the upstream splits a body into chunks, the scrubbed stream is the scrubbed whole
    /// body, and never shows the credential; credentials that overlap themselves, and escapes
    /// split anywhere, included.
    #[tokio::test]
    async fn chunking_never_changes_what_is_scrubbed() {
        let mut rng = crate::mutate::Mutator::new(5);
        for secret in SECRETS {
            let f = finders(&[secret]);
            for _ in 0..300 * crate::mutate::scale() {
                let body = random_body(&mut rng, secret);
                let mut whole = body.clone();
                f.overwrite(&mut whole);
                let mut chunks = Vec::new();
                let mut rest = &body[..];
                while !rest.is_empty() {
                    let n = 1 + rng.below(rest.len().min(12));
                    chunks.push(Ok(Frame::data(Bytes::copy_from_slice(&rest[..n]))));
                    rest = &rest[n..];
                }
                let stream: Body = StreamBody::new(futures_util::stream::iter(chunks)).boxed();
                let out = scrubbed(stream, f.clone()).collect().await.unwrap().to_bytes();
                assert_eq!(&out[..], &whole[..], "{}", String::from_utf8_lossy(&body));
                assert!(!f.found_in(&out), "{}", String::from_utf8_lossy(&body));
            }
        }
    }
}
