//! `AgentGateway`: one gateway deployment, its listeners, recording and approval settings.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{CommonStatus, DNS_LABEL_PATTERN, DNS_SUBDOMAIN_PATTERN, DurationString, SecretKeyRef};

/// A gateway deployment: where it listens, how it records sessions and how approvals are bounded.
/// Connections name the gateway that serves them with `spec.gatewayRef`.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "agentgate.dev",
    version = "v1alpha1",
    kind = "AgentGateway",
    plural = "agentgateways",
    shortname = "agw",
    category = "agentgate",
    namespaced,
    doc = "AgentGateway is one gateway deployment: its listeners, session recording and approval bounds.",
    status = "AgentGatewayStatus",
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".spec.replicas"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Config","type":"string","jsonPath":".status.configHash","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("self.listeners.all(l, self.listeners.exists_one(m, m.port == l.port))").message("listener ports must be unique").field_path(".listeners"))]
pub struct AgentGatewaySpec {
    /// Number of gateway pods the operator runs. Ignored in standalone mode.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: i32,
    /// The ports the gateway accepts agents on. Each listener speaks one protocol.
    #[schemars(length(min = 1, max = 16), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub listeners: Vec<Listener>,
    /// How sessions are recorded. Recording is always on; the mode says what happens when it fails.
    #[serde(default)]
    pub recording: Recording,
    /// Bounds for just-in-time approvals on this gateway.
    #[serde(default)]
    pub approvals: ApprovalSettings,
    /// Masking settings of the whole gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masking: Option<GatewayMasking>,
    /// DPoP settings of the whole gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dpop: Option<GatewayDpop>,
    /// Container image of the gateway pods (operator only). Defaults to the operator's gateway
    /// image; any other must be one the operator's `--allowed-gateway-image` names, or the gateway
    /// is not run (it would hold the gateway's credentials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,
}

impl AgentGatewaySpec {
    /// Whether DPoP proofs must carry a gateway-issued nonce, for a gateway the operator runs
    /// (`operated`) or a standalone one.
    pub fn dpop_nonce_required(&self, operated: bool) -> bool {
        match self.dpop.as_ref().map(|d| d.nonce).unwrap_or_default() {
            DpopNonce::Required => true,
            DpopNonce::Disabled => false,
            DpopNonce::Auto => operated,
        }
    }
}

fn default_replicas() -> i32 {
    2
}

/// Masking settings of the whole gateway.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayMasking {
    /// The key of the Hash strategy: at least 32 bytes, random (`openssl rand -base64 48`). Set
    /// it so that every replica and every restart turns one value into the same hash, and hashes
    /// join across sessions and recordings. Unset, each gateway process draws a key of its own,
    /// and hashes join only within that process. Changing it changes every hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_key_secret_ref: Option<SecretKeyRef>,
}

/// DPoP settings of the whole gateway.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayDpop {
    /// Whether DPoP proofs must carry a nonce issued by the gateway process that receives them
    /// (RFC 9449 section 9). Each process remembers only the proofs it has seen, so without
    /// nonces a proof captured on its way to one replica could be replayed once at another.
    /// With them, a proof is good only at the process that issued its nonce, for one to two
    /// minutes; a client learns the nonce from the `DPoP-Nonce` header of a `401` with
    /// `error="use_dpop_nonce"` (and of the answers to its DPoP requests) and retries, as RFC
    /// 9449 clients do. A client must then keep reaching one replica: the operator's Service
    /// pins each client address to a pod (`sessionAffinity: ClientIP`), and a mesh or ingress
    /// in front must be as sticky. `Auto`: required of gateways the operator runs (several
    /// replicas, two pods during a rollout, a restarted pod that forgot what it saw);
    /// `Required`: always (several standalone gateways behind one load balancer); `Disabled`:
    /// never.
    #[serde(default)]
    pub nonce: DpopNonce,
    /// The origins clients address this gateway by, where a proxy in front changes what the
    /// gateway sees: a TLS-terminating ingress (`https://agents.example.com`, while the gateway
    /// is reached over plain HTTP) or another host name. When set, a proof's `htu` must be one
    /// of them followed by the request's path, whatever the request's Host; unset, the scheme
    /// the request arrived over and its Host. The one whose host and port are the request's
    /// Host is also the origin the upstream's own absolute URLs in `Location`,
    /// `Content-Location` and `Link` response headers are rewritten to (with none, they become
    /// paths on the gateway).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 8, max = 512), regex(pattern = r"^https?://[^/?#@\s]+$")), extend("x-kubernetes-list-type" = "set"))]
    pub origins: Vec<String>,
}

/// When DPoP proofs must carry a gateway-issued nonce.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DpopNonce {
    /// Required of gateways the operator runs; not standalone.
    #[default]
    Auto,
    /// Always required.
    Required,
    /// Never required (a nonce a client sends anyway is not checked). Not `Off`, which YAML
    /// reads as `false`.
    Disabled,
}

/// One port the gateway listens on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Listener {
    /// Name of the listener, unique within the gateway (a DNS label). In a cluster it is also the
    /// pod's port name: at most 15 characters, at least one letter, no two hyphens in a row, and
    /// not `admin`.
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS_LABEL_PATTERN))]
    pub name: String,
    /// Wire protocol spoken on this port.
    pub protocol: ListenerProtocol,
    /// TCP port.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Address to bind. Defaults to all interfaces in a cluster; standalone deployments usually set
    /// 127.0.0.1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[0-9a-fA-F.:]+$"))]
    pub address: Option<String>,
    /// TLS for this listener. Without it the listener is plaintext, meant for loopback and local use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTls>,
}

