//! `agentgate dev`: the whole job on one laptop with nothing else installed. DEVELOPMENT ONLY.
//!
//! It starts a development token issuer ([`issuer`]) and a demo Okta-like upstream
//! ([`demo_upstream`]) on loopback, writes manifests that wire them to a gateway ([`manifests`]),
//! prints a ready agent token with curl commands, and then runs the very gateway `agentgate run`
//! runs on those manifests, so what a newcomer sees is what production does.

pub mod demo_upstream;
pub mod issuer;
pub mod manifests;
pub mod server;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, json};

use crate::config::LoadOptions;
use demo_upstream::DemoUpstream;
use issuer::DevIssuer;
use manifests::DevManifests;

/// Default directory for the manifests and recordings of development mode.
pub const DEFAULT_STATE_DIR: &str = ".agentgate/dev";
/// Lifetime of the printed token: the identity's `maxTokenLifetime`.
pub const TOKEN_LIFETIME: Duration = manifests::MAX_TOKEN_LIFETIME;

/// What can stop development mode from starting.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error(
        "refusing to listen on {addr}: agentgate dev serves loopback addresses only (127.0.0.1 or ::1), because its issuer hands out tokens from a throwaway key"
    )]
    NotLoopback { addr: SocketAddr },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Ports(String),
    #[error("cannot generate the development signing key: {0}")]
    Key(String),
    #[error("the system random number generator failed")]
    Random,
    #[error("cannot mint a development token: {0}")]
    Mint(String),
    #[error("cannot render the development manifests: {0}")]
    Render(String),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

/// Options of `agentgate dev`.
#[derive(clap::Args, Debug, Clone)]
pub struct DevArgs {
    /// Port of the gateway's HTTP listener on 127.0.0.1.
    #[arg(long, default_value_t = 8080, value_parser = clap::value_parser!(u16).range(1..))]
    pub listen_port: u16,
    /// Port of the development token issuer on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 0)]
    pub issuer_port: u16,
    /// Port of the demo upstream on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 0)]
    pub upstream_port: u16,
    /// Address of the admin listener (/healthz, /readyz, /metrics); loopback only.
    #[arg(long, default_value = crate::cli::DEFAULT_ADMIN_ADDR)]
    pub admin_addr: SocketAddr,
    /// Directory for the generated manifests (`<dir>/manifests`) and recordings (`<dir>/sessions`).
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
}

/// The running development environment: issuer, upstream, manifests and the agent's token.
pub struct DevEnvironment {
    issuer: DevIssuer,
    upstream: DemoUpstream,
    manifests_dir: PathBuf,
    sessions_dir: PathBuf,
    listen_port: u16,
    admin_addr: SocketAddr,
    token: String,
    token_expires_at: u64,
}

impl std::fmt::Debug for DevEnvironment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevEnvironment")
            .field("issuer", &self.issuer)
            .field("upstream", &self.upstream)
            .field("manifests_dir", &self.manifests_dir)
            .field("sessions_dir", &self.sessions_dir)
            .finish_non_exhaustive()
    }
}

impl DevEnvironment {
    /// Starts the issuer and the upstream, writes the manifests and mints the agent's token.
    pub async fn start(args: &DevArgs) -> Result<Self, DevError> {
        check_ports(args)?;
        let loopback = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let state_dir = std::path::absolute(&args.state_dir).map_err(|source| DevError::Io {
            path: args.state_dir.clone(),
            source,
        })?;
        let manifests_dir = state_dir.join("manifests");
        let sessions_dir = state_dir.join("sessions");

        let issuer = DevIssuer::start(loopback(args.issuer_port)).await?;
        let upstream_token = demo_upstream::random_api_token()?;
        let upstream = DemoUpstream::start(loopback(args.upstream_port), upstream_token.clone()).await?;
        DevManifests {
            listen_port: args.listen_port,
            issuer: issuer.url().to_string(),
            upstream: upstream.url(),
            upstream_token,
            sessions_dir: sessions_dir.clone(),
        }
        .write(&manifests_dir)?;
        manifests::create_private_dir(&sessions_dir)?;

        let mut claims = Map::new();
        claims.insert("aud".into(), json!(manifests::AUDIENCE));
        claims.insert(
            manifests::CLIENT_ID_CLAIM.0.into(),
            json!(manifests::CLIENT_ID_CLAIM.1),
        );
        let token = issuer.mint(manifests::IDENTITY, &claims, TOKEN_LIFETIME)?;
        let token_expires_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
            + TOKEN_LIFETIME.as_secs();
        Ok(Self {
            issuer,
            upstream,
            manifests_dir,
            sessions_dir,
            listen_port: args.listen_port,
            admin_addr: args.admin_addr,
            token,
            token_expires_at,
        })
    }

