use std::time::Duration;

use agentgate_crds::DurationString;
use agentgate_crds::approval::{ApprovalPhase, DecisionState, OperationKind};
use agentgate_crds::policy::{ApprovalMode, ApprovalRule, Approvers, Grant, GrantType};

use super::*;

/// Tests run at the real time so that opening the store (which expires and prunes against the
/// clock) agrees with them.
fn start() -> i64 {
    unix_now()
}
const HOUR: Duration = Duration::from_secs(3600);

fn ask(fingerprint: &str) -> Ask {
    Ask {
        identity: "ci-agent".into(),
        requester: "spiffe://example.org/ci".into(),
        connection: "orders-db".into(),
        kind: OperationKind::Sql,
        summary: "DELETE FROM orders WHERE id = $1".into(),
        fingerprint: fingerprint.into(),
        detail: None,
        policy: "orders".into(),
        rule: "writes".into(),
        rule_digest: "0".repeat(32),
        grant: Grant::default(),
        approvers: agentgate_crds::policy::Approvers {
            users: vec![],
            groups: vec!["dba".into()],
        },
        min_approvals: 1,
        reason: Some("INC-1".into()),
        timeout: Duration::from_secs(600),
        grant_limit: 30 * 24 * HOUR,
        unshown: None,
    }
}

fn window(ask: Ask, duration: &str) -> Ask {
    Ask {
        grant: Grant {
            r#type: GrantType::Window,
            duration: Some(DurationString(duration.into())),
        },
        ..ask
    }
}

fn rule(min: i32) -> ApprovalRule {
    ApprovalRule {
        approvers: Approvers {
            users: vec!["alice".into(), "bob".into()],
            groups: vec!["dba".into()],
        },
        min_approvals: min,
        mode: ApprovalMode::Hold,
        grant: Grant::default(),
        timeout: None,
    }
}

fn user(name: &str) -> Approver {
    Approver {
        user: name.into(),
        groups: Vec::new(),
        subject: format!("sub-{name}"),
    }
}

fn open(dir: &tempfile::TempDir) -> Arc<Approvals> {
    Approvals::open(dir.path().join("approvals"), "agents").unwrap()
}

fn pending_name(t: Ticket) -> String {
    match t {
        Ticket::Pending { name, created: true } => name,
        other => panic!("expected a new pending request, got {other:?}"),
    }
}

fn approve(a: &Approvals, name: &str, who: &str, min: i32, now: i64) -> Result<ApprovalRequest, DecideError> {
    a.decide(
        name,
        &user(who),
        DecisionState::Approved,
        Some("ok".into()),
        Some(&rule(min)),
        8 * HOUR,
        now,
    )
}

fn phase_of(a: &Approvals, name: &str, now: i64) -> ApprovalPhase {
    a.get(name, now).unwrap().status.unwrap().phase
}

/// An agent looping over distinct operations files at most [`MAX_PENDING_PER_IDENTITY`]
/// requests; identical asks still find theirs, other identities are not affected, and a decision
/// makes room.
/// Identical asks share one request, so the pending cap does not bound held operations: their
/// own cap does, per identity, and a slot is given back when its operation stops waiting.
#[test]
fn held_operations_per_identity_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir);
    let mut slots: Vec<HeldSlot> = (0..MAX_HELD_PER_IDENTITY)
        .map(|_| a.hold("ci-agent").expect("room"))
        .collect();
    assert!(a.hold("ci-agent").is_none());
    let other = a.hold("reporting").expect("another identity has its own");
    slots.pop();
    let again = a.hold("ci-agent").expect("a slot given back");
    assert!(a.hold("ci-agent").is_none());
    drop((slots, again, other));
    assert!(a.held.lock().unwrap().is_empty(), "nothing left counted");
}

/// Two callers sharing an identity: one that is also an approver cannot approve the other's
/// request and spend it on its own identical operation, nor join it while it waits.
#[test]
fn grants_and_pending_requests_belong_to_their_caller() {
    let now = start();
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir);
    let alice = Ask {
        requester: "sub-alice".into(),
        ..ask("f1")
    };
    let bob = Ask {
        requester: "sub-bob".into(),
        ..ask("f1")
    };
    let filed = pending_name(a.request(&alice, now).unwrap());
    // Bob's identical operation files its own request rather than joining Alice's.
    let bobs = pending_name(a.request(&bob, now).unwrap());
    assert_ne!(filed, bobs);
    // Bob approves Alice's (he is not its requester): only Alice's operation may use it.
    approve(&a, &filed, "bob", 1, now).unwrap();
    assert!(matches!(
        a.request(&bob, now + 1).unwrap(),
        Ticket::Pending { created: false, .. }
    ));
    assert_eq!(
        a.request(&alice, now + 1).unwrap(),
        Ticket::Granted { name: filed }
    );
    // Bob cannot approve his own.
    assert!(approve(&a, &bobs, "bob", 1, now).is_err());
}

