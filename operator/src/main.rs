//! `agentgate-operator`: the Kubernetes operator binary.

use std::path::PathBuf;
use std::process::ExitCode;

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
    }
}
