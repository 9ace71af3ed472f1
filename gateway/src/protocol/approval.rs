//! What the protocols share when a RequireApproval rule matches: the question put to the
//! approval store (who, where, which exact operation, under which rule) and the outcome in
//! protocol-neutral terms. Each protocol turns the outcome into its own error or lets the
//! operation through.

use std::sync::Arc;
use std::time::Duration;

use agentgate_crds::approval::{ApprovalPhase, OperationKind};
use agentgate_crds::policy::{ApprovalMode, ApprovalRule};
use sha2::{Digest, Sha256};

use crate::approval::{Approvals, Ask, Ticket, unix_now};
use crate::config::{CompiledPolicy, CompiledRule, GatewayConfig};
use crate::masking::secret::SecretFinder;
use crate::metrics::Metrics;

/// Longest reason an agent may give.
pub const MAX_REASON_BYTES: usize = 1024;

/// The outcome of asking for approval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Approved (a Once grant for this exact operation, now used, or a Window): go ahead.
    Granted { request: String },
    /// Defer mode, or Hold and still pending: refused for now, naming the request.
    Pending { request: String, created: bool },
    /// Hold mode: an approver denied it.
    Denied { request: String },
    /// Hold mode: nobody decided in time.
    Expired { request: String },
    /// The gateway cannot ask (no store, or the rule has no approval block).
    Unavailable(String),
    /// Hold mode: the client cancelled the operation or left while it waited (see
    /// [`Abandon`]); the request stays unspent.
    Abandoned { request: String },
}

/// What ends a held operation's wait before a decision: its client cancelling it, or leaving.
/// Only the wait: once an approval is being spent, the operation goes ahead, so a grant is never
/// spent on an operation that does not run.
#[derive(Debug, Default)]
pub struct Abandon {
    gone: std::sync::atomic::AtomicBool,
    wake: tokio::sync::Notify,
}

impl Abandon {
    /// The client cancelled: a wait in progress ends (one that starts later does not, as a
    /// PostgreSQL cancel that arrives between statements cancels nothing).
    pub fn cancel(&self) {
        self.wake.notify_waiters();
    }

    /// The client left: every wait ends, now and later.
    pub fn leave(&self) {
        self.gone.store(true, std::sync::atomic::Ordering::SeqCst);
        self.wake.notify_waiters();
    }

    /// Until [`Self::cancel`] or [`Self::leave`].
    pub async fn wait(&self) {
        let woken = self.wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        if self.gone.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        woken.await;
    }
}

impl Outcome {
    /// Stable label for metrics and recordings.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Granted { .. } => "granted",
            Outcome::Pending { .. } => "pending",
            Outcome::Denied { .. } => "denied",
            Outcome::Expired { .. } => "expired",
            Outcome::Unavailable(_) => "unavailable",
            Outcome::Abandoned { .. } => "abandoned",
        }
    }

    /// The ApprovalRequest concerned, if one was made.
    pub fn request(&self) -> Option<&str> {
        match self {
            Outcome::Granted { request }
            | Outcome::Pending { request, .. }
            | Outcome::Denied { request }
            | Outcome::Expired { request }
            | Outcome::Abandoned { request } => Some(request),
            Outcome::Unavailable(_) => None,
        }
    }
}

/// The hex SHA-256 of an operation's parts, separated so no two splits collide.
pub fn fingerprint(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    crate::recording::chain::hex(&h.finalize())
}

/// The rule's approval block, from the policy as written.
pub fn rule_spec<'a>(policy: &'a CompiledPolicy, rule: &CompiledRule) -> Option<&'a ApprovalRule> {
    policy
        .spec
        .rules
        .iter()
        .find(|r| r.name == rule.name)
        .and_then(|r| r.approval.as_ref())
}

