//! The `switchboard` command: see `switchboard --help`.

#[global_allocator]
static ALLOCATOR: switchboard::Allocator = switchboard::Allocator;

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
