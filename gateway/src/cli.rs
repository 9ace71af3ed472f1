//! The `agentgate` command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::watch::ConfigWatcher;
use crate::config::{GatewayConfig, LoadOptions};
use crate::metrics::Metrics;
use crate::{admin, config};

/// Whether `c` reorders or hides what a terminal shows without being a control character:
/// bidirectional overrides and isolates, and invisible marks (a SQL comment with U+202E can show
/// a `DROP` as something else). Printed escaped wherever recorded or requested text is shown.
pub(crate) fn reorders_text(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{061C}'
            | '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{2069}'
            | '\u{FEFF}'
            | '\u{E0000}'..='\u{E007F}'
    )
}

/// Default admin address: loopback, so a standalone gateway exposes nothing by accident.
pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:9464";

#[derive(Parser, Debug)]
#[command(
    name = "agentgate",
    version,
    about = "Identity-aware Layer 7 gateway for AI agents"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check a directory of manifests and print what would run; exit 1 with one line per problem.
    Validate(Source),
    /// List, show and verify recorded sessions.
    #[command(subcommand)]
    Sessions(crate::recording::cli::SessionsCommand),
    /// List, approve and deny approval requests through a running gateway's admin API
    /// (standalone mode); the approver's token comes from --token or AGENTGATE_TOKEN.
    Approvals(crate::approval::cli::ApprovalsArgs),
    /// Run the gateway from a directory of manifests, reloading it when files change.
    Run {
        #[command(flatten)]
        source: RunSource,
        /// Address of the admin listener (/healthz, /readyz, /metrics, /approvals).
        #[arg(long, default_value = DEFAULT_ADMIN_ADDR)]
        admin_addr: SocketAddr,
        /// How often the manifests directory is checked for changes.
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        watch_interval: Duration,
    },
    /// Developer mode, NOT FOR PRODUCTION: the gateway on demo manifests with a development token
    /// issuer and a demo Okta-like upstream, all on loopback; prints a token and curl commands.
    Dev(crate::dev::DevArgs),
}

#[derive(Args, Debug, Clone)]
struct Source {
    /// Directory of YAML manifests (the same files `kubectl apply -f DIR` takes).
    #[arg(long, short = 'm')]
    manifests: PathBuf,
    /// Directory of Secret folders (`<dir>/<secret>/<key>`), for Secrets not given as manifests.
    #[arg(long)]
    secrets_dir: Option<PathBuf>,
    /// The AgentGateway to run when the directory declares several.
    #[arg(long)]
    gateway: Option<String>,
}

/// Where `agentgate run` takes its configuration from: a manifests directory (standalone), or the
/// compiled configuration Secret the operator writes (Kubernetes mode).
#[derive(Args, Debug, Clone)]
struct RunSource {
    /// Directory of YAML manifests (the same files `kubectl apply -f DIR` takes).
    #[arg(
        long,
        short = 'm',
        required_unless_present = "config_secret",
        conflicts_with = "config_secret"
    )]
    manifests: Option<PathBuf>,
    /// Directory of Secret folders (`<dir>/<secret>/<key>`), for Secrets not given as manifests.
    #[arg(long)]
    secrets_dir: Option<PathBuf>,
    /// The AgentGateway to run when the directory declares several.
    #[arg(long)]
    gateway: Option<String>,
    /// Kubernetes mode: watch this compiled-configuration Secret (written by the operator) through
    /// the API server, with the in-cluster service account or $KUBECONFIG.
    #[arg(long)]
    config_secret: Option<String>,
    /// Kubernetes mode: the namespace of the Secret (the pod's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    namespace: String,
    /// Kubernetes mode: writable directory that relative recording paths and the approval store
    /// resolve against.
    #[arg(long, default_value = "/var/lib/agentgate")]
    data_dir: PathBuf,
}

/// How a running gateway learns about configuration changes.
#[derive(Clone, Debug)]
pub(crate) enum ConfigSource {
    /// Poll the manifests directory at this interval.
    Directory(Duration),
    /// Watch the operator's Secret.
    Kubernetes(config::kubernetes::SecretSource),
}

