//! Validating manifests (schema, then meaning) and compiling them into a [`GatewayConfig`].

use crate::masking::{HashKey, MaskingPlan};
use crate::policy::PolicyIndex;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use agentgate_crds::connection::{ConnectionType, CredentialScheme};
use agentgate_crds::gateway::{ApprovalSettings, Listener, Recording};
use agentgate_crds::generate;
use agentgate_crds::policy::{Action, PolicyRule};
use agentgate_crds::validation::SchemaValidator;
use agentgate_crds::{AccessPolicy, AgentGateway, AgentIdentity, Connection};
use serde::de::DeserializeOwned;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::manifest::Manifest;
use super::secrets::{Origin, SecretStore, SecretValue};
use super::{ConfigError, LoadOptions};

/// The immutable configuration one gateway runs with. Swapped whole when configuration changes.
#[derive(Debug)]
pub struct GatewayConfig {
    /// Hash of every manifest that went into this snapshot.
    pub source_hash: String,
    /// Number of objects loaded, by kind.
    pub object_counts: BTreeMap<String, usize>,
    /// The gateway being run.
    pub gateway: GatewaySettings,
    /// Connections served by this gateway, by name.
    pub connections: BTreeMap<String, CompiledConnection>,
    /// Identities in the gateway's namespace, by name.
    pub identities: BTreeMap<String, std::sync::Arc<CompiledIdentity>>,
    /// Policies that apply to at least one of the gateway's connections.
    pub policies: Vec<CompiledPolicy>,
    /// The policies' rules filed for decisions.
    pub policy_index: PolicyIndex,
    /// Some rule needs approval: an operation may be held waiting for one.
    pub asks_approval: bool,
    /// (namespace, name, key) of the Secret manifest values this configuration uses.
    pub secret_keys_used: std::collections::BTreeSet<(String, String, String)>,
}

/// GitHub Actions' OIDC issuer (GitHub Enterprise Cloud adds a path to it).
const GITHUB_ACTIONS_ISSUER: &str = "https://token.actions.githubusercontent.com";

/// Where the operator mounts a recording volume in gateway pods.
pub const SESSIONS_VOLUME_MOUNT: &str = "/var/lib/agentgate/sessions";

/// The gateway's own settings.
#[derive(Debug)]
pub struct GatewaySettings {
    pub name: String,
    pub namespace: String,
    pub listeners: Vec<Listener>,
    /// (certificate chain PEM, private key PEM) of each TLS listener, by listener name.
    pub listener_tls: BTreeMap<String, (SecretValue, SecretValue)>,
    pub recording: Recording,
    /// Where sessions are spooled: the local storage path (relative paths resolved against the
    /// manifests directory), else the volume's mount path, else `.agentgate/sessions`.
    pub recording_dir: std::path::PathBuf,
    /// Where closed sessions are shipped from the spool (`recording.storage.s3`).
    pub object_storage: Option<ObjectStorage>,
    /// The key that signs sessions (`recording.signingKeySecretRef`): PKCS#8 DER, checked to be
    /// Ed25519. `None`: each recorder makes its own.
    pub signing_key: Option<SecretValue>,
    /// The Hash strategy's key (`masking.hashKeySecretRef`), else the process's own.
    pub hash_key: HashKey,
    pub approvals: ApprovalBounds,
    /// Whether DPoP proofs must carry a nonce this process issued (`spec.dpop.nonce`, `Auto`
    /// resolved).
    pub dpop_nonce_required: bool,
    /// The origins a proof's `htu` must name (`spec.dpop.origins`); empty: the request's own.
    pub dpop_origins: Vec<String>,
}

/// An S3-compatible bucket that closed sessions are shipped to, credentials resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectStorage {
    pub bucket: String,
    /// Key prefix: empty, or ending with `/`.
    pub prefix: String,
    /// The store's URL (path-style addressing); `None` is AWS (virtual-host style).
    pub endpoint: Option<String>,
    pub region: String,
    pub access_key_id: SecretValue,
    pub secret_access_key: SecretValue,
}

/// The key of the S3 credentials Secret that holds the secret access key (the access key id's
/// key is the one `credentialsSecretRef` names).
pub const SECRET_ACCESS_KEY: &str = "secretAccessKey";

/// Approval bounds, parsed.
#[derive(Clone, Copy, Debug)]
pub struct ApprovalBounds {
    pub default_timeout: Duration,
    pub max_grant: Duration,
}

/// A connection with its credential resolved.
#[derive(Debug)]
pub struct CompiledConnection {
    pub name: String,
    pub kind: ConnectionType,
    pub endpoint: Endpoint,
    pub credential: Option<Credential>,
    /// Where the credential comes from, never its value (scheme, user name, Secret and key): part
    /// of what an approval was given for.
    pub credential_source: Option<String>,
    /// PEM CA bundle for the upstream, when configured.
    pub ca: Option<SecretValue>,
    pub server_name: Option<String>,
    pub insecure_skip_verify: bool,
    /// The Connection sets `spec.tls` or a client certificate: a server that declines TLS is
    /// refused even on loopback.
    pub tls_required: bool,
    pub route_host: Option<String>,
    pub route_path_prefix: Option<String>,
}

/// A parsed endpoint URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub scheme: String,
    pub host: String,
    pub port: u16,
    /// Path (HTTP) or database name (Postgres, without the leading `/`).
    pub path: String,
}

impl Endpoint {
    /// Whether the target is on this host, where plaintext does not cross a network.
    pub fn is_loopback(&self) -> bool {
        is_loopback_host(&self.host)
    }
}

/// Whether Secret `name`, named by field `path`, may be sent to `to` (a field and the endpoint
/// there); when its owner bound it to other origins (or `to` is unset), an error names both
/// fields. `true` when the Secret is bound and the origin is one of its.
fn check_bound(
    m: &Manifest,
    secrets: &SecretStore,
    path: &str,
    name: &str,
    (to_field, to): (&str, Option<&Endpoint>),
    errors: &mut Vec<ConfigError>,
) -> bool {
    let ns = m.namespace();
    let Some(origins) = secrets.bound_origins(ns, name) else {
        return false;
    };
    let listed = origins
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let annotation = agentgate_crds::CREDENTIAL_ENDPOINTS_ANNOTATION;
    match to.map(Origin::of) {
        Some(origin) if origins.contains(&origin) => true,
        Some(origin) => {
            errors.push(m.error(
                to_field,
                format!(
                    "Invalid value: {origin}: the Secret {ns}/{name} of {path} may be sent only to {listed} (its annotation {annotation})"
                ),
            ));
            false
        }
        None => {
            errors.push(m.error(
                to_field,
                format!(
                    "Required value: the Secret {ns}/{name} of {path} may be sent only to {listed} (its annotation {annotation}): name the endpoint"
                ),
            ));
            false
        }
    }
}

/// The port name the operator gives a listener's container port, and the admin port's.
pub const ADMIN_PORT_NAME: &str = "admin";

/// Why a listener name cannot be a container port name (Kubernetes' IANA_SVC_NAME: at most 15
/// characters of lowercase letters, digits and single hyphens, at least one letter), if it cannot.
fn port_name_refusal(name: &str) -> Option<&'static str> {
    if name.len() > 15 {
        Some("is at most 15 characters")
    } else if !name.bytes().any(|b| b.is_ascii_lowercase()) {
        Some("holds at least one letter")
    } else if name.contains("--") {
        Some("holds no two hyphens in a row")
    } else if name == ADMIN_PORT_NAME {
        Some("is taken by the admin port")
    } else {
        None
    }
}

/// Whether `host` (a name or an IP address, IPv4-mapped IPv6 included) is this host's loopback.
pub(crate) fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// A credential the gateway injects.
#[derive(Debug)]
pub struct Credential {
    pub scheme: CredentialScheme,
    pub username: Option<String>,
    /// Token or password (`None` for client certificates).
    pub secret: Option<SecretValue>,
    /// (certificate chain PEM, private key PEM) for client certificates.
    pub client_certificate: Option<(SecretValue, SecretValue)>,
}

/// An identity with the secrets it needs resolved.
#[derive(Debug)]
pub struct CompiledIdentity {
    pub name: String,
    pub spec: agentgate_crds::AgentIdentitySpec,
    pub max_token_lifetime: Option<Duration>,
    /// Static JWKS, when `keys.secretRef` is set.
    pub static_jwks: Option<SecretValue>,
    /// Client secret or private key for introspection.
    pub introspection_secret: Option<SecretValue>,
}

/// A policy with its globs compiled.
#[derive(Debug)]
pub struct CompiledPolicy {
    pub name: String,
    pub spec: agentgate_crds::AccessPolicySpec,
    pub rules: Vec<CompiledRule>,
    /// The policy's masking rules, compiled under the process's hash key.
    pub masking: crate::masking::MaskingPlan,
    /// Whether a rule reads the request body (`jsonBody`), kept so requests need not scan rules.
    pub reads_body: bool,
    /// Whether a rule reads the parameters of a form or JSON body (a query or `jsonBody`
    /// condition).
    pub reads_params: bool,
}

impl CompiledPolicy {
    /// Compiles one policy outside a manifest set (benchmarks, tests, tools); the loader does the
    /// same with cross-object checks and field paths.
    pub fn from_spec(name: &str, spec: agentgate_crds::AccessPolicySpec) -> Result<Self, String> {
        let mut rules = Vec::with_capacity(spec.rules.len());
        for (i, r) in spec.rules.iter().enumerate() {
            let matcher = crate::policy::rule::compile(r).map_err(|e| format!("spec.rules[{i}]: {e:?}"))?;
            rules.push(CompiledRule {
                name: r.name.clone(),
                action: r.action,
                matcher,
                approval_timeout: None,
                grant_duration: None,
            });
        }
        let masking_rules: Vec<_> = spec.masking.iter().collect();
        let masking = MaskingPlan::compile(&masking_rules, HashKey::process()).map_err(|e| e.to_string())?;
        Ok(Self {
            name: name.to_string(),
            spec,
            reads_body: rules.iter().any(|r| r.matcher.needs_body()),
            reads_params: rules.iter().any(|r| r.matcher.needs_params()),
            rules,
            masking,
        })
    }
}

/// A rule with its matcher compiled.
#[derive(Debug)]
pub struct CompiledRule {
    pub name: String,
    pub action: Action,
    pub matcher: crate::policy::rule::CompiledMatcher,
    pub approval_timeout: Option<Duration>,
    pub grant_duration: Option<Duration>,
}

/// Kinds read from manifests, with the apiVersion each must carry.
const KNOWN_KINDS: &[(&str, &str)] = &[
    ("AgentGateway", agentgate_crds::API_VERSION),
    ("Connection", agentgate_crds::API_VERSION),
    ("AgentIdentity", agentgate_crds::API_VERSION),
    ("AccessPolicy", agentgate_crds::API_VERSION),
    ("ApprovalRequest", agentgate_crds::API_VERSION),
    ("Secret", "v1"),
    // Namespaces may sit beside the objects so the same directory applies to a cluster.
    ("Namespace", "v1"),
];

