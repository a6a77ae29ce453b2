//! `switchboard new <name>`: scaffold a service (see `switchboard_cli::scaffold`).

use std::path::PathBuf;

use crate::scaffold::{self, Shape};

#[derive(Debug, clap::Args)]
pub struct NewArgs {
    /// The service's name: its crate, binary, subjects' prefix and NATS user.
    name: String,
    /// A crate of its own (own workspace and Cargo.lock) in --dir, not a
    /// member of the workspace here.
    #[arg(long)]
    standalone: bool,
    /// Where: the workspace root [default: .]; with --standalone, the
    /// folder the crate's folder is made in [default: .].
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// With --standalone: the switchboard repository to depend on
    /// [default: the one this binary was built from].
    #[arg(long, requires = "standalone")]
    kit: Option<PathBuf>,
}

pub fn run(args: NewArgs) -> anyhow::Result<()> {
    let dir = std::path::absolute(&args.dir)?;
    let shape = if args.standalone {
        let kit = args.kit.unwrap_or_else(scaffold::kit_source);
        Shape::Standalone {
            dir,
            kit: std::path::absolute(&kit)?,
        }
    } else {
        Shape::Member { root: dir }
    };
    let made = scaffold::make(&args.name, &shape)?;
    for file in &made.files {
        println!("  wrote {}", file.display());
    }
    let name = &args.name;
    match shape {
        Shape::Member { .. } => println!(
            "\nservice {name} added (and registered in switchboard.toml). Next:\n  \
             cargo test -p {name}\n  cargo build --workspace && switchboard up\n  \
             switchboard call {name}.hello '{{\"name\":\"Ada\"}}'"
        ),
        Shape::Standalone { .. } => println!(
            "\nservice {name} made in {}. Next:\n  cd {} && cargo test\n  cargo build && \
             switchboard up --with {}/target/debug/{name}\n  switchboard call {name}.hello \
             '{{\"name\":\"Ada\"}}'",
            made.dir.display(),
            made.dir.display(),
            made.dir.display()
        ),
    }
    Ok(())
}
