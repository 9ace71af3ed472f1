//! `AccessPolicy`: what identities may do on connections, operation by operation.

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{CommonStatus, DNS_LABEL_PATTERN, DNS_SUBDOMAIN_PATTERN, DurationString};

/// Rules for what identities may do on connections. Every operation (HTTP request, Kubernetes verb,
/// SQL statement) is decided against all policies that apply to its identity and connection:
/// Deny beats RequireApproval beats Allow, and an operation no rule matches is denied.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "agentgate.dev",
    version = "v1alpha1",
    kind = "AccessPolicy",
    plural = "accesspolicies",
    shortname = "agpol",
    category = "agentgate",
    namespaced,
    doc = "AccessPolicy decides what identities may do on connections, operation by operation, and what is masked.",
    status = "CommonStatus",
    printcolumn = r#"{"name":"Connections","type":"string","jsonPath":".spec.connections"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct AccessPolicySpec {
    /// Who the policy applies to.
    pub subjects: Subjects,
    /// Names of the Connections the policy applies to; `*` means every connection in the namespace.
    #[schemars(length(min = 1, max = 256), inner(length(min = 1, max = 253), regex(pattern = r"^(\*|[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*)$")), extend("x-kubernetes-list-type" = "set"))]
    pub connections: Vec<String>,
    /// The rules, each with one action and one matcher (http, kubernetes or sql).
    #[schemars(length(min = 1, max = 512), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub rules: Vec<PolicyRule>,
    /// Masking applied to responses on the policy's connections, for its subjects.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 128))]
    pub masking: Vec<MaskingRule>,
}

/// The identities a policy applies to: the union of the named identities and members of the groups.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("size(self.identities) + size(self.groups) > 0").message("name at least one identity or group"))]
pub struct Subjects {
    /// Names of AgentIdentity objects in the same namespace.
    #[serde(default)]
    #[schemars(length(max = 256), inner(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN_PATTERN)), extend("x-kubernetes-list-type" = "set"))]
    pub identities: Vec<String>,
    /// Group names, as mapped by the identities' `groups` settings.
    #[serde(default)]
    #[schemars(length(max = 256), inner(length(min = 1, max = 256)), extend("x-kubernetes-list-type" = "set"))]
    pub groups: Vec<String>,
}

/// One rule: an action, exactly one matcher, and optionally a schedule and approval settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("(has(self.http) ? 1 : 0) + (has(self.kubernetes) ? 1 : 0) + (has(self.sql) ? 1 : 0) == 1").message("set exactly one of http, kubernetes or sql"))]
#[x_kube(validation = kube::core::Rule::new("self.action != 'RequireApproval' || has(self.approval)").message("a RequireApproval rule needs an approval block").field_path(".approval"))]
#[x_kube(validation = kube::core::Rule::new("self.action == 'RequireApproval' || !has(self.approval)").message("approval is only allowed on RequireApproval rules").field_path(".approval"))]
pub struct PolicyRule {
    /// Name of the rule, unique within the policy; decisions and errors cite it.
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS_LABEL_PATTERN))]
    pub name: String,
    /// What happens to a matching operation.
    pub action: Action,
    /// Why the rule exists; shown to agents whose operation it denies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,
    /// Matches HTTP requests on HTTP connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpMatch>,
    /// Matches Kubernetes API requests on Kubernetes connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesMatch>,
    /// Matches SQL statements on Postgres connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sql: Option<SqlMatch>,
    /// When the rule is in force. Outside its windows the rule does not match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,
    /// Who approves matching operations, and what they grant (RequireApproval only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalRule>,
}

/// What a rule does with a matching operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
pub enum Action {
    /// Let the operation through.
    Allow,
    /// Hold or defer the operation until a human approves it.
    RequireApproval,
    /// Refuse the operation with an error naming the policy and rule.
    Deny,
}

/// HTTP methods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[allow(clippy::upper_case_acronyms)]
pub enum HttpMethod {
    GET,
    HEAD,
    POST,
    PUT,
    PATCH,
    DELETE,
    OPTIONS,
}

