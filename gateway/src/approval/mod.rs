//! Approval: just-in-time human decisions on operations a `RequireApproval` rule matched.
//!
//! [`Approvals`] holds the gateway's [`ApprovalRequest`]s in memory, with a change signal so that
//! held operations wake as soon as someone decides. Where they are kept durably depends on the mode:
//! - standalone: one JSON file per request in a directory (a sibling of the sessions spool),
//!   loaded at start, every change written before it takes effect; approvers decide through the
//!   admin API ([`crate::admin`]) with [`Approvals::decide_async`];
//! - Kubernetes ([`kubernetes`]): ApprovalRequest objects in the gateway's namespace, created by the
//!   gateway and watched back; approvers patch their decisions onto the object (`kubectl agentgate
//!   approvals approve`), the operator turns them into a phase, and the gateway marks a Once grant
//!   Used with a conditional write, so that two replicas can never both spend it.
//!
//! The data paths call [`Approvals::ask`] (and [`Approvals::wait`] in Hold mode).
//!
//! Standalone, a change is written and fsynced while the entries lock is held, so that memory
//! and files agree. An async worker must neither do that nor wait for that lock (it would hold
//! up every connection it serves), so async callers use the `async` methods, which run the
//! synchronous ones on the blocking pool; the synchronous ones are for tests and tools.
//!
//! Lifecycle: `Pending` → `Approved` (enough distinct approvers) | `Denied` (any approver
//! denied) | `Expired` (nobody decided before `spec.expiresAt`). An approved `Once` grant becomes
//! `Used` when the identical operation proceeds; an approved `Window` grant lets matching
//! operations through until `status.grantExpiresAt` and then becomes `Expired`. A `Once` grant
//! also carries `status.grantExpiresAt` (decision + `approvals.maxGrant`): unused by then, it
//! becomes `Expired`, so an approval never waits for its operation indefinitely.

pub mod api;
pub mod cli;
pub mod kubectl;
pub mod kubernetes;
mod store;
pub mod time;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use agentgate_crds::ApprovalRequest;
use agentgate_crds::approval::{
    ApprovalPhase, ApprovalRequestSpec, ApprovalRequestStatus, Decision, DecisionState, OperationKind,
    OperationSummary, PolicyRuleRef,
};
use agentgate_crds::policy::{ApprovalRule, Approvers, Grant, GrantType};
use tokio::sync::watch;

use store::Dir;
pub use time::{format_time, parse_time, unix_now};

/// How long finished requests (Denied, Expired, Used) stay in the store after they ended. The
/// session recordings keep the evidence for the recording retention; the store keeps only what
/// `agentgate approvals list` shows.
pub const RETAIN_FINISHED: Duration = Duration::from_secs(7 * 24 * 3600);

/// Most requests one AgentIdentity may have waiting for a decision at once.
pub const MAX_PENDING_PER_IDENTITY: usize = 32;
/// Most requests one AgentIdentity may have in the store, finished ones (kept
/// [`RETAIN_FINISHED`]) included: short timeouts would otherwise let one agent file requests as
/// fast as they expire, each a file (in a cluster, an object in etcd) scanned at every ask. On
/// the gateway's own storage the oldest finished ones make room early.
pub const MAX_KEPT_PER_IDENTITY: usize = 2048;
/// Most operations of one identity held open at once for a decision (Hold mode). Identical asks
/// share one request, so [`MAX_PENDING_PER_IDENTITY`] does not bound them, and each held
/// operation keeps its connection and up to a 1 MiB body: past this, asks are answered at once,
/// as in Defer mode.
pub const MAX_HELD_PER_IDENTITY: usize = 16;

/// Longest identity prefix of a request name: `<identity>-<8 hex>` stays a DNS-1123 subdomain.
const MAX_NAME_PREFIX: usize = 253 - 9;

/// How long an approved grant lasts: a Window its duration (one without a valid duration gets the
/// longest window allowed); an unused Once grant lapses after `max_grant`, so no approval waits
/// for its operation forever. Never longer than `max_grant`.
pub fn grant_length(grant: &Grant, max_grant: Duration) -> Duration {
    match grant.r#type {
        GrantType::Window => grant
            .duration
            .as_ref()
            .and_then(|d| d.to_std().ok())
            .unwrap_or(max_grant)
            .min(max_grant),
        GrantType::Once => max_grant,
    }
}

/// What the data path asks for when a `RequireApproval` rule matched an operation.
#[derive(Clone, Debug)]
pub struct Ask {
    /// The AgentIdentity of the caller.
    pub identity: String,
    /// The caller's token subject (refused as its own approver).
    pub requester: String,
    /// The Connection the operation targets.
    pub connection: String,
    pub kind: OperationKind,
    /// Human-readable summary, values already masked.
    pub summary: String,
    /// Hex fingerprint of the exact operation.
    pub fingerprint: String,
    /// The query and body the fingerprint covers, masked (HTTP and Kubernetes).
    pub detail: Option<String>,
    /// The AccessPolicy and the rule that matched.
    pub policy: String,
    pub rule: String,
    /// [`agentgate_crds::approval::PolicyRuleRef::digest`] of the rule and connection in force.
    pub rule_digest: String,
    /// What an approval grants.
    pub grant: Grant,
    /// Who may decide (the rule's approvers), written onto the request for admission to check.
    pub approvers: Approvers,
    /// Distinct approvals the rule needs: an Approved request counts only when its own decisions
    /// reach it.
    pub min_approvals: i32,
    /// The agent's stated reason.
    pub reason: Option<String>,
    /// How long the request waits for a decision.
    pub timeout: Duration,
    /// The longest grant the rule gives ([`grant_length`] under the gateway's `maxGrant`): a
    /// grant that claims to end later than its request could have been approved for plus this
    /// was not written by the approval path.
    pub grant_limit: Duration,
    /// Why an approver could not read the operation whole, if so: no request is filed for it
    /// (an approval covers only what its approver reads), though a Window of its rule, which
    /// covers every operation of the rule unread, still does.
    pub unshown: Option<String>,
}

