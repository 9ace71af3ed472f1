//! The ApprovalRequest controller (Kubernetes mode): turns the decisions approvers patch into
//! `spec.decisions` into a phase, expires requests nobody decided and grants that ran out, and
//! deletes finished requests after the retention period. A deny written after the approval
//! withdraws a grant not yet spent.
//!
//! Who wrote a decision is established at admission: the chart's ValidatingAdmissionPolicy lets a
//! user write only the decision keyed by their own user name, only if they are in an approver group,
//! and never on their own request. Here, decisions by the requester and, when a rule lists approver
//! users but no groups, by anyone not listed, are ignored all the same (defence in depth).
//! `Used` is set by the gateway that consumed a Once grant.

use std::sync::Arc;
use std::time::Duration;

use agentgate::approval::{format_time, grant_length, parse_time, unix_now};
use agentgate_crds::approval::{ApprovalPhase, DecisionState};
use agentgate_crds::policy::ApprovalRule;
use agentgate_crds::{AccessPolicy, ApprovalRequest};
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::Error;
use crate::conditions::{self, Desired};
use crate::context::Context;
use agentgate_crds::common::ConditionStatus;

/// The controller's name in metrics and logs.
pub const CONTROLLER: &str = "approval";
/// The grant cap when the gateway of the request's connection cannot be found.
pub const DEFAULT_MAX_GRANT: Duration = Duration::from_secs(8 * 3600);
/// Pause before looking again at a request that changed while it was evaluated.
const CONFLICT_RETRY: Duration = Duration::from_millis(200);
/// Longest pause between two looks at a request.
const RESYNC: Duration = Duration::from_secs(300);

/// What the controller wants the request to look like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Evaluation {
    pub phase: ApprovalPhase,
    pub approvals: i32,
    pub decided_at: Option<i64>,
    pub grant_expires_at: Option<i64>,
    /// When something will change by itself (expiry), in Unix seconds.
    pub next_change: Option<i64>,
    /// Finished, and past the retention period: delete it.
    pub delete: bool,
}

/// Evaluates a request at `now`. `rule` is the RequireApproval rule that asked (`None` when the
/// policy or rule is gone: then nobody can approve, and the request expires).
pub fn evaluate(
    request: &ApprovalRequest,
    rule: Option<&ApprovalRule>,
    max_grant: Duration,
    retention: Duration,
    now: i64,
) -> Evaluation {
    let spec = &request.spec;
    let status = request.status.clone().unwrap_or_default();
    let expires_at = parse_time(&spec.expires_at).unwrap_or(0);
    let valid: Vec<(&String, &agentgate_crds::approval::Decision)> = spec
        .decisions
        .iter()
        .filter(|(user, _)| **user != spec.requester)
        .filter(|(user, _)| {
            rule.is_some_and(|r| {
                !r.approvers.groups.is_empty() || r.approvers.users.iter().any(|u| u == *user)
            })
        })
        // And by the approvers frozen on the request when it was made: someone added to the rule
        // later does not count for it.
        .filter(|(user, _)| {
            spec.approvers
                .as_ref()
                .is_none_or(|a| !a.groups.is_empty() || a.users.iter().any(|u| u == *user))
        })
        .collect();
    let approvals = valid
        .iter()
        .filter(|(_, d)| d.state == DecisionState::Approved)
        .count();
    let approvals = i32::try_from(approvals).unwrap_or(i32::MAX);
    let mut e = Evaluation {
        phase: status.phase,
        approvals,
        decided_at: status.decided_at.as_deref().and_then(parse_time),
        grant_expires_at: status.grant_expires_at.as_deref().and_then(parse_time),
        next_change: None,
        delete: false,
    };
    if e.phase == ApprovalPhase::Pending {
        let needed = rule.map_or(i32::MAX, |r| r.min_approvals.max(1));
        // Expiry first: a decision seen after it (patched late, or while the operator was down)
        // must not approve an operation whose agent was already told it expired.
        if expires_at <= now {
            e.phase = ApprovalPhase::Expired;
        } else if valid.iter().any(|(_, d)| d.state == DecisionState::Denied) {
            e.phase = ApprovalPhase::Denied;
            e.decided_at = Some(now);
        } else if approvals >= needed {
            e.phase = ApprovalPhase::Approved;
            e.decided_at = Some(now);
            e.grant_expires_at = Some(now.saturating_add(secs(grant_length(&spec.grant, max_grant))));
        } else {
            e.next_change = Some(expires_at);
        }
    }
    if e.phase == ApprovalPhase::Approved {
        match e.grant_expires_at {
            Some(t) if t <= now => e.phase = ApprovalPhase::Expired,
            Some(t) => e.next_change = Some(t),
            None => {}
        }
    }
    // A deny after the approval withdraws the grant while it is unspent (a Window's remaining
    // time, an unused Once), as `agentgate approvals deny` does standalone: an approver who
    // approved by mistake, or another who disagrees, ends it at once. Any deny seen here is new,
    // since a deny while Pending would have denied the request then.
    if e.phase == ApprovalPhase::Approved && valid.iter().any(|(_, d)| d.state == DecisionState::Denied) {
        e.phase = ApprovalPhase::Denied;
        e.decided_at = Some(now);
        e.next_change = None;
    }
    if matches!(
        e.phase,
        ApprovalPhase::Denied | ApprovalPhase::Expired | ApprovalPhase::Used
    ) {
        let ended = status
            .used_at
            .as_deref()
            .and_then(parse_time)
            .or(e
                .grant_expires_at
                .filter(|_| e.phase == ApprovalPhase::Expired && e.decided_at.is_some()))
            .or(e.decided_at)
            .unwrap_or(expires_at);
        let gc_at = ended.saturating_add(secs(retention));
        if gc_at <= now {
            e.delete = true;
        } else {
            e.next_change = Some(gc_at);
        }
    }
    e
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// Reconciles one ApprovalRequest.
pub async fn reconcile(request: Arc<ApprovalRequest>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.reconciling(CONTROLLER);
    ctx.stores.synced().await?;
    let ns = request
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let name = request.name_any();
    let policy = ctx
        .stores
        .policies
        .get(&ObjectRef::new(&request.spec.policy.name).within(&ns));
    let rule = policy.as_deref().and_then(|p: &AccessPolicy| {
        p.spec
            .rules
            .iter()
            .find(|r| r.name == request.spec.policy.rule)
            .and_then(|r| r.approval.clone())
    });
    let max_grant = max_grant(&ctx, &ns, &request.spec.connection);
    let now = unix_now();
    let e = evaluate(
        &request,
        rule.as_ref(),
        max_grant,
        ctx.settings.approval_retention,
        now,
    );
    let api = Api::<ApprovalRequest>::namespaced(ctx.client.clone(), &ns);
    if e.delete {
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(err) => return Err(err.into()),
        }
        return Ok(Action::await_change());
    }
    let status = request.status.clone().unwrap_or_default();
    let (conditions, condition_changed) = conditions::set(
        &status.common.conditions,
        &approved_condition(&e, request.metadata.generation),
    );
    let desired = json!({
        "observedGeneration": request.metadata.generation,
        "phase": e.phase,
        "approvals": e.approvals,
        "decidedAt": e.decided_at.map(format_time),
        "grantExpiresAt": e.grant_expires_at.map(format_time),
    });
    let current = json!({
        "observedGeneration": status.common.observed_generation,
        "phase": status.phase,
        "approvals": status.approvals.unwrap_or(0),
        "decidedAt": status.decided_at.as_deref().and_then(parse_time).map(format_time),
        "grantExpiresAt": status.grant_expires_at.as_deref().and_then(parse_time).map(format_time),
    });
    if desired != current || condition_changed {
        let mut desired = desired;
        desired["conditions"] = json!(conditions);
        tracing::info!(request = %name, namespace = %ns, phase = ?e.phase, approvals = e.approvals, "approval request updated");
        // Conditional on the version evaluated: a stale cache must never write Approved over the
        // Used a gateway has just set (that would let a Once grant be spent twice).
        let patch = json!({
            "metadata": {"resourceVersion": request.resource_version()},
            "status": desired,
        });
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {}
            // Changed meanwhile: the watch brings the new version, which is evaluated afresh.
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {
                return Ok(Action::requeue(CONFLICT_RETRY));
            }
            Err(err) => return Err(err.into()),
        }
    }
    let wait = e.next_change.map_or(RESYNC, |t| {
        Duration::from_secs(u64::try_from((t - now).max(1)).unwrap_or(1)).min(RESYNC)
    });
    Ok(Action::requeue(wait))
}

