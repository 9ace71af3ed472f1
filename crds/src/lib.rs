//! The `agentgate.dev/v1alpha1` API.
//!
//! This crate is the only place the custom resource types are defined. Everything else (the gateway's
//! standalone loader, the operator, the Kubernetes API emulator used by the tests) works from these types
//! and from the CRDs generated out of them, so a manifest means the same thing everywhere.

pub mod approval;
pub mod common;
pub mod connection;
pub mod gateway;
pub mod generate;
pub mod identity;
pub mod policy;
pub mod structural;
pub mod validation;

pub use approval::{ApprovalRequest, ApprovalRequestSpec, ApprovalRequestStatus};
pub use common::{Condition, DurationString};
pub use connection::{Connection, ConnectionSpec};
pub use gateway::{AgentGateway, AgentGatewaySpec};
pub use identity::{AgentIdentity, AgentIdentitySpec};
pub use policy::{AccessPolicy, AccessPolicySpec};

/// API group of every agentgate kind.
pub const GROUP: &str = "agentgate.dev";
/// The one served and stored version.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` as written in manifests.
pub const API_VERSION: &str = "agentgate.dev/v1alpha1";
/// In a cluster, the operator gives gateways only Secrets labelled `agentgate.dev/credential: "true"`:
/// whoever may write a Connection can then use only the Secrets an owner of them opted in, not
/// send any Secret of the namespace to an endpoint of their choosing.
pub const CREDENTIAL_LABEL: &str = "agentgate.dev/credential";
/// A credential Secret annotated with origins (`https://acme.okta.com`, `postgres://db:5432`,
/// separated by commas or white space) may be sent only to them: a Connection that names the Secret
/// with any other endpoint, or with TLS verification off, is refused. The label says which Secrets
/// gateways may use; this says where each may go, so whoever may write a Connection cannot point
/// an opted-in credential at an endpoint of their own.
pub const CREDENTIAL_ENDPOINTS_ANNOTATION: &str = "agentgate.dev/credential-endpoints";
/// Likewise, the operator mounts into a gateway (`recording.storage.volume`) only a
/// PersistentVolumeClaim labelled `agentgate.dev/recordings: "true"`: the gateway writes there and
/// deletes expired session files there, so whoever may write an AgentGateway must not be able to
/// point it at another application's volume.
pub const RECORDINGS_LABEL: &str = "agentgate.dev/recordings";