/// The answer to [`Approvals::request`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ticket {
    /// Go ahead: an approved Once request for this exact operation (now marked Used), or an
    /// approved Window for this identity, caller, connection, policy and rule that has not
    /// ended.
    Granted { name: String },
    /// Waiting for a decision; `created` is false when an identical pending request existed
    /// (duplicates collapse on identity, caller, connection, fingerprint, policy and rule).
    Pending { name: String, created: bool },
}

/// An authenticated approver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Approver {
    /// The user name matched against `approvers.users` and recorded as the decision's key.
    pub user: String,
    /// Groups matched against `approvers.groups`.
    pub groups: Vec<String>,
    /// The token subject, compared with the request's requester.
    pub subject: String,
}

impl Approver {
    /// Whether `approvers` (a rule's, or those frozen on a request) name this user or one of its
    /// groups.
    pub fn is_listed(&self, approvers: &Approvers) -> bool {
        approvers.users.iter().any(|u| u == &self.user)
            || self
                .groups
                .iter()
                .any(|g| approvers.groups.iter().any(|x| x == g))
    }
}

/// A store failure: the data path must fail closed.
#[derive(Debug)]
pub enum ApprovalError {
    Io {
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
    /// Another process holds the store directory.
    Locked {
        dir: PathBuf,
    },
    /// The store directory could hold requests planted by another user.
    Insecure {
        dir: PathBuf,
        why: String,
    },
    Encode(String),
    /// No random bytes for a name.
    Random,
    /// Kubernetes mode: the API server refused or could not be reached.
    Api {
        what: &'static str,
        message: String,
    },
    /// Kubernetes mode: the gateway has not yet read the existing requests from the API server.
    NotSynced,
    /// The store's work on the blocking pool did not finish (the gateway is stopping).
    Interrupted,
    /// The identity has [`MAX_PENDING_PER_IDENTITY`] requests waiting already.
    TooManyPending {
        identity: String,
    },
    TooManyKept {
        identity: String,
    },
    /// The operation cannot be shown to an approver whole (see [`Ask::unshown`]).
    Unshown(String),
}

impl ApprovalError {
    fn io(path: &std::path::Path, what: &'static str, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            what,
            source,
        }
    }
}

impl fmt::Display for ApprovalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io { path, what, source } => {
                write!(f, "approval store: {what} {}: {source}", path.display())
            }
            Self::Locked { dir } => write!(
                f,
                "approval store {} is in use by another agentgate process",
                dir.display()
            ),
            Self::Insecure { dir, why } => write!(
                f,
                "approval store {} is refused: {why}; use a directory only the gateway's user can write",
                dir.display()
            ),
            Self::Encode(e) => write!(f, "approval store: cannot encode a request: {e}"),
            Self::Random => write!(f, "approval store: no randomness for a request name"),
            Self::Api { what, message } => write!(f, "approval requests: cannot {what}: {message}"),
            Self::NotSynced => write!(
                f,
                "approval requests: not yet read from the Kubernetes API server"
            ),
            Self::Interrupted => write!(f, "approval store: the operation was interrupted"),
            Self::TooManyPending { identity } => write!(
                f,
                "approval requests: {identity} has {MAX_PENDING_PER_IDENTITY} waiting already; no more are filed until some are decided or expire"
            ),
            Self::Unshown(why) => write!(f, "{why}"),
            Self::TooManyKept { identity } => write!(
                f,
                "approval requests: {identity} has {MAX_KEPT_PER_IDENTITY} in the store; no more are filed until the oldest finished ones are pruned"
            ),
        }
    }
}

impl std::error::Error for ApprovalError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Why a decision was refused.
#[derive(Debug)]
pub enum DecideError {
    NotFound {
        name: String,
    },
    /// The request is decided, used or expired already.
    NotPending {
        name: String,
        phase: ApprovalPhase,
    },
    /// The request's policy or rule no longer exists or no longer requires approval.
    RuleGone {
        policy: String,
        rule: String,
    },
    /// The approver is neither a listed user nor in a listed group.
    NotAnApprover {
        user: String,
    },
    /// The approver is the requester.
    SelfApproval {
        user: String,
    },
    /// The approver already decided this request.
    AlreadyDecided {
        user: String,
    },
    Store(ApprovalError),
    /// Kubernetes mode: decisions are written on the ApprovalRequest object, where admission
    /// control knows the approver, not through the gateway.
    KubernetesMode {
        name: String,
    },
}