#[test]
fn pending_requests_per_identity_are_capped() {
    let t0 = start();
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir);
    let names: Vec<String> = (0..MAX_PENDING_PER_IDENTITY)
        .map(|i| pending_name(a.request(&ask(&format!("{i:08x}")), t0).unwrap()))
        .collect();
    let err = a.request(&ask("ffffffff"), t0).unwrap_err().to_string();
    assert!(err.contains("ci-agent has 32 waiting already"), "{err}");
    assert!(matches!(
        a.request(&ask("00000000"), t0).unwrap(),
        Ticket::Pending { created: false, .. }
    ));
    let other = Ask {
        identity: "reporting".into(),
        ..ask("ffffffff")
    };
    pending_name(a.request(&other, t0).unwrap());
    approve(&a, &names[0], "alice", 1, t0).unwrap();
    pending_name(a.request(&ask("ffffffff"), t0).unwrap());
    // Once they expire they count no more, for another target of the same identity too.
    let later = t0 + 601;
    let elsewhere = Ask {
        connection: "billing-db".into(),
        ..ask("eeeeeeee")
    };
    pending_name(a.request(&elsewhere, later).unwrap());
}

/// Requests that expire as fast as they are filed do not grow the store without bound: an
/// identity keeps at most MAX_KEPT_PER_IDENTITY, finished ones included; the oldest finished
/// ones make room, and a store of waiting ones only refuses.
#[test]
fn requests_kept_per_identity_are_capped() {
    let mut t = start();
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir);
    let short = |fp: String| Ask {
        timeout: Duration::from_secs(1),
        ..ask(&fp)
    };
    let mut names = Vec::new();
    while names.len() < MAX_KEPT_PER_IDENTITY {
        for _ in 0..MAX_PENDING_PER_IDENTITY.min(MAX_KEPT_PER_IDENTITY - names.len()) {
            let fp = format!("{:08x}", names.len());
            names.push(pending_name(a.request(&short(fp), t).unwrap()));
        }
        t += 2;
    }
    let files = || std::fs::read_dir(dir.path().join("approvals")).unwrap().count();
    let before = files();
    let newest = pending_name(a.request(&short("ffffffff".into()), t).unwrap());
    // The oldest finished one made room: the store did not grow.
    assert_eq!(files(), before);
    // One of the first to end is gone (they ended together); every later one is kept.
    let kept = |names: &[String]| names.iter().filter(|n| a.get(n, t).is_some()).count();
    assert_eq!(
        kept(&names[..MAX_PENDING_PER_IDENTITY]),
        MAX_PENDING_PER_IDENTITY - 1
    );
    assert_eq!(
        kept(&names[MAX_PENDING_PER_IDENTITY..]),
        names.len() - MAX_PENDING_PER_IDENTITY
    );
    assert!(a.get(&newest, t).is_some());
}

/// The store is the gateway's own: made 0700 with 0600 files; a directory anybody may write to
/// is refused, as someone else may have planted an approved request in it.
#[test]
fn the_store_directory_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let name = pending_name(store.request(&ask("f1"), start()).unwrap());
    let path = dir.path().join("approvals");
    assert_eq!(super::store::Dir::mode(&path), 0o700);
    assert_eq!(super::store::Dir::mode(&path.join(format!("{name}.json"))), 0o600);
    drop(store);
    // One of the gateway's own that others may read is made private again; a request file that
    // others may write to is not served.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o750)).unwrap();
    let file = path.join(format!("{name}.json"));
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o660)).unwrap();
    let store = Approvals::open(&path, "agents").unwrap();
    assert_eq!(super::store::Dir::mode(&path), 0o700);
    assert_eq!(store.pending(), 0);
    drop(store);
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(Approvals::open(&path, "agents").unwrap().pending(), 1);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = Approvals::open(&path, "agents").unwrap_err().to_string();
    assert!(
        err.contains("is refused: anybody may write to it (mode 777)"),
        "{err}"
    );
}

/// An approval is withdrawn by an approver's deny while its grant is unspent: the Window ends
/// at once, for the approver who gave it too; a used grant or a denial cannot be undone.
#[test]
fn an_unspent_grant_can_be_withdrawn() {
    let now = start();
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir);
    let w = window(ask("w1"), "8h");
    let name = pending_name(a.request(&w, now).unwrap());
    approve(&a, &name, "alice", 1, now).unwrap();
    assert_eq!(
        a.request(&w, now + 1).unwrap(),
        Ticket::Granted { name: name.clone() }
    );
    let deny = |who: &str| {
        a.decide(
            &name,
            &user(who),
            DecisionState::Denied,
            Some("revoked".into()),
            Some(&rule(1)),
            8 * HOUR,
            now + 2,
        )
    };
    deny("alice").unwrap();
    assert_eq!(phase_of(&a, &name, now + 2), ApprovalPhase::Denied);
    assert!(matches!(
        a.request(&w, now + 3).unwrap(),
        Ticket::Pending { created: true, .. }
    ));
    // Nothing to withdraw any more, nor can it be approved again.
    assert!(deny("bob").is_err());
    assert!(approve(&a, &name, "bob", 1, now + 4).is_err());
}

