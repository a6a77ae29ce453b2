//! Command-line parsing and dispatch. Each command lives in its own file and
//! only composes library calls; errors are printed as one line.

mod up;

use clap::{Parser, Subcommand};

/// Switchboard: Rust microservices on NATS.
#[derive(Debug, Parser)]
#[command(name = "switchboard", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start nats-server (unless NATS_URL is set) and every service; Ctrl-C stops all.
    Up(up::UpArgs),
}

pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    switchboard::telemetry::init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("switchboard: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Up(args) => up::run(args).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchboard: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