/// [`agentgate_crds::approval::PolicyRuleRef::digest`]: the rule as written (conditions and
/// approval terms, not its description) and what its connection leads to: the endpoint, where
/// the credential comes from (never its value) and how the server is verified. Serialised as the
/// CRD types write it, unset fields left out, so a field added later changes no digest of a rule
/// that does not set it.
pub fn rule_digest(
    policy: &CompiledPolicy,
    rule: &CompiledRule,
    connection: Option<&crate::config::CompiledConnection>,
) -> String {
    use sha2::{Digest, Sha256};
    let written = policy.spec.rules.iter().find(|r| r.name == rule.name).map(|r| {
        let mut r = r.clone();
        r.description = None;
        r
    });
    let mut h = Sha256::new();
    h.update(b"agentgate-rule-digest-v1\n");
    h.update(serde_json::to_vec(&written).unwrap_or_default());
    h.update(b"\n");
    if let Some(c) = connection {
        let e = &c.endpoint;
        h.update(format!("{}://{}:{}/{}\n", e.scheme, e.host, e.port, e.path).as_bytes());
        h.update(c.credential_source.as_deref().unwrap_or_default().as_bytes());
        let ca =
            c.ca.as_ref()
                .map(|ca| crate::recording::chain::hex(&Sha256::digest(ca.expose())));
        h.update(
            format!(
                "\nca={} server_name={} insecure={}",
                ca.unwrap_or_default(),
                c.server_name.as_deref().unwrap_or_default(),
                c.insecure_skip_verify
            )
            .as_bytes(),
        );
    }
    let mut hex = crate::recording::chain::hex(&h.finalize());
    hex.truncate(32);
    hex
}

/// Whether the configuration in force still decides the operation as the one it was decided
/// under did (see [`decides_alike`]). A held operation is released only then: a suspension of
/// its identity or a tightened policy since it was decided would otherwise not apply to it.
/// When it does not, the operation is refused before the grant is spent, and sent again it is
/// decided afresh (and the grant, unspent, still covers it if the new configuration asks the
/// same approval).
pub struct StillCurrent<'a>(pub &'a (dyn Fn() -> bool + Send + Sync));

impl std::fmt::Debug for StillCurrent<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StillCurrent")
    }
}

/// Whether configuration `now` decides the operations of `identity` (with `groups`) on
/// `connection` as `then` did: the identity is the same and not suspended, and the same
/// policies apply to it there, spec for spec. A reload that changes anything else (another
/// team's policy, a rotated credential) leaves a held operation's decision standing.
pub fn decides_alike(
    then: &GatewayConfig,
    now: &GatewayConfig,
    identity: &str,
    groups: &[String],
    connection: &str,
) -> bool {
    let subject = crate::policy::index::Subject { identity, groups };
    let specs = |cfg: &GatewayConfig| {
        cfg.policy_index
            .applicable(&cfg.policies, connection, subject)
            .into_iter()
            .map(|p| (p.name.clone(), p.spec.clone()))
            .collect::<Vec<_>>()
    };
    let same_identity = match (then.identities.get(identity), now.identities.get(identity)) {
        (Some(a), Some(b)) => a.spec == b.spec && !b.spec.suspend,
        _ => false,
    };
    same_identity && specs(then) == specs(now)
}

/// Everything needed to ask, besides the operation itself.
#[derive(Debug)]
pub struct Question<'a> {
    pub cfg: &'a GatewayConfig,
    pub still_current: StillCurrent<'a>,
    pub policy: &'a CompiledPolicy,
    pub rule: &'a CompiledRule,
    pub identity: &'a str,
    /// The token's subject: the one person or workload that may never approve it.
    pub requester: &'a str,
    pub connection: &'a str,
    pub kind: OperationKind,
    /// Masked.
    pub summary: String,
    pub fingerprint: String,
    /// Masked; see [`Ask::detail`].
    pub detail: Option<String>,
    pub reason: Option<String>,
    /// Why the caller could not show the operation whole (see [`Ask::unshown`]); the summary's
    /// and the detail's lengths are checked here too.
    pub unshown: Option<String>,
    /// What ends a hold early, where the protocol can tell (PostgreSQL: a cancel, the client
    /// leaving; an HTTP request's hold ends with its connection, which drops it).
    pub abandon: Option<&'a Abandon>,
}

/// Longest an operation is held waiting for a decision, whatever the rule's timeout.
pub const MAX_HOLD: Duration = Duration::from_secs(24 * 3600);

/// How long a request waits for a decision. A held operation stops waiting at [`MAX_HOLD`], and
/// its request expires then too, so approvers are not shown a later expiry that no decision
/// could meet (the store would mark it Expired when the wait ends).
fn request_timeout(mode: ApprovalMode, configured: Duration) -> Duration {
    match mode {
        ApprovalMode::Hold => configured.min(MAX_HOLD),
        ApprovalMode::Defer => configured,
    }
}