/// A link planted under a request's temporary name (a group member of a shared volume) is not
/// written through: the file it names stays as it was, and the request is written.
#[test]
fn a_planted_link_is_never_written_through() {
    let now = start();
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir);
    let name = pending_name(a.request(&ask("f1"), now).unwrap());
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "keep me").unwrap();
    let tmp = dir.path().join("approvals").join(format!("{name}.json.tmp"));
    std::os::unix::fs::symlink(&victim, &tmp).unwrap();
    approve(&a, &name, "alice", 1, now).unwrap();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
    assert_eq!(phase_of(&a, &name, now), ApprovalPhase::Approved);
}

#[test]
fn a_request_is_created_with_its_evidence_and_persisted() {
    let t0 = start();
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir);
    let name = pending_name(a.request(&ask("ab12cd34"), t0).unwrap());
    assert!(name.starts_with("ci-agent-"), "{name}");
    let suffix = name.strip_prefix("ci-agent-").unwrap();
    assert_eq!(suffix.len(), 8);
    assert!(
        suffix
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    );
    let r = a.get(&name, t0).unwrap();
    assert_eq!(r.metadata.namespace.as_deref(), Some("agents"));
    assert_eq!(r.spec.identity, "ci-agent");
    assert_eq!(r.spec.requester, "spiffe://example.org/ci");
    assert_eq!(r.spec.operation.fingerprint, "ab12cd34");
    assert_eq!(r.spec.policy.rule, "writes");
    assert_eq!(r.spec.reason.as_deref(), Some("INC-1"));
    assert_eq!(r.spec.expires_at, format_time(t0 + 600));
    assert_eq!(r.status.as_ref().unwrap().phase, ApprovalPhase::Pending);
    assert_eq!(a.pending(), 1);
    // The file on disk is the object itself, and passes the CRD schema.
    let file = dir.path().join("approvals").join(format!("{name}.json"));
    let on_disk: serde_json::Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
    assert_eq!(on_disk["kind"], "ApprovalRequest");
    assert_eq!(on_disk["apiVersion"], "agentgate.dev/v1alpha1");
    let validators: std::collections::HashMap<_, _> =
        agentgate_crds::generate::validators().into_iter().collect();
    let problems = validators["ApprovalRequest"].validate(&on_disk, None);
    assert!(problems.is_empty(), "{problems:?}");
}

#[test]
fn duplicates_collapse_and_different_operations_do_not() {
    let t0 = start();
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir);
    let name = pending_name(a.request(&ask("aaaa1111"), t0).unwrap());
    assert_eq!(
        a.request(&ask("aaaa1111"), t0 + 5).unwrap(),
        Ticket::Pending {
            name: name.clone(),
            created: false
        }
    );
    let other = pending_name(a.request(&ask("bbbb2222"), t0 + 5).unwrap());
    assert_ne!(name, other);
    let elsewhere = Ask {
        connection: "billing-db".into(),
        ..ask("aaaa1111")
    };
    let third = pending_name(a.request(&elsewhere, t0 + 5).unwrap());
    assert_ne!(third, name);
    assert_eq!(a.list(t0 + 5).len(), 3);
}

#[test]
fn once_is_used_by_the_identical_operation_only_and_only_once() {
    let t0 = start();
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir);
    let name = pending_name(a.request(&ask("aaaa1111"), t0).unwrap());
    let r = approve(&a, &name, "alice", 1, t0 + 10).unwrap();
    let status = r.status.unwrap();
    assert_eq!(status.phase, ApprovalPhase::Approved);
    assert_eq!(status.approvals, Some(1));
    assert_eq!(status.decided_at, Some(format_time(t0 + 10)));
    assert_eq!(status.grant_expires_at, Some(format_time(t0 + 10 + 8 * 3600)));
    assert_eq!(r.spec.decisions["alice"].reason.as_deref(), Some("ok"));
    // A different operation is not covered.
    assert!(matches!(
        a.request(&ask("bbbb2222"), t0 + 11).unwrap(),
        Ticket::Pending { created: true, .. }
    ));
    // Another identity is not covered by the same fingerprint.
    let other = Ask {
        identity: "other-agent".into(),
        ..ask("aaaa1111")
    };
    assert!(matches!(
        a.request(&other, t0 + 11).unwrap(),
        Ticket::Pending { created: true, .. }
    ));
    assert_eq!(
        a.request(&ask("aaaa1111"), t0 + 12).unwrap(),
        Ticket::Granted { name: name.clone() }
    );
    let used = a.get(&name, t0 + 12).unwrap().status.unwrap();
    assert_eq!(used.phase, ApprovalPhase::Used);
    assert_eq!(used.used_at, Some(format_time(t0 + 12)));
    // Twice: a new request.
    let again = pending_name(a.request(&ask("aaaa1111"), t0 + 13).unwrap());
    assert_ne!(again, name);
}

