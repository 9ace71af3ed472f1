use super::*;
use agentgate_crds::ApprovalRequestStatus;
use serde_json::{Value, json};

const NOW: i64 = 1_800_000_000;
const HOUR: Duration = Duration::from_secs(3600);
const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);

fn request(decisions: Value, grant: Value) -> ApprovalRequest {
    serde_json::from_value(json!({
        "apiVersion": "agentgate.dev/v1alpha1",
        "kind": "ApprovalRequest",
        "metadata": {"name": "ci-agent-1a2b3c4d", "namespace": "team", "generation": 1},
        "spec": {
            "identity": "ci-agent",
            "requester": "agent-subject",
            "connection": "orders-db",
            "operation": {"kind": "SQL", "summary": "DELETE FROM orders WHERE id = $1", "fingerprint": "ab12"},
            "policy": {"name": "db", "rule": "writes"},
            "grant": grant,
            "expiresAt": format_time(NOW + 600),
            "decisions": decisions,
        }
    }))
    .expect("valid request")
}

fn rule(min: i32, users: &[&str], groups: &[&str]) -> ApprovalRule {
    serde_json::from_value(json!({
        "approvers": {"users": users, "groups": groups},
        "minApprovals": min,
    }))
    .unwrap()
}

fn approved(by: &str) -> Value {
    json!({ by: {"state": "Approved", "reason": "INC-1"} })
}

#[test]
fn one_approval_approves_a_once_grant_capped_by_max_grant() {
    let r = request(approved("alice"), json!({"type": "Once"}));
    let e = evaluate(&r, Some(&rule(1, &[], &["dba"])), HOUR, WEEK, NOW);
    assert_eq!(e.phase, ApprovalPhase::Approved);
    assert_eq!(e.approvals, 1);
    assert_eq!(e.grant_expires_at, Some(NOW + 3600));
    assert_eq!(e.next_change, Some(NOW + 3600));
}

#[test]
fn a_window_lasts_its_duration_but_never_beyond_max_grant() {
    let r = request(approved("alice"), json!({"type": "Window", "duration": "30m"}));
    let e = evaluate(&r, Some(&rule(1, &[], &["dba"])), HOUR, WEEK, NOW);
    assert_eq!(e.grant_expires_at, Some(NOW + 1800));
    let r = request(approved("alice"), json!({"type": "Window", "duration": "5h"}));
    let e = evaluate(&r, Some(&rule(1, &[], &["dba"])), HOUR, WEEK, NOW);
    assert_eq!(e.grant_expires_at, Some(NOW + 3600));
}

#[test]
fn two_approvers_are_needed_when_the_rule_says_so() {
    let r = request(approved("alice"), json!({"type": "Once"}));
    let e = evaluate(&r, Some(&rule(2, &[], &["dba"])), HOUR, WEEK, NOW);
    assert_eq!((e.phase, e.approvals), (ApprovalPhase::Pending, 1));
    assert_eq!(e.next_change, Some(NOW + 600), "wakes at expiry");
    let r = request(
        json!({"alice": {"state": "Approved"}, "bob": {"state": "Approved"}}),
        json!({"type": "Once"}),
    );
    let e = evaluate(&r, Some(&rule(2, &[], &["dba"])), HOUR, WEEK, NOW);
    assert_eq!((e.phase, e.approvals), (ApprovalPhase::Approved, 2));
}

#[test]
fn the_requester_cannot_approve_its_own_request() {
    let r = request(approved("agent-subject"), json!({"type": "Once"}));
    let e = evaluate(&r, Some(&rule(1, &[], &["dba"])), HOUR, WEEK, NOW);
    assert_eq!((e.phase, e.approvals), (ApprovalPhase::Pending, 0));
}

#[test]
fn unlisted_users_do_not_count_when_the_rule_names_users_only() {
    let r = request(approved("mallory"), json!({"type": "Once"}));
    let e = evaluate(&r, Some(&rule(1, &["alice"], &[])), HOUR, WEEK, NOW);
    assert_eq!(e.phase, ApprovalPhase::Pending);
    let r = request(approved("alice"), json!({"type": "Once"}));
    let e = evaluate(&r, Some(&rule(1, &["alice"], &[])), HOUR, WEEK, NOW);
    assert_eq!(e.phase, ApprovalPhase::Approved);
}

