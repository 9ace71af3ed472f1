//! From verified claims to one AgentIdentity: audience, the identity's matchers, and the checks
//! specific to each kind of issuer.

use agentgate_crds::identity::IdentityProvider;
use serde_json::Value;

use super::{ErrorKind, IdentityError};
use crate::config::CompiledIdentity;

/// Audiences a Kubernetes API server puts on tokens by default; a gateway must require its own.
pub const KUBERNETES_DEFAULT_AUDIENCES: &[&str] = &[
    "https://kubernetes.default.svc",
    "https://kubernetes.default.svc.cluster.local",
    "kubernetes",
    "api",
];

/// Audiences GitHub Actions tokens carry for others: the default of `core.getIDToken()` (the
/// owner's URL, `https://github.com/<owner>`, matched by prefix) and the well-known ones of
/// cloud and signing services, which any action step may request and hand on.
pub const GITHUB_SHARED_AUDIENCE_PREFIX: &str = "https://github.com/";
pub const GITHUB_SHARED_AUDIENCES: &[&str] = &["sts.amazonaws.com", "sigstore", "api://AzureADTokenExchange"];

/// Whether `identity` accepts these (signature-verified) claims.
pub fn matches(identity: &CompiledIdentity, claims: &Value, audiences: &[&str]) -> Result<(), String> {
    let spec = &identity.spec;
    if !audiences.iter().any(|a| spec.audiences.iter().any(|x| x == a)) {
        return Err("audience not accepted".into());
    }
    if audiences.len() > 1 {
        // A token for several audiences must say which client it was issued to (OIDC Core §2).
        let azp = claims
            .get("azp")
            .and_then(Value::as_str)
            .ok_or("several audiences without azp")?;
        if let Some(expected) = spec
            .r#match
            .claims
            .as_ref()
            .and_then(|c| c.get("azp").or(c.get("cid")).or(c.get("client_id")))
            && azp != expected
        {
            return Err("azp is not the identity's client".into());
        }
    }
    let m = &spec.r#match;
    let sub = claims.get("sub").and_then(Value::as_str).unwrap_or_default();
    if let Some(subject) = &m.subject
        && sub != subject
    {
        return Err("subject does not match".into());
    }
    if let Some(required) = &m.claims {
        for (name, expected) in required {
            if !claim_has(claims.get(name), expected) {
                return Err(format!("claim {name} does not match"));
            }
        }
    }
    match spec.provider {
        IdentityProvider::Kubernetes => kubernetes(identity, claims, sub, audiences)?,
        IdentityProvider::GitHubActions => github(identity, claims)?,
        IdentityProvider::Spiffe => spiffe(identity, sub)?,
        // Such a token under a generic identity would skip the checks its issuer needs (pod
        // binding, legacy tokens, numeric repository ids): it matches only the provider's own.
        IdentityProvider::Okta | IdentityProvider::Oidc => {
            if claims.get("kubernetes.io").is_some() {
                return Err(
                    "a Kubernetes service-account token matches only identities with provider: Kubernetes"
                        .into(),
                );
            }
            if claims.get("job_workflow_ref").is_some() {
                return Err(
                    "a GitHub Actions token matches only identities with provider: GitHubActions".into(),
                );
            }
        }
    }
    Ok(())
}

fn claim_has(value: Option<&Value>, expected: &str) -> bool {
    match value {
        Some(Value::String(s)) => s == expected,
        Some(Value::Array(items)) => items.iter().any(|v| v.as_str() == Some(expected)),
        // Numbers are compared by their decimal text, so `repository_id: 123` matches "123".
        Some(Value::Number(n)) => n.to_string() == expected,
        _ => false,
    }
}

