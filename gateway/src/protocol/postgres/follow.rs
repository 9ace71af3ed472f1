//! How an open PostgreSQL session follows configuration reloads.
//!
//! An HTTP request is decided on the configuration in force when it arrives; a PostgreSQL
//! session lasts hours, so its statements are too: a rule tightened, or a grant removed, applies
//! from the session's next statement. Some of what a session was opened on cannot change under
//! it (the upstream connection it holds, the identity its token was verified as, the masked
//! columns it resolved from the catalog): when a reload changes those, the session is stale and
//! refuses every further statement, saying to connect again.

use crate::config::{CompiledConnection, CompiledPolicy, GatewayConfig};
use crate::policy::index::Subject;
use agentgate_crds::policy::Action;

/// The Allow rules among `applicable` that cap rows, as (policy, rule) indexes into `cfg`.
pub fn row_limit_rules(cfg: &GatewayConfig, applicable: &[&CompiledPolicy]) -> Vec<(usize, usize)> {
    let mut found = Vec::new();
    for (pi, p) in cfg.policies.iter().enumerate() {
        if applicable.iter().any(|a| std::ptr::eq(*a, p)) {
            for (ri, r) in p.rules.iter().enumerate() {
                if r.action == Action::Allow && r.matcher.row_limit().is_some() {
                    found.push((pi, ri));
                }
            }
        }
    }
    found
}

/// Whether a session opened under `opened` may go on under `next`; `Ok` carries its row-capping
/// rules there, `Err` why it may not.
pub fn follow(
    opened: &GatewayConfig,
    next: &GatewayConfig,
    connection: &str,
    subject: Subject<'_>,
) -> Result<Vec<(usize, usize)>, String> {
    let (Some(was), Some(is)) = (
        opened.connections.get(connection),
        next.connections.get(connection),
    ) else {
        return Err(format!("Connection {connection} was removed"));
    };
    if !same_upstream(was, is) {
        return Err(format!(
            "Connection {connection} now names another upstream or credential"
        ));
    }
    let identity = subject.identity;
    match (opened.identities.get(identity), next.identities.get(identity)) {
        (_, Some(is)) if is.spec.suspend => {
            return Err(format!("AgentIdentity {identity} was suspended"));
        }
        (Some(was), Some(is))
            if was.spec == is.spec
                && was.static_jwks == is.static_jwks
                && was.max_token_lifetime == is.max_token_lifetime => {}
        (_, None) => return Err(format!("AgentIdentity {identity} was removed")),
        _ => return Err(format!("AgentIdentity {identity} changed")),
    }
    let applicable = next.policy_index.applicable(&next.policies, connection, subject);
    if applicable.is_empty() {
        return Err(format!(
            "no AccessPolicy grants identity {identity} access to connection {connection} any more"
        ));
    }
    let before = opened
        .policy_index
        .applicable(&opened.policies, connection, subject);
    if masking(&before) != masking(&applicable) {
        return Err("the masking rules that apply to this session changed".into());
    }
    Ok(row_limit_rules(next, &applicable))
}

/// The masking rules of `policies`, by policy name (what a session's masking plan merges).
fn masking<'a>(policies: &[&'a CompiledPolicy]) -> Vec<(&'a str, &'a [agentgate_crds::policy::MaskingRule])> {
    let mut rules: Vec<_> = policies
        .iter()
        .filter(|p| !p.spec.masking.is_empty())
        .map(|p| (p.name.as_str(), p.spec.masking.as_slice()))
        .collect();
    rules.sort_by(|a, b| a.0.cmp(b.0));
    rules
}

