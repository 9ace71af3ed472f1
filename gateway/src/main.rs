//! `agentgate`: the gateway binary. All logic lives in the library; see `agentgate::cli`.

fn main() -> std::process::ExitCode {
    agentgate::cli::main()
}
