//! `switchboard dlq ls|show|replay|purge`: look at dead letters and bring
//! them back once the cause is fixed.

use std::io::Write;

use switchboard::events::DeadLetters;

use super::connection::ConnectionArgs;

#[derive(Debug, clap::Subcommand)]
pub enum DlqCommand {
    /// List dead letters.
    Ls {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one dead letter: where it came from, why it died, headers, payload.
    Show {
        /// Dead letter id (from `dlq ls`).
        id: u64,
    },
    /// Re-publish to the original subject (same ce-id) and remove from the DLQ.
    Replay {
        /// Dead letter id.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<u64>,
        /// Replay every dead letter.
        #[arg(long)]
        all: bool,
    },
    /// Remove every dead letter.
    Purge,
}

pub async fn run(connection: &ConnectionArgs, command: DlqCommand) -> anyhow::Result<()> {
    let js = async_nats::jetstream::new(connection.connect().await?);
    let dlq = DeadLetters::open(&js).await?;
    let mut out = std::io::stdout().lock();
    match command {
        DlqCommand::Ls { json } => {
            let letters = dlq.list().await?;
            if json {
                serde_json::to_writer_pretty(&mut out, &letters)?;
                writeln!(out)?;
            } else if letters.is_empty() {
                writeln!(out, "No dead letters")?;
            } else {
                writeln!(
                    out,
                    "{:>6}  {:<28} {:<22} {:>5}  {:<24} ERROR",
                    "ID", "SUBJECT", "CONSUMER", "DELIV", "FAILED AT"
                )?;
                for l in letters {
                    writeln!(
                        out,
                        "{:>6}  {:<28} {:<22} {:>5}  {:<24} {}",
                        l.id,
                        l.info.subject,
                        l.info.consumer,
                        l.info.deliveries,
                        l.info.failed_at,
                        l.info.error
                    )?;
                }
            }
        }
        DlqCommand::Show { id } => {
            let letter = dlq.get(id).await?;
            serde_json::to_writer_pretty(&mut out, &letter)?;
            writeln!(out)?;
        }
        DlqCommand::Replay { id, all } => {
            let ids: Vec<u64> = if all {
                dlq.list().await?.into_iter().map(|l| l.id).collect()
            } else {
                id.into_iter().collect()
            };
            for id in ids {
                let published = dlq.replay(id).await?;
                writeln!(
                    out,
                    "replayed {id} → {} sequence {}",
                    published.stream, published.sequence
                )?;
            }
        }
        DlqCommand::Purge => {
            let purged = dlq.purge().await?;
            writeln!(out, "purged {purged} dead letters")?;
        }
    }
    Ok(())
}