#[test]
fn an_unused_once_grant_lapses_after_max_grant() {
    let t0 = start();
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir);
    let name = pending_name(a.request(&ask("aaaa1111"), t0).unwrap());
    a.decide(
        &name,
        &user("alice"),
        DecisionState::Approved,
        None,
        Some(&rule(1)),
        HOUR,
        t0,
    )
    .unwrap();
    assert_eq!(phase_of(&a, &name, t0 + 3599), ApprovalPhase::Approved);
    assert!(matches!(
        a.request(&ask("aaaa1111"), t0 + 3600).unwrap(),
        Ticket::Pending { created: true, .. }
    ));
    assert_eq!(phase_of(&a, &name, t0 + 3600), ApprovalPhase::Expired);
}

#[test]
fn window_covers_the_rule_until_it_ends_capped_by_max_grant() {
    let t0 = start();
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir);
    let name = pending_name(a.request(&window(ask("aaaa1111"), "30m"), t0).unwrap());
    let unshown = |fp: &str| Ask {
        unshown: Some("too long to show".into()),
        ..window(ask(fp), "30m")
    };
    assert!(matches!(
        a.request(&unshown("ffff6666"), t0 + 50),
        Err(ApprovalError::Unshown(why)) if why == "too long to show"
    ));
    let r = approve(&a, &name, "bob", 1, t0 + 100).unwrap();
    assert_eq!(
        r.status.unwrap().grant_expires_at,
        Some(format_time(t0 + 100 + 1800))
    );
    // Any operation of the rule on that connection, by that identity: one an approver could
    // not have read whole too, which is never filed on its own.
    for (fp, t) in [
        ("aaaa1111", t0 + 200),
        ("cccc3333", t0 + 300),
        ("dddd4444", t0 + 1899),
    ] {
        assert_eq!(
            a.request(&window(ask(fp), "30m"), t).unwrap(),
            Ticket::Granted { name: name.clone() }
        );
    }
    assert_eq!(
        a.request(&unshown("ffff6666"), t0 + 300).unwrap(),
        Ticket::Granted { name: name.clone() }
    );
    assert_eq!(phase_of(&a, &name, t0 + 1899), ApprovalPhase::Approved);
    // Another rule is not covered; nor is this one once edited under the same name (its
    // conditions widened, or its connection pointed elsewhere).
    let other_rule = Ask {
        rule: "deletes".into(),
        ..window(ask("aaaa1111"), "30m")
    };
    assert!(matches!(
        a.request(&other_rule, t0 + 300).unwrap(),
        Ticket::Pending { .. }
    ));
    let edited = Ask {
        rule_digest: "1".repeat(32),
        ..window(ask("aaaa1111"), "30m")
    };
    assert!(matches!(
        a.request(&edited, t0 + 300).unwrap(),
        Ticket::Pending { .. }
    ));
    // Ended (mid-session): new requests.
    let next = pending_name(a.request(&window(ask("eeee5555"), "30m"), t0 + 1900).unwrap());
    assert_ne!(next, name);
    assert_eq!(phase_of(&a, &name, t0 + 1900), ApprovalPhase::Expired);

    // A window longer than maxGrant is capped.
    let long = pending_name(a.request(&window(ask("ffff6666"), "24h"), t0 + 2000).unwrap());
    let r = a
        .decide(
            &long,
            &user("alice"),
            DecisionState::Approved,
            None,
            Some(&rule(1)),
            HOUR,
            t0 + 2000,
        )
        .unwrap();
    assert_eq!(
        r.status.unwrap().grant_expires_at,
        Some(format_time(t0 + 2000 + 3600))
    );
}

#[test]
fn two_approvers_are_needed_when_the_rule_says_so() {
    let t0 = start();
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir);
    let name = pending_name(a.request(&ask("aaaa1111"), t0).unwrap());
    let r = approve(&a, &name, "alice", 2, t0 + 1).unwrap();
    let s = r.status.unwrap();
    assert_eq!((s.phase, s.approvals), (ApprovalPhase::Pending, Some(1)));
    assert!(matches!(
        a.request(&ask("aaaa1111"), t0 + 2).unwrap(),
        Ticket::Pending { created: false, .. }
    ));
    // The same approver twice does not count twice.
    let e = approve(&a, &name, "alice", 2, t0 + 2).unwrap_err();
    assert!(matches!(e, DecideError::AlreadyDecided { .. }), "{e}");
    assert_eq!(e.to_string(), "alice has already decided this request");
    // A member of an approver group counts.
    let carol = Approver {
        user: "carol".into(),
        groups: vec!["dev".into(), "dba".into()],
        subject: "sub-carol".into(),
    };
    let r = a
        .decide(
            &name,
            &carol,
            DecisionState::Approved,
            None,
            Some(&rule(2)),
            8 * HOUR,
            t0 + 3,
        )
        .unwrap();
    let s = r.status.unwrap();
    assert_eq!((s.phase, s.approvals), (ApprovalPhase::Approved, Some(2)));
    assert_eq!(s.decided_at, Some(format_time(t0 + 3)));
}

