//! Kubernetes API: what a request to an API server asks for, in the API server's own terms
//! ([`request_info`]).

pub mod request_info;

pub use request_info::{RequestInfo, RequestInfoError, derive};

/// Subresources that open a shell, a stream or a tunnel into a workload or node: `pods/exec`,
/// `pods/attach`, `pods/portforward` (SPDY or WebSocket upgrades) and `pods/proxy`,
/// `services/proxy`, `nodes/proxy` (arbitrary HTTP, upgrades included, to the target). The gateway
/// refuses them in this version.
///
/// `pods/ephemeralcontainers` executes too, but it is an ordinary write (`update` or `patch` of the
/// pod's ephemeral containers, then `exec` into them), so it is not listed here: a policy allows or
/// denies it like any other subresource.
pub const EXEC_LIKE_SUBRESOURCES: &[&str] = &["exec", "attach", "portforward", "proxy"];

/// Whether a subresource needs a connection upgrade or tunnel: one of [`EXEC_LIKE_SUBRESOURCES`].
/// Case-sensitive, as the API server's routes are.
pub fn is_streaming_subresource(sub: &str) -> bool {
    EXEC_LIKE_SUBRESOURCES.contains(&sub)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaming_subresources() {
        for sub in ["exec", "attach", "portforward", "proxy"] {
            assert!(is_streaming_subresource(sub), "{sub}");
        }
        for sub in [
            "log",
            "status",
            "scale",
            "ephemeralcontainers",
            "eviction",
            "Exec",
            "",
            "exec ",
        ] {
            assert!(!is_streaming_subresource(sub), "{sub}");
        }
    }
}