/// Objects of each kind, after schema validation and defaulting.
#[derive(Default)]
struct Objects<'m> {
    gateways: Vec<(&'m Manifest, AgentGateway)>,
    connections: Vec<(&'m Manifest, Connection)>,
    identities: Vec<(&'m Manifest, AgentIdentity)>,
    policies: Vec<(&'m Manifest, AccessPolicy)>,
}

/// Validates and compiles. Problems go to `errors`; `None` when nothing could be compiled.
pub fn compile(
    manifests: Vec<Manifest>,
    options: &LoadOptions,
    errors: &mut Vec<ConfigError>,
) -> Option<GatewayConfig> {
    let validators: HashMap<String, SchemaValidator> = generate::validators().into_iter().collect();
    let mut secrets =
        SecretStore::new(options.secrets_dir.clone()).withholding(options.withheld_secrets.clone());
    let mut objects = Objects::default();
    let mut seen: HashMap<(String, String, String), &Manifest> = HashMap::new();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut hasher = Sha256::new();

    for m in &manifests {
        hasher.update(m.file.to_string_lossy().as_bytes());
        hasher.update(m.value.to_string().as_bytes());
        if !check_identity(m, errors) {
            continue;
        }
        let key = (
            m.kind().to_string(),
            m.namespace().to_string(),
            m.name().to_string(),
        );
        if let Some(first) = seen.get(&key) {
            errors.push(m.error(
                "metadata.name",
                format!(
                    "Duplicate value: {:?}: already defined at {}:{}",
                    m.name(),
                    first.file.display(),
                    first.line
                ),
            ));
            continue;
        }
        seen.insert(key, m);
        *counts.entry(m.kind().to_string()).or_default() += 1;
        match m.kind() {
            "Secret" => secrets.add_manifest(m, errors),
            "Namespace" => {}
            kind => {
                let validator = &validators[kind];
                let field_errors = validator.validate(&m.value, None);
                if !field_errors.is_empty() {
                    for e in field_errors {
                        errors.push(m.error(&e.path, e.to_string()));
                    }
                    continue;
                }
                let defaulted = validator.apply_defaults(&m.value);
                match kind {
                    "AgentGateway" => push_typed(m, &defaulted, &mut objects.gateways, errors),
                    "Connection" => push_typed(m, &defaulted, &mut objects.connections, errors),
                    "AgentIdentity" => push_typed(m, &defaulted, &mut objects.identities, errors),
                    "AccessPolicy" => push_typed(m, &defaulted, &mut objects.policies, errors),
                    // ApprovalRequests are runtime objects; a directory may carry them (an export of
                    // a cluster), and they are validated but not configuration.
                    _ => {}
                }
            }
        }
    }
    if !errors.is_empty() {
        return None;
    }
    let (gm, gateway) = select_gateway(&objects, options, errors)?;
    let namespace = gm.namespace().to_string();
    let settings = compile_gateway(gm, gateway, options, &mut secrets, errors);

    let mut connections = BTreeMap::new();
    // A host or a path prefix routes to one Connection. Where two claim one, neither is served:
    // the one a tie-break (by name) would pick could be a newcomer's, taking the other's
    // traffic and answering its agents.
    let mut claims: HashMap<String, Vec<&str>> = HashMap::new();
    for (m, c) in objects
        .connections
        .iter()
        .filter(|(m, c)| m.namespace() == namespace && c.spec.gateway_ref.name == gm.name())
    {
        if let Some(route) = &c.spec.route {
            if let Some(h) = &route.host {
                claims
                    .entry(format!("host {}", h.to_ascii_lowercase()))
                    .or_default()
                    .push(m.name());
            }
            if let Some(p) = &route.path_prefix {
                let p = p.trim_end_matches('/');
                claims
                    .entry(format!("pathPrefix {}", if p.is_empty() { "/" } else { p }))
                    .or_default()
                    .push(m.name());
            }
        }
    }
    claims.retain(|_, names| names.len() > 1);
    for (m, c) in objects
        .connections
        .iter()
        .filter(|(m, _)| m.namespace() == namespace)
    {
        let target = &c.spec.gateway_ref.name;
        if !objects
            .gateways
            .iter()
            .any(|(other, _)| other.namespace() == namespace && other.name() == target)
        {
            errors.push(m.error(
                "spec.gatewayRef.name",
                format!("AgentGateway {namespace}/{target} not found"),
            ));
            continue;
        }
        if target != gm.name() {
            continue;
        }
        let mut contested: Vec<String> = claims
            .iter()
            .filter(|(_, names)| names.contains(&m.name()))
            .map(|(route, names)| {
                let others: Vec<&str> = names.iter().copied().filter(|n| *n != m.name()).collect();
                format!("{route} (also Connection {})", others.join(", "))
            })
            .collect();
        if !contested.is_empty() {
            contested.sort();
            errors.push(m.error(
                "spec.route",
                format!(
                    "Duplicate value: {}; neither Connection is served until one route changes",
                    contested.join("; ")
                ),
            ));
            continue;
        }
        if let Some(compiled) = compile_connection(m, c, &secrets, errors) {
            connections.insert(m.name().to_string(), compiled);
        }
    }
    let mut identities = BTreeMap::new();
    for (m, i) in objects
        .identities
        .iter()
        .filter(|(m, _)| m.namespace() == namespace)
    {
        if let Some(compiled) = compile_identity(m, i, &secrets, errors) {
            identities.insert(m.name().to_string(), std::sync::Arc::new(compiled));
        }
    }
    warn_colliding_claim_groups(identities.values().map(AsRef::as_ref));
    // What the verifier would refuse, refused here with the field: a configuration called valid
    // must not leave the gateway unable to verify anyone.
    for refusal in crate::identity::refusals(identities.values().map(AsRef::as_ref)) {
        if let Some((m, _)) = objects
            .identities
            .iter()
            .find(|(m, _)| m.namespace() == namespace && m.name() == refusal.identity)
        {
            errors.push(m.error(refusal.field, format!("Invalid value: {}", refusal.message)));
        }
    }

    let all_connections: Vec<&str> = objects
        .connections
        .iter()
        .filter(|(m, _)| m.namespace() == namespace)
        .map(|(m, _)| m.name())
        .collect();
    let mut policies = Vec::new();
    for (m, p) in objects
        .policies
        .iter()
        .filter(|(m, _)| m.namespace() == namespace)
    {
        for (i, name) in p.spec.connections.iter().enumerate() {
            if name != "*" && !all_connections.contains(&name.as_str()) {
                errors.push(m.error(
                    &format!("spec.connections[{i}]"),
                    format!("Connection {namespace}/{name} not found"),
                ));
            }
        }
        for (i, name) in p.spec.subjects.identities.iter().enumerate() {
            if !identities.contains_key(name) {
                errors.push(m.error(
                    &format!("spec.subjects.identities[{i}]"),
                    format!("AgentIdentity {namespace}/{name} not found"),
                ));
            }
        }
        let applies = p
            .spec
            .connections
            .iter()
            .any(|c| c == "*" || connections.contains_key(c));
        let rules: Vec<CompiledRule> = p
            .spec
            .rules
            .iter()
            .enumerate()
            .filter_map(|(i, r)| compile_rule(m, &format!("spec.rules[{i}]"), r, &settings.approvals, errors))
            .collect();
        // Column rules read PostgreSQL results only: on a policy of no PostgreSQL connection
        // they would never apply, a mistake better named than kept silently (unless a
        // connection it names is missing, which is the error to fix first).
        let dangling = p
            .spec
            .connections
            .iter()
            .any(|n| n != "*" && !all_connections.contains(&n.as_str()));
        let reaches = |kind: ConnectionType| {
            dangling
                || objects.connections.iter().any(|(cm, c)| {
                    cm.namespace() == namespace
                        && c.spec.r#type == kind
                        && p.spec.connections.iter().any(|n| n == "*" || n == cm.name())
                })
        };
        let reaches_postgres = reaches(ConnectionType::Postgres);
        // Likewise a rule's conditions for a kind of Connection the policy does not reach: an
        // `http` Deny on a policy of Kubernetes connections would never match, silently.
        for (i, r) in p.spec.rules.iter().enumerate() {
            for (set, field, kind, what) in [
                (r.http.is_some(), "http", ConnectionType::Http, "HTTP"),
                (
                    r.kubernetes.is_some(),
                    "kubernetes",
                    ConnectionType::Kubernetes,
                    "Kubernetes",
                ),
                (r.sql.is_some(), "sql", ConnectionType::Postgres, "PostgreSQL"),
            ] {
                if set && !reaches(kind) {
                    errors.push(m.error(
                        &format!("spec.rules[{i}].{field}"),
                        format!("{field} conditions decide {what} Connections' operations, and none of this policy's Connections is one (a Kubernetes API is decided by kubernetes conditions, a database by sql)"),
                    ));
                }
            }
        }
        for (i, rule) in p.spec.masking.iter().enumerate() {
            if !rule.columns.is_empty() && !reaches_postgres {
                errors.push(m.error(
                    &format!("spec.masking[{i}].columns"),
                    "column rules mask PostgreSQL results, and none of this policy's Connections is PostgreSQL (use jsonFields or detectors for HTTP)".to_string(),
                ));
            }
        }
        let masking_rules: Vec<_> = p.spec.masking.iter().collect();
        let masking = match MaskingPlan::compile(&masking_rules, settings.hash_key.clone()) {
            Ok(plan) => Some(plan),
            Err(e) => {
                errors.push(m.error(
                    &format!("spec.{}", e.field),
                    format!("Invalid value: {}", e.problem),
                ));
                None
            }
        };
        if applies && let Some(masking) = masking {
            policies.push(CompiledPolicy {
                name: m.name().to_string(),
                spec: p.spec.clone(),
                reads_body: rules.iter().any(|r| r.matcher.needs_body()),
                reads_params: rules.iter().any(|r| r.matcher.needs_params()),
                rules,
                masking,
            });
        }
    }

    if !errors.is_empty() {
        return None;
    }
    for (path, digest) in secrets.files_read() {
        hasher.update(path.to_string_lossy().as_bytes());
        hasher.update(digest);
    }
    let source_hash = hex(&hasher.finalize());
    let policy_index = PolicyIndex::build(&policies, connections.keys().map(String::as_str));
    let asks_approval = policies
        .iter()
        .any(|p| p.rules.iter().any(|r| r.action == Action::RequireApproval));
    Some(GatewayConfig {
        source_hash,
        object_counts: counts,
        gateway: settings,
        connections,
        identities,
        policies,
        policy_index,
        asks_approval,
        secret_keys_used: secrets.used(),
    })
}

/// apiVersion, kind and metadata: what every object needs before its schema can be chosen.
fn check_identity(m: &Manifest, errors: &mut Vec<ConfigError>) -> bool {
    let kind = m.kind();
    let api_version = m.api_version();
    if kind.is_empty() || api_version.is_empty() {
        let field = if api_version.is_empty() {
            "apiVersion"
        } else {
            "kind"
        };
        errors.push(ConfigError {
            object: None,
            ..m.error(
                field,
                format!("Required value: every manifest needs apiVersion and kind ({field} is missing)"),
            )
        });
        return false;
    }
    match KNOWN_KINDS.iter().find(|(k, _)| *k == kind) {
        None => {
            let known: Vec<&str> = KNOWN_KINDS.iter().map(|(k, _)| *k).collect();
            errors.push(m.error(
                "kind",
                format!(
                    "Unsupported value: {kind:?}: agentgate reads {}",
                    known.join(", ")
                ),
            ));
            return false;
        }
        Some((_, expected)) if *expected != api_version => {
            errors.push(m.error(
                "apiVersion",
                format!("Unsupported value: {api_version:?}: {kind} is served as {expected:?}"),
            ));
            return false;
        }
        Some(_) => {}
    }
    // Compiled once per process, not once per manifest.
    static NAME_RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    static LABEL_RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let name_re = NAME_RE.get_or_init(|| {
        regex::Regex::new(agentgate_crds::common::DNS_SUBDOMAIN_PATTERN).expect("static regex")
    });
    let label_re = LABEL_RE
        .get_or_init(|| regex::Regex::new(agentgate_crds::common::DNS_LABEL_PATTERN).expect("static regex"));
    let name = m.name();
    if name.is_empty() {
        errors.push(m.error("metadata.name", "Required value: name is required"));
        return false;
    }
    if name.len() > 253 || !name_re.is_match(name) {
        errors.push(m.error(
            "metadata.name",
            format!("Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'"),
        ));
        return false;
    }
    let ns = m.namespace();
    if ns.len() > 63 || !label_re.is_match(ns) {
        errors.push(m.error(
            "metadata.namespace",
            format!("Invalid value: {ns:?}: a namespace must be a DNS label"),
        ));
        return false;
    }
    true
}

fn push_typed<'m, T: DeserializeOwned>(
    m: &'m Manifest,
    value: &Value,
    out: &mut Vec<(&'m Manifest, T)>,
    errors: &mut Vec<ConfigError>,
) {
    match serde_json::from_value::<T>(value.clone()) {
        Ok(t) => out.push((m, t)),
        // The schema accepted it, so this is a mismatch between schema and type: a bug, reported
        // as such rather than as the user's fault.
        Err(e) => errors.push(m.error(
            "",
            format!("internal error: object passed schema validation but does not decode: {e}"),
        )),
    }
}

fn select_gateway<'a, 'm>(
    objects: &'a Objects<'m>,
    options: &LoadOptions,
    errors: &mut Vec<ConfigError>,
) -> Option<(&'m Manifest, &'a AgentGateway)> {
    let candidates: Vec<_> = match &options.gateway {
        Some(name) => objects
            .gateways
            .iter()
            .filter(|(m, _)| m.name() == name)
            .collect(),
        None => objects.gateways.iter().collect(),
    };
    match candidates.as_slice() {
        [(m, g)] => Some((*m, g)),
        [] => {
            let what = options
                .gateway
                .as_ref()
                .map_or("an AgentGateway".to_string(), |n| format!("AgentGateway {n:?}"));
            errors.push(ConfigError::file(
                &options.manifests,
                format!("{what} is required: the directory declares none"),
            ));
            None
        }
        many => {
            let names: Vec<String> = many
                .iter()
                .map(|(m, _)| format!("{}/{}", m.namespace(), m.name()))
                .collect();
            errors.push(ConfigError::file(
                &options.manifests,
                format!(
                    "several AgentGateways ({}); choose one with --gateway",
                    names.join(", ")
                ),
            ));
            None
        }
    }
}

fn compile_gateway(
    m: &Manifest,
    g: &AgentGateway,
    options: &LoadOptions,
    secrets: &mut SecretStore,
    errors: &mut Vec<ConfigError>,
) -> GatewaySettings {
    let mut listener_tls = BTreeMap::new();
    for (i, l) in g.spec.listeners.iter().enumerate() {
        let Some(tls) = &l.tls else { continue };
        let field = format!("spec.listeners[{i}].tls.secretName");
        let crt = secrets.get(m.namespace(), &tls.secret_name, "tls.crt");
        let key = secrets.get(m.namespace(), &tls.secret_name, "tls.key");
        match (crt, key) {
            (Ok(crt), Ok(key)) => {
                // Checked here, so that a renewal with a bad pair is refused at load and the
                // listener in force keeps its certificate.
                match crate::protocol::http::tls::server_config(&crt, &key) {
                    Ok(_) => {
                        listener_tls.insert(l.name.clone(), (crt, key));
                    }
                    Err(e) => errors.push(m.error(
                        &field,
                        format!("Invalid value: Secret {}/{}: {e}", m.namespace(), tls.secret_name),
                    )),
                }
            }
            (Err(e), _) | (_, Err(e)) => errors.push(m.error(&field, e)),
        }
    }
    let storage = g.spec.recording.storage.as_ref();
    let object_storage = storage
        .and_then(|s| s.s3.as_ref())
        .and_then(|s3| object_storage(m, s3, secrets, errors));
    let recording_dir = match (
        storage.and_then(|s| s.local.as_ref()),
        storage.and_then(|s| s.volume.as_ref()),
    ) {
        (Some(local), _) => options.manifests.join(&local.path),
        // The operator mounts the claim here.
        (None, Some(_)) => std::path::PathBuf::from(SESSIONS_VOLUME_MOUNT),
        (None, None) => options.manifests.join(".agentgate/sessions"),
    };
    for (i, l) in g.spec.listeners.iter().enumerate() {
        // The schema's pattern admits what no socket binds (`1.2.3`, `127.0.0.01`): found here,
        // not by every replica failing to bind it.
        if let Some(address) = l.address.as_deref()
            && address.parse::<std::net::IpAddr>().is_err()
        {
            errors.push(m.error(
                &format!("spec.listeners[{i}].address"),
                format!("Invalid value: {address:?}: not an IPv4 or IPv6 address"),
            ));
        }
        if options.loopback_only && !l.address.as_deref().is_some_and(is_loopback_host) {
            errors.push(m.error(
                &format!("spec.listeners[{i}].address"),
                format!(
                    "Invalid value: {:?}: development mode serves only on loopback (127.0.0.1 or ::1): its tokens are issued to anyone who asks",
                    l.address.as_deref().unwrap_or("(all addresses)")
                ),
            ));
        }
        if options.in_cluster
            && let Some(why) = port_name_refusal(&l.name)
        {
            errors.push(m.error(
                &format!("spec.listeners[{i}].name"),
                format!(
                    "Invalid value: {:?}: in a cluster a listener's name is also its pod's port name, which {why}",
                    l.name
                ),
            ));
        }
        if options.in_cluster && l.address.as_deref().is_some_and(is_loopback_host) {
            errors.push(m.error(
                &format!("spec.listeners[{i}].address"),
                format!(
                    "Invalid value: {:?}: a loopback address is unreachable through the gateway's Service; omit address in a cluster",
                    l.address.as_deref().unwrap_or_default()
                ),
            ));
        }
        if options.reserved_ports.contains(&(l.port as u16)) {
            errors.push(m.error(
                &format!("spec.listeners[{i}].port"),
                format!(
                    "Invalid value: {}: the port is taken by the admin listener",
                    l.port
                ),
            ));
        }
    }
    let approvals = parse_approvals(m, &g.spec.approvals, errors);
    if let Err(e) = g.spec.recording.retention.to_std() {
        errors.push(m.error("spec.recording.retention", format!("Invalid value: {e}")));
    }
    let signing_key = g.spec.recording.signing_key_secret_ref.as_ref().and_then(|r| {
        let field = "spec.recording.signingKeySecretRef";
        match secrets.get(m.namespace(), &r.name, &r.key) {
            Ok(pem) => match crate::recording::signing_key_from_pem(pem.expose()) {
                Ok((der, _)) => Some(SecretValue::new(der)),
                Err(why) => {
                    errors.push(m.error(
                        field,
                        format!(
                            "Invalid value: Secret {}/{} key {:?}: {why}",
                            m.namespace(),
                            r.name,
                            r.key
                        ),
                    ));
                    None
                }
            },
            Err(e) => {
                errors.push(m.error(field, e));
                None
            }
        }
    });
    let hash_key = g
        .spec
        .masking
        .as_ref()
        .and_then(|k| k.hash_key_secret_ref.as_ref())
        .and_then(|r| {
            let field = "spec.masking.hashKeySecretRef";
            match secrets.get(m.namespace(), &r.name, &r.key) {
                Ok(key) if key.expose().len() >= MIN_HASH_KEY_BYTES => Some(HashKey::from_secret(key.expose())),
                Ok(key) => {
                    errors.push(m.error(
                        field,
                        format!(
                            "Invalid value: Secret {}/{} key {:?} holds {} bytes; a hash key needs at least {MIN_HASH_KEY_BYTES}",
                            m.namespace(),
                            r.name,
                            r.key,
                            key.expose().len()
                        ),
                    ));
                    None
                }
                Err(e) => {
                    errors.push(m.error(field, e));
                    None
                }
            }
        })
        .unwrap_or_else(HashKey::process);
    GatewaySettings {
        name: m.name().to_string(),
        namespace: m.namespace().to_string(),
        listeners: g.spec.listeners.clone(),
        listener_tls,
        recording: g.spec.recording.clone(),
        recording_dir,
        object_storage,
        signing_key,
        hash_key,
        approvals,
        dpop_nonce_required: g.spec.dpop_nonce_required(options.replicated),
        dpop_origins: g
            .spec
            .dpop
            .as_ref()
            .map(|d| d.origins.clone())
            .unwrap_or_default(),
    }
}

/// The shortest `masking.hashKeySecretRef` accepted: the HMAC-SHA256 key's own size.
const MIN_HASH_KEY_BYTES: usize = 32;

/// Resolves `spec.recording.storage.s3`. The endpoint follows the rule for identity-provider
/// URLs (https, or http to loopback), as the sessions it receives hold what the agents did.
fn object_storage(
    m: &Manifest,
    s3: &agentgate_crds::gateway::S3Storage,
    secrets: &SecretStore,
    errors: &mut Vec<ConfigError>,
) -> Option<ObjectStorage> {
    let before = errors.len();
    if let Some(endpoint) = &s3.endpoint {
        let shown = without_userinfo(endpoint);
        if shown != *endpoint {
            errors.push(m.error(
                "spec.recording.storage.s3.endpoint",
                format!("Invalid value: {shown:?}: credentials in the URL are not allowed; use credentialsSecretRef"),
            ));
        } else if !crate::identity::discovery::is_secure_url(endpoint) {
            errors.push(m.error(
                "spec.recording.storage.s3.endpoint",
                format!("Invalid value: {shown:?}: must be https (http only to a loopback address)"),
            ));
        }
    }
    let prefix = s3.prefix.trim_matches('/');
    if !prefix.is_empty()
        && prefix
            .split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        errors.push(m.error(
            "spec.recording.storage.s3.prefix",
            "Invalid value: must not contain empty, '.' or '..' segments",
        ));
    }
    let field = "spec.recording.storage.s3.credentialsSecretRef";
    let Some(r) = &s3.credentials_secret_ref else {
        errors.push(m.error(
            field,
            "Required value: name the Secret holding the access key id (this key) and secretAccessKey; ambient credentials are not read",
        ));
        return None;
    };
    let endpoint = s3.endpoint.as_deref().and_then(|e| parse_endpoint(e).ok());
    check_bound(
        m,
        secrets,
        field,
        &r.name,
        ("spec.recording.storage.s3.endpoint", endpoint.as_ref()),
        errors,
    );
    let read = |key: &str| {
        let v = secrets.get(m.namespace(), &r.name, key)?;
        let text = std::str::from_utf8(v.expose()).map(str::trim).unwrap_or_default();
        if text.is_empty() {
            return Err(format!(
                "Secret {}/{} key {key:?} must be non-empty text",
                m.namespace(),
                r.name
            ));
        }
        Ok(SecretValue::new(text.as_bytes().to_vec()))
    };
    // A missing Secret is one error, not one per key.
    let keys = read(&r.key).and_then(|id| Ok((id, read(SECRET_ACCESS_KEY)?)));
    let (access_key_id, secret_access_key) = match keys {
        Ok(keys) => keys,
        Err(e) => {
            errors.push(m.error(field, e));
            return None;
        }
    };
    (errors.len() == before).then(|| ObjectStorage {
        bucket: s3.bucket.clone(),
        prefix: if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}/")
        },
        endpoint: s3.endpoint.clone(),
        region: s3.region.clone(),
        access_key_id,
        secret_access_key,
    })
}

