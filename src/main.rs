//! The `switchboard` command: see `switchboard --help`.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
