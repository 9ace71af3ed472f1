//! `kube-emulator`: runs the emulator with the agentgate CRDs for manual use, prints the kubeconfig
//! paths and serves until interrupted. `--http` serves plain HTTP without authentication.

use agentgate_kube_emulator::{Config, Emulator, harness};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let http = std::env::args().any(|a| a == "--http");
    let config = Config {
        tls: !http,
        allow_anonymous: http,
        ..Config::default()
    };
    let mut users: Vec<String> = config.users.iter().map(|u| u.name.clone()).collect();
    if http {
        users.push("anonymous".into());
    }
    let emulator = Emulator::start(config)?;
    emulator.install_crds(&harness::project_crds())?;
    println!("serving on {}", emulator.url());
    for user in users {
        println!(
            "{user}: kubectl --kubeconfig {}",
            emulator.kubeconfig(&user).display()
        );
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(tokio::signal::ctrl_c())?;
    Ok(())
}
