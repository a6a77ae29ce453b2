//! `switchboard tail [subject]`: print events as they are stored, with
//! their CloudEvents attributes, from every stream that holds the subject.

use std::io::Write;

use async_nats::jetstream::{self, consumer::DeliverPolicy};
use futures::StreamExt;
use switchboard::events::envelope;

use super::connection::ConnectionArgs;

#[derive(Debug, clap::Args)]
pub struct TailArgs {
    /// Subject filter.
    #[arg(default_value = "events.>")]
    subject: String,
    /// Start with the stored events instead of only new ones.
    #[arg(long)]
    all: bool,
}

pub async fn run(connection: &ConnectionArgs, args: TailArgs) -> anyhow::Result<()> {
    let js = jetstream::new(connection.connect().await?);
    let mut names = Vec::new();
    let mut listing = js.stream_names();
    while let Some(name) = listing.next().await {
        names.push(name?);
    }
    let mut feeds = futures::stream::SelectAll::new();
    for name in names
        .iter()
        .filter(|n| *n != switchboard::events::DLQ_STREAM)
    {
        let stream = js.get_stream(name).await?;
        let config = jetstream::consumer::pull::OrderedConfig {
            filter_subject: args.subject.clone(),
            deliver_policy: if args.all {
                DeliverPolicy::All
            } else {
                DeliverPolicy::New
            },
            ..Default::default()
        };
        // Streams that do not hold the subject refuse the filter: skip them.
        if let Ok(consumer) = stream.create_consumer(config).await
            && let Ok(messages) = consumer.messages().await
        {
            feeds.push(messages);
        }
    }
    if feeds.is_empty() {
        anyhow::bail!("no stream holds {}", args.subject);
    }
    eprintln!("tailing {} (Ctrl-C to stop)", args.subject);
    let shutdown = switchboard::shutdown::signal();
    tokio::pin!(shutdown);
    loop {
        let message = tokio::select! {
            () = &mut shutdown => return Ok(()),
            message = feeds.next() => match message {
                Some(Ok(message)) => message,
                Some(Err(error)) => { eprintln!("switchboard: {error}"); continue; }
                None => return Ok(()),
            },
        };
        let mut out = std::io::stdout().lock();
        match envelope::read_event_attributes(message.headers.as_ref()) {
            Ok(a) => writeln!(
                out,
                "{} {} type={} source={} id={}{}",
                a.time,
                message.subject,
                a.event_type,
                a.source,
                a.id,
                a.subject
                    .map(|s| format!(" subject={s}"))
                    .unwrap_or_default()
            )?,
            Err(_) => writeln!(out, "{} (not a CloudEvent)", message.subject)?,
        }
        writeln!(out, "  {}", String::from_utf8_lossy(&message.payload))?;
    }
}