/// Matcher on HTTP requests. Every field that is set must match; empty lists match anything.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpMatch {
    /// Request methods. A Deny or RequireApproval rule naming GET also covers HEAD (servers
    /// run GET's handler for it), and one naming any of POST, PUT, PATCH or DELETE also covers
    /// methods outside this list (MOVE, COPY, MERGE, PURGE: writes to whoever serves them); an
    /// Allow rule grants only the methods it names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 7), extend("x-kubernetes-list-type" = "set"))]
    pub methods: Vec<HttpMethod>,
    /// Path globs, matched on the normalized path that is forwarded (after the route's path
    /// prefix is removed): `*` is one segment, `**` any number of segments. `/a/**` does not
    /// match `/a` itself; list both. Example: `/api/v1/users/**`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        inner(length(min = 1, max = 1024), regex(pattern = r"^/[^\s?#]*$"))
    )]
    pub paths: Vec<String>,
    /// Query parameters that must be present, with a glob their value must match. When a
    /// parameter is repeated, an Allow rule needs every value to match, a Deny or RequireApproval
    /// rule any one. The fields of a form or JSON body count as repeats (Rails, Laravel and PHP
    /// merge them with the query's): an Allow rule needs them to match too, a Deny rule matches
    /// on them, and on a body whose fields the gateway does not read (multipart, compressed).
    /// A Deny or RequireApproval rule matches values without regard to ASCII case.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    pub query: BTreeMap<String, String>,
    /// Request headers (case-insensitive names) that must be present, with a glob for the value;
    /// repeated headers are treated like repeated query parameters (a Deny or RequireApproval
    /// rule matches values without regard to ASCII case).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    pub headers: BTreeMap<String, String>,
    /// Conditions on fields of a JSON request body (read, up to 1 MiB, only when some rule has
    /// them). A body that is not JSON never matches an Allow rule and always matches a Deny or
    /// RequireApproval rule. A query parameter named as the field (`role` for `$.role`,
    /// `profile[login]` for `$.profile.login`) counts too: a Deny rule matches on it where the
    /// body has no such field, and an Allow rule needs it to match as well.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub json_body: Vec<JsonCondition>,
}

/// A condition on one field of a JSON body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JsonCondition {
    /// Dot path to the field, e.g. `$.profile.login` or `$.credentials.password`.
    #[schemars(
        length(min = 2, max = 512),
        regex(pattern = r"^\$(\.[A-Za-z0-9_-]+|\[[0-9]+\])+$")
    )]
    pub path: String,
    /// Globs the field's value (as a string) must match one of. Empty: the field must be present.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub values: Vec<String>,
}

/// Kubernetes API verbs, as the API server derives them from method and path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum KubernetesVerb {
    Get,
    List,
    Watch,
    Create,
    Update,
    Patch,
    Delete,
    Deletecollection,
    #[serde(rename = "*")]
    Any,
}

/// Matcher on Kubernetes API requests, in RBAC's terms. Empty lists match anything.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KubernetesMatch {
    /// Verbs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 9), extend("x-kubernetes-list-type" = "set"))]
    pub verbs: Vec<KubernetesVerb>,
    /// API groups; `""` is the core group, `*` any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 253)))]
    pub api_groups: Vec<String>,
    /// Resources (plural, lowercase), e.g. `pods`, `secrets`; `*` any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 253)))]
    pub resources: Vec<String>,
    /// Subresources, e.g. `exec`, `attach`, `portforward`, `proxy`, `ephemeralcontainers`, `status`;
    /// `*` any, except that an Allow rule grants `ephemeralcontainers` (which runs code in the pod),
    /// `token` (a ServiceAccount's TokenRequest, a live token for another identity) and `approval`
    /// (a CertificateSigningRequest's, which issues a client certificate) only when it names them.
    /// Empty: only requests without a subresource, except that a Deny or RequireApproval over
    /// every resource (`resources` empty or `*`) covers subresources too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 63)))]
    pub subresources: Vec<String>,
    /// Namespaces (globs). Empty matches any namespace and cluster-scoped requests. On an
    /// Allow, only requests in one of them match. On a Deny or RequireApproval, so does a
    /// request that names no namespace (a list or watch across all namespaces) unless its
    /// resource is a built-in cluster-scoped one: it reaches the objects in them too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 63)))]
    pub namespaces: Vec<String>,
    /// Object names (globs). On an Allow, only requests naming one of them match. On a Deny or
    /// RequireApproval, so does a request that names no object (list, watch, deletecollection,
    /// create): it may reach or make one of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 253)))]
    pub names: Vec<String>,
}