fn parse_approvals(m: &Manifest, a: &ApprovalSettings, errors: &mut Vec<ConfigError>) -> ApprovalBounds {
    let mut parse = |field: &str, d: &agentgate_crds::DurationString| match d.to_std() {
        Ok(v) => v,
        Err(e) => {
            errors.push(m.error(field, format!("Invalid value: {e}")));
            Duration::ZERO
        }
    };
    ApprovalBounds {
        default_timeout: parse("spec.approvals.defaultTimeout", &a.default_timeout),
        max_grant: parse("spec.approvals.maxGrant", &a.max_grant),
    }
}

/// `url` with everything before its last `@` (after the scheme) replaced by `***`: an endpoint
/// refused for carrying credentials is quoted in errors and statuses without them. A password
/// may hold `/`, `?` or `#` (AWS secret keys hold `/`), so the authority cannot be told from
/// the path until the last `@`.
pub fn without_userinfo(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    match rest.rfind('@') {
        Some(at) if scheme.is_empty() => format!("***{}", &rest[at..]),
        Some(at) => format!("{scheme}://***{}", &rest[at..]),
        None => url.to_string(),
    }
}

/// Parses `scheme://host[:port][/path]` without accepting user info, queries or fragments.
pub fn parse_endpoint(url: &str) -> Result<Endpoint, String> {
    let (scheme, rest) = url.split_once("://").ok_or("expected scheme://host")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    // Anywhere: a password may hold `/` (see `without_userinfo`).
    if rest.contains('@') {
        return Err(
            "credentials in the URL are not allowed (an endpoint may not contain '@'; write one in a path as %40); use spec.credentials".into(),
        );
    }
    if path.contains(['?', '#']) {
        return Err("queries and fragments are not allowed in an endpoint".into());
    }
    let default_port = match scheme {
        "https" => 443,
        "http" => 80,
        "postgres" | "postgresql" => 5432,
        other => return Err(format!("unsupported scheme {other:?}")),
    };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or("unterminated IPv6 address")?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse::<u16>().map_err(|_| format!("invalid port {p:?}"))?,
            None if after.is_empty() => default_port,
            None => return Err("invalid authority".into()),
        };
        (h.to_string(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                p.parse::<u16>().map_err(|_| format!("invalid port {p:?}"))?,
            ),
            None => (authority.to_string(), default_port),
        }
    };
    if host.is_empty() {
        return Err("missing host".into());
    }
    if port == 0 {
        return Err("port 0 is not a valid target".into());
    }
    let path = if matches!(scheme, "postgres" | "postgresql") {
        path.trim_start_matches('/').to_string()
    } else {
        path.to_string()
    };
    Ok(Endpoint {
        scheme: scheme.to_string(),
        host,
        port,
        path,
    })
}