/// The same upstream, reached the same way with the same credential.
fn same_upstream(a: &CompiledConnection, b: &CompiledConnection) -> bool {
    let credential = match (&a.credential, &b.credential) {
        (None, None) => true,
        (Some(x), Some(y)) => {
            x.scheme == y.scheme
                && x.username == y.username
                && x.secret == y.secret
                && x.client_certificate == y.client_certificate
        }
        _ => false,
    };
    credential
        && a.kind == b.kind
        && a.endpoint == b.endpoint
        && a.ca == b.ca
        && a.server_name == b.server_name
        && a.insecure_skip_verify == b.insecure_skip_verify
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LoadOptions;

    const BASE: &str = "apiVersion: agentgate.dev/v1alpha1\nkind: AgentGateway\nmetadata: {name: gw, namespace: ns}\n\
        spec:\n  listeners: [{name: pg, protocol: Postgres, port: 15432}]\n---\n\
        apiVersion: agentgate.dev/v1alpha1\nkind: Connection\nmetadata: {name: db, namespace: ns}\n\
        spec: {gatewayRef: {name: gw}, type: Postgres, endpoint: 'postgres://db:5432/orders', credentials: {scheme: PostgresPassword, username: app, secretRef: {name: db, key: password}}}\n---\n\
        apiVersion: v1\nkind: Secret\nmetadata: {name: db, namespace: ns}\nstringData: {password: PASSWORD}\n---\n\
        apiVersion: agentgate.dev/v1alpha1\nkind: AgentIdentity\nmetadata: {name: agent, namespace: ns}\n\
        spec: {issuer: 'https://issuer.example', audiences: [db], match: {claims: {client_id: agent}}}\n---\n\
        apiVersion: agentgate.dev/v1alpha1\nkind: AccessPolicy\nmetadata: {name: reads, namespace: ns}\n\
        spec: {subjects: {identities: [agent]}, connections: [db], rules: [{name: r, action: Allow, sql: {statements: [Select]ROWLIMIT}}]MASKING}\n";

    fn load(password: &str, row_limit: bool, masking: &str) -> GatewayConfig {
        load_yaml(BASE.to_string(), password, row_limit, masking)
    }

    fn load_yaml(base: String, password: &str, row_limit: bool, masking: &str) -> GatewayConfig {
        let dir = tempfile::tempdir().unwrap();
        let yaml = base
            .replace("PASSWORD", password)
            .replace("ROWLIMIT", if row_limit { ", rowLimit: 10" } else { "" })
            .replace("MASKING", masking);
        std::fs::write(dir.path().join("all.yaml"), yaml).unwrap();
        crate::config::load(&LoadOptions {
            manifests: dir.path().to_path_buf(),
            ..Default::default()
        })
        .unwrap()
    }

    fn subject() -> Subject<'static> {
        Subject {
            identity: "agent",
            groups: &[],
        }
    }

    /// Policy changes are followed (with their row caps); a changed credential or masking, or a
    /// removed grant or identity, ends the following with a reason.
    #[test]
    fn sessions_follow_policy_changes_and_stop_at_what_they_were_opened_on() {
        let opened = load("pw", false, "");
        assert_eq!(follow(&opened, &opened, "db", subject()), Ok(vec![]));
        assert_eq!(
            follow(&opened, &load("pw", true, ""), "db", subject()),
            Ok(vec![(0, 0)])
        );
        assert_eq!(
            follow(&opened, &load("other", false, ""), "db", subject()).unwrap_err(),
            "Connection db now names another upstream or credential"
        );
        let masked = load(
            "pw",
            false,
            ", masking: [{columns: [public.orders.email], strategy: Redact}]",
        );
        assert_eq!(
            follow(&opened, &masked, "db", subject()).unwrap_err(),
            "the masking rules that apply to this session changed"
        );
        assert_eq!(
            follow(
                &opened,
                &opened,
                "db",
                Subject {
                    identity: "other",
                    groups: &[]
                }
            )
            .unwrap_err(),
            "AgentIdentity other was removed"
        );
        assert!(
            follow(&opened, &opened, "elsewhere", subject())
                .unwrap_err()
                .contains("Connection elsewhere was removed")
        );
    }

    /// Suspending the identity stops its open sessions with that reason, not a generic change.
    #[test]
    fn a_suspended_identity_s_sessions_stop() {
        let opened = load("pw", false, "");
        let suspended = load_yaml(
            BASE.replace("{client_id: agent}}}", "{client_id: agent}}, suspend: true}"),
            "pw",
            false,
            "",
        );
        assert!(suspended.identities.values().any(|i| i.spec.suspend));
        assert_eq!(
            follow(&opened, &suspended, "db", subject()).unwrap_err(),
            "AgentIdentity agent was suspended"
        );
    }
}