#[test]
fn any_denial_denies() {
    let t0 = start();
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir);
    let name = pending_name(a.request(&ask("aaaa1111"), t0).unwrap());
    approve(&a, &name, "alice", 2, t0 + 1).unwrap();
    let r = a
        .decide(
            &name,
            &user("bob"),
            DecisionState::Denied,
            Some("not during the freeze".into()),
            Some(&rule(2)),
            8 * HOUR,
            t0 + 2,
        )
        .unwrap();
    let s = r.status.unwrap();
    assert_eq!((s.phase, s.approvals), (ApprovalPhase::Denied, Some(1)));
    assert_eq!(r.spec.decisions["bob"].state, DecisionState::Denied);
    // Denied is final; the same operation asks again.
    let e = approve(&a, &name, "carol", 1, t0 + 3).unwrap_err();
    assert!(
        matches!(
            e,
            DecideError::NotPending {
                phase: ApprovalPhase::Denied,
                ..
            }
        ),
        "{e}"
    );
    assert!(matches!(
        a.request(&ask("aaaa1111"), t0 + 4).unwrap(),
        Ticket::Pending { created: true, .. }
    ));
}

#[test]
fn refusals_name_their_cause() {
    let t0 = start();
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir);
    let name = pending_name(a.request(&ask("aaaa1111"), t0).unwrap());
    let decide = |who: &Approver, rule: Option<&ApprovalRule>| {
        a.decide(&name, who, DecisionState::Approved, None, rule, 8 * HOUR, t0 + 1)
            .unwrap_err()
    };
    let e = a
        .decide(
            "nope",
            &user("alice"),
            DecisionState::Approved,
            None,
            Some(&rule(1)),
            HOUR,
            t0,
        )
        .unwrap_err();
    assert_eq!(e.to_string(), "ApprovalRequest nope not found");
    let e = decide(&user("alice"), None);
    assert!(matches!(e, DecideError::RuleGone { .. }), "{e}");
    assert!(
        e.to_string().contains("rule writes of AccessPolicy orders"),
        "{e}"
    );
    let e = decide(&user("mallory"), Some(&rule(1)));
    assert!(matches!(e, DecideError::NotAnApprover { .. }), "{e}");
    assert!(e.to_string().starts_with("mallory is not an approver"), "{e}");
    // Self-approval, by subject or by user name, even for a listed approver.
    let agent = Approver {
        user: "alice".into(),
        groups: vec!["dba".into()],
        subject: "spiffe://example.org/ci".into(),
    };
    let e = decide(&agent, Some(&rule(1)));
    assert!(matches!(e, DecideError::SelfApproval { .. }), "{e}");
    let agent = Approver {
        user: "spiffe://example.org/ci".into(),
        groups: vec!["dba".into()],
        subject: "other".into(),
    };
    assert!(matches!(
        decide(&agent, Some(&rule(1))),
        DecideError::SelfApproval { .. }
    ));
    // Nothing of that changed the request.
    let r = a.get(&name, t0 + 1).unwrap();
    assert!(r.spec.decisions.is_empty());
    assert_eq!(r.status.unwrap().phase, ApprovalPhase::Pending);
}

#[test]
fn pending_requests_expire() {
    let t0 = start();
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir);
    let name = pending_name(a.request(&ask("aaaa1111"), t0).unwrap());
    assert_eq!(phase_of(&a, &name, t0 + 599), ApprovalPhase::Pending);
    assert_eq!(phase_of(&a, &name, t0 + 600), ApprovalPhase::Expired);
    let e = approve(&a, &name, "alice", 1, t0 + 601).unwrap_err();
    assert!(
        matches!(
            e,
            DecideError::NotPending {
                phase: ApprovalPhase::Expired,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("is Expired"), "{e}");
    let next = pending_name(a.request(&ask("aaaa1111"), t0 + 700).unwrap());
    assert_ne!(next, name);
    // The expiry is on disk.
    drop(a);
    let a = open(&dir);
    let r = a.get(&name, t0 + 700).unwrap();
    assert_eq!(r.status.unwrap().phase, ApprovalPhase::Expired);
}

#[test]
fn pending_and_granted_requests_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let now = unix_now();
    let (pending, once, win) = {
        let a = open(&dir);
        let pending = pending_name(a.request(&ask("aaaa1111"), now).unwrap());
        let once = pending_name(a.request(&ask("bbbb2222"), now).unwrap());
        approve(&a, &once, "alice", 1, now).unwrap();
        let w = Ask {
            rule: "window".into(),
            ..window(ask("cccc3333"), "1h")
        };
        let win = pending_name(a.request(&w, now).unwrap());
        approve(&a, &win, "alice", 1, now).unwrap();
        assert_eq!(a.pending(), 1);
        (pending, once, win)
    };
    let a = open(&dir);
    assert_eq!(a.pending(), 1);
    assert_eq!(a.list(now).len(), 3);
    assert_eq!(
        a.request(&ask("aaaa1111"), now + 1).unwrap(),
        Ticket::Pending {
            name: pending.clone(),
            created: false
        }
    );
    assert_eq!(
        a.request(&ask("bbbb2222"), now + 1).unwrap(),
        Ticket::Granted { name: once.clone() }
    );
    let w = Ask {
        rule: "window".into(),
        ..window(ask("dddd4444"), "1h")
    };
    assert_eq!(a.request(&w, now + 1).unwrap(), Ticket::Granted { name: win });
    // Still decidable after the restart.
    approve(&a, &pending, "bob", 1, now + 2).unwrap();
    drop(a);
    let a = open(&dir);
    assert_eq!(phase_of(&a, &once, now + 3), ApprovalPhase::Used);
    assert_eq!(
        a.request(&ask("aaaa1111"), now + 3).unwrap(),
        Ticket::Granted { name: pending }
    );
}

