//! `ApprovalRequest`: an operation waiting for a human, and the humans' decisions.

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{CommonStatus, DNS_LABEL_PATTERN, DNS_SUBDOMAIN_PATTERN};
use crate::policy::{Approvers, Grant};

/// A request for a human decision, created by a gateway when a RequireApproval rule matches.
/// Approvers decide by adding their entry to `spec.decisions`, keyed by their own user name:
/// `kubectl patch approvalrequest NAME --type merge -p '{"spec":{"decisions":{"alice@example.com":{"state":"Approved","reason":"INC-1234"}}}}'`.
/// A merge patch on a map adds one key without touching the others, so several approvers can decide
/// independently, and an admission policy can check that each key equals the requesting user.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "agentgate.dev",
    version = "v1alpha1",
    kind = "ApprovalRequest",
    plural = "approvalrequests",
    shortname = "agapr",
    category = "agentgate",
    namespaced,
    doc = "ApprovalRequest is an operation held for a human decision, created by a gateway when a RequireApproval rule matches.",
    status = "ApprovalRequestStatus",
    printcolumn = r#"{"name":"Identity","type":"string","jsonPath":".spec.identity"}"#,
    printcolumn = r#"{"name":"Connection","type":"string","jsonPath":".spec.connection"}"#,
    printcolumn = r#"{"name":"Operation","type":"string","jsonPath":".spec.operation.summary"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Expires","type":"date","jsonPath":".spec.expiresAt"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    // Decisions are evidence once they have been acted on: after the request left Pending no entry
    // changes or goes, and none is added, except that while its grant stands an approval may be
    // withdrawn (Approved to Denied) and a denial added, either of which ends the grant. Otherwise
    // an approver could rewrite who approved an operation that already ran.
    validation = kube::core::Rule::new(concat!(
        "!has(oldSelf.status) || !has(oldSelf.status.phase) || oldSelf.status.phase == 'Pending' || (",
        "(!has(oldSelf.spec.decisions) || oldSelf.spec.decisions.all(k, has(self.spec.decisions) && k in self.spec.decisions ",
        "&& (self.spec.decisions[k] == oldSelf.spec.decisions[k] || (oldSelf.status.phase == 'Approved' ",
        "&& oldSelf.spec.decisions[k].state == 'Approved' && self.spec.decisions[k].state == 'Denied')))) ",
        "&& (!has(self.spec.decisions) || self.spec.decisions.all(k, (has(oldSelf.spec.decisions) && k in oldSelf.spec.decisions) ",
        "|| (oldSelf.status.phase == 'Approved' && self.spec.decisions[k].state == 'Denied'))))"
    ))
    .message("decisions stand once the request is decided: while its grant stands only a denial may be added or an approval withdrawn (Approved to Denied), and nothing changes after the request ended")
)]
#[serde(rename_all = "camelCase")]
// The requester too: an approver who rewrote it could approve their own request. The approvers:
// one who added themselves could decide. And the expiry and the agent's stated reason, which
// approvers judge by.
#[x_kube(validation = kube::core::Rule::new("self.identity == oldSelf.identity && self.requester == oldSelf.requester && self.connection == oldSelf.connection && self.operation == oldSelf.operation && self.policy == oldSelf.policy && self.grant == oldSelf.grant && self.expiresAt == oldSelf.expiresAt && has(self.reason) == has(oldSelf.reason) && (!has(self.reason) || self.reason == oldSelf.reason) && has(self.approvers) == has(oldSelf.approvers) && (!has(self.approvers) || self.approvers == oldSelf.approvers)").message("only decisions may change after creation"))]
pub struct ApprovalRequestSpec {
    /// The AgentIdentity that asked.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN_PATTERN))]
    pub identity: String,
    /// The token subject of the caller, so that it can be refused as its own approver.
    #[schemars(length(min = 1, max = 1024))]
    pub requester: String,
    /// The Connection the operation targets.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN_PATTERN))]
    pub connection: String,
    /// The operation, with sensitive values masked.
    pub operation: OperationSummary,
    /// The policy and rule that asked for approval.
    pub policy: PolicyRuleRef,
    /// What an approval grants.
    pub grant: Grant,
    /// Why the agent says it needs this (from the `Agentgate-Reason` header or a leading SQL comment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub reason: Option<String>,
    /// When the request expires if not decided (RFC 3339).
    #[schemars(extend("format" = "date-time"))]
    pub expires_at: String,
    /// Who may decide: the approvers of the rule that asked, as the rule stood when the request was
    /// made. The chart's admission policy admits a decision only from one of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approvers: Option<Approvers>,
    /// Decisions by approver user name. Each approver writes only their own entry.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 16))]
    pub decisions: BTreeMap<String, Decision>,
}