/// Kinds of SQL statement, as classified by PostgreSQL's own grammar.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
pub enum StatementKind {
    Select,
    Insert,
    Update,
    Delete,
    Merge,
    Copy,
    /// Any DDL: Create, Alter, Drop, Truncate, Comment, Grant, Revoke.
    Ddl,
    Create,
    Alter,
    Drop,
    Truncate,
    Grant,
    Revoke,
    /// `DO` blocks (anonymous code).
    Do,
    Call,
    Prepare,
    Execute,
    Deallocate,
    /// `SET`/`RESET` of ordinary settings.
    Set,
    /// `SET ROLE`, `RESET ROLE`, `SET SESSION AUTHORIZATION`: identity changes.
    SetRole,
    /// `BEGIN`, `COMMIT`, `ROLLBACK`, savepoints.
    Transaction,
    /// `EXPLAIN` without `ANALYZE`.
    Explain,
    /// `EXPLAIN ANALYZE`, which executes its statement.
    ExplainAnalyze,
    Show,
    Listen,
    Notify,
    Lock,
    Vacuum,
    /// Anything else the grammar knows.
    Other,
}

/// Matcher on SQL statements. Every field that is set must match; empty lists match anything.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SqlMatch {
    /// Statement kinds. An Allow rule matches a statement only if every kind it contains (its
    /// own, and those of data-modifying CTEs, EXPLAIN ANALYZE or PREPARE inside it) is listed.
    /// An Allow rule that lists only reading kinds (Select, Show, Explain, Transaction, Prepare,
    /// Execute, Deallocate, Listen, Set) and no functions does not match statements that may
    /// write, such as a SELECT calling a volatile function.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), extend("x-kubernetes-list-type" = "set"))]
    pub statements: Vec<StatementKind>,
    /// Tables touched (through CTEs, subqueries and views named), schema-qualified globs such as
    /// `public.orders` or `billing.*`; an unqualified name means `public`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 128), inner(length(min = 1, max = 256)))]
    pub tables: Vec<String>,
    /// Functions called (globs), e.g. `pg_read_file`, `dblink*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 128), inner(length(min = 1, max = 256)))]
    pub functions: Vec<String>,
    /// Matches only UPDATE and DELETE statements without a WHERE clause, anywhere in the
    /// statement, and MERGE that updates or deletes every row of its target (unconditionally,
    /// on a join condition naming no column, or `WHEN NOT MATCHED BY SOURCE`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub without_where: bool,
    /// Matches only statements that may write (DML, DDL, COPY FROM, data-modifying CTEs, volatile
    /// calls); with action Deny this makes sessions read-only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub writes: bool,
    /// For Allow rules: pass at most this many rows of a result; the rest are dropped, and the
    /// client gets a WARNING naming the rule and how many rows were withheld (the command tag
    /// counts the rows passed). Cursors are refused where it applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000000))]
    pub row_limit: Option<i64>,
}

/// Days of the week.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Weekday {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

/// Time windows in which a rule is in force.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Schedule {
    /// Offset from UTC the windows are written in, such as `+02:00`. Defaults to UTC.
    #[serde(default = "default_offset")]
    #[schemars(regex(pattern = r"^(Z|[+-](0[0-9]|1[0-4]):[0-5][0-9])$"))]
    pub utc_offset: String,
    /// Windows; the rule is in force inside any of them.
    #[schemars(length(min = 1, max = 16))]
    pub windows: Vec<TimeWindow>,
}

fn default_offset() -> String {
    "Z".into()
}

/// One weekly time window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("self.start < self.end").message("start must be before end (split windows that cross midnight)"))]
pub struct TimeWindow {
    /// Days the window applies to; empty means every day.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 7), extend("x-kubernetes-list-type" = "set"))]
    pub days: Vec<Weekday>,
    /// Start, `HH:MM`.
    #[schemars(regex(pattern = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"))]
    pub start: String,
    /// End, `HH:MM` (exclusive); `24:00` ends at midnight.
    #[schemars(regex(pattern = r"^(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)$"))]
    pub end: String,
}

