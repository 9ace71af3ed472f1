//! Status conditions in the `metav1.Condition` shape, with `lastTransitionTime` kept while the
//! status does not change, so a resync writes nothing.

use agentgate::approval::{format_time, unix_now};
use agentgate_crds::Condition;
use agentgate_crds::common::ConditionStatus;

/// A condition to set; `observed_generation` is the object's generation it was computed from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired<'a> {
    pub r#type: &'a str,
    pub status: ConditionStatus,
    pub reason: &'a str,
    pub message: String,
    pub observed_generation: Option<i64>,
}

/// The condition list after setting `desired`, and whether anything changed.
pub fn set(current: &[Condition], desired: &Desired<'_>) -> (Vec<Condition>, bool) {
    let status = desired.status;
    let mut out: Vec<Condition> = current.to_vec();
    let existing = out.iter_mut().find(|c| c.r#type == desired.r#type);
    match existing {
        Some(c)
            if c.status == status
                && c.reason == desired.reason
                && c.message == desired.message
                && c.observed_generation == desired.observed_generation =>
        {
            (out, false)
        }
        Some(c) => {
            if c.status != status {
                c.last_transition_time = format_time(unix_now());
            }
            c.status = status;
            c.reason = desired.reason.to_string();
            c.message = desired.message.clone();
            c.observed_generation = desired.observed_generation;
            (out, true)
        }
        None => {
            out.push(Condition {
                r#type: desired.r#type.to_string(),
                status,
                observed_generation: desired.observed_generation,
                last_transition_time: format_time(unix_now()),
                reason: desired.reason.to_string(),
                message: desired.message.clone(),
            });
            (out, true)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(status: bool, message: &str) -> Desired<'static> {
        Desired {
            r#type: "Ready",
            status: status.into(),
            reason: if status { "Compiled" } else { "Invalid" },
            message: message.into(),
            observed_generation: Some(3),
        }
    }

    #[test]
    fn an_unchanged_condition_is_not_rewritten() {
        let (first, changed) = set(&[], &ready(true, "ok"));
        assert!(changed);
        let (second, changed) = set(&first, &ready(true, "ok"));
        assert!(!changed);
        assert_eq!(first, second);
    }

    #[test]
    fn the_transition_time_moves_only_when_the_status_flips() {
        let mut start = set(&[], &ready(true, "ok")).0;
        start[0].last_transition_time = "2020-01-01T00:00:00Z".into();
        let (same_status, changed) = set(&start, &ready(true, "other message"));
        assert!(changed);
        assert_eq!(same_status[0].last_transition_time, "2020-01-01T00:00:00Z");
        let (flipped, _) = set(&start, &ready(false, "spec.x: bad"));
        assert_ne!(flipped[0].last_transition_time, "2020-01-01T00:00:00Z");
        assert_eq!(flipped[0].status, ConditionStatus::False);
        assert_eq!(flipped[0].message, "spec.x: bad");
    }
}
