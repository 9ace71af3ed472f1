//! `kubectl agentgate approvals list|show|approve|deny`: the kubectl plugin approvers use in
//! Kubernetes mode (installed as `kubectl-agentgate` on the PATH).
//!
//! A decision is a merge patch of `spec.decisions.<user>`, where `<user>` is who the API server
//! says the caller is (a SelfSubjectReview, as `kubectl auth whoami`), so the approver never types
//! their own name; the chart's ValidatingAdmissionPolicy checks the same thing server-side, and
//! the operator turns decisions into the phase. The plugin refuses early what would be refused
//! or ignored anyway (the requester deciding, a request that has ended, a second decision) with a
//! clear message, then waits briefly for the operator's verdict and prints it. A deny on an
//! Approved request withdraws its unspent grant. The patch names the request's uid, so a request
//! deleted and made again under the same name is never decided unseen.

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use agentgate_crds::ApprovalRequest;
use agentgate_crds::approval::{ApprovalPhase, DecisionState};
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde_json::json;

use super::cli::{decided_line, escape_controls, path_segment, table};
use super::{format_time, phase, unix_now};

/// The field manager of decisions written by the plugin.
pub const FIELD_MANAGER: &str = "kubectl-agentgate";
/// Longest wait for a call to the API server.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest reason accepted (the gateway caps agents' reasons the same way).
const MAX_REASON_BYTES: usize = 1024;

#[derive(clap::Parser, Debug)]
#[command(
    name = "kubectl-agentgate",
    bin_name = "kubectl agentgate",
    version,
    about = "agentgate for kubectl: decide the ApprovalRequests of agents' operations"
)]
struct Plugin {
    /// Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then in-cluster).
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    context: Option<String>,
    /// Namespace of the requests (default: the context's).
    #[arg(long, short = 'n', global = true)]
    namespace: Option<String>,
    #[command(subcommand)]
    command: Top,
}

#[derive(clap::Subcommand, Debug)]
enum Top {
    /// Approval requests of agents' operations.
    #[command(subcommand)]
    Approvals(Command),
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// List approval requests, oldest first (only Pending ones unless --all).
    List {
        /// Every request, whatever its phase.
        #[arg(long)]
        all: bool,
        /// In every namespace.
        #[arg(long, short = 'A')]
        all_namespaces: bool,
    },
    /// Print one approval request as JSON.
    Show { name: String },
    /// Approve a pending request as the current Kubernetes user.
    Approve {
        name: String,
        /// Why (a ticket number, say); recorded with the decision.
        #[arg(long)]
        reason: Option<String>,
        /// How long to wait for the operator's verdict (0s: do not wait).
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        wait: Duration,
    },
    /// Deny a pending request as the current Kubernetes user, or withdraw an approved one's
    /// unspent grant (a Window's remaining time, an unused Once).
    Deny {
        name: String,
        /// Why; recorded with the decision.
        #[arg(long)]
        reason: Option<String>,
        /// How long to wait for the operator's verdict (0s: do not wait).
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        wait: Duration,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    agentgate_crds::common::parse_duration(s)
}

/// Entry point of `kubectl-agentgate`.
pub fn main() -> ExitCode {
    let plugin = <Plugin as clap::Parser>::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = io::stdout().lock();
    let run = async {
        tokio::time::timeout(
            CALL_TIMEOUT + wait_of(&plugin.command),
            execute(&plugin, &mut out),
        )
        .await
        .unwrap_or_else(|_| Err("the Kubernetes API server did not answer in time".into()))
    };
    match runtime.block_on(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", escape_controls(&e, false));
            ExitCode::FAILURE
        }
    }
}

fn wait_of(command: &Top) -> Duration {
    match command {
        Top::Approvals(Command::Approve { wait, .. } | Command::Deny { wait, .. }) => *wait,
        Top::Approvals(_) => Duration::ZERO,
    }
}

