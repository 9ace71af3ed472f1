//! Leader election on a `coordination.k8s.io/v1` Lease, the way client-go's leaderelection does it:
//! the holder renews `renewTime` every [`RENEW_EVERY`]; another replica takes the Lease only after
//! [`LEASE_DURATION`] without a renewal. Writes carry the resourceVersion they read, so two replicas
//! racing for an expired Lease cannot both win (the loser gets 409 Conflict). "Without a renewal"
//! is measured on this replica's own clock, from when it last saw the Lease change: `renewTime`
//! is the holder's clock, and a standby whose clock ran ahead would take a Lease being renewed.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;

use crate::Error;

/// How long a Lease stays held without renewal.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the holder renews.
pub const RENEW_EVERY: Duration = Duration::from_secs(5);
/// How often a standby replica tries to take the Lease.
pub const RETRY_EVERY: Duration = Duration::from_secs(2);

/// One replica's view of the Lease.
#[derive(Clone)]
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    /// The other holder's Lease as last seen (holder, renewTime, resourceVersion), and when, by
    /// this replica's monotonic clock.
    seen: std::sync::Arc<std::sync::Mutex<Option<(String, tokio::time::Instant)>>>,
}

/// How long the holder may go without a successful renewal before it stops leading: less than
/// [`LEASE_DURATION`], so it stops before any other replica can take the Lease.
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
const _: () = assert!(RENEW_DEADLINE.as_secs() + RETRY_EVERY.as_secs() < LEASE_DURATION.as_secs());

/// The holder's renewal cadence.
#[derive(Clone, Copy, Debug)]
struct Renewal {
    every: Duration,
    retry: Duration,
    deadline: Duration,
}

const RENEWAL: Renewal = Renewal {
    every: RENEW_EVERY,
    retry: RETRY_EVERY,
    deadline: RENEW_DEADLINE,
};

/// Renews through `renew` every [`RENEW_EVERY`] (after a failure, every [`RETRY_EVERY`]) until this
/// replica can no longer be sure it holds the Lease. The clock runs from when the last successful
/// renewal was *sent* (the `renewTime` it wrote is taken then), and each attempt is cut off at
/// [`RENEW_DEADLINE`]: a request that hangs in the network must not keep this replica
/// reconciling after another may have taken over.
async fn keep_renewing<F, Fut>(
    name: &str,
    held_since: tokio::time::Instant,
    timing: Renewal,
    mut renew: F,
) -> Error
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, Error>>,
{
    let mut last_renewal = held_since;
    let mut next = held_since + timing.every;
    loop {
        tokio::time::sleep_until(next).await;
        let deadline = last_renewal + timing.deadline;
        let sent = tokio::time::Instant::now();
        match tokio::time::timeout_at(deadline, renew()).await {
            Ok(Ok(true)) => {
                last_renewal = sent;
                next = sent + timing.every;
            }
            Ok(Ok(false)) => return Error::LostLease(name.to_string()),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "renewing the leader Lease failed");
                next = tokio::time::Instant::now() + timing.retry;
                if next >= deadline {
                    return Error::LostLease(name.to_string());
                }
            }
            Err(_) => {
                tracing::warn!("renewing the leader Lease did not finish before its deadline");
                return Error::LostLease(name.to_string());
            }
        }
    }
}

impl std::fmt::Debug for Elector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Elector")
            .field("name", &self.name)
            .field("identity", &self.identity)
            .finish()
    }
}