#[test]
fn users_added_to_the_rule_after_the_request_do_not_count() {
    let mut r = request(approved("mallory"), json!({"type": "Once"}));
    r.spec.approvers = Some(agentgate_crds::policy::Approvers {
        users: vec!["alice".into()],
        groups: vec![],
    });
    let e = evaluate(&r, Some(&rule(1, &["alice", "mallory"], &[])), HOUR, WEEK, NOW);
    assert_eq!(e.phase, ApprovalPhase::Pending);
    r.spec.decisions = serde_json::from_value(approved("alice")).unwrap();
    let e = evaluate(&r, Some(&rule(1, &["alice", "mallory"], &[])), HOUR, WEEK, NOW);
    assert_eq!(e.phase, ApprovalPhase::Approved);
}

#[test]
fn any_denial_denies() {
    let r = request(
        json!({"alice": {"state": "Approved"}, "bob": {"state": "Denied"}}),
        json!({"type": "Once"}),
    );
    let e = evaluate(&r, Some(&rule(1, &[], &["dba"])), HOUR, WEEK, NOW);
    assert_eq!(e.phase, ApprovalPhase::Denied);
    assert_eq!(
        e.next_change,
        Some(NOW + WEEK.as_secs() as i64),
        "deleted after retention"
    );
}

#[test]
fn undecided_requests_expire_and_are_collected_after_retention() {
    let r = request(json!({}), json!({"type": "Once"}));
    let e = evaluate(&r, Some(&rule(1, &[], &["dba"])), HOUR, WEEK, NOW + 601);
    assert_eq!(e.phase, ApprovalPhase::Expired);
    assert!(!e.delete);
    let e = evaluate(
        &r,
        Some(&rule(1, &[], &["dba"])),
        HOUR,
        WEEK,
        NOW + 600 + WEEK.as_secs() as i64,
    );
    assert!(e.delete);
}

#[test]
fn a_decision_seen_after_the_expiry_approves_nothing() {
    for decisions in [approved("alice"), json!({"alice": {"state": "Denied"}})] {
        let r = request(decisions, json!({"type": "Once"}));
        let e = evaluate(&r, Some(&rule(1, &[], &["dba"])), HOUR, WEEK, NOW + 601);
        assert_eq!(e.phase, ApprovalPhase::Expired);
        assert_eq!(e.grant_expires_at, None);
    }
}

#[test]
fn a_request_whose_rule_is_gone_cannot_be_approved() {
    let r = request(approved("alice"), json!({"type": "Once"}));
    let e = evaluate(&r, None, HOUR, WEEK, NOW);
    assert_eq!(e.phase, ApprovalPhase::Pending);
}

#[test]
fn an_approved_window_expires_mid_session() {
    let mut r = request(approved("alice"), json!({"type": "Window", "duration": "30m"}));
    r.status = Some(ApprovalRequestStatus {
        phase: ApprovalPhase::Approved,
        decided_at: Some(format_time(NOW)),
        grant_expires_at: Some(format_time(NOW + 1800)),
        ..Default::default()
    });
    let e = evaluate(&r, Some(&rule(1, &[], &["dba"])), HOUR, WEEK, NOW + 1799);
    assert_eq!(e.phase, ApprovalPhase::Approved);
    let e = evaluate(&r, Some(&rule(1, &[], &["dba"])), HOUR, WEEK, NOW + 1800);
    assert_eq!(e.phase, ApprovalPhase::Expired);
}

#[test]
fn a_used_grant_stays_used() {
    let mut r = request(approved("alice"), json!({"type": "Once"}));
    r.status = Some(ApprovalRequestStatus {
        phase: ApprovalPhase::Used,
        decided_at: Some(format_time(NOW)),
        used_at: Some(format_time(NOW + 5)),
        ..Default::default()
    });
    let e = evaluate(&r, Some(&rule(1, &[], &["dba"])), HOUR, WEEK, NOW + 10);
    assert_eq!(e.phase, ApprovalPhase::Used);
    assert_eq!(e.next_change, Some(NOW + 5 + WEEK.as_secs() as i64));
}

