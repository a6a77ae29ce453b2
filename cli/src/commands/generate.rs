//! `switchboard generate` and `switchboard permissions`: what follows from
//! the services' contracts, written into the project's files or printed.

use std::path::{Path, PathBuf};

use anyhow::Context;
use switchboard::contract::Contract;

use crate::generated::{self, Outcome};
use crate::manifest::Manifest;
use crate::{documents, permissions};

#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// Only compare: fail, naming the stale files, instead of writing them.
    #[arg(long)]
    check: bool,
    #[command(flatten)]
    services: ServicesArgs,
}

#[derive(Debug, clap::Args)]
pub struct PermissionsArgs {
    #[command(flatten)]
    services: ServicesArgs,
}

/// Which services: those of `./switchboard.toml` (else the reference
/// system's), plus any binaries named.
#[derive(Debug, clap::Args)]
struct ServicesArgs {
    /// Folder with the service binaries [default: next to this executable]
    #[arg(long, env = "SWITCHBOARD_BIN_DIR")]
    bin_dir: Option<PathBuf>,
    /// Also a service binary built elsewhere.
    #[arg(long = "with", value_name = "BINARY")]
    with: Vec<PathBuf>,
}

impl ServicesArgs {
    async fn contracts(&self) -> anyhow::Result<Vec<Contract>> {
        let manifest = Manifest::discover()?;
        let bin_dir = self
            .bin_dir
            .clone()
            .unwrap_or_else(crate::system::default_bin_dir);
        let mut binaries = manifest.binaries(&bin_dir);
        for binary in &self.with {
            let name = binary
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            binaries.push((name, binary.clone()));
        }
        Ok(crate::contracts::read_all(&binaries).await?)
    }
}

pub async fn generate(args: GenerateArgs) -> anyhow::Result<()> {
    let system = args.services.contracts().await?;
    let blocks = [
        (
            "nats.conf",
            permissions::BEGIN,
            permissions::END,
            permissions::nats_conf_block(&system),
        ),
        (
            "subjects.md",
            documents::BEGIN,
            documents::END,
            documents::subjects_md_block(&system),
        ),
        (
            "README.md",
            documents::LIMITS_BEGIN,
            documents::LIMITS_END,
            documents::readme_limits_block(&system),
        ),
    ];
    let mut stale = Vec::new();
    for (file, begin, end, block) in blocks {
        let path = Path::new(file);
        if !path.is_file() {
            continue;
        }
        let outcome = generated::update(path, begin, end, &block, args.check)
            .with_context(|| format!("cannot update {file}"))?;
        match outcome {
            Outcome::Stale if args.check => stale.push(file),
            Outcome::Stale => println!("{file}: rewritten from {} contracts", system.len()),
            Outcome::Current => println!("{file}: current"),
            Outcome::NoMarkers => println!("{file}: no generated block"),
        }
    }
    if !stale.is_empty() {
        anyhow::bail!(
            "{} differ from the services' contracts; run `switchboard generate` and commit them",
            stale.join(", ")
        );
    }
    Ok(())
}

pub async fn permissions(args: PermissionsArgs) -> anyhow::Result<()> {
    let system = args.services.contracts().await?;
    println!(
        "# The users of these services, for the `authorization {{ users: [ … ] }}` of a \
         nats-server's configuration;\n# each password comes from the environment variable named."
    );
    println!("{}", permissions::nats_conf_block(&system));
    Ok(())
}