    /// The development issuer.
    pub fn issuer(&self) -> &DevIssuer {
        &self.issuer
    }

    /// The demo upstream.
    pub fn upstream(&self) -> &DemoUpstream {
        &self.upstream
    }

    /// Where the manifests were written.
    pub fn manifests_dir(&self) -> &Path {
        &self.manifests_dir
    }

    /// Where sessions are recorded.
    pub fn sessions_dir(&self) -> &Path {
        &self.sessions_dir
    }

    /// The agent's token (a development token from an ephemeral key: printing it is the point).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// How the gateway loads the manifests: the dev gateway only, the admin port reserved.
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            manifests: self.manifests_dir.clone(),
            secrets_dir: None,
            gateway: Some(manifests::GATEWAY.into()),
            reserved_ports: vec![self.admin_addr.port()],
            loopback_only: true,
            ..Default::default()
        }
    }

    /// What `agentgate dev` prints on stdout before the gateway starts.
    pub fn banner(&self) -> String {
        let gw = format!("http://127.0.0.1:{}{}", self.listen_port, manifests::ROUTE_PREFIX);
        let auth = "-H \"Authorization: Bearer $AGENTGATE_TOKEN\"";
        let rule = "=".repeat(100);
        let sessions = shell_word(&self.sessions_dir);
        format!(
            "\
{rule}
  agentgate dev: DEVELOPMENT MODE, NOT FOR PRODUCTION
  {warning}: the token below is signed by a key that lives only in this process.
{rule}

  gateway    http://127.0.0.1:{port}   ({prefix}/... goes to the demo upstream, prefix stripped)
  issuer     {issuer}   (ephemeral ES256 key, loopback only, no token endpoint)
  upstream   {upstream}   (a slice of Okta's admin API; it wants `Authorization: SSWS ...`,
             which the gateway injects from Secret {secret}: the agent never holds it)
  manifests  {manifests}
             (edit them while this runs: the gateway reloads within a second)
  sessions   {sessions_plain}
  admin      http://{admin}/readyz

  Agent token for identity {identity}, valid until {expiry} UTC. DPoP is off for this identity so
  plain curl works (real agent identities should set requireDPoP: true):

export AGENTGATE_TOKEN='{token}'

  Allowed (rule read-directory); emails, phones and the card number come back masked:
curl -s {auth} {gw}/api/v1/users

  Denied by policy (rule no-api-tokens): 403 application/problem+json, denied-by-policy:
curl -s -i {auth} {gw}/api/v1/api-tokens

  Needs a human (rule okta-user-admin): 403 application/problem+json, approval-required:
curl -s -i -X POST {auth} -H 'Content-Type: application/json' -d '{{\"profile\":{{\"firstName\":\"Dana\",\"lastName\":\"Lee\",\"email\":\"dana.lee@example.com\",\"login\":\"dana.lee@example.com\"}}}}' {gw}/api/v1/users

  No token: 401 unauthenticated:
curl -s -i {gw}/api/v1/users

  The upstream itself refuses the agent's token (only the gateway holds its credential): 401
curl -s -i {auth} {upstream}/api/v1/users

  Every request is recorded; list the sessions with:
agentgate sessions list --dir {sessions}

  Ctrl-C stops the gateway, the issuer and the upstream.
{rule}
",
            warning = issuer::WARNING,
            port = self.listen_port,
            prefix = manifests::ROUTE_PREFIX,
            issuer = self.issuer.url(),
            upstream = self.upstream.url(),
            secret = "demo-okta-token",
            manifests = self.manifests_dir.display(),
            sessions_plain = self.sessions_dir.display(),
            admin = self.admin_addr,
            identity = manifests::IDENTITY,
            expiry = utc_time(self.token_expires_at),
            token = self.token,
        )
    }
}

