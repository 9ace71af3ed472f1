//! `AgentIdentity`: a non-human identity and how to recognise its tokens.

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{CommonStatus, DNS_SUBDOMAIN_PATTERN, DurationString, SecretKeyRef};

/// A non-human identity (an AI agent, a CI job, a workload) and the rules that recognise its tokens.
/// A token is accepted only when its issuer, audience and signature verify and every matcher in
/// `match` holds; the identity's name is then the principal policies refer to.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "agentgate.dev",
    version = "v1alpha1",
    kind = "AgentIdentity",
    plural = "agentidentities",
    shortname = "agid",
    category = "agentgate",
    namespaced,
    doc = "AgentIdentity is a non-human identity (AI agent, CI job, workload) and how to recognise its tokens.",
    status = "CommonStatus",
    printcolumn = r#"{"name":"Provider","type":"string","jsonPath":".spec.provider"}"#,
    printcolumn = r#"{"name":"Issuer","type":"string","jsonPath":".spec.issuer"}"#,
    printcolumn = r#"{"name":"DPoP","type":"boolean","jsonPath":".spec.requireDPoP"}"#,
    printcolumn = r#"{"name":"Suspended","type":"boolean","jsonPath":".spec.suspend"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("self.tokenType != 'Introspection' || has(self.introspection)").message("tokenType Introspection needs an introspection block").field_path(".introspection"))]
#[x_kube(validation = kube::core::Rule::new("self.provider != 'Kubernetes' || has(self.match.serviceAccount)").message("Kubernetes identities are matched by match.serviceAccount").field_path(".match.serviceAccount"))]
#[x_kube(validation = kube::core::Rule::new("self.provider != 'GitHubActions' || has(self.match.github)").message("GitHub Actions identities are matched by match.github (numeric repository ids)").field_path(".match.github"))]
#[x_kube(validation = kube::core::Rule::new("self.provider != 'Spiffe' || has(self.match.spiffeId)").message("SPIFFE identities are matched by match.spiffeId").field_path(".match.spiffeId"))]
#[x_kube(validation = kube::core::Rule::new("self.provider != 'Spiffe' || has(self.keys)").message("SPIFFE identities need the trust domain's bundle in keys").field_path(".keys"))]
pub struct AgentIdentitySpec {
    /// Family of the token issuer; it selects the issuer-specific checks (Okta org servers are
    /// always introspected, Kubernetes tokens must carry pod-bound claims, and so on).
    #[serde(default)]
    pub provider: IdentityProvider,
    /// Issuer URL, compared byte for byte with the token's `iss` and with the discovery document.
    /// Must be https, except for loopback issuers used in development.
    #[schemars(
        length(min = 1, max = 2048),
        regex(
            pattern = r"^(https://|http://(127\.0\.0\.1|localhost|\[::1\])(:[0-9]+)?(/|$)|spiffe://)[^\s]*$"
        )
    )]
    pub issuer: String,
    /// Audiences the gateway accepts; the token's `aud` must contain one of them.
    #[schemars(length(min = 1, max = 16), inner(length(min = 1, max = 512)))]
    pub audiences: Vec<String>,
    /// `JWT` validates signed tokens locally; `Introspection` asks the issuer (RFC 7662) and is the
    /// only way opaque tokens are accepted.
    #[serde(default)]
    pub token_type: TokenType,
    /// Which tokens of the issuer belong to this identity. At least one matcher is required, so an
    /// identity never accepts every token an issuer mints.
    pub r#match: IdentityMatch,
    /// Where the identity's groups come from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<GroupMapping>,
    /// Requires a DPoP proof (RFC 9449) bound to the token, so a leaked token alone is useless.
    #[serde(default, rename = "requireDPoP")]
    pub require_dpop: bool,
    /// Tokens of this identity may decide approvals on the gateway's admin API (standalone mode):
    /// set it on the identity your human approvers sign in with. Agent identities leave it unset,
    /// so that no agent can approve another agent's request, whatever its groups.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub approver: bool,
    /// Cuts the identity off at once and keeps its definition, as `spec.suspend` pauses a CronJob:
    /// set it when a token may have leaked. While true, the identity's tokens are refused (HTTP
    /// 403 `identity-suspended`, PostgreSQL SQLSTATE 28000), its open PostgreSQL sessions refuse
    /// every further statement, and an approver identity cannot decide approvals. Its tokens
    /// still match it, so no other identity whose matchers also fit takes them over.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,
    /// The `typ` header this issuer puts on access tokens, e.g. `at+jwt` (RFC 9068); tokens with
    /// another `typ` are refused. Unset: `typ` may be absent, `JWT` or `at+jwt`, and any other type
    /// (ID-token, DPoP-proof, logout or event tokens) is refused; for OIDC and Okta a token that
    /// is not `at+jwt` must then also carry a claim only access tokens carry (`scope`, `scp`,
    /// `client_id`, `cid`, `appid`, `gty`, `azpacr`, `appidacr` or `idtyp`), since an ID token is
    /// a plain JWT too. Set it to `JWT` to accept such tokens without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub access_token_type: Option<String>,
    /// Refuses tokens whose lifetime (`exp - iat`) exceeds this; tokens without `iat` are then
    /// refused. Unset: signed tokens may live 24h at most (`exp - iat`, or what is left of them
    /// when they carry no `iat`); introspected ones are not bounded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_token_lifetime: Option<DurationString>,
    /// Signature algorithms accepted from this issuer. `none` and HMAC are never accepted.
    #[serde(default = "default_algorithms")]
    #[schemars(length(min = 1, max = 8), extend("x-kubernetes-list-type" = "set"))]
    pub algorithms: Vec<SigningAlgorithm>,
    /// Where verification keys come from. Without it, OIDC discovery on the issuer is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<KeySource>,
    /// Token introspection endpoint and client credentials (tokenType Introspection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub introspection: Option<Introspection>,
}