/// A client and its namespace, from the kubeconfig the way kubectl picks it.
async fn connect(plugin: &Plugin) -> Result<(Client, String), String> {
    let options = KubeConfigOptions {
        context: plugin.context.clone(),
        ..Default::default()
    };
    let failed = |e: &dyn std::fmt::Display| format!("cannot load the Kubernetes configuration: {e}");
    let config = match &plugin.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .map_err(|e| format!("cannot read the kubeconfig {}: {e}", path.display()))?;
            Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|e| failed(&e))?
        }
        None if plugin.context.is_some() => {
            Config::from_kubeconfig(&options).await.map_err(|e| failed(&e))?
        }
        None => Config::infer().await.map_err(|e| failed(&e))?,
    };
    let namespace = plugin
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config).map_err(|e| format!("cannot build a Kubernetes client: {e}"))?;
    Ok((client, namespace))
}

fn api_error(what: &str, e: kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{what}: {} ({} {})", s.message, s.code, s.reason),
        other => format!("{what}: {other}"),
    }
}

async fn execute(plugin: &Plugin, out: &mut impl Write) -> Result<(), String> {
    let (client, namespace) = connect(plugin).await?;
    let write_err = |e: io::Error| format!("cannot write the output: {e}");
    let Top::Approvals(command) = &plugin.command;
    match command {
        Command::List { all, all_namespaces } => {
            let api: Api<ApprovalRequest> = if *all_namespaces {
                Api::all(client)
            } else {
                Api::namespaced(client, &namespace)
            };
            let list = api
                .list(&ListParams::default())
                .await
                .map_err(|e| api_error("cannot list approval requests", e))?;
            let mut items: Vec<ApprovalRequest> = list
                .items
                .into_iter()
                .filter(|r| *all || phase(r) == ApprovalPhase::Pending)
                .collect();
            items.sort_by_key(|r| {
                (
                    r.metadata.creation_timestamp.as_ref().map(|t| t.0.as_second()),
                    r.metadata.name.clone(),
                )
            });
            out.write_all(table(&items, unix_now()).as_bytes())
                .map_err(write_err)
        }
        Command::Show { name } => {
            let api: Api<ApprovalRequest> = Api::namespaced(client, &namespace);
            let r = api
                .get(path_segment(name)?)
                .await
                .map_err(|e| api_error(&format!("cannot read approval request {name}"), e))?;
            let text = serde_json::to_string_pretty(&r).unwrap_or_default();
            writeln!(out, "{}", escape_controls(&text, true)).map_err(write_err)
        }
        Command::Approve { name, reason, wait } => {
            let (r, verb) = decide(client, &namespace, name, DecisionState::Approved, reason, *wait).await?;
            writeln!(out, "{}", decided_line(&r, verb)).map_err(write_err)
        }
        Command::Deny { name, reason, wait } => {
            let (r, verb) = decide(client, &namespace, name, DecisionState::Denied, reason, *wait).await?;
            writeln!(out, "{}", decided_line(&r, verb)).map_err(write_err)
        }
    }
}

/// Who the API server says the caller is (`kubectl auth whoami`).
async fn whoami(client: Client) -> Result<String, String> {
    let api: Api<SelfSubjectReview> = Api::all(client);
    let review = api
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .map_err(|e| api_error("cannot ask the API server who you are (SelfSubjectReview)", e))?;
    review
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username)
        .filter(|u| !u.is_empty())
        .ok_or_else(|| {
            "the API server did not say who you are (SelfSubjectReview without a user name)".into()
        })
}