/// Summary of the operation waiting for approval.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OperationSummary {
    /// Protocol of the operation.
    pub kind: OperationKind,
    /// Human-readable summary with values masked, e.g. `DELETE FROM orders WHERE id = $1`.
    #[schemars(length(min = 1, max = 4096))]
    pub summary: String,
    /// Fingerprint of the exact operation; a deferred retry must match it.
    #[schemars(length(min = 8, max = 128), regex(pattern = r"^[0-9a-f]+$"))]
    pub fingerprint: String,
    /// What the approval covers beyond the summary, masked as the recording is: an HTTP or
    /// Kubernetes request's query and body (the approver sees what the fingerprint binds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 8192))]
    pub detail: Option<String>,
}

/// Protocol of an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum OperationKind {
    #[serde(rename = "HTTP")]
    Http,
    Kubernetes,
    #[serde(rename = "SQL")]
    Sql,
}

/// A rule of a policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRuleRef {
    /// AccessPolicy name.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN_PATTERN))]
    pub name: String,
    /// Rule name within the policy.
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS_LABEL_PATTERN))]
    pub rule: String,
    /// SHA-256 (32 hex digits) of the rule as it was when the request was made (its conditions
    /// and approval terms) and of the connection's endpoint: an approval backs operations only
    /// while both are unchanged, so editing a rule under the same name does not widen a grant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9a-f]{32}$"))]
    pub digest: Option<String>,
}

/// One approver's decision.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    /// `Approved` or `Denied`.
    pub state: DecisionState,
    /// Why; for example a ticket number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub reason: Option<String>,
    /// When the decision was made (RFC 3339); filled in by the tools when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub decided_at: Option<String>,
}

/// An approver's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum DecisionState {
    Approved,
    Denied,
}

/// Lifecycle phase of a request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum ApprovalPhase {
    #[default]
    Pending,
    Approved,
    Denied,
    Expired,
    /// A Once grant that has been used.
    Used,
}

/// Observed state of a request.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
// Every gateway's service account may write the status subresource (to spend Once grants), so the
// API server itself keeps what has ended ended: otherwise one compromised gateway could re-arm a
// used grant, revive a denied or expired request, or lengthen a grant for another.
#[x_kube(validation = kube::core::Rule::new("!has(oldSelf.phase) || !(oldSelf.phase in ['Denied', 'Expired', 'Used']) || (has(self.phase) && self.phase == oldSelf.phase)").message("an ApprovalRequest that has ended (Denied, Expired, Used) stays ended"))]
#[x_kube(validation = kube::core::Rule::new("!has(oldSelf.usedAt) || (has(self.usedAt) && self.usedAt == oldSelf.usedAt)").message("usedAt is set once"))]
#[x_kube(validation = kube::core::Rule::new("!has(oldSelf.grantExpiresAt) || (has(self.grantExpiresAt) && self.grantExpiresAt == oldSelf.grantExpiresAt)").message("grantExpiresAt is set once"))]
pub struct ApprovalRequestStatus {
    /// Conditions and observed generation.
    #[serde(flatten)]
    pub common: CommonStatus,
    /// Where the request is in its lifecycle.
    #[serde(default)]
    pub phase: ApprovalPhase,
    /// Distinct approvers who approved so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approvals: Option<i32>,
    /// When the request was decided (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<String>,
    /// When a Window grant ends, or an unused Once grant lapses (RFC 3339); capped by the
    /// gateway's `approvals.maxGrant`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_expires_at: Option<String>,
    /// When a Once grant was used (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_at: Option<String>,
}
