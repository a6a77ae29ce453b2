//! `switchboard ls|info|stats`: what `nats micro ls|info|stats` show, from
//! the kit's discovery (every instance's answer, not just the first).

use std::io::Write;
use std::time::Duration;

use serde::Serialize;
use switchboard::discovery::{self, Target};
use switchboard::micro::Verb;
use switchboard::service::{EVENTS_METADATA, EventDeclaration, REQUEST_SCHEMA, RESPONSE_SCHEMA};

use super::connection::ConnectionArgs;

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Print the raw answers as JSON.
    #[arg(long)]
    json: bool,
    /// How long to gather answers, in milliseconds.
    #[arg(long, default_value_t = 500)]
    wait_ms: u64,
}

#[derive(Debug, clap::Args)]
pub struct ServiceArgs {
    /// Service name (all services when omitted, for `stats`).
    service: Option<String>,
    /// One instance id.
    id: Option<String>,
    /// `info`: also print each endpoint's request and response JSON Schema.
    #[arg(long)]
    schemas: bool,
    #[command(flatten)]
    list: ListArgs,
}

/// The average time per request, for people: `—` when never called.
fn average(requests: u64, average_nanos: u64) -> String {
    if requests == 0 {
        return "—".to_owned();
    }
    let time = Duration::from_nanos(average_nanos);
    if time >= Duration::from_secs(1) {
        format!("{:.2} s", time.as_secs_f64())
    } else if time >= Duration::from_millis(1) {
        format!("{:.1} ms", time.as_secs_f64() * 1e3)
    } else {
        format!("{} µs", time.as_micros())
    }
}

fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

pub async fn ls(connection: &ConnectionArgs, args: ListArgs) -> anyhow::Result<()> {
    let nats = connection.connect().await?;
    let mut answers = discovery::info(&nats, None, Duration::from_millis(args.wait_ms)).await?;
    answers.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
    if args.json {
        return print_json(&answers);
    }
    if answers.is_empty() {
        println!("No services found");
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<16} {:<12} {:<24} DESCRIPTION",
        "NAME", "VERSION", "ID"
    )?;
    for a in &answers {
        writeln!(
            out,
            "{:<16} {:<12} {:<24} {}",
            a.name, a.version, a.id, a.description
        )?;
    }
    Ok(())
}

pub async fn info(connection: &ConnectionArgs, args: ServiceArgs) -> anyhow::Result<()> {
    let Some(name) = args.service.as_deref() else {
        anyhow::bail!("which service? `switchboard info <service> [id]`");
    };
    let nats = connection.connect().await?;
    let target = Target {
        name: Some(name),
        id: args.id.as_deref(),
    };
    let mut answers: Vec<switchboard::micro::InfoResponse> = discovery::gather(
        &nats,
        &target.subject(Verb::Info)?,
        Duration::from_millis(args.list.wait_ms),
    )
    .await?;
    answers.sort_by(|a, b| a.id.cmp(&b.id));
    if args.list.json {
        return print_json(&answers);
    }
    if answers.is_empty() {
        anyhow::bail!("no instance of {name} answered");
    }
    let mut out = std::io::stdout().lock();
    for a in &answers {
        writeln!(out, "Service: {} {} ({})", a.name, a.version, a.id)?;
        writeln!(out, "  {}", a.description)?;
        for (k, v) in a.metadata.iter().flatten() {
            if k == EVENTS_METADATA {
                continue; // a table of its own below
            }
            writeln!(out, "  {k}: {v}")?;
        }
        let events = EventDeclaration::of(a);
        if !events.is_empty() {
            writeln!(out, "  Events:")?;
            for event in &events {
                writeln!(out, "    {:<28} {}", event.subject, event.description)?;
            }
        }
        writeln!(out, "  Endpoints:")?;
        for e in &a.endpoints {
            let meta = e.metadata.clone().unwrap_or_default();
            if args.schemas {
                for key in [REQUEST_SCHEMA, RESPONSE_SCHEMA] {
                    if let Some(schema) = meta.get(key) {
                        writeln!(out, "    {} {key}: {schema}", e.name)?;
                    }
                }
            }
            writeln!(
                out,
                "    {:<20} {:<28} queue {:<4} {}{}",
                e.name,
                e.subject,
                e.queue_group.as_deref().unwrap_or("-"),
                meta.get(switchboard::service::DESCRIPTION)
                    .map(String::as_str)
                    .unwrap_or(""),
                if meta
                    .get(switchboard::service::IDEMPOTENT)
                    .is_some_and(|v| v == "true")
                {
                    " (idempotent)"
                } else {
                    ""
                },
            )?;
        }
        writeln!(out)?;
    }
    Ok(())
}

pub async fn stats(connection: &ConnectionArgs, args: ServiceArgs) -> anyhow::Result<()> {
    let nats = connection.connect().await?;
    let target = Target {
        name: args.service.as_deref(),
        id: args.id.as_deref(),
    };
    let mut answers =
        discovery::stats(&nats, target, Duration::from_millis(args.list.wait_ms)).await?;
    answers.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
    if args.list.json {
        return print_json(&answers);
    }
    if answers.is_empty() {
        println!("No services found");
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<14} {:<24} {:<16} {:>9} {:>7} {:>10} {:>8}  LAST ERROR",
        "SERVICE", "ID", "ENDPOINT", "REQUESTS", "ERRORS", "AVG", "IN-FLT"
    )?;
    for s in &answers {
        for e in &s.endpoints {
            let in_flight = e
                .data
                .as_ref()
                .and_then(|d| d.get("in_flight"))
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0);
            writeln!(
                out,
                "{:<14} {:<24} {:<16} {:>9} {:>7} {:>10} {:>8}  {}",
                s.name,
                s.id,
                e.name,
                e.num_requests,
                e.num_errors,
                average(e.num_requests, e.average_processing_time),
                in_flight,
                e.last_error
            )?;
        }
    }
    drop(out);
    partitions(&nats, &answers).await
}

/// Who holds each partition of every keyed consumer, and its lag (events
/// not yet delivered, and delivered but not acknowledged).
async fn partitions(
    nats: &async_nats::Client,
    answers: &[switchboard::micro::StatsResponse],
) -> anyhow::Result<()> {
    let held = discovery::partition_holders(answers);
    if held.is_empty() {
        return Ok(());
    }
    let js = async_nats::jetstream::new(nats.clone());
    let mut streams = Vec::new();
    let mut names = js.stream_names();
    while let Some(name) = futures::StreamExt::next(&mut names).await {
        streams.extend(name.ok());
    }
    let mut rows = Vec::new();
    for (name, holders) in &held {
        let mut lag = (String::from("?"), String::from("?"));
        for stream in &streams {
            if let Ok(stream) = js.get_stream(stream).await
                && let Ok(info) = stream.consumer_info(name).await
            {
                lag = (
                    info.num_pending.to_string(),
                    info.num_ack_pending.to_string(),
                );
                break;
            }
        }
        rows.push((name, lag, holders.join(", ")));
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "\n{:<28} {:>8} {:>11}  HELD BY",
        "PARTITION", "PENDING", "ACK PENDING"
    )?;
    for (name, (pending, ack_pending), holders) in rows {
        writeln!(out, "{name:<28} {pending:>8} {ack_pending:>11}  {holders}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::average;

    #[test]
    fn averages_read_as_people_write_them() {
        assert_eq!(average(0, 0), "—");
        assert_eq!(average(3, 250_000), "250 µs");
        assert_eq!(average(3, 2_500_000), "2.5 ms");
        assert_eq!(average(1, 1_500_000_000), "1.50 s");
    }
}
