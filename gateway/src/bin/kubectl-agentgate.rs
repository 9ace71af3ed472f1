//! `kubectl agentgate`: the kubectl plugin for approvers in Kubernetes mode.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    agentgate::approval::kubectl::main()
}
