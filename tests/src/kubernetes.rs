//! The operator and the gateway in Kubernetes mode as real processes, against any API server
//! reachable through a kubeconfig (the emulator, or a real cluster).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::{Process, binary, curl_get, free_port, wait_for};

/// `agentgate-operator run` as `identity` (its Lease holder name).
#[derive(Debug)]
pub struct Operator {
    pub process: Process,
    /// Port of /healthz, /readyz and /metrics.
    pub metrics: u16,
}

impl Operator {
    /// Starts the operator with `kubeconfig` in `namespace` and waits until it is healthy.
    pub fn start(kubeconfig: &Path, namespace: &str, identity: &str) -> Self {
        Self::start_with(kubeconfig, namespace, identity, &[], &[])
    }

    /// [`Operator::start`] with more arguments and environment variables.
    pub fn start_with(
        kubeconfig: &Path,
        namespace: &str,
        identity: &str,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Self {
        let metrics = free_port();
        let mut cmd = Command::new(binary("agentgate-operator"));
        cmd.args(["run", "--metrics-addr", &format!("127.0.0.1:{metrics}")])
            .args(["--gateway-image", "registry.test/agentgate:e2e"])
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAMESPACE", namespace)
            .env("POD_NAME", identity)
            .env("AGENTGATE_LOG", "info,agentgate_operator=debug")
            .envs(envs.iter().copied());
        let process = Process::start(identity, cmd);
        let op = Self { process, metrics };
        let up = wait_for(Duration::from_secs(30), || {
            (curl_get(&format!("http://127.0.0.1:{metrics}/healthz")).0 == 200).then_some(())
        });
        assert!(up.is_some(), "operator did not start:\n{}", op.process.output());
        op
    }

    /// Whether this replica holds the Lease.
    pub fn is_leader(&self) -> bool {
        curl_get(&format!("http://127.0.0.1:{}/metrics", self.metrics))
            .1
            .lines()
            .any(|l| l == "agentgate_operator_leader 1")
    }
}

/// `agentgate run --config-secret agentgate-<gateway>-config`: the gateway binary reading the
/// configuration the operator compiled, and keeping its approval requests in the API server.
#[derive(Debug)]
pub struct KubeGateway {
    pub process: Process,
    pub admin: u16,
}

impl KubeGateway {
    /// Starts the gateway and waits until it serves its configuration (/readyz).
    pub fn start(kubeconfig: &Path, namespace: &str, gateway: &str, data_dir: &Path) -> Self {
        let admin = free_port();
        let mut cmd = Command::new(binary("agentgate"));
        cmd.args(["run", "--config-secret", &format!("agentgate-{gateway}-config")])
            .args(["--gateway", gateway])
            .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
            .arg("--data-dir")
            .arg(data_dir)
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAMESPACE", namespace);
        let process = Process::start("agentgate", cmd);
        let up = wait_for(Duration::from_secs(30), || {
            (curl_get(&format!("http://127.0.0.1:{admin}/readyz")).0 == 200).then_some(())
        });
        assert!(up.is_some(), "gateway not ready:\n{}", process.output());
        Self { process, admin }
    }

    /// The gateway's Prometheus metrics.
    pub fn metrics(&self) -> String {
        curl_get(&format!("http://127.0.0.1:{}/metrics", self.admin)).1
    }
}
