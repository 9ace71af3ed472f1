//! Kubernetes mode: ApprovalRequests are objects in the gateway's namespace.
//!
//! - The gateway creates a request when a RequireApproval rule matches and nothing covers the
//!   operation, labelled with its gateway ([`GATEWAY_LABEL`]); the create must succeed before the
//!   agent is told the request's name (fail closed).
//! - [`sync`] watches the gateway's requests back into the [`Approvals`] cache, so a decision
//!   wakes held operations as soon as the operator writes the phase. Until the first full list
//!   has arrived, nothing is created or granted ([`ApprovalError::NotSynced`]).
//! - Spending a Once grant is a status write conditional on the resourceVersion the gateway saw
//!   Approved: of two replicas (or two held copies of the operation) only one write succeeds; the
//!   other sees a conflict, re-reads the request, finds it Used, and asks anew.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use agentgate_crds::ApprovalRequest;
use agentgate_crds::approval::ApprovalPhase;
use futures_util::StreamExt;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, ResourceExt};
use serde_json::json;
use tokio::sync::watch;

use super::{ApprovalError, Approvals, Ask, Backend, Plan, Ticket, parse_time};
use crate::metrics::Metrics;

/// The label naming the AgentGateway whose data path asked; each gateway watches only its own.
pub const GATEWAY_LABEL: &str = "agentgate.dev/gateway";
/// The field manager of the gateway's writes.
pub const FIELD_MANAGER: &str = "agentgate-gateway";
/// How long an operation waits for the first list of requests after the gateway starts.
const SYNC_WAIT: Duration = Duration::from_secs(5);
/// Attempts at one ask when writes conflict (a name taken, a grant spent by another replica).
const MAX_ATTEMPTS: usize = 4;

/// The API side of the Kubernetes backend.
#[derive(Debug)]
pub(super) struct Remote {
    api: Api<ApprovalRequest>,
    gateway: String,
    /// One create or spend at a time on this gateway, so that concurrent identical operations
    /// collapse onto one request instead of racing to create two.
    writer: tokio::sync::Mutex<()>,
    /// Set once the watch has listed the existing requests.
    synced: watch::Sender<bool>,
}

impl Approvals {
    /// The Kubernetes backend: requests of AgentGateway `gateway` in `namespace`. Call [`sync`]
    /// (in a task) to fill and follow the cache.
    pub fn kubernetes(client: kube::Client, namespace: &str, gateway: &str) -> Arc<Self> {
        let remote = Remote {
            api: Api::namespaced(client, namespace),
            gateway: gateway.to_string(),
            writer: tokio::sync::Mutex::new(()),
            synced: watch::channel(false).0,
        };
        Arc::new(Self::with_backend(
            Backend::Kubernetes(Box::new(remote)),
            namespace,
        ))
    }
}

fn api_error(what: &'static str, e: &kube::Error) -> ApprovalError {
    let message = match e {
        kube::Error::Api(s) => format!("{} ({})", s.message, s.code),
        other => other.to_string(),
    };
    ApprovalError::Api { what, message }
}

fn status_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// [`Approvals::ask`] in Kubernetes mode.
pub(super) async fn ask(
    store: &Approvals,
    remote: &Remote,
    ask: &Ask,
    now: i64,
) -> Result<Ticket, ApprovalError> {
    let mut synced = remote.synced.subscribe();
    if tokio::time::timeout(SYNC_WAIT, synced.wait_for(|s| *s))
        .await
        .is_err()
    {
        return Err(ApprovalError::NotSynced);
    }
    // A window or a pending request needs no write: answer without queueing behind writers.
    let first = store.plan(&mut store.lock(), ask, now)?;
    match first {
        Plan::Window(name) => return Ok(Ticket::Granted { name }),
        Plan::Waiting(name) => {
            return Ok(Ticket::Pending { name, created: false });
        }
        Plan::Spend(_) | Plan::Create(_) => {}
    }
    let _writer = remote.writer.lock().await;
    for _ in 0..MAX_ATTEMPTS {
        let plan = store.plan(&mut store.lock(), ask, now)?;
        match plan {
            Plan::Window(name) => return Ok(Ticket::Granted { name }),
            Plan::Waiting(name) => {
                return Ok(Ticket::Pending { name, created: false });
            }
            Plan::Spend(used) => {
                let name = used.name_any();
                match spend(remote, &used).await {
                    Ok(stored) => {
                        store.ingest(stored);
                        return Ok(Ticket::Granted { name });
                    }
                    // Changed since we read it (spent elsewhere, expired, deleted): read it again.
                    Err(e) if matches!(status_code(&e), Some(409 | 404)) => {
                        match remote.api.get_opt(&name).await {
                            Ok(Some(fresh)) => {
                                store.ingest(fresh);
                            }
                            Ok(None) => store.forget(&name),
                            Err(e) => return Err(api_error("read an approval request", &e)),
                        }
                    }
                    Err(e) => return Err(api_error("mark an approval Used", &e)),
                }
            }
            Plan::Create(request) => {
                let name = request.name_any();
                match create(remote, &request).await {
                    Ok(stored) => {
                        store.ingest(stored);
                        return Ok(Ticket::Pending { name, created: true });
                    }
                    // The random name is taken: the next plan draws another.
                    Err(e) if status_code(&e) == Some(409) => {}
                    Err(e) => return Err(api_error("create an approval request", &e)),
                }
            }
        }
    }
    Err(ApprovalError::Api {
        what: "store an approval request",
        message: format!("conflicting writes {MAX_ATTEMPTS} times in a row"),
    })
}

