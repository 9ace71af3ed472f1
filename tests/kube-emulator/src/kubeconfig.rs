//! Kubeconfig files, one per user, as JSON (a subset of YAML that kubectl and kube-rs both read).

use std::path::{Path, PathBuf};

use serde_json::json;

use crate::auth::User;
use crate::error::Error;

/// Writes `<dir>/<user>.kubeconfig` for `server`; `ca` is the CA file for HTTPS.
pub fn write(
    dir: &Path,
    server: &str,
    ca: Option<&Path>,
    user: Option<&User>,
    namespace: &str,
) -> Result<PathBuf, Error> {
    let name = user.map_or("anonymous", |u| u.name.as_str());
    let mut cluster = json!({"server": server});
    if let Some(ca) = ca {
        cluster["certificate-authority"] = json!(ca.display().to_string());
    }
    let credentials = match user {
        Some(u) => json!({"token": u.token}),
        None => json!({}),
    };
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "emulator", "cluster": cluster}],
        "users": [{"name": name, "user": credentials}],
        "contexts": [{"name": name, "context": {"cluster": "emulator", "user": name, "namespace": namespace}}],
        "current-context": name,
        "preferences": {},
    });
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let path = dir.join(format!("{safe}.kubeconfig"));
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(&config).expect("JSON serializes"),
    )?;
    Ok(path)
}
