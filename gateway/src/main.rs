//! `agentgate`: the gateway binary. All logic lives in the library; see `agentgate::cli`.

// Every proxied request allocates a few hundred small, short-lived buffers (headers, JSON,
// records); mimalloc takes about 8% fewer instructions per HTTP request than glibc's allocator
// (bench/instructions.sh) and does not stall in fastbin consolidation.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    agentgate::cli::main()
}
