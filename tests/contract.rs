//! Every `$SRV.PING|INFO|STATS` answer validates against the JSON Schemas
//! the `nats` CLI uses (`tests/schemas/nats-micro-v1`, copied from nats-io/jsm.go): an answer that
//! fails them is silently dropped by `nats micro ls`.

use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use switchboard::ServiceError;
use switchboard::client::{CallOptions, Client};
use switchboard::discovery;
use switchboard::service::{Context, Endpoint, Service};
use switchboard::testing::TestServer;

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
struct Echo {
    text: String,
}

fn contract(name: &str) -> Result<jsonschema::Validator, Box<dyn std::error::Error>> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/schemas/nats-micro-v1")
        .join(name);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read the contract {}: {e}", path.display()))?;
    let schema: serde_json::Value = serde_json::from_str(&text)?;
    Ok(jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)?)
}

fn assert_valid(validator: &jsonschema::Validator, answer: &serde_json::Value, what: &str) {
    let errors: Vec<String> = validator
        .iter_errors(answer)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{what} breaks the contract: {errors:?}\n{answer:#}"
    );
}

#[tokio::test]
async fn every_discovery_answer_validates_against_the_nats_cli_schemas() -> TestResult {
    let server = TestServer::start().await?;
    let nats = server.client().await?;
    let service = Service::builder("echo", "1.0.0-beta.1+build.7")
        .description("Echoes")
        .metadata("owner", "tests")
        .endpoint(
            Endpoint::new("say", |_ctx: Context, req: Echo| async move {
                if req.text.is_empty() {
                    return Err(ServiceError::bad_request("empty"));
                }
                Ok(req)
            })
            .description("Echo the text")
            .metadata("http_method", "POST"),
        )
        .endpoint(Endpoint::new(
            "say_it-loud",
            |_ctx: Context, req: Echo| async move {
                Ok::<_, ServiceError>(Echo {
                    text: req.text.to_uppercase(),
                })
            },
        ))
        .start(nats.clone())
        .await?;
    // Some traffic and an error, so STATS carries real figures.
    let client = Client::new(nats.clone());
    let _: Echo = client.call("echo.say", &Echo { text: "hi".into() }).await?;
    let _ = client
        .call_with::<_, Echo>(
            "echo.say",
            &Echo {
                text: String::new(),
            },
            CallOptions::default(),
        )
        .await;

    let subjects = [
        ("PING", "gen_ping_response.json"),
        ("INFO", "gen_info_response.json"),
        ("STATS", "gen_stats_response.json"),
    ];
    for (verb, schema) in subjects {
        let validator = contract(schema)?;
        for subject in [
            format!("$SRV.{verb}"),
            format!("$SRV.{verb}.echo"),
            format!("$SRV.{verb}.echo.{}", service.id()),
        ] {
            let answers: Vec<serde_json::Value> =
                discovery::gather(&nats, &subject, Duration::from_millis(300)).await?;
            assert_eq!(answers.len(), 1, "one answer on {subject}");
            for answer in &answers {
                assert_valid(&validator, answer, &subject);
                // The check can fail: the same answer with a bad name does.
                let mut broken = answer.clone();
                broken["name"] = "echo.v1".into();
                assert!(
                    !validator.is_valid(&broken),
                    "the schema accepted a bad name"
                );
            }
        }
    }
    let stats: Vec<serde_json::Value> =
        discovery::gather(&nats, "$SRV.STATS.echo", Duration::from_millis(300)).await?;
    let say = &stats[0]["endpoints"][0];
    assert_eq!(say["num_requests"], 2);
    assert_eq!(say["num_errors"], 1);
    assert_eq!(say["last_error"], "400:empty");
    Ok(())
}