/// Longest approval detail, in characters as stored ([`visible`]): the ApprovalRequest's limit.
/// A longer one is not asked: an approval covers only what its approver reads.
pub const MAX_DETAIL_CHARS: usize = 8192;
/// `text` with the characters that change how it reads without showing themselves written out
/// (`\u{202e}`), line breaks kept: what the approvals CLI shows, applied before storing, as
/// `kubectl get approvalrequests` prints what an agent shaped (a path, a query, SQL) as it is.
pub fn visible(text: &str) -> String {
    crate::approval::cli::escape_controls(text, true)
}

/// Longest approval summary, in characters as stored ([`visible`]): the ApprovalRequest's
/// limit. A longer one is not asked.
pub const MAX_SUMMARY_CHARS: usize = 4096;

/// `text` as an approval's detail: the agent's `token` hidden ([`hide_token`]), [`visible`].
pub fn detail_hiding(text: &str, token: Option<&str>) -> String {
    visible(&hide_token(text.to_string(), token))
}

/// Why an approval of this summary and detail is not asked, if it is not: an approver would
/// be shown less than the approval covers (the ApprovalRequest holds only so much).
fn unshown(summary: &str, detail: Option<&str>) -> Option<String> {
    let summary = visible(summary).chars().count();
    if summary > MAX_SUMMARY_CHARS {
        return Some(format!(
            "the operation is {summary} characters long, and an approver is shown at most {MAX_SUMMARY_CHARS}: an approval covers only what its approver reads; send a shorter one"
        ));
    }
    let detail = detail.map_or(0, |d| visible(d).chars().count());
    if detail > MAX_DETAIL_CHARS {
        return Some(format!(
            "the operation's details (headers, query, body or parameters) are {detail} characters long, and an approver is shown at most {MAX_DETAIL_CHARS}: an approval covers only what its approver reads; send a smaller one"
        ));
    }
    None
}

/// `text` with every spelling of the agent's `token` (raw or escaped: see [`SecretFinder`]) as
/// `[REDACTED]`: an agent may send its token in a query, a body or SQL, and what approvers read
/// is not a recording, which hides it on its own (tokens shorter than 16 characters are not
/// searched for, as there).
pub fn hide_token(text: String, token: Option<&str>) -> String {
    hide_spellings(text, token_finder(token).as_deref())
}

/// The finder [`hide_spellings`] hides the agent's `token` with, where it is long enough.
pub fn token_finder(token: Option<&str>) -> Option<Arc<SecretFinder>> {
    token
        .filter(|t| t.len() >= crate::recording::MIN_HIDDEN_BYTES)
        .and_then(|t| SecretFinder::new(&[t.as_bytes()]))
}

/// [`hide_token`] with the token's finder built once ([`token_finder`]).
pub fn hide_spellings(text: String, finder: Option<&SecretFinder>) -> String {
    match finder.and_then(|f| f.replaced(text.as_bytes(), b"[REDACTED]")) {
        // Spellings begin and end on ASCII bytes: the text stays UTF-8.
        Some(hidden) => String::from_utf8_lossy(&hidden).into_owned(),
        None => text,
    }
}

/// Asks the store (in Hold mode waiting for the decision, bounded by the rule's timeout), and
/// counts the outcome.
pub async fn ask(store: Option<&Arc<Approvals>>, metrics: &Metrics, q: Question<'_>, now: i64) -> Outcome {
    let outcome = ask_store(store, q, now).await;
    metrics
        .approval_outcomes
        .with_label_values(&[outcome.label()])
        .inc();
    if let Some(Ok(pending)) = match store {
        Some(store) => Some(store.pending_async().await),
        None => None,
    } {
        metrics.approvals_pending.set(pending as i64);
    }
    outcome
}