#[test]
fn one_process_per_store() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir);
    let e = Approvals::open(dir.path().join("approvals"), "agents").unwrap_err();
    assert!(matches!(e, ApprovalError::Locked { .. }), "{e}");
    drop(a);
    open(&dir);
}

#[test]
fn damaged_and_unfinished_files_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("approvals");
    let name = {
        let a = open(&dir);
        pending_name(a.request(&ask("aaaa1111"), unix_now()).unwrap())
    };
    std::fs::write(store.join("broken.json"), b"{not json").unwrap();
    std::fs::write(store.join("x-00000000.json.tmp"), b"{}").unwrap();
    let copy = std::fs::read(store.join(format!("{name}.json"))).unwrap();
    std::fs::write(store.join("renamed-00000000.json"), copy).unwrap();
    let a = open(&dir);
    let names: Vec<_> = a
        .list(unix_now())
        .into_iter()
        .filter_map(|r| r.metadata.name)
        .collect();
    assert_eq!(names, vec![name]);
    assert!(!store.join("x-00000000.json.tmp").exists());
}

#[test]
fn old_finished_requests_are_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir);
    let long_ago = unix_now() - 30 * 24 * 3600;
    let old = pending_name(a.request(&ask("aaaa1111"), long_ago).unwrap());
    let recent = pending_name(a.request(&ask("bbbb2222"), unix_now()).unwrap());
    drop(a);
    let a = open(&dir);
    assert!(a.get(&old, unix_now()).is_none());
    assert!(a.get(&recent, unix_now()).is_some());
    assert!(!dir.path().join("approvals").join(format!("{old}.json")).exists());
}

#[test]
fn long_identities_still_give_valid_names() {
    let long = format!("{}.b", "a".repeat(243));
    let name = unique_name(&long, |_| false).unwrap();
    assert!(name.len() <= 253, "{}", name.len());
    assert!(name.starts_with(&"a".repeat(243)));
    assert!(!name.contains(".-"));
}

#[tokio::test]
async fn held_operations_wake_on_a_decision() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir);
    let now = unix_now();
    let name = pending_name(a.request(&ask("aaaa1111"), now).unwrap());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let waiter = {
        let a = a.clone();
        let name = name.clone();
        tokio::spawn(async move { a.wait(&name, deadline).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiter.is_finished());
    approve(&a, &name, "alice", 1, now).unwrap();
    // From the decision on record (its fsyncs can be slow on a busy disk) to the wake-up.
    let decided = std::time::Instant::now();
    let phase = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(phase, ApprovalPhase::Approved);
    assert!(decided.elapsed() < Duration::from_secs(1));
    // Already decided: at once.
    assert_eq!(a.wait(&name, deadline).await, ApprovalPhase::Approved);
    assert_eq!(a.wait("unknown", deadline).await, ApprovalPhase::Expired);
}

#[tokio::test]
async fn held_operations_wake_on_a_denial() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir);
    let now = unix_now();
    let name = pending_name(a.request(&ask("aaaa1111"), now).unwrap());
    let waiter = {
        let a = a.clone();
        let name = name.clone();
        tokio::spawn(async move {
            a.wait(&name, tokio::time::Instant::now() + Duration::from_secs(30))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    a.decide(
        &name,
        &user("bob"),
        DecisionState::Denied,
        None,
        Some(&rule(1)),
        HOUR,
        now,
    )
    .unwrap();
    assert_eq!(waiter.await.unwrap(), ApprovalPhase::Denied);
}

#[tokio::test]
async fn held_operations_time_out_and_the_request_expires() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir);
    let now = unix_now();
    let name = pending_name(a.request(&ask("aaaa1111"), now).unwrap());
    let started = tokio::time::Instant::now();
    let phase = a.wait(&name, started + Duration::from_millis(200)).await;
    assert_eq!(phase, ApprovalPhase::Expired);
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(phase_of(&a, &name, now), ApprovalPhase::Expired);
    assert_eq!(a.pending(), 0);
}

