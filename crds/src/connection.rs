//! `Connection`: a target the gateway reaches on an agent's behalf, with the credential it injects.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{CommonStatus, DNS_SUBDOMAIN_PATTERN, LocalRef, SecretKeyRef, SecretRef};

/// A target system (an HTTP API, a Kubernetes API server, a PostgreSQL database) reached through a
/// gateway. The credential is injected by the gateway; agents never see it.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "agentgate.dev",
    version = "v1alpha1",
    kind = "Connection",
    plural = "connections",
    shortname = "agconn",
    category = "agentgate",
    namespaced,
    doc = "Connection is a target system (HTTP API, Kubernetes API, PostgreSQL database) that agents reach through a gateway, with the credential the gateway injects.",
    status = "CommonStatus",
    printcolumn = r#"{"name":"Type","type":"string","jsonPath":".spec.type"}"#,
    printcolumn = r#"{"name":"Gateway","type":"string","jsonPath":".spec.gatewayRef.name"}"#,
    printcolumn = r#"{"name":"Endpoint","type":"string","jsonPath":".spec.endpoint","priority":1}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("self.type == 'Postgres' ? self.endpoint.startsWith('postgres://') || self.endpoint.startsWith('postgresql://') : self.endpoint.startsWith('https://') || self.endpoint.startsWith('http://')").message("endpoint must be a postgres:// URL for Postgres connections and an http(s):// URL otherwise").field_path(".endpoint"))]
#[x_kube(validation = kube::core::Rule::new("self.type == 'Postgres' ? !has(self.route) : has(self.route)").message("HTTP and Kubernetes connections need a route; Postgres connections are routed by database name and take none").field_path(".route"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.credentials) || self.type == 'Postgres' ? true : self.credentials.scheme != 'PostgresPassword'").message("the PostgresPassword scheme is only for Postgres connections").field_path(".credentials.scheme"))]
#[x_kube(validation = kube::core::Rule::new("self.type != 'Postgres' || !has(self.credentials) || self.credentials.scheme == 'PostgresPassword' || self.credentials.scheme == 'ClientCertificate'").message("Postgres connections take the PostgresPassword or ClientCertificate scheme").field_path(".credentials.scheme"))]
#[x_kube(validation = kube::core::Rule::new("self.type != 'Postgres' || has(self.credentials)").message("Postgres connections take credentials: the role the gateway logs in as").field_path(".credentials"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.credentials) || self.credentials.scheme != 'ClientCertificate' || (self.type == 'Postgres') == has(self.credentials.username)").message("a client certificate to PostgreSQL names the role it logs in as (username); to other targets it takes none").field_path(".credentials.username"))]
pub struct ConnectionSpec {
    /// The gateway that serves this connection.
    pub gateway_ref: LocalRef,
    /// Kind of target, which decides how operations are decoded and which rules apply.
    pub r#type: ConnectionType,
    /// URL of the target: `https://example.okta.com`, `https://kubernetes.default.svc`,
    /// `postgres://db.internal:5432/orders` (the path names the upstream database).
    #[schemars(
        length(min = 1, max = 2048),
        regex(pattern = r"^(https?|postgres|postgresql)://[^\s]+$")
    )]
    pub endpoint: String,
    /// The credential the gateway presents to the target. Omit only for targets that need none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<Credentials>,
    /// TLS settings towards the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,
    /// How requests on an HTTP listener are routed to this connection (by host or path prefix).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<Route>,
}

/// Kind of target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum ConnectionType {
    /// A plain HTTP API (for example Okta's admin API).
    #[serde(rename = "HTTP")]
    Http,
    /// A Kubernetes API server: requests are decided by verb, resource and namespace.
    Kubernetes,
    /// A PostgreSQL database: statements are parsed and decided one by one.
    Postgres,
}

/// The credential injected by the gateway.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("self.scheme == 'ClientCertificate' ? has(self.certificateSecretRef) && !has(self.secretRef) : has(self.secretRef) && !has(self.certificateSecretRef)").message("ClientCertificate takes certificateSecretRef; every other scheme takes secretRef"))]
#[x_kube(validation = kube::core::Rule::new("(self.scheme == 'Basic' || self.scheme == 'PostgresPassword') ? has(self.username) : (self.scheme == 'ClientCertificate' || !has(self.username))").message("username is required for Basic and PostgresPassword, names the PostgreSQL role of a ClientCertificate, and is taken by no other scheme").field_path(".username"))]
pub struct Credentials {
    /// How the credential is presented: `Bearer` (Authorization: Bearer), `SSWS` (Okta API token),
    /// `Basic`, `ClientCertificate` (mutual TLS) or `PostgresPassword` (SCRAM-SHA-256 or md5).
    pub scheme: CredentialScheme,
    /// The Secret key holding the token or password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,
    /// A `kubernetes.io/tls` Secret with `tls.crt` and `tls.key`, for `ClientCertificate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_secret_ref: Option<SecretRef>,
    /// User name for `Basic` and `PostgresPassword`, and the PostgreSQL role a `ClientCertificate`
    /// logs in as (the server maps the certificate to it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub username: Option<String>,
}

/// How a credential is presented to the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum CredentialScheme {
    /// `Authorization: Bearer <token>`.
    Bearer,
    /// `Authorization: SSWS <token>` (Okta API tokens).
    #[serde(rename = "SSWS")]
    Ssws,
    /// `Authorization: Basic base64(username:password)`.
    Basic,
    /// A TLS client certificate.
    ClientCertificate,
    /// PostgreSQL password authentication (SCRAM-SHA-256 or md5, as the server asks).
    PostgresPassword,
}

/// TLS towards the target.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("!(has(self.insecureSkipVerify) && self.insecureSkipVerify && has(self.caSecretRef))").message("caSecretRef and insecureSkipVerify contradict each other"))]
pub struct UpstreamTls {
    /// CA bundle that verifies the target's certificate (key usually `ca.crt`). Without it the
    /// platform's roots are used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
    /// Server name to verify, when it differs from the endpoint's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub server_name: Option<String>,
    /// Disables certificate verification. For tests only; the gateway logs a warning at every load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,
}

/// Routing of HTTP requests to this connection: by host, by path prefix, or both.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("has(self.host) || has(self.pathPrefix)").message("set host, pathPrefix or both"))]
pub struct Route {
    /// Host name (the request's authority) that selects this connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN_PATTERN))]
    pub host: Option<String>,
    /// Path prefix that selects this connection; it is stripped before forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 2, max = 256),
        regex(pattern = r"^/[A-Za-z0-9._~!$&'()*+,;=:@/-]*[^/]$")
    )]
    pub path_prefix: Option<String>,
}