fn kubernetes(
    identity: &CompiledIdentity,
    claims: &Value,
    sub: &str,
    audiences: &[&str],
) -> Result<(), String> {
    // Without `--api-audiences`, the API server's default audience is its issuer.
    let issuer = identity.spec.issuer.trim_end_matches('/');
    if audiences
        .iter()
        .all(|a| KUBERNETES_DEFAULT_AUDIENCES.contains(a) || a.trim_end_matches('/') == issuer)
    {
        return Err("Kubernetes token carries only the API server's default audience".into());
    }
    // Projected tokens carry a `kubernetes.io` object claim; legacy secret-based tokens carry flat
    // `kubernetes.io/serviceaccount/...` claims and never expire.
    let k8s = claims
        .get("kubernetes.io")
        .and_then(Value::as_object)
        .ok_or("not a projected service-account token")?;
    if claims.get("kubernetes.io/serviceaccount/namespace").is_some() {
        return Err("legacy secret-based service-account tokens are refused".into());
    }
    let Some(sa) = &identity.spec.r#match.service_account else {
        return Err("identity has no serviceAccount matcher".into());
    };
    if sub != format!("system:serviceaccount:{}:{}", sa.namespace, sa.name) {
        return Err("service account does not match".into());
    }
    let ns = k8s.get("namespace").and_then(Value::as_str);
    let name = k8s
        .get("serviceaccount")
        .and_then(|s| s.get("name"))
        .and_then(Value::as_str);
    if ns != Some(sa.namespace.as_str()) || name != Some(sa.name.as_str()) {
        return Err("kubernetes.io claims do not match the service account".into());
    }
    // A workload's projected token is bound to its pod (the API server stops honouring it when
    // the pod goes; the gateway, verifying offline, honours it until `exp`). A token with no
    // bound pod (`kubectl create token` without --bound-object-kind Pod) is not a workload's.
    let bound_to_pod = k8s.get("pod").is_some_and(|p| {
        ["name", "uid"]
            .iter()
            .all(|k| p.get(k).and_then(Value::as_str).is_some_and(|v| !v.is_empty()))
    });
    if !bound_to_pod {
        return Err("Kubernetes token is not bound to a pod (kubernetes.io.pod)".into());
    }
    Ok(())
}

fn github(identity: &CompiledIdentity, claims: &Value) -> Result<(), String> {
    let Some(g) = &identity.spec.r#match.github else {
        return Err("identity has no github matcher".into());
    };
    let checks = [
        ("repository_id", &g.repository_id),
        ("repository_owner_id", &g.repository_owner_id),
        ("job_workflow_ref", &g.job_workflow_ref),
    ];
    for (claim, expected) in checks {
        if let Some(expected) = expected
            && !claim_has(claims.get(claim), expected)
        {
            return Err(format!("{claim} does not match"));
        }
    }
    Ok(())
}

fn spiffe(identity: &CompiledIdentity, sub: &str) -> Result<(), String> {
    let Some(pattern) = &identity.spec.r#match.spiffe_id else {
        return Err("identity has no spiffeId matcher".into());
    };
    let (p_parts, s_parts): (Vec<&str>, Vec<&str>) = (pattern.split('/').collect(), sub.split('/').collect());
    let ok = p_parts.len() == s_parts.len() && p_parts.iter().zip(&s_parts).all(|(p, s)| *p == "*" || p == s);
    if ok {
        Ok(())
    } else {
        Err("SPIFFE ID does not match".into())
    }
}

/// Groups from the identity's mapping: the claim's strings, each after the mapping's prefix,
/// plus the static groups.
pub fn groups(identity: &CompiledIdentity, claims: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(mapping) = &identity.spec.groups {
        if let Some(claim) = &mapping.claim {
            let prefix = mapping.prefix.as_deref().unwrap_or_default();
            let prefixed = |g: &str| format!("{prefix}{g}");
            match claims.get(claim) {
                Some(Value::Array(items)) => out.extend(items.iter().filter_map(Value::as_str).map(prefixed)),
                Some(Value::String(s)) => out.extend(s.split(' ').filter(|g| !g.is_empty()).map(prefixed)),
                _ => {}
            }
        }
        out.extend(mapping.r#static.iter().cloned());
    }
    out.sort();
    out.dedup();
    out
}

/// Picks the one identity that matches; none or several is an error (several would make the
/// principal depend on configuration order).
pub fn select<'a>(
    candidates: &'a [std::sync::Arc<CompiledIdentity>],
    claims: &Value,
    audiences: &[&str],
) -> Result<&'a std::sync::Arc<CompiledIdentity>, IdentityError> {
    let mut found = None;
    let mut reasons = Vec::new();
    for identity in candidates {
        match matches(identity, claims, audiences) {
            Ok(()) if found.is_some() => {
                return Err(IdentityError::new(
                    ErrorKind::NoMatchingIdentity,
                    "token matches several identities",
                ));
            }
            Ok(()) => found = Some(identity),
            Err(e) => reasons.push(format!("{}: {e}", identity.name)),
        }
    }
    found.ok_or_else(|| {
        let kind = if reasons.iter().all(|r| r.ends_with("audience not accepted")) {
            ErrorKind::WrongAudience
        } else {
            ErrorKind::NoMatchingIdentity
        };
        IdentityError::new(kind, reasons.join("; "))
    })
}
