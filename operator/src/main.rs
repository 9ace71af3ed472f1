//! `agentgate-operator`: the Kubernetes operator binary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use agentgate_operator::context::Settings;
use agentgate_operator::run::Options;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "agentgate-operator",
    version,
    about = "The agentgate Kubernetes operator"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print every agentgate CRD as multi-document YAML, or write one file per CRD with --out-dir.
    Crds {
        /// Directory to write `agentgate.dev_<plural>.yaml` files into.
        #[arg(long)]
        out_dir: Vec<PathBuf>,
    },
    /// Run the controllers (in-cluster service account, or $KUBECONFIG).
    Run {
        /// Address of /healthz, /readyz and /metrics.
        #[arg(long, default_value = "0.0.0.0:8080")]
        metrics_addr: SocketAddr,
        /// Name of the leader-election Lease.
        #[arg(long, default_value = "agentgate-operator")]
        lease_name: String,
        /// Namespace of the Lease (the operator's own).
        #[arg(long, env = "POD_NAMESPACE", default_value = "agentgate-system")]
        lease_namespace: String,
        /// This replica's identity in the Lease (the pod name).
        #[arg(long, env = "POD_NAME")]
        identity: Option<String>,
        /// Gateway image for AgentGateways that do not name one.
        #[arg(long, default_value = concat!("ghcr.io/agentgate/agentgate:", env!("CARGO_PKG_VERSION")))]
        gateway_image: String,
        /// An image an AgentGateway's spec.image may name (exact, or a prefix ending in `/`, `:`
        /// or `@`); repeatable. Without one, spec.image may only name the gateway image.
        #[arg(long = "allowed-gateway-image")]
        allowed_gateway_images: Vec<String>,
        /// Watch and manage only this namespace: a namespace-scoped install, whose operator needs a
        /// Role there instead of a ClusterRole. Empty or unset: every namespace.
        #[arg(long, env = "AGENTGATE_WATCH_NAMESPACE")]
        watch_namespace: Option<String>,
        /// How long decided, expired and used ApprovalRequests are kept.
        #[arg(long, default_value = "7d", value_parser = agentgate_crds::common::parse_duration)]
        approval_retention: Duration,
        /// Accept AgentGateway listeners on loopback addresses, for gateways run outside pods
        /// (development, tests). Off by default: in a pod no Service reaches such a listener.
        #[arg(long)]
        allow_loopback_listeners: bool,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Crds { out_dir } if out_dir.is_empty() => {
            print!("{}", agentgate_operator::generate::all_yaml());
            ExitCode::SUCCESS
        }
        Command::Crds { out_dir } => {
            for dir in out_dir {
                match agentgate_operator::write_crds(&dir) {
                    Ok(paths) => paths.iter().for_each(|p| eprintln!("wrote {p}")),
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            }
            ExitCode::SUCCESS
        }
        Command::Run {
            metrics_addr,
            lease_name,
            lease_namespace,
            identity,
            gateway_image,
            allowed_gateway_images,
            watch_namespace,
            approval_retention,
            allow_loopback_listeners,
        } => {
            agentgate::cli::init_tracing();
            let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let identity = identity.unwrap_or_else(|| format!("agentgate-operator-{}", std::process::id()));
            let options = Options {
                metrics_addr,
                lease_namespace,
                lease_name,
                identity,
                settings: Settings {
                    gateway_image,
                    allowed_gateway_images,
                    approval_retention,
                    allow_loopback_listeners,
                },
                watch_namespace: watch_namespace.filter(|ns| !ns.is_empty()),
            };
            runtime.block_on(async move {
                let client = match kube::Client::try_default().await {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("error: cannot reach the Kubernetes API server: {e}");
                        return ExitCode::FAILURE;
                    }
                };
                match agentgate_operator::run::run(client, options, agentgate::cli::wait_for_signal()).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("error: {e}");
                        ExitCode::FAILURE
                    }
                }
            })
        }
    }
}