fn default_algorithms() -> Vec<SigningAlgorithm> {
    vec![SigningAlgorithm::RS256, SigningAlgorithm::ES256]
}

/// Family of the token issuer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum IdentityProvider {
    /// Any OpenID Connect issuer (Entra, Google, ...), with claims mapped by `match` and `groups`.
    #[default]
    #[serde(rename = "OIDC")]
    Oidc,
    /// Okta: custom authorization servers (JWT) or the org authorization server (introspection only).
    Okta,
    /// Kubernetes projected service-account tokens.
    Kubernetes,
    /// GitHub Actions OIDC tokens.
    GitHubActions,
    /// SPIFFE JWT-SVIDs.
    Spiffe,
}

/// How tokens are validated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum TokenType {
    /// Signed JWTs validated locally against the issuer's keys.
    #[default]
    #[serde(rename = "JWT")]
    Jwt,
    /// Opaque or JWT tokens checked by the issuer's introspection endpoint (RFC 7662).
    Introspection,
}

/// Asymmetric signature algorithms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[allow(clippy::upper_case_acronyms)]
pub enum SigningAlgorithm {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

/// Matchers on the token's claims. Every matcher that is set must hold.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("has(self.subject) || has(self.claims) || has(self.serviceAccount) || has(self.github) || has(self.spiffeId)").message("set at least one matcher: subject, claims, serviceAccount, github or spiffeId"))]
pub struct IdentityMatch {
    /// Exact `sub` claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub subject: Option<String>,
    /// Claims that must equal the given strings (for Okta: `cid`; for Entra: `azp`, `appid`).
    /// A claim holding a list matches when the list contains the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("minProperties" = 1, "maxProperties" = 16))]
    pub claims: Option<BTreeMap<String, String>>,
    /// A Kubernetes service account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<ServiceAccountMatch>,
    /// A GitHub Actions workflow, matched on numeric ids that survive renames.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub github: Option<GitHubMatch>,
    /// A SPIFFE ID (`spiffe://trust-domain/path`); `*` matches one path segment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 10, max = 2048),
        regex(pattern = r"^spiffe://[a-z0-9.-]+(/[^\s]*)?$")
    )]
    pub spiffe_id: Option<String>,
}