/// Writes the caller's decision on `name` and waits up to `wait` for the operator's verdict.
/// Returns the request as last read and what the decision did (`approve`, `deny`, `withdraw`).
async fn decide(
    client: Client,
    namespace: &str,
    name: &str,
    state: DecisionState,
    reason: &Option<String>,
    wait: Duration,
) -> Result<(ApprovalRequest, &'static str), String> {
    let name = path_segment(name)?;
    if reason.as_ref().is_some_and(|r| r.len() > MAX_REASON_BYTES) {
        return Err(format!("the reason is longer than {MAX_REASON_BYTES} bytes"));
    }
    let user = whoami(client.clone()).await?;
    let api: Api<ApprovalRequest> = Api::namespaced(client, namespace);
    let request = api
        .get(name)
        .await
        .map_err(|e| api_error(&format!("cannot read approval request {name}"), e))?;
    let current = phase(&request);
    check_decision(&request, &user, state)?;
    let verb = match (state, current) {
        (DecisionState::Approved, _) => "approve",
        (DecisionState::Denied, ApprovalPhase::Approved) => "withdraw",
        (DecisionState::Denied, _) => "deny",
    };
    let decision = json!({
        "state": state,
        "reason": reason,
        "decidedAt": format_time(unix_now()),
    });
    let patch = decision_patch(&request, &user, decision)?;
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    let written = api
        .patch(name, &params, &Patch::Merge(&patch))
        .await
        .map_err(|e| api_error(&format!("cannot record the decision on {name}"), e))?;
    // The operator counts the decision; show its verdict when it comes in time.
    let before = written.status.clone().unwrap_or_default();
    let deadline = tokio::time::Instant::now() + wait;
    let mut latest = written;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let Ok(r) = api.get(name).await else { continue };
        let status = r.status.clone().unwrap_or_default();
        latest = r;
        if status.phase != current || status.approvals != before.approvals {
            break;
        }
    }
    Ok((latest, verb))
}

/// Refuses early, with a clear message, a decision the operator or the admission policy would
/// ignore or refuse: on a request that has ended, the requester's own, a second one, or an
/// approval of a request already approved. A deny on an Approved request withdraws its unspent
/// grant (the approver's own earlier approval included).
fn check_decision(request: &ApprovalRequest, user: &str, state: DecisionState) -> Result<(), String> {
    let name = request.metadata.name.as_deref().unwrap_or_default();
    let current = phase(request);
    let withdrawing = current == ApprovalPhase::Approved && state == DecisionState::Denied;
    if current != ApprovalPhase::Pending && !withdrawing {
        return Err(format!(
            "ApprovalRequest {name} is {current:?}, no longer Pending: it cannot be {}",
            if current == ApprovalPhase::Approved {
                "approved again (`deny` withdraws the grant)"
            } else {
                "decided"
            }
        ));
    }
    if request.spec.requester == user {
        return Err(format!(
            "{user} asked for this operation and cannot decide its own request"
        ));
    }
    match request.spec.decisions.get(user) {
        Some(d) if d.state == DecisionState::Denied => Err(format!("{user} has already denied this request")),
        Some(_) if !withdrawing => Err(format!("{user} has already decided this request")),
        _ => Ok(()),
    }
}