impl Source {
    fn options(&self, reserved_ports: Vec<u16>) -> LoadOptions {
        LoadOptions {
            manifests: self.manifests.clone(),
            secrets_dir: self.secrets_dir.clone(),
            gateway: self.gateway.clone(),
            reserved_ports,
            ..Default::default()
        }
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    agentgate_crds::common::parse_duration(s)
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match cli.command {
        Command::Validate(source) => validate(&source),
        Command::Sessions(cmd) => crate::recording::cli::run(cmd),
        Command::Approvals(args) => crate::approval::cli::run(args),
        Command::Run {
            source,
            admin_addr,
            watch_interval,
        } => {
            let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let reserved_ports = vec![admin_addr.port()];
            let (options, config_source) = match (source.manifests, source.config_secret) {
                (Some(manifests), _) => (
                    LoadOptions {
                        manifests,
                        secrets_dir: source.secrets_dir,
                        gateway: source.gateway,
                        reserved_ports,
                        ..Default::default()
                    },
                    ConfigSource::Directory(watch_interval),
                ),
                (None, Some(name)) => (
                    LoadOptions {
                        manifests: source.data_dir,
                        secrets_dir: None,
                        gateway: source.gateway,
                        reserved_ports,
                        replicated: true,
                        ..Default::default()
                    },
                    ConfigSource::Kubernetes(config::kubernetes::SecretSource {
                        namespace: source.namespace,
                        name,
                    }),
                ),
                (None, None) => {
                    eprintln!("error: --manifests or --config-secret is required");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(run_gateway(options, admin_addr, config_source, wait_for_signal()))
        }
        Command::Dev(args) => crate::dev::main(args),
    }
}

/// Logs to stderr, filtered by `AGENTGATE_LOG` (default `info`); the operator logs the same way.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("AGENTGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .try_init();
}

fn validate(source: &Source) -> ExitCode {
    match config::load(&source.options(Vec::new())) {
        Ok(cfg) => {
            println!("{}", summary(&source.manifests, &cfg));
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("error: {e}");
            }
            eprintln!("{} problem(s) found; nothing was loaded", errors.0.len());
            ExitCode::FAILURE
        }
    }
}

/// One paragraph describing a valid configuration.
pub fn summary(dir: &std::path::Path, cfg: &GatewayConfig) -> String {
    let counts: Vec<String> = cfg
        .object_counts
        .iter()
        .map(|(k, n)| format!("{n} {k}"))
        .collect();
    let listeners: Vec<String> = cfg
        .gateway
        .listeners
        .iter()
        .map(|l| format!("{} ({:?} :{})", l.name, l.protocol, l.port))
        .collect();
    format!(
        "{}: valid ({}).\ngateway {}/{}: listeners {}; {} connection(s), {} identity(ies), {} policy(ies) with {} rule(s).",
        dir.display(),
        counts.join(", "),
        cfg.gateway.namespace,
        cfg.gateway.name,
        listeners.join(", "),
        cfg.connections.len(),
        cfg.identities.len(),
        cfg.policies.len(),
        cfg.policies.iter().map(|p| p.rules.len()).sum::<usize>(),
    )
}

/// Runs the gateway on a directory of manifests until `shutdown` completes. `agentgate run` and
/// `agentgate dev` both end up here, so the development mode serves exactly what production does.
pub(crate) async fn run_gateway(
    options: LoadOptions,
    admin_addr: SocketAddr,
    config_source: ConfigSource,
    shutdown: impl std::future::Future<Output = ()>,
) -> ExitCode {
    let metrics = Metrics::new();
    let manifests = options.manifests.clone();
    let gateway_name = options.gateway.clone();
    let (mut watcher, mut snapshots) = ConfigWatcher::new(options, metrics.clone());
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let (watch_task, client) = match config_source {
        ConfigSource::Directory(interval) => {
            if let Err(errors) = watcher.reload() {
                // Keep running and serving /readyz = 503: fixing the files is picked up without a restart.
                eprintln!("{errors}");
                eprintln!(
                    "no valid configuration yet; watching {} for changes",
                    manifests.display()
                );
            }
            (tokio::spawn(watcher.run(interval, shutdown_rx.clone())), None)
        }
        ConfigSource::Kubernetes(source) => {
            let client = match kube::Client::try_default().await {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: cannot reach the Kubernetes API server: {e}");
                    return ExitCode::FAILURE;
                }
            };
            tracing::info!(namespace = %source.namespace, secret = %source.name, "watching the compiled configuration Secret");
            let task = tokio::spawn(config::kubernetes::run(
                client.clone(),
                source.clone(),
                watcher,
                shutdown_rx.clone(),
            ));
            // Recording paths come from the configuration: give the first version a moment.
            // Without it the gateway still serves /readyz = 503 until one arrives.
            let first = tokio::time::timeout(FIRST_CONFIG_WAIT, snapshots.wait_for(Option::is_some)).await;
            if first.is_err() {
                eprintln!("no valid configuration yet; waiting for the configuration Secret");
            }
            (task, Some((client, source.namespace)))
        }
    };
    let listener = match admin::bind(admin_addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {admin_addr}: {e}");
            let _ = shutdown_tx.send(true);
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(addr = %admin_addr, "admin listener up");
    if client.is_none() && !admin_addr.ip().to_canonical().is_loopback() {
        // In a cluster the port serves probes and metrics, and decisions are refused there.
        tracing::warn!(
            addr = %admin_addr,
            "the admin listener is on a non-loopback address and speaks plain HTTP: approvers' tokens sent to it cross the network in clear, and `agentgate approvals` refuses such an address; use 127.0.0.1 and a tunnel"
        );
    }
    let approvals = match client {
        None => open_approvals(&snapshots, &manifests),
        // Kubernetes mode: requests are API objects, decided by patching them.
        Some((client, namespace)) => {
            let name =
                gateway_name.or_else(|| snapshots.borrow().as_ref().map(|s| s.config.gateway.name.clone()));
            match name {
                Some(name) => {
                    let approvals = crate::approval::Approvals::kubernetes(client, &namespace, &name);
                    tokio::spawn(crate::approval::kubernetes::sync(
                        approvals.clone(),
                        metrics.clone(),
                        shutdown_rx.clone(),
                    ));
                    Some(approvals)
                }
                None => {
                    tracing::error!(
                        "approvals unavailable: no --gateway and no configuration to name it; operations that need an approval are refused"
                    );
                    None
                }
            }
        }
    };
    let gateway = crate::protocol::http::Gateway::with_approvals(metrics.clone(), approvals.clone());
    let http_task = tokio::spawn(crate::protocol::http::server::run(
        gateway.clone(),
        snapshots.clone(),
        shutdown_rx.clone(),
    ));
    let state = admin::AdminState {
        snapshots,
        metrics,
        approvals,
        gateway: Some(gateway.clone()),
    };
    let admin_task = tokio::spawn(admin::serve(listener, state, shutdown_rx));
    shutdown.await;
    tracing::info!("shutting down");
    let _ = shutdown_tx.send(true);
    let _ = admin_task.await;
    let _ = http_task.await;
    let _ = watch_task.await;
    // Sessions are closed now (those of connections cut at the drain limit, here); ship them
    // before the pod's spool goes.
    gateway.close_open_sessions().await;
    gateway.drain_spool(SPOOL_DRAIN_LIMIT).await;
    ExitCode::SUCCESS
}

/// How long shutdown waits for the last sessions to be shipped (within Kubernetes' default
/// 30 s termination grace period, after connections have drained).
const SPOOL_DRAIN_LIMIT: Duration = Duration::from_secs(15);

/// How long Kubernetes mode waits for the first configuration before serving without one.
const FIRST_CONFIG_WAIT: Duration = Duration::from_secs(30);

/// Where the standalone approval store lives: `approvals` beside the sessions spool (the parent of
/// the recording directory of the configuration loaded at start), else `.agentgate/approvals` in
/// the manifests directory (beside the default spool) when no configuration loaded.
pub fn approvals_dir(
    snapshots: &crate::config::watch::SnapshotReceiver,
    manifests: &std::path::Path,
) -> PathBuf {
    snapshots
        .borrow()
        .as_ref()
        .and_then(|s| {
            s.config
                .gateway
                .recording_dir
                .parent()
                .map(|p| p.join("approvals"))
        })
        .unwrap_or_else(|| manifests.join(".agentgate/approvals"))
}

/// Opens the approval store. Without one the gateway still runs, and refuses operations that
/// need an approval (fail closed).
fn open_approvals(
    snapshots: &crate::config::watch::SnapshotReceiver,
    manifests: &std::path::Path,
) -> Option<std::sync::Arc<crate::approval::Approvals>> {
    let dir = approvals_dir(snapshots, manifests);
    let namespace = snapshots
        .borrow()
        .as_ref()
        .map_or_else(|| "default".to_string(), |s| s.config.gateway.namespace.clone());
    match crate::approval::Approvals::open(&dir, &namespace) {
        Ok(a) => Some(a),
        Err(e) => {
            tracing::error!(error = %e, "approvals unavailable: operations that need an approval are refused");
            None
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM (how Kubernetes stops a pod).
pub async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
