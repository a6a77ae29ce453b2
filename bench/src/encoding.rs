//! The compact encoding against JSON: the same typed call (Switchboard
//! endpoint + client, 64 in flight) with MessagePack both ways against JSON
//! both ways, at two sizes of a structured record — ~128 bytes and ~4 KiB
//! of JSON. The record is what services really send (names, counters,
//! measurements), not one long string, which would encode the same in both.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use switchboard::ServiceError;
use switchboard::client::{CallOptions, Client};
use switchboard::codec::Encoding;
use switchboard::service::{Context, Endpoint, Service};
use switchboard::testing::TestServer;

use crate::Settings;
use crate::drive::{Caller, drive};
use crate::report::Report;
use crate::rounds;

/// A structured record: a name, counters and measurements.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
struct Record {
    sensor: String,
    sequence: u64,
    healthy: bool,
    tags: Vec<String>,
    readings: Vec<f64>,
}

impl Record {
    /// A record whose JSON is about `bytes` long.
    fn of(bytes: usize) -> Record {
        let mut record = Record {
            sensor: "sensor-eu-west-17".into(),
            sequence: 1_764_633_600_123,
            healthy: true,
            tags: vec!["hall-3".into(), "rack-9".into()],
            readings: Vec::new(),
        };
        let mut i = 0u32;
        while serde_json::to_vec(&record).map_or(0, |v| v.len()) < bytes {
            // Measurements as sensors give them: not round numbers.
            record.readings.push(f64::from(i) * 0.731_9 + 17.0);
            i += 1;
        }
        record
    }
}

#[derive(Debug, Clone)]
struct RecordCall {
    client: Client,
    record: Record,
    options: CallOptions,
}

impl Caller for RecordCall {
    async fn call(&self) -> bool {
        self.client
            .call_with::<_, Record>("bench.record", &self.record, self.options.clone())
            .await
            .is_ok()
    }
}

pub async fn run(settings: &Settings, report: &mut Report) -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let pid = server.pid();
    let responder = server.client().await?;
    let _service = Service::builder("bench", "1.0.0")
        .endpoint(Endpoint::new(
            "record",
            |_ctx: Context, record: Record| async move { Ok::<_, ServiceError>(record) },
        ))
        .start(responder.clone())
        .await?;
    responder.flush().await?;
    let client = Client::new(server.client().await?);
    let in_flight = settings.target_in_flight();
    for size in [128, 4096] {
        let record = Record::of(size);
        let json = Encoding::Json.encode(&record)?.len();
        let packed = Encoding::MessagePack.encode(&record)?.len();
        let scenario = format!("encoding {size} B c={in_flight}");
        println!(
            "{scenario} (JSON {json} bytes, MessagePack {packed} bytes; {} bracketed rounds)",
            settings.rounds
        );
        let call = |encoding| RecordCall {
            client: client.clone(),
            record: record.clone(),
            options: CallOptions::default().encoding(encoding),
        };
        let calls = [call(Encoding::Json), call(Encoding::MessagePack)];
        let measured = rounds::interleave(settings.rounds, calls.len(), |i| {
            drive(pid, in_flight, settings.duration, calls[i].clone())
        })
        .await?;
        rounds::report(report, &scenario, &["JSON", "MessagePack"], &measured);
    }
    Ok(())
}
