//! CancelRequest routing. Clients get a gateway-issued (pid, secret) per session; a CancelRequest
//! is honoured only when both match a live session, and is then sent to that session's upstream
//! backend with the upstream's own key. Upstream keys never reach clients, so a client cannot
//! cancel another client's queries, and cancels are never forwarded blindly.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::protocol::approval::Abandon;
use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::message::backend_key_data::BackendKeyData;
use super::message::startup::StartupPacket;

/// How long a cancel may take to reach the upstream.
pub const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a session's cancels go.
#[derive(Clone, Copy, Debug)]
pub struct CancelTarget {
    pub upstream: SocketAddr,
    pub key: BackendKeyData,
}

/// A live session's cancel key, where its cancels go, and whom they wake.
type Entry = (i32, CancelTarget, Arc<Abandon>);

/// Live sessions by their gateway-issued key.
#[derive(Debug, Default)]
pub struct CancelRegistry {
    sessions: Mutex<HashMap<i32, Entry>>,
}

/// Removes the session's key when the session ends.
#[derive(Debug)]
pub struct Registration {
    registry: Arc<CancelRegistry>,
    pub key: BackendKeyData,
    /// Told of each cancel of the session: a statement the gateway holds (for an approval) is
    /// one the upstream cannot cancel.
    pub abandon: Arc<Abandon>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.key.pid);
    }
}

impl CancelRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i32, Entry>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Issues a fresh random key for a session whose upstream is `target`.
    pub fn register(self: &Arc<Self>, target: CancelTarget) -> Registration {
        let mut sessions = self.lock();
        loop {
            let mut raw = [0u8; 8];
            if aws_lc_rs::rand::fill(&mut raw).is_err() {
                continue;
            }
            let pid = i32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]) & i32::MAX;
            let secret = i32::from_be_bytes([raw[4], raw[5], raw[6], raw[7]]);
            if pid == 0 || sessions.contains_key(&pid) {
                continue;
            }
            let abandon = Arc::new(Abandon::default());
            sessions.insert(pid, (secret, target, abandon.clone()));
            return Registration {
                registry: self.clone(),
                key: BackendKeyData { pid, secret },
                abandon,
            };
        }
    }

    /// The upstream target of a client's CancelRequest, if the key is a live session's; the
    /// session's waits for approval are woken.
    pub fn cancel(&self, pid: i32, secret: i32) -> Option<CancelTarget> {
        let sessions = self.lock();
        let (s, target, abandon) = sessions.get(&pid)?;
        // Both halves must match; a wrong secret reveals nothing and cancels nothing.
        (*s == secret).then(|| {
            abandon.cancel();
            *target
        })
    }
}

/// Sends a CancelRequest to the upstream (plaintext, as PostgreSQL accepts it before TLS).
pub async fn send(target: CancelTarget) -> std::io::Result<()> {
    let mut packet = BytesMut::new();
    StartupPacket::Cancel {
        pid: target.key.pid,
        secret: target.key.secret,
    }
    .encode(&mut packet);
    let mut s = tokio::time::timeout(CANCEL_TIMEOUT, TcpStream::connect(target.upstream))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    s.write_all(&packet).await?;
    s.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_route_only_with_both_halves_and_die_with_the_session() {
        let reg = Arc::new(CancelRegistry::default());
        let target = CancelTarget {
            upstream: "127.0.0.1:5432".parse().unwrap(),
            key: BackendKeyData { pid: 7, secret: 8 },
        };
        let a = reg.register(target);
        let b = reg.register(target);
        assert_ne!(a.key.pid, b.key.pid);
        assert!(reg.cancel(a.key.pid, a.key.secret).is_some());
        assert!(reg.cancel(a.key.pid, a.key.secret.wrapping_add(1)).is_none());
        // The upstream's own key is not a gateway key.
        assert!(reg.cancel(7, 8).is_none());
        // A cancel wakes what the session holds; a wrong secret wakes nothing.
        let abandon = a.abandon.clone();
        let woken = abandon.wait();
        tokio::pin!(woken);
        assert!(reg.cancel(a.key.pid, a.key.secret.wrapping_add(1)).is_none());
        assert!(futures_util::FutureExt::now_or_never(woken.as_mut()).is_none());
        assert!(reg.cancel(a.key.pid, a.key.secret).is_some());
        assert!(futures_util::FutureExt::now_or_never(woken).is_some());
        // A client that left ends every wait, later ones too.
        let left = Abandon::default();
        left.leave();
        assert!(futures_util::FutureExt::now_or_never(left.wait()).is_some());
        let pid = a.key.pid;
        drop(a);
        assert!(reg.cancel(pid, 0).is_none());
    }
}