/// Ports must be distinct, and everything must be on loopback.
fn check_ports(args: &DevArgs) -> Result<(), DevError> {
    if !server::is_loopback(args.admin_addr.ip()) {
        return Err(DevError::NotLoopback {
            addr: args.admin_addr,
        });
    }
    let named = [
        ("--listen-port", args.listen_port),
        ("--admin-addr", args.admin_addr.port()),
        ("--issuer-port", args.issuer_port),
        ("--upstream-port", args.upstream_port),
    ];
    for (i, (a, pa)) in named.iter().enumerate() {
        for (b, pb) in &named[i + 1..] {
            if *pa != 0 && pa == pb {
                return Err(DevError::Ports(format!(
                    "{a} and {b} both use port {pa}; give them different ports"
                )));
            }
        }
    }
    Ok(())
}

/// A path as one shell word: quoted when it holds anything a shell would split or expand.
fn shell_word(path: &Path) -> String {
    let s = path.display().to_string();
    if s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-+,:@%".contains(&b))
    {
        s
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// `HH:MM` (UTC) of a Unix time.
fn utc_time(unix: u64) -> String {
    let of_day = unix % 86_400;
    format!("{:02}:{:02}", of_day / 3600, of_day % 3600 / 60)
}

/// Starts the runtime and runs development mode (the `agentgate dev` subcommand).
pub fn main(args: DevArgs) -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime.block_on(run(args)),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Development mode: issuer, upstream, manifests, banner, then the gateway until a signal.
pub async fn run(args: DevArgs) -> ExitCode {
    let env = match DevEnvironment::start(&args).await {
        Ok(env) => env,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        // A closed stdout only loses the banner; the gateway still runs.
        let _ = out.write_all(env.banner().as_bytes());
        let _ = out.flush();
    }
    let code = crate::cli::run_gateway(
        env.load_options(),
        args.admin_addr,
        crate::cli::ConfigSource::Directory(Duration::from_secs(1)),
        crate::cli::wait_for_signal(),
    )
    .await;
    drop(env);
    code
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::identity::dpop::{ReplayCache, RequestTarget};
    use crate::identity::fetch::HttpFetcher;
    use crate::identity::{KeyRegistry, Presented, Verifier, VerifierOptions};

    fn args(state: &Path) -> DevArgs {
        DevArgs {
            listen_port: 18443,
            issuer_port: 0,
            upstream_port: 0,
            admin_addr: "127.0.0.1:19464".parse().unwrap(),
            state_dir: state.to_path_buf(),
        }
    }

    /// The printed token passes the gateway's own verifier, configured from the written manifests,
    /// with keys found by discovery on the running issuer.
    #[tokio::test]
    async fn the_printed_token_is_accepted_by_the_gateway_verifier() {
        let tmp = tempfile::tempdir().unwrap();
        let env = DevEnvironment::start(&args(tmp.path())).await.unwrap();
        let cfg = crate::config::load(&env.load_options()).unwrap_or_else(|e| panic!("{e}"));
        let verifier = Verifier::for_config(
            &cfg,
            &KeyRegistry::default(),
            &HttpFetcher::new().unwrap(),
            Arc::new(ReplayCache::default()),
            &VerifierOptions::default(),
        )
        .unwrap();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
        let authorization = format!("Bearer {}", env.token());
        let target = RequestTarget::at("GET", "http://127.0.0.1:18443/okta/api/v1/users");
        let principal = verifier
            .verify(
                &Presented {
                    authorization: Some(&authorization),
                    dpop: &[],
                    target,
                    peer: None,
                },
                now,
            )
            .await
            .unwrap();
        assert_eq!(principal.identity, manifests::IDENTITY);
        assert_eq!(principal.groups, ["ai-agents"]);
        assert_eq!(principal.issuer, env.issuer().url());
        assert!(principal.expires_at - now <= TOKEN_LIFETIME.as_secs() as i64);

        assert!(env.manifests_dir().starts_with(tmp.path()));
        assert!(env.sessions_dir().is_dir());
    }

    /// The manifests are there to be edited while dev mode runs; an edit that moves the listener
    /// off loopback is refused at reload, as the issuer signs tokens for anyone who asks.
    #[tokio::test]
    async fn an_edit_moving_the_listener_off_loopback_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let env = DevEnvironment::start(&args(tmp.path())).await.unwrap();
        crate::config::load(&env.load_options()).unwrap_or_else(|e| panic!("{e}"));
        let path = env.manifests_dir().join("10-gateway.yaml");
        let yaml = std::fs::read_to_string(&path).unwrap();
        for edited in [
            yaml.replace("address: 127.0.0.1", "address: 0.0.0.0"),
            yaml.lines()
                .filter(|l| !l.contains("address: 127.0.0.1"))
                .map(|l| format!("{l}\n"))
                .collect(),
        ] {
            assert_ne!(edited, yaml);
            std::fs::write(&path, edited).unwrap();
            let e = crate::config::load(&env.load_options()).unwrap_err().to_string();
            assert!(
                e.contains("spec.listeners[0].address: Invalid value: ")
                    && e.contains("development mode serves only on loopback"),
                "{e}"
            );
        }
    }

    #[tokio::test]
    async fn the_banner_warns_and_gives_runnable_commands() {
        let tmp = tempfile::tempdir().unwrap();
        let env = DevEnvironment::start(&args(&tmp.path().join("it's here")))
            .await
            .unwrap();
        let banner = env.banner();
        assert!(
            banner.contains("DEVELOPMENT ISSUER — NOT FOR PRODUCTION"),
            "{banner}"
        );
        assert!(banner.contains("NOT FOR PRODUCTION"));
        assert!(banner.contains(&format!("\nexport AGENTGATE_TOKEN='{}'\n", env.token())));
        assert!(banner.contains("DPoP is off"));
        assert!(banner.contains(
            "curl -s -H \"Authorization: Bearer $AGENTGATE_TOKEN\" http://127.0.0.1:18443/okta/api/v1/users\n"
        ));
        assert!(banner.contains("http://127.0.0.1:18443/okta/api/v1/api-tokens"));
        assert!(banner.contains("-X POST"));
        assert!(banner.contains("\ncurl -s -i http://127.0.0.1:18443/okta/api/v1/users\n"));
        assert!(banner.contains(&format!("{}/api/v1/users", env.upstream().url())));
        assert!(
            banner.contains("agentgate sessions list --dir '"),
            "quoted path: {banner}"
        );
        assert!(banner.contains(r"it'\''s here"), "{banner}");
        // The upstream's credential is never printed.
        let secret = std::fs::read_to_string(env.manifests_dir().join("50-secret.yaml")).unwrap();
        let token = secret.rsplit("token: ").next().unwrap().trim().trim_matches('"');
        assert_eq!(token.len(), 42);
        assert!(!banner.contains(token));
    }

    #[tokio::test]
    async fn refuses_non_loopback_admin_and_clashing_ports() {
        let tmp = tempfile::tempdir().unwrap();
        let mut a = args(tmp.path());
        a.admin_addr = "0.0.0.0:9464".parse().unwrap();
        let err = DevEnvironment::start(&a).await.unwrap_err();
        assert!(matches!(err, DevError::NotLoopback { .. }), "{err}");

        let mut a = args(tmp.path());
        a.admin_addr = "127.0.0.1:18443".parse().unwrap();
        let err = DevEnvironment::start(&a).await.unwrap_err();
        assert!(
            err.to_string().contains("--listen-port and --admin-addr"),
            "{err}"
        );

        let mut a = args(tmp.path());
        (a.issuer_port, a.upstream_port) = (18000, 18000);
        let err = DevEnvironment::start(&a).await.unwrap_err();
        assert!(
            err.to_string().contains("--issuer-port and --upstream-port"),
            "{err}"
        );
        // Nothing was written for a refused start.
        assert!(!tmp.path().join("manifests").exists());
    }

    #[test]
    fn helpers() {
        assert_eq!(utc_time(0), "00:00");
        assert_eq!(utc_time(86_400 + 13 * 3600 + 7 * 60 + 59), "13:07");
        assert_eq!(shell_word(Path::new("/a/b-c_d.e")), "/a/b-c_d.e");
        assert_eq!(shell_word(Path::new("/a b")), "'/a b'");
        assert_eq!(shell_word(Path::new("/$HOME")), "'/$HOME'");
    }
}