/// Wire protocol of a listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum ListenerProtocol {
    /// HTTP/1.1 and HTTP/2: HTTP APIs and the Kubernetes API.
    #[serde(rename = "HTTP")]
    Http,
    /// The PostgreSQL wire protocol.
    Postgres,
}

/// Server certificate of a listener.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListenerTls {
    /// A `kubernetes.io/tls` Secret holding `tls.crt` and `tls.key`. In a cluster it must be
    /// labelled `agentgate.dev/credential: "true"`.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN_PATTERN))]
    pub secret_name: String,
}

/// Session recording settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Recording {
    /// `Required` refuses an operation whose record cannot be persisted (fail closed);
    /// `BestEffort` lets it through and counts the failure.
    #[serde(default)]
    pub mode: RecordingMode,
    /// Where finished sessions are shipped. Sessions are always spooled to local disk first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<RecordingStorage>,
    /// How long recordings on the gateway's own storage (local, volume) are kept before they are
    /// deleted (sessions still open are kept). Shipped recordings (s3) are kept by the bucket's
    /// lifecycle rule.
    #[serde(default = "default_retention")]
    pub retention: DurationString,
    /// The Ed25519 private key (PKCS#8 PEM, as `openssl genpkey -algorithm ed25519` writes it)
    /// that signs each session's closing event. Set it so that every replica and every restart
    /// signs with one key whose public half auditors pin (`agentgate sessions public-key` prints
    /// it; `agentgate sessions verify --public-key` checks it). Unset, each gateway process signs
    /// with a key of its own, made at start and logged: the hash chains still show edits, but a
    /// signature proves less, as nobody holds that key's public half ahead of time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_key_secret_ref: Option<SecretKeyRef>,
}

impl Default for Recording {
    fn default() -> Self {
        Self {
            mode: RecordingMode::default(),
            storage: None,
            retention: default_retention(),
            signing_key_secret_ref: None,
        }
    }
}

fn default_retention() -> DurationString {
    DurationString("90d".into())
}

/// What happens when a record cannot be persisted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RecordingMode {
    /// Refuse the operation (fail closed).
    #[default]
    Required,
    /// Allow the operation and count the failure.
    BestEffort,
}

/// Destination of finished recordings: `local`, `volume` or `s3`; with `s3`, `volume` (or `local`)
/// is where sessions wait to be shipped, instead of the pod's scratch space.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("(has(self.local) || has(self.volume) || has(self.s3)) && !(has(self.local) && has(self.volume))").message("set local, volume or s3, or s3 with one of local or volume as its spool; not local and volume together"))]
pub struct RecordingStorage {
    /// A directory on the gateway's file system (standalone mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalStorage>,
    /// A PersistentVolumeClaim mounted into the gateway pods. With `s3`, the spool: sessions
    /// wait there for upload and outlive a pod deleted while the store is unreachable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<VolumeStorage>,
    /// An S3-compatible bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Storage>,
}

/// A local directory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalStorage {
    /// Absolute path, or a path relative to the manifests directory.
    #[schemars(length(min = 1, max = 4096))]
    pub path: String,
}

/// A PersistentVolumeClaim.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeStorage {
    /// Name of the PersistentVolumeClaim in the gateway's namespace. It must be labelled
    /// `agentgate.dev/recordings: "true"` (the operator mounts no other claim).
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN_PATTERN))]
    pub claim_name: String,
}

/// An S3-compatible bucket.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Storage {
    /// Bucket name.
    #[schemars(length(min = 3, max = 63), regex(pattern = r"^[a-z0-9][a-z0-9.-]*[a-z0-9]$"))]
    pub bucket: String,
    /// Key prefix for this gateway's recordings.
    #[serde(default)]
    #[schemars(length(max = 512))]
    pub prefix: String,
    /// Endpoint URL, for S3-compatible stores other than AWS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048), regex(pattern = r"^https?://"))]
    pub endpoint: Option<String>,
    /// Region of the bucket.
    #[serde(default = "default_region")]
    #[schemars(length(min = 1, max = 64))]
    pub region: String,
    /// Secret holding `accessKeyId` and `secretAccessKey`; the key named here is the access key id's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretKeyRef>,
}

fn default_region() -> String {
    "us-east-1".into()
}

/// Bounds for just-in-time approvals.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalSettings {
    /// How long a request waits for a decision when its rule sets no timeout.
    #[serde(default = "default_timeout")]
    pub default_timeout: DurationString,
    /// Longest access window any approval may grant.
    #[serde(default = "default_max_grant")]
    pub max_grant: DurationString,
}

impl Default for ApprovalSettings {
    fn default() -> Self {
        Self {
            default_timeout: default_timeout(),
            max_grant: default_max_grant(),
        }
    }
}

fn default_timeout() -> DurationString {
    DurationString("15m".into())
}

fn default_max_grant() -> DurationString {
    DurationString("8h".into())
}

/// Observed state of a gateway.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentGatewayStatus {
    /// Conditions and observed generation.
    #[serde(flatten)]
    pub common: CommonStatus,
    /// Hash of the compiled configuration last published for this gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
    /// Pods of the gateway Deployment that are ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
}