/// Approval settings of a RequireApproval rule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalRule {
    /// Who may approve. The identity that asked can never approve its own request.
    pub approvers: Approvers,
    /// Distinct approvers needed.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 5))]
    pub min_approvals: i32,
    /// `Hold` keeps the operation waiting for the decision; `Defer` refuses it at once, naming the
    /// ApprovalRequest, and lets the identical operation through once approved.
    #[serde(default)]
    pub mode: ApprovalMode,
    /// What an approval grants.
    #[serde(default)]
    pub grant: Grant,
    /// How long a request waits for a decision. Defaults to the gateway's `approvals.defaultTimeout`.
    /// A held operation (mode `Hold`) waits at most 24h, and its request expires then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<DurationString>,
}

fn one() -> i32 {
    1
}

/// Who may approve.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("size(self.users) + size(self.groups) > 0").message("name at least one approver user or group"))]
pub struct Approvers {
    /// User names (as the Kubernetes API or the admin API's OIDC issuer authenticates them).
    #[serde(default)]
    #[schemars(length(max = 64), inner(length(min = 1, max = 256)))]
    pub users: Vec<String>,
    /// Groups whose members may approve.
    #[serde(default)]
    #[schemars(length(max = 64), inner(length(min = 1, max = 256)))]
    pub groups: Vec<String>,
}

/// How an operation waits for approval.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum ApprovalMode {
    /// The operation waits, bounded by the timeout.
    #[default]
    Hold,
    /// The operation is refused at once; the identical operation succeeds once approved.
    Defer,
}

/// What an approval grants.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("self.type == 'Window' ? has(self.duration) : !has(self.duration)").message("a Window grant needs a duration, and only a Window grant takes one").field_path(".duration"))]
pub struct Grant {
    /// `Once`: the approved operation, one time. `Window`: matching operations on the connection
    /// until the window ends.
    #[serde(default)]
    pub r#type: GrantType,
    /// Length of a Window grant, capped by the gateway's `approvals.maxGrant`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<DurationString>,
}

/// Kind of grant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum GrantType {
    /// Single use.
    #[default]
    Once,
    /// A just-in-time access window.
    Window,
}

/// A masking rule: which values are masked, and how.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("size(self.columns) + size(self.jsonFields) + size(self.detectors) > 0").message("set columns, jsonFields or detectors"))]
pub struct MaskingRule {
    /// Result columns, `schema.table.column` (globs allowed), resolved through each result field's
    /// table and column.
    #[serde(default)]
    #[schemars(
        length(max = 128),
        inner(length(min = 1, max = 256), regex(pattern = r"^[^.\s]+\.[^.\s]+\.[^.\s]+$"))
    )]
    pub columns: Vec<String>,
    /// JSON fields in response bodies: `$..email` (any depth), `$.profile.email`, `$.items[*].x`.
    /// On PostgreSQL, fields of the `json` and `jsonb` values in results; there a value computed
    /// from a column holding JSON (`doc->>'x'`, `doc::text`) is redacted whole.
    #[serde(default)]
    #[schemars(length(max = 128), inner(length(min = 2, max = 512), regex(pattern = r"^\$")))]
    pub json_fields: Vec<String>,
    /// Content detectors applied to every value.
    #[serde(default)]
    #[schemars(length(max = 16), extend("x-kubernetes-list-type" = "set"))]
    pub detectors: Vec<Detector>,
    /// How matching values are masked.
    #[serde(default)]
    pub strategy: MaskingStrategy,
    /// What happens to a response the masker cannot read (too large, or of a content type it
    /// cannot parse): `Refuse` (fail closed) or `Allow`.
    #[serde(default)]
    pub on_unparseable: UnparseablePolicy,
}

/// Content detectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Detector {
    Email,
    Phone,
    /// Card numbers that pass the Luhn check.
    CreditCard,
    #[serde(rename = "IBAN")]
    Iban,
    AwsAccessKey,
    GcpApiKey,
    OktaApiToken,
    #[serde(rename = "JWT")]
    Jwt,
    /// PEM-encoded private keys.
    PrivateKey,
}

/// How values are masked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum MaskingStrategy {
    /// Replaced by a fixed marker.
    #[default]
    Redact,
    /// All but the last few characters replaced.
    Partial,
    /// Replaced by a keyed hash, so equal values still compare equal (across replicas and
    /// restarts when the AgentGateway sets `masking.hashKeySecretRef`).
    Hash,
}

/// What happens to a response that cannot be masked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum UnparseablePolicy {
    /// Refuse the response (fail closed).
    #[default]
    Refuse,
    /// Pass it through unmasked.
    Allow,
}
