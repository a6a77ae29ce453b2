//! Command-line parsing and dispatch. Each command lives in its own file and
//! only composes library calls; errors are printed as one line.

mod call;
mod connection;
mod discover;
mod dlq;
mod generate;
mod new;
mod tail;
mod up;

use clap::{Parser, Subcommand};

/// Switchboard: Rust microservices on NATS.
#[derive(Debug, Parser)]
#[command(name = "switchboard", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    connection: connection::ConnectionArgs,
    /// Log more: -v info, -vv debug (`up` always logs at info; RUST_LOG wins).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start nats-server (unless NATS_URL is set) and every service; Ctrl-C stops all.
    Up(up::UpArgs),
    /// List every running service instance (like `nats micro ls`).
    Ls(discover::ListArgs),
    /// Show a service's instances and endpoints (like `nats micro info`).
    Info(discover::ServiceArgs),
    /// Show request statistics per endpoint (like `nats micro stats`).
    Stats(discover::ServiceArgs),
    /// Send one request and print the reply (like `nats req`).
    Call(call::CallArgs),
    /// Dead letters: list, show, replay, purge.
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
    /// Print events live with their CloudEvents attributes.
    Tail(tail::TailArgs),
    /// Scaffold a service: crate, contract, thin main, a test; registered
    /// for `up` (or --standalone, a crate of its own).
    New(new::NewArgs),
    /// Rewrite the generated parts of nats.conf, subjects.md and README.md
    /// from the services' contracts.
    Generate(generate::GenerateArgs),
    /// Print the nats-server users the services need, derived from their
    /// contracts (for a server `up` does not start).
    Permissions(generate::PermissionsArgs),
}

/// Parses the command line, runs the command, prints a failure as one line.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // `up` is a log stream; the other commands print what was asked.
    let level = match (&cli.command, cli.verbose) {
        (Command::Up(_), 0 | 1) | (_, 1) => "info",
        (_, 0) => "warn",
        _ => "debug",
    };
    // Held to the end: dropping it sends the spans still buffered.
    let _telemetry = switchboard::telemetry::init_at("switchboard", level);
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
            Command::Ls(args) => discover::ls(&cli.connection, args).await,
            Command::Info(args) => discover::info(&cli.connection, args).await,
            Command::Stats(args) => discover::stats(&cli.connection, args).await,
            Command::Call(args) => call::run(&cli.connection, args).await,
            Command::Dlq(command) => dlq::run(&cli.connection, command).await,
            Command::Tail(args) => tail::run(&cli.connection, args).await,
            Command::New(args) => new::run(args),
            Command::Generate(args) => generate::generate(args).await,
            Command::Permissions(args) => generate::permissions(args).await,
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
