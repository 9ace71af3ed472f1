//! Unix seconds to and from the RFC 3339 strings ApprovalRequests carry.

use std::time::{SystemTime, UNIX_EPOCH};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

/// The Unix time now, in seconds.
pub fn unix_now() -> i64 {
    unix(SystemTime::now())
}

/// `t` in Unix seconds (a clock before 1970 counts as 1970).
pub fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// `2026-11-24T15:00:00Z`. Times beyond the representable range are clamped to it.
pub fn format_time(secs: i64) -> String {
    clamp(secs).to_string()
}

/// Parses an RFC 3339 time (any offset, optional fraction) to Unix seconds.
pub fn parse_time(s: &str) -> Option<i64> {
    s.parse::<Timestamp>().ok().map(|t| t.as_second())
}

/// `secs` as a Kubernetes `Time`.
pub fn kube_time(secs: i64) -> Option<Time> {
    Some(Time(clamp(secs)))
}

fn clamp(secs: i64) -> Timestamp {
    let secs = secs.clamp(Timestamp::MIN.as_second(), Timestamp::MAX.as_second());
    Timestamp::from_second(secs).unwrap_or(Timestamp::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        assert_eq!(format_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_time(1_795_532_400), "2026-11-24T15:00:00Z");
        assert_eq!(parse_time("2026-11-24T15:00:00Z"), Some(1_795_532_400));
        assert_eq!(parse_time("2026-11-24T17:00:00.5+02:00"), Some(1_795_532_400));
        assert_eq!(parse_time("yesterday"), None);
        assert_eq!(
            parse_time(&format_time(i64::MAX)),
            Some(Timestamp::MAX.as_second())
        );
    }
}