async fn ask_store(store: Option<&Arc<Approvals>>, q: Question<'_>, now: i64) -> Outcome {
    let Some(store) = store else {
        return Outcome::Unavailable("approvals are not available on this gateway".into());
    };
    let still_current = q.still_current;
    let Some(spec) = rule_spec(q.policy, q.rule) else {
        return Outcome::Unavailable(format!("rule {} has no approval block", q.rule.name));
    };
    let timeout = request_timeout(
        spec.mode,
        q.rule
            .approval_timeout
            .unwrap_or(q.cfg.gateway.approvals.default_timeout),
    );
    let mut grant = spec.grant.clone();
    if let Some(d) = q.rule.grant_duration {
        grant.duration = Some(agentgate_crds::common::DurationString(format!(
            "{}s",
            d.as_secs()
        )));
    }
    let grant_limit = crate::approval::grant_length(&grant, q.cfg.gateway.approvals.max_grant);
    let ask = Ask {
        identity: q.identity.to_string(),
        requester: q.requester.to_string(),
        connection: q.connection.to_string(),
        kind: q.kind,
        // Within the ApprovalRequest's limits (see `unshown`).
        summary: visible(&q.summary),
        fingerprint: q.fingerprint,
        detail: q.detail.as_deref().map(visible),
        policy: q.policy.name.clone(),
        rule: q.rule.name.clone(),
        rule_digest: rule_digest(q.policy, q.rule, q.cfg.connections.get(q.connection)),
        grant,
        approvers: spec.approvers.clone(),
        min_approvals: spec.min_approvals,
        reason: q.reason.map(|r| truncate(&visible(&r), MAX_REASON_BYTES)),
        // The store keeps whole seconds; one more keeps its expiry from ending a Hold early.
        timeout: timeout + Duration::from_secs(1),
        grant_limit,
        unshown: q.unshown.or_else(|| unshown(&q.summary, q.detail.as_deref())),
    };
    let ticket = match store.ask(&ask, now).await {
        Ok(t) => t,
        Err(crate::approval::ApprovalError::Unshown(why)) => return Outcome::Unavailable(why),
        Err(e) => return Outcome::Unavailable(format!("the approval store failed: {e}")),
    };
    let (request, created) = match ticket {
        Ticket::Granted { name } => return Outcome::Granted { request: name },
        Ticket::Pending { name, created } => (name, created),
    };
    let Some(_slot) = (spec.mode == ApprovalMode::Hold)
        .then(|| store.hold(&ask.identity))
        .flatten()
    else {
        // Defer mode, or too many of the identity's operations held already: answered at once,
        // and the identical request passes once approved.
        return Outcome::Pending { request, created };
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let abandoned = async {
        match q.abandon {
            Some(a) => a.wait().await,
            None => std::future::pending().await,
        }
    };
    let phase = tokio::select! {
        phase = store.wait(&request, deadline) => phase,
        () = abandoned => return Outcome::Abandoned { request },
    };
    match phase {
        ApprovalPhase::Approved if !(still_current.0)() => Outcome::Unavailable(
            "the gateway's configuration for this identity changed while the operation was held (its policies, or the identity itself); send it again: it is decided anew, and the approval, still unspent, covers it if the same approval is asked"
                .into(),
        ),
        ApprovalPhase::Approved => match store.ask(&ask, unix_now()).await {
            Ok(Ticket::Granted { name }) => Outcome::Granted { request: name },
            // Another held copy of the same operation used the Once grant first.
            Ok(Ticket::Pending { name, created }) => Outcome::Pending {
                request: name,
                created,
            },
            Err(e) => Outcome::Unavailable(format!("the approval store failed: {e}")),
        },
        ApprovalPhase::Denied => Outcome::Denied { request },
        ApprovalPhase::Pending | ApprovalPhase::Expired => Outcome::Expired { request },
        ApprovalPhase::Used => Outcome::Pending {
            request,
            created: false,
        },
    }
}

/// The decisions on a request (approver, verdict, reason, time), for the session recording.
pub async fn decisions(store: Option<&Arc<Approvals>>, request: Option<&str>) -> serde_json::Value {
    let found = match store.zip(request) {
        Some((s, name)) => s.get_async(name, unix_now()).await.ok().flatten(),
        None => None,
    };
    match found {
        Some(r) => serde_json::to_value(&r.spec.decisions).unwrap_or_default(),
        None => serde_json::Value::Null,
    }
}

fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].chars().filter(|c| !c.is_control()).collect()
}