/// A deny written after the approval withdraws the unspent grant: a Window ends at once (by the
/// approver who gave it, or another); the requester's own deny, an unlisted user's, or one on a
/// used grant changes nothing.
#[test]
fn a_deny_after_the_approval_withdraws_the_unspent_grant() {
    use ApprovalPhase::{Approved, Denied, Expired, Used};
    // A Window approved at NOW for 30 minutes, in `phase`, with `decisions`, evaluated at `at`.
    let evaluated = |decisions: Value, phase: ApprovalPhase, rule: &ApprovalRule, at: i64| {
        let mut r = request(decisions, json!({"type": "Window", "duration": "30m"}));
        r.status = Some(ApprovalRequestStatus {
            phase,
            decided_at: Some(format_time(NOW)),
            grant_expires_at: Some(format_time(NOW + 1800)),
            used_at: (phase == Used).then(|| format_time(NOW + 5)),
            ..Default::default()
        });
        evaluate(&r, Some(rule), HOUR, WEEK, at)
    };
    let withdrawn = |by: &str| json!({ by: {"state": "Denied", "reason": "revoked"} });
    let dba = rule(1, &["carol"], &["dba"]);
    let e = evaluated(withdrawn("alice"), Approved, &dba, NOW + 60);
    assert_eq!((e.phase, e.decided_at), (Denied, Some(NOW + 60)));
    assert_eq!(
        e.next_change,
        Some(NOW + 60 + WEEK.as_secs() as i64),
        "collected after retention"
    );
    let mut both = approved("alice");
    both["bob"] = json!({"state": "Denied"});
    assert_eq!(evaluated(both, Approved, &dba, NOW + 60).phase, Denied);
    // Not an approver's: the requester, or a user a users-only rule does not list.
    let requester = evaluated(withdrawn("agent-subject"), Approved, &dba, NOW + 60);
    assert_eq!(requester.phase, Approved);
    let users_only = rule(1, &["carol"], &[]);
    assert_eq!(
        evaluated(withdrawn("mallory"), Approved, &users_only, NOW + 60).phase,
        Approved
    );
    // A used grant cannot be withdrawn; an expired one has nothing left.
    assert_eq!(evaluated(withdrawn("alice"), Used, &dba, NOW + 60).phase, Used);
    assert_eq!(
        evaluated(withdrawn("alice"), Approved, &dba, NOW + 1800).phase,
        Expired
    );
}

/// The `Approved` condition follows the phase: Unknown while pending, True once approved (and
/// after a Once grant is used), False with the reason after a denial or expiry.
#[test]
fn the_approved_condition_follows_the_phase() {
    let pending = evaluate(
        &request(json!({}), json!({"type": "Once"})),
        Some(&rule(1, &[], &["dba"])),
        HOUR,
        WEEK,
        NOW,
    );
    let approved = evaluate(
        &request(approved("alice"), json!({"type": "Once"})),
        Some(&rule(1, &[], &["dba"])),
        HOUR,
        WEEK,
        NOW,
    );
    let denied = evaluate(
        &request(
            json!({"bob": {"state": "Denied", "reason": "no"}}),
            json!({"type": "Once"}),
        ),
        Some(&rule(1, &[], &["dba"])),
        HOUR,
        WEEK,
        NOW,
    );
    let expired = evaluate(
        &request(json!({}), json!({"type": "Once"})),
        Some(&rule(1, &[], &["dba"])),
        HOUR,
        WEEK,
        NOW + 601,
    );
    let cases = [
        (
            &pending,
            ConditionStatus::Unknown,
            "Pending",
            "waiting for approvers (0 approval(s) so far)".to_string(),
        ),
        (
            &approved,
            ConditionStatus::True,
            "Approved",
            format!(
                "approved by 1 approver(s); the grant ends at {}",
                format_time(NOW + 3600)
            ),
        ),
        (
            &denied,
            ConditionStatus::False,
            "Denied",
            "denied by an approver".to_string(),
        ),
        (
            &expired,
            ConditionStatus::False,
            "Expired",
            "expired: undecided in time, or the grant ran out".to_string(),
        ),
    ];
    for (e, status, reason, message) in cases {
        let c = approved_condition(e, Some(4));
        assert_eq!(
            (c.r#type, c.status, c.reason, c.message, c.observed_generation),
            ("Approved", status, reason, message, Some(4)),
            "{:?}",
            e.phase
        );
    }
    let used = Evaluation {
        phase: ApprovalPhase::Used,
        ..approved.clone()
    };
    assert_eq!(approved_condition(&used, Some(4)).status, ConditionStatus::True);
}
