//! `agentgate`: the gateway binary. All logic lives in the library; see `agentgate::cli`.

/// mimalloc rather than the system allocator: fewer instructions per allocation on the data path.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    agentgate::cli::main()
}
