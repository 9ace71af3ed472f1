//! `agentgate`: the gateway binary. All logic lives in the library; see `agentgate::cli`.

// Every proxied request allocates a few hundred small, short-lived buffers (headers, JSON,
// records); mimalloc takes about 8% fewer instructions per HTTP request than glibc's allocator
// (bench/instructions.sh) and does not stall in fastbin consolidation.
// The `system-allocator` feature leaves it out for heap profilers (valgrind's dhat and massif),
// which see only the system allocator's calls.
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    agentgate::cli::main()
}