#[tokio::test]
async fn held_operations_end_at_the_request_expiry_before_their_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir);
    let short = Ask {
        timeout: Duration::from_secs(1),
        ..ask("aaaa1111")
    };
    let name = pending_name(a.request(&short, unix_now()).unwrap());
    let started = std::time::Instant::now();
    let phase = a
        .wait(&name, tokio::time::Instant::now() + Duration::from_secs(30))
        .await;
    assert_eq!(phase, ApprovalPhase::Expired);
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// Standalone, a change is fsynced while the entries lock is held. On an async worker that
/// would stall every connection the worker serves, and so would waiting for the lock. With one
/// worker thread and a disk that takes 300 ms a write, a ticking task keeps running while an
/// operation asks, an approver lists and decides, and a held operation waits.
#[tokio::test(flavor = "current_thread")]
async fn a_slow_disk_never_holds_up_the_async_worker() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir);
    let now = unix_now();
    let name = pending_name(a.request(&ask("aaaa1111"), now).unwrap());
    let Backend::Dir(store) = &a.backend else {
        unreachable!("a standalone store")
    };
    *store.slow_writes.lock().unwrap() = Duration::from_millis(300);
    let ticks = Arc::new(AtomicUsize::new(0));
    let ticker = {
        let ticks = ticks.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(5)).await;
                ticks.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let started = std::time::Instant::now();
    let (other, alice, rule) = (ask("bbbb2222"), user("alice"), rule(1));
    let (asked, listed, decided, waited, pending) = tokio::join!(
        a.ask(&other, now),
        a.list_async(now),
        a.decide_async(
            &name,
            &alice,
            DecisionState::Approved,
            None,
            Some(&rule),
            HOUR,
            now
        ),
        a.wait(&name, deadline),
        a.pending_async(),
    );
    let elapsed = started.elapsed();
    let ticked = ticks.load(Ordering::Relaxed);
    ticker.abort();
    assert!(matches!(asked.unwrap(), Ticket::Pending { created: true, .. }));
    assert!(!listed.unwrap().is_empty());
    assert_eq!(decided.unwrap().status.unwrap().phase, ApprovalPhase::Approved);
    assert_eq!(waited, ApprovalPhase::Approved);
    // Counted while the other calls run, in whatever order the blocking pool takes them: the
    // first request approved, the second not yet filed, it may be 0.
    assert!(pending.unwrap() <= 2);
    // Two writes of 300 ms, one after the other (the entries lock orders them).
    assert!(elapsed >= Duration::from_millis(600), "{elapsed:?}");
    // A worker blocked for those 600 ms would tick only before and after them.
    assert!(ticked >= 20, "the worker ticked {ticked} times in {elapsed:?}");
}

/// In a cluster every gateway's service account may write the status: what the watch brings in
/// cannot revive a request this gateway saw end (a spent Once grant made Approved again) or
/// lengthen a grant.
#[test]
fn a_status_that_revives_an_ended_request_is_not_taken_in() {
    let dir = tempfile::tempdir().unwrap();
    let now = unix_now();
    let store = open(&dir);
    let name = pending_name(store.request(&ask("f1"), now).unwrap());
    let approved = approve(&store, &name, "alice", 1, now).unwrap();
    assert_eq!(approved.status.as_ref().unwrap().phase, ApprovalPhase::Approved);
    // What the watch brings in from the API server.
    store.ingest(approved.clone());
    // Lengthening the grant is ignored.
    let mut longer = approved.clone();
    longer.status.as_mut().unwrap().grant_expires_at = Some(format_time(now + 7 * 24 * 3600));
    store.ingest(longer);
    assert_eq!(
        store.get(&name, now).unwrap().status.unwrap().grant_expires_at,
        approved.status.as_ref().unwrap().grant_expires_at
    );
    // Spent, as the API server reports it after a gateway's conditional write.
    let mut used = approved.clone();
    let status = used.status.as_mut().unwrap();
    status.phase = ApprovalPhase::Used;
    status.used_at = Some(format_time(now));
    store.ingest(used);
    // Another gateway's service account writes it back to Approved without usedAt.
    let mut rearmed = approved.clone();
    rearmed.status.as_mut().unwrap().used_at = None;
    assert_eq!(store.ingest(rearmed), Some(ApprovalPhase::Used));
    assert_eq!(phase_of(&store, &name, now), ApprovalPhase::Used);
    let again = store.request(&ask("f1"), now).unwrap();
    assert!(!matches!(again, Ticket::Granted { .. }), "{again:?}");

    // This gateway's own expiry of a held request is not the API server's word: an approval
    // the server reports afterwards (decided in the hold's last moment) is taken in.
    let other = pending_name(store.request(&ask("f2"), now).unwrap());
    let pending = store.get(&other, now).unwrap();
    store.ingest(pending);
    assert_eq!(store.expire_now(&other), ApprovalPhase::Expired);
    let decided = approve(&store, &other, "alice", 1, now);
    assert!(decided.is_err(), "expired here: {decided:?}");
    let mut from_server = store.get(&other, now).unwrap();
    let status = from_server.status.as_mut().unwrap();
    status.phase = ApprovalPhase::Approved;
    status.grant_expires_at = Some(format_time(now + 600));
    assert_eq!(store.ingest(from_server), Some(ApprovalPhase::Expired));
    assert_eq!(phase_of(&store, &other, now), ApprovalPhase::Approved);
}