/// Creates `request` (no status: the API server ignores it on create; the operator writes it).
async fn create(remote: &Remote, request: &ApprovalRequest) -> Result<ApprovalRequest, kube::Error> {
    let mut object = request.clone();
    object.status = None;
    object.metadata.creation_timestamp = None;
    object
        .metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert(GATEWAY_LABEL.to_string(), remote.gateway.clone());
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    remote.api.create(&params, &object).await
}

/// Marks an approved Once request Used, only if it is still the version the gateway read.
async fn spend(remote: &Remote, used: &ApprovalRequest) -> Result<ApprovalRequest, kube::Error> {
    let status = used.status.clone().unwrap_or_default();
    let patch = json!({
        "metadata": {"resourceVersion": used.resource_version()},
        "status": {"phase": ApprovalPhase::Used, "usedAt": status.used_at},
    });
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    remote
        .api
        .patch_status(&used.name_any(), &params, &Patch::Merge(&patch))
        .await
}

/// Follows the gateway's requests in the API server until `shutdown`, keeping `store` current and
/// counting decisions. Does nothing for a standalone store.
pub async fn sync(store: Arc<Approvals>, metrics: Metrics, mut shutdown: watch::Receiver<bool>) {
    let Backend::Kubernetes(remote) = &store.backend else {
        return;
    };
    let config = watcher::Config::default().labels(&format!("{GATEWAY_LABEL}={}", remote.gateway));
    let mut events = watcher::watcher(remote.api.clone(), config)
        .default_backoff()
        .boxed();
    let mut listed = BTreeSet::new();
    loop {
        let event = tokio::select! {
            e = events.next() => e,
            _ = shutdown.changed() => return,
        };
        match event {
            Some(Ok(Event::Init)) => listed.clear(),
            Some(Ok(Event::InitApply(request))) => {
                listed.insert(request.name_any());
                store.ingest(request);
            }
            Some(Ok(Event::InitDone)) => {
                store.retain(&listed);
                listed.clear();
                if !remote.synced.send_replace(true) {
                    tracing::info!(
                        requests = store.lock().len(),
                        "approval requests read from the API server"
                    );
                }
            }
            Some(Ok(Event::Apply(request))) => {
                let decided = decision(&request);
                let before = store.ingest(request);
                if let (Some(ApprovalPhase::Pending), Some((label, seconds))) = (before, decided) {
                    metrics
                        .approval_decision_seconds
                        .with_label_values(&[label])
                        .observe(seconds);
                }
            }
            Some(Ok(Event::Delete(request))) => store.forget(&request.name_any()),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "watching approval requests failed; retrying");
                continue;
            }
            None => return,
        }
        metrics.approvals_pending.set(store.pending() as i64);
    }
}

/// A decided request's outcome label and how long its decision took.
fn decision(request: &ApprovalRequest) -> Option<(&'static str, f64)> {
    let status = request.status.as_ref()?;
    let label = match status.phase {
        ApprovalPhase::Approved => "approved",
        ApprovalPhase::Denied => "denied",
        _ => return None,
    };
    let decided = status.decided_at.as_deref().and_then(parse_time)?;
    let created = request.metadata.creation_timestamp.as_ref()?.0.as_second();
    Some((label, (decided - created).max(0) as f64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::approval::{Approver, DecideError, format_time, time::kube_time};
    use agentgate_crds::approval::{
        ApprovalRequestSpec, ApprovalRequestStatus, DecisionState, OperationKind, OperationSummary,
        PolicyRuleRef,
    };

    fn request(phase: ApprovalPhase, created: i64, decided: Option<i64>) -> ApprovalRequest {
        let spec = ApprovalRequestSpec {
            identity: "ci-agent".into(),
            requester: "ci-agent".into(),
            connection: "api".into(),
            operation: OperationSummary {
                kind: OperationKind::Http,
                summary: "DELETE /users/1".into(),
                fingerprint: "0123456789abcdef".into(),
                detail: None,
            },
            policy: PolicyRuleRef {
                name: "p".into(),
                rule: "r".into(),
                digest: None,
            },
            grant: Default::default(),
            approvers: None,
            reason: None,
            expires_at: format_time(created + 600),
            decisions: Default::default(),
        };
        let mut r = ApprovalRequest::new("ci-agent-0a1b2c3d", spec);
        r.metadata.creation_timestamp = kube_time(created);
        r.status = Some(ApprovalRequestStatus {
            phase,
            decided_at: decided.map(format_time),
            ..Default::default()
        });
        r
    }

    #[test]
    fn decisions_are_timed_from_creation() {
        let t = 1_800_000_000;
        assert_eq!(
            decision(&request(ApprovalPhase::Approved, t, Some(t + 42))),
            Some(("approved", 42.0))
        );
        assert_eq!(
            decision(&request(ApprovalPhase::Denied, t, Some(t + 3))),
            Some(("denied", 3.0))
        );
        // Not a decision, or no time to measure.
        assert_eq!(decision(&request(ApprovalPhase::Used, t, Some(t + 3))), None);
        assert_eq!(decision(&request(ApprovalPhase::Approved, t, None)), None);
    }

    #[tokio::test]
    async fn in_kubernetes_mode_the_gateway_neither_decides_nor_writes_locally() {
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        let store = Approvals::kubernetes(client, "agents", "gw");
        assert!(store.is_kubernetes() && store.dir().is_none());
        let approver = Approver {
            user: "alice".into(),
            groups: vec!["dba".into()],
            subject: "alice".into(),
        };
        let refused = store
            .decide(
                "ci-agent-0a1b2c3d",
                &approver,
                DecisionState::Approved,
                None,
                None,
                Duration::from_secs(60),
                0,
            )
            .unwrap_err();
        assert!(matches!(refused, DecideError::KubernetesMode { .. }));
        assert!(
            refused
                .to_string()
                .contains("kubectl agentgate approvals approve")
        );
    }
}