fn compile_connection(
    m: &Manifest,
    c: &Connection,
    secrets: &SecretStore,
    errors: &mut Vec<ConfigError>,
) -> Option<CompiledConnection> {
    let ns = m.namespace();
    let endpoint = match parse_endpoint(&c.spec.endpoint) {
        Ok(e) => e,
        Err(e) => {
            errors.push(m.error(
                "spec.endpoint",
                format!("Invalid value: {:?}: {e}", without_userinfo(&c.spec.endpoint)),
            ));
            return None;
        }
    };
    if c.spec.r#type == ConnectionType::Postgres && endpoint.path.is_empty() {
        errors.push(m.error(
            "spec.endpoint",
            "Invalid value: a Postgres endpoint must name the database: postgres://host:port/DATABASE",
        ));
    }
    // A Secret bound to origins goes to none other, and never over unverified TLS.
    let secret_refs = c.spec.credentials.iter().flat_map(|cred| {
        let token = cred
            .secret_ref
            .as_ref()
            .map(|r| ("spec.credentials.secretRef", r.name.as_str()));
        let certificate = cred
            .certificate_secret_ref
            .as_ref()
            .map(|r| ("spec.credentials.certificateSecretRef", r.name.as_str()));
        token.into_iter().chain(certificate)
    });
    for (path, name) in secret_refs {
        let sent = check_bound(m, secrets, path, name, ("spec.endpoint", Some(&endpoint)), errors);
        if sent && c.spec.tls.as_ref().and_then(|t| t.insecure_skip_verify) == Some(true) {
            errors.push(m.error(
                "spec.tls.insecureSkipVerify",
                format!(
                    "Invalid value: true: the Secret {ns}/{name} of {path} is bound to origins, which only a verified server can prove to be"
                ),
            ));
        }
    }
    let mut resolve = |path: &str, name: &str, key: &str| match secrets.get(ns, name, key) {
        Ok(v) => Some(v),
        Err(e) => {
            errors.push(m.error(path, e));
            None
        }
    };
    let credential = c.spec.credentials.as_ref().map(|cred| {
        let secret = cred
            .secret_ref
            .as_ref()
            .and_then(|r| resolve("spec.credentials.secretRef", &r.name, &r.key));
        let client_certificate = cred.certificate_secret_ref.as_ref().and_then(|r| {
            let crt = resolve("spec.credentials.certificateSecretRef", &r.name, "tls.crt")?;
            let key = resolve("spec.credentials.certificateSecretRef", &r.name, "tls.key")?;
            Some((crt, key))
        });
        Credential {
            scheme: cred.scheme,
            username: cred.username.clone(),
            secret,
            client_certificate,
        }
    });
    let tls = c.spec.tls.clone().unwrap_or_default();
    let ca = tls
        .ca_secret_ref
        .as_ref()
        .and_then(|r| resolve("spec.tls.caSecretRef", &r.name, &r.key));
    // What the upstream client is built from, checked here: refused at load rather than failing
    // every request after the swap.
    use crate::protocol::http::tls::{UpstreamTls, check_client_config};
    if let Some(ca) = &ca
        && let Err(e) = check_client_config(&UpstreamTls {
            ca: Some(ca),
            ..UpstreamTls::default()
        })
    {
        errors.push(m.error("spec.tls.caSecretRef", format!("Invalid value: {e}")));
    }
    if let Some((crt, key)) = credential.as_ref().and_then(|c| c.client_certificate.as_ref())
        && let Err(e) = check_client_config(&UpstreamTls {
            insecure_skip_verify: true,
            client_certificate: Some((crt, key)),
            ..UpstreamTls::default()
        })
    {
        errors.push(m.error(
            "spec.credentials.certificateSecretRef",
            format!("Invalid value: {e}"),
        ));
    }
    if let Some(name) = &tls.server_name
        && rustls::pki_types::ServerName::try_from(name.as_str()).is_err()
    {
        errors.push(m.error(
            "spec.tls.serverName",
            format!("Invalid value: {name:?}: not a DNS name or IP address"),
        ));
    }
    // A token sent in a header cannot carry control characters, and white space around it is
    // not part of it; a Basic or PostgreSQL password may hold spaces, but a line break at its end
    // is the one a file ends with (`kubectl create secret --from-file`), and PostgreSQL reads a
    // password up to a NUL. Such a value would fail every request: refused at load.
    if let Some(cred) = &credential
        && let Some(secret) = &cred.secret
    {
        let v = secret.expose();
        let token = matches!(cred.scheme, CredentialScheme::Bearer | CredentialScheme::Ssws);
        let unsendable = if token {
            v.iter().any(|b| b.is_ascii_control())
                || v.first().is_some_and(u8::is_ascii_whitespace)
                || v.last().is_some_and(u8::is_ascii_whitespace)
        } else {
            matches!(
                cred.scheme,
                CredentialScheme::Basic | CredentialScheme::PostgresPassword
            ) && (v.last().is_some_and(|b| matches!(b, b'\n' | b'\r')) || v.contains(&0))
        };
        if unsendable {
            errors.push(m.error(
                "spec.credentials.secretRef",
                "Invalid value: the Secret's value cannot be sent as it is: it ends with a line break (often the one a file ends with: create it with --from-literal, or from a file without one), or holds a control character, a NUL, or (a token) white space around it",
            ));
        }
    }
    if endpoint.scheme == "http" {
        // The injected credential would cross the network readable by anyone on the path.
        if credential.is_some() && !endpoint.is_loopback() {
            errors.push(m.error(
                "spec.endpoint",
                format!(
                    "Invalid value: {:?}: the credential would be sent in plaintext; use https:// (plaintext is for targets on loopback)",
                    without_userinfo(&c.spec.endpoint)
                ),
            ));
        }
        if c.spec.tls.is_some() {
            errors.push(m.error(
                "spec.tls",
                "Invalid value: TLS settings for an http:// endpoint; use https://",
            ));
        }
    }
    let client_certificate = credential
        .as_ref()
        .is_some_and(|c| c.client_certificate.is_some());
    if tls.insecure_skip_verify == Some(true) {
        tracing::warn!(
            connection = m.name(),
            "insecureSkipVerify is set: the upstream's certificate is not verified"
        );
    }
    Some(CompiledConnection {
        name: m.name().to_string(),
        kind: c.spec.r#type,
        endpoint,
        credential,
        credential_source: c.spec.credentials.as_ref().map(|cred| {
            let secret = |r: Option<(&str, &str)>| r.map(|(n, k)| format!("{n}/{k}")).unwrap_or_default();
            format!(
                "{:?} user={} secret={} certificate={}",
                cred.scheme,
                cred.username.as_deref().unwrap_or_default(),
                secret(
                    cred.secret_ref
                        .as_ref()
                        .map(|r| (r.name.as_str(), r.key.as_str()))
                ),
                secret(
                    cred.certificate_secret_ref
                        .as_ref()
                        .map(|r| (r.name.as_str(), "tls"))
                ),
            )
        }),
        ca,
        server_name: tls.server_name,
        insecure_skip_verify: tls.insecure_skip_verify == Some(true),
        tls_required: c.spec.tls.is_some() || client_certificate,
        route_host: c.spec.route.as_ref().and_then(|r| r.host.clone()),
        route_path_prefix: c.spec.route.as_ref().and_then(|r| r.path_prefix.clone()),
    })
}