impl DecideError {
    /// A stable slug for problem types and logs.
    pub fn slug(&self) -> &'static str {
        match self {
            Self::NotFound { .. } => "not-found",
            Self::NotPending { .. } => "not-pending",
            Self::RuleGone { .. } => "rule-gone",
            Self::NotAnApprover { .. } => "not-an-approver",
            Self::SelfApproval { .. } => "self-approval",
            Self::AlreadyDecided { .. } => "already-decided",
            Self::Store(_) => "store-unavailable",
            Self::KubernetesMode { .. } => "kubernetes-mode",
        }
    }
}

impl fmt::Display for DecideError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotFound { name } => write!(f, "ApprovalRequest {name} not found"),
            Self::NotPending { name, phase } => {
                write!(
                    f,
                    "ApprovalRequest {name} is {phase:?}, no longer Pending: it cannot be decided"
                )
            }
            Self::RuleGone { policy, rule } => write!(
                f,
                "rule {rule} of AccessPolicy {policy} no longer requires approval (changed or removed): the request cannot be decided"
            ),
            Self::NotAnApprover { user } => write!(
                f,
                "{user} is not an approver of this request: neither a listed user nor in a listed group"
            ),
            Self::SelfApproval { user } => {
                write!(
                    f,
                    "{user} asked for this operation and cannot decide its own request"
                )
            }
            Self::AlreadyDecided { user } => write!(f, "{user} has already decided this request"),
            Self::Store(e) => write!(f, "{e}"),
            Self::KubernetesMode { name } => write!(
                f,
                "this gateway runs in Kubernetes mode: decide on the ApprovalRequest object, e.g. `kubectl agentgate approvals approve {name}`"
            ),
        }
    }
}

impl std::error::Error for DecideError {}

/// A request and its times, parsed once.
#[derive(Debug)]
struct Entry {
    request: ApprovalRequest,
    created: i64,
    expires_at: i64,
    grant_expires_at: Option<i64>,
    /// When the request stopped mattering (decided and unusable, used, expired).
    ended_at: Option<i64>,
    /// Kubernetes mode: the status the API server last reported (what [`regression`] guards);
    /// `None` for what only this gateway has seen, such as its own expiry of a held request,
    /// which the API server may still overtake with an approval.
    reported: Option<ApprovalRequestStatus>,
}

impl Entry {
    fn new(request: ApprovalRequest) -> Self {
        // Unreadable times count as long past: a damaged request grants nothing.
        let spec = &request.spec;
        let status = request.status.clone().unwrap_or_default();
        let created = request
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(i64::MIN, |t| t.0.as_second());
        let expires_at = parse_time(&spec.expires_at).unwrap_or(i64::MIN);
        let grant_expires_at = status
            .grant_expires_at
            .as_deref()
            .map(|t| parse_time(t).unwrap_or(i64::MIN));
        let decided_at = status.decided_at.as_deref().and_then(parse_time);
        let used_at = status.used_at.as_deref().and_then(parse_time);
        let ended_at = match status.phase {
            ApprovalPhase::Pending => None,
            ApprovalPhase::Approved => None,
            ApprovalPhase::Denied => Some(decided_at.unwrap_or(created)),
            ApprovalPhase::Used => Some(used_at.unwrap_or(created)),
            ApprovalPhase::Expired => Some(grant_expires_at.unwrap_or(expires_at).max(created)),
        };
        Self {
            request,
            created,
            expires_at,
            grant_expires_at,
            ended_at,
            reported: None,
        }
    }

    fn phase(&self) -> ApprovalPhase {
        phase(&self.request)
    }

    fn name(&self) -> &str {
        self.request.metadata.name.as_deref().unwrap_or_default()
    }

    /// The request with time applied: a Pending request past its expiry, or an approved Window
    /// past its end, is Expired. `None` when nothing changes.
    fn expired(&self, now: i64) -> Option<ApprovalRequest> {
        let ended = match self.phase() {
            ApprovalPhase::Pending => self.expires_at <= now,
            ApprovalPhase::Approved => self.grant_expires_at.is_some_and(|t| t <= now),
            _ => false,
        };
        ended.then(|| {
            let mut r = self.request.clone();
            r.status.get_or_insert_with(Default::default).phase = ApprovalPhase::Expired;
            r
        })
    }

    /// Whether the request's own decisions approve it under the rule that asks now. The phase
    /// alone is not enough: in a cluster, whoever may write the status subresource (any gateway's
    /// service account) could set Approved, while decisions are admitted only from approvers.
    /// Counted as the operator counts them: never the requester's, and only listed users' when
    /// the rule (as it is, and as it was when the request was made) names users but no groups.
    fn backed(&self, ask: &Ask) -> bool {
        let s = &self.request.spec;
        let Some(grant_end) = self.grant_expires_at else {
            return false;
        };
        // The status is as untrusted as the phase: a grant it says was used, or one that ends
        // later than a decision before the request's expiry could have made it end, backs
        // nothing. The spec is the creator's (any gateway's service account in a cluster): its
        // approvers and grant must be the rule's, or the creator chose who approves and what.
        let limit = i64::try_from(ask.grant_limit.as_secs()).unwrap_or(i64::MAX);
        if self
            .request
            .status
            .as_ref()
            .is_some_and(|st| st.used_at.is_some())
            || grant_end > self.expires_at.saturating_add(limit)
            || s.approvers.as_ref().is_some_and(|a| *a != ask.approvers)
            || s.grant.r#type != ask.grant.r#type
        {
            return false;
        }
        let mut approvals = 0;
        for (user, d) in &s.decisions {
            let listed = |a: &Approvers| !a.groups.is_empty() || a.users.contains(user);
            let counts =
                *user != s.requester && listed(&ask.approvers) && s.approvers.as_ref().is_none_or(listed);
            match d.state {
                _ if !counts => {}
                DecisionState::Denied => return false,
                DecisionState::Approved => approvals += 1,
            }
        }
        approvals >= ask.min_approvals.max(1)
    }