impl Elector {
    /// An elector for Lease `name` in `namespace`, as `identity` (the pod name).
    pub fn new(client: kube::Client, namespace: &str, name: &str, identity: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            identity: identity.to_string(),
            seen: Default::default(),
        }
    }

    /// Waits until this replica holds the Lease; returns when the winning write was sent, which is
    /// when the Lease's hold began for every other replica.
    pub async fn acquire(&self) -> Result<tokio::time::Instant, Error> {
        let mut logged = false;
        loop {
            let sent = tokio::time::Instant::now();
            match self.try_acquire().await {
                Ok(true) => {
                    tracing::info!(lease = %self.name, identity = %self.identity, "became leader");
                    return Ok(sent);
                }
                Ok(false) if !logged => {
                    tracing::info!(lease = %self.name, "another replica leads; standing by");
                    logged = true;
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "leader election attempt failed"),
            }
            tokio::time::sleep(RETRY_EVERY).await;
        }
    }

    /// Renews the Lease until a renewal fails for longer than the Lease lasts; then returns the
    /// error (the caller stops reconciling at once, before another replica may take over).
    /// `held_since` is what [`Elector::acquire`] returned.
    pub async fn keep(&self, held_since: tokio::time::Instant) -> Error {
        keep_renewing(&self.name, held_since, RENEWAL, || self.try_acquire()).await
    }

    /// Takes or renews the Lease if it is free, expired or ours. `Ok(false)`: someone else holds it.
    pub async fn try_acquire(&self) -> Result<bool, Error> {
        let now = Timestamp::now();
        let existing = self.api.get_opt(&self.name).await?;
        let Some(mut lease) = existing else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(now, 0, Some(now))),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e.into()),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let ours = holder == self.identity;
        let duration = i64::from(
            spec.lease_duration_seconds
                .unwrap_or(LEASE_DURATION.as_secs() as i32),
        );
        let record = format!(
            "{holder}\n{:?}\n{}",
            spec.renew_time.as_ref().map(|t| t.0),
            lease.metadata.resource_version.as_deref().unwrap_or_default()
        );
        let expired = spec.renew_time.is_none() || {
            let mut seen = self
                .seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let local = tokio::time::Instant::now();
            let since = match &*seen {
                Some((last, at)) if *last == record => *at,
                _ => {
                    *seen = Some((record, local));
                    local
                }
            };
            local.duration_since(since) > Duration::from_secs(u64::try_from(duration).unwrap_or(0))
        };
        if !ours && !holder.is_empty() && !expired {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!ours);
        let acquired = if ours {
            spec.acquire_time.map(|t| t.0)
        } else {
            Some(now)
        };
        lease.spec = Some(self.spec(now, transitions, acquired));
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    fn spec(&self, now: Timestamp, transitions: i32, acquired: Option<Timestamp>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
            acquire_time: acquired.map(MicroTime),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::time::Instant;

    /// The real cadence scaled down ten times.
    const FAST: Renewal = Renewal {
        every: Duration::from_millis(500),
        retry: Duration::from_millis(200),
        deadline: Duration::from_millis(1000),
    };

    fn refused() -> Error {
        Error::LostLease("test: the API server refused".into())
    }

    fn about(elapsed: Duration, expected: Duration) -> bool {
        // Timers fire late on a loaded machine, never early. A second of slack still tells the
        // slow acquisition's deadline (1 s after the write) from one counted from keep's start
        // (2.4 s).
        elapsed >= expected && elapsed < expected + Duration::from_millis(1000)
    }

    #[tokio::test]
    async fn a_renewal_that_hangs_gives_up_the_lead_at_the_renew_deadline() {
        let start = Instant::now();
        let calls = AtomicUsize::new(0);
        let e = keep_renewing("lead", start, FAST, || {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    Ok(true)
                } else {
                    // The second renewal's request never answers.
                    std::future::pending().await
                }
            }
        })
        .await;
        assert!(matches!(e, Error::LostLease(ref n) if n == "lead"), "{e:?}");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // The first renewal was sent after `every`; the lead ends `deadline` after it, before
        // the Lease it wrote runs out.
        let elapsed = start.elapsed();
        assert!(about(elapsed, FAST.every + FAST.deadline), "{elapsed:?}");
    }

    #[tokio::test]
    async fn failing_renewals_are_retried_until_the_deadline() {
        let start = Instant::now();
        let calls = AtomicUsize::new(0);
        let e = keep_renewing("lead", start, FAST, || {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err(refused()) }
        })
        .await;
        assert!(matches!(e, Error::LostLease(ref n) if n == "lead"), "{e:?}");
        // At 500, 700 and 900 ms; a fourth at 1,100 ms would be past the deadline.
        assert!(calls.load(Ordering::SeqCst) >= 2);
        assert!(
            start.elapsed() < FAST.deadline + Duration::from_millis(1000),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test]
    async fn a_slow_acquisition_counts_from_when_it_was_sent() {
        // The winning write was sent 900 ms before keep started: the first renewal goes at once,
        // and when it hangs the lead ends `deadline` after the write, not after keep started.
        let sent = Instant::now();
        tokio::time::sleep(Duration::from_millis(900)).await;
        let e = keep_renewing("lead", sent, FAST, std::future::pending).await;
        assert!(matches!(e, Error::LostLease(_)), "{e:?}");
        assert!(about(sent.elapsed(), FAST.deadline), "{:?}", sent.elapsed());
    }

    #[tokio::test]
    async fn another_holder_ends_the_lead_at_once() {
        let start = Instant::now();
        let e = keep_renewing("lead", start, FAST, || async { Ok(false) }).await;
        assert!(matches!(e, Error::LostLease(_)), "{e:?}");
        assert!(about(start.elapsed(), FAST.every), "{:?}", start.elapsed());
    }
}