/// The agent's stated reason in a leading SQL comment: `/* reason: INC-1234 */ DELETE ...` or
/// `-- reason: INC-1234` on the first line.
pub fn sql_reason(sql: &str) -> Option<String> {
    let s = sql.trim_start();
    let body = if let Some(rest) = s.strip_prefix("/*") {
        rest.split_once("*/")?.0
    } else if let Some(rest) = s.strip_prefix("--") {
        rest.lines().next()?
    } else {
        return None;
    };
    let body = body.trim();
    let reason = body
        .strip_prefix("reason:")
        .or_else(|| body.strip_prefix("Reason:"))?
        .trim();
    (!reason.is_empty()).then(|| truncate(reason, MAX_REASON_BYTES))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What approvers read never holds the agent's token, however the request spelled it; a
    /// short token is not searched for.
    #[test]
    fn the_agent_token_is_hidden_from_approvers_in_any_spelling() {
        let token = "c3Zj+OjAw/Q0FOQVJZ==secret";
        let text = "GET /cb?t=c3Zj%2BOjAw%2FQ0FOQVJZ%3D%3Dsecret body: {\"t\":\"c3Zj\\u002bOjAw\\/Q0FOQVJZ==secret\"} é";
        assert_eq!(
            hide_token(text.to_string(), Some(token)),
            "GET /cb?t=[REDACTED] body: {\"t\":\"[REDACTED]\"} é"
        );
        assert_eq!(hide_token("a short-one".into(), Some("short-one")), "a short-one");
        assert_eq!(hide_token("no token".into(), None), "no token");
    }

    /// An approval covers only what its approver reads: a summary or a detail longer than the
    /// ApprovalRequest holds, counted as stored (control characters written out), is not asked.
    #[test]
    fn what_an_approver_could_not_read_whole_is_not_asked() {
        assert_eq!(
            unshown("DELETE FROM t WHERE id = 1", Some("body: {\"a\": 1}\n")),
            None
        );
        let bells = "\u{7}".repeat(2000);
        assert_eq!(visible(&bells).chars().count(), 10_000);
        let why = unshown("POST /x", Some(&bells)).unwrap();
        assert!(
            why.contains("10000 characters") && why.contains("send a smaller one"),
            "{why}"
        );
        let why = unshown(&"s".repeat(MAX_SUMMARY_CHARS + 1), None).unwrap();
        assert!(why.contains("send a shorter one"), "{why}");
        assert_eq!(
            unshown(
                &"s".repeat(MAX_SUMMARY_CHARS),
                Some(&"d".repeat(MAX_DETAIL_CHARS))
            ),
            None
        );
    }

    #[test]
    fn a_held_request_expires_when_its_wait_ends() {
        let two_days = Duration::from_secs(48 * 3600);
        assert_eq!(request_timeout(ApprovalMode::Hold, two_days), MAX_HOLD);
        assert_eq!(request_timeout(ApprovalMode::Defer, two_days), two_days);
        let minutes = Duration::from_secs(600);
        assert_eq!(request_timeout(ApprovalMode::Hold, minutes), minutes);
    }

    fn config(extra: &str, suspend: bool) -> GatewayConfig {
        let dir = tempfile::tempdir().unwrap();
        let yaml = format!(
            "apiVersion: agentgate.dev/v1alpha1\nkind: AgentGateway\nmetadata: {{name: gw, namespace: ns}}\n\
            spec: {{listeners: [{{name: http, protocol: HTTP, port: 18080}}]}}\n---\n\
            apiVersion: agentgate.dev/v1alpha1\nkind: AgentIdentity\nmetadata: {{name: ci, namespace: ns}}\n\
            spec: {{issuer: 'https://idp.example', audiences: [agentgate], suspend: {suspend}, match: {{claims: {{sub: ci}}}}}}\n---\n\
            apiVersion: agentgate.dev/v1alpha1\nkind: Connection\nmetadata: {{name: api, namespace: ns}}\n\
            spec: {{gatewayRef: {{name: gw}}, type: HTTP, endpoint: 'http://127.0.0.1:9', route: {{pathPrefix: /api}}}}\n---\n\
            apiVersion: agentgate.dev/v1alpha1\nkind: AccessPolicy\nmetadata: {{name: ci-api, namespace: ns}}\n\
            spec: {{subjects: {{identities: [ci]}}, connections: [api], rules: [{{name: read, action: Allow, http: {{methods: [GET]}}}}]}}\n{extra}"
        );
        std::fs::write(dir.path().join("all.yaml"), yaml).unwrap();
        crate::config::load(&crate::config::LoadOptions {
            manifests: dir.path().to_path_buf(),
            ..Default::default()
        })
        .unwrap()
    }

    /// A held operation's decision stands across a reload that leaves its identity and the
    /// policies applying to it as they were; a suspension or a change to one of those policies
    /// ends it.
    #[test]
    fn decisions_stand_across_reloads_that_do_not_concern_them() {
        let then = config("", false);
        let alike = |now: &GatewayConfig| decides_alike(&then, now, "ci", &[], "api");
        assert!(alike(&config("", false)));
        // Another identity's policy.
        let other = "---\napiVersion: agentgate.dev/v1alpha1\nkind: AccessPolicy\nmetadata: {name: others, namespace: ns}\n\
            spec: {subjects: {groups: [someone-else]}, connections: [api], rules: [{name: all, action: Allow, http: {methods: [POST]}}]}\n";
        assert!(alike(&config(other, false)));
        // A Deny for this identity, or its suspension.
        let deny = other
            .replace("groups: [someone-else]", "identities: [ci]")
            .replace("action: Allow", "action: Deny");
        assert!(!alike(&config(&deny, false)));
        assert!(!alike(&config("", true)));
    }

    /// A grant names the rule as it was and where its connection led: an edit of either under
    /// the same names is another digest, so the approval no longer backs operations.
    #[test]
    fn the_rule_digest_follows_the_rule_and_the_endpoint() {
        let digest = |cfg: &GatewayConfig| {
            let p = &cfg.policies[0];
            rule_digest(p, &p.rules[0], cfg.connections.get("api"))
        };
        let base = config("", false);
        assert_eq!(digest(&base), digest(&config("", false)));
        assert_eq!(digest(&base).len(), 32);
        // Another rule under the same name: its conditions widened.
        let mut widened = config("", false);
        let p = &mut widened.policies[0];
        p.spec.rules[0].http.as_mut().unwrap().methods.clear();
        assert_ne!(digest(&widened), digest(&base));
        // The connection pointed elsewhere, or given another credential or TLS.
        let mut moved = config("", false);
        moved.connections.get_mut("api").unwrap().endpoint.host = "attacker.example".into();
        assert_ne!(digest(&moved), digest(&base));
        let mut rekeyed = config("", false);
        rekeyed.connections.get_mut("api").unwrap().credential_source =
            Some("Bearer secret=admin/token".into());
        assert_ne!(digest(&rekeyed), digest(&base));
        let mut unverified = config("", false);
        unverified
            .connections
            .get_mut("api")
            .unwrap()
            .insecure_skip_verify = true;
        assert_ne!(digest(&unverified), digest(&base));
        // A description is no part of what was approved.
        let mut described = config("", false);
        described.policies[0].spec.rules[0].description = Some("reads".into());
        assert_eq!(digest(&described), digest(&base));
    }

    /// The agent's token is hidden from the detail wherever it stands in it.
    #[test]
    fn details_never_keep_the_agent_s_token() {
        let token = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhZ2VudCJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ";
        let text = format!("{}{token}{}", "a".repeat(MAX_DETAIL_CHARS - 30), "b".repeat(100));
        let shown = detail_hiding(&text, Some(token));
        assert!(
            !shown.contains("eyJ") && shown.contains("a[REDACTED]b"),
            "{shown}"
        );
    }

    /// What approvers read shows the characters that would reorder or hide text.
    #[test]
    fn approvers_see_hidden_characters_written_out() {
        assert_eq!(
            visible("DELETE /users/\u{202e}1\u{200b}2\tx\nnext"),
            "DELETE /users/\\u{202e}1\\u{200b}2\\u{9}x\nnext"
        );
        assert_eq!(visible("plain /path?q=1"), "plain /path?q=1");
    }

    #[test]
    fn fingerprints_separate_their_parts() {
        assert_ne!(fingerprint(&[b"ab", b"c"]), fingerprint(&[b"a", b"bc"]));
        assert_eq!(fingerprint(&[b"x"]).len(), 64);
    }

    #[test]
    fn reasons_come_from_a_leading_comment() {
        assert_eq!(
            sql_reason("/* reason: INC-1234 */ DELETE FROM t").as_deref(),
            Some("INC-1234")
        );
        assert_eq!(
            sql_reason("-- reason: cleanup\nDELETE FROM t").as_deref(),
            Some("cleanup")
        );
        assert_eq!(sql_reason("DELETE FROM t /* reason: x */"), None);
        assert_eq!(sql_reason("/* just a comment */ SELECT 1"), None);
    }
}