/// The `Approved` condition: Unknown while pending, True once the grant is given (Approved, or
/// a Once grant Used), False after a denial or expiry; the phase is its reason. So
/// `kubectl wait --for=condition=Approved` waits for an approval and
/// `--for=condition=Approved=false` for a denial or expiry.
pub fn approved_condition(e: &Evaluation, generation: Option<i64>) -> Desired<'static> {
    let (status, reason, message) = match e.phase {
        ApprovalPhase::Pending => (
            ConditionStatus::Unknown,
            "Pending",
            format!("waiting for approvers ({} approval(s) so far)", e.approvals),
        ),
        ApprovalPhase::Approved => (
            ConditionStatus::True,
            "Approved",
            match e.grant_expires_at {
                Some(t) => format!(
                    "approved by {} approver(s); the grant ends at {}",
                    e.approvals,
                    format_time(t)
                ),
                None => format!("approved by {} approver(s)", e.approvals),
            },
        ),
        ApprovalPhase::Used => (
            ConditionStatus::True,
            "Used",
            "approved, and the Once grant was used".to_string(),
        ),
        ApprovalPhase::Denied => (
            ConditionStatus::False,
            "Denied",
            "denied by an approver".to_string(),
        ),
        ApprovalPhase::Expired => (
            ConditionStatus::False,
            "Expired",
            "expired: undecided in time, or the grant ran out".to_string(),
        ),
    };
    Desired {
        r#type: "Approved",
        status,
        reason,
        message,
        observed_generation: generation,
    }
}

/// Failed reconciles are retried after a short pause.
pub fn error_policy(_r: Arc<ApprovalRequest>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.retry(CONTROLLER, error)
}

/// `approvals.maxGrant` of the gateway serving the request's connection.
fn max_grant(ctx: &Context, ns: &str, connection: &str) -> Duration {
    let stores = &ctx.stores;
    stores
        .connections
        .get(&ObjectRef::new(connection).within(ns))
        .and_then(|c| {
            stores
                .gateways
                .get(&ObjectRef::new(&c.spec.gateway_ref.name).within(ns))
        })
        .and_then(|g| g.spec.approvals.max_grant.to_std().ok())
        .unwrap_or(DEFAULT_MAX_GRANT)
}

#[cfg(test)]
mod tests;