/// An Approved phase that the request's own decisions do not back grants nothing: a forged
/// status (in a cluster, any writer of the status subresource; here, an edited store file), one
/// without a grant end, or one approved only by the requester.
#[test]
fn an_approved_phase_without_the_decisions_behind_it_grants_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let now = unix_now();
    let store = open(&dir);
    let name = pending_name(store.request(&ask("f1"), now).unwrap());
    drop(store);
    let file = dir.path().join("approvals").join(format!("{name}.json"));
    let original: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let until = format_time(now + 600);
    let requester = ask("f1").requester;
    // Writes `request` as the store's file, asks for its operation, and removes what the ask
    // filed anew.
    let ask_over = |request: &serde_json::Value| {
        std::fs::write(&file, serde_json::to_vec(request).unwrap()).unwrap();
        let store = open(&dir);
        let t = store.request(&ask("f1"), now).unwrap();
        drop(store);
        for f in std::fs::read_dir(dir.path().join("approvals")).unwrap() {
            let p = f.unwrap().path();
            if p != file && p.extension().is_some_and(|e| e == "json") {
                std::fs::remove_file(p).unwrap();
            }
        }
        t
    };
    for (what, decisions, grant_end) in [
        ("no decision at all", serde_json::json!({}), Some(until.clone())),
        (
            "the requester's own",
            serde_json::json!({ requester.clone(): {"state": "Approved"} }),
            Some(until.clone()),
        ),
        (
            "no grant end",
            serde_json::json!({"alice": {"state": "Approved"}}),
            None,
        ),
        (
            "an approval and a denial",
            serde_json::json!({"alice": {"state": "Approved"}, "bob": {"state": "Denied"}}),
            Some(until.clone()),
        ),
    ] {
        let mut forged = original.clone();
        forged["spec"]["decisions"] = decisions;
        forged["status"]["phase"] = "Approved".into();
        forged["status"]["grantExpiresAt"] = grant_end.map_or(serde_json::Value::Null, Into::into);
        let t = ask_over(&forged);
        assert!(!matches!(t, Ticket::Granted { .. }), "{what}: {t:?}");
    }
    // Backed by an approver's decision, yet with a status or spec the approval path did not
    // write: a spent grant made Approved again, a grant end past what the rule allows, approvers
    // or a grant type the creator chose.
    let limit = ask("f1").grant_limit.as_secs() as i64;
    type Forge = fn(&mut serde_json::Value);
    let forgeries: [(&str, Forge); 4] = [
        ("a used grant", |r| {
            r["status"]["usedAt"] = format_time(unix_now()).into()
        }),
        ("a grant end past the limit", |r| {
            r["status"]["grantExpiresAt"] = format_time(unix_now() + 2 * 365 * 24 * 3600).into()
        }),
        ("approvers the rule does not name", |r| {
            r["spec"]["approvers"] = serde_json::json!({"groups": ["everyone"]})
        }),
        ("a Window for a Once rule", |r| {
            r["spec"]["grant"] = serde_json::json!({"type": "Window", "duration": "30m"})
        }),
    ];
    assert!(limit < 2 * 365 * 24 * 3600);
    for (what, forge) in forgeries {
        let mut forged = original.clone();
        forged["spec"]["decisions"] = serde_json::json!({"alice": {"state": "Approved"}});
        forged["status"]["phase"] = "Approved".into();
        forged["status"]["grantExpiresAt"] = until.clone().into();
        forge(&mut forged);
        let t = ask_over(&forged);
        assert!(!matches!(t, Ticket::Granted { .. }), "{what}: {t:?}");
    }
    // Backed by an approver's decision, the same request grants.
    let mut backed = original.clone();
    backed["spec"]["decisions"] = serde_json::json!({"alice": {"state": "Approved"}});
    backed["status"]["phase"] = "Approved".into();
    backed["status"]["grantExpiresAt"] = until.into();
    std::fs::write(&file, serde_json::to_vec(&backed).unwrap()).unwrap();
    let store = open(&dir);
    assert_eq!(store.request(&ask("f1"), now).unwrap(), Ticket::Granted { name });
}