    /// Whether the request is for `ask`'s identity, caller, connection and rule. The caller (the
    /// token's subject) too: agents may share an identity, and one that is also an approver
    /// would otherwise approve a request another filed and spend the grant on its own operation.
    fn same_target(&self, ask: &Ask) -> bool {
        let s = &self.request.spec;
        s.identity == ask.identity
            && s.requester == ask.requester
            && s.connection == ask.connection
            && s.policy.name == ask.policy
            && s.policy.rule == ask.rule
            // The rule (and where its connection leads) as the approvers saw it.
            && s.policy.digest.as_deref() == Some(ask.rule_digest.as_str())
    }
}

/// Why `next` may not replace what the API server reported of `known`: an ended request
/// revived, a used grant's `usedAt` cleared or changed, or a grant lengthened. Every gateway's
/// service account may write the status, so a compromised one could otherwise spend another
/// gateway's Once grant twice.
fn regression(known: &Entry, next: &Entry) -> Option<&'static str> {
    let was = known.reported.as_ref()?;
    let used_at = next.request.status.as_ref().and_then(|s| s.used_at.clone());
    let grant_end = |s: &ApprovalRequestStatus| {
        s.grant_expires_at
            .as_deref()
            .map(|t| parse_time(t).unwrap_or(i64::MIN))
    };
    let ended = matches!(
        was.phase,
        ApprovalPhase::Denied | ApprovalPhase::Expired | ApprovalPhase::Used
    );
    if ended && next.phase() != was.phase {
        Some("a request that has ended stays ended")
    } else if was.used_at.is_some() && used_at != was.used_at {
        Some("usedAt is set once")
    } else if let Some(end) = grant_end(was)
        && next.grant_expires_at.is_none_or(|t| t > end)
    {
        Some("a grant never lengthens")
    } else {
        None
    }
}

/// Puts `entry` in place of its name's, keeping what the API server last reported of it.
fn keep_reported(entries: &mut BTreeMap<String, Entry>, mut entry: Entry) {
    entry.reported = entries.get(entry.name()).and_then(|e| e.reported.clone());
    entries.insert(entry.name().to_string(), entry);
}

fn phase(r: &ApprovalRequest) -> ApprovalPhase {
    r.status.as_ref().map(|s| s.phase).unwrap_or_default()
}

/// Where requests are kept durably.
#[derive(Debug)]
enum Backend {
    /// Standalone: files in a directory.
    Dir(Dir),
    /// Kubernetes mode: objects in the API server; the memory is a cache the watch keeps current.
    Kubernetes(Box<kubernetes::Remote>),
}

/// What [`Approvals::ask`] found to do for an operation, before anything is written.
#[derive(Debug)]
enum Plan {
    /// An approved Window covers it.
    Window(String),
    /// An approved Once grant for this exact operation: spend it by storing this (phase Used).
    Spend(ApprovalRequest),
    /// An identical request is already pending.
    Waiting(String),
    /// Nothing covers it: store this new request.
    Create(ApprovalRequest),
}

/// The gateway's approval requests. Cheap to share (`Arc`); every method is thread-safe.
#[derive(Debug)]
pub struct Approvals {
    backend: Backend,
    namespace: String,
    entries: Mutex<BTreeMap<String, Entry>>,
    /// Bumped on every change; held operations watch it.
    changes: watch::Sender<u64>,
    /// Operations held for a decision, by identity.
    held: Mutex<HashMap<String, usize>>,
}

/// One operation's place among its identity's held operations; given back on drop.
#[derive(Debug)]
pub struct HeldSlot {
    store: Arc<Approvals>,
    identity: String,
}

impl Drop for HeldSlot {
    fn drop(&mut self) {
        let mut held = self.store.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = held.get_mut(&self.identity) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.identity);
            }
        }
    }
}

impl Approvals {
    /// Opens (creating) the standalone store directory and loads existing requests. Fails when
    /// another process holds the directory.
    pub fn open(dir: impl Into<PathBuf>, namespace: &str) -> Result<Arc<Self>, ApprovalError> {
        let (dir, requests) = Dir::open(dir.into())?;
        let approvals = Self::with_backend(Backend::Dir(dir), namespace);
        {
            let mut entries = approvals.lock();
            for r in requests {
                let e = Entry::new(r);
                entries.insert(e.name().to_string(), e);
            }
            let now = unix_now();
            approvals.apply_time(&mut entries, now, |_| true);
            approvals.prune(&mut entries, now);
        }
        let requests = approvals.lock().len();
        let pending = approvals.pending();
        if let Some(dir) = approvals.dir() {
            tracing::info!(dir = %dir.display(), requests, pending, "approval store open");
        }
        Ok(Arc::new(approvals))
    }

    fn with_backend(backend: Backend, namespace: &str) -> Self {
        Self {
            backend,
            namespace: namespace.to_string(),
            entries: Mutex::new(BTreeMap::new()),
            changes: watch::channel(0).0,
            held: Mutex::new(HashMap::new()),
        }
    }