/// A Kubernetes service account.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountMatch {
    /// Namespace of the service account.
    #[schemars(length(min = 1, max = 63), regex(pattern = crate::common::DNS_LABEL_PATTERN))]
    pub namespace: String,
    /// Name of the service account.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN_PATTERN))]
    pub name: String,
}

/// A GitHub Actions workflow identity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("has(self.repositoryId) || (has(self.repositoryOwnerId) && has(self.jobWorkflowRef))").message("set repositoryId, or repositoryOwnerId with jobWorkflowRef: names can be re-registered, numeric ids cannot, and an owner alone admits every workflow of every repository it has"))]
pub struct GitHubMatch {
    /// Numeric `repository_id` claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 20), regex(pattern = r"^[0-9]+$"))]
    pub repository_id: Option<String>,
    /// Numeric `repository_owner_id` claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 20), regex(pattern = r"^[0-9]+$"))]
    pub repository_owner_id: Option<String>,
    /// `job_workflow_ref` claim, e.g. `octo-org/deploy/.github/workflows/deploy.yml@refs/heads/main`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub job_workflow_ref: Option<String>,
}

/// Where the identity's groups come from; the result is the union.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("!has(self.prefix) || has(self.claim)").message("prefix applies to the groups of claim: set claim too"))]
pub struct GroupMapping {
    /// Claim holding a list of group names (for Okta a custom `groups` claim; for Entra `roles`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub claim: Option<String>,
    /// Groups every token of this identity belongs to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 256)))]
    pub r#static: Vec<String>,
    /// Put before every group taken from `claim` (say `okta:`), as the Kubernetes API server's
    /// `--oidc-groups-prefix` does: policies then name `okta:dba`, and a token of another issuer
    /// whose claim says `dba` is not in it. `static` groups, which you name, are left as they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub prefix: Option<String>,
}

/// Source of verification keys.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("has(self.jwksUri) != has(self.secretRef)").message("set exactly one of jwksUri or secretRef"))]
pub struct KeySource {
    /// JWKS URL, used instead of discovery (for issuers without a discovery document).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 2048),
        regex(pattern = r"^(https://|http://(127\.0\.0\.1|localhost|\[::1\])(:[0-9]+)?(/|$))[^\s]*$")
    )]
    pub jwks_uri: Option<String>,
    /// A Secret key holding a static JWKS (a SPIFFE trust bundle, or a cluster's service-account keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,
}

/// RFC 7662 introspection settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Introspection {
    /// Introspection endpoint. Without it, the one named by the issuer's discovery document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 2048),
        regex(pattern = r"^(https://|http://(127\.0\.0\.1|localhost|\[::1\])(:[0-9]+)?(/|$))[^\s]*$")
    )]
    pub endpoint: Option<String>,
    /// OAuth client id the gateway authenticates as.
    #[schemars(length(min = 1, max = 256))]
    pub client_id: String,
    /// Client authentication method.
    #[serde(default)]
    pub auth_method: ClientAuthMethod,
    /// The client secret (`client_secret_basic`) or the PEM private key (`private_key_jwt`).
    pub secret_ref: SecretKeyRef,
    /// Longest time an introspection result is cached (never beyond the token's `exp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_ttl: Option<DurationString>,
}

/// OAuth client authentication method.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum ClientAuthMethod {
    /// HTTP Basic with the client id and secret.
    #[default]
    #[serde(rename = "client_secret_basic")]
    ClientSecretBasic,
    /// A JWT signed with the client's private key (RFC 7523).
    #[serde(rename = "private_key_jwt")]
    PrivateKeyJwt,
}