/// The merge patch of `user`'s decision. It names the request's uid, which the API server keeps
/// from changing: if the request read (and checked) was deleted and another of the same name
/// made since, the patch is refused instead of deciding an operation the approver never saw.
fn decision_patch(
    request: &ApprovalRequest,
    user: &str,
    decision: serde_json::Value,
) -> Result<serde_json::Value, String> {
    let name = request.metadata.name.as_deref().unwrap_or_default();
    let uid = request
        .metadata
        .uid
        .as_deref()
        .filter(|u| !u.is_empty())
        .ok_or_else(|| format!("the API server gave ApprovalRequest {name} without a uid"))?;
    Ok(json!({
        "metadata": {"uid": uid},
        "spec": {"decisions": {user: decision}},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn kubectl_passes_its_flags_after_the_plugin_arguments() {
        let p = Plugin::try_parse_from([
            "kubectl-agentgate",
            "approvals",
            "approve",
            "ci-agent-0a1b2c3d",
            "--reason",
            "INC-7",
            "-n",
            "agents",
            "--context",
            "prod",
        ])
        .unwrap();
        assert_eq!(p.namespace.as_deref(), Some("agents"));
        assert_eq!(p.context.as_deref(), Some("prod"));
        let Top::Approvals(Command::Approve { name, reason, wait }) = p.command else {
            panic!("not an approve");
        };
        assert_eq!(
            (name.as_str(), reason.as_deref()),
            ("ci-agent-0a1b2c3d", Some("INC-7"))
        );
        assert_eq!(wait, Duration::from_secs(10));
        let list = Plugin::try_parse_from(["kubectl-agentgate", "approvals", "list", "-A", "--all"]).unwrap();
        assert!(matches!(
            list.command,
            Top::Approvals(Command::List {
                all: true,
                all_namespaces: true
            })
        ));
        // A decision needs a request name.
        assert!(Plugin::try_parse_from(["kubectl-agentgate", "approvals", "deny"]).is_err());
    }

    fn request(phase: ApprovalPhase, decisions: serde_json::Value) -> ApprovalRequest {
        serde_json::from_value(json!({
            "apiVersion": "agentgate.dev/v1alpha1",
            "kind": "ApprovalRequest",
            "metadata": {"name": "ci-agent-0a1b2c3d", "namespace": "agents", "uid": "u-1"},
            "spec": {
                "identity": "ci-agent", "requester": "ci-agent", "connection": "api",
                "operation": {"kind": "HTTP", "summary": "PUT /users/1", "fingerprint": "ab12"},
                "policy": {"name": "p", "rule": "r"},
                "grant": {"type": "Window", "duration": "1h"},
                "expiresAt": "2030-01-01T00:00:00Z",
                "decisions": decisions,
            },
            "status": {"phase": phase},
        }))
        .expect("valid request")
    }

    /// A deny withdraws an approved request's grant, the approver's own approval included; a
    /// second approval, a decision on an ended request, a repeated deny and the requester's own
    /// decision are refused before anything is written.
    #[test]
    fn decisions_the_operator_would_ignore_are_refused_early() {
        use ApprovalPhase::*;
        use DecisionState::{Approved as Approve, Denied as Deny};
        let alice_approved = json!({"alice": {"state": "Approved"}});
        let check = |phase, decisions: &serde_json::Value, user, state| {
            check_decision(&request(phase, decisions.clone()), user, state)
        };
        assert!(check(Pending, &json!({}), "alice", Approve).is_ok());
        assert!(check(Pending, &json!({}), "alice", Deny).is_ok());
        assert!(
            check(Approved, &alice_approved, "alice", Deny).is_ok(),
            "withdrawing one's own approval"
        );
        assert!(check(Approved, &alice_approved, "bob", Deny).is_ok());
        let again = check(Approved, &alice_approved, "bob", Approve).unwrap_err();
        assert!(again.contains("`deny` withdraws the grant"), "{again}");
        let twice = check(Pending, &alice_approved, "alice", Approve).unwrap_err();
        assert!(twice.contains("alice has already decided"), "{twice}");
        let denied = json!({"alice": {"state": "Denied"}});
        assert!(check(Pending, &denied, "alice", Deny).is_err());
        for ended in [Denied, Expired, Used] {
            let e = check(ended, &alice_approved, "bob", Deny).unwrap_err();
            assert!(e.contains("cannot be decided"), "{e}");
        }
        let own = check(Pending, &json!({}), "ci-agent", Approve).unwrap_err();
        assert!(own.contains("cannot decide its own request"), "{own}");
    }

    /// The decision names the uid read, so a request deleted and made again under the same name
    /// is not decided unseen; without a uid nothing is written.
    #[test]
    fn a_decision_is_bound_to_the_request_read() {
        let r = request(ApprovalPhase::Pending, json!({}));
        let patch = decision_patch(&r, "alice", json!({"state": "Approved"})).unwrap();
        assert_eq!(
            patch,
            json!({"metadata": {"uid": "u-1"}, "spec": {"decisions": {"alice": {"state": "Approved"}}}})
        );
        let mut no_uid = r;
        no_uid.metadata.uid = None;
        assert!(decision_patch(&no_uid, "alice", json!({})).is_err());
    }
}
