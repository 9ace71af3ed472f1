//! A real OpenID Connect provider (the npm package `oidc-provider`, started from `tests/oidc`) on a
//! free 127.0.0.1 port. `bash scripts/test.sh` installs its packages with `npm ci`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::{Process, free_port, wait_for, workspace_root};

/// A running provider. Dropping it stops the process.
#[derive(Debug)]
pub struct OidcProvider {
    pub issuer: String,
    pub port: u16,
    jwks_path: PathBuf,
    client_jwks: Option<PathBuf>,
    process: Option<Process>,
    _dir: tempfile::TempDir,
}

impl OidcProvider {
    /// Starts a provider with a freshly generated signing key.
    pub fn start() -> Self {
        Self::start_with_client_keys(None)
    }

    /// Starts a provider that also knows the client `agentgate-pkjwt`, which authenticates with
    /// `private_key_jwt` using the keys of `client_jwks` (a public JWKS document).
    pub fn start_with_client_keys(client_jwks: Option<&serde_json::Value>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let jwks_path = dir.path().join("jwks.json");
        let client_jwks = client_jwks.map(|j| {
            let path = dir.path().join("client-jwks.json");
            std::fs::write(&path, j.to_string()).expect("write client JWKS");
            path
        });
        let port = free_port();
        let mut provider = Self {
            issuer: format!("http://127.0.0.1:{port}"),
            port,
            jwks_path,
            client_jwks,
            process: None,
            _dir: dir,
        };
        // Another test process can take the port between the probe and node's bind (node starts
        // slowly): then try again on a new port.
        for _ in 0..3 {
            if provider.try_spawn() {
                return provider;
            }
            provider.port = free_port();
            provider.issuer = format!("http://127.0.0.1:{}", provider.port);
        }
        provider.spawn();
        provider
    }

    fn spawn(&mut self) {
        assert!(
            self.try_spawn(),
            "oidc-provider did not start on port {}",
            self.port
        );
    }

    /// Starts the process; false (and nothing left running) when it did not come up.
    fn try_spawn(&mut self) -> bool {
        let dir = workspace_root().join("tests/oidc");
        assert!(
            dir.join("node_modules/oidc-provider").exists(),
            "oidc-provider is not installed: run `npm ci --prefix tests/oidc` (bash scripts/test.sh does)"
        );
        let mut cmd = Command::new("node");
        cmd.arg(dir.join("server.mjs"))
            .env("PORT", self.port.to_string())
            .env("OIDC_JWKS", &self.jwks_path);
        if let Some(path) = &self.client_jwks {
            cmd.env("GATEWAY_CLIENT_JWKS", path);
        }
        let process = Process::start("oidc-provider", cmd);
        let url = format!("{}/.well-known/openid-configuration", self.issuer);
        // Node starts slowly on a loaded 2-core CI machine; it exits at once if the port is taken.
        let mut process = process;
        let up = wait_for(Duration::from_secs(45), || {
            if !process.is_running() {
                return Some(false);
            }
            (crate::curl_get(&url).0 == 200).then_some(true)
        });
        if up != Some(true) {
            eprintln!(
                "oidc-provider did not start on port {}:\n{}",
                self.port,
                process.output()
            );
            return false;
        }
        self.process = Some(process);
        true
    }

    /// Stops the provider (an outage).
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.terminate(Duration::from_secs(5));
        }
    }

    /// Starts it again; with `rotate`, under a brand-new signing key (new `kid`).
    pub fn restart(&mut self, rotate: bool) {
        self.stop();
        if rotate {
            let _ = std::fs::remove_file(&self.jwks_path);
        }
        self.spawn();
    }

    /// A client-credentials token for `client` (secret `<client>-secret`) and `resource`, with an
    /// optional DPoP proof for the token request. Returns the raw JSON answer.
    pub fn token(&self, client: &str, resource: &str, dpop: Option<&str>) -> serde_json::Value {
        let mut cmd = Command::new("curl");
        cmd.args([
            "-s",
            "--max-time",
            "10",
            "-u",
            &format!("{client}:{client}-secret"),
        ])
        .args([
            "-d",
            "grant_type=client_credentials",
            "-d",
            "scope=orders.read",
            "-d",
            &format!("resource={resource}"),
        ]);
        if let Some(proof) = dpop {
            cmd.args(["-H", &format!("DPoP: {proof}")]);
        }
        let out = cmd.arg(self.token_endpoint()).output().expect("curl runs");
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
            panic!(
                "token endpoint answered: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Revokes `token` (RFC 7009) as `client` (secret `<client>-secret`); panics unless the
    /// provider answers 200.
    pub fn revoke(&self, client: &str, token: &str) {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10"])
            .args([
                "-u",
                &format!("{client}:{client}-secret"),
                "-d",
                &format!("token={token}"),
            ])
            .arg(format!("{}/token/revocation", self.issuer))
            .output()
            .expect("curl runs");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "200", "revocation refused");
    }

    /// The token endpoint URL.
    pub fn token_endpoint(&self) -> String {
        format!("{}/token", self.issuer)
    }
}