/// Identities whose claim groups can take the name of a group of another issuer's identity: with
/// no `spec.groups.prefix`, or a prefix that overlaps the other's (one begins the other), or where
/// the other's static groups lie inside the prefix. A token of that issuer could then put itself
/// in the other's groups. A warning, not an error: issuers an organization runs alike may share
/// names on purpose.
fn colliding_claim_groups<'a>(
    identities: impl Iterator<Item = &'a CompiledIdentity>,
) -> Vec<(&'a str, &'a str)> {
    let all: Vec<&CompiledIdentity> = identities.collect();
    fn claim_prefix(i: &CompiledIdentity) -> Option<&str> {
        let groups = i.spec.groups.as_ref().filter(|g| g.claim.is_some())?;
        Some(groups.prefix.as_deref().unwrap_or_default())
    }
    all.iter()
        .filter(|a| {
            let Some(mine) = claim_prefix(a) else {
                return false;
            };
            all.iter().any(|b| {
                b.spec.issuer != a.spec.issuer
                    && (claim_prefix(b)
                        .is_some_and(|theirs| mine.starts_with(theirs) || theirs.starts_with(mine))
                        || b.spec
                            .groups
                            .as_ref()
                            .is_some_and(|g| g.r#static.iter().any(|s| s.starts_with(mine))))
            })
        })
        .map(|a| (a.name.as_str(), a.spec.issuer.as_str()))
        .collect()
}

fn warn_colliding_claim_groups<'a>(identities: impl Iterator<Item = &'a CompiledIdentity>) {
    let found = colliding_claim_groups(identities);
    if !found.is_empty() {
        let named: Vec<String> = found.iter().map(|(n, i)| format!("{n} ({i})")).collect();
        tracing::warn!(
            identities = %named.join(", "),
            "these identities take groups from a token claim that can name another issuer's groups: \
             give each issuer's identities a spec.groups.prefix of their own"
        );
    }
}

fn compile_identity(
    m: &Manifest,
    i: &AgentIdentity,
    secrets: &SecretStore,
    errors: &mut Vec<ConfigError>,
) -> Option<CompiledIdentity> {
    let ns = m.namespace();
    // A URL's password would be quoted in every fetch error (logs, readiness).
    let urls = [
        ("spec.issuer", Some(i.spec.issuer.as_str())),
        (
            "spec.keys.jwksUri",
            i.spec.keys.as_ref().and_then(|k| k.jwks_uri.as_deref()),
        ),
        (
            "spec.introspection.endpoint",
            i.spec.introspection.as_ref().and_then(|x| x.endpoint.as_deref()),
        ),
    ];
    for (field, url) in urls {
        if let Some(url) = url
            && without_userinfo(url) != url
        {
            errors.push(m.error(
                field,
                format!(
                    "Invalid value: {:?}: credentials in the URL are not allowed",
                    without_userinfo(url)
                ),
            ));
        }
    }
    let max_token_lifetime = match i.spec.max_token_lifetime.as_ref().map(|d| d.to_std()) {
        Some(Ok(d)) => Some(d),
        Some(Err(e)) => {
            errors.push(m.error("spec.maxTokenLifetime", format!("Invalid value: {e}")));
            None
        }
        None => None,
    };
    if i.spec.provider == agentgate_crds::identity::IdentityProvider::Okta
        && i.spec.token_type == agentgate_crds::identity::TokenType::Jwt
        && !i.spec.issuer.contains("/oauth2/")
    {
        errors.push(m.error(
            "spec.tokenType",
            "Invalid value: \"JWT\": tokens of the Okta org authorization server (issuer without /oauth2/) must be introspected; set tokenType: Introspection",
        ));
    }
    if i.spec.issuer.starts_with(GITHUB_ACTIONS_ISSUER)
        && i.spec.provider != agentgate_crds::identity::IdentityProvider::GitHubActions
    {
        // Any workflow can mint a token for any audience: only numeric repository ids tell them
        // apart, and only provider GitHubActions requires them.
        errors.push(m.error(
            "spec.provider",
            format!(
                "Invalid value: {}: tokens of GitHub Actions' issuer must be matched by provider: GitHubActions (match.github, numeric ids)",
                serde_json::to_string(&i.spec.provider).unwrap_or_default()
            ),
        ));
    }
    if i.spec.provider == agentgate_crds::identity::IdentityProvider::GitHubActions {
        use crate::identity::matching::{GITHUB_SHARED_AUDIENCE_PREFIX, GITHUB_SHARED_AUDIENCES};
        for (n, aud) in i.spec.audiences.iter().enumerate() {
            if aud.starts_with(GITHUB_SHARED_AUDIENCE_PREFIX)
                || GITHUB_SHARED_AUDIENCES.contains(&aud.as_str())
            {
                errors.push(m.error(
                    &format!("spec.audiences[{n}]"),
                    format!("Invalid value: {aud:?}: workflows get tokens for this audience by default or for other services, and any step may hand one on; require a gateway-specific audience (getIDToken('<it>'))"),
                ));
            }
        }
        // An owner's id alone admits every workflow of every repository of the owner, on any
        // branch anyone with write access pushes: the workflow must be named too.
        if let Some(g) = &i.spec.r#match.github
            && g.repository_id.is_none()
            && g.job_workflow_ref.is_none()
        {
            errors.push(m.error(
                "spec.match.github.jobWorkflowRef",
                "Required value: with repositoryOwnerId alone, any workflow of any of the owner's repositories would be this agent; name the workflow (jobWorkflowRef) or the repository (repositoryId)",
            ));
        }
    }
    if i.spec.provider == agentgate_crds::identity::IdentityProvider::Kubernetes {
        for (n, aud) in i.spec.audiences.iter().enumerate() {
            // Without `--api-audiences`, the API server's default audience is its issuer.
            if crate::identity::matching::KUBERNETES_DEFAULT_AUDIENCES.contains(&aud.as_str())
                || aud.trim_end_matches('/') == i.spec.issuer.trim_end_matches('/')
            {
                errors.push(m.error(
                    &format!("spec.audiences[{n}]"),
                    format!("Invalid value: {aud:?}: the API server's default audience is accepted by every workload; require a gateway-specific audience"),
                ));
            }
        }
    }
    if let Some(x) = &i.spec.introspection {
        // Without an endpoint it is discovered from the issuer, past what a binding can check.
        let endpoint = x.endpoint.as_deref().and_then(|e| parse_endpoint(e).ok());
        check_bound(
            m,
            secrets,
            "spec.introspection.secretRef",
            &x.secret_ref.name,
            ("spec.introspection.endpoint", endpoint.as_ref()),
            errors,
        );
    }
    let mut resolve =
        |path: &str, r: &agentgate_crds::common::SecretKeyRef| match secrets.get(ns, &r.name, &r.key) {
            Ok(v) => Some(v),
            Err(e) => {
                errors.push(m.error(path, e));
                None
            }
        };
    let static_jwks = i
        .spec
        .keys
        .as_ref()
        .and_then(|k| k.secret_ref.as_ref())
        .and_then(|r| resolve("spec.keys.secretRef", r));
    let introspection_secret = i
        .spec
        .introspection
        .as_ref()
        .and_then(|x| resolve("spec.introspection.secretRef", &x.secret_ref));
    Some(CompiledIdentity {
        name: m.name().to_string(),
        spec: i.spec.clone(),
        max_token_lifetime,
        static_jwks,
        introspection_secret,
    })
}

fn compile_rule(
    m: &Manifest,
    path: &str,
    r: &PolicyRule,
    bounds: &ApprovalBounds,
    errors: &mut Vec<ConfigError>,
) -> Option<CompiledRule> {
    let matcher = match crate::policy::rule::compile(r) {
        Ok(m) => Some(m),
        Err(problems) => {
            for (field, problem) in problems {
                let field = if field.is_empty() {
                    path.to_string()
                } else {
                    format!("{path}.{field}")
                };
                errors.push(m.error(&field, format!("Invalid value: {problem}")));
            }
            None
        }
    };
    // SQL table and function globs and rowLimit are checked by the matcher's compilation above
    // (errors such as `spec.rules[2].sql.tables[0]`).
    let mut approval_timeout = None;
    let mut grant_duration = None;
    if let Some(a) = &r.approval {
        if let Some(t) = &a.timeout {
            approval_timeout = t.to_std().ok();
        }
        if let Some(d) = &a.grant.duration {
            match d.to_std() {
                Ok(d) if d > bounds.max_grant => errors.push(m.error(
                    &format!("{path}.approval.grant.duration"),
                    format!(
                        "Invalid value: {:?}: exceeds the gateway's approvals.maxGrant ({}s)",
                        d.as_secs(),
                        bounds.max_grant.as_secs()
                    ),
                )),
                Ok(d) => grant_duration = Some(d),
                Err(e) => errors.push(m.error(
                    &format!("{path}.approval.grant.duration"),
                    format!("Invalid value: {e}"),
                )),
            }
        }
    }
    Some(CompiledRule {
        name: r.name.clone(),
        action: r.action,
        matcher: matcher?,
        approval_timeout,
        grant_duration,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Claim groups are flagged where they can name another issuer's: unprefixed, or with
    /// overlapping prefixes, or over another issuer's static groups; never within one issuer.
    #[test]
    fn claim_groups_that_can_name_another_issuer_s_are_flagged() {
        let identity = |name: &str, issuer: &str, groups: serde_json::Value| CompiledIdentity {
            name: name.into(),
            spec: serde_json::from_value(serde_json::json!({
                "provider": "OIDC", "issuer": issuer, "audiences": ["api://x"],
                "match": {"subject": "s"}, "groups": groups,
            }))
            .unwrap(),
            max_token_lifetime: None,
            static_jwks: None,
            introspection_secret: None,
        };
        let claim = |prefix: Option<&str>| match prefix {
            Some(p) => serde_json::json!({"claim": "groups", "prefix": p}),
            None => serde_json::json!({"claim": "groups"}),
        };
        let okta = identity("okta", "https://okta.example", claim(None));
        let okta_too = identity("okta-2", "https://okta.example", claim(None));
        let entra = identity("entra", "https://entra.example", claim(None));
        let named = identity(
            "static",
            "https://other.example",
            serde_json::json!({"static": ["dba"]}),
        );
        let okta_p = identity("okta", "https://okta.example", claim(Some("okta:")));
        let entra_p = identity("entra", "https://entra.example", claim(Some("entra:")));
        let idp = identity("idp", "https://idp.example", claim(Some("idp:")));
        let idp_x = identity("idp-x", "https://idp-x.example", claim(Some("idp:x:")));
        fn flagged<'a>(all: &[&'a CompiledIdentity]) -> Vec<&'a str> {
            colliding_claim_groups(all.iter().copied())
                .into_iter()
                .map(|(name, _)| name)
                .collect()
        }
        assert_eq!(flagged(&[&okta, &entra]), ["okta", "entra"]);
        assert!(flagged(&[&okta, &okta_too]).is_empty());
        assert_eq!(flagged(&[&okta, &named]), ["okta"]);
        assert!(flagged(&[&okta_p, &entra_p, &named]).is_empty());
        assert_eq!(flagged(&[&idp, &idp_x, &named]), ["idp", "idp-x"]);
        // An unprefixed issuer can assert the prefixed one's groups: both are named.
        assert_eq!(flagged(&[&okta_p, &entra]), ["okta", "entra"]);
    }

    #[test]
    fn sql_rules_are_checked_with_field_paths() {
        let yaml = concat!(
            "apiVersion: agentgate.dev/v1alpha1\nkind: AccessPolicy\nmetadata: {name: p, namespace: ns}\n",
            "spec:\n  subjects: {identities: [a]}\n  connections: [db]\n  rules:\n",
            "  - {name: ok, action: Allow, sql: {tables: [orders], rowLimit: 10}}\n",
            "  - {name: bad, action: Deny, sql: {tables: ['public.***'], functions: [ok, 'f***'], rowLimit: 5}}\n",
        );
        let m = &super::super::manifest::parse_documents(std::path::Path::new("p.yaml"), yaml).unwrap()[0];
        let policy: AccessPolicy = serde_json::from_value(m.value.clone()).unwrap();
        let bounds = ApprovalBounds {
            default_timeout: Duration::from_secs(60),
            max_grant: Duration::from_secs(3600),
        };
        let mut errors = Vec::new();
        let rule = compile_rule(m, "spec.rules[0]", &policy.spec.rules[0], &bounds, &mut errors).unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(rule.matcher.row_limit(), Some(10));
        assert!(compile_rule(m, "spec.rules[1]", &policy.spec.rules[1], &bounds, &mut errors).is_none());
        let paths: Vec<_> = errors.iter().filter_map(|e| e.path.as_deref()).collect();
        assert_eq!(
            paths,
            vec![
                "spec.rules[1].sql.tables[0]",
                "spec.rules[1].sql.functions[1]",
                "spec.rules[1].sql.rowLimit"
            ]
        );
        assert!(
            errors.iter().all(|e| e.message.starts_with("Invalid value: ")),
            "{errors:?}"
        );
    }

    /// A credential Secret bound to origins reaches only them: a Connection naming it with another
    /// endpoint, or with verification off, is refused with the field and the origins it may use.
    #[test]
    fn a_bound_credential_goes_only_to_its_origins() {
        let load = |annotation: &str, endpoint: &str, tls: &str| {
            let yaml = format!(
                "apiVersion: agentgate.dev/v1alpha1\nkind: AgentGateway\nmetadata: {{name: gw, namespace: ns}}\n\
                spec: {{listeners: [{{name: web, protocol: HTTP, port: 18080}}]}}\n---\n\
                apiVersion: v1\nkind: Secret\nmetadata: {{name: okta-token, namespace: ns, \
                annotations: {{agentgate.dev/credential-endpoints: '{annotation}'}}}}\n\
                stringData: {{token: 00abc}}\n---\n\
                apiVersion: agentgate.dev/v1alpha1\nkind: Connection\nmetadata: {{name: okta, namespace: ns}}\n\
                spec: {{gatewayRef: {{name: gw}}, type: HTTP, endpoint: '{endpoint}', {tls}\
                route: {{pathPrefix: /okta}}, credentials: {{scheme: SSWS, secretRef: {{name: okta-token, key: token}}}}}}\n"
            );
            load_yaml(&yaml).map(|_| ())
        };
        let bound = "https://acme.okta.com, https://backup.okta.com:8443";
        load(bound, "https://ACME.okta.com/api", "").unwrap();
        load(bound, "https://acme.okta.com:443", "").unwrap();
        load(bound, "https://backup.okta.com:8443/", "").unwrap();
        for elsewhere in [
            "https://attacker.example",
            "https://acme.okta.com:8443",
            "https://backup.okta.com",
            "https://acme.okta.com.attacker.example",
        ] {
            let e = load(bound, elsewhere, "").unwrap_err();
            assert!(
                e.contains("Connection ns/okta")
                    && e.contains("spec.endpoint: Invalid value: ")
                    && e.contains("the Secret ns/okta-token of spec.credentials.secretRef may be sent only to https://acme.okta.com:443, https://backup.okta.com:8443 (its annotation agentgate.dev/credential-endpoints)"),
                "{elsewhere}: {e}"
            );
            assert!(!e.contains("00abc"), "{e}");
        }
        let e = load(
            bound,
            "https://acme.okta.com",
            "tls: {insecureSkipVerify: true}, ",
        )
        .unwrap_err();
        assert!(
            e.contains("spec.tls.insecureSkipVerify: Invalid value: true: the Secret ns/okta-token"),
            "{e}"
        );
        for (annotation, says) in [
            ("https://acme.okta.com/api/v1", "without a path"),
            ("ftp://acme.okta.com", "unsupported scheme"),
            (" , ", "name at least one origin"),
            (
                "https://u:pw-hunter2@acme.okta.com",
                "credentials in the URL are not allowed",
            ),
        ] {
            let e = load(annotation, "https://acme.okta.com", "").unwrap_err();
            assert!(
                e.contains("Secret ns/okta-token")
                    && e.contains(
                        "metadata.annotations[agentgate.dev/credential-endpoints]: Invalid value: "
                    )
                    && e.contains(says),
                "{annotation}: {e}"
            );
            assert!(!e.contains("hunter2"), "{e}");
        }
    }

    /// A bound Secret is bound wherever it would be sent: as an identity's introspection
    /// secret, or the object store's credentials, too.
    #[test]
    fn a_bound_secret_is_bound_in_every_field_that_sends_it() {
        let load = |extra: &str| {
            let yaml = format!(
                "apiVersion: agentgate.dev/v1alpha1\nkind: AgentGateway\nmetadata: {{name: gw, namespace: ns}}\n\
                spec: {{listeners: [{{name: web, protocol: HTTP, port: 18080}}]{extra}}}\n---\n\
                apiVersion: v1\nkind: Secret\nmetadata: {{name: okta-token, namespace: ns, \
                annotations: {{agentgate.dev/credential-endpoints: 'https://acme.okta.com'}}}}\n\
                stringData: {{token: 00abc, secretAccessKey: s}}\n"
            );
            load_yaml(&yaml).map(|_| ())
        };
        let s3 = |endpoint: &str| {
            format!(
                ", recording: {{storage: {{s3: {{bucket: sessions, {endpoint}credentialsSecretRef: {{name: okta-token, key: token}}}}}}}}"
            )
        };
        let e = load(&s3("endpoint: 'https://attacker.example', ")).unwrap_err();
        assert!(
            e.contains("spec.recording.storage.s3.endpoint: Invalid value: https://attacker.example:443: the Secret ns/okta-token of spec.recording.storage.s3.credentialsSecretRef may be sent only to https://acme.okta.com:443"),
            "{e}"
        );
        let e = load(&s3("")).unwrap_err();
        assert!(
            e.contains("spec.recording.storage.s3.endpoint: Required value: the Secret ns/okta-token"),
            "{e}"
        );
        load(&s3("endpoint: 'https://acme.okta.com', ")).unwrap();

        let identity = |endpoint: &str| {
            format!(
                "}}\n---\napiVersion: agentgate.dev/v1alpha1\nkind: AgentIdentity\nmetadata: {{name: a, namespace: ns}}\n\
                spec: {{issuer: 'https://acme.okta.com', audiences: [x], match: {{subject: a}}, tokenType: Introspection, \
                introspection: {{{endpoint}clientId: c, secretRef: {{name: okta-token, key: token}}}}"
            )
        };
        let e = load(&identity("endpoint: 'https://attacker.example/introspect', ")).unwrap_err();
        assert!(
            e.contains("AgentIdentity ns/a")
                && e.contains("spec.introspection.endpoint: Invalid value: https://attacker.example:443: the Secret ns/okta-token of spec.introspection.secretRef may be sent only to"),
            "{e}"
        );
        load(&identity(
            "endpoint: 'https://acme.okta.com/oauth2/v1/introspect', ",
        ))
        .unwrap();
    }

    /// What the data plane builds from a configuration (listener TLS, upstream TLS, the identity
    /// verifier) is checked at load, so that a configuration called valid cannot replace a
    /// working one and then refuse every request.
    #[test]
    fn what_the_data_plane_builds_is_checked_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let pair = |name: &str| {
            let ok = std::process::Command::new("openssl")
                .args([
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:prime256v1",
                ])
                .args(["-nodes", "-days", "2", "-subj", "/CN=127.0.0.1", "-keyout"])
                .arg(dir.path().join(format!("{name}.key")))
                .arg("-out")
                .arg(dir.path().join(format!("{name}.crt")))
                .stderr(std::process::Stdio::null())
                .status()
                .unwrap()
                .success();
            assert!(ok);
            let read = |ext: &str| std::fs::read_to_string(dir.path().join(format!("{name}.{ext}"))).unwrap();
            (read("crt"), read("key"))
        };
        let (crt_a, key_a) = pair("a");
        let (_, key_b) = pair("b");
        let load = |listener_key: &str, ca: &str, identities: &str| {
            let manifests = tempfile::tempdir().unwrap();
            let block = |s: &str| s.lines().map(|l| format!("    {l}\n")).collect::<String>();
            let yaml = format!(
                "apiVersion: agentgate.dev/v1alpha1\nkind: AgentGateway\nmetadata: {{name: gw, namespace: ns}}\n\
                spec: {{listeners: [{{name: web, protocol: HTTP, port: 18443, tls: {{secretName: web-tls}}}}]}}\n---\n\
                apiVersion: v1\nkind: Secret\nmetadata: {{name: web-tls, namespace: ns}}\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}---\n\
                apiVersion: v1\nkind: Secret\nmetadata: {{name: ca, namespace: ns}}\nstringData:\n  ca.crt: |\n{}---\n\
                apiVersion: agentgate.dev/v1alpha1\nkind: Connection\nmetadata: {{name: api, namespace: ns}}\n\
                spec: {{gatewayRef: {{name: gw}}, type: HTTP, endpoint: 'https://api.example.com', \
                tls: {{caSecretRef: {{name: ca, key: ca.crt}}}}, route: {{pathPrefix: /api}}}}\n{identities}",
                block(&crt_a),
                block(listener_key),
                block(ca),
            );
            std::fs::write(manifests.path().join("all.yaml"), yaml).unwrap();
            crate::config::load(&crate::config::LoadOptions {
                manifests: manifests.path().to_path_buf(),
                ..Default::default()
            })
            .map(|_| ())
            .map_err(|e| e.to_string())
        };
        let identity = |name: &str, keys: &str| {
            format!(
                "---\napiVersion: agentgate.dev/v1alpha1\nkind: AgentIdentity\nmetadata: {{name: {name}, namespace: ns}}\n\
                spec: {{issuer: 'https://issuer.example.com', audiences: [agentgate], match: {{subject: {name}}}, keys: {keys}}}\n"
            )
        };
        let one = identity("a", "{jwksUri: 'https://issuer.example.com/jwks'}");
        load(&key_a, &crt_a, &one).unwrap();

        let e = load(&key_b, &crt_a, &one).unwrap_err();
        assert!(
            e.contains(
                "spec.listeners[0].tls.secretName: Invalid value: Secret ns/web-tls: listener certificate:"
            ),
            "{e}"
        );
        assert!(!e.contains("PRIVATE KEY"), "{e}");
        let e = load(&key_a, "not a certificate\n", &one).unwrap_err();
        assert!(
            e.contains("spec.tls.caSecretRef: Invalid value: CA bundle: no certificate found"),
            "{e}"
        );

        let two = format!(
            "{one}{}",
            identity("b", "{jwksUri: 'https://elsewhere.example.com/jwks'}")
        );
        let e = load(&key_a, &crt_a, &two).unwrap_err();
        assert!(
            e.contains("AgentIdentity ns/b")
                && e.contains("spec.keys: Invalid value: issuer https://issuer.example.com takes its keys from AgentIdentity a's keys"),
            "{e}"
        );
        let jwks = "---\napiVersion: v1\nkind: Secret\nmetadata: {name: jwks, namespace: ns}\nstringData: {jwks.json: 'not json'}\n";
        let e = load(
            &key_a,
            &crt_a,
            &format!(
                "{}{jwks}",
                identity("a", "{secretRef: {name: jwks, key: jwks.json}}")
            ),
        )
        .unwrap_err();
        assert!(
            e.contains("spec.keys.secretRef: Invalid value: static keys:"),
            "{e}"
        );
    }

    /// GitHub Actions' issuer under a generic provider would match tokens by repository name,
    /// which any later owner of the name can mint: refused, naming the field.
    #[test]
    fn github_actions_issuer_needs_its_provider() {
        let load = |provider: &str, matcher: &str| {
            let dir = tempfile::tempdir().unwrap();
            let yaml = format!(
                "apiVersion: agentgate.dev/v1alpha1\nkind: AgentGateway\nmetadata: {{name: gw, namespace: ns}}\n\
                spec: {{listeners: [{{name: pg, protocol: Postgres, port: 15432}}]}}\n---\n\
                apiVersion: agentgate.dev/v1alpha1\nkind: AgentIdentity\nmetadata: {{name: deploy, namespace: ns}}\n\
                spec: {{provider: {provider}, issuer: 'https://token.actions.githubusercontent.com', \
                audiences: [agentgate], match: {matcher}}}\n"
            );
            std::fs::write(dir.path().join("all.yaml"), yaml).unwrap();
            crate::config::load(&crate::config::LoadOptions {
                manifests: dir.path().to_path_buf(),
                ..Default::default()
            })
        };
        let errors = load("OIDC", "{claims: {repository: octo/deploy}}")
            .unwrap_err()
            .to_string();
        assert!(
            errors.contains("spec.provider: Invalid value: \"OIDC\": tokens of GitHub Actions' issuer"),
            "{errors}"
        );
        load("GitHubActions", "{github: {repositoryId: '123456'}}").unwrap();
        // An owner alone names no workflow.
        let errors = load("GitHubActions", "{github: {repositoryOwnerId: '42'}}")
            .unwrap_err()
            .to_string();
        // The schema's rule says so first (the loader checks the same for sources that skip it).
        assert!(
            errors.contains("set repositoryId, or repositoryOwnerId with jobWorkflowRef"),
            "{errors}"
        );
        load(
            "GitHubActions",
            "{github: {repositoryOwnerId: '42', jobWorkflowRef: 'octo/deploy/.github/workflows/d.yml@refs/heads/main'}}",
        )
        .unwrap();
    }

    /// GitHub's default audience (the owner's URL) and the shared ones of cloud services are
    /// carried by tokens meant for others: refused, naming the field.
    #[test]
    fn github_identities_need_their_own_audience() {
        for audience in ["https://github.com/octo", "sts.amazonaws.com", "sigstore"] {
            let dir = tempfile::tempdir().unwrap();
            let yaml = format!(
                "apiVersion: agentgate.dev/v1alpha1\nkind: AgentGateway\nmetadata: {{name: gw, namespace: ns}}\n\
                spec: {{listeners: [{{name: pg, protocol: Postgres, port: 15432}}]}}\n---\n\
                apiVersion: agentgate.dev/v1alpha1\nkind: AgentIdentity\nmetadata: {{name: deploy, namespace: ns}}\n\
                spec: {{provider: GitHubActions, issuer: 'https://token.actions.githubusercontent.com', \
                audiences: ['{audience}'], match: {{github: {{repositoryId: '123456'}}}}}}\n"
            );
            std::fs::write(dir.path().join("all.yaml"), yaml).unwrap();
            let errors = crate::config::load(&crate::config::LoadOptions {
                manifests: dir.path().to_path_buf(),
                ..Default::default()
            })
            .unwrap_err()
            .to_string();
            assert!(
                errors.contains("spec.audiences[0]: Invalid value")
                    && errors.contains("gateway-specific audience"),
                "{audience}: {errors}"
            );
        }
    }

    /// A Kubernetes identity must require an audience of the gateway's own: not the API
    /// server's defaults, nor its issuer, which is the default audience where the server runs
    /// without `--api-audiences` (every pod's mounted token carries it).
    #[test]
    fn kubernetes_identities_need_their_own_audience() {
        let load = |issuer: &str, audience: &str| {
            let dir = tempfile::tempdir().unwrap();
            let yaml = format!(
                "apiVersion: agentgate.dev/v1alpha1\nkind: AgentGateway\nmetadata: {{name: gw, namespace: ns}}\n\
                spec: {{listeners: [{{name: pg, protocol: Postgres, port: 15432}}]}}\n---\n\
                apiVersion: agentgate.dev/v1alpha1\nkind: AgentIdentity\nmetadata: {{name: sa, namespace: ns}}\n\
                spec: {{provider: Kubernetes, issuer: '{issuer}', audiences: ['{audience}'], \
                match: {{serviceAccount: {{namespace: ci, name: agent}}}}}}\n"
            );
            std::fs::write(dir.path().join("all.yaml"), yaml).unwrap();
            crate::config::load(&crate::config::LoadOptions {
                manifests: dir.path().to_path_buf(),
                ..Default::default()
            })
        };
        let gke = "https://container.googleapis.com/v1/projects/p/locations/l/clusters/c";
        for (issuer, audience) in [
            (gke, gke),
            (
                gke,
                "https://container.googleapis.com/v1/projects/p/locations/l/clusters/c/",
            ),
            ("https://kubernetes.default.svc", "https://kubernetes.default.svc"),
        ] {
            let errors = load(issuer, audience).unwrap_err().to_string();
            assert!(
                errors.contains("spec.audiences[0]: Invalid value") && errors.contains("default audience"),
                "{errors}"
            );
        }
        load(gke, "agentgate").unwrap();
    }

    /// DPoP nonces: `Auto` requires them of a gateway the operator runs (several replicas, or
    /// two pods in a rollout, each replay cache seeing its own traffic alone), not of a
    /// standalone one; `Required` and `Disabled` say so.
    #[test]
    fn dpop_nonces_follow_the_replicas() {
        let required = |dpop: &str, replicas: i32, replicated: bool| {
            let dir = tempfile::tempdir().unwrap();
            let yaml = format!(
                "apiVersion: agentgate.dev/v1alpha1\nkind: AgentGateway\nmetadata: {{name: gw, namespace: ns}}\n\
                spec: {{replicas: {replicas}, {dpop} listeners: [{{name: pg, protocol: Postgres, port: 15432}}]}}\n"
            );
            std::fs::write(dir.path().join("all.yaml"), yaml).unwrap();
            crate::config::load(&crate::config::LoadOptions {
                manifests: dir.path().to_path_buf(),
                replicated,
                ..Default::default()
            })
            .unwrap()
            .gateway
            .dpop_nonce_required
        };
        assert!(required("", 2, true), "two replicas by the operator");
        assert!(required("", 1, true), "one replica, two pods in a rollout");
        assert!(!required("", 2, false), "standalone: replicas is ignored");
        assert!(required("dpop: {nonce: Auto},", 3, true));
        assert!(required("dpop: {nonce: Required},", 1, false));
        assert!(!required("dpop: {nonce: Disabled},", 3, true));
    }

    /// Loads `deploy/examples` with `edit` applied to each file's text.
    fn load_examples_with(
        edit: &dyn Fn(String) -> String,
    ) -> Result<crate::config::GatewayConfig, crate::config::ConfigErrors> {
        let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
        let dir = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(&examples).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            std::fs::write(dir.path().join(path.file_name().unwrap()), edit(text)).unwrap();
        }
        crate::config::load(&crate::config::LoadOptions {
            manifests: dir.path().to_path_buf(),
            ..Default::default()
        })
    }

    /// Column rules mask PostgreSQL results: on a policy of HTTP connections only they would
    /// never apply, so they are an error naming the rule.
    /// An address the schema's pattern admits and no socket binds is a load error.
    #[test]
    fn listener_addresses_are_ip_addresses() {
        for (address, ok) in [
            ("127.0.0.1", true),
            ("::1", true),
            ("1.2.3", false),
            ("127.0.0.01", false),
            ("127.0.0.1.", false),
        ] {
            let with_address = |t: String| {
                t.replace(
                    "      protocol: HTTP\n      port: 8443\n",
                    &format!("      protocol: HTTP\n      port: 8443\n      address: \"{address}\"\n"),
                )
            };
            match load_examples_with(&with_address) {
                Ok(_) => assert!(ok, "{address} loaded"),
                Err(e) => {
                    let e = e.to_string();
                    assert!(
                        !ok && e.contains("spec.listeners[0].address") && e.contains("not an IPv4 or IPv6"),
                        "{address}: {e}"
                    );
                }
            }
        }
    }

    #[test]
    fn column_rules_need_a_postgres_connection() {
        load_examples_with(&|t| t).unwrap();
        let okta_columns = |t: String| {
            t.replace(
                "    - jsonFields: [\"$..profile.email\", \"$..profile.mobilePhone\"]\n",
                "    - columns: [\"public.users.email\"]\n      strategy: Redact\n    - jsonFields: [\"$..profile.email\", \"$..profile.mobilePhone\"]\n",
            )
        };
        let errors = load_examples_with(&okta_columns).unwrap_err().to_string();
        assert!(
            errors.contains("AccessPolicy agentgate/ci-agent-okta: spec.masking[0].columns: column rules mask PostgreSQL results"),
            "{errors}"
        );
    }

    /// A rule's conditions for a kind of Connection its policy does not reach would never match:
    /// an error naming the rule.
    #[test]
    fn rule_conditions_need_a_connection_of_their_kind() {
        let load = |edit: &dyn Fn(String) -> String| {
            load_examples_with(edit)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        let okta_kubernetes_rule = |t: String| {
            t.replacen(
                "  rules:\n",
                "  rules:\n    - name: no-deletes\n      action: Deny\n      kubernetes: {verbs: [delete]}\n",
                1,
            )
        };
        let errors = load(&okta_kubernetes_rule);
        assert!(
            errors.contains(
                "spec.rules[0].kubernetes: kubernetes conditions decide Kubernetes Connections' operations"
            ),
            "{errors}"
        );
    }

    /// The errors of loading `yaml` as the one manifest file in `dir`.
    /// Loads `yaml` as the one manifest file of a directory.
    fn load_yaml(yaml: &str) -> Result<GatewayConfig, String> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("all.yaml"), yaml).unwrap();
        crate::config::load(&crate::config::LoadOptions {
            manifests: dir.path().to_path_buf(),
            ..Default::default()
        })
        .map_err(|e| e.to_string())
    }

    fn load_errors(dir: &std::path::Path, yaml: &str) -> String {
        std::fs::write(dir.join("all.yaml"), yaml).unwrap();
        crate::config::load(&crate::config::LoadOptions {
            manifests: dir.to_path_buf(),
            ..Default::default()
        })
        .unwrap_err()
        .to_string()
    }

    /// A host or path prefix that two Connections claim serves neither: which one a tie-break
    /// picked would be up to their names, and a newcomer's could take the other's traffic.
    #[test]
    fn a_route_two_connections_claim_serves_neither() {
        let dir = tempfile::tempdir().unwrap();
        let connection = |name: &str, route: &str| {
            format!(
                "apiVersion: agentgate.dev/v1alpha1\nkind: Connection\nmetadata: {{name: {name}, namespace: ns}}\n\
                 spec: {{gatewayRef: {{name: gw}}, type: HTTP, endpoint: 'https://{name}.example', route: {route}}}\n---\n"
            )
        };
        let yaml = format!(
            "apiVersion: agentgate.dev/v1alpha1\nkind: AgentGateway\nmetadata: {{name: gw, namespace: ns}}\n\
             spec:\n  listeners: [{{name: http, protocol: HTTP, port: 18080}}]\n---\n{}{}{}{}",
            connection("okta-admin", "{host: okta.internal, pathPrefix: /okta}"),
            connection("0-evil", "{host: okta.internal}"),
            connection("1-evil", "{pathPrefix: /okta}"),
            connection("github", "{pathPrefix: /github}"),
        );
        let errors = load_errors(dir.path(), &yaml);
        for name in ["okta-admin", "0-evil", "1-evil"] {
            assert!(
                errors.contains(&format!("Connection ns/{name}: spec.route")),
                "{name}: {errors}"
            );
        }
        assert!(errors.contains("host okta.internal (also Connection"), "{errors}");
        assert!(errors.contains("pathPrefix /okta (also Connection"), "{errors}");
        assert!(!errors.contains("Connection ns/github"), "{errors}");
    }

    /// Two rules of one name in a policy would share one rule's approvers, grants and digest:
    /// the CRD's list-map key refuses them, in a directory of manifests as in a cluster.
    #[test]
    fn rule_names_are_unique_within_a_policy() {
        let yaml = "apiVersion: agentgate.dev/v1alpha1\nkind: AgentGateway\nmetadata: {name: gw, namespace: ns}\n\
            spec:\n  listeners: [{name: http, protocol: HTTP, port: 18080}]\n---\n\
            apiVersion: agentgate.dev/v1alpha1\nkind: Connection\nmetadata: {name: orders, namespace: ns}\n\
            spec: {gatewayRef: {name: gw}, type: HTTP, endpoint: 'https://orders.example', route: {pathPrefix: /orders}}\n---\n\
            apiVersion: agentgate.dev/v1alpha1\nkind: AccessPolicy\nmetadata: {name: orders, namespace: ns}\n\
            spec:\n  subjects: {groups: [ai]}\n  connections: [orders]\n  rules:\n\
            \x20   - {name: writes, action: RequireApproval, http: {methods: [POST]}, approval: {approvers: {users: [alice]}}}\n\
            \x20   - {name: reads, action: Allow, http: {methods: [GET]}}\n\
            \x20   - {name: writes, action: RequireApproval, http: {methods: [DELETE]}, approval: {approvers: {users: [bob]}, minApprovals: 1}}\n";
        let errors = load_yaml(yaml).unwrap_err();
        assert!(
            errors.contains("AccessPolicy ns/orders: spec.rules[2]: Duplicate value")
                && errors.contains("\"name\":\"writes\""),
            "{errors}"
        );
        assert!(!errors.contains("spec.rules[1]"), "{errors}");
        load_yaml(&yaml.replacen(
            "name: writes, action: RequireApproval, http: {methods: [DELETE]}",
            "name: deletes, action: RequireApproval, http: {methods: [DELETE]}",
            1,
        ))
        .unwrap();
    }

    /// An empty value (an unset template variable) is refused where it is written, not read as
    /// an absent field: a Window grant without its duration would get the longest window, and
    /// a rule without its methods would match every method.
    #[test]
    fn null_fields_are_refused_where_written() {
        let yaml = |rule: &str| {
            format!(
                "apiVersion: agentgate.dev/v1alpha1\nkind: AgentGateway\nmetadata: {{name: gw, namespace: ns}}\n\
                 spec:\n  listeners: [{{name: http, protocol: HTTP, port: 18080}}]\n---\n\
                 apiVersion: agentgate.dev/v1alpha1\nkind: Connection\nmetadata: {{name: orders, namespace: ns}}\n\
                 spec: {{gatewayRef: {{name: gw}}, type: HTTP, endpoint: 'https://orders.example', route: {{pathPrefix: /orders}}}}\n---\n\
                 apiVersion: agentgate.dev/v1alpha1\nkind: AccessPolicy\nmetadata: {{name: orders, namespace: ns}}\n\
                 spec:\n  subjects: {{groups: [ai]}}\n  connections: [orders]\n  rules:\n  - {rule}\n"
            )
        };
        let errors = load_yaml(&yaml(
            "{name: w, action: RequireApproval, http: {methods: [POST]}, approval: {approvers: {users: [alice]}, grant: {type: Window, duration: }}}",
        ))
        .unwrap_err();
        assert!(
            errors.contains("AccessPolicy ns/orders: spec.rules[0].approval.grant")
                && errors.contains("duration"),
            "{errors}"
        );
        let errors = load_yaml(&yaml(
            "{name: w, action: RequireApproval, http: {methods: [POST]}, approval: null}",
        ))
        .unwrap_err();
        assert!(
            errors.contains("AccessPolicy ns/orders: spec.rules[0]"),
            "{errors}"
        );
        let errors = load_yaml(&yaml(
            "{name: r, action: Allow, http: {methods: , paths: [/orders/*]}}",
        ))
        .unwrap_err();
        assert!(
            errors.contains("AccessPolicy ns/orders: spec.rules[0].http.methods: Invalid value: null"),
            "{errors}"
        );
        load_yaml(&yaml(
            "{name: w, action: RequireApproval, http: {methods: [POST]}, approval: {approvers: {users: [alice]}, grant: {type: Window, duration: 1h}}}",
        ))
        .unwrap();
    }

    /// An endpoint refused for carrying credentials is quoted without them: the message reaches
    /// logs, `agentgate validate` and, in a cluster, the object's Ready condition.
    #[test]
    fn credentials_that_cannot_be_sent_as_written_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = "apiVersion: agentgate.dev/v1alpha1\nkind: AgentGateway\nmetadata: {name: gw, namespace: ns}\n\
            spec:\n  listeners: [{name: http, protocol: HTTP, port: 18080}]\n---\n\
            apiVersion: agentgate.dev/v1alpha1\nkind: Connection\nmetadata: {name: okta, namespace: ns}\n\
            spec: {gatewayRef: {name: gw}, type: HTTP, endpoint: 'https://okta.example', route: {pathPrefix: /okta}, \
            credentials: {scheme: SSWS, secretRef: {name: tok, key: token}}}\n---\n\
            apiVersion: v1\nkind: Secret\nmetadata: {name: tok, namespace: ns}\nstringData: {token: \"00abc-token\\n\"}\n";
        let errors = load_errors(dir.path(), yaml);
        assert!(
            errors.contains("spec.credentials.secretRef")
                && errors.contains("--from-literal")
                && !errors.contains("00abc"),
            "{errors}"
        );
    }

    /// With s3, a volume is the spool: sessions wait for upload on the claim the operator mounts,
    /// not in the pod's scratch space, and are shipped from there.
    #[test]
    fn a_volume_spools_for_object_storage() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = "apiVersion: agentgate.dev/v1alpha1\nkind: AgentGateway\nmetadata: {name: gw, namespace: ns}\n\
            spec:\n  listeners: [{name: pg, protocol: Postgres, port: 15432}]\n  \
            recording: {storage: {volume: {claimName: spool}, s3: {bucket: sessions, credentialsSecretRef: {name: s3, key: id}}}}\n---\n\
            apiVersion: v1\nkind: Secret\nmetadata: {name: s3, namespace: ns}\nstringData: {id: a, secretAccessKey: b}\n";
        std::fs::write(dir.path().join("all.yaml"), yaml).unwrap();
        let config = crate::config::load(&crate::config::LoadOptions {
            manifests: dir.path().to_path_buf(),
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            config.gateway.recording_dir,
            std::path::Path::new(SESSIONS_VOLUME_MOUNT)
        );
        assert_eq!(config.gateway.object_storage.as_ref().unwrap().bucket, "sessions");
    }

    #[test]
    fn endpoints_with_credentials_are_refused_without_quoting_them() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = "apiVersion: agentgate.dev/v1alpha1\nkind: AgentGateway\nmetadata: {name: gw, namespace: ns}\n\
            spec:\n  listeners: [{name: pg, protocol: Postgres, port: 15432}]\n  \
            recording: {storage: {s3: {bucket: sessions, endpoint: 'https://AKIAEXAMPLE:s3-hunter2@minio.internal', \
            credentialsSecretRef: {name: s3, key: id}}}}\n---\n\
            apiVersion: agentgate.dev/v1alpha1\nkind: Connection\nmetadata: {name: db, namespace: ns}\n\
            spec: {gatewayRef: {name: gw}, type: Postgres, endpoint: 'postgres://app:pg-hunter2@db:5432/orders', \
            credentials: {scheme: PostgresPassword, username: app, secretRef: {name: s3, key: id}}}\n---\n\
            apiVersion: v1\nkind: Secret\nmetadata: {name: s3, namespace: ns}\nstringData: {id: a, secretAccessKey: b}\n---\n\
            apiVersion: agentgate.dev/v1alpha1\nkind: AgentIdentity\nmetadata: {name: ci, namespace: ns}\n\
            spec: {issuer: 'https://u:id-hunter2@idp.example', audiences: [a], match: {subject: x}}\n";
        let errors = load_errors(dir.path(), yaml);
        assert!(
            errors.contains("spec.issuer") && errors.contains("https://***@idp.example"),
            "{errors}"
        );
        assert!(
            !errors.contains("hunter2") && !errors.contains("AKIAEXAMPLE"),
            "{errors}"
        );
        assert!(
            errors.contains("\"postgres://***@db:5432/orders\": credentials in the URL are not allowed")
                && errors.contains("\"https://***@minio.internal\": credentials in the URL are not allowed"),
            "{errors}"
        );
        // A password with `/`, `?` or `#` in it is not taken for the path.
        for (url, shown) in [
            (
                "postgres://app:pa/ss@db:5432/orders",
                "postgres://***@db:5432/orders",
            ),
            ("postgres://app:p#ss@db/x", "postgres://***@db/x"),
            ("https://AKIA:wJal/K7MDENG@minio:9000", "https://***@minio:9000"),
        ] {
            assert_eq!(without_userinfo(url), shown);
            assert!(parse_endpoint(url).unwrap_err().contains("credentials"), "{url}");
        }
    }

    /// `recording.signingKeySecretRef`: an Ed25519 PEM is read into the settings; another key,
    /// or no such Secret, is an error naming the field, without quoting the key.
    #[test]
    fn a_recording_signing_key_is_read_and_checked() {
        let ed25519 = "-----BEGIN PRIVATE KEY-----\n    MC4CAQAwBQYDK2VwBCIEIHDTMBYzFEDzt61lQgr0pvavuJ62cTsdwc6NmLbwPnNx\n    -----END PRIVATE KEY-----\n";
        let p256_body = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgIow/cx/LCxx41MO9\n    l+Hx2Nk9rbsNeLGFqpg5w0E1FIWhRANCAATwMi+0UpgkIpB3VZ16x/Jg+I55BXLw\n    QICA0WoUyH8E1QjxijqmQXtjyUczfgJF3ZhVni8ECp88kYaevF82DdRe";
        let p256 = format!("-----BEGIN PRIVATE KEY-----\n    {p256_body}\n    -----END PRIVATE KEY-----\n");
        let load = |key: &str, secret_key: &str| {
            let dir = tempfile::tempdir().unwrap();
            let yaml = format!(
                "apiVersion: agentgate.dev/v1alpha1\nkind: AgentGateway\nmetadata: {{name: gw, namespace: ns}}\n\
                spec:\n  listeners: [{{name: pg, protocol: Postgres, port: 15432}}]\n  \
                recording: {{signingKeySecretRef: {{name: signing, key: {key}}}}}\n---\n\
                apiVersion: v1\nkind: Secret\nmetadata: {{name: signing, namespace: ns}}\nstringData:\n  {secret_key}: |\n    {}",
                if secret_key == "p256" { &p256 } else { ed25519 }
            );
            std::fs::write(dir.path().join("all.yaml"), yaml).unwrap();
            crate::config::load(&crate::config::LoadOptions {
                manifests: dir.path().to_path_buf(),
                ..Default::default()
            })
        };
        let cfg = load("key.pem", "key.pem").unwrap();
        let der = cfg.gateway.signing_key.expect("the key is read");
        let rec = crate::recording::Recorder::with_key(
            tempfile::tempdir().unwrap().path(),
            agentgate_crds::gateway::RecordingMode::Required,
            "ns/gw",
            der.expose(),
        )
        .unwrap();
        assert_eq!(rec.public_key(), "tWc4mikiJztVNCdKM4jEArFnTBi4uvX49_Y0dec5iSw");

        let wrong = load("p256", "p256").unwrap_err().to_string();
        assert!(
            wrong.contains("spec.recording.signingKeySecretRef")
                && wrong.contains("Secret ns/signing key \"p256\": not an Ed25519 private key"),
            "{wrong}"
        );
        assert!(!wrong.contains("MIGHAgEA"), "{wrong}");
        let missing = load("other", "key.pem").unwrap_err().to_string();
        assert!(
            missing.contains("spec.recording.signingKeySecretRef") && missing.contains("no key \"other\""),
            "{missing}"
        );
    }

    /// `masking.hashKeySecretRef`: the Hash strategy's output depends on the configured key
    /// alone (so replicas and restarts agree), not on the process; a short key is an error
    /// naming the field, without quoting the key.
    #[test]
    fn a_configured_hash_key_makes_hashes_the_same_in_every_process() {
        use agentgate_crds::policy::MaskingStrategy;
        const KEY: &str = "c2VjcmV0LWhhc2gta2V5LWZvci10aGUtd2hvbGUtZmxlZXQ";
        let load = |masking: &str, key: &str| {
            let dir = tempfile::tempdir().unwrap();
            let yaml = format!(
                "apiVersion: agentgate.dev/v1alpha1\nkind: AgentGateway\nmetadata: {{name: gw, namespace: ns}}\n\
                spec:\n  listeners: [{{name: pg, protocol: Postgres, port: 15432}}]\n{masking}---\n\
                apiVersion: v1\nkind: Secret\nmetadata: {{name: hashing, namespace: ns}}\nstringData: {{key: {key}}}\n"
            );
            std::fs::write(dir.path().join("all.yaml"), yaml).unwrap();
            crate::config::load(&crate::config::LoadOptions {
                manifests: dir.path().to_path_buf(),
                ..Default::default()
            })
        };
        let configured = "  masking: {hashKeySecretRef: {name: hashing, key: key}}\n";
        let hash = |key: &HashKey| {
            MaskingPlan::empty(key.clone()).mask_value(MaskingStrategy::Hash, "ada@example.com")
        };
        let cfg = load(configured, KEY).unwrap();
        assert_eq!(
            hash(&cfg.gateway.hash_key),
            hash(&HashKey::from_secret(KEY.as_bytes()))
        );
        assert_ne!(hash(&cfg.gateway.hash_key), hash(&HashKey::process()));
        let unset = load("", KEY).unwrap();
        assert_eq!(hash(&unset.gateway.hash_key), hash(&HashKey::process()));

        let short = load(configured, "too-short-a-key").unwrap_err().to_string();
        assert!(
            short.contains("spec.masking.hashKeySecretRef") && short.contains("holds 15 bytes"),
            "{short}"
        );
        assert!(!short.contains("too-short"), "{short}");
    }

    #[test]
    fn endpoints_parse_strictly() {
        // Loopback in any spelling, IPv4-mapped IPv6 included; nothing else.
        for (url, loopback) in [
            ("http://127.0.0.1:8080", true),
            ("http://localhost", true),
            ("http://[::1]:80", true),
            ("http://[::ffff:127.0.0.1]:80", true),
            ("http://[::ffff:10.0.0.1]:80", false),
            ("http://10.0.0.1", false),
            ("http://okta.internal", false),
        ] {
            assert_eq!(parse_endpoint(url).unwrap().is_loopback(), loopback, "{url}");
        }
        let e = parse_endpoint("postgres://db.internal:5433/orders").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.path.as_str()),
            ("db.internal", 5433, "orders")
        );
        let e = parse_endpoint("https://example.okta.com").unwrap();
        assert_eq!((e.port, e.path.as_str()), (443, ""));
        let e = parse_endpoint("http://[::1]:8080/base").unwrap();
        assert_eq!((e.host.as_str(), e.port, e.path.as_str()), ("::1", 8080, "/base"));
        assert!(
            parse_endpoint("https://user:pw@host")
                .unwrap_err()
                .contains("credentials")
        );
        assert!(parse_endpoint("https://host/?q=1").is_err());
        assert!(parse_endpoint("ftp://host").is_err());
        assert!(parse_endpoint("https://host:99999").is_err());
    }
}
