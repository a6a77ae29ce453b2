//! The `switchboard` command: see `switchboard --help`. Everything it does
//! is in the `switchboard_cli` library; this is only its entry point.

#[global_allocator]
static ALLOCATOR: switchboard::Allocator = switchboard::Allocator;

fn main() -> std::process::ExitCode {
    switchboard_cli::main()
}