    /// A place for one more of `identity`'s operations to be held for a decision, unless it has
    /// [`MAX_HELD_PER_IDENTITY`] held already.
    pub fn hold(self: &Arc<Self>, identity: &str) -> Option<HeldSlot> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let n = held.entry(identity.to_string()).or_default();
        if *n >= MAX_HELD_PER_IDENTITY {
            return None;
        }
        *n += 1;
        Some(HeldSlot {
            store: self.clone(),
            identity: identity.to_string(),
        })
    }

    /// The standalone store's directory (`None` in Kubernetes mode).
    pub fn dir(&self) -> Option<&std::path::Path> {
        match &self.backend {
            Backend::Dir(d) => Some(d.path()),
            Backend::Kubernetes(_) => None,
        }
    }

    /// Whether requests live in the Kubernetes API (decisions are then made on the objects).
    pub fn is_kubernetes(&self) -> bool {
        matches!(self.backend, Backend::Kubernetes(_))
    }

    /// Runs `f`, which may write the standalone store, where it may block: on the blocking pool
    /// standalone; in place in Kubernetes mode, whose lock is never held across I/O.
    async fn off_worker<T, F>(self: &Arc<Self>, f: F) -> Result<T, ApprovalError>
    where
        T: Send + 'static,
        F: FnOnce(&Approvals) -> T + Send + 'static,
    {
        if self.is_kubernetes() {
            return Ok(f(self));
        }
        let store = Arc::clone(self);
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|_| ApprovalError::Interrupted)
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Writes `request` durably (standalone), then makes it current and signals waiters. In
    /// Kubernetes mode the API server is the durable copy and this only updates the cache.
    fn commit(
        &self,
        entries: &mut BTreeMap<String, Entry>,
        request: ApprovalRequest,
    ) -> Result<(), ApprovalError> {
        if let Backend::Dir(dir) = &self.backend {
            dir.write(&request)?;
        }
        keep_reported(entries, Entry::new(request));
        self.changed();
        Ok(())
    }

    /// Applies expiry to the entries `filter` selects. A failed write leaves the change in
    /// memory (it is recomputed from the same times after a restart anyway).
    fn apply_time(&self, entries: &mut BTreeMap<String, Entry>, now: i64, filter: impl Fn(&Entry) -> bool) {
        let expired: Vec<ApprovalRequest> = entries
            .values()
            .filter(|e| filter(e))
            .filter_map(|e| e.expired(now))
            .collect();
        for r in expired {
            if let Err(e) = self.commit(entries, r.clone()) {
                tracing::warn!(error = %e, "cannot persist an approval request's expiry");
                keep_reported(entries, Entry::new(r));
                self.changed();
            }
        }
    }

    /// Deletes requests that ended more than [`RETAIN_FINISHED`] ago (standalone; in Kubernetes
    /// mode the operator deletes them and the watch removes them here).
    fn prune(&self, entries: &mut BTreeMap<String, Entry>, now: i64) {
        let Backend::Dir(dir) = &self.backend else {
            return;
        };
        let horizon = now.saturating_sub(RETAIN_FINISHED.as_secs() as i64);
        let old: Vec<String> = entries
            .values()
            .filter(|e| e.ended_at.is_some_and(|t| t < horizon))
            .map(|e| e.name().to_string())
            .collect();
        for name in old {
            match dir.remove(&name) {
                Ok(()) => {
                    entries.remove(&name);
                }
                Err(e) => tracing::warn!(error = %e, "cannot delete an old approval request"),
            }
        }
    }

    /// Keeps `identity` under [`MAX_KEPT_PER_IDENTITY`] requests: on the gateway's own storage its
    /// oldest finished ones go early (they are kept only for listing; the recordings hold the
    /// evidence). In a cluster the operator prunes, so a full identity files nothing more.
    fn make_room(&self, entries: &mut BTreeMap<String, Entry>, identity: &str) -> Result<(), ApprovalError> {
        let mine = |e: &&Entry| e.request.spec.identity == identity;
        let kept = entries.values().filter(mine).count();
        if kept < MAX_KEPT_PER_IDENTITY {
            return Ok(());
        }
        let full = || ApprovalError::TooManyKept {
            identity: identity.to_string(),
        };
        let Backend::Dir(dir) = &self.backend else {
            return Err(full());
        };
        let mut finished: Vec<(i64, String)> = entries
            .values()
            .filter(mine)
            .filter_map(|e| Some((e.ended_at?, e.name().to_string())))
            .collect();
        finished.sort();
        for (_, name) in finished.into_iter().take(kept + 1 - MAX_KEPT_PER_IDENTITY) {
            dir.remove(&name).map_err(|_| full())?;
            entries.remove(&name);
        }
        if entries.values().filter(mine).count() >= MAX_KEPT_PER_IDENTITY {
            return Err(full());
        }
        Ok(())
    }

    /// The data path asks: a RequireApproval rule matched `ask`. Returns a grant when an
    /// approval covers the operation (spending a Once grant), else the pending request (created
    /// when needed). Fails closed when the request cannot be stored.
    pub async fn ask(self: &Arc<Self>, ask: &Ask, now: i64) -> Result<Ticket, ApprovalError> {
        match &self.backend {
            Backend::Dir(_) => {
                let ask = ask.clone();
                self.off_worker(move |s| s.request(&ask, now)).await?
            }
            Backend::Kubernetes(remote) => kubernetes::ask(self, remote, ask, now).await,
        }
    }

    /// [`Self::ask`] for the standalone store, without a runtime. Refused in Kubernetes mode,
    /// where every write goes through the API server.
    pub fn request(&self, ask: &Ask, now: i64) -> Result<Ticket, ApprovalError> {
        if self.is_kubernetes() {
            return Err(ApprovalError::Api {
                what: "store a request",
                message: "Kubernetes mode writes through the API server (Approvals::ask)".into(),
            });
        }
        let mut entries = self.lock();
        match self.plan(&mut entries, ask, now)? {
            Plan::Window(name) => Ok(Ticket::Granted { name }),
            Plan::Waiting(name) => Ok(Ticket::Pending { name, created: false }),
            Plan::Spend(used) => {
                let name = used.metadata.name.clone().unwrap_or_default();
                self.commit(&mut entries, used)?;
                Ok(Ticket::Granted { name })
            }
            Plan::Create(request) => {
                let name = request.metadata.name.clone().unwrap_or_default();
                self.commit(&mut entries, request)?;
                Ok(Ticket::Pending { name, created: true })
            }
        }
    }

    /// Works out what `ask` needs, writing nothing but expiry.
    fn plan(
        &self,
        entries: &mut BTreeMap<String, Entry>,
        ask: &Ask,
        now: i64,
    ) -> Result<Plan, ApprovalError> {
        self.apply_time(entries, now, |e| e.same_target(ask));
        // A window covers every operation of the rule; prefer it to spending a Once grant.
        let approved = |e: &&Entry, t: GrantType| {
            e.phase() == ApprovalPhase::Approved
                && e.same_target(ask)
                && e.request.spec.grant.r#type == t
                && e.backed(ask)
        };
        if let Some(e) = entries.values().find(|e| approved(e, GrantType::Window)) {
            return Ok(Plan::Window(e.name().to_string()));
        }
        // Nothing else covers what was never filed.
        if let Some(why) = &ask.unshown {
            return Err(ApprovalError::Unshown(why.clone()));
        }
        if let Some(e) = entries
            .values()
            .find(|e| approved(e, GrantType::Once) && e.request.spec.operation.fingerprint == ask.fingerprint)
        {
            let mut used = e.request.clone();
            let status = used.status.get_or_insert_with(Default::default);
            status.phase = ApprovalPhase::Used;
            status.used_at = Some(format_time(now));
            return Ok(Plan::Spend(used));
        }
        if let Some(e) = entries.values().find(|e| {
            e.phase() == ApprovalPhase::Pending
                && e.same_target(ask)
                && e.request.spec.operation.fingerprint == ask.fingerprint
        }) {
            return Ok(Plan::Waiting(e.name().to_string()));
        }
        // Each distinct operation files a request: an agent looping over ids would fill the
        // store (in a cluster, etcd) and the approvers' list.
        // Past their expiry they wait for nothing, whether or not time was applied to them yet
        // (only this target's were): they must not lock the identity out of other targets.
        let pending = entries
            .values()
            .filter(|e| {
                e.phase() == ApprovalPhase::Pending
                    && e.expires_at > now
                    && e.request.spec.identity == ask.identity
            })
            .count();
        if pending >= MAX_PENDING_PER_IDENTITY {
            return Err(ApprovalError::TooManyPending {
                identity: ask.identity.clone(),
            });
        }
        self.prune(entries, now);
        self.make_room(entries, &ask.identity)?;
        let name = unique_name(&ask.identity, |n| entries.contains_key(n))?;
        let timeout = i64::try_from(ask.timeout.as_secs()).unwrap_or(i64::MAX).max(1);
        let spec = ApprovalRequestSpec {
            identity: ask.identity.clone(),
            requester: ask.requester.clone(),
            connection: ask.connection.clone(),
            operation: OperationSummary {
                kind: ask.kind,
                summary: ask.summary.clone(),
                fingerprint: ask.fingerprint.clone(),
                detail: ask.detail.clone(),
            },
            policy: PolicyRuleRef {
                name: ask.policy.clone(),
                rule: ask.rule.clone(),
                digest: Some(ask.rule_digest.clone()),
            },
            grant: ask.grant.clone(),
            approvers: Some(ask.approvers.clone()),
            reason: ask.reason.clone(),
            expires_at: format_time(now.saturating_add(timeout)),
            decisions: BTreeMap::new(),
        };
        let mut request = ApprovalRequest::new(&name, spec);
        request.metadata.namespace = Some(self.namespace.clone());
        request.metadata.creation_timestamp = time::kube_time(now);
        request.status = Some(ApprovalRequestStatus {
            phase: ApprovalPhase::Pending,
            approvals: Some(0),
            ..Default::default()
        });
        Ok(Plan::Create(request))
    }

    /// Kubernetes mode: takes the API server's version of a request into the cache. Returns the
    /// phase it had here before (`None` when it was not known).
    fn ingest(&self, request: ApprovalRequest) -> Option<ApprovalPhase> {
        let mut entry = Entry::new(request);
        entry.reported = Some(entry.request.status.clone().unwrap_or_default());
        let mut entries = self.lock();
        if let Some(known) = entries.get(entry.name())
            && let Some(why) = regression(known, &entry)
        {
            // The API server refuses these (the CRD's status rules); a cluster without them, or
            // a status written around them, still cannot re-arm what this gateway saw end.
            tracing::warn!(
                request = entry.name(),
                "ApprovalRequest status change ignored: {why}"
            );
            return Some(known.phase());
        }
        let before = entries.insert(entry.name().to_string(), entry).map(|e| e.phase());
        drop(entries);
        self.changed();
        before
    }

    /// Kubernetes mode: a request was deleted from the API server.
    fn forget(&self, name: &str) {
        if self.lock().remove(name).is_some() {
            self.changed();
        }
    }

    /// Kubernetes mode: after a full list, drops what the API server no longer has.
    fn retain(&self, keep: &std::collections::BTreeSet<String>) {
        let mut entries = self.lock();
        let before = entries.len();
        entries.retain(|name, _| keep.contains(name));
        if entries.len() != before {
            self.changed();
        }
    }

    /// Hold mode: waits until `name` is no longer Pending or `deadline` passes, and returns its
    /// phase. At the deadline a request still Pending becomes Expired. A request that does not
    /// exist (any more) counts as Expired.
    /// The store's failure counts as Expired: nobody approved.
    pub async fn wait(self: &Arc<Self>, name: &str, deadline: tokio::time::Instant) -> ApprovalPhase {
        let mut changes = self.changes.subscribe();
        loop {
            changes.borrow_and_update();
            let now = std::time::SystemTime::now();
            let unix = time::unix(now);
            let owned = name.to_string();
            let expires_at = match self.off_worker(move |s| s.waiting(&owned, unix)).await {
                Ok(ControlFlow::Continue(expires_at)) => expires_at,
                Ok(ControlFlow::Break(phase)) => return phase,
                Err(_) => return ApprovalPhase::Expired,
            };
            // The store's own expiry can come before the caller's deadline (a collapsed duplicate).
            let to_expiry = (std::time::UNIX_EPOCH + Duration::from_secs(expires_at.max(0) as u64))
                .duration_since(now)
                .unwrap_or_default();
            let wake = deadline.min(tokio::time::Instant::now() + to_expiry);
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep_until(wake) => {
                    if tokio::time::Instant::now() >= deadline {
                        let owned = name.to_string();
                        return self
                            .off_worker(move |s| s.expire_now(&owned))
                            .await
                            .unwrap_or(ApprovalPhase::Expired);
                    }
                }
            }
        }
    }

    /// One look of [`Self::wait`]: the phase once `name` is no longer Pending, else when it
    /// expires.
    fn waiting(&self, name: &str, unix: i64) -> ControlFlow<ApprovalPhase, i64> {
        let mut entries = self.lock();
        let Some(e) = entries.get(name) else {
            return ControlFlow::Break(ApprovalPhase::Expired);
        };
        if e.expired(unix).is_some() {
            self.apply_time(&mut entries, unix, |e| e.name() == name);
        }
        let e = &entries[name];
        if e.phase() != ApprovalPhase::Pending {
            return ControlFlow::Break(e.phase());
        }
        ControlFlow::Continue(e.expires_at)
    }

    /// Marks `name` Expired when it is still Pending; returns its phase.
    fn expire_now(&self, name: &str) -> ApprovalPhase {
        let mut entries = self.lock();
        let Some(e) = entries.get(name) else {
            return ApprovalPhase::Expired;
        };
        if e.phase() != ApprovalPhase::Pending {
            return e.phase();
        }
        let mut r = e.request.clone();
        r.status.get_or_insert_with(Default::default).phase = ApprovalPhase::Expired;
        if let Err(err) = self.commit(&mut entries, r.clone()) {
            tracing::warn!(error = %err, "cannot persist an approval request's expiry");
            keep_reported(&mut entries, Entry::new(r));
            self.changed();
        }
        ApprovalPhase::Expired
    }

    /// An approver decides. `rule` is the ApprovalRule configured now for the request's policy
    /// and rule (`None` when it is gone or no longer requires approval: refused).
    #[allow(clippy::too_many_arguments)]
    pub fn decide(
        &self,
        name: &str,
        approver: &Approver,
        state: DecisionState,
        reason: Option<String>,
        rule: Option<&ApprovalRule>,
        max_grant: Duration,
        now: i64,
    ) -> Result<ApprovalRequest, DecideError> {
        if self.is_kubernetes() {
            return Err(DecideError::KubernetesMode { name: name.into() });
        }
        let mut entries = self.lock();
        self.apply_time(&mut entries, now, |e| e.name() == name);
        let Some(entry) = entries.get(name) else {
            return Err(DecideError::NotFound { name: name.into() });
        };
        let phase = entry.phase();
        // An approval can be withdrawn while its grant is unspent (a Window's remaining time, an
        // unused Once): an approver's deny ends it, as a later deny does in Kubernetes mode.
        let withdrawing = phase == ApprovalPhase::Approved && state == DecisionState::Denied;
        if phase != ApprovalPhase::Pending && !withdrawing {
            return Err(DecideError::NotPending {
                name: name.into(),
                phase,
            });
        }
        let spec = &entry.request.spec;
        let Some(rule) = rule else {
            return Err(DecideError::RuleGone {
                policy: spec.policy.name.clone(),
                rule: spec.policy.rule.clone(),
            });
        };
        if approver.user.is_empty() || approver.subject.is_empty() {
            return Err(DecideError::NotAnApprover {
                user: approver.user.clone(),
            });
        }
        if approver.subject == spec.requester || approver.user == spec.requester {
            return Err(DecideError::SelfApproval {
                user: approver.user.clone(),
            });
        }
        if !approver.is_listed(&rule.approvers) {
            return Err(DecideError::NotAnApprover {
                user: approver.user.clone(),
            });
        }
        if spec.decisions.contains_key(&approver.user) && !withdrawing {
            return Err(DecideError::AlreadyDecided {
                user: approver.user.clone(),
            });
        }
        let mut request = entry.request.clone();
        request.spec.decisions.insert(
            approver.user.clone(),
            Decision {
                state,
                reason,
                decided_at: Some(format_time(now)),
            },
        );
        let approvals = request
            .spec
            .decisions
            .values()
            .filter(|d| d.state == DecisionState::Approved)
            .count();
        let denied = request
            .spec
            .decisions
            .values()
            .any(|d| d.state == DecisionState::Denied);
        let needed = usize::try_from(rule.min_approvals.max(1)).unwrap_or(1);
        let grant = request.spec.grant.clone();
        let status = request.status.get_or_insert_with(Default::default);
        status.approvals = Some(i32::try_from(approvals).unwrap_or(i32::MAX));
        if denied {
            status.phase = ApprovalPhase::Denied;
            status.decided_at = Some(format_time(now));
        } else if approvals >= needed {
            status.phase = ApprovalPhase::Approved;
            status.decided_at = Some(format_time(now));
            let secs = i64::try_from(grant_length(&grant, max_grant).as_secs()).unwrap_or(i64::MAX);
            status.grant_expires_at = Some(format_time(now.saturating_add(secs)));
        }
        self.commit(&mut entries, request.clone())
            .map_err(DecideError::Store)?;
        Ok(request)
    }

    /// [`Self::decide`] for async callers.
    #[allow(clippy::too_many_arguments)]
    pub async fn decide_async(
        self: &Arc<Self>,
        name: &str,
        approver: &Approver,
        state: DecisionState,
        reason: Option<String>,
        rule: Option<&ApprovalRule>,
        max_grant: Duration,
        now: i64,
    ) -> Result<ApprovalRequest, DecideError> {
        let (name, approver, rule) = (name.to_string(), approver.clone(), rule.cloned());
        self.off_worker(move |s| s.decide(&name, &approver, state, reason, rule.as_ref(), max_grant, now))
            .await
            .map_err(DecideError::Store)?
    }

    /// [`Self::list`] for async callers.
    pub async fn list_async(self: &Arc<Self>, now: i64) -> Result<Vec<ApprovalRequest>, ApprovalError> {
        self.off_worker(move |s| s.list(now)).await
    }

    /// [`Self::get`] for async callers.
    pub async fn get_async(
        self: &Arc<Self>,
        name: &str,
        now: i64,
    ) -> Result<Option<ApprovalRequest>, ApprovalError> {
        let name = name.to_string();
        self.off_worker(move |s| s.get(&name, now)).await
    }

    /// [`Self::pending`] for async callers.
    pub async fn pending_async(self: &Arc<Self>) -> Result<usize, ApprovalError> {
        self.off_worker(|s| s.pending()).await
    }

    /// Every request, oldest first, with expiry applied.
    pub fn list(&self, now: i64) -> Vec<ApprovalRequest> {
        let mut entries = self.lock();
        self.apply_time(&mut entries, now, |_| true);
        let mut all: Vec<&Entry> = entries.values().collect();
        all.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.name().cmp(b.name())));
        all.into_iter().map(|e| e.request.clone()).collect()
    }

    /// One request, with expiry applied.
    pub fn get(&self, name: &str, now: i64) -> Option<ApprovalRequest> {
        let mut entries = self.lock();
        self.apply_time(&mut entries, now, |e| e.name() == name);
        entries.get(name).map(|e| e.request.clone())
    }

    /// Requests waiting for a decision now (for a gauge).
    pub fn pending(&self) -> usize {
        let now = unix_now();
        self.lock()
            .values()
            .filter(|e| e.phase() == ApprovalPhase::Pending && e.expires_at > now)
            .count()
    }

    /// A receiver that changes whenever any request changes (for tools that follow the store).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

/// `<identity>-<8 hex>`, not taken.
fn unique_name(identity: &str, taken: impl Fn(&str) -> bool) -> Result<String, ApprovalError> {
    let mut prefix: &str = identity;
    if prefix.len() > MAX_NAME_PREFIX {
        let mut end = MAX_NAME_PREFIX;
        while !prefix.is_char_boundary(end) {
            end -= 1;
        }
        prefix = &prefix[..end];
    }
    let prefix = prefix.trim_end_matches(['-', '.']);
    let prefix = if prefix.is_empty() { "request" } else { prefix };
    for _ in 0..16 {
        let mut raw = [0u8; 4];
        aws_lc_rs::rand::fill(&mut raw).map_err(|_| ApprovalError::Random)?;
        let name = format!(
            "{prefix}-{:02x}{:02x}{:02x}{:02x}",
            raw[0], raw[1], raw[2], raw[3]
        );
        if !taken(&name) {
            return Ok(name);
        }
    }
    Err(ApprovalError::Random)
}

#[cfg(test)]
mod tests;
